/* store_sql: what the store's files (store*.c) share behind the door to
 * libpq: the connection struct and the statement helpers, which classify a
 * failure once from its SQLSTATE (see store_int.h). Not for other modules. */
#ifndef ER_WORKER_STORE_SQL_INT_H
#define ER_WORKER_STORE_SQL_INT_H

#include <stdint.h>

#include <libpq-fe.h>

#include "common/common.h"

/* Statements er_store__exec prepared on the current connection, by their
 * text: each is parsed and planned once per connection instead of once
 * per execution. Open addressing; a full table runs the rest unprepared. */
#define ER_STORE_STMT_SLOTS 256
#define ER_STORE_STMT_MAX   192 /* at most this many prepared */
/* At most this many statements sent ahead before their results are read:
 * their small results never fill a socket buffer the server waits on. */
#define ER_STORE_PIPE_MAX   32

struct er_store_stmt {
    uint64_t hash; /* 0: empty slot */
    char *sql;     /* copy of the text; the key */
    int nparams;
    char name[16]; /* "er_s<n>" on the server */
};

struct er_store_sent;
/* A check of the result of a statement sent ahead, run when it is read:
 * non-zero (err set) fails the transaction. */
typedef int er_store_check_fn(const PGresult *res,
                              const struct er_store_sent *sent,
                              struct er_err *err);

/* A statement sent ahead whose result is not read yet. */
struct er_store_sent {
    const char *what;         /* names it in its error */
    er_store_check_fn *check; /* NULL: none */
    const char *topic;        /* for check: borrowed, lives as long */
    int32_t partition;
    int64_t expect;
};

struct er_store {
    PGconn *conn;
    char *conninfo;
    enum er_store_era era; /* read on connect (era_detect) */
    char lease_ttl_s[24];  /* expires_at = now() + this, as text */
    struct er_store_stmt stmts[ER_STORE_STMT_SLOTS];
    int stmt_cnt;
    /* Statements sent ahead in pipeline mode (er_store__exec_later),
     * their results not read yet; how many of them have a check. */
    struct er_store_sent pipe[ER_STORE_PIPE_MAX];
    int pipe_cnt;
    int pipe_check_cnt;
    /* One of them failed: the transaction is aborted, and every statement
     * until its rollback fails with txn_err, as the server would refuse
     * it. */
    bool is_txn_failed;
    struct er_err txn_err;
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
/* Run one parameterised statement, prepared on the connection the first
 * time its text is seen; parameters whose lengths[i] is non-zero go as
 * binary. Returns the result (caller PQclears) or NULL, err set. */
PGresult *er_store__exec(struct er_store *store, const char *what,
                         const char *sql, int nparams,
                         const char *const *values, const int *lengths,
                         struct er_err *err);
/* er_store__exec with the result's columns in binary. */
PGresult *er_store__exec_binary(struct er_store *store, const char *what,
                                const char *sql, int nparams,
                                const char *const *values, struct er_err *err);
/* Send, inside a transaction, a statement whose rows are not needed and
 * whose failure fails the transaction, without waiting for its result:
 * that is read with the next statement's, in the same round trip, or at
 * the commit (libpq's pipeline mode). Its failure is returned by that
 * statement, and by every later one until the rollback. */
int er_store__exec_later(struct er_store *store, const char *what,
                         const char *sql, int nparams,
                         const char *const *values, const int *lengths,
                         struct er_err *err);
/* er_store__exec_later for a statement whose result sent->check judges
 * when it is read (a fence). A COMMIT waits for that judgement. */
int er_store__exec_checked(struct er_store *store,
                           const struct er_store_sent *sent, const char *sql,
                           int nparams, const char *const *values,
                           struct er_err *err);
/* Read the results of the statements sent ahead now; their first
 * failure, if any. */
int er_store__sync(struct er_store *store, struct er_err *err);
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
