/* secretref_fuzz: splits the input at newlines into a company id, a secret
 * reference (JSON, or the line as a string when it is not JSON), a
 * workspace path and a roots list ('@' in the last two stands for the
 * fuzzer's own directory), and checks what er_secretref_* and
 * er_wspath_check answer against a tree made once under /tmp: a secret
 * only ever comes from its own company's directory or an ENVRUN_SECRET_
 * variable, and an accepted path lies under a root. Not thread-safe
 * (setenv, one tree); the tree is removed at exit. */

/* realpath() is an X/Open System Interface, not base POSIX. */
#define _XOPEN_SOURCE 700

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "drivers/driver.h"

#define LINE_MAX_BYTES 1024 /* longest line used (the rest is cut) */
#define EXPAND_MAX     (2 * PATH_MAX)
#define MARK           "Zq7secret" /* in every planted value */
#define DB_PASSWORD    "Pw9secretZ"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The tree, relative to base: 'd' directory, 'f' file with its text, 'l'
 * symlink to its text, 'p' FIFO. Removed in reverse order at exit. */
static const struct node {
    char kind;
    const char *rel;
    const char *text;
} nodes[] = {
    { 'd', "secrets", NULL },
    { 'd', "secrets/acme", NULL },
    { 'd', "secrets/beta", NULL },
    { 'f', "secrets/acme/key", "MARK:acme:key:" MARK },
    { 'f', "secrets/acme/other", "MARK:acme:other:" MARK },
    { 'f', "secrets/acme/empty", "" },
    { 'f', "secrets/beta/key", "MARK:beta:key:" MARK },
    { 'f', "secrets/key", "MARK:flat:key:" MARK },
    { 'l', "secrets/acme/link", "../beta/key" },
    { 'l', "secrets/acme/abs", "/etc/passwd" },
    { 'p', "secrets/acme/pipe", NULL },
    { 'l', "secrets/gamma", "beta" },
    { 'd', "ws", NULL },
    { 'd', "ws/a", NULL },
    { 'd', "ws/a/b", NULL },
    { 'f', "ws/file", "x" },
    { 'l', "ws/link", "/etc" },
    { 'l', "ws/up", ".." },
    { 'd', "wsX", NULL },
};

static char base[PATH_MAX];

static void tree_remove(void)
{
    char path[PATH_MAX + 64];
    size_t i = sizeof(nodes) / sizeof(nodes[0]);

    while (i-- > 0) {
        snprintf(path, sizeof(path), "%s/%s", base, nodes[i].rel);
        if (nodes[i].kind == 'd')
            rmdir(path);
        else
            unlink(path);
    }
    rmdir(base);
}

static void tree_make(void)
{
    char tmp[] = "/tmp/secretref-fuzz-XXXXXX";
    char path[PATH_MAX + 64];
    size_t i;

    ER_ASSERT(mkdtemp(tmp) != NULL);
    ER_ASSERT(realpath(tmp, base) != NULL);
    for (i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
        const struct node *n = &nodes[i];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", base, n->rel);
        switch (n->kind) {
        case 'd':
            ER_ASSERT(mkdir(path, 0700) == 0);
            break;
        case 'f':
            f = fopen(path, "wb");
            ER_ASSERT(f != NULL);
            ER_ASSERT(fwrite(n->text, 1, strlen(n->text), f) ==
                      strlen(n->text));
            ER_ASSERT(fclose(f) == 0);
            break;
        case 'l':
            ER_ASSERT(symlink(n->text, path) == 0);
            break;
        case 'p':
            ER_ASSERT(mkfifo(path, 0600) == 0);
            break;
        default:
            ER_ASSERT(false);
        }
    }
    snprintf(path, sizeof(path), "%s/secrets", base);
    er_driver_setup(path);
    setenv("ENVRUN_SECRET_FUZZ", "MARK:env:" MARK, 1);
    setenv("ENVRUN_SECRET_EMPTY", "", 1);
    setenv("ENVRUN_DATABASE_URL",
           "postgresql://envrun:" DB_PASSWORD "@db:5432/envrun", 1);
    atexit(tree_remove);
}

static bool contains(const uint8_t *data, size_t size, const char *s)
{
    size_t n = strlen(s);
    size_t i;

    for (i = 0; i + n <= size; i++) {
        if (memcmp(data + i, s, n) == 0)
            return true;
    }
    return false;
}

static bool is_printable(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    }
    return true;
}

/* The next line of (data, size) from *pos, without its '\n'. */
static const uint8_t *next_line(const uint8_t *data, size_t size, size_t *pos,
                                size_t *len)
{
    const uint8_t *p = data + *pos;
    const uint8_t *nl;

    if (*pos >= size) {
        *len = 0;
        return p;
    }
    nl = memchr(p, '\n', size - *pos);
    *len = nl != NULL ? (size_t)(nl - p) : size - *pos;
    *pos += *len + (nl != NULL ? 1 : 0);
    if (*len > LINE_MAX_BYTES)
        *len = LINE_MAX_BYTES;
    return p;
}

/* Copy the line as a C string (cut at a NUL), '@' as base when expand. */
static void line_copy(const uint8_t *p, size_t len, bool expand, char *out,
                      size_t out_len)
{
    size_t base_len = strlen(base);
    size_t o = 0;
    size_t i;

    for (i = 0; i < len && p[i] != '\0'; i++) {
        if (expand && p[i] == '@') {
            if (o + base_len + 1 > out_len)
                break;
            memcpy(out + o, base, base_len);
            o += base_len;
        } else {
            if (o + 2 > out_len)
                break;
            out[o++] = (char)p[i];
        }
    }
    out[o] = '\0';
}

static void fuzz_secretref(const uint8_t *data, size_t size,
                           const char *company, const uint8_t *ref_text,
                           size_t ref_len)
{
    struct er_secret secret = { NULL, 0 };
    struct er_err err;
    json_t *ref;
    int rc_check;
    int rc;

    ref = json_loadb((const char *)ref_text, ref_len,
                     JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (ref == NULL)
        ref = json_stringn((const char *)ref_text, ref_len);
    if (ref == NULL)
        return;
    er_err_clear(&err);
    rc_check = er_secretref_check(ref, "privateKeySecretRef", &err);
    ER_ASSERT(rc_check == 0 || rc_check == ER_EINVAL || rc_check == ER_ENOMEM);
    er_err_clear(&err);
    rc = er_secretref_resolve(ref, company, "privateKeySecretRef", &secret,
                              &err);
    if (rc_check == ER_EINVAL)
        ER_ASSERT(rc == ER_EINVAL);
    if (rc == 0) {
        size_t n = strlen(company);

        ER_ASSERT(rc_check == 0);
        ER_ASSERT(er_secret_is_set(&secret));
        ER_ASSERT(strncmp(secret.value, "MARK:", 5) == 0);
        if (strncmp(secret.value, "MARK:env:", 9) == 0) {
            const char *s = json_string_value(ref);

            ER_ASSERT(s != NULL && strncmp(s, "env:ENVRUN_SECRET_", 18) == 0);
        } else {
            /* A file secret came from the company's own directory. */
            ER_ASSERT(strncmp(secret.value + 5, company, n) == 0 &&
                      secret.value[5 + n] == ':');
        }
    } else {
        ER_ASSERT(rc == ER_EINVAL || rc == ER_ENOTFOUND || rc == ER_EIO ||
                  rc == ER_ENOMEM);
        ER_ASSERT(!er_secret_is_set(&secret));
        ER_ASSERT(err.msg[0] != '\0');
        ER_ASSERT(is_printable(err.msg));
        if (!contains(data, size, MARK))
            ER_ASSERT(strstr(err.msg, MARK) == NULL);
        if (!contains(data, size, DB_PASSWORD))
            ER_ASSERT(strstr(err.msg, DB_PASSWORD) == NULL);
    }
    er_secret_fini(&secret);
    json_decref(ref);
}

/* Whether real lies under an entry of roots, worked out apart from
 * wspath.c's own loop. */
static bool is_under_roots(const char *real, const char *roots)
{
    char entry[PATH_MAX];
    char root[PATH_MAX];
    const char *p = roots;

    while (p != NULL) {
        const char *colon = strchr(p, ':');
        size_t len = colon != NULL ? (size_t)(colon - p) : strlen(p);
        size_t n;

        if (len > 0 && len < sizeof(entry) && p[0] == '/') {
            memcpy(entry, p, len);
            entry[len] = '\0';
            if (realpath(entry, root) != NULL) {
                n = strlen(root);
                if (strcmp(root, "/") == 0)
                    return true;
                if (strncmp(real, root, n) == 0 &&
                    (real[n] == '\0' || real[n] == '/'))
                    return true;
            }
        }
        p = colon != NULL ? colon + 1 : NULL;
    }
    return false;
}

static void fuzz_wspath(const char *path, const char *roots)
{
    char resolved[PATH_MAX];
    char real[PATH_MAX];
    struct er_err err;
    struct stat st;
    int rc;

    er_err_clear(&err);
    rc = er_wspath_check(path, roots, resolved, sizeof(resolved), &err);
    if (rc == 0) {
        ER_ASSERT(resolved[0] == '/');
        ER_ASSERT(realpath(path, real) != NULL && strcmp(real, resolved) == 0);
        ER_ASSERT(stat(resolved, &st) == 0 && S_ISDIR(st.st_mode));
        ER_ASSERT(is_under_roots(resolved, roots));
        return;
    }
    ER_ASSERT(rc == ER_EINVAL || rc == ER_ENOTFOUND || rc == ER_ENOMEM);
    ER_ASSERT(resolved[0] == '\0');
    ER_ASSERT(err.msg[0] != '\0' && is_printable(err.msg));
    if (rc == ER_ENOTFOUND)
        ER_ASSERT(realpath(path, real) == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool is_ready;
    char company[LINE_MAX_BYTES + 1];
    char path[EXPAND_MAX];
    char roots[EXPAND_MAX];
    const uint8_t *line;
    const uint8_t *ref_text;
    size_t ref_len;
    size_t len;
    size_t pos = 0;

    if (!is_ready) {
        tree_make();
        is_ready = true;
    }
    line = next_line(data, size, &pos, &len);
    line_copy(line, len, false, company, sizeof(company));
    ref_text = next_line(data, size, &pos, &ref_len);
    line = next_line(data, size, &pos, &len);
    line_copy(line, len, true, path, sizeof(path));
    line = next_line(data, size, &pos, &len);
    line_copy(line, len, true, roots, sizeof(roots));

    fuzz_secretref(data, size, company, ref_text, ref_len);
    fuzz_wspath(path, roots);
    return 0;
}
