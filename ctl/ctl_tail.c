/* ctl_tail: `envrunctl tail`: print the records of one topic as JSON lines
 * or a table, filtered by run, lease, company or outcome. Reads through
 * ctl_reader (every partition assigned directly: no group join, nothing
 * committed). Single-threaded; owns its reader. */
#include <inttypes.h>
#include <string.h>

#include "ctl/ctl_int.h"

static const char usage[] =
    "usage: envrunctl tail TOPIC [--brokers B] [--topic-prefix P]\n"
    "                      [--from-beginning] [--follow] [--max N]\n"
    "                      [--timeout-ms T] [--run ID] [--lease ID]\n"
    "                      [--company ID] [--outcome ok|error|deferred]\n"
    "                      [--format json|table]\n"
    "Print the records of TOPIC: as JSON lines (topic, partition, offset, key\n"
    "and the decoded value, secret-looking keys of its JSON text fields\n"
    "masked; dead letters and values that do not decode: the headers, and\n"
    "the value in base64 on results, lease-events and activity, elsewhere\n"
    "only its length and schema header, as it may hold a token) or as a\n"
    "table. TOPIC is commands, results, lease-events, activity or\n"
    "commands.dlq (the prefix is added), or the full name of an existing\n"
    "topic.\n"
    "\n"
    "  --brokers B         bootstrap servers ($ENVRUN_KAFKA_BROKERS)\n"
    "  --topic-prefix P    topic prefix ($ENVRUN_TOPIC_PREFIX, envrun.)\n"
    "  --from-beginning    start at the oldest record and stop at the end\n"
    "                      the partitions had when tail started (unless\n"
    "                      --follow); default: new records only, followed\n"
    "  --follow            keep reading new records until --max, --timeout-ms\n"
    "                      or a signal\n"
    "  --max N             stop after printing N records\n"
    "  --timeout-ms T      stop after T ms without a record (default: never)\n"
    "  --run ID            only records whose heartbeatRunId (activity: "
    "runId)\n"
    "                      is ID\n"
    "  --lease ID          only records whose leaseId (commands: that of the\n"
    "                      realize command) is ID\n"
    "  --company ID        only records whose companyId is ID\n"
    "  --outcome O         only results whose outcome is O (ok, error,\n"
    "                      deferred)\n"
    "  --format F          json (default): one JSON line per record; table:\n"
    "                      aligned columns suited to the topic\n"
    "A record lacking a filtered field (or not decoded) does not match.\n"
    "Exit status: 0 done (also when stopped by a signal), 1 runtime failure\n"
    "(stdout closed included), 2 usage error (an unknown topic included).\n";

static bool is_dlq(const char *topic_short)
{
    size_t n = strlen(topic_short);

    return n >= 4 && strcmp(topic_short + n - 4, ".dlq") == 0;
}

/* Check the option values; 0 or a usage error printed and ER_EINVAL. */
static int check_values(const struct er_ctl_filter *filter,
                        const char *format_s, enum er_ctl_format *format)
{
    if (filter->outcome != NULL && strcmp(filter->outcome, "ok") != 0 &&
        strcmp(filter->outcome, "error") != 0 &&
        strcmp(filter->outcome, "deferred") != 0) {
        er_ctl_util_usage_error("tail", "--outcome: expected ok, error or "
                                        "deferred");
        return ER_EINVAL;
    }
    if (er_ctl_view_format_parse(format_s, format) != 0) {
        er_ctl_util_usage_error("tail", "--format: expected json or table");
        return ER_EINVAL;
    }
    return 0;
}

/* Print one record (msg, borrowed) when it passes the filters: into line
 * as JSON, or as a table row. *is_shown says whether it was printed.
 * Returns 0, or an error with err set: ER_ENOMEM / ER_E2BIG (the record
 * does not fit), ER_EBADMSG (our own line does not parse back), ER_EIO
 * (stdout closed). */
static int show(const char *topic_short, const rd_kafka_message_t *msg,
                const struct er_ctl_filter *filter, enum er_ctl_format format,
                struct er_buf *line, bool *is_shown, struct er_err *err)
{
    json_t *record = NULL;
    json_error_t jerr;
    int rc;

    *is_shown = false;
    er_buf_reset(line);
    rc = er_ctl_util_record_json(topic_short, msg, is_dlq(topic_short), line);
    if (rc != 0)
        return er_err_set(err, rc, ER_ERRCLASS_FATAL,
                          "record at [%" PRId32 "] @%" PRId64
                          " does not fit in memory (%s)",
                          msg->partition, msg->offset, er_errname(rc));
    if (format == ER_CTL_FORMAT_TABLE || er_ctl_view_filter_is_set(filter)) {
        /* json_string writes a NUL of a key or header as \u0000. */
        record = json_loadb((const char *)line->data, line->len, JSON_ALLOW_NUL,
                            &jerr);
        if (record == NULL)
            return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_FATAL,
                              "record at [%" PRId32 "] @%" PRId64
                              ": its JSON line does not parse (%s)",
                              msg->partition, msg->offset, jerr.text);
    }
    if (!er_ctl_view_filter_match(filter, json_object_get(record, "value"))) {
        json_decref(record);
        return 0;
    }
    if (format == ER_CTL_FORMAT_TABLE) {
        er_buf_reset(line);
        rc = er_ctl_view_table_row(topic_short, record, line);
    }
    json_decref(record);
    if (rc != 0)
        return er_err_set(err, rc, ER_ERRCLASS_FATAL,
                          "record at [%" PRId32 "] @%" PRId64
                          " does not fit in memory (%s)",
                          msg->partition, msg->offset, er_errname(rc));
    if (er_ctl_util_out_line(line->data, line->len) != 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "stdout closed");
    *is_shown = true;
    return 0;
}

int er_ctl_tail_main(int argc, char **argv)
{
    const char *brokers = NULL;
    const char *prefix = NULL;
    const char *max_s = NULL;
    const char *timeout_s = NULL;
    const char *format_s = NULL;
    const char *topic_arg = NULL;
    bool is_from_beginning = false;
    bool is_follow = false;
    int64_t max_cnt = -1;
    int64_t timeout_ms = -1;
    int64_t seen = 0;
    size_t pos_cnt = 0;
    char topic[512];
    const char *topic_short;
    struct er_ctl_filter filter;
    enum er_ctl_format format = ER_CTL_FORMAT_JSON;
    struct er_err err;
    struct er_buf line;
    struct er_ctl_reader reader;
    int exit_code = ER_CTL_EXIT_FAIL;
    const struct er_ctl_opt opts[] = {
        { "brokers", &brokers, NULL, NULL },
        { "topic-prefix", &prefix, NULL, NULL },
        { "from-beginning", NULL, &is_from_beginning, NULL },
        { "follow", NULL, &is_follow, NULL },
        { "max", &max_s, NULL, NULL },
        { "timeout-ms", &timeout_s, NULL, NULL },
        { "run", &filter.run, NULL, NULL },
        { "lease", &filter.lease, NULL, NULL },
        { "company", &filter.company, NULL, NULL },
        { "outcome", &filter.outcome, NULL, NULL },
        { "format", &format_s, NULL, NULL },
    };

    memset(&filter, 0, sizeof(filter));
    memset(&reader, 0, sizeof(reader));
    er_err_clear(&err);
    er_buf_init(&line, 64 * 1024 * 1024);
    switch (er_ctl_util_parse("tail", argc, argv, opts,
                              sizeof(opts) / sizeof(opts[0]), &topic_arg, 1,
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
    if (pos_cnt != 1) {
        er_ctl_util_usage_error("tail", "TOPIC is required");
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (brokers == NULL)
        brokers = er_ctl_util_env("ENVRUN_KAFKA_BROKERS", NULL);
    if (er_ctl_util_prefix_get("tail", prefix, &prefix) != 0) {
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (brokers == NULL) {
        er_ctl_util_usage_error("tail", "--brokers or ENVRUN_KAFKA_BROKERS "
                                        "is required");
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (max_s != NULL &&
        er_ctl_util_parse_int(max_s, 1, INT64_MAX, &max_cnt) != 0) {
        er_ctl_util_usage_error("tail", "--max: expected a positive integer");
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (timeout_s != NULL &&
        er_ctl_util_parse_int(timeout_s, 0, INT32_MAX, &timeout_ms) != 0) {
        er_ctl_util_usage_error("tail", "--timeout-ms: expected an integer "
                                        "0..2147483647");
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (check_values(&filter, format_s, &format) != 0) {
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    if (er_ctl_util_topic_full(prefix, topic_arg, topic, sizeof(topic)) != 0) {
        er_ctl_util_usage_error("tail", "TOPIC is too long");
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    topic_short = er_ctl_util_topic_short(prefix, topic);

    er_ctl_util_signals_install();
    /* From the end there is nothing to stop at: new records are followed,
     * as tail always did. */
    if (er_ctl_reader_open(&reader, brokers, topic, is_from_beginning,
                           is_follow || !is_from_beginning, &err) != 0) {
        if (err.code == ER_EINVAL)
            exit_code = ER_CTL_EXIT_USAGE;
        if (err.code == ER_ENOTFOUND &&
            !er_ctl_util_topic_is_known(topic_arg)) {
            /* Not one of ours and not on the cluster: a typo, most
             * likely. */
            er_err_clear(&err);
            er_ctl_util_usage_error("tail",
                                    "unknown topic %s: expected commands, "
                                    "results, lease-events, activity, "
                                    "commands.dlq or the full name of an "
                                    "existing topic",
                                    topic);
            exit_code = ER_CTL_EXIT_USAGE;
        }
        goto out;
    }
    if (format == ER_CTL_FORMAT_TABLE) {
        if (er_ctl_view_table_head(topic_short, &line) != 0)
            goto out;
        if (er_ctl_util_out_line(line.data, line.len) != 0) {
            er_err_set(&err, ER_EIO, ER_ERRCLASS_FATAL, "stdout closed");
            goto out;
        }
    }
    while (max_cnt < 0 || seen < max_cnt) {
        rd_kafka_message_t *msg = NULL;
        bool is_shown = false;
        int rc;

        if (er_ctl_reader_next(&reader, timeout_ms, &msg) != 1)
            break;
        rc = show(topic_short, msg, &filter, format, &line, &is_shown, &err);
        rd_kafka_message_destroy(msg);
        if (rc == ER_EIO && er_ctl_util_stop) {
            /* The signal broke a write that blocked: a stop like any. */
            er_err_clear(&err);
            break;
        }
        if (rc == ER_EIO)
            er_err_set(&err, ER_EIO, ER_ERRCLASS_FATAL,
                       "stdout closed after %lld records", (long long)seen);
        if (rc != 0)
            goto out;
        if (is_shown)
            seen++;
    }
    /* Stopped by a signal, tail is done; else a reader that went away is a
     * failure (what was not printed is lost to whoever waited for it). */
    if (!er_ctl_util_stop && er_ctl_util_out_is_closed()) {
        er_err_set(&err, ER_EIO, ER_ERRCLASS_FATAL,
                   "stdout closed after %lld records", (long long)seen);
        goto out;
    }
    exit_code = ER_CTL_EXIT_OK;

out:
    if (err.code != 0)
        er_ctl_util_err_print("tail", err.msg);
    er_ctl_reader_close(&reader);
    er_buf_fini(&line);
    return exit_code;
}
