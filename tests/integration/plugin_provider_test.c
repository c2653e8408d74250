/* plugin_provider_test: a sandbox provider served by a provider plugin
 * (domain.md 4.3 step 3, upstream.md Part A) through a real worker process:
 * the repository's test provider plugin (tests/plugins/test-provider, run
 * on node as upstream runs its plugins) installed in ENVRUN_PLUGINS_DIR.
 * Every environment* method the lifecycle uses, with the params upstream's
 * newer hosts send (agentId, executionWorkspaceId, adapterType); resume of
 * a parked machine and its destroy on expiry; plugins that crash
 * mid-call, hang, write garbage, or never answer initialize; and one that
 * echoes the secrets of its config, which must not come back out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/support/harness.h"

#define WAIT_MS 90000

static struct er_harness *h;
static struct er_harness_worker *worker;
static char plugins_dir[ER_HARNESS_PATH_MAX + 32];
static char call_log[ER_HARNESS_PATH_MAX + 32];
static char env_plugins[ER_HARNESS_PATH_MAX + 64];
/* <h->dir>.secrets: the worker's ENVRUN_SECRETS_DIR, beside its log
 * directory (where the ssh tests keep theirs). */
static char secrets_dir[ER_HARNESS_PATH_MAX + 16];
static char env_secrets[ER_HARNESS_PATH_MAX + 64];
static const char *worker_env[3];

/* Copy the test plugin to plugins_dir/name; with driver_key (not NULL)
 * its manifest gets that id suffix and driverKey; behaviour (JSON text or
 * NULL) becomes its test-behaviour.json. */
static int install_plugin(const char *name, const char *driver_key,
                          const char *behaviour)
{
    char cmd[3 * ER_HARNESS_PATH_MAX];
    char path[ER_HARNESS_PATH_MAX + 128];
    FILE *f;

    snprintf(cmd, sizeof(cmd), "cp -r '%s/tests/plugins/test-provider' '%s/%s'",
             ER_SOURCE_DIR, plugins_dir, name);
    if (system(cmd) != 0)
        return -1;
    if (driver_key != NULL) {
        json_t *m;
        json_t *drv;

        snprintf(path, sizeof(path), "%s/%s/manifest.json", plugins_dir, name);
        m = json_load_file(path, 0, NULL);
        if (m == NULL)
            return -1;
        drv = json_array_get(json_object_get(m, "environmentDrivers"), 0);
        json_object_set_new(m, "id", json_sprintf("envrun.%s", driver_key));
        json_object_set_new(drv, "driverKey", json_string(driver_key));
        if (json_dump_file(m, path, 0) != 0) {
            json_decref(m);
            return -1;
        }
        json_decref(m);
    }
    if (behaviour != NULL) {
        snprintf(path, sizeof(path), "%s/%s/test-behaviour.json", plugins_dir,
                 name);
        f = fopen(path, "w");
        if (f == NULL)
            return -1;
        fputs(behaviour, f);
        fclose(f);
    }
    return 0;
}

static int group_setup(void **state)
{
    struct er_harness_worker_opts opts = { 0 };
    char behaviour[3 * ER_HARNESS_PATH_MAX];

    (void)state;
    if (access("/usr/bin/node", X_OK) != 0 && getenv("CI") == NULL) {
        printf("skipped: node is not installed (scripts/install-deps.sh "
               "installs it)\n");
        exit(0);
    }
    h = er_harness_new("plugin_provider", 2, NULL);
    if (h == NULL)
        return -1;
    snprintf(plugins_dir, sizeof(plugins_dir), "%s/plugins", h->dir);
    snprintf(call_log, sizeof(call_log), "%s/calls.jsonl", h->dir);
    snprintf(behaviour, sizeof(behaviour), "rm -rf '%s' '%s'", plugins_dir,
             call_log);
    if (system(behaviour) != 0 || mkdir(plugins_dir, 0700) != 0)
        return -1;
    snprintf(behaviour, sizeof(behaviour), "{\"callLog\": \"%s\"}", call_log);
    if (install_plugin("test-provider", NULL, behaviour) != 0)
        return -1;
    snprintf(behaviour, sizeof(behaviour),
             "{\"callLog\": \"%s\", \"nativeSync\": true}", call_log);
    if (install_plugin("sync", "sync-provider", behaviour) != 0 ||
        install_plugin("stuck", "stuck-provider",
                       "{\"initialize\": \"hang\"}") != 0)
        return -1;
    snprintf(env_plugins, sizeof(env_plugins), "ENVRUN_PLUGINS_DIR=%s",
             plugins_dir);
    snprintf(secrets_dir, sizeof(secrets_dir), "%s.secrets", h->dir);
    snprintf(behaviour, sizeof(behaviour), "rm -rf '%s'", secrets_dir);
    if (system(behaviour) != 0 || mkdir(secrets_dir, 0700) != 0)
        return -1;
    snprintf(env_secrets, sizeof(env_secrets), "ENVRUN_SECRETS_DIR=%s",
             secrets_dir);
    worker_env[0] = env_plugins;
    worker_env[1] = env_secrets;
    worker_env[2] = NULL;
    opts.env = worker_env;
    worker = er_harness_worker_start_warm(h, &opts);
    return worker != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_destroy(h);
    h = NULL;
    return rc;
}

/* ----------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------- */

static const json_t *roundtrip(struct er_harness_cmd *c)
{
    const json_t *res = er_harness_roundtrip(h, worker, c, WAIT_MS);

    ER_HARNESS_NON_NULL(res);
    return res;
}

static const json_t *acquire_cmd(struct er_harness_run *run, const char *env_id,
                                 const char *ews_id)
{
    static struct er_harness_cmd c;

    er_harness_cmd_acquire(&c, run);
    c.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    c.cmd.execution_workspace_id = (char *)(uintptr_t)ews_id;
    return roundtrip(&c);
}

/* The lease row (new reference) with its metadata parsed. */
static json_t *lease_row(const char *lease_id, json_t **meta)
{
    json_t *row = er_harness_pg_one_row(
        h->db_url,
        "SELECT status, cleanup_status, metadata::text AS metadata "
        "FROM environment_leases WHERE id = $1",
        lease_id);

    *meta = er_harness_json_parse_field(row, "metadata");
    return row;
}

/* The last request for method in the call log whose params mention
 * needle (NULL: any), or NULL (new reference). */
static json_t *last_call(const char *method, const char *needle)
{
    FILE *f = fopen(call_log, "r");
    char *line = NULL;
    size_t cap = 0;
    json_t *found = NULL;

    if (f == NULL)
        return NULL;
    while (getline(&line, &cap, f) > 0) {
        json_t *v;

        if (needle != NULL && strstr(line, needle) == NULL)
            continue;
        v = json_loads(line, 0, NULL);
        if (v != NULL && strcmp(er_harness_json_str(v, "method") != NULL
                                    ? er_harness_json_str(v, "method")
                                    : "",
                                method) == 0) {
            json_decref(found);
            found = v;
        } else {
            json_decref(v);
        }
    }
    free(line);
    fclose(f);
    return found;
}

static bool dir_exists(const char *path)
{
    struct stat st;

    return path != NULL && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static const json_t *realize(struct er_harness_run *run, const char *cwd,
                             const char *overlay_json)
{
    return er_harness_realize(h, worker, run, cwd, overlay_json, WAIT_MS);
}

static const json_t *release(struct er_harness_run *run,
                             enum er_release_status status)
{
    return er_harness_release(h, worker, run, status, WAIT_MS);
}

/* ----------------------------------------------------------------
 * Cases
 * ---------------------------------------------------------------- */

static void every_method_of_a_run(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char ews_id[37];
    char ws[ER_HARNESS_PATH_MAX + 32];
    char path[ER_HARNESS_PATH_MAX + 128];
    char prefix[128];
    const char *lease_id;
    const char *root;
    const json_t *res;
    json_t *body;
    json_t *row;
    json_t *meta;
    json_t *call;
    FILE *f;

    (void)state;
    er_harness_run_init(&run);
    assert_int_equal(er_uuid_v4(ews_id), 0);
    er_harness_env_insert(
        h, run.company_id, "Plugin", "sandbox", "active",
        "{\"provider\": \"test-provider\", \"image\": \"img:1\"}", env_id);
    res = acquire_cmd(&run, env_id, ews_id);
    ER_HARNESS_ASSERT_OK(res);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(body, "lease.provider", "test-provider");
    snprintf(prefix, sizeof(prefix), "test-provider://%s/", run.run_id);
    assert_memory_equal(er_harness_json_str(body, "lease.providerLeaseId"),
                        prefix, strlen(prefix));
    lease_id = er_harness_json_str(body, "lease.id");
    row = lease_row(lease_id, &meta);
    ER_HARNESS_ASSERT_STR(meta, "pluginKey", "envrun.test-provider");
    ER_HARNESS_ASSERT_TRUE(meta, "sandboxProviderPlugin");
    ER_HARNESS_ASSERT_STR(meta, "image", "img:1");
    ER_HARNESS_ASSERT_STR(meta, "driver", "sandbox");
    root = er_harness_json_str(meta, "fakeRootDir");
    assert_true(dir_exists(root));

    /* The newer acquire fields reach the provider (#9950), the invocation
     * is scoped to the company, config has no provider key. */
    call = last_call("environmentAcquireLease", run.run_id);
    ER_HARNESS_NON_NULL(call);
    ER_HARNESS_ASSERT_STR(call, "params.agentId", run.agent_id);
    ER_HARNESS_ASSERT_STR(call, "params.executionWorkspaceId", ews_id);
    ER_HARNESS_ASSERT_STR(call, "params.adapterType", "claude_local");
    ER_HARNESS_ASSERT_STR(call, "params.runId", run.run_id);
    ER_HARNESS_ASSERT_STR(call, "params.companyId", run.company_id);
    ER_HARNESS_ASSERT_STR(call, "params.driverKey", "test-provider");
    ER_HARNESS_ASSERT_STR(call, "paperclipInvocation.scope.companyId",
                          run.company_id);
    assert_null(er_harness_json_at(call, "params.config.provider"));
    json_decref(call);

    /* Realize: the provider's realize, then the workspace through its exec
     * channel, then the provision command (bash -lc) there. */
    snprintf(ws, sizeof(ws), "%s/plugin-ws", h->dir);
    er_harness_fresh_dir(ws);
    snprintf(path, sizeof(path), "%s/hello.txt", ws);
    f = fopen(path, "w");
    ER_HARNESS_NON_NULL(f);
    fputs("hi\n", f);
    fclose(f);
    res = realize(&run, ws,
                  "{\"provisionCommand\": \"test -e hello.txt && echo "
                  "provisioned > done.txt\"}");
    ER_HARNESS_ASSERT_OK(res);
    snprintf(path, sizeof(path), "%s/workspace/done.txt", root);
    assert_int_equal(access(path, F_OK), 0);
    call = last_call("environmentRealizeWorkspace",
                     er_harness_json_str(body, "lease.providerLeaseId"));
    ER_HARNESS_NON_NULL(call);
    json_decref(call);
    call = last_call("environmentExecute", "provisioned");
    ER_HARNESS_NON_NULL(call);
    ER_HARNESS_ASSERT_STR(call, "params.command", "bash");
    ER_HARNESS_ASSERT_TRUE(call, "params.bypassSession");
    json_decref(call);

    /* A failing provision command: the spec's failure text. */
    res =
        realize(&run, ws, "{\"provisionCommand\": \"echo nope >&2; exit 3\"}");
    /* (The first stderr line may be the host's login profile talking: the
     * test plugin runs commands on this host.) */
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(res, "errorMessage"),
                               "Failed to provision workspace for environment "
                               "\"Plugin\" (sandbox): exit code 3: ");

    /* Release: the provider's release removes the machine. */
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_RELEASED));
    json_decref(row);
    json_decref(meta);
    row = lease_row(lease_id, &meta);
    ER_HARNESS_ASSERT_STR(row, "status", "released");
    ER_HARNESS_ASSERT_STR(row, "cleanup_status", "success");
    call = last_call("environmentReleaseLease",
                     er_harness_json_str(body, "lease.providerLeaseId"));
    ER_HARNESS_NON_NULL(call);
    json_decref(call);
    assert_false(dir_exists(er_harness_json_str(meta, "fakeRootDir")));
    json_decref(meta);
    json_decref(row);
    json_decref(body);
}

static void reuse_resumes_then_expiry_destroys(void **state)
{
    struct er_harness_run run;
    struct er_harness_run run2;
    char env_id[37];
    char want[128];
    char root[ER_HARNESS_PATH_MAX];
    const json_t *res;
    json_t *body;
    json_t *row;
    json_t *meta;
    json_t *call;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(
        h, run.company_id, "Plugin reuse", "sandbox", "active",
        "{\"provider\": \"test-provider\", \"reuseLease\": true}", env_id);
    snprintf(want, sizeof(want), "test-provider://%s", env_id);
    res = acquire_cmd(&run, env_id, NULL);
    ER_HARNESS_ASSERT_OK(res);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(body, "lease.leasePolicy", "reuse_by_environment");
    ER_HARNESS_ASSERT_STR(body, "lease.providerLeaseId", want);
    row = lease_row(er_harness_json_str(body, "lease.id"), &meta);
    snprintf(root, sizeof(root), "%s",
             er_harness_json_str(meta, "fakeRootDir"));
    json_decref(meta);
    json_decref(row);
    json_decref(body);
    /* Parked, not destroyed. */
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_RELEASED));
    assert_true(dir_exists(root));

    er_harness_run_init_same_company(&run2, &run);
    res = acquire_cmd(&run2, env_id, NULL);
    ER_HARNESS_ASSERT_OK(res);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(body, "lease.providerLeaseId", want);
    row = lease_row(er_harness_json_str(body, "lease.id"), &meta);
    ER_HARNESS_ASSERT_TRUE(meta, "resumedLease");
    ER_HARNESS_ASSERT_STR(meta, "fakeRootDir", root);
    call = last_call("environmentResumeLease", want);
    ER_HARNESS_NON_NULL(call);
    json_decref(call);
    json_decref(meta);
    json_decref(row);
    json_decref(body);
    /* An expired reusable lease is destroyed, not parked. */
    ER_HARNESS_ASSERT_OK(release(&run2, ER_RELEASE_EXPIRED));
    call = last_call("environmentDestroyLease", want);
    ER_HARNESS_NON_NULL(call);
    json_decref(call);
    assert_false(dir_exists(root));
}

/* A provider that offers environmentSyncIn gets the workspace through it,
 * not through its exec channel (A10). */
static void native_sync_copies_the_workspace(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char ws[ER_HARNESS_PATH_MAX + 32];
    char path[ER_HARNESS_PATH_MAX + 128];
    const char *plid;
    json_t *body;
    json_t *row;
    json_t *meta;
    json_t *call;
    FILE *f;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Synced", "sandbox", "active",
                          "{\"provider\": \"sync-provider\"}", env_id);
    body = er_harness_json_parse_field(acquire_cmd(&run, env_id, NULL),
                                       "resultJson");
    plid = er_harness_json_str(body, "lease.providerLeaseId");
    ER_HARNESS_NON_NULL(plid);
    row = lease_row(er_harness_json_str(body, "lease.id"), &meta);
    snprintf(ws, sizeof(ws), "%s/sync-ws", h->dir);
    er_harness_fresh_dir(ws);
    snprintf(path, sizeof(path), "%s/synced.txt", ws);
    f = fopen(path, "w");
    ER_HARNESS_NON_NULL(f);
    fputs("via sync\n", f);
    fclose(f);
    ER_HARNESS_ASSERT_OK(realize(&run, ws, NULL));
    snprintf(path, sizeof(path), "%s/workspace/synced.txt",
             er_harness_json_str(meta, "fakeRootDir"));
    assert_int_equal(access(path, F_OK), 0);
    call = last_call("environmentSyncIn", plid);
    ER_HARNESS_NON_NULL(call);
    ER_HARNESS_ASSERT_STR(call, "params.operations.0.files.0.sourcePath", ws);
    ER_HARNESS_ASSERT_STR(call, "params.operations.0.files.0.exclude.0",
                          ".paperclip-runtime");
    json_decref(call);
    /* No archive went through the exec channel. */
    call = last_call("environmentExecute", plid);
    assert_null(call);
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_RELEASED));
    json_decref(meta);
    json_decref(row);
    json_decref(body);
}

/* requestedExpiresAt reaches the provider as ISO 8601 (upstream.md C5);
 * the test plugin returns no expiry, so the lease's expires_at is the
 * requested time, where the reaper will release it. */
static void requested_expiry_reaches_the_provider(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char iso[32];
    const char *params[1];
    const json_t *res;
    json_t *call;
    int64_t at = er_time_now_ms() + 3600 * 1000;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Bounded", "sandbox", "active",
                          "{\"provider\": \"test-provider\"}", env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    c.cmd.requested_expires_at_ms = at;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_OK(res);
    call = last_call("environmentAcquireLease", run.run_id);
    ER_HARNESS_NON_NULL(call);
    er_time_iso(at, iso);
    ER_HARNESS_ASSERT_STR(call, "params.requestedExpiresAt", iso);
    json_decref(call);
    params[0] = er_harness_json_str(res, "leaseId");
    assert_int_equal(
        er_harness_pg_count(h->db_url,
                            "SELECT count(*) FROM environment_leases WHERE "
                            "id = $1::uuid AND status = 'active' AND "
                            "abs(extract(epoch FROM expires_at) * 1000 - "
                            "(SELECT extract(epoch FROM expires_cap) * 1000 "
                            "FROM envrun.lease_state WHERE lease_id = "
                            "$1::uuid)) < 1",
                            1, params),
        1);
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_RELEASED));
}

static long long leases_of(const char *company_id)
{
    return er_harness_pg_count(h->db_url,
                               "SELECT count(*) FROM environment_leases "
                               "WHERE company_id = $1",
                               1, (const char *[]){ company_id });
}

static void crash_mid_call_fails_it_and_restarts(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char ok_env[37];
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(
        h, run.company_id, "Crashy", "sandbox", "active",
        "{\"provider\": \"test-provider\", \"testBehaviour\": "
        "{\"onMethod\": {\"environmentAcquireLease\": \"crash\"}}}",
        env_id);
    er_harness_env_insert(h, run.company_id, "Fine", "sandbox", "active",
                          "{\"provider\": \"test-provider\"}", ok_env);
    res = acquire_cmd(&run, env_id, NULL);
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_acquire_failed");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(res, "errorMessage"),
                               "Worker process exited (code=3");
    assert_int_equal(leases_of(run.company_id), 0);
    /* The worker comes back (backoff 1 s) and serves the next call. */
    er_harness_run_init_same_company(&run, &run);
    res = acquire_cmd(&run, ok_env, NULL);
    ER_HARNESS_ASSERT_OK(res);
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_RELEASED));
}

static void garbage_on_stdout_is_survived(void **state)
{
    struct er_harness_run run;
    char env_id[37];

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(
        h, run.company_id, "Noisy", "sandbox", "active",
        "{\"provider\": \"test-provider\", \"testBehaviour\": "
        "{\"onMethod\": {\"environmentAcquireLease\": \"garbage\"}}}",
        env_id);
    ER_HARNESS_ASSERT_OK(acquire_cmd(&run, env_id, NULL));
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_RELEASED));
    assert_true(er_harness_worker_log_contains(worker, "unparseable"));
}

static void hang_times_out_with_the_spec_message(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    /* timeoutMs 1: the acquire's RPC timeout is 1 + 30000 ms (A6). */
    er_harness_env_insert(h, run.company_id, "Hangs", "sandbox", "active",
                          "{\"provider\": \"test-provider\", \"timeoutMs\": 1, "
                          "\"testBehaviour\": {\"onMethod\": "
                          "{\"environmentAcquireLease\": \"hang\"}}}",
                          env_id);
    res = acquire_cmd(&run, env_id, NULL);
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_acquire_failed");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(res, "errorMessage"),
                               "RPC call \"environmentAcquireLease\" timed "
                               "out after 30001ms");
    assert_int_equal(leases_of(run.company_id), 0);
}

static void plugin_that_never_initializes(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Stuck", "sandbox", "active",
                          "{\"provider\": \"stuck-provider\"}", env_id);
    res = acquire_cmd(&run, env_id, NULL);
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_acquire_failed");
    ER_HARNESS_ASSERT_CONTAINS(
        er_harness_json_str(res, "errorMessage"),
        "Sandbox provider \"stuck-provider\" is installed via plugin "
        "\"envrun.stuck-provider\", but its worker is not running.");
    assert_int_equal(leases_of(run.company_id), 0);
}

/* Write value as the secret id of company_id (0600, in a 0700 company
 * directory). */
static void secret_write(const char *company_id, const char *id,
                         const char *value)
{
    char path[ER_HARNESS_PATH_MAX + 128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", secrets_dir, company_id);
    if (mkdir(path, 0700) != 0 && access(path, F_OK) != 0)
        fail_msg("cannot make %s", path);
    snprintf(path, sizeof(path), "%s/%s/%s", secrets_dir, company_id, id);
    f = fopen(path, "w");
    ER_HARNESS_NON_NULL(f);
    assert_int_equal(chmod(path, 0600), 0);
    fputs(value, f);
    assert_int_equal(fclose(f), 0);
}

/* Rows of every table of the schemas public and envrun that hold needle
 * in their text form or in the bytes of a bytea column (the results kept
 * for replays and the outbox are Avro bytes, whose text form is hex). */
static long long rows_holding(const char *needle)
{
    json_t *tables = er_harness_pg_query(
        h->db_url,
        "SELECT format('%I.%I', c.table_schema, c.table_name) AS t, "
        "coalesce(string_agg(format(' OR position(convert_to($1, ''UTF8'') "
        "in x.%I) > 0', c.column_name), '') FILTER (WHERE c.data_type = "
        "'bytea'), '') AS b FROM information_schema.columns c JOIN "
        "information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema IN ('public', 'envrun') AND t.table_type = "
        "'BASE TABLE' GROUP BY c.table_schema, c.table_name",
        0, NULL);
    long long total = 0;
    size_t i;

    ER_HARNESS_NON_NULL(tables);
    assert_true(json_array_size(tables) > 5);
    for (i = 0; i < json_array_size(tables); i++) {
        const json_t *row = json_array_get(tables, i);
        char sql[2048];
        long long n;

        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM %s x WHERE strpos(x::text, $1) > 0%s",
                 er_harness_json_str(row, "t"), er_harness_json_str(row, "b"));
        n = er_harness_pg_count(h->db_url, sql, 1, &needle);
        assert_true(n >= 0);
        total += n;
    }
    json_decref(tables);
    return total;
}

/* None of the needles is in text (NULL: nothing to look in). */
static void assert_none_in(const char *what, const char *text,
                           const char *const *needles, size_t cnt)
{
    size_t i;

    for (i = 0; text != NULL && i < cnt; i++) {
        if (strstr(text, needles[i]) != NULL)
            fail_msg("a secret (%s) leaked into %s: %s", needles[i], what,
                     text);
    }
}

/* A test-provider environment whose config holds the secrets token_id
 * and key_id of company as accessToken and signingKeyMaterial, with the
 * test plugin's onMethod modes (JSON members) for each call. */
static void echo_env(const char *company_id, const char *name,
                     const char *token_id, const char *key_id,
                     const char *modes, char env_id[37])
{
    char config[1024];

    snprintf(config, sizeof(config),
             "{\"provider\": \"test-provider\", "
             "\"accessToken\": {\"type\": \"secret_ref\", \"secretId\": "
             "\"%s\"}, \"signingKeyMaterial\": {\"type\": \"secret_ref\", "
             "\"secretId\": \"%s\"}, \"testBehaviour\": {\"onMethod\": "
             "{%s}}}",
             token_id, key_id, modes);
    er_harness_env_insert(h, company_id, name, "sandbox", "active", config,
                          env_id);
}

/* An environment whose config holds two secret references: a token, and a
 * key of several lines with a quote and a backslash (its JSON-escaped form
 * differs). The plugin shows the config it got (plaintext, as upstream's
 * protocol has it) in an error answer, a log notification and on stderr,
 * then in a crash's stderr: the values reach no result, no event, no row
 * and no log line, while what the plugin said is kept around
 * "[REDACTED]". */
static void echoed_secrets_never_come_back_out(void **state)
{
    struct er_harness_run run;
    char token_id[37];
    char key_id[37];
    char a[37];
    char b[37];
    char c[37];
    char token[64];
    char key[256];
    char env_id[37];
    char crash_env[37];
    char result_env[37];
    char ws[ER_HARNESS_PATH_MAX + 32];
    const char *needles[3];
    json_t *row;
    json_t *meta;
    const char *msg;
    const json_t *res;
    char *text;
    size_t i;
    int t;

    (void)state;
    er_harness_run_init(&run);
    assert_int_equal(er_uuid_v4(token_id), 0);
    assert_int_equal(er_uuid_v4(key_id), 0);
    assert_int_equal(er_uuid_v4(a), 0);
    assert_int_equal(er_uuid_v4(b), 0);
    assert_int_equal(er_uuid_v4(c), 0);
    /* Each needle is in one part of a secret: a leak of either form of
     * either secret, or of a good part of one, shows. */
    needles[0] = a;
    needles[1] = b;
    needles[2] = c;
    snprintf(token, sizeof(token), "tok-%s", a);
    snprintf(key, sizeof(key),
             "-----BEGIN TEST KEY-----\n%s\n\"q\" \\ %s\n"
             "-----END TEST KEY-----\n",
             b, c);
    secret_write(run.company_id, token_id, token);
    secret_write(run.company_id, key_id, key);
    echo_env(run.company_id, "Echoes", token_id, key_id,
             "\"environmentAcquireLease\": \"echo\"", env_id);
    echo_env(run.company_id, "Echoes and dies", token_id, key_id,
             "\"environmentAcquireLease\": \"echo-crash\"", crash_env);
    echo_env(run.company_id, "Echoes back", token_id, key_id,
             "\"environmentAcquireLease\": \"echo-result\", "
             "\"environmentExecute\": \"echo-result\"",
             result_env);

    /* The plugin's error answer. */
    res = acquire_cmd(&run, env_id, NULL);
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_acquire_failed");
    msg = er_harness_json_str(res, "errorMessage");
    ER_HARNESS_ASSERT_CONTAINS(
        msg, "Failed to acquire lease for environment \"Echoes\" (sandbox): "
             "test provider: environmentAcquireLease failed on purpose: "
             "accessToken=[REDACTED] signingKeyMaterial=[REDACTED] config={");
    assert_none_in("errorMessage", msg, needles, 3);
    assert_none_in("resultJson", er_harness_json_str(res, "resultJson"),
                   needles, 3);
    /* Its log notification and stderr line reach the worker's log. */
    assert_true(er_harness_worker_wait_log(
        worker,
        "[plugin stderr] test provider: environmentAcquireLease echoes "
        "accessToken=[REDACTED] signingKeyMaterial=[REDACTED] config={",
        10000));
    assert_true(er_harness_worker_log_contains(
        worker, "[plugin] test provider: environmentAcquireLease echoes "
                "accessToken=[REDACTED] signingKeyMaterial=[REDACTED] "
                "config={"));

    /* A crash: the stderr excerpt of the failure message. */
    er_harness_run_init_same_company(&run, &run);
    res = acquire_cmd(&run, crash_env, NULL);
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_acquire_failed");
    msg = er_harness_json_str(res, "errorMessage");
    ER_HARNESS_ASSERT_CONTAINS(msg, "Worker process exited (code=3, "
                                    "signal=null)\n\nWorker stderr:\n");
    ER_HARNESS_ASSERT_CONTAINS(msg, "\":\"[REDACTED]\"");
    assert_none_in("errorMessage", msg, needles, 3);
    assert_true(er_harness_worker_wait_log(
        worker,
        "[plugin stderr] test provider: crashing in environmentAcquireLease: "
        "accessToken=[REDACTED] signingKeyMaterial=[REDACTED] config={",
        10000));

    assert_int_equal(leases_of(run.company_id), 0);

    /* In what the plugin returns: the acquire's metadata keeps no member
     * holding a value (top level or nested), and a provision command's
     * output is scrubbed in the failure message. */
    er_harness_run_init_same_company(&run, &run);
    res = acquire_cmd(&run, result_env, NULL);
    ER_HARNESS_ASSERT_OK(res);
    row = lease_row(er_harness_json_str(res, "leaseId"), &meta);
    assert_null(json_object_get(meta, "echoed"));
    assert_null(json_object_get(meta, "nested"));
    ER_HARNESS_ASSERT_STR(meta, "provider", "test-provider");
    snprintf(ws, sizeof(ws), "%s/echo-ws", h->dir);
    er_harness_fresh_dir(ws);
    res = realize(&run, ws, "{\"provisionCommand\": \"echo-me\"}");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");
    msg = er_harness_json_str(res, "errorMessage");
    ER_HARNESS_ASSERT_CONTAINS(msg, "err accessToken=[REDACTED] "
                                    "signingKeyMaterial=[REDACTED] config={");
    assert_none_in("errorMessage", msg, needles, 3);
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_FAILED));
    json_decref(meta);
    json_decref(row);

    /* Nowhere: no row of any table, no record of any topic, no log line.
     * (The check finds the failure messages it looks through.) */
    assert_true(rows_holding("Worker stderr:") > 0);
    for (i = 0; i < 3; i++) {
        assert_int_equal(rows_holding(needles[i]), 0);
        for (t = 0; t < ER_HARNESS_TOPIC_CNT; t++)
            assert_false(er_harness_topic_contains(h, (enum er_harness_topic)t,
                                                   needles[i]));
    }
    text = er_harness_worker_log(worker);
    ER_HARNESS_NON_NULL(text);
    assert_none_in("the worker's log", text, needles, 3);
    er_free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_method_of_a_run),
        cmocka_unit_test(reuse_resumes_then_expiry_destroys),
        cmocka_unit_test(native_sync_copies_the_workspace),
        cmocka_unit_test(crash_mid_call_fails_it_and_restarts),
        cmocka_unit_test(garbage_on_stdout_is_survived),
        cmocka_unit_test(hang_times_out_with_the_spec_message),
        cmocka_unit_test(plugin_that_never_initializes),
        cmocka_unit_test(echoed_secrets_never_come_back_out),
        cmocka_unit_test(requested_expiry_reaches_the_provider),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
