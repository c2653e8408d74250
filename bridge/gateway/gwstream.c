/* gwstream: the stream_v1 transport. Frames (4-byte big-endian length, then
 * one JSON object) go to the host on non-blocking stdout from a bounded
 * queue, and come from it on stdin. A frame's bytes are spooled to an
 * anonymous memory file (memfd; else an unlinked file in $TMPDIR, else
 * /tmp) while pass one reads them, so neither a request nor a response
 * body is ever in the gateway's resident set. Loop thread only; owns
 * stdin, stdout and the spool descriptors. */
#define _GNU_SOURCE /* memfd_create */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bridge/gateway/gateway_int.h"

#define INPUT_BUDGET ((size_t)256 * 1024) /* stdin bytes per loop turn */

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return -1;
    return 0;
}

/* A spool: its pages are the kernel's (shmem, the page cache), never
 * mapped into our resident set. A memory file costs no directory entry
 * and no journal (a request's spool and its response's are made and
 * dropped for every call); a kernel or sandbox without memfd gets an
 * unlinked temporary file. Returns the descriptor or -errno. */
static int spool_open(void)
{
    const char *dir = getenv("TMPDIR");
    char path[ER_GATEWAY_PATH_MAX];
    int fd = memfd_create("envrun-gateway-spool", MFD_CLOEXEC);

    if (fd >= 0)
        return fd;
    if (dir == NULL || dir[0] == '\0')
        dir = "/tmp";
    snprintf(path, sizeof(path), "%s/envrun-gateway.XXXXXX", dir);
    fd = mkstemp(path);
    if (fd < 0)
        return -errno;
    unlink(path);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

void er_gwstream_init(struct er_gateway *gw)
{
    struct er_gwstream *st = &gw->stream;

    st->spool_fd = -1;
    if (set_nonblock(STDIN_FILENO) != 0 || set_nonblock(STDOUT_FILENO) != 0)
        er_gateway_log("could not make stdin/stdout non-blocking");
}

static void put_be32(uint8_t out[4], uint64_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

/* Append an item to the output queue; -1 when it is full (cannot happen:
 * each connection has at most a request and an abandon in it). */
static struct er_gwstream_item *push_item(struct er_gateway *gw)
{
    struct er_gwstream *st = &gw->stream;
    struct er_gwstream_item *item;

    if (st->cnt == ER_GWSTREAM_QUEUE_MAX || gw->is_host_gone)
        return NULL;
    item = &st->items[(st->head + st->cnt) % ER_GWSTREAM_QUEUE_MAX];
    st->cnt++;
    memset(item, 0, offsetof(struct er_gwstream_item, mem));
    return item;
}

int er_gwstream_send_mem(struct er_gateway *gw, const char *json, size_t len)
{
    struct er_gwstream_item *item;

    if (len == 0 || len > sizeof(item->mem))
        return -1;
    item = push_item(gw);
    if (item == NULL)
        return -1;
    item->fd = -1;
    item->len = len;
    put_be32(item->hdr, len);
    memcpy(item->mem, json, len);
    er_gwstream_on_output(gw);
    return 0;
}

int er_gwstream_create(struct er_gateway *gw, struct er_gwconn *conn)
{
    (void)gw;
    conn->file_fd = spool_open();
    return conn->file_fd < 0 ? conn->file_fd : 0;
}

int er_gwstream_dispatch(struct er_gateway *gw, struct er_gwconn *conn)
{
    struct er_gwstream_item *item;
    uint64_t len = conn->sink.total;

    if (len > gw->envelope_max)
        return -EMSGSIZE;
    item = push_item(gw);
    if (item == NULL)
        return -EPIPE;
    item->fd = conn->file_fd;
    item->len = len;
    put_be32(item->hdr, len);
    conn->file_fd = -1;
    er_gwstream_on_output(gw);
    return 0;
}

void er_gwstream_abandon(struct er_gateway *gw, struct er_gwconn *conn)
{
    char json[96];
    int n = snprintf(json, sizeof(json), "{\"type\":\"abandon\",\"id\":\"%s\"}",
                     conn->id);

    if (er_gwstream_send_mem(gw, json, (size_t)n) != 0)
        er_gateway_log("%s: could not queue the abandon frame", conn->id);
}

bool er_gwstream_has_output(const struct er_gateway *gw)
{
    const struct er_gwstream *st = &gw->stream;

    return !gw->is_host_gone && (st->obuf_off < st->obuf_len || st->cnt > 0);
}

static void pop_item(struct er_gwstream *st)
{
    struct er_gwstream_item *item = &st->items[st->head];

    if (item->fd >= 0)
        close(item->fd);
    item->fd = -1;
    st->head = (st->head + 1) % ER_GWSTREAM_QUEUE_MAX;
    st->cnt--;
}

/* Move the next piece of the head item into obuf. Returns -1 when a spool
 * cannot be read back (the frame could not be finished). */
static int fill_obuf(struct er_gwstream *st)
{
    struct er_gwstream_item *item = &st->items[st->head];
    size_t n;

    st->obuf_off = 0;
    st->obuf_len = 0;
    if (item->hdr_sent == 0) {
        memcpy(st->obuf, item->hdr, ER_GW_FRAME_HDR_LEN);
        st->obuf_len = ER_GW_FRAME_HDR_LEN;
        item->hdr_sent = 1;
    }
    n = sizeof(st->obuf) - st->obuf_len;
    if (n > item->len - item->off)
        n = (size_t)(item->len - item->off);
    if (item->fd < 0) {
        memcpy(st->obuf + st->obuf_len, item->mem + item->off, n);
    } else if (n > 0) {
        ssize_t r =
            pread(item->fd, st->obuf + st->obuf_len, n, (off_t)item->off);

        if (r <= 0)
            return -1;
        n = (size_t)r;
    }
    st->obuf_len += n;
    item->off += n;
    if (item->off == item->len)
        pop_item(st);
    return 0;
}

void er_gwstream_on_output(struct er_gateway *gw)
{
    struct er_gwstream *st = &gw->stream;

    while (!gw->is_host_gone) {
        ssize_t n;

        if (st->obuf_off == st->obuf_len) {
            if (st->cnt == 0)
                return;
            if (fill_obuf(st) != 0) {
                er_gateway_log("stream protocol error: spool read failed");
                er_gwstream_host_gone(gw, 1, ER_GW_MSG_HOST_GONE);
                return;
            }
            continue;
        }
        n = write(STDOUT_FILENO, st->obuf + st->obuf_off,
                  st->obuf_len - st->obuf_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            er_gateway_log("stdout closed: the host is gone");
            er_gwstream_host_gone(gw, 0, ER_GW_MSG_HOST_GONE);
            return;
        }
        st->obuf_off += (size_t)n;
    }
}

/* ================================================================
 * Host -> gateway
 * ================================================================ */

static struct er_gwconn *find_waiting(struct er_gateway *gw, const char *id)
{
    size_t i;

    for (i = 0; i < ER_GW_CONN_MAX; i++) {
        struct er_gwconn *conn = &gw->conns[i];

        if (conn->state == ER_GWCONN_WAIT && strcmp(conn->id, id) == 0)
            return conn;
    }
    return NULL;
}

static void frame_start(struct er_gateway *gw)
{
    struct er_gwstream *st = &gw->stream;

    st->frame_len = ((uint64_t)st->ihdr[0] << 24) |
                    ((uint64_t)st->ihdr[1] << 16) |
                    ((uint64_t)st->ihdr[2] << 8) | st->ihdr[3];
    st->frame_got = 0;
    st->is_frame_bad = false;
    er_gwjson_init(&st->js, 0);
    er_gwenvelope_resp_init(&st->resp, st->hdr_store,
                            sizeof(st->hdr_store) - ER_GW_STATUS_ROOM - 96);
}

static void frame_done(struct er_gateway *gw)
{
    struct er_gwstream *st = &gw->stream;
    struct er_gwconn *conn;
    const char *json_err = NULL;
    int fd = st->spool_fd;

    st->spool_fd = -1;
    if (!st->is_frame_bad &&
        er_gwjson_finish(&st->js, er_gwenvelope_resp_event, &st->resp) != 0)
        st->is_frame_bad = true;
    if (st->is_frame_bad)
        json_err = st->js.err;
    else if (strcmp(st->resp.type, "response") != 0) {
        er_gateway_log("ignoring a host frame of another type");
        close(fd);
        return;
    }
    conn = find_waiting(gw, st->resp.id);
    if (conn == NULL) {
        er_gateway_log("dropping a host frame for no waiting request");
        close(fd);
        return;
    }
    /* The reply is built in the connection's scratch: move the headers. */
    memcpy(conn->scratch + ER_GW_STATUS_ROOM, st->hdr_store, st->resp.hdr_len);
    conn->resp = st->resp;
    conn->resp.hdr = conn->scratch + ER_GW_STATUS_ROOM;
    er_gwconn_respond(gw, conn, &conn->resp, fd, st->frame_len, json_err);
}

/* Frame payload bytes: spool them and run pass one over them. */
static int frame_bytes(struct er_gateway *gw, const char *p, size_t n)
{
    struct er_gwstream *st = &gw->stream;
    size_t off = 0;

    while (off < n) {
        ssize_t w = write(st->spool_fd, p + off, n - off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    if (!st->is_frame_bad &&
        er_gwjson_feed(&st->js, p, n, er_gwenvelope_resp_event, &st->resp,
                       NULL) < 0)
        st->is_frame_bad = true;
    st->frame_got += n;
    return 0;
}

/* Consume stdin bytes. Returns 0, or -1 after a protocol error. */
static int on_bytes(struct er_gateway *gw, const char *p, size_t n)
{
    struct er_gwstream *st = &gw->stream;

    while (n > 0) {
        size_t take;

        if (st->ihdr_len < ER_GW_FRAME_HDR_LEN) {
            st->ihdr[st->ihdr_len++] = (uint8_t)*p++;
            n--;
            if (st->ihdr_len < ER_GW_FRAME_HDR_LEN)
                continue;
            frame_start(gw);
            if (st->frame_len == 0 || st->frame_len > gw->envelope_max) {
                er_gateway_log("stream protocol error: frame length %llu",
                               (unsigned long long)st->frame_len);
                return -1;
            }
            st->spool_fd = spool_open();
            if (st->spool_fd < 0) {
                er_gateway_log("stream error: cannot spool a host frame");
                return -1;
            }
            continue;
        }
        take = n;
        if (take > st->frame_len - st->frame_got)
            take = (size_t)(st->frame_len - st->frame_got);
        if (frame_bytes(gw, p, take) != 0) {
            er_gateway_log("stream error: cannot spool a host frame");
            return -1;
        }
        p += take;
        n -= take;
        if (st->frame_got == st->frame_len) {
            st->ihdr_len = 0;
            frame_done(gw);
        }
    }
    return 0;
}

void er_gwstream_on_input(struct er_gateway *gw)
{
    struct er_gwstream *st = &gw->stream;
    size_t budget = INPUT_BUDGET;

    while (budget > 0 && !gw->is_host_gone) {
        ssize_t n = read(STDIN_FILENO, st->ibuf, sizeof(st->ibuf));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            er_gateway_log("stdin closed: the host is gone");
            er_gwstream_host_gone(gw, 0, ER_GW_MSG_HOST_GONE);
            return;
        }
        if (on_bytes(gw, st->ibuf, (size_t)n) != 0) {
            er_gwstream_host_gone(gw, 1, ER_GW_MSG_HOST_GONE);
            return;
        }
        budget -= (size_t)n < budget ? (size_t)n : budget;
    }
}

/* The host is gone: stop listening (so a restarted gateway can bind the
 * port), answer everyone still waiting per B5 step 9, and let the loop
 * exit once the replies are out. */
void er_gwstream_host_gone(struct er_gateway *gw, int exit_code,
                           const char *msg)
{
    struct er_gwstream *st = &gw->stream;
    size_t i;

    if (gw->is_host_gone)
        return;
    gw->is_host_gone = true;
    gw->exit_code = exit_code;
    gw->drain_until_ms = er_gateway_mono_ms() + ER_GW_HOST_GONE_DRAIN_MS;
    if (gw->listen_fd >= 0)
        close(gw->listen_fd);
    gw->listen_fd = -1;
    while (st->cnt > 0)
        pop_item(st);
    st->obuf_off = st->obuf_len = 0;
    if (st->spool_fd >= 0)
        close(st->spool_fd);
    st->spool_fd = -1;
    for (i = 0; i < ER_GW_CONN_MAX; i++) {
        struct er_gwconn *conn = &gw->conns[i];

        switch (conn->state) {
        case ER_GWCONN_HEAD:
        case ER_GWCONN_BODY:
        case ER_GWCONN_WAIT:
            er_gwconn_fail(gw, conn, false, msg);
            break;
        case ER_GWCONN_FREE:
        case ER_GWCONN_PARSE:
        case ER_GWCONN_SEND:
        case ER_GWCONN_LINGER:
            break;
        }
    }
}
