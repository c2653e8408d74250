/* lifecycle_step: what the lifecycle's files share. lifecycle.c holds the
 * step (phases, journal, writers, dead letters, the public calls);
 * lifecycle_acquire.c, lifecycle_realize.c and lifecycle_release.c hold the
 * three commands (domain.md 3.1-3.5) and the reaper. Private to
 * worker/lifecycle*.c; not thread-safe, like struct er_lifecycle. */
#ifndef ER_WORKER_LIFECYCLE_STEP_INT_H
#define ER_WORKER_LIFECYCLE_STEP_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"
#include "drivers/driver.h"
#include "schemas/schemas.h"
#include "worker/lifecycle_int.h"
#include "worker/store_int.h"

#define ER_LIFECYCLE_TOPIC_MAX 256

/* A remote acquisition to release once the step's outcome committed (see
 * undo_acquire); lease_id NULL when none. Arena strings. */
struct er_undo {
    const char *command_id;
    const char *company_id;
    const char *lease_id;
    const char *environment_id;
    const char *detail_json; /* {driver, metadata} */
};

struct er_lifecycle {
    struct er_store *store;
    struct er_undo undo; /* set by the step, run after its commit */
    /* A lease whose bridge the step's failed realize started: stopped after
     * the commit, never with the transaction open (arena; NULL: none). */
    const char *bridge_drop;
    /* The step's driver works (er_store_effect_hold on this partition). */
    bool is_effect_held;
    int32_t effect_partition;
    struct er_arena arena; /* reset per command */
    struct er_buf enc;     /* scratch for one encoded value */
    struct er_buf plain;   /* a Confluent-framed command, single-object */
    /* {"traceparent": "<the command's>"}: the Kafka headers of what the
     * step publishes; "" when the command has none. */
    char trace_headers[32 + ER_LOG_TRACE_MAX];
    char topic_commands[ER_LIFECYCLE_TOPIC_MAX]; /* the fence's topic */
    char topic_results[ER_LIFECYCLE_TOPIC_MAX];
    char topic_lease_events[ER_LIFECYCLE_TOPIC_MAX];
    char topic_activity[ER_LIFECYCLE_TOPIC_MAX];
    char topic_dlq[ER_LIFECYCLE_TOPIC_MAX];
    er_lifecycle_expiry_fn *expiry_fn; /* may be NULL */
    void *expiry_arg;
    /* When the step's current phase began (er_metrics_now_us); 0 outside
     * er_lifecycle_step, so the reaper's passes are not timed as steps. */
    int64_t phase_at_us;
};

/* The state of one step: the command, its result, the result's key. */
struct er_step {
    struct er_lifecycle *lc;
    const struct er_msg_coords *coords;
    const struct er_run_command *cmd;
    const uint8_t *key; /* result key: the command's key, else its id */
    size_t key_len;
    struct er_command_result res;
    json_t *result; /* owned: becomes resultJson */
    /* acquire: the metadata of the leases it may resume (owned) */
    json_t *reusable_meta;
    /* realize: the bridge's environment for the agent (owned; NULL: no
     * bridge), set into the result after its redaction, and its token,
     * masked in the stored and queued copies of the result ("" when
     * none; see token_relay_int.h). */
    json_t *bridge_env;
    char bridge_token[40];
};

/* Who an activity row is attributed to (domain.md 3.8). */
struct er_actor {
    const char *company_id;
    const char *type; /* agent or system */
    const char *id;
    const char *agent_id; /* may be NULL */
    const char *run_id;   /* may be NULL */
};

/* ---- JSON (lifecycle.c) ---- */

/* A JSON string, or null for NULL. */
json_t *er_lifecycle__jstr(const char *s);
/* Parse a column's JSON text; NULL text or bad JSON give JSON null. */
json_t *er_lifecycle__jparse(const char *text);
/* Compact JSON text of v in arena; NULL when out of memory. */
char *er_lifecycle__jdump(struct er_arena *arena, const json_t *v);
/* The non-blank string at key of obj, else NULL (borrowed). */
const char *er_lifecycle__jget_str(const json_t *obj, const char *key);
/* The lease and environment objects of results (secrets redacted). */
json_t *er_lifecycle__lease_to_json(const struct er_lease_row *l);
json_t *er_lifecycle__env_to_json(const struct er_env_row *e);
/* The driver's views of an environment row and its parsed config, and of
 * a lease row and its parsed metadata (all borrowed). */
struct er_driver_env er_lifecycle__driver_env(const struct er_env_row *e,
                                              const json_t *config);
struct er_driver_lease er_lifecycle__driver_lease(const struct er_lease_row *l,
                                                  const json_t *meta);

/* ---- writers and results (lifecycle.c) ---- */

/* ER_ENOMEM, class RETRY. */
int er_lifecycle__oom(struct er_err *err);
/* Queue a LeaseEvent for the row as it now is, with the next version. */
int er_lifecycle__lease_event(struct er_lifecycle *lc,
                              const struct er_lease_row *l, struct er_err *err);
/* The command's agent as the actor of the step's activity rows. */
struct er_actor er_lifecycle__step_actor(const struct er_step *st);
/* Write an activity_log row (details redacted, consumed) and queue its
 * ActivityEvent; a row the database refuses is logged and skipped. */
int er_lifecycle__activity(struct er_lifecycle *lc, const struct er_actor *who,
                           const char *action, const struct er_lease_row *l,
                           json_t *details, struct er_err *err);
/* Make the step's result a domain failure with a formatted message. */
void er_lifecycle__fail(struct er_step *st, enum er_outcome outcome,
                        enum er_error_code code, const char *fmt, ...)
    ER_PRINTF(4, 5);
/* The result names the environment and its driver. */
void er_lifecycle__set_env(struct er_step *st, const struct er_env_row *env);

/* ---- phases (lifecycle.c; DESIGN.md: intent, effect, outcome) ---- */

/* Phase 1: record that the step is about to run kind on lease_id. */
int er_lifecycle__journal(struct er_step *st, const char *kind,
                          const char *lease_id, const char *environment_id,
                          struct er_err *err);
/* End of phase 1: commit, so the driver works with no transaction open. */
int er_lifecycle__intent_commit(struct er_step *st, struct er_err *err);
/* Phase 3: a new transaction under the fence; ER_ECANCELED when the step
 * was cancelled during its effect. */
int er_lifecycle__outcome_begin(struct er_step *st, struct er_err *err);

/* ---- the commands ---- */

/* acquire (domain.md 3.1-3.3), realize (3.4), release (3.3.2, 3.5): fill
 * the step's result inside the open transaction (which a remote step
 * commits and reopens around its effect). Domain failures are results;
 * the return is 0 or a machinery failure with err set. */
int er_lifecycle__acquire(struct er_step *st, struct er_err *err);
int er_lifecycle__realize(struct er_step *st, struct er_err *err);
int er_lifecycle__release(struct er_step *st, struct er_err *err);
/* Release what an acquire made but could not record, after the step's
 * outcome committed (lifecycle_release.c; fault point undo.before). A
 * failure leaves the entry rolling_back for the reaper. */
void er_lifecycle__undo_finish(struct er_lifecycle *lc,
                               const struct er_undo *u);
/* The journal detail an acquisition the driver never described gets, from
 * env's row alone: {driver, metadata: {driver, workspaceIsolation}}
 * (arena text; NULL when out of memory). */
const char *er_lifecycle__unrecorded_detail(struct er_lifecycle *lc,
                                            const struct er_env_row *env);

#endif
