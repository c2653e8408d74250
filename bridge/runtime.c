/* runtime: one bridged run where its gateway runs (upstream.md B2, B4, B7):
 * the bridge token a run's host credential derives, the gateway uploaded
 * once per lease (skipped when its checksum matches), started detached and
 * waited for, the host poller started beside it, and both stopped. Every
 * remote step is one exec of the lease's channel with a deadline. A
 * struct er_bridge_run is used by one thread at a time. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "bridge/bridge.h"

/* B7: every control exec is capped at 30 s. */
#define CONTROL_TIMEOUT_MS 30000
/* Start and readiness (200 x 50 ms) in one exec, with room for the rest. */
#define START_TIMEOUT_MS   20000
#define ADAPTER_KEY_MAX    64
/* How often a queue_v1 gateway looks for the response a request waits
 * for (upstream: 100 ms). Only a waiting request costs a look, so a
 * shorter step costs an idle bridge nothing. */
#define GATEWAY_POLL_MS    "10"

extern const unsigned char er_embed_gateway[];
extern const size_t er_embed_gateway_len;

struct er_bridge_run {
    struct er_bridge_fwd *fwd;
    struct er_bridge_poller *poller;
    struct er_bridge_stream *stream; /* stream_v1; else queue_v1 */
    struct er_bridge_runner *runner; /* queue_v1's scripts, when held */
    er_bridge_exec_fn *exec;
    void *exec_arg;
    struct er_bridge_paths paths;
    char token[ER_BRIDGE_TOKEN_LEN + 1];
    char base_url[64];
    char run_id[128];
    int port;
    long pid;
    bool was_running; /* the gateway served already: kept, not restarted */
    struct er_secret host_token; /* a copy the poller borrows */
};

int er_bridge_token_derive(const struct er_secret *host_token,
                           const char *run_id,
                           char out[ER_BRIDGE_TOKEN_LEN + 1])
{
    static const char url[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t mac[ER_SHA256_LEN];
    char msg[512];
    size_t i;
    size_t o = 0;
    int n;

    if (!er_secret_is_set(host_token) || run_id == NULL || run_id[0] == '\0')
        return ER_EINVAL;
    n = snprintf(msg, sizeof(msg), "envrun-bridge-token/v1\n%s", run_id);
    if (n < 0 || (size_t)n >= sizeof(msg))
        return ER_E2BIG;
    er_hmac_sha256(host_token->value, host_token->len, msg, (size_t)n, mac);
    /* 24 bytes, base64url without padding: 32 characters (B10). */
    for (i = 0; i < ER_BRIDGE_TOKEN_BYTES; i += 3) {
        uint32_t v =
            (uint32_t)mac[i] << 16 | (uint32_t)mac[i + 1] << 8 | mac[i + 2];

        out[o++] = url[v >> 18];
        out[o++] = url[(v >> 12) & 63];
        out[o++] = url[(v >> 6) & 63];
        out[o++] = url[v & 63];
    }
    out[o] = '\0';
    er_wipe(mac, sizeof(mac));
    return 0;
}

static bool is_adapter_key(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        char c = s[i];

        if (i >= ADAPTER_KEY_MAX ||
            !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return i > 0;
}

int er_bridge_paths_init(struct er_bridge_paths *p, const char *remote_cwd,
                         const char *adapter_key, struct er_err *err)
{
    int n;

    memset(p, 0, sizeof(*p));
    if (remote_cwd == NULL || remote_cwd[0] != '/')
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the remote workspace is not an absolute path");
    if (adapter_key == NULL || !is_adapter_key(adapter_key))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "adapter type \"%.64s\" cannot name a runtime "
                          "directory (letters, digits, '_' and '-' only)",
                          adapter_key != NULL ? adapter_key : "");
    n = snprintf(p->runtime_dir, sizeof(p->runtime_dir),
                 "%s%s.paperclip-runtime/%s/paperclip-bridge", remote_cwd,
                 remote_cwd[strlen(remote_cwd) - 1] == '/' ? "" : "/",
                 adapter_key);
    if (n < 0 || (size_t)n >= sizeof(p->runtime_dir) - 64)
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_NONE,
                          "the remote workspace path is too long");
    snprintf(p->server_dir, sizeof(p->server_dir), "%s/server", p->runtime_dir);
    snprintf(p->gateway, sizeof(p->gateway), "%s/envrun-gateway",
             p->server_dir);
    snprintf(p->queue_dir, sizeof(p->queue_dir), "%s/queue", p->runtime_dir);
    return 0;
}

const void *er_bridge_gateway_image(size_t *len)
{
    *len = er_embed_gateway_len;
    return er_embed_gateway;
}

/* One exec of script (with NAME='value' assignments before it). */
static int run_script(er_bridge_exec_fn *exec, void *arg, const char *action,
                      const struct er_buf *script, const void *in,
                      size_t in_len, int64_t timeout_ms,
                      struct er_bridge_exec_out *out, struct er_err *err)
{
    int rc = exec(arg, (const char *)script->data, in, in_len, timeout_ms, NULL,
                  out, err);

    if (rc == 0 && out->exit_code != 0)
        rc = er_bridge_exec_failed(err, action, out);
    return rc;
}

/* `NAME='value'; ` for the scripts below. */
static int assign(struct er_buf *b, const char *name, const char *value)
{
    int rc = er_buf_printf(b, "%s=", name);

    if (rc == 0)
        rc = er_sh_quote(b, value);
    if (rc == 0)
        rc = er_buf_append(b, "; ", 2);
    return rc;
}

/* The lock both the upload and upstream's writers use (B2, B7): a
 * directory holding the pid of its owner, taken over from a dead owner. */
#define LOCK_SH                                                             \
    "n=0; while ! mkdir \"$lock\" 2>/dev/null; do "                         \
    "pid=$(cat \"$lock/pid\" 2>/dev/null || true); "                        \
    "if [ -n \"$pid\" ] && ! kill -0 \"$pid\" 2>/dev/null; then "           \
    "rm -rf \"$lock\"; continue; fi; n=$((n + 1)); "                        \
    "if [ \"$n\" -ge 600 ]; then "                                          \
    "echo 'Timed out acquiring sandbox callback bridge upload lock.' >&2; " \
    "exit 1; fi; sleep 0.05 2>/dev/null || sleep 1; done; "                 \
    "echo $$ > \"$lock/pid\"; "

/* pid: the gateway's pid from $q/server.pid; alive=1 when that process
 * lives and is an envrun-gateway (a reused pid is never signalled). */
#define GATEWAY_ALIVE_SH                                          \
    "pid=$(cat \"$q/server.pid\" 2>/dev/null || true); alive=0; " \
    "if [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null && "      \
    "tr '\\000' ' ' < \"/proc/$pid/cmdline\" 2>/dev/null | "      \
    "grep -q envrun-gateway; then alive=1; fi; "

/* Stop $q's queue_v1 gateway (B7: SIGTERM, 40 x 50 ms, then SIGKILL) and
 * remove its files. */
#define GATEWAY_STOP_SH                                            \
    GATEWAY_ALIVE_SH                                               \
    "if [ \"$alive\" = 1 ]; then kill \"$pid\" 2>/dev/null; i=0; " \
    "while kill -0 \"$pid\" 2>/dev/null && [ \"$i\" -lt 40 ]; do " \
    "sleep 0.05 2>/dev/null || sleep 1; i=$((i + 1)); done; "      \
    "kill -9 \"$pid\" 2>/dev/null; fi; "                           \
    "rm -f \"$q/server.pid\" \"$q/ready.json\" \"$q/server.token-sha256\"; "

/* sha256 of a file, or "" with no tool for it. */
#define SUM_SH                                               \
    "sum() { if command -v sha256sum >/dev/null 2>&1; then " \
    "sha256sum \"$1\" | cut -d' ' -f1; "                     \
    "elif command -v shasum >/dev/null 2>&1; then "          \
    "shasum -a 256 \"$1\" | cut -d' ' -f1; fi; }; "

int er_bridge_gateway_install(er_bridge_exec_fn *exec, void *arg,
                              const struct er_bridge_paths *paths,
                              bool *is_uploaded, struct er_err *err)
{
    struct er_bridge_exec_out out;
    struct er_buf script;
    uint8_t digest[ER_SHA256_LEN];
    char hex[2 * ER_SHA256_LEN + 1];
    size_t len;
    const void *image = er_bridge_gateway_image(&len);
    int rc;

    *is_uploaded = false;
    er_sha256(image, len, digest);
    er_sha256_hex(digest, hex);
    er_bridge_exec_out_init(&out, 4096);
    er_buf_init(&script, 16384);
    rc = assign(&script, "dir", paths->server_dir);
    if (rc == 0)
        rc = er_buf_printf(
            &script,
            "set -eu; f=\"$dir/envrun-gateway\"; "
            "lock=\"$dir/.paperclip-bridge-upload.lock\"; mkdir -p "
            "\"$dir\"; " LOCK_SH
            "trap 'rm -rf \"$lock\" \"$f.partial\"' EXIT INT TERM; " SUM_SH
            "want=%s; "
            "if [ -f \"$f\" ] && [ ! -L \"$f\" ] && [ -x \"$f\" ] && "
            "[ \"$(sum \"$f\")\" = \"$want\" ]; then cat >/dev/null; "
            "echo '{\"uploaded\":false}'; exit 0; fi; "
            "rm -f \"$f.partial\"; cat > \"$f.partial\"; "
            "got=$(sum \"$f.partial\"); "
            "if [ -n \"$got\" ] && [ \"$got\" != \"$want\" ]; then "
            "echo 'Sandbox callback bridge gateway upload sha mismatch.' >&2; "
            "exit 1; fi; chmod 755 \"$f.partial\"; mv -f \"$f.partial\" "
            "\"$f\"; echo '{\"uploaded\":true}'",
            hex);
    if (rc == 0)
        rc = run_script(exec, arg, "upload sandbox callback bridge gateway",
                        &script, image, len, CONTROL_TIMEOUT_MS, &out, err);
    if (rc == 0)
        *is_uploaded =
            strstr(er_bridge_exec_text(&out.out), "\"uploaded\":true") != NULL;
    else if (rc == ER_ENOMEM || rc == ER_E2BIG)
        er_err_set(err, rc, ER_ERRCLASS_NONE, "out of memory");
    er_bridge_exec_out_fini(&out);
    er_buf_fini(&script);
    return rc;
}

/* Parse what the start script printed: ready.json (B3) and, first, one
 * line "running" when the gateway was serving already. */
static int parse_ready(const char *text, struct er_bridge_run *r,
                       struct er_err *err)
{
    json_error_t jerr;
    json_t *ready;
    json_t *port;
    json_t *pid;

    if (strncmp(text, "running\n", 8) == 0) {
        r->was_running = true;
        text += 8;
    }
    ready = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(ready)) {
        json_decref(ready);
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "Sandbox callback bridge wrote invalid readiness "
                          "JSON: %.120s",
                          jerr.text);
    }
    port = json_object_get(ready, "port");
    pid = json_object_get(ready, "pid");
    if (!json_is_integer(port) || json_integer_value(port) <= 0 ||
        json_integer_value(port) > 65535) {
        json_decref(ready);
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                          "Sandbox callback bridge did not report a "
                          "listening port.");
    }
    r->port = (int)json_integer_value(port);
    r->pid = json_is_integer(pid) ? (long)json_integer_value(pid) : 0;
    /* The gateway listens on 127.0.0.1 (envrun never sets
     * PAPERCLIP_BRIDGE_HOST): the URL is built here, not taken from a file
     * the sandbox can write. */
    snprintf(r->base_url, sizeof(r->base_url), "http://127.0.0.1:%d", r->port);
    json_decref(ready);
    return 0;
}

/* Start the gateway (B4, B7) unless this run's gateway is serving already
 * (its pid alive, its ready.json there, its token the same: checked by the
 * token's SHA-256 it was started with), then wait for ready.json. The
 * token goes on stdin, never into a command line or a file. A port kept
 * from an earlier ready.json is asked for again, so an agent keeps its
 * PAPERCLIP_API_URL across a restart. */
static int gateway_start(er_bridge_exec_fn *exec, void *arg,
                         struct er_bridge_run *r, int port, struct er_err *err)
{
    struct er_bridge_exec_out out;
    struct er_buf script;
    uint8_t digest[ER_SHA256_LEN];
    char hex[2 * ER_SHA256_LEN + 1];
    char in[ER_BRIDGE_TOKEN_LEN + 2];
    int rc;

    er_sha256(r->token, strlen(r->token), digest);
    er_sha256_hex(digest, hex);
    snprintf(in, sizeof(in), "%s\n", r->token);
    er_bridge_exec_out_init(&out, 8192);
    er_buf_init(&script, 16384);
    rc = assign(&script, "q", r->paths.queue_dir);
    if (rc == 0)
        rc = assign(&script, "gw", r->paths.gateway);
    if (rc == 0)
        rc = er_buf_printf(
            &script,
            "set -u; want=%s; port=%d; log=\"$q/logs/bridge.log\"; "
            "mkdir -p \"$q/requests\" \"$q/responses\" \"$q/logs\" || exit "
            "1; " GATEWAY_ALIVE_SH
            "if [ \"$alive\" = 1 ] && [ -s \"$q/ready.json\" ] && "
            "[ \"$(cat \"$q/server.token-sha256\" 2>/dev/null)\" = \"$want\" ]"
            "; then cat >/dev/null; echo running; "
            "cat \"$q/ready.json\"; exit 0; fi; "
            "if [ \"$alive\" = 1 ]; then kill \"$pid\" 2>/dev/null; "
            "sleep 0.1 2>/dev/null || sleep 1; fi; "
            "if [ \"$port\" = 0 ] && [ -s \"$q/ready.json\" ]; then "
            "port=$(sed -n 's/.*\"port\":\\([0-9][0-9]*\\).*/\\1/p' "
            "\"$q/ready.json\" | head -n 1); fi; "
            "rm -f \"$q/ready.json\" \"$q/server.pid\"; "
            "IFS= read -r PAPERCLIP_BRIDGE_TOKEN || exit 1; "
            "printf '%%s\\n' \"$want\" > \"$q/server.token-sha256\"; "
            "export PAPERCLIP_BRIDGE_TOKEN PAPERCLIP_API_BRIDGE_MODE=queue_v1 "
            "PAPERCLIP_BRIDGE_QUEUE_DIR=\"$q\" "
            "PAPERCLIP_BRIDGE_PORT=\"${port:-0}\" "
            "PAPERCLIP_BRIDGE_POLL_INTERVAL_MS=" GATEWAY_POLL_MS "; "
            "nohup \"$gw\" >> \"$log\" 2>&1 < /dev/null & pid=$!; "
            "unset PAPERCLIP_BRIDGE_TOKEN; echo \"$pid\" > \"$q/server.pid\"; "
            "i=0; while [ \"$i\" -lt 200 ]; do "
            "if [ -s \"$q/ready.json\" ]; then cat \"$q/ready.json\"; exit 0; "
            "fi; if ! kill -0 \"$pid\" 2>/dev/null; then "
            "tail -c 2000 \"$log\" >&2; exit 1; fi; "
            "sleep 0.05 2>/dev/null || sleep 1; i=$((i + 1)); done; "
            "echo 'Timed out waiting for bridge readiness.' >&2; "
            "tail -c 2000 \"$log\" >&2; exit 1",
            hex, port);
    if (rc == 0)
        rc = run_script(exec, arg, "start sandbox callback bridge", &script, in,
                        strlen(in), START_TIMEOUT_MS, &out, err);
    er_wipe(in, sizeof(in));
    if (rc == 0)
        rc = parse_ready(er_bridge_exec_text(&out.out), r, err);
    else if (rc == ER_ENOMEM || rc == ER_E2BIG)
        er_err_set(err, rc, ER_ERRCLASS_NONE, "out of memory");
    er_bridge_exec_out_fini(&out);
    er_buf_fini(&script);
    return rc;
}

int er_bridge_gateway_stop(er_bridge_exec_fn *exec, void *arg,
                           const char *queue_dir, struct er_err *err)
{
    struct er_bridge_exec_out out;
    struct er_buf script;
    int rc;

    er_bridge_exec_out_init(&out, 4096);
    er_buf_init(&script, 16384);
    rc = assign(&script, "q", queue_dir);
    if (rc == 0)
        rc = er_buf_printf(&script, "%s", GATEWAY_STOP_SH "exit 0");
    if (rc == 0)
        rc = run_script(exec, arg, "stop sandbox callback bridge", &script,
                        NULL, 0, CONTROL_TIMEOUT_MS, &out, err);
    er_bridge_exec_out_fini(&out);
    er_buf_fini(&script);
    return rc;
}

/* stream_v1 (see er_bridge_stream_start): a queue_v1 gateway of this run
 * that may hold the port is stopped first. */
static int stream_start(const struct er_bridge_run_opts *o,
                        struct er_bridge_run *r, struct er_err *err)
{
    struct er_bridge_stream_opts so;
    struct er_buf script;
    int rc;

    er_buf_init(&script, 16384);
    rc = assign(&script, "q", r->paths.queue_dir);
    if (rc == 0)
        rc = assign(&script, "gw", r->paths.gateway);
    if (rc == 0)
        rc = er_buf_printf(
            &script,
            "port=%d; mkdir -p \"$q/logs\" || exit 1; " GATEWAY_STOP_SH
            "IFS= read -r PAPERCLIP_BRIDGE_TOKEN || exit 1; "
            "export PAPERCLIP_BRIDGE_TOKEN PAPERCLIP_API_BRIDGE_MODE=stream_v1 "
            "PAPERCLIP_BRIDGE_PORT=\"$port\"; "
            "exec \"$gw\" 2>> \"$q/logs/bridge.log\"",
            o->port);
    if (rc != 0) {
        er_buf_fini(&script);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
    }
    memset(&so, 0, sizeof(so));
    so.hold = o->hold;
    so.hold_arg = o->exec_arg;
    so.script = (const char *)script.data;
    so.token = r->token;
    so.origin = o->origin;
    so.allow = o->allow;
    so.host_token = &r->host_token;
    so.run_id = r->run_id;
    so.traceparent = o->traceparent;
    so.max_body = ER_BRIDGE_MAX_BODY_BYTES;
    so.may_forward = o->may_forward;
    so.may_forward_arg = o->may_forward_arg;
    rc = er_bridge_stream_start(&so, &r->stream, err);
    er_buf_fini(&script);
    if (rc != 0)
        return rc;
    r->port = er_bridge_stream_port(r->stream);
    snprintf(r->base_url, sizeof(r->base_url), "http://127.0.0.1:%d", r->port);
    return 0;
}

/* queue_v1's scripts through one held exec (runner.c) when the channel
 * can hold one: the poller's exec then goes to it (the plain exec stays
 * its fallback). */
static void start_runner(const struct er_bridge_run_opts *o,
                         struct er_bridge_run *r,
                         struct er_bridge_queue_opts *q)
{
    struct er_bridge_runner_opts ro;
    struct er_err err;

    memset(&ro, 0, sizeof(ro));
    ro.hold = o->hold;
    ro.hold_arg = o->exec_arg;
    ro.fallback = o->exec;
    ro.fallback_arg = o->exec_arg;
    ro.gateway = r->paths.gateway;
    ro.run_id = r->run_id;
    er_err_clear(&err);
    if (er_bridge_runner_start(&ro, &r->runner, &err) != 0)
        er_log_kv(ER_LOG_WARN, "bridge",
                  "bridge command runner failed; one exec a script", "runId",
                  r->run_id, "error", err.msg, (const char *)NULL);
    if (r->runner != NULL) {
        q->exec = er_bridge_runner_exec;
        q->exec_arg = r->runner;
    }
}

int er_bridge_run_start(const struct er_bridge_run_opts *o,
                        struct er_bridge_run **out, struct er_err *err)
{
    struct er_bridge_run *r;
    struct er_bridge_queue_opts q;
    bool is_uploaded = false;
    int rc;

    *out = NULL;
    r = er_calloc(1, sizeof(*r));
    if (r == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    r->exec = o->exec;
    r->exec_arg = o->exec_arg;
    snprintf(r->run_id, sizeof(r->run_id), "%s", o->run_id);
    rc = er_bridge_paths_init(&r->paths, o->remote_cwd, o->adapter_key, err);
    if (rc == 0 &&
        er_bridge_token_derive(o->host_token, o->run_id, r->token) != 0)
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                        "Sandbox bridge mode requires a host-side Paperclip "
                        "API token.");
    if (rc == 0 && er_secret_set(&r->host_token, o->host_token->value,
                                 o->host_token->len) != 0)
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    if (rc == 0)
        rc = er_bridge_fwd_new(o->origin, o->allow, ER_BRIDGE_MAX_BODY_BYTES,
                               ER_BRIDGE_FORWARD_TIMEOUT_MS, &r->fwd, err);
    if (rc == 0)
        er_bridge_fwd_set_trace(r->fwd, o->traceparent);
    if (rc == 0)
        rc = er_bridge_gateway_install(o->exec, o->exec_arg, &r->paths,
                                       &is_uploaded, err);
    if (rc == 0 && o->hold != NULL && !o->is_queue_only) {
        struct er_err serr;

        er_err_clear(&serr);
        if (stream_start(o, r, &serr) == 0)
            goto started;
        er_log_kv(ER_LOG_WARN, "bridge",
                  "stream_v1 bridge failed; using the file bridge", "runId",
                  r->run_id, "error", serr.msg, (const char *)NULL);
    }
    if (rc == 0)
        rc = gateway_start(o->exec_detached, o->exec_arg, r, o->port, err);
    if (rc == 0) {
        memset(&q, 0, sizeof(q));
        q.exec = o->exec;
        q.exec_arg = o->exec_arg;
        if (o->hold != NULL)
            start_runner(o, r, &q);
        q.queue_dir = r->paths.queue_dir;
        q.gateway = r->paths.gateway;
        q.fwd = r->fwd;
        q.host_token = &r->host_token;
        q.run_id = r->run_id;
        q.max_body = ER_BRIDGE_MAX_BODY_BYTES;
        q.may_forward = o->may_forward;
        q.may_forward_arg = o->may_forward_arg;
        rc = er_bridge_poller_start(&q, &r->poller, err);
        if (rc != 0) {
            struct er_err ignored;

            er_err_clear(&ignored);
            (void)er_bridge_gateway_stop(o->exec, o->exec_arg,
                                         r->paths.queue_dir, &ignored);
        }
    }
    if (rc != 0) {
        er_bridge_run_stop(r, 0, false);
        return rc;
    }
started:
    er_log_kv(ER_LOG_INFO, "bridge",
              r->was_running ? "callback bridge re-attached"
                             : "callback bridge started",
              "runId", r->run_id, "transport", er_bridge_run_transport(r),
              "baseUrl", r->base_url, "queueDir", r->paths.queue_dir,
              "uploaded", is_uploaded ? "true" : "false", "commandRunner",
              r->runner != NULL ? "true" : "false", (const char *)NULL);
    *out = r;
    return 0;
}

void er_bridge_run_stop(struct er_bridge_run *r, int64_t drain_ms,
                        bool stop_gateway)
{
    if (r == NULL)
        return;
    /* A stream_v1 gateway ends with its stream, whatever stop_gateway. */
    er_bridge_stream_stop(r->stream, drain_ms);
    er_bridge_poller_stop(r->poller, drain_ms);
    er_bridge_runner_stop(r->runner);
    if (stop_gateway && r->stream == NULL && r->paths.queue_dir[0] != '\0' &&
        r->port > 0) {
        struct er_err err;

        er_err_clear(&err);
        if (er_bridge_gateway_stop(r->exec, r->exec_arg, r->paths.queue_dir,
                                   &err) != 0)
            er_log_kv(ER_LOG_WARN, "bridge", "gateway stop failed", "runId",
                      r->run_id, "error", err.msg, (const char *)NULL);
    }
    er_bridge_fwd_free(r->fwd);
    er_secret_fini(&r->host_token);
    er_wipe(r->token, sizeof(r->token));
    er_free(r);
}

const char *er_bridge_run_token(const struct er_bridge_run *r)
{
    return r->token;
}

const char *er_bridge_run_base_url(const struct er_bridge_run *r)
{
    return r->base_url;
}

const struct er_bridge_paths *er_bridge_run_paths(const struct er_bridge_run *r)
{
    return &r->paths;
}

int er_bridge_run_port(const struct er_bridge_run *r)
{
    return r->port;
}

bool er_bridge_run_was_running(const struct er_bridge_run *r)
{
    return r->was_running;
}

const char *er_bridge_run_transport(const struct er_bridge_run *r)
{
    return r->stream != NULL ? "stream_v1" : "queue_v1";
}

bool er_bridge_run_runner_stats(struct er_bridge_run *r,
                                struct er_bridge_runner_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (r->runner == NULL)
        return false;
    er_bridge_runner_stats(r->runner, out);
    return true;
}

void er_bridge_run_set_trace(struct er_bridge_run *r, const char *traceparent)
{
    er_bridge_fwd_set_trace(r->fwd, traceparent);
    if (r->stream != NULL)
        er_bridge_stream_set_trace(r->stream, traceparent);
}

bool er_bridge_run_is_alive(struct er_bridge_run *r)
{
    return r->stream == NULL || er_bridge_stream_is_alive(r->stream);
}
