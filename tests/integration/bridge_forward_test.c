/* bridge_forward_test: the bridge's forwarder against a stand-in for the
 * Paperclip API (tests/support/api_standin.c: the real API is a Node
 * server that cannot run here), which records what reaches it and answers
 * as each case says. Covers the host credential replacing
 * the bridge token, the header allow-lists both ways, the route allow-list
 * (refused before anything is sent), API errors passing through, redirects
 * never followed, the size limit, and the 502 / 504-indeterminate answers
 * for failures (domain.md 5.10, upstream.md B6 and B8). */
#define _GNU_SOURCE /* memmem, strcasestr */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bridge/bridge.h"
#include "tests/support/api_standin.h"

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

    n = snprintf(big, sizeof(big),
                 "HTTP/1.1 200 OK\r\nconnection: close\r\n"
                 "\r\n");
    memset(big + n, 'y', sizeof(big) - (size_t)n - 1);
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
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
