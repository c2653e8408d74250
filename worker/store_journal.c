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
    const char *params[] = { op->command_id, op->company_id,
                             op->lease_id,   op->environment_id,
                             op->kind,       op->topic,
                             part,           gen };
    PGresult *res;

    snprintf(part, sizeof(part), "%d", (int)op->partition);
    snprintf(gen, sizeof(gen), "%lld", (long long)op->generation);
    if (op->topic == NULL) {
        params[6] = NULL;
        params[7] = NULL;
    }
    /* A second start of one operation is a new attempt of it: the crash or
     * rebalance that cut the first short left it started or interrupted. */
    res = er_store__exec(
        store, "journal start",
        "INSERT INTO envrun.operations (command_id, company_id, lease_id, "
        "environment_id, kind, state, topic, partition_id, generation) "
        "VALUES ($1, $2::uuid, $3::uuid, $4::uuid, $5, 'started', $6, "
        "$7::int, $8::bigint) "
        "ON CONFLICT (command_id, kind, lease_id) DO UPDATE SET "
        "state = 'started', attempt = envrun.operations.attempt + 1, "
        "topic = EXCLUDED.topic, partition_id = EXCLUDED.partition_id, "
        "generation = EXCLUDED.generation, updated_at = now() "
        "RETURNING attempt",
        8, params, NULL, err);
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
                                   const char *command_id, const char *state,
                                   struct er_err *err)
{
    const char *params[] = { command_id, state };

    return er_store__exec_cmd(
        store, "journal close command",
        "UPDATE envrun.operations SET state = $2, updated_at = now() "
        "WHERE command_id = $1 AND state IN ('started', 'interrupted')",
        2, params, err);
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

int er_store_journal_fence_claim(struct er_store *store, const char *topic,
                                 int32_t partition, const char *owner,
                                 int64_t *generation, struct er_err *err)
{
    char part[16];
    const char *params[] = { topic, part, owner };
    PGresult *res;

    snprintf(part, sizeof(part), "%d", (int)partition);
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
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    *generation = er_store__get_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

int er_store_journal_fence_check(struct er_store *store, const char *topic,
                                 int32_t partition, int64_t generation,
                                 struct er_err *err)
{
    char part[16];
    const char *params[] = { topic, part };
    PGresult *res;
    int64_t current;

    snprintf(part, sizeof(part), "%d", (int)partition);
    res = er_store__exec(store, "fence check",
                         "SELECT generation FROM envrun.partition_fence "
                         "WHERE topic = $1 AND partition_id = $2::int "
                         "FOR SHARE",
                         2, params, NULL, err);
    if (res == NULL)
        return err != NULL ? err->code : ER_EPG;
    current = PQntuples(res) > 0 ? er_store__get_i64(res, 0, 0) : -1;
    PQclear(res);
    if (current != generation)
        return er_err_set(err, ER_EFENCED, ER_ERRCLASS_SKIP,
                          "partition %d of %s moved on (generation %lld, "
                          "ours %lld)",
                          (int)partition, topic, (long long)current,
                          (long long)generation);
    return 0;
}
