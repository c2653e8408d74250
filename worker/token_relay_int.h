/* token_relay: how a realize's bridge token reaches its published result
 * without ever being written to the database. The step that commits the
 * result writes its outbox row with the token masked (ER_TOKEN_RELAY_MASK)
 * and a note of where the token comes from (the realize command's topic,
 * partition and offset: envrun.outbox.token_from), and hands the token to
 * this process's relay in memory. The relay that publishes the row fills
 * the token in from memory, or, when the row was written by another
 * process (a worker that died, or whose relay was not the cluster's), by
 * reading the realize command back from Kafka and deriving the token from
 * its own credential, as the bridge's re-attach does.
 *
 * The in-memory hand-off is bounded (entries are dropped, wiped, after a
 * few minutes or when it is full: the relay then reads Kafka) and
 * thread-safe. */
#ifndef ER_WORKER_TOKEN_RELAY_INT_H
#define ER_WORKER_TOKEN_RELAY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bridge/bridge.h"
#include "common/common.h"

/* What a stored or queued result holds where a bridge token was: as long
 * as a token, so a record's encoding stays valid when the token is put
 * back in its place. */
#define ER_TOKEN_RELAY_MASK "[REDACTED-BRIDGE-TOKEN---------]"

/* Where `"PAPERCLIP_API_KEY":"<value>"` is in len bytes at p (an encoded
 * result), the offset of <value>; -1 when it is not there. */
ptrdiff_t er_token_relay_find(const uint8_t *p, size_t len, const char *value);

/* The token_from note of a result queued by the step of the realize
 * command command_id of company_id read at partition and offset of topic
 * (partition < 0: not read from Kafka, so only this process can fill it).
 * A JSON object in arena, unique to this process; NULL when out of
 * memory. */
char *er_token_relay_from(struct er_arena *arena, const char *topic,
                          int32_t partition, int64_t offset,
                          const char *command_id, const char *company_id);

/* Hand token to this process's relay for the row noted from (copied). A
 * note is known by its writer, partition, offset and command id, however
 * its JSON is spaced or ordered. */
void er_token_relay_put(const char *from, const char *token);
/* The token handed over for from, removed from memory; false when there
 * is none (never put, dropped, or put by another process). */
bool er_token_relay_take(const char *from, char token[ER_BRIDGE_TOKEN_LEN + 1]);
/* Drop everything handed over (wiped); for shutdown and tests. */
void er_token_relay_clear(void);

/* How the relay reads a message back: the value at partition and offset
 * of topic into value (er_kafka_fetch's errors: ER_ENOTFOUND when it is
 * gone, class RETRY when it cannot be read now). */
typedef int er_token_relay_fetch_fn(void *arg, const char *topic,
                                    int32_t partition, int64_t offset,
                                    struct er_buf *value, struct er_err *err);

/* Put the token back in the value (len bytes, written in place) of the
 * outbox row noted from: from memory, else from the realize command that
 * fetch reads back (checked to be that command: kind, id and company)
 * with its own hostApiToken. 0 when filled, or when the value holds no
 * mask. Errors: class RETRY when the command cannot be read now; class
 * SKIP when the token can never be restored (the command is gone or is
 * not the one noted, the note is malformed): the row cannot be published. */
int er_token_relay_fill(const char *from, uint8_t *value, size_t len,
                        er_token_relay_fetch_fn *fetch, void *fetch_arg,
                        struct er_err *err);

#endif
