/* forward: one bridged request, from the agent's envelope to the answer the
 * agent gets (upstream.md B6 steps 7-10, B8): the route allow-list, the
 * header allow-lists, the host credential in place of the bridge token,
 * libcurl on one reused connection to the configured origin and nowhere
 * else, the size limit, and the bridge's own answers for what fails. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>

#include "bridge/bridge.h"

#define ORIGIN_MAX 512
#define TRACE_MAX  55 /* a W3C version-00 traceparent */

struct er_bridge_fwd {
    CURL *curl;
    char origin[ORIGIN_MAX];
    const struct er_bridge_allow *allow;
    size_t max_body;
    int64_t timeout_ms;
    /* The trace is replaced while a request is forwarded (a later realize
     * of a kept bridge): a request copies it under trace_mu, whole. */
    pthread_mutex_t trace_mu;
    char trace[TRACE_MAX + 1]; /* "": none */
};

/* ================================================================
 * Setup
 * ================================================================ */

int er_bridge_origin_check(const char *origin, struct er_err *err)
{
    CURLU *u = curl_url();
    char *scheme = NULL;
    char *path = NULL;
    char *other = NULL;
    int rc = 0;

    if (u == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
    if (strlen(origin) >= ORIGIN_MAX ||
        curl_url_set(u, CURLUPART_URL, origin, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                        "ENVRUN_PAPERCLIP_API_URL: not an http(s) URL");
        goto out;
    }
    if ((curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK &&
         strcmp(path, "/") != 0) ||
        curl_url_get(u, CURLUPART_QUERY, &other, 0) == CURLUE_OK ||
        curl_url_get(u, CURLUPART_USER, &other, 0) == CURLUE_OK ||
        curl_url_get(u, CURLUPART_FRAGMENT, &other, 0) == CURLUE_OK)
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                        "ENVRUN_PAPERCLIP_API_URL: give the origin only "
                        "(scheme, host, port), no path, query or user");
out:
    curl_free(scheme);
    curl_free(path);
    curl_free(other);
    curl_url_cleanup(u);
    return rc;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

/* libcurl's global setup, once per process before the first handle (it is
 * not thread-safe on every build of libcurl). */
static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int er_bridge_fwd_new(const char *origin, const struct er_bridge_allow *allow,
                      size_t max_body, int64_t timeout_ms,
                      struct er_bridge_fwd **out, struct er_err *err)
{
    struct er_bridge_fwd *fwd;
    int rc;

    *out = NULL;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                          "libcurl cannot start: %s",
                          curl_easy_strerror(curl_init_rc));
    rc = er_bridge_origin_check(origin, err);
    if (rc != 0)
        return rc;
    fwd = er_calloc(1, sizeof(*fwd));
    if (fwd == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
    pthread_mutex_init(&fwd->trace_mu, NULL);
    fwd->curl = curl_easy_init();
    if (fwd->curl == NULL) {
        pthread_mutex_destroy(&fwd->trace_mu);
        er_free(fwd);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                          "cannot make a libcurl handle");
    }
    snprintf(fwd->origin, sizeof(fwd->origin), "%s", origin);
    fwd->allow = allow;
    fwd->max_body = max_body;
    fwd->timeout_ms = timeout_ms;
    *out = fwd;
    return 0;
}

static bool header_value_is_plain(const char *v);

void er_bridge_fwd_set_trace(struct er_bridge_fwd *fwd, const char *traceparent)
{
    char trace[TRACE_MAX + 1] = "";

    /* The W3C shape is the worker's check before a trace reaches a bridge
     * (bridge_host: er_traceparent_is_valid, in schemas/, which bridge/
     * does not link); here only what could split the request. */
    if (traceparent != NULL && strlen(traceparent) <= TRACE_MAX &&
        header_value_is_plain(traceparent))
        snprintf(trace, sizeof(trace), "%s", traceparent);
    pthread_mutex_lock(&fwd->trace_mu);
    memcpy(fwd->trace, trace, sizeof(trace));
    pthread_mutex_unlock(&fwd->trace_mu);
}

/* The trace as it is now, whole, into out. */
static void trace_get(struct er_bridge_fwd *fwd, char out[TRACE_MAX + 1])
{
    pthread_mutex_lock(&fwd->trace_mu);
    memcpy(out, fwd->trace, TRACE_MAX + 1);
    pthread_mutex_unlock(&fwd->trace_mu);
}

void er_bridge_fwd_free(struct er_bridge_fwd *fwd)
{
    if (fwd == NULL)
        return;
    curl_easy_cleanup(fwd->curl);
    pthread_mutex_destroy(&fwd->trace_mu);
    er_free(fwd);
}

static atomic_uint_fast64_t answered[ER_BRIDGE_COUNT_TRANSPORTS]
                                    [ER_BRIDGE_COUNT_CLASSES];

void er_bridge_fwd_count(enum er_bridge_count_transport transport, int status)
{
    int cls = status >= 100 && status <= 599 ? status / 100 - 1
                                             : ER_BRIDGE_COUNT_CLASSES - 1;

    ER_ASSERT((unsigned)transport < ER_BRIDGE_COUNT_TRANSPORTS);
    atomic_fetch_add_explicit(&answered[transport][cls], 1,
                              memory_order_relaxed);
}

uint64_t er_bridge_fwd_count_get(int transport, int status_class)
{
    ER_ASSERT(transport >= 0 && transport < ER_BRIDGE_COUNT_TRANSPORTS);
    ER_ASSERT(status_class >= 0 && status_class < ER_BRIDGE_COUNT_CLASSES);
    return atomic_load_explicit(&answered[transport][status_class],
                                memory_order_relaxed);
}

void er_bridge_res_fini(struct er_bridge_res *res)
{
    size_t i;

    for (i = 0; i < res->header_cnt * 2; i++)
        er_free(res->headers[i]);
    res->header_cnt = 0;
    er_buf_fini(&res->body);
}

/* ================================================================
 * The bridge's own answers
 * ================================================================ */

bool er_bridge_method_is_safe(const char *method)
{
    return method == NULL || method[0] == '\0' || strcmp(method, "GET") == 0 ||
           strcmp(method, "HEAD") == 0 || strcmp(method, "OPTIONS") == 0 ||
           strcmp(method, "TRACE") == 0;
}

static void res_header(struct er_bridge_res *res, const char *name,
                       const char *value, size_t value_len)
{
    if (res->header_cnt == ER_BRIDGE_RES_HEADERS_MAX)
        return;
    res->headers[2 * res->header_cnt] = er_strdup(name);
    res->headers[2 * res->header_cnt + 1] = er_strndup(value, value_len);
    if (res->headers[2 * res->header_cnt] == NULL ||
        res->headers[2 * res->header_cnt + 1] == NULL) {
        er_free(res->headers[2 * res->header_cnt]);
        er_free(res->headers[2 * res->header_cnt + 1]);
        res->headers[2 * res->header_cnt] = NULL;
        res->headers[2 * res->header_cnt + 1] = NULL;
        return;
    }
    res->header_cnt++;
}

/* Replace whatever res holds by the bridge's answer: status with a JSON
 * body {"error": message}, and for an indeterminate outcome (a mutation
 * may have been applied) the B6 step 10 header and fields. */
void er_bridge_res_error(struct er_bridge_res *res, int status,
                         const char *message, bool is_indeterminate)
{
    json_t *body = is_indeterminate
                       ? json_pack("{s:s, s:s, s:b}", "error", message,
                                   "outcome", "indeterminate", "retryable", 0)
                       : json_pack("{s:s}", "error", message);
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    /* The body's cap as it was, and never less than this message needs. */
    size_t max = res->body.max_len > 4096 ? res->body.max_len : 4096;

    json_decref(body);
    er_bridge_res_fini(res);
    er_buf_init(&res->body, max);
    res->status = status;
    res_header(res, "content-type", "application/json", 16);
    if (is_indeterminate)
        res_header(res, "x-paperclip-bridge-outcome", "indeterminate", 13);
    if (text == NULL || er_buf_append(&res->body, text, strlen(text)) != 0) {
        static const char fallback[] = "{\"error\":\"Bridge out of memory.\"}";

        er_buf_reset(&res->body);
        if (er_buf_append(&res->body, fallback, sizeof(fallback) - 1) != 0)
            res->status = 503; /* an empty body: no memory even for that */
    }
    free(text);
}

/* ================================================================
 * The transfer
 * ================================================================ */

struct xfer {
    struct er_bridge_fwd *fwd;
    struct er_bridge_res *res;
    const atomic_bool *abort;
    bool has_status;
    bool is_too_big;
};

/* Response headers: only the allow-listed ones of the final response, as
 * name and trimmed non-empty value. */
static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;
    const char *colon;
    const char *v;
    const char *end = p + len;
    char name[64];
    size_t name_len;

    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* A new response (after a 1xx): drop what an earlier one said. */
        size_t i;

        for (i = 0; i < x->res->header_cnt * 2; i++)
            er_free(x->res->headers[i]);
        x->res->header_cnt = 0;
        x->has_status = true;
        return len;
    }
    colon = memchr(p, ':', len);
    if (colon == NULL)
        return len;
    name_len = (size_t)(colon - p);
    if (name_len == 0 || name_len >= sizeof(name))
        return len;
    memcpy(name, p, name_len);
    name[name_len] = '\0';
    for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++)
        ;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' ||
                       end[-1] == '\t'))
        end--;
    if (strcasecmp(name, "content-length") == 0) {
        char num[24];
        size_t k = (size_t)(end - v) < sizeof(num) - 1 ? (size_t)(end - v)
                                                       : sizeof(num) - 1;

        memcpy(num, v, k);
        num[k] = '\0';
        if (strtoull(num, NULL, 10) > x->fwd->max_body) {
            x->is_too_big = true;
            return 0; /* stop before the body */
        }
        return len;
    }
    if (end > v && er_bridge_allow_response_header(x->fwd->allow, name)) {
        size_t i;

        for (i = 0; i < name_len; i++)
            name[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32
                                                              : name[i]);
        res_header(x->res, name, v, (size_t)(end - v));
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;

    if (x->res->body.len + len > x->fwd->max_body) {
        x->is_too_big = true;
        return 0;
    }
    if (er_buf_append(&x->res->body, p, len) != 0)
        return 0;
    return len;
}

static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut,
                       curl_off_t un)
{
    struct xfer *x = arg;

    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return x->abort != NULL && atomic_load(x->abort) ? 1 : 0;
}

/* The query as the gateway wrote it ("" or "?..."): printable ASCII with
 * no fragment. */
static bool query_is_plain(const char *q)
{
    for (; *q != '\0'; q++) {
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f || *q == '#')
            return false;
    }
    return true;
}

static bool header_value_is_plain(const char *v)
{
    for (; *v != '\0'; v++) {
        if (*v == '\r' || *v == '\n')
            return false;
    }
    return true;
}

/* Append the text of line (an er_buf keeps a NUL past its bytes) to
 * *list; false when out of memory. */
static bool slist_add(struct curl_slist **list, const struct er_buf *line)
{
    struct curl_slist *grown;

    grown = curl_slist_append(*list, (const char *)line->data);
    if (grown == NULL)
        return false;
    *list = grown;
    return true;
}

/* The request's headers for curl: the allow-listed ones with a value,
 * then the host's credential and the run id, and no Expect. NULL (and a
 * 400 in res) when a header value could split the request. */
static struct curl_slist *headers_for(struct er_bridge_fwd *fwd,
                                      const struct er_bridge_req *req,
                                      const struct er_secret *token,
                                      const char *run_id,
                                      struct er_bridge_res *res, bool *is_oom)
{
    struct curl_slist *list = NULL;
    struct curl_slist *grown;
    struct er_buf line;
    char trace[TRACE_MAX + 1];
    bool has_trace = false;
    size_t i;

    *is_oom = false;
    trace_get(fwd, trace);
    er_buf_init(&line, 16384);
    for (i = 0; i < req->header_cnt; i++) {
        const char *name = req->headers[2 * i];
        const char *value = req->headers[2 * i + 1];

        if (!er_bridge_allow_request_header(fwd->allow, name) ||
            value == NULL || value[strspn(value, " \t")] == '\0')
            continue;
        has_trace = has_trace || strcasecmp(name, "traceparent") == 0;
        if (!header_value_is_plain(value)) {
            er_bridge_res_error(res, 400, "Invalid bridge request payload.",
                                false);
            goto fail;
        }
        er_buf_reset(&line);
        if (er_buf_printf(&line, "%s: %s", name, value) != 0 ||
            !slist_add(&list, &line))
            goto oom;
    }
    er_buf_reset(&line);
    if (er_buf_append(&line, "authorization: Bearer ", 22) != 0 ||
        er_buf_append(&line, token->value, token->len) != 0 ||
        !slist_add(&list, &line))
        goto oom;
    er_buf_reset(&line);
    if (er_buf_printf(&line, "x-paperclip-run-id: %s", run_id) != 0 ||
        !slist_add(&list, &line))
        goto oom;
    er_buf_reset(&line);
    if (!has_trace && trace[0] != '\0' &&
        (er_buf_printf(&line, "traceparent: %s", trace) != 0 ||
         !slist_add(&list, &line)))
        goto oom;
    grown = curl_slist_append(list, "Expect:");
    if (grown == NULL)
        goto oom;
    er_wipe(line.data, line.len);
    er_buf_fini(&line);
    return grown;
oom:
    *is_oom = true;
fail:
    er_wipe(line.data, line.len);
    er_buf_fini(&line);
    /* The credential may be in the list: curl_slist_free_all does not wipe,
     * so wipe each entry first. */
    for (grown = list; grown != NULL; grown = grown->next)
        er_wipe(grown->data, strlen(grown->data));
    curl_slist_free_all(list);
    return NULL;
}

static void headers_free(struct curl_slist *list)
{
    struct curl_slist *p;

    for (p = list; p != NULL; p = p->next)
        er_wipe(p->data, strlen(p->data));
    curl_slist_free_all(list);
}

void er_bridge_handle(struct er_bridge_fwd *fwd,
                      const struct er_bridge_req *req,
                      const struct er_secret *token, const char *run_id,
                      const atomic_bool *abort, struct er_bridge_res *res)
{
    const char *method =
        req->method != NULL && req->method[0] != '\0' ? req->method : "GET";
    bool is_safe = er_bridge_method_is_safe(method);
    struct xfer x = { fwd, res, abort, false, false };
    struct curl_slist *headers = NULL;
    CURLU *url = NULL;
    CURL *c = fwd->curl;
    char msg[256];
    long status = 0;
    bool is_oom = false;
    bool is_aborted;
    CURLcode cc;

    memset(res, 0, sizeof(*res));
    er_buf_init(&res->body, fwd->max_body + 1);
    /* B6 step 7: the route, on the path alone. */
    if (!er_bridge_allow_route(fwd->allow, method, req->path)) {
        snprintf(msg, sizeof(msg), "Route not allowed: %.16s %.200s", method,
                 req->path != NULL ? req->path : "");
        er_bridge_res_error(res, 403, msg, false);
        return;
    }
    if (req->query != NULL && !query_is_plain(req->query)) {
        er_bridge_res_error(res, 400, "Invalid bridge request payload.", false);
        return;
    }
    headers = headers_for(fwd, req, token, run_id, res, &is_oom);
    if (headers == NULL) {
        if (is_oom)
            er_bridge_res_error(res, 503,
                                "Bridge host body capacity is busy. Retry "
                                "later.",
                                false);
        return;
    }
    /* The origin's scheme, host and port; only path and query are the
     * agent's, so the request cannot go anywhere else. */
    url = curl_url();
    if (url == NULL ||
        curl_url_set(url, CURLUPART_URL, fwd->origin, 0) != CURLUE_OK ||
        curl_url_set(url, CURLUPART_PATH, req->path, 0) != CURLUE_OK ||
        (req->query != NULL && req->query[0] == '?' && req->query[1] != '\0' &&
         curl_url_set(url, CURLUPART_QUERY, req->query + 1, 0) != CURLUE_OK)) {
        er_bridge_res_error(res, 400, "Invalid bridge request payload.", false);
        goto out;
    }
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_CURLU, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)fwd->timeout_ms);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &x);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)req->body_len);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS,
                         req->body != NULL ? (const char *)req->body : "");
    }
    cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (cc == CURLE_OK && status >= 100 && status <= 999) {
        res->status = (int)status;
        goto out;
    }
    if (x.is_too_big)
        snprintf(msg, sizeof(msg),
                 "Bridge response body exceeded the configured size limit "
                 "of %zu bytes.",
                 fwd->max_body);
    else if (cc == CURLE_ABORTED_BY_CALLBACK)
        snprintf(msg, sizeof(msg), "Bridge request was aborted.");
    else
        snprintf(msg, sizeof(msg), "Bridge forward failed: %s",
                 curl_easy_strerror(cc));
    /* A mutation that may have reached the API, or any request the worker
     * gave up on, must not be retried: 504 indeterminate (the gateway
     * answers the agent 409). Otherwise a safe method is plainly 502. */
    is_aborted = abort != NULL && atomic_load(abort);
    er_bridge_res_error(res, is_safe && !is_aborted ? 502 : 504, msg,
                        !is_safe || is_aborted);
out:
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(c, CURLOPT_CURLU, NULL);
    curl_url_cleanup(url);
    headers_free(headers);
}
