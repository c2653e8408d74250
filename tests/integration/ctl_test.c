/* ctl_test: envrunctl against the mock cluster and a worker: `send --file`
 * (JSON in the shape tail prints, validated first), `tail` filtered and as
 * a table, `dlq list` with the reasons, and `dlq replay` (dry run produces
 * nothing, invalid letters are skipped with a reason, a valid letter is
 * answered by the worker, a second replay produces nothing, a redacted one
 * only with --force). Also what must not get out: no token in raw bytes,
 * no secret keys of JSON fields, no terminal escapes in tables or error
 * lines, and no endless run once nobody reads stdout. */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
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

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0)
        continue; /* a signal came: sleep the rest */
}

/* One envrunctl process: started by ctl_startv, reaped by ctl_wait. */
struct ctl_child {
    pid_t pid;
    int out_fd; /* the read end of its stdout when piped, else -1 */
    char out_path[ER_HARNESS_PATH_MAX + 64];
    char err_path[ER_HARNESS_PATH_MAX + 64];
};

/* Start envrunctl with the NULL-terminated words of ap after the program
 * name, standard input from stdin_path (NULL: /dev/null), stdout into a
 * file or (is_piped) a pipe whose read end is c->out_fd, stderr into a
 * file, with the harness's brokers and prefix in the environment. */
static void ctl_startv(struct ctl_child *c, const char *stdin_path,
                       bool is_piped, va_list ap)
{
    static int seq;
    char brokers[ER_HARNESS_URL_MAX + 32];
    char prefix[128];
    char *envp[] = { brokers, prefix, "PATH=/usr/bin:/bin", NULL };
    char *argv[32];
    int fds[2] = { -1, -1 };
    size_t n = 0;

    snprintf(brokers, sizeof(brokers), "ENVRUN_KAFKA_BROKERS=%s", h->brokers);
    snprintf(prefix, sizeof(prefix), "ENVRUN_TOPIC_PREFIX=%s", h->prefix);
    snprintf(c->out_path, sizeof(c->out_path), "%s/ctl-%d.out", h->dir, seq);
    snprintf(c->err_path, sizeof(c->err_path), "%s/ctl-%d.err", h->dir, seq++);
    argv[n++] = ENVRUNCTL;
    for (;;) {
        char *word = va_arg(ap, char *);

        assert_true(n < sizeof(argv) / sizeof(argv[0]) - 1);
        argv[n++] = word;
        if (word == NULL)
            break;
    }
    if (is_piped)
        assert_int_equal(pipe(fds), 0);
    c->out_fd = fds[0];
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        if (freopen(stdin_path != NULL ? stdin_path : "/dev/null", "r",
                    stdin) == NULL ||
            freopen(c->err_path, "w", stderr) == NULL)
            _exit(126);
        if (is_piped) {
            close(fds[0]);
            if (dup2(fds[1], STDOUT_FILENO) < 0)
                _exit(126);
            close(fds[1]);
        } else if (freopen(c->out_path, "w", stdout) == NULL) {
            _exit(126);
        }
        execve(argv[0], argv, envp);
        _exit(127);
    }
    if (is_piped)
        close(fds[1]);
}

/* Start envrunctl (words after the program name, NULL-terminated) with its
 * stdout into a pipe: c->out_fd. */
static void ctl_start_piped(struct ctl_child *c, ...)
{
    va_list ap;

    va_start(ap, c);
    ctl_startv(c, NULL, true, ap);
    va_end(ap);
}

/* Wait up to timeout_ms for c to exit; its exit code. A child still
 * running then is killed and the test fails. */
static int ctl_wait(struct ctl_child *c, int timeout_ms)
{
    int64_t deadline = er_harness_mono_us() + (int64_t)timeout_ms * 1000;
    int status = 0;
    pid_t got;

    for (;;) {
        got = waitpid(c->pid, &status, WNOHANG);
        if (got != 0 || er_harness_mono_us() > deadline)
            break;
        sleep_ms(20);
    }
    if (got == 0) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, &status, 0);
        er_harness_fail(__FILE__, __LINE__,
                        "envrunctl still running after %d ms", timeout_ms);
    }
    assert_int_equal(got, c->pid);
    assert_true(WIFEXITED(status));
    if (c->out_fd >= 0)
        close(c->out_fd);
    c->out_fd = -1;
    return WEXITSTATUS(status);
}

/* Run envrunctl with the NULL-terminated words after the program name,
 * standard input from stdin_path (NULL: /dev/null), with the harness's
 * brokers and prefix in the environment. */
static void ctl(struct ctl_run *r, const char *stdin_path, ...)
{
    struct ctl_child c;
    va_list ap;

    va_start(ap, stdin_path);
    ctl_startv(&c, stdin_path, false, ap);
    va_end(ap);
    r->exit_code = ctl_wait(&c, 300 * 1000);
    r->out = er_harness_read_text(c.out_path, OUT_MAX);
    r->err = er_harness_read_text(c.err_path, OUT_MAX);
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
            json_t *v = json_loadb(text, len, JSON_ALLOW_NUL, &jerr);

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

/* No byte that could steer a terminal in text: ESC, BEL, DEL, and the C1
 * CSI (U+009B) in UTF-8. */
static void assert_no_escapes(const char *text)
{
    assert_null(strchr(text, 0x1b));
    assert_null(strchr(text, 0x07));
    assert_null(strchr(text, 0x7f));
    assert_null(strstr(text, "\xc2\x9b"));
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
    assert_no_escapes(r.err);
    ctl_run_fini(&r);
}

/* Run envrunctl with the words (NULL-terminated) after needle: exit 2 and
 * one line on stderr holding needle. */
static void expect_usage(const char *needle, ...)
{
    struct ctl_child c;
    char *err;
    va_list ap;

    va_start(ap, needle);
    ctl_startv(&c, NULL, false, ap);
    va_end(ap);
    assert_int_equal(ctl_wait(&c, 60 * 1000), 2);
    err = er_harness_read_text(c.err_path, OUT_MAX);
    ER_HARNESS_NON_NULL(err);
    assert_int_equal(line_count(err), 1);
    ER_HARNESS_ASSERT_CONTAINS(err, needle);
    er_free(err);
}

/* A RunCommand of run as JSON into out: the ids, and "command" an object
 * with the members body (JSON text without braces). */
static void command_json(char *out, size_t out_len,
                         const struct er_harness_run *run, const char *body)
{
    snprintf(out, out_len,
             "{\"companyId\":\"%s\",\"agentId\":\"%s\",\"command\":{%s}}",
             run->company_id, run->agent_id, body);
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
    /* What tail prints in place of secret keys is not their value. */
    command_json(json, sizeof(json), &run,
                 "\"type\":\"RealizeCommand\",\"adapterType\":\"x\","
                 "\"workspaceJson\":\"{\\\"password\\\":"
                 "\\\"***REDACTED***\\\"}\"");
    expect_bad_file("masked.json", json, "command.workspaceJson");
    /* An unknown field's name is quoted on stderr, without its escapes. */
    command_json(json, sizeof(json), &run,
                 "\"type\":\"AcquireCommand\",\"adapterType\":\"x\","
                 "\"\\u001b[31mevil\\u009b\\u007f\":\"y\"");
    expect_bad_file("escape.json", json, "command.?[31mevil??: unknown field");

    /* A file that is not there: exit 2 naming it. */
    snprintf(path, sizeof(path), "%s/no-such-file.json", h->dir);
    expect_usage(path, "send", "--file", path, NULL);
    expect_usage(path, "send", "--raw-file", path, NULL);

    write_file("garbage.json", "{}", path, sizeof(path));
    ctl(&r, NULL, "send", "--file", path, "--kind", "acquire", NULL);
    assert_int_equal(r.exit_code, 2);
    ER_HARNESS_ASSERT_CONTAINS(r.err, "--kind");
    ctl_run_fini(&r);

    er_harness_poll(h, 1000);
    assert_int_equal(er_harness_count(h, ER_HARNESS_COMMANDS), before);
}

/* Produce value copies times to topic prefix + suffix with key (key_len
 * bytes) and the headers hdrs: name, value, name, value, ..., NULL (values
 * are C strings). */
static void produce_raw(const char *suffix, const void *key, size_t key_len,
                        const void *value, size_t len, const char *const *hdrs,
                        int copies)
{
    char topic[256];
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;
    rd_kafka_headers_t *headers = rd_kafka_headers_new(8);
    rd_kafka_vu_t vu[5];
    rd_kafka_error_t *error;
    size_t i;

    er_harness_topic_name(h, suffix, topic, sizeof(topic));
    assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", h->brokers,
                                       errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    ER_HARNESS_NON_NULL(rk);
    for (i = 0; hdrs != NULL && hdrs[i] != NULL; i += 2)
        rd_kafka_header_add(headers, hdrs[i], -1, hdrs[i + 1], -1);
    memset(vu, 0, sizeof(vu));
    vu[0].vtype = RD_KAFKA_VTYPE_TOPIC;
    vu[0].u.cstr = topic;
    vu[1].vtype = RD_KAFKA_VTYPE_VALUE;
    vu[1].u.mem.ptr = (void *)(uintptr_t)value;
    vu[1].u.mem.size = len;
    vu[2].vtype = RD_KAFKA_VTYPE_KEY;
    vu[2].u.mem.ptr = (void *)(uintptr_t)key;
    vu[2].u.mem.size = key_len;
    vu[3].vtype = RD_KAFKA_VTYPE_HEADERS;
    vu[4].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vu[4].u.i = RD_KAFKA_MSG_F_COPY;
    for (; copies > 0; copies--) {
        /* A produced record owns its headers. */
        vu[3].u.headers = rd_kafka_headers_copy(headers);
        error = rd_kafka_produceva(rk, vu, 5);
        assert_null(error);
        rd_kafka_poll(rk, 0);
    }
    rd_kafka_headers_destroy(headers);
    assert_int_equal(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_destroy(rk);
}

/* Produce value to the dlq with key and the worker's headers; redacted
 * (NULL: none) is the envrun.redacted header. */
static void produce_letter(const char *key, const void *value, size_t len,
                           const char *code, const char *redacted)
{
    const char *hdrs[] = { "envrun.error",
                           "test: held back",
                           "envrun.error.code",
                           code,
                           "envrun.source.partition",
                           "0",
                           "envrun.source.offset",
                           "0",
                           redacted != NULL ? "envrun.redacted" : NULL,
                           redacted,
                           NULL };

    produce_raw("commands.dlq", key, strlen(key), value, len, hdrs, 1);
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

/* `dlq replay` of the one letter at partition part_s, offset off_s (with
 * --force when is_force): exit 0 and one JSON line, returned (the caller
 * json_decrefs it). */
static json_t *replay_letter(const char *part_s, const char *off_s,
                             bool is_force)
{
    struct ctl_run r;
    json_t *line = NULL;

    ctl(&r, NULL, "dlq", "replay", "--partition", part_s, "--offset", off_s,
        is_force ? "--force" : NULL, NULL);
    assert_int_equal(r.exit_code, 0);
    assert_int_equal(json_lines(r.out, &line, 1), 1);
    ctl_run_fini(&r);
    return line;
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
                   "invalid_command", NULL);
    er_harness_cmd_realize(&realize, &run2, h->dir);
    encode(&realize.cmd, &realize_bytes);
    produce_letter(run2.run_id, realize_bytes.data, realize_bytes.len,
                   "invalid_command", NULL);
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

    lines[0] = replay_letter(part_s, off_s, false);
    ER_HARNESS_ASSERT_STR(lines[0], "action", "replayed");
    ER_HARNESS_ASSERT_STR(lines[0], "key", run.run_id);
    assert_true(json_is_integer(json_object_get(lines[0], "toOffset")));
    json_decref(lines[0]);
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
    (void)state;
    expect_usage("--all", "dlq", "replay", NULL);
    expect_usage("--outcome", "tail", "results", "--outcome", "maybe", NULL);
    expect_usage("--format", "dlq", "list", "--format", "yaml", NULL);
    expect_usage("--offset", "dlq", "replay", "--offset", "x", NULL);
    /* The dlq has two partitions: an offset alone names no letter. */
    expect_usage("--offset needs --partition", "dlq", "replay", "--offset", "0",
                 NULL);
    /* A typo'd topic is a usage error naming the valid ones. */
    expect_usage("unknown topic resluts: expected commands, results, "
                 "lease-events",
                 "tail", "resluts", "--from-beginning", NULL);
    expect_usage("--topic-prefix", "tail", "results", "--topic-prefix",
                 "bad prefix", NULL);
    expect_usage("database url", "leases", "--database-url", "not a url", NULL);
    expect_usage("--status", "leases", "--database-url", h->db_url, "--status",
                 "gone", NULL);
}

/* A realize carrying hostApiToken and secret keys in its JSON fields:
 * decoded on commands, tail masks them; undecodable (framed for a registry
 * envrunctl was not given, or a letter kept whole with an unknown
 * fingerprint), tail shows no byte of it; dlq list masks the JSON fields
 * of a letter kept whole. */
static void secrets_stay_out_of_tail_and_dlq_list(void **state)
{
    static const char token[] = "tok-SECRET-4711";
    static const uint8_t frame_hdr[] = { 0x00, 0x00, 0x00, 0x00, 0x2a };
    struct er_harness_run run;
    struct er_harness_run run2;
    struct er_harness_cmd realize;
    struct er_buf bytes;
    struct er_buf framed;
    struct er_buf unknown;
    struct ctl_run r;
    char ws[ER_HARNESS_PATH_MAX + 128];
    char kept_key[37];
    char letter_key[37];
    json_t *lines[256];
    const json_t *line;
    const json_t *command;
    size_t cnt;

    (void)state;
    er_harness_run_init(&run);
    er_harness_run_init(&run2);
    assert_int_equal(er_uuid_v4(kept_key), 0);
    assert_int_equal(er_uuid_v4(letter_key), 0);
    er_harness_cmd_realize(&realize, &run, h->dir);
    snprintf(ws, sizeof(ws), "{\"cwd\":\"%s\",\"password\":\"pw-SECRET-1\"}",
             h->dir);
    realize.cmd.workspace_json = ws;
    realize.cmd.runtime_overlay_json =
        "{\"env\":{\"API_TOKEN\":\"tok2-SECRET\",\"MODE\":\"fast\"}}";
    assert_int_equal(
        er_secret_set(&realize.cmd.host_api_token, token, strlen(token)), 0);
    encode(&realize.cmd, &bytes);
    er_secret_fini(&realize.cmd.host_api_token);

    er_buf_init(&framed, bytes.max_len);
    assert_int_equal(er_buf_append(&framed, frame_hdr, sizeof(frame_hdr)), 0);
    assert_int_equal(er_buf_append(&framed, bytes.data, bytes.len), 0);
    er_buf_init(&unknown, bytes.max_len);
    assert_int_equal(er_buf_append(&unknown, bytes.data, bytes.len), 0);
    unknown.data[2] ^= 0xff; /* a fingerprint nobody knows */
    unknown.data[9] ^= 0xff;

    assert_int_equal(
        er_harness_produce(h, "commands", run.run_id, bytes.data, bytes.len),
        0);
    assert_int_equal(
        er_harness_produce(h, "commands", run2.run_id, framed.data, framed.len),
        0);
    assert_int_equal(er_harness_flush(h), 0);
    produce_letter(kept_key, unknown.data, unknown.len, "unknown_schema", NULL);
    produce_letter(letter_key, bytes.data, bytes.len, "invalid_command", NULL);

    ctl(&r, NULL, "tail", "commands", "--from-beginning", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_null(strstr(r.out, token));
    assert_null(strstr(r.out, "pw-SECRET"));
    assert_null(strstr(r.out, "tok2-SECRET"));
    cnt = json_lines(r.out, lines, 256);
    line = line_with_key(lines, cnt, run.run_id);
    command = json_object_get(json_object_get(line, "value"), "command");
    ER_HARNESS_ASSERT_STR(command, "hostApiToken", "<redacted>");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(command, "workspaceJson"),
                               "\"password\":\"***REDACTED***\"");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(command, "workspaceJson"),
                               h->dir);
    ER_HARNESS_ASSERT_CONTAINS(
        er_harness_json_str(command, "runtimeOverlayJson"), "\"MODE\"");
    line = line_with_key(lines, cnt, run2.run_id);
    assert_null(json_object_get(line, "valueBase64"));
    assert_int_equal(json_integer_value(json_object_get(line, "valueLength")),
                     (json_int_t)framed.len);
    ER_HARNESS_ASSERT_STR(line, "valueHeaderHex", "000000002a");
    json_lines_free(lines, cnt);
    ctl_run_fini(&r);

    /* A dead-letter topic never shows its bytes. */
    ctl(&r, NULL, "tail", "commands.dlq", "--from-beginning", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_null(strstr(r.out, "valueBase64"));
    cnt = json_lines(r.out, lines, 256);
    line = line_with_key(lines, cnt, kept_key);
    assert_int_equal(json_integer_value(json_object_get(line, "valueLength")),
                     (json_int_t)unknown.len);
    assert_int_equal(
        strncmp(er_harness_json_str(line, "valueHeaderHex"), "c301", 4), 0);
    json_lines_free(lines, cnt);
    ctl_run_fini(&r);

    ctl(&r, NULL, "dlq", "list", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_null(strstr(r.out, token));
    assert_null(strstr(r.out, "pw-SECRET"));
    assert_null(strstr(r.out, "tok2-SECRET"));
    cnt = json_lines(r.out, lines, 256);
    ER_HARNESS_ASSERT_CONTAINS(
        er_harness_json_str(line_with_key(lines, cnt, letter_key),
                            "command.command.workspaceJson"),
        "***REDACTED***");
    json_lines_free(lines, cnt);
    ctl_run_fini(&r);

    er_buf_fini(&unknown);
    er_buf_fini(&framed);
    er_buf_fini(&bytes);
}

/* Hostile names in letters, keys and lease rows reach no terminal: every
 * table cell and error line shows control characters as '?'; a NUL in a
 * key no longer breaks a table or a filter. */
static void tables_show_no_terminal_escapes(void **state)
{
    static const char evil[] = "evil\x1b[31mred\x7f\xc2\x9b"
                               "2J\x07";
    static const char key[] = "k\x1b[31m\xc2\x9bk\0z"; /* NUL inside */
    const char *hdrs[] = {
        "envrun.error", evil, "envrun.error.code", "x\x1b]0;t\x07", NULL,
    };
    struct er_harness_run run;
    struct ctl_run r;
    char env_id[37];
    const char *params[4];
    const char *lease_params[3];

    (void)state;
    er_harness_run_init(&run);
    produce_raw("commands.dlq", key, sizeof(key) - 1, "junk", 4, hdrs, 1);

    ctl(&r, NULL, "dlq", "list", "--format", "table", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_no_escapes(r.out);
    ER_HARNESS_ASSERT_CONTAINS(r.out, "evil?[31mred??2J?");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "k?[31m?k?z");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "x?]0;t?");
    ctl_run_fini(&r);
    ctl(&r, NULL, "dlq", "list", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_no_escapes(r.out);
    ER_HARNESS_ASSERT_CONTAINS(r.out, "evil\\u001b[31mred\\u007f\\u009b2J");
    ctl_run_fini(&r);

    ctl(&r, NULL, "tail", "commands.dlq", "--from-beginning", "--format",
        "table", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_no_escapes(r.out);
    ER_HARNESS_ASSERT_CONTAINS(r.out, "evil?[31mred??2J?");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "k?[31m?k?z");
    ctl_run_fini(&r);
    /* A filter parses tail's own lines back: \u0000 in a key included. */
    ctl(&r, NULL, "tail", "commands.dlq", "--from-beginning", "--run",
        run.run_id, NULL);
    assert_int_equal(r.exit_code, 0);
    assert_string_equal(r.out, "");
    ctl_run_fini(&r);

    ctl(&r, NULL, "dlq", "replay", "--all", "--dry-run", "--format", "table",
        NULL);
    assert_int_equal(r.exit_code, 0);
    assert_no_escapes(r.out);
    ER_HARNESS_ASSERT_CONTAINS(r.out, "KEY");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "k?[31m?k?z");
    ctl_run_fini(&r);

    /* A lease whose environment name and failure reason are hostile. */
    assert_int_equal(er_uuid_v4(env_id), 0);
    params[0] = env_id;
    params[1] = run.company_id;
    params[2] = "env\x1b[31m\x7f\xc2\x9b";
    params[3] = "\x1b]0;pwned\x07";
    assert_int_equal(er_harness_pg_exec(h->db_url,
                                        "INSERT INTO environments (id, "
                                        "company_id, name) VALUES ($1::uuid, "
                                        "$2::uuid, $3)",
                                        3, params),
                     0);
    lease_params[0] = env_id;
    lease_params[1] = run.company_id;
    lease_params[2] = params[3];
    assert_int_equal(
        er_harness_pg_exec(h->db_url,
                           "INSERT INTO environment_leases (company_id, "
                           "environment_id, status, failure_reason) VALUES "
                           "($2::uuid, $1::uuid, 'failed', $3)",
                           3, lease_params),
        0);
    ctl(&r, NULL, "leases", "--database-url", h->db_url, "--company",
        run.company_id, NULL);
    assert_int_equal(r.exit_code, 0);
    assert_no_escapes(r.out);
    assert_int_equal(line_count(r.out), 2);
    ER_HARNESS_ASSERT_CONTAINS(r.out, "ENVIRONMENT");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "env?[31m??");
    ER_HARNESS_ASSERT_CONTAINS(r.out, "?]0;pwned?");
    ctl_run_fini(&r);
    ctl(&r, NULL, "leases", "--database-url", h->db_url, "--company",
        run.company_id, "--format", "json", NULL);
    assert_int_equal(r.exit_code, 0);
    assert_no_escapes(r.out);
    {
        json_t *lease = json_loads(r.out, JSON_DISABLE_EOF_CHECK, NULL);

        ER_HARNESS_NON_NULL(lease);
        ER_HARNESS_ASSERT_STR(lease, "environment", params[2]);
        ER_HARNESS_ASSERT_STR(lease, "failureReason", params[3]);
        json_decref(lease);
    }
    ctl_run_fini(&r);
}

/* A letter the worker redacted is not replayed as it is unless --force,
 * which notes it. */
static void replay_skips_redacted_letters_unless_forced(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd acquire;
    struct er_buf bytes;
    struct ctl_run r;
    json_t *lines[256];
    const json_t *line;
    const json_t *res;
    char off_s[24];
    char part_s[24];
    size_t cnt;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&acquire, &run);
    encode(&acquire.cmd, &bytes);
    produce_letter(run.run_id, bytes.data, bytes.len, "invalid_command",
                   "secret keys of the JSON fields");
    ctl(&r, NULL, "dlq", "list", NULL);
    assert_int_equal(r.exit_code, 0);
    cnt = json_lines(r.out, lines, 256);
    line = line_with_key(lines, cnt, run.run_id);
    ER_HARNESS_ASSERT_STR(line, "redacted", "secret keys of the JSON fields");
    snprintf(off_s, sizeof(off_s), "%lld",
             (long long)json_integer_value(json_object_get(line, "offset")));
    snprintf(part_s, sizeof(part_s), "%lld",
             (long long)json_integer_value(json_object_get(line, "partition")));
    json_lines_free(lines, cnt);
    ctl_run_fini(&r);

    lines[0] = replay_letter(part_s, off_s, false);
    ER_HARNESS_ASSERT_STR(lines[0], "action", "skipped");
    ER_HARNESS_ASSERT_STR(lines[0], "commandId", acquire.command_id);
    ER_HARNESS_ASSERT_CONTAINS(
        er_harness_json_str(lines[0], "reason"),
        "redacted: the letter lost fields; re-send the original");
    json_decref(lines[0]);

    lines[0] = replay_letter(part_s, off_s, true);
    ER_HARNESS_ASSERT_STR(lines[0], "action", "replayed");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(lines[0], "note"),
                               "redacted");
    json_decref(lines[0]);
    res = er_harness_wait_result(h, acquire.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    er_buf_fini(&bytes);
}

/* Close the read end of c's stdout, then expect c to exit with want
 * within timeout_ms, one line on stderr holding needle. */
static void close_stdout_and_expect(struct ctl_child *c, int timeout_ms,
                                    int want, const char *needle)
{
    char *err;

    close(c->out_fd);
    c->out_fd = -1;
    assert_int_equal(ctl_wait(c, timeout_ms), want);
    err = er_harness_read_text(c->err_path, OUT_MAX);
    ER_HARNESS_NON_NULL(err);
    ER_HARNESS_ASSERT_CONTAINS(err, needle);
    er_free(err);
}

/* Nobody reads stdout any more: tail --follow stops at once, with or
 * without records coming, and replay produces nothing. */
static void closed_stdout_stops_the_command(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd acquire;
    struct er_buf bytes;
    struct ctl_child c;
    char buf[256];
    size_t before;

    (void)state;
    /* tail --follow from the end: no record will come. */
    ctl_start_piped(&c, "tail", "results", "--follow", NULL);
    sleep_ms(1500);
    close_stdout_and_expect(&c, 10000, 1, "envrunctl tail: stdout closed");

    /* tail --from-beginning --follow | head -c 100: records were there. */
    ctl_start_piped(&c, "tail", "results", "--from-beginning", "--follow",
                    NULL);
    assert_true(read(c.out_fd, buf, 100) > 0);
    close_stdout_and_expect(&c, 10000, 1, "stdout closed after");

    /* A replayable letter; stdout closed before replay starts. */
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&acquire, &run);
    encode(&acquire.cmd, &bytes);
    produce_letter(run.run_id, bytes.data, bytes.len, "invalid_command", NULL);
    er_harness_poll(h, 500);
    before = er_harness_count(h, ER_HARNESS_COMMANDS);
    ctl_start_piped(&c, "dlq", "replay", "--all", NULL);
    close_stdout_and_expect(&c, 60000, 1, "0 replayed, 0 skipped");
    er_harness_poll(h, 1500);
    assert_int_equal(er_harness_count(h, ER_HARNESS_COMMANDS), before);
    er_buf_fini(&bytes);
}

/* SIGINT while dlq list is still printing: exit 1, saying how far it got,
 * never 0 after part of the list. */
static void interrupted_dlq_list_fails(void **state)
{
    char error[600];
    const char *hdrs[] = { "envrun.error", error, "envrun.error.code",
                           "undecodable", NULL };
    struct ctl_child c;

    (void)state;
    /* More than a pipe holds (64 KiB): dlq list blocks writing. */
    memset(error, 'e', sizeof(error) - 1);
    error[sizeof(error) - 1] = '\0';
    produce_raw("commands.dlq", "many", 4, "junk", 4, hdrs, 300);
    ctl_start_piped(&c, "dlq", "list", NULL);
    sleep_ms(3000);
    assert_int_equal(kill(c.pid, SIGINT), 0);
    sleep_ms(300);
    /* A write the signal did not break fails once nobody reads. */
    close_stdout_and_expect(&c, 20000, 1,
                            "envrunctl dlq list: interrupted by a signal "
                            "after");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(send_file_then_tail_results_of_the_run),
        cmocka_unit_test(send_file_rejects_bad_fields),
        cmocka_unit_test(dlq_list_and_replay),
        cmocka_unit_test(usage_errors_name_the_option),
        cmocka_unit_test(secrets_stay_out_of_tail_and_dlq_list),
        cmocka_unit_test(tables_show_no_terminal_escapes),
        cmocka_unit_test(replay_skips_redacted_letters_unless_forced),
        cmocka_unit_test(closed_stdout_stops_the_command),
        cmocka_unit_test(interrupted_dlq_list_fails),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
