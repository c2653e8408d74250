/* secretref_test: file and env references scoped to a company, bad ids and
 * company ids, missing secrets, and the attacks the scoping stops (another
 * company's secret, symlinks, FIFOs, the worker's own environment); the
 * value never reaches an error message. */
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "drivers/driver.h"

#define KEY_TEXT "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n"
#define COMPANY  "acme"
#define OTHER    "beta"
/* In every planted value, so a leak into a message is easy to see. */
#define MARK     "Zq7secret"
#define RULE     "ENVRUN_SECRETS_DIR/<companyId>/"

static char dir[64];

/* Write text to rel, a path relative to the secrets directory. */
static void write_at(const char *rel, const char *text, size_t len)
{
    char path[256];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
}

/* Write a secret of COMPANY. */
static void write_file(const char *name, const char *text, size_t len)
{
    char rel[128];

    snprintf(rel, sizeof(rel), "%s/%s", COMPANY, name);
    write_at(rel, text, len);
}

/* Make rel (relative to the secrets directory) a symlink to target. */
static void symlink_at(const char *target, const char *rel)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    assert_int_equal(symlink(target, path), 0);
}

static void mkdir_at(const char *rel)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    assert_int_equal(mkdir(path, 0700), 0);
}

static int setup(void **state)
{
    char path[128];

    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/secretref-test-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path, sizeof(path), "%s/%s", dir, COMPANY);
    if (mkdir(path, 0700) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/%s", dir, OTHER);
    if (mkdir(path, 0700) != 0)
        return -1;
    er_driver_setup(dir);
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    er_driver_setup(NULL);
    return system(cmd) == 0 ? 0 : -1;
}

static json_t *ref_obj(const char *id)
{
    return json_pack("{s:s, s:s}", "type", "secret_ref", "secretId", id);
}

static void secretref_reads_a_file(void **state)
{
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *ref = ref_obj("ssh-key-1");
    json_t *versioned = json_pack("{s:s, s:s, s:s}", "type", "secret_ref",
                                  "secretId", "ssh-key-1", "version", "latest");
    json_t *file_str = json_string("file:ssh-key-1");

    (void)state;
    write_file("ssh-key-1", KEY_TEXT, strlen(KEY_TEXT));
    assert_int_equal(er_secretref_check(ref, "privateKeySecretRef", &err), 0);
    assert_int_equal(er_secretref_resolve(ref, COMPANY, "privateKeySecretRef",
                                          &secret, &err),
                     0);
    assert_true(er_secret_is_set(&secret));
    assert_int_equal(secret.len, strlen(KEY_TEXT));
    assert_memory_equal(secret.value, KEY_TEXT, secret.len); /* untrimmed */
    er_secret_fini(&secret);
    assert_false(er_secret_is_set(&secret));

    assert_int_equal(
        er_secretref_resolve(versioned, COMPANY, "k", &secret, &err), 0);
    assert_int_equal(secret.len, strlen(KEY_TEXT));
    er_secret_fini(&secret);
    assert_int_equal(
        er_secretref_resolve(file_str, COMPANY, "k", &secret, &err), 0);
    assert_int_equal(secret.len, strlen(KEY_TEXT));
    er_secret_fini(&secret);
    json_decref(ref);
    json_decref(versioned);
    json_decref(file_str);
}

static void secretref_reads_an_env_var(void **state)
{
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *ref = json_string("env:ENVRUN_SECRET_TEST_VALUE");
    json_t *unset = json_string("env:ENVRUN_SECRET_TEST_UNSET");
    json_t *empty = json_string("env:ENVRUN_SECRET_TEST_EMPTY");

    (void)state;
    setenv("ENVRUN_SECRET_TEST_VALUE", "hunter2-value", 1);
    setenv("ENVRUN_SECRET_TEST_EMPTY", "", 1);
    unsetenv("ENVRUN_SECRET_TEST_UNSET");
    assert_int_equal(er_secretref_resolve(ref, COMPANY, "privateKeySecretRef",
                                          &secret, &err),
                     0);
    assert_string_equal(secret.value, "hunter2-value");
    er_secret_fini(&secret);

    assert_int_equal(er_secretref_resolve(unset, COMPANY, "privateKeySecretRef",
                                          &secret, &err),
                     ER_ENOTFOUND);
    assert_string_equal(err.msg, "privateKeySecretRef: environment variable "
                                 "ENVRUN_SECRET_TEST_UNSET is not set");
    assert_false(er_secret_is_set(&secret));
    assert_int_equal(er_secretref_resolve(empty, COMPANY, "k", &secret, &err),
                     ER_EINVAL);
    assert_non_null(strstr(err.msg, "is empty"));
    json_decref(ref);
    json_decref(unset);
    json_decref(empty);
}

static void secretref_rejects_bad_references(void **state)
{
    static const char *const bad[] = {
        "{\"type\":\"secret_ref\",\"secretId\":\"../etc/passwd\"}",
        "{\"type\":\"secret_ref\",\"secretId\":\"a/b\"}",
        "{\"type\":\"secret_ref\",\"secretId\":\".hidden\"}",
        "{\"type\":\"secret_ref\",\"secretId\":\"..\"}",
        "{\"type\":\"secret_ref\",\"secretId\":\"\"}",
        "{\"type\":\"secret_ref\",\"secretId\":\"a\\u0000b\"}",
        "{\"type\":\"secret_ref\",\"secretId\":7}",
        "{\"type\":\"secret_ref\"}",
        "{\"secretId\":\"abc\"}",
        "{\"type\":\"plain\",\"secretId\":\"abc\"}",
        "{\"type\":\"secret_ref\",\"secretId\":\"abc\",\"value\":\"x\"}",
        "\"env:1BAD\"",
        "\"env:\"",
        "\"env:A-B\"",
        "\"env:ENVRUN_SECRET_A\\u0000B\"",
        "\"file:../x\"",
        "\"file:\"",
        "\"file:a\\u0000b\"",
        "\"-----BEGIN OPENSSH PRIVATE KEY-----\"",
        "42",
        "null",
    };
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *ref =
            json_loads(bad[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);

        assert_non_null(ref);
        assert_int_equal(er_secretref_check(ref, "privateKeySecretRef", &err),
                         ER_EINVAL);
        assert_int_equal(er_secretref_resolve(ref, COMPANY,
                                              "privateKeySecretRef", &secret,
                                              &err),
                         ER_EINVAL);
        assert_non_null(strstr(err.msg, "privateKeySecretRef"));
        /* An inline key is refused without being echoed. */
        assert_null(strstr(err.msg, "BEGIN"));
        assert_false(er_secret_is_set(&secret));
        json_decref(ref);
    }
}

/* The company id becomes a directory name: anything that is not one plain
 * component is refused before the filesystem is touched. */
static void secretref_refuses_unsafe_company_ids(void **state)
{
    static const char *const bad[] = {
        "",
        ".",
        "..",
        "../" OTHER,
        COMPANY "/../" OTHER,
        ".hidden",
        "a\nb",
        "a\x7f"
        "b",
        "/" OTHER,
    };
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *ref = ref_obj("key");
    char long_id[300];
    size_t i;

    (void)state;
    /* Where each bad id would lead if it were joined as it is. */
    write_at(OTHER "/key", "other-" MARK, strlen("other-" MARK));
    write_at("key", "flat-" MARK, strlen("flat-" MARK));
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(er_secretref_resolve(ref, bad[i], "k", &secret, &err),
                         ER_EINVAL);
        assert_non_null(strstr(err.msg, RULE));
        assert_false(er_secret_is_set(&secret));
    }
    assert_int_equal(er_secretref_resolve(ref, "../" OTHER, "k", &secret, &err),
                     ER_EINVAL);
    assert_string_equal(err.msg, "k: company id \"../beta\" is not a safe "
                                 "directory name (secrets are read only from "
                                 "ENVRUN_SECRETS_DIR/<companyId>/)");
    assert_int_equal(er_secretref_resolve(ref, NULL, "k", &secret, &err),
                     ER_EINVAL);
    assert_non_null(strstr(err.msg, "no company id"));
    memset(long_id, 'c', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    assert_int_equal(er_secretref_resolve(ref, long_id, "k", &secret, &err),
                     ER_EINVAL);
    assert_false(er_secret_is_set(&secret));
    json_decref(ref);
}

static void secretref_reports_missing_files(void **state)
{
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *missing = ref_obj("no-such-secret");
    json_t *empty = ref_obj("empty-secret");
    json_t *subdir = ref_obj("a-directory");

    (void)state;
    assert_int_equal(er_secretref_resolve(missing, COMPANY,
                                          "privateKeySecretRef", &secret, &err),
                     ER_ENOTFOUND);
    assert_string_equal(err.msg,
                        "privateKeySecretRef: secret \"no-such-secret\" of "
                        "company \"acme\" not found: the secret does not "
                        "exist (secrets are read only from "
                        "ENVRUN_SECRETS_DIR/<companyId>/)");
    /* A company without a directory has no secrets. */
    assert_int_equal(
        er_secretref_resolve(missing, "no-such-company", "k", &secret, &err),
        ER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "the company's directory does not exist"));
    /* Nor does one whose name is taken by a file. */
    write_at("file-company", "x", 1);
    assert_int_equal(
        er_secretref_resolve(missing, "file-company", "k", &secret, &err),
        ER_EINVAL);
    assert_non_null(strstr(err.msg, "is not a directory"));

    write_file("empty-secret", "", 0);
    assert_int_equal(er_secretref_resolve(empty, COMPANY, "k", &secret, &err),
                     ER_EINVAL);
    assert_string_equal(err.msg, "k: secret \"empty-secret\" is empty");
    mkdir_at(COMPANY "/a-directory");
    assert_int_equal(er_secretref_resolve(subdir, COMPANY, "k", &secret, &err),
                     ER_EINVAL);
    assert_string_equal(err.msg, "k: secret \"a-directory\" of company "
                                 "\"acme\" is refused: it is a directory, not "
                                 "a regular file");

    /* Without ENVRUN_SECRETS_DIR nothing is read. */
    er_driver_setup("");
    write_file("ssh-key-2", KEY_TEXT, strlen(KEY_TEXT));
    json_decref(missing);
    missing = ref_obj("ssh-key-2");
    assert_int_equal(er_secretref_resolve(missing, COMPANY, "k", &secret, &err),
                     ER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "ENVRUN_SECRETS_DIR is not set"));
    er_driver_setup(dir);
    assert_false(er_secret_is_set(&secret));
    json_decref(missing);
    json_decref(empty);
    json_decref(subdir);
}

static void secretref_rejects_oversized_secrets(void **state)
{
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    size_t len = ER_SECRETREF_MAX_BYTES + 1;
    char *big = malloc(len);
    json_t *ref = ref_obj("big-secret");

    (void)state;
    assert_non_null(big);
    memset(big, 'k', len);
    write_file("big-secret", big, len);
    assert_int_equal(er_secretref_resolve(ref, COMPANY, "k", &secret, &err),
                     ER_EINVAL);
    assert_non_null(strstr(err.msg, "is larger than"));
    assert_null(strstr(err.msg, "kkkk"));
    /* Exactly the cap is fine. */
    write_file("big-secret", big, len - 1);
    assert_int_equal(er_secretref_resolve(ref, COMPANY, "k", &secret, &err), 0);
    assert_int_equal(secret.len, len - 1);
    er_secret_fini(&secret);
    free(big);
    json_decref(ref);
}

static void secretref_survives_failed_allocations(void **state)
{
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *ref = ref_obj("ssh-key-1");
    json_t *file_str = json_string("file:ssh-key-1");
    uint64_t n;
    int rc;

    (void)state;
    write_file("ssh-key-1", KEY_TEXT, strlen(KEY_TEXT));
    for (n = 1; n < 10; n++) {
        er_mem_fail_at(n);
        rc = er_secretref_resolve(ref, COMPANY, "k", &secret, &err);
        er_mem_fail_at(0);
        assert_true(rc == 0 || rc == ER_ENOMEM);
        er_secret_fini(&secret);
        er_mem_fail_at(n);
        rc = er_secretref_resolve(file_str, COMPANY, "k", &secret, &err);
        er_mem_fail_at(0);
        assert_true(rc == 0 || rc == ER_ENOMEM);
        er_secret_fini(&secret);
    }
    json_decref(ref);
    json_decref(file_str);
}

/* ----------------------------------------------------------------
 * Attacks the per-company scoping stops (issue 7)
 * ---------------------------------------------------------------- */

/* Company acme's environment names beta's key: by its bare id (which, in
 * the flat layout of old, was a file every company could read: planted
 * there too), by ids that climb to beta's directory, and through a symlink
 * in acme's directory. Only beta reads it. */
static void file_secret_of_other_company_is_refused(void **state)
{
    static const char *const climbing[] = {
        "\"file:../" OTHER "/key\"",
        "{\"type\":\"secret_ref\",\"secretId\":\"../" OTHER "/key\"}",
        "\"file:..\"",
        "{\"type\":\"secret_ref\",\"secretId\":\"" OTHER "/key\"}",
    };
    const char *text = "BETA-KEY-" MARK;
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *ref = ref_obj("key");
    json_t *via_link = json_string("file:stolen");
    size_t i;

    (void)state;
    write_at(OTHER "/key", text, strlen(text));
    write_at("key", text, strlen(text));
    symlink_at("../" OTHER "/key", COMPANY "/stolen");
    symlink_at(OTHER "/key", "stolen");

    /* The owner reads it. */
    assert_int_equal(er_secretref_resolve(ref, OTHER, "k", &secret, &err), 0);
    assert_string_equal(secret.value, text);
    er_secret_fini(&secret);

    assert_int_equal(er_secretref_resolve(ref, COMPANY, "privateKeySecretRef",
                                          &secret, &err),
                     ER_ENOTFOUND);
    assert_false(er_secret_is_set(&secret));
    assert_non_null(strstr(err.msg, "\"key\" of company \"acme\""));
    assert_non_null(strstr(err.msg, RULE));
    assert_null(strstr(err.msg, MARK));

    for (i = 0; i < sizeof(climbing) / sizeof(climbing[0]); i++) {
        json_t *bad = json_loads(climbing[i], JSON_DECODE_ANY, NULL);

        assert_non_null(bad);
        assert_int_equal(er_secretref_check(bad, "k", &err), ER_EINVAL);
        assert_int_equal(er_secretref_resolve(bad, COMPANY, "k", &secret, &err),
                         ER_EINVAL);
        assert_false(er_secret_is_set(&secret));
        json_decref(bad);
    }

    assert_int_equal(
        er_secretref_resolve(via_link, COMPANY, "k", &secret, &err), ER_EINVAL);
    assert_false(er_secret_is_set(&secret));
    assert_non_null(strstr(err.msg, "symlinks are not followed"));
    assert_null(strstr(err.msg, MARK));
    json_decref(ref);
    json_decref(via_link);
}

/* A symlink in the company's directory is never followed, wherever it
 * points: outside ENVRUN_SECRETS_DIR, to a system file, or even to a
 * regular secret next to it. Planted in the flat layout too. */
static void symlinked_secret_is_refused(void **state)
{
    static const char *const links[] = { "to-outside", "to-passwd",
                                         "to-other" };
    char outside[128];
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *inside;
    size_t i;

    (void)state;
    snprintf(outside, sizeof(outside), "%s/outside.txt", dir);
    write_at("outside.txt", "OUTSIDE-" MARK, strlen("OUTSIDE-" MARK));
    write_file("sibling", "SIBLING-" MARK, strlen("SIBLING-" MARK));
    write_at(OTHER "/key2", "OTHER-" MARK, strlen("OTHER-" MARK));
    symlink_at(outside, COMPANY "/to-outside");
    symlink_at(outside, "to-outside");
    symlink_at("/etc/passwd", COMPANY "/to-passwd");
    symlink_at("/etc/passwd", "to-passwd");
    symlink_at("../" OTHER "/key2", COMPANY "/to-other");
    symlink_at("sibling", COMPANY "/to-sibling");
    symlink_at(COMPANY "/sibling", "to-sibling");
    for (i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        json_t *ref = ref_obj(links[i]);
        char want[240];

        assert_int_equal(er_secretref_resolve(ref, COMPANY,
                                              "privateKeySecretRef", &secret,
                                              &err),
                         ER_EINVAL);
        assert_false(er_secret_is_set(&secret));
        snprintf(want, sizeof(want),
                 "privateKeySecretRef: secret \"%s\" of company \"acme\" is "
                 "refused: the secret is a symlink, and symlinks are not "
                 "followed out of the company's directory",
                 links[i]);
        assert_string_equal(err.msg, want);
        json_decref(ref);
    }
    /* A link that stays in the company's directory (a Kubernetes secret
     * volume is made of them) is followed. */
    inside = ref_obj("to-sibling");
    assert_int_equal(er_secretref_resolve(inside, COMPANY, "k", &secret, &err),
                     0);
    assert_int_equal(secret.len, strlen("SIBLING-" MARK));
    assert_memory_equal(secret.value, "SIBLING-" MARK, secret.len);
    er_secret_fini(&secret);
    json_decref(inside);
}

/* A FIFO would block a plain open() until a writer came (forever, holding
 * a dispatcher thread). The resolve runs in a child so the test can fail
 * rather than hang when it blocks. Planted in the flat layout too. */
static void fifo_secret_is_refused_without_blocking(void **state)
{
    char path[256];
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    struct pollfd pfd;
    json_t *ref = ref_obj("pipe");
    int fds[2];
    pid_t pid;
    int rc = 0;
    int ready;
    int status = 0;

    (void)state;
    snprintf(path, sizeof(path), "%s/%s/pipe", dir, COMPANY);
    assert_int_equal(mkfifo(path, 0600), 0);
    snprintf(path, sizeof(path), "%s/pipe", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        memset(&err, 0, sizeof(err));
        rc = er_secretref_resolve(ref, COMPANY, "k", &secret, &err);
        er_secret_fini(&secret);
        json_decref(ref);
        if (write(fds[1], &rc, sizeof(rc)) != (ssize_t)sizeof(rc) ||
            write(fds[1], err.msg, sizeof(err.msg)) != (ssize_t)sizeof(err.msg))
            _exit(1);
        _exit(0);
    }
    close(fds[1]);
    pfd.fd = fds[0];
    pfd.events = POLLIN;
    ready = poll(&pfd, 1, 3000);
    if (ready <= 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        close(fds[0]);
        json_decref(ref);
        fail_msg("resolving a FIFO secret blocked for 3 s");
    }
    assert_int_equal(read(fds[0], &rc, sizeof(rc)), sizeof(rc));
    assert_int_equal(read(fds[0], err.msg, sizeof(err.msg)), sizeof(err.msg));
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(rc, ER_EINVAL);
    assert_string_equal(err.msg, "k: secret \"pipe\" of company \"acme\" is "
                                 "refused: it is a FIFO, not a regular file");
    json_decref(ref);
}

/* env: references once read any variable of the worker, so an
 * environment could send ENVRUN_DATABASE_URL (or HOME, PATH) to a host it
 * chose. Only ENVRUN_SECRET_* variables are secrets. */
static void env_secret_outside_prefix_is_refused(void **state)
{
    static const char *const names[] = {
        "ENVRUN_DATABASE_URL", "HOME",          "PATH",
        "ENVRUN_SECRETS_DIR",  "ENVRUN_SECRET", "envrun_secret_x",
        "XENVRUN_SECRET_A",
    };
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    size_t i;

    (void)state;
    setenv("ENVRUN_DATABASE_URL", "postgresql://envrun:" MARK "@db/envrun", 1);
    setenv("HOME", "/home/" MARK, 1);
    setenv("ENVRUN_SECRET", MARK, 1);
    setenv("envrun_secret_x", MARK, 1);
    setenv("XENVRUN_SECRET_A", MARK, 1);
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char text[128];
        char want[256];
        json_t *ref;

        snprintf(text, sizeof(text), "env:%s", names[i]);
        ref = json_string(text);
        assert_int_equal(er_secretref_check(ref, "privateKeySecretRef", &err),
                         ER_EINVAL);
        assert_int_equal(er_secretref_resolve(ref, COMPANY,
                                              "privateKeySecretRef", &secret,
                                              &err),
                         ER_EINVAL);
        assert_false(er_secret_is_set(&secret));
        snprintf(want, sizeof(want),
                 "privateKeySecretRef: environment variable \"%s\" is not "
                 "allowed: env: references must name a variable starting "
                 "with ENVRUN_SECRET_",
                 names[i]);
        assert_string_equal(err.msg, want);
        assert_null(strstr(err.msg, MARK));
        json_decref(ref);
    }
}

/* ENVRUN_SECRET_<NAME> resolves (for any company: the worker's environment
 * is shared); the bare prefix names no secret and is refused even when a
 * variable of that name is set. */
static void env_secret_with_prefix_resolves(void **state)
{
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *ref = json_string("env:ENVRUN_SECRET_DEPLOY_KEY");
    json_t *bare = json_string("env:ENVRUN_SECRET_");

    (void)state;
    setenv("ENVRUN_SECRET_DEPLOY_KEY", "deploy-" MARK, 1);
    setenv("ENVRUN_SECRET_", "bare-" MARK, 1);
    assert_int_equal(er_secretref_check(ref, "k", &err), 0);
    assert_int_equal(er_secretref_resolve(ref, COMPANY, "k", &secret, &err), 0);
    assert_string_equal(secret.value, "deploy-" MARK);
    er_secret_fini(&secret);
    assert_int_equal(er_secretref_resolve(ref, OTHER, "k", &secret, &err), 0);
    assert_string_equal(secret.value, "deploy-" MARK);
    er_secret_fini(&secret);

    assert_int_equal(er_secretref_check(bare, "k", &err), ER_EINVAL);
    assert_int_equal(er_secretref_resolve(bare, COMPANY, "k", &secret, &err),
                     ER_EINVAL);
    assert_non_null(strstr(err.msg, "starting with ENVRUN_SECRET_"));
    assert_false(er_secret_is_set(&secret));
    unsetenv("ENVRUN_SECRET_");
    json_decref(ref);
    json_decref(bare);
}

/* The company's directory itself is a symlink (to another company's
 * directory, or out of ENVRUN_SECRETS_DIR): refused, not followed. */
static void secrets_dir_symlinked_company_dir_is_refused(void **state)
{
    char elsewhere[128];
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *ref = ref_obj("key");

    (void)state;
    mkdir_at("elsewhere");
    write_at("elsewhere/key", "ELSEWHERE-" MARK, strlen("ELSEWHERE-" MARK));
    write_at(OTHER "/key", "BETA-" MARK, strlen("BETA-" MARK));
    snprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere", dir);
    symlink_at(elsewhere, "gamma");
    symlink_at(OTHER, "delta");

    assert_int_equal(er_secretref_resolve(ref, "gamma", "k", &secret, &err),
                     ER_EINVAL);
    assert_false(er_secret_is_set(&secret));
    assert_string_equal(err.msg, "k: secret \"key\" of company \"gamma\" is "
                                 "refused: the company's directory is a "
                                 "symlink, and symlinks are not followed out "
                                 "of the company's directory");
    assert_int_equal(er_secretref_resolve(ref, "delta", "k", &secret, &err),
                     ER_EINVAL);
    assert_false(er_secret_is_set(&secret));
    assert_non_null(strstr(err.msg, "symlinks are not followed"));
    assert_null(strstr(err.msg, MARK));
    json_decref(ref);
}

/* ENVRUN_SECRETS_DIR is opened with O_NOFOLLOW too: its last component
 * must be the real directory (components above it are followed). */
static void secretref_refuses_a_symlinked_secrets_dir(void **state)
{
    char link[128];
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *ref = ref_obj("ssh-key-1");
    int rc;

    (void)state;
    write_file("ssh-key-1", KEY_TEXT, strlen(KEY_TEXT));
    snprintf(link, sizeof(link), "%s-link", dir);
    assert_int_equal(symlink(dir, link), 0);
    er_driver_setup(link);
    rc = er_secretref_resolve(ref, COMPANY, "k", &secret, &err);
    er_driver_setup(dir);
    assert_int_equal(unlink(link), 0);
    assert_int_equal(rc, ER_EINVAL);
    assert_non_null(strstr(err.msg, "ENVRUN_SECRETS_DIR is a symlink"));
    assert_false(er_secret_is_set(&secret));
    json_decref(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(secretref_reads_a_file),
        cmocka_unit_test(secretref_reads_an_env_var),
        cmocka_unit_test(secretref_rejects_bad_references),
        cmocka_unit_test(secretref_refuses_unsafe_company_ids),
        cmocka_unit_test(secretref_reports_missing_files),
        cmocka_unit_test(secretref_rejects_oversized_secrets),
        cmocka_unit_test(secretref_survives_failed_allocations),
        cmocka_unit_test(file_secret_of_other_company_is_refused),
        cmocka_unit_test(symlinked_secret_is_refused),
        cmocka_unit_test(fifo_secret_is_refused_without_blocking),
        cmocka_unit_test(env_secret_outside_prefix_is_refused),
        cmocka_unit_test(env_secret_with_prefix_resolves),
        cmocka_unit_test(secrets_dir_symlinked_company_dir_is_refused),
        cmocka_unit_test(secretref_refuses_a_symlinked_secrets_dir),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
