/* crash_test: a worker killed with SIGKILL in the middle of a stream and
 * restarted. At-least-once on the wire, effectively-once in effect
 * (contract.md 3): every command gets a result, redelivered results are
 * identical, lease events count 1..n per lease without gaps or conflicting
 * duplicates, and activity events match activity_log one to one. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

#define PARTITIONS   4
#define RUNS         20
#define CMDS_PER_RUN 10
#define CMDS         (RUNS * CMDS_PER_RUN)
#define KILLS        2
#define WAVE_GAP_MS  100
#define FINISH_MS    120000

static const char *const worker_env[] = {
    /* A killed member leaves the group after its session times out; keep
     * that short so the restarted worker gets the partitions soon. */
    "ENVRUN_KAFKA_PROPS=session.timeout.ms=6000,heartbeat.interval.ms=500",
    NULL,
};

static int teardown(void **state)
{
    int rc = er_harness_stop_workers(*state) ? 0 : -1;

    er_harness_destroy(*state);
    *state = NULL;
    return rc;
}

/* SIGKILL the worker and start a new one in its place. */
static struct er_harness_worker *
kill_and_restart(struct er_harness *h, struct er_harness_worker *w,
                 const struct er_harness_worker_opts *opts, int *kills,
                 int waves_sent)
{
    assert_int_equal(er_harness_worker_stop(w, SIGKILL, 5000), 128 + SIGKILL);
    er_harness_poll(h, 0);
    print_message("crash_test: kill %d with %zu results seen, %d of %d "
                  "waves sent\n",
                  *kills + 1, er_harness_count(h, ER_HARNESS_RESULTS),
                  waves_sent, CMDS_PER_RUN);
    (*kills)++;
    w = er_harness_worker_start(h, opts);
    ER_HARNESS_NON_NULL(w);
    return w;
}

static void crash_kill_mid_stream_and_restart(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_run runs[RUNS];
    struct er_harness_cmd *cmds = NULL;
    const char *ids[CMDS];
    const struct er_harness_worker_opts opts = { .concurrency = 8,
                                                 .env = worker_env };
    static const enum er_cmd_kind plan[CMDS_PER_RUN] = {
        ER_CMD_ACQUIRE, ER_CMD_REALIZE, ER_CMD_RELEASE, ER_CMD_ACQUIRE,
        ER_CMD_REALIZE, ER_CMD_RELEASE, ER_CMD_ACQUIRE, ER_CMD_REALIZE,
        ER_CMD_RELEASE, ER_CMD_ACQUIRE,
    };
    /* The first kill in the middle of the waves; the second soon after the
     * restarted worker resumes, while it works through the backlog. */
    size_t kill_at[KILLS] = { 40, 0 };
    int kills = 0;
    int64_t t0;
    int i;
    int r;

    h = er_harness_new("crash", PARTITIONS, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    cmds = er_calloc(CMDS, sizeof(*cmds));
    ER_HARNESS_NON_NULL(cmds);
    for (r = 0; r < RUNS; r++) {
        er_harness_run_init(&runs[r]);
        for (i = 0; i < CMDS_PER_RUN; i++) {
            struct er_harness_cmd *c = &cmds[r * CMDS_PER_RUN + i];

            switch (plan[i]) {
            case ER_CMD_ACQUIRE:
                er_harness_cmd_acquire(c, &runs[r]);
                break;
            case ER_CMD_REALIZE:
                er_harness_cmd_realize(c, &runs[r], h->dir);
                break;
            case ER_CMD_RELEASE:
                er_harness_cmd_release(c, &runs[r], ER_RELEASE_RELEASED);
                break;
            }
        }
    }
    for (r = 0; r < RUNS; r++) {
        for (i = 0; i < CMDS_PER_RUN; i++)
            ids[r * CMDS_PER_RUN + i] = cmds[r * CMDS_PER_RUN + i].command_id;
    }

    /* The scheduler sends step i of every run, wave after wave, while the
     * worker runs; the worker is killed when the results seen pass each
     * threshold and restarted at once, and the waves go on meanwhile. */
    w = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w);
    for (i = 0; i < CMDS_PER_RUN; i++) {
        for (r = 0; r < RUNS; r++)
            assert_int_equal(
                er_harness_send(h, &cmds[r * CMDS_PER_RUN + i].cmd), 0);
        assert_int_equal(er_harness_flush(h), 0);
        if (i == 0 && !er_harness_wait_total(h, ER_HARNESS_RESULTS, 1,
                                             ER_HARNESS_FIRST_WAIT_MS)) {
            er_harness_worker_dump_log(w, 4000);
            er_harness_fail(__FILE__, __LINE__, "no first result");
        }
        er_harness_poll(h, WAVE_GAP_MS);
        if (kills < KILLS &&
            er_harness_count(h, ER_HARNESS_RESULTS) >= kill_at[kills]) {
            w = kill_and_restart(h, w, &opts, &kills, i + 1);
            if (kills < KILLS)
                kill_at[kills] = er_harness_count(h, ER_HARNESS_RESULTS) + 15;
        }
    }
    while (kills < KILLS) {
        if (kill_at[kills] == 0)
            kill_at[kills] = er_harness_count(h, ER_HARNESS_RESULTS) + 15;
        assert_true(er_harness_wait_total(h, ER_HARNESS_RESULTS, kill_at[kills],
                                          FINISH_MS));
        w = kill_and_restart(h, w, &opts, &kills, CMDS_PER_RUN);
    }

    t0 = er_time_mono_ms();
    if (!er_harness_wait_results(h, ids, CMDS, FINISH_MS)) {
        er_harness_worker_dump_log(w, 4000);
        er_harness_fail(__FILE__, __LINE__,
                        "not every command has a result after restart");
    }
    print_message("crash_test: all results %lld ms after the last wave\n",
                  (long long)(er_time_mono_ms() - t0));
    /* Let the outbox drain: every lease has its events. */
    assert_true(er_harness_wait_total(h, ER_HARNESS_ACTIVITY, 7 * RUNS,
                                      ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);

    er_harness_check_results(h, ids, CMDS, "ok");
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases",
                                         0, NULL),
                     4 * RUNS);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE status = "
                                         "'active'",
                                         0, NULL),
                     RUNS);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM activity_log", 0,
                                         NULL),
                     7 * RUNS);
    er_harness_check_lease_events(h, 3, 1);
    er_harness_check_activity(h);
    assert_int_equal(er_harness_count(h, ER_HARNESS_DLQ), 0);
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
    er_free(cmds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(crash_kill_mid_stream_and_restart, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
