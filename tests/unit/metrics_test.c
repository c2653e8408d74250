/* metrics_test: the rendered exposition after some increments, cumulative
 * histogram buckets, readiness, and a render that runs out of room or
 * memory. Single-threaded; the metrics are process-wide, so cases compare
 * values before and after. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bridge/bridge.h"
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

/* Like sample, for a value that may have a fraction. */
static double sample_f(const char *series)
{
    struct er_buf buf;
    const char *p;
    size_t n = strlen(series);
    double v = 0;
    bool is_found = false;
    char *end = NULL;

    er_buf_init(&buf, (size_t)1 << 20);
    assert_int_equal(er_metrics_render(&buf), 0);
    for (p = (const char *)buf.data; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, &end);
            assert_true(*end == '\n');
            is_found = true;
            break;
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    er_buf_fini(&buf);
    if (!is_found)
        fail_msg("no sample %s", series);
    return v;
}

/* Render into buf (er_buf_fini it) as one NUL-terminated text. */
static const char *render_text(struct er_buf *buf)
{
    er_buf_init(buf, (size_t)1 << 20);
    assert_int_equal(er_metrics_render(buf), 0);
    assert_int_equal(er_buf_append(buf, "", 1), 0);
    return (const char *)buf->data;
}

/* Whether the render has a line that is exactly line (without its
 * newline). */
static bool render_has_line(const char *line)
{
    struct er_buf buf;
    const char *p;
    size_t n = strlen(line);
    bool is_found = false;

    er_buf_init(&buf, (size_t)1 << 20);
    assert_int_equal(er_metrics_render(&buf), 0);
    for (p = (const char *)buf.data; p != NULL && *p != '\0' && !is_found;) {
        is_found = strncmp(p, line, n) == 0 && p[n] == '\n';
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    er_buf_fini(&buf);
    return is_found;
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

/* The family a sample line belongs to: its name without labels, and for
 * a histogram's series without _bucket, _sum or _count. */
static void family_of(const char *line, const char *text, char *out,
                      size_t out_len)
{
    static const char *const suffixes[] = { "_bucket", "_sum", "_count" };
    size_t n = strcspn(line, "{ ");
    char type_line[160];
    size_t i;

    snprintf(out, out_len, "%.*s", (int)n, line);
    for (i = 0; i < 3; i++) {
        size_t sl = strlen(suffixes[i]);

        if (n > sl && strcmp(out + n - sl, suffixes[i]) == 0) {
            snprintf(type_line, sizeof(type_line), "# TYPE %.*s histogram\n",
                     (int)(n - sl), out);
            if (strstr(text, type_line) != NULL) {
                out[n - sl] = '\0';
                return;
            }
        }
    }
}

static void metrics_every_family_has_help_and_type(void **state)
{
    struct er_buf buf;
    const char *text;
    const char *p;
    size_t families = 0;

    (void)state;
    /* Give the label-set families a series each. */
    er_metrics_consumer_topic("envrun.commands");
    er_metrics_consumer_lag(0, 0);
    er_metrics_leases_set(
        (const struct er_metrics_row[]){ { "local", "active", 1 } }, 1);
    er_metrics_journal_set(
        (const struct er_metrics_row[]){ { "acquire", "started", 1 } }, 1);
    text = render_text(&buf);
    for (p = text; *p != '\0';) {
        const char *eol = strchr(p, '\n');
        char family[128];
        char want[192];

        assert_non_null(eol); /* every line ends in a newline */
        if (strncmp(p, "# TYPE ", 7) == 0) {
            families++;
        } else if (*p != '#') {
            const char *head;

            family_of(p, text, family, sizeof(family));
            assert_true(strncmp(family, "envrun_", 7) == 0);
            snprintf(want, sizeof(want), "# HELP %s ", family);
            head = strstr(text, want);
            if (head == NULL || head > p)
                fail_msg("no HELP before %.*s", (int)(eol - p), p);
            snprintf(want, sizeof(want), "# TYPE %s ", family);
            head = strstr(text, want);
            if (head == NULL || head > p)
                fail_msg("no TYPE before %.*s", (int)(eol - p), p);
        }
        p = eol + 1;
    }
    assert_true(families >= 20);
    er_buf_fini(&buf);
    er_metrics_consumer_lag(0, -1);
}

static void metrics_step_phases_are_histograms_in_seconds(void **state)
{
    static const char *const les[] = {
        "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
        "0.1",   "0.25",   "0.5",   "1",    "2.5",   "5",
        "10",    "30",     "60",    "300",  "+Inf",
    };
    long long before[17];
    long long after[17];
    double sum0 =
        sample_f("envrun_step_phase_duration_seconds_sum{phase=\"effect\"}");
    char series[128];
    size_t i;

    (void)state;
    for (i = 0; i < 17; i++) {
        snprintf(series, sizeof(series),
                 "envrun_step_phase_duration_seconds_bucket{phase=\"effect\","
                 "le=\"%s\"}",
                 les[i]);
        before[i] = sample(series);
    }
    er_metrics_step_phase(ER_METRICS_PHASE_EFFECT, 1000);      /* le 0.001 */
    er_metrics_step_phase(ER_METRICS_PHASE_EFFECT, 7000);      /* le 0.01 */
    er_metrics_step_phase(ER_METRICS_PHASE_EFFECT, 2000000);   /* le 2.5 */
    er_metrics_step_phase(ER_METRICS_PHASE_EFFECT, 900000000); /* +Inf */
    er_metrics_step_phase(ER_METRICS_PHASE_EFFECT, -5);        /* 0 */
    er_metrics_step_phase(ER_METRICS_PHASE_INTENT, 3000);      /* elsewhere */
    for (i = 0; i < 17; i++) {
        snprintf(series, sizeof(series),
                 "envrun_step_phase_duration_seconds_bucket{phase=\"effect\","
                 "le=\"%s\"}",
                 les[i]);
        after[i] = sample(series);
        if (i > 0)
            assert_true(after[i] >= after[i - 1]); /* cumulative */
    }
    assert_int_equal(after[0] - before[0], 2);   /* le 0.001 */
    assert_int_equal(after[3] - before[3], 3);   /* le 0.01 */
    assert_int_equal(after[9] - before[9], 3);   /* le 1 */
    assert_int_equal(after[10] - before[10], 4); /* le 2.5 */
    assert_int_equal(after[15] - before[15], 4); /* le 300 */
    assert_int_equal(after[16] - before[16], 5); /* +Inf */
    assert_int_equal(
        after[16],
        sample("envrun_step_phase_duration_seconds_count{phase=\"effect\"}"));
    assert_true(
        sample_f("envrun_step_phase_duration_seconds_sum{phase=\"effect\"}") -
            sum0 >
        902.00799);
    /* The kind's seconds histogram follows envrun_commands_total. */
    i = (size_t)sample(
        "envrun_command_duration_seconds_count{kind=\"realize\"}");
    er_metrics_command("realize", "ok", 30);
    assert_int_equal(
        sample("envrun_command_duration_seconds_count{kind=\"realize\"}"),
        (long long)i + 1);
}

#define FOLDED_LEASES \
    "envrun_metrics_folded_series_total{gauge=\"envrun_leases\"}"
#define FOLDED_JOURNAL \
    "envrun_metrics_folded_series_total{gauge=\"envrun_journal_inflight\"}"

/* Render; the sum of the values of the lines that start with prefix and
 * how many there are. Fails on a series shown twice. */
static void family_sum(const char *prefix, long long *sum, size_t *cnt)
{
    struct er_buf buf;
    const char *p;
    const char *text;
    size_t n = strlen(prefix);

    *sum = 0;
    *cnt = 0;
    text = render_text(&buf);
    for (p = text; *p != '\0';) {
        const char *eol = strchr(p, '\n');
        const char *sp = memchr(p, ' ', (size_t)(eol - p));

        assert_non_null(eol);
        if (strncmp(p, prefix, n) == 0) {
            const char *q;

            assert_non_null(sp);
            /* The same series (up to its value) on no other line. */
            for (q = text; *q != '\0'; q = strchr(q, '\n') + 1) {
                if (q != p && strncmp(q, p, (size_t)(sp - p + 1)) == 0)
                    fail_msg("series twice: %.*s", (int)(sp - p), p);
            }
            *sum += strtoll(sp + 1, NULL, 10);
            (*cnt)++;
        }
        p = eol + 1;
    }
    er_buf_fini(&buf);
}

static void metrics_label_values_are_escaped_and_bounded(void **state)
{
    struct er_metrics_row rows[40];
    char names[40][16];
    struct er_buf buf;
    long long folded0;
    long long sum;
    size_t series;
    size_t i;

    (void)state;
    er_buf_init(&buf, 64);
    assert_int_equal(er_metrics_escape_label(&buf, "a\"b\\c\nd"), 0);
    assert_int_equal(buf.len, strlen("a\\\"b\\\\c\\nd"));
    assert_memory_equal(buf.data, "a\\\"b\\\\c\\nd", buf.len);
    er_buf_fini(&buf);

    er_metrics_leases_set(
        (const struct er_metrics_row[]){ { "my\"drv\\x", "active", 3 },
                                         { "bad\nname", "active", 2 },
                                         { "local", "pending_cleanup", 1 } },
        3);
    assert_true(render_has_line(
        "envrun_leases{driver=\"my\\\"drv\\\\x\",status=\"active\"} 3"));
    /* Not printable: "other", never a line break in the exposition. */
    assert_true(
        render_has_line("envrun_leases{driver=\"other\",status=\"active\"} 2"));
    /* A series that is gone from the next pass reads 0. */
    er_metrics_leases_set(
        (const struct er_metrics_row[]){ { "local", "active", 4 } }, 1);
    assert_int_equal(
        sample("envrun_leases{driver=\"local\",status=\"pending_cleanup\"}"),
        0);
    assert_int_equal(
        sample("envrun_leases{driver=\"local\",status=\"active\"}"), 4);
    assert_int_equal(
        sample("envrun_leases{driver=\"other\",status=\"active\"}"), 0);
    /* More than 32 series: none is dropped (those past the table are
     * folded into {driver="other",status="other"} and counted). */
    for (i = 0; i < 40; i++) {
        snprintf(names[i], sizeof(names[i]), "d%zu", i);
        rows[i].a = names[i];
        rows[i].b = "active";
        rows[i].val = 1;
    }
    folded0 = sample(FOLDED_LEASES);
    er_metrics_leases_set(rows, 40);
    assert_true(
        render_has_line("envrun_leases{driver=\"d27\",status=\"active\"} 1"));
    family_sum("envrun_leases{", &sum, &series);
    assert_int_equal(sum, 40);
    assert_true(series <= 33);
    assert_true(sample(FOLDED_LEASES) > folded0);

    er_metrics_journal_set(
        (const struct er_metrics_row[]){ { "acquire", "started", 2 },
                                         { "release", "interrupted", 1 } },
        2);
    assert_int_equal(
        sample("envrun_journal_inflight{kind=\"acquire\",state=\"started\"}"),
        2);
    er_metrics_journal_set(NULL, 0);
    assert_int_equal(
        sample("envrun_journal_inflight{kind=\"acquire\",state=\"started\"}"),
        0);
}

/* envrun_journal_inflight{kind="<kind>",state="s"} */
static const char *journal_series(const char *kind, char *out, size_t len)
{
    snprintf(out, len, "envrun_journal_inflight{kind=\"%s\",state=\"s\"}",
             kind);
    return out;
}

/* Whether the journal gauge shows the series of kind (at any value). */
static bool journal_shows(const char *kind)
{
    char series[128];
    char line[140];
    struct er_buf buf;
    bool is_shown;

    snprintf(line, sizeof(line), "\n%s ",
             journal_series(kind, series, sizeof(series)));
    is_shown = strstr(render_text(&buf), line) != NULL;
    er_buf_fini(&buf);
    return is_shown;
}

/* Set the journal gauge to the series x<i> (value 1) for i in [0, 32)
 * but those in skip ("x0,x1,"), and the extra rows (at most 8). */
static void journal_pass(const char *skip, const struct er_metrics_row *extra,
                         size_t extra_cnt)
{
    static char names[32][8];
    struct er_metrics_row rows[40];
    char listed[8];
    size_t n = 0;
    size_t i;

    for (i = 0; i < 32; i++) {
        snprintf(names[i], sizeof(names[i]), "x%zu", i);
        snprintf(listed, sizeof(listed), "x%zu,", i);
        if (strstr(skip, listed) != NULL)
            continue;
        rows[n].a = names[i];
        rows[n].b = "s";
        rows[n].val = 1;
        n++;
    }
    for (i = 0; i < extra_cnt; i++)
        rows[n++] = extra[i];
    er_metrics_journal_set(rows, n);
}

/* A full table (32 series) makes room for a new series by evicting the
 * one that has read 0 longest, never one that went to 0 in this very
 * pass; with none to evict the new series is folded into the "other"
 * series and counted, never dropped. */
static void metrics_full_table_evicts_zero_series_then_folds(void **state)
{
    const struct er_metrics_row n0[] = { { "n0", "s", 5 } };
    const struct er_metrics_row n0n1[] = { { "n0", "s", 5 },
                                           { "n1", "s", 2 },
                                           { "n1", "s", 1 } };
    const struct er_metrics_row mine[] = { { "bad\nkind", "bad\nstate", 4 } };
    const char *other =
        "envrun_journal_inflight{kind=\"other\",state=\"other\"}";
    char series[128];
    long long folded0;
    long long sum;
    size_t cnt;

    (void)state;
    /* A known state whatever the cases before left: every series read 0
     * for two passes, then x0..x31 take the whole table. */
    er_metrics_journal_set(NULL, 0);
    er_metrics_journal_set(NULL, 0);
    journal_pass("", NULL, 0);
    journal_pass("", NULL, 0);
    family_sum("envrun_journal_inflight{kind=\"x", &sum, &cnt);
    assert_int_equal(sum, 32);
    assert_int_equal(cnt, 32);
    folded0 = sample(FOLDED_JOURNAL);

    /* x0 went to 0 in this pass: shown at 0, not evicted; n0 folded. */
    journal_pass("x0,", n0, 1);
    assert_int_equal(sample(journal_series("x0", series, sizeof(series))), 0);
    assert_false(journal_shows("n0"));
    assert_int_equal(sample(other), 5);
    assert_int_equal(sample(FOLDED_JOURNAL), folded0 + 1);

    /* x0 has read 0 since the last pass: n0 takes its place. */
    journal_pass("x0,", n0, 1);
    assert_false(journal_shows("x0"));
    assert_int_equal(sample(journal_series("n0", series, sizeof(series))), 5);
    assert_int_equal(sample(other), 0);
    assert_int_equal(sample(FOLDED_JOURNAL), folded0 + 1);

    /* x1 reads 0 for a pass longer than x2 does: n1 (two rows of it)
     * evicts x1; x2 stays at 0. */
    journal_pass("x0,x1,", n0, 1);
    journal_pass("x0,x1,x2,", n0, 1);
    journal_pass("x0,x1,x2,", n0n1, 3);
    assert_false(journal_shows("x1"));
    assert_int_equal(sample(journal_series("x2", series, sizeof(series))), 0);
    assert_int_equal(sample(journal_series("n1", series, sizeof(series))), 3);
    assert_int_equal(sample(FOLDED_JOURNAL), folded0 + 1);

    /* A row whose labels read "other" is that same series, not folded. */
    journal_pass("x0,x1,x2,", mine, 1);
    assert_int_equal(sample(other), 4);
    assert_int_equal(sample(FOLDED_JOURNAL), folded0 + 1);
    family_sum("envrun_journal_inflight{", &sum, &cnt);
    assert_int_equal(sum, 29 + 4);
    assert_true(cnt <= 33);
}

static void metrics_consumer_lag_per_partition(void **state)
{
    (void)state;
    er_metrics_consumer_topic("envrun.commands");
    er_metrics_consumer_topic("ignored.commands"); /* the first one stays */
    er_metrics_consumer_lag(3, 12);
    er_metrics_consumer_lag(0, 0);
    er_metrics_consumer_lag(5000, 1); /* beyond the table: ignored */
    assert_int_equal(sample("envrun_consumer_lag{topic=\"envrun.commands\","
                            "partition=\"3\"}"),
                     12);
    assert_int_equal(sample("envrun_consumer_lag{topic=\"envrun.commands\","
                            "partition=\"0\"}"),
                     0);
    /* Revoked: the series goes. */
    er_metrics_consumer_lag(3, -1);
    assert_false(
        render_has_line("envrun_consumer_lag{topic=\"envrun.commands\","
                        "partition=\"3\"} 12"));
    er_metrics_consumer_lag(0, -1);
}

static void metrics_outbox_lag_and_age(void **state)
{
    long long cnt0 = sample("envrun_outbox_publish_lag_seconds_count");
    long long le5_0 =
        sample("envrun_outbox_publish_lag_seconds_bucket{le=\"5\"}");
    double age;

    (void)state;
    er_metrics_outbox_publish_lag(4000);
    er_metrics_outbox_publish_lag(40000);
    assert_int_equal(sample("envrun_outbox_publish_lag_seconds_count"),
                     cnt0 + 2);
    assert_int_equal(
        sample("envrun_outbox_publish_lag_seconds_bucket{le=\"5\"}"),
        le5_0 + 1);
    er_metrics_outbox_oldest(er_time_now_ms() - 5000);
    age = sample_f("envrun_outbox_oldest_age_seconds");
    assert_true(age >= 5.0 && age < 60.0);
    er_metrics_outbox_oldest(0);
    assert_true(sample_f("envrun_outbox_oldest_age_seconds") == 0.0);
    /* A database clock ahead of ours is no negative age. */
    er_metrics_outbox_oldest(er_time_now_ms() + 60000);
    assert_true(sample_f("envrun_outbox_oldest_age_seconds") == 0.0);
    er_metrics_outbox_oldest(0);
}

static void metrics_reaper_and_bridge_counters(void **state)
{
    const char *expired = "envrun_reaper_actions_total{action=\"expired\"}";
    const char *unrec =
        "envrun_reaper_actions_total{action=\"unrecorded_failed\"}";
    const char *q2 = "envrun_bridge_requests_total{transport=\"queue_v1\","
                     "status=\"2xx\"}";
    const char *s5 = "envrun_bridge_requests_total{transport=\"stream_v1\","
                     "status=\"5xx\"}";
    const char *so = "envrun_bridge_requests_total{transport=\"stream_v1\","
                     "status=\"other\"}";
    long long expired0 = sample(expired);
    long long unrec0 = sample(unrec);
    long long ok0 = sample("envrun_reaper_passes_total{outcome=\"ok\"}");
    long long err0 = sample("envrun_reaper_passes_total{outcome=\"error\"}");
    long long q20 = sample(q2);
    long long s50 = sample(s5);
    long long so0 = sample(so);

    (void)state;
    er_metrics_reaper_action(ER_METRICS_REAP_EXPIRED);
    er_metrics_reaper_action(ER_METRICS_REAP_EXPIRED);
    er_metrics_reaper_action(ER_METRICS_REAP_UNRECORDED_FAILED);
    er_metrics_reaper_pass(true);
    er_metrics_reaper_pass(false);
    er_bridge_fwd_count(ER_BRIDGE_COUNT_QUEUE_V1, 204);
    er_bridge_fwd_count(ER_BRIDGE_COUNT_STREAM_V1, 504);
    er_bridge_fwd_count(ER_BRIDGE_COUNT_STREAM_V1, 0);
    er_bridge_fwd_count(ER_BRIDGE_COUNT_STREAM_V1, 600);
    assert_int_equal(sample(expired), expired0 + 2);
    assert_int_equal(sample(unrec), unrec0 + 1);
    assert_int_equal(sample("envrun_reaper_passes_total{outcome=\"ok\"}"),
                     ok0 + 1);
    assert_int_equal(sample("envrun_reaper_passes_total{outcome=\"error\"}"),
                     err0 + 1);
    assert_int_equal(sample(q2), q20 + 1);
    assert_int_equal(sample(s5), s50 + 1);
    assert_int_equal(sample(so), so0 + 2);
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
        cmocka_unit_test(metrics_every_family_has_help_and_type),
        cmocka_unit_test(metrics_step_phases_are_histograms_in_seconds),
        cmocka_unit_test(metrics_label_values_are_escaped_and_bounded),
        cmocka_unit_test(metrics_full_table_evicts_zero_series_then_folds),
        cmocka_unit_test(metrics_consumer_lag_per_partition),
        cmocka_unit_test(metrics_outbox_lag_and_age),
        cmocka_unit_test(metrics_reaper_and_bridge_counters),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
