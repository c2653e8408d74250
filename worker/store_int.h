/* store: the worker's only door to PostgreSQL (libpq). One struct er_store
 * is one connection, used by one thread at a time. Rows come back as plain
 * structs whose strings live in the caller's arena. Every statement is
 * parameterised. Failures are classified here, once, from the SQLSTATE:
 * connection loss, serialization failures, deadlocks and unique races are
 * RETRY; data the database refuses (classes 22 and 23, e.g. a control-plane
 * foreign key) is SKIP; anything else is FATAL (a bug or a broken
 * database). */
#ifndef ER_WORKER_STORE_INT_H
#define ER_WORKER_STORE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

struct er_store;

/* Which Paperclip schema the database has, read from the catalog
 * (er_store_era). Paperclip 2026.6 moved environments from the company to
 * the instance: environments.company_id went, and leases gained the status
 * pending_cleanup (upstream.md C1). */
enum er_store_era {
    ER_ERA_NONE = 0, /* no environments table (before the migrations) */
    ER_ERA_COMPANY,  /* environments.company_id: up to 2026.5 (the seed) */
    ER_ERA_INSTANCE, /* no environments.company_id: 2026.6 on */
};

/* An environments row. Timestamps in ms since the epoch. */
struct er_env_row {
    const char *id;
    /* The row's company; on an instance-scoped schema, where the row has
     * none, the company it serves this time (er_store_env_get), whose
     * secrets and hosts are then the ones it may use. */
    const char *company_id;
    bool is_instance_scoped; /* the row itself has no company */
    const char *name;
    const char *description; /* NULL when SQL NULL */
    const char *driver;
    const char *status;
    const char *config_json;
    const char *metadata_json; /* NULL when SQL NULL */
    int64_t created_at_ms;
    int64_t updated_at_ms;
};

/* An environment_leases row; -1 for NULL timestamps, NULL for NULL text. */
struct er_lease_row {
    const char *id;
    const char *company_id;
    const char *environment_id;
    const char *execution_workspace_id;
    const char *issue_id;
    const char *heartbeat_run_id;
    const char *status;
    const char *lease_policy;
    const char *provider;
    const char *provider_lease_id;
    int64_t acquired_at_ms;
    int64_t last_used_at_ms;
    int64_t expires_at_ms;
    int64_t released_at_ms;
    const char *failure_reason;
    const char *cleanup_status;
    const char *metadata_json;
    int64_t created_at_ms;
    int64_t updated_at_ms;
};

/* An activity_log row. */
struct er_activity_row {
    const char *id;
    const char *company_id;
    const char *actor_type;
    const char *actor_id;
    const char *action;
    const char *entity_type;
    const char *entity_id;
    const char *agent_id;
    const char *run_id;
    const char *details_json;
    int64_t created_at_ms;
};

/* An outbox row waiting for the relay. */
struct er_outbox_row {
    int64_t id;
    char *topic;
    uint8_t *key; /* NULL for a null key */
    size_t key_len;
    uint8_t *value; /* the first value_len bytes of the stored value */
    size_t value_len;
    size_t value_full_len; /* the stored value's length (>= value_len) */
    char *headers_json;    /* NULL or a JSON object of string values */
    char *token_from;      /* NULL, or where its bridge token comes from */
    int64_t created_ms;    /* created_at, ms since the epoch */
};

/* An outbox row to move to envrun.outbox_quarantine, and why. */
struct er_outbox_quarantine {
    int64_t id;
    const char *reason;
};

/* Connect (conninfo is a libpq string or URI). Errors: NULL, err set with
 * class RETRY when the server is unreachable. */
struct er_store *er_store_new(const char *conninfo, struct er_err *err);
void er_store_destroy(struct er_store *store);
/* The lease TTL (ENVRUN_LEASE_TTL_S): every insert, touch and metadata
 * update of an active lease sets expires_at to now + ttl_s (21600 until
 * set). */
void er_store_set_lease_ttl(struct er_store *store, int64_t ttl_s);
/* Make sure the connection is usable, reconnecting when it was lost. */
int er_store_ensure(struct er_store *store, struct er_err *err);

/* Apply schemas/sql/migrations.sql in one transaction (advisory-locked). */
int er_store_migrate(struct er_store *store, struct er_err *err);

/* The schema era of the database, read from the catalog on each connect
 * (and after the migrations). */
enum er_store_era er_store_era(const struct er_store *store);
/* Its name ("company", "instance", "none") and a sentence on it, for
 * logs. */
const char *er_store_era_name(enum er_store_era era);
const char *er_store_era_describe(enum er_store_era era);

/* This database's installation id (envrun.installation, made by the
 * migrations) into out; "" when there is none. */
int er_store_installation_id(struct er_store *store, char out[40],
                             struct er_err *err);

int er_store_begin(struct er_store *store, struct er_err *err);
int er_store_commit(struct er_store *store, struct er_err *err);
/* Roll back; failures are ignored (the connection is reset on next use). */
void er_store_rollback(struct er_store *store);
int er_store_savepoint(struct er_store *store, struct er_err *err);
int er_store_savepoint_rollback(struct er_store *store, struct er_err *err);
int er_store_savepoint_release(struct er_store *store, struct er_err *err);

/* ---- processed commands (effectively-once) ---- */

/* A processed command as stored (arena copies). */
struct er_processed_row {
    uint8_t *result; /* the encoded CommandResult */
    size_t result_len;
    const char *kind;       /* acquire, realize, release */
    const char *company_id; /* NULL for a row made before migration 4 */
};

/* The stored result of command_id. ER_ENOTFOUND if none. The caller
 * returns it only to a command of the same company and kind. */
int er_store_processed_get(struct er_store *store, const char *command_id,
                           struct er_arena *arena, struct er_processed_row *out,
                           struct er_err *err);
/* Record command_id's result. ER_ECONFLICT (class RETRY) when another
 * transaction recorded it first. */
int er_store_processed_put(struct er_store *store, const char *command_id,
                           const char *company_id, const char *kind,
                           const char *run_id, const uint8_t *result,
                           size_t result_len, struct er_err *err);

/* ---- operation journal and fencing (store_journal.c) ---- */

/* One remote operation of a step, as the journal records it. */
struct er_op {
    const char *command_id; /* the command, or "reap:<lease id>" */
    const char *company_id;
    const char *lease_id;
    const char *environment_id; /* may be NULL */
    const char *kind;           /* acquire, realize, provision, release, reap */
    const char *topic;          /* the commands topic; NULL for the reaper */
    int32_t partition;
    int64_t generation; /* the fence the step works under */
    int64_t offset;     /* the command's Kafka offset (with topic) */
};

/* Record that op is about to start (state started), or that it starts
 * again (attempt + 1). *attempt gets the attempt number (1 the first time).
 * Commit before the driver works. */
int er_store_journal_start(struct er_store *store, const struct er_op *op,
                           int *attempt, struct er_err *err);
/* The reaper's claim on op (kind reap): start it unless another reaper
 * holds it (started less than 10 minutes ago) or its last attempt failed
 * within the backoff (15 s times 2^attempt: 30 s after the first, at most
 * an hour). *is_claimed says whether this caller may work on it. */
int er_store_journal_claim(struct er_store *store, const struct er_op *op,
                           bool *is_claimed, struct er_err *err);
/* The state and detail (JSON text, NULL when none) of one operation.
 * ER_ENOTFOUND when it was never started. */
int er_store_journal_get(struct er_store *store, const char *command_id,
                         const char *kind, const char *lease_id,
                         struct er_arena *arena, char **state,
                         char **detail_json, struct er_err *err);
/* The detail of the lease's latest bridge operation (where its gateway
 * runs: the realize that started it journaled it). ER_ENOTFOUND: none. */
int er_store_journal_bridge(struct er_store *store, const char *lease_id,
                            struct er_arena *arena, char **detail_json,
                            struct er_err *err);
/* A bridge a realize started, as the journal keeps it. Arena strings. */
struct er_bridge_op {
    const char *lease_id;
    const char *command_id;
    const char *company_id;
    int32_t partition; /* of the realize command */
    int64_t offset;
    const char *detail_json; /* where the gateway runs */
};
/* The bridges of active leases whose realize came from a partition of
 * topic that owner holds (partition_fence), latest per lease, at most
 * 256. */
int er_store_journal_bridges_owned(struct er_store *store, const char *topic,
                                   const char *owner, struct er_arena *arena,
                                   struct er_bridge_op **ops, size_t *op_cnt,
                                   struct er_err *err);
/* Set one operation's state (done, failed, rolled_back) and, when
 * detail_json is not NULL, its detail. */
int er_store_journal_close(struct er_store *store, const char *command_id,
                           const char *kind, const char *lease_id,
                           const char *state, const char *detail_json,
                           struct er_err *err);
/* Close every operation of a command still started or interrupted with
 * state: the outcome transaction does it, so the journal and the command's
 * result commit together. */
int er_store_journal_close_command(struct er_store *store,
                                   const char *command_id,
                                   const char *company_id, const char *state,
                                   struct er_err *err);
/* Mark the operations of (topic, partition) that a previous owner left
 * started as interrupted; *cnt gets how many. A new owner does this when
 * it is assigned the partition: the redelivered commands resume them. */
int er_store_journal_interrupt(struct er_store *store, const char *topic,
                               int32_t partition, int64_t generation,
                               int64_t *cnt, struct er_err *err);
/* Keep the operations of (topic, partition) still started under an older
 * generation whose commands sit at one of offsets (offset_cnt of them):
 * they move to generation instead of being interrupted. The owner that
 * gets a partition back while those steps still run does this before
 * er_store_journal_interrupt. *cnt gets how many. */
int er_store_journal_adopt(struct er_store *store, const char *topic,
                           int32_t partition, int64_t generation,
                           const int64_t *offsets, size_t offset_cnt,
                           int64_t *cnt, struct er_err *err);
/* Outside a transaction: hold (is_held) or let go of a shared lock on
 * (topic, partition) for the time a step's driver works with no
 * transaction open, so that the partition's next owner can wait for the
 * previous owner's driver work to stop (er_store_journal_fence_claim). A
 * session lock: a lost connection lets go of it. */
int er_store_effect_hold(struct er_store *store, const char *topic,
                         int32_t partition, bool is_held, struct er_err *err);
/* How long a claim waits, in ms; 0: effects not at all, records as long
 * as they last. */
struct er_claim_waits {
    int effects_ms; /* for the previous owner's driver work to stop */
    int records_ms; /* for its outcome transactions (ER_ETIMEDOUT after) */
};
/* Become the owner of (topic, partition): bump its generation and return
 * it. First waits up to waits->effects_ms for the previous owner's steps to
 * let go of their driver work (then goes on: the fence stops what still
 * runs from recording anything); then waits until the previous owner's
 * transactions that checked the fence have ended, at most
 * waits->records_ms when that is > 0 (then ER_ETIMEDOUT, class RETRY, and
 * nothing changed). */
int er_store_journal_fence_claim(struct er_store *store, const char *topic,
                                 int32_t partition, const char *owner,
                                 const struct er_claim_waits *waits,
                                 int64_t *generation, struct er_err *err);
/* Inside a transaction: lock (topic, partition)'s fence row FOR SHARE until
 * the transaction ends and check that its generation is still generation.
 * ER_EFENCED (class SKIP) when another worker owns the partition now. */
int er_store_journal_fence_check(struct er_store *store, const char *topic,
                                 int32_t partition, int64_t generation,
                                 struct er_err *err);

/* An acquire operation whose lease was never recorded and that nobody
 * will finish, as the journal holds it (arena strings). */
struct er_acquire_op {
    const char *command_id;
    const char *company_id;
    const char *lease_id;
    const char *environment_id; /* NULL when SQL NULL */
    const char *state;          /* rolling_back, started or interrupted */
    int attempt;                /* the attempt taken */
    const char *detail_json;    /* {driver, metadata}; NULL when none */
};

/* For the reaper, inside a transaction: lock (FOR UPDATE SKIP LOCKED) and
 * return at most limit acquire operations with no environment_leases row
 * for their lease id, no reap entry of that lease within its backoff (see
 * er_store_journal_claim), and either rolling_back for over a minute (its
 * release never ran or failed) or started / interrupted for over ttl_s
 * seconds (their command never came back) except those still started
 * under their partition's current generation. Oldest first. */
int er_store_journal_unrecorded(struct er_store *store, int64_t ttl_s,
                                int limit, struct er_arena *arena,
                                struct er_acquire_op **ops, size_t *op_cnt,
                                struct er_err *err);
/* Close op as rolled_back, with detail_json when not NULL, if it is still
 * in the state and attempt op holds; *is_closed says whether it was (not:
 * its command resumed it, or its worker closed it meanwhile). */
int er_store_journal_unrecorded_close(struct er_store *store,
                                      const struct er_acquire_op *op,
                                      const char *detail_json, bool *is_closed,
                                      struct er_err *err);

/* ---- outbox ---- */

/* Queue a message; headers_json may be NULL. token_from (NULL for most
 * rows) notes where the relay gets the bridge token the value holds masked
 * (token_relay_int.h). */
int er_store_outbox_add(struct er_store *store, const char *topic,
                        const uint8_t *key, size_t key_len,
                        const uint8_t *value, size_t value_len,
                        const char *headers_json, const char *token_from,
                        struct er_err *err);
/* Try to become the one relay of the cluster (a session advisory lock).
 * *session gets the database session holding it now (its backend pid), or
 * 0 when another session holds it. */
int er_store_relay_lock(struct er_store *store, int *session,
                        struct er_err *err);
/* er_store_ensure for the relay, whose lock is held by session (0: not
 * held). A lost connection takes its session's lock with it, so when the
 * connection was lost or replaced since the lock was taken *session becomes
 * 0, and the relay must lock again before it publishes. */
int er_store_relay_ensure(struct er_store *store, int *session,
                          struct er_err *err);
/* The oldest rows in id order (arena copies): at most row_max rows, and no
 * more than byte_max bytes of keys and values together, but always the
 * first row. Only the first value_max bytes of a value are fetched;
 * value_full_len says how long it is. */
int er_store_outbox_fetch(struct er_store *store, int row_max, size_t byte_max,
                          size_t value_max, struct er_arena *arena,
                          struct er_outbox_row **rows, size_t *row_cnt,
                          struct er_err *err);
int er_store_outbox_count(struct er_store *store, int64_t *cnt,
                          struct er_err *err);

/* store_gauges.c: one row of er_store_gauges_read. */
struct er_store_gauge {
    bool is_lease; /* a: driver, b: status; else a: kind, b: state */
    const char *a; /* arena */
    const char *b;
    int64_t cnt;
};
/* Count, in one statement, the leases not yet ended (active,
 * pending_cleanup) by their environment's driver and status, and the
 * journal entries in flight (started, interrupted, an acquire's
 * rolling_back) by kind and state. *rows (row_cnt of them) live in arena;
 * an empty count has no row. Errors: as the store's statements. */
int er_store_gauges_read(struct er_store *store, struct er_arena *arena,
                         struct er_store_gauge **rows, size_t *row_cnt,
                         struct er_err *err);
/* The relay's fence: a generation in envrun.partition_fence under the
 * reserved row (topic 'envrun.relay', partition 0), bumped by each relay
 * that takes the lock, so a relay that lost it cannot publish or settle.
 * er_store_relay_claim: right after er_store_relay_lock gave a session,
 * bump the generation (1 for the first relay), record owner (host:pid) and
 * return the new generation. Waits for a settle of the previous relay that
 * still holds the row. */
int er_store_relay_claim(struct er_store *store, const char *owner,
                         int64_t *generation, struct er_err *err);
/* The relay row's generation now (-1 when no relay ever claimed). */
int er_store_relay_generation(struct er_store *store, int64_t *generation,
                              struct er_err *err);
/* Before a publish: check on session (the one er_store_relay_lock gave)
 * that it is still this connection's session and that the relay row's
 * generation is still generation; *current gets the generation read (-1
 * when none was read). ER_EFENCED (class SKIP) when the session changed or
 * the generation moved; a lost connection fails as any statement does
 * (ER_EPG, class RETRY). */
int er_store_relay_check(struct er_store *store, int session,
                         int64_t generation, int64_t *current,
                         struct er_err *err);
/* Settle a published batch under the relay's fence: in one transaction
 * that holds the relay row FOR SHARE, check its generation is still
 * generation (*current gets the one read, -1 when none), then copy the
 * rows of quarantine (q_cnt, may be 0) with their reasons into
 * envrun.outbox_quarantine and delete them and the delivered rows ids
 * (id_cnt, may be 0) from envrun.outbox. ER_EFENCED (class SKIP), nothing
 * deleted, when the generation moved. */
int er_store_relay_settle(struct er_store *store, int64_t generation,
                          const int64_t *ids, size_t id_cnt,
                          const struct er_outbox_quarantine *quarantine,
                          size_t q_cnt, int64_t *current, struct er_err *err);

/* ---- environments ---- */

/* ensureLocalEnvironment (domain.md 2.2): race-safe insert-or-select of
 * company_id's Local environment, or, on an instance-scoped schema, the
 * instance's (serving company_id). */
int er_store_env_ensure_local(struct er_store *store, const char *company_id,
                              struct er_arena *arena, struct er_env_row *out,
                              struct er_err *err);
/* Load by id. ER_ENOTFOUND when there is no such row (or id is NULL: a
 * lease whose environment was deleted, on an instance-scoped schema).
 * company_id is the company it is used for: on an instance-scoped schema
 * it becomes out->company_id; otherwise out has the row's own, for the
 * caller to check. */
int er_store_env_get(struct er_store *store, const char *id,
                     const char *company_id, struct er_arena *arena,
                     struct er_env_row *out, struct er_err *err);

/* ---- leases ---- */

/* The id a lease acquired by company_id's command_id gets: an RFC 9562
 * version 8 UUID derived from both (SHA-256), so a replayed acquire names
 * the same lease and no other company's command can. out must hold 37
 * bytes. (Leases made before took md5(command id) as their id; those ids
 * stay as they are.) */
int er_store_lease_id_for(struct er_store *store, const char *company_id,
                          const char *command_id, char out[37],
                          struct er_err *err);
/* Insert a new active lease from in's id (NULL: a random one), company_id,
 * environment_id, execution_workspace_id, issue_id, heartbeat_run_id,
 * lease_policy, provider, provider_lease_id, expires_at_ms (-1: the TTL
 * from now) and metadata_json; out gets the row as stored. expires_cap_ms
 * (0: none) is the latest expires_at the lease may ever get: it caps this
 * one and every later refresh (er_store_lease_touch, _set_metadata), so
 * the reaper releases the lease then. ER_ECONFLICT on the single-flight
 * unique index. */
int er_store_lease_insert(struct er_store *store, const struct er_lease_row *in,
                          int64_t expires_cap_ms, struct er_arena *arena,
                          struct er_lease_row *out, struct er_err *err);
/* The earliest expires_at still ahead among active leases (ms since the
 * epoch), or 0 when there is none: when the reaper is next due. */
int er_store_lease_next_expiry(struct er_store *store, int64_t *at_ms,
                               struct er_err *err);
/* Load and lock one lease. ER_ENOTFOUND when missing. */
int er_store_lease_get(struct er_store *store, const char *id,
                       struct er_arena *arena, struct er_lease_row *out,
                       struct er_err *err);
/* Lock and return the active leases of company_id's run, oldest first
 * (another company's run id finds nothing). */
/* The leases of the company's environment whose machine is parked for
 * reuse (domain.md 3.3.3): policy reuse_by_environment, status released or
 * retained, a provider lease id no active lease holds; newest first, at
 * most 8. */
int er_store_lease_reusable(struct er_store *store, const char *company_id,
                            const char *environment_id, struct er_arena *arena,
                            struct er_lease_row **rows, size_t *row_cnt,
                            struct er_err *err);
int er_store_lease_active_for_run(struct er_store *store,
                                  const char *company_id, const char *run_id,
                                  struct er_arena *arena,
                                  struct er_lease_row **rows, size_t *row_cnt,
                                  struct er_err *err);
/* Serialise acquires of one (environment, execution workspace) with a
 * transaction advisory lock, then return the newest active ephemeral lease
 * on it (locked) or ER_ENOTFOUND. */
int er_store_lease_active_for_workspace(struct er_store *store,
                                        const char *environment_id,
                                        const char *execution_workspace_id,
                                        struct er_arena *arena,
                                        struct er_lease_row *out,
                                        struct er_err *err);
/* Whether a heartbeat run is live (queued, scheduled_retry, running). With
 * no heartbeat_runs table (a database of envrun's own) every run holding an
 * active lease counts as live; the reaper expires abandoned ones. */
int er_store_run_is_live(struct er_store *store, const char *run_id,
                         bool *is_live, struct er_err *err);
/* Set metadata (a JSON object) and bump last_used_at/updated_at. */
int er_store_lease_set_metadata(struct er_store *store, const char *id,
                                const char *metadata_json,
                                struct er_arena *arena,
                                struct er_lease_row *out, struct er_err *err);
/* Move a lease to status; released_at = now unless status is retained;
 * failure_reason / cleanup_status are written only when non-NULL. */
int er_store_lease_set_status(struct er_store *store, const char *id,
                              const char *status, const char *failure_reason,
                              const char *cleanup_status,
                              struct er_arena *arena, struct er_lease_row *out,
                              struct er_err *err);
/* A pending_cleanup lease's attempt (upstream.md C2, the metadata keys a
 * Paperclip server reads too). claim: pendingCleanupInFlight true, a new
 * pendingCleanupAttemptId, the claim held 15 minutes. settle: the attempt
 * is over; when it failed, cleanup_status failed, one more
 * pendingCleanupRetryAttempts (*attempts gets the count) and the next try
 * in 5 minutes, 30 once there were 5 (PENDING_CLEANUP_SWEEP_ATTEMPT_CAP). */
int er_store_lease_cleanup_claim(struct er_store *store, const char *id,
                                 struct er_err *err);
int er_store_lease_cleanup_settle(struct er_store *store, const char *id,
                                  bool is_failed, int64_t *attempts,
                                  struct er_err *err);
/* Touch last_used_at/updated_at (re-entrant acquire). */
int er_store_lease_touch(struct er_store *store, const char *id,
                         struct er_arena *arena, struct er_lease_row *out,
                         struct er_err *err);
/* The next LeaseEvent version of a lease (1 for a new lease). */
int er_store_lease_next_version(struct er_store *store, const char *id,
                                int64_t *version, struct er_err *err);
/* Lock and return the active leases untouched for ttl_s seconds (at most
 * limit), for the reaper; on an instance-scoped schema also the
 * pending_cleanup leases whose retry is due (upstream.md C2: not in flight
 * under another claim, pendingCleanupRetryAfterMs passed). */
int er_store_lease_stale(struct er_store *store, int64_t ttl_s, int limit,
                         struct er_arena *arena, struct er_lease_row **rows,
                         size_t *row_cnt, struct er_err *err);

/* Whether a lease whose id starts with tag (16 hex digits, no dashes) is
 * active or has an operation in flight: what a driver keeps on this host
 * for it is still needed. */
int er_store_lease_tag_in_use(struct er_store *store, const char *tag,
                              bool *is_in_use, struct er_err *err);

/* ---- activity and execution workspaces ---- */

/* Insert an activity_log row from in (id and created_at are generated). */
int er_store_activity_insert(struct er_store *store,
                             const struct er_activity_row *in,
                             struct er_arena *arena,
                             struct er_activity_row *out, struct er_err *err);
/* Merge patch_json (an object) into execution_workspaces.metadata of the
 * row (id, company_id). *is_found says whether such a row exists. */
int er_store_workspace_merge_metadata(struct er_store *store, const char *id,
                                      const char *company_id,
                                      const char *patch_json, bool *is_found,
                                      struct er_err *err);

#endif
