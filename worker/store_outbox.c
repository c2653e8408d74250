/* store_outbox: the outbox and the relay's lock (see store_int.h). Rows
 * handed out live in the caller's arena; one thread per connection. */
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "worker/store_int.h"
#include "worker/store_sql_int.h"

int er_store_outbox_add(struct er_store *store, const char *topic,
                        const uint8_t *key, size_t key_len,
                        const uint8_t *value, size_t value_len,
                        const char *headers_json, struct er_err *err)
{
    const char *params[] = { topic, (const char *)key, (const char *)value,
                             headers_json };
    /* A zero length would mean "text"; an empty key is sent as NULL. */
    const int lengths[] = { 0, (int)key_len, (int)value_len, 0 };
    PGresult *res;

    if (key_len == 0)
        params[1] = NULL;
    ER_ASSERT(value_len > 0 && value_len < INT32_MAX && key_len < INT32_MAX);
    res = er_store__exec(
        store, "outbox insert",
        "INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers) "
        "VALUES ($1, $2, $3, $4::jsonb)",
        4, params, lengths, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    PQclear(res);
    return 0;
}

int er_store_relay_lock(struct er_store *store, bool *is_held,
                        struct er_err *err)
{
    PGresult *res = er_store__exec(store, "relay lock",
                                   "SELECT pg_try_advisory_lock(7295104812)", 0,
                                   NULL, NULL, err);

    *is_held = false;
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *is_held = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

int er_store_outbox_fetch(struct er_store *store, int limit,
                          struct er_arena *arena, struct er_outbox_row **rows,
                          size_t *row_cnt, struct er_err *err)
{
    char lim[24];
    const char *params[] = { lim };
    PGresult *res = NULL;
    int n;
    int i;
    int rc = 0;

    *rows = NULL;
    *row_cnt = 0;
    snprintf(lim, sizeof(lim), "%d", limit);
    /* Binary results: the key and value come back as raw bytes. */
    res = PQexecParams(store->conn,
                       "SELECT id, topic, msg_key, msg_value, headers::text "
                       "FROM envrun.outbox ORDER BY id LIMIT $1::int",
                       1, NULL, params, NULL, NULL, 1);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = er_store__result_to_err(store->conn, res, "outbox fetch", err);
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
        const unsigned char *idp = (const unsigned char *)PQgetvalue(res, i, 0);
        uint64_t id = 0;
        int b;

        for (b = 0; b < 8; b++) /* int8 in network byte order */
            id = (id << 8) | idp[b];
        r->id = (int64_t)id;
        r->topic = er_store__get_str(res, i, 1, arena);
        if (!PQgetisnull(res, i, 2)) {
            r->key_len = (size_t)PQgetlength(res, i, 2);
            r->key = (uint8_t *)er_arena_strndup(arena, PQgetvalue(res, i, 2),
                                                 r->key_len);
        }
        r->value_len = (size_t)PQgetlength(res, i, 3);
        r->value = (uint8_t *)er_arena_strndup(arena, PQgetvalue(res, i, 3),
                                               r->value_len);
        r->headers_json = er_store__get_str(res, i, 4, arena);
        if (r->topic == NULL || r->value == NULL ||
            (!PQgetisnull(res, i, 2) && r->key == NULL)) {
            rc = er_store__oom(err);
            goto out;
        }
    }
    *row_cnt = (size_t)n;
out:
    PQclear(res);
    return rc;
}

int er_store_outbox_delete(struct er_store *store, const int64_t *ids,
                           size_t id_cnt, struct er_err *err)
{
    struct er_buf arr;
    size_t i;
    int rc = 0;
    const char *params[1];

    if (id_cnt == 0)
        return 0;
    er_buf_init(&arr, 64 * 1024 * 1024);
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
    rc = er_store__exec_cmd(
        store, "outbox delete",
        "DELETE FROM envrun.outbox WHERE id = ANY($1::bigint[])", 1, params,
        err);
    er_buf_fini(&arr);
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
