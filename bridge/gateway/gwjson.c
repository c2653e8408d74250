/* gwjson: JSON for the gateway without a heap. A push tokenizer that hands
 * strings out in pieces (so a 60 MiB envelope costs a few hundred bytes of
 * state), UTF-8 repair as Node's decoder does it, and JSON.stringify's
 * escaping. Pure functions over caller-owned state; thread-compatible. */
#include <stdio.h>
#include <string.h>

#include "bridge/gateway/gateway_int.h"

/* ================================================================
 * UTF-8 repair
 * ================================================================ */

static const uint8_t replacement[3] = { 0xEF, 0xBF, 0xBD };

/* Take one byte. Returns the bytes written to out (0-4; 3 for a lone bad
 * lead, which is U+FFFD), or -1 when b does not continue the pending
 * sequence: the state is reset and b must be taken again after a U+FFFD. */
static int utf8_take(struct er_gwjson_utf8 *u, uint8_t b, uint8_t out[4])
{
    if (u->need == 0) {
        if (b < 0x80) {
            out[0] = b;
            return 1;
        }
        u->lo = 0x80;
        u->hi = 0xBF;
        u->seen = 0;
        if (b >= 0xC2 && b <= 0xDF) {
            u->need = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            if (b == 0xE0)
                u->lo = 0xA0;
            if (b == 0xED)
                u->hi = 0x9F;
            u->need = 2;
        } else if (b >= 0xF0 && b <= 0xF4) {
            if (b == 0xF0)
                u->lo = 0x90;
            if (b == 0xF4)
                u->hi = 0x8F;
            u->need = 3;
        } else {
            memcpy(out, replacement, 3);
            return 3;
        }
        u->buf[0] = b;
        return 0;
    }
    if (b < u->lo || b > u->hi) {
        u->need = 0;
        return -1;
    }
    u->lo = 0x80;
    u->hi = 0xBF;
    u->buf[++u->seen] = b;
    if (u->seen < u->need)
        return 0;
    memcpy(out, u->buf, (size_t)u->need + 1);
    u->need = 0;
    return u->seen + 1;
}

size_t er_gwjson_utf8_push(struct er_gwjson_utf8 *u, uint8_t b, uint8_t out[8])
{
    int n = utf8_take(u, b, out);

    if (n >= 0)
        return (size_t)n;
    memcpy(out, replacement, 3);
    n = utf8_take(u, b, out + 3);
    return 3 + (size_t)n;
}

size_t er_gwjson_utf8_end(struct er_gwjson_utf8 *u, uint8_t out[4])
{
    if (u->need == 0)
        return 0;
    u->need = 0;
    memcpy(out, replacement, 3);
    return 3;
}

/* ================================================================
 * Escaping
 * ================================================================ */

size_t er_gwjson_escape_byte(uint8_t b, char out[6])
{
    static const char hex[] = "0123456789abcdef";
    static const char from[] = "\"\\\b\f\n\r\t";
    static const char to[] = "\"\\bfnrt";
    const char *p = b != 0 ? memchr(from, b, sizeof(from) - 1) : NULL;

    if (p != NULL) {
        out[0] = '\\';
        out[1] = to[p - from];
        return 2;
    }
    if (b >= 0x20) {
        out[0] = (char)b;
        return 1;
    }
    out[0] = '\\';
    out[1] = 'u';
    out[2] = '0';
    out[3] = '0';
    out[4] = hex[b >> 4];
    out[5] = hex[b & 15];
    return 6;
}

size_t er_gwjson_text_byte(struct er_gwjson_utf8 *u8, uint8_t b, bool is_latin1,
                           uint8_t out[8])
{
    if (!is_latin1)
        return er_gwjson_utf8_push(u8, b, out);
    if (b < 0x80) {
        out[0] = b;
        return 1;
    }
    out[0] = (uint8_t)(0xC0 | (b >> 6));
    out[1] = (uint8_t)(0x80 | (b & 0x3F));
    return 2;
}

static void put_out(char *out, size_t out_len, size_t *at, const char *p,
                    size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (*at + 1 < out_len)
            out[*at] = p[i];
        (*at)++;
    }
}

size_t er_gwjson_quote(char *out, size_t out_len, const char *s, size_t len,
                       bool is_latin1)
{
    struct er_gwjson_utf8 u8 = { 0 };
    size_t at = 0;
    size_t i, j, n;
    uint8_t rep[8];
    char esc[6];

    put_out(out, out_len, &at, "\"", 1);
    for (i = 0; i < len; i++) {
        n = er_gwjson_text_byte(&u8, (uint8_t)s[i], is_latin1, rep);
        for (j = 0; j < n; j++)
            put_out(out, out_len, &at, esc, er_gwjson_escape_byte(rep[j], esc));
    }
    n = er_gwjson_utf8_end(&u8, rep);
    put_out(out, out_len, &at, (const char *)rep, n);
    put_out(out, out_len, &at, "\"", 1);
    if (out_len > 0)
        out[at < out_len ? at : out_len - 1] = '\0';
    return at;
}

/* ================================================================
 * Tokenizer
 * ================================================================ */

enum {
    S_VALUE = 0,   /* a value must come */
    S_ARR_FIRST,   /* after '[': a value or ']' */
    S_OBJ_FIRST,   /* after '{': a key or '}' */
    S_OBJ_KEY,     /* after ',' in an object: a key */
    S_COLON,       /* after a key */
    S_OBJ_NEXT,    /* after a member: ',' or '}' */
    S_ARR_NEXT,    /* after an element: ',' or ']' */
    S_STR,         /* inside a string */
    S_STR_ESC,     /* after a backslash */
    S_STR_HEX,     /* inside \uXXXX */
    S_NUM_MINUS,   /* "-": a digit must come */
    S_NUM_ZERO,    /* a leading 0 */
    S_NUM_INT,     /* integer digits */
    S_NUM_DOT,     /* ".": a digit must come */
    S_NUM_FRAC,    /* fraction digits */
    S_NUM_EXP,     /* "e": a sign or digit must come */
    S_NUM_EXP_SGN, /* "e+": a digit must come */
    S_NUM_EXP_DIG, /* exponent digits */
    S_LIT,         /* inside true / false / null */
    S_DONE,        /* the value is complete: whitespace only */
    S_ERR,
};

static const char *const literals[3] = { "true", "false", "null" };
static const enum er_gwjson_ev literal_ev[3] = { ER_GWJSON_TRUE,
                                                 ER_GWJSON_FALSE,
                                                 ER_GWJSON_NULL };

void er_gwjson_init(struct er_gwjson *js, uint64_t base_pos)
{
    memset(js, 0, sizeof(*js));
    js->state = S_VALUE;
    js->pos = base_pos;
}

static int syntax(struct er_gwjson *js, const char *what, uint8_t b)
{
    if (what != NULL)
        snprintf(js->err, sizeof(js->err), "%s in JSON at position %llu", what,
                 (unsigned long long)js->pos);
    else if (b > 0x20 && b < 0x7F)
        snprintf(js->err, sizeof(js->err),
                 "Unexpected token '%c' in JSON at position %llu", (char)b,
                 (unsigned long long)js->pos);
    else
        snprintf(js->err, sizeof(js->err),
                 "Unexpected token in JSON at position %llu",
                 (unsigned long long)js->pos);
    js->state = S_ERR;
    return ER_GWJSON_ESYNTAX;
}

static bool is_ws(uint8_t b)
{
    return b == ' ' || b == '\t' || b == '\n' || b == '\r';
}

static bool top_is_object(const struct er_gwjson *js)
{
    int d = js->depth - 1;

    return (js->stack[d / 8] >> (d % 8)) & 1;
}

/* Call fn; map its answer to the tokenizer's return codes. */
static int emit(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx,
                enum er_gwjson_ev type, uint64_t pos, const char *data,
                size_t len)
{
    struct er_gwjson_event ev = { type, js->depth, pos, data, len };
    int rc = fn(ctx, &ev);

    if (rc < 0) {
        js->state = S_ERR;
        return ER_GWJSON_ECALLBACK;
    }
    return rc > 0 ? 1 : 0;
}

static int flush_str(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx)
{
    int rc;

    if (js->out_len == 0)
        return 0;
    rc = emit(js, fn, ctx, js->is_key ? ER_GWJSON_KEY_DATA : ER_GWJSON_STR_DATA,
              js->tok_pos, js->out, js->out_len);
    js->out_len = 0;
    return rc;
}

static int put_str(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx,
                   const uint8_t *p, size_t n)
{
    int rc = 0;

    if (js->out_len + n > sizeof(js->out))
        rc = flush_str(js, fn, ctx);
    memcpy(js->out + js->out_len, p, n);
    js->out_len += n;
    return rc;
}

/* A high surrogate not followed by its low half is U+FFFD, as Node's
 * UTF-8 encoder writes a lone surrogate. */
static int put_pending_surrogate(struct er_gwjson *js, er_gwjson_event_fn fn,
                                 void *ctx)
{
    if (js->hi_surr == 0)
        return 0;
    js->hi_surr = 0;
    return put_str(js, fn, ctx, replacement, 3);
}

static int put_cp(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx,
                  uint32_t cp)
{
    uint8_t b[4];
    size_t n;
    int rc;

    if (js->hi_surr != 0 && cp >= 0xDC00 && cp <= 0xDFFF) {
        cp = 0x10000 + ((js->hi_surr - 0xD800) << 10) + (cp - 0xDC00);
        js->hi_surr = 0;
    } else {
        rc = put_pending_surrogate(js, fn, ctx);
        if (rc != 0)
            return rc;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            js->hi_surr = cp;
            return 0;
        }
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            cp = 0xFFFD;
    }
    if (cp < 0x80) {
        b[0] = (uint8_t)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (uint8_t)(0xC0 | (cp >> 6));
        b[1] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (uint8_t)(0xE0 | (cp >> 12));
        b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (uint8_t)(0xF0 | (cp >> 18));
        b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return put_str(js, fn, ctx, b, n);
}

/* A value ended: what may follow depends on the container around it. */
static void after_value(struct er_gwjson *js)
{
    if (js->depth == 0)
        js->state = S_DONE;
    else
        js->state = top_is_object(js) ? S_OBJ_NEXT : S_ARR_NEXT;
}

static int end_number(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx)
{
    /* A number longer than the buffer is handed out without its text. */
    bool is_long = js->num_len > sizeof(js->num);
    int rc = emit(js, fn, ctx, ER_GWJSON_NUMBER, js->tok_pos,
                  is_long ? NULL : js->num, is_long ? 0 : js->num_len);

    after_value(js);
    return rc;
}

static void num_put(struct er_gwjson *js, uint8_t b)
{
    if (js->num_len < sizeof(js->num))
        js->num[js->num_len] = (char)b;
    js->num_len++;
}

static bool num_can_end(uint8_t state)
{
    return state == S_NUM_ZERO || state == S_NUM_INT || state == S_NUM_FRAC ||
           state == S_NUM_EXP_DIG;
}

static int open_container(struct er_gwjson *js, er_gwjson_event_fn fn,
                          void *ctx, bool is_object)
{
    int d = js->depth;
    int rc;

    if (d >= ER_GWJSON_DEPTH_MAX)
        return syntax(js, "Nesting too deep", 0);
    rc =
        emit(js, fn, ctx, is_object ? ER_GWJSON_OBJ_BEGIN : ER_GWJSON_ARR_BEGIN,
             js->pos, NULL, 0);
    if (is_object)
        js->stack[d / 8] |= (uint8_t)(1u << (d % 8));
    else
        js->stack[d / 8] &= (uint8_t) ~(1u << (d % 8));
    js->depth++;
    js->state = is_object ? S_OBJ_FIRST : S_ARR_FIRST;
    return rc;
}

static int close_container(struct er_gwjson *js, er_gwjson_event_fn fn,
                           void *ctx, bool is_object)
{
    js->depth--;
    after_value(js);
    return emit(js, fn, ctx, is_object ? ER_GWJSON_OBJ_END : ER_GWJSON_ARR_END,
                js->pos, NULL, 0);
}

/* The first byte of a value. */
static int start_value(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx,
                       uint8_t b)
{
    int i;

    js->tok_pos = js->pos;
    switch (b) {
    case '{':
        return open_container(js, fn, ctx, true);
    case '[':
        return open_container(js, fn, ctx, false);
    case '"':
        js->is_key = false;
        js->state = S_STR;
        return emit(js, fn, ctx, ER_GWJSON_STR_BEGIN, js->pos, NULL, 0);
    case '-':
        js->num_len = 0;
        num_put(js, b);
        js->state = S_NUM_MINUS;
        return 0;
    default:
        break;
    }
    if (b >= '0' && b <= '9') {
        js->num_len = 0;
        num_put(js, b);
        js->state = b == '0' ? S_NUM_ZERO : S_NUM_INT;
        return 0;
    }
    for (i = 0; i < 3; i++) {
        if (b == (uint8_t)literals[i][0]) {
            js->lit = (uint8_t)i;
            js->lit_idx = 1;
            js->state = S_LIT;
            return 0;
        }
    }
    return syntax(js, NULL, b);
}

static int start_key(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx)
{
    js->tok_pos = js->pos;
    js->is_key = true;
    js->state = S_STR;
    return emit(js, fn, ctx, ER_GWJSON_KEY_BEGIN, js->pos, NULL, 0);
}

static int end_string(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx)
{
    bool is_key = js->is_key;
    int rc = put_pending_surrogate(js, fn, ctx);

    if (rc == 0)
        rc = flush_str(js, fn, ctx);
    if (rc != 0)
        return rc;
    if (is_key)
        js->state = S_COLON;
    else
        after_value(js);
    return emit(js, fn, ctx, is_key ? ER_GWJSON_KEY_END : ER_GWJSON_STR_END,
                js->pos, NULL, 0);
}

int er_gwjson_hex_val(uint8_t b)
{
    if (b >= '0' && b <= '9')
        return b - '0';
    if (b >= 'a' && b <= 'f')
        return b - 'a' + 10;
    if (b >= 'A' && b <= 'F')
        return b - 'A' + 10;
    return -1;
}

static int on_escape(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx,
                     uint8_t b)
{
    static const char from[] = "\"\\/bfnrt";
    static const char to[] = "\"\\/\b\f\n\r\t";
    const char *p = b != 0 ? memchr(from, b, sizeof(from) - 1) : NULL;

    if (b == 'u') {
        js->hex_cnt = 0;
        js->esc_cp = 0;
        js->state = S_STR_HEX;
        return 0;
    }
    if (p == NULL)
        return syntax(js, "Bad escaped character", 0);
    js->state = S_STR;
    return put_cp(js, fn, ctx, (uint8_t)to[p - from]);
}

/* One byte inside a string (S_STR). Sets is_retake when b must be taken
 * again (a broken UTF-8 sequence ended before it). */
static int on_string_byte(struct er_gwjson *js, er_gwjson_event_fn fn,
                          void *ctx, uint8_t b)
{
    uint8_t out[4];
    int n, rc;

    if (js->u8.need != 0 || b >= 0x80) {
        rc = put_pending_surrogate(js, fn, ctx);
        if (rc != 0)
            return rc;
        n = utf8_take(&js->u8, b, out);
        if (n < 0) {
            js->is_retake = true;
            return put_str(js, fn, ctx, replacement, 3);
        }
        return n > 0 ? put_str(js, fn, ctx, out, (size_t)n) : 0;
    }
    if (b == '"')
        return end_string(js, fn, ctx);
    if (b == '\\') {
        js->state = S_STR_ESC;
        return 0;
    }
    if (b < 0x20)
        return syntax(js, "Bad control character in string literal", 0);
    return put_cp(js, fn, ctx, b);
}

/* One number byte, or the byte that ends the number (is_retake: take it
 * again in the state after the value). */
static int on_number_byte(struct er_gwjson *js, er_gwjson_event_fn fn,
                          void *ctx, uint8_t b)
{
    bool is_digit = b >= '0' && b <= '9';
    uint8_t st = js->state;

    if (is_digit && st != S_NUM_ZERO) {
        num_put(js, b);
        if (st == S_NUM_MINUS)
            js->state = b == '0' ? S_NUM_ZERO : S_NUM_INT;
        else if (st == S_NUM_DOT)
            js->state = S_NUM_FRAC;
        else if (st == S_NUM_EXP || st == S_NUM_EXP_SGN)
            js->state = S_NUM_EXP_DIG;
        return 0;
    }
    if (b == '.' && (st == S_NUM_ZERO || st == S_NUM_INT)) {
        num_put(js, b);
        js->state = S_NUM_DOT;
        return 0;
    }
    if ((b == 'e' || b == 'E') &&
        (st == S_NUM_ZERO || st == S_NUM_INT || st == S_NUM_FRAC)) {
        num_put(js, b);
        js->state = S_NUM_EXP;
        return 0;
    }
    if ((b == '+' || b == '-') && st == S_NUM_EXP) {
        num_put(js, b);
        js->state = S_NUM_EXP_SGN;
        return 0;
    }
    if (!num_can_end(st))
        return syntax(js, NULL, b);
    js->is_retake = true;
    return end_number(js, fn, ctx);
}

/* One byte in a structural state. */
static int on_struct_byte(struct er_gwjson *js, er_gwjson_event_fn fn,
                          void *ctx, uint8_t b)
{
    if (is_ws(b))
        return 0;
    switch (js->state) {
    case S_VALUE:
        return start_value(js, fn, ctx, b);
    case S_ARR_FIRST:
        if (b == ']')
            return close_container(js, fn, ctx, false);
        return start_value(js, fn, ctx, b);
    case S_OBJ_FIRST:
        if (b == '}')
            return close_container(js, fn, ctx, true);
        if (b == '"')
            return start_key(js, fn, ctx);
        break;
    case S_OBJ_KEY:
        if (b == '"')
            return start_key(js, fn, ctx);
        break;
    case S_COLON:
        if (b == ':') {
            js->state = S_VALUE;
            return 0;
        }
        break;
    case S_OBJ_NEXT:
        if (b == ',') {
            js->state = S_OBJ_KEY;
            return 0;
        }
        if (b == '}')
            return close_container(js, fn, ctx, true);
        break;
    case S_ARR_NEXT:
        if (b == ',') {
            js->state = S_VALUE;
            return 0;
        }
        if (b == ']')
            return close_container(js, fn, ctx, false);
        break;
    case S_DONE:
        return syntax(js, "Unexpected non-whitespace character after JSON", 0);
    default:
        break;
    }
    return syntax(js, NULL, b);
}

static int on_byte(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx,
                   uint8_t b)
{
    const char *lit;
    int v;

    switch (js->state) {
    case S_STR:
        return on_string_byte(js, fn, ctx, b);
    case S_STR_ESC:
        return on_escape(js, fn, ctx, b);
    case S_STR_HEX:
        v = er_gwjson_hex_val(b);
        if (v < 0)
            return syntax(js, "Bad Unicode escape", 0);
        js->esc_cp = (js->esc_cp << 4) | (uint32_t)v;
        if (++js->hex_cnt < 4)
            return 0;
        js->state = S_STR;
        return put_cp(js, fn, ctx, js->esc_cp);
    case S_NUM_MINUS:
    case S_NUM_ZERO:
    case S_NUM_INT:
    case S_NUM_DOT:
    case S_NUM_FRAC:
    case S_NUM_EXP:
    case S_NUM_EXP_SGN:
    case S_NUM_EXP_DIG:
        return on_number_byte(js, fn, ctx, b);
    case S_LIT:
        lit = literals[js->lit];
        if (b != (uint8_t)lit[js->lit_idx])
            return syntax(js, NULL, b);
        if (lit[++js->lit_idx] != '\0')
            return 0;
        after_value(js);
        return emit(js, fn, ctx, literal_ev[js->lit], js->tok_pos, NULL, 0);
    case S_ERR:
        return ER_GWJSON_ESYNTAX;
    default:
        return on_struct_byte(js, fn, ctx, b);
    }
}

int er_gwjson_feed(struct er_gwjson *js, const char *buf, size_t len,
                   er_gwjson_event_fn fn, void *ctx, size_t *used)
{
    size_t i = 0;
    int rc = 0;

    if (js->state == S_ERR)
        return ER_GWJSON_ESYNTAX;
    while (i < len) {
        uint8_t b = (uint8_t)buf[i];

        /* Fast path: plain text inside a string. */
        if (js->state == S_STR && js->u8.need == 0 && js->hi_surr == 0 &&
            b >= 0x20 && b < 0x80 && b != '"' && b != '\\') {
            if (js->out_len == sizeof(js->out)) {
                rc = flush_str(js, fn, ctx);
                if (rc != 0)
                    break;
            }
            js->out[js->out_len++] = (char)b;
            js->pos++;
            i++;
            continue;
        }
        rc = on_byte(js, fn, ctx, b);
        if (js->is_retake) {
            /* The same byte again, in the new state. */
            js->is_retake = false;
            if (rc != 0)
                break;
            continue;
        }
        js->pos++;
        i++;
        if (rc != 0)
            break;
    }
    if (rc == 0 && (js->state == S_STR || js->state == S_STR_ESC ||
                    js->state == S_STR_HEX))
        rc = flush_str(js, fn, ctx);
    if (used != NULL)
        *used = i;
    return rc;
}

int er_gwjson_finish(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx)
{
    int rc;

    if (js->state == S_ERR)
        return ER_GWJSON_ESYNTAX;
    if (num_can_end(js->state) && js->depth == 0) {
        rc = end_number(js, fn, ctx);
        if (rc < 0)
            return rc;
    }
    if (js->state != S_DONE) {
        snprintf(js->err, sizeof(js->err), "Unexpected end of JSON input");
        js->state = S_ERR;
        return ER_GWJSON_ESYNTAX;
    }
    return 0;
}
