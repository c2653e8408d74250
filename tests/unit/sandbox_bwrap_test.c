/* sandbox_bwrap_test: real bubblewrap sandboxes under a temporary
 * directory: what a command sees (environment, network, files), the
 * limits (processes, memory), the deadline killing a whole tree, a
 * sandbox outliving the process that made it, destroy, sweep and ids.
 * Skips with a reason when bwrap cannot run here, unless CI is set. */
#define _XOPEN_SOURCE 700 /* nftw, for cleaning up after a failed run */

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "drivers/sandbox_int.h"

#define INSTALLATION "5b2f0c7e-1d3a-4e8b-9c6f-2a7d4e1b0c93"
#define OTHER_INST   "9e0d1c2b-3a4f-4e5d-8c7b-6a5f4e3d2c1b"
#define MARKER       ".envrun-sandbox"
#define MIB          ((int64_t)1024 * 1024)

static char dir[64];     /* er_bwrap_set_dir */
static char outside[64]; /* a host directory outside dir */
static char id_main[ER_BWRAP_ID_LEN + 1];
/* Commands run as the worker's own tools (is_worker_tool): entered by the
 * process helper itself, with the same walls. */
static bool is_tool_mode;

/* A fresh random id: random, so the sandboxes' host uids (from the id)
 * do not meet those of another run of this test on the same host. */
static void new_id(char id[ER_BWRAP_ID_LEN + 1])
{
    char uuid[37];
    size_t i;
    size_t j = 0;

    assert_int_equal(er_uuid_v4(uuid), 0);
    for (i = 0; uuid[i] != '\0' && j < ER_BWRAP_ID_LEN; i++) {
        if (uuid[i] != '-')
            id[j++] = uuid[i];
    }
    id[j] = '\0';
}

static void path_in(char *out, size_t out_len, const char *id, const char *leaf)
{
    int n = snprintf(out, out_len, "%s/%s%s%s", dir, id, leaf ? "/" : "",
                     leaf ? leaf : "");

    assert_true(n > 0 && (size_t)n < out_len);
}

/* Run argv (NULL-terminated) in sandbox id with env and stdin. */
static int run(const char *id, const char *const *argv, const char *const *env,
               const char *stdin_data, int64_t timeout_ms,
               struct er_driver_exec_result *res)
{
    struct er_driver_exec req;
    struct er_err err;

    memset(&req, 0, sizeof(req));
    req.command = argv[0];
    req.args = argv + 1;
    req.env = env;
    req.stdin_data = stdin_data;
    req.stdin_len = stdin_data != NULL ? strlen(stdin_data) : 0;
    req.timeout_ms = timeout_ms;
    req.is_worker_tool = is_tool_mode;
    er_err_clear(&err);
    return er_bwrap_exec(id, &req, res, &err);
}

static int tool_mode_on(void **state)
{
    (void)state;
    is_tool_mode = true;
    return 0;
}

static int tool_mode_off(void **state)
{
    (void)state;
    is_tool_mode = false;
    return 0;
}

/* Run a shell script in the main sandbox; assert it ran. */
static void sh(const char *script, struct er_driver_exec_result *res)
{
    const char *argv[] = { "/bin/sh", "-c", script, NULL };

    assert_int_equal(run(id_main, argv, NULL, NULL, 30000, res), 0);
}

/* The host pid of a sandbox's pid 1, from its state file. */
static pid_t init_pid(const char *id)
{
    char path[PATH_MAX];
    char buf[64] = "";
    FILE *f;

    path_in(path, sizeof(path), id, "state");
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    if (fgets(buf, sizeof(buf), f) == NULL)
        buf[0] = '\0';
    fclose(f);
    return (pid_t)strtol(buf, NULL, 10);
}

/* Whether pid runs (a zombie has ended). */
static bool pid_runs(pid_t pid)
{
    char path[64];
    char buf[512];
    FILE *f;
    char *p;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return false;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')');
    return p != NULL && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/* The host uid the sandbox's processes run as: its workspace's owner. */
static uid_t sandbox_uid(const char *id)
{
    char ws[PATH_MAX];
    struct stat st;

    assert_int_equal(er_bwrap_workspace_path(id, ws, sizeof(ws)), 0);
    assert_int_equal(stat(ws, &st), 0);
    return st.st_uid;
}

/* How many live (not zombie) processes on the host have real uid uid. */
static int count_uid(uid_t uid)
{
    struct dirent *de;
    DIR *proc;
    int cnt = 0;

    proc = opendir("/proc");
    assert_non_null(proc);
    while ((de = readdir(proc)) != NULL) {
        char path[300];
        char line[256];
        bool is_zombie = false;
        long ruid = -1;
        FILE *f;

        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/status", de->d_name);
        f = fopen(path, "r");
        if (f == NULL)
            continue;
        while (fgets(line, sizeof(line), f) != NULL) {
            if (strncmp(line, "State:", 6) == 0)
                is_zombie = strchr(line, 'Z') != NULL;
            if (strncmp(line, "Uid:", 4) == 0)
                ruid = strtol(line + 4, NULL, 10);
        }
        fclose(f);
        if (!is_zombie && ruid == (long)uid)
            cnt++;
    }
    closedir(proc);
    return cnt;
}

static int rm_one(const char *path, const struct stat *sb, int flag,
                  struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (flag == FTW_DP || flag == FTW_D || flag == FTW_DNR)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

static void rm_rf(const char *path)
{
    nftw(path, rm_one, 16, FTW_PHYS | FTW_DEPTH);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(close(fd), 0);
}

static void read_file(const char *path, char *buf, size_t buf_len)
{
    FILE *f = fopen(path, "r");
    size_t n = 0;

    buf[0] = '\0';
    if (f == NULL)
        return;
    n = fread(buf, 1, buf_len - 1, f);
    fclose(f);
    buf[n] = '\0';
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        continue;
}

/* ------------------------------------------------------------------ */

static void bwrap_runs_commands_and_reports_exit_codes(void **state)
{
    static const char *const echo[] = { "echo", "hello", "world", NULL };
    static const char *const fail[] = { "sh", "-c", "echo oops >&2; exit 7",
                                        NULL };
    static const char *const cat[] = { "cat", NULL };
    static const char *const none[] = { "no-such-command", NULL };
    static const char *const eq[] = { "/workspace/x=y", "arg", NULL };
    struct er_driver_exec_result res;
    char path[PATH_MAX];

    (void)state;
    assert_int_equal(run(id_main, echo, NULL, NULL, 30000, &res), 0);
    assert_string_equal(res.out, "hello world\n");
    assert_string_equal(res.err_text, "");
    assert_int_equal(res.exit_code, 0);
    assert_string_equal(res.signal, "");
    assert_false(res.is_timed_out);
    er_driver_exec_result_fini(&res);

    assert_int_equal(run(id_main, fail, NULL, NULL, 30000, &res), 0);
    assert_int_equal(res.exit_code, 7);
    assert_string_equal(res.err_text, "oops\n");
    er_driver_exec_result_fini(&res);

    assert_int_equal(run(id_main, cat, NULL, "from stdin", 30000, &res), 0);
    assert_string_equal(res.out, "from stdin");
    er_driver_exec_result_fini(&res);

    assert_int_equal(run(id_main, none, NULL, NULL, 30000, &res), 0);
    assert_int_equal(res.exit_code, 127);
    er_driver_exec_result_fini(&res);

    /* A program whose name has '=' is still the program. */
    path_in(path, sizeof(path), id_main, "workspace/x=y");
    write_file(path, "#!/bin/sh\necho \"eq $1\"\n", 0755);
    assert_int_equal(run(id_main, eq, NULL, NULL, 30000, &res), 0);
    assert_string_equal(res.out, "eq arg\n");
    er_driver_exec_result_fini(&res);
    unlink(path);
}

static void bwrap_runs_in_the_requested_cwd(void **state)
{
    static const char *const pwd[] = { "pwd", NULL };
    struct er_driver_exec req;
    struct er_driver_exec_result res;
    struct er_err err;

    (void)state;
    assert_int_equal(run(id_main, pwd, NULL, NULL, 30000, &res), 0);
    assert_string_equal(res.out, "/workspace\n");
    er_driver_exec_result_fini(&res);

    memset(&req, 0, sizeof(req));
    req.command = "pwd";
    req.cwd = "/tmp";
    req.timeout_ms = 30000;
    assert_int_equal(er_bwrap_exec(id_main, &req, &res, &err), 0);
    assert_string_equal(res.out, "/tmp\n");
    er_driver_exec_result_fini(&res);

    /* A cwd is a path inside the sandbox, never on the host. */
    req.cwd = outside;
    assert_int_equal(er_bwrap_exec(id_main, &req, &res, &err), 0);
    assert_int_equal(res.exit_code, 125); /* env -C */
    assert_string_equal(res.out, "");
    er_driver_exec_result_fini(&res);
}

static void bwrap_environment_is_exactly_the_requested_one(void **state)
{
    static const char *const env_cmd[] = { "/usr/bin/env", NULL };
    static const char *const env1[] = { "FOO=bar baz", "EMPTY=", NULL };
    static const char *const env2[] = { "PATH=/bin", NULL };
    static const char *const bad[] = { "NOEQUALS", NULL };
    struct er_driver_exec_result res;

    (void)state;
    /* Variables of the worker never reach the command. */
    setenv("ER_BWRAP_TEST_LEAK", "leaked", 1);
    assert_int_equal(run(id_main, env_cmd, env1, NULL, 30000, &res), 0);
    assert_string_equal(res.out, "FOO=bar baz\nEMPTY=\n"
                                 "PATH=/usr/local/bin:/usr/bin:/bin\n");
    er_driver_exec_result_fini(&res);

    assert_int_equal(run(id_main, env_cmd, NULL, NULL, 30000, &res), 0);
    assert_string_equal(res.out, "PATH=/usr/local/bin:/usr/bin:/bin\n");
    assert_null(strstr(res.out, "HOME="));
    er_driver_exec_result_fini(&res);

    assert_int_equal(run(id_main, env_cmd, env2, NULL, 30000, &res), 0);
    assert_string_equal(res.out, "PATH=/bin\n");
    er_driver_exec_result_fini(&res);

    assert_int_equal(run(id_main, env_cmd, bad, NULL, 30000, &res), ER_EINVAL);
    er_driver_exec_result_fini(&res);
    unsetenv("ER_BWRAP_TEST_LEAK");
}

static void bwrap_network_is_loopback_only(void **state)
{
    struct er_driver_exec_result res;
    struct sockaddr_in sa;
    socklen_t sa_len = sizeof(sa);
    char script[256];
    int lfd;
    int cfd;

    (void)state;
    sh("cat /proc/net/dev | sed -n 's/^ *\\([^:]*\\):.*/\\1/p'", &res);
    assert_int_equal(res.exit_code, 0);
    assert_string_equal(res.out, "lo\n");
    er_driver_exec_result_fini(&res);

    /* A port listening on the host's loopback is not this loopback. */
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(lfd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 8), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &sa_len), 0);
    snprintf(script, sizeof(script),
             "exec /bin/bash -c 'exec 3<>/dev/tcp/127.0.0.1/%u && echo "
             "connected'",
             (unsigned)ntohs(sa.sin_port));
    sh(script, &res);
    assert_int_not_equal(res.exit_code, 0);
    assert_string_equal(res.out, "");
    er_driver_exec_result_fini(&res);
    cfd = accept(lfd, NULL, NULL);
    assert_int_equal(cfd, -1);
    close(lfd);

    /* And there is no route out. */
    sh("exec /bin/bash -c 'exec 3<>/dev/tcp/192.0.2.1/80 && echo connected'",
       &res);
    assert_int_not_equal(res.exit_code, 0);
    assert_false(res.is_timed_out);
    assert_non_null(strstr(res.err_text, "unreachable"));
    er_driver_exec_result_fini(&res);
}

static void bwrap_host_files_are_invisible(void **state)
{
    char secret[PATH_MAX];
    char cwd[PATH_MAX];
    const char *argv[16];
    struct er_driver_exec_result res;
    size_t n = 0;

    (void)state;
    snprintf(secret, sizeof(secret), "%s/secret.txt", outside);
    write_file(secret, "secret\n", 0644);
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    argv[n++] = "/bin/sh";
    argv[n++] = "-c";
    argv[n++] = "for p in \"$@\"; do test -e \"$p\" && echo \"seen $p\"; "
                "done; exit 0";
    argv[n++] = "sh";
    argv[n++] = "/usr/bin"; /* the control: this one is shown */
    argv[n++] = secret;
    argv[n++] = outside;
    argv[n++] = dir;
    argv[n++] = "/root";
    argv[n++] = "/home";
    argv[n++] = "/var";
    argv[n++] = "/etc/shadow";
    argv[n++] = "/etc/hostname";
    if (strncmp(cwd, "/usr", 4) != 0 && strcmp(cwd, "/") != 0)
        argv[n++] = cwd;
    argv[n] = NULL;
    assert_int_equal(run(id_main, argv, NULL, NULL, 30000, &res), 0);
    assert_string_equal(res.out, "seen /usr/bin\n");
    er_driver_exec_result_fini(&res);

    /* /usr is the host's, read-only; the root is read-only too. */
    sh("touch /usr/x || touch /x || echo ro", &res);
    assert_string_equal(res.out, "ro\n");
    er_driver_exec_result_fini(&res);
    unlink(secret);
}

static void bwrap_workspace_persists_and_shows_on_the_host(void **state)
{
    static const char *const cat_in[] = { "sh", "-c",
                                          "cat > /workspace/streamed.txt",
                                          NULL };
    struct er_driver_exec_result res;
    struct er_err err;
    char path[PATH_MAX];
    char buf[64];
    int pfd[2];

    (void)state;
    sh("echo data > /workspace/w.txt && echo tmp > /tmp/t.txt", &res);
    assert_int_equal(res.exit_code, 0);
    er_driver_exec_result_fini(&res);

    assert_int_equal(er_bwrap_workspace_path(id_main, path, sizeof(path)), 0);
    assert_true(strlen(path) > strlen(dir));
    assert_true(strlen(path) + 8 < sizeof(path));
    memcpy(path + strlen(path), "/w.txt", 7);
    read_file(path, buf, sizeof(buf));
    assert_string_equal(buf, "data\n");

    sh("cat /workspace/w.txt /tmp/t.txt", &res);
    assert_string_equal(res.out, "data\ntmp\n");
    er_driver_exec_result_fini(&res);

    /* stdin from a descriptor, as the workspace upload streams a tar. */
    assert_int_equal(pipe(pfd), 0);
    assert_int_equal(write(pfd[1], "streamed\n", 9), 9);
    close(pfd[1]);
    assert_int_equal(
        er_bwrap_exec_fd(id_main, cat_in, NULL, pfd[0], 30000, &res, &err), 0);
    close(pfd[0]);
    assert_int_equal(res.exit_code, 0);
    er_driver_exec_result_fini(&res);
    path_in(path, sizeof(path), id_main, "workspace/streamed.txt");
    read_file(path, buf, sizeof(buf));
    assert_string_equal(buf, "streamed\n");
}

static void bwrap_commands_have_no_privileges(void **state)
{
    struct er_driver_exec_result res;

    (void)state;
    sh("grep -E '^(Cap|NoNewPrivs)' /proc/self/status | tr -s '\\t' ' '", &res);
    assert_string_equal(res.out, "CapInh: 0000000000000000\n"
                                 "CapPrm: 0000000000000000\n"
                                 "CapEff: 0000000000000000\n"
                                 "CapBnd: 0000000000000000\n"
                                 "CapAmb: 0000000000000000\n"
                                 "NoNewPrivs: 1\n");
    er_driver_exec_result_fini(&res);
    /* Root of its own user namespace only: an unprivileged uid here. */
    assert_int_not_equal(sandbox_uid(id_main), 0);
    sh("cat /proc/self/uid_map | tr -s ' ' ' '", &res);
    assert_non_null(strstr(res.out, " 0 "));
    er_driver_exec_result_fini(&res);
}

/* A worker tool: only sh or an absolute path (looked up outside, the
 * same file inside); its cwd is inside; it runs as root of the sandbox's
 * user namespace in the sandbox's PID namespace (no namespace of its
 * own), sees the sandbox's root and its /proc. */
static void bwrap_worker_tools_enter_the_same_sandbox(void **state)
{
    static const char *const relative[] = { "true", NULL };
    struct er_driver_exec req;
    struct er_driver_exec_result res;
    struct er_err err;
    char want[64];

    (void)state;
    assert_int_equal(run(id_main, relative, NULL, NULL, 30000, &res),
                     ER_EINVAL);
    er_driver_exec_result_fini(&res);
    sh("pwd; id -u; id -g; cat /workspace/w.txt; "
       "readlink /proc/1/exe >/dev/null && echo sees-init",
       &res);
    assert_int_equal(res.exit_code, 0);
    assert_string_equal(res.out, "/workspace\n0\n0\ndata\nsees-init\n");
    er_driver_exec_result_fini(&res);
    /* The network and user namespaces of an agent's command (compare the
     * inodes); the mount namespace of the sandbox's init, where an agent's
     * command has one of its own for its /proc. */
    sh("readlink /proc/self/ns/net /proc/self/ns/user", &res);
    snprintf(want, sizeof(want), "%s", res.out != NULL ? res.out : "");
    er_driver_exec_result_fini(&res);
    is_tool_mode = false;
    sh("readlink /proc/self/ns/net /proc/self/ns/user", &res);
    is_tool_mode = true;
    assert_string_equal(res.out, want);
    er_driver_exec_result_fini(&res);
    sh("test \"$(readlink /proc/self/ns/mnt)\" = "
       "\"$(readlink /proc/1/ns/mnt)\" && echo same",
       &res);
    assert_string_equal(res.out, "same\n");
    er_driver_exec_result_fini(&res);

    memset(&req, 0, sizeof(req));
    req.command = "sh";
    req.args = (const char *const[]){ "-c", "pwd", NULL };
    req.cwd = "/tmp";
    req.timeout_ms = 30000;
    req.is_worker_tool = true;
    assert_int_equal(er_bwrap_exec(id_main, &req, &res, &err), 0);
    assert_string_equal(res.out, "/tmp\n");
    er_driver_exec_result_fini(&res);
    /* A cwd is a path inside the sandbox, never on the host. */
    req.cwd = outside;
    er_err_clear(&err);
    assert_int_not_equal(er_bwrap_exec(id_main, &req, &res, &err), 0);
    assert_non_null(strstr(err.msg, "cannot change directory"));
    er_driver_exec_result_fini(&res);
}

struct bomb {
    struct er_driver_exec_result res;
    int rc;
};

static void *bomb_run(void *arg)
{
    static const char *const argv[] = {
        "/bin/bash", "-c", "for i in $(seq 1 300); do sleep 60 & done; wait",
        NULL
    };
    struct bomb *b = arg;

    b->rc = run(id_main, argv, NULL, NULL, 4000, &b->res);
    return NULL;
}

static void bwrap_fork_bomb_is_contained(void **state)
{
    struct er_driver_exec_result res;
    struct bomb b;
    pthread_t th;
    uid_t uid = sandbox_uid(id_main);
    int max = 0;
    int i;

    (void)state;
    memset(&b, 0, sizeof(b));
    assert_int_equal(pthread_create(&th, NULL, bomb_run, &b), 0);
    for (i = 0; i < 30; i++) {
        int cnt = count_uid(uid);

        max = cnt > max ? cnt : max;
        sleep_ms(100);
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(b.rc, 0);
    assert_true(b.res.is_timed_out || b.res.exit_code != 0);
    er_driver_exec_result_fini(&b.res);
    print_message("fork bomb: at most %d processes of the sandbox's uid\n",
                  max);
    /* The bomb ran into the limit (64) and not past it. */
    assert_true(max >= 40);
    assert_true(max <= 64);
    /* The sandbox still answers, and nothing of the bomb is left. */
    sh("echo alive", &res);
    assert_string_equal(res.out, "alive\n");
    er_driver_exec_result_fini(&res);
    for (i = 0; i < 100 && count_uid(uid) != 3; i++)
        sleep_ms(20);
    assert_int_equal(count_uid(uid), 3); /* bwrap, its pid 1, sleep */
}

static void bwrap_memory_hog_is_contained(void **state)
{
    struct er_driver_exec_result res;

    (void)state;
    /* tail keeps a line without newline whole: it asks for the bytes. */
    sh("exec /bin/bash -c 'set -o pipefail; head -c 16M /dev/zero | tail "
       ">/dev/null'",
       &res);
    assert_int_equal(res.exit_code, 0);
    er_driver_exec_result_fini(&res);
    sh("exec /bin/bash -c 'set -o pipefail; head -c 1G /dev/zero | tail "
       ">/dev/null'",
       &res);
    assert_int_not_equal(res.exit_code, 0);
    assert_non_null(strstr(res.err_text, "memory exhausted"));
    er_driver_exec_result_fini(&res);
}

static void bwrap_timeout_kills_the_whole_tree(void **state)
{
    static const char *const argv[] = {
        "/bin/sh", "-c",
        "setsid sh -c 'while :; do date +%s%N > /workspace/beat.tmp && "
        "mv -f /workspace/beat.tmp /workspace/beat; sleep 0.1; done' "
        "</dev/null >/dev/null 2>&1 & sleep 100",
        NULL
    };
    static const char *const slow[] = { "sleep", "60", NULL };
    struct er_driver_exec_result res;
    atomic_bool cancel = true;
    char path[PATH_MAX];
    char before[64];
    char after[64];
    int64_t t0;
    int i;

    (void)state;
    t0 = er_time_mono_ms();
    assert_int_equal(run(id_main, argv, NULL, NULL, 1000, &res), 0);
    assert_true(res.is_timed_out);
    assert_int_equal(res.exit_code, -1);
    assert_string_equal(res.signal, "SIGTERM");
    er_driver_exec_result_fini(&res);
    assert_true(er_time_mono_ms() - t0 < 20000);

    /* The daemon (its own session) beat before the deadline, not after
     * (each beat renamed into place: a kill between the truncation and
     * the write of `>` would leave the file empty). */
    path_in(path, sizeof(path), id_main, "workspace/beat");
    sleep_ms(200);
    read_file(path, before, sizeof(before));
    assert_true(strlen(before) > 0);
    sleep_ms(600);
    read_file(path, after, sizeof(after));
    assert_string_equal(before, after);
    /* Only the sandbox's own are left: bwrap, its pid 1 and sleep. */
    for (i = 0; i < 100 && count_uid(sandbox_uid(id_main)) != 3; i++)
        sleep_ms(20);
    assert_int_equal(count_uid(sandbox_uid(id_main)), 3);
    unlink(path);
    path_in(path, sizeof(path), id_main, "workspace/beat.tmp");
    unlink(path);

    /* Cancellation ends a command as the deadline does. */
    er_proc_set_cancel(&cancel);
    assert_int_equal(run(id_main, slow, NULL, NULL, 60000, &res), 0);
    er_proc_set_cancel(NULL);
    assert_true(res.is_timed_out);
    assert_int_equal(res.exit_code, -1);
    er_driver_exec_result_fini(&res);
}

static void bwrap_sandbox_outlives_its_maker(void **state)
{
    static const char *const echo[] = { "echo", "still here", NULL };
    struct er_driver_exec_result res;
    struct er_err err;
    char id[ER_BWRAP_ID_LEN + 1];
    int status = 0;
    int sig;
    pid_t pid;

    (void)state;
    for (sig = 0; sig < 2; sig++) {
        new_id(id);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            struct er_bwrap_limits lim = { 0, 0, 0 };

            if (er_bwrap_create(id, &lim, &err) != 0)
                _exit(1);
            if (sig == 1)
                raise(SIGKILL);
            _exit(0);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (sig == 1)
            assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        else
            assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        sleep_ms(100);
        assert_true(er_bwrap_is_alive(id));
        assert_int_equal(run(id, echo, NULL, NULL, 30000, &res), 0);
        assert_string_equal(res.out, "still here\n");
        er_driver_exec_result_fini(&res);
        assert_int_equal(er_bwrap_destroy(id, &err), 0);
    }
}

static void bwrap_destroy_removes_everything(void **state)
{
    static const char *const echo[] = { "echo", NULL };
    const char *cmd[] = { "/bin/sh", "-c", NULL, NULL };
    char keep[96];
    char script[512];
    struct er_bwrap_limits lim = { 0, 0, 0 };
    struct er_driver_exec_result res;
    struct er_err err;
    char id[ER_BWRAP_ID_LEN + 1];
    char path[PATH_MAX];
    char ws_file[PATH_MAX];
    struct stat st;
    uid_t uid;
    pid_t pid;

    (void)state;
    new_id(id);
    assert_int_equal(er_bwrap_create(id, &lim, &err), 0);
    pid = init_pid(id);
    assert_true(pid > 1);
    assert_true(pid_runs(pid));
    uid = sandbox_uid(id);
    /* What code inside may leave: links out, a directory no one may
     * enter. Removing them touches nothing outside. */
    path_in(ws_file, sizeof(ws_file), id, "workspace/f");
    write_file(ws_file, "x", 0644);
    snprintf(keep, sizeof(keep), "%s/keep", outside);
    write_file(keep, "keep", 0644);
    snprintf(script, sizeof(script),
             "ln -s %s /workspace/out && ln -s / /workspace/root && "
             "ln -s %s /workspace/keep && mkdir -p /workspace/d/e && "
             "touch /workspace/d/e/f && chmod 000 /workspace/d/e /workspace/d",
             outside, keep);
    cmd[2] = script;
    assert_int_equal(run(id, cmd, NULL, NULL, 30000, &res), 0);
    assert_int_equal(res.exit_code, 0);
    er_driver_exec_result_fini(&res);

    assert_int_equal(er_bwrap_destroy(id, &err), 0);
    assert_false(pid_runs(pid));
    assert_int_equal(stat(keep, &st), 0);
    assert_int_equal(stat("/etc/passwd", &st), 0);
    unlink(keep);
    path_in(path, sizeof(path), id, NULL);
    assert_int_equal(lstat(path, &st), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(count_uid(uid), 0);
    assert_false(er_bwrap_is_alive(id));
    assert_int_equal(run(id, echo, NULL, NULL, 30000, &res), ER_ENOTFOUND);
    er_driver_exec_result_fini(&res);
    /* Again: nothing to do. */
    assert_int_equal(er_bwrap_destroy(id, &err), 0);
}

static void bwrap_destroy_touches_only_its_own(void **state)
{
    struct er_err err;
    char id[ER_BWRAP_ID_LEN + 1];
    char path[PATH_MAX];
    char file[PATH_MAX];
    char text[160];
    struct stat st;

    (void)state;
    /* Another installation's sandbox directory. */
    new_id(id);
    path_in(path, sizeof(path), id, NULL);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(text, sizeof(text), "envrun-bwrap\ninstallation=%s\nid=%s\n",
             OTHER_INST, id);
    path_in(file, sizeof(file), id, MARKER);
    write_file(file, text, 0644);
    assert_int_not_equal(er_bwrap_destroy(id, &err), 0);
    assert_int_equal(stat(file, &st), 0);
    rm_rf(path);

    /* A symlink in its place, to a directory with our marker. */
    snprintf(text, sizeof(text), "envrun-bwrap\ninstallation=%s\nid=%s\n",
             INSTALLATION, id);
    snprintf(file, sizeof(file), "%s/%s", outside, MARKER);
    write_file(file, text, 0644);
    assert_int_equal(symlink(outside, path), 0);
    assert_int_not_equal(er_bwrap_destroy(id, &err), 0);
    assert_int_equal(stat(file, &st), 0);
    assert_int_not_equal(er_bwrap_create(id, NULL, &err), 0);
    assert_int_equal(stat(file, &st), 0);
    unlink(path);
    unlink(file);
}

static void bwrap_failed_create_leaves_nothing(void **state)
{
    /* Too little address space for bwrap itself to start. */
    struct er_bwrap_limits lim = { MIB, 0, 0 };
    struct er_err err;
    char id[ER_BWRAP_ID_LEN + 1];
    char path[PATH_MAX];
    struct stat st;
    struct dirent *de;
    DIR *d;

    (void)state;
    new_id(id);
    er_err_clear(&err);
    assert_int_equal(er_bwrap_create(id, &lim, &err), ER_EDRIVER);
    print_message("failed create: %s\n", err.msg);
    assert_true(strlen(err.msg) > 0);
    path_in(path, sizeof(path), id, NULL);
    assert_int_equal(lstat(path, &st), -1);
    assert_false(er_bwrap_is_alive(id));
    d = opendir(dir);
    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        assert_null(strstr(de->d_name, id));
    closedir(d);
}

struct in_use {
    const char *id;
    int calls;
};

static bool is_in_use(const char *lease_tag, void *arg)
{
    struct in_use *u = arg;

    u->calls++;
    /* The main sandbox of these tests is in use too. */
    return strcmp(lease_tag, u->id) == 0 || strcmp(lease_tag, id_main) == 0;
}

static void bwrap_sweep_ends_what_is_not_in_use(void **state)
{
    struct er_bwrap_limits lim = { 0, 0, 0 };
    struct er_err err;
    struct in_use u;
    char used[ER_BWRAP_ID_LEN + 1];
    char done[ER_BWRAP_ID_LEN + 1];
    char half[ER_BWRAP_ID_LEN + 1];
    char other[ER_BWRAP_ID_LEN + 1];
    char orphan[ER_BWRAP_ID_LEN + 1];
    char path[PATH_MAX];
    char file[PATH_MAX];
    char left_new[256];
    char left_del[256];
    char text[160];
    struct timespec old[2];
    struct stat st;
    pid_t done_pid;
    pid_t orphan_pid;

    (void)state;
    new_id(used);
    new_id(done);
    new_id(half);
    new_id(other);
    new_id(orphan);
    assert_int_equal(er_bwrap_create(used, &lim, &err), 0);
    assert_int_equal(er_bwrap_create(done, &lim, &err), 0);
    done_pid = init_pid(done);
    /* A create that died after bwrap started, before it wrote the state:
     * the sandbox runs, and only its arguments say whose it is. */
    assert_int_equal(er_bwrap_create(orphan, &lim, &err), 0);
    orphan_pid = init_pid(orphan);
    path_in(file, sizeof(file), orphan, "state");
    assert_int_equal(unlink(file), 0);
    assert_false(er_bwrap_is_alive(orphan));
    assert_true(pid_runs(orphan_pid));

    /* A create that died after making its directory. */
    path_in(path, sizeof(path), half, NULL);
    assert_int_equal(mkdir(path, 0711), 0);
    snprintf(text, sizeof(text), "envrun-bwrap\ninstallation=%s\nid=%s\n",
             INSTALLATION, half);
    path_in(file, sizeof(file), half, MARKER);
    write_file(file, text, 0644);
    path_in(file, sizeof(file), half, "workspace");
    assert_int_equal(mkdir(file, 0700), 0);

    /* Another installation's. */
    path_in(path, sizeof(path), other, NULL);
    assert_int_equal(mkdir(path, 0711), 0);
    snprintf(text, sizeof(text), "envrun-bwrap\ninstallation=%s\nid=%s\n",
             OTHER_INST, other);
    path_in(file, sizeof(file), other, MARKER);
    write_file(file, text, 0644);

    /* Leftovers of a create and of a destroy cut short. */
    snprintf(text, sizeof(text), "envrun-bwrap\ninstallation=%s\nid=%s\n",
             INSTALLATION, half);
    snprintf(left_new, sizeof(left_new), "%s/.new-%s-abcdef", dir, half);
    assert_int_equal(mkdir(left_new, 0711), 0);
    snprintf(file, sizeof(file), "%s/%s", left_new, MARKER);
    write_file(file, text, 0644);
    snprintf(file, sizeof(file), "%s/passwd", left_new);
    write_file(file, "x", 0644);
    old[0].tv_sec = time(NULL) - 3600;
    old[0].tv_nsec = 0;
    old[1] = old[0];
    assert_int_equal(utimensat(AT_FDCWD, left_new, old, 0), 0);
    snprintf(left_del, sizeof(left_del), "%s/.del-%s-ghijkl", dir, half);
    assert_int_equal(mkdir(left_del, 0711), 0);
    snprintf(file, sizeof(file), "%s/%s", left_del, MARKER);
    write_file(file, text, 0644);
    snprintf(file, sizeof(file), "%s/workspace", left_del);
    assert_int_equal(mkdir(file, 0700), 0);

    u.id = used;
    u.calls = 0;
    er_bwrap_sweep(is_in_use, &u);
    assert_true(u.calls >= 3);

    assert_true(er_bwrap_is_alive(used));
    assert_true(er_bwrap_is_alive(id_main));
    assert_false(er_bwrap_is_alive(done));
    assert_false(pid_runs(done_pid));
    assert_false(pid_runs(orphan_pid));
    path_in(path, sizeof(path), orphan, NULL);
    assert_int_equal(lstat(path, &st), -1);
    path_in(path, sizeof(path), done, NULL);
    assert_int_equal(lstat(path, &st), -1);
    path_in(path, sizeof(path), half, NULL);
    assert_int_equal(lstat(path, &st), -1);
    assert_int_equal(lstat(left_new, &st), -1);
    assert_int_equal(lstat(left_del, &st), -1);
    path_in(path, sizeof(path), other, NULL);
    assert_int_equal(lstat(path, &st), 0);
    rm_rf(path);
    assert_int_equal(er_bwrap_destroy(used, &err), 0);
}

static void bwrap_rejects_bad_ids(void **state)
{
    static const char *const bad[] = {
        "",
        "0123456789abcde",
        "0123456789abcdef0",
        "0123456789ABCDEF",
        "0123456789abcdeg",
        "../../../../etc/",
        "0123456789abcde/",
        "0123456789abcde\n",
    };
    static const char *const echo[] = { "echo", NULL };
    struct er_driver_exec_result res;
    struct er_err err;
    char path[PATH_MAX];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(er_bwrap_create(bad[i], NULL, &err), ER_EINVAL);
        assert_int_equal(er_bwrap_destroy(bad[i], &err), ER_EINVAL);
        assert_int_equal(run(bad[i], echo, NULL, NULL, 1000, &res), ER_EINVAL);
        er_driver_exec_result_fini(&res);
        assert_int_equal(
            er_bwrap_exec_fd(bad[i], echo, NULL, -1, 1000, &res, &err),
            ER_EINVAL);
        er_driver_exec_result_fini(&res);
        assert_false(er_bwrap_is_alive(bad[i]));
        assert_int_equal(er_bwrap_workspace_path(bad[i], path, sizeof(path)),
                         ER_EINVAL);
    }
    assert_int_equal(er_bwrap_create(NULL, NULL, &err), ER_EINVAL);
    assert_int_equal(er_bwrap_destroy(NULL, &err), ER_EINVAL);
    assert_false(er_bwrap_is_alive(NULL));
    /* A valid id with no sandbox. */
    assert_int_equal(run("00000000deadbeef", echo, NULL, NULL, 1000, &res),
                     ER_ENOTFOUND);
    er_driver_exec_result_fini(&res);
    assert_int_equal(er_bwrap_workspace_path(id_main, path, 8), ER_E2BIG);
}

static void bwrap_create_adopts_a_running_sandbox(void **state)
{
    static const char *const echo[] = { "echo", "again", NULL };
    struct er_bwrap_limits lim = { 256 * MIB, 64, 0 };
    struct er_driver_exec_result res;
    struct er_err err;
    char id[ER_BWRAP_ID_LEN + 1];
    pid_t pid;
    pid_t pid2;

    (void)state;
    pid = init_pid(id_main);
    assert_int_equal(er_bwrap_create(id_main, &lim, &err), 0);
    assert_int_equal(init_pid(id_main), pid);

    /* One whose sandbox died is made again. */
    new_id(id);
    assert_int_equal(er_bwrap_create(id, NULL, &err), 0);
    pid = init_pid(id);
    assert_int_equal(kill(pid, SIGKILL), 0);
    while (pid_runs(pid))
        sleep_ms(5);
    assert_false(er_bwrap_is_alive(id));
    assert_int_equal(er_bwrap_create(id, NULL, &err), 0);
    pid2 = init_pid(id);
    assert_int_not_equal(pid2, pid);
    assert_true(er_bwrap_is_alive(id));
    assert_int_equal(run(id, echo, NULL, NULL, 30000, &res), 0);
    assert_string_equal(res.out, "again\n");
    er_driver_exec_result_fini(&res);
    assert_int_equal(er_bwrap_destroy(id, &err), 0);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/* Not an assertion: the numbers, for the record. Runs: ER_BWRAP_BENCH_RUNS
 * (default 5). */
static void bwrap_measure_create_and_exec(void **state)
{
    static const char *const true_argv[] = { "true", NULL };
    struct er_bwrap_limits lim = { 256 * MIB, 64, 0 };
    struct er_driver_exec_result res;
    struct er_err err;
    char id[ER_BWRAP_ID_LEN + 1];
    const char *env_runs = getenv("ER_BWRAP_BENCH_RUNS");
    int64_t create_ms[200];
    int64_t exec_ms[200];
    int64_t destroy_ms[200];
    long runs = env_runs != NULL ? strtol(env_runs, NULL, 10) : 5;
    long i;

    (void)state;
    if (runs < 1 || runs > 200)
        runs = 5;
    for (i = 0; i < runs; i++) {
        int64_t t0;

        new_id(id);
        t0 = er_time_mono_ms();
        assert_int_equal(er_bwrap_create(id, &lim, &err), 0);
        create_ms[i] = er_time_mono_ms() - t0;
        t0 = er_time_mono_ms();
        assert_int_equal(er_bwrap_destroy(id, &err), 0);
        destroy_ms[i] = er_time_mono_ms() - t0;
    }
    for (i = 0; i < runs; i++) {
        int64_t t0 = er_time_mono_ms();

        assert_int_equal(run(id_main, true_argv, NULL, NULL, 30000, &res), 0);
        exec_ms[i] = er_time_mono_ms() - t0;
        assert_int_equal(res.exit_code, 0);
        er_driver_exec_result_fini(&res);
    }
    qsort(create_ms, (size_t)runs, sizeof(int64_t), cmp_i64);
    qsort(destroy_ms, (size_t)runs, sizeof(int64_t), cmp_i64);
    qsort(exec_ms, (size_t)runs, sizeof(int64_t), cmp_i64);
    print_message("bwrap over %ld runs: create-to-ready median %lld ms "
                  "(max %lld), destroy median %lld ms, exec `true` median "
                  "%lld ms (max %lld)\n",
                  runs, (long long)create_ms[runs / 2],
                  (long long)create_ms[runs - 1],
                  (long long)destroy_ms[runs / 2], (long long)exec_ms[runs / 2],
                  (long long)exec_ms[runs - 1]);
}

/* ------------------------------------------------------------------ */

static bool never_in_use(const char *lease_tag, void *arg)
{
    (void)lease_tag;
    (void)arg;
    return false;
}

static void cleanup(void)
{
    er_bwrap_sweep(never_in_use, NULL);
    rm_rf(dir);
    rm_rf(outside);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bwrap_runs_commands_and_reports_exit_codes),
        cmocka_unit_test(bwrap_runs_in_the_requested_cwd),
        cmocka_unit_test(bwrap_environment_is_exactly_the_requested_one),
        cmocka_unit_test(bwrap_network_is_loopback_only),
        cmocka_unit_test(bwrap_host_files_are_invisible),
        cmocka_unit_test(bwrap_workspace_persists_and_shows_on_the_host),
        cmocka_unit_test(bwrap_commands_have_no_privileges),
        cmocka_unit_test_setup_teardown(
            bwrap_environment_is_exactly_the_requested_one, tool_mode_on,
            tool_mode_off),
        cmocka_unit_test_setup_teardown(bwrap_network_is_loopback_only,
                                        tool_mode_on, tool_mode_off),
        cmocka_unit_test_setup_teardown(bwrap_host_files_are_invisible,
                                        tool_mode_on, tool_mode_off),
        cmocka_unit_test_setup_teardown(bwrap_commands_have_no_privileges,
                                        tool_mode_on, tool_mode_off),
        cmocka_unit_test_setup_teardown(bwrap_memory_hog_is_contained,
                                        tool_mode_on, tool_mode_off),
        cmocka_unit_test_setup_teardown(
            bwrap_worker_tools_enter_the_same_sandbox, tool_mode_on,
            tool_mode_off),
        cmocka_unit_test(bwrap_fork_bomb_is_contained),
        cmocka_unit_test(bwrap_memory_hog_is_contained),
        cmocka_unit_test(bwrap_timeout_kills_the_whole_tree),
        cmocka_unit_test(bwrap_sandbox_outlives_its_maker),
        cmocka_unit_test(bwrap_destroy_removes_everything),
        cmocka_unit_test(bwrap_destroy_touches_only_its_own),
        cmocka_unit_test(bwrap_failed_create_leaves_nothing),
        cmocka_unit_test(bwrap_sweep_ends_what_is_not_in_use),
        cmocka_unit_test(bwrap_rejects_bad_ids),
        cmocka_unit_test(bwrap_create_adopts_a_running_sandbox),
        cmocka_unit_test(bwrap_measure_create_and_exec),
    };
    struct er_bwrap_limits lim = { 256 * MIB, 64, 0 };
    struct er_err err;
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/er-bwrap-test-XXXXXX");
    snprintf(outside, sizeof(outside), "/tmp/er-bwrap-outside-XXXXXX");
    if (mkdtemp(dir) == NULL || mkdtemp(outside) == NULL) {
        fprintf(stderr, "sandbox_bwrap_test: mkdtemp failed (errno %d)\n",
                errno);
        return 1;
    }
    er_driver_set_installation(INSTALLATION);
    er_bwrap_set_dir(dir);
    er_err_clear(&err);
    if (er_bwrap_probe(&err) != 0) {
        cleanup();
        if (getenv("CI") != NULL) {
            fprintf(stderr,
                    "sandbox_bwrap_test: bwrap cannot run and CI is "
                    "set: %s\n",
                    err.msg);
            return 1;
        }
        printf("sandbox_bwrap_test: skipped: %s\n", err.msg);
        return 0;
    }
    new_id(id_main);
    if (er_bwrap_create(id_main, &lim, &err) != 0) {
        fprintf(stderr, "sandbox_bwrap_test: create: %s\n", err.msg);
        cleanup();
        return 1;
    }
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    cleanup();
    return rc;
}
