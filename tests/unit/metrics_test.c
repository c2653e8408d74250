/* metrics_test: the rendered exposition after some increments, cumulative
 * histogram buckets, readiness, and a render that runs out of room or
 * memory. Single-threaded; the metrics are process-wide, so cases compare
 * values before and after. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "worker/worker.h"

/* Render and return the value of the sample line that starts with
 * "<series> " (series includes labels); fails the test when missing. */
static long long sample(const char *series)
{
    struct er_buf buf;
    const char *p;
    size_t n = strlen(series);
    long long v = -1;
    char *end = NULL;

    er_buf_init(&buf, (size_t)1 << 20);
    assert_int_equal(er_metrics_render(&buf), 0);
    for (p = (const char *)buf.data; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') {
            v = strtoll(p + n + 1, &end, 10);
            assert_true(*end == '\n');
            break;
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    er_buf_fini(&buf);
    if (v < 0)
        fail_msg("no sample %s", series);
    return v;
}

static void metrics_render_has_help_and_type_lines(void **state)
{
    static const char *const want[] = {
        "# HELP envrun_commands_total ",
        "# TYPE envrun_commands_total counter\n",
        "# TYPE envrun_command_duration_ms histogram\n",
        "# TYPE envrun_dlq_total counter\n",
        "# TYPE envrun_step_retries_total counter\n",
        "# TYPE envrun_replays_total counter\n",
        "# TYPE envrun_outbox_published_total counter\n",
        "# TYPE envrun_outbox_backlog gauge\n",
        "# TYPE envrun_inflight_commands gauge\n",
        "# TYPE envrun_ready gauge\n",
        "envrun_commands_total{kind=\"release\",outcome=\"deferred\"} ",
        "envrun_command_duration_ms_bucket{le=\"+Inf\"} ",
        "envrun_ready{part=\"db\"} ",
        "envrun_ready{part=\"kafka\"} ",
    };
    struct er_buf buf;
    size_t i;

    (void)state;
    er_buf_init(&buf, (size_t)1 << 20);
    assert_int_equal(er_metrics_render(&buf), 0);
    assert_true(buf.len > 0 && buf.data[buf.len - 1] == '\n');
    for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (strstr((const char *)buf.data, want[i]) == NULL)
            fail_msg("render lacks \"%s\"", want[i]);
    }
    er_buf_fini(&buf);
}

static void metrics_counts_commands_by_kind_and_outcome(void **state)
{
    const char *ok = "envrun_commands_total{kind=\"acquire\",outcome=\"ok\"}";
    const char *deferred =
        "envrun_commands_total{kind=\"realize\",outcome=\"deferred\"}";
    long long ok0 = sample(ok);
    long long deferred0 = sample(deferred);
    long long count0 = sample("envrun_command_duration_ms_count");

    (void)state;
    er_metrics_command("acquire", "ok", 3);
    er_metrics_command("acquire", "ok", 3);
    er_metrics_command("realize", "deferred", 3);
    /* Unknown names count nowhere, not even in the histogram. */
    er_metrics_command("teleport", "ok", 3);
    er_metrics_command("acquire", "maybe", 3);
    er_metrics_command(NULL, NULL, 3);
    assert_int_equal(sample(ok), ok0 + 2);
    assert_int_equal(sample(deferred), deferred0 + 1);
    assert_int_equal(sample("envrun_command_duration_ms_count"), count0 + 3);
}

static void metrics_histogram_buckets_are_cumulative(void **state)
{
    static const char *const les[] = { "1",    "5",    "10",   "25",
                                       "50",   "100",  "250",  "500",
                                       "1000", "2500", "5000", "+Inf" };
    long long before[12];
    long long after[12];
    long long sum0 = sample("envrun_command_duration_ms_sum");
    char series[96];
    size_t i;

    (void)state;
    for (i = 0; i < 12; i++) {
        snprintf(series, sizeof(series),
                 "envrun_command_duration_ms_bucket{le=\"%s\"}", les[i]);
        before[i] = sample(series);
    }
    er_metrics_command("release", "error", 0);    /* le 1 */
    er_metrics_command("release", "error", 1);    /* le 1: bounds are <= */
    er_metrics_command("release", "error", 7);    /* le 10 */
    er_metrics_command("release", "error", 5000); /* le 5000 */
    er_metrics_command("release", "error", 9999); /* +Inf only */
    er_metrics_command("release", "error", -4);   /* clamped to 0 */
    for (i = 0; i < 12; i++) {
        snprintf(series, sizeof(series),
                 "envrun_command_duration_ms_bucket{le=\"%s\"}", les[i]);
        after[i] = sample(series);
        if (i > 0)
            assert_true(after[i] >= after[i - 1]);
    }
    assert_int_equal(after[0] - before[0], 3);   /* le 1 */
    assert_int_equal(after[1] - before[1], 3);   /* le 5 */
    assert_int_equal(after[2] - before[2], 4);   /* le 10 */
    assert_int_equal(after[9] - before[9], 4);   /* le 2500 */
    assert_int_equal(after[10] - before[10], 5); /* le 5000 */
    assert_int_equal(after[11] - before[11], 6); /* +Inf */
    assert_int_equal(after[11], sample("envrun_command_duration_ms_count"));
    assert_int_equal(sample("envrun_command_duration_ms_sum"),
                     sum0 + 1 + 7 + 5000 + 9999);
}

static void metrics_counters_and_gauges(void **state)
{
    long long dlq0 = sample("envrun_dlq_total");
    long long retry0 = sample("envrun_step_retries_total");
    long long replay0 = sample("envrun_replays_total");
    long long pub0 = sample("envrun_outbox_published_total");

    (void)state;
    er_metrics_dlq();
    er_metrics_retry();
    er_metrics_retry();
    er_metrics_replay();
    er_metrics_outbox_published(40);
    er_metrics_outbox_published(2);
    er_metrics_outbox_backlog(17);
    er_metrics_inflight(5);
    assert_int_equal(sample("envrun_dlq_total"), dlq0 + 1);
    assert_int_equal(sample("envrun_step_retries_total"), retry0 + 2);
    assert_int_equal(sample("envrun_replays_total"), replay0 + 1);
    assert_int_equal(sample("envrun_outbox_published_total"), pub0 + 42);
    assert_int_equal(sample("envrun_outbox_backlog"), 17);
    assert_int_equal(sample("envrun_inflight_commands"), 5);
    er_metrics_outbox_backlog(0);
    er_metrics_inflight(0);
    assert_int_equal(sample("envrun_outbox_backlog"), 0);
    assert_int_equal(sample("envrun_inflight_commands"), 0);
}

static void metrics_ready_needs_db_and_kafka(void **state)
{
    (void)state;
    er_metrics_set_db_ready(false);
    er_metrics_set_kafka_ready(false);
    assert_false(er_metrics_is_ready());
    assert_int_equal(sample("envrun_ready{part=\"db\"}"), 0);
    er_metrics_set_db_ready(true);
    assert_false(er_metrics_is_ready());
    assert_int_equal(sample("envrun_ready{part=\"db\"}"), 1);
    assert_int_equal(sample("envrun_ready{part=\"kafka\"}"), 0);
    er_metrics_set_kafka_ready(true);
    assert_true(er_metrics_is_ready());
    assert_int_equal(sample("envrun_ready{part=\"kafka\"}"), 1);
    er_metrics_set_db_ready(false);
    assert_false(er_metrics_is_ready());
    er_metrics_set_kafka_ready(false);
}

static void metrics_render_reports_full_buffer_and_oom(void **state)
{
    struct er_buf buf;
    uint64_t n;

    (void)state;
    er_buf_init(&buf, 100);
    assert_int_equal(er_metrics_render(&buf), ER_E2BIG);
    er_buf_fini(&buf);

    for (n = 1; n < 64; n++) {
        int rc;

        er_buf_init(&buf, (size_t)1 << 20);
        er_mem_fail_at(n);
        rc = er_metrics_render(&buf);
        er_mem_fail_at(0);
        er_buf_fini(&buf);
        if (rc == 0)
            break;
        assert_int_equal(rc, ER_ENOMEM);
    }
    assert_true(n < 64);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(metrics_render_has_help_and_type_lines),
        cmocka_unit_test(metrics_counts_commands_by_kind_and_outcome),
        cmocka_unit_test(metrics_histogram_buckets_are_cumulative),
        cmocka_unit_test(metrics_counters_and_gauges),
        cmocka_unit_test(metrics_ready_needs_db_and_kafka),
        cmocka_unit_test(metrics_render_reports_full_buffer_and_oom),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
