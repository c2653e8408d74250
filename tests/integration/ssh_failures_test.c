/* ssh_failures_test: how an `ssh` environment fails (domain.md 3.0, 3.2,
 * 3.4, 4.2) through a real worker and the real sshd of
 * scripts/test-services.sh: invalid configs, a closed port, a refused key,
 * a wrong or unknown host key, a full remote disk during realize, and a
 * connection killed in the middle of a sync. One worker serves every
 * case; each message is printed for the record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"
#include "worker/worker.h"

#define SSH_WAIT_MS    60000
/* A sync of the big workspace cut by a kill: the result may wait for the
 * driver's own timeouts. */
#define KILLED_WAIT_MS 180000
/* The big workspace: 32 files of 8 MiB of random bytes (no compression
 * helps), a sync of about a second on loopback. */
#define BIG_FILE_CNT   32
#define BIG_FILE_BYTES (8 * 1024 * 1024)
/* How long the remote tar of the big sync is looked for. */
#define TAR_SEEN_MS    30000

static struct er_harness *h;
static struct er_harness_ssh *ssh;
static struct er_harness_worker *worker;

static int group_setup(void **state)
{
    struct er_harness_worker_opts opts = { 0 };

    (void)state;
    h = er_harness_new("ssh_failures", 2, NULL);
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

static const json_t *roundtrip_ms(struct er_harness_cmd *c, int timeout_ms)
{
    const json_t *res;

    assert_int_equal(er_harness_send(h, &c->cmd), 0);
    res = er_harness_wait_result(h, c->command_id, timeout_ms);
    if (res == NULL)
        er_harness_worker_dump_log(worker, 6000);
    ER_HARNESS_NON_NULL(res);
    return res;
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

/* strstr, ignoring ASCII case. */
static bool has_ci(const char *text, const char *needle)
{
    size_t n = strlen(needle);
    size_t i;
    size_t j;

    for (i = 0; text[i] != '\0'; i++) {
        for (j = 0; j < n && text[i + j] != '\0'; j++) {
            char a = text[i + j];
            char b = needle[j];

            if (a >= 'A' && a <= 'Z')
                a = (char)(a - 'A' + 'a');
            if (b >= 'A' && b <= 'Z')
                b = (char)(b - 'A' + 'a');
            if (a != b)
                break;
        }
        if (j == n)
            return true;
    }
    return false;
}

/* The result is an error with code, its message starts with prefix, has a
 * cause after it, contains each of the NULL-terminated needles (any case)
 * and no secret; the message is printed for the report. */
static void assert_failure(const json_t *res, const char *code,
                           const char *prefix, const char *const *needles)
{
    const char *msg = er_harness_json_str(res, "errorMessage");
    size_t i;

    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", code);
    ER_HARNESS_ASSERT_STR(res, "driver", "ssh");
    ER_HARNESS_NON_NULL(msg);
    fprintf(stderr, "    message: %s\n", msg);
    if (strncmp(msg, prefix, strlen(prefix)) != 0 ||
        strlen(msg) == strlen(prefix))
        er_harness_fail(__FILE__, __LINE__,
                        "\"%s\" does not start with \"%s\" and a cause", msg,
                        prefix);
    for (i = 0; needles != NULL && needles[i] != NULL; i++) {
        if (!has_ci(msg, needles[i]))
            er_harness_fail(__FILE__, __LINE__,
                            "\"%s\" does not mention \"%s\"", msg, needles[i]);
    }
    if (er_harness_ssh_text_has_key(ssh, msg))
        er_harness_fail(__FILE__, __LINE__, "the key is in the message");
}

static void insert_env(const char *company_id, const char *name,
                       const json_t *config, char env_id[37])
{
    assert_int_equal(
        er_harness_ssh_env_insert(h, company_id, name, config, env_id), 0);
}

static long long leases_of(const char *company_id)
{
    return er_harness_pg_count(h->db_url,
                               "SELECT count(*) FROM environment_leases "
                               "WHERE company_id = $1",
                               1, (const char *[]){ company_id });
}

/* Fail when the lease's driver directory (control socket, known_hosts)
 * is still there. */
static void assert_no_control_dir(const char *lease_id)
{
    if (er_harness_ssh_control_dir_exists(lease_id))
        er_harness_fail(__FILE__, __LINE__,
                        "the driver directory of lease %s is left behind",
                        lease_id);
}

/* Fail when the driver's directory of per-lease directories has entries
 * that were not in before (a failed acquire left its directory). */
static void assert_no_new_control_dirs(const char *before)
{
    char *after = er_harness_ssh_control_dirs();
    char *added;

    ER_HARNESS_NON_NULL(after);
    added = er_harness_ssh_new_lines(before, after);
    ER_HARNESS_NON_NULL(added);
    if (added[0] != '\0')
        er_harness_fail(__FILE__, __LINE__,
                        "left behind in the driver's directory:\n%s", added);
    er_free(added);
    er_free(after);
}

/* An acquire on an environment with config must fail with
 * lease_acquire_failed naming each of needles, insert no lease and leave
 * no per-lease directory behind. */
static void check_acquire_fails(const char *name, json_t *config,
                                const char *const *needles)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char prefix[256];
    char *before = er_harness_ssh_control_dirs();
    const json_t *res;

    ER_HARNESS_NON_NULL(before);
    er_harness_run_init(&run);
    insert_env(run.company_id, name, config, env_id);
    json_decref(config);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    res = roundtrip_ms(&c, SSH_WAIT_MS);
    snprintf(prefix, sizeof(prefix),
             "Failed to acquire lease for environment \"%s\" (ssh): ", name);
    assert_failure(res, "lease_acquire_failed", prefix, needles);
    ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    ER_HARNESS_ASSERT_STR(res, "leaseId", NULL);
    assert_int_equal(leases_of(run.company_id), 0);
    assert_no_new_control_dirs(before);
    er_free(before);
}

/* A new ed25519 key pair at path (and path.pub), made with ssh-keygen. */
static void keygen(const char *path)
{
    char script[4096];

    snprintf(script, sizeof(script),
             "rm -f '%s' '%s.pub' && ssh-keygen -q -t ed25519 -N '' -C "
             "envrun-test-stranger -f '%s'",
             path, path, path);
    assert_int_equal(er_harness_ssh_local(script, NULL), 0);
}

static char *read_file(const char *path)
{
    char *text = er_harness_read_text(path, (size_t)1 << 16);

    ER_HARNESS_NON_NULL(text);
    return text;
}

/* Acquire on env_id; returns the lease id and remoteCwd. */
static void acquire_ok(struct er_harness_run *run, const char *env_id,
                       char lease_id[37], char *cwd, size_t cwd_len)
{
    struct er_harness_cmd c;
    const json_t *res;
    json_t *body;

    er_harness_cmd_acquire(&c, run);
    c.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    res = roundtrip_ms(&c, SSH_WAIT_MS);
    assert_ok(res);
    snprintf(lease_id, 37, "%s", er_harness_json_str(res, "leaseId"));
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    ER_HARNESS_NON_NULL(er_harness_json_str(body, "lease.metadata.remoteCwd"));
    snprintf(cwd, cwd_len, "%s",
             er_harness_json_str(body, "lease.metadata.remoteCwd"));
    json_decref(body);
}

static const json_t *release(struct er_harness_run *run)
{
    struct er_harness_cmd c;

    er_harness_cmd_release(&c, run, ER_RELEASE_RELEASED);
    return roundtrip_ms(&c, SSH_WAIT_MS);
}

static void assert_lease_status(const char *lease_id, const char *status)
{
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE id = $1 "
                                         "AND status = $2",
                                         2,
                                         (const char *[]){ lease_id, status }),
                     1);
}

/* ----------------------------------------------------------------
 * Config validation (4.2: the first issue's message)
 * ---------------------------------------------------------------- */

static void ssh_config_without_host_fails(void **state)
{
    json_t *config = er_harness_ssh_config(ssh, NULL, "shared");
    const char *const needles[] = { "SSH environments require a host.", NULL };

    (void)state;
    json_object_set_new(config, "host", json_string("  "));
    check_acquire_fails("SSH no host", config, needles);
}

static void ssh_config_without_username_fails(void **state)
{
    json_t *config = er_harness_ssh_config(ssh, NULL, "shared");
    const char *const needles[] = { "SSH environments require a username.",
                                    NULL };

    (void)state;
    json_object_del(config, "username");
    check_acquire_fails("SSH no user", config, needles);
}

static void ssh_config_relative_path_fails(void **state)
{
    json_t *config = er_harness_ssh_config(ssh, "work/here", "shared");
    const char *const needles[] = {
        "SSH remote workspace path must be absolute.", NULL
    };

    (void)state;
    check_acquire_fails("SSH relative", config, needles);
}

/* A secret reference whose file does not exist: the cause, not the
 * directory's content. */
static void ssh_missing_secret_fails(void **state)
{
    json_t *config = er_harness_ssh_config(ssh, NULL, "shared");
    char missing[37];

    (void)state;
    er_uuid_v4(missing);
    json_object_set_new(
        config, "privateKeySecretRef",
        json_pack("{s:s, s:s}", "type", "secret_ref", "secretId", missing));
    check_acquire_fails("SSH no secret", config, NULL);
}

/* ----------------------------------------------------------------
 * Connection failures
 * ---------------------------------------------------------------- */

/* Nothing listens on the port: ssh's "Connection refused". */
static void ssh_unreachable_host_fails(void **state)
{
    json_t *config = er_harness_ssh_config(ssh, NULL, "shared");
    const char *const needles[] = { "Connection refused", NULL };
    int port = er_devstack_free_port();

    (void)state;
    assert_true(port > 0);
    json_object_set_new(config, "port", json_integer(port));
    check_acquire_fails("SSH closed port", config, needles);
}

/* A key that is not in authorized_keys. */
static void ssh_refused_key_fails(void **state)
{
    json_t *config = er_harness_ssh_config(ssh, NULL, "shared");
    const char *const needles[] = { "Permission denied", NULL };
    char path[ER_HARNESS_PATH_MAX + 32];
    char id[37];
    char *key;

    (void)state;
    snprintf(path, sizeof(path), "%s/stranger_ed25519", h->dir);
    keygen(path);
    key = read_file(path);
    assert_int_equal(er_harness_ssh_secret_write(ssh, key, id), 0);
    er_free(key);
    json_object_set_new(
        config, "privateKeySecretRef",
        json_pack("{s:s, s:s}", "type", "secret_ref", "secretId", id));
    check_acquire_fails("SSH stranger", config, needles);
}

/* knownHosts names another host key for the server (strict). */
static void ssh_host_key_mismatch_fails(void **state)
{
    json_t *config = er_harness_ssh_config(ssh, NULL, "shared");
    const char *const needles[] = { "host key", NULL };
    char path[ER_HARNESS_PATH_MAX + 32];
    char line[1024];
    char *pub;
    char *last_space;

    (void)state;
    snprintf(path, sizeof(path), "%s/other_host_ed25519", h->dir);
    keygen(path);
    snprintf(path, sizeof(path), "%s/other_host_ed25519.pub", h->dir);
    pub = read_file(path);
    pub[strcspn(pub, "\n")] = '\0';
    /* "ssh-ed25519 AAAA... comment": keep type and key. */
    last_space = strrchr(pub, ' ');
    if (last_space != NULL && last_space != strchr(pub, ' '))
        *last_space = '\0';
    snprintf(line, sizeof(line), "[%s]:%d %s\n", ssh->host, ssh->port, pub);
    er_free(pub);
    json_object_set_new(config, "knownHosts", json_string(line));
    check_acquire_fails("SSH impostor", config, needles);
}

/* Strict checking with no knownHosts at all: the server's key is unknown,
 * so the connection is refused. */
static void ssh_unknown_host_key_fails_when_strict(void **state)
{
    json_t *config = er_harness_ssh_config(ssh, NULL, "shared");
    const char *const needles[] = { "host key", NULL };

    (void)state;
    json_object_set_new(config, "knownHosts", json_null());
    check_acquire_fails("SSH unknown", config, needles);
}

/* Not strict, no knownHosts: the connection is accepted (4.2). */
static void ssh_unknown_host_key_is_accepted_when_not_strict(void **state)
{
    json_t *config = er_harness_ssh_config(ssh, NULL, "shared");
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char cwd[ER_HARNESS_PATH_MAX + 64];

    (void)state;
    json_object_set_new(config, "knownHosts", json_null());
    json_object_set_new(config, "strictHostKeyChecking", json_false());
    er_harness_run_init(&run);
    insert_env(run.company_id, "SSH lax", config, env_id);
    json_decref(config);
    acquire_ok(&run, env_id, lease_id, cwd, sizeof(cwd));
    assert_ok(release(&run));
    assert_lease_status(lease_id, "released");
    assert_no_control_dir(lease_id);
}

/* ----------------------------------------------------------------
 * A full remote disk during realize (a 256 KiB tmpfs)
 * ---------------------------------------------------------------- */

static void check_full_disk(const char *leaf, bool is_git)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char lease_id[37];
    char name[64];
    char prefix[256];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char local[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char script[4096];
    const char *const needles[] = { "No space left on device", NULL };
    const json_t *res;
    json_t *config;

    er_harness_run_init(&run);
    snprintf(remote, sizeof(remote), "%s/%s", ssh->root, leaf);
    if (er_harness_ssh_mount_tmpfs(ssh, remote, (size_t)256 * 1024) != 0)
        er_harness_fail(__FILE__, __LINE__,
                        "cannot mount a 256 KiB tmpfs on %s (needs root)",
                        remote);
    /* A workspace four times the disk, of bytes that do not compress. */
    snprintf(local, sizeof(local), "%s/ws-%s", h->dir, leaf);
    if (is_git) {
        assert_int_equal(er_harness_ssh_git_workspace(local, "main"), 0);
        snprintf(script, sizeof(script),
                 "cd '%s' && head -c 1048576 /dev/urandom > big.bin && "
                 "git add big.bin && git -c user.name=t -c "
                 "user.email=t@envrun.invalid commit -q -m big",
                 local);
    } else {
        assert_int_equal(er_harness_ssh_plain_workspace(local), 0);
        snprintf(script, sizeof(script),
                 "head -c 1048576 /dev/urandom > '%s/big.bin'", local);
    }
    assert_int_equal(er_harness_ssh_local(script, NULL), 0);

    snprintf(name, sizeof(name), "SSH full %s", is_git ? "git" : "tar");
    config = er_harness_ssh_config(ssh, remote, "shared");
    insert_env(run.company_id, name, config, env_id);
    json_decref(config);
    acquire_ok(&run, env_id, lease_id, cwd, sizeof(cwd));

    er_harness_cmd_realize(&c, &run, local);
    res = roundtrip_ms(&c, SSH_WAIT_MS);
    snprintf(
        prefix, sizeof(prefix),
        "Failed to realize workspace for environment \"%s\" (ssh): ", name);
    assert_failure(res, "workspace_realization_failed", prefix, needles);
    /* The lease waits for the run's release (3.5). */
    assert_lease_status(lease_id, "active");
    assert_ok(release(&run));
    assert_lease_status(lease_id, "released");
    assert_no_control_dir(lease_id);
}

static void ssh_full_disk_during_tar_sync_fails(void **state)
{
    (void)state;
    check_full_disk("full-tar", false);
}

static void ssh_full_disk_during_git_sync_fails(void **state)
{
    (void)state;
    check_full_disk("full-git", true);
}

/* ----------------------------------------------------------------
 * A connection killed in the middle of a sync
 * ---------------------------------------------------------------- */

static void ssh_killed_connection_during_sync_fails(void **state)
{
    const char *const needles[] = { NULL };
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char lease_id[37];
    char prefix[256];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char local[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char script[4096];
    const char *msg;
    const json_t *res;
    json_t *config;
    int64_t deadline;
    int killed = 0;

    (void)state;
    er_harness_run_init(&run);
    snprintf(local, sizeof(local), "%s/ws-big", h->dir);
    assert_int_equal(er_harness_ssh_plain_workspace(local), 0);
    snprintf(script, sizeof(script),
             "i=0; while [ $i -lt %d ]; do head -c %d /dev/urandom > "
             "'%s/big-'$i.bin || exit 1; i=$((i + 1)); done",
             BIG_FILE_CNT, BIG_FILE_BYTES, local);
    assert_int_equal(er_harness_ssh_local(script, NULL), 0);

    snprintf(remote, sizeof(remote), "%s/killed", ssh->root);
    config = er_harness_ssh_config(ssh, remote, "per_lease");
    insert_env(run.company_id, "SSH cut", config, env_id);
    json_decref(config);
    acquire_ok(&run, env_id, lease_id, cwd, sizeof(cwd));

    /* Kill every session of the server as soon as the remote tar of the
     * sync runs: the stream is then in flight. */
    er_harness_cmd_realize(&c, &run, local);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    assert_int_equal(er_harness_flush(h), 0);
    deadline = er_time_mono_ms() + TAR_SEEN_MS;
    while (er_time_mono_ms() < deadline) {
        if (er_harness_ssh_sessions(ssh, "tar") > 0) {
            killed = er_harness_ssh_kill_sessions(ssh);
            break;
        }
        er_harness_poll(h, 5);
    }
    if (killed <= 0)
        er_harness_fail(__FILE__, __LINE__,
                        "no remote tar process seen within %d ms: the sync "
                        "did not stream through tar, or finished first",
                        TAR_SEEN_MS);
    fprintf(stderr, "    killed %d session processes\n", killed);

    res = er_harness_wait_result(h, c.command_id, KILLED_WAIT_MS);
    if (res == NULL)
        er_harness_worker_dump_log(worker, 6000);
    ER_HARNESS_NON_NULL(res);
    snprintf(prefix, sizeof(prefix),
             "Failed to realize workspace for environment \"SSH cut\" (ssh): ");
    assert_failure(res, "workspace_realization_failed", prefix, needles);
    /* Say what happened: the connection went away (ssh's bare exit code
     * 255 does not say it). */
    msg = er_harness_json_str(res, "errorMessage");
    if (!has_ci(msg, "connection") && !has_ci(msg, "closed") &&
        !has_ci(msg, "lost") && !has_ci(msg, "broken pipe") &&
        !has_ci(msg, "reset"))
        er_harness_fail(__FILE__, __LINE__,
                        "\"%s\" does not say the connection was lost", msg);
    assert_true(er_harness_worker_is_alive(worker));
    assert_lease_status(lease_id, "active");

    /* The driver connects again to release and remove the half-synced
     * per-lease directory. */
    assert_ok(release(&run));
    assert_lease_status(lease_id, "released");
    assert_no_control_dir(lease_id);
    assert_true(er_harness_ssh_remote_ok(ssh, "test ! -e '%s'", cwd));
    snprintf(script, sizeof(script), "rm -rf '%s'", local);
    assert_int_equal(er_harness_ssh_local(script, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ssh_config_without_host_fails),
        cmocka_unit_test(ssh_config_without_username_fails),
        cmocka_unit_test(ssh_config_relative_path_fails),
        cmocka_unit_test(ssh_missing_secret_fails),
        cmocka_unit_test(ssh_unreachable_host_fails),
        cmocka_unit_test(ssh_refused_key_fails),
        cmocka_unit_test(ssh_host_key_mismatch_fails),
        cmocka_unit_test(ssh_unknown_host_key_fails_when_strict),
        cmocka_unit_test(ssh_unknown_host_key_is_accepted_when_not_strict),
        cmocka_unit_test(ssh_full_disk_during_tar_sync_fails),
        cmocka_unit_test(ssh_full_disk_during_git_sync_fails),
        cmocka_unit_test(ssh_killed_connection_during_sync_fails),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
