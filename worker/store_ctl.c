/* store_ctl: the read-only queries of envrunctl (operators' views of the
 * tables), kept behind the store's door to libpq (STYLE.md 1). Each call
 * opens and closes its own connection; no state is shared, so it is
 * thread-safe. Every statement is parameterised. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "worker/worker.h"

#define LEASES_COLS 8

/* Newest first; every filter is optional (a NULL parameter matches all). */
static const char leases_sql[] =
    "SELECT l.id::text, coalesce(e.name, ''), l.status, "
    "coalesce(l.heartbeat_run_id::text, ''), coalesce(l.issue_id::text, ''), "
    "to_char(l.acquired_at AT TIME ZONE 'UTC', "
    "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
    "coalesce(to_char(l.released_at AT TIME ZONE 'UTC', "
    "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ''), "
    "coalesce(l.failure_reason, '') "
    "FROM environment_leases l "
    "LEFT JOIN environments e ON e.id = l.environment_id "
    "WHERE ($1::uuid IS NULL OR l.company_id = $1::uuid) "
    "AND ($2::uuid IS NULL OR l.heartbeat_run_id = $2::uuid) "
    "AND ($3::text IS NULL OR l.status = $3::text) "
    "ORDER BY l.acquired_at DESC, l.id LIMIT $4::int";

/* The JSON names of the columns (--format json). */
static const char *const leases_keys[LEASES_COLS] = {
    "leaseId", "environment", "status",     "heartbeatRunId",
    "issueId", "acquiredAt",  "releasedAt", "failureReason",
};

/* The first line of a libpq message (errors must stay one line). */
static void pg_message(const char *msg, char *out, size_t out_len)
{
    size_t n = strcspn(msg, "\n");

    while (n > 0 && msg[n - 1] == ' ')
        n--;
    snprintf(out, out_len, "%.*s", (int)n, msg);
}

/* Append one JSON object per row, an empty value as null. */
static int put_json_rows(struct er_buf *out, PGresult *res)
{
    int rows = PQntuples(res);
    int r;
    int c;
    int rc = 0;

    for (r = 0; r < rows && rc == 0; r++) {
        json_t *obj = json_object();
        char *text;

        for (c = 0; c < LEASES_COLS && obj != NULL; c++) {
            const char *v = PQgetvalue(res, r, c);

            if (json_object_set_new(obj, leases_keys[c],
                                    v[0] != '\0' ? json_string(v)
                                                 : json_null()) != 0) {
                json_decref(obj);
                obj = NULL;
            }
        }
        text = obj != NULL ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER)
                           : NULL;
        json_decref(obj);
        rc = text != NULL ? er_buf_printf(out, "%s\n", text) : ER_ENOMEM;
        free(text);
    }
    return rc;
}

int er_store_ctl_leases(const char *conninfo, const char *company,
                        const char *run, const char *status, int limit,
                        struct er_buf *out, struct er_err *err)
{
    PGconn *conn = NULL;
    PGresult *res = NULL;
    PQconninfoOption *opts = NULL;
    char *parse_msg = NULL;
    char msg[200];
    char limit_s[16];
    const char *params[4];
    int rc = 0;

    ER_ASSERT(conninfo != NULL && out != NULL && limit > 0);

    /* A string libpq cannot parse is the caller's mistake, not a dead
     * server. libpq's message may quote the string, password included:
     * it is not passed on. */
    opts = PQconninfoParse(conninfo, &parse_msg);
    if (opts == NULL) {
        rc = er_err_set(err, parse_msg != NULL ? ER_EINVAL : ER_ENOMEM,
                        ER_ERRCLASS_FATAL, "database url: %s",
                        parse_msg != NULL
                            ? "not a libpq connection string or URI"
                            : "out of memory");
        goto out;
    }

    conn = PQconnectdb(conninfo);
    if (conn == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                        "postgres connection: out of memory");
        goto out;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        pg_message(PQerrorMessage(conn), msg, sizeof(msg));
        rc = er_err_set(err, ER_EPG, ER_ERRCLASS_RETRY,
                        "cannot connect to postgres: %s", msg);
        goto out;
    }

    snprintf(limit_s, sizeof(limit_s), "%d", limit);
    params[0] = company;
    params[1] = run;
    params[2] = status;
    params[3] = limit_s;
    res = PQexecParams(conn, leases_sql, 4, NULL, params, NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state =
            res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

        const char *primary =
            res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                        : NULL;

        pg_message(primary != NULL ? primary : PQerrorMessage(conn), msg,
                   sizeof(msg));
        rc = er_err_set(err, ER_EPG, ER_ERRCLASS_FATAL,
                        "leases query failed (sqlstate %s): %s",
                        state != NULL ? state : "none", msg);
        goto out;
    }

    rc = put_json_rows(out, res);
    if (rc != 0)
        rc = er_err_set(err, rc, ER_ERRCLASS_FATAL, "leases: %s",
                        er_errname(rc));

out:
    PQconninfoFree(opts);
    PQfreemem(parse_msg);
    PQclear(res);
    PQfinish(conn);
    return rc;
}
