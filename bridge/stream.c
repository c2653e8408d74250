/* stream: stream_v1, the host side. The gateway runs as one long-lived
 * exec of the lease (the holder thread); its stdin and stdout are pipes of
 * this process. Frames (4-byte big-endian length, one JSON object) come
 * from it on stdout: ready, request, abandon; responses go back on its
 * stdin. A reader thread takes frames off stdout; a few forwarder threads
 * (each with its own libcurl handle) answer requests as they come, so a
 * call costs no process spawn and no polling, and one slow request does
 * not hold up the others. Writes to stdin are serialized by a mutex. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bridge/bridge.h"

#define FAC             "bridge"
#define FRAME_HDR_LEN   4
#define QUEUE_MAX       256 /* requests waiting for a forwarder */
/* Bytes of request frames waiting, at most (one frame always fits): the
 * sandbox cannot make the worker hold more for it than this. */
#define QUEUE_BYTES_MAX ((size_t)64 * 1024 * 1024)
#define ABANDONED_MAX   64
#define READY_WAIT_MS   10000
#define EXIT_WAIT_MS    3000
#define HOLD_FOREVER_MS ((int64_t)30 * 24 * 3600 * 1000)

struct frame {
    struct frame *next;
    char *text;
    size_t len;
    char id[ER_BRIDGE_ENVELOPE_ID_MAX + 1]; /* er_bridge_frame's */
};

struct er_bridge_stream {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t wmu; /* writes to the gateway's stdin */
    er_bridge_hold_fn *hold;
    void *hold_arg;
    char *script;
    int in_w;  /* the gateway's stdin, our end */
    int in_r;  /* its end, closed once the exec ended */
    int out_r; /* the gateway's stdout, our end */
    int out_w; /* its end, closed once the exec ended */
    char token_line[ER_BRIDGE_TOKEN_LEN + 2];
    pthread_t holder;
    pthread_t reader;
    pthread_t fwd_tid[ER_BRIDGE_STREAM_FORWARDERS];
    struct er_bridge_fwd *fwd[ER_BRIDGE_STREAM_FORWARDERS];
    size_t fwd_cnt;
    bool has_holder, has_reader;
    atomic_bool cancel; /* ends the held exec */
    atomic_bool abort;  /* ends forwards in flight */
    /* Under mu. */
    bool is_ready;
    bool is_gone; /* the exec ended or its stdout closed */
    bool is_stopping;
    int port;
    long pid;
    struct frame *q_head, *q_tail;
    size_t q_len;
    size_t q_bytes;
    char abandoned[ABANDONED_MAX][ER_BRIDGE_ENVELOPE_ID_MAX + 1];
    size_t abandoned_next;
    struct er_bridge_stream_stats stats;
    char gone_why[256];
    /* Borrowed for the stream's life. */
    const struct er_secret *host_token;
    char run_id[128];
    size_t max_body;
    bool (*may_forward)(void *arg);
    void *may_forward_arg;
};

static void put_be32(unsigned char *out, uint32_t v)
{
    out[0] = (unsigned char)(v >> 24);
    out[1] = (unsigned char)(v >> 16);
    out[2] = (unsigned char)(v >> 8);
    out[3] = (unsigned char)v;
}

static int write_all(int fd, const void *p, size_t n)
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

static int read_all(int fd, void *p, size_t n)
{
    char *c = p;

    while (n > 0) {
        ssize_t r = read(fd, c, n);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

static void set_gone(struct er_bridge_stream *s, const char *why)
{
    pthread_mutex_lock(&s->mu);
    if (!s->is_gone && why != NULL)
        snprintf(s->gone_why, sizeof(s->gone_why), "%s", why);
    s->is_gone = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* One frame to the gateway: header and JSON in one locked write. */
static int send_frame(struct er_bridge_stream *s, const char *json, size_t len)
{
    unsigned char hdr[FRAME_HDR_LEN];
    int rc = 0;

    put_be32(hdr, (uint32_t)len);
    pthread_mutex_lock(&s->wmu);
    if (s->in_w < 0 || write_all(s->in_w, hdr, sizeof(hdr)) != 0 ||
        write_all(s->in_w, json, len) != 0)
        rc = -1;
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

/* ---- the held exec ---- */

static void *holder_main(void *arg)
{
    struct er_bridge_stream *s = arg;
    struct er_err err;
    int exit_code = -1;
    char why[256];

    er_err_clear(&err);
    if (s->hold(s->hold_arg, s->script, s->in_r, s->out_w, HOLD_FOREVER_MS,
                &s->cancel, &exit_code, &err) != 0)
        snprintf(why, sizeof(why), "%s", err.msg);
    else
        snprintf(why, sizeof(why), "the gateway exited with code %d",
                 exit_code);
    /* The exec is over: its ends go, so the reader sees end of file. */
    er_bridge_close_fd(&s->in_r);
    er_bridge_close_fd(&s->out_w);
    set_gone(s, why);
    return NULL;
}

/* ---- frames from the gateway ---- */

static bool is_abandoned_locked(struct er_bridge_stream *s, const char *id)
{
    size_t i;

    for (i = 0; i < ABANDONED_MAX; i++) {
        if (strcmp(s->abandoned[i], id) == 0)
            return true;
    }
    return false;
}

static void respond(struct er_bridge_stream *s, const char *id,
                    const struct er_bridge_res *res);

/* A string member without NUL bytes, else NULL. */
static const char *plain_str(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    const char *str = json_string_value(v);

    if (str == NULL || strlen(str) != json_string_length(v))
        return NULL;
    return str;
}

enum er_bridge_frame_type
er_bridge_stream_frame_parse(const char *text, size_t len,
                             struct er_bridge_frame *frame)
{
    enum er_bridge_frame_type type = ER_BRIDGE_FRAME_BAD;
    json_t *root = NULL;
    const char *type_str;
    const char *id;

    ER_ASSERT(frame != NULL);
    memset(frame, 0, sizeof(*frame));
    /* Not a JSON object: json_object_get gives NULL, so no type. A request
     * body may hold NUL bytes (\u0000 in its text), so they are allowed;
     * the envelope parser allows them too. */
    if (text != NULL)
        root = json_loadb(text, len, JSON_ALLOW_NUL, NULL);
    type_str = plain_str(root, "type");
    id = plain_str(root, "id");
    if (id != NULL) {
        size_t id_len = strlen(id);

        /* Cut at a character boundary, so the id stays UTF-8 and an
         * answer to it can be encoded. */
        if (id_len >= sizeof(frame->id)) {
            id_len = sizeof(frame->id) - 1;
            while (id_len > 0 && ((unsigned char)id[id_len] & 0xc0) == 0x80)
                id_len--;
        }
        memcpy(frame->id, id, id_len);
        frame->id[id_len] = '\0';
        frame->has_id = true;
    }
    if (type_str == NULL) {
        type = ER_BRIDGE_FRAME_BAD;
    } else if (strcmp(type_str, "ready") == 0) {
        json_t *port = json_object_get(root, "port");
        json_t *pid = json_object_get(root, "pid");

        type = ER_BRIDGE_FRAME_READY_BAD;
        if (json_is_integer(port) && json_integer_value(port) > 0 &&
            json_integer_value(port) <= 65535) {
            frame->port = (int)json_integer_value(port);
            frame->pid =
                json_is_integer(pid) ? (long)json_integer_value(pid) : 0;
            type = ER_BRIDGE_FRAME_READY;
        }
    } else if (strcmp(type_str, "abandon") == 0 && frame->has_id) {
        type = ER_BRIDGE_FRAME_ABANDON;
    } else if (strcmp(type_str, "request") == 0) {
        type = ER_BRIDGE_FRAME_REQUEST;
    }
    json_decref(root);
    return type;
}

/* Queue a request frame for the forwarders; whether it took text (it
 * does not when out of memory: the frame is dropped and times out). */
static bool enqueue_locked(struct er_bridge_stream *s, char *text, size_t len,
                           const char *id)
{
    struct frame *f = er_calloc(1, sizeof(*f));

    if (f == NULL)
        return false;
    f->text = text;
    f->len = len;
    snprintf(f->id, sizeof(f->id), "%s", id);
    if (s->q_tail != NULL)
        s->q_tail->next = f;
    else
        s->q_head = f;
    s->q_tail = f;
    s->q_len++;
    s->q_bytes += len;
    return true;
}

static void on_frame(struct er_bridge_stream *s, char *text, size_t len)
{
    struct er_bridge_frame frame;
    enum er_bridge_frame_type type;
    bool is_full = false;

    type = er_bridge_stream_frame_parse(text, len, &frame);
    pthread_mutex_lock(&s->mu);
    switch (type) {
    case ER_BRIDGE_FRAME_READY:
        s->port = frame.port;
        s->pid = frame.pid;
        s->is_ready = true;
        break;
    case ER_BRIDGE_FRAME_READY_BAD:
        break; /* ignored: start times out or the gateway says again */
    case ER_BRIDGE_FRAME_ABANDON:
        snprintf(s->abandoned[s->abandoned_next],
                 sizeof(s->abandoned[s->abandoned_next]), "%s", frame.id);
        s->abandoned_next = (s->abandoned_next + 1) % ABANDONED_MAX;
        break;
    case ER_BRIDGE_FRAME_REQUEST:
        if (s->q_len >= QUEUE_MAX ||
            (s->q_len > 0 && s->q_bytes + len > QUEUE_BYTES_MAX))
            is_full = frame.has_id;
        else if (enqueue_locked(s, text, len, frame.id))
            text = NULL;
        break;
    case ER_BRIDGE_FRAME_BAD:
        s->stats.bad_frames++;
        break;
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (is_full) {
        /* Never forwarded: retry-safe (B6's answer to a full ledger). */
        struct er_bridge_res res;

        memset(&res, 0, sizeof(res));
        er_bridge_res_error(&res, 503,
                            "Bridge host body capacity is busy. Retry later.",
                            false);
        respond(s, frame.id, &res);
        er_bridge_res_fini(&res);
    }
    er_free(text);
}

static void *reader_main(void *arg)
{
    struct er_bridge_stream *s = arg;
    size_t limit = er_bridge_envelope_limit(s->max_body);

    for (;;) {
        unsigned char hdr[FRAME_HDR_LEN];
        uint32_t len;
        char *text;

        if (read_all(s->out_r, hdr, sizeof(hdr)) != 0)
            break;
        len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
              (uint32_t)hdr[2] << 8 | hdr[3];
        if (len == 0 || len > limit) {
            set_gone(s, "stream protocol error: a frame over the limit");
            break;
        }
        text = er_malloc((size_t)len + 1);
        if (text == NULL || read_all(s->out_r, text, len) != 0) {
            er_free(text);
            break;
        }
        text[len] = '\0';
        on_frame(s, text, len);
    }
    set_gone(s, "the gateway's stdout closed");
    return NULL;
}

/* ---- forwarders ---- */

/* The response frame: er_bridge_response_json's object with "type". */
static void respond(struct er_bridge_stream *s, const char *id,
                    const struct er_bridge_res *res)
{
    static const char type[] = "{\"type\":\"response\",";
    struct er_buf json;
    struct er_buf frame;
    struct er_err err;

    er_buf_init(&json, er_bridge_envelope_limit(s->max_body));
    er_buf_init(&frame, er_bridge_envelope_limit(s->max_body) + 32);
    er_err_clear(&err);
    if (er_bridge_response_json(id, res, &json, &err) == 0 && json.len > 2 &&
        er_buf_append(&frame, type, sizeof(type) - 1) == 0 &&
        er_buf_append(&frame, json.data + 1, json.len - 2) == 0) {
        if (send_frame(s, (const char *)frame.data, frame.len) != 0)
            set_gone(s, "the gateway's stdin closed");
    } else {
        ER_LOG_WARN(FAC, "run %s: cannot encode a bridge response: %s",
                    s->run_id, err.msg[0] != '\0' ? err.msg : "out of memory");
    }
    er_buf_fini(&frame);
    er_buf_fini(&json);
}

static void handle(struct er_bridge_stream *s, struct er_bridge_fwd *fwd,
                   struct frame *f)
{
    struct er_bridge_envelope env;
    struct er_bridge_req req;
    struct er_bridge_res res;
    struct er_err err;
    const char *id = f->id;
    bool is_abandoned;

    memset(&env, 0, sizeof(env));
    memset(&res, 0, sizeof(res));
    er_err_clear(&err);
    if (id[0] == '\0')
        return; /* nobody to answer: the gateway times it out */
    pthread_mutex_lock(&s->mu);
    is_abandoned = is_abandoned_locked(s, id);
    pthread_mutex_unlock(&s->mu);
    if (is_abandoned)
        return; /* its client is gone and nothing was sent */
    if (er_bridge_envelope_parse(f->text, f->len, s->max_body, &env, &err) !=
        0) {
        er_bridge_res_error(&res, err.code == ER_ENOMEM ? 503 : 400,
                            err.code == ER_ENOMEM
                                ? "Bridge host body capacity is busy. Retry "
                                  "later."
                                : "Invalid bridge request payload.",
                            false);
    } else {
        er_bridge_envelope_req(&env, &req);
        er_bridge_handle(fwd, &req, s->host_token, s->run_id, &s->abort, &res);
    }
    er_bridge_fwd_count(ER_BRIDGE_COUNT_STREAM_V1, res.status);
    respond(s, id, &res);
    pthread_mutex_lock(&s->mu);
    s->stats.handled++;
    pthread_mutex_unlock(&s->mu);
    er_bridge_res_fini(&res);
    er_bridge_envelope_fini(&env);
}

struct fwd_arg {
    struct er_bridge_stream *s;
    size_t i;
};

static void *forwarder_main(void *arg)
{
    struct fwd_arg *fa = arg;
    struct er_bridge_stream *s = fa->s;
    struct er_bridge_fwd *fwd = s->fwd[fa->i];

    er_free(fa);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct frame *f;
        bool is_paused =
            s->may_forward != NULL && !s->may_forward(s->may_forward_arg);

        if (s->is_stopping && (s->q_head == NULL || atomic_load(&s->abort)))
            break;
        if (s->q_head == NULL || is_paused) {
            struct timespec ts;

            /* Paused (a handover): wake now and then to look again. */
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            (void)pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            continue;
        }
        f = s->q_head;
        s->q_head = f->next;
        if (s->q_head == NULL)
            s->q_tail = NULL;
        s->q_len--;
        s->q_bytes -= f->len;
        pthread_mutex_unlock(&s->mu);
        handle(s, fwd, f);
        er_free(f->text);
        er_free(f);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- start and stop ---- */

int er_bridge_stream_start(const struct er_bridge_stream_opts *o,
                           struct er_bridge_stream **out, struct er_err *err)
{
    struct er_bridge_stream *s;
    int in[2] = { -1, -1 };
    int outp[2] = { -1, -1 };
    int64_t deadline;
    size_t i;
    int rc = 0;

    *out = NULL;
    s = er_calloc(1, sizeof(*s));
    if (s == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_mutex_init(&s->wmu, NULL);
    s->in_w = s->in_r = s->out_r = s->out_w = -1;
    s->hold = o->hold;
    s->hold_arg = o->hold_arg;
    s->host_token = o->host_token;
    s->max_body = o->max_body > 0 ? o->max_body : ER_BRIDGE_MAX_BODY_BYTES;
    s->may_forward = o->may_forward;
    s->may_forward_arg = o->may_forward_arg;
    snprintf(s->run_id, sizeof(s->run_id), "%s", o->run_id);
    snprintf(s->token_line, sizeof(s->token_line), "%s\n", o->token);
    s->script = er_strdup(o->script);
    if (s->script == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
        goto fail;
    }
    for (i = 0; i < ER_BRIDGE_STREAM_FORWARDERS && rc == 0; i++) {
        rc = er_bridge_fwd_new(o->origin, o->allow, s->max_body,
                               ER_BRIDGE_FORWARD_TIMEOUT_MS, &s->fwd[i], err);
        if (rc == 0) {
            er_bridge_fwd_set_trace(s->fwd[i], o->traceparent);
            s->fwd_cnt++;
        }
    }
    if (rc != 0)
        goto fail;
    rc = er_bridge_hold_pipes(in, outp, err);
    if (rc != 0)
        goto fail;
    s->in_r = in[0];
    s->in_w = in[1];
    s->out_r = outp[0];
    s->out_w = outp[1];
    /* The token is the first line the start script reads. */
    if (write_all(s->in_w, s->token_line, strlen(s->token_line)) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "cannot write to the gateway's pipe");
        goto fail;
    }
    er_wipe(s->token_line, sizeof(s->token_line));
    if (pthread_create(&s->holder, NULL, holder_main, s) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot start a thread");
        goto fail;
    }
    s->has_holder = true;
    if (pthread_create(&s->reader, NULL, reader_main, s) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot start a thread");
        goto fail;
    }
    s->has_reader = true;
    /* Ready, or gone (no gateway, no held exec: the caller falls back). */
    deadline = er_time_mono_ms() + READY_WAIT_MS;
    pthread_mutex_lock(&s->mu);
    while (!s->is_ready && !s->is_gone && er_time_mono_ms() < deadline) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        (void)pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    if (!s->is_ready)
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "start sandbox callback bridge stream failed: %s",
                        s->is_gone ? s->gone_why
                                   : "Timed out waiting for bridge readiness.");
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        goto fail;
    for (i = 0; i < s->fwd_cnt; i++) {
        struct fwd_arg *fa = er_calloc(1, sizeof(*fa));

        if (fa == NULL)
            break;
        fa->s = s;
        fa->i = i;
        if (pthread_create(&s->fwd_tid[i], NULL, forwarder_main, fa) != 0) {
            er_free(fa);
            break;
        }
    }
    if (i < s->fwd_cnt) {
        s->fwd_cnt = i; /* only those started are joined */
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot start a thread");
        goto fail;
    }
    *out = s;
    return 0;
fail:
    er_bridge_stream_stop(s, 0);
    return rc;
}

void er_bridge_stream_stop(struct er_bridge_stream *s, int64_t drain_ms)
{
    int64_t deadline;
    size_t i;

    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->is_stopping = true;
    if (drain_ms <= 0)
        atomic_store(&s->abort, true);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    /* Forwarders finish (within drain_ms, then aborted). */
    deadline = er_time_mono_ms() + (drain_ms > 0 ? drain_ms : 0);
    if (drain_ms > 0) {
        pthread_mutex_lock(&s->mu);
        while (s->q_head != NULL && er_time_mono_ms() < deadline) {
            pthread_mutex_unlock(&s->mu);
            nanosleep(&(struct timespec){ 0, 20 * 1000000L }, NULL);
            pthread_mutex_lock(&s->mu);
        }
        pthread_mutex_unlock(&s->mu);
        atomic_store(&s->abort, true);
        pthread_mutex_lock(&s->mu);
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
    for (i = 0; i < ER_BRIDGE_STREAM_FORWARDERS; i++) {
        if (s->fwd_tid[i] != 0)
            pthread_join(s->fwd_tid[i], NULL);
    }
    /* End of its stdin: the gateway answers its waiters and exits; one
     * that does not is ended with the exec. */
    pthread_mutex_lock(&s->wmu);
    er_bridge_close_fd(&s->in_w);
    pthread_mutex_unlock(&s->wmu);
    if (s->has_holder) {
        deadline = er_time_mono_ms() + EXIT_WAIT_MS;
        pthread_mutex_lock(&s->mu);
        while (!s->is_gone && er_time_mono_ms() < deadline) {
            pthread_mutex_unlock(&s->mu);
            nanosleep(&(struct timespec){ 0, 20 * 1000000L }, NULL);
            pthread_mutex_lock(&s->mu);
        }
        pthread_mutex_unlock(&s->mu);
        atomic_store(&s->cancel, true);
        pthread_join(s->holder, NULL);
    } else {
        er_bridge_close_fd(&s->in_r);
        er_bridge_close_fd(&s->out_w);
    }
    if (s->has_reader)
        pthread_join(s->reader, NULL);
    er_bridge_close_fd(&s->out_r);
    while (s->q_head != NULL) {
        struct frame *f = s->q_head;

        s->q_head = f->next;
        er_free(f->text);
        er_free(f);
    }
    for (i = 0; i < ER_BRIDGE_STREAM_FORWARDERS; i++)
        er_bridge_fwd_free(s->fwd[i]);
    er_wipe(s->token_line, sizeof(s->token_line));
    er_free(s->script);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->wmu);
    er_free(s);
}

void er_bridge_stream_set_trace(struct er_bridge_stream *s,
                                const char *traceparent)
{
    size_t i;

    /* fwd[] and fwd_cnt are fixed once the stream started; each forwarder
     * guards its own trace. */
    for (i = 0; i < s->fwd_cnt; i++)
        er_bridge_fwd_set_trace(s->fwd[i], traceparent);
}

int er_bridge_stream_port(struct er_bridge_stream *s)
{
    int port;

    pthread_mutex_lock(&s->mu);
    port = s->port;
    pthread_mutex_unlock(&s->mu);
    return port;
}

bool er_bridge_stream_is_alive(struct er_bridge_stream *s)
{
    bool is_alive;

    pthread_mutex_lock(&s->mu);
    is_alive = !s->is_gone;
    pthread_mutex_unlock(&s->mu);
    return is_alive;
}

void er_bridge_stream_stats(struct er_bridge_stream *s,
                            struct er_bridge_stream_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    pthread_mutex_unlock(&s->mu);
}
