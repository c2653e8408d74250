/* allowlist_test: the bridge's default allow-lists (bridge/allowlist.txt)
 * let through exactly what upstream.md B9 lists and refuse the rest (a
 * direct agent creation, a secrets route, paths that try to stretch a rule),
 * and a bad allow-list file is refused naming its line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "bridge/bridge.h"

static struct er_bridge_allow *def;

static int setup(void **state)
{
    struct er_err err;

    (void)state;
    return er_bridge_allow_load(NULL, &def, &err);
}

static int teardown(void **state)
{
    (void)state;
    er_bridge_allow_free(def);
    def = NULL;
    return 0;
}

#define ALLOWED(m, p) assert_true(er_bridge_allow_route(def, m, p))
#define REFUSED(m, p) assert_false(er_bridge_allow_route(def, m, p))

static void default_list_has_upstreams_routes(void **state)
{
    (void)state;
    assert_int_equal(er_bridge_allow_route_count(def), 60);
    ALLOWED("GET", "/api/agents/me");
    ALLOWED("", "/api/agents/me"); /* blank method is GET */
    ALLOWED("GET", "/api/issues/issue-1/heartbeat-context");
    ALLOWED("GET", "/api/issues/i1/comments");
    ALLOWED("GET", "/api/issues/i1/comments/c1");
    ALLOWED("POST", "/api/issues/i1/comments");
    ALLOWED("POST", "/api/issues/i1/interactions/x9/verdicts");
    ALLOWED("GET", "/api/companies/c1/routines");
    ALLOWED("GET", "/llms/agent-configuration/claude_local.txt");
    ALLOWED("POST", "/api/execution-workspaces/w1/runtime-services/restart");
    ALLOWED("DELETE", "/api/routine-triggers/t1");
    ALLOWED("POST", "/api/companies/c1/agent-hires");
    ALLOWED("PUT", "/api/issues/i1/documents/d1");
}

/* domain.md 5.10 case 4, and what the rules' shapes must not let through. */
static void everything_else_is_refused(void **state)
{
    (void)state;
    REFUSED("DELETE", "/api/secrets");
    REFUSED("POST", "/api/companies/c1/agents"); /* hiring: agent-hires only */
    REFUSED("PATCH", "/api/issues/i1/comments");
    REFUSED("GET", "/api/issues/i1/comments/c1/extra");
    REFUSED("GET", "/api/issues//comments");    /* {x} is non-empty */
    REFUSED("GET", "/api/issues/i1/comments/"); /* no trailing slash */
    REFUSED("GET", "/api/agents/me/");
    REFUSED("GET", "api/agents/me");
    REFUSED("GET", "/api/agents/me?x=1"); /* the caller strips the query */
    REFUSED("GET", "/api/companies/c1/secrets");
    REFUSED("GET", "/api/companies/c1/dashboardx");
    REFUSED("GET", "/llms/agent-configuration/.txt");
    REFUSED("get", "/api/agents/me"); /* the caller upper-cases */
    REFUSED("GET", "/API/agents/me");
    REFUSED("GET", NULL);
    REFUSED("GET", "");
    /* Dot segments, plain or encoded, would reach another route once
     * resolved; encoded slashes would split a segment. */
    REFUSED("GET", "/api/issues/../comments");
    REFUSED("GET", "/api/issues/%2e%2E/comments");
    REFUSED("GET", "/api/agents/.");
    ALLOWED("GET", "/api/agents/...");
    ALLOWED("GET", "/api/agents/a.b");
    REFUSED("GET", "/api/agents/a%2fb");
    REFUSED("GET", "/api/agents/a%5Cb");
    REFUSED("GET", "/api/agents/a\\b");
    REFUSED("GET", "/api/agents/a b");
    REFUSED("GET", "/api/agents/a#b");
    REFUSED("GET", "/api/agents/\xc3\xa9");
    ALLOWED("GET", "/api/agents/a%40b");
}

static void headers_are_allow_listed(void **state)
{
    (void)state;
    assert_true(er_bridge_allow_request_header(def, "accept"));
    assert_true(er_bridge_allow_request_header(def, "If-None-Match"));
    assert_true(
        er_bridge_allow_request_header(def, "x-paperclip-github-capability"));
    assert_false(er_bridge_allow_request_header(def, "authorization"));
    assert_false(er_bridge_allow_request_header(def, "x-paperclip-run-id"));
    assert_false(er_bridge_allow_request_header(def, "cookie"));
    assert_true(er_bridge_allow_response_header(def, "ETag"));
    assert_true(
        er_bridge_allow_response_header(def, "x-paperclip-bridge-outcome"));
    assert_false(er_bridge_allow_response_header(def, "set-cookie"));
    assert_false(er_bridge_allow_response_header(def, "content-length"));
}

static void parse_fails(const char *text, const char *want)
{
    struct er_bridge_allow *a = NULL;
    struct er_err err;

    er_err_clear(&err);
    assert_int_not_equal(
        er_bridge_allow_parse(text, strlen(text), "test.txt", &a, &err), 0);
    assert_null(a);
    if (strstr(err.msg, want) == NULL)
        fail_msg("%s: got \"%s\", want \"%s\"", text, err.msg, want);
}

static void bad_files_are_refused_naming_the_line(void **state)
{
    struct er_bridge_allow *a = NULL;
    struct er_err err;
    static const char good[] = "# comment\r\n\nrequest accept\n"
                               "route GET /a/{x}.json[/{x}]\n"
                               "route POST /b/(c|d)\n";

    (void)state;
    assert_int_equal(
        er_bridge_allow_parse(good, strlen(good), "good.txt", &a, &err), 0);
    assert_true(er_bridge_allow_route(a, "GET", "/a/v1.json"));
    assert_true(er_bridge_allow_route(a, "GET", "/a/v1.json/z"));
    assert_false(er_bridge_allow_route(a, "GET", "/a/v1.jso"));
    assert_true(er_bridge_allow_route(a, "POST", "/b/d"));
    assert_false(er_bridge_allow_route(a, "POST", "/b/e"));
    er_bridge_allow_free(a);

    parse_fails("request accept\n", "test.txt: no route");
    parse_fails("route GET /a\nroute get /b\n", "test.txt:2: a route's METHOD");
    parse_fails("route GET a/b\n", "test.txt:1: a route's path starts with /");
    parse_fails("route GET /a//b\n", "test.txt:1: empty path segment");
    parse_fails("route GET /a/{x}{x}\n", "one {x} and otherwise plain text");
    parse_fails("route GET /a/(b|)\n", "a non-empty word");
    parse_fails("route GET /a/b?c\n", "not allowed");
    parse_fails("route GET /a extra\n", "route METHOD /path");
    parse_fails("request Accept\nroute GET /a\n", "test.txt:1: a header name");
    parse_fails("allow GET /a\n", "test.txt:1: a line starts with");
    er_err_clear(&err);
    assert_int_equal(
        er_bridge_allow_parse("route GET /a\n\0", 14, "nul.txt", &a, &err),
        ER_EINVAL);
    assert_string_equal(err.msg, "nul.txt: holds a NUL byte");
}

static void missing_file_is_named(void **state)
{
    struct er_bridge_allow *a = NULL;
    struct er_err err;

    (void)state;
    assert_int_equal(er_bridge_allow_load("/nonexistent/allow.txt", &a, &err),
                     ER_EIO);
    assert_null(a);
    assert_non_null(strstr(err.msg, "/nonexistent/allow.txt: "));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(default_list_has_upstreams_routes),
        cmocka_unit_test(everything_else_is_refused),
        cmocka_unit_test(headers_are_allow_listed),
        cmocka_unit_test(bad_files_are_refused_naming_the_line),
        cmocka_unit_test(missing_file_is_named),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
