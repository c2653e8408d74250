/* lifecycle_realize: the realize command (domain.md 3.4): the realization
 * request, the driver's sync (journaled, outside any transaction when
 * remote), the provision command (journaled with its outcome), the
 * metadata and the execution target. Not thread-safe; see
 * lifecycle_step_int.h. */

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "worker/bridge_host_int.h"
#include "worker/lifecycle_step_int.h"

/* domain.md 3.4 step 3: the provision command runs at most 300 s. */
#define PROVISION_TIMEOUT_MS 300000

/* ================================================================
 * realize (domain.md 3.4)
 * ================================================================ */

/* The lease a realize works on: leaseId, else the run's newest active
 * lease. Returns 1 when the result already says why there is none. */
static int realize_lease(struct er_step *st, struct er_lease_row *lease,
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
            er_lifecycle__fail(
                st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
                "Failed to realize workspace: lease \"%s\" not found.",
                cmd->lease_id);
            return 1;
        }
        return rc;
    }
    rc = er_store_lease_active_for_run(lc->store, cmd->company_id,
                                       cmd->heartbeat_run_id, &lc->arena, &rows,
                                       &cnt, err);
    if (rc != 0)
        return rc;
    if (cnt == 0) {
        er_lifecycle__fail(
            st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
            "Failed to realize workspace: heartbeat run \"%s\" has no "
            "active lease.",
            cmd->heartbeat_run_id);
        return 1;
    }
    *lease = rows[cnt - 1];
    return 0;
}

/* The workspaceRealizationRequest of domain.md 2.6. */
static json_t *realization_request(const struct er_step *st,
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
        er_lifecycle__jstr(cmd->execution_workspace_id), "issueId",
        er_lifecycle__jstr(cmd->issue_id), "heartbeatRunId",
        er_lifecycle__jstr(cmd->heartbeat_run_id), "requestedMode",
        er_lifecycle__jstr(cmd->requested_mode), "source", "kind",
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
/* Journal an operation's outcome (a provision command's, a bridge's) the
 * moment it ends. A provision command may have run for minutes, long enough for
 * the database connection to go: reconnect and try again a few times before
 * giving up, since an outcome not recorded means the command runs again on
 * resume. */
static int record_done(struct er_lifecycle *lc, const char *command_id,
                       const char *kind, const char *lease_id,
                       const char *recorded, struct er_err *err)
{
    int tries;
    int rc = 0;

    for (tries = 0; tries < 4; tries++) {
        if (tries > 0) {
            struct timespec ts = { 0, 250L * 1000000 * tries };

            nanosleep(&ts, NULL);
            er_err_clear(err);
            rc = er_store_ensure(lc->store, err);
            if (rc != 0)
                continue;
        }
        rc = er_store_journal_close(lc->store, command_id, kind, lease_id,
                                    "done", recorded, err);
        if (rc == 0 || err->cls != ER_ERRCLASS_RETRY)
            break;
    }
    return rc;
}

static int provision(struct er_step *st, const struct er_driver_ops *ops,
                     const struct er_driver_env *denv,
                     const struct er_driver_lease *dlease,
                     const struct er_env_row *env, const char *driver,
                     const json_t *overlay, const char *realized_cwd,
                     const char *remote_cwd, const char *host_cwd,
                     struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    const char *cmd_text = er_lifecycle__jget_str(overlay, "provisionCommand");
    char detail[800];
    char *state = NULL;
    char *recorded = NULL;
    json_t *rec = NULL;
    int rc;

    if (cmd_text == NULL || strcmp(driver, "local") == 0)
        return 0;
    if (ops->execute == NULL) {
        er_lifecycle__fail(
            st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
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
        rec = er_lifecycle__jparse(recorded);
        snprintf(detail, sizeof(detail), "%s",
                 er_lifecycle__jget_str(rec, "failure") != NULL
                     ? er_lifecycle__jget_str(rec, "failure")
                     : "");
        json_decref(rec);
        rec = NULL;
        er_log_kv(ER_LOG_INFO, "lifecycle",
                  "provision command ran before: its outcome is reused",
                  "commandId", st->cmd->command_id, "leaseId", dlease->id,
                  (const char *)NULL);
    } else {
        rc = er_lifecycle__journal(st, "provision", dlease->id, env->id, err);
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
        recorded = rec != NULL ? er_lifecycle__jdump(&lc->arena, rec) : NULL;
        json_decref(rec);
        if (recorded == NULL)
            return er_lifecycle__oom(err);
        rc = record_done(lc, st->cmd->command_id, "provision", dlease->id,
                         recorded, err);
        if (rc != 0)
            return rc;
    }
    if (detail[0] == '\0')
        return 0;
    er_lifecycle__fail(
        st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
        "Failed to provision workspace for environment \"%s\" (%s): %s",
        env->name, driver, detail);
    return 1;
}

/* The callback bridge (contract.md 7) of a run on a remote lease whose
 * realize carries hostApiToken: started (or kept) and journaled as
 * operation "bridge" with where it runs, never a token. The agent's
 * variables go into the result. Returns 1 when the result says it failed,
 * 0 (also when there is no bridge to start), or < 0. */
static int start_bridge(struct er_step *st, const struct er_driver_ops *ops,
                        const struct er_driver_env *denv,
                        const struct er_driver_lease *dlease,
                        const struct er_env_row *env, const char *driver,
                        const char *remote_cwd, struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    const struct er_run_command *cmd = st->cmd;
    struct er_bridge_host_req req;
    struct er_err berr;
    json_t *agent_env = NULL;
    json_t *detail = NULL;
    const char *recorded;
    const char *token;
    int rc;

    if (!ops->is_remote || !er_secret_is_set(&cmd->host_api_token) ||
        cmd->heartbeat_run_id == NULL)
        return 0;
    rc = er_lifecycle__journal(st, "bridge", dlease->id, env->id, err);
    if (rc != 0)
        return rc;
    req =
        (struct er_bridge_host_req){ ops,
                                     denv,
                                     dlease,
                                     remote_cwd,
                                     cmd->adapter_type,
                                     &cmd->host_api_token,
                                     cmd->heartbeat_run_id,
                                     st->coords != NULL ? st->coords->partition
                                                        : -1,
                                     0,
                                     cmd->traceparent };
    er_err_clear(&berr);
    er_fault_point("bridge.before");
    if (er_bridge_host_start(&req, &agent_env, &detail, &berr) != 0) {
        if (er_proc_is_cancelled())
            return er_err_set(err, ER_ECANCELED, ER_ERRCLASS_SKIP,
                              "bridge start cancelled");
        er_lifecycle__fail(st, ER_OUTCOME_ERROR,
                           ER_EC_WORKSPACE_REALIZATION_FAILED,
                           "Failed to start the callback bridge for "
                           "environment \"%s\" (%s): %s",
                           env->name, driver, berr.msg);
        return 1;
    }
    er_fault_point("bridge.after");
    token = json_string_value(json_object_get(agent_env, "PAPERCLIP_API_KEY"));
    snprintf(st->bridge_token, sizeof(st->bridge_token), "%s",
             token != NULL ? token : "");
    st->bridge_env = agent_env;
    recorded = er_lifecycle__jdump(&lc->arena, detail);
    json_decref(detail);
    if (recorded == NULL)
        return er_lifecycle__oom(err);
    return record_done(lc, cmd->command_id, "bridge", dlease->id, recorded,
                       err);
}

/* A bridge started for a realize whose result is a failure after all: its
 * journal entry says so (in the outcome's transaction), so that no later
 * owner of the run re-attaches it, and it stops once that commits (its
 * stop runs remote commands: never with the transaction open). */
static int drop_bridge(struct er_step *st, const char *lease_id,
                       struct er_err *err)
{
    if (st->bridge_env == NULL)
        return 0;
    st->lc->bridge_drop = er_arena_strdup(&st->lc->arena, lease_id);
    if (st->lc->bridge_drop == NULL)
        return er_lifecycle__oom(err);
    json_decref(st->bridge_env);
    st->bridge_env = NULL;
    er_wipe(st->bridge_token, sizeof(st->bridge_token));
    return er_store_journal_close(st->lc->store, st->cmd->command_id, "bridge",
                                  lease_id, "failed", NULL, err);
}

int er_lifecycle__realize(struct er_step *st, struct er_err *err)
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
    const char *host_cwd = NULL;
    char real_host[PATH_MAX];
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
    rc = er_store_env_get(lc->store, lease.environment_id, lease.company_id,
                          &lc->arena, &env, err);
    if (rc == ER_ENOTFOUND) {
        /* Deleted under the lease: an instance-scoped schema sets the
         * lease's environment_id to NULL then (ON DELETE SET NULL). */
        er_lifecycle__fail(st, ER_OUTCOME_ERROR, ER_EC_ENVIRONMENT_NOT_FOUND,
                           "The environment of lease \"%s\" no longer "
                           "exists.",
                           lease.id);
        return 0;
    }
    if (rc != 0)
        return rc;
    er_lifecycle__set_env(st, &env);

    meta = er_lifecycle__jparse(lease.metadata_json);
    if (!json_is_object(meta)) {
        json_decref(meta);
        meta = json_object();
    }
    driver = er_lifecycle__jget_str(meta, "driver") != NULL
                 ? er_lifecycle__jget_str(meta, "driver")
                 : env.driver;
    if (strcmp(lease.status, "active") != 0) {
        er_lifecycle__fail(
            st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
            "Failed to realize workspace for environment \"%s\" (%s): "
            "lease \"%s\" is not active (status: %s).",
            env.name, driver, lease.id, lease.status);
        goto out;
    }
    ops = er_driver_find(driver);
    if (ops == NULL || ops->realize == NULL) {
        er_lifecycle__fail(
            st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
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
        rc = er_lifecycle__oom(err);
        goto out;
    }

    /* A local workspace path is untrusted: it must lie under
     * ENVRUN_WORKSPACE_ROOTS once its symlinks are resolved, and the
     * drivers get the resolved path. */
    host_cwd = er_lifecycle__jget_str(ws, "cwd");
    if (host_cwd != NULL) {
        struct er_err perr;

        er_err_clear(&perr);
        if (er_wspath_check(host_cwd, er_driver_workspace_roots(), real_host,
                            sizeof(real_host), &perr) != 0) {
            er_lifecycle__fail(
                st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
                "Failed to realize workspace for environment \"%s\" (%s): "
                "%s",
                env.name, driver, perr.msg);
            goto out;
        }
        if (er_wspath_check_apart(real_host, er_driver_secrets_dir(), &perr) !=
            0) {
            er_lifecycle__fail(
                st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
                "Failed to realize workspace for environment \"%s\" (%s): "
                "%s",
                env.name, driver, perr.msg);
            goto out;
        }
        host_cwd = real_host;
    }
    denv = er_lifecycle__driver_env(&env, config);
    dlease = er_lifecycle__driver_lease(&lease, meta);
    dws =
        (struct er_driver_workspace){ host_cwd,
                                      er_lifecycle__jget_str(meta, "remoteCwd"),
                                      cmd->requested_mode, request };
    if (ops->is_remote) {
        rc = er_lifecycle__journal(st, "realize", lease.id, env.id, err);
        if (rc == 0)
            rc = er_lifecycle__intent_commit(st, err);
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
                      er_lifecycle__jget_str(meta, "remoteCwd"), host_cwd, err);
    if (drc == 0 && prc == 0)
        prc = start_bridge(st, ops, &denv, &dlease, &env, driver,
                           real.cwd != NULL
                               ? real.cwd
                               : er_lifecycle__jget_str(meta, "remoteCwd"),
                           err);
    if (prc < 0) {
        rc = prc;
        goto out;
    }
    if (ops->is_remote) {
        rc = er_lifecycle__outcome_begin(st, err);
        if (rc != 0)
            goto out;
    }
    if (drc != 0) {
        er_lifecycle__fail(
            st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
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
            er_lifecycle__fail(
                st, ER_OUTCOME_ERROR, ER_EC_WORKSPACE_REALIZATION_FAILED,
                "Failed to realize workspace for environment \"%s\" (%s): "
                "lease \"%s\" is not active (status: %s).",
                env.name, driver, lease.id, lease.status);
            goto out;
        }
    }

    /* Step 4: persist the record on the lease and the workspace. */
    json_object_set(meta, "workspaceRealization", real.record);
    text = er_lifecycle__jdump(&lc->arena, meta);
    if (text == NULL) {
        rc = er_lifecycle__oom(err);
        goto out;
    }
    rc = er_store_lease_set_metadata(lc->store, lease.id, text, &lc->arena,
                                     &upd, err);
    if (rc != 0)
        goto out;
    rc = er_lifecycle__lease_event(lc, &upd, err);
    if (rc != 0)
        goto out;
    if (cmd->execution_workspace_id != NULL) {
        patch = json_pack("{s:O, s:O}", "workspaceRealizationRequest", request,
                          "workspaceRealization", real.record);
        text = patch != NULL ? er_lifecycle__jdump(&lc->arena, patch) : NULL;
        if (text == NULL) {
            rc = er_lifecycle__oom(err);
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
    meta = er_lifecycle__jparse(upd.metadata_json);
    dlease.metadata = meta;
    er_err_clear(&derr);
    target = ops->target != NULL
                 ? ops->target(&denv, &dlease, cmd->adapter_type, &derr)
                 : json_null();
    if (target == NULL) {
        er_lifecycle__fail(st, ER_OUTCOME_ERROR,
                           ER_EC_TRANSPORT_RESOLUTION_FAILED,
                           "Failed to resolve execution target for \"%s\": %s",
                           env.name, derr.msg);
        rc = 0;
        goto out;
    }
    st->result =
        json_pack("{s:o, s:O, s:o, s:n}", "lease",
                  er_lifecycle__lease_to_json(&upd), "workspaceRealization",
                  real.record, "executionTarget", target, "bridge");
    target = NULL; /* json_pack "o" took it, even on failure */
    if (st->result == NULL)
        rc = er_lifecycle__oom(err);
out:
    /* A failed result keeps no bridge; a step that failed (to be tried
     * again) keeps it for its next attempt, which finds it serving. */
    if (rc == 0 && st->res.outcome != ER_OUTCOME_OK)
        rc = drop_bridge(st, lease.id, err);
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

/* Re-attach one journaled bridge (see er_lifecycle_bridges_follow) from
 * its realize command. Returns 1 when attached, 0 when it cannot be (a
 * warning says why), < 0 on a failure of the database. */
static int follow_one(struct er_lifecycle *lc, const struct er_bridge_op *op,
                      const struct er_run_command *cmd, struct er_err *err)
{
    struct er_env_row env;
    struct er_lease_row lease;
    struct er_bridge_host_req req;
    struct er_err berr;
    const struct er_driver_ops *ops;
    struct er_driver_env denv;
    struct er_driver_lease dlease;
    json_t *detail = er_lifecycle__jparse(op->detail_json);
    json_t *config = NULL;
    json_t *meta = NULL;
    json_t *agent_env = NULL;
    json_t *detail2 = NULL;
    const char *driver;
    int rc;

    rc = er_store_lease_get(lc->store, op->lease_id, &lc->arena, &lease, err);
    if (rc == 0)
        rc = er_store_env_get(lc->store, lease.environment_id, lease.company_id,
                              &lc->arena, &env, err);
    if (rc != 0)
        goto out;
    config = json_loads(env.config_json, 0, NULL);
    meta = er_lifecycle__jparse(lease.metadata_json);
    if (config == NULL || !json_is_object(meta)) {
        rc = 0;
        goto out;
    }
    driver = er_lifecycle__jget_str(meta, "driver") != NULL
                 ? er_lifecycle__jget_str(meta, "driver")
                 : env.driver;
    ops = er_driver_find(driver);
    if (ops == NULL || strcmp(lease.status, "active") != 0) {
        rc = 0;
        goto out;
    }
    denv = er_lifecycle__driver_env(&env, config);
    dlease = er_lifecycle__driver_lease(&lease, meta);
    req = (struct er_bridge_host_req){
        ops,
        &denv,
        &dlease,
        er_lifecycle__jget_str(detail, "remoteCwd"),
        er_lifecycle__jget_str(detail, "adapter"),
        &cmd->host_api_token,
        cmd->heartbeat_run_id,
        op->partition,
        (int)json_integer_value(json_object_get(detail, "port")),
        cmd->traceparent,
    };
    er_err_clear(&berr);
    if (er_bridge_host_start(&req, &agent_env, &detail2, &berr) != 0) {
        er_log_kv(ER_LOG_WARN, "bridge", "callback bridge not re-attached",
                  "leaseId", op->lease_id, "error", berr.msg,
                  (const char *)NULL);
        rc = 0;
        goto out;
    }
    rc = 1;
out:
    json_decref(agent_env);
    json_decref(detail2);
    json_decref(meta);
    json_decref(config);
    json_decref(detail);
    return rc;
}

int er_lifecycle_bridges_follow(struct er_lifecycle *lc, const char *owner,
                                er_lifecycle_fetch_fn *fetch, void *fetch_arg,
                                int *attached, struct er_err *err)
{
    struct er_bridge_op *ops = NULL;
    struct er_buf value;
    size_t cnt = 0;
    size_t i;
    int rc;

    *attached = 0;
    er_arena_reset(&lc->arena);
    rc = er_store_journal_bridges_owned(lc->store, lc->topic_commands, owner,
                                        &lc->arena, &ops, &cnt, err);
    er_buf_init(&value, ER_CMD_VALUE_MAX_BYTES);
    for (i = 0; rc == 0 && i < cnt; i++) {
        struct er_run_command cmd;
        struct er_err ferr;
        const char *why = NULL;

        if (er_bridge_host_has(ops[i].lease_id))
            continue;
        memset(&cmd, 0, sizeof(cmd));
        er_err_clear(&ferr);
        if (fetch(fetch_arg, lc->topic_commands, ops[i].partition,
                  ops[i].offset, &value, &ferr) != 0)
            why = ferr.msg;
        else if (er_registry_command_decode(value.data, value.len, &cmd,
                                            &ferr) != 0)
            why = ferr.cls == ER_ERRCLASS_RETRY
                      ? ferr.msg
                      : "its realize command no longer decodes";
        else if (cmd.kind != ER_CMD_REALIZE ||
                 strcmp(cmd.command_id, ops[i].command_id) != 0 ||
                 strcmp(cmd.company_id, ops[i].company_id) != 0)
            why = "the journaled offset holds another command";
        else if (!er_secret_is_set(&cmd.host_api_token) ||
                 cmd.heartbeat_run_id == NULL)
            why = "its realize command carries no hostApiToken";
        if (why != NULL) {
            er_log_kv(ER_LOG_WARN, "bridge", "callback bridge not re-attached",
                      "leaseId", ops[i].lease_id, "error", why,
                      (const char *)NULL);
        } else {
            rc = follow_one(lc, &ops[i], &cmd, err);
            if (rc > 0)
                (*attached)++;
            rc = rc > 0 ? 0 : rc;
        }
        er_codec_command_fini(&cmd);
    }
    er_buf_fini(&value);
    er_arena_reset(&lc->arena);
    return rc;
}
