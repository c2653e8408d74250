/* ctl_test: envrunctl against the mock cluster and a worker: `send --file`
 * (JSON in the shape tail prints, validated first), `tail` filtered and as
 * a table, `dlq list` with the reasons, and `dlq replay` (dry run produces
 * nothing, invalid letters are skipped with a reason, a valid letter is
 * answered by the worker, a second replay produces nothing). */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>

#include "tests/support/harness.h"

#define ENVRUNCTL ER_BUILD_DIR "/envrunctl"
#define OUT_MAX   ((size_t)4 * 1024 * 1024)

static struct er_harness *h;
static struct er_harness_worker *worker;

static int group_setup(void **state)
{
    (void)state;
    h = er_harness_new("ctl", 2, NULL);
    if (h == NULL)
        return -1;
    worker = er_harness_worker_start(h, NULL);
    return worker != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_destroy(h);
    h = NULL;
    return rc;
}

/* What one envrunctl run printed. */
struct ctl_run {
    int exit_code;
    char *out; /* er_free */
    char *err; /* er_free */
};

static void ctl_run_fini(struct ctl_run *r)
{
    er_free(r->out);
    er_free(r->err);
    memset(r, 0, sizeof(*r));
}

/* Run envrunctl with the NULL-terminated words after the program name,
 * standard input from stdin_path (NULL: /dev/null), with the harness's
 * brokers and prefix in the environment. */
static void ctl(struct ctl_run *r, const char *stdin_path, ...)
{
    static int seq;
    char brokers[ER_HARNESS_URL_MAX + 32];
    char prefix[128];
    char out_path[ER_HARNESS_PATH_MAX + 64];
    char err_path[ER_HARNESS_PATH_MAX + 64];
    char *envp[] = { brokers, prefix, "PATH=/usr/bin:/bin", NULL };
    char *argv[32];
    va_list ap;
    size_t n = 0;
    pid_t pid;
    int status = 0;

    snprintf(brokers, sizeof(brokers), "ENVRUN_KAFKA_BROKERS=%s", h->brokers);
    snprintf(prefix, sizeof(prefix), "ENVRUN_TOPIC_PREFIX=%s", h->prefix);
    snprintf(out_path, sizeof(out_path), "%s/ctl-%d.out", h->dir, seq);
    snprintf(err_path, sizeof(err_path), "%s/ctl-%d.err", h->dir, seq++);
    argv[n++] = ENVRUNCTL;
    va_start(ap, stdin_path);
    for (;;) {
        char *word = va_arg(ap, char *);

        assert_true(n < sizeof(argv) / sizeof(argv[0]) - 1);
        argv[n++] = word;
        if (word == NULL)
            break;
    }
    va_end(ap);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen(stdin_path != NULL ? stdin_path : "/dev/null", "r",
                    stdin) == NULL ||
            freopen(out_path, "w", stdout) == NULL ||
            freopen(err_path, "w", stderr) == NULL)
            _exit(126);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    r->exit_code = WEXITSTATUS(status);
    r->out = er_harness_read_text(out_path, OUT_MAX);
    r->err = er_harness_read_text(err_path, OUT_MAX);
    ER_HARNESS_NON_NULL(r->out);
    ER_HARNESS_NON_NULL(r->err);
}

/* Write text to a new file under the harness's directory; path to out. */
static void write_file(const char *name, const char *text, char *out,
                       size_t out_len)
{
    FILE *f;

    snprintf(out, out_len, "%s/%s", h->dir, name);
    f = fopen(out, "w");
    ER_HARNESS_NON_NULL(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* The lines of text as parsed JSON objects (up to max), count returned. */
static size_t json_lines(const char *text, json_t **out, size_t max)
{
    size_t cnt = 0;

    while (*text != '\0') {
        const char *nl = strchr(text, '\n');
        size_t len = nl != NULL ? (size_t)(nl - text) : strlen(text);
        json_error_t jerr;

        if (len > 0) {
            json_t *v = json_loadb(text, len, 0, &jerr);

            if (v == NULL)
                er_harness_fail(__FILE__, __LINE__, "not JSON: %.*s", (int)len,
                                text);
            assert_true(cnt < max);
            out[cnt++] = v;
        }
        text += len;
        if (*text == '\n')
            text++;
    }
    return cnt;
}

static void json_lines_free(json_t **v, size_t cnt)
{
    size_t i;

    for (i = 0; i < cnt; i++)
        json_decref(v[i]);
}

/* The number of lines of text. */
static size_t line_count(const char *text)
{
    size_t n = 0;

    for (; *text != '\0'; text++)
        n += *text == '\n';
    return n;
}

/* An acquire of run's Local environment as JSON, with command_id. */
static void acquire_json(const struct er_harness_run *run,
                         const char *command_id, char *out, size_t out_len)
{
    snprintf(out, out_len,
             "{\"commandId\":\"%s\",\"issuedAt\":1790000000000,"
             "\"companyId\":\"%s\",\"agentId\":\"%s\","
             "\"heartbeatRunId\":\"%s\",\"traceparent\":null,"
             "\"command\":{\"type\":\"AcquireCommand\","
             "\"selectedEnvironmentId\":null,\"adapterType\":\"claude_local\","
             "\"issueId\":null,\"executionWorkspaceId\":null,"
             "\"executionWorkspaceMode\":null,\"requestedExpiresAt\":null}}\n",
             command_id, run->company_id, run->agent_id, run->run_id);
}

/* `send --file` produces the command; the worker answers it; `tail results
 * --run` shows exactly that run's results, as JSON and as a table. */
static void send_file_then_tail_results_of_the_run(void **state)
{
    struct er_harness_run run;
    struct er_harness_run other;
    struct er_harness_cmd other_cmd;
    struct ctl_run r;
    char command_id[37];
    char release_id[37];
    char json[2048];
    char path[ER_HARNESS_PATH_MAX + 64];
    json_t *lines[16];
    const json_t *res;
    int64_t t0;
    size_t cnt;
    size_t i;

    (void)state;
    er_harness_run_init(&run);
    er_harness_run_init(&other);
    assert_int_equal(er_uuid_v4(command_id), 0);
    acquire_json(&run, command_id, json, sizeof(json));
    write_file("acquire.json", json, path, sizeof(path));
    ctl(&r, NULL, "send", "--file", path, NULL);
    assert_int_equal(r.exit_code, 0);
    assert_int_equal(strncmp(r.out, command_id, 36), 0);
    ctl_run_fini(&r);
    res = er_harness_wait_result(h, command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_OK(res);

    /* Another run's result, which the filter must leave out. */
    er_harness_cmd_acquire(&other_cmd, &other);
    ER_HARNESS_NON_NULL(
        er_harness_roundtrip(h, worker, &other_cmd, ER_HARNESS_WAIT_MS));

    /* A release from standard input, the shape tail prints: no commandId
     * (one is made and printed). */
    snprintf(json, sizeof(json),
             "{\"companyId\":\"%s\",\"agentId\":\"%s\","
             "\"heartbeatRunId\":\"%s\",\"command\":{\"type\":"
             "\"ReleaseCommand\",\"status\":\"released\","
             "\"failureReason\":null}}",
             run.company_id, run.agent_id, run.run_id);
    write_file("release.json", json, path, sizeof(path));
    ctl(&r, path, "send", "--file", "-", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_true(strlen(r.out) >= 36);
    memcpy(release_id, r.out, 36);
    release_id[36] = '\0';
    assert_true(er_uuid_is_valid(release_id, 36));
    ctl_run_fini(&r);
    res = er_harness_wait_result(h, release_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_OK(res);

    ctl(&r, NULL, "tail", "results", "--from-beginning", "--run", run.run_id,
        "--format", "json", "--timeout-ms", "20000", NULL);
    assert_int_equal(r.exit_code, 0);
    cnt = json_lines(r.out, lines, 16);
    assert_int_equal(cnt, 2);
    for (i = 0; i < cnt; i++) {
        const json_t *value = json_object_get(lines[i], "value");

        assert_string_equal(
            json_string_value(json_object_get(lines[i], "topic")), "results");
        ER_HARNESS_ASSERT_STR(value, "heartbeatRunId", run.run_id);
        ER_HARNESS_ASSERT_STR(value, "outcome", "ok");
    }
    ER_HARNESS_ASSERT_STR(json_object_get(lines[0], "value"), "commandId",
                          command_id);
    ER_HARNESS_ASSERT_STR(json_object_get(lines[1], "value"), "commandId",
                          release_id);
    json_lines_free(lines, cnt);
    ctl_run_fini(&r);

    /* --outcome error of that run: none; a filter on a field results lack
     * (lease of the commands topic) matches the realize-less run nowhere. */
    ctl(&r, NULL, "tail", "results", "--from-beginning", "--run", run.run_id,
        "--outcome", "error", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_string_equal(r.out, "");
    ctl_run_fini(&r);

    ctl(&r, NULL, "tail", "results", "--from-beginning", "--company",
        run.company_id, "--format", "table", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_int_equal(line_count(r.out), 3); /* header + 2 */
    assert_int_equal(strncmp(r.out, "TIME", 4), 0);
    ER_HARNESS_ASSERT_CONTAINS(r.out, "OUTCOME");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "acquire   ok");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "release   ok");
    ER_HARNESS_ASSERT_CONTAINS(r.out, run.run_id);
    assert_null(strstr(r.out, other.run_id));
    ctl_run_fini(&r);

    /* --follow does not stop at the end: it prints the same two results,
     * then waits for more until --timeout-ms passes without a record. */
    t0 = er_harness_mono_us();
    ctl(&r, NULL, "tail", "results", "--from-beginning", "--follow", "--run",
        run.run_id, "--timeout-ms", "2000", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_int_equal(line_count(r.out), 2);
    assert_true(er_harness_mono_us() - t0 >= 2000 * 1000);
    ctl_run_fini(&r);
    /* Without --from-beginning tail follows new records only, as before. */
    ctl(&r, NULL, "tail", "results", "--timeout-ms", "1500", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_string_equal(r.out, "");
    ctl_run_fini(&r);

    /* The commands topic as a table shows the JSON-sent acquire. */
    ctl(&r, NULL, "tail", "commands", "--from-beginning", "--run", run.run_id,
        "--format", "table", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_int_equal(line_count(r.out), 3);
    ER_HARNESS_ASSERT_CONTAINS(r.out, "AcquireCommand");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "2026-09-21T");
    ctl_run_fini(&r);

    /* The run's lease from Postgres as JSON lines: released, no failure. */
    ctl(&r, NULL, "leases", "--database-url", h->db_url, "--run", run.run_id,
        "--format", "json", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_int_equal(line_count(r.out), 1);
    {
        json_t *lease = json_loads(r.out, JSON_DISABLE_EOF_CHECK, NULL);

        ER_HARNESS_NON_NULL(lease);
        ER_HARNESS_ASSERT_STR(lease, "status", "released");
        ER_HARNESS_ASSERT_STR(lease, "heartbeatRunId", run.run_id);
        ER_HARNESS_NON_NULL(er_harness_json_str(lease, "releasedAt"));
        assert_true(json_is_null(json_object_get(lease, "failureReason")));
        assert_true(
            er_uuid_is_valid(er_harness_json_str(lease, "leaseId"), 36));
        json_decref(lease);
    }
    ctl_run_fini(&r);
    ctl(&r, NULL, "leases", "--database-url", h->db_url, "--format", "yaml",
        NULL);
    assert_int_equal(r.exit_code, 2);
    ER_HARNESS_ASSERT_CONTAINS(r.err, "--format");
    ctl_run_fini(&r);
}

/* send --file of text (written to name): exit 2, one line naming the file
 * and holding needle. */
static void expect_bad_file(const char *name, const char *text,
                            const char *needle)
{
    struct ctl_run r;
    char path[ER_HARNESS_PATH_MAX + 64];

    write_file(name, text, path, sizeof(path));
    ctl(&r, NULL, "send", "--file", path, NULL);
    assert_int_equal(r.exit_code, 2);
    ER_HARNESS_ASSERT_CONTAINS(r.err, needle);
    ER_HARNESS_ASSERT_CONTAINS(r.err, path);
    assert_int_equal(line_count(r.err), 1);
    ctl_run_fini(&r);
}

/* A bad file is a usage error naming the field, and nothing is sent. */
static void send_file_rejects_bad_fields(void **state)
{
    struct er_harness_run run;
    struct ctl_run r;
    char json[2048];
    char path[ER_HARNESS_PATH_MAX + 64];
    size_t before;

    (void)state;
    er_harness_run_init(&run);
    er_harness_poll(h, 300);
    before = er_harness_count(h, ER_HARNESS_COMMANDS);

    snprintf(json, sizeof(json),
             "{\"companyId\":\"%s\",\"agentId\":\"%s\","
             "\"heartbeatRunId\":\"not-a-uuid\",\"command\":{\"type\":"
             "\"AcquireCommand\",\"adapterType\":\"claude_local\"}}",
             run.company_id, run.agent_id);
    expect_bad_file("bad-run.json", json, "heartbeatRunId: not a uuid");
    snprintf(json, sizeof(json),
             "{\"companyId\":\"%s\",\"agentId\":\"%s\",\"command\":"
             "{\"type\":\"RealizeCommand\",\"adapterType\":\"x\"}}",
             run.company_id, run.agent_id);
    expect_bad_file("bad-realize.json", json,
                    "command.workspaceJson: required");
    snprintf(json, sizeof(json),
             "{\"companyId\":\"%s\",\"agentId\":\"%s\",\"command\":"
             "{\"type\":\"AcquireCommand\",\"adapterType\":\"x\","
             "\"adapterTyp\":\"y\"}}",
             run.company_id, run.agent_id);
    expect_bad_file("typo.json", json, "command.adapterTyp: unknown field");
    expect_bad_file("garbage.json", "{\"commandId\":", "not JSON");
    expect_bad_file("empty.json", "{}", "companyId: required");
    snprintf(json, sizeof(json),
             "{\"companyId\":\"%s\",\"agentId\":\"%s\",\"command\":"
             "{\"type\":\"RealizeCommand\",\"adapterType\":\"x\","
             "\"workspaceJson\":\"{}\",\"hostApiToken\":\"<redacted>\"}}",
             run.company_id, run.agent_id);
    expect_bad_file("redacted.json", json, "command.hostApiToken");

    write_file("garbage.json", "{}", path, sizeof(path));
    ctl(&r, NULL, "send", "--file", path, "--kind", "acquire", NULL);
    assert_int_equal(r.exit_code, 2);
    ER_HARNESS_ASSERT_CONTAINS(r.err, "--kind");
    ctl_run_fini(&r);

    er_harness_poll(h, 1000);
    assert_int_equal(er_harness_count(h, ER_HARNESS_COMMANDS), before);
}

/* Produce value to the dlq with key and the worker's headers. */
static void produce_letter(const char *key, const void *value, size_t len,
                           const char *code)
{
    char topic[256];
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(4);
    rd_kafka_vu_t vu[5];
    rd_kafka_error_t *error;

    er_harness_topic_name(h, "commands.dlq", topic, sizeof(topic));
    assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", h->brokers,
                                       errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    ER_HARNESS_NON_NULL(rk);
    rd_kafka_header_add(hdrs, "envrun.error", -1, "test: held back", -1);
    rd_kafka_header_add(hdrs, "envrun.error.code", -1, code, -1);
    rd_kafka_header_add(hdrs, "envrun.source.partition", -1, "0", -1);
    rd_kafka_header_add(hdrs, "envrun.source.offset", -1, "0", -1);
    memset(vu, 0, sizeof(vu));
    vu[0].vtype = RD_KAFKA_VTYPE_TOPIC;
    vu[0].u.cstr = topic;
    vu[1].vtype = RD_KAFKA_VTYPE_VALUE;
    vu[1].u.mem.ptr = (void *)(uintptr_t)value;
    vu[1].u.mem.size = len;
    vu[2].vtype = RD_KAFKA_VTYPE_KEY;
    vu[2].u.mem.ptr = (void *)(uintptr_t)key;
    vu[2].u.mem.size = strlen(key);
    vu[3].vtype = RD_KAFKA_VTYPE_HEADERS;
    vu[3].u.headers = hdrs;
    vu[4].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vu[4].u.i = RD_KAFKA_MSG_F_COPY;
    error = rd_kafka_produceva(rk, vu, 5);
    assert_null(error);
    assert_int_equal(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_destroy(rk);
}

static void encode(const struct er_run_command *cmd, struct er_buf *out)
{
    struct er_err err;

    er_err_clear(&err);
    er_buf_init(out, (size_t)4 * 1024 * 1024);
    if (er_codec_command_encode(cmd, out, &err) != 0)
        er_harness_fail(__FILE__, __LINE__, "encode: %s", err.msg);
}

/* The line of lines[0..cnt) whose key is key. */
static const json_t *line_with_key(json_t **lines, size_t cnt, const char *key)
{
    size_t i;

    for (i = 0; i < cnt; i++) {
        const char *k = json_string_value(json_object_get(lines[i], "key"));

        if (k != NULL && strcmp(k, key) == 0)
            return lines[i];
    }
    er_harness_fail(__FILE__, __LINE__, "no line with key %s", key);
    return NULL;
}

/* A malformed command lands on the dlq; list shows the reason; a dry run
 * produces nothing; replay skips what is not a valid command, replays a
 * valid letter (the worker answers it) and never twice. */
static void dlq_list_and_replay(void **state)
{
    static const uint8_t junk[] = { 'j', 'u', 'n', 'k', 0xff, 0x00 };
    struct er_harness_run run;
    struct er_harness_run run2;
    struct er_harness_cmd good;
    struct er_harness_cmd realize;
    struct er_buf good_bytes;
    struct er_buf realize_bytes;
    struct ctl_run r;
    char junk_key[37];
    json_t *lines[64];
    const json_t *line;
    const json_t *res;
    char off_s[24];
    char part_s[24];
    size_t commands_before;
    size_t cnt;

    (void)state;
    er_harness_run_init(&run);
    er_harness_run_init(&run2);
    assert_int_equal(er_uuid_v4(junk_key), 0);
    assert_int_equal(
        er_harness_produce(h, "commands", junk_key, junk, sizeof(junk)), 0);
    assert_true(er_harness_wait_key(h, ER_HARNESS_DLQ, junk_key, 1,
                                    ER_HARNESS_FIRST_WAIT_MS));

    ctl(&r, NULL, "dlq", "list", NULL);
    assert_int_equal(r.exit_code, 0);
    cnt = json_lines(r.out, lines, 64);
    line = line_with_key(lines, cnt, junk_key);
    ER_HARNESS_ASSERT_STR(line, "errorCode", "undecodable");
    ER_HARNESS_NON_NULL(er_harness_json_str(line, "error"));
    assert_true(json_is_integer(json_object_get(line, "sourceOffset")));
    assert_true(json_is_null(json_object_get(line, "command")));
    ER_HARNESS_NON_NULL(er_harness_json_str(line, "decodeError"));
    json_lines_free(lines, cnt);
    ctl_run_fini(&r);

    /* Valid commands held back on the dlq: an acquire nobody answered yet,
     * and a realize (dead letters keep no hostApiToken). */
    er_harness_cmd_acquire(&good, &run);
    encode(&good.cmd, &good_bytes);
    produce_letter(run.run_id, good_bytes.data, good_bytes.len,
                   "invalid_command");
    er_harness_cmd_realize(&realize, &run2, h->dir);
    encode(&realize.cmd, &realize_bytes);
    produce_letter(run2.run_id, realize_bytes.data, realize_bytes.len,
                   "invalid_command");
    assert_true(er_harness_wait_key(h, ER_HARNESS_DLQ, run.run_id, 1,
                                    ER_HARNESS_WAIT_MS));
    assert_true(er_harness_wait_key(h, ER_HARNESS_DLQ, run2.run_id, 1,
                                    ER_HARNESS_WAIT_MS));

    ctl(&r, NULL, "dlq", "list", "--format", "table", NULL);
    assert_int_equal(r.exit_code, 0);
    ER_HARNESS_ASSERT_CONTAINS(r.out, "PARTITION");
    ER_HARNESS_ASSERT_CONTAINS(r.out, junk_key);
    ER_HARNESS_ASSERT_CONTAINS(r.out, "undecodable");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "test: held back");
    ctl_run_fini(&r);

    er_harness_poll(h, 500);
    commands_before = er_harness_count(h, ER_HARNESS_COMMANDS);
    ctl(&r, NULL, "dlq", "replay", "--all", "--dry-run", NULL);
    assert_int_equal(r.exit_code, 0);
    cnt = json_lines(r.out, lines, 64);
    line = line_with_key(lines, cnt, junk_key);
    ER_HARNESS_ASSERT_STR(line, "action", "skipped");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(line, "reason"),
                               "does not decode");
    line = line_with_key(lines, cnt, run.run_id);
    ER_HARNESS_ASSERT_STR(line, "action", "would-replay");
    ER_HARNESS_ASSERT_STR(line, "commandId", good.command_id);
    line = line_with_key(lines, cnt, run2.run_id);
    ER_HARNESS_ASSERT_STR(line, "action", "would-replay");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(line, "note"),
                               "hostApiToken");
    /* Choose the good letter alone by partition and offset. */
    snprintf(off_s, sizeof(off_s), "%lld",
             (long long)json_integer_value(json_object_get(
                 line_with_key(lines, cnt, run.run_id), "offset")));
    snprintf(part_s, sizeof(part_s), "%lld",
             (long long)json_integer_value(json_object_get(
                 line_with_key(lines, cnt, run.run_id), "partition")));
    json_lines_free(lines, cnt);
    ER_HARNESS_ASSERT_CONTAINS(r.err, "would be replayed");
    ctl_run_fini(&r);
    er_harness_poll(h, 1500);
    assert_int_equal(er_harness_count(h, ER_HARNESS_COMMANDS), commands_before);

    ctl(&r, NULL, "dlq", "replay", "--partition", part_s, "--offset", off_s,
        NULL);
    assert_int_equal(r.exit_code, 0);
    cnt = json_lines(r.out, lines, 64);
    assert_int_equal(cnt, 1);
    ER_HARNESS_ASSERT_STR(lines[0], "action", "replayed");
    ER_HARNESS_ASSERT_STR(lines[0], "key", run.run_id);
    assert_true(json_is_integer(json_object_get(lines[0], "toOffset")));
    json_lines_free(lines, cnt);
    ctl_run_fini(&r);
    res = er_harness_wait_result(h, good.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_OK(res);
    /* The harness reads topics independently: give commands its turn. */
    er_harness_poll(h, 1000);
    assert_int_equal(er_harness_count(h, ER_HARNESS_COMMANDS),
                     commands_before + 1);

    /* Everything again: the replayed letter is found on commands and
     * skipped; the junk is skipped; only the realize goes. */
    ctl(&r, NULL, "dlq", "replay", "--all", "--format", "json", NULL);
    assert_int_equal(r.exit_code, 0);
    cnt = json_lines(r.out, lines, 64);
    line = line_with_key(lines, cnt, run.run_id);
    ER_HARNESS_ASSERT_STR(line, "action", "skipped");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(line, "reason"),
                               "already replayed");
    ER_HARNESS_ASSERT_STR(line_with_key(lines, cnt, junk_key), "action",
                          "skipped");
    ER_HARNESS_ASSERT_STR(line_with_key(lines, cnt, run2.run_id), "action",
                          "replayed");
    json_lines_free(lines, cnt);
    ctl_run_fini(&r);
    er_harness_poll(h, 1500);
    assert_int_equal(er_harness_count(h, ER_HARNESS_COMMANDS),
                     commands_before + 2);

    /* A third time nothing at all is produced. */
    ctl(&r, NULL, "dlq", "replay", "--error-code", "invalid_command", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_null(strstr(r.out, "\"action\":\"replayed\""));
    ER_HARNESS_ASSERT_CONTAINS(r.out, "already replayed");
    ctl_run_fini(&r);
    er_harness_poll(h, 1500);
    assert_int_equal(er_harness_count(h, ER_HARNESS_COMMANDS),
                     commands_before + 2);

    er_buf_fini(&good_bytes);
    er_buf_fini(&realize_bytes);
}

/* Usage errors: exit 2, one line naming the option. */
static void usage_errors_name_the_option(void **state)
{
    struct ctl_run r;

    (void)state;
    ctl(&r, NULL, "dlq", "replay", NULL);
    assert_int_equal(r.exit_code, 2);
    assert_int_equal(line_count(r.err), 1);
    ER_HARNESS_ASSERT_CONTAINS(r.err, "--all");
    ctl_run_fini(&r);

    ctl(&r, NULL, "tail", "results", "--outcome", "maybe", NULL);
    assert_int_equal(r.exit_code, 2);
    assert_int_equal(line_count(r.err), 1);
    ER_HARNESS_ASSERT_CONTAINS(r.err, "--outcome");
    ctl_run_fini(&r);

    ctl(&r, NULL, "dlq", "list", "--format", "yaml", NULL);
    assert_int_equal(r.exit_code, 2);
    ER_HARNESS_ASSERT_CONTAINS(r.err, "--format");
    ctl_run_fini(&r);

    ctl(&r, NULL, "dlq", "replay", "--offset", "x", NULL);
    assert_int_equal(r.exit_code, 2);
    ER_HARNESS_ASSERT_CONTAINS(r.err, "--offset");
    ctl_run_fini(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(send_file_then_tail_results_of_the_run),
        cmocka_unit_test(send_file_rejects_bad_fields),
        cmocka_unit_test(dlq_list_and_replay),
        cmocka_unit_test(usage_errors_name_the_option),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
