/* drivers: the environment driver vtable of domain.md 4 and the drivers
 * built so far (local). Drivers know nothing of Kafka or Postgres: they get
 * the environment and lease as plain structs and return what the store
 * should write. Thread-safe: drivers keep no mutable global state. JSON
 * values are jansson objects; ownership is stated per field. */
#ifndef ER_DRIVERS_DRIVER_H
#define ER_DRIVERS_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
};

/* A driver. Optional operations are NULL; the runtime then answers with
 * the "does not support ..." messages of domain.md 4. On failure an
 * operation returns a negative ER_E* code and puts the cause (one sentence,
 * no secrets) in err->msg; the lifecycle wraps it in the spec's message. */
struct er_driver_ops {
    const char *name;
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
};

/* Process-wide driver settings, set once at start-up before any driver
 * runs: the directory of `file:`/secret_ref secrets (contract.md 6; may be
 * NULL or ""). */
void er_driver_setup(const char *secrets_dir);
/* The directory given to er_driver_setup, or "" (borrowed). */
const char *er_driver_secrets_dir(void);

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

/* The local driver (local.c). */
extern const struct er_driver_ops er_local_driver;

#endif
