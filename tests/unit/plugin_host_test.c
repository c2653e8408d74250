/* plugin_host_test: the provider-plugin host against the test provider
 * (tests/plugins/test-provider) run on node: discovery and manifest checks,
 * every environment* method, a plugin error, a crash mid-call, a hang, stray
 * stdout lines, a worker that never initializes, concurrent calls, that
 * secrets handed to a plugin never come back out of it, and that shutdown
 * leaves no process behind. Without node the cases that need
 * it are skipped, unless CI is set. */
#define _XOPEN_SOURCE 700 /* nftw */

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "drivers/sandbox_int.h"

#define PROVIDER   "test-provider"
#define PLUGIN_KEY "envrun.test-provider"
#define COMPANY    "5f0c8a52-7d0e-4c39-9a47-3c1d7a3b9e10"
#define SOURCE_DIR ER_SOURCE_DIR "/tests/plugins/test-provider"

static char root[256];            /* this run's scratch directory */
static char plugins_dir[512];     /* <root>/plugins */
static char plugin_dir[PATH_MAX]; /* <root>/plugins/test-provider */
static char call_log[PATH_MAX];   /* <root>/calls.jsonl */
static char log_path[PATH_MAX];   /* <root>/stderr.log: captured er_log */
static int saved_stderr = -1;     /* fd 2 while it is captured */
static bool has_node;

/* ================================================================
 * Helpers
 * ================================================================ */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static void copy_file(const char *from, const char *to)
{
    char buf[8192];
    FILE *in = fopen(from, "r");
    FILE *out = fopen(to, "w");
    size_t n;

    assert_non_null(in);
    assert_non_null(out);
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

static void path_join(char *out, const char *dir, const char *name)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);

    assert_true(n > 0 && n < PATH_MAX);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag == FTW_DP)
        return rmdir(path);
    return unlink(path);
}

static void rm_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void make_dir(const char *path)
{
    assert_int_equal(mkdir(path, 0755), 0);
}

/* A copy of the test provider in dir. */
static void install_plugin(const char *dir)
{
    static const char *const files[] = { "manifest.json", "package.json",
                                         "worker.js" };
    char from[PATH_MAX];
    char to[PATH_MAX];
    size_t i;

    make_dir(dir);
    for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        path_join(from, SOURCE_DIR, files[i]);
        path_join(to, dir, files[i]);
        copy_file(from, to);
    }
}

/* test-behaviour.json for the installed plugin: extra (JSON members
 * without braces, or NULL) plus the call log. */
static void set_behaviour(const char *extra)
{
    char path[PATH_MAX];
    char text[PATH_MAX + 512];

    snprintf(text, sizeof(text), "{\"callLog\":\"%s\"%s%s}\n", call_log,
             extra != NULL ? "," : "", extra != NULL ? extra : "");
    path_join(path, plugin_dir, "test-behaviour.json");
    write_file(path, text);
}

static bool node_found(void)
{
    const char *env = getenv("ENVRUN_NODE");
    const char *dirs = getenv("PATH");
    char path[PATH_MAX];
    const char *p;

    if (env != NULL && env[0] != '\0')
        return access(env, X_OK) == 0 || strchr(env, '/') == NULL;
    for (p = dirs; p != NULL && *p != '\0';) {
        const char *end = strchr(p, ':');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);

        snprintf(path, sizeof(path), "%.*s/node", (int)n, p);
        if (n > 0 && access(path, X_OK) == 0)
            return true;
        p = end != NULL ? end + 1 : NULL;
    }
    return false;
}

/* No child of this process is left, running or zombie. */
static void assert_no_children(void)
{
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

static void need_node(void)
{
    if (!has_node)
        skip();
}

static void host_up_with(const char *behaviour, int64_t init_ms,
                         int64_t ready_ms, int64_t backoff_ms)
{
    struct er_plugin_host_timing timing = { init_ms, ready_ms, backoff_ms };
    struct er_err err;

    set_behaviour(behaviour);
    unlink(call_log);
    er_plugin_host_set_timing(&timing);
    assert_int_equal(er_plugin_host_setup(plugins_dir, &err), 0);
}

static void host_up(const char *behaviour)
{
    host_up_with(behaviour, 5000, 5000, 50);
}

static void host_down(void)
{
    er_plugin_host_shutdown();
    er_plugin_host_set_timing(NULL);
    assert_no_children();
}

/* Call method with params given as JSON text. */
static int call(const char *method, const char *params_text, int64_t timeout_ms,
                struct er_plugin_reply *reply, struct er_err *err)
{
    json_error_t jerr;
    json_t *params = json_loads(params_text, 0, &jerr);
    int rc;

    if (params == NULL)
        fail_msg("bad params in the test: %s", jerr.text);
    er_err_clear(err);
    rc = er_plugin_call(PROVIDER, method, params, timeout_ms, reply, err);
    json_decref(params);
    return rc;
}

static const char *jstr(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static bool is_dir(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The lines of the call log for method (a new array). */
static json_t *logged_calls(const char *method)
{
    json_t *out = json_array();
    char line[65536];
    FILE *f = fopen(call_log, "r");

    if (f == NULL)
        return out;
    while (fgets(line, sizeof(line), f) != NULL) {
        json_t *v = json_loads(line, 0, NULL);

        if (v != NULL && strcmp(jstr(v, "method"), method) == 0)
            json_array_append(out, v);
        json_decref(v);
    }
    fclose(f);
    return out;
}

static pid_t worker_pid(void)
{
    struct er_plugin_reply reply;
    struct er_err err;
    pid_t pid;

    assert_int_equal(call("environmentProbe",
                          "{\"driverKey\":\"test-provider\",\"companyId\":"
                          "\"" COMPANY "\",\"environmentId\":\"env-1\","
                          "\"config\":{}}",
                          10000, &reply, &err),
                     0);
    pid = (pid_t)json_integer_value(
        json_object_get(json_object_get(reply.result, "metadata"), "pid"));
    assert_true(pid > 0);
    er_plugin_reply_fini(&reply);
    return pid;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        continue;
}

static bool is_gone(pid_t pid)
{
    return kill(pid, 0) != 0 && errno == ESRCH;
}

/* ================================================================
 * Discovery and manifest checks
 * ================================================================ */

static json_t *base_manifest(void)
{
    json_t *m = json_load_file(SOURCE_DIR "/manifest.json", 0, NULL);

    assert_non_null(m);
    return m;
}

static json_t *base_driver(json_t *m)
{
    return json_array_get(json_object_get(m, "environmentDrivers"), 0);
}

/* A plugin directory <dir>/<name> with manifest m (consumed) and an
 * executable shell worker, so discovery needs no node. */
static void make_plugin(const char *dir, const char *name, json_t *m)
{
    char pdir[PATH_MAX];
    char path[PATH_MAX];

    path_join(pdir, dir, name);
    make_dir(pdir);
    json_object_set_new(json_object_get(m, "entrypoints"), "worker",
                        json_string("./worker.sh"));
    path_join(path, pdir, "manifest.json");
    assert_int_equal(json_dump_file(m, path, 0), 0);
    json_decref(m);
    path_join(path, pdir, "worker.sh");
    write_file(path, "#!/bin/sh\nexec cat >/dev/null\n");
    assert_int_equal(chmod(path, 0755), 0);
}

/* Set up on dir expecting ER_EINVAL with a message holding want. */
static void expect_bad(const char *dir, const char *want)
{
    struct er_err err;

    er_err_clear(&err);
    assert_int_equal(er_plugin_host_setup(dir, &err), ER_EINVAL);
    if (strstr(err.msg, want) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, want);
    assert_non_null(strstr(err.msg, "plugin directory "));
    assert_false(er_plugin_host_has_provider(PROVIDER, NULL));
}

/* A fresh directory <root>/<name> holding one plugin with manifest m. */
static void one_plugin_dir(char *dir, const char *name, json_t *m)
{
    path_join(dir, root, name);
    make_dir(dir);
    make_plugin(dir, "p", m);
}

static void discovery_rejects_bad_manifests(void **state)
{
    char dir[PATH_MAX];
    char path[PATH_MAX];
    json_t *m;

    (void)state;
    m = base_manifest();
    json_object_set_new(m, "id", json_string("Bad_ID"));
    one_plugin_dir(dir, "bad-id", m);
    expect_bad(dir, "manifest id \"Bad_ID\" must match");

    m = base_manifest();
    json_object_set_new(m, "apiVersion", json_integer(2));
    one_plugin_dir(dir, "bad-api", m);
    expect_bad(dir, "apiVersion must be 1");

    m = base_manifest();
    json_object_set_new(m, "capabilities", json_pack("[s]", "http.outbound"));
    one_plugin_dir(dir, "no-cap", m);
    expect_bad(dir, "needs capability environment.drivers.register");

    m = base_manifest();
    json_object_set_new(base_driver(m), "surprise", json_true());
    one_plugin_dir(dir, "strict-driver", m);
    expect_bad(dir, "environmentDrivers[0] has unknown key \"surprise\"");

    m = base_manifest();
    json_object_set_new(base_driver(m), "driverKey", json_string("Not OK"));
    one_plugin_dir(dir, "bad-driver-key", m);
    expect_bad(dir, "driverKey must match");

    m = base_manifest();
    json_array_append(json_object_get(m, "environmentDrivers"), base_driver(m));
    one_plugin_dir(dir, "twice", m);
    expect_bad(dir, "driverKey \"test-provider\" is declared twice");

    /* The entry point: missing, escaping by ../ and by a symlink. */
    one_plugin_dir(dir, "missing-entry", base_manifest());
    path_join(path, dir, "p/manifest.json");
    m = json_load_file(path, 0, NULL);
    json_object_set_new(json_object_get(m, "entrypoints"), "worker",
                        json_string("./missing.js"));
    assert_int_equal(json_dump_file(m, path, 0), 0);
    json_decref(m);
    expect_bad(dir, "worker entry point ./missing.js not found");

    one_plugin_dir(dir, "escape", base_manifest());
    path_join(path, dir, "outside.js");
    write_file(path, "process.exit(0);\n");
    path_join(path, dir, "p/manifest.json");
    m = json_load_file(path, 0, NULL);
    json_object_set_new(json_object_get(m, "entrypoints"), "worker",
                        json_string("../outside.js"));
    assert_int_equal(json_dump_file(m, path, 0), 0);
    json_decref(m);
    expect_bad(dir, "../outside.js resolves outside the plugin directory");

    path_join(path, dir, "p/worker.sh");
    assert_int_equal(unlink(path), 0);
    assert_int_equal(symlink("../outside.js", path), 0);
    path_join(path, dir, "p/manifest.json");
    m = json_load_file(path, 0, NULL);
    json_object_set_new(json_object_get(m, "entrypoints"), "worker",
                        json_string("./worker.sh"));
    assert_int_equal(json_dump_file(m, path, 0), 0);
    json_decref(m);
    expect_bad(dir, "./worker.sh resolves outside the plugin directory");

    /* A JS manifest named by package.json cannot be read from C. */
    path_join(dir, root, "js-manifest");
    make_dir(dir);
    path_join(path, dir, "p");
    make_dir(path);
    path_join(path, dir, "p/package.json");
    write_file(path,
               "{\"name\":\"x\",\"paperclipPlugin\":{\"manifest\":"
               "\"./dist/manifest.js\",\"worker\":\"./dist/worker.js\"}}");
    expect_bad(dir, "is a JavaScript module");

    path_join(dir, root, "no-manifest");
    make_dir(dir);
    path_join(path, dir, "p");
    make_dir(path);
    expect_bad(dir, "no manifest.json");

    /* Two plugins, one driverKey. */
    path_join(dir, root, "dup-key");
    make_dir(dir);
    make_plugin(dir, "a", base_manifest());
    m = base_manifest();
    json_object_set_new(m, "id", json_string("envrun.other"));
    make_plugin(dir, "b", m);
    expect_bad(dir, "driverKey \"test-provider\" is also declared by plugin "
                    "\"envrun.test-provider\"");

    {
        struct er_err err;

        path_join(dir, root, "does-not-exist");
        assert_int_equal(er_plugin_host_setup(dir, &err), ER_EINVAL);
        assert_non_null(strstr(err.msg, "ENVRUN_PLUGINS_DIR"));
    }
}

static void discovery_accepts_good_layouts(void **state)
{
    char dir[PATH_MAX];
    char path[PATH_MAX];
    const char *key = NULL;
    struct er_err err;
    json_t *m;

    (void)state;
    /* No directory configured: no plugins. */
    assert_int_equal(er_plugin_host_setup(NULL, &err), 0);
    assert_false(er_plugin_host_has_provider(PROVIDER, NULL));
    er_plugin_host_shutdown();
    assert_int_equal(er_plugin_host_setup("", &err), 0);
    er_plugin_host_shutdown();

    /* The manifest through package.json, an unknown top-level key, a
     * stray file, and a driver without kind (not a sandbox provider). */
    path_join(dir, root, "good");
    make_dir(dir);
    m = base_manifest();
    json_object_set_new(m, "futureTopLevelKey", json_pack("{s:b}", "x", 1));
    make_plugin(dir, "a", m);
    path_join(path, dir, "a/manifest.json");
    path_join(dir, root, "good/a/plugin-manifest.json");
    assert_int_equal(rename(path, dir), 0);
    path_join(path, root, "good/a/package.json");
    write_file(path, "{\"name\":\"a\",\"type\":\"module\",\"paperclipPlugin\":"
                     "{\"manifest\":\"./plugin-manifest.json\"}}");
    m = base_manifest();
    json_object_set_new(m, "id", json_string("envrun.generic"));
    json_object_del(base_driver(m), "kind");
    json_object_set_new(base_driver(m), "driverKey", json_string("generic"));
    path_join(dir, root, "good");
    make_plugin(dir, "b", m);
    path_join(path, dir, "README");
    write_file(path, "not a plugin\n");

    assert_int_equal(er_plugin_host_setup(dir, &err), 0);
    assert_true(er_plugin_host_has_provider(PROVIDER, &key));
    assert_string_equal(key, PLUGIN_KEY);
    assert_false(er_plugin_host_has_provider("generic", NULL));
    assert_false(er_plugin_host_has_provider("e2b", NULL));
    /* Set up twice is a mistake. */
    assert_int_equal(er_plugin_host_setup(dir, &err), ER_EINVAL);
    er_plugin_host_shutdown();
    assert_no_children();
}

/* ================================================================
 * Calls through the test provider
 * ================================================================ */

static void unknown_provider_is_not_registered(void **state)
{
    struct er_plugin_reply reply;
    struct er_err err;

    (void)state;
    /* Before setup too. */
    assert_int_equal(
        er_plugin_call("e2b", "environmentProbe", NULL, 0, &reply, &err),
        ER_ENOTFOUND);
    need_node();
    host_up(NULL);
    assert_int_equal(
        er_plugin_call("e2b", "environmentProbe", NULL, 0, &reply, &err),
        ER_ENOTFOUND);
    assert_string_equal(err.msg,
                        "Sandbox provider \"e2b\" is not registered as a "
                        "built-in provider and no matching plugin is "
                        "available.");
    assert_null(reply.result);
    host_down();
}

static void probe_sees_the_a2_environment(void **state)
{
    static const char *const keys[] = {
        "ANTHROPIC_API_KEY",
        "NODE_ENV",
        "NODE_PATH",
        "PAPERCLIP_DEPLOYMENT_EXPOSURE",
        "PAPERCLIP_DEPLOYMENT_MODE",
        "PAPERCLIP_PLUGIN_ID",
        "PATH",
        "TZ",
    };
    static const char *const unset[] = {
        "OPENAI_API_KEY",
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "OPENROUTER_API_KEY",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "KUBERNETES_SERVICE_PORT_HTTPS",
        "NODE_ENV",
        "TZ",
    };
    struct er_plugin_reply reply;
    struct er_err err;
    const json_t *meta;
    const json_t *env_keys;
    const json_t *replies;
    char real[PATH_MAX];
    size_t i;

    (void)state;
    need_node();
    for (i = 0; i < sizeof(unset) / sizeof(unset[0]); i++)
        unsetenv(unset[i]);
    setenv("ANTHROPIC_API_KEY", "test-key", 1);
    setenv("ENVRUN_SECRET_SHOULD_NOT_PASS", "x", 1);
    host_up(NULL);
    unsetenv("ANTHROPIC_API_KEY");
    unsetenv("ENVRUN_SECRET_SHOULD_NOT_PASS");

    assert_true(er_plugin_host_supports(PROVIDER, "environmentExecute"));
    assert_true(er_plugin_host_supports(PROVIDER, "environmentResumeLease"));
    assert_false(er_plugin_host_supports(PROVIDER, "environmentSyncIn"));

    assert_int_equal(call("environmentProbe",
                          "{\"driverKey\":\"test-provider\",\"companyId\":"
                          "\"" COMPANY "\",\"environmentId\":\"env-1\","
                          "\"config\":{}}",
                          120000, &reply, &err),
                     0);
    assert_true(json_is_true(json_object_get(reply.result, "ok")));
    meta = json_object_get(reply.result, "metadata");
    assert_non_null(realpath(plugin_dir, real));
    assert_string_equal(jstr(meta, "cwd"), real);
    assert_true(er_uuid_is_valid(jstr(meta, "pluginId"), 36));
    assert_string_equal(jstr(meta, "nodeEnv"), "production");
    assert_string_equal(jstr(meta, "tz"), "UTC");
    env_keys = json_object_get(meta, "envKeys");
    assert_int_equal(json_array_size(env_keys), sizeof(keys) / sizeof(*keys));
    for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        assert_string_equal(json_string_value(json_array_get(env_keys, i)),
                            keys[i]);
    /* A8: span.record answered null, anything else -32601. */
    replies = json_object_get(meta, "hostReplies");
    assert_true(json_is_null(
        json_object_get(json_object_get(replies, "spanRecord"), "result")));
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(replies, "configGet"), "error"),
            "code")),
        ER_RPC_METHOD_NOT_FOUND);
    assert_string_equal(
        jstr(json_object_get(json_object_get(replies, "configGet"), "error"),
             "message"),
        "Host does not handle method \"config.get\"");
    er_plugin_reply_fini(&reply);
    host_down();
}

static void every_method_round_trips(void **state)
{
    struct er_plugin_reply reply;
    struct er_err err;
    const json_t *meta;
    json_t *lease = NULL;
    json_t *params;
    json_t *logged;
    const json_t *line;
    char text[8192];
    char root_dir[1024];
    char cwd[PATH_MAX];
    char *lease_text;

    (void)state;
    need_node();
    host_up(NULL);

    /* validate: no companyId, so no invocation scope (A3). */
    assert_int_equal(call("environmentValidateConfig",
                          "{\"driverKey\":\"test-provider\",\"config\":"
                          "{\"image\":\"img:1\",\"reuseLease\":true}}",
                          0, &reply, &err),
                     0);
    assert_true(json_is_true(json_object_get(reply.result, "ok")));
    meta = json_object_get(reply.result, "normalizedConfig");
    assert_string_equal(jstr(meta, "image"), "img:1");
    assert_true(json_is_true(json_object_get(meta, "reuseLease")));
    assert_int_equal(json_integer_value(json_object_get(meta, "timeoutMs")),
                     300000);
    er_plugin_reply_fini(&reply);

    /* acquire (ephemeral), with everything the host passes. */
    assert_int_equal(
        call("environmentAcquireLease",
             "{\"driverKey\":\"test-provider\",\"companyId\":\"" COMPANY "\","
             "\"environmentId\":\"env-1\",\"issueId\":null,\"config\":{},"
             "\"runId\":\"run-1\",\"workspaceMode\":\"isolated\","
             "\"agentId\":\"agent-1\",\"executionWorkspaceId\":\"ew-1\","
             "\"adapterType\":\"claude_local\","
             "\"requestedExpiresAt\":\"2026-12-01T00:00:00.000Z\"}",
             0, &reply, &err),
        0);
    assert_non_null(strstr(jstr(reply.result, "providerLeaseId"),
                           "test-provider://run-1/"));
    assert_string_equal(jstr(reply.result, "expiresAt"),
                        "2026-12-01T00:00:00.000Z");
    meta = json_object_get(reply.result, "metadata");
    snprintf(root_dir, sizeof(root_dir), "%s", jstr(meta, "fakeRootDir"));
    snprintf(cwd, sizeof(cwd), "%s/workspace", root_dir);
    assert_string_equal(jstr(meta, "remoteCwd"), cwd);
    assert_string_equal(jstr(meta, "provider"), "test-provider");
    assert_true(is_dir(cwd));
    lease = json_pack("{s:O, s:O, s:n}", "providerLeaseId",
                      json_object_get(reply.result, "providerLeaseId"),
                      "metadata", meta, "expiresAt");
    er_plugin_reply_fini(&reply);
    lease_text = json_dumps(lease, JSON_COMPACT);

    logged = logged_calls("environmentAcquireLease");
    line = json_array_get(logged, 0);
    params = json_object_get(line, "params");
    assert_string_equal(jstr(params, "agentId"), "agent-1");
    assert_string_equal(jstr(params, "executionWorkspaceId"), "ew-1");
    assert_string_equal(jstr(params, "adapterType"), "claude_local");
    assert_string_equal(jstr(params, "requestedExpiresAt"),
                        "2026-12-01T00:00:00.000Z");
    assert_string_equal(
        jstr(json_object_get(json_object_get(line, "paperclipInvocation"),
                             "scope"),
             "companyId"),
        COMPANY);
    assert_true(er_uuid_is_valid(
        jstr(json_object_get(line, "paperclipInvocation"), "id"), 36));
    json_decref(logged);
    logged = logged_calls("environmentValidateConfig");
    assert_true(json_is_null(
        json_object_get(json_array_get(logged, 0), "paperclipInvocation")));
    json_decref(logged);

    /* realize */
    snprintf(text, sizeof(text),
             "{\"driverKey\":\"test-provider\",\"companyId\":\"" COMPANY "\","
             "\"environmentId\":\"env-1\",\"config\":{},\"lease\":%s,"
             "\"workspace\":{\"localPath\":\"/nowhere\",\"mode\":"
             "\"isolated\"}}",
             lease_text);
    assert_int_equal(call("environmentRealizeWorkspace", text, 0, &reply, &err),
                     0);
    assert_string_equal(jstr(reply.result, "cwd"), cwd);
    er_plugin_reply_fini(&reply);

    /* execute: argv without a shell, env, stdin, cwd, a non-zero exit. */
    snprintf(text, sizeof(text),
             "{\"driverKey\":\"test-provider\",\"companyId\":\"" COMPANY "\","
             "\"environmentId\":\"env-1\",\"config\":{},\"lease\":%s,"
             "\"command\":\"sh\",\"args\":[\"-c\",\"printf %%s \\\"$FOO\\\"; "
             "cat; pwd; echo oops >&2; exit 7\"],\"cwd\":\"%s\","
             "\"env\":{\"FOO\":\"bar\"},\"stdin\":\"in\\n\","
             "\"timeoutMs\":10000}",
             lease_text, cwd);
    assert_int_equal(call("environmentExecute", text, 0, &reply, &err), 0);
    assert_int_equal(
        json_integer_value(json_object_get(reply.result, "exitCode")), 7);
    assert_false(json_is_true(json_object_get(reply.result, "timedOut")));
    snprintf(text, sizeof(text), "barin\n%s\n", cwd);
    assert_string_equal(jstr(reply.result, "stdout"), text);
    assert_string_equal(jstr(reply.result, "stderr"), "oops\n");
    er_plugin_reply_fini(&reply);

    /* execute past its own timeout: SIGTERM, exitCode null. */
    snprintf(text, sizeof(text),
             "{\"driverKey\":\"test-provider\",\"companyId\":\"" COMPANY "\","
             "\"environmentId\":\"env-1\",\"config\":{},\"lease\":%s,"
             "\"command\":\"sleep\",\"args\":[\"5\"],\"timeoutMs\":200}",
             lease_text);
    assert_int_equal(call("environmentExecute", text, 0, &reply, &err), 0);
    assert_true(json_is_true(json_object_get(reply.result, "timedOut")));
    assert_true(json_is_null(json_object_get(reply.result, "exitCode")));
    er_plugin_reply_fini(&reply);

    /* release (ephemeral) deletes the machine. */
    free(lease_text);
    lease_text = json_dumps(json_object_get(lease, "metadata"), JSON_COMPACT);
    snprintf(text, sizeof(text),
             "{\"driverKey\":\"test-provider\",\"companyId\":\"" COMPANY "\","
             "\"environmentId\":\"env-1\",\"config\":{},"
             "\"providerLeaseId\":\"%s\",\"leaseMetadata\":%s}",
             jstr(lease, "providerLeaseId"), lease_text);
    free(lease_text);
    assert_int_equal(call("environmentReleaseLease", text, 0, &reply, &err), 0);
    assert_true(json_is_null(reply.result));
    er_plugin_reply_fini(&reply);
    assert_false(is_dir(root_dir));
    json_decref(lease);
    host_down();
}

static void reusable_lease_resumes_until_destroyed(void **state)
{
    struct er_plugin_reply reply;
    struct er_err err;
    char *meta_text;
    char root_dir[1024];
    char text[8192];

    (void)state;
    need_node();
    host_up(NULL);
    assert_int_equal(
        call("environmentAcquireLease",
             "{\"driverKey\":\"test-provider\",\"companyId\":\"" COMPANY "\","
             "\"environmentId\":\"env-9\",\"config\":{\"reuseLease\":true},"
             "\"runId\":\"run-9\"}",
             0, &reply, &err),
        0);
    assert_string_equal(jstr(reply.result, "providerLeaseId"),
                        "test-provider://env-9");
    assert_null(json_object_get(reply.result, "expiresAt"));
    meta_text =
        json_dumps(json_object_get(reply.result, "metadata"), JSON_COMPACT);
    snprintf(root_dir, sizeof(root_dir), "%s",
             jstr(json_object_get(reply.result, "metadata"), "fakeRootDir"));
    er_plugin_reply_fini(&reply);

    snprintf(text, sizeof(text),
             "{\"driverKey\":\"test-provider\",\"companyId\":\"" COMPANY "\","
             "\"environmentId\":\"env-9\",\"config\":{\"reuseLease\":true},"
             "\"providerLeaseId\":\"test-provider://env-9\","
             "\"leaseMetadata\":%s}",
             meta_text);
    /* release keeps a reusable machine; resume finds it. */
    assert_int_equal(call("environmentReleaseLease", text, 0, &reply, &err), 0);
    er_plugin_reply_fini(&reply);
    assert_true(is_dir(root_dir));
    assert_int_equal(call("environmentResumeLease", text, 0, &reply, &err), 0);
    assert_string_equal(jstr(reply.result, "providerLeaseId"),
                        "test-provider://env-9");
    assert_true(json_is_true(json_object_get(
        json_object_get(reply.result, "metadata"), "resumedLease")));
    er_plugin_reply_fini(&reply);
    /* destroy always deletes; then resume says expired. */
    assert_int_equal(call("environmentDestroyLease", text, 0, &reply, &err), 0);
    er_plugin_reply_fini(&reply);
    assert_false(is_dir(root_dir));
    assert_int_equal(call("environmentResumeLease", text, 0, &reply, &err), 0);
    assert_true(json_is_null(json_object_get(reply.result, "providerLeaseId")));
    assert_true(json_is_true(
        json_object_get(json_object_get(reply.result, "metadata"), "expired")));
    er_plugin_reply_fini(&reply);
    free(meta_text);
    host_down();
}

static void plugin_errors_pass_through(void **state)
{
    struct er_plugin_reply reply;
    struct er_err err;

    (void)state;
    need_node();
    host_up(NULL);
    assert_int_equal(call("environmentProbe",
                          "{\"companyId\":\"" COMPANY "\",\"config\":"
                          "{\"testBehaviour\":{\"onMethod\":"
                          "{\"environmentProbe\":\"error\"}}}}",
                          0, &reply, &err),
                     ER_EDRIVER);
    assert_int_equal(reply.rpc_code, ER_RPC_WORKER_ERROR);
    assert_string_equal(err.msg,
                        "test provider: environmentProbe failed on purpose");
    assert_null(reply.result);
    assert_int_equal(call("environmentFrobnicate", "{}", 0, &reply, &err),
                     ER_EDRIVER);
    assert_int_equal(reply.rpc_code, ER_RPC_METHOD_NOT_FOUND);
    assert_string_equal(err.msg, "Unknown method: environmentFrobnicate");
    host_down();
}

static void crash_fails_the_call_at_once_and_restarts(void **state)
{
    struct er_plugin_reply reply;
    struct er_err err;
    int64_t start;
    pid_t first;
    pid_t second;

    (void)state;
    need_node();
    host_up(NULL);
    first = worker_pid();
    start = er_time_mono_ms();
    assert_int_equal(call("environmentExecute",
                          "{\"companyId\":\"" COMPANY "\",\"config\":"
                          "{\"testBehaviour\":{\"onMethod\":"
                          "{\"environmentExecute\":\"crash\"}}}}",
                          20000, &reply, &err),
                     ER_EDRIVER);
    assert_true(er_time_mono_ms() - start < 3000);
    assert_int_equal(reply.rpc_code, ER_RPC_WORKER_UNAVAILABLE);
    assert_int_equal(err.cls, ER_ERRCLASS_RETRY);
    if (strncmp(err.msg,
                "Worker process exited (code=3, signal=null)\n\nWorker "
                "stderr:\n",
                57) != 0 ||
        strstr(err.msg, "crashing in environmentExecute on purpose") == NULL)
        fail_msg("unexpected message: %s", err.msg);
    /* The worker restarts (50 ms backoff here) and the next call works. */
    second = worker_pid();
    assert_true(second != first);
    assert_true(is_gone(first));
    host_down();
}

static void hang_times_out_and_the_worker_survives(void **state)
{
    struct er_plugin_reply reply;
    struct er_err err;
    int64_t start;
    int64_t took;
    pid_t pid;

    (void)state;
    need_node();
    host_up(NULL);
    pid = worker_pid();
    start = er_time_mono_ms();
    assert_int_equal(call("environmentExecute",
                          "{\"companyId\":\"" COMPANY "\",\"config\":"
                          "{\"testBehaviour\":{\"onMethod\":"
                          "{\"environmentExecute\":\"hang\"}}}}",
                          400, &reply, &err),
                     ER_EDRIVER);
    took = er_time_mono_ms() - start;
    assert_true(took >= 390 && took < 2000);
    assert_int_equal(reply.rpc_code, ER_RPC_TIMEOUT);
    assert_string_equal(err.msg,
                        "RPC call \"environmentExecute\" timed out after "
                        "400ms");
    assert_int_equal(worker_pid(), pid);
    host_down();
}

static void garbage_on_stdout_is_dropped(void **state)
{
    struct er_plugin_reply reply;
    struct er_err err;
    pid_t pid;

    (void)state;
    need_node();
    host_up(NULL);
    pid = worker_pid();
    assert_int_equal(call("environmentValidateConfig",
                          "{\"config\":{\"testBehaviour\":{\"onMethod\":"
                          "{\"environmentValidateConfig\":\"garbage\"}}}}",
                          5000, &reply, &err),
                     0);
    assert_true(json_is_true(json_object_get(reply.result, "ok")));
    er_plugin_reply_fini(&reply);
    assert_int_equal(worker_pid(), pid);
    host_down();
}

/* The pid of the worker that logged an initialize, waiting up to 3 s. */
static pid_t initialized_pid(void)
{
    int64_t deadline = er_time_mono_ms() + 3000;
    pid_t pid = 0;

    while (pid == 0 && er_time_mono_ms() < deadline) {
        json_t *logged = logged_calls("initialize");

        pid = (pid_t)json_integer_value(
            json_object_get(json_array_get(logged, 0), "pid"));
        json_decref(logged);
        if (pid == 0)
            sleep_ms(20);
    }
    assert_true(pid > 0);
    return pid;
}

static void wait_gone(pid_t pid, int64_t ms)
{
    int64_t deadline = er_time_mono_ms() + ms;

    while (!is_gone(pid) && er_time_mono_ms() < deadline)
        sleep_ms(10);
    assert_true(is_gone(pid));
}

static void uninitialized_worker_is_not_running(void **state)
{
    static const char *const modes[] = { "\"initialize\":\"hang\"",
                                         "\"initialize\":\"fail\"" };
    struct er_plugin_reply reply;
    struct er_err err;
    int64_t start;
    int64_t took;
    size_t i;

    (void)state;
    need_node();
    for (i = 0; i < 2; i++) {
        /* initialize gives up after 1.5 s; no restart within the test. */
        host_up_with(modes[i], 1500, 300, 60000);
        start = er_time_mono_ms();
        assert_int_equal(call("environmentProbe",
                              "{\"companyId\":\"" COMPANY "\"}", 0, &reply,
                              &err),
                         ER_EDRIVER);
        took = er_time_mono_ms() - start;
        assert_true(took >= 290 && took < 1500);
        assert_int_equal(reply.rpc_code, ER_RPC_WORKER_UNAVAILABLE);
        assert_string_equal(err.msg,
                            "Sandbox provider \"test-provider\" is installed "
                            "via plugin \"envrun.test-provider\", but its "
                            "worker is not running.");
        assert_false(er_plugin_host_supports(PROVIDER, "environmentProbe"));
        /* The worker that never answered (or said ok=false) is killed and
         * reaped. */
        wait_gone(initialized_pid(), 5000);
        host_down();
    }
}

static void repeated_crashes_give_up(void **state)
{
    struct er_plugin_reply reply;
    struct er_err err;
    json_t *logged;
    int64_t start;

    (void)state;
    need_node();
    /* Each start fails initialize (a crash that does not reset the count);
     * with a 1 ms base the 10 restarts take about a second (A7). */
    host_up_with("\"initialize\":\"fail\"", 5000, 8000, 1);
    start = er_time_mono_ms();
    assert_int_equal(call("environmentProbe", "{\"companyId\":\"" COMPANY "\"}",
                          0, &reply, &err),
                     ER_EDRIVER);
    assert_true(er_time_mono_ms() - start < 8000);
    assert_string_equal(err.msg,
                        "Sandbox provider \"test-provider\" is installed via "
                        "plugin \"envrun.test-provider\", but that plugin is "
                        "currently error.");
    logged = logged_calls("initialize");
    assert_int_equal(json_array_size(logged), 11);
    json_decref(logged);
    /* Given up: the next call fails at once. */
    start = er_time_mono_ms();
    assert_int_equal(call("environmentProbe", "{}", 0, &reply, &err),
                     ER_EDRIVER);
    assert_true(er_time_mono_ms() - start < 500);
    host_down();
}

struct worker_arg {
    int index;
    int failures;
    char first_failure[300];
};

static void *call_many(void *p)
{
    struct worker_arg *arg = p;
    struct er_plugin_reply reply;
    struct er_err err;
    char text[512];
    char want[64];
    int i;

    for (i = 0; i < 5; i++) {
        json_t *params;
        int rc;

        snprintf(want, sizeof(want), "answer %d-%d\n", arg->index, i);
        params = json_pack("{s:s, s:{}, s:{s:s}, s:s, s:[s, s], s:i}",
                           "companyId", COMPANY, "config", "lease",
                           "providerLeaseId", "test-provider://x", "command",
                           "sh", "args", "-c", "", "timeoutMs", 10000);
        snprintf(text, sizeof(text), "sleep 0.0%d; printf 'answer %d-%d\\n'",
                 (arg->index + i) % 10, arg->index, i);
        json_array_set_new(json_object_get(params, "args"), 1,
                           json_string(text));
        rc = er_plugin_call(PROVIDER, "environmentExecute", params, 20000,
                            &reply, &err);
        json_decref(params);
        if (rc != 0 || strcmp(jstr(reply.result, "stdout"), want) != 0) {
            if (arg->failures++ == 0)
                snprintf(arg->first_failure, sizeof(arg->first_failure),
                         "rc %d: %s", rc, rc != 0 ? err.msg : "wrong stdout");
        }
        er_plugin_reply_fini(&reply);
    }
    return NULL;
}

static void concurrent_calls_get_their_own_answers(void **state)
{
    struct worker_arg args[8];
    pthread_t threads[8];
    int i;

    (void)state;
    need_node();
    host_up(NULL);
    for (i = 0; i < 8; i++) {
        memset(&args[i], 0, sizeof(args[i]));
        args[i].index = i;
        assert_int_equal(pthread_create(&threads[i], NULL, call_many, &args[i]),
                         0);
    }
    for (i = 0; i < 8; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
        if (args[i].failures != 0)
            fail_msg("thread %d: %d failures, first %s", i, args[i].failures,
                     args[i].first_failure);
    }
    host_down();
}

struct long_call {
    int rc;
    int rpc_code;
    char msg[ER_ERR_MSG_MAX];
};

static void *call_long(void *p)
{
    struct long_call *out = p;
    struct er_plugin_reply reply;
    struct er_err err;
    json_t *params =
        json_pack("{s:s, s:{}, s:{s:s}, s:s, s:[s], s:i}", "companyId", COMPANY,
                  "config", "lease", "providerLeaseId", "test-provider://x",
                  "command", "sleep", "args", "30", "timeoutMs", 60000);

    out->rc = er_plugin_call(PROVIDER, "environmentExecute", params, 60000,
                             &reply, &err);
    out->rpc_code = reply.rpc_code;
    snprintf(out->msg, sizeof(out->msg), "%s", err.msg);
    er_plugin_reply_fini(&reply);
    json_decref(params);
    return NULL;
}

static void shutdown_ends_calls_and_leaves_no_process(void **state)
{
    struct long_call out;
    pthread_t thread;
    int64_t start;
    pid_t pid;

    (void)state;
    need_node();
    host_up(NULL);
    pid = worker_pid();
    memset(&out, 0, sizeof(out));
    assert_int_equal(pthread_create(&thread, NULL, call_long, &out), 0);
    sleep_ms(300); /* the call is in flight, its sleep started */
    start = er_time_mono_ms();
    er_plugin_host_shutdown();
    assert_true(er_time_mono_ms() - start < 3000);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(out.rc, ER_EDRIVER);
    assert_int_equal(out.rpc_code, ER_RPC_WORKER_UNAVAILABLE);
    assert_non_null(strstr(out.msg, "Worker process exited (code=0"));
    assert_true(is_gone(pid));
    er_plugin_host_set_timing(NULL);
    assert_no_children();
    /* Calls after shutdown find nothing. */
    assert_false(er_plugin_host_has_provider(PROVIDER, NULL));
}

/* ================================================================
 * Secrets handed to the plugin (er_plugin_note_secret)
 * ================================================================ */

/* Send er_log's lines (fd 2), from info up, to log_path until
 * stderr_restore. */
static void stderr_capture(void)
{
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    assert_true(fd >= 0);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    close(fd);
    er_log_setup(false, ER_LOG_INFO);
}

static void stderr_restore(void)
{
    er_log_setup(false, ER_LOG_WARN);
    if (saved_stderr < 0)
        return;
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    saved_stderr = -1;
}

/* What was logged so far (new string, free()). */
static char *captured(void)
{
    FILE *f = fopen(log_path, "r");
    char *text = NULL;
    size_t cap = 0;
    ssize_t n;

    assert_non_null(f);
    n = getdelim(&text, &cap, '\0', f);
    fclose(f);
    if (n < 0) {
        free(text);
        text = strdup("");
    }
    assert_non_null(text);
    return text;
}

/* Wait up to 5 s for needle in what was logged. */
static void wait_logged(const char *needle)
{
    int64_t deadline = er_time_mono_ms() + 5000;

    for (;;) {
        char *text = captured();
        bool is_found = strstr(text, needle) != NULL;

        free(text);
        if (is_found)
            return;
        if (er_time_mono_ms() >= deadline)
            fail_msg("not logged: %s", needle);
        sleep_ms(20);
    }
}

/* No 8 bytes in a row of secret are in text: neither the secret nor any
 * good part of it leaked. */
static void assert_no_part_of(const char *text, const char *secret)
{
    size_t n = strlen(secret);
    char part[9];
    size_t i;

    for (i = 0; i + 8 <= n; i++) {
        memcpy(part, secret + i, 8);
        part[8] = '\0';
        if (strstr(text, part) != NULL)
            fail_msg("a part of a secret (\"%s\") leaked into: %s", part, text);
    }
}

/* Two secrets: a token, and a key of several lines with a quote and a
 * backslash (so its JSON-escaped form differs). */
struct secrets {
    char token[64];
    char key[256];
    char config[1024]; /* params.config naming mode for method */
};

static void secrets_make(struct secrets *sec, const char *method,
                         const char *mode)
{
    char a[37];
    char b[37];
    char c[37];
    json_t *config;
    char *text;

    assert_int_equal(er_uuid_v4(a), 0);
    assert_int_equal(er_uuid_v4(b), 0);
    assert_int_equal(er_uuid_v4(c), 0);
    snprintf(sec->token, sizeof(sec->token), "tok-%s", a);
    snprintf(sec->key, sizeof(sec->key),
             "-----BEGIN TEST KEY-----\n%s\n\"q\" \\ %s\n"
             "-----END TEST KEY-----\n",
             b, c);
    config = json_pack("{s:s, s:s, s:{s:{s:s}}}", "token", sec->token, "key",
                       sec->key, "testBehaviour", "onMethod", method, mode);
    assert_non_null(config);
    text = json_dumps(config, JSON_COMPACT);
    assert_non_null(text);
    snprintf(sec->config, sizeof(sec->config), "%s", text);
    free(text);
    json_decref(config);
}

static void secrets_note(const struct secrets *sec)
{
    assert_int_equal(
        er_plugin_note_secret(PROVIDER, sec->token, strlen(sec->token)), 0);
    assert_int_equal(
        er_plugin_note_secret(PROVIDER, sec->key, strlen(sec->key)), 0);
}

static void assert_no_secret_in(const char *text, const struct secrets *sec)
{
    assert_no_part_of(text, sec->token);
    assert_no_part_of(text, sec->key);
}

static int call_with(const char *method, const struct secrets *sec,
                     int64_t timeout_ms, struct er_plugin_reply *reply,
                     struct er_err *err)
{
    char params[1200];

    snprintf(params, sizeof(params),
             "{\"companyId\":\"" COMPANY "\",\"config\":%s}", sec->config);
    return call(method, params, timeout_ms, reply, err);
}

/* A plugin that shows its config in an error answer, a log notification
 * and on stderr: every copy of the secrets, raw or JSON-escaped, is
 * redacted, and the rest of what it said is kept. */
static void echoed_secrets_are_redacted(void **state)
{
    struct er_plugin_reply reply;
    struct secrets sec;
    struct er_err err;
    char *text;

    (void)state;
    need_node();
    stderr_capture();
    host_up(NULL);
    secrets_make(&sec, "environmentProbe", "echo");
    secrets_note(&sec);
    assert_int_equal(call_with("environmentProbe", &sec, 10000, &reply, &err),
                     ER_EDRIVER);
    assert_int_equal(reply.rpc_code, ER_RPC_WORKER_ERROR);
    assert_no_secret_in(err.msg, &sec);
    /* Raw: token=..., key=...; JSON: "token":"...", "key":"..." (cut at
     * the message's 256 bytes). */
    if (strncmp(err.msg,
                "test provider: environmentProbe failed on purpose: "
                "token=[REDACTED] key=[REDACTED] config={",
                91) != 0)
        fail_msg("unexpected message: %s", err.msg);
    wait_logged("[plugin stderr] test provider: environmentProbe echoes");
    text = captured();
    assert_no_secret_in(text, &sec);
    assert_non_null(strstr(text, "[plugin] test provider: environmentProbe "
                                 "echoes token=[REDACTED] key=[REDACTED] "
                                 "config={"));
    assert_non_null(strstr(text, "[plugin stderr] test provider: "
                                 "environmentProbe echoes token=[REDACTED] "
                                 "key=[REDACTED] config={"));
    assert_non_null(strstr(text, "\"token\":\"[REDACTED]\""));
    assert_non_null(strstr(text, "\"key\":\"[REDACTED]\""));
    free(text);
    host_down();
    stderr_restore();
}

/* A secret written to stderr in two pieces, read apart: the first piece
 * is held back until it is known whether a secret follows. */
static void secret_split_across_reads_is_redacted(void **state)
{
    struct er_plugin_reply reply;
    struct secrets sec;
    struct er_err err;
    char *text;

    (void)state;
    need_node();
    stderr_capture();
    host_up(NULL);
    secrets_make(&sec, "environmentValidateConfig", "echo-split");
    secrets_note(&sec);
    assert_int_equal(
        call_with("environmentValidateConfig", &sec, 10000, &reply, &err), 0);
    er_plugin_reply_fini(&reply);
    wait_logged("split key=[REDACTED] end");
    text = captured();
    assert_no_secret_in(text, &sec);
    assert_non_null(strstr(text, "[plugin stderr] test provider: "
                                 "environmentValidateConfig split "
                                 "token=[REDACTED] end"));
    free(text);
    host_down();
    stderr_restore();
}

/* A worker that shows its config on stderr and dies: the excerpt in the
 * failure message is redacted. */
static void crash_excerpt_is_redacted(void **state)
{
    struct er_plugin_reply reply;
    struct secrets sec;
    struct er_err err;
    char *text;

    (void)state;
    need_node();
    stderr_capture();
    host_up(NULL);
    secrets_make(&sec, "environmentExecute", "echo-crash");
    secrets_note(&sec);
    assert_int_equal(call_with("environmentExecute", &sec, 10000, &reply, &err),
                     ER_EDRIVER);
    assert_int_equal(reply.rpc_code, ER_RPC_WORKER_UNAVAILABLE);
    assert_no_secret_in(err.msg, &sec);
    if (strncmp(err.msg,
                "Worker process exited (code=3, signal=null)\n\nWorker "
                "stderr:\n",
                57) != 0 ||
        strstr(err.msg, "\"key\":\"[REDACTED]\"") == NULL)
        fail_msg("unexpected message: %s", err.msg);
    text = captured();
    assert_no_secret_in(text, &sec);
    assert_non_null(strstr(text, "[plugin stderr] test provider: crashing "
                                 "in environmentExecute: token=[REDACTED] "
                                 "key=[REDACTED] config={"));
    free(text);
    host_down();
    stderr_restore();
}

/* The list's bounds: short values and unknown providers are ignored; one
 * thread cannot note more for its next call than the list holds; once its
 * call has gone, older entries make room. */
static void noted_secrets_are_bounded(void **state)
{
    struct er_plugin_reply reply;
    struct er_err err;
    char value[64];
    int i;

    (void)state;
    need_node();
    host_up(NULL);
    assert_int_equal(er_plugin_note_secret(PROVIDER, "abc", 3), 0);
    assert_int_equal(er_plugin_note_secret("no-such-provider", "abcdef", 6), 0);
    assert_int_equal(
        er_plugin_note_secret(PROVIDER, "x", ER_SECRETREF_MAX_BYTES + 1),
        ER_E2BIG);
    for (i = 0; i < 32; i++) {
        snprintf(value, sizeof(value), "value-number-%d", i);
        assert_int_equal(er_plugin_note_secret(PROVIDER, value, strlen(value)),
                         0);
    }
    /* Noted again: renewed, not added. */
    assert_int_equal(er_plugin_note_secret(PROVIDER, value, strlen(value)), 0);
    assert_int_equal(er_plugin_note_secret(PROVIDER, "one-too-many", 12),
                     ER_E2BIG);
    assert_int_equal(call("environmentValidateConfig", "{\"config\":{}}", 10000,
                          &reply, &err),
                     0);
    er_plugin_reply_fini(&reply);
    assert_int_equal(er_plugin_note_secret(PROVIDER, "one-too-many", 12), 0);
    host_down();
}

/* ================================================================ */

static int group_setup(void **state)
{
    char tmpl[] = "/tmp/plugin_host_test.XXXXXX";

    (void)state;
    er_log_setup(false, ER_LOG_WARN);
    if (mkdtemp(tmpl) == NULL)
        return -1;
    snprintf(root, sizeof(root), "%s", tmpl);
    snprintf(plugins_dir, sizeof(plugins_dir), "%s/plugins", root);
    snprintf(plugin_dir, sizeof(plugin_dir), "%s/test-provider", plugins_dir);
    snprintf(call_log, sizeof(call_log), "%s/calls.jsonl", root);
    snprintf(log_path, sizeof(log_path), "%s/stderr.log", root);
    if (mkdir(plugins_dir, 0755) != 0)
        return -1;
    install_plugin(plugin_dir);
    has_node = node_found();
    if (!has_node) {
        if (getenv("CI") != NULL) {
            fprintf(stderr, "plugin_host_test: node is not installed (CI is "
                            "set, so this fails)\n");
            return -1;
        }
        fprintf(stderr, "plugin_host_test: node is not installed: skipping "
                        "the cases that run the test provider\n");
    }
    return 0;
}

/* After each case, also a failed one: nothing left running. */
static int test_teardown(void **state)
{
    (void)state;
    er_plugin_host_shutdown();
    er_plugin_host_set_timing(NULL);
    stderr_restore();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    er_plugin_host_shutdown();
    rm_tree(root);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(discovery_rejects_bad_manifests,
                                  test_teardown),
        cmocka_unit_test_teardown(discovery_accepts_good_layouts,
                                  test_teardown),
        cmocka_unit_test_teardown(unknown_provider_is_not_registered,
                                  test_teardown),
        cmocka_unit_test_teardown(probe_sees_the_a2_environment, test_teardown),
        cmocka_unit_test_teardown(every_method_round_trips, test_teardown),
        cmocka_unit_test_teardown(reusable_lease_resumes_until_destroyed,
                                  test_teardown),
        cmocka_unit_test_teardown(plugin_errors_pass_through, test_teardown),
        cmocka_unit_test_teardown(crash_fails_the_call_at_once_and_restarts,
                                  test_teardown),
        cmocka_unit_test_teardown(hang_times_out_and_the_worker_survives,
                                  test_teardown),
        cmocka_unit_test_teardown(garbage_on_stdout_is_dropped, test_teardown),
        cmocka_unit_test_teardown(uninitialized_worker_is_not_running,
                                  test_teardown),
        cmocka_unit_test_teardown(repeated_crashes_give_up, test_teardown),
        cmocka_unit_test_teardown(concurrent_calls_get_their_own_answers,
                                  test_teardown),
        cmocka_unit_test_teardown(echoed_secrets_are_redacted, test_teardown),
        cmocka_unit_test_teardown(secret_split_across_reads_is_redacted,
                                  test_teardown),
        cmocka_unit_test_teardown(crash_excerpt_is_redacted, test_teardown),
        cmocka_unit_test_teardown(noted_secrets_are_bounded, test_teardown),
        cmocka_unit_test_teardown(shutdown_ends_calls_and_leaves_no_process,
                                  test_teardown),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
