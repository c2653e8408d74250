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

/* Every result of a command is byte-identical and ok. */
static void check_results(struct er_harness *h, const char *const *ids)
{
    const struct er_harness_record *recs[16];
    size_t n;
    size_t i;
    size_t j;
    size_t redelivered = 0;

    for (i = 0; i < CMDS; i++) {
        n = er_harness_find(h, ER_HARNESS_RESULTS, "commandId", ids[i], recs,
                            16);
        assert_true(n >= 1 && n <= 16);
        ER_HARNESS_ASSERT_STR(recs[0]->json, "outcome", "ok");
        for (j = 1; j < n; j++) {
            assert_int_equal(recs[j]->value_len, recs[0]->value_len);
            assert_memory_equal(recs[j]->value, recs[0]->value,
                                recs[0]->value_len);
        }
        redelivered += n - 1;
    }
    print_message("crash_test: %zu results re-sent after the restart\n",
                  redelivered);
}

/* Lease events: per lease, distinct event ids carry versions 1..n once
 * each; copies of one event id are identical; n and the last status match
 * the row. */
static void check_lease_events(struct er_harness *h)
{
    json_t *leases = json_object(); /* leaseId -> {eventId: index} */
    json_t *rows;
    size_t i;
    size_t cnt = er_harness_count(h, ER_HARNESS_LEASE_EVENTS);
    const char *lease_id;
    json_t *events;

    for (i = 0; i < cnt; i++) {
        const struct er_harness_record *rec =
            er_harness_get(h, ER_HARNESS_LEASE_EVENTS, i);
        const char *lid = er_harness_json_str(rec->json, "leaseId");
        const char *eid = er_harness_json_str(rec->json, "eventId");
        json_t *seen;

        ER_HARNESS_NON_NULL(lid);
        ER_HARNESS_NON_NULL(eid);
        ER_HARNESS_NON_NULL(rec->key);
        assert_string_equal(rec->key, lid);
        events = json_object_get(leases, lid);
        if (events == NULL) {
            events = json_object();
            json_object_set_new(leases, lid, events);
        }
        seen = json_object_get(events, eid);
        if (seen != NULL) {
            const struct er_harness_record *first = er_harness_get(
                h, ER_HARNESS_LEASE_EVENTS, (size_t)json_integer_value(seen));

            assert_int_equal(first->value_len, rec->value_len);
            assert_memory_equal(first->value, rec->value, rec->value_len);
            continue;
        }
        json_object_set_new(events, eid, json_integer((json_int_t)i));
    }

    rows = er_harness_pg_query(h->db_url,
                               "SELECT id::text, status FROM "
                               "environment_leases",
                               0, NULL);
    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), json_object_size(leases));
    for (i = 0; i < json_array_size(rows); i++) {
        const json_t *row = json_array_get(rows, i);
        const char *status = er_harness_json_str(row, "status");
        long long want = strcmp(status, "released") == 0 ? 3 : 1;
        bool has_version[4] = { false, false, false, false };
        const char *eid;
        json_t *idx;
        const char *last_status = NULL;

        lease_id = er_harness_json_str(row, "id");
        events = json_object_get(leases, lease_id);
        if (events == NULL)
            er_harness_fail(__FILE__, __LINE__, "lease %s has no events",
                            lease_id);
        if ((long long)json_object_size(events) != want)
            er_harness_fail(__FILE__, __LINE__,
                            "lease %s (%s) has %zu distinct events, want %lld",
                            lease_id, status, json_object_size(events), want);
        json_object_foreach(events, eid, idx)
        {
            const struct er_harness_record *rec = er_harness_get(
                h, ER_HARNESS_LEASE_EVENTS, (size_t)json_integer_value(idx));
            json_int_t version =
                json_integer_value(er_harness_json_at(rec->json, "version"));

            if (version < 1 || version > want || has_version[version])
                er_harness_fail(__FILE__, __LINE__,
                                "lease %s: event %s has version %lld", lease_id,
                                eid, (long long)version);
            has_version[version] = true;
            if (version == want)
                last_status = er_harness_json_str(rec->json, "status");
        }
        ER_HARNESS_NON_NULL(last_status);
        assert_string_equal(last_status, status);
    }
    json_decref(rows);
    json_decref(leases);
}

/* Activity events and activity_log rows match one to one by id. */
static void check_activity(struct er_harness *h)
{
    json_t *ids = json_object(); /* id -> true */
    json_t *rows;
    size_t cnt = er_harness_count(h, ER_HARNESS_ACTIVITY);
    size_t i;

    for (i = 0; i < cnt; i++) {
        const struct er_harness_record *rec =
            er_harness_get(h, ER_HARNESS_ACTIVITY, i);
        const char *id = er_harness_json_str(rec->json, "id");

        ER_HARNESS_NON_NULL(id);
        json_object_set_new(ids, id, json_true());
    }
    rows = er_harness_pg_query(h->db_url, "SELECT id::text FROM activity_log",
                               0, NULL);
    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), json_object_size(ids));
    for (i = 0; i < json_array_size(rows); i++) {
        const char *id = er_harness_json_str(json_array_get(rows, i), "id");

        if (json_object_get(ids, id) == NULL)
            er_harness_fail(__FILE__, __LINE__,
                            "activity_log row %s has no event", id);
    }
    json_decref(rows);
    json_decref(ids);
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

    check_results(h, ids);
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
    check_lease_events(h);
    check_activity(h);
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
