/* bridge_forward_test: the bridge's forwarder against a stand-in for the
 * Paperclip API (tests/support/api_standin.c: the real API is a Node
 * server that cannot run here), which records what reaches it and answers
 * as each case says. Covers the host credential replacing
 * the bridge token, the header allow-lists both ways, the route allow-list
 * (refused before anything is sent), API errors passing through, redirects
 * never followed, the size limit, the 502 / 504-indeterminate answers
 * for failures (domain.md 5.10, upstream.md B6 and B8), and the run's
 * traceparent: replaced while forwarders work (never torn), and moved to a
 * later realize's when the worker's registry keeps the run's bridge (the
 * bridge's scripts run through /bin/sh here, the real gateway with them). */
#define _GNU_SOURCE /* memmem, strcasestr */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "bridge/bridge.h"
#include "drivers/driver.h"
#include "tests/support/api_standin.h"
#include "worker/bridge_host_int.h"

#define HOST_TOKEN   "host-credential-0123456789abcdef"
#define BRIDGE_TOKEN "bridge-token-should-never-pass"
#define RUN_ID       "5b8e2b42-6f3e-4c1e-9a57-0d7f3c2b1a90"
#define MAX_BODY     4096

static struct er_api_standin *api;

/* ---- fixtures ---- */

static struct er_bridge_allow *allow;
static struct er_bridge_fwd *fwd;
static struct er_secret token;

static void api_answer(const char *raw, int delay_ms)
{
    er_api_standin_answer(api, raw, delay_ms);
}

static int api_hits(char *seen, size_t len)
{
    return er_api_standin_hits(api, seen, len);
}

static int setup(void **state)
{
    (void)state;
    api = er_api_standin_start();
    if (api == NULL ||
        er_api_standin_fwd(api, MAX_BODY, 2000, &allow, &fwd) != 0 ||
        er_secret_set(&token, HOST_TOKEN, strlen(HOST_TOKEN)) != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    er_api_standin_stop(api);
    er_bridge_fwd_free(fwd);
    er_bridge_allow_free(allow);
    er_secret_fini(&token);
    return 0;
}

static const char *header_of(const struct er_bridge_res *res, const char *name)
{
    size_t i;

    for (i = 0; i < res->header_cnt; i++) {
        if (strcmp(res->headers[2 * i], name) == 0)
            return res->headers[2 * i + 1];
    }
    return NULL;
}

static void body_is(const struct er_bridge_res *res, const char *want)
{
    assert_int_equal(res->body.len, strlen(want));
    assert_memory_equal(res->body.data, want, res->body.len);
}

static void no_token_in(const struct er_bridge_res *res)
{
    size_t i;

    assert_null(
        memmem(res->body.data, res->body.len, HOST_TOKEN, strlen(HOST_TOKEN)));
    for (i = 0; i < res->header_cnt * 2; i++)
        assert_null(strstr(res->headers[i], HOST_TOKEN));
}

/* ---- cases ---- */

/* domain.md 5.10 case 1: the API sees the host's credential and the run id,
 * only allow-listed headers; the agent gets the allow-listed answer. */
static void round_trip_swaps_the_token_and_filters_headers(void **state)
{
    static const char *const headers[] = {
        "accept",
        "application/json",
        "if-none-match",
        "\"v1\"",
        "authorization",
        "Bearer " BRIDGE_TOKEN,
        "x-paperclip-run-id",
        "agent-chosen-run",
        "x-bridge-debug",
        "1",
        "if-match",
        "  ",
    };
    const struct er_bridge_req req = {
        "GET", "/api/agents/me", "?view=compact", headers, 6, NULL, 0
    };
    struct er_bridge_res res;
    char seen[16384];

    (void)state;
    api_answer("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
               "ETag: \"v2\"\r\nlast-modified: Tue, 01 Dec 2026 00:00:00 GMT"
               "\r\nset-cookie: s=1\r\nx-internal: yes\r\n"
               "content-length: 11\r\n\r\n{\"id\":\"a\"}\n",
               0);
    er_bridge_handle(fwd, &req, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 200);
    body_is(&res, "{\"id\":\"a\"}\n");
    assert_string_equal(header_of(&res, "content-type"), "application/json");
    assert_string_equal(header_of(&res, "etag"), "\"v2\"");
    assert_non_null(header_of(&res, "last-modified"));
    assert_null(header_of(&res, "set-cookie"));
    assert_null(header_of(&res, "x-internal"));
    assert_int_equal(api_hits(seen, sizeof(seen)), 1);
    assert_non_null(strstr(seen, "GET /api/agents/me?view=compact HTTP/1.1"));
    assert_non_null(strstr(seen, "\r\nauthorization: Bearer " HOST_TOKEN));
    assert_non_null(strstr(seen, "\r\nx-paperclip-run-id: " RUN_ID "\r\n"));
    assert_non_null(strstr(seen, "\r\naccept: application/json\r\n"));
    assert_non_null(strstr(seen, "\r\nif-none-match: \"v1\"\r\n"));
    assert_null(strstr(seen, BRIDGE_TOKEN));
    assert_null(strstr(seen, "agent-chosen-run"));
    assert_null(strcasestr(seen, "x-bridge-debug"));
    assert_null(strcasestr(seen, "if-match"));
    er_bridge_res_fini(&res);
}

/* domain.md 5.10 cases 2 and 4: refused before anything is sent. */
static void route_not_allowed_never_reaches_the_api(void **state)
{
    const struct er_bridge_req patch = {
        "PATCH", "/api/issues/issue-1/x", "", NULL, 0, "{}", 2
    };
    const struct er_bridge_req del = { "DELETE", "/api/secrets", "", NULL,
                                       0,        NULL,           0 };
    struct er_bridge_res res;

    (void)state;
    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 0);
    er_bridge_handle(fwd, &patch, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 403);
    body_is(&res, "{\"error\":\"Route not allowed: PATCH "
                  "/api/issues/issue-1/x\"}");
    assert_string_equal(header_of(&res, "content-type"), "application/json");
    er_bridge_res_fini(&res);
    er_bridge_handle(fwd, &del, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 403);
    body_is(&res, "{\"error\":\"Route not allowed: DELETE /api/secrets\"}");
    er_bridge_res_fini(&res);
    assert_int_equal(api_hits(NULL, 0), 0);
}

/* A mutation's body and content type reach the API; its 4xx comes back as
 * it is. */
static void post_body_goes_and_api_errors_pass_through(void **state)
{
    static const char *const headers[] = { "content-type", "application/json" };
    static const char body[] = "{\"body\":\"hello\"}";
    const struct er_bridge_req req = {
        "POST", "/api/issues/i1/comments", "", headers, 1,
        body,   sizeof(body) - 1
    };
    struct er_bridge_res res;
    char seen[16384];

    (void)state;
    api_answer("HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: "
               "application/json\r\ncontent-length: 17\r\n\r\n"
               "{\"error\":\"nope\"}\n",
               0);
    er_bridge_handle(fwd, &req, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 422);
    body_is(&res, "{\"error\":\"nope\"}\n");
    assert_null(header_of(&res, "x-paperclip-bridge-outcome"));
    assert_int_equal(api_hits(seen, sizeof(seen)), 1);
    assert_non_null(strstr(seen, "POST /api/issues/i1/comments HTTP/1.1"));
    assert_non_null(strstr(seen, "\r\ncontent-type: application/json\r\n"));
    assert_non_null(strstr(seen, "\r\n\r\n{\"body\":\"hello\"}"));
    assert_null(strcasestr(seen, "expect:"));
    er_bridge_res_fini(&res);
}

/* The forward never leaves the origin: a redirect is the agent's answer,
 * not followed, and its Location is not passed on. */
static void redirects_are_not_followed(void **state)
{
    const struct er_bridge_req req = {
        "GET", "/api/agents/me", "", NULL, 0, NULL, 0
    };
    struct er_bridge_res res;

    (void)state;
    api_answer("HTTP/1.1 302 Found\r\nlocation: http://198.51.100.7/steal\r\n"
               "content-length: 0\r\n\r\n",
               0);
    er_bridge_handle(fwd, &req, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 302);
    assert_null(header_of(&res, "location"));
    assert_int_equal(api_hits(NULL, 0), 1);
    er_bridge_res_fini(&res);
}

static void oversized_answers_are_refused(void **state)
{
    static char big[MAX_BODY + 256];
    static char big2[MAX_BODY + 256];
    const struct er_bridge_req get = {
        "GET", "/api/agents/me", "", NULL, 0, NULL, 0
    };
    const struct er_bridge_req post = {
        "POST", "/api/issues/i1/comments", "", NULL, 0, "{}", 2
    };
    struct er_bridge_res res;
    char want[256];
    int n;

    (void)state;
    snprintf(want, sizeof(want),
             "Bridge response body exceeded the configured size limit of %d "
             "bytes.",
             MAX_BODY);
    /* Announced too big, and sent too big without a length. */
    n = snprintf(big, sizeof(big),
                 "HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n", MAX_BODY + 1);
    memset(big + n, 'x', sizeof(big) - (size_t)n - 1);
    api_answer(big, 0);
    er_bridge_handle(fwd, &get, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 502);
    assert_non_null(memmem(res.body.data, res.body.len, want, strlen(want)));
    assert_null(header_of(&res, "x-paperclip-bridge-outcome"));
    er_bridge_res_fini(&res);

    /* Another buffer: the stand-in may still be writing the first. */
    n = snprintf(big2, sizeof(big2),
                 "HTTP/1.1 200 OK\r\nconnection: close\r\n"
                 "\r\n");
    memset(big2 + n, 'y', sizeof(big2) - (size_t)n - 1);
    api_answer(big2, 0);
    er_bridge_handle(fwd, &post, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 504);
    assert_string_equal(header_of(&res, "x-paperclip-bridge-outcome"),
                        "indeterminate");
    assert_non_null(memmem(res.body.data, res.body.len, want, strlen(want)));
    assert_non_null(memmem(res.body.data, res.body.len,
                           "\"outcome\":\"indeterminate\",\"retryable\":false",
                           43));
    er_bridge_res_fini(&res);
}

/* No answer at all: a GET is a plain 502, a mutation 504 indeterminate (it
 * may have been applied), and any request the worker aborts too. */
static void failures_are_502_or_504_indeterminate(void **state)
{
    const struct er_bridge_req get = {
        "GET", "/api/agents/me", "", NULL, 0, NULL, 0
    };
    const struct er_bridge_req post = {
        "POST", "/api/issues/i1/checkout", "", NULL, 0, "{}", 2
    };
    struct er_bridge_res res;
    atomic_bool abort_flag = true;

    (void)state;
    api_answer(NULL, 0); /* close without answering */
    er_bridge_handle(fwd, &get, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 502);
    assert_null(header_of(&res, "x-paperclip-bridge-outcome"));
    no_token_in(&res);
    er_bridge_res_fini(&res);
    er_bridge_handle(fwd, &post, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 504);
    assert_string_equal(header_of(&res, "x-paperclip-bridge-outcome"),
                        "indeterminate");
    no_token_in(&res);
    er_bridge_res_fini(&res);

    /* Slower than the forwarder's 2 s budget. */
    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 3000);
    er_bridge_handle(fwd, &get, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 502);
    assert_non_null(memmem(res.body.data, res.body.len,
                           "Bridge forward "
                           "failed: ",
                           23));
    er_bridge_res_fini(&res);

    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 500);
    er_bridge_handle(fwd, &get, &token, RUN_ID, &abort_flag, &res);
    assert_int_equal(res.status, 504);
    assert_string_equal(header_of(&res, "x-paperclip-bridge-outcome"),
                        "indeterminate");
    er_bridge_res_fini(&res);
}

/* A header value that would split the request, or a query with a fragment
 * or a space, is refused and nothing is sent. */
static void request_splitting_is_refused(void **state)
{
    static const char *const headers[] = { "accept", "a\r\nx-evil: 1" };
    const struct er_bridge_req split = {
        "GET", "/api/agents/me", "", headers, 1, NULL, 0
    };
    const struct er_bridge_req frag = {
        "GET", "/api/agents/me", "?a#b", NULL, 0, NULL, 0
    };
    const struct er_bridge_req space = {
        "GET", "/api/agents/me", "?a b HTTP/1.1", NULL, 0, NULL, 0
    };
    struct er_bridge_res res;

    (void)state;
    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 0);
    er_bridge_handle(fwd, &split, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 400);
    body_is(&res, "{\"error\":\"Invalid bridge request payload.\"}");
    er_bridge_res_fini(&res);
    er_bridge_handle(fwd, &frag, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 400);
    er_bridge_res_fini(&res);
    er_bridge_handle(fwd, &space, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 400);
    er_bridge_res_fini(&res);
    assert_int_equal(api_hits(NULL, 0), 0);
}

/* The realize command's W3C traceparent goes with every forwarded request
 * (an agent's own is not allow-listed, so ours stands); none once unset. */
static void forwarded_requests_carry_the_run_trace(void **state)
{
#define TRACE "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    static const char *const headers[] = {
        "traceparent",
        "00-11111111111111111111111111111111-2222222222222222-01",
    };
    const struct er_bridge_req req = {
        "GET", "/api/agents/me", "", headers, 1, NULL, 0
    };
    struct er_bridge_res res;
    char seen[16384];

    (void)state;
    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 0);
    er_bridge_fwd_set_trace(fwd, TRACE);
    er_bridge_handle(fwd, &req, &token, RUN_ID, NULL, &res);
    assert_int_equal(res.status, 200);
    er_bridge_res_fini(&res);
    assert_int_equal(api_hits(seen, sizeof(seen)), 1);
    assert_non_null(strstr(seen, "\r\ntraceparent: " TRACE "\r\n"));
    assert_null(strstr(seen, "1111111111"));

    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 0);
    er_bridge_fwd_set_trace(fwd, "00-bad\r\nx-evil: 1");
    er_bridge_handle(fwd, &req, &token, RUN_ID, NULL, &res);
    er_bridge_res_fini(&res);
    er_bridge_fwd_set_trace(fwd, NULL);
    er_bridge_handle(fwd, &req, &token, RUN_ID, NULL, &res);
    er_bridge_res_fini(&res);
    assert_int_equal(api_hits(seen, sizeof(seen)), 2);
    assert_null(strcasestr(seen, "traceparent"));
    assert_null(strcasestr(seen, "x-evil"));
#undef TRACE
}

/* ---- the trace replaced while requests are forwarded ---- */

#define TRACE_A "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#define TRACE_B "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define FLOOD_N 40

struct flood {
    struct er_bridge_fwd *fwd;
    atomic_bool *is_done;
    int not_ok; /* answers other than 200 */
};

/* One forwarding thread (as a stream_v1 forwarder is): FLOOD_N requests
 * on its own forwarder. */
static void *flood_main(void *arg)
{
    struct flood *fl = arg;
    const struct er_bridge_req req = {
        "GET", "/api/agents/me", "", NULL, 0, NULL, 0
    };
    struct er_bridge_res res;
    int i;

    for (i = 0; i < FLOOD_N; i++) {
        er_bridge_handle(fl->fwd, &req, &token, RUN_ID, NULL, &res);
        fl->not_ok += res.status != 200;
        er_bridge_res_fini(&res);
    }
    atomic_store(fl->is_done, true);
    return NULL;
}

/* How many traceparent headers seen has; each must be one of the two
 * (none torn, none cut). */
static int traces_in(const char *seen)
{
    const char *p = seen;
    int n = 0;

    while ((p = strstr(p, "\r\ntraceparent: ")) != NULL) {
        const char *v = p + 15;
        const char *eol = strstr(v, "\r\n");

        assert_non_null(eol);
        if ((size_t)(eol - v) != strlen(TRACE_A) ||
            (memcmp(v, TRACE_A, strlen(TRACE_A)) != 0 &&
             memcmp(v, TRACE_B, strlen(TRACE_B)) != 0))
            fail_msg("torn traceparent: %.*s", (int)(eol - v), v);
        n++;
        p = eol;
    }
    return n;
}

/* A kept bridge's trace is replaced while its forwarders work: every
 * request carries the old trace or the new one, whole, and once replaced
 * only the new one (or none once cleared). */
static void trace_replaced_while_forwarding_is_never_torn(void **state)
{
    const struct er_bridge_req req = {
        "GET", "/api/agents/me", "", NULL, 0, NULL, 0
    };
    struct er_bridge_allow *allow2 = NULL;
    struct er_bridge_fwd *fwd2 = NULL;
    struct er_bridge_res res;
    atomic_bool is_done[2] = { false, false };
    struct flood fl[2] = { { fwd, &is_done[0], 0 }, { NULL, &is_done[1], 0 } };
    pthread_t tid[2];
    static char seen[65536];
    unsigned long flips = 0;
    int i;

    (void)state;
    assert_int_equal(er_api_standin_fwd(api, MAX_BODY, 2000, &allow2, &fwd2),
                     0);
    fl[1].fwd = fwd2;
    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 0);
    er_bridge_fwd_set_trace(fwd, TRACE_A);
    er_bridge_fwd_set_trace(fwd2, TRACE_A);
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&tid[i], NULL, flood_main, &fl[i]), 0);
    while (!atomic_load(&is_done[0]) || !atomic_load(&is_done[1])) {
        const char *t = flips++ % 2 == 0 ? TRACE_B : TRACE_A;

        er_bridge_fwd_set_trace(fwd, t);
        er_bridge_fwd_set_trace(fwd2, t);
    }
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_join(tid[i], NULL), 0);
    assert_int_equal(fl[0].not_ok + fl[1].not_ok, 0);
    assert_int_equal(api_hits(seen, sizeof(seen)), 2 * FLOOD_N);
    assert_int_equal(traces_in(seen), 2 * FLOOD_N);
    assert_true(flips > 2 * FLOOD_N);

    /* Replaced: the next requests carry the new trace only. */
    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 0);
    er_bridge_fwd_set_trace(fwd, TRACE_A);
    er_bridge_fwd_set_trace(fwd2, TRACE_B);
    er_bridge_handle(fwd2, &req, &token, RUN_ID, NULL, &res);
    er_bridge_res_fini(&res);
    assert_int_equal(api_hits(seen, sizeof(seen)), 1);
    assert_non_null(strstr(seen, "\r\ntraceparent: " TRACE_B "\r\n"));
    assert_null(strstr(seen, TRACE_A));
    /* Cleared: none. */
    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 0);
    er_bridge_fwd_set_trace(fwd2, NULL);
    er_bridge_handle(fwd2, &req, &token, RUN_ID, NULL, &res);
    er_bridge_res_fini(&res);
    assert_int_equal(api_hits(seen, sizeof(seen)), 1);
    assert_null(strcasestr(seen, "traceparent"));
    er_bridge_fwd_set_trace(fwd, NULL);
    er_bridge_fwd_free(fwd2);
    er_bridge_allow_free(allow2);
}

/* ---- a kept bridge, through the worker's registry ---- */

#define LEASE_ID "6c1e7a52-0000-4000-8000-0000000000f1"

static atomic_int holds; /* held execs started (a stream's, a runner's) */
static char bridge_cwd[64];

/* A driver's execute over /bin/sh on this host: the bridge's scripts run
 * here, in the "remote" workspace, a held exec on the bridge's pipes. */
static int sh_execute(const struct er_driver_env *env,
                      const struct er_driver_lease *lease,
                      const struct er_driver_exec *req,
                      struct er_driver_exec_result *out, struct er_err *err)
{
    const char *argv[8];
    struct er_proc_opts opts;
    struct er_proc_result res;
    size_t n = 0;
    int rc;

    (void)env;
    (void)lease;
    argv[n++] = req->command;
    while (req->args != NULL && req->args[n - 1] != NULL && n < 7) {
        argv[n] = req->args[n - 1];
        n++;
    }
    argv[n] = NULL;
    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.cwd = req->cwd;
    opts.stdin_data = req->stdin_data;
    opts.stdin_len = req->stdin_len;
    opts.timeout_ms = req->timeout_ms;
    opts.grace_ms = 200;
    opts.max_output_bytes = req->max_output_bytes;
    if (req->stdio != NULL) {
        atomic_fetch_add(&holds, 1);
        opts.stdin_fd = req->stdio->in_fd;
        opts.stdout_fd = req->stdio->out_fd;
    }
    rc = er_proc_run(&opts, &res, err);
    if (rc != 0)
        return rc;
    memset(out, 0, sizeof(*out));
    out->exit_code = res.exit_code;
    out->is_timed_out = res.is_timed_out;
    out->out = res.out; /* owned: passed on */
    out->out_len = res.out_len;
    out->err_text = res.err_text;
    out->err_len = res.err_len;
    return 0;
}

static const struct er_driver_ops sh_ops = { .name = "sh",
                                             .is_remote = true,
                                             .execute = sh_execute };

/* Start (or keep) the lease's bridge for a realize with traceparent
 * (NULL: none); *port gets its gateway's port. */
static void realize_bridge(const char *cwd, const char *traceparent,
                           const char *want_mode, int *port, char *key,
                           size_t key_len)
{
    json_t *config = json_object();
    json_t *meta = json_object();
    const struct er_driver_env env = { "env-1", "company-1", "sh",
                                       "sh",    "active",    config };
    const struct er_driver_lease lease = { LEASE_ID, "active", "ephemeral",
                                           "sh",     NULL,     RUN_ID,
                                           meta };
    const struct er_bridge_host_req req = {
        .ops = &sh_ops,
        .env = &env,
        .lease = &lease,
        .remote_cwd = cwd,
        .adapter_key = "claude_local",
        .host_token = &token,
        .run_id = RUN_ID,
        .partition = -1,
        .traceparent = traceparent,
    };
    json_t *agent_env = NULL;
    json_t *detail = NULL;
    struct er_err err;
    const char *url;

    er_err_clear(&err);
    if (er_bridge_host_start(&req, &agent_env, &detail, &err) != 0)
        fail_msg("bridge start: %s", err.msg);
    assert_string_equal(json_string_value(json_object_get(
                            agent_env, "PAPERCLIP_API_BRIDGE_MODE")),
                        want_mode);
    url = json_string_value(json_object_get(agent_env, "PAPERCLIP_API_URL"));
    assert_non_null(url);
    assert_non_null(strrchr(url, ':'));
    *port = atoi(strrchr(url, ':') + 1);
    snprintf(
        key, key_len, "%s",
        json_string_value(json_object_get(agent_env, "PAPERCLIP_API_KEY")));
    json_decref(agent_env);
    json_decref(detail);
    json_decref(config);
    json_decref(meta);
}

/* The agent: one GET through the gateway on port; its status. */
static int agent_get(int port, const char *key)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    char buf[8192];
    size_t len = 0;
    int n;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    n = snprintf(buf, sizeof(buf),
                 "GET /api/agents/me HTTP/1.1\r\nHost: x\r\nAuthorization: "
                 "Bearer %s\r\nConnection: close\r\n\r\n",
                 key);
    assert_int_equal(write(fd, buf, (size_t)n), n);
    for (;;) {
        ssize_t k = read(fd, buf + len, sizeof(buf) - 1 - len);

        if (k <= 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    buf[len] = '\0';
    return len > 12 ? atoi(buf + 9) : 0;
}

/* One agent call; what reached the API into seen. */
static void call_through(int port, const char *key, char *seen, size_t len)
{
    api_answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 0);
    assert_int_equal(agent_get(port, key), 200);
    assert_int_equal(api_hits(seen, len), 1);
}

/* A later realize of the run finds its bridge serving: the bridge's
 * requests carry that realize's traceparent from then on (none when it
 * has none). stream_v1 keeps its bridge (its held exec is not started
 * again); queue_v1 replaces its poller and keeps its gateway. */
static void later_realize_moves_the_bridge_to_its_trace(const char *mode)
{
    static const char *const no_trace[] = {
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        NULL,
    };
    const char *cwd = bridge_cwd;
    char url[64];
    char key[64];
    char key2[64];
    char seen[16384];
    struct er_err err;
    int port;
    int port2;
    int holds0;
    size_t i;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d", er_api_standin_port(api));
    er_err_clear(&err);
    if (er_bridge_host_setup(url, NULL, strcmp(mode, "queue_v1") == 0, &err) !=
        0)
        fail_msg("bridge setup: %s", err.msg);

    realize_bridge(cwd, TRACE_A, mode, &port, key, sizeof(key));
    call_through(port, key, seen, sizeof(seen));
    assert_non_null(strstr(seen, "\r\ntraceparent: " TRACE_A "\r\n"));

    holds0 = atomic_load(&holds);
    realize_bridge(cwd, TRACE_B, mode, &port2, key2, sizeof(key2));
    assert_int_equal(port2, port);
    assert_string_equal(key2, key);
    if (strcmp(mode, "stream_v1") == 0)
        assert_int_equal(atomic_load(&holds), holds0); /* kept */
    call_through(port, key, seen, sizeof(seen));
    assert_non_null(strstr(seen, "\r\ntraceparent: " TRACE_B "\r\n"));
    assert_null(strstr(seen, TRACE_A));

    /* Not a W3C traceparent (an all-zero trace id, upper-case hex), or
     * none: the next requests carry none. Each follows a valid one, so that
     * it is what clears it. */
    for (i = 0; i < sizeof(no_trace) / sizeof(no_trace[0]); i++) {
        realize_bridge(cwd, TRACE_B, mode, &port2, key2, sizeof(key2));
        realize_bridge(cwd, no_trace[i], mode, &port2, key2, sizeof(key2));
        assert_int_equal(port2, port);
        call_through(port, key, seen, sizeof(seen));
        assert_null(strcasestr(seen, "traceparent"));
    }

    assert_true(er_bridge_host_drop(LEASE_ID));
}

/* The run's "remote" workspace, and the registry emptied after each case
 * (whether it passed or not). */
static int bridge_setup(void **state)
{
    (void)state;
    snprintf(bridge_cwd, sizeof(bridge_cwd), "/tmp/envrun-bridge-fwd-XXXXXX");
    return mkdtemp(bridge_cwd) != NULL ? 0 : -1;
}

static int bridge_teardown(void **state)
{
    char cmd[128];

    (void)state;
    (void)er_bridge_host_drop(LEASE_ID);
    er_bridge_host_shutdown();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", bridge_cwd);
    return system(cmd) == 0 ? 0 : -1;
}

static void kept_stream_bridge_takes_the_new_trace(void **state)
{
    (void)state;
    later_realize_moves_the_bridge_to_its_trace("stream_v1");
}

static void replaced_queue_bridge_takes_the_new_trace(void **state)
{
    (void)state;
    later_realize_moves_the_bridge_to_its_trace("queue_v1");
}

static void origin_is_checked(void **state)
{
    static const char *const bad[] = {
        "ftp://127.0.0.1:21",
        "http://127.0.0.1:3100/api",
        "http://u:p@127.0.0.1:3100",
        "http://127.0.0.1:3100?x=1",
        "not a url",
        "",
    };
    struct er_bridge_fwd *f = NULL;
    struct er_err err;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        er_err_clear(&err);
        assert_int_equal(er_bridge_fwd_new(bad[i], allow, 1, 1, &f, &err),
                         ER_EINVAL);
        assert_null(f);
        assert_non_null(strstr(err.msg, "ENVRUN_PAPERCLIP_API_URL: "));
    }
    assert_int_equal(
        er_bridge_fwd_new("https://api.example:8443/", allow, 1, 1, &f, &err),
        0);
    er_bridge_fwd_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(forwarded_requests_carry_the_run_trace),
        cmocka_unit_test(round_trip_swaps_the_token_and_filters_headers),
        cmocka_unit_test(route_not_allowed_never_reaches_the_api),
        cmocka_unit_test(post_body_goes_and_api_errors_pass_through),
        cmocka_unit_test(redirects_are_not_followed),
        cmocka_unit_test(oversized_answers_are_refused),
        cmocka_unit_test(failures_are_502_or_504_indeterminate),
        cmocka_unit_test(request_splitting_is_refused),
        cmocka_unit_test(origin_is_checked),
        cmocka_unit_test(trace_replaced_while_forwarding_is_never_torn),
        cmocka_unit_test_setup_teardown(kept_stream_bridge_takes_the_new_trace,
                                        bridge_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(
            replaced_queue_bridge_takes_the_new_trace, bridge_setup,
            bridge_teardown),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
