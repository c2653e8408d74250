/* kafka: librdkafka configuration shared by the consumer, the outbox relay
 * and the dev-mode cluster: bootstrap servers, ENVRUN_KAFKA_PROPS, and
 * library logs and errors routed into er_log. Thread-safe (no state). */
#ifndef ER_WORKER_KAFKA_INT_H
#define ER_WORKER_KAFKA_INT_H

#include <stddef.h>

#include <librdkafka/rdkafka.h>

/* A new conf with bootstrap.servers = brokers, then the defaults (a
 * NULL-terminated list of name, value, name, value ...; may be NULL), then
 * the `k=v,k=v` properties of props verbatim (props may be NULL or ""), so
 * ENVRUN_KAFKA_PROPS overrides our defaults; log and error callbacks go
 * into er_log. Returns NULL with errstr (errstr_len bytes) naming the
 * property that was refused. */
rd_kafka_conf_t *er_kafka_conf_new(const char *brokers,
                                   const char *const *defaults,
                                   const char *props, char *errstr,
                                   size_t errstr_len);

#endif
