/* bridge_queue_test: queue_v1 end to end on real processes. The agent's
 * HTTP requests go to the real envrun-gateway binary, which queues them as
 * files; the bridge's host poller reaches the queue only through an exec
 * channel (here /bin/sh on this host, as upstream's own bridge test runs
 * its "sandbox" in a temporary directory: domain.md 5.10), forwards each to
 * a stand-in for the Paperclip API (tests/support/api_standin.c; the real
 * API cannot run here) and writes the answer back. Covers domain.md 5.10's
 * round trip, refused routes, the default policy on a hand-written
 * request file, drain and drain deadline on stop, a malformed request
 * file, a mutation that fails (409 indeterminate for the agent), a hung
 * exec that costs one iteration and not the loop (#11341), and the cost of
 * an idle run. */
#define _GNU_SOURCE /* strcasestr, memmem */

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "bridge/bridge.h"
#include "drivers/driver.h"
#include "tests/support/api_standin.h"

#define GATEWAY      ER_BUILD_DIR "/gateway/envrun-gateway"
#define BRIDGE_TOKEN "bridge-token-0123456789abcdefghij"
#define HOST_TOKEN   "host-credential-should-reach-the-api"
#define RUN_ID       "2f0b8c1e-1d3a-4b5c-9e8f-7a6b5c4d3e2f"

static struct er_api_standin *api;
static struct er_bridge_allow *allow;
static struct er_bridge_fwd *fwd;
static struct er_secret token;
static char queue_dir[64];
static pid_t gateway_pid;
static int gateway_port;

/* ---- the exec channel: /bin/sh -c on this host ---- */

struct runner {
    atomic_int hang_next_list; /* the next list exec sleeps past its deadline */
};

static struct runner runner;

static int run_sh(void *arg, const char *script, const void *in, size_t in_len,
                  int64_t timeout_ms, const atomic_bool *cancel,
                  struct er_bridge_exec_out *out, struct er_err *err)
{
    struct runner *r = arg;
    struct er_proc_opts opts;
    struct er_proc_result res;
    char hung[16384];
    const char *argv[4] = { "/bin/sh", "-c", script, NULL };
    int rc;

    if (strstr(script, "/requests; end=") != NULL &&
        atomic_exchange(&r->hang_next_list, 0) != 0) {
        snprintf(hung, sizeof(hung), "sleep 60; %s", script);
        argv[2] = hung;
    }
    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.stdin_data = in;
    opts.stdin_len = in_len;
    opts.timeout_ms = timeout_ms;
    opts.grace_ms = 200;
    opts.max_output_bytes = out->out.max_len;
    er_proc_set_cancel(cancel);
    rc = er_proc_run(&opts, &res, err);
    er_proc_set_cancel(NULL);
    if (rc != 0)
        return rc;
    out->exit_code = res.is_timed_out ? -1 : res.exit_code;
    if ((res.out_len > 0 &&
         er_buf_append(&out->out, res.out, res.out_len) != 0) ||
        (res.err_len > 0 &&
         er_buf_append(&out->err, res.err_text, res.err_len) != 0))
        rc = er_err_set(err, ER_E2BIG, ER_ERRCLASS_NONE, "output too big");
    er_proc_result_fini(&res);
    return rc;
}

/* ---- a held exec: /bin/sh -c on this host, on the caller's pipes ---- */

static int hold_sh(void *arg, const char *script, int in_fd, int out_fd,
                   int64_t timeout_ms, const atomic_bool *cancel,
                   int *exit_code, struct er_err *err)
{
    const char *argv[4] = { "/bin/sh", "-c", script, NULL };
    struct er_proc_opts opts;
    struct er_proc_result res;
    int rc;

    (void)arg;
    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.stdin_fd = in_fd;
    opts.stdout_fd = out_fd;
    opts.timeout_ms = timeout_ms;
    opts.grace_ms = 200;
    er_proc_set_cancel(cancel);
    rc = er_proc_run(&opts, &res, err);
    er_proc_set_cancel(NULL);
    if (rc != 0)
        return rc;
    *exit_code = res.is_timed_out ? -1 : res.exit_code;
    er_proc_result_fini(&res);
    return 0;
}

/* queue_v1's command runner over hold_sh, run_sh its fallback; gateway is
 * what it starts (the real one, or a program playing a broken one). */
static struct er_bridge_runner *runner_with(const char *gateway, int want_rc)
{
    const struct er_bridge_runner_opts o = {
        .hold = hold_sh,
        .fallback = run_sh,
        .fallback_arg = &runner,
        .gateway = gateway,
        .run_id = RUN_ID,
    };
    struct er_bridge_runner *r = NULL;
    struct er_err err;

    er_err_clear(&err);
    assert_int_equal(er_bridge_runner_start(&o, &r, &err) != 0, want_rc != 0);
    assert_non_null(r);
    return r;
}

/* The runner the pollers' scripts go through (NULL: one exec each). */
static struct er_bridge_runner *list_runner;

/* The gateway binary the pollers list with (NULL: the shell loop) and
 * their body limit (0: the default). */
static const char *list_gateway;
static size_t list_max_body;

static struct er_bridge_poller *poller_start(int64_t list_wait_ms,
                                             int64_t iteration_ms)
{
    const struct er_bridge_queue_opts o = {
        .exec = list_runner != NULL ? er_bridge_runner_exec : run_sh,
        .exec_arg = list_runner != NULL ? (void *)list_runner : &runner,
        .gateway = list_gateway,
        .max_body = list_max_body,
        .queue_dir = queue_dir,
        .fwd = fwd,
        .host_token = &token,
        .run_id = RUN_ID,
        .list_wait_ms = list_wait_ms,
        .iteration_timeout_ms = iteration_ms,
    };
    struct er_bridge_poller *p = NULL;
    struct er_err err;

    assert_int_equal(er_bridge_poller_start(&o, &p, &err), 0);
    return p;
}

/* ---- the gateway ---- */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;

    if (f == NULL)
        return NULL;
    buf = er_calloc(1, 1 << 20);
    n = buf != NULL ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf != NULL)
        buf[n] = '\0';
    return buf;
}

static int gateway_start(void)
{
    char env_dir[128];
    const char *envp[] = { "PATH=/usr/bin:/bin",
                           "PAPERCLIP_BRIDGE_TOKEN=" BRIDGE_TOKEN, env_dir,
                           "PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS=20000", NULL };
    const char *argv[] = { GATEWAY, NULL };
    struct er_proc_opts opts;
    struct er_err err;
    char ready[128];
    int i;

    snprintf(env_dir, sizeof(env_dir), "PAPERCLIP_BRIDGE_QUEUE_DIR=%s",
             queue_dir);
    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.envp = envp;
    if (er_proc_spawn(&opts, &gateway_pid, &err) != 0) {
        fprintf(stderr, "gateway: %s\n", err.msg);
        return -1;
    }
    snprintf(ready, sizeof(ready), "%s/ready.json", queue_dir);
    for (i = 0; i < 200; i++) {
        char *text = slurp(ready);
        const char *port = text != NULL ? strstr(text, "\"port\":") : NULL;

        if (port != NULL)
            gateway_port = atoi(port + 7);
        er_free(text);
        if (gateway_port > 0)
            return 0;
        usleep(50000);
    }
    fprintf(stderr, "gateway: no ready.json\n");
    return -1;
}

static int setup(void **state)
{
    (void)state;
    snprintf(queue_dir, sizeof(queue_dir), "/tmp/envrun-bridge-q-XXXXXX");
    if (mkdtemp(queue_dir) == NULL)
        return -1;
    api = er_api_standin_start();
    if (api == NULL ||
        er_api_standin_fwd(api, ER_BRIDGE_MAX_BODY_BYTES,
                           ER_BRIDGE_FORWARD_TIMEOUT_MS, &allow, &fwd) != 0 ||
        er_secret_set(&token, HOST_TOKEN, strlen(HOST_TOKEN)) != 0)
        return -1;
    return gateway_start();
}

static int teardown(void **state)
{
    char cmd[128];
    int status;

    (void)state;
    kill(gateway_pid, SIGTERM);
    waitpid(gateway_pid, &status, 0);
    er_api_standin_stop(api);
    er_bridge_fwd_free(fwd);
    er_bridge_allow_free(allow);
    er_secret_fini(&token);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", queue_dir);
    return system(cmd) == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0
               ? 0
               : -1;
}

/* ---- the agent: one HTTP request to the gateway ---- */

struct reply {
    int status;
    char text[65536]; /* head and body */
    const char *body;
};

static void agent(const char *method, const char *target, const char *headers,
                  const char *body, struct reply *r)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    char req[8192];
    size_t len = 0;
    int n;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    sa.sin_port = htons((uint16_t)gateway_port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    n = snprintf(req, sizeof(req),
                 "%s %s HTTP/1.1\r\nhost: 127.0.0.1\r\n%scontent-length: "
                 "%zu\r\n\r\n%s",
                 method, target, headers, body != NULL ? strlen(body) : 0,
                 body != NULL ? body : "");
    assert_int_equal(write(fd, req, (size_t)n), n);
    for (;;) {
        ssize_t k = read(fd, r->text + len, sizeof(r->text) - 1 - len);

        if (k <= 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    r->text[len] = '\0';
    r->status = len > 12 ? atoi(r->text + 9) : 0;
    r->body = strstr(r->text, "\r\n\r\n");
    r->body = r->body != NULL ? r->body + 4 : "";
}

/* A file of the queue ("requests/x.json"), or NULL when missing. */
static char *queue_file(const char *rel)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", queue_dir, rel);
    return slurp(path);
}

static void queue_write(const char *rel, const char *text)
{
    char path[256];
    char tmp[270];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", queue_dir, rel);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(rename(tmp, path), 0);
}

/* Wait for responses/<name> (the poller's answer to a hand-written
 * request); returns its text (er_free) and removes it. */
static char *wait_response(const char *name, int timeout_ms)
{
    char rel[128];
    char path[256];
    int waited;

    snprintf(rel, sizeof(rel), "responses/%s", name);
    snprintf(path, sizeof(path), "%s/%s", queue_dir, rel);
    for (waited = 0; waited < timeout_ms; waited += 50) {
        char *text = queue_file(rel);

        if (text != NULL && strchr(text, '\n') != NULL) {
            unlink(path);
            return text;
        }
        er_free(text);
        usleep(50000);
    }
    return NULL;
}

/* Whether the queue file rel is gone within timeout_ms (the poller
 * removes a request after writing its answer). */
static bool gone_within(const char *rel, int timeout_ms)
{
    int waited;

    for (waited = 0; waited < timeout_ms; waited += 50) {
        char *text = queue_file(rel);

        if (text == NULL)
            return true;
        er_free(text);
        usleep(50000);
    }
    return false;
}

/* ---- cases ---- */

static void round_trip_through_the_gateway(void **state)
{
    struct er_bridge_poller *p = poller_start(2000, 0);
    static struct reply r;
    char seen[65536];
    /* envrun_bridge_requests_total{transport="queue_v1",status=...} */
    uint64_t ok0 = er_bridge_fwd_count_get(ER_BRIDGE_COUNT_QUEUE_V1, 1);
    uint64_t refused0 = er_bridge_fwd_count_get(ER_BRIDGE_COUNT_QUEUE_V1, 3);

    (void)state;
    er_api_standin_answer(api,
                          "HTTP/1.1 200 OK\r\ncontent-type: application/json"
                          "\r\netag: \"e1\"\r\nset-cookie: a=b\r\n"
                          "content-length: 14\r\n\r\n{\"name\":\"me\"}\n",
                          0);
    agent("GET", "/api/agents/me?view=compact",
          "authorization: Bearer " BRIDGE_TOKEN "\r\naccept: application/json"
          "\r\nif-none-match: \"e0\"\r\nx-paperclip-run-id: not-the-run\r\n"
          "x-bridge-debug: 1\r\n",
          NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"name\":\"me\"}\n");
    assert_non_null(strcasestr(r.text, "\r\netag: \"e1\"\r\n"));
    assert_null(strcasestr(r.text, "set-cookie"));
    assert_int_equal(er_api_standin_hits(api, seen, sizeof(seen)), 1);
    assert_non_null(strstr(seen, "GET /api/agents/me?view=compact HTTP/1.1"));
    assert_non_null(strstr(seen, "authorization: Bearer " HOST_TOKEN "\r\n"));
    assert_non_null(strstr(seen, "x-paperclip-run-id: " RUN_ID "\r\n"));
    assert_non_null(strstr(seen, "if-none-match: \"e0\"\r\n"));
    assert_null(strstr(seen, BRIDGE_TOKEN));
    assert_null(strstr(seen, "not-the-run"));
    assert_null(strcasestr(seen, "x-bridge-debug"));

    /* domain.md 5.10 cases 2 and 3: a refused route, a wrong token. */
    agent("PATCH", "/api/issues/issue-1/labels",
          "authorization: Bearer " BRIDGE_TOKEN "\r\ncontent-type: "
          "application/json\r\n",
          "{}", &r);
    assert_int_equal(r.status, 403);
    assert_string_equal(r.body, "{\"error\":\"Route not allowed: PATCH "
                                "/api/issues/issue-1/labels\"}");
    agent("GET", "/api/agents/me", "authorization: Bearer wrong\r\n", NULL, &r);
    assert_int_equal(r.status, 401);
    assert_int_equal(er_api_standin_hits(api, NULL, 0), 1);
    er_bridge_poller_stop(p, ER_BRIDGE_STOP_DRAIN_MS);
    assert_int_equal(er_bridge_fwd_count_get(ER_BRIDGE_COUNT_QUEUE_V1, 1),
                     ok0 + 1);
    assert_true(er_bridge_fwd_count_get(ER_BRIDGE_COUNT_QUEUE_V1, 3) >=
                refused0 + 1);
}

/* A mutation whose forward fails may have been applied: the host answers
 * 504 indeterminate, which the gateway gives the agent as a non-retryable
 * 409. */
static void failed_mutation_is_409_for_the_agent(void **state)
{
    struct er_bridge_poller *p = poller_start(2000, 0);
    static struct reply r;

    (void)state;
    er_api_standin_answer(api, NULL, 0); /* the API drops the connection */
    agent("POST", "/api/issues/i1/checkout",
          "authorization: Bearer " BRIDGE_TOKEN "\r\ncontent-type: "
          "application/json\r\n",
          "{}", &r);
    assert_int_equal(r.status, 409);
    assert_non_null(strcasestr(r.text, "\r\nx-paperclip-bridge-outcome: "
                                       "indeterminate\r\n"));
    assert_non_null(strstr(r.body, "\"outcome\":\"indeterminate\""));
    assert_non_null(strstr(r.body, "\"retryable\":false"));
    assert_int_equal(er_api_standin_hits(api, NULL, 0), 1);
    er_bridge_poller_stop(p, ER_BRIDGE_STOP_DRAIN_MS);
}

/* Request files written straight into the queue: domain.md 5.10 case 4
 * (the default policy), and a file that is not an envelope. */
static void hand_written_requests_get_answers(void **state)
{
    struct er_bridge_poller *p = poller_start(2000, 0);
    char *text;

    (void)state;
    er_api_standin_answer(api, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                          0);
    queue_write("requests/req-secrets.json",
                "{\"id\":\"req-secrets\",\"method\":\"DELETE\",\"path\":"
                "\"/api/secrets\",\"query\":\"\",\"headers\":{},\"body\":\"\","
                "\"createdAt\":\"2026-12-01T00:00:00.000Z\"}\n");
    queue_write("requests/req-bad.json", "{\"id\": \"req-bad\", \"path\": ");
    text = wait_response("req-secrets.json", 10000);
    assert_non_null(text);
    assert_non_null(strstr(text, "\"id\":\"req-secrets\""));
    assert_non_null(strstr(text, "\"status\":403"));
    assert_non_null(strstr(text, "Route not allowed: DELETE /api/secrets"));
    er_free(text);
    text = wait_response("req-bad.json", 10000);
    assert_non_null(text);
    assert_non_null(strstr(text, "\"id\":\"req-bad\""));
    assert_non_null(strstr(text, "\"status\":400"));
    assert_non_null(strstr(text, "Invalid bridge request payload."));
    er_free(text);
    /* Answered requests are removed; the API never saw either. */
    assert_true(gone_within("requests/req-secrets.json", 5000));
    assert_true(gone_within("requests/req-bad.json", 5000));
    assert_int_equal(er_api_standin_hits(api, NULL, 0), 0);
    er_bridge_poller_stop(p, ER_BRIDGE_STOP_DRAIN_MS);
}

static void request_file(const char *id)
{
    char rel[128];
    char text[512];

    snprintf(rel, sizeof(rel), "requests/%s.json", id);
    snprintf(text, sizeof(text),
             "{\"id\":\"%s\",\"method\":\"GET\",\"path\":\"/api/agents/me\","
             "\"query\":\"\",\"headers\":{},\"body\":\"\"}\n",
             id);
    queue_write(rel, text);
}

/* domain.md 5.10 cases 5 and 6: a stop drains what was listed in order;
 * past the drain deadline the rest get the retry-safe 503. */
static void stop_drains_then_answers_503(void **state)
{
    struct er_bridge_poller *p;
    char *a;
    char *b;
    int i;

    (void)state;
    er_api_standin_answer(api, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                          1000);
    request_file("req-a");
    request_file("req-b");
    p = poller_start(2000, 0);
    /* req-a is with the API: stop with a 10 ms drain. */
    for (i = 0; i < 200 && er_api_standin_hits(api, NULL, 0) == 0; i++)
        usleep(20000);
    assert_int_equal(er_api_standin_hits(api, NULL, 0), 1);
    er_bridge_poller_stop(p, 10);
    a = wait_response("req-a.json", 5000);
    b = wait_response("req-b.json", 5000);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(strstr(a, "\"status\":200"));
    assert_non_null(strstr(b, "\"status\":503"));
    assert_non_null(strstr(b, "Bridge worker stopped before request could "
                              "be handled."));
    assert_int_equal(er_api_standin_hits(api, NULL, 0), 1);
    er_free(a);
    er_free(b);

    /* With time to drain, both are handled, in order. */
    er_api_standin_answer(api, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                          25);
    request_file("req-c");
    request_file("req-d");
    p = poller_start(2000, 0);
    er_bridge_poller_stop(p, 5000);
    a = wait_response("req-c.json", 5000);
    b = wait_response("req-d.json", 5000);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(strstr(a, "\"status\":200"));
    assert_non_null(strstr(b, "\"status\":200"));
    er_free(a);
    er_free(b);
}

/* #11341: an exec that never returns is killed at its deadline and costs
 * one iteration; the next request is served. */
static void hung_exec_costs_one_iteration(void **state)
{
    struct er_bridge_poller_stats stats;
    struct er_bridge_poller *p;
    static struct reply r;
    int i;

    (void)state;
    er_api_standin_answer(api,
                          "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
                          "{}",
                          0);
    atomic_store(&runner.hang_next_list, 1);
    p = poller_start(500, 1500);
    agent("GET", "/api/agents/me", "authorization: Bearer " BRIDGE_TOKEN "\r\n",
          NULL, &r);
    assert_int_equal(r.status, 200);
    /* The agent may have its answer before the write's exec returns. */
    for (i = 0; i < 200; i++) {
        er_bridge_poller_stats(p, &stats);
        if (stats.handled >= 1)
            break;
        nanosleep(&(struct timespec){ 0, 10 * 1000000L }, NULL);
    }
    assert_true(stats.list_failures >= 1);
    assert_true(stats.handled >= 1);
    er_bridge_poller_stop(p, ER_BRIDGE_STOP_DRAIN_MS);
}

/* An idle run costs about one exec per list wait, not ten a second. */
static void idle_run_is_cheap(void **state)
{
    struct er_bridge_poller_stats stats;
    struct er_bridge_poller *p;

    (void)state;
    p = poller_start(2000, 0);
    usleep(4500 * 1000);
    er_bridge_poller_stats(p, &stats);
    er_bridge_poller_stop(p, ER_BRIDGE_STOP_DRAIN_MS);
    /* mkdir, then a list every 2 s (+ the poll interval). */
    assert_true(stats.execs >= 2 && stats.execs <= 5);
    assert_int_equal(stats.list_failures, 0);
}

/* The list done by the gateway binary brings the first request with it
 * and writes the answer to the one before: a request costs one exec, not
 * three; a request over the
 * limit is refused from what the list brought, a planted symlink is never
 * read through. */
static void gateway_list_brings_the_first_request(void **state)
{
    struct er_bridge_poller_stats stats;
    struct er_bridge_poller *p;
    static struct reply r;
    static char big[80000]; /* over 6 x 1024 + 64 KiB */
    char path[256];
    char *text;
    int i;

    (void)state;
    list_max_body = 1024;
    p = poller_start(2000, 0);
    er_api_standin_answer(api,
                          "HTTP/1.1 200 OK\r\ncontent-type: application/json"
                          "\r\ncontent-length: 3\r\n\r\n{}\n",
                          0);
    for (i = 0; i < 3; i++) {
        agent("GET", "/api/agents/me",
              "authorization: Bearer " BRIDGE_TOKEN "\r\n", NULL, &r);
        assert_int_equal(r.status, 200);
    }
    /* The agent has its answer once the file is there; the host counts
     * it when the exec that wrote it ends: the last one is written by the
     * list that then waits (2 s) for the next request. */
    for (i = 0; i < 250; i++) {
        er_bridge_poller_stats(p, &stats);
        if (stats.handled == 3)
            break;
        usleep(20000);
    }
    assert_int_equal(stats.handled, 3);
    /* mkdir, then per request one list (which writes the answer to the
     * request before, then waits), and the list waiting now: 5 (with a
     * write of its own per request 8, reading each request on its own
     * too 11). */
    assert_true(stats.execs <= 5);

    memset(big, ' ', sizeof(big) - 1);
    memcpy(big, "{\"id\":\"req-big\",", 16);
    big[sizeof(big) - 2] = '}';
    queue_write("requests/req-big.json", big);
    text = wait_response("req-big.json", 10000);
    assert_non_null(text);
    assert_non_null(strstr(text, "\"status\":413"));
    er_free(text);

    snprintf(path, sizeof(path), "%s/requests/a-link.json", queue_dir);
    assert_int_equal(symlink("/etc/passwd", path), 0);
    request_file("req-after-link");
    text = wait_response("req-after-link.json", 10000);
    assert_non_null(text);
    assert_non_null(strstr(text, "\"status\":200"));
    er_free(text);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(er_api_standin_hits(api, NULL, 0), 4);
    er_bridge_poller_stop(p, ER_BRIDGE_STOP_DRAIN_MS);
    list_max_body = 0;
}

/* ---- queue_v1's command runner ---- */

/* One script through r: its exit code, stdout into out (cap out_max). */
static int runner_run(struct er_bridge_runner *r, const char *script,
                      const void *in, size_t in_len, int64_t timeout_ms,
                      const atomic_bool *cancel, size_t out_max,
                      struct er_bridge_exec_out *out)
{
    struct er_err err;

    er_bridge_exec_out_init(out, out_max);
    er_err_clear(&err);
    assert_int_equal(er_bridge_runner_exec(r, script, in, in_len, timeout_ms,
                                           cancel, out, &err),
                     0);
    return out->exit_code;
}

static atomic_bool cancel_flag;

static void *cancel_later(void *arg)
{
    (void)arg;
    nanosleep(&(struct timespec){ 0, 200 * 1000000L }, NULL);
    atomic_store(&cancel_flag, true);
    return NULL;
}

/* The runner runs each script with its input, output, error output and
 * exit code as an exec would, in step whatever the sizes: a MiB each way
 * at once, output cut at the caller's cap, a script killed at its
 * deadline or on a cancel, a background process left holding the output;
 * all in one runner, never through the fallback. */
static void runner_runs_scripts_in_step(void **state)
{
    static char big[1 << 20];
    struct er_bridge_runner_stats st;
    struct er_bridge_runner *r;
    struct er_bridge_exec_out out;
    pthread_t tid;
    int64_t t0;

    (void)state;
    signal(SIGPIPE, SIG_IGN);
    r = runner_with(GATEWAY, 0);
    assert_int_equal(runner_run(r, "printf out; printf err >&2; exit 7", NULL,
                                0, 5000, NULL, 4096, &out),
                     7);
    assert_string_equal(er_bridge_exec_text(&out.out), "out");
    assert_string_equal(er_bridge_exec_text(&out.err), "err");
    er_bridge_exec_out_fini(&out);

    memset(big, 'a', sizeof(big));
    big[12345] = '\n';
    assert_int_equal(
        runner_run(r, "cat", big, sizeof(big), 10000, NULL, 2u << 20, &out), 0);
    assert_int_equal(out.out.len, sizeof(big));
    assert_memory_equal(out.out.data, big, sizeof(big));
    er_bridge_exec_out_fini(&out);

    /* Over the cap: cut there, and the next script still lines up. */
    assert_int_equal(runner_run(r, "head -c 300000 /dev/zero", NULL, 0, 5000,
                                NULL, 1000, &out),
                     0);
    assert_int_equal(out.out.len, 1000);
    er_bridge_exec_out_fini(&out);
    assert_int_equal(runner_run(r, "echo next", NULL, 0, 5000, NULL, 100, &out),
                     0);
    assert_string_equal(er_bridge_exec_text(&out.out), "next\n");
    er_bridge_exec_out_fini(&out);

    t0 = er_time_mono_ms();
    assert_int_equal(
        runner_run(r, "echo started; sleep 30", NULL, 0, 300, NULL, 100, &out),
        -1);
    assert_true(er_time_mono_ms() - t0 < 3000);
    assert_string_equal(er_bridge_exec_text(&out.out), "started\n");
    er_bridge_exec_out_fini(&out);

    atomic_store(&cancel_flag, false);
    assert_int_equal(pthread_create(&tid, NULL, cancel_later, NULL), 0);
    t0 = er_time_mono_ms();
    assert_int_equal(
        runner_run(r, "sleep 30", NULL, 0, 20000, &cancel_flag, 100, &out), -1);
    assert_true(er_time_mono_ms() - t0 < 3000);
    pthread_join(tid, NULL);
    er_bridge_exec_out_fini(&out);

    t0 = er_time_mono_ms();
    assert_int_equal(
        runner_run(r, "sleep 5 & echo back", NULL, 0, 20000, NULL, 100, &out),
        0);
    assert_true(er_time_mono_ms() - t0 < 3000);
    assert_string_equal(er_bridge_exec_text(&out.out), "back\n");
    er_bridge_exec_out_fini(&out);

    er_bridge_runner_stats(r, &st);
    assert_int_equal(st.starts, 1);
    assert_int_equal(st.commands, 7);
    assert_int_equal(st.fallbacks, 0);
    assert_int_equal(st.failures, 0);
    er_bridge_runner_stop(r);
}

/* A runner that dies mid-script ends that script (exit -1: it may have
 * run) and is not used again at once: the next scripts run one exec each,
 * and a new runner starts later. */
static void runner_death_falls_back(void **state)
{
    struct er_bridge_runner_stats st;
    struct er_bridge_runner *r;
    struct er_bridge_exec_out out;
    int i;

    (void)state;
    r = runner_with(GATEWAY, 0);
    /* The script's parent is the runner. */
    assert_int_equal(
        runner_run(r, "kill -9 $PPID; sleep 1", NULL, 0, 5000, NULL, 100, &out),
        -1);
    er_bridge_exec_out_fini(&out);
    assert_int_equal(
        runner_run(r, "echo fallback", NULL, 0, 5000, NULL, 100, &out), 0);
    assert_string_equal(er_bridge_exec_text(&out.out), "fallback\n");
    er_bridge_exec_out_fini(&out);
    er_bridge_runner_stats(r, &st);
    assert_int_equal(st.failures, 1);
    assert_int_equal(st.fallbacks, 1);
    /* RUNNER_RETRY_MS later, a new runner. */
    for (i = 0; i < 80; i++) {
        nanosleep(&(struct timespec){ 0, 100 * 1000000L }, NULL);
        assert_int_equal(
            runner_run(r, "echo again", NULL, 0, 5000, NULL, 100, &out), 0);
        assert_string_equal(er_bridge_exec_text(&out.out), "again\n");
        er_bridge_exec_out_fini(&out);
        er_bridge_runner_stats(r, &st);
        if (st.starts == 2)
            break;
    }
    assert_int_equal(st.starts, 2);
    assert_int_equal(
        runner_run(r, "echo $PPID", NULL, 0, 5000, NULL, 100, &out), 0);
    er_bridge_exec_out_fini(&out);
    er_bridge_runner_stats(r, &st);
    assert_int_equal(st.failures, 1);
    er_bridge_runner_stop(r);
}

/* What comes back from the runner's side is untrusted (it runs where the
 * agent does): a fake that answers with a frame longer than the limit, a
 * malformed one, or a frame cut short, is ended, the script reported as
 * killed, and the next one runs through the fallback; one that never says
 * hello is not used at all. */
static void hostile_runner_output_is_refused(void **state)
{
    static const char *const fakes[] = {
        "printf 'envrun-runner 1\\n'; read x; printf 'O 99999999\\n'; "
        "sleep 30",
        "printf 'envrun-runner 1\\n'; read x; printf 'O 5\\nabc'; exit 0",
        "printf 'envrun-runner 1\\n'; read x; printf 'R 0x\\n'; sleep 30",
        "printf 'envrun-runner 1\\n'; read x; printf 'Z 1\\nz'; sleep 30",
        "printf 'envrun-runner 1\\n'; read x; "
        "head -c 70000 /dev/zero | tr '\\0' 'x'; sleep 30",
    };
    char path[128];
    size_t i;

    (void)state;
    snprintf(path, sizeof(path), "%s/fake-runner", queue_dir);
    for (i = 0; i < sizeof(fakes) / sizeof(fakes[0]) + 1; i++) {
        struct er_bridge_runner_stats st;
        struct er_bridge_runner *r;
        struct er_bridge_exec_out out;
        FILE *f = fopen(path, "w");
        int64_t t0;

        assert_non_null(f);
        fprintf(f, "#!/bin/sh\n%s\n",
                i < sizeof(fakes) / sizeof(fakes[0]) ? fakes[i] : "sleep 1");
        fclose(f);
        assert_int_equal(chmod(path, 0755), 0);
        r = runner_with(path, i < sizeof(fakes) / sizeof(fakes[0]) ? 0 : 1);
        t0 = er_time_mono_ms();
        if (i < sizeof(fakes) / sizeof(fakes[0])) {
            assert_int_equal(
                runner_run(r, "echo one", NULL, 0, 2000, NULL, 100, &out), -1);
            er_bridge_exec_out_fini(&out);
            /* Refused on sight, not at the deadline (2 s + 3 s): the
             * fakes sleep on after the bad frame. */
            assert_true(er_time_mono_ms() - t0 < 1500);
        }
        assert_int_equal(
            runner_run(r, "echo two", NULL, 0, 2000, NULL, 100, &out), 0);
        assert_string_equal(er_bridge_exec_text(&out.out), "two\n");
        er_bridge_exec_out_fini(&out);
        assert_true(er_time_mono_ms() - t0 < 8000);
        er_bridge_runner_stats(r, &st);
        assert_int_equal(st.fallbacks, 1);
        er_bridge_runner_stop(r);
    }
    unlink(path);
}

/* A login's profile that prints before the runner's hello (the held exec
 * over ssh runs one): skipped, the runner is used. */
static void banner_before_the_hello_is_skipped(void **state)
{
    struct er_bridge_runner_stats st;
    struct er_bridge_runner *r;
    struct er_bridge_exec_out out;
    char path[128];
    FILE *f;

    (void)state;
    snprintf(path, sizeof(path), "%s/banner-runner", queue_dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "#!/bin/sh\necho 'Welcome to the build host.'\n"
            "echo 'envrun-runner 10'\n"
            "exec %s \"$@\"\n",
            GATEWAY);
    fclose(f);
    assert_int_equal(chmod(path, 0755), 0);
    r = runner_with(path, 0);
    assert_int_equal(runner_run(r, "echo hi", NULL, 0, 5000, NULL, 100, &out),
                     0);
    assert_string_equal(er_bridge_exec_text(&out.out), "hi\n");
    er_bridge_exec_out_fini(&out);
    er_bridge_runner_stats(r, &st);
    assert_int_equal(st.starts, 1);
    assert_int_equal(st.fallbacks, 0);
    er_bridge_runner_stop(r);
    unlink(path);
}

static int runner_on(void **state)
{
    (void)state;
    list_gateway = GATEWAY;
    list_runner = runner_with(GATEWAY, 0);
    return 0;
}

static int runner_off(void **state)
{
    struct er_bridge_runner_stats st;

    (void)state;
    er_bridge_runner_stats(list_runner, &st);
    er_bridge_runner_stop(list_runner);
    list_runner = NULL;
    list_gateway = NULL;
    /* Every script went through the runner. */
    assert_true(st.commands > 0);
    assert_int_equal(st.fallbacks, 0);
    return 0;
}

static int gateway_list_on(void **state)
{
    (void)state;
    list_gateway = GATEWAY;
    return 0;
}

static int gateway_list_off(void **state)
{
    (void)state;
    list_gateway = NULL;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip_through_the_gateway),
        cmocka_unit_test(failed_mutation_is_409_for_the_agent),
        cmocka_unit_test(hand_written_requests_get_answers),
        cmocka_unit_test(stop_drains_then_answers_503),
        cmocka_unit_test(hung_exec_costs_one_iteration),
        cmocka_unit_test(idle_run_is_cheap),
        cmocka_unit_test_setup_teardown(round_trip_through_the_gateway,
                                        gateway_list_on, gateway_list_off),
        cmocka_unit_test_setup_teardown(hand_written_requests_get_answers,
                                        gateway_list_on, gateway_list_off),
        cmocka_unit_test_setup_teardown(gateway_list_brings_the_first_request,
                                        gateway_list_on, gateway_list_off),
        cmocka_unit_test_setup_teardown(failed_mutation_is_409_for_the_agent,
                                        gateway_list_on, gateway_list_off),
        cmocka_unit_test_setup_teardown(stop_drains_then_answers_503,
                                        gateway_list_on, gateway_list_off),
        cmocka_unit_test(runner_runs_scripts_in_step),
        cmocka_unit_test(runner_death_falls_back),
        cmocka_unit_test(hostile_runner_output_is_refused),
        cmocka_unit_test(banner_before_the_hello_is_skipped),
        cmocka_unit_test_setup_teardown(round_trip_through_the_gateway,
                                        runner_on, runner_off),
        cmocka_unit_test_setup_teardown(hand_written_requests_get_answers,
                                        runner_on, runner_off),
        cmocka_unit_test_setup_teardown(failed_mutation_is_409_for_the_agent,
                                        runner_on, runner_off),
        cmocka_unit_test_setup_teardown(stop_drains_then_answers_503, runner_on,
                                        runner_off),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
