/* secretref: resolve the secret references of contract.md 6 (a file in
 * ENVRUN_SECRETS_DIR or an environment variable) into a struct er_secret.
 * Thread-safe (reads only). Messages name the reference, never the value. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "drivers/driver.h"

#define ID_MAX 255 /* longest secret id or variable name */

/* A reference after its shape was checked: the id of a secrets-dir file,
 * or the name of an environment variable. */
struct ref {
    const char *id; /* NULL when it is a variable */
    const char *var;
};

/* Copy s for a message: at most 64 bytes, control bytes as '?'. */
static void printable(const char *s, char *out, size_t out_len)
{
    size_t i;

    for (i = 0; s[i] != '\0' && i + 1 < out_len && i < 64; i++)
        out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    out[i] = '\0';
}

static bool is_var_name(const char *s)
{
    size_t i;

    if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') ||
          s[0] == '_'))
        return false;
    for (i = 1; s[i] != '\0'; i++) {
        char c = s[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return i <= ID_MAX;
}

static int check_id(const json_t *v, const char *field, struct er_err *err)
{
    const char *id = json_string_value(v);
    char shown[72];

    if (id == NULL || id[0] == '\0')
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: the secret id must be a non-empty string",
                          field);
    printable(id, shown, sizeof(shown));
    if (strlen(id) != json_string_length(v) || strlen(id) > ID_MAX ||
        strchr(id, '/') != NULL || id[0] == '.')
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: secret id \"%s\" is not valid (it must not "
                          "contain '/' or start with '.')",
                          field, shown);
    return 0;
}

/* Check ref and say what it points to. */
static int parse(const json_t *ref, const char *field, struct ref *out,
                 struct er_err *err)
{
    const char *key;
    json_t *v;
    char shown[72];

    out->id = NULL;
    out->var = NULL;
    if (json_is_string(ref)) {
        const char *s = json_string_value(ref);

        if (strncmp(s, "env:", 4) == 0) {
            if (strlen(s) != json_string_length(ref) || !is_var_name(s + 4)) {
                printable(s + 4, shown, sizeof(shown));
                return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                                  "%s: \"%s\" is not a valid environment "
                                  "variable name",
                                  field, shown);
            }
            out->var = s + 4;
            return 0;
        }
        if (strncmp(s, "file:", 5) == 0) {
            json_t *id = json_string(s + 5);
            int rc;

            /* Checked on a copy so the NUL test sees the suffix only. */
            if (id == NULL)
                return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY,
                                  "out of memory");
            rc = strlen(s) != json_string_length(ref)
                     ? er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                                  "%s: the secret id must not contain NUL",
                                  field)
                     : check_id(id, field, err);
            json_decref(id);
            if (rc != 0)
                return rc;
            out->id = s + 5;
            return 0;
        }
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s must be a secret reference "
                          "({\"type\":\"secret_ref\",\"secretId\":...}, "
                          "\"env:NAME\" or \"file:ID\")",
                          field);
    }
    if (!json_is_object(ref))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s must be a secret reference object or string",
                          field);
    json_object_foreach((json_t *)(uintptr_t)ref, key, v)
    {
        if (strcmp(key, "type") == 0) {
            if (!json_is_string(v) ||
                strcmp(json_string_value(v), "secret_ref") != 0)
                return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                                  "%s: type must be \"secret_ref\"", field);
        } else if (strcmp(key, "secretId") == 0) {
            int rc = check_id(v, field, err);

            if (rc != 0)
                return rc;
            out->id = json_string_value(v);
        } else if (strcmp(key, "version") != 0) {
            printable(key, shown, sizeof(shown));
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              "%s has an unknown key: %s", field, shown);
        }
    }
    if (json_object_get(ref, "type") == NULL || out->id == NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s needs \"type\":\"secret_ref\" and a secretId",
                          field);
    return 0;
}

int er_secretref_check(const json_t *ref, const char *field, struct er_err *err)
{
    struct ref r;

    return parse(ref, field, &r, err);
}

static int read_var(const struct ref *r, const char *field,
                    struct er_secret *secret, struct er_err *err)
{
    const char *v = getenv(r->var);
    size_t len;

    if (v == NULL)
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                          "%s: environment variable %s is not set", field,
                          r->var);
    len = strlen(v);
    if (len == 0)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: environment variable %s is empty", field,
                          r->var);
    if (len > ER_SECRETREF_MAX_BYTES)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: environment variable %s is larger than %u "
                          "bytes",
                          field, r->var, ER_SECRETREF_MAX_BYTES);
    if (er_secret_set(secret, v, len) != 0)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    return 0;
}

static int read_file(const struct ref *r, const char *field,
                     struct er_secret *secret, struct er_err *err)
{
    const char *dir = er_driver_secrets_dir();
    char path[4096];
    char ebuf[128];
    struct stat st;
    char *value = NULL;
    size_t len = 0;
    int fd = -1;
    int rc = 0;
    int n;

    if (dir == NULL || dir[0] == '\0')
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                          "%s: cannot read secret \"%s\": ENVRUN_SECRETS_DIR "
                          "is not set",
                          field, r->id);
    n = snprintf(path, sizeof(path), "%s/%s", dir, r->id);
    if (n < 0 || (size_t)n >= sizeof(path))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: the path of secret \"%s\" is too long", field,
                          r->id);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;

        return er_err_set(err, e == ENOENT ? ER_ENOTFOUND : ER_EIO,
                          ER_ERRCLASS_NONE,
                          "%s: cannot read secret \"%s\" in "
                          "ENVRUN_SECRETS_DIR: %s",
                          field, r->id, er_strerror(e, ebuf, sizeof(ebuf)));
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc =
            er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                       "%s: secret \"%s\" is not a regular file", field, r->id);
        goto out;
    }
    if ((uintmax_t)st.st_size > ER_SECRETREF_MAX_BYTES) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "%s: secret \"%s\" is larger than %u bytes", field,
                        r->id, ER_SECRETREF_MAX_BYTES);
        goto out;
    }
    /* Read straight into the secret's storage: no other copy to wipe. One
     * byte more than the cap tells a file that grew since fstat. */
    value = er_malloc(ER_SECRETREF_MAX_BYTES + 2);
    if (value == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
        goto out;
    }
    while (len <= ER_SECRETREF_MAX_BYTES) {
        ssize_t got = read(fd, value + len, ER_SECRETREF_MAX_BYTES + 1 - len);

        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                            "%s: cannot read secret \"%s\": %s", field, r->id,
                            er_strerror(errno, ebuf, sizeof(ebuf)));
            goto out;
        }
        if (got == 0)
            break;
        len += (size_t)got;
    }
    if (len > ER_SECRETREF_MAX_BYTES) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "%s: secret \"%s\" is larger than %u bytes", field,
                        r->id, ER_SECRETREF_MAX_BYTES);
        goto out;
    }
    if (len == 0) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "%s: secret \"%s\" is empty", field, r->id);
        goto out;
    }
    value[len] = '\0';
    er_secret_fini(secret);
    secret->value = value;
    secret->len = len;
    value = NULL;
out:
    if (value != NULL) {
        struct er_secret wipe = { value, len };

        er_secret_fini(&wipe);
    }
    close(fd);
    return rc;
}

int er_secretref_resolve(const json_t *ref, const char *field,
                         struct er_secret *secret, struct er_err *err)
{
    struct ref r;
    int rc = parse(ref, field, &r, err);

    if (rc != 0)
        return rc;
    if (r.var != NULL)
        return read_var(&r, field, secret, err);
    return read_file(&r, field, secret, err);
}
