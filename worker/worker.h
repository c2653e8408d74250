/* worker: the envrun worker: configuration, consumer and dispatcher,
 * lifecycle, store, outbox relay, reaper, metrics and health endpoint.
 * envrun-worker's main() and envrunctl use this header; the pieces talk to
 * each other through the private headers (*_int.h) of this folder. */
#ifndef ER_WORKER_WORKER_H
#define ER_WORKER_WORKER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* ================================================================
 * Configuration (config.c): contract.md 2
 * ================================================================ */

#define ER_CONFIG_STR_MAX 1024

struct er_config {
    char kafka_brokers[ER_CONFIG_STR_MAX]; /* required */
    char kafka_group[256];
    char kafka_props[ER_CONFIG_STR_MAX]; /* "k=v,k=v", verbatim */
    char topic_prefix[128];
    char database_url[ER_CONFIG_STR_MAX];
    char schema_registry_url[ER_CONFIG_STR_MAX];
    char schema_registry_ca_file[ER_CONFIG_STR_MAX]; /* "": the system's */
    int concurrency;                                 /* 1..1024 */
    char http_addr[128]; /* host:port; "" disables the endpoint */
    bool log_is_json;
    enum er_log_level log_level;
    int64_t lease_ttl_s; /* > 0 */
    int drain_s;         /* SIGTERM: steps in flight may take this long */
    char secrets_dir[ER_CONFIG_STR_MAX];
    char workspace_roots[ER_CONFIG_STR_MAX]; /* "": none */
    char paperclip_api_url[ER_CONFIG_STR_MAX];
    char bridge_allowlist[ER_CONFIG_STR_MAX]; /* "": the built-in one */
    /* ENVRUN_BRIDGE_TRANSPORT=queue_v1: never stream_v1. */
    bool bridge_queue_only;
    char sandbox_dir[ER_CONFIG_STR_MAX]; /* "": the bwrap default */
    char plugins_dir[ER_CONFIG_STR_MAX]; /* "": no provider plugins */
};

/* Outcome of er_config_load. */
enum er_config_status {
    ER_CONFIG_OK = 0,
    ER_CONFIG_HELP,    /* --help was given: print usage, exit 0 */
    ER_CONFIG_VERSION, /* --version was given: print version, exit 0 */
    ER_CONFIG_INVALID, /* errline names the bad option: exit 2 */
};

/* Fill cfg from the ENVRUN_* environment variables, then override from
 * kebab-case flags (--kafka-brokers=X or --kafka-brokers X). Every value is
 * validated; on the first bad or missing one errline (errline_len bytes)
 * gets one line such as "ENVRUN_CONCURRENCY: must be an integer 1..1024"
 * and ER_CONFIG_INVALID is returned. A secret never appears in errline. */
enum er_config_status er_config_load(struct er_config *cfg, int argc,
                                     char **argv, char *errline,
                                     size_t errline_len);
/* The usage text printed by --help. */
const char *er_config_usage(void);
/* Whether s is made only of Kafka's topic-name characters [A-Za-z0-9._-]
 * (the rule for ENVRUN_TOPIC_PREFIX; "" passes). */
bool er_config_is_topic_text(const char *s);
/* Full topic name: prefix + suffix ("envrun." + "commands"); out_len bytes.
 */
void er_config_topic(const struct er_config *cfg, const char *suffix, char *out,
                     size_t out_len);

/* ================================================================
 * Metrics (metrics.c): process-wide atomic counters, Prometheus text.
 * ================================================================ */

/* Count one finished command step; kind and outcome are the wire names
 * (others count nowhere). envrun_commands_total, and its duration in
 * envrun_command_duration_ms and envrun_command_duration_seconds{kind}. */
void er_metrics_command(const char *kind, const char *outcome,
                        int64_t duration_ms);

/* The phases of a step (DESIGN.md: intent, effect, outcome). A step with
 * remote work journals its operation in the intent transaction, lets the
 * driver work with no transaction open (effect) and records the result in
 * the outcome transaction; a one-transaction step has only an outcome. */
enum er_metrics_phase {
    ER_METRICS_PHASE_INTENT = 0,
    ER_METRICS_PHASE_EFFECT,
    ER_METRICS_PHASE_OUTCOME,
    ER_METRICS_PHASE_CNT,
};

/* The monotonic clock in microseconds, for the durations below. */
int64_t er_metrics_now_us(void);
/* Observe one phase of a step that took duration_us (negative: 0) in
 * envrun_step_phase_duration_seconds{phase}. */
void er_metrics_step_phase(enum er_metrics_phase phase, int64_t duration_us);
void er_metrics_dlq(void);
void er_metrics_retry(void);
void er_metrics_replay(void);
void er_metrics_outbox_published(uint64_t n);
/* Count n outbox rows moved to envrun.outbox_quarantine (the broker refused
 * them for good); envrun_outbox_quarantined_total. */
void er_metrics_outbox_quarantined(uint64_t n);
/* Outbox rows waiting to be published as the relay last saw them
 * (envrun_outbox_backlog; 0 on a worker whose relay does not hold the
 * outbox), and the creation time (ms since the epoch; 0: none waiting) of
 * the oldest one: envrun_outbox_oldest_age_seconds is its age at scrape
 * time. */
void er_metrics_outbox_backlog(int64_t n);
void er_metrics_outbox_oldest(int64_t created_ms);
/* Observe one delivered outbox row, lag_ms after it was created
 * (envrun_outbox_publish_lag_seconds). */
void er_metrics_outbox_publish_lag(int64_t lag_ms);
void er_metrics_inflight(int64_t n);
/* The commands topic (the topic label of envrun_consumer_lag); the first
 * call wins. */
void er_metrics_consumer_topic(const char *topic);
/* Commands of partition not processed yet (envrun_consumer_lag); lag < 0
 * removes the partition's series (it is not assigned here). Partitions
 * past 1023 are not shown. */
void er_metrics_consumer_lag(int32_t partition, int64_t lag);

/* What the reaper did to one lease or unrecorded acquisition
 * (envrun_reaper_actions_total{action}). */
enum er_metrics_reap {
    ER_METRICS_REAP_EXPIRED = 0,         /* a stale lease expired */
    ER_METRICS_REAP_PENDING_CLEANUP,     /* its cleanup failed: pending */
    ER_METRICS_REAP_CLEANUP_RETRIED,     /* a pending_cleanup lease done */
    ER_METRICS_REAP_CLEANUP_FAILED,      /* cleanup failed, tried later */
    ER_METRICS_REAP_UNRECORDED_RELEASED, /* an unrecorded acquisition */
    ER_METRICS_REAP_UNRECORDED_FAILED,   /* ... whose release failed */
    ER_METRICS_REAP_CNT,
};

void er_metrics_reaper_action(enum er_metrics_reap action);
/* One reaper pass ended (envrun_reaper_passes_total{outcome}). */
void er_metrics_reaper_pass(bool is_ok);

/* One series of a gauge a background pass sets as a whole: labels a and b
 * (borrowed for the call; values longer than 47 bytes or not printable
 * ASCII show as "other") and its value. */
struct er_metrics_row {
    const char *a;
    const char *b;
    int64_t val;
};

/* Replace envrun_leases{driver,status} (a: driver, b: status) or
 * envrun_journal_inflight{kind,state} (a: kind, b: state) by rows. A series
 * shown before and missing from rows reads 0. At most 32 series each: a
 * new one then takes the place of the series that has read 0 longest (since
 * an earlier call), or, when none has, is added to the series whose label
 * values are both "other" and counted in
 * envrun_metrics_folded_series_total{gauge}; nothing is dropped. */
void er_metrics_leases_set(const struct er_metrics_row *rows, size_t cnt);
void er_metrics_journal_set(const struct er_metrics_row *rows, size_t cnt);
/* Readiness parts: the database is reachable and migrated; the consumer is
 * in its group. /readyz answers 200 only when all are true. */
void er_metrics_set_db_ready(bool is_ready);
void er_metrics_set_kafka_ready(bool is_ready);
/* The outbox relay's own parts, separate flags so they never overwrite the
 * ones above: its database connection answers (false while it cannot
 * connect or query), and its producer reaches a broker (false after
 * librdkafka reported all brokers down, true again after a delivery or a
 * metadata answer). Both are true until set; a false one makes /readyz
 * answer 503 and shows in envrun_ready{part="db"} or {part="kafka"}. */
void er_metrics_set_relay_db_ready(bool is_ready);
void er_metrics_set_producer_ready(bool is_ready);
/* The worker is shutting down (SIGTERM): /readyz answers 503 from now on
 * so no new traffic is routed to it; envrun_draining shows it. */
void er_metrics_set_draining(bool is_draining);
bool er_metrics_is_ready(void);
/* Render every metric in the Prometheus text format 0.0.4 into out: a
 * # HELP and # TYPE line for every family. Errors: ER_E2BIG when out's cap
 * is reached, ER_ENOMEM. */
int er_metrics_render(struct er_buf *out);
/* Append value as a label value of the text format (backslash, double
 * quote and newline escaped). Errors: as er_buf_append. */
int er_metrics_escape_label(struct er_buf *out, const char *value);

/* ================================================================
 * HTTP endpoint (http.c): GET /metrics, /healthz, /readyz
 * ================================================================ */

struct er_http;

/* Parse "host:port" and listen; serve from one thread until destroyed.
 * Errors: NULL with err set (ER_EINVAL bad address, ER_EIO bind failed). */
struct er_http *er_http_new(const char *addr, struct er_err *err);
/* The port actually bound (useful with port 0). */
int er_http_port(const struct er_http *http);
void er_http_destroy(struct er_http *http);

/* Pure parser of an HTTP/1.x request head, fuzzed: finds the method and
 * the path (without query) in buf. Returns 0 and pointers into buf, or
 * ER_EBADMSG for anything else (also when the head is incomplete). */
int er_http_parse_request(const char *buf, size_t len, const char **method,
                          size_t *method_len, const char **path,
                          size_t *path_len);

/* ================================================================
 * Dev stack (devstack.c): a throwaway PostgreSQL cluster and an in-process
 * librdkafka mock cluster reachable over TCP, for envrunctl dev and tests.
 * ================================================================ */

struct er_devstack_pg;
struct er_devstack_kafka;

/* initdb a new cluster in a fresh private directory under base_dir (NULL:
 * $TMPDIR or /tmp), start it with pg_ctl on 127.0.0.1 and a free port
 * (unix sockets only inside that directory), and wait until it accepts
 * connections. When running as root the cluster runs as the `postgres`
 * user. Errors: NULL with err set (ER_EIO, ER_ETIMEDOUT). */
struct er_devstack_pg *er_devstack_pg_start(const char *base_dir,
                                            struct er_err *err);
/* libpq connection string of the cluster's `postgres` database, borrowed,
 * valid until er_devstack_pg_stop. */
const char *er_devstack_pg_conninfo(const struct er_devstack_pg *pg);
/* Create database `name` and write its connection string into out. */
int er_devstack_pg_create_db(const struct er_devstack_pg *pg, const char *name,
                             char *out, size_t out_len, struct er_err *err);
/* A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read
 * it back, close), or -1. */
int er_devstack_free_port(void);
/* Remove a directory tree, as much of it as can be removed (no links are
 * followed). */
void er_devstack_rmtree(const char *path);
/* Stop the cluster (fast shutdown) and remove its directory. NULL is ok. */
void er_devstack_pg_stop(struct er_devstack_pg *pg);

/* Start a mock cluster of broker_cnt brokers and create the envrun topics
 * (commands, results, lease-events, activity, commands.dlq after prefix)
 * with partition_cnt partitions each. Errors: NULL with err set. */
struct er_devstack_kafka *er_devstack_kafka_start(int broker_cnt,
                                                  int partition_cnt,
                                                  const char *topic_prefix,
                                                  struct er_err *err);
/* "127.0.0.1:port,..." of the mock brokers, borrowed, valid until stop. */
const char *er_devstack_kafka_bootstraps(const struct er_devstack_kafka *k);
/* The mock cluster handle (rd_kafka_mock_cluster_t *) for fault injection
 * in tests; borrowed. */
void *er_devstack_kafka_mock(struct er_devstack_kafka *k);
void er_devstack_kafka_stop(struct er_devstack_kafka *k);

/* ================================================================
 * Kafka helpers (kafka.c), shared with envrunctl and the tests
 * ================================================================ */

struct rd_kafka_s;         /* rd_kafka_t */
struct rd_kafka_headers_s; /* rd_kafka_headers_t */

/* librdkafka's log_cb (set with rd_kafka_conf_set_log_cb): each line goes
 * to er_log with facility rdkafka; syslog levels map to ours. */
void er_kafka_on_log(const struct rd_kafka_s *rk, int level, const char *fac,
                     const char *buf);

/* Queue one message (copied) on topic with librdkafka's default
 * partitioner; key may be NULL; msg_opaque goes to the delivery report.
 * hdrs (may be NULL) is taken over on success and left to the caller on
 * failure. Uses rd_kafka_produceva, not the RD_KAFKA_V_* macros, whose type
 * checks are GNU statement expressions that clang -Wpedantic rejects.
 * Returns the rd_kafka_resp_err_t code (0: queued). */
int er_kafka_produce(struct rd_kafka_s *rk, const char *topic, const void *key,
                     size_t key_len, const void *value, size_t value_len,
                     struct rd_kafka_headers_s *hdrs, void *msg_opaque);

/* ================================================================
 * The worker as a whole (run.c)
 * ================================================================ */

/* Set by signal handlers; er_worker_run returns soon after it becomes
 * non-zero, having finished the steps in flight and committed. */
extern volatile sig_atomic_t er_worker_stop;

/* Run the worker with cfg until er_worker_stop is set or a fatal error.
 * Returns 0 on a clean stop, 1 on a runtime failure (logged), 2 when a
 * setting checked at start (the plugins' manifests) is bad (one line on
 * stderr). */
int er_worker_run(const struct er_config *cfg);

/* ================================================================
 * Operator queries (store_ctl.c): read-only views for envrunctl.
 * ================================================================ */

/* Connect to conninfo (a libpq connection string or URI), read at most
 * limit (> 0) rows of environment_leases with their environment's name,
 * newest first, and append them to out as one JSON object a line
 * (leaseId, environment, status, heartbeatRunId, issueId, acquiredAt,
 * releasedAt, failureReason; empty values null). company and run (UUID
 * text) and status narrow the list; NULL means any. Values are as stored:
 * a caller showing them on a terminal sanitises them (envrunctl's table
 * does). The connection is closed before returning. Errors: ER_EINVAL
 * (conninfo is not a connection string; libpq's words are not passed on,
 * they may quote a password), ER_EPG (cannot connect: class RETRY; query
 * failed: FATAL), ER_E2BIG or ER_ENOMEM when out is full. */
int er_store_ctl_leases(const char *conninfo, const char *company,
                        const char *run, const char *status, int limit,
                        struct er_buf *out, struct er_err *err);

#endif
