/* gwenvelope: the bridge envelopes of upstream.md B3 without holding a
 * body: the request envelope is written as the body streams in (JSON text
 * or base64), the response envelope is read in two passes (pass one keeps
 * status, headers and the body's offset; pass two decodes the body from
 * that offset). Caller-owned state only; thread-compatible. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridge/gateway/gateway_int.h"

/* ================================================================
 * Sink
 * ================================================================ */

void er_gwsink_init(struct er_gwsink *sink, int fd, char *buf, size_t cap)
{
    sink->fd = fd;
    sink->buf = buf;
    sink->len = 0;
    sink->cap = cap;
    sink->total = 0;
    sink->err = 0;
}

int er_gwsink_flush(struct er_gwsink *sink)
{
    size_t off = 0;

    while (sink->err == 0 && off < sink->len) {
        ssize_t n = write(sink->fd, sink->buf + off, sink->len - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            sink->err = n < 0 ? errno : EIO;
            break;
        }
        off += (size_t)n;
    }
    sink->len = 0;
    return sink->err;
}

void er_gwsink_put(struct er_gwsink *sink, const void *p, size_t n)
{
    const char *s = p;

    sink->total += n;
    while (n > 0 && sink->err == 0) {
        size_t room = sink->cap - sink->len;

        if (room == 0) {
            er_gwsink_flush(sink);
            continue;
        }
        if (room > n)
            room = n;
        memcpy(sink->buf + sink->len, s, room);
        sink->len += room;
        s += room;
        n -= room;
    }
}

void er_gwsink_puts(struct er_gwsink *sink, const char *s)
{
    er_gwsink_put(sink, s, strlen(s));
}

/* The inside of a JSON string: s escaped, no quotes. */
static void sink_escape(struct er_gwsink *sink, const char *s, size_t len,
                        bool is_latin1)
{
    struct er_gwjson_utf8 u8 = { 0 };
    uint8_t rep[8];
    char esc[6];
    size_t i, j, n;

    for (i = 0; i < len; i++) {
        n = er_gwjson_text_byte(&u8, (uint8_t)s[i], is_latin1, rep);
        for (j = 0; j < n; j++)
            er_gwsink_put(sink, esc, er_gwjson_escape_byte(rep[j], esc));
    }
    n = er_gwjson_utf8_end(&u8, rep);
    er_gwsink_put(sink, rep, n);
}

void er_gwsink_quote(struct er_gwsink *sink, const char *s, size_t len,
                     bool is_latin1)
{
    er_gwsink_put(sink, "\"", 1);
    sink_escape(sink, s, len, is_latin1);
    er_gwsink_put(sink, "\"", 1);
}

/* ================================================================
 * Request envelope
 * ================================================================ */

static const char *const allowed_headers[] = {
    "accept",
    "content-type",
    "if-match",
    "if-none-match",
    "x-paperclip-github-capability",
};

bool er_gwenvelope_header_allowed(const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < sizeof(allowed_headers) / sizeof(allowed_headers[0]); i++) {
        if (er_gwhttp_eq_nocase(name, len, allowed_headers[i]))
            return true;
    }
    return false;
}

/* The headers object: allow-listed names in order of first appearance,
 * lower-cased; repeats joined with ", " as Node's req.headers joins them,
 * except content-type, whose first value wins there. */
static void write_headers(struct er_gwsink *sink,
                          const struct er_gwhttp_req *http)
{
    bool is_first = true;
    size_t i, j;

    er_gwsink_puts(sink, "{");
    for (i = 0; i < http->hdr_cnt; i++) {
        const struct er_gwhttp_hdr *h = &http->hdrs[i];
        bool is_repeat = false;
        bool is_joined;

        if (!er_gwenvelope_header_allowed(h->name, h->name_len))
            continue;
        for (j = 0; j < i && !is_repeat; j++)
            is_repeat =
                er_gwhttp_same_name(h->name, h->name_len, http->hdrs[j].name,
                                    http->hdrs[j].name_len);
        if (is_repeat)
            continue;
        if (!is_first)
            er_gwsink_puts(sink, ",");
        is_first = false;
        er_gwsink_put(sink, "\"", 1);
        for (j = 0; j < h->name_len; j++) {
            char c = er_gwhttp_lower(h->name[j]);

            er_gwsink_put(sink, &c, 1);
        }
        er_gwsink_puts(sink, "\":\"");
        sink_escape(sink, h->value, h->value_len, true);
        is_joined = !er_gwhttp_eq_nocase(h->name, h->name_len, "content-type");
        for (j = i + 1; j < http->hdr_cnt && is_joined; j++) {
            const struct er_gwhttp_hdr *r = &http->hdrs[j];

            if (!er_gwhttp_same_name(r->name, r->name_len, h->name,
                                     h->name_len))
                continue;
            er_gwsink_puts(sink, ", ");
            sink_escape(sink, r->value, r->value_len, true);
        }
        er_gwsink_put(sink, "\"", 1);
    }
    er_gwsink_puts(sink, "}");
}

void er_gwenvelope_write_head(struct er_gwsink *sink,
                              const struct er_gwenvelope_req *req,
                              struct er_gwenvelope_body *body, bool is_base64)
{
    memset(body, 0, sizeof(*body));
    body->is_base64 = is_base64;
    er_gwsink_puts(sink, "{");
    if (req->type != NULL) {
        er_gwsink_puts(sink, "\"type\":");
        er_gwsink_quote(sink, req->type, strlen(req->type), false);
        er_gwsink_puts(sink, ",");
    }
    er_gwsink_puts(sink, "\"id\":");
    er_gwsink_quote(sink, req->id, strlen(req->id), false);
    er_gwsink_puts(sink, ",\"method\":");
    er_gwsink_quote(sink, req->method, req->method_len, true);
    er_gwsink_puts(sink, ",\"path\":");
    er_gwsink_quote(sink, req->path, req->path_len, true);
    er_gwsink_puts(sink, ",\"query\":");
    er_gwsink_quote(sink, req->query, req->query_len, true);
    er_gwsink_puts(sink, ",\"headers\":");
    write_headers(sink, req->http);
    er_gwsink_puts(sink, ",\"body\":\"");
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_quad(struct er_gwsink *sink, const uint8_t *in, size_t n)
{
    char q[4] = { '=', '=', '=', '=' };
    uint32_t v = (uint32_t)in[0] << 16;

    if (n > 1)
        v |= (uint32_t)in[1] << 8;
    if (n > 2)
        v |= in[2];
    q[0] = b64_alphabet[(v >> 18) & 63];
    q[1] = b64_alphabet[(v >> 12) & 63];
    if (n > 1)
        q[2] = b64_alphabet[(v >> 6) & 63];
    if (n > 2)
        q[3] = b64_alphabet[v & 63];
    er_gwsink_put(sink, q, 4);
}

void er_gwenvelope_write_body(struct er_gwsink *sink,
                              struct er_gwenvelope_body *body, const char *p,
                              size_t n)
{
    uint8_t rep[8];
    char esc[6];
    size_t i, j, k;

    if (body->is_base64) {
        for (i = 0; i < n; i++) {
            body->carry[body->carry_len++] = (uint8_t)p[i];
            if (body->carry_len == 3) {
                b64_quad(sink, body->carry, 3);
                body->carry_len = 0;
            }
        }
        return;
    }
    for (i = 0; i < n; i++) {
        k = er_gwjson_utf8_push(&body->u8, (uint8_t)p[i], rep);
        for (j = 0; j < k; j++) {
            uint8_t b = rep[j];

            /* Plain bytes are the common case: no escape call. */
            if (b >= 0x20 && b != '"' && b != '\\')
                er_gwsink_put(sink, &b, 1);
            else
                er_gwsink_put(sink, esc, er_gwjson_escape_byte(b, esc));
        }
    }
}

void er_gwenvelope_write_tail(struct er_gwsink *sink,
                              struct er_gwenvelope_body *body,
                              const char *created_at, bool is_line)
{
    uint8_t rep[4];
    size_t n;

    if (body->is_base64) {
        if (body->carry_len > 0)
            b64_quad(sink, body->carry, body->carry_len);
        body->carry_len = 0;
        er_gwsink_puts(sink, "\",\"bodyEncoding\":\"base64");
    } else {
        n = er_gwjson_utf8_end(&body->u8, rep);
        er_gwsink_put(sink, rep, n);
    }
    er_gwsink_puts(sink, "\",\"createdAt\":");
    er_gwsink_quote(sink, created_at, strlen(created_at), false);
    er_gwsink_puts(sink, is_line ? "}\n" : "}");
}

/* ================================================================
 * Response envelope, pass one
 * ================================================================ */

enum {
    F_NONE = 0,
    F_ID,
    F_TYPE,
    F_STATUS,
    F_HEADERS,
    F_BODY,
    F_ENCODING,
};

#define HDR_LIMIT_MSG "Bridge response headers exceeded the gateway limit."

static int b64_val(uint8_t c)
{
    const char *p = c != 0 ? strchr(b64_alphabet, c) : NULL;

    return p == NULL ? -1 : (int)(p - b64_alphabet);
}

static void chk_push(struct er_gwenvelope_b64chk *chk, uint8_t c)
{
    int v;

    chk->len++;
    if (c == '=') {
        if (++chk->pad > 2)
            chk->is_bad = true;
        return;
    }
    v = b64_val(c);
    if (v < 0 || chk->pad > 0) {
        chk->is_bad = true;
        return;
    }
    chk->last_val = (uint8_t)v;
}

void er_gwenvelope_resp_init(struct er_gwenvelope_resp *resp, char *hdr,
                             size_t cap)
{
    memset(resp, 0, sizeof(*resp));
    resp->body_pos = -1;
    resp->hdr_depth = -1;
    resp->hdr = hdr;
    resp->hdr_cap = cap;
}

/* Keep the first header problem: what, and the header's name if any. */
static void hdr_fail(struct er_gwenvelope_resp *resp, const char *what,
                     const char *name, size_t name_len)
{
    char quoted[80];

    if (resp->hdr_err[0] != '\0')
        return;
    if (name == NULL) {
        snprintf(resp->hdr_err, sizeof(resp->hdr_err), "%s", what);
        return;
    }
    if (name_len > 48)
        name_len = 48;
    er_gwjson_quote(quoted, sizeof(quoted), name, name_len, false);
    snprintf(resp->hdr_err, sizeof(resp->hdr_err), "%s [%s]", what, quoted);
}

static void hdr_put(struct er_gwenvelope_resp *resp, const char *p, size_t n)
{
    if (resp->hdr_len + n > resp->hdr_cap) {
        hdr_fail(resp, HDR_LIMIT_MSG, NULL, 0);
        resp->is_line_open = false;
        resp->hdr_len = resp->line_start;
        return;
    }
    memcpy(resp->hdr + resp->hdr_len, p, n);
    resp->hdr_len += n;
}

static size_t key_len(const struct er_gwenvelope_resp *resp)
{
    return resp->key_len < sizeof(resp->key) ? resp->key_len : 0;
}

/* Headers the reply frames itself: never copied from the host. */
static bool is_framing_header(const char *name, size_t len)
{
    return er_gwhttp_eq_nocase(name, len, "content-length") ||
           er_gwhttp_eq_nocase(name, len, "transfer-encoding") ||
           er_gwhttp_eq_nocase(name, len, "connection");
}

static void header_begin(struct er_gwenvelope_resp *resp)
{
    size_t n = key_len(resp);

    if (resp->key_len >= sizeof(resp->key)) {
        hdr_fail(resp, HDR_LIMIT_MSG, NULL, 0);
        return;
    }
    if (!er_gwhttp_is_token(resp->key, n)) {
        hdr_fail(resp, "Header name must be a valid HTTP token", resp->key, n);
        return;
    }
    if (is_framing_header(resp->key, n))
        return;
    resp->line_start = resp->hdr_len;
    resp->is_line_open = true;
    resp->lead = 0;
    hdr_put(resp, resp->key, n);
    hdr_put(resp, ": ", 2);
}

/* Header text arrives as UTF-8; Node writes header strings as latin-1 and
 * refuses characters outside [\t\x20-\x7e\x80-\xff]. */
static void header_data(struct er_gwenvelope_resp *resp, const char *p,
                        size_t n)
{
    size_t i;

    for (i = 0; i < n && resp->is_line_open; i++) {
        uint8_t b = (uint8_t)p[i];
        char c;

        if (resp->lead != 0) {
            c = (char)(((resp->lead & 0x03) << 6) | (b & 0x3F));
            resp->lead = 0;
        } else if (b == 0xC2 || b == 0xC3) {
            resp->lead = b;
            continue;
        } else if (b == '\t' || (b >= 0x20 && b < 0x7F)) {
            c = (char)b;
        } else {
            hdr_fail(resp, "Invalid character in header content", resp->key,
                     key_len(resp));
            resp->is_line_open = false;
            resp->hdr_len = resp->line_start;
            return;
        }
        hdr_put(resp, &c, 1);
    }
}

/* Drop an earlier line with the same name (setHeader replaces). */
static void header_dedupe(struct er_gwenvelope_resp *resp, size_t name_len)
{
    const char *name = resp->hdr + resp->line_start;
    size_t at = 0;

    while (at < resp->line_start) {
        const char *line = resp->hdr + at;
        const char *end = memchr(line, '\n', resp->line_start - at);
        size_t line_len = (size_t)(end - line) + 1;

        if (line_len > name_len && line[name_len] == ':' &&
            er_gwhttp_same_name(line, name_len, name, name_len)) {
            memmove(resp->hdr + at, resp->hdr + at + line_len,
                    resp->hdr_len - at - line_len);
            resp->hdr_len -= line_len;
            resp->line_start -= line_len;
            resp->hdr_cnt--;
            continue;
        }
        at += line_len;
    }
}

static void header_end(struct er_gwenvelope_resp *resp)
{
    size_t n = key_len(resp);
    const char *value;
    size_t value_len;

    if (!resp->is_line_open)
        return;
    resp->is_line_open = false;
    if (resp->lead != 0) {
        hdr_fail(resp, "Invalid character in header content", resp->key, n);
        resp->hdr_len = resp->line_start;
        return;
    }
    value = resp->hdr + resp->line_start + n + 2;
    value_len = resp->hdr_len - resp->line_start - n - 2;
    if (er_gwhttp_eq_nocase(resp->key, n, "x-paperclip-bridge-outcome"))
        resp->is_indeterminate =
            value_len == 13 && memcmp(value, "indeterminate", 13) == 0;
    hdr_put(resp, "\r\n", 2);
    if (resp->hdr_err[0] != '\0')
        return;
    header_dedupe(resp, n);
    if (++resp->hdr_cnt > ER_GW_RESP_HDR_MAX)
        hdr_fail(resp, HDR_LIMIT_MSG, NULL, 0);
}

static void headers_reset(struct er_gwenvelope_resp *resp)
{
    resp->hdr_len = 0;
    resp->hdr_cnt = 0;
    resp->hdr_err[0] = '\0';
    resp->is_indeterminate = false;
    resp->is_line_open = false;
    resp->hdr_depth = -1;
}

/* Events inside the headers object (depth 2 and deeper). */
static void on_header_event(struct er_gwenvelope_resp *resp,
                            const struct er_gwjson_event *ev)
{
    if (ev->depth != resp->hdr_depth)
        return; /* nested values are not strings: ignored */
    switch (ev->type) {
    case ER_GWJSON_KEY_BEGIN:
        resp->key_len = 0;
        break;
    case ER_GWJSON_KEY_DATA:
        if (resp->key_len < sizeof(resp->key))
            memcpy(resp->key + resp->key_len, ev->data,
                   ev->len < sizeof(resp->key) - resp->key_len
                       ? ev->len
                       : sizeof(resp->key) - resp->key_len);
        resp->key_len += ev->len;
        break;
    case ER_GWJSON_STR_BEGIN:
        header_begin(resp);
        break;
    case ER_GWJSON_STR_DATA:
        header_data(resp, ev->data, ev->len);
        break;
    case ER_GWJSON_STR_END:
        header_end(resp);
        break;
    case ER_GWJSON_OBJ_BEGIN:
    case ER_GWJSON_OBJ_END:
    case ER_GWJSON_ARR_BEGIN:
    case ER_GWJSON_ARR_END:
    case ER_GWJSON_KEY_END:
    case ER_GWJSON_NUMBER:
    case ER_GWJSON_TRUE:
    case ER_GWJSON_FALSE:
    case ER_GWJSON_NULL:
        break;
    }
}

static int field_of(const char *key, size_t len)
{
    static const struct {
        const char *name;
        int field;
    } fields[] = {
        { "id", F_ID },         { "type", F_TYPE },
        { "status", F_STATUS }, { "headers", F_HEADERS },
        { "body", F_BODY },     { "bodyEncoding", F_ENCODING },
    };
    size_t i;

    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (strlen(fields[i].name) == len &&
            memcmp(fields[i].name, key, len) == 0)
            return fields[i].field;
    }
    return F_NONE;
}

static void capture(struct er_gwenvelope_resp *resp, const char *p, size_t n)
{
    size_t cap = sizeof(resp->val) - 1;

    if (resp->val_len < cap)
        memcpy(resp->val + resp->val_len, p,
               n < cap - resp->val_len ? n : cap - resp->val_len);
    resp->val_len += n;
}

static void copy_trunc(char *out, size_t out_len, const char *s)
{
    size_t n = strlen(s);

    if (n >= out_len)
        n = out_len - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}

/* A string value of a top-level field ended. */
static void on_field_string(struct er_gwenvelope_resp *resp)
{
    size_t n = resp->val_len < sizeof(resp->val) - 1 ? resp->val_len
                                                     : sizeof(resp->val) - 1;

    resp->val[n] = '\0';
    switch (resp->field) {
    case F_ID:
        copy_trunc(resp->id, sizeof(resp->id), resp->val);
        break;
    case F_TYPE:
        copy_trunc(resp->type, sizeof(resp->type), resp->val);
        break;
    case F_ENCODING:
        if (resp->val_len == 4 && strcmp(resp->val, "utf8") == 0)
            resp->enc = ER_GWENVELOPE_UTF8;
        else if (resp->val_len == 6 && strcmp(resp->val, "base64") == 0)
            resp->enc = ER_GWENVELOPE_BASE64;
        else
            resp->enc = ER_GWENVELOPE_ENC_BAD;
        break;
    default:
        break;
    }
}

/* A value of a top-level member (depth 1). */
static void on_field_value(struct er_gwenvelope_resp *resp,
                           const struct er_gwjson_event *ev)
{
    size_t i;

    switch (resp->field) {
    case F_ID:
    case F_TYPE:
    case F_ENCODING:
        if (ev->type == ER_GWJSON_STR_BEGIN) {
            resp->val_len = 0;
        } else if (ev->type == ER_GWJSON_STR_DATA) {
            capture(resp, ev->data, ev->len);
        } else if (ev->type == ER_GWJSON_STR_END) {
            on_field_string(resp);
        } else if (ev->type != ER_GWJSON_OBJ_END &&
                   ev->type != ER_GWJSON_ARR_END) {
            /* Not a string: id and type are absent; an encoding other than
             * null is unsupported. */
            if (resp->field == F_ID)
                resp->id[0] = '\0';
            else if (resp->field == F_TYPE)
                resp->type[0] = '\0';
            else
                resp->enc = ev->type == ER_GWJSON_NULL ? ER_GWENVELOPE_UTF8
                                                       : ER_GWENVELOPE_ENC_BAD;
        }
        break;
    case F_STATUS:
        if (ev->type == ER_GWJSON_NUMBER) {
            char num[ER_GWJSON_NUM_MAX + 1];

            resp->has_status = true;
            resp->status = NAN;
            if (ev->data != NULL) {
                memcpy(num, ev->data, ev->len);
                num[ev->len] = '\0';
                resp->status = strtod(num, NULL);
            }
        } else if (ev->type != ER_GWJSON_OBJ_END &&
                   ev->type != ER_GWJSON_ARR_END) {
            resp->has_status = false;
        }
        break;
    case F_HEADERS:
        if (ev->type == ER_GWJSON_OBJ_BEGIN) {
            headers_reset(resp);
            resp->hdr_depth = 2;
        } else if (ev->type == ER_GWJSON_OBJ_END) {
            resp->hdr_depth = -1;
        } else if (ev->type != ER_GWJSON_ARR_END &&
                   ev->type != ER_GWJSON_STR_DATA &&
                   ev->type != ER_GWJSON_STR_END) {
            headers_reset(resp);
        }
        break;
    case F_BODY:
        if (ev->type == ER_GWJSON_STR_BEGIN) {
            resp->body_pos = (int64_t)ev->pos;
            resp->body_len = 0;
            resp->is_body_bad = false;
            memset(&resp->chk, 0, sizeof(resp->chk));
        } else if (ev->type == ER_GWJSON_STR_DATA) {
            resp->body_len += ev->len;
            for (i = 0; i < ev->len; i++)
                chk_push(&resp->chk, (uint8_t)ev->data[i]);
        } else if (ev->type == ER_GWJSON_NULL) {
            resp->body_pos = -1;
            resp->is_body_bad = false;
        } else if (ev->type != ER_GWJSON_STR_END &&
                   ev->type != ER_GWJSON_OBJ_END &&
                   ev->type != ER_GWJSON_ARR_END) {
            resp->body_pos = -1;
            resp->is_body_bad = true;
        }
        break;
    default:
        break;
    }
}

int er_gwenvelope_resp_event(void *ctx, const struct er_gwjson_event *ev)
{
    struct er_gwenvelope_resp *resp = ctx;

    if (ev->depth == 0) {
        if (ev->type == ER_GWJSON_OBJ_BEGIN)
            resp->is_object = true;
        return 0;
    }
    if (ev->depth >= 2) {
        if (resp->field == F_HEADERS && resp->hdr_depth == 2)
            on_header_event(resp, ev);
        return 0;
    }
    if (!resp->is_object)
        return 0;
    switch (ev->type) {
    case ER_GWJSON_KEY_BEGIN:
        resp->val_len = 0;
        resp->field = F_NONE;
        return 0;
    case ER_GWJSON_KEY_DATA:
        capture(resp, ev->data, ev->len);
        return 0;
    case ER_GWJSON_KEY_END:
        resp->field = resp->val_len < sizeof(resp->val) - 1
                          ? field_of(resp->val, resp->val_len)
                          : F_NONE;
        resp->val_len = 0;
        return 0;
    case ER_GWJSON_OBJ_BEGIN:
    case ER_GWJSON_OBJ_END:
    case ER_GWJSON_ARR_BEGIN:
    case ER_GWJSON_ARR_END:
    case ER_GWJSON_STR_BEGIN:
    case ER_GWJSON_STR_DATA:
    case ER_GWJSON_STR_END:
    case ER_GWJSON_NUMBER:
    case ER_GWJSON_TRUE:
    case ER_GWJSON_FALSE:
    case ER_GWJSON_NULL:
        break;
    }
    on_field_value(resp, ev);
    return 0;
}

/* ================================================================
 * Response envelope: checks before replying
 * ================================================================ */

int er_gwenvelope_resp_check(const struct er_gwenvelope_resp *resp,
                             uint64_t max_body, int *status, uint64_t *body_len,
                             char *msg, size_t msg_len)
{
    const struct er_gwenvelope_b64chk *chk = &resp->chk;
    uint64_t b64_max = 4 * ((max_body + 2) / 3);

    if (!resp->is_object) {
        snprintf(msg, msg_len, "Invalid bridge response envelope.");
        return -1;
    }
    if (resp->hdr_err[0] != '\0') {
        snprintf(msg, msg_len, "%s", resp->hdr_err);
        return -1;
    }
    *status = 200;
    if (resp->has_status) {
        double s = resp->status;

        if (!(s >= 100 && s <= 999) || floor(s) != s) {
            snprintf(msg, msg_len, "Invalid status code: %g", s);
            return -1;
        }
        *status = (int)s;
    }
    if (resp->is_indeterminate)
        *status = 409;
    if (resp->is_body_bad) {
        snprintf(msg, msg_len, ER_GW_MSG_BODY_BAD);
        return -1;
    }
    if (resp->enc == ER_GWENVELOPE_ENC_BAD) {
        snprintf(msg, msg_len, ER_GW_MSG_ENCODING);
        return -1;
    }
    *body_len = 0;
    if (resp->body_pos < 0)
        return 0;
    if (resp->enc == ER_GWENVELOPE_UTF8) {
        if (resp->body_len > max_body) {
            snprintf(msg, msg_len, ER_GW_MSG_BODY_SIZE);
            return -1;
        }
        *body_len = resp->body_len;
        return 0;
    }
    if (chk->len > b64_max) {
        snprintf(msg, msg_len, ER_GW_MSG_BODY_SIZE);
        return -1;
    }
    if (chk->is_bad || chk->len % 4 != 0 ||
        (chk->pad == 1 && (chk->last_val & 3) != 0) ||
        (chk->pad == 2 && (chk->last_val & 15) != 0)) {
        snprintf(msg, msg_len, ER_GW_MSG_B64);
        return -1;
    }
    *body_len = chk->len / 4 * 3 - chk->pad;
    if (*body_len > max_body) {
        snprintf(msg, msg_len, ER_GW_MSG_BODY_SIZE);
        return -1;
    }
    return 0;
}

/* ================================================================
 * Response envelope, pass two
 * ================================================================ */

void er_gwenvelope_out_init(struct er_gwenvelope_out *bo, uint64_t quote_pos,
                            bool is_base64)
{
    char *out = bo->out;
    size_t cap = bo->out_cap;

    memset(bo, 0, sizeof(*bo));
    er_gwjson_init(&bo->js, quote_pos);
    bo->is_base64 = is_base64;
    bo->out = out;
    bo->out_cap = cap;
}

static void out_put(struct er_gwenvelope_out *bo, uint8_t b)
{
    ER_GW_ASSERT(bo->out_len < bo->out_cap);
    bo->out[bo->out_len++] = (char)b;
}

static void out_b64_flush(struct er_gwenvelope_out *bo)
{
    if (bo->quad_len == 2) {
        out_put(bo, (uint8_t)(bo->quad >> 4));
    } else if (bo->quad_len == 3) {
        out_put(bo, (uint8_t)(bo->quad >> 10));
        out_put(bo, (uint8_t)(bo->quad >> 2));
    }
    bo->quad_len = 0;
}

static int out_event(void *ctx, const struct er_gwjson_event *ev)
{
    struct er_gwenvelope_out *bo = ctx;
    size_t i;

    if (ev->type == ER_GWJSON_STR_END) {
        if (bo->is_base64)
            out_b64_flush(bo);
        bo->is_done = true;
        return 1;
    }
    if (ev->type != ER_GWJSON_STR_DATA)
        return ev->type == ER_GWJSON_STR_BEGIN ? 0 : -1;
    if (!bo->is_base64) {
        ER_GW_ASSERT(bo->out_len + ev->len <= bo->out_cap);
        memcpy(bo->out + bo->out_len, ev->data, ev->len);
        bo->out_len += ev->len;
        return 0;
    }
    for (i = 0; i < ev->len; i++) {
        int v = b64_val((uint8_t)ev->data[i]);

        if (v < 0)
            continue; /* padding: pass one checked the form */
        bo->quad = (bo->quad << 6) | (uint32_t)v;
        if (++bo->quad_len == 4) {
            out_put(bo, (uint8_t)(bo->quad >> 16));
            out_put(bo, (uint8_t)(bo->quad >> 8));
            out_put(bo, (uint8_t)bo->quad);
            bo->quad_len = 0;
            bo->quad = 0;
        }
    }
    return 0;
}

int er_gwenvelope_out_feed(struct er_gwenvelope_out *bo, const char *p,
                           size_t len, size_t *used)
{
    int rc = er_gwjson_feed(&bo->js, p, len, out_event, bo, used);

    if (rc < 0)
        return rc;
    return bo->is_done ? 1 : 0;
}
