/* secretref_test: file and env references, bad ids and missing secrets;
 * the value never reaches an error message. */
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
#include <jansson.h>

#include "drivers/driver.h"

#define KEY_TEXT "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n"

static char dir[64];

static void write_file(const char *name, const char *text, size_t len)
{
    char path[256];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/secretref-test-XXXXXX");
    if (mkdtemp(dir) == NULL)
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
    assert_int_equal(
        er_secretref_resolve(ref, "privateKeySecretRef", &secret, &err), 0);
    assert_true(er_secret_is_set(&secret));
    assert_int_equal(secret.len, strlen(KEY_TEXT));
    assert_memory_equal(secret.value, KEY_TEXT, secret.len); /* untrimmed */
    er_secret_fini(&secret);
    assert_false(er_secret_is_set(&secret));

    assert_int_equal(er_secretref_resolve(versioned, "k", &secret, &err), 0);
    assert_int_equal(secret.len, strlen(KEY_TEXT));
    er_secret_fini(&secret);
    assert_int_equal(er_secretref_resolve(file_str, "k", &secret, &err), 0);
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
    json_t *ref = json_string("env:ENVRUN_TEST_SECRET_VALUE");
    json_t *unset = json_string("env:ENVRUN_TEST_SECRET_UNSET");
    json_t *empty = json_string("env:ENVRUN_TEST_SECRET_EMPTY");

    (void)state;
    setenv("ENVRUN_TEST_SECRET_VALUE", "hunter2-value", 1);
    setenv("ENVRUN_TEST_SECRET_EMPTY", "", 1);
    unsetenv("ENVRUN_TEST_SECRET_UNSET");
    assert_int_equal(
        er_secretref_resolve(ref, "privateKeySecretRef", &secret, &err), 0);
    assert_string_equal(secret.value, "hunter2-value");
    er_secret_fini(&secret);

    assert_int_equal(
        er_secretref_resolve(unset, "privateKeySecretRef", &secret, &err),
        ER_ENOTFOUND);
    assert_string_equal(err.msg, "privateKeySecretRef: environment variable "
                                 "ENVRUN_TEST_SECRET_UNSET is not set");
    assert_false(er_secret_is_set(&secret));
    assert_int_equal(er_secretref_resolve(empty, "k", &secret, &err),
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
        "\"file:../x\"",
        "\"file:\"",
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
        assert_int_equal(
            er_secretref_resolve(ref, "privateKeySecretRef", &secret, &err),
            ER_EINVAL);
        assert_non_null(strstr(err.msg, "privateKeySecretRef"));
        /* An inline key is refused without being echoed. */
        assert_null(strstr(err.msg, "BEGIN"));
        assert_false(er_secret_is_set(&secret));
        json_decref(ref);
    }
}

static void secretref_reports_missing_files(void **state)
{
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *missing = ref_obj("no-such-secret");
    json_t *empty = ref_obj("empty-secret");
    json_t *subdir = ref_obj("a-directory");
    char path[256];

    (void)state;
    assert_int_equal(
        er_secretref_resolve(missing, "privateKeySecretRef", &secret, &err),
        ER_ENOTFOUND);
    assert_string_equal(err.msg,
                        "privateKeySecretRef: cannot read secret "
                        "\"no-such-secret\" in ENVRUN_SECRETS_DIR: No such "
                        "file or directory");
    write_file("empty-secret", "", 0);
    assert_int_equal(er_secretref_resolve(empty, "k", &secret, &err),
                     ER_EINVAL);
    assert_string_equal(err.msg, "k: secret \"empty-secret\" is empty");
    snprintf(path, sizeof(path), "%s/a-directory", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(er_secretref_resolve(subdir, "k", &secret, &err), ER_EIO);
    assert_non_null(strstr(err.msg, "not a regular file"));

    /* Without ENVRUN_SECRETS_DIR nothing is read. */
    er_driver_setup("");
    write_file("ssh-key-2", KEY_TEXT, strlen(KEY_TEXT));
    json_decref(missing);
    missing = ref_obj("ssh-key-2");
    assert_int_equal(er_secretref_resolve(missing, "k", &secret, &err),
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
    assert_int_equal(er_secretref_resolve(ref, "k", &secret, &err), ER_EINVAL);
    assert_non_null(strstr(err.msg, "is larger than"));
    assert_null(strstr(err.msg, "kkkk"));
    /* Exactly the cap is fine. */
    write_file("big-secret", big, len - 1);
    assert_int_equal(er_secretref_resolve(ref, "k", &secret, &err), 0);
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
    uint64_t n;
    int rc;

    (void)state;
    write_file("ssh-key-1", KEY_TEXT, strlen(KEY_TEXT));
    for (n = 1; n < 10; n++) {
        er_mem_fail_at(n);
        rc = er_secretref_resolve(ref, "k", &secret, &err);
        er_mem_fail_at(0);
        assert_true(rc == 0 || rc == ER_ENOMEM);
        er_secret_fini(&secret);
    }
    json_decref(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(secretref_reads_a_file),
        cmocka_unit_test(secretref_reads_an_env_var),
        cmocka_unit_test(secretref_rejects_bad_references),
        cmocka_unit_test(secretref_reports_missing_files),
        cmocka_unit_test(secretref_rejects_oversized_secrets),
        cmocka_unit_test(secretref_survives_failed_allocations),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
