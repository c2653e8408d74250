/* reaper_test: an active lease left untouched for ENVRUN_LEASE_TTL_S is
 * expired by the reaper (#11951, #11970), with its LeaseEvent and an
 * environment.lease_released activity row attributed to the system; a
 * lease that was released in time is left alone. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

static int teardown(void **state)
{
    int rc = er_harness_stop_workers(*state) ? 0 : -1;

    er_harness_destroy(*state);
    *state = NULL;
    return rc;
}

static void reaper_expires_lease_after_ttl(void **state)
{
    static const char *const env[] = { "ENVRUN_LEASE_TTL_S=2", NULL };
    const struct er_harness_worker_opts opts = { .env = env };
    struct er_harness *h;
    struct er_harness_run stale;
    struct er_harness_run done;
    struct er_harness_cmd acq;
    struct er_harness_cmd acq2;
    struct er_harness_cmd rel2;
    const struct er_harness_record *recs[8];
    const json_t *res;
    char lease_id[37];
    char done_lease[37];
    const char *params[1];
    json_t *rows;
    json_t *row;
    json_t *details;
    size_t n;

    h = er_harness_new("reaper_ttl", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ER_HARNESS_NON_NULL(er_harness_worker_start(h, &opts));
    er_harness_run_init(&stale);
    er_harness_run_init(&done);

    er_harness_cmd_acquire(&acq, &stale);
    er_harness_cmd_acquire(&acq2, &done);
    er_harness_cmd_release(&rel2, &done, ER_RELEASE_RELEASED);
    assert_int_equal(er_harness_send(h, &acq.cmd), 0);
    assert_int_equal(er_harness_send(h, &acq2.cmd), 0);
    assert_int_equal(er_harness_send(h, &rel2.cmd), 0);
    res = er_harness_wait_result(h, acq.command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    snprintf(lease_id, sizeof(lease_id), "%s",
             er_harness_json_str(res, "leaseId"));
    res = er_harness_wait_result(h, acq2.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    snprintf(done_lease, sizeof(done_lease), "%s",
             er_harness_json_str(res, "leaseId"));
    ER_HARNESS_NON_NULL(
        er_harness_wait_result(h, rel2.command_id, ER_HARNESS_WAIT_MS));

    /* The stale lease gets a second LeaseEvent: expired, lease_expired. */
    assert_true(er_harness_wait_key(h, ER_HARNESS_LEASE_EVENTS, lease_id, 2,
                                    ER_HARNESS_WAIT_MS));
    n = er_harness_find_key(h, ER_HARNESS_LEASE_EVENTS, lease_id, recs, 8);
    assert_int_equal(n, 2);
    ER_HARNESS_ASSERT_INT(recs[1]->json, "version", 2);
    ER_HARNESS_ASSERT_STR(recs[1]->json, "status", "expired");
    ER_HARNESS_ASSERT_STR(recs[1]->json, "failureReason", "lease_expired");

    params[0] = lease_id;
    rows = er_harness_pg_query(h->db_url,
                               "SELECT status, failure_reason, "
                               "(released_at IS NOT NULL)::text AS released "
                               "FROM environment_leases WHERE id = $1::uuid",
                               1, params);
    ER_HARNESS_NON_NULL(rows);
    row = json_array_get(rows, 0);
    ER_HARNESS_ASSERT_STR(row, "status", "expired");
    ER_HARNESS_ASSERT_STR(row, "failure_reason", "lease_expired");
    ER_HARNESS_ASSERT_STR(row, "released", "true");
    json_decref(rows);

    /* The activity row and its event say the system did it. */
    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "action",
                                      "environment.lease_released", 2,
                                      ER_HARNESS_WAIT_MS));
    n = er_harness_find(h, ER_HARNESS_ACTIVITY, "entityId", lease_id, recs, 8);
    assert_int_equal(n, 2);
    ER_HARNESS_ASSERT_STR(recs[1]->json, "action",
                          "environment.lease_released");
    ER_HARNESS_ASSERT_STR(recs[1]->json, "actorType", "system");
    ER_HARNESS_ASSERT_STR(recs[1]->json, "actorId", "envrun-reaper");
    ER_HARNESS_ASSERT_STR(recs[1]->json, "runId", stale.run_id);
    details = er_harness_json_parse_field(recs[1]->json, "detailsJson");
    ER_HARNESS_NON_NULL(details);
    ER_HARNESS_ASSERT_STR(details, "status", "expired");
    ER_HARNESS_ASSERT_STR(details, "failureReason", "lease_expired");
    json_decref(details);

    /* The released lease keeps its two events and its status. */
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_LEASE_EVENTS, done_lease, NULL, 0),
        2);
    params[0] = done_lease;
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE id = "
                                         "$1::uuid AND status = 'released'",
                                         1, params),
                     1);
}

/* The acquire of a fresh run of company's Local environment (run may be
 * NULL for a new company); returns the lease id into lease_id. */
static void acquire(struct er_harness *h, struct er_harness_run *run,
                    char lease_id[37])
{
    struct er_harness_cmd c;
    const json_t *res;

    er_harness_cmd_acquire(&c, run);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    snprintf(lease_id, 37, "%s", er_harness_json_str(res, "leaseId"));
}

/* Seconds from now to the lease's expires_at. */
static long long expires_in_s(struct er_harness *h, const char *lease_id)
{
    return er_harness_pg_count(
        h->db_url,
        "SELECT extract(epoch FROM expires_at - now())::bigint FROM "
        "environment_leases WHERE id = $1::uuid",
        1, &lease_id);
}

/* Every step on an active lease sets expires_at to now + the TTL. */
static void expires_at_is_set_and_renewed_by_each_step(void **state)
{
    static const char *const env[] = { "ENVRUN_LEASE_TTL_S=3600", NULL };
    const struct er_harness_worker_opts opts = { .env = env };
    struct er_harness *h;
    struct er_harness_run run;
    struct er_harness_cmd c;
    char lease_id[37];
    long long s;

    h = er_harness_new("reaper_expires", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ER_HARNESS_NON_NULL(er_harness_worker_start(h, &opts));
    er_harness_run_init(&run);
    acquire(h, &run, lease_id);
    s = expires_in_s(h, lease_id);
    assert_true(s > 3500 && s <= 3600);
    /* Nearly run out, then renewed by the realize. */
    assert_int_equal(er_harness_pg_exec(h->db_url,
                                        "UPDATE environment_leases SET "
                                        "expires_at = now() + interval '1 min' "
                                        "WHERE id = $1::uuid",
                                        1, (const char *[]){ lease_id }),
                     0);
    assert_true(expires_in_s(h, lease_id) <= 60);
    er_harness_cmd_realize(&c, &run, h->dir);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    ER_HARNESS_NON_NULL(
        er_harness_wait_result(h, c.command_id, ER_HARNESS_WAIT_MS));
    s = expires_in_s(h, lease_id);
    assert_true(s > 3500 && s <= 3600);
}

/* Two workers' reapers run at once over the same stale leases: each lease
 * is expired once, with one activity row, one claim and version 2. */
static void two_reapers_never_reap_one_lease_twice(void **state)
{
    static const char *const env[] = { "ENVRUN_LEASE_TTL_S=2", NULL };
    const struct er_harness_worker_opts opts = { .env = env };
    struct er_harness *h;
    struct er_harness_run runs[8];
    char lease_ids[8][37];
    int i;

    h = er_harness_new("reaper_two", 2, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ER_HARNESS_NON_NULL(er_harness_worker_start_warm(h, &opts));
    ER_HARNESS_NON_NULL(er_harness_worker_start(h, &opts));
    for (i = 0; i < 8; i++) {
        er_harness_run_init(&runs[i]);
        acquire(h, &runs[i], lease_ids[i]);
    }
    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM environment_leases WHERE "
        "status = 'active'",
        0, NULL, 0, 60000));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    for (i = 0; i < 8; i++) {
        const char *p[] = { lease_ids[i] };

        assert_int_equal(er_harness_pg_count(h->db_url,
                                             "SELECT count(*) FROM "
                                             "activity_log WHERE entity_id = "
                                             "$1 AND action = "
                                             "'environment.lease_released'",
                                             1, p),
                         1);
        assert_int_equal(er_harness_pg_count(h->db_url,
                                             "SELECT version FROM "
                                             "envrun.lease_state WHERE "
                                             "lease_id = $1::uuid",
                                             1, p),
                         2);
        assert_int_equal(er_harness_pg_count(h->db_url,
                                             "SELECT count(*) FROM "
                                             "envrun.operations WHERE "
                                             "lease_id = $1::uuid AND kind = "
                                             "'reap' AND state = 'done' AND "
                                             "attempt = 1",
                                             1, p),
                         1);
    }
    er_harness_check_lease_events(h, 0, 0);
    er_harness_check_activity(h);
}

/* A lease whose cleanup fails (an ssh lease whose cleanup command exits
 * 1) stays active and is tried again after the backoff; the local lease
 * beside it is expired all the same. */
static void failing_cleanup_is_retried_with_backoff(void **state)
{
    /* Long enough for the realize to record the cleanup command before
     * the lease is stale. */
    static const char *const ttl = "ENVRUN_LEASE_TTL_S=5";
    const char *env[8];
    struct er_harness_worker_opts opts = { 0 };
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    struct er_harness_run run;
    struct er_harness_run local;
    struct er_harness_cmd c;
    const json_t *res;
    char env_id[37];
    char remote[ER_HARNESS_PATH_MAX + 16];
    char ssh_lease[37];
    char local_lease[37];
    const char *p[1];

    h = er_harness_new("reaper_backoff", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ssh = er_harness_ssh_new(h);
    ER_HARNESS_NON_NULL(ssh);
    er_harness_ssh_worker_env_with(ssh, ttl, env);
    opts.env = env;
    ER_HARNESS_NON_NULL(er_harness_worker_start_warm(h, &opts));
    er_harness_run_init(&run);
    assert_int_equal(er_harness_ssh_per_lease_env(h, ssh, run.company_id,
                                                  "Stuck", remote,
                                                  sizeof(remote), env_id),
                     0);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    snprintf(ssh_lease, sizeof(ssh_lease), "%s",
             er_harness_json_str(res, "leaseId"));
    er_harness_cmd_realize(&c, &run, h->dir);
    c.cmd.runtime_overlay_json =
        (char *)(uintptr_t) "{\"cleanupCommand\": \"exit 1\"}";
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    er_harness_run_init(&local);
    acquire(h, &local, local_lease);

    p[0] = local_lease;
    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM environment_leases WHERE id "
        "= $1::uuid AND status = 'expired'",
        1, p, 1, 30000));
    p[0] = ssh_lease;
    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM envrun.operations WHERE "
        "lease_id = $1::uuid AND kind = 'reap' AND state "
        "= 'failed'",
        1, p, 1, 30000));
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE id = "
                                         "$1::uuid AND status = 'active'",
                                         1, p),
                     1);
    /* Not again within the first backoff (30 s after attempt 1)... */
    er_harness_poll(h, 5000);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT attempt FROM "
                                         "envrun.operations WHERE lease_id = "
                                         "$1::uuid AND kind = 'reap'",
                                         1, p),
                     1);
    /* ... and again after it. */
    assert_true(
        er_harness_pg_wait_count(h,
                                 "SELECT count(*) FROM envrun.operations WHERE "
                                 "lease_id = $1::uuid AND kind = 'reap' AND "
                                 "attempt >= 2",
                                 1, p, 1, 60000));
    /* The lease never releases: cut its connection so later tests see a
     * quiet server. */
    assert_true(er_harness_stop_workers(h));
    er_harness_ssh_kill_sessions(ssh);
    er_harness_ssh_destroy(ssh);
}

/* With Paperclip's heartbeat_runs table, an active lease of a run that
 * ended and unchanged for 5 minutes is reaped long before its TTL; a
 * lease of a running run is not. */
static void lease_of_a_finished_run_is_reaped(void **state)
{
    static const char *const env[] = { "ENVRUN_LEASE_TTL_S=3600", NULL };
    const struct er_harness_worker_opts opts = { .env = env };
    struct er_harness *h;
    struct er_harness_run ended;
    struct er_harness_run running;
    char ended_lease[37];
    char running_lease[37];
    const char *p[2];

    h = er_harness_new("reaper_stranded", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ER_HARNESS_NON_NULL(er_harness_worker_start(h, &opts));
    er_harness_run_init(&ended);
    er_harness_run_init(&running);
    acquire(h, &ended, ended_lease);
    acquire(h, &running, running_lease);
    p[0] = ended.run_id;
    p[1] = running.run_id;
    assert_int_equal(
        er_harness_pg_exec(h->db_url,
                           "CREATE TABLE heartbeat_runs (id uuid PRIMARY KEY, "
                           "status text NOT NULL)",
                           0, NULL),
        0);
    assert_int_equal(er_harness_pg_exec(h->db_url,
                                        "INSERT INTO heartbeat_runs VALUES "
                                        "($1::uuid, 'succeeded'), ($2::uuid, "
                                        "'running')",
                                        2, p),
                     0);
    /* Both unchanged for 6 minutes, well inside the TTL: only the runs'
     * states differ. The reaper passes every 30 s. */
    assert_int_equal(er_harness_pg_exec(h->db_url,
                                        "UPDATE environment_leases SET "
                                        "last_used_at = now() - interval "
                                        "'6 min', expires_at = now() + "
                                        "interval '1 hour'",
                                        0, NULL),
                     0);
    p[0] = ended_lease;
    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM environment_leases WHERE id "
        "= $1::uuid AND status = 'expired' AND "
        "failure_reason = 'lease_expired'",
        1, p, 1, 60000));
    p[0] = running_lease;
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE id = "
                                         "$1::uuid AND status = 'active'",
                                         1, p),
                     1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(reaper_expires_lease_after_ttl, teardown),
        cmocka_unit_test_teardown(expires_at_is_set_and_renewed_by_each_step,
                                  teardown),
        cmocka_unit_test_teardown(two_reapers_never_reap_one_lease_twice,
                                  teardown),
        cmocka_unit_test_teardown(failing_cleanup_is_retried_with_backoff,
                                  teardown),
        cmocka_unit_test_teardown(lease_of_a_finished_run_is_reaped, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
