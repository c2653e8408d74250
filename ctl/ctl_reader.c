/* ctl_reader: read one topic for envrunctl (tail, dlq): every partition
 * assigned directly (no group join, nothing committed), either following
 * new records or stopping at the end offsets the partitions had when the
 * reader opened. Single-threaded; owns its consumer and offset arrays. */
#include <string.h>

#include "ctl/ctl_int.h"

#define READER_METADATA_TIMEOUT_MS 10000
#define READER_POLL_MS             100
/* How often a reader looks whether anybody still reads stdout. */
#define READER_OUT_CHECK_MS        100

static void mark_done(struct er_ctl_reader *reader, int32_t partition)
{
    if (partition < 0 || partition >= reader->part_cnt ||
        reader->is_part_done[partition])
        return;
    reader->is_part_done[partition] = true;
    reader->done_cnt++;
}

/* The end offsets of a snapshot. Partitions are numbered 0..cnt-1 (the
 * assignment holds every one of them). */
static int snapshot_ends(struct er_ctl_reader *reader, const char *topic,
                         bool is_from_beginning, struct er_err *err)
{
    int p;

    reader->end_offsets =
        er_calloc((size_t)reader->part_cnt, sizeof(*reader->end_offsets));
    reader->is_part_done =
        er_calloc((size_t)reader->part_cnt, sizeof(*reader->is_part_done));
    if (reader->end_offsets == NULL || reader->is_part_done == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                          "reader: out of memory");
    for (p = 0; p < reader->part_cnt; p++) {
        int64_t low = 0;
        int64_t high = 0;
        rd_kafka_resp_err_t kerr = rd_kafka_query_watermark_offsets(
            reader->rk, topic, p, &low, &high, READER_METADATA_TIMEOUT_MS);

        if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR)
            return er_err_set(err, ER_EKAFKA, ER_ERRCLASS_RETRY,
                              "end offsets of %s [%d]: %s", topic, p,
                              rd_kafka_err2str(kerr));
        reader->end_offsets[p] = high;
        if (high <= low || !is_from_beginning)
            mark_done(reader, p);
    }
    return 0;
}

int er_ctl_reader_open(struct er_ctl_reader *reader, const char *brokers,
                       const char *topic, bool is_from_beginning,
                       bool is_follow, struct er_err *err)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    const char *topics[1];
    int rc;

    memset(reader, 0, sizeof(*reader));
    reader->is_follow = is_follow;
    reader->rk = er_ctl_util_consumer_new_eof(brokers, err);
    if (reader->rk == NULL)
        return err != NULL && err->code != 0 ? err->code : ER_EKAFKA;
    topics[0] = topic;
    rc = er_ctl_util_assign_all(reader->rk, topics, 1, is_from_beginning,
                                READER_METADATA_TIMEOUT_MS, err);
    if (rc != 0)
        goto fail;
    if (rd_kafka_assignment(reader->rk, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL,
                        "assignment of %s unreadable", topic);
        goto fail;
    }
    reader->part_cnt = parts->cnt;
    rd_kafka_topic_partition_list_destroy(parts);
    if (!is_follow) {
        rc = snapshot_ends(reader, topic, is_from_beginning, err);
        if (rc != 0)
            goto fail;
    }
    return 0;

fail:
    er_ctl_reader_close(reader);
    return rc;
}

int er_ctl_reader_next(struct er_ctl_reader *reader, int64_t idle_ms,
                       rd_kafka_message_t **msg)
{
    int64_t last_ms = er_time_mono_ms();
    int64_t checked_ms = 0;

    *msg = NULL;
    while (!er_ctl_util_stop) {
        rd_kafka_message_t *m;

        if (!reader->is_follow && reader->done_cnt >= reader->part_cnt)
            return 0;
        /* A reader that went away (`tail --follow | head -1`) shows on
         * stdout before anything is written: stop rather than wait for a
         * record nobody will see. */
        if (er_time_mono_ms() - checked_ms >= READER_OUT_CHECK_MS) {
            if (er_ctl_util_out_is_closed())
                return 0;
            checked_ms = er_time_mono_ms();
        }
        m = rd_kafka_consumer_poll(reader->rk, READER_POLL_MS);
        if (m == NULL) {
            if (idle_ms >= 0 && er_time_mono_ms() - last_ms >= idle_ms)
                return 0;
            continue;
        }
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            /* The fetcher reached the end: transaction markers may sit
             * after the last record, so this, not the last offset seen,
             * says a snapshot partition is read. */
            if (!reader->is_follow && m->partition >= 0 &&
                m->partition < reader->part_cnt &&
                m->offset >= reader->end_offsets[m->partition])
                mark_done(reader, m->partition);
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            /* Broker-side trouble is reported and reading goes on: the
             * client reconnects by itself. */
            fprintf(stderr, "envrunctl: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        if (!reader->is_follow && m->partition >= 0 &&
            m->partition < reader->part_cnt) {
            if (reader->is_part_done[m->partition] ||
                m->offset >= reader->end_offsets[m->partition]) {
                /* Past the snapshot: not ours. */
                mark_done(reader, m->partition);
                rd_kafka_message_destroy(m);
                continue;
            }
            if (m->offset + 1 >= reader->end_offsets[m->partition])
                mark_done(reader, m->partition);
        }
        *msg = m;
        return 1;
    }
    return 0;
}

void er_ctl_reader_close(struct er_ctl_reader *reader)
{
    if (reader->rk != NULL) {
        rd_kafka_consumer_close(reader->rk);
        rd_kafka_destroy(reader->rk);
    }
    er_free(reader->end_offsets);
    er_free(reader->is_part_done);
    memset(reader, 0, sizeof(*reader));
}
