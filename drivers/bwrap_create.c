/* bwrap_create: making a bwrap sandbox (sandbox_bwrap.c says how it is
 * built): its directory tree, bwrap's command line under setsid, setpriv and
 * prlimit, waiting until it is ready, adoption of one that already runs,
 * and the probe. Thread-safe as sandbox_bwrap.c: creates serialise on the
 * lock of the sandbox directory. Owns nothing between calls. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <jansson.h>

#include "drivers/bwrap_int.h"

#define FAC "driver.bwrap"

/* Host uids of sandboxes: [BASE, BASE + 2^28). Keep this range free of
 * other users on a host that runs sandboxes. Two live ids that share their
 * first 7 hex digits share a host uid; they still cannot see each other's
 * processes or files, but their RLIMIT_NPROC counts add up. */
#define UID_BASE      0x40000000u
#define LOG_FILE      "bwrap.log"
#define START_WAIT_MS 10000      /* bwrap's info and the init's exec */
#define SHM_BYTES     "67108864" /* the size of /dev/shm inside */
#define INFO_MAX      4096

/* ------------------------------------------------------------- create */

/* The host uid of sandbox id (valid). */
static uid_t sandbox_uid(const char *id)
{
    unsigned v = 0;
    int i;

    for (i = 0; i < 7; i++)
        v = v * 16u + (unsigned)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
    return (uid_t)(UID_BASE + v);
}

/* Make sure the base directory exists, is a directory that only we may
 * write, and that sandbox uids may search. */
static int base_prepare(struct er_err *err)
{
    char path[PATH_MAX];
    char ebuf[128];
    struct stat st;
    size_t i;

    if (er_bwrap__join(path, sizeof(path), er_bwrap_dir(),
                       (const char *)NULL) != 0 ||
        path[0] != '/')
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "the sandbox directory %s is not absolute", path);
    /* mkdir -p: the parents 0755, the directory itself 0711. */
    for (i = 1; path[i] != '\0'; i++) {
        if (path[i] != '/')
            continue;
        path[i] = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            path[i] = '/';
            break;
        }
        path[i] = '/';
    }
    if (mkdir(path, 0711) != 0 && errno != EEXIST)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "cannot make the sandbox directory %s: %s", path,
                          er_strerror(errno, ebuf, sizeof(ebuf)));
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "the sandbox directory %s is not a directory", path);
    /* Whoever may write here could swap a sandbox's directory for a
     * symlink between our checks and bwrap's use of the path. */
    if (st.st_uid != geteuid() || (st.st_mode & 0022) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "the sandbox directory %s must belong to this user "
                          "and be writable by no one else",
                          path);
    if ((st.st_mode & S_IXOTH) == 0 &&
        chmod(path, (st.st_mode & 07777) | S_IXOTH) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "cannot make the sandbox directory %s searchable: "
                          "%s",
                          path, er_strerror(errno, ebuf, sizeof(ebuf)));
    /* bwrap runs as the sandbox's uid and opens its directories by path. */
    for (i = strlen(path); i > 1; i--) {
        if (path[i - 1] != '/')
            continue;
        path[i - 1] = '\0';
        if (stat(path, &st) == 0 && (st.st_mode & S_IXOTH) == 0)
            return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                              "%s (above the sandbox directory) must be "
                              "searchable by other users",
                              path);
    }
    return 0;
}

/* Make <dir>/<id> with the marker, the /etc files and the writable
 * directories, in a temporary directory renamed into place when complete:
 * <dir>/<id> never exists without its marker. */
static int make_tree(const char *id, struct er_err *err)
{
    char tmp_path[PATH_MAX];
    char path[PATH_MAX];
    char text[160];
    char ebuf[128];
    const char *what = "";
    uid_t uid = sandbox_uid(id);
    int fd = -1;
    int rc = 0;

    if (er_bwrap__join(tmp_path, sizeof(tmp_path), er_bwrap_dir(),
                       "/" ER_BWRAP_NEW_PREFIX, id, "-XXXXXX",
                       (const char *)NULL) != 0 ||
        er_bwrap__sb_path(path, sizeof(path), id, NULL) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "the sandbox directory path is too long");
    if (mkdtemp(tmp_path) == NULL)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "cannot make a sandbox directory in %s: %s",
                          er_bwrap_dir(),
                          er_strerror(errno, ebuf, sizeof(ebuf)));
    fd = open(tmp_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    er_bwrap__marker_text(id, text, sizeof(text));
    what = "the marker";
    if (fd < 0 || fchmod(fd, 0711) != 0 ||
        er_bwrap__write_new_at(fd, ER_BWRAP_MARKER, text, 0644) != 0)
        goto fail;
    /* A shell and the tools that look the user up need these; the host's
     * /etc is not shown. */
    what = "/etc files";
    if (er_bwrap__write_new_at(fd, "passwd",
                               "root:x:0:0:root:/tmp:/bin/sh\n"
                               "nobody:x:65534:65534:nobody:/nonexistent:"
                               "/usr/sbin/nologin\n",
                               0644) != 0 ||
        er_bwrap__write_new_at(fd, "group", "root:x:0:\nnogroup:x:65534:\n",
                               0644) != 0 ||
        er_bwrap__write_new_at(fd, "hosts",
                               "127.0.0.1 localhost sandbox\n::1 localhost\n",
                               0644) != 0)
        goto fail;
    what = "the writable directories";
    if (mkdirat(fd, "workspace", 0700) != 0 || mkdirat(fd, "tmp", 0700) != 0)
        goto fail;
    if (fchownat(fd, "workspace", uid, uid, AT_SYMLINK_NOFOLLOW) != 0 ||
        fchownat(fd, "tmp", uid, uid, AT_SYMLINK_NOFOLLOW) != 0)
        goto fail;
    what = "the directory";
    if (rename(tmp_path, path) != 0)
        goto fail;
    close(fd);
    return 0;
fail:
    rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                    "cannot prepare %s of sandbox %s: %s", what, id,
                    er_strerror(errno, ebuf, sizeof(ebuf)));
    if (fd >= 0)
        close(fd);
    er_bwrap__remove_tree(tmp_path);
    return rc;
}

/* The first line of the bwrap log, for a message. */
static void log_line(const char *id, char *out, size_t out_len)
{
    char path[PATH_MAX];
    char buf[512];
    size_t i;

    out[0] = '\0';
    if (er_bwrap__sb_path(path, sizeof(path), id, LOG_FILE) != 0 ||
        er_bwrap__read_small(path, buf, sizeof(buf)) <= 0)
        return;
    for (i = 0; buf[i] != '\0' && buf[i] != '\n' && i + 1 < out_len && i < 200;
         i++) {
        out[i] = buf[i];
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
            out[i] = '?';
    }
    out[i] = '\0';
}

/* Whether name is an executable file on the worker's PATH (or a path). */
static bool have_program(const char *name)
{
    const char *dirs = getenv("PATH");
    const char *p;

    if (strchr(name, '/') != NULL)
        return access(name, X_OK) == 0;
    if (dirs == NULL || dirs[0] == '\0')
        dirs = ER_PROC_PATH;
    for (p = dirs; p != NULL;) {
        const char *end = strchr(p, ':');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        char path[PATH_MAX];
        struct stat st;
        int len;

        len = snprintf(path, sizeof(path), "%.*s/%s", (int)n, p, name);
        if (n > 0 && len > 0 && (size_t)len < sizeof(path) &&
            stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
            access(path, X_OK) == 0)
            return true;
        p = end != NULL ? end + 1 : NULL;
    }
    return false;
}

static int check_programs(struct er_err *err)
{
    static const char *const host[] = { "bwrap", "nsenter", "prlimit", "setsid",
                                        "setpriv" };
    static const char *const inside[] = {
        ER_BWRAP_IN_SETPRIV, ER_BWRAP_IN_UNSHARE, ER_BWRAP_IN_SETSID,
        ER_BWRAP_IN_ENV,     ER_BWRAP_IN_SH,      ER_BWRAP_IN_SLEEP
    };
    size_t i;

    if (geteuid() != 0)
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "bwrap sandboxes need the worker to run as root "
                          "(to give each one an unprivileged uid)");
    for (i = 0; i < sizeof(host) / sizeof(host[0]); i++) {
        if (!have_program(host[i]))
            return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                              "%s is not installed (not found in PATH)",
                              host[i]);
    }
    for (i = 0; i < sizeof(inside) / sizeof(inside[0]); i++) {
        if (access(inside[i], X_OK) != 0)
            return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                              "%s is not installed", inside[i]);
    }
    return 0;
}

void er_bwrap__arg(struct er_bwrap_argv *a, const char *s)
{
    ER_ASSERT(a->n + 1 < ER_BWRAP_ARGV_MAX);
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

void er_bwrap__add_all(struct er_bwrap_argv *a, const char *const *list)
{
    for (; *list != NULL; list++)
        er_bwrap__arg(a, *list);
}

/* prlimit and its options for lim (nothing when lim sets none). */
void er_bwrap__add_limits(struct er_bwrap_argv *a,
                          const struct er_bwrap_limits *lim,
                          struct er_bwrap_limit_args *la)
{
    if (lim == NULL || (lim->memory_bytes <= 0 && lim->processes <= 0 &&
                        lim->cpu_seconds <= 0))
        return;
    er_bwrap__arg(a, "prlimit");
    if (lim->memory_bytes > 0) {
        snprintf(la->as, sizeof(la->as), "--as=%lld:%lld",
                 (long long)lim->memory_bytes, (long long)lim->memory_bytes);
        er_bwrap__arg(a, la->as);
    }
    if (lim->processes > 0) {
        snprintf(la->nproc, sizeof(la->nproc), "--nproc=%lld:%lld",
                 (long long)lim->processes, (long long)lim->processes);
        er_bwrap__arg(a, la->nproc);
    }
    if (lim->cpu_seconds > 0) {
        snprintf(la->cpu, sizeof(la->cpu), "--cpu=%lld:%lld",
                 (long long)lim->cpu_seconds, (long long)lim->cpu_seconds);
        er_bwrap__arg(a, la->cpu);
    }
    er_bwrap__arg(a, "--");
}

/* The host's top-level links into /usr (/bin -> usr/bin on a merged-/usr
 * system) become the same links inside; real directories are bound
 * read-only. */
struct usr_links {
    char target[6][64];
};

static void add_usr_links(struct er_bwrap_argv *a, struct usr_links *links)
{
    static const char *const names[] = { "/bin",   "/sbin",  "/lib",
                                         "/lib32", "/lib64", "/libx32" };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        struct stat st;
        ssize_t n;

        if (lstat(names[i], &st) != 0)
            continue;
        if (S_ISLNK(st.st_mode)) {
            n = readlink(names[i], links->target[i],
                         sizeof(links->target[i]) - 1);
            if (n <= 0)
                continue;
            links->target[i][n] = '\0';
            er_bwrap__arg(a, "--symlink");
            er_bwrap__arg(a, links->target[i]);
            er_bwrap__arg(a, names[i]);
        } else if (S_ISDIR(st.st_mode)) {
            er_bwrap__arg(a, "--ro-bind");
            er_bwrap__arg(a, names[i]);
            er_bwrap__arg(a, names[i]);
        }
    }
}

/* bwrap's options, in order (sandbox_int.h: what a sandbox is). The
 * --unshare-all namespaces are user, IPC, PID, network (loopback only),
 * UTS and cgroup; --disable-userns keeps code inside from making user
 * namespaces of its own (a large kernel attack surface). */
static const char *const bwrap_head[] = {
    "bwrap",
    "--unshare-all",
    "--unshare-user",
    "--disable-userns",
    "--uid",
    "0",
    "--gid",
    "0",
    "--hostname",
    "sandbox",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--clearenv",
    "--setenv",
    "PATH",
    ER_PROC_PATH,
    "--ro-bind",
    "/usr",
    "/usr",
    NULL,
};
/* What follows setpriv's --reuid and --regid before bwrap. */
static const char *const setpriv_host[] = {
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--",
    NULL,
};
static const char *const bwrap_dev[] = {
    "--proc",  "/proc",   "--dev",    "/dev", "--size",
    SHM_BYTES, "--tmpfs", "/dev/shm", NULL,
};
/* Not secret, and needed: the dynamic linker's cache and Debian's
 * alternatives (awk, editor, ... are links through it). */
static const char *const bwrap_etc[] = {
    "--ro-bind-try",
    "/etc/ld.so.cache",
    "/etc/ld.so.cache",
    "--ro-bind-try",
    "/etc/alternatives",
    "/etc/alternatives",
    NULL,
};
/* The root is a tmpfs: read-only, so it cannot fill the host's memory. */
static const char *const bwrap_tail[] = {
    "--remount-ro", "/",  "--chdir", ER_BWRAP_WORKSPACE,
    "--info-fd",    "1",  "--",      ER_BWRAP_IN_SLEEP,
    "infinity",     NULL,
};

/* The sandbox's pid 1 from bwrap's --info-fd JSON so far, or 0. */
static pid_t info_pid(const char *buf, size_t len)
{
    json_error_t jerr;
    json_t *info;
    json_int_t pid = 0;

    info = json_loadb(buf, len, JSON_DISABLE_EOF_CHECK, &jerr);
    if (info != NULL && json_is_integer(json_object_get(info, "child-pid")))
        pid = json_integer_value(json_object_get(info, "child-pid"));
    json_decref(info);
    return pid > 1 && pid <= INT_MAX ? (pid_t)pid : 0;
}

/* Read bwrap's --info-fd output from fd until it holds the host pid of
 * the sandbox's pid 1. Not until EOF: a child another thread forks at the
 * wrong moment may hold a copy of the write end. 0 when bwrap ended (EOF)
 * or the deadline passed without it. */
static pid_t read_info(int fd, int64_t deadline)
{
    char buf[INFO_MAX];
    size_t len = 0;
    pid_t pid = 0;

    while (pid == 0 && len + 1 < sizeof(buf)) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int64_t left = deadline - er_time_mono_ms();
        ssize_t n;

        if (left <= 0)
            break;
        if (poll(&pfd, 1, (int)(left > 1000 ? 1000 : left)) < 0 &&
            errno != EINTR)
            break;
        if (pfd.revents == 0)
            continue;
        n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        pid = info_pid(buf, len);
    }
    return pid;
}

/* The first child of parent that runs comm, or 0. */
static pid_t child_running(pid_t parent, const char *comm)
{
    char path[96];
    char buf[256];
    char name[64];
    char *p;
    char *end;

    snprintf(path, sizeof(path), "/proc/%ld/task/%ld/children", (long)parent,
             (long)parent);
    if (er_bwrap__read_small(path, buf, sizeof(buf)) < 0)
        return 0;
    for (p = buf; *p != '\0'; p = end) {
        long pid = strtol(p, &end, 10);
        size_t n;

        if (end == p)
            break;
        snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
        if (er_bwrap__read_small(path, name, sizeof(name)) <= 0)
            continue;
        n = strcspn(name, "\n");
        name[n] = '\0';
        if (strcmp(name, comm) == 0)
            return (pid_t)pid;
    }
    return 0;
}

/* Start bwrap for the prepared <dir>/<id> and wait until a command can be
 * entered. Fills st. Returns 0 or ER_EDRIVER/ER_EIO. */
static int start(const char *id, int iddir, const struct er_bwrap_limits *lim,
                 struct er_bwrap_state *st, struct er_err *err)
{
    char ws[PATH_MAX];
    char tmp[PATH_MAX];
    char passwd[PATH_MAX];
    char group[PATH_MAX];
    char hosts[PATH_MAX];
    char reuid[32];
    char regid[32];
    char line[256];
    char ebuf[128];
    struct er_bwrap_limit_args la;
    struct usr_links links;
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_bwrap_proc_stat ps;
    struct er_bwrap_argv a = { .n = 0 };
    struct er_err perr;
    int info[2] = { -1, -1 };
    int log_fd = -1;
    int64_t deadline;
    pid_t pid;
    int rc = 0;

    if (er_bwrap__sb_path(ws, sizeof(ws), id, "workspace") != 0 ||
        er_bwrap__sb_path(tmp, sizeof(tmp), id, "tmp") != 0 ||
        er_bwrap__sb_path(passwd, sizeof(passwd), id, "passwd") != 0 ||
        er_bwrap__sb_path(group, sizeof(group), id, "group") != 0 ||
        er_bwrap__sb_path(hosts, sizeof(hosts), id, "hosts") != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "the sandbox directory path is too long");
    log_fd =
        openat(iddir, LOG_FILE,
               O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (log_fd < 0 || pipe(info) != 0 ||
        fcntl(info[0], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(info[1], F_SETFD, FD_CLOEXEC) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "cannot start sandbox %s: %s", id,
                        er_strerror(errno, ebuf, sizeof(ebuf)));
        goto out;
    }

    /* setsid -f: a session of its own, and reparented away from us. */
    er_bwrap__arg(&a, "setsid");
    er_bwrap__arg(&a, "-f");
    er_bwrap__add_limits(&a, lim, &la);
    snprintf(reuid, sizeof(reuid), "--reuid=%lu",
             (unsigned long)sandbox_uid(id));
    snprintf(regid, sizeof(regid), "--regid=%lu",
             (unsigned long)sandbox_uid(id));
    er_bwrap__arg(&a, "setpriv");
    er_bwrap__arg(&a, reuid);
    er_bwrap__arg(&a, regid);
    er_bwrap__add_all(&a, setpriv_host);
    er_bwrap__add_all(&a, bwrap_head);
    add_usr_links(&a, &links);
    er_bwrap__add_all(&a, bwrap_dev);
    er_bwrap__arg(&a, "--ro-bind");
    er_bwrap__arg(&a, passwd);
    er_bwrap__arg(&a, "/etc/passwd");
    er_bwrap__arg(&a, "--ro-bind");
    er_bwrap__arg(&a, group);
    er_bwrap__arg(&a, "/etc/group");
    er_bwrap__arg(&a, "--ro-bind");
    er_bwrap__arg(&a, hosts);
    er_bwrap__arg(&a, "/etc/hosts");
    er_bwrap__add_all(&a, bwrap_etc);
    er_bwrap__arg(&a, "--bind");
    er_bwrap__arg(&a, ws);
    er_bwrap__arg(&a, ER_BWRAP_WORKSPACE);
    er_bwrap__arg(&a, "--bind");
    er_bwrap__arg(&a, tmp);
    er_bwrap__arg(&a, "/tmp");
    er_bwrap__add_all(&a, bwrap_tail);

    er_proc_opts_init(&opts);
    opts.argv = a.v;
    opts.stdout_fd = info[1];
    opts.stderr_fd = log_fd;
    er_err_clear(&perr);
    rc = er_proc_spawn(&opts, &pid, &perr);
    close(info[1]);
    info[1] = -1;
    if (rc != 0) {
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "bwrap would not start: %s", perr.msg);
        goto out;
    }
    /* setsid's parent exits as soon as it has forked. */
    memset(&res, 0, sizeof(res));
    rc = er_proc_wait(pid, START_WAIT_MS, &res, err);
    if (rc != 0)
        goto out;
    if (res.exit_code != 0) {
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "setsid could not start bwrap (exit code %d)",
                        res.exit_code);
        goto out;
    }
    deadline = er_time_mono_ms() + START_WAIT_MS;
    st->init_pid = read_info(info[0], deadline);
    /* bwrap's pid 1 forks the init once the sandbox is set up: the
     * sandbox is ready when `sleep` runs under it. */
    while (st->init_pid > 0 &&
           er_bwrap__proc_stat_read(st->init_pid, &ps) == 0 &&
           ps.state != 'Z' && child_running(st->init_pid, "sleep") == 0 &&
           er_time_mono_ms() < deadline)
        er_bwrap__sleep_ms(1);
    if (st->init_pid <= 0 || er_bwrap__proc_stat_read(st->init_pid, &ps) != 0 ||
        ps.state == 'Z' || child_running(st->init_pid, "sleep") == 0) {
        log_line(id, line, sizeof(line));
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "bwrap would not start%s%s",
                        line[0] != '\0' ? ": " : " (no message)", line);
        goto out;
    }
    st->init_start = ps.start;
    st->mon_pid = ps.ppid;
    if (er_bwrap__proc_stat_read(st->mon_pid, &ps) != 0) {
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                        "the bwrap process of sandbox %s ended at once", id);
        goto out;
    }
    st->mon_start = ps.start;
    if (lim != NULL)
        st->lim = *lim;
    else
        memset(&st->lim, 0, sizeof(st->lim));
    if (er_bwrap__state_write(iddir, st) != 0)
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "cannot record the state of sandbox %s: %s", id,
                        er_strerror(errno, ebuf, sizeof(ebuf)));
out:
    if (info[0] >= 0)
        close(info[0]);
    if (info[1] >= 0)
        close(info[1]);
    if (log_fd >= 0)
        close(log_fd);
    return rc;
}

int er_bwrap_create(const char *id, const struct er_bwrap_limits *lim,
                    struct er_err *err)
{
    char del_old[PATH_MAX] = ""; /* a dead sandbox's, moved aside */
    char del_new[PATH_MAX] = ""; /* a failed create's, moved aside */
    char pid_text[24];
    char ms_text[24];
    struct er_bwrap_state st;
    struct er_err terr;
    int64_t t0 = er_time_mono_ms();
    int lock_fd = -1;
    int basefd = -1;
    int iddir = -1;
    int rc;

    if (!er_bwrap_id_is_valid(id))
        return er_bwrap__bad_id(err);
    rc = check_programs(err);
    if (rc != 0)
        return rc;
    rc = base_prepare(err);
    if (rc != 0)
        return rc;
    lock_fd = er_bwrap__base_lock(err);
    if (lock_fd < 0)
        return ER_EIO;
    basefd = lock_fd;
    switch (er_bwrap__inspect(basefd, id, &iddir)) {
    case ER_BWRAP_FOUND_OURS:
        if (er_bwrap__state_read(iddir, &st) == 0 &&
            er_bwrap__proc_is(st.init_pid, st.init_start)) {
            /* A replayed acquire: the sandbox its first attempt made. */
            snprintf(pid_text, sizeof(pid_text), "%ld", (long)st.init_pid);
            er_log_kv(ER_LOG_INFO, FAC, "sandbox adopted", "sandbox", id,
                      "init_pid", pid_text, NULL);
            goto out;
        }
        /* Left by a create or a sandbox that died: start again. */
        rc = er_bwrap__teardown(id, iddir, del_old, sizeof(del_old), err);
        if (rc != 0)
            goto out;
        close(iddir);
        iddir = -1;
        break;
    case ER_BWRAP_FOUND_NONE:
        break;
    case ER_BWRAP_FOUND_FOREIGN:
        rc = er_bwrap__foreign(id, err);
        goto out;
    }
    rc = make_tree(id, err);
    if (rc != 0)
        goto out;
    iddir = er_bwrap__open_sandbox(basefd, id);
    if (iddir < 0) {
        rc = er_bwrap__foreign(id, err);
        goto out;
    }
    memset(&st, 0, sizeof(st));
    rc = start(id, iddir, lim, &st, err);
    if (rc != 0) {
        /* Nothing of a failed create is left. */
        er_err_clear(&terr);
        if (er_bwrap__teardown(id, iddir, del_new, sizeof(del_new), &terr) != 0)
            ER_LOG_WARN(FAC, "sandbox %s not cleaned up: %s", id, terr.msg);
        goto out;
    }
    snprintf(pid_text, sizeof(pid_text), "%ld", (long)st.init_pid);
    snprintf(ms_text, sizeof(ms_text), "%lld",
             (long long)(er_time_mono_ms() - t0));
    er_log_kv(ER_LOG_INFO, FAC, "sandbox created", "sandbox", id, "init_pid",
              pid_text, "ms", ms_text, NULL);
out:
    if (iddir >= 0)
        close(iddir);
    if (lock_fd >= 0)
        close(lock_fd); /* also releases the lock */
    /* The lock is gone: a big old workspace holds up no one. */
    if (del_old[0] != '\0' && er_bwrap__remove_tree(del_old) != 0)
        ER_LOG_WARN(FAC, "cannot remove %s (the sweep will retry)", del_old);
    if (del_new[0] != '\0' && er_bwrap__remove_tree(del_new) != 0)
        ER_LOG_WARN(FAC, "cannot remove %s (the sweep will retry)", del_new);
    return rc;
}

/* ---------------------------------------------------------------- probe */

int er_bwrap_probe(struct er_err *err)
{
    static const char *const true_argv[] = { "true", NULL };
    struct er_driver_exec_result res;
    struct er_err e;
    char uuid[37];
    char id[ER_BWRAP_ID_LEN + 1];
    char why[ER_ERR_MSG_MAX] = "";
    size_t i;
    size_t j = 0;

    if (er_uuid_v4(uuid) != 0)
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "bwrap sandboxes cannot run here: no random id");
    for (i = 0; uuid[i] != '\0' && j < ER_BWRAP_ID_LEN; i++) {
        if (uuid[i] != '-')
            id[j++] = uuid[i];
    }
    id[j] = '\0';
    er_err_clear(&e);
    if (er_bwrap_create(id, NULL, &e) != 0)
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "bwrap sandboxes cannot run here: %s", e.msg);
    if (er_bwrap_exec_fd(id, true_argv, NULL, -1, START_WAIT_MS, &res, &e) != 0)
        snprintf(why, sizeof(why), "%s", e.msg);
    else if (res.exit_code != 0)
        snprintf(why, sizeof(why), "`true` exited with %d: %.120s",
                 res.exit_code, res.err_text != NULL ? res.err_text : "");
    er_driver_exec_result_fini(&res);
    er_err_clear(&e);
    if (er_bwrap_destroy(id, &e) != 0 && why[0] == '\0')
        snprintf(why, sizeof(why), "%s", e.msg);
    if (why[0] != '\0')
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_NONE,
                          "bwrap sandboxes cannot run here: %s", why);
    return 0;
}
