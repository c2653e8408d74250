/* runner: queue_v1's held command runner, the host side. The lease's
 * gateway binary runs as `envrun-gateway --serve-commands` in one held
 * exec (a holder thread, as stream_v1's gateway); the poller's scripts go
 * to it as frames instead of one exec of the lease each, which over ssh
 * costs a client process and a session (~27 ms here) a script. Its output
 * comes from inside the sandbox and is parsed as untrusted: bounded
 * frames, the caller's caps. A runner that fails (it died, broke the
 * protocol, overran its deadline) is ended; its scripts run one exec each
 * through the fallback until a new one starts, RUNNER_RETRY_MS later
 * (doubling up to RUNNER_RETRY_MAX_MS while starts keep failing). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bridge/bridge.h"

#define FAC                 "bridge"
#define HELLO               "envrun-runner 1\n"
#define READY_WAIT_MS       10000
#define RUNNER_RETRY_MS     5000
#define RUNNER_RETRY_MAX_MS 60000
/* Past a script's own deadline, which the runner enforces: this long for
 * its end frame before the runner is taken for broken. */
#define END_GRACE_MS        3000
#define CANCEL_TICK_MS      50
#define HOLD_FOREVER_MS     ((int64_t)30 * 24 * 3600 * 1000)
#define FRAME_HDR_MAX       32
#define CHUNK_MAX           65536

struct er_bridge_runner {
    er_bridge_hold_fn *hold;
    void *hold_arg;
    er_bridge_exec_fn *fallback;
    void *fallback_arg;
    char *script;
    char run_id[64];

    pthread_mutex_t mu; /* one script at a time; everything below */
    pthread_t holder;
    bool has_holder;
    atomic_bool cancel;  /* ends the held exec */
    atomic_bool is_gone; /* the held exec ended */
    int in_w, in_r, out_r, out_w;
    char buf[CHUNK_MAX + FRAME_HDR_MAX];
    size_t off, len;
    int64_t retry_at; /* mono ms: when a runner may be started again */
    int64_t retry_ms; /* the wait after the next failure */
    /* Under smu, not mu: read while a script runs. */
    pthread_mutex_t smu;
    struct er_bridge_runner_stats stats;
};

static void count(struct er_bridge_runner *r, uint64_t *field)
{
    pthread_mutex_lock(&r->smu);
    (*field)++;
    pthread_mutex_unlock(&r->smu);
}

int er_bridge_runner_frame_parse(const char *buf, size_t len,
                                 struct er_bridge_runner_frame *f)
{
    const char *nl =
        memchr(buf, '\n', len < FRAME_HDR_MAX ? len : FRAME_HDR_MAX);
    const char *p;
    uint64_t v = 0;
    bool is_neg = false;

    if (nl == NULL)
        return len < FRAME_HDR_MAX ? 0 : -1;
    if (nl - buf < 3 || buf[1] != ' ' ||
        (buf[0] != 'O' && buf[0] != 'E' && buf[0] != 'R'))
        return -1;
    p = buf + 2;
    if (buf[0] == 'R' && *p == '-') {
        is_neg = true;
        p++;
    }
    if (p == nl || (*p == '0' && p + 1 != nl))
        return -1;
    for (; p < nl; p++) {
        if (*p < '0' || *p > '9' || v > CHUNK_MAX)
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    f->kind = buf[0];
    if (f->kind == 'R') {
        if ((is_neg && v != 1) || v > 255)
            return -1;
        f->code = is_neg ? -1 : (int)v;
        f->len = 0;
    } else {
        if (v > CHUNK_MAX)
            return -1;
        f->len = (size_t)v;
        f->code = 0;
    }
    return (int)(nl - buf) + 1;
}

static void *holder_main(void *arg)
{
    struct er_bridge_runner *r = arg;
    struct er_err err;
    int exit_code = -1;

    er_err_clear(&err);
    if (r->hold(r->hold_arg, r->script, r->in_r, r->out_w, HOLD_FOREVER_MS,
                &r->cancel, &exit_code, &err) != 0)
        ER_LOG_INFO(FAC, "run %s: the bridge's command runner did not run: %s",
                    r->run_id, err.msg);
    /* Its ends go, so a read of ours sees end of file. */
    er_bridge_close_fd(&r->in_r);
    er_bridge_close_fd(&r->out_w);
    atomic_store(&r->is_gone, true);
    return NULL;
}

/* End the held exec and forget its pipes (mu held). */
static void end_locked(struct er_bridge_runner *r)
{
    atomic_store(&r->cancel, true);
    if (r->has_holder) {
        /* A held exec stuck in a write to us ends once nothing reads. */
        er_bridge_close_fd(&r->out_r);
        pthread_join(r->holder, NULL);
        r->has_holder = false;
    }
    er_bridge_close_fd(&r->in_w);
    er_bridge_close_fd(&r->out_r);
    er_bridge_close_fd(&r->in_r);
    er_bridge_close_fd(&r->out_w);
    r->off = r->len = 0;
    atomic_store(&r->is_gone, true);
}

static int64_t poll_wait(int64_t deadline, bool has_cancel)
{
    int64_t left = deadline - er_time_mono_ms();

    if (left < 0)
        left = 0;
    if (has_cancel && left > CANCEL_TICK_MS)
        left = CANCEL_TICK_MS;
    return left;
}

/* Read what the runner wrote into buf (mu held). 1: some, 0: nothing yet
 * (or the deadline passed), -1: end of file or error. */
static int read_some(struct er_bridge_runner *r, int64_t deadline,
                     bool has_cancel)
{
    struct pollfd p = { r->out_r, POLLIN, 0 };
    ssize_t n;

    if (r->off > 0) {
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    if (r->len == sizeof(r->buf))
        return 1;
    if (poll(&p, 1, (int)poll_wait(deadline, has_cancel)) < 0 && errno != EINTR)
        return -1;
    n = read(r->out_r, r->buf + r->len, sizeof(r->buf) - r->len);
    if (n > 0) {
        r->len += (size_t)n;
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    return -1;
}

/* Where the hello line starts in what was read, -1 when not yet. */
static long find_hello(const struct er_bridge_runner *r)
{
    size_t n = sizeof(HELLO) - 1;
    size_t i;

    for (i = 0; i + n <= r->len; i++) {
        if ((i == 0 || r->buf[i - 1] == '\n') &&
            memcmp(r->buf + i, HELLO, n) == 0)
            return (long)i;
    }
    return -1;
}

/* Start the held exec and wait for its hello (mu held). */
static int start_locked(struct er_bridge_runner *r, struct er_err *err)
{
    int in[2], out[2];
    long at = -1;
    int64_t deadline = er_time_mono_ms() + READY_WAIT_MS;
    int rc = er_bridge_hold_pipes(in, out, err);

    if (rc != 0)
        return rc;
    /* Our ends: the exec's never blocks a deadline or a cancel. */
    if (fcntl(in[1], F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(out[0], F_SETFL, O_NONBLOCK) != 0) {
        er_bridge_close_fd(&in[0]);
        er_bridge_close_fd(&in[1]);
        er_bridge_close_fd(&out[0]);
        er_bridge_close_fd(&out[1]);
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot make pipes");
    }
    r->in_r = in[0];
    r->in_w = in[1];
    r->out_r = out[0];
    r->out_w = out[1];
    r->off = r->len = 0;
    atomic_store(&r->cancel, false);
    atomic_store(&r->is_gone, false);
    if (pthread_create(&r->holder, NULL, holder_main, r) != 0) {
        end_locked(r);
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "cannot start a thread");
    }
    r->has_holder = true;
    /* What a login's profile prints first is skipped. */
    while ((at = find_hello(r)) < 0 && r->len < sizeof(r->buf) &&
           er_time_mono_ms() < deadline) {
        if (read_some(r, deadline, false) < 0)
            break;
    }
    if (at < 0) {
        end_locked(r);
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "the gateway's command runner did not start");
    }
    r->off = (size_t)at + sizeof(HELLO) - 1;
    count(r, &r->stats.starts);
    return 0;
}

struct send_part {
    const char *p;
    size_t len;
};

/* Write what is left of parts without blocking; true once all is sent. */
static bool send_some(int fd, struct send_part *parts, size_t cnt, bool *is_bad)
{
    size_t i;

    for (i = 0; i < cnt; i++) {
        while (parts[i].len > 0) {
            ssize_t n = write(fd, parts[i].p, parts[i].len);

            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                return false;
            if (n <= 0) {
                *is_bad = true;
                return false;
            }
            parts[i].p += n;
            parts[i].len -= (size_t)n;
        }
    }
    return true;
}

/* Append up to the buffer's cap; the rest is dropped, as a driver caps a
 * command's output. */
static void append_capped(struct er_buf *b, const char *p, size_t n)
{
    size_t room = b->max_len > b->len ? b->max_len - b->len : 0;

    if (n > room)
        n = room;
    if (n > 0 && er_buf_append(b, p, n) != 0) {
        /* out of memory: the output is cut here */
    }
}

enum cmd_end { CMD_DONE, CMD_CANCELLED, CMD_UNSENT, CMD_BROKEN };

/* One script through the runner (mu held). CMD_CANCELLED: cancelled
 * before any of it was sent; CMD_UNSENT: nothing reached the runner, which
 * is gone (the fallback may run the script); CMD_BROKEN: the runner must
 * go, and the script did not end on its own as far as we know. */
static enum cmd_end command_locked(struct er_bridge_runner *r,
                                   const char *script, const void *in,
                                   size_t in_len, int64_t timeout_ms,
                                   const atomic_bool *cancel,
                                   struct er_bridge_exec_out *out)
{
    char hdr[96];
    struct send_part parts[3];
    int64_t deadline = er_time_mono_ms() + timeout_ms + END_GRACE_MS;
    bool is_sent = false, is_bad = false, is_cancel_sent = false;
    bool is_touched = false;
    size_t body_left = 0;
    char body_kind = 0;

    parts[0].p = hdr;
    parts[0].len =
        (size_t)snprintf(hdr, sizeof(hdr), "X %lld %zu %zu\n",
                         (long long)timeout_ms, strlen(script), in_len);
    parts[1] = (struct send_part){ script, strlen(script) };
    parts[2] =
        (struct send_part){ in != NULL ? in : "", in != NULL ? in_len : 0 };
    for (;;) {
        size_t avail;
        int rd;

        if (!is_sent) {
            size_t before = parts[0].len + parts[1].len + parts[2].len;

            is_sent = send_some(r->in_w, parts, 3, &is_bad);
            if (parts[0].len + parts[1].len + parts[2].len != before)
                is_touched = true;
            if (is_bad)
                return is_touched ? CMD_BROKEN : CMD_UNSENT;
        }
        if (cancel != NULL && atomic_load(cancel) && !is_cancel_sent) {
            struct send_part k = { "K\n", 2 };

            if (!is_touched)
                return CMD_CANCELLED;
            /* A cancel inside the input would be read as input. */
            if (!is_sent || !send_some(r->in_w, &k, 1, &is_bad))
                return CMD_BROKEN;
            is_cancel_sent = true;
            deadline = er_time_mono_ms() + END_GRACE_MS;
        }
        /* Frames out of what has been read. */
        for (;;) {
            struct er_bridge_runner_frame f;
            int n;

            avail = r->len - r->off;
            if (body_left > 0) {
                size_t take = avail < body_left ? avail : body_left;

                if (take == 0)
                    break;
                append_capped(body_kind == 'O' ? &out->out : &out->err,
                              r->buf + r->off, take);
                r->off += take;
                body_left -= take;
                continue;
            }
            n = er_bridge_runner_frame_parse(r->buf + r->off, avail, &f);
            if (n < 0)
                return CMD_BROKEN;
            if (n == 0)
                break;
            r->off += (size_t)n;
            if (f.kind == 'R') {
                out->exit_code = f.code;
                return CMD_DONE;
            }
            body_kind = f.kind;
            body_left = f.len;
        }
        if (er_time_mono_ms() >= deadline)
            return CMD_BROKEN;
        if (!is_sent) {
            struct pollfd p[2] = { { r->in_w, POLLOUT, 0 },
                                   { r->out_r, POLLIN, 0 } };

            if (poll(p, 2, (int)poll_wait(deadline, cancel != NULL)) < 0 &&
                errno != EINTR)
                return CMD_BROKEN;
            if (p[1].revents == 0)
                continue;
        }
        rd = read_some(r, deadline, cancel != NULL);
        if (rd < 0)
            return is_touched ? CMD_BROKEN : CMD_UNSENT;
    }
}

/* No new runner for a while (mu held): 5 s, doubling while they fail. */
static void back_off(struct er_bridge_runner *r)
{
    r->retry_at = er_time_mono_ms() + r->retry_ms;
    r->retry_ms *= 2;
    if (r->retry_ms > RUNNER_RETRY_MAX_MS)
        r->retry_ms = RUNNER_RETRY_MAX_MS;
}

int er_bridge_runner_exec(void *arg, const char *script, const void *in,
                          size_t in_len, int64_t timeout_ms,
                          const atomic_bool *cancel,
                          struct er_bridge_exec_out *out, struct er_err *err)
{
    struct er_bridge_runner *r = arg;
    enum cmd_end end = CMD_UNSENT;
    struct er_err serr;

    pthread_mutex_lock(&r->mu);
    er_err_clear(&serr);
    if ((!r->has_holder || atomic_load(&r->is_gone)) &&
        er_time_mono_ms() >= r->retry_at) {
        if (r->has_holder)
            end_locked(r);
        if (start_locked(r, &serr) != 0)
            back_off(r);
    }
    if (r->has_holder && !atomic_load(&r->is_gone) &&
        strlen(script) <= ER_BRIDGE_RUNNER_SCRIPT_MAX) {
        end = command_locked(r, script, in, in_len,
                             timeout_ms > 0 ? timeout_ms : 1, cancel, out);
        if (end == CMD_UNSENT || end == CMD_BROKEN) {
            ER_LOG_WARN(FAC,
                        "run %s: the bridge's command runner failed; its "
                        "scripts run one exec each for now",
                        r->run_id);
            end_locked(r);
            back_off(r);
            count(r, &r->stats.failures);
        } else {
            r->retry_ms = RUNNER_RETRY_MS;
        }
    }
    count(r, end == CMD_UNSENT ? &r->stats.fallbacks : &r->stats.commands);
    pthread_mutex_unlock(&r->mu);
    if (end == CMD_BROKEN || end == CMD_CANCELLED) {
        out->exit_code = -1; /* did not end on its own, as far as we know */
        return 0;
    }
    if (end == CMD_UNSENT)
        return r->fallback(r->fallback_arg, script, in, in_len, timeout_ms,
                           cancel, out, err);
    return 0;
}

int er_bridge_runner_start(const struct er_bridge_runner_opts *o,
                           struct er_bridge_runner **out, struct er_err *err)
{
    struct er_bridge_runner *r = er_calloc(1, sizeof(*r));
    struct er_buf script;
    int rc;

    *out = NULL;
    if (r == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
    r->hold = o->hold;
    r->hold_arg = o->hold_arg;
    r->fallback = o->fallback;
    r->fallback_arg = o->fallback_arg;
    r->in_w = r->in_r = r->out_r = r->out_w = -1;
    snprintf(r->run_id, sizeof(r->run_id), "%s", o->run_id);
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->smu, NULL);
    er_buf_init(&script, 16384);
    rc = er_buf_printf(&script, "gw=");
    if (rc == 0)
        rc = er_sh_quote(&script, o->gateway);
    if (rc == 0)
        rc = er_buf_printf(&script, "; exec \"$gw\" --serve-commands");
    r->script = rc == 0 ? (char *)er_buf_take(&script, NULL) : NULL;
    er_buf_fini(&script);
    if (r->script == NULL) {
        er_bridge_runner_stop(r);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
    }
    pthread_mutex_lock(&r->mu);
    r->retry_ms = RUNNER_RETRY_MS;
    rc = start_locked(r, err);
    if (rc != 0)
        back_off(r);
    pthread_mutex_unlock(&r->mu);
    /* Not running is not an error: the fallback serves. */
    *out = r;
    return rc;
}

void er_bridge_runner_stop(struct er_bridge_runner *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    end_locked(r);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->smu);
    er_free(r->script);
    er_free(r);
}

void er_bridge_runner_stats(struct er_bridge_runner *r,
                            struct er_bridge_runner_stats *out)
{
    pthread_mutex_lock(&r->smu);
    *out = r->stats;
    pthread_mutex_unlock(&r->smu);
}
