/* gwhttp: the gateway's HTTP/1.x parsers: request head, request-target to
 * WHATWG pathname and search, chunked transfer-coding. Pure functions over
 * the caller's buffers; they return pointers into the input, never copies
 * (except the URL, which is rewritten). Thread-compatible. */
#include <string.h>

#include "bridge/gateway/gateway_int.h"

/* ================================================================
 * Characters
 * ================================================================ */

bool er_gwhttp_is_token(const char *s, size_t len)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    size_t i;

    if (len == 0)
        return false;
    for (i = 0; i < len; i++) {
        char c = s[i];

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9'))
            continue;
        if (c == '\0' || strchr(extra, c) == NULL)
            return false;
    }
    return true;
}

char er_gwhttp_lower(char c)
{
    if (c >= 'A' && c <= 'Z')
        return (char)(c - 'A' + 'a');
    return c;
}

bool er_gwhttp_eq_nocase(const char *s, size_t len, const char *lit)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (lit[i] == '\0' || er_gwhttp_lower(s[i]) != er_gwhttp_lower(lit[i]))
            return false;
    }
    return lit[len] == '\0';
}

bool er_gwhttp_same_name(const char *a, size_t a_len, const char *b,
                         size_t b_len)
{
    size_t i;

    if (a_len != b_len)
        return false;
    for (i = 0; i < a_len; i++) {
        if (er_gwhttp_lower(a[i]) != er_gwhttp_lower(b[i]))
            return false;
    }
    return true;
}

bool er_gwhttp_is_safe(const char *method)
{
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 ||
           strcmp(method, "OPTIONS") == 0 || strcmp(method, "TRACE") == 0;
}

/* ================================================================
 * Request head
 * ================================================================ */

/* The next line of buf from *pos: its bytes without the line end. False
 * when no line end has arrived yet. A CR anywhere but before LF is left in
 * the line (and rejected by the caller's character checks). */
static bool next_line(const char *buf, size_t len, size_t *pos,
                      const char **line, size_t *line_len)
{
    const char *start = buf + *pos;
    const char *nl = memchr(start, '\n', len - *pos);
    size_t n;

    if (nl == NULL)
        return false;
    n = (size_t)(nl - start);
    *pos += n + 1;
    if (n > 0 && start[n - 1] == '\r')
        n--;
    *line = start;
    *line_len = n;
    return true;
}

static bool is_target_char(unsigned char c)
{
    return c > 0x20 && c < 0x7F;
}

static bool is_value_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7F);
}

static int parse_request_line(const char *line, size_t n,
                              struct er_gwhttp_req *req)
{
    const char *sp1 = memchr(line, ' ', n);
    const char *sp2;
    const char *ver;
    size_t ver_len, i;

    if (sp1 == NULL)
        return -400;
    req->method = line;
    req->method_len = (size_t)(sp1 - line);
    if (req->method_len > ER_GW_METHOD_MAX ||
        !er_gwhttp_is_token(line, req->method_len))
        return -400;
    sp2 = memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - line));
    if (sp2 == NULL)
        return -400;
    req->target = sp1 + 1;
    req->target_len = (size_t)(sp2 - req->target);
    if (req->target_len == 0)
        return -400;
    if (req->target_len > ER_GW_TARGET_MAX)
        return -414;
    for (i = 0; i < req->target_len; i++) {
        if (!is_target_char((unsigned char)req->target[i]))
            return -400;
    }
    ver = sp2 + 1;
    ver_len = n - (size_t)(ver - line);
    if (ver_len != 8 || memcmp(ver, "HTTP/", 5) != 0 || ver[6] != '.' ||
        ver[5] < '0' || ver[5] > '9' || ver[7] < '0' || ver[7] > '9')
        return -400;
    if (ver[5] != '1')
        return -505;
    req->minor_version = ver[7] - '0';
    return 0;
}

static int parse_header_line(const char *line, size_t n,
                             struct er_gwhttp_req *req)
{
    const char *colon = memchr(line, ':', n);
    const char *v, *end;
    struct er_gwhttp_hdr *h;

    if (line[0] == ' ' || line[0] == '\t')
        return -400; /* obs-fold */
    if (colon == NULL || !er_gwhttp_is_token(line, (size_t)(colon - line)))
        return -400;
    if (req->hdr_cnt == ER_GW_HDR_MAX)
        return -431;
    v = colon + 1;
    end = line + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    for (const char *p = v; p < end; p++) {
        if (!is_value_char((unsigned char)*p))
            return -400;
    }
    h = &req->hdrs[req->hdr_cnt++];
    h->name = line;
    h->name_len = (size_t)(colon - line);
    h->value = v;
    h->value_len = (size_t)(end - v);
    return 0;
}

int er_gwhttp_parse_head(const char *buf, size_t len, struct er_gwhttp_req *req)
{
    size_t pos = 0;
    const char *line;
    size_t n;
    int rc;

    memset(req, 0, sizeof(*req));
    /* Empty lines before the request line are skipped (RFC 9112 2.2). */
    for (;;) {
        if (!next_line(buf, len, &pos, &line, &n)) {
            if (len - pos > ER_GW_TARGET_MAX + ER_GW_METHOD_MAX + 16)
                return -414;
            return len >= ER_GW_HEAD_MAX ? -431 : ER_GWHTTP_INCOMPLETE;
        }
        if (n > 0)
            break;
    }
    rc = parse_request_line(line, n, req);
    if (rc != 0)
        return rc;
    for (;;) {
        if (!next_line(buf, len, &pos, &line, &n))
            return len >= ER_GW_HEAD_MAX ? -431 : ER_GWHTTP_INCOMPLETE;
        if (n == 0)
            break;
        rc = parse_header_line(line, n, req);
        if (rc != 0)
            return rc;
    }
    req->head_len = pos;
    return 0;
}

const struct er_gwhttp_hdr *er_gwhttp_find(const struct er_gwhttp_req *req,
                                           const char *name)
{
    size_t i;

    for (i = 0; i < req->hdr_cnt; i++) {
        const struct er_gwhttp_hdr *h = &req->hdrs[i];

        if (er_gwhttp_eq_nocase(h->name, h->name_len, name))
            return h;
    }
    return NULL;
}

size_t er_gwhttp_count(const struct er_gwhttp_req *req, const char *name)
{
    size_t i, cnt = 0;

    for (i = 0; i < req->hdr_cnt; i++) {
        if (er_gwhttp_eq_nocase(req->hdrs[i].name, req->hdrs[i].name_len, name))
            cnt++;
    }
    return cnt;
}

/* ================================================================
 * Request-target to pathname and search (WHATWG URL, special scheme)
 * ================================================================ */

struct url_out {
    char *buf;
    size_t len;
    size_t cap;
    bool is_full;
};

static void url_put(struct url_out *o, char c)
{
    if (o->len + 1 >= o->cap) {
        o->is_full = true;
        return;
    }
    o->buf[o->len++] = c;
}

/* Copy s, percent-encoding the bytes in set (the printable members of
 * WHATWG's path or query percent-encode set; the parser already refused
 * controls, spaces and non-ASCII). */
static void url_put_encoded(struct url_out *o, const char *s, size_t n,
                            const char *set)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (strchr(set, c) != NULL && c != '\0') {
            url_put(o, '%');
            url_put(o, hex[c >> 4]);
            url_put(o, hex[c & 15]);
        } else {
            url_put(o, (char)c);
        }
    }
}

static bool is_dot(const char *s, size_t n)
{
    return (n == 1 && s[0] == '.') || er_gwhttp_eq_nocase(s, n, "%2e");
}

static bool is_dot_dot(const char *s, size_t n)
{
    return er_gwhttp_eq_nocase(s, n, "..") ||
           er_gwhttp_eq_nocase(s, n, ".%2e") ||
           er_gwhttp_eq_nocase(s, n, "%2e.") ||
           er_gwhttp_eq_nocase(s, n, "%2e%2e");
}

static bool is_slash(char c)
{
    return c == '/' || c == '\\';
}

/* Remove the last segment written ("/seg"). */
static void url_pop(struct url_out *o)
{
    while (o->len > 0 && o->buf[o->len - 1] != '/')
        o->len--;
    if (o->len > 0)
        o->len--;
}

/* The path state of the URL parser over s (which starts at a slash, or is
 * empty). */
static void url_path(struct url_out *o, const char *s, size_t n)
{
    size_t i = 1;

    if (n == 0) {
        url_put(o, '/');
        return;
    }
    for (;;) {
        size_t start = i;
        bool is_last;

        while (i < n && !is_slash(s[i]))
            i++;
        is_last = i >= n;
        if (is_dot_dot(s + start, i - start)) {
            url_pop(o);
            if (is_last)
                url_put(o, '/');
        } else if (is_dot(s + start, i - start)) {
            if (is_last)
                url_put(o, '/');
        } else {
            url_put(o, '/');
            url_put_encoded(o, s + start, i - start, "\"<>`{}");
        }
        if (is_last)
            break;
        i++;
    }
    if (o->len == 0)
        url_put(o, '/');
}

/* Offset where the authority after a scheme or "//" ends. */
static size_t skip_authority(const char *t, size_t n, size_t i)
{
    while (i < n && is_slash(t[i]))
        i++;
    while (i < n && !is_slash(t[i]) && t[i] != '?' && t[i] != '#')
        i++;
    return i;
}

int er_gwhttp_url(const char *target, size_t target_len, char *out,
                  size_t out_len, size_t *path_len, size_t *query_len)
{
    struct url_out o = { out, 0, out_len, false };
    size_t start, end, q_end;

    if (target_len == 1 && target[0] == '*') {
        url_put(&o, '/');
        url_put(&o, '*');
        *path_len = o.len;
        *query_len = 0;
        return o.is_full ? -414 : 0;
    }
    if (target_len >= 2 && is_slash(target[0]) && is_slash(target[1])) {
        /* Scheme-relative: what follows the slashes is a host. */
        start = skip_authority(target, target_len, 0);
    } else if (target_len >= 1 && is_slash(target[0])) {
        start = 0;
    } else if (target_len >= 7 && er_gwhttp_eq_nocase(target, 7, "http://")) {
        start = skip_authority(target, target_len, 7);
    } else if (target_len >= 8 && er_gwhttp_eq_nocase(target, 8, "https://")) {
        start = skip_authority(target, target_len, 8);
    } else {
        return -400;
    }
    end = start;
    while (end < target_len && target[end] != '?' && target[end] != '#')
        end++;
    url_path(&o, target + start, end - start);
    *path_len = o.len;
    if (end < target_len && target[end] == '?') {
        q_end = end + 1;
        while (q_end < target_len && target[q_end] != '#')
            q_end++;
        if (q_end > end + 1) {
            url_put(&o, '?');
            url_put_encoded(&o, target + end + 1, q_end - end - 1, "\"<>'");
        }
    }
    *query_len = o.len - *path_len;
    if (o.is_full)
        return -414;
    out[o.len] = '\0';
    return 0;
}

bool er_gwhttp_is_attachment_path(const char *path, size_t len)
{
    static const char *const want[] = { "api",    "companies", NULL,
                                        "issues", NULL,        "attachments" };
    size_t i = 0, k;

    for (k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
        size_t start;

        if (i >= len || path[i] != '/')
            return false;
        start = ++i;
        while (i < len && path[i] != '/')
            i++;
        if (i == start)
            return false;
        if (want[k] != NULL && (strlen(want[k]) != i - start ||
                                memcmp(path + start, want[k], i - start) != 0))
            return false;
    }
    return i == len;
}

/* ================================================================
 * Chunked transfer-coding (RFC 9112 7.1)
 * ================================================================ */

enum {
    CK_SIZE = 0,  /* the first hex digit of a chunk size */
    CK_SIZE_MORE, /* more hex digits, or what ends the size */
    CK_EXT,       /* a chunk extension, up to the line end */
    CK_SIZE_LF,   /* CR seen after the size line */
    CK_DATA,
    CK_DATA_CR, /* the CRLF after chunk data */
    CK_DATA_LF,
    CK_TRAILER,      /* start of a trailer line, or the final CRLF */
    CK_TRAILER_LINE, /* inside a trailer line */
    CK_TRAILER_LF,   /* CR of the final empty line seen */
    CK_DONE,
};

#define CK_LINE_MAX    4096
#define CK_TRAILER_MAX 8192

/* The size line ended. */
static void size_done(struct er_gwhttp_chunked *ck)
{
    ck->state = ck->left == 0 ? CK_TRAILER : CK_DATA;
}

/* One byte of a state other than CK_DATA. Returns 0 or -400. */
static int chunked_byte(struct er_gwhttp_chunked *ck, char c)
{
    int v;

    switch (ck->state) {
    case CK_SIZE:
    case CK_SIZE_MORE:
        v = er_gwjson_hex_val((uint8_t)c);
        if (v >= 0) {
            if (ck->digits == 15)
                return -400;
            ck->left = ck->left * 16 + (uint64_t)v;
            ck->digits++;
            ck->state = CK_SIZE_MORE;
            return 0;
        }
        if (ck->state == CK_SIZE)
            return -400;
        if (c == '\r') {
            ck->state = CK_SIZE_LF;
        } else if (c == '\n') {
            size_done(ck);
        } else if (c == ';' || c == ' ' || c == '\t') {
            ck->line_len = 0;
            ck->state = CK_EXT;
        } else {
            return -400;
        }
        return 0;
    case CK_EXT:
        if (c == '\r')
            ck->state = CK_SIZE_LF;
        else if (c == '\n')
            size_done(ck);
        else if (++ck->line_len > CK_LINE_MAX || (unsigned char)c < 0x09)
            return -400;
        return 0;
    case CK_SIZE_LF:
        if (c != '\n')
            return -400;
        size_done(ck);
        return 0;
    case CK_DATA_CR:
        if (c == '\r') {
            ck->state = CK_DATA_LF;
            return 0;
        }
        if (c != '\n')
            return -400;
        ck->state = CK_SIZE;
        ck->digits = 0;
        return 0;
    case CK_DATA_LF:
        if (c != '\n')
            return -400;
        ck->state = CK_SIZE;
        ck->digits = 0;
        return 0;
    case CK_TRAILER:
        if (c == '\r') {
            ck->state = CK_TRAILER_LF;
        } else if (c == '\n') {
            ck->state = CK_DONE;
        } else {
            ck->state = CK_TRAILER_LINE;
            ck->trailer_len++;
        }
        return 0;
    case CK_TRAILER_LINE:
        if (++ck->trailer_len > CK_TRAILER_MAX)
            return -400;
        if (c == '\n')
            ck->state = CK_TRAILER;
        return 0;
    case CK_TRAILER_LF:
        if (c != '\n')
            return -400;
        ck->state = CK_DONE;
        return 0;
    default:
        return -400;
    }
}

int er_gwhttp_chunked_feed(struct er_gwhttp_chunked *ck, const char *in,
                           size_t len, size_t *used, const char **data,
                           size_t *data_len)
{
    size_t i = 0;

    *data = NULL;
    *data_len = 0;
    while (i < len && ck->state != CK_DONE) {
        if (ck->state == CK_DATA) {
            size_t n = len - i;

            if (n > ck->left)
                n = (size_t)ck->left;
            *data = in + i;
            *data_len = n;
            ck->left -= n;
            if (ck->left == 0)
                ck->state = CK_DATA_CR;
            *used = i + n;
            return 0;
        }
        if (chunked_byte(ck, in[i]) != 0) {
            *used = i;
            return -400;
        }
        i++;
    }
    *used = i;
    return ck->state == CK_DONE ? 1 : 0;
}

/* ================================================================
 * Status reasons
 * ================================================================ */

const char *er_gwhttp_reason(int status)
{
    static const struct {
        int status;
        const char *reason;
    } reasons[] = {
        { 100, "Continue" },
        { 200, "OK" },
        { 201, "Created" },
        { 202, "Accepted" },
        { 204, "No Content" },
        { 301, "Moved Permanently" },
        { 302, "Found" },
        { 304, "Not Modified" },
        { 400, "Bad Request" },
        { 401, "Unauthorized" },
        { 403, "Forbidden" },
        { 404, "Not Found" },
        { 405, "Method Not Allowed" },
        { 408, "Request Timeout" },
        { 409, "Conflict" },
        { 411, "Length Required" },
        { 412, "Precondition Failed" },
        { 413, "Payload Too Large" },
        { 414, "URI Too Long" },
        { 415, "Unsupported Media Type" },
        { 417, "Expectation Failed" },
        { 422, "Unprocessable Entity" },
        { 429, "Too Many Requests" },
        { 431, "Request Header Fields Too Large" },
        { 500, "Internal Server Error" },
        { 501, "Not Implemented" },
        { 502, "Bad Gateway" },
        { 503, "Service Unavailable" },
        { 504, "Gateway Timeout" },
        { 505, "HTTP Version Not Supported" },
    };
    size_t i;

    for (i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        if (reasons[i].status == status)
            return reasons[i].reason;
    }
    return "Unknown";
}
