/* metrics_scrape_test: the worker's /metrics scraped over HTTP while a real
 * worker process (Kafka mock cluster over TCP, PostgreSQL) works: commands
 * by kind and outcome, the step phases' histograms, the leases and journal
 * gauges the reaper refreshes, consumer lag per partition (above 0 while
 * the database is away, 0 once processed), and the outbox backlog (above 0
 * while the only broker is down, 0 once published) with its publish lag.
 * Each case has a worker of its own, so counters start at 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "tests/support/harness.h"

/* A reaper pass every 2 s (TTL / 4), so the database gauges move soon. */
static const char *const worker_env[] = { "ENVRUN_LEASE_TTL_S=8", NULL };

static struct er_harness *h;
static struct er_harness_worker *worker;

static int teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_destroy(h);
    h = NULL;
    worker = NULL;
    return rc;
}

/* A fresh world (name: the test's) and a ready worker with /metrics that
 * has run no command yet. */
static void start(const char *name)
{
    struct er_harness_worker_opts opts = { 0 };

    h = er_harness_new(name, 2, NULL);
    ER_HARNESS_NON_NULL(h);
    opts.has_http = true;
    opts.env = worker_env;
    worker = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(worker);
    if (!er_harness_worker_wait_ready(worker, ER_HARNESS_FIRST_WAIT_MS)) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__, "worker not ready");
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

/* The value of the sample line "<series> <value>" (series with its
 * labels, as rendered) in a scrape; -1 when the line is missing. */
static double series_in(const char *body, const char *series)
{
    size_t n = strlen(series);
    const char *p;

    for (p = body; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return -1;
}

/* A scrape of /metrics (er_free); fails the test when it does not answer
 * 200 in the text format. */
static char *scrape(void)
{
    char *body = NULL;

    assert_int_equal(er_harness_worker_http_get(worker, "/metrics", &body),
                     200);
    ER_HARNESS_NON_NULL(body);
    return body;
}

static double series(const char *name)
{
    char *body = scrape();
    double v = series_in(body, name);

    er_free(body);
    return v;
}

/* Poll every 200 ms until series reads want (is_at_least: want or more),
 * or fail after timeout_ms printing the last scrape. */
static void wait_series(const char *name, double want, bool is_at_least,
                        int timeout_ms, int line)
{
    int64_t until = er_harness_mono_us() + (int64_t)timeout_ms * 1000;
    char *body = NULL;
    double v = -1;

    for (;;) {
        er_free(body);
        body = scrape();
        v = series_in(body, name);
        if (is_at_least ? v >= want : v == want)
            break;
        if (er_harness_mono_us() >= until) {
            fprintf(stderr, "%s\n", body);
            er_harness_worker_dump_log(worker, 3000);
            er_free(body);
            er_harness_fail(__FILE__, line, "%s is %g, want %s%g", name, v,
                            is_at_least ? ">= " : "", want);
        }
        sleep_ms(200);
    }
    er_free(body);
}

#define WAIT_EQ(name, want) \
    wait_series((name), (want), false, ER_HARNESS_WAIT_MS, __LINE__)
#define WAIT_GE(name, want) \
    wait_series((name), (want), true, ER_HARNESS_WAIT_MS, __LINE__)

/* Every partition's consumer lag series is 0 (both are assigned here). */
static void wait_lag_zero(void)
{
    char p0[200];
    char p1[200];
    char topic[128];

    er_harness_topic_name(h, "commands", topic, sizeof(topic));
    snprintf(p0, sizeof(p0),
             "envrun_consumer_lag{topic=\"%s\",partition=\"0\"}", topic);
    snprintf(p1, sizeof(p1),
             "envrun_consumer_lag{topic=\"%s\",partition=\"1\"}", topic);
    WAIT_EQ(p0, 0);
    WAIT_EQ(p1, 0);
}

/* Write the scrape to <h->dir>/metrics-scrape.txt, for a look. */
static void keep_scrape(const char *body)
{
    char path[ER_HARNESS_PATH_MAX + 32];
    FILE *f;

    snprintf(path, sizeof(path), "%s/metrics-scrape.txt", h->dir);
    f = fopen(path, "w");
    if (f == NULL)
        return;
    fputs(body, f);
    fclose(f);
}

static const json_t *roundtrip(struct er_harness_cmd *c)
{
    const json_t *res =
        er_harness_roundtrip(h, worker, c, ER_HARNESS_FIRST_WAIT_MS);

    ER_HARNESS_NON_NULL(res);
    return res;
}

static void metrics_follow_a_run_on_a_remote_driver(void **state)
{
    static const char *const kinds[] = { "acquire", "realize", "release" };
    static const char *const phases[] = { "intent", "effect", "outcome" };
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char lease_id[37];
    char name[160];
    char *body;
    const char *params[2];
    double published;
    size_t i;

    (void)state;
    start("metrics_scrape_run");
    er_harness_run_init(&run);
    /* The sandbox driver's built-in fake provider is remote: its steps
     * journal (intent), work with no transaction (effect) and record
     * (outcome). */
    er_harness_env_insert(h, run.company_id, "Fake", "sandbox", "active",
                          "{\"provider\": \"fake\"}", env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    ER_HARNESS_ASSERT_OK(roundtrip(&c));
    WAIT_EQ("envrun_leases{driver=\"sandbox\",status=\"active\"}", 1);

    ER_HARNESS_ASSERT_OK(
        er_harness_realize(h, worker, &run, h->dir, NULL, ER_HARNESS_WAIT_MS));
    /* An operation in flight, as a worker that died mid-step leaves it
     * (no partition: nothing claims or interrupts it). */
    er_uuid_v4(lease_id);
    params[0] = run.company_id;
    params[1] = lease_id;
    assert_int_equal(
        er_harness_pg_exec(h->db_url,
                           "INSERT INTO envrun.operations (command_id, "
                           "company_id, lease_id, kind, state) VALUES "
                           "('metrics-op', $1::uuid, $2::uuid, 'release', "
                           "'started')",
                           2, params),
        0);
    WAIT_EQ("envrun_journal_inflight{kind=\"release\",state=\"started\"}", 1);
    assert_int_equal(er_harness_pg_exec(h->db_url,
                                        "DELETE FROM envrun.operations WHERE "
                                        "command_id = 'metrics-op'",
                                        0, NULL),
                     0);
    WAIT_EQ("envrun_journal_inflight{kind=\"release\",state=\"started\"}", 0);

    ER_HARNESS_ASSERT_OK(er_harness_release(
        h, worker, &run, ER_RELEASE_RELEASED, ER_HARNESS_WAIT_MS));
    WAIT_EQ("envrun_leases{driver=\"sandbox\",status=\"active\"}", 0);
    wait_lag_zero();
    WAIT_EQ("envrun_outbox_backlog", 0);
    WAIT_GE("envrun_reaper_passes_total{outcome=\"ok\"}", 1);

    body = scrape();
    keep_scrape(body);
    for (i = 0; i < 3; i++) {
        snprintf(name, sizeof(name),
                 "envrun_commands_total{kind=\"%s\",outcome=\"ok\"}", kinds[i]);
        assert_true(series_in(body, name) == 1);
        snprintf(name, sizeof(name),
                 "envrun_commands_total{kind=\"%s\",outcome=\"error\"}",
                 kinds[i]);
        assert_true(series_in(body, name) == 0);
        snprintf(name, sizeof(name),
                 "envrun_command_duration_seconds_count{kind=\"%s\"}",
                 kinds[i]);
        assert_true(series_in(body, name) == 1);
        /* Each of the three steps went through each phase once. */
        snprintf(name, sizeof(name),
                 "envrun_step_phase_duration_seconds_count{phase=\"%s\"}",
                 phases[i]);
        if (series_in(body, name) != 3)
            er_harness_fail(__FILE__, __LINE__, "%s is %g, want 3", name,
                            series_in(body, name));
        snprintf(name, sizeof(name),
                 "envrun_step_phase_duration_seconds_bucket{phase=\"%s\","
                 "le=\"+Inf\"}",
                 phases[i]);
        assert_true(series_in(body, name) == 3);
        snprintf(name, sizeof(name),
                 "envrun_step_phase_duration_seconds_sum{phase=\"%s\"}",
                 phases[i]);
        assert_true(series_in(body, name) > 0);
    }
    assert_true(series_in(body, "envrun_command_duration_ms_count") == 3);
    /* Results, lease events and activity rows went out, and each delivery
     * was timed from its row's creation. */
    published = series_in(body, "envrun_outbox_published_total");
    assert_true(published >= 3);
    assert_true(series_in(body, "envrun_outbox_publish_lag_seconds_count") ==
                published);
    assert_true(series_in(body, "envrun_outbox_oldest_age_seconds") == 0);
    assert_true(series_in(body, "envrun_inflight_commands") == 0);
    assert_true(series_in(body, "envrun_reaper_actions_total{action="
                                "\"expired\"}") == 0);
    assert_true(series_in(body, "envrun_bridge_requests_total{transport="
                                "\"queue_v1\",status=\"2xx\"}") == 0);
    er_free(body);
}

/* With the database away a command waits in its partition: the lag is
 * above 0 and the reaper's passes fail; once it is back, the command is
 * processed and the lag goes back to 0. */
static void consumer_lag_while_the_database_is_away(void **state)
{
    char admin_url[ER_HARNESS_URL_MAX + 32];
    char sql[160];
    struct er_harness_run run;
    struct er_harness_cmd c;
    const json_t *res;
    long long lag;

    (void)state;
    start("metrics_scrape_lag");
    wait_lag_zero();
    /* h->db_url is a keyword string; a later dbname overrides. */
    snprintf(admin_url, sizeof(admin_url), "%s dbname=postgres", h->db_url);
    snprintf(sql, sizeof(sql), "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS %s",
             h->db_name, "false");
    assert_int_equal(er_harness_pg_exec(admin_url, sql, 0, NULL), 0);
    assert_true(
        er_harness_pg_count(admin_url,
                            "SELECT count(pg_terminate_backend(pid)) FROM "
                            "pg_stat_activity WHERE datname = $1",
                            1, (const char *[]){ h->db_name }) >= 1);
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    assert_int_equal(er_harness_flush(h), 0);
    lag = -1;
    {
        int64_t until = er_harness_mono_us() + 15000000;

        while (er_harness_mono_us() < until) {
            lag = er_harness_worker_metric(worker, "envrun_consumer_lag");
            if (lag >= 1)
                break;
            sleep_ms(200);
        }
    }
    if (lag != 1) {
        er_harness_worker_dump_log(worker, 3000);
        er_harness_fail(__FILE__, __LINE__, "lag %lld, want 1", lag);
    }
    WAIT_GE("envrun_reaper_passes_total{outcome=\"error\"}", 1);
    assert_true(er_harness_worker_metric(worker, "envrun_inflight_commands") ==
                1);
    snprintf(sql, sizeof(sql), "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS %s",
             h->db_name, "true");
    assert_int_equal(er_harness_pg_exec(admin_url, sql, 0, NULL), 0);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_FIRST_WAIT_MS);
    if (res == NULL)
        er_harness_worker_dump_log(worker, 4000);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_OK(res);
    wait_lag_zero();
    /* The reaper's passes work again, and count the run's Local lease. */
    WAIT_EQ("envrun_leases{driver=\"local\",status=\"active\"}", 1);
    assert_true(series("envrun_step_retries_total") >= 1);
    assert_true(series("envrun_commands_total{kind=\"acquire\","
                       "outcome=\"ok\"}") == 1);
}

/* With the only broker down, rows committed to the outbox wait: the
 * backlog counts them and the oldest one ages; once the broker is back
 * they are published, the backlog is 0 and their lag is observed. */
static void outbox_backlog_while_the_broker_is_down(void **state)
{
    rd_kafka_mock_cluster_t *mock;
    char topic[128];
    char key[37];
    double published0;
    double lag_cnt0;

    (void)state;
    start("metrics_scrape_outbox");
    WAIT_EQ("envrun_outbox_backlog", 0);
    published0 = series("envrun_outbox_published_total");
    lag_cnt0 = series("envrun_outbox_publish_lag_seconds_count");
    mock = er_harness_mock(h);
    ER_HARNESS_NON_NULL(mock);
    assert_int_equal(rd_kafka_mock_broker_set_down(mock, 1), 0);
    er_harness_topic_name(h, "results", topic, sizeof(topic));
    er_uuid_v4(key);
    assert_int_equal(
        er_harness_pg_exec(h->db_url,
                           "INSERT INTO envrun.outbox (topic, msg_key, "
                           "msg_value) SELECT $1, convert_to($2, 'UTF8'), "
                           "convert_to('row ' || g, 'UTF8') FROM "
                           "generate_series(1, 3) g",
                           2, (const char *[]){ topic, key }),
        0);
    WAIT_EQ("envrun_outbox_backlog", 3);
    WAIT_GE("envrun_outbox_oldest_age_seconds", 1);
    assert_true(series("envrun_outbox_published_total") == published0);
    assert_int_equal(rd_kafka_mock_broker_set_up(mock, 1), 0);
    wait_series("envrun_outbox_backlog", 0, false, ER_HARNESS_FIRST_WAIT_MS,
                __LINE__);
    WAIT_EQ("envrun_outbox_oldest_age_seconds", 0);
    WAIT_GE("envrun_outbox_published_total", published0 + 3);
    assert_true(series("envrun_outbox_publish_lag_seconds_count") >=
                lag_cnt0 + 3);
    /* They waited a second or more: not in the lowest buckets. */
    assert_true(
        series("envrun_outbox_publish_lag_seconds_bucket{le=\"0.5\"}") <=
        lag_cnt0);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM envrun.outbox",
                                         0, NULL),
                     0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(metrics_follow_a_run_on_a_remote_driver,
                                  teardown),
        cmocka_unit_test_teardown(consumer_lag_while_the_database_is_away,
                                  teardown),
        cmocka_unit_test_teardown(outbox_backlog_while_the_broker_is_down,
                                  teardown),
    };

    /* ENVRUN_TEST_FILTER=<glob> runs only the matching cases. */
    if (getenv("ENVRUN_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("ENVRUN_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
