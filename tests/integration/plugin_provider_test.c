/* plugin_provider_test: a sandbox provider served by a provider plugin
 * (domain.md 4.3 step 3, upstream.md Part A) through a real worker process:
 * the repository's test provider plugin (tests/plugins/test-provider, run
 * on node as upstream runs its plugins) installed in ENVRUN_PLUGINS_DIR.
 * Every environment* method the lifecycle uses, with the params upstream's
 * newer hosts send (agentId, executionWorkspaceId, adapterType); resume of
 * a parked machine and its destroy on expiry; and plugins that crash
 * mid-call, hang, write garbage, or never answer initialize. */
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
    worker_env[0] = env_plugins;
    worker_env[1] = NULL;
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
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
