/* common: the few pieces every envrun library shares (errors, allocation,
 * logging, growable buffers, per-command arenas, secrets, time, ids).
 * Thread-safe except where a function says otherwise. Owns nothing global
 * but the logger's settings and the allocation-failure hook. */
#ifndef ER_COMMON_COMMON_H
#define ER_COMMON_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define ER_NODISCARD    __attribute__((warn_unused_result))
#define ER_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* ================================================================
 * Assertions: always compiled in; for invariants, never for input.
 * ================================================================ */
void er_assert_fail(const char *expr, const char *file, int line)
    __attribute__((noreturn));
#define ER_ASSERT(cond) \
    ((cond) ? (void)0 : er_assert_fail(#cond, __FILE__, __LINE__))

/* ================================================================
 * Errors
 * ================================================================ */
enum er_errcode {
    ER_OK = 0,
    ER_ENOMEM = -1,  /* allocation failed */
    ER_EINVAL = -2,  /* bad argument or input */
    ER_EBADMSG = -3, /* undecodable bytes */
    ER_E2BIG = -4,   /* a bounded buffer or field is over its cap */
    ER_EPG = -5,     /* PostgreSQL failure */
    ER_EKAFKA = -6,  /* librdkafka failure */
    ER_EIO = -7,     /* system call failure */
    ER_ENOTFOUND = -8,
    ER_ECONFLICT = -9, /* unique violation or fencing loss */
    ER_ESCHEMA = -10,  /* unknown schema fingerprint or framing */
    ER_ETIMEDOUT = -11,
    ER_EDRIVER = -12,   /* a driver operation failed */
    ER_EFENCED = -13,   /* the partition moved to another worker */
    ER_ECANCELED = -14, /* the work was cancelled (rebalance, shutdown) */
};

enum er_errclass {
    ER_ERRCLASS_NONE = 0,
    ER_ERRCLASS_RETRY, /* transient: try the same work again after backoff */
    ER_ERRCLASS_SKIP,  /* the input is bad: dead-letter it and go on */
    ER_ERRCLASS_FATAL, /* the process cannot go on */
};

#define ER_ERR_MSG_MAX 256

struct er_err {
    int code;             /* an enum er_errcode value */
    enum er_errclass cls; /* who saw the cause decided this */
    char msg[ER_ERR_MSG_MAX];
};

/* Fill err (which may be NULL) once, at the layer that first saw the
 * failure. Returns code so callers can write `return er_err_set(...)`. */
int er_err_set(struct er_err *err, int code, enum er_errclass cls,
               const char *fmt, ...) ER_PRINTF(4, 5);
/* Reset err to "no error". */
void er_err_clear(struct er_err *err);
/* Short symbolic name of an er_errcode ("ER_EPG"). */
const char *er_errname(int code);
/* Thread-safe strerror into a caller buffer; returns buf. */
const char *er_strerror(int errnum, char *buf, size_t buf_len);

/* ================================================================
 * Allocation: every heap allocation goes through these so tests can
 * fail the Nth one (the torture label).
 * ================================================================ */
void *er_malloc(size_t n);
void *er_calloc(size_t nmemb, size_t size);
void *er_realloc(void *p, size_t n);
void er_free(void *p);
char *er_strdup(const char *s);
/* Hand the kernel back the pages of the calling thread's stack below
 * its current frame (less a margin): an idle thread keeps only what it
 * uses while it waits. Nothing there is live; the pages come back zeroed
 * when touched again. Not for the main thread (its stack grows on
 * demand). */
void er_stack_trim(void);
char *er_strndup(const char *s, size_t n);
/* Make allocation number fail_at (1-based, counted from this call) fail;
 * 0 disables. Returns how many allocations happened since the last call. */
uint64_t er_mem_fail_at(uint64_t fail_at);

/* ================================================================
 * Logging: one line per call on stderr, JSON or text.
 * ================================================================ */
enum er_log_level {
    ER_LOG_DEBUG = 0,
    ER_LOG_INFO,
    ER_LOG_WARN,
    ER_LOG_ERROR,
};

/* Set the format (json when is_json) and the lowest level written. Call
 * once at start-up, before threads start. */
void er_log_setup(bool is_json, enum er_log_level level);
/* Parse "debug" "info" "warn" "error"; returns -1 when unknown. */
int er_log_level_parse(const char *s);
bool er_log_enabled(enum er_log_level level);
/* Write one line. Optional coordinates go through er_log_kv: pairs of
 * (key, value) strings ending with NULL; NULL values are skipped. Never pass
 * a secret. */
void er_log(enum er_log_level level, const char *fac, const char *fmt, ...)
    ER_PRINTF(3, 4);
void er_log_kv(enum er_log_level level, const char *fac, const char *msg, ...);

/* Longest traceparent a log line carries (W3C version 00 is 55 bytes). */
#define ER_LOG_TRACE_MAX 55
/* The calling thread's lines carry "traceparent" from now on (NULL or
 * longer than ER_LOG_TRACE_MAX: none). Thread-local. */
void er_log_set_trace(const char *traceparent);
#define ER_LOG_DEBUG(fac, ...) er_log(ER_LOG_DEBUG, fac, __VA_ARGS__)
#define ER_LOG_INFO(fac, ...)  er_log(ER_LOG_INFO, fac, __VA_ARGS__)
#define ER_LOG_WARN(fac, ...)  er_log(ER_LOG_WARN, fac, __VA_ARGS__)
#define ER_LOG_ERR(fac, ...)   er_log(ER_LOG_ERROR, fac, __VA_ARGS__)

/* ================================================================
 * Growable byte buffer with a hard cap.
 * ================================================================ */
struct er_buf {
    uint8_t *data; /* owned; NUL-terminated past len for text use */
    size_t len;
    size_t cap;     /* bytes allocated */
    size_t max_len; /* hard cap; appends past it fail with ER_E2BIG */
};

void er_buf_init(struct er_buf *buf, size_t max_len);
void er_buf_fini(struct er_buf *buf);
void er_buf_reset(struct er_buf *buf);
/* er_buf_reset, and free the storage when more than keep_max bytes. */
void er_buf_trim(struct er_buf *buf, size_t keep_max);
ER_NODISCARD int er_buf_append(struct er_buf *buf, const void *p, size_t n);
ER_NODISCARD int er_buf_printf(struct er_buf *buf, const char *fmt, ...)
    ER_PRINTF(2, 3);
/* Give the caller the data (NUL-terminated); buf is left empty. */
uint8_t *er_buf_take(struct er_buf *buf, size_t *len);
/* Append s to buf as one single-quoted POSIX shell word (a quote becomes
 * '"'"'). Returns 0, ER_E2BIG or ER_ENOMEM. */
ER_NODISCARD int er_sh_quote(struct er_buf *buf, const char *s);

/* ================================================================
 * Per-command arena: many small allocations, one reset.
 * ================================================================ */
struct er_arena_chunk;
struct er_arena {
    struct er_arena_chunk *head;
    size_t total; /* bytes handed out since the last reset */
    size_t max_total;
};

void er_arena_init(struct er_arena *arena, size_t max_total);
void er_arena_fini(struct er_arena *arena);
/* Free everything allocated from the arena but keep the first chunk. */
void er_arena_reset(struct er_arena *arena);
/* er_arena_reset, and free the kept chunk too when it is larger than
 * keep_max bytes: a long-lived arena does not hold its biggest day. */
void er_arena_trim(struct er_arena *arena, size_t keep_max);
/* Zeroed, 16-byte aligned memory valid until the next reset; NULL when
 * out of memory or past max_total. */
void *er_arena_alloc(struct er_arena *arena, size_t n);
char *er_arena_strdup(struct er_arena *arena, const char *s);
char *er_arena_strndup(struct er_arena *arena, const char *s, size_t n);
char *er_arena_printf(struct er_arena *arena, const char *fmt, ...)
    ER_PRINTF(2, 3);

/* ================================================================
 * Secrets: kept apart so every use greps. The value is wiped on fini.
 * ================================================================ */
struct er_secret {
    char *value; /* owned; NULL when absent */
    size_t len;
};

int er_secret_set(struct er_secret *secret, const char *value, size_t len);
void er_secret_fini(struct er_secret *secret);
bool er_secret_is_set(const struct er_secret *secret);
/* Zero n bytes at p (NULL is ok) in a way the compiler keeps. */
void er_wipe(void *p, size_t n);

/* ================================================================
 * base64 (standard alphabet, padded; base64.c)
 * ================================================================ */
/* Characters the encoding of len bytes takes (without the NUL). */
size_t er_base64_len(size_t len);
/* Encode into out, which holds er_base64_len(len) + 1 bytes. */
void er_base64_encode(const void *data, size_t len, char *out);
/* The encoding as a new string (er_free), or NULL when out of memory. */
char *er_base64_dup(const void *data, size_t len);
/* Decode the canonical encoding in len chars of text (length a multiple
 * of 4, only the alphabet, at most two '=' at the end, zero bits under
 * them) into out (max bytes). Returns 0 with *out_len, ER_EINVAL when the
 * text is not canonical base64, ER_E2BIG when it decodes to more than max
 * bytes. */
int er_base64_decode(const char *text, size_t len, void *out, size_t max,
                     size_t *out_len);

/* ================================================================
 * SHA-256 and HMAC-SHA256 (sha256.c)
 * ================================================================ */
#define ER_SHA256_LEN 32

struct er_sha256 {
    uint32_t h[8];
    uint64_t total; /* bytes so far */
    uint8_t buf[64];
    size_t used;
};
void er_sha256_init(struct er_sha256 *s);
void er_sha256_update(struct er_sha256 *s, const void *data, size_t len);
/* The digest of everything given; s is wiped. */
void er_sha256_final(struct er_sha256 *s, uint8_t out[ER_SHA256_LEN]);
void er_sha256(const void *data, size_t len, uint8_t out[ER_SHA256_LEN]);
/* Lower-case hex of a digest. */
void er_sha256_hex(const uint8_t digest[ER_SHA256_LEN],
                   char out[2 * ER_SHA256_LEN + 1]);
/* HMAC-SHA256 of msg under key (RFC 2104); the key's copies are wiped. */
void er_hmac_sha256(const void *key, size_t key_len, const void *msg,
                    size_t msg_len, uint8_t out[ER_SHA256_LEN]);

/* ================================================================
 * Time and ids
 * ================================================================ */
/* Wall clock in milliseconds since the epoch. */
int64_t er_time_now_ms(void);
/* Monotonic clock in milliseconds. */
int64_t er_time_mono_ms(void);
/* The CLOCK_REALTIME time ms from now, for pthread_cond_timedwait. */
void er_time_deadline_in(int64_t ms, struct timespec *ts);
/* The last millisecond of 9999-12-31 UTC: the latest time a timestamp
 * field may name (ISO 8601 texts have four-digit years). */
#define ER_TIME_MAX_MS INT64_C(253402300799999)
/* Format ms since epoch as ISO 8601 UTC with milliseconds
 * ("2026-11-26T13:17:42.123Z"); out must hold 32 bytes. */
void er_time_iso(int64_t ms, char out[32]);
/* A random version-4 UUID in lower-case text; out must hold 37 bytes. */
int er_uuid_v4(char out[37]);
/* True when s (of len bytes) has the 8-4-4-4-12 hex shape of a UUID. */
bool er_uuid_is_valid(const char *s, size_t len);

/* ================================================================
 * Fault points (fault.c), for the fault-matrix tests
 * ================================================================ */
/* A named place where a test may kill or pause the process. In a build
 * configured with ER_FAULTS (test builds only) the variable
 * ENVRUN_TEST_FAULT names one point as "name" or "name:N"; the N-th time
 * (default 1) any thread reaches that point, the process logs it and kills
 * itself with SIGKILL, as a crash at exactly that instant would. With
 * "name:N:stop" (or "name:stop" for the first hit) it stops itself with
 * SIGSTOP instead, as a stall would, and goes on from there when sent
 * SIGCONT. In other builds, and when the variable is unset, nothing
 * happens. Thread-safe. */
void er_fault_point(const char *name);

#endif
