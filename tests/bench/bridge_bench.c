/* bridge_bench: what the callback bridge adds, per transport, over a real
 * bwrap sandbox and over ssh (the test sshd of scripts/test-services.sh),
 * measured the way issue [6] states upstream's figures: sequential GETs
 * through the bridge interleaved with direct GETs to the same API (p50/p99
 * of both and the difference), requests/s with 8 concurrent agent clients
 * through the bridge and directly, the gateway's peak resident memory, and
 * the execs and CPU an idle bridge costs over 10 s. The API is a small
 * multi-threaded HTTP server in this process (a stand-in: Paperclip's API
 * is a Node server that cannot run here). The host side is the worker's
 * own bridge code (bridge/runtime.c) over a lease's exec: the bwrap
 * provider's, or the ssh driver's (one multiplexed connection per lease).
 * The agent's clients are threads: in the sandbox's network namespace on
 * bwrap (it has no other way out), on this machine's loopback on ssh (the
 * ssh host's, which is this machine); the direct ones stay on the host.
 * Numbers, not asserts: label bench. Needs root and bubblewrap; the ssh
 * part runs when ENVRUN_TEST_SSH_* are set. argv[1]: sequential rounds
 * (default 300); BRIDGE_BENCH_TARGET and BRIDGE_BENCH_TRANSPORT pick one
 * part (see want). */
#define _GNU_SOURCE /* setns */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bridge/bridge.h"
#include "drivers/driver.h"
#include "drivers/sandbox_int.h"
#include "tests/support/harness.h"

#define ROUNDS_DEFAULT 300
#define CLIENTS        8
#define LOAD_MS        5000
#define IDLE_MS        10000
#define API_THREADS    16
#define SLOW_API_MS    40
#define ADAPTER        "bench"
#define BODY           "{\"id\":\"agent-1\",\"name\":\"bench\"}"
#define GATEWAY_REL \
    "/.paperclip-runtime/" ADAPTER "/paperclip-bridge/server/envrun-gateway"
/* The ssh environment's rows, as the control plane would have them. */
#define SSH_COMPANY_ID "6a0c4f1e-2b3d-4c5e-8f70-81a2b3c4d5e6"
#define SSH_ENV_ID     "7b1d5a2f-3c4e-4d6f-9a81-92b3c4d5e6f7"

/* Where the gateway runs and how the bench reaches it: the lease's exec
 * channel, the bridge's workspace there, and the network its clients use.
 * Everything is borrowed for the bench's life. */
struct target {
    const char *remote_cwd; /* the bridge's workspace on the target */
    const char *host_cwd;   /* the same directory, as this machine sees it */
    const char *lease_id;
    /* Run req there, as er_driver_ops.execute does. */
    int (*execute)(const struct target *t, const struct er_driver_exec *req,
                   struct er_driver_exec_result *res, struct er_err *err);
    /* ssh: the driver and the lease it runs on. */
    const struct er_driver_ops *ops;
    const struct er_driver_env *env;
    const struct er_driver_lease *lease;
    /* The gateway listens in a network namespace of its own (the
     * sandbox's), which the agent's clients enter; false: this machine's
     * loopback. */
    bool has_netns;
    /* A process outside this one's tree whose descendants run the execs,
     * for the CPU they cost (the sshd process of the lease's connection:
     * the ssh host is this machine); 0: none. */
    long exec_root_pid;
};

static char sandbox_id[ER_BWRAP_ID_LEN + 1];
static atomic_long execs;
/* The API's service time per request: 0, or SLOW_API_MS to stand for a
 * Paperclip API doing about 200 requests/s with 8 clients (upstream's
 * measured direct rate on this machine). */
static atomic_int api_delay_ms;
static int api_port;
static int gw_port;
static int gw_netns = -1; /* -1: the clients stay in this machine's */
static char token[ER_BRIDGE_TOKEN_LEN + 1];

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/* ---- the API stand-in: answers every request at once ---- */

static void *api_main(void *arg)
{
    int lfd = *(int *)arg;
    static const char resp[] =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        "Content-Length: 31\r\nConnection: close\r\n\r\n" BODY;

    for (;;) {
        char buf[8192];
        size_t got = 0;
        int fd = accept(lfd, NULL, NULL);

        if (fd < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        while (got < sizeof(buf) - 1) {
            ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);

            if (n <= 0)
                break;
            got += (size_t)n;
            buf[got] = '\0';
            if (strstr(buf, "\r\n\r\n") != NULL)
                break;
        }
        if (atomic_load(&api_delay_ms) > 0)
            nanosleep(
                &(struct timespec){ 0, atomic_load(&api_delay_ms) * 1000000L },
                NULL);
        if (write(fd, resp, sizeof(resp) - 1) < 0) {
            /* the client went away */
        }
        close(fd);
    }
}

static int api_start(void)
{
    static int lfd;
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t len = sizeof(a);
    pthread_t t;
    int i;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(lfd, 512) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    api_port = ntohs(a.sin_port);
    for (i = 0; i < API_THREADS; i++) {
        if (pthread_create(&t, NULL, api_main, &lfd) != 0)
            return -1;
        pthread_detach(t);
    }
    return 0;
}

/* ---- one HTTP GET (a new connection each time, as agents do) ---- */

static int http_get(int port, const char *auth)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    char req[512];
    char buf[4096];
    size_t got = 0;
    int fd;
    int n;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    n = snprintf(req, sizeof(req),
                 "GET /api/agents/me HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Authorization: Bearer %s\r\nAccept: application/json\r\n"
                 "Connection: close\r\n\r\n",
                 auth);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    for (;;) {
        ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);

        if (r <= 0)
            break;
        got += (size_t)r;
        if (got == sizeof(buf) - 1)
            break;
    }
    close(fd);
    buf[got] = '\0';
    if (getenv("BRIDGE_BENCH_DEBUG") != NULL &&
        strncmp(buf, "HTTP/1.1 200", 12) != 0)
        fprintf(stderr, "bridge_bench: port %d answered: %.300s\n", port, buf);
    return strncmp(buf, "HTTP/1.1 200", 12) == 0 && strstr(buf, BODY) != NULL
               ? 0
               : -1;
}

/* ---- the exec channel: the target's ---- */

static int run(const struct target *t, const char *script, const void *in,
               size_t in_len, int64_t timeout_ms, bool is_detached,
               const struct er_driver_stdio *stdio, const atomic_bool *cancel,
               struct er_driver_exec_result *res, struct er_err *err)
{
    const char *args[] = { "-c", script, NULL };
    struct er_driver_exec req;
    int rc;

    memset(&req, 0, sizeof(req));
    req.command = "sh";
    req.args = args;
    req.cwd = t->remote_cwd;
    req.stdin_data = in;
    req.stdin_len = in_len;
    req.timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    req.is_detached = is_detached;
    /* As worker/bridge_host.c: the held exec is not a tool's. */
    req.is_worker_tool = stdio == NULL;
    req.stdio = stdio;
    atomic_fetch_add(&execs, 1);
    er_proc_set_cancel(cancel);
    rc = t->execute(t, &req, res, err);
    er_proc_set_cancel(NULL);
    return rc;
}

static int bwrap_execute(const struct target *t,
                         const struct er_driver_exec *req,
                         struct er_driver_exec_result *res, struct er_err *err)
{
    (void)t;
    return er_bwrap_exec(sandbox_id, req, res, err);
}

static int driver_execute(const struct target *t,
                          const struct er_driver_exec *req,
                          struct er_driver_exec_result *res, struct er_err *err)
{
    return t->ops->execute(t->env, t->lease, req, res, err);
}

static int exec_common(const struct target *t, const char *script,
                       const void *in, size_t in_len, int64_t timeout_ms,
                       bool is_detached, const atomic_bool *cancel,
                       struct er_bridge_exec_out *out, struct er_err *err)
{
    struct er_driver_exec_result res;
    int64_t t0 = now_us();
    int rc = run(t, script, in, in_len, timeout_ms, is_detached, NULL, cancel,
                 &res, err);

    if (getenv("BRIDGE_BENCH_DEBUG") != NULL)
        fprintf(stderr, "exec %6lld us  %.40s\n", (long long)(now_us() - t0),
                script);

    if (rc != 0)
        return rc;
    out->exit_code = res.is_timed_out ? -1 : res.exit_code;
    if ((res.out_len > 0 &&
         er_buf_append(&out->out, res.out, res.out_len) != 0) ||
        (res.err_len > 0 &&
         er_buf_append(&out->err, res.err_text, res.err_len) != 0))
        rc = er_err_set(err, ER_E2BIG, ER_ERRCLASS_NONE, "output too big");
    er_driver_exec_result_fini(&res);
    return rc;
}

static int exec_plain(void *arg, const char *script, const void *in,
                      size_t in_len, int64_t timeout_ms,
                      const atomic_bool *cancel, struct er_bridge_exec_out *out,
                      struct er_err *err)
{
    return exec_common(arg, script, in, in_len, timeout_ms, false, cancel, out,
                       err);
}

static int exec_detached(void *arg, const char *script, const void *in,
                         size_t in_len, int64_t timeout_ms,
                         const atomic_bool *cancel,
                         struct er_bridge_exec_out *out, struct er_err *err)
{
    return exec_common(arg, script, in, in_len, timeout_ms, true, cancel, out,
                       err);
}

/* Scripts a queue_v1 bridge ran through its held runner: each is a
 * process start where the gateway runs, counted with the execs. */
static long runner_commands(struct er_bridge_run *r)
{
    struct er_bridge_runner_stats st;

    (void)er_bridge_run_runner_stats(r, &st);
    return (long)st.commands;
}

static int hold(void *arg, const char *script, int in_fd, int out_fd,
                int64_t timeout_ms, const atomic_bool *cancel, int *exit_code,
                struct er_err *err)
{
    struct er_driver_stdio stdio = { in_fd, out_fd };
    struct er_driver_exec_result res;
    int rc;

    rc =
        run(arg, script, NULL, 0, timeout_ms, false, &stdio, cancel, &res, err);
    if (rc != 0)
        return rc;
    *exit_code = res.exit_code;
    er_driver_exec_result_fini(&res);
    return 0;
}

/* ---- the gateway and the execs, as this machine sees them ---- */

static long pid_of(const char *name)
{
    char *end = NULL;
    long pid = strtol(name, &end, 10);

    return end != name && *end == '\0' && pid > 0 ? pid : 0;
}

/* /proc/<pid>/<what> into buf, NUL-terminated (at most len - 1 bytes);
 * the bytes read, or -1 when the process is gone. */
static long proc_read(long pid, const char *what, char *buf, size_t len)
{
    char path[64];
    size_t n;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%ld/%s", pid, what);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (long)n;
}

/* The gateway's pid, 0 when none: the process run as its path under
 * t->remote_cwd with no arguments (a list wait has some) whose view of
 * that directory is t's (another sandbox has the same paths). */
static long gateway_pid(const struct target *t)
{
    char argv0[512];
    struct stat want;
    DIR *d = opendir("/proc");
    struct dirent *e;
    long pid = 0;

    snprintf(argv0, sizeof(argv0), "%s" GATEWAY_REL, t->remote_cwd);
    if (stat(t->host_cwd, &want) != 0) {
        if (d != NULL)
            closedir(d);
        return 0;
    }
    while (d != NULL && pid == 0 && (e = readdir(d)) != NULL) {
        long cand = pid_of(e->d_name);
        char path[600];
        char buf[512];
        struct stat st;

        if (cand == 0 ||
            proc_read(cand, "cmdline", buf, sizeof(buf)) !=
                (long)strlen(argv0) + 1 ||
            strcmp(buf, argv0) != 0)
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/root%s", cand, t->remote_cwd);
        if (stat(path, &st) == 0 && st.st_dev == want.st_dev &&
            st.st_ino == want.st_ino)
            pid = cand;
    }
    if (d != NULL)
        closedir(d);
    return pid;
}

/* A "Field:" of /proc/<pid>/status in KiB, -1 when unknown. */
static long status_kib(long pid, const char *field)
{
    char buf[4096];
    char key[32];
    const char *at;

    snprintf(key, sizeof(key), "\n%s:", field);
    if (proc_read(pid, "status", buf, sizeof(buf)) < 0)
        return -1;
    at = strstr(buf, key);
    return at != NULL ? strtol(at + strlen(key), NULL, 10) : -1;
}

/* One process of /proc: its parent and CPU seconds (its own, plus those of
 * the children it reaped). */
struct proc_cpu {
    long pid;
    long ppid;
    double cpu_s;
    bool is_in;
};

/* pid's row from /proc/<pid>/stat; false when it is gone. */
static bool proc_cpu_read(long pid, struct proc_cpu *p)
{
    char buf[1024];
    const char *s;
    double sum = 0;
    int i;

    if (proc_read(pid, "stat", buf, sizeof(buf)) < 0)
        return false;
    /* After "pid (comm)": state, ppid, ..., utime, stime, cutime, cstime
     * (fields 14-17 of proc(5)). */
    s = strrchr(buf, ')');
    if (s == NULL)
        return false;
    p->pid = pid;
    p->ppid = 0;
    for (i = 3; i <= 17 && s != NULL; i++) {
        long v;

        s = strchr(s + 1, ' ');
        if (s == NULL || i == 3)
            continue;
        v = strtol(s + 1, NULL, 10);
        if (i == 4)
            p->ppid = v;
        else if (i >= 14)
            sum += (double)v;
    }
    p->cpu_s = sum / (double)sysconf(_SC_CLK_TCK);
    return s != NULL;
}

/* Every process of /proc, into *rows (er_free); how many. */
static size_t proc_scan(struct proc_cpu **rows)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    size_t cnt = 0;
    size_t cap = 0;

    *rows = NULL;
    while (d != NULL && (e = readdir(d)) != NULL) {
        long pid = pid_of(e->d_name);

        if (pid == 0)
            continue;
        if (cnt == cap) {
            struct proc_cpu *grown;

            grown = er_realloc(*rows, (cap + 256) * sizeof(**rows));
            if (grown == NULL)
                break;
            *rows = grown;
            cap += 256;
        }
        if (proc_cpu_read(pid, &(*rows)[cnt]))
            cnt++;
    }
    if (d != NULL)
        closedir(d);
    return cnt;
}

/* The CPU seconds of the live trees of root and extra (either may be 0:
 * none), each process once; through cutime and cstime also those of the
 * descendants they reaped. */
static double tree_cpu_s(long root, long extra)
{
    struct proc_cpu *rows = NULL;
    size_t cnt = proc_scan(&rows);
    double sum = 0;
    bool is_grown = true;
    size_t i;
    size_t j;

    for (i = 0; i < cnt; i++)
        rows[i].is_in = (root > 0 && rows[i].pid == root) ||
                        (extra > 0 && rows[i].pid == extra);
    /* Mark their descendants, a generation a pass. */
    while (is_grown) {
        is_grown = false;
        for (i = 0; i < cnt; i++) {
            for (j = 0; j < cnt && !rows[i].is_in; j++) {
                if (rows[j].is_in && rows[j].pid == rows[i].ppid) {
                    rows[i].is_in = true;
                    is_grown = true;
                }
            }
        }
    }
    for (i = 0; i < cnt; i++) {
        if (rows[i].is_in)
            sum += rows[i].cpu_s;
    }
    er_free(rows);
    return sum;
}
/* ---- clients ---- */

struct load {
    bool is_bridged;
    int64_t until_us;
    long done;
    long failed;
};

static void *client_main(void *arg)
{
    struct load *l = arg;

    /* The agent lives on the target: in a sandbox, its network is the
     * sandbox's. */
    if (l->is_bridged && gw_netns >= 0 && setns(gw_netns, CLONE_NEWNET) != 0) {
        perror("bridge_bench: setns");
        return NULL;
    }
    while (now_us() < l->until_us) {
        if (http_get(l->is_bridged ? gw_port : api_port, token) == 0)
            l->done++;
        else
            l->failed++;
    }
    return NULL;
}

/* Requests per second with CLIENTS clients for LOAD_MS. */
static double load_rate(bool is_bridged, long *failed)
{
    struct load l[CLIENTS];
    pthread_t t[CLIENTS];
    int64_t t0 = now_us();
    long done = 0;
    int i;

    *failed = 0;
    for (i = 0; i < CLIENTS; i++) {
        l[i] = (struct load){ is_bridged, t0 + LOAD_MS * 1000LL, 0, 0 };
        pthread_create(&t[i], NULL, client_main, &l[i]);
    }
    for (i = 0; i < CLIENTS; i++) {
        pthread_join(t[i], NULL);
        done += l[i].done;
        *failed += l[i].failed;
    }
    return (double)done * 1e6 / (double)(now_us() - t0);
}

struct seq {
    int rounds;
    int64_t *direct;
    int64_t *bridged;
    int failed;
};

/* Sequential, interleaved: one direct GET (host network), one bridged GET
 * (this thread in the gateway's network, sockets made in each). */
static void *seq_main(void *arg)
{
    struct seq *s = arg;
    int host_ns = open("/proc/self/ns/net", O_RDONLY);
    int i;

    for (i = 0; i < s->rounds; i++) {
        int64_t t0;

        if (gw_netns >= 0 && setns(host_ns, CLONE_NEWNET) != 0)
            break;
        t0 = now_us();
        if (http_get(api_port, token) != 0)
            s->failed++;
        s->direct[i] = now_us() - t0;
        if (gw_netns >= 0 && setns(gw_netns, CLONE_NEWNET) != 0)
            break;
        t0 = now_us();
        if (http_get(gw_port, token) != 0)
            s->failed++;
        s->bridged[i] = now_us() - t0;
    }
    close(host_ns);
    return NULL;
}

static double ru_s(int who)
{
    struct rusage ru;

    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* This process and the execs it ran (the whole exec chain into a sandbox
 * and what the scripts start there are its reaped descendants), the
 * gateway, and the target's side of the execs outside this process's tree
 * (sshd's sessions). */
static double cpu_s(const struct target *t, long gateway)
{
    return ru_s(RUSAGE_SELF) + ru_s(RUSAGE_CHILDREN) +
           tree_cpu_s(t->exec_root_pid, gateway);
}

/* One transport on target t: a row of the table. 0, or 1 after printing
 * why. */
static int bench(const struct target *t, const char *transport, int rounds,
                 const struct er_bridge_allow *allow)
{
    struct er_bridge_run_opts o;
    struct er_bridge_run *r = NULL;
    struct er_secret host_token = { 0 };
    struct seq s = { rounds, NULL, NULL, 0 };
    bool is_stream = strcmp(transport, "stream_v1") == 0;
    pthread_t tid;
    char origin[64];
    char path[64];
    struct er_err err;
    double direct_rate;
    double bridged_rate;
    double slow_direct;
    double slow_bridged;
    long sd_fail;
    long sb_fail;
    double cpu0;
    long pid;
    long fd_fail;
    long fb_fail;
    long rss_kib;
    long e0;
    int rc = 1;

    snprintf(origin, sizeof(origin), "http://127.0.0.1:%d", api_port);
    if (er_secret_set(&host_token, "bench-run-jwt", 13) != 0)
        goto out;
    memset(&o, 0, sizeof(o));
    o.exec = exec_plain;
    o.exec_detached = exec_detached;
    o.hold = hold;
    o.is_queue_only = !is_stream;
    o.exec_arg = (void *)(uintptr_t)t;
    o.remote_cwd = t->remote_cwd;
    o.adapter_key = ADAPTER;
    o.origin = origin;
    o.allow = allow;
    o.host_token = &host_token;
    o.lease_id = t->lease_id;
    o.run_id = is_stream ? "bench-run-stream" : "bench-run-queue";
    er_err_clear(&err);
    if (er_bridge_run_start(&o, &r, &err) != 0) {
        fprintf(stderr, "bridge_bench: %s: %s\n", transport, err.msg);
        goto out;
    }
    if (strcmp(er_bridge_run_transport(r), transport) != 0) {
        fprintf(stderr, "bridge_bench: got %s, not %s\n",
                er_bridge_run_transport(r), transport);
        goto out;
    }
    snprintf(token, sizeof(token), "%s", er_bridge_run_token(r));
    gw_port = er_bridge_run_port(r);
    pid = gateway_pid(t);
    snprintf(path, sizeof(path), "/proc/%ld/ns/net", pid);
    gw_netns = pid > 0 && t->has_netns ? open(path, O_RDONLY) : -1;
    if (pid <= 0 || (t->has_netns && gw_netns < 0)) {
        fprintf(stderr, "bridge_bench: gateway not found\n");
        goto out;
    }

    s.direct = er_calloc((size_t)rounds, sizeof(int64_t));
    s.bridged = er_calloc((size_t)rounds, sizeof(int64_t));
    if (s.direct == NULL || s.bridged == NULL)
        goto out;
    pthread_create(&tid, NULL, seq_main, &s);
    pthread_join(tid, NULL);
    qsort(s.direct, (size_t)rounds, sizeof(int64_t), cmp_i64);
    qsort(s.bridged, (size_t)rounds, sizeof(int64_t), cmp_i64);
    direct_rate = load_rate(false, &fd_fail);
    bridged_rate = load_rate(true, &fb_fail);
    atomic_store(&api_delay_ms, SLOW_API_MS);
    slow_direct = load_rate(false, &sd_fail);
    slow_bridged = load_rate(true, &sb_fail);
    atomic_store(&api_delay_ms, 0);

    /* Idle: no request for IDLE_MS. */
    e0 = atomic_load(&execs) + runner_commands(r);
    cpu0 = cpu_s(t, pid);
    nanosleep(&(struct timespec){ IDLE_MS / 1000, 0 }, NULL);
    rss_kib = status_kib(pid, "VmHWM");
    if (rss_kib < 0)
        fprintf(stderr,
                "bridge_bench: %s: the gateway (pid %ld) ended during the "
                "run: its row does not hold\n",
                transport, pid);

    printf("| %s | %.2f | %.2f | %.2f / %.2f | %.0f / %.0f (%.1f %%) | "
           "%.0f / %.0f (%.1f %%) | %ld | %.2f | %.3f | %ld |\n",
           transport, (double)s.direct[rounds / 2] / 1000.0,
           (double)s.bridged[rounds / 2] / 1000.0,
           (double)(s.bridged[rounds / 2] - s.direct[rounds / 2]) / 1000.0,
           (double)(s.bridged[(rounds * 99) / 100] -
                    s.direct[(rounds * 99) / 100]) /
               1000.0,
           direct_rate, bridged_rate, 100.0 * bridged_rate / direct_rate,
           slow_direct, slow_bridged, 100.0 * slow_bridged / slow_direct,
           rss_kib,
           (double)(atomic_load(&execs) + runner_commands(r) - e0) * 1000.0 /
               IDLE_MS,
           (cpu_s(t, pid) - cpu0) * 1000.0 / IDLE_MS,
           (long)s.failed + fd_fail + fb_fail + sd_fail + sb_fail);
    fflush(stdout);
    rc = 0;
out:
    if (gw_netns >= 0)
        close(gw_netns);
    gw_netns = -1;
    er_bridge_run_stop(r, 0, true);
    er_secret_fini(&host_token);
    er_free(s.direct);
    er_free(s.bridged);
    return rc;
}

/* Whether a part runs: every part when the variable that picks one
 * (BRIDGE_BENCH_TARGET: bwrap or ssh; BRIDGE_BENCH_TRANSPORT: stream_v1
 * or queue_v1) is unset or empty. */
static bool want(const char *pick, const char *part)
{
    return pick == NULL || pick[0] == '\0' || strcmp(pick, part) == 0;
}

/* Both transports on t, under a line that says what t is. */
static int bench_target(const struct target *t, const char *what, int rounds,
                        const struct er_bridge_allow *allow)
{
    size_t image_len;
    int rc;

    er_bridge_gateway_image(&image_len);
    printf("bridge_bench: %s, %d sequential rounds, %d clients for %d s, "
           "idle %d s; gateway %zu bytes on disk\n\n",
           what, rounds, CLIENTS, LOAD_MS / 1000, IDLE_MS / 1000, image_len);
    printf("| transport | direct p50 ms | bridged p50 ms | added p50 / p99 ms "
           "| 8 clients, instant API: direct / bridged req/s | 8 clients, "
           "API at %d ms a request: direct / bridged req/s | gateway peak "
           "RSS KiB | idle execs/s (lease execs + runner scripts) | idle CPU, "
           "host side, execs and gateway "
           "(cores) | failed |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n",
           SLOW_API_MS);
    fflush(stdout);
    rc = 0;
    if (want(getenv("BRIDGE_BENCH_TRANSPORT"), "stream_v1"))
        rc |= bench(t, "stream_v1", rounds, allow);
    if (want(getenv("BRIDGE_BENCH_TRANSPORT"), "queue_v1"))
        rc |= bench(t, "queue_v1", rounds, allow);
    printf("\n");
    fflush(stdout);
    return rc;
}

/* ---- the targets ---- */

static int bench_bwrap(const char *dir, int rounds,
                       const struct er_bridge_allow *allow)
{
    struct er_bwrap_limits lim = { 8192LL * 1024 * 1024, 1024, 0 };
    char host_cwd[600];
    const struct target t = { .remote_cwd = ER_BWRAP_WORKSPACE,
                              .host_cwd = host_cwd,
                              .lease_id =
                                  "00000000-0000-4000-8000-000000000001",
                              .execute = bwrap_execute,
                              .has_netns = true };
    struct er_err err;
    int rc;

    er_bwrap_set_dir(dir);
    er_err_clear(&err);
    if (er_bwrap_probe(&err) != 0) {
        fprintf(stderr, "bridge_bench: no sandboxes here: %s\n", err.msg);
        return 1;
    }
    snprintf(sandbox_id, sizeof(sandbox_id), "%016x", 0xb71d9e);
    if (er_bwrap_create(sandbox_id, &lim, &err) != 0) {
        fprintf(stderr, "bridge_bench: create: %s\n", err.msg);
        return 1;
    }
    rc = er_bwrap_workspace_path(sandbox_id, host_cwd, sizeof(host_cwd));
    rc = rc == 0 ? bench_target(&t, "bwrap sandbox", rounds, allow) : 1;
    er_bwrap_destroy(sandbox_id, &err);
    return rc;
}

/* The sshd listener's children (one per connection), up to max. */
static size_t connections(long listener, long *pids, size_t max)
{
    struct proc_cpu *rows = NULL;
    size_t cnt = proc_scan(&rows);
    size_t n = 0;
    size_t i;

    for (i = 0; i < cnt && n < max; i++) {
        if (rows[i].ppid == listener)
            pids[n++] = rows[i].pid;
    }
    er_free(rows);
    return n;
}

/* The sshd process of the connection that opened since before (n of
 * them): its tree runs this lease's execs. The listener when that is not
 * clear (another client connected at the same time), with a note: the
 * idle CPU then counts other sessions too. */
static long connection_of(long listener, const long *before, size_t n)
{
    long now[64];
    size_t cnt = connections(listener, now, 64);
    long found = 0;
    size_t i;
    size_t j;

    for (i = 0; i < cnt; i++) {
        for (j = 0; j < n && before[j] != now[i]; j++)
            ;
        if (j == n)
            found = found == 0 ? now[i] : -1;
    }
    if (found > 0)
        return found;
    fprintf(stderr, "bridge_bench: ssh: the lease's sshd connection is not "
                    "clear; idle CPU counts every sshd session\n");
    return listener;
}

static long listener_pid(void)
{
    const char *path = getenv("ENVRUN_TEST_SSH_PID_FILE");
    char text[32] = "";
    FILE *f = path != NULL ? fopen(path, "r") : NULL;

    if (f != NULL) {
        if (fgets(text, sizeof(text), f) == NULL)
            text[0] = '\0';
        fclose(f);
    }
    text[strcspn(text, "\n")] = '\0';
    return pid_of(text);
}

/* The harness wrote the key as secret ssh->secret_id; the driver reads
 * it as the company's (contract.md 6): move it there. 0, or -1 after
 * printing why. */
static int key_to_company(const struct er_harness_ssh *ssh)
{
    char dir[ER_HARNESS_PATH_MAX + 64];
    char from[ER_HARNESS_PATH_MAX + 64];
    char to[ER_HARNESS_PATH_MAX + 128];

    snprintf(dir, sizeof(dir), "%s/%s", ssh->secrets_dir, SSH_COMPANY_ID);
    snprintf(from, sizeof(from), "%s/%s", ssh->secrets_dir, ssh->secret_id);
    snprintf(to, sizeof(to), "%s/%s", dir, ssh->secret_id);
    if (mkdir(dir, 0700) != 0 || rename(from, to) != 0) {
        fprintf(stderr, "bridge_bench: cannot place the key in %s\n", dir);
        return -1;
    }
    return 0;
}

/* The ssh part: a per_lease environment on the test sshd, a lease of it
 * acquired (and at the end released) through the ssh driver, whose
 * execute is the bridge's exec channel. dir holds the harness's files. */
static int bench_ssh(const char *dir, int rounds,
                     const struct er_bridge_allow *allow)
{
    struct er_harness h = { .name = "bridge_bench" };
    struct er_harness_ssh *ssh = NULL;
    struct er_driver_acquired acq = { 0 };
    struct er_driver_released rel;
    struct er_driver_lease lease;
    struct er_driver_env env;
    struct er_driver_lease_ctx ctx;
    struct target t;
    json_t *config = NULL;
    char what[ER_HARNESS_PATH_MAX + 128];
    char lease_id[37];
    long before[64];
    size_t before_cnt;
    long listener;
    struct er_err err;
    int rc = 1;

    if (getenv("ENVRUN_TEST_SSH_HOST") == NULL ||
        getenv("ENVRUN_TEST_SSH_HOST")[0] == '\0') {
        printf("bridge_bench: ssh: skipped (ENVRUN_TEST_SSH_* are not set: "
               "`scripts/test-services.sh start DIR`, then source "
               "DIR/env)\n");
        return 0;
    }
    /* Only the name and the directory of a harness are used by
     * er_harness_ssh_new: no database or cluster is needed here. */
    snprintf(h.dir, sizeof(h.dir), "%s", dir);
    ssh = er_harness_ssh_new(&h);
    if (ssh == NULL || key_to_company(ssh) != 0)
        goto out;
    er_driver_setup(ssh->secrets_dir);
    config = er_harness_ssh_config(ssh, NULL, "per_lease");
    env = (struct er_driver_env){ SSH_ENV_ID, SSH_COMPANY_ID, "bridge bench",
                                  "ssh",      "active",       config };
    if (er_uuid_v4(lease_id) != 0)
        goto out;
    memset(&ctx, 0, sizeof(ctx));
    ctx.lease_id = lease_id;
    ctx.company_id = SSH_COMPANY_ID;
    listener = listener_pid();
    before_cnt = connections(listener, before, 64);
    er_err_clear(&err);
    if (er_ssh_driver.acquire(&env, &ctx, &acq, &err) != 0) {
        fprintf(stderr, "bridge_bench: ssh acquire: %s\n", err.msg);
        goto out;
    }
    lease = (struct er_driver_lease){ lease_id,
                                      "active",
                                      acq.lease_policy,
                                      acq.provider,
                                      acq.provider_lease_id,
                                      NULL,
                                      acq.metadata };
    t = (struct target){
        .remote_cwd =
            json_string_value(json_object_get(acq.metadata, "remoteCwd")),
        /* The ssh host is this machine. */
        .host_cwd =
            json_string_value(json_object_get(acq.metadata, "remoteCwd")),
        .lease_id = lease_id,
        .execute = driver_execute,
        .ops = &er_ssh_driver,
        .env = &env,
        .lease = &lease,
        .exec_root_pid =
            listener > 0 ? connection_of(listener, before, before_cnt) : 0,
    };
    snprintf(what, sizeof(what),
             "ssh %s@%s:%d (the ssh driver, one multiplexed connection)",
             ssh->user, ssh->host, ssh->port);
    rc = t.remote_cwd != NULL ? bench_target(&t, what, rounds, allow) : 1;
    er_ssh_driver.release(&env, &lease, "released", &rel, &err);
out:
    er_driver_acquired_fini(&acq);
    json_decref(config);
    er_harness_ssh_destroy(ssh);
    return rc;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? strtol(argv[1], NULL, 10) : ROUNDS_DEFAULT;
    char dir[] = "/tmp/bridge-bench-XXXXXX";
    struct er_bridge_allow *allow = NULL;
    char cmd[128];
    struct er_err err;
    int rc;

    if (rounds < 20 || rounds > 100000)
        rounds = ROUNDS_DEFAULT;
    if (mkdtemp(dir) == NULL || api_start() != 0)
        return 1;
    er_log_setup(false, ER_LOG_WARN);
    er_driver_set_installation("5e1f0a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2c");
    er_err_clear(&err);
    if (er_bridge_allow_load(NULL, &allow, &err) != 0)
        return 1;
    rc = 0;
    if (want(getenv("BRIDGE_BENCH_TARGET"), "bwrap"))
        rc |= bench_bwrap(dir, (int)rounds, allow);
    if (want(getenv("BRIDGE_BENCH_TARGET"), "ssh"))
        rc |= bench_ssh(dir, (int)rounds, allow);
    er_bridge_allow_free(allow);
    /* The harness keeps <dir>.secrets beside dir. */
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s.secrets'", dir, dir);
    if (system(cmd) != 0)
        rc = 1;
    return rc;
}
