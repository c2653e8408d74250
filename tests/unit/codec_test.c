/* codec_test: round trips of the four records, framing and hostile input
 * for the single-object codec, and JSON rendering. Cases run in one
 * thread except the concurrency case; each group owns the codec between
 * its setup and teardown. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <avro.h>
#include <cmocka.h>

#include "schemas/schemas.h"

#define CMD_ID  "6f1c2a9e-0b1d-4c3e-9f21-5a7b8c9d0e1f"
#define COMP_ID "0d5e7f60-1a2b-4c3d-8e9f-a0b1c2d3e4f5"
#define AGENT   "11111111-2222-4333-8444-555555555555"
#define RUN_ID  "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
#define ENV_ID  "99999999-8888-4777-8666-555555555555"
#define LEASE   "12345678-9abc-4def-8123-456789abcdef"
#define TOKEN   "pcp_secret_token_value_1234567890"

/* ================================================================
 * Helpers
 * ================================================================ */

static int setup(void **state)
{
    struct er_err err;

    (void)state;
    er_err_clear(&err);
    return er_codec_init(&err);
}

static int teardown(void **state)
{
    (void)state;
    er_codec_shutdown();
    return 0;
}

/* Hand-built Avro binary, to make values avro-c would never write. */
struct wire {
    uint8_t buf[4096];
    size_t len;
};

static void w_raw(struct wire *w, const void *p, size_t n)
{
    assert_true(w->len + n <= sizeof(w->buf));
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void w_long(struct wire *w, int64_t v)
{
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    uint8_t b;

    while (u > 0x7f) {
        b = (uint8_t)((u & 0x7f) | 0x80);
        w_raw(w, &b, 1);
        u >>= 7;
    }
    b = (uint8_t)u;
    w_raw(w, &b, 1);
}

static void w_bytes(struct wire *w, const char *s, size_t n)
{
    w_long(w, (int64_t)n);
    w_raw(w, s, n);
}

static void w_str(struct wire *w, const char *s)
{
    w_bytes(w, s, strlen(s));
}

static void w_header(struct wire *w, uint64_t fp)
{
    uint8_t hdr[10] = { 0xc3, 0x01 };
    int i;

    for (i = 0; i < 8; i++)
        hdr[2 + i] = (uint8_t)(fp >> (8 * i));
    w->len = 0;
    w_raw(w, hdr, sizeof(hdr));
}

/* RunCommand fields up to and including the command union's branch. */
static void w_cmd_prefix(struct wire *w, int64_t branch)
{
    w_header(w, er_codec_fingerprint(ER_REC_RUN_COMMAND));
    w_str(w, CMD_ID);
    w_long(w, 1700000000000);
    w_str(w, COMP_ID);
    w_str(w, AGENT);
    w_long(w, 1); /* heartbeatRunId: string */
    w_str(w, RUN_ID);
    w_long(w, 0); /* traceparent: null */
    w_long(w, branch);
}

static void w_acquire(struct wire *w, const char *adapter, size_t len)
{
    w_cmd_prefix(w, 0);
    w_long(w, 0); /* selectedEnvironmentId */
    w_bytes(w, adapter, len);
    w_long(w, 0); /* issueId */
    w_long(w, 0); /* executionWorkspaceId */
    w_long(w, 0); /* executionWorkspaceMode */
    w_long(w, 0); /* requestedExpiresAt */
}

/* The fingerprint of schemas/avro/history/RunCommand_1.avsc (RunCommand
 * before AcquireCommand had requestedExpiresAt), from its text. */
static uint64_t fp_run_command_1(void)
{
    struct er_buf canon;
    struct er_err err;
    uint64_t fp;
    size_t i;

    for (i = 0; er_embed_avsc_history_names[i] != NULL; i++) {
        if (strcmp(er_embed_avsc_history_names[i], "RunCommand_1") == 0)
            break;
    }
    assert_non_null(er_embed_avsc_history_names[i]);
    er_buf_init(&canon, 1 << 20);
    assert_int_equal(
        er_canonical_form(er_embed_avsc_history_texts[i], &canon, &err), 0);
    fp = er_canonical_crc64(canon.data, canon.len);
    er_buf_fini(&canon);
    assert_true(fp == er_codec_version_fingerprint("RunCommand_1"));
    return fp;
}

/* An acquire as a producer on RunCommand_1 writes it, byte for byte. */
static void w_acquire_1(struct wire *w, const char *adapter)
{
    size_t len;

    w_acquire(w, adapter, strlen(adapter));
    len = w->len - 1; /* without requestedExpiresAt */
    w_header(w, fp_run_command_1());
    w->len = len;
}

static void init_acquire(struct er_run_command *cmd)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->command_id = CMD_ID;
    cmd->issued_at_ms = 1700000000000;
    cmd->company_id = COMP_ID;
    cmd->agent_id = AGENT;
    cmd->heartbeat_run_id = RUN_ID;
    cmd->kind = ER_CMD_ACQUIRE;
    cmd->adapter_type = "claude_local";
}

static void init_realize(struct er_run_command *cmd)
{
    init_acquire(cmd);
    cmd->kind = ER_CMD_REALIZE;
    cmd->lease_id = LEASE;
    cmd->issue_id = ENV_ID;
    cmd->workspace_json = "{\"cwd\":\"/w\",\"strategy\":\"git_worktree\"}";
    cmd->execution_workspace_id = ENV_ID;
    cmd->requested_mode = "isolated";
    cmd->runtime_overlay_json = "{\"provisionCommand\":\"make\"}";
    cmd->traceparent =
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_int_equal(er_secret_set(&cmd->host_api_token, TOKEN, strlen(TOKEN)),
                     0);
}

/* Whether the bytes hold s (memmem is not POSIX). */
static bool contains(const uint8_t *p, size_t len, const char *s)
{
    size_t n = strlen(s);
    size_t i;

    for (i = 0; i + n <= len; i++) {
        if (memcmp(p + i, s, n) == 0)
            return true;
    }
    return false;
}

static void assert_same_str(const char *want, const char *got)
{
    if (want == NULL)
        assert_null(got);
    else
        assert_string_equal(want, got);
}

static void assert_same_cmd(const struct er_run_command *a,
                            const struct er_run_command *b)
{
    assert_same_str(a->command_id, b->command_id);
    assert_true(a->issued_at_ms == b->issued_at_ms);
    assert_same_str(a->company_id, b->company_id);
    assert_same_str(a->agent_id, b->agent_id);
    assert_same_str(a->heartbeat_run_id, b->heartbeat_run_id);
    assert_same_str(a->traceparent, b->traceparent);
    assert_int_equal(a->kind, b->kind);
    switch (a->kind) {
    case ER_CMD_ACQUIRE:
        assert_same_str(a->selected_environment_id, b->selected_environment_id);
        assert_same_str(a->execution_workspace_mode,
                        b->execution_workspace_mode);
        assert_same_str(a->adapter_type, b->adapter_type);
        assert_same_str(a->issue_id, b->issue_id);
        assert_same_str(a->execution_workspace_id, b->execution_workspace_id);
        assert_true(a->requested_expires_at_ms == b->requested_expires_at_ms);
        break;
    case ER_CMD_REALIZE:
        assert_same_str(a->lease_id, b->lease_id);
        assert_same_str(a->adapter_type, b->adapter_type);
        assert_same_str(a->issue_id, b->issue_id);
        assert_same_str(a->workspace_json, b->workspace_json);
        assert_same_str(a->execution_workspace_id, b->execution_workspace_id);
        assert_same_str(a->requested_mode, b->requested_mode);
        assert_same_str(a->runtime_overlay_json, b->runtime_overlay_json);
        assert_same_str(a->host_api_token.value, b->host_api_token.value);
        assert_int_equal(a->host_api_token.len, b->host_api_token.len);
        break;
    case ER_CMD_RELEASE:
        assert_int_equal(a->release_status, b->release_status);
        assert_same_str(a->failure_reason, b->failure_reason);
        break;
    }
}

/* Every pointer of a finalised command is NULL. */
static void assert_cmd_empty(const struct er_run_command *cmd)
{
    assert_null(cmd->command_id);
    assert_null(cmd->company_id);
    assert_null(cmd->agent_id);
    assert_null(cmd->heartbeat_run_id);
    assert_null(cmd->adapter_type);
    assert_null(cmd->workspace_json);
    assert_null(cmd->host_api_token.value);
}

static void round_trip(const struct er_run_command *cmd)
{
    struct er_run_command got;
    struct er_buf out;
    struct er_err err;
    enum er_record_type type = ER_REC_UNKNOWN;

    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_command_encode(cmd, &out, &err), 0);
    assert_int_equal(er_codec_identify(out.data, out.len, &type, &err), 0);
    assert_int_equal(type, ER_REC_RUN_COMMAND);
    assert_int_equal(er_codec_command_decode(out.data, out.len, &got, &err), 0);
    assert_same_cmd(cmd, &got);
    er_codec_command_fini(&got);
    er_buf_fini(&out);
}

/* Decode must fail with code; returns err for the message. */
static struct er_err decode_fails(const uint8_t *buf, size_t len, int code)
{
    struct er_run_command cmd;
    struct er_err err;

    er_err_clear(&err);
    assert_int_equal(er_codec_command_decode(buf, len, &cmd, &err), code);
    assert_int_equal(err.code, code);
    assert_int_equal(err.cls, ER_ERRCLASS_SKIP);
    assert_cmd_empty(&cmd);
    return err;
}

static void to_json_is(const uint8_t *buf, size_t len, const char *want)
{
    struct er_buf out;
    struct er_err err;

    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_to_json(buf, len, &out, &err), 0);
    assert_string_equal((const char *)out.data, want);
    er_buf_fini(&out);
}

/* ================================================================
 * Round trips
 * ================================================================ */

static void command_round_trips_acquire(void **state)
{
    struct er_run_command cmd;

    (void)state;
    init_acquire(&cmd);
    cmd.selected_environment_id = ENV_ID;
    cmd.issue_id = LEASE;
    cmd.execution_workspace_id = ENV_ID;
    cmd.execution_workspace_mode = "shared";
    cmd.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    round_trip(&cmd);
}

static void command_round_trips_realize_with_token(void **state)
{
    struct er_run_command cmd;

    (void)state;
    init_realize(&cmd);
    round_trip(&cmd);
    er_secret_fini(&cmd.host_api_token);
}

static void command_round_trips_release(void **state)
{
    struct er_run_command cmd;

    (void)state;
    init_acquire(&cmd);
    cmd.kind = ER_CMD_RELEASE;
    cmd.adapter_type = NULL;
    cmd.release_status = ER_RELEASE_FAILED;
    cmd.failure_reason = "agent crashed: exit 137 \xe2\x80\x94 oom";
    round_trip(&cmd);
    cmd.release_status = ER_RELEASE_EXPIRED;
    cmd.failure_reason = NULL;
    round_trip(&cmd);
}

static void command_round_trips_nulls(void **state)
{
    struct er_run_command cmd;

    (void)state;
    init_acquire(&cmd);
    cmd.heartbeat_run_id = NULL;
    cmd.selected_environment_id = "";
    round_trip(&cmd);

    memset(&cmd, 0, sizeof(cmd));
    cmd.command_id = CMD_ID;
    cmd.company_id = COMP_ID;
    cmd.agent_id = AGENT;
    cmd.kind = ER_CMD_REALIZE;
    cmd.adapter_type = "";
    cmd.workspace_json = "{}";
    round_trip(&cmd);
}

static void command_round_trips_requested_expires_at(void **state)
{
    struct er_run_command cmd;

    (void)state;
    init_acquire(&cmd);
    cmd.requested_expires_at_ms = 1800000000123;
    round_trip(&cmd);
    cmd.requested_expires_at_ms = ER_TIME_MAX_MS;
    round_trip(&cmd);
}

/* A producer still on the previous RunCommand (no requestedExpiresAt) is
 * read: the field is null, every other field as written. */
static void decode_reads_acquire_of_the_previous_schema(void **state)
{
    struct er_run_command cmd;
    enum er_cmd_kind kind = ER_CMD_RELEASE;
    enum er_record_type type = ER_REC_UNKNOWN;
    struct er_err err;
    struct wire w;
    size_t body_off = 0;
    char *command_id = NULL;
    char *company_id = NULL;

    (void)state;
    assert_true(fp_run_command_1() != er_codec_fingerprint(ER_REC_RUN_COMMAND));
    assert_true(er_codec_version_fingerprint("RunCommand") ==
                er_codec_fingerprint(ER_REC_RUN_COMMAND));
    assert_true(er_codec_version_fingerprint("RunCommand_9") == 0);
    w_acquire_1(&w, "codex_local");
    assert_int_equal(er_codec_identify(w.buf, w.len, &type, &err), 0);
    assert_int_equal(type, ER_REC_RUN_COMMAND);
    assert_int_equal(er_codec_command_decode(w.buf, w.len, &cmd, &err), 0);
    assert_int_equal(cmd.kind, ER_CMD_ACQUIRE);
    assert_string_equal(cmd.adapter_type, "codex_local");
    assert_string_equal(cmd.heartbeat_run_id, RUN_ID);
    assert_true(cmd.requested_expires_at_ms == 0);
    er_codec_command_fini(&cmd);
    assert_int_equal(er_codec_command_peek_kind(w.buf, w.len, &kind, &body_off),
                     0);
    assert_int_equal(kind, ER_CMD_ACQUIRE);
    assert_int_equal(
        er_codec_command_peek_ids(w.buf, w.len, &command_id, &company_id), 0);
    assert_string_equal(command_id, CMD_ID);
    assert_string_equal(company_id, COMP_ID);
    er_free(command_id);
    er_free(company_id);
    to_json_is(w.buf, w.len,
               "{\"commandId\":\"" CMD_ID "\",\"issuedAt\":1700000000000,"
               "\"companyId\":\"" COMP_ID "\",\"agentId\":\"" AGENT "\","
               "\"heartbeatRunId\":\"" RUN_ID "\",\"traceparent\":null,"
               "\"command\":{\"type\":\"AcquireCommand\","
               "\"selectedEnvironmentId\":null,"
               "\"adapterType\":\"codex_local\",\"issueId\":null,"
               "\"executionWorkspaceId\":null,"
               "\"executionWorkspaceMode\":null}}");
    /* The previous layout under the current fingerprint is one byte short. */
    w_acquire(&w, "codex_local", 11);
    w.len--;
    decode_fails(w.buf, w.len, ER_EBADMSG);
}

static void
decode_rejects_requested_expires_at_outside_the_calendar(void **state)
{
    static const int64_t bad[] = { 0, -1, ER_TIME_MAX_MS + 1, INT64_MAX };
    struct er_err err;
    struct wire w;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        w_acquire(&w, "codex_local", 11);
        w.len--;
        w_long(&w, 1); /* requestedExpiresAt: long */
        w_long(&w, bad[i]);
        err = decode_fails(w.buf, w.len, ER_EBADMSG);
        assert_non_null(strstr(err.msg, "requestedExpiresAt: "));
        assert_non_null(strstr(err.msg, "is not a time between 1970 and 9999"));
    }
}

static void decode_reads_hand_built_acquire(void **state)
{
    struct er_run_command cmd;
    struct er_err err;
    struct wire w;

    (void)state;
    w_acquire(&w, "codex_local", 11);
    assert_int_equal(er_codec_command_decode(w.buf, w.len, &cmd, &err), 0);
    assert_int_equal(cmd.kind, ER_CMD_ACQUIRE);
    assert_string_equal(cmd.adapter_type, "codex_local");
    assert_string_equal(cmd.heartbeat_run_id, RUN_ID);
    assert_null(cmd.traceparent);
    assert_null(cmd.selected_environment_id);
    assert_true(cmd.issued_at_ms == 1700000000000);
    er_codec_command_fini(&cmd);
}

static void result_encodes_and_renders_json(void **state)
{
    struct er_command_result res = {
        .command_id = CMD_ID,
        .company_id = COMP_ID,
        .heartbeat_run_id = NULL,
        .kind = ER_CMD_REALIZE,
        .outcome = ER_OUTCOME_ERROR,
        .error_code = ER_EC_LEASE_CONFLICT,
        .error_message = "lease held by \"run\" x",
        .environment_id = ENV_ID,
        .driver = "local",
        .lease_id = NULL,
        .result_json = "{\"a\":1}",
        .completed_at_ms = 1700000000123,
    };
    struct er_buf out;
    struct er_err err;
    enum er_record_type type = ER_REC_UNKNOWN;

    (void)state;
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_result_encode(&res, &out, &err), 0);
    assert_int_equal(er_codec_identify(out.data, out.len, &type, &err), 0);
    assert_int_equal(type, ER_REC_COMMAND_RESULT);
    to_json_is(out.data, out.len,
               "{\"commandId\":\"" CMD_ID "\",\"companyId\":\"" COMP_ID "\","
               "\"heartbeatRunId\":null,\"kind\":\"realize\","
               "\"outcome\":\"error\",\"errorCode\":\"lease_conflict\","
               "\"errorMessage\":\"lease held by \\\"run\\\" x\","
               "\"environmentId\":\"" ENV_ID "\",\"driver\":\"local\","
               "\"leaseId\":null,\"resultJson\":\"{\\\"a\\\":1}\","
               "\"completedAt\":1700000000123}");

    /* No error code encodes as null. */
    er_buf_reset(&out);
    res.outcome = ER_OUTCOME_OK;
    res.error_code = ER_EC_NONE;
    res.kind = ER_CMD_ACQUIRE;
    res.error_message = NULL;
    assert_int_equal(er_codec_result_encode(&res, &out, &err), 0);
    to_json_is(out.data, out.len,
               "{\"commandId\":\"" CMD_ID "\",\"companyId\":\"" COMP_ID "\","
               "\"heartbeatRunId\":null,\"kind\":\"acquire\","
               "\"outcome\":\"ok\",\"errorCode\":null,"
               "\"errorMessage\":null,"
               "\"environmentId\":\"" ENV_ID "\",\"driver\":\"local\","
               "\"leaseId\":null,\"resultJson\":\"{\\\"a\\\":1}\","
               "\"completedAt\":1700000000123}");
    er_buf_fini(&out);
}

static void lease_event_encodes_and_renders_json(void **state)
{
    struct er_lease_event ev = {
        .event_id = CMD_ID,
        .occurred_at_ms = 1700000000001,
        .version = 3,
        .lease_id = LEASE,
        .company_id = COMP_ID,
        .environment_id = ENV_ID,
        .execution_workspace_id = NULL,
        .issue_id = NULL,
        .heartbeat_run_id = RUN_ID,
        .status = "released",
        .lease_policy = "ephemeral",
        .provider = "local",
        .provider_lease_id = NULL,
        .acquired_at_ms = 1700000000000,
        .last_used_at_ms = 1700000000002,
        .expires_at_ms = -1,
        .released_at_ms = 1700000000003,
        .failure_reason = NULL,
        .cleanup_status = "done",
        .metadata_json = "{}",
        .created_at_ms = 1700000000000,
        .updated_at_ms = 1700000000004,
    };
    struct er_buf out;
    struct er_err err;
    enum er_record_type type = ER_REC_UNKNOWN;

    (void)state;
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_lease_event_encode(&ev, &out, &err), 0);
    assert_int_equal(er_codec_identify(out.data, out.len, &type, &err), 0);
    assert_int_equal(type, ER_REC_LEASE_EVENT);
    to_json_is(out.data, out.len,
               "{\"eventId\":\"" CMD_ID "\",\"occurredAt\":1700000000001,"
               "\"version\":3,\"leaseId\":\"" LEASE "\","
               "\"companyId\":\"" COMP_ID "\","
               "\"environmentId\":\"" ENV_ID "\","
               "\"executionWorkspaceId\":null,\"issueId\":null,"
               "\"heartbeatRunId\":\"" RUN_ID "\",\"status\":\"released\","
               "\"leasePolicy\":\"ephemeral\",\"provider\":\"local\","
               "\"providerLeaseId\":null,\"acquiredAt\":1700000000000,"
               "\"lastUsedAt\":1700000000002,\"expiresAt\":null,"
               "\"releasedAt\":1700000000003,\"failureReason\":null,"
               "\"cleanupStatus\":\"done\",\"metadataJson\":\"{}\","
               "\"createdAt\":1700000000000,\"updatedAt\":1700000000004}");
    er_buf_fini(&out);
}

static void activity_event_encodes_and_renders_json(void **state)
{
    struct er_activity_event ev = {
        .id = CMD_ID,
        .company_id = COMP_ID,
        .actor_type = "system",
        .actor_id = "envrun",
        .action = "environment.lease_acquired",
        .entity_type = "environment_lease",
        .entity_id = LEASE,
        .agent_id = AGENT,
        .run_id = NULL,
        .details_json = "{\"n\":\"\xc3\xa9\"}",
        .created_at_ms = 42,
    };
    struct er_buf out;
    struct er_err err;
    enum er_record_type type = ER_REC_UNKNOWN;

    (void)state;
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_activity_event_encode(&ev, &out, &err), 0);
    assert_int_equal(er_codec_identify(out.data, out.len, &type, &err), 0);
    assert_int_equal(type, ER_REC_ACTIVITY_EVENT);
    to_json_is(
        out.data, out.len,
        "{\"id\":\"" CMD_ID "\",\"companyId\":\"" COMP_ID "\","
        "\"actorType\":\"system\",\"actorId\":\"envrun\","
        "\"action\":\"environment.lease_acquired\","
        "\"entityType\":\"environment_lease\","
        "\"entityId\":\"" LEASE "\",\"agentId\":\"" AGENT "\","
        "\"runId\":null,\"detailsJson\":\"{\\\"n\\\":\\\"\xc3\xa9\\\"}\","
        "\"createdAt\":42}");
    er_buf_fini(&out);
}

static void to_json_renders_command_union_with_type(void **state)
{
    struct er_run_command cmd;
    struct er_buf out;
    struct er_err err;

    (void)state;
    init_acquire(&cmd);
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), 0);
    to_json_is(out.data, out.len,
               "{\"commandId\":\"" CMD_ID "\",\"issuedAt\":1700000000000,"
               "\"companyId\":\"" COMP_ID "\",\"agentId\":\"" AGENT "\","
               "\"heartbeatRunId\":\"" RUN_ID "\",\"traceparent\":null,"
               "\"command\":{\"type\":\"AcquireCommand\","
               "\"selectedEnvironmentId\":null,"
               "\"adapterType\":\"claude_local\",\"issueId\":null,"
               "\"executionWorkspaceId\":null,"
               "\"executionWorkspaceMode\":null,"
               "\"requestedExpiresAt\":null}}");

    er_buf_reset(&out);
    cmd.kind = ER_CMD_RELEASE;
    cmd.release_status = ER_RELEASE_EXPIRED;
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), 0);
    to_json_is(out.data, out.len,
               "{\"commandId\":\"" CMD_ID "\",\"issuedAt\":1700000000000,"
               "\"companyId\":\"" COMP_ID "\",\"agentId\":\"" AGENT "\","
               "\"heartbeatRunId\":\"" RUN_ID "\",\"traceparent\":null,"
               "\"command\":{\"type\":\"ReleaseCommand\","
               "\"status\":\"expired\",\"failureReason\":null}}");
    er_buf_fini(&out);
}

static void to_json_never_contains_host_api_token(void **state)
{
    struct er_run_command cmd;
    struct er_buf out;
    struct er_buf json;
    struct er_err err;

    (void)state;
    init_realize(&cmd);
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    er_buf_init(&json, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), 0);
    /* The token is on the wire (the bridge needs it)... */
    assert_true(contains(out.data, out.len, TOKEN));
    /* ...but never in the rendering. */
    assert_int_equal(er_codec_to_json(out.data, out.len, &json, &err), 0);
    assert_null(strstr((const char *)json.data, TOKEN));
    assert_non_null(
        strstr((const char *)json.data, "\"hostApiToken\":\"<redacted>\""));
    assert_non_null(
        strstr((const char *)json.data, "\"type\":\"RealizeCommand\""));

    /* Without a token the field is a plain null. */
    er_secret_fini(&cmd.host_api_token);
    er_buf_reset(&out);
    er_buf_reset(&json);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), 0);
    assert_int_equal(er_codec_to_json(out.data, out.len, &json, &err), 0);
    assert_non_null(strstr((const char *)json.data, "\"hostApiToken\":null"));
    er_buf_fini(&json);
    er_buf_fini(&out);
}

static void to_json_escapes_bad_bytes(void **state)
{
    struct er_buf out;
    struct er_err err;
    struct wire w;

    (void)state;
    /* Undecodable as a command, yet tail still shows it. */
    w_acquire(&w, "a\xff\x01", 3);
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_to_json(w.buf, w.len, &out, &err), 0);
    assert_non_null(
        strstr((const char *)out.data, "\"adapterType\":\"a\\ufffd\\u0001\""));
    er_buf_fini(&out);
}

static void to_json_rejects_what_decode_rejects(void **state)
{
    struct er_buf out;
    struct er_err err;
    struct wire w;

    (void)state;
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_buf_append(&out, "keep", 4), 0);
    w_acquire(&w, "x", 1);
    assert_int_equal(er_codec_to_json(w.buf, w.len - 1, &out, &err),
                     ER_EBADMSG);
    assert_int_equal(er_codec_to_json(NULL, 0, &out, &err), ER_EBADMSG);
    assert_string_equal((const char *)out.data, "keep");
    er_buf_fini(&out);
}

/* ================================================================
 * Encoder errors
 * ================================================================ */

static void encode_rejects_missing_required_string(void **state)
{
    struct er_run_command cmd;
    struct er_buf out;
    struct er_err err;

    (void)state;
    init_acquire(&cmd);
    cmd.adapter_type = NULL;
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), ER_EINVAL);
    assert_int_equal(err.cls, ER_ERRCLASS_FATAL);
    assert_non_null(strstr(err.msg, "adapterType"));
    assert_int_equal(out.len, 0);
    er_buf_fini(&out);
}

static void encode_rejects_bad_enum_values(void **state)
{
    struct er_run_command cmd;
    struct er_command_result res = {
        .command_id = CMD_ID,
        .company_id = "",
        .kind = ER_CMD_ACQUIRE,
        .outcome = ER_OUTCOME_OK,
        .error_code = ER_EC_NONE,
    };
    struct er_buf out;
    struct er_err err;

    (void)state;
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    init_acquire(&cmd);
    cmd.kind = (enum er_cmd_kind)3;
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), ER_EINVAL);
    cmd.kind = ER_CMD_RELEASE;
    cmd.release_status = (enum er_release_status)3;
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), ER_EINVAL);
    res.outcome = (enum er_outcome)3;
    assert_int_equal(er_codec_result_encode(&res, &out, &err), ER_EINVAL);
    res.outcome = ER_OUTCOME_OK;
    res.error_code = (enum er_error_code)12;
    assert_int_equal(er_codec_result_encode(&res, &out, &err), ER_EINVAL);
    res.error_code = (enum er_error_code) - 2;
    assert_int_equal(er_codec_result_encode(&res, &out, &err), ER_EINVAL);
    assert_int_equal(out.len, 0);
    /* After a failed encode the codec still works. */
    res.error_code = ER_EC_INVALID_COMMAND;
    assert_int_equal(er_codec_result_encode(&res, &out, &err), 0);
    er_buf_fini(&out);
}

static void encode_appends_and_restores_on_e2big(void **state)
{
    struct er_run_command cmd;
    struct er_buf out;
    struct er_err err;
    size_t one = 0;

    (void)state;
    init_acquire(&cmd);
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), 0);
    one = out.len;
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), 0);
    assert_int_equal(out.len, 2 * one);
    assert_memory_equal(out.data, out.data + one, one);
    er_buf_fini(&out);

    er_buf_init(&out, one - 1);
    assert_int_equal(er_buf_append(&out, "ab", 2), 0);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), ER_E2BIG);
    assert_int_equal(out.len, 2);
    assert_string_equal((const char *)out.data, "ab");
    er_buf_fini(&out);
}

/* ================================================================
 * Framing and hostile input
 * ================================================================ */

static void identify_rejects_short_input(void **state)
{
    static const uint8_t nine[] = { 0xc3, 0x01, 1, 2, 3, 4, 5, 6, 7 };
    enum er_record_type type = ER_REC_RUN_COMMAND;
    struct er_err err;
    size_t n;

    (void)state;
    for (n = 0; n <= sizeof(nine); n++) {
        assert_int_equal(er_codec_identify(nine, n, &type, &err), ER_EBADMSG);
        assert_int_equal(type, ER_REC_UNKNOWN);
        assert_int_equal(err.cls, ER_ERRCLASS_SKIP);
    }
    decode_fails(nine, sizeof(nine), ER_EBADMSG);
}

static void identify_rejects_bad_magic(void **state)
{
    uint8_t buf[16] = { 0xc3, 0x02 };
    enum er_record_type type;
    struct er_err err;

    (void)state;
    assert_int_equal(er_codec_identify(buf, sizeof(buf), &type, &err),
                     ER_EBADMSG);
    assert_non_null(strstr(err.msg, "not single-object"));
    buf[0] = '{';
    assert_int_equal(er_codec_identify(buf, sizeof(buf), &type, &err),
                     ER_EBADMSG);
}

static void decode_rejects_unknown_fingerprint(void **state)
{
    struct er_err err;
    struct wire w;

    (void)state;
    w_acquire(&w, "x", 1);
    w.buf[2] ^= 0x40;
    err = decode_fails(w.buf, w.len, ER_ESCHEMA);
    assert_non_null(strstr(err.msg, "unknown schema fingerprint"));
}

static void decode_refuses_confluent_framing_with_registry_message(void **state)
{
    static const uint8_t buf[] = { 0x00, 0, 0, 0, 7, 0x48, 'a' };
    enum er_record_type type;
    struct er_err err;

    (void)state;
    err = decode_fails(buf, sizeof(buf), ER_ESCHEMA);
    assert_string_equal(err.msg, "confluent-framed value needs a schema "
                                 "registry (ENVRUN_SCHEMA_REGISTRY_URL is "
                                 "unset)");
    assert_int_equal(er_codec_identify(buf, sizeof(buf), &type, &err),
                     ER_ESCHEMA);
}

static void decode_rejects_every_truncation(void **state)
{
    struct er_run_command cmd;
    struct er_buf out;
    struct er_err err;
    size_t n;

    (void)state;
    init_realize(&cmd);
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), 0);
    for (n = 0; n < out.len; n++)
        decode_fails(out.data, n, ER_EBADMSG);
    er_secret_fini(&cmd.host_api_token);
    er_buf_fini(&out);
}

static void decode_rejects_trailing_bytes(void **state)
{
    struct er_err err;
    struct wire w;

    (void)state;
    w_acquire(&w, "x", 1);
    w_raw(&w, "\0", 1);
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_non_null(strstr(err.msg, "1 trailing bytes"));
}

static void decode_rejects_huge_string_length_without_allocating(void **state)
{
    struct er_err err;
    struct wire w;

    (void)state;
    /* commandId claims 2^62 bytes. Under ASan an attempt to allocate that
     * would abort the test. */
    w_header(&w, er_codec_fingerprint(ER_REC_RUN_COMMAND));
    w_long(&w, (int64_t)1 << 62);
    w_raw(&w, "abcdef", 6);
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "commandId: length past the end of the value");

    w_header(&w, er_codec_fingerprint(ER_REC_RUN_COMMAND));
    w_long(&w, -5);
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "commandId: negative length");
}

static void decode_rejects_overlong_varints(void **state)
{
    static const uint8_t eleven[] = { 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                      0x80, 0x80, 0x80, 0x80, 0x00 };
    static const uint8_t overflow[] = { 0xff, 0xff, 0xff, 0xff, 0xff,
                                        0xff, 0xff, 0xff, 0xff, 0x02 };
    struct er_err err;
    struct wire w;

    (void)state;
    w_header(&w, er_codec_fingerprint(ER_REC_RUN_COMMAND));
    w_raw(&w, eleven, sizeof(eleven));
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "commandId: varint overflows 64 bits");

    w_header(&w, er_codec_fingerprint(ER_REC_RUN_COMMAND));
    w_raw(&w, overflow, sizeof(overflow));
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "commandId: varint overflows 64 bits");
}

static void decode_rejects_out_of_range_unions(void **state)
{
    struct er_err err;
    struct wire w;

    (void)state;
    w_cmd_prefix(&w, 3); /* the command union has 3 branches */
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "command: union branch out of range");

    w_cmd_prefix(&w, -1);
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "command: union branch out of range");

    w_cmd_prefix(&w, (int64_t)1 << 32); /* would wrap to 0 as an int */
    decode_fails(w.buf, w.len, ER_EBADMSG);

    w_cmd_prefix(&w, 0);
    w_long(&w, 2); /* selectedEnvironmentId is ["null","string"] */
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg,
                        "selectedEnvironmentId: union branch out of range");
}

static void decode_rejects_out_of_range_enum(void **state)
{
    struct er_err err;
    struct wire w;

    (void)state;
    w_cmd_prefix(&w, 2);
    w_long(&w, 3); /* released, expired, failed */
    w_long(&w, 0);
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "status: enum index out of range");

    w_cmd_prefix(&w, 2);
    w_long(&w, -1);
    w_long(&w, 0);
    decode_fails(w.buf, w.len, ER_EBADMSG);

    w_cmd_prefix(&w, 2);
    w_long(&w, 2);
    w_long(&w, 0);
    {
        struct er_run_command cmd;

        assert_int_equal(er_codec_command_decode(w.buf, w.len, &cmd, &err), 0);
        assert_int_equal(cmd.kind, ER_CMD_RELEASE);
        assert_int_equal(cmd.release_status, ER_RELEASE_FAILED);
        assert_null(cmd.failure_reason);
        er_codec_command_fini(&cmd);
    }
}

static void decode_rejects_nul_and_bad_utf8_naming_the_field(void **state)
{
    struct er_err err;
    struct wire w;

    (void)state;
    w_acquire(&w, "ab\0cd", 5);
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "adapterType: contains a NUL byte");

    w_acquire(&w, "ab\xc0\xaf", 4); /* overlong '/' */
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "adapterType: not valid utf-8");

    /* The token's message names the field, never the value. */
    w_cmd_prefix(&w, 1);
    w_long(&w, 0);
    w_str(&w, "x");
    w_long(&w, 0);
    w_str(&w, "{}");
    w_long(&w, 0);
    w_long(&w, 0);
    w_long(&w, 0);
    w_long(&w, 1);
    w_bytes(&w, "secret\xff", 7);
    err = decode_fails(w.buf, w.len, ER_EBADMSG);
    assert_string_equal(err.msg, "hostApiToken: not valid utf-8");
}

static void decode_rejects_null_input(void **state)
{
    struct er_err err;

    (void)state;
    err = decode_fails(NULL, 0, ER_EBADMSG);
    assert_string_equal(err.msg, "empty value");
    decode_fails(NULL, 20, ER_EBADMSG);
}

static void decode_rejects_oversize_input(void **state)
{
    uint8_t *big = NULL;
    size_t n = ER_CMD_VALUE_MAX_BYTES + 1;
    struct er_err err;

    (void)state;
    big = er_calloc(1, n);
    assert_non_null(big);
    big[0] = 0xc3;
    big[1] = 0x01;
    err = decode_fails(big, n, ER_E2BIG);
    assert_non_null(strstr(err.msg, "over the"));
    er_free(big);
}

static void decode_rejects_other_record_types(void **state)
{
    struct er_activity_event ev = {
        .id = CMD_ID,
        .company_id = COMP_ID,
        .actor_type = "system",
        .actor_id = "envrun",
        .action = "a",
        .entity_type = "b",
        .entity_id = "c",
        .created_at_ms = 1,
    };
    struct er_buf out;
    struct er_err err;
    char *cid = NULL;
    char *comp = NULL;

    (void)state;
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_activity_event_encode(&ev, &out, &err), 0);
    err = decode_fails(out.data, out.len, ER_ESCHEMA);
    assert_string_equal(err.msg, "value holds ActivityEvent, not RunCommand");
    assert_int_equal(er_codec_command_peek_ids(out.data, out.len, &cid, &comp),
                     ER_EBADMSG);
    assert_null(cid);
    assert_null(comp);
    er_buf_fini(&out);
}

static void decode_survives_allocation_failures(void **state)
{
    struct er_run_command cmd;
    struct er_run_command got;
    struct er_buf out;
    struct er_err err;
    uint64_t fail_at;
    int rc;

    (void)state;
    init_realize(&cmd);
    cmd.failure_reason = NULL;
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), 0);
    for (fail_at = 1;; fail_at++) {
        er_mem_fail_at(fail_at);
        rc = er_codec_command_decode(out.data, out.len, &got, &err);
        er_mem_fail_at(0);
        if (rc == 0) {
            assert_same_cmd(&cmd, &got);
            er_codec_command_fini(&got);
            break;
        }
        assert_int_equal(rc, ER_ENOMEM);
        assert_int_equal(err.cls, ER_ERRCLASS_RETRY);
        assert_cmd_empty(&got);
    }
    assert_true(fail_at > 5);
    er_secret_fini(&cmd.host_api_token);
    er_buf_fini(&out);
}

static void avro_allocator_refuses_oversize_allocation(void **state)
{
    avro_schema_t schema = avro_schema_string();
    avro_value_iface_t *iface = NULL;
    avro_value_t value;
    avro_reader_t reader = NULL;
    struct wire w;

    (void)state;
    /* Straight to avro-c, past our prescan: a string that claims 1 TiB. */
    w.len = 0;
    w_long(&w, (int64_t)1 << 40);
    w_raw(&w, "abc", 3);
    iface = avro_generic_class_from_schema(schema);
    assert_non_null(iface);
    assert_int_equal(avro_generic_value_new(iface, &value), 0);
    reader = avro_reader_memory((const char *)w.buf, (int64_t)w.len);
    assert_non_null(reader);
    assert_int_not_equal(avro_value_read(reader, &value), 0);
    avro_reader_free(reader);
    avro_value_decref(&value);
    avro_value_iface_decref(iface);
    avro_schema_decref(schema);
}

/* ================================================================
 * peek_ids
 * ================================================================ */

static void peek_ids_reads_value_truncated_after_company_id(void **state)
{
    struct er_run_command cmd;
    struct er_buf out;
    struct er_err err;
    char *cid = NULL;
    char *comp = NULL;
    size_t cut;

    (void)state;
    init_realize(&cmd);
    cmd.issued_at_ms = 5; /* a one-byte varint */
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), 0);
    cut = 10 + 1 + strlen(CMD_ID) + 1 + 1 + strlen(COMP_ID);
    decode_fails(out.data, cut, ER_EBADMSG);
    assert_int_equal(er_codec_command_peek_ids(out.data, cut, &cid, &comp), 0);
    assert_string_equal(cid, CMD_ID);
    assert_string_equal(comp, COMP_ID);
    er_free(cid);
    er_free(comp);

    /* One byte short of companyId: nothing. */
    assert_int_equal(er_codec_command_peek_ids(out.data, cut - 1, &cid, &comp),
                     ER_EBADMSG);
    assert_null(cid);
    assert_null(comp);
    assert_int_equal(er_codec_command_peek_ids(NULL, 0, &cid, &comp),
                     ER_EBADMSG);
    er_secret_fini(&cmd.host_api_token);
    er_buf_fini(&out);
}

static void peek_ids_rejects_hostile_lengths(void **state)
{
    struct wire w;
    char *cid = NULL;
    char *comp = NULL;

    (void)state;
    w_header(&w, er_codec_fingerprint(ER_REC_RUN_COMMAND));
    w_long(&w, (int64_t)1 << 62);
    w_raw(&w, "abcdef", 6);
    assert_int_equal(er_codec_command_peek_ids(w.buf, w.len, &cid, &comp),
                     ER_EBADMSG);
    w_header(&w, er_codec_fingerprint(ER_REC_RUN_COMMAND));
    w_bytes(&w, "a\0b", 3);
    w_long(&w, 1);
    w_str(&w, COMP_ID);
    assert_int_equal(er_codec_command_peek_ids(w.buf, w.len, &cid, &comp),
                     ER_EBADMSG);
    assert_null(cid);
    assert_null(comp);
}

/* ================================================================
 * Names, fingerprints, concurrency
 * ================================================================ */

static void enum_names_match_wire_symbols(void **state)
{
    (void)state;
    assert_string_equal(er_codec_kind_name(ER_CMD_REALIZE), "realize");
    assert_string_equal(er_codec_outcome_name(ER_OUTCOME_DEFERRED), "deferred");
    assert_null(er_codec_error_code_name(ER_EC_NONE));
    assert_string_equal(er_codec_error_code_name(ER_EC_INVALID_COMMAND),
                        "invalid_command");
    assert_string_equal(er_codec_release_status_name(ER_RELEASE_EXPIRED),
                        "expired");
    assert_string_equal(er_codec_kind_name((enum er_cmd_kind)9), "unknown");
    assert_string_equal(er_codec_error_code_name((enum er_error_code) - 7),
                        "unknown");
}

static void fingerprints_come_from_the_canonical_form(void **state)
{
    int t;

    (void)state;
    for (t = ER_REC_RUN_COMMAND; t <= ER_REC_ACTIVITY_EVENT; t++) {
        struct er_buf canon;
        struct er_err err;

        er_buf_init(&canon, 1 << 20);
        assert_int_equal(
            er_canonical_form(er_codec_schema_json((enum er_record_type)t),
                              &canon, &err),
            0);
        assert_true(er_codec_fingerprint((enum er_record_type)t) ==
                    er_canonical_crc64(canon.data, canon.len));
        er_buf_fini(&canon);
    }
    assert_true(er_codec_fingerprint(ER_REC_UNKNOWN) == 0);
    assert_null(er_codec_schema_json(ER_REC_UNKNOWN));
}

static void *hammer(void *arg)
{
    struct er_run_command cmd;
    struct er_run_command got;
    struct er_buf out;
    struct er_err err;
    int i;
    int bad = 0;

    (void)arg;
    init_acquire(&cmd);
    er_buf_init(&out, ER_CMD_VALUE_MAX_BYTES);
    for (i = 0; i < 200; i++) {
        er_buf_reset(&out);
        if (er_codec_command_encode(&cmd, &out, &err) != 0 ||
            er_codec_command_decode(out.data, out.len, &got, &err) != 0) {
            bad++;
            continue;
        }
        if (strcmp(got.adapter_type, cmd.adapter_type) != 0)
            bad++;
        er_codec_command_fini(&got);
        /* A failing decode races the others' avro_strerror text. */
        if (er_codec_command_decode(out.data, out.len - 1, &got, &err) !=
                ER_EBADMSG ||
            strstr(err.msg, "truncated") == NULL)
            bad++;
    }
    er_buf_fini(&out);
    return bad == 0 ? NULL : arg;
}

static void codec_is_safe_across_threads(void **state)
{
    pthread_t th[4];
    int i;

    (void)state;
    for (i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, th), 0);
    for (i = 0; i < 4; i++) {
        void *ret = NULL;

        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_null(ret);
    }
}

static void codec_fails_cleanly_before_init(void **state)
{
    struct er_run_command cmd;
    struct er_buf out;
    struct er_err err;
    enum er_record_type type;
    static const uint8_t buf[12] = { 0xc3, 0x01 };

    (void)state;
    init_acquire(&cmd);
    er_buf_init(&out, 1024);
    assert_int_equal(er_codec_identify(buf, sizeof(buf), &type, &err),
                     ER_EINVAL);
    assert_int_equal(err.cls, ER_ERRCLASS_FATAL);
    assert_int_equal(er_codec_command_encode(&cmd, &out, &err), ER_EINVAL);
    assert_int_equal(er_codec_to_json(buf, sizeof(buf), &out, &err), ER_EINVAL);
    assert_true(er_codec_fingerprint(ER_REC_RUN_COMMAND) == 0);
    /* Shutdown without init, twice, is harmless; init is idempotent. */
    er_codec_shutdown();
    er_codec_shutdown();
    assert_int_equal(er_codec_init(&err), 0);
    assert_int_equal(er_codec_init(&err), 0);
    assert_true(er_codec_fingerprint(ER_REC_RUN_COMMAND) != 0);
    er_codec_shutdown();
    er_buf_fini(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(command_round_trips_acquire),
        cmocka_unit_test(command_round_trips_realize_with_token),
        cmocka_unit_test(command_round_trips_release),
        cmocka_unit_test(command_round_trips_nulls),
        cmocka_unit_test(decode_reads_hand_built_acquire),
        cmocka_unit_test(command_round_trips_requested_expires_at),
        cmocka_unit_test(decode_reads_acquire_of_the_previous_schema),
        cmocka_unit_test(
            decode_rejects_requested_expires_at_outside_the_calendar),
        cmocka_unit_test(result_encodes_and_renders_json),
        cmocka_unit_test(lease_event_encodes_and_renders_json),
        cmocka_unit_test(activity_event_encodes_and_renders_json),
        cmocka_unit_test(to_json_renders_command_union_with_type),
        cmocka_unit_test(to_json_never_contains_host_api_token),
        cmocka_unit_test(to_json_escapes_bad_bytes),
        cmocka_unit_test(to_json_rejects_what_decode_rejects),
        cmocka_unit_test(encode_rejects_missing_required_string),
        cmocka_unit_test(encode_rejects_bad_enum_values),
        cmocka_unit_test(encode_appends_and_restores_on_e2big),
        cmocka_unit_test(identify_rejects_short_input),
        cmocka_unit_test(identify_rejects_bad_magic),
        cmocka_unit_test(decode_rejects_unknown_fingerprint),
        cmocka_unit_test(
            decode_refuses_confluent_framing_with_registry_message),
        cmocka_unit_test(decode_rejects_every_truncation),
        cmocka_unit_test(decode_rejects_trailing_bytes),
        cmocka_unit_test(decode_rejects_huge_string_length_without_allocating),
        cmocka_unit_test(decode_rejects_overlong_varints),
        cmocka_unit_test(decode_rejects_out_of_range_unions),
        cmocka_unit_test(decode_rejects_out_of_range_enum),
        cmocka_unit_test(decode_rejects_nul_and_bad_utf8_naming_the_field),
        cmocka_unit_test(decode_rejects_null_input),
        cmocka_unit_test(decode_rejects_oversize_input),
        cmocka_unit_test(decode_rejects_other_record_types),
        cmocka_unit_test(decode_survives_allocation_failures),
        cmocka_unit_test(avro_allocator_refuses_oversize_allocation),
        cmocka_unit_test(peek_ids_reads_value_truncated_after_company_id),
        cmocka_unit_test(peek_ids_rejects_hostile_lengths),
        cmocka_unit_test(enum_names_match_wire_symbols),
        cmocka_unit_test(fingerprints_come_from_the_canonical_form),
        cmocka_unit_test(codec_is_safe_across_threads),
    };
    const struct CMUnitTest before_init[] = {
        cmocka_unit_test(codec_fails_cleanly_before_init),
    };
    int failed = cmocka_run_group_tests(before_init, NULL, NULL);

    failed += cmocka_run_group_tests(tests, setup, teardown);
    return failed;
}
