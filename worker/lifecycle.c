/* lifecycle: one command's step (domain.md 3.1-3.5, 3.8 and contract.md
 * 3-4). A step with remote work runs in three phases around the operation
 * journal (DESIGN.md); a local one is one transaction. Domain outcomes
 * (environment_not_found, ...) are results, committed like successes; only
 * machinery failures return an error. Not thread-safe: one struct
 * er_lifecycle per dispatcher thread. Owns its store connection, arena and
 * encode buffer. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "bridge/bridge.h"
#include "worker/bridge_host_int.h"
#include "worker/lifecycle_step_int.h"
#include "worker/redact.h"
#include "worker/token_relay_int.h"

#define ARENA_MAX  (64u * 1024 * 1024)
#define ENCODE_MAX (8u * 1024 * 1024)
/* What a lifecycle keeps between steps, arena and encoder each: a step
 * that needed more gives it back (idle RSS, issue [7]). */
#define KEEP_MAX   (64u * 1024)

/* ================================================================
 * JSON helpers
 * ================================================================ */

json_t *er_lifecycle__jstr(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

static json_t *jtime(int64_t ms)
{
    char iso[32];

    if (ms < 0)
        return json_null();
    er_time_iso(ms, iso);
    return json_string(iso);
}

/* Parse JSON text of a column; NULL text gives JSON null. */
json_t *er_lifecycle__jparse(const char *text)
{
    json_t *v;

    if (text == NULL)
        return json_null();
    v = json_loads(text, JSON_DECODE_ANY, NULL);
    return v != NULL ? v : json_null();
}

char *er_lifecycle__jdump(struct er_arena *arena, const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    char *d;

    if (s == NULL)
        return NULL;
    d = er_arena_strdup(arena, s);
    free(s); /* jansson allocates with malloc */
    return d;
}

const char *er_lifecycle__jget_str(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    size_t i;

    if (s == NULL)
        return NULL;
    for (i = 0; s[i] != '\0'; i++) {
        if (!isspace((unsigned char)s[i]))
            return s; /* non-blank */
    }
    return NULL;
}

json_t *er_lifecycle__lease_to_json(const struct er_lease_row *l)
{
    json_t *meta = er_lifecycle__jparse(l->metadata_json);

    er_redact_json(meta, false);
    return json_pack(
        "{s:s, s:s, s:o, s:o, s:o, s:o, s:s, s:s, s:o, s:o, s:o, s:o, s:o,"
        " s:o, s:o, s:o, s:o, s:o, s:o}",
        "id", l->id, "companyId", l->company_id, "environmentId",
        er_lifecycle__jstr(l->environment_id), "executionWorkspaceId",
        er_lifecycle__jstr(l->execution_workspace_id), "issueId",
        er_lifecycle__jstr(l->issue_id), "heartbeatRunId",
        er_lifecycle__jstr(l->heartbeat_run_id), "status", l->status,
        "leasePolicy", l->lease_policy, "provider",
        er_lifecycle__jstr(l->provider), "providerLeaseId",
        er_lifecycle__jstr(l->provider_lease_id), "acquiredAt",
        jtime(l->acquired_at_ms), "lastUsedAt", jtime(l->last_used_at_ms),
        "expiresAt", jtime(l->expires_at_ms), "releasedAt",
        jtime(l->released_at_ms), "failureReason",
        er_lifecycle__jstr(l->failure_reason), "cleanupStatus",
        er_lifecycle__jstr(l->cleanup_status), "metadata", meta, "createdAt",
        jtime(l->created_at_ms), "updatedAt", jtime(l->updated_at_ms));
}

json_t *er_lifecycle__env_to_json(const struct er_env_row *e)
{
    json_t *config = er_lifecycle__jparse(e->config_json);

    er_redact_json(config, false);
    /* An instance's environment has no company (Paperclip 2026.6 on). */
    return json_pack(
        "{s:s, s:o, s:s, s:o, s:s, s:s, s:o, s:o, s:o, s:o}", "id", e->id,
        "companyId",
        er_lifecycle__jstr(e->is_instance_scoped ? NULL : e->company_id),
        "name", e->name, "description", er_lifecycle__jstr(e->description),
        "driver", e->driver, "status", e->status, "config", config, "metadata",
        er_lifecycle__jparse(e->metadata_json), "createdAt",
        jtime(e->created_at_ms), "updatedAt", jtime(e->updated_at_ms));
}

/* The driver's view of an environment row and its parsed config
 * (both borrowed). */
struct er_driver_env er_lifecycle__driver_env(const struct er_env_row *e,
                                              const json_t *config)
{
    return (struct er_driver_env){ e->id,     e->company_id, e->name,
                                   e->driver, e->status,     config };
}

/* The driver's view of a lease row and its parsed metadata (borrowed). */
struct er_driver_lease er_lifecycle__driver_lease(const struct er_lease_row *l,
                                                  const json_t *meta)
{
    return (struct er_driver_lease){ l->id,
                                     l->status,
                                     l->lease_policy,
                                     l->provider,
                                     l->provider_lease_id,
                                     l->heartbeat_run_id,
                                     meta };
}

/* ================================================================
 * Outbox writers
 * ================================================================ */

int er_lifecycle__oom(struct er_err *err)
{
    return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
}

static int outbox(struct er_lifecycle *lc, const char *topic,
                  const uint8_t *key, size_t key_len, const char *headers,
                  struct er_err *err)
{
    /* What the step publishes carries its command's trace context. */
    if (headers == NULL && lc->trace_headers[0] != '\0')
        headers = lc->trace_headers;
    return er_store_outbox_add(lc->store, topic, key, key_len, lc->enc.data,
                               lc->enc.len, headers, NULL, err);
}

/* Queue a LeaseEvent for the row as it now is, with the next version. */
int er_lifecycle__lease_event(struct er_lifecycle *lc,
                              const struct er_lease_row *l, struct er_err *err)
{
    struct er_lease_event ev;
    char event_id[37];
    json_t *meta = NULL;
    char *meta_json = NULL;
    int rc;

    memset(&ev, 0, sizeof(ev));
    rc = er_store_lease_next_version(lc->store, l->id, &ev.version, err);
    if (rc != 0)
        return rc;
    if (er_uuid_v4(event_id) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY, "getrandom failed");
    meta = er_lifecycle__jparse(l->metadata_json);
    er_redact_json(meta, false);
    meta_json =
        json_is_null(meta) ? NULL : er_lifecycle__jdump(&lc->arena, meta);
    json_decref(meta);
    ev.event_id = event_id;
    ev.occurred_at_ms = l->updated_at_ms;
    ev.lease_id = l->id;
    ev.company_id = l->company_id;
    ev.environment_id = l->environment_id;
    ev.execution_workspace_id = l->execution_workspace_id;
    ev.issue_id = l->issue_id;
    ev.heartbeat_run_id = l->heartbeat_run_id;
    ev.status = l->status;
    ev.lease_policy = l->lease_policy;
    ev.provider = l->provider;
    ev.provider_lease_id = l->provider_lease_id;
    ev.acquired_at_ms = l->acquired_at_ms;
    ev.last_used_at_ms = l->last_used_at_ms;
    ev.expires_at_ms = l->expires_at_ms;
    ev.released_at_ms = l->released_at_ms;
    ev.failure_reason = l->failure_reason;
    ev.cleanup_status = l->cleanup_status;
    ev.metadata_json = meta_json;
    ev.created_at_ms = l->created_at_ms;
    ev.updated_at_ms = l->updated_at_ms;
    er_buf_reset(&lc->enc);
    rc = er_codec_lease_event_encode(&ev, &lc->enc, err);
    if (rc != 0)
        return rc;
    return outbox(lc, lc->topic_lease_events, (const uint8_t *)l->id,
                  strlen(l->id), NULL, err);
}

struct er_actor er_lifecycle__step_actor(const struct er_step *st)
{
    const struct er_run_command *cmd = st->cmd;
    struct er_actor a = { cmd->company_id, "agent", cmd->agent_id,
                          cmd->agent_id, cmd->heartbeat_run_id };

    return a;
}

/* A row the database refuses (a control-plane foreign key, say) is logged
 * and skipped: domain.md 3.2 step 3 says logging must not fail the step. */
int er_lifecycle__activity(struct er_lifecycle *lc, const struct er_actor *who,
                           const char *action, const struct er_lease_row *l,
                           json_t *details, struct er_err *err)
{
    struct er_activity_row in;
    struct er_activity_row row;
    struct er_activity_event ev;
    struct er_err aerr;
    int rc;

    er_redact_json(details, true);
    memset(&in, 0, sizeof(in));
    in.company_id = who->company_id;
    in.actor_type = who->type;
    in.actor_id = who->id;
    in.action = action;
    in.entity_type = "environment_lease";
    in.entity_id = l->id;
    in.agent_id = who->agent_id;
    in.run_id = who->run_id;
    in.details_json = er_lifecycle__jdump(&lc->arena, details);
    if (in.details_json == NULL)
        return er_lifecycle__oom(err);

    rc = er_store_savepoint(lc->store, err);
    if (rc != 0)
        return rc;
    er_err_clear(&aerr);
    rc = er_store_activity_insert(lc->store, &in, &lc->arena, &row, &aerr);
    if (rc != 0) {
        if (aerr.cls == ER_ERRCLASS_RETRY) {
            *err = aerr;
            return rc;
        }
        ER_LOG_WARN("lifecycle", "activity %s for lease %s not written: %s",
                    action, l->id, aerr.msg);
        return er_store_savepoint_rollback(lc->store, err);
    }
    rc = er_store_savepoint_release(lc->store, err);
    if (rc != 0)
        return rc;

    memset(&ev, 0, sizeof(ev));
    ev.id = row.id;
    ev.company_id = row.company_id;
    ev.actor_type = row.actor_type;
    ev.actor_id = row.actor_id;
    ev.action = row.action;
    ev.entity_type = row.entity_type;
    ev.entity_id = row.entity_id;
    ev.agent_id = row.agent_id;
    ev.run_id = row.run_id;
    ev.details_json = row.details_json;
    ev.created_at_ms = row.created_at_ms;
    er_buf_reset(&lc->enc);
    rc = er_codec_activity_event_encode(&ev, &lc->enc, err);
    if (rc != 0)
        return rc;
    return outbox(lc, lc->topic_activity, (const uint8_t *)row.company_id,
                  strlen(row.company_id), NULL, err);
}

/* ================================================================
 * Phases and the journal (DESIGN.md: intent, effect, outcome)
 * ================================================================ */

/* Inside the open transaction: stop unless the step's partition is still
 * ours (ER_EFENCED). Holds the fence row until the transaction ends, so a
 * new owner's claim waits for this transaction. */
static int fence(struct er_lifecycle *lc, const struct er_msg_coords *coords,
                 struct er_err *err)
{
    if (coords == NULL || coords->generation == NULL)
        return 0;
    return er_store_journal_fence_check(lc->store, lc->topic_commands,
                                        coords->partition,
                                        atomic_load(coords->generation), err);
}

/* Phase 1: record that the step is about to run kind on lease_id. */
int er_lifecycle__journal(struct er_step *st, const char *kind,
                          const char *lease_id, const char *environment_id,
                          struct er_err *err)
{
    const struct er_msg_coords *co = st->coords;
    struct er_op op = { st->cmd->command_id,
                        st->cmd->company_id,
                        lease_id,
                        environment_id,
                        kind,
                        st->lc->topic_commands,
                        co != NULL ? co->partition : -1,
                        co != NULL && co->generation != NULL
                            ? atomic_load(co->generation)
                            : -1,
                        co != NULL ? co->offset : -1 };
    int attempt = 0;
    int rc;

    rc = er_store_journal_start(st->lc->store, &op, &attempt, err);
    if (rc == 0 && attempt > 1)
        er_log_kv(ER_LOG_INFO, "lifecycle", "resuming an interrupted operation",
                  "commandId", st->cmd->command_id, "kind", kind, "leaseId",
                  lease_id, (const char *)NULL);
    return rc;
}

/* The step's current phase ended now: observe it; the next one begins. */
static void phase_end(struct er_lifecycle *lc, enum er_metrics_phase phase)
{
    int64_t now = er_metrics_now_us();

    if (lc->phase_at_us > 0)
        er_metrics_step_phase(phase, now - lc->phase_at_us);
    lc->phase_at_us = lc->phase_at_us > 0 ? now : 0;
}

/* Let go of the effect hold, if the step has it. A failure is only
 * logged: the hold goes with the connection, which then is bad. */
static void effect_let_go(struct er_lifecycle *lc)
{
    struct er_err e;

    if (!lc->is_effect_held)
        return;
    lc->is_effect_held = false;
    er_err_clear(&e);
    if (er_store_effect_hold(lc->store, lc->topic_commands,
                             lc->effect_partition, false, &e) != 0)
        ER_LOG_WARN("lifecycle", "letting go of the effect hold: %s", e.msg);
}

/* End of phase 1: commit the journal entries, so the driver works with no
 * transaction open and no row lock held. The step then holds the
 * partition's effect lock (shared, no transaction) until its outcome
 * begins, so a new owner of the partition can wait for this driver work
 * to stop before it resumes the operation. */
int er_lifecycle__intent_commit(struct er_step *st, struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    const struct er_msg_coords *co = st->coords;
    int rc;

    er_fault_point("intent.before_commit");
    rc = er_store_commit(lc->store, err);
    if (rc != 0)
        return rc;
    phase_end(lc, ER_METRICS_PHASE_INTENT);
    er_fault_point("intent.after_commit");
    if (co == NULL || co->generation == NULL || lc->is_effect_held)
        return 0;
    rc = er_store_effect_hold(lc->store, lc->topic_commands, co->partition,
                              true, err);
    if (rc == 0) {
        lc->is_effect_held = true;
        lc->effect_partition = co->partition;
    }
    return rc;
}

/* Phase 3 starts: a new transaction under the fence. A step cancelled
 * during its effect records nothing: the partition's next owner gets the
 * command again and resumes from the journal. */
int er_lifecycle__outcome_begin(struct er_step *st, struct er_err *err)
{
    const struct er_msg_coords *co = st->coords;
    int rc;

    effect_let_go(st->lc);
    phase_end(st->lc, ER_METRICS_PHASE_EFFECT);
    if (co != NULL && co->cancel != NULL && atomic_load(co->cancel))
        return er_err_set(err, ER_ECANCELED, ER_ERRCLASS_SKIP,
                          "step cancelled before its outcome was recorded");
    rc = er_store_begin(st->lc->store, err);
    if (rc != 0)
        return rc;
    return fence(st->lc, co, err);
}

/* ================================================================
 * Results
 * ================================================================ */

void er_lifecycle__fail(struct er_step *st, enum er_outcome outcome,
                        enum er_error_code code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    st->res.outcome = outcome;
    st->res.error_code = code;
    st->res.error_message = er_arena_strdup(&st->lc->arena, msg);
}

void er_lifecycle__set_env(struct er_step *st, const struct er_env_row *env)
{
    st->res.environment_id = env->id;
    st->res.driver = env->driver;
}

/* ================================================================
 * The step
 * ================================================================ */

/* Encode st's result into lc->enc. */
static int encode_result(struct er_step *st, struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;

    st->res.completed_at_ms = er_time_now_ms();
    if (st->result != NULL) {
        er_redact_json(st->result, false);
        /* The agent's bridge variables pass: PAPERCLIP_API_KEY is the
         * bridge token, given to the agent this way only. */
        if (st->bridge_env != NULL &&
            json_object_set_new(st->result, "bridge",
                                json_pack("{s:O}", "env", st->bridge_env)) != 0)
            return er_lifecycle__oom(err);
        st->res.result_json = er_lifecycle__jdump(&lc->arena, st->result);
        if (st->res.result_json == NULL)
            return er_lifecycle__oom(err);
    }
    er_buf_reset(&lc->enc);
    return er_codec_result_encode(&st->res, &lc->enc, err);
}

/* Encode st's result and queue it on the results topic. */
static int send_result(struct er_step *st, struct er_err *err)
{
    int rc = encode_result(st, err);

    if (rc != 0)
        return rc;
    return outbox(st->lc, st->lc->topic_results, st->key, st->key_len, NULL,
                  err);
}

/* Queue the encoded result (lc->enc) of the realize command_id of
 * company_id read at coords, which holds the bridge token masked: its
 * outbox row notes where the relay gets the token back, and this
 * process's relay gets it in memory (token_relay_int.h). */
static int send_masked(struct er_lifecycle *lc, const uint8_t *key,
                       size_t key_len, const char *command_id,
                       const char *company_id,
                       const struct er_msg_coords *coords, const char *token,
                       struct er_err *err)
{
    const char *from = er_token_relay_from(
        &lc->arena, lc->topic_commands, coords != NULL ? coords->partition : -1,
        coords != NULL ? coords->offset : -1, command_id, company_id);

    if (from == NULL)
        return er_lifecycle__oom(err);
    er_token_relay_put(from, token);
    return er_store_outbox_add(lc->store, lc->topic_results, key, key_len,
                               lc->enc.data, lc->enc.len, NULL, from, err);
}

/* Encode st's result, queue it and record it as the command's result. A
 * bridge token is masked in both: the relay puts it back in the message
 * it publishes, replay in the one it queues again. */
static int finish(struct er_step *st, struct er_err *err)
{
    struct er_lifecycle *lc = st->lc;
    ptrdiff_t at = -1;
    int rc;

    rc = encode_result(st, err);
    if (rc != 0)
        return rc;
    if (st->bridge_token[0] != '\0')
        at = er_token_relay_find(lc->enc.data, lc->enc.len, st->bridge_token);
    if (at >= 0) {
        memcpy(lc->enc.data + at, ER_TOKEN_RELAY_MASK,
               strlen(ER_TOKEN_RELAY_MASK));
        rc = send_masked(lc, st->key, st->key_len, st->res.command_id,
                         st->res.company_id, st->coords, st->bridge_token, err);
    } else {
        rc = outbox(lc, lc->topic_results, st->key, st->key_len, NULL, err);
    }
    if (rc != 0)
        return rc;
    rc = er_store_journal_close_command(
        lc->store, st->res.command_id, st->res.company_id,
        st->res.outcome == ER_OUTCOME_OK ? "done" : "failed", err);
    if (rc != 0)
        return rc;
    return er_store_processed_put(
        lc->store, st->res.command_id, st->res.company_id,
        er_codec_kind_name(st->res.kind), st->res.heartbeat_run_id,
        lc->enc.data, lc->enc.len, err);
}

/* The company a stored result was sent for: the row's column, or for a
 * row made before migration 4 the companyId inside the stored record.
 * NULL when it cannot be read (treated as another company's). */
static const char *stored_company(struct er_lifecycle *lc,
                                  const struct er_processed_row *row)
{
    struct er_err ignored;
    struct er_buf text;
    const char *company = NULL;

    if (row->company_id != NULL)
        return row->company_id;
    er_buf_init(&text, ER_CMD_VALUE_MAX_BYTES * 2);
    er_err_clear(&ignored);
    if (er_codec_to_json(row->result, row->result_len, &text, &ignored) == 0) {
        json_t *rec = json_loadb((const char *)text.data, text.len, 0, NULL);
        const char *id = er_lifecycle__jget_str(rec, "companyId");

        company = id != NULL ? er_arena_strdup(&lc->arena, id) : NULL;
        json_decref(rec);
    }
    er_buf_fini(&text);
    return company;
}

/* What replay found. */
enum replay_outcome {
    REPLAY_NEW = 0,     /* the command id was never processed */
    REPLAY_SENT = 1,    /* its stored result was queued again */
    REPLAY_FOREIGN = 2, /* the id belongs to another company's or kind's
                         * command: nothing of it may be returned */
};

/* Re-send the stored result of a command seen before, only to a command of
 * the same company and kind. A realize's stored result holds its bridge
 * token masked: it goes out with the token derived from the redelivered
 * command's own credential (read at coords), so the agent gets the token
 * it has. Returns an enum replay_outcome or < 0. */
static int replay(struct er_lifecycle *lc, const char *command_id,
                  const char *company_id, enum er_cmd_kind kind,
                  const struct er_run_command *cmd,
                  const struct er_msg_coords *coords, const uint8_t *key,
                  size_t key_len, struct er_err *err)
{
    struct er_processed_row row;
    const char *stored_by;
    char token[ER_BRIDGE_TOKEN_LEN + 1];
    int rc;

    rc = er_store_processed_get(lc->store, command_id, &lc->arena, &row, err);
    if (rc == ER_ENOTFOUND)
        return REPLAY_NEW;
    if (rc != 0)
        return rc;
    stored_by = stored_company(lc, &row);
    if (stored_by == NULL || strcmp(stored_by, company_id) != 0 ||
        strcmp(row.kind, er_codec_kind_name(kind)) != 0)
        return REPLAY_FOREIGN;
    if (cmd != NULL && cmd->kind == ER_CMD_REALIZE &&
        er_token_relay_find(row.result, row.result_len, ER_TOKEN_RELAY_MASK) >=
            0 &&
        er_bridge_token_derive(&cmd->host_api_token, cmd->heartbeat_run_id,
                               token) == 0) {
        er_buf_reset(&lc->enc);
        rc = er_buf_append(&lc->enc, row.result, row.result_len);
        if (rc == 0)
            rc = send_masked(lc, key, key_len, command_id, company_id, coords,
                             token, err);
        else
            rc = er_lifecycle__oom(err);
        er_wipe(token, sizeof(token));
    } else {
        rc = er_store_outbox_add(lc->store, lc->topic_results, key, key_len,
                                 row.result, row.result_len, NULL, NULL, err);
    }
    if (rc != 0)
        return rc;
    er_metrics_replay();
    return REPLAY_SENT;
}

/* Answer a command whose id another company's or kind's command already
 * used: an invalid_command result, queued but neither recorded (the id's
 * row is the first command's) nor closing anyone's journal entries. */
static int answer_foreign(struct er_step *st, struct er_err *err)
{
    er_log_kv(ER_LOG_WARN, "lifecycle",
              "command id already used by another command: refused",
              "commandId", st->res.command_id, "companyId", st->res.company_id,
              "kind", er_codec_kind_name(st->res.kind), (const char *)NULL);
    er_lifecycle__fail(st, ER_OUTCOME_ERROR, ER_EC_INVALID_COMMAND,
                       "commandId \"%s\" was already used by another "
                       "command; a command id is answered only for the "
                       "company and kind that first used it",
                       st->res.command_id);
    json_decref(st->result);
    st->result = NULL;
    st->res.lease_id = NULL;
    st->res.environment_id = NULL;
    st->res.driver = NULL;
    return send_result(st, err);
}

/* DLQ code for the envrun.error.code header. */
static const char *dlq_code(int code)
{
    switch (code) {
    case ER_EBADMSG:
        return "undecodable";
    case ER_ESCHEMA:
        return "unknown_schema";
    case ER_E2BIG:
        return "too_large";
    default:
        return "invalid_command";
    }
}

/* A readable command id: printable ASCII, short. */
static bool id_is_readable(const char *s)
{
    size_t i;

    if (s == NULL || s[0] == '\0')
        return false;
    for (i = 0; s[i] != '\0'; i++) {
        if (i >= ER_CMD_ID_MAX || s[i] < 0x21 || s[i] > 0x7e)
            return false;
    }
    return true;
}

/* Remove the secret-looking keys of a JSON text field of cmd (a copy);
 * *field gets the redacted text (arena). Returns 1 when anything went, 0
 * when nothing did, -1 when out of memory (the field is then unusable). */
static int redact_json_field(struct er_lifecycle *lc, char **field)
{
    char *after = NULL;
    int rc;

    if (*field == NULL)
        return 0;
    rc = er_redact_json_text(*field, strlen(*field), false, &after);
    if (rc == 1) {
        *field = er_arena_strdup(&lc->arena, after);
        rc = *field != NULL ? 1 : -1;
    }
    free(after); /* jansson allocates with malloc */
    return rc;
}

/* One consumed message as a step sees it. */
struct msg {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *value; /* as it came: what a dead letter keeps */
    size_t value_len;
    /* Single-object encoded: value itself, or its Confluent framing
     * resolved through the registry (into lc->plain). */
    const uint8_t *plain;
    size_t plain_len;
    const struct er_err *unresolved; /* non-NULL: the framing was not */
    const struct er_msg_coords *coords;
};

/* A redacted command whose message came Confluent-framed is published
 * framed too, with envrun's RunCommand id: the bytes are envrun's own
 * encoding (its fingerprint; one the registry does not map stays as it
 * is). */
static int dlq_reframe(struct er_lifecycle *lc, const struct msg *m,
                       struct er_err *err)
{
    struct er_registry *reg = er_registry_installed();
    struct er_buf framed;
    int rc;

    if (reg == NULL || m->plain == m->value)
        return 0;
    er_buf_init(&framed, lc->enc.len + ER_REGISTRY_HDR_LEN);
    rc = er_registry_frame(reg, lc->enc.data, lc->enc.len, &framed, NULL);
    if (rc == 1) {
        er_buf_reset(&lc->enc);
        rc = er_buf_append(&lc->enc, framed.data, framed.len) == 0 ? 0 : -1;
    }
    er_buf_fini(&framed);
    return rc < 0 ? er_lifecycle__oom(err) : 0;
}

/* The bytes a dead letter stores and publishes: the message as it came,
 * or with its credentials removed (into lc->enc). *redacted names what
 * went (static text, NULL when nothing did). A command that decoded is
 * encoded again without hostApiToken and without secret-looking keys in
 * its JSON fields. One that did not decode but may be a realize command
 * may carry a token nobody can find in it: only the header and the ids
 * before the command body are kept (the whole message stays in the
 * commands topic, which the headers point to). */
static int dlq_value(struct er_lifecycle *lc, const struct msg *m,
                     const struct er_run_command *cmd, const char **redacted,
                     struct er_err *err)
{
    const uint8_t *value = m->plain;
    size_t value_len = m->plain_len;
    enum er_record_type type = ER_REC_UNKNOWN;
    enum er_cmd_kind kind = ER_CMD_REALIZE;
    struct er_err ignored;
    size_t body_off = 0;
    int rc;

    *redacted = NULL;
    er_buf_reset(&lc->enc);
    if (cmd != NULL) {
        struct er_run_command copy = *cmd;
        bool has_token = cmd->host_api_token.value != NULL;
        int ws = redact_json_field(lc, &copy.workspace_json);
        int overlay = redact_json_field(lc, &copy.runtime_overlay_json);

        if (ws < 0 || overlay < 0)
            return er_lifecycle__oom(err);
        if (!has_token && ws == 0 && overlay == 0)
            goto keep;
        copy.host_api_token.value = NULL;
        copy.host_api_token.len = 0;
        *redacted = has_token && (ws > 0 || overlay > 0)
                        ? "hostApiToken and secret keys of the JSON fields"
                    : has_token ? "hostApiToken"
                                : "secret keys of the JSON fields";
        if (er_codec_command_encode(&copy, &lc->enc, NULL) == 0)
            return dlq_reframe(lc, m, err);
        /* An encoder refusing what the decoder took: cut as below. */
        er_buf_reset(&lc->enc);
        if (er_codec_command_peek_kind(value, value_len, &kind, &body_off) ==
            0) {
            *redacted = "command body withheld: the redacted command could "
                        "not be encoded";
            value_len = body_off;
        } else {
            *redacted = "everything after the header withheld: the redacted "
                        "command could not be encoded";
            value_len = ER_CODEC_HDR_LEN;
        }
        goto keep;
    }
    if (er_registry_is_framed(value, value_len)) {
        /* Confluent framing whose schema could not be resolved: the body
         * may be a realize command carrying hostApiToken. */
        *redacted = "everything after the schema id withheld: a command "
                    "whose schema could not be resolved may carry "
                    "hostApiToken";
        value_len = ER_REGISTRY_HDR_LEN;
        goto keep;
    }
    er_err_clear(&ignored);
    if (er_codec_identify(value, value_len, &type, &ignored) == 0 &&
        type == ER_REC_RUN_COMMAND) {
        if (er_codec_command_peek_kind(value, value_len, &kind, &body_off) !=
            0) {
            /* Not even the ids read: keep the header only. */
            *redacted = "everything after the header withheld: an "
                        "undecodable command may carry hostApiToken";
            value_len = ER_CODEC_HDR_LEN;
        } else if (kind == ER_CMD_REALIZE) {
            *redacted = "realize command body withheld: an undecodable "
                        "realize command may carry hostApiToken";
            value_len = body_off;
        }
    }
keep:
    if (*redacted == NULL) {
        value = m->value; /* whole, in the framing it came in */
        value_len = m->value_len;
    }
    rc = er_buf_append(&lc->enc, value, value_len);
    if (rc != 0)
        return er_err_set(err, rc, ER_ERRCLASS_RETRY, "dlq copy failed");
    return *redacted != NULL ? dlq_reframe(lc, m, err) : 0;
}

/* With a schema registry, a Confluent-framed command value becomes its
 * single-object form in lc->plain, and *value / *value_len point there
 * (until the step ends); any other value is left as it is. 0, or < 0 with
 * why: class RETRY when the registry cannot be asked now (the command
 * waits), class SKIP when its schema id cannot be resolved. */
static int unframe(struct er_lifecycle *lc, const uint8_t **value,
                   size_t *value_len, struct er_err *why)
{
    struct er_registry *reg = er_registry_installed();
    int rc;

    if (reg == NULL)
        return 0;
    rc = er_registry_unframe(reg, *value, *value_len, &lc->plain, why);
    if (rc != 1)
        return rc;
    *value = lc->plain.data;
    *value_len = lc->plain.len;
    return 0;
}

/* Dead-letter a message and answer invalid_command where its id can be
 * read; cmd is the decoded command when only validation failed. */
static int dead_letter(struct er_lifecycle *lc, const struct msg *m,
                       const struct er_run_command *cmd,
                       const struct er_err *why, struct er_err *err)
{
    const uint8_t *key = m->key;
    size_t key_len = m->key_len;
    char *peek_id = NULL;
    char *peek_company = NULL;
    const char *command_id = cmd != NULL ? cmd->command_id : NULL;
    const char *company_id = cmd != NULL ? cmd->company_id : NULL;
    const char *redacted = NULL;
    json_t *headers = NULL;
    char *headers_json = NULL;
    char part[16];
    char off[24];
    struct er_step st;
    int rc;

    memset(&st, 0, sizeof(st));
    er_metrics_dlq();
    snprintf(part, sizeof(part), "%d", (int)m->coords->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->coords->offset);
    er_log_kv(ER_LOG_WARN, "lifecycle", "dead-lettering command", "partition",
              part, "offset", off, "reason", why->msg, "code",
              dlq_code(why->code), (const char *)NULL);
    rc = dlq_value(lc, m, cmd, &redacted, err);
    if (rc != 0)
        return rc;
    headers =
        json_pack("{s:s, s:s, s:s, s:s}", "envrun.error", why->msg,
                  "envrun.error.code", dlq_code(why->code),
                  "envrun.source.partition", part, "envrun.source.offset", off);
    if (headers != NULL && redacted != NULL &&
        json_object_set_new(headers, "envrun.redacted",
                            json_string(redacted)) != 0) {
        json_decref(headers);
        headers = NULL;
    }
    headers_json =
        headers != NULL ? er_lifecycle__jdump(&lc->arena, headers) : NULL;
    json_decref(headers);
    if (headers_json == NULL)
        return er_lifecycle__oom(err);
    rc = outbox(lc, lc->topic_dlq, key, key_len, headers_json, err);
    if (rc != 0)
        return rc;

    if (cmd == NULL &&
        er_codec_command_peek_ids(m->plain, m->plain_len, &peek_id,
                                  &peek_company) == 0) {
        command_id = peek_id;
        company_id = peek_company;
    }
    if (!id_is_readable(command_id))
        goto out; /* nobody to answer */
    if (key == NULL || key_len == 0) {
        key = (const uint8_t *)command_id;
        key_len = strlen(command_id);
    }
    if (!id_is_readable(company_id) ||
        !er_uuid_is_valid(company_id, strlen(company_id)))
        company_id = "";
    /* CommandResult.kind has no "unknown" symbol: when the command could
     * not be decoded far enough to know its kind, acquire stands in. */
    st.res.kind = cmd != NULL ? cmd->kind : ER_CMD_ACQUIRE;
    rc = replay(lc, command_id, company_id, st.res.kind, NULL, NULL, key,
                key_len, err);
    if (rc != REPLAY_NEW) {
        /* A foreign id gets no answer here: the dead letter is the
         * record of this message, and the id's result belongs to
         * another command. */
        rc = rc > 0 ? 0 : rc;
        goto out;
    }
    st.lc = lc;
    st.key = key;
    st.key_len = key_len;
    st.res.command_id = er_arena_strdup(&lc->arena, command_id);
    st.res.company_id = er_arena_strdup(&lc->arena, company_id);
    st.res.heartbeat_run_id =
        cmd != NULL && cmd->heartbeat_run_id != NULL &&
                er_uuid_is_valid(cmd->heartbeat_run_id,
                                 strlen(cmd->heartbeat_run_id))
            ? cmd->heartbeat_run_id
            : NULL;
    st.res.outcome = ER_OUTCOME_ERROR;
    st.res.error_code = ER_EC_INVALID_COMMAND;
    st.res.error_message = why->msg;
    if (st.res.command_id == NULL || st.res.company_id == NULL) {
        rc = er_lifecycle__oom(err);
        goto out;
    }
    rc = finish(&st, err);
    er_metrics_command(er_codec_kind_name(st.res.kind), "error", 0);
out:
    er_free(peek_id);
    er_free(peek_company);
    return rc;
}

/* The error code a step of kind reports when the database refused it. */
static enum er_error_code refused_code(enum er_cmd_kind kind)
{
    switch (kind) {
    case ER_CMD_ACQUIRE:
        return ER_EC_LEASE_ACQUIRE_FAILED;
    case ER_CMD_REALIZE:
        return ER_EC_WORKSPACE_REALIZATION_FAILED;
    case ER_CMD_RELEASE:
        break;
    }
    return ER_EC_LEASE_RELEASE_FAILED;
}

/* Decode, validate, replay or run one command. With refused non-NULL the
 * first attempt's transaction was rolled back because the database refused
 * the command's data (a control-plane foreign key, say): this attempt
 * records only an error result saying so, so the command is answered and
 * the worker goes on. */
static int run_step(struct er_lifecycle *lc, const struct msg *m,
                    const struct er_err *refused, struct er_err *err)
{
    const struct er_msg_coords *coords = m->coords;
    const uint8_t *key = m->key;
    size_t key_len = m->key_len;
    struct er_run_command cmd;
    struct er_err why;
    struct er_step st;
    int64_t t0 = er_time_mono_ms();
    int rc;

    memset(&cmd, 0, sizeof(cmd));
    memset(&st, 0, sizeof(st));
    er_err_clear(&why);
    if (m->unresolved != NULL)
        return dead_letter(lc, m, NULL, m->unresolved, err);
    if (er_codec_command_decode(m->plain, m->plain_len, &cmd, &why) != 0) {
        rc = dead_letter(lc, m, NULL, &why, err);
        goto out;
    }
    /* W3C Trace Context: a traceparent that cannot be read is dropped
     * (the trace restarts here), never the command that carries it. */
    if (cmd.traceparent != NULL && !er_traceparent_accept(cmd.traceparent)) {
        ER_LOG_WARN("lifecycle",
                    "command at partition %d offset %lld: traceparent "
                    "dropped, not a W3C traceparent",
                    (int)coords->partition, (long long)coords->offset);
        er_free(cmd.traceparent);
        cmd.traceparent = NULL;
    }
    if (er_validate_command(&cmd, &why) != 0) {
        rc = dead_letter(lc, m, &cmd, &why, err);
        goto out;
    }
    if (key == NULL || key_len == 0) {
        key = (const uint8_t *)cmd.command_id;
        key_len = strlen(cmd.command_id);
    }
    /* W3C trace context (validated): on every log line of the step and as
     * the traceparent header of everything it publishes. */
    if (cmd.traceparent != NULL) {
        er_log_set_trace(cmd.traceparent);
        snprintf(lc->trace_headers, sizeof(lc->trace_headers),
                 "{\"traceparent\":\"%s\"}", cmd.traceparent);
    }
    rc = replay(lc, cmd.command_id, cmd.company_id, cmd.kind, &cmd, coords, key,
                key_len, err);
    if (rc == REPLAY_SENT) {
        er_log_kv(ER_LOG_INFO, "lifecycle",
                  "command seen before: stored result sent again", "commandId",
                  cmd.command_id, "runId", cmd.heartbeat_run_id,
                  (const char *)NULL);
        rc = 0;
        goto out;
    }
    if (rc < 0)
        goto out;

    st.lc = lc;
    st.coords = coords;
    st.cmd = &cmd;
    st.key = key;
    st.key_len = key_len;
    st.res.command_id = cmd.command_id;
    st.res.company_id = cmd.company_id;
    st.res.heartbeat_run_id = cmd.heartbeat_run_id;
    st.res.kind = cmd.kind;
    st.res.outcome = ER_OUTCOME_OK;
    st.res.error_code = ER_EC_NONE;
    if (rc == REPLAY_FOREIGN) {
        rc = answer_foreign(&st, err);
        if (rc == 0)
            er_metrics_command(er_codec_kind_name(cmd.kind), "error",
                               er_time_mono_ms() - t0);
        goto out;
    }
    if (refused != NULL) {
        er_lifecycle__fail(&st, ER_OUTCOME_ERROR, refused_code(cmd.kind),
                           "The database refused the %s: %s",
                           er_codec_kind_name(cmd.kind), refused->msg);
        rc = 0;
        goto finish;
    }
    switch (cmd.kind) {
    case ER_CMD_ACQUIRE:
        rc = er_lifecycle__acquire(&st, err);
        break;
    case ER_CMD_REALIZE:
        rc = er_lifecycle__realize(&st, err);
        break;
    case ER_CMD_RELEASE:
        rc = er_lifecycle__release(&st, err);
        break;
    }
    if (rc != 0)
        goto out;
finish:
    rc = finish(&st, err);
    if (rc != 0)
        goto out;
    er_metrics_command(er_codec_kind_name(cmd.kind),
                       er_codec_outcome_name(st.res.outcome),
                       er_time_mono_ms() - t0);
    er_log_kv(ER_LOG_INFO, "lifecycle", "command processed", "commandId",
              cmd.command_id, "kind", er_codec_kind_name(cmd.kind), "runId",
              cmd.heartbeat_run_id, "leaseId", st.res.lease_id, "outcome",
              er_codec_outcome_name(st.res.outcome), "errorCode",
              er_codec_error_code_name(st.res.error_code), (const char *)NULL);
out:
    json_decref(st.result);
    json_decref(st.bridge_env);
    er_wipe(st.bridge_token, sizeof(st.bridge_token));
    er_codec_command_fini(&cmd);
    return rc;
}

/* ================================================================ */

struct er_lifecycle *er_lifecycle_new(const struct er_config *cfg,
                                      struct er_err *err)
{
    struct er_lifecycle *lc = er_calloc(1, sizeof(*lc));

    if (lc == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }
    er_arena_init(&lc->arena, ARENA_MAX);
    er_buf_init(&lc->enc, ENCODE_MAX);
    er_buf_init(&lc->plain, ENCODE_MAX);
    er_config_topic(cfg, "commands", lc->topic_commands,
                    ER_LIFECYCLE_TOPIC_MAX);
    er_config_topic(cfg, "results", lc->topic_results, ER_LIFECYCLE_TOPIC_MAX);
    er_config_topic(cfg, "lease-events", lc->topic_lease_events,
                    ER_LIFECYCLE_TOPIC_MAX);
    er_config_topic(cfg, "activity", lc->topic_activity,
                    ER_LIFECYCLE_TOPIC_MAX);
    er_config_topic(cfg, "commands.dlq", lc->topic_dlq, ER_LIFECYCLE_TOPIC_MAX);
    lc->store = er_store_new(cfg->database_url, err);
    if (lc->store == NULL) {
        er_lifecycle_destroy(lc);
        return NULL;
    }
    er_store_set_lease_ttl(lc->store, cfg->lease_ttl_s);
    return lc;
}

void er_lifecycle_set_expiry_hook(struct er_lifecycle *lc,
                                  er_lifecycle_expiry_fn *fn, void *arg)
{
    lc->expiry_fn = fn;
    lc->expiry_arg = arg;
}

void er_lifecycle_destroy(struct er_lifecycle *lc)
{
    if (lc == NULL)
        return;
    er_store_destroy(lc->store);
    er_arena_fini(&lc->arena);
    er_buf_fini(&lc->enc);
    er_buf_fini(&lc->plain);
    er_free(lc);
}

int er_lifecycle_step(struct er_lifecycle *lc, const uint8_t *key,
                      size_t key_len, const uint8_t *value, size_t value_len,
                      const struct er_msg_coords *coords, struct er_err *err)
{
    struct msg m = { .key = key,
                     .key_len = key_len,
                     .value = value,
                     .value_len = value_len,
                     .plain = value,
                     .plain_len = value_len,
                     .coords = coords };
    struct er_err unresolved;
    struct er_err refused;
    int attempt;
    int rc;

    /* A Confluent-framed command's schema is resolved before any
     * transaction opens: the registry may take its time (or be down, and
     * the step is retried), and no row lock waits for it. */
    er_err_clear(&unresolved);
    rc = unframe(lc, &m.plain, &m.plain_len, &unresolved);
    if (rc < 0 && unresolved.cls == ER_ERRCLASS_RETRY) {
        er_err_set(err, rc, ER_ERRCLASS_RETRY, "%s", unresolved.msg);
        goto out;
    }
    if (rc < 0)
        m.unresolved = &unresolved;
    /* Attempt 0 runs the step; attempt 1 only happens when the database
     * refused the step's data (class SKIP) and records that as the
     * command's error result (see run_step). */
    for (attempt = 0; attempt < 2; attempt++) {
        er_arena_reset(&lc->arena);
        memset(&lc->undo, 0, sizeof(lc->undo));
        lc->bridge_drop = NULL;
        lc->phase_at_us = er_metrics_now_us();
        rc = er_store_begin(lc->store, err);
        if (rc == 0)
            rc = fence(lc, coords, err);
        if (rc == 0)
            rc = run_step(lc, &m, attempt == 0 ? NULL : &refused, err);
        if (rc == 0) {
            er_fault_point("outcome.before_commit");
            rc = er_store_commit(lc->store, err);
        }
        if (rc == 0) {
            phase_end(lc, ER_METRICS_PHASE_OUTCOME);
            er_fault_point("outcome.after_commit");
            if (lc->undo.lease_id != NULL)
                er_lifecycle__undo_finish(lc, &lc->undo);
            if (lc->bridge_drop != NULL)
                (void)er_bridge_host_drop(lc->bridge_drop);
            break;
        }
        er_store_rollback(lc->store);
        if (attempt > 0 || err->cls != ER_ERRCLASS_SKIP ||
            err->code == ER_EFENCED || err->code == ER_ECANCELED)
            break;
        refused = *err;
        er_err_clear(err);
        ER_LOG_WARN("lifecycle", "step at partition %d offset %lld refused: %s",
                    (int)coords->partition, (long long)coords->offset,
                    refused.msg);
    }
    effect_let_go(lc); /* a step that stopped before its outcome began */
out:
    if (lc->plain.len > 0) {
        er_wipe(lc->plain.data, lc->plain.len); /* may hold hostApiToken */
        er_buf_reset(&lc->plain);
    }
    /* The command's trace stays on until the step's last log line (a
     * refusal, an undo) and goes with it. */
    lc->trace_headers[0] = '\0';
    er_log_set_trace(NULL);
    lc->phase_at_us = 0;
    er_arena_trim(&lc->arena, KEEP_MAX);
    er_buf_trim(&lc->enc, KEEP_MAX);
    er_buf_trim(&lc->plain, KEEP_MAX);
    return rc;
}

void er_lifecycle_idle(struct er_lifecycle *lc)
{
    er_arena_trim(&lc->arena, 0);
    er_buf_trim(&lc->enc, 0);
    er_buf_trim(&lc->plain, 0);
}
