/* proc: run a program as a child process without a shell (driver.h, proc
 * section). Thread-safe: no global state; each call owns its pipes and its
 * child, and blocks SIGPIPE in the calling thread only while it runs. */
#define _GNU_SOURCE /* close_range, SYS_pidfd_open */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "drivers/driver.h"

/* Descriptors above this are not closed in the child: closing up to a
 * huge RLIMIT_NOFILE would cost a system call each per spawn. */
#define CLOSE_FD_LIMIT 65536
/* How often a running child is checked while its pipes stay open. */
#define REAP_POLL_MS   100

/* The environment of a child whose caller gives none (STYLE.md 7a): never
 * the worker's own, which holds ENVRUN_DATABASE_URL and secret variables.
 * No HOME: ssh finds its files through the password database, tar needs
 * none, and callers whose program reads HOME (git) build their own list
 * with a harmless one. */
static const char *const minimal_env[] = {
    "PATH=" ER_PROC_PATH,
    "LANG=C.UTF-8",
    NULL,
};

/* What the child reports through the exec-error pipe. */
enum child_stage {
    STAGE_CHDIR = 1,
    STAGE_EXEC = 2,
    STAGE_FDS = 3,
    STAGE_ENTER = 4,
};

struct child_plan {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int fds[3]; /* become the child's 0, 1, 2 */
    int errpipe;
    int max_fd;
    const struct er_proc_enter *enter; /* NULL: none */
};

void er_proc_opts_init(struct er_proc_opts *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->stdin_fd = -1;
    opts->stdout_fd = -1;
    opts->stderr_fd = -1;
}

void er_proc_result_fini(struct er_proc_result *res)
{
    er_free(res->out);
    res->out = NULL;
    res->out_len = 0;
    er_free(res->err_text);
    res->err_text = NULL;
    res->err_len = 0;
}

void er_proc_signal_name(int sig, char *buf, size_t buf_len)
{
    static const struct {
        int sig;
        const char *name;
    } names[] = {
        { SIGHUP, "SIGHUP" },   { SIGINT, "SIGINT" },   { SIGQUIT, "SIGQUIT" },
        { SIGILL, "SIGILL" },   { SIGTRAP, "SIGTRAP" }, { SIGABRT, "SIGABRT" },
        { SIGBUS, "SIGBUS" },   { SIGFPE, "SIGFPE" },   { SIGKILL, "SIGKILL" },
        { SIGUSR1, "SIGUSR1" }, { SIGSEGV, "SIGSEGV" }, { SIGUSR2, "SIGUSR2" },
        { SIGPIPE, "SIGPIPE" }, { SIGALRM, "SIGALRM" }, { SIGTERM, "SIGTERM" },
        { SIGCHLD, "SIGCHLD" }, { SIGCONT, "SIGCONT" }, { SIGSTOP, "SIGSTOP" },
        { SIGTSTP, "SIGTSTP" }, { SIGTTIN, "SIGTTIN" }, { SIGTTOU, "SIGTTOU" },
        { SIGXCPU, "SIGXCPU" }, { SIGXFSZ, "SIGXFSZ" }, { SIGSYS, "SIGSYS" },
    };
    size_t i;

    if (sig == 0) {
        snprintf(buf, buf_len, "%s", "");
        return;
    }
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (names[i].sig == sig) {
            snprintf(buf, buf_len, "%s", names[i].name);
            return;
        }
    }
    snprintf(buf, buf_len, "SIG%d", sig);
}

static int64_t mono_ms(void)
{
    return er_time_mono_ms();
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        continue;
}

static int set_flag(int fd, int get, int set, int flag)
{
    int flags = fcntl(fd, get);

    if (flags < 0)
        return -1;
    return fcntl(fd, set, flags | flag);
}

/* A pipe whose both ends close on exec. */
static int make_pipe(int fds[2])
{
    if (pipe(fds) != 0)
        return -1;
    if (set_flag(fds[0], F_GETFD, F_SETFD, FD_CLOEXEC) != 0 ||
        set_flag(fds[1], F_GETFD, F_SETFD, FD_CLOEXEC) != 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    return 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* The program to exec: argv[0] itself when it has a slash, else the first
 * executable regular file of that name on the worker's PATH. Written to
 * path (path_len bytes). Returns 0 or -1 when not found. */
static int find_program(const char *name, char *path, size_t path_len)
{
    const char *dirs = getenv("PATH");
    const char *p;

    if (strchr(name, '/') != NULL) {
        snprintf(path, path_len, "%s", name);
        return 0;
    }
    if (dirs == NULL || dirs[0] == '\0')
        dirs = "/usr/local/bin:/usr/bin:/bin";
    p = dirs;
    while (p != NULL) {
        const char *end = strchr(p, ':');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        struct stat st;
        int len;

        len = snprintf(path, path_len, "%.*s/%s", (int)(n == 0 ? 1 : n),
                       n == 0 ? "." : p, name);
        if (len > 0 && (size_t)len < path_len && stat(path, &st) == 0 &&
            S_ISREG(st.st_mode) && access(path, X_OK) == 0)
            return 0;
        p = end != NULL ? end + 1 : NULL;
    }
    return -1;
}

/* Tell the parent why the child could not start, then exit. Runs in the
 * child after fork: async-signal-safe calls only. */
static void child_fail(int errpipe, enum child_stage stage)
{
    int msg[2];
    ssize_t n;

    msg[0] = (int)stage;
    msg[1] = errno;
    n = write(errpipe, msg, sizeof(msg));
    (void)n;
    _exit(127);
}

/* ---- entering a sandbox (er_proc_enter), in the child ---- */

#define ENTER_NS_ALL                                             \
    (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | \
     CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWPID)

static int set_limit(int resource, int64_t value)
{
    struct rlimit rl;

    if (value <= 0)
        return 0;
    rl.rlim_cur = (rlim_t)value;
    rl.rlim_max = (rlim_t)value;
    return setrlimit(resource, &rl);
}

/* In the new root as uid and gid 0: no capabilities to pass on, no new
 * privileges, death with the parent. Raw system calls: the set*id
 * wrappers of the C library coordinate threads, which a forked child has
 * none of. */
static int drop_privileges(void)
{
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    int cap;

    /* A namespace whose setgroups is "deny" keeps the groups (as
     * nsenter does). */
    if (syscall(SYS_setgroups, 0, NULL) != 0 && errno != EPERM)
        return -1;
    if (syscall(SYS_setgid, 0) != 0 || syscall(SYS_setuid, 0) != 0)
        return -1;
    for (cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL)
                break; /* past the kernel's last capability */
            return -1;
        }
    }
    if (syscall(SYS_capget, &hdr, data) != 0)
        return -1;
    data[0].inheritable = 0;
    data[1].inheritable = 0;
    if (syscall(SYS_capset, &hdr, data) != 0 ||
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 ||
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    /* Set last: a change of credentials clears it. */
    return prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
}

/* Wait for the child in the namespaces and end as it ended. */
static void pass_on_status(pid_t pid)
{
    int status = 0;

    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            _exit(127);
    }
    if (WIFSIGNALED(status)) {
        kill(getpid(), WTERMSIG(status)); /* default dispositions here */
        _exit(128 + WTERMSIG(status));
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 127);
}

/* Enter plan->enter before the exec. Returns in the process that goes on
 * to exec (a child of this one); this one waits and passes its status on.
 * Fails through child_fail. */
static void child_enter(const struct child_plan *plan, int errpipe)
{
    const struct er_proc_enter *e = plan->enter;
    pid_t pid;

    if (set_limit(RLIMIT_AS, e->memory_bytes) != 0 ||
        set_limit(RLIMIT_NPROC, e->processes) != 0 ||
        set_limit(RLIMIT_CPU, e->cpu_seconds) != 0)
        child_fail(errpipe, STAGE_ENTER);
    /* All at once, the user namespace with them; the mount namespace's
     * root becomes ours. */
    if (setns(e->pidfd, ENTER_NS_ALL) != 0 || chdir("/") != 0)
        child_fail(errpipe, STAGE_ENTER);
    pid = fork(); /* into the PID namespace */
    if (pid < 0)
        child_fail(errpipe, STAGE_ENTER);
    if (pid > 0) {
        /* Hold nothing the parent waits on: the exec pipe and the output
         * pipes end with the child that execs. */
        close(0);
        close(1);
        close(2);
        if (close_range(3, ~0U, 0) != 0) {
            int fd;

            for (fd = 3; fd < plan->max_fd; fd++)
                close(fd);
        }
        pass_on_status(pid);
    }
    if (drop_privileges() != 0)
        child_fail(errpipe, STAGE_ENTER);
}

/* The child between fork and exec: async-signal-safe calls only (the
 * worker is multi-threaded). */
static void child_exec(const struct child_plan *plan)
{
    struct sigaction sa;
    sigset_t none;
    int moved[3];
    int errpipe;
    int fd;
    int i;

    /* Our own process group, so a timeout can signal the whole tree. */
    setpgid(0, 0);
    errpipe = fcntl(plan->errpipe, F_DUPFD_CLOEXEC, 3);
    if (errpipe < 0)
        _exit(127);
    /* Move the three sources above 2 first, so no dup2 below overwrites a
     * source still needed; the copies have no close-on-exec flag. */
    for (i = 0; i < 3; i++) {
        moved[i] = fcntl(plan->fds[i], F_DUPFD, 3);
        if (moved[i] < 0)
            child_fail(errpipe, STAGE_FDS);
    }
    for (i = 0; i < 3; i++) {
        if (dup2(moved[i], i) < 0)
            child_fail(errpipe, STAGE_FDS);
    }
    /* Every other descriptor closes at exec (errpipe already does): one
     * system call (Linux 5.11), else one per possible descriptor. */
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        for (fd = 3; fd < plan->max_fd; fd++) {
            if (fd != errpipe)
                close(fd);
        }
    }
    /* Ignored signals (the worker ignores SIGPIPE) and the blocked mask
     * survive exec; the program should start with the defaults. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (i = 1; i < 65; i++) {
        if (i != SIGKILL && i != SIGSTOP)
            sigaction(i, &sa, NULL);
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (plan->enter != NULL)
        child_enter(plan, errpipe);
    if (plan->cwd != NULL && chdir(plan->cwd) != 0)
        child_fail(errpipe, STAGE_CHDIR);
    execve(plan->path, plan->argv, plan->envp);
    child_fail(errpipe, STAGE_EXEC);
}

/* Fork and exec with the given stdin/stdout/stderr descriptors (borrowed;
 * the caller closes its copies). */
static int spawn(const struct er_proc_opts *opts, const int fds[3],
                 pid_t *pid_out, struct er_err *err)
{
    struct child_plan plan;
    char path[4096];
    char ebuf[128];
    int errpipe[2] = { -1, -1 };
    int msg[2];
    ssize_t n;
    long max_fd;
    pid_t pid;
    int rc = 0;

    ER_ASSERT(opts->argv != NULL && opts->argv[0] != NULL);
    if (find_program(opts->argv[0], path, sizeof(path)) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                          "cannot run %s: not found in PATH", opts->argv[0]);
    if (make_pipe(errpipe) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                          "cannot run %s: pipe: %s", opts->argv[0],
                          er_strerror(errno, ebuf, sizeof(ebuf)));
    max_fd = sysconf(_SC_OPEN_MAX);
    if (max_fd < 0 || max_fd > CLOSE_FD_LIMIT)
        max_fd = CLOSE_FD_LIMIT;
    /* execve takes non-const arrays but does not modify them. */
    plan = (struct child_plan){
        .path = path,
        .argv = (char *const *)(uintptr_t)opts->argv,
        .envp = (char *const *)(uintptr_t)(opts->envp != NULL ? opts->envp
                                                              : minimal_env),
        .cwd = opts->cwd,
        .fds = { fds[0], fds[1], fds[2] },
        .errpipe = errpipe[1],
        .max_fd = (int)max_fd,
        .enter = opts->enter,
    };
    pid = fork();
    if (pid < 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                        "cannot run %s: fork: %s", opts->argv[0],
                        er_strerror(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    if (pid == 0)
        child_exec(&plan); /* does not return */
    /* Also from here, so a signal sent before the child ran setpgid still
     * reaches the group; EACCES after the exec is harmless. */
    setpgid(pid, pid);
    close_fd(&errpipe[1]);
    do {
        n = read(errpipe[0], msg, sizeof(msg));
    } while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(msg)) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            continue;
        if (msg[0] == STAGE_ENTER)
            rc = er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                            "cannot run %s: cannot enter the sandbox: %s",
                            opts->argv[0],
                            er_strerror(msg[1], ebuf, sizeof(ebuf)));
        else if (msg[0] == STAGE_CHDIR)
            rc = er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                            "cannot run %s: cannot change directory to %s: "
                            "%s",
                            opts->argv[0], opts->cwd,
                            er_strerror(msg[1], ebuf, sizeof(ebuf)));
        else
            rc = er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY, "cannot run %s: %s",
                            opts->argv[0],
                            er_strerror(msg[1], ebuf, sizeof(ebuf)));
        goto out;
    }
    *pid_out = pid;
out:
    close_fd(&errpipe[0]);
    close_fd(&errpipe[1]);
    return rc;
}

int er_proc_spawn(const struct er_proc_opts *opts, pid_t *pid,
                  struct er_err *err)
{
    int devnull = -1;
    int fds[3];
    char ebuf[128];
    int rc;

    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                          "cannot open /dev/null: %s",
                          er_strerror(errno, ebuf, sizeof(ebuf)));
    fds[0] = opts->stdin_fd >= 0 ? opts->stdin_fd : devnull;
    fds[1] = opts->stdout_fd >= 0 ? opts->stdout_fd : devnull;
    fds[2] = opts->stderr_fd >= 0 ? opts->stderr_fd : devnull;
    rc = spawn(opts, fds, pid, err);
    close(devnull);
    return rc;
}

static void fill_status(int status, struct er_proc_result *res)
{
    if (WIFEXITED(status)) {
        res->exit_code = WEXITSTATUS(status);
        res->signal = 0;
    } else if (WIFSIGNALED(status)) {
        res->exit_code = -1;
        res->signal = WTERMSIG(status);
    } else {
        res->exit_code = -1;
        res->signal = 0;
    }
}

/* The calling thread's cancellation flag (er_proc_set_cancel). */
static _Thread_local const atomic_bool *cancel_flag;

void er_proc_set_cancel(const atomic_bool *flag)
{
    cancel_flag = flag;
}

bool er_proc_is_cancelled(void)
{
    return cancel_flag != NULL && atomic_load(cancel_flag);
}

static void kill_group(pid_t pid, int sig)
{
    if (kill(-pid, sig) != 0)
        kill(pid, sig);
}

/* waitpid failed with errno e for pid: the child's exit status is lost
 * (SIGCHLD ignored makes the kernel reap children itself, ECHILD), and is
 * reported as an error, never as an exit code. */
static int status_lost(const char *what, pid_t pid, int e, struct er_err *err)
{
    char ebuf[128];

    return er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                      "cannot tell how %s (pid %ld) ended: waitpid: %s%s", what,
                      (long)pid, er_strerror(e, ebuf, sizeof(ebuf)),
                      e == ECHILD ? " (is SIGCHLD ignored?)" : "");
}

int er_proc_wait(pid_t pid, int64_t timeout_ms, struct er_proc_result *res,
                 struct er_err *err)
{
    int64_t deadline = timeout_ms > 0 ? mono_ms() + timeout_ms : -1;
    int64_t nap_ms = 1;
    bool is_killed = false;
    int status = 0;
    pid_t r;

    res->is_timed_out = false;
    res->exit_code = -1;
    res->signal = 0;
    for (;;) {
        r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return status_lost("the child", pid, errno, err);
        if (!is_killed && ((deadline >= 0 && mono_ms() >= deadline) ||
                           er_proc_is_cancelled())) {
            res->is_timed_out = true;
            kill_group(pid, SIGKILL);
            is_killed = true;
        }
        sleep_ms(nap_ms);
        nap_ms = nap_ms < 50 ? nap_ms * 2 : 50;
    }
    fill_status(status, res);
    return 0;
}

/* One captured stream. */
struct capture {
    int fd;
    struct er_buf buf;
    bool is_truncated;
};

/* Read what fd has now. Returns 1 at EOF (fd closed), else 0. */
static int capture_read(struct capture *cap)
{
    char chunk[16384];
    ssize_t n;

    for (;;) {
        n = read(cap->fd, chunk, sizeof(chunk));
        if (n > 0) {
            size_t room = cap->buf.max_len - cap->buf.len;
            size_t take = (size_t)n < room ? (size_t)n : room;

            /* Past the cap the bytes are read and dropped, so the child
             * never blocks on a full pipe. */
            if (take < (size_t)n)
                cap->is_truncated = true;
            if (take > 0 && er_buf_append(&cap->buf, chunk, take) != 0)
                cap->is_truncated = true;
            continue;
        }
        if (n == 0) {
            close_fd(&cap->fd);
            return 1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        close_fd(&cap->fd);
        return 1;
    }
}

/* State of one er_proc_run. */
struct run {
    const struct er_proc_opts *opts;
    pid_t pid;
    int in_fd; /* our end of the child's stdin pipe, or -1 */
    size_t in_off;
    struct capture cap[2]; /* stdout, stderr */
    bool is_reaped;
    int status;
    int wait_errno; /* != 0: waitpid failed with it, status is unknown */
    bool is_timed_out;
    bool is_killed;
    int64_t deadline; /* -1: none */
    int64_t kill_at;  /* -1: not yet */
    /* Readable once the child exits (Linux 5.3), so the loop wakes at its
     * exit, not at its next nap; -1 without one. */
    int pidfd;
};

static void feed_stdin(struct run *run)
{
    const struct er_proc_opts *opts = run->opts;

    while (run->in_fd >= 0 && run->in_off < opts->stdin_len) {
        size_t left = opts->stdin_len - run->in_off;
        ssize_t n = write(run->in_fd, opts->stdin_data + run->in_off,
                          left > 65536 ? 65536 : left);

        if (n > 0) {
            run->in_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* EPIPE: the child closed its stdin; it will not read the rest. */
        close_fd(&run->in_fd);
        return;
    }
    close_fd(&run->in_fd); /* all written: the child sees EOF */
}

/* Deadline and kill escalation. */
static void check_deadline(struct run *run)
{
    const struct er_proc_opts *opts = run->opts;
    int64_t now = mono_ms();

    if (!run->is_timed_out && ((run->deadline >= 0 && now >= run->deadline) ||
                               er_proc_is_cancelled())) {
        run->is_timed_out = true;
        if (opts->on_timeout != NULL) {
            const struct er_buf *eb = &run->cap[1].buf;

            opts->on_timeout(opts->on_timeout_arg,
                             eb->data != NULL ? (const char *)eb->data : "",
                             eb->len);
        }
        kill_group(run->pid, SIGTERM);
        run->kill_at =
            mono_ms() +
            (opts->grace_ms > 0 ? opts->grace_ms : ER_PROC_DEFAULT_GRACE_MS);
        return;
    }
    if (run->is_timed_out && !run->is_killed && now >= run->kill_at) {
        kill_group(run->pid, SIGKILL);
        run->is_killed = true;
    }
}

/* Milliseconds until the next deadline event, capped at cap_ms. */
static int next_wait(const struct run *run, int64_t cap_ms)
{
    int64_t now = mono_ms();
    int64_t wait = cap_ms;

    if (!run->is_timed_out && run->deadline >= 0)
        wait = run->deadline - now < wait ? run->deadline - now : wait;
    if (run->is_timed_out && !run->is_killed)
        wait = run->kill_at - now < wait ? run->kill_at - now : wait;
    return wait < 0 ? 0 : (int)wait;
}

static void try_reap(struct run *run)
{
    pid_t r;

    if (run->is_reaped)
        return;
    do {
        r = waitpid(run->pid, &run->status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        run->wait_errno = errno;
    if (r == run->pid || r < 0)
        run->is_reaped = true;
}

/* The poll loop: feed stdin, read both captures, enforce the deadline,
 * until the child is reaped. */
static void run_loop(struct run *run)
{
    int64_t nap_ms = 1;
    int i;

    for (;;) {
        struct pollfd pfd[4];
        nfds_t cnt = 0;

        check_deadline(run);
        try_reap(run);
        if (run->is_reaped)
            break;
        if (run->in_fd >= 0) {
            pfd[cnt].fd = run->in_fd;
            pfd[cnt].events = POLLOUT;
            cnt++;
        }
        for (i = 0; i < 2; i++) {
            if (run->cap[i].fd >= 0) {
                pfd[cnt].fd = run->cap[i].fd;
                pfd[cnt].events = POLLIN;
                cnt++;
            }
        }
        if (cnt == 0 && run->pidfd < 0) {
            /* Pipes closed: the child is about to exit; back off. */
            sleep_ms(next_wait(run, nap_ms));
            nap_ms = nap_ms < 50 ? nap_ms * 2 : 50;
            continue;
        }
        if (run->pidfd >= 0) {
            pfd[cnt].fd = run->pidfd;
            pfd[cnt].events = POLLIN;
            cnt++;
        }
        if (poll(pfd, cnt, next_wait(run, REAP_POLL_MS)) < 0 && errno != EINTR)
            break;
        if (run->in_fd >= 0)
            feed_stdin(run);
        for (i = 0; i < 2; i++) {
            if (run->cap[i].fd >= 0)
                capture_read(&run->cap[i]);
        }
    }
    /* The child is gone; take what is already in the pipes but do not
     * wait for grandchildren that may hold them open. */
    close_fd(&run->in_fd);
    for (i = 0; i < 2; i++) {
        if (run->cap[i].fd >= 0)
            capture_read(&run->cap[i]);
        close_fd(&run->cap[i].fd);
    }
}

/* Block SIGPIPE in this thread: a write to a child that closed its stdin
 * then fails with EPIPE instead of killing the process. */
static void sigpipe_block(sigset_t *old, bool *was_pending)
{
    sigset_t set;
    sigset_t pending;

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, old);
    sigemptyset(&pending);
    sigpending(&pending);
    *was_pending = sigismember(&pending, SIGPIPE) == 1;
}

/* Consume a SIGPIPE our writes raised, then restore the mask. */
static void sigpipe_restore(const sigset_t *old, bool was_pending)
{
    sigset_t set;
    sigset_t pending;
    struct timespec zero = { 0, 0 };

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigemptyset(&pending);
    sigpending(&pending);
    if (!was_pending && sigismember(&pending, SIGPIPE) == 1) {
        while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
            continue;
    }
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

static char *take_text(struct er_buf *buf, size_t *len)
{
    return (char *)er_buf_take(buf, len);
}

int er_proc_run(const struct er_proc_opts *opts, struct er_proc_result *res,
                struct er_err *err)
{
    struct run run;
    int in_pipe[2] = { -1, -1 };
    int out_pipe[2] = { -1, -1 };
    int err_pipe[2] = { -1, -1 };
    int devnull = -1;
    int fds[3];
    size_t cap_bytes;
    sigset_t old_mask;
    bool was_pending = false;
    char ebuf[128];
    int rc = 0;
    int i;

    memset(res, 0, sizeof(*res));
    res->exit_code = -1; /* never 0 unless the child said so */
    memset(&run, 0, sizeof(run));
    run.opts = opts;
    run.in_fd = -1;
    run.cap[0].fd = -1;
    run.cap[1].fd = -1;
    run.deadline = -1;
    run.kill_at = -1;
    run.pidfd = -1;
    cap_bytes = opts->max_output_bytes > 0 ? opts->max_output_bytes
                                           : ER_PROC_DEFAULT_MAX_OUTPUT;
    er_buf_init(&run.cap[0].buf, cap_bytes);
    er_buf_init(&run.cap[1].buf, cap_bytes);
    /* Allocate and terminate now: a stream that stays empty still gives
     * "" (er_buf_take of an untouched buffer is not NUL-terminated). */
    if (er_buf_append(&run.cap[0].buf, "", 0) != 0 ||
        er_buf_append(&run.cap[1].buf, "", 0) != 0) {
        er_buf_fini(&run.cap[0].buf);
        er_buf_fini(&run.cap[1].buf);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    }
    sigpipe_block(&old_mask, &was_pending);

    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0 || (opts->stdin_data != NULL && make_pipe(in_pipe) != 0) ||
        (opts->stdout_fd < 0 && make_pipe(out_pipe) != 0) ||
        (opts->stderr_fd < 0 && make_pipe(err_pipe) != 0)) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                        "cannot run %s: pipe: %s", opts->argv[0],
                        er_strerror(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    fds[0] = opts->stdin_data != NULL ? in_pipe[0]
             : opts->stdin_fd >= 0    ? opts->stdin_fd
                                      : devnull;
    fds[1] = opts->stdout_fd >= 0 ? opts->stdout_fd : out_pipe[1];
    fds[2] = opts->stderr_fd >= 0 ? opts->stderr_fd : err_pipe[1];
    if (opts->timeout_ms > 0)
        run.deadline = mono_ms() + opts->timeout_ms;
    rc = spawn(opts, fds, &run.pid, err);
    if (rc != 0)
        goto out;
    run.pidfd = (int)syscall(SYS_pidfd_open, run.pid, 0);
    /* Our copies of the child's ends must go, or EOF never comes. */
    close_fd(&in_pipe[0]);
    close_fd(&out_pipe[1]);
    close_fd(&err_pipe[1]);
    run.in_fd = in_pipe[1];
    in_pipe[1] = -1;
    run.cap[0].fd = out_pipe[0];
    out_pipe[0] = -1;
    run.cap[1].fd = err_pipe[0];
    err_pipe[0] = -1;
    if (run.in_fd >= 0)
        set_flag(run.in_fd, F_GETFL, F_SETFL, O_NONBLOCK);
    for (i = 0; i < 2; i++) {
        if (run.cap[i].fd >= 0)
            set_flag(run.cap[i].fd, F_GETFL, F_SETFL, O_NONBLOCK);
    }
    if (run.in_fd >= 0)
        feed_stdin(&run);
    run_loop(&run);
    if (!run.is_reaped) {
        pid_t r;

        /* poll failed: do not leave a zombie or a runaway child behind. */
        kill_group(run.pid, SIGKILL);
        do {
            r = waitpid(run.pid, &run.status, 0);
        } while (r < 0 && errno == EINTR);
        if (r < 0)
            run.wait_errno = errno;
    }
    if (run.wait_errno != 0) {
        rc = status_lost(opts->argv[0], run.pid, run.wait_errno, err);
        goto out;
    }
    fill_status(run.status, res);
    res->is_timed_out = run.is_timed_out;
    if (opts->stdout_fd < 0) {
        res->out = take_text(&run.cap[0].buf, &res->out_len);
        res->is_out_truncated = run.cap[0].is_truncated;
    }
    if (opts->stderr_fd < 0) {
        res->err_text = take_text(&run.cap[1].buf, &res->err_len);
        res->is_err_truncated = run.cap[1].is_truncated;
    }
    if ((opts->stdout_fd < 0 && res->out == NULL) ||
        (opts->stderr_fd < 0 && res->err_text == NULL)) {
        er_proc_result_fini(res);
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    }
out:
    close_fd(&run.in_fd);
    close_fd(&run.cap[0].fd);
    close_fd(&run.cap[1].fd);
    close_fd(&run.pidfd);
    for (i = 0; i < 2; i++) {
        close_fd(&in_pipe[i]);
        close_fd(&out_pipe[i]);
        close_fd(&err_pipe[i]);
    }
    if (devnull >= 0)
        close(devnull);
    er_buf_fini(&run.cap[0].buf);
    er_buf_fini(&run.cap[1].buf);
    sigpipe_restore(&old_mask, was_pending);
    return rc;
}

int er_proc_pidfd_open(pid_t pid)
{
    /* pidfds are close-on-exec from the start. */
    return (int)syscall(SYS_pidfd_open, pid, 0);
}
