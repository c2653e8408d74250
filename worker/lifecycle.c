/* lifecycle: one command's step (domain.md 3.1-3.5, 3.8 and contract.md
 * 3-4). A step with remote work runs in three phases around the operation
 * journal (DESIGN.md); a local one is one transaction. Domain outcomes
 * (environment_not_found, ...) are results, committed like successes; only
 * machinery failures return an error. Not thread-safe: one struct
 * er_lifecycle per dispatcher thread. Owns its store connection, arena and
 * encode buffer. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "drivers/driver.h"
#include "schemas/schemas.h"
#include "worker/lifecycle_int.h"
#include "worker/redact_int.h"
#include "worker/store_int.h"

#define ARENA_MAX            (64u * 1024 * 1024)
#define ENCODE_MAX           (8u * 1024 * 1024)
#define TOPIC_MAX            256
#define SUPERSEDED           "superseded: stale single-flight workspace lease"
#define REAPED               "lease_expired"
/* domain.md 3.4 step 3: the provision command runs at most 300 s. */
#define PROVISION_TIMEOUT_MS 300000

/* A remote acquisition to release once the step's outcome committed (see
 * undo_acquire); lease_id NULL when none. Arena strings. */
struct undo {
    const char *command_id;
    const char *lease_id;
    const char *environment_id;
    const char *detail_json; /* {driver, metadata} */
};

struct er_lifecycle {
    struct er_store *store;
    struct undo undo;               /* set by the step, run after its commit */
    struct er_arena arena;          /* reset per command */
    struct er_buf enc;              /* scratch for one encoded value */
    char topic_commands[TOPIC_MAX]; /* the fence's topic */
    char topic_results[TOPIC_MAX];
    char topic_lease_events[TOPIC_MAX];
    char topic_activity[TOPIC_MAX];
    char topic_dlq[TOPIC_MAX];
};

/* The state of one step: the command, its result, the result's key. */
struct step {
    struct er_lifecycle *lc;
    const struct er_msg_coords *coords;
    const struct er_run_command *cmd;
    const uint8_t *key; /* result key: the command's key, else its id */
    size_t key_len;
    struct er_command_result res;
    json_t *result; /* owned: becomes resultJson */
};

/* ================================================================
 * JSON helpers
 * ================================================================ */

static json_t *jstr(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

static json_t *jtime(int64_t ms)
{
    char iso[32];

    if (ms < 0)
        return json_null();
    er_time_iso(ms, iso);
    return json_string(iso);
}

/* Parse JSON text of a column; NULL text gives JSON null. */
static json_t *jparse(const char *text)
{
    json_t *v;

    if (text == NULL)
        return json_null();
    v = json_loads(text, JSON_DECODE_ANY, NULL);
    return v != NULL ? v : json_null();
}

static char *jdump(struct er_arena *arena, const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    char *d;

    if (s == NULL)
        return NULL;
    d = er_arena_strdup(arena, s);
    free(s); /* jansson allocates with malloc */
    return d;
}

static json_t *lease_to_json(const struct er_lease_row *l)
{
    json_t *meta = jparse(l->metadata_json);

    er_redact_json(meta, false);
    return json_pack(
        "{s:s, s:s, s:s, s:o, s:o, s:o, s:s, s:s, s:o, s:o, s:o, s:o, s:o,"
        " s:o, s:o, s:o, s:o, s:o, s:o}",
        "id", l->id, "companyId", l->company_id, "environmentId",
        l->environment_id, "executionWorkspaceId",
        jstr(l->execution_workspace_id), "issueId", jstr(l->issue_id),
        "heartbeatRunId", jstr(l->heartbeat_run_id), "status", l->status,
        "leasePolicy", l->lease_policy, "provider", jstr(l->provider),
        "providerLeaseId", jstr(l->provider_lease_id), "acquiredAt",
        jtime(l->acquired_at_ms), "lastUsedAt", jtime(l->last_used_at_ms),
        "expiresAt", jtime(l->expires_at_ms), "releasedAt",
        jtime(l->released_at_ms), "failureReason", jstr(l->failure_reason),
        "cleanupStatus", jstr(l->cleanup_status), "metadata", meta, "createdAt",
        jtime(l->created_at_ms), "updatedAt", jtime(l->updated_at_ms));
}

static json_t *env_to_json(const struct er_env_row *e)
{
    json_t *config = jparse(e->config_json);

    er_redact_json(config, false);
    return json_pack(
        "{s:s, s:s, s:s, s:o, s:s, s:s, s:o, s:o, s:o, s:o}", "id", e->id,
        "companyId", e->company_id, "name", e->name, "description",
        jstr(e->description), "driver", e->driver, "status", e->status,
        "config", config, "metadata", jparse(e->metadata_json), "createdAt",
        jtime(e->created_at_ms), "updatedAt", jtime(e->updated_at_ms));
}

/* The driver's view of an environment row and its parsed config
 * (both borrowed). */
static struct er_driver_env driver_env(const struct er_env_row *e,
                                       const json_t *config)
{
    return (struct er_driver_env){ e->id,     e->company_id, e->name,
                                   e->driver, e->status,     config };
}

/* The driver's view of a lease row and its parsed metadata (borrowed). */
static struct er_driver_lease driver_lease(const struct er_lease_row *l,
                                           const json_t *meta)
{
    return (struct er_driver_lease){ l->id,
                                     l->status,
                                     l->lease_policy,
                                     l->provider,
                                     l->provider_lease_id,
                                     l->heartbeat_run_id,
                                     meta };
}

/* ================================================================
 * Outbox writers
 * ================================================================ */

static int oom(struct er_err *err)
{
    return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
}

static int outbox(struct er_lifecycle *lc, const char *topic,
                  const uint8_t *key, size_t key_len, const char *headers,
                  struct er_err *err)
{
    return er_store_outbox_add(lc->store, topic, key, key_len, lc->enc.data,
                               lc->enc.len, headers, err);
}

/* Queue a LeaseEvent for the row as it now is, with the next version. */
static int lease_event(struct er_lifecycle *lc, const struct er_lease_row *l,
                       struct er_err *err)
{
    struct er_lease_event ev;
    char event_id[37];
    json_t *meta = NULL;
    char *meta_json = NULL;
    int rc;

    memset(&ev, 0, sizeof(ev));
    rc = er_store_lease_next_version(lc->store, l->id, &ev.version, err);
    if (rc != 0)
        return rc;
    if (er_uuid_v4(event_id) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY, "getrandom failed");
    meta = jparse(l->metadata_json);
    er_redact_json(meta, false);
    meta_json = json_is_null(meta) ? NULL : jdump(&lc->arena, meta);
    json_decref(meta);
    ev.event_id = event_id;
    ev.occurred_at_ms = l->updated_at_ms;
    ev.lease_id = l->id;
    ev.company_id = l->company_id;
    ev.environment_id = l->environment_id;
    ev.execution_workspace_id = l->execution_workspace_id;
    ev.issue_id = l->issue_id;
    ev.heartbeat_run_id = l->heartbeat_run_id;
    ev.status = l->status;
    ev.lease_policy = l->lease_policy;
    ev.provider = l->provider;
    ev.provider_lease_id = l->provider_lease_id;
    ev.acquired_at_ms = l->acquired_at_ms;
    ev.last_used_at_ms = l->last_used_at_ms;
    ev.expires_at_ms = l->expires_at_ms;
    ev.released_at_ms = l->released_at_ms;
    ev.failure_reason = l->failure_reason;
    ev.cleanup_status = l->cleanup_status;
    ev.metadata_json = meta_json;
    ev.created_at_ms = l->created_at_ms;
    ev.updated_at_ms = l->updated_at_ms;
    er_buf_reset(&lc->enc);
    rc = er_codec_lease_event_encode(&ev, &lc->enc, err);
    if (rc != 0)
        return rc;
    return outbox(lc, lc->topic_lease_events, (const uint8_t *)l->id,
                  strlen(l->id), NULL, err);
}

/* Write an activity_log row and queue its ActivityEvent. A row the
 * database refuses (a control-plane foreign key, say) is logged and
 * skipped: domain.md 3.2 step 3 says logging must not fail the step. */
/* Who an activity row is attributed to (domain.md 3.8). */
struct actor {
    const char *company_id;
    const char *type; /* agent or system */
    const char *id;
    const char *agent_id; /* may be NULL */
    const char *run_id;   /* may be NULL */
};

static struct actor step_actor(const struct step *st)
{
    const struct er_run_command *cmd = st->cmd;
    struct actor a = { cmd->company_id, "agent", cmd->agent_id, cmd->agent_id,
                       cmd->heartbeat_run_id };

    return a;
}

static int activity(struct er_lifecycle *lc, const struct actor *who,
                    const char *action, const struct er_lease_row *l,
                    json_t *details, struct er_err *err)
{
    struct er_activity_row in;
    struct er_activity_row row;
    struct er_activity_event ev;
    struct er_err aerr;
    int rc;

    er_redact_json(details, true);
    memset(&in, 0, sizeof(in));
    in.company_id = who->company_id;
    in.actor_type = who->type;
    in.actor_id = who->id;
    in.action = action;
    in.entity_type = "environment_lease";
    in.entity_id = l->id;
    in.agent_id = who->agent_id;
    in.run_id = who->run_id;
    in.details_json = jdump(&lc->arena, details);
    if (in.details_json == NULL)
        return oom(err);

    rc = er_store_savepoint(lc->store, err);
    if (rc != 0)
        return rc;
    er_err_clear(&aerr);
    rc = er_store_activity_insert(lc->store, &in, &lc->arena, &row, &aerr);
    if (rc != 0) {
        if (aerr.cls == ER_ERRCLASS_RETRY) {
            *err = aerr;
            return rc;
        }
        ER_LOG_WARN("lifecycle", "activity %s for lease %s not written: %s",
                    action, l->id, aerr.msg);
        return er_store_savepoint_rollback(lc->store, err);
    }
    rc = er_store_savepoint_release(lc->store, err);
    if (rc != 0)
        return rc;

    memset(&ev, 0, sizeof(ev));
    ev.id = row.id;
    ev.company_id = row.company_id;
    ev.actor_type = row.actor_type;
    ev.actor_id = row.actor_id;
    ev.action = row.action;
    ev.entity_type = row.entity_type;
    ev.entity_id = row.entity_id;
    ev.agent_id = row.agent_id;
    ev.run_id = row.run_id;
    ev.details_json = row.details_json;
    ev.created_at_ms = row.created_at_ms;
    er_buf_reset(&lc->enc);
    rc = er_codec_activity_event_encode(&ev, &lc->enc, err);
    if (rc != 0)
        return rc;
    return outbox(lc, lc->topic_activity, (const uint8_t *)row.company_id,
                  strlen(row.company_id), NULL, err);
}

/* ================================================================
 * Phases and the journal (DESIGN.md: intent, effect, outcome)
 * ================================================================ */

/* Inside the open transaction: stop unless the step's partition is still
 * ours (ER_EFENCED). Holds the fence row until the transaction ends, so a
 * new owner's claim waits for this transaction. */
static int fence(struct er_lifecycle *lc, const struct er_msg_coords *coords,
                 struct er_err *err)
{
    if (coords == NULL || coords->generation < 0)
        return 0;
    return er_store_journal_fence_check(lc->store, lc->topic_commands,
                                        coords->partition, coords->generation,
                                        err);
}

/* Phase 1: record that the step is about to run kind on lease_id. */
static int journal(struct step *st, const char *kind, const char *lease_id,
                   const char *environment_id, struct er_err *err)
{
    const struct er_msg_coords *co = st->coords;
    struct er_op op = { st->cmd->command_id,
                        st->cmd->company_id,
                        lease_id,
                        environment_id,
                        kind,
                        st->lc->topic_commands,
                        co != NULL ? co->partition : -1,
                        co != NULL ? co->generation : -1 };
    int attempt = 0;
    int rc;

    rc = er_store_journal_start(st->lc->store, &op, &attempt, err);
    if (rc == 0 && attempt > 1)
        er_log_kv(ER_LOG_INFO, "lifecycle", "resuming an interrupted operation",
                  "commandId", st->cmd->command_id, "kind", kind, "leaseId",
                  lease_id, (const char *)NULL);
    return rc;
}

/* End of phase 1: commit the journal entries, so the driver works with no
 * transaction open and no lock held. */
static int intent_commit(struct step *st, struct er_err *err)
{
    int rc;

    er_fault_point("intent.before_commit");
    rc = er_store_commit(st->lc->store, err);
    if (rc == 0)
        er_fault_point("intent.after_commit");
    return rc;
}

/* Phase 3 starts: a new transaction under the fence. A step cancelled
 * during its effect records nothing: the partition's next owner gets the
 * command again and resumes from the journal. */
static int outcome_begin(struct step *st, struct er_err *err)
{
    const struct er_msg_coords *co = st->coords;
    int rc;

    if (co != NULL && co->cancel != NULL && atomic_load(co->cancel))
        return er_err_set(err, ER_ECANCELED, ER_ERRCLASS_SKIP,
                          "step cancelled before its outcome was recorded");
    rc = er_store_begin(st->lc->store, err);
    if (rc != 0)
        return rc;
    return fence(st->lc, co, err);
}

/* ================================================================
 * Results
 * ================================================================ */

/* Make the step's result a domain failure with a formatted message. */
static void fail(struct step *st, enum er_outcome outcome,
                 enum er_error_code code, const char *fmt, ...) ER_PRINTF(4, 5);

static void fail(struct step *st, enum er_outcome outcome,
                 enum er_error_code code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    st->res.outcome = outcome;
    st->res.error_code = code;
    st->res.error_message = er_arena_strdup(&st->lc->arena, msg);
}

static void set_env(struct step *st, const struct er_env_row *env)
{
    st->res.environment_id = env->id;
    st->res.driver = env->driver;
}

/* ================================================================
 * acquire (domain.md 3.1-3.3)
 * ================================================================ */

/* resolveEnvironment: 0 with env filled, or 1 when the result already says
 * why not (environment_not_found / environment_inactive). */
static int resolve_env(struct step *st, struct er_env_row *env,
                       struct er_err *err)
{
    const struct er_run_command *cmd = st->cmd;
    struct er_lifecycle *lc = st->lc;
    const char *id = cmd->selected_environment_id;
    int rc;

    if (id == NULL || id[0] == '\0') {
        rc = er_store_env_ensure_local(lc->store, cmd->company_id, &lc->arena,
                                       env, err);
        if (rc != 0)
            return rc;
    } else {
        rc = er_store_env_get(lc->store, id, &lc->arena, env, err);
        if (rc == ER_ENOTFOUND) {
            st->res.environment_id = id;
            fail(st, ER_OUTCOME_ERROR, ER_EC_ENVIRONMENT_NOT_FOUND,
                 "Environment \"%s\" not found.", id);
            return 1;
        }
        if (rc != 0)
            return rc;
        if (strcmp(env->company_id, cmd->company_id) != 0) {
            /* Cross-company access is "not found" (domain.md 1). */
            st->res.environment_id = id;
            fail(st, ER_OUTCOME_ERROR, ER_EC_ENVIRONMENT_NOT_FOUND,
                 "Environment \"%s\" does not belong to this company.", id);
            return 1;
        }
    }
    if (strcmp(env->status, "active") != 0) {
        set_env(st, env);
        fail(st, ER_OUTCOME_ERROR, ER_EC_ENVIRONMENT_INACTIVE,
             "Environment \"%s\" is not active (status: %s).", env->name,
             env->status);
        return 1;
    }
    return 0;
}

/* The single-flight guard of domain.md 3.3.1, before the driver runs so a
 * conflicting acquire has no side effect. Returns 0 to go on, 1 when the
 * result is decided (conflict), and sets *reentrant to the run's own lease
 * when it already holds one. */
static int single_flight(struct step *st, const struct er_env_row *env,
                         struct er_lease_row *reentrant, bool *is_reentrant,
                         struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    const struct er_run_command *cmd = st->cmd;
    struct er_lease_row cur;
    struct er_lease_row upd;
    bool is_live = true;
    int rc;

    *is_reentrant = false;
    rc = er_store_lease_active_for_workspace(
        lc->store, env->id, cmd->execution_workspace_id, &lc->arena, &cur, err);
    if (rc == ER_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    if (cur.heartbeat_run_id != NULL && cmd->heartbeat_run_id != NULL &&
        strcmp(cur.heartbeat_run_id, cmd->heartbeat_run_id) == 0) {
        rc =
            er_store_lease_touch(lc->store, cur.id, &lc->arena, reentrant, err);
        if (rc != 0)
            return rc;
        *is_reentrant = true;
        return 0;
    }
    if (cur.heartbeat_run_id != NULL &&
        (cur.expires_at_ms < 0 || cur.expires_at_ms > er_time_now_ms())) {
        rc = er_store_run_is_live(lc->store, cur.heartbeat_run_id, &is_live,
                                  err);
        if (rc != 0)
            return rc;
        if (is_live) {
            set_env(st, env);
            fail(st, ER_OUTCOME_DEFERRED, ER_EC_LEASE_CONFLICT,
                 "Execution workspace for environment \"%s\" is already "
                 "leased by another active run; deferring.",
                 env->name);
            return 1;
        }
    }
    /* Stale: supersede it, keeping a failure reason it already has. */
    rc = er_store_lease_set_status(
        lc->store, cur.id, "expired",
        cur.failure_reason != NULL ? cur.failure_reason : SUPERSEDED, NULL,
        &lc->arena, &upd, err);
    if (rc != 0)
        return rc;
    ER_LOG_INFO("lifecycle", "lease %s expired: %s", upd.id, SUPERSEDED);
    return lease_event(lc, &upd, err);
}

/* Insert the lease (3.3.1). A unique violation of the single-flight index
 * means another writer (the control plane shares the database and does not
 * take our advisory lock) won the race: a conflict, deferred (3.3.1 step
 * 4). Returns 1 when the result says so. */
static int insert_lease(struct step *st, const struct er_env_row *env,
                        const struct er_lease_row *in, struct er_lease_row *out,
                        struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    struct er_err ierr;
    int rc;

    rc = er_store_savepoint(lc->store, err);
    if (rc != 0)
        return rc;
    er_err_clear(&ierr);
    rc = er_store_lease_insert(lc->store, in, &lc->arena, out, &ierr);
    if (rc == ER_ECONFLICT) {
        rc = er_store_savepoint_rollback(lc->store, err);
        if (rc != 0)
            return rc;
        fail(st, ER_OUTCOME_DEFERRED, ER_EC_LEASE_CONFLICT,
             "Execution workspace for environment \"%s\" is already leased "
             "by another active run; deferring.",
             env->name);
        return 1;
    }
    if (rc != 0) {
        *err = ierr;
        return rc;
    }
    return er_store_savepoint_release(lc->store, err);
}

/* The lease a remote acquire made cannot be recorded: another run holds
 * the workspace now (the result says deferred). The journal keeps what the
 * driver acquired (state rolling_back) in the outcome transaction; after it
 * commits, finish_undos releases it through the driver and closes the
 * entry. A crash in between leaves the entry for the reaper's sweep. */
static int undo_acquire(struct step *st, const struct er_driver_env *denv,
                        const char *lease_id,
                        const struct er_driver_acquired *acq,
                        struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    struct undo *u = &lc->undo;
    json_t *detail;

    detail = json_pack("{s:s, s:O}", "driver", denv->driver, "metadata",
                       acq->metadata);
    u->detail_json = detail != NULL ? jdump(&lc->arena, detail) : NULL;
    json_decref(detail);
    u->command_id = st->cmd->command_id;
    u->lease_id = er_arena_strdup(&lc->arena, lease_id);
    u->environment_id = denv->id;
    if (u->detail_json == NULL || u->lease_id == NULL)
        return oom(err);
    return er_store_journal_close(lc->store, u->command_id, "acquire",
                                  u->lease_id, "rolling_back", u->detail_json,
                                  err);
}

static int do_acquire(struct step *st, struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    const struct er_run_command *cmd = st->cmd;
    struct er_env_row env;
    struct er_driver_env denv;
    struct er_driver_lease_ctx ctx;
    struct er_driver_acquired acq;
    struct er_lease_row in;
    struct er_lease_row lease;
    const struct er_driver_ops *ops;
    struct er_err derr;
    json_t *config = NULL;
    json_t *details = NULL;
    json_t *transport = NULL;
    struct actor who;
    char lease_id[37];
    bool is_reentrant = false;
    int drc;
    int rc;

    memset(&acq, 0, sizeof(acq));
    rc = resolve_env(st, &env, err);
    if (rc != 0)
        return rc > 0 ? 0 : rc;
    set_env(st, &env);

    ops = er_driver_find(env.driver);
    if (ops == NULL) {
        fail(st, ER_OUTCOME_ERROR, ER_EC_LEASE_ACQUIRE_FAILED,
             "Failed to acquire lease for environment \"%s\" (%s): "
             "Environment driver \"%s\" is not registered in the environment "
             "runtime yet.",
             env.name, env.driver, env.driver);
        return 0;
    }
    config = json_loads(env.config_json, 0, NULL);
    if (!json_is_object(config)) {
        fail(st, ER_OUTCOME_ERROR, ER_EC_LEASE_ACQUIRE_FAILED,
             "Failed to acquire lease for environment \"%s\" (%s): "
             "environment config is not a JSON object.",
             env.name, env.driver);
        rc = 0;
        goto out;
    }
    denv = driver_env(&env, config);

    if (cmd->execution_workspace_id != NULL) {
        rc = single_flight(st, &env, &lease, &is_reentrant, err);
        if (rc != 0) {
            rc = rc > 0 ? 0 : rc;
            goto out;
        }
    }

    if (!is_reentrant) {
        rc = er_store_lease_id_for(lc->store, cmd->command_id, lease_id, err);
        if (rc != 0)
            goto out;
        ctx = (struct er_driver_lease_ctx){ lease_id,
                                            cmd->company_id,
                                            cmd->agent_id,
                                            cmd->heartbeat_run_id,
                                            cmd->issue_id,
                                            cmd->execution_workspace_id,
                                            cmd->execution_workspace_mode };
        if (ops->is_remote) {
            rc = journal(st, "acquire", lease_id, env.id, err);
            if (rc == 0)
                rc = intent_commit(st, err);
            if (rc != 0)
                goto out;
        }
        er_err_clear(&derr);
        er_fault_point("driver.before");
        drc = ops->acquire(&denv, &ctx, &acq, &derr);
        er_fault_point("driver.after");
        if (ops->is_remote) {
            rc = outcome_begin(st, err);
            if (rc != 0)
                goto out;
        }
        if (drc != 0) {
            fail(st, ER_OUTCOME_ERROR, ER_EC_LEASE_ACQUIRE_FAILED,
                 "Failed to acquire lease for environment \"%s\" (%s): %s",
                 env.name, env.driver, derr.msg);
            goto out;
        }
        if (ops->is_remote && cmd->execution_workspace_id != NULL) {
            /* The workspace lock ended with phase 1: check again. */
            rc = single_flight(st, &env, &lease, &is_reentrant, err);
            if (rc > 0 || (rc == 0 && is_reentrant))
                rc = undo_acquire(st, &denv, lease_id, &acq, err);
            if (rc != 0 || st->res.outcome != ER_OUTCOME_OK)
                goto out;
            if (is_reentrant)
                goto done; /* the run's own lease, found meanwhile */
        }
        memset(&in, 0, sizeof(in));
        in.id = lease_id;
        in.company_id = cmd->company_id;
        in.environment_id = env.id;
        in.execution_workspace_id = cmd->execution_workspace_id;
        in.issue_id = cmd->issue_id;
        in.heartbeat_run_id = cmd->heartbeat_run_id;
        in.lease_policy = acq.lease_policy;
        in.provider = acq.provider;
        in.provider_lease_id = acq.provider_lease_id;
        in.expires_at_ms = acq.expires_at_ms;
        in.metadata_json = jdump(&lc->arena, acq.metadata);
        if (in.metadata_json == NULL) {
            rc = oom(err);
            goto out;
        }
        rc = insert_lease(st, &env, &in, &lease, err);
        if (rc > 0 && ops->is_remote)
            rc = undo_acquire(st, &denv, lease_id, &acq, err);
        if (rc != 0) {
            rc = rc > 0 ? 0 : rc;
            goto out;
        }
        rc = lease_event(lc, &lease, err);
        if (rc != 0)
            goto out;
        details = json_pack(
            "{s:s, s:s, s:s, s:o, s:o, s:o}", "environmentId", env.id, "driver",
            env.driver, "leasePolicy", lease.lease_policy, "provider",
            jstr(lease.provider), "executionWorkspaceId",
            jstr(cmd->execution_workspace_id), "issueId", jstr(cmd->issue_id));
        if (details == NULL) {
            rc = oom(err);
            goto out;
        }
        who = step_actor(st);
        rc = activity(lc, &who, "environment.lease_acquired", &lease, details,
                      err);
        if (rc != 0)
            goto out;
    }

done:
    st->res.lease_id = lease.id;
    /* executionTransport: the SSH spec or null (domain.md 3.2 step 4). */
    er_err_clear(&derr);
    transport = ops->target != NULL
                    ? ops->target(&denv, NULL, cmd->adapter_type, &derr)
                    : json_null();
    if (transport == NULL) {
        fail(st, ER_OUTCOME_ERROR, ER_EC_TRANSPORT_RESOLUTION_FAILED,
             "Failed to resolve execution transport for \"%s\": %s", env.name,
             derr.msg);
        rc = 0;
        goto out;
    }
    st->result = json_pack(
        "{s:o, s:o, s:{s:o, s:o}, s:O}", "environment", env_to_json(&env),
        "lease", lease_to_json(&lease), "leaseContext", "executionWorkspaceId",
        jstr(cmd->execution_workspace_id), "executionWorkspaceMode",
        jstr(cmd->execution_workspace_mode), "executionTransport", transport);
    if (st->result == NULL)
        rc = oom(err);
out:
    json_decref(transport);
    json_decref(details);
    json_decref(config);
    er_driver_acquired_fini(&acq);
    return rc;
}

/* ================================================================
 * realize (domain.md 3.4)
 * ================================================================ */

/* The lease a realize works on: leaseId, else the run's newest active
 * lease. Returns 1 when the result already says why there is none. */
static int realize_lease(struct step *st, struct er_lease_row *lease,
                         struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    const struct er_run_command *cmd = st->cmd;
    struct er_lease_row *rows = NULL;
    size_t cnt = 0;
    int rc;

    if (cmd->lease_id != NULL) {
        rc = er_store_lease_get(lc->store, cmd->lease_id, &lc->arena, lease,
                                err);
        if (rc == 0 && strcmp(lease->company_id, cmd->company_id) != 0)
            rc = ER_ENOTFOUND;
        if (rc == ER_ENOTFOUND) {
            st->res.lease_id = cmd->lease_id;
            fail(st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
                 "Failed to realize workspace: lease \"%s\" not found.",
                 cmd->lease_id);
            return 1;
        }
        return rc;
    }
    rc = er_store_lease_active_for_run(lc->store, cmd->heartbeat_run_id,
                                       &lc->arena, &rows, &cnt, err);
    if (rc != 0)
        return rc;
    if (cnt == 0) {
        fail(st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
             "Failed to realize workspace: heartbeat run \"%s\" has no "
             "active lease.",
             cmd->heartbeat_run_id);
        return 1;
    }
    *lease = rows[cnt - 1];
    return 0;
}

/* The workspaceRealizationRequest of domain.md 2.6. */
static json_t *realization_request(const struct step *st,
                                   const struct er_env_row *env,
                                   const json_t *ws, const json_t *overlay)
{
    const struct er_run_command *cmd = st->cmd;
    const char *keys[] = { "provisionCommand", "teardownCommand",
                           "cleanupCommand", "workspaceRuntime" };
    json_t *rto = json_object();
    json_t *req;
    size_t i;

    for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        json_t *v = json_object_get(overlay, keys[i]);

        json_object_set_new(rto, keys[i],
                            v != NULL ? json_deep_copy(v) : json_null());
    }
    req = json_pack(
        "{s:i, s:s, s:s, s:s, s:o, s:o, s:o, s:o,"
        " s:{s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?},"
        " s:o}",
        "version", 1, "adapterType", cmd->adapter_type, "companyId",
        cmd->company_id, "environmentId", env->id, "executionWorkspaceId",
        jstr(cmd->execution_workspace_id), "issueId", jstr(cmd->issue_id),
        "heartbeatRunId", jstr(cmd->heartbeat_run_id), "requestedMode",
        jstr(cmd->requested_mode), "source", "kind",
        json_object_get(ws, "source"), "localPath", json_object_get(ws, "cwd"),
        "projectId", json_object_get(ws, "projectId"), "projectWorkspaceId",
        json_object_get(ws, "projectWorkspaceId"), "repoUrl",
        json_object_get(ws, "repoUrl"), "repoRef",
        json_object_get(ws, "repoRef"), "strategy",
        json_object_get(ws, "strategy"), "branchName",
        json_object_get(ws, "branchName"), "worktreePath",
        json_object_get(ws, "worktreePath"), "runtimeOverlay", rto);
    return req;
}

static const char *jget_str(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    size_t i;

    if (s == NULL)
        return NULL;
    for (i = 0; s[i] != '\0'; i++) {
        if (!isspace((unsigned char)s[i]))
            return s; /* non-blank */
    }
    return NULL;
}

/* The first non-blank line of text (length via *len), or NULL. */
static const char *first_line(const char *text, int *len)
{
    const char *p = text;

    while (p != NULL && *p != '\0') {
        const char *end = strchr(p, '\n');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        size_t i;

        for (i = 0; i < n; i++) {
            if (!isspace((unsigned char)p[i])) {
                while (n > 0 && isspace((unsigned char)p[n - 1]))
                    n--;
                *len = (int)(n > 512 ? 512 : n);
                return p;
            }
        }
        p = end != NULL ? end + 1 : NULL;
    }
    return NULL;
}

/* Run the provision command (domain.md 3.4 step 3) through the driver:
 * `bash -lc <cmd>` with env exactly {SHELL=/bin/bash}, 300 s, in cwd.
 * Success leaves detail empty; a failure puts the spec's detail in it
 * (`exit code <n|null>[ (signal S)][: first non-blank line]`, `provision
 * command timed out`, or the driver's error). */
static void run_provision(const struct er_driver_ops *ops,
                          const struct er_driver_env *denv,
                          const struct er_driver_lease *dlease,
                          const char *cmd_text, const char *cwd, char *detail,
                          size_t detail_len)
{
    const char *args[] = { "-lc", cmd_text, NULL };
    const char *envv[] = { "SHELL=/bin/bash", NULL };
    struct er_driver_exec req;
    struct er_driver_exec_result res;
    struct er_err derr;
    const char *line;
    int line_len = 0;
    int rc;

    detail[0] = '\0';
    memset(&req, 0, sizeof(req));
    memset(&res, 0, sizeof(res));
    req.command = "bash";
    req.args = args;
    req.cwd = cwd;
    req.env = envv;
    req.timeout_ms = PROVISION_TIMEOUT_MS;
    er_err_clear(&derr);
    er_fault_point("driver.before");
    rc = ops->execute(denv, dlease, &req, &res, &derr);
    er_fault_point("driver.after");
    if (rc != 0) {
        snprintf(detail, detail_len, "%s", derr.msg);
    } else if (res.is_timed_out) {
        snprintf(detail, detail_len, "provision command timed out");
    } else if (res.exit_code != 0) {
        char code[16];

        if (res.exit_code < 0)
            snprintf(code, sizeof(code), "null");
        else
            snprintf(code, sizeof(code), "%d", res.exit_code);
        line = first_line(res.err_text, &line_len);
        if (line == NULL)
            line = first_line(res.out, &line_len);
        snprintf(detail, detail_len, "exit code %s%s%s%s%s%.*s", code,
                 res.signal[0] != '\0' ? " (signal " : "", res.signal,
                 res.signal[0] != '\0' ? ")" : "", line != NULL ? ": " : "",
                 line != NULL ? line_len : 0, line != NULL ? line : "");
    }
    er_driver_exec_result_fini(&res);
}

/* Step 3 of domain.md 3.4, for every driver but local, in the realized cwd
 * (else the lease's remoteCwd, else the host cwd). For a remote driver the
 * journal records the provision operation and its outcome, so a step
 * resumed after a crash does not run the command a second time: it takes
 * the recorded outcome. Returns 1 when the result already says it failed.
 */
static int provision(struct step *st, const struct er_driver_ops *ops,
                     const struct er_driver_env *denv,
                     const struct er_driver_lease *dlease,
                     const struct er_env_row *env, const char *driver,
                     const json_t *overlay, const char *realized_cwd,
                     const char *remote_cwd, const char *host_cwd,
                     struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    const char *cmd_text = jget_str(overlay, "provisionCommand");
    char detail[800];
    char *state = NULL;
    char *recorded = NULL;
    json_t *rec = NULL;
    int rc;

    if (cmd_text == NULL || strcmp(driver, "local") == 0)
        return 0;
    if (ops->execute == NULL) {
        fail(st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
             "Failed to provision workspace for environment \"%s\" (%s): "
             "Environment driver \"%s\" does not support command execution.",
             env->name, driver, driver);
        return 1;
    }
    rc = er_store_journal_get(lc->store, st->cmd->command_id, "provision",
                              dlease->id, &lc->arena, &state, &recorded, err);
    if (rc != 0 && rc != ER_ENOTFOUND)
        return rc;
    if (rc == 0 && strcmp(state, "done") == 0) {
        /* Ran to the end in an earlier attempt: its outcome stands. */
        rec = jparse(recorded);
        snprintf(detail, sizeof(detail), "%s",
                 jget_str(rec, "failure") != NULL ? jget_str(rec, "failure")
                                                  : "");
        json_decref(rec);
        rec = NULL;
        er_log_kv(ER_LOG_INFO, "lifecycle",
                  "provision command ran before: its outcome is reused",
                  "commandId", st->cmd->command_id, "leaseId", dlease->id,
                  (const char *)NULL);
    } else {
        rc = journal(st, "provision", dlease->id, env->id, err);
        if (rc != 0)
            return rc;
        run_provision(ops, denv, dlease, cmd_text,
                      realized_cwd != NULL ? realized_cwd
                      : remote_cwd != NULL ? remote_cwd
                                           : host_cwd,
                      detail, sizeof(detail));
        if (er_proc_is_cancelled())
            return er_err_set(err, ER_ECANCELED, ER_ERRCLASS_SKIP,
                              "provision cancelled");
        rec = detail[0] != '\0' ? json_pack("{s:s}", "failure", detail)
                                : json_object();
        recorded = rec != NULL ? jdump(&lc->arena, rec) : NULL;
        json_decref(rec);
        if (recorded == NULL)
            return oom(err);
        rc = er_store_journal_close(lc->store, st->cmd->command_id, "provision",
                                    dlease->id, "done", recorded, err);
        if (rc != 0)
            return rc;
    }
    if (detail[0] == '\0')
        return 0;
    fail(st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
         "Failed to provision workspace for environment \"%s\" (%s): %s",
         env->name, driver, detail);
    return 1;
}

static int do_realize(struct step *st, struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    const struct er_run_command *cmd = st->cmd;
    struct er_lease_row lease;
    struct er_lease_row upd;
    struct er_env_row env;
    const struct er_driver_ops *ops;
    struct er_driver_env denv;
    struct er_driver_lease dlease;
    struct er_driver_workspace dws;
    struct er_driver_realized real;
    struct er_err derr;
    const char *driver;
    json_t *ws = NULL;
    json_t *overlay = NULL;
    json_t *meta = NULL;
    json_t *config = NULL;
    json_t *request = NULL;
    json_t *patch = NULL;
    json_t *target = NULL;
    char *text;
    bool is_found = false;
    int drc;
    int prc = 0;
    int rc;

    memset(&real, 0, sizeof(real));
    rc = realize_lease(st, &lease, err);
    if (rc != 0)
        return rc > 0 ? 0 : rc;
    st->res.lease_id = lease.id;
    rc = er_store_env_get(lc->store, lease.environment_id, &lc->arena, &env,
                          err);
    if (rc != 0)
        return rc; /* the foreign key guarantees it exists */
    set_env(st, &env);

    meta = jparse(lease.metadata_json);
    if (!json_is_object(meta)) {
        json_decref(meta);
        meta = json_object();
    }
    driver = jget_str(meta, "driver") != NULL ? jget_str(meta, "driver")
                                              : env.driver;
    if (strcmp(lease.status, "active") != 0) {
        fail(st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
             "Failed to realize workspace for environment \"%s\" (%s): "
             "lease \"%s\" is not active (status: %s).",
             env.name, driver, lease.id, lease.status);
        goto out;
    }
    ops = er_driver_find(driver);
    if (ops == NULL || ops->realize == NULL) {
        fail(st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
             "Failed to realize workspace for environment \"%s\" (%s): "
             "Environment driver \"%s\" does not support workspace "
             "realization.",
             env.name, driver, driver);
        goto out;
    }

    /* Both are validated as JSON objects (or null) before the step. */
    ws = json_loads(cmd->workspace_json, 0, NULL);
    overlay = cmd->runtime_overlay_json != NULL
                  ? json_loads(cmd->runtime_overlay_json, 0, NULL)
                  : json_object();
    config = json_loads(env.config_json, 0, NULL);
    request = realization_request(st, &env, ws, overlay);
    if (ws == NULL || overlay == NULL || request == NULL || config == NULL) {
        rc = oom(err);
        goto out;
    }

    denv = driver_env(&env, config);
    dlease = driver_lease(&lease, meta);
    dws = (struct er_driver_workspace){ jget_str(ws, "cwd"),
                                        jget_str(meta, "remoteCwd"),
                                        cmd->requested_mode, request };
    if (ops->is_remote) {
        rc = journal(st, "realize", lease.id, env.id, err);
        if (rc == 0)
            rc = intent_commit(st, err);
        if (rc != 0)
            goto out;
    }
    er_err_clear(&derr);
    er_fault_point("driver.before");
    drc = ops->realize(&denv, &dlease, &dws, &real, &derr);
    er_fault_point("driver.after");
    /* Step 3: the provision command (never for local). */
    if (drc == 0)
        prc =
            provision(st, ops, &denv, &dlease, &env, driver, overlay, real.cwd,
                      jget_str(meta, "remoteCwd"), jget_str(ws, "cwd"), err);
    if (prc < 0) {
        rc = prc;
        goto out;
    }
    if (ops->is_remote) {
        rc = outcome_begin(st, err);
        if (rc != 0)
            goto out;
    }
    if (drc != 0) {
        fail(st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
             "Failed to realize workspace for environment \"%s\" (%s): %s",
             env.name, driver, derr.msg);
        goto out;
    }
    if (prc > 0)
        goto out;
    if (ops->is_remote) {
        /* The lease may have changed while no lock was held. */
        rc = er_store_lease_get(lc->store, lease.id, &lc->arena, &lease, err);
        if (rc != 0)
            goto out;
        if (strcmp(lease.status, "active") != 0) {
            fail(st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
                 "Failed to realize workspace for environment \"%s\" (%s): "
                 "lease \"%s\" is not active (status: %s).",
                 env.name, driver, lease.id, lease.status);
            goto out;
        }
    }

    /* Step 4: persist the record on the lease and the workspace. */
    json_object_set(meta, "workspaceRealization", real.record);
    text = jdump(&lc->arena, meta);
    if (text == NULL) {
        rc = oom(err);
        goto out;
    }
    rc = er_store_lease_set_metadata(lc->store, lease.id, text, &lc->arena,
                                     &upd, err);
    if (rc != 0)
        goto out;
    rc = lease_event(lc, &upd, err);
    if (rc != 0)
        goto out;
    if (cmd->execution_workspace_id != NULL) {
        patch = json_pack("{s:O, s:O}", "workspaceRealizationRequest", request,
                          "workspaceRealization", real.record);
        text = patch != NULL ? jdump(&lc->arena, patch) : NULL;
        if (text == NULL) {
            rc = oom(err);
            goto out;
        }
        rc = er_store_workspace_merge_metadata(
            lc->store, cmd->execution_workspace_id, cmd->company_id, text,
            &is_found, err);
        if (rc != 0)
            goto out;
    }

    /* Step 5: the execution target (domain.md 3.6). A driver without one
     * gives null, which is not an error. */
    json_decref(meta);
    meta = jparse(upd.metadata_json);
    dlease.metadata = meta;
    er_err_clear(&derr);
    target = ops->target != NULL
                 ? ops->target(&denv, &dlease, cmd->adapter_type, &derr)
                 : json_null();
    if (target == NULL) {
        fail(st, ER_OUTCOME_ERROR, ER_EC_TRANSPORT_RESOLUTION_FAILED,
             "Failed to resolve execution target for \"%s\": %s", env.name,
             derr.msg);
        rc = 0;
        goto out;
    }
    st->result = json_pack("{s:o, s:O, s:o, s:n}", "lease", lease_to_json(&upd),
                           "workspaceRealization", real.record,
                           "executionTarget", target, "bridge");
    target = NULL; /* json_pack "o" took it, even on failure */
    if (st->result == NULL)
        rc = oom(err);
out:
    json_decref(target);
    json_decref(patch);
    json_decref(request);
    json_decref(config);
    json_decref(overlay);
    json_decref(ws);
    json_decref(meta);
    er_driver_realized_fini(&real);
    return rc;
}

/* ================================================================
 * release (domain.md 3.3.2, 3.5)
 * ================================================================ */

/* Details of environment.lease_released (domain.md 3.8); failureReason is
 * the caller's, else the row's (3.5 step 4). */
static json_t *released_details(const struct er_env_row *env,
                                const struct er_lease_row *upd,
                                const char *failure_reason)
{
    return json_pack(
        "{s:s, s:s, s:s, s:o, s:o, s:o, s:s, s:o, s:o}", "environmentId",
        env->id, "driver", env->driver, "leasePolicy", upd->lease_policy,
        "provider", jstr(upd->provider), "executionWorkspaceId",
        jstr(upd->execution_workspace_id), "issueId", jstr(upd->issue_id),
        "status", upd->status, "cleanupStatus", jstr(upd->cleanup_status),
        "failureReason",
        jstr(failure_reason != NULL ? failure_reason : upd->failure_reason));
}

/* One lease on its way out (3.3.2 step 2): its environment, the driver
 * that releases it (the lease's metadata.driver, else the environment's)
 * and what the driver decided. Arena strings. */
struct release_item {
    struct er_lease_row lease;
    struct er_env_row env;
    bool has_env; /* false: the environment is gone, skip silently */
    const struct er_driver_ops *ops; /* NULL: a plain status update */
    struct er_driver_released rel;
    char *lease_err; /* the driver's failure, or NULL */
};

/* Phase 1 of a release: load the environment and pick the driver. */
static int release_prepare(struct er_lifecycle *lc,
                           const struct er_lease_row *lease, const char *status,
                           struct release_item *it, struct er_err *err)
{
    json_t *meta;
    const char *driver;
    int rc;

    memset(it, 0, sizeof(*it));
    it->lease = *lease;
    it->rel.status = status;
    rc = er_store_env_get(lc->store, lease->environment_id, &lc->arena,
                          &it->env, err);
    if (rc == ER_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    it->has_env = true;
    meta = jparse(lease->metadata_json);
    driver = jget_str(meta, "driver") != NULL ? jget_str(meta, "driver")
                                              : it->env.driver;
    it->ops = er_driver_find(driver);
    if (it->ops != NULL && it->ops->release == NULL)
        it->ops = NULL;
    json_decref(meta);
    return 0;
}

/* Phase 2: the driver's release (teardown, cleanup, removal), outside any
 * transaction when the driver is remote. A driver failure is not an
 * error: it->lease_err gets its message. */
static int release_effect(struct er_lifecycle *lc, struct release_item *it,
                          struct er_err *err)
{
    struct er_driver_env denv;
    struct er_driver_lease dlease;
    struct er_err derr;
    json_t *meta = NULL;
    json_t *config = NULL;
    int rc;

    if (!it->has_env || it->ops == NULL)
        return 0;
    config = json_loads(it->env.config_json, 0, NULL);
    if (config == NULL)
        config = json_object();
    meta = jparse(it->lease.metadata_json);
    if (!json_is_object(meta)) {
        json_decref(meta);
        meta = json_object();
    }
    denv = driver_env(&it->env, config);
    dlease = driver_lease(&it->lease, meta);
    er_err_clear(&derr);
    er_fault_point("driver.before");
    rc = it->ops->release(&denv, &dlease, it->rel.status, &it->rel, &derr);
    er_fault_point("driver.after");
    if (rc != 0) {
        it->lease_err = er_arena_strdup(&lc->arena, derr.msg);
        rc = it->lease_err == NULL ? oom(err) : 0;
    }
    json_decref(config);
    json_decref(meta);
    return rc;
}

/* Phase 3: move the row to its final status with its LeaseEvent and the
 * environment.lease_released activity (3.8). row_reason is written to
 * failure_reason when the driver gives none (the reaper's lease_expired);
 * detail_reason is the activity's failureReason (the caller's, 3.5 step
 * 4). The row is locked again first: when it is no longer active (released
 * by another path while no lock was held) *is_released stays false. */
static int release_record(struct er_lifecycle *lc, struct release_item *it,
                          const char *row_reason, const char *detail_reason,
                          const struct actor *who, struct er_lease_row *upd,
                          bool *is_released, struct er_err *err)
{
    struct er_lease_row cur;
    json_t *details = NULL;
    int rc;

    *is_released = false;
    if (!it->has_env)
        return 0; /* environment gone: skip silently (3.3.2 step 2) */
    rc = er_store_lease_get(lc->store, it->lease.id, &lc->arena, &cur, err);
    if (rc == ER_ENOTFOUND || (rc == 0 && strcmp(cur.status, "active") != 0))
        return 0;
    if (rc != 0)
        return rc;
    rc = er_store_lease_set_status(
        lc->store, it->lease.id, it->rel.status,
        it->rel.failure_reason != NULL ? it->rel.failure_reason : row_reason,
        it->rel.cleanup_status, &lc->arena, upd, err);
    if (rc != 0)
        return rc;
    rc = lease_event(lc, upd, err);
    if (rc != 0)
        return rc;
    details = released_details(&it->env, upd, detail_reason);
    if (details == NULL)
        return oom(err);
    rc = activity(lc, who, "environment.lease_released", upd, details, err);
    json_decref(details);
    if (rc == 0)
        *is_released = true;
    return rc;
}

static int do_release(struct step *st, struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    const struct er_run_command *cmd = st->cmd;
    const char *status = er_codec_release_status_name(cmd->release_status);
    struct er_lease_row *rows = NULL;
    struct release_item *items = NULL;
    size_t cnt = 0;
    size_t i;
    size_t err_cnt = 0;
    bool is_remote = false;
    json_t *released = json_array();
    json_t *errors = json_array();
    struct actor who = step_actor(st);
    int rc;

    if (released == NULL || errors == NULL) {
        rc = oom(err);
        goto out;
    }
    rc = er_store_lease_active_for_run(lc->store, cmd->heartbeat_run_id,
                                       &lc->arena, &rows, &cnt, err);
    if (rc != 0)
        goto out;
    items = cnt > 0 ? er_arena_alloc(&lc->arena, sizeof(*items) * cnt) : NULL;
    if (cnt > 0 && items == NULL) {
        rc = oom(err);
        goto out;
    }
    for (i = 0; i < cnt; i++) {
        rc = release_prepare(lc, &rows[i], status, &items[i], err);
        if (rc != 0)
            goto out;
        if (items[i].ops != NULL && items[i].ops->is_remote) {
            is_remote = true;
            rc = journal(st, "release", rows[i].id, items[i].env.id, err);
            if (rc != 0)
                goto out;
        }
    }
    if (is_remote) {
        rc = intent_commit(st, err);
        if (rc != 0)
            goto out;
    }
    /* Each lease on its own (3.3.2 step 3). */
    for (i = 0; i < cnt; i++) {
        rc = release_effect(lc, &items[i], err);
        if (rc != 0)
            goto out;
    }
    if (is_remote) {
        rc = outcome_begin(st, err);
        if (rc != 0)
            goto out;
    }
    for (i = 0; i < cnt; i++) {
        struct release_item *it = &items[i];
        struct er_lease_row upd;
        bool is_released = false;

        if (it->lease_err == NULL) {
            /* A savepoint per lease: one lease's refused SQL is recorded
             * as its error and the others go on. */
            rc = er_store_savepoint(lc->store, err);
            if (rc != 0)
                goto out;
            rc = release_record(lc, it, NULL, cmd->failure_reason, &who, &upd,
                                &is_released, err);
            if (rc != 0 && err->cls == ER_ERRCLASS_SKIP &&
                err->code != ER_EFENCED) {
                it->lease_err = er_arena_strdup(&lc->arena, err->msg);
                er_err_clear(err);
                rc = it->lease_err == NULL ? oom(err) : 0;
                if (rc == 0)
                    rc = er_store_savepoint_rollback(lc->store, err);
            } else if (rc == 0) {
                rc = er_store_savepoint_release(lc->store, err);
            }
            if (rc != 0)
                goto out;
        }
        if (it->lease_err != NULL) {
            ER_LOG_WARN("lifecycle", "lease %s not released: %s", it->lease.id,
                        it->lease_err);
            json_array_append_new(errors, json_pack("{s:s, s:s}", "leaseId",
                                                    it->lease.id, "message",
                                                    it->lease_err));
            err_cnt++;
            continue;
        }
        if (is_released) {
            json_array_append_new(released, json_string(it->lease.id));
            if (st->res.lease_id == NULL) {
                /* The result names the first released lease. */
                st->res.lease_id = it->lease.id;
                st->res.environment_id = it->env.id;
                st->res.driver = it->env.driver;
            }
        }
    }
    if (err_cnt > 0)
        fail(st, ER_OUTCOME_ERROR, ER_EC_LEASE_RELEASE_FAILED,
             "Failed to release %zu of %zu environment leases for heartbeat "
             "run \"%s\".",
             err_cnt, cnt, cmd->heartbeat_run_id);
    st->result =
        json_pack("{s:O, s:O}", "released", released, "errors", errors);
    if (st->result == NULL)
        rc = oom(err);
out:
    json_decref(released);
    json_decref(errors);
    return rc;
}

/* Release what an acquire made but could not record (undo_acquire) once
 * the step's outcome committed, then close its journal entry as
 * rolled_back. A failure is logged and leaves the entry rolling_back for
 * the next attempt. */
static void undo_finish(struct er_lifecycle *lc, const struct undo *u)
{
    struct er_lease_row row;
    struct release_item it;
    struct er_err e;
    json_t *detail = jparse(u->detail_json);
    const json_t *meta = json_object_get(detail, "metadata");
    const char *driver = jget_str(detail, "driver");
    char *meta_json = NULL;
    int rc;

    er_err_clear(&e);
    memset(&row, 0, sizeof(row));
    row.id = u->lease_id;
    row.environment_id = u->environment_id;
    row.status = "active";
    row.lease_policy = "ephemeral";
    meta_json = meta != NULL ? jdump(&lc->arena, meta) : NULL;
    row.metadata_json = meta_json;
    rc = release_prepare(lc, &row, "expired", &it, &e);
    if (rc == 0 && driver != NULL)
        it.ops = er_driver_find(driver);
    if (rc == 0)
        rc = release_effect(lc, &it, &e);
    if (rc == 0 && it.lease_err == NULL &&
        (it.rel.cleanup_status == NULL ||
         strcmp(it.rel.cleanup_status, "failed") != 0))
        rc = er_store_journal_close(lc->store, u->command_id, "acquire",
                                    u->lease_id, "rolled_back", NULL, &e);
    else if (rc == 0)
        rc = er_err_set(&e, ER_EDRIVER, ER_ERRCLASS_RETRY, "%s",
                        it.lease_err != NULL ? it.lease_err
                                             : "its cleanup failed");
    if (rc != 0)
        er_log_kv(ER_LOG_WARN, "lifecycle",
                  "an unrecorded acquisition was not released", "commandId",
                  u->command_id, "leaseId", u->lease_id, "reason", e.msg,
                  (const char *)NULL);
    json_decref(detail);
}

/* ================================================================
 * The step
 * ================================================================ */

/* Encode st's result, queue it and record it as the command's result. */
static int finish(struct step *st, struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    int rc;

    st->res.completed_at_ms = er_time_now_ms();
    if (st->result != NULL) {
        er_redact_json(st->result, false);
        st->res.result_json = jdump(&lc->arena, st->result);
        if (st->res.result_json == NULL)
            return oom(err);
    }
    er_buf_reset(&lc->enc);
    rc = er_codec_result_encode(&st->res, &lc->enc, err);
    if (rc != 0)
        return rc;
    rc = outbox(lc, lc->topic_results, st->key, st->key_len, NULL, err);
    if (rc != 0)
        return rc;
    rc = er_store_journal_close_command(
        lc->store, st->res.command_id,
        st->res.outcome == ER_OUTCOME_OK ? "done" : "failed", err);
    if (rc != 0)
        return rc;
    return er_store_processed_put(
        lc->store, st->res.command_id, er_codec_kind_name(st->res.kind),
        st->res.heartbeat_run_id, lc->enc.data, lc->enc.len, err);
}

/* Re-send the stored result of a command seen before. Returns 1 when there
 * was one, 0 when the command is new. */
static int replay(struct er_lifecycle *lc, const char *command_id,
                  const uint8_t *key, size_t key_len, struct er_err *err)
{
    uint8_t *stored = NULL;
    size_t stored_len = 0;
    int rc;

    rc = er_store_processed_get(lc->store, command_id, &lc->arena, &stored,
                                &stored_len, err);
    if (rc == ER_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    rc = er_store_outbox_add(lc->store, lc->topic_results, key, key_len, stored,
                             stored_len, NULL, err);
    if (rc != 0)
        return rc;
    er_metrics_replay();
    return 1;
}

/* DLQ code for the envrun.error.code header. */
static const char *dlq_code(int code)
{
    switch (code) {
    case ER_EBADMSG:
        return "undecodable";
    case ER_ESCHEMA:
        return "unknown_schema";
    case ER_E2BIG:
        return "too_large";
    default:
        return "invalid_command";
    }
}

/* A readable command id: printable ASCII, short. */
static bool id_is_readable(const char *s)
{
    size_t i;

    if (s == NULL || s[0] == '\0')
        return false;
    for (i = 0; s[i] != '\0'; i++) {
        if (i >= ER_CMD_ID_MAX || s[i] < 0x21 || s[i] > 0x7e)
            return false;
    }
    return true;
}

/* Dead-letter a message and answer invalid_command where its id can be
 * read; cmd is the decoded command when only validation failed. */
static int dead_letter(struct er_lifecycle *lc, const uint8_t *key,
                       size_t key_len, const uint8_t *value, size_t value_len,
                       const struct er_run_command *cmd,
                       const struct er_err *why,
                       const struct er_msg_coords *coords, struct er_err *err)
{
    char *peek_id = NULL;
    char *peek_company = NULL;
    const char *command_id = cmd != NULL ? cmd->command_id : NULL;
    const char *company_id = cmd != NULL ? cmd->company_id : NULL;
    json_t *headers = NULL;
    char *headers_json = NULL;
    struct step st;
    int rc;

    memset(&st, 0, sizeof(st));
    er_metrics_dlq();
    {
        char part[16];
        char off[24];

        snprintf(part, sizeof(part), "%d", (int)coords->partition);
        snprintf(off, sizeof(off), "%lld", (long long)coords->offset);
        er_log_kv(ER_LOG_WARN, "lifecycle", "dead-lettering command",
                  "partition", part, "offset", off, "reason", why->msg, "code",
                  dlq_code(why->code), (const char *)NULL);
    }
    headers = json_pack("{s:s, s:s}", "envrun.error", why->msg,
                        "envrun.error.code", dlq_code(why->code));
    headers_json = headers != NULL ? jdump(&lc->arena, headers) : NULL;
    json_decref(headers);
    if (headers_json == NULL)
        return oom(err);
    er_buf_reset(&lc->enc);
    rc = er_buf_append(&lc->enc, value, value_len);
    if (rc != 0)
        return er_err_set(err, rc, ER_ERRCLASS_RETRY, "dlq copy failed");
    rc = outbox(lc, lc->topic_dlq, key, key_len, headers_json, err);
    if (rc != 0)
        return rc;

    if (cmd == NULL && er_codec_command_peek_ids(value, value_len, &peek_id,
                                                 &peek_company) == 0) {
        command_id = peek_id;
        company_id = peek_company;
    }
    if (!id_is_readable(command_id))
        goto out; /* nobody to answer */
    if (key == NULL || key_len == 0) {
        key = (const uint8_t *)command_id;
        key_len = strlen(command_id);
    }
    rc = replay(lc, command_id, key, key_len, err);
    if (rc != 0) {
        rc = rc > 0 ? 0 : rc;
        goto out;
    }
    st.lc = lc;
    st.key = key;
    st.key_len = key_len;
    st.res.command_id = er_arena_strdup(&lc->arena, command_id);
    st.res.company_id = er_arena_strdup(
        &lc->arena, id_is_readable(company_id) &&
                            er_uuid_is_valid(company_id, strlen(company_id))
                        ? company_id
                        : "");
    /* CommandResult.kind has no "unknown" symbol: when the command could
     * not be decoded far enough to know its kind, acquire stands in. */
    st.res.kind = cmd != NULL ? cmd->kind : ER_CMD_ACQUIRE;
    st.res.heartbeat_run_id =
        cmd != NULL && cmd->heartbeat_run_id != NULL &&
                er_uuid_is_valid(cmd->heartbeat_run_id,
                                 strlen(cmd->heartbeat_run_id))
            ? cmd->heartbeat_run_id
            : NULL;
    st.res.outcome = ER_OUTCOME_ERROR;
    st.res.error_code = ER_EC_INVALID_COMMAND;
    st.res.error_message = why->msg;
    if (st.res.command_id == NULL || st.res.company_id == NULL) {
        rc = oom(err);
        goto out;
    }
    rc = finish(&st, err);
    er_metrics_command(er_codec_kind_name(st.res.kind), "error", 0);
out:
    er_free(peek_id);
    er_free(peek_company);
    return rc;
}

/* The error code a step of kind reports when the database refused it. */
static enum er_error_code refused_code(enum er_cmd_kind kind)
{
    switch (kind) {
    case ER_CMD_ACQUIRE:
        return ER_EC_LEASE_ACQUIRE_FAILED;
    case ER_CMD_REALIZE:
        return ER_EC_WORKSPACE_REALIZATION_FAILED;
    case ER_CMD_RELEASE:
        break;
    }
    return ER_EC_LEASE_RELEASE_FAILED;
}

/* Decode, validate, replay or run one command. With refused non-NULL the
 * first attempt's transaction was rolled back because the database refused
 * the command's data (a control-plane foreign key, say): this attempt
 * records only an error result saying so, so the command is answered and
 * the worker goes on. */
static int run_step(struct er_lifecycle *lc, const uint8_t *key, size_t key_len,
                    const uint8_t *value, size_t value_len,
                    const struct er_msg_coords *coords,
                    const struct er_err *refused, struct er_err *err)
{
    struct er_run_command cmd;
    struct er_err why;
    struct step st;
    int64_t t0 = er_time_mono_ms();
    int rc;

    memset(&cmd, 0, sizeof(cmd));
    memset(&st, 0, sizeof(st));
    er_err_clear(&why);
    if (er_codec_command_decode(value, value_len, &cmd, &why) != 0)
        return dead_letter(lc, key, key_len, value, value_len, NULL, &why,
                           coords, err);
    if (er_validate_command(&cmd, &why) != 0) {
        rc = dead_letter(lc, key, key_len, value, value_len, &cmd, &why, coords,
                         err);
        goto out;
    }
    if (key == NULL || key_len == 0) {
        key = (const uint8_t *)cmd.command_id;
        key_len = strlen(cmd.command_id);
    }
    rc = replay(lc, cmd.command_id, key, key_len, err);
    if (rc != 0) {
        if (rc > 0)
            er_log_kv(ER_LOG_INFO, "lifecycle",
                      "command seen before: stored result sent again",
                      "commandId", cmd.command_id, "runId",
                      cmd.heartbeat_run_id, (const char *)NULL);
        rc = rc > 0 ? 0 : rc;
        goto out;
    }

    st.lc = lc;
    st.coords = coords;
    st.cmd = &cmd;
    st.key = key;
    st.key_len = key_len;
    st.res.command_id = cmd.command_id;
    st.res.company_id = cmd.company_id;
    st.res.heartbeat_run_id = cmd.heartbeat_run_id;
    st.res.kind = cmd.kind;
    st.res.outcome = ER_OUTCOME_OK;
    st.res.error_code = ER_EC_NONE;
    if (refused != NULL) {
        fail(&st, ER_OUTCOME_ERROR, refused_code(cmd.kind),
             "The database refused the %s: %s", er_codec_kind_name(cmd.kind),
             refused->msg);
        rc = 0;
        goto finish;
    }
    switch (cmd.kind) {
    case ER_CMD_ACQUIRE:
        rc = do_acquire(&st, err);
        break;
    case ER_CMD_REALIZE:
        rc = do_realize(&st, err);
        break;
    case ER_CMD_RELEASE:
        rc = do_release(&st, err);
        break;
    }
    if (rc != 0)
        goto out;
finish:
    rc = finish(&st, err);
    if (rc != 0)
        goto out;
    er_metrics_command(er_codec_kind_name(cmd.kind),
                       er_codec_outcome_name(st.res.outcome),
                       er_time_mono_ms() - t0);
    er_log_kv(ER_LOG_INFO, "lifecycle", "command processed", "commandId",
              cmd.command_id, "kind", er_codec_kind_name(cmd.kind), "runId",
              cmd.heartbeat_run_id, "leaseId", st.res.lease_id, "outcome",
              er_codec_outcome_name(st.res.outcome), "errorCode",
              er_codec_error_code_name(st.res.error_code), (const char *)NULL);
out:
    json_decref(st.result);
    er_codec_command_fini(&cmd);
    return rc;
}

/* ================================================================ */

struct er_lifecycle *er_lifecycle_new(const struct er_config *cfg,
                                      struct er_err *err)
{
    struct er_lifecycle *lc = er_calloc(1, sizeof(*lc));

    if (lc == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }
    er_arena_init(&lc->arena, ARENA_MAX);
    er_buf_init(&lc->enc, ENCODE_MAX);
    er_config_topic(cfg, "commands", lc->topic_commands, TOPIC_MAX);
    er_config_topic(cfg, "results", lc->topic_results, TOPIC_MAX);
    er_config_topic(cfg, "lease-events", lc->topic_lease_events, TOPIC_MAX);
    er_config_topic(cfg, "activity", lc->topic_activity, TOPIC_MAX);
    er_config_topic(cfg, "commands.dlq", lc->topic_dlq, TOPIC_MAX);
    lc->store = er_store_new(cfg->database_url, err);
    if (lc->store == NULL) {
        er_lifecycle_destroy(lc);
        return NULL;
    }
    er_store_set_lease_ttl(lc->store, cfg->lease_ttl_s);
    return lc;
}

void er_lifecycle_destroy(struct er_lifecycle *lc)
{
    if (lc == NULL)
        return;
    er_store_destroy(lc->store);
    er_arena_fini(&lc->arena);
    er_buf_fini(&lc->enc);
    er_free(lc);
}

int er_lifecycle_step(struct er_lifecycle *lc, const uint8_t *key,
                      size_t key_len, const uint8_t *value, size_t value_len,
                      const struct er_msg_coords *coords, struct er_err *err)
{
    struct er_err refused;
    int attempt;
    int rc = 0;

    /* Attempt 0 runs the step; attempt 1 only happens when the database
     * refused the step's data (class SKIP) and records that as the
     * command's error result (see run_step). */
    for (attempt = 0; attempt < 2; attempt++) {
        er_arena_reset(&lc->arena);
        memset(&lc->undo, 0, sizeof(lc->undo));
        rc = er_store_begin(lc->store, err);
        if (rc == 0)
            rc = fence(lc, coords, err);
        if (rc == 0)
            rc = run_step(lc, key, key_len, value, value_len, coords,
                          attempt == 0 ? NULL : &refused, err);
        if (rc == 0) {
            er_fault_point("outcome.before_commit");
            rc = er_store_commit(lc->store, err);
        }
        if (rc == 0) {
            er_fault_point("outcome.after_commit");
            if (lc->undo.lease_id != NULL)
                undo_finish(lc, &lc->undo);
            break;
        }
        er_store_rollback(lc->store);
        if (attempt > 0 || err->cls != ER_ERRCLASS_SKIP ||
            err->code == ER_EFENCED || err->code == ER_ECANCELED)
            break;
        refused = *err;
        er_err_clear(err);
        ER_LOG_WARN("lifecycle", "step at partition %d offset %lld refused: %s",
                    (int)coords->partition, (long long)coords->offset,
                    refused.msg);
    }
    er_arena_reset(&lc->arena);
    return rc;
}

/* er_driver_in_use_fn over the lifecycle's store; when the database
 * cannot answer, everything counts as in use. */
static bool tag_in_use(const char *tag, void *arg)
{
    struct er_lifecycle *lc = arg;
    struct er_err err;
    bool is_in_use = true;

    er_err_clear(&err);
    if (er_store_lease_tag_in_use(lc->store, tag, &is_in_use, &err) != 0)
        return true;
    return is_in_use;
}

void er_lifecycle_sweep_host(struct er_lifecycle *lc)
{
    struct er_err err;

    er_err_clear(&err);
    if (er_store_ensure(lc->store, &err) != 0)
        return;
    er_driver_sweep_all(tag_in_use, lc);
}

int er_lifecycle_reap(struct er_lifecycle *lc, int64_t ttl_s, int limit,
                      int *reaped, struct er_err *err)
{
    struct er_lease_row *rows = NULL;
    struct release_item *items = NULL;
    bool *is_claimed = NULL;
    size_t cnt = 0;
    size_t i;
    int rc;

    *reaped = 0;
    er_arena_reset(&lc->arena);
    /* Phase 1: pick stale leases (SKIP LOCKED: not one another worker's
     * pass or a step holds) and claim each in the journal, so no other
     * reaper works on it while this one runs the driver unlocked. */
    rc = er_store_begin(lc->store, err);
    if (rc == 0)
        rc = er_store_lease_stale(lc->store, ttl_s, limit, &lc->arena, &rows,
                                  &cnt, err);
    if (rc == 0 && cnt > 0) {
        items = er_arena_alloc(&lc->arena, sizeof(*items) * cnt);
        is_claimed = er_arena_alloc(&lc->arena, sizeof(*is_claimed) * cnt);
        if (items == NULL || is_claimed == NULL)
            rc = oom(err);
    }
    for (i = 0; rc == 0 && i < cnt; i++) {
        char *op_id = er_arena_alloc(&lc->arena, 48);
        struct er_op op;

        if (op_id == NULL) {
            rc = oom(err);
            break;
        }
        snprintf(op_id, 48, "reap:%s", rows[i].id);
        op = (struct er_op){ op_id,      rows[i].company_id,
                             rows[i].id, rows[i].environment_id,
                             "reap",     NULL,
                             -1,         -1 };
        rc = er_store_journal_claim(lc->store, &op, &is_claimed[i], err);
        if (rc == 0 && is_claimed[i])
            rc = release_prepare(lc, &rows[i], "expired", &items[i], err);
    }
    if (rc == 0)
        rc = er_store_commit(lc->store, err);
    if (rc != 0)
        goto fail;
    /* Phase 2: each lease's cleanup through its driver, no lock held. */
    for (i = 0; i < cnt; i++) {
        if (is_claimed[i] && release_effect(lc, &items[i], err) != 0)
            goto fail;
    }
    /* Phase 3: one short transaction per lease, so one that cannot be
     * cleaned up never holds back the others; it stays active and its
     * claim's backoff decides when the next pass tries again. */
    for (i = 0; i < cnt; i++) {
        struct release_item *it = &items[i];
        struct actor who = { rows[i].company_id, "system", "envrun-reaper",
                             NULL, rows[i].heartbeat_run_id };
        struct er_lease_row upd;
        bool is_released = false;
        const char *state = "done";
        char op_id[48];

        if (!is_claimed[i])
            continue;
        rc = er_store_begin(lc->store, err);
        if (rc != 0)
            goto fail;
        if (it->lease_err != NULL ||
            (it->rel.cleanup_status != NULL &&
             strcmp(it->rel.cleanup_status, "failed") == 0)) {
            ER_LOG_WARN("reaper", "lease %s not expired: %s", rows[i].id,
                        it->lease_err != NULL ? it->lease_err
                                              : "its cleanup failed");
            state = "failed";
        } else {
            rc = release_record(lc, it, REAPED, NULL, &who, &upd, &is_released,
                                err);
        }
        snprintf(op_id, sizeof(op_id), "reap:%s", rows[i].id);
        if (rc == 0)
            rc = er_store_journal_close(lc->store, op_id, "reap", rows[i].id,
                                        state, NULL, err);
        if (rc == 0)
            rc = er_store_commit(lc->store, err);
        if (rc != 0)
            goto fail;
        if (is_released) {
            ER_LOG_INFO("reaper", "lease %s expired after %lld s unused",
                        upd.id, (long long)ttl_s);
            (*reaped)++;
        }
    }
    er_arena_reset(&lc->arena);
    return 0;
fail:
    er_store_rollback(lc->store);
    er_arena_reset(&lc->arena);
    return rc;
}
