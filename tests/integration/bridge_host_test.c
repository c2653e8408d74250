/* bridge_host_test: the worker's registry of callback bridges
 * (worker/bridge_host.c) over a real bwrap sandbox through the sandbox
 * driver's execute, forwarding to a stand-in for the Paperclip API (a
 * Node server that cannot run here). What it checks is the registry's own
 * guarantees: two starts of one lease at once (a realize and the reaper's
 * re-attach) leave one bridge, both callers with the same token and URL;
 * a start that ends after its partition left the worker does not keep its
 * bridge. Needs root and bubblewrap. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "drivers/sandbox_int.h"
#include "tests/support/api_standin.h"
#include "worker/bridge_host_int.h"

#define LEASE_ID   "b71d9e01-0000-4000-8000-000000000001"
#define SANDBOX_ID "b71d9e0100004000"
#define RUN_ID     "2f0b8c1e-1d3a-4b5c-9e8f-7a6b5c4d3e2f"
#define HOST_TOKEN "host-credential-of-the-run"

static struct er_api_standin *api;
static char sandbox_dir[64];
static json_t *env_config;
static json_t *lease_meta;
static struct er_secret host_token;

static int setup(void **state)
{
    char url[64];
    struct er_err err;

    (void)state;
    snprintf(sandbox_dir, sizeof(sandbox_dir), "/tmp/envrun-sandboxes-XXXXXX");
    if (mkdtemp(sandbox_dir) == NULL)
        return -1;
    er_bwrap_set_dir(sandbox_dir);
    if (er_bwrap_probe(&err) != 0 ||
        er_bwrap_create(SANDBOX_ID, NULL, &err) != 0) {
        fprintf(stderr, "bridge_host_test: %s\n", err.msg);
        return -1;
    }
    api = er_api_standin_start();
    if (api == NULL)
        return -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", er_api_standin_port(api));
    if (er_bridge_host_setup(url, NULL, false, &err) != 0) {
        fprintf(stderr, "bridge_host_test: %s\n", err.msg);
        return -1;
    }
    env_config = json_pack("{s:s}", "provider", "bwrap");
    lease_meta =
        json_pack("{s:s, s:s}", "provider", "bwrap", "sandboxId", SANDBOX_ID);
    if (env_config == NULL || lease_meta == NULL ||
        er_secret_set(&host_token, HOST_TOKEN, strlen(HOST_TOKEN)) != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    struct er_err err;

    (void)state;
    er_bridge_host_shutdown();
    er_bwrap_destroy(SANDBOX_ID, &err);
    er_api_standin_stop(api);
    json_decref(env_config);
    json_decref(lease_meta);
    er_secret_fini(&host_token);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", sandbox_dir);
    return system(cmd) == 0 ? 0 : -1;
}

struct start {
    int32_t partition;
    int rc;
    char msg[256];
    json_t *agent_env;
};

static void *start_main(void *arg)
{
    struct start *s = arg;
    const struct er_driver_env env = { "7c1d0000-0000-4000-8000-00000000000e",
                                       "7c1d0000-0000-4000-8000-00000000000c",
                                       "Bridged bwrap",
                                       "sandbox",
                                       "active",
                                       env_config };
    const struct er_driver_lease lease = { LEASE_ID,  "active", "ephemeral",
                                           "bwrap",   NULL,     RUN_ID,
                                           lease_meta };
    const struct er_bridge_host_req req = {
        .ops = er_driver_find("sandbox"),
        .env = &env,
        .lease = &lease,
        .remote_cwd = "/workspace",
        .adapter_key = "claude_local",
        .host_token = &host_token,
        .run_id = RUN_ID,
        .partition = s->partition,
    };
    json_t *detail = NULL;
    struct er_err err;

    er_err_clear(&err);
    s->rc = er_bridge_host_start(&req, &s->agent_env, &detail, &err);
    snprintf(s->msg, sizeof(s->msg), "%s", err.msg);
    json_decref(detail);
    return NULL;
}

static const char *env_str(const struct start *s, const char *key)
{
    return json_string_value(json_object_get(s->agent_env, key));
}

/* A realize and a re-attach of one lease at the same time: the second
 * waits for the first and keeps its bridge; one bridge runs. */
static void concurrent_starts_leave_one_bridge(void **state)
{
    struct start s[2];
    pthread_t t[2];
    int i;

    (void)state;
    memset(s, 0, sizeof(s));
    for (i = 0; i < 2; i++) {
        s[i].partition = -1;
        assert_int_equal(pthread_create(&t[i], NULL, start_main, &s[i]), 0);
    }
    for (i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        if (s[i].rc != 0)
            fprintf(stderr, "start %d: %s\n", i, s[i].msg);
        assert_int_equal(s[i].rc, 0);
        assert_string_equal(env_str(&s[i], "PAPERCLIP_API_BRIDGE_MODE"),
                            "stream_v1");
    }
    assert_string_equal(env_str(&s[0], "PAPERCLIP_API_KEY"),
                        env_str(&s[1], "PAPERCLIP_API_KEY"));
    assert_string_equal(env_str(&s[0], "PAPERCLIP_API_URL"),
                        env_str(&s[1], "PAPERCLIP_API_URL"));
    assert_int_equal(er_bridge_host_count(), 1);
    assert_true(er_bridge_host_has(LEASE_ID));
    assert_true(er_bridge_host_drop(LEASE_ID));
    assert_int_equal(er_bridge_host_count(), 0);
    assert_false(er_bridge_host_drop(LEASE_ID));
    for (i = 0; i < 2; i++)
        json_decref(s[i].agent_env);
}

/* The run's partition left this worker while its bridge was starting:
 * the start succeeds (the realize's result stands) but the bridge is not
 * kept; the partition's next owner re-attaches. */
static void start_after_handover_keeps_no_bridge(void **state)
{
    const int32_t owned[] = { 0, 1 };
    struct start s;

    (void)state;
    er_bridge_host_assigned(owned, 2);
    memset(&s, 0, sizeof(s));
    s.partition = 1;
    start_main(&s);
    assert_int_equal(s.rc, 0);
    assert_int_equal(er_bridge_host_count(), 1);
    json_decref(s.agent_env);
    er_bridge_host_drop_partition(1);
    assert_int_equal(er_bridge_host_count(), 0);

    memset(&s, 0, sizeof(s));
    s.partition = 1; /* no longer this worker's */
    start_main(&s);
    assert_int_equal(s.rc, 0);
    assert_non_null(env_str(&s, "PAPERCLIP_API_KEY"));
    assert_int_equal(er_bridge_host_count(), 0);
    assert_false(er_bridge_host_has(LEASE_ID));
    json_decref(s.agent_env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(concurrent_starts_leave_one_bridge),
        cmocka_unit_test(start_after_handover_keeps_no_bridge),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
