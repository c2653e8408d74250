/* registry_test: the worker with ENVRUN_SCHEMA_REGISTRY_URL (contract.md
 * 4). The registry is tests/support/registry_standin, a stand-in speaking
 * the Confluent REST API (the real registry is a Java service that cannot
 * run here), with basic auth. Checked: envrun's four schemas are registered
 * on start under <topic>-value; results, lease events and activity go out
 * in the Confluent wire format with those ids; commands are read in both
 * framings; a producer's id is fetched once and cached; an id the registry
 * does not know is dead-lettered with only the header kept; a registry that
 * is down delays the start and loses no command; a refused credential stops
 * the start; the password never reaches the log; an https registry is
 * verified (against `openssl s_server`, a real TLS server); envrunctl
 * sends and reads through the registry too. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/support/harness.h"
#include "tests/support/registry_standin.h"

#define USER_INFO "envrun:s3cret-registry-pass"
#define ENVRUNCTL ER_BUILD_DIR "/envrunctl"

static struct er_harness *h;
static struct er_registry_standin *standin;
static struct er_registry *client; /* the test's own, for the harness */
static char url_env[256];

static int group_setup(void **state)
{
    struct er_err err;
    char url[128];

    (void)state;
    h = er_harness_new("registry", 2, NULL);
    standin = er_registry_standin_start(USER_INFO);
    if (h == NULL || standin == NULL)
        return -1;
    snprintf(url, sizeof(url), "http://" USER_INFO "@127.0.0.1:%d",
             er_registry_standin_port(standin));
    snprintf(url_env, sizeof(url_env), "ENVRUN_SCHEMA_REGISTRY_URL=%s", url);
    er_err_clear(&err);
    if (er_registry_new(url, NULL, &client, &err) != 0) {
        fprintf(stderr, "registry client: %s\n", err.msg);
        return -1;
    }
    /* The harness's reader decodes Confluent-framed records through it. */
    er_registry_install(client);
    return 0;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_destroy(h);
    er_registry_install(NULL);
    er_registry_destroy(client);
    er_registry_standin_stop(standin);
    return rc;
}

static int subject_id(const char *topic)
{
    char subject[160];

    er_harness_topic_name(h, topic, subject, sizeof(subject));
    strncat(subject, "-value", sizeof(subject) - strlen(subject) - 1);
    return er_registry_standin_subject_id(standin, subject);
}

/* Register under subject RunCommand's text with a doc added, as another
 * producer would: another id, the same canonical form. */
static int add_variant(const char *subject, const char *doc)
{
    const char *schema = er_codec_schema_json(ER_REC_RUN_COMMAND);
    char *variant;
    int id;

    ER_HARNESS_NON_NULL(schema);
    variant = er_malloc(strlen(schema) + strlen(doc) + 16);
    ER_HARNESS_NON_NULL(variant);
    /* {"doc":"...", <the rest of the object>} */
    sprintf(variant, "{\"doc\":\"%s\",%s", doc, strchr(schema, '{') + 1);
    id = er_registry_standin_add(standin, subject, variant);
    er_free(variant);
    assert_true(id > 0);
    assert_int_not_equal(id, subject_id("commands"));
    return id;
}

/* The command as the Confluent wire format with schema id, into out. */
static void encode_framed(const struct er_run_command *cmd, int id,
                          struct er_buf *out)
{
    struct er_buf so;
    struct er_err err;
    uint8_t head[5] = { 0, (uint8_t)(id >> 24), (uint8_t)(id >> 16),
                        (uint8_t)(id >> 8), (uint8_t)id };

    er_err_clear(&err);
    er_buf_init(&so, (size_t)4 * 1024 * 1024);
    er_buf_init(out, (size_t)4 * 1024 * 1024);
    if (er_codec_command_encode(cmd, &so, &err) != 0)
        er_harness_fail(__FILE__, __LINE__, "encode: %s", err.msg);
    assert_int_equal(er_buf_append(out, head, sizeof(head)), 0);
    assert_int_equal(er_buf_append(out, so.data + ER_CODEC_HDR_LEN,
                                   so.len - ER_CODEC_HDR_LEN),
                     0);
    er_buf_fini(&so);
}

static const json_t *send_framed(struct er_harness_cmd *c, const char *key,
                                 int id)
{
    struct er_buf framed;
    const json_t *res;

    encode_framed(&c->cmd, id, &framed);
    assert_int_equal(
        er_harness_produce(h, "commands", key, framed.data, framed.len), 0);
    er_buf_fini(&framed);
    res = er_harness_wait_result(h, c->command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    return res;
}

/* An acquire framed with schema id, sent while the stand-in cannot answer
 * (set, switched on by the caller): no result and no dead letter, the
 * worker alive; once set switches it off, the command is answered ok. */
static void expect_waits_for_registry(struct er_harness_worker *w, int id,
                                      void (*set)(struct er_registry_standin *,
                                                  bool))
{
    size_t dlq_before = er_harness_count(h, ER_HARNESS_DLQ);
    struct er_harness_run run;
    struct er_harness_cmd c;
    struct er_buf framed;
    const json_t *res;

    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    encode_framed(&c.cmd, id, &framed);
    assert_int_equal(
        er_harness_produce(h, "commands", run.run_id, framed.data, framed.len),
        0);
    er_buf_fini(&framed);
    er_harness_poll(h, 2000);
    assert_null(er_harness_wait_result(h, c.command_id, 1));
    assert_int_equal(er_harness_count(h, ER_HARNESS_DLQ), dlq_before);
    assert_true(er_harness_worker_is_alive(w));
    set(standin, false);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_int_equal(er_harness_count(h, ER_HARNESS_DLQ), dlq_before);
}

/* Every record of topic is Confluent-framed with the subject's id. */
static void expect_framed(enum er_harness_topic topic, const char *name)
{
    int id = subject_id(name);
    size_t n = er_harness_count(h, topic);
    size_t i;

    assert_true(id > 0);
    assert_true(n > 0);
    for (i = 0; i < n; i++) {
        const struct er_harness_record *rec = er_harness_get(h, topic, i);

        assert_true(rec->value_len > 5);
        assert_int_equal(rec->value[0], 0);
        assert_int_equal(((int)rec->value[1] << 24) |
                             ((int)rec->value[2] << 16) |
                             ((int)rec->value[3] << 8) | rec->value[4],
                         id);
        ER_HARNESS_NON_NULL(rec->json); /* decodes with that schema */
    }
}

static void expect_no_password(const struct er_harness_worker *w)
{
    char *log = er_harness_worker_log(w);

    ER_HARNESS_NON_NULL(log);
    if (strstr(log, "s3cret-registry-pass") != NULL ||
        strstr(log, "wrong-pass") != NULL)
        er_harness_fail(__FILE__, __LINE__, "a registry password is logged");
    er_free(log);
}

static void registry_frames_every_record(void **state)
{
    const char *env[] = { url_env, NULL };
    struct er_harness_worker_opts opts = { .env = env };
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_cmd c;
    const json_t *res;
    const char *topics[] = { "commands", "results", "lease-events",
                             "activity" };
    size_t i;

    (void)state;
    /* The warm start's acquire is single-object encoded: still read. */
    w = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(w);
    for (i = 0; i < 4; i++)
        assert_true(subject_id(topics[i]) > 0);
    assert_true(er_harness_worker_log_contains(w, "schema registered"));

    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    res = send_framed(&c, run.run_id, subject_id("commands"));
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    er_harness_cmd_release(&c, &run, ER_RELEASE_RELEASED);
    res = send_framed(&c, run.run_id, subject_id("commands"));
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_true(er_harness_wait_count(h, ER_HARNESS_LEASE_EVENTS, "status",
                                      "released", 1, ER_HARNESS_WAIT_MS));
    assert_true(
        er_harness_wait_total(h, ER_HARNESS_ACTIVITY, 3, ER_HARNESS_WAIT_MS));
    expect_framed(ER_HARNESS_RESULTS, "results");
    expect_framed(ER_HARNESS_LEASE_EVENTS, "lease-events");
    expect_framed(ER_HARNESS_ACTIVITY, "activity");
    /* One reused connection each: the worker's and this test's client. */
    assert_true(er_registry_standin_connections(standin) <= 2);
    assert_int_equal(er_registry_standin_unauthorized(standin), 0);
    expect_no_password(w);
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
}

/* A producer that registered its own text of RunCommand (a "doc" added:
 * another id, the same canonical form) is read; its id is fetched once. */
static void registry_fetches_a_producer_id_once(void **state)
{
    const char *env[] = { url_env, NULL };
    struct er_harness_worker_opts opts = { .env = env };
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_cmd c;
    const json_t *res;
    int id;
    int i;

    (void)state;
    id = add_variant("other-producer-value", "registered by another producer");

    w = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(w);
    for (i = 0; i < 3; i++) {
        er_harness_run_init(&run);
        er_harness_cmd_acquire(&c, &run);
        res = send_framed(&c, run.run_id, id);
        ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    }
    /* Once by the worker, once by this test's reader of the commands
     * topic: not once per command. */
    assert_int_equal(er_registry_standin_fetches(standin, id), 2);
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
}

/* An id the registry does not know: dead-lettered with its reason, and of
 * the value only the header, since the body might be a realize command
 * with hostApiToken; the worker goes on. */
static void registry_unknown_id_is_dead_lettered(void **state)
{
    const char *env[] = { url_env, NULL };
    struct er_harness_worker_opts opts = { .env = env };
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_cmd c;
    const struct er_harness_record *rec = NULL;
    struct er_buf framed;
    const json_t *res;

    (void)state;
    w = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(w);
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    res = er_harness_roundtrip(h, w, &c, ER_HARNESS_WAIT_MS);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    er_harness_cmd_realize(&c, &run, "/tmp");
    c.cmd.host_api_token.value = "tok-must-not-leak-0123456789";
    c.cmd.host_api_token.len = strlen(c.cmd.host_api_token.value);
    encode_framed(&c.cmd, 999999, &framed);
    assert_int_equal(
        er_harness_produce(h, "commands", run.run_id, framed.data, framed.len),
        0);
    assert_true(er_harness_wait_key(h, ER_HARNESS_DLQ, run.run_id, 1,
                                    ER_HARNESS_WAIT_MS));
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_DLQ, run.run_id, &rec, 1), 1);
    assert_int_equal(rec->value_len, 5);
    assert_memory_equal(rec->value, framed.data, 5);
    ER_HARNESS_ASSERT_CONTAINS(rec->hdr_error,
                               "schema id 999999 is not in the schema "
                               "registry");
    ER_HARNESS_ASSERT_CONTAINS(rec->hdr_redacted, "hostApiToken");
    assert_false(
        er_harness_topic_contains(h, ER_HARNESS_DLQ, "tok-must-not-leak"));
    er_buf_fini(&framed);
    /* The run goes on. */
    er_harness_cmd_release(&c, &run, ER_RELEASE_RELEASED);
    res = er_harness_roundtrip(h, w, &c, ER_HARNESS_WAIT_MS);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
}

/* A 404 that is not the registry's own "schema not found" (40403) may be
 * a proxy, a wrong path or a replica behind its leader: the command waits
 * for the registry, is never dead-lettered for it, and is answered once
 * the registry serves again. */
static void registry_bare_404_is_retried(void **state)
{
    const char *env[] = { url_env, NULL };
    struct er_harness_worker_opts opts = { .env = env };
    struct er_harness_worker *w;
    int id;

    (void)state;
    id =
        add_variant("late-producer-value", "a producer the worker has not met");
    w = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(w);
    er_harness_poll(h, 500); /* the warm start's records, decoded */
    er_registry_standin_set_lost(standin, true);
    expect_waits_for_registry(w, id, er_registry_standin_set_lost);
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
}

/* A framed command that decodes but fails validation is dead-lettered as
 * it came, byte for byte (contract.md 3: the original bytes); one that
 * carried hostApiToken is encoded again without it and framed with
 * envrun's RunCommand id, so a reader with the registry still decodes it. */
static void registry_dead_letters_keep_the_framing(void **state)
{
    const char *env[] = { url_env, NULL };
    struct er_harness_worker_opts opts = { .env = env };
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_cmd c;
    const struct er_harness_record *rec = NULL;
    struct er_buf framed;
    int id = subject_id("commands");

    (void)state;
    assert_true(id > 0);
    w = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(w);

    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.heartbeat_run_id = "not-a-run-id";
    encode_framed(&c.cmd, id, &framed);
    assert_int_equal(er_harness_produce(h, "commands", c.command_id,
                                        framed.data, framed.len),
                     0);
    assert_true(er_harness_wait_key(h, ER_HARNESS_DLQ, c.command_id, 1,
                                    ER_HARNESS_WAIT_MS));
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_DLQ, c.command_id, &rec, 1), 1);
    assert_int_equal(rec->value_len, framed.len);
    assert_memory_equal(rec->value, framed.data, framed.len);
    assert_null(rec->hdr_redacted);
    ER_HARNESS_ASSERT_CONTAINS(rec->hdr_error, "heartbeatRunId");
    er_buf_fini(&framed);

    er_harness_run_init(&run);
    er_harness_cmd_realize(&c, &run, "/tmp");
    c.cmd.heartbeat_run_id = "not-a-run-id";
    c.cmd.host_api_token.value = "tok-must-not-leak-framed-9876";
    c.cmd.host_api_token.len = strlen(c.cmd.host_api_token.value);
    encode_framed(&c.cmd, id, &framed);
    assert_int_equal(er_harness_produce(h, "commands", c.command_id,
                                        framed.data, framed.len),
                     0);
    er_buf_fini(&framed);
    assert_true(er_harness_wait_key(h, ER_HARNESS_DLQ, c.command_id, 1,
                                    ER_HARNESS_WAIT_MS));
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_DLQ, c.command_id, &rec, 1), 1);
    ER_HARNESS_ASSERT_CONTAINS(rec->hdr_redacted, "hostApiToken");
    assert_true(rec->value_len > 5);
    assert_int_equal(rec->value[0], 0);
    assert_int_equal(((int)rec->value[1] << 24) | ((int)rec->value[2] << 16) |
                         ((int)rec->value[3] << 8) | rec->value[4],
                     id);
    ER_HARNESS_NON_NULL(rec->json); /* decodes through the registry */
    assert_false(er_harness_topic_contains(h, ER_HARNESS_DLQ,
                                           "tok-must-not-leak-framed"));
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
}

/* Down at start: the worker waits with backoff and says so; a command sent
 * meanwhile is answered once the registry is back. */
static void registry_down_delays_start(void **state)
{
    const char *env[] = { url_env, NULL };
    struct er_harness_worker_opts opts = { .env = env };
    struct er_harness_worker *w;
    int id;

    (void)state;
    id = er_registry_standin_add(standin, "any-value",
                                 er_codec_schema_json(ER_REC_RUN_COMMAND));
    er_registry_standin_set_down(standin, true);
    w = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w);
    assert_true(er_harness_worker_wait_log(w, "start delayed", 15000));
    assert_true(er_harness_worker_log_contains(w, "HTTP 503"));
    expect_waits_for_registry(w, id, er_registry_standin_set_down);
    expect_no_password(w);
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
}

/* Credentials the registry refuses: no retry can help, the start fails
 * with the registry's words and without the password. */
static void registry_refused_credentials_stop_the_start(void **state)
{
    char bad_env[256];
    const char *env[] = { bad_env, NULL };
    struct er_harness_worker_opts opts = { .env = env };
    struct er_harness_worker *w;
    char *log;

    (void)state;
    snprintf(bad_env, sizeof(bad_env),
             "ENVRUN_SCHEMA_REGISTRY_URL=http://envrun:wrong-pass@"
             "127.0.0.1:%d",
             er_registry_standin_port(standin));
    w = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w);
    assert_int_equal(er_harness_worker_wait_exit(w, 30000), 1);
    log = er_harness_worker_log(w);
    ER_HARNESS_ASSERT_CONTAINS(log, "HTTP 401");
    ER_HARNESS_ASSERT_CONTAINS(log, "Unauthorized");
    er_free(log);
    expect_no_password(w);

    /* What messages show of a URL: never any of its userinfo, even with an
     * unescaped '@' in the password. */
    {
        struct er_registry *reg = NULL;
        struct er_err err;

        er_err_clear(&err);
        assert_int_equal(er_registry_new("https://u:p@ss@reg.example:8081/x/",
                                         NULL, &reg, &err),
                         0);
        assert_string_equal(er_registry_url_shown(reg),
                            "https://reg.example:8081/x");
        er_registry_destroy(reg);
        /* A password pasted unescaped may hold '/', '?' and '#' too. */
        assert_int_equal(
            er_registry_new("https://key:a/b?c#d@reg.example:8081/x/", NULL,
                            &reg, &err),
            0);
        assert_string_equal(er_registry_url_shown(reg),
                            "https://reg.example:8081/x");
        er_registry_destroy(reg);
    }
}

/* Run envrunctl with the registry set; its exit code, stdout in out
 * (caller frees). */
static int envrunctl(char **out, char *const *args)
{
    static int seq;
    char brokers[ER_HARNESS_URL_MAX + 32];
    char prefix[128];
    char out_path[ER_HARNESS_PATH_MAX + 64];
    char *envp[] = { brokers, prefix, url_env, "PATH=/usr/bin:/bin", NULL };
    char *argv[24];
    size_t n = 0;
    pid_t pid;
    int status = 0;

    snprintf(brokers, sizeof(brokers), "ENVRUN_KAFKA_BROKERS=%s", h->brokers);
    snprintf(prefix, sizeof(prefix), "ENVRUN_TOPIC_PREFIX=%s", h->prefix);
    snprintf(out_path, sizeof(out_path), "%s/envrunctl-%d.out", h->dir, seq++);
    argv[n++] = ENVRUNCTL;
    while (*args != NULL && n < 23)
        argv[n++] = *args++;
    argv[n] = NULL;
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen(out_path, "w", stdout) == NULL)
            _exit(126);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    *out = er_harness_read_text(out_path, 1 << 20);
    ER_HARNESS_NON_NULL(*out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* envrunctl with ENVRUN_SCHEMA_REGISTRY_URL: send produces the Confluent
 * wire format with RunCommand's id; tail decodes the worker's framed
 * results. */
static void registry_envrunctl_sends_and_tails(void **state)
{
    const char *env[] = { url_env, NULL };
    struct er_harness_worker_opts opts = { .env = env };
    struct er_harness_worker *w;
    struct er_harness_run run;
    const struct er_harness_record *rec = NULL;
    const json_t *res;
    char command_id[40];
    char *out;

    (void)state;
    w = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(w);
    er_harness_run_init(&run);
    {
        char *args[] = { "send",         "--kind",  "acquire",    "--company",
                         run.company_id, "--agent", run.agent_id, "--run",
                         run.run_id,     NULL };

        assert_int_equal(envrunctl(&out, args), 0);
    }
    assert_int_equal(sscanf(out, "%36s", command_id), 1);
    er_free(out);
    res = er_harness_wait_result(h, command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_true(er_harness_wait_key(h, ER_HARNESS_COMMANDS, run.run_id, 1,
                                    ER_HARNESS_WAIT_MS));
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_COMMANDS, run.run_id, &rec, 1), 1);
    assert_int_equal(rec->value[0], 0);
    assert_int_equal(((int)rec->value[1] << 24) | ((int)rec->value[2] << 16) |
                         ((int)rec->value[3] << 8) | rec->value[4],
                     subject_id("commands"));
    {
        char *args[] = { "tail",  "results",  "--from-beginning",
                         "--run", run.run_id, "--timeout-ms",
                         "5000",  NULL };

        assert_int_equal(envrunctl(&out, args), 0);
    }
    ER_HARNESS_ASSERT_CONTAINS(out, command_id);
    ER_HARNESS_ASSERT_CONTAINS(out, "\"outcome\":\"ok\"");
    assert_null(strstr(out, "valueBase64"));
    er_free(out);
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
}

/* Start `openssl s_server` (a real TLS server, not a registry: it answers
 * no POST) on a free port with a fresh self-signed certificate for
 * 127.0.0.1 in dir; its pid, and the port and certificate path. */
static pid_t tls_server(char *cert, size_t cert_len, int *port)
{
    char key[ER_HARNESS_PATH_MAX + 32];
    char cmd[3 * ER_HARNESS_PATH_MAX + 256];
    char accept_arg[32];
    struct sockaddr_in sa;
    socklen_t sa_len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    pid_t pid;

    snprintf(cert, cert_len, "%s/registry-cert.pem", h->dir);
    snprintf(key, sizeof(key), "%s/registry-key.pem", h->dir);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey rsa:2048 -nodes -keyout '%s' "
             "-out '%s' -days 2 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1",
             key, cert);
    assert_int_equal(system(cmd), 0);
    /* A free port: bound by the kernel, then released for the server. */
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sa_len), 0);
    *port = ntohs(sa.sin_port);
    close(fd);
    snprintf(accept_arg, sizeof(accept_arg), "127.0.0.1:%d", *port);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen("/dev/null", "w", stdout) == NULL)
            _exit(126);
        execlp("openssl", "openssl", "s_server", "-quiet", "-accept",
               accept_arg, "-cert", cert, "-key", key, "-www", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* An https registry is verified: a certificate nobody vouches for is a
 * (retried) start failure that says so; with ENVRUN_SCHEMA_REGISTRY_CA_FILE
 * naming its CA the handshake passes (this server then gives no answer a
 * registry would, which is retried too, but not as a certificate
 * problem). */
static void registry_https_is_verified_with_the_ca_file(void **state)
{
    char cert[ER_HARNESS_PATH_MAX + 32];
    char url[128];
    char ca[ER_HARNESS_PATH_MAX + 64];
    const char *env_plain[] = { url, NULL };
    const char *env_ca[] = { url, ca, NULL };
    struct er_harness_worker_opts opts = { .env = env_plain };
    struct er_harness_worker *w;
    char *log;
    int port = 0;
    pid_t server;

    (void)state;
    server = tls_server(cert, sizeof(cert), &port);
    snprintf(url, sizeof(url),
             "ENVRUN_SCHEMA_REGISTRY_URL=https://127.0.0.1:%d", port);
    snprintf(ca, sizeof(ca), "ENVRUN_SCHEMA_REGISTRY_CA_FILE=%s", cert);

    w = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w);
    assert_true(er_harness_worker_wait_log(w, "start delayed", 20000));
    assert_true(er_harness_worker_log_contains(w, "certificate"));
    er_harness_worker_stop(w, SIGTERM, 15000);

    opts.env = env_ca;
    w = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w);
    assert_true(er_harness_worker_wait_log(w, "start delayed", 20000));
    log = er_harness_worker_log(w);
    ER_HARNESS_NON_NULL(log);
    assert_null(strstr(log, "certificate"));
    ER_HARNESS_ASSERT_CONTAINS(log, "https://127.0.0.1:");
    er_free(log);
    er_harness_worker_stop(w, SIGTERM, 15000);
    kill(server, SIGTERM);
    waitpid(server, NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(registry_frames_every_record),
        cmocka_unit_test(registry_fetches_a_producer_id_once),
        cmocka_unit_test(registry_unknown_id_is_dead_lettered),
        cmocka_unit_test(registry_bare_404_is_retried),
        cmocka_unit_test(registry_dead_letters_keep_the_framing),
        cmocka_unit_test(registry_down_delays_start),
        cmocka_unit_test(registry_refused_credentials_stop_the_start),
        cmocka_unit_test(registry_envrunctl_sends_and_tails),
        cmocka_unit_test(registry_https_is_verified_with_the_ca_file),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
