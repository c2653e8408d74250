/* metrics: process-wide counters, gauges and histograms in C11 atomics,
 * rendered in the Prometheus text format 0.0.4. Thread-safe; counting is
 * lock-free. The two tables a background pass sets as a whole (leases,
 * journal) sit under one mutex that only their setter and the renderer
 * take. Owns only its static state. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "bridge/bridge.h"
#include "worker/worker.h"

#define KIND_CNT          3
#define OUTCOME_CNT       3
#define BUCKET_CNT        12 /* 11 finite bounds and +Inf */
#define SEC_BUCKET_CNT    17 /* 16 finite bounds and +Inf */
#define LAG_PARTITION_MAX 1024
#define TOPIC_MAX         256
#define TABLE_MAX         32 /* label pairs of one set-as-a-whole gauge */
#define LABEL_MAX         48

static const char *const kind_names[KIND_CNT] = { "acquire", "realize",
                                                  "release" };
static const char *const outcome_names[OUTCOME_CNT] = { "ok", "error",
                                                        "deferred" };
static const char *const phase_names[ER_METRICS_PHASE_CNT] = { "intent",
                                                               "effect",
                                                               "outcome" };
static const char *const reap_names[ER_METRICS_REAP_CNT] = {
    "expired",        "pending_cleanup",     "cleanup_retried",
    "cleanup_failed", "unrecorded_released", "unrecorded_failed",
};
static const char *const transport_names[ER_BRIDGE_COUNT_TRANSPORTS] = {
    "queue_v1", "stream_v1"
};
static const char *const class_names[ER_BRIDGE_COUNT_CLASSES] = {
    "1xx", "2xx", "3xx", "4xx", "5xx", "other"
};
/* Upper bounds in ms; the last bucket (+Inf) has no bound. */
static const int64_t bucket_bounds_ms[BUCKET_CNT - 1] = { 1,    5,    10,  25,
                                                          50,   100,  250, 500,
                                                          1000, 2500, 5000 };
/* Upper bounds in microseconds of the _seconds histograms: a database
 * transaction takes about a millisecond, a provision command minutes. */
static const int64_t sec_bounds_us[SEC_BUCKET_CNT - 1] = {
    1000,   2500,    5000,    10000,   25000,    50000,    100000,   250000,
    500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000, 300000000
};

/* A histogram of durations in seconds. Per-bucket (not cumulative)
 * counts; rendering accumulates them, so +Inf and _count always agree. */
struct hist {
    atomic_uint_fast64_t buckets[SEC_BUCKET_CNT];
    atomic_uint_fast64_t sum_us;
};

/* One series of a gauge set as a whole by a background pass. */
struct table_row {
    char a[LABEL_MAX];
    char b[LABEL_MAX];
    int64_t val;
    uint64_t zero_since; /* the pass since which it reads 0; 0: not 0 */
    bool is_named;       /* the pass under way has a row of it */
    bool is_added;       /* the pass under way made it */
};

/* Series are never removed, only set to 0 (a gauge that went to zero, not
 * one that vanished), so a full table makes room by evicting the series
 * that has read 0 the longest; when none has, a new series is folded into
 * the overflow series {a="other", b="other"} and counted. */
struct table {
    struct table_row rows[TABLE_MAX];
    size_t cnt;
    uint64_t pass; /* table_set calls */
    int64_t overflow_val;
    bool has_overflow;   /* the overflow series was ever shown */
    uint64_t folded_cnt; /* rows folded into it, over all passes */
    const char *family;  /* the gauge's name */
};

static atomic_uint_fast64_t commands[KIND_CNT][OUTCOME_CNT];
static atomic_uint_fast64_t duration_buckets[BUCKET_CNT];
static atomic_uint_fast64_t duration_sum_ms;
static struct hist command_seconds[KIND_CNT];
static struct hist phase_seconds[ER_METRICS_PHASE_CNT];
static struct hist publish_lag;
static atomic_uint_fast64_t dlq_cnt;
static atomic_uint_fast64_t retry_cnt;
static atomic_uint_fast64_t replay_cnt;
static atomic_uint_fast64_t outbox_published_cnt;
static atomic_uint_fast64_t outbox_quarantined_cnt;
static atomic_int_fast64_t outbox_backlog;
static atomic_int_fast64_t outbox_oldest_ms; /* created_at; 0: none */
static atomic_int_fast64_t inflight;
static atomic_uint_fast64_t reap_cnt[ER_METRICS_REAP_CNT];
static atomic_uint_fast64_t reaper_passes[2]; /* ok, error */
/* Lag of each partition plus one; 0: not assigned here. */
static atomic_int_fast64_t lag_plus_one[LAG_PARTITION_MAX];
static char lag_topic[TOPIC_MAX];
static atomic_bool has_lag_topic;
static pthread_mutex_t table_mu = PTHREAD_MUTEX_INITIALIZER;
/* envrun_leases{driver,status}, envrun_journal_inflight{kind,state}. */
static struct table leases = { .family = "envrun_leases" };
static struct table journal = { .family = "envrun_journal_inflight" };
static atomic_bool is_db_ready;
static atomic_bool is_kafka_ready;
/* The relay's parts are kept apart from the consumer's (which sets
 * is_kafka_ready on assignment) so neither overwrites the other. They are
 * stored negated so that zero-initialised means "fine until told". */
static atomic_bool is_relay_db_down;
static atomic_bool is_producer_down;
static atomic_bool is_shutting_down;

static int name_index(const char *const *names, int cnt, const char *s)
{
    int i;

    if (s == NULL)
        return -1;
    for (i = 0; i < cnt; i++) {
        if (strcmp(names[i], s) == 0)
            return i;
    }
    return -1;
}

static void hist_observe(struct hist *hg, int64_t duration_us)
{
    int b;

    if (duration_us < 0)
        duration_us = 0; /* a clock step; count it as instant */
    for (b = 0; b < SEC_BUCKET_CNT - 1; b++) {
        if (duration_us <= sec_bounds_us[b])
            break;
    }
    atomic_fetch_add_explicit(&hg->buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&hg->sum_us, (uint_fast64_t)duration_us,
                              memory_order_relaxed);
}

int64_t er_metrics_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void er_metrics_command(const char *kind, const char *outcome,
                        int64_t duration_ms)
{
    int k = name_index(kind_names, KIND_CNT, kind);
    int o = name_index(outcome_names, OUTCOME_CNT, outcome);
    int b;

    if (k < 0 || o < 0)
        return; /* the wire enums have no other values */
    if (duration_ms < 0)
        duration_ms = 0; /* a clock step; count it as instant */
    for (b = 0; b < BUCKET_CNT - 1; b++) {
        if (duration_ms <= bucket_bounds_ms[b])
            break;
    }
    atomic_fetch_add_explicit(&commands[k][o], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&duration_buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&duration_sum_ms, (uint_fast64_t)duration_ms,
                              memory_order_relaxed);
    hist_observe(&command_seconds[k], duration_ms * 1000);
}

void er_metrics_step_phase(enum er_metrics_phase phase, int64_t duration_us)
{
    ER_ASSERT((unsigned)phase < ER_METRICS_PHASE_CNT);
    hist_observe(&phase_seconds[phase], duration_us);
}

void er_metrics_dlq(void)
{
    atomic_fetch_add_explicit(&dlq_cnt, 1, memory_order_relaxed);
}

void er_metrics_retry(void)
{
    atomic_fetch_add_explicit(&retry_cnt, 1, memory_order_relaxed);
}

void er_metrics_replay(void)
{
    atomic_fetch_add_explicit(&replay_cnt, 1, memory_order_relaxed);
}

void er_metrics_outbox_published(uint64_t n)
{
    atomic_fetch_add_explicit(&outbox_published_cnt, n, memory_order_relaxed);
}

void er_metrics_outbox_quarantined(uint64_t n)
{
    atomic_fetch_add_explicit(&outbox_quarantined_cnt, n, memory_order_relaxed);
}

void er_metrics_outbox_backlog(int64_t n)
{
    atomic_store_explicit(&outbox_backlog, n, memory_order_relaxed);
}

void er_metrics_outbox_oldest(int64_t created_ms)
{
    atomic_store_explicit(&outbox_oldest_ms, created_ms > 0 ? created_ms : 0,
                          memory_order_relaxed);
}

void er_metrics_outbox_publish_lag(int64_t lag_ms)
{
    hist_observe(&publish_lag, lag_ms * 1000);
}

void er_metrics_inflight(int64_t n)
{
    atomic_store_explicit(&inflight, n, memory_order_relaxed);
}

void er_metrics_consumer_topic(const char *topic)
{
    if (atomic_load(&has_lag_topic))
        return; /* one commands topic per process */
    snprintf(lag_topic, sizeof(lag_topic), "%s", topic);
    atomic_store(&has_lag_topic, true);
}

void er_metrics_consumer_lag(int32_t partition, int64_t lag)
{
    if (partition < 0 || partition >= LAG_PARTITION_MAX)
        return;
    atomic_store_explicit(&lag_plus_one[partition], lag < 0 ? 0 : lag + 1,
                          memory_order_relaxed);
}

void er_metrics_reaper_action(enum er_metrics_reap action)
{
    ER_ASSERT((unsigned)action < ER_METRICS_REAP_CNT);
    atomic_fetch_add_explicit(&reap_cnt[action], 1, memory_order_relaxed);
}

void er_metrics_reaper_pass(bool is_ok)
{
    atomic_fetch_add_explicit(&reaper_passes[is_ok ? 0 : 1], 1,
                              memory_order_relaxed);
}

/* A label value from the database: printable ASCII of at most LABEL_MAX
 * - 1 bytes, else "other", so a strange row cannot make a strange series
 * (escaping still applies when rendered). */
static void label_copy(char out[LABEL_MAX], const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    size_t i;

    for (i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e)
            break;
    }
    if (n == 0 || n >= LABEL_MAX || i < n)
        s = "other";
    snprintf(out, LABEL_MAX, "%s", s);
}

static struct table_row *table_find(struct table *t, const char *a,
                                    const char *b)
{
    size_t j;

    for (j = 0; j < t->cnt; j++) {
        if (strcmp(t->rows[j].a, a) == 0 && strcmp(t->rows[j].b, b) == 0)
            return &t->rows[j];
    }
    return NULL;
}

/* The row a new series may take when the table is full: of those that
 * read 0 before this pass and are not in it, the one that has longest;
 * NULL when there is none. A series that just went to 0 is shown at 0 for
 * one pass at least before it can go. */
static struct table_row *table_evictable(struct table *t)
{
    struct table_row *best = NULL;
    size_t j;

    for (j = 0; j < t->cnt; j++) {
        struct table_row *r = &t->rows[j];

        if (r->is_named || r->zero_since == 0 || r->zero_since >= t->pass)
            continue;
        if (best == NULL || r->zero_since < best->zero_since)
            best = r;
    }
    return best;
}

/* Count row into t. The first pass over a refresh's rows (is_new false)
 * counts the series the table has; the second counts the others, each
 * into a row of its own (a free one, an evicted one) or the overflow. */
static void table_add(struct table *t, const struct er_metrics_row *row,
                      bool is_new)
{
    char a[LABEL_MAX];
    char b[LABEL_MAX];
    struct table_row *r;

    label_copy(a, row->a);
    label_copy(b, row->b);
    if (strcmp(a, "other") == 0 && strcmp(b, "other") == 0) {
        /* The overflow series' own labels: the same series. */
        if (!is_new) {
            t->overflow_val += row->val;
            t->has_overflow = true;
        }
        return;
    }
    r = table_find(t, a, b);
    if (!is_new) {
        if (r != NULL) {
            r->is_named = true;
            r->val += row->val;
        }
        return;
    }
    if (r != NULL) {
        if (r->is_added)
            r->val += row->val; /* a second row of a new series */
        return;
    }
    r = t->cnt < TABLE_MAX ? &t->rows[t->cnt++] : table_evictable(t);
    if (r == NULL) {
        t->overflow_val += row->val;
        t->has_overflow = true;
        t->folded_cnt++;
        return;
    }
    memcpy(r->a, a, sizeof(a));
    memcpy(r->b, b, sizeof(b));
    r->val = row->val;
    r->zero_since = 0;
    r->is_named = true;
    r->is_added = true;
}

/* Replace the table's values by rows: a series seen before and missing now
 * reads 0; a new one past TABLE_MAX takes the row of one that has read 0
 * longest, or is folded into the overflow series. */
static void table_set(struct table *t, const struct er_metrics_row *rows,
                      size_t cnt)
{
    size_t i;
    size_t j;

    pthread_mutex_lock(&table_mu);
    t->pass++;
    for (j = 0; j < t->cnt; j++) {
        t->rows[j].val = 0;
        t->rows[j].is_named = false;
        t->rows[j].is_added = false;
    }
    t->overflow_val = 0;
    /* Known series first, so that none is evicted for a new one while a
     * row of this pass names it. */
    for (i = 0; i < cnt; i++)
        table_add(t, &rows[i], false);
    for (i = 0; i < cnt; i++)
        table_add(t, &rows[i], true);
    for (j = 0; j < t->cnt; j++) {
        struct table_row *r = &t->rows[j];

        if (r->val != 0)
            r->zero_since = 0;
        else if (r->zero_since == 0)
            r->zero_since = t->pass;
    }
    pthread_mutex_unlock(&table_mu);
}

void er_metrics_leases_set(const struct er_metrics_row *rows, size_t cnt)
{
    table_set(&leases, rows, cnt);
}

void er_metrics_journal_set(const struct er_metrics_row *rows, size_t cnt)
{
    table_set(&journal, rows, cnt);
}

void er_metrics_set_db_ready(bool is_ready)
{
    atomic_store(&is_db_ready, is_ready);
}

void er_metrics_set_kafka_ready(bool is_ready)
{
    atomic_store(&is_kafka_ready, is_ready);
}

void er_metrics_set_relay_db_ready(bool is_ready)
{
    atomic_store(&is_relay_db_down, !is_ready);
}

void er_metrics_set_producer_ready(bool is_ready)
{
    atomic_store(&is_producer_down, !is_ready);
}

void er_metrics_set_draining(bool is_draining)
{
    atomic_store(&is_shutting_down, is_draining);
}

static bool db_is_ready(void)
{
    return atomic_load(&is_db_ready) && !atomic_load(&is_relay_db_down);
}

static bool kafka_is_ready(void)
{
    return atomic_load(&is_kafka_ready) && !atomic_load(&is_producer_down);
}

bool er_metrics_is_ready(void)
{
    return db_is_ready() && kafka_is_ready() && !atomic_load(&is_shutting_down);
}

/* ================================================================
 * Rendering
 * ================================================================ */

static int put_head(struct er_buf *out, const char *name, const char *type,
                    const char *help)
{
    return er_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                         type);
}

int er_metrics_escape_label(struct er_buf *out, const char *value)
{
    const char *p;
    int rc = 0;

    for (p = value; *p != '\0' && rc == 0; p++) {
        if (*p == '\\')
            rc = er_buf_append(out, "\\\\", 2);
        else if (*p == '"')
            rc = er_buf_append(out, "\\\"", 2);
        else if (*p == '\n')
            rc = er_buf_append(out, "\\n", 2);
        else
            rc = er_buf_append(out, p, 1);
    }
    return rc;
}

/* name{k1="v1",k2="v2"} val: the values escaped; k2 may be NULL. */
static int put_sample2(struct er_buf *out, const char *name, const char *k1,
                       const char *v1, const char *k2, const char *v2,
                       int64_t val)
{
    int rc = er_buf_printf(out, "%s{%s=\"", name, k1);

    if (rc == 0)
        rc = er_metrics_escape_label(out, v1);
    if (rc == 0 && k2 != NULL)
        rc = er_buf_printf(out, "\",%s=\"", k2);
    if (rc == 0 && k2 != NULL)
        rc = er_metrics_escape_label(out, v2);
    if (rc == 0)
        rc = er_buf_printf(out, "\"} %" PRId64 "\n", val);
    return rc;
}

static int put_counter(struct er_buf *out, const char *name, const char *help,
                       atomic_uint_fast64_t *cnt)
{
    int rc = put_head(out, name, "counter", help);

    if (rc != 0)
        return rc;
    return er_buf_printf(out, "%s %" PRIuFAST64 "\n", name,
                         atomic_load_explicit(cnt, memory_order_relaxed));
}

static int put_gauge(struct er_buf *out, const char *name, const char *help,
                     atomic_int_fast64_t *val)
{
    int rc = put_head(out, name, "gauge", help);

    if (rc != 0)
        return rc;
    return er_buf_printf(out, "%s %" PRIdFAST64 "\n", name,
                         atomic_load_explicit(val, memory_order_relaxed));
}

static int put_commands(struct er_buf *out)
{
    int rc;
    int k;
    int o;

    rc = put_head(out, "envrun_commands_total", "counter",
                  "Command steps finished, by kind and outcome.");
    for (k = 0; k < KIND_CNT && rc == 0; k++) {
        for (o = 0; o < OUTCOME_CNT && rc == 0; o++) {
            rc = er_buf_printf(
                out,
                "envrun_commands_total{kind=\"%s\",outcome=\"%s\"} "
                "%" PRIuFAST64 "\n",
                kind_names[k], outcome_names[o],
                atomic_load_explicit(&commands[k][o], memory_order_relaxed));
        }
    }
    return rc;
}

static int put_duration(struct er_buf *out)
{
    uint_fast64_t total = 0;
    int rc;
    int b;

    rc = put_head(out, "envrun_command_duration_ms", "histogram",
                  "Duration of command steps in milliseconds (kept for "
                  "existing dashboards; see "
                  "envrun_command_duration_seconds).");
    for (b = 0; b < BUCKET_CNT && rc == 0; b++) {
        total +=
            atomic_load_explicit(&duration_buckets[b], memory_order_relaxed);
        if (b < BUCKET_CNT - 1)
            rc = er_buf_printf(out,
                               "envrun_command_duration_ms_bucket{le=\"%" PRId64
                               "\"} %" PRIuFAST64 "\n",
                               bucket_bounds_ms[b], total);
        else
            rc = er_buf_printf(out,
                               "envrun_command_duration_ms_bucket{le=\"+Inf\"}"
                               " %" PRIuFAST64 "\n",
                               total);
    }
    if (rc == 0)
        rc = er_buf_printf(
            out, "envrun_command_duration_ms_sum %" PRIuFAST64 "\n",
            atomic_load_explicit(&duration_sum_ms, memory_order_relaxed));
    if (rc == 0)
        rc = er_buf_printf(
            out, "envrun_command_duration_ms_count %" PRIuFAST64 "\n", total);
    return rc;
}

/* One series of a _seconds histogram; label NULL: none, else
 * label="value" (value one of ours, not escaped). */
static int put_hist(struct er_buf *out, const char *name, const char *label,
                    const char *value, struct hist *hg)
{
    char sel[96] = "";
    uint_fast64_t total = 0;
    uint_fast64_t sum_us;
    int rc = 0;
    int b;

    if (label != NULL)
        snprintf(sel, sizeof(sel), "%s=\"%s\",", label, value);
    for (b = 0; b < SEC_BUCKET_CNT && rc == 0; b++) {
        total += atomic_load_explicit(&hg->buckets[b], memory_order_relaxed);
        if (b < SEC_BUCKET_CNT - 1)
            rc =
                er_buf_printf(out, "%s_bucket{%sle=\"%g\"} %" PRIuFAST64 "\n",
                              name, sel, (double)sec_bounds_us[b] / 1e6, total);
        else
            rc =
                er_buf_printf(out, "%s_bucket{%sle=\"+Inf\"} %" PRIuFAST64 "\n",
                              name, sel, total);
    }
    if (label != NULL)
        snprintf(sel, sizeof(sel), "{%s=\"%s\"}", label, value);
    sum_us = atomic_load_explicit(&hg->sum_us, memory_order_relaxed);
    if (rc == 0)
        rc = er_buf_printf(out, "%s_sum%s %.6f\n", name, sel,
                           (double)sum_us / 1e6);
    if (rc == 0)
        rc = er_buf_printf(out, "%s_count%s %" PRIuFAST64 "\n", name, sel,
                           total);
    return rc;
}

static int put_histograms(struct er_buf *out)
{
    int rc;
    int i;

    rc = put_head(out, "envrun_command_duration_seconds", "histogram",
                  "Duration of command steps in seconds, by kind (decode to "
                  "commit; a replayed or dead-lettered command is not "
                  "counted).");
    for (i = 0; i < KIND_CNT && rc == 0; i++)
        rc = put_hist(out, "envrun_command_duration_seconds", "kind",
                      kind_names[i], &command_seconds[i]);
    if (rc == 0)
        rc = put_head(out, "envrun_step_phase_duration_seconds", "histogram",
                      "Duration of a step's phases in seconds: intent (the "
                      "transaction that journals a driver operation), "
                      "effect (the driver's work, no transaction open), "
                      "outcome (the transaction that records the result; "
                      "for a one-transaction step, all of it).");
    for (i = 0; i < ER_METRICS_PHASE_CNT && rc == 0; i++)
        rc = put_hist(out, "envrun_step_phase_duration_seconds", "phase",
                      phase_names[i], &phase_seconds[i]);
    if (rc == 0)
        rc = put_head(out, "envrun_outbox_publish_lag_seconds", "histogram",
                      "Seconds from an outbox row's creation to the broker's "
                      "delivery report of its record.");
    if (rc == 0)
        rc = put_hist(out, "envrun_outbox_publish_lag_seconds", NULL, NULL,
                      &publish_lag);
    return rc;
}

static int put_outbox_age(struct er_buf *out)
{
    int64_t oldest =
        atomic_load_explicit(&outbox_oldest_ms, memory_order_relaxed);
    int64_t age_ms = oldest > 0 ? er_time_now_ms() - oldest : 0;
    int rc;

    if (age_ms < 0)
        age_ms = 0; /* the database's clock is ahead of ours */
    rc = put_head(out, "envrun_outbox_oldest_age_seconds", "gauge",
                  "Age of the oldest outbox row waiting to be published, as "
                  "this worker's relay last fetched it (0: none waiting, or "
                  "another worker's relay publishes).");
    if (rc == 0)
        rc = er_buf_printf(
            out, "envrun_outbox_oldest_age_seconds %" PRId64 ".%03" PRId64 "\n",
            age_ms / 1000, age_ms % 1000);
    return rc;
}

static int put_lag(struct er_buf *out)
{
    int rc;
    int p;

    rc = put_head(out, "envrun_consumer_lag", "gauge",
                  "Commands of a partition assigned to this worker not "
                  "processed yet: the high watermark minus the consumed "
                  "position, plus consumed commands whose step has not "
                  "finished.");
    if (!atomic_load(&has_lag_topic))
        return rc;
    for (p = 0; p < LAG_PARTITION_MAX && rc == 0; p++) {
        int64_t v =
            atomic_load_explicit(&lag_plus_one[p], memory_order_relaxed);
        char part[16];

        if (v == 0)
            continue;
        snprintf(part, sizeof(part), "%d", p);
        rc = put_sample2(out, "envrun_consumer_lag", "topic", lag_topic,
                         "partition", part, v - 1);
    }
    return rc;
}

static int put_table(struct er_buf *out, const char *help, const char *ka,
                     const char *kb, const struct table *t)
{
    int rc = put_head(out, t->family, "gauge", help);
    size_t i;

    pthread_mutex_lock(&table_mu);
    for (i = 0; i < t->cnt && rc == 0; i++)
        rc = put_sample2(out, t->family, ka, t->rows[i].a, kb, t->rows[i].b,
                         t->rows[i].val);
    if (rc == 0 && t->has_overflow)
        rc = put_sample2(out, t->family, ka, "other", kb, "other",
                         t->overflow_val);
    pthread_mutex_unlock(&table_mu);
    return rc;
}

static int put_folded(struct er_buf *out)
{
    const struct table *const tables[] = { &leases, &journal };
    int rc;
    size_t i;

    rc = put_head(out, "envrun_metrics_folded_series_total", "counter",
                  "Rows of a refresh of a gauge by labels folded into its "
                  "series with the label values \"other\" because the "
                  "gauge already shows 32 series, none of them 0 for a "
                  "while (the gauge's name in label gauge).");
    pthread_mutex_lock(&table_mu);
    for (i = 0; i < sizeof(tables) / sizeof(tables[0]) && rc == 0; i++)
        rc = put_sample2(out, "envrun_metrics_folded_series_total", "gauge",
                         tables[i]->family, NULL, NULL,
                         (int64_t)tables[i]->folded_cnt);
    pthread_mutex_unlock(&table_mu);
    return rc;
}

static int put_reaper(struct er_buf *out)
{
    int rc;
    int i;

    rc = put_head(out, "envrun_reaper_actions_total", "counter",
                  "What the reaper did to a lease or an unrecorded "
                  "acquisition, by action.");
    for (i = 0; i < ER_METRICS_REAP_CNT && rc == 0; i++)
        rc = put_sample2(
            out, "envrun_reaper_actions_total", "action", reap_names[i], NULL,
            NULL,
            (int64_t)atomic_load_explicit(&reap_cnt[i], memory_order_relaxed));
    if (rc == 0)
        rc = put_head(out, "envrun_reaper_passes_total", "counter",
                      "Reaper passes (sweeps), by outcome.");
    if (rc == 0)
        rc = put_sample2(out, "envrun_reaper_passes_total", "outcome", "ok",
                         NULL, NULL,
                         (int64_t)atomic_load_explicit(&reaper_passes[0],
                                                       memory_order_relaxed));
    if (rc == 0)
        rc = put_sample2(out, "envrun_reaper_passes_total", "outcome", "error",
                         NULL, NULL,
                         (int64_t)atomic_load_explicit(&reaper_passes[1],
                                                       memory_order_relaxed));
    return rc;
}

static int put_bridge(struct er_buf *out)
{
    int rc;
    int t;
    int c;

    rc = put_head(out, "envrun_bridge_requests_total", "counter",
                  "Callback bridge requests answered by this worker, by "
                  "transport and HTTP status class of the answer.");
    for (t = 0; t < ER_BRIDGE_COUNT_TRANSPORTS && rc == 0; t++) {
        for (c = 0; c < ER_BRIDGE_COUNT_CLASSES && rc == 0; c++)
            rc = put_sample2(out, "envrun_bridge_requests_total", "transport",
                             transport_names[t], "status", class_names[c],
                             (int64_t)er_bridge_fwd_count_get(t, c));
    }
    return rc;
}

static int put_ready(struct er_buf *out)
{
    int rc;

    rc = put_head(out, "envrun_ready", "gauge",
                  "1 when the part is ready (db: migrated, and reachable "
                  "from the outbox relay; kafka: in its consumer group, "
                  "and the relay's producer reaches a broker).");
    if (rc == 0)
        rc = er_buf_printf(out, "envrun_ready{part=\"db\"} %d\n",
                           db_is_ready() ? 1 : 0);
    if (rc == 0)
        rc = er_buf_printf(out, "envrun_ready{part=\"kafka\"} %d\n",
                           kafka_is_ready() ? 1 : 0);
    if (rc == 0)
        rc = put_head(out, "envrun_draining", "gauge",
                      "1 once the worker is shutting down (not ready).");
    if (rc == 0)
        rc = er_buf_printf(out, "envrun_draining %d\n",
                           atomic_load(&is_shutting_down) ? 1 : 0);
    return rc;
}

int er_metrics_render(struct er_buf *out)
{
    int rc;

    ER_ASSERT(out != NULL);
    rc = put_commands(out);
    if (rc == 0)
        rc = put_duration(out);
    if (rc == 0)
        rc = put_histograms(out);
    if (rc == 0)
        rc = put_counter(out, "envrun_dlq_total",
                         "Commands dead-lettered to commands.dlq.", &dlq_cnt);
    if (rc == 0)
        rc = put_counter(out, "envrun_step_retries_total",
                         "Command steps retried after a transient failure.",
                         &retry_cnt);
    if (rc == 0)
        rc = put_counter(out, "envrun_replays_total",
                         "Redelivered commands answered with their stored "
                         "result.",
                         &replay_cnt);
    if (rc == 0)
        rc = put_counter(out, "envrun_outbox_published_total",
                         "Outbox rows published to Kafka.",
                         &outbox_published_cnt);
    if (rc == 0)
        rc = put_counter(out, "envrun_outbox_quarantined_total",
                         "Outbox rows the broker refused for good, moved to "
                         "envrun.outbox_quarantine.",
                         &outbox_quarantined_cnt);
    if (rc == 0)
        rc = put_gauge(out, "envrun_outbox_backlog",
                       "Outbox rows waiting to be published, as this "
                       "worker's relay last fetched them (0 when another "
                       "worker's relay publishes).",
                       &outbox_backlog);
    if (rc == 0)
        rc = put_outbox_age(out);
    if (rc == 0)
        rc = put_gauge(out, "envrun_inflight_commands",
                       "Commands being processed now.", &inflight);
    if (rc == 0)
        rc = put_lag(out);
    if (rc == 0)
        rc = put_table(out,
                       "Leases not yet ended (active, pending_cleanup) in "
                       "the database, by driver and status; refreshed by "
                       "the reaper's pass.",
                       "driver", "status", &leases);
    if (rc == 0)
        rc = put_table(out,
                       "Operation journal entries in flight (started, "
                       "interrupted, rolling_back) in the database, by kind "
                       "and state; refreshed by the reaper's pass.",
                       "kind", "state", &journal);
    if (rc == 0)
        rc = put_folded(out);
    if (rc == 0)
        rc = put_reaper(out);
    if (rc == 0)
        rc = put_bridge(out);
    if (rc == 0)
        rc = put_ready(out);
    return rc;
}
