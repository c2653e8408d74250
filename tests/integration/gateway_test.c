/* gateway_test: envrun-gateway as a real child process (the binary given as
 * argv[1]; "--dynamic <bin>" for the sanitized dynamic build, which skips
 * the static-only checks). The test plays the host: it reads requests/ and
 * writes responses/ atomically (queue_v1), or speaks frames on the child's
 * stdin/stdout (stream_v1), and sends real HTTP over TCP. No database.
 * One test thread; each case starts its own gateway in a temp directory. */
#include <arpa/inet.h>
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "bridge/gateway/gateway_int.h"

#define TOKEN "tok-0123456789abcdefghijklmnopqrst"
#define AUTH  "Authorization: Bearer " TOKEN "\r\n"
#define GET_ME \
    "GET /api/agents/me HTTP/1.1\r\n" AUTH "\r\n" /* an authorised GET */
#define WAIT_MS        15000
#define MAX_GATEWAYS   4
#define MAX_DIRS       16
#define RSS_LIMIT_KB   2048
#define SIZE_LIMIT     (1024 * 1024)
#define WAVE           50
#define SMALL_REQUESTS 200

static char *gw_bin;
static bool is_dynamic;

struct gw {
    pid_t pid;
    char dir[128];  /* the case's temp root */
    char qdir[160]; /* queue_v1 directory */
    char log[160];  /* the gateway's stderr */
    int port;
    int to_child;   /* stream_v1: the gateway's stdin */
    int from_child; /* stream_v1: the gateway's stdout */
    bool is_stream;
};

/* Gateways alive, killed by the teardown when an assertion jumps out;
 * the case's directories, removed by it (unless GATEWAY_TEST_KEEP). */
static pid_t live[MAX_GATEWAYS];
static char dirs[MAX_DIRS][128];

/* ================================================================
 * Small helpers
 * ================================================================ */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pause_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    if (len != NULL)
        *len = (size_t)n;
    return buf;
}

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Regular *.json files in dir (suffix "" counts every entry). */
static int count_dir(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int cnt = 0;

    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name), k = strlen(suffix);

        if (de->d_name[0] == '.')
            continue;
        if (n >= k && strcmp(de->d_name + n - k, suffix) == 0)
            cnt++;
    }
    closedir(d);
    return cnt;
}

static bool log_has(const struct gw *g, const char *needle)
{
    char *text = read_file(g->log, NULL);
    bool found = text != NULL && strstr(text, needle) != NULL;

    free(text);
    return found;
}

/* obj[key] is the string want. */
static void assert_member(json_t *obj, const char *key, const char *want)
{
    const char *got = json_string_value(json_object_get(obj, key));

    if (got == NULL || strcmp(got, want) != 0)
        fail_msg("%s: want \"%s\", got \"%s\"", key, want,
                 got != NULL ? got : "(none)");
}

/* ================================================================
 * The gateway process
 * ================================================================ */

static void live_add(pid_t pid)
{
    int i;

    for (i = 0; i < MAX_GATEWAYS; i++) {
        if (live[i] == 0) {
            live[i] = pid;
            return;
        }
    }
    fail_msg("too many gateways");
}

static void live_del(pid_t pid)
{
    int i;

    for (i = 0; i < MAX_GATEWAYS; i++) {
        if (live[i] == pid)
            live[i] = 0;
    }
}

/* rm -r of a case directory (three levels: queue/requests/file). */
static void remove_tree(const char *path, int depth)
{
    DIR *d = opendir(path);
    struct dirent *de;

    if (d != NULL && depth < 4) {
        while ((de = readdir(d)) != NULL) {
            char child[512];

            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            snprintf(child, sizeof(child), "%s/%s", path, de->d_name);
            if (unlink(child) != 0)
                remove_tree(child, depth + 1);
        }
    }
    if (d != NULL)
        closedir(d);
    rmdir(path);
}

static int teardown(void **state)
{
    int i;

    (void)state;
    for (i = 0; i < MAX_GATEWAYS; i++) {
        if (live[i] != 0) {
            kill(live[i], SIGKILL);
            waitpid(live[i], NULL, 0);
            live[i] = 0;
        }
    }
    for (i = 0; i < MAX_DIRS; i++) {
        if (dirs[i][0] != '\0' && getenv("GATEWAY_TEST_KEEP") == NULL)
            remove_tree(dirs[i], 0);
        dirs[i][0] = '\0';
    }
    return 0;
}

/* Start the gateway with exactly env (NULL-terminated). */
static void spawn_env(struct gw *g, char *const *env)
{
    int in[2], out[2];
    pid_t pid;

    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(out), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char *argv[] = { gw_bin, NULL };
        int fd = open(g->log, O_WRONLY | O_CREAT | O_APPEND, 0644);

        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(in[1]);
        close(out[0]);
        execve(gw_bin, argv, env);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    g->pid = pid;
    g->to_child = in[1];
    g->from_child = out[0];
    live_add(pid);
}

/* Fresh temp directory for a case. */
static void gw_init(struct gw *g, bool is_stream)
{
    memset(g, 0, sizeof(*g));
    snprintf(g->dir, sizeof(g->dir), "/tmp/gateway_test.XXXXXX");
    assert_non_null(mkdtemp(g->dir));
    snprintf(g->qdir, sizeof(g->qdir), "%s/queue", g->dir);
    snprintf(g->log, sizeof(g->log), "%s/gateway.log", g->dir);
    g->is_stream = is_stream;
    g->to_child = g->from_child = -1;
    for (int i = 0; i < MAX_DIRS; i++) {
        if (dirs[i][0] == '\0') {
            snprintf(dirs[i], sizeof(dirs[i]), "%s", g->dir);
            break;
        }
    }
}

/* Wait for the child to exit; returns its exit status (or -1). */
static int gw_wait_exit(struct gw *g, int wait_ms)
{
    int64_t end = now_ms() + wait_ms;
    int status;

    while (now_ms() < end) {
        pid_t r = waitpid(g->pid, &status, WNOHANG);

        if (r == g->pid) {
            live_del(g->pid);
            g->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        }
        pause_ms(5);
    }
    fail_msg("gateway did not exit within %d ms", wait_ms);
    return -1;
}

static void close_pipes(struct gw *g)
{
    if (g->to_child >= 0)
        close(g->to_child);
    if (g->from_child >= 0)
        close(g->from_child);
    g->to_child = g->from_child = -1;
}

static json_t *read_frame(struct gw *g, int wait_ms);

/* Start a gateway: mode queue_v1 or stream_v1, poll interval 10 ms, plus
 * the extra "NAME=value" strings (they win over the defaults). Waits for
 * ready.json or the ready frame and records the port. */
static void gw_start(struct gw *g, bool is_stream, char *const *extra)
{
    char *env[32];
    char qenv[200], tenv[200];
    size_t n = 0;
    json_t *ready = NULL;
    int64_t end;

    gw_init(g, is_stream);
    while (extra != NULL && *extra != NULL && n < 20)
        env[n++] = *extra++;
    snprintf(qenv, sizeof(qenv), "PAPERCLIP_BRIDGE_QUEUE_DIR=%s", g->qdir);
    snprintf(tenv, sizeof(tenv), "TMPDIR=%s", g->dir);
    env[n++] = (char *)"PAPERCLIP_BRIDGE_TOKEN=" TOKEN;
    env[n++] = is_stream ? (char *)"PAPERCLIP_API_BRIDGE_MODE=stream_v1"
                         : (char *)"PAPERCLIP_API_BRIDGE_MODE=queue_v1";
    env[n++] = qenv;
    env[n++] = tenv;
    env[n++] = (char *)"PAPERCLIP_BRIDGE_POLL_INTERVAL_MS=10";
    env[n] = NULL;
    spawn_env(g, env);
    if (is_stream) {
        ready = read_frame(g, 5000);
        assert_member(ready, "type", "ready");
    } else {
        char path[200];

        snprintf(path, sizeof(path), "%s/ready.json", g->qdir);
        for (end = now_ms() + 5000; now_ms() < end && ready == NULL;
             pause_ms(5)) {
            json_error_t jerr;

            ready = json_load_file(path, 0, &jerr);
        }
        if (ready == NULL)
            fail_msg("no ready.json within 5 s");
    }
    g->port = (int)json_integer_value(json_object_get(ready, "port"));
    assert_true(g->port > 0);
    json_decref(ready);
}

/* SIGTERM, and the exit status must be 0. */
static void gw_stop(struct gw *g)
{
    if (g->pid > 0) {
        kill(g->pid, SIGTERM);
        assert_int_equal(gw_wait_exit(g, 5000), 0);
    }
    close_pipes(g);
}

/* ================================================================
 * HTTP client
 * ================================================================ */

static int http_connect(int port)
{
    struct sockaddr_in sin;
    struct timeval tv = { WAIT_MS / 1000, 0 };
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0)
        fail_msg("connect to %d: errno %d", port, errno);
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *s = p;

    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            fail_msg("send: errno %d", errno);
        s += w;
        n -= (size_t)w;
    }
}

static void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

struct resp {
    int status;
    char *raw; /* owned, NUL-terminated */
    size_t len;
    const char *body; /* into raw */
    size_t body_len;
};

/* Read until the gateway closes; parse status line and body. */
static void http_read(int fd, struct resp *r)
{
    size_t cap = 1 << 16;
    int64_t end = now_ms() + WAIT_MS;
    const char *sep;

    memset(r, 0, sizeof(*r));
    r->raw = malloc(cap);
    assert_non_null(r->raw);
    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        ssize_t n;

        if (now_ms() >= end)
            fail_msg("no complete response within %d ms", WAIT_MS);
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        if (r->len + 65536 > cap) {
            cap *= 2;
            r->raw = realloc(r->raw, cap);
            assert_non_null(r->raw);
        }
        n = recv(fd, r->raw + r->len, cap - r->len - 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        r->len += (size_t)n;
    }
    close(fd);
    r->raw[r->len] = '\0';
    if (r->len < 12 || strncmp(r->raw, "HTTP/1.1 ", 9) != 0)
        fail_msg("not an HTTP response: \"%.60s\"", r->raw);
    r->status = (int)strtol(r->raw + 9, NULL, 10);
    sep = strstr(r->raw, "\r\n\r\n");
    assert_non_null(sep);
    r->body = sep + 4;
    r->body_len = r->len - (size_t)(r->body - r->raw);
}

static void resp_free(struct resp *r)
{
    free(r->raw);
    r->raw = NULL;
}

/* The value of header name (case-insensitive) or NULL; copied to out. */
static const char *resp_header(const struct resp *r, const char *name,
                               char *out, size_t out_len)
{
    size_t k = strlen(name);
    const char *p = strstr(r->raw, "\r\n");

    while (p != NULL && p < r->body - 2) {
        const char *line = p + 2;
        const char *eol = strstr(line, "\r\n");

        if (strncasecmp(line, name, k) == 0 && line[k] == ':') {
            const char *v = line + k + 1;
            size_t n;

            while (*v == ' ')
                v++;
            n = (size_t)(eol - v);
            if (n >= out_len)
                n = out_len - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return out;
        }
        p = eol;
    }
    return NULL;
}

/* The "error" member of a JSON error body. */
static void assert_error_body(const struct resp *r, int status, const char *msg)
{
    json_error_t jerr;
    json_t *body;
    char ct[64];

    if (r->status != status)
        fail_msg("want %d, got %d: %s", status, r->status, r->body);
    assert_non_null(resp_header(r, "content-type", ct, sizeof(ct)));
    assert_string_equal(ct, "application/json");
    body = json_loadb(r->body, r->body_len, 0, &jerr);
    assert_non_null(body);
    assert_member(body, "error", msg);
    json_decref(body);
}

/* One request, whole; the answer read to the end. */
static void http_once(int port, const char *req, struct resp *r)
{
    int fd = http_connect(port);

    send_str(fd, req);
    http_read(fd, r);
}

/* ================================================================
 * The host side
 * ================================================================ */

/* Wait for one request file; returns its parsed JSON and its id. */
static json_t *wait_request(struct gw *g, char id[64], int wait_ms)
{
    char dir[200];
    int64_t end = now_ms() + wait_ms;

    snprintf(dir, sizeof(dir), "%s/requests", g->qdir);
    while (now_ms() < end) {
        DIR *d = opendir(dir);
        struct dirent *de;

        assert_non_null(d);
        while ((de = readdir(d)) != NULL) {
            size_t n = strlen(de->d_name);
            char path[600];
            json_error_t jerr;
            json_t *req;

            if (n <= 5 || n - 5 >= 64 ||
                strcmp(de->d_name + n - 5, ".json") != 0)
                continue;
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
            req = json_load_file(path, 0, &jerr);
            if (req == NULL)
                fail_msg("request file %s: %s", de->d_name, jerr.text);
            memcpy(id, de->d_name, n - 5);
            id[n - 5] = '\0';
            closedir(d);
            return req;
        }
        closedir(d);
        pause_ms(5);
    }
    fail_msg("no request file within %d ms", wait_ms);
    return NULL;
}

/* The host's guarded write: responses/<id>.json.tmp then rename; then
 * the request file is removed (B6 step 11). */
static void write_response(struct gw *g, const char *id, const char *text,
                           size_t len)
{
    char tmp[300], dst[300], req[300];

    snprintf(tmp, sizeof(tmp), "%s/responses/%s.json.tmp", g->qdir, id);
    snprintf(dst, sizeof(dst), "%s/responses/%s.json", g->qdir, id);
    snprintf(req, sizeof(req), "%s/requests/%s.json", g->qdir, id);
    write_file(tmp, text, len);
    assert_int_equal(rename(tmp, dst), 0);
    unlink(req);
}

static void write_response_json(struct gw *g, const char *id, json_t *resp)
{
    char *text = json_dumps(resp, JSON_COMPACT);

    assert_non_null(text);
    write_response(g, id, text, strlen(text));
    free(text);
}

static void wait_gone(const char *path, int wait_ms)
{
    int64_t end = now_ms() + wait_ms;
    struct stat st;

    while (stat(path, &st) == 0) {
        if (now_ms() > end)
            fail_msg("%s still exists", path);
        pause_ms(5);
    }
}

/* stream_v1 frames. */
static void read_exact(int fd, void *p, size_t n, int wait_ms)
{
    char *s = p;
    int64_t end = now_ms() + wait_ms;

    while (n > 0) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        ssize_t r;

        if (now_ms() > end)
            fail_msg("frame did not arrive within %d ms", wait_ms);
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        r = read(fd, s, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            fail_msg("gateway stdout closed");
        s += r;
        n -= (size_t)r;
    }
}

static json_t *read_frame(struct gw *g, int wait_ms)
{
    uint8_t hdr[4];
    uint32_t len;
    char *buf;
    json_error_t jerr;
    json_t *frame;

    read_exact(g->from_child, hdr, 4, wait_ms);
    len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
          (uint32_t)hdr[2] << 8 | hdr[3];
    assert_true(len > 0);
    buf = malloc(len);
    assert_non_null(buf);
    read_exact(g->from_child, buf, len, wait_ms);
    frame = json_loadb(buf, len, 0, &jerr);
    if (frame == NULL)
        fail_msg("bad frame: %s", jerr.text);
    free(buf);
    return frame;
}

static void write_frame(struct gw *g, const char *json, size_t len)
{
    uint8_t hdr[4] = { (uint8_t)(len >> 24), (uint8_t)(len >> 16),
                       (uint8_t)(len >> 8), (uint8_t)len };

    assert_int_equal(write(g->to_child, hdr, 4), 4);
    while (len > 0) {
        ssize_t w = write(g->to_child, json, len);

        assert_true(w > 0);
        json += w;
        len -= (size_t)w;
    }
}

static void write_frame_json(struct gw *g, json_t *frame)
{
    char *text = json_dumps(frame, JSON_COMPACT);

    assert_non_null(text);
    write_frame(g, text, strlen(text));
    free(text);
}

/* A response object {id, status, headers, body, completedAt}. */
static json_t *response_of(const char *id, int status, const char *body)
{
    return json_pack("{s:s, s:i, s:{s:s}, s:s, s:s}", "id", id, "status",
                     status, "headers", "content-type", "application/json",
                     "body", body, "completedAt", "2026-01-01T00:00:00.000Z");
}

/* Send text on a new connection (returned in fd) and wait for the
 * request file it makes. */
static json_t *send_and_wait(struct gw *g, const char *text, char id[64],
                             int *fd)
{
    *fd = http_connect(g->port);
    send_str(*fd, text);
    return wait_request(g, id, 5000);
}

/* The host answers id with status and body {}; the client on fd must get
 * that status. */
static void answer_and_expect(struct gw *g, const char *id, int fd, int status)
{
    json_t *resp = response_of(id, status, "{}");
    struct resp r;

    write_response_json(g, id, resp);
    json_decref(resp);
    http_read(fd, &r);
    assert_int_equal(r.status, status);
    resp_free(&r);
}

/* ================================================================
 * queue_v1 cases
 * ================================================================ */

static void ready_json_has_the_b3_fields(void **state)
{
    struct gw g;
    char path[200], url[64];
    json_t *ready;
    const char *started;

    (void)state;
    gw_start(&g, false, NULL);
    snprintf(path, sizeof(path), "%s/ready.json", g.qdir);
    ready = json_load_file(path, 0, NULL);
    assert_non_null(ready);
    assert_int_equal(json_integer_value(json_object_get(ready, "pid")), g.pid);
    assert_member(ready, "host", "127.0.0.1");
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", g.port);
    assert_member(ready, "baseUrl", url);
    started = json_string_value(json_object_get(ready, "startedAt"));
    assert_non_null(started);
    assert_int_equal(strlen(started), 24); /* 2026-01-01T00:00:00.000Z */
    assert_int_equal(started[23], 'Z');
    assert_int_equal(started[10], 'T');
    json_decref(ready);
    /* mkdir -p of the three directories; no ready.json.tmp left. */
    snprintf(path, sizeof(path), "%s/logs", g.qdir);
    assert_int_equal(access(path, F_OK), 0);
    assert_int_equal(count_dir(g.qdir, ".tmp"), 0);
    gw_stop(&g);
}

static void round_trip_filters_headers_and_copies_the_reply(void **state)
{
    struct gw g;
    char id[64], path[300], v[128];
    json_t *req, *hdrs, *resp;
    const char *key;
    json_t *val;
    struct resp r;
    int fd;

    (void)state;
    gw_start(&g, false, NULL);
    fd = http_connect(g.port);
    send_str(fd, "GET /api/agents/me?view=compact HTTP/1.1\r\n"
                 "Host: 127.0.0.1\r\n" AUTH "Accept: application/json\r\n"
                 "If-None-Match: \"v1\"\r\n"
                 "X-Paperclip-Run-Id: run-1\r\n"
                 "X-Bridge-Debug: 1\r\n"
                 "X-Paperclip-GitHub-Capability: cap-1\r\n"
                 "accept: text/plain\r\n\r\n");
    req = wait_request(&g, id, 5000);
    assert_int_equal(strlen(id), 36);
    assert_int_equal(id[14], '4'); /* UUID v4 */
    assert_member(req, "id", id);
    assert_member(req, "method", "GET");
    assert_member(req, "path", "/api/agents/me");
    assert_member(req, "query", "?view=compact");
    assert_member(req, "body", "");
    assert_null(json_object_get(req, "bodyEncoding"));
    assert_non_null(json_string_value(json_object_get(req, "createdAt")));
    hdrs = json_object_get(req, "headers");
    assert_int_equal(json_object_size(hdrs), 3);
    /* Repeats are joined as Node's req.headers joins them. */
    assert_member(hdrs, "accept", "application/json, text/plain");
    assert_member(hdrs, "if-none-match", "\"v1\"");
    assert_member(hdrs, "x-paperclip-github-capability", "cap-1");
    json_object_foreach(hdrs, key, val)
    {
        assert_true(strcmp(key, "authorization") != 0);
        assert_true(strcmp(key, "x-paperclip-run-id") != 0);
    }
    /* The raw file never carries the token or the run id. */
    snprintf(path, sizeof(path), "%s/requests/%s.json", g.qdir, id);
    {
        char *raw = read_file(path, NULL);

        assert_null(strstr(raw, TOKEN));
        assert_null(strstr(raw, "run-1"));
        assert_int_equal(raw[strlen(raw) - 1], '\n');
        free(raw);
    }
    json_decref(req);
    resp = json_pack("{s:s, s:i, s:{s:s, s:s, s:s, s:s, s:i}, s:s, s:s}", "id",
                     id, "status", 200, "headers", "content-type",
                     "application/json", "etag", "W/\"abc\"", "last-modified",
                     "Wed, 21 Oct 2015 07:28:00 GMT", "content-length", "999",
                     "x-number", 5, "body", "{\"id\":\"agent-1\"}",
                     "completedAt", "2026-01-01T00:00:00.000Z");
    write_response_json(&g, id, resp);
    json_decref(resp);
    http_read(fd, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(resp_header(&r, "content-type", v, sizeof(v)),
                        "application/json");
    assert_string_equal(resp_header(&r, "etag", v, sizeof(v)), "W/\"abc\"");
    assert_string_equal(resp_header(&r, "last-modified", v, sizeof(v)),
                        "Wed, 21 Oct 2015 07:28:00 GMT");
    /* content-length is ours (the body's), never the host's. */
    assert_string_equal(resp_header(&r, "content-length", v, sizeof(v)), "16");
    assert_null(resp_header(&r, "x-number", v, sizeof(v)));
    assert_int_equal(r.body_len, 16);
    assert_memory_equal(r.body, "{\"id\":\"agent-1\"}", 16);
    resp_free(&r);
    /* The response file is always deleted after reading. */
    snprintf(path, sizeof(path), "%s/responses", g.qdir);
    assert_int_equal(count_dir(path, ""), 0);
    gw_stop(&g);
}

static void wrong_token_is_401_and_never_queued(void **state)
{
    static const char *const bad[] = {
        "GET /api/agents/me HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n",
        "GET /api/agents/me HTTP/1.1\r\nAuthorization: bearer " TOKEN
        "\r\n\r\n",
        "GET /api/agents/me HTTP/1.1\r\nAuthorization: Bearer " TOKEN
        "x\r\n\r\n",
        "GET /api/agents/me HTTP/1.1\r\nAuthorization: Bearer  " TOKEN
        "\r\n\r\n",
        "GET /api/agents/me HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    struct gw g;
    char dir[200];
    size_t i;

    (void)state;
    gw_start(&g, false, NULL);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct resp r;

        http_once(g.port, bad[i], &r);
        assert_error_body(&r, 401, "Invalid bridge token.");
        resp_free(&r);
    }
    snprintf(dir, sizeof(dir), "%s/requests", g.qdir);
    assert_int_equal(count_dir(dir, ""), 0);
    assert_false(log_has(&g, TOKEN));
    gw_stop(&g);
}

static void full_queue_is_503_until_stale_files_are_swept(void **state)
{
    static char *const env[] = { "PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH=1",
                                 "PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS="
                                 "500",
                                 NULL };
    struct gw g;
    char path[300], id[64];
    struct timespec old[2];
    struct resp r;
    int fd;

    (void)state;
    gw_start(&g, false, env);
    snprintf(path, sizeof(path), "%s/requests/orphan.json", g.qdir);
    write_file(path, "{}", 2);
    http_once(g.port, GET_ME, &r);
    assert_error_body(&r, 503, "Bridge request queue is full.");
    resp_free(&r);
    assert_int_equal(access(path, F_OK), 0); /* fresh: not swept */
    /* Older than timeout + 2 s: the next request sweeps it and goes on. */
    clock_gettime(CLOCK_REALTIME, &old[0]);
    old[0].tv_sec -= 10;
    old[1] = old[0];
    assert_int_equal(utimensat(AT_FDCWD, path, old, 0), 0);
    fd = http_connect(g.port);
    send_str(fd, GET_ME);
    wait_gone(path, 5000); /* swept before the new request is queued */
    json_decref(wait_request(&g, id, 5000));
    answer_and_expect(&g, id, fd, 200);
    gw_stop(&g);
}

static void non_json_body_is_415(void **state)
{
    struct gw g;
    struct resp r;
    char dir[200];

    (void)state;
    gw_start(&g, false, NULL);
    http_once(g.port,
              "POST /api/issues/i1/comments HTTP/1.1\r\n" AUTH
              "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
              &r);
    assert_error_body(&r, 415, "Bridge only accepts JSON request bodies.");
    resp_free(&r);
    /* No content-type at all, on a method other than GET/HEAD. */
    http_once(g.port,
              "DELETE /api/routine-triggers/t1 HTTP/1.1\r\n" AUTH "\r\n", &r);
    assert_error_body(&r, 415, "Bridge only accepts JSON request bodies.");
    resp_free(&r);
    /* Multipart outside the attachment route. */
    http_once(g.port,
              "POST /api/issues/i1/comments HTTP/1.1\r\n" AUTH
              "Content-Type: multipart/form-data; boundary=b\r\n"
              "Content-Length: 2\r\n\r\nhi",
              &r);
    assert_int_equal(r.status, 415);
    resp_free(&r);
    snprintf(dir, sizeof(dir), "%s/requests", g.qdir);
    assert_int_equal(count_dir(dir, ""), 0);
    gw_stop(&g);
}

static char *b64(const uint8_t *p, size_t n)
{
    static const char a[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    size_t i, o = 0;

    assert_non_null(out);
    for (i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;

        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = a[(v >> 18) & 63];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = i + 1 < n ? a[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? a[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

static void multipart_attachment_is_written_base64(void **state)
{
    struct gw g;
    uint8_t body[3000];
    char head[512], id[64], ct[64];
    char *want;
    json_t *req, *resp;
    struct resp r;
    size_t i;
    int fd;

    (void)state;
    for (i = 0; i < sizeof(body); i++)
        body[i] = (uint8_t)(i * 7 + 3); /* every byte value, NUL included */
    gw_start(&g, false, NULL);
    fd = http_connect(g.port);
    snprintf(head, sizeof(head),
             "POST /api/companies/c1/issues/i1/attachments HTTP/1.1\r\n" AUTH
             "Content-Type: multipart/form-data; boundary=xyz\r\n"
             "Content-Length: %zu\r\n\r\n",
             sizeof(body));
    send_str(fd, head);
    send_all(fd, body, sizeof(body));
    req = wait_request(&g, id, 5000);
    assert_member(req, "bodyEncoding", "base64");
    want = b64(body, sizeof(body));
    assert_member(req, "body", want);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(req, "headers"), "content-type")),
                        "multipart/form-data; boundary=xyz");
    free(want);
    json_decref(req);
    resp = response_of(id, 201, "{\"id\":\"att-1\"}");
    write_response_json(&g, id, resp);
    json_decref(resp);
    http_read(fd, &r);
    assert_int_equal(r.status, 201);
    assert_string_equal(resp_header(&r, "content-type", ct, sizeof(ct)),
                        "application/json");
    resp_free(&r);
    gw_stop(&g);
}

static void response_timeout_is_502_and_removes_the_request(void **state)
{
    static char *const env[] = { "PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS=300",
                                 NULL };
    struct gw g;
    char dir[200], id[64], path[300];
    struct resp r;
    json_t *req;
    int fd;
    int64_t start;

    (void)state;
    gw_start(&g, false, env);
    start = now_ms();
    fd = http_connect(g.port);
    send_str(fd, GET_ME);
    req = wait_request(&g, id, 5000);
    json_decref(req);
    http_read(fd, &r);
    assert_true(now_ms() - start >= 250);
    assert_error_body(&r, 502, "Timed out waiting for host bridge response.");
    assert_null(
        resp_header(&r, "x-paperclip-bridge-outcome", dir, sizeof(dir)));
    resp_free(&r);
    snprintf(path, sizeof(path), "%s/requests/%s.json", g.qdir, id);
    wait_gone(path, 1000);
    snprintf(dir, sizeof(dir), "%s/requests", g.qdir);
    assert_int_equal(count_dir(dir, ""), 0);
    gw_stop(&g);
}

static void unsafe_timeout_is_409_indeterminate(void **state)
{
    static char *const env[] = { "PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS=300",
                                 NULL };
    static const char req_text[] =
        "POST /api/issues/i1/comments HTTP/1.1\r\n" AUTH
        "Content-Type: application/json\r\nContent-Length: 13\r\n\r\n"
        "{\"body\":\"x\"}\n";
    struct gw g;
    struct resp r;
    char v[64];
    json_t *body;

    (void)state;
    gw_start(&g, false, env);
    http_once(g.port, req_text, &r);
    assert_int_equal(r.status, 409);
    assert_string_equal(
        resp_header(&r, "x-paperclip-bridge-outcome", v, sizeof(v)),
        "indeterminate");
    body = json_loadb(r.body, r.body_len, 0, NULL);
    assert_non_null(body);
    assert_member(body, "error", "Timed out waiting for host bridge response.");
    assert_member(body, "outcome", "indeterminate");
    assert_true(json_is_false(json_object_get(body, "retryable")));
    json_decref(body);
    resp_free(&r);
    gw_stop(&g);
}

static void indeterminate_outcome_maps_to_409(void **state)
{
    struct gw g;
    struct resp r;
    char id[64], v[64];
    json_t *req, *resp;
    int fd;

    (void)state;
    gw_start(&g, false, NULL);
    fd = http_connect(g.port);
    send_str(fd, "GET /api/issues/i1 HTTP/1.1\r\n" AUTH "\r\n");
    req = wait_request(&g, id, 5000);
    json_decref(req);
    resp = json_pack("{s:s, s:i, s:{s:s, s:s}, s:s}", "id", id, "status", 504,
                     "headers", "content-type", "application/json",
                     "x-paperclip-bridge-outcome", "indeterminate", "body",
                     "{\"error\":\"forward aborted\"}");
    write_response_json(&g, id, resp);
    json_decref(resp);
    http_read(fd, &r);
    assert_int_equal(r.status, 409);
    assert_string_equal(
        resp_header(&r, "x-paperclip-bridge-outcome", v, sizeof(v)),
        "indeterminate");
    assert_memory_equal(r.body, "{\"error\":\"forward aborted\"}", 27);
    resp_free(&r);
    gw_stop(&g);
}

/* A request is sent, the host answers with text (pre, the request's id,
 * post): returns the client's response. */
static void answer_with(struct gw *g, const char *req_text, const char *pre,
                        const char *post, struct resp *r)
{
    char id[64];
    char text[1024];
    json_t *req;
    int fd = http_connect(g->port);

    send_str(fd, req_text);
    req = wait_request(g, id, 5000);
    json_decref(req);
    snprintf(text, sizeof(text), "%s%s%s", pre, id, post);
    write_response(g, id, text, strlen(text));
    http_read(fd, r);
}

static void truncated_response_is_502_naming_json(void **state)
{
    struct gw g;
    struct resp r;
    char path[200];
    json_t *body;

    (void)state;
    gw_start(&g, false, NULL);
    answer_with(&g, "GET /api/agents/me HTTP/1.1\r\n" AUTH "\r\n", "{\"id\":\"",
                "\",\"status\":200,\"body\":\"{\\\"a\\\":", &r);
    assert_int_equal(r.status, 502);
    body = json_loadb(r.body, r.body_len, 0, NULL);
    assert_non_null(body);
    assert_non_null(
        strstr(json_string_value(json_object_get(body, "error")), "JSON"));
    json_decref(body);
    resp_free(&r);
    snprintf(path, sizeof(path), "%s/responses", g.qdir);
    assert_int_equal(count_dir(path, ""), 0);
    /* The same for a mutation: dispatched, so 409 indeterminate. */
    answer_with(&g,
                "PATCH /api/issues/i1 HTTP/1.1\r\n" AUTH
                "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
                "{}",
                "{\"id\":\"", "\",\"status\":200,\"body\":tru", &r);
    assert_int_equal(r.status, 409);
    assert_non_null(strstr(r.body, "JSON"));
    resp_free(&r);
    gw_stop(&g);
}

static void bad_response_bodies_are_502(void **state)
{
    static const struct {
        const char *tail; /* the envelope after its id */
        const char *error;
    } cases[] = {
        { "\",\"status\":200,\"body\":\"abc\",\"bodyEncoding\":\"base64\"}",
          "Invalid bridge base64 body." },
        { "\",\"status\":200,\"body\":\"YQ==\",\"bodyEncoding\":\"hex\"}",
          "Unsupported bridge body encoding." },
        /* Not canonical: the unused bits of "YR==" are not zero. */
        { "\",\"status\":200,\"body\":\"YR==\",\"bodyEncoding\":\"base64\"}",
          "Invalid bridge base64 body." },
        { "\",\"status\":200,\"body\":{\"a\":1}}", "Invalid bridge body." },
        { "\",\"status\":99.5,\"body\":\"\"}", "Invalid status code: 99.5" },
    };
    struct gw g;
    struct resp r;
    size_t i;

    (void)state;
    gw_start(&g, false, NULL);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        answer_with(&g, "GET /a HTTP/1.1\r\n" AUTH "\r\n", "{\"id\":\"",
                    cases[i].tail, &r);
        assert_error_body(&r, 502, cases[i].error);
        resp_free(&r);
    }
    gw_stop(&g);
}

static void
base64_response_is_decoded_even_when_encoding_comes_last(void **state)
{
    struct gw g;
    uint8_t bytes[256];
    char *enc, *text, id[64];
    struct resp r;
    json_t *req;
    size_t i;
    int fd;

    (void)state;
    for (i = 0; i < sizeof(bytes); i++)
        bytes[i] = (uint8_t)(255 - i);
    enc = b64(bytes, sizeof(bytes));
    gw_start(&g, false, NULL);
    fd = http_connect(g.port);
    send_all(
        fd, "GET /api/attachments/a1/content HTTP/1.1\r\n" AUTH "\r\n",
        strlen("GET /api/attachments/a1/content HTTP/1.1\r\n" AUTH "\r\n"));
    req = wait_request(&g, id, 5000);
    json_decref(req);
    text = malloc(strlen(enc) + 256);
    assert_non_null(text);
    /* body first, then headers and bodyEncoding: pass two seeks back. */
    snprintf(text, strlen(enc) + 256,
             "{\"body\":\"%s\",\"id\":\"%s\",\"status\":200,\"headers\":"
             "{\"content-type\":\"application/octet-stream\"},"
             "\"bodyEncoding\":\"base64\",\"completedAt\":\"x\"}\n",
             enc, id);
    write_response(&g, id, text, strlen(text));
    http_read(fd, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, sizeof(bytes));
    assert_memory_equal(r.body, bytes, sizeof(bytes));
    resp_free(&r);
    free(text);
    free(enc);
    gw_stop(&g);
}

static void body_over_the_limit_is_502(void **state)
{
    static char *const env[] = { "PAPERCLIP_BRIDGE_MAX_BODY_BYTES=1000", NULL };
    struct gw g;
    char head[256], dir[200];
    char body[2000];
    struct resp r;
    int fd;

    (void)state;
    memset(body, 'a', sizeof(body));
    body[0] = '"';
    gw_start(&g, false, env);
    /* Declared too long: answered at once. */
    fd = http_connect(g.port);
    snprintf(head, sizeof(head),
             "POST /api/issues/i1/comments HTTP/1.1\r\n" AUTH
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
             sizeof(body));
    send_str(fd, head);
    send_all(fd, body, sizeof(body));
    http_read(fd, &r);
    assert_error_body(&r, 502,
                      "Bridge request body exceeded the configured size "
                      "limit.");
    resp_free(&r);
    /* Chunked: found while streaming; the partial file is removed. */
    fd = http_connect(g.port);
    send_str(fd, "POST /api/issues/i1/comments HTTP/1.1\r\n" AUTH
                 "Content-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n");
    send_all(fd, "7d0\r\n", 5);
    send_all(fd, body, sizeof(body));
    send_all(fd, "\r\n0\r\n\r\n", 7);
    http_read(fd, &r);
    assert_error_body(&r, 502,
                      "Bridge request body exceeded the configured size "
                      "limit.");
    resp_free(&r);
    snprintf(dir, sizeof(dir), "%s/requests", g.qdir);
    assert_int_equal(count_dir(dir, ""), 0);
    gw_stop(&g);
}

static void chunked_body_is_decoded(void **state)
{
    static const char text[] =
        "POST /api/issues/i1/comments HTTP/1.1\r\n" AUTH
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;ext=1\r\n{\"a\":\r\n3\r\n\"b\"\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n"
        "\r\n";
    struct gw g;
    char id[64];
    json_t *req;
    int fd;

    (void)state;
    gw_start(&g, false, NULL);
    req = send_and_wait(&g, text, id, &fd);
    assert_member(req, "body", "{\"a\":\"b\"}");
    json_decref(req);
    answer_and_expect(&g, id, fd, 201);
    gw_stop(&g);
}

/* Body text that exercises the escaper: quotes, backslashes, controls,
 * multi-byte UTF-8, and plain JSON. */
static char *make_text(size_t n)
{
    static const char pieces[][16] = {
        "{\"k\":\"v\"}", "\\\\",     "\"",           "\n\t\r",
        "\x01\x1f",      "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
        "plain text ",
    };
    char *out = malloc(n + 1);
    size_t at = 0, i = 0;

    assert_non_null(out);
    while (at < n) {
        const char *p = pieces[i++ % (sizeof(pieces) / sizeof(pieces[0]))];
        size_t k = strlen(p);

        if (at + k > n) {
            memset(out + at, 'z', n - at);
            at = n;
            break;
        }
        memcpy(out + at, p, k);
        at += k;
    }
    out[n] = '\0';
    return out;
}

/* POST a body of n bytes; the host checks it arrived intact and echoes it
 * back as the response body; the client checks the echo. */
static void echo_body(struct gw *g, size_t n)
{
    char head[256], id[64];
    char *body = make_text(n);
    json_t *req, *resp;
    struct resp r;
    int fd;

    fd = http_connect(g->port);
    snprintf(head, sizeof(head),
             "PUT /api/issues/i1/documents/d1 HTTP/1.1\r\n" AUTH
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
             n);
    send_str(fd, head);
    send_all(fd, body, n);
    req = wait_request(g, id, 20000);
    assert_int_equal(json_string_length(json_object_get(req, "body")), n);
    assert_memory_equal(json_string_value(json_object_get(req, "body")), body,
                        n);
    json_decref(req);
    resp = response_of(id, 200, body);
    write_response_json(g, id, resp);
    json_decref(resp);
    http_read(fd, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, n);
    assert_memory_equal(r.body, body, n);
    resp_free(&r);
    free(body);
}

static void large_bodies_stream_both_ways(void **state)
{
    struct gw g;

    (void)state;
    gw_start(&g, false, NULL);
    echo_body(&g, 1024 * 1024);
    echo_body(&g, 8 * 1024 * 1024);
    gw_stop(&g);
}

static void url_is_normalised_like_whatwg(void **state)
{
    struct gw g;
    char id[64];
    json_t *req;
    int fd;

    (void)state;
    gw_start(&g, false, NULL);
    req = send_and_wait(
        &g,
        "GET /api/x/../issues/./i1?q=%22a%22&b=<c>#frag HTTP/1.1\r\n" AUTH
        "\r\n",
        id, &fd);
    assert_member(req, "path", "/api/issues/i1");
    assert_member(req, "query", "?q=%22a%22&b=%3Cc%3E");
    json_decref(req);
    answer_and_expect(&g, id, fd, 200);
    gw_stop(&g);
}

static void oversized_heads_are_refused(void **state)
{
    struct gw g;
    struct resp r;
    char *req;
    size_t at, i;

    (void)state;
    gw_start(&g, false, NULL);
    req = malloc(20000);
    assert_non_null(req);
    /* 65 header lines: 431. */
    at = (size_t)snprintf(req, 20000, "GET /a HTTP/1.1\r\n");
    for (i = 0; i < 65; i++)
        at += (size_t)snprintf(req + at, 20000 - at, "X-H%zu: v\r\n", i);
    snprintf(req + at, 20000 - at, "\r\n");
    http_once(g.port, req, &r);
    assert_int_equal(r.status, 431);
    resp_free(&r);
    /* A target past 8 KiB: 414. */
    at = (size_t)snprintf(req, 20000, "GET /");
    memset(req + at, 'a', 9000);
    at += 9000;
    snprintf(req + at, 20000 - at, " HTTP/1.1\r\n\r\n");
    http_once(g.port, req, &r);
    assert_int_equal(r.status, 414);
    resp_free(&r);
    /* Not HTTP at all: 400. */
    http_once(g.port, "HELLO\r\n\r\n", &r);
    assert_int_equal(r.status, 400);
    resp_free(&r);
    /* Transfer codings other than chunked: 501. */
    http_once(g.port,
              "POST /a HTTP/1.1\r\n" AUTH "Content-Type: application/json\r\n"
              "Transfer-Encoding: gzip\r\n\r\n",
              &r);
    assert_int_equal(r.status, 501);
    resp_free(&r);
    free(req);
    gw_stop(&g);
}

/* Slowloris: connections that send nothing fill the table; one more gets
 * a 503; all are dropped after the 10 s head deadline. */
static void idle_clients_are_refused_then_dropped(void **state)
{
    struct gw g;
    int fds[ER_GW_CONN_MAX];
    struct resp r;
    char buf[16];
    int64_t start;
    int i;

    (void)state;
    gw_start(&g, false, NULL);
    start = now_ms();
    for (i = 0; i < ER_GW_CONN_MAX; i++)
        fds[i] = http_connect(g.port);
    send_all(fds[0], "GET /a HT", 9); /* a partial head */
    pause_ms(200);
    http_once(g.port, "GET /a HTTP/1.1\r\n" AUTH "\r\n", &r);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "connection limit"));
    resp_free(&r);
    for (i = 0; i < ER_GW_CONN_MAX; i++) {
        struct pollfd pfd = { fds[i], POLLIN, 0 };
        ssize_t n;

        assert_int_equal(poll(&pfd, 1, 13000), 1);
        n = recv(fds[i], buf, sizeof(buf), 0);
        assert_true(n >= 0); /* EOF, or the 408 of the partial head */
        close(fds[i]);
    }
    assert_true(now_ms() - start >= ER_GW_HEAD_TIMEOUT_MS - 500);
    assert_true(now_ms() - start < ER_GW_HEAD_TIMEOUT_MS + 3000);
    /* The table is free again. */
    http_once(g.port, "GET /a HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n", &r);
    assert_int_equal(r.status, 401);
    resp_free(&r);
    gw_stop(&g);
}

/* ================================================================
 * Startup and signals
 * ================================================================ */

static void expect_startup_error(char *const *env, const char *msg)
{
    struct gw g;

    gw_init(&g, false);
    spawn_env(&g, env);
    assert_int_not_equal(gw_wait_exit(&g, 5000), 0);
    close_pipes(&g);
    if (!log_has(&g, msg)) {
        char *text = read_file(g.log, NULL);

        fail_msg("stderr lacks \"%s\": %s", msg, text != NULL ? text : "");
    }
}

static void startup_errors_exit_non_zero(void **state)
{
    char qenv[256], port_env[64], ready[256];
    char *no_token[] = { qenv, NULL };
    char *bad_mode[] = { (char *)"PAPERCLIP_BRIDGE_TOKEN=t",
                         (char *)"PAPERCLIP_API_BRIDGE_MODE=http9", NULL };
    char *no_dir[] = { (char *)"PAPERCLIP_BRIDGE_TOKEN=t", NULL };
    char *bad_host[] = { (char *)"PAPERCLIP_BRIDGE_TOKEN=t", qenv,
                         (char *)"PAPERCLIP_BRIDGE_HOST=no.such.host", NULL };
    char *taken[] = { (char *)"PAPERCLIP_BRIDGE_TOKEN=t", qenv, port_env,
                      NULL };
    struct gw g;

    (void)state;
    /* A gateway holds a port; the failing ones get a queue of their own
     * inside its directory (removed with it). */
    gw_start(&g, false, NULL);
    snprintf(qenv, sizeof(qenv), "PAPERCLIP_BRIDGE_QUEUE_DIR=%s/other", g.dir);
    snprintf(ready, sizeof(ready), "%s/other/ready.json", g.dir);
    snprintf(port_env, sizeof(port_env), "PAPERCLIP_BRIDGE_PORT=%d", g.port);
    expect_startup_error(no_token, "PAPERCLIP_BRIDGE_TOKEN is required.");
    expect_startup_error(bad_mode,
                         "Unsupported PAPERCLIP_API_BRIDGE_MODE: http9");
    expect_startup_error(no_dir, "PAPERCLIP_BRIDGE_QUEUE_DIR and "
                                 "PAPERCLIP_BRIDGE_TOKEN are required.");
    expect_startup_error(bad_host, "[paperclip-bridge] server error:");
    /* A port already taken: the bind error, exit 1, no ready.json. */
    expect_startup_error(taken, "[paperclip-bridge] server error:");
    assert_int_not_equal(access(ready, F_OK), 0);
    gw_stop(&g);
}

static void sigterm_and_sigint_exit_zero(void **state)
{
    struct gw g;

    (void)state;
    gw_start(&g, false, NULL);
    kill(g.pid, SIGTERM);
    assert_int_equal(gw_wait_exit(&g, 5000), 0);
    close_pipes(&g);
    gw_start(&g, true, NULL);
    kill(g.pid, SIGINT);
    assert_int_equal(gw_wait_exit(&g, 5000), 0);
    close_pipes(&g);
}

/* ================================================================
 * stream_v1
 * ================================================================ */

static void stream_ready_frame_and_round_trip(void **state)
{
    static const char text[] =
        "POST /api/issues/i1/comments?x=1 HTTP/1.1\r\n" AUTH
        "Content-Type: application/json\r\nX-Paperclip-Run-Id: r\r\n"
        "Content-Length: 12\r\n\r\n{\"body\":\"q\"}";
    struct gw g;
    json_t *frame, *resp;
    struct resp r;
    char id[64], v[64];
    int fd;

    (void)state;
    gw_start(&g, true, NULL); /* asserts the ready frame */
    assert_int_equal(count_dir(g.dir, ".json"), 0); /* no queue files */
    fd = http_connect(g.port);
    send_str(fd, text);
    frame = read_frame(&g, 5000);
    assert_member(frame, "type", "request");
    assert_member(frame, "method", "POST");
    assert_member(frame, "path", "/api/issues/i1/comments");
    assert_member(frame, "query", "?x=1");
    assert_member(frame, "body", "{\"body\":\"q\"}");
    assert_int_equal(json_object_size(json_object_get(frame, "headers")), 1);
    snprintf(id, sizeof(id), "%s",
             json_string_value(json_object_get(frame, "id")));
    json_decref(frame);
    resp = response_of(id, 201, "{\"id\":\"c1\"}");
    json_object_set_new(resp, "type", json_string("response"));
    write_frame_json(&g, resp);
    json_decref(resp);
    http_read(fd, &r);
    assert_int_equal(r.status, 201);
    assert_string_equal(resp_header(&r, "content-type", v, sizeof(v)),
                        "application/json");
    assert_memory_equal(r.body, "{\"id\":\"c1\"}", 11);
    resp_free(&r);
    gw_stop(&g);
}

static void stream_large_body_round_trip(void **state)
{
    struct gw g;
    size_t n = 2 * 1024 * 1024;
    char *body = make_text(n);
    char head[256], id[64];
    json_t *frame, *resp;
    struct resp r;
    int fd;

    (void)state;
    gw_start(&g, true, NULL);
    fd = http_connect(g.port);
    snprintf(head, sizeof(head),
             "PUT /api/issues/i1/documents/d1 HTTP/1.1\r\n" AUTH
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
             n);
    send_str(fd, head);
    send_all(fd, body, n);
    frame = read_frame(&g, 20000);
    assert_int_equal(json_string_length(json_object_get(frame, "body")), n);
    assert_memory_equal(json_string_value(json_object_get(frame, "body")), body,
                        n);
    snprintf(id, sizeof(id), "%s",
             json_string_value(json_object_get(frame, "id")));
    json_decref(frame);
    /* Body before bodyEncoding, as base64 of the text. */
    {
        char *enc = b64((const uint8_t *)body, n);

        resp =
            json_pack("{s:s, s:s, s:s, s:i, s:s}", "type", "response", "body",
                      enc, "id", id, "status", 200, "bodyEncoding", "base64");
        free(enc);
    }
    write_frame_json(&g, resp);
    json_decref(resp);
    http_read(fd, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, n);
    assert_memory_equal(r.body, body, n);
    resp_free(&r);
    free(body);
    gw_stop(&g);
}

static void stream_timeout_sends_an_abandon_frame(void **state)
{
    static char *const env[] = { "PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS=300",
                                 NULL };
    struct gw g;
    json_t *frame, *late;
    struct resp r;
    char id[64];
    int fd;

    (void)state;
    gw_start(&g, true, env);
    fd = http_connect(g.port);
    send_str(fd, GET_ME);
    frame = read_frame(&g, 5000);
    snprintf(id, sizeof(id), "%s",
             json_string_value(json_object_get(frame, "id")));
    json_decref(frame);
    http_read(fd, &r);
    assert_error_body(&r, 502, "Timed out waiting for host bridge response.");
    resp_free(&r);
    frame = read_frame(&g, 5000);
    assert_member(frame, "type", "abandon");
    assert_member(frame, "id", id);
    json_decref(frame);
    /* A late response for it is dropped; the gateway keeps serving. */
    late = response_of(id, 200, "{}");
    json_object_set_new(late, "type", json_string("response"));
    write_frame_json(&g, late);
    json_decref(late);
    http_once(g.port, "GET /a HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n", &r);
    assert_int_equal(r.status, 401);
    resp_free(&r);
    gw_stop(&g);
}

static void stream_eof_answers_waiters_and_frees_the_port(void **state)
{
    static const char post[] =
        "POST /api/issues/i1/checkout HTTP/1.1\r\n" AUTH
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    static const char get[] = "GET /api/agents/me HTTP/1.1\r\n" AUTH "\r\n";
    char port_env[64];
    char *const env[] = { port_env, NULL };
    struct gw g, g2;
    json_t *body;
    struct resp r;
    char v[64];
    int fd_post, fd_get;

    (void)state;
    gw_start(&g, true, NULL);
    fd_post = http_connect(g.port);
    send_str(fd_post, post);
    json_decref(read_frame(&g, 5000));
    fd_get = http_connect(g.port);
    send_str(fd_get, get);
    json_decref(read_frame(&g, 5000));
    close(g.to_child); /* the host is gone */
    g.to_child = -1;
    http_read(fd_post, &r);
    assert_int_equal(r.status, 409);
    assert_string_equal(
        resp_header(&r, "x-paperclip-bridge-outcome", v, sizeof(v)),
        "indeterminate");
    body = json_loadb(r.body, r.body_len, 0, NULL);
    assert_member(body, "error", "Bridge host disconnected.");
    json_decref(body);
    resp_free(&r);
    http_read(fd_get, &r);
    assert_error_body(&r, 502, "Bridge host disconnected.");
    resp_free(&r);
    assert_int_equal(gw_wait_exit(&g, 5000), 0);
    close_pipes(&g);
    /* A restarted gateway takes the same port at once. */
    snprintf(port_env, sizeof(port_env), "PAPERCLIP_BRIDGE_PORT=%d", g.port);
    gw_start(&g2, true, env);
    assert_int_equal(g2.port, g.port);
    gw_stop(&g2);
}

static void stream_bad_frame_length_exits_1(void **state)
{
    struct gw g;
    uint8_t zero[4] = { 0, 0, 0, 0 };

    (void)state;
    gw_start(&g, true, NULL);
    assert_int_equal(write(g.to_child, zero, 4), 4);
    assert_int_equal(gw_wait_exit(&g, 5000), 1);
    close_pipes(&g);
    assert_true(log_has(&g, "stream protocol error"));
}

/* ================================================================
 * The static binary: ELF, size, resident memory
 * ================================================================ */

static void binary_is_static_and_small(void **state)
{
    size_t len = 0;
    char *img;
    const Elf64_Ehdr *eh;
    int i;

    (void)state;
    if (is_dynamic)
        skip();
    img = read_file(gw_bin, &len);
    assert_non_null(img);
    assert_true(len <= SIZE_LIMIT);
    print_message("envrun-gateway: %zu bytes\n", len);
    eh = (const Elf64_Ehdr *)img;
    assert_memory_equal(eh->e_ident, ELFMAG, SELFMAG);
    assert_int_equal(eh->e_ident[EI_CLASS], ELFCLASS64);
    for (i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *ph =
            (const Elf64_Phdr *)(img + eh->e_phoff +
                                 (size_t)i * eh->e_phentsize);

        assert_int_not_equal(ph->p_type, PT_INTERP);
        if (ph->p_type == PT_DYNAMIC) {
            const Elf64_Dyn *d = (const Elf64_Dyn *)(img + ph->p_offset);
            size_t k;

            for (k = 0; k < ph->p_filesz / sizeof(*d); k++)
                assert_int_not_equal(d[k].d_tag, DT_NEEDED);
        }
    }
    free(img);
}

/* Peak resident set of pid, from /proc/<pid>/status. */
static long vm_hwm_kb(pid_t pid)
{
    char path[64], text[4096];
    const char *p;
    size_t n;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    assert_non_null(f);
    n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    p = strstr(text, "VmHWM:");
    assert_non_null(p);
    return strtol(p + 6, NULL, 10);
}

/* WAVE requests open at once; the host answers each. */
static void small_wave(struct gw *g)
{
    int fds[WAVE];
    char seen[WAVE][64];
    int i, got = 0;
    char dir[200];

    snprintf(dir, sizeof(dir), "%s/requests", g->qdir);
    for (i = 0; i < WAVE; i++) {
        fds[i] = http_connect(g->port);
        send_str(fds[i], GET_ME);
    }
    while (got < WAVE) {
        char id[64];
        json_t *req = wait_request(g, id, 10000);
        json_t *resp = response_of(id, 200, "{\"ok\":true}");

        for (i = 0; i < got; i++)
            assert_string_not_equal(seen[i], id);
        snprintf(seen[got++], sizeof(seen[0]), "%s", id);
        write_response_json(g, id, resp);
        json_decref(resp);
        json_decref(req);
    }
    for (i = 0; i < WAVE; i++) {
        struct resp r;

        http_read(fds[i], &r);
        assert_int_equal(r.status, 200);
        resp_free(&r);
    }
    assert_int_equal(count_dir(dir, ""), 0);
}

static void resident_memory_stays_under_2_mib(void **state)
{
    struct gw g;
    long after_small, after_big;
    int i;

    (void)state;
    if (is_dynamic)
        skip();
    gw_start(&g, false, NULL);
    for (i = 0; i < SMALL_REQUESTS / WAVE; i++)
        small_wave(&g);
    after_small = vm_hwm_kb(g.pid);
    print_message("VmHWM after %d small requests (%d at once): %ld kB\n",
                  SMALL_REQUESTS, WAVE, after_small);
    assert_true(after_small <= RSS_LIMIT_KB);
    echo_body(&g, 8 * 1024 * 1024);
    after_big = vm_hwm_kb(g.pid);
    print_message("VmHWM after an 8 MiB body each way: %ld kB\n", after_big);
    assert_true(after_big <= RSS_LIMIT_KB);
    gw_stop(&g);
}

/* ================================================================
 * Parsers, in process (the library the binary is built from)
 * ================================================================ */

static int count_events(void *ctx, const struct er_gwjson_event *ev)
{
    (void)ev;
    (*(int *)ctx)++;
    return 0;
}

static void parsers_reject_what_they_must(void **state)
{
    struct er_gwhttp_req req;
    struct er_gwjson js;
    char url[64];
    size_t pl, ql;
    int cnt = 0;

    (void)state;
    assert_int_equal(er_gwhttp_parse_head("GET / HTTP/1.1\r\n", 16, &req),
                     ER_GWHTTP_INCOMPLETE);
    assert_int_equal(er_gwhttp_parse_head("GET / HTTP/2.0\r\n\r\n", 18, &req),
                     -505);
    assert_int_equal(
        er_gwhttp_parse_head("GET / HTTP/1.1\r\n folded\r\n\r\n", 27, &req),
        -400);
    assert_int_equal(
        er_gwhttp_parse_head("GET / HTTP/1.1\r\nA : b\r\n\r\n", 25, &req),
        -400);
    assert_int_equal(er_gwhttp_parse_head("GET / HTTP/1.1\r\n\r\n", 18, &req),
                     0);
    assert_int_equal(req.head_len, 18);
    assert_int_equal(
        er_gwhttp_url("/a/%2e%2E/b/..", 14, url, sizeof(url), &pl, &ql), 0);
    assert_string_equal(url, "/");
    assert_int_equal(er_gwhttp_url("//host/p?", 9, url, sizeof(url), &pl, &ql),
                     0);
    assert_string_equal(url, "/p");
    assert_int_equal(ql, 0);
    assert_int_equal(er_gwhttp_url("nope", 4, url, sizeof(url), &pl, &ql),
                     -400);
    assert_true(er_gwhttp_is_attachment_path(
        "/api/companies/c/issues/i/attachments", 37));
    assert_false(er_gwhttp_is_attachment_path(
        "/api/companies//issues/i/attachments", 36));
    er_gwjson_init(&js, 0);
    assert_int_equal(er_gwjson_feed(&js, "{\"a\":[1,2.5e3,\"\\ud83d\\ude00\"]}",
                                    30, count_events, &cnt, NULL),
                     0);
    assert_int_equal(er_gwjson_finish(&js, count_events, &cnt), 0);
    er_gwjson_init(&js, 0);
    assert_int_equal(
        er_gwjson_feed(&js, "{\"a\":01}", 8, count_events, &cnt, NULL),
        ER_GWJSON_ESYNTAX);
    assert_non_null(strstr(js.err, "JSON"));
    er_gwjson_init(&js, 0);
    assert_int_equal(
        er_gwjson_feed(&js, "{\"a\":\"x\ny\"}", 10, count_events, &cnt, NULL),
        ER_GWJSON_ESYNTAX);
    er_gwjson_init(&js, 0);
    assert_int_equal(er_gwjson_feed(&js, "{} x", 4, count_events, &cnt, NULL),
                     ER_GWJSON_ESYNTAX);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(parsers_reject_what_they_must, teardown),
        cmocka_unit_test_teardown(ready_json_has_the_b3_fields, teardown),
        cmocka_unit_test_teardown(
            round_trip_filters_headers_and_copies_the_reply, teardown),
        cmocka_unit_test_teardown(wrong_token_is_401_and_never_queued,
                                  teardown),
        cmocka_unit_test_teardown(full_queue_is_503_until_stale_files_are_swept,
                                  teardown),
        cmocka_unit_test_teardown(non_json_body_is_415, teardown),
        cmocka_unit_test_teardown(multipart_attachment_is_written_base64,
                                  teardown),
        cmocka_unit_test_teardown(
            response_timeout_is_502_and_removes_the_request, teardown),
        cmocka_unit_test_teardown(unsafe_timeout_is_409_indeterminate,
                                  teardown),
        cmocka_unit_test_teardown(indeterminate_outcome_maps_to_409, teardown),
        cmocka_unit_test_teardown(truncated_response_is_502_naming_json,
                                  teardown),
        cmocka_unit_test_teardown(bad_response_bodies_are_502, teardown),
        cmocka_unit_test_teardown(
            base64_response_is_decoded_even_when_encoding_comes_last, teardown),
        cmocka_unit_test_teardown(body_over_the_limit_is_502, teardown),
        cmocka_unit_test_teardown(chunked_body_is_decoded, teardown),
        cmocka_unit_test_teardown(large_bodies_stream_both_ways, teardown),
        cmocka_unit_test_teardown(url_is_normalised_like_whatwg, teardown),
        cmocka_unit_test_teardown(oversized_heads_are_refused, teardown),
        cmocka_unit_test_teardown(idle_clients_are_refused_then_dropped,
                                  teardown),
        cmocka_unit_test_teardown(startup_errors_exit_non_zero, teardown),
        cmocka_unit_test_teardown(sigterm_and_sigint_exit_zero, teardown),
        cmocka_unit_test_teardown(stream_ready_frame_and_round_trip, teardown),
        cmocka_unit_test_teardown(stream_large_body_round_trip, teardown),
        cmocka_unit_test_teardown(stream_timeout_sends_an_abandon_frame,
                                  teardown),
        cmocka_unit_test_teardown(stream_eof_answers_waiters_and_frees_the_port,
                                  teardown),
        cmocka_unit_test_teardown(stream_bad_frame_length_exits_1, teardown),
        cmocka_unit_test_teardown(binary_is_static_and_small, teardown),
        cmocka_unit_test_teardown(resident_memory_stays_under_2_mib, teardown),
    };

    if (argc == 3 && strcmp(argv[1], "--dynamic") == 0) {
        is_dynamic = true;
        gw_bin = argv[2];
    } else if (argc == 2) {
        gw_bin = argv[1];
    } else {
        fprintf(stderr, "usage: %s [--dynamic] <envrun-gateway>\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
