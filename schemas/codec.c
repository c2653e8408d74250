/* codec: the four records of contract.md 4 in single-object encoding, on
 * avro-c generic values. Thread-safe: one mutex serialises every call,
 * because avro-c keeps its error text in one process-wide buffer and we
 * reuse one value per schema. Owns the parsed schemas, their value
 * instances and a memory reader and writer, from init to shutdown. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <avro.h>

#include "schemas/schemas.h"
#include "schemas/schemas_int.h"

#define REC_CNT        4 /* current records, indexed by er_record_type */
#define HISTORY_MAX    8 /* earlier versions still read (history/) */
#define HDR_LEN        ER_CODEC_HDR_LEN
#define MAGIC0         0xc3
#define MAGIC1         0x01
/* avro-c mallocs a string's declared length before reading it; refusing
 * anything this big bounds what a hostile length can cost. */
#define VALUE_MAX      ((size_t)ER_CMD_VALUE_MAX_BYTES)
#define AVRO_ALLOC_MAX (VALUE_MAX * 2)
/* Our schemas nest three levels; the cap bounds the schema walks. */
#define MAX_DEPTH      16

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct rec {
    const char *name; /* .avsc stem, "RunCommand" or "RunCommand_1" */
    const char *json; /* embedded text, borrowed */
    enum er_record_type type;
    uint64_t fp; /* CRC-64-AVRO of the canonical form */
    avro_schema_t schema;
    avro_value_iface_t *iface;
    avro_value_t value; /* reused for every call; iface NULL when absent */
};

static struct {
    pthread_mutex_t mu;
    bool is_ready;
    /* The current records first (index = type), then the earlier versions
     * of schemas/avro/history/, read with their own schema: avro-c's
     * schema resolution cannot fill a field the writer lacks, so decoding
     * treats a field an earlier version does not have as null. */
    struct rec recs[REC_CNT + HISTORY_MAX];
    size_t rec_cnt;
    struct rec *loaded; /* the version a decode read into, until end_locked */
    avro_reader_t reader;
    avro_writer_t writer;
} codec = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .recs = { { .name = "RunCommand", .type = ER_REC_RUN_COMMAND },
              { .name = "CommandResult", .type = ER_REC_COMMAND_RESULT },
              { .name = "LeaseEvent", .type = ER_REC_LEASE_EVENT },
              { .name = "ActivityEvent", .type = ER_REC_ACTIVITY_EVENT } },
};

/* ================================================================
 * Enum names (checked against the schemas' symbols at init)
 * ================================================================ */

static const char *const kind_names[] = { "acquire", "realize", "release" };
static const char *const outcome_names[] = { "ok", "error", "deferred" };
static const char *const error_code_names[] = {
    "environment_not_found",
    "environment_inactive",
    "unsupported_environment",
    "unsupported_adapter_environment",
    "probe_failed",
    "lease_acquire_failed",
    "lease_conflict",
    "workspace_realization_failed",
    "transport_resolution_failed",
    "lease_release_failed",
    "lease_cleanup_failed",
    "invalid_command",
};
static const char *const release_status_names[] = { "released", "expired",
                                                    "failed" };

_Static_assert(ARRAY_LEN(kind_names) == ER_CMD_RELEASE + 1, "kinds");
_Static_assert(ARRAY_LEN(outcome_names) == ER_OUTCOME_DEFERRED + 1, "outcomes");
_Static_assert(ARRAY_LEN(error_code_names) == ER_EC_INVALID_COMMAND + 1,
               "error codes");
_Static_assert(ARRAY_LEN(release_status_names) == ER_RELEASE_FAILED + 1,
               "release statuses");

static const char *name_of(const char *const *names, size_t cnt, int idx)
{
    if (idx < 0 || (size_t)idx >= cnt)
        return "unknown";
    return names[idx];
}

const char *er_codec_kind_name(enum er_cmd_kind kind)
{
    return name_of(kind_names, ARRAY_LEN(kind_names), (int)kind);
}

const char *er_codec_outcome_name(enum er_outcome outcome)
{
    return name_of(outcome_names, ARRAY_LEN(outcome_names), (int)outcome);
}

const char *er_codec_error_code_name(enum er_error_code code)
{
    if (code == ER_EC_NONE)
        return NULL;
    return name_of(error_code_names, ARRAY_LEN(error_code_names), (int)code);
}

const char *er_codec_release_status_name(enum er_release_status status)
{
    return name_of(release_status_names, ARRAY_LEN(release_status_names),
                   (int)status);
}

/* ================================================================
 * Field tables: which struct member goes to which Avro field
 * ================================================================ */

/* A string or long field of a record struct; nullable or not comes from
 * the schema. A negative long encodes null where the schema allows it. */
struct field {
    const char *name;
    size_t off; /* of a char *, const char * or int64_t member */
    bool is_long;
};

#define STR(type, member, name)                    \
    {                                              \
        name, offsetof(struct type, member), false \
    }
#define LONG(type, member, name)                  \
    {                                             \
        name, offsetof(struct type, member), true \
    }

static const struct field cmd_strs[] = {
    STR(er_run_command, command_id, "commandId"),
    STR(er_run_command, company_id, "companyId"),
    STR(er_run_command, agent_id, "agentId"),
    STR(er_run_command, heartbeat_run_id, "heartbeatRunId"),
    STR(er_run_command, traceparent, "traceparent"),
};
static const struct field acquire_strs[] = {
    STR(er_run_command, selected_environment_id, "selectedEnvironmentId"),
    STR(er_run_command, adapter_type, "adapterType"),
    STR(er_run_command, issue_id, "issueId"),
    STR(er_run_command, execution_workspace_id, "executionWorkspaceId"),
    STR(er_run_command, execution_workspace_mode, "executionWorkspaceMode"),
};
/* hostApiToken is handled apart: it goes into a struct er_secret. */
static const struct field realize_strs[] = {
    STR(er_run_command, lease_id, "leaseId"),
    STR(er_run_command, adapter_type, "adapterType"),
    STR(er_run_command, issue_id, "issueId"),
    STR(er_run_command, workspace_json, "workspaceJson"),
    STR(er_run_command, execution_workspace_id, "executionWorkspaceId"),
    STR(er_run_command, requested_mode, "requestedMode"),
    STR(er_run_command, runtime_overlay_json, "runtimeOverlayJson"),
};
static const struct field release_strs[] = {
    STR(er_run_command, failure_reason, "failureReason"),
};

/* Branch names of the RunCommand `command` union, by enum er_cmd_kind. */
static const char *const cmd_branches[] = { "AcquireCommand", "RealizeCommand",
                                            "ReleaseCommand" };

/* CommandResult's enums (kind, outcome, errorCode) are set apart. */
static const struct field result_fields[] = {
    STR(er_command_result, command_id, "commandId"),
    STR(er_command_result, company_id, "companyId"),
    STR(er_command_result, heartbeat_run_id, "heartbeatRunId"),
    STR(er_command_result, error_message, "errorMessage"),
    STR(er_command_result, environment_id, "environmentId"),
    STR(er_command_result, driver, "driver"),
    STR(er_command_result, lease_id, "leaseId"),
    STR(er_command_result, result_json, "resultJson"),
    LONG(er_command_result, completed_at_ms, "completedAt"),
};

static const struct field lease_fields[] = {
    STR(er_lease_event, event_id, "eventId"),
    LONG(er_lease_event, occurred_at_ms, "occurredAt"),
    LONG(er_lease_event, version, "version"),
    STR(er_lease_event, lease_id, "leaseId"),
    STR(er_lease_event, company_id, "companyId"),
    STR(er_lease_event, environment_id, "environmentId"),
    STR(er_lease_event, execution_workspace_id, "executionWorkspaceId"),
    STR(er_lease_event, issue_id, "issueId"),
    STR(er_lease_event, heartbeat_run_id, "heartbeatRunId"),
    STR(er_lease_event, status, "status"),
    STR(er_lease_event, lease_policy, "leasePolicy"),
    STR(er_lease_event, provider, "provider"),
    STR(er_lease_event, provider_lease_id, "providerLeaseId"),
    LONG(er_lease_event, acquired_at_ms, "acquiredAt"),
    LONG(er_lease_event, last_used_at_ms, "lastUsedAt"),
    LONG(er_lease_event, expires_at_ms, "expiresAt"),
    LONG(er_lease_event, released_at_ms, "releasedAt"),
    STR(er_lease_event, failure_reason, "failureReason"),
    STR(er_lease_event, cleanup_status, "cleanupStatus"),
    STR(er_lease_event, metadata_json, "metadataJson"),
    LONG(er_lease_event, created_at_ms, "createdAt"),
    LONG(er_lease_event, updated_at_ms, "updatedAt"),
};

static const struct field activity_fields[] = {
    STR(er_activity_event, id, "id"),
    STR(er_activity_event, company_id, "companyId"),
    STR(er_activity_event, actor_type, "actorType"),
    STR(er_activity_event, actor_id, "actorId"),
    STR(er_activity_event, action, "action"),
    STR(er_activity_event, entity_type, "entityType"),
    STR(er_activity_event, entity_id, "entityId"),
    STR(er_activity_event, agent_id, "agentId"),
    STR(er_activity_event, run_id, "runId"),
    STR(er_activity_event, details_json, "detailsJson"),
    LONG(er_activity_event, created_at_ms, "createdAt"),
};

/* ================================================================
 * Small helpers
 * ================================================================ */

/* avro-c's allocator: refuses single allocations past the cap. It uses
 * libc directly rather than er_realloc: some of avro-c's out-of-memory
 * paths leak (read_value drops a string when wrapping it fails), so
 * injected failures would test avro-c rather than us. */
static void *avro_alloc(void *user_data, void *ptr, size_t osize, size_t nsize)
{
    (void)user_data;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (nsize > AVRO_ALLOC_MAX)
        return NULL;
    return realloc(ptr, nsize);
}

/* Fill err from avro-c's error text, read at once (it is one buffer for
 * the whole process; the caller holds the lock). */
static int avro_err(struct er_err *err, int code, enum er_errclass cls,
                    const char *what, int avro_rc)
{
    if (avro_rc == ENOMEM)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY,
                          "%s: out of memory (%s)", what, avro_strerror());
    return er_err_set(err, code, cls, "%s: %s", what, avro_strerror());
}

static int buf_err(struct er_err *err, int rc, const char *what)
{
    if (rc == ER_E2BIG)
        return er_err_set(err, rc, ER_ERRCLASS_SKIP,
                          "%s: output over its size cap", what);
    return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "%s: out of memory",
                      what);
}

static void buf_truncate(struct er_buf *out, size_t len)
{
    if (out->data == NULL)
        return;
    out->len = len;
    out->data[len] = '\0';
}

static int not_ready(struct er_err *err)
{
    return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                      "codec used before er_codec_init");
}

uint64_t er_codec__load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Index of the first branch of a union schema with the given type (or,
 * when name is not NULL, the named branch); -1 when there is none. */
static int branch_of(avro_schema_t un, avro_type_t type, const char *name)
{
    size_t i;

    for (i = 0; i < avro_schema_union_size(un); i++) {
        avro_schema_t b = avro_schema_union_branch(un, (int)i);

        if (avro_typeof(b) != type)
            continue;
        if (name == NULL || strcmp(avro_schema_name(b), name) == 0)
            return (int)i;
    }
    return -1;
}

/* ================================================================
 * Prescan: walk the bytes against the schema before avro-c sees them.
 * Debian's avro-c 1.11.1 trusts the input: it stores any enum index (so
 * avro_schema_enum_get would later read past the symbol table) and mallocs
 * a string's declared length (2^62 included) before checking it against
 * the input. The walk refuses those, checks union branches itself rather
 * than rely on avro-c's version-dependent check, and finds trailing
 * bytes, so avro_value_read only ever sees well-formed values.
 * ================================================================ */

struct scan {
    const uint8_t *p;
    size_t len;
    size_t off;
    struct er_err *err;
};

static int scan_bad(struct scan *s, const char *field, const char *why)
{
    return er_err_set(s->err, ER_EBADMSG, ER_ERRCLASS_SKIP, "%s: %s", field,
                      why);
}

/* A zig-zag varint whose value fits 64 bits: at most 10 bytes, the tenth
 * 0 or 1 (which also rules out an eleventh). */
static int scan_long(struct scan *s, const char *field, int64_t *v)
{
    uint64_t u = 0;
    int i;

    for (i = 0; i < 10; i++) {
        uint8_t b;

        if (s->off >= s->len)
            return scan_bad(s, field, "truncated");
        b = s->p[s->off++];
        if (i == 9 && b > 1)
            break;
        u |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            *v = (int64_t)((u >> 1) ^ (0 - (u & 1)));
            return 0;
        }
    }
    return scan_bad(s, field, "varint overflows 64 bits");
}

static int scan_skip(struct scan *s, const char *field, int64_t n)
{
    if (n < 0)
        return scan_bad(s, field, "negative length");
    if ((uint64_t)n > s->len - s->off)
        return scan_bad(s, field, "length past the end of the value");
    s->off += (size_t)n;
    return 0;
}

static int scan_value(struct scan *s, avro_schema_t schema, const char *field)
{
    int64_t v = 0;
    size_t i;
    int rc = 0;

    switch (avro_typeof(schema)) {
    case AVRO_NULL:
        return 0;
    case AVRO_BOOLEAN:
        rc = scan_skip(s, field, 1);
        if (rc == 0 && s->p[s->off - 1] > 1)
            rc = scan_bad(s, field, "boolean is neither 0 nor 1");
        return rc;
    case AVRO_INT32:
        rc = scan_long(s, field, &v);
        if (rc == 0 && (v < INT32_MIN || v > INT32_MAX))
            rc = scan_bad(s, field, "int out of range");
        return rc;
    case AVRO_INT64:
        return scan_long(s, field, &v);
    case AVRO_FLOAT:
        return scan_skip(s, field, 4);
    case AVRO_DOUBLE:
        return scan_skip(s, field, 8);
    case AVRO_STRING:
    case AVRO_BYTES:
        rc = scan_long(s, field, &v);
        if (rc == 0)
            rc = scan_skip(s, field, v);
        return rc;
    case AVRO_FIXED:
        return scan_skip(s, field, avro_schema_fixed_size(schema));
    case AVRO_ENUM:
        rc = scan_long(s, field, &v);
        if (rc == 0 &&
            (v < 0 || v >= avro_schema_enum_number_of_symbols(schema)))
            rc = scan_bad(s, field, "enum index out of range");
        return rc;
    case AVRO_UNION:
        rc = scan_long(s, field, &v);
        if (rc == 0 && (v < 0 || (uint64_t)v >= avro_schema_union_size(schema)))
            rc = scan_bad(s, field, "union branch out of range");
        if (rc == 0)
            rc = scan_value(s, avro_schema_union_branch(schema, (int)v), field);
        return rc;
    case AVRO_RECORD:
        for (i = 0; rc == 0 && i < avro_schema_record_size(schema); i++)
            rc = scan_value(
                s, avro_schema_record_field_get_by_index(schema, (int)i),
                avro_schema_record_field_name(schema, (int)i));
        return rc;
    case AVRO_MAP:
    case AVRO_ARRAY:
    case AVRO_LINK:
        break;
    }
    /* init refuses schemas with other types (check_schema). */
    return scan_bad(s, field, "unsupported schema type");
}

/* The prescan only knows the types of our records; arrays and maps would
 * need block counts bounded by the input, links recursion. */
static int check_schema(avro_schema_t schema, int depth)
{
    size_t i;

    if (depth > MAX_DEPTH)
        return -1;
    switch (avro_typeof(schema)) {
    case AVRO_NULL:
    case AVRO_BOOLEAN:
    case AVRO_INT32:
    case AVRO_INT64:
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
    case AVRO_STRING:
    case AVRO_BYTES:
    case AVRO_FIXED:
    case AVRO_ENUM:
        return 0;
    case AVRO_UNION:
        for (i = 0; i < avro_schema_union_size(schema); i++) {
            if (check_schema(avro_schema_union_branch(schema, (int)i),
                             depth + 1) != 0)
                return -1;
        }
        return 0;
    case AVRO_RECORD:
        for (i = 0; i < avro_schema_record_size(schema); i++) {
            if (check_schema(
                    avro_schema_record_field_get_by_index(schema, (int)i),
                    depth + 1) != 0)
                return -1;
        }
        return 0;
    case AVRO_MAP:
    case AVRO_ARRAY:
    case AVRO_LINK:
        break;
    }
    return -1;
}

/* ================================================================
 * Init and shutdown
 * ================================================================ */

static void teardown_locked(void)
{
    size_t i;

    for (i = 0; i < ARRAY_LEN(codec.recs); i++) {
        struct rec *rec = &codec.recs[i];

        if (rec->value.iface != NULL)
            avro_value_decref(&rec->value);
        rec->value.iface = NULL;
        rec->value.self = NULL;
        if (rec->iface != NULL)
            avro_value_iface_decref(rec->iface);
        rec->iface = NULL;
        if (rec->schema != NULL)
            avro_schema_decref(rec->schema);
        rec->schema = NULL;
        rec->fp = 0;
        rec->json = NULL;
    }
    codec.rec_cnt = 0;
    codec.loaded = NULL;
    if (codec.reader != NULL)
        avro_reader_free(codec.reader);
    codec.reader = NULL;
    if (codec.writer != NULL)
        avro_writer_free(codec.writer);
    codec.writer = NULL;
    codec.is_ready = false;
}

static const char *embedded_json(const char *name)
{
    size_t i;

    for (i = 0; er_embed_avsc_names[i] != NULL; i++) {
        if (strcmp(er_embed_avsc_names[i], name) == 0)
            return er_embed_avsc_texts[i];
    }
    return NULL;
}

static int rec_init(struct rec *rec, struct er_err *err)
{
    struct er_buf canon;
    struct er_err sub;
    int rc = 0;

    er_buf_init(&canon, (size_t)64 * 1024);
    if (rec->json == NULL)
        rec->json = embedded_json(rec->name);
    if (rec->json == NULL) {
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                        "%s.avsc: not embedded", rec->name);
        goto out;
    }
    rc = er_canonical_form(rec->json, &canon, &sub);
    if (rc != 0) {
        rc = er_err_set(err, rc == ER_ENOMEM ? ER_ENOMEM : ER_ESCHEMA,
                        ER_ERRCLASS_FATAL, "%s.avsc: %s", rec->name, sub.msg);
        goto out;
    }
    rec->fp = er_canonical_crc64(canon.data, canon.len);
    if (avro_schema_from_json_length(rec->json, strlen(rec->json),
                                     &rec->schema) != 0) {
        rec->schema = NULL;
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL, "%s.avsc: %s",
                        rec->name, avro_strerror());
        goto out;
    }
    if (avro_typeof(rec->schema) != AVRO_RECORD ||
        check_schema(rec->schema, 0) != 0) {
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                        "%s.avsc: not a record of types the codec supports",
                        rec->name);
        goto out;
    }
    rec->iface = avro_generic_class_from_schema(rec->schema);
    if (rec->iface == NULL) {
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL, "%s.avsc: %s",
                        rec->name, avro_strerror());
        goto out;
    }
    if (avro_generic_value_new(rec->iface, &rec->value) != 0) {
        rec->value.iface = NULL;
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "%s: %s", rec->name,
                        avro_strerror());
        goto out;
    }

out:
    er_buf_fini(&canon);
    return rc;
}

/* The C enums mirror the Avro enums by index; refuse to start if the
 * schemas and the name tables ever drift apart. */
static int check_enum(avro_schema_t schema, const char *const *names,
                      size_t cnt, struct er_err *err)
{
    bool is_same = schema != NULL && avro_typeof(schema) == AVRO_ENUM &&
                   (size_t)avro_schema_enum_number_of_symbols(schema) == cnt;
    size_t i;

    for (i = 0; is_same && i < cnt; i++)
        is_same = strcmp(avro_schema_enum_get(schema, (int)i), names[i]) == 0;
    if (is_same)
        return 0;
    return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                      "schema enum %s does not match the codec's names",
                      schema == NULL ? "(missing)" : avro_schema_name(schema));
}

/* The schema of a record's field; NULL when there is no such field
 * (avro_schema_record_field_get reads garbage for an unknown name). */
static avro_schema_t schema_field(avro_schema_t rec, const char *name)
{
    int idx;

    if (rec == NULL || avro_typeof(rec) != AVRO_RECORD)
        return NULL;
    idx = avro_schema_record_field_get_index(rec, name);
    if (idx < 0)
        return NULL;
    return avro_schema_record_field_get_by_index(rec, idx);
}

/* The field's schema, or for a nullable field its branch of type. */
static avro_schema_t field_schema(avro_schema_t rec, const char *name,
                                  avro_type_t type)
{
    avro_schema_t s = schema_field(rec, name);
    int b;

    if (s == NULL || avro_typeof(s) != AVRO_UNION)
        return s;
    b = branch_of(s, type, NULL);
    return b < 0 ? NULL : avro_schema_union_branch(s, b);
}

static int check_enums(struct er_err *err)
{
    avro_schema_t res = codec.recs[ER_REC_COMMAND_RESULT].schema;
    avro_schema_t cmd = codec.recs[ER_REC_RUN_COMMAND].schema;
    avro_schema_t un = schema_field(cmd, "command");
    avro_schema_t rel = NULL;
    size_t i;
    int rc;

    for (i = 0; i < ARRAY_LEN(cmd_branches); i++) {
        if (un == NULL || avro_typeof(un) != AVRO_UNION ||
            branch_of(un, AVRO_RECORD, cmd_branches[i]) != (int)i)
            return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                              "RunCommand.avsc: command branch %zu is not %s",
                              i, cmd_branches[i]);
    }
    rel = avro_schema_union_branch(un, ER_CMD_RELEASE);
    rc = check_enum(field_schema(res, "kind", AVRO_ENUM), kind_names,
                    ARRAY_LEN(kind_names), err);
    if (rc == 0)
        rc = check_enum(field_schema(res, "outcome", AVRO_ENUM), outcome_names,
                        ARRAY_LEN(outcome_names), err);
    if (rc == 0)
        rc = check_enum(field_schema(res, "errorCode", AVRO_ENUM),
                        error_code_names, ARRAY_LEN(error_code_names), err);
    if (rc == 0)
        rc = check_enum(field_schema(rel, "status", AVRO_ENUM),
                        release_status_names, ARRAY_LEN(release_status_names),
                        err);
    return rc;
}

/* The record an earlier version's stem ("RunCommand_1") belongs to. */
static enum er_record_type history_type(const char *stem)
{
    const char *us = strrchr(stem, '_');
    size_t i;

    if (us == NULL || us[1] < '1' || us[1] > '9')
        return ER_REC_UNKNOWN;
    for (i = 0; i < REC_CNT; i++) {
        if (strlen(codec.recs[i].name) == (size_t)(us - stem) &&
            strncmp(codec.recs[i].name, stem, (size_t)(us - stem)) == 0)
            return codec.recs[i].type;
    }
    return ER_REC_UNKNOWN;
}

/* Load schemas/avro/history/: each file an earlier version of a record,
 * named <Record>_<n>.avsc, whose values are still read. */
static int history_init(struct er_err *err)
{
    size_t i;
    size_t k;
    int rc;

    for (i = 0; er_embed_avsc_history_names[i] != NULL; i++) {
        struct rec *rec = &codec.recs[REC_CNT + i];

        if (i >= HISTORY_MAX)
            return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                              "schemas/avro/history: more than %d versions",
                              HISTORY_MAX);
        rec->name = er_embed_avsc_history_names[i];
        rec->json = er_embed_avsc_history_texts[i];
        rec->type = history_type(rec->name);
        codec.rec_cnt++;
        if (rec->type == ER_REC_UNKNOWN)
            return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                              "history/%s.avsc: not <Record>_<n> of a "
                              "record of schemas/avro",
                              rec->name);
        rc = rec_init(rec, err);
        if (rc != 0)
            return rc;
        for (k = 0; k < REC_CNT + i; k++) {
            if (codec.recs[k].fp == rec->fp)
                return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                                  "history/%s.avsc: same canonical form as "
                                  "%s",
                                  rec->name, codec.recs[k].name);
        }
    }
    return 0;
}

int er_codec_init(struct er_err *err)
{
    static const char empty[1] = { 0 };
    size_t i;
    int rc = 0;

    pthread_mutex_lock(&codec.mu);
    if (codec.is_ready)
        goto out;
    avro_set_allocator(avro_alloc, NULL);
    for (i = 0; rc == 0 && i < REC_CNT; i++)
        rc = rec_init(&codec.recs[i], err);
    codec.rec_cnt = REC_CNT;
    if (rc == 0)
        rc = check_enums(err);
    if (rc == 0)
        rc = history_init(err);
    if (rc != 0)
        goto out;
    codec.reader = avro_reader_memory(empty, 0);
    codec.writer = avro_writer_memory(empty, 0);
    if (codec.reader == NULL || codec.writer == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                        "codec init: out of memory");
        goto out;
    }
    codec.is_ready = true;

out:
    if (rc != 0)
        teardown_locked();
    pthread_mutex_unlock(&codec.mu);
    return rc;
}

void er_codec_shutdown(void)
{
    pthread_mutex_lock(&codec.mu);
    teardown_locked();
    pthread_mutex_unlock(&codec.mu);
}

uint64_t er_codec_fingerprint(enum er_record_type type)
{
    uint64_t fp = 0;

    if ((int)type < 0 || (int)type >= REC_CNT)
        return 0;
    pthread_mutex_lock(&codec.mu);
    fp = codec.recs[type].fp;
    pthread_mutex_unlock(&codec.mu);
    return fp;
}

uint64_t er_codec_version_fingerprint(const char *name)
{
    uint64_t fp = 0;
    size_t i;

    pthread_mutex_lock(&codec.mu);
    for (i = 0; name != NULL && i < codec.rec_cnt; i++) {
        if (strcmp(codec.recs[i].name, name) == 0)
            fp = codec.recs[i].fp;
    }
    pthread_mutex_unlock(&codec.mu);
    return fp;
}

const char *er_codec_schema_json(enum er_record_type type)
{
    if ((int)type < 0 || (int)type >= REC_CNT)
        return NULL;
    return embedded_json(codec.recs[type].name);
}

/* ================================================================
 * Framing
 * ================================================================ */

/* The record (*type) and the version (*recp, may be NULL) of a value. */
static int identify_locked(const uint8_t *buf, size_t len,
                           enum er_record_type *type, struct rec **recp,
                           struct er_err *err)
{
    uint64_t fp;
    size_t i;

    *type = ER_REC_UNKNOWN;
    if (buf == NULL || len == 0)
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_SKIP, "empty value");
    /* Confluent wire format: 0x00, 4-byte schema id, Avro binary. */
    if (buf[0] == 0x00 && len >= 5)
        return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_SKIP,
                          "confluent-framed value needs a schema registry "
                          "(ENVRUN_SCHEMA_REGISTRY_URL is unset)");
    if (len < HDR_LEN)
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_SKIP,
                          "value too short (%zu bytes) for single-object "
                          "encoding",
                          len);
    if (buf[0] != MAGIC0 || buf[1] != MAGIC1)
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_SKIP,
                          "not single-object encoded (starts 0x%02x%02x, "
                          "want 0xc301)",
                          buf[0], buf[1]);
    fp = er_codec__load_le64(buf + 2);
    for (i = 0; i < codec.rec_cnt; i++) {
        if (codec.recs[i].fp == fp) {
            *type = codec.recs[i].type;
            if (recp != NULL)
                *recp = &codec.recs[i];
            return 0;
        }
    }
    return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_SKIP,
                      "unknown schema fingerprint 0x%016" PRIx64, fp);
}

int er_codec_identify(const uint8_t *buf, size_t len, enum er_record_type *type,
                      struct er_err *err)
{
    int rc;

    ER_ASSERT(type != NULL);

    pthread_mutex_lock(&codec.mu);
    if (!codec.is_ready) {
        *type = ER_REC_UNKNOWN;
        rc = not_ready(err);
    } else {
        rc = identify_locked(buf, len, type, NULL, err);
    }
    pthread_mutex_unlock(&codec.mu);
    return rc;
}

/* Identify, prescan and read a value into its record's reused avro value
 * (borrowed until the lock is released). */
static int load_locked(const uint8_t *buf, size_t len,
                       enum er_record_type *type, avro_value_t **root,
                       struct er_err *err)
{
    struct rec *rec = NULL;
    struct scan s;
    int rc;

    if (!codec.is_ready)
        return not_ready(err);
    if (len > VALUE_MAX)
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_SKIP,
                          "value of %zu bytes is over the %d-byte cap", len,
                          ER_CMD_VALUE_MAX_BYTES);
    rc = identify_locked(buf, len, type, &rec, err);
    if (rc != 0)
        return rc;
    ER_ASSERT(rec != NULL); /* identify_locked sets it on success */
    codec.loaded = rec;
    s.p = buf + HDR_LEN;
    s.len = len - HDR_LEN;
    s.off = 0;
    s.err = err;
    rc = scan_value(&s, rec->schema, rec->name);
    if (rc != 0)
        return rc;
    if (s.off != s.len)
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_SKIP,
                          "%s: %zu trailing bytes after the value", rec->name,
                          s.len - s.off);
    avro_reader_memory_set_source(codec.reader, (const char *)s.p,
                                  (int64_t)s.len);
    rc = avro_value_read(codec.reader, &rec->value);
    if (rc != 0)
        return avro_err(err, ER_EBADMSG, ER_ERRCLASS_SKIP, rec->name, rc);
    *root = &rec->value;
    return 0;
}

/* Wipe and drop the hostApiToken a RunCommand value may hold. */
static void scrub_token_locked(avro_value_t *root)
{
    avro_value_t un;
    avro_value_t body;
    avro_value_t tok;
    avro_value_t str;
    const char *p = NULL;
    size_t size = 0;
    size_t i;
    int idx;

    if (avro_value_get_by_name(root, "command", &un, NULL) != 0 ||
        avro_value_get_current_branch(&un, &body) != 0 ||
        avro_value_get_by_name(&body, "hostApiToken", &tok, NULL) != 0 ||
        avro_value_get_current_branch(&tok, &str) != 0 ||
        avro_value_get_type(&str) != AVRO_STRING)
        return;
    /* avro-c hands out its own (writable) buffer as const; with size 1 it
     * may instead be a static "", which must not be written. */
    if (avro_value_get_string(&str, &p, &size) == 0 && size > 1) {
        union {
            const char *ro;
            volatile char *rw;
        } buf = { .ro = p };

        for (i = 0; i < size; i++)
            buf.rw[i] = 0;
    }
    idx = branch_of(avro_value_get_schema(&tok), AVRO_NULL, NULL);
    if (idx >= 0)
        (void)avro_value_set_branch(&tok, idx, &str);
}

/* Finish a call on a record's value (the version a decode read, else the
 * current record of type) and release the lock. The strings a read gave
 * the value are freed now rather than at the next call, and a token is
 * wiped first (contract.md 6: a secret stays in memory only while the
 * operation needs it). */
static void end_locked(enum er_record_type type)
{
    struct rec *rec = codec.loaded;

    codec.loaded = NULL;
    if (rec == NULL && (int)type >= 0 && (int)type < REC_CNT)
        rec = &codec.recs[type];
    if (codec.is_ready && rec != NULL) {
        if (rec->type == ER_REC_RUN_COMMAND)
            scrub_token_locked(&rec->value);
        (void)avro_value_reset(&rec->value);
    }
    pthread_mutex_unlock(&codec.mu);
}

/* ================================================================
 * Reading fields of a decoded value
 * ================================================================ */

static int get_field(avro_value_t *rec, const char *name, avro_value_t *out,
                     struct er_err *err)
{
    if (avro_value_get_by_name(rec, name, out, NULL) != 0)
        return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                          "schema has no field %s", name);
    return 0;
}

/* Step into a union's current branch; *is_null when it is null. Values
 * that are not unions are left as they are. */
static int unwrap(avro_value_t *v, bool *is_null, struct er_err *err)
{
    avro_value_t branch;

    *is_null = false;
    if (avro_value_get_type(v) != AVRO_UNION)
        return 0;
    if (avro_value_get_current_branch(v, &branch) != 0)
        return avro_err(err, ER_EBADMSG, ER_ERRCLASS_SKIP, "union", EINVAL);
    *v = branch;
    *is_null = avro_value_get_type(v) == AVRO_NULL;
    return 0;
}

/* A string field without NUL bytes and in UTF-8; (NULL, 0) when null. */
static int get_raw(avro_value_t *rec, const char *name, const char **s,
                   size_t *len, struct er_err *err)
{
    avro_value_t v;
    bool is_null = false;
    size_t size = 0;
    int rc;

    *s = NULL;
    *len = 0;
    rc = get_field(rec, name, &v, err);
    if (rc == 0)
        rc = unwrap(&v, &is_null, err);
    if (rc != 0 || is_null)
        return rc;
    if (avro_value_get_string(&v, s, &size) != 0 || size == 0)
        return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                          "%s: not a string", name);
    *len = size - 1; /* avro-c counts the NUL it appends */
    if (memchr(*s, '\0', *len) != NULL)
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_SKIP,
                          "%s: contains a NUL byte", name);
    if (!er_validate__utf8(*s, *len))
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_SKIP,
                          "%s: not valid utf-8", name);
    return 0;
}

static int get_strs(avro_value_t *rec, const struct field *fields, size_t cnt,
                    struct er_run_command *cmd, struct er_err *err)
{
    size_t i;

    for (i = 0; i < cnt; i++) {
        char **dst = (char **)((char *)cmd + fields[i].off);
        const char *s;
        size_t len;
        int rc = get_raw(rec, fields[i].name, &s, &len, err);

        if (rc != 0)
            return rc;
        if (s == NULL)
            continue;
        *dst = er_strndup(s, len);
        if (*dst == NULL)
            return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY,
                              "%s: out of memory", fields[i].name);
    }
    return 0;
}

static int get_long(avro_value_t *rec, const char *name, int64_t *out,
                    struct er_err *err)
{
    avro_value_t v;
    int rc = get_field(rec, name, &v, err);

    if (rc == 0 && avro_value_get_long(&v, out) != 0)
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL, "%s: not a long",
                        name);
    return rc;
}

static int get_enum(avro_value_t *rec, const char *name, int *out,
                    struct er_err *err)
{
    avro_value_t v;
    int rc = get_field(rec, name, &v, err);

    if (rc == 0 && avro_value_get_enum(&v, out) != 0)
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL, "%s: not an enum",
                        name);
    return rc;
}

/* A nullable timestamp a record's earlier versions may lack: 0 when null
 * or absent, else a time from 1970 to the end of 9999. */
static int get_opt_time(avro_value_t *rec, const char *name, int64_t *out,
                        struct er_err *err)
{
    avro_value_t v;
    bool is_null = false;
    int rc;

    *out = 0;
    if (avro_value_get_by_name(rec, name, &v, NULL) != 0)
        return 0;
    rc = unwrap(&v, &is_null, err);
    if (rc != 0 || is_null)
        return rc;
    if (avro_value_get_long(&v, out) != 0)
        return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL, "%s: not a long",
                          name);
    if (*out <= 0 || *out > ER_TIME_MAX_MS)
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_SKIP,
                          "%s: %" PRId64 " is not a time between 1970 and "
                          "9999",
                          name, *out);
    return 0;
}

/* ================================================================
 * RunCommand
 * ================================================================ */

void er_codec_command_fini(struct er_run_command *cmd)
{
    if (cmd == NULL)
        return;
    er_free(cmd->command_id);
    er_free(cmd->company_id);
    er_free(cmd->agent_id);
    er_free(cmd->heartbeat_run_id);
    er_free(cmd->traceparent);
    er_free(cmd->selected_environment_id);
    er_free(cmd->execution_workspace_mode);
    er_free(cmd->adapter_type);
    er_free(cmd->issue_id);
    er_free(cmd->execution_workspace_id);
    er_free(cmd->lease_id);
    er_free(cmd->workspace_json);
    er_free(cmd->requested_mode);
    er_free(cmd->runtime_overlay_json);
    er_free(cmd->failure_reason);
    er_secret_fini(&cmd->host_api_token);
    memset(cmd, 0, sizeof(*cmd));
}

static int get_command_body(avro_value_t *root, struct er_run_command *cmd,
                            struct er_err *err)
{
    avro_value_t un;
    avro_value_t body;
    const char *branch;
    int status = 0;
    int rc;

    rc = get_field(root, "command", &un, err);
    if (rc != 0)
        return rc;
    if (avro_value_get_current_branch(&un, &body) != 0)
        return avro_err(err, ER_EBADMSG, ER_ERRCLASS_SKIP, "command", EINVAL);
    branch = avro_schema_name(avro_value_get_schema(&body));
    if (strcmp(branch, cmd_branches[ER_CMD_ACQUIRE]) == 0) {
        cmd->kind = ER_CMD_ACQUIRE;
        rc = get_strs(&body, acquire_strs, ARRAY_LEN(acquire_strs), cmd, err);
        if (rc == 0)
            rc = get_opt_time(&body, "requestedExpiresAt",
                              &cmd->requested_expires_at_ms, err);
        return rc;
    }
    if (strcmp(branch, cmd_branches[ER_CMD_REALIZE]) == 0) {
        const char *tok;
        size_t tok_len;

        cmd->kind = ER_CMD_REALIZE;
        rc = get_strs(&body, realize_strs, ARRAY_LEN(realize_strs), cmd, err);
        if (rc == 0)
            rc = get_raw(&body, "hostApiToken", &tok, &tok_len, err);
        if (rc == 0 && tok != NULL &&
            er_secret_set(&cmd->host_api_token, tok, tok_len) != 0)
            rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY,
                            "hostApiToken: out of memory");
        return rc;
    }
    cmd->kind = ER_CMD_RELEASE;
    rc = get_enum(&body, "status", &status, err);
    if (rc != 0)
        return rc;
    cmd->release_status = (enum er_release_status)status;
    return get_strs(&body, release_strs, ARRAY_LEN(release_strs), cmd, err);
}

static int wrong_type(enum er_record_type type, struct er_err *err)
{
    return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_SKIP,
                      "value holds %s, not RunCommand", codec.recs[type].name);
}

int er_codec_command_decode(const uint8_t *buf, size_t len,
                            struct er_run_command *cmd, struct er_err *err)
{
    enum er_record_type type = ER_REC_UNKNOWN;
    avro_value_t *root = NULL;
    int rc;

    ER_ASSERT(cmd != NULL);

    memset(cmd, 0, sizeof(*cmd));
    pthread_mutex_lock(&codec.mu);
    rc = load_locked(buf, len, &type, &root, err);
    if (rc != 0)
        goto out;
    if (type != ER_REC_RUN_COMMAND) {
        rc = wrong_type(type, err);
        goto out;
    }
    rc = get_strs(root, cmd_strs, ARRAY_LEN(cmd_strs), cmd, err);
    if (rc == 0)
        rc = get_long(root, "issuedAt", &cmd->issued_at_ms, err);
    if (rc == 0)
        rc = get_command_body(root, cmd, err);

out:
    end_locked(type);
    if (rc != 0)
        er_codec_command_fini(cmd);
    return rc;
}

/* A string of the RunCommand prefix, read without avro-c. */
static int peek_str(struct scan *s, char **out)
{
    int64_t n = 0;
    const char *p;

    if (scan_long(s, "", &n) != 0)
        return ER_EBADMSG;
    p = (const char *)s->p + s->off;
    if (scan_skip(s, "", n) != 0 || memchr(p, '\0', (size_t)n) != NULL)
        return ER_EBADMSG;
    *out = er_strndup(p, (size_t)n);
    return *out == NULL ? ER_ENOMEM : 0;
}

/* Skip a ["null", "string"] union of the RunCommand prefix. */
static int skip_opt_str(struct scan *s)
{
    int64_t branch = 0;
    int64_t n = 0;

    if (scan_long(s, "", &branch) != 0 || (branch != 0 && branch != 1))
        return ER_EBADMSG;
    if (branch == 0)
        return 0;
    if (scan_long(s, "", &n) != 0 || scan_skip(s, "", n) != 0)
        return ER_EBADMSG;
    return 0;
}

int er_codec_command_peek_kind(const uint8_t *buf, size_t len,
                               enum er_cmd_kind *kind, size_t *body_off)
{
    enum er_record_type type = ER_REC_UNKNOWN;
    struct scan s;
    int64_t v = 0;
    int i;
    int rc;

    pthread_mutex_lock(&codec.mu);
    rc = codec.is_ready ? identify_locked(buf, len, &type, NULL, NULL)
                        : ER_EINVAL;
    pthread_mutex_unlock(&codec.mu);
    if (rc != 0 || type != ER_REC_RUN_COMMAND)
        return ER_EBADMSG;
    /* commandId, issuedAt, companyId, agentId, heartbeatRunId and
     * traceparent come before the command union. */
    s.p = buf + HDR_LEN;
    s.len = len - HDR_LEN;
    s.off = 0;
    s.err = NULL;
    if (scan_long(&s, "", &v) != 0 || scan_skip(&s, "", v) != 0 ||
        scan_long(&s, "", &v) != 0)
        return ER_EBADMSG;
    for (i = 0; i < 2; i++) {
        if (scan_long(&s, "", &v) != 0 || scan_skip(&s, "", v) != 0)
            return ER_EBADMSG;
    }
    if (skip_opt_str(&s) != 0 || skip_opt_str(&s) != 0)
        return ER_EBADMSG;
    *body_off = HDR_LEN + s.off;
    if (scan_long(&s, "", &v) != 0)
        return ER_EBADMSG;
    switch (v) {
    case 0:
        *kind = ER_CMD_ACQUIRE;
        return 0;
    case 1:
        *kind = ER_CMD_REALIZE;
        return 0;
    case 2:
        *kind = ER_CMD_RELEASE;
        return 0;
    default:
        return ER_EBADMSG;
    }
}

int er_codec_command_peek_ids(const uint8_t *buf, size_t len, char **command_id,
                              char **company_id)
{
    enum er_record_type type = ER_REC_UNKNOWN;
    struct scan s;
    int64_t issued_at = 0;
    int rc;

    ER_ASSERT(command_id != NULL && company_id != NULL);

    *command_id = NULL;
    *company_id = NULL;
    pthread_mutex_lock(&codec.mu);
    rc = codec.is_ready ? identify_locked(buf, len, &type, NULL, NULL)
                        : ER_EINVAL;
    pthread_mutex_unlock(&codec.mu);
    if (rc != 0 || type != ER_REC_RUN_COMMAND) {
        rc = ER_EBADMSG;
        goto out;
    }
    /* Only the layout of RunCommand's first three fields is assumed:
     * commandId string, issuedAt long, companyId string. */
    s.p = buf + HDR_LEN;
    s.len = len - HDR_LEN;
    s.off = 0;
    s.err = NULL;
    rc = peek_str(&s, command_id);
    if (rc == 0)
        rc = scan_long(&s, "", &issued_at) == 0 ? 0 : ER_EBADMSG;
    if (rc == 0)
        rc = peek_str(&s, company_id);

out:
    if (rc != 0) {
        er_free(*command_id);
        er_free(*company_id);
        *command_id = NULL;
        *company_id = NULL;
        rc = ER_EBADMSG;
    }
    return rc;
}

/* ================================================================
 * Encoding
 * ================================================================ */

/* Select the branch of a nullable union (or keep a plain value): null when
 * is_null, else the branch of the given type. */
static int select_branch(avro_value_t *v, const char *name, bool is_null,
                         avro_type_t type, struct er_err *err)
{
    avro_value_t branch;
    int idx;

    if (avro_value_get_type(v) != AVRO_UNION) {
        if (is_null)
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                              "%s: missing (the field is required)", name);
        return 0;
    }
    idx = branch_of(avro_value_get_schema(v), is_null ? AVRO_NULL : type, NULL);
    if (idx < 0 || avro_value_set_branch(v, idx, &branch) != 0)
        return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                          "%s: union has no such branch", name);
    *v = branch;
    if (is_null && avro_value_set_null(v) != 0)
        return avro_err(err, ER_EINVAL, ER_ERRCLASS_FATAL, name, EINVAL);
    return 0;
}

static int set_str_len(avro_value_t *rec, const char *name, const char *s,
                       size_t len, struct er_err *err)
{
    avro_value_t v;
    int rc;

    rc = get_field(rec, name, &v, err);
    if (rc == 0)
        rc = select_branch(&v, name, s == NULL, AVRO_STRING, err);
    if (rc != 0 || s == NULL)
        return rc;
    if (len > VALUE_MAX)
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_SKIP,
                          "%s: longer than %d bytes", name,
                          ER_CMD_VALUE_MAX_BYTES);
    /* avro-c's length counts the terminating NUL, which it copies too. */
    rc = avro_value_set_string_len(&v, s, len + 1);
    if (rc != 0)
        return avro_err(err, ER_EINVAL, ER_ERRCLASS_FATAL, name, rc);
    return 0;
}

static int set_str(avro_value_t *rec, const char *name, const char *s,
                   struct er_err *err)
{
    return set_str_len(rec, name, s, s == NULL ? 0 : strlen(s), err);
}

/* A long; a negative one is null where the field is nullable. */
static int set_long(avro_value_t *rec, const char *name, int64_t n,
                    struct er_err *err)
{
    avro_value_t v;
    int rc;

    rc = get_field(rec, name, &v, err);
    if (rc != 0)
        return rc;
    if (avro_value_get_type(&v) != AVRO_UNION)
        return avro_value_set_long(&v, n) == 0
                   ? 0
                   : avro_err(err, ER_EINVAL, ER_ERRCLASS_FATAL, name, EINVAL);
    rc = select_branch(&v, name, n < 0, AVRO_INT64, err);
    if (rc == 0 && n >= 0 && avro_value_set_long(&v, n) != 0)
        rc = avro_err(err, ER_EINVAL, ER_ERRCLASS_FATAL, name, EINVAL);
    return rc;
}

/* An enum index checked against its symbol count; idx < 0 is null. */
static int set_enum(avro_value_t *rec, const char *name, int idx, size_t cnt,
                    struct er_err *err)
{
    avro_value_t v;
    int rc;

    if (idx >= 0 && (size_t)idx >= cnt)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "%s: %d is not a valid value", name, idx);
    rc = get_field(rec, name, &v, err);
    if (rc == 0)
        rc = select_branch(&v, name, idx < 0, AVRO_ENUM, err);
    if (rc == 0 && idx >= 0 && avro_value_set_enum(&v, idx) != 0)
        rc = avro_err(err, ER_EINVAL, ER_ERRCLASS_FATAL, name, EINVAL);
    return rc;
}

/* The command's members are char * (decode fills them). */
static int set_cmd_strs(avro_value_t *rec, const struct field *fields,
                        size_t cnt, const struct er_run_command *cmd,
                        struct er_err *err)
{
    size_t i;
    int rc = 0;

    for (i = 0; rc == 0 && i < cnt; i++) {
        char *const *src = (char *const *)((const char *)cmd + fields[i].off);

        rc = set_str(rec, fields[i].name, *src, err);
    }
    return rc;
}

/* The events' members are const char * and int64_t. */
static int set_ev_fields(avro_value_t *rec, const struct field *fields,
                         size_t cnt, const void *ev, struct er_err *err)
{
    size_t i;
    int rc = 0;

    for (i = 0; rc == 0 && i < cnt; i++) {
        const char *p = (const char *)ev + fields[i].off;

        if (fields[i].is_long)
            rc = set_long(rec, fields[i].name, *(const int64_t *)p, err);
        else
            rc = set_str(rec, fields[i].name, *(const char *const *)p, err);
    }
    return rc;
}

/* Append the header and the avro binary of the record's value to out. */
static int write_locked(enum er_record_type type, struct er_buf *out,
                        struct er_err *err)
{
    struct rec *rec = &codec.recs[type];
    uint8_t hdr[HDR_LEN];
    char *body = NULL;
    size_t size = 0;
    size_t old_len = out->len;
    int i;
    int rc;

    rc = avro_value_sizeof(&rec->value, &size);
    if (rc != 0) {
        rc = avro_err(err, ER_EINVAL, ER_ERRCLASS_FATAL, rec->name, rc);
        goto out;
    }
    body = er_malloc(size);
    if (body == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "%s: out of memory",
                        rec->name);
        goto out;
    }
    avro_writer_memory_set_dest(codec.writer, body, (int64_t)size);
    rc = avro_value_write(codec.writer, &rec->value);
    if (rc != 0) {
        rc = avro_err(err, ER_EINVAL, ER_ERRCLASS_FATAL, rec->name, rc);
        goto out;
    }
    hdr[0] = MAGIC0;
    hdr[1] = MAGIC1;
    for (i = 0; i < 8; i++)
        hdr[2 + i] = (uint8_t)(rec->fp >> (8 * i));
    rc = er_buf_append(out, hdr, sizeof(hdr));
    if (rc == 0)
        rc = er_buf_append(out, body, size);
    if (rc != 0) {
        rc = buf_err(err, rc, rec->name);
        buf_truncate(out, old_len);
    }

out:
    er_free(body);
    return rc;
}

/* Take the lock (which the caller releases with end_locked, also on
 * failure) and reset the record's value for an encoder. */
static int begin_encode(enum er_record_type type, avro_value_t **root,
                        struct er_err *err)
{
    pthread_mutex_lock(&codec.mu);
    if (!codec.is_ready)
        return not_ready(err);
    *root = &codec.recs[type].value;
    if (avro_value_reset(*root) != 0)
        return avro_err(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                        codec.recs[type].name, EINVAL);
    return 0;
}

int er_codec_command_encode(const struct er_run_command *cmd,
                            struct er_buf *out, struct er_err *err)
{
    avro_value_t *root = NULL;
    avro_value_t un;
    avro_value_t body;
    int rc;

    ER_ASSERT(cmd != NULL && out != NULL);

    rc = begin_encode(ER_REC_RUN_COMMAND, &root, err);
    if (rc != 0)
        goto out;
    rc = set_cmd_strs(root, cmd_strs, ARRAY_LEN(cmd_strs), cmd, err);
    if (rc == 0)
        rc = set_long(root, "issuedAt", cmd->issued_at_ms, err);
    if (rc == 0)
        rc = get_field(root, "command", &un, err);
    if (rc != 0)
        goto out;
    if ((int)cmd->kind < 0 || (size_t)cmd->kind >= ARRAY_LEN(cmd_branches)) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                        "command: unknown kind %d", (int)cmd->kind);
        goto out;
    }
    /* check_enums made sure branch i is the record of kind i. */
    if (avro_value_set_branch(&un, (int)cmd->kind, &body) != 0) {
        rc = avro_err(err, ER_EINVAL, ER_ERRCLASS_FATAL, "command", EINVAL);
        goto out;
    }
    switch (cmd->kind) {
    case ER_CMD_ACQUIRE:
        rc = set_cmd_strs(&body, acquire_strs, ARRAY_LEN(acquire_strs), cmd,
                          err);
        if (rc == 0)
            rc = set_long(&body, "requestedExpiresAt",
                          cmd->requested_expires_at_ms > 0
                              ? cmd->requested_expires_at_ms
                              : -1,
                          err);
        break;
    case ER_CMD_REALIZE:
        rc = set_cmd_strs(&body, realize_strs, ARRAY_LEN(realize_strs), cmd,
                          err);
        if (rc == 0)
            rc = set_str_len(&body, "hostApiToken", cmd->host_api_token.value,
                             cmd->host_api_token.len, err);
        break;
    case ER_CMD_RELEASE:
        rc = set_enum(&body, "status", (int)cmd->release_status,
                      ARRAY_LEN(release_status_names), err);
        if (rc == 0)
            rc = set_cmd_strs(&body, release_strs, ARRAY_LEN(release_strs), cmd,
                              err);
        break;
    }
    if (rc == 0)
        rc = write_locked(ER_REC_RUN_COMMAND, out, err);

out:
    end_locked(ER_REC_RUN_COMMAND);
    return rc;
}

int er_codec_result_encode(const struct er_command_result *res,
                           struct er_buf *out, struct er_err *err)
{
    avro_value_t *root = NULL;
    int rc;

    ER_ASSERT(res != NULL && out != NULL);

    rc = begin_encode(ER_REC_COMMAND_RESULT, &root, err);
    if (rc == 0)
        rc = set_ev_fields(root, result_fields, ARRAY_LEN(result_fields), res,
                           err);
    if (rc == 0)
        rc = set_enum(root, "kind", (int)res->kind, ARRAY_LEN(kind_names), err);
    if (rc == 0)
        rc = set_enum(root, "outcome", (int)res->outcome,
                      ARRAY_LEN(outcome_names), err);
    if (rc == 0 && res->error_code < ER_EC_NONE)
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                        "errorCode: %d is not a valid value",
                        (int)res->error_code);
    if (rc == 0)
        rc = set_enum(root, "errorCode", (int)res->error_code,
                      ARRAY_LEN(error_code_names), err);
    if (rc == 0)
        rc = write_locked(ER_REC_COMMAND_RESULT, out, err);
    end_locked(ER_REC_COMMAND_RESULT);
    return rc;
}

int er_codec_lease_event_encode(const struct er_lease_event *ev,
                                struct er_buf *out, struct er_err *err)
{
    avro_value_t *root = NULL;
    int rc;

    ER_ASSERT(ev != NULL && out != NULL);

    rc = begin_encode(ER_REC_LEASE_EVENT, &root, err);
    if (rc == 0)
        rc =
            set_ev_fields(root, lease_fields, ARRAY_LEN(lease_fields), ev, err);
    if (rc == 0)
        rc = write_locked(ER_REC_LEASE_EVENT, out, err);
    end_locked(ER_REC_LEASE_EVENT);
    return rc;
}

int er_codec_activity_event_encode(const struct er_activity_event *ev,
                                   struct er_buf *out, struct er_err *err)
{
    avro_value_t *root = NULL;
    int rc;

    ER_ASSERT(ev != NULL && out != NULL);

    rc = begin_encode(ER_REC_ACTIVITY_EVENT, &root, err);
    if (rc == 0)
        rc = set_ev_fields(root, activity_fields, ARRAY_LEN(activity_fields),
                           ev, err);
    if (rc == 0)
        rc = write_locked(ER_REC_ACTIVITY_EVENT, out, err);
    end_locked(ER_REC_ACTIVITY_EVENT);
    return rc;
}

/* ================================================================
 * JSON rendering
 * ================================================================ */

static int json_value(struct er_buf *out, avro_value_t *v, int depth);

static int json_put(struct er_buf *out, const char *s)
{
    return er_buf_append(out, s, strlen(s));
}

/* A record as an object; type_name, when set, goes first as "type". */
static int json_record(struct er_buf *out, avro_value_t *v,
                       const char *type_name, int depth)
{
    size_t cnt = 0;
    size_t i;
    int rc;

    if (avro_value_get_size(v, &cnt) != 0)
        return ER_EBADMSG;
    rc = json_put(out, "{");
    if (rc == 0 && type_name != NULL) {
        rc = json_put(out, "\"type\":");
        if (rc == 0)
            rc = er_canonical__json_str(out, type_name, strlen(type_name));
    }
    for (i = 0; rc == 0 && i < cnt; i++) {
        avro_value_t child;
        avro_value_t branch;
        const char *name = NULL;

        if (avro_value_get_by_index(v, i, &child, &name) != 0)
            return ER_EBADMSG;
        if (i != 0 || type_name != NULL)
            rc = json_put(out, ",");
        if (rc == 0)
            rc = er_canonical__json_str(out, name, strlen(name));
        if (rc == 0)
            rc = json_put(out, ":");
        if (rc != 0)
            break;
        /* contract.md 4: the token is never published, not even to a
         * terminal. */
        if (strcmp(name, "hostApiToken") == 0 &&
            avro_value_get_type(&child) == AVRO_UNION &&
            avro_value_get_current_branch(&child, &branch) == 0 &&
            avro_value_get_type(&branch) != AVRO_NULL)
            rc = json_put(out, "\"<redacted>\"");
        else
            rc = json_value(out, &child, depth + 1);
    }
    if (rc == 0)
        rc = json_put(out, "}");
    return rc;
}

static int json_value(struct er_buf *out, avro_value_t *v, int depth)
{
    avro_value_t branch;
    const void *bytes = NULL;
    const char *str = NULL;
    size_t size = 0;
    int64_t n64 = 0;
    int32_t n32 = 0;
    double d = 0;
    float f = 0;
    int i = 0;

    if (depth > MAX_DEPTH)
        return ER_EBADMSG;
    switch (avro_value_get_type(v)) {
    case AVRO_NULL:
        return json_put(out, "null");
    case AVRO_BOOLEAN:
        if (avro_value_get_boolean(v, &i) != 0)
            return ER_EBADMSG;
        return json_put(out, i ? "true" : "false");
    case AVRO_INT32:
        if (avro_value_get_int(v, &n32) != 0)
            return ER_EBADMSG;
        return er_buf_printf(out, "%" PRId32, n32);
    case AVRO_INT64:
        if (avro_value_get_long(v, &n64) != 0)
            return ER_EBADMSG;
        return er_buf_printf(out, "%" PRId64, n64);
    case AVRO_FLOAT:
        if (avro_value_get_float(v, &f) != 0)
            return ER_EBADMSG;
        d = f;
        return isfinite(d) ? er_buf_printf(out, "%.9g", d)
                           : json_put(out, "null");
    case AVRO_DOUBLE:
        if (avro_value_get_double(v, &d) != 0)
            return ER_EBADMSG;
        return isfinite(d) ? er_buf_printf(out, "%.17g", d)
                           : json_put(out, "null");
    case AVRO_STRING:
        if (avro_value_get_string(v, &str, &size) != 0 || size == 0)
            return ER_EBADMSG;
        return er_canonical__json_str(out, str, size - 1);
    case AVRO_BYTES:
        if (avro_value_get_bytes(v, &bytes, &size) != 0)
            return ER_EBADMSG;
        return er_canonical__json_str(out, bytes, size);
    case AVRO_FIXED:
        if (avro_value_get_fixed(v, &bytes, &size) != 0)
            return ER_EBADMSG;
        return er_canonical__json_str(out, bytes, size);
    case AVRO_ENUM:
        if (avro_value_get_enum(v, &i) != 0 || i < 0 ||
            i >= avro_schema_enum_number_of_symbols(avro_value_get_schema(v)))
            return ER_EBADMSG;
        str = avro_schema_enum_get(avro_value_get_schema(v), i);
        return er_canonical__json_str(out, str, strlen(str));
    case AVRO_RECORD:
        return json_record(out, v, NULL, depth);
    case AVRO_UNION:
        if (avro_value_get_current_branch(v, &branch) != 0)
            return ER_EBADMSG;
        /* A record branch says which record it is (the command union). */
        if (avro_value_get_type(&branch) == AVRO_RECORD)
            return json_record(out, &branch,
                               avro_schema_name(avro_value_get_schema(&branch)),
                               depth + 1);
        return json_value(out, &branch, depth + 1);
    case AVRO_MAP:
    case AVRO_ARRAY:
    case AVRO_LINK:
        break;
    }
    return ER_EBADMSG;
}

int er_codec_to_json(const uint8_t *buf, size_t len, struct er_buf *out,
                     struct er_err *err)
{
    enum er_record_type type = ER_REC_UNKNOWN;
    avro_value_t *root = NULL;
    size_t old_len = 0;
    int rc;

    ER_ASSERT(out != NULL);

    old_len = out->len;
    pthread_mutex_lock(&codec.mu);
    rc = load_locked(buf, len, &type, &root, err);
    if (rc != 0)
        goto out;
    rc = json_value(out, root, 0);
    if (rc == ER_EBADMSG)
        rc = er_err_set(err, rc, ER_ERRCLASS_SKIP,
                        "%s: value cannot be rendered as JSON",
                        codec.recs[type].name);
    else if (rc != 0)
        rc = buf_err(err, rc, "json");

out:
    end_locked(type);
    if (rc != 0)
        buf_truncate(out, old_len);
    return rc;
}
