/* outbox: the relay that publishes envrun.outbox rows to Kafka on an
 * idempotent producer and deletes them once delivered. Only one relay in
 * the cluster publishes at a time (a session advisory lock, taken again
 * after a reconnection, with a generation claimed in envrun.partition_fence
 * that every publish and every settle checks first), and it sends rows in
 * id order, so per-key order holds. A row the broker refuses for good
 * (too large, unknown topic, invalid record) is moved to
 * envrun.outbox_quarantine; a dead letter too large for the producer is
 * cut to fit instead. Runs its own thread with its own database
 * connection and producer. */
#ifndef ER_WORKER_OUTBOX_INT_H
#define ER_WORKER_OUTBOX_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/common.h"
#include "worker/worker.h"

/* Room er_outbox_fit_len leaves for a record's framing and the
 * envrun.truncated header. */
#define ER_OUTBOX_FIT_SLACK 4096

struct er_outbox;

/* Start the relay thread for cfg (brokers: the bootstrap servers to use).
 * Errors: NULL with err set. */
struct er_outbox *er_outbox_new(const struct er_config *cfg,
                                const char *brokers, struct er_err *err);
/* Wake the relay now (a step committed rows). Thread-safe. */
void er_outbox_kick(void *outbox);
/* Publish what is left for at most drain_ms, then stop and free. */
void er_outbox_destroy(struct er_outbox *ob, int drain_ms);

/* Whether code (an rd_kafka_resp_err_t from a produce call or a delivery
 * report) means this message is refused for good, so that retrying cannot
 * help: too large, unknown topic or partition, invalid record or topic,
 * invalid argument. Failures of the cluster or the client (brokers down,
 * timeouts, a full queue, authorization, a fatal producer) give false. */
bool er_outbox_err_is_permanent(int code);
/* How many value bytes fit in one message of at most max_bytes (the
 * producer's message.max.bytes) beside a key of key_len bytes and headers
 * whose JSON text is headers_len bytes (at least their serialized size),
 * leaving ER_OUTBOX_FIT_SLACK; 0 when nothing fits. */
size_t er_outbox_fit_len(size_t max_bytes, size_t key_len, size_t headers_len);

#endif
