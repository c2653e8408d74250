/* gateway: envrun-gateway, the in-sandbox half of the callback bridge
 * (upstream.md B2-B5). A static, single-threaded HTTP/1.1 server on
 * loopback that hands each agent request to the host, through a file queue
 * (queue_v1) or length-prefixed JSON frames on stdin/stdout (stream_v1).
 * Uses libc only. Not thread-safe: one gateway per process. */
#ifndef ER_GATEWAY_GATEWAY_H
#define ER_GATEWAY_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

enum er_gateway_mode {
    ER_GATEWAY_QUEUE_V1 = 0, /* upstream's file queue (B2, B3) */
    ER_GATEWAY_STREAM_V1,    /* envrun's frames over stdin/stdout */
};

#define ER_GATEWAY_PATH_MAX  1024
#define ER_GATEWAY_HOST_MAX  256
#define ER_GATEWAY_TOKEN_MAX 512

/* The environment of B4, validated. Plain data; no ownership. */
struct er_gateway_config {
    enum er_gateway_mode mode;
    char queue_dir[ER_GATEWAY_PATH_MAX]; /* queue_v1 only */
    char token[ER_GATEWAY_TOKEN_MAX];    /* never logged */
    size_t token_len;
    char host[ER_GATEWAY_HOST_MAX];
    int port; /* 0: ephemeral */
    int64_t poll_interval_ms;
    int64_t response_timeout_ms;
    int64_t max_queue_depth;
    uint64_t max_body_bytes;
};

/* Fill cfg from the PAPERCLIP_* variables of upstream.md B4 (getenv).
 * Numeric variables accept only finite positive numbers (truncated), else
 * their default. On failure returns -1 and writes the startup message of B4
 * rule 1 (no trailing newline) into msg. */
int er_gateway_config_load(struct er_gateway_config *cfg, char *msg,
                           size_t msg_len);

/* Run the gateway until SIGINT/SIGTERM (returns 0), until the host hangs up
 * in stream_v1 (0), or until a startup or stream protocol error (1, after
 * logging it to stderr). cfg is borrowed for the call. */
int er_gateway_run(const struct er_gateway_config *cfg);

#endif
