/* drivers: the environment driver vtable of domain.md 4 and the drivers
 * built so far (local). Drivers know nothing of Kafka or Postgres: they get
 * the environment and lease as plain structs and return what the store
 * should write. Thread-safe: drivers keep no mutable global state. JSON
 * values are jansson objects; ownership is stated per field. */
#ifndef ER_DRIVERS_DRIVER_H
#define ER_DRIVERS_DRIVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "common/common.h"

/* An environments row as a driver sees it (borrowed from the caller). */
struct er_driver_env {
    const char *id;
    const char *company_id;
    const char *name;
    const char *driver;
    const char *status;
    const json_t *config; /* never NULL */
};

struct er_driver_lease;

/* Who asks for the lease (domain.md 3.3). */
struct er_driver_lease_ctx {
    /* The id the lease row will get. It is derived from the command id, so
     * a replayed acquire (after a crash between the driver's side effect
     * and the commit) names the same lease and the driver can adopt what
     * the first attempt made (a per-lease remote directory, say). */
    const char *lease_id;
    const char *company_id;
    const char *agent_id;
    const char *heartbeat_run_id; /* NULL for an ad-hoc probe */
    const char *issue_id;
    const char *execution_workspace_id;
    const char *execution_workspace_mode;
    const char *adapter_type; /* the run's adapter, may be NULL */
    /* The acquire's requestedExpiresAt (ms since the epoch; 0: none): the
     * latest time the lease may stay active. A driver passes it on where
     * its provider can bound a lease's life; the lifecycle caps the
     * lease's expires_at at it whatever the driver returns, and the reaper
     * releases the lease then. */
    int64_t requested_expires_at_ms;
    /* Leases whose machine is parked for reuse on this environment
     * (domain.md 3.3.3), newest first; the caller fills them only for a
     * sandbox environment with reuseLease and a run id. Borrowed. */
    const struct er_driver_lease *reusable;
    size_t reusable_cnt;
};

/* What an acquire decided; the caller inserts the row. */
struct er_driver_acquired {
    const char *lease_policy; /* static string */
    const char *provider;     /* static string or owned by the driver */
    char *provider_lease_id;  /* owned (er_free), may be NULL */
    json_t *metadata;         /* owned (json_decref) */
    int64_t expires_at_ms;    /* -1: no expiry */
};

/* An environment_leases row as a driver sees it (borrowed). */
struct er_driver_lease {
    const char *id;
    const char *status;
    const char *lease_policy;
    const char *provider;
    const char *provider_lease_id;
    const char *heartbeat_run_id;
    const json_t *metadata; /* never NULL */
};

/* The workspace handed to realize (domain.md 3.4 step 2). */
struct er_driver_workspace {
    const char *local_path;  /* host cwd, may be NULL */
    const char *remote_path; /* lease metadata remoteCwd, may be NULL */
    const char *mode;        /* requested mode, may be NULL */
    const json_t *request;   /* workspaceRealizationRequest (2.6) */
};

/* What realize produced. */
struct er_driver_realized {
    char *cwd;      /* owned (er_free) */
    json_t *record; /* owned: the workspaceRealization record (2.6) */
};

/* Descriptors a command reads and writes instead (borrowed). */
struct er_driver_stdio {
    int in_fd;  /* its stdin */
    int out_fd; /* its stdout */
};

/* One command to run in the environment (domain.md 4, execute). */
struct er_driver_exec {
    const char *command;     /* program, e.g. "bash" */
    const char *const *args; /* NULL-terminated, may be NULL */
    const char *cwd;         /* remote working directory, or NULL */
    const char *const *env;  /* "K=v" NULL-terminated, may be NULL */
    const char *stdin_data;  /* may be NULL */
    size_t stdin_len;
    int64_t timeout_ms;      /* > 0; SIGTERM, then SIGKILL 5 s later */
    size_t max_output_bytes; /* cap per stream; 0: 128 KiB */
    /* Processes the command leaves running in the background outlive it
     * (the bridge's gateway): a driver that ends a command's whole process
     * tree with it (bwrap) does not for this one. Its output must not be
     * held open by them (redirect it). */
    bool is_detached;
    /* The command is the worker's own (the bridge's list and write of its
     * queue, its gateway's start): run the cheapest way the driver can, with
     * no login shell (ssh) and no PID namespace or session of its own
     * (bwrap, unless is_detached), since it starts nothing that must die
     * with it. */
    bool is_worker_tool;
    /* NULL, or the command's stdin and stdout are these descriptors (no
     * stdin_data, no stdout capture) and the call returns when it ends:
     * one exec held open for as long as a stream over it lasts (the
     * bridge's stream_v1). ER_EINVAL from a driver that cannot (plugins). */
    const struct er_driver_stdio *stdio;
};

/* Its outcome. A non-zero exit is a result, not an error. */
struct er_driver_exec_result {
    int exit_code;   /* -1 when there is none (killed, timed out) */
    char signal[16]; /* "SIGTERM" ..., "" when none */
    bool is_timed_out;
    char *out; /* owned (er_free), NUL-terminated, capped */
    size_t out_len;
    char *err_text; /* stderr, owned, NUL-terminated, capped */
    size_t err_len;
};

/* What release decided for the row. */
struct er_driver_released {
    const char *status;         /* the final lease status, static */
    const char *cleanup_status; /* NULL: leave the column as it is */
    const char *failure_reason; /* NULL: leave the column as it is */
    /* Set by the caller: a failed cleanup will be tried again (the lease
     * goes pending_cleanup), so keep what the next try needs, such as the
     * workspace its cleanup command runs in. */
    bool is_retried;
};

/* Whether a lease still needs what a driver keeps on this host for it.
 * lease_tag is the first 16 hex digits of the lease id without dashes
 * (the name of the ssh driver's control directory). The lifecycle answers
 * from the database: an active lease, or an operation on it in flight. */
typedef bool er_driver_in_use_fn(const char *lease_tag, void *arg);

#define ER_DRIVER_LEASE_TAG_LEN 16

/* The lease tag of lease_id (see er_driver_in_use_fn), lower case, into
 * tag. false (tag "") when lease_id is not a UUID. */
bool er_driver_lease_tag(const char *lease_id,
                         char tag[ER_DRIVER_LEASE_TAG_LEN + 1]);

/* A driver. Optional operations are NULL; the runtime then answers with
 * the "does not support ..." messages of domain.md 4. On failure an
 * operation returns a negative ER_E* code and puts the cause (one sentence,
 * no secrets) in err->msg; the lifecycle wraps it in the spec's message. */
struct er_driver_ops {
    const char *name;
    /* The driver's operations act outside this host's database (a remote
     * host, a sandbox): the lifecycle journals them and runs them with no
     * transaction open. false for local, whose operations only compute. */
    bool is_remote;
    int (*acquire)(const struct er_driver_env *env,
                   const struct er_driver_lease_ctx *ctx,
                   struct er_driver_acquired *out, struct er_err *err);
    int (*realize)(const struct er_driver_env *env,
                   const struct er_driver_lease *lease,
                   const struct er_driver_workspace *workspace,
                   struct er_driver_realized *out, struct er_err *err);
    int (*release)(const struct er_driver_env *env,
                   const struct er_driver_lease *lease, const char *status,
                   struct er_driver_released *out, struct er_err *err);
    /* Optional: run a command (the provision command, 3.4 step 3). */
    int (*execute)(const struct er_driver_env *env,
                   const struct er_driver_lease *lease,
                   const struct er_driver_exec *req,
                   struct er_driver_exec_result *out, struct er_err *err);
    /* The execution target of domain.md 3.6 for a lease (lease may be NULL
     * at acquire, where the transport spec is wanted: 3.2 step 4). Returns
     * a new object, JSON null when the driver has none, or NULL with err
     * set. Never carries a private key or any secret value. */
    json_t *(*target)(const struct er_driver_env *env,
                      const struct er_driver_lease *lease,
                      const char *adapter_type, struct er_err *err);
    /* Optional: remove what a crash can leave on this host (connection
     * sockets, key files) for leases is_in_use says are done with. */
    void (*sweep)(er_driver_in_use_fn *is_in_use, void *arg);
};

/* Run every driver's sweep (start-up, assignments, reaper passes). */
void er_driver_sweep_all(er_driver_in_use_fn *is_in_use, void *arg);

/* Process-wide driver settings, set once at start-up before any driver
 * runs: the directory of `file:`/secret_ref secrets (contract.md 6; may be
 * NULL or ""). */
void er_driver_setup(const char *secrets_dir);
/* The directory given to er_driver_setup, or "" (borrowed). */
const char *er_driver_secrets_dir(void);
/* ENVRUN_WORKSPACE_ROOTS: the colon-separated roots local workspace paths
 * must lie under (see er_wspath_check); "" accepts none. Set once at
 * start-up. */
void er_driver_set_workspace_roots(const char *roots);
const char *er_driver_workspace_roots(void);
/* The id of the envrun installation (database) this process works for,
 * set once at start-up after the migrations (NULL or "": none). Drivers
 * mark what they keep on the host with it, and sweep only what carries
 * it: another database's workers may share the host. */
void er_driver_set_installation(const char *id);
/* The id given to er_driver_set_installation, or "" (borrowed). */
const char *er_driver_installation(void);

/* The driver registered under name ("local"), or NULL when that driver is
 * not built (yet). Borrowed, valid for the process lifetime. */
const struct er_driver_ops *er_driver_find(const char *name);

/* Free what an acquire or realize result owns; the structs may be zeroed
 * or partly filled. */
void er_driver_acquired_fini(struct er_driver_acquired *acq);
void er_driver_realized_fini(struct er_driver_realized *res);
void er_driver_exec_result_fini(struct er_driver_exec_result *res);

/* Build the workspaceRealization record every built-in driver returns
 * (domain.md 2.6). remote_path and host may be NULL; sync_strategy,
 * sync_prepare and sync_back are the record's sync fields; summary is the
 * human sentence. Returns a new object (caller owns) or NULL on OOM. */
json_t *er_driver_realization_record(
    const struct er_driver_env *env, const struct er_driver_lease *lease,
    const struct er_driver_workspace *ws, const char *remote_path,
    const char *sync_strategy, const char *sync_prepare, const char *sync_back,
    const char *summary);

/* Connection facts a remote driver adds to the record's `remote` object
 * (domain.md 2.6: host, port, username). NULL members are left out. */
struct er_driver_remote {
    const char *host;
    int port; /* 0: left out */
    const char *username;
};

/* er_driver_realization_record with the facts of remote (may be NULL, which
 * gives exactly er_driver_realization_record's record) in `remote`. */
json_t *er_driver_realization_record_remote(
    const struct er_driver_env *env, const struct er_driver_lease *lease,
    const struct er_driver_workspace *ws, const char *remote_path,
    const struct er_driver_remote *remote, const char *sync_strategy,
    const char *sync_prepare, const char *sync_back, const char *summary);

/* The local driver (local.c). */
extern const struct er_driver_ops er_local_driver;

/* Whether adapter_type runs its agent in a remote environment (the
 * remote-capable adapters of domain.md 3.6); NULL: false. */
bool er_driver_is_remote_adapter(const char *adapter_type);

/* The sandbox driver (sandbox.c, domain.md 4.3): providers fake, bwrap
 * (sandbox_bwrap.c) and any other key served by a provider plugin
 * (plugin_host.c). */
extern const struct er_driver_ops er_sandbox_driver;

/* Sandbox settings, once at start-up: the directory bwrap sandboxes live
 * in (ENVRUN_SANDBOX_DIR; NULL or "": /var/lib/envrun/sandboxes) and the
 * provider plugins (ENVRUN_PLUGINS_DIR; NULL or "": none), whose manifests
 * are read and checked here. Returns 0, or ER_EINVAL naming the first bad
 * plugin (a configuration error). */
int er_sandbox_setup(const char *sandbox_dir, const char *plugins_dir,
                     struct er_err *err);
/* Stop the provider plugins' worker processes (at shutdown). */
void er_sandbox_shutdown(void);

/* ================================================================
 * proc (proc.c): run a program as a child process without a shell:
 * argv, pipes for stdin/stdout/stderr, a poll loop with a deadline and
 * capped capture. Used by the ssh driver (the `ssh`, `git` and `tar`
 * clients) and meant for the sandbox driver. Thread-safe: no global
 * state; SIGPIPE is blocked in the calling thread while a call runs.
 * ================================================================ */

#define ER_PROC_DEFAULT_MAX_OUTPUT (128u * 1024u) /* bytes per stream */
#define ER_PROC_DEFAULT_GRACE_MS   5000           /* SIGTERM -> SIGKILL */
/* The PATH of every child's environment (never the worker's). */
#define ER_PROC_PATH               "/usr/local/bin:/usr/bin:/bin"

/* Called once when the deadline passes, before SIGTERM goes to the child,
 * with the stderr captured so far (NUL-terminated, may be empty). The ssh
 * driver kills the remote process group here. */
typedef void er_proc_timeout_fn(void *arg, const char *err_text,
                                size_t err_len);

/* Where a child goes before its exec (er_proc_opts.enter): into every
 * namespace (user, mount, UTS, IPC, network, cgroup, PID) of the process
 * pidfd refers to (a bwrap sandbox's init), with one setns(2) that fails
 * if it has ended, so a reused pid is never entered; into the mount
 * namespace's root; as uid and gid 0 there, with the limits below, no
 * capabilities (bounding, inheritable and ambient sets emptied),
 * no_new_privs, and SIGKILL when its parent ends. What `prlimit ...
 * nsenter -t <pid> --user ... --root -S 0 -G 0 -- setpriv --pdeathsig
 * KILL --no-new-privs --bounding-set=-all --inh-caps=-all
 * --ambient-caps=-all --` does, without starting those programs. The PID
 * namespace takes effect in a child of the child, which the child waits
 * for and whose status it passes on. argv[0] must then be an absolute
 * path (the same file inside as outside), and cwd a path inside. */
struct er_proc_enter {
    int pidfd;            /* borrowed */
    int64_t memory_bytes; /* > 0: RLIMIT_AS, soft and hard */
    int64_t processes;    /* > 0: RLIMIT_NPROC */
    int64_t cpu_seconds;  /* > 0: RLIMIT_CPU */
};

struct er_proc_opts {
    /* argv[0] is a path, or a name looked up in the worker's PATH (the
     * operator's choice of programs; the child's own PATH is envp's). */
    const char *const *argv;
    /* The child's whole environment, "K=v" NULL-terminated (borrowed).
     * NULL: a minimal one, PATH=ER_PROC_PATH and LANG=C.UTF-8, and no
     * HOME. Never the worker's own environment, which holds
     * ENVRUN_DATABASE_URL and secret variables (STYLE.md 7a); a caller
     * whose program needs more builds the list for it. */
    const char *const *envp;
    const char *cwd; /* NULL: the worker's */
    /* Written to the child's stdin, which is then closed; with NULL the
     * child reads stdin_fd, or /dev/null when that is -1. */
    const char *stdin_data;
    size_t stdin_len;
    int stdin_fd;       /* >= 0: the child's stdin (borrowed, not closed) */
    int stdout_fd;      /* >= 0: the child's stdout instead of a capture */
    int stderr_fd;      /* >= 0: the child's stderr instead of a capture */
    int64_t timeout_ms; /* <= 0: no deadline */
    int64_t grace_ms;   /* SIGTERM -> SIGKILL; <= 0: 5000 */
    size_t max_output_bytes;        /* cap per captured stream; 0: 128 KiB */
    er_proc_timeout_fn *on_timeout; /* optional */
    void *on_timeout_arg;
    const struct er_proc_enter *enter; /* NULL: run where the worker runs */
};

/* How a child ended and what it wrote. A non-zero exit is a result. */
struct er_proc_result {
    int exit_code; /* -1 when killed by a signal */
    int signal;    /* the terminating signal, 0 when none */
    bool is_timed_out;
    char *out; /* owned (er_free), NUL-terminated, capped; NULL if not
                * captured */
    size_t out_len;
    bool is_out_truncated;
    char *err_text; /* stderr, like out */
    size_t err_len;
    bool is_err_truncated;
};

/* Zero opts and set the three fds to -1 (no redirection). */
void er_proc_opts_init(struct er_proc_opts *opts);

/* Run opts->argv to completion. The child gets its own process group, an
 * empty signal mask, default signal actions and no descriptors but 0-2;
 * at the deadline on_timeout runs, the group gets SIGTERM and, grace_ms
 * later, SIGKILL. The call returns once the child has been reaped (no
 * zombie), even if grandchildren still hold its pipes. Returns 0 with res
 * filled (free with er_proc_result_fini), or ER_EIO when the program
 * cannot be started (not found, bad cwd; err says which) or when its exit
 * status cannot be known (waitpid failed, as it does with ECHILD when the
 * process ignores SIGCHLD: an exit status is never invented), ER_ENOMEM.
 * On an error res holds nothing (exit_code -1). */
int er_proc_run(const struct er_proc_opts *opts, struct er_proc_result *res,
                struct er_err *err);

/* Start opts->argv without waiting: stdin, stdout and stderr come from
 * the opts' fds or /dev/null (stdin_data, timeout_ms and the caps are
 * ignored). Reap the child with er_proc_wait. Errors as er_proc_run. */
int er_proc_spawn(const struct er_proc_opts *opts, pid_t *pid,
                  struct er_err *err);

/* Wait for a child of er_proc_spawn; after timeout_ms (<= 0: none) its
 * group gets SIGKILL. Fills the exit fields of res (out stays NULL) and
 * returns 0, or ER_EIO when waitpid fails (the status is lost, e.g. with
 * SIGCHLD ignored; res then has exit_code -1, never an invented 0). */
int er_proc_wait(pid_t pid, int64_t timeout_ms, struct er_proc_result *res,
                 struct er_err *err);

/* Free what res owns (out, err_text); res may be zeroed or partly filled. */
void er_proc_result_fini(struct er_proc_result *res);
/* A pidfd for pid (close-on-exec), or -1 with errno set. */
int er_proc_pidfd_open(pid_t pid);

/* Cancellation for the calling thread. While *flag (borrowed; NULL: none)
 * is true, er_proc_run and er_proc_wait on this thread end their child as
 * a deadline does (on_timeout, SIGTERM, SIGKILL after the grace) and
 * report is_timed_out. The dispatcher sets it around each step, so a
 * rebalance or a drain can stop a long remote command. */
void er_proc_set_cancel(const atomic_bool *flag);
/* Whether the calling thread's cancellation flag is set. */
bool er_proc_is_cancelled(void);

/* "SIGTERM" for SIGTERM and so on, "SIG<n>" for others, "" for 0. */
void er_proc_signal_name(int sig, char *buf, size_t buf_len);

/* ================================================================
 * secretref (secretref.c): secret references of contract.md 6, scoped to
 * the company whose environment names them. A reference is
 * {"type":"secret_ref","secretId":"<id>"} (an optional "version" is
 * accepted and ignored) or the string "file:<id>", both read from the file
 * <er_driver_secrets_dir()>/<companyId>/<id> and from nowhere else; or
 * "env:NAME", the value of the worker's environment variable NAME, which
 * must start with ENVRUN_SECRET_ (so ENVRUN_DATABASE_URL, HOME and the
 * rest of the worker's own environment never resolve; these variables are
 * shared by every company). Ids and company ids must not contain '/' nor
 * start with '.'. ENVRUN_SECRETS_DIR (its last component), the company's
 * directory and the file are each opened with O_NOFOLLOW | O_NONBLOCK: a
 * symlink at any of them is refused (even one pointing inside the same
 * directory, as Kubernetes secret volumes have), and so is anything but a
 * regular file (FIFO, device, directory), without blocking.
 * Error messages name the field, the id or variable, the company and the
 * rule broken, never any part of the value. Thread-safe (reads only).
 * ================================================================ */

#define ER_SECRETREF_MAX_BYTES (64u * 1024u) /* largest secret accepted */

/* Check the shape of ref (a JSON object or string) without reading the
 * secret, including the ENVRUN_SECRET_ prefix of env: references. field
 * names it in messages ("privateKeySecretRef"). Returns 0 or ER_EINVAL
 * (ER_ENOMEM when out of memory). */
int er_secretref_check(const json_t *ref, const char *field,
                       struct er_err *err);

/* Resolve ref into secret (caller's storage, replaced; wipe it with
 * er_secret_fini as soon as it is used) for company_id (borrowed; the
 * company of the environment that holds ref, required: NULL, "", or a
 * company id that is not one safe path component is refused). The value
 * is the raw bytes of the file or variable, not trimmed. Returns 0,
 * ER_EINVAL (bad reference or company id, a variable outside
 * ENVRUN_SECRET_, a symlink, a non-regular file, an empty or oversized
 * value), ER_ENOTFOUND (ENVRUN_SECRETS_DIR unset, no such company
 * directory, file or variable), ER_EIO or ER_ENOMEM. secret is untouched
 * on failure. */
int er_secretref_resolve(const json_t *ref, const char *company_id,
                         const char *field, struct er_secret *secret,
                         struct er_err *err);

/* ================================================================
 * wspath (wspath.c): local workspace paths (workspaceJson.cwd) are
 * untrusted, so before use they are resolved with realpath(3) and checked
 * against the roots of ENVRUN_WORKSPACE_ROOTS (a colon-separated list of
 * absolute directories). "Under" a root means the root itself or a
 * descendant at a '/' boundary (root /w does not hold /work); "/" is a
 * root only when listed. Messages show at most 160 bytes of a path, with
 * control bytes as '?'. Thread-safe (reads the filesystem only). The
 * check is of the moment: use the resolved path it returns, and remember
 * that whoever can write inside a root can change what it points to later.
 * ================================================================ */

/* Resolve the local workspace path (absolute, an existing directory) with
 * its symlinks and check it lies under one of roots (a colon-separated
 * list of absolute directories, each resolved the same way; empty entries,
 * and entries that are relative or do not resolve, are ignored). On
 * success resolved (resolved_len bytes, at least PATH_MAX) holds the real
 * path; on failure it holds "". Returns 0, or ER_EINVAL with err naming
 * the rule: missing or relative path, control bytes, too long, not a
 * directory, no roots configured ("ENVRUN_WORKSPACE_ROOTS is not set"), or
 * outside every root ("... is not under ENVRUN_WORKSPACE_ROOTS");
 * ER_ENOTFOUND when it does not exist (only said of a path whose deepest
 * existing ancestor is under a root, so the answer never tells whether a
 * path elsewhere exists); ER_ENOMEM. */
int er_wspath_check(const char *path, const char *roots, char *resolved,
                    size_t resolved_len, struct er_err *err);

/* Check the shape of a roots list for config validation: every non-empty
 * entry is an absolute path without control bytes that resolves to an
 * existing directory. NULL, "" or only ':' pass (er_wspath_check then
 * refuses every path). Returns 0 or ER_EINVAL naming the bad entry. */
int er_wspath_roots_check(const char *roots, struct er_err *err);

/* A resolved workspace path (from er_wspath_check) must not be, hold or lie
 * in the secrets directory dir (resolved here; NULL, "" or one that does
 * not resolve: nothing to keep apart). 0, or ER_EINVAL naming
 * ENVRUN_SECRETS_DIR. */
int er_wspath_check_apart(const char *real_path, const char *dir,
                          struct er_err *err);

/* ================================================================
 * ssh (ssh.c): the ssh driver of domain.md 4.2 over the OpenSSH client,
 * with one multiplexed connection per lease. The functions below are the
 * driver's pure parts, public so unit tests can reach them.
 * ================================================================ */

extern const struct er_driver_ops er_ssh_driver;

#define ER_SSH_NAME_MAX        255  /* longest host or username */
#define ER_SSH_PATH_MAX        4096 /* longest remoteWorkspacePath */
#define ER_SSH_CONTROL_DIR_MAX 64   /* /tmp/envrun-ssh-<uid>/<16 hex> */

/* A validated SSH environment config (domain.md 4.2, plus the envrun keys
 * workspaceIsolation and connectTimeoutS). Borrowed pointers live as long
 * as the config object they came from. */
struct er_ssh_config {
    char host[ER_SSH_NAME_MAX + 1];     /* trimmed */
    int port;                           /* 1..65535, default 22 */
    char username[ER_SSH_NAME_MAX + 1]; /* trimmed */
    /* Absolute, without a trailing slash (but "/" itself). */
    char remote_workspace_path[ER_SSH_PATH_MAX];
    const json_t *private_key_ref;    /* borrowed; NULL: ssh's defaults */
    const char *known_hosts;          /* borrowed; NULL when absent or blank */
    bool is_strict_host_key_checking; /* default true */
    bool is_per_lease; /* workspaceIsolation "per_lease" (default "shared") */
    int connect_timeout_s; /* connectTimeoutS, 1..300, default 10 */
};

/* Validate config into cfg. On failure err->msg is the first problem, as
 * a sentence (`SSH environments require a host.`, `SSH environment config
 * has an unknown key: <k>` ...). Returns 0 or ER_EINVAL. */
int er_ssh_config_parse(const json_t *config, struct er_ssh_config *cfg,
                        struct er_err *err);

/* Check "K=v" entries (env may be NULL): each must have a '=' and every K
 * must match ^[A-Za-z_][A-Za-z0-9_]*$, else ER_EINVAL with `Invalid SSH
 * environment variable key: <k>` (the value is never shown). */
int er_ssh_env_check(const char *const *env, struct er_err *err);

/* The control directory of a lease: /tmp/envrun-ssh-<euid>/<the first 16
 * hex digits of a UUID lease id, or a 64-bit hash of any other id>. Written
 * to out (ER_SSH_CONTROL_DIR_MAX bytes); nothing is created. */
void er_ssh_control_dir(const char *lease_id, char out[ER_SSH_CONTROL_DIR_MAX]);

/* Which ssh invocation er_ssh_argv_build makes. */
enum er_ssh_argv_kind {
    ER_SSH_ARGV_SETUP, /* start the master connection: needs key_path when
                        * the config has a private key */
    ER_SSH_ARGV_RUN,   /* run remote_cmd through the master */
    ER_SSH_ARGV_CHECK, /* ssh -O check */
    ER_SSH_ARGV_EXIT,  /* ssh -O exit */
};

/* An ssh argv and the storage of its option strings. */
struct er_ssh_argv {
    const char *argv[64]; /* NULL-terminated */
    size_t argc;
    char connect_timeout[32];
    char known_hosts[ER_SSH_CONTROL_DIR_MAX + 48];
    char control_path[ER_SSH_CONTROL_DIR_MAX + 32];
    char port[8];
};

/* Build the ssh argv: -F none (no ssh config file of the worker's is read:
 * no ProxyCommand, LocalCommand, Match exec or Include of its own),
 * ProxyCommand=none, PermitLocalCommand=no, ForwardAgent=no, BatchMode,
 * ConnectTimeout, host key options, one ControlMaster=auto connection
 * under ctl_dir with ControlPersist, then -p, -l, the host and remote_cmd
 * (RUN and SETUP; may be NULL otherwise). cfg, ctl_dir, key_path and
 * remote_cmd are borrowed by argv. */
void er_ssh_argv_build(const struct er_ssh_config *cfg, const char *ctl_dir,
                       enum er_ssh_argv_kind kind, const char *key_path,
                       const char *remote_cmd, struct er_ssh_argv *argv);

/* The file that marks a remote directory as envrun's. Its first line
 * names the owner: "lease:<lease id>" for a per_lease directory,
 * "environment:<environment id>" for a shared one. envrun empties or
 * removes a remote directory only when it carries its owner's mark, and
 * never "/" or the SSH user's home directory (STYLE.md 7a). */
#define ER_SSH_DIR_MARKER ".envrun-workspace"

/* The remote scripts that make, check and remove a marked directory. */
enum er_ssh_dir_op {
    /* Acquire: mkdir -p dir; mark it when it is empty (new, or found
     * empty); print its path (pwd) last. A non-empty unmarked directory is
     * left unmarked (realize then refuses it). */
    ER_SSH_DIR_ACQUIRE,
    /* Before a sync empties dir: create it when missing, mark it when
     * empty, then print "envrun-guard:<verdict>" last: ok (owner's mark),
     * root, home, foreign (a mark naming someone else), unmarked (not
     * empty, no mark), unreadable or missing. Exits 0. */
    ER_SSH_DIR_CLAIM,
    /* Release: rm -rf dir only when it carries owner's mark (exit 0, also
     * when dir is missing); else print "envrun-guard:<verdict>" and exit
     * 97 with nothing deleted. */
    ER_SSH_DIR_REMOVE,
};

/* Append the POSIX sh script of op on dir (absolute) for owner to script.
 * dir and owner are quoted; the script reads $HOME (the SSH user's home)
 * to refuse it. Returns 0, ER_E2BIG or ER_ENOMEM. */
int er_ssh_dir_script(enum er_ssh_dir_op op, const char *dir, const char *owner,
                      struct er_buf *script);

/* The remote script of execute: print `<marker><pgid>` on stderr first (so
 * a timeout can kill the remote process group), source the login profiles
 * if present (errors ignored), cd to cwd (may be NULL), then `exec env
 * K='v' ... '<command>' '<args>' ...`. Appended to script. Returns 0, or
 * ER_EINVAL (bad env key or command, message as er_ssh_env_check),
 * ER_E2BIG, ER_ENOMEM. */
int er_ssh_exec_script(const struct er_driver_exec *req, const char *cwd,
                       const char *marker, struct er_buf *script,
                       struct er_err *err);

#endif
