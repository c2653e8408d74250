/* lifecycle_release: the release command (domain.md 3.3.2, 3.5), the undo
 * of an unrecorded acquisition, the host sweep and the reaper's pass; each
 * lease's driver release runs outside any transaction when remote. Not
 * thread-safe; see lifecycle_step_int.h. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "worker/bridge_host_int.h"
#include "worker/lifecycle_step_int.h"

#define REAPED              "lease_expired"
/* A pending_cleanup lease the reaper tore down at last (upstream.md C2). */
#define CLEANUP_RETRIED     "pending_cleanup_retry"
/* Why a lease is pending_cleanup when its driver named no reason. */
#define CLEANUP_FAILED      "cleanup_failed"
/* PENDING_CLEANUP_SWEEP_ATTEMPT_CAP: one warning, and longer waits. */
#define CLEANUP_ATTEMPT_CAP 5

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
        "provider", er_lifecycle__jstr(upd->provider), "executionWorkspaceId",
        er_lifecycle__jstr(upd->execution_workspace_id), "issueId",
        er_lifecycle__jstr(upd->issue_id), "status", upd->status,
        "cleanupStatus", er_lifecycle__jstr(upd->cleanup_status),
        "failureReason",
        er_lifecycle__jstr(failure_reason != NULL ? failure_reason
                                                  : upd->failure_reason));
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

/* Whether the driver's release of it failed, or left its cleanup failed. */
static bool cleanup_failed(const struct release_item *it)
{
    return it->lease_err != NULL ||
           (it->rel.cleanup_status != NULL &&
            strcmp(it->rel.cleanup_status, "failed") == 0);
}

/* Whether a failed cleanup is tried again: the lease goes pending_cleanup
 * for the reaper, only where Paperclip knows that status (2026.6 on, which
 * made environments the instance's; upstream.md C1). Before, the lease
 * takes its terminal status with cleanup_status failed. */
static bool cleanup_is_retried(struct er_lifecycle *lc)
{
    return er_store_era(lc->store) == ER_ERA_INSTANCE;
}

/* Whether it goes pending_cleanup. */
static bool goes_pending(struct er_lifecycle *lc, const struct release_item *it)
{
    return cleanup_is_retried(lc) && cleanup_failed(it);
}

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
    rc = er_store_env_get(lc->store, lease->environment_id, lease->company_id,
                          &lc->arena, &it->env, err);
    if (rc == ER_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    it->has_env = true;
    meta = er_lifecycle__jparse(lease->metadata_json);
    driver = er_lifecycle__jget_str(meta, "driver") != NULL
                 ? er_lifecycle__jget_str(meta, "driver")
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
    meta = er_lifecycle__jparse(it->lease.metadata_json);
    if (!json_is_object(meta)) {
        json_decref(meta);
        meta = json_object();
    }
    denv = er_lifecycle__driver_env(&it->env, config);
    dlease = er_lifecycle__driver_lease(&it->lease, meta);
    /* The run's callback bridge goes first (contract.md 7), wherever it
     * was started: this process's registry, else the journal says where
     * its gateway runs. */
    if (it->ops->is_remote && it->ops->execute != NULL) {
        char *detail = NULL;
        struct er_err jerr;

        er_err_clear(&jerr);
        (void)er_store_journal_bridge(lc->store, it->lease.id, &lc->arena,
                                      &detail, &jerr);
        er_bridge_host_stop(it->ops, &denv, &dlease, detail);
    }
    er_err_clear(&derr);
    it->rel.is_retried = cleanup_is_retried(lc);
    er_fault_point("driver.before");
    rc = it->ops->release(&denv, &dlease, it->rel.status, &it->rel, &derr);
    er_fault_point("driver.after");
    if (rc != 0) {
        it->lease_err = er_arena_strdup(&lc->arena, derr.msg);
        rc = it->lease_err == NULL ? er_lifecycle__oom(err) : 0;
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
                          const struct er_actor *who, struct er_lease_row *upd,
                          bool *is_released, struct er_err *err)
{
    struct er_lease_row cur;
    json_t *details = NULL;
    const char *status = it->rel.status;
    const char *cleanup = it->rel.cleanup_status;
    const char *reason =
        it->rel.failure_reason != NULL ? it->rel.failure_reason : row_reason;
    int rc;

    *is_released = false;
    if (!it->has_env)
        return 0; /* environment gone: skip silently (3.3.2 step 2) */
    rc = er_store_lease_get(lc->store, it->lease.id, &lc->arena, &cur, err);
    /* Still as it was when picked (active, or pending_cleanup for the
     * reaper's retry): nothing else released it meanwhile. */
    if (rc == ER_ENOTFOUND ||
        (rc == 0 && strcmp(cur.status, it->lease.status) != 0))
        return 0;
    if (rc != 0)
        return rc;
    if (goes_pending(lc, it)) {
        status = "pending_cleanup";
        cleanup = "failed";
        if (reason == NULL)
            reason = CLEANUP_FAILED;
    } else if (strcmp(it->lease.status, "pending_cleanup") == 0) {
        cleanup = "success";
    }
    rc = er_store_lease_set_status(lc->store, it->lease.id, status, reason,
                                   cleanup, &lc->arena, upd, err);
    if (rc != 0)
        return rc;
    rc = er_lifecycle__lease_event(lc, upd, err);
    if (rc != 0)
        return rc;
    details = released_details(&it->env, upd, detail_reason);
    if (details == NULL)
        return er_lifecycle__oom(err);
    rc = er_lifecycle__activity(lc, who, "environment.lease_released", upd,
                                details, err);
    json_decref(details);
    if (rc == 0)
        *is_released = true;
    return rc;
}

int er_lifecycle__release(struct er_step *st, struct er_err *err)
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
    struct er_actor who = er_lifecycle__step_actor(st);
    int rc;

    if (released == NULL || errors == NULL) {
        rc = er_lifecycle__oom(err);
        goto out;
    }
    rc = er_store_lease_active_for_run(lc->store, cmd->company_id,
                                       cmd->heartbeat_run_id, &lc->arena, &rows,
                                       &cnt, err);
    if (rc != 0)
        goto out;
    items = cnt > 0 ? er_arena_alloc(&lc->arena, sizeof(*items) * cnt) : NULL;
    if (cnt > 0 && items == NULL) {
        rc = er_lifecycle__oom(err);
        goto out;
    }
    for (i = 0; i < cnt; i++) {
        rc = release_prepare(lc, &rows[i], status, &items[i], err);
        if (rc != 0)
            goto out;
        if (items[i].ops != NULL && items[i].ops->is_remote) {
            is_remote = true;
            rc = er_lifecycle__journal(st, "release", rows[i].id,
                                       items[i].env.id, err);
            if (rc != 0)
                goto out;
        }
    }
    if (is_remote) {
        rc = er_lifecycle__intent_commit(st, err);
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
        rc = er_lifecycle__outcome_begin(st, err);
        if (rc != 0)
            goto out;
    }
    for (i = 0; i < cnt; i++) {
        struct release_item *it = &items[i];
        struct er_lease_row upd;
        bool is_released = false;

        /* A failed release is recorded too where the lease can go
         * pending_cleanup; elsewhere it stays active for the reaper. */
        if (it->lease_err == NULL || goes_pending(lc, it)) {
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
                rc = it->lease_err == NULL ? er_lifecycle__oom(err) : 0;
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
        er_lifecycle__fail(
            st, ER_OUTCOME_ERROR, ER_EC_LEASE_RELEASE_FAILED,
            "Failed to release %zu of %zu environment leases for heartbeat "
            "run \"%s\".",
            err_cnt, cnt, cmd->heartbeat_run_id);
    st->result =
        json_pack("{s:O, s:O}", "released", released, "errors", errors);
    if (st->result == NULL)
        rc = er_lifecycle__oom(err);
out:
    json_decref(released);
    json_decref(errors);
    return rc;
}

/* Release through its driver, with no transaction open, what an acquire
 * made for lease_id but never recorded, from the {driver, metadata} the
 * journal keeps for it (detail_json). Returns 0 when it is released, or
 * when its environment is gone (nothing can reach it any more); otherwise
 * ER_EDRIVER (class RETRY) with the driver's reason, or a store error. */
static int undo_release(struct er_lifecycle *lc, const char *company_id,
                        const char *lease_id, const char *environment_id,
                        const char *detail_json, struct er_err *err)
{
    struct er_lease_row row;
    struct release_item it;
    json_t *detail = er_lifecycle__jparse(detail_json);
    const json_t *meta = json_object_get(detail, "metadata");
    const char *driver = er_lifecycle__jget_str(detail, "driver");
    int rc;

    memset(&row, 0, sizeof(row));
    row.id = lease_id;
    row.company_id = company_id;
    row.environment_id = environment_id;
    row.status = "active";
    row.lease_policy = er_lifecycle__jget_str(detail, "leasePolicy") != NULL
                           ? er_lifecycle__jget_str(detail, "leasePolicy")
                           : "ephemeral";
    row.provider = er_lifecycle__jget_str(detail, "provider");
    row.provider_lease_id = er_lifecycle__jget_str(detail, "providerLeaseId");
    row.metadata_json =
        meta != NULL ? er_lifecycle__jdump(&lc->arena, meta) : NULL;
    rc = release_prepare(lc, &row, "expired", &it, err);
    if (rc == 0 && driver != NULL)
        it.ops = er_driver_find(driver);
    if (rc == 0)
        rc = release_effect(lc, &it, err);
    if (rc == 0 && cleanup_failed(&it))
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_RETRY, "%s",
                        it.lease_err != NULL ? it.lease_err
                                             : "its cleanup failed");
    json_decref(detail);
    return rc;
}

/* Release what an acquire made but could not record (undo_acquire) once
 * the step's outcome committed, then close its journal entry as
 * rolled_back. A failure is logged and leaves the entry rolling_back; the
 * reaper tries again (er_lifecycle_reap). */
void er_lifecycle__undo_finish(struct er_lifecycle *lc, const struct er_undo *u)
{
    struct er_err e;
    int rc;

    er_fault_point("undo.before");
    er_err_clear(&e);
    rc = undo_release(lc, u->company_id, u->lease_id, u->environment_id,
                      u->detail_json, &e);
    if (rc == 0)
        rc = er_store_journal_close(lc->store, u->command_id, "acquire",
                                    u->lease_id, "rolled_back", NULL, &e);
    if (rc != 0)
        er_log_kv(ER_LOG_WARN, "lifecycle",
                  "an unrecorded acquisition was not released", "commandId",
                  u->command_id, "leaseId", u->lease_id, "reason", e.msg,
                  (const char *)NULL);
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

/* Inside a reaper pass's transaction: claim lease_id in the journal (its
 * reap entry, see er_store_journal_claim), so no other reaper works on it
 * while this one runs the driver unlocked. */
static int reap_claim(struct er_lifecycle *lc, const char *company_id,
                      const char *lease_id, const char *environment_id,
                      bool *is_claimed, struct er_err *err)
{
    char op_id[48];
    struct er_op op = { .command_id = op_id,
                        .company_id = company_id,
                        .lease_id = lease_id,
                        .environment_id = environment_id,
                        .kind = "reap",
                        .topic = NULL,
                        .partition = -1,
                        .generation = -1 };

    snprintf(op_id, sizeof(op_id), "reap:%s", lease_id);
    return er_store_journal_claim(lc->store, &op, is_claimed, err);
}

/* A pending_cleanup lease whose retry failed again: it stays so, with the
 * attempt counted (upstream.md C2); at the cap, one warning. */
static int reap_pending_failed(struct er_lifecycle *lc,
                               const struct release_item *it,
                               struct er_err *err)
{
    int64_t attempts = 0;
    int rc = er_store_lease_cleanup_settle(lc->store, it->lease.id, true,
                                           &attempts, err);

    if (rc != 0)
        return rc;
    er_metrics_reaper_action(ER_METRICS_REAP_CLEANUP_FAILED);
    if (attempts == CLEANUP_ATTEMPT_CAP)
        er_log_kv(ER_LOG_WARN, "reaper",
                  "environment lease needs operator attention; automatic "
                  "cleanup continues with backoff",
                  "leaseId", it->lease.id, (const char *)NULL);
    else
        ER_LOG_WARN("reaper", "lease %s still pending cleanup (attempt %lld)",
                    it->lease.id, (long long)attempts);
    return 0;
}

/* The reaper's pass over stale leases (see er_lifecycle_reap). */
static int reap_leases(struct er_lifecycle *lc, int64_t ttl_s, int limit,
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
            rc = er_lifecycle__oom(err);
    }
    for (i = 0; rc == 0 && i < cnt; i++) {
        rc = reap_claim(lc, rows[i].company_id, rows[i].id,
                        rows[i].environment_id, &is_claimed[i], err);
        /* A pending_cleanup lease is claimed the way a Paperclip server
         * sharing the database sees, too. */
        if (rc == 0 && is_claimed[i] &&
            strcmp(rows[i].status, "pending_cleanup") == 0)
            rc = er_store_lease_cleanup_claim(lc->store, rows[i].id, err);
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
     * cleaned up never holds back the others; it stays active (or goes,
     * or stays, pending_cleanup) and its claim's backoff decides when the
     * next pass tries again. */
    for (i = 0; i < cnt; i++) {
        struct release_item *it = &items[i];
        struct er_actor who = { rows[i].company_id, "system", "envrun-reaper",
                                NULL, rows[i].heartbeat_run_id };
        struct er_lease_row upd;
        bool is_released = false;
        bool is_pending = strcmp(rows[i].status, "pending_cleanup") == 0;
        const char *state = "done";
        int64_t attempts = 0;
        char op_id[48];

        if (!is_claimed[i])
            continue;
        rc = er_store_begin(lc->store, err);
        if (rc != 0)
            goto fail;
        if (cleanup_failed(it))
            state = "failed";
        if (cleanup_failed(it) && is_pending) {
            rc = reap_pending_failed(lc, it, err);
        } else if (cleanup_failed(it) && !goes_pending(lc, it)) {
            er_metrics_reaper_action(ER_METRICS_REAP_CLEANUP_FAILED);
            ER_LOG_WARN("reaper", "lease %s not expired: %s", rows[i].id,
                        it->lease_err != NULL ? it->lease_err
                                              : "its cleanup failed");
        } else {
            rc = release_record(lc, it, is_pending ? CLEANUP_RETRIED : REAPED,
                                NULL, &who, &upd, &is_released, err);
            if (rc == 0 && is_pending)
                rc = er_store_lease_cleanup_settle(lc->store, rows[i].id, false,
                                                   &attempts, err);
        }
        snprintf(op_id, sizeof(op_id), "reap:%s", rows[i].id);
        if (rc == 0)
            rc = er_store_journal_close(lc->store, op_id, "reap", rows[i].id,
                                        state, NULL, err);
        if (rc == 0)
            rc = er_store_commit(lc->store, err);
        if (rc != 0)
            goto fail;
        if (is_released && strcmp(upd.status, "pending_cleanup") == 0) {
            er_metrics_reaper_action(ER_METRICS_REAP_PENDING_CLEANUP);
            ER_LOG_WARN("reaper", "lease %s pending cleanup: %s", upd.id,
                        it->lease_err != NULL ? it->lease_err
                                              : "its cleanup failed");
        } else if (is_released && is_pending) {
            er_metrics_reaper_action(ER_METRICS_REAP_CLEANUP_RETRIED);
            ER_LOG_INFO("reaper", "lease %s cleaned up on a retry", upd.id);
        } else if (is_released) {
            er_metrics_reaper_action(ER_METRICS_REAP_EXPIRED);
            ER_LOG_INFO("reaper", "lease %s expired after %lld s unused",
                        upd.id, (long long)ttl_s);
        }
        if (is_released)
            (*reaped)++;
    }
    er_arena_reset(&lc->arena);
    return 0;
fail:
    er_store_rollback(lc->store);
    er_arena_reset(&lc->arena);
    return rc;
}

/* One acquisition nobody recorded, on its way out. */
struct unrecorded_item {
    bool is_claimed;
    /* What the driver gets: the entry's own detail (rolling_back), else
     * one made from the environment row (is_synthesized). */
    const char *detail_json;
    bool is_synthesized;
    int rc; /* of the release */
    struct er_err err;
};

/* What an acquire that recorded nothing would have recorded, as far as the
 * environment row tells: {driver, metadata: {driver, workspaceIsolation}}.
 * Only what the config says is copied (the ssh driver reads the host, the
 * user and the key from the config, and removes a per-lease directory only
 * when the metadata says per_lease). NULL when out of memory. */
const char *er_lifecycle__unrecorded_detail(struct er_lifecycle *lc,
                                            const struct er_env_row *env)
{
    json_t *config = er_lifecycle__jparse(env->config_json);
    const char *isolation =
        er_lifecycle__jget_str(config, "workspaceIsolation");
    json_t *meta = json_pack("{s:s}", "driver", env->driver);
    json_t *detail = NULL;
    const char *text = NULL;

    if (meta != NULL && isolation != NULL &&
        json_object_set_new(meta, "workspaceIsolation",
                            json_string(isolation)) != 0) {
        json_decref(meta);
        meta = NULL;
    }
    if (meta != NULL)
        detail = json_pack("{s:s, s:o}", "driver", env->driver, "metadata",
                           meta); /* consumes meta */
    if (detail != NULL)
        text = er_lifecycle__jdump(&lc->arena, detail);
    json_decref(detail);
    json_decref(config);
    return text;
}

/* Phase 1 for one acquisition, inside the pass's transaction: claim its
 * lease in the journal (a reap entry, as for a stale lease, so a release
 * that fails is retried after the same backoff), and give a started or
 * interrupted one the detail its driver never recorded. */
static int unrecorded_claim(struct er_lifecycle *lc,
                            const struct er_acquire_op *op,
                            struct unrecorded_item *it, struct er_err *err)
{
    struct er_env_row env;
    int rc;

    memset(it, 0, sizeof(*it));
    rc = reap_claim(lc, op->company_id, op->lease_id, op->environment_id,
                    &it->is_claimed, err);
    if (rc != 0 || !it->is_claimed)
        return rc;
    it->detail_json = op->detail_json;
    if (strcmp(op->state, "rolling_back") == 0 && op->detail_json != NULL)
        return 0;
    /* An environment that is gone leaves nothing to connect with: the
     * release then finds nothing to do, as the undo would. */
    it->detail_json = NULL;
    if (op->environment_id == NULL)
        return 0;
    rc = er_store_env_get(lc->store, op->environment_id, op->company_id,
                          &lc->arena, &env, err);
    if (rc == ER_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    it->detail_json = er_lifecycle__unrecorded_detail(lc, &env);
    if (it->detail_json == NULL)
        return er_lifecycle__oom(err);
    it->is_synthesized = true;
    return 0;
}

/* The reaper's pass over acquisitions whose lease was never recorded and
 * that nobody else will finish (er_store_journal_unrecorded): a rolling_back
 * entry whose undo never ran or failed, or a started / interrupted one whose
 * command never came back. Each is released through its driver as the undo
 * does, with no transaction open, and closed rolled_back in a transaction
 * of its own unless its command resumed it meanwhile. Nothing is published:
 * no lease was recorded, so no lease changed. */
static int reap_unrecorded(struct er_lifecycle *lc, int64_t ttl_s, int limit,
                           struct er_err *err)
{
    struct er_acquire_op *ops = NULL;
    struct unrecorded_item *items = NULL;
    size_t cnt = 0;
    size_t i;
    int rc;

    er_arena_reset(&lc->arena);
    /* Phase 1: pick and claim them (SKIP LOCKED, see the lease part). */
    rc = er_store_begin(lc->store, err);
    if (rc == 0)
        rc = er_store_journal_unrecorded(lc->store, ttl_s, limit, &lc->arena,
                                         &ops, &cnt, err);
    if (rc == 0 && cnt > 0) {
        items = er_arena_alloc(&lc->arena, sizeof(*items) * cnt);
        if (items == NULL)
            rc = er_lifecycle__oom(err);
    }
    for (i = 0; rc == 0 && i < cnt; i++)
        rc = unrecorded_claim(lc, &ops[i], &items[i], err);
    if (rc == 0)
        rc = er_store_commit(lc->store, err);
    if (rc != 0)
        goto fail;
    /* Phase 2: each release through its driver, no lock held. */
    for (i = 0; i < cnt; i++) {
        if (!items[i].is_claimed)
            continue;
        er_err_clear(&items[i].err);
        items[i].rc = undo_release(lc, ops[i].company_id, ops[i].lease_id,
                                   ops[i].environment_id, items[i].detail_json,
                                   &items[i].err);
    }
    /* Phase 3: one short transaction each; one that failed keeps its
     * entry and is tried again after its claim's backoff. */
    for (i = 0; i < cnt; i++) {
        struct unrecorded_item *it = &items[i];
        bool is_closed = false;
        char op_id[48];

        if (!it->is_claimed)
            continue;
        snprintf(op_id, sizeof(op_id), "reap:%s", ops[i].lease_id);
        rc = er_store_begin(lc->store, err);
        if (rc == 0 && it->rc == 0)
            rc = er_store_journal_unrecorded_close(
                lc->store, &ops[i], it->is_synthesized ? it->detail_json : NULL,
                &is_closed, err);
        if (rc == 0)
            rc = er_store_journal_close(
                lc->store, op_id, "reap", ops[i].lease_id,
                it->rc == 0 ? "done" : "failed", NULL, err);
        if (rc == 0)
            rc = er_store_commit(lc->store, err);
        if (rc != 0)
            goto fail;
        er_metrics_reaper_action(it->rc != 0
                                     ? ER_METRICS_REAP_UNRECORDED_FAILED
                                     : ER_METRICS_REAP_UNRECORDED_RELEASED);
        if (it->rc != 0)
            er_log_kv(ER_LOG_WARN, "reaper",
                      "an unrecorded acquisition was not released", "commandId",
                      ops[i].command_id, "leaseId", ops[i].lease_id, "reason",
                      it->err.msg, (const char *)NULL);
        else if (is_closed)
            er_log_kv(ER_LOG_INFO, "reaper",
                      "an unrecorded acquisition was released", "commandId",
                      ops[i].command_id, "leaseId", ops[i].lease_id,
                      (const char *)NULL);
        else
            er_log_kv(ER_LOG_WARN, "reaper",
                      "an unrecorded acquisition was released, but its "
                      "entry moved on meanwhile (resumed by its command, "
                      "or closed by its worker)",
                      "commandId", ops[i].command_id, "leaseId",
                      ops[i].lease_id, (const char *)NULL);
    }
    er_arena_reset(&lc->arena);
    return 0;
fail:
    er_store_rollback(lc->store);
    er_arena_reset(&lc->arena);
    return rc;
}

int er_lifecycle_next_expiry(struct er_lifecycle *lc, int64_t *at_ms,
                             struct er_err *err)
{
    return er_store_lease_next_expiry(lc->store, at_ms, err);
}

int er_lifecycle_gauges(struct er_lifecycle *lc, struct er_err *err)
{
    struct er_store_gauge *rows = NULL;
    struct er_metrics_row *leases;
    struct er_metrics_row *ops;
    size_t lease_cnt = 0;
    size_t op_cnt = 0;
    size_t cnt = 0;
    size_t i;
    int rc;

    er_arena_reset(&lc->arena);
    rc = er_store_gauges_read(lc->store, &lc->arena, &rows, &cnt, err);
    if (rc != 0)
        goto out;
    leases = er_arena_alloc(&lc->arena, sizeof(*leases) * (cnt + 1));
    ops = er_arena_alloc(&lc->arena, sizeof(*ops) * (cnt + 1));
    if (leases == NULL || ops == NULL) {
        rc = er_lifecycle__oom(err);
        goto out;
    }
    for (i = 0; i < cnt; i++) {
        struct er_metrics_row *m =
            rows[i].is_lease ? &leases[lease_cnt++] : &ops[op_cnt++];

        m->a = rows[i].a;
        m->b = rows[i].b;
        m->val = rows[i].cnt;
    }
    er_metrics_leases_set(leases, lease_cnt);
    er_metrics_journal_set(ops, op_cnt);
out:
    er_arena_reset(&lc->arena);
    return rc;
}

int er_lifecycle_reap(struct er_lifecycle *lc, int64_t ttl_s, int limit,
                      int *reaped, struct er_err *err)
{
    struct er_err uerr;
    int rc;
    int urc;

    /* Two parts, each in its own short transactions: a failure of one
     * never keeps the other from its pass. */
    rc = reap_leases(lc, ttl_s, limit, reaped, err);
    er_err_clear(&uerr);
    urc = reap_unrecorded(lc, ttl_s, limit, &uerr);
    if (rc == 0 && urc != 0) {
        if (err != NULL)
            *err = uerr;
        rc = urc;
    }
    return rc;
}
