/* kafka: shared librdkafka configuration (see kafka_int.h). */
#include "worker/kafka_int.h"

#include <stdio.h>
#include <string.h>

#include "common/common.h"

static void on_log(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf)
{
    enum er_log_level lvl = ER_LOG_DEBUG;

    (void)rk;
    if (level <= 3) /* syslog levels: 3 error, 4 warning */
        lvl = ER_LOG_ERROR;
    else if (level == 4)
        lvl = ER_LOG_WARN;
    er_log(lvl, "rdkafka", "%s: %s", fac, buf);
}

static void on_error(rd_kafka_t *rk, int code, const char *reason,
                     void *opaque)
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

rd_kafka_conf_t *er_kafka_conf_new(const char *brokers, const char *props,
                                   const char *fac, char *errstr,
                                   size_t errstr_len)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *p = props != NULL ? props : "";

    (void)fac;
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
                          errstr_len) != RD_KAFKA_CONF_OK)
        goto fail;
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
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}
