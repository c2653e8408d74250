/* wspath_test: local workspace paths are accepted only under the roots of
 * ENVRUN_WORKSPACE_ROOTS after their symlinks are resolved; each refusal
 * names the rule. Builds a small tree under /tmp. */

/* realpath() is an X/Open System Interface, not base POSIX. */
#define _XOPEN_SOURCE 700

#include <limits.h>
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

#include "drivers/driver.h"

static char base[PATH_MAX];      /* the real path of the test's directory */
static char root[PATH_MAX + 16]; /* base/root, the usual root */

/* base/<rel>, in a static buffer of n (one of a few rotating ones). */
static const char *at(const char *rel)
{
    static char bufs[8][PATH_MAX + 64];
    static int n;
    char *p = bufs[n++ % 8];

    snprintf(p, PATH_MAX + 64, "%s/%s", base, rel);
    return p;
}

static int setup(void **state)
{
    static const char *const dirs[] = { "root",  "root/a", "root/a/b",
                                        "rootX", "other",  "other/x" };
    char tmp[] = "/tmp/wspath-test-XXXXXX";
    FILE *f;
    size_t i;

    (void)state;
    if (mkdtemp(tmp) == NULL || realpath(tmp, base) == NULL)
        return -1;
    snprintf(root, sizeof(root), "%s/root", base);
    for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (mkdir(at(dirs[i]), 0700) != 0)
            return -1;
    }
    if (symlink("/etc", at("root/link-etc")) != 0 ||
        symlink("a", at("root/link-in")) != 0 ||
        symlink(at("rootX"), at("root/link-sibling")) != 0 ||
        symlink("root", at("rootlink")) != 0)
        return -1;
    f = fopen(at("root/file"), "w");
    if (f == NULL)
        return -1;
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    char cmd[PATH_MAX + 32];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
    return system(cmd) == 0 ? 0 : -1;
}

/* er_wspath_check with the resolved path checked: it is want on success
 * and "" on failure. Returns the code; err is the caller's. */
static int check(const char *path, const char *roots, const char *want,
                 struct er_err *err)
{
    char resolved[PATH_MAX];
    int rc;

    memset(resolved, 'x', sizeof(resolved));
    rc = er_wspath_check(path, roots, resolved, sizeof(resolved), err);
    if (rc == 0)
        assert_string_equal(resolved, want != NULL ? want : path);
    else
        assert_string_equal(resolved, "");
    return rc;
}

static void wspath_dir_inside_root_is_accepted(void **state)
{
    struct er_err err;

    (void)state;
    assert_int_equal(check(at("root/a"), root, NULL, &err), 0);
    assert_int_equal(check(at("root/a/b"), root, NULL, &err), 0);
    assert_int_equal(check(at("root/a/b/"), root, at("root/a/b"), &err), 0);
    assert_int_equal(check(at("root/a/./b/../b"), root, at("root/a/b"), &err),
                     0);
    /* A symlink that stays inside resolves to its target. */
    assert_int_equal(check(at("root/link-in"), root, at("root/a"), &err), 0);
    /* A root given through a symlink is resolved the same way. */
    assert_int_equal(check(at("root/a"), at("rootlink"), NULL, &err), 0);
    assert_int_equal(check(at("rootlink/a"), root, at("root/a"), &err), 0);
}

static void wspath_root_itself_is_accepted(void **state)
{
    struct er_err err;

    (void)state;
    assert_int_equal(check(root, root, NULL, &err), 0);
    assert_int_equal(check(at("root/"), root, root, &err), 0);
    assert_int_equal(check(root, at("root/"), NULL, &err), 0);
}

/* The secrets directory is never a workspace, nor inside or around one;
 * a sibling whose name starts the same is apart (containment is by
 * component), and so is anything when no secrets directory is set. */
static void wspath_secrets_dir_is_kept_apart(void **state)
{
    struct er_err err;
    char a[PATH_MAX + 64];
    char ab[PATH_MAX + 64];

    (void)state;
    snprintf(a, sizeof(a), "%s", at("root/a"));
    snprintf(ab, sizeof(ab), "%s", at("root/a/b"));
    assert_int_equal(er_wspath_check_apart(a, a, &err), ER_EINVAL);
    assert_non_null(strstr(err.msg, "ENVRUN_SECRETS_DIR"));
    assert_int_equal(er_wspath_check_apart(root, a, &err), ER_EINVAL);
    assert_int_equal(er_wspath_check_apart(ab, a, &err), ER_EINVAL);
    /* Through a symlink to it: resolved before the comparison. */
    assert_int_equal(er_wspath_check_apart(a, at("root/link-in"), &err),
                     ER_EINVAL);
    assert_int_equal(er_wspath_check_apart(at("rootX"), root, &err), 0);
    assert_int_equal(er_wspath_check_apart(at("other"), a, &err), 0);
    assert_int_equal(er_wspath_check_apart(a, "", &err), 0);
    assert_int_equal(er_wspath_check_apart(a, NULL, &err), 0);
}

static void wspath_etc_is_refused(void **state)
{
    struct er_err err;

    (void)state;
    assert_int_equal(check("/etc", root, NULL, &err), ER_EINVAL);
    assert_string_equal(err.msg, "workspace path \"/etc\" is not under "
                                 "ENVRUN_WORKSPACE_ROOTS");
    assert_int_equal(check("/", root, NULL, &err), ER_EINVAL);
    assert_int_equal(check(base, root, NULL, &err), ER_EINVAL);
}

/* Root .../root must not hold .../rootX: containment is by component. */
static void wspath_sibling_prefix_is_refused(void **state)
{
    char prefix[PATH_MAX + 8];
    struct er_err err;

    (void)state;
    assert_int_equal(check(at("rootX"), root, NULL, &err), ER_EINVAL);
    assert_non_null(strstr(err.msg, "is not under ENVRUN_WORKSPACE_ROOTS"));
    snprintf(prefix, sizeof(prefix), "%s/roo", base);
    assert_int_equal(check(root, prefix, NULL, &err), ER_EINVAL);
    /* Through a symlink in the root, too. */
    assert_int_equal(check(at("root/link-sibling"), root, NULL, &err),
                     ER_EINVAL);
}

/* A workspace (writable by the agent) holds a symlink to /etc: the
 * resolved path is what is checked, and the message shows it. */
static void wspath_symlink_in_root_to_etc_is_refused(void **state)
{
    char want[PATH_MAX + 128];
    struct er_err err;

    (void)state;
    assert_int_equal(check(at("root/link-etc"), root, NULL, &err), ER_EINVAL);
    if (strlen(at("root/link-etc")) <= 80) {
        snprintf(want, sizeof(want),
                 "workspace path \"%s\" (real path \"/etc\") is not under "
                 "ENVRUN_WORKSPACE_ROOTS",
                 at("root/link-etc"));
        assert_string_equal(err.msg, want);
    }
    assert_int_equal(check(at("root/link-etc/ssl"), root, NULL, &err),
                     ER_EINVAL);
    /* Whether a path behind the link exists is not told either. */
    assert_int_equal(check(at("root/link-etc/no-such-dir"), root, NULL, &err),
                     ER_EINVAL);
    assert_non_null(strstr(err.msg, "is not under"));
}

static void wspath_dotdot_escape_is_refused(void **state)
{
    struct er_err err;

    (void)state;
    assert_int_equal(check(at("root/.."), root, NULL, &err), ER_EINVAL);
    assert_int_equal(check(at("root/../rootX"), root, NULL, &err), ER_EINVAL);
    assert_int_equal(check(at("root/a/../../other"), root, NULL, &err),
                     ER_EINVAL);
    assert_int_equal(check(at("root/../../../../../../etc"), root, NULL, &err),
                     ER_EINVAL);
    assert_non_null(strstr(err.msg, "is not under ENVRUN_WORKSPACE_ROOTS"));
    /* ".." that stays inside is fine. */
    assert_int_equal(check(at("root/a/b/.."), root, at("root/a"), &err), 0);
}

static void wspath_relative_or_malformed_path_is_refused(void **state)
{
    char *long_path = malloc(PATH_MAX + 2);
    struct er_err err;

    (void)state;
    assert_non_null(long_path);
    assert_int_equal(check("root/a", root, NULL, &err), ER_EINVAL);
    assert_string_equal(err.msg, "workspace path \"root/a\" is refused: it is "
                                 "relative and must be absolute");
    assert_int_equal(check("./a", root, NULL, &err), ER_EINVAL);
    assert_int_equal(check("~/a", root, NULL, &err), ER_EINVAL);
    assert_int_equal(check("", root, NULL, &err), ER_EINVAL);
    assert_string_equal(err.msg, "workspace path is missing");
    assert_int_equal(check(NULL, root, NULL, &err), ER_EINVAL);
    assert_int_equal(check("/tmp/a\nb\x1b[31m", root, NULL, &err), ER_EINVAL);
    assert_string_equal(err.msg, "workspace path \"/tmp/a?b?[31m\" is "
                                 "refused: it contains control bytes");
    long_path[0] = '/';
    memset(long_path + 1, 'a', PATH_MAX);
    long_path[PATH_MAX + 1] = '\0';
    assert_int_equal(check(long_path, root, NULL, &err), ER_EINVAL);
    assert_non_null(strstr(err.msg, "is longer than"));
    /* At most 160 bytes of the path are shown. */
    assert_true(strlen(err.msg) < 160 + 64);
    assert_non_null(strstr(err.msg, "aaa...\""));
    free(long_path);
}

static void wspath_missing_dir_is_not_found(void **state)
{
    struct er_err err;

    (void)state;
    assert_int_equal(check(at("root/nope"), root, NULL, &err), ER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "does not exist"));
    assert_int_equal(check(at("root/a/nope/deeper"), root, NULL, &err),
                     ER_ENOTFOUND);
    /* Below a file. */
    assert_int_equal(check(at("root/file/x"), root, NULL, &err), ER_ENOTFOUND);
    /* Outside the roots the answer is the same whether it exists or not. */
    assert_int_equal(check("/etc/envrun-no-such-dir", root, NULL, &err),
                     ER_EINVAL);
    assert_non_null(strstr(err.msg, "is not under"));
    assert_int_equal(check(at("rootX/no-such-dir"), root, NULL, &err),
                     ER_EINVAL);
}

static void wspath_file_is_refused(void **state)
{
    struct er_err err;

    (void)state;
    assert_int_equal(check(at("root/file"), root, NULL, &err), ER_EINVAL);
    assert_non_null(strstr(err.msg, "is not a directory"));
    /* Outside the roots it is "not under", not "not a directory". */
    assert_int_equal(check("/etc/passwd", root, NULL, &err), ER_EINVAL);
    assert_non_null(strstr(err.msg, "is not under"));
}

static void wspath_without_roots_is_refused(void **state)
{
    static const char *const none[] = { "", ":", ":::" };
    struct er_err err;
    size_t i;

    (void)state;
    assert_int_equal(check(at("root/a"), NULL, NULL, &err), ER_EINVAL);
    assert_non_null(strstr(err.msg, "ENVRUN_WORKSPACE_ROOTS is not set"));
    for (i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        assert_int_equal(check(at("root/a"), none[i], NULL, &err), ER_EINVAL);
        assert_non_null(strstr(err.msg, "ENVRUN_WORKSPACE_ROOTS is not set"));
    }
    /* Configured roots that do not resolve hold nothing. */
    assert_int_equal(check(at("root/a"), "/no-such-root:relative", NULL, &err),
                     ER_EINVAL);
    assert_non_null(strstr(err.msg, "is not under"));
}

static void wspath_any_of_several_roots_is_accepted(void **state)
{
    char roots[3 * PATH_MAX];
    struct er_err err;

    (void)state;
    snprintf(roots, sizeof(roots), "/no-such-root::relative:%s:%s:", root,
             at("other"));
    assert_int_equal(check(at("root/a"), roots, NULL, &err), 0);
    assert_int_equal(check(at("other/x"), roots, NULL, &err), 0);
    assert_int_equal(check(at("other"), roots, NULL, &err), 0);
    assert_int_equal(check(at("rootX"), roots, NULL, &err), ER_EINVAL);
    assert_int_equal(check("/etc", roots, NULL, &err), ER_EINVAL);
}

/* "/" holds everything, but only when it is listed. */
static void wspath_slash_root_only_when_listed(void **state)
{
    struct er_err err;

    (void)state;
    assert_int_equal(check("/etc", "/", NULL, &err), 0);
    assert_int_equal(check("/", "/", NULL, &err), 0);
    assert_int_equal(check(at("root/link-etc"), "/", "/etc", &err), 0);
    assert_int_equal(check("/etc", root, NULL, &err), ER_EINVAL);
}

static void wspath_roots_check_names_the_bad_entry(void **state)
{
    char roots[3 * PATH_MAX];
    struct er_err err;

    (void)state;
    assert_int_equal(er_wspath_roots_check(NULL, &err), 0);
    assert_int_equal(er_wspath_roots_check("", &err), 0);
    assert_int_equal(er_wspath_roots_check("::", &err), 0);
    assert_int_equal(er_wspath_roots_check("/", &err), 0);
    snprintf(roots, sizeof(roots), "%s::%s", root, at("rootlink"));
    assert_int_equal(er_wspath_roots_check(roots, &err), 0);

    snprintf(roots, sizeof(roots), "%s:relative/dir", root);
    assert_int_equal(er_wspath_roots_check(roots, &err), ER_EINVAL);
    assert_string_equal(err.msg, "ENVRUN_WORKSPACE_ROOTS entry "
                                 "\"relative/dir\" is not an absolute path");
    assert_int_equal(er_wspath_roots_check("/no-such-root", &err), ER_EINVAL);
    assert_string_equal(err.msg, "ENVRUN_WORKSPACE_ROOTS entry "
                                 "\"/no-such-root\" cannot be resolved: No "
                                 "such file or directory");
    assert_int_equal(er_wspath_roots_check(at("root/file"), &err), ER_EINVAL);
    assert_non_null(strstr(err.msg, "is not a directory"));
    assert_int_equal(er_wspath_roots_check("/tmp\n", &err), ER_EINVAL);
    assert_string_equal(err.msg, "ENVRUN_WORKSPACE_ROOTS entry \"/tmp?\" "
                                 "contains control bytes");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(wspath_dir_inside_root_is_accepted),
        cmocka_unit_test(wspath_root_itself_is_accepted),
        cmocka_unit_test(wspath_secrets_dir_is_kept_apart),
        cmocka_unit_test(wspath_etc_is_refused),
        cmocka_unit_test(wspath_sibling_prefix_is_refused),
        cmocka_unit_test(wspath_symlink_in_root_to_etc_is_refused),
        cmocka_unit_test(wspath_dotdot_escape_is_refused),
        cmocka_unit_test(wspath_relative_or_malformed_path_is_refused),
        cmocka_unit_test(wspath_missing_dir_is_not_found),
        cmocka_unit_test(wspath_file_is_refused),
        cmocka_unit_test(wspath_without_roots_is_refused),
        cmocka_unit_test(wspath_any_of_several_roots_is_accepted),
        cmocka_unit_test(wspath_slash_root_only_when_listed),
        cmocka_unit_test(wspath_roots_check_names_the_bad_entry),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
