/* store_sql: what the store's files (store*.c) share behind the door to
 * libpq: the connection struct and the statement helpers, which classify a
 * failure once from its SQLSTATE (see store_int.h). Not for other modules. */
#ifndef ER_WORKER_STORE_SQL_INT_H
#define ER_WORKER_STORE_SQL_INT_H

#include <stdint.h>

#include <libpq-fe.h>

#include "common/common.h"

struct er_store {
    PGconn *conn;
    char *conninfo;
    char lease_ttl_s[24]; /* expires_at = now() + this, as text */
};

/* The reaper's backoff after a failed cleanup of a lease: 15 s times
 * 2^attempt (30 s after the first failure), at most an hour; a claim left
 * started by a reaper that died is taken over after 10 minutes. Used by
 * the stale-lease query (store.c) and the claim (store_journal.c); o is
 * the envrun.operations row of the lease's reap. */
#define ER_STORE_REAP_BACKOFF_SQL                                          \
    "((o.state = 'started' AND o.updated_at > now() - interval '10 min') " \
    "OR (o.state <> 'started' AND o.updated_at > now() - make_interval("   \
    "secs => least(3600, 15 * power(2, least(o.attempt, 8))))))"

/* Fill err from a failed result (NULL: connection lost or OOM) and return
 * its code: class 08/40/53/57P and unique races RETRY, 22/23 SKIP, the
 * rest FATAL. what names the statement in the message. */
int er_store__result_to_err(PGconn *conn, const PGresult *res, const char *what,
                            struct er_err *err);
/* Run one parameterised statement; parameters whose lengths[i] is non-zero
 * go as binary. Returns the result (caller PQclears) or NULL, err set. */
PGresult *er_store__exec(struct er_store *store, const char *what,
                         const char *sql, int nparams,
                         const char *const *values, const int *lengths,
                         struct er_err *err);
/* er_store__exec for a statement whose rows are not needed. */
int er_store__exec_cmd(struct er_store *store, const char *what,
                       const char *sql, int nparams, const char *const *values,
                       struct er_err *err);
/* A text column copied into arena; NULL for SQL NULL (or OOM). */
char *er_store__get_str(const PGresult *res, int row, int col,
                        struct er_arena *arena);
/* An integer column; -1 for SQL NULL. */
int64_t er_store__get_i64(const PGresult *res, int row, int col);
/* ER_ENOMEM, class RETRY: the arena is full. */
int er_store__oom(struct er_err *err);

#endif
