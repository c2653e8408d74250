/* kafka: librdkafka configuration shared by the consumer, the outbox relay
 * and the dev-mode cluster: bootstrap servers, ENVRUN_KAFKA_PROPS, and
 * library logs and errors routed into er_log. Thread-safe (no state). */
#ifndef ER_WORKER_KAFKA_INT_H
#define ER_WORKER_KAFKA_INT_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "common/common.h"

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

/* A reader of single messages by topic, partition and offset (the bridge's
 * re-attach reads the realize command that started it). Not thread-safe:
 * one per thread. Errors: NULL with err set (a bad ENVRUN_KAFKA_PROPS). */
struct er_kafka_fetcher;
struct er_kafka_fetcher *er_kafka_fetcher_new(const char *brokers,
                                              const char *props,
                                              struct er_err *err);
void er_kafka_fetcher_destroy(struct er_kafka_fetcher *f);
/* The value of the message at offset into value (reset first). Errors:
 * ER_ENOTFOUND when the partition has no message there (deleted by
 * retention, or past its end), ER_ETIMEDOUT (class RETRY), ER_E2BIG. */
int er_kafka_fetch(struct er_kafka_fetcher *f, const char *topic,
                   int32_t partition, int64_t offset, int timeout_ms,
                   struct er_buf *value, struct er_err *err);
/* er_kafka_fetch through *f, made by er_kafka_fetcher_new(brokers, props)
 * at the first call: a thread that never fetches costs no client. */
int er_kafka_fetch_lazy(struct er_kafka_fetcher **f, const char *brokers,
                        const char *props, const char *topic, int32_t partition,
                        int64_t offset, int timeout_ms, struct er_buf *value,
                        struct er_err *err);

#endif
