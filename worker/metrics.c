/* metrics: process-wide counters, gauges and one histogram in C11 atomics,
 * rendered in the Prometheus text format 0.0.4. Thread-safe and lock-free;
 * owns only its static counters. */
#include <inttypes.h>
#include <stdatomic.h>
#include <string.h>

#include "worker/worker.h"

#define KIND_CNT    3
#define OUTCOME_CNT 3
#define BUCKET_CNT  12 /* 11 finite bounds and +Inf */

static const char *const kind_names[KIND_CNT] = { "acquire", "realize",
                                                  "release" };
static const char *const outcome_names[OUTCOME_CNT] = { "ok", "error",
                                                        "deferred" };
/* Upper bounds in ms; the last bucket (+Inf) has no bound. */
static const int64_t bucket_bounds_ms[BUCKET_CNT - 1] = { 1,    5,    10,  25,
                                                          50,   100,  250, 500,
                                                          1000, 2500, 5000 };

static atomic_uint_fast64_t commands[KIND_CNT][OUTCOME_CNT];
/* Per-bucket (not cumulative) counts; rendering accumulates them, so the
 * +Inf bucket and _count always agree. */
static atomic_uint_fast64_t duration_buckets[BUCKET_CNT];
static atomic_uint_fast64_t duration_sum_ms;
static atomic_uint_fast64_t dlq_cnt;
static atomic_uint_fast64_t retry_cnt;
static atomic_uint_fast64_t replay_cnt;
static atomic_uint_fast64_t outbox_published_cnt;
static atomic_uint_fast64_t outbox_quarantined_cnt;
static atomic_int_fast64_t outbox_backlog;
static atomic_int_fast64_t inflight;
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

void er_metrics_inflight(int64_t n)
{
    atomic_store_explicit(&inflight, n, memory_order_relaxed);
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

static int put_head(struct er_buf *out, const char *name, const char *type,
                    const char *help)
{
    return er_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                         type);
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
                  "Duration of command steps in milliseconds.");
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
                       "Outbox rows waiting to be published.", &outbox_backlog);
    if (rc == 0)
        rc = put_gauge(out, "envrun_inflight_commands",
                       "Commands being processed now.", &inflight);
    if (rc == 0)
        rc = put_ready(out);
    return rc;
}
