/* sandbox_plugin: the sandbox driver's operations for a provider served by
 * a provider plugin (domain.md 4.3 step 3, upstream.md A10): the params of
 * each environment* call, the lease metadata, resume of a parked machine
 * (3.3.3), and the workspace upload through the plugin (its native sync
 * when it offers one, else an archive through its exec channel). The calls
 * go through plugin_host.c. Thread-safe: no global state. */
#include <stdio.h>
#include <string.h>

#include "drivers/sandbox_int.h"

#define FAC "sandbox"

/* The archive that crosses the exec channel as base64 text (domain.md
 * 4.3 "Upload"): a bigger workspace needs a provider with native sync. */
#define UPLOAD_MAX_BYTES  (32u * 1024u * 1024u)
#define UPLOAD_TIMEOUT_MS 300000
#define RUNTIME_DIR       ".paperclip-runtime/envrun"

static int oom(struct er_err *err)
{
    return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
}

static const char *jstr(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

/* The RPC timeout of the lease calls (upstream.md A6): the larger of
 * timeoutMs and bridgeRequestTimeoutMs plus the overhead, else the
 * default (0). */
static int64_t lease_timeout(const struct er_sandbox_config *cfg)
{
    int64_t t = cfg->timeout_ms > cfg->bridge_timeout_ms
                    ? cfg->timeout_ms
                    : cfg->bridge_timeout_ms;

    return t > 0 ? t + ER_PLUGIN_OVERHEAD_MS : 0;
}

static bool is_secret_ref(const json_t *v)
{
    const char *type = jstr(v, "type");

    return json_is_object(v) && type != NULL && strcmp(type, "secret_ref") == 0;
}

/* Keys the host owns in lease metadata; they are not provider config
 * (upstream.md A9 "Config envelope"). */
static const char *const host_keys[] = {
    "driver",
    "executionWorkspaceMode",
    "pluginId",
    "pluginKey",
    "providerMetadata",
    "shellCommand",
    "sandboxProviderPlugin",
    "provider",
};

static bool is_host_key(const char *key)
{
    size_t i;

    for (i = 0; i < sizeof(host_keys) / sizeof(host_keys[0]); i++) {
        if (strcmp(key, host_keys[i]) == 0)
            return true;
    }
    return false;
}

/* The config an RPC gets: source (the environment config, or a lease's
 * metadata) without the host's keys and `provider`, each secret reference
 * resolved to its value for company_id (upstream.md A9: plugins receive
 * plaintext). Each value is noted with the plugin host first, so that
 * nothing the plugin of source's `provider` says carries it back out. A
 * new object, or NULL with err set. */
static json_t *rpc_config(const json_t *source, const char *company_id,
                          struct er_err *err)
{
    const char *provider = jstr(source, "provider");
    json_t *out = json_object();
    const char *key;
    json_t *v;

    if (out == NULL) {
        oom(err);
        return NULL;
    }
    json_object_foreach((json_t *)(uintptr_t)source, key, v)
    {
        struct er_secret secret = { NULL, 0 };
        json_t *value;
        int rc;

        if (is_host_key(key))
            continue;
        if (!is_secret_ref(v)) {
            if (json_object_set(out, key, v) != 0)
                goto nomem;
            continue;
        }
        rc = er_secretref_resolve(v, company_id, key, &secret, err);
        if (rc != 0) {
            json_decref(out);
            return NULL;
        }
        value = json_stringn(secret.value, secret.len);
        rc = provider != NULL && value != NULL
                 ? er_plugin_note_secret(provider, secret.value, secret.len)
                 : 0;
        er_secret_fini(&secret);
        if (value == NULL) {
            /* Not UTF-8 text: a plugin takes strings only. */
            json_decref(out);
            er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                       "the secret of %.64s is not UTF-8 text", key);
            return NULL;
        }
        if (provider == NULL || rc != 0) {
            /* Never a value the host could not redact. */
            json_decref(value);
            json_decref(out);
            if (rc == ER_ENOMEM)
                oom(err);
            else
                er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                           "the secret of %.64s is not sent: %s", key,
                           provider == NULL
                               ? "the config names no provider"
                               : "the config holds too many secrets");
            return NULL;
        }
        if (json_object_set_new(out, key, value) != 0)
            goto nomem;
    }
    return out;
nomem:
    json_decref(out);
    oom(err);
    return NULL;
}

/* The params every environment* call but validation carries. */
static json_t *base_params(const struct er_driver_env *env,
                           const char *provider, const char *issue_id,
                           json_t *config /* consumed */)
{
    json_t *p;

    if (config == NULL)
        return NULL;
    p = json_pack("{s:s, s:s, s:s, s:o, s:o}", "driverKey", provider,
                  "companyId", env->company_id, "environmentId", env->id,
                  "issueId", str_or_null(issue_id), "config", config);
    return p;
}

/* Call method; on an RPC failure err->msg is the plugin's message. */
static int call(const char *provider, const char *method, json_t *params,
                int64_t timeout_ms, json_t **result, struct er_err *err)
{
    struct er_plugin_reply reply = { NULL, 0 };
    int rc;

    *result = NULL;
    if (params == NULL)
        return oom(err);
    rc = er_plugin_call(provider, method, params, timeout_ms, &reply, err);
    json_decref(params);
    if (rc == 0) {
        *result = reply.result;
        reply.result = NULL;
    }
    er_plugin_reply_fini(&reply);
    return rc;
}

/* ms since the epoch of an ISO-8601 time ("2026-11-30T12:00:00.000Z",
 * or with an offset), or -1. */
static int64_t parse_iso(const char *s)
{
    int y, mo, d, h, mi, sec, n = 0;
    int64_t days;
    int64_t ms = 0;
    const char *p;

    if (s == NULL ||
        sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec,
               &n) != 6 ||
        mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    p = s + n;
    if (*p == '.') {
        int digits = 0;

        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
        }
        for (; digits < 3; digits++)
            ms *= 10;
    }
    /* days from civil (Howard Hinnant's algorithm) */
    {
        int yy = y - (mo <= 2);
        int era = (yy >= 0 ? yy : yy - 399) / 400;
        int yoe = yy - era * 400;
        int doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

        days = (int64_t)era * 146097 + doe - 719468;
    }
    ms += ((days * 24 + h) * 60 + mi) * 60000LL + sec * 1000LL;
    if (*p == 'Z' && p[1] == '\0')
        return ms;
    if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
        int oh = 0, om = 0;

        if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2)
            return -1;
        return ms - (*p == '+' ? 1 : -1) * ((oh * 60 + om) * 60000LL);
    }
    return -1;
}

/* ================================================================
 * acquire, with resume of a parked machine (3.3.3)
 * ================================================================ */

/* matchesReusableLease of a plugin provider (3.3.3, PR-era): the same
 * provider, reuseLease true in the metadata, and every config key but
 * provider and reuseLease equal to the metadata's value. */
static bool plugin_matches(const json_t *config, const char *provider,
                           const struct er_driver_lease *lease)
{
    const char *key;
    json_t *v;

    if (lease->provider == NULL || strcmp(lease->provider, provider) != 0 ||
        lease->provider_lease_id == NULL ||
        !json_is_true(json_object_get(lease->metadata, "reuseLease")))
        return false;
    json_object_foreach((json_t *)(uintptr_t)config, key, v)
    {
        const json_t *m;

        if (strcmp(key, "provider") == 0 || strcmp(key, "reuseLease") == 0)
            continue;
        m = json_object_get(lease->metadata, key);
        if (m == NULL || !json_equal(m, v))
            return false;
    }
    return true;
}

/* Try the parked machines in turn; the first the plugin resumes wins.
 * *result is the plugin's lease object, or NULL when none resumed (a
 * failed resume is not an error: a fresh acquire follows). */
static void try_resume(const struct er_driver_env *env,
                       const struct er_sandbox_config *cfg,
                       const struct er_driver_lease_ctx *ctx, json_t **result)
{
    size_t i;

    *result = NULL;
    for (i = 0; i < ctx->reusable_cnt && *result == NULL; i++) {
        const struct er_driver_lease *cand = &ctx->reusable[i];
        struct er_err rerr;
        json_t *params;
        json_t *res = NULL;
        const char *id;

        if (!plugin_matches(env->config, cfg->provider, cand))
            continue;
        er_err_clear(&rerr);
        params = base_params(env, cfg->provider, ctx->issue_id,
                             rpc_config(env->config, env->company_id, &rerr));
        if (params != NULL &&
            json_object_update_new(
                params, json_pack("{s:s, s:O}", "providerLeaseId",
                                  cand->provider_lease_id, "leaseMetadata",
                                  cand->metadata)) != 0) {
            json_decref(params);
            params = NULL;
        }
        if (call(cfg->provider, "environmentResumeLease", params,
                 lease_timeout(cfg), &res, &rerr) != 0) {
            er_log_kv(ER_LOG_INFO, FAC,
                      "a parked sandbox was not resumed: a new one is "
                      "acquired",
                      "provider", cfg->provider, "leaseId", cand->id,
                      (const char *)NULL);
            continue;
        }
        id = jstr(res, "providerLeaseId");
        if (id == NULL || id[0] == '\0') {
            json_decref(res); /* "not resumable" */
            continue;
        }
        *result = res;
    }
}

/* Ask the plugin to destroy what it just made (#4452); best effort. */
static void destroy_made(const struct er_driver_env *env,
                         const struct er_sandbox_config *cfg,
                         const struct er_driver_lease_ctx *ctx,
                         const char *provider_lease_id, const json_t *meta)
{
    struct er_err derr;
    json_t *params;
    json_t *res = NULL;

    er_err_clear(&derr);
    params = base_params(env, cfg->provider, ctx->issue_id,
                         rpc_config(env->config, env->company_id, &derr));
    if (params != NULL &&
        json_object_update_new(
            params, json_pack("{s:s, s:O}", "providerLeaseId",
                              provider_lease_id, "leaseMetadata",
                              meta != NULL ? meta : json_object())) != 0) {
        json_decref(params);
        params = NULL;
    }
    if (call(cfg->provider, "environmentDestroyLease", params,
             lease_timeout(cfg), &res, &derr) != 0)
        er_log_kv(ER_LOG_WARN, FAC,
                  "a sandbox made by a failed acquire was not destroyed",
                  "provider", cfg->provider, "providerLeaseId",
                  provider_lease_id, (const char *)NULL);
    json_decref(res);
}

/* The lease metadata (4.3 step 3): the host's keys, the stored config
 * (secret references, never values), then the provider's metadata without
 * the members the config holds as secrets. */
static json_t *lease_metadata(const struct er_driver_env *env,
                              const struct er_sandbox_config *cfg,
                              const struct er_driver_lease_ctx *ctx,
                              const char *plugin_key, const json_t *pmeta,
                              bool is_resumed)
{
    json_t *meta = json_pack(
        "{s:s, s:o, s:s, s:b}", "driver", "sandbox", "executionWorkspaceMode",
        str_or_null(ctx->execution_workspace_mode), "pluginKey", plugin_key,
        "sandboxProviderPlugin", 1);
    const char *key;
    json_t *v;

    if (meta == NULL ||
        json_object_update(meta, (json_t *)(uintptr_t)env->config) != 0)
        goto nomem;
    /* Members the config holds as secrets, and any member holding a value
     * resolved from one, are dropped: the metadata is stored, published
     * and sent back to the plugin. */
    json_object_foreach((json_t *)(uintptr_t)pmeta, key, v)
    {
        json_t *one = json_pack("{s:O}", key, v);
        bool is_held =
            one == NULL || er_plugin_json_holds_secret(cfg->provider, one);

        json_decref(one);
        if (is_host_key(key) ||
            is_secret_ref(json_object_get(env->config, key)) || is_held)
            continue;
        if (json_object_set(meta, key, v) != 0)
            goto nomem;
    }
    if (json_object_set_new(meta, "provider", json_string(cfg->provider)) != 0)
        goto nomem;
    if (is_resumed &&
        json_object_set_new(meta, "resumedLease", json_true()) != 0)
        goto nomem;
    return meta;
nomem:
    json_decref(meta);
    return NULL;
}

int er_sandbox_plugin_acquire(const struct er_driver_env *env,
                              const struct er_sandbox_config *cfg,
                              const struct er_driver_lease_ctx *ctx,
                              struct er_driver_acquired *out,
                              struct er_err *err)
{
    const char *plugin_key = NULL;
    json_t *result = NULL;
    json_t *params;
    const char *id;
    const json_t *pmeta;
    bool can_reuse;
    bool is_resumed;
    char run_id[37];
    int rc;

    if (!er_plugin_host_has_provider(cfg->provider, &plugin_key))
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                          "Sandbox provider \"%s\" is not registered as a "
                          "built-in provider and no matching plugin is "
                          "available.",
                          cfg->provider);
    /* Newer hosts (A9): reusable only with resume, release and destroy. */
    can_reuse =
        er_plugin_host_supports(cfg->provider, "environmentResumeLease") &&
        er_plugin_host_supports(cfg->provider, "environmentReleaseLease") &&
        er_plugin_host_supports(cfg->provider, "environmentDestroyLease");
    out->lease_policy = er_sandbox_policy(cfg, ctx, can_reuse);
    if (strcmp(out->lease_policy, "reuse_by_environment") == 0)
        try_resume(env, cfg, ctx, &result);
    is_resumed = result != NULL;
    if (!is_resumed) {
        if (ctx->heartbeat_run_id != NULL)
            snprintf(run_id, sizeof(run_id), "%s", ctx->heartbeat_run_id);
        else if (er_uuid_v4(run_id) != 0)
            return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                              "no random bytes for an id");
        params = base_params(env, cfg->provider, ctx->issue_id,
                             rpc_config(env->config, env->company_id, err));
        if (params == NULL)
            return err->code != 0 ? err->code : oom(err);
        /* agentId, executionWorkspaceId and adapterType pick the runtime
         * image (#9950). */
        if (json_object_update_new(
                params,
                json_pack("{s:s, s:o, s:o, s:o, s:o}", "runId", run_id,
                          "workspaceMode",
                          str_or_null(ctx->execution_workspace_mode), "agentId",
                          str_or_null(ctx->agent_id), "executionWorkspaceId",
                          str_or_null(ctx->execution_workspace_id),
                          "adapterType", str_or_null(ctx->adapter_type))) !=
            0) {
            json_decref(params);
            return oom(err);
        }
        /* The provider bounds the sandbox's life at it and returns the
         * real expiry; one that cannot returns none (upstream.md C5), and
         * the lifecycle's cap has the reaper release the lease then. */
        if (ctx->requested_expires_at_ms > 0) {
            char iso[32];

            er_time_iso(ctx->requested_expires_at_ms, iso);
            if (json_object_set_new(params, "requestedExpiresAt",
                                    json_string(iso)) != 0) {
                json_decref(params);
                return oom(err);
            }
        }
        rc = call(cfg->provider, "environmentAcquireLease", params,
                  lease_timeout(cfg), &result, err);
        if (rc != 0)
            return rc;
    }
    id = jstr(result, "providerLeaseId");
    pmeta = json_object_get(result, "metadata");
    if (id == NULL || id[0] == '\0') {
        json_decref(result);
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "Sandbox provider \"%s\" returned no provider "
                          "lease id.",
                          cfg->provider);
    }
    if (er_plugin_json_holds_secret(
            cfg->provider, json_object_get(result, "providerLeaseId"))) {
        /* Never stored or published: the machine is given up. */
        if (!is_resumed)
            destroy_made(env, cfg, ctx, id, pmeta);
        json_decref(result);
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "Sandbox provider \"%s\" returned a provider "
                          "lease id that holds a secret of its config.",
                          cfg->provider);
    }
    out->expires_at_ms = parse_iso(jstr(result, "expiresAt"));
    out->provider_lease_id = er_strdup(id);
    out->metadata =
        lease_metadata(env, cfg, ctx, plugin_key,
                       json_is_object(pmeta) ? pmeta : NULL, is_resumed);
    /* The provider key lives in the metadata, as long as out does. */
    out->provider = jstr(out->metadata, "provider");
    if (out->provider_lease_id == NULL || out->provider == NULL) {
        if (!is_resumed)
            destroy_made(env, cfg, ctx, id, pmeta);
        json_decref(result);
        er_driver_acquired_fini(out);
        return oom(err);
    }
    json_decref(result);
    return 0;
}

/* ================================================================
 * calls on a lease
 * ================================================================ */

/* The config for a release or destroy: rebuilt from the lease's metadata
 * first, so a changed or deleted environment config still allows cleanup
 * (4.3 Release step 2), else the environment's. */
static json_t *cleanup_rpc_config(const struct er_driver_env *env,
                                  const struct er_driver_lease *lease,
                                  struct er_err *err)
{
    const json_t *src =
        json_object_size(lease->metadata) > 0 ? lease->metadata : env->config;

    return rpc_config(src, env->company_id, err);
}

/* The PluginEnvironmentLease object of a lease (A10). */
static json_t *lease_object(const struct er_driver_lease *lease)
{
    return json_pack("{s:o, s:O, s:n}", "providerLeaseId",
                     str_or_null(lease->provider_lease_id), "metadata",
                     lease->metadata, "expiresAt");
}

/* base params (with the environment's config) plus the lease object:
 * realize, execute, sync. */
static json_t *lease_params(const struct er_driver_env *env,
                            const struct er_driver_lease *lease,
                            const char *provider, struct er_err *err)
{
    json_t *params = base_params(env, provider, NULL,
                                 rpc_config(env->config, env->company_id, err));

    if (params != NULL &&
        json_object_set_new(params, "lease", lease_object(lease)) != 0) {
        json_decref(params);
        params = NULL;
    }
    return params;
}

/* The provider of a plugin lease: its metadata's, else the row's. */
static const char *lease_provider(const struct er_driver_lease *lease)
{
    const char *p = jstr(lease->metadata, "provider");

    return p != NULL ? p : lease->provider;
}

static int64_t config_timeout(const struct er_driver_env *env)
{
    struct er_sandbox_config cfg;
    struct er_err e;

    er_err_clear(&e);
    if (er_sandbox_config_parse(env->config, &cfg, &e) != 0)
        return 0;
    return lease_timeout(&cfg);
}

int er_sandbox_plugin_release(const struct er_driver_env *env,
                              const struct er_driver_lease *lease,
                              const char *status,
                              struct er_driver_released *out,
                              struct er_err *err)
{
    const char *provider = lease_provider(lease);
    bool is_destroy = strcmp(status, "expired") == 0 &&
                      lease->lease_policy != NULL &&
                      strcmp(lease->lease_policy, "reuse_by_environment") == 0;
    const char *method =
        is_destroy ? "environmentDestroyLease" : "environmentReleaseLease";
    struct er_err rerr;
    json_t *params;
    json_t *res = NULL;
    int rc;

    (void)err;
    er_sandbox_final_status(lease, status, out);
    out->cleanup_status = "success";
    if (lease->provider_lease_id == NULL || provider == NULL)
        return 0; /* nothing was made (E2B: no provider id, nothing) */
    er_err_clear(&rerr);
    params =
        base_params(env, provider, NULL, cleanup_rpc_config(env, lease, &rerr));
    if (params != NULL &&
        json_object_update_new(
            params,
            json_pack("{s:s, s:O}", "providerLeaseId", lease->provider_lease_id,
                      "leaseMetadata", lease->metadata)) != 0) {
        json_decref(params);
        params = NULL;
    }
    rc = params != NULL
             ? call(provider, method, params, config_timeout(env), &res, &rerr)
             : ER_EDRIVER;
    json_decref(res);
    if (rc != 0) {
        /* Never the plugin's text in the log: provider errors can carry
         * credentials (upstream.md C2). */
        er_log_kv(ER_LOG_WARN, FAC, "a plugin sandbox was not released",
                  "leaseId", lease->id, "provider", provider, "method", method,
                  (const char *)NULL);
        out->cleanup_status = "failed";
    }
    return 0;
}

/* Fill out from an environmentExecute result (A10), its output scrubbed of
 * the secrets the plugin was given (it ends up in provision failure
 * messages). */
static int exec_result(const char *provider, const json_t *res, size_t cap,
                       struct er_driver_exec_result *out, struct er_err *err)
{
    const json_t *code = json_object_get(res, "exitCode");
    const char *sig = jstr(res, "signal");
    char *so = NULL;
    char *se = NULL;
    size_t so_len;
    size_t se_len;
    int rc = 0;

    if (!json_is_object(res))
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "the provider's execute result is not an object");
    so = er_plugin_scrub(
        provider, jstr(res, "stdout") != NULL ? jstr(res, "stdout") : "");
    se = er_plugin_scrub(
        provider, jstr(res, "stderr") != NULL ? jstr(res, "stderr") : "");
    if (so == NULL || se == NULL) {
        rc = oom(err);
        goto out;
    }
    so_len = strlen(so);
    se_len = strlen(se);
    out->exit_code = json_is_integer(code) ? (int)json_integer_value(code) : -1;
    snprintf(out->signal, sizeof(out->signal), "%s", sig != NULL ? sig : "");
    out->is_timed_out = json_is_true(json_object_get(res, "timedOut"));
    if (so_len > cap)
        so_len = cap;
    if (se_len > cap)
        se_len = cap;
    out->out = er_malloc(so_len + 1);
    out->err_text = er_malloc(se_len + 1);
    if (out->out == NULL || out->err_text == NULL) {
        er_driver_exec_result_fini(out);
        rc = oom(err);
        goto out;
    }
    if (so_len > 0)
        memcpy(out->out, so, so_len);
    out->out[so_len] = '\0';
    out->out_len = so_len;
    if (se_len > 0)
        memcpy(out->err_text, se, se_len);
    out->err_text[se_len] = '\0';
    out->err_len = se_len;
out:
    er_free(so);
    er_free(se);
    return rc;
}

/* One environmentExecute; bypass_session for commands outside the run's
 * traced work (provision, upload: A10). */
static int plugin_exec(const struct er_driver_env *env,
                       const struct er_driver_lease *lease,
                       const struct er_driver_exec *req, bool bypass_session,
                       struct er_driver_exec_result *out, struct er_err *err)
{
    const char *provider = lease_provider(lease);
    const char *cwd =
        req->cwd != NULL ? req->cwd : jstr(lease->metadata, "remoteCwd");
    json_t *params;
    json_t *args = json_array();
    json_t *envo = json_object();
    json_t *res = NULL;
    size_t i;
    int rc;

    memset(out, 0, sizeof(*out));
    out->exit_code = -1;
    if (provider == NULL) {
        json_decref(args);
        json_decref(envo);
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the lease names no provider");
    }
    for (i = 0; req->args != NULL && req->args[i] != NULL; i++)
        json_array_append_new(args, json_string(req->args[i]));
    for (i = 0; req->env != NULL && req->env[i] != NULL; i++) {
        const char *eq = strchr(req->env[i], '=');

        if (eq != NULL) {
            char key[256];

            snprintf(key, sizeof(key), "%.*s", (int)(eq - req->env[i]),
                     req->env[i]);
            json_object_set_new(envo, key, json_string(eq + 1));
        }
    }
    params = lease_params(env, lease, provider, err);
    if (params == NULL) {
        json_decref(args);
        json_decref(envo);
        return err->code != 0 ? err->code : oom(err);
    }
    rc = json_object_update_new(
        params, json_pack("{s:s, s:o, s:o, s:o, s:o, s:I, s:b}", "command",
                          req->command, "args", args, "cwd", str_or_null(cwd),
                          "env", envo, "stdin",
                          req->stdin_data != NULL
                              ? json_stringn(req->stdin_data, req->stdin_len)
                              : json_null(),
                          "timeoutMs", (json_int_t)req->timeout_ms,
                          "bypassSession", bypass_session));
    if (rc != 0) {
        json_decref(params);
        return oom(err);
    }
    rc = call(provider, "environmentExecute", params,
              req->timeout_ms + ER_PLUGIN_OVERHEAD_MS, &res, err);
    if (rc == 0)
        rc = exec_result(provider, res,
                         req->max_output_bytes > 0 ? req->max_output_bytes
                                                   : ER_PROC_DEFAULT_MAX_OUTPUT,
                         out, err);
    json_decref(res);
    return rc;
}

int er_sandbox_plugin_execute(const struct er_driver_env *env,
                              const struct er_driver_lease *lease,
                              const struct er_driver_exec *req,
                              struct er_driver_exec_result *out,
                              struct er_err *err)
{
    return plugin_exec(env, lease, req, true, out, err);
}

/* ================================================================
 * realize: the plugin's realize, then the workspace upload
 * ================================================================ */

/* The archive-through-exec upload of domain.md 4.3: the workspace as a tar
 * archive in base64 on the command's stdin, written to the runtime
 * directory and unpacked into cwd. */
static int upload_exec(const struct er_driver_env *env,
                       const struct er_driver_lease *lease, const char *local,
                       const char *cwd, struct er_err *err)
{
    const char *tar_argv[12];
    const char *args[3] = { "-c", NULL, NULL };
    struct er_driver_exec_result res;
    struct er_driver_exec req;
    struct er_proc_result tar;
    struct er_proc_opts opts;
    struct er_buf script;
    char archive[4200];
    char *text = NULL;
    int rc;

    memset(&res, 0, sizeof(res));
    memset(&tar, 0, sizeof(tar));
    er_buf_init(&script, 32768);
    er_sandbox_tar_argv(local, tar_argv);
    er_proc_opts_init(&opts);
    opts.argv = tar_argv;
    opts.timeout_ms = UPLOAD_TIMEOUT_MS;
    opts.max_output_bytes = UPLOAD_MAX_BYTES;
    rc = er_proc_run(&opts, &tar, err);
    if (rc != 0)
        goto out;
    if (tar.is_out_truncated) {
        rc = er_err_set(err, ER_E2BIG, ER_ERRCLASS_NONE,
                        "the workspace archive is over %u MiB, too big for "
                        "the provider's exec channel (a provider with "
                        "environmentSyncIn has no such limit)",
                        UPLOAD_MAX_BYTES / (1024u * 1024u));
        goto out;
    }
    if (tar.exit_code != 0 && tar.exit_code != 1) {
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "archiving the workspace on this host failed (tar "
                        "exit code %d)",
                        tar.exit_code);
        goto out;
    }
    text = er_base64_dup(tar.out, tar.out_len);
    if (text == NULL) {
        rc = oom(err);
        goto out;
    }
    snprintf(archive, sizeof(archive),
             "%s/" RUNTIME_DIR "/workspace-upload.tar", cwd);
    rc = er_buf_printf(&script, "set -e; mkdir -p ");
    if (rc == 0)
        rc = er_sh_quote(&script, cwd);
    if (rc == 0)
        rc = er_buf_printf(&script, "/" RUNTIME_DIR " && base64 -d > ");
    if (rc == 0)
        rc = er_sh_quote(&script, archive);
    if (rc == 0)
        rc = er_buf_printf(&script, "; ");
    if (rc == 0)
        rc = er_sandbox_unpack_script(cwd, archive, &script);
    if (rc != 0) {
        rc = er_err_set(err, rc, ER_ERRCLASS_NONE,
                        "the workspace path is too long");
        goto out;
    }
    args[1] = (const char *)script.data;
    memset(&req, 0, sizeof(req));
    req.command = "sh";
    req.args = args;
    req.cwd = "/";
    req.stdin_data = text;
    req.stdin_len = strlen(text);
    req.timeout_ms = UPLOAD_TIMEOUT_MS;
    rc = plugin_exec(env, lease, &req, true, &res, err);
    if (rc == 0 && (res.exit_code != 0 || res.is_timed_out))
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "unpacking the workspace in the sandbox %s (exit "
                        "code %d)",
                        res.is_timed_out ? "timed out" : "failed",
                        res.exit_code);
out:
    er_free(text);
    er_driver_exec_result_fini(&res);
    er_proc_result_fini(&tar);
    er_buf_fini(&script);
    return rc;
}

/* The provider's native sync (environmentSyncIn), used only when it offers
 * both directions and the lease does not opt out (A10). */
static bool has_native_sync(const struct er_driver_lease *lease,
                            const char *provider)
{
    const char *backend = jstr(lease->metadata, "backend");

    return er_plugin_host_supports(provider, "environmentSyncIn") &&
           er_plugin_host_supports(provider, "environmentSyncOut") &&
           !json_is_true(
               json_object_get(lease->metadata, "nativeFileSyncUnsupported")) &&
           (backend == NULL || strcmp(backend, "job") != 0);
}

static int upload_native(const struct er_driver_env *env,
                         const struct er_driver_lease *lease,
                         const char *provider, const char *local,
                         const char *cwd, struct er_err *err)
{
    json_t *params = lease_params(env, lease, provider, err);
    json_t *res = NULL;
    char op_id[37];

    if (params == NULL)
        return err->code != 0 ? err->code : oom(err);
    if (er_uuid_v4(op_id) != 0 ||
        json_object_set_new(params, "operations",
                            json_pack("[{s:s, s:[{s:s, s:s, s:s, s:[s, s]}]}]",
                                      "operationId", op_id, "files",
                                      "sourcePath", local, "targetPath", cwd,
                                      "kind", "directory", "exclude",
                                      ".paperclip-runtime", "._*")) != 0) {
        json_decref(params);
        return oom(err);
    }
    if (call(provider, "environmentSyncIn", params, config_timeout(env), &res,
             err) != 0)
        return err->code;
    json_decref(res);
    return 0;
}

int er_sandbox_plugin_realize(const struct er_driver_env *env,
                              const struct er_driver_lease *lease,
                              const struct er_driver_workspace *ws,
                              struct er_driver_realized *out,
                              struct er_err *err)
{
    const char *provider = lease_provider(lease);
    json_t *params;
    json_t *res = NULL;
    const char *cwd;
    bool is_native = false;
    char prepare[4400];
    char summary[4400];
    int rc;

    out->cwd = NULL;
    out->record = NULL;
    if (provider == NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the lease names no provider");
    params = lease_params(env, lease, provider, err);
    if (params == NULL)
        return err->code != 0 ? err->code : oom(err);
    if (json_object_set_new(params, "workspace",
                            json_pack("{s:o, s:o, s:o}", "localPath",
                                      str_or_null(ws->local_path), "remotePath",
                                      str_or_null(ws->remote_path), "mode",
                                      str_or_null(ws->mode))) != 0) {
        json_decref(params);
        return oom(err);
    }
    rc = call(provider, "environmentRealizeWorkspace", params,
              config_timeout(env), &res, err);
    if (rc != 0)
        return rc;
    /* A trimmed non-empty cwd wins (A10). */
    cwd = jstr(res, "cwd");
    if (er_plugin_json_holds_secret(provider, json_object_get(res, "cwd"))) {
        json_decref(res);
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "Sandbox provider \"%s\" returned a workspace "
                          "directory that holds a secret of its config.",
                          provider);
    }
    if (cwd != NULL && cwd[strspn(cwd, " \t\r\n")] == '\0')
        cwd = NULL;
    if (cwd == NULL)
        cwd = jstr(lease->metadata, "remoteCwd");
    if (cwd == NULL)
        cwd = ws->remote_path != NULL ? ws->remote_path : "/tmp";
    if (cwd[0] != '/' || strcmp(cwd, "/") == 0) {
        rc = er_err_set(
            err, ER_EINVAL, ER_ERRCLASS_NONE,
            "refusing to sync into the sandbox directory \"%.200s\"", cwd);
        goto out;
    }
    if (ws->local_path != NULL) {
        is_native = has_native_sync(lease, provider);
        rc = is_native
                 ? upload_native(env, lease, provider, ws->local_path, cwd, err)
                 : upload_exec(env, lease, ws->local_path, cwd, err);
        if (rc != 0)
            goto out;
        snprintf(prepare, sizeof(prepare),
                 is_native ? "%s was copied into the sandbox at %s with the "
                             "provider's native sync; .paperclip-runtime was "
                             "kept."
                           : "%s was archived with tar, written into the "
                             "sandbox through the provider's exec channel "
                             "and unpacked at %s after everything there but "
                             ".paperclip-runtime was removed.",
                 ws->local_path, cwd);
    } else {
        snprintf(prepare, sizeof(prepare),
                 "No host workspace was given: nothing was copied to %.4000s.",
                 cwd);
    }
    snprintf(summary, sizeof(summary),
             "Sandbox workspace realized at %.4000s (provider %s).", cwd,
             provider);
    rc = er_sandbox_realized(env, lease, ws, cwd, cwd, prepare, summary, out,
                             err);
out:
    json_decref(res);
    return rc;
}
