/* plugin_call: the JSON-RPC 2.0 traffic with a plugin's worker (upstream.md
 * A3, A5, A8) and the callers' API: the queue of lines for its stdin, the
 * calls waiting for their answers, the framing of its stdout and stderr
 * and the routing of what it says (scrubbed of its secrets by
 * plugin_redact.c), and er_plugin_call. Thread-safe: the queue and the
 * calls are under plugin->mu; the reading runs on the plugin's supervisor
 * thread (plugin_host.c). */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "drivers/plugin_host_int.h"

#define FAC "driver.plugin"

/* A line buffer grown past this is freed after its line. */
#define KEEP_LINE_BYTES    (1024u * 1024u)
#define MAX_RPC_TIMEOUT_MS 2147483647
#define RPC_UNKNOWN        (-32099) /* A5: an error answer without a code */
/* How often a waiting caller checks its cancellation flag. */
#define CANCEL_POLL_MS     100

/* ================================================================
 * The outbound queue (under plugin->mu)
 * ================================================================ */

struct er_plugin_outmsg *er_plugin__outmsg_new(const char *head,
                                               size_t head_len,
                                               const char *body,
                                               size_t body_len)
{
    struct er_plugin_outmsg *msg =
        er_malloc(sizeof(*msg) + head_len + body_len);

    if (msg == NULL)
        return NULL;
    msg->next = NULL;
    msg->call = NULL;
    msg->len = head_len + body_len;
    msg->off = 0;
    memcpy(msg->data, head, head_len);
    memcpy(msg->data + head_len, body, body_len);
    return msg;
}

void er_plugin__out_push(struct er_plugin *plugin, struct er_plugin_outmsg *msg)
{
    if (plugin->out_tail != NULL)
        plugin->out_tail->next = msg;
    else
        plugin->out_head = msg;
    plugin->out_tail = msg;
}

static void out_drop_head(struct er_plugin *plugin)
{
    struct er_plugin_outmsg *msg = plugin->out_head;

    plugin->out_head = msg->next;
    if (plugin->out_head == NULL)
        plugin->out_tail = NULL;
    if (msg->call != NULL)
        msg->call->out = NULL;
    er_free(msg);
}

static void out_clear(struct er_plugin *plugin)
{
    while (plugin->out_head != NULL)
        out_drop_head(plugin);
}

/* Take a call's line out of the queue if none of it was written yet. */
static void out_withdraw(struct er_plugin *plugin, struct er_plugin_call *call)
{
    struct er_plugin_outmsg *prev = NULL;
    struct er_plugin_outmsg *msg;

    for (msg = plugin->out_head; msg != NULL; prev = msg, msg = msg->next) {
        if (msg->call != call)
            continue;
        if (msg->off != 0) {
            msg->call = NULL; /* half sent: the rest must follow */
            break;
        }
        if (prev != NULL)
            prev->next = msg->next;
        else
            plugin->out_head = msg->next;
        if (plugin->out_tail == msg)
            plugin->out_tail = prev;
        er_free(msg);
        break;
    }
    call->out = NULL;
}

/* Queue a complete line (NUL-terminated text) from the host itself. */
void er_plugin__out_push_text(struct er_plugin *plugin, const char *text)
{
    struct er_plugin_outmsg *msg =
        er_plugin__outmsg_new(text, strlen(text), "\n", 1);

    if (msg == NULL) {
        er_log_kv(ER_LOG_ERROR, FAC, "out of memory queueing a message",
                  "plugin", plugin->key, NULL);
        return;
    }
    er_plugin__out_push(plugin, msg);
}

/* Write what the worker's stdin takes now. */
void er_plugin__out_flush(struct er_plugin *plugin, struct er_plugin_proc *proc)
{
    while (plugin->out_head != NULL && !proc->is_in_broken) {
        struct er_plugin_outmsg *msg = plugin->out_head;
        ssize_t n =
            write(proc->in_fd, msg->data + msg->off, msg->len - msg->off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0) {
            /* EPIPE: the worker closed its stdin; its exit follows and
             * fails the calls still waiting. */
            proc->is_in_broken = true;
            out_clear(plugin);
            return;
        }
        msg->off += (size_t)n;
        if (msg->off == msg->len)
            out_drop_head(plugin);
    }
}

/* ================================================================
 * Calls (under plugin->mu)
 * ================================================================ */

static struct er_plugin_call *call_find(struct er_plugin *plugin, int64_t id)
{
    struct er_plugin_call *call;

    for (call = plugin->calls; call != NULL; call = call->next) {
        if (call->id == id && !call->is_done)
            return call;
    }
    return NULL;
}

static void call_unlink(struct er_plugin *plugin, struct er_plugin_call *call)
{
    struct er_plugin_call **pp;

    for (pp = &plugin->calls; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == call) {
            *pp = call->next;
            break;
        }
    }
}

static void call_fail(struct er_plugin_call *call, int code,
                      const char *message, const char *excerpt)
{
    call->is_done = true;
    call->rpc_code = code;
    call->message = er_strdup(message);
    if (excerpt != NULL && excerpt[0] != '\0')
        call->excerpt = er_strdup(excerpt);
}

/* ================================================================
 * Messages from the worker
 * ================================================================ */

static void error_fields(const json_t *error, int *code, const char **message)
{
    const json_t *c = json_object_get(error, "code");
    const json_t *m = json_object_get(error, "message");

    *code = RPC_UNKNOWN;
    if (json_is_integer(c) && json_integer_value(c) != 0 &&
        json_integer_value(c) >= INT_MIN && json_integer_value(c) <= INT_MAX)
        *code = (int)json_integer_value(c);
    *message = json_is_string(m) ? json_string_value(m)
                                 : "Worker returned an error without a message";
}

/* The answer to initialize (mu held). */
static void init_answered(struct er_plugin *plugin, struct er_plugin_proc *proc,
                          json_t *msg)
{
    const json_t *error = json_object_get(msg, "error");
    json_t *result = json_object_get(msg, "result");
    json_t *methods = json_object_get(result, "supportedMethods");
    const char *reason;
    int code;

    if (error != NULL && !json_is_null(error)) {
        char *clean;

        error_fields(error, &code, &reason);
        clean = er_plugin__scrub_dup(plugin, reason);
        er_plugin__init_fail(plugin, proc,
                             clean != NULL ? clean : "out of memory");
        er_free(clean);
        return;
    }
    if (!json_is_true(json_object_get(result, "ok"))) {
        er_plugin__init_fail(plugin, proc,
                             "Worker initialize returned ok=false");
        return;
    }
    proc->init_id = 0;
    json_decref(plugin->supported);
    plugin->supported = er_plugin__is_string_array(methods, SIZE_MAX)
                            ? json_incref(methods)
                            : json_array();
    /* Detached, so freeing msg never touches what callers read. */
    json_object_del(result, "supportedMethods");
    plugin->status = ER_PLUGIN_RUNNING;
    plugin->crash_cnt = 0;
    pthread_cond_broadcast(&plugin->cond);
    er_log_kv(ER_LOG_INFO, FAC, "plugin worker running", "plugin", plugin->key,
              NULL);
}

static void on_response(struct er_plugin *plugin, struct er_plugin_proc *proc,
                        json_t *msg)
{
    const json_t *id = json_object_get(msg, "id");
    const json_t *error = json_object_get(msg, "error");
    const char *message;
    struct er_plugin_call *call;
    int64_t n;
    int code;

    if (!json_is_integer(id)) {
        /* id null: the worker could not parse a line of ours (A3). */
        error_fields(error, &code, &message);
        er_log(ER_LOG_WARN, FAC, "worker of %s answered id %s with error %d",
               plugin->key, json_is_null(id) ? "null" : "(not a number)", code);
        return;
    }
    n = (int64_t)json_integer_value(id);
    pthread_mutex_lock(&plugin->mu);
    if (n == proc->init_id && plugin->status == ER_PLUGIN_STARTING) {
        init_answered(plugin, proc, msg);
    } else if (n == proc->shutdown_id && proc->stop == ER_PLUGIN_STOP_DRAIN) {
        proc->stop = ER_PLUGIN_STOP_GRACE;
        proc->stop_deadline_ms = er_plugin__now_ms() + ER_PLUGIN_EXIT_GRACE_MS;
    } else {
        call = call_find(plugin, n);
        if (call == NULL) {
            er_log(ER_LOG_WARN, FAC,
                   "received response for unknown request id %" PRId64
                   " from the worker of %s",
                   n, plugin->key);
        } else if (error != NULL && !json_is_null(error)) {
            char *clean;

            error_fields(error, &code, &message);
            clean = er_plugin__scrub_dup(plugin, message);
            call_fail(call, code,
                      clean != NULL ? clean
                                    : "Worker returned an error (its message "
                                      "is dropped: out of memory)",
                      NULL);
            er_free(clean);
        } else {
            json_t *result = json_object_get(msg, "result");

            call->is_done = true;
            call->result = result != NULL ? json_incref(result) : json_null();
            /* Detached before the caller sees it: from here on only the
             * caller touches the result (jansson objects are not
             * thread-safe beyond their reference counts). */
            json_object_del(msg, "result");
        }
        pthread_cond_broadcast(&plugin->cond);
    }
    pthread_mutex_unlock(&plugin->mu);
}

/* A request from the worker (A8): span.record gets null, anything else
 * -32601. */
static void on_request(struct er_plugin *plugin, json_t *id, const char *method)
{
    char message[256];
    json_t *answer;
    char *text;

    if (strcmp(method, "span.record") == 0) {
        answer =
            json_pack("{s:s, s:O, s:n}", "jsonrpc", "2.0", "id", id, "result");
    } else {
        snprintf(message, sizeof(message), "Host does not handle method \"%s\"",
                 method);
        answer = json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id",
                           id, "error", "code", ER_RPC_METHOD_NOT_FOUND,
                           "message", message);
    }
    text = answer != NULL ? json_dumps(answer, JSON_COMPACT) : NULL;
    json_decref(answer);
    if (text == NULL)
        return;
    pthread_mutex_lock(&plugin->mu);
    er_plugin__out_push_text(plugin, text);
    pthread_mutex_unlock(&plugin->mu);
    free(text); /* from json_dumps */
}

static void on_notification(struct er_plugin *plugin, const char *method,
                            const json_t *params)
{
    const char *level;
    const char *message;
    enum er_log_level lv = ER_LOG_INFO;
    char *clean;
    char text[3000];

    /* execute.log chunks have no live sink here (the call's result carries
     * the whole output); streams.* and the rest are UI traffic (A8). */
    if (strcmp(method, "log") != 0)
        return;
    level = json_string_value(json_object_get(params, "level"));
    message = json_string_value(json_object_get(params, "message"));
    if (message == NULL)
        return;
    if (level != NULL && strcmp(level, "debug") == 0)
        lv = ER_LOG_DEBUG;
    else if (level != NULL && strcmp(level, "warn") == 0)
        lv = ER_LOG_WARN;
    else if (level != NULL && strcmp(level, "error") == 0)
        lv = ER_LOG_ERROR;
    pthread_mutex_lock(&plugin->mu);
    clean = er_plugin__scrub_dup(plugin, message);
    pthread_mutex_unlock(&plugin->mu);
    if (clean == NULL) {
        er_log_kv(ER_LOG_WARN, FAC,
                  "a log message of the worker is dropped: out of memory",
                  "plugin", plugin->key, NULL);
        return;
    }
    snprintf(text, sizeof(text), "[plugin] %s", clean);
    er_free(clean);
    er_log_kv(lv, FAC, text, "plugin", plugin->key, NULL);
}

/* One stdout line (A3): classify and route it. */
static void on_line(struct er_plugin *plugin, struct er_plugin_proc *proc,
                    char *line, size_t len)
{
    json_error_t jerr;
    json_t *msg;
    json_t *id;
    const json_t *method;
    char bytes[24];

    while (len > 0 && line[len - 1] == '\r')
        len--;
    line[len] = '\0';
    if (er_plugin__is_blank(line))
        return;
    msg = json_loadb(line, len, 0, &jerr);
    if (msg == NULL || !json_is_object(msg) ||
        !json_is_string(json_object_get(msg, "jsonrpc")) ||
        strcmp(json_string_value(json_object_get(msg, "jsonrpc")), "2.0") !=
            0) {
        /* Never the text: a plugin's stray output may hold anything. */
        snprintf(bytes, sizeof(bytes), "%zu", len);
        er_log_kv(ER_LOG_WARN, FAC, "unparseable message from worker", "plugin",
                  plugin->key, "bytes", bytes, NULL);
        json_decref(msg);
        return;
    }
    id = json_object_get(msg, "id");
    method = json_object_get(msg, "method");
    if (id != NULL && (json_object_get(msg, "result") != NULL ||
                       json_object_get(msg, "error") != NULL))
        on_response(plugin, proc, msg);
    else if (json_is_string(method) && id != NULL && !json_is_null(id))
        on_request(plugin, id, json_string_value(method));
    else if (json_is_string(method) && id == NULL)
        on_notification(plugin, json_string_value(method),
                        json_object_get(msg, "params"));
    else
        er_log_kv(ER_LOG_WARN, FAC, "unclassifiable message from worker",
                  "plugin", plugin->key, NULL);
    json_decref(msg);
}

static void out_take(struct er_plugin *plugin, struct er_plugin_proc *proc,
                     const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t seg = nl != NULL ? (size_t)(nl - p) : n;

        if (!proc->is_skipping && er_buf_append(&proc->line, p, seg) != 0) {
            er_log(ER_LOG_WARN, FAC,
                   "dropping a message from the worker of %s: longer than "
                   "%u bytes",
                   plugin->key, ER_PLUGIN_MAX_LINE_BYTES);
            proc->is_skipping = true;
            er_buf_fini(&proc->line);
        }
        if (nl == NULL)
            break;
        if (!proc->is_skipping && proc->line.data != NULL)
            on_line(plugin, proc, (char *)proc->line.data, proc->line.len);
        proc->is_skipping = false;
        if (proc->line.cap > KEEP_LINE_BYTES)
            er_buf_fini(&proc->line);
        else
            er_buf_reset(&proc->line);
        p = nl + 1;
        n -= seg + 1;
    }
}

static void err_line_flush(struct er_plugin *plugin,
                           struct er_plugin_proc *proc)
{
    char text[ER_PLUGIN_STDERR_LINE_BYTES + 32];
    size_t n = proc->err_line_len;

    while (n > 0 && proc->err_line[n - 1] == '\r')
        n--;
    proc->err_line_len = 0;
    if (n == 0)
        return;
    snprintf(text, sizeof(text), "[plugin stderr] %.*s", (int)n,
             proc->err_line);
    er_log_kv(ER_LOG_INFO, FAC, text, "plugin", plugin->key, NULL);
}

/* Scrubbed stderr: keep its tail, log it line by line. */
static void err_pass(struct er_plugin *plugin, struct er_plugin_proc *proc,
                     const char *p, size_t n)
{
    size_t i;

    /* The tail for failure messages: the last ER_PLUGIN_STDERR_TAIL_BYTES. */
    if (n >= ER_PLUGIN_STDERR_TAIL_BYTES) {
        memcpy(proc->tail, p + n - ER_PLUGIN_STDERR_TAIL_BYTES,
               ER_PLUGIN_STDERR_TAIL_BYTES);
        proc->tail_len = ER_PLUGIN_STDERR_TAIL_BYTES;
    } else {
        if (proc->tail_len + n > ER_PLUGIN_STDERR_TAIL_BYTES) {
            size_t drop = proc->tail_len + n - ER_PLUGIN_STDERR_TAIL_BYTES;

            memmove(proc->tail, proc->tail + drop, proc->tail_len - drop);
            proc->tail_len -= drop;
        }
        memcpy(proc->tail + proc->tail_len, p, n);
        proc->tail_len += n;
    }
    for (i = 0; i < n; i++) {
        if (p[i] == '\n') {
            err_line_flush(plugin, proc);
            continue;
        }
        if (proc->err_line_len == sizeof(proc->err_line))
            err_line_flush(plugin, proc);
        proc->err_line[proc->err_line_len++] = p[i];
    }
}

/* n bytes p of stderr (is_final: the worker is gone, nothing more comes):
 * scrubbed before anything else sees them. */
static void err_take(struct er_plugin *plugin, struct er_plugin_proc *proc,
                     const char *p, size_t n, bool is_final)
{
    struct er_buf out;
    int rc;

    /* At most what is held back and the chunk, each run of four bytes or
     * more become ten. */
    er_buf_init(&out,
                3 * (ER_PLUGIN_SECRET_FORM_MAX_BYTES + ER_PLUGIN_READ_CHUNK));
    pthread_mutex_lock(&plugin->mu);
    rc = er_plugin__err_scrub(plugin, proc, p, n, is_final, &out);
    pthread_mutex_unlock(&plugin->mu);
    if (rc != 0) {
        /* Nothing that may hold a secret is passed on. */
        er_plugin__err_pend_fini(proc);
        er_log_kv(ER_LOG_WARN, FAC,
                  "stderr of the worker is dropped: out of memory", "plugin",
                  plugin->key, NULL);
    } else if (out.len > 0) {
        err_pass(plugin, proc, (const char *)out.data, out.len);
    }
    er_buf_fini(&out);
}

void er_plugin__err_finish(struct er_plugin *plugin,
                           struct er_plugin_proc *proc)
{
    err_take(plugin, proc, "", 0, true);
    err_line_flush(plugin, proc);
}

/* Read what fd has now, at most max_reads chunks (so a flood on one pipe
 * cannot starve the others); returns true at EOF. */
bool er_plugin__drain(struct er_plugin *plugin, struct er_plugin_proc *proc,
                      int fd, bool is_out, size_t max_reads)
{
    size_t i;

    for (i = 0; i < max_reads; i++) {
        ssize_t n = read(fd, proc->buf, sizeof(proc->buf));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno != EAGAIN && errno != EWOULDBLOCK;
        if (n == 0)
            return true;
        if (is_out)
            out_take(plugin, proc, proc->buf, (size_t)n);
        else
            err_take(plugin, proc, proc->buf, (size_t)n, false);
    }
    return false;
}

/* The stderr tail, trimmed, for failure messages; owned, may be NULL. */
static char *tail_excerpt(const struct er_plugin_proc *proc)
{
    size_t start = 0;
    size_t end = proc->tail_len;

    while (start < end && ((unsigned char)proc->tail[start] & 0xc0) == 0x80)
        start++;
    while (start < end &&
           (proc->tail[start] == ' ' || proc->tail[start] == '\n' ||
            proc->tail[start] == '\r' || proc->tail[start] == '\t'))
        start++;
    while (end > start &&
           (proc->tail[end - 1] == ' ' || proc->tail[end - 1] == '\n' ||
            proc->tail[end - 1] == '\r' || proc->tail[end - 1] == '\t'))
        end--;
    if (end == start)
        return NULL;
    return er_strndup(proc->tail + start, end - start);
}

/* The worker is gone: fail every waiting call at once (A5, A7). */
void er_plugin__proc_finish(struct er_plugin *plugin,
                            struct er_plugin_proc *proc)
{
    char message[96];
    char sig[16] = "null";
    char code[16] = "null";
    char *excerpt = tail_excerpt(proc);
    struct er_plugin_call *call;
    bool is_stopping;

    if (proc->exit_code >= 0)
        snprintf(code, sizeof(code), "%d", proc->exit_code);
    if (proc->exit_sig > 0)
        er_proc_signal_name(proc->exit_sig, sig, sizeof(sig));
    snprintf(message, sizeof(message),
             "Worker process exited (code=%s, signal=%s)", code, sig);
    pthread_mutex_lock(&plugin->mu);
    /* The tail was scrubbed as it came; again for a secret noted since. */
    if (excerpt != NULL) {
        char *clean = er_plugin__scrub_dup(plugin, excerpt);

        er_free(excerpt);
        excerpt = clean;
    }
    is_stopping = proc->stop != ER_PLUGIN_STOP_NONE;
    plugin->status = ER_PLUGIN_CRASHED;
    plugin->pid = 0;
    json_decref(plugin->supported);
    plugin->supported = NULL;
    out_clear(plugin);
    for (call = plugin->calls; call != NULL; call = call->next) {
        if (!call->is_done)
            call_fail(call, ER_RPC_WORKER_UNAVAILABLE, message, excerpt);
    }
    /* Nothing more is read from this worker, which took its secrets with
     * it; those noted for a call not yet queued stay. */
    er_plugin__secrets_wipe(plugin, false);
    pthread_cond_broadcast(&plugin->cond);
    pthread_mutex_unlock(&plugin->mu);
    er_log_kv(is_stopping ? ER_LOG_INFO : ER_LOG_WARN, FAC,
              is_stopping ? "plugin worker stopped" : "plugin worker exited",
              "plugin", plugin->key, "code", code, "signal", sig, NULL);
    er_free(excerpt);
    er_plugin__close_fd(&proc->in_fd);
    er_plugin__close_fd(&proc->out_fd);
    er_plugin__close_fd(&proc->err_fd);
    er_buf_fini(&proc->line);
    er_plugin__err_pend_fini(proc);
}

/* ================================================================
 * Callers
 * ================================================================ */

static int not_registered(const char *provider, struct er_err *err)
{
    char sbuf[96];

    return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                      "Sandbox provider \"%s\" is not registered as a "
                      "built-in provider and no matching plugin is "
                      "available.",
                      er_plugin__shown(provider, sbuf, sizeof(sbuf)));
}

/* The part of a request line after its id (A3): method, params, the
 * invocation scope when params.companyId is a non-blank string, "}\n".
 * 0 with *tail (owned, er_free) and *len, or ER_ENOMEM, ER_E2BIG. */
static int request_tail(const char *method, const json_t *params, char **tail,
                        size_t *len, struct er_err *err)
{
    const json_t *company = json_object_get(params, "companyId");
    char *method_text = NULL;
    char *params_text = NULL;
    char *company_text = NULL;
    json_t *m = json_string(method);
    struct er_buf buf;
    char uuid[37];
    int rc = ER_ENOMEM;

    er_buf_init(&buf, ER_PLUGIN_MAX_LINE_BYTES);
    method_text = m != NULL ? json_dumps(m, JSON_ENCODE_ANY) : NULL;
    params_text = params != NULL
                      ? json_dumps(params, JSON_COMPACT | JSON_ENCODE_ANY)
                      : NULL;
    if (method_text == NULL || (params != NULL && params_text == NULL))
        goto out;
    rc = er_buf_printf(&buf, ",\"method\":%s,\"params\":", method_text);
    if (rc == 0)
        rc = params_text != NULL
                 ? er_buf_append(&buf, params_text, strlen(params_text))
                 : er_buf_append(&buf, "{}", 2);
    if (rc == 0 && json_is_string(company) &&
        !er_plugin__is_blank(json_string_value(company))) {
        company_text = json_dumps(company, JSON_ENCODE_ANY);
        rc = company_text != NULL && er_uuid_v4(uuid) == 0 ? 0 : ER_ENOMEM;
        if (rc == 0)
            rc = er_buf_printf(&buf,
                               ",\"paperclipInvocation\":{\"id\":\"%s\","
                               "\"scope\":{\"companyId\":%s}}",
                               uuid, company_text);
    }
    if (rc == 0)
        rc = er_buf_append(&buf, "}\n", 2);
    if (rc == 0)
        *tail = (char *)er_buf_take(&buf, len);
out:
    if (rc == ER_E2BIG)
        er_err_set(err, rc, ER_ERRCLASS_NONE,
                   "RPC call \"%s\" is over %u bytes", method,
                   ER_PLUGIN_MAX_LINE_BYTES);
    else if (rc != 0)
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    json_decref(m);
    free(method_text); /* json_dumps results */
    free(params_text);
    free(company_text);
    er_buf_fini(&buf);
    return rc == 0 ? 0 : rc == ER_E2BIG ? ER_E2BIG : ER_ENOMEM;
}

/* err->msg for a call that failed with message and maybe the worker's
 * stderr: the excerpt is cut from the front to fit the message buffer, so
 * its end (the latest lines) is what shows. */
static int call_err(struct er_err *err, enum er_errclass cls,
                    const char *message, const char *excerpt)
{
    static const char sep[] = "\n\nWorker stderr:\n";
    size_t used = strlen(message) + strlen(sep);
    size_t room = used < ER_ERR_MSG_MAX - 1 ? ER_ERR_MSG_MAX - 1 - used : 0;
    size_t n;

    if (excerpt == NULL || room < 16)
        return er_err_set(err, ER_EDRIVER, cls, "%s", message);
    n = strlen(excerpt);
    if (n > room) {
        excerpt += n - room;
        while (((unsigned char)*excerpt & 0xc0) == 0x80)
            excerpt++;
    }
    return er_err_set(err, ER_EDRIVER, cls, "%s%s%s", message, sep, excerpt);
}

int er_plugin_call(const char *provider, const char *method,
                   const json_t *params, int64_t timeout_ms,
                   struct er_plugin_reply *reply, struct er_err *err)
{
    struct er_plugin *plugin = NULL;
    struct er_plugin_outmsg *msg = NULL;
    struct er_plugin_call call;
    char head[64];
    char *tail = NULL;
    size_t tail_len = 0;
    bool is_cancelled = false;
    int64_t deadline;
    int head_len;
    int rc = 0;

    ER_ASSERT(provider != NULL && method != NULL && reply != NULL);
    reply->result = NULL;
    reply->rpc_code = 0;
    memset(&call, 0, sizeof(call));
    if (!er_plugin__host_enter())
        return not_registered(provider, err);
    plugin = er_plugin__for(provider);
    if (plugin == NULL) {
        rc = not_registered(provider, err);
        goto out;
    }
    rc = request_tail(method, params, &tail, &tail_len, err);
    if (rc != 0)
        goto out;
    /* A6: a timeout only stops the wait; an explicit one is honoured as
     * given, within 1 .. 2^31-1 ms. */
    if (timeout_ms <= 0)
        timeout_ms = ER_PLUGIN_DEFAULT_TIMEOUT_MS;
    if (timeout_ms > MAX_RPC_TIMEOUT_MS)
        timeout_ms = MAX_RPC_TIMEOUT_MS;

    pthread_mutex_lock(&plugin->mu);
    rc = er_plugin__wait_running(plugin, provider, err);
    /* In the same hold of mu as the queueing: the worker the call goes to
     * cannot exit in between. */
    er_plugin__secrets_hand_over(plugin);
    if (rc != 0) {
        pthread_mutex_unlock(&plugin->mu);
        reply->rpc_code = ER_RPC_WORKER_UNAVAILABLE;
        goto out;
    }
    call.id = plugin->next_id++;
    head_len = snprintf(head, sizeof(head),
                        "{\"jsonrpc\":\"2.0\",\"id\":%" PRId64, call.id);
    msg = er_plugin__outmsg_new(head, (size_t)head_len, tail, tail_len);
    if (msg == NULL) {
        pthread_mutex_unlock(&plugin->mu);
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
        goto out;
    }
    msg->call = &call;
    call.out = msg;
    er_plugin__out_push(plugin, msg);
    call.next = plugin->calls;
    plugin->calls = &call;
    er_plugin__wake(plugin);
    deadline = er_plugin__now_ms() + timeout_ms;
    while (!call.is_done) {
        int64_t now = er_plugin__now_ms();

        if (now >= deadline)
            break;
        if (er_proc_is_cancelled()) {
            is_cancelled = true;
            break;
        }
        er_plugin__cond_wait_until(plugin, now + CANCEL_POLL_MS < deadline
                                               ? now + CANCEL_POLL_MS
                                               : deadline);
    }
    call_unlink(plugin, &call);
    if (call.out != NULL)
        out_withdraw(plugin, &call);
    pthread_mutex_unlock(&plugin->mu);

    if (call.is_done && call.rpc_code == 0) {
        reply->result = call.result;
        call.result = NULL;
    } else if (call.is_done) {
        reply->rpc_code = call.rpc_code;
        rc = call_err(
            err,
            call.rpc_code == ER_RPC_WORKER_UNAVAILABLE ? ER_ERRCLASS_RETRY
                                                       : ER_ERRCLASS_NONE,
            call.message != NULL ? call.message : "Worker returned an error",
            call.excerpt);
    } else if (is_cancelled) {
        reply->rpc_code = ER_RPC_TIMEOUT;
        rc = er_err_set(err, ER_ECANCELED, ER_ERRCLASS_RETRY,
                        "RPC call \"%s\" cancelled", method);
    } else {
        reply->rpc_code = ER_RPC_TIMEOUT;
        rc = er_err_set(err, ER_EDRIVER, ER_ERRCLASS_RETRY,
                        "RPC call \"%s\" timed out after %" PRId64 "ms", method,
                        timeout_ms);
    }
out:
    json_decref(call.result);
    er_free(call.message);
    er_free(call.excerpt);
    er_free(tail);
    er_plugin__host_leave();
    return rc;
}

void er_plugin_reply_fini(struct er_plugin_reply *reply)
{
    if (reply == NULL)
        return;
    json_decref(reply->result);
    reply->result = NULL;
    reply->rpc_code = 0;
}

bool er_plugin_host_has_provider(const char *provider, const char **plugin_key)
{
    struct er_plugin *plugin;

    if (!er_plugin__host_enter())
        return false;
    plugin = er_plugin__for(provider);
    if (plugin != NULL && plugin_key != NULL)
        *plugin_key = plugin->key;
    er_plugin__host_leave();
    return plugin != NULL;
}

bool er_plugin_host_supports(const char *provider, const char *method)
{
    struct er_plugin *plugin;
    bool is_supported = false;
    size_t i;
    json_t *item;

    if (!er_plugin__host_enter())
        return false;
    plugin = er_plugin__for(provider);
    if (plugin != NULL) {
        pthread_mutex_lock(&plugin->mu);
        if (er_plugin__wait_running(plugin, provider, NULL) == 0) {
            json_array_foreach(plugin->supported, i, item)
            {
                if (strcmp(json_string_value(item), method) == 0)
                    is_supported = true;
            }
        }
        pthread_mutex_unlock(&plugin->mu);
    }
    er_plugin__host_leave();
    return is_supported;
}
