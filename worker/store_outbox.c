/* store_outbox: the outbox, the relay's lock and the relay's fence (its
 * generation in envrun.partition_fence), see store_int.h. Rows handed out
 * live in the caller's arena; one thread per connection. */
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "worker/store_int.h"
#include "worker/store_sql_int.h"

int er_store_outbox_add(struct er_store *store, const char *topic,
                        const uint8_t *key, size_t key_len,
                        const uint8_t *value, size_t value_len,
                        const char *headers_json, const char *token_from,
                        struct er_err *err)
{
    const char *params[] = { topic, (const char *)key, (const char *)value,
                             headers_json, token_from };
    /* A zero length would mean "text"; an empty key is sent as NULL. */
    const int lengths[] = { 0, (int)key_len, (int)value_len, 0, 0 };

    if (key_len == 0)
        params[1] = NULL;
    ER_ASSERT(value_len > 0 && value_len < INT32_MAX && key_len < INT32_MAX);
    return er_store__exec_later(
        store, "outbox insert",
        "INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers, "
        "token_from) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)",
        5, params, lengths, err);
}

int er_store_relay_lock(struct er_store *store, int *session,
                        struct er_err *err)
{
    PGresult *res = er_store__exec(store, "relay lock",
                                   "SELECT pg_try_advisory_lock(7295104812)", 0,
                                   NULL, NULL, err);

    *session = 0;
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        PQclear(res);
        return 0;
    }
    PQclear(res);
    *session = PQbackendPID(store->conn);
    /* The lock is the session's: a relay paused (SIGSTOP) or hung while
     * holding it would stop every worker's publishing. A working relay
     * queries at least every second, so a session idle this long is such
     * a relay's: the server ends it and another relay takes over. */
    return er_store__exec_cmd(store, "relay session",
                              "SET idle_session_timeout = '30s'", 0, NULL, err);
}

int er_store_relay_ensure(struct er_store *store, int *session,
                          struct er_err *err)
{
    int rc;

    /* er_store_ensure reconnects a connection libpq marked bad; any other
     * path that reconnected shows as a new backend pid. */
    if (store->conn == NULL || PQstatus(store->conn) != CONNECTION_OK)
        *session = 0;
    rc = er_store_ensure(store, err);
    if (rc != 0) {
        *session = 0;
        return rc;
    }
    if (*session != 0 && PQbackendPID(store->conn) != *session)
        *session = 0;
    return 0;
}

/* An int8 column of a binary result (network byte order). */
static int64_t get_be_i64(const PGresult *res, int row, int col)
{
    const unsigned char *p = (const unsigned char *)PQgetvalue(res, row, col);
    uint64_t v = 0;
    int b;

    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return -1;
    for (b = 0; b < 8; b++)
        v = (v << 8) | p[b];
    return (int64_t)v;
}

int er_store_outbox_fetch(struct er_store *store, int row_max, size_t byte_max,
                          size_t value_max, struct er_arena *arena,
                          struct er_outbox_row **rows, size_t *row_cnt,
                          struct er_err *err)
{
    char rows_txt[24];
    char bytes_txt[24];
    char value_txt[24];
    const char *params[] = { rows_txt, bytes_txt, value_txt };
    PGresult *res = NULL;
    int n;
    int i;
    int rc = 0;

    ER_ASSERT(row_max > 0 && value_max > 0 && value_max <= INT32_MAX);
    *rows = NULL;
    *row_cnt = 0;
    snprintf(rows_txt, sizeof(rows_txt), "%d", row_max);
    snprintf(bytes_txt, sizeof(bytes_txt), "%zu", byte_max);
    snprintf(value_txt, sizeof(value_txt), "%zu", value_max);
    /* The running sum over the id order makes the batch a prefix: the
     * first row always, then rows while keys and (capped) values fit in
     * byte_max. octet_length() reads a TOASTed value's size without
     * detoasting it. Binary results: keys and values come back as raw
     * bytes. */
    res = er_store__exec_binary(
        store, "outbox fetch",
        "SELECT id, topic, msg_key, substring(msg_value FROM 1 FOR $3::int), "
        "octet_length(msg_value)::bigint, headers::text, token_from::text, "
        "(extract(epoch FROM created_at) * 1000)::bigint "
        "FROM (SELECT o.*, row_number() OVER w AS rn, "
        "sum(coalesce(octet_length(o.msg_key), 0) + "
        "least(octet_length(o.msg_value), $3::int)) OVER w AS run_bytes "
        "FROM envrun.outbox o "
        "WINDOW w AS (ORDER BY o.id ROWS UNBOUNDED PRECEDING) "
        "ORDER BY o.id LIMIT $1::int) b "
        "WHERE b.rn = 1 OR b.run_bytes <= $2::bigint ORDER BY b.id",
        3, params, err);
    if (res == NULL) {
        rc = err != NULL ? err->code : ER_EPG;
        goto out;
    }
    n = PQntuples(res);
    if (n == 0)
        goto out;
    *rows = er_arena_alloc(arena, sizeof(**rows) * (size_t)n);
    if (*rows == NULL) {
        rc = er_store__oom(err);
        goto out;
    }
    for (i = 0; i < n; i++) {
        struct er_outbox_row *r = &(*rows)[i];
        int64_t full_len = get_be_i64(res, i, 4);

        memset(r, 0, sizeof(*r));
        r->id = get_be_i64(res, i, 0);
        r->topic = er_store__get_str(res, i, 1, arena);
        if (!PQgetisnull(res, i, 2)) {
            r->key_len = (size_t)PQgetlength(res, i, 2);
            r->key = (uint8_t *)er_arena_strndup(arena, PQgetvalue(res, i, 2),
                                                 r->key_len);
        }
        r->value_len = (size_t)PQgetlength(res, i, 3);
        r->value = (uint8_t *)er_arena_strndup(arena, PQgetvalue(res, i, 3),
                                               r->value_len);
        r->value_full_len =
            full_len > (int64_t)r->value_len ? (size_t)full_len : r->value_len;
        r->headers_json = er_store__get_str(res, i, 5, arena);
        r->token_from = er_store__get_str(res, i, 6, arena);
        r->created_ms = get_be_i64(res, i, 7);
        if (r->topic == NULL || r->value == NULL ||
            (!PQgetisnull(res, i, 2) && r->key == NULL) ||
            (!PQgetisnull(res, i, 5) && r->headers_json == NULL) ||
            (!PQgetisnull(res, i, 6) && r->token_from == NULL)) {
            rc = er_store__oom(err);
            goto out;
        }
    }
    *row_cnt = (size_t)n;
out:
    PQclear(res);
    return rc;
}

/* Inside the caller's transaction: delete ids (sent ahead). */
static int outbox_delete(struct er_store *store, const int64_t *ids,
                         size_t id_cnt, struct er_err *err)
{
    struct er_buf arr;
    size_t i;
    int rc = 0;
    const char *params[1];

    if (id_cnt == 0)
        return 0;
    er_buf_init(&arr, (size_t)64 * 1024 * 1024);
    rc = er_buf_append(&arr, "{", 1);
    for (i = 0; i < id_cnt && rc == 0; i++)
        rc =
            er_buf_printf(&arr, "%s%lld", i == 0 ? "" : ",", (long long)ids[i]);
    if (rc == 0)
        rc = er_buf_append(&arr, "}", 1);
    if (rc != 0) {
        er_buf_fini(&arr);
        return er_err_set(err, rc, ER_ERRCLASS_RETRY, "outbox delete: %s",
                          er_errname(rc));
    }
    params[0] = (const char *)arr.data;
    rc = er_store__exec_later(
        store, "outbox delete",
        "DELETE FROM envrun.outbox WHERE id = ANY($1::bigint[])", 1, params,
        NULL, err);
    er_buf_fini(&arr);
    return rc;
}

/* Inside the caller's transaction: move the rows of quarantine to
 * envrun.outbox_quarantine, then delete them and ids. */
static int settle_rows(struct er_store *store, const int64_t *ids,
                       size_t id_cnt,
                       const struct er_outbox_quarantine *quarantine,
                       size_t q_cnt, struct er_err *err)
{
    size_t i;
    int rc = 0;

    for (i = 0; i < q_cnt && rc == 0; i++) {
        char id[24];
        const char *params[] = { id, quarantine[i].reason };

        snprintf(id, sizeof(id), "%lld", (long long)quarantine[i].id);
        /* The row is copied and deleted by one statement, so it is moved
         * or, if it is already gone, nothing happens. */
        rc = er_store__exec_later(
            store, "outbox quarantine",
            "WITH moved AS (DELETE FROM envrun.outbox WHERE id = $1::bigint "
            "RETURNING id, topic, msg_key, msg_value, headers, created_at) "
            "INSERT INTO envrun.outbox_quarantine (id, topic, msg_key, "
            "msg_value, headers, created_at, reason) "
            "SELECT id, topic, msg_key, msg_value, headers, created_at, $2 "
            "FROM moved",
            2, params, NULL, err);
    }
    if (rc == 0)
        rc = outbox_delete(store, ids, id_cnt, err);
    return rc;
}

int er_store_outbox_count(struct er_store *store, int64_t *cnt,
                          struct er_err *err)
{
    PGresult *res = er_store__exec(store, "outbox count",
                                   "SELECT count(*) FROM envrun.outbox", 0,
                                   NULL, NULL, err);

    *cnt = 0;
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *cnt = er_store__get_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

/* The relay's row of envrun.partition_fence. A commands topic's name ends
 * in "commands", so no partition's row can be this one. */
#define RELAY_FENCE_WHERE "topic = 'envrun.relay' AND partition_id = 0"

int er_store_relay_claim(struct er_store *store, const char *owner,
                         int64_t *generation, struct er_err *err)
{
    const char *params[] = { owner };
    PGresult *res;

    *generation = -1;
    /* The update waits for a settle of the previous relay that holds the
     * row FOR SHARE: once it returns, that relay can delete no more. */
    res = er_store__exec(
        store, "relay claim",
        "INSERT INTO envrun.partition_fence (topic, partition_id, "
        "generation, owner) VALUES ('envrun.relay', 0, 1, $1) "
        "ON CONFLICT (topic, partition_id) DO UPDATE SET "
        "generation = envrun.partition_fence.generation + 1, "
        "owner = EXCLUDED.owner, claimed_at = now() RETURNING generation",
        1, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *generation = er_store__get_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

/* The relay row's generation into *generation (-1: no row); FOR SHARE
 * when for_share (inside a transaction). */
static int relay_generation(struct er_store *store, bool for_share,
                            int64_t *generation, struct er_err *err)
{
    PGresult *res;

    *generation = -1;
    res = er_store__exec(
        store, "relay check",
        for_share ? "SELECT generation FROM "
                    "envrun.partition_fence WHERE " RELAY_FENCE_WHERE
                    " FOR SHARE"
                  : "SELECT generation FROM "
                    "envrun.partition_fence WHERE " RELAY_FENCE_WHERE,
        0, NULL, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (PQntuples(res) > 0)
        *generation = er_store__get_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

int er_store_relay_generation(struct er_store *store, int64_t *generation,
                              struct er_err *err)
{
    return relay_generation(store, false, generation, err);
}

int er_store_relay_check(struct er_store *store, int session,
                         int64_t generation, int64_t *current,
                         struct er_err *err)
{
    int rc;

    *current = -1;
    /* The lock is the session's: the check means something only on the
     * session that took it. A query that succeeds on it proves the
     * session, and so the lock, is still alive. */
    if (session == 0 || store->conn == NULL ||
        PQstatus(store->conn) != CONNECTION_OK ||
        PQbackendPID(store->conn) != session)
        return er_err_set(err, ER_EFENCED, ER_ERRCLASS_SKIP,
                          "relay session %d no longer holds the lock", session);
    rc = relay_generation(store, false, current, err);
    if (rc != 0)
        return rc;
    if (*current != generation)
        return er_err_set(err, ER_EFENCED, ER_ERRCLASS_SKIP,
                          "relay claim moved on (generation %lld, ours %lld)",
                          (long long)*current, (long long)generation);
    return 0;
}

int er_store_relay_settle(struct er_store *store, int64_t generation,
                          const int64_t *ids, size_t id_cnt,
                          const struct er_outbox_quarantine *quarantine,
                          size_t q_cnt, int64_t *current, struct er_err *err)
{
    int rc;

    *current = -1;
    if (id_cnt == 0 && q_cnt == 0)
        return 0;
    /* Not er_store_begin: it would reconnect a lost connection silently,
     * and the relay must see a new session (its lock is gone). */
    rc = er_store__exec_later(store, "begin", "BEGIN", 0, NULL, NULL, err);
    if (rc != 0)
        return rc;
    /* FOR SHARE until the commit: a newer relay's claim waits for it, so
     * rows are deleted only while this relay's generation is current. */
    rc = relay_generation(store, true, current, err);
    if (rc == 0 && *current != generation)
        rc = er_err_set(err, ER_EFENCED, ER_ERRCLASS_SKIP,
                        "relay claim moved on before the settle (generation "
                        "%lld, ours %lld)",
                        (long long)*current, (long long)generation);
    if (rc == 0)
        rc = settle_rows(store, ids, id_cnt, quarantine, q_cnt, err);
    if (rc == 0)
        rc = er_store_commit(store, err);
    if (rc != 0)
        er_store_rollback(store);
    return rc;
}
