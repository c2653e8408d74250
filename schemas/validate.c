/* validate: checks the shape of a decoded RunCommand (ids, lengths, JSON
 * text fields, traceparent) before the worker acts on it. Pure functions:
 * thread-safe, own nothing past a call. */
#include <string.h>

#include <jansson.h>

#include "schemas/schemas.h"
#include "schemas/schemas_int.h"

size_t er_validate__utf8_seq(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    unsigned char lo = 0x80;
    unsigned char hi = 0xbf;
    size_t n;
    size_t i;

    if (len == 0)
        return 0;
    if (p[0] < 0x80)
        return 1;
    /* Table 3-7 of the Unicode standard: the second byte's range depends
     * on the first, which rules out overlong forms and surrogates. */
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        n = 2;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        n = 3;
        if (p[0] == 0xe0)
            lo = 0xa0;
        else if (p[0] == 0xed)
            hi = 0x9f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        n = 4;
        if (p[0] == 0xf0)
            lo = 0x90;
        else if (p[0] == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    }
    return n;
}

bool er_validate__utf8(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        size_t n = er_validate__utf8_seq(s + i, len - i);

        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

static bool is_lower_hex(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

static bool is_all_zero(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (s[i] != '0')
            return false;
    }
    return true;
}

/* W3C Trace Context: version-traceid-parentid-flags, lower-case hex,
 * version ff invalid, all-zero ids invalid. */
bool er_traceparent_is_valid(const char *s, size_t len)
{
    if (len != 55 || s[2] != '-' || s[35] != '-' || s[52] != '-')
        return false;
    if (!is_lower_hex(s, 2) || !is_lower_hex(s + 3, 32) ||
        !is_lower_hex(s + 36, 16) || !is_lower_hex(s + 53, 2))
        return false;
    if (memcmp(s, "ff", 2) == 0)
        return false;
    return !is_all_zero(s + 3, 32) && !is_all_zero(s + 36, 16);
}

bool er_traceparent_accept(char *s)
{
    size_t len = strlen(s);

    /* A later version keeps version 00's fields where 00 has them and may
     * add more after a '-': read those, carry them as version 00. */
    if (len > 55 && is_lower_hex(s, 2) && memcmp(s, "00", 2) != 0 &&
        s[55] == '-') {
        s[55] = '\0';
        len = 55;
    }
    if (!er_traceparent_is_valid(s, len))
        return false;
    memcpy(s, "00", 2);
    return true;
}

/* Length and encoding checks every string field gets; max 0: no cap. */
static int check_text(const char *field, const char *s, size_t max,
                      struct er_err *err)
{
    size_t len = strlen(s);

    if (max != 0 && len > max)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "%s: longer than %zu bytes", field, max);
    if (!er_validate__utf8(s, len))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "%s: not valid utf-8", field);
    return 0;
}

static int check_uuid(const char *field, const char *s, bool is_required,
                      struct er_err *err)
{
    if (s == NULL) {
        if (is_required)
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP, "%s: missing",
                              field);
        return 0;
    }
    if (!er_uuid_is_valid(s, strlen(s)))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP, "%s: not a uuid",
                          field);
    return 0;
}

static int check_short(const char *field, const char *s, bool is_required,
                       struct er_err *err)
{
    if (s == NULL) {
        if (is_required)
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP, "%s: missing",
                              field);
        return 0;
    }
    if (is_required && s[0] == '\0')
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP, "%s: empty", field);
    return check_text(field, s, ER_CMD_SHORT_MAX, err);
}

/* JSON text that must parse to an object (or, when may_be_null, to null). */
static int check_json(const char *field, const char *s, bool may_be_null,
                      struct er_err *err)
{
    json_t *doc = NULL;
    json_error_t jerr;
    int rc;

    rc = check_text(field, s, ER_CMD_JSON_MAX, err);
    if (rc != 0)
        goto out;
    doc = json_loadb(s, strlen(s), JSON_DECODE_ANY, &jerr);
    if (doc == NULL) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                        "%s: not JSON (%s at byte %d)", field, jerr.text,
                        jerr.position);
        goto out;
    }
    if (json_is_object(doc) || (may_be_null && json_is_null(doc)))
        goto out;
    rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                    may_be_null ? "%s: not a JSON object or null"
                                : "%s: not a JSON object",
                    field);

out:
    json_decref(doc);
    return rc;
}

static int check_acquire(const struct er_run_command *cmd, struct er_err *err)
{
    const char *env = cmd->selected_environment_id;
    int rc;

    /* Null or empty selects the company's Local environment. */
    if (env != NULL && env[0] != '\0') {
        rc = check_uuid("selectedEnvironmentId", env, false, err);
        if (rc != 0)
            return rc;
    }
    rc = check_short("adapterType", cmd->adapter_type, true, err);
    if (rc == 0)
        rc = check_uuid("issueId", cmd->issue_id, false, err);
    if (rc == 0)
        rc = check_uuid("executionWorkspaceId", cmd->execution_workspace_id,
                        false, err);
    if (rc == 0)
        rc = check_short("executionWorkspaceMode",
                         cmd->execution_workspace_mode, false, err);
    return rc;
}

static int check_realize(const struct er_run_command *cmd, struct er_err *err)
{
    int rc;

    /* Without a lease id the run's active lease is meant, which needs the
     * run. */
    if (cmd->lease_id == NULL && cmd->heartbeat_run_id == NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "heartbeatRunId is required for realize without "
                          "leaseId");
    rc = check_uuid("leaseId", cmd->lease_id, false, err);
    if (rc == 0)
        rc = check_short("adapterType", cmd->adapter_type, true, err);
    if (rc == 0)
        rc = check_uuid("issueId", cmd->issue_id, false, err);
    if (rc == 0 && cmd->workspace_json == NULL)
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                        "workspaceJson: missing");
    else if (rc == 0)
        rc = check_json("workspaceJson", cmd->workspace_json, false, err);
    if (rc == 0)
        rc = check_uuid("executionWorkspaceId", cmd->execution_workspace_id,
                        false, err);
    if (rc == 0)
        rc = check_short("requestedMode", cmd->requested_mode, false, err);
    if (rc == 0 && cmd->runtime_overlay_json != NULL)
        rc = check_json("runtimeOverlayJson", cmd->runtime_overlay_json, true,
                        err);
    /* The token's value never reaches a message, only its field name. */
    if (rc == 0 && er_secret_is_set(&cmd->host_api_token)) {
        const struct er_secret *tok = &cmd->host_api_token;

        if (tok->len > ER_CMD_TOKEN_MAX)
            rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                            "hostApiToken: longer than %d bytes",
                            ER_CMD_TOKEN_MAX);
        else if (memchr(tok->value, '\0', tok->len) != NULL ||
                 !er_validate__utf8(tok->value, tok->len))
            rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                            "hostApiToken: not valid utf-8");
    }
    return rc;
}

static bool is_release_status(enum er_release_status status)
{
    switch (status) {
    case ER_RELEASE_RELEASED:
    case ER_RELEASE_EXPIRED:
    case ER_RELEASE_FAILED:
        return true;
    }
    return false;
}

static int check_release(const struct er_run_command *cmd, struct er_err *err)
{
    /* Without the run id a release cannot say which leases it means. */
    if (cmd->heartbeat_run_id == NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "heartbeatRunId is required for release");
    if (!is_release_status(cmd->release_status))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "status: unknown release status %d",
                          (int)cmd->release_status);
    if (cmd->failure_reason != NULL)
        return check_text("failureReason", cmd->failure_reason, ER_CMD_TEXT_MAX,
                          err);
    return 0;
}

int er_validate_command(const struct er_run_command *cmd, struct er_err *err)
{
    int rc;

    ER_ASSERT(cmd != NULL);

    rc = check_uuid("commandId", cmd->command_id, true, err);
    if (rc == 0)
        rc = check_uuid("companyId", cmd->company_id, true, err);
    if (rc == 0)
        rc = check_uuid("agentId", cmd->agent_id, true, err);
    if (rc == 0)
        rc = check_uuid("heartbeatRunId", cmd->heartbeat_run_id, false, err);
    if (rc == 0 && cmd->traceparent != NULL &&
        !er_traceparent_is_valid(cmd->traceparent, strlen(cmd->traceparent)))
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                        "traceparent: not a W3C traceparent");
    if (rc != 0)
        return rc;

    switch (cmd->kind) {
    case ER_CMD_ACQUIRE:
        return check_acquire(cmd, err);
    case ER_CMD_REALIZE:
        return check_realize(cmd, err);
    case ER_CMD_RELEASE:
        return check_release(cmd, err);
    }
    return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                      "command: unknown kind %d", (int)cmd->kind);
}
