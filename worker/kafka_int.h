/* kafka: librdkafka configuration shared by the consumer, the outbox relay
 * and the dev-mode cluster: bootstrap servers, ENVRUN_KAFKA_PROPS, and
 * library logs and errors routed into er_log. Thread-safe (no state). */
#ifndef ER_WORKER_KAFKA_INT_H
#define ER_WORKER_KAFKA_INT_H

#include <stddef.h>

#include <librdkafka/rdkafka.h>

/* A new conf with bootstrap.servers = brokers, the `k=v,k=v` properties of
 * props applied verbatim (props may be NULL or ""), and log/error callbacks
 * into er_log with facility fac (a string literal). Returns NULL with errstr
 * (errstr_len bytes) naming the property that was refused. */
rd_kafka_conf_t *er_kafka_conf_new(const char *brokers, const char *props,
                                   const char *fac, char *errstr,
                                   size_t errstr_len);

/* Queue one message (copied) on topic with librdkafka's default
 * partitioner; key may be NULL. hdrs (may be NULL) is taken over on
 * success and left to the caller on failure. Uses rd_kafka_produceva, not
 * the RD_KAFKA_V_* macros, whose type checks are GNU statement expressions
 * that clang -Wpedantic rejects. Returns the librdkafka error code. */
rd_kafka_resp_err_t er_kafka_produce(rd_kafka_t *rk, const char *topic,
                                     const void *key, size_t key_len,
                                     const void *value, size_t value_len,
                                     rd_kafka_headers_t *hdrs);

#endif
