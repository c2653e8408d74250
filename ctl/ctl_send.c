/* ctl_send: `envrunctl send`: encode one RunCommand (or take raw bytes) and
 * produce it to the commands topic, keyed by the run id (contract.md 3).
 * Owns its producer and buffers for the call; single-threaded. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl_int.h"
#include "schemas/schemas.h"

#define SEND_TIMEOUT_MS 60000
#define RAW_MAX_BYTES   (16 * 1024 * 1024)

static const char usage[] =
    "usage: envrunctl send --kind acquire|realize|release --company ID\n"
    "                      --agent ID [options]\n"
    "       envrunctl send --file FILE|- [--brokers B] [--topic-prefix P]\n"
    "Encode a RunCommand and produce it to <prefix>commands, keyed by the\n"
    "run id (else the command id); print the command id once delivered.\n"
    "\n"
    "  --brokers B                 bootstrap servers "
    "($ENVRUN_KAFKA_BROKERS)\n"
    "  --topic-prefix P            topic prefix ($ENVRUN_TOPIC_PREFIX, "
    "envrun.)\n"
    "  --run ID                    heartbeatRunId (absent: an ad-hoc probe)\n"
    "  --command-id ID             commandId (default: a random uuid)\n"
    "  --environment ID            acquire: selectedEnvironmentId\n"
    "  --adapter-type T            acquire, realize: adapterType "
    "(claude_local)\n"
    "  --issue ID                  acquire, realize: issueId\n"
    "  --execution-workspace ID    acquire, realize: executionWorkspaceId\n"
    "  --execution-workspace-mode M  acquire: executionWorkspaceMode;\n"
    "                              realize: requestedMode\n"
    "  --expires-in S              acquire: requestedExpiresAt, S seconds "
    "from now\n"
    "  --lease ID                  realize: leaseId (default: the run's "
    "lease)\n"
    "  --workspace-json J          realize: workspaceJson "
    "({\"cwd\":\"<cwd>\"})\n"
    "  --runtime-overlay-json J    realize: runtimeOverlayJson\n"
    "  --status S                  release: released|expired|failed "
    "(released)\n"
    "  --failure-reason R          release: failureReason\n"
    "  --file F                    the command as JSON (\"-\": standard "
    "input)\n"
    "                              in the shape `envrunctl tail commands`\n"
    "                              prints; validated before it is sent\n"
    "  --raw-file F                send the bytes of F as they are (tests)\n"
    "\n"
    "Exit status: 0 sent, 1 runtime failure, 2 usage error or a bad --file\n"
    "or --raw-file: missing, unreadable, too large or not a valid command\n"
    "(one line on stderr naming the option, the file or the field).\n";

struct send_args {
    const char *brokers;
    const char *prefix;
    const char *kind;
    const char *company;
    const char *agent;
    const char *run;
    const char *command_id;
    const char *environment;
    const char *adapter_type;
    const char *issue;
    const char *exec_ws;
    const char *exec_ws_mode;
    const char *expires_in;
    const char *lease;
    const char *workspace_json;
    const char *overlay_json;
    const char *status;
    const char *failure_reason;
    const char *raw_file;
    const char *file;
};

/* {"cwd":"<current directory>"} into out. */
static int default_workspace(struct er_buf *out, struct er_err *err)
{
    char cwd[PATH_MAX];
    const char *p;
    int rc;

    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                          "cannot read the current directory");
    rc = er_buf_append(out, "{\"cwd\":\"", 8);
    for (p = cwd; rc == 0 && *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            rc = er_buf_append(out, "\\", 1);
        if (rc == 0 && (unsigned char)*p < 0x20)
            rc = er_buf_printf(out, "\\u%04x", (unsigned)*p);
        else if (rc == 0)
            rc = er_buf_append(out, p, 1);
    }
    if (rc == 0)
        rc = er_buf_append(out, "\"}", 2);
    if (rc != 0)
        return er_err_set(err, rc, ER_ERRCLASS_FATAL,
                          "workspace json: out of memory");
    return 0;
}

/* --expires-in: whole seconds from now, 1 to 10 years' worth. */
static int expires_at(const char *text, int64_t *out)
{
    char *end = NULL;
    long long s;

    errno = 0;
    s = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || s < 1 ||
        s > 10LL * 366 * 86400) {
        er_ctl_util_usage_error("send", "--expires-in: expected whole "
                                        "seconds, 1 to 316224000");
        return ER_EINVAL;
    }
    *out = er_time_now_ms() + (int64_t)s * 1000;
    return 0;
}

/* --file carries the whole command: a flag that would build one as well
 * is a usage error rather than silently ignored. */
static int check_file_alone(const struct send_args *a)
{
    const struct {
        const char *name;
        const char *value;
    } flags[] = {
        { "--raw-file", a->raw_file },
        { "--kind", a->kind },
        { "--company", a->company },
        { "--agent", a->agent },
        { "--run", a->run },
        { "--command-id", a->command_id },
        { "--environment", a->environment },
        { "--adapter-type", a->adapter_type },
        { "--issue", a->issue },
        { "--execution-workspace", a->exec_ws },
        { "--execution-workspace-mode", a->exec_ws_mode },
        { "--expires-in", a->expires_in },
        { "--lease", a->lease },
        { "--workspace-json", a->workspace_json },
        { "--runtime-overlay-json", a->overlay_json },
        { "--status", a->status },
        { "--failure-reason", a->failure_reason },
    };
    size_t i;

    for (i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        if (flags[i].value != NULL) {
            er_ctl_util_usage_error("send",
                                    "%s cannot be combined with "
                                    "--file",
                                    flags[i].name);
            return ER_EINVAL;
        }
    }
    return 0;
}

/* Check the options that are required or restricted to a set of words;
 * returns 0 or prints the usage error and returns ER_EINVAL. */
static int check_args(const struct send_args *a, enum er_cmd_kind *kind,
                      enum er_release_status *status)
{
    if (a->brokers == NULL) {
        er_ctl_util_usage_error("send", "--brokers or ENVRUN_KAFKA_BROKERS "
                                        "is required");
        return ER_EINVAL;
    }
    if (a->file != NULL)
        return check_file_alone(a);
    if (a->raw_file != NULL)
        return 0;
    if (a->kind == NULL) {
        er_ctl_util_usage_error("send", "--kind is required");
        return ER_EINVAL;
    }
    if (strcmp(a->kind, "acquire") == 0) {
        *kind = ER_CMD_ACQUIRE;
    } else if (strcmp(a->kind, "realize") == 0) {
        *kind = ER_CMD_REALIZE;
    } else if (strcmp(a->kind, "release") == 0) {
        *kind = ER_CMD_RELEASE;
    } else {
        er_ctl_util_usage_error("send", "--kind: expected acquire, realize "
                                        "or release");
        return ER_EINVAL;
    }
    if (a->company == NULL || a->agent == NULL) {
        er_ctl_util_usage_error("send", "%s is required",
                                a->company == NULL ? "--company" : "--agent");
        return ER_EINVAL;
    }
    *status = ER_RELEASE_RELEASED;
    if (a->status == NULL || strcmp(a->status, "released") == 0) {
        *status = ER_RELEASE_RELEASED;
    } else if (strcmp(a->status, "expired") == 0) {
        *status = ER_RELEASE_EXPIRED;
    } else if (strcmp(a->status, "failed") == 0) {
        *status = ER_RELEASE_FAILED;
    } else {
        er_ctl_util_usage_error("send", "--status: expected released, "
                                        "expired or failed");
        return ER_EINVAL;
    }
    return 0;
}

/* Cast away const for the encoder's input struct, whose strings it only
 * reads (schemas.h: "when encoding, the caller owns them"). */
static char *in(const char *s)
{
    return (char *)(uintptr_t)s;
}

/* --file: read, map, validate and encode the command into value; its id
 * goes to command_id and its key (run id, else command id, NUL-terminated)
 * to key. Returns an exit code; a bad file (missing, unreadable, too
 * large, or not a valid command) is a usage error (2) whose line names the
 * file and, where there is one, the field. The text read may hold a
 * hostApiToken: it is wiped before it is freed. */
static int from_file(const char *path, struct er_buf *value,
                     char command_id[37], struct er_buf *key,
                     struct er_err *err)
{
    struct er_buf text;
    struct er_run_command cmd;
    json_t *doc = NULL;
    char id_buf[37];
    const char *k;
    int exit_code = ER_CTL_EXIT_USAGE;

    er_buf_init(&text, RAW_MAX_BYTES);
    memset(&cmd, 0, sizeof(cmd));
    if (er_ctl_util_read_file(path, &text, err) != 0)
        goto out;
    if (er_ctl_cmdjson_parse((const char *)text.data, text.len, &cmd, &doc,
                             id_buf, err) != 0 ||
        er_validate_command(&cmd, err) != 0) {
        char why[sizeof(err->msg)];

        memcpy(why, err->msg, sizeof(why));
        er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL, "%s: %s", path, why);
        goto out;
    }
    if (strlen(cmd.command_id) >= 37) {
        er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL, "%s: commandId: too long",
                   path);
        goto out;
    }
    memcpy(command_id, cmd.command_id, strlen(cmd.command_id) + 1);
    k = cmd.heartbeat_run_id != NULL ? cmd.heartbeat_run_id : cmd.command_id;
    if (er_buf_append(key, k, strlen(k) + 1) != 0) {
        er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL, "%s: key too long", path);
        goto out;
    }
    exit_code = ER_CTL_EXIT_FAIL;
    if (er_codec_command_encode(&cmd, value, err) != 0)
        goto out;
    exit_code = ER_CTL_EXIT_OK;

out:
    er_secret_fini(&cmd.host_api_token);
    json_decref(doc); /* its copy of the token was wiped by the parser */
    er_wipe(text.data, text.len);
    er_buf_fini(&text);
    return exit_code;
}

/* With ENVRUN_SCHEMA_REGISTRY_URL set (envrunctl.c installs the client),
 * the command goes out in the Confluent wire format under
 * <topic>-value, as the worker publishes its own records. */
static int frame_for_registry(const char *topic, struct er_buf *value,
                              struct er_err *err)
{
    struct er_registry *reg = er_registry_installed();
    struct er_buf framed;
    char subject[600];
    int rc;

    if (reg == NULL)
        return 0;
    snprintf(subject, sizeof(subject), "%s-value", topic);
    rc = er_registry_register(reg, ER_REC_RUN_COMMAND, subject, err);
    if (rc != 0)
        return rc;
    er_buf_init(&framed, value->max_len);
    rc = er_registry_frame(reg, value->data, value->len, &framed, err);
    if (rc == 1) {
        er_buf_fini(value);
        *value = framed;
        return 0;
    }
    er_buf_fini(&framed);
    return rc;
}

int er_ctl_send_main(int argc, char **argv)
{
    struct send_args a;
    struct er_run_command cmd;
    struct er_buf value;
    struct er_buf ws;
    struct er_buf key_buf;
    struct er_err err;
    rd_kafka_t *rk = NULL;
    enum er_cmd_kind kind = ER_CMD_ACQUIRE;
    enum er_release_status status = ER_RELEASE_RELEASED;
    char command_id[37];
    char topic[512];
    const char *key;
    size_t pos_cnt = 0;
    int exit_code = ER_CTL_EXIT_FAIL;
    const struct er_ctl_opt opts[] = {
        { "brokers", &a.brokers, NULL, NULL },
        { "topic-prefix", &a.prefix, NULL, NULL },
        { "kind", &a.kind, NULL, NULL },
        { "company", &a.company, NULL, NULL },
        { "agent", &a.agent, NULL, NULL },
        { "run", &a.run, NULL, NULL },
        { "command-id", &a.command_id, NULL, NULL },
        { "environment", &a.environment, NULL, NULL },
        { "adapter-type", &a.adapter_type, NULL, NULL },
        { "issue", &a.issue, NULL, NULL },
        { "execution-workspace", &a.exec_ws, NULL, NULL },
        { "execution-workspace-mode", &a.exec_ws_mode, NULL, NULL },
        { "expires-in", &a.expires_in, NULL, NULL },
        { "lease", &a.lease, NULL, NULL },
        { "workspace-json", &a.workspace_json, NULL, NULL },
        { "runtime-overlay-json", &a.overlay_json, NULL, NULL },
        { "status", &a.status, NULL, NULL },
        { "failure-reason", &a.failure_reason, NULL, NULL },
        { "raw-file", &a.raw_file, NULL, NULL },
        { "file", &a.file, NULL, NULL },
    };

    memset(&a, 0, sizeof(a));
    memset(&cmd, 0, sizeof(cmd));
    er_buf_init(&value, RAW_MAX_BYTES);
    er_buf_init(&ws, ER_CMD_JSON_MAX * 2);
    er_buf_init(&key_buf, ER_CMD_ID_MAX + 1);
    er_err_clear(&err);

    switch (er_ctl_util_parse("send", argc, argv, opts,
                              sizeof(opts) / sizeof(opts[0]), NULL, 0,
                              &pos_cnt)) {
    case ER_CTL_PARSE_OK:
        break;
    case ER_CTL_PARSE_HELP:
        fputs(usage, stdout);
        exit_code = ER_CTL_EXIT_OK;
        goto out;
    case ER_CTL_PARSE_USAGE:
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (a.brokers == NULL)
        a.brokers = er_ctl_util_env("ENVRUN_KAFKA_BROKERS", NULL);
    if (er_ctl_util_prefix_get("send", a.prefix, &a.prefix) != 0 ||
        check_args(&a, &kind, &status) != 0 ||
        (a.expires_in != NULL &&
         expires_at(a.expires_in, &cmd.requested_expires_at_ms) != 0)) {
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (a.command_id != NULL) {
        if (strlen(a.command_id) >= sizeof(command_id)) {
            er_ctl_util_usage_error("send", "--command-id is too long");
            exit_code = ER_CTL_EXIT_USAGE;
            goto out;
        }
        memcpy(command_id, a.command_id, strlen(a.command_id) + 1);
    } else if (er_uuid_v4(command_id) != 0) {
        fputs("envrunctl send: no random bytes for a command id\n", stderr);
        goto out;
    }

    if (a.file != NULL) {
        exit_code = from_file(a.file, &value, command_id, &key_buf, &err);
        if (exit_code != ER_CTL_EXIT_OK)
            goto out;
        exit_code = ER_CTL_EXIT_FAIL;
    } else if (a.raw_file != NULL) {
        if (er_ctl_util_read_file(a.raw_file, &value, &err) != 0) {
            exit_code = ER_CTL_EXIT_USAGE;
            goto out;
        }
    } else {
        cmd.command_id = command_id;
        cmd.issued_at_ms = er_time_now_ms();
        cmd.company_id = in(a.company);
        cmd.agent_id = in(a.agent);
        cmd.heartbeat_run_id = in(a.run);
        cmd.kind = kind;
        cmd.adapter_type =
            in(a.adapter_type != NULL ? a.adapter_type : "claude_local");
        cmd.issue_id = in(a.issue);
        cmd.execution_workspace_id = in(a.exec_ws);
        cmd.selected_environment_id = in(a.environment);
        cmd.execution_workspace_mode = in(a.exec_ws_mode);
        cmd.requested_mode = in(a.exec_ws_mode);
        cmd.lease_id = in(a.lease);
        cmd.runtime_overlay_json = in(a.overlay_json);
        cmd.release_status = status;
        cmd.failure_reason = in(a.failure_reason);
        if (a.workspace_json != NULL) {
            cmd.workspace_json = in(a.workspace_json);
        } else if (kind == ER_CMD_REALIZE) {
            if (default_workspace(&ws, &err) != 0)
                goto out;
            cmd.workspace_json = (char *)ws.data;
        }
        if (er_codec_command_encode(&cmd, &value, &err) != 0)
            goto out;
    }

    if (er_ctl_util_topic_full(a.prefix, "commands", topic, sizeof(topic)) !=
        0) {
        er_ctl_util_usage_error("send", "--topic-prefix is too long");
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    rk = er_ctl_util_kafka_new(a.brokers, true, &err);
    if (rk == NULL) {
        if (err.code == ER_EINVAL)
            exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    key = a.run != NULL ? a.run : command_id;
    if (key_buf.len != 0)
        key = (const char *)key_buf.data;
    if (a.raw_file == NULL && frame_for_registry(topic, &value, &err) != 0)
        goto out;
    if (er_ctl_util_produce_sync(rk, topic, key, strlen(key), value.data,
                                 value.len, NULL, SEND_TIMEOUT_MS, NULL,
                                 &err) != 0)
        goto out;
    printf("%s\n", command_id);
    exit_code = ER_CTL_EXIT_OK;

out:
    /* err.msg may quote the file (an unknown field's name). */
    if (err.code != 0)
        er_ctl_util_err_print("send", err.msg);
    if (rk != NULL)
        rd_kafka_destroy(rk);
    er_buf_fini(&key_buf);
    er_buf_fini(&ws);
    /* The encoded command may hold the hostApiToken. */
    er_wipe(value.data, value.len);
    er_buf_fini(&value);
    return exit_code;
}
