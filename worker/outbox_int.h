/* outbox: the relay that publishes envrun.outbox rows to Kafka on an
 * idempotent producer and deletes them once delivered. Only one relay in
 * the cluster publishes at a time (a session advisory lock), and it sends
 * rows in id order, so per-key order holds. Runs its own thread with its
 * own database connection and producer. */
#ifndef ER_WORKER_OUTBOX_INT_H
#define ER_WORKER_OUTBOX_INT_H

#include "common/common.h"
#include "worker/worker.h"

struct er_outbox;

/* Start the relay thread for cfg (brokers: the bootstrap servers to use).
 * Errors: NULL with err set. */
struct er_outbox *er_outbox_new(const struct er_config *cfg,
                                const char *brokers, struct er_err *err);
/* Wake the relay now (a step committed rows). Thread-safe. */
void er_outbox_kick(void *outbox);
/* Publish what is left for at most drain_ms, then stop and free. */
void er_outbox_destroy(struct er_outbox *ob, int drain_ms);

#endif
