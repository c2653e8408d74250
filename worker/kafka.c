/* kafka: shared librdkafka configuration (see kafka_int.h). */
#include <stdio.h>
#include <string.h>

#include "common/common.h"
#include "worker/kafka_int.h"
#include "worker/worker.h"

void er_kafka_on_log(const struct rd_kafka_s *rk, int level, const char *fac,
                     const char *buf)
{
    enum er_log_level lvl = ER_LOG_DEBUG;

    (void)rk;
    /* syslog levels: 0..3 error, 4 warning, 5..6 notice/info, 7 debug. */
    if (level <= 3)
        lvl = ER_LOG_ERROR;
    else if (level == 4)
        lvl = ER_LOG_WARN;
    else if (level <= 6)
        lvl = ER_LOG_INFO;
    er_log_kv(lvl, "rdkafka", buf, "rdfac", fac, (const char *)NULL);
}

static void on_error(rd_kafka_t *rk, int code, const char *reason, void *opaque)
{
    char buf[256];

    (void)opaque;
    if (code == RD_KAFKA_RESP_ERR__FATAL &&
        rd_kafka_fatal_error(rk, buf, sizeof(buf)) !=
            RD_KAFKA_RESP_ERR_NO_ERROR) {
        ER_LOG_ERR("rdkafka", "fatal error: %s", buf);
        return;
    }
    /* Transient broker errors (all brokers down, ...): librdkafka retries. */
    ER_LOG_WARN("rdkafka", "%s: %s", rd_kafka_err2name(code), reason);
}

rd_kafka_conf_t *er_kafka_conf_new(const char *brokers,
                                   const char *const *defaults,
                                   const char *props, char *errstr,
                                   size_t errstr_len)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *p = props != NULL ? props : "";
    size_t i;

    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
                          errstr_len) != RD_KAFKA_CONF_OK)
        goto fail;
    for (i = 0; defaults != NULL && defaults[i] != NULL; i += 2) {
        if (rd_kafka_conf_set(conf, defaults[i], defaults[i + 1], errstr,
                              errstr_len) != RD_KAFKA_CONF_OK)
            goto fail;
    }
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        char item[1024];
        char *eq;

        if (len >= sizeof(item)) {
            snprintf(errstr, errstr_len, "ENVRUN_KAFKA_PROPS: item too long");
            goto fail;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        eq = strchr(item, '=');
        if (eq == NULL || eq == item) {
            snprintf(errstr, errstr_len,
                     "ENVRUN_KAFKA_PROPS: expected k=v items");
            goto fail;
        }
        *eq = '\0';
        if (rd_kafka_conf_set(conf, item, eq + 1, errstr, errstr_len) !=
            RD_KAFKA_CONF_OK)
            goto fail;
        p += len;
        if (*p == ',')
            p++;
    }
    rd_kafka_conf_set_log_cb(conf, er_kafka_on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* librdkafka's vu fields are non-const; with RD_KAFKA_MSG_F_COPY it only
 * reads them. memcpy drops the qualifier without a cast. */
static void *unconst(const void *p)
{
    void *q;

    memcpy(&q, &p, sizeof(q));
    return q;
}

int er_kafka_produce(struct rd_kafka_s *rk, const char *topic, const void *key,
                     size_t key_len, const void *value, size_t value_len,
                     struct rd_kafka_headers_s *hdrs, void *msg_opaque)
{
    rd_kafka_vu_t vu[7];
    rd_kafka_error_t *error;
    rd_kafka_resp_err_t code;
    size_t n = 0;

    memset(vu, 0, sizeof(vu));
    vu[n].vtype = RD_KAFKA_VTYPE_TOPIC;
    vu[n++].u.cstr = topic;
    vu[n].vtype = RD_KAFKA_VTYPE_VALUE;
    vu[n].u.mem.ptr = unconst(value);
    vu[n++].u.mem.size = value_len;
    vu[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vu[n++].u.i = RD_KAFKA_MSG_F_COPY;
    if (key != NULL) {
        vu[n].vtype = RD_KAFKA_VTYPE_KEY;
        vu[n].u.mem.ptr = unconst(key);
        vu[n++].u.mem.size = key_len;
    }
    if (msg_opaque != NULL) {
        vu[n].vtype = RD_KAFKA_VTYPE_OPAQUE;
        vu[n++].u.ptr = msg_opaque;
    }
    if (hdrs != NULL) {
        vu[n].vtype = RD_KAFKA_VTYPE_HEADERS;
        vu[n++].u.headers = hdrs;
    }
    error = rd_kafka_produceva(rk, vu, n);
    if (error == NULL)
        return RD_KAFKA_RESP_ERR_NO_ERROR;
    code = rd_kafka_error_code(error);
    rd_kafka_error_destroy(error);
    return code;
}

/* ================================================================
 * One message by its coordinates (er_kafka_fetch)
 * ================================================================ */

struct er_kafka_fetcher {
    rd_kafka_t *rk;
};

struct er_kafka_fetcher *
er_kafka_fetcher_new(const char *brokers, const char *props, struct er_err *err)
{
    /* assign() only: this consumer never joins the group (its id is
     * needed by librdkafka, never used) and commits nothing. */
    static const char *const defaults[] = {
        "group.id",
        "envrun-fetch",
        "enable.auto.commit",
        "false",
        "auto.offset.reset",
        "error",
        "enable.partition.eof",
        "true",
        NULL,
    };
    struct er_kafka_fetcher *f;
    rd_kafka_conf_t *conf;
    char errstr[512];

    conf = er_kafka_conf_new(brokers, defaults, props, errstr, sizeof(errstr));
    if (conf == NULL) {
        er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL, "kafka: %s", errstr);
        return NULL;
    }
    f = er_calloc(1, sizeof(*f));
    if (f == NULL) {
        rd_kafka_conf_destroy(conf);
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }
    f->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (f->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        er_free(f);
        er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "kafka: %s", errstr);
        return NULL;
    }
    return f;
}

void er_kafka_fetcher_destroy(struct er_kafka_fetcher *f)
{
    if (f == NULL)
        return;
    rd_kafka_destroy(f->rk);
    er_free(f);
}

int er_kafka_fetch(struct er_kafka_fetcher *f, const char *topic,
                   int32_t partition, int64_t offset, int timeout_ms,
                   struct er_buf *value, struct er_err *err)
{
    rd_kafka_topic_partition_list_t *parts;
    int64_t deadline = er_time_mono_ms() + timeout_ms;
    int rc = ER_ETIMEDOUT;

    parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, topic, partition)->offset = offset;
    if (rd_kafka_assign(f->rk, parts) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_topic_partition_list_destroy(parts);
        return er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                          "kafka: cannot assign %s [%d]", topic,
                          (int)partition);
    }
    rd_kafka_topic_partition_list_destroy(parts);
    while (er_time_mono_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(f->rk, 100);

        if (m == NULL)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF ||
            m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
            m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
            rc = er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                            "kafka: %s [%d] has no message at offset %lld",
                            topic, (int)partition, (long long)offset);
            rd_kafka_message_destroy(m);
            break;
        }
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR || m->offset != offset ||
            m->partition != partition) {
            rd_kafka_message_destroy(m);
            continue;
        }
        er_buf_reset(value);
        rc = m->len > 0 ? er_buf_append(value, m->payload, m->len) : 0;
        if (rc != 0)
            er_err_set(err, rc, ER_ERRCLASS_NONE, "kafka: message too large");
        rd_kafka_message_destroy(m);
        break;
    }
    if (rc == ER_ETIMEDOUT)
        er_err_set(err, ER_ETIMEDOUT, ER_ERRCLASS_RETRY,
                   "kafka: no message from %s [%d] within %d ms", topic,
                   (int)partition, timeout_ms);
    (void)rd_kafka_assign(f->rk, NULL);
    return rc;
}

int er_kafka_fetch_lazy(struct er_kafka_fetcher **f, const char *brokers,
                        const char *props, const char *topic, int32_t partition,
                        int64_t offset, int timeout_ms, struct er_buf *value,
                        struct er_err *err)
{
    if (*f == NULL) {
        *f = er_kafka_fetcher_new(brokers, props, err);
        if (*f == NULL)
            return err != NULL ? err->code : ER_EIO;
    }
    return er_kafka_fetch(*f, topic, partition, offset, timeout_ms, value, err);
}
