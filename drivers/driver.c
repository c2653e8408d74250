/* driver: the driver registry and helpers shared by built-in drivers.
 * Thread-safe (read-only tables). */
#include "drivers/driver.h"

#include <stdio.h>
#include <string.h>

static const struct er_driver_ops *const drivers[] = {
    &er_local_driver,
    &er_ssh_driver,
    &er_sandbox_driver,
};

/* domain.md 3.6: the adapters that can run in a remote environment (the
 * PR-era list and the later additions). */
static const char *const remote_adapters[] = {
    "codex_local", "claude_local", "gemini_local", "opencode_local",
    "pi_local",    "cursor",       "acpx_local",   "kimi_local",
};

bool er_driver_is_remote_adapter(const char *adapter_type)
{
    size_t i;

    for (i = 0; adapter_type != NULL &&
                i < sizeof(remote_adapters) / sizeof(remote_adapters[0]);
         i++) {
        if (strcmp(adapter_type, remote_adapters[i]) == 0)
            return true;
    }
    return false;
}

const struct er_driver_ops *er_driver_find(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++) {
        if (strcmp(drivers[i]->name, name) == 0)
            return drivers[i];
    }
    return NULL;
}

void er_driver_sweep_all(er_driver_in_use_fn *is_in_use, void *arg)
{
    size_t i;

    for (i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++) {
        if (drivers[i]->sweep != NULL)
            drivers[i]->sweep(is_in_use, arg);
    }
}

bool er_driver_lease_tag(const char *lease_id,
                         char tag[ER_DRIVER_LEASE_TAG_LEN + 1])
{
    size_t n = 0;
    size_t i;

    tag[0] = '\0';
    if (lease_id == NULL || !er_uuid_is_valid(lease_id, strlen(lease_id)))
        return false;
    for (i = 0; lease_id[i] != '\0' && n < ER_DRIVER_LEASE_TAG_LEN; i++) {
        char c = lease_id[i];

        if (c != '-')
            tag[n++] = c >= 'A' && c <= 'F' ? (char)(c - 'A' + 'a') : c;
    }
    tag[n] = '\0';
    return true;
}

static char secrets_dir[4096];

void er_driver_setup(const char *dir)
{
    snprintf(secrets_dir, sizeof(secrets_dir), "%s", dir != NULL ? dir : "");
}

const char *er_driver_secrets_dir(void)
{
    return secrets_dir;
}

static char workspace_roots[4096];

void er_driver_set_workspace_roots(const char *roots)
{
    snprintf(workspace_roots, sizeof(workspace_roots), "%s",
             roots != NULL ? roots : "");
}

const char *er_driver_workspace_roots(void)
{
    return workspace_roots;
}

static char installation[40];

void er_driver_set_installation(const char *id)
{
    snprintf(installation, sizeof(installation), "%s", id != NULL ? id : "");
}

const char *er_driver_installation(void)
{
    return installation;
}

void er_driver_exec_result_fini(struct er_driver_exec_result *res)
{
    er_free(res->out);
    res->out = NULL;
    er_free(res->err_text);
    res->err_text = NULL;
}

void er_driver_acquired_fini(struct er_driver_acquired *acq)
{
    er_free(acq->provider_lease_id);
    acq->provider_lease_id = NULL;
    json_decref(acq->metadata);
    acq->metadata = NULL;
}

void er_driver_realized_fini(struct er_driver_realized *res)
{
    er_free(res->cwd);
    res->cwd = NULL;
    json_decref(res->record);
    res->record = NULL;
}

/* A string member of obj, or JSON null. */
static json_t *member_or_null(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);

    return json_is_string(v) ? json_incref(v) : json_null();
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

json_t *er_driver_realization_record(const struct er_driver_env *env,
                                     const struct er_driver_lease *lease,
                                     const struct er_driver_workspace *ws,
                                     const char *remote_path,
                                     const char *sync_strategy,
                                     const char *sync_prepare,
                                     const char *sync_back, const char *summary)
{
    return er_driver_realization_record_remote(
        env, lease, ws, remote_path, NULL, sync_strategy, sync_prepare,
        sync_back, summary);
}

/* Add the connection facts to rec.remote; rec is freed on failure. */
static json_t *add_remote(json_t *rec, const struct er_driver_remote *remote)
{
    json_t *obj = json_object_get(rec, "remote");
    int rc = 0;

    if (remote->host != NULL)
        rc |= json_object_set_new(obj, "host", json_string(remote->host));
    if (remote->port != 0)
        rc |= json_object_set_new(obj, "port", json_integer(remote->port));
    if (remote->username != NULL)
        rc |=
            json_object_set_new(obj, "username", json_string(remote->username));
    if (rc != 0) {
        json_decref(rec);
        return NULL;
    }
    return rec;
}

json_t *er_driver_realization_record_remote(
    const struct er_driver_env *env, const struct er_driver_lease *lease,
    const struct er_driver_workspace *ws, const char *remote_path,
    const struct er_driver_remote *remote, const char *sync_strategy,
    const char *sync_prepare, const char *sync_back, const char *summary)
{
    const json_t *source = json_object_get(ws->request, "source");
    const json_t *overlay = json_object_get(ws->request, "runtimeOverlay");
    const char *provider =
        lease->provider != NULL ? lease->provider : env->driver;
    json_t *rec = NULL;

    rec = json_pack(
        "{s:i, s:s, s:s, s:s, s:s, s:o,"
        " s:{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o},"
        " s:{s:o}, s:{s:s, s:s, s:s}, s:{s:o},"
        " s:{s:o, s:o, s:o, s:o, s:o, s:o, s:o,"
        "    s:{s:o, s:o, s:s, s:s, s:o}},"
        " s:s}",
        "version", 1, "transport", env->driver, "provider", provider,
        "environmentId", env->id, "leaseId", lease->id, "providerLeaseId",
        str_or_null(lease->provider_lease_id),
        /* local */
        "local", "path", str_or_null(ws->local_path), "source",
        member_or_null(source, "kind"), "strategy",
        member_or_null(source, "strategy"), "projectId",
        member_or_null(source, "projectId"), "projectWorkspaceId",
        member_or_null(source, "projectWorkspaceId"), "repoUrl",
        member_or_null(source, "repoUrl"), "repoRef",
        member_or_null(source, "repoRef"), "branchName",
        member_or_null(source, "branchName"), "worktreePath",
        member_or_null(source, "worktreePath"),
        /* remote, sync, bootstrap */
        "remote", "path", str_or_null(remote_path), "sync", "strategy",
        sync_strategy, "prepare", sync_prepare, "syncBack", sync_back,
        "bootstrap", "command", member_or_null(overlay, "provisionCommand"),
        /* rebuild */
        "rebuild", "executionWorkspaceId",
        member_or_null(ws->request, "executionWorkspaceId"), "mode",
        str_or_null(ws->mode), "repoUrl", member_or_null(source, "repoUrl"),
        "repoRef", member_or_null(source, "repoRef"), "localPath",
        str_or_null(ws->local_path), "remotePath", str_or_null(remote_path),
        "providerLeaseId", str_or_null(lease->provider_lease_id), "metadata",
        "source", source != NULL ? json_deep_copy(source) : json_null(),
        "runtimeOverlay",
        overlay != NULL ? json_deep_copy(overlay) : json_null(),
        "environmentDriver", env->driver, "provider", provider,
        "providerMetadata", json_null(),
        /* summary */
        "summary", summary);
    if (rec != NULL && remote != NULL)
        rec = add_remote(rec, remote);
    return rec;
}
