/* allowlist: the bridge's route and header allow-lists (bridge.h). A rule
 * is compiled into segments once; a path is matched segment by segment,
 * whole, with no regular expressions and no allocation. */
#define _GNU_SOURCE /* memmem */

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "bridge/bridge.h"

#define MAX_HEADER_NAME 64
#define MAX_SEGMENTS    32
#define MAX_ALTS        16
#define VAR             "{x}"
#define OPTIONAL_TAIL   "[/{x}]"

enum seg_kind {
    SEG_LITERAL, /* text */
    SEG_VAR,     /* text = prefix, suffix; one non-empty run between */
    SEG_ALT,     /* one of alts */
};

struct seg {
    enum seg_kind kind;
    char *text;
    char *suffix;
    char *alts[MAX_ALTS];
    size_t alt_cnt;
};

struct rule {
    char method[ER_BRIDGE_ALLOW_MAX_METHOD + 1];
    struct seg *segs;
    size_t seg_cnt;
    bool has_optional_tail; /* [/{x}]: one more non-empty segment, or not */
};

struct er_bridge_allow {
    struct rule *rules;
    size_t rule_cnt;
    char **request_headers;
    size_t request_cnt;
    char **response_headers;
    size_t response_cnt;
};

/* ================================================================
 * Parsing
 * ================================================================ */

static void seg_fini(struct seg *s)
{
    size_t i;

    er_free(s->text);
    er_free(s->suffix);
    for (i = 0; i < s->alt_cnt; i++)
        er_free(s->alts[i]);
}

void er_bridge_allow_free(struct er_bridge_allow *allow)
{
    size_t i;
    size_t k;

    if (allow == NULL)
        return;
    for (i = 0; i < allow->rule_cnt; i++) {
        for (k = 0; k < allow->rules[i].seg_cnt; k++)
            seg_fini(&allow->rules[i].segs[k]);
        er_free(allow->rules[i].segs);
    }
    er_free(allow->rules);
    for (i = 0; i < allow->request_cnt; i++)
        er_free(allow->request_headers[i]);
    er_free(allow->request_headers);
    for (i = 0; i < allow->response_cnt; i++)
        er_free(allow->response_headers[i]);
    er_free(allow->response_headers);
    er_free(allow);
}

/* Where parsing is: for error messages. */
struct where {
    const char *name;
    size_t line;
    struct er_err *err;
};

static int bad(const struct where *w, const char *what)
{
    return er_err_set(w->err, ER_EINVAL, ER_ERRCLASS_FATAL, "%s:%zu: %s",
                      w->name, w->line, what);
}

static int oom(const struct where *w)
{
    return er_err_set(w->err, ER_ENOMEM, ER_ERRCLASS_FATAL, "%s: out of memory",
                      w->name);
}

/* Bytes a literal path segment may hold: RFC 3986 pchar without '%'
 * escapes, and none of the pattern syntax. */
static bool is_literal_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || strchr("-._~!$&'*+,;=:@", c) != NULL;
}

static bool is_literal(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (!is_literal_byte((unsigned char)s[i]))
            return false;
    }
    return true;
}

static int seg_parse(const char *s, size_t len, struct seg *seg,
                     const struct where *w)
{
    const char *var;

    memset(seg, 0, sizeof(*seg));
    if (len == 0)
        return bad(w, "empty path segment");
    if (s[0] == '(') {
        const char *p = s + 1;
        const char *end = s + len - 1;

        if (len < 3 || *end != ')')
            return bad(w, "an alternative segment is (word|word...)");
        seg->kind = SEG_ALT;
        while (p <= end) {
            const char *bar = memchr(p, '|', (size_t)(end - p));
            const char *stop = bar != NULL ? bar : end;

            if (stop == p || !is_literal(p, (size_t)(stop - p)))
                return bad(w, "an alternative must be a non-empty word");
            if (seg->alt_cnt == MAX_ALTS)
                return bad(w, "more than 16 alternatives in a segment");
            seg->alts[seg->alt_cnt] = er_strndup(p, (size_t)(stop - p));
            if (seg->alts[seg->alt_cnt] == NULL)
                return oom(w);
            seg->alt_cnt++;
            p = stop + 1;
        }
        return 0;
    }
    var = memmem(s, len, VAR, sizeof(VAR) - 1);
    if (var == NULL) {
        if (!is_literal(s, len))
            return bad(w, "a path segment holds a character that is not "
                          "allowed (use {x} for a variable segment)");
        seg->kind = SEG_LITERAL;
        seg->text = er_strndup(s, len);
        return seg->text != NULL ? 0 : oom(w);
    }
    seg->kind = SEG_VAR;
    if (!is_literal(s, (size_t)(var - s)) ||
        !is_literal(var + 3, len - (size_t)(var - s) - 3))
        return bad(w, "a segment holds one {x} and otherwise plain text");
    seg->text = er_strndup(s, (size_t)(var - s));
    seg->suffix = er_strndup(var + 3, len - (size_t)(var - s) - 3);
    return seg->text != NULL && seg->suffix != NULL ? 0 : oom(w);
}

static int rule_parse(const char *method, size_t method_len, const char *pat,
                      size_t pat_len, struct rule *r, const struct where *w)
{
    const char *p;
    const char *end;
    size_t i;
    int rc;

    memset(r, 0, sizeof(*r));
    if (method_len == 0 || method_len > ER_BRIDGE_ALLOW_MAX_METHOD)
        return bad(w, "a route needs a METHOD of 1 to 16 letters");
    for (i = 0; i < method_len; i++) {
        if (method[i] < 'A' || method[i] > 'Z')
            return bad(w, "a route's METHOD is upper-case letters");
    }
    memcpy(r->method, method, method_len);
    if (pat_len < 2 || pat[0] != '/')
        return bad(w, "a route's path starts with / and has a segment");
    end = pat + pat_len;
    if (pat_len > sizeof(OPTIONAL_TAIL) &&
        memcmp(end - (sizeof(OPTIONAL_TAIL) - 1), OPTIONAL_TAIL,
               sizeof(OPTIONAL_TAIL) - 1) == 0) {
        r->has_optional_tail = true;
        end -= sizeof(OPTIONAL_TAIL) - 1;
    }
    r->segs = er_calloc(MAX_SEGMENTS, sizeof(*r->segs));
    if (r->segs == NULL)
        return oom(w);
    for (p = pat + 1; p <= end; r->seg_cnt++) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *stop = slash != NULL ? slash : end;

        if (r->seg_cnt == MAX_SEGMENTS)
            return bad(w, "more than 32 path segments");
        rc = seg_parse(p, (size_t)(stop - p), &r->segs[r->seg_cnt], w);
        if (rc != 0) {
            r->seg_cnt++; /* freed with the others */
            return rc;
        }
        p = stop + 1;
    }
    return 0;
}

static int header_add(char ***list, size_t *cnt, const char *name, size_t len,
                      const struct where *w)
{
    char **grown;
    size_t i;

    if (len == 0 || len > MAX_HEADER_NAME)
        return bad(w, "a header name is 1 to 64 characters");
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return bad(w, "a header name is lower-case letters, digits and "
                          "-");
    }
    grown = er_realloc(*list, (*cnt + 1) * sizeof(**list));
    if (grown == NULL)
        return oom(w);
    *list = grown;
    grown[*cnt] = er_strndup(name, len);
    if (grown[*cnt] == NULL)
        return oom(w);
    (*cnt)++;
    return 0;
}

/* The next whitespace-separated word of [*p, end), or len 0. */
static const char *word(const char **p, const char *end, size_t *len)
{
    const char *start;

    while (*p < end && (**p == ' ' || **p == '\t'))
        (*p)++;
    start = *p;
    while (*p < end && **p != ' ' && **p != '\t')
        (*p)++;
    *len = (size_t)(*p - start);
    return start;
}

static int line_parse(struct er_bridge_allow *a, const char *p, const char *end,
                      const struct where *w)
{
    size_t kind_len;
    size_t len;
    size_t len2;
    const char *kind = word(&p, end, &kind_len);
    const char *arg = word(&p, end, &len);
    const char *arg2 = NULL;
    struct rule *grown;
    int rc;

    if (kind_len == 0 || kind[0] == '#')
        return 0;
    if (kind_len == 5 && memcmp(kind, "route", 5) == 0) {
        arg2 = word(&p, end, &len2);
        (void)word(&p, end, &kind_len);
        if (kind_len != 0)
            return bad(w, "a route is: route METHOD /path");
        if (a->rule_cnt == ER_BRIDGE_ALLOW_MAX_RULES)
            return bad(w, "more than 1024 routes");
        grown = er_realloc(a->rules, (a->rule_cnt + 1) * sizeof(*a->rules));
        if (grown == NULL)
            return oom(w);
        a->rules = grown;
        rc = rule_parse(arg, len, arg2, len2, &a->rules[a->rule_cnt], w);
        a->rule_cnt++; /* freed with the others, whole or not */
        return rc;
    }
    if (!(kind_len == 7 && memcmp(kind, "request", 7) == 0) &&
        !(kind_len == 8 && memcmp(kind, "response", 8) == 0))
        return bad(w, "a line starts with route, request, response or #");
    (void)word(&p, end, &len2);
    if (len2 != 0)
        return bad(w, "a header line is: request|response <name>");
    if (kind_len == 7)
        return header_add(&a->request_headers, &a->request_cnt, arg, len, w);
    return header_add(&a->response_headers, &a->response_cnt, arg, len, w);
}

int er_bridge_allow_parse(const char *text, size_t len, const char *name,
                          struct er_bridge_allow **out, struct er_err *err)
{
    struct where w = { name, 0, err };
    struct er_bridge_allow *a;
    const char *p = text;
    const char *end = text + len;
    int rc = 0;

    *out = NULL;
    if (len > ER_BRIDGE_ALLOW_MAX_BYTES)
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL, "%s: over %d bytes",
                          name, ER_BRIDGE_ALLOW_MAX_BYTES);
    if (memchr(text, '\0', len) != NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "%s: holds a NUL byte", name);
    a = er_calloc(1, sizeof(*a));
    if (a == NULL)
        return oom(&w);
    while (rc == 0 && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl != NULL ? nl : end;

        w.line++;
        if (stop > p && stop[-1] == '\r')
            stop--;
        rc = line_parse(a, p, stop, &w);
        p = (nl != NULL ? nl : end) + 1;
    }
    if (rc == 0 && a->rule_cnt == 0)
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                        "%s: no route: the bridge would refuse everything",
                        name);
    if (rc != 0) {
        er_bridge_allow_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

int er_bridge_allow_load(const char *path, struct er_bridge_allow **out,
                         struct er_err *err)
{
    char *buf;
    size_t n;
    FILE *f;
    int rc;

    if (path == NULL || path[0] == '\0')
        return er_bridge_allow_parse(er_embed_bridge_allowlist,
                                     strlen(er_embed_bridge_allowlist),
                                     "bridge/allowlist.txt", out, err);
    f = fopen(path, "rb");
    if (f == NULL) {
        char msg[128];

        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "%s: %s", path,
                          er_strerror(errno, msg, sizeof(msg)));
    }
    /* One byte more than the cap, so an oversized file is seen as such. */
    buf = er_malloc(ER_BRIDGE_ALLOW_MAX_BYTES + 1);
    if (buf == NULL) {
        fclose(f);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                          "%s: out of memory", path);
    }
    n = fread(buf, 1, ER_BRIDGE_ALLOW_MAX_BYTES + 1, f);
    if (ferror(f))
        rc =
            er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "%s: read failed", path);
    else
        rc = er_bridge_allow_parse(buf, n, path, out, err);
    fclose(f);
    er_free(buf);
    return rc;
}

/* ================================================================
 * Matching
 * ================================================================ */

static bool seg_matches(const struct seg *s, const char *p, size_t len)
{
    size_t pre;
    size_t suf;
    size_t i;

    switch (s->kind) {
    case SEG_LITERAL:
        return strlen(s->text) == len && memcmp(s->text, p, len) == 0;
    case SEG_VAR:
        pre = strlen(s->text);
        suf = strlen(s->suffix);
        return len > pre + suf && memcmp(p, s->text, pre) == 0 &&
               memcmp(p + len - suf, s->suffix, suf) == 0;
    case SEG_ALT:
        for (i = 0; i < s->alt_cnt; i++) {
            if (strlen(s->alts[i]) == len && memcmp(s->alts[i], p, len) == 0)
                return true;
        }
        return false;
    }
    return false;
}

/* Whether a segment of a request's path is one a rule may match at all:
 * not "." or ".." (plain or percent-encoded: a client or server that
 * resolves them would reach another route than the one matched). */
static bool is_plain_segment(const char *p, size_t len)
{
    size_t dots = 0;
    size_t i = 0;

    while (i < len) {
        if (p[i] == '.') {
            i++;
        } else if (i + 3 <= len && p[i] == '%' && p[i + 1] == '2' &&
                   (p[i + 2] == 'e' || p[i + 2] == 'E')) {
            i += 3;
        } else {
            return true;
        }
        dots++;
    }
    return dots > 2 || len == 0;
}

/* Whether path may be matched at all: printable ASCII, no query or
 * fragment, no backslash, no encoded slash or backslash. */
static bool is_plain_path(const char *path)
{
    const char *p;

    for (p = path; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;

        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '\\')
            return false;
        if (c == '%' && p[1] != '\0' &&
            ((p[1] == '2' && (p[2] == 'f' || p[2] == 'F')) ||
             (p[1] == '5' && (p[2] == 'c' || p[2] == 'C'))))
            return false;
    }
    return true;
}

static bool rule_matches(const struct rule *r, const char *path)
{
    const char *p = path + 1;
    size_t i = 0;

    for (;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash != NULL ? (size_t)(slash - p) : strlen(p);

        if (len == 0 || !is_plain_segment(p, len))
            return false; /* "//", a trailing "/", a dot segment */
        if (i < r->seg_cnt) {
            if (!seg_matches(&r->segs[i], p, len))
                return false;
        } else if (!(i == r->seg_cnt && r->has_optional_tail)) {
            return false;
        }
        i++;
        if (slash == NULL)
            break;
        p = slash + 1;
    }
    return i == r->seg_cnt || (r->has_optional_tail && i == r->seg_cnt + 1);
}

bool er_bridge_allow_route(const struct er_bridge_allow *allow,
                           const char *method, const char *path)
{
    size_t i;

    if (method == NULL || method[0] == '\0')
        method = "GET";
    if (path == NULL || path[0] != '/' || !is_plain_path(path))
        return false;
    for (i = 0; i < allow->rule_cnt; i++) {
        if (strcmp(allow->rules[i].method, method) == 0 &&
            rule_matches(&allow->rules[i], path))
            return true;
    }
    return false;
}

static bool in_list(char *const *list, size_t cnt, const char *name)
{
    size_t i;

    for (i = 0; name != NULL && i < cnt; i++) {
        if (strcasecmp(list[i], name) == 0)
            return true;
    }
    return false;
}

bool er_bridge_allow_request_header(const struct er_bridge_allow *allow,
                                    const char *name)
{
    return in_list(allow->request_headers, allow->request_cnt, name);
}

bool er_bridge_allow_response_header(const struct er_bridge_allow *allow,
                                     const char *name)
{
    return in_list(allow->response_headers, allow->response_cnt, name);
}

size_t er_bridge_allow_route_count(const struct er_bridge_allow *allow)
{
    return allow->rule_cnt;
}
