/* soak_test: three workers, ENVRUN_TEST_SOAK_S seconds (default 600) of
 * runs of acquire, realize and release, a third of them on an ssh
 * environment (per-lease directories on the real sshd, a 2 s provision
 * command), the rest local, while a random worker is killed with SIGKILL
 * every 20-60 s and restarted 1-3 s later. Afterwards every command must
 * have its result, every copy of a result must be identical, every lease
 * must be released with contiguous events, and activity must match its
 * rows. Prints commands, results, duplicates and losses. Not in CI: `make
 * soak` runs it (label soak). */
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
#include "worker/worker.h"

#define WORKERS       3
#define RUNS_PER_WAVE 3
#define WAVE_MS       1000
#define FINISH_MS     300000

static uint32_t rnd(void)
{
    uint8_t b[4];
    char id[37];

    /* Random bits from a v4 UUID's random part. */
    er_uuid_v4(id);
    b[0] = (uint8_t)id[0];
    b[1] = (uint8_t)id[2];
    b[2] = (uint8_t)id[4];
    b[3] = (uint8_t)id[6];
    return ((uint32_t)b[0] * 2654435761u) ^ ((uint32_t)b[1] << 8) ^
           ((uint32_t)b[2] << 16) ^ ((uint32_t)b[3] << 24) ^
           (uint32_t)er_time_mono_ms();
}

/* What the kills cost in steps: how often a rebalance handed running
 * steps over (the workers' logs), and how many journaled operations ran
 * more than once (resumed after their worker died or their partition
 * moved), by kind. */
static void report_steps(struct er_harness *h)
{
    char script[ER_HARNESS_PATH_MAX + 128];
    char *out = NULL;
    json_t *rows;
    size_t i;

    snprintf(script, sizeof(script),
             "cat '%s'/worker-*.log | grep -c 'running steps handed over'",
             h->dir);
    if (er_harness_ssh_local(script, &out) >= 0 && out != NULL)
        print_message("soak: handovers (partitions given back with running "
                      "steps): %s",
                      out);
    er_free(out);
    rows = er_harness_pg_query(h->db_url,
                               "SELECT kind, count(*)::text AS ops, "
                               "count(*) FILTER (WHERE attempt > 1)::text "
                               "AS resumed FROM envrun.operations "
                               "GROUP BY kind ORDER BY kind",
                               0, NULL);
    for (i = 0; rows != NULL && i < json_array_size(rows); i++) {
        const json_t *r = json_array_get(rows, i);

        print_message("soak: %s operations: %s, resumed: %s\n",
                      er_harness_json_str(r, "kind"),
                      er_harness_json_str(r, "ops"),
                      er_harness_json_str(r, "resumed"));
    }
    json_decref(rows);
}

static void soak_mixed_runs_with_random_kills(void **state)
{
    const char *secs_env = getenv("ENVRUN_TEST_SOAK_S");
    int64_t soak_ms =
        (secs_env != NULL ? strtol(secs_env, NULL, 10) : 600) * 1000;
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    struct er_harness_worker *ws[WORKERS];
    struct er_harness_worker_opts opts = { .concurrency = 8 };
    struct er_harness_cmd *cmds = NULL;
    struct er_harness_run *runs = NULL;
    const char **ids = NULL;
    size_t cap = 0;
    size_t cnt = 0;
    size_t run_cnt = 0;
    size_t distinct = 0;
    size_t copies = 0;
    size_t lost = 0;
    char env_id[37];
    char remote[ER_HARNESS_PATH_MAX + 16];
    int64_t t0;
    int64_t wave_at;
    int64_t next_kill;
    int64_t restart_at = -1;
    int dead = -1;
    int kills = 0;
    size_t i;
    int w;

    (void)state;
    h = er_harness_new("soak", 6, NULL);
    ER_HARNESS_NON_NULL(h);
    ssh = er_harness_ssh_new(h);
    ER_HARNESS_NON_NULL(ssh);
    opts.env = ssh->worker_env;
    for (w = 0; w < WORKERS; w++) {
        ws[w] = w == 0 ? er_harness_worker_start_warm(h, &opts)
                       : er_harness_worker_start(h, &opts);
        ER_HARNESS_NON_NULL(ws[w]);
    }
    /* Commands point into their runs and their own structs, so both
     * arrays are sized once for the whole soak (a wave takes >= 1 s). */
    cap = (size_t)(soak_ms / WAVE_MS + 10) * RUNS_PER_WAVE * 3;
    runs = er_calloc(cap / 3 + 1, sizeof(*runs));
    cmds = er_calloc(cap, sizeof(*cmds));
    ids = er_calloc(cap, sizeof(*ids));
    ER_HARNESS_NON_NULL(runs);
    ER_HARNESS_NON_NULL(cmds);
    ER_HARNESS_NON_NULL(ids);
    /* One company: every ssh run uses its environment. */
    er_harness_run_init(&runs[0]);
    assert_int_equal(er_harness_ssh_per_lease_env(h, ssh, runs[0].company_id,
                                                  "Soak", remote,
                                                  sizeof(remote), env_id),
                     0);

    t0 = er_time_mono_ms();
    wave_at = t0;
    next_kill = t0 + 20000 + (int64_t)(rnd() % 40000);
    while (er_time_mono_ms() - t0 < soak_ms) {
        int r;

        for (r = 0; r < RUNS_PER_WAVE; r++) {
            struct er_harness_run *run;
            bool is_ssh = run_cnt % 3 == 0;
            int k;

            if (cnt + 3 > cap)
                break; /* sized for the whole soak: never moved */
            run = &runs[run_cnt];
            if (run_cnt > 0)
                er_harness_run_init_same_company(run, &runs[0]);
            er_harness_cmd_acquire(&cmds[cnt], run);
            if (is_ssh)
                cmds[cnt].cmd.selected_environment_id = env_id;
            er_harness_cmd_realize(&cmds[cnt + 1], run, h->dir);
            /* A provision of 2 s keeps steps running when a kill or a
             * rebalance comes: they are resumed or handed over. */
            if (is_ssh)
                cmds[cnt + 1].cmd.runtime_overlay_json =
                    (char *)(uintptr_t) "{\"provisionCommand\": \"sleep 2\"}";
            er_harness_cmd_release(&cmds[cnt + 2], run, ER_RELEASE_RELEASED);
            for (k = 0; k < 3; k++)
                assert_int_equal(er_harness_send(h, &cmds[cnt + k].cmd), 0);
            cnt += 3;
            run_cnt++;
        }
        assert_int_equal(er_harness_flush(h), 0);
        /* One wave a WAVE_MS: the poll returns as soon as records come. */
        wave_at += WAVE_MS;
        while (er_time_mono_ms() < wave_at)
            er_harness_poll(h, (int)(wave_at - er_time_mono_ms()));
        if (dead < 0 && er_time_mono_ms() >= next_kill) {
            dead = (int)(rnd() % WORKERS);
            assert_int_equal(er_harness_worker_stop(ws[dead], SIGKILL, 5000),
                             128 + SIGKILL);
            kills++;
            restart_at = er_time_mono_ms() + 1000 + (int64_t)(rnd() % 2000);
            print_message("soak: %lld s: killed worker %d (%zu commands "
                          "sent)\n",
                          (long long)((er_time_mono_ms() - t0) / 1000), dead,
                          cnt);
        }
        if (dead >= 0 && er_time_mono_ms() >= restart_at) {
            ws[dead] = er_harness_worker_start(h, &opts);
            ER_HARNESS_NON_NULL(ws[dead]);
            dead = -1;
            next_kill = er_time_mono_ms() + 20000 + (int64_t)(rnd() % 40000);
        }
    }
    if (dead >= 0) {
        ws[dead] = er_harness_worker_start(h, &opts);
        ER_HARNESS_NON_NULL(ws[dead]);
    }
    for (i = 0; i < cnt; i++)
        ids[i] = cmds[i].command_id;
    if (!er_harness_wait_results(h, ids, cnt, FINISH_MS))
        print_message("soak: not every command has a result after %d s\n",
                      FINISH_MS / 1000);
    er_harness_poll(h, ER_HARNESS_QUIET_MS * 2);
    for (i = 0; i < cnt; i++) {
        size_t n = er_harness_find(h, ER_HARNESS_RESULTS, "commandId", ids[i],
                                   NULL, 0);

        if (n == 0)
            lost++;
        else
            distinct++;
        copies += n > 1 ? n - 1 : 0;
    }
    print_message("soak: %lld s, %d kills, %zu runs, %zu commands, %zu "
                  "results (%zu commands answered, %zu re-sent copies), %zu "
                  "lost\n",
                  (long long)((er_time_mono_ms() - t0) / 1000), kills, run_cnt,
                  cnt, er_harness_count(h, ER_HARNESS_RESULTS), distinct,
                  copies, lost);
    assert_int_equal(lost, 0);
    /* Copies identical, outcomes ok, leases and activity consistent. */
    er_harness_check_results(h, ids, cnt, "ok");
    er_harness_check_lease_events(h, 3, 0);
    er_harness_check_activity(h);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE status = "
                                         "'released'",
                                         0, NULL),
                     (long long)run_cnt);
    print_message("soak: invariants hold: one result content per command, "
                  "%zu leases released once each, events contiguous\n",
                  run_cnt);
    report_steps(h);
    assert_true(er_harness_stop_workers(h));
    er_harness_ssh_destroy(ssh);
    er_harness_destroy(h);
    er_free(ids);
    er_free(cmds);
    er_free(runs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(soak_mixed_runs_with_random_kills),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
