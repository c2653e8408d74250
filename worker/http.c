/* http: a tiny HTTP/1.1 endpoint (GET /metrics, /healthz, /readyz) served
 * by one thread polling non-blocking sockets, one request per connection,
 * plus its pure request parser. er_http_new and er_http_destroy run on the
 * owner's thread; the struct er_http owns the listening socket, the wake
 * pipe, the thread and the connections. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "worker/http_int.h"
#include "worker/worker.h"

#define HEAD_MAX        8192              /* bytes of request head we read */
#define METRICS_MAX     ((size_t)1 << 20) /* cap of one /metrics body */
#define DRAIN_MAX       65536 /* unread bytes swallowed before close */
#define DRAIN_MS        200
#define ACCEPT_PAUSE_MS 100 /* after accept ran out of descriptors */
#define ACCEPT_BATCH    16  /* accepts a round (see loop) */
/* Handshakes the kernel completes before we accept: room for a burst of
 * clients connecting faster than one thread accepts. */
#define LISTEN_BACKLOG  128

/* So that a batch of accepts never displaces a connection it accepted. */
_Static_assert(ACCEPT_BATCH < ER_HTTP_CONN_MAX, "accept batch too large");

/* What a connection is doing; each phase has its own deadline. */
enum conn_phase {
    CONN_READ,  /* reading the request head */
    CONN_WRITE, /* sending the response */
    CONN_DRAIN  /* answered and half-closed, swallowing what still comes */
};

struct conn {
    int fd; /* -1 when the slot is free */
    enum conn_phase phase;
    uint64_t seq;        /* accept order: lower is older */
    int64_t deadline_ms; /* monotonic; the phase ends by then */
    char req[HEAD_MAX];
    size_t req_len;
    char head[256]; /* status line and headers of the response */
    size_t head_len;
    const char *body; /* borrowed: a string literal or metrics.data */
    size_t body_len;
    size_t sent_len;       /* bytes of head, then body, sent so far */
    struct er_buf metrics; /* owned body of a /metrics response */
    size_t drained_len;
};

struct er_http {
    int listen_fd;  /* -1 when closed */
    int wake_fd[2]; /* self-pipe: destroy writes, the thread wakes */
    pthread_t thread;
    bool has_thread; /* thread was started and must be joined */
    int port;
    /* ER_HTTP_CONN_MAX slots, used by the thread only (and by destroy once
     * it has joined). */
    struct conn *conns;
    uint64_t accept_seq;
    int64_t accept_resume_ms; /* no accept before then (monotonic) */
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
 *
 * One thread polls the wake pipe, the listener and up to ER_HTTP_CONN_MAX
 * connections. Every socket is non-blocking and every step does bounded
 * work, so a slow or idle client costs others nothing. A connection reads
 * its head (HEAD_MAX bytes within ER_HTTP_HEAD_DEADLINE_MS of accept),
 * sends its response (within ER_HTTP_WRITE_DEADLINE_MS), then half-closes
 * and drains (DRAIN_MAX bytes within DRAIN_MS) so that close does not
 * reset the response in flight.
 *
 * At the cap, a new connection is still accepted and the slot of another
 * is taken: the oldest one still sending its head, else the oldest already
 * answered, else the oldest being answered. A probe sends its head at once
 * and is answered within a round or two, so idle and trickling clients
 * only push one another out. Leaving new connections in the backlog
 * instead would let a cap of idle clients hold every probe for a full head
 * deadline, and closing them at once would fail the probe outright.
 * ================================================================ */

static void set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);

    if (flags >= 0)
        (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

static bool is_again(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK;
}

static void conn_close(struct conn *c)
{
    ER_ASSERT(c->fd >= 0);
    close(c->fd);
    c->fd = -1;
    er_buf_fini(&c->metrics);
}

static void set_response(struct conn *c, int status, const char *reason,
                         const char *content_type, const char *extra_headers,
                         const char *body, size_t body_len)
{
    int n;

    n = snprintf(c->head, sizeof(c->head),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                 "Content-Length: %zu\r\n%sConnection: close\r\n\r\n",
                 status, reason, content_type, body_len, extra_headers);
    ER_ASSERT(n > 0 && (size_t)n < sizeof(c->head));
    c->head_len = (size_t)n;
    c->body = body;
    c->body_len = body_len;
    c->sent_len = 0;
}

static void set_text(struct conn *c, int status, const char *reason,
                     const char *body)
{
    set_response(c, status, reason, "text/plain; charset=utf-8", "", body,
                 strlen(body));
}

static void set_metrics(struct conn *c)
{
    int rc;

    rc = er_metrics_render(&c->metrics);
    if (rc != 0) {
        ER_LOG_WARN("http", "rendering metrics failed: %s", er_errname(rc));
        set_text(c, 500, "Internal Server Error", "metrics unavailable\n");
        return;
    }
    set_response(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", "",
                 (const char *)c->metrics.data, c->metrics.len);
}

static void route(struct conn *c)
{
    const char *method = NULL;
    const char *path = NULL;
    size_t method_len = 0;
    size_t path_len = 0;

    if (er_http_parse_request(c->req, c->req_len, &method, &method_len, &path,
                              &path_len) != 0)
        set_text(c, 400, "Bad Request", "bad request\n");
    else if (method_len != 3 || memcmp(method, "GET", 3) != 0)
        set_response(c, 405, "Method Not Allowed", "text/plain; charset=utf-8",
                     "Allow: GET\r\n", "method not allowed\n",
                     strlen("method not allowed\n"));
    else if (path_len == 8 && memcmp(path, "/metrics", 8) == 0)
        set_metrics(c);
    else if (path_len == 8 && memcmp(path, "/healthz", 8) == 0)
        set_text(c, 200, "OK", "ok\n");
    else if (path_len == 7 && memcmp(path, "/readyz", 7) == 0 &&
             er_metrics_is_ready())
        set_text(c, 200, "OK", "ready\n");
    else if (path_len == 7 && memcmp(path, "/readyz", 7) == 0)
        set_text(c, 503, "Service Unavailable", "not ready\n");
    else
        set_text(c, 404, "Not Found", "not found\n");
}

/* Swallow what the client still sends until it closes, DRAIN_MAX bytes
 * have come or the deadline passes (conn_expire). */
static void conn_drain(struct conn *c)
{
    char buf[1024];

    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof(buf), 0);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && is_again(errno))
            return;
        if (r <= 0) {
            conn_close(c); /* closed or reset: done */
            return;
        }
        c->drained_len += (size_t)r;
        if (c->drained_len >= DRAIN_MAX) {
            conn_close(c);
            return;
        }
    }
}

/* Send what the socket takes now; poll says when it takes more. */
static void conn_write(struct conn *c, int64_t now_ms)
{
    size_t total_len = c->head_len + c->body_len;

    while (c->sent_len < total_len) {
        const char *p;
        size_t n;
        ssize_t w;

        if (c->sent_len < c->head_len) {
            p = c->head + c->sent_len;
            n = c->head_len - c->sent_len;
        } else {
            p = c->body + (c->sent_len - c->head_len);
            n = total_len - c->sent_len;
        }
        w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && is_again(errno))
            return;
        if (w <= 0) {
            ER_LOG_DEBUG("http", "client went away before the response");
            conn_close(c);
            return;
        }
        c->sent_len += (size_t)w;
    }

    /* Closing with unread bytes makes the kernel send RST, which can
     * destroy the response in flight; half-close and drain first. */
    c->body = NULL;
    er_buf_fini(&c->metrics);
    (void)shutdown(c->fd, SHUT_WR);
    c->phase = CONN_DRAIN;
    c->deadline_ms = now_ms + DRAIN_MS;
    conn_drain(c);
}

/* The head is complete, too long, or cut short by EOF or the deadline:
 * answer it (an incomplete head is a bad request). */
static void conn_answer(struct conn *c, int64_t now_ms)
{
    route(c);
    c->phase = CONN_WRITE;
    c->deadline_ms = now_ms + ER_HTTP_WRITE_DEADLINE_MS;
    conn_write(c, now_ms);
}

static void conn_read(struct conn *c, int64_t now_ms)
{
    for (;;) {
        size_t scan_from;
        ssize_t r =
            recv(c->fd, c->req + c->req_len, sizeof(c->req) - c->req_len, 0);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && is_again(errno))
            return;
        if (r < 0) {
            conn_close(c); /* reset: nobody left to answer */
            return;
        }
        if (r == 0) {
            /* EOF: answer what was asked; nothing asked, nothing to
             * answer. */
            if (c->req_len == 0)
                conn_close(c);
            else
                conn_answer(c, now_ms);
            return;
        }
        /* Rescan the last 3 old bytes: a CRLFCRLF may straddle reads. */
        scan_from = c->req_len < 3 ? 0 : c->req_len - 3;
        c->req_len += (size_t)r;
        if (head_end(c->req + scan_from, c->req_len - scan_from) != 0 ||
            c->req_len == sizeof(c->req)) {
            conn_answer(c, now_ms);
            return;
        }
    }
}

/* The socket is readable, writable or failed: take the phase's step. */
static void conn_ready(struct conn *c, int64_t now_ms)
{
    switch (c->phase) {
    case CONN_READ:
        conn_read(c, now_ms);
        return;
    case CONN_WRITE:
        conn_write(c, now_ms);
        return;
    case CONN_DRAIN:
        conn_drain(c);
        return;
    }
    ER_ASSERT(false);
}

static void conn_expire(struct conn *c, int64_t now_ms)
{
    switch (c->phase) {
    case CONN_READ:
        /* As at EOF: what trickled in is answered (400), or nothing is. */
        if (c->req_len == 0)
            conn_close(c);
        else
            conn_answer(c, now_ms);
        return;
    case CONN_WRITE:
        ER_LOG_DEBUG("http", "client too slow to read the response");
        conn_close(c);
        return;
    case CONN_DRAIN:
        conn_close(c);
        return;
    }
    ER_ASSERT(false);
}

/* Lower gives way first at the cap (see the top of this section). */
static int evict_rank(const struct conn *c)
{
    switch (c->phase) {
    case CONN_READ:
        return 0;
    case CONN_DRAIN:
        return 1;
    case CONN_WRITE:
        return 2;
    }
    ER_ASSERT(false);
    return 3;
}

/* A free slot, or one made free by closing the connection that gives way
 * first. */
static struct conn *take_slot(struct er_http *http)
{
    struct conn *victim = NULL;
    size_t i;

    for (i = 0; i < ER_HTTP_CONN_MAX; i++) {
        struct conn *c = &http->conns[i];

        if (c->fd < 0)
            return c;
        if (victim == NULL || evict_rank(c) < evict_rank(victim) ||
            (evict_rank(c) == evict_rank(victim) && c->seq < victim->seq))
            victim = c;
    }
    ER_LOG_DEBUG("http", "connection cap %d reached, closing one to make room",
                 ER_HTTP_CONN_MAX);
    conn_close(victim);
    return victim;
}

/* Accept one connection and read what it has sent already. Returns
 * whether one was taken from the queue (so more may be waiting). */
static bool accept_one(struct er_http *http, int64_t now_ms)
{
    char errbuf[128];
    struct conn *c;
    int flags;
    int fd;

    fd = accept(http->listen_fd, NULL, NULL);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
            errno == ENOMEM) {
            ER_LOG_WARN("http", "accept failed: %s",
                        er_strerror(errno, errbuf, sizeof(errbuf)));
            /* Pause instead of spinning on a pending connection. */
            http->accept_resume_ms = now_ms + ACCEPT_PAUSE_MS;
        }
        return false; /* EAGAIN, ECONNABORTED, EINTR: nothing to serve */
    }
    set_cloexec(fd);
    /* Linux does not pass O_NONBLOCK on from the listening socket, and a
     * blocking socket could stall the only thread. */
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        close(fd);
        return true;
    }
    c = take_slot(http);
    c->fd = fd;
    c->phase = CONN_READ;
    c->seq = http->accept_seq++;
    c->deadline_ms = now_ms + ER_HTTP_HEAD_DEADLINE_MS;
    c->req_len = 0;
    c->head_len = 0;
    c->body = NULL;
    c->body_len = 0;
    c->sent_len = 0;
    c->drained_len = 0;
    er_buf_init(&c->metrics, METRICS_MAX);
    conn_read(c, now_ms);
    return true;
}

/* Milliseconds until the next deadline, or -1 when nothing is due. */
static int poll_timeout_ms(const struct er_http *http, int64_t now_ms)
{
    int64_t next_ms = INT64_MAX;
    size_t i;

    if (now_ms < http->accept_resume_ms)
        next_ms = http->accept_resume_ms;
    for (i = 0; i < ER_HTTP_CONN_MAX; i++) {
        const struct conn *c = &http->conns[i];

        if (c->fd >= 0 && c->deadline_ms < next_ms)
            next_ms = c->deadline_ms;
    }
    if (next_ms == INT64_MAX)
        return -1;
    if (next_ms <= now_ms)
        return 0;
    /* Deadlines lie at most ER_HTTP_WRITE_DEADLINE_MS ahead. */
    return (int)(next_ms - now_ms);
}

static void *loop(void *arg)
{
    struct er_http *http = arg;
    struct pollfd pfd[2 + ER_HTTP_CONN_MAX];
    char errbuf[128];
    size_t i;

    for (;;) {
        int64_t now_ms = er_time_mono_ms();
        int ready_cnt;

        pfd[0].fd = http->wake_fd[0];
        pfd[0].events = POLLIN;
        pfd[1].fd = now_ms < http->accept_resume_ms ? -1 : http->listen_fd;
        pfd[1].events = POLLIN;
        for (i = 0; i < ER_HTTP_CONN_MAX; i++) {
            const struct conn *c = &http->conns[i];

            /* poll skips the negative fds of free slots. */
            pfd[2 + i].fd = c->fd;
            pfd[2 + i].events = c->phase == CONN_WRITE ? POLLOUT : POLLIN;
        }
        for (i = 0; i < 2 + ER_HTTP_CONN_MAX; i++)
            pfd[i].revents = 0;
        ready_cnt =
            poll(pfd, 2 + ER_HTTP_CONN_MAX, poll_timeout_ms(http, now_ms));
        if (ready_cnt < 0) {
            if (errno == EINTR)
                continue;
            ER_LOG_ERR("http", "poll failed, endpoint stopped: %s",
                       er_strerror(errno, errbuf, sizeof(errbuf)));
            break;
        }
        if (pfd[0].revents != 0)
            break;

        now_ms = er_time_mono_ms();
        for (i = 0; i < ER_HTTP_CONN_MAX; i++) {
            if (pfd[2 + i].revents != 0 && http->conns[i].fd >= 0)
                conn_ready(&http->conns[i], now_ms);
        }
        for (i = 0; i < ER_HTTP_CONN_MAX; i++) {
            struct conn *c = &http->conns[i];

            if (c->fd >= 0 && now_ms >= c->deadline_ms)
                conn_expire(c, now_ms);
        }
        /* A bounded batch of accepts a round: a burst does not overflow
         * the backlog, and open connections keep their turn however fast
         * new ones arrive. */
        if (pfd[1].revents != 0) {
            i = 0;
            while (i < ACCEPT_BATCH && accept_one(http, now_ms))
                i++;
        }
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
            bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
            listen(fd, LISTEN_BACKLOG) == 0)
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
    size_t i;
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
    http->conns = er_calloc(ER_HTTP_CONN_MAX, sizeof(*http->conns));
    if (http->conns == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        goto fail;
    }
    for (i = 0; i < ER_HTTP_CONN_MAX; i++) {
        http->conns[i].fd = -1;
        er_buf_init(&http->conns[i].metrics, METRICS_MAX);
    }
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

/* Returns promptly: the thread never waits on a client, and the
 * connections still open are closed here once it has stopped. */
void er_http_destroy(struct er_http *http)
{
    size_t i;

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
    for (i = 0; http->conns != NULL && i < ER_HTTP_CONN_MAX; i++) {
        if (http->conns[i].fd >= 0)
            conn_close(&http->conns[i]);
    }
    er_free(http->conns);
    if (http->listen_fd >= 0)
        close(http->listen_fd);
    if (http->wake_fd[0] >= 0)
        close(http->wake_fd[0]);
    if (http->wake_fd[1] >= 0)
        close(http->wake_fd[1]);
    er_free(http);
}
