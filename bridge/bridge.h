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

/* A forwarder to origin (ENVRUN_PAPERCLIP_API_URL: scheme://host[:port],
 * nothing after) with one reused libcurl handle; allow is borrowed for its
 * life. Not thread-safe: one per bridge. Errors: ER_EINVAL naming the
 * setting, ER_ENOMEM. */
int er_bridge_fwd_new(const char *origin, const struct er_bridge_allow *allow,
                      size_t max_body, int64_t timeout_ms,
                      struct er_bridge_fwd **out, struct er_err *err);
void er_bridge_fwd_free(struct er_bridge_fwd *fwd);

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

/* The text of bridge/allowlist.txt (generated by bridge/embed.cmake). */
extern const char *const er_embed_bridge_allowlist;

#endif
