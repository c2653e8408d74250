/* secretref: resolve the secret references of contract.md 6 (a file in the
 * company's directory of ENVRUN_SECRETS_DIR, or an ENVRUN_SECRET_*
 * environment variable) into a struct er_secret. Thread-safe (reads only).
 * Messages name the reference and the rule, never the value. */
/* realpath() is an X/Open System Interface, not base POSIX. */
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "drivers/driver.h"

#define ID_MAX     255 /* longest secret id, company id or variable name */
#define ENV_PREFIX "ENVRUN_SECRET_"
#define DIR_RULE   "secrets are read only from ENVRUN_SECRETS_DIR/<companyId>/"

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

/* The worker's own environment (ENVRUN_DATABASE_URL, HOME, PATH) is not a
 * store of tenant secrets: only variables set aside for them resolve. */
static bool is_secret_var(const char *name)
{
    size_t n = strlen(ENV_PREFIX);

    return strncmp(name, ENV_PREFIX, n) == 0 && name[n] != '\0';
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

static int parse_env(const json_t *ref, const char *field, struct ref *out,
                     struct er_err *err)
{
    const char *s = json_string_value(ref);
    char shown[72];

    printable(s + 4, shown, sizeof(shown));
    if (strlen(s) != json_string_length(ref) || !is_var_name(s + 4))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: \"%s\" is not a valid environment variable "
                          "name",
                          field, shown);
    if (!is_secret_var(s + 4))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: environment variable \"%s\" is not allowed: "
                          "env: references must name a variable starting "
                          "with " ENV_PREFIX,
                          field, shown);
    out->var = s + 4;
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

        if (strncmp(s, "env:", 4) == 0)
            return parse_env(ref, field, out, err);
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

/* The company id names a directory under ENVRUN_SECRETS_DIR, so it must be
 * one harmless path component: no '/', no "." or "..", no hidden name. */
static int check_company(const char *company_id, const char *field,
                         struct er_err *err)
{
    char shown[72];
    size_t i;

    if (company_id == NULL || company_id[0] == '\0')
        return er_err_set(
            err, ER_EINVAL, ER_ERRCLASS_NONE,
            "%s: no company id to scope the secret to (" DIR_RULE ")", field);
    for (i = 0; company_id[i] != '\0'; i++) {
        unsigned char c = (unsigned char)company_id[i];

        if (c < 0x20 || c == 0x7f || c == '/' || i >= ID_MAX)
            break;
    }
    if (company_id[i] != '\0' || company_id[0] == '.') {
        printable(company_id, shown, sizeof(shown));
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: company id \"%s\" is not a safe directory "
                          "name (" DIR_RULE ")",
                          field, shown);
    }
    return 0;
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

/* Open name under dir_fd. O_NOFOLLOW makes a symlink fail with ELOOP
 * rather than lead out of the company's directory; O_NONBLOCK keeps a FIFO
 * planted there from blocking the open (fstat refuses it after). */
static int open_at(int dir_fd, const char *name, bool is_dir)
{
    int flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY;
    int fd;

    if (is_dir)
        flags |= O_DIRECTORY;
    do {
        fd = openat(dir_fd, name, flags);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

/* The secret dir/company/id is a symlink. Secret volumes are often made
 * of links that stay in their directory (Kubernetes: key -> ..data/key):
 * open it when its target, resolved, lies inside the company's own
 * directory, resolved too. The directories belong to the operator, not to
 * a tenant, so nothing swaps them between the resolve and the open. Else
 * -1 with errno ELOOP ("symlinks are not followed" out of it). */
static int open_link_inside(const char *dir, const char *company_id,
                            const char *id)
{
    char company[PATH_MAX];
    char link[PATH_MAX];
    char real_company[PATH_MAX];
    char real[PATH_MAX];
    size_t n;
    int len;

    len = snprintf(company, sizeof(company), "%s/%s", dir, company_id);
    if (len < 0 || (size_t)len >= sizeof(company))
        goto refuse;
    len = snprintf(link, sizeof(link), "%s/%s", company, id);
    if (len < 0 || (size_t)len >= sizeof(link))
        goto refuse;
    if (realpath(company, real_company) == NULL || realpath(link, real) == NULL)
        goto refuse;
    n = strlen(real_company);
    if (strncmp(real, real_company, n) != 0 || real[n] != '/')
        goto refuse;
    return open_at(AT_FDCWD, real, false);
refuse:
    errno = ELOOP;
    return -1;
}

/* What a secret's names look like in messages. */
struct names {
    const char *field;
    char id[72];
    char company[72];
};

/* Turn a failed open of name under dir_fd into err; what is a phrase for
 * it in messages ("ENVRUN_SECRETS_DIR", "the company's directory", "the
 * secret"). */
static int open_failed(int e, int dir_fd, const char *name,
                       const struct names *nm, const char *what,
                       struct er_err *err)
{
    char ebuf[128];
    struct stat st;

    /* Linux reports a symlink opened with O_DIRECTORY | O_NOFOLLOW as
     * ENOTDIR, not ELOOP: look before calling it "not a directory". */
    if (e == ENOTDIR && fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISLNK(st.st_mode))
        e = ELOOP;
    switch (e) {
    case ENOENT:
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                          "%s: secret \"%s\" of company \"%s\" not found: %s "
                          "does not exist (" DIR_RULE ")",
                          nm->field, nm->id, nm->company, what);
    case ELOOP:
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: secret \"%s\" of company \"%s\" is refused: %s "
                          "is a symlink, and symlinks are not followed out "
                          "of the company's directory",
                          nm->field, nm->id, nm->company, what);
    case ENOTDIR:
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "%s: secret \"%s\" of company \"%s\" is refused: %s "
                          "is not a directory (" DIR_RULE ")",
                          nm->field, nm->id, nm->company, what);
    default:
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "%s: cannot read secret \"%s\" of company \"%s\": "
                          "cannot open %s: %s",
                          nm->field, nm->id, nm->company, what,
                          er_strerror(e, ebuf, sizeof(ebuf)));
    }
}

static const char *file_kind(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return "a device";
    if (S_ISSOCK(mode))
        return "a socket";
    return "something else";
}

/* Read ENVRUN_SECRETS_DIR/<company_id>/<id>, one openat per component so
 * no symlink is followed on the way (contract.md 6). */
static int read_file(const struct ref *r, const char *company_id,
                     const char *field, struct er_secret *secret,
                     struct er_err *err)
{
    const char *dir = er_driver_secrets_dir();
    struct names nm;
    char ebuf[128];
    struct stat st;
    char *value = NULL;
    size_t len = 0;
    int root_fd = -1;
    int company_fd = -1;
    int fd = -1;
    int rc = 0;

    ER_ASSERT(r->id != NULL && company_id != NULL);
    nm.field = field;
    printable(r->id, nm.id, sizeof(nm.id));
    printable(company_id, nm.company, sizeof(nm.company));
    if (dir == NULL || dir[0] == '\0')
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                          "%s: cannot read secret \"%s\": ENVRUN_SECRETS_DIR "
                          "is not set",
                          field, nm.id);
    root_fd = open_at(AT_FDCWD, dir, true);
    if (root_fd < 0) {
        rc = open_failed(errno, AT_FDCWD, dir, &nm, "ENVRUN_SECRETS_DIR", err);
        goto out;
    }
    company_fd = open_at(root_fd, company_id, true);
    if (company_fd < 0) {
        rc = open_failed(errno, root_fd, company_id, &nm,
                         "the company's directory", err);
        goto out;
    }
    fd = open_at(company_fd, r->id, false);
    if (fd < 0 && errno == ELOOP)
        fd = open_link_inside(dir, company_id, r->id);
    if (fd < 0) {
        rc = open_failed(errno, company_fd, r->id, &nm, "the secret", err);
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "%s: cannot read secret \"%s\": %s", field, nm.id,
                        er_strerror(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "%s: secret \"%s\" of company \"%s\" is refused: it "
                        "is %s, not a regular file",
                        field, nm.id, nm.company, file_kind(st.st_mode));
        goto out;
    }
    if ((uintmax_t)st.st_size > ER_SECRETREF_MAX_BYTES) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "%s: secret \"%s\" is larger than %u bytes", field,
                        nm.id, ER_SECRETREF_MAX_BYTES);
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
                            "%s: cannot read secret \"%s\": %s", field, nm.id,
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
                        nm.id, ER_SECRETREF_MAX_BYTES);
        goto out;
    }
    if (len == 0) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "%s: secret \"%s\" is empty", field, nm.id);
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
    if (fd >= 0)
        close(fd);
    if (company_fd >= 0)
        close(company_fd);
    if (root_fd >= 0)
        close(root_fd);
    return rc;
}

int er_secretref_resolve(const json_t *ref, const char *company_id,
                         const char *field, struct er_secret *secret,
                         struct er_err *err)
{
    struct ref r;
    int rc = parse(ref, field, &r, err);

    if (rc != 0)
        return rc;
    rc = check_company(company_id, field, err);
    if (rc != 0)
        return rc;
    if (r.var != NULL)
        return read_var(&r, field, secret, err);
    return read_file(&r, company_id, field, secret, err);
}
