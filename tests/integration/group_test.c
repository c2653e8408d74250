/* group_test: two workers in one consumer group share the partitions of
 * commands; every command gets exactly one result and both workers do part
 * of the work (DESIGN.md data flow; contract.md 3). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

#define PARTITIONS   4
#define RUNS         10
#define CMDS_PER_RUN 4
#define CMDS         (RUNS * CMDS_PER_RUN)

static int teardown(void **state)
{
    int rc = er_harness_stop_workers(*state) ? 0 : -1;

    er_harness_destroy(*state);
    *state = NULL;
    return rc;
}

/* Random runs, but spread so every partition holds at least two of them:
 * each worker then owns runs whatever partitions it gets. */
static void spread_runs(struct er_harness *h, struct er_harness_run *runs)
{
    int per_part[PARTITIONS] = { 0 };
    int r = 0;
    int tries;

    for (tries = 0; r < RUNS && tries < 10000; tries++) {
        int p;
        int p2;
        bool is_needed = false;

        er_harness_run_init(&runs[r]);
        p = er_harness_partition_of(h, runs[r].run_id);
        /* Take the run if its partition is short of two, or once every
         * partition has two. */
        for (p2 = 0; p2 < PARTITIONS; p2++)
            is_needed = is_needed || per_part[p2] < 2;
        if (per_part[p] < 2 || !is_needed) {
            per_part[p]++;
            r++;
        }
    }
    assert_int_equal(r, RUNS);
}

/* How many partitions the worker holds according to its log's last
 * assignment line ("assigned N partitions of ..."; "revoked ..." is 0). */
static int held_partitions(const struct er_harness_worker *w)
{
    char *log = er_harness_worker_log(w);
    const char *line = log;
    int held = -1;

    while (line != NULL && *line != '\0') {
        const char *next = strchr(line, '\n');
        const char *hit = strstr(line, "\"msg\":\"assigned ");

        if (hit != NULL && (next == NULL || hit < next))
            held = (int)strtol(hit + strlen("\"msg\":\"assigned "), NULL, 10);
        hit = strstr(line, "\"msg\":\"revoked ");
        if (hit != NULL && (next == NULL || hit < next))
            held = 0;
        line = next != NULL ? next + 1 : NULL;
    }
    er_free(log);
    return held;
}

static void group_two_workers_share_the_work(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w[2];
    struct er_harness_run runs[RUNS];
    struct er_harness_cmd cmds[CMDS];
    const char *ids[CMDS];
    /* The harness gives workers a short group session (mock cluster). */
    const struct er_harness_worker_opts opts = { .has_http = true };
    long long done[2];
    int i;
    int r;

    h = er_harness_new("group_two", PARTITIONS, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    w[0] = er_harness_worker_start(h, &opts);
    w[1] = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w[0]);
    ER_HARNESS_NON_NULL(w[1]);

    /* Both ready and each holding half of the partitions: the group is
     * settled before the first command, so no rebalance moves runs
     * mid-stream. */
    for (i = 0; i < 2; i++) {
        if (!er_harness_worker_wait_ready(w[i], ER_HARNESS_FIRST_WAIT_MS)) {
            er_harness_worker_dump_log(w[i], 4000);
            er_harness_fail(__FILE__, __LINE__, "worker %d not ready", i);
        }
    }
    {
        int64_t deadline = er_time_mono_ms() + ER_HARNESS_FIRST_WAIT_MS;

        while (held_partitions(w[0]) != PARTITIONS / 2 ||
               held_partitions(w[1]) != PARTITIONS / 2) {
            if (er_time_mono_ms() >= deadline) {
                er_harness_worker_dump_log(w[0], 3000);
                er_harness_worker_dump_log(w[1], 3000);
                er_harness_fail(__FILE__, __LINE__,
                                "partitions not split: %d and %d",
                                held_partitions(w[0]), held_partitions(w[1]));
            }
            er_harness_poll(h, 100);
        }
    }

    spread_runs(h, runs);
    for (r = 0; r < RUNS; r++) {
        struct er_harness_cmd *c = &cmds[r * CMDS_PER_RUN];

        er_harness_cmd_acquire(&c[0], &runs[r]);
        er_harness_cmd_realize(&c[1], &runs[r], h->dir);
        er_harness_cmd_release(&c[2], &runs[r], ER_RELEASE_RELEASED);
        er_harness_cmd_acquire(&c[3], &runs[r]);
    }
    for (i = 0; i < CMDS; i++) {
        ids[i] = cmds[i].command_id;
        assert_int_equal(er_harness_send(h, &cmds[i].cmd), 0);
    }
    assert_true(
        er_harness_wait_results(h, ids, CMDS, ER_HARNESS_FIRST_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);

    /* Exactly one result per command, all ok. */
    for (i = 0; i < CMDS; i++) {
        const struct er_harness_record *rec = NULL;

        assert_int_equal(er_harness_find(h, ER_HARNESS_RESULTS, "commandId",
                                         ids[i], &rec, 1),
                         1);
        ER_HARNESS_ASSERT_STR(rec->json, "outcome", "ok");
    }
    assert_int_equal(er_harness_count(h, ER_HARNESS_RESULTS), CMDS);
    /* The commands landed where the partitioner said. */
    for (i = 0; i < (int)er_harness_count(h, ER_HARNESS_COMMANDS); i++) {
        const struct er_harness_record *rec =
            er_harness_get(h, ER_HARNESS_COMMANDS, (size_t)i);

        assert_int_equal(rec->partition, er_harness_partition_of(h, rec->key));
    }
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases",
                                         0, NULL),
                     2 * RUNS);

    /* Both workers did part of the work (their own /metrics). */
    for (i = 0; i < 2; i++) {
        done[i] = er_harness_worker_metric(w[i], "envrun_commands_total");
        if (done[i] <= 0) {
            er_harness_worker_dump_log(w[i], 3000);
            er_harness_fail(__FILE__, __LINE__,
                            "worker %d processed %lld commands", i, done[i]);
        }
    }
    assert_int_equal(done[0] + done[1], CMDS);
    for (i = 0; i < 2; i++)
        assert_int_equal(er_harness_worker_stop(w[i], SIGTERM, 15000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(group_two_workers_share_the_work, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
