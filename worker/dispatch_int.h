/* dispatch: per-run FIFO queues served by a bounded pool of threads.
 * Commands of one run (one Kafka key) run one at a time, in order; runs
 * run concurrently, so a slow step of one run never delays another. Each
 * thread owns a struct er_lifecycle (its own database connection).
 * Thread-safe: submit/take/drop are called by the consumer thread while the
 * pool works. Owns the queued jobs and the threads. */
#ifndef ER_WORKER_DISPATCH_INT_H
#define ER_WORKER_DISPATCH_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "worker/lifecycle_int.h"
#include "worker/worker.h"

struct er_dispatch;

/* A finished job: its offset may be committed. */
struct er_done {
    int32_t partition;
    int64_t offset;
    int64_t generation; /* of the assignment the job came from */
};

/* Start thread_cnt threads, each with its own lifecycle (database
 * connection). Errors: NULL with err set. */
struct er_dispatch *er_dispatch_new(const struct er_config *cfg, int thread_cnt,
                                    struct er_err *err);
/* Stop: finish the jobs running now, drop the queued ones (their offsets
 * are not committed, so they are delivered again), join. NULL is ok. */
void er_dispatch_destroy(struct er_dispatch *d);

/* Queue a copy of one message for the run named by run_key (the Kafka key,
 * or a unique stand-in when the message has none); generation is the fence
 * of the partition's current assignment. Errors: ER_ENOMEM. */
int er_dispatch_submit(struct er_dispatch *d, const char *run_key,
                       int32_t partition, int64_t offset, int64_t generation,
                       const void *key, size_t key_len, const void *value,
                       size_t value_len);
/* Move up to cap finished jobs into out; returns how many. */
size_t er_dispatch_take_done(struct er_dispatch *d, struct er_done *out,
                             size_t cap);
/* Jobs queued or running. */
size_t er_dispatch_inflight(struct er_dispatch *d);
/* Drop the queued jobs of these partitions, cancel their running ones and
 * wait a bounded time (about 8 s) for them (the partitions are lost; a
 * step still running after that is fenced off). */
void er_dispatch_drop_partitions(struct er_dispatch *d,
                                 const int32_t *partitions, size_t cnt);

/* A handover (an eager rebalance revokes every partition, then mostly
 * gives the same ones back):
 * - er_dispatch_park_partitions at the revoke drops the partitions' queued
 *   jobs and parks their running ones: they go on, nothing waits for them.
 * - At the next assignment, er_dispatch_cancel_parked cancels the parked
 *   jobs of partitions not in keep (they moved on) and waits a bounded
 *   time for them; er_dispatch_parked_offsets lists the parked jobs of a
 *   partition that came back, and after its new generation is claimed,
 *   er_dispatch_adopt moves them to it: they record their outcome under
 *   the new generation instead of being cancelled and run again.
 * - When the message of an adopted job is delivered again,
 *   er_dispatch_attach says so (true once), and the message is not queued
 *   a second time: the running job's done record commits its offset.
 * A parked job that meets the fence (the new claim came first) waits for
 * the decision, then runs its step again under the new generation or
 * stops. Each returns how many jobs it concerned. */
void er_dispatch_park_partitions(struct er_dispatch *d,
                                 const int32_t *partitions, size_t cnt);
size_t er_dispatch_cancel_parked(struct er_dispatch *d, const int32_t *keep,
                                 size_t keep_cnt);
/* Up to cap offsets into out; returns how many jobs are parked there. */
size_t er_dispatch_parked_offsets(struct er_dispatch *d, int32_t partition,
                                  int64_t *out, size_t cap);
size_t er_dispatch_adopt(struct er_dispatch *d, int32_t partition,
                         int64_t generation);
bool er_dispatch_attach(struct er_dispatch *d, int32_t partition,
                        int64_t offset, int64_t generation);
/* Drop every queued job, give the running ones drain_ms to finish, then
 * cancel them and wait a bounded time (shutdown). */
void er_dispatch_drain(struct er_dispatch *d, int64_t drain_ms);
/* Whether a thread met a fatal error; msg gets its text. */
bool er_dispatch_failed(struct er_dispatch *d, char *msg, size_t msg_len);
/* Wake whoever waits for outbox rows: called after each commit. The
 * callback is set once before jobs are submitted. */
void er_dispatch_set_on_commit(struct er_dispatch *d, void (*fn)(void *),
                               void *arg);
/* Hand every thread's lifecycle the hook an acquire calls with a bounded
 * lease's expiry (er_lifecycle_set_expiry_hook). Set once before jobs are
 * submitted. */
void er_dispatch_set_expiry_hook(struct er_dispatch *d,
                                 er_lifecycle_expiry_fn *fn, void *arg);

#endif
