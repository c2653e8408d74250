/* ctl_int: what the files of envrunctl share. Each subcommand lives in its
 * own file (ctl_send.c, ctl_tail.c, ctl_leases.c, ctl_dev.c, ctl_dlq.c)
 * with one entry point; ctl_util.c holds option parsing, Kafka client
 * set-up and record decoding, ctl_reader.c topic reading, ctl_view.c
 * filters and tables, ctl_cmdjson.c commands read from JSON. Single-threaded
 * use only. */
#ifndef ER_CTL_CTL_INT_H
#define ER_CTL_CTL_INT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "common/common.h"
#include "schemas/schemas.h"

/* Exit codes of contract.md 1. */
#define ER_CTL_EXIT_OK    0
#define ER_CTL_EXIT_FAIL  1
#define ER_CTL_EXIT_USAGE 2

/* Set by SIGINT/SIGTERM once er_ctl_util_signals_install() ran. */
extern volatile sig_atomic_t er_ctl_util_stop;

/* Install SIGINT/SIGTERM handlers that set er_ctl_util_stop, and ignore
 * SIGPIPE (er_ctl_util_sigpipe_ignore). */
void er_ctl_util_signals_install(void);
/* Ignore SIGPIPE: a write to a closed pipe fails with EPIPE instead of
 * killing the process, so the writer can say so and exit 1. */
void er_ctl_util_sigpipe_ignore(void);

/* ================================================================
 * Standard output: every line is checked, so a reader that went away
 * (`envrunctl tail --follow | head -1`) stops the command.
 * ================================================================ */

/* Write p (len bytes) and a newline to stdout and flush. Returns 0, or
 * ER_EIO when stdout is closed or failed (er_ctl_util_out_is_closed). */
int er_ctl_util_out_line(const void *p, size_t len);
/* Whether stdout failed or its reader is gone: a write failed before, or
 * stdout is a pipe or socket whose other end is closed (POLLERR or
 * POLLHUP), which shows without writing. */
bool er_ctl_util_out_is_closed(void);
/* Print "envrunctl CMD: msg" on stderr as one line, msg passed through
 * er_ctl_view_cell (msg may quote untrusted input). */
void er_ctl_util_err_print(const char *cmd, const char *msg);

/* ================================================================
 * Option parsing: `--name value` or `--name=value`, `--flag`.
 * ================================================================ */

/* The values of a repeatable option, borrowed pointers into argv. */
struct er_ctl_list {
    const char **values; /* max entries */
    size_t max;
    size_t cnt;
};

/* One accepted option. Exactly one of value (an option with an argument;
 * receives a borrowed pointer into argv), is_set (a flag) and list (a
 * repeatable option with an argument) is non-NULL. */
struct er_ctl_opt {
    const char *name; /* without the leading "--" */
    const char **value;
    bool *is_set;
    struct er_ctl_list *list;
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

/* The topic prefix for cmd: flag (the --topic-prefix value, NULL when not
 * given), else ENVRUN_TOPIC_PREFIX (set but empty: the empty prefix, as
 * the worker reads it), else "envrun.". Checked as the worker checks
 * ENVRUN_TOPIC_PREFIX: only [A-Za-z0-9._-], under 128 bytes. Returns 0
 * with *prefix (borrowed), or ER_EINVAL after a usage line naming the flag
 * or the variable. */
int er_ctl_util_prefix_get(const char *cmd, const char *flag,
                           const char **prefix);

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
/* Whether name is one of er_ctl_util_topics. */
bool er_ctl_util_topic_is_known(const char *name);
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
/* A consumer as above that also delivers RD_KAFKA_RESP_ERR__PARTITION_EOF
 * events (enable.partition.eof), for readers that stop at the end. */
rd_kafka_t *er_ctl_util_consumer_new_eof(const char *brokers,
                                         struct er_err *err);

/* Assign every partition of each topic (full names, cnt of them) to the
 * consumer rk from the beginning (is_from_beginning) or the end. Waits up
 * to timeout_ms for metadata. Returns 0 or ER_EKAFKA (ER_ENOTFOUND when a
 * topic does not exist) with err set. */
int er_ctl_util_assign_all(rd_kafka_t *rk, const char *const *topics,
                           size_t cnt, bool is_from_beginning, int timeout_ms,
                           struct er_err *err);

/* Where a produced record landed. */
struct er_ctl_delivery {
    int32_t partition;
    int64_t offset;
};

/* Produce one value to topic with key (key_len bytes, NULL for a null key)
 * and headers hdrs (NULL for none; consumed, even on failure) on producer
 * rk and wait up to timeout_ms for its delivery report; *where (may be
 * NULL) receives the record's partition and offset. Returns 0 or
 * ER_EKAFKA / ER_ETIMEDOUT with err set. */
int er_ctl_util_produce_sync(rd_kafka_t *rk, const char *topic, const void *key,
                             size_t key_len, const void *value,
                             size_t value_len, rd_kafka_headers_t *hdrs,
                             int timeout_ms, struct er_ctl_delivery *where,
                             struct er_err *err);

/* The value of header name of msg (borrowed, valid while msg lives) as a
 * NUL-terminated copy in out (out_len bytes, truncated); false when msg has
 * no such header or its value is null. The last header of that name wins.
 */
bool er_ctl_util_header(const rd_kafka_message_t *msg, const char *name,
                        char *out, size_t out_len);

/* Read the whole of path ("-": standard input) into out (whose cap bounds
 * it). Returns 0, or ER_EIO / ER_E2BIG with err set naming the file. */
int er_ctl_util_read_file(const char *path, struct er_buf *out,
                          struct er_err *err);

/* ================================================================
 * Reading a topic (ctl_reader.c): every partition assigned directly, in
 * follow mode (new records until told to stop) or snapshot mode (up to
 * the end each partition had when the reader opened).
 * ================================================================ */

struct er_ctl_reader {
    rd_kafka_t *rk;
    int part_cnt;
    int64_t *end_offsets; /* snapshot: high watermark per partition */
    bool *is_part_done;   /* snapshot: partition read up to its end */
    int done_cnt;
    bool is_follow;
};

/* Open a consumer on brokers and assign every partition of topic (a full
 * name) from the beginning (is_from_beginning) or the end. Without
 * is_follow the reader stops at the end offsets of this moment. Returns 0
 * or ER_EKAFKA / ER_ENOTFOUND / ER_EINVAL (a bad ENVRUN_KAFKA_PROPS) with
 * err set; on failure the reader is closed. */
int er_ctl_reader_open(struct er_ctl_reader *reader, const char *brokers,
                       const char *topic, bool is_from_beginning,
                       bool is_follow, struct er_err *err);

/* The next record into *msg (owned by the caller: rd_kafka_message_destroy).
 * Returns 1 with a record, 0 when there is none: the snapshot is read, or
 * idle_ms >= 0 passed without a record, or er_ctl_util_stop was set, or
 * stdout is closed (er_ctl_util_out_is_closed: nobody reads what a record
 * would print). Broker errors are reported on stderr and reading goes on.
 */
int er_ctl_reader_next(struct er_ctl_reader *reader, int64_t idle_ms,
                       rd_kafka_message_t **msg);

/* Close the consumer and free what open made. Safe on a closed reader. */
void er_ctl_reader_close(struct er_ctl_reader *reader);

/* ================================================================
 * Views of records (ctl_view.c): filters and output formats
 * ================================================================ */

enum er_ctl_format {
    ER_CTL_FORMAT_JSON = 0,
    ER_CTL_FORMAT_TABLE,
};

/* Parse a --format value; 0 or ER_EINVAL. */
int er_ctl_view_format_parse(const char *s, enum er_ctl_format *format);

/* The record filters of tail; NULL fields match everything. */
struct er_ctl_filter {
    const char *run;     /* heartbeatRunId (activity: runId) */
    const char *lease;   /* leaseId (commands: command.leaseId) */
    const char *company; /* companyId */
    const char *outcome; /* outcome (results) */
};

/* Whether any filter is set. */
bool er_ctl_view_filter_is_set(const struct er_ctl_filter *filter);

/* Whether the decoded value (a JSON object, borrowed; NULL when the record
 * did not decode) passes every filter. A record lacking a filtered field
 * does not pass. */
bool er_ctl_view_filter_match(const struct er_ctl_filter *filter,
                              const json_t *value);

/* The header line of the table of topic_short (results, commands,
 * lease-events, activity or another) into out. */
int er_ctl_view_table_head(const char *topic_short, struct er_buf *out);
/* One row of that table for a record: record is the JSON object
 * er_ctl_util_record_json wrote (borrowed). */
int er_ctl_view_table_row(const char *topic_short, const json_t *record,
                          struct er_buf *out);

/* Append s (len bytes) to out as one table cell. Untrusted bytes must not
 * steer the terminal, so every character that is not plain printable text
 * becomes '?': C0 controls, DEL, C1 controls (U+0080..U+009F, in UTF-8
 * 0xC2 0x80..0x9F; U+009B is a CSI), the line and paragraph separators,
 * the bidirectional overrides and isolates, and bytes that are not valid
 * UTF-8. Unless is_last, the cell is padded with spaces to width
 * characters and followed by two spaces. This is the one sanitiser of
 * everything envrunctl prints as text (tables, and error lines quoting
 * input). Returns 0, ER_E2BIG or ER_ENOMEM. */
int er_ctl_view_cell(struct er_buf *out, const char *s, size_t len, int width,
                     bool is_last);
/* How many characters s (len bytes) takes as a cell. */
size_t er_ctl_view_cell_width(const char *s, size_t len);

/* Append s (len bytes) to out as a JSON string (quotes and escapes; DEL
 * and the C1 controls are escaped too, invalid UTF-8 becomes U+FFFD). */
int er_ctl_util_json_string(struct er_buf *out, const char *s, size_t len);
/* Length of the valid UTF-8 sequence at s (n > 0 bytes left), 0 when it
 * is not one (overlong, surrogate, past U+10FFFF, cut short). */
size_t er_ctl_util_utf8_len(const uint8_t *s, size_t n);

/* ================================================================
 * Commands as JSON (ctl_cmdjson.c)
 * ================================================================ */

/* Fill cmd from a RunCommand in the JSON shape `tail commands` prints
 * (text, len bytes; also a whole `tail` line, whose "value" is used).
 * Strings of cmd point into *doc (owned by the caller: json_decref after
 * use; the token is a copy, freed with er_secret_fini). A missing
 * commandId gets a random uuid (into id_buf), a missing issuedAt the
 * current time. Errors: ER_EINVAL with err naming the field
 * ("command.adapterType: expected a string"). */
int er_ctl_cmdjson_parse(const char *text, size_t len,
                         struct er_run_command *cmd, json_t **doc,
                         char id_buf[37], struct er_err *err);

/* ================================================================
 * Records as JSON
 * ================================================================ */

/* Append to out one JSON line (no newline) describing the consumed record
 * msg (borrowed): {"topic":T,"partition":P,"offset":O,"key":K,"value":V},
 * T being topic_short and V the value decoded by er_codec_to_json, passed
 * through er_ctl_util_value_redact. For a dead-letter topic (is_raw), or
 * when the value cannot be decoded, the record's headers go into "headers"
 * instead, and a decoding error adds "error". The bytes themselves go into
 * "valueBase64" only on results, lease-events and activity, which carry
 * no token; elsewhere (commands and commands.dlq may hold a realize
 * command's hostApiToken) only "valueLength" and "valueHeaderHex" (the
 * 5-byte Confluent or 10-byte single-object header, else null) are shown.
 * Returns 0, ER_ENOMEM or ER_E2BIG. */
int er_ctl_util_record_json(const char *topic_short,
                            const rd_kafka_message_t *msg, bool is_raw,
                            struct er_buf *out);

/* In value (the JSON text of a decoded record), mask the secret-looking
 * keys of a RunCommand's JSON text fields (command.workspaceJson and
 * command.runtimeOverlayJson) with er_redact_json, the redaction the worker
 * applies before it dead-letters a command; the values become
 * ER_REDACT_MASK. Anything else is left as it is. Returns 0 or ER_ENOMEM /
 * ER_E2BIG. */
int er_ctl_util_value_redact(struct er_buf *value);

/* In the JSON text json, write DEL and the C1 controls (U+0080..U+009F),
 * which JSON allows raw inside strings, as \u escapes: the text means the
 * same, and a JSON line shown on a terminal cannot steer it. Returns 0,
 * ER_E2BIG or ER_ENOMEM (json is then unchanged). */
int er_ctl_util_json_escape_controls(struct er_buf *json);

/* Standard base64 of p (len bytes) appended to out. */
int er_ctl_util_base64(const void *p, size_t len, struct er_buf *out);

/* ================================================================
 * Subcommands: each returns an exit code of contract.md 1.
 * argv[0] is the first word after the subcommand name.
 * ================================================================ */

/* The leases table of `envrunctl leases` (and of the dev demo) into out:
 * the rows er_store_ctl_leases gives as JSON, in aligned columns whose
 * cells go through er_ctl_view_cell. Errors as er_store_ctl_leases. */
int er_ctl_leases_table(const char *conninfo, const char *company,
                        const char *run, const char *status, int limit,
                        struct er_buf *out, struct er_err *err);

int er_ctl_send_main(int argc, char **argv);
int er_ctl_tail_main(int argc, char **argv);
int er_ctl_leases_main(int argc, char **argv);
int er_ctl_dev_main(int argc, char **argv);
int er_ctl_dlq_main(int argc, char **argv);

#endif
