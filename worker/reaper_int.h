/* reaper: expires active leases nobody touched for ENVRUN_LEASE_TTL_S
 * (domain.md 6, #11951/#11970): a run that died without a release command
 * must not hold its environment forever. One thread, its own connection;
 * several workers may reap at once (rows are locked SKIP LOCKED). */
#ifndef ER_WORKER_REAPER_INT_H
#define ER_WORKER_REAPER_INT_H

#include "common/common.h"
#include "worker/worker.h"

struct er_reaper;

/* Start the reaper thread. Errors: NULL with err set. */
struct er_reaper *er_reaper_new(const struct er_config *cfg,
                                struct er_err *err);
/* Have the reaper pass at at_ms (ms since the epoch) if it would
 * otherwise pass later: a lease's bounded life ends then. Thread-safe;
 * arg is the struct er_reaper (an er_lifecycle_expiry_fn). */
void er_reaper_expect(void *arg, int64_t at_ms);
/* Have each pass re-attach the callback bridges of runs whose partition
 * owner (this worker's partition_fence id) holds, reading their realize
 * commands from brokers (props: ENVRUN_KAFKA_PROPS). Thread-safe; call
 * before the consumer runs. */
void er_reaper_follow_bridges(struct er_reaper *r, const char *owner,
                              const char *brokers, const char *props);
/* Stop the thread and free. NULL is ok. */
void er_reaper_destroy(struct er_reaper *r);

#endif
