/* validate_test: every rule of er_validate_command, accepted and refused,
 * and the UTF-8 helper behind it. Single-threaded; the commands are built
 * from string literals and own only their token. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "schemas/schemas.h"
#include "schemas/schemas_int.h"

#define CMD_ID  "6f1c2a9e-0b1d-4c3e-9f21-5a7b8c9d0e1f"
#define COMP_ID "0d5e7f60-1a2b-4c3d-8e9f-a0b1c2d3e4f5"
#define AGENT   "11111111-2222-4333-8444-555555555555"
#define RUN_ID  "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
#define UUID2   "99999999-8888-4777-8666-555555555555"
#define TP      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static void base(struct er_run_command *cmd, enum er_cmd_kind kind)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->command_id = CMD_ID;
    cmd->issued_at_ms = 1700000000000;
    cmd->company_id = COMP_ID;
    cmd->agent_id = AGENT;
    cmd->heartbeat_run_id = RUN_ID;
    cmd->kind = kind;
    cmd->adapter_type = "claude_local";
    cmd->workspace_json = "{\"cwd\":\"/w\"}";
}

static void assert_valid(const struct er_run_command *cmd)
{
    struct er_err err;

    er_err_clear(&err);
    assert_int_equal(er_validate_command(cmd, &err), 0);
    assert_int_equal(err.code, ER_OK);
}

static void assert_invalid(const struct er_run_command *cmd, const char *msg)
{
    struct er_err err;

    er_err_clear(&err);
    assert_int_equal(er_validate_command(cmd, &err), ER_EINVAL);
    assert_int_equal(err.code, ER_EINVAL);
    assert_int_equal(err.cls, ER_ERRCLASS_SKIP);
    assert_string_equal(err.msg, msg);
}

/* A string of n copies of c, in storage the caller frees. */
static char *repeat(char c, size_t n)
{
    char *s = er_malloc(n + 1);

    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void validate_accepts_each_kind(void **state)
{
    struct er_run_command cmd;

    (void)state;
    base(&cmd, ER_CMD_ACQUIRE);
    assert_valid(&cmd);
    cmd.selected_environment_id = UUID2;
    cmd.issue_id = UUID2;
    cmd.execution_workspace_id = UUID2;
    cmd.execution_workspace_mode = "shared";
    cmd.traceparent = TP;
    assert_valid(&cmd);

    base(&cmd, ER_CMD_REALIZE);
    assert_valid(&cmd);
    cmd.lease_id = UUID2;
    cmd.requested_mode = "isolated";
    cmd.runtime_overlay_json = "{\"provisionCommand\":\"make\"}";
    assert_int_equal(er_secret_set(&cmd.host_api_token, "tok", 3), 0);
    assert_valid(&cmd);
    er_secret_fini(&cmd.host_api_token);

    base(&cmd, ER_CMD_RELEASE);
    cmd.adapter_type = NULL;
    cmd.workspace_json = NULL;
    cmd.release_status = ER_RELEASE_FAILED;
    cmd.failure_reason = "exit 137";
    assert_valid(&cmd);
}

static void validate_accepts_null_or_empty_environment(void **state)
{
    struct er_run_command cmd;

    (void)state;
    base(&cmd, ER_CMD_ACQUIRE);
    cmd.selected_environment_id = NULL;
    assert_valid(&cmd);
    cmd.selected_environment_id = "";
    assert_valid(&cmd);
    cmd.selected_environment_id = "local";
    assert_invalid(&cmd, "selectedEnvironmentId: not a uuid");
}

static void validate_rejects_bad_uuids_naming_the_field(void **state)
{
    struct er_run_command cmd;
    static char *const bad[] = { "", "not-a-uuid", RUN_ID "0",
                                 "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeeg",
                                 "aaaaaaaa_bbbb-4ccc-8ddd-eeeeeeeeeeee" };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *v = bad[i]; /* the command only reads it */

        base(&cmd, ER_CMD_ACQUIRE);
        cmd.command_id = v;
        assert_invalid(&cmd, "commandId: not a uuid");
        base(&cmd, ER_CMD_ACQUIRE);
        cmd.company_id = v;
        assert_invalid(&cmd, "companyId: not a uuid");
        base(&cmd, ER_CMD_ACQUIRE);
        cmd.agent_id = v;
        assert_invalid(&cmd, "agentId: not a uuid");
        base(&cmd, ER_CMD_ACQUIRE);
        cmd.heartbeat_run_id = v;
        assert_invalid(&cmd, "heartbeatRunId: not a uuid");
        base(&cmd, ER_CMD_ACQUIRE);
        cmd.issue_id = v;
        assert_invalid(&cmd, "issueId: not a uuid");
        base(&cmd, ER_CMD_ACQUIRE);
        cmd.execution_workspace_id = v;
        assert_invalid(&cmd, "executionWorkspaceId: not a uuid");
        base(&cmd, ER_CMD_REALIZE);
        cmd.lease_id = v;
        assert_invalid(&cmd, "leaseId: not a uuid");
        base(&cmd, ER_CMD_REALIZE);
        cmd.issue_id = v;
        assert_invalid(&cmd, "issueId: not a uuid");
        base(&cmd, ER_CMD_REALIZE);
        cmd.execution_workspace_id = v;
        assert_invalid(&cmd, "executionWorkspaceId: not a uuid");
    }
}

static void validate_rejects_missing_required_ids(void **state)
{
    struct er_run_command cmd;

    (void)state;
    base(&cmd, ER_CMD_ACQUIRE);
    cmd.command_id = NULL;
    assert_invalid(&cmd, "commandId: missing");
    base(&cmd, ER_CMD_ACQUIRE);
    cmd.company_id = NULL;
    assert_invalid(&cmd, "companyId: missing");
    base(&cmd, ER_CMD_ACQUIRE);
    cmd.agent_id = NULL;
    assert_invalid(&cmd, "agentId: missing");
    /* An acquire without a run is an ad-hoc probe. */
    base(&cmd, ER_CMD_ACQUIRE);
    cmd.heartbeat_run_id = NULL;
    assert_valid(&cmd);
}

static void validate_requires_run_id_for_release(void **state)
{
    struct er_run_command cmd;

    (void)state;
    base(&cmd, ER_CMD_RELEASE);
    cmd.heartbeat_run_id = NULL;
    assert_invalid(&cmd, "heartbeatRunId is required for release");
}

static void validate_requires_run_id_for_realize_without_lease(void **state)
{
    struct er_run_command cmd;

    (void)state;
    base(&cmd, ER_CMD_REALIZE);
    cmd.heartbeat_run_id = NULL;
    assert_invalid(&cmd, "heartbeatRunId is required for realize without "
                         "leaseId");
    cmd.lease_id = UUID2;
    assert_valid(&cmd);
}

static void validate_checks_adapter_type(void **state)
{
    struct er_run_command cmd;
    char *at_max = repeat('a', ER_CMD_SHORT_MAX);
    char *over = repeat('a', ER_CMD_SHORT_MAX + 1);
    int k;

    (void)state;
    for (k = ER_CMD_ACQUIRE; k <= ER_CMD_REALIZE; k++) {
        base(&cmd, (enum er_cmd_kind)k);
        cmd.adapter_type = NULL;
        assert_invalid(&cmd, "adapterType: missing");
        cmd.adapter_type = "";
        assert_invalid(&cmd, "adapterType: empty");
        cmd.adapter_type = over;
        assert_invalid(&cmd, "adapterType: longer than 256 bytes");
        cmd.adapter_type = at_max;
        assert_valid(&cmd);
    }
    er_free(at_max);
    er_free(over);
}

static void validate_checks_short_optional_fields(void **state)
{
    struct er_run_command cmd;
    char *over = repeat('m', ER_CMD_SHORT_MAX + 1);

    (void)state;
    base(&cmd, ER_CMD_ACQUIRE);
    cmd.execution_workspace_mode = over;
    assert_invalid(&cmd, "executionWorkspaceMode: longer than 256 bytes");
    base(&cmd, ER_CMD_REALIZE);
    cmd.requested_mode = over;
    assert_invalid(&cmd, "requestedMode: longer than 256 bytes");
    cmd.requested_mode = "";
    assert_valid(&cmd);
    er_free(over);
}

static void validate_checks_workspace_json(void **state)
{
    struct er_run_command cmd;
    char *big = repeat(' ', ER_CMD_JSON_MAX + 1);

    (void)state;
    base(&cmd, ER_CMD_REALIZE);
    cmd.workspace_json = NULL;
    assert_invalid(&cmd, "workspaceJson: missing");
    cmd.workspace_json = "[1]";
    assert_invalid(&cmd, "workspaceJson: not a JSON object");
    cmd.workspace_json = "null";
    assert_invalid(&cmd, "workspaceJson: not a JSON object");
    cmd.workspace_json = "\"{}\"";
    assert_invalid(&cmd, "workspaceJson: not a JSON object");
    cmd.workspace_json = "{\"cwd\":";
    {
        struct er_err err;

        assert_int_equal(er_validate_command(&cmd, &err), ER_EINVAL);
        assert_true(strncmp(err.msg, "workspaceJson: not JSON", 23) == 0);
    }
    big[0] = '{';
    big[ER_CMD_JSON_MAX] = '}';
    cmd.workspace_json = big;
    assert_invalid(&cmd, "workspaceJson: longer than 65536 bytes");
    big[ER_CMD_JSON_MAX - 1] = '}';
    big[ER_CMD_JSON_MAX] = '\0';
    assert_valid(&cmd);
    cmd.workspace_json = "{}";
    assert_valid(&cmd);
    er_free(big);

    /* Other kinds do not look at it. */
    base(&cmd, ER_CMD_ACQUIRE);
    cmd.workspace_json = "garbage";
    assert_valid(&cmd);
}

static void validate_checks_runtime_overlay_json(void **state)
{
    struct er_run_command cmd;

    (void)state;
    base(&cmd, ER_CMD_REALIZE);
    cmd.runtime_overlay_json = NULL;
    assert_valid(&cmd);
    cmd.runtime_overlay_json = "null";
    assert_valid(&cmd);
    cmd.runtime_overlay_json = " {} ";
    assert_valid(&cmd);
    cmd.runtime_overlay_json = "[]";
    assert_invalid(&cmd, "runtimeOverlayJson: not a JSON object or null");
    cmd.runtime_overlay_json = "7";
    assert_invalid(&cmd, "runtimeOverlayJson: not a JSON object or null");
    cmd.runtime_overlay_json = "{'a':1}";
    {
        struct er_err err;

        assert_int_equal(er_validate_command(&cmd, &err), ER_EINVAL);
        assert_true(strncmp(err.msg, "runtimeOverlayJson: not JSON", 28) == 0);
    }
}

static void validate_checks_traceparent(void **state)
{
    static char *const bad[] = {
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
    };
    struct er_run_command cmd;
    size_t i;

    (void)state;
    base(&cmd, ER_CMD_ACQUIRE);
    cmd.traceparent = TP;
    assert_valid(&cmd);
    /* Any version but ff; flags are free. */
    cmd.traceparent = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff";
    assert_valid(&cmd);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cmd.traceparent = bad[i];
        assert_invalid(&cmd, "traceparent: not a W3C traceparent");
    }
}

/* What the worker carries of a received traceparent: version 00 as is; a
 * later version's first 55 characters when a '-' or the end follows them,
 * written as 00; anything else dropped. */
static void traceparent_accept_reads_later_versions(void **state)
{
    static const char *const dropped[] = {
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        "01-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "01-00000000000000000000000000000000-00f067aa0ba902b7-01-x",
        "",
    };
    char buf[128];
    size_t i;

    (void)state;
    snprintf(buf, sizeof(buf), "%s", TP);
    assert_true(er_traceparent_accept(buf));
    assert_string_equal(buf, TP);
    snprintf(buf, sizeof(buf), "%s",
             "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03");
    assert_true(er_traceparent_accept(buf));
    assert_string_equal(
        buf, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03");
    snprintf(buf, sizeof(buf), "%s",
             "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more-"
             "fields");
    assert_true(er_traceparent_accept(buf));
    assert_string_equal(
        buf, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    for (i = 0; i < sizeof(dropped) / sizeof(dropped[0]); i++) {
        snprintf(buf, sizeof(buf), "%s", dropped[i]);
        assert_false(er_traceparent_accept(buf));
    }
}

static void validate_checks_failure_reason(void **state)
{
    struct er_run_command cmd;
    char *at_max = repeat('r', ER_CMD_TEXT_MAX);
    char *over = repeat('r', ER_CMD_TEXT_MAX + 1);

    (void)state;
    base(&cmd, ER_CMD_RELEASE);
    cmd.failure_reason = over;
    assert_invalid(&cmd, "failureReason: longer than 4096 bytes");
    cmd.failure_reason = at_max;
    assert_valid(&cmd);
    cmd.failure_reason = NULL;
    assert_valid(&cmd);
    cmd.failure_reason = "bad \xff byte";
    assert_invalid(&cmd, "failureReason: not valid utf-8");
    er_free(at_max);
    er_free(over);
}

static void validate_checks_release_status(void **state)
{
    struct er_run_command cmd;

    (void)state;
    base(&cmd, ER_CMD_RELEASE);
    cmd.release_status = ER_RELEASE_EXPIRED;
    assert_valid(&cmd);
    cmd.release_status = (enum er_release_status)3;
    assert_invalid(&cmd, "status: unknown release status 3");
}

static void validate_rejects_unknown_kind(void **state)
{
    struct er_run_command cmd;

    (void)state;
    base(&cmd, (enum er_cmd_kind)7);
    assert_invalid(&cmd, "command: unknown kind 7");
}

static void validate_rejects_invalid_utf8_naming_the_field(void **state)
{
    static char *const bad[] = {
        "\xc3\x28",         /* bad continuation */
        "\xc0\xaf",         /* overlong */
        "\xe0\x80\xaf",     /* overlong, three bytes */
        "\xed\xa0\x80",     /* surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
        "\xe2\x82",         /* cut short */
        "\x80",             /* lone continuation */
        "\xf5\x80\x80\x80", /* never valid */
    };
    struct er_run_command cmd;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        base(&cmd, ER_CMD_ACQUIRE);
        cmd.adapter_type = bad[i];
        assert_invalid(&cmd, "adapterType: not valid utf-8");
        base(&cmd, ER_CMD_ACQUIRE);
        cmd.execution_workspace_mode = bad[i];
        assert_invalid(&cmd, "executionWorkspaceMode: not valid utf-8");
        base(&cmd, ER_CMD_REALIZE);
        cmd.workspace_json = bad[i];
        assert_invalid(&cmd, "workspaceJson: not valid utf-8");
    }
    /* Well-formed multi-byte text passes. */
    base(&cmd, ER_CMD_ACQUIRE);
    cmd.adapter_type = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e";
    assert_valid(&cmd);
}

static void validate_checks_host_api_token_without_quoting_it(void **state)
{
    struct er_run_command cmd;
    struct er_err err;
    char *over = repeat('s', ER_CMD_TOKEN_MAX + 1);

    (void)state;
    base(&cmd, ER_CMD_REALIZE);
    assert_int_equal(
        er_secret_set(&cmd.host_api_token, over, ER_CMD_TOKEN_MAX + 1), 0);
    assert_invalid(&cmd, "hostApiToken: longer than 8192 bytes");
    assert_int_equal(er_secret_set(&cmd.host_api_token, over, ER_CMD_TOKEN_MAX),
                     0);
    assert_valid(&cmd);
    assert_int_equal(er_secret_set(&cmd.host_api_token, "ss\xffss", 5), 0);
    assert_int_equal(er_validate_command(&cmd, &err), ER_EINVAL);
    assert_string_equal(err.msg, "hostApiToken: not valid utf-8");
    assert_null(strstr(err.msg, "ss"));
    assert_int_equal(er_secret_set(&cmd.host_api_token, "s\0s", 3), 0);
    assert_invalid(&cmd, "hostApiToken: not valid utf-8");
    er_secret_fini(&cmd.host_api_token);
    er_free(over);
}

static void utf8_seq_measures_each_form(void **state)
{
    (void)state;
    assert_int_equal(er_validate__utf8_seq("a", 1), 1);
    assert_int_equal(er_validate__utf8_seq("\0", 1), 1);
    assert_int_equal(er_validate__utf8_seq("\xc3\xa9", 2), 2);
    assert_int_equal(er_validate__utf8_seq("\xe2\x82\xac", 3), 3);
    assert_int_equal(er_validate__utf8_seq("\xef\xbf\xbf", 3), 3);
    assert_int_equal(er_validate__utf8_seq("\xf0\x9d\x84\x9e", 4), 4);
    assert_int_equal(er_validate__utf8_seq("\xf4\x8f\xbf\xbf", 4), 4);
    assert_int_equal(er_validate__utf8_seq("\xc3\xa9", 1), 0);
    assert_int_equal(er_validate__utf8_seq("", 0), 0);
    assert_int_equal(er_validate__utf8_seq("\xc1\xbf", 2), 0);
    assert_int_equal(er_validate__utf8_seq("\xf0\x8f\xbf\xbf", 4), 0);
    assert_true(er_validate__utf8("", 0));
    assert_false(er_validate__utf8("ok\xff", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(validate_accepts_each_kind),
        cmocka_unit_test(validate_accepts_null_or_empty_environment),
        cmocka_unit_test(validate_rejects_bad_uuids_naming_the_field),
        cmocka_unit_test(validate_rejects_missing_required_ids),
        cmocka_unit_test(validate_requires_run_id_for_release),
        cmocka_unit_test(validate_requires_run_id_for_realize_without_lease),
        cmocka_unit_test(validate_checks_adapter_type),
        cmocka_unit_test(validate_checks_short_optional_fields),
        cmocka_unit_test(validate_checks_workspace_json),
        cmocka_unit_test(validate_checks_runtime_overlay_json),
        cmocka_unit_test(validate_checks_traceparent),
        cmocka_unit_test(traceparent_accept_reads_later_versions),
        cmocka_unit_test(validate_checks_failure_reason),
        cmocka_unit_test(validate_checks_release_status),
        cmocka_unit_test(validate_rejects_unknown_kind),
        cmocka_unit_test(validate_rejects_invalid_utf8_naming_the_field),
        cmocka_unit_test(validate_checks_host_api_token_without_quoting_it),
        cmocka_unit_test(utf8_seq_measures_each_form),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
