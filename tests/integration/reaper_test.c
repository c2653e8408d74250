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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(reaper_expires_lease_after_ttl, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
