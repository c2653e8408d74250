/* bridge_bench: what the callback bridge adds, per transport, over a real
 * bwrap sandbox, measured the way issue [6] states upstream's figures:
 * sequential GETs through the bridge interleaved with direct GETs to the
 * same API (p50/p99 of both and the difference), requests/s with 8
 * concurrent agent clients through the bridge and directly, the gateway's
 * peak resident memory, and the execs and host CPU an idle bridge costs
 * over 10 s. The API is a small multi-threaded HTTP server in this process
 * (a stand-in: Paperclip's API is a Node server that cannot run here); the
 * agent's clients are threads that enter the sandbox's network namespace
 * (it has no other way out), the direct ones stay on the host. The host
 * side is the worker's own bridge code (bridge/runtime.c) over the bwrap
 * provider's exec. Numbers, not asserts: label bench. Needs root and
 * bubblewrap; argv[1]: sequential rounds (default 300). */
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
#include <time.h>
#include <unistd.h>

#include "bridge/bridge.h"
#include "drivers/sandbox_int.h"

#define ROUNDS_DEFAULT 300
#define CLIENTS        8
#define LOAD_MS        5000
#define IDLE_MS        10000
#define API_THREADS    16
#define SLOW_API_MS    40
#define ADAPTER        "bench"
#define BODY           "{\"id\":\"agent-1\",\"name\":\"bench\"}"

static char sandbox_id[ER_BWRAP_ID_LEN + 1];
static atomic_long execs;
/* The API's service time per request: 0, or SLOW_API_MS to stand for a
 * Paperclip API doing about 200 requests/s with 8 clients (upstream's
 * measured direct rate on this machine). */
static atomic_int api_delay_ms;
static int api_port;
static int gw_port;
static int gw_netns = -1;
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

/* ---- the exec channel: the bwrap provider ---- */

static int run(const char *script, const void *in, size_t in_len,
               int64_t timeout_ms, bool is_detached,
               const struct er_driver_stdio *stdio, const atomic_bool *cancel,
               struct er_driver_exec_result *res, struct er_err *err)
{
    const char *args[] = { "-c", script, NULL };
    struct er_driver_exec req;
    int rc;

    memset(&req, 0, sizeof(req));
    req.command = "sh";
    req.args = args;
    req.cwd = ER_BWRAP_WORKSPACE;
    req.stdin_data = in;
    req.stdin_len = in_len;
    req.timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    req.is_detached = is_detached;
    req.stdio = stdio;
    atomic_fetch_add(&execs, 1);
    er_proc_set_cancel(cancel);
    rc = er_bwrap_exec(sandbox_id, &req, res, err);
    er_proc_set_cancel(NULL);
    return rc;
}

static int exec_common(const char *script, const void *in, size_t in_len,
                       int64_t timeout_ms, bool is_detached,
                       const atomic_bool *cancel,
                       struct er_bridge_exec_out *out, struct er_err *err)
{
    struct er_driver_exec_result res;
    int64_t t0 = now_us();
    int rc = run(script, in, in_len, timeout_ms, is_detached, NULL, cancel,
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
    (void)arg;
    return exec_common(script, in, in_len, timeout_ms, false, cancel, out, err);
}

static int exec_detached(void *arg, const char *script, const void *in,
                         size_t in_len, int64_t timeout_ms,
                         const atomic_bool *cancel,
                         struct er_bridge_exec_out *out, struct er_err *err)
{
    (void)arg;
    return exec_common(script, in, in_len, timeout_ms, true, cancel, out, err);
}

static int hold(void *arg, const char *script, int in_fd, int out_fd,
                int64_t timeout_ms, const atomic_bool *cancel, int *exit_code,
                struct er_err *err)
{
    struct er_driver_stdio stdio = { in_fd, out_fd };
    struct er_driver_exec_result res;
    int rc;

    (void)arg;
    rc = run(script, NULL, 0, timeout_ms, false, &stdio, cancel, &res, err);
    if (rc != 0)
        return rc;
    *exit_code = res.exit_code;
    er_driver_exec_result_fini(&res);
    return 0;
}

/* ---- the gateway, as the host sees it ---- */

static long gateway_pid(void)
{
    static const char argv0[] = ER_BWRAP_WORKSPACE
        "/.paperclip-runtime/" ADAPTER "/paperclip-bridge/server/"
        "envrun-gateway";
    DIR *d = opendir("/proc");
    struct dirent *e;
    long pid = 0;

    while (d != NULL && pid == 0 && (e = readdir(d)) != NULL) {
        char path[300];
        char buf[512];
        size_t n;
        FILE *f;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
        f = fopen(path, "r");
        if (f == NULL)
            continue;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        if (strcmp(buf, argv0) == 0)
            pid = atol(e->d_name);
    }
    if (d != NULL)
        closedir(d);
    return pid;
}

static long status_kib(long pid, const char *field)
{
    char path[64];
    char line[256];
    long v = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, field, strlen(field)) == 0)
            v = atol(line + strlen(field) + 1);
    }
    if (f != NULL)
        fclose(f);
    return v;
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

    /* The agent lives in the sandbox: its network is the sandbox's. */
    if (l->is_bridged && setns(gw_netns, CLONE_NEWNET) != 0) {
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
 * (this thread in the sandbox's network, sockets made in each). */
static void *seq_main(void *arg)
{
    struct seq *s = arg;
    int host_ns = open("/proc/self/ns/net", O_RDONLY);
    int i;

    for (i = 0; i < s->rounds; i++) {
        int64_t t0;

        if (setns(host_ns, CLONE_NEWNET) != 0)
            break;
        t0 = now_us();
        if (http_get(api_port, token) != 0)
            s->failed++;
        s->direct[i] = now_us() - t0;
        if (setns(gw_netns, CLONE_NEWNET) != 0)
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

/* This process and the execs it ran (the whole exec chain into the
 * sandbox and what the scripts start there are its reaped descendants). */
static double cpu_s(void)
{
    return ru_s(RUSAGE_SELF) + ru_s(RUSAGE_CHILDREN);
}

static int bench(const char *transport, int rounds,
                 const struct er_bridge_allow *allow)
{
    struct er_bridge_run_opts o;
    struct er_bridge_run *r = NULL;
    struct er_secret host_token = { 0 };
    struct seq s = { rounds, NULL, NULL, 0 };
    pthread_t t;
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
    long e0;
    int rc;

    snprintf(origin, sizeof(origin), "http://127.0.0.1:%d", api_port);
    if (er_secret_set(&host_token, "bench-run-jwt", 13) != 0)
        return 1;
    memset(&o, 0, sizeof(o));
    o.exec = exec_plain;
    o.exec_detached = exec_detached;
    o.hold = strcmp(transport, "stream_v1") == 0 ? hold : NULL;
    o.remote_cwd = ER_BWRAP_WORKSPACE;
    o.adapter_key = ADAPTER;
    o.origin = origin;
    o.allow = allow;
    o.host_token = &host_token;
    o.lease_id = "00000000-0000-4000-8000-000000000001";
    o.run_id = strcmp(transport, "stream_v1") == 0 ? "bench-run-stream"
                                                   : "bench-run-queue";
    er_err_clear(&err);
    if (er_bridge_run_start(&o, &r, &err) != 0) {
        fprintf(stderr, "bridge_bench: %s: %s\n", transport, err.msg);
        return 1;
    }
    if (strcmp(er_bridge_run_transport(r), transport) != 0) {
        fprintf(stderr, "bridge_bench: got %s, not %s\n",
                er_bridge_run_transport(r), transport);
        return 1;
    }
    snprintf(token, sizeof(token), "%s", er_bridge_run_token(r));
    gw_port = er_bridge_run_port(r);
    pid = gateway_pid();
    snprintf(path, sizeof(path), "/proc/%ld/ns/net", pid);
    gw_netns = pid > 0 ? open(path, O_RDONLY) : -1;
    if (gw_netns < 0) {
        fprintf(stderr, "bridge_bench: gateway not found\n");
        return 1;
    }

    s.direct = calloc((size_t)rounds, sizeof(int64_t));
    s.bridged = calloc((size_t)rounds, sizeof(int64_t));
    if (s.direct == NULL || s.bridged == NULL)
        return 1;
    pthread_create(&t, NULL, seq_main, &s);
    pthread_join(t, NULL);
    qsort(s.direct, (size_t)rounds, sizeof(int64_t), cmp_i64);
    qsort(s.bridged, (size_t)rounds, sizeof(int64_t), cmp_i64);
    direct_rate = load_rate(false, &fd_fail);
    bridged_rate = load_rate(true, &fb_fail);
    atomic_store(&api_delay_ms, SLOW_API_MS);
    slow_direct = load_rate(false, &sd_fail);
    slow_bridged = load_rate(true, &sb_fail);
    atomic_store(&api_delay_ms, 0);

    /* Idle: no request for IDLE_MS. */
    e0 = atomic_load(&execs);
    cpu0 = cpu_s();
    nanosleep(&(struct timespec){ IDLE_MS / 1000, 0 }, NULL);

    printf("| %s | %.2f | %.2f | %.2f / %.2f | %.0f / %.0f (%.0f %%) | "
           "%.0f / %.0f (%.0f %%) | %ld | %.2f | %.3f | %ld |\n",
           transport, (double)s.direct[rounds / 2] / 1000.0,
           (double)s.bridged[rounds / 2] / 1000.0,
           (double)(s.bridged[rounds / 2] - s.direct[rounds / 2]) / 1000.0,
           (double)(s.bridged[(rounds * 99) / 100] -
                    s.direct[(rounds * 99) / 100]) /
               1000.0,
           direct_rate, bridged_rate, 100.0 * bridged_rate / direct_rate,
           slow_direct, slow_bridged, 100.0 * slow_bridged / slow_direct,
           status_kib(pid, "VmHWM"),
           (double)(atomic_load(&execs) - e0) * 1000.0 / IDLE_MS,
           (cpu_s() - cpu0) * 1000.0 / IDLE_MS,
           (long)s.failed + fd_fail + fb_fail + sd_fail + sb_fail);
    fflush(stdout);
    close(gw_netns);
    gw_netns = -1;
    er_bridge_run_stop(r, 0, true);
    er_secret_fini(&host_token);
    free(s.direct);
    free(s.bridged);
    rc = 0;
    return rc;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : ROUNDS_DEFAULT;
    char dir[] = "/tmp/bridge-bench-XXXXXX";
    struct er_bwrap_limits lim = { 8192LL * 1024 * 1024, 1024, 0 };
    struct er_bridge_allow *allow = NULL;
    char cmd[128];
    struct er_err err;
    size_t image_len;
    int rc;

    if (rounds < 20 || rounds > 100000)
        rounds = ROUNDS_DEFAULT;
    if (mkdtemp(dir) == NULL || api_start() != 0)
        return 1;
    er_log_setup(false, ER_LOG_WARN);
    er_bwrap_set_dir(dir);
    er_driver_set_installation("5e1f0a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2c");
    er_err_clear(&err);
    if (er_bwrap_probe(&err) != 0) {
        fprintf(stderr, "bridge_bench: no sandboxes here: %s\n", err.msg);
        return 1;
    }
    if (er_bridge_allow_load(NULL, &allow, &err) != 0)
        return 1;
    snprintf(sandbox_id, sizeof(sandbox_id), "%016x", 0xb71d9e);
    if (er_bwrap_create(sandbox_id, &lim, &err) != 0) {
        fprintf(stderr, "bridge_bench: create: %s\n", err.msg);
        return 1;
    }
    er_bridge_gateway_image(&image_len);
    printf("bridge_bench: bwrap sandbox, %d sequential rounds, %d clients "
           "for %d s, idle %d s; gateway %zu bytes on disk\n\n",
           rounds, CLIENTS, LOAD_MS / 1000, IDLE_MS / 1000, image_len);
    printf("| transport | direct p50 ms | bridged p50 ms | added p50 / p99 ms "
           "| 8 clients, instant API: direct / bridged req/s | 8 clients, "
           "API at %d ms a request: direct / bridged req/s | gateway peak "
           "RSS KiB | idle execs/s | idle CPU, host side and execs (cores) | "
           "failed |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n",
           SLOW_API_MS);
    fflush(stdout);
    rc = bench("stream_v1", rounds, allow);
    rc |= bench("queue_v1", rounds, allow);
    er_bwrap_destroy(sandbox_id, &err);
    er_bridge_allow_free(allow);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        rc = 1;
    return rc;
}
