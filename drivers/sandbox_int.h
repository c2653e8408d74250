/* sandbox_int: the parts of the sandbox driver (domain.md 4.3, 4.4) shared
 * by its files: the bwrap provider's sandboxes (sandbox_bwrap.c) and the
 * provider-plugin host (plugin_host.c). Internal to drivers/ and its
 * tests; the worker sees only er_sandbox_driver (driver.h). */
#ifndef ER_DRIVERS_SANDBOX_INT_H
#define ER_DRIVERS_SANDBOX_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "common/common.h"
#include "drivers/driver.h"

/* ================================================================
 * bwrap (sandbox_bwrap.c): sandboxes on this host made with bubblewrap.
 *
 * A sandbox is named by an id of 16 lowercase hex digits (the tag of the
 * lease that made it, see er_driver_in_use_fn). Everything it has on the
 * host lives in <dir>/<id>/ (dir: er_bwrap_set_dir): a marker file naming
 * this installation (er_driver_installation) and the id, the pid of the
 * sandbox's init as the host sees it (with its start time, so a recycled
 * pid is never taken for it), and the sandbox's writable directories
 * (workspace, tmp). Inside, the sandbox has its own user, mount, PID, IPC,
 * UTS and network namespaces (loopback only), the host's /usr (and the
 * /bin, /lib, /lib64, /sbin links, /etc pieces a shell needs) read-only,
 * /workspace and /tmp writable and its own, no capabilities, no new
 * privileges, and the resource limits it was made with. It is started in a
 * session of its own without --die-with-parent, so it outlives the worker
 * process that made it; any worker process on this host can enter it or
 * end it from the id alone.
 *
 * Thread-safe: no global state but the directory, set once at start-up.
 * ================================================================ */

#define ER_BWRAP_ID_LEN    ER_DRIVER_LEASE_TAG_LEN /* a lease tag */
/* Where the workspace is inside every sandbox. */
#define ER_BWRAP_WORKSPACE "/workspace"

/* Whether id is a sandbox id: exactly 16 lowercase hex digits. */
bool er_bwrap_id_is_valid(const char *id);

/* Set the directory sandboxes live under (ENVRUN_SANDBOX_DIR), once at
 * start-up. NULL or "": the default, /var/lib/envrun/sandboxes. */
void er_bwrap_set_dir(const char *dir);
/* The directory sandboxes live under (borrowed). */
const char *er_bwrap_dir(void);

/* Resource limits of a sandbox; 0 means none (the host's). */
struct er_bwrap_limits {
    int64_t memory_bytes; /* address space per process (RLIMIT_AS) */
    int64_t processes;    /* processes in the sandbox (RLIMIT_NPROC, counted
                           * per user namespace) */
    int64_t cpu_seconds;  /* CPU time per process (RLIMIT_CPU) */
};

/* Whether this host can make sandboxes: bwrap is found and a throwaway
 * sandbox starts. 0, or ER_EDRIVER with err saying why (for the
 * driver's message and for tests to skip with a reason). */
int er_bwrap_probe(struct er_err *err);

/* Make the sandbox id with lim (NULL: no limits), or adopt it when it
 * already runs (a replayed acquire after a crash; lim is then not
 * applied again). Waits until a command can be entered into it. On failure
 * nothing of it is left. Returns 0, ER_EINVAL (bad id), ER_EDRIVER (no
 * bwrap, or it would not start), ER_EIO (also when <dir>/<id> exists and
 * is not this installation's sandbox: it is left alone). */
int er_bwrap_create(const char *id, const struct er_bwrap_limits *lim,
                    struct er_err *err);

/* Whether sandbox id runs (its init is alive and is the one recorded). */
bool er_bwrap_is_alive(const char *id);

/* The host path of the sandbox's workspace (<dir>/<id>/workspace), written
 * to out. Returns 0, ER_EINVAL (bad id) or ER_E2BIG. */
int er_bwrap_workspace_path(const char *id, char *out, size_t out_len);

/* Run req inside sandbox id, in req->cwd (a path inside the sandbox; NULL:
 * /workspace), with exactly req->env as its environment (plus PATH when it
 * has none). The command runs in a PID namespace of its own nested in the
 * sandbox's, so on the deadline (or cancellation, er_proc_set_cancel) the
 * whole tree it made is killed, daemons included, and nothing of it is
 * left; when the command ends, what it left running ends with it. It has
 * no capabilities, no_new_privs and the sandbox's limits. out is always
 * initialised (er_driver_exec_result_fini). Returns 0 with out filled (a
 * non-zero exit is a result; a cwd that does not exist gives exit 125),
 * ER_EINVAL (bad id, empty command, an env entry not NAME=VALUE),
 * ER_ENOTFOUND when the sandbox does not run, ER_EIO. */
int er_bwrap_exec(const char *id, const struct er_driver_exec *req,
                  struct er_driver_exec_result *out, struct er_err *err);

/* Run argv inside sandbox id like er_bwrap_exec (environment: PATH only;
 * cwd NULL: /workspace), with its stdin read from stdin_fd (borrowed; -1:
 * none) instead of a buffer: for streaming an archive in. */
int er_bwrap_exec_fd(const char *id, const char *const *argv, const char *cwd,
                     int stdin_fd, int64_t timeout_ms,
                     struct er_driver_exec_result *out, struct er_err *err);

/* End sandbox id: kill every process in it, wait until they are gone and
 * remove <dir>/<id>/ (only a directory carrying this installation's marker
 * for id). 0 also when there was nothing (idempotent); ER_EIO. */
int er_bwrap_destroy(const char *id, struct er_err *err);

/* Destroy the sandboxes of this installation under the directory whose id
 * is_in_use says is done with (and leftovers of a create that died). */
void er_bwrap_sweep(er_driver_in_use_fn *is_in_use, void *arg);

/* ================================================================
 * plugin host (plugin_host.c): sandbox-provider plugins as upstream runs
 * them (upstream.md Part A): one worker process per plugin, JSON-RPC 2.0
 * over its stdin/stdout as newline-delimited JSON, `initialize` first,
 * timeouts, restart with backoff. Plugins are found under
 * ENVRUN_PLUGINS_DIR (er_plugin_host_setup).
 *
 * A plugin's worker is started at the first er_plugin_call or
 * er_plugin_host_supports for one of its providers, by a supervisor thread
 * of its own that owns the process from then on: it spawns it (`node
 * <worker>` for a .js/.mjs/.cjs entry point, node being ENVRUN_NODE or
 * node in PATH; else the executable itself), in the plugin's directory,
 * with exactly the environment of A2 (PAPERCLIP_PLUGIN_ID: a UUID derived
 * from er_driver_installation() and the manifest id; never an ENVRUN_*
 * variable); it sends `initialize`, reads stdout and stderr, writes the
 * queued requests, answers the worker's own requests, restarts a worker
 * that exits with A7's backoff (stays down after 10 consecutive crashes,
 * until a call comes 10 minutes after the last one) and runs A4's stop
 * sequence at shutdown. A worker whose stdout closes or who exits fails
 * every call waiting on it at once; its process group is killed after it
 * exits, so helpers it started do not outlive it.
 *
 * Thread-safe, except that setup and shutdown must not race each other;
 * calls may be in flight when shutdown starts (they fail).
 * ================================================================ */

/* Upstream's error codes (upstream.md A5). */
#define ER_RPC_PARSE_ERROR            (-32700)
#define ER_RPC_METHOD_NOT_FOUND       (-32601)
#define ER_RPC_WORKER_UNAVAILABLE     (-32000)
#define ER_RPC_WORKER_ERROR           (-32002)
#define ER_RPC_TIMEOUT                (-32003)
#define ER_RPC_METHOD_NOT_IMPLEMENTED (-32004)

/* Timeouts (upstream.md A6). */
#define ER_PLUGIN_INITIALIZE_TIMEOUT_MS 15000
#define ER_PLUGIN_DEFAULT_TIMEOUT_MS    30000
#define ER_PLUGIN_OVERHEAD_MS           30000
#define ER_PLUGIN_READY_WAIT_MS         5000

/* The outcome of one call. On success result is the JSON-RPC result (owned;
 * JSON null when the plugin returned nothing). On failure rpc_code is the
 * error's code and err->msg its message: the plugin's own error message,
 * `RPC call "<m>" timed out after <n>ms`, `Worker process exited
 * (code=<c>, signal=<s>)` plus the stderr excerpt, the messages of
 * domain.md 4.3 step 3 for a plugin that is missing or not running. */
struct er_plugin_reply {
    json_t *result;
    int rpc_code; /* 0 on success */
};

/* Read ENVRUN_PLUGINS_DIR (NULL or "": no plugins) once at start-up: one
 * directory per plugin (other entries and dot-names are skipped), each
 * with its manifest (manifest.json, or package.json's
 * paperclipPlugin.manifest when it is a .json file) and the worker entry
 * point it names, checked as A9 says (the entry point must resolve inside
 * the directory); no two plugins may share an id or a driverKey, and node
 * must be found when an entry point is a script. Only environmentDrivers
 * entries of kind "sandbox_provider" serve sandbox providers. Nothing is
 * started yet. The worker's environment is read here, once. Returns 0, or
 * ER_EINVAL naming the first bad plugin directory (config error), also
 * when already set up; ER_ENOMEM. */
int er_plugin_host_setup(const char *plugins_dir, struct er_err *err);

/* Stop every plugin worker (the stop sequence of upstream.md A4: shutdown,
 * 10 s; 500 ms; SIGTERM, 5 s; SIGKILL), wait for them and their threads,
 * and forget the plugins (setup may be called again). Calls still waiting
 * fail with -32000. No-op when not set up. */
void er_plugin_host_shutdown(void);

/* Whether a plugin declares a sandbox_provider driver with this key; when
 * it does and plugin_key is not NULL, *plugin_key is its manifest id
 * (borrowed, valid until shutdown). Starts nothing. */
bool er_plugin_host_has_provider(const char *provider, const char **plugin_key);

/* Whether the plugin serving provider lists method in its supportedMethods.
 * Starts its worker when needed and waits for it like er_plugin_call;
 * false when it does not run then. */
bool er_plugin_host_supports(const char *provider, const char *method);

/* Call method with params (borrowed; its companyId, when a non-blank
 * string, scopes the invocation: paperclipInvocation, A3) on the plugin
 * serving provider, starting its worker when needed (waiting for it up to
 * ER_PLUGIN_READY_WAIT_MS). timeout_ms <= 0: the default; the timeout
 * counts from the send and only ends the wait (a late answer is logged
 * and dropped). Returns 0 with reply->result set, or ER_EDRIVER with
 * reply->rpc_code and err->msg (see struct er_plugin_reply; class RETRY
 * for a worker that is down, crashed or timed out, NONE for the plugin's
 * own error answer), ER_ENOTFOUND when no plugin serves provider (err: the
 * "is not registered" message), ER_ECANCELED when the calling thread's
 * er_proc_set_cancel flag ends the wait (rpc_code -32003), ER_E2BIG when
 * the request is over 64 MiB, ER_ENOMEM. A worker that stays down after
 * too many crashes gives `... but that plugin is currently error.` at
 * once. Thread-safe: many calls may be in flight on one worker. */
int er_plugin_call(const char *provider, const char *method,
                   const json_t *params, int64_t timeout_ms,
                   struct er_plugin_reply *reply, struct er_err *err);

void er_plugin_reply_fini(struct er_plugin_reply *reply);

/* Note value (len bytes, borrowed) as a secret about to be handed to the
 * plugin serving provider, before the call that carries it: from then on
 * every text that comes out of that plugin has each occurrence of it
 * replaced by "[REDACTED]" before it is used anywhere: the message of its
 * error answers (err->msg of er_plugin_call), its `log` notifications and
 * stderr lines (the worker log) and the stderr excerpt of failure
 * messages. Also looked for: the value without surrounding ASCII white
 * space, and both as JSON-escaped inside a string (a plugin printing its
 * config as JSON). Results (reply->result) are not scrubbed.
 *
 * Call it on the thread that then makes that er_plugin_call: the value is
 * kept, wiped, while the worker the call went to lives (it is the only
 * other holder), so at most until that worker exits, is restarted or the
 * host shuts down; noting it again renews it. At most 32 values per
 * plugin: when full, the least recently noted of those already sent is
 * dropped first. Values shorter than 4 bytes are ignored (they would
 * match ordinary text everywhere). Returns 0, also when no plugin serves
 * provider (nothing will carry the value there); ER_E2BIG when value is
 * longer than ER_SECRETREF_MAX_BYTES or when this thread has noted more
 * values than the list holds for its next call; ER_ENOMEM. Thread-safe. */
int er_plugin_note_secret(const char *provider, const char *value, size_t len);
/* text with every secret noted for provider's plugin replaced by
 * "[REDACTED]", as a new string (er_free); NULL when out of memory. For
 * what a plugin returned that the driver passes on (command output). */
char *er_plugin_scrub(const char *provider, const char *text);
/* Whether the string members of v (any depth, keys included) hold a
 * secret noted for provider's plugin. */
bool er_plugin_json_holds_secret(const char *provider, const json_t *v);

/* Tests only: shorter waits than upstream's (a field <= 0 keeps the
 * default). Read by the next er_plugin_host_setup; NULL restores all
 * defaults. */
struct er_plugin_host_timing {
    int64_t initialize_timeout_ms; /* ER_PLUGIN_INITIALIZE_TIMEOUT_MS */
    int64_t ready_wait_ms;         /* ER_PLUGIN_READY_WAIT_MS */
    int64_t backoff_base_ms;       /* 1000: the first restart's delay (A7) */
};
void er_plugin_host_set_timing(const struct er_plugin_host_timing *timing);

/* ================================================================
 * sandbox driver (sandbox.c, sandbox_plugin.c): the environment config of
 * domain.md 4.3 and the plugin provider's half of the driver.
 * ================================================================ */

enum er_sandbox_kind {
    ER_SANDBOX_FAKE,   /* upstream's built-in probe provider */
    ER_SANDBOX_BWRAP,  /* envrun's built-in: bubblewrap on this host */
    ER_SANDBOX_PLUGIN, /* any other key: a provider plugin */
};

#define ER_SANDBOX_PROVIDER_MAX 100 /* longest provider key */

/* A validated sandbox environment config. Borrowed pointers live as long
 * as the config object they came from. */
struct er_sandbox_config {
    enum er_sandbox_kind kind;
    char provider[ER_SANDBOX_PROVIDER_MAX + 1];
    bool is_reuse_lease;        /* reuseLease, default false */
    bool is_retain_on_failure;  /* retainOnFailure (envrun), default false */
    int64_t timeout_ms;         /* timeoutMs, 0 when absent */
    int64_t bridge_timeout_ms;  /* bridgeRequestTimeoutMs, 0 when absent */
    const char *image;          /* fake: image, default "ubuntu:24.04" */
    struct er_bwrap_limits lim; /* bwrap: memoryMb, maxProcesses, cpuSeconds */
};

/* Validate config into cfg. On failure err->msg is the first problem as a
 * sentence. Returns 0 or ER_EINVAL. */
int er_sandbox_config_parse(const json_t *config, struct er_sandbox_config *cfg,
                            struct er_err *err);

/* The lease policy of an acquire (domain.md 2.4): reuse_by_environment for
 * reuseLease with a run id when the provider can resume (can_reuse), else
 * retain_on_failure for retainOnFailure, else ephemeral. Static string. */
const char *er_sandbox_policy(const struct er_sandbox_config *cfg,
                              const struct er_driver_lease_ctx *ctx,
                              bool can_reuse);

/* The status a release writes (domain.md 4.3 Release step 4): status, but
 * retained for a failed retain_on_failure lease (its machine's teardown
 * was still attempted); failure_reason adapter_or_run_failure when failed.
 * Sets out->status and out->failure_reason. */
void er_sandbox_final_status(const struct er_driver_lease *lease,
                             const char *status,
                             struct er_driver_released *out);

/* Fill out with the workspaceRealization record of a sandbox lease (sync
 * strategy sandbox_archive_upload_download, remote path remote_path, may
 * be NULL), the prepare and summary sentences, and a copy of cwd. Returns
 * 0 or ER_ENOMEM (out then holds nothing). */
int er_sandbox_realized(const struct er_driver_env *env,
                        const struct er_driver_lease *lease,
                        const struct er_driver_workspace *ws,
                        const char *remote_path, const char *cwd,
                        const char *prepare, const char *summary,
                        struct er_driver_realized *out, struct er_err *err);

/* The plugin provider (sandbox_plugin.c): the driver operations for a
 * config of kind ER_SANDBOX_PLUGIN, through er_plugin_call. Same contracts
 * as struct er_driver_ops. */
int er_sandbox_plugin_acquire(const struct er_driver_env *env,
                              const struct er_sandbox_config *cfg,
                              const struct er_driver_lease_ctx *ctx,
                              struct er_driver_acquired *out,
                              struct er_err *err);
int er_sandbox_plugin_realize(const struct er_driver_env *env,
                              const struct er_driver_lease *lease,
                              const struct er_driver_workspace *ws,
                              struct er_driver_realized *out,
                              struct er_err *err);
int er_sandbox_plugin_release(const struct er_driver_env *env,
                              const struct er_driver_lease *lease,
                              const char *status,
                              struct er_driver_released *out,
                              struct er_err *err);
int er_sandbox_plugin_execute(const struct er_driver_env *env,
                              const struct er_driver_lease *lease,
                              const struct er_driver_exec *req,
                              struct er_driver_exec_result *out,
                              struct er_err *err);

/* The workspace upload of domain.md 4.3 as one POSIX sh script run in the
 * sandbox: make and enter cwd, empty it but .paperclip-runtime, unpack a
 * tar archive read from archive ("-": stdin) with no owners or modes kept,
 * then remove archive unless it is "-". Appended to script. Returns 0,
 * ER_E2BIG, ER_ENOMEM. */
int er_sandbox_unpack_script(const char *cwd, const char *archive,
                             struct er_buf *script);

/* The argv that archives the host directory local for that upload (tar to
 * stdout, without ._* files and .paperclip-runtime); NULL-terminated,
 * argv must hold 12. */
void er_sandbox_tar_argv(const char *local, const char *argv[12]);

#endif
