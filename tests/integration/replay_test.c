/* replay_test: a command id delivered again gets the stored result again
 * and causes no second side effect (contract.md 3, "Delivery"): no new
 * rows, no new lease or activity events, byte-identical results. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

#define BATCH_RUNS   5
#define CMDS_PER_RUN 4
#define BATCH_CMDS   (BATCH_RUNS * CMDS_PER_RUN)

static int teardown(void **state)
{
    int rc = er_harness_stop_workers(*state) ? 0 : -1;

    er_harness_destroy(*state);
    *state = NULL;
    return rc;
}

/* Everything a replay must leave unchanged. */
struct snapshot {
    long long environments;
    long long leases;
    long long active_leases;
    long long activity_rows;
    size_t lease_events;
    size_t activity_events;
};

static void take_snapshot(struct er_harness *h, struct snapshot *s)
{
    s->environments = er_harness_pg_count(
        h->db_url, "SELECT count(*) FROM environments", 0, NULL);
    s->leases = er_harness_pg_count(
        h->db_url, "SELECT count(*) FROM environment_leases", 0, NULL);
    s->active_leases = er_harness_pg_count(
        h->db_url,
        "SELECT count(*) FROM environment_leases WHERE status = 'active'", 0,
        NULL);
    s->activity_rows = er_harness_pg_count(
        h->db_url, "SELECT count(*) FROM activity_log", 0, NULL);
    s->lease_events = er_harness_count(h, ER_HARNESS_LEASE_EVENTS);
    s->activity_events = er_harness_count(h, ER_HARNESS_ACTIVITY);
}

static void assert_same_snapshot(const struct snapshot *a,
                                 const struct snapshot *b)
{
    assert_int_equal(a->environments, b->environments);
    assert_int_equal(a->leases, b->leases);
    assert_int_equal(a->active_leases, b->active_leases);
    assert_int_equal(a->activity_rows, b->activity_rows);
    assert_int_equal(a->lease_events, b->lease_events);
    assert_int_equal(a->activity_events, b->activity_events);
}

/* Every result of command_id (expected exactly n) is byte-identical. */
static void assert_identical_results(struct er_harness *h,
                                     const char *command_id, size_t n)
{
    const struct er_harness_record *recs[8];
    size_t cnt;
    size_t i;

    cnt = er_harness_find(h, ER_HARNESS_RESULTS, "commandId", command_id, recs,
                          8);
    assert_int_equal(cnt, n);
    for (i = 1; i < cnt; i++) {
        assert_int_equal(recs[i]->value_len, recs[0]->value_len);
        assert_memory_equal(recs[i]->value, recs[0]->value, recs[0]->value_len);
        assert_string_equal(recs[i]->key, recs[0]->key);
    }
}

static void replay_same_command_twice_changes_nothing(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_cmd acq;
    struct er_harness_cmd rea;
    struct er_harness_cmd rel;
    struct er_harness_cmd *cmds[3] = { &acq, &rea, &rel };
    struct snapshot before;
    struct snapshot after;
    const json_t *res;
    int i;

    h = er_harness_new("replay_one", 2, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    w = er_harness_worker_start(h, NULL);
    ER_HARNESS_NON_NULL(w);
    er_harness_run_init(&run);

    /* An acquire delivered twice before anything else. */
    er_harness_cmd_acquire(&acq, &run);
    assert_int_equal(er_harness_send(h, &acq.cmd), 0);
    res = er_harness_wait_result(h, acq.command_id, ER_HARNESS_FIRST_WAIT_MS);
    if (res == NULL)
        er_harness_worker_dump_log(w, 4000);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "entityId",
                                      er_harness_json_str(res, "leaseId"), 1,
                                      ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    take_snapshot(h, &before);
    assert_int_equal(before.leases, 1);
    assert_int_equal(before.lease_events, 1);
    assert_int_equal(before.activity_events, 1);

    assert_int_equal(er_harness_send(h, &acq.cmd), 0);
    assert_true(er_harness_wait_count(h, ER_HARNESS_RESULTS, "commandId",
                                      acq.command_id, 2, ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    assert_identical_results(h, acq.command_id, 2);
    take_snapshot(h, &after);
    assert_same_snapshot(&before, &after);

    /* realize and release, then all three again. */
    er_harness_cmd_realize(&rea, &run, h->dir);
    er_harness_cmd_release(&rel, &run, ER_RELEASE_RELEASED);
    assert_int_equal(er_harness_send(h, &rea.cmd), 0);
    assert_int_equal(er_harness_send(h, &rel.cmd), 0);
    res = er_harness_wait_result(h, rel.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    ER_HARNESS_ASSERT_STR(er_harness_wait_result(h, rea.command_id, 0),
                          "outcome", "ok");
    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "action",
                                      "environment.lease_released", 1,
                                      ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    take_snapshot(h, &before);
    assert_int_equal(before.active_leases, 0);
    assert_int_equal(before.lease_events, 3);

    for (i = 0; i < 3; i++)
        assert_int_equal(er_harness_send(h, &cmds[i]->cmd), 0);
    for (i = 0; i < 3; i++) {
        size_t want = i == 0 ? 3 : 2;

        assert_true(er_harness_wait_count(h, ER_HARNESS_RESULTS, "commandId",
                                          cmds[i]->command_id, want,
                                          ER_HARNESS_WAIT_MS));
    }
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    assert_identical_results(h, acq.command_id, 3);
    assert_identical_results(h, rea.command_id, 2);
    assert_identical_results(h, rel.command_id, 2);
    take_snapshot(h, &after);
    assert_same_snapshot(&before, &after);
    assert_int_equal(er_harness_count(h, ER_HARNESS_DLQ), 0);
}

static void replay_whole_batch_changes_nothing(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_run runs[BATCH_RUNS];
    struct er_harness_cmd cmds[BATCH_CMDS];
    const char *ids[BATCH_CMDS];
    struct snapshot before;
    struct snapshot after;
    int r;
    int i;

    h = er_harness_new("replay_batch", 4, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    w = er_harness_worker_start(h, NULL);
    ER_HARNESS_NON_NULL(w);

    /* Per run: acquire, realize, release, and an acquire after the release
     * (which a non-idempotent replay would turn into a second lease). */
    for (r = 0; r < BATCH_RUNS; r++) {
        struct er_harness_cmd *c = &cmds[r * CMDS_PER_RUN];

        er_harness_run_init(&runs[r]);
        er_harness_cmd_acquire(&c[0], &runs[r]);
        er_harness_cmd_realize(&c[1], &runs[r], h->dir);
        er_harness_cmd_release(&c[2], &runs[r], ER_RELEASE_RELEASED);
        er_harness_cmd_acquire(&c[3], &runs[r]);
    }
    for (i = 0; i < BATCH_CMDS; i++) {
        ids[i] = cmds[i].command_id;
        assert_int_equal(er_harness_send(h, &cmds[i].cmd), 0);
    }
    if (!er_harness_wait_results(h, ids, BATCH_CMDS, ER_HARNESS_FIRST_WAIT_MS))
        er_harness_worker_dump_log(w, 4000);
    assert_true(er_harness_wait_results(h, ids, BATCH_CMDS, 0));
    for (i = 0; i < BATCH_CMDS; i++) {
        const json_t *res = er_harness_wait_result(h, ids[i], 0);

        ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    }
    /* Each run: two leases (3 + 1 lease events), three activity rows. */
    assert_true(er_harness_wait_total(h, ER_HARNESS_LEASE_EVENTS,
                                      4 * BATCH_RUNS, ER_HARNESS_WAIT_MS));
    assert_true(er_harness_wait_total(h, ER_HARNESS_ACTIVITY, 3 * BATCH_RUNS,
                                      ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    take_snapshot(h, &before);
    assert_int_equal(before.leases, 2 * BATCH_RUNS);
    assert_int_equal(before.active_leases, BATCH_RUNS);
    assert_int_equal(before.activity_rows, 3 * BATCH_RUNS);
    assert_int_equal(before.lease_events, 4 * BATCH_RUNS);
    assert_int_equal(before.activity_events, 3 * BATCH_RUNS);

    for (i = 0; i < BATCH_CMDS; i++)
        assert_int_equal(er_harness_send(h, &cmds[i].cmd), 0);
    for (i = 0; i < BATCH_CMDS; i++)
        assert_true(er_harness_wait_count(h, ER_HARNESS_RESULTS, "commandId",
                                          ids[i], 2, ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    for (i = 0; i < BATCH_CMDS; i++)
        assert_identical_results(h, ids[i], 2);
    take_snapshot(h, &after);
    assert_same_snapshot(&before, &after);
    assert_int_equal(er_harness_count(h, ER_HARNESS_DLQ), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(replay_same_command_twice_changes_nothing,
                                  teardown),
        cmocka_unit_test_teardown(replay_whole_batch_changes_nothing, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
