/* gateway: configuration (upstream.md B4), startup (directories, bind,
 * readiness) and the single-threaded poll() loop that drives every
 * connection, the queue_v1 timers and the stream_v1 pipes. The gateway
 * instance is one static object: the process serves one bridge. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bridge/gateway/gateway_int.h"

#define DEFAULT_POLL_INTERVAL_MS    100
#define DEFAULT_RESPONSE_TIMEOUT_MS 30000
#define DEFAULT_MAX_QUEUE_DEPTH     64
#define DEFAULT_MAX_BODY_BYTES      (10 * 1048576 + 65536)
#define MAX_TIMER_MS                (24.0 * 3600 * 1000)

static volatile sig_atomic_t stop_signal;
static int signal_fd = -1; /* write end of the self-pipe */

/* ================================================================
 * Logging, time, assertions
 * ================================================================ */

void er_gateway_log(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int n = snprintf(line, sizeof(line), "[paperclip-bridge] ");

    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    /* One write per line, so lines from a restart never interleave. */
    if (write(STDERR_FILENO, line, (size_t)n) < 0)
        return;
}

void er_gateway_assert_fail(const char *expr, const char *file, int line)
{
    er_gateway_log("assertion failed: %s (%s:%d)", expr, file, line);
    abort();
}

int er_gateway_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = write(fd, c, n);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int64_t er_gateway_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void er_gateway_iso_now(char out[32])
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    /* strftime cannot overflow (years past 9999 are not ours to serve). */
    if (strftime(out, 24, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        out[0] = '\0';
    snprintf(out + strlen(out), 8, ".%03dZ", (int)(ts.tv_nsec / 1000000));
}

bool er_gateway_reserve(struct er_gateway *gw, struct er_gwconn *conn,
                        uint64_t n)
{
    if (n > gw->ledger_ceiling - gw->ledger_used)
        return false;
    gw->ledger_used += n;
    conn->reserved += n;
    return true;
}

/* ================================================================
 * Configuration (B4)
 * ================================================================ */

/* A numeric variable as upstream reads it: a finite positive number,
 * truncated; anything else (unset, empty, junk, 0, negative) is def.
 * Values past max are max. */
static double env_number(const char *name, double def, double max)
{
    const char *s = getenv(name);
    char *end = NULL;
    double v;

    if (s == NULL)
        return def;
    v = strtod(s, &end);
    if (end == s)
        return def;
    while (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')
        end++;
    if (*end != '\0' || !isfinite(v) || v <= 0)
        return def;
    v = trunc(v);
    if (v < 1)
        return def;
    return v > max ? max : v;
}

static int copy_env(char *out, size_t out_len, const char *value)
{
    size_t n = strlen(value);

    if (n >= out_len)
        return -1;
    memcpy(out, value, n + 1);
    return 0;
}

int er_gateway_config_load(struct er_gateway_config *cfg, char *msg,
                           size_t msg_len)
{
    const char *mode = getenv("PAPERCLIP_API_BRIDGE_MODE");
    const char *token = getenv("PAPERCLIP_BRIDGE_TOKEN");
    const char *dir = getenv("PAPERCLIP_BRIDGE_QUEUE_DIR");
    const char *host = getenv("PAPERCLIP_BRIDGE_HOST");

    memset(cfg, 0, sizeof(*cfg));
    if (token == NULL || token[0] == '\0') {
        snprintf(msg, msg_len, "PAPERCLIP_BRIDGE_TOKEN is required.");
        return -1;
    }
    if (copy_env(cfg->token, sizeof(cfg->token), token) != 0) {
        snprintf(msg, msg_len, "PAPERCLIP_BRIDGE_TOKEN is too long.");
        return -1;
    }
    cfg->token_len = strlen(cfg->token);
    if (mode == NULL || mode[0] == '\0' || strcmp(mode, "queue_v1") == 0) {
        cfg->mode = ER_GATEWAY_QUEUE_V1;
    } else if (strcmp(mode, "stream_v1") == 0) {
        cfg->mode = ER_GATEWAY_STREAM_V1;
    } else {
        snprintf(msg, msg_len, "Unsupported PAPERCLIP_API_BRIDGE_MODE: %.64s",
                 mode);
        return -1;
    }
    if (cfg->mode == ER_GATEWAY_QUEUE_V1) {
        if (dir == NULL || dir[0] == '\0') {
            snprintf(msg, msg_len,
                     "PAPERCLIP_BRIDGE_QUEUE_DIR and "
                     "PAPERCLIP_BRIDGE_TOKEN are required.");
            return -1;
        }
        if (copy_env(cfg->queue_dir, sizeof(cfg->queue_dir) - 32, dir) != 0) {
            snprintf(msg, msg_len, "PAPERCLIP_BRIDGE_QUEUE_DIR is too long.");
            return -1;
        }
    }
    if (host == NULL || host[0] == '\0')
        host = "127.0.0.1";
    if (copy_env(cfg->host, sizeof(cfg->host), host) != 0) {
        snprintf(msg, msg_len, "PAPERCLIP_BRIDGE_HOST is too long.");
        return -1;
    }
    /* A port past 65535 is kept so that the bind fails with its message. */
    cfg->port = (int)env_number("PAPERCLIP_BRIDGE_PORT", 0, 1e6);
    cfg->poll_interval_ms =
        (int64_t)env_number("PAPERCLIP_BRIDGE_POLL_INTERVAL_MS",
                            DEFAULT_POLL_INTERVAL_MS, MAX_TIMER_MS);
    cfg->response_timeout_ms =
        (int64_t)env_number("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS",
                            DEFAULT_RESPONSE_TIMEOUT_MS, MAX_TIMER_MS);
    cfg->max_queue_depth = (int64_t)env_number(
        "PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH", DEFAULT_MAX_QUEUE_DEPTH, 1e9);
    cfg->max_body_bytes = (uint64_t)env_number(
        "PAPERCLIP_BRIDGE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES,
        (double)ER_GW_LEDGER_CEILING_MAX);
    return 0;
}

/* ================================================================
 * Startup
 * ================================================================ */

static void on_signal(int sig)
{
    int saved = errno;
    char b = 1;

    stop_signal = sig;
    if (signal_fd >= 0 && write(signal_fd, &b, 1) < 0) {
        /* The pipe is full: a wake-up is pending anyway. */
    }
    errno = saved;
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return -1;
    return 0;
}

static int setup_signals(struct er_gateway *gw)
{
    struct sigaction sa;

    if (pipe(gw->sig_pipe) != 0 || set_nonblock(gw->sig_pipe[0]) != 0 ||
        set_nonblock(gw->sig_pipe[1]) != 0)
        return -1;
    fcntl(gw->sig_pipe[0], F_SETFD, FD_CLOEXEC);
    fcntl(gw->sig_pipe[1], F_SETFD, FD_CLOEXEC);
    signal_fd = gw->sig_pipe[1];
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return -1;
    /* Writes to a gone client or host fail with EPIPE instead. */
    sa.sa_handler = SIG_IGN;
    return sigaction(SIGPIPE, &sa, NULL);
}

static void log_errno(const char *what, int err)
{
    char buf[128];

    if (strerror_r(err, buf, sizeof(buf)) != 0)
        snprintf(buf, sizeof(buf), "errno %d", err);
    er_gateway_log("%s: %s", what, buf);
}

/* Bind host:port (B4 rule 3). The host is a numeric address or
 * "localhost"; names are not resolved (no resolver in a static binary). */
static int listen_on(struct er_gateway *gw)
{
    const struct er_gateway_config *cfg = gw->cfg;
    struct sockaddr_storage ss;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    socklen_t ss_len;
    const char *host = cfg->host;
    char bare[ER_GATEWAY_HOST_MAX];
    size_t n = strlen(host);
    int one = 1;
    int fd;

    memset(&ss, 0, sizeof(ss));
    if (cfg->port > 65535) {
        er_gateway_log("server error: port %d is out of range", cfg->port);
        return -1;
    }
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        memcpy(bare, host + 1, n - 2);
        bare[n - 2] = '\0';
        host = bare;
    }
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)cfg->port);
        ss_len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)cfg->port);
        ss_len = sizeof(*sin6);
    } else {
        er_gateway_log("server error: getaddrinfo ENOTFOUND %.200s", cfg->host);
        return -1;
    }
    fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        log_errno("server error: socket", errno);
        return -1;
    }
    /* A restarted gateway must be able to take the same port at once. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, ss_len) != 0 || listen(fd, 128) != 0 ||
        set_nonblock(fd) != 0) {
        log_errno("server error: listen", errno);
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    ss_len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &ss_len) != 0) {
        log_errno("server error: getsockname", errno);
        close(fd);
        return -1;
    }
    gw->port = ntohs(ss.ss_family == AF_INET ? sin->sin_port : sin6->sin6_port);
    gw->listen_fd = fd;
    snprintf(gw->base_url, sizeof(gw->base_url),
             ss.ss_family == AF_INET6 ? "http://[%s]:%d" : "http://%s:%d",
             cfg->host[0] == '[' ? bare : cfg->host, gw->port);
    return 0;
}

/* ready.json (B3) or the stream_v1 ready frame. */
static int announce(struct er_gateway *gw)
{
    char json[ER_GATEWAY_HOST_MAX * 2 + 256];
    char host[ER_GATEWAY_HOST_MAX * 2 + 8];
    char url[sizeof(gw->base_url) * 2 + 8];
    char started[32];
    int n;

    er_gateway_iso_now(started);
    er_gwjson_quote(host, sizeof(host), gw->cfg->host, strlen(gw->cfg->host),
                    false);
    er_gwjson_quote(url, sizeof(url), gw->base_url, strlen(gw->base_url),
                    false);
    n = snprintf(json, sizeof(json),
                 "{%s\"pid\":%ld,\"host\":%s,\"port\":%d,\"baseUrl\":%s,"
                 "\"startedAt\":\"%s\"}",
                 gw->cfg->mode == ER_GATEWAY_STREAM_V1 ? "\"type\":\"ready\","
                                                       : "",
                 (long)getpid(), host, gw->port, url, started);
    if (n < 0 || (size_t)n >= sizeof(json))
        return -1;
    if (gw->cfg->mode == ER_GATEWAY_STREAM_V1)
        return er_gwstream_send_mem(gw, json, (size_t)n);
    json[n++] = '\n';
    return er_gwqueue_write_ready(gw, json, (size_t)n);
}

/* ================================================================
 * The loop
 * ================================================================ */

static void refuse(int fd)
{
    static const char busy[] =
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        "content-length: 52\r\n"
        "connection: close\r\n\r\n"
        "{\"error\":\"Bridge gateway connection limit reached.\"}";
    char sink[512];
    int i;

    if (send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL) < 0) {
        /* Closed already: nothing to be polite to. */
    }
    /* Read what already arrived, so the close sends FIN rather than RST. */
    for (i = 0; i < 8 && recv(fd, sink, sizeof(sink), 0) > 0; i++)
        ;
    shutdown(fd, SHUT_WR);
    close(fd);
}

static void accept_all(struct er_gateway *gw)
{
    for (;;) {
        int fd = accept(gw->listen_fd, NULL, NULL);
        size_t i;

        if (fd < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK &&
                errno != ECONNABORTED)
                log_errno("accept", errno);
            return;
        }
        if (set_nonblock(fd) != 0) {
            close(fd);
            continue;
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        for (i = 0; i < ER_GW_CONN_MAX; i++) {
            if (gw->conns[i].state == ER_GWCONN_FREE)
                break;
        }
        if (i == ER_GW_CONN_MAX) {
            er_gateway_log("connection limit (%d) reached: refusing",
                           ER_GW_CONN_MAX);
            refuse(fd);
            continue;
        }
        er_gwconn_start(gw, &gw->conns[i], fd);
    }
}

static bool has_busy_conn(const struct er_gateway *gw)
{
    size_t i;

    for (i = 0; i < ER_GW_CONN_MAX; i++) {
        if (gw->conns[i].state != ER_GWCONN_FREE)
            return true;
    }
    return false;
}

/* Build the poll set; returns its size and the timeout to use. */
static nfds_t build_poll(struct er_gateway *gw, struct pollfd *pfds,
                         int *conn_idx, int *timeout_ms)
{
    int64_t now = er_gateway_mono_ms();
    int64_t next = now + 60000;
    bool is_stream = gw->cfg->mode == ER_GATEWAY_STREAM_V1;
    nfds_t n = 0;
    size_t i;

    pfds[n++] = (struct pollfd){ gw->sig_pipe[0], POLLIN, 0 };
    pfds[n++] = (struct pollfd){ gw->listen_fd, POLLIN, 0 };
    pfds[n++] =
        (struct pollfd){ is_stream && !gw->is_host_gone ? 0 : -1, POLLIN, 0 };
    pfds[n++] =
        (struct pollfd){ is_stream && er_gwstream_has_output(gw) ? 1 : -1,
                         POLLOUT, 0 };
    pfds[n++] = (struct pollfd){ gw->notify_fd, POLLIN, 0 };
    for (i = 0; i < ER_GW_CONN_MAX; i++) {
        struct er_gwconn *conn = &gw->conns[i];
        short ev;

        conn_idx[i] = -1;
        if (conn->state == ER_GWCONN_FREE)
            continue;
        if (conn->state == ER_GWCONN_PARSE)
            next = now;
        if (conn->deadline_ms < next)
            next = conn->deadline_ms;
        if (conn->state == ER_GWCONN_WAIT && !is_stream &&
            conn->poll_at_ms < next)
            next = conn->poll_at_ms;
        ev = er_gwconn_events(conn);
        if (ev != 0 && conn->fd >= 0) {
            conn_idx[i] = (int)n;
            pfds[n++] = (struct pollfd){ conn->fd, ev, 0 };
        }
    }
    if (gw->is_host_gone && gw->drain_until_ms < next)
        next = gw->drain_until_ms;
    *timeout_ms = next <= now ? 0 : (int)(next - now);
    return n;
}

static int loop(struct er_gateway *gw)
{
    struct pollfd pfds[ER_GW_CONN_MAX + 5];
    int conn_idx[ER_GW_CONN_MAX];
    size_t i;

    for (;;) {
        int timeout_ms;
        nfds_t n = build_poll(gw, pfds, conn_idx, &timeout_ms);
        int64_t now;
        char drain[64];

        if (poll(pfds, n, timeout_ms) < 0 && errno != EINTR) {
            log_errno("poll", errno);
            return 1;
        }
        if (stop_signal != 0) {
            er_gateway_log("received signal %d: stopping", (int)stop_signal);
            return 0;
        }
        if (pfds[0].revents != 0) {
            while (read(gw->sig_pipe[0], drain, sizeof(drain)) > 0)
                ;
        }
        if (pfds[2].revents != 0)
            er_gwstream_on_input(gw);
        if (pfds[3].revents != 0)
            er_gwstream_on_output(gw);
        if (pfds[4].revents != 0)
            er_gwqueue_on_notify(gw);
        for (i = 0; i < ER_GW_CONN_MAX; i++) {
            if (conn_idx[i] >= 0 && pfds[conn_idx[i]].revents != 0)
                er_gwconn_on_io(gw, &gw->conns[i], pfds[conn_idx[i]].revents);
        }
        if (gw->listen_fd >= 0 && pfds[1].revents != 0)
            accept_all(gw);
        now = er_gateway_mono_ms();
        for (i = 0; i < ER_GW_CONN_MAX; i++) {
            if (gw->conns[i].state != ER_GWCONN_FREE)
                er_gwconn_on_timer(gw, &gw->conns[i], now);
        }
        if (gw->is_host_gone &&
            (!has_busy_conn(gw) || now >= gw->drain_until_ms))
            return gw->exit_code;
    }
}

int er_gateway_run(const struct er_gateway_config *cfg)
{
    static struct er_gateway gateway;
    struct er_gateway *gw = &gateway;
    uint64_t ceiling;
    size_t i;

    gw->cfg = cfg;
    gw->listen_fd = -1;
    gw->requests_dir = -1;
    gw->responses_dir = -1;
    gw->notify_fd = -1;
    for (i = 0; i < ER_GW_CONN_MAX; i++) {
        gw->conns[i].fd = -1;
        gw->conns[i].file_fd = -1;
    }
    gw->envelope_max = er_gw_envelope_limit(cfg->max_body_bytes);
    /* B10: min(1 GiB, 4 x (4 x envelope limit + 4 x max body)). */
    ceiling = 4 * (4 * gw->envelope_max + 4 * cfg->max_body_bytes);
    gw->ledger_ceiling =
        ceiling < ER_GW_LEDGER_CEILING_MAX ? ceiling : ER_GW_LEDGER_CEILING_MAX;
    if (setup_signals(gw) != 0) {
        log_errno("signal setup", errno);
        return 1;
    }
    if (cfg->mode == ER_GATEWAY_QUEUE_V1 && er_gwqueue_open(gw) != 0)
        return 1;
    if (cfg->mode == ER_GATEWAY_STREAM_V1)
        er_gwstream_init(gw);
    if (listen_on(gw) != 0)
        return 1;
    if (announce(gw) != 0) {
        er_gateway_log("could not write the readiness record");
        return 1;
    }
    er_gateway_log("listening on %s (%s)", gw->base_url,
                   cfg->mode == ER_GATEWAY_STREAM_V1 ? "stream_v1"
                                                     : "queue_v1");
    return loop(gw);
}

/* ================================================================
 * Request ids
 * ================================================================ */

/* A random UUID v4 (B3) from getrandom(). Returns 0 or -1. */
int er_gateway_uuid(char out[ER_GW_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    size_t got = 0;
    int i, at = 0;

    while (got < sizeof(b)) {
        ssize_t n = getrandom(b + got, sizeof(b) - got, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    b[6] = (uint8_t)((b[6] & 0x0F) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3F) | 0x80);
    for (i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[at++] = '-';
        out[at++] = hex[b[i] >> 4];
        out[at++] = hex[b[i] & 15];
    }
    out[at] = '\0';
    return 0;
}
