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

#endif
