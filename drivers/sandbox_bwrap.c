/* sandbox_bwrap: bubblewrap sandboxes on this host (sandbox_int.h, bwrap
 * section): make one that outlives the worker process, enter it, end it.
 * Thread-safe: no state but the directory (set once at start-up); creates
 * and destroys serialise on a lock of that directory. Owns nothing between
 * calls: a sandbox is <dir>/<id>/ plus its processes. This file holds the
 * layout, the marker and state files, /proc, the lock, destroy and sweep;
 * bwrap_create.c makes a sandbox, bwrap_exec.c enters one (bwrap_int.h).
 *
 * Why it is built this way:
 * - Users. bwrap does not run as root: the worker (root) starts it through
 *   setpriv as an unprivileged host uid of the sandbox's own
 *   (UID_BASE + the first 28 bits of the id). Inside, that uid is
 *   0 of the sandbox's user namespace, with every capability dropped (the
 *   bounding set too) and no_new_privs. A host uid of its own matters:
 *   RLIMIT_NPROC is not enforced for host root (the kernel exempts
 *   INIT_USER even inside a user namespace), and with one uid per sandbox
 *   the count is the sandbox's alone. Root inside rather than an ordinary
 *   uid because bwrap maps exactly one uid, and entering a command into a
 *   PID namespace of its own (below) needs CAP_SYS_ADMIN in the sandbox's
 *   user namespace until the last step drops it. The directory holding the
 *   sandbox must therefore be searchable by that uid: <dir> gets o+x and
 *   <dir>/<id> is 0711 (no listing); workspace/ and tmp/ are 0700 and
 *   belong to the sandbox uid; the marker, state and log files are root's.
 *   So the worker must run as root: unprivileged, the sandbox would share
 *   the worker's uid (and RLIMIT_NPROC count), nsenter could not enter the
 *   namespaces of --disable-userns, nor drop its supplementary groups.
 * - Outliving the worker. bwrap starts under `setsid -f` (its own session,
 *   reparented away from the worker) without --die-with-parent; its pid 1
 *   is bwrap's reaper with `sleep infinity` under it. The host pids of that
 *   pid 1 and of the bwrap parent, with their start times (/proc/<pid>/stat
 *   field 22), are kept in <dir>/<id>/state, so a recycled pid is never
 *   taken for the sandbox.
 * - Entering. nsenter (host root, minimal environment: never the
 *   request's, which could carry LD_PRELOAD) joins the user, mount, UTS,
 *   IPC, network, cgroup and PID namespaces and the root of the sandbox's
 *   pid 1; setpriv --pdeathsig KILL ties the rest to nsenter's life; then
 *   `unshare --pid --fork --kill-child --mount-proc` makes a PID namespace
 *   for the command; setpriv drops the bounding, inheritable and ambient
 *   capabilities and sets no_new_privs; setsid; `env -i -C <cwd>` sets
 *   exactly the requested environment (the host-side tools never see it).
 *   The cwd is set by env inside: nsenter's --wd=<dir> would open <dir> on
 *   the host, before entering.
 * - Limits. prlimit sets RLIMIT_AS, RLIMIT_NPROC and RLIMIT_CPU on bwrap
 *   (so on everything in the sandbox) and on every nsenter; they are kept
 *   in the state file for the execs. The kernel (>= 5.14) also keeps
 *   bwrap's RLIMIT_NPROC as the cap of its user namespace's process count,
 *   so the cap holds for the whole sandbox whatever a process's own limit.
 * - Killing a command's tree. On the deadline or cancellation er_proc
 *   sends SIGTERM to nsenter's process group: nsenter dies, its child gets
 *   SIGKILL (pdeathsig), whose death SIGKILLs the command's PID namespace
 *   init (--kill-child), and the kernel kills everything in that
 *   namespace, daemons that called setsid included.
 * - Destroy SIGKILLs the sandbox's pid 1 (which ends its PID namespace)
 *   and the bwrap parent, plus any bwrap whose arguments name this
 *   sandbox's workspace (a create that died before writing its state),
 *   waits until they are gone, renames <dir>/<id> aside under the lock and
 *   removes it without following symlinks, the marker last. */
/* nftw() is an X/Open System Interface, not base POSIX. */
#define _XOPEN_SOURCE 700

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "drivers/bwrap_int.h"

#define FAC "driver.bwrap"

#define DEFAULT_DIR  "/var/lib/envrun/sandboxes"
#define STATE        "state"
#define STATE_TMP    "state.tmp"
#define KILL_WAIT_MS 10000 /* SIGKILL until the processes are gone */
#define TEMP_AGE_S   60    /* a .new- directory older than this is dead */
#define DEL_PREFIX   ".del-"

static char sandbox_dir[PATH_MAX] = DEFAULT_DIR;

/* A process and its start time (clock ticks after boot). */
struct proc_id {
    pid_t pid;
    unsigned long long start;
};

void er_bwrap_set_dir(const char *dir)
{
    snprintf(sandbox_dir, sizeof(sandbox_dir), "%s",
             dir != NULL && dir[0] != '\0' ? dir : DEFAULT_DIR);
}

const char *er_bwrap_dir(void)
{
    return sandbox_dir;
}

bool er_bwrap_id_is_valid(const char *id)
{
    size_t i;

    if (id == NULL)
        return false;
    for (i = 0; i < ER_BWRAP_ID_LEN; i++) {
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    }
    return id[ER_BWRAP_ID_LEN] == '\0';
}

int er_bwrap__bad_id(struct er_err *err)
{
    return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                      "a sandbox id must be 16 lowercase hex digits");
}

/* Concatenate the strings that follow (up to a NULL) into out. 0, or
 * ER_E2BIG with out "". */
ER_NODISCARD int er_bwrap__join(char *out, size_t out_len, ...)
{
    const char *part;
    size_t len = 0;
    va_list ap;

    va_start(ap, out_len);
    while ((part = va_arg(ap, const char *)) != NULL) {
        size_t n = strlen(part);

        if (len + n >= out_len) {
            va_end(ap);
            out[0] = '\0';
            return ER_E2BIG;
        }
        memcpy(out + len, part, n);
        len += n;
    }
    va_end(ap);
    out[len] = '\0';
    return 0;
}

/* "<dir>/<id>" or "<dir>/<id>/<leaf>" into out. 0 or ER_E2BIG. */
ER_NODISCARD int er_bwrap__sb_path(char *out, size_t out_len, const char *id,
                                   const char *leaf)
{
    return er_bwrap__join(out, out_len, sandbox_dir, "/", id,
                          leaf != NULL ? "/" : "", leaf != NULL ? leaf : "",
                          (const char *)NULL);
}

int er_bwrap_workspace_path(const char *id, char *out, size_t out_len)
{
    if (out_len > 0)
        out[0] = '\0';
    if (!er_bwrap_id_is_valid(id))
        return ER_EINVAL;
    return er_bwrap__sb_path(out, out_len, id, "workspace");
}

void er_bwrap__sleep_ms(long ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        continue;
}

/* Read a small file (at most buf_len - 1 bytes) at dirfd/name without
 * following a symlink; NUL-terminated. Returns the length or -1. */
static ssize_t read_small_at(int dirfd, const char *name, char *buf,
                             size_t buf_len)
{
    size_t len = 0;
    ssize_t n;
    int fd;

    fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -1;
    while (len + 1 < buf_len) {
        n = read(fd, buf + len, buf_len - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return (ssize_t)len;
}

ssize_t er_bwrap__read_small(const char *path, char *buf, size_t buf_len)
{
    return read_small_at(AT_FDCWD, path, buf, buf_len);
}

/* Write content to a new file dirfd/name with mode. 0 or -1 (errno). */
ER_NODISCARD int er_bwrap__write_new_at(int dirfd, const char *name,
                                        const char *content, mode_t mode)
{
    size_t len = strlen(content);
    size_t off = 0;
    ssize_t n;
    int fd;
    int e;

    fd = openat(dirfd, name,
                O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return -1;
    while (off < len) {
        n = write(fd, content + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        off += (size_t)n;
    }
    /* The umask may have taken bits the sandbox needs (0644 files). */
    if (fchmod(fd, mode) != 0 || close(fd) != 0)
        return -1;
    return 0;
}

/* ---------------------------------------------------------------- /proc */

/* Parse /proc/<pid>/stat. 0, or -1 when the process does not exist. */
int er_bwrap__proc_stat_read(pid_t pid, struct er_bwrap_proc_stat *ps)
{
    char path[64];
    char buf[1024];
    char *p;
    char *end;
    int field;

    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    if (er_bwrap__read_small(path, buf, sizeof(buf)) <= 0)
        return -1;
    /* comm (field 2) may hold spaces and parentheses: skip to the last
     * ')'. Field 3, the state, follows it. */
    p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ' || p[2] == '\0')
        return -1;
    p += 2;
    ps->state = *p;
    for (field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL)
            return -1;
        p++;
        if (field + 1 == 4)
            ps->ppid = (pid_t)strtol(p, NULL, 10);
    }
    errno = 0;
    ps->start = strtoull(p, &end, 10);
    if (end == p || errno != 0)
        return -1;
    return 0;
}

/* Whether pid runs (not a zombie) and started at start. */
bool er_bwrap__proc_is(pid_t pid, unsigned long long start)
{
    struct er_bwrap_proc_stat ps;

    if (pid <= 1 || er_bwrap__proc_stat_read(pid, &ps) != 0)
        return false;
    return ps.start == start && ps.state != 'Z' && ps.state != 'X';
}

/* Whether /proc/<pid>/cmdline has an argument equal to arg. */
static bool cmdline_has(pid_t pid, const char *arg)
{
    static _Thread_local char buf[32768]; /* bwrap's arguments, paths too */
    char path[64];
    size_t arg_len = strlen(arg);
    ssize_t n;
    ssize_t i = 0;

    snprintf(path, sizeof(path), "/proc/%ld/cmdline", (long)pid);
    n = er_bwrap__read_small(path, buf, sizeof(buf));
    while (i < n) {
        size_t len = strlen(buf + i);

        if (len == arg_len && memcmp(buf + i, arg, len) == 0)
            return true;
        i += (ssize_t)len + 1;
    }
    return false;
}

/* Add the bwrap processes on this host whose arguments name ws_path (the
 * sandbox's workspace) to ids (at most max; *cnt is updated). This finds
 * the sandbox of a create that died before it wrote the state file. */
static void find_bwraps(const char *ws_path, struct proc_id *ids, size_t max,
                        size_t *cnt)
{
    struct dirent *de;
    DIR *dir;

    dir = opendir("/proc");
    if (dir == NULL)
        return;
    while ((de = readdir(dir)) != NULL && *cnt < max) {
        char path[64];
        char comm[64];
        struct er_bwrap_proc_stat ps;
        char *end;
        long pid;

        pid = strtol(de->d_name, &end, 10);
        if (end == de->d_name || *end != '\0' || pid <= 1 || pid > INT_MAX)
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
        if (er_bwrap__read_small(path, comm, sizeof(comm)) <= 0 ||
            strcmp(comm, "bwrap\n") != 0)
            continue;
        if (!cmdline_has((pid_t)pid, ws_path) ||
            er_bwrap__proc_stat_read((pid_t)pid, &ps) != 0)
            continue;
        ids[*cnt].pid = (pid_t)pid;
        ids[*cnt].start = ps.start;
        (*cnt)++;
    }
    closedir(dir);
}

/* ------------------------------------------------------ marker and state */

/* The marker's exact content for id. */
void er_bwrap__marker_text(const char *id, char *out, size_t out_len)
{
    snprintf(out, out_len, "envrun-bwrap\ninstallation=%s\nid=%s\n",
             er_driver_installation(), id);
}

/* Whether directory dirfd carries this installation's marker for id. */
static bool marker_is_ours(int dirfd, const char *id)
{
    char want[160];
    char have[160];

    er_bwrap__marker_text(id, want, sizeof(want));
    if (read_small_at(dirfd, ER_BWRAP_MARKER, have, sizeof(have)) < 0)
        return false;
    return strcmp(want, have) == 0;
}

int er_bwrap__state_read(int iddir, struct er_bwrap_state *st)
{
    char buf[256];
    long long v[7];
    char *p = buf;
    char *end;
    int i;

    if (read_small_at(iddir, STATE, buf, sizeof(buf)) <= 0)
        return -1;
    for (i = 0; i < 7; i++) {
        errno = 0;
        v[i] = strtoll(p, &end, 10);
        if (end == p || errno != 0 || v[i] < 0)
            return -1;
        p = end;
    }
    if (v[0] <= 1 || v[2] <= 1 || v[0] > INT_MAX || v[2] > INT_MAX)
        return -1;
    st->init_pid = (pid_t)v[0];
    st->init_start = (unsigned long long)v[1];
    st->mon_pid = (pid_t)v[2];
    st->mon_start = (unsigned long long)v[3];
    st->lim.memory_bytes = v[4];
    st->lim.processes = v[5];
    st->lim.cpu_seconds = v[6];
    return 0;
}

/* Write the state file atomically (a reader sees all of it or none). */
ER_NODISCARD int er_bwrap__state_write(int iddir,
                                       const struct er_bwrap_state *st)
{
    char buf[256];

    snprintf(buf, sizeof(buf), "%ld %llu %ld %llu %lld %lld %lld\n",
             (long)st->init_pid, st->init_start, (long)st->mon_pid,
             st->mon_start, (long long)st->lim.memory_bytes,
             (long long)st->lim.processes, (long long)st->lim.cpu_seconds);
    unlinkat(iddir, STATE_TMP, 0);
    if (er_bwrap__write_new_at(iddir, STATE_TMP, buf, 0644) != 0)
        return -1;
    return renameat(iddir, STATE_TMP, iddir, STATE);
}

/* Open <dir>/<id> without following a symlink at <id>: the fd, or -1 with
 * errno (ENOENT when there is none). */
int er_bwrap__open_sandbox(int basefd, const char *id)
{
    return openat(basefd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

static int open_base(void)
{
    return open(sandbox_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* Read the state of a sandbox and check its init runs. */
bool er_bwrap__sandbox_state(const char *id, struct er_bwrap_state *st)
{
    int basefd = -1;
    int iddir = -1;
    bool is_alive = false;

    basefd = open_base();
    if (basefd < 0)
        return false;
    iddir = er_bwrap__open_sandbox(basefd, id);
    if (iddir >= 0 && er_bwrap__state_read(iddir, st) == 0)
        is_alive = er_bwrap__proc_is(st->init_pid, st->init_start);
    if (iddir >= 0)
        close(iddir);
    close(basefd);
    return is_alive;
}

bool er_bwrap_is_alive(const char *id)
{
    struct er_bwrap_state st;

    if (!er_bwrap_id_is_valid(id))
        return false;
    return er_bwrap__sandbox_state(id, &st);
}

/* ------------------------------------------------------- the directories */

/* Take the lock that serialises creates and destroys on this host: the
 * locked fd of the base directory, or -1. flock, not fcntl: its locks
 * belong to the open file, so they also exclude threads of one process. */
int er_bwrap__base_lock(struct er_err *err)
{
    char ebuf[128];
    int fd;

    fd = open_base();
    if (fd < 0) {
        er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                   "cannot open the sandbox directory %s: %s", sandbox_dir,
                   er_strerror(errno, ebuf, sizeof(ebuf)));
        return -1;
    }
    while (flock(fd, LOCK_EX) != 0) {
        if (errno == EINTR)
            continue;
        er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                   "cannot lock the sandbox directory %s: %s", sandbox_dir,
                   er_strerror(errno, ebuf, sizeof(ebuf)));
        close(fd);
        return -1;
    }
    return fd;
}

/* nftw offers no argument to its callback: whether anything failed, per
 * thread. */
static _Thread_local int rm_failures;

static int rm_one(const char *path, const struct stat *sb, int flag,
                  struct FTW *ftw)
{
    int rc;

    (void)sb;
    /* The top and its marker go last (er_bwrap__remove_tree), so a removal cut
     * short leaves a directory the sweep still recognises. */
    if (ftw->level == 0)
        return 0;
    if (ftw->level == 1 && strcmp(path + ftw->base, ER_BWRAP_MARKER) == 0)
        return 0;
    if (flag == FTW_DP || flag == FTW_D || flag == FTW_DNR)
        rc = rmdir(path);
    else
        rc = unlink(path);
    if (rc != 0 && errno != ENOENT)
        rm_failures++;
    return 0;
}

/* Remove the tree at path (which carries our marker) without following a
 * symlink or crossing into another file system. 0 or -1. */
int er_bwrap__remove_tree(const char *path)
{
    char marker[PATH_MAX];
    int rc;

    rm_failures = 0;
    rc = nftw(path, rm_one, 16, FTW_PHYS | FTW_DEPTH | FTW_MOUNT);
    if (rc != 0 && errno == ENOENT)
        return 0;
    if (rc != 0 || rm_failures != 0)
        return -1;
    if (er_bwrap__join(marker, sizeof(marker), path, "/" ER_BWRAP_MARKER,
                       (const char *)NULL) != 0 ||
        (unlink(marker) != 0 && errno != ENOENT))
        return -1;
    if (rmdir(path) != 0 && errno != ENOENT)
        return -1;
    return 0;
}

/* Kill every process of sandbox id and wait until they are gone. The
 * sandbox's pid 1 first: its death ends its PID namespace, the commands
 * entered into it included. Returns 0 or ER_EIO. */
static int kill_sandbox(const char *id, int iddir, struct er_err *err)
{
    struct proc_id ids[16];
    char ws[PATH_MAX];
    struct er_bwrap_state st;
    size_t cnt = 0;
    size_t i;
    int64_t deadline;
    bool is_any;

    if (er_bwrap__state_read(iddir, &st) == 0) {
        ids[cnt].pid = st.init_pid;
        ids[cnt++].start = st.init_start;
        ids[cnt].pid = st.mon_pid;
        ids[cnt++].start = st.mon_start;
    }
    if (er_bwrap__sb_path(ws, sizeof(ws), id, "workspace") == 0)
        find_bwraps(ws, ids, sizeof(ids) / sizeof(ids[0]), &cnt);
    for (i = 0; i < cnt; i++) {
        /* Checked right before the signal, so a recycled pid is spared. */
        if (er_bwrap__proc_is(ids[i].pid, ids[i].start))
            kill(ids[i].pid, SIGKILL);
    }
    deadline = er_time_mono_ms() + KILL_WAIT_MS;
    for (;;) {
        is_any = false;
        for (i = 0; i < cnt; i++)
            is_any = is_any || er_bwrap__proc_is(ids[i].pid, ids[i].start);
        if (!is_any)
            return 0;
        if (er_time_mono_ms() >= deadline)
            break;
        er_bwrap__sleep_ms(5);
    }
    return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                      "the processes of sandbox %s did not end", id);
}

/* Rename <dir>/<id> to a fresh <dir>/.del-<id>-XXXXXX (written to
 * del_path), so a new sandbox of the same id can be made while the old
 * tree is removed. Returns 0 or ER_EIO. */
static int retire(const char *id, char *del_path, size_t del_len,
                  struct er_err *err)
{
    char path[PATH_MAX];
    char ebuf[128];

    if (er_bwrap__join(del_path, del_len, sandbox_dir, "/" DEL_PREFIX, id,
                       "-XXXXXX", (const char *)NULL) != 0 ||
        er_bwrap__sb_path(path, sizeof(path), id, NULL) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "the sandbox directory path is too long");
    /* An empty directory reserves the name; rename replaces it. */
    if (mkdtemp(del_path) == NULL) {
        del_path[0] = '\0';
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "cannot move sandbox %s aside: %s", id,
                          er_strerror(errno, ebuf, sizeof(ebuf)));
    }
    if (rename(path, del_path) != 0) {
        int e = errno;

        rmdir(del_path);
        del_path[0] = '\0';
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "cannot move sandbox %s aside: %s", id,
                          er_strerror(e, ebuf, sizeof(ebuf)));
    }
    return 0;
}

enum er_bwrap_found er_bwrap__inspect(int basefd, const char *id, int *iddir)
{
    struct stat st;

    *iddir = -1;
    if (fstatat(basefd, id, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? ER_BWRAP_FOUND_NONE : ER_BWRAP_FOUND_FOREIGN;
    if (!S_ISDIR(st.st_mode))
        return ER_BWRAP_FOUND_FOREIGN;
    *iddir = er_bwrap__open_sandbox(basefd, id);
    if (*iddir < 0 || !marker_is_ours(*iddir, id))
        return ER_BWRAP_FOUND_FOREIGN;
    return ER_BWRAP_FOUND_OURS;
}

int er_bwrap__foreign(const char *id, struct er_err *err)
{
    return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                      "%s/%s exists and is not a sandbox of this "
                      "installation",
                      sandbox_dir, id);
}

/* Kill what is left of sandbox id and move its directory aside (under the
 * lock); del_path gets the directory to remove once the lock is gone. */
int er_bwrap__teardown(const char *id, int iddir, char *del_path,
                       size_t del_len, struct er_err *err)
{
    int rc;

    del_path[0] = '\0';
    rc = kill_sandbox(id, iddir, err);
    if (rc != 0)
        return rc;
    return retire(id, del_path, del_len, err);
}

/* ------------------------------------------------------- destroy, sweep */

int er_bwrap_destroy(const char *id, struct er_err *err)
{
    char del_path[PATH_MAX] = "";
    int lock_fd = -1;
    int iddir = -1;
    int rc = 0;

    if (!er_bwrap_id_is_valid(id))
        return er_bwrap__bad_id(err);
    lock_fd = open_base();
    if (lock_fd < 0 && errno == ENOENT)
        return 0; /* no directory, no sandboxes */
    if (lock_fd >= 0)
        close(lock_fd);
    lock_fd = er_bwrap__base_lock(err);
    if (lock_fd < 0)
        return ER_EIO;
    switch (er_bwrap__inspect(lock_fd, id, &iddir)) {
    case ER_BWRAP_FOUND_NONE:
        goto out;
    case ER_BWRAP_FOUND_FOREIGN:
        rc = er_bwrap__foreign(id, err);
        goto out;
    case ER_BWRAP_FOUND_OURS:
        break;
    }
    rc = er_bwrap__teardown(id, iddir, del_path, sizeof(del_path), err);
    if (rc == 0)
        er_log_kv(ER_LOG_INFO, FAC, "sandbox destroyed", "sandbox", id, NULL);
out:
    if (iddir >= 0)
        close(iddir);
    close(lock_fd);
    /* The lock is gone: a big workspace does not hold up other sandboxes. */
    if (del_path[0] != '\0' && er_bwrap__remove_tree(del_path) != 0)
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "cannot remove the directory of sandbox %s", id);
    return rc;
}

/* A leftover ".new-<id>-XXXXXX" or ".del-<id>-XXXXXX" directory of ours:
 * removed (a .new- one only when old, as a create may be filling it). */
static void sweep_leftover(int basefd, const char *name, bool is_new)
{
    char id[ER_BWRAP_ID_LEN + 1];
    char path[PATH_MAX];
    struct stat st;
    int fd;

    if (strlen(name) != 5 + ER_BWRAP_ID_LEN + 7 ||
        name[5 + ER_BWRAP_ID_LEN] != '-')
        return;
    memcpy(id, name + 5, ER_BWRAP_ID_LEN);
    id[ER_BWRAP_ID_LEN] = '\0';
    if (!er_bwrap_id_is_valid(id) ||
        fstatat(basefd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISDIR(st.st_mode))
        return;
    if (is_new && time(NULL) - st.st_mtime < TEMP_AGE_S)
        return;
    if (er_bwrap__join(path, sizeof(path), sandbox_dir, "/", name,
                       (const char *)NULL) != 0)
        return;
    fd = openat(basefd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    if (!marker_is_ours(fd, id)) {
        /* An empty one may be a create's or destroy's that died before it
         * wrote anything; rmdir removes nothing else. */
        unlinkat(basefd, name, AT_REMOVEDIR);
    } else if (er_bwrap__remove_tree(path) != 0) {
        ER_LOG_WARN(FAC, "cannot remove %s", path);
    }
    close(fd);
}

void er_bwrap_sweep(er_driver_in_use_fn *is_in_use, void *arg)
{
    struct er_err err;
    struct dirent *de;
    DIR *dir = NULL;
    int basefd;

    basefd = open_base();
    if (basefd < 0)
        return;
    dir = fdopendir(basefd);
    if (dir == NULL) {
        close(basefd);
        return;
    }
    while ((de = readdir(dir)) != NULL) {
        int iddir = -1;
        enum er_bwrap_found f;

        if (strncmp(de->d_name, ER_BWRAP_NEW_PREFIX, 5) == 0 ||
            strncmp(de->d_name, DEL_PREFIX, 5) == 0) {
            sweep_leftover(basefd, de->d_name, de->d_name[1] == 'n');
            continue;
        }
        if (!er_bwrap_id_is_valid(de->d_name))
            continue;
        f = er_bwrap__inspect(basefd, de->d_name, &iddir);
        if (iddir >= 0)
            close(iddir);
        if (f != ER_BWRAP_FOUND_OURS || is_in_use(de->d_name, arg))
            continue;
        er_err_clear(&err);
        if (er_bwrap_destroy(de->d_name, &err) != 0)
            ER_LOG_WARN(FAC, "sweep: sandbox %s not destroyed: %s", de->d_name,
                        err.msg);
    }
    closedir(dir); /* closes basefd */
}
