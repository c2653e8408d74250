/* ctl_tail: `envrunctl tail`: print the records of one topic as JSON lines.
 * Assigns every partition directly (no consumer group join, so no join
 * delay and no committed offsets). Single-threaded; owns its consumer. */
#include <string.h>

#include "ctl/ctl_int.h"

#define TAIL_METADATA_TIMEOUT_MS 10000

static const char usage[] =
    "usage: envrunctl tail TOPIC [--brokers B] [--topic-prefix P]\n"
    "                      [--from-beginning] [--max N] [--timeout-ms T]\n"
    "Print each record of TOPIC as one JSON line: topic, partition, offset,\n"
    "key and the decoded value (dead-letter records: headers and the value\n"
    "in base64). TOPIC is commands, results, lease-events, activity or\n"
    "commands.dlq (the prefix is added), or a full topic name.\n"
    "\n"
    "  --brokers B         bootstrap servers ($ENVRUN_KAFKA_BROKERS)\n"
    "  --topic-prefix P    topic prefix ($ENVRUN_TOPIC_PREFIX, envrun.)\n"
    "  --from-beginning    start at the oldest record (default: new ones)\n"
    "  --max N             stop after N records\n"
    "  --timeout-ms T      stop after T ms without a record (default: "
    "never)\n";

static bool is_dlq(const char *topic_short)
{
    size_t n = strlen(topic_short);

    return n >= 4 && strcmp(topic_short + n - 4, ".dlq") == 0;
}

int er_ctl_tail_main(int argc, char **argv)
{
    const char *brokers = NULL;
    const char *prefix = NULL;
    const char *max_s = NULL;
    const char *timeout_s = NULL;
    const char *topic_arg = NULL;
    bool is_from_beginning = false;
    int64_t max_cnt = -1;
    int64_t timeout_ms = -1;
    int64_t seen = 0;
    int64_t last_ms;
    size_t pos_cnt = 0;
    char topic[512];
    const char *topic_list[1];
    const char *topic_short;
    struct er_err err;
    struct er_buf line;
    rd_kafka_t *rk = NULL;
    int exit_code = ER_CTL_EXIT_FAIL;
    const struct er_ctl_opt opts[] = {
        { "brokers", &brokers, NULL },
        { "topic-prefix", &prefix, NULL },
        { "from-beginning", NULL, &is_from_beginning },
        { "max", &max_s, NULL },
        { "timeout-ms", &timeout_s, NULL },
    };

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
    if (prefix == NULL)
        prefix = er_ctl_util_env("ENVRUN_TOPIC_PREFIX", "envrun.");
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
    if (er_ctl_util_topic_full(prefix, topic_arg, topic, sizeof(topic)) != 0) {
        er_ctl_util_usage_error("tail", "TOPIC is too long");
        exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    topic_short = er_ctl_util_topic_short(prefix, topic);

    er_ctl_util_signals_install();
    rk = er_ctl_util_kafka_new(brokers, false, &err);
    if (rk == NULL) {
        if (err.code == ER_EINVAL)
            exit_code = ER_CTL_EXIT_USAGE;
        goto out;
    }
    topic_list[0] = topic;
    if (er_ctl_util_assign_all(rk, topic_list, 1, is_from_beginning,
                               TAIL_METADATA_TIMEOUT_MS, &err) != 0)
        goto out;

    last_ms = er_time_mono_ms();
    while (!er_ctl_util_stop && (max_cnt < 0 || seen < max_cnt)) {
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 100);

        if (msg == NULL) {
            if (timeout_ms >= 0 && er_time_mono_ms() - last_ms >= timeout_ms)
                break;
            continue;
        }
        if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            /* Broker-side trouble is reported but tail goes on: the client
             * reconnects by itself. */
            fprintf(stderr, "envrunctl tail: %s\n",
                    rd_kafka_message_errstr(msg));
            rd_kafka_message_destroy(msg);
            continue;
        }
        last_ms = er_time_mono_ms();
        er_buf_reset(&line);
        if (er_ctl_util_record_json(topic_short, msg, is_dlq(topic_short),
                                    &line) != 0) {
            er_err_set(&err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                       "record at offset %lld does not fit in memory",
                       (long long)msg->offset);
            rd_kafka_message_destroy(msg);
            goto out;
        }
        rd_kafka_message_destroy(msg);
        fwrite(line.data, 1, line.len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        seen++;
    }
    exit_code = ER_CTL_EXIT_OK;

out:
    if (err.code != 0)
        fprintf(stderr, "envrunctl tail: %s\n", err.msg);
    if (rk != NULL) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    er_buf_fini(&line);
    return exit_code;
}
