/* store_journal: the operation journal (envrun.operations) and partition
 * fencing (envrun.partition_fence), see store_int.h. One thread per
 * connection; rows handed out live in the caller's arena. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "worker/store_int.h"
#include "worker/store_sql_int.h"

int er_store_journal_start(struct er_store *store, const struct er_op *op,
                           int *attempt, struct er_err *err)
{
    char part[16];
    char gen[24];
    char offset[24];
    const char *params[] = { op->command_id, op->company_id,
                             op->lease_id,   op->environment_id,
                             op->kind,       op->topic,
                             part,           gen,
                             offset };
    PGresult *res;

    snprintf(part, sizeof(part), "%d", (int)op->partition);
    snprintf(gen, sizeof(gen), "%lld", (long long)op->generation);
    snprintf(offset, sizeof(offset), "%lld", (long long)op->offset);
    if (op->topic == NULL) {
        params[6] = NULL;
        params[7] = NULL;
        params[8] = NULL;
    }
    /* A second start of one operation is a new attempt of it: the crash or
     * rebalance that cut the first short left it started or interrupted. */
    res = er_store__exec(
        store, "journal start",
        "INSERT INTO envrun.operations (command_id, company_id, lease_id, "
        "environment_id, kind, state, topic, partition_id, generation, "
        "kafka_offset) "
        "VALUES ($1, $2::uuid, $3::uuid, $4::uuid, $5, 'started', $6, "
        "$7::int, $8::bigint, $9::bigint) "
        "ON CONFLICT (command_id, kind, lease_id) DO UPDATE SET "
        "state = 'started', attempt = envrun.operations.attempt + 1, "
        "topic = EXCLUDED.topic, partition_id = EXCLUDED.partition_id, "
        "generation = EXCLUDED.generation, "
        "kafka_offset = EXCLUDED.kafka_offset, updated_at = now() "
        "RETURNING attempt",
        9, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *attempt = (int)er_store__get_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

int er_store_journal_claim(struct er_store *store, const struct er_op *op,
                           bool *is_claimed, struct er_err *err)
{
    const char *params[] = { op->command_id, op->company_id, op->lease_id,
                             op->environment_id, op->kind };
    PGresult *res;

    /* A claim another reaper holds, or one that failed within its
     * backoff, is not taken. */
    res = er_store__exec(
        store, "journal claim",
        "INSERT INTO envrun.operations AS o (command_id, company_id, "
        "lease_id, environment_id, kind, state) VALUES ($1, $2::uuid, "
        "$3::uuid, $4::uuid, $5, 'started') "
        "ON CONFLICT (command_id, kind, lease_id) DO UPDATE SET "
        "state = 'started', attempt = o.attempt + 1, updated_at = now() "
        "WHERE NOT " ER_STORE_REAP_BACKOFF_SQL " RETURNING attempt",
        5, params, NULL, err);
    *is_claimed = false;
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *is_claimed = PQntuples(res) > 0;
    PQclear(res);
    return 0;
}

int er_store_journal_get(struct er_store *store, const char *command_id,
                         const char *kind, const char *lease_id,
                         struct er_arena *arena, char **state,
                         char **detail_json, struct er_err *err)
{
    const char *params[] = { command_id, kind, lease_id };
    PGresult *res;
    int rc = 0;

    *state = NULL;
    *detail_json = NULL;
    res = er_store__exec(store, "journal lookup",
                         "SELECT state, detail::text FROM envrun.operations "
                         "WHERE command_id = $1 AND kind = $2 AND "
                         "lease_id = $3::uuid",
                         3, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (PQntuples(res) == 0) {
        rc = ER_ENOTFOUND;
        goto out;
    }
    *state = er_store__get_str(res, 0, 0, arena);
    *detail_json = er_store__get_str(res, 0, 1, arena);
    if (*state == NULL)
        rc = er_store__oom(err);
out:
    PQclear(res);
    return rc;
}

int er_store_journal_bridge(struct er_store *store, const char *lease_id,
                            struct er_arena *arena, char **detail_json,
                            struct er_err *err)
{
    const char *params[] = { lease_id };
    PGresult *res;
    int rc = 0;

    *detail_json = NULL;
    res = er_store__exec(store, "bridge lookup",
                         "SELECT detail::text FROM envrun.operations "
                         "WHERE lease_id = $1::uuid AND kind = 'bridge' AND "
                         "detail IS NOT NULL ORDER BY id DESC LIMIT 1",
                         1, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    if (PQntuples(res) == 0) {
        rc = ER_ENOTFOUND;
        goto out;
    }
    *detail_json = er_store__get_str(res, 0, 0, arena);
    if (*detail_json == NULL)
        rc = er_store__oom(err);
out:
    PQclear(res);
    return rc;
}

int er_store_journal_bridges_owned(struct er_store *store, const char *topic,
                                   const char *owner, struct er_arena *arena,
                                   struct er_bridge_op **ops, size_t *op_cnt,
                                   struct er_err *err)
{
    const char *params[] = { topic, owner };
    PGresult *res;
    int rc = 0;
    int n;
    int i;

    *ops = NULL;
    *op_cnt = 0;
    /* The latest bridge operation of each active lease whose command came
     * from a partition this owner holds. */
    res = er_store__exec(
        store, "bridges owned",
        "SELECT DISTINCT ON (o.lease_id) o.lease_id::text, o.command_id, "
        "o.partition_id, o.kafka_offset, o.detail::text, o.company_id::text "
        "FROM envrun.operations o "
        "JOIN envrun.partition_fence f ON f.topic = o.topic "
        "AND f.partition_id = o.partition_id "
        "JOIN environment_leases l ON l.id = o.lease_id "
        "WHERE o.kind = 'bridge' AND o.state = 'done' AND "
        "o.detail IS NOT NULL AND o.kafka_offset IS NOT NULL AND "
        "o.topic = $1 AND f.owner = $2 AND l.status = 'active' "
        "ORDER BY o.lease_id, o.id DESC LIMIT 256",
        2, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    n = PQntuples(res);
    if (n > 0) {
        *ops = er_arena_alloc(arena, sizeof(**ops) * (size_t)n);
        if (*ops == NULL) {
            rc = er_store__oom(err);
            goto out;
        }
    }
    for (i = 0; i < n; i++) {
        struct er_bridge_op *op = &(*ops)[i];

        op->lease_id = er_store__get_str(res, i, 0, arena);
        op->command_id = er_store__get_str(res, i, 1, arena);
        op->partition = (int32_t)strtol(PQgetvalue(res, i, 2), NULL, 10);
        op->offset = strtoll(PQgetvalue(res, i, 3), NULL, 10);
        op->detail_json = er_store__get_str(res, i, 4, arena);
        op->company_id = er_store__get_str(res, i, 5, arena);
        if (op->lease_id == NULL || op->command_id == NULL ||
            op->detail_json == NULL || op->company_id == NULL) {
            rc = er_store__oom(err);
            goto out;
        }
    }
    *op_cnt = (size_t)n;
out:
    PQclear(res);
    return rc;
}

int er_store_journal_close(struct er_store *store, const char *command_id,
                           const char *kind, const char *lease_id,
                           const char *state, const char *detail_json,
                           struct er_err *err)
{
    const char *params[] = { command_id, kind, lease_id, state, detail_json };

    return er_store__exec_cmd(
        store, "journal close",
        "UPDATE envrun.operations SET state = $4, "
        "detail = COALESCE($5::jsonb, detail), updated_at = now() "
        "WHERE command_id = $1 AND kind = $2 AND lease_id = $3::uuid",
        5, params, err);
}

int er_store_journal_close_command(struct er_store *store,
                                   const char *command_id,
                                   const char *company_id, const char *state,
                                   struct er_err *err)
{
    const char *params[] = { command_id, state, company_id };

    /* Compared as text (a dead-lettered command's company may be ""),
     * in the uuid type's lower case (a command may spell it in upper). */
    return er_store__exec_later(
        store, "journal close command",
        "UPDATE envrun.operations SET state = $2, updated_at = now() "
        "WHERE command_id = $1 AND company_id::text = lower($3) "
        "AND state IN ('started', 'interrupted')",
        3, params, NULL, err);
}

int er_store_journal_interrupt(struct er_store *store, const char *topic,
                               int32_t partition, int64_t generation,
                               int64_t *cnt, struct er_err *err)
{
    char part[16];
    char gen[24];
    const char *params[] = { topic, part, gen };
    PGresult *res;

    snprintf(part, sizeof(part), "%d", (int)partition);
    snprintf(gen, sizeof(gen), "%lld", (long long)generation);
    res = er_store__exec(
        store, "journal interrupt",
        "UPDATE envrun.operations SET state = 'interrupted', "
        "updated_at = now() WHERE topic = $1 AND partition_id = $2::int "
        "AND state = 'started' AND generation < $3::bigint",
        3, params, NULL, err);
    *cnt = 0;
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *cnt = strtoll(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return 0;
}

int er_store_journal_adopt(struct er_store *store, const char *topic,
                           int32_t partition, int64_t generation,
                           const int64_t *offsets, size_t offset_cnt,
                           int64_t *cnt, struct er_err *err)
{
    char part[16];
    char gen[24];
    struct er_buf list;
    const char *params[] = { topic, part, gen, NULL };
    PGresult *res;
    size_t i;
    int rc;

    *cnt = 0;
    if (offset_cnt == 0)
        return 0;
    snprintf(part, sizeof(part), "%d", (int)partition);
    snprintf(gen, sizeof(gen), "%lld", (long long)generation);
    /* A bigint[] literal: {1,2,3}. */
    er_buf_init(&list, offset_cnt * 24 + 8);
    rc = er_buf_printf(&list, "{");
    for (i = 0; rc == 0 && i < offset_cnt; i++)
        rc = er_buf_printf(&list, "%s%lld", i > 0 ? "," : "",
                           (long long)offsets[i]);
    if (rc == 0)
        rc = er_buf_printf(&list, "}");
    if (rc != 0) {
        er_buf_fini(&list);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    }
    params[3] = (const char *)list.data;
    res = er_store__exec(
        store, "journal adopt",
        "UPDATE envrun.operations SET generation = $3::bigint, "
        "updated_at = now() WHERE topic = $1 AND partition_id = $2::int "
        "AND state = 'started' AND generation < $3::bigint "
        "AND kafka_offset = ANY ($4::bigint[])",
        4, params, NULL, err);
    er_buf_fini(&list);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *cnt = strtoll(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return 0;
}

int er_store_effect_hold(struct er_store *store, const char *topic,
                         int32_t partition, bool is_held, struct er_err *err)
{
    char part[16];
    const char *params[] = { topic, part };

    snprintf(part, sizeof(part), "%d", (int)partition);
    return er_store__exec_cmd(
        store, is_held ? "effect hold" : "effect let go",
        is_held ? "SELECT pg_advisory_lock_shared(hashtext($1), $2::int)"
                : "SELECT pg_advisory_unlock_shared(hashtext($1), $2::int)",
        2, params, err);
}

/* Set lock_timeout for the rest of the open transaction. */
static int lock_timeout(struct er_store *store, int ms, struct er_err *err)
{
    char timeout[24];
    const char *params[] = { timeout };

    snprintf(timeout, sizeof(timeout), "%dms", ms > 0 ? ms : 0);
    return er_store__exec_cmd(store, "lock timeout",
                              "SELECT set_config('lock_timeout', $1, true)", 1,
                              params, err);
}

/* Inside the claim's transaction: wait up to ms for the previous owner's
 * steps to let go of their driver work (er_store_effect_hold). Steps still
 * working then are not waited for longer: the fence stops them recording
 * anything. */
static int wait_effects(struct er_store *store, const char *topic,
                        const char *part, int ms, struct er_err *err)
{
    const char *params[] = { topic, part };
    struct er_err lerr;
    int rc;

    rc = er_store__exec_cmd(store, "claim savepoint", "SAVEPOINT effects", 0,
                            NULL, err);
    if (rc == 0)
        rc = lock_timeout(store, ms, err);
    if (rc != 0)
        return rc;
    er_err_clear(&lerr);
    if (er_store__exec_cmd(store, "effect wait",
                           "SELECT pg_advisory_xact_lock(hashtext($1), "
                           "$2::int)",
                           2, params, &lerr) == 0)
        return 0;
    if (lerr.code != ER_ETIMEDOUT) {
        *err = lerr;
        return lerr.code;
    }
    ER_LOG_WARN("store",
                "partition %s of %s: steps of its previous owner still work "
                "after %d ms; their outcomes will be fenced",
                part, topic, ms);
    return er_store__exec_cmd(store, "claim savepoint",
                              "ROLLBACK TO SAVEPOINT effects", 0, NULL, err);
}

int er_store_journal_fence_claim(struct er_store *store, const char *topic,
                                 int32_t partition, const char *owner,
                                 const struct er_claim_waits *waits,
                                 int64_t *generation, struct er_err *err)
{
    char part[16];
    const char *params[] = { topic, part, owner };
    PGresult *res;
    int rc;

    snprintf(part, sizeof(part), "%d", (int)partition);
    rc = er_store_begin(store, err);
    if (rc == 0 && waits->effects_ms > 0)
        rc = wait_effects(store, topic, part, waits->effects_ms, err);
    if (rc == 0)
        rc = lock_timeout(store, waits->records_ms, err);
    if (rc != 0) {
        er_store_rollback(store);
        return rc;
    }
    /* The update waits for every outcome transaction that holds the row
     * FOR SHARE: once it returns, the previous owner can write no more. */
    res = er_store__exec(
        store, "fence claim",
        "INSERT INTO envrun.partition_fence (topic, partition_id, "
        "generation, owner) VALUES ($1, $2::int, 1, $3) "
        "ON CONFLICT (topic, partition_id) DO UPDATE SET "
        "generation = envrun.partition_fence.generation + 1, "
        "owner = EXCLUDED.owner, claimed_at = now() RETURNING generation",
        3, params, NULL, err);
    if (res == NULL) {
        er_store_rollback(store);
        return err != NULL ? err->code : ER_EPG;
    }
    *generation = er_store__get_i64(res, 0, 0);
    PQclear(res);
    return er_store_commit(store, err);
}

/* The fence row's generation (no row: -1) must be the step's. */
static int fence_judge(const PGresult *res, const struct er_store_sent *sent,
                       struct er_err *err)
{
    int64_t current = PQntuples(res) > 0 ? er_store__get_i64(res, 0, 0) : -1;

    if (current == sent->expect)
        return 0;
    return er_err_set(err, ER_EFENCED, ER_ERRCLASS_SKIP,
                      "partition %d of %s moved on (generation %lld, "
                      "ours %lld)",
                      (int)sent->partition, sent->topic, (long long)current,
                      (long long)sent->expect);
}

int er_store_journal_fence_check(struct er_store *store, const char *topic,
                                 int32_t partition, int64_t generation,
                                 struct er_err *err)
{
    char part[16];
    const char *params[] = { topic, part };
    const struct er_store_sent sent = { "fence check", fence_judge, topic,
                                        partition, generation };

    snprintf(part, sizeof(part), "%d", (int)partition);
    /* Sent ahead: judged with the next statement's answer, and before the
     * COMMIT at the latest. */
    return er_store__exec_checked(store, &sent,
                                  "SELECT generation FROM "
                                  "envrun.partition_fence "
                                  "WHERE topic = $1 AND partition_id = $2::int "
                                  "FOR SHARE",
                                  2, params, err);
}

/* ---- acquisitions nobody will finish (the reaper) ---- */

int er_store_journal_unrecorded(struct er_store *store, int64_t ttl_s,
                                int limit, struct er_arena *arena,
                                struct er_acquire_op **ops, size_t *op_cnt,
                                struct er_err *err)
{
    char ttl[24];
    char lim[24];
    const char *params[] = { ttl, lim };
    PGresult *res;
    int n;
    int i;
    int rc = 0;

    *ops = NULL;
    *op_cnt = 0;
    snprintf(ttl, sizeof(ttl), "%lld", (long long)ttl_s);
    snprintf(lim, sizeof(lim), "%d", limit);
    /* rolling_back: its worker closes it right after the outcome commit, so
     * it gets a minute first. started or interrupted: its command did not
     * come back within the lease TTL; one still started under its
     * partition's current generation belongs to a live step (or to the
     * owner that will mark it interrupted when it gets the partition), so
     * it is left to that owner. Never one whose lease was recorded. The
     * reaper's claim on the lease (a reap entry) gives the backoff after a
     * failed cleanup, as for a lease; SKIP LOCKED leaves one that another
     * reaper is claiming to it. */
    res = er_store__exec(
        store, "load unrecorded acquisitions",
        "SELECT a.command_id, a.company_id::text, a.lease_id::text, "
        "a.environment_id::text, a.state, a.attempt, a.detail::text "
        "FROM envrun.operations a WHERE a.kind = 'acquire' "
        "AND ((a.state = 'rolling_back' "
        "AND a.updated_at < now() - interval '1 min') "
        "OR (a.state IN ('started', 'interrupted') "
        "AND a.updated_at < now() - make_interval(secs => $1::bigint) "
        "AND NOT (a.state = 'started' AND EXISTS (SELECT 1 FROM "
        "envrun.partition_fence f WHERE f.topic = a.topic AND "
        "f.partition_id = a.partition_id AND "
        "f.generation = a.generation)))) "
        "AND NOT EXISTS (SELECT 1 FROM environment_leases l "
        "WHERE l.id = a.lease_id) "
        "AND NOT EXISTS (SELECT 1 FROM envrun.operations o WHERE "
        "o.command_id = 'reap:' || a.lease_id::text AND o.kind = 'reap' AND "
        "o.lease_id = a.lease_id AND " ER_STORE_REAP_BACKOFF_SQL ") "
        "ORDER BY a.updated_at LIMIT $2::int FOR UPDATE OF a SKIP LOCKED",
        2, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    n = PQntuples(res);
    if (n > 0) {
        *ops = er_arena_alloc(arena, sizeof(**ops) * (size_t)n);
        if (*ops == NULL) {
            rc = er_store__oom(err);
            goto out;
        }
    }
    for (i = 0; i < n; i++) {
        struct er_acquire_op *op = &(*ops)[i];

        op->command_id = er_store__get_str(res, i, 0, arena);
        op->company_id = er_store__get_str(res, i, 1, arena);
        op->lease_id = er_store__get_str(res, i, 2, arena);
        op->environment_id = er_store__get_str(res, i, 3, arena);
        op->state = er_store__get_str(res, i, 4, arena);
        op->attempt = (int)er_store__get_i64(res, i, 5);
        op->detail_json = er_store__get_str(res, i, 6, arena);
        if (op->command_id == NULL || op->company_id == NULL ||
            op->lease_id == NULL || op->state == NULL ||
            (op->environment_id == NULL && !PQgetisnull(res, i, 3)) ||
            (op->detail_json == NULL && !PQgetisnull(res, i, 6))) {
            rc = er_store__oom(err);
            goto out;
        }
    }
    *op_cnt = (size_t)n;
out:
    PQclear(res);
    return rc;
}

int er_store_journal_unrecorded_close(struct er_store *store,
                                      const struct er_acquire_op *op,
                                      const char *detail_json, bool *is_closed,
                                      struct er_err *err)
{
    char attempt[16];
    const char *params[] = { op->command_id, op->lease_id, op->state, attempt,
                             detail_json };
    PGresult *res;

    *is_closed = false;
    snprintf(attempt, sizeof(attempt), "%d", op->attempt);
    /* Only the attempt the reaper took: a command that resumed the acquire
     * meanwhile started a new attempt, and its outcome closes it. */
    res = er_store__exec(
        store, "journal close unrecorded",
        "UPDATE envrun.operations SET state = 'rolled_back', "
        "detail = COALESCE($5::jsonb, detail), updated_at = now() "
        "WHERE command_id = $1 AND kind = 'acquire' AND lease_id = $2::uuid "
        "AND state = $3 AND attempt = $4::int",
        5, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *is_closed = strtoll(PQcmdTuples(res), NULL, 10) > 0;
    PQclear(res);
    return 0;
}
