/* store: PostgreSQL access for the lifecycle, the outbox relay and the
 * reaper (see store_int.h). One connection per struct er_store, one thread
 * at a time. Owns its PGconn; rows handed out live in the caller's arena. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "schemas/schemas.h"
#include "worker/store_int.h"
#include "worker/store_sql_int.h"

/* Columns of environment_leases in er_lease_row order, timestamps in ms. */
#define LEASE_COLS                                                           \
    "id::text, company_id::text, environment_id::text, "                     \
    "execution_workspace_id::text, issue_id::text, heartbeat_run_id::text, " \
    "status, lease_policy, provider, provider_lease_id, "                    \
    "(extract(epoch from acquired_at) * 1000)::bigint, "                     \
    "(extract(epoch from last_used_at) * 1000)::bigint, "                    \
    "(extract(epoch from expires_at) * 1000)::bigint, "                      \
    "(extract(epoch from released_at) * 1000)::bigint, "                     \
    "failure_reason, cleanup_status, metadata::text, "                       \
    "(extract(epoch from created_at) * 1000)::bigint, "                      \
    "(extract(epoch from updated_at) * 1000)::bigint"

/* Columns of environments in env_from's order; the second is the row's
 * company, which an instance-scoped schema does not have. */
#define ENV_COLS_AFTER_COMPANY                                          \
    "name, description, driver, status, config::text, "                 \
    "metadata::text, (extract(epoch from created_at) * 1000)::bigint, " \
    "(extract(epoch from updated_at) * 1000)::bigint"
#define ENV_COLS          "id::text, company_id::text, " ENV_COLS_AFTER_COMPANY
#define ENV_COLS_INSTANCE "id::text, NULL::text, " ENV_COLS_AFTER_COMPANY

/* The Local environment's fixed values (domain.md 2.2). */
#define LOCAL_ENV_VALUES                                                  \
    "'Local', 'Default execution environment for Paperclip runs on this " \
    "machine.', 'local', 'active', '{}'::jsonb, "                         \
    "'{\"managedByPaperclip\": true, \"defaultForCompany\": true}'::jsonb"

#define ACTIVITY_COLS                                                         \
    "id::text, company_id::text, actor_type, actor_id, action, entity_type, " \
    "entity_id, agent_id::text, run_id::text, details::text, "                \
    "(extract(epoch from created_at) * 1000)::bigint"

/* metadata as an object (malformed metadata reads as none), and one of its
 * keys as a whole number, 0 when it is not one (upstream.md C2: malformed
 * metadata reads as 0 attempts). */
#define META_OBJ                                                       \
    "(CASE WHEN jsonb_typeof(metadata) = 'object' THEN metadata ELSE " \
    "'{}'::jsonb END)"
#define META_NUM(key)                                         \
    "(CASE WHEN metadata->>'" key "' ~ '^[0-9]{1,15}$' THEN " \
    "(metadata->>'" key "')::bigint ELSE 0 END)"
#define NOW_MS         "(extract(epoch from now()) * 1000)::bigint"
#define META_ATTEMPTS  META_NUM("pendingCleanupRetryAttempts")
#define META_RETRY_AT  META_NUM("pendingCleanupRetryAfterMs")
#define META_CLAIM_END META_NUM("pendingCleanupLeaseExpiresAtMs")

/* A pending_cleanup lease's attempt failed (upstream.md C2): one more
 * attempt, the next in 5 minutes, in 30 from the fifth on. */
#define SETTLE_FAILED_SQL                                                 \
    "UPDATE environment_leases SET cleanup_status = 'failed', "           \
    "updated_at = now(), metadata = " META_OBJ                            \
    " || jsonb_build_object('pendingCleanupInFlight', false, "            \
    "'pendingCleanupRetryAttempts', " META_ATTEMPTS " + 1, "              \
    "'pendingCleanupRetryAfterMs', " NOW_MS " + CASE WHEN " META_ATTEMPTS \
    " + 1 >= 5 THEN 1800000 ELSE 300000 END) "                            \
    "WHERE id = $1::uuid AND status = 'pending_cleanup' RETURNING "       \
    "(metadata->>'pendingCleanupRetryAttempts')::bigint"

static void notice_to_log(void *arg, const char *message)
{
    size_t n = strlen(message);

    (void)arg;
    /* Notices are chatty ("relation already exists, skipping"): debug. */
    while (n > 0 && message[n - 1] == '\n')
        n--;
    ER_LOG_DEBUG("store", "postgres: %.*s", (int)n, message);
}

/* Classify a failed result once, from its SQLSTATE (PostgreSQL appendix A):
 * class 08 connection, 40 transaction rollback, 53 resources, 57P0x shutdown
 * are transient; 23505 is a unique race the caller may retry. */
int er_store__result_to_err(PGconn *conn, const PGresult *res, const char *what,
                            struct er_err *err)
{
    const char *state =
        res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg =
        res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(conn);
    size_t n = strlen(msg);

    while (n > 0 && msg[n - 1] == '\n')
        n--;
    if (state == NULL || PQstatus(conn) != CONNECTION_OK)
        return er_err_set(err, ER_EPG, ER_ERRCLASS_RETRY,
                          "%s failed (connection): %.*s", what, (int)n, msg);
    /* lock_not_available: a lock_timeout the caller set ran out. */
    if (strcmp(state, "55P03") == 0)
        return er_err_set(err, ER_ETIMEDOUT, ER_ERRCLASS_RETRY,
                          "%s timed out waiting for a lock: %.*s", what, (int)n,
                          msg);
    if (strcmp(state, "23505") == 0)
        return er_err_set(err, ER_ECONFLICT, ER_ERRCLASS_RETRY,
                          "%s rejected (sqlstate %s): %.*s", what, state,
                          (int)n, msg);
    /* Class 22 (data exception) and 23 (integrity constraint, e.g. a
     * control-plane foreign key): the command's data was refused. */
    if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0)
        return er_err_set(err, ER_EPG, ER_ERRCLASS_SKIP,
                          "%s rejected (sqlstate %s): %.*s", what, state,
                          (int)n, msg);
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "40", 2) == 0 ||
        strncmp(state, "53", 2) == 0 || strncmp(state, "57P", 3) == 0)
        return er_err_set(err, ER_EPG, ER_ERRCLASS_RETRY,
                          "%s failed (sqlstate %s): %.*s", what, state, (int)n,
                          msg);
    return er_err_set(err, ER_EPG, ER_ERRCLASS_FATAL,
                      "%s failed (sqlstate %s): %.*s", what, state, (int)n,
                      msg);
}

/* ---- statements prepared once per connection ---- */

static uint64_t stmt_hash(const char *sql)
{
    uint64_t h = 14695981039346656037u; /* FNV-1a */

    for (; *sql != '\0'; sql++)
        h = (h ^ (unsigned char)*sql) * 1099511628211u;
    return h != 0 ? h : 1;
}

/* Forget every prepared statement: the connection that held them is gone
 * (or about to be). */
static void stmts_forget(struct er_store *store)
{
    size_t i;

    for (i = 0; i < ER_STORE_STMT_SLOTS; i++)
        er_free(store->stmts[i].sql);
    memset(store->stmts, 0, sizeof(store->stmts));
    store->stmt_cnt = 0;
}

/* Forget what was sent ahead: the connection is gone or rolled back. */
static void pipe_reset(struct er_store *store)
{
    store->pipe_cnt = 0;
    store->pipe_check_cnt = 0;
    store->is_txn_failed = false;
}

/* Close the session: its prepared statements and whatever was sent ahead
 * on it go with it. er_store_ensure opens the next one. */
static void session_drop(struct er_store *store)
{
    PQfinish(store->conn);
    store->conn = NULL;
    stmts_forget(store);
    pipe_reset(store);
}

/* Parameters sent as binary: those whose lengths[i] is non-zero. */
static void param_formats(const int *lengths, int nparams, int formats[16])
{
    int i;

    ER_ASSERT(nparams <= 16);
    for (i = 0; i < nparams; i++)
        formats[i] = lengths != NULL && lengths[i] != 0 ? 1 : 0;
}

/* The slot of sql: its statement, or the empty slot it would take. */
static struct er_store_stmt *stmt_slot(struct er_store *store, const char *sql,
                                       uint64_t h)
{
    size_t i = (size_t)(h % ER_STORE_STMT_SLOTS);
    struct er_store_stmt *st;

    for (;; i = (i + 1) % ER_STORE_STMT_SLOTS) {
        st = &store->stmts[i];
        if (st->hash == 0 || (st->hash == h && strcmp(st->sql, sql) == 0))
            return st;
    }
}

/* sql's prepared statement, NULL when it has none (or has one for another
 * parameter count). */
static const struct er_store_stmt *stmt_find(struct er_store *store,
                                             const char *sql, int nparams)
{
    const struct er_store_stmt *st = stmt_slot(store, sql, stmt_hash(sql));

    return st->hash != 0 && st->nparams == nparams ? st : NULL;
}

/* The prepared statement for sql, prepared now if it is new. NULL with
 * *rc 0: run it unprepared (the table is full, or the text came with
 * another parameter count); NULL with *rc set: the prepare failed. */
static const struct er_store_stmt *stmt_get(struct er_store *store,
                                            const char *what, const char *sql,
                                            int nparams, struct er_err *err,
                                            int *rc)
{
    uint64_t h = stmt_hash(sql);
    struct er_store_stmt *st = stmt_slot(store, sql, h);
    PGresult *res;

    *rc = 0;
    if (st->hash != 0)
        return st->nparams == nparams ? st : NULL;
    if (store->stmt_cnt >= ER_STORE_STMT_MAX)
        return NULL;
    st->sql = er_strdup(sql);
    if (st->sql == NULL)
        return NULL;
    snprintf(st->name, sizeof(st->name), "er_s%d", store->stmt_cnt);
    /* No parameter types: the server infers them, as PQexecParams's
     * would. */
    res = PQprepare(store->conn, st->name, sql, nparams, NULL);
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        *rc = er_store__result_to_err(store->conn, res, what, err);
        PQclear(res);
        er_free(st->sql);
        st->sql = NULL;
        return NULL;
    }
    PQclear(res);
    st->hash = h;
    st->nparams = nparams;
    store->stmt_cnt++;
    return st;
}

/* Fill err from a failed result res of statement what (stmt: it ran
 * prepared) and return its code. "cached plan must not change result
 * type" (sqlstate 0A000, raised where a cached plan is checked; the
 * function's name is the same in every locale) means a migration changed
 * a table under a prepared statement: the session goes, and its
 * statements with it, and the caller retries on a new one. */
static int failed(struct er_store *store, bool is_prepared, const PGresult *res,
                  const char *what, struct er_err *err)
{
    const char *fn =
        res != NULL ? PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION) : NULL;
    int rc = er_store__result_to_err(store->conn, res, what, err);

    if (is_prepared && fn != NULL && strcmp(fn, "RevalidateCachedQuery") == 0) {
        if (err != NULL)
            err->cls = ER_ERRCLASS_RETRY;
        session_drop(store);
    }
    return rc;
}

/* ---- statements sent ahead (pipeline mode) ---- */

/* The transaction failed at a statement sent ahead: every statement until
 * the rollback gets that statement's error, as the server would refuse
 * it. */
static int txn_failed(const struct er_store *store, struct er_err *err)
{
    if (err != NULL)
        *err = store->txn_err;
    return store->txn_err.code;
}

/* Mark the sync point, read the results of everything sent since pipeline
 * mode began, in order, and leave the mode. With last, the last statement
 * is the one the caller waits for: *last gets its result when every
 * statement succeeded, else NULL, and its own failure is the caller's to
 * handle (a savepoint may undo it). The first failure is returned; one of
 * a statement sent ahead is kept for the transaction. */
static int pipe_sync(struct er_store *store, PGresult **last,
                     struct er_err *err)
{
    PGconn *conn = store->conn;
    PGresult *res;
    int cnt = store->pipe_cnt;
    bool is_ahead_failed = false;
    int rc = 0;
    int i;

    if (last != NULL)
        *last = NULL;
    store->pipe_cnt = 0;
    store->pipe_check_cnt = 0;
    if (PQpipelineSync(conn) != 1) {
        rc = failed(store, false, NULL, "pipeline sync", err);
        is_ahead_failed = true;
        goto out;
    }
    for (i = 0; i < cnt; i++) {
        const struct er_store_sent *sent = &store->pipe[i];
        bool is_awaited = last != NULL && i == cnt - 1;
        ExecStatusType st;
        PGresult *more;

        res = PQgetResult(conn);
        if (res == NULL) {
            if (rc == 0) {
                rc = failed(store, false, NULL, sent->what, err);
                is_ahead_failed = true;
            }
            goto out;
        }
        st = PQresultStatus(res);
        if (rc == 0 && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK &&
            st != PGRES_PIPELINE_ABORTED) {
            rc = failed(store, true, res, sent->what, err);
            is_ahead_failed = !is_awaited;
            if (store->conn == NULL) {
                PQclear(res);
                return rc;
            }
        }
        if (rc == 0 && sent->check != NULL) {
            rc = sent->check(res, sent, err);
            is_ahead_failed = rc != 0;
        }
        if (rc == 0 && is_awaited) {
            *last = res;
            res = NULL;
        }
        PQclear(res);
        /* Each statement's results end with a NULL. */
        while ((more = PQgetResult(conn)) != NULL)
            PQclear(more);
    }
    res = PQgetResult(conn);
    if (rc == 0 &&
        (res == NULL || (PQresultStatus(res) != PGRES_PIPELINE_SYNC &&
                         PQresultStatus(res) != PGRES_PIPELINE_ABORTED))) {
        rc = failed(store, false, res, "pipeline sync", err);
        is_ahead_failed = true;
    }
    PQclear(res);
out:
    if (PQexitPipelineMode(conn) != 1 && rc == 0) {
        rc = failed(store, false, NULL, "pipeline end", err);
        is_ahead_failed = true;
    }
    if (rc != 0 && last != NULL && *last != NULL) {
        PQclear(*last);
        *last = NULL;
    }
    if (is_ahead_failed) {
        store->is_txn_failed = true;
        if (err != NULL)
            store->txn_err = *err;
        else
            er_err_set(&store->txn_err, rc, ER_ERRCLASS_RETRY,
                       "a statement of the transaction failed");
    }
    return rc;
}

int er_store__sync(struct er_store *store, struct er_err *err)
{
    if (store->is_txn_failed)
        return txn_failed(store, err);
    if (store->pipe_cnt == 0)
        return 0;
    return pipe_sync(store, NULL, err);
}

/* Send a prepared statement in pipeline mode, entering it if need be;
 * sent says what it is (NULL: just what). */
static int pipe_send(struct er_store *store, const struct er_store_stmt *stmt,
                     const char *what, const struct er_store_sent *sent,
                     int nparams, const char *const *values, const int *lengths,
                     const int *formats, int result_format, struct er_err *err)
{
    if (store->pipe_cnt == 0 && PQenterPipelineMode(store->conn) != 1)
        return failed(store, false, NULL, what, err);
    if (PQsendQueryPrepared(store->conn, stmt->name, nparams, values, lengths,
                            formats, result_format) != 1) {
        int rc = failed(store, false, NULL, what, err);

        /* Nothing more can go on this connection: drop it, and what was
         * sent with it. */
        session_drop(store);
        return rc;
    }
    if (sent != NULL) {
        store->pipe[store->pipe_cnt] = *sent;
        store->pipe_check_cnt += sent->check != NULL;
    } else {
        memset(&store->pipe[store->pipe_cnt], 0, sizeof(store->pipe[0]));
        store->pipe[store->pipe_cnt].what = what;
    }
    store->pipe_cnt++;
    return 0;
}

/* The prepared statement for sql, out of pipeline mode first when it is
 * new (preparing is synchronous). NULL with *rc 0: run it unprepared. */
static const struct er_store_stmt *stmt_ready(struct er_store *store,
                                              const char *what, const char *sql,
                                              int nparams, struct er_err *err,
                                              int *rc)
{
    const struct er_store_stmt *stmt = stmt_find(store, sql, nparams);

    *rc = 0;
    if (stmt != NULL)
        return stmt;
    if (store->pipe_cnt > 0) {
        *rc = pipe_sync(store, NULL, err);
        if (*rc != 0)
            return NULL;
    }
    return stmt_get(store, what, sql, nparams, err, rc);
}

static PGresult *exec_fmt(struct er_store *store, const char *what,
                          const char *sql, int nparams,
                          const char *const *values, const int *lengths,
                          int result_format, struct er_err *err)
{
    int formats[16] = { 0 };
    const struct er_store_stmt *stmt;
    PGresult *res;
    ExecStatusType st;
    int rc;

    if (store->is_txn_failed) {
        txn_failed(store, err);
        return NULL;
    }
    param_formats(lengths, nparams, formats);
    stmt = stmt_ready(store, what, sql, nparams, err, &rc);
    if (rc != 0)
        return NULL;
    if (store->pipe_cnt > 0 && stmt != NULL) {
        /* Behind what was sent ahead, in the same round trip. */
        if (pipe_send(store, stmt, what, NULL, nparams, values, lengths,
                      formats, result_format, err) != 0)
            return NULL;
        pipe_sync(store, &res, err);
        return res;
    }
    /* Unprepared only out of pipeline mode: stmt_ready read out what was
     * sent ahead before it found no statement. */
    ER_ASSERT(stmt != NULL || store->pipe_cnt == 0);
    if (stmt != NULL)
        res = PQexecPrepared(store->conn, stmt->name, nparams, values, lengths,
                             formats, result_format);
    else
        res = PQexecParams(store->conn, sql, nparams, NULL, values, lengths,
                           formats, result_format);
    if (res == NULL) {
        /* libpq returns NULL only when out of memory or disconnected. */
        failed(store, false, NULL, what, err);
        return NULL;
    }
    st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    failed(store, stmt != NULL, res, what, err);
    PQclear(res);
    return NULL;
}

/* Run one parameterised statement, prepared the first time (see
 * store_sql_int.h). Text parameters, except those whose lengths[i] is
 * non-zero, which are sent as binary (bytea). Returns the result (caller
 * PQclears) or NULL with err set. */
PGresult *er_store__exec(struct er_store *store, const char *what,
                         const char *sql, int nparams,
                         const char *const *values, const int *lengths,
                         struct er_err *err)
{
    return exec_fmt(store, what, sql, nparams, values, lengths, 0, err);
}

PGresult *er_store__exec_binary(struct er_store *store, const char *what,
                                const char *sql, int nparams,
                                const char *const *values, struct er_err *err)
{
    return exec_fmt(store, what, sql, nparams, values, NULL, 1, err);
}

static int exec_later(struct er_store *store, const char *what,
                      const struct er_store_sent *sent, const char *sql,
                      int nparams, const char *const *values,
                      const int *lengths, struct er_err *err)
{
    int formats[16] = { 0 };
    const struct er_store_stmt *stmt;
    PGresult *res;
    int rc;

    if (store->is_txn_failed)
        return txn_failed(store, err);
    stmt = stmt_ready(store, what, sql, nparams, err, &rc);
    if (rc != 0)
        return rc;
    if (stmt == NULL) {
        res = er_store__exec(store, what, sql, nparams, values, lengths, err);
        if (res == NULL)
            return err != NULL ? err->code : ER_EPG;
        rc = sent != NULL && sent->check != NULL ? sent->check(res, sent, err)
                                                 : 0;
        PQclear(res);
        return rc;
    }
    param_formats(lengths, nparams, formats);
    rc = pipe_send(store, stmt, what, sent, nparams, values, lengths, formats,
                   0, err);
    if (rc == 0 && store->pipe_cnt == ER_STORE_PIPE_MAX)
        rc = pipe_sync(store, NULL, err);
    return rc;
}

int er_store__exec_later(struct er_store *store, const char *what,
                         const char *sql, int nparams,
                         const char *const *values, const int *lengths,
                         struct er_err *err)
{
    return exec_later(store, what, NULL, sql, nparams, values, lengths, err);
}

int er_store__exec_checked(struct er_store *store,
                           const struct er_store_sent *sent, const char *sql,
                           int nparams, const char *const *values,
                           struct er_err *err)
{
    return exec_later(store, sent->what, sent, sql, nparams, values, NULL, err);
}

int er_store__exec_cmd(struct er_store *store, const char *what,
                       const char *sql, int nparams, const char *const *values,
                       struct er_err *err)
{
    PGresult *res =
        er_store__exec(store, what, sql, nparams, values, NULL, err);

    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    PQclear(res);
    return 0;
}

char *er_store__get_str(const PGresult *res, int row, int col,
                        struct er_arena *arena)
{
    if (PQgetisnull(res, row, col))
        return NULL;
    return er_arena_strndup(arena, PQgetvalue(res, row, col),
                            (size_t)PQgetlength(res, row, col));
}

int64_t er_store__get_i64(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return -1;
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

int er_store__oom(struct er_err *err)
{
    return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY,
                      "out of memory (arena)");
}

static int lease_from(const PGresult *res, int row, struct er_arena *arena,
                      struct er_lease_row *out, struct er_err *err)
{
    out->id = er_store__get_str(res, row, 0, arena);
    out->company_id = er_store__get_str(res, row, 1, arena);
    out->environment_id = er_store__get_str(res, row, 2, arena);
    out->execution_workspace_id = er_store__get_str(res, row, 3, arena);
    out->issue_id = er_store__get_str(res, row, 4, arena);
    out->heartbeat_run_id = er_store__get_str(res, row, 5, arena);
    out->status = er_store__get_str(res, row, 6, arena);
    out->lease_policy = er_store__get_str(res, row, 7, arena);
    out->provider = er_store__get_str(res, row, 8, arena);
    out->provider_lease_id = er_store__get_str(res, row, 9, arena);
    out->acquired_at_ms = er_store__get_i64(res, row, 10);
    out->last_used_at_ms = er_store__get_i64(res, row, 11);
    out->expires_at_ms = er_store__get_i64(res, row, 12);
    out->released_at_ms = er_store__get_i64(res, row, 13);
    out->failure_reason = er_store__get_str(res, row, 14, arena);
    out->cleanup_status = er_store__get_str(res, row, 15, arena);
    out->metadata_json = er_store__get_str(res, row, 16, arena);
    out->created_at_ms = er_store__get_i64(res, row, 17);
    out->updated_at_ms = er_store__get_i64(res, row, 18);
    if (out->id == NULL || out->status == NULL || out->lease_policy == NULL)
        return er_store__oom(err);
    return 0;
}

static int env_from(const PGresult *res, int row, struct er_arena *arena,
                    struct er_env_row *out, struct er_err *err)
{
    out->id = er_store__get_str(res, row, 0, arena);
    out->company_id = er_store__get_str(res, row, 1, arena);
    out->is_instance_scoped = false;
    out->name = er_store__get_str(res, row, 2, arena);
    out->description = er_store__get_str(res, row, 3, arena);
    out->driver = er_store__get_str(res, row, 4, arena);
    out->status = er_store__get_str(res, row, 5, arena);
    out->config_json = er_store__get_str(res, row, 6, arena);
    out->metadata_json = er_store__get_str(res, row, 7, arena);
    out->created_at_ms = er_store__get_i64(res, row, 8);
    out->updated_at_ms = er_store__get_i64(res, row, 9);
    if (out->id == NULL || out->name == NULL || out->driver == NULL ||
        out->status == NULL || out->config_json == NULL)
        return er_store__oom(err);
    return 0;
}

/* A single-row query into a lease; ER_ENOTFOUND when no row. */
static int one_lease(struct er_store *store, const char *what, const char *sql,
                     int nparams, const char *const *values,
                     struct er_arena *arena, struct er_lease_row *out,
                     struct er_err *err)
{
    PGresult *res =
        er_store__exec(store, what, sql, nparams, values, NULL, err);
    int rc;

    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (PQntuples(res) == 0)
        rc = ER_ENOTFOUND;
    else
        rc = lease_from(res, 0, arena, out, err);
    PQclear(res);
    return rc;
}

static int many_leases(struct er_store *store, const char *what,
                       const char *sql, int nparams, const char *const *values,
                       struct er_arena *arena, struct er_lease_row **rows,
                       size_t *row_cnt, struct er_err *err)
{
    PGresult *res =
        er_store__exec(store, what, sql, nparams, values, NULL, err);
    int n;
    int i;
    int rc = 0;

    *rows = NULL;
    *row_cnt = 0;
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    n = PQntuples(res);
    if (n > 0) {
        *rows = er_arena_alloc(arena, sizeof(**rows) * (size_t)n);
        if (*rows == NULL) {
            rc = er_store__oom(err);
            goto out;
        }
    }
    for (i = 0; i < n; i++) {
        rc = lease_from(res, i, arena, &(*rows)[i], err);
        if (rc != 0)
            goto out;
    }
    *row_cnt = (size_t)n;
out:
    PQclear(res);
    return rc;
}

/* ================================================================ */

struct er_store *er_store_new(const char *conninfo, struct er_err *err)
{
    struct er_store *store = er_calloc(1, sizeof(*store));

    if (store == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }
    snprintf(store->lease_ttl_s, sizeof(store->lease_ttl_s), "21600");
    store->conninfo = er_strdup(conninfo);
    if (store->conninfo == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        goto fail;
    }
    if (er_store_ensure(store, err) != 0)
        goto fail;
    return store;
fail:
    er_store_destroy(store);
    return NULL;
}

void er_store_set_lease_ttl(struct er_store *store, int64_t ttl_s)
{
    snprintf(store->lease_ttl_s, sizeof(store->lease_ttl_s), "%lld",
             (long long)ttl_s);
}

void er_store_destroy(struct er_store *store)
{
    if (store == NULL)
        return;
    session_drop(store);
    er_free(store->conninfo);
    er_free(store);
}

/* Read the schema era from the catalog: whether environments has a
 * company_id column (a version string could lie; the columns cannot). */
static int era_detect(struct er_store *store, struct er_err *err)
{
    PGresult *res = er_store__exec(
        store, "schema era lookup",
        "SELECT to_regclass('environments') IS NOT NULL, EXISTS (SELECT 1 "
        "FROM pg_attribute WHERE attrelid = to_regclass('environments') "
        "AND attname = 'company_id' AND attnum > 0 AND NOT attisdropped)",
        0, NULL, NULL, err);

    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0)
        store->era = ER_ERA_NONE;
    else if (strcmp(PQgetvalue(res, 0, 1), "t") == 0)
        store->era = ER_ERA_COMPANY;
    else
        store->era = ER_ERA_INSTANCE;
    PQclear(res);
    return 0;
}

enum er_store_era er_store_era(const struct er_store *store)
{
    return store->era;
}

const char *er_store_era_name(enum er_store_era era)
{
    switch (era) {
    case ER_ERA_COMPANY:
        return "company";
    case ER_ERA_INSTANCE:
        return "instance";
    case ER_ERA_NONE:
        break;
    }
    return "none";
}

const char *er_store_era_describe(enum er_store_era era)
{
    switch (era) {
    case ER_ERA_COMPANY:
        return "environments per company (Paperclip up to 2026.5)";
    case ER_ERA_INSTANCE:
        return "environments per instance, leases may be pending_cleanup "
               "(Paperclip 2026.6 and later)";
    case ER_ERA_NONE:
        break;
    }
    return "no environments table";
}

int er_store_ensure(struct er_store *store, struct er_err *err)
{
    const char *msg;
    size_t n;

    if (store->conn != NULL && PQstatus(store->conn) == CONNECTION_OK)
        return 0;
    session_drop(store);
    store->conn = PQconnectdb(store->conninfo);
    if (store->conn != NULL && PQstatus(store->conn) == CONNECTION_OK) {
        PQsetNoticeProcessor(store->conn, notice_to_log, NULL);
        /* A worker paused (SIGSTOP) inside a transaction would hold its row
         * locks and its fence row, and so block the next owner's claim,
         * for as long as it stays paused. No transaction of ours waits on
         * a driver, so one idle this long is such a worker's: the server
         * ends it. */
        int rc = er_store__exec_cmd(store, "session setup",
                                    "SET idle_in_transaction_session_timeout "
                                    "= '60s'",
                                    0, NULL, err);

        if (rc == 0)
            rc = era_detect(store, err);
        /* A session whose era is not known must not be used: the next
         * call connects and reads it again. */
        if (rc != 0)
            session_drop(store);
        return rc;
    }
    /* libpq's message names host and port, never the password. */
    msg = store->conn != NULL ? PQerrorMessage(store->conn) : "out of memory";
    n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        n--;
    return er_err_set(err, ER_EPG, ER_ERRCLASS_RETRY,
                      "connect to postgres failed: %.*s", (int)n, msg);
}

int er_store_migrate(struct er_store *store, struct er_err *err)
{
    PGresult *res = NULL;
    int rc = 0;

    rc = er_store_begin(store, err);
    if (rc == 0)
        rc = er_store__sync(store, err);
    if (rc != 0)
        return rc;
    /* A multi-statement script: simple query protocol, no parameters. */
    res = PQexec(store->conn, er_embed_migrations_sql);
    if (res == NULL || (PQresultStatus(res) != PGRES_COMMAND_OK &&
                        PQresultStatus(res) != PGRES_TUPLES_OK)) {
        rc = er_store__result_to_err(store->conn, res, "migrations", err);
        PQclear(res);
        er_store_rollback(store);
        return rc;
    }
    PQclear(res);
    rc = er_store_commit(store, err);
    if (rc == 0)
        rc = era_detect(store, err);
    if (rc != 0)
        session_drop(store);
    return rc;
}

int er_store_installation_id(struct er_store *store, char out[40],
                             struct er_err *err)
{
    PGresult *res = er_store__exec(store, "installation id",
                                   "SELECT id::text FROM envrun.installation",
                                   0, NULL, NULL, err);

    out[0] = '\0';
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (PQntuples(res) > 0)
        snprintf(out, 40, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

int er_store_begin(struct er_store *store, struct er_err *err)
{
    int rc = er_store_ensure(store, err);

    if (rc != 0)
        return rc;
    /* Sent with the transaction's first statement that waits. */
    return er_store__exec_later(store, "begin", "BEGIN", 0, NULL, NULL, err);
}

int er_store_commit(struct er_store *store, struct er_err *err)
{
    PGresult *res;
    int rc = 0;

    /* A check sent ahead is judged before the COMMIT is sent: the server
     * would run the COMMIT whatever the check then said. */
    if (store->pipe_check_cnt > 0)
        rc = er_store__sync(store, err);
    if (rc == 0)
        rc = er_store__exec_cmd(store, "commit", "COMMIT", 0, NULL, err);

    if (rc == 0 || store->conn == NULL ||
        PQstatus(store->conn) != CONNECTION_OK)
        return rc;
    /* A statement sent ahead failed, so the COMMIT behind it did not run
     * and the transaction is still open: end it, as a failed COMMIT
     * would. */
    pipe_reset(store);
    if (PQtransactionStatus(store->conn) != PQTRANS_IDLE) {
        res = PQexec(store->conn, "ROLLBACK");
        PQclear(res);
    }
    return rc;
}

void er_store_rollback(struct er_store *store)
{
    PGresult *res;

    if (store->pipe_cnt > 0 && store->conn != NULL)
        pipe_sync(store, NULL, NULL);
    pipe_reset(store);
    if (store->conn != NULL &&
        PQpipelineStatus(store->conn) != PQ_PIPELINE_OFF) {
        /* A pipeline that could not be ended: the session goes, and the
         * next transaction begins on a new one. */
        session_drop(store);
    }
    if (store->conn == NULL || PQstatus(store->conn) != CONNECTION_OK)
        return;
    res = PQexec(store->conn, "ROLLBACK");
    PQclear(res);
}

int er_store_savepoint(struct er_store *store, struct er_err *err)
{
    return er_store__exec_later(store, "savepoint", "SAVEPOINT er_step", 0,
                                NULL, NULL, err);
}

int er_store_savepoint_rollback(struct er_store *store, struct er_err *err)
{
    return er_store__exec_cmd(store, "rollback to savepoint",
                              "ROLLBACK TO SAVEPOINT er_step", 0, NULL, err);
}

int er_store_savepoint_release(struct er_store *store, struct er_err *err)
{
    return er_store__exec_later(store, "release savepoint",
                                "RELEASE SAVEPOINT er_step", 0, NULL, NULL,
                                err);
}

/* ---- processed commands ---- */

int er_store_processed_get(struct er_store *store, const char *command_id,
                           struct er_arena *arena, struct er_processed_row *out,
                           struct er_err *err)
{
    const char *params[] = { command_id };
    PGresult *res = NULL;
    size_t len;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    /* A concurrent step of the same id is caught by the primary key at
     * er_store_processed_put, which waits for the other transaction. */
    res = er_store__exec_binary(
        store, "processed lookup",
        "SELECT result, kind, company_id "
        "FROM envrun.processed_commands WHERE command_id = $1",
        1, params, err);
    if (res == NULL) {
        rc = err != NULL ? err->code : ER_EPG;
        goto out;
    }
    if (PQntuples(res) == 0) {
        rc = ER_ENOTFOUND;
        goto out;
    }
    len = (size_t)PQgetlength(res, 0, 0);
    out->result = er_arena_alloc(arena, len + 1);
    out->kind = er_store__get_str(res, 0, 1, arena);
    out->company_id = er_store__get_str(res, 0, 2, arena);
    if (out->result == NULL || out->kind == NULL ||
        (out->company_id == NULL && !PQgetisnull(res, 0, 2))) {
        rc = er_store__oom(err);
        goto out;
    }
    memcpy(out->result, PQgetvalue(res, 0, 0), len);
    out->result_len = len;
out:
    PQclear(res);
    return rc;
}

int er_store_processed_put(struct er_store *store, const char *command_id,
                           const char *company_id, const char *kind,
                           const char *run_id, const uint8_t *result,
                           size_t result_len, struct er_err *err)
{
    const char *params[] = { command_id, kind, run_id, (const char *)result,
                             company_id };
    const int lengths[] = { 0, 0, 0, (int)result_len, 0 };

    ER_ASSERT(result_len > 0 && result_len < INT32_MAX);
    return er_store__exec_later(store, "processed insert",
                                "INSERT INTO envrun.processed_commands "
                                "(command_id, kind, heartbeat_run_id, result, "
                                "company_id) VALUES ($1, $2, $3, $4, $5)",
                                5, params, lengths, err);
}

/* ---- environments ---- */

static PGresult *load_local_env(struct er_store *store,
                                const char *const *params, struct er_err *err)
{
    if (store->era == ER_ERA_INSTANCE)
        return er_store__exec(store, "load local environment",
                              "SELECT " ENV_COLS_INSTANCE " FROM environments "
                              "WHERE driver = 'local' "
                              "ORDER BY created_at LIMIT 1",
                              0, NULL, NULL, err);
    return er_store__exec(store, "load local environment",
                          "SELECT " ENV_COLS " FROM environments WHERE "
                          "company_id = $1 AND driver = 'local' "
                          "ORDER BY created_at LIMIT 1",
                          1, params, NULL, err);
}

/* The INSERT of ensureLocalEnvironment. The company-scoped index is the
 * conflict target there. An instance-scoped schema has one Local for the
 * instance (environments_local_driver_idx) and names unique in it: any
 * conflict means the row, or its name, is there already. */
static PGresult *insert_local_env(struct er_store *store,
                                  const char *const *params, struct er_err *err)
{
    if (store->era == ER_ERA_INSTANCE)
        return er_store__exec(
            store, "ensure local environment",
            "INSERT INTO environments (name, description, driver, status, "
            "config, metadata) VALUES (" LOCAL_ENV_VALUES ") "
            "ON CONFLICT DO NOTHING RETURNING " ENV_COLS_INSTANCE,
            0, NULL, NULL, err);
    return er_store__exec(
        store, "ensure local environment",
        "INSERT INTO environments (company_id, name, description, driver, "
        "status, config, metadata) VALUES ($1, " LOCAL_ENV_VALUES ") "
        "ON CONFLICT (company_id, driver) WHERE driver = 'local' "
        "DO NOTHING RETURNING " ENV_COLS,
        1, params, NULL, err);
}

/* env_from, and on an instance-scoped schema the company served. */
static int env_from_for(const PGresult *res, const char *company_id,
                        struct er_arena *arena, struct er_env_row *out,
                        struct er_err *err)
{
    int rc = env_from(res, 0, arena, out, err);

    if (rc != 0 || out->company_id != NULL)
        return rc;
    out->is_instance_scoped = true;
    out->company_id =
        company_id != NULL ? er_arena_strdup(arena, company_id) : NULL;
    if (company_id != NULL && out->company_id == NULL)
        return er_store__oom(err);
    return 0;
}

int er_store_env_ensure_local(struct er_store *store, const char *company_id,
                              struct er_arena *arena, struct er_env_row *out,
                              struct er_err *err)
{
    const char *params[] = { company_id };
    PGresult *res = NULL;
    int rc = 0;

    /* domain.md 2.2: insert, and on a conflict with the one-local index
     * read the winner's row. Read first: after the first run the row is
     * there, and the read is one cheap statement. */
    res = load_local_env(store, params, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (PQntuples(res) == 0) {
        PQclear(res);
        res = insert_local_env(store, params, err);
        if (res == NULL)
            return err != NULL ? err->code : ER_EPG;
    }
    if (PQntuples(res) == 0) {
        /* Another transaction inserted it first. */
        PQclear(res);
        res = load_local_env(store, params, err);
        if (res == NULL)
            return err != NULL ? err->code : ER_EPG;
    }
    if (PQntuples(res) > 0)
        rc = env_from_for(res, company_id, arena, out, err);
    else if (store->era == ER_ERA_INSTANCE)
        /* No local row, yet the insert conflicted: another environment
         * has the name. Only an operator can settle that. */
        rc = er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_SKIP,
                        "Failed to ensure local environment: the name "
                        "\"Local\" belongs to another environment");
    else
        rc = er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_RETRY,
                        "Failed to ensure local environment");
    PQclear(res);
    return rc;
}

int er_store_env_get(struct er_store *store, const char *id,
                     const char *company_id, struct er_arena *arena,
                     struct er_env_row *out, struct er_err *err)
{
    const char *params[] = { id };
    PGresult *res;
    int rc;

    if (id == NULL)
        return ER_ENOTFOUND;
    res = er_store__exec(store, "load environment",
                         store->era == ER_ERA_INSTANCE
                             ? "SELECT " ENV_COLS_INSTANCE
                               " FROM environments WHERE id = $1::uuid"
                             : "SELECT " ENV_COLS
                               " FROM environments WHERE id = $1::uuid",
                         1, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (PQntuples(res) == 0)
        rc = ER_ENOTFOUND;
    else
        rc = env_from_for(res, company_id, arena, out, err);
    PQclear(res);
    return rc;
}

/* ---- leases ---- */

/* expires_at refreshed to the TTL from now, but never past the lease's
 * cap; $1 is the lease id, TTL_PARAM the TTL's parameter. */
#define REFRESHED_EXPIRY(TTL_PARAM)                                          \
    "expires_at = LEAST(now() + make_interval(secs => " TTL_PARAM            \
    "::bigint), (SELECT expires_cap FROM envrun.lease_state WHERE lease_id " \
    "= $1::uuid)) "

int er_store_lease_insert(struct er_store *store, const struct er_lease_row *in,
                          int64_t expires_cap_ms, struct er_arena *arena,
                          struct er_lease_row *out, struct er_err *err)
{
    char expires[24];
    char cap[24];
    const char *params[] = {
        in->id,
        in->company_id,
        in->environment_id,
        in->execution_workspace_id,
        in->issue_id,
        in->heartbeat_run_id,
        in->lease_policy,
        in->provider,
        in->provider_lease_id,
        in->expires_at_ms >= 0 ? expires : NULL,
        in->metadata_json,
        store->lease_ttl_s,
        expires_cap_ms > 0 ? cap : NULL,
    };
    const char *cap_params[] = { NULL, cap };
    PGresult *res;
    int rc;

    snprintf(expires, sizeof(expires), "%lld", (long long)in->expires_at_ms);
    snprintf(cap, sizeof(cap), "%lld", (long long)expires_cap_ms);
    /* LEAST ignores a NULL cap. */
    rc = one_lease(
        store, "lease insert",
        "INSERT INTO environment_leases (id, company_id, environment_id, "
        "execution_workspace_id, issue_id, heartbeat_run_id, status, "
        "lease_policy, provider, provider_lease_id, expires_at, metadata) "
        "VALUES (COALESCE($1::uuid, gen_random_uuid()), $2::uuid, $3::uuid, "
        "$4::uuid, $5::uuid, $6::uuid, 'active', $7, $8, $9, "
        "LEAST(COALESCE(to_timestamp($10::bigint / 1000.0), "
        "now() + make_interval(secs => $12::bigint)), "
        "to_timestamp($13::bigint / 1000.0)), $11::jsonb) "
        "RETURNING " LEASE_COLS,
        13, params, arena, out, err);
    if (rc != 0 || expires_cap_ms <= 0)
        return rc;
    /* Version 0: the lease's first event takes 1 (er_store_lease_next_version).
     */
    cap_params[0] = out->id;
    res = er_store__exec(
        store, "lease expiry cap",
        "INSERT INTO envrun.lease_state (lease_id, version, expires_cap) "
        "VALUES ($1::uuid, 0, to_timestamp($2::bigint / 1000.0)) "
        "ON CONFLICT (lease_id) DO UPDATE SET expires_cap = "
        "EXCLUDED.expires_cap",
        2, cap_params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    PQclear(res);
    return 0;
}

int er_store_lease_id_for(struct er_store *store, const char *company_id,
                          const char *command_id, char out[37],
                          struct er_err *err)
{
    static const char prefix[] = "envrun-lease:";
    struct er_sha256 sha;
    uint8_t h[ER_SHA256_LEN];
    char hex[2 * ER_SHA256_LEN + 1];

    (void)store;
    (void)err;
    /* RFC 9562 version 8 (custom): the first 128 bits of
     * SHA-256("envrun-lease:" company ":" command id) with the version
     * nibble set to 8 and the variant bits to 10. Computed here, not by
     * the server, which computed the same (store_test checks both). */
    er_sha256_init(&sha);
    er_sha256_update(&sha, prefix, sizeof(prefix) - 1);
    er_sha256_update(&sha, company_id, strlen(company_id));
    er_sha256_update(&sha, ":", 1);
    er_sha256_update(&sha, command_id, strlen(command_id));
    er_sha256_final(&sha, h);
    h[6] = (uint8_t)((h[6] & 0x0f) | 0x80);
    h[8] = (uint8_t)((h[8] & 0x3f) | 0x80);
    er_sha256_hex(h, hex); /* the first 32 digits are used */
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12,
             hex + 16, hex + 20);
    return 0;
}

int er_store_lease_next_expiry(struct er_store *store, int64_t *at_ms,
                               struct er_err *err)
{
    PGresult *res = er_store__exec(
        store, "next lease expiry",
        "SELECT (extract(epoch FROM min(expires_at)) * 1000)::bigint FROM "
        "environment_leases WHERE status = 'active' AND expires_at > now()",
        0, NULL, NULL, err);

    *at_ms = 0;
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (!PQgetisnull(res, 0, 0))
        *at_ms = er_store__get_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

int er_store_lease_get(struct er_store *store, const char *id,
                       struct er_arena *arena, struct er_lease_row *out,
                       struct er_err *err)
{
    const char *params[] = { id };

    return one_lease(store, "load lease",
                     "SELECT " LEASE_COLS " FROM environment_leases "
                     "WHERE id = $1::uuid FOR UPDATE",
                     1, params, arena, out, err);
}

int er_store_lease_active_for_run(struct er_store *store,
                                  const char *company_id, const char *run_id,
                                  struct er_arena *arena,
                                  struct er_lease_row **rows, size_t *row_cnt,
                                  struct er_err *err)
{
    const char *params[] = { company_id, run_id };

    /* The company too: a command carrying another company's run id must
     * find nothing (the run id alone is no proof of ownership). */
    return many_leases(store, "load run leases",
                       "SELECT " LEASE_COLS " FROM environment_leases "
                       "WHERE company_id = $1::uuid AND heartbeat_run_id = "
                       "$2::uuid AND status = 'active' "
                       "ORDER BY acquired_at, id FOR UPDATE",
                       2, params, arena, rows, row_cnt, err);
}

int er_store_lease_reusable(struct er_store *store, const char *company_id,
                            const char *environment_id, struct er_arena *arena,
                            struct er_lease_row **rows, size_t *row_cnt,
                            struct er_err *err)
{
    const char *params[] = { company_id, environment_id };

    /* Parked machines only (released or retained, never pending_cleanup,
     * C1), and none another lease holds now: a machine is resumed by one
     * lease at a time. Newest first. */
    return many_leases(
        store, "load reusable leases",
        "SELECT " LEASE_COLS " FROM environment_leases a "
        "WHERE a.company_id = $1::uuid AND a.environment_id = $2::uuid "
        "AND a.lease_policy = 'reuse_by_environment' "
        "AND a.status IN ('released', 'retained') "
        "AND a.provider_lease_id IS NOT NULL AND NOT EXISTS ("
        "SELECT 1 FROM environment_leases b WHERE b.provider = a.provider "
        "AND b.provider_lease_id = a.provider_lease_id "
        "AND b.status = 'active') "
        "ORDER BY a.created_at DESC, a.id LIMIT 8",
        2, params, arena, rows, row_cnt, err);
}

int er_store_lease_active_for_workspace(struct er_store *store,
                                        const char *environment_id,
                                        const char *execution_workspace_id,
                                        struct er_arena *arena,
                                        struct er_lease_row *out,
                                        struct er_err *err)
{
    const char *params[] = { environment_id, execution_workspace_id };
    int rc;

    /* Without the single-flight unique index (a control-plane database
     * that predates it) two acquires could both see "no lease" and insert;
     * the lock makes the check-then-insert atomic. */
    rc = er_store__exec_cmd(
        store, "workspace lock",
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || "
        "$2, 7295104813))",
        2, params, err);
    if (rc != 0)
        return rc;
    return one_lease(store, "load workspace lease",
                     "SELECT " LEASE_COLS " FROM environment_leases "
                     "WHERE environment_id = $1::uuid AND "
                     "execution_workspace_id = $2::uuid AND status = 'active' "
                     "AND lease_policy = 'ephemeral' "
                     "ORDER BY acquired_at DESC, id LIMIT 1 FOR UPDATE",
                     2, params, arena, out, err);
}

/* Whether the database has Paperclip's heartbeat_runs table (a
 * control-plane database does; one of envrun's own does not). */
static int has_heartbeat_runs(struct er_store *store, bool *has_runs,
                              struct er_err *err)
{
    PGresult *res = er_store__exec(
        store, "heartbeat_runs lookup",
        "SELECT to_regclass('heartbeat_runs') IS NOT NULL", 0, NULL, NULL, err);

    *has_runs = false;
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *has_runs = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

int er_store_run_is_live(struct er_store *store, const char *run_id,
                         bool *is_live, struct er_err *err)
{
    const char *params[] = { run_id };
    PGresult *res = NULL;
    bool has_runs = false;
    int rc;

    *is_live = true;
    rc = has_heartbeat_runs(store, &has_runs, err);
    if (rc != 0 || !has_runs)
        return rc;
    res =
        er_store__exec(store, "heartbeat run status",
                       "SELECT status FROM heartbeat_runs WHERE id = $1::uuid",
                       1, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (PQntuples(res) == 0) {
        *is_live = false; /* run row missing: stale (domain.md 3.3.1) */
    } else {
        const char *st = PQgetvalue(res, 0, 0);

        *is_live = strcmp(st, "queued") == 0 ||
                   strcmp(st, "scheduled_retry") == 0 ||
                   strcmp(st, "running") == 0;
    }
    PQclear(res);
    return 0;
}

int er_store_lease_set_metadata(struct er_store *store, const char *id,
                                const char *metadata_json,
                                struct er_arena *arena,
                                struct er_lease_row *out, struct er_err *err)
{
    const char *params[] = { id, metadata_json, store->lease_ttl_s };

    return one_lease(
        store, "lease metadata update",
        "UPDATE environment_leases SET metadata = $2::jsonb, "
        "last_used_at = now(), updated_at = now(), " REFRESHED_EXPIRY(
            "$3") "WHERE id = $1::uuid RETURNING " LEASE_COLS,
        3, params, arena, out, err);
}

int er_store_lease_set_status(struct er_store *store, const char *id,
                              const char *status, const char *failure_reason,
                              const char *cleanup_status,
                              struct er_arena *arena, struct er_lease_row *out,
                              struct er_err *err)
{
    const char *params[] = { id, status, failure_reason, cleanup_status };

    return one_lease(
        store, "lease status update",
        "UPDATE environment_leases SET status = $2, "
        "released_at = CASE WHEN $2 = 'retained' THEN NULL ELSE now() END, "
        "failure_reason = COALESCE($3, failure_reason), "
        "cleanup_status = COALESCE($4, cleanup_status), "
        "last_used_at = now(), updated_at = now() "
        "WHERE id = $1::uuid RETURNING " LEASE_COLS,
        4, params, arena, out, err);
}

int er_store_lease_cleanup_claim(struct er_store *store, const char *id,
                                 struct er_err *err)
{
    const char *params[] = { id };

    return er_store__exec_cmd(
        store, "pending cleanup claim",
        "UPDATE environment_leases SET metadata = " META_OBJ
        " || jsonb_build_object('pendingCleanupInFlight', true, "
        "'pendingCleanupAttemptId', gen_random_uuid()::text, "
        "'pendingCleanupLeaseExpiresAtMs', " NOW_MS " + 900000) "
        "WHERE id = $1::uuid AND status = 'pending_cleanup'",
        1, params, err);
}

int er_store_lease_cleanup_settle(struct er_store *store, const char *id,
                                  bool is_failed, int64_t *attempts,
                                  struct er_err *err)
{
    const char *params[] = { id };
    PGresult *res;

    *attempts = 0;
    if (!is_failed)
        return er_store__exec_cmd(
            store, "pending cleanup settle",
            "UPDATE environment_leases SET metadata = " META_OBJ
            " || '{\"pendingCleanupInFlight\": false}'::jsonb "
            "WHERE id = $1::uuid",
            1, params, err);
    res = er_store__exec(store, "pending cleanup settle", SETTLE_FAILED_SQL, 1,
                         params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (PQntuples(res) > 0)
        *attempts = er_store__get_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

int er_store_lease_touch(struct er_store *store, const char *id,
                         struct er_arena *arena, struct er_lease_row *out,
                         struct er_err *err)
{
    const char *params[] = { id, store->lease_ttl_s };

    return one_lease(store, "lease touch",
                     "UPDATE environment_leases SET last_used_at = now(), "
                     "updated_at = now(), " REFRESHED_EXPIRY(
                         "$2") "WHERE id = $1::uuid RETURNING " LEASE_COLS,
                     2, params, arena, out, err);
}

int er_store_lease_next_version(struct er_store *store, const char *id,
                                int64_t *version, struct er_err *err)
{
    const char *params[] = { id };
    PGresult *res =
        er_store__exec(store, "lease version",
                       "INSERT INTO envrun.lease_state (lease_id, version) "
                       "VALUES ($1::uuid, 1) ON CONFLICT (lease_id) DO "
                       "UPDATE SET version = envrun.lease_state.version + 1 "
                       "RETURNING version",
                       1, params, NULL, err);

    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *version = er_store__get_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

/* The reaper's query: active leases stale by the TTL ($1 s) or past
 * expires_at, or_run_ended another way to be stale, or_pending the
 * pending_cleanup rows it also takes; never one in its cleanup backoff. */
#define STALE_SQL(or_run_ended, or_pending)                                 \
    "SELECT " LEASE_COLS " FROM environment_leases l "                      \
    "WHERE ((status = 'active' AND (last_used_at < now() - "                \
    "make_interval(secs => $1::bigint) OR expires_at <= now()" or_run_ended \
    "))" or_pending ") "                                                    \
    "AND NOT EXISTS (SELECT 1 FROM envrun.operations o WHERE "              \
    "o.command_id = 'reap:' || l.id::text AND o.kind = 'reap' AND "         \
    "o.lease_id = l.id AND " ER_STORE_REAP_BACKOFF_SQL ") "                 \
    "ORDER BY last_used_at LIMIT $2::int FOR UPDATE SKIP LOCKED"
#define STALE_RUN_ENDED                                               \
    " OR (last_used_at < now() - interval '5 min' AND EXISTS ("       \
    "SELECT 1 FROM heartbeat_runs r WHERE r.id = l.heartbeat_run_id " \
    "AND r.status NOT IN ('queued', 'scheduled_retry', 'running')))"
/* upstream.md C2's "retry due": not in flight (or its claim ran out), and
 * its retry time passed or lies absurdly far ahead (over a day). */
#define PENDING_CLEANUP_DUE                                                 \
    " OR (status = 'pending_cleanup' AND NOT (metadata->>"                  \
    "'pendingCleanupInFlight' = 'true' AND " META_CLAIM_END " > " NOW_MS    \
    ") AND (" META_RETRY_AT " <= " NOW_MS " OR " META_RETRY_AT " > " NOW_MS \
    " + 86400000))"

int er_store_lease_stale(struct er_store *store, int64_t ttl_s, int limit,
                         struct er_arena *arena, struct er_lease_row **rows,
                         size_t *row_cnt, struct er_err *err)
{
    char ttl[24];
    char lim[24];
    const char *params[] = { ttl, lim };
    bool has_runs = false;
    int rc;

    snprintf(ttl, sizeof(ttl), "%lld", (long long)ttl_s);
    snprintf(lim, sizeof(lim), "%d", limit);
    rc = has_heartbeat_runs(store, &has_runs, err);
    if (rc != 0)
        return rc;
    /* Stale: untouched for the TTL or past expires_at; with Paperclip's
     * heartbeat_runs, also a lease whose run ended (status no longer
     * queued, scheduled_retry or running) and that has not changed for 5
     * minutes: the release that never came (upstream #13515). SKIP LOCKED:
     * a lease a step or another reaper holds is not taken; a lease in its
     * cleanup backoff is left for later. */
    if (store->era == ER_ERA_INSTANCE)
        return many_leases(store, "load stale leases",
                           has_runs
                               ? STALE_SQL(STALE_RUN_ENDED, PENDING_CLEANUP_DUE)
                               : STALE_SQL("", PENDING_CLEANUP_DUE),
                           2, params, arena, rows, row_cnt, err);
    return many_leases(store, "load stale leases",
                       has_runs ? STALE_SQL(STALE_RUN_ENDED, "")
                                : STALE_SQL("", ""),
                       2, params, arena, rows, row_cnt, err);
}

int er_store_lease_tag_in_use(struct er_store *store, const char *tag,
                              bool *is_in_use, struct er_err *err)
{
    const char *params[] = { tag };
    PGresult *res;

    *is_in_use = true;
    res = er_store__exec(
        store, "lease tag lookup",
        "SELECT EXISTS (SELECT 1 FROM environment_leases WHERE status = "
        "'active' AND left(replace(id::text, '-', ''), 16) = $1) OR EXISTS "
        "(SELECT 1 FROM envrun.operations WHERE state IN ('started', "
        "'interrupted', 'rolling_back') AND "
        "left(replace(lease_id::text, '-', ''), 16) = $1)",
        1, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *is_in_use = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

/* ---- activity and execution workspaces ---- */

int er_store_activity_insert(struct er_store *store,
                             const struct er_activity_row *in,
                             struct er_arena *arena,
                             struct er_activity_row *out, struct er_err *err)
{
    const char *params[] = {
        in->company_id, in->actor_type,  in->actor_id,
        in->action,     in->entity_type, in->entity_id,
        in->agent_id,   in->run_id,      in->details_json
    };
    PGresult *res = er_store__exec(
        store, "activity insert",
        "INSERT INTO activity_log (company_id, actor_type, actor_id, action, "
        "entity_type, entity_id, agent_id, run_id, details) VALUES ($1::uuid, "
        "$2, $3, $4, $5, $6, $7::uuid, $8::uuid, $9::jsonb) "
        "RETURNING " ACTIVITY_COLS,
        9, params, NULL, err);
    int rc = 0;

    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    out->id = er_store__get_str(res, 0, 0, arena);
    out->company_id = er_store__get_str(res, 0, 1, arena);
    out->actor_type = er_store__get_str(res, 0, 2, arena);
    out->actor_id = er_store__get_str(res, 0, 3, arena);
    out->action = er_store__get_str(res, 0, 4, arena);
    out->entity_type = er_store__get_str(res, 0, 5, arena);
    out->entity_id = er_store__get_str(res, 0, 6, arena);
    out->agent_id = er_store__get_str(res, 0, 7, arena);
    out->run_id = er_store__get_str(res, 0, 8, arena);
    out->details_json = er_store__get_str(res, 0, 9, arena);
    out->created_at_ms = er_store__get_i64(res, 0, 10);
    if (out->id == NULL || out->action == NULL || out->entity_id == NULL)
        rc = er_store__oom(err);
    PQclear(res);
    return rc;
}

int er_store_workspace_merge_metadata(struct er_store *store, const char *id,
                                      const char *company_id,
                                      const char *patch_json, bool *is_found,
                                      struct er_err *err)
{
    const char *params[] = { id, company_id, patch_json };
    PGresult *res =
        er_store__exec(store, "execution workspace metadata",
                       "UPDATE execution_workspaces SET metadata = "
                       "COALESCE(metadata, '{}'::jsonb) || $3::jsonb, "
                       "updated_at = now() WHERE id = $1::uuid AND "
                       "company_id = $2::uuid",
                       3, params, NULL, err);

    *is_found = false;
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *is_found = strcmp(PQcmdTuples(res), "0") != 0;
    PQclear(res);
    return 0;
}
