/* ctl_util: option parsing, Kafka client set-up, topic names and record
 * rendering shared by envrunctl's subcommands. Single-threaded: the stop
 * flag is the only global it writes after start-up. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"
#include "schemas/schemas.h"
#include "worker/redact.h"
#include "worker/worker.h"

#define KAFKA_ERRSTR_LEN 512
#define PROPS_MAX        4096
/* The worker's limit on ENVRUN_TOPIC_PREFIX (struct er_config). */
#define PREFIX_MAX       128
#define ERR_LINE_MAX     1024

volatile sig_atomic_t er_ctl_util_stop;

const char *const er_ctl_util_topics[] = {
    "commands", "results", "lease-events", "activity", "commands.dlq", NULL,
};

static void on_signal(int sig)
{
    (void)sig;
    er_ctl_util_stop = 1;
}

void er_ctl_util_signals_install(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    er_ctl_util_sigpipe_ignore();
}

void er_ctl_util_sigpipe_ignore(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
}

bool er_ctl_util_out_is_closed(void)
{
    struct pollfd pfd;

    if (ferror(stdout))
        return true;
    /* events 0: poll reports only POLLERR, POLLHUP and POLLNVAL, which a
     * pipe whose reader is gone shows at once (Linux: POLLERR). */
    pfd.fd = fileno(stdout);
    pfd.events = 0;
    pfd.revents = 0;
    if (poll(&pfd, 1, 0) != 1)
        return false;
    return (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)) != 0;
}

int er_ctl_util_out_line(const void *p, size_t len)
{
    if (len != 0)
        fwrite(p, 1, len, stdout);
    fputc('\n', stdout);
    if (fflush(stdout) != 0 || ferror(stdout))
        return ER_EIO;
    return 0;
}

void er_ctl_util_err_print(const char *cmd, const char *msg)
{
    struct er_buf line;

    er_buf_init(&line, ERR_LINE_MAX);
    /* An overlong message is cut where the cap stops it. */
    (void)er_ctl_view_cell(&line, msg, strlen(msg), 0, true);
    fprintf(stderr, "envrunctl %s: %.*s\n", cmd, (int)line.len,
            line.data != NULL ? (const char *)line.data : "");
    er_buf_fini(&line);
}

void er_ctl_util_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "envrunctl %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static const struct er_ctl_opt *find_opt(const struct er_ctl_opt *opts,
                                         size_t cnt, const char *name,
                                         size_t name_len)
{
    size_t i;

    for (i = 0; i < cnt; i++) {
        if (strlen(opts[i].name) == name_len &&
            memcmp(opts[i].name, name, name_len) == 0)
            return &opts[i];
    }
    return NULL;
}

enum er_ctl_parse er_ctl_util_parse(const char *cmd, int argc, char **argv,
                                    const struct er_ctl_opt *opts, size_t cnt,
                                    const char **positional,
                                    size_t positional_max,
                                    size_t *positional_cnt)
{
    size_t pos_cnt = 0;
    bool is_options_done = false;
    int i;

    for (i = 0; i < argc; i++) {
        const char *arg = argv[i];
        const char *name;
        const char *eq;
        size_t name_len;
        const struct er_ctl_opt *opt;

        if (is_options_done || strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            if (!is_options_done && strcmp(arg, "--") == 0) {
                is_options_done = true;
                continue;
            }
            if (!is_options_done && strcmp(arg, "-h") == 0)
                return ER_CTL_PARSE_HELP;
            if (!is_options_done && arg[0] == '-' && arg[1] != '\0') {
                er_ctl_util_usage_error(cmd, "unknown option %s", arg);
                return ER_CTL_PARSE_USAGE;
            }
            if (pos_cnt >= positional_max) {
                er_ctl_util_usage_error(cmd, "unexpected argument %s", arg);
                return ER_CTL_PARSE_USAGE;
            }
            positional[pos_cnt++] = arg;
            continue;
        }
        name = arg + 2;
        eq = strchr(name, '=');
        name_len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        if (name_len == 4 && memcmp(name, "help", 4) == 0)
            return ER_CTL_PARSE_HELP;
        opt = find_opt(opts, cnt, name, name_len);
        if (opt == NULL) {
            er_ctl_util_usage_error(cmd, "unknown option --%.*s", (int)name_len,
                                    name);
            return ER_CTL_PARSE_USAGE;
        }
        if (opt->is_set != NULL) {
            if (eq != NULL) {
                er_ctl_util_usage_error(cmd, "--%s takes no value", opt->name);
                return ER_CTL_PARSE_USAGE;
            }
            *opt->is_set = true;
            continue;
        }
        if (opt->list == NULL && *opt->value != NULL) {
            er_ctl_util_usage_error(cmd, "--%s given twice", opt->name);
            return ER_CTL_PARSE_USAGE;
        }
        if (opt->list != NULL && opt->list->cnt >= opt->list->max) {
            er_ctl_util_usage_error(cmd, "--%s given more than %zu times",
                                    opt->name, opt->list->max);
            return ER_CTL_PARSE_USAGE;
        }
        if (eq == NULL && i + 1 >= argc) {
            er_ctl_util_usage_error(cmd, "--%s needs a value", opt->name);
            return ER_CTL_PARSE_USAGE;
        }
        if (opt->list != NULL)
            opt->list->values[opt->list->cnt++] =
                eq != NULL ? eq + 1 : argv[++i];
        else
            *opt->value = eq != NULL ? eq + 1 : argv[++i];
    }
    *positional_cnt = pos_cnt;
    return ER_CTL_PARSE_OK;
}

int er_ctl_util_parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end = NULL;
    long long v;

    if (s == NULL || *s == '\0')
        return ER_EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == NULL || *end != '\0' || v < min || v > max)
        return ER_EINVAL;
    *out = (int64_t)v;
    return 0;
}

const char *er_ctl_util_env(const char *name, const char *dflt)
{
    const char *v = getenv(name);

    return v != NULL && *v != '\0' ? v : dflt;
}

int er_ctl_util_prefix_get(const char *cmd, const char *flag,
                           const char **prefix)
{
    const char *name = "--topic-prefix";
    const char *v = flag;

    if (v == NULL) {
        name = "ENVRUN_TOPIC_PREFIX";
        v = getenv(name);
    }
    if (v == NULL)
        v = "envrun.";
    if (strlen(v) >= PREFIX_MAX) {
        er_ctl_util_usage_error(cmd, "%s: too long (max %d bytes)", name,
                                PREFIX_MAX - 1);
        return ER_EINVAL;
    }
    if (!er_config_is_topic_text(v)) {
        er_ctl_util_usage_error(cmd, "%s: only [A-Za-z0-9._-] allowed", name);
        return ER_EINVAL;
    }
    *prefix = v;
    return 0;
}

bool er_ctl_util_topic_is_known(const char *name)
{
    size_t i;

    for (i = 0; er_ctl_util_topics[i] != NULL; i++) {
        if (strcmp(name, er_ctl_util_topics[i]) == 0)
            return true;
    }
    return false;
}

int er_ctl_util_topic_full(const char *prefix, const char *name, char *out,
                           size_t out_len)
{
    int n;

    if (er_ctl_util_topic_is_known(name))
        n = snprintf(out, out_len, "%s%s", prefix, name);
    else
        n = snprintf(out, out_len, "%s", name);
    return n < 0 || (size_t)n >= out_len ? ER_E2BIG : 0;
}

const char *er_ctl_util_topic_short(const char *prefix, const char *full)
{
    size_t n = strlen(prefix);

    if (n != 0 && strncmp(full, prefix, n) == 0 && full[n] != '\0')
        return full + n;
    return full;
}

/* Transport errors are retried by librdkafka itself and already appear in
 * its log; only a fatal error (the idempotent producer gave up) is news. */
static void kafka_error(rd_kafka_t *rk, int code, const char *reason,
                        void *opaque)
{
    char fatal[256];

    (void)code;
    (void)opaque;
    if (rd_kafka_fatal_error(rk, fatal, sizeof(fatal)) !=
        RD_KAFKA_RESP_ERR_NO_ERROR)
        er_log(ER_LOG_ERROR, "rdkafka", "fatal: %s (%s)", fatal, reason);
}

/* Delivery state of one produce_sync call, the message's opaque. */
struct delivery {
    bool is_done;
    rd_kafka_resp_err_t err;
    int32_t partition;
    int64_t offset;
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                        void *opaque)
{
    struct delivery *dr = msg->_private;

    (void)rk;
    (void)opaque;
    if (dr != NULL) {
        dr->is_done = true;
        dr->err = msg->err;
        dr->partition = msg->partition;
        dr->offset = msg->offset;
    }
}

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *val,
                    struct er_err *err)
{
    char errstr[KAFKA_ERRSTR_LEN];

    if (rd_kafka_conf_set(conf, key, val, errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "kafka property %s: %s", key, errstr);
    return 0;
}

/* Apply ENVRUN_KAFKA_PROPS ("k=v,k=v", contract.md 2) verbatim. The value
 * may hold credentials, so messages name only the key. */
static int apply_props(rd_kafka_conf_t *conf, const char *props,
                       struct er_err *err)
{
    char copy[PROPS_MAX];
    char *p;
    size_t n = strlen(props);

    if (n >= sizeof(copy))
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL,
                          "ENVRUN_KAFKA_PROPS is too long");
    memcpy(copy, props, n + 1);
    p = copy;
    while (*p != '\0') {
        char *comma = strchr(p, ',');
        char *eq;
        int rc;

        if (comma != NULL)
            *comma = '\0';
        eq = strchr(p, '=');
        if (eq == NULL || eq == p)
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                              "ENVRUN_KAFKA_PROPS: expected k=v,k=v");
        *eq = '\0';
        rc = conf_set(conf, p, eq + 1, err);
        if (rc != 0)
            return rc;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    return 0;
}

/* A producer or consumer as er_ctl_util_kafka_new describes; is_eof turns
 * on the consumer's end-of-partition events. */
static rd_kafka_t *kafka_new(const char *brokers, bool is_producer, bool is_eof,
                             struct er_err *err)
{
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_t *rk = NULL;
    char errstr[KAFKA_ERRSTR_LEN];
    char group[64];
    char uuid[37];
    const char *props;

    conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, er_kafka_on_log);
    rd_kafka_conf_set_error_cb(conf, kafka_error);
    if (conf_set(conf, "bootstrap.servers", brokers, err) != 0)
        goto fail;
    if (conf_set(conf, "client.id", "envrunctl", err) != 0)
        goto fail;
    if (is_producer) {
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
        if (conf_set(conf, "enable.idempotence", "true", err) != 0 ||
            conf_set(conf, "linger.ms", "0", err) != 0 ||
            conf_set(conf, "message.timeout.ms", "30000", err) != 0)
            goto fail;
    } else {
        /* A group id nobody shares; with assign() it never joins. */
        if (er_uuid_v4(uuid) != 0) {
            er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "no random bytes");
            goto fail;
        }
        snprintf(group, sizeof(group), "envrunctl-%s", uuid);
        if (conf_set(conf, "group.id", group, err) != 0 ||
            conf_set(conf, "enable.auto.commit", "false", err) != 0 ||
            conf_set(conf, "enable.auto.offset.store", "false", err) != 0 ||
            conf_set(conf, "auto.offset.reset", "earliest", err) != 0 ||
            conf_set(conf, "enable.partition.eof", is_eof ? "true" : "false",
                     err) != 0 ||
            conf_set(conf, "fetch.wait.max.ms", "100", err) != 0)
            goto fail;
    }
    props = er_ctl_util_env("ENVRUN_KAFKA_PROPS", NULL);
    if (props != NULL && apply_props(conf, props, err) != 0)
        goto fail;

    rk = rd_kafka_new(is_producer ? RD_KAFKA_PRODUCER : RD_KAFKA_CONSUMER, conf,
                      errstr, sizeof(errstr));
    if (rk == NULL) {
        er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL, "kafka client: %s",
                   errstr);
        goto fail;
    }
    /* rd_kafka_new owns the conf now. */
    if (!is_producer)
        rd_kafka_poll_set_consumer(rk);
    return rk;

fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

rd_kafka_t *er_ctl_util_kafka_new(const char *brokers, bool is_producer,
                                  struct er_err *err)
{
    return kafka_new(brokers, is_producer, false, err);
}

rd_kafka_t *er_ctl_util_consumer_new_eof(const char *brokers,
                                         struct er_err *err)
{
    return kafka_new(brokers, false, true, err);
}

/* Partition count of topic, from a metadata request for every topic: one
 * naming the topic may create it on a broker with automatic topic
 * creation (the mock cluster's default), and a typo must not. */
static int partition_count(rd_kafka_t *rk, const char *topic, int timeout_ms,
                           int *cnt, struct er_err *err)
{
    const struct rd_kafka_metadata *md = NULL;
    const struct rd_kafka_metadata_topic *mt = NULL;
    rd_kafka_resp_err_t kerr;
    int i;
    int rc = 0;

    kerr = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = er_err_set(err, ER_EKAFKA, ER_ERRCLASS_RETRY, "metadata of %s: %s",
                        topic, rd_kafka_err2str(kerr));
        goto out;
    }
    for (i = 0; i < md->topic_cnt; i++) {
        if (strcmp(md->topics[i].topic, topic) == 0)
            mt = &md->topics[i];
    }
    if (mt == NULL || mt->err != RD_KAFKA_RESP_ERR_NO_ERROR ||
        mt->partition_cnt == 0) {
        rc = er_err_set(
            err, ER_ENOTFOUND, ER_ERRCLASS_FATAL, "topic %s: %s", topic,
            mt != NULL ? rd_kafka_err2str(mt->err) : "not in metadata");
        goto out;
    }
    *cnt = mt->partition_cnt;

out:
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    return rc;
}

int er_ctl_util_assign_all(rd_kafka_t *rk, const char *const *topics,
                           size_t cnt, bool is_from_beginning, int timeout_ms,
                           struct er_err *err)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_resp_err_t kerr;
    size_t i;
    int rc = 0;

    parts = rd_kafka_topic_partition_list_new((int)cnt * 8);
    for (i = 0; i < cnt; i++) {
        int part_cnt = 0;
        int p;

        rc = partition_count(rk, topics[i], timeout_ms, &part_cnt, err);
        if (rc != 0)
            goto out;
        for (p = 0; p < part_cnt; p++) {
            rd_kafka_topic_partition_t *tp =
                rd_kafka_topic_partition_list_add(parts, topics[i], p);

            tp->offset = is_from_beginning ? RD_KAFKA_OFFSET_BEGINNING
                                           : RD_KAFKA_OFFSET_END;
        }
    }
    kerr = rd_kafka_assign(rk, parts);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR)
        rc = er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL, "assign: %s",
                        rd_kafka_err2str(kerr));

out:
    rd_kafka_topic_partition_list_destroy(parts);
    return rc;
}

int er_ctl_util_produce_sync(rd_kafka_t *rk, const char *topic, const void *key,
                             size_t key_len, const void *value,
                             size_t value_len, rd_kafka_headers_t *hdrs,
                             int timeout_ms, struct er_ctl_delivery *where,
                             struct er_err *err)
{
    struct delivery dr = { false, RD_KAFKA_RESP_ERR_NO_ERROR, -1, -1 };
    rd_kafka_resp_err_t kerr;
    int64_t deadline = er_time_mono_ms() + timeout_ms;

    kerr = (rd_kafka_resp_err_t)er_kafka_produce(rk, topic, key, key_len, value,
                                                 value_len, hdrs, &dr);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* er_kafka_produce leaves the headers to us when it fails. */
        if (hdrs != NULL)
            rd_kafka_headers_destroy(hdrs);
        return er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL,
                          "produce to %s: %s", topic, rd_kafka_err2str(kerr));
    }
    while (!dr.is_done && er_time_mono_ms() < deadline)
        rd_kafka_poll(rk, 50);
    if (!dr.is_done) {
        /* The report still points at dr: purge so it never fires later. */
        rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(rk, 5000);
        if (!dr.is_done)
            rd_kafka_poll(rk, 0);
        return er_err_set(err, ER_ETIMEDOUT, ER_ERRCLASS_RETRY,
                          "no delivery report from %s within %d ms", topic,
                          timeout_ms);
    }
    if (dr.err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return er_err_set(err, ER_EKAFKA, ER_ERRCLASS_RETRY,
                          "delivery to %s failed: %s", topic,
                          rd_kafka_err2str(dr.err));
    if (where != NULL) {
        where->partition = dr.partition;
        where->offset = dr.offset;
    }
    return 0;
}

bool er_ctl_util_header(const rd_kafka_message_t *msg, const char *name,
                        char *out, size_t out_len)
{
    rd_kafka_headers_t *hdrs = NULL;
    const void *val = NULL;
    size_t val_len = 0;
    size_t n;

    /* rd_kafka_message_headers only reads msg; its prototype is not const.
     */
    if (rd_kafka_message_headers((rd_kafka_message_t *)(uintptr_t)msg, &hdrs) !=
            RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(hdrs, name, &val, &val_len) !=
            RD_KAFKA_RESP_ERR_NO_ERROR ||
        val == NULL)
        return false;
    n = val_len < out_len - 1 ? val_len : out_len - 1;
    memcpy(out, val, n);
    out[n] = '\0';
    return true;
}

int er_ctl_util_read_file(const char *path, struct er_buf *out,
                          struct er_err *err)
{
    FILE *f = NULL;
    char chunk[8192];
    size_t n;
    bool is_stdin = strcmp(path, "-") == 0;
    int rc = 0;

    f = is_stdin ? stdin : fopen(path, "rb");
    if (f == NULL) {
        char msg[128];

        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "%s: %s", path,
                          er_strerror(errno, msg, sizeof(msg)));
    }
    for (;;) {
        n = fread(chunk, 1, sizeof(chunk), f);
        if (n == 0)
            break;
        if (er_buf_append(out, chunk, n) != 0) {
            rc = er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL,
                            "%s: over %zu bytes", path, out->max_len);
            goto out;
        }
    }
    if (ferror(f))
        rc =
            er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "%s: read failed", path);

out:
    if (!is_stdin)
        fclose(f);
    return rc;
}

int er_ctl_util_base64(const void *p, size_t len, struct er_buf *out)
{
    static const char tbl[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *b = p;
    size_t i;
    int rc = 0;

    for (i = 0; i + 2 < len && rc == 0; i += 3) {
        char q[4];

        q[0] = tbl[b[i] >> 2];
        q[1] = tbl[((b[i] & 0x03) << 4) | (b[i + 1] >> 4)];
        q[2] = tbl[((b[i + 1] & 0x0f) << 2) | (b[i + 2] >> 6)];
        q[3] = tbl[b[i + 2] & 0x3f];
        rc = er_buf_append(out, q, 4);
    }
    if (rc == 0 && i < len) {
        char q[4];

        q[0] = tbl[b[i] >> 2];
        if (i + 1 < len) {
            q[1] = tbl[((b[i] & 0x03) << 4) | (b[i + 1] >> 4)];
            q[2] = tbl[(b[i + 1] & 0x0f) << 2];
        } else {
            q[1] = tbl[(b[i] & 0x03) << 4];
            q[2] = '=';
        }
        q[3] = '=';
        rc = er_buf_append(out, q, 4);
    }
    return rc;
}

size_t er_ctl_util_utf8_len(const uint8_t *s, size_t n)
{
    size_t want;
    size_t i;
    uint32_t cp;

    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0) {
        want = 2;
        cp = s[0] & 0x1f;
    } else if ((s[0] & 0xf0) == 0xe0) {
        want = 3;
        cp = s[0] & 0x0f;
    } else if ((s[0] & 0xf8) == 0xf0) {
        want = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (want > n)
        return 0;
    for (i = 1; i < want; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* Overlong forms, surrogates and values past U+10FFFF are invalid. */
    if ((want == 2 && cp < 0x80) || (want == 3 && cp < 0x800) ||
        (want == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return want;
}

/* Invalid UTF-8 becomes U+FFFD; DEL and the C1 controls, valid JSON as
 * they are, are escaped so a JSON line on a terminal cannot steer it. */
int er_ctl_util_json_string(struct er_buf *out, const char *p, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *s = (const uint8_t *)p;
    size_t i = 0;
    int rc;

    rc = er_buf_append(out, "\"", 1);
    while (rc == 0 && i < len) {
        uint8_t c = s[i];
        size_t n;

        if (c == '"' || c == '\\') {
            char esc[2] = { '\\', (char)c };

            rc = er_buf_append(out, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf] };

            rc = er_buf_append(out, esc, 6);
            i++;
        } else {
            n = er_ctl_util_utf8_len(s + i, len - i);
            if (n == 2 && c == 0xc2 && s[i + 1] < 0xa0) {
                /* U+0080..U+009F: the C1 controls. */
                char esc[6] = {
                    '\\', 'u', '0', '0', hex[s[i + 1] >> 4], hex[s[i + 1] & 0xf]
                };

                rc = er_buf_append(out, esc, 6);
                i += 2;
            } else if (n == 0) {
                rc = er_buf_append(out, "\\ufffd", 6);
                i++;
            } else {
                rc = er_buf_append(out, s + i, n);
                i += n;
            }
        }
    }
    if (rc == 0)
        rc = er_buf_append(out, "\"", 1);
    return rc;
}

/* "headers":{name:value,...} of msg, values as JSON strings. */
static int put_headers(struct er_buf *out, const rd_kafka_message_t *msg)
{
    rd_kafka_headers_t *hdrs = NULL;
    size_t idx = 0;
    const char *name;
    const void *val;
    size_t val_len;
    int rc;

    rc = er_buf_append(out, ",\"headers\":{", 12);
    if (rc == 0 &&
        rd_kafka_message_headers(msg, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        while (rc == 0 &&
               rd_kafka_header_get_all(hdrs, idx, &name, &val, &val_len) ==
                   RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (idx != 0)
                rc = er_buf_append(out, ",", 1);
            if (rc == 0)
                rc = er_ctl_util_json_string(out, name, strlen(name));
            if (rc == 0)
                rc = er_buf_append(out, ":", 1);
            if (rc == 0 && val == NULL)
                rc = er_buf_append(out, "null", 4);
            else if (rc == 0)
                rc = er_ctl_util_json_string(out, val, val_len);
            idx++;
        }
    }
    if (rc == 0)
        rc = er_buf_append(out, "}", 1);
    return rc;
}

/* Mask the secret-looking keys of the JSON text in the string member name
 * of obj (absent or not JSON: left alone, as the worker leaves it);
 * *is_changed is set when anything was masked. Returns 0 or ER_ENOMEM. */
static int redact_json_text(json_t *obj, const char *name, bool *is_changed)
{
    json_t *field = json_object_get(obj, name);
    char *after = NULL;
    int rc = 0;

    if (!json_is_string(field))
        return 0;
    switch (er_redact_json_text(json_string_value(field),
                                json_string_length(field), true, &after)) {
    case 1:
        if (json_string_set(field, after) != 0)
            rc = ER_ENOMEM;
        else
            *is_changed = true;
        break;
    case -1:
        rc = ER_ENOMEM;
        break;
    }
    free(after); /* jansson allocates with malloc */
    return rc;
}

int er_ctl_util_value_redact(struct er_buf *value)
{
    json_t *doc = NULL;
    json_t *command;
    char *text = NULL;
    bool is_changed = false;
    int rc = 0;

    doc =
        json_loadb((const char *)value->data, value->len, JSON_ALLOW_NUL, NULL);
    command = json_object_get(doc, "command");
    if (!json_is_object(command))
        goto out; /* not a RunCommand: nothing of this kind to mask */
    rc = redact_json_text(command, "workspaceJson", &is_changed);
    if (rc == 0)
        rc = redact_json_text(command, "runtimeOverlayJson", &is_changed);
    if (rc != 0 || !is_changed)
        goto out;
    text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text == NULL) {
        rc = ER_ENOMEM;
        goto out;
    }
    er_buf_reset(value);
    rc = er_buf_append(value, text, strlen(text));

out:
    free(text);
    json_decref(doc);
    return rc;
}

int er_ctl_util_json_escape_controls(struct er_buf *json)
{
    static const char hex[] = "0123456789abcdef";
    struct er_buf out;
    size_t i;
    int rc = 0;

    for (i = 0; i < json->len; i++) {
        if (json->data[i] == 0x7f || json->data[i] == 0xc2)
            break;
    }
    if (i == json->len)
        return 0; /* the usual case: nothing to do */
    er_buf_init(&out, json->max_len);
    for (i = 0; i < json->len && rc == 0; i++) {
        uint8_t c = json->data[i];

        /* 0xc2 is only ever a lead byte: with 0x80..0x9f after it, it is
         * U+0080..U+009F. Outside strings JSON has no such bytes. */
        if (c == 0x7f ||
            (c == 0xc2 && i + 1 < json->len && json->data[i + 1] >= 0x80 &&
             json->data[i + 1] < 0xa0)) {
            uint8_t cp = c == 0x7f ? c : json->data[++i];
            char esc[6] = { '\\', 'u', '0', '0', hex[cp >> 4], hex[cp & 0xf] };

            rc = er_buf_append(&out, esc, 6);
        } else {
            rc = er_buf_append(&out, &c, 1);
        }
    }
    if (rc == 0) {
        er_buf_fini(json);
        *json = out;
    } else {
        er_buf_fini(&out);
    }
    return rc;
}

/* Whether the raw bytes of a record of topic_short may be printed: only on
 * the topics whose records never hold a token. A command on commands that
 * does not decode here (Confluent-framed without a registry, an unknown
 * fingerprint) and a letter the worker kept whole on commands.dlq may be a
 * realize command carrying hostApiToken; a foreign topic may be anything. */
static bool may_show_bytes(const char *topic_short)
{
    return strcmp(topic_short, "results") == 0 ||
           strcmp(topic_short, "lease-events") == 0 ||
           strcmp(topic_short, "activity") == 0;
}

/* ,"valueLength":N,"valueHeaderHex":H: what is safe to show of bytes that
 * may hold a secret. H is the Confluent header (magic byte and schema id)
 * or the single-object header (marker and fingerprint), which name the
 * schema and hold no field of the record; null for other bytes. */
static int put_withheld(struct er_buf *out, const uint8_t *p, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t hdr_len = 0;
    size_t i;
    int rc;

    if (er_registry_is_framed(p, len))
        hdr_len = ER_REGISTRY_HDR_LEN;
    else if (len >= ER_CODEC_HDR_LEN && p[0] == 0xc3 && p[1] == 0x01)
        hdr_len = ER_CODEC_HDR_LEN;
    rc = er_buf_printf(out, ",\"valueLength\":%zu,\"valueHeaderHex\":", len);
    if (rc == 0 && hdr_len == 0)
        return er_buf_append(out, "null", 4);
    if (rc == 0)
        rc = er_buf_append(out, "\"", 1);
    for (i = 0; rc == 0 && i < hdr_len; i++) {
        char h[2] = { hex[p[i] >> 4], hex[p[i] & 0xf] };

        rc = er_buf_append(out, h, 2);
    }
    if (rc == 0)
        rc = er_buf_append(out, "\"", 1);
    return rc;
}

int er_ctl_util_record_json(const char *topic_short,
                            const rd_kafka_message_t *msg, bool is_raw,
                            struct er_buf *out)
{
    struct er_buf value;
    struct er_err err;
    int rc;
    bool is_decoded = false;

    er_buf_init(&value, ER_CMD_VALUE_MAX_BYTES * 8);
    er_err_clear(&err);
    if (!is_raw && msg->payload != NULL)
        is_decoded =
            er_registry_to_json(msg->payload, msg->len, &value, &err) == 0;

    rc = er_buf_append(out, "{\"topic\":", 9);
    if (rc == 0)
        rc = er_ctl_util_json_string(out, topic_short, strlen(topic_short));
    if (rc == 0)
        rc = er_buf_printf(
            out, ",\"partition\":%" PRId32 ",\"offset\":%" PRId64 ",\"key\":",
            msg->partition, msg->offset);
    if (rc == 0 && msg->key == NULL)
        rc = er_buf_append(out, "null", 4);
    else if (rc == 0)
        rc = er_ctl_util_json_string(out, msg->key, msg->key_len);
    if (rc != 0)
        goto out;

    if (is_decoded) {
        rc = er_ctl_util_value_redact(&value);
        if (rc == 0)
            rc = er_ctl_util_json_escape_controls(&value);
        if (rc == 0)
            rc = er_buf_append(out, ",\"value\":", 9);
        if (rc == 0)
            rc = er_buf_append(out, value.data, value.len);
    } else {
        rc = put_headers(out, msg);
        if (rc == 0 && msg->payload == NULL) {
            rc = er_buf_append(out, ",\"value\":null", 13);
        } else if (rc == 0 && !may_show_bytes(topic_short)) {
            rc = put_withheld(out, msg->payload, msg->len);
        } else if (rc == 0) {
            rc = er_buf_append(out, ",\"valueBase64\":\"", 16);
            if (rc == 0)
                rc = er_ctl_util_base64(msg->payload, msg->len, out);
            if (rc == 0)
                rc = er_buf_append(out, "\"", 1);
        }
        if (rc == 0 && !is_raw && msg->payload != NULL) {
            rc = er_buf_append(out, ",\"error\":", 9);
            if (rc == 0)
                rc = er_ctl_util_json_string(out, err.msg, strlen(err.msg));
        }
    }
    if (rc == 0)
        rc = er_buf_append(out, "}", 1);

out:
    er_buf_fini(&value);
    return rc;
}
