/* lifecycle_acquire: the acquire command (domain.md 3.1-3.3): resolve the
 * environment, guard the execution workspace (single flight), run the
 * driver's acquire (journaled, outside any transaction when remote) and
 * insert the lease. Not thread-safe; see lifecycle_step_int.h. */
#include <string.h>

#include <jansson.h>

#include "worker/lifecycle_step_int.h"

#define SUPERSEDED "superseded: stale single-flight workspace lease"

/* ================================================================
 * acquire (domain.md 3.1-3.3)
 * ================================================================ */

/* resolveEnvironment: 0 with env filled, or 1 when the result already says
 * why not (environment_not_found / environment_inactive). */
static int resolve_env(struct er_step *st, struct er_env_row *env,
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
        rc = er_store_env_get(lc->store, id, cmd->company_id, &lc->arena, env,
                              err);
        if (rc == ER_ENOTFOUND) {
            st->res.environment_id = id;
            er_lifecycle__fail(st, ER_OUTCOME_ERROR,
                               ER_EC_ENVIRONMENT_NOT_FOUND,
                               "Environment \"%s\" not found.", id);
            return 1;
        }
        if (rc != 0)
            return rc;
        if (!env->is_instance_scoped &&
            strcmp(env->company_id, cmd->company_id) != 0) {
            /* Cross-company access is "not found" (domain.md 1). An
             * instance's environment serves every company of it. */
            st->res.environment_id = id;
            er_lifecycle__fail(
                st, ER_OUTCOME_ERROR, ER_EC_ENVIRONMENT_NOT_FOUND,
                "Environment \"%s\" does not belong to this company.", id);
            return 1;
        }
    }
    if (strcmp(env->status, "active") != 0) {
        er_lifecycle__set_env(st, env);
        er_lifecycle__fail(st, ER_OUTCOME_ERROR, ER_EC_ENVIRONMENT_INACTIVE,
                           "Environment \"%s\" is not active (status: %s).",
                           env->name, env->status);
        return 1;
    }
    return 0;
}

/* The single-flight guard of domain.md 3.3.1, before the driver runs so a
 * conflicting acquire has no side effect. Returns 0 to go on, 1 when the
 * result is decided (conflict), and sets *reentrant to the run's own lease
 * when it already holds one. */
static int single_flight(struct er_step *st, const struct er_env_row *env,
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
            er_lifecycle__set_env(st, env);
            er_lifecycle__fail(
                st, ER_OUTCOME_DEFERRED, ER_EC_LEASE_CONFLICT,
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
    return er_lifecycle__lease_event(lc, &upd, err);
}

/* Insert the lease (3.3.1). A unique violation of the single-flight index
 * means another writer (the control plane shares the database and does not
 * take our advisory lock) won the race: a conflict, deferred (3.3.1 step
 * 4). Returns 1 when the result says so. */
static int insert_lease(struct er_step *st, const struct er_env_row *env,
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
    rc = er_store_lease_insert(lc->store, in, st->cmd->requested_expires_at_ms,
                               &lc->arena, out, &ierr);
    if (rc == ER_ECONFLICT) {
        rc = er_store_savepoint_rollback(lc->store, err);
        if (rc != 0)
            return rc;
        er_lifecycle__fail(
            st, ER_OUTCOME_DEFERRED, ER_EC_LEASE_CONFLICT,
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
static int undo(struct er_step *st, const char *environment_id,
                const char *lease_id, const char *detail_json,
                struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    struct er_undo *u = &lc->undo;

    /* The undo runs after the step, when the command is freed: copies in
     * the arena, which lives until the step is over. */
    u->detail_json = detail_json;
    u->command_id = er_arena_strdup(&lc->arena, st->cmd->command_id);
    u->company_id = er_arena_strdup(&lc->arena, st->cmd->company_id);
    u->lease_id = er_arena_strdup(&lc->arena, lease_id);
    u->environment_id = er_arena_strdup(&lc->arena, environment_id);
    if (u->detail_json == NULL || u->command_id == NULL ||
        u->company_id == NULL || u->lease_id == NULL ||
        u->environment_id == NULL)
        return er_lifecycle__oom(err);
    return er_store_journal_close(lc->store, u->command_id, "acquire",
                                  u->lease_id, "rolling_back", u->detail_json,
                                  err);
}

static int undo_acquire(struct er_step *st, const struct er_driver_env *denv,
                        const char *lease_id,
                        const struct er_driver_acquired *acq,
                        struct er_err *err)
{
    /* What a release needs to find the machine: the provider's id too. */
    json_t *detail = json_pack(
        "{s:s, s:O, s:o, s:o, s:s}", "driver", denv->driver, "metadata",
        acq->metadata, "provider", er_lifecycle__jstr(acq->provider),
        "providerLeaseId", er_lifecycle__jstr(acq->provider_lease_id),
        "leasePolicy", acq->lease_policy);
    const char *text =
        detail != NULL ? er_lifecycle__jdump(&st->lc->arena, detail) : NULL;

    json_decref(detail);
    return undo(st, denv->id, lease_id, text, err);
}

/* A remote acquire answered without a lease before its driver ran this
 * time (deferred at its first workspace check, say) may find an earlier
 * attempt's entry still open: that attempt's driver may have made
 * something before a crash cut it short. It is undone like an acquisition
 * that lost the workspace race, from what env's config tells (the driver
 * never described it). */
static int undo_earlier_attempt(struct er_step *st,
                                const struct er_env_row *env,
                                struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    char lease_id[37];
    char *state = NULL;
    char *detail = NULL;
    int rc;

    rc = er_store_lease_id_for(lc->store, st->cmd->company_id,
                               st->cmd->command_id, lease_id, err);
    if (rc == 0)
        rc = er_store_journal_get(lc->store, st->cmd->command_id, "acquire",
                                  lease_id, &lc->arena, &state, &detail, err);
    if (rc == ER_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    if (strcmp(state, "started") != 0 && strcmp(state, "interrupted") != 0)
        return 0;
    er_log_kv(ER_LOG_INFO, "lifecycle",
              "an earlier attempt's acquisition is released: the command is "
              "answered without a lease",
              "commandId", st->cmd->command_id, "leaseId", lease_id,
              (const char *)NULL);
    return undo(st, env->id, lease_id, er_lifecycle__unrecorded_detail(lc, env),
                err);
}

/* The parked machines a sandbox acquire may resume (domain.md 3.3.3): only
 * for the sandbox driver with reuseLease and a run id. The rows live in the
 * arena; their parsed metadata objects are kept in st->reusable_meta, which
 * the acquire releases when it is done. */
static int reusable_leases(struct er_step *st, const struct er_env_row *env,
                           const json_t *config,
                           struct er_driver_lease_ctx *ctx, struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    struct er_lease_row *rows = NULL;
    struct er_driver_lease *leases;
    size_t cnt = 0;
    size_t i;
    int rc;

    if (strcmp(env->driver, "sandbox") != 0 || ctx->heartbeat_run_id == NULL ||
        !json_is_true(json_object_get(config, "reuseLease")))
        return 0;
    rc = er_store_lease_reusable(lc->store, st->cmd->company_id, env->id,
                                 &lc->arena, &rows, &cnt, err);
    if (rc != 0 || cnt == 0)
        return rc;
    leases = er_arena_alloc(&lc->arena, sizeof(*leases) * cnt);
    st->reusable_meta = json_array();
    if (leases == NULL || st->reusable_meta == NULL)
        return er_lifecycle__oom(err);
    for (i = 0; i < cnt; i++) {
        json_t *meta = er_lifecycle__jparse(rows[i].metadata_json);

        if (!json_is_object(meta)) {
            json_decref(meta);
            meta = json_object();
        }
        if (meta == NULL || json_array_append_new(st->reusable_meta, meta) != 0)
            return er_lifecycle__oom(err);
        leases[i] = er_lifecycle__driver_lease(&rows[i], meta);
    }
    ctx->reusable = leases;
    ctx->reusable_cnt = cnt;
    return 0;
}

int er_lifecycle__acquire(struct er_step *st, struct er_err *err)
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
    struct er_actor who;
    char lease_id[37];
    bool is_reentrant = false;
    bool is_journaled = false;
    int drc;
    int rc;

    memset(&acq, 0, sizeof(acq));
    rc = resolve_env(st, &env, err);
    if (rc != 0)
        return rc > 0 ? 0 : rc;
    er_lifecycle__set_env(st, &env);

    ops = er_driver_find(env.driver);
    if (ops == NULL) {
        er_lifecycle__fail(
            st, ER_OUTCOME_ERROR, ER_EC_LEASE_ACQUIRE_FAILED,
            "Failed to acquire lease for environment \"%s\" (%s): "
            "Environment driver \"%s\" is not registered in the environment "
            "runtime yet.",
            env.name, env.driver, env.driver);
        return 0;
    }
    config = json_loads(env.config_json, 0, NULL);
    if (!json_is_object(config)) {
        er_lifecycle__fail(
            st, ER_OUTCOME_ERROR, ER_EC_LEASE_ACQUIRE_FAILED,
            "Failed to acquire lease for environment \"%s\" (%s): "
            "environment config is not a JSON object.",
            env.name, env.driver);
        rc = 0;
        goto out;
    }
    denv = er_lifecycle__driver_env(&env, config);

    if (cmd->execution_workspace_id != NULL) {
        rc = single_flight(st, &env, &lease, &is_reentrant, err);
        if (rc != 0) {
            rc = rc > 0 ? 0 : rc;
            goto out;
        }
    }

    if (!is_reentrant) {
        rc = er_store_lease_id_for(lc->store, cmd->company_id, cmd->command_id,
                                   lease_id, err);
        if (rc != 0)
            goto out;
        ctx = (struct er_driver_lease_ctx){
            .lease_id = lease_id,
            .company_id = cmd->company_id,
            .agent_id = cmd->agent_id,
            .heartbeat_run_id = cmd->heartbeat_run_id,
            .issue_id = cmd->issue_id,
            .execution_workspace_id = cmd->execution_workspace_id,
            .execution_workspace_mode = cmd->execution_workspace_mode,
            .adapter_type = cmd->adapter_type,
            .requested_expires_at_ms = cmd->requested_expires_at_ms,
        };
        rc = reusable_leases(st, &env, config, &ctx, err);
        if (rc != 0)
            goto out;
        if (ops->is_remote) {
            is_journaled = true;
            rc = er_lifecycle__journal(st, "acquire", lease_id, env.id, err);
            if (rc == 0)
                rc = er_lifecycle__intent_commit(st, err);
            if (rc != 0)
                goto out;
        }
        er_err_clear(&derr);
        er_fault_point("driver.before");
        drc = ops->acquire(&denv, &ctx, &acq, &derr);
        er_fault_point("driver.after");
        if (ops->is_remote) {
            rc = er_lifecycle__outcome_begin(st, err);
            if (rc != 0)
                goto out;
        }
        if (drc != 0) {
            er_lifecycle__fail(
                st, ER_OUTCOME_ERROR, ER_EC_LEASE_ACQUIRE_FAILED,
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
        in.metadata_json = er_lifecycle__jdump(&lc->arena, acq.metadata);
        if (in.metadata_json == NULL) {
            rc = er_lifecycle__oom(err);
            goto out;
        }
        rc = insert_lease(st, &env, &in, &lease, err);
        if (rc > 0 && ops->is_remote)
            rc = undo_acquire(st, &denv, lease_id, &acq, err);
        /* A conflict decided the result (deferred): no lease to record. */
        if (rc != 0 || st->res.outcome != ER_OUTCOME_OK) {
            rc = rc > 0 ? 0 : rc;
            goto out;
        }
        rc = er_lifecycle__lease_event(lc, &lease, err);
        if (rc != 0)
            goto out;
        if (cmd->requested_expires_at_ms > 0 && lc->expiry_fn != NULL)
            lc->expiry_fn(lc->expiry_arg, lease.expires_at_ms);
        details = json_pack(
            "{s:s, s:s, s:s, s:o, s:o, s:o}", "environmentId", env.id, "driver",
            env.driver, "leasePolicy", lease.lease_policy, "provider",
            er_lifecycle__jstr(lease.provider), "executionWorkspaceId",
            er_lifecycle__jstr(cmd->execution_workspace_id), "issueId",
            er_lifecycle__jstr(cmd->issue_id));
        if (details == NULL) {
            rc = er_lifecycle__oom(err);
            goto out;
        }
        who = er_lifecycle__step_actor(st);
        rc = er_lifecycle__activity(lc, &who, "environment.lease_acquired",
                                    &lease, details, err);
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
        er_lifecycle__fail(
            st, ER_OUTCOME_ERROR, ER_EC_TRANSPORT_RESOLUTION_FAILED,
            "Failed to resolve execution transport for \"%s\": %s", env.name,
            derr.msg);
        rc = 0;
        goto out;
    }
    st->result = json_pack("{s:o, s:o, s:{s:o, s:o}, s:O}", "environment",
                           er_lifecycle__env_to_json(&env), "lease",
                           er_lifecycle__lease_to_json(&lease), "leaseContext",
                           "executionWorkspaceId",
                           er_lifecycle__jstr(cmd->execution_workspace_id),
                           "executionWorkspaceMode",
                           er_lifecycle__jstr(cmd->execution_workspace_mode),
                           "executionTransport", transport);
    if (st->result == NULL)
        rc = er_lifecycle__oom(err);
out:
    if (rc == 0 && !is_journaled && ops != NULL && ops->is_remote &&
        st->res.outcome != ER_OUTCOME_OK)
        rc = undo_earlier_attempt(st, &env, err);
    json_decref(transport);
    json_decref(details);
    json_decref(config);
    json_decref(st->reusable_meta);
    st->reusable_meta = NULL;
    er_driver_acquired_fini(&acq);
    return rc;
}
