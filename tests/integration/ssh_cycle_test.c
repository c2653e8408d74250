/* ssh_cycle_test: whole cycles on an `ssh` environment through a real
 * worker and the real sshd of scripts/test-services.sh: the private key
 * reaches no log, record, row or leftover file (contract.md 6); two runs
 * on one per-lease environment at once get directories of their own; one
 * lease authenticates once however many commands it runs, and leaves no
 * connection behind. One worker (debug logs) serves every case. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"
#include "worker/worker.h"

#define SSH_WAIT_MS   60000
/* How long a lease's connection may take to go away after its release. */
#define CLOSE_WAIT_MS 10000
#define ACCEPTED      "Accepted publickey for "

static struct er_harness *h;
static struct er_harness_ssh *ssh;
static struct er_harness_worker *worker;

static int group_setup(void **state)
{
    struct er_harness_worker_opts opts = { 0 };

    (void)state;
    h = er_harness_new("ssh_cycle", 2, NULL);
    if (h == NULL)
        return -1;
    ssh = er_harness_ssh_new(h);
    if (ssh == NULL)
        return -1;
    opts.env = ssh->worker_env;
    opts.concurrency = 4;
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

static const json_t *wait_result(const char *command_id)
{
    const json_t *res = er_harness_wait_result(h, command_id, SSH_WAIT_MS);

    if (res == NULL)
        er_harness_worker_dump_log(worker, 6000);
    ER_HARNESS_NON_NULL(res);
    return res;
}

static const json_t *roundtrip(struct er_harness_cmd *c)
{
    assert_int_equal(er_harness_send(h, &c->cmd), 0);
    return wait_result(c->command_id);
}

static void assert_ok(const json_t *res)
{
    const char *outcome = er_harness_json_str(res, "outcome");
    const char *msg = er_harness_json_str(res, "errorMessage");

    if (outcome == NULL || strcmp(outcome, "ok") != 0)
        er_harness_fail(__FILE__, __LINE__, "outcome %s: %s",
                        outcome != NULL ? outcome : "(none)",
                        msg != NULL ? msg : "-");
}

static void make_env(const char *company_id, const char *name, const char *leaf,
                     const char *isolation, char env_id[37], char *remote,
                     size_t remote_len)
{
    json_t *config;

    snprintf(remote, remote_len, "%s/%s", ssh->root, leaf);
    config = er_harness_ssh_config(ssh, remote, isolation);
    assert_int_equal(
        er_harness_ssh_env_insert(h, company_id, name, config, env_id), 0);
    json_decref(config);
}

/* The remoteCwd of an ok acquire or realize result. */
static void remote_cwd_of(const json_t *res, const char *path, char *out,
                          size_t out_len)
{
    json_t *body = er_harness_json_parse_field(res, "resultJson");

    ER_HARNESS_NON_NULL(body);
    ER_HARNESS_NON_NULL(er_harness_json_str(body, path));
    snprintf(out, out_len, "%s", er_harness_json_str(body, path));
    json_decref(body);
}

/* One acquire, realize (of local, with overlay_json) and release; the
 * realize result's outcome must be realize_outcome. Returns the lease id
 * and remoteCwd. */
static void cycle(struct er_harness_run *run, const char *env_id,
                  const char *local, const char *overlay_json,
                  const char *realize_outcome, enum er_release_status status,
                  char lease_id[37], char *cwd, size_t cwd_len)
{
    struct er_harness_cmd c;
    const json_t *res;

    er_harness_cmd_acquire(&c, run);
    c.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    res = roundtrip(&c);
    assert_ok(res);
    snprintf(lease_id, 37, "%s", er_harness_json_str(res, "leaseId"));
    remote_cwd_of(res, "lease.metadata.remoteCwd", cwd, cwd_len);

    er_harness_cmd_realize(&c, run, local);
    c.cmd.runtime_overlay_json = (char *)(uintptr_t)overlay_json;
    res = roundtrip(&c);
    if (strcmp(realize_outcome, "ok") == 0)
        assert_ok(res);
    else
        ER_HARNESS_ASSERT_STR(res, "outcome", realize_outcome);

    er_harness_cmd_release(&c, run, status);
    assert_ok(roundtrip(&c));
    if (er_harness_ssh_control_dir_exists(lease_id))
        er_harness_fail(__FILE__, __LINE__,
                        "the driver directory of lease %s is left behind",
                        lease_id);
}

/* Wait until no ssh client for the server runs and no session is left
 * on it; fails the test after CLOSE_WAIT_MS. */
static void assert_connections_closed(void)
{
    int64_t deadline = er_time_mono_ms() + CLOSE_WAIT_MS;
    int clients;
    int sessions;

    for (;;) {
        clients = er_harness_ssh_clients(ssh);
        sessions = er_harness_ssh_sessions(ssh, NULL);
        if (clients == 0 && sessions == 0)
            return;
        if (er_time_mono_ms() >= deadline)
            break;
        er_harness_poll(h, 100);
    }
    er_harness_fail(__FILE__, __LINE__,
                    "%d ssh clients and %d server session processes still "
                    "there %d ms after the release",
                    clients, sessions, CLOSE_WAIT_MS);
}

/* No file under dir changed since stamp holds a line of the key. */
static void assert_no_key_files(const char *dir, const char *stamp)
{
    char *hits = NULL;
    int n = er_harness_ssh_files_with_key(ssh, dir, stamp, NULL, &hits);

    if (n != 0)
        er_harness_fail(__FILE__, __LINE__,
                        "%d files under %s hold the key:\n%s", n, dir,
                        hits != NULL ? hits : "(search failed)");
}

/* ----------------------------------------------------------------
 * Cases
 * ---------------------------------------------------------------- */

/* contract.md 6: the key is read at use and never reaches a log (debug
 * level), a record, a row or a file left behind, on the good path and on
 * error paths (a failing provision command, a refused key). */
static void ssh_private_key_leaks_nowhere(void **state)
{
    static const enum er_harness_topic topics[] = {
        ER_HARNESS_RESULTS, ER_HARNESS_LEASE_EVENTS, ER_HARNESS_ACTIVITY,
        ER_HARNESS_DLQ, ER_HARNESS_COMMANDS
    };
    struct er_harness_run run;
    struct er_harness_run run2;
    struct er_harness_run run3;
    struct er_harness_cmd c;
    char env_id[37];
    char env_bad[37];
    char lease_id[37];
    char stranger_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char local[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char stamp[ER_HARNESS_PATH_MAX + 32];
    char script[4096];
    char *stranger = NULL;
    char *log;
    char *out = NULL;
    char *dirs_before;
    char *dirs_after;
    char *added;
    const json_t *res;
    json_t *config;
    size_t t;
    size_t i;

    (void)state;
    dirs_before = er_harness_ssh_control_dirs();
    ER_HARNESS_NON_NULL(dirs_before);
    snprintf(stamp, sizeof(stamp), "%s/leak-stamp", h->dir);
    snprintf(script, sizeof(script), "touch '%s'", stamp);
    assert_int_equal(er_harness_ssh_local(script, NULL), 0);

    er_harness_run_init(&run);
    er_harness_run_init_same_company(&run2, &run);
    er_harness_run_init_same_company(&run3, &run);
    snprintf(local, sizeof(local), "%s/ws-leak", h->dir);
    assert_int_equal(er_harness_ssh_git_workspace(local, "main"), 0);
    make_env(run.company_id, "SSH secret", "leak", "per_lease", env_id, remote,
             sizeof(remote));

    /* The good path, with a provision command. */
    cycle(&run, env_id, local, "{\"provisionCommand\": \"echo ok > p.txt\"}",
          "ok", ER_RELEASE_RELEASED, lease_id, cwd, sizeof(cwd));
    /* A failing provision command, released as failed. */
    cycle(&run2, env_id, local,
          "{\"provisionCommand\": \"install-tool --version\"}", "error",
          ER_RELEASE_FAILED, lease_id, cwd, sizeof(cwd));
    /* A key the server refuses (ssh's stderr goes into the message). */
    snprintf(script, sizeof(script),
             "rm -f '%s/stranger' '%s/stranger.pub' && ssh-keygen -q -t "
             "ed25519 -N '' -f '%s/stranger' && cat '%s/stranger'",
             h->dir, h->dir, h->dir, h->dir);
    assert_int_equal(er_harness_ssh_local(script, &stranger), 0);
    ER_HARNESS_NON_NULL(stranger);
    assert_int_equal(er_harness_ssh_secret_write(ssh, stranger, stranger_id),
                     0);
    er_free(stranger);
    config = er_harness_ssh_config(ssh, remote, "per_lease");
    json_object_set_new(
        config, "privateKeySecretRef",
        json_pack("{s:s, s:s}", "type", "secret_ref", "secretId", stranger_id));
    assert_int_equal(er_harness_ssh_env_insert(h, run3.company_id,
                                               "SSH stranger", config, env_bad),
                     0);
    json_decref(config);
    er_harness_cmd_acquire(&c, &run3);
    c.cmd.selected_environment_id = env_bad;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_acquire_failed");
    /* Let the relay publish everything. */
    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "companyId",
                                      run.company_id, 4, ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    assert_connections_closed();

    /* Logs, at debug level (whatever the worker writes there). */
    log = er_harness_worker_log(worker);
    ER_HARNESS_NON_NULL(log);
    if (er_harness_ssh_text_has_key(ssh, log))
        er_harness_fail(__FILE__, __LINE__, "the key is in %s",
                        worker->log_path);
    er_free(log);

    /* Records and rows. */
    for (t = 0; t < sizeof(topics) / sizeof(topics[0]); t++) {
        assert_false(er_harness_topic_contains(h, topics[t], "PRIVATE KEY"));
        for (i = 0; i < ssh->key_line_cnt; i++) {
            if (er_harness_topic_contains(h, topics[t], ssh->key_lines[i]))
                er_harness_fail(__FILE__, __LINE__, "key line %zu on topic %d",
                                i, (int)topics[t]);
        }
    }
    assert_int_equal(er_harness_pg_rows_containing(h->db_url, "PRIVATE KEY"),
                     0);
    for (i = 0; i < ssh->key_line_cnt; i++)
        assert_int_equal(
            er_harness_pg_rows_containing(h->db_url, ssh->key_lines[i]), 0);

    /* Files: nothing new with the key in /tmp, the test's directory (but
     * its secrets) or the remote home; the worker's TMPDIR is empty. */
    assert_no_key_files("/tmp", stamp);
    assert_no_key_files(h->dir, stamp);
    assert_no_key_files(ssh->home, stamp);
    snprintf(script, sizeof(script), "find '%s' -mindepth 1 | head -20",
             ssh->tmp_dir);
    assert_int_equal(er_harness_ssh_local(script, &out), 0);
    ER_HARNESS_NON_NULL(out);
    if (out[0] != '\0')
        er_harness_fail(__FILE__, __LINE__, "left in TMPDIR %s:\n%s",
                        ssh->tmp_dir, out);
    er_free(out);
    /* The driver's per-lease directories (it keeps them in /tmp). */
    dirs_after = er_harness_ssh_control_dirs();
    ER_HARNESS_NON_NULL(dirs_after);
    added = er_harness_ssh_new_lines(dirs_before, dirs_after);
    ER_HARNESS_NON_NULL(added);
    if (added[0] != '\0')
        er_harness_fail(__FILE__, __LINE__,
                        "left behind in the driver's directory:\n%s", added);
    er_free(added);
    er_free(dirs_after);
    er_free(dirs_before);
    /* For the record: what appeared in /tmp meanwhile (other processes of
     * the machine write there too, so this is not a failure by itself). */
    snprintf(script, sizeof(script),
             "find /tmp -xdev -mindepth 1 -maxdepth 2 -newer '%s' \\( -type s "
             "-o -name '*ssh*' -o -name '*envrun*' \\) 2>/dev/null | head -20",
             stamp);
    if (er_harness_ssh_local(script, &out) == 0 && out != NULL &&
        out[0] != '\0')
        fprintf(stderr, "    new in /tmp (not necessarily ours):\n%s", out);
    er_free(out);
}

/* Two runs on one per_lease environment acquire and realize at the same
 * time: different directories, each with its own files. */
static void ssh_concurrent_runs_get_their_own_directories(void **state)
{
    struct er_harness_run run_a;
    struct er_harness_run run_b;
    struct er_harness_cmd acq_a;
    struct er_harness_cmd acq_b;
    struct er_harness_cmd rz_a;
    struct er_harness_cmd rz_b;
    struct er_harness_cmd c;
    char env_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char local_a[ER_HARNESS_PATH_MAX + 32];
    char local_b[ER_HARNESS_PATH_MAX + 32];
    char cwd_a[ER_HARNESS_PATH_MAX + 64];
    char cwd_b[ER_HARNESS_PATH_MAX + 64];
    char script[4096];
    const char *ids[2];
    const json_t *res;
    json_t *body;

    (void)state;
    er_harness_run_init(&run_a);
    er_harness_run_init_same_company(&run_b, &run_a);
    snprintf(local_a, sizeof(local_a), "%s/ws-conc-a", h->dir);
    snprintf(local_b, sizeof(local_b), "%s/ws-conc-b", h->dir);
    assert_int_equal(er_harness_ssh_plain_workspace(local_a), 0);
    assert_int_equal(er_harness_ssh_git_workspace(local_b, "run-b"), 0);
    snprintf(script, sizeof(script),
             "echo A > '%s/same.txt' && echo a > '%s/only-a.txt' && "
             "echo B > '%s/same.txt' && echo b > '%s/only-b.txt'",
             local_a, local_a, local_b, local_b);
    assert_int_equal(er_harness_ssh_local(script, NULL), 0);
    make_env(run_a.company_id, "SSH shared box", "conc", "per_lease", env_id,
             remote, sizeof(remote));

    er_harness_cmd_acquire(&acq_a, &run_a);
    acq_a.cmd.selected_environment_id = env_id;
    er_harness_cmd_acquire(&acq_b, &run_b);
    acq_b.cmd.selected_environment_id = env_id;
    assert_int_equal(er_harness_send(h, &acq_a.cmd), 0);
    assert_int_equal(er_harness_send(h, &acq_b.cmd), 0);
    ids[0] = acq_a.command_id;
    ids[1] = acq_b.command_id;
    assert_true(er_harness_wait_results(h, ids, 2, SSH_WAIT_MS));
    res = wait_result(acq_a.command_id);
    assert_ok(res);
    remote_cwd_of(res, "lease.metadata.remoteCwd", cwd_a, sizeof(cwd_a));
    res = wait_result(acq_b.command_id);
    assert_ok(res);
    remote_cwd_of(res, "lease.metadata.remoteCwd", cwd_b, sizeof(cwd_b));
    if (strcmp(cwd_a, cwd_b) == 0)
        er_harness_fail(__FILE__, __LINE__,
                        "both per_lease leases got remoteCwd %s", cwd_a);

    er_harness_cmd_realize(&rz_a, &run_a, local_a);
    er_harness_cmd_realize(&rz_b, &run_b, local_b);
    assert_int_equal(er_harness_send(h, &rz_a.cmd), 0);
    assert_int_equal(er_harness_send(h, &rz_b.cmd), 0);
    ids[0] = rz_a.command_id;
    ids[1] = rz_b.command_id;
    assert_true(er_harness_wait_results(h, ids, 2, SSH_WAIT_MS));
    res = wait_result(rz_a.command_id);
    assert_ok(res);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(body, "executionTarget.remoteCwd", cwd_a);
    json_decref(body);
    res = wait_result(rz_b.command_id);
    assert_ok(res);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(body, "executionTarget.remoteCwd", cwd_b);
    json_decref(body);

    assert_true(er_harness_ssh_remote_ok(
        ssh,
        "grep -qx A '%s/same.txt' && test -f '%s/only-a.txt' && "
        "test ! -e '%s/only-b.txt' && test -f '%s/nested/deep/leaf.txt'",
        cwd_a, cwd_a, cwd_a, cwd_a));
    assert_true(er_harness_ssh_remote_ok(
        ssh,
        "grep -qx B '%s/same.txt' && test -f '%s/only-b.txt' && "
        "test ! -e '%s/only-a.txt' && test \"$(git -C '%s' rev-parse "
        "--abbrev-ref HEAD)\" = run-b",
        cwd_b, cwd_b, cwd_b, cwd_b));

    er_harness_cmd_release(&c, &run_a, ER_RELEASE_RELEASED);
    assert_ok(roundtrip(&c));
    er_harness_cmd_release(&c, &run_b, ER_RELEASE_RELEASED);
    assert_ok(roundtrip(&c));
    assert_true(er_harness_ssh_remote_ok(
        ssh, "test ! -e '%s' && test ! -e '%s'", cwd_a, cwd_b));
}

/* One authentication per lease, not one per command (the driver reuses
 * its connection), and nothing left connected after the release. */
static void ssh_lease_authenticates_once(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char local[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char needle[128];
    long long from;
    int auths;

    (void)state;
    er_harness_run_init(&run);
    snprintf(local, sizeof(local), "%s/ws-reuse", h->dir);
    assert_int_equal(er_harness_ssh_git_workspace(local, "main"), 0);
    make_env(run.company_id, "SSH reuse", "reuse", "per_lease", env_id, remote,
             sizeof(remote));
    assert_connections_closed();
    from = er_harness_ssh_log_size(ssh);
    assert_true(from >= 0);

    cycle(&run, env_id, local, "{\"provisionCommand\": \"true\"}", "ok",
          ER_RELEASE_RELEASED, lease_id, cwd, sizeof(cwd));
    assert_connections_closed();
    snprintf(needle, sizeof(needle), ACCEPTED "%s ", ssh->user);
    auths = er_harness_ssh_log_count(ssh, from, needle);
    fprintf(stderr, "    authentications for acquire+realize+release: %d\n",
            auths);
    if (auths != 1)
        er_harness_fail(__FILE__, __LINE__,
                        "%d authentications in %s for one lease; want 1", auths,
                        ssh->log_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ssh_private_key_leaks_nowhere),
        cmocka_unit_test(ssh_concurrent_runs_get_their_own_directories),
        cmocka_unit_test(ssh_lease_authenticates_once),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
