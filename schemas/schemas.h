/* schemas: the Avro records of contract.md 4 and their wire encodings
 * (single-object encoding in the codec; Confluent framing through a schema
 * registry in registry.c), plus validation of decoded commands.
 * Thread-safe: avro-c keeps its error text in one process-wide buffer, so
 * every codec call is serialised internally. Owns the parsed schemas, created
 * by er_codec_init() and freed by er_codec_shutdown(). */
#ifndef ER_SCHEMAS_SCHEMAS_H
#define ER_SCHEMAS_SCHEMAS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* ================================================================
 * Enumerations shared with the worker (values match the Avro enums)
 * ================================================================ */
enum er_cmd_kind {
    ER_CMD_ACQUIRE = 0,
    ER_CMD_REALIZE,
    ER_CMD_RELEASE,
};

enum er_outcome {
    ER_OUTCOME_OK = 0,
    ER_OUTCOME_ERROR,
    ER_OUTCOME_DEFERRED,
};

/* The errorCode enum of CommandResult; ER_EC_NONE encodes as null. */
enum er_error_code {
    ER_EC_NONE = -1,
    ER_EC_ENVIRONMENT_NOT_FOUND = 0,
    ER_EC_ENVIRONMENT_INACTIVE,
    ER_EC_UNSUPPORTED_ENVIRONMENT,
    ER_EC_UNSUPPORTED_ADAPTER_ENVIRONMENT,
    ER_EC_PROBE_FAILED,
    ER_EC_LEASE_ACQUIRE_FAILED,
    ER_EC_LEASE_CONFLICT,
    ER_EC_WORKSPACE_REALIZATION_FAILED,
    ER_EC_TRANSPORT_RESOLUTION_FAILED,
    ER_EC_LEASE_RELEASE_FAILED,
    ER_EC_LEASE_CLEANUP_FAILED,
    ER_EC_INVALID_COMMAND,
};

/* The status enum of ReleaseCommand. */
enum er_release_status {
    ER_RELEASE_RELEASED = 0,
    ER_RELEASE_EXPIRED,
    ER_RELEASE_FAILED,
};

/* snake_case names of the enums above, as they appear on the wire. */
const char *er_codec_kind_name(enum er_cmd_kind kind);
const char *er_codec_outcome_name(enum er_outcome outcome);
/* NULL for ER_EC_NONE. */
const char *er_codec_error_code_name(enum er_error_code code);
const char *er_codec_release_status_name(enum er_release_status status);

/* ================================================================
 * Records. Optional strings are NULL when the Avro value is null.
 * ================================================================ */

/* RunCommand with its command union flattened: only the fields of `kind`
 * are meaningful. Decoded strings are owned by the struct (heap, freed by
 * er_codec_command_fini); when encoding, the caller owns them. */
struct er_run_command {
    char *command_id;
    int64_t issued_at_ms;
    char *company_id;
    char *agent_id;
    char *heartbeat_run_id;
    char *traceparent;
    enum er_cmd_kind kind;

    /* AcquireCommand */
    char *selected_environment_id;
    char *execution_workspace_mode;
    /* requestedExpiresAt: the latest time the lease may stay active, ms
     * since the epoch; 0 when null (or absent: written with an earlier
     * version of the schema). */
    int64_t requested_expires_at_ms;
    /* Acquire and Realize */
    char *adapter_type;
    char *issue_id;
    char *execution_workspace_id;

    /* RealizeCommand */
    char *lease_id;
    char *workspace_json;
    char *requested_mode;
    char *runtime_overlay_json;
    struct er_secret host_api_token; /* never logged, stored or published */

    /* ReleaseCommand */
    enum er_release_status release_status;
    char *failure_reason;
};

/* Free every string a decode gave the command and wipe the token. */
void er_codec_command_fini(struct er_run_command *cmd);

/* CommandResult. All strings are borrowed by the encoder. */
struct er_command_result {
    const char *command_id;
    const char *company_id; /* never NULL on the wire: "" when unknown */
    const char *heartbeat_run_id;
    enum er_cmd_kind kind;
    enum er_outcome outcome;
    enum er_error_code error_code;
    const char *error_message;
    const char *environment_id;
    const char *driver;
    const char *lease_id;
    const char *result_json;
    int64_t completed_at_ms;
};

/* A row of environment_leases plus the event envelope (contract.md 4).
 * Timestamps are ms since the epoch; -1 encodes null for the nullable
 * ones (expires_at, released_at). */
struct er_lease_event {
    const char *event_id;
    int64_t occurred_at_ms;
    int64_t version;
    const char *lease_id;
    const char *company_id;
    const char *environment_id;
    const char *execution_workspace_id;
    const char *issue_id;
    const char *heartbeat_run_id;
    const char *status;
    const char *lease_policy;
    const char *provider;
    const char *provider_lease_id;
    int64_t acquired_at_ms;
    int64_t last_used_at_ms;
    int64_t expires_at_ms;
    int64_t released_at_ms;
    const char *failure_reason;
    const char *cleanup_status;
    const char *metadata_json; /* secrets already removed by the caller */
    int64_t created_at_ms;
    int64_t updated_at_ms;
};

/* A row of activity_log. */
struct er_activity_event {
    const char *id;
    const char *company_id;
    const char *actor_type;
    const char *actor_id;
    const char *action;
    const char *entity_type;
    const char *entity_id;
    const char *agent_id;
    const char *run_id;
    const char *details_json;
    int64_t created_at_ms;
};

/* ================================================================
 * Codec
 * ================================================================ */

/* Which record a single-object value carries, by fingerprint. */
enum er_record_type {
    ER_REC_UNKNOWN = -1,
    ER_REC_RUN_COMMAND = 0,
    ER_REC_COMMAND_RESULT,
    ER_REC_LEASE_EVENT,
    ER_REC_ACTIVITY_EVENT,
};

/* Parse the embedded schemas (the .avsc files of schemas/avro/), compute their
 * fingerprints and cap avro-c allocations so hostile lengths fail cleanly
 * instead of exhausting memory. Call once before any other codec function.
 * Errors: ER_ESCHEMA (class FATAL) when a schema does not parse. */
int er_codec_init(struct er_err *err);
/* Free what er_codec_init made. Safe to call when init failed. */
void er_codec_shutdown(void);

/* CRC-64-AVRO (the Rabin fingerprint of the Avro specification) of the
 * bytes (canonical.c). */
uint64_t er_canonical_crc64(const void *p, size_t len);
/* Append the Parsing Canonical Form of a schema given as JSON text to out
 * (canonical.c). Errors: ER_EINVAL when the text is not a schema, ER_E2BIG,
 * ER_ENOMEM. */
int er_canonical_form(const char *schema_json, struct er_buf *out,
                      struct er_err *err);
/* Fingerprint of a record type's schema (CRC-64-AVRO of its canonical
 * form), as written little-endian after 0xC3 0x01. */
uint64_t er_codec_fingerprint(enum er_record_type type);
/* The same for a version by its .avsc stem: a current record
 * ("RunCommand") or an earlier version still read ("RunCommand_1", from
 * schemas/avro/history/); 0 when there is no such version. */
uint64_t er_codec_version_fingerprint(const char *name);
/* The .avsc text of a record type, borrowed for the process lifetime. */
const char *er_codec_schema_json(enum er_record_type type);

/* Identify a framed value: the record type for single-object encoding with
 * a known fingerprint. Errors (class SKIP, message says why): ER_EBADMSG
 * when too short or unframed, ER_ESCHEMA for an unknown fingerprint or for
 * Confluent framing ("confluent-framed value needs a schema registry ...").
 */
int er_codec_identify(const uint8_t *buf, size_t len, enum er_record_type *type,
                      struct er_err *err);

/* Decode a RunCommand value (single-object encoding). On success cmd owns
 * its strings. On failure cmd is left finalised (all NULL) and err (class
 * SKIP) says why: ER_EBADMSG (also for a string holding a NUL byte or
 * invalid UTF-8, naming the field), ER_ESCHEMA, ER_E2BIG (over 1 MiB); or
 * ER_ENOMEM, class RETRY. */
int er_codec_command_decode(const uint8_t *buf, size_t len,
                            struct er_run_command *cmd, struct er_err *err);

/* Read commandId and companyId from a value whose framing and fingerprint
 * are those of RunCommand even when the rest cannot be decoded. Returns 0
 * and heap copies (caller frees with er_free) when both could be read;
 * ER_EBADMSG otherwise (outputs NULL). */
int er_codec_command_peek_ids(const uint8_t *buf, size_t len, char **command_id,
                              char **company_id);
/* Bytes of the single-object header: 0xC3 0x01 and the fingerprint. */
#define ER_CODEC_HDR_LEN 10

/* Read which command a RunCommand value carries (the union branch after
 * the six fields before it) even when the rest cannot be decoded. 0 with
 * *kind set and *body_off the offset of the union (the bytes before it
 * are the header and those six fields), or ER_EBADMSG when the bytes do
 * not get that far. */
int er_codec_command_peek_kind(const uint8_t *buf, size_t len,
                               enum er_cmd_kind *kind, size_t *body_off);

/* Encoders append a complete single-object value to out (which the caller
 * initialised). Errors: ER_EINVAL (a required string is NULL, class FATAL:
 * a programming error), ER_E2BIG, ER_ENOMEM. */
int er_codec_command_encode(const struct er_run_command *cmd,
                            struct er_buf *out, struct er_err *err);
int er_codec_result_encode(const struct er_command_result *res,
                           struct er_buf *out, struct er_err *err);
int er_codec_lease_event_encode(const struct er_lease_event *ev,
                                struct er_buf *out, struct er_err *err);
int er_codec_activity_event_encode(const struct er_activity_event *ev,
                                   struct er_buf *out, struct er_err *err);

/* Decode any of the four record types to one line of JSON text (no
 * newline) into out, for envrunctl tail and the tests. The JSON has the
 * Avro field names; a union value is written as its plain value (null or
 * the branch value, not {"type": value}); enums as their symbol strings;
 * timestamps as numbers; the RunCommand `command` union as an object with an
 * extra "type" key naming the branch ("AcquireCommand", ...). The realize
 * command's hostApiToken is written as "<redacted>" when set. */
int er_codec_to_json(const uint8_t *buf, size_t len, struct er_buf *out,
                     struct er_err *err);

/* ================================================================
 * Schema registry (registry.c): a Confluent-compatible registry's REST API
 * through libcurl, and the Confluent wire format (0x00, 4-byte big-endian
 * schema id, Avro binary). Values are reframed to and from the codec's
 * single-object encoding; the Avro body is never re-encoded. Thread-safe:
 * one reused connection under a mutex.
 * ================================================================ */
struct er_registry;

/* A client of the registry at url (http:// or https://; user:password@ in
 * it is sent as basic auth and never shown); ca_file ("" or NULL: the
 * system's) verifies an https registry. No call is made yet. Errors:
 * ER_ENOMEM, ER_EIO (libcurl), class FATAL. */
int er_registry_new(const char *url, const char *ca_file,
                    struct er_registry **out, struct er_err *err);
void er_registry_destroy(struct er_registry *reg);
/* The URL without its userinfo, for logs and messages. */
const char *er_registry_url_shown(const struct er_registry *reg);
/* Register the record type's schema under subject (POST
 * /subjects/{subject}/versions) and keep its id. Errors: class RETRY when
 * the registry cannot be reached or answers 5xx; class FATAL when it
 * refuses the schema (credentials, incompatible, invalid), with its own
 * message. Call before the values are framed (not concurrently). */
int er_registry_register(struct er_registry *reg, enum er_record_type type,
                         const char *subject, struct er_err *err);
/* The id a registered type got; -1 before. */
int32_t er_registry_id(const struct er_registry *reg, enum er_record_type type);
/* GET /schemas/ids/{id} calls made so far (each id at most once). */
uint64_t er_registry_fetch_cnt(struct er_registry *reg);
/* Bytes of the Confluent header: 0x00 and the schema id. */
#define ER_REGISTRY_HDR_LEN 5
/* Whether a value carries Confluent framing (0x00 and a 4-byte id). */
bool er_registry_is_framed(const uint8_t *buf, size_t len);
/* A Confluent-framed value as single-object encoding into out: 1. A value
 * in another framing: 0, out untouched. Errors: class SKIP when the id is
 * not in the registry or not an Avro schema (ER_ESCHEMA); class RETRY
 * when the registry cannot be asked now (the value must wait, not go). */
int er_registry_unframe(struct er_registry *reg, const uint8_t *buf, size_t len,
                        struct er_buf *out, struct er_err *err);
/* A single-object value of a registered type as Confluent-framed into
 * out: 1; any other value: 0, out untouched. Errors: ER_E2BIG. */
int er_registry_frame(struct er_registry *reg, const uint8_t *buf, size_t len,
                      struct er_buf *out, struct er_err *err);
/* er_codec_command_decode of a value in either framing, through the
 * process's registry (below) for a Confluent-framed one. Errors: those of
 * the decoder and of er_registry_unframe (class RETRY: try again later). */
int er_registry_command_decode(const uint8_t *buf, size_t len,
                               struct er_run_command *cmd, struct er_err *err);
/* er_codec_to_json of a value in either framing, likewise. */
int er_registry_to_json(const uint8_t *buf, size_t len, struct er_buf *out,
                        struct er_err *err);
/* The process's registry client, set once at start (NULL: none; values
 * stay single-object encoded). Borrowed. */
void er_registry_install(struct er_registry *reg);
struct er_registry *er_registry_installed(void);

/* ================================================================
 * Embedded files (generated from schemas/avro/ and schemas/sql/ by
 * schemas/embed.cmake): read-only, valid for the process lifetime.
 * ================================================================ */

/* Parallel NULL-terminated arrays: .avsc file stem ("RunCommand") and text. */
extern const char *const er_embed_avsc_names[];
extern const char *const er_embed_avsc_texts[];
/* The same for the earlier versions in history/ ("RunCommand_1"). */
extern const char *const er_embed_avsc_history_names[];
extern const char *const er_embed_avsc_history_texts[];
/* The text of schemas/sql/migrations.sql. */
extern const char *const er_embed_migrations_sql;

/* ================================================================
 * Validation of a decoded command (validate.c)
 * ================================================================ */

/* Limits on command fields (bytes). */
#define ER_CMD_ID_MAX          64
#define ER_CMD_SHORT_MAX       256   /* adapterType, modes, traceparent */
#define ER_CMD_TEXT_MAX        4096  /* failureReason */
#define ER_CMD_JSON_MAX        65536 /* workspaceJson, runtimeOverlayJson */
#define ER_CMD_TOKEN_MAX       8192  /* hostApiToken */
#define ER_CMD_VALUE_MAX_BYTES (1024 * 1024)

/* Check every field: UUID shape of commandId, companyId, agentId,
 * heartbeatRunId, selectedEnvironmentId (empty allowed), issueId,
 * executionWorkspaceId, leaseId; lengths against the limits above; that
 * workspaceJson is a JSON object and runtimeOverlayJson a JSON object or
 * null; traceparent in W3C shape. Errors: ER_EINVAL, class SKIP, message
 * naming the field first ("heartbeatRunId: not a uuid"). */
int er_validate_command(const struct er_run_command *cmd, struct er_err *err);
/* Whether s (len bytes) is a W3C traceparent: version (not ff), trace id
 * and parent id (neither all zeros) and flags, 55 characters of lower-case
 * hex and dashes. */
bool er_traceparent_is_valid(const char *s, size_t len);
/* A received traceparent made into the one this worker carries, in place:
 * version 00 as is; a later version read as W3C Trace Context says
 * (version 00's fields, anything after them cut) and written as 00. false
 * when it cannot be read: the caller drops it (the trace restarts), never
 * the message it came with. */
bool er_traceparent_accept(char *s);

#endif
