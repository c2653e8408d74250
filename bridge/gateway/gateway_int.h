/* gateway_int: what the files of gateway/ share, and what the gateway's
 * tests and fuzz target reach: the JSON tokenizer and escapers (gwjson.c),
 * the HTTP head, URL and chunked parsers (gwhttp.c), the envelope codec
 * (gwenvelope.c), the connection state machine (gwconn.c) and the two
 * transports (gwqueue.c, gwstream.c). Nothing here allocates: every buffer
 * is fixed and owned by the struct that holds it. */
#ifndef ER_GATEWAY_GATEWAY_INT_H
#define ER_GATEWAY_GATEWAY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bridge/gateway/gateway.h"

/* ================================================================
 * Limits and constants (upstream.md B10 and our own)
 * ================================================================ */

#define ER_GW_CONN_MAX      64    /* connections at once; more get a 503 */
#define ER_GW_HEAD_MAX      16384 /* request head bytes; more is a 431 */
#define ER_GW_TARGET_MAX    8192  /* request-target bytes; more is a 414 */
#define ER_GW_HDR_MAX       64    /* request header lines; more is a 431 */
#define ER_GW_METHOD_MAX    32    /* request method bytes; more is a 400 */
#define ER_GW_URL_MAX       8192  /* normalised path + query bytes */
#define ER_GW_IO_MAX        4096  /* per-connection I/O buffer */
#define ER_GW_SCRATCH_MAX   16384 /* per-connection head / response head */
#define ER_GW_ID_LEN        36    /* a UUID's text */
#define ER_GW_RESP_HDR_MAX  64    /* response header lines we copy */
#define ER_GW_STATUS_ROOM   64    /* scratch bytes kept for the status line */
#define ER_GW_FRAME_HDR_LEN 4     /* stream_v1 length prefix */

#define ER_GW_HEAD_TIMEOUT_MS    10000 /* accept to complete head */
#define ER_GW_BODY_IDLE_MS       10000 /* no body byte for this long: drop */
#define ER_GW_SEND_IDLE_MS       30000 /* client reads nothing for this long */
#define ER_GW_LINGER_MS          2000  /* drain unread input after a reply */
#define ER_GW_STALE_GRACE_MS     2000  /* B5 step 2: timeout + this = stale */
#define ER_GW_HOST_GONE_DRAIN_MS 5000  /* stream_v1: answer, then exit */
#define ER_GW_PASS1_BUDGET       ((size_t)256 * 1024) /* bytes per loop turn */

#define ER_GW_MULTIPART_HEADROOM 65536 /* B10 */
#define ER_GW_LEDGER_CEILING_MAX ((uint64_t)1 << 30)

/* Envelope limit of B3: 6 x max body + 64 KiB. */
static inline uint64_t er_gw_envelope_limit(uint64_t max_body)
{
    return 6 * max_body + ER_GW_MULTIPART_HEADROOM;
}

/* Messages of B4-B5, quoted exactly: peers match on them. */
#define ER_GW_MSG_TOKEN      "Invalid bridge token."
#define ER_GW_MSG_QUEUE_FULL "Bridge request queue is full."
#define ER_GW_MSG_JSON_ONLY  "Bridge only accepts JSON request bodies."
#define ER_GW_MSG_BODY_LIMIT \
    "Bridge request body exceeded the configured size limit."
#define ER_GW_MSG_LEDGER                                                  \
    "The bridge gateway process reached its reserved body byte ceiling. " \
    "Retry later."
#define ER_GW_MSG_ENV_LIMIT \
    "Bridge response envelope exceeded the configured size limit."
#define ER_GW_MSG_ENV_CHANGED "Bridge response envelope changed while reading."
#define ER_GW_MSG_TIMEOUT     "Timed out waiting for host bridge response."
#define ER_GW_MSG_B64         "Invalid bridge base64 body."
#define ER_GW_MSG_ENCODING    "Unsupported bridge body encoding."
#define ER_GW_MSG_BODY_SIZE   "Bridge body exceeded the configured size limit."
#define ER_GW_MSG_BODY_BAD    "Invalid bridge body."
#define ER_GW_MSG_HOST_GONE   "Bridge host disconnected."

/* ================================================================
 * Logging, time, assertions (gateway.c)
 * ================================================================ */

/* Invariants only (never input): prints and aborts. */
void er_gateway_assert_fail(const char *expr, const char *file, int line)
    __attribute__((noreturn));
#define ER_GW_ASSERT(cond) \
    ((cond) ? (void)0 : er_gateway_assert_fail(#cond, __FILE__, __LINE__))

/* One line "[paperclip-bridge] <msg>" on stderr. Never pass the token or
 * a body. */
void er_gateway_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int64_t er_gateway_mono_ms(void);
/* Write all n bytes of p to fd (blocking; EINTR retried): 0, or -1. */
int er_gateway_write_all(int fd, const void *p, size_t n);
/* ISO-8601 UTC with milliseconds, like JavaScript's toISOString(). */
void er_gateway_iso_now(char out[32]);
/* A random UUID v4 from getrandom(); 0 or -1. */
int er_gateway_uuid(char out[ER_GW_ID_LEN + 1]);

/* ================================================================
 * JSON (gwjson.c)
 * ================================================================ */

/* Streaming UTF-8 repair as a WHATWG decoder does it: every maximal invalid
 * subpart becomes U+FFFD, valid sequences pass unchanged. */
struct er_gwjson_utf8 {
    uint8_t need; /* continuation bytes still expected */
    uint8_t seen;
    uint8_t lo, hi; /* bounds of the next continuation byte */
    uint8_t buf[4];
};

/* Push one byte; writes 0 to 7 repaired bytes to out, returns their count. */
size_t er_gwjson_utf8_push(struct er_gwjson_utf8 *u, uint8_t b, uint8_t out[8]);
/* End of input: U+FFFD for a dangling sequence. Returns bytes written. */
size_t er_gwjson_utf8_end(struct er_gwjson_utf8 *u, uint8_t out[4]);

/* Value of a hex digit, -1 for anything else. */
int er_gwjson_hex_val(uint8_t b);
/* One byte of source text as UTF-8 to escape: with is_latin1 the byte is a
 * code point (HTTP header text as Node reads it), else it goes through u8.
 * Returns the bytes written to out. */
size_t er_gwjson_text_byte(struct er_gwjson_utf8 *u8, uint8_t b, bool is_latin1,
                           uint8_t out[8]);
/* JSON.stringify's escape of one byte of valid UTF-8 text; returns the
 * length written to out (1, 2 or 6). */
size_t er_gwjson_escape_byte(uint8_t b, char out[6]);

/* Write s as a quoted JSON string into out (at most out_len bytes, NUL
 * terminated when there is room). With is_latin1 each byte is a code point
 * (HTTP header text); else s is UTF-8, repaired. Returns the length the
 * whole string needs, like snprintf. */
size_t er_gwjson_quote(char *out, size_t out_len, const char *s, size_t len,
                       bool is_latin1);

enum er_gwjson_ev {
    ER_GWJSON_OBJ_BEGIN = 0,
    ER_GWJSON_OBJ_END,
    ER_GWJSON_ARR_BEGIN,
    ER_GWJSON_ARR_END,
    ER_GWJSON_KEY_BEGIN, /* an object key, as KEY_DATA pieces */
    ER_GWJSON_KEY_DATA,
    ER_GWJSON_KEY_END,
    ER_GWJSON_STR_BEGIN, /* a string value, as STR_DATA pieces */
    ER_GWJSON_STR_DATA,
    ER_GWJSON_STR_END,
    ER_GWJSON_NUMBER,
    ER_GWJSON_TRUE,
    ER_GWJSON_FALSE,
    ER_GWJSON_NULL,
};

struct er_gwjson_event {
    enum er_gwjson_ev type;
    int depth;        /* containers around the token; a top-level value: 0 */
    uint64_t pos;     /* input offset of the token's first byte */
    const char *data; /* *_DATA: decoded UTF-8 text; NUMBER: its text,
                         NULL when longer than ER_GWJSON_NUM_MAX */
    size_t len;
};

/* Event sink: 0 goes on, 1 stops the feed (er_gwjson_feed returns 1),
 * negative aborts it (returns ER_GWJSON_ECALLBACK). */
typedef int (*er_gwjson_event_fn)(void *ctx, const struct er_gwjson_event *ev);

#define ER_GWJSON_DEPTH_MAX 512
#define ER_GWJSON_NUM_MAX   64
#define ER_GWJSON_ESYNTAX   (-1)
#define ER_GWJSON_ECALLBACK (-2)

/* A push tokenizer for one JSON text, fed in pieces of any size. Strings
 * are decoded (escapes, surrogate pairs, UTF-8 repair as Node reads a file)
 * and handed out in pieces, so a value of any length costs no memory. */
struct er_gwjson {
    uint8_t state;
    uint8_t lit_idx;  /* bytes of true/false/null matched */
    uint8_t lit;      /* which literal */
    uint8_t hex_cnt;  /* \u digits read */
    bool is_key;      /* the string being read is an object key */
    bool is_retake;   /* the current byte must be read again */
    uint32_t esc_cp;  /* \u value being read */
    uint32_t hi_surr; /* pending high surrogate, 0: none */
    struct er_gwjson_utf8 u8;
    int depth;
    uint8_t stack[ER_GWJSON_DEPTH_MAX / 8]; /* bit set: object */
    uint64_t pos;                           /* input offset of the next byte */
    uint64_t tok_pos;                       /* offset of the token being read */
    char num[ER_GWJSON_NUM_MAX];
    size_t num_len; /* may exceed the buffer: then num holds a prefix */
    char out[256];  /* decoded string bytes not handed out yet */
    size_t out_len;
    char err[112]; /* the syntax error, V8's wording */
};

/* Start a tokenizer whose first byte is at input offset base_pos. */
void er_gwjson_init(struct er_gwjson *js, uint64_t base_pos);
/* Feed len bytes. Returns 0 (all consumed), 1 (the callback stopped it
 * after *used bytes), ER_GWJSON_ESYNTAX (message in js->err) or
 * ER_GWJSON_ECALLBACK. used may be NULL. */
int er_gwjson_feed(struct er_gwjson *js, const char *buf, size_t len,
                   er_gwjson_event_fn fn, void *ctx, size_t *used);
/* End of input: 0 when one complete value was read, else as feed. */
int er_gwjson_finish(struct er_gwjson *js, er_gwjson_event_fn fn, void *ctx);

/* ================================================================
 * HTTP (gwhttp.c)
 * ================================================================ */

#define ER_GWHTTP_INCOMPLETE 1

struct er_gwhttp_hdr {
    const char *name; /* borrowed from the head buffer */
    size_t name_len;
    const char *value; /* surrounding whitespace trimmed */
    size_t value_len;
};

/* A parsed request head; every pointer borrows the parsed buffer. */
struct er_gwhttp_req {
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    int minor_version; /* HTTP/1.<minor> */
    struct er_gwhttp_hdr hdrs[ER_GW_HDR_MAX];
    size_t hdr_cnt;
    size_t head_len; /* bytes of the head, final empty line included */
};

/* Parse an HTTP/1.x request head at the start of buf. Returns 0 when a
 * complete head was parsed, ER_GWHTTP_INCOMPLETE when more bytes are
 * needed, or minus the HTTP status to answer: -400 (malformed), -414
 * (target too long), -431 (head or header count too big), -505 (not
 * HTTP/1.x). Bare LF line ends are accepted. */
int er_gwhttp_parse_head(const char *buf, size_t len,
                         struct er_gwhttp_req *req);

/* The first header named name (lower case), or NULL. */
const struct er_gwhttp_hdr *er_gwhttp_find(const struct er_gwhttp_req *req,
                                           const char *name);
/* How many headers are named name. */
size_t er_gwhttp_count(const struct er_gwhttp_req *req, const char *name);

/* WHATWG URL pathname and search of a request-target (origin, absolute or
 * asterisk form), as Node's new URL(req.url, base) gives them: dot
 * segments removed, backslashes made slashes, the percent-encode sets
 * applied, the fragment dropped, "?" alone giving "". Writes path then
 * query into out. Returns 0, -400 (not a target) or -414 (out too small). */
int er_gwhttp_url(const char *target, size_t target_len, char *out,
                  size_t out_len, size_t *path_len, size_t *query_len);

/* Incremental chunked transfer-coding decoder. */
struct er_gwhttp_chunked {
    uint8_t state;
    uint8_t digits;
    uint64_t left;   /* data bytes left in the current chunk */
    size_t line_len; /* bytes of the current extension or trailer line */
    size_t trailer_len;
};

/* Decode from in: returns 0 with the next data span in data / data_len
 * (possibly empty) and *used bytes of in consumed; 1 when the last chunk
 * and trailers are complete (*used tells where the body ended); -400 on a
 * malformed or oversized coding. Call again with the rest of in. */
int er_gwhttp_chunked_feed(struct er_gwhttp_chunked *ck, const char *in,
                           size_t len, size_t *used, const char **data,
                           size_t *data_len);

/* Reason phrase of a status code ("Unknown" when we have none). */
const char *er_gwhttp_reason(int status);
/* True for a method upstream treats as safe: GET, HEAD, OPTIONS, TRACE. */
bool er_gwhttp_is_safe(const char *method);
/* True when s is a non-empty RFC 9110 token. */
bool er_gwhttp_is_token(const char *s, size_t len);
/* B5 step 3's attachment route: POST /api/companies/{x}/issues/{x}/attachments.
 */
bool er_gwhttp_is_attachment_path(const char *path, size_t len);
/* Case-insensitive ASCII compare of a (ptr, len) with a C string. */
bool er_gwhttp_eq_nocase(const char *s, size_t len, const char *lit);
/* ASCII lower case of c. */
char er_gwhttp_lower(char c);
/* Case-insensitive ASCII equality of two (ptr, len) names. */
bool er_gwhttp_same_name(const char *a, size_t a_len, const char *b,
                         size_t b_len);

/* ================================================================
 * Envelopes and the body codec (gwenvelope.c)
 * ================================================================ */

/* Buffered writer to a file descriptor. The first write error sticks in
 * err (an errno) and later puts are dropped. */
struct er_gwsink {
    int fd;
    char *buf; /* borrowed, cap bytes */
    size_t len;
    size_t cap;
    uint64_t total; /* bytes put, buffered ones included */
    int err;
};

void er_gwsink_init(struct er_gwsink *sink, int fd, char *buf, size_t cap);
void er_gwsink_put(struct er_gwsink *sink, const void *p, size_t n);
void er_gwsink_puts(struct er_gwsink *sink, const char *s);
void er_gwsink_quote(struct er_gwsink *sink, const char *s, size_t len,
                     bool is_latin1);
/* Write what is buffered; returns 0 or the sticky errno. */
int er_gwsink_flush(struct er_gwsink *sink);

/* The streaming encoder of a request body: JSON-escaped UTF-8 text, or
 * base64 (the multipart attachment route). */
struct er_gwenvelope_body {
    bool is_base64;
    struct er_gwjson_utf8 u8;
    uint8_t carry[3]; /* base64: bytes of an incomplete group */
    uint8_t carry_len;
};

/* What stands before the body: {"type":"request",?"id":..,"method":..,
 * "path":..,"query":..,"headers":{..},"body":" . Header names are lower
 * case; values are latin-1 text as Node reads them. */
struct er_gwenvelope_req {
    const char *type; /* NULL in queue_v1 */
    const char *id;
    const char *method;
    size_t method_len;
    const char *path;
    size_t path_len;
    const char *query;
    size_t query_len;
    const struct er_gwhttp_req *http; /* headers are filtered from here */
};

/* Keep B9's request header allow-list (accept, content-type, if-match,
 * if-none-match, x-paperclip-github-capability), lower-cased. */
bool er_gwenvelope_header_allowed(const char *name, size_t len);
void er_gwenvelope_write_head(struct er_gwsink *sink,
                              const struct er_gwenvelope_req *req,
                              struct er_gwenvelope_body *body, bool is_base64);
void er_gwenvelope_write_body(struct er_gwsink *sink,
                              struct er_gwenvelope_body *body, const char *p,
                              size_t n);
/* Close the body string, add bodyEncoding when base64, createdAt, "}", and
 * a newline when is_line. */
void er_gwenvelope_write_tail(struct er_gwsink *sink,
                              struct er_gwenvelope_body *body,
                              const char *created_at, bool is_line);

/* Base64 well-formedness of B3, fed one character at a time. */
struct er_gwenvelope_b64chk {
    uint64_t len;
    uint8_t pad;
    uint8_t last_val; /* value of the last non-pad character */
    bool is_bad;
};

enum er_gwenvelope_enc {
    ER_GWENVELOPE_UTF8 = 0,
    ER_GWENVELOPE_BASE64,
    ER_GWENVELOPE_ENC_BAD, /* any other value */
};

/* Pass one over a response envelope (queue_v1 file or stream_v1 frame):
 * an er_gwjson_event_fn that keeps what the reply needs and the offset of
 * the body, never the body itself. */
struct er_gwenvelope_resp {
    /* results */
    bool is_object;    /* the top-level value was an object */
    char id[40];       /* top-level "id" (truncated), "" when absent */
    char type[16];     /* top-level "type" (truncated), "" when absent */
    bool has_status;   /* "status" was a number */
    double status;     /* its value */
    int64_t body_pos;  /* offset of the body string's quote, -1: none */
    bool is_body_bad;  /* "body" was neither a string nor null */
    uint64_t body_len; /* UTF-8 bytes of the body text */
    struct er_gwenvelope_b64chk chk;
    enum er_gwenvelope_enc enc;
    bool is_indeterminate; /* x-paperclip-bridge-outcome: indeterminate */
    char *hdr;             /* "name: value\r\n" lines, borrowed */
    size_t hdr_len;
    size_t hdr_cap;
    int hdr_cnt;
    char hdr_err[128]; /* first header problem, "" when none */
    /* state of the pass */
    int field;     /* top-level key whose value is being read */
    int hdr_depth; /* inside "headers": its object's depth, else -1 */
    size_t line_start;
    bool is_line_open; /* a header value is being copied */
    uint8_t lead;      /* pending UTF-8 lead byte of a header value */
    char key[128];
    size_t key_len; /* may exceed the buffer: a key we do not know */
    char val[40];
    size_t val_len;
};

/* Start pass one; the header lines go to hdr (cap bytes, borrowed). */
void er_gwenvelope_resp_init(struct er_gwenvelope_resp *resp, char *hdr,
                             size_t cap);
int er_gwenvelope_resp_event(void *ctx, const struct er_gwjson_event *ev);

/* After pass one: check the status, headers and body codec (B3, B5 step
 * 8). Returns 0 and the HTTP status and decoded body length to send, or -1
 * with msg set to the failure's message. */
int er_gwenvelope_resp_check(const struct er_gwenvelope_resp *resp,
                             uint64_t max_body, int *status, uint64_t *body_len,
                             char *msg, size_t msg_len);

/* Pass two: decodes the body string (starting at its quote) to the bytes
 * to send, base64 decoded when the envelope says so. */
struct er_gwenvelope_out {
    struct er_gwjson js;
    bool is_base64;
    bool is_done;
    uint32_t quad; /* base64 bits gathered */
    uint8_t quad_len;
    char *out; /* borrowed; decoded bytes are appended here */
    size_t out_len;
    size_t out_cap;
};

void er_gwenvelope_out_init(struct er_gwenvelope_out *bo, uint64_t quote_pos,
                            bool is_base64);
/* Feed file bytes; appends decoded body bytes to bo->out, which must have
 * room for 3 * len + 8 bytes. Returns 0, 1 when the body string ended
 * (*used says where), or negative on a syntax error. */
int er_gwenvelope_out_feed(struct er_gwenvelope_out *bo, const char *p,
                           size_t len, size_t *used);

/* ================================================================
 * The gateway instance, connections and transports
 * ================================================================ */

enum er_gwconn_state {
    ER_GWCONN_FREE = 0,
    ER_GWCONN_HEAD,   /* reading the request head */
    ER_GWCONN_BODY,   /* streaming the body into the envelope file */
    ER_GWCONN_WAIT,   /* dispatched; waiting for the host's response */
    ER_GWCONN_PARSE,  /* queue_v1: pass one over the response file */
    ER_GWCONN_SEND,   /* writing the reply */
    ER_GWCONN_LINGER, /* reply sent early: draining unread input */
};

/* One client connection. The struct is big (two fixed buffers), but a page
 * of it is only resident once used: a small request touches a few. */
struct er_gwconn {
    enum er_gwconn_state state;
    int fd;              /* the client socket; -1 once gone */
    int64_t deadline_ms; /* monotonic: head, idle, response timeouts */
    int64_t poll_at_ms;  /* queue_v1 WAIT: next look for the response */
    int64_t started_ms;
    char id[ER_GW_ID_LEN + 1];
    char method[ER_GW_METHOD_MAX + 1];
    bool is_dispatched; /* B5 step 6 reached */
    bool is_head_method;
    bool is_chunked;
    bool is_replied;    /* a final response has been queued */
    bool has_unread;    /* the client may still send request bytes */
    uint64_t body_left; /* Content-Length bytes still to read */
    uint64_t body_len;  /* body bytes received */
    struct er_gwhttp_chunked ck;
    struct er_gwenvelope_body enc;
    struct er_gwsink sink; /* the request envelope being written */
    int file_fd;           /* envelope being written, or response being read */
    uint64_t file_off;     /* next read offset in file_fd */
    uint64_t file_size;
    uint64_t reserved; /* ledger bytes this request holds */
    /* the response */
    struct er_gwenvelope_resp resp;
    struct er_gwjson js;          /* queue_v1 pass one */
    struct er_gwenvelope_out out; /* pass two */
    uint64_t send_left;           /* body bytes still to send */
    size_t head_len;              /* scratch: request bytes read */
    size_t sc_off, sc_end;        /* scratch: response head to send */
    size_t io_off, io_len;        /* io: body bytes to send */
    size_t in_off, in_len;        /* scratch: envelope bytes to decode */
    int status;                   /* the status we answered, for the log */
    char scratch[ER_GW_SCRATCH_MAX];
    char io[ER_GW_IO_MAX];
};

/* stream_v1 output queue entry: a frame from memory or from a file. */
struct er_gwstream_item {
    int fd; /* spool file of a request frame, -1 for memory */
    uint64_t len;
    uint64_t off;
    uint8_t hdr[ER_GW_FRAME_HDR_LEN];
    uint8_t hdr_sent;
    char mem[160];
};

#define ER_GWSTREAM_QUEUE_MAX (2 * ER_GW_CONN_MAX + 4)

struct er_gwstream {
    /* gateway -> host */
    struct er_gwstream_item items[ER_GWSTREAM_QUEUE_MAX];
    size_t head, cnt;
    char obuf[16384];
    size_t obuf_off, obuf_len;
    /* host -> gateway */
    uint8_t ihdr[ER_GW_FRAME_HDR_LEN];
    size_t ihdr_len;
    uint64_t frame_len, frame_got;
    int spool_fd;
    bool is_frame_bad; /* pass one failed; the rest is skipped */
    int js_rc;
    struct er_gwjson js;
    struct er_gwenvelope_resp resp;
    char hdr_store[ER_GW_SCRATCH_MAX];
    char ibuf[16384];
};

struct er_gateway {
    const struct er_gateway_config *cfg;
    uint64_t envelope_max;
    uint64_t ledger_ceiling;
    uint64_t ledger_used;
    int listen_fd;
    int sig_pipe[2];
    int requests_dir; /* queue_v1: open directories */
    int responses_dir;
    int notify_fd; /* queue_v1: inotify on responses/, or -1 */
    char base_url[ER_GATEWAY_HOST_MAX + 32];
    int port;
    bool is_host_gone; /* stream_v1: stdin closed or protocol error */
    int exit_code;
    int64_t drain_until_ms;
    struct er_gwconn conns[ER_GW_CONN_MAX];
    struct er_gwstream stream;
    /* Scratch of one synchronous step, shared by all connections. */
    struct er_gwhttp_req req;
    char url[ER_GW_URL_MAX];
    char rbuf[32768];
};

/* Ledger of B5 step 4 / B10: a counter against the ceiling. */
bool er_gateway_reserve(struct er_gateway *gw, struct er_gwconn *conn,
                        uint64_t n);

/* gwconn.c: the per-request state machine. */
void er_gwconn_start(struct er_gateway *gw, struct er_gwconn *conn, int fd);
/* Readiness of the socket (revents), a timer tick, or pass-one work. */
void er_gwconn_on_io(struct er_gateway *gw, struct er_gwconn *conn,
                     short revents);
void er_gwconn_on_timer(struct er_gateway *gw, struct er_gwconn *conn,
                        int64_t now);
/* poll() events the connection waits for (0: none). */
short er_gwconn_events(const struct er_gwconn *conn);
/* Fail a request per B5 step 9 (409 / 503 / 502). */
void er_gwconn_fail(struct er_gateway *gw, struct er_gwconn *conn,
                    bool is_ledger, const char *msg);
/* A response envelope is complete: pass one ran over file_fd (owned by
 * conn from now on) whose size is size. */
void er_gwconn_respond(struct er_gateway *gw, struct er_gwconn *conn,
                       const struct er_gwenvelope_resp *resp, int file_fd,
                       uint64_t size, const char *json_err);
void er_gwconn_close(struct er_gateway *gw, struct er_gwconn *conn);
size_t er_gwconn_waiting(const struct er_gateway *gw);

/* gwqueue.c: queue_v1. */
int er_gwqueue_open(struct er_gateway *gw);
/* notify_fd is readable: responses/ changed; waiting requests look now. */
void er_gwqueue_on_notify(struct er_gateway *gw);
int er_gwqueue_write_ready(struct er_gateway *gw, const char *json, size_t len);
/* B5 step 2: 0 when there is room (after the stale sweep), -1 when full. */
int er_gwqueue_depth_check(struct er_gateway *gw);
int er_gwqueue_create(struct er_gateway *gw, struct er_gwconn *conn);
int er_gwqueue_dispatch(struct er_gateway *gw, struct er_gwconn *conn);
void er_gwqueue_discard(struct er_gateway *gw, struct er_gwconn *conn);
void er_gwqueue_abandon(struct er_gateway *gw, struct er_gwconn *conn);
/* WAIT timer: look for the response file; on success the connection moves
 * to PARSE and er_gwqueue_parse_step runs pass one. */
void er_gwqueue_poll(struct er_gateway *gw, struct er_gwconn *conn);
void er_gwqueue_parse_step(struct er_gateway *gw, struct er_gwconn *conn);

/* gwstream.c: stream_v1. */
void er_gwstream_init(struct er_gateway *gw);
int er_gwstream_create(struct er_gateway *gw, struct er_gwconn *conn);
int er_gwstream_dispatch(struct er_gateway *gw, struct er_gwconn *conn);
void er_gwstream_abandon(struct er_gateway *gw, struct er_gwconn *conn);
int er_gwstream_send_mem(struct er_gateway *gw, const char *json, size_t len);
/* stdin readable / stdout writable. */
void er_gwstream_on_input(struct er_gateway *gw);
void er_gwstream_on_output(struct er_gateway *gw);
bool er_gwstream_has_output(const struct er_gateway *gw);
/* The host is gone (EOF) or broke the framing: answer the waiting. */
void er_gwstream_host_gone(struct er_gateway *gw, int exit_code,
                           const char *msg);

#endif
