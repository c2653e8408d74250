/* bridge: the host side of the callback bridge (contract.md 7, upstream.md
 * B6-B9): what an agent in a sandbox or on an ssh host may ask of the
 * control plane through it. This part: the allow-lists (routes, request
 * and response headers), loaded from a data file whose default the worker
 * embeds (bridge/allowlist.txt). Immutable once loaded, so thread-safe. */
#ifndef ER_BRIDGE_BRIDGE_H
#define ER_BRIDGE_BRIDGE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Limits of the allow-list file. */
#define ER_BRIDGE_ALLOW_MAX_BYTES  (256 * 1024)
#define ER_BRIDGE_ALLOW_MAX_RULES  1024
#define ER_BRIDGE_ALLOW_MAX_METHOD 16

struct er_bridge_allow;

/* Parse an allow-list (the format bridge/allowlist.txt describes); name
 * (a file name) heads error messages. Errors: ER_EINVAL naming the line
 * and what is wrong with it, ER_E2BIG, ER_ENOMEM (class FATAL: a
 * configuration error). */
int er_bridge_allow_parse(const char *text, size_t len, const char *name,
                          struct er_bridge_allow **out, struct er_err *err);
/* Load path, or the embedded default when path is NULL or empty. */
int er_bridge_allow_load(const char *path, struct er_bridge_allow **out,
                         struct er_err *err);
void er_bridge_allow_free(struct er_bridge_allow *allow);

/* Whether a request of method (upper case; "" is GET) for path (the URL
 * path, without the query) is forwarded: some rule's method is method and
 * its pattern matches the whole path. */
bool er_bridge_allow_route(const struct er_bridge_allow *allow,
                           const char *method, const char *path);
/* Whether a request header (case-insensitive name) passes to the API. */
bool er_bridge_allow_request_header(const struct er_bridge_allow *allow,
                                    const char *name);
/* Whether a response header (case-insensitive name) passes to the agent. */
bool er_bridge_allow_response_header(const struct er_bridge_allow *allow,
                                     const char *name);
/* How many route rules the list has. */
size_t er_bridge_allow_route_count(const struct er_bridge_allow *allow);

/* ================================================================
 * Forwarding (forward.c): one request from the agent to the API
 * ================================================================ */

/* The forward budget (upstream.md B8) and the response headers kept. */
#define ER_BRIDGE_FORWARD_TIMEOUT_MS 30000
#define ER_BRIDGE_RES_HEADERS_MAX    16

struct er_bridge_fwd;

/* Whether origin is what ENVRUN_PAPERCLIP_API_URL must be: scheme://host
 * [:port] with scheme http or https and nothing after it (every request
 * goes there, its path and query set apart). Errors: ER_EINVAL with a
 * message naming the setting, ER_ENOMEM. */
int er_bridge_origin_check(const char *origin, struct er_err *err);

/* A forwarder to origin (ENVRUN_PAPERCLIP_API_URL: scheme://host[:port],
 * nothing after) with one reused libcurl handle; allow is borrowed for its
 * life. er_bridge_handle on it is for one thread at a time (one per
 * forwarding thread); er_bridge_fwd_set_trace may be called from any
 * thread meanwhile. Errors: ER_EINVAL naming the setting, ER_ENOMEM. */
int er_bridge_fwd_new(const char *origin, const struct er_bridge_allow *allow,
                      size_t max_body, int64_t timeout_ms,
                      struct er_bridge_fwd **out, struct er_err *err);
void er_bridge_fwd_free(struct er_bridge_fwd *fwd);
/* The W3C traceparent of the run's realize command (NULL, over 55 bytes or
 * holding CR or LF: none): a forwarded request without a traceparent
 * header of its own gets this one, so the API sees the bridge's calls in
 * the run's trace. Thread-safe: a request forwarded meanwhile carries the
 * old value or the new one, whole. */
void er_bridge_fwd_set_trace(struct er_bridge_fwd *fwd,
                             const char *traceparent);

/* Requests answered, counted process-wide without a lock for the worker's
 * /metrics (envrun_bridge_requests_total): by transport and by the status
 * class of the answer (1xx..5xx, then anything else). */
enum er_bridge_count_transport {
    ER_BRIDGE_COUNT_QUEUE_V1 = 0,
    ER_BRIDGE_COUNT_STREAM_V1,
    ER_BRIDGE_COUNT_TRANSPORTS,
};
#define ER_BRIDGE_COUNT_CLASSES 6

/* Count one request of transport answered with HTTP status. */
void er_bridge_fwd_count(enum er_bridge_count_transport transport, int status);
/* The count of transport and status class (0: 1xx ... 4: 5xx, 5: other). */
uint64_t er_bridge_fwd_count_get(int transport, int status_class);

/* A request as the gateway enqueued it (upstream.md B3), decoded. */
struct er_bridge_req {
    const char *method;         /* upper case; NULL or "" is GET */
    const char *path;           /* the URL path */
    const char *query;          /* "" or "?..." */
    const char *const *headers; /* name, value, name, value, ... */
    size_t header_cnt;          /* pairs */
    const void *body;
    size_t body_len;
};

/* The answer the agent gets: the API's (any status) or the bridge's. */
struct er_bridge_res {
    int status;
    char *headers[2 * ER_BRIDGE_RES_HEADERS_MAX]; /* name, value: owned */
    size_t header_cnt;                            /* pairs */
    struct er_buf body;
};
void er_bridge_res_fini(struct er_bridge_res *res);

/* Handle req (B6 steps 7-10, B8): 403 "Route not allowed: <METHOD> <path>"
 * unless the route is allow-listed; else the allow-listed request headers
 * with a value, `authorization: Bearer <token>` (the host's credential,
 * never the bridge token) and `x-paperclip-run-id: <run_id>` go to the
 * origin with req's path and query (never a redirect, never another host),
 * within the forward budget, and the API's status, allow-listed response
 * headers and body (at most max_body bytes) come back. A failure is the
 * bridge's answer: 502 {"error"} for a safe method, 504 with
 * x-paperclip-bridge-outcome: indeterminate and {"error", "outcome":
 * "indeterminate", "retryable": false} for a mutation or when abort was
 * set. res is always filled (er_bridge_res_fini). */
void er_bridge_handle(struct er_bridge_fwd *fwd,
                      const struct er_bridge_req *req,
                      const struct er_secret *token, const char *run_id,
                      const atomic_bool *abort, struct er_bridge_res *res);
/* Replace res by the bridge's own answer (as er_bridge_handle makes). */
void er_bridge_res_error(struct er_bridge_res *res, int status,
                         const char *message, bool is_indeterminate);
/* GET, HEAD, OPTIONS, TRACE (and a blank method, which is GET). */
bool er_bridge_method_is_safe(const char *method);

/* ================================================================
 * Envelopes (envelope.c): the request and response files of upstream.md
 * B3, also the frames of stream_v1
 * ================================================================ */

/* 6 x max body + 64 KiB: JSON may spell one byte as six characters. */
size_t er_bridge_envelope_limit(size_t max_body);

/* The longest request id an envelope may carry, in bytes. */
#define ER_BRIDGE_ENVELOPE_ID_MAX 128

/* A request envelope, parsed and checked: owned copies. */
struct er_bridge_envelope {
    char *id;
    char *method;      /* upper case; GET when absent or blank */
    char *path;        /* starts with / */
    char *query;       /* "" or "?..." */
    char **headers;    /* name (lower case), value, ... */
    size_t header_cnt; /* pairs */
    uint8_t *body;     /* decoded (base64 bodies too) */
    size_t body_len;
};

/* Parse len bytes of a request envelope (untrusted: from the sandbox).
 * Errors (class NONE): ER_E2BIG over the envelope limit; ER_EBADMSG with
 * the message B3 gives ("Invalid bridge request payload. (<field>)",
 * "Invalid bridge base64 body.", "Unsupported bridge body encoding.",
 * "Bridge body exceeded the configured size limit."); ER_ENOMEM. */
int er_bridge_envelope_parse(const char *text, size_t len, size_t max_body,
                             struct er_bridge_envelope *env,
                             struct er_err *err);
void er_bridge_envelope_fini(struct er_bridge_envelope *env);
/* The request to forward, pointing into env. */
void er_bridge_envelope_req(const struct er_bridge_envelope *env,
                            struct er_bridge_req *req);
/* Append the response envelope for id to out: {id, status, headers, body,
 * completedAt} and a newline; a body that is not UTF-8 text as base64 with
 * bodyEncoding "base64". */
int er_bridge_response_json(const char *id, const struct er_bridge_res *res,
                            struct er_buf *out, struct er_err *err);

/* ================================================================
 * queue_v1, the host side (queue.c): upstream.md B6 and B7
 * ================================================================ */

/* What one exec of a shell script where the gateway runs gave. */
struct er_bridge_exec_out {
    int exit_code;     /* -1: it did not exit on its own (killed, timed out) */
    struct er_buf out; /* stdout; the caller sets the cap */
    struct er_buf err; /* stderr */
};

/* The lease's exec channel: run script with `sh -c`, in on its stdin (NULL:
 * none), within timeout_ms, ended early when *cancel (may be NULL) is set.
 * Returns 0 with out filled (whatever the exit code), or an error when the
 * script could not be run at all. */
typedef int er_bridge_exec_fn(void *arg, const char *script, const void *in,
                              size_t in_len, int64_t timeout_ms,
                              const atomic_bool *cancel,
                              struct er_bridge_exec_out *out,
                              struct er_err *err);

/* Empty out with the given stdout cap (stderr: 8 KiB): every operation
 * starts with it, so er_bridge_exec_out_fini is right whatever fails. */
void er_bridge_exec_out_init(struct er_bridge_exec_out *out, size_t out_max);
void er_bridge_exec_out_fini(struct er_bridge_exec_out *out);
/* The buffer's text, "" when empty. */
const char *er_bridge_exec_text(const struct er_buf *b);
/* B7's failure sentences into err (ER_EIO): "<action> timed out" when the
 * exec did not exit on its own, else "<action> failed with exit code <n>:
 * <stderr, else stdout>". */
int er_bridge_exec_failed(struct er_err *err, const char *action,
                          const struct er_bridge_exec_out *out);
/* The two pipes of a held exec (er_bridge_hold_fn): in (its stdin) and
 * out (its stdout), every end close-on-exec so that no other child holds
 * one (er_proc's children close every descriptor but 0-2 as well).
 * ER_EIO "cannot make pipes", with nothing left open, on failure. */
int er_bridge_hold_pipes(int in[2], int out[2], struct er_err *err);
/* close(*fd) when it is open; *fd becomes -1. */
void er_bridge_close_fd(int *fd);

/* Upstream's numbers (B10), the defaults of the fields below that are 0. */
#define ER_BRIDGE_POLL_INTERVAL_MS     100
#define ER_BRIDGE_LIST_WAIT_MS         5000
#define ER_BRIDGE_ITERATION_TIMEOUT_MS 10000
#define ER_BRIDGE_MAX_BODY_BYTES       10551296
#define ER_BRIDGE_STOP_DRAIN_MS        2000

struct er_bridge_queue_opts {
    er_bridge_exec_fn *exec;
    void *exec_arg;
    const char *queue_dir;              /* absolute, where the gateway runs */
    struct er_bridge_fwd *fwd;          /* borrowed, used by one thread */
    const struct er_secret *host_token; /* borrowed */
    const char *run_id;
    size_t max_body;
    int64_t poll_interval_ms;
    int64_t list_wait_ms;
    int64_t iteration_timeout_ms;
    /* The envrun-gateway where the queue is (NULL: unknown): its
     * --wait-requests does the list's wait. */
    const char *gateway;
    /* May be NULL. While it says false the poller neither lists nor
     * forwards (a handover of the run is under way). */
    bool (*may_forward)(void *arg);
    void *may_forward_arg;
};

struct er_bridge_poller;

/* Start the host poller of one run's queue (a thread): it long-polls the
 * queue's requests/ through the exec channel, forwards each request in
 * name order (er_bridge_handle) and writes its response guarded (only
 * while the request file exists, never over an answer, under the lock
 * directory upstream's writers use), then removes the request. A failed
 * list backs off (200 ms doubling to 5 s); a failed request does not stop
 * the loop. Errors: ER_ENOMEM, ER_EIO (no thread). */
int er_bridge_poller_start(const struct er_bridge_queue_opts *opts,
                           struct er_bridge_poller **out, struct er_err *err);
/* Stop: requests already listed are handled until drain_ms has passed,
 * every one left gets 503 "Bridge worker stopped before request could be
 * handled.", then the thread is joined and p freed. With drain_ms <= 0 a
 * forward in flight is aborted too (its answer: 504 indeterminate, B6);
 * with drain_ms < 0 (a handover to the run's next owner) the requests
 * still waiting are left in the queue for it. NULL is ok. */
void er_bridge_poller_stop(struct er_bridge_poller *p, int64_t drain_ms);

/* What a queue_v1 list exec printed (the sandbox's output: untrusted):
 * request file names, one a line; those that look like one (<id>.json,
 * the id of [A-Za-z0-9._-] not starting with '.', at most 200 bytes) go
 * to names (at most max, sorted, er_free each; *cnt of them, also on
 * failure). Then, from the gateway binary, maybe an empty line,
 * "<name>\n<n>\n" and n bytes of that request: *pre gets them (name NULL
 * when absent or malformed; er_bridge_preread_fini). 0 or ER_ENOMEM. */
struct er_bridge_preread {
    char *name; /* NULL: none */
    char *text; /* NUL-terminated */
    size_t len;
};
int er_bridge_list_parse(const char *text, size_t len, char **names, size_t max,
                         size_t *cnt, struct er_bridge_preread *pre);
void er_bridge_preread_fini(struct er_bridge_preread *pre);

struct er_bridge_poller_stats {
    uint64_t handled;       /* responses written */
    uint64_t list_failures; /* failed list execs */
    uint64_t execs;         /* exec channel calls */
};
void er_bridge_poller_stats(struct er_bridge_poller *p,
                            struct er_bridge_poller_stats *out);

/* ================================================================
 * stream_v1, the host side (stream.c)
 * ================================================================ */

/* The lease's exec channel held open: run script with `sh -c`, its stdin
 * and stdout the descriptors in_fd and out_fd (borrowed), until it ends,
 * timeout_ms passes or *cancel is set; *exit_code gets its exit code (-1
 * when it did not exit on its own). Returns 0, or an error when it could
 * not run at all (a channel that cannot hold an exec open says so). */
typedef int er_bridge_hold_fn(void *arg, const char *script, int in_fd,
                              int out_fd, int64_t timeout_ms,
                              const atomic_bool *cancel, int *exit_code,
                              struct er_err *err);

/* Forwards in flight at once for one stream_v1 bridge. */
#define ER_BRIDGE_STREAM_FORWARDERS 8

struct er_bridge_stream_opts {
    er_bridge_hold_fn *hold;
    void *hold_arg;
    /* Reads the token from its first stdin line, then execs the gateway
     * in stream_v1 mode on the same stdin and stdout. */
    const char *script;
    const char *token;
    const char *origin;
    const struct er_bridge_allow *allow; /* borrowed */
    const struct er_secret *host_token;  /* borrowed */
    const char *run_id;
    const char *traceparent;        /* see er_bridge_fwd_set_trace */
    size_t max_body;                /* 0: ER_BRIDGE_MAX_BODY_BYTES */
    bool (*may_forward)(void *arg); /* see er_bridge_queue_opts */
    void *may_forward_arg;
};

struct er_bridge_stream;

/* What a frame from the gateway is. */
enum er_bridge_frame_type {
    /* Not a JSON object, no type or an unknown one, an abandon without an
     * id: counted in bad_frames. */
    ER_BRIDGE_FRAME_BAD,
    ER_BRIDGE_FRAME_READY, /* the gateway listens on port */
    /* A ready frame without a valid port: ignored, and not counted. */
    ER_BRIDGE_FRAME_READY_BAD,
    ER_BRIDGE_FRAME_ABANDON, /* the request id's client is gone */
    ER_BRIDGE_FRAME_REQUEST, /* the frame is its request envelope */
};

/* A frame's fields, copied out. */
struct er_bridge_frame {
    bool has_id; /* "id" is a string without NUL bytes (it may be "") */
    /* Its "id", cut to fit at a UTF-8 character boundary (every id an
     * envelope accepts fits); "" without has_id. */
    char id[ER_BRIDGE_ENVELOPE_ID_MAX + 1];
    int port; /* READY: 1..65535; else 0 */
    long pid; /* READY: "pid" when it is an integer; else 0 */
};

/* Classify one stream_v1 frame from the gateway (untrusted: it runs in
 * the sandbox): len bytes of JSON (text may be NULL when len is 0), an
 * object with a string "type" ("ready" with an integer "port", "abandon"
 * with "id", "request"), and fill *frame. NUL bytes are allowed in the
 * JSON's strings (a request body may hold them) but not in "type" or
 * "id". A request frame is parsed further by er_bridge_envelope_parse.
 * Pure; thread-safe. */
enum er_bridge_frame_type
er_bridge_stream_frame_parse(const char *text, size_t len,
                             struct er_bridge_frame *frame);

/* Start the gateway through one held exec and wait (10 s) for its ready
 * frame; then requests are forwarded as their frames come, up to
 * ER_BRIDGE_STREAM_FORWARDERS at once, each answered with a response
 * frame; an abandoned request that was not forwarded yet never is.
 * Errors: ER_EIO "start sandbox callback bridge stream failed: <why>"
 * (nothing is left running), ER_ENOMEM. */
int er_bridge_stream_start(const struct er_bridge_stream_opts *o,
                           struct er_bridge_stream **out, struct er_err *err);
/* Stop: requests waiting are forwarded until drain_ms has passed (<= 0:
 * forwards in flight are aborted, 504-indeterminate), then the gateway's
 * stdin closes (it answers its waiters and exits; after 3 s the exec is
 * ended) and s is freed. NULL is ok. */
void er_bridge_stream_stop(struct er_bridge_stream *s, int64_t drain_ms);
int er_bridge_stream_port(struct er_bridge_stream *s);
/* Requests forwarded from now on carry traceparent (NULL: none; see
 * er_bridge_fwd_set_trace). Thread-safe against the forwarders. */
void er_bridge_stream_set_trace(struct er_bridge_stream *s,
                                const char *traceparent);
/* Whether the held exec still runs. */
bool er_bridge_stream_is_alive(struct er_bridge_stream *s);

struct er_bridge_stream_stats {
    uint64_t handled;    /* responses sent */
    uint64_t bad_frames; /* frames of an unknown type, or over the queue */
};
void er_bridge_stream_stats(struct er_bridge_stream *s,
                            struct er_bridge_stream_stats *out);

/* ================================================================
 * One bridged run where its gateway runs (runtime.c): upstream.md B2,
 * B4, B7
 * ================================================================ */

#define ER_BRIDGE_TOKEN_BYTES 24
#define ER_BRIDGE_TOKEN_LEN   32 /* base64url, no padding */

/* The bridge token of a run: 24 bytes of HMAC-SHA256 under the run's host
 * credential over the run id, base64url. The same command gives the same
 * token, so a restarted gateway, a redelivered realize and the run's next
 * owner all hand the agent the token it has; the agent cannot go back from
 * it to the credential. ER_EINVAL without a credential or run id. */
int er_bridge_token_derive(const struct er_secret *host_token,
                           const char *run_id,
                           char out[ER_BRIDGE_TOKEN_LEN + 1]);

/* Where a bridge lives (B2): <remoteCwd>/.paperclip-runtime/<adapter>/
 * paperclip-bridge, with server/envrun-gateway and queue/. */
struct er_bridge_paths {
    char runtime_dir[1024];
    char server_dir[1100];
    char gateway[1200];
    char queue_dir[1100];
};
/* ER_EINVAL when remote_cwd is not absolute or adapter_key is not a plain
 * name ([A-Za-z0-9_-], at most 64), ER_E2BIG when the path is too long. */
int er_bridge_paths_init(struct er_bridge_paths *p, const char *remote_cwd,
                         const char *adapter_key, struct er_err *err);

/* The static envrun-gateway this worker was built with (embedded). */
const void *er_bridge_gateway_image(size_t *len);
/* Upload the gateway to paths->gateway unless the file there has its
 * SHA-256 already (one exec, binary on stdin, under the upload lock;
 * checked again after the upload when the host has a hash tool). */
int er_bridge_gateway_install(er_bridge_exec_fn *exec, void *arg,
                              const struct er_bridge_paths *paths,
                              bool *is_uploaded, struct er_err *err);
/* Stop the gateway whose pid queue_dir/server.pid holds (SIGTERM, 40 x
 * 50 ms, then SIGKILL) and remove server.pid and ready.json. Only a
 * process that is an envrun-gateway is signalled. */
int er_bridge_gateway_stop(er_bridge_exec_fn *exec, void *arg,
                           const char *queue_dir, struct er_err *err);

/* ================================================================
 * queue_v1's held command runner (runner.c)
 * ================================================================ */

/* The longest script the runner takes (the gateway's limit); a longer one
 * runs through the fallback. */
#define ER_BRIDGE_RUNNER_SCRIPT_MAX 65536

/* One frame header from the runner (er_gateway_serve_commands): kind 'O'
 * (len bytes of stdout follow), 'E' (stderr) or 'R' (the end; code is
 * the exit code, -1 when the script was killed). */
struct er_bridge_runner_frame {
    char kind;
    size_t len;
    int code;
};

/* Parse the frame header at buf: its length (> 0) with f filled, 0 when
 * more bytes are needed, -1 when it is malformed ("<O|E> <n>\n" with n at
 * most 65536, "R <0-255|-1>\n", no leading zeros). Pure; len may be 0. */
int er_bridge_runner_frame_parse(const char *buf, size_t len,
                                 struct er_bridge_runner_frame *f);

struct er_bridge_runner_opts {
    er_bridge_hold_fn *hold; /* the held exec */
    void *hold_arg;
    er_bridge_exec_fn *fallback; /* one exec a script */
    void *fallback_arg;
    const char *gateway; /* the envrun-gateway where the lease runs */
    const char *run_id;  /* for logs */
};

struct er_bridge_runner_stats {
    uint64_t commands;  /* scripts the runner ran */
    uint64_t fallbacks; /* scripts run one exec each instead */
    uint64_t starts;    /* runners started */
    uint64_t failures;  /* runners ended for a failure */
};

struct er_bridge_runner;

/* Start `envrun-gateway --serve-commands` through o->hold and wait for its
 * hello. *out is set even when that fails (the error says why): scripts
 * then run through the fallback, and a runner is tried again later. */
int er_bridge_runner_start(const struct er_bridge_runner_opts *o,
                           struct er_bridge_runner **out, struct er_err *err);
/* er_bridge_exec_fn over a runner (arg): the script runs in it, within
 * timeout_ms (the runner kills its process group then), ended at once
 * when *cancel is set; its output capped by out's buffers, as a driver
 * caps a command's. Through the fallback when no runner runs. A runner
 * that dies or fails mid-script ends it: exit code -1, runner ended. One
 * script at a time (calls wait for each other). */
int er_bridge_runner_exec(void *arg, const char *script, const void *in,
                          size_t in_len, int64_t timeout_ms,
                          const atomic_bool *cancel,
                          struct er_bridge_exec_out *out, struct er_err *err);
void er_bridge_runner_stats(struct er_bridge_runner *r,
                            struct er_bridge_runner_stats *out);
/* End the runner (its scripts' process groups with it). NULL is ok. */
void er_bridge_runner_stop(struct er_bridge_runner *r);

struct er_bridge_run_opts {
    er_bridge_exec_fn *exec;          /* control execs */
    er_bridge_exec_fn *exec_detached; /* the start: its gateway lives on */
    /* NULL: the channel cannot hold an exec open (queue_v1, one exec a
     * script). Else stream_v1 is tried first unless is_queue_only (queue_v1
     * when the stream fails), and queue_v1's scripts go through one held
     * exec (er_bridge_runner). */
    er_bridge_hold_fn *hold;
    bool is_queue_only;
    void *exec_arg; /* both get it; must outlive the run */
    const char *remote_cwd;
    const char *adapter_key;
    const char *origin;                  /* ENVRUN_PAPERCLIP_API_URL */
    const struct er_bridge_allow *allow; /* borrowed for the run's life */
    const struct er_secret *host_token;  /* copied */
    const char *lease_id;
    const char *run_id;
    const char *traceparent; /* W3C; sent where a request has none */
    int port; /* 0: ephemeral, or the port of an earlier ready.json */
    bool (*may_forward)(void *arg); /* see er_bridge_queue_opts */
    void *may_forward_arg;
};

struct er_bridge_run;

/* Install and start the run's gateway: stream_v1 through a held exec when
 * o->hold is set and it works, else queue_v1 (or keep the queue_v1 gateway
 * serving with this run's token) with its host poller. Errors carry B7's
 * sentences ("start sandbox callback bridge failed with exit code ...",
 * "Timed out waiting for bridge readiness.", "Sandbox callback bridge did
 * not report a listening port."); nothing is left running then. */
int er_bridge_run_start(const struct er_bridge_run_opts *o,
                        struct er_bridge_run **out, struct er_err *err);
/* Stop the poller (drain_ms, then 503 for what is left), then, with
 * stop_gateway, the gateway; free r. NULL is ok. */
void er_bridge_run_stop(struct er_bridge_run *r, int64_t drain_ms,
                        bool stop_gateway);
const char *er_bridge_run_token(const struct er_bridge_run *r);
/* http://127.0.0.1:<port> */
const char *er_bridge_run_base_url(const struct er_bridge_run *r);
const struct er_bridge_paths *
er_bridge_run_paths(const struct er_bridge_run *r);
int er_bridge_run_port(const struct er_bridge_run *r);
/* Whether start found this run's gateway serving and kept it. */
bool er_bridge_run_was_running(const struct er_bridge_run *r);
/* "stream_v1" or "queue_v1". */
const char *er_bridge_run_transport(const struct er_bridge_run *r);
/* A later realize of the run keeps this bridge: requests forwarded from
 * now on carry its traceparent (NULL: none), whatever the transport. Safe
 * while the poller or the stream's forwarders run; not against
 * er_bridge_run_stop. */
void er_bridge_run_set_trace(struct er_bridge_run *r, const char *traceparent);
/* stream_v1: whether its held exec still runs; queue_v1: true (whether its
 * gateway serves is known only where it runs). */
bool er_bridge_run_is_alive(struct er_bridge_run *r);

/* queue_v1: its runner's counters (false, zeroes: it has none). */
bool er_bridge_run_runner_stats(struct er_bridge_run *r,
                                struct er_bridge_runner_stats *out);

/* The text of bridge/allowlist.txt (generated by bridge/embed.cmake). */
extern const char *const er_embed_bridge_allowlist;

#endif
