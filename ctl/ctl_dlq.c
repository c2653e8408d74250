/* ctl_dlq: `envrunctl dlq list` shows the dead letters of <prefix>commands.dlq
 * with their reasons, and `envrunctl dlq replay` publishes chosen ones to
 * <prefix>commands again after a fix: each is decoded and validated first
 * (what is not a valid command is skipped, with the reason), keeps its
 * original key and gets an envrun.replayed.from header, which a later
 * replay finds on commands and skips. Single-threaded; owns its clients. */
#include <inttypes.h>
#include <string.h>

#include "ctl/ctl_int.h"

#define DLQ_DEFAULT_IDLE_MS 30000
#define DLQ_SEND_TIMEOUT_MS 60000
#define DLQ_OFFSETS_MAX     1024
#define DLQ_LINE_MAX        (64 * 1024 * 1024)
#define DLQ_HDR_MAX         512
/* The header a replayed record carries: "<dlq topic>:<partition>:<offset>"
 * of the letter it came from. */
#define DLQ_REPLAYED_FROM   "envrun.replayed.from"

static const char usage[] =
    "usage: envrunctl dlq list [options]\n"
    "       envrunctl dlq replay (--all | --partition P [--offset N ...] |\n"
    "                            --error-code C) [options]\n"
    "Show the dead letters of <prefix>commands.dlq, or publish chosen ones to\n"
    "<prefix>commands again. `envrunctl dlq list --help` and `envrunctl dlq\n"
    "replay --help` describe the options.\n";

static const char list_usage[] =
    "usage: envrunctl dlq list [--brokers B] [--topic-prefix P]\n"
    "                          [--format json|table] [--max N]\n"
    "                          [--timeout-ms T] [--partition P]\n"
    "                          [--error-code C]\n"
    "List the dead letters of <prefix>commands.dlq, oldest first, up to the\n"
    "end the topic had when the command started: partition, offset, key,\n"
    "the headers envrun.error, envrun.error.code, envrun.source.partition,\n"
    "envrun.source.offset and envrun.redacted, and the command decoded where\n"
    "its bytes decode (else the decoding error; the bytes are never shown,\n"
    "as they may hold a token). The hostApiToken shows as \"<redacted>\",\n"
    "secret-looking keys of workspaceJson and runtimeOverlayJson as\n"
    "\"***REDACTED***\".\n"
    "\n"
    "  --brokers B         bootstrap servers ($ENVRUN_KAFKA_BROKERS)\n"
    "  --topic-prefix P    topic prefix ($ENVRUN_TOPIC_PREFIX, envrun.)\n"
    "  --format F          json (default): one JSON line per letter; table\n"
    "  --max N             stop after N letters\n"
    "  --timeout-ms T      give up after T ms without a record (30000)\n"
    "  --partition P       only letters of dlq partition P\n"
    "  --error-code C      only letters whose envrun.error.code is C\n"
    "                      (undecodable, unknown_schema, too_large,\n"
    "                      invalid_command)\n"
    "Exit status: 0 done, 1 runtime failure (also: stdout closed, or\n"
    "interrupted by a signal before the end), 2 usage error.\n";

static const char replay_usage[] =
    "usage: envrunctl dlq replay (--all | --partition P [--offset N ...] |\n"
    "                            --error-code C) [--dry-run] [--force]\n"
    "                            [--brokers B] [--topic-prefix P]\n"
    "                            [--format json|table] [--timeout-ms T]\n"
    "Publish the chosen dead letters of <prefix>commands.dlq to\n"
    "<prefix>commands again, with their original key and the header\n"
    "envrun.replayed.from (<dlq topic>:<partition>:<offset>). Each letter is\n"
    "decoded and validated first; one that is not a valid command is\n"
    "skipped with the reason. Unless --force, so is one already replayed\n"
    "(its header is on commands) and one with the header envrun.redacted:\n"
    "the worker removed its hostApiToken or secret keys of its JSON fields,\n"
    "so it is no longer the command that was sent (re-send the original).\n"
    "A realize command replayed without a hostApiToken runs without a\n"
    "bridge token, which the output notes. A command id the worker already\n"
    "answered gets that answer again (a command id runs once). One line per\n"
    "chosen letter (partition, offset, key, command id, action, where it\n"
    "went, reason or note): replayed, would-replay or skipped.\n"
    "\n"
    "  --all               every letter\n"
    "  --offset N          the letter at offset N of the partition given\n"
    "                      with --partition (repeatable; --partition may\n"
    "                      be left out when the dlq has one partition)\n"
    "  --partition P       letters of dlq partition P\n"
    "  --error-code C      letters whose envrun.error.code is C\n"
    "  --dry-run           print what would be replayed; produce nothing\n"
    "  --force             replay letters already replayed or redacted, too\n"
    "  --brokers B         bootstrap servers ($ENVRUN_KAFKA_BROKERS)\n"
    "  --topic-prefix P    topic prefix ($ENVRUN_TOPIC_PREFIX, envrun.)\n"
    "  --format F          json (default) or table\n"
    "  --timeout-ms T      give up reading after T ms without a record "
    "(30000)\n"
    "Selections combine: a letter must match every one given.\n"
    "Exit status: 0 done (skipped letters included), 1 runtime failure\n"
    "(a produce failed, stdout closed, or interrupted by a signal: the\n"
    "summary on stderr says how far it got), 2 usage error.\n";

/* Options both subcommands share, and the letter selection. */
struct dlq_args {
    const char *brokers;
    const char *prefix;
    const char *format_s;
    const char *max_s;
    const char *timeout_s;
    const char *partition_s;
    const char *error_code;
    struct er_ctl_list offsets;
    bool is_all;
    bool is_dry_run;
    bool is_force;
    enum er_ctl_format format;
    int64_t max_cnt;
    int64_t idle_ms;
    int64_t partition;
    int64_t offset_vals[DLQ_OFFSETS_MAX];
    char dlq_topic[512];
    char commands_topic[512];
};

/* The headers of one letter (empty strings when absent). */
struct letter_hdrs {
    char error[DLQ_HDR_MAX];
    char code[64];
    char src_partition[32];
    char src_offset[32];
    char redacted[DLQ_HDR_MAX];
};

static void read_hdrs(const rd_kafka_message_t *msg, struct letter_hdrs *h)
{
    memset(h, 0, sizeof(*h));
    er_ctl_util_header(msg, "envrun.error", h->error, sizeof(h->error));
    er_ctl_util_header(msg, "envrun.error.code", h->code, sizeof(h->code));
    er_ctl_util_header(msg, "envrun.source.partition", h->src_partition,
                       sizeof(h->src_partition));
    er_ctl_util_header(msg, "envrun.source.offset", h->src_offset,
                       sizeof(h->src_offset));
    er_ctl_util_header(msg, "envrun.redacted", h->redacted,
                       sizeof(h->redacted));
}

/* ,"name":"value" or ,"name":null for an empty value. */
static int put_field(struct er_buf *out, const char *name, const char *value)
{
    int rc = er_buf_printf(out, ",\"%s\":", name);

    if (rc == 0 && (value == NULL || value[0] == '\0'))
        return er_buf_append(out, "null", 4);
    if (rc == 0)
        rc = er_ctl_util_json_string(out, value, strlen(value));
    return rc;
}

/* ,"name":N for a decimal header value, else null. */
static int put_number(struct er_buf *out, const char *name, const char *value)
{
    int64_t v;

    if (er_ctl_util_parse_int(value, INT64_MIN, INT64_MAX, &v) != 0)
        return er_buf_printf(out, ",\"%s\":null", name);
    return er_buf_printf(out, ",\"%s\":%" PRId64, name, v);
}

/* {"partition":P,"offset":O,"key":K: the start of a letter's line. */
static int put_coords(struct er_buf *out, const rd_kafka_message_t *msg)
{
    int rc = er_buf_printf(
        out, "{\"partition\":%" PRId32 ",\"offset\":%" PRId64 ",\"key\":",
        msg->partition, msg->offset);

    if (rc == 0 && msg->key == NULL)
        return er_buf_append(out, "null", 4);
    if (rc == 0)
        rc = er_ctl_util_json_string(out, msg->key, msg->key_len);
    return rc;
}

/* One letter of `dlq list` as a JSON line into out. */
static int letter_json(const rd_kafka_message_t *msg,
                       const struct letter_hdrs *h, struct er_buf *out)
{
    struct er_buf value;
    struct er_err err;
    int rc;

    er_buf_init(&value, ER_CMD_VALUE_MAX_BYTES * 8);
    er_err_clear(&err);
    rc = put_coords(out, msg);
    if (rc == 0)
        rc = put_field(out, "errorCode", h->code);
    if (rc == 0)
        rc = put_field(out, "error", h->error);
    if (rc == 0)
        rc = put_number(out, "sourcePartition", h->src_partition);
    if (rc == 0)
        rc = put_number(out, "sourceOffset", h->src_offset);
    if (rc == 0)
        rc = put_field(out, "redacted", h->redacted);
    if (rc != 0)
        goto out;
    if (msg->payload != NULL &&
        er_registry_to_json(msg->payload, msg->len, &value, &err) == 0) {
        rc = er_ctl_util_value_redact(&value);
        if (rc == 0)
            rc = er_ctl_util_json_escape_controls(&value);
        if (rc == 0)
            rc = er_buf_append(out, ",\"command\":", 11);
        if (rc == 0)
            rc = er_buf_append(out, value.data, value.len);
        if (rc == 0)
            rc = er_buf_append(out, ",\"decodeError\":null", 19);
    } else {
        rc = er_buf_append(out, ",\"command\":null", 15);
        if (rc == 0)
            rc = put_field(out, "decodeError",
                           msg->payload == NULL ? "null value" : err.msg);
    }
    if (rc == 0)
        rc = er_buf_append(out, "}", 1);

out:
    er_buf_fini(&value);
    return rc;
}

/* A decimal number as a table cell. */
static int put_num_cell(struct er_buf *out, int64_t v, int width)
{
    char num[24];

    snprintf(num, sizeof(num), "%" PRId64, v);
    return er_ctl_view_cell(out, num, strlen(num), width, false);
}

/* A text as a table cell, "-" when empty or absent. */
static int put_text_cell(struct er_buf *out, const char *s, size_t len,
                         int width, bool is_last)
{
    if (s == NULL || len == 0)
        return er_ctl_view_cell(out, "-", 1, width, is_last);
    return er_ctl_view_cell(out, s, len, width, is_last);
}

/* One letter of `dlq list --format table`; every cell that comes from the
 * letter goes through er_ctl_view_cell. */
static int letter_row(const rd_kafka_message_t *msg,
                      const struct letter_hdrs *h, struct er_buf *out)
{
    char source[80];
    int rc;

    snprintf(source, sizeof(source), "%s@%s",
             h->src_partition[0] != '\0' ? h->src_partition : "-",
             h->src_offset[0] != '\0' ? h->src_offset : "-");
    rc = put_num_cell(out, msg->partition, 9);
    if (rc == 0)
        rc = put_num_cell(out, msg->offset, 8);
    if (rc == 0)
        rc = put_text_cell(out, h->code, strlen(h->code), 15, false);
    if (rc == 0)
        rc = put_text_cell(out, source, strlen(source), 14, false);
    if (rc == 0)
        rc = put_text_cell(out, msg->key, msg->key_len, 36, false);
    if (rc == 0)
        rc = put_text_cell(out, h->error, strlen(h->error), 0, true);
    return rc;
}

/* Whether the letter msg is selected by the options of a. */
static bool is_selected(const struct dlq_args *a, const rd_kafka_message_t *msg,
                        const struct letter_hdrs *h)
{
    size_t i;

    if (a->partition >= 0 && msg->partition != a->partition)
        return false;
    if (a->error_code != NULL && strcmp(h->code, a->error_code) != 0)
        return false;
    if (a->offsets.cnt == 0)
        return true;
    for (i = 0; i < a->offsets.cnt; i++) {
        if (a->offset_vals[i] == msg->offset)
            return true;
    }
    return false;
}

/* The header line of a table: the names as cells of the widths given
 * (the last unpadded). */
static int print_head(const char *const *names, const int *widths, size_t cnt)
{
    struct er_buf line;
    size_t i;
    int rc = 0;

    er_buf_init(&line, 1024);
    for (i = 0; i < cnt && rc == 0; i++)
        rc = er_ctl_view_cell(&line, names[i], strlen(names[i]), widths[i],
                              i + 1 == cnt);
    if (rc == 0)
        rc = er_ctl_util_out_line(line.data, line.len);
    er_buf_fini(&line);
    return rc;
}

/* Parse the options of `dlq SUB` into a; returns an exit code, or -1 to go
 * on. */
static int parse_args(const char *cmd, const char *help, bool is_replay,
                      int argc, char **argv, struct dlq_args *a)
{
    static const char *offset_strs[DLQ_OFFSETS_MAX];
    size_t pos_cnt = 0;
    size_t i;
    const struct er_ctl_opt list_opts[] = {
        { "brokers", &a->brokers, NULL, NULL },
        { "topic-prefix", &a->prefix, NULL, NULL },
        { "format", &a->format_s, NULL, NULL },
        { "max", &a->max_s, NULL, NULL },
        { "timeout-ms", &a->timeout_s, NULL, NULL },
        { "partition", &a->partition_s, NULL, NULL },
        { "error-code", &a->error_code, NULL, NULL },
    };
    const struct er_ctl_opt replay_opts[] = {
        { "brokers", &a->brokers, NULL, NULL },
        { "topic-prefix", &a->prefix, NULL, NULL },
        { "format", &a->format_s, NULL, NULL },
        { "timeout-ms", &a->timeout_s, NULL, NULL },
        { "partition", &a->partition_s, NULL, NULL },
        { "error-code", &a->error_code, NULL, NULL },
        { "offset", NULL, NULL, &a->offsets },
        { "all", NULL, &a->is_all, NULL },
        { "dry-run", NULL, &a->is_dry_run, NULL },
        { "force", NULL, &a->is_force, NULL },
    };

    a->offsets.values = offset_strs;
    a->offsets.max = DLQ_OFFSETS_MAX;
    a->max_cnt = -1;
    a->idle_ms = DLQ_DEFAULT_IDLE_MS;
    a->partition = -1;
    switch (er_ctl_util_parse(
        cmd, argc, argv, is_replay ? replay_opts : list_opts,
        is_replay ? sizeof(replay_opts) / sizeof(replay_opts[0])
                  : sizeof(list_opts) / sizeof(list_opts[0]),
        NULL, 0, &pos_cnt)) {
    case ER_CTL_PARSE_OK:
        break;
    case ER_CTL_PARSE_HELP:
        fputs(help, stdout);
        return ER_CTL_EXIT_OK;
    case ER_CTL_PARSE_USAGE:
        return ER_CTL_EXIT_USAGE;
    }
    if (a->brokers == NULL)
        a->brokers = er_ctl_util_env("ENVRUN_KAFKA_BROKERS", NULL);
    if (er_ctl_util_prefix_get(cmd, a->prefix, &a->prefix) != 0)
        return ER_CTL_EXIT_USAGE;
    if (a->brokers == NULL) {
        er_ctl_util_usage_error(cmd, "--brokers or ENVRUN_KAFKA_BROKERS is "
                                     "required");
        return ER_CTL_EXIT_USAGE;
    }
    if (er_ctl_view_format_parse(a->format_s, &a->format) != 0) {
        er_ctl_util_usage_error(cmd, "--format: expected json or table");
        return ER_CTL_EXIT_USAGE;
    }
    if (a->max_s != NULL &&
        er_ctl_util_parse_int(a->max_s, 1, INT64_MAX, &a->max_cnt) != 0) {
        er_ctl_util_usage_error(cmd, "--max: expected a positive integer");
        return ER_CTL_EXIT_USAGE;
    }
    if (a->timeout_s != NULL &&
        er_ctl_util_parse_int(a->timeout_s, 0, INT32_MAX, &a->idle_ms) != 0) {
        er_ctl_util_usage_error(cmd, "--timeout-ms: expected an integer "
                                     "0..2147483647");
        return ER_CTL_EXIT_USAGE;
    }
    if (a->partition_s != NULL &&
        er_ctl_util_parse_int(a->partition_s, 0, INT32_MAX, &a->partition) !=
            0) {
        er_ctl_util_usage_error(cmd, "--partition: expected an integer "
                                     "0..2147483647");
        return ER_CTL_EXIT_USAGE;
    }
    for (i = 0; i < a->offsets.cnt; i++) {
        if (er_ctl_util_parse_int(a->offsets.values[i], 0, INT64_MAX,
                                  &a->offset_vals[i]) != 0) {
            er_ctl_util_usage_error(cmd,
                                    "--offset: expected a non-negative "
                                    "integer, not %s",
                                    a->offsets.values[i]);
            return ER_CTL_EXIT_USAGE;
        }
    }
    if (is_replay && !a->is_all && a->offsets.cnt == 0 &&
        a->partition_s == NULL && a->error_code == NULL) {
        er_ctl_util_usage_error(cmd, "nothing chosen: give --all, --offset, "
                                     "--partition or --error-code");
        return ER_CTL_EXIT_USAGE;
    }
    if (er_ctl_util_topic_full(a->prefix, "commands.dlq", a->dlq_topic,
                               sizeof(a->dlq_topic)) != 0 ||
        er_ctl_util_topic_full(a->prefix, "commands", a->commands_topic,
                               sizeof(a->commands_topic)) != 0) {
        er_ctl_util_usage_error(cmd, "--topic-prefix is too long");
        return ER_CTL_EXIT_USAGE;
    }
    return -1;
}

/* Why output stopped, into err: a signal (which also breaks a write that
 * blocked), else a closed stdout. what is "N letters" or the like. */
static int out_failed(const char *what, struct er_err *err)
{
    if (er_ctl_util_stop)
        return er_err_set(err, ER_ECANCELED, ER_ERRCLASS_FATAL,
                          "interrupted by a signal after %s", what);
    return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "stdout closed after %s",
                      what);
}

/* Where a reader stopped, into err (when it did not read to its end): a
 * signal, a closed stdout or a silent topic. what is "N letters" or the
 * like, for the message. Returns 0 when the reader did read to its end. */
static int stop_reason(const struct er_ctl_reader *reader, const char *topic,
                       int64_t idle_ms, const char *what, struct er_err *err)
{
    if (reader->done_cnt >= reader->part_cnt)
        return 0;
    if (er_ctl_util_stop || er_ctl_util_out_is_closed())
        return out_failed(what, err);
    return er_err_set(err, ER_ETIMEDOUT, ER_ERRCLASS_RETRY,
                      "%s not read to its end (no record for %lld ms) "
                      "after %s",
                      topic, (long long)idle_ms, what);
}

static int list_main(int argc, char **argv)
{
    static const char *const head[] = { "PARTITION", "OFFSET", "CODE",
                                        "SOURCE",    "KEY",    "ERROR" };
    static const int widths[] = { 9, 8, 15, 14, 36, 0 };
    struct dlq_args a;
    struct er_ctl_reader reader;
    struct er_buf line;
    struct er_err err;
    int64_t seen = 0;
    int exit_code;

    memset(&a, 0, sizeof(a));
    memset(&reader, 0, sizeof(reader));
    er_err_clear(&err);
    er_buf_init(&line, DLQ_LINE_MAX);
    exit_code = parse_args("dlq list", list_usage, false, argc, argv, &a);
    if (exit_code >= 0)
        goto out;
    exit_code = ER_CTL_EXIT_FAIL;
    er_ctl_util_signals_install();
    if (er_ctl_reader_open(&reader, a.brokers, a.dlq_topic, true, false,
                           &err) != 0) {
        if (err.code == ER_EINVAL)
            exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (a.format == ER_CTL_FORMAT_TABLE &&
        print_head(head, widths, sizeof(widths) / sizeof(widths[0])) != 0) {
        er_err_set(&err, ER_EIO, ER_ERRCLASS_FATAL, "stdout closed");
        goto out;
    }
    while (a.max_cnt < 0 || seen < a.max_cnt) {
        rd_kafka_message_t *msg = NULL;
        struct letter_hdrs h;
        int rc;

        if (er_ctl_reader_next(&reader, a.idle_ms, &msg) != 1)
            break;
        read_hdrs(msg, &h);
        if (!is_selected(&a, msg, &h)) {
            rd_kafka_message_destroy(msg);
            continue;
        }
        er_buf_reset(&line);
        rc = a.format == ER_CTL_FORMAT_TABLE ? letter_row(msg, &h, &line)
                                             : letter_json(msg, &h, &line);
        rd_kafka_message_destroy(msg);
        if (rc != 0) {
            er_err_set(&err, rc, ER_ERRCLASS_FATAL, "letter too large: %s",
                       er_errname(rc));
            goto out;
        }
        if (er_ctl_util_out_line(line.data, line.len) != 0) {
            char what[64];

            snprintf(what, sizeof(what), "%lld letters", (long long)seen);
            out_failed(what, &err);
            goto out;
        }
        seen++;
    }
    if (a.max_cnt < 0 || seen < a.max_cnt) {
        char what[64];

        snprintf(what, sizeof(what), "%lld letters", (long long)seen);
        if (stop_reason(&reader, a.dlq_topic, a.idle_ms, what, &err) != 0)
            goto out;
    }
    exit_code = ER_CTL_EXIT_OK;

out:
    if (err.code != 0)
        er_ctl_util_err_print("dlq list", err.msg);
    er_ctl_reader_close(&reader);
    er_buf_fini(&line);
    return exit_code;
}

/* The envrun.replayed.from values found on commands: a growable array of
 * owned strings. */
struct seen_set {
    char **ids;
    size_t cnt;
    size_t cap;
};

static bool seen_has(const struct seen_set *set, const char *id)
{
    size_t i;

    for (i = 0; i < set->cnt; i++) {
        if (strcmp(set->ids[i], id) == 0)
            return true;
    }
    return false;
}

static int seen_add(struct seen_set *set, const char *id)
{
    char *copy;

    if (seen_has(set, id))
        return 0;
    if (set->cnt == set->cap) {
        size_t cap = set->cap == 0 ? 16 : set->cap * 2;
        char **ids = er_realloc(set->ids, cap * sizeof(*ids));

        if (ids == NULL)
            return ER_ENOMEM;
        set->ids = ids;
        set->cap = cap;
    }
    copy = er_strdup(id);
    if (copy == NULL)
        return ER_ENOMEM;
    set->ids[set->cnt++] = copy;
    return 0;
}

static void seen_fini(struct seen_set *set)
{
    size_t i;

    for (i = 0; i < set->cnt; i++)
        er_free(set->ids[i]);
    er_free(set->ids);
    memset(set, 0, sizeof(*set));
}

/* Read commands up to its current end and collect every
 * envrun.replayed.from header. */
static int scan_replayed(const struct dlq_args *a, struct seen_set *set,
                         struct er_err *err)
{
    struct er_ctl_reader reader;
    rd_kafka_message_t *msg = NULL;
    char id[DLQ_HDR_MAX];
    int rc;

    rc = er_ctl_reader_open(&reader, a->brokers, a->commands_topic, true, false,
                            err);
    if (rc != 0)
        return rc;
    while (er_ctl_reader_next(&reader, a->idle_ms, &msg) == 1) {
        if (er_ctl_util_header(msg, DLQ_REPLAYED_FROM, id, sizeof(id)))
            rc = seen_add(set, id);
        rd_kafka_message_destroy(msg);
        if (rc != 0) {
            rc = er_err_set(err, rc, ER_ERRCLASS_FATAL,
                            "replay headers: out of memory");
            break;
        }
    }
    /* Read only in part, the commands topic cannot tell what was replayed
     * before. */
    if (rc == 0)
        rc = stop_reason(&reader, a->commands_topic, a->idle_ms,
                         "0 letters (while reading what was replayed before)",
                         err);
    er_ctl_reader_close(&reader);
    return rc;
}

/* What replay decided for one letter. */
struct outcome {
    const char *action; /* replayed, would-replay, skipped */
    char reason[2048];
    const char *note;
    char command_id[ER_CMD_ID_MAX + 1];
    struct er_ctl_delivery to;
};

static int outcome_line(const rd_kafka_message_t *msg, const struct outcome *o,
                        enum er_ctl_format format, struct er_buf *out)
{
    int rc;

    if (format == ER_CTL_FORMAT_TABLE) {
        const char *why = o->reason[0] != '\0' ? o->reason
                          : o->note != NULL    ? o->note
                                               : "";
        char to[64] = "-";

        if (o->to.offset >= 0)
            snprintf(to, sizeof(to), "%" PRId32 "@%" PRId64, o->to.partition,
                     o->to.offset);
        rc = er_ctl_view_cell(out, o->action, strlen(o->action), 12, false);
        if (rc == 0)
            rc = put_num_cell(out, msg->partition, 9);
        if (rc == 0)
            rc = put_num_cell(out, msg->offset, 8);
        if (rc == 0)
            rc = put_text_cell(out, msg->key, msg->key_len, 36, false);
        if (rc == 0)
            rc = put_text_cell(out, o->command_id, strlen(o->command_id), 36,
                               false);
        if (rc == 0)
            rc = er_ctl_view_cell(out, to, strlen(to), 10, false);
        if (rc == 0)
            rc = put_text_cell(out, why, strlen(why), 0, true);
        return rc;
    }
    rc = put_coords(out, msg);
    if (rc == 0)
        rc = put_field(out, "action", o->action);
    if (rc == 0)
        rc = put_field(out, "commandId", o->command_id);
    if (rc == 0)
        rc = put_field(out, "reason", o->reason);
    if (rc == 0)
        rc = put_field(out, "note", o->note);
    if (rc == 0 && o->to.offset >= 0)
        rc = er_buf_printf(out,
                           ",\"toPartition\":%" PRId32 ",\"toOffset\":%" PRId64,
                           o->to.partition, o->to.offset);
    if (rc == 0)
        rc = er_buf_append(out, "}", 1);
    return rc;
}

/* Decide on one selected letter (msg, with its headers h) and, unless a
 * dry run, produce it. */
static int replay_one(const struct dlq_args *a, rd_kafka_t *producer,
                      const rd_kafka_message_t *msg,
                      const struct letter_hdrs *h, struct seen_set *set,
                      struct outcome *o, struct er_err *err)
{
    struct er_run_command cmd;
    struct er_err why;
    char from[600];
    rd_kafka_headers_t *hdrs = NULL;
    bool is_decoded;
    int rc = 0;

    memset(o, 0, sizeof(*o));
    memset(&cmd, 0, sizeof(cmd));
    o->to.offset = -1;
    o->action = "skipped";
    er_err_clear(&why);
    snprintf(from, sizeof(from), "%s:%" PRId32 ":%" PRId64, a->dlq_topic,
             msg->partition, msg->offset);
    is_decoded =
        msg->payload != NULL &&
        er_registry_command_decode(msg->payload, msg->len, &cmd, &why) == 0;
    if (is_decoded)
        snprintf(o->command_id, sizeof(o->command_id), "%s",
                 cmd.command_id != NULL ? cmd.command_id : "");
    /* The worker took something out of this letter (the token, secret
     * keys of its JSON fields, or the body): replayed, it would run as a
     * command nobody sent. */
    if (h->redacted[0] != '\0' && !a->is_force) {
        snprintf(o->reason, sizeof(o->reason),
                 "redacted: the letter lost fields; re-send the original "
                 "(envrun.redacted: %s; --force replays it as it is)",
                 h->redacted);
        goto out;
    }
    if (msg->payload == NULL) {
        snprintf(o->reason, sizeof(o->reason), "no value");
        goto out;
    }
    if (!is_decoded) {
        snprintf(o->reason, sizeof(o->reason), "does not decode: %s", why.msg);
        goto out;
    }
    if (er_validate_command(&cmd, &why) != 0) {
        snprintf(o->reason, sizeof(o->reason), "not a valid command: %s",
                 why.msg);
        goto out;
    }
    if (seen_has(set, from) && !a->is_force) {
        snprintf(o->reason, sizeof(o->reason),
                 "already replayed (a record on %s has %s %s; --force "
                 "replays it again)",
                 a->commands_topic, DLQ_REPLAYED_FROM, from);
        goto out;
    }
    if (h->redacted[0] != '\0')
        o->note = "forced: the letter is redacted (envrun.redacted), so the "
                  "replayed command lacks what the worker removed";
    else if (cmd.kind == ER_CMD_REALIZE &&
             !er_secret_is_set(&cmd.host_api_token))
        o->note = "realize command without hostApiToken: it runs without a "
                  "bridge token";
    if (a->is_dry_run) {
        o->action = "would-replay";
        goto out;
    }
    hdrs = rd_kafka_headers_new(1);
    if (hdrs == NULL || rd_kafka_header_add(hdrs, DLQ_REPLAYED_FROM, -1, from,
                                            -1) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (hdrs != NULL)
            rd_kafka_headers_destroy(hdrs);
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                        "replay header: out of memory");
        goto out;
    }
    rc = er_ctl_util_produce_sync(producer, a->commands_topic, msg->key,
                                  msg->key_len, msg->payload, msg->len, hdrs,
                                  DLQ_SEND_TIMEOUT_MS, &o->to, err);
    if (rc != 0)
        goto out;
    o->action = "replayed";
    rc = seen_add(set, from);
    if (rc != 0)
        rc = er_err_set(err, rc, ER_ERRCLASS_FATAL,
                        "replay headers: out of memory");

out:
    er_codec_command_fini(&cmd);
    return rc;
}

/* --offset names an offset of one partition: without --partition it is
 * ambiguous unless the dlq has a single partition. Returns 0, or
 * ER_EINVAL after a usage line. */
static int check_offsets(const struct dlq_args *a,
                         const struct er_ctl_reader *reader)
{
    if (a->offsets.cnt == 0 || a->partition >= 0 || reader->part_cnt == 1)
        return 0;
    er_ctl_util_usage_error("dlq replay",
                            "--offset needs --partition: %s has %d "
                            "partitions",
                            a->dlq_topic, reader->part_cnt);
    return ER_EINVAL;
}

/* "N letters (last: [P] @O)" into out: how far a replay got. */
static void progress(char *out, size_t out_len, long long cnt,
                     int32_t last_partition, int64_t last_offset)
{
    if (last_offset < 0)
        snprintf(out, out_len, "%lld letters", cnt);
    else
        snprintf(out, out_len,
                 "%lld letters (last: [%" PRId32 "] @%" PRId64 ")", cnt,
                 last_partition, last_offset);
}

static int replay_main(int argc, char **argv)
{
    static const char *const head[] = { "ACTION",  "PARTITION", "OFFSET", "KEY",
                                        "COMMAND", "TO",        "REASON" };
    static const int widths[] = { 12, 9, 8, 36, 36, 10, 0 };
    struct dlq_args a;
    struct er_ctl_reader reader;
    struct seen_set set;
    struct er_buf line;
    struct er_err err;
    rd_kafka_t *producer = NULL;
    long long replayed = 0;
    long long skipped = 0;
    int32_t last_partition = -1;
    int64_t last_offset = -1;
    char what[96];
    int exit_code;

    memset(&a, 0, sizeof(a));
    memset(&reader, 0, sizeof(reader));
    memset(&set, 0, sizeof(set));
    er_err_clear(&err);
    er_buf_init(&line, DLQ_LINE_MAX);
    exit_code = parse_args("dlq replay", replay_usage, true, argc, argv, &a);
    if (exit_code >= 0)
        goto out;
    exit_code = ER_CTL_EXIT_FAIL;
    er_ctl_util_signals_install();
    /* The dlq first: its partition count decides whether --offset alone is
     * clear, before anything slow happens. */
    if (er_ctl_reader_open(&reader, a.brokers, a.dlq_topic, true, false,
                           &err) != 0) {
        if (err.code == ER_EINVAL)
            exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (check_offsets(&a, &reader) != 0) {
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (scan_replayed(&a, &set, &err) != 0)
        goto out;
    if (!a.is_dry_run) {
        producer = er_ctl_util_kafka_new(a.brokers, true, &err);
        if (producer == NULL)
            goto out;
    }
    if (a.format == ER_CTL_FORMAT_TABLE &&
        print_head(head, widths, sizeof(widths) / sizeof(widths[0])) != 0) {
        er_err_set(&err, ER_EIO, ER_ERRCLASS_FATAL, "stdout closed");
        goto out;
    }
    for (;;) {
        rd_kafka_message_t *msg = NULL;
        struct letter_hdrs h;
        struct outcome o;
        int rc;

        if (er_ctl_reader_next(&reader, a.idle_ms, &msg) != 1)
            break;
        read_hdrs(msg, &h);
        if (!is_selected(&a, msg, &h)) {
            rd_kafka_message_destroy(msg);
            continue;
        }
        /* Nothing is produced that nobody would be told about. */
        if (er_ctl_util_out_is_closed()) {
            rd_kafka_message_destroy(msg);
            break;
        }
        rc = replay_one(&a, producer, msg, &h, &set, &o, &err);
        if (rc == 0) {
            er_buf_reset(&line);
            rc = outcome_line(msg, &o, a.format, &line);
            if (rc != 0)
                er_err_set(&err, rc, ER_ERRCLASS_FATAL, "output: %s",
                           er_errname(rc));
        }
        if (rc == 0) {
            last_partition = msg->partition;
            last_offset = msg->offset;
            if (strcmp(o.action, "skipped") == 0)
                skipped++;
            else
                replayed++;
        }
        rd_kafka_message_destroy(msg);
        if (rc != 0)
            goto out;
        if (er_ctl_util_out_line(line.data, line.len) != 0) {
            progress(what, sizeof(what), replayed + skipped, last_partition,
                     last_offset);
            out_failed(what, &err);
            goto out;
        }
    }
    progress(what, sizeof(what), replayed + skipped, last_partition,
             last_offset);
    if (stop_reason(&reader, a.dlq_topic, a.idle_ms, what, &err) != 0)
        goto out;
    exit_code = ER_CTL_EXIT_OK;

out:
    if (err.code != 0)
        er_ctl_util_err_print("dlq replay", err.msg);
    if (exit_code != ER_CTL_EXIT_USAGE && a.brokers != NULL)
        fprintf(stderr, "envrunctl dlq replay: %lld %s, %lld skipped\n",
                replayed, a.is_dry_run ? "would be replayed" : "replayed",
                skipped);
    er_ctl_reader_close(&reader);
    if (producer != NULL)
        rd_kafka_destroy(producer);
    seen_fini(&set);
    er_buf_fini(&line);
    return exit_code;
}

int er_ctl_dlq_main(int argc, char **argv)
{
    if (argc < 1) {
        er_ctl_util_usage_error("dlq", "missing subcommand: list or replay");
        return ER_CTL_EXIT_USAGE;
    }
    if (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(usage, stdout);
        return ER_CTL_EXIT_OK;
    }
    if (strcmp(argv[0], "list") == 0)
        return list_main(argc - 1, argv + 1);
    if (strcmp(argv[0], "replay") == 0)
        return replay_main(argc - 1, argv + 1);
    er_ctl_util_usage_error("dlq", "unknown subcommand %s (list or replay)",
                            argv[0]);
    return ER_CTL_EXIT_USAGE;
}
