/* ctl_int: what the files of envrunctl share. Each subcommand lives in its
 * own file (ctl_send.c, ctl_tail.c, ctl_leases.c, ctl_dev.c) with one entry
 * point; ctl_util.c holds option parsing, Kafka client set-up and the
 * record decoding they have in common. Single-threaded use only. */
#ifndef ER_CTL_CTL_INT_H
#define ER_CTL_CTL_INT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <librdkafka/rdkafka.h>

#include "common/common.h"

/* Exit codes of contract.md 1. */
#define ER_CTL_EXIT_OK    0
#define ER_CTL_EXIT_FAIL  1
#define ER_CTL_EXIT_USAGE 2

/* Set by SIGINT/SIGTERM once er_ctl_util_signals_install() ran. */
extern volatile sig_atomic_t er_ctl_util_stop;

/* Install SIGINT/SIGTERM handlers that set er_ctl_util_stop, and ignore
 * SIGPIPE. */
void er_ctl_util_signals_install(void);

/* ================================================================
 * Option parsing: `--name value` or `--name=value`, `--flag`.
 * ================================================================ */

/* One accepted option. Exactly one of value (an option with an argument;
 * receives a borrowed pointer into argv) and is_set (a flag) is non-NULL. */
struct er_ctl_opt {
    const char *name; /* without the leading "--" */
    const char **value;
    bool *is_set;
};

/* Outcome of er_ctl_util_parse. */
enum er_ctl_parse {
    ER_CTL_PARSE_OK = 0,
    ER_CTL_PARSE_HELP,  /* --help or -h: print the usage, exit 0 */
    ER_CTL_PARSE_USAGE, /* a line naming the bad option went to stderr */
};

/* Parse argv[0..argc) (the arguments after the subcommand name) against
 * opts (cnt entries). Words not starting with "--" go to positional, at
 * most positional_max of them; *positional_cnt receives how many. An
 * unknown option, a missing argument, a repeated option or too many
 * positional words print one line "envrunctl CMD: ..." to stderr and give
 * ER_CTL_PARSE_USAGE. */
enum er_ctl_parse er_ctl_util_parse(const char *cmd, int argc, char **argv,
                                    const struct er_ctl_opt *opts, size_t cnt,
                                    const char **positional,
                                    size_t positional_max,
                                    size_t *positional_cnt);

/* Parse a decimal integer in [min, max] from s into *out. Returns 0 or
 * ER_EINVAL. */
int er_ctl_util_parse_int(const char *s, int64_t min, int64_t max,
                          int64_t *out);

/* Print "envrunctl CMD: msg" on stderr (one line). */
void er_ctl_util_usage_error(const char *cmd, const char *fmt, ...)
    ER_PRINTF(2, 3);

/* The value of the environment variable name, or dflt when it is unset or
 * empty. Borrowed. */
const char *er_ctl_util_env(const char *name, const char *dflt);

/* ================================================================
 * Topics and Kafka clients
 * ================================================================ */

/* The five topic names of contract.md 3, without prefix, NULL-terminated. */
extern const char *const er_ctl_util_topics[];

/* Full name of topic into out (out_len bytes): prefix + name when name is
 * one of er_ctl_util_topics, else name unchanged (already prefixed or a
 * foreign topic). Returns 0 or ER_E2BIG. */
int er_ctl_util_topic_full(const char *prefix, const char *name, char *out,
                           size_t out_len);
/* The short name of a full topic name: the part after prefix when it starts
 * with it, else full. Borrowed from full. */
const char *er_ctl_util_topic_short(const char *prefix, const char *full);

/* Create a librdkafka client for brokers, with ENVRUN_KAFKA_PROPS applied
 * after our defaults. is_producer selects an idempotent producer (acks=all)
 * or a consumer that commits nothing and is used with assign(). The caller
 * owns the handle (rd_kafka_destroy). NULL on failure with err set
 * (ER_EINVAL for a bad property, ER_EKAFKA). */
rd_kafka_t *er_ctl_util_kafka_new(const char *brokers, bool is_producer,
                                  struct er_err *err);

/* Assign every partition of each topic (full names, cnt of them) to the
 * consumer rk from the beginning (is_from_beginning) or the end. Waits up
 * to timeout_ms for metadata. Returns 0 or ER_EKAFKA (ER_ENOTFOUND when a
 * topic does not exist) with err set. */
int er_ctl_util_assign_all(rd_kafka_t *rk, const char *const *topics,
                           size_t cnt, bool is_from_beginning, int timeout_ms,
                           struct er_err *err);

/* Produce one value to topic with key (key_len bytes, NULL for a null key)
 * on producer rk and wait up to timeout_ms for its delivery report. Returns
 * 0 or ER_EKAFKA / ER_ETIMEDOUT with err set. */
int er_ctl_util_produce_sync(rd_kafka_t *rk, const char *topic, const void *key,
                             size_t key_len, const void *value,
                             size_t value_len, int timeout_ms,
                             struct er_err *err);

/* ================================================================
 * Records as JSON
 * ================================================================ */

/* Append to out one JSON line (no newline) describing the consumed record
 * msg (borrowed): {"topic":T,"partition":P,"offset":O,"key":K,"value":V},
 * T being topic_short and V the value decoded by er_codec_to_json. For a
 * dead-letter topic (is_raw), or when the value cannot be decoded, the
 * record's headers go into "headers" and the bytes into "valueBase64"
 * instead; a decoding error adds "error". Returns 0, ER_ENOMEM or ER_E2BIG. */
int er_ctl_util_record_json(const char *topic_short,
                            const rd_kafka_message_t *msg, bool is_raw,
                            struct er_buf *out);

/* Standard base64 of p (len bytes) appended to out. */
int er_ctl_util_base64(const void *p, size_t len, struct er_buf *out);

/* ================================================================
 * Subcommands: each returns an exit code of contract.md 1.
 * argv[0] is the first word after the subcommand name.
 * ================================================================ */

int er_ctl_send_main(int argc, char **argv);
int er_ctl_tail_main(int argc, char **argv);
int er_ctl_leases_main(int argc, char **argv);
int er_ctl_dev_main(int argc, char **argv);

#endif
