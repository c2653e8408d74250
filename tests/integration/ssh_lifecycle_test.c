/* ssh_lifecycle_test: the lifecycle of a run on an `ssh` environment
 * (domain.md 2.3, 2.6, 3.2-3.6, 4.2; contract.md 4, 6) through a real worker
 * process and the real sshd of scripts/test-services.sh: acquire, realize of a
 * git and of a plain workspace, the provision command, release with its
 * teardown and per-lease cleanup. One worker serves every case. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

/* ssh round trips on 2 busy cores: generous, still bounded. */
#define SSH_WAIT_MS 60000

static struct er_harness *h;
static struct er_harness_ssh *ssh;
static struct er_harness_worker *worker;

/* Start the worker with the secrets directory and debug logs, and let it
 * migrate (its first result means the tables exist). */
static int group_setup(void **state)
{
    struct er_harness_worker_opts opts = { 0 };

    (void)state;
    h = er_harness_new("ssh_lifecycle", 2, NULL);
    if (h == NULL)
        return -1;
    ssh = er_harness_ssh_new(h);
    if (ssh == NULL)
        return -1;
    opts.env = ssh->worker_env;
    worker = er_harness_worker_start_warm(h, &opts);
    return worker != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_ssh_destroy(ssh);
    ssh = NULL;
    er_harness_destroy(h);
    h = NULL;
    return rc;
}

/* ----------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------- */

/* Send c and wait for its result; dumps the worker's log on a timeout. */
static const json_t *roundtrip(struct er_harness_cmd *c)
{
    const json_t *res;

    assert_int_equal(er_harness_send(h, &c->cmd), 0);
    res = er_harness_wait_result(h, c->command_id, SSH_WAIT_MS);
    if (res == NULL)
        er_harness_worker_dump_log(worker, 6000);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "commandId", c->command_id);
    return res;
}

/* Fail with the result's error when its outcome is not ok. */
static void assert_ok(const json_t *res)
{
    const char *outcome = er_harness_json_str(res, "outcome");

    if (outcome == NULL || strcmp(outcome, "ok") != 0)
        er_harness_fail(__FILE__, __LINE__, "outcome %s: %s: %s",
                        outcome != NULL ? outcome : "(none)",
                        er_harness_json_str(res, "errorCode") != NULL
                            ? er_harness_json_str(res, "errorCode")
                            : "-",
                        er_harness_json_str(res, "errorMessage") != NULL
                            ? er_harness_json_str(res, "errorMessage")
                            : "-");
}

static void assert_has_prefix(const char *text, const char *prefix)
{
    ER_HARNESS_NON_NULL(text);
    if (strncmp(text, prefix, strlen(prefix)) != 0)
        er_harness_fail(__FILE__, __LINE__, "\"%s\" does not start with \"%s\"",
                        text, prefix);
}

static void assert_contains(const char *text, const char *needle)
{
    ER_HARNESS_NON_NULL(text);
    if (strstr(text, needle) == NULL)
        er_harness_fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"",
                        text, needle);
}

/* Neither the private key nor "privateKey" anywhere in v. */
static void assert_no_secret(const json_t *v)
{
    char *text = er_harness_json_text(v);

    ER_HARNESS_NON_NULL(text);
    if (er_harness_ssh_text_has_key(ssh, text) ||
        strstr(text, "\"privateKey\"") != NULL) {
        er_harness_fail(__FILE__, __LINE__, "secret material in %.2000s", text);
    }
    free(text);
}

/* An ssh environment for company on the test server, its remote
 * workspace path remote_path (NULL: the test's root). */
static void make_env(const char *company_id, const char *name,
                     const char *remote_path, const char *isolation,
                     char env_id[37])
{
    json_t *config = er_harness_ssh_config(ssh, remote_path, isolation);

    assert_int_equal(
        er_harness_ssh_env_insert(h, company_id, name, config, env_id), 0);
    json_decref(config);
}

/* Acquire on env_id for run; returns the result body (new reference) and
 * the lease id and remoteCwd. */
static json_t *acquire(struct er_harness_run *run, const char *env_id,
                       char lease_id[37], char *remote_cwd,
                       size_t remote_cwd_len)
{
    struct er_harness_cmd c;
    const json_t *res;
    json_t *body;
    const char *cwd;

    er_harness_cmd_acquire(&c, run);
    c.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    res = roundtrip(&c);
    assert_ok(res);
    ER_HARNESS_ASSERT_STR(res, "driver", "ssh");
    ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    snprintf(lease_id, 37, "%s", er_harness_json_str(res, "leaseId"));
    cwd = er_harness_json_str(body, "lease.metadata.remoteCwd");
    ER_HARNESS_NON_NULL(cwd);
    snprintf(remote_cwd, remote_cwd_len, "%s", cwd);
    return body;
}

/* Realize the run's lease from host directory cwd with an optional
 * runtimeOverlayJson; returns the result (borrowed). */
static const json_t *realize(struct er_harness_run *run, const char *cwd,
                             const char *overlay_json)
{
    struct er_harness_cmd c;

    er_harness_cmd_realize(&c, run, cwd);
    c.cmd.runtime_overlay_json = (char *)(uintptr_t)overlay_json;
    return roundtrip(&c);
}

static const json_t *release(struct er_harness_run *run,
                             enum er_release_status status)
{
    struct er_harness_cmd c;

    er_harness_cmd_release(&c, run, status);
    return roundtrip(&c);
}

/* The lease row (new reference). */
static json_t *lease_row(const char *lease_id)
{
    json_t *rows = er_harness_pg_query(
        h->db_url,
        "SELECT status, lease_policy, provider, provider_lease_id, "
        "cleanup_status, failure_reason, released_at IS NOT NULL AS "
        "has_released_at, metadata::text AS metadata FROM "
        "environment_leases WHERE id = $1",
        1, (const char *[]){ lease_id });
    json_t *row;

    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), 1);
    row = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    return row;
}

/* What script prints on the remote side, trailing newlines cut; fails
 * the test when it exits non-zero. Caller frees with er_free. */
static char *remote_text(const char *script)
{
    char *out = NULL;
    size_t len;

    if (er_harness_ssh_remote(ssh, script, &out) != 0 || out == NULL)
        er_harness_fail(__FILE__, __LINE__, "remote `%s` failed", script);
    len = strlen(out);
    while (len > 0 && out[len - 1] == '\n')
        out[--len] = '\0';
    return out;
}

/* Fail unless the printf-formatted script exits 0 on the remote side;
 * what says what it checks. */
static void assert_remote(const char *what, const char *fmt, ...)
    ER_PRINTF(2, 3);

static void assert_remote(const char *what, const char *fmt, ...)
{
    char script[4096];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(script, sizeof(script), fmt, ap);
    va_end(ap);
    if (er_harness_ssh_remote(ssh, script, NULL) != 0)
        er_harness_fail(__FILE__, __LINE__, "remote check failed: %s (`%s`)",
                        what, script);
}

/* Fail when the lease's driver directory (control socket, known_hosts)
 * is still there after its release. */
static void assert_no_control_dir(const char *lease_id)
{
    if (er_harness_ssh_control_dir_exists(lease_id))
        er_harness_fail(__FILE__, __LINE__,
                        "the driver directory of lease %s is left behind",
                        lease_id);
}

/* A host directory for a case's workspace. */
static void host_dir(const char *leaf, char *out, size_t out_len)
{
    snprintf(out, out_len, "%s/ws-%s", h->dir, leaf);
}

/* The checks every realize on ssh shares (domain.md 2.6, 3.4, 3.6). */
static void assert_realized(const json_t *res, const char *env_id,
                            const char *lease_id, const char *local_path,
                            const char *remote_cwd, const char *remote_path)
{
    char summary[1024];
    char port[16];
    const json_t *spec;
    json_t *body;
    json_t *row;
    json_t *meta;

    assert_ok(res);
    ER_HARNESS_ASSERT_STR(res, "kind", "realize");
    ER_HARNESS_ASSERT_STR(res, "driver", "ssh");
    ER_HARNESS_ASSERT_STR(res, "leaseId", lease_id);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    assert_no_secret(body);

    /* The record. */
    snprintf(port, sizeof(port), "%d", ssh->port);
    snprintf(summary, sizeof(summary), "SSH workspace realized at %s@%s:%s:%s.",
             ssh->user, ssh->host, port, remote_cwd);
    ER_HARNESS_ASSERT_INT(body, "workspaceRealization.version", 1);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.transport", "ssh");
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.provider", "ssh");
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.environmentId", env_id);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.leaseId", lease_id);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.local.path", local_path);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.remote.path", remote_cwd);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.remote.host", ssh->host);
    ER_HARNESS_ASSERT_INT(body, "workspaceRealization.remote.port", ssh->port);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.remote.username",
                          ssh->user);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.sync.strategy",
                          "ssh_git_import_export");
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.summary", summary);

    /* The execution target: remote over ssh, no private key (3.6). */
    ER_HARNESS_ASSERT_STR(body, "executionTarget.kind", "remote");
    ER_HARNESS_ASSERT_STR(body, "executionTarget.transport", "ssh");
    ER_HARNESS_ASSERT_STR(body, "executionTarget.environmentId", env_id);
    ER_HARNESS_ASSERT_STR(body, "executionTarget.leaseId", lease_id);
    ER_HARNESS_ASSERT_STR(body, "executionTarget.remoteCwd", remote_cwd);
    ER_HARNESS_ASSERT_STR(body, "executionTarget.spec.host", ssh->host);
    ER_HARNESS_ASSERT_INT(body, "executionTarget.spec.port", ssh->port);
    ER_HARNESS_ASSERT_STR(body, "executionTarget.spec.username", ssh->user);
    ER_HARNESS_ASSERT_STR(body, "executionTarget.spec.remoteWorkspacePath",
                          remote_path);
    ER_HARNESS_ASSERT_STR(body, "executionTarget.spec.remoteCwd", remote_cwd);
    ER_HARNESS_ASSERT_TRUE(body, "executionTarget.spec.strictHostKeyChecking");
    spec = er_harness_json_at(body, "executionTarget.spec");
    ER_HARNESS_NON_NULL(spec);
    assert_null(json_object_get(spec, "privateKey"));
    ER_HARNESS_ASSERT_JSON(body, "bridge", "null");

    /* The record is stored on the lease (3.4 step 4). */
    row = lease_row(lease_id);
    ER_HARNESS_ASSERT_STR(row, "status", "active");
    meta = er_harness_json_parse_field(row, "metadata");
    ER_HARNESS_NON_NULL(meta);
    ER_HARNESS_ASSERT_STR(meta, "workspaceRealization.summary", summary);
    ER_HARNESS_ASSERT_STR(meta, "remoteCwd", remote_cwd);
    json_decref(meta);
    json_decref(row);
    json_decref(body);
}

/* ----------------------------------------------------------------
 * Cases
 * ---------------------------------------------------------------- */

/* Acquire (4.2): remote mkdir, the lease's provider, handle and metadata,
 * the transport spec without a key (3.2 step 4); release keeps a shared
 * directory. */
static void ssh_acquire_makes_remote_dir_and_lease(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char handle[2048];
    const json_t *res;
    json_t *body;
    json_t *row;
    json_t *details;
    const json_t *transport;
    const struct er_harness_record *act[4];

    (void)state;
    er_harness_run_init(&run);
    snprintf(remote, sizeof(remote), "%s/acquire/new", ssh->root);
    make_env(run.company_id, "SSH box", remote, "shared", env_id);
    body = acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    assert_no_secret(body);

    /* `cd path && pwd` of a directory made for the lease. */
    assert_string_equal(cwd, remote);
    assert_remote("remote workspace exists", "test -d '%s' && test -w '%s'",
                  remote, remote);
    snprintf(handle, sizeof(handle), "ssh://%s@%s:%d%s", ssh->user, ssh->host,
             ssh->port, cwd);
    ER_HARNESS_ASSERT_STR(body, "lease.id", lease_id);
    ER_HARNESS_ASSERT_STR(body, "lease.status", "active");
    ER_HARNESS_ASSERT_STR(body, "lease.leasePolicy", "ephemeral");
    ER_HARNESS_ASSERT_STR(body, "lease.provider", "ssh");
    ER_HARNESS_ASSERT_STR(body, "lease.providerLeaseId", handle);
    ER_HARNESS_ASSERT_STR(body, "lease.metadata.driver", "ssh");
    ER_HARNESS_ASSERT_STR(body, "lease.metadata.host", ssh->host);
    ER_HARNESS_ASSERT_INT(body, "lease.metadata.port", ssh->port);
    ER_HARNESS_ASSERT_STR(body, "lease.metadata.username", ssh->user);
    ER_HARNESS_ASSERT_STR(body, "lease.metadata.remoteWorkspacePath", remote);
    ER_HARNESS_ASSERT_STR(body, "lease.metadata.remoteCwd", cwd);
    ER_HARNESS_ASSERT_STR(body, "environment.driver", "ssh");

    transport = er_harness_json_at(body, "executionTransport");
    ER_HARNESS_NON_NULL(transport);
    ER_HARNESS_ASSERT_STR(transport, "host", ssh->host);
    ER_HARNESS_ASSERT_INT(transport, "port", ssh->port);
    ER_HARNESS_ASSERT_STR(transport, "username", ssh->user);
    ER_HARNESS_ASSERT_STR(transport, "remoteWorkspacePath", remote);
    ER_HARNESS_ASSERT_STR(transport, "remoteCwd", remote);
    ER_HARNESS_ASSERT_TRUE(transport, "strictHostKeyChecking");
    assert_null(json_object_get(transport, "privateKey"));
    json_decref(body);

    /* The row and the activity (3.8). */
    row = lease_row(lease_id);
    ER_HARNESS_ASSERT_STR(row, "provider", "ssh");
    ER_HARNESS_ASSERT_STR(row, "provider_lease_id", handle);
    ER_HARNESS_ASSERT_STR(row, "lease_policy", "ephemeral");
    json_decref(row);
    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "entityId",
                                      lease_id, 1, ER_HARNESS_WAIT_MS));
    assert_int_equal(
        er_harness_find(h, ER_HARNESS_ACTIVITY, "entityId", lease_id, act, 4),
        1);
    details = er_harness_json_parse_field(act[0]->json, "detailsJson");
    ER_HARNESS_ASSERT_STR(details, "driver", "ssh");
    ER_HARNESS_ASSERT_STR(details, "provider", "ssh");
    json_decref(details);

    /* A shared directory outlives the lease (4.2: nothing is deleted). */
    res = release(&run, ER_RELEASE_RELEASED);
    assert_ok(res);
    row = lease_row(lease_id);
    ER_HARNESS_ASSERT_STR(row, "status", "released");
    assert_no_control_dir(lease_id);
    ER_HARNESS_ASSERT_STR(row, "cleanup_status", "success");
    json_decref(row);
    assert_remote("shared workspace kept", "test -d '%s'", remote);
}

/* Realize of a git workspace (4.2, workspace sync): HEAD, branch, the
 * uncommitted and untracked files, a cleaned tree with .paperclip-runtime
 * kept; then release runs the teardown and cleanup commands remotely and
 * removes the per-lease directory. */
static void ssh_realize_git_workspace_then_release(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char markers[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char local[ER_HARNESS_PATH_MAX + 32];
    char overlay[2048];
    char script[4096];
    char *local_head = NULL;
    char *text;
    const json_t *res;
    json_t *body;
    json_t *row;

    (void)state;
    er_harness_run_init(&run);
    host_dir("git", local, sizeof(local));
    assert_int_equal(er_harness_ssh_git_workspace(local, "feature/ssh-sync"),
                     0);
    snprintf(script, sizeof(script), "git -C '%s' rev-parse HEAD", local);
    assert_int_equal(er_harness_ssh_local(script, &local_head), 0);
    ER_HARNESS_NON_NULL(local_head);
    local_head[strcspn(local_head, "\n")] = '\0';

    snprintf(remote, sizeof(remote), "%s/git", ssh->root);
    snprintf(markers, sizeof(markers), "%s/markers-git", ssh->root);
    assert_remote("markers dir", "mkdir -p '%s'", markers);
    make_env(run.company_id, "SSH git", remote, "per_lease", env_id);
    body = acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    json_decref(body);
    /* Per lease: a directory of its own below the workspace path. */
    if (strncmp(cwd, remote, strlen(remote)) != 0 || cwd[strlen(remote)] != '/')
        er_harness_fail(__FILE__, __LINE__,
                        "per_lease remoteCwd %s is not below %s", cwd, remote);

    /* What the remote side had before: runtime state and a stray file. */
    assert_remote("pre-create runtime state",
                  "mkdir -p '%s/.paperclip-runtime' && echo keep > "
                  "'%s/.paperclip-runtime/marker.txt'",
                  cwd, cwd);
    assert_remote("stray file", "echo stray > '%s/stray.txt'", cwd);

    snprintf(overlay, sizeof(overlay),
             "{\"teardownCommand\": \"pwd > '%s/teardown.txt'\", "
             "\"cleanupCommand\": \"echo cleaned > '%s/cleanup.txt'\"}",
             markers, markers);
    res = realize(&run, local, overlay);
    assert_realized(res, env_id, lease_id, local, cwd, remote);

    /* The tree on the remote side. */
    snprintf(script, sizeof(script), "git -C '%s' rev-parse HEAD", cwd);
    text = remote_text(script);
    assert_string_equal(text, local_head);
    er_free(text);
    snprintf(script, sizeof(script), "git -C '%s' rev-parse --abbrev-ref HEAD",
             cwd);
    text = remote_text(script);
    assert_string_equal(text, "feature/ssh-sync");
    er_free(text);
    snprintf(script, sizeof(script), "cat '%s/src/app.txt'", cwd);
    text = remote_text(script);
    assert_string_equal(text, "v1\nv2 uncommitted");
    er_free(text);
    assert_remote("committed file", "grep -qx hello '%s/README.md'", cwd);
    assert_remote("untracked file", "grep -qx untracked '%s/new.txt'", cwd);
    assert_remote(".paperclip-runtime kept",
                  "grep -qx keep '%s/.paperclip-runtime/marker.txt'", cwd);
    assert_remote("stray file cleaned", "test ! -e '%s/stray.txt'", cwd);

    /* Release: commands of the runtime overlay, then the directory. */
    res = release(&run, ER_RELEASE_RELEASED);
    assert_ok(res);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    assert_int_equal(json_array_size(json_object_get(body, "released")), 1);
    assert_int_equal(json_array_size(json_object_get(body, "errors")), 0);
    json_decref(body);
    row = lease_row(lease_id);
    ER_HARNESS_ASSERT_STR(row, "status", "released");
    assert_no_control_dir(lease_id);
    ER_HARNESS_ASSERT_STR(row, "cleanup_status", "success");
    ER_HARNESS_ASSERT_STR(row, "failure_reason", NULL);
    ER_HARNESS_ASSERT_STR(row, "has_released_at", "t");
    json_decref(row);
    assert_remote("teardown command ran", "test -s '%s/teardown.txt'", markers);
    assert_remote("cleanup command ran", "grep -qx cleaned '%s/cleanup.txt'",
                  markers);
    assert_remote("per-lease directory removed", "test ! -e '%s'", cwd);
    assert_remote("workspace path kept", "test -d '%s'", remote);
    er_free(local_head);
}

/* A path deleted in the working tree but still committed is absent
 * remotely (4.2: "delete locally-deleted paths"). */
static void ssh_realize_git_drops_locally_deleted_file(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char local[ER_HARNESS_PATH_MAX + 32];
    const json_t *res;
    json_t *body;

    (void)state;
    er_harness_run_init(&run);
    host_dir("git-deleted", local, sizeof(local));
    assert_int_equal(er_harness_ssh_git_workspace(local, "main"), 0);
    snprintf(remote, sizeof(remote), "%s/git-deleted", ssh->root);
    make_env(run.company_id, "SSH deleted", remote, "shared", env_id);
    body = acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    json_decref(body);
    res = realize(&run, local, NULL);
    assert_realized(res, env_id, lease_id, local, cwd, remote);
    assert_remote("untracked file", "test -f '%s/new.txt'", cwd);
    assert_remote("deleted file absent", "test ! -e '%s/gone.txt'", cwd);
    assert_ok(release(&run, ER_RELEASE_RELEASED));
}

/* Realize of a plain directory (4.2): tar, AppleDouble files left out,
 * old content cleared except .paperclip-runtime. */
static void ssh_realize_plain_directory_by_tar(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char local[ER_HARNESS_PATH_MAX + 32];
    char script[4096];
    char *text;
    const json_t *res;
    json_t *body;

    (void)state;
    er_harness_run_init(&run);
    host_dir("plain", local, sizeof(local));
    assert_int_equal(er_harness_ssh_plain_workspace(local), 0);
    snprintf(remote, sizeof(remote), "%s/plain", ssh->root);
    make_env(run.company_id, "SSH plain", remote, "shared", env_id);
    body = acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    json_decref(body);
    assert_remote("pre-create runtime state",
                  "mkdir -p '%s/.paperclip-runtime' && echo keep > "
                  "'%s/.paperclip-runtime/marker.txt'",
                  cwd, cwd);
    assert_remote("stray file", "echo stray > '%s/stray.txt'", cwd);

    res = realize(&run, local, NULL);
    assert_realized(res, env_id, lease_id, local, cwd, remote);
    snprintf(script, sizeof(script),
             "cat '%s/top.txt' '%s/nested/deep/leaf.txt'", cwd, cwd);
    text = remote_text(script);
    assert_string_equal(text, "top\nleaf");
    er_free(text);
    assert_remote("no .git", "test ! -e '%s/.git'", cwd);
    assert_remote("AppleDouble file left out", "test ! -e '%s/._top.txt'", cwd);
    assert_remote(".paperclip-runtime kept",
                  "grep -qx keep '%s/.paperclip-runtime/marker.txt'", cwd);
    assert_remote("stray file cleared", "test ! -e '%s/stray.txt'", cwd);
    assert_ok(release(&run, ER_RELEASE_RELEASED));
}

/* The provision command (3.4 step 3): `bash -lc` in the realized cwd with
 * SHELL=/bin/bash; the record's bootstrap names it. */
static void ssh_provision_command_runs_remotely(void **state)
{
    static const char provision[] =
        "printf '%s\\n' \"$SHELL\" > provisioned.txt; "
        "shopt -q login_shell && echo login >> provisioned.txt; "
        "pwd >> provisioned.txt";
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char local[ER_HARNESS_PATH_MAX + 32];
    char script[4096];
    char expected[ER_HARNESS_PATH_MAX + 128];
    char *overlay;
    char *text;
    const json_t *res;
    json_t *body;
    json_t *o;

    (void)state;
    er_harness_run_init(&run);
    host_dir("provision", local, sizeof(local));
    assert_int_equal(er_harness_ssh_git_workspace(local, "main"), 0);
    snprintf(remote, sizeof(remote), "%s/provision", ssh->root);
    make_env(run.company_id, "SSH provision", remote, "per_lease", env_id);
    body = acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    json_decref(body);

    o = json_pack("{s:s}", "provisionCommand", provision);
    overlay = er_harness_json_text(o);
    json_decref(o);
    res = realize(&run, local, overlay);
    free(overlay);
    assert_realized(res, env_id, lease_id, local, cwd, remote);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.bootstrap.command",
                          provision);
    json_decref(body);

    snprintf(script, sizeof(script), "cat '%s/provisioned.txt'", cwd);
    text = remote_text(script);
    snprintf(expected, sizeof(expected), "/bin/bash\nlogin\n%s", cwd);
    assert_string_equal(text, expected);
    er_free(text);
    assert_ok(release(&run, ER_RELEASE_RELEASED));
}

/* A provision command that is not found (3.4 step 3, issue #11626):
 * workspace_realization_failed with the exit code and stderr's first line;
 * the lease stays active until release. */
static void ssh_provision_failure_is_realization_failed(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char local[ER_HARNESS_PATH_MAX + 32];
    const char *msg;
    const json_t *res;
    json_t *body;
    json_t *row;

    (void)state;
    er_harness_run_init(&run);
    host_dir("provision-fail", local, sizeof(local));
    assert_int_equal(er_harness_ssh_plain_workspace(local), 0);
    snprintf(remote, sizeof(remote), "%s/provision-fail", ssh->root);
    make_env(run.company_id, "SSH tools", remote, "shared", env_id);
    body = acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    json_decref(body);

    res = realize(&run, local,
                  "{\"provisionCommand\": \"install-tool --version\"}");
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");
    ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    ER_HARNESS_ASSERT_STR(res, "driver", "ssh");
    msg = er_harness_json_str(res, "errorMessage");
    /* bash says "bash: line 1: install-tool: command not found". */
    assert_has_prefix(msg, "Failed to provision workspace for environment "
                           "\"SSH tools\" (ssh): exit code 127: ");
    assert_contains(msg, "install-tool");
    assert_contains(msg, "not found");
    if (er_harness_ssh_text_has_key(ssh, msg))
        er_harness_fail(__FILE__, __LINE__, "key in the message");

    row = lease_row(lease_id);
    ER_HARNESS_ASSERT_STR(row, "status", "active");
    json_decref(row);
    assert_ok(release(&run, ER_RELEASE_RELEASED));
    row = lease_row(lease_id);
    ER_HARNESS_ASSERT_STR(row, "status", "released");
    assert_no_control_dir(lease_id);
    json_decref(row);
}

/* Release of a failed run (2.5): status failed, failure reason
 * adapter_or_run_failure, cleanup done; the activity says so. */
static void ssh_release_failed_records_failure_reason(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    const struct er_harness_record *act[4];
    const json_t *res;
    json_t *body;
    json_t *row;
    json_t *details;
    size_t i;
    size_t n;
    bool is_found = false;

    (void)state;
    er_harness_run_init(&run);
    snprintf(remote, sizeof(remote), "%s/failed", ssh->root);
    make_env(run.company_id, "SSH failed", remote, "per_lease", env_id);
    body = acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    json_decref(body);
    res = release(&run, ER_RELEASE_FAILED);
    assert_ok(res);
    row = lease_row(lease_id);
    ER_HARNESS_ASSERT_STR(row, "status", "failed");
    assert_no_control_dir(lease_id);
    ER_HARNESS_ASSERT_STR(row, "failure_reason", "adapter_or_run_failure");
    ER_HARNESS_ASSERT_STR(row, "cleanup_status", "success");
    ER_HARNESS_ASSERT_STR(row, "has_released_at", "t");
    json_decref(row);
    assert_remote("per-lease directory removed", "test ! -e '%s'", cwd);

    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "entityId",
                                      lease_id, 2, ER_HARNESS_WAIT_MS));
    n = er_harness_find(h, ER_HARNESS_ACTIVITY, "entityId", lease_id, act, 4);
    for (i = 0; i < n && i < 4; i++) {
        const char *action = er_harness_json_str(act[i]->json, "action");

        if (action == NULL || strcmp(action, "environment.lease_released") != 0)
            continue;
        details = er_harness_json_parse_field(act[i]->json, "detailsJson");
        ER_HARNESS_ASSERT_STR(details, "status", "failed");
        ER_HARNESS_ASSERT_STR(details, "cleanupStatus", "success");
        ER_HARNESS_ASSERT_STR(details, "failureReason",
                              "adapter_or_run_failure");
        json_decref(details);
        is_found = true;
    }
    assert_true(is_found);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ssh_acquire_makes_remote_dir_and_lease),
        cmocka_unit_test(ssh_realize_git_workspace_then_release),
        cmocka_unit_test(ssh_realize_git_drops_locally_deleted_file),
        cmocka_unit_test(ssh_realize_plain_directory_by_tar),
        cmocka_unit_test(ssh_provision_command_runs_remotely),
        cmocka_unit_test(ssh_provision_failure_is_realization_failed),
        cmocka_unit_test(ssh_release_failed_records_failure_reason),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
