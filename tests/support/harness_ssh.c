/* harness_ssh: the ssh part of the integration harness (see harness.h):
 * the sshd of scripts/test-services.sh as the tests see it, secrets and
 * environment rows for it, and commands on its "remote" side. Single-
 * threaded. Owns child processes only for the duration of one call. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "drivers/driver.h"
#include "tests/support/harness.h"
#include "worker/worker.h"

#define REMOTE_TIMEOUT_MS 60000
#define LOCAL_TIMEOUT_MS  120000
#define OUTPUT_MAX        ((size_t)16 * 1024 * 1024)
#define TEXT_FILE_MAX     ((size_t)64 * 1024)
#define SCRIPT_MAX        16384
#define PROC_MAX          8192
#define PATTERNS_NAME     ".key-lines"

extern char **environ;

/* ----------------------------------------------------------------
 * Small utilities
 * ---------------------------------------------------------------- */

static void nap_ms(int ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Write text to a new file at path with mode. Returns 0 or -1. */
static int write_text(const char *path, const char *text, mode_t mode)
{
    size_t len = strlen(text);
    size_t off = 0;
    int fd;

    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -1;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    if (fchmod(fd, mode) != 0) {
        close(fd);
        return -1;
    }
    return close(fd);
}

static int parse_int(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || (*end != '\0' && *end != '\n') || v < min ||
        v > max)
        return -1;
    *out = v;
    return 0;
}

int er_harness_run_argv(char *const argv[], const char *cwd,
                        bool is_merging_stderr, int timeout_ms, char **out)
{
    struct er_buf buf;
    int64_t deadline = er_time_mono_ms() + timeout_ms;
    int fds[2] = { -1, -1 };
    int status = 0;
    int rc = -1;
    bool is_timed_out = false;
    pid_t pid;
    size_t len;

    if (out != NULL)
        *out = NULL;
    er_buf_init(&buf, OUTPUT_MAX);
    if (pipe(fds) != 0)
        return -1;
    pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        int null_fd = open("/dev/null", O_RDONLY);

        /* Its own process group, so a timeout kills what it started. */
        setpgid(0, 0);
        if (null_fd < 0 || (cwd != NULL && chdir(cwd) != 0) ||
            dup2(null_fd, STDIN_FILENO) < 0 ||
            dup2(fds[1], STDOUT_FILENO) < 0 ||
            (is_merging_stderr && dup2(fds[1], STDERR_FILENO) < 0))
            _exit(126);
        close(fds[0]);
        execve(argv[0], argv, environ);
        _exit(127);
    }
    close(fds[1]);
    for (;;) {
        struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
        int64_t left = deadline - er_time_mono_ms();
        char chunk[8192];
        ssize_t r;

        if (left <= 0) {
            is_timed_out = true;
            break;
        }
        if (poll(&pfd, 1, (int)(left > 1000 ? 1000 : left)) < 0 &&
            errno != EINTR)
            break;
        if (pfd.revents == 0)
            continue;
        r = read(fds[0], chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        /* Past the cap the output is dropped, not the child blocked. */
        if (er_buf_append(&buf, chunk, (size_t)r) != 0)
            continue;
    }
    close(fds[0]);
    if (is_timed_out) {
        fprintf(stderr, "harness: %s timed out after %d ms\n", argv[0],
                timeout_ms);
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
    }
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            goto out;
        if (er_time_mono_ms() > deadline + 5000) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            deadline = er_time_mono_ms();
        }
        nap_ms(5);
    }
    if (!is_timed_out) {
        if (WIFEXITED(status))
            rc = WEXITSTATUS(status);
        else if (WIFSIGNALED(status))
            rc = 128 + WTERMSIG(status);
    }
    if (out != NULL && er_buf_append(&buf, "", 1) == 0)
        *out = (char *)er_buf_take(&buf, &len);

out:
    er_buf_fini(&buf);
    return rc;
}

int er_harness_ssh_quote(const char *s, char *out, size_t out_len)
{
    size_t n = 0;
    const char *p;

    if (out_len < 3)
        return -1;
    out[n++] = '\'';
    for (p = s; *p != '\0'; p++) {
        if (*p == '\'') {
            if (n + 4 >= out_len)
                return -1;
            memcpy(out + n, "'\\''", 4);
            n += 4;
            continue;
        }
        if (n + 1 >= out_len)
            return -1;
        out[n++] = *p;
    }
    if (n + 2 > out_len)
        return -1;
    out[n++] = '\'';
    out[n] = '\0';
    return 0;
}

int er_harness_ssh_local(const char *script, char **out)
{
    char *argv[] = { "/bin/sh", "-c", (char *)(uintptr_t)script, NULL };

    return er_harness_run_argv(argv, NULL, true, LOCAL_TIMEOUT_MS, out);
}

/* ----------------------------------------------------------------
 * Set-up
 * ---------------------------------------------------------------- */

static const char *need_env(const char *name)
{
    const char *v = getenv(name);

    if (v == NULL || v[0] == '\0') {
        fprintf(stderr,
                "harness: %s is not set: the ssh tests need the sshd of "
                "`scripts/test-services.sh start DIR` (as root); source "
                "DIR/env first\n",
                name);
        return NULL;
    }
    return v;
}

static int copy_env(const char *name, char *out, size_t out_len)
{
    const char *v = need_env(name);
    int n;

    if (v == NULL)
        return -1;
    n = snprintf(out, out_len, "%s", v);
    if (n < 0 || (size_t)n >= out_len) {
        fprintf(stderr, "harness: %s is too long\n", name);
        return -1;
    }
    return 0;
}

/* The secret lines of the key's body: base64 lines of 40 characters or
 * more but the first, which every unencrypted OpenSSH key shares. */
static int split_key_lines(struct er_harness_ssh *ssh)
{
    const char *p = strstr(ssh->private_key, "PRIVATE KEY-----");
    bool is_first = true;

    if (p == NULL)
        return -1;
    p = strchr(p, '\n');
    while (p != NULL && *p != '\0') {
        const char *start = p + 1;
        const char *end = strchr(start, '\n');
        size_t n = end != NULL ? (size_t)(end - start) : strlen(start);

        if (n > 0 && start[0] == '-')
            break;
        if (!is_first && n >= 40 &&
            ssh->key_line_cnt <
                sizeof(ssh->key_lines) / sizeof(ssh->key_lines[0])) {
            ssh->key_lines[ssh->key_line_cnt] = er_strndup(start, n);
            if (ssh->key_lines[ssh->key_line_cnt] == NULL)
                return -1;
            ssh->key_line_cnt++;
        }
        is_first = false;
        p = end;
    }
    return ssh->key_line_cnt > 0 ? 0 : -1;
}

/* Unmount whatever is mounted at or below dir (a leftover tmpfs of a test
 * that crashed), deepest first. */
static void unmount_below(const char *dir)
{
    char script[SCRIPT_MAX];
    char q[ER_HARNESS_PATH_MAX * 2];

    if (er_harness_ssh_quote(dir, q, sizeof(q)) != 0)
        return;
    snprintf(script, sizeof(script),
             "awk -v p=%s '$2 == p || index($2, p \"/\") == 1 { print $2 }' "
             "/proc/mounts | sort -r | while read -r m; do umount \"$m\" "
             "2>/dev/null || umount -l \"$m\"; done",
             q);
    (void)er_harness_ssh_local(script, NULL);
}

struct er_harness_ssh *er_harness_ssh_new(struct er_harness *h)
{
    struct er_harness_ssh *ssh = NULL;
    struct passwd pw;
    struct passwd *pwp = NULL;
    char pwbuf[4096];
    char port_text[16];
    char ws_root[ER_HARNESS_PATH_MAX];
    char path[ER_HARNESS_PATH_MAX * 2];
    char *patterns = NULL;
    struct er_buf buf;
    long port;
    size_t i;
    size_t len;
    int n;

    er_buf_init(&buf, TEXT_FILE_MAX);
    ssh = er_calloc(1, sizeof(*ssh));
    if (ssh == NULL)
        goto fail;
    if (copy_env("ENVRUN_TEST_SSH_HOST", ssh->host, sizeof(ssh->host)) != 0 ||
        copy_env("ENVRUN_TEST_SSH_PORT", port_text, sizeof(port_text)) != 0 ||
        copy_env("ENVRUN_TEST_SSH_USER", ssh->user, sizeof(ssh->user)) != 0 ||
        copy_env("ENVRUN_TEST_SSH_KEY", ssh->key_path, sizeof(ssh->key_path)) !=
            0 ||
        copy_env("ENVRUN_TEST_SSH_KNOWN_HOSTS", ssh->known_hosts_path,
                 sizeof(ssh->known_hosts_path)) != 0 ||
        copy_env("ENVRUN_TEST_SSH_WORKSPACE_ROOT", ws_root, sizeof(ws_root)) !=
            0 ||
        copy_env("ENVRUN_TEST_SSH_LOG", ssh->log_path, sizeof(ssh->log_path)) !=
            0 ||
        copy_env("ENVRUN_TEST_SSH_PID_FILE", ssh->pid_path,
                 sizeof(ssh->pid_path)) != 0)
        goto fail;
    if (parse_int(port_text, 1, 65535, &port) != 0) {
        fprintf(stderr, "harness: ENVRUN_TEST_SSH_PORT %s is not a port\n",
                port_text);
        goto fail;
    }
    ssh->port = (int)port;
    if (getpwnam_r(ssh->user, &pw, pwbuf, sizeof(pwbuf), &pwp) != 0 ||
        pwp == NULL) {
        fprintf(stderr, "harness: no local user %s\n", ssh->user);
        goto fail;
    }
    snprintf(ssh->home, sizeof(ssh->home), "%s", pw.pw_dir);

    ssh->private_key = er_harness_read_text(ssh->key_path, TEXT_FILE_MAX);
    ssh->known_hosts =
        er_harness_read_text(ssh->known_hosts_path, TEXT_FILE_MAX);
    if (ssh->private_key == NULL || ssh->known_hosts == NULL) {
        fprintf(stderr, "harness: cannot read %s or %s\n", ssh->key_path,
                ssh->known_hosts_path);
        goto fail;
    }
    if (split_key_lines(ssh) != 0) {
        fprintf(stderr, "harness: %s is not an OpenSSH private key\n",
                ssh->key_path);
        goto fail;
    }

    /* The test's remote directory, empty and the user's. */
    n = snprintf(ssh->root, sizeof(ssh->root), "%s/%s", ws_root, h->name);
    if (n < 0 || (size_t)n >= sizeof(ssh->root))
        goto fail;
    unmount_below(ssh->root);
    if (!er_harness_ssh_remote_ok(ssh, "rm -rf '%s' && mkdir -p '%s'",
                                  ssh->root, ssh->root)) {
        fprintf(stderr, "harness: cannot make %s as %s\n", ssh->root,
                ssh->user);
        goto fail;
    }

    /* The worker's secrets directory, beside the harness directory (the
     * tests' workspace root: secrets are never inside one), and TMPDIR. */
    snprintf(ssh->secrets_dir, sizeof(ssh->secrets_dir), "%s.secrets", h->dir);
    snprintf(ssh->tmp_dir, sizeof(ssh->tmp_dir), "%s/tmp", h->dir);
    er_devstack_rmtree(ssh->secrets_dir);
    er_devstack_rmtree(ssh->tmp_dir);
    if (mkdir(ssh->secrets_dir, 0700) != 0 ||
        chmod(ssh->secrets_dir, 0700) != 0 || mkdir(ssh->tmp_dir, 0700) != 0) {
        fprintf(stderr, "harness: cannot make %s or %s\n", ssh->secrets_dir,
                ssh->tmp_dir);
        goto fail;
    }
    if (er_harness_ssh_secret_write(ssh, ssh->private_key, ssh->secret_id) != 0)
        goto fail;
    for (i = 0; i < ssh->key_line_cnt; i++) {
        if (er_buf_printf(&buf, "%s\n", ssh->key_lines[i]) != 0)
            goto fail;
    }
    if (er_buf_append(&buf, "", 1) != 0)
        goto fail;
    patterns = (char *)er_buf_take(&buf, &len);
    snprintf(path, sizeof(path), "%s/%s", ssh->secrets_dir, PATTERNS_NAME);
    if (patterns == NULL || write_text(path, patterns, 0600) != 0)
        goto fail;

    snprintf(ssh->env_text[0], sizeof(ssh->env_text[0]),
             "ENVRUN_SECRETS_DIR=%s", ssh->secrets_dir);
    snprintf(ssh->env_text[1], sizeof(ssh->env_text[1]), "TMPDIR=%s",
             ssh->tmp_dir);
    snprintf(ssh->env_text[2], sizeof(ssh->env_text[2]),
             "ENVRUN_LOG_LEVEL=debug");
    for (i = 0; i < 3; i++)
        ssh->worker_env[i] = ssh->env_text[i];
    ssh->worker_env[3] = NULL;
    er_free(patterns);
    return ssh;

fail:
    er_free(patterns);
    er_buf_fini(&buf);
    er_harness_ssh_destroy(ssh);
    return NULL;
}

void er_harness_ssh_destroy(struct er_harness_ssh *ssh)
{
    size_t i;
    int m;

    if (ssh == NULL)
        return;
    for (m = ssh->mount_cnt - 1; m >= 0; m--)
        unmount_below(ssh->mounts[m]);
    for (i = 0; i < ssh->key_line_cnt; i++)
        er_free(ssh->key_lines[i]);
    er_free(ssh->private_key);
    er_free(ssh->known_hosts);
    er_free(ssh);
}

int er_harness_ssh_secret_write(struct er_harness_ssh *ssh, const char *text,
                                char id[37])
{
    char path[ER_HARNESS_PATH_MAX * 2];

    er_uuid_v4(id);
    snprintf(path, sizeof(path), "%s/%s", ssh->secrets_dir, id);
    if (write_text(path, text, 0600) != 0) {
        fprintf(stderr, "harness: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

json_t *er_harness_ssh_config(const struct er_harness_ssh *ssh,
                              const char *remote_path, const char *isolation)
{
    json_t *config;

    config = json_pack(
        "{s:s, s:i, s:s, s:s, s:{s:s, s:s}, s:s, s:b}", "host", ssh->host,
        "port", ssh->port, "username", ssh->user, "remoteWorkspacePath",
        remote_path != NULL ? remote_path : ssh->root, "privateKeySecretRef",
        "type", "secret_ref", "secretId", ssh->secret_id, "knownHosts",
        ssh->known_hosts, "strictHostKeyChecking", 1);
    ER_ASSERT(config != NULL);
    if (isolation != NULL)
        json_object_set_new(config, "workspaceIsolation",
                            json_string(isolation));
    return config;
}

/* Secrets are read from ENVRUN_SECRETS_DIR/<companyId>/ (contract.md 6):
 * copy the key file config's privateKeySecretRef names, if the secrets
 * directory <h->dir>.secrets holds it, into company_id's subdirectory. */
static int place_company_secret(const struct er_harness *h,
                                const char *company_id, const json_t *config)
{
    const json_t *ref = json_object_get(config, "privateKeySecretRef");
    const char *id = json_string_value(json_object_get(ref, "secretId"));
    char from[ER_HARNESS_PATH_MAX * 2];
    char dir[ER_HARNESS_PATH_MAX * 2];
    char to[ER_HARNESS_PATH_MAX * 3];
    char *text;
    int rc;

    if (id == NULL && json_is_string(ref) &&
        strncmp(json_string_value(ref), "file:", 5) == 0)
        id = json_string_value(ref) + 5;
    if (id == NULL || strchr(id, '/') != NULL || id[0] == '.')
        return 0;
    snprintf(from, sizeof(from), "%s.secrets/%s", h->dir, id);
    snprintf(dir, sizeof(dir), "%s.secrets/%s", h->dir, company_id);
    snprintf(to, sizeof(to), "%s/%s", dir, id);
    text = er_harness_read_text(from, 1u << 20);
    if (text == NULL)
        return 0; /* not one of the harness's secrets */
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "harness: cannot make %s\n", dir);
        er_free(text);
        return -1;
    }
    rc = write_text(to, text, 0600);
    if (rc != 0)
        fprintf(stderr, "harness: cannot write %s\n", to);
    er_free(text);
    return rc;
}

int er_harness_ssh_env_insert(struct er_harness *h, const char *company_id,
                              const char *name, const json_t *config,
                              char env_id[37])
{
    char *text;
    int rc;

    if (place_company_secret(h, company_id, config) != 0)
        return -1;
    text = er_harness_json_text(config);
    if (text == NULL)
        return -1;
    er_uuid_v4(env_id);
    /* An instance-scoped schema's environment has no company: the
     * company's secret above is what makes it this company's host. */
    if (er_harness_is_instance_era(h))
        rc = er_harness_pg_exec(
            h->db_url,
            "INSERT INTO environments (id, name, driver, status, config) "
            "VALUES ($1, $2, 'ssh', 'active', $3::jsonb)",
            3, (const char *[]){ env_id, name, text });
    else
        rc = er_harness_pg_exec(
            h->db_url,
            "INSERT INTO environments (id, company_id, name, driver, status, "
            "config) VALUES ($1, $2, $3, 'ssh', 'active', $4::jsonb)",
            4, (const char *[]){ env_id, company_id, name, text });
    free(text);
    return rc;
}

/* ----------------------------------------------------------------
 * The remote side
 * ---------------------------------------------------------------- */

int er_harness_ssh_remote(const struct er_harness_ssh *ssh, const char *script,
                          char **out)
{
    char home[ER_HARNESS_PATH_MAX + 8];
    char user[96];
    char logname[96];
    char port[16];
    char known[ER_HARNESS_PATH_MAX + 32];
    char target[sizeof(ssh->user) + sizeof(ssh->host) + 2];
    char *const env_path = "PATH=/usr/local/bin:/usr/bin:/bin";

    snprintf(home, sizeof(home), "HOME=%s", ssh->home);
    snprintf(user, sizeof(user), "USER=%s", ssh->user);
    snprintf(logname, sizeof(logname), "LOGNAME=%s", ssh->user);
    if (geteuid() == 0) {
        /* The same machine: no sshd in the way of what tests count. */
        char *argv[] = { "/usr/sbin/runuser",
                         "-u",
                         (char *)(uintptr_t)ssh->user,
                         "--",
                         "/usr/bin/env",
                         "-i",
                         home,
                         user,
                         logname,
                         env_path,
                         "LANG=C.UTF-8",
                         "/bin/sh",
                         "-c",
                         (char *)(uintptr_t)script,
                         NULL };

        return er_harness_run_argv(argv, ssh->home, false, REMOTE_TIMEOUT_MS,
                                   out);
    }
    snprintf(port, sizeof(port), "%d", ssh->port);
    snprintf(known, sizeof(known), "UserKnownHostsFile=%s",
             ssh->known_hosts_path);
    snprintf(target, sizeof(target), "%s@%s", ssh->user, ssh->host);
    {
        char *argv[] = { "/usr/bin/ssh",
                         "-F",
                         "/dev/null",
                         "-i",
                         (char *)(uintptr_t)ssh->key_path,
                         "-p",
                         port,
                         "-o",
                         "BatchMode=yes",
                         "-o",
                         "IdentitiesOnly=yes",
                         "-o",
                         "StrictHostKeyChecking=yes",
                         "-o",
                         known,
                         target,
                         (char *)(uintptr_t)script,
                         NULL };

        return er_harness_run_argv(argv, NULL, false, REMOTE_TIMEOUT_MS, out);
    }
}

bool er_harness_ssh_remote_ok(const struct er_harness_ssh *ssh, const char *fmt,
                              ...)
{
    char script[SCRIPT_MAX];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(script, sizeof(script), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(script))
        return false;
    return er_harness_ssh_remote(ssh, script, NULL) == 0;
}

long long er_harness_ssh_log_size(const struct er_harness_ssh *ssh)
{
    struct stat st;

    if (stat(ssh->log_path, &st) != 0)
        return -1;
    return (long long)st.st_size;
}

int er_harness_ssh_log_count(const struct er_harness_ssh *ssh, long long from,
                             const char *needle)
{
    char *log = er_harness_read_text(ssh->log_path, (size_t)256 * 1024 * 1024);
    const char *p;
    int cnt = 0;

    if (log == NULL)
        return -1;
    if (from < 0 || (size_t)from > strlen(log))
        from = 0;
    for (p = strstr(log + from, needle); p != NULL;
         p = strstr(p + strlen(needle), needle))
        cnt++;
    er_free(log);
    return cnt;
}

/* One row of /proc. */
struct proc_row {
    pid_t pid;
    pid_t ppid;
    char state;
    char comm[32];
};

/* Every process of the machine, from /proc/PID/stat; caller frees the
 * array (er_free). Returns the count or -1. */
static int proc_scan(struct proc_row **out)
{
    struct proc_row *rows = NULL;
    struct dirent *de;
    DIR *dir;
    int cnt = 0;

    *out = NULL;
    rows = er_calloc(PROC_MAX, sizeof(*rows));
    dir = opendir("/proc");
    if (rows == NULL || dir == NULL) {
        er_free(rows);
        if (dir != NULL)
            closedir(dir);
        return -1;
    }
    while ((de = readdir(dir)) != NULL && cnt < PROC_MAX) {
        char path[300];
        char *text;
        const char *open_paren;
        const char *close_paren;
        long pid;
        long ppid;
        char *end = NULL;

        if (parse_int(de->d_name, 1, 1L << 30, &pid) != 0)
            continue;
        snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
        text = er_harness_read_text(path, 4096);
        if (text == NULL)
            continue;
        /* "pid (comm) S ppid ...": comm may hold spaces and parentheses. */
        open_paren = strchr(text, '(');
        close_paren = strrchr(text, ')');
        if (open_paren == NULL || close_paren == NULL ||
            close_paren < open_paren || strlen(close_paren) < 5) {
            er_free(text);
            continue;
        }
        errno = 0;
        ppid = strtol(close_paren + 4, &end, 10);
        if (errno != 0 || end == close_paren + 4) {
            er_free(text);
            continue;
        }
        rows[cnt].pid = (pid_t)pid;
        rows[cnt].ppid = (pid_t)ppid;
        rows[cnt].state = close_paren[2];
        snprintf(rows[cnt].comm, sizeof(rows[cnt].comm), "%.*s",
                 (int)(close_paren - open_paren - 1), open_paren + 1);
        cnt++;
        er_free(text);
    }
    closedir(dir);
    *out = rows;
    return cnt;
}

static pid_t listener_pid(const struct er_harness_ssh *ssh)
{
    char *text = er_harness_read_text(ssh->pid_path, 64);
    long pid = -1;

    if (text == NULL || parse_int(text, 1, 1L << 30, &pid) != 0 ||
        kill((pid_t)pid, 0) != 0)
        pid = -1;
    er_free(text);
    return (pid_t)pid;
}

/* Mark in is_below the live descendants of root (not root itself). */
static void mark_descendants(const struct proc_row *rows, int cnt, pid_t root,
                             bool *is_below)
{
    bool is_changed = true;
    int i;
    int j;

    while (is_changed) {
        is_changed = false;
        for (i = 0; i < cnt; i++) {
            if (is_below[i])
                continue;
            if (rows[i].ppid == root) {
                is_below[i] = true;
                is_changed = true;
                continue;
            }
            for (j = 0; j < cnt; j++) {
                if (is_below[j] && rows[j].pid == rows[i].ppid) {
                    is_below[i] = true;
                    is_changed = true;
                    break;
                }
            }
        }
    }
    for (i = 0; i < cnt; i++) {
        if (rows[i].state == 'Z' || rows[i].state == 'X')
            is_below[i] = false;
    }
}

/* Count (and SIGKILL when is_killing) the live processes below the
 * listener whose comm is comm (NULL: any). */
static int below_listener(const struct er_harness_ssh *ssh, const char *comm,
                          bool is_killing)
{
    struct proc_row *rows = NULL;
    bool *is_below = NULL;
    pid_t root = listener_pid(ssh);
    int cnt;
    int hits = 0;
    int i;

    if (root < 0)
        return -1;
    cnt = proc_scan(&rows);
    if (cnt < 0)
        return -1;
    is_below = er_calloc((size_t)cnt + 1, sizeof(*is_below));
    if (is_below == NULL) {
        er_free(rows);
        return -1;
    }
    mark_descendants(rows, cnt, root, is_below);
    for (i = 0; i < cnt; i++) {
        if (!is_below[i] || (comm != NULL && strcmp(rows[i].comm, comm) != 0))
            continue;
        hits++;
        if (is_killing)
            kill(rows[i].pid, SIGKILL);
    }
    er_free(is_below);
    er_free(rows);
    return hits;
}

int er_harness_ssh_sessions(const struct er_harness_ssh *ssh, const char *comm)
{
    return below_listener(ssh, comm, false);
}

int er_harness_ssh_kill_sessions(const struct er_harness_ssh *ssh)
{
    return below_listener(ssh, NULL, true);
}

/* True when the NUL-separated command line cmd (len bytes) has an
 * argument that names port: "PORT", "-pPORT", "...=PORT", "...:PORT". */
static bool cmdline_names_port(const char *cmd, size_t len, const char *port)
{
    size_t off = 0;
    size_t port_len = strlen(port);

    while (off < len) {
        const char *arg = cmd + off;
        size_t n = strnlen(arg, len - off);

        if (n >= port_len && strcmp(arg + n - port_len, port) == 0 &&
            (n == port_len || arg[n - port_len - 1] == '=' ||
             arg[n - port_len - 1] == ':' ||
             (n == port_len + 2 && arg[0] == '-' && arg[1] == 'p')))
            return true;
        off += n + 1;
    }
    return false;
}

int er_harness_ssh_clients(const struct er_harness_ssh *ssh)
{
    struct proc_row *rows = NULL;
    char port[16];
    int cnt;
    int hits = 0;
    int i;

    snprintf(port, sizeof(port), "%d", ssh->port);
    cnt = proc_scan(&rows);
    if (cnt < 0)
        return -1;
    for (i = 0; i < cnt; i++) {
        char path[64];
        char buf[8192];
        ssize_t r;
        int fd;

        if (strcmp(rows[i].comm, "ssh") != 0 || rows[i].state == 'Z' ||
            rows[i].state == 'X')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)rows[i].pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        r = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (r <= 0)
            continue;
        buf[r] = '\0';
        if (cmdline_names_port(buf, (size_t)r, port))
            hits++;
    }
    er_free(rows);
    return hits;
}

int er_harness_ssh_mount_tmpfs(struct er_harness_ssh *ssh, const char *dir,
                               size_t size_bytes)
{
    struct passwd pw;
    struct passwd *pwp = NULL;
    char pwbuf[4096];
    char q[ER_HARNESS_PATH_MAX * 2];
    char script[SCRIPT_MAX];
    char *out = NULL;
    int rc;

    if (ssh->mount_cnt >= (int)(sizeof(ssh->mounts) / sizeof(ssh->mounts[0])))
        return -1;
    if (getpwnam_r(ssh->user, &pw, pwbuf, sizeof(pwbuf), &pwp) != 0 ||
        pwp == NULL || er_harness_ssh_quote(dir, q, sizeof(q)) != 0)
        return -1;
    snprintf(script, sizeof(script),
             "mkdir -p %s && mount -t tmpfs -o size=%zu,uid=%d,gid=%d,"
             "mode=0755 envrun-test-full %s",
             q, size_bytes, (int)pw.pw_uid, (int)pw.pw_gid, q);
    rc = er_harness_ssh_local(script, &out);
    if (rc != 0) {
        fprintf(stderr, "harness: cannot mount a tmpfs on %s (exit %d): %s\n",
                dir, rc, out != NULL ? out : "");
        er_free(out);
        return -1;
    }
    er_free(out);
    snprintf(ssh->mounts[ssh->mount_cnt++], sizeof(ssh->mounts[0]), "%s", dir);
    return 0;
}

int er_harness_ssh_files_with_key(const struct er_harness_ssh *ssh,
                                  const char *dir, const char *stamp,
                                  const char *exclude, char **hits)
{
    char q_dir[ER_HARNESS_PATH_MAX * 2];
    char q_stamp[ER_HARNESS_PATH_MAX * 2];
    char q_secrets[ER_HARNESS_PATH_MAX * 2];
    char q_exclude[ER_HARNESS_PATH_MAX * 2];
    char q_patterns[ER_HARNESS_PATH_MAX * 2 + 32];
    char patterns[ER_HARNESS_PATH_MAX * 2];
    char script[SCRIPT_MAX];
    char *out = NULL;
    const char *p;
    int cnt = 0;
    int rc;

    *hits = NULL;
    snprintf(patterns, sizeof(patterns), "%s/%s", ssh->secrets_dir,
             PATTERNS_NAME);
    if (er_harness_ssh_quote(dir, q_dir, sizeof(q_dir)) != 0 ||
        er_harness_ssh_quote(stamp, q_stamp, sizeof(q_stamp)) != 0 ||
        er_harness_ssh_quote(ssh->secrets_dir, q_secrets, sizeof(q_secrets)) !=
            0 ||
        er_harness_ssh_quote(exclude != NULL ? exclude : ssh->secrets_dir,
                             q_exclude, sizeof(q_exclude)) != 0 ||
        er_harness_ssh_quote(patterns, q_patterns, sizeof(q_patterns)) != 0)
        return -1;
    /* ctime, not mtime: tar and cp -p keep old mtimes, never old ctimes. */
    snprintf(script, sizeof(script),
             "find %s -xdev \\( -path %s -o -path %s \\) -prune -o -type f "
             "-cnewer %s -size -16M -print0 2>/dev/null | "
             "xargs -0r grep -lsF -f %s 2>/dev/null; true",
             q_dir, q_secrets, q_exclude, q_stamp, q_patterns);
    rc = er_harness_ssh_local(script, &out);
    if (rc != 0 || out == NULL) {
        er_free(out);
        return -1;
    }
    for (p = out; *p != '\0'; p++) {
        if (*p == '\n')
            cnt++;
    }
    if (cnt > 0)
        *hits = out;
    else
        er_free(out);
    return cnt;
}

bool er_harness_ssh_text_has_key(const struct er_harness_ssh *ssh,
                                 const char *text)
{
    size_t i;

    if (text == NULL)
        return false;
    if (strstr(text, "PRIVATE KEY-----") != NULL)
        return true;
    for (i = 0; i < ssh->key_line_cnt; i++) {
        if (strstr(text, ssh->key_lines[i]) != NULL)
            return true;
    }
    return false;
}

int er_harness_ssh_git_workspace(const char *dir, const char *branch)
{
    char q_dir[ER_HARNESS_PATH_MAX * 2];
    char q_branch[256];
    char script[SCRIPT_MAX];
    char *out = NULL;
    int rc;

    if (er_harness_ssh_quote(dir, q_dir, sizeof(q_dir)) != 0 ||
        er_harness_ssh_quote(branch, q_branch, sizeof(q_branch)) != 0)
        return -1;
    snprintf(script, sizeof(script),
             "set -e; rm -rf %s; mkdir -p %s/src; cd %s; "
             "git init -q -b %s .; "
             "printf 'hello\\n' > README.md; printf 'v1\\n' > src/app.txt; "
             "printf 'bye\\n' > gone.txt; git add -A; "
             "git -c user.name=envrun-test -c user.email=test@envrun.invalid "
             "commit -q -m initial; "
             "printf 'v2 uncommitted\\n' >> src/app.txt; "
             "printf 'untracked\\n' > new.txt; rm gone.txt",
             q_dir, q_dir, q_dir, q_branch);
    rc = er_harness_ssh_local(script, &out);
    if (rc != 0)
        fprintf(stderr, "harness: git workspace %s (exit %d): %s\n", dir, rc,
                out != NULL ? out : "");
    er_free(out);
    return rc == 0 ? 0 : -1;
}

int er_harness_ssh_plain_workspace(const char *dir)
{
    char q_dir[ER_HARNESS_PATH_MAX * 2];
    char script[SCRIPT_MAX];
    char *out = NULL;
    int rc;

    if (er_harness_ssh_quote(dir, q_dir, sizeof(q_dir)) != 0)
        return -1;
    snprintf(script, sizeof(script),
             "set -e; rm -rf %s; mkdir -p %s/nested/deep; cd %s; "
             "printf 'top\\n' > top.txt; "
             "printf 'leaf\\n' > nested/deep/leaf.txt; "
             "printf 'resource fork\\n' > ._top.txt",
             q_dir, q_dir, q_dir);
    rc = er_harness_ssh_local(script, &out);
    if (rc != 0)
        fprintf(stderr, "harness: plain workspace %s (exit %d): %s\n", dir, rc,
                out != NULL ? out : "");
    er_free(out);
    return rc == 0 ? 0 : -1;
}

bool er_harness_ssh_control_dir_exists(const char *lease_id)
{
    char dir[ER_SSH_CONTROL_DIR_MAX];
    struct stat st;

    er_ssh_control_dir(lease_id, dir);
    return lstat(dir, &st) == 0;
}

char *er_harness_ssh_control_dirs(void)
{
    char dir[ER_SSH_CONTROL_DIR_MAX];
    char q[ER_SSH_CONTROL_DIR_MAX * 2 + 8];
    char script[512];
    char *slash;
    char *out = NULL;

    /* Any lease id names a directory in the same parent. */
    er_ssh_control_dir("00000000-0000-4000-8000-000000000000", dir);
    slash = strrchr(dir, '/');
    if (slash == NULL)
        return NULL;
    *slash = '\0';
    if (er_harness_ssh_quote(dir, q, sizeof(q)) != 0)
        return NULL;
    snprintf(script, sizeof(script), "if [ -d %s ]; then ls -1A %s | sort; fi",
             q, q);
    if (er_harness_ssh_local(script, &out) != 0) {
        er_free(out);
        return NULL;
    }
    return out;
}

char *er_harness_ssh_new_lines(const char *before, const char *after)
{
    struct er_buf buf;
    const char *p = after;
    size_t len;

    er_buf_init(&buf, OUTPUT_MAX);
    while (p != NULL && *p != '\0') {
        const char *end = strchr(p, '\n');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *q = before;
        bool is_old = false;

        while (q != NULL && *q != '\0' && !is_old) {
            const char *qend = strchr(q, '\n');
            size_t qn = qend != NULL ? (size_t)(qend - q) : strlen(q);

            is_old = qn == n && memcmp(p, q, n) == 0;
            q = qend != NULL ? qend + 1 : NULL;
        }
        if (n > 0 && !is_old &&
            (er_buf_append(&buf, p, n) != 0 ||
             er_buf_append(&buf, "\n", 1) != 0))
            break;
        p = end != NULL ? end + 1 : NULL;
    }
    if (er_buf_append(&buf, "", 1) != 0) {
        er_buf_fini(&buf);
        return NULL;
    }
    return (char *)er_buf_take(&buf, &len);
}

int er_harness_ssh_per_lease_env(struct er_harness *h,
                                 const struct er_harness_ssh *ssh,
                                 const char *company_id, const char *name,
                                 char *remote, size_t remote_len,
                                 char env_id[37])
{
    json_t *config;
    int rc;

    snprintf(remote, remote_len, "%s/ws", ssh->root);
    config = er_harness_ssh_config(ssh, remote, "per_lease");
    if (config == NULL)
        return -1;
    rc = er_harness_ssh_env_insert(h, company_id, name, config, env_id);
    json_decref(config);
    return rc;
}

void er_harness_ssh_worker_env_with(const struct er_harness_ssh *ssh,
                                    const char *extra, const char *out[8])
{
    size_t n = 0;
    size_t i;

    for (i = 0; ssh->worker_env[i] != NULL && n < 6; i++)
        out[n++] = ssh->worker_env[i];
    if (extra != NULL)
        out[n++] = extra;
    out[n] = NULL;
}
