/* sandbox: the sandbox driver of domain.md 4.3. The environment config
 * names a provider: `fake` (upstream's built-in probe provider: ids and
 * metadata, no machine), `bwrap` (envrun's built-in: a bubblewrap sandbox
 * on this host, sandbox_bwrap.c) or any other key, served by a provider
 * plugin (sandbox_plugin.c over plugin_host.c). This file holds the config,
 * the built-in providers and the execution target. Thread-safe: no mutable
 * global state. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "drivers/sandbox_int.h"

#define FAC "sandbox"

#define FAKE_DEFAULT_IMAGE "ubuntu:24.04"
#define TIMEOUT_MS_MAX     86400000
/* Copying a workspace in: the host tar and the unpacking in the sandbox. */
#define UPLOAD_TIMEOUT_MS  300000

/* Default bwrap limits: generous for an agent's tools, finite for a
 * runaway (a fork bomb, a leak). */
#define BWRAP_DEFAULT_MEMORY_MB 8192
#define BWRAP_DEFAULT_PROCESSES 1024

/* ================================================================
 * config (domain.md 4.3)
 * ================================================================ */

static int inval(struct er_err *err, const char *msg)
{
    return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE, "%s", msg);
}

static bool is_provider_key(const char *s)
{
    size_t i;

    if (s == NULL || s[0] == '\0' || strlen(s) > ER_SANDBOX_PROVIDER_MAX)
        return false;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
        return false;
    for (i = 1; s[i] != '\0'; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

static bool is_blank_n(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
            return false;
    }
    return true;
}

static bool is_blank(const char *s)
{
    return is_blank_n(s, strlen(s));
}

/* An optional integer member in lo..hi; absent or null leaves *out. A
 * number with a fraction is refused, as is a string. */
static int get_int(const json_t *config, const char *key, int64_t lo,
                   int64_t hi, int64_t *out, struct er_err *err)
{
    const json_t *v = json_object_get(config, key);
    json_int_t n;

    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s must be an integer.", key);
    n = json_integer_value(v);
    if (n < lo || n > hi)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s must be between %lld and %lld.", key,
                          (long long)lo, (long long)hi);
    *out = n;
    return 0;
}

static int get_bool(const json_t *config, const char *key, bool *out,
                    struct er_err *err)
{
    const json_t *v = json_object_get(config, key);

    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s must be a boolean.", key);
    *out = json_is_true(v);
    return 0;
}

/* Strict configs (fake, bwrap) refuse keys they do not know. */
static int only_keys(const json_t *config, const char *what,
                     const char *const *keys, size_t key_cnt,
                     struct er_err *err)
{
    const char *key;
    json_t *v;

    json_object_foreach((json_t *)(uintptr_t)config, key, v)
    {
        size_t i;
        bool is_known = false;

        (void)v;
        for (i = 0; i < key_cnt && !is_known; i++)
            is_known = strcmp(key, keys[i]) == 0;
        if (!is_known)
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              "%s sandbox environment config has an unknown "
                              "key: %.64s",
                              what, key);
    }
    return 0;
}

static const char *const fake_keys[] = { "provider", "image", "reuseLease" };
static const char *const bwrap_keys[] = { "provider",  "reuseLease",
                                          "timeoutMs", "retainOnFailure",
                                          "memoryMb",  "maxProcesses",
                                          "cpuSeconds" };

int er_sandbox_config_parse(const json_t *config, struct er_sandbox_config *cfg,
                            struct er_err *err)
{
    const json_t *provider = json_object_get(config, "provider");
    int64_t mb = BWRAP_DEFAULT_MEMORY_MB;
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    if (!json_is_object(config))
        return inval(err, "Expected sandbox environment config for driver "
                          "\"sandbox\".");
    if (provider == NULL || json_is_null(provider)) {
        snprintf(cfg->provider, sizeof(cfg->provider), "fake");
    } else if (!json_is_string(provider) ||
               !is_provider_key(json_string_value(provider))) {
        return inval(err, "Sandbox provider must match "
                          "^[a-z0-9][a-z0-9._-]*$ (at most 100 characters).");
    } else {
        snprintf(cfg->provider, sizeof(cfg->provider), "%s",
                 json_string_value(provider));
    }
    rc = get_bool(config, "reuseLease", &cfg->is_reuse_lease, err);
    if (rc != 0)
        return rc;
    if (strcmp(cfg->provider, "fake") == 0) {
        const json_t *image = json_object_get(config, "image");

        cfg->kind = ER_SANDBOX_FAKE;
        rc = only_keys(config, "Fake", fake_keys,
                       sizeof(fake_keys) / sizeof(fake_keys[0]), err);
        if (rc != 0)
            return rc;
        cfg->image = FAKE_DEFAULT_IMAGE;
        if (image != NULL && !json_is_null(image)) {
            if (!json_is_string(image) || is_blank(json_string_value(image)))
                return inval(err, "Fake sandbox image must be a non-empty "
                                  "string.");
            cfg->image = json_string_value(image);
        }
        return 0;
    }
    rc = get_int(config, "timeoutMs", 1, TIMEOUT_MS_MAX, &cfg->timeout_ms, err);
    if (rc == 0)
        rc = get_bool(config, "retainOnFailure", &cfg->is_retain_on_failure,
                      err);
    if (rc != 0)
        return rc;
    if (strcmp(cfg->provider, "bwrap") != 0) {
        cfg->kind = ER_SANDBOX_PLUGIN;
        return get_int(config, "bridgeRequestTimeoutMs", 1, TIMEOUT_MS_MAX,
                       &cfg->bridge_timeout_ms, err);
    }
    cfg->kind = ER_SANDBOX_BWRAP;
    cfg->lim.processes = BWRAP_DEFAULT_PROCESSES;
    rc = only_keys(config, "Bwrap", bwrap_keys,
                   sizeof(bwrap_keys) / sizeof(bwrap_keys[0]), err);
    if (rc == 0)
        rc = get_int(config, "memoryMb", 64, 1048576, &mb, err);
    if (rc == 0)
        rc = get_int(config, "maxProcesses", 16, 65536, &cfg->lim.processes,
                     err);
    if (rc == 0)
        rc = get_int(config, "cpuSeconds", 1, 31536000, &cfg->lim.cpu_seconds,
                     err);
    cfg->lim.memory_bytes = mb * 1024 * 1024;
    return rc;
}

/* ================================================================
 * helpers
 * ================================================================ */

static const char *jstr(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

static int oom(struct er_err *err)
{
    return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
}

/* Failures of a driver operation are ER_EDRIVER for the lifecycle (which
 * wraps the message), but for out of memory. */
static int driver_rc(int rc, struct er_err *err)
{
    if (rc == 0 || rc == ER_ENOMEM)
        return rc;
    if (err != NULL)
        err->code = ER_EDRIVER;
    return ER_EDRIVER;
}

/* The metadata every sandbox lease starts with (domain.md 4.3). */
static json_t *base_metadata(const struct er_driver_lease_ctx *ctx,
                             const struct er_sandbox_config *cfg)
{
    return json_pack("{s:s, s:o, s:s, s:b}", "driver", "sandbox",
                     "executionWorkspaceMode",
                     str_or_null(ctx->execution_workspace_mode), "provider",
                     cfg->provider, "reuseLease", cfg->is_reuse_lease);
}

const char *er_sandbox_policy(const struct er_sandbox_config *cfg,
                              const struct er_driver_lease_ctx *ctx,
                              bool can_reuse)
{
    if (cfg->is_reuse_lease && can_reuse && ctx->heartbeat_run_id != NULL)
        return "reuse_by_environment";
    return cfg->is_retain_on_failure ? "retain_on_failure" : "ephemeral";
}

/* ================================================================
 * fake (domain.md 4.3 step 2): ids and metadata only
 * ================================================================ */

/* matchesReusableLease of the built-in fake: same provider, reuseLease in
 * the metadata, same image. */
static bool fake_matches(const struct er_sandbox_config *cfg,
                         const struct er_driver_lease *lease)
{
    const char *image = jstr(lease->metadata, "image");

    return lease->provider != NULL && strcmp(lease->provider, "fake") == 0 &&
           json_is_true(json_object_get(lease->metadata, "reuseLease")) &&
           image != NULL && strcmp(image, cfg->image) == 0 &&
           lease->provider_lease_id != NULL;
}

static int fake_acquire(const struct er_driver_env *env,
                        const struct er_sandbox_config *cfg,
                        const struct er_driver_lease_ctx *ctx,
                        struct er_driver_acquired *out, struct er_err *err)
{
    const char *policy = er_sandbox_policy(cfg, ctx, true);
    bool is_reuse = strcmp(policy, "reuse_by_environment") == 0;
    const char *resumed = NULL;
    char id[256];
    char run_id[37];
    char uuid[37];
    size_t i;

    for (i = 0; is_reuse && resumed == NULL && i < ctx->reusable_cnt; i++) {
        if (fake_matches(cfg, &ctx->reusable[i]))
            resumed = ctx->reusable[i].provider_lease_id;
    }
    if (resumed != NULL) {
        snprintf(id, sizeof(id), "%s", resumed);
    } else if (is_reuse) {
        snprintf(id, sizeof(id), "sandbox://fake/%s", env->id);
    } else {
        /* A probe has no run: a random id stands in (4.3 step 2). */
        if (ctx->heartbeat_run_id != NULL)
            snprintf(run_id, sizeof(run_id), "%s", ctx->heartbeat_run_id);
        else if (er_uuid_v4(run_id) != 0)
            return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                              "no random bytes for an id");
        if (er_uuid_v4(uuid) != 0)
            return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                              "no random bytes for an id");
        snprintf(id, sizeof(id), "sandbox://fake/%s/%s", run_id, uuid);
    }
    out->lease_policy = policy;
    out->provider = "fake";
    out->expires_at_ms = -1;
    out->metadata = base_metadata(ctx, cfg);
    out->provider_lease_id = er_strdup(id);
    if (out->metadata == NULL || out->provider_lease_id == NULL ||
        json_object_set_new(out->metadata, "image", json_string(cfg->image)) !=
            0 ||
        json_object_set_new(out->metadata, "resumedLease",
                            json_boolean(resumed != NULL)) != 0) {
        er_driver_acquired_fini(out);
        return oom(err);
    }
    return 0;
}

/* ================================================================
 * bwrap: a sandbox on this host (sandbox_bwrap.c)
 * ================================================================ */

/* The sandbox of a bwrap lease: its metadata's sandboxId, else (an
 * acquisition that recorded nothing) the lease's own tag, which is what
 * its acquire would have used. */
static bool bwrap_id(const struct er_driver_lease *lease,
                     char id[ER_BWRAP_ID_LEN + 1])
{
    const char *sid = jstr(lease->metadata, "sandboxId");

    if (sid == NULL)
        return er_driver_lease_tag(lease->id, id);
    if (!er_bwrap_id_is_valid(sid))
        return false;
    memcpy(id, sid, ER_BWRAP_ID_LEN + 1);
    return true;
}

static int bwrap_acquire(const struct er_sandbox_config *cfg,
                         const struct er_driver_lease_ctx *ctx,
                         struct er_driver_acquired *out, struct er_err *err)
{
    char id[ER_BWRAP_ID_LEN + 1];
    char host[256];
    char plid[512];
    struct er_err derr;
    int rc;

    if (!er_driver_lease_tag(ctx->lease_id, id))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the lease id is not a UUID");
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    /* A replayed acquire adopts the sandbox its first attempt made. */
    rc = er_bwrap_create(id, &cfg->lim, err);
    if (rc != 0)
        return rc;
    snprintf(plid, sizeof(plid), "bwrap://%s/%s", host, id);
    /* bwrap does not park machines for reuse (yet): every lease gets a
     * sandbox of its own, as upstream does for a provider without
     * supportsReusableLeases. */
    out->lease_policy = er_sandbox_policy(cfg, ctx, false);
    out->provider = "bwrap";
    out->expires_at_ms = -1;
    out->provider_lease_id = er_strdup(plid);
    out->metadata = base_metadata(ctx, cfg);
    if (out->metadata != NULL &&
        json_object_update_new(
            out->metadata,
            json_pack("{s:s, s:s, s:s, s:s, s:b, s:{s:I, s:I, s:I}}",
                      "sandboxId", id, "host", host, "remoteCwd",
                      ER_BWRAP_WORKSPACE, "shellCommand", "bash",
                      "resumedLease", 0, "limits", "memoryMb",
                      (json_int_t)(cfg->lim.memory_bytes / (1024 * 1024)),
                      "maxProcesses", (json_int_t)cfg->lim.processes,
                      "cpuSeconds", (json_int_t)cfg->lim.cpu_seconds)) != 0) {
        json_decref(out->metadata);
        out->metadata = NULL;
    }
    if (out->metadata == NULL || out->provider_lease_id == NULL) {
        /* Nothing may outlive a failed acquire (#4452). */
        er_err_clear(&derr);
        if (er_bwrap_destroy(id, &derr) != 0)
            ER_LOG_WARN(FAC, "sandbox %s not destroyed: %s", id, derr.msg);
        er_driver_acquired_fini(out);
        return oom(err);
    }
    return 0;
}

void er_sandbox_tar_argv(const char *local, const char *argv[12])
{
    size_t n = 0;

    argv[n++] = "tar";
    argv[n++] = "-C";
    argv[n++] = local;
    argv[n++] = "--exclude=.paperclip-runtime";
    argv[n++] = "--exclude=._*";
    argv[n++] = "-cf";
    argv[n++] = "-";
    argv[n++] = ".";
    argv[n] = NULL;
}

int er_sandbox_unpack_script(const char *cwd, const char *archive,
                             struct er_buf *script)
{
    int rc = er_buf_printf(script, "set -e; mkdir -p ");

    if (rc == 0)
        rc = er_sh_quote(script, cwd);
    if (rc == 0)
        rc = er_buf_printf(script, " && cd ");
    if (rc == 0)
        rc = er_sh_quote(script, cwd);
    /* Everything but .paperclip-runtime goes (4.3 "Upload"). */
    if (rc == 0)
        rc = er_buf_printf(script,
                           "; for f in * .[!.]* ..?*; do case $f in "
                           ".paperclip-runtime) continue;; esac; "
                           "if [ -e \"$f\" ] || [ -L \"$f\" ]; then rm -rf -- "
                           "\"$f\"; fi; done; "
                           "tar --no-same-owner --no-same-permissions -xf ");
    if (rc == 0)
        rc = strcmp(archive, "-") == 0 ? er_buf_printf(script, "-")
                                       : er_sh_quote(script, archive);
    if (rc == 0 && strcmp(archive, "-") != 0) {
        rc = er_buf_printf(script, " && rm -f ");
        if (rc == 0)
            rc = er_sh_quote(script, archive);
    }
    return rc;
}

/* The first non-blank line of text, for a message. */
static void first_line(const char *text, char *out, size_t out_len)
{
    const char *p = text != NULL ? text : "";

    out[0] = '\0';
    while (*p != '\0') {
        size_t n = strcspn(p, "\n");

        if (n > 0 && !is_blank_n(p, n)) {
            snprintf(out, out_len, "%.*s", (int)(n < 300 ? n : 300), p);
            return;
        }
        p += n + (p[n] == '\n');
    }
}

/* Copy the host directory local into the sandbox's cwd: a host tar writes
 * the archive into a pipe, and a tar inside the sandbox unpacks it, so the
 * untrusted archive is only ever unpacked where the sandbox's own files
 * are (a symlink in it cannot reach the host). */
static int bwrap_upload(const char *id, const char *local, const char *cwd,
                        struct er_err *err)
{
    const char *tar_argv[12];
    const char *sh_argv[] = { "sh", "-c", NULL, NULL };
    struct er_driver_exec_result in;
    struct er_proc_result host;
    struct er_proc_opts opts;
    struct er_buf script;
    struct er_err werr;
    char line[320];
    char ebuf[128];
    int pfd[2] = { -1, -1 };
    pid_t pid = -1;
    int rc;

    memset(&in, 0, sizeof(in));
    memset(&host, 0, sizeof(host));
    er_buf_init(&script, 16384);
    er_sandbox_tar_argv(local, tar_argv);
    rc = er_sandbox_unpack_script(cwd, "-", &script);
    if (rc != 0) {
        rc = er_err_set(err, rc, ER_ERRCLASS_NONE,
                        "the workspace path is too long");
        goto out;
    }
    sh_argv[2] = (const char *)script.data;
    if (pipe(pfd) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "copying the workspace: %s",
                        er_strerror(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    fcntl(pfd[0], F_SETFD, FD_CLOEXEC);
    fcntl(pfd[1], F_SETFD, FD_CLOEXEC);
    er_proc_opts_init(&opts);
    opts.argv = tar_argv;
    opts.stdout_fd = pfd[1];
    rc = er_proc_spawn(&opts, &pid, err);
    close(pfd[1]);
    pfd[1] = -1;
    if (rc != 0)
        goto out;
    rc = er_bwrap_exec_fd(id, sh_argv, ER_BWRAP_WORKSPACE, pfd[0],
                          UPLOAD_TIMEOUT_MS, &in, err);
    /* Closing the read end stops a host tar the sandbox gave up on. */
    close(pfd[0]);
    pfd[0] = -1;
    er_err_clear(&werr);
    if (er_proc_wait(pid, UPLOAD_TIMEOUT_MS, &host, &werr) != 0 && rc == 0)
        rc = er_err_set(err, werr.code, ER_ERRCLASS_NONE,
                        "copying the workspace: %s", werr.msg);
    if (rc != 0)
        goto out;
    if (in.exit_code != 0 || in.is_timed_out) {
        first_line(in.err_text, line, sizeof(line));
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "unpacking the workspace in the sandbox %s%s%s",
                        in.is_timed_out ? "timed out" : "failed",
                        line[0] != '\0' ? ": " : "", line);
    } else if (host.exit_code != 0 && host.exit_code != 1) {
        /* GNU tar exits 1 when a file changed while it was read. */
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "archiving the workspace on this host failed "
                        "(tar exit code %d)",
                        host.exit_code);
    }
out:
    if (pfd[0] >= 0)
        close(pfd[0]);
    if (pfd[1] >= 0)
        close(pfd[1]);
    er_driver_exec_result_fini(&in);
    er_buf_fini(&script);
    return rc;
}

static int builtin_realize(const struct er_driver_env *env,
                           const struct er_sandbox_config *cfg,
                           const struct er_driver_lease *lease,
                           const struct er_driver_workspace *ws,
                           struct er_driver_realized *out, struct er_err *err)
{
    const char *remote_cwd = jstr(lease->metadata, "remoteCwd");
    char prepare[1024];
    char summary[512];
    char id[ER_BWRAP_ID_LEN + 1];
    const char *cwd;
    int rc;

    out->cwd = NULL;
    out->record = NULL;
    if (remote_cwd == NULL)
        remote_cwd = ws->remote_path;
    cwd = remote_cwd != NULL ? remote_cwd : ws->local_path;
    if (cfg->kind == ER_SANDBOX_FAKE) {
        snprintf(prepare, sizeof(prepare),
                 "The fake provider has no machine: nothing was copied.");
        snprintf(summary, sizeof(summary),
                 "Sandbox workspace realized (fake provider).");
    } else {
        if (!bwrap_id(lease, id))
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              "the lease names no sandbox");
        if (!er_bwrap_is_alive(id))
            return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                              "the sandbox %s is not running", id);
        cwd = ER_BWRAP_WORKSPACE;
        remote_cwd = cwd;
        if (ws->local_path != NULL) {
            rc = bwrap_upload(id, ws->local_path, cwd, err);
            if (rc != 0)
                return rc;
            snprintf(prepare, sizeof(prepare),
                     "%s was archived with tar and unpacked in the sandbox "
                     "at %s after everything there but .paperclip-runtime "
                     "was removed.",
                     ws->local_path, cwd);
        } else {
            snprintf(prepare, sizeof(prepare),
                     "No host workspace was given: nothing was copied to "
                     "%s.",
                     cwd);
        }
        snprintf(summary, sizeof(summary),
                 "Sandbox workspace realized at %s (bwrap sandbox %s).", cwd,
                 id);
    }
    return er_sandbox_realized(env, lease, ws, remote_cwd,
                               cwd != NULL ? cwd : "/", prepare, summary, out,
                               err);
}

int er_sandbox_realized(const struct er_driver_env *env,
                        const struct er_driver_lease *lease,
                        const struct er_driver_workspace *ws,
                        const char *remote_path, const char *cwd,
                        const char *prepare, const char *summary,
                        struct er_driver_realized *out, struct er_err *err)
{
    out->record = er_driver_realization_record(
        env, lease, ws, remote_path, "sandbox_archive_upload_download", prepare,
        "Nothing is copied back by the worker: the adapter archives the "
        "sandbox workspace and brings it back after the run.",
        summary);
    out->cwd = er_strdup(cwd);
    if (out->record == NULL || out->cwd == NULL) {
        er_driver_realized_fini(out);
        return oom(err);
    }
    return 0;
}

/* ================================================================
 * the driver's operations: dispatch by provider
 * ================================================================ */

/* The config of a lease's environment; a release works on when it no
 * longer validates (the lease metadata names the provider). */
static int lease_config(const struct er_driver_env *env,
                        const struct er_driver_lease *lease,
                        struct er_sandbox_config *cfg, struct er_err *err)
{
    const char *provider = jstr(lease->metadata, "provider");
    int rc = er_sandbox_config_parse(env->config, cfg, err);

    if (provider == NULL && lease->provider != NULL)
        provider = lease->provider;
    if (rc == 0 && provider != NULL && strcmp(provider, cfg->provider) != 0)
        rc = ER_EINVAL; /* the environment changed provider since */
    if (rc == 0)
        return 0;
    /* What the lease recorded decides. */
    if (provider == NULL || !is_provider_key(provider))
        return rc;
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->provider, sizeof(cfg->provider), "%s", provider);
    cfg->kind = strcmp(provider, "fake") == 0    ? ER_SANDBOX_FAKE
                : strcmp(provider, "bwrap") == 0 ? ER_SANDBOX_BWRAP
                                                 : ER_SANDBOX_PLUGIN;
    cfg->is_reuse_lease =
        json_is_true(json_object_get(lease->metadata, "reuseLease"));
    cfg->image = FAKE_DEFAULT_IMAGE;
    er_err_clear(err);
    return 0;
}

static int sandbox_acquire(const struct er_driver_env *env,
                           const struct er_driver_lease_ctx *ctx,
                           struct er_driver_acquired *out, struct er_err *err)
{
    struct er_sandbox_config cfg;
    int rc = er_sandbox_config_parse(env->config, &cfg, err);

    if (rc != 0)
        return driver_rc(rc, err);
    switch (cfg.kind) {
    case ER_SANDBOX_FAKE:
        rc = fake_acquire(env, &cfg, ctx, out, err);
        break;
    case ER_SANDBOX_BWRAP:
        rc = bwrap_acquire(&cfg, ctx, out, err);
        break;
    case ER_SANDBOX_PLUGIN:
        rc = er_sandbox_plugin_acquire(env, &cfg, ctx, out, err);
        break;
    }
    return driver_rc(rc, err);
}

static int sandbox_realize(const struct er_driver_env *env,
                           const struct er_driver_lease *lease,
                           const struct er_driver_workspace *ws,
                           struct er_driver_realized *out, struct er_err *err)
{
    struct er_sandbox_config cfg;
    int rc = lease_config(env, lease, &cfg, err);

    if (rc == 0)
        rc = cfg.kind == ER_SANDBOX_PLUGIN
                 ? er_sandbox_plugin_realize(env, lease, ws, out, err)
                 : builtin_realize(env, &cfg, lease, ws, out, err);
    return driver_rc(rc, err);
}

static int sandbox_execute(const struct er_driver_env *env,
                           const struct er_driver_lease *lease,
                           const struct er_driver_exec *req,
                           struct er_driver_exec_result *out,
                           struct er_err *err)
{
    struct er_sandbox_config cfg;
    char id[ER_BWRAP_ID_LEN + 1];
    int rc;

    memset(out, 0, sizeof(*out));
    out->exit_code = -1;
    rc = lease_config(env, lease, &cfg, err);
    if (rc != 0)
        return driver_rc(rc, err);
    switch (cfg.kind) {
    case ER_SANDBOX_FAKE:
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "Sandbox driver does not support direct command "
                        "execution for built-in providers.");
        break;
    case ER_SANDBOX_BWRAP:
        if (!bwrap_id(lease, id)) {
            rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                            "the lease names no sandbox");
            break;
        }
        rc = er_bwrap_exec(id, req, out, err);
        if (rc == ER_ENOTFOUND)
            er_err_set(err, rc, ER_ERRCLASS_NONE,
                       "the sandbox %s is not running", id);
        break;
    case ER_SANDBOX_PLUGIN:
        /* environmentExecute answers once, with the whole output. */
        if (req->stdio != NULL)
            rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                            "provider plugins cannot hold a command open");
        else
            rc = er_sandbox_plugin_execute(env, lease, req, out, err);
        break;
    }
    return driver_rc(rc, err);
}

void er_sandbox_final_status(const struct er_driver_lease *lease,
                             const char *status, struct er_driver_released *out)
{
    bool is_failed = strcmp(status, "failed") == 0;

    out->status = status;
    if (is_failed && lease->lease_policy != NULL &&
        strcmp(lease->lease_policy, "retain_on_failure") == 0)
        out->status = "retained";
    if (is_failed)
        out->failure_reason = "adapter_or_run_failure";
}

static int sandbox_release(const struct er_driver_env *env,
                           const struct er_driver_lease *lease,
                           const char *status, struct er_driver_released *out,
                           struct er_err *err)
{
    struct er_sandbox_config cfg;
    char id[ER_BWRAP_ID_LEN + 1];
    struct er_err derr;
    int rc;

    out->status = status;
    out->cleanup_status = NULL;
    out->failure_reason = NULL;
    er_err_clear(&derr);
    rc = lease_config(env, lease, &cfg, &derr);
    if (rc != 0) {
        /* Nothing tells which provider holds the machine. */
        ER_LOG_WARN(FAC, "lease %s: no cleanup: %s", lease->id, derr.msg);
        er_sandbox_final_status(lease, status, out);
        out->cleanup_status = "failed";
        return 0;
    }
    if (cfg.kind == ER_SANDBOX_PLUGIN)
        return er_sandbox_plugin_release(env, lease, status, out, err);
    er_sandbox_final_status(lease, status, out);
    out->cleanup_status = "success";
    if (cfg.kind == ER_SANDBOX_FAKE)
        return 0; /* the fake provider's releaseLease is a no-op */
    if (!bwrap_id(lease, id)) {
        ER_LOG_WARN(FAC, "lease %s: no cleanup: it names no sandbox",
                    lease->id);
        out->cleanup_status = "failed";
        return 0;
    }
    if (er_bwrap_destroy(id, &derr) != 0) {
        /* The host sweep ends it once the lease is done with. */
        er_log_kv(ER_LOG_WARN, FAC, "a sandbox was not destroyed", "leaseId",
                  lease->id, "sandboxId", id, "reason", derr.msg,
                  (const char *)NULL);
        out->cleanup_status = "failed";
    }
    return 0;
}

/* domain.md 3.6: a remote target for the remote-capable adapters, with no
 * paperclipApiUrl (the agent reaches the API through the bridge). At
 * acquire (no lease) the executionTransport is null. */
static json_t *sandbox_target(const struct er_driver_env *env,
                              const struct er_driver_lease *lease,
                              const char *adapter_type, struct er_err *err)
{
    struct er_sandbox_config cfg;
    const char *remote_cwd;
    const char *shell;
    json_t *target;

    if (lease == NULL || !er_driver_is_remote_adapter(adapter_type))
        return json_null();
    if (lease_config(env, lease, &cfg, err) != 0)
        return json_null(); /* not a sandbox config: no target (3.6) */
    remote_cwd = jstr(lease->metadata, "remoteCwd");
    if (remote_cwd == NULL || is_blank(remote_cwd))
        remote_cwd = "/tmp";
    shell = jstr(lease->metadata, "shellCommand");
    if (shell != NULL && strcmp(shell, "bash") != 0 && strcmp(shell, "sh") != 0)
        shell = NULL;
    target = json_pack(
        "{s:s, s:s, s:s, s:o, s:s, s:s, s:s, s:o}", "kind", "remote",
        "transport", "sandbox", "providerKey", cfg.provider, "shellCommand",
        str_or_null(shell), "remoteCwd", remote_cwd, "environmentId", env->id,
        "leaseId", lease->id, "timeoutMs",
        cfg.timeout_ms > 0 ? json_integer(cfg.timeout_ms) : json_null());
    if (target == NULL)
        oom(err);
    return target;
}

static void sandbox_sweep(er_driver_in_use_fn *is_in_use, void *arg)
{
    er_bwrap_sweep(is_in_use, arg);
}

int er_sandbox_setup(const char *sandbox_dir, const char *plugins_dir,
                     struct er_err *err)
{
    er_bwrap_set_dir(sandbox_dir);
    return er_plugin_host_setup(plugins_dir, err);
}

void er_sandbox_shutdown(void)
{
    er_plugin_host_shutdown();
}

const struct er_driver_ops er_sandbox_driver = {
    .name = "sandbox",
    .is_remote = true,
    .acquire = sandbox_acquire,
    .realize = sandbox_realize,
    .release = sandbox_release,
    .execute = sandbox_execute,
    .target = sandbox_target,
    .sweep = sandbox_sweep,
};
