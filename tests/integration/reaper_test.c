/* reaper_test: an active lease left untouched for ENVRUN_LEASE_TTL_S is
 * expired by the reaper (#11951, #11970), with its LeaseEvent and an
 * environment.lease_released activity row attributed to the system; a
 * lease that was released in time is left alone. An ssh acquisition whose
 * lease was never recorded and that nobody else will finish (its undo cut
 * off by a crash, or its command lost) is released by the reaper: its
 * per-lease directory is removed and its journal entry rolled_back, with
 * no event; one still in use is left alone. The acquisition cases need a
 * worker built with ER_FAULTS (make test does). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "drivers/driver.h"
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

/* An acquire as a producer still on the previous RunCommand (before
 * requestedExpiresAt) writes it: the current encoding of one without the
 * field, minus the field's null byte, under that version's fingerprint. */
static void send_acquire_of_previous_schema(struct er_harness *h,
                                            struct er_harness_cmd *c,
                                            struct er_harness_run *run)
{
    uint64_t fp = er_codec_version_fingerprint("RunCommand_1");
    struct er_buf buf;
    struct er_err err;
    size_t i;

    assert_true(fp != 0);
    er_buf_init(&buf, ER_CMD_VALUE_MAX_BYTES);
    assert_true(c->cmd.requested_expires_at_ms == 0);
    assert_int_equal(er_codec_command_encode(&c->cmd, &buf, &err), 0);
    assert_int_equal(buf.data[buf.len - 1], 0); /* requestedExpiresAt null */
    for (i = 0; i < 8; i++)
        buf.data[2 + i] = (uint8_t)(fp >> (8 * i));
    assert_int_equal(
        er_harness_produce(h, "commands", run->run_id, buf.data, buf.len - 1),
        0);
    er_buf_fini(&buf);
}

/* requestedExpiresAt bounds a lease's life: expires_at is set to it, no
 * later step pushes it past it, and the reaper releases the lease then,
 * long before its regular pass (every 30 s at this TTL). An acquire from a
 * producer on the previous schema is read and gets the TTL as before. */
static void requested_expiry_bounds_the_lease(void **state)
{
    static const char *const env[] = { "ENVRUN_LEASE_TTL_S=3600", NULL };
    const struct er_harness_worker_opts opts = { .env = env };
    struct er_harness *h;
    struct er_harness_run run;
    struct er_harness_run old;
    struct er_harness_cmd c;
    const json_t *res;
    char lease_id[37];
    const char *params[1];
    long long s;

    h = er_harness_new("reaper_requested", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ER_HARNESS_NON_NULL(er_harness_worker_start(h, &opts));

    er_harness_run_init(&old);
    er_harness_cmd_acquire(&c, &old);
    send_acquire_of_previous_schema(h, &c, &old);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    snprintf(lease_id, sizeof(lease_id), "%s",
             er_harness_json_str(res, "leaseId"));
    s = expires_in_s(h, lease_id);
    assert_true(s > 3500 && s <= 3600);

    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.requested_expires_at_ms = er_time_now_ms() + 8000;
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    snprintf(lease_id, sizeof(lease_id), "%s",
             er_harness_json_str(res, "leaseId"));
    s = expires_in_s(h, lease_id);
    assert_true(s >= 1 && s <= 8);
    /* A realize refreshes the lease's expiry, but not past the bound. */
    er_harness_cmd_realize(&c, &run, h->dir);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_true(expires_in_s(h, lease_id) <= 8);
    /* Released by the reaper at the bound: within 20 s, where the regular
     * pass would come only 30 s after the worker started. */
    params[0] = lease_id;
    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM environment_leases WHERE id = $1::uuid AND "
        "status = 'expired' AND failure_reason = 'lease_expired' AND "
        "released_at >= expires_at",
        1, params, 1, 20000));
    /* The unbounded lease is left alone. */
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE status = "
                                         "'active'",
                                         0, NULL),
                     1);
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

/* ================================================================
 * Acquisitions whose lease was never recorded
 * ================================================================ */

/* The fault points these cases kill the worker at exist only in an
 * ER_FAULTS build: without them the case fails rather than skips, so a
 * green run never claims what was not checked. */
static void need_faults(void)
{
#ifndef ER_FAULTS
    er_harness_fail(__FILE__, __LINE__,
                    "the build has no fault points; configure with "
                    "-DER_FAULTS=ON (make test does)");
#endif
}

/* ssh->worker_env, then the extras (NULL-terminated), into out. */
static void ssh_worker_env(const struct er_harness_ssh *ssh,
                           const char *const *extra, const char *out[12])
{
    size_t n = 0;
    size_t i;

    for (i = 0; ssh->worker_env[i] != NULL && n < 6; i++)
        out[n++] = ssh->worker_env[i];
    for (i = 0; extra != NULL && extra[i] != NULL && n < 11; i++)
        out[n++] = extra[i];
    out[n] = NULL;
}

/* Start a worker and wait until it has migrated and started. */
static struct er_harness_worker *
start_worker(struct er_harness *h, const struct er_harness_worker_opts *opts)
{
    struct er_harness_worker *w = er_harness_worker_start(h, opts);

    ER_HARNESS_NON_NULL(w);
    if (!er_harness_worker_wait_log(w, "\"started: ", ER_HARNESS_WAIT_MS)) {
        er_harness_worker_dump_log(w, 4000);
        er_harness_fail(__FILE__, __LINE__, "the worker did not start");
    }
    return w;
}

/* Wait for the worker to kill itself at the fault point. */
static void wait_fault(struct er_harness_worker *w, const char *point)
{
    char needle[128];
    int st = er_harness_worker_wait_exit(w, 60000);

    if (st != 128 + SIGKILL) {
        er_harness_worker_dump_log(w, 4000);
        er_harness_fail(__FILE__, __LINE__,
                        "the worker did not die at %s (status %d)", point, st);
    }
    snprintf(needle, sizeof(needle), "fault point %s reached", point);
    assert_true(er_harness_worker_log_contains(w, needle));
}

/* The lease id of command_id's acquire journal entry into lease_id. */
static void acquire_op_lease(struct er_harness *h, const char *command_id,
                             char lease_id[37])
{
    json_t *rows = er_harness_pg_query(h->db_url,
                                       "SELECT lease_id::text AS lease_id "
                                       "FROM envrun.operations WHERE "
                                       "command_id = $1 AND kind = 'acquire'",
                                       1, &command_id);

    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), 1);
    snprintf(lease_id, 37, "%s",
             er_harness_json_str(json_array_get(rows, 0), "lease_id"));
    json_decref(rows);
}

/* How many acquire entries of command_id are in state. */
static long long acquire_ops_in(struct er_harness *h, const char *command_id,
                                const char *state)
{
    const char *p[] = { command_id, state };

    return er_harness_pg_count(h->db_url,
                               "SELECT count(*) FROM envrun.operations WHERE "
                               "command_id = $1 AND kind = 'acquire' AND "
                               "state = $2",
                               2, p);
}

/* What no recorded lease may leave: a lease row, a LeaseEvent, an
 * activity row or event of lease_id. */
static void assert_nothing_recorded(struct er_harness *h, const char *lease_id)
{
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE id = "
                                         "$1::uuid",
                                         1, &lease_id),
                     0);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM activity_log "
                                         "WHERE entity_id = $1",
                                         1, &lease_id),
                     0);
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_LEASE_EVENTS, lease_id, NULL, 0), 0);
    assert_int_equal(
        er_harness_find(h, ER_HARNESS_ACTIVITY, "entityId", lease_id, NULL, 0),
        0);
}

/* An `ssh` wrapper first on the worker's PATH: while the file gate exists
 * it holds the acquire's remote mkdir (after touching entered), so the
 * test can act while the driver works. Everything else goes straight to
 * /usr/bin/ssh. Returns the PATH line for the worker's environment. */
static void ssh_gate_install(struct er_harness *h, char *gate, char *entered,
                             size_t path_len, char *path_line, size_t line_len)
{
    char bin[ER_HARNESS_PATH_MAX + 16];
    char wrapper[ER_HARNESS_PATH_MAX + 32];
    FILE *f;

    snprintf(bin, sizeof(bin), "%s/bin", h->dir);
    snprintf(wrapper, sizeof(wrapper), "%s/ssh", bin);
    snprintf(gate, path_len, "%s/ssh-gate", h->dir);
    snprintf(entered, path_len, "%s/ssh-gate-entered", h->dir);
    assert_true(mkdir(bin, 0755) == 0 || access(bin, F_OK) == 0);
    /* What an earlier run of the case left in the kept directory. */
    assert_true(unlink(gate) == 0 || access(gate, F_OK) != 0);
    assert_true(unlink(entered) == 0 || access(entered, F_OK) != 0);
    f = fopen(wrapper, "w");
    ER_HARNESS_NON_NULL(f);
    fprintf(f,
            "#!/bin/sh\n"
            "case \"$*\" in\n"
            "*'mkdir -p '*)\n"
            "    if [ -e '%s' ]; then\n"
            "        : > '%s'\n"
            "        while [ -e '%s' ]; do /bin/sleep 0.1; done\n"
            "    fi\n"
            "    ;;\n"
            "esac\n"
            "exec /usr/bin/ssh \"$@\"\n",
            gate, entered, gate);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(wrapper, 0755), 0);
    snprintf(path_line, line_len, "PATH=%s:/usr/local/bin:/usr/bin:/bin", bin);
}

/* Wait up to timeout_ms for path to exist. */
static bool wait_file(const char *path, int timeout_ms)
{
    const struct timespec tick = { 0, 100 * 1000 * 1000 };
    int waited = 0;

    while (access(path, F_OK) != 0) {
        if (waited >= timeout_ms)
            return false;
        nanosleep(&tick, NULL);
        waited += 100;
    }
    return true;
}

/* (a) An ssh per_lease acquire loses its workspace to the control plane
 * while the driver works, so its outcome commits deferred with the entry
 * rolling_back, and the worker dies before the undo runs. The command is
 * processed (a redelivery only replays its result), so nothing but the
 * reaper releases the directory. */
/* One ssh case: the harness, the ssh host, the options the workers start
 * with, and a run with a per_lease ssh environment. */
struct ssh_case {
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    struct er_harness_worker_opts opts;
    const char *env[12];
    const char *env_name;
    struct er_harness_run run;
    char remote[ER_HARNESS_PATH_MAX + 16]; /* remoteWorkspacePath */
    char env_id[37];                       /* "" until the first worker */
};

/* Start case name (the harness goes to *state) with its ssh host; the
 * run's per_lease environment env_name is made once the first worker has
 * made the tables. */
static void ssh_case_new(void **state, const char *name, const char *env_name,
                         struct ssh_case *c)
{
    memset(c, 0, sizeof(*c));
    need_faults();
    c->h = er_harness_new(name, 1, NULL);
    ER_HARNESS_NON_NULL(c->h);
    *state = c->h;
    c->ssh = er_harness_ssh_new(c->h);
    ER_HARNESS_NON_NULL(c->ssh);
    c->opts.concurrency = 2;
    c->env_name = env_name;
    er_harness_run_init(&c->run);
}

/* Start a worker of the case with the ssh host's environment and extra
 * (NULL-terminated, may be NULL). */
static struct er_harness_worker *ssh_case_worker(struct ssh_case *c,
                                                 const char *const *extra)
{
    struct er_harness_worker *w;

    ssh_worker_env(c->ssh, extra, c->env);
    c->opts.env = c->env;
    w = start_worker(c->h, &c->opts);
    if (c->env_id[0] == '\0')
        assert_int_equal(er_harness_ssh_per_lease_env(
                             c->h, c->ssh, c->run.company_id, c->env_name,
                             c->remote, sizeof(c->remote), c->env_id),
                         0);
    return w;
}

static void acquisition_whose_undo_was_cut_off_is_released(void **state)
{
    static const char *const fault = "ENVRUN_TEST_FAULT=undo.before";
    static const char *const ttl = "ENVRUN_LEASE_TTL_S=2";
    struct ssh_case c;
    struct er_harness_worker *w;
    struct er_harness_cmd acq;
    const char *extra[4];
    const char *p[4];
    char gate[ER_HARNESS_PATH_MAX + 32];
    char entered[ER_HARNESS_PATH_MAX + 32];
    char path_line[ER_HARNESS_PATH_MAX + 64];
    char ws_id[37];
    char other_lease[37];
    char lease_id[37];
    FILE *f;

    ssh_case_new(state, "reaper_undo", "Undo", &c);
    ssh_gate_install(c.h, gate, entered, sizeof(gate), path_line,
                     sizeof(path_line));
    extra[0] = path_line;
    extra[1] = fault;
    extra[2] = NULL;
    w = ssh_case_worker(&c, extra);
    f = fopen(gate, "w");
    ER_HARNESS_NON_NULL(f);
    fclose(f);
    er_uuid_v4(ws_id);
    er_harness_cmd_acquire(&acq, &c.run);
    acq.cmd.selected_environment_id = c.env_id;
    acq.cmd.execution_workspace_id = ws_id;
    assert_int_equal(er_harness_send(c.h, &acq.cmd), 0);
    assert_int_equal(er_harness_flush(c.h), 0);

    /* The driver is at its remote mkdir: the control plane (which does
     * not take envrun's workspace lock) leases the workspace for another
     * live run, then the driver goes on. */
    assert_true(wait_file(entered, ER_HARNESS_FIRST_WAIT_MS));
    assert_int_equal(acquire_ops_in(c.h, acq.command_id, "started"), 1);
    er_harness_pg_control_plane_lease(c.h, c.run.company_id, c.env_id, ws_id,
                                      other_lease);
    p[0] = other_lease;
    assert_int_equal(unlink(gate), 0);
    wait_fault(w, "undo.before");

    /* What the crash left: the entry rolling_back with what the driver
     * made, its directory, and no lease. */
    acquire_op_lease(c.h, acq.command_id, lease_id);
    assert_int_equal(acquire_ops_in(c.h, acq.command_id, "rolling_back"), 1);
    assert_true(
        er_harness_ssh_remote_ok(c.ssh, "test -d '%s/%s'", c.remote, lease_id));
    /* The control plane's lease ended meanwhile (not the reaper's concern
     * here). The reaper leaves a rolling_back entry to the worker that
     * wrote it for a minute; rather than wait that minute, the entry is
     * dated back past it (unrecorded_acquisitions_in_use_are_left_alone
     * checks that a fresh one is left alone). */
    p[1] = acq.command_id;
    assert_int_equal(er_harness_pg_exec(c.h->db_url,
                                        "UPDATE environment_leases SET status "
                                        "= 'released', released_at = now() "
                                        "WHERE id = $1::uuid",
                                        1, p),
                     0);
    assert_int_equal(er_harness_pg_exec(c.h->db_url,
                                        "UPDATE envrun.operations SET "
                                        "updated_at = now() - interval "
                                        "'2 min' WHERE command_id = $1 AND "
                                        "kind = 'acquire'",
                                        1, &p[1]),
                     0);

    /* The same worker again, without the fault: the command is answered
     * again from its stored result, and the reaper releases the rest. */
    extra[0] = path_line;
    extra[1] = ttl;
    extra[2] = NULL;
    w = ssh_case_worker(&c, extra);
    p[0] = acq.command_id;
    assert_true(er_harness_pg_wait_count(
        c.h,
        "SELECT count(*) FROM envrun.operations WHERE command_id = $1 AND "
        "kind = 'acquire' AND state = 'rolled_back'",
        1, p, 1, 30000));
    assert_true(er_harness_worker_wait_log(
        w, "an unrecorded acquisition was released", ER_HARNESS_WAIT_MS));
    assert_true(er_harness_ssh_remote_ok(c.ssh, "test ! -e '%s/%s'", c.remote,
                                         lease_id));
    p[0] = lease_id;
    assert_int_equal(er_harness_pg_count(c.h->db_url,
                                         "SELECT count(*) FROM "
                                         "envrun.operations WHERE lease_id = "
                                         "$1::uuid AND kind = 'reap' AND "
                                         "state = 'done'",
                                         1, p),
                     1);
    assert_nothing_recorded(c.h, lease_id);
    assert_false(er_harness_ssh_control_dir_exists(lease_id));
    er_harness_ssh_destroy(c.ssh);
}

/* (b) An ssh per_lease acquire dies right after its driver made the
 * directory, and its command never comes back: the partition's next owner
 * joins a new consumer group that starts at the end of the topic (as after
 * an offset reset or the message's expiry). Past the TTL the reaper
 * releases what the acquire made, from the environment's config. */
static void acquisition_whose_command_was_lost_is_released(void **state)
{
    static const char *const fault = "ENVRUN_TEST_FAULT=driver.after";
    static const char *const second[] = {
        "ENVRUN_LEASE_TTL_S=2", "ENVRUN_KAFKA_GROUP=envrun-reaper-lost",
        "ENVRUN_KAFKA_PROPS=session.timeout.ms=6000,heartbeat.interval.ms=500,"
        "auto.offset.reset=latest",
        NULL
    };
    struct ssh_case c;
    struct er_harness_worker *w;
    struct er_harness_cmd acq;
    const char *extra[2];
    const char *p[1];
    char lease_id[37];
    json_t *rows;
    json_t *detail;

    ssh_case_new(state, "reaper_lost", "Lost", &c);
    extra[0] = fault;
    extra[1] = NULL;
    w = ssh_case_worker(&c, extra);
    er_harness_cmd_acquire(&acq, &c.run);
    acq.cmd.selected_environment_id = c.env_id;
    assert_int_equal(er_harness_send(c.h, &acq.cmd), 0);
    assert_int_equal(er_harness_flush(c.h), 0);
    wait_fault(w, "driver.after");
    acquire_op_lease(c.h, acq.command_id, lease_id);
    assert_int_equal(acquire_ops_in(c.h, acq.command_id, "started"), 1);
    assert_true(
        er_harness_ssh_remote_ok(c.ssh, "test -d '%s/%s'", c.remote, lease_id));

    w = ssh_case_worker(&c, second);
    p[0] = acq.command_id;
    assert_true(er_harness_pg_wait_count(
        c.h,
        "SELECT count(*) FROM envrun.operations WHERE command_id = $1 AND "
        "kind = 'acquire' AND state = 'rolled_back'",
        1, p, 1, 45000));
    assert_true(er_harness_worker_wait_log(
        w, "an unrecorded acquisition was released", ER_HARNESS_WAIT_MS));
    assert_true(er_harness_ssh_remote_ok(c.ssh, "test ! -e '%s/%s'", c.remote,
                                         lease_id));
    /* Never resumed (attempt 1); released from what the config says. */
    rows = er_harness_pg_query(c.h->db_url,
                               "SELECT attempt::text AS attempt, "
                               "detail::text AS detail FROM "
                               "envrun.operations WHERE command_id = $1 AND "
                               "kind = 'acquire'",
                               1, p);
    ER_HARNESS_NON_NULL(rows);
    ER_HARNESS_ASSERT_STR(json_array_get(rows, 0), "attempt", "1");
    detail = er_harness_json_parse_field(json_array_get(rows, 0), "detail");
    ER_HARNESS_NON_NULL(detail);
    ER_HARNESS_ASSERT_STR(detail, "driver", "ssh");
    ER_HARNESS_ASSERT_STR(detail, "metadata.workspaceIsolation", "per_lease");
    json_decref(detail);
    json_decref(rows);
    assert_nothing_recorded(c.h, lease_id);
    /* The command really never came back. */
    assert_null(er_harness_wait_result(c.h, acq.command_id, 0));
    er_harness_ssh_destroy(c.ssh);
}

/* One hand-made acquire journal entry for the negative case. */
struct entry {
    const char *name;
    const char *state;
    const char *age;   /* how long ago it was updated */
    bool is_owners;    /* started under the partition's current generation */
    bool has_lease;    /* a (released) lease row has its id */
    bool is_reaped;    /* what the reaper must do with it */
    char lease_id[37]; /* filled in */
    char command_id[37];
};

/* Acquire entries that the reaper must leave alone (one whose lease was
 * recorded, one within the TTL, a fresh rolling_back one its worker is
 * still undoing, one still started under its partition's owner), beside
 * one it must release, so the case knows a pass ran. Each has a per-lease
 * directory on the host. */
static void unrecorded_acquisitions_in_use_are_left_alone(void **state)
{
    static const char *const ttl = "ENVRUN_LEASE_TTL_S=30";
    struct entry entries[] = {
        { "lost", "interrupted", "1 hour", false, false, true, "", "" },
        { "recorded", "interrupted", "1 hour", false, true, false, "", "" },
        { "within ttl", "interrupted", "0 s", false, false, false, "", "" },
        { "undoing", "rolling_back", "0 s", false, false, false, "", "" },
        { "owner's", "started", "1 hour", true, false, false, "", "" },
    };
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    struct er_harness_worker_opts opts = { 0 };
    struct er_harness_run run;
    const char *env[8];
    char remote[ER_HARNESS_PATH_MAX + 16];
    char topic[256];
    char gen[24];
    char env_id[37];
    char detail[256];
    size_t i;

    h = er_harness_new("reaper_alone", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ssh = er_harness_ssh_new(h);
    ER_HARNESS_NON_NULL(ssh);
    er_harness_ssh_worker_env_with(ssh, ttl, env);
    opts.env = env;
    ER_HARNESS_NON_NULL(er_harness_worker_start_warm(h, &opts));
    er_harness_run_init(&run);
    assert_int_equal(er_harness_ssh_per_lease_env(h, ssh, run.company_id,
                                                  "Alone", remote,
                                                  sizeof(remote), env_id),
                     0);
    er_harness_topic_name(h, "commands", topic, sizeof(topic));
    {
        const char *p[] = { topic };

        snprintf(gen, sizeof(gen), "%lld",
                 er_harness_pg_count(h->db_url,
                                     "SELECT generation FROM "
                                     "envrun.partition_fence WHERE topic = $1 "
                                     "AND partition_id = 0",
                                     1, p));
    }
    assert_true(gen[0] != '-');
    snprintf(detail, sizeof(detail),
             "{\"driver\": \"ssh\", \"metadata\": {\"driver\": \"ssh\", "
             "\"workspaceIsolation\": \"per_lease\"}}");
    for (i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
        struct entry *e = &entries[i];
        const char *p[9];

        er_uuid_v4(e->lease_id);
        er_uuid_v4(e->command_id);
        /* As envrun's acquire makes it: marked with the lease. */
        assert_true(er_harness_ssh_remote_ok(
            ssh,
            "mkdir -p '%s/%s' && echo 'lease:%s' > '%s/%s/" ER_SSH_DIR_MARKER
            "'",
            remote, e->lease_id, e->lease_id, remote, e->lease_id));
        p[0] = e->command_id;
        p[1] = run.company_id;
        p[2] = e->lease_id;
        p[3] = env_id;
        p[4] = e->state;
        p[5] = e->is_owners ? topic : NULL;
        p[6] = e->is_owners ? gen : NULL;
        p[7] = strcmp(e->state, "rolling_back") == 0 ? detail : NULL;
        p[8] = e->age;
        assert_int_equal(
            er_harness_pg_exec(h->db_url,
                               "INSERT INTO envrun.operations (command_id, "
                               "company_id, lease_id, environment_id, kind, "
                               "state, topic, partition_id, generation, "
                               "detail, updated_at) VALUES ($1, $2::uuid, "
                               "$3::uuid, $4::uuid, 'acquire', $5, $6::text, "
                               "CASE WHEN $6::text IS NULL THEN NULL ELSE 0 "
                               "END, "
                               "$7::bigint, $8::jsonb, now() - $9::interval)",
                               9, p),
            0);
        if (e->has_lease)
            assert_int_equal(
                er_harness_pg_exec(
                    h->db_url,
                    "INSERT INTO environment_leases (id, "
                    "company_id, environment_id, status, "
                    "lease_policy, provider, released_at) "
                    "VALUES ($1::uuid, $2::uuid, $3::uuid, "
                    "'released', 'ephemeral', 'ssh', now())",
                    3, (const char *[]){ e->lease_id, run.company_id, env_id }),
                0);
    }

    /* The reaper passes every 7.5 s: the lost entry goes in the first
     * pass, then one more pass is watched. */
    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM envrun.operations WHERE command_id = $1 AND "
        "state = 'rolled_back'",
        1, (const char *[]){ entries[0].command_id }, 1, 30000));
    er_harness_poll(h, 8000);
    for (i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
        const struct entry *e = &entries[i];
        const char *p[] = { e->command_id, e->state };

        print_message("entry %s\n", e->name);
        assert_int_equal(er_harness_pg_count(h->db_url,
                                             "SELECT count(*) FROM "
                                             "envrun.operations WHERE "
                                             "command_id = $1 AND attempt = 1 "
                                             "AND state = $2",
                                             2, p),
                         e->is_reaped ? 0 : 1);
        assert_int_equal(er_harness_pg_count(h->db_url,
                                             "SELECT count(*) FROM "
                                             "envrun.operations WHERE "
                                             "lease_id = $1::uuid AND kind = "
                                             "'reap'",
                                             1,
                                             (const char *[]){ e->lease_id }),
                         e->is_reaped ? 1 : 0);
        assert_true(er_harness_ssh_remote_ok(
            ssh, e->is_reaped ? "test ! -e '%s/%s'" : "test -d '%s/%s'", remote,
            e->lease_id));
    }
    er_harness_ssh_destroy(ssh);
}

/* An ssh per_lease acquire for an execution workspace dies right after
 * its driver made the directory; before its command comes back, the
 * control plane leases the workspace for another run. The resumed acquire
 * is deferred at its first workspace check, before its driver runs again:
 * the earlier attempt's acquisition is released right after the deferred
 * result commits (no reaper involved: the TTL is the default 6 hours). */
static void acquisition_resumed_into_a_conflict_is_released(void **state)
{
    static const char *const fault = "ENVRUN_TEST_FAULT=driver.after";
    struct ssh_case c;
    struct er_harness_worker *w;
    struct er_harness_cmd acq;
    const char *extra[2];
    const char *p[1];
    char ws_id[37];
    char other_lease[37];
    char lease_id[37];
    const json_t *res;

    ssh_case_new(state, "reaper_resumed", "Resumed", &c);
    extra[0] = fault;
    extra[1] = NULL;
    w = ssh_case_worker(&c, extra);
    er_uuid_v4(ws_id);
    er_harness_cmd_acquire(&acq, &c.run);
    acq.cmd.selected_environment_id = c.env_id;
    acq.cmd.execution_workspace_id = ws_id;
    assert_int_equal(er_harness_send(c.h, &acq.cmd), 0);
    assert_int_equal(er_harness_flush(c.h), 0);
    wait_fault(w, "driver.after");
    acquire_op_lease(c.h, acq.command_id, lease_id);
    assert_true(
        er_harness_ssh_remote_ok(c.ssh, "test -d '%s/%s'", c.remote, lease_id));
    er_harness_pg_control_plane_lease(c.h, c.run.company_id, c.env_id, ws_id,
                                      other_lease);

    w = ssh_case_worker(&c, NULL);
    res = er_harness_wait_result(c.h, acq.command_id, ER_HARNESS_FIRST_WAIT_MS);
    if (res == NULL)
        er_harness_worker_dump_log(w, 4000);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "deferred");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_conflict");
    p[0] = acq.command_id;
    assert_true(er_harness_pg_wait_count(
        c.h,
        "SELECT count(*) FROM envrun.operations WHERE command_id = $1 AND "
        "kind = 'acquire' AND state = 'rolled_back'",
        1, p, 1, ER_HARNESS_WAIT_MS));
    assert_true(er_harness_worker_log_contains(
        w, "an earlier attempt's acquisition is released"));
    assert_true(er_harness_ssh_remote_ok(c.ssh, "test ! -e '%s/%s'", c.remote,
                                         lease_id));
    assert_false(er_harness_ssh_control_dir_exists(lease_id));
    assert_nothing_recorded(c.h, lease_id);
    er_harness_ssh_destroy(c.ssh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(reaper_expires_lease_after_ttl, teardown),
        cmocka_unit_test_teardown(expires_at_is_set_and_renewed_by_each_step,
                                  teardown),
        cmocka_unit_test_teardown(requested_expiry_bounds_the_lease, teardown),
        cmocka_unit_test_teardown(two_reapers_never_reap_one_lease_twice,
                                  teardown),
        cmocka_unit_test_teardown(failing_cleanup_is_retried_with_backoff,
                                  teardown),
        cmocka_unit_test_teardown(lease_of_a_finished_run_is_reaped, teardown),
        cmocka_unit_test_teardown(
            acquisition_whose_undo_was_cut_off_is_released, teardown),
        cmocka_unit_test_teardown(
            acquisition_whose_command_was_lost_is_released, teardown),
        cmocka_unit_test_teardown(unrecorded_acquisitions_in_use_are_left_alone,
                                  teardown),
        cmocka_unit_test_teardown(
            acquisition_resumed_into_a_conflict_is_released, teardown),
    };

    /* ENVRUN_TEST_ONLY=<case name> runs one case (debugging). */
    if (getenv("ENVRUN_TEST_ONLY") != NULL)
        cmocka_set_test_filter(getenv("ENVRUN_TEST_ONLY"));

    return cmocka_run_group_tests(tests, NULL, NULL);
}
