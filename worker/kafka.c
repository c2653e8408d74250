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
