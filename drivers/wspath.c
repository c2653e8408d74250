/* wspath: check local workspace paths (workspaceJson.cwd, untrusted) against
 * the roots of ENVRUN_WORKSPACE_ROOTS after resolving their symlinks (issue
 * 7; STYLE.md 7a). Thread-safe (realpath and stat only); owns nothing. */

/* realpath() is an X/Open System Interface, not base POSIX. */
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "drivers/driver.h"

#define SHOWN_MAX 160 /* bytes of a path shown in a message */
#define ROOTS_VAR "ENVRUN_WORKSPACE_ROOTS"

/* One entry of a colon-separated roots list: (ptr, len) into the list. */
struct entry {
    const char *p;
    size_t len;
};

/* Copy at most max bytes of s for a message, control bytes as '?', with
 * "..." when cut. out holds at least max + 4 bytes. */
static void shown_path(const char *s, size_t max, char *out, size_t out_len)
{
    size_t i;

    for (i = 0; s[i] != '\0' && i < max && i + 1 < out_len; i++)
        out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i] != '\0' && i + 4 <= out_len) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
}

static bool has_control(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return true;
    }
    return false;
}

/* Take the next entry of the list at *pos; false after the last one. */
static bool next_entry(const char **pos, struct entry *e)
{
    const char *end;

    if (*pos == NULL)
        return false;
    end = strchr(*pos, ':');
    e->p = *pos;
    e->len = end != NULL ? (size_t)(end - *pos) : strlen(*pos);
    *pos = end != NULL ? end + 1 : NULL;
    return true;
}

/* Whether real (a real path) is root (another) or below it at a '/'
 * boundary, so root /w does not hold /work. */
static bool is_under(const char *real, const char *root)
{
    size_t n = strlen(root);

    if (n == 1 && root[0] == '/')
        return true; /* "/" holds everything, and only when listed */
    return strncmp(real, root, n) == 0 && (real[n] == '\0' || real[n] == '/');
}

/* Whether real lies under one of roots. Entries that are empty, relative,
 * too long, hold control bytes or do not resolve hold nothing (fail
 * closed; er_wspath_roots_check reports them at start-up). */
static bool is_under_a_root(const char *real, const char *roots)
{
    char entry[PATH_MAX];
    char root[PATH_MAX];
    const char *pos = roots;
    struct entry e;

    while (next_entry(&pos, &e)) {
        if (e.len == 0 || e.len >= sizeof(entry) || e.p[0] != '/' ||
            has_control(e.p, e.len))
            continue;
        memcpy(entry, e.p, e.len);
        entry[e.len] = '\0';
        if (realpath(entry, root) == NULL)
            continue;
        if (is_under(real, root))
            return true;
    }
    return false;
}

static bool has_roots(const char *roots)
{
    const char *pos = roots;
    struct entry e;

    while (next_entry(&pos, &e)) {
        if (e.len != 0)
            return true;
    }
    return false;
}

/* Whether the deepest ancestor of path that resolves lies under a root.
 * Asked when path itself does not resolve, so that "does not exist" is
 * only ever said about paths inside the roots: elsewhere the answer is
 * "not under", whether the path exists or not. */
static bool is_ancestor_under_a_root(const char *path, const char *roots)
{
    char anc[PATH_MAX];
    char real[PATH_MAX];
    char *slash;

    snprintf(anc, sizeof(anc), "%s", path);
    for (;;) {
        slash = strrchr(anc, '/');
        if (slash == NULL)
            return false;
        if (slash == anc) {
            if (anc[1] == '\0')
                return false; /* "/" itself did not resolve */
            anc[1] = '\0';
        } else {
            *slash = '\0';
        }
        if (realpath(anc, real) != NULL)
            return is_under_a_root(real, roots);
        if (errno == ENOMEM)
            return false;
    }
}

int er_wspath_check(const char *path, const char *roots, char *resolved,
                    size_t resolved_len, struct er_err *err)
{
    char real[PATH_MAX];
    char shown[SHOWN_MAX + 4];
    char shown_real[SHOWN_MAX + 4];
    char ebuf[128];
    struct stat st;
    size_t len;

    ER_ASSERT(resolved != NULL && resolved_len >= PATH_MAX);
    resolved[0] = '\0';
    if (path == NULL || path[0] == '\0')
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "workspace path is missing");
    len = strlen(path);
    shown_path(path, SHOWN_MAX, shown, sizeof(shown));
    if (has_control(path, len))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "workspace path \"%s\" is refused: it contains "
                          "control bytes",
                          shown);
    if (path[0] != '/')
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "workspace path \"%s\" is refused: it is relative "
                          "and must be absolute",
                          shown);
    if (len >= PATH_MAX)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "workspace path \"%s\" is refused: it is longer "
                          "than %d bytes",
                          shown, PATH_MAX - 1);
    if (roots == NULL || !has_roots(roots))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "workspace path \"%s\" is refused: " ROOTS_VAR
                          " is not set",
                          shown);
    if (realpath(path, real) == NULL) {
        int e = errno;

        if (e == ENOMEM)
            return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY,
                              "out of memory");
        if (!is_ancestor_under_a_root(path, roots))
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              "workspace path \"%s\" is not under " ROOTS_VAR,
                              shown);
        if (e == ENOENT || e == ENOTDIR)
            return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                              "workspace path \"%s\" does not exist", shown);
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "workspace path \"%s\" cannot be resolved: %s", shown,
                          er_strerror(e, ebuf, sizeof(ebuf)));
    }
    if (!is_under_a_root(real, roots)) {
        if (strcmp(real, path) == 0)
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              "workspace path \"%s\" is not under " ROOTS_VAR,
                              shown);
        /* Name the real path too: a symlink is the usual surprise. */
        shown_path(path, SHOWN_MAX / 2, shown, sizeof(shown));
        shown_path(real, SHOWN_MAX / 2, shown_real, sizeof(shown_real));
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "workspace path \"%s\" (real path \"%s\") is not "
                          "under " ROOTS_VAR,
                          shown, shown_real);
    }
    if (stat(real, &st) != 0)
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                          "workspace path \"%s\" does not exist", shown);
    if (!S_ISDIR(st.st_mode))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "workspace path \"%s\" is not a directory", shown);
    snprintf(resolved, resolved_len, "%s", real);
    return 0;
}

int er_wspath_roots_check(const char *roots, struct er_err *err)
{
    char entry[PATH_MAX];
    char real[PATH_MAX];
    char shown[SHOWN_MAX + 4];
    char ebuf[128];
    const char *pos = roots;
    struct entry e;
    struct stat st;

    if (roots == NULL)
        return 0;
    while (next_entry(&pos, &e)) {
        if (e.len == 0)
            continue;
        /* A bounded copy for the message first, then the checks. */
        memcpy(entry, e.p, e.len < sizeof(entry) ? e.len : sizeof(entry) - 1);
        entry[e.len < sizeof(entry) ? e.len : sizeof(entry) - 1] = '\0';
        shown_path(entry, SHOWN_MAX, shown, sizeof(shown));
        if (e.len >= sizeof(entry))
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              ROOTS_VAR " entry \"%s\" is longer than %d "
                                        "bytes",
                              shown, PATH_MAX - 1);
        if (has_control(e.p, e.len))
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              ROOTS_VAR " entry \"%s\" contains control bytes",
                              shown);
        if (entry[0] != '/')
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              ROOTS_VAR " entry \"%s\" is not an absolute path",
                              shown);
        if (realpath(entry, real) == NULL) {
            int en = errno;

            return er_err_set(err, en == ENOMEM ? ER_ENOMEM : ER_EINVAL,
                              ER_ERRCLASS_NONE,
                              ROOTS_VAR " entry \"%s\" cannot be resolved: %s",
                              shown, er_strerror(en, ebuf, sizeof(ebuf)));
        }
        if (stat(real, &st) != 0 || !S_ISDIR(st.st_mode))
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              ROOTS_VAR " entry \"%s\" is not a directory",
                              shown);
    }
    return 0;
}

int er_wspath_check_apart(const char *real_path, const char *dir,
                          struct er_err *err)
{
    char real_dir[PATH_MAX];

    if (dir == NULL || dir[0] == '\0' || realpath(dir, real_dir) == NULL)
        return 0;
    if (!is_under(real_path, real_dir) && !is_under(real_dir, real_path))
        return 0;
    return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                      "the workspace path holds or lies in "
                      "ENVRUN_SECRETS_DIR; secrets are never part of a "
                      "workspace");
}
