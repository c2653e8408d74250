/* queue: the host side of queue_v1 (upstream.md B6, B7). One thread per
 * bridged run long-polls the gateway's request directory through the
 * lease's exec channel, forwards each request and writes its response the
 * guarded way upstream's host does. Every exec has a deadline (the channel
 * kills what overruns it), so a hung exec costs one iteration, never the
 * loop (#11341). The queue is inside the sandbox: names, sizes and
 * contents are untrusted and checked. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bridge/bridge.h"

#define FAC              "bridge"
#define NAMES_MAX        256
#define NAME_MAX_LEN     200
#define LIST_OUT_MAX     (NAMES_MAX * (NAME_MAX_LEN + 1))
#define BACKOFF_MAX_MS   5000
#define WRITE_ATTEMPTS   3 /* MAX_BACKSTOP_WRITE_ATTEMPTS */
#define WRITE_RETRY_MS   50
#define STOPPED_MESSAGE  "Bridge worker stopped before request could be handled."
#define READ_GONE_STATUS 3

struct er_bridge_poller {
    er_bridge_exec_fn *exec;
    void *exec_arg;
    char *queue_dir;
    char *run_id;
    char *gateway; /* NULL: the list waits with a shell loop */
    struct er_bridge_fwd *fwd;
    const struct er_secret *host_token;
    size_t max_body;
    int64_t poll_interval_ms;
    int64_t list_wait_ms;
    int64_t iteration_timeout_ms;

    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool is_stopping;          /* under mu */
    int64_t drain_deadline;    /* mono ms, under mu */
    atomic_bool cancel_list;   /* ends a list wait at once */
    atomic_bool abort_forward; /* a stop without drain */
    atomic_bool is_handover;   /* a stop that answers nothing */
    bool (*may_forward)(void *arg);
    void *may_forward_arg;
    struct er_bridge_poller_stats stats; /* under mu */
    /* The answer the next list exec writes before it waits (the poller's
     * thread only): one exec per request instead of two. */
    bool has_pending;
    char pending_name[NAME_MAX_LEN + 1];
    struct er_buf pending_json;
};

/* ================================================================
 * The operations of B7, one exec each
 * ================================================================ */

static bool is_stopping(struct er_bridge_poller *p, bool *is_past_deadline)
{
    bool stopping;

    pthread_mutex_lock(&p->mu);
    stopping = p->is_stopping;
    if (is_past_deadline != NULL)
        *is_past_deadline = stopping && er_time_mono_ms() >= p->drain_deadline;
    pthread_mutex_unlock(&p->mu);
    return stopping;
}

static void count(struct er_bridge_poller *p, uint64_t *field)
{
    pthread_mutex_lock(&p->mu);
    (*field)++;
    pthread_mutex_unlock(&p->mu);
}

/* Run script into out (er_bridge_exec_out_init'ed). */
static int run(struct er_bridge_poller *p, const char *script, const void *in,
               size_t in_len, int64_t timeout_ms, const atomic_bool *cancel,
               struct er_bridge_exec_out *out, struct er_err *err)
{
    count(p, &p->stats.execs);
    return p->exec(p->exec_arg, script, in, in_len, timeout_ms, cancel, out,
                   err);
}

/* A request file's name as the gateway makes it: <id>.json, the id of
 * letters, digits, '-', '_' and '.', not starting with '.'. */
static bool is_request_name(const char *s, size_t len)
{
    size_t i;

    if (len <= 5 || len > NAME_MAX_LEN || s[0] == '.' ||
        memcmp(s + len - 5, ".json", 5) != 0)
        return false;
    for (i = 0; i < len; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/* script = prefix + quoted queue path (+ "/" + sub) + suffix. */
static int script_with(struct er_buf *script, const char *prefix,
                       const char *dir, const char *sub, const char *suffix)
{
    struct er_buf path;
    int rc;

    er_buf_init(&path, 8192);
    rc = er_buf_printf(&path, "%s%s%s", dir, sub != NULL ? "/" : "",
                       sub != NULL ? sub : "");
    if (rc == 0)
        rc = er_buf_append(script, prefix, strlen(prefix));
    if (rc == 0)
        rc = er_sh_quote(script, (const char *)path.data);
    if (rc == 0)
        rc = er_buf_append(script, suffix, strlen(suffix));
    er_buf_fini(&path);
    return rc;
}

static int op_mkdirs(struct er_bridge_poller *p, struct er_err *err)
{
    struct er_bridge_exec_out out;
    struct er_buf script;
    int rc;

    er_bridge_exec_out_init(&out, 4096);
    er_buf_init(&script, 16384);
    rc = script_with(&script, "q=", p->queue_dir, NULL,
                     "; mkdir -p \"$q/requests\" \"$q/responses\" "
                     "\"$q/logs\"");
    if (rc == 0)
        rc = run(p, (const char *)script.data, NULL, 0, p->iteration_timeout_ms,
                 NULL, &out, err);
    if (rc == 0 && out.exit_code != 0)
        rc = er_bridge_exec_failed(err, "mkdir", &out);
    er_bridge_exec_out_fini(&out);
    er_buf_fini(&script);
    return rc;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void er_bridge_preread_fini(struct er_bridge_preread *pre)
{
    er_free(pre->name);
    er_free(pre->text);
    memset(pre, 0, sizeof(*pre));
}

/* What follows the names' empty line: "<name>\n<n>\n<n bytes>". Bytes
 * that do not match n (the output was cut) are not used. */
static int preread_parse(struct er_bridge_preread *pre, const char *s,
                         const char *end)
{
    const char *nl = memchr(s, '\n', (size_t)(end - s));
    const char *data;
    size_t n = 0;

    if (nl == NULL || !is_request_name(s, (size_t)(nl - s)))
        return 0; /* not usable: the request is read on its own */
    for (data = nl + 1; data < end && *data >= '0' && *data <= '9'; data++) {
        if (n > (SIZE_MAX - 9) / 10)
            return 0;
        n = n * 10 + (size_t)(*data - '0');
    }
    if (data == nl + 1 || data >= end || *data != '\n' ||
        (size_t)(end - data - 1) != n)
        return 0;
    data++;
    pre->name = er_strndup(s, (size_t)(nl - s));
    pre->len = (size_t)n;
    pre->text = er_malloc(pre->len + 1);
    if (pre->name == NULL || pre->text == NULL) {
        er_bridge_preread_fini(pre);
        return ER_ENOMEM;
    }
    memcpy(pre->text, data, pre->len);
    pre->text[pre->len] = '\0';
    return 0;
}

int er_bridge_list_parse(const char *text, size_t len, char **names, size_t max,
                         size_t *cnt, struct er_bridge_preread *pre)
{
    const char *s = text;
    const char *end = text + len;
    int rc = 0;

    *cnt = 0;
    memset(pre, 0, sizeof(*pre));
    while (rc == 0 && s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t n = nl != NULL ? (size_t)(nl - s) : (size_t)(end - s);

        if (n == 0) { /* the names end; the first request follows */
            rc = preread_parse(pre, s + 1, end);
            break;
        }
        /* What the sandbox lists is checked like everything it says. */
        if (*cnt < max && is_request_name(s, n)) {
            names[*cnt] = er_strndup(s, n);
            if (names[*cnt] == NULL)
                rc = ER_ENOMEM;
            else
                (*cnt)++;
        }
        s += n + 1;
    }
    if (rc == 0)
        qsort(names, *cnt, sizeof(*names), cmp_names);
    return rc;
}

/* The {"wrote":...} line a folded list starts with: the pending answer is
 * done with (counted when written) and the line is skipped. Without it
 * (the shell loop ran, the gateway binary is not there) the answer is
 * still pending. */
static size_t take_wrote_line(struct er_bridge_poller *p, const char *text,
                              size_t len)
{
    static const char yes[] = "{\"wrote\":true}\n";
    static const char no[] = "{\"wrote\":false}\n";

    if (len >= sizeof(yes) - 1 && memcmp(text, yes, sizeof(yes) - 1) == 0) {
        count(p, &p->stats.handled);
        p->has_pending = false;
        return sizeof(yes) - 1;
    }
    if (len >= sizeof(no) - 1 && memcmp(text, no, sizeof(no) - 1) == 0) {
        p->has_pending = false;
        return sizeof(no) - 1;
    }
    return 0;
}

/* The request files waiting, sorted (names[] owned by the caller, at most
 * NAMES_MAX); with wait_ms the exec waits in the sandbox until one is
 * there or the wait is over. With the gateway binary, *pre gets the first
 * request's bytes (at most its size limit and one) where it could read
 * them.
 * With a pending answer and the gateway binary, the same exec writes it
 * first (take_wrote_line). */
static int op_list(struct er_bridge_poller *p, int64_t wait_ms, char **names,
                   size_t *cnt, struct er_bridge_preread *pre,
                   struct er_err *err)
{
    struct er_bridge_exec_out out;
    struct er_buf script;
    char tail[512];
    size_t read_max = er_bridge_envelope_limit(p->max_body) + 1;
    bool is_folded = p->has_pending && p->gateway != NULL && wait_ms > 0;
    size_t skip = 0;
    int rc;

    *cnt = 0;
    memset(pre, 0, sizeof(*pre));
    snprintf(tail, sizeof(tail),
             "/requests; end=$(( $(date +%%s) + %lld )); while :; do n=0; "
             "for f in \"$d\"/*.json; do if [ -f \"$f\" ] && [ ! -L \"$f\" ]; "
             "then printf '%%s\\n' \"${f##*/}\"; n=1; fi; done; "
             "[ \"$n\" = 1 ] && exit 0; "
             "[ \"$(date +%%s)\" -ge \"$end\" ] && exit 0; "
             "sleep %lld.%03lld 2>/dev/null || sleep 1; done",
             (long long)((wait_ms + 999) / 1000),
             (long long)(p->poll_interval_ms / 1000),
             (long long)(p->poll_interval_ms % 1000));
    er_bridge_exec_out_init(&out, LIST_OUT_MAX + NAME_MAX_LEN + 2 + read_max);
    er_buf_init(&script, 16384);
    /* The gateway binary waits without a process per step, wakes at once
     * and prints the first request; the shell loop is for a gateway that
     * is not there. */
    if (p->gateway != NULL && wait_ms > 0) {
        rc = script_with(&script, "gw=", p->gateway, NULL, "; d=");
        if (rc == 0)
            rc = er_sh_quote(&script, p->queue_dir);
        if (rc == 0 && is_folded)
            rc = script_with(&script, "/requests; q=", p->queue_dir, NULL, "");
        if (rc == 0 && is_folded)
            rc = er_buf_printf(&script,
                               "; if [ -x \"$gw\" ]; then exec \"$gw\" "
                               "--write-response \"$q\" %s 1 --wait-requests "
                               "\"$d\" %lld %zu; fi; ",
                               p->pending_name, (long long)wait_ms, read_max);
        else if (rc == 0)
            rc = er_buf_printf(&script,
                               "/requests; if [ -x \"$gw\" ]; then exec "
                               "\"$gw\" --wait-requests \"$d\" %lld %zu; fi; ",
                               (long long)wait_ms, read_max);
        if (rc == 0)
            rc = script_with(&script, "d=", p->queue_dir, NULL, tail);
    } else {
        rc = script_with(&script, "d=", p->queue_dir, NULL, tail);
    }
    if (rc == 0)
        rc = run(p, (const char *)script.data,
                 is_folded ? p->pending_json.data : NULL,
                 is_folded ? p->pending_json.len : 0,
                 p->iteration_timeout_ms + wait_ms, &p->cancel_list, &out, err);
    er_buf_fini(&script);
    if (rc == 0 && is_folded)
        skip = take_wrote_line(p, er_bridge_exec_text(&out.out), out.out.len);
    if (rc == 0 && out.exit_code != 0)
        rc = er_bridge_exec_failed(err, "list", &out);
    if (rc == 0 && er_bridge_list_parse(er_bridge_exec_text(&out.out) + skip,
                                        out.out.len - skip, names, NAMES_MAX,
                                        cnt, pre) != 0) {
        er_bridge_preread_fini(pre);
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
    }
    er_bridge_exec_out_fini(&out);
    return rc;
}

/* Read at most max bytes of requests/<name> into out. 1: the file is gone
 * (its gateway gave up and removed it). */
static int op_read(struct er_bridge_poller *p, const char *name, size_t max,
                   struct er_bridge_exec_out *out, struct er_err *err)
{
    struct er_buf script;
    char tail[256];
    int rc;

    snprintf(tail, sizeof(tail),
             "; if [ ! -f \"$f\" ] || [ -L \"$f\" ]; then exit %d; fi; "
             "head -c %zu \"$f\"",
             READ_GONE_STATUS, max);
    er_bridge_exec_out_init(out, max);
    er_buf_init(&script, 16384);
    rc = script_with(&script, "f=", p->queue_dir, "requests", "");
    if (rc == 0)
        rc = er_buf_append(&script, "/", 1);
    if (rc == 0)
        rc = er_buf_append(&script, name, strlen(name));
    if (rc == 0)
        rc = er_buf_append(&script, tail, strlen(tail));
    if (rc == 0)
        rc = run(p, (const char *)script.data, NULL, 0, p->iteration_timeout_ms,
                 NULL, out, err);
    er_buf_fini(&script);
    if (rc == 0 && out->exit_code == READ_GONE_STATUS)
        return 1;
    if (rc == 0 && out->exit_code != 0)
        rc = er_bridge_exec_failed(err, "read", out);
    return rc;
}

/* The guarded response write of B7: under the lock directory upstream's
 * writers share (a dead holder's lock is taken over), only when no answer
 * is there yet and, with require_request, only while the request file
 * exists (its gateway still waits). *wrote says whether it was written.
 * Either way the request is done with: the same exec removes its file
 * (one exec less per request than a separate remove). */
static int op_write(struct er_bridge_poller *p, const char *name,
                    const struct er_buf *json, bool require_request,
                    bool *wrote, struct er_err *err)
{
    static const char body[] =
        "; set -eu; mkdir -p \"$q/responses\"; r=\"$q/responses/$n\"; "
        "l=\"$r.paperclip-write.lock\"; i=0; "
        "while ! mkdir \"$l\" 2>/dev/null; do "
        "h=$(cat \"$l/pid\" 2>/dev/null || true); "
        "if [ -n \"$h\" ] && ! kill -0 \"$h\" 2>/dev/null; then "
        "rm -rf \"$l\"; continue; fi; i=$((i + 1)); "
        "if [ \"$i\" -ge 600 ]; then echo 'Timed out acquiring sandbox "
        "callback bridge response lock.' >&2; exit 1; fi; "
        "sleep 0.05 2>/dev/null || sleep 1; done; "
        "echo $$ > \"$l/pid\"; "
        "trap 'rm -f \"$r.tmp\"; rm -rf \"$l\"' EXIT INT TERM; "
        "if { [ \"$g\" = 1 ] && [ ! -f \"$q/requests/$n\" ]; } || "
        "[ -e \"$r\" ]; then cat > /dev/null; rm -f \"$q/requests/$n\"; "
        "echo '{\"wrote\":false}'; exit 0; fi; cat > \"$r.tmp\"; "
        "mv \"$r.tmp\" \"$r\"; rm -f \"$q/requests/$n\"; "
        "echo '{\"wrote\":true}'";
    struct er_bridge_exec_out out;
    struct er_buf script;
    int rc;

    *wrote = false;
    er_bridge_exec_out_init(&out, 4096);
    er_buf_init(&script, 16384);
    rc = script_with(&script, "q=", p->queue_dir, NULL, "; n=");
    if (rc == 0)
        rc = er_buf_printf(&script, "%s; g=%d", name, require_request ? 1 : 0);
    /* The gateway binary does the same in one process. */
    if (rc == 0 && p->gateway != NULL)
        rc = script_with(&script, "; gw=", p->gateway, NULL,
                         "; if [ -x \"$gw\" ]; then exec \"$gw\" "
                         "--write-response \"$q\" \"$n\" \"$g\"; fi");
    if (rc == 0)
        rc = er_buf_append(&script, body, sizeof(body) - 1);
    if (rc == 0)
        rc = run(p, (const char *)script.data, json->data, json->len,
                 p->iteration_timeout_ms, NULL, &out, err);
    er_buf_fini(&script);
    if (rc == 0 && out.exit_code != 0)
        rc = er_bridge_exec_failed(err, "write bridge response", &out);
    else if (rc == 0 &&
             strstr(er_bridge_exec_text(&out.out), "{\"wrote\":true}") != NULL)
        *wrote = true;
    else if (rc == 0 &&
             strstr(er_bridge_exec_text(&out.out), "{\"wrote\":false}") == NULL)
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                        "Sandbox callback bridge response write wrote "
                        "invalid result JSON: %.100s",
                        er_bridge_exec_text(&out.out));
    er_bridge_exec_out_fini(&out);
    return rc;
}

/* ================================================================
 * One request
 * ================================================================ */

static void sleep_ms(struct er_bridge_poller *p, int64_t ms, bool wake_on_stop)
{
    struct timespec ts;

    er_time_deadline_in(ms, &ts);
    pthread_mutex_lock(&p->mu);
    while (!(wake_on_stop && p->is_stopping) &&
           pthread_cond_timedwait(&p->cv, &p->mu, &ts) == 0)
        ;
    pthread_mutex_unlock(&p->mu);
}

/* Write the answer for name (3 attempts, 50 ms apart), then remove the
 * request file. "Not written" (the caller is gone, or answered) is done
 * too. */
static void write_answer(struct er_bridge_poller *p, const char *name,
                         const struct er_buf *json, bool require_request)
{
    struct er_err err;
    bool wrote = false;
    int attempt;
    int rc = ER_EIO;

    for (attempt = 0; attempt < WRITE_ATTEMPTS && rc != 0; attempt++) {
        if (attempt > 0)
            sleep_ms(p, WRITE_RETRY_MS, false);
        er_err_clear(&err);
        rc = op_write(p, name, json, require_request, &wrote, &err);
    }
    if (rc != 0) {
        ER_LOG_WARN(FAC, "run %s: Sandbox callback bridge worker failed: %s",
                    p->run_id, err.msg);
        return;
    }
    if (wrote)
        count(p, &p->stats.handled);
}

/* Write the pending answer now (the list did not: it failed, or ran
 * without the gateway binary). */
static void flush_pending(struct er_bridge_poller *p)
{
    if (!p->has_pending)
        return;
    p->has_pending = false;
    write_answer(p, p->pending_name, &p->pending_json, true);
    er_buf_reset(&p->pending_json);
}

/* Answer name with res: written now, or, with may_defer and the gateway
 * binary, by the next list exec (require_request then holds); a deferred
 * answer is encoded straight into the pending buffer. */
static void finalize(struct er_bridge_poller *p, const char *name,
                     const char *id, const struct er_bridge_res *res,
                     bool require_request, bool may_defer)
{
    bool is_deferred = may_defer && require_request && p->gateway != NULL &&
                       strlen(name) <= NAME_MAX_LEN;
    struct er_buf json;
    struct er_buf *out = is_deferred ? &p->pending_json : &json;
    struct er_err err;

    flush_pending(p);
    if (!is_deferred)
        er_buf_init(&json, er_bridge_envelope_limit(p->max_body));
    er_buf_reset(out);
    if (er_bridge_response_json(id, res, out, &err) != 0) {
        ER_LOG_WARN(FAC, "run %s: cannot encode the answer to %s: %s",
                    p->run_id, name, err.msg);
    } else if (is_deferred) {
        snprintf(p->pending_name, sizeof(p->pending_name), "%s", name);
        p->has_pending = true;
    } else {
        write_answer(p, name, out, require_request);
    }
    if (!is_deferred)
        er_buf_fini(&json);
}

/* id0: the name without ".json", the id of an answer to a request whose
 * own id cannot be read. */
static void id_of_name(const char *name, char *id0, size_t len)
{
    snprintf(id0, len, "%.*s", (int)(strlen(name) - 5), name);
}

/* Answer requests/<name>; pre: its bytes from the list, or NULL to read
 * them. */
static void process(struct er_bridge_poller *p, const char *name,
                    const struct er_bridge_preread *pre, bool may_defer)
{
    struct er_bridge_exec_out out;
    struct er_bridge_envelope env;
    struct er_bridge_res res;
    struct er_bridge_req req;
    struct er_err err;
    size_t limit = er_bridge_envelope_limit(p->max_body);
    char id0[NAME_MAX_LEN];
    const char *text;
    size_t len;
    int rc = 0;

    id_of_name(name, id0, sizeof(id0));
    memset(&res, 0, sizeof(res));
    er_err_clear(&err);
    er_bridge_exec_out_init(&out, 0); /* holds nothing yet */
    if (pre == NULL)
        rc = op_read(p, name, limit + 1, &out, &err);
    if (rc == 1) {
        er_bridge_exec_out_fini(&out);
        return; /* its gateway stopped waiting and removed it */
    }
    if (rc != 0) {
        /* Left for the next pass. */
        ER_LOG_WARN(FAC, "run %s: Sandbox callback bridge worker failed: %s",
                    p->run_id, err.msg);
        er_bridge_exec_out_fini(&out);
        return;
    }
    text = pre != NULL ? pre->text : er_bridge_exec_text(&out.out);
    len = pre != NULL ? pre->len : out.out.len;
    if (len > limit) {
        er_bridge_res_error(&res, 413,
                            "Bridge request envelope exceeded the configured "
                            "size limit.",
                            false);
        finalize(p, name, id0, &res, true, may_defer);
        goto out;
    }
    rc = er_bridge_envelope_parse(text, len, p->max_body, &env, &err);
    if (rc != 0) {
        er_bridge_res_error(&res, rc == ER_ENOMEM ? 503 : 400,
                            rc == ER_ENOMEM ? "Bridge host body capacity is "
                                              "busy. Retry later."
                                            : "Invalid bridge request payload.",
                            false);
        er_bridge_fwd_count(ER_BRIDGE_COUNT_QUEUE_V1, res.status);
        finalize(p, name, id0, &res, true, may_defer);
        goto out;
    }
    er_bridge_envelope_req(&env, &req);
    er_bridge_handle(p->fwd, &req, p->host_token, p->run_id, &p->abort_forward,
                     &res);
    er_bridge_fwd_count(ER_BRIDGE_COUNT_QUEUE_V1, res.status);
    finalize(p, name, env.id, &res, true, may_defer);
    er_bridge_envelope_fini(&env);
out:
    er_bridge_res_fini(&res);
    er_bridge_exec_out_fini(&out);
}

/* On stop: every request still waiting gets the retry-safe 503 (none of
 * them was forwarded), written even if its file is about to go. */
static void answer_the_rest(struct er_bridge_poller *p)
{
    char *names[NAMES_MAX];
    struct er_bridge_preread pre;
    struct er_bridge_res res;
    struct er_err err;
    char id0[NAME_MAX_LEN];
    size_t cnt = 0;
    size_t i;

    atomic_store(&p->cancel_list, false);
    if (op_list(p, 0, names, &cnt, &pre, &err) != 0)
        return;
    er_bridge_preread_fini(&pre);
    for (i = 0; i < cnt; i++) {
        memset(&res, 0, sizeof(res));
        er_bridge_res_error(&res, 503, STOPPED_MESSAGE, false);
        id_of_name(names[i], id0, sizeof(id0));
        finalize(p, names[i], id0, &res, false, false);
        er_bridge_res_fini(&res);
        er_free(names[i]);
    }
}

/* ================================================================
 * The loop
 * ================================================================ */

static bool is_paused(struct er_bridge_poller *p)
{
    return p->may_forward != NULL && !p->may_forward(p->may_forward_arg);
}

static void *poller_main(void *arg)
{
    struct er_bridge_poller *p = arg;
    int fails = 0;
    struct er_err err;

    if (op_mkdirs(p, &err) != 0)
        ER_LOG_WARN(FAC, "run %s: Sandbox callback bridge worker failed: %s",
                    p->run_id, err.msg);
    for (;;) {
        char *names[NAMES_MAX];
        struct er_bridge_preread pre;
        bool is_past = false;
        bool stopping = is_stopping(p, NULL);
        size_t cnt = 0;
        size_t i;
        int rc;

        er_err_clear(&err);
        /* Stopping: the cancel that ended a list wait is spent. */
        if (stopping)
            atomic_store(&p->cancel_list, false);
        /* Paused (its run's partition is between owners): requests wait
         * in the queue, nobody forwards them twice. */
        if (!stopping && is_paused(p)) {
            flush_pending(p); /* forwarded before the pause */
            sleep_ms(p, p->poll_interval_ms, true);
            continue;
        }
        rc =
            op_list(p, stopping ? 0 : p->list_wait_ms, names, &cnt, &pre, &err);
        flush_pending(p); /* what the list did not write */
        if (rc != 0) {
            int64_t backoff = p->poll_interval_ms;
            int k;

            for (i = 0; i < cnt; i++)
                er_free(names[i]);
            if (stopping)
                break;
            if (atomic_load(&p->cancel_list))
                continue; /* a stop ended the wait: no failure */
            count(p, &p->stats.list_failures);
            fails++;
            for (k = 0; k < fails && backoff < BACKOFF_MAX_MS; k++)
                backoff *= 2;
            if (backoff > BACKOFF_MAX_MS)
                backoff = BACKOFF_MAX_MS;
            if (fails == 1)
                ER_LOG_WARN(FAC,
                            "run %s: Sandbox callback bridge worker failed: "
                            "%s (transient poll failure %d; retrying)",
                            p->run_id, err.msg, fails);
            sleep_ms(p, backoff, true);
            continue;
        }
        fails = 0;
        if (cnt == 0) {
            er_bridge_preread_fini(&pre);
            if (stopping)
                break;
            sleep_ms(p, p->poll_interval_ms, true);
            continue;
        }
        for (i = 0; i < cnt; i++) {
            if ((!is_stopping(p, &is_past) || !is_past) &&
                (stopping || !is_paused(p)))
                process(p, names[i],
                        pre.name != NULL && strcmp(pre.name, names[i]) == 0
                            ? &pre
                            : NULL,
                        i + 1 == cnt);
            er_free(names[i]);
        }
        er_bridge_preread_fini(&pre);
        if (is_stopping(p, &is_past) && is_past)
            break;
    }
    /* An answer is written even on a handover: it was forwarded. */
    flush_pending(p);
    /* A handover leaves what waits to the run's next owner. */
    if (!atomic_load(&p->is_handover))
        answer_the_rest(p);
    return NULL;
}

int er_bridge_poller_start(const struct er_bridge_queue_opts *opts,
                           struct er_bridge_poller **out, struct er_err *err)
{
    struct er_bridge_poller *p = er_calloc(1, sizeof(*p));

    *out = NULL;
    if (p == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
    p->exec = opts->exec;
    p->exec_arg = opts->exec_arg;
    p->queue_dir = er_strdup(opts->queue_dir);
    p->run_id = er_strdup(opts->run_id);
    p->gateway = opts->gateway != NULL ? er_strdup(opts->gateway) : NULL;
    p->fwd = opts->fwd;
    p->host_token = opts->host_token;
    p->may_forward = opts->may_forward;
    p->may_forward_arg = opts->may_forward_arg;
    p->max_body =
        opts->max_body > 0 ? opts->max_body : ER_BRIDGE_MAX_BODY_BYTES;
    p->poll_interval_ms = opts->poll_interval_ms > 0
                              ? opts->poll_interval_ms
                              : ER_BRIDGE_POLL_INTERVAL_MS;
    p->list_wait_ms =
        opts->list_wait_ms > 0 ? opts->list_wait_ms : ER_BRIDGE_LIST_WAIT_MS;
    p->iteration_timeout_ms = opts->iteration_timeout_ms > 0
                                  ? opts->iteration_timeout_ms
                                  : ER_BRIDGE_ITERATION_TIMEOUT_MS;
    er_buf_init(&p->pending_json, er_bridge_envelope_limit(p->max_body));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (p->queue_dir == NULL || p->run_id == NULL) {
        er_bridge_poller_stop(p, 0);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
    }
    if (pthread_create(&p->tid, NULL, poller_main, p) != 0) {
        p->tid = 0;
        er_bridge_poller_stop(p, 0);
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "cannot start the bridge's poller thread");
    }
    *out = p;
    return 0;
}

void er_bridge_poller_stop(struct er_bridge_poller *p, int64_t drain_ms)
{
    if (p == NULL)
        return;
    /* End a list wait first: the loop then sees the stop and drains. A
     * stop without drain (a handover) also aborts a forward in flight. */
    atomic_store(&p->cancel_list, true);
    if (drain_ms <= 0)
        atomic_store(&p->abort_forward, true);
    if (drain_ms < 0)
        atomic_store(&p->is_handover, true);
    pthread_mutex_lock(&p->mu);
    p->is_stopping = true;
    p->drain_deadline = er_time_mono_ms() + (drain_ms > 0 ? drain_ms : 0);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->tid != 0)
        pthread_join(p->tid, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    er_free(p->queue_dir);
    er_free(p->run_id);
    er_free(p->gateway);
    er_buf_fini(&p->pending_json);
    er_free(p);
}

void er_bridge_poller_stats(struct er_bridge_poller *p,
                            struct er_bridge_poller_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    pthread_mutex_unlock(&p->mu);
}
