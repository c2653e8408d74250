/* local: the local driver (domain.md 4.1). The adapter runs on the host, so
 * acquire records the lease only, realize uses the host path in place and
 * release is a status update. Thread-safe (no state). */
#include <stdio.h>
#include <string.h>

#include "drivers/driver.h"

static int local_acquire(const struct er_driver_env *env,
                         const struct er_driver_lease_ctx *ctx,
                         struct er_driver_acquired *out, struct er_err *err)
{
    const char *mode = ctx->execution_workspace_mode;

    out->lease_policy = "ephemeral";
    out->provider = "local";
    out->provider_lease_id = NULL;
    out->expires_at_ms = -1;
    out->metadata =
        json_pack("{s:s, s:o}", "driver", env->driver, "executionWorkspaceMode",
                  mode != NULL ? json_string(mode) : json_null());
    if (out->metadata == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    return 0;
}

static int local_realize(const struct er_driver_env *env,
                         const struct er_driver_lease *lease,
                         const struct er_driver_workspace *ws,
                         struct er_driver_realized *out, struct er_err *err)
{
    const char *cwd = ws->local_path != NULL ? ws->local_path : ws->remote_path;
    char summary[1024];

    snprintf(summary, sizeof(summary), "Local workspace realized at %s.",
             cwd != NULL ? cwd : "/");
    out->record = er_driver_realization_record(
        env, lease, ws, NULL, "none",
        "The workspace is used in place on the host.",
        "Nothing to sync back: the run works in the host workspace.", summary);
    out->cwd = er_strdup(cwd != NULL ? cwd : "/");
    if (out->record == NULL || out->cwd == NULL) {
        er_driver_realized_fini(out);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    }
    return 0;
}

static int local_release(const struct er_driver_env *env,
                         const struct er_driver_lease *lease,
                         const char *status, struct er_driver_released *out,
                         struct er_err *err)
{
    (void)env;
    (void)lease;
    (void)err;
    /* Status update only; cleanup_status and failure_reason stay as they
     * are (domain.md 2.5 rules). */
    out->status = status;
    out->cleanup_status = NULL;
    out->failure_reason = NULL;
    return 0;
}

/* {kind: local, environmentId, leaseId} for any adapter (3.6). */
static json_t *local_target(const struct er_driver_env *env,
                            const struct er_driver_lease *lease,
                            const char *adapter_type, struct er_err *err)
{
    json_t *t;

    (void)adapter_type;
    if (lease == NULL)
        return json_null(); /* no transport spec at acquire (3.2 step 4) */
    t = json_pack("{s:s, s:s, s:s}", "kind", "local", "environmentId", env->id,
                  "leaseId", lease->id);
    if (t == NULL)
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    return t;
}

const struct er_driver_ops er_local_driver = {
    .name = "local",
    .acquire = local_acquire,
    .realize = local_realize,
    .release = local_release,
    .execute = NULL, /* provision commands never run for local (3.4) */
    .target = local_target,
};
