/* ctl_cmdjson: a RunCommand read from JSON in the shape `envrunctl tail
 * commands` prints (Avro field names, the command union as an object with
 * "type"), for `envrunctl send --file`. A pure mapper over jansson values:
 * no I/O, no state; the command's strings are borrowed from the document. */
#include <string.h>

#include "ctl/ctl_int.h"
#include "worker/redact.h"

/* The fields each object may hold; anything else is a typo worth naming. */
static const char *const top_fields[] = {
    "commandId",      "issuedAt",    "companyId", "agentId",
    "heartbeatRunId", "traceparent", "command",   NULL,
};
static const char *const acquire_fields[] = {
    "type",
    "selectedEnvironmentId",
    "adapterType",
    "issueId",
    "executionWorkspaceId",
    "executionWorkspaceMode",
    "requestedExpiresAt",
    NULL,
};
static const char *const realize_fields[] = {
    "type",          "leaseId",
    "adapterType",   "issueId",
    "workspaceJson", "executionWorkspaceId",
    "requestedMode", "runtimeOverlayJson",
    "hostApiToken",  NULL,
};
static const char *const release_fields[] = {
    "type",
    "status",
    "failureReason",
    NULL,
};

/* Cast away const for the encoder's input struct, which only reads it
 * (schemas.h: "when encoding, the caller owns them"). */
static char *in(const char *s)
{
    return (char *)(uintptr_t)s;
}

static int check_keys(const json_t *obj, const char *where,
                      const char *const *allowed, struct er_err *err)
{
    const char *key;
    json_t *val;
    size_t i;

    /* json_object_foreach takes a non-const object; it only reads it. */
    json_object_foreach((json_t *)(uintptr_t)obj, key, val)
    {
        (void)val;
        for (i = 0; allowed[i] != NULL; i++) {
            if (strcmp(key, allowed[i]) == 0)
                break;
        }
        /* The name comes from the file: whoever prints the message passes
         * it through er_ctl_view_cell (er_ctl_util_err_print). */
        if (allowed[i] == NULL)
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                              "%s%s: unknown field", where, key);
    }
    return 0;
}

/* A string field: *out borrows it; NULL when absent or null and
 * !is_required. */
static int get_string(const json_t *obj, const char *where, const char *name,
                      bool is_required, char **out, struct er_err *err)
{
    const json_t *v = json_object_get(obj, name);

    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        if (is_required)
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                              "%s%s: required", where, name);
        return 0;
    }
    if (!json_is_string(v))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "%s%s: expected a string%s", where, name,
                          is_required ? "" : " or null");
    if (strlen(json_string_value(v)) != json_string_length(v))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "%s%s: holds a NUL character", where, name);
    *out = in(json_string_value(v));
    return 0;
}

/* A timestamp (ms since the epoch); *out keeps dflt when absent or null. */
static int get_time(const json_t *obj, const char *where, const char *name,
                    int64_t *out, struct er_err *err)
{
    const json_t *v = json_object_get(obj, name);

    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > ER_TIME_MAX_MS)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "%s%s: expected milliseconds since the epoch", where,
                          name);
    *out = (int64_t)json_integer_value(v);
    return 0;
}

/* What tail prints in place of a secret-looking key's value (it masks
 * them with er_redact_json) is not the value: a field holding the mask
 * was copied from tail and lost its secrets. */
static int check_not_masked(const char *name, const char *text,
                            struct er_err *err)
{
    if (text == NULL || strstr(text, ER_REDACT_MASK) == NULL)
        return 0;
    return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                      "%s: holds \"%s\", which tail prints in place of a "
                      "secret (give the values)",
                      name, ER_REDACT_MASK);
}

static int parse_acquire(const json_t *c, struct er_run_command *cmd,
                         struct er_err *err)
{
    static const char w[] = "command.";
    int rc;

    cmd->kind = ER_CMD_ACQUIRE;
    rc = check_keys(c, w, acquire_fields, err);
    if (rc == 0)
        rc = get_string(c, w, "selectedEnvironmentId", false,
                        &cmd->selected_environment_id, err);
    if (rc == 0)
        rc = get_string(c, w, "adapterType", true, &cmd->adapter_type, err);
    if (rc == 0)
        rc = get_string(c, w, "issueId", false, &cmd->issue_id, err);
    if (rc == 0)
        rc = get_string(c, w, "executionWorkspaceId", false,
                        &cmd->execution_workspace_id, err);
    if (rc == 0)
        rc = get_string(c, w, "executionWorkspaceMode", false,
                        &cmd->execution_workspace_mode, err);
    if (rc == 0)
        rc = get_time(c, w, "requestedExpiresAt", &cmd->requested_expires_at_ms,
                      err);
    return rc;
}

static int parse_realize(const json_t *c, struct er_run_command *cmd,
                         struct er_err *err)
{
    static const char w[] = "command.";
    char *token = NULL;
    int rc;

    cmd->kind = ER_CMD_REALIZE;
    rc = check_keys(c, w, realize_fields, err);
    if (rc == 0)
        rc = get_string(c, w, "leaseId", false, &cmd->lease_id, err);
    if (rc == 0)
        rc = get_string(c, w, "adapterType", true, &cmd->adapter_type, err);
    if (rc == 0)
        rc = get_string(c, w, "issueId", false, &cmd->issue_id, err);
    if (rc == 0)
        rc = get_string(c, w, "workspaceJson", true, &cmd->workspace_json, err);
    if (rc == 0)
        rc = get_string(c, w, "executionWorkspaceId", false,
                        &cmd->execution_workspace_id, err);
    if (rc == 0)
        rc =
            get_string(c, w, "requestedMode", false, &cmd->requested_mode, err);
    if (rc == 0)
        rc = get_string(c, w, "runtimeOverlayJson", false,
                        &cmd->runtime_overlay_json, err);
    if (rc == 0)
        rc =
            check_not_masked("command.workspaceJson", cmd->workspace_json, err);
    if (rc == 0)
        rc = check_not_masked("command.runtimeOverlayJson",
                              cmd->runtime_overlay_json, err);
    if (rc == 0)
        rc = get_string(c, w, "hostApiToken", false, &token, err);
    if (rc != 0 || token == NULL)
        return rc;
    /* What tail prints in place of a token is not a token. */
    if (strcmp(token, "<redacted>") == 0)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "command.hostApiToken: \"<redacted>\" is what tail "
                          "prints, not a token (remove the field or give "
                          "the token)");
    rc = er_secret_set(&cmd->host_api_token, token, strlen(token));
    /* The secret holds the token now; the document's copy goes, so that
     * freeing the document leaves none behind. */
    er_wipe(token, strlen(token));
    if (rc != 0)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                          "command.hostApiToken: out of memory");
    return 0;
}

static int parse_release(const json_t *c, struct er_run_command *cmd,
                         struct er_err *err)
{
    static const char w[] = "command.";
    char *status = NULL;
    int rc;

    cmd->kind = ER_CMD_RELEASE;
    rc = check_keys(c, w, release_fields, err);
    if (rc == 0)
        rc = get_string(c, w, "status", true, &status, err);
    if (rc == 0)
        rc =
            get_string(c, w, "failureReason", false, &cmd->failure_reason, err);
    if (rc != 0)
        return rc;
    if (strcmp(status, "released") == 0)
        cmd->release_status = ER_RELEASE_RELEASED;
    else if (strcmp(status, "expired") == 0)
        cmd->release_status = ER_RELEASE_EXPIRED;
    else if (strcmp(status, "failed") == 0)
        cmd->release_status = ER_RELEASE_FAILED;
    else
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "command.status: expected released, expired or "
                          "failed");
    return 0;
}

int er_ctl_cmdjson_parse(const char *text, size_t len,
                         struct er_run_command *cmd, json_t **doc,
                         char id_buf[37], struct er_err *err)
{
    json_error_t jerr;
    const json_t *obj;
    const json_t *c;
    char *type = NULL;
    int rc;

    memset(cmd, 0, sizeof(*cmd));
    *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (*doc == NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "not JSON (line %d, column %d): %s", jerr.line,
                          jerr.column, jerr.text);
    obj = *doc;
    /* A whole line of `envrunctl tail commands` carries the command in
     * "value". */
    if (json_is_object(obj) && json_object_get(obj, "topic") != NULL &&
        json_is_object(json_object_get(obj, "value")))
        obj = json_object_get(obj, "value");
    if (!json_is_object(obj))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "expected a JSON object (a RunCommand)");
    rc = check_keys(obj, "", top_fields, err);
    if (rc == 0)
        rc = get_string(obj, "", "commandId", false, &cmd->command_id, err);
    if (rc == 0)
        rc = get_string(obj, "", "companyId", true, &cmd->company_id, err);
    if (rc == 0)
        rc = get_string(obj, "", "agentId", true, &cmd->agent_id, err);
    if (rc == 0)
        rc = get_string(obj, "", "heartbeatRunId", false,
                        &cmd->heartbeat_run_id, err);
    if (rc == 0)
        rc = get_string(obj, "", "traceparent", false, &cmd->traceparent, err);
    cmd->issued_at_ms = er_time_now_ms();
    if (rc == 0)
        rc = get_time(obj, "", "issuedAt", &cmd->issued_at_ms, err);
    if (rc != 0)
        return rc;
    if (cmd->command_id == NULL) {
        if (er_uuid_v4(id_buf) != 0)
            return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                              "no random bytes for a command id");
        cmd->command_id = id_buf;
    }

    c = json_object_get(obj, "command");
    if (!json_is_object(c))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL, "command: %s",
                          c == NULL ? "required" : "expected an object");
    rc = get_string(c, "command.", "type", true, &type, err);
    if (rc != 0)
        return rc;
    if (strcmp(type, "AcquireCommand") == 0)
        return parse_acquire(c, cmd, err);
    if (strcmp(type, "RealizeCommand") == 0)
        return parse_realize(c, cmd, err);
    if (strcmp(type, "ReleaseCommand") == 0)
        return parse_release(c, cmd, err);
    return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                      "command.type: expected AcquireCommand, RealizeCommand "
                      "or ReleaseCommand");
}
