/* store_gauges: the one query behind the gauges the reaper refreshes each
 * pass (envrun_leases, envrun_journal_inflight): leases not yet ended by
 * driver and status, and journal entries in flight by kind and state.
 * Same thread-safety as the store it is given; results live in the
 * caller's arena. */
#include <string.h>

#include <libpq-fe.h>

#include "worker/store_int.h"
#include "worker/store_sql_int.h"

/* Both halves are grouped counts over few rows. The journal half matches
 * the partial indexes operations_open_idx (started, interrupted) and
 * operations_acquire_open_idx (only an acquire is ever rolling_back). */
static const char gauges_sql[] =
    "SELECT 'lease', coalesce(e.driver, 'unknown'), l.status, count(*) "
    "FROM environment_leases l "
    "LEFT JOIN environments e ON e.id = l.environment_id "
    "WHERE l.status IN ('active', 'pending_cleanup') GROUP BY 2, 3 "
    "UNION ALL "
    "SELECT 'op', kind, state, count(*) FROM envrun.operations "
    "WHERE state IN ('started', 'interrupted') "
    "OR (kind = 'acquire' AND state = 'rolling_back') GROUP BY 2, 3";

int er_store_gauges_read(struct er_store *store, struct er_arena *arena,
                         struct er_store_gauge **rows, size_t *row_cnt,
                         struct er_err *err)
{
    PGresult *res = NULL;
    int n;
    int i;
    int rc = 0;

    *rows = NULL;
    *row_cnt = 0;
    res = er_store__exec(store, "gauges", gauges_sql, 0, NULL, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    n = PQntuples(res);
    if (n == 0)
        goto out;
    *rows = er_arena_alloc(arena, sizeof(**rows) * (size_t)n);
    if (*rows == NULL) {
        rc = er_store__oom(err);
        goto out;
    }
    for (i = 0; i < n; i++) {
        struct er_store_gauge *g = &(*rows)[i];

        g->is_lease = strcmp(PQgetvalue(res, i, 0), "lease") == 0;
        g->a = er_store__get_str(res, i, 1, arena);
        g->b = er_store__get_str(res, i, 2, arena);
        g->cnt = er_store__get_i64(res, i, 3);
        if (g->a == NULL || g->b == NULL) {
            rc = er_store__oom(err);
            goto out;
        }
    }
    *row_cnt = (size_t)n;
out:
    PQclear(res);
    return rc;
}
