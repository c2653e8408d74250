/* ssh: the ssh driver (domain.md 4.2) over the OpenSSH client. One
 * multiplexed connection per lease (a ControlMaster socket in a private
 * directory derived from the lease id); the private key is on disk only
 * while that connection is set up; the workspace goes over it as a git
 * bundle or a tar stream; commands run through `sh -lc`. Thread-safe: no
 * global state, but one lease must not be worked on by two threads. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "drivers/driver.h"

#define FAC "driver.ssh"

#define CONTROL_PERSIST_S   600 /* the master outlives idle gaps this long */
#define CHECK_TIMEOUT_MS    10000
#define SETUP_EXTRA_MS      20000 /* beyond ConnectTimeout: auth, `true` */
#define ACQUIRE_TIMEOUT_MS  60000
#define SYNC_TIMEOUT_MS     (30 * 60 * 1000)
#define LOCAL_TIMEOUT_MS    (5 * 60 * 1000)
#define CLEANUP_TIMEOUT_MS  300000 /* teardown/cleanup, as provision */
#define KILL_TIMEOUT_MS     15000
#define EXEC_DEFAULT_MS     15000 /* domain.md 3.7 */
#define LIST_MAX            (8u * 1024u * 1024u)
#define SCRIPT_MAX          (4u * 1024u * 1024u)
#define CONNECT_TIMEOUT_MAX 300
#define LEASE_ID_MAX        64
#define GIT_FILTER_MAX      16 /* filter drivers one workspace may define */
#define OWNER_MAX           (LEASE_ID_MAX + 64) /* "environment:<id>" */

/* The file that marks a remote directory as envrun's: its one line names
 * the owner ("lease:<id>" with per_lease isolation, else
 * "environment:<id>"). Only a directory that carries the owner's mark is
 * ever emptied or removed. */
#define MARKER_FILE ER_SSH_DIR_MARKER

/* Unpack stdin in the current directory. GNU tar reports a full disk as
 * "Wrote only N of M bytes" at times; when it fails with (almost) no space
 * left, say so in words. */
#define TAR_EXTRACT                                                    \
    "tar -x -o -f - || { rc=$?; "                                      \
    "k=$(df -Pk . 2>/dev/null | awk 'NR==2 {print $4}'); "             \
    "case $k in ''|*[!0-9]*) ;; *) [ \"$k\" -lt 64 ] && "              \
    "echo \"tar: No space left on device ($k KiB free)\" >&2;; esac; " \
    "exit $rc; }"

#define STR_(x) #x
#define STR(x)  STR_(x)

/* A config plus what one lease adds: where its control socket lives. */
struct conn {
    struct er_ssh_config cfg;
    /* false when the environment config no longer validates; release
     * then works from the lease metadata and an existing master only. */
    bool has_config;
    char config_msg[ER_ERR_MSG_MAX];
    char ctl_dir[ER_SSH_CONTROL_DIR_MAX];
    char dest[ER_SSH_NAME_MAX * 2 + 16]; /* user@host:port, for messages */
    /* The environment's company: its secrets are the only ones the
     * connection may read (contract.md 6). */
    char company_id[64];
};

/* ================================================================
 * Small helpers
 * ================================================================ */

static bool is_blank(const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return false;
    }
    return true;
}

/* Copy s trimmed of spaces into out; false when it does not fit. */
static bool copy_trimmed(const char *s, char *out, size_t out_len)
{
    size_t n;

    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' ||
                     s[n - 1] == '\r'))
        n--;
    if (n >= out_len)
        return false;
    memmove(out, s, n);
    out[n] = '\0';
    return true;
}

static bool has_control(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    }
    return false;
}

/* Copy s for a message: at most 64 bytes, control bytes as '?'. */
static void printable(const char *s, char *out, size_t out_len)
{
    size_t i;

    for (i = 0; s[i] != '\0' && i + 1 < out_len && i < 64; i++)
        out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    out[i] = '\0';
}

/* A non-blank string member of obj, or NULL. */
static const char *jstr(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;

    return s != NULL && !is_blank(s) ? s : NULL;
}

static int oom(struct er_err *err)
{
    return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
}

/* Driver operations answer with ER_EDRIVER (or ER_ENOMEM) and keep the
 * message of whoever saw the cause. */
static int driver_rc(int rc, struct er_err *err)
{
    if (rc == 0 || rc == ER_ENOMEM)
        return rc;
    if (err != NULL) {
        err->code = ER_EDRIVER;
        err->cls = ER_ERRCLASS_NONE;
    }
    return ER_EDRIVER;
}

/* A host name or address ssh cannot take for an option: no leading '-',
 * no whitespace, control bytes, '@' or '/'. */
static bool is_valid_host(const char *h)
{
    if (h[0] == '\0' || h[0] == '-')
        return false;
    for (; *h != '\0'; h++) {
        if ((unsigned char)*h <= 0x20 || *h == 0x7f || *h == '@' || *h == '/')
            return false;
    }
    return true;
}

/* Lease ids become directory names: [A-Za-z0-9_-], 1..64 bytes. */
static bool is_valid_lease_id(const char *id)
{
    size_t i;

    if (id == NULL || id[0] == '\0' || id[0] == '-')
        return false;
    for (i = 0; id[i] != '\0'; i++) {
        char c = id[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return false;
    }
    return i <= LEASE_ID_MAX;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The first line of text worth showing: not blank, not one of ssh's
 * "Permanently added" warnings, not our pgid marker; trimmed, without a
 * leading "ssh: ", control bytes as '?'. Empty when there is none. */
static void first_line(const char *text, char *out, size_t out_len)
{
    const char *p = text;

    out[0] = '\0';
    while (p != NULL && *p != '\0') {
        const char *end = strchr(p, '\n');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *line = p;
        size_t i;

        p = end != NULL ? end + 1 : NULL;
        while (n > 0 && is_space(line[0])) {
            line++;
            n--;
        }
        while (n > 0 && is_space(line[n - 1]))
            n--;
        if (n == 0 ||
            (n >= 26 && memcmp(line, "Warning: Permanently added", 26) == 0) ||
            (n >= 12 && memcmp(line, "envrun-pgid-", 12) == 0))
            continue;
        if (n >= 5 && memcmp(line, "ssh: ", 5) == 0) {
            line += 5;
            n -= 5;
        }
        for (i = 0; i < n && i + 1 < out_len; i++)
            out[i] = (unsigned char)line[i] < 0x20 ? '?' : line[i];
        out[i] = '\0';
        return;
    }
}

/* Like first_line, but a line naming a well-known cause (a full disk, a
 * read-only file system) wins over the lines before it: GNU tar, for one,
 * reports a short write before it says why. */
static void cause_line(const char *text, char *out, size_t out_len)
{
    static const char *const causes[] = {
        "No space left on device",
        "Disk quota exceeded",
        "Read-only file system",
    };
    size_t i;

    for (i = 0; i < sizeof(causes) / sizeof(causes[0]); i++) {
        const char *hit = strstr(text, causes[i]);

        if (hit != NULL) {
            while (hit > text && hit[-1] != '\n')
                hit--;
            first_line(hit, out, out_len);
            return;
        }
    }
    first_line(text, out, out_len);
}

/* ================================================================
 * Config (domain.md 4.2)
 * ================================================================ */

static const char *const config_keys[] = {
    "host",
    "port",
    "username",
    "remoteWorkspacePath",
    "privateKey",
    "privateKeySecretRef",
    "knownHosts",
    "strictHostKeyChecking",
    "workspaceIsolation",
    "connectTimeoutS",
};

/* An integer member: a JSON integer, an integral real, or a string of
 * digits (Paperclip coerces "2222"). Absent or null gives def. Returns 0,
 * or -1 when the value is not such an integer within [lo, hi]. */
static int get_int(const json_t *v, int def, int lo, int hi, int *out)
{
    long long n;

    if (v == NULL || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (json_is_integer(v)) {
        n = json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);

        if (d != (double)(long long)d || d < lo || d > hi)
            return -1;
        n = (long long)d;
    } else if (json_is_string(v)) {
        char buf[32];
        char *end = NULL;
        size_t i;

        if (strlen(json_string_value(v)) != json_string_length(v) ||
            !copy_trimmed(json_string_value(v), buf, sizeof(buf)) ||
            buf[0] == '\0')
            return -1;
        for (i = 0; buf[i] != '\0'; i++) {
            if (buf[i] < '0' || buf[i] > '9')
                return -1;
        }
        errno = 0;
        n = strtoll(buf, &end, 10);
        if (errno != 0 || *end != '\0')
            return -1;
    } else {
        return -1;
    }
    if (n < lo || n > hi)
        return -1;
    *out = (int)n;
    return 0;
}

static int inval(struct er_err *err, const char *msg)
{
    return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE, "%s", msg);
}

int er_ssh_config_parse(const json_t *config, struct er_ssh_config *cfg,
                        struct er_err *err)
{
    const json_t *v;
    const char *key;
    json_t *val;
    size_t i;

    memset(cfg, 0, sizeof(*cfg));
    cfg->port = 22;
    cfg->is_strict_host_key_checking = true;
    cfg->connect_timeout_s = 10;
    if (!json_is_object(config))
        return inval(err, "SSH environment config must be an object.");

    /* In the order of the upstream schema, so the first problem is the one
     * Paperclip would name. */
    v = json_object_get(config, "host");
    if (!json_is_string(v) || is_blank(json_string_value(v)))
        return inval(err, "SSH environments require a host.");
    if (strlen(json_string_value(v)) != json_string_length(v) ||
        !copy_trimmed(json_string_value(v), cfg->host, sizeof(cfg->host)) ||
        !is_valid_host(cfg->host))
        return inval(err, "SSH host must be a host name or address (no "
                          "spaces, '@', '/' or leading '-').");

    if (get_int(json_object_get(config, "port"), 22, 1, 65535, &cfg->port) != 0)
        return inval(err, "SSH port must be an integer between 1 and 65535.");

    v = json_object_get(config, "username");
    if (!json_is_string(v) || is_blank(json_string_value(v)))
        return inval(err, "SSH environments require a username.");
    if (strlen(json_string_value(v)) != json_string_length(v) ||
        !copy_trimmed(json_string_value(v), cfg->username,
                      sizeof(cfg->username)) ||
        has_control(cfg->username) || strchr(cfg->username, ' ') != NULL)
        return inval(err, "SSH username must not contain spaces or control "
                          "characters.");

    v = json_object_get(config, "remoteWorkspacePath");
    if (!json_is_string(v) || is_blank(json_string_value(v)))
        return inval(err, "SSH environments require a remote workspace path.");
    if (!copy_trimmed(json_string_value(v), cfg->remote_workspace_path,
                      sizeof(cfg->remote_workspace_path)))
        return inval(err, "SSH remote workspace path is too long.");
    if (cfg->remote_workspace_path[0] != '/')
        return inval(err, "SSH remote workspace path must be absolute.");
    if (strlen(json_string_value(v)) != json_string_length(v) ||
        has_control(cfg->remote_workspace_path))
        return inval(err, "SSH remote workspace path must not contain "
                          "control characters.");
    i = strlen(cfg->remote_workspace_path);
    while (i > 1 && cfg->remote_workspace_path[i - 1] == '/')
        cfg->remote_workspace_path[--i] = '\0';

    /* contract.md 6: configs hold references, never values. */
    v = json_object_get(config, "privateKey");
    if (v != NULL && !json_is_null(v))
        return inval(err, "SSH private keys must be given as "
                          "privateKeySecretRef, not inline.");
    v = json_object_get(config, "privateKeySecretRef");
    if (v != NULL && !json_is_null(v)) {
        int rc = er_secretref_check(v, "privateKeySecretRef", err);

        if (rc != 0)
            return rc;
        cfg->private_key_ref = v;
    }

    v = json_object_get(config, "knownHosts");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v) ||
            strlen(json_string_value(v)) != json_string_length(v))
            return inval(err, "SSH knownHosts must be a string or null.");
        if (!is_blank(json_string_value(v)))
            cfg->known_hosts = json_string_value(v);
    }

    v = json_object_get(config, "strictHostKeyChecking");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v))
            return inval(err, "SSH strictHostKeyChecking must be a boolean.");
        cfg->is_strict_host_key_checking = json_is_true(v);
    }

    v = json_object_get(config, "workspaceIsolation");
    if (v != NULL && !json_is_null(v)) {
        const char *s = json_string_value(v);

        if (s != NULL && strcmp(s, "per_lease") == 0)
            cfg->is_per_lease = true;
        else if (s == NULL || strcmp(s, "shared") != 0)
            return inval(err, "SSH workspaceIsolation must be \"shared\" or "
                              "\"per_lease\".");
    }

    if (get_int(json_object_get(config, "connectTimeoutS"), 10, 1,
                CONNECT_TIMEOUT_MAX, &cfg->connect_timeout_s) != 0)
        return inval(err, "SSH connectTimeoutS must be an integer between 1 "
                          "and 300.");

    json_object_foreach((json_t *)(uintptr_t)config, key, val)
    {
        bool is_known = false;
        char shown[72];

        for (i = 0; i < sizeof(config_keys) / sizeof(config_keys[0]); i++)
            is_known = is_known || strcmp(key, config_keys[i]) == 0;
        if (!is_known) {
            printable(key, shown, sizeof(shown));
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              "SSH environment config has an unknown key: %s",
                              shown);
        }
    }
    return 0;
}

/* ================================================================
 * Env keys, scripts
 * ================================================================ */

static bool is_env_key(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || !((s[0] >= 'A' && s[0] <= 'Z') ||
                    (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return false;
    for (i = 1; i < n; i++) {
        char c = s[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

int er_ssh_env_check(const char *const *env, struct er_err *err)
{
    size_t i;

    for (i = 0; env != NULL && env[i] != NULL; i++) {
        const char *eq = strchr(env[i], '=');
        size_t n = eq != NULL ? (size_t)(eq - env[i]) : strlen(env[i]);

        /* An entry without '=' has no value to pass: refused too. */
        if (eq == NULL || !is_env_key(env[i], n)) {
            char key[72];
            char shown[72];

            /* Only the key: the value may be a secret. */
            snprintf(key, sizeof(key), "%.*s", (int)(n < 64 ? n : 64), env[i]);
            printable(key, shown, sizeof(shown));
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              "Invalid SSH environment variable key: %s",
                              shown);
        }
    }
    return 0;
}

int er_ssh_exec_script(const struct er_driver_exec *req, const char *cwd,
                       const char *marker, struct er_buf *script,
                       struct er_err *err)
{
    size_t i;
    int rc;

    rc = er_ssh_env_check(req->env, err);
    if (rc != 0)
        return rc;
    /* env(1) would read a leading '-' as an option and a '=' as one more
     * assignment. */
    if (req->command == NULL || req->command[0] == '\0' ||
        req->command[0] == '-' || strchr(req->command, '=') != NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "Invalid SSH command: it must be non-empty, not "
                          "start with '-' and not contain '='");
    /* sshd runs each session in its own session and process group; its id
     * goes to stderr before anything else, so a timeout can kill the whole
     * group (ssh without a pty does not). It is read from /proc with the
     * shell's own read (the fields after the command name's last ')':
     * state, ppid, pgrp), not with a program started for it. */
    rc = er_buf_printf(
        script, "%s",
        "pg=; if [ -r /proc/$$/stat ] && read -r s < /proc/$$/stat; then "
        "s=${s##*) }; set -f; set -- $s; set +f; pg=${3:-}; fi; "
        "case $pg in ''|*[!0-9]*) "
        "pg=$(ps -o pgid= -p $$ 2>/dev/null | tr -d ' ');; esac; "
        "case $pg in ''|*[!0-9]*) pg=$$;; esac; printf '%s%s\\n' ");
    if (rc == 0)
        rc = er_sh_quote(script, marker);
    if (rc == 0)
        rc = er_buf_append(script, " \"$pg\" >&2; ", 12);
    /* The profiles are sourced only when they parse (`sh -n`), so a
     * bash-only profile cannot end the script; their errors are ignored.
     * The worker's own tools need none. */
    if (rc == 0 && !req->is_worker_tool)
        rc = er_buf_printf(
            script, "%s",
            "for f in \"$HOME/.profile\" "
            "\"$HOME/.bash_profile\" \"$HOME/.zprofile\"; do "
            "if [ -r \"$f\" ] && sh -n \"$f\" >/dev/null 2>&1; then "
            ". \"$f\" >/dev/null 2>&1 || true; fi; done; ");
    if (rc == 0 && cwd != NULL) {
        rc = er_buf_append(script, "cd ", 3);
        if (rc == 0)
            rc = er_sh_quote(script, cwd);
        if (rc == 0)
            rc = er_buf_append(script, " || exit 1; ", 12);
    }
    /* env(1) only where there is something to set. */
    if (rc == 0)
        rc = req->env != NULL && req->env[0] != NULL
                 ? er_buf_append(script, "exec env", 8)
                 : er_buf_append(script, "exec", 4);
    for (i = 0; rc == 0 && req->env != NULL && req->env[i] != NULL; i++) {
        const char *eq = strchr(req->env[i], '=');

        rc = er_buf_printf(script, " %.*s=", (int)(eq - req->env[i]),
                           req->env[i]);
        if (rc == 0)
            rc = er_sh_quote(script, eq + 1);
    }
    if (rc == 0)
        rc = er_buf_append(script, " ", 1);
    if (rc == 0)
        rc = er_sh_quote(script, req->command);
    for (i = 0; rc == 0 && req->args != NULL && req->args[i] != NULL; i++) {
        rc = er_buf_append(script, " ", 1);
        if (rc == 0)
            rc = er_sh_quote(script, req->args[i]);
    }
    if (rc == ER_E2BIG)
        return er_err_set(err, rc, ER_ERRCLASS_NONE,
                          "the SSH command is longer than %u bytes",
                          SCRIPT_MAX);
    if (rc != 0)
        return oom(err);
    return 0;
}

/* ================================================================
 * Control directory and ssh argv
 * ================================================================ */

void er_ssh_control_dir(const char *lease_id, char out[ER_SSH_CONTROL_DIR_MAX])
{
    char tag[ER_DRIVER_LEASE_TAG_LEN + 1];
    size_t i;

    if (!er_driver_lease_tag(lease_id, tag)) {
        /* FNV-1a: any other id still gets a short fixed-size name. */
        uint64_t h = 14695981039346656037ull;

        for (i = 0; lease_id[i] != '\0'; i++) {
            h ^= (unsigned char)lease_id[i];
            h *= 1099511628211ull;
        }
        snprintf(tag, sizeof(tag), "%016llx", (unsigned long long)h);
    }
    /* Unix socket paths are limited to 108 bytes: keep it short. */
    snprintf(out, ER_SSH_CONTROL_DIR_MAX, "/tmp/envrun-ssh-%lu/%s",
             (unsigned long)geteuid(), tag);
}

void er_ssh_argv_build(const struct er_ssh_config *cfg, const char *ctl_dir,
                       enum er_ssh_argv_kind kind, const char *key_path,
                       const char *remote_cmd, struct er_ssh_argv *argv)
{
    const char **v = argv->argv;
    size_t n = 0;

    v[n++] = "ssh";
    /* No config file at all (not ~/.ssh/config, not /etc/ssh/ssh_config
     * and its Includes): the worker's ProxyCommand, LocalCommand, Match
     * exec or KnownHostsCommand never run for a tenant's host. The -o
     * options below win over any config anyway (first value wins). */
    v[n++] = "-F";
    v[n++] = "none";
    v[n++] = "-o";
    v[n++] = "ProxyCommand=none";
    v[n++] = "-o";
    v[n++] = "PermitLocalCommand=no";
    v[n++] = "-o";
    v[n++] = "ForwardAgent=no";
    v[n++] = "-o";
    v[n++] = "BatchMode=yes";
    snprintf(argv->connect_timeout, sizeof(argv->connect_timeout),
             "ConnectTimeout=%d", cfg->connect_timeout_s);
    v[n++] = "-o";
    v[n++] = argv->connect_timeout;
    /* Errors only: no "Permanently added" noise in captured stderr. */
    v[n++] = "-o";
    v[n++] = "LogLevel=ERROR";
    v[n++] = "-o";
    if (cfg->is_strict_host_key_checking) {
        v[n++] = "StrictHostKeyChecking=yes";
        if (cfg->known_hosts != NULL) {
            snprintf(argv->known_hosts, sizeof(argv->known_hosts),
                     "UserKnownHostsFile=%s/known_hosts", ctl_dir);
            v[n++] = "-o";
            v[n++] = argv->known_hosts;
        }
    } else {
        v[n++] = "StrictHostKeyChecking=no";
        v[n++] = "-o";
        v[n++] = "UserKnownHostsFile=/dev/null";
    }
    snprintf(argv->control_path, sizeof(argv->control_path), "ControlPath=%s/m",
             ctl_dir);
    v[n++] = "-o";
    v[n++] = "ControlMaster=auto";
    v[n++] = "-o";
    v[n++] = argv->control_path;
    v[n++] = "-o";
    v[n++] = "ControlPersist=" STR(CONTROL_PERSIST_S);
    v[n++] = "-o";
    v[n++] = "ServerAliveInterval=15";
    v[n++] = "-o";
    v[n++] = "ServerAliveCountMax=4";
    if (cfg->private_key_ref != NULL) {
        /* Only the configured key: not the worker's agent or ~/.ssh. */
        v[n++] = "-o";
        v[n++] = "IdentitiesOnly=yes";
        v[n++] = "-o";
        v[n++] = "IdentityAgent=none";
        if (kind == ER_SSH_ARGV_SETUP && key_path != NULL) {
            v[n++] = "-i";
            v[n++] = key_path;
        } else {
            v[n++] = "-o";
            v[n++] = "IdentityFile=none";
        }
    }
    snprintf(argv->port, sizeof(argv->port), "%d", cfg->port);
    v[n++] = "-p";
    v[n++] = argv->port;
    v[n++] = "-l";
    v[n++] = cfg->username;
    if (kind == ER_SSH_ARGV_CHECK || kind == ER_SSH_ARGV_EXIT) {
        v[n++] = "-O";
        v[n++] = kind == ER_SSH_ARGV_CHECK ? "check" : "exit";
    }
    v[n++] = "--";
    v[n++] = cfg->host;
    if ((kind == ER_SSH_ARGV_RUN || kind == ER_SSH_ARGV_SETUP) &&
        remote_cmd != NULL)
        v[n++] = remote_cmd;
    ER_ASSERT(n < sizeof(argv->argv) / sizeof(argv->argv[0]));
    v[n] = NULL;
    argv->argc = n;
}

/* ================================================================
 * Script builder: remember the first failure, check once
 * ================================================================ */

struct sb {
    struct er_buf buf;
    int rc;
};

static void sb_init(struct sb *sb)
{
    er_buf_init(&sb->buf, SCRIPT_MAX);
    sb->rc = 0;
}

static void sb_add(struct sb *sb, const char *s)
{
    if (sb->rc == 0)
        sb->rc = er_buf_append(&sb->buf, s, strlen(s));
}

static void sb_q(struct sb *sb, const char *s)
{
    if (sb->rc == 0)
        sb->rc = er_sh_quote(&sb->buf, s);
}

static int sb_check(const struct sb *sb, struct er_err *err)
{
    if (sb->rc == ER_E2BIG)
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_NONE,
                          "a remote script is longer than %u bytes",
                          SCRIPT_MAX);
    return sb->rc != 0 ? oom(err) : 0;
}

static const char *sb_text(const struct sb *sb)
{
    return sb->buf.data != NULL ? (const char *)sb->buf.data : "";
}

/* Wrap script as `sh -lc '<script>'`, the one remote command ssh gets
 * (`sh -c` with is_plain: the worker's own tools need no login profile). */
static int login_sh(const char *script, bool is_plain, struct sb *cmd)
{
    sb_add(cmd, is_plain ? "sh -c " : "sh -lc ");
    sb_q(cmd, script);
    return cmd->rc;
}

/* ================================================================
 * Connection: control directory, key file, master
 * ================================================================ */

/* path exists (created 0700 when missing) as a directory of this user
 * that nobody else can enter. */
static int private_dir(const char *path, struct er_err *err)
{
    struct stat st;
    char ebuf[128];

    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot create %s: %s",
                          path, er_strerror(errno, ebuf, sizeof(ebuf)));
    if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) ||
        st.st_uid != geteuid() || (st.st_mode & 077) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "%s is not a private directory of this user", path);
    return 0;
}

static int write_private_file(const char *path, const char *data, size_t len,
                              bool is_new, struct er_err *err);

/* The control directory, marked (file "owner") with the installation id,
 * so only a sweep of the same installation may remove it (ssh_sweep). */
static int control_dir_make(const struct conn *conn, struct er_err *err)
{
    char base[ER_SSH_CONTROL_DIR_MAX];
    char owner[ER_SSH_CONTROL_DIR_MAX + 16];
    const char *id = er_driver_installation();
    char *slash;
    int rc;

    snprintf(base, sizeof(base), "%s", conn->ctl_dir);
    slash = strrchr(base, '/');
    ER_ASSERT(slash != NULL);
    *slash = '\0';
    rc = private_dir(base, err);
    if (rc == 0)
        rc = private_dir(conn->ctl_dir, err);
    if (rc != 0 || id[0] == '\0')
        return rc;
    snprintf(owner, sizeof(owner), "%s/owner", conn->ctl_dir);
    return write_private_file(owner, id, strlen(id), false, err);
}

static void control_dir_remove(const struct conn *conn)
{
    char path[ER_SSH_CONTROL_DIR_MAX + 16];

    snprintf(path, sizeof(path), "%s/owner", conn->ctl_dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/known_hosts", conn->ctl_dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/m", conn->ctl_dir);
    unlink(path);
    rmdir(conn->ctl_dir);
}

/* Write data (plus a final newline when it lacks one) to a 0600 file. The
 * message names the path only: data may be a key. */
static int write_private_file(const char *path, const char *data, size_t len,
                              bool is_new, struct er_err *err)
{
    int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC |
                (is_new ? O_EXCL : O_TRUNC);
    int fd = open(path, flags, 0600);
    char ebuf[128];
    size_t off = 0;
    int rc = 0;

    if (fd < 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot create %s: %s",
                          path, er_strerror(errno, ebuf, sizeof(ebuf)));
    if (fchmod(fd, 0600) != 0)
        rc = -1;
    while (rc == 0 && off < len) {
        ssize_t n = write(fd, data + off, len - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = -1;
        else
            off += (size_t)n;
    }
    if (rc == 0 && (len == 0 || data[len - 1] != '\n') &&
        write(fd, "\n", 1) != 1)
        rc = -1;
    if (close(fd) != 0)
        rc = -1;
    if (rc != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot write %s: %s",
                          path, er_strerror(errno, ebuf, sizeof(ebuf)));
    return 0;
}

static void key_remove(const char *key_dir, const char *key_path)
{
    if (key_path[0] != '\0')
        unlink(key_path);
    if (key_dir[0] != '\0')
        rmdir(key_dir);
}

/* Materialise the private key (contract.md 6) as key_dir/id: a 0600 file
 * in a fresh 0700 directory. The secret is wiped from memory at once. */
static int key_write(const struct conn *conn, char *key_dir, size_t dir_len,
                     char *key_path, size_t path_len, struct er_err *err)
{
    struct er_secret key = { NULL, 0 };
    char ebuf[128];
    int rc;

    /* The pid in the name lets a sweep tell a dead worker's key from a
     * live one's (ssh_sweep). */
    snprintf(key_dir, dir_len, "/tmp/envrun-key-%ld-XXXXXX", (long)getpid());
    if (mkdtemp(key_dir) == NULL) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "cannot create a private key directory: %s",
                        er_strerror(errno, ebuf, sizeof(ebuf)));
        key_dir[0] = '\0';
        return rc;
    }
    snprintf(key_path, path_len, "%s/id", key_dir);
    rc = er_secretref_resolve(conn->cfg.private_key_ref, conn->company_id,
                              "privateKeySecretRef", &key, err);
    if (rc == 0)
        rc = write_private_file(key_path, key.value, key.len, true, err);
    er_secret_fini(&key);
    if (rc != 0) {
        key_remove(key_dir, key_path);
        key_dir[0] = '\0';
        key_path[0] = '\0';
    }
    return rc;
}

static int run_ssh(const struct er_ssh_argv *argv, int64_t timeout_ms,
                   struct er_proc_result *res, struct er_err *err)
{
    struct er_proc_opts opts;

    er_proc_opts_init(&opts);
    opts.argv = argv->argv;
    opts.timeout_ms = timeout_ms;
    return er_proc_run(&opts, res, err);
}

/* Whether the lease's master connection serves: its control socket
 * accepts a connection. A master that died leaves the socket refusing;
 * asking it with `ssh -O check` would cost a process per command. The
 * control directory is private to this user, so nothing else listens
 * there. */
static bool master_is_alive(const struct conn *conn)
{
    struct sockaddr_un sa;
    bool is_alive;
    int fd;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/m",
                         conn->ctl_dir) >= sizeof(sa.sun_path))
        return false;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    is_alive = connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return is_alive;
}

/* The cause of a failed connection, from ssh's own stderr. */
static int connect_error(const struct conn *conn,
                         const struct er_proc_result *res, struct er_err *err)
{
    const char *text = res->err_text != NULL ? res->err_text : "";
    char line[200];

    if (strstr(text, "Host key verification failed") != NULL)
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "host key verification failed for %s:%d",
                          conn->cfg.host, conn->cfg.port);
    if (res->is_timed_out)
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "ssh to %s failed: no connection within %d s",
                          conn->dest,
                          conn->cfg.connect_timeout_s + SETUP_EXTRA_MS / 1000);
    first_line(text, line, sizeof(line));
    if (line[0] != '\0')
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "ssh to %s failed: %s", conn->dest, line);
    return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                      "ssh to %s failed: exit code %d", conn->dest,
                      res->exit_code);
}

/* Make sure the lease's master connection is up: reuse a live one, else
 * authenticate a new one (ControlPersist keeps it in the background) with
 * the key on disk only for that one invocation. */
static int ensure_master(const struct conn *conn, struct er_err *err)
{
    char key_dir[64] = "";
    char key_path[80] = "";
    char path[ER_SSH_CONTROL_DIR_MAX + 16];
    struct er_ssh_argv argv;
    struct er_proc_result res;
    int rc;

    memset(&res, 0, sizeof(res));
    rc = control_dir_make(conn, err);
    if (rc != 0)
        return rc;
    if (master_is_alive(conn))
        return 0;
    if (!conn->has_config)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "ssh to %s failed: no open connection, and the "
                          "environment config is not valid: %s",
                          conn->dest, conn->config_msg);
    /* A socket left by a master that died would be in the way. */
    snprintf(path, sizeof(path), "%s/m", conn->ctl_dir);
    unlink(path);
    if (conn->cfg.is_strict_host_key_checking &&
        conn->cfg.known_hosts != NULL) {
        snprintf(path, sizeof(path), "%s/known_hosts", conn->ctl_dir);
        rc = write_private_file(path, conn->cfg.known_hosts,
                                strlen(conn->cfg.known_hosts), false, err);
        if (rc != 0)
            return rc;
    }
    if (conn->cfg.private_key_ref != NULL) {
        rc = key_write(conn, key_dir, sizeof(key_dir), key_path,
                       sizeof(key_path), err);
        if (rc != 0)
            return rc;
    }
    er_ssh_argv_build(&conn->cfg, conn->ctl_dir, ER_SSH_ARGV_SETUP,
                      key_path[0] != '\0' ? key_path : NULL, "true", &argv);
    rc = run_ssh(&argv,
                 (int64_t)conn->cfg.connect_timeout_s * 1000 + SETUP_EXTRA_MS,
                 &res, err);
    /* The master is authenticated (or not): the key file goes now. */
    key_remove(key_dir, key_path);
    if (rc == 0 && (res.exit_code != 0 || res.is_timed_out))
        rc = connect_error(conn, &res, err);
    er_proc_result_fini(&res);
    return rc;
}

/* Close the lease's master connection and remove its directory. */
static void close_master(const struct conn *conn)
{
    char path[ER_SSH_CONTROL_DIR_MAX + 16];
    struct er_ssh_argv argv;
    struct er_proc_result res;
    struct er_err e;
    struct stat st;

    snprintf(path, sizeof(path), "%s/m", conn->ctl_dir);
    if (conn->cfg.host[0] != '\0' && lstat(path, &st) == 0) {
        er_ssh_argv_build(&conn->cfg, conn->ctl_dir, ER_SSH_ARGV_EXIT, NULL,
                          NULL, &argv);
        if (run_ssh(&argv, CHECK_TIMEOUT_MS, &res, &e) == 0)
            er_proc_result_fini(&res);
    }
    control_dir_remove(conn);
}

/* Facts written at acquire win over the current config: the lease's
 * workspace is where it was made. Values that do not check are ignored. */
static void apply_meta(struct er_ssh_config *cfg, const json_t *meta)
{
    const char *s;
    const json_t *v;
    size_t n;

    s = jstr(meta, "host");
    if (s != NULL && strlen(s) < sizeof(cfg->host) && is_valid_host(s))
        snprintf(cfg->host, sizeof(cfg->host), "%s", s);
    v = json_object_get(meta, "port");
    if (json_is_integer(v) && json_integer_value(v) >= 1 &&
        json_integer_value(v) <= 65535)
        cfg->port = (int)json_integer_value(v);
    s = jstr(meta, "username");
    if (s != NULL && strlen(s) < sizeof(cfg->username) && !has_control(s) &&
        strchr(s, ' ') == NULL)
        snprintf(cfg->username, sizeof(cfg->username), "%s", s);
    s = jstr(meta, "remoteWorkspacePath");
    if (s != NULL && s[0] == '/' && !has_control(s) &&
        strlen(s) < sizeof(cfg->remote_workspace_path)) {
        snprintf(cfg->remote_workspace_path, sizeof(cfg->remote_workspace_path),
                 "%s", s);
        n = strlen(cfg->remote_workspace_path);
        while (n > 1 && cfg->remote_workspace_path[n - 1] == '/')
            cfg->remote_workspace_path[--n] = '\0';
    }
    s = jstr(meta, "workspaceIsolation");
    if (s != NULL)
        cfg->is_per_lease = strcmp(s, "per_lease") == 0;
}

/* The connection of a lease: the environment config, the lease metadata
 * (NULL at acquire) over it, the control directory from lease_id. With
 * is_lenient (release) a config that no longer validates is noted in the
 * conn instead of failing, as long as the metadata names the host. */
static int conn_init(struct conn *conn, const struct er_driver_env *env,
                     const char *lease_id, const json_t *meta, bool is_lenient,
                     struct er_err *err)
{
    struct er_err cerr;

    memset(conn, 0, sizeof(*conn));
    er_err_clear(&cerr);
    snprintf(conn->company_id, sizeof(conn->company_id), "%s",
             env->company_id != NULL ? env->company_id : "");
    if (er_ssh_config_parse(env->config, &conn->cfg, &cerr) == 0) {
        conn->has_config = true;
    } else {
        if (!is_lenient)
            return er_err_set(err, cerr.code, ER_ERRCLASS_NONE, "%s", cerr.msg);
        snprintf(conn->config_msg, sizeof(conn->config_msg), "%s", cerr.msg);
        memset(&conn->cfg, 0, sizeof(conn->cfg));
        conn->cfg.port = 22;
        conn->cfg.is_strict_host_key_checking = true;
        conn->cfg.connect_timeout_s = 10;
    }
    if (meta != NULL)
        apply_meta(&conn->cfg, meta);
    if (conn->cfg.host[0] == '\0' || conn->cfg.username[0] == '\0')
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE, "%s",
                          conn->config_msg);
    snprintf(conn->dest, sizeof(conn->dest), "%s@%s:%d", conn->cfg.username,
             conn->cfg.host, conn->cfg.port);
    if (lease_id != NULL)
        er_ssh_control_dir(lease_id, conn->ctl_dir);
    return 0;
}

/* ================================================================
 * Remote commands
 * ================================================================ */

/* How one remote script is fed and bounded. */
struct remote_io {
    const char *stdin_data; /* or NULL */
    size_t stdin_len;
    int stdin_fd;  /* >= 0: stdin from this fd (borrowed) */
    int stdout_fd; /* >= 0: stdout to this fd (borrowed), not captured */
    int64_t timeout_ms;
    size_t max_output_bytes;
    er_proc_timeout_fn *on_timeout;
    void *on_timeout_arg;
    bool is_plain; /* sh -c, not a login shell */
};

static void remote_io_init(struct remote_io *io, int64_t timeout_ms)
{
    memset(io, 0, sizeof(*io));
    io->stdin_fd = -1;
    io->stdout_fd = -1;
    io->timeout_ms = timeout_ms;
}

/* Run script on the lease's host through the master. A non-zero remote
 * exit is in res, not an error. */
static int run_remote(const struct conn *conn, const char *script,
                      const struct remote_io *io, struct er_proc_result *res,
                      struct er_err *err)
{
    struct er_ssh_argv argv;
    struct er_proc_opts opts;
    struct sb cmd;
    int rc;

    memset(res, 0, sizeof(*res));
    sb_init(&cmd);
    rc = ensure_master(conn, err);
    if (rc != 0)
        goto out;
    login_sh(script, io->is_plain, &cmd);
    rc = sb_check(&cmd, err);
    if (rc != 0)
        goto out;
    er_ssh_argv_build(&conn->cfg, conn->ctl_dir, ER_SSH_ARGV_RUN, NULL,
                      sb_text(&cmd), &argv);
    er_proc_opts_init(&opts);
    opts.argv = argv.argv;
    opts.stdin_data = io->stdin_data;
    opts.stdin_len = io->stdin_len;
    opts.stdin_fd = io->stdin_fd;
    opts.stdout_fd = io->stdout_fd;
    opts.timeout_ms = io->timeout_ms;
    opts.max_output_bytes = io->max_output_bytes;
    opts.on_timeout = io->on_timeout;
    opts.on_timeout_arg = io->on_timeout_arg;
    rc = er_proc_run(&opts, res, err);
out:
    er_buf_fini(&cmd.buf);
    return rc;
}

/* `<what> on <dest> failed: <first stderr line>` (or the exit code). */
static int remote_error(const struct conn *conn, const char *what,
                        const struct er_proc_result *res, struct er_err *err)
{
    char line[200];

    if (res->is_timed_out)
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "%s on %s timed out", what, conn->dest);
    cause_line(res->err_text != NULL ? res->err_text : "", line, sizeof(line));
    if (line[0] != '\0')
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "%s on %s failed: %s", what, conn->dest, line);
    /* A mux client whose master died says nothing and exits 255. */
    if (res->exit_code == 255)
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "%s on %s failed: the SSH connection was lost", what,
                          conn->dest);
    return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                      "%s on %s failed: exit code %d", what, conn->dest,
                      res->exit_code);
}

/* The remote directory of a lease: remoteWorkspacePath, or with per_lease
 * isolation remoteWorkspacePath/<lease id>. */
static int lease_dir(const struct er_ssh_config *cfg, const char *lease_id,
                     char *out, size_t out_len, struct er_err *err)
{
    const char *base = cfg->remote_workspace_path;
    int n;

    out[0] = '\0';
    if (!cfg->is_per_lease) {
        snprintf(out, out_len, "%s", base);
        return 0;
    }
    if (!is_valid_lease_id(lease_id))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "per_lease isolation needs a lease id of letters, "
                          "digits, '-' and '_'");
    n = snprintf(out, out_len, "%s/%s", strcmp(base, "/") == 0 ? "" : base,
                 lease_id);
    if (n < 0 || (size_t)n >= out_len)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the per-lease remote workspace path is too long");
    return 0;
}

/* ================================================================
 * acquire (domain.md 4.2)
 * ================================================================ */

/* The last non-blank line of text, trimmed, into out; false if none. */
static bool last_line(const char *text, char *out, size_t out_len)
{
    const char *end = text + strlen(text);

    while (end > text) {
        const char *start = end;
        size_t n;

        while (start > text && start[-1] != '\n')
            start--;
        n = (size_t)(end - start);
        while (n > 0 && is_space(start[n - 1]))
            n--;
        if (n > 0) {
            if (n >= out_len)
                return false;
            memcpy(out, start, n);
            out[n] = '\0';
            return copy_trimmed(out, out, out_len) && out[0] != '\0';
        }
        end = start > text ? start - 1 : text;
    }
    return false;
}

/* ================================================================
 * Marked remote directories: envrun empties or removes a remote directory
 * only when it created it and marked it (MARKER_FILE naming the owner),
 * and never "/" or the SSH user's home directory (STYLE.md 7a)
 * ================================================================ */

/* The owner a lease's remote directory is marked with: "lease:<id>" with
 * per_lease isolation (the directory is the lease's own), else
 * "environment:<id>" (every lease of the environment shares it). */
static int dir_owner(const struct er_ssh_config *cfg, const char *env_id,
                     const char *lease_id, char out[OWNER_MAX],
                     struct er_err *err)
{
    if (cfg->is_per_lease) {
        if (!is_valid_lease_id(lease_id))
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              "per_lease isolation needs a lease id of "
                              "letters, digits, '-' and '_'");
        snprintf(out, OWNER_MAX, "lease:%s", lease_id);
        return 0;
    }
    if (env_id == NULL || env_id[0] == '\0' || strlen(env_id) > LEASE_ID_MAX ||
        has_control(env_id))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the environment has no id to mark its remote "
                          "workspace with");
    snprintf(out, OWNER_MAX, "environment:%s", env_id);
    return 0;
}

/* Whether path has a ".." component. */
static bool has_dotdot(const char *path)
{
    const char *c = path;

    while (c != NULL) {
        while (*c == '/')
            c++;
        if (c[0] == '.' && c[1] == '.' && (c[2] == '/' || c[2] == '\0'))
            return true;
        c = strchr(c, '/');
    }
    return false;
}

/* The shell function `eg DIR OWNER` of every script that may empty,
 * remove or mark a remote directory. It sets v to: missing (no such
 * directory), root, home (the SSH user's home, however spelled), ok (a
 * plain-file marker whose first line is OWNER), foreign (a marker naming
 * someone else, or not a plain file), unreadable, empty (no marker, no
 * entries) or unmarked (entries but no marker). */
static void sb_guard_fn(struct sb *sb)
{
    sb_add(sb,
           "eg() { v=; r=$(cd \"$1\" 2>/dev/null && pwd -P) || "
           "{ v=missing; return 0; }; "
           "if [ \"$r\" = / ]; then v=root; return 0; fi; "
           "h=$(cd \"$HOME\" 2>/dev/null && pwd -P) || h=; "
           "if [ -n \"$h\" ] && [ \"$r\" = \"$h\" ]; then v=home; return 0; "
           "fi; m=\"$1/" MARKER_FILE "\"; "
           "if [ -f \"$m\" ] && [ ! -L \"$m\" ]; then "
           "if [ \"$(head -c 256 \"$m\" | head -n 1)\" = \"$2\" ]; then "
           "v=ok; else v=foreign; fi; return 0; fi; "
           "if [ -e \"$m\" ] || [ -L \"$m\" ]; then v=foreign; return 0; fi; "
           "if [ ! -r \"$1\" ] || [ ! -x \"$1\" ]; then v=unreadable; "
           "return 0; fi; "
           "if [ -z \"$(ls -A \"$1\" | head -n 1)\" ]; then v=empty; "
           "else v=unmarked; fi; }; ");
}

/* Set d and o to dir and owner, quoted. */
static void sb_guard_vars(struct sb *sb, const char *dir, const char *owner)
{
    sb_add(sb, "d=");
    sb_q(sb, dir);
    sb_add(sb, "; o=");
    sb_q(sb, owner);
    sb_add(sb, "; ");
}

/* Mark "$d" for "$o" when eg found it empty: noclobber, so a file that
 * appears meanwhile is never overwritten (nor a symlink followed). */
#define GUARD_MARK                                                  \
    "if [ \"$v\" = empty ]; then (set -C; printf '%s\\n' \"$o\" > " \
    "\"$d/" MARKER_FILE "\") 2>/dev/null && v=ok; fi; "

/* In a script that has cd'ed into the directory of owner: stop (exit 97)
 * before deleting anything unless the directory carries owner's mark. */
static void sb_require_mark(struct sb *sb, const char *owner)
{
    sb_guard_fn(sb);
    sb_add(sb, "eg \"$PWD\" ");
    sb_q(sb, owner);
    sb_add(sb, "; if [ \"$v\" != ok ]; then echo \"envrun: refusing to "
               "delete files in $PWD ($v): envrun only empties a directory "
               "it created and marked (" MARKER_FILE ")\" >&2; exit 97; fi; ");
}

/* The script of op on dir for owner (er_ssh_dir_script). */
static void dir_script(struct sb *sb, enum er_ssh_dir_op op, const char *dir,
                       const char *owner)
{
    sb_guard_fn(sb);
    sb_guard_vars(sb, dir, owner);
    switch (op) {
    case ER_SSH_DIR_ACQUIRE:
        sb_add(sb, "mkdir -p -- \"$d\" && cd \"$d\" && "
                   "{ eg \"$d\" \"$o\"; " GUARD_MARK "pwd; }");
        return;
    case ER_SSH_DIR_CLAIM:
        sb_add(sb, "eg \"$d\" \"$o\"; if [ \"$v\" = missing ]; then "
                   "mkdir -p -- \"$d\" 2>/dev/null; eg \"$d\" \"$o\"; "
                   "fi; " GUARD_MARK "echo \"envrun-guard:$v\"");
        return;
    case ER_SSH_DIR_REMOVE:
        sb_add(sb, "eg \"$d\" \"$o\"; case $v in missing) exit 0;; "
                   "ok) rm -rf -- \"$d\";; "
                   "*) echo \"envrun-guard:$v\"; exit 97;; esac");
        return;
    }
    ER_ASSERT(!"unknown er_ssh_dir_op");
}

int er_ssh_dir_script(enum er_ssh_dir_op op, const char *dir, const char *owner,
                      struct er_buf *script)
{
    struct sb sb;

    sb.buf = *script; /* borrowed for the call, handed back below */
    sb.rc = 0;
    dir_script(&sb, op, dir, owner);
    *script = sb.buf;
    return sb.rc;
}

/* The words for a verdict of eg. */
static const char *guard_reason(const char *verdict)
{
    static const struct {
        const char *verdict;
        const char *reason;
    } reasons[] = {
        { "missing", "it does not exist and cannot be created" },
        { "root", "it is the root directory" },
        { "home", "it is the SSH user's home directory" },
        { "foreign", "its " MARKER_FILE " marker names another lease or "
                     "environment" },
        { "unreadable", "it cannot be listed" },
        { "unmarked", "it is not empty and has no " MARKER_FILE " marker" },
    };
    size_t i;

    for (i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        if (strcmp(verdict, reasons[i].verdict) == 0)
            return reasons[i].reason;
    }
    return "its state is unknown";
}

/* The verdict eg printed as the last line "envrun-guard:<v>" of out, into
 * verdict (verdict_len bytes); false when there is none. */
static bool guard_verdict(const char *out, char *verdict, size_t verdict_len)
{
    char line[64];

    if (out == NULL || !last_line(out, line, sizeof(line)) ||
        strncmp(line, "envrun-guard:", 13) != 0)
        return false;
    snprintf(verdict, verdict_len, "%.32s", line + 13);
    return true;
}

/* Before a sync may empty dir (the lease's remote workspace): create it if
 * missing and mark it for owner if it is empty; then it must carry owner's
 * mark. Anything else is refused before a file is touched. */
static int claim_remote_dir(const struct conn *conn, const char *dir,
                            const char *owner, struct er_err *err)
{
    struct er_proc_result res;
    struct remote_io io;
    char verdict[48];
    struct sb sb;
    int rc;

    memset(&res, 0, sizeof(res));
    sb_init(&sb);
    dir_script(&sb, ER_SSH_DIR_CLAIM, dir, owner);
    rc = sb_check(&sb, err);
    if (rc != 0)
        goto out;
    remote_io_init(&io, ACQUIRE_TIMEOUT_MS);
    rc = run_remote(conn, sb_text(&sb), &io, &res, err);
    if (rc != 0)
        goto out;
    if (res.exit_code != 0 || res.is_timed_out ||
        !guard_verdict(res.out, verdict, sizeof(verdict))) {
        rc = remote_error(conn, "checking the remote workspace", &res, err);
        goto out;
    }
    if (strcmp(verdict, "ok") != 0)
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "refusing to sync into %s: %s (envrun empties only "
                        "remote directories it created and marked)",
                        dir, guard_reason(verdict));
out:
    er_proc_result_fini(&res);
    er_buf_fini(&sb.buf);
    return rc;
}

static int ssh_acquire(const struct er_driver_env *env,
                       const struct er_driver_lease_ctx *ctx,
                       struct er_driver_acquired *out, struct er_err *err)
{
    const char *mode = ctx->execution_workspace_mode;
    char dir[ER_SSH_PATH_MAX + LEASE_ID_MAX + 2];
    char cwd[ER_SSH_PATH_MAX + LEASE_ID_MAX + 2];
    char what[ER_SSH_PATH_MAX + LEASE_ID_MAX + 64];
    char owner[OWNER_MAX];
    struct er_proc_result res;
    struct remote_io io;
    struct conn conn;
    struct sb sb;
    struct er_buf id;
    bool has_conn = false;
    int rc;

    memset(&res, 0, sizeof(res));
    sb_init(&sb);
    er_buf_init(&id, sizeof(dir) + sizeof(conn.dest) + 16);
    out->lease_policy = "ephemeral";
    out->provider = "ssh";
    out->provider_lease_id = NULL;
    out->metadata = NULL;
    out->expires_at_ms = -1;
    rc = conn_init(&conn, env, NULL, NULL, false, err);
    if (rc != 0)
        goto out;
    /* The control directory is named after the lease, so later commands
     * (which only see the lease) find the same connection. */
    if (!is_valid_lease_id(ctx->lease_id)) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "the lease id is missing or not made of letters, "
                        "digits, '-' and '_'");
        goto out;
    }
    er_ssh_control_dir(ctx->lease_id, conn.ctl_dir);
    has_conn = true;
    /* per_lease: <path>/<lease id>; a replayed acquire has the same lease
     * id and adopts the directory (mkdir -p). */
    rc = lease_dir(&conn.cfg, ctx->lease_id, dir, sizeof(dir), err);
    if (rc == 0)
        rc = dir_owner(&conn.cfg, env->id, ctx->lease_id, owner, err);
    if (rc != 0)
        goto out;
    /* What this creates, or finds empty, it marks as the lease's (per
     * lease) or the environment's (shared): only a marked directory is
     * ever emptied or removed. A non-empty unmarked one is left as it is;
     * realize refuses to sync into it. */
    dir_script(&sb, ER_SSH_DIR_ACQUIRE, dir, owner);
    rc = sb_check(&sb, err);
    if (rc != 0)
        goto out;
    remote_io_init(&io, ACQUIRE_TIMEOUT_MS);
    rc = run_remote(&conn, sb_text(&sb), &io, &res, err);
    if (rc != 0)
        goto out;
    snprintf(what, sizeof(what), "creating the remote workspace %s", dir);
    if (res.exit_code != 0 || res.is_timed_out) {
        rc = remote_error(&conn, what, &res, err);
        goto out;
    }
    /* The last line: a login profile may print before pwd does. */
    if (!last_line(res.out, cwd, sizeof(cwd)) || cwd[0] != '/') {
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "%s on %s failed: pwd printed no absolute path", what,
                        conn.dest);
        goto out;
    }
    out->metadata = json_pack(
        "{s:s, s:o, s:s, s:i, s:s, s:s, s:s, s:s}", "driver", env->driver,
        "executionWorkspaceMode",
        mode != NULL ? json_string(mode) : json_null(), "host", conn.cfg.host,
        "port", conn.cfg.port, "username", conn.cfg.username,
        "remoteWorkspacePath", conn.cfg.remote_workspace_path, "remoteCwd", cwd,
        "workspaceIsolation", conn.cfg.is_per_lease ? "per_lease" : "shared");
    if (out->metadata == NULL ||
        er_buf_printf(&id, "ssh://%s@%s:%d%s", conn.cfg.username, conn.cfg.host,
                      conn.cfg.port, cwd) != 0) {
        rc = oom(err);
        goto out;
    }
    out->provider_lease_id = (char *)er_buf_take(&id, NULL);
    if (out->provider_lease_id == NULL)
        rc = oom(err);
out:
    if (rc != 0) {
        er_driver_acquired_fini(out);
        /* No lease row will name this connection: close it now. */
        if (has_conn)
            close_master(&conn);
    }
    er_proc_result_fini(&res);
    er_buf_fini(&sb.buf);
    er_buf_fini(&id);
    return driver_rc(rc, err);
}

/* ================================================================
 * realize: workspace sync (domain.md 4.2 "Workspace sync")
 * ================================================================ */

enum sync_kind {
    SYNC_NONE, /* no host workspace */
    SYNC_GIT,
    SYNC_TAR,
};

/* A private local scratch directory for one sync. */
struct scratch {
    char dir[64];
};

static void scratch_path(const struct scratch *s, const char *name, char *out,
                         size_t out_len)
{
    snprintf(out, out_len, "%s/%s", s->dir, name);
}

static void scratch_remove(struct scratch *s)
{
    static const char *const names[] = { "changed", "deleted", "local.err" };
    char path[96];
    size_t i;

    if (s->dir[0] == '\0')
        return;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        scratch_path(s, names[i], path, sizeof(path));
        unlink(path);
    }
    rmdir(s->dir);
    s->dir[0] = '\0';
}

/* The environment of every local git (STYLE.md 7a): no system or global
 * config (and no HOME to find one in), no system attributes, no prompts,
 * no optional index writes. */
static const char *const git_env[] = {
    "PATH=" ER_PROC_PATH,          "LANG=C.UTF-8",
    "HOME=/nonexistent",           "GIT_CONFIG_NOSYSTEM=1",
    "GIT_CONFIG_SYSTEM=/dev/null", "GIT_CONFIG_GLOBAL=/dev/null",
    "GIT_ATTR_NOSYSTEM=1",         "GIT_TERMINAL_PROMPT=0",
    "GIT_OPTIONAL_LOCKS=0",        "GIT_PAGER=cat",
    "GIT_PROTOCOL_FROM_USER=0",    NULL,
};

/* Options before every local git subcommand. The workspace (its .git/config,
 * .gitattributes, hooks) is the tenant's: nothing it names may run here.
 * Command-line config wins over the repository's. What our commands could
 * run: the fsmonitor hook (index reads, ls-files --others), hooks
 * (post-index-change on an index write), a pager, an external diff or
 * textconv (diff), clean filters (diff hashes stat-dirty and racy files;
 * disabled per driver, see git_guard_init), submodule recursion. The
 * rest (ssh, proxies, askpass, credential helpers, editors, gpg) no
 * command of ours reaches; they are switched off all the same. */
static const char *const git_hardening[] = {
    "--no-pager", "--no-optional-locks",
    "-c",         "core.fsmonitor=false",
    "-c",         "core.hooksPath=/dev/null",
    "-c",         "core.pager=cat",
    "-c",         "core.attributesFile=/dev/null",
    "-c",         "diff.external=",
    "-c",         "submodule.recurse=false",
    "-c",         "safe.bareRepository=explicit",
    "-c",         "protocol.allow=never",
    "-c",         "core.sshCommand=false",
    "-c",         "core.askPass=",
    "-c",         "credential.helper=",
    "-c",         "core.editor=false",
    "-c",         "sequence.editor=false",
    "-c",         "gpg.program=false",
};

#define GIT_HARDENING_CNT (sizeof(git_hardening) / sizeof(git_hardening[0]))

/* The filter drivers (clean/smudge/process) a workspace's git config
 * defines, each disabled with four -c options. */
struct git_guard {
    char *opts[GIT_FILTER_MAX * 4]; /* "filter.<name>.clean=" ..., owned */
    size_t opt_cnt;
};

static void git_guard_fini(struct git_guard *g)
{
    size_t i;

    for (i = 0; i < g->opt_cnt; i++)
        er_free(g->opts[i]);
    g->opt_cnt = 0;
}

/* git <hardening> [-c <filter opts of g>] -C local <args...>: a new
 * NULL-terminated array (er_free; the strings are borrowed from g, local
 * and args). g may be NULL. NULL when out of memory. */
static const char **git_argv_new(const struct git_guard *g, const char *local,
                                 const char *const *args)
{
    size_t opt_cnt = g != NULL ? g->opt_cnt : 0;
    size_t arg_cnt = 0;
    const char **argv;
    size_t n = 0;
    size_t i;

    while (args[arg_cnt] != NULL)
        arg_cnt++;
    argv = er_calloc(1 + GIT_HARDENING_CNT + opt_cnt * 2 + 2 + arg_cnt + 1,
                     sizeof(*argv));
    if (argv == NULL)
        return NULL;
    argv[n++] = "git";
    for (i = 0; i < GIT_HARDENING_CNT; i++)
        argv[n++] = git_hardening[i];
    for (i = 0; i < opt_cnt; i++) {
        argv[n++] = "-c";
        argv[n++] = g->opts[i];
    }
    argv[n++] = "-C";
    argv[n++] = local;
    for (i = 0; i < arg_cnt; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return argv;
}

/* Run a local program with envp (NULL: proc's minimal environment); its
 * stdout goes to out_fd (>= 0) or is captured (up to LIST_MAX). */
static int local_run(const char *const *argv, const char *const *envp,
                     int out_fd, struct er_proc_result *res, struct er_err *err)
{
    struct er_proc_opts opts;

    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.envp = envp;
    opts.stdout_fd = out_fd;
    opts.timeout_ms = LOCAL_TIMEOUT_MS;
    opts.max_output_bytes = LIST_MAX;
    return er_proc_run(&opts, res, err);
}

/* Run hardened git (git_argv_new) in local. */
static int git_run(const struct git_guard *g, const char *local,
                   const char *const *args, struct er_proc_result *res,
                   struct er_err *err)
{
    const char **argv = git_argv_new(g, local, args);
    int rc;

    if (argv == NULL) {
        memset(res, 0, sizeof(*res));
        return oom(err);
    }
    rc = local_run(argv, git_env, -1, res, err);
    er_free(argv);
    return rc;
}

/* Add the four options that disable filter driver name (len bytes). */
static int git_guard_add(struct git_guard *g, const char *name, size_t len,
                         struct er_err *err)
{
    static const char *const vars[] = { "clean=", "smudge=", "process=",
                                        "required=false" };
    size_t i;

    for (i = 0; i < g->opt_cnt; i += 4) {
        /* "filter." + name + "." starts each option of a driver. */
        if (strncmp(g->opts[i] + 7, name, len) == 0 &&
            g->opts[i][7 + len] == '.' &&
            strcmp(g->opts[i] + 7 + len + 1, vars[0]) == 0)
            return 0;
    }
    if (g->opt_cnt + 4 > sizeof(g->opts) / sizeof(g->opts[0]))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the workspace's git config defines more than %d "
                          "filter drivers; envrun disables each one and "
                          "refuses more",
                          GIT_FILTER_MAX);
    for (i = 0; i < 4; i++) {
        struct er_buf buf;

        er_buf_init(&buf, len + 32);
        if (er_buf_printf(&buf, "filter.%.*s.%s", (int)len, name, vars[i]) !=
                0 ||
            er_buf_append(&buf, "", 1) != 0) {
            er_buf_fini(&buf);
            return oom(err);
        }
        g->opts[g->opt_cnt++] = (char *)er_buf_take(&buf, NULL);
        if (g->opts[g->opt_cnt - 1] == NULL) {
            g->opt_cnt--;
            return oom(err);
        }
    }
    return 0;
}

/* Read which filter drivers local's git config (.git/config, its includes,
 * config.worktree; system and global are off) defines, so every git run
 * on the workspace disables them: `git diff` hashes stat-dirty and racily
 * clean files through their clean filter. Reading config runs nothing. */
static int git_guard_init(struct git_guard *g, const char *local,
                          struct er_err *err)
{
    const char *const args[] = { "config",       "-z",         "--name-only",
                                 "--get-regexp", "^filter\\.", NULL };
    struct er_proc_result res;
    char line[200];
    size_t i;
    int rc;

    g->opt_cnt = 0;
    rc = git_run(NULL, local, args, &res, err);
    if (rc != 0)
        return rc;
    /* 1: no such key. */
    if (res.exit_code == 1 && !res.is_timed_out)
        goto out;
    if (res.exit_code != 0 || res.is_timed_out || res.is_out_truncated) {
        first_line(res.err_text, line, sizeof(line));
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "reading the git config of %s failed: %s", local,
                        line[0] != '\0' ? line : "no message");
        goto out;
    }
    for (i = 0; rc == 0 && i < res.out_len; i += strlen(res.out + i) + 1) {
        const char *key = res.out + i;
        const char *dot = strrchr(key, '.');

        /* filter.<name>.<var>; the name may hold dots, never a NUL. */
        if (strncmp(key, "filter.", 7) != 0 || dot == NULL || dot <= key + 7)
            continue;
        if (memchr(key + 7, '=', (size_t)(dot - key - 7)) != NULL) {
            /* `-c name=value` cannot spell a name with '=' in it. */
            rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                            "the workspace's git config names a filter "
                            "driver with '=' in its name, which envrun "
                            "cannot disable");
            break;
        }
        rc = git_guard_add(g, key + 7, (size_t)(dot - key - 7), err);
    }
out:
    er_proc_result_fini(&res);
    if (rc != 0)
        git_guard_fini(g);
    return rc;
}

/* Is local the top of a git work tree with a commit at HEAD? Then branch
 * gets the checked-out branch, or "" for a detached HEAD. A missing git
 * or any failure means "no": the tree goes by tar. None of these commands
 * reads file contents, so no filter can run yet. */
static bool is_git_root(const char *local, char *branch, size_t branch_len)
{
    const char *const top_args[] = { "rev-parse", "--show-toplevel", NULL };
    const char *const head_args[] = { "rev-parse", "-q", "--verify",
                                      "HEAD^{commit}", NULL };
    const char *const branch_args[] = { "symbolic-ref", "-q", "--short", "HEAD",
                                        NULL };
    char top[PATH_MAX];
    struct er_proc_result res;
    struct stat top_st;
    struct stat local_st;
    struct er_err e;
    bool is_root = false;

    branch[0] = '\0';
    if (stat(local, &local_st) != 0 ||
        git_run(NULL, local, top_args, &res, &e) != 0)
        return false;
    /* The same directory, however either path is spelled. */
    is_root = res.exit_code == 0 && copy_trimmed(res.out, top, sizeof(top)) &&
              stat(top, &top_st) == 0 && top_st.st_dev == local_st.st_dev &&
              top_st.st_ino == local_st.st_ino;
    er_proc_result_fini(&res);
    if (!is_root || git_run(NULL, local, head_args, &res, &e) != 0)
        return false;
    is_root = res.exit_code == 0;
    er_proc_result_fini(&res);
    if (!is_root || git_run(NULL, local, branch_args, &res, &e) != 0)
        return is_root;
    if (res.exit_code != 0 || !copy_trimmed(res.out, branch, branch_len))
        branch[0] = '\0';
    er_proc_result_fini(&res);
    return true;
}

/* The first line of the local producer's stderr file. */
static void file_first_line(const char *path, char *out, size_t out_len)
{
    char text[2048];
    ssize_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    out[0] = '\0';
    if (fd < 0)
        return;
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    text[n > 0 ? n : 0] = '\0';
    first_line(text, out, out_len);
}

/* Pipe a local producer (git bundle, tar) into script on the remote side,
 * over the master connection. envp is the producer's environment (NULL:
 * proc's minimal one). ok_exit is the highest exit code of the producer
 * that still means success (GNU tar: 1, "file changed as we read it").
 * what names the step in messages. */
static int stream_to_remote(const struct conn *conn, const char *const *argv,
                            const char *const *envp, int ok_exit,
                            const char *script, const struct scratch *s,
                            const char *what, struct er_err *err)
{
    struct er_proc_result local;
    struct er_proc_result remote;
    struct er_proc_opts opts;
    struct remote_io io;
    struct er_err werr;
    char err_path[96];
    char line[200];
    char ebuf[128];
    int pfd[2] = { -1, -1 };
    int err_fd = -1;
    pid_t pid = -1;
    bool is_local_ok;
    int rc;

    memset(&local, 0, sizeof(local));
    memset(&remote, 0, sizeof(remote));
    scratch_path(s, "local.err", err_path, sizeof(err_path));
    err_fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (err_fd < 0 || pipe(pfd) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "%s: %s", what,
                        er_strerror(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    fcntl(pfd[0], F_SETFD, FD_CLOEXEC);
    fcntl(pfd[1], F_SETFD, FD_CLOEXEC);
    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.envp = envp;
    opts.stdout_fd = pfd[1];
    opts.stderr_fd = err_fd;
    rc = er_proc_spawn(&opts, &pid, err);
    close(pfd[1]);
    pfd[1] = -1;
    if (rc != 0)
        goto out;
    remote_io_init(&io, SYNC_TIMEOUT_MS);
    io.stdin_fd = pfd[0];
    rc = run_remote(conn, script, &io, &remote, err);
    /* Closing the read end stops a producer the remote side gave up on. */
    close(pfd[0]);
    pfd[0] = -1;
    er_err_clear(&werr);
    if (er_proc_wait(pid, LOCAL_TIMEOUT_MS, &local, &werr) != 0 && rc == 0)
        rc = er_err_set(err, werr.code, werr.cls, "%s: %s", what, werr.msg);
    pid = -1;
    if (rc != 0)
        goto out;
    is_local_ok = local.exit_code >= 0 && local.exit_code <= ok_exit;
    file_first_line(err_path, line, sizeof(line));
    if (remote.exit_code != 0 || remote.is_timed_out) {
        /* The remote side is named first: a full disk or a dropped
         * connection there also breaks the producer's pipe. A producer
         * that failed on its own is added, as it may be the cause. */
        rc = remote_error(conn, what, &remote, err);
        if (!is_local_ok && local.signal != SIGPIPE && line[0] != '\0') {
            char msg[ER_ERR_MSG_MAX];

            snprintf(msg, sizeof(msg), "%s", err->msg);
            er_err_set(err, rc, ER_ERRCLASS_NONE, "%s (%s on this host: %s)",
                       msg, argv[0], line);
        }
        goto out;
    }
    if (!is_local_ok)
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "%s failed on this host: %s", argv[0],
                        local.signal == SIGPIPE ? "the stream was cut off"
                        : line[0] != '\0'       ? line
                                                : "no message");
out:
    if (pfd[0] >= 0)
        close(pfd[0]);
    if (pfd[1] >= 0)
        close(pfd[1]);
    if (err_fd >= 0)
        close(err_fd);
    er_proc_result_fini(&remote);
    return rc;
}

/* Run script remotely with a local file as its stdin. */
static int file_to_remote(const struct conn *conn, const char *path,
                          const char *script, const char *what,
                          struct er_err *err)
{
    struct er_proc_result res;
    struct remote_io io;
    char ebuf[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int rc;

    if (fd < 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "%s: %s: %s", what,
                          path, er_strerror(errno, ebuf, sizeof(ebuf)));
    remote_io_init(&io, SYNC_TIMEOUT_MS);
    io.stdin_fd = fd;
    rc = run_remote(conn, script, &io, &res, err);
    close(fd);
    if (rc == 0 && (res.exit_code != 0 || res.is_timed_out))
        rc = remote_error(conn, what, &res, err);
    er_proc_result_fini(&res);
    return rc;
}

/* A deleted path git reported that may be removed remotely: relative, no
 * "..", not in .paperclip-runtime, not the workspace's marker. */
static bool is_safe_rel_path(const char *p)
{
    const char *c;

    if (p[0] == '\0' || p[0] == '/' ||
        strncmp(p, ".paperclip-runtime", 18) == 0 ||
        strcmp(p, MARKER_FILE) == 0)
        return false;
    for (c = p; c != NULL; c = strchr(c, '/')) {
        if (*c == '/')
            c++;
        if (strncmp(c, "..", 2) == 0 && (c[2] == '/' || c[2] == '\0'))
            return false;
    }
    return true;
}

/* Run a hardened git command (args, after git's own options) listing
 * NUL-separated paths and append the ones that may be synced
 * (is_safe_rel_path: never .paperclip-runtime) to the file path; *cnt
 * counts them. */
static int list_paths(const struct git_guard *g, const char *const *args,
                      const char *local, const char *path, size_t *cnt,
                      struct er_err *err)
{
    struct er_proc_result res;
    char line[200];
    char ebuf[128];
    size_t i;
    int fd = -1;
    int rc;

    rc = git_run(g, local, args, &res, err);
    if (rc != 0)
        return rc;
    if (res.exit_code != 0 || res.is_out_truncated) {
        first_line(res.err_text, line, sizeof(line));
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "listing the files of %s failed: %s", local,
                        res.is_out_truncated ? "too many files"
                        : line[0] != '\0'    ? line
                                             : "no message");
        goto out;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot create %s: %s",
                        path, er_strerror(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    for (i = 0; i < res.out_len; i += strlen(res.out + i) + 1) {
        const char *p = res.out + i;
        size_t n = strlen(p) + 1; /* with its NUL */

        if (!is_safe_rel_path(p))
            continue;
        if (write(fd, p, n) != (ssize_t)n) {
            rc =
                er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot write %s: %s",
                           path, er_strerror(errno, ebuf, sizeof(ebuf)));
            goto out;
        }
        (*cnt)++;
    }
out:
    if (fd >= 0)
        close(fd);
    er_proc_result_fini(&res);
    return rc;
}

/* The git part of realize: HEAD as a bundle, then the working tree's
 * changes on top (domain.md 4.2). Every local git runs hardened
 * (git_env, git_hardening, g's filters off); remote_cwd carries owner's
 * mark, checked again by each script before it deletes anything. */
static int sync_git(const struct conn *conn, const struct git_guard *g,
                    const char *local, const char *remote_cwd,
                    const char *owner, const char *branch,
                    const struct scratch *s, struct er_err *err)
{
    const char *const bundle_args[] = { "bundle", "create", "-q",
                                        "-",      "HEAD",   NULL };
    /* --no-ext-diff, --no-textconv: no driver of .gitattributes runs;
     * --ignore-submodules: no git runs inside a submodule's own config. */
    const char *const changed_args[] = { "diff",
                                         "--name-only",
                                         "-z",
                                         "--no-renames",
                                         "--no-color",
                                         "--no-ext-diff",
                                         "--no-textconv",
                                         "--ignore-submodules=all",
                                         "--diff-filter=d",
                                         "HEAD",
                                         "--",
                                         NULL };
    const char *const untracked_args[] = { "ls-files", "-z", "--others",
                                           "--exclude-standard", NULL };
    const char *const deleted_args[] = { "diff",
                                         "--name-only",
                                         "-z",
                                         "--no-renames",
                                         "--no-color",
                                         "--no-ext-diff",
                                         "--no-textconv",
                                         "--ignore-submodules=all",
                                         "--diff-filter=D",
                                         "HEAD",
                                         "--",
                                         NULL };
    char changed_path[96];
    char deleted_path[96];
    /* --verbatim-files-from: a listed name that starts with '-' is a file,
     * never an option (--null implies it in GNU tar 1.34; said anyway). */
    const char *tar_argv[] = { "tar",
                               "-C",
                               local,
                               "--null",
                               "--verbatim-files-from",
                               "--no-unquote",
                               "--no-recursion",
                               "--ignore-failed-read",
                               "--exclude=.paperclip-runtime",
                               "-T",
                               changed_path,
                               "-cf",
                               "-",
                               NULL };
    const char **bundle_argv = NULL;
    size_t changed_cnt = 0;
    size_t deleted_cnt = 0;
    struct sb sb;
    int rc;

    sb_init(&sb);
    bundle_argv = git_argv_new(g, local, bundle_args);
    if (bundle_argv == NULL) {
        rc = oom(err);
        goto out;
    }
    /* 1. HEAD, as a bundle streamed into .paperclip-runtime, checked out
     * on the same branch (or detached), the rest cleaned away; the mark
     * survives (and is written again: a tracked file of that name must
     * not replace it). */
    sb_add(&sb, "set -e; cd ");
    sb_q(&sb, remote_cwd);
    sb_add(&sb, "; ");
    sb_require_mark(&sb, owner);
    sb_add(&sb, "mkdir -p .paperclip-runtime; "
                "b=.paperclip-runtime/import-$$.bundle; "
                "trap 'rm -f \"$b\"' EXIT; cat > \"$b\"; "
                "[ -e .git ] || git init -q .; "
                "git fetch -q --no-tags \"$b\" HEAD; ");
    if (branch[0] != '\0') {
        sb_add(&sb, "git checkout -q -f -B ");
        sb_q(&sb, branch);
        sb_add(&sb, " FETCH_HEAD; ");
    } else {
        sb_add(&sb, "git checkout -q -f --detach FETCH_HEAD; ");
    }
    sb_add(&sb, "git reset -q --hard FETCH_HEAD; "
                "git clean -q -fdx -e .paperclip-runtime -e /" MARKER_FILE "; "
                "rm -f " MARKER_FILE "; printf '%s\\n' ");
    sb_q(&sb, owner);
    sb_add(&sb, " > " MARKER_FILE "; "
                "x=$(git rev-parse --git-path info/exclude); "
                "mkdir -p \"$(dirname \"$x\")\"; "
                "grep -qxF /.paperclip-runtime/ \"$x\" 2>/dev/null || "
                "echo /.paperclip-runtime/ >> \"$x\"; "
                "grep -qxF /" MARKER_FILE " \"$x\" 2>/dev/null || "
                "echo /" MARKER_FILE " >> \"$x\"");
    rc = sb_check(&sb, err);
    if (rc == 0)
        rc = stream_to_remote(conn, bundle_argv, git_env, 0, sb_text(&sb), s,
                              "importing the git bundle", err);
    if (rc != 0)
        goto out;

    /* 2. Uncommitted and untracked (not ignored) files, by tar. */
    scratch_path(s, "changed", changed_path, sizeof(changed_path));
    rc = list_paths(g, changed_args, local, changed_path, &changed_cnt, err);
    if (rc == 0)
        rc = list_paths(g, untracked_args, local, changed_path, &changed_cnt,
                        err);
    if (rc != 0)
        goto out;
    if (changed_cnt > 0) {
        er_buf_reset(&sb.buf);
        sb_add(&sb, "set -e; cd ");
        sb_q(&sb, remote_cwd);
        sb_add(&sb, "; ");
        sb_require_mark(&sb, owner);
        sb_add(&sb, TAR_EXTRACT);
        rc = sb_check(&sb, err);
        if (rc == 0)
            rc = stream_to_remote(conn, tar_argv, NULL, 1, sb_text(&sb), s,
                                  "copying uncommitted files", err);
        if (rc != 0)
            goto out;
    }

    /* 3. Files deleted locally are deleted remotely. */
    scratch_path(s, "deleted", deleted_path, sizeof(deleted_path));
    rc = list_paths(g, deleted_args, local, deleted_path, &deleted_cnt, err);
    if (rc != 0 || deleted_cnt == 0)
        goto out;
    er_buf_reset(&sb.buf);
    sb_add(&sb, "set -e; cd ");
    sb_q(&sb, remote_cwd);
    sb_add(&sb, "; ");
    sb_require_mark(&sb, owner);
    sb_add(&sb, "xargs -0 rm -rf --");
    rc = sb_check(&sb, err);
    if (rc == 0)
        rc = file_to_remote(conn, deleted_path, sb_text(&sb),
                            "deleting locally deleted files", err);
out:
    er_free(bundle_argv);
    er_buf_fini(&sb.buf);
    return rc;
}

/* Anything else: clear the remote directory but .paperclip-runtime and
 * the mark (after checking the mark), then unpack a tar of the host tree
 * (without .paperclip-runtime, ._* and a file posing as the mark). */
static int sync_tar(const struct conn *conn, const char *local,
                    const char *remote_cwd, const char *owner,
                    const struct scratch *s, struct er_err *err)
{
    const char *tar_argv[] = { "tar",
                               "-C",
                               local,
                               "--exclude=.paperclip-runtime",
                               "--exclude=._*",
                               "--exclude=" MARKER_FILE,
                               "-cf",
                               "-",
                               ".",
                               NULL };
    struct sb sb;
    int rc;

    sb_init(&sb);
    sb_add(&sb, "set -e; cd ");
    sb_q(&sb, remote_cwd);
    sb_add(&sb, "; ");
    sb_require_mark(&sb, owner);
    sb_add(&sb, "for f in * .[!.]* ..?*; do "
                "case $f in .paperclip-runtime|" MARKER_FILE ") continue;; "
                "esac; "
                "if [ -e \"$f\" ] || [ -L \"$f\" ]; then rm -rf -- \"$f\"; fi; "
                "done; " TAR_EXTRACT);
    rc = sb_check(&sb, err);
    if (rc == 0)
        rc = stream_to_remote(conn, tar_argv, NULL, 1, sb_text(&sb), s,
                              "copying the workspace", err);
    er_buf_fini(&sb.buf);
    return rc;
}

/* Sync local into remote_cwd, which must carry owner's mark (or be made
 * and marked now: claim_remote_dir). */
static int sync_workspace(const struct conn *conn, const char *local,
                          const char *remote_cwd, const char *owner,
                          enum sync_kind *kind, struct er_err *err)
{
    struct git_guard g;
    struct scratch s;
    char branch[256];
    char ebuf[128];
    struct stat st;
    int rc;

    *kind = SYNC_NONE;
    s.dir[0] = '\0';
    g.opt_cnt = 0;
    if (stat(local, &st) != 0 || !S_ISDIR(st.st_mode))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the host workspace %s is not a directory", local);
    /* Connection problems first, under their own name. */
    rc = ensure_master(conn, err);
    if (rc == 0)
        rc = claim_remote_dir(conn, remote_cwd, owner, err);
    if (rc != 0)
        return rc;
    snprintf(s.dir, sizeof(s.dir), "/tmp/envrun-sync-XXXXXX");
    if (mkdtemp(s.dir) == NULL) {
        s.dir[0] = '\0';
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "cannot create a scratch directory: %s",
                          er_strerror(errno, ebuf, sizeof(ebuf)));
    }
    if (is_git_root(local, branch, sizeof(branch))) {
        *kind = SYNC_GIT;
        rc = git_guard_init(&g, local, err);
        if (rc == 0)
            rc = sync_git(conn, &g, local, remote_cwd, owner, branch, &s, err);
    } else {
        *kind = SYNC_TAR;
        rc = sync_tar(conn, local, remote_cwd, owner, &s, err);
    }
    git_guard_fini(&g);
    scratch_remove(&s);
    return rc;
}

static int ssh_realize(const struct er_driver_env *env,
                       const struct er_driver_lease *lease,
                       const struct er_driver_workspace *ws,
                       struct er_driver_realized *out, struct er_err *err)
{
    const char *remote_cwd = jstr(lease->metadata, "remoteCwd");
    struct er_driver_remote remote;
    enum sync_kind kind = SYNC_NONE;
    char prepare[ER_SSH_PATH_MAX * 2 + 512];
    char summary[ER_SSH_PATH_MAX + 1024];
    char owner[OWNER_MAX];
    struct conn conn;
    int rc;

    out->cwd = NULL;
    out->record = NULL;
    rc = conn_init(&conn, env, lease->id, lease->metadata, false, err);
    if (rc != 0)
        goto out;
    if (remote_cwd == NULL)
        remote_cwd = ws->remote_path;
    if (remote_cwd == NULL) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "the lease has no remote workspace directory "
                        "(remoteCwd)");
        goto out;
    }
    /* The sync empties the directory: never the root, a relative path or
     * one with ".." in it (the remote side checks the rest: its mark). */
    if (remote_cwd[0] != '/' || strcmp(remote_cwd, "/") == 0 ||
        has_control(remote_cwd) || has_dotdot(remote_cwd)) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "refusing to sync into the remote directory \"%s\"",
                        remote_cwd);
        goto out;
    }
    if (ws->local_path != NULL) {
        rc = dir_owner(&conn.cfg, env->id, lease->id, owner, err);
        if (rc == 0)
            rc = sync_workspace(&conn, ws->local_path, remote_cwd, owner, &kind,
                                err);
        if (rc != 0)
            goto out;
    }
    switch (kind) {
    case SYNC_GIT:
        snprintf(prepare, sizeof(prepare),
                 "The git work tree at %s was streamed as a git bundle over "
                 "SSH to %s and checked out in %s (same branch, or detached "
                 "HEAD); uncommitted and untracked files were copied over it "
                 "and locally deleted files deleted; .paperclip-runtime was "
                 "kept.",
                 ws->local_path, conn.dest, remote_cwd);
        break;
    case SYNC_TAR:
        snprintf(prepare, sizeof(prepare),
                 "%s was copied over SSH with tar to %s:%s after everything "
                 "there but .paperclip-runtime was removed.",
                 ws->local_path, conn.dest, remote_cwd);
        break;
    case SYNC_NONE:
        snprintf(prepare, sizeof(prepare),
                 "No host workspace was given: nothing was copied to %s:%s.",
                 conn.dest, remote_cwd);
        break;
    }
    snprintf(summary, sizeof(summary), "SSH workspace realized at %s:%s.",
             conn.dest, remote_cwd);
    remote = (struct er_driver_remote){ conn.cfg.host, conn.cfg.port,
                                        conn.cfg.username };
    out->record = er_driver_realization_record_remote(
        env, lease, ws, remote_cwd, &remote, "ssh_git_import_export", prepare,
        "Nothing is copied back by the worker: the adapter brings changes "
        "back over SSH after the run (a git bundle of the remote HEAD, then "
        "the remote tree without .git and .paperclip-runtime).",
        summary);
    out->cwd = er_strdup(remote_cwd);
    if (out->record == NULL || out->cwd == NULL) {
        er_driver_realized_fini(out);
        rc = oom(err);
    }
out:
    return driver_rc(rc, err);
}

/* ================================================================
 * execute (domain.md 4, 3.4 step 3)
 * ================================================================ */

/* What a timeout needs to kill the remote side. */
struct kill_ctx {
    const struct conn *conn;
    const char *marker;
};

/* The process group id the script printed after marker, or -1. */
static long find_pgid(const char *err_text, const char *marker)
{
    const char *p = strstr(err_text, marker);
    long pg = 0;
    size_t i;

    if (p == NULL || (p != err_text && p[-1] != '\n'))
        return -1;
    p += strlen(marker);
    for (i = 0; p[i] >= '0' && p[i] <= '9' && i < 10; i++)
        pg = pg * 10 + (p[i] - '0');
    /* Only a whole line counts; 0 and 1 are never ours to kill. */
    return i > 0 && p[i] == '\n' && pg > 1 ? pg : -1;
}

/* Drop the marker line from captured stderr. */
static void strip_marker(char *text, size_t *len, const char *marker)
{
    char *p;
    char *nl;

    if (text == NULL)
        return;
    p = strstr(text, marker);
    if (p == NULL || (p != text && p[-1] != '\n'))
        return;
    nl = strchr(p, '\n');
    if (nl == NULL)
        return;
    nl++;
    memmove(p, nl, (size_t)(text + *len - nl) + 1);
    *len -= (size_t)(nl - p);
}

/* er_proc_timeout_fn: ssh without a pty leaves the remote command running
 * when the local client dies, so TERM its process group over the master,
 * wait up to 5 s, then KILL it (domain.md 3.7). */
static void kill_remote(void *arg, const char *err_text, size_t err_len)
{
    const struct kill_ctx *kc = arg;
    long pg = find_pgid(err_text, kc->marker);
    struct er_proc_result res;
    struct remote_io io;
    struct er_err e;
    char script[512];

    (void)err_len;
    if (pg < 0)
        return; /* the script never got that far */
    snprintf(script, sizeof(script),
             "kill -TERM -%ld 2>/dev/null || kill -TERM %ld 2>/dev/null; "
             "i=0; while [ $i -lt 50 ] && { kill -0 -%ld 2>/dev/null || "
             "kill -0 %ld 2>/dev/null; }; do "
             "if sleep 0.1 2>/dev/null; then i=$((i+1)); "
             "else sleep 1; i=$((i+10)); fi; done; "
             "kill -KILL -%ld 2>/dev/null || kill -KILL %ld 2>/dev/null; "
             "exit 0",
             pg, pg, pg, pg, pg, pg);
    remote_io_init(&io, KILL_TIMEOUT_MS);
    if (run_remote(kc->conn, script, &io, &res, &e) == 0)
        er_proc_result_fini(&res);
}

/* Run req on the lease's host; cwd may be NULL. */
static int exec_run(const struct conn *conn, const struct er_driver_exec *req,
                    const char *cwd, struct er_driver_exec_result *out,
                    struct er_err *err)
{
    struct er_proc_result res;
    struct kill_ctx kc;
    struct remote_io io;
    char marker[40];
    char uuid[37];
    struct sb sb;
    int rc;

    memset(&res, 0, sizeof(res));
    sb_init(&sb);
    out->exit_code = -1;
    out->signal[0] = '\0';
    out->is_timed_out = false;
    out->out = NULL;
    out->err_text = NULL;
    /* A per-call marker, so the command's own output cannot pose as it. */
    rc = er_uuid_v4(uuid);
    if (rc != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "cannot make a random marker");
        goto out;
    }
    snprintf(marker, sizeof(marker), "envrun-pgid-%.8s=", uuid);
    rc = er_ssh_exec_script(req, cwd, marker, &sb.buf, err);
    if (rc != 0)
        goto out;
    kc = (struct kill_ctx){ conn, marker };
    remote_io_init(&io,
                   req->timeout_ms > 0 ? req->timeout_ms : EXEC_DEFAULT_MS);
    io.stdin_data = req->stdin_data;
    io.stdin_len = req->stdin_data != NULL ? req->stdin_len : 0;
    if (req->stdio != NULL) {
        io.stdin_data = NULL;
        io.stdin_len = 0;
        io.stdin_fd = req->stdio->in_fd;
        io.stdout_fd = req->stdio->out_fd;
    }
    io.max_output_bytes = req->max_output_bytes;
    io.is_plain = req->is_worker_tool;
    io.on_timeout = kill_remote;
    io.on_timeout_arg = &kc;
    rc = run_remote(conn, sb_text(&sb), &io, &res, err);
    if (rc != 0)
        goto out;
    strip_marker(res.err_text, &res.err_len, marker);
    out->exit_code = res.exit_code;
    er_proc_signal_name(res.signal, out->signal, sizeof(out->signal));
    out->is_timed_out = res.is_timed_out;
    out->out = res.out;
    out->out_len = res.out_len;
    out->err_text = res.err_text;
    out->err_len = res.err_len;
    res.out = NULL;
    res.err_text = NULL;
out:
    er_proc_result_fini(&res);
    er_buf_fini(&sb.buf);
    return rc;
}

static int ssh_execute(const struct er_driver_env *env,
                       const struct er_driver_lease *lease,
                       const struct er_driver_exec *req,
                       struct er_driver_exec_result *out, struct er_err *err)
{
    struct conn conn;
    int rc;

    out->exit_code = -1;
    out->signal[0] = '\0';
    out->is_timed_out = false;
    out->out = NULL;
    out->err_text = NULL;
    rc = conn_init(&conn, env, lease->id, lease->metadata, false, err);
    if (rc == 0)
        rc = exec_run(&conn, req,
                      req->cwd != NULL ? req->cwd
                                       : jstr(lease->metadata, "remoteCwd"),
                      out, err);
    return driver_rc(rc, err);
}

/* ================================================================
 * release
 * ================================================================ */

/* Run one runtime-overlay command (teardown, cleanup) the way provision
 * runs: `bash -lc <cmd>` with SHELL=/bin/bash, in the remote cwd. Returns
 * true when it exited 0. The cause goes to the log, without output. */
static bool run_overlay(const struct conn *conn, const char *lease_id,
                        const char *which, const char *cmd, const char *cwd)
{
    const char *args[] = { "-lc", cmd, NULL };
    const char *envv[] = { "SHELL=/bin/bash", NULL };
    struct er_driver_exec_result res;
    struct er_driver_exec req;
    struct er_err e;
    bool is_ok;

    memset(&req, 0, sizeof(req));
    req.command = "bash";
    req.args = args;
    req.cwd = cwd;
    req.env = envv;
    req.timeout_ms = CLEANUP_TIMEOUT_MS;
    er_err_clear(&e);
    if (exec_run(conn, &req, cwd, &res, &e) != 0) {
        er_log(ER_LOG_WARN, FAC, "lease %s: %s command not run: %s", lease_id,
               which, e.msg);
        return false;
    }
    is_ok = res.exit_code == 0 && !res.is_timed_out;
    if (!is_ok)
        er_log(ER_LOG_WARN, FAC, "lease %s: %s command %s (exit code %d%s%s)",
               lease_id, which, res.is_timed_out ? "timed out" : "failed",
               res.exit_code, res.signal[0] != '\0' ? ", " : "", res.signal);
    er_driver_exec_result_fini(&res);
    return is_ok;
}

/* rm -rf exactly <remoteWorkspacePath>/<lease id>, nothing else, and only
 * when it carries the lease's mark (a missing directory is fine). */
static bool remove_lease_dir(const struct conn *conn, const char *lease_id)
{
    char dir[ER_SSH_PATH_MAX + LEASE_ID_MAX + 2];
    char tail[LEASE_ID_MAX + 2];
    char owner[OWNER_MAX];
    char verdict[48];
    struct er_proc_result res;
    struct remote_io io;
    struct er_err e;
    struct sb sb;
    size_t n;
    bool is_ok = false;

    er_err_clear(&e);
    if (lease_dir(&conn->cfg, lease_id, dir, sizeof(dir), &e) != 0 ||
        !conn->cfg.is_per_lease || conn->cfg.remote_workspace_path[0] != '/' ||
        dir_owner(&conn->cfg, NULL, lease_id, owner, &e) != 0)
        return false;
    snprintf(tail, sizeof(tail), "/%s", lease_id);
    n = strlen(dir);
    if (strcmp(dir, "/") == 0 || n <= strlen(tail) ||
        strcmp(dir + n - strlen(tail), tail) != 0 || has_dotdot(dir)) {
        er_log(ER_LOG_WARN, FAC, "lease %s: refusing to remove \"%s\"",
               lease_id, dir);
        return false;
    }
    sb_init(&sb);
    dir_script(&sb, ER_SSH_DIR_REMOVE, dir, owner);
    remote_io_init(&io, CLEANUP_TIMEOUT_MS);
    if (sb_check(&sb, &e) == 0 &&
        run_remote(conn, sb_text(&sb), &io, &res, &e) == 0) {
        is_ok = res.exit_code == 0 && !res.is_timed_out;
        if (res.exit_code == 97 && !res.is_timed_out &&
            guard_verdict(res.out, verdict, sizeof(verdict)))
            er_err_set(&e, ER_EDRIVER, ER_ERRCLASS_NONE,
                       "refusing to remove %s on %s: %s (envrun removes only "
                       "remote directories it created and marked)",
                       dir, conn->dest, guard_reason(verdict));
        else if (!is_ok)
            remote_error(conn, "removing the per-lease workspace", &res, &e);
        er_proc_result_fini(&res);
    }
    if (!is_ok)
        er_log(ER_LOG_WARN, FAC, "lease %s: %s", lease_id, e.msg);
    er_buf_fini(&sb.buf);
    return is_ok;
}

static int ssh_release(const struct er_driver_env *env,
                       const struct er_driver_lease *lease, const char *status,
                       struct er_driver_released *out, struct er_err *err)
{
    const json_t *meta = lease->metadata;
    const json_t *overlay = json_object_get(
        json_object_get(
            json_object_get(json_object_get(meta, "workspaceRealization"),
                            "rebuild"),
            "metadata"),
        "runtimeOverlay");
    const char *teardown = jstr(overlay, "teardownCommand");
    const char *cleanup = jstr(overlay, "cleanupCommand");
    const char *remote_cwd = jstr(meta, "remoteCwd");
    const char *isolation = jstr(meta, "workspaceIsolation");
    /* Only what the lease recorded at acquire decides a removal. */
    bool is_per_lease =
        isolation != NULL && strcmp(isolation, "per_lease") == 0;
    const char *problem = NULL;
    struct er_err cerr;
    struct conn conn;

    (void)err;
    out->status = status;
    er_err_clear(&cerr);
    if (conn_init(&conn, env, lease->id, meta, true, &cerr) != 0) {
        char ctl_dir[ER_SSH_CONTROL_DIR_MAX];

        /* Not even the host is known: nothing remote can be cleaned. */
        er_ssh_control_dir(lease->id, ctl_dir);
        memset(&conn, 0, sizeof(conn));
        snprintf(conn.ctl_dir, sizeof(conn.ctl_dir), "%s", ctl_dir);
        if ((teardown != NULL || cleanup != NULL || is_per_lease)) {
            er_log(ER_LOG_WARN, FAC, "lease %s: no cleanup: %s", lease->id,
                   cerr.msg);
            problem = "SSH connection facts are missing";
        }
        control_dir_remove(&conn);
        goto out;
    }
    if (teardown != NULL && remote_cwd != NULL &&
        !run_overlay(&conn, lease->id, "teardown", teardown, remote_cwd))
        problem = "teardown command failed";
    if (cleanup != NULL && remote_cwd != NULL &&
        !run_overlay(&conn, lease->id, "cleanup", cleanup, remote_cwd) &&
        problem == NULL)
        problem = "cleanup command failed";
    /* A command that failed is run again in the workspace on a retry. */
    if (is_per_lease && (problem == NULL || !out->is_retried) &&
        !remove_lease_dir(&conn, lease->id) && problem == NULL)
        problem = "removing the per-lease remote workspace failed";
    close_master(&conn);
out:
    out->cleanup_status = problem != NULL ? "failed" : "success";
    out->failure_reason =
        strcmp(status, "failed") == 0 ? "adapter_or_run_failure" : problem;
    return 0;
}

/* ================================================================
 * target (domain.md 3.6, 3.2 step 4)
 * ================================================================ */

static json_t *ssh_target(const struct er_driver_env *env,
                          const struct er_driver_lease *lease,
                          const char *adapter_type, struct er_err *err)
{
    struct er_ssh_config cfg;
    const char *remote_cwd = NULL;
    json_t *spec;
    json_t *target;

    if (!er_driver_is_remote_adapter(adapter_type))
        return json_null();
    if (er_ssh_config_parse(env->config, &cfg, err) != 0) {
        driver_rc(ER_EINVAL, err);
        return NULL;
    }
    if (lease != NULL) {
        apply_meta(&cfg, lease->metadata);
        remote_cwd = jstr(lease->metadata, "remoteCwd");
    }
    if (remote_cwd == NULL)
        remote_cwd = cfg.remote_workspace_path;
    /* No privateKey, ever: the adapter side has its own way to the key. */
    spec = json_pack(
        "{s:s, s:i, s:s, s:s, s:o, s:b, s:s}", "host", cfg.host, "port",
        cfg.port, "username", cfg.username, "remoteWorkspacePath",
        cfg.remote_workspace_path, "knownHosts",
        cfg.known_hosts != NULL ? json_string(cfg.known_hosts) : json_null(),
        "strictHostKeyChecking", cfg.is_strict_host_key_checking, "remoteCwd",
        remote_cwd);
    if (spec == NULL || lease == NULL) {
        if (spec == NULL)
            oom(err);
        return spec;
    }
    target = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o}", "kind", "remote",
                       "transport", "ssh", "environmentId", env->id, "leaseId",
                       lease->id, "remoteCwd", remote_cwd, "spec", spec);
    if (target == NULL)
        oom(err);
    return target;
}

/* ================================================================
 * sweep: what a crash can leave on this host
 * ================================================================ */

/* Key directories /tmp/envrun-key-<pid>-XXXXXX of processes that are gone:
 * a worker killed while a connection was opening. */
static void sweep_keys(void)
{
    DIR *d = opendir("/tmp");
    struct dirent *e;

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        char path[300];
        char *end = NULL;
        long pid;

        if (strncmp(e->d_name, "envrun-key-", 11) != 0)
            continue;
        pid = strtol(e->d_name + 11, &end, 10);
        if (end == e->d_name + 11 || *end != '-' || pid <= 0)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* alive, or not ours to judge */
        snprintf(path, sizeof(path), "/tmp/%s/id", e->d_name);
        unlink(path);
        snprintf(path, sizeof(path), "/tmp/%s", e->d_name);
        if (rmdir(path) == 0)
            er_log(ER_LOG_INFO, FAC,
                   "swept the key directory of dead "
                   "process %ld",
                   pid);
    }
    closedir(d);
}

/* Whether the control directory dir carries this installation's mark. */
static bool is_own_dir(const char *dir)
{
    const char *id = er_driver_installation();
    char path[ER_SSH_CONTROL_DIR_MAX + 16];
    char text[48];
    ssize_t n;
    int fd;

    if (id[0] == '\0')
        return false;
    snprintf(path, sizeof(path), "%s/owner", dir);
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return false;
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return false;
    text[n] = '\0';
    text[strcspn(text, "\n")] = '\0';
    return strcmp(text, id) == 0;
}

/* Control directories of leases that no longer need them: close the
 * master connection (ssh -O exit on its socket) and remove the directory.
 */
static void sweep_control_dirs(er_driver_in_use_fn *is_in_use, void *arg)
{
    char base[ER_SSH_CONTROL_DIR_MAX];
    char *slash;
    DIR *d;
    struct dirent *e;

    er_ssh_control_dir("sweep", base);
    slash = strrchr(base, '/');
    ER_ASSERT(slash != NULL);
    *slash = '\0';
    d = opendir(base);
    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        struct conn conn;
        char sock[ER_SSH_CONTROL_DIR_MAX + 16];
        struct stat st;
        size_t i;

        if (strlen(e->d_name) != 16)
            continue;
        for (i = 0; i < 16 && isxdigit((unsigned char)e->d_name[i]); i++)
            ;
        if (i != 16)
            continue;
        memset(&conn, 0, sizeof(conn));
        /* base is /tmp/envrun-ssh-<uid>: the two always fit. */
        snprintf(conn.ctl_dir, sizeof(conn.ctl_dir), "%.*s/%.16s",
                 (int)(sizeof(conn.ctl_dir) - 18), base, e->d_name);
        /* Only this installation's, and only when its lease is done. */
        if (!is_own_dir(conn.ctl_dir) || is_in_use(e->d_name, arg))
            continue;
        snprintf(sock, sizeof(sock), "%s/m", conn.ctl_dir);
        if (lstat(sock, &st) == 0) {
            const char *argv[] = { "ssh", "-F",   "none",         "-S", sock,
                                   "-O",  "exit", "envrun-sweep", NULL };
            struct er_proc_opts opts;
            struct er_proc_result res;
            struct er_err perr;

            er_proc_opts_init(&opts);
            opts.argv = argv;
            opts.timeout_ms = CHECK_TIMEOUT_MS;
            if (er_proc_run(&opts, &res, &perr) == 0)
                er_proc_result_fini(&res);
        }
        control_dir_remove(&conn);
        er_log(ER_LOG_INFO, FAC,
               "swept the connection directory %s of a "
               "lease that is done",
               e->d_name);
    }
    closedir(d);
}

static void ssh_sweep(er_driver_in_use_fn *is_in_use, void *arg)
{
    sweep_keys();
    sweep_control_dirs(is_in_use, arg);
}

const struct er_driver_ops er_ssh_driver = {
    .name = "ssh",
    .is_remote = true,
    .acquire = ssh_acquire,
    .realize = ssh_realize,
    .release = ssh_release,
    .execute = ssh_execute,
    .target = ssh_target,
    .sweep = ssh_sweep,
};
