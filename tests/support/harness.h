/* harness: helpers for the integration tests. A harness is one test case's
 * world: a librdkafka mock cluster in this process with the envrun topics, a
 * fresh database on a PostgreSQL server shared by the process (the one in
 * ENVRUN_TEST_PG_URL, else a dev-stack cluster started on first use), a
 * directory for worker logs, envrun-worker child processes, a producer and
 * a reader of the output topics. Not thread-safe: one test thread. */
#ifndef ER_TESTS_SUPPORT_HARNESS_H
#define ER_TESTS_SUPPORT_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "common/common.h"
#include "schemas/schemas.h"

/* Waits: a first result needs the worker's group join (~3 s on the mock)
 * plus start-up; later ones are quick. */
#define ER_HARNESS_FIRST_WAIT_MS 30000
#define ER_HARNESS_WAIT_MS       20000

#define ER_HARNESS_URL_MAX  512
#define ER_HARNESS_PATH_MAX 512

/* ================================================================
 * The test case's world
 * ================================================================ */

/* The topics the reader follows, from offset 0. */
enum er_harness_topic {
    ER_HARNESS_RESULTS = 0,
    ER_HARNESS_LEASE_EVENTS,
    ER_HARNESS_ACTIVITY,
    ER_HARNESS_DLQ,
    ER_HARNESS_COMMANDS,
    ER_HARNESS_TOPIC_CNT,
};

/* One record read from a topic. Everything is owned by the harness and
 * valid until er_harness_destroy. */
struct er_harness_record {
    char *key; /* NUL-terminated copy; NULL when the record had none */
    size_t key_len;
    uint8_t *value; /* copy of the bytes; NULL when empty */
    size_t value_len;
    int32_t partition;
    int64_t offset;
    json_t *json;          /* er_codec_to_json of value; NULL: not decodable */
    char *hdr_error;       /* header envrun.error, NULL when absent */
    char *hdr_error_code;  /* header envrun.error.code, NULL when absent */
    char *hdr_redacted;    /* header envrun.redacted, NULL when absent */
    char *hdr_traceparent; /* header traceparent, NULL when absent */
    int64_t recv_us;       /* er_harness_mono_us() when the consumer handed
                              the message over */
};

struct er_harness_priv;

struct er_harness {
    char name[64];       /* the test's name, [a-z0-9_] */
    char prefix[64];     /* topic prefix */
    int partition_cnt;   /* of every topic */
    const char *brokers; /* mock bootstraps, borrowed from the mock */
    char db_name[64];    /* the test's fresh database */
    char db_url[ER_HARNESS_URL_MAX];
    char dir[ER_HARNESS_PATH_MAX]; /* worker logs, workspace cwd; kept */
    struct er_harness_priv *priv;
};

/* Monotonic clock (CLOCK_MONOTONIC) in microseconds: the clock of
 * er_harness_record.recv_us. */
int64_t er_harness_mono_us(void);

/* Start a test case: (first time in the process) er_codec_init and the
 * PostgreSQL server; then a mock cluster of one broker whose five envrun
 * topics (prefix: NULL means "envrun.") have partition_cnt partitions, a
 * fresh database named after name plus a random suffix, and the directory
 * ER_BUILD_DIR/it-logs/<name> (emptied). name must be [a-z0-9_], at most 40
 * bytes. The reader's fetch.wait.max.ms is 50, or ER_HARNESS_FETCH_WAIT_MS
 * when set, and the producer's linger.ms 1, or ER_HARNESS_LINGER_MS
 * (test-only; benchmarks lower both). Returns NULL after printing why. */
struct er_harness *er_harness_new(const char *name, int partition_cnt,
                                  const char *prefix);
/* Kill the workers still running (SIGKILL; see er_harness_stop_workers for
 * a clean stop), stop the mock cluster, free the records. The log directory
 * is kept for post-mortems; the databases too on the dev-stack cluster
 * (removed at exit anyway), and on an ENVRUN_TEST_PG_URL server only with
 * ENVRUN_TEST_KEEP_DB set. NULL ok. */
void er_harness_destroy(struct er_harness *h);
/* Stop the workers still running (SIGTERM; SIGKILL after 15 s) and check
 * every worker's log. False (after printing why) when a worker ignored
 * SIGTERM or a log reports a sanitizer finding ("Sanitizer", "runtime
 * error:") or a failed ER_ASSERT; teardowns then return -1, failing the
 * test. */
bool er_harness_stop_workers(struct er_harness *h);
/* The mock cluster (rd_kafka_mock_cluster_t *) for fault injection. */
void *er_harness_mock(struct er_harness *h);
/* Create another fresh empty database named after the test and tag
 * ([a-z0-9_], at most 10 bytes); its connection string goes to url (url_len
 * bytes). Returns 0, or -1 after printing why. */
int er_harness_db_new(struct er_harness *h, const char *tag, char *url,
                      size_t url_len);
/* Full topic name for a suffix ("results") into out. */
void er_harness_topic_name(const struct er_harness *h, const char *suffix,
                           char *out, size_t out_len);

/* ================================================================
 * Worker processes
 * ================================================================ */

struct er_harness_worker_opts {
    int concurrency;        /* ENVRUN_CONCURRENCY; 0: 4 */
    bool has_http;          /* 127.0.0.1:<free port> instead of off */
    const char *db_url;     /* NULL: the harness's database */
    const char *const *env; /* extra "NAME=value" (override the above),
                               NULL-terminated; NULL: none */
};

struct er_harness_worker {
    pid_t pid;       /* -1 once reaped */
    int http_port;   /* 0 when the endpoint is off */
    int wait_status; /* raw waitpid status once reaped */
    char log_path[ER_HARNESS_PATH_MAX + 64]; /* stdout+stderr */
};

/* Spawn ER_BUILD_DIR/envrun-worker (or $ENVRUN_TEST_WORKER_BIN) with
 * ENVRUN_KAFKA_BROKERS, ENVRUN_DATABASE_URL, ENVRUN_TOPIC_PREFIX,
 * ENVRUN_HTTP_ADDR, ENVRUN_LOG_FORMAT=json, ENVRUN_CONCURRENCY,
 * ENVRUN_KAFKA_PROPS with a 6 s group session (the mock cluster can stall
 * a join until a session times out), then the extras; other ENVRUN_* variables
 * of the test's environment are dropped. The worker dies with the test process
 * (PR_SET_PDEATHSIG). Owned by the harness (it kills and reaps it at destroy).
 * NULL after printing why. */
struct er_harness_worker *
er_harness_worker_start(struct er_harness *h,
                        const struct er_harness_worker_opts *opts);
/* er_harness_worker_start, then wait until the worker answers a first
 * command (an acquire of a fresh run's Local environment): it has migrated
 * and joined its group, so a test's own waits need not include start-up.
 * NULL after printing why (and the worker's log). */
struct er_harness_worker *
er_harness_worker_start_warm(struct er_harness *h,
                             const struct er_harness_worker_opts *opts);
/* Send sig, wait up to timeout_ms, then SIGKILL and wait. Returns the exit
 * code (0..255), 128 + signal number when killed by a signal, or -1. */
int er_harness_worker_stop(struct er_harness_worker *w, int sig,
                           int timeout_ms);
/* Wait up to timeout_ms for the worker to exit by itself; same returns as
 * er_harness_worker_stop, -2 when still running. */
int er_harness_worker_wait_exit(struct er_harness_worker *w, int timeout_ms);
bool er_harness_worker_is_alive(struct er_harness_worker *w);
/* The whole log so far, NUL-terminated; caller frees with er_free. */
char *er_harness_worker_log(const struct er_harness_worker *w);
/* The whole file at path, NUL-terminated (er_free); NULL when it cannot be
 * read or is longer than max_len. */
char *er_harness_read_text(const char *path, size_t max_len);
/* The most er_harness_read_text reads of a SQL file (the era fixtures). */
#define ER_HARNESS_SQL_FILE_MAX ((size_t)1 << 20)
/* Whether the harness's database has Paperclip's instance-scoped schema
 * (environments without company_id: Paperclip 2026.6 on). */
bool er_harness_is_instance_era(const struct er_harness *h);
bool er_harness_worker_log_contains(const struct er_harness_worker *w,
                                    const char *needle);
/* Wait until the log contains needle (polling) or timeout. */
bool er_harness_worker_wait_log(const struct er_harness_worker *w,
                                const char *needle, int timeout_ms);
/* Print the last max_bytes of the log to stderr (for failing tests). */
void er_harness_worker_dump_log(const struct er_harness_worker *w,
                                size_t max_bytes);
/* Poll GET /readyz until it answers 200 (the worker is migrated and in its
 * group), the worker exits or timeout. Needs opts.has_http. */
bool er_harness_worker_wait_ready(struct er_harness_worker *w, int timeout_ms);
/* Poll GET /readyz every 200 ms until it answers status (200 or 503) or
 * timeout_ms passed; true when it did. Needs opts.has_http. */
bool er_harness_worker_wait_readyz(struct er_harness_worker *w, int status,
                                   int timeout_ms);
/* Sum of every sample of a Prometheus metric (all label sets) in the
 * worker's /metrics; -1 when the endpoint or the metric is missing. */
long long er_harness_worker_metric(const struct er_harness_worker *w,
                                   const char *name);
/* GET path from the worker's HTTP endpoint; the body goes to out (caller
 * frees with er_free). Returns the status code or -1. */
int er_harness_worker_http_get(const struct er_harness_worker *w,
                               const char *path, char **out);

/* ================================================================
 * Commands
 * ================================================================ */

/* The ids of one heartbeat run (random UUIDs). */
struct er_harness_run {
    char company_id[37];
    char agent_id[37];
    char run_id[37];
};

void er_harness_run_init(struct er_harness_run *run);
/* Same company as other, new agent and run ids. */
void er_harness_run_init_same_company(struct er_harness_run *run,
                                      const struct er_harness_run *other);

/* A command ready to encode; cmd's strings point into this struct and into
 * the run, so neither may move or die before the send. Tests may change
 * fields of cmd (set issue_id, ...) before sending. */
struct er_harness_cmd {
    struct er_run_command cmd;
    char command_id[37];
    char workspace_json[ER_HARNESS_PATH_MAX + 256];
};

/* An acquire of the company's Local environment (selectedEnvironmentId
 * null, adapterType claude_local, nothing else set). */
void er_harness_cmd_acquire(struct er_harness_cmd *c,
                            struct er_harness_run *run);
/* A realize of the run's active lease with workspaceJson
 * {"cwd": cwd, "source": "task_session", "strategy": "project_primary"}. */
void er_harness_cmd_realize(struct er_harness_cmd *c,
                            struct er_harness_run *run, const char *cwd);
/* A release of the run's leases with status. */
void er_harness_cmd_release(struct er_harness_cmd *c,
                            struct er_harness_run *run,
                            enum er_release_status status);

/* Encode cmd and queue it on commands with the contract's key (heartbeat
 * run id, else command id). Returns 0, or -1 after printing why. */
int er_harness_send(struct er_harness *h, const struct er_run_command *cmd);
/* The partition of commands a key lands on (librdkafka's default
 * consistent_random partitioner, as the producer uses). */
int er_harness_partition_of(const struct er_harness *h, const char *key);
/* Queue raw bytes with a key (NULL: none) on topic prefix + suffix. */
int er_harness_produce(struct er_harness *h, const char *suffix,
                       const char *key, const void *value, size_t value_len);
/* Wait until every queued record is acknowledged. Every wait below flushes
 * first. Returns 0 or -1. */
int er_harness_flush(struct er_harness *h);

/* ================================================================
 * Reading the output topics
 * ================================================================ */

typedef bool (*er_harness_pred_fn)(struct er_harness *h, void *arg);

/* Read whatever arrives during the whole of timeout_ms (at least one
 * poll): a fixed wait that records what comes meanwhile. */
void er_harness_poll(struct er_harness *h, int timeout_ms);
/* Poll until pred holds (checked first) or timeout; returns pred's last
 * value. */
bool er_harness_wait(struct er_harness *h, er_harness_pred_fn pred, void *arg,
                     int timeout_ms);
size_t er_harness_count(const struct er_harness *h,
                        enum er_harness_topic topic);
const struct er_harness_record *er_harness_get(const struct er_harness *h,
                                               enum er_harness_topic topic,
                                               size_t i);
/* Records of topic whose decoded JSON has the string value at field (a
 * dotted path, see er_harness_json_str); up to out_max go to out (may be
 * NULL). Returns how many match. */
size_t er_harness_find(const struct er_harness *h, enum er_harness_topic topic,
                       const char *field, const char *value,
                       const struct er_harness_record **out, size_t out_max);
/* Records of topic whose key is key; like er_harness_find. */
size_t er_harness_find_key(const struct er_harness *h,
                           enum er_harness_topic topic, const char *key,
                           const struct er_harness_record **out,
                           size_t out_max);
/* True when some record of topic has needle in its key or value bytes. */
bool er_harness_topic_contains(const struct er_harness *h,
                               enum er_harness_topic topic, const char *needle);
/* Wait until at least n records of topic have key. */
bool er_harness_wait_key(struct er_harness *h, enum er_harness_topic topic,
                         const char *key, size_t n, int timeout_ms);
/* Wait until topic holds at least n records. */
bool er_harness_wait_total(struct er_harness *h, enum er_harness_topic topic,
                           size_t n, int timeout_ms);
/* Wait until at least n records of topic match field == value. */
bool er_harness_wait_count(struct er_harness *h, enum er_harness_topic topic,
                           const char *field, const char *value, size_t n,
                           int timeout_ms);
/* Wait for the first CommandResult of command_id; returns its decoded JSON
 * (borrowed, valid until destroy) or NULL on timeout. */
const json_t *er_harness_wait_result(struct er_harness *h,
                                     const char *command_id, int timeout_ms);
/* Send c and wait up to timeout_ms for its result (borrowed); on a
 * timeout print the last of w's log (w may be NULL) and fail the test. */
const json_t *er_harness_roundtrip(struct er_harness *h,
                                   const struct er_harness_worker *w,
                                   const struct er_harness_cmd *c,
                                   int timeout_ms);
/* er_harness_roundtrip of a realize of run's active lease with the host
 * workspace cwd and runtimeOverlayJson overlay (JSON text, may be NULL). */
const json_t *er_harness_realize(struct er_harness *h,
                                 const struct er_harness_worker *w,
                                 struct er_harness_run *run, const char *cwd,
                                 const char *overlay, int timeout_ms);
/* er_harness_roundtrip of a release of run's leases with status. */
const json_t *er_harness_release(struct er_harness *h,
                                 const struct er_harness_worker *w,
                                 struct er_harness_run *run,
                                 enum er_release_status status, int timeout_ms);
/* Wait until each of the ids has at least one result. */
bool er_harness_wait_results(struct er_harness *h, const char *const *ids,
                             size_t id_cnt, int timeout_ms);

/* ================================================================
 * Invariants after crashes and restarts (contract.md 3: at-least-once on
 * the wire, effectively-once in effect). Each fails the running test.
 * ================================================================ */

/* Every one of the id_cnt commands has at least one result, every copy
 * of a command's result is byte-identical, and (unless outcome is NULL)
 * the outcome is outcome. Prints how many results were sent again. */
void er_harness_check_results(struct er_harness *h, const char *const *ids,
                              size_t id_cnt, const char *outcome);
/* Lease events: every event's key is its lease; copies of one event id are
 * identical; per lease the distinct events carry versions 1..n once each,
 * where n is released_cnt for a lease now released, other_cnt for any
 * other (0: the version envrun.lease_state holds); the last one's status
 * is the row's; every row of environment_leases has events and no event
 * names a lease without a row. */
void er_harness_check_lease_events(struct er_harness *h, long long released_cnt,
                                   long long other_cnt);
/* Activity events and activity_log rows match one to one by id. */
void er_harness_check_activity(struct er_harness *h);

/* ================================================================
 * JSON helpers
 * ================================================================ */

/* The value at a dotted path ("lease.metadata.driver"), borrowed; NULL
 * when missing. */
const json_t *er_harness_json_at(const json_t *root, const char *path);
/* The string at path, or NULL when missing or not a string. */
const char *er_harness_json_str(const json_t *root, const char *path);
/* Parse the JSON text in the string field `field` of obj ("resultJson");
 * new reference, NULL when missing, null or not JSON. */
json_t *er_harness_json_parse_field(const json_t *obj, const char *field);
/* Compact, key-sorted JSON text of v; caller frees with free() (jansson). */
char *er_harness_json_text(const json_t *v);

/* ================================================================
 * cmocka assertions on JSON (they fail the running test)
 * ================================================================ */

/* Fail the running test with a message (cmocka's _fail, which long-jumps
 * back to the runner; marked noreturn so -Wnull-dereference knows). */
void er_harness_fail(const char *file, int line, const char *fmt, ...)
    ER_PRINTF(3, 4) __attribute__((noreturn));
/* Fail unless p is non-NULL; afterwards the compiler knows it is. */
#define ER_HARNESS_NON_NULL(p)                                     \
    do {                                                           \
        if ((p) == NULL)                                           \
            er_harness_fail(__FILE__, __LINE__, "%s is NULL", #p); \
    } while (0)

/* How long "nothing more arrives" is watched for. */
#define ER_HARNESS_QUIET_MS 2500

/* The string at path equals expected; expected NULL: the value is present
 * and JSON null. */
#define ER_HARNESS_ASSERT_STR(root, path, expected) \
    er_harness_assert_str((root), (path), (expected), __FILE__, __LINE__)
/* The integer at path equals expected. */
#define ER_HARNESS_ASSERT_INT(root, path, expected) \
    er_harness_assert_int((root), (path), (expected), __FILE__, __LINE__)
/* The value at path is JSON true. */
#define ER_HARNESS_ASSERT_TRUE(root, path) \
    er_harness_assert_true((root), (path), __FILE__, __LINE__)
/* The JSON text of the value at path equals expected_json (compact,
 * sorted keys, e.g. "{}" or "[\"a\"]"). */
#define ER_HARNESS_ASSERT_JSON(root, path, expected_json) \
    er_harness_assert_json((root), (path), (expected_json), __FILE__, __LINE__)

/* The result's outcome is "ok" (else the failure names its error code and
 * message). */
#define ER_HARNESS_ASSERT_OK(res) \
    er_harness_assert_ok((res), __FILE__, __LINE__)
/* text (may be NULL: a failure) contains needle. */
#define ER_HARNESS_ASSERT_CONTAINS(text, needle) \
    er_harness_assert_contains((text), (needle), __FILE__, __LINE__)

void er_harness_assert_ok(const json_t *res, const char *file, int line);
void er_harness_assert_contains(const char *text, const char *needle,
                                const char *file, int line);
void er_harness_assert_str(const json_t *root, const char *path,
                           const char *expected, const char *file, int line);
void er_harness_assert_int(const json_t *root, const char *path,
                           long long expected, const char *file, int line);
void er_harness_assert_true(const json_t *root, const char *path,
                            const char *file, int line);
void er_harness_assert_json(const json_t *root, const char *path,
                            const char *expected_json, const char *file,
                            int line);

/* ================================================================
 * PostgreSQL
 * ================================================================ */

/* Run sql with text parameters (params may be NULL when nparams is 0) on
 * the database at conninfo. Returns a JSON array with one object per row
 * (column name -> text value or null), new reference; NULL after printing
 * the error. Commands that return no rows give an empty array. */
json_t *er_harness_pg_query(const char *conninfo, const char *sql, int nparams,
                            const char *const *params);
/* Like er_harness_pg_query, returning the first column of the first row as
 * an integer; -1 on error or no row. */
long long er_harness_pg_count(const char *conninfo, const char *sql,
                              int nparams, const char *const *params);
/* Poll the count sql gives on the harness's database (nparams text
 * params) every 200 ms until it is want or timeout_ms passed; on timeout
 * the last count is printed and false returned. */
bool er_harness_pg_wait_count(struct er_harness *h, const char *sql,
                              int nparams, const char *const *params,
                              long long want, int timeout_ms);
/* Rows of every table in the schemas public and envrun whose text form
 * contains needle (to look for leaked secrets); -1 on error. */
long long er_harness_pg_rows_containing(const char *conninfo,
                                        const char *needle);
/* Run sql (several statements allowed when nparams is 0). Returns 0 or -1
 * after printing the error. */
int er_harness_pg_exec(const char *conninfo, const char *sql, int nparams,
                       const char *const *params);
/* The one row sql gives with one text parameter, as a new reference;
 * fails the test when there is not exactly one. */
json_t *er_harness_pg_one_row(const char *conninfo, const char *sql,
                              const char *param);
/* Whether any process on this host has a command line mentioning
 * needle. */
bool er_harness_process_with(const char *needle);
/* Insert an environments row of driver with status ("active", ...) for
 * company_id, as the control plane would, with config (JSON text); its new
 * random id goes to env_id. Fails the test when the insert fails. */
void er_harness_env_insert(const struct er_harness *h, const char *company_id,
                           const char *name, const char *driver,
                           const char *status, const char *config,
                           char env_id[37]);
/* An empty directory (0700) at path, whatever was there before (a rerun
 * finds the last run's). Fails the test when it cannot be made. */
void er_harness_fresh_dir(const char *path);
/* As the control plane does (it does not take envrun's workspace lock):
 * insert an active lease of workspace ws_id of env_id for another live run
 * of company_id; its random id goes to lease_id. Fails the test when the
 * insert fails. */
void er_harness_pg_control_plane_lease(const struct er_harness *h,
                                       const char *company_id,
                                       const char *env_id, const char *ws_id,
                                       char lease_id[37]);

/* ================================================================
 * SSH (tests/support/harness_ssh.c): the sshd that
 * scripts/test-services.sh starts, and the remote side as its user sees
 * it. Not thread-safe, like the rest of the harness.
 * ================================================================ */

/* A test's view of the sshd. The paths and texts come from the
 * ENVRUN_TEST_SSH_* variables; the rest is made for the test. */
struct er_harness_ssh {
    char host[256];
    int port;
    char user[64];
    char home[ER_HARNESS_PATH_MAX];             /* the user's home */
    char key_path[ER_HARNESS_PATH_MAX];         /* ENVRUN_TEST_SSH_KEY */
    char known_hosts_path[ER_HARNESS_PATH_MAX]; /* _KNOWN_HOSTS */
    char log_path[ER_HARNESS_PATH_MAX];         /* _LOG: sshd's log */
    char pid_path[ER_HARNESS_PATH_MAX];         /* _PID_FILE: listener's */
    /* The test's remote directory: _WORKSPACE_ROOT/<test name>, emptied
     * by er_harness_ssh_new and owned by the user. */
    char root[ER_HARNESS_PATH_MAX];
    char *private_key; /* the key file's text (er_malloc) */
    char *known_hosts; /* the known_hosts file's text (er_malloc) */
    /* <h->dir>.secrets (0700): the worker's ENVRUN_SECRETS_DIR; holds the
     * key as the 0600 file secret_id. */
    char secrets_dir[ER_HARNESS_PATH_MAX + 16];
    char secret_id[37];
    /* <h->dir>/tmp, emptied: the worker's TMPDIR. */
    char tmp_dir[ER_HARNESS_PATH_MAX + 16];
    /* ENVRUN_SECRETS_DIR, TMPDIR and ENVRUN_LOG_LEVEL=debug, NULL-
     * terminated, for er_harness_worker_opts.env. Valid until destroy. */
    const char *worker_env[4];
    char env_text[3][ER_HARNESS_PATH_MAX + 64];
    /* Base64 lines of the key's body that carry secret bytes, for leak
     * checks (the first line is the same for every OpenSSH key). */
    char *key_lines[64];
    size_t key_line_cnt;
    char mounts[4][ER_HARNESS_PATH_MAX + 64]; /* to unmount at destroy */
    int mount_cnt;
};

/* Read the ENVRUN_TEST_SSH_* variables of scripts/test-services.sh (all
 * required: a missing one is printed and gives NULL, so the test fails
 * rather than skips), write the key into a fresh secrets directory, empty
 * the worker's TMPDIR and the test's remote directory. NULL after
 * printing why. Owned by the caller (er_harness_ssh_destroy). */
struct er_harness_ssh *er_harness_ssh_new(struct er_harness *h);
/* Unmount what er_harness_ssh_mount_tmpfs mounted and free. The secrets
 * and remote directories are kept for post-mortems. NULL ok. */
void er_harness_ssh_destroy(struct er_harness_ssh *ssh);
/* Write text as another secret (a 0600 file in secrets_dir); its new
 * random id goes to id. Returns 0 or -1 after printing why. */
int er_harness_ssh_secret_write(struct er_harness_ssh *ssh, const char *text,
                                char id[37]);
/* The config of an `ssh` environment on the test server (domain.md 4.2):
 * host, port, username, remoteWorkspacePath (remote_path; NULL: root),
 * privateKeySecretRef {type: secret_ref, secretId: secret_id}, knownHosts
 * (the server's line), strictHostKeyChecking true, and workspaceIsolation
 * when isolation is not NULL. New reference; tests change keys with
 * json_object_set_new before inserting it. */
json_t *er_harness_ssh_config(const struct er_harness_ssh *ssh,
                              const char *remote_path, const char *isolation);
/* Insert an active environment row with driver ssh, name and config for
 * company_id, as the control plane would; its random id goes to env_id.
 * Returns 0 or -1 after printing why. */
int er_harness_ssh_env_insert(struct er_harness *h, const char *company_id,
                              const char *name, const json_t *config,
                              char env_id[37]);

/* Insert, as er_harness_ssh_env_insert does, an ssh environment with
 * per_lease isolation whose remoteWorkspacePath is ssh->root/ws (that path
 * goes to remote, remote_len bytes). Returns 0 or -1 after printing why. */
int er_harness_ssh_per_lease_env(struct er_harness *h,
                                 const struct er_harness_ssh *ssh,
                                 const char *company_id, const char *name,
                                 char *remote, size_t remote_len,
                                 char env_id[37]);
/* ssh->worker_env followed by extra (may be NULL), NULL-terminated, into
 * out: an er_harness_worker_opts.env. */
void er_harness_ssh_worker_env_with(const struct er_harness_ssh *ssh,
                                    const char *extra, const char *out[8]);

/* Run script with `sh -c` as the ssh user on the "remote" side (runuser
 * as root, else ssh with the test key), with HOME set and a plain PATH,
 * for at most 60 s. Its stdout goes to *out (NUL-terminated, caller frees
 * with er_free) when out is not NULL. Returns the exit code, 128 + signal,
 * or -1 when it could not run or timed out. */
int er_harness_ssh_remote(const struct er_harness_ssh *ssh, const char *script,
                          char **out);
/* er_harness_ssh_remote of a printf-formatted script; true when it exits
 * 0. */
bool er_harness_ssh_remote_ok(const struct er_harness_ssh *ssh, const char *fmt,
                              ...) ER_PRINTF(2, 3);
/* Run argv (argv[0] an absolute path) in directory cwd (NULL: ours), its
 * stdin /dev/null, for at most timeout_ms; stdout (and stderr when
 * is_merging_stderr; else stderr goes to ours) to *out (NUL-terminated,
 * er_free) when out is not NULL. Returns the exit code, 128 + signal, or
 * -1. */
int er_harness_run_argv(char *const argv[], const char *cwd,
                        bool is_merging_stderr, int timeout_ms, char **out);
/* Run script with `sh -c` locally, as the test process's user, for at most
 * 120 s; stdout and stderr go to *out as for er_harness_ssh_remote.
 * Returns the same. */
int er_harness_ssh_local(const char *script, char **out);
/* s in single quotes for sh ('\'' for a quote) into out. Returns 0, or -1
 * when out_len is too small. */
int er_harness_ssh_quote(const char *s, char *out, size_t out_len);

/* The size of sshd's log now: an offset for er_harness_ssh_log_count. */
long long er_harness_ssh_log_size(const struct er_harness_ssh *ssh);
/* Lines of sshd's log past offset from that contain needle (LogLevel
 * VERBOSE: "Accepted publickey for <user>" once per authentication), or
 * -1 when the log cannot be read. */
int er_harness_ssh_log_count(const struct er_harness_ssh *ssh, long long from,
                             const char *needle);
/* Live processes below the sshd listener (its sessions and what they
 * run) whose command name (/proc/PID/comm) is comm, or all of them when
 * comm is NULL; -1 when the listener is not running. */
int er_harness_ssh_sessions(const struct er_harness_ssh *ssh, const char *comm);
/* SIGKILL every live process below the listener (cuts every connection
 * without stopping the server). Returns how many were signalled, or -1. */
int er_harness_ssh_kill_sessions(const struct er_harness_ssh *ssh);
/* Live `ssh` client processes on this machine whose command line names
 * the test server's port (-p PORT, -oPort=PORT, :PORT ...); a driver's
 * connection masters show up here. */
int er_harness_ssh_clients(const struct er_harness_ssh *ssh);
/* Mount a tmpfs of size_bytes on dir (created if missing), owned by the
 * ssh user: a remote disk that fills up. Needs root. Returns 0 or -1 after
 * printing why. Unmounted by er_harness_ssh_destroy. */
int er_harness_ssh_mount_tmpfs(struct er_harness_ssh *ssh, const char *dir,
                               size_t size_bytes);
/* Files under dir changed (ctime) after the file stamp, not under
 * exclude (may be NULL), that contain a line of the private key: their
 * paths, one a line, go to *hits (caller frees with er_free; NULL when
 * none). Returns how many, or -1. */
int er_harness_ssh_files_with_key(const struct er_harness_ssh *ssh,
                                  const char *dir, const char *stamp,
                                  const char *exclude, char **hits);
/* True when text holds the private key or one of its secret lines. */
bool er_harness_ssh_text_has_key(const struct er_harness_ssh *ssh,
                                 const char *text);

/* Make dir (emptied first) a git repository on branch: one commit of
 * README.md, src/app.txt and gone.txt, then, uncommitted, "v2 uncommitted"
 * appended to src/app.txt, the untracked new.txt, and gone.txt deleted.
 * Returns 0 or -1 after printing why. */
int er_harness_ssh_git_workspace(const char *dir, const char *branch);
/* Make dir (emptied first) a plain directory: top.txt holding "top",
 * nested/deep/leaf.txt holding "leaf", and an AppleDouble file ._top.txt
 * the sync must leave out (domain.md 4.2). Returns 0 or -1. */
int er_harness_ssh_plain_workspace(const char *dir);

/* The ssh driver's per-lease directory (er_ssh_control_dir: control
 * socket, known_hosts, key while connecting) exists for lease_id. */
bool er_harness_ssh_control_dir_exists(const char *lease_id);
/* The entries of the directory that holds those per-lease directories,
 * sorted, one a line (er_free); "" when it does not exist. NULL on
 * failure. Compare two listings with er_harness_ssh_new_lines. */
char *er_harness_ssh_control_dirs(void);
/* The lines of after that are not in before, one a line (er_free); ""
 * when none. */
char *er_harness_ssh_new_lines(const char *before, const char *after);

#endif
