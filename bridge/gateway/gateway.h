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

/* `envrun-gateway --wait-requests <requests dir> <ms> [<max>]`: the host's
 * list of queue_v1 (upstream.md B7) done by the gateway binary: print the
 * name of every regular, non-symlink `*.json` in dir, one a line, as soon
 * as there is one (inotify wakes it; without inotify it looks every 10 ms,
 * with no process started), or nothing after ms; a missing dir lists
 * nothing. With max (> 0), the host's read of the first request too: an
 * empty line, the least name, a line with a length n and n bytes of that
 * file (at most max; left out when it is not a regular file any more).
 * max_text may be NULL. Returns the exit code (0; 2 for bad arguments). */
int er_gateway_wait_requests(const char *dir, const char *ms_text,
                             const char *max_text);

/* `envrun-gateway --write-response <queue dir> <name> <require 0|1>`: B7's
 * guarded response write of stdin to responses/<name> (under the lock
 * directory upstream's writers share, a dead holder's taken over; only
 * while requests/<name> is a regular file when require is 1; never over
 * an answer; via <name>.tmp and a rename), then requests/<name> removed.
 * Prints {"wrote":true|false}; exit 1 with the reason on stderr.
 * Followed by `--wait-requests <dir> <ms> <max>` on the same command line,
 * the wait runs after a write that worked (its output after the
 * {"wrote":...} line): the host answers one request and waits for the
 * next in one exec. */
int er_gateway_write_response(const char *queue, const char *name,
                              const char *require);

/* `envrun-gateway --serve-commands`: the queue_v1 host's command runner,
 * started once through a held exec so that its list and write scripts
 * cost no exec of the lease each. Prints "envrun-runner 1\n", then per
 * command read from stdin, "X <timeout ms> <script bytes> <input bytes>\n",
 * the script and the input: runs `/bin/sh -c <script>` in a process group
 * of its own with the input on its stdin, and writes "O <n>\n" + n bytes
 * of its stdout, "E <n>\n" + n bytes of its stderr, as they come, then
 * "R <code>\n" (its exit code; -1 when it was killed: its timeout, a "K\n"
 * line from the host after the input, or the host gone). Returns at end of
 * input (0) or on a bad frame (2). */
int er_gateway_serve_commands(void);

#endif
