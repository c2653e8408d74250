/* paperclip_era_test: the worker on each Paperclip era's control-plane
 * tables (tests/fixtures, made from ../shared/spec/paperclip-schema-*.txt).
 * On today's era (2026.6 on: environments are the instance's, leases may
 * be pending_cleanup, upstream.md C1-C2) a release whose cleanup fails
 * leaves the lease pending_cleanup, and the reaper retries it with the
 * metadata keys a Paperclip server reads, until it is expired (an ssh
 * per-lease workspace is kept until then for the cleanup command); on the seed
 * era the lease takes its terminal status with cleanup_status failed, as
 * before. An instance's environment serves every company, each with its
 * own secrets only. Ids written are RFC 9562 UUIDs. Needs the ssh server
 * of scripts/test-services.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

#define ERA_SEED  ER_SOURCE_DIR "/tests/fixtures/paperclip-2026.529.0.sql"
#define ERA_TODAY ER_SOURCE_DIR "/tests/fixtures/paperclip-2026.916.1.sql"

/* The reaper passes every quarter of the TTL: every 10 s here, long after
 * the steps of a case are done. */
#define TTL_ENV "ENVRUN_LEASE_TTL_S=40"

/* RFC 9562: version 1 to 8, variant 10. */
#define NOT_RFC9562                                                    \
    "!~ '^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-" \
    "[0-9a-f]{12}$'"

struct era_case {
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    const char *env[8];
};

static int teardown(void **state)
{
    struct era_case *c = *state;
    int rc = 0;

    if (c == NULL)
        return 0;
    if (c->h != NULL) {
        rc = er_harness_stop_workers(c->h) ? 0 : -1;
        if (c->ssh != NULL) {
            er_harness_ssh_kill_sessions(c->ssh);
            er_harness_ssh_destroy(c->ssh);
        }
        er_harness_destroy(c->h);
    }
    free(c);
    *state = NULL;
    return rc;
}

/* A harness whose database holds the era's tables (fixture), an ssh
 * server and a started worker. */
static struct era_case *era_case_new(void **state, const char *name,
                                     const char *fixture)
{
    struct era_case *c = calloc(1, sizeof(*c));
    struct er_harness_worker_opts opts = { 0 };

    ER_HARNESS_NON_NULL(c);
    *state = c;
    assert_int_equal(setenv("ER_HARNESS_PAPERCLIP_SCHEMA", fixture, 1), 0);
    c->h = er_harness_new(name, 1, NULL);
    assert_int_equal(unsetenv("ER_HARNESS_PAPERCLIP_SCHEMA"), 0);
    ER_HARNESS_NON_NULL(c->h);
    c->ssh = er_harness_ssh_new(c->h);
    ER_HARNESS_NON_NULL(c->ssh);
    er_harness_ssh_worker_env_with(c->ssh, TTL_ENV, c->env);
    opts.env = c->env;
    ER_HARNESS_NON_NULL(er_harness_worker_start_warm(c->h, &opts));
    return c;
}

/* Send cmd and wait for its result. */
static const json_t *run_cmd(struct er_harness *h, struct er_harness_cmd *cmd)
{
    const json_t *res;

    assert_int_equal(er_harness_send(h, &cmd->cmd), 0);
    res = er_harness_wait_result(h, cmd->command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    return res;
}

/* A run of a new company on a per-lease ssh environment of its own (its
 * workspaces under remote): acquire, realize with a cleanup command that
 * fails, release. The lease's id goes to lease_id. */
static void run_with_failing_cleanup(struct era_case *c,
                                     char remote[ER_HARNESS_PATH_MAX + 16],
                                     char lease_id[37])
{
    struct er_harness_run run;
    char env_id[37];
    struct er_harness_cmd cmd;
    const json_t *res;

    er_harness_run_init(&run);
    assert_int_equal(
        er_harness_ssh_per_lease_env(c->h, c->ssh, run.company_id, "Stuck",
                                     remote, ER_HARNESS_PATH_MAX + 16, env_id),
        0);
    er_harness_cmd_acquire(&cmd, &run);
    cmd.cmd.selected_environment_id = env_id;
    res = run_cmd(c->h, &cmd);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    snprintf(lease_id, 37, "%s", er_harness_json_str(res, "leaseId"));
    er_harness_cmd_realize(&cmd, &run, c->h->dir);
    cmd.cmd.runtime_overlay_json =
        (char *)(uintptr_t) "{\"cleanupCommand\": \"exit 1\"}";
    res = run_cmd(c->h, &cmd);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    er_harness_cmd_release(&cmd, &run, ER_RELEASE_RELEASED);
    res = run_cmd(c->h, &cmd);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    ER_HARNESS_ASSERT_STR(res, "leaseId", lease_id);
}

static void assert_ids_are_rfc9562(struct er_harness *h)
{
    assert_int_equal(
        er_harness_pg_count(h->db_url,
                            "SELECT count(*) FROM "
                            "environment_leases WHERE id::text " NOT_RFC9562,
                            0, NULL),
        0);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM activity_log "
                                         "WHERE id::text " NOT_RFC9562,
                                         0, NULL),
                     0);
    assert_true(er_harness_pg_count(h->db_url,
                                    "SELECT count(*) FROM activity_log", 0,
                                    NULL) > 0);
}

static void today_failed_cleanup_goes_pending_and_is_retried(void **state)
{
    struct era_case *c = era_case_new(state, "era_pending_cleanup", ERA_TODAY);
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 16];
    char test_dir[ER_HARNESS_PATH_MAX + 80];
    const char *p[1];

    assert_true(er_harness_is_instance_era(c->h));
    run_with_failing_cleanup(c, remote, lease_id);
    p[0] = lease_id;
    /* Not a terminal status: the machine may still be there. */
    assert_int_equal(
        er_harness_pg_count(c->h->db_url,
                            "SELECT count(*) FROM environment_leases WHERE "
                            "id = $1::uuid AND status = 'pending_cleanup' "
                            "AND cleanup_status = 'failed' AND "
                            "failure_reason IS NOT NULL AND released_at IS "
                            "NOT NULL",
                            1, p),
        1);
    /* The reaper tries again, fails again, and says so as upstream does:
     * one attempt counted, not in flight, the next try 5 minutes on. */
    assert_true(er_harness_pg_wait_count(
        c->h,
        "SELECT count(*) FROM environment_leases WHERE id = $1::uuid AND "
        "status = 'pending_cleanup' AND metadata->>"
        "'pendingCleanupRetryAttempts' = '1' AND metadata->>"
        "'pendingCleanupInFlight' = 'false' AND (metadata->>"
        "'pendingCleanupRetryAfterMs')::bigint > (extract(epoch FROM "
        "now()) * 1000)::bigint + 200000 AND metadata ? "
        "'pendingCleanupAttemptId'",
        1, p, 1, 40000));
    /* The per-lease workspace is kept for the retry's cleanup command. */
    snprintf(test_dir, sizeof(test_dir), "test -d '%s/%s'", remote, lease_id);
    assert_int_equal(er_harness_ssh_remote(c->ssh, test_dir, NULL), 0);
    /* The cause is fixed and the retry made due (the backoff of upstream's
     * metadata and of the reaper's journal both passed). */
    assert_int_equal(
        er_harness_pg_exec(
            c->h->db_url,
            "UPDATE environment_leases SET metadata = jsonb_set(metadata, "
            "'{workspaceRealization,rebuild,metadata,runtimeOverlay,"
            "cleanupCommand}', '\"true\"') || "
            "'{\"pendingCleanupRetryAfterMs\": 0}' WHERE id = $1::uuid",
            1, p),
        0);
    assert_int_equal(er_harness_pg_exec(c->h->db_url,
                                        "UPDATE envrun.operations SET "
                                        "updated_at = now() - interval "
                                        "'1 day' WHERE lease_id = $1::uuid "
                                        "AND kind = 'reap'",
                                        1, p),
                     0);
    assert_true(er_harness_pg_wait_count(
        c->h,
        "SELECT count(*) FROM environment_leases WHERE id = $1::uuid AND "
        "status = 'expired' AND cleanup_status = 'success' AND "
        "failure_reason = 'pending_cleanup_retry' AND metadata->>"
        "'pendingCleanupInFlight' = 'false'",
        1, p, 1, 40000));
    assert_int_equal(
        er_harness_pg_count(c->h->db_url,
                            "SELECT count(*) FROM activity_log WHERE "
                            "entity_id = $1 AND action = "
                            "'environment.lease_released' AND actor_id = "
                            "'envrun-reaper' AND details->>'status' = "
                            "'expired'",
                            1, p),
        1);
    /* and the workspace is gone with it. */
    assert_int_equal(er_harness_ssh_remote(c->ssh, test_dir, NULL), 1);
    assert_ids_are_rfc9562(c->h);
}

static void seed_failed_cleanup_stays_terminal(void **state)
{
    struct era_case *c = era_case_new(state, "era_seed_cleanup", ERA_SEED);
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 16];
    const char *p[1];

    assert_false(er_harness_is_instance_era(c->h));
    run_with_failing_cleanup(c, remote, lease_id);
    p[0] = lease_id;
    assert_int_equal(
        er_harness_pg_count(c->h->db_url,
                            "SELECT count(*) FROM environment_leases WHERE "
                            "id = $1::uuid AND status = 'released' AND "
                            "cleanup_status = 'failed'",
                            1, p),
        1);
    /* A reaper pass later, nothing took it up again. */
    er_harness_poll(c->h, 12000);
    assert_int_equal(
        er_harness_pg_count(c->h->db_url,
                            "SELECT count(*) FROM environment_leases WHERE "
                            "id = $1::uuid AND status = 'released' AND NOT "
                            "metadata ? 'pendingCleanupRetryAttempts'",
                            1, p),
        1);
    assert_ids_are_rfc9562(c->h);
}

/* The instance's ssh environment is open to every company, but with the
 * company's own secrets only: another company's run that selects it gets
 * no key (its secret store has none), the owner's run works. */
static void
today_environment_serves_each_company_with_its_own_secrets(void **state)
{
    struct era_case *c = era_case_new(state, "era_tenants", ERA_TODAY);
    struct er_harness_run owner;
    struct er_harness_run other;
    struct er_harness_cmd cmd;
    char env_id[37];
    char remote[ER_HARNESS_PATH_MAX + 16];
    const json_t *res;
    json_t *body;

    er_harness_run_init(&owner);
    er_harness_run_init(&other);
    assert_int_equal(
        er_harness_ssh_per_lease_env(c->h, c->ssh, owner.company_id, "Shared",
                                     remote, sizeof(remote), env_id),
        0);
    er_harness_cmd_acquire(&cmd, &other);
    cmd.cmd.selected_environment_id = env_id;
    res = run_cmd(c->h, &cmd);
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    assert_string_not_equal(er_harness_json_str(res, "errorCode"),
                            "environment_not_found");
    ER_HARNESS_NON_NULL(strstr(er_harness_json_str(res, "errorMessage"),
                               "privateKeySecretRef"));
    assert_int_equal(er_harness_pg_count(c->h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE "
                                         "company_id = $1::uuid AND status "
                                         "= 'active'",
                                         1,
                                         (const char *[]){ other.company_id }),
                     0);

    er_harness_cmd_acquire(&cmd, &owner);
    cmd.cmd.selected_environment_id = env_id;
    res = run_cmd(c->h, &cmd);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    ER_HARNESS_ASSERT_STR(body, "environment.companyId", NULL);
    ER_HARNESS_ASSERT_STR(body, "lease.companyId", owner.company_id);
    json_decref(body);
    er_harness_cmd_release(&cmd, &owner, ER_RELEASE_RELEASED);
    res = run_cmd(c->h, &cmd);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_ids_are_rfc9562(c->h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(
            today_failed_cleanup_goes_pending_and_is_retried, teardown),
        cmocka_unit_test_teardown(seed_failed_cleanup_stays_terminal, teardown),
        cmocka_unit_test_teardown(
            today_environment_serves_each_company_with_its_own_secrets,
            teardown),
    };

    if (getenv("ENVRUN_TEST_SSH_HOST") == NULL) {
        fprintf(stderr, "paperclip_era_test needs ENVRUN_TEST_SSH_HOST "
                        "(scripts/test-services.sh)\n");
        return 1;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
