/* consumer: the consumer-group side of the worker (see consumer.c). */
#ifndef ER_WORKER_CONSUMER_INT_H
#define ER_WORKER_CONSUMER_INT_H

#include <stdint.h>

#include "common/common.h"
#include "worker/dispatch_int.h"
#include "worker/worker.h"

struct er_consumer;

/* Join cfg's group on the commands topic at brokers; messages go to
 * dispatch (borrowed; must outlive the consumer). Errors: NULL, err set. */
struct er_consumer *er_consumer_new(const struct er_config *cfg,
                                    const char *brokers,
                                    struct er_dispatch *dispatch,
                                    struct er_err *err);
/* Poll until er_worker_stop or a fatal step; then drain the dispatcher,
 * commit and leave the group. Returns 0 on a clean stop, 1 on failure. */
int er_consumer_run(struct er_consumer *c);
void er_consumer_destroy(struct er_consumer *c);
/* fn(arg, now) after each assignment is claimed (before er_consumer_run). */
void er_consumer_set_on_assign(struct er_consumer *c,
                               void (*fn)(void *arg, int64_t at_ms), void *arg);
/* This worker's owner id in partition_fence (host:pid). */
const char *er_consumer_owner(const struct er_consumer *c);

#endif
