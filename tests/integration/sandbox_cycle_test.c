/* sandbox_cycle_test: the `sandbox` driver through a real worker process (Kafka
 * mock cluster over TCP, PostgreSQL): the built-in fake provider's ids,
 * reuse and messages (domain.md 4.3), config errors, and the bwrap
 * provider end to end on real bubblewrap: acquire, realize with the
 * workspace upload, provision commands that probe the sandbox's walls
 * (network, host files, a fork bomb, a memory hog), release that leaves
 * nothing behind, and a sandbox that survives its worker's SIGKILL. */
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
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

#define WAIT_MS 60000
#define LEASE_SQL                                                         \
    "SELECT status, lease_policy, provider, provider_lease_id, "          \
    "cleanup_status, metadata::text AS metadata FROM environment_leases " \
    "WHERE id = $1"

static struct er_harness *h;
static struct er_harness_worker *worker;
static char sandbox_dir[ER_HARNESS_PATH_MAX + 32];
static char env_sandbox[ER_HARNESS_PATH_MAX + 64];
static const char *worker_env[2];

static int group_setup(void **state)
{
    struct er_harness_worker_opts opts = { 0 };

    (void)state;
    h = er_harness_new("sandbox_cycle", 2, NULL);
    if (h == NULL)
        return -1;
    /* Under /tmp: the sandbox's own uid must be able to reach its
     * directory, and the build tree may lie under a private home. */
    snprintf(sandbox_dir, sizeof(sandbox_dir), "/tmp/envrun-sandboxes-XXXXXX");
    if (mkdtemp(sandbox_dir) == NULL)
        return -1;
    snprintf(env_sandbox, sizeof(env_sandbox), "ENVRUN_SANDBOX_DIR=%s",
             sandbox_dir);
    worker_env[0] = env_sandbox;
    worker_env[1] = NULL;
    opts.env = worker_env;
    worker = er_harness_worker_start_warm(h, &opts);
    return worker != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    char cmd[ER_HARNESS_PATH_MAX + 64];

    (void)state;
    er_harness_destroy(h);
    h = NULL;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", sandbox_dir);
    if (system(cmd) != 0)
        rc = -1;
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

/* Acquire env_id for run; the result body (new reference). */
static json_t *acquire(struct er_harness_run *run, const char *env_id,
                       bool is_probe)
{
    struct er_harness_cmd c;
    const json_t *res;

    er_harness_cmd_acquire(&c, run);
    c.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    if (is_probe)
        c.cmd.heartbeat_run_id = NULL;
    res = roundtrip(&c);
    return er_harness_json_parse_field(res, "resultJson");
}

/* The lease row's column (new reference to a one-row result's object). */
static json_t *lease_row(const char *lease_id)
{
    return er_harness_pg_one_row(h->db_url, LEASE_SQL, lease_id);
}

static bool matches_uuid(const char *s)
{
    return s != NULL && strlen(s) >= 36 && er_uuid_is_valid(s, 36);
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
 * fake
 * ---------------------------------------------------------------- */

static void fake_ids_for_runs_and_probes(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    const char *plid;
    json_t *body;
    char prefix[128];

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Fake", "sandbox", "active",
                          "{\"provider\": \"fake\"}", env_id);

    body = acquire(&run, env_id, false);
    ER_HARNESS_ASSERT_STR(body, "lease.leasePolicy", "ephemeral");
    ER_HARNESS_ASSERT_STR(body, "lease.provider", "fake");
    plid = er_harness_json_str(body, "lease.providerLeaseId");
    snprintf(prefix, sizeof(prefix), "sandbox://fake/%s/", run.run_id);
    ER_HARNESS_NON_NULL(plid);
    assert_memory_equal(plid, prefix, strlen(prefix));
    assert_true(matches_uuid(plid + strlen(prefix)));
    /* executionTransport: null for a sandbox at acquire (3.2 step 4) */
    assert_true(json_is_null(er_harness_json_at(body, "executionTransport")));
    json_decref(body);

    /* A probe (no run) gets a random run id in its place. */
    er_harness_run_init_same_company(&run, &run);
    body = acquire(&run, env_id, true);
    plid = er_harness_json_str(body, "lease.providerLeaseId");
    ER_HARNESS_NON_NULL(plid);
    assert_memory_equal(plid, "sandbox://fake/", 15);
    assert_true(matches_uuid(plid + 15));
    assert_int_equal(plid[15 + 36], '/');
    assert_true(matches_uuid(plid + 15 + 37));
    assert_memory_not_equal(plid + 15, run.run_id, 36);
    json_decref(body);
}

static void fake_reuse_resumes_the_parked_lease(void **state)
{
    struct er_harness_run run;
    struct er_harness_run run2;
    char env_id[37];
    char want[128];
    json_t *body;
    json_t *meta;
    json_t *row;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Fake reuse", "sandbox", "active",
                          "{\"provider\": \"fake\", \"reuseLease\": true, "
                          "\"image\": \"debian:12\"}",
                          env_id);
    snprintf(want, sizeof(want), "sandbox://fake/%s", env_id);

    body = acquire(&run, env_id, false);
    ER_HARNESS_ASSERT_STR(body, "lease.leasePolicy", "reuse_by_environment");
    ER_HARNESS_ASSERT_STR(body, "lease.providerLeaseId", want);
    row = lease_row(er_harness_json_str(body, "lease.id"));
    meta = er_harness_json_parse_field(row, "metadata");
    ER_HARNESS_ASSERT_STR(meta, "image", "debian:12");
    ER_HARNESS_ASSERT_STR(meta, "driver", "sandbox");
    assert_true(json_is_false(json_object_get(meta, "resumedLease")));
    json_decref(meta);
    json_decref(row);
    json_decref(body);
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_RELEASED));

    /* The next run of the environment resumes the parked machine. */
    er_harness_run_init_same_company(&run2, &run);
    body = acquire(&run2, env_id, false);
    ER_HARNESS_ASSERT_STR(body, "lease.providerLeaseId", want);
    row = lease_row(er_harness_json_str(body, "lease.id"));
    meta = er_harness_json_parse_field(row, "metadata");
    assert_true(json_is_true(json_object_get(meta, "resumedLease")));
    json_decref(meta);
    json_decref(row);
    json_decref(body);

    /* A probe never reuses (2.4): ephemeral, an id of its own. */
    er_harness_run_init_same_company(&run2, &run);
    body = acquire(&run2, env_id, true);
    ER_HARNESS_ASSERT_STR(body, "lease.leasePolicy", "ephemeral");
    assert_string_not_equal(er_harness_json_str(body, "lease.providerLeaseId"),
                            want);
    json_decref(body);
}

static void fake_provision_is_refused_with_the_spec_message(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char msg[256];
    const json_t *res;
    json_t *body;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Fake prov", "sandbox", "active",
                          "{}", env_id);
    body = acquire(&run, env_id, false);
    json_decref(body);
    /* Without a provision command realize works (nothing is copied). */
    ER_HARNESS_ASSERT_OK(realize(&run, h->dir, NULL));
    res = realize(&run, h->dir, "{\"provisionCommand\": \"true\"}");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");
    snprintf(msg, sizeof(msg),
             "Failed to provision workspace for environment \"Fake prov\" "
             "(sandbox): Sandbox driver does not support direct command "
             "execution for built-in providers.");
    ER_HARNESS_ASSERT_STR(res, "errorMessage", msg);
}

static void config_errors_are_named(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    const json_t *res;
    struct er_harness_cmd c;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Bad key", "sandbox", "active",
                          "{\"provider\": \"Bad Key!\"}", env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_acquire_failed");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(res, "errorMessage"),
                               "Sandbox provider must match");

    er_harness_env_insert(h, run.company_id, "Fake extra", "sandbox", "active",
                          "{\"provider\": \"fake\", \"template\": \"x\"}",
                          env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(res, "errorMessage"),
                               "Fake sandbox environment config has an "
                               "unknown key: template");

    er_harness_env_insert(h, run.company_id, "No plugin", "sandbox", "active",
                          "{\"provider\": \"e2b\"}", env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(
        res, "errorMessage",
        "Failed to acquire lease for environment \"No plugin\" (sandbox): "
        "Sandbox provider \"e2b\" is not registered as a built-in provider "
        "and no matching plugin is available.");
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE "
                                         "company_id = $1",
                                         1, (const char *[]){ run.company_id }),
                     0);
}

/* ----------------------------------------------------------------
 * bwrap
 * ---------------------------------------------------------------- */

/* The PostgreSQL port of the harness's database (port=N or host:N/). */
static int pg_port(void)
{
    const char *p = strstr(h->db_url, "port=");

    if (p != NULL)
        return atoi(p + 5);
    p = strrchr(h->db_url, ':');
    return p != NULL && atoi(p + 1) > 0 ? atoi(p + 1) : 5432;
}

static bool path_exists(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0;
}

/* Realize with provision command cmd (sh syntax, inside bash -lc); the
 * result's outcome. */
static const json_t *provision(struct er_harness_run *run, const char *cwd,
                               const char *cmd)
{
    static char overlay[8192];
    json_t *o = json_pack("{s:s}", "provisionCommand", cmd);
    char *text = json_dumps(o, JSON_COMPACT);

    ER_HARNESS_NON_NULL(text);
    snprintf(overlay, sizeof(overlay), "%s", text);
    free(text);
    json_decref(o);
    return realize(run, cwd, overlay);
}

static void bwrap_end_to_end_and_walls(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char ws[ER_HARNESS_PATH_MAX + 32];
    char path[ER_HARNESS_PATH_MAX + 128];
    char host_secret[ER_HARNESS_PATH_MAX + 64];
    char cmd[ER_HARNESS_PATH_MAX + 1024];
    const char *sid;
    const char *lease_id;
    const json_t *res;
    json_t *body;
    json_t *row;
    json_t *meta;
    FILE *f;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Bwrap", "sandbox", "active",
                          "{\"provider\": \"bwrap\", \"maxProcesses\": 64, "
                          "\"memoryMb\": 256, \"timeoutMs\": 600000}",
                          env_id);
    /* A host workspace with a file, and a host file outside every mount. */
    snprintf(ws, sizeof(ws), "%s/bwrap-ws", h->dir);
    er_harness_fresh_dir(ws);
    snprintf(path, sizeof(path), "%s/hello.txt", ws);
    f = fopen(path, "w");
    ER_HARNESS_NON_NULL(f);
    fputs("hello from the host\n", f);
    fclose(f);
    snprintf(host_secret, sizeof(host_secret), "%s/host-only.txt", h->dir);
    f = fopen(host_secret, "w");
    ER_HARNESS_NON_NULL(f);
    fputs("not for the sandbox\n", f);
    fclose(f);

    body = acquire(&run, env_id, false);
    ER_HARNESS_ASSERT_STR(body, "lease.provider", "bwrap");
    ER_HARNESS_ASSERT_STR(body, "lease.leasePolicy", "ephemeral");
    lease_id = er_harness_json_str(body, "lease.id");
    row = lease_row(lease_id);
    meta = er_harness_json_parse_field(row, "metadata");
    sid = er_harness_json_str(meta, "sandboxId");
    ER_HARNESS_NON_NULL(sid);
    ER_HARNESS_ASSERT_STR(meta, "remoteCwd", "/workspace");
    snprintf(path, sizeof(path), "%s/%s", sandbox_dir, sid);
    assert_true(path_exists(path));

    /* The workspace arrives, and a provision command runs in it. */
    res = provision(&run, ws,
                    "test \"$(cat hello.txt)\" = 'hello from the host' && "
                    "echo made-inside > made.txt");
    ER_HARNESS_ASSERT_OK(res);
    snprintf(path, sizeof(path), "%s/%s/workspace/made.txt", sandbox_dir, sid);
    assert_true(path_exists(path));

    /* Walls: Postgres on the host's loopback and any outside address are
     * unreachable, only lo exists, host files are not there. */
    snprintf(cmd, sizeof(cmd),
             "if (exec 3<>/dev/tcp/127.0.0.1/%d) 2>/dev/null; then "
             "echo reached-postgres >&2; exit 1; fi; "
             "if timeout 5 bash -c 'exec 3<>/dev/tcp/1.1.1.1/443' "
             "2>/dev/null; then echo reached-outside >&2; exit 1; fi; "
             "test \"$(ls /sys/class/net 2>/dev/null || "
             "awk 'NR>2{print $1}' /proc/net/dev)\" = lo || "
             "test \"$(awk 'NR>2{sub(\":\",\"\",$1); print $1}' "
             "/proc/net/dev)\" = lo || { echo more-than-lo >&2; exit 1; }; "
             "if test -e '%s'; then echo host-file-visible >&2; exit 1; fi; "
             "if test -e /root/.ssh || test -e /etc/shadow; then "
             "echo host-secrets-visible >&2; exit 1; fi",
             pg_port(), host_secret);
    ER_HARNESS_ASSERT_OK(provision(&run, ws, cmd));

    /* A fork bomb is held by the process limit: it runs for 5 s (a busy
     * wait: no process can be started once it fills the limit), then the
     * processes of the command's PID namespace are counted with a glob
     * (no fork either). Then the sandbox still answers. */
    res = provision(&run, ws,
                    "( b() { b | b & }; b ) 2>/dev/null & "
                    "end=$((SECONDS + 5)); "
                    "while [ $SECONDS -lt $end ]; do :; done; "
                    "set -- /proc/[0-9]*; echo \"procs=$#\" >&2; "
                    "[ $# -ge 20 ] && [ $# -le 64 ]");
    ER_HARNESS_ASSERT_OK(res);
    /* A memory hog is stopped by the memory limit (256 MiB): a 600 MB
     * string cannot be made, a 16 MB one can. */
    res = provision(&run, ws,
                    "grow() { awk -v n=\"$1\" 'BEGIN { s = \"x\"; "
                    "while (length(s) < n) s = s s; print length(s) }'; }; "
                    "grow 16000000 >/dev/null || exit 1; "
                    "if grow 600000000 2>/dev/null; then "
                    "echo hog-survived >&2; exit 1; fi");
    ER_HARNESS_ASSERT_OK(res);
    ER_HARNESS_ASSERT_OK(provision(&run, ws, "echo ok"));

    /* Release ends it: no directory, no process. */
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_RELEASED));
    json_decref(row);
    row = lease_row(lease_id);
    ER_HARNESS_ASSERT_STR(row, "status", "released");
    ER_HARNESS_ASSERT_STR(row, "cleanup_status", "success");
    snprintf(path, sizeof(path), "%s/%s", sandbox_dir, sid);
    assert_false(path_exists(path));
    json_decref(meta);
    json_decref(row);
    json_decref(body);
}

static void bwrap_sandbox_survives_worker_kill(void **state)
{
    struct er_harness_worker_opts opts = { 0 };
    struct er_harness_run run;
    char env_id[37];
    char path[ER_HARNESS_PATH_MAX + 128];
    char ws[ER_HARNESS_PATH_MAX + 32];
    char sid[32];
    json_t *body;
    json_t *row;
    json_t *meta;

    (void)state;
    er_harness_run_init(&run);
    snprintf(ws, sizeof(ws), "%s/kill-ws", h->dir);
    er_harness_fresh_dir(ws);
    er_harness_env_insert(h, run.company_id, "Bwrap kill", "sandbox", "active",
                          "{\"provider\": \"bwrap\"}", env_id);
    body = acquire(&run, env_id, false);
    row = lease_row(er_harness_json_str(body, "lease.id"));
    meta = er_harness_json_parse_field(row, "metadata");
    snprintf(sid, sizeof(sid), "%s", er_harness_json_str(meta, "sandboxId"));
    ER_HARNESS_ASSERT_OK(provision(&run, ws, "echo before > /tmp/mark.txt"));

    /* The worker dies; the sandbox does not. */
    assert_int_equal(er_harness_worker_stop(worker, SIGKILL, 5000),
                     128 + SIGKILL);
    snprintf(path, sizeof(path), "%s/%s", sandbox_dir, sid);
    assert_true(path_exists(path));
    assert_true(er_harness_process_with(path));

    /* The next worker enters it and releases it; nothing is left. */
    opts.env = worker_env;
    worker = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(worker);
    ER_HARNESS_ASSERT_OK(provision(&run, ws, "test -e /tmp/mark.txt"));
    ER_HARNESS_ASSERT_OK(release(&run, ER_RELEASE_FAILED));
    assert_false(path_exists(path));
    assert_false(er_harness_process_with(path));
    json_decref(meta);
    json_decref(row);
    json_decref(body);
}

/* bwrap cannot bound a sandbox's life itself: with requestedExpiresAt
 * the lease's expires_at is that time and the reaper releases the lease
 * then, which kills the sandbox and removes its root (the worker's TTL is
 * the default six hours, so the regular pass would not come for 30 s). */
static void bwrap_sandbox_ends_at_its_requested_expiry(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char path[ER_HARNESS_PATH_MAX + 128];
    char lease_id[37];
    const char *params[1];
    const json_t *res;
    json_t *body;
    json_t *row;
    json_t *meta;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Bwrap bounded", "sandbox",
                          "active", "{\"provider\": \"bwrap\"}", env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    c.cmd.requested_expires_at_ms = er_time_now_ms() + 6000;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_OK(res);
    body = er_harness_json_parse_field(res, "resultJson");
    snprintf(lease_id, sizeof(lease_id), "%s",
             er_harness_json_str(body, "lease.id"));
    row = lease_row(lease_id);
    meta = er_harness_json_parse_field(row, "metadata");
    snprintf(path, sizeof(path), "%s/%s", sandbox_dir,
             er_harness_json_str(meta, "sandboxId"));
    assert_true(path_exists(path));
    assert_true(er_harness_process_with(path));
    /* The lease's expiry is the requested time, not the TTL. */
    params[0] = lease_id;
    assert_int_equal(er_harness_pg_count(
                         h->db_url,
                         "SELECT count(*) FROM environment_leases WHERE id = "
                         "$1::uuid AND expires_at <= now() + interval '6 s'",
                         1, params),
                     1);

    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM environment_leases WHERE id = $1::uuid AND "
        "status = 'expired' AND failure_reason = 'lease_expired' AND "
        "cleanup_status = 'success'",
        1, params, 1, 20000));
    assert_false(path_exists(path));
    assert_false(er_harness_process_with(path));
    json_decref(meta);
    json_decref(row);
    json_decref(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fake_ids_for_runs_and_probes),
        cmocka_unit_test(fake_reuse_resumes_the_parked_lease),
        cmocka_unit_test(fake_provision_is_refused_with_the_spec_message),
        cmocka_unit_test(config_errors_are_named),
        cmocka_unit_test(bwrap_end_to_end_and_walls),
        cmocka_unit_test(bwrap_sandbox_survives_worker_kill),
        cmocka_unit_test(bwrap_sandbox_ends_at_its_requested_expiry),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
