/* lifecycle: acquire, realize and release of domain.md 3 for one command,
 * in one Postgres transaction that also records the command as processed
 * and queues its result and events in the outbox. One struct er_lifecycle
 * per dispatcher thread (it owns a store connection and an arena). */
#ifndef ER_WORKER_LIFECYCLE_INT_H
#define ER_WORKER_LIFECYCLE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "worker/worker.h"

struct er_lifecycle;

/* Connect to the database of cfg. Errors: NULL with err set. */
struct er_lifecycle *er_lifecycle_new(const struct er_config *cfg,
                                      struct er_err *err);
void er_lifecycle_destroy(struct er_lifecycle *lc);

/* Where a message came from, for logs. */
struct er_msg_coords {
    int32_t partition;
    int64_t offset;
};

/* Handle one delivered `commands` message (key may be NULL): decode and
 * validate it, run its step, and commit the result, events and processed
 * record in one transaction; a message that cannot be decoded or validated
 * is dead-lettered through the outbox in the same way. A command id seen
 * before gets its stored result again and changes nothing else. Returns 0
 * when the transaction committed (the offset may be committed); otherwise
 * rolls back and returns err with class RETRY (try again after backoff) or
 * FATAL. */
int er_lifecycle_step(struct er_lifecycle *lc, const uint8_t *key,
                      size_t key_len, const uint8_t *value, size_t value_len,
                      const struct er_msg_coords *coords, struct er_err *err);

/* The reaper's pass: expire (status expired, failure reason
 * `lease_expired`) up to limit active leases untouched for ttl_s seconds or
 * past expires_at, with their LeaseEvents and environment.lease_released
 * activity, in one transaction. *reaped gets how many. */
int er_lifecycle_reap(struct er_lifecycle *lc, int64_t ttl_s, int limit,
                      int *reaped, struct er_err *err);

#endif
