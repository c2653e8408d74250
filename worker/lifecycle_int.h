/* lifecycle: acquire, realize and release of domain.md 3 for one command,
 * in one Postgres transaction that also records the command as processed
 * and queues its result and events in the outbox. One struct er_lifecycle
 * per dispatcher thread (it owns a store connection and an arena). */
#ifndef ER_WORKER_LIFECYCLE_INT_H
#define ER_WORKER_LIFECYCLE_INT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "worker/worker.h"

struct er_lifecycle;

/* Connect to the database of cfg. Errors: NULL with err set. */
struct er_lifecycle *er_lifecycle_new(const struct er_config *cfg,
                                      struct er_err *err);
void er_lifecycle_destroy(struct er_lifecycle *lc);

/* Where a message came from, and the fence its step works under. */
struct er_msg_coords {
    int32_t partition;
    int64_t offset;
    /* The generation of the partition's assignment; every transaction of
     * the step checks it. The consumer moves it to a newer one when the
     * partition comes back to it while the step runs (a handover), so it
     * is read afresh each time. NULL: unfenced, for tools. */
    const _Atomic int64_t *generation;
    /* Set when the step must stop (its partition was revoked, the worker
     * drains); may be NULL. A cancelled step records no outcome. */
    const atomic_bool *cancel;
};

/* Handle one delivered `commands` message (key may be NULL): decode and
 * validate it and run its step. A step whose driver works outside the
 * database (ssh) runs in three phases (DESIGN.md): a short transaction
 * journals the operation in envrun.operations and commits, the driver
 * works with no transaction open, and a second transaction records the
 * outcome: lease rows, activity, the processed command, the outbox rows and
 * the journal entry's close. A local step, and one decided before any
 * effect, is one transaction. A message that cannot be decoded or validated
 * is dead-lettered through the outbox. A command id seen before gets its
 * stored result again and changes nothing else. Every transaction checks
 * the fence of coords. Returns 0 when the outcome committed (the offset may
 * be committed); otherwise rolls back and returns err: class RETRY (try
 * again after backoff), FATAL, or code ER_EFENCED / ER_ECANCELED (the
 * partition is gone or the step was cancelled: drop the message, do not
 * commit its offset; the journal tells the next owner where it stopped). */
int er_lifecycle_step(struct er_lifecycle *lc, const uint8_t *key,
                      size_t key_len, const uint8_t *value, size_t value_len,
                      const struct er_msg_coords *coords, struct er_err *err);

/* The thread that owns lc has been idle a while: let the memory kept for
 * the next step go (its arena chunk and encoder buffer). */
void er_lifecycle_idle(struct er_lifecycle *lc);

/* Remove what a crash can leave on this host (the drivers' sweeps: key
 * files of dead processes, connections of leases that are done), asking
 * the database which leases still need theirs. */
void er_lifecycle_sweep_host(struct er_lifecycle *lc);

/* The reaper's pass: expire (status expired, failure reason
 * `lease_expired`) up to limit active leases untouched for ttl_s seconds,
 * past expires_at, or (with Paperclip's heartbeat_runs) of a run that ended
 * and unchanged for 5 minutes. Each is claimed in the journal in a short
 * transaction (FOR UPDATE SKIP LOCKED, so workers never take one lease
 * twice), cleaned up through its driver with no transaction open, and
 * recorded with its LeaseEvent and environment.lease_released activity in a
 * transaction of its own. A lease whose cleanup fails stays active and is
 * tried again after a backoff; the others go on. *reaped gets how many
 * were expired.
 * Then, the same way, up to limit acquisitions whose lease was never
 * recorded and that nobody else will finish: an acquire journal entry left
 * rolling_back for over a minute (its worker died before the undo, or the
 * undo failed), or left started / interrupted for over ttl_s seconds with
 * no lease row (its command never came back). Each is released through its
 * driver (an ssh per_lease directory is removed) from the {driver,
 * metadata} the entry recorded, else from the environment's config, and
 * closed rolled_back unless its command resumed it meanwhile. No event or
 * activity: no lease was ever recorded. Returns the first part's failure,
 * else the second's. */
int er_lifecycle_reap(struct er_lifecycle *lc, int64_t ttl_s, int limit,
                      int *reaped, struct er_err *err);

/* When the reaper is next due: the earliest expires_at still ahead among
 * active leases (ms since the epoch), 0 when there is none. */
int er_lifecycle_next_expiry(struct er_lifecycle *lc, int64_t *at_ms,
                             struct er_err *err);

/* Refresh the gauges of the database's state (envrun_leases,
 * envrun_journal_inflight) with one query; the reaper calls it each pass.
 * On failure the gauges keep their last values. */
int er_lifecycle_gauges(struct er_lifecycle *lc, struct er_err *err);

/* Called with a lease's expires_at when an acquire records a lease whose
 * life the command bounded (requestedExpiresAt), so the reaper can wake
 * then rather than at its next pass. Set before the first step. */
typedef void er_lifecycle_expiry_fn(void *arg, int64_t at_ms);
void er_lifecycle_set_expiry_hook(struct er_lifecycle *lc,
                                  er_lifecycle_expiry_fn *fn, void *arg);

/* The value of the commands topic's message at partition and offset into
 * value (er_kafka_fetch's errors). */
typedef int er_lifecycle_fetch_fn(void *arg, const char *topic,
                                  int32_t partition, int64_t offset,
                                  struct er_buf *value, struct er_err *err);

/* The bridge follows its run (contract.md 7): for every active lease whose
 * realize came from a partition owner holds (partition_fence) and whose
 * bridge this process does not run, read that realize command again
 * (fetch: its hostApiToken is stored nowhere) and re-attach to the
 * gateway, or start it again with the same token and port. Failures are
 * logged per bridge; *attached gets how many were re-attached. */
int er_lifecycle_bridges_follow(struct er_lifecycle *lc, const char *owner,
                                er_lifecycle_fetch_fn *fetch, void *fetch_arg,
                                int *attached, struct er_err *err);

#endif
