/* gwconn: one client connection through B5's steps, as a state machine the
 * loop drives: read the head, check token, queue depth and content type,
 * stream the body into the envelope, dispatch, wait (timers, never
 * blocking), then stream the reply. Every buffer is the connection's own
 * fixed scratch/io pair; a body is never held whole. Loop thread only. */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bridge/gateway/gateway_int.h"

#define HEAD_TAIL_ROOM 96 /* content-length + connection + blank line */

static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";
static const char close_lines[] = "connection: close\r\n\r\n";

static bool is_stream(const struct er_gateway *gw)
{
    return gw->cfg->mode == ER_GATEWAY_STREAM_V1;
}

/* ================================================================
 * Lifecycle
 * ================================================================ */

void er_gwconn_start(struct er_gateway *gw, struct er_gwconn *conn, int fd)
{
    int64_t now = er_gateway_mono_ms();

    (void)gw;
    /* Only the fields: the buffers after them stay untouched (and so not
     * resident) until used. */
    memset(conn, 0, offsetof(struct er_gwconn, scratch));
    conn->fd = fd;
    conn->file_fd = -1;
    conn->state = ER_GWCONN_HEAD;
    conn->started_ms = now;
    conn->deadline_ms = now + ER_GW_HEAD_TIMEOUT_MS;
    conn->has_unread = true;
    snprintf(conn->id, sizeof(conn->id), "-");
}

/* Drop an envelope being written (never published). */
static void drop_request_file(struct er_gateway *gw, struct er_gwconn *conn)
{
    if (conn->state != ER_GWCONN_BODY || conn->file_fd < 0)
        return;
    if (is_stream(gw)) {
        close(conn->file_fd);
        conn->file_fd = -1;
    } else {
        er_gwqueue_discard(gw, conn);
    }
}

void er_gwconn_close(struct er_gateway *gw, struct er_gwconn *conn)
{
    drop_request_file(gw, conn);
    if (conn->file_fd >= 0)
        close(conn->file_fd);
    if (conn->fd >= 0)
        close(conn->fd);
    if (conn->status != 0)
        er_gateway_log("%s %s -> %d (%lld ms)",
                       conn->method[0] ? conn->method : "-", conn->id,
                       conn->status,
                       (long long)(er_gateway_mono_ms() - conn->started_ms));
    ER_GW_ASSERT(gw->ledger_used >= conn->reserved);
    gw->ledger_used -= conn->reserved;
    conn->reserved = 0;
    conn->fd = -1;
    conn->file_fd = -1;
    conn->state = ER_GWCONN_FREE;
}

size_t er_gwconn_waiting(const struct er_gateway *gw)
{
    size_t i, cnt = 0;

    for (i = 0; i < ER_GW_CONN_MAX; i++) {
        enum er_gwconn_state st = gw->conns[i].state;

        if (st == ER_GWCONN_WAIT || st == ER_GWCONN_PARSE)
            cnt++;
    }
    return cnt;
}

short er_gwconn_events(const struct er_gwconn *conn)
{
    switch (conn->state) {
    case ER_GWCONN_HEAD:
    case ER_GWCONN_BODY:
    case ER_GWCONN_LINGER:
        return POLLIN;
    case ER_GWCONN_SEND:
        return POLLOUT;
    case ER_GWCONN_FREE:
    case ER_GWCONN_WAIT:
    case ER_GWCONN_PARSE:
        break;
    }
    return 0;
}

/* ================================================================
 * Replies
 * ================================================================ */

static void send_more(struct er_gateway *gw, struct er_gwconn *conn);

/* Start sending what is in scratch[sc_off, sc_end) (+ the body, if any). */
static void start_send(struct er_gateway *gw, struct er_gwconn *conn,
                       int status)
{
    conn->status = status;
    conn->is_replied = true;
    conn->state = ER_GWCONN_SEND;
    conn->deadline_ms = er_gateway_mono_ms() + ER_GW_SEND_IDLE_MS;
    conn->io_off = conn->io_len = 0;
    conn->in_off = conn->in_len = 0;
    if (conn->fd < 0) {
        er_gwconn_close(gw, conn);
        return;
    }
    send_more(gw, conn);
}

/* A JSON error reply: {"error":msg} or B5 step 9's indeterminate body. */
static void reply_json(struct er_gateway *gw, struct er_gwconn *conn,
                       int status, const char *msg, bool is_indeterminate)
{
    char body[512];
    char quoted[400];
    int body_len, n;

    drop_request_file(gw, conn);
    if (conn->file_fd >= 0) {
        close(conn->file_fd);
        conn->file_fd = -1;
    }
    er_gwjson_quote(quoted, sizeof(quoted), msg, strlen(msg), false);
    body_len = snprintf(body, sizeof(body),
                        is_indeterminate ? "{\"error\":%s,\"outcome\":"
                                           "\"indeterminate\",\"retryable\":"
                                           "false}"
                                         : "{\"error\":%s}",
                        quoted);
    n = snprintf(conn->scratch, sizeof(conn->scratch),
                 "HTTP/1.1 %d %s\r\n"
                 "content-type: application/json\r\n"
                 "%s"
                 "content-length: %d\r\n"
                 "connection: close\r\n\r\n"
                 "%s",
                 status, er_gwhttp_reason(status),
                 is_indeterminate ? "x-paperclip-bridge-outcome: "
                                    "indeterminate\r\n"
                                  : "",
                 body_len, conn->is_head_method ? "" : body);
    conn->sc_off = 0;
    conn->sc_end = (size_t)n;
    conn->send_left = 0;
    start_send(gw, conn, status);
}

void er_gwconn_fail(struct er_gateway *gw, struct er_gwconn *conn,
                    bool is_ledger, const char *msg)
{
    if (conn->is_replied) {
        /* The head is out already: all we can do is cut the body short. */
        er_gwconn_close(gw, conn);
        return;
    }
    if (conn->is_dispatched && !er_gwhttp_is_safe(conn->method))
        reply_json(gw, conn, 409, msg, true);
    else
        reply_json(gw, conn, is_ledger ? 503 : 502, msg, false);
}

static void fail_errno(struct er_gateway *gw, struct er_gwconn *conn,
                       const char *what, int err)
{
    char buf[96];
    char msg[192];

    if (strerror_r(err, buf, sizeof(buf)) != 0)
        snprintf(buf, sizeof(buf), "errno %d", err);
    snprintf(msg, sizeof(msg), "%s: %s", what, buf);
    er_gwconn_fail(gw, conn, false, msg);
}

/* The reply is out (or the client gone): close, or drain what the client
 * may still send so our close does not reset the reply away. */
static void finish(struct er_gateway *gw, struct er_gwconn *conn)
{
    if (!conn->has_unread || conn->fd < 0) {
        er_gwconn_close(gw, conn);
        return;
    }
    shutdown(conn->fd, SHUT_WR);
    conn->state = ER_GWCONN_LINGER;
    conn->deadline_ms = er_gateway_mono_ms() + ER_GW_LINGER_MS;
}

/* Refill io with decoded body bytes from the response file. Returns 0, or
 * -1 when the file cannot give what pass one promised. */
static int refill_body(struct er_gateway *gw, struct er_gwconn *conn)
{
    struct er_gwenvelope_out *bo = &conn->out;
    size_t want, used = 0;
    int rc;

    (void)gw;
    if (conn->in_off == conn->in_len) {
        ssize_t n = pread(conn->file_fd, conn->scratch, sizeof(conn->scratch),
                          (off_t)conn->file_off);

        if (n <= 0)
            return -1;
        conn->file_off += (uint64_t)n;
        conn->in_off = 0;
        conn->in_len = (size_t)n;
    }
    /* A byte of envelope decodes to at most three (U+FFFD for a bad one). */
    want = (sizeof(conn->io) - 16) / 3;
    if (want > conn->in_len - conn->in_off)
        want = conn->in_len - conn->in_off;
    bo->out_len = 0;
    rc = er_gwenvelope_out_feed(bo, conn->scratch + conn->in_off, want, &used);
    if (rc < 0)
        return -1;
    conn->in_off += used;
    conn->io_off = 0;
    conn->io_len = bo->out_len;
    if (conn->io_len > conn->send_left)
        return -1;
    if (rc == 1 && conn->io_len != conn->send_left)
        return -1;
    conn->send_left -= conn->io_len;
    return 0;
}

static void send_more(struct er_gateway *gw, struct er_gwconn *conn)
{
    for (;;) {
        const char *p;
        size_t n;
        ssize_t sent;

        if (conn->sc_off < conn->sc_end) {
            p = conn->scratch + conn->sc_off;
            n = conn->sc_end - conn->sc_off;
        } else if (conn->io_off < conn->io_len) {
            p = conn->io + conn->io_off;
            n = conn->io_len - conn->io_off;
        } else if (conn->send_left > 0) {
            if (refill_body(gw, conn) != 0) {
                er_gateway_log("%s: response body ended early", conn->id);
                er_gwconn_close(gw, conn);
                return;
            }
            continue;
        } else {
            finish(gw, conn);
            return;
        }
        sent = send(conn->fd, p, n, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (sent <= 0) {
            er_gwconn_close(gw, conn);
            return;
        }
        if (conn->sc_off < conn->sc_end)
            conn->sc_off += (size_t)sent;
        else
            conn->io_off += (size_t)sent;
        conn->deadline_ms = er_gateway_mono_ms() + ER_GW_SEND_IDLE_MS;
    }
}

/* B5 step 8: the host's response, after pass one. */
void er_gwconn_respond(struct er_gateway *gw, struct er_gwconn *conn,
                       const struct er_gwenvelope_resp *resp, int file_fd,
                       uint64_t size, const char *json_err)
{
    char msg[160];
    char line[ER_GW_STATUS_ROOM];
    uint64_t body_len = 0;
    int status = 0;
    int n;
    char *at;

    conn->file_fd = file_fd;
    conn->state = ER_GWCONN_SEND; /* no longer waiting, whatever follows */
    if (json_err != NULL) {
        er_gwconn_fail(gw, conn, false, json_err);
        return;
    }
    if (!er_gateway_reserve(gw, conn, 6 * size + 1)) {
        er_gwconn_fail(gw, conn, true, ER_GW_MSG_LEDGER);
        return;
    }
    if (er_gwenvelope_resp_check(resp, gw->cfg->max_body_bytes, &status,
                                 &body_len, msg, sizeof(msg)) != 0) {
        er_gwconn_fail(gw, conn, false, msg);
        return;
    }
    /* The header lines sit at scratch + ER_GW_STATUS_ROOM; the status line
     * goes right before them. */
    ER_GW_ASSERT(resp->hdr == conn->scratch + ER_GW_STATUS_ROOM);
    n = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n", status,
                 er_gwhttp_reason(status));
    ER_GW_ASSERT(n > 0 && n < ER_GW_STATUS_ROOM);
    conn->sc_off = ER_GW_STATUS_ROOM - (size_t)n;
    memcpy(conn->scratch + conn->sc_off, line, (size_t)n);
    at = conn->scratch + ER_GW_STATUS_ROOM + resp->hdr_len;
    if (status < 200 || status == 204 || status == 304)
        body_len = 0; /* no body may follow these */
    else
        at += snprintf(at, 40, "content-length: %llu\r\n",
                       (unsigned long long)body_len);
    memcpy(at, close_lines, sizeof(close_lines) - 1);
    at += sizeof(close_lines) - 1;
    conn->sc_end = (size_t)(at - conn->scratch);
    conn->send_left = conn->is_head_method ? 0 : body_len;
    if (conn->send_left > 0) {
        conn->out.out = conn->io;
        conn->out.out_cap = sizeof(conn->io);
        er_gwenvelope_out_init(&conn->out, (uint64_t)resp->body_pos,
                               resp->enc == ER_GWENVELOPE_BASE64);
        conn->file_off = (uint64_t)resp->body_pos;
    }
    start_send(gw, conn, status);
}

/* ================================================================
 * Request head (B5 steps 1-3)
 * ================================================================ */

static bool token_ok(const struct er_gateway_config *cfg,
                     const struct er_gwhttp_hdr *auth)
{
    volatile uint8_t diff = 0;
    const char *v;
    size_t i, n;

    if (auth == NULL || auth->value_len < 7 ||
        memcmp(auth->value, "Bearer ", 7) != 0)
        return false;
    v = auth->value + 7;
    n = auth->value_len - 7;
    if (n != cfg->token_len)
        return false;
    for (i = 0; i < n; i++)
        diff |= (uint8_t)(v[i] ^ cfg->token[i]);
    return diff == 0;
}

static bool contains_nocase(const char *s, size_t len, const char *lit)
{
    size_t k = strlen(lit), i;

    for (i = 0; i + k <= len; i++) {
        if (er_gwhttp_same_name(s + i, k, lit, k))
            return true;
    }
    return false;
}

/* multipart/form-data followed by ";" or the end (case-insensitive). */
static bool is_multipart(const struct er_gwhttp_hdr *ct)
{
    static const char mp[] = "multipart/form-data";
    size_t k = sizeof(mp) - 1;

    return ct != NULL && ct->value_len >= k &&
           er_gwhttp_same_name(ct->value, k, mp, k) &&
           (ct->value_len == k || ct->value[k] == ';');
}

/* Content-Length / Transfer-Encoding / Expect. Returns 0 or an HTTP
 * status with its message. */
static int framing(struct er_gwconn *conn, const struct er_gwhttp_req *req,
                   const char **msg)
{
    const struct er_gwhttp_hdr *te = er_gwhttp_find(req, "transfer-encoding");
    const struct er_gwhttp_hdr *cl = er_gwhttp_find(req, "content-length");
    const struct er_gwhttp_hdr *expect = er_gwhttp_find(req, "expect");
    size_t i;

    *msg = "Malformed HTTP request.";
    if (te != NULL) {
        if (cl != NULL)
            return 400;
        if (er_gwhttp_count(req, "transfer-encoding") != 1 ||
            !er_gwhttp_eq_nocase(te->value, te->value_len, "chunked")) {
            *msg = "Unsupported transfer-encoding: only chunked is accepted.";
            return 501;
        }
        conn->is_chunked = true;
    } else if (cl != NULL) {
        if (er_gwhttp_count(req, "content-length") != 1 || cl->value_len == 0 ||
            cl->value_len > 18)
            return 400;
        for (i = 0; i < cl->value_len; i++) {
            if (cl->value[i] < '0' || cl->value[i] > '9')
                return 400;
            conn->body_left =
                conn->body_left * 10 + (uint64_t)(cl->value[i] - '0');
        }
    }
    if (expect != NULL && !er_gwhttp_eq_nocase(expect->value, expect->value_len,
                                               "100-continue")) {
        *msg = "Expectation failed.";
        return 417;
    }
    return 0;
}

static const char *parse_error_msg(int status)
{
    switch (status) {
    case 414:
        return "Request URI too long.";
    case 431:
        return "Request header fields too large.";
    case 505:
        return "HTTP version not supported.";
    default:
        return "Malformed HTTP request.";
    }
}

static void body_bytes(struct er_gateway *gw, struct er_gwconn *conn,
                       const char *p, size_t n);
static void body_done(struct er_gateway *gw, struct er_gwconn *conn);

/* Feed request bytes after the head; may end the body (or the request). */
static void consume(struct er_gateway *gw, struct er_gwconn *conn,
                    const char *p, size_t n)
{
    while (conn->state == ER_GWCONN_BODY) {
        const char *data;
        size_t used, data_len;
        int rc;

        if (!conn->is_chunked) {
            size_t take = n < conn->body_left ? n : (size_t)conn->body_left;

            if (take > 0)
                body_bytes(gw, conn, p, take);
            if (conn->state != ER_GWCONN_BODY)
                return;
            conn->body_left -= take;
            if (conn->body_left == 0)
                body_done(gw, conn);
            return;
        }
        rc = er_gwhttp_chunked_feed(&conn->ck, p, n, &used, &data, &data_len);
        if (rc < 0) {
            reply_json(gw, conn, 400, "Malformed chunked request body.", false);
            return;
        }
        if (data_len > 0)
            body_bytes(gw, conn, data, data_len);
        if (conn->state != ER_GWCONN_BODY)
            return;
        if (rc == 1) {
            body_done(gw, conn);
            return;
        }
        p += used;
        n -= used;
        if (n == 0)
            return;
    }
}

/* Steps 1-6 up to the body: the head is complete and parsed in gw->req. */
static void on_head(struct er_gateway *gw, struct er_gwconn *conn)
{
    const struct er_gwhttp_req *req = &gw->req;
    const struct er_gwhttp_hdr *ct = er_gwhttp_find(req, "content-type");
    struct er_gwenvelope_req env;
    size_t path_len, query_len;
    const char *msg;
    bool is_upload;
    int rc;

    memcpy(conn->method, req->method, req->method_len);
    conn->method[req->method_len] = '\0';
    conn->is_head_method = strcmp(conn->method, "HEAD") == 0;
    rc = er_gwhttp_url(req->target, req->target_len, gw->url, sizeof(gw->url),
                       &path_len, &query_len);
    if (rc < 0) {
        reply_json(gw, conn, -rc, parse_error_msg(-rc), false);
        return;
    }
    rc = framing(conn, req, &msg);
    if (rc != 0) {
        reply_json(gw, conn, rc, msg, false);
        return;
    }
    /* Step 1. */
    if (!token_ok(gw->cfg, er_gwhttp_find(req, "authorization"))) {
        reply_json(gw, conn, 401, ER_GW_MSG_TOKEN, false);
        return;
    }
    /* Step 2. */
    if (is_stream(gw)
            ? er_gwconn_waiting(gw) >= (size_t)gw->cfg->max_queue_depth
            : er_gwqueue_depth_check(gw) != 0) {
        reply_json(gw, conn, 503, ER_GW_MSG_QUEUE_FULL, false);
        return;
    }
    /* Step 3. */
    is_upload = strcmp(conn->method, "POST") == 0 &&
                er_gwhttp_is_attachment_path(gw->url, path_len) &&
                is_multipart(ct);
    if (strcmp(conn->method, "GET") != 0 && !conn->is_head_method &&
        !is_upload &&
        (ct == NULL || !contains_nocase(ct->value, ct->value_len, "json"))) {
        reply_json(gw, conn, 415, ER_GW_MSG_JSON_ONLY, false);
        return;
    }
    /* Step 4, early: a declared length past the limit. */
    if (!conn->is_chunked && conn->body_left > gw->cfg->max_body_bytes) {
        er_gwconn_fail(gw, conn, false, ER_GW_MSG_BODY_LIMIT);
        return;
    }
    if (er_gateway_uuid(conn->id) != 0) {
        fail_errno(gw, conn, "Could not make a request id", errno);
        return;
    }
    rc = is_stream(gw) ? er_gwstream_create(gw, conn)
                       : er_gwqueue_create(gw, conn);
    if (rc != 0) {
        fail_errno(gw, conn, "Could not create the bridge request", -rc);
        return;
    }
    conn->state = ER_GWCONN_BODY;
    conn->deadline_ms = er_gateway_mono_ms() + ER_GW_BODY_IDLE_MS;
    er_gwsink_init(&conn->sink, conn->file_fd, conn->io, sizeof(conn->io));
    env.type = is_stream(gw) ? "request" : NULL;
    env.id = conn->id;
    env.method = conn->method;
    env.method_len = req->method_len;
    env.path = gw->url;
    env.path_len = path_len;
    env.query = gw->url + path_len;
    env.query_len = query_len;
    env.http = req;
    er_gwenvelope_write_head(&conn->sink, &env, &conn->enc, is_upload);
    if (er_gwhttp_find(req, "expect") != NULL &&
        send(conn->fd, continue_line, sizeof(continue_line) - 1, MSG_NOSIGNAL) <
            0) {
        /* The client is gone; reading the body will notice. */
    }
    if (!conn->is_chunked && conn->body_left == 0) {
        body_done(gw, conn);
        return;
    }
    consume(gw, conn, conn->scratch + req->head_len,
            conn->head_len - req->head_len);
}

static void read_head(struct er_gateway *gw, struct er_gwconn *conn)
{
    ssize_t n = recv(conn->fd, conn->scratch + conn->head_len,
                     ER_GW_HEAD_MAX - conn->head_len, 0);
    int rc;

    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        er_gwconn_close(gw, conn);
        return;
    }
    conn->head_len += (size_t)n;
    rc = er_gwhttp_parse_head(conn->scratch, conn->head_len, &gw->req);
    if (rc == ER_GWHTTP_INCOMPLETE)
        return;
    if (rc < 0) {
        reply_json(gw, conn, -rc, parse_error_msg(-rc), false);
        return;
    }
    on_head(gw, conn);
}

/* ================================================================
 * Request body (B5 steps 4-6)
 * ================================================================ */

static void body_bytes(struct er_gateway *gw, struct er_gwconn *conn,
                       const char *p, size_t n)
{
    conn->body_len += n;
    if (conn->body_len > gw->cfg->max_body_bytes) {
        er_gwconn_fail(gw, conn, false, ER_GW_MSG_BODY_LIMIT);
        return;
    }
    if (!er_gateway_reserve(gw, conn, n)) {
        er_gwconn_fail(gw, conn, true, ER_GW_MSG_LEDGER);
        return;
    }
    er_gwenvelope_write_body(&conn->sink, &conn->enc, p, n);
    if (conn->sink.err != 0)
        fail_errno(gw, conn, "Could not write the bridge request",
                   conn->sink.err);
}

static void body_done(struct er_gateway *gw, struct er_gwconn *conn)
{
    char created[32];
    int64_t now;
    int rc;

    conn->has_unread = false;
    if (!er_gateway_reserve(gw, conn,
                            4 * er_gw_envelope_limit(conn->body_len))) {
        er_gwconn_fail(gw, conn, true, ER_GW_MSG_LEDGER);
        return;
    }
    er_gateway_iso_now(created);
    er_gwenvelope_write_tail(&conn->sink, &conn->enc, created, !is_stream(gw));
    if (er_gwsink_flush(&conn->sink) != 0) {
        fail_errno(gw, conn, "Could not write the bridge request",
                   conn->sink.err);
        return;
    }
    /* Step 6: dispatched from here on, whether or not the publish works. */
    conn->is_dispatched = true;
    rc = is_stream(gw) ? er_gwstream_dispatch(gw, conn)
                       : er_gwqueue_dispatch(gw, conn);
    if (rc != 0) {
        fail_errno(gw, conn, "Could not publish the bridge request", -rc);
        return;
    }
    now = er_gateway_mono_ms();
    conn->state = ER_GWCONN_WAIT;
    conn->deadline_ms = now + gw->cfg->response_timeout_ms;
    conn->poll_at_ms = now + gw->cfg->poll_interval_ms;
}

static void read_body(struct er_gateway *gw, struct er_gwconn *conn)
{
    ssize_t n = recv(conn->fd, conn->scratch, sizeof(conn->scratch), 0);

    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        /* The client left mid-body: nothing was published, nobody waits. */
        er_gwconn_close(gw, conn);
        return;
    }
    conn->deadline_ms = er_gateway_mono_ms() + ER_GW_BODY_IDLE_MS;
    consume(gw, conn, conn->scratch, (size_t)n);
}

static void drain_input(struct er_gateway *gw, struct er_gwconn *conn)
{
    ssize_t n = recv(conn->fd, conn->scratch, sizeof(conn->scratch), 0);

    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0)
        er_gwconn_close(gw, conn);
}

/* ================================================================
 * Loop entry points
 * ================================================================ */

void er_gwconn_on_io(struct er_gateway *gw, struct er_gwconn *conn,
                     short revents)
{
    (void)revents; /* errors and hang-ups show in the read or write */
    switch (conn->state) {
    case ER_GWCONN_HEAD:
        read_head(gw, conn);
        break;
    case ER_GWCONN_BODY:
        read_body(gw, conn);
        break;
    case ER_GWCONN_SEND:
        send_more(gw, conn);
        break;
    case ER_GWCONN_LINGER:
        drain_input(gw, conn);
        break;
    case ER_GWCONN_FREE:
    case ER_GWCONN_WAIT:
    case ER_GWCONN_PARSE:
        break;
    }
}

void er_gwconn_on_timer(struct er_gateway *gw, struct er_gwconn *conn,
                        int64_t now)
{
    switch (conn->state) {
    case ER_GWCONN_HEAD:
        if (now < conn->deadline_ms)
            return;
        if (conn->head_len == 0) {
            er_gwconn_close(gw, conn);
            return;
        }
        reply_json(gw, conn, 408, "Request header timeout.", false);
        return;
    case ER_GWCONN_BODY:
    case ER_GWCONN_SEND:
    case ER_GWCONN_LINGER:
        if (now >= conn->deadline_ms)
            er_gwconn_close(gw, conn);
        return;
    case ER_GWCONN_WAIT:
        if (now >= conn->deadline_ms) {
            /* Step 7: give up, and say so to the host. */
            if (is_stream(gw))
                er_gwstream_abandon(gw, conn);
            else
                er_gwqueue_abandon(gw, conn);
            er_gwconn_fail(gw, conn, false, ER_GW_MSG_TIMEOUT);
            return;
        }
        if (!is_stream(gw) && now >= conn->poll_at_ms) {
            conn->poll_at_ms = now + gw->cfg->poll_interval_ms;
            er_gwqueue_poll(gw, conn);
        }
        return;
    case ER_GWCONN_PARSE:
        er_gwqueue_parse_step(gw, conn);
        return;
    case ER_GWCONN_FREE:
        break;
    }
}
