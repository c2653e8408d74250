/* concurrency_test: commands of one run are processed in order, one at a
 * time, while other runs go on (contract.md 2 ENVRUN_CONCURRENCY; DESIGN.md
 * dispatcher). A "slow step" is made real, without test hooks in the
 * worker: the test holds a row lock on run A's lease in its own
 * transaction, so A's release blocks inside the worker until it lets go. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "tests/support/harness.h"

static int teardown(void **state)
{
    int rc = er_harness_stop_workers(*state) ? 0 : -1;

    er_harness_destroy(*state);
    *state = NULL;
    return rc;
}

/* Run sql on conn, failing the test unless it succeeds. */
static void must_exec(PGconn *conn, const char *sql, int nparams,
                      const char *const *params)
{
    PGresult *res =
        PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        er_harness_fail(__FILE__, __LINE__, "%s: %s", sql,
                        PQerrorMessage(conn));
    PQclear(res);
}

static void slow_step_of_one_run_does_not_delay_others(void **state)
{
    const struct er_harness_worker_opts opts = { .concurrency = 4 };
    struct er_harness *h;
    struct er_harness_run a;
    struct er_harness_run b;
    struct er_harness_cmd acq_a;
    struct er_harness_cmd rel_a;
    struct er_harness_cmd rel_a2;
    struct er_harness_cmd acq_b;
    struct er_harness_cmd rea_b;
    const json_t *res;
    const char *lease_a;
    const struct er_harness_record *r1 = NULL;
    const struct er_harness_record *r2 = NULL;
    const char *params[1];
    PGconn *conn = NULL;

    h = er_harness_new("concurrency_slow", 2, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ER_HARNESS_NON_NULL(er_harness_worker_start(h, &opts));
    er_harness_run_init(&a);
    er_harness_run_init(&b);

    er_harness_cmd_acquire(&acq_a, &a);
    assert_int_equal(er_harness_send(h, &acq_a.cmd), 0);
    res = er_harness_wait_result(h, acq_a.command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    lease_a = er_harness_json_str(res, "leaseId");
    ER_HARNESS_NON_NULL(lease_a);

    /* Hold A's lease row: A's release will wait on this lock. */
    conn = PQconnectdb(h->db_url);
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    must_exec(conn, "BEGIN", 0, NULL);
    params[0] = lease_a;
    must_exec(conn,
              "SELECT id FROM environment_leases WHERE id = $1::uuid "
              "FOR UPDATE",
              1, params);

    er_harness_cmd_release(&rel_a, &a, ER_RELEASE_RELEASED);
    er_harness_cmd_release(&rel_a2, &a, ER_RELEASE_RELEASED);
    assert_int_equal(er_harness_send(h, &rel_a.cmd), 0);
    assert_int_equal(er_harness_send(h, &rel_a2.cmd), 0);
    er_harness_cmd_acquire(&acq_b, &b);
    er_harness_cmd_realize(&rea_b, &b, h->dir);
    assert_int_equal(er_harness_send(h, &acq_b.cmd), 0);
    assert_int_equal(er_harness_send(h, &rea_b.cmd), 0);

    /* B runs to the end while A is stuck. */
    res = er_harness_wait_result(h, rea_b.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    ER_HARNESS_ASSERT_STR(er_harness_wait_result(h, acq_b.command_id, 0),
                          "outcome", "ok");
    er_harness_poll(h, 1000);
    assert_null(er_harness_wait_result(h, rel_a.command_id, 0));
    assert_null(er_harness_wait_result(h, rel_a2.command_id, 0));

    /* Let go: A's two releases finish, in order. */
    must_exec(conn, "COMMIT", 0, NULL);
    PQfinish(conn);
    res = er_harness_wait_result(h, rel_a2.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_int_equal(er_harness_find(h, ER_HARNESS_RESULTS, "commandId",
                                     rel_a.command_id, &r1, 1),
                     1);
    assert_int_equal(er_harness_find(h, ER_HARNESS_RESULTS, "commandId",
                                     rel_a2.command_id, &r2, 1),
                     1);
    ER_HARNESS_NON_NULL(r1);
    ER_HARNESS_NON_NULL(r2);
    /* Same key, same partition: the first release's result comes first and
     * released the lease; the second found nothing left to release. */
    assert_int_equal(r1->partition, r2->partition);
    assert_true(r1->offset < r2->offset);
    {
        json_t *body1 = er_harness_json_parse_field(r1->json, "resultJson");
        json_t *body2 = er_harness_json_parse_field(r2->json, "resultJson");
        char expect[64];

        ER_HARNESS_NON_NULL(body1);
        ER_HARNESS_NON_NULL(body2);
        snprintf(expect, sizeof(expect), "[\"%s\"]", lease_a);
        ER_HARNESS_ASSERT_JSON(body1, "released", expect);
        ER_HARNESS_ASSERT_JSON(body2, "released", "[]");
        json_decref(body1);
        json_decref(body2);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(slow_step_of_one_run_does_not_delay_others,
                                  teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
