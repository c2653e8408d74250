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

/* An environments row. Timestamps in ms since the epoch. */
struct er_env_row {
    const char *id;
    const char *company_id;
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
    uint8_t *value;
    size_t value_len;
    char *headers_json; /* NULL or a JSON object of string values */
};

/* Connect (conninfo is a libpq string or URI). Errors: NULL, err set with
 * class RETRY when the server is unreachable. */
struct er_store *er_store_new(const char *conninfo, struct er_err *err);
void er_store_destroy(struct er_store *store);
/* Make sure the connection is usable, reconnecting when it was lost. */
int er_store_ensure(struct er_store *store, struct er_err *err);

/* Apply schemas/sql/migrations.sql in one transaction (advisory-locked). */
int er_store_migrate(struct er_store *store, struct er_err *err);

int er_store_begin(struct er_store *store, struct er_err *err);
int er_store_commit(struct er_store *store, struct er_err *err);
/* Roll back; failures are ignored (the connection is reset on next use). */
void er_store_rollback(struct er_store *store);
int er_store_savepoint(struct er_store *store, struct er_err *err);
int er_store_savepoint_rollback(struct er_store *store, struct er_err *err);
int er_store_savepoint_release(struct er_store *store, struct er_err *err);

/* ---- processed commands (effectively-once) ---- */

/* The stored result of command_id (arena copies). ER_ENOTFOUND if none. */
int er_store_processed_get(struct er_store *store, const char *command_id,
                           struct er_arena *arena, uint8_t **result,
                           size_t *result_len, struct er_err *err);
/* Record command_id's result. ER_ECONFLICT (class RETRY) when another
 * transaction recorded it first. */
int er_store_processed_put(struct er_store *store, const char *command_id,
                           const char *kind, const char *run_id,
                           const uint8_t *result, size_t result_len,
                           struct er_err *err);

/* ---- outbox ---- */

/* Queue a message; headers_json may be NULL. */
int er_store_outbox_add(struct er_store *store, const char *topic,
                        const uint8_t *key, size_t key_len,
                        const uint8_t *value, size_t value_len,
                        const char *headers_json, struct er_err *err);
/* Try to become the one relay of the cluster (session advisory lock). */
int er_store_relay_lock(struct er_store *store, bool *is_held,
                        struct er_err *err);
/* Up to limit rows in id order (arena copies). */
int er_store_outbox_fetch(struct er_store *store, int limit,
                          struct er_arena *arena, struct er_outbox_row **rows,
                          size_t *row_cnt, struct er_err *err);
int er_store_outbox_delete(struct er_store *store, const int64_t *ids,
                           size_t id_cnt, struct er_err *err);
int er_store_outbox_count(struct er_store *store, int64_t *cnt,
                          struct er_err *err);

/* ---- environments ---- */

/* ensureLocalEnvironment (domain.md 2.2): race-safe insert-or-select. */
int er_store_env_ensure_local(struct er_store *store, const char *company_id,
                              struct er_arena *arena, struct er_env_row *out,
                              struct er_err *err);
/* Load by id. ER_ENOTFOUND when there is no such row. */
int er_store_env_get(struct er_store *store, const char *id,
                     struct er_arena *arena, struct er_env_row *out,
                     struct er_err *err);

/* ---- leases ---- */

/* The id a lease acquired by command_id gets: a UUID derived from the
 * command id (md5), so a replayed acquire names the same lease. out must
 * hold 37 bytes. */
int er_store_lease_id_for(struct er_store *store, const char *command_id,
                          char out[37], struct er_err *err);
/* Insert a new active lease from in's id (NULL: a random one), company_id,
 * environment_id, execution_workspace_id, issue_id, heartbeat_run_id,
 * lease_policy, provider, provider_lease_id, expires_at_ms and metadata_json;
 * out gets the row as stored. ER_ECONFLICT on the single-flight unique index.
 */
int er_store_lease_insert(struct er_store *store, const struct er_lease_row *in,
                          struct er_arena *arena, struct er_lease_row *out,
                          struct er_err *err);
/* Load and lock one lease. ER_ENOTFOUND when missing. */
int er_store_lease_get(struct er_store *store, const char *id,
                       struct er_arena *arena, struct er_lease_row *out,
                       struct er_err *err);
/* Lock and return the active leases of a run, oldest first. */
int er_store_lease_active_for_run(struct er_store *store, const char *run_id,
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
/* Touch last_used_at/updated_at (re-entrant acquire). */
int er_store_lease_touch(struct er_store *store, const char *id,
                         struct er_arena *arena, struct er_lease_row *out,
                         struct er_err *err);
/* The next LeaseEvent version of a lease (1 for a new lease). */
int er_store_lease_next_version(struct er_store *store, const char *id,
                                int64_t *version, struct er_err *err);
/* Lock and return the active leases untouched for ttl_s seconds (at most
 * limit), for the reaper. */
int er_store_lease_stale(struct er_store *store, int64_t ttl_s, int limit,
                         struct er_arena *arena, struct er_lease_row **rows,
                         size_t *row_cnt, struct er_err *err);

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
