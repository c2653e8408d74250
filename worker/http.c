/* http: a tiny HTTP/1.1 endpoint (GET /metrics, /healthz, /readyz) served
 * by one thread, one request per connection, plus its pure request parser.
 * er_http_new and er_http_destroy run on the owner's thread; the struct
 * er_http owns the listening socket, the wake pipe and the thread. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "worker/worker.h"

#define HEAD_MAX         8192              /* bytes of request head we read */
#define METRICS_MAX      ((size_t)1 << 20) /* cap of one /metrics body */
#define RECV_TIMEOUT_S   2
#define HEAD_DEADLINE_MS 5000  /* whole head, however it trickles in */
#define DRAIN_MAX        65536 /* unread bytes swallowed before close */
#define DRAIN_MS         200

struct er_http {
    int listen_fd;  /* -1 when closed */
    int wake_fd[2]; /* self-pipe: destroy writes, the thread wakes */
    pthread_t thread;
    bool has_thread; /* thread was started and must be joined */
    int port;
};

/* ================================================================
 * The parser (pure, fuzzed)
 * ================================================================ */

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Offset just past the first CRLFCRLF of buf, or 0 when there is none. */
static size_t head_end(const char *buf, size_t len)
{
    size_t i;

    for (i = 0; i + 4 <= len; i++) {
        if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' &&
            buf[i + 3] == '\n')
            return i + 4;
    }
    return 0;
}

/* One header line [p, end) without its CRLF: token ':' value, where the
 * value may hold HTAB and obs-text but no other control character. */
static bool header_is_valid(const char *p, const char *end)
{
    const char *name = p;

    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == name || p == end || *p != ':')
        return false;
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;

        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

int er_http_parse_request(const char *buf, size_t len, const char **method,
                          size_t *method_len, const char **path,
                          size_t *path_len)
{
    const char *p;
    const char *end;
    const char *line_end;
    const char *target;
    const char *target_end;
    const char *m;
    const char *m_end;
    size_t n;

    ER_ASSERT(method != NULL && method_len != NULL && path != NULL &&
              path_len != NULL);
    if (buf == NULL)
        return ER_EBADMSG;
    n = head_end(buf, len);
    if (n == 0)
        return ER_EBADMSG;
    end = buf + n - 2; /* the last CRLF ends the empty line */

    /* Request line: method SP request-target SP HTTP-version CRLF. */
    p = buf;
    m = p;
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == m || p == end || *p != ' ')
        return ER_EBADMSG;
    m_end = p;
    target = ++p;
    while (p < end && (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f)
        p++;
    target_end = p;
    if (target == target_end || *target != '/' || p == end || *p != ' ')
        return ER_EBADMSG;
    p++;
    if ((size_t)(end - p) < 10 || memcmp(p, "HTTP/1.", 7) != 0 ||
        (p[7] != '0' && p[7] != '1') || p[8] != '\r' || p[9] != '\n')
        return ER_EBADMSG;
    p += 10;

    /* Header lines up to the empty one; every line ends in CRLF. */
    while (p < end) {
        line_end = p;
        while (line_end < end && *line_end != '\r' && *line_end != '\n')
            line_end++;
        /* The CRLF at end belongs to the empty line, so a header line's
         * own CRLF lies before it; line_end[1] is inside the head. */
        if (line_end >= end || line_end[0] != '\r' || line_end[1] != '\n')
            return ER_EBADMSG;
        if (!header_is_valid(p, line_end))
            return ER_EBADMSG;
        p = line_end + 2;
    }

    *method = m;
    *method_len = (size_t)(m_end - m);
    p = target;
    while (p < target_end && *p != '?')
        p++;
    *path = target;
    *path_len = (size_t)(p - target);
    return 0;
}

/* ================================================================
 * The server
 * ================================================================ */

static void set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);

    if (flags >= 0)
        (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return ER_EIO;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int respond(int fd, int status, const char *reason,
                   const char *content_type, const char *extra_headers,
                   const void *body, size_t body_len)
{
    char head[256];
    int n;
    int rc;

    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                 "Content-Length: %zu\r\n%sConnection: close\r\n\r\n",
                 status, reason, content_type, body_len, extra_headers);
    ER_ASSERT(n > 0 && (size_t)n < sizeof(head));
    rc = send_all(fd, head, (size_t)n);
    if (rc == 0 && body_len > 0)
        rc = send_all(fd, body, body_len);
    return rc;
}

static int respond_text(int fd, int status, const char *reason,
                        const char *body)
{
    return respond(fd, status, reason, "text/plain; charset=utf-8", "", body,
                   strlen(body));
}

static int respond_metrics(int fd)
{
    struct er_buf body;
    int rc;

    er_buf_init(&body, METRICS_MAX);
    rc = er_metrics_render(&body);
    if (rc != 0) {
        ER_LOG_WARN("http", "rendering metrics failed: %s", er_errname(rc));
        rc = respond_text(fd, 500, "Internal Server Error",
                          "metrics unavailable\n");
        goto out;
    }
    rc = respond(fd, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", "",
                 body.data, body.len);

out:
    er_buf_fini(&body);
    return rc;
}

static void route(int fd, const char *buf, size_t len)
{
    const char *method = NULL;
    const char *path = NULL;
    size_t method_len = 0;
    size_t path_len = 0;
    int rc;

    if (er_http_parse_request(buf, len, &method, &method_len, &path,
                              &path_len) != 0) {
        rc = respond_text(fd, 400, "Bad Request", "bad request\n");
        goto out;
    }
    if (method_len != 3 || memcmp(method, "GET", 3) != 0) {
        rc = respond(fd, 405, "Method Not Allowed", "text/plain; charset=utf-8",
                     "Allow: GET\r\n", "method not allowed\n",
                     strlen("method not allowed\n"));
        goto out;
    }
    if (path_len == 8 && memcmp(path, "/metrics", 8) == 0)
        rc = respond_metrics(fd);
    else if (path_len == 8 && memcmp(path, "/healthz", 8) == 0)
        rc = respond_text(fd, 200, "OK", "ok\n");
    else if (path_len == 7 && memcmp(path, "/readyz", 7) == 0)
        rc = er_metrics_is_ready()
                 ? respond_text(fd, 200, "OK", "ready\n")
                 : respond_text(fd, 503, "Service Unavailable", "not ready\n");
    else
        rc = respond_text(fd, 404, "Not Found", "not found\n");

out:
    if (rc != 0)
        ER_LOG_DEBUG("http", "client went away before the response");
}

/* Serve one connection: read the head (at most HEAD_MAX bytes, each read
 * bounded by SO_RCVTIMEO and all of them by HEAD_DEADLINE_MS, so a client
 * trickling bytes cannot hold the only thread), answer, close. */
static void serve(int fd)
{
    char buf[HEAD_MAX];
    char drain[1024];
    size_t len = 0;
    size_t scan_from;
    size_t drained = 0;
    struct timeval tv = { .tv_sec = RECV_TIMEOUT_S, .tv_usec = 0 };
    int64_t deadline_ms = er_time_mono_ms() + HEAD_DEADLINE_MS;

    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    while (len < sizeof(buf) && er_time_mono_ms() < deadline_ms) {
        ssize_t r = recv(fd, buf + len, sizeof(buf) - len, 0);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break; /* closed, timed out or reset: answer what we have */
        /* Rescan the last 3 old bytes: a CRLFCRLF may straddle reads. */
        scan_from = len < 3 ? 0 : len - 3;
        len += (size_t)r;
        if (head_end(buf + scan_from, len - scan_from) != 0)
            break;
    }
    if (len == 0)
        return; /* nothing asked, nothing to answer */
    route(fd, buf, len);

    /* Closing with unread bytes makes the kernel send RST, which can
     * destroy the response in flight; swallow a little first. */
    (void)shutdown(fd, SHUT_WR);
    tv.tv_sec = 0;
    tv.tv_usec = DRAIN_MS * 1000L;
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    deadline_ms = er_time_mono_ms() + DRAIN_MS;
    while (drained < DRAIN_MAX && er_time_mono_ms() < deadline_ms) {
        ssize_t r = recv(fd, drain, sizeof(drain), 0);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        drained += (size_t)r;
    }
}

static void *loop(void *arg)
{
    struct er_http *http = arg;
    char errbuf[128];

    for (;;) {
        struct pollfd pfd[2];
        int fd;
        int flags;

        pfd[0].fd = http->listen_fd;
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        pfd[1].fd = http->wake_fd[0];
        pfd[1].events = POLLIN;
        pfd[1].revents = 0;
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            ER_LOG_ERR("http", "poll failed, endpoint stopped: %s",
                       er_strerror(errno, errbuf, sizeof(errbuf)));
            break;
        }
        if (pfd[1].revents != 0)
            break;
        if (pfd[0].revents == 0)
            continue;
        fd = accept(http->listen_fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                ER_LOG_WARN("http", "accept failed: %s",
                            er_strerror(errno, errbuf, sizeof(errbuf)));
                /* Back off instead of spinning on a pending connection. */
                (void)poll(&pfd[1], 1, 100);
            }
            continue; /* EAGAIN, ECONNABORTED, EINTR: nothing to serve */
        }
        set_cloexec(fd);
        /* BSDs pass O_NONBLOCK on from the listening socket; we want
         * blocking reads bounded by SO_RCVTIMEO. */
        flags = fcntl(fd, F_GETFL);
        if (flags >= 0 && (flags & O_NONBLOCK) != 0)
            (void)fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        serve(fd);
        close(fd);
    }
    return NULL;
}

/* Split "host:port" or "[v6]:port" into host and port (NUL-terminated
 * copies). Returns 0 or ER_EINVAL. */
static int split_addr(const char *addr, char *host, size_t host_size,
                      char *port, size_t port_size)
{
    const char *h = addr;
    const char *h_end;
    const char *p;
    size_t i;

    if (addr[0] == '[') {
        h = addr + 1;
        h_end = strchr(h, ']');
        if (h_end == NULL || h_end[1] != ':')
            return ER_EINVAL;
        p = h_end + 2;
    } else {
        h_end = strrchr(addr, ':');
        if (h_end == NULL)
            return ER_EINVAL;
        p = h_end + 1;
    }
    if (h_end == h || (size_t)(h_end - h) >= host_size)
        return ER_EINVAL;
    for (i = 0; p[i] != '\0'; i++) {
        if (p[i] < '0' || p[i] > '9' || i >= 5)
            return ER_EINVAL;
    }
    if (i == 0 || i >= port_size || strtol(p, NULL, 10) > 65535)
        return ER_EINVAL;
    memcpy(host, h, (size_t)(h_end - h));
    host[h_end - h] = '\0';
    memcpy(port, p, i + 1);
    return 0;
}

/* Bind and listen on the first address of host:port that works. */
static int listen_on(const char *host, const char *port, int *fd_out,
                     struct er_err *err)
{
    struct addrinfo hints;
    struct addrinfo *res = NULL;
    struct addrinfo *ai;
    char errbuf[128];
    int saved_errno = 0;
    int fd = -1;
    int one = 1;
    int rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                        "http address %s:%s: %s", host, port, gai_strerror(rc));
        goto out;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) {
            saved_errno = errno;
            continue;
        }
        set_cloexec(fd);
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
            bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 16) == 0)
            break;
        saved_errno = errno;
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                        "http listen on %s:%s failed: %s", host, port,
                        er_strerror(saved_errno, errbuf, sizeof(errbuf)));
        goto out;
    }
    *fd_out = fd;
    rc = 0;

out:
    if (res != NULL)
        freeaddrinfo(res);
    return rc;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t ss_len = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &ss_len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

struct er_http *er_http_new(const char *addr, struct er_err *err)
{
    struct er_http *http = NULL;
    char host[128];
    char port[8];
    char errbuf[128];
    sigset_t all;
    sigset_t old;
    int flags;
    int rc;

    if (addr == NULL ||
        split_addr(addr, host, sizeof(host), port, sizeof(port)) != 0) {
        er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                   "http address: must be host:port or [v6]:port");
        goto fail;
    }
    http = er_calloc(1, sizeof(*http));
    if (http == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        goto fail;
    }
    http->listen_fd = -1;
    http->wake_fd[0] = -1;
    http->wake_fd[1] = -1;
    if (listen_on(host, port, &http->listen_fd, err) != 0)
        goto fail;
    /* A non-blocking listener: a connection reset between poll and
     * accept must not block the loop in accept. */
    flags = fcntl(http->listen_fd, F_GETFL);
    if (flags < 0 || fcntl(http->listen_fd, F_SETFL, flags | O_NONBLOCK) != 0 ||
        pipe(http->wake_fd) != 0) {
        er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "http setup failed: %s",
                   er_strerror(errno, errbuf, sizeof(errbuf)));
        goto fail;
    }
    set_cloexec(http->wake_fd[0]);
    set_cloexec(http->wake_fd[1]);
    http->port = bound_port(http->listen_fd);

    /* The thread blocks every signal, so they reach the other threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&http->thread, NULL, loop, http);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                   "http thread start failed: %s",
                   er_strerror(rc, errbuf, sizeof(errbuf)));
        goto fail;
    }
    http->has_thread = true;
    ER_LOG_INFO("http", "serving /metrics /healthz /readyz on %s (port %d)",
                addr, http->port);
    return http;

fail:
    er_http_destroy(http);
    return NULL;
}

int er_http_port(const struct er_http *http)
{
    ER_ASSERT(http != NULL);
    return http->port;
}

/* Waits for the request being served, which the deadlines bound. */
void er_http_destroy(struct er_http *http)
{
    if (http == NULL)
        return;
    if (http->has_thread) {
        ssize_t w;

        do {
            w = write(http->wake_fd[1], "x", 1);
        } while (w < 0 && errno == EINTR);
        /* The pipe is empty and ours alone, so the write cannot fail. */
        ER_ASSERT(w == 1);
        pthread_join(http->thread, NULL);
    }
    if (http->listen_fd >= 0)
        close(http->listen_fd);
    if (http->wake_fd[0] >= 0)
        close(http->wake_fd[0]);
    if (http->wake_fd[1] >= 0)
        close(http->wake_fd[1]);
    er_free(http);
}
