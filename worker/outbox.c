/* outbox: the relay thread (see outbox_int.h). A row is deleted only after
 * the broker acknowledged it, so a crash republishes at worst (consumers
 * drop duplicates by event id); nothing committed is ever lost. A row the
 * broker refuses for good is moved to envrun.outbox_quarantine instead of
 * blocking the rows behind it. A relay publishes and settles only under the
 * generation it claimed with the lock, so one that lost the lock while
 * paused drops the batch it holds instead of publishing it. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "schemas/schemas.h"
#include "worker/kafka_int.h"
#include "worker/outbox_int.h"
#include "worker/store_int.h"
#include "worker/token_relay_int.h"

/* A batch is at most BATCH_ROWS rows and BATCH_BYTES of keys and values;
 * values longer than VALUE_FETCH_MAX are never read whole. */
#define BATCH_ROWS       500
#define BATCH_BYTES      ((size_t)16 * 1024 * 1024)
#define VALUE_FETCH_MAX  ((size_t)64 * 1024 * 1024)
#define IDLE_WAIT_MS     200
#define DRAIN_POLL_MS    1000
#define PURGE_WAIT_MS    5000
#define PROBE_EVERY_MS   2000
#define PROBE_TIMEOUT_MS 1000
#define ARENA_MAX        ((size_t)256 * 1024 * 1024)
#define MAX_MSG_DEFAULT  1000000 /* librdkafka's message.max.bytes */
#define TOPIC_MAX        256
#define HDR_TRUNCATED    "envrun.truncated"
#define FETCH_WAIT_MS    5000

/* What became of one row of the batch. */
enum slot_state {
    SLOT_KEEP = 0,   /* not sent, or failed for now: stays in the outbox */
    SLOT_SENT,       /* queued, waiting for its delivery report */
    SLOT_DONE,       /* delivered: delete */
    SLOT_QUARANTINE, /* refused for good: move to the quarantine */
};

/* One row's fate; the delivery report writes it (msg_opaque). */
struct slot {
    int64_t id;
    enum slot_state state;
    int kerr;           /* the rd_kafka_resp_err_t that decided it, or 0 */
    const char *reason; /* why quarantined (arena); NULL: from kerr */
    bool is_filled;     /* its value holds a bridge token: wiped after */
    int64_t created_ms; /* the row's created_at, for the publish lag */
};

struct er_outbox {
    pthread_t tid;
    bool is_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool is_kicked;
    bool is_stopping;
    int64_t stop_deadline_ms; /* monotonic; 0 while running */
    rd_kafka_t *rk;
    struct er_store *store;
    struct er_arena arena; /* one batch: rows and slots */
    size_t max_msg_bytes;  /* the producer's message.max.bytes */
    size_t value_max;      /* longest value prefix fetched */
    char topic_dlq[TOPIC_MAX];
    char owner[128]; /* host:pid, recorded with the relay's claim */
    char *brokers;   /* and props: for the fetcher, made when needed */
    char *props;
    struct er_kafka_fetcher *fetcher; /* reads realize commands back */
    char held_why[256]; /* why the batch's rows wait, beside delivery */
    int64_t generation; /* of the relay's fence, claimed with the lock */
    /* Set by the relay thread or the callbacks it serves (librdkafka calls
     * them from rd_kafka_poll/flush on the polling thread). */
    bool is_broker_down; /* all brokers down, no delivery or answer since */
    bool is_slots_gone;  /* late delivery reports must not touch slots */
};

bool er_outbox_err_is_permanent(int code)
{
    /* Refusals of this message itself. Other failures (broker down,
     * timeouts, a full queue, authorization, a fatal producer) are about
     * the cluster or the client: retry, never quarantine. */
    switch (code) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return true;
    default:
        return false;
    }
}

size_t er_outbox_fit_len(size_t max_bytes, size_t key_len, size_t headers_len)
{
    size_t rest;

    if (key_len >= max_bytes || headers_len >= max_bytes - key_len)
        return 0;
    rest = max_bytes - key_len - headers_len;
    return rest > ER_OUTBOX_FIT_SLACK ? rest - ER_OUTBOX_FIT_SLACK : 0;
}

static void producer_up(struct er_outbox *ob)
{
    if (ob->is_broker_down) {
        ob->is_broker_down = false;
        er_metrics_set_producer_ready(true);
        ER_LOG_INFO("outbox", "producer reaches a broker again");
    }
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                        void *opaque)
{
    struct er_outbox *ob = opaque;
    struct slot *slot = msg->_private;

    (void)rk;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        producer_up(ob);
    if (slot == NULL || ob->is_slots_gone)
        return;
    slot->kerr = msg->err;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        er_metrics_outbox_publish_lag(er_time_now_ms() - slot->created_ms);
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        slot->state = SLOT_DONE;
    else if (er_outbox_err_is_permanent(msg->err))
        slot->state = SLOT_QUARANTINE;
    else
        slot->state = SLOT_KEEP; /* relay_batch reports it, once */
}

/* The producer's error_cb (instead of kafka.c's): the same logging, and
 * "all brokers down" makes the worker not ready. */
static void on_error(rd_kafka_t *rk, int code, const char *reason, void *opaque)
{
    struct er_outbox *ob = opaque;
    char buf[256];

    if (code == RD_KAFKA_RESP_ERR__FATAL &&
        rd_kafka_fatal_error(rk, buf, sizeof(buf)) !=
            RD_KAFKA_RESP_ERR_NO_ERROR) {
        ER_LOG_ERR("rdkafka", "fatal error: %s", buf);
        return;
    }
    if (code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN && !ob->is_broker_down) {
        ob->is_broker_down = true;
        er_metrics_set_producer_ready(false);
    }
    /* Transient broker errors: librdkafka retries. */
    ER_LOG_WARN("rdkafka", "%s: %s", rd_kafka_err2name(code), reason);
}

/* Headers of a DLQ row: a JSON object of string values. */
static rd_kafka_headers_t *headers_from(const char *json)
{
    rd_kafka_headers_t *hdrs;
    json_t *obj;
    const char *k;
    json_t *v;

    if (json == NULL)
        return NULL;
    obj = json_loads(json, 0, NULL);
    if (!json_is_object(obj)) {
        json_decref(obj);
        return NULL;
    }
    hdrs = rd_kafka_headers_new(json_object_size(obj) + 1);
    json_object_foreach(obj, k, v)
    {
        if (json_is_string(v))
            rd_kafka_header_add(hdrs, k, -1, json_string_value(v),
                                (ssize_t)json_string_length(v));
    }
    json_decref(obj);
    return hdrs;
}

static bool stop_is_due(struct er_outbox *ob)
{
    bool is_due;

    pthread_mutex_lock(&ob->mu);
    is_due = ob->is_stopping && er_time_mono_ms() >= ob->stop_deadline_ms;
    pthread_mutex_unlock(&ob->mu);
    return is_due;
}

/* Mark a row for the quarantine without sending it. */
static void refuse(struct er_outbox *ob, struct slot *slot, int kerr,
                   const char *what)
{
    slot->state = SLOT_QUARANTINE;
    slot->kerr = kerr;
    slot->reason = er_arena_printf(&ob->arena, "%s: %s", what,
                                   rd_kafka_err2str((rd_kafka_resp_err_t)kerr));
}

/* Queue row r; its delivery report fills slot. A value the producer cannot
 * send whole is quarantined, except on the dead-letter topic, where what
 * fits is sent with an envrun.truncated header (the DLQ copy keeps the
 * start of the bytes rather than nothing). Returns 0 (queued or decided)
 * or the rd_kafka_resp_err_t of a produce call that failed for now. */
static int produce_row(struct er_outbox *ob, const struct er_outbox_row *r,
                       struct slot *slot)
{
    bool is_dlq = strcmp(r->topic, ob->topic_dlq) == 0;
    rd_kafka_headers_t *hdrs = NULL;
    const char *note;
    size_t keep;
    int kerr;

    if (r->value_full_len > r->value_len && !is_dlq) {
        slot->state = SLOT_QUARANTINE;
        slot->kerr = RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
        slot->reason = er_arena_printf(
            &ob->arena,
            "value of %zu bytes is over the producer's message.max.bytes "
            "(%zu)",
            r->value_full_len, ob->max_msg_bytes);
        return 0;
    }
    hdrs = headers_from(r->headers_json);
    slot->state = SLOT_SENT;
    if (r->value_full_len == r->value_len) {
        struct er_registry *reg = er_registry_installed();
        struct er_buf framed;
        int framing = 0;

        /* With a registry, envrun's records go out Confluent-framed; a
         * dead letter is stored as it is to be published (lifecycle.c). */
        er_buf_init(&framed, r->value_len + 16);
        if (reg != NULL && !is_dlq)
            framing =
                er_registry_frame(reg, r->value, r->value_len, &framed, NULL);
        if (framing < 0) {
            /* Out of memory: the row waits for the next batch rather than
             * going out in a framing its topic's readers do not expect. */
            er_buf_fini(&framed);
            if (hdrs != NULL)
                rd_kafka_headers_destroy(hdrs);
            slot->state = SLOT_KEEP;
            slot->kerr = RD_KAFKA_RESP_ERR__FAIL;
            return slot->kerr;
        }
        if (reg != NULL && !is_dlq && framing == 0)
            ER_LOG_WARN("outbox",
                        "row %lld goes out single-object encoded: its "
                        "schema is not one this worker registered (written "
                        "by another envrun version?)",
                        (long long)r->id);
        if (framing == 1)
            kerr = er_kafka_produce(ob->rk, r->topic, r->key, r->key_len,
                                    framed.data, framed.len, hdrs, slot);
        else
            kerr = er_kafka_produce(ob->rk, r->topic, r->key, r->key_len,
                                    r->value, r->value_len, hdrs, slot);
        if (framed.len > 0 && slot->is_filled)
            er_wipe(framed.data, framed.len); /* holds a bridge token */
        er_buf_fini(&framed);
        if (kerr == RD_KAFKA_RESP_ERR_NO_ERROR)
            return 0;
        if (!is_dlq || kerr != RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
            goto refused;
    }
    keep = er_outbox_fit_len(ob->max_msg_bytes, r->key_len,
                             r->headers_json != NULL ? strlen(r->headers_json)
                                                     : 0);
    if (keep > r->value_len)
        keep = r->value_len;
    note = er_arena_printf(&ob->arena, "%zu bytes, first %zu kept",
                           r->value_full_len, keep);
    if (keep == 0 || note == NULL) {
        kerr = RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
        goto refused;
    }
    if (hdrs == NULL)
        hdrs = rd_kafka_headers_new(1);
    rd_kafka_header_add(hdrs, HDR_TRUNCATED, -1, note, -1);
    kerr = er_kafka_produce(ob->rk, r->topic, r->key, r->key_len, r->value,
                            keep, hdrs, slot);
    if (kerr == RD_KAFKA_RESP_ERR_NO_ERROR) {
        ER_LOG_WARN("outbox", "dead letter %lld cut to fit: %s",
                    (long long)r->id, note);
        return 0;
    }
refused:
    if (hdrs != NULL)
        rd_kafka_headers_destroy(hdrs); /* left to us on failure */
    if (er_outbox_err_is_permanent(kerr)) {
        refuse(ob, slot, kerr, "produce refused");
        return 0;
    }
    slot->state = SLOT_KEEP;
    slot->kerr = kerr;
    return kerr;
}

/* Wait until every queued message has had its delivery report, so none
 * lands in the slots of a later batch (they live in the arena). Without a
 * stop this waits as long as librdkafka retries (message.timeout.ms); at
 * the stop deadline what is left is purged, and reports that still do not
 * come are ignored. */
static void drain(struct er_outbox *ob)
{
    int64_t purged_at = -1;

    while (rd_kafka_outq_len(ob->rk) > 0) {
        if (purged_at >= 0 && er_time_mono_ms() - purged_at >= PURGE_WAIT_MS) {
            ob->is_slots_gone = true;
            return;
        }
        rd_kafka_flush(ob->rk, DRAIN_POLL_MS);
        if (purged_at < 0 && stop_is_due(ob)) {
            rd_kafka_purge(ob->rk,
                           RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            purged_at = er_time_mono_ms();
        }
    }
}

/* Record the batch's outcome: delete what was delivered and quarantine
 * what was refused, in one transaction. Returns the rows fetched, or an
 * error (class RETRY) when some must be sent again. */
static int settle(struct er_outbox *ob, int *lock_session,
                  const struct er_outbox_row *rows, struct slot *slots,
                  size_t cnt, struct er_err *err)
{
    int64_t *ids = er_arena_alloc(&ob->arena, sizeof(*ids) * cnt);
    struct er_outbox_quarantine *q =
        er_arena_alloc(&ob->arena, sizeof(*q) * cnt);
    size_t id_cnt = 0;
    size_t q_cnt = 0;
    size_t kept_cnt = 0;
    int first_kerr = 0;
    int64_t current = -1;
    size_t i;
    int rc;

    if (ids == NULL || q == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    for (i = 0; i < cnt; i++) {
        struct slot *s = &slots[i];

        switch (s->state) {
        case SLOT_DONE:
            ids[id_cnt++] = s->id;
            break;
        case SLOT_QUARANTINE:
            if (s->reason == NULL)
                s->reason = er_arena_printf(
                    &ob->arena, "delivery failed: %s",
                    rd_kafka_err2str((rd_kafka_resp_err_t)s->kerr));
            q[q_cnt].id = s->id;
            q[q_cnt++].reason = s->reason != NULL ? s->reason : "refused";
            break;
        case SLOT_KEEP:
        case SLOT_SENT: /* no report came (purged at shutdown) */
            if (first_kerr == 0 && s->kerr != 0)
                first_kerr = s->kerr;
            kept_cnt++;
            break;
        }
    }
    rc = er_store_relay_settle(ob->store, ob->generation, ids, id_cnt, q, q_cnt,
                               &current, err);
    if (rc == ER_EFENCED) {
        /* Another relay claimed the outbox while this batch was out: the
         * rows are its now, and it publishes them again. */
        *lock_session = 0;
        ER_LOG_WARN("outbox",
                    "relay lost its claim before settling (generation %lld, "
                    "now %lld): %zu delivered rows left to the new relay",
                    (long long)ob->generation, (long long)current, id_cnt);
        return 0;
    }
    if (rc != 0)
        return rc;
    er_metrics_outbox_published(id_cnt);
    if (q_cnt > 0) {
        er_metrics_outbox_quarantined(q_cnt);
        for (i = 0; i < cnt; i++) {
            char id[24];

            if (slots[i].state != SLOT_QUARANTINE)
                continue;
            snprintf(id, sizeof(id), "%lld", (long long)slots[i].id);
            er_log_kv(ER_LOG_WARN, "outbox",
                      "outbox row moved to envrun.outbox_quarantine", "id", id,
                      "topic", rows[i].topic, "reason", slots[i].reason,
                      (const char *)NULL);
        }
    }
    if (kept_cnt > 0)
        return er_err_set(
            err, ER_EKAFKA, ER_ERRCLASS_RETRY,
            "%zu of %zu outbox messages not delivered: %s", kept_cnt, cnt,
            first_kerr != 0 ? rd_kafka_err2str((rd_kafka_resp_err_t)first_kerr)
            : ob->held_why[0] != '\0' ? ob->held_why
                                      : "no delivery report");
    return (int)cnt;
}

/* The check before a publish failed (why): forget the lock, so the loop
 * must take it again (which fails while another relay holds it), and say
 * that cnt fetched rows were dropped. current is the generation the check
 * read, -1 when it read none. */
static void lost_claim(struct er_outbox *ob, int *lock_session, int64_t current,
                       size_t cnt, const struct er_err *why)
{
    char now[24] = "unknown";
    int session = 0;

    *lock_session = 0;
    /* The check's session is usually gone (that is how a claim is lost):
     * read the generation on a new one, for the log. */
    if (current < 0 && er_store_relay_ensure(ob->store, &session, NULL) == 0 &&
        er_store_relay_generation(ob->store, &current, NULL) != 0)
        current = -1;
    if (current >= 0)
        snprintf(now, sizeof(now), "%lld", (long long)current);
    ER_LOG_WARN("outbox",
                "relay lost its claim (generation %lld, now %s): %zu fetched "
                "rows not published: %s",
                (long long)ob->generation, now, cnt, why->msg);
}

static int fetch(void *arg, const char *topic, int32_t partition,
                 int64_t offset, struct er_buf *value, struct er_err *err)
{
    struct er_outbox *ob = arg;

    return er_kafka_fetch_lazy(&ob->fetcher, ob->brokers, ob->props, topic,
                               partition, offset, FETCH_WAIT_MS, value, err);
}

/* Put the bridge token back into row r (its value is the batch's own
 * copy), see token_relay_int.h. Returns 0 when r may go out (filled, or
 * refused for good: slot says so), or an error (class RETRY) when the
 * token cannot be had now: r and the rows after it wait. */
static int fill_token(struct er_outbox *ob, struct er_outbox_row *r,
                      struct slot *slot, struct er_err *err)
{
    int rc;

    if (r->value_full_len != r->value_len)
        return 0; /* never sent whole: produce_row quarantines it */
    /* The row is committed, its token only in memory or in Kafka: a test
     * kills the worker here, so that another one's relay must restore it. */
    er_fault_point("relay.before_fill");
    rc = er_token_relay_fill(r->token_from, r->value, r->value_len, fetch, ob,
                             err);
    if (rc == 0) {
        slot->is_filled = true;
        return 0;
    }
    if (err->cls == ER_ERRCLASS_RETRY)
        return rc;
    /* The masked result must not go out as if it were the answer. */
    slot->state = SLOT_QUARANTINE;
    slot->reason = er_arena_strdup(&ob->arena, err->msg);
    return 0;
}

/* envrun_outbox_backlog and the oldest row's age from a fetch: a batch
 * short of both of its caps is all that waits; a full one has the table
 * counted (a scan, only while rows pile up). */
static void backlog_seen(struct er_outbox *ob, const struct er_outbox_row *rows,
                         size_t cnt)
{
    struct er_err ignored;
    int64_t backlog = (int64_t)cnt;
    size_t bytes = 0;
    size_t i;

    for (i = 0; i < cnt; i++)
        bytes += rows[i].key_len + rows[i].value_len;
    er_err_clear(&ignored);
    if ((cnt >= BATCH_ROWS || bytes + ob->value_max > BATCH_BYTES) &&
        er_store_outbox_count(ob->store, &backlog, &ignored) != 0)
        backlog = (int64_t)cnt;
    er_metrics_outbox_backlog(backlog);
    er_metrics_outbox_oldest(rows[0].created_ms);
}

/* Publish one batch under the relay's claim (lock_session: the session
 * holding the lock, set to 0 when the claim is lost). Returns the rows
 * fetched (>= 0; 0 also when the batch was dropped) or a negative code. */
static int relay_batch(struct er_outbox *ob, int *lock_session,
                       struct er_err *err)
{
    struct er_outbox_row *rows = NULL;
    struct slot *slots;
    int64_t current = -1;
    size_t cnt = 0;
    size_t i;
    int rc;

    er_arena_reset(&ob->arena);
    ob->is_slots_gone = false;
    ob->held_why[0] = '\0';
    rc = er_store_outbox_fetch(ob->store, BATCH_ROWS, BATCH_BYTES,
                               ob->value_max, &ob->arena, &rows, &cnt, err);
    if (rc != 0 || cnt == 0)
        return rc;
    backlog_seen(ob, rows, cnt);
    slots = er_arena_alloc(&ob->arena, sizeof(*slots) * cnt);
    if (slots == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    /* Fetched, nothing handed to the producer yet: a test pauses the
     * process here to play a relay stalled while holding a batch. */
    er_fault_point("relay.before_publish");
    /* The last moment the batch can still be dropped: once a message is
     * handed to librdkafka it goes out, whatever becomes of the claim. A
     * relay paused for longer than its session lived finds its session
     * gone here, or the generation moved on, and publishes nothing. */
    rc = er_store_relay_check(ob->store, *lock_session, ob->generation,
                              &current, err);
    if (rc != 0) {
        lost_claim(ob, lock_session, current, cnt, err);
        return 0;
    }
    for (i = 0; i < cnt; i++) {
        struct er_err ferr;

        slots[i].id = rows[i].id;
        slots[i].created_ms = rows[i].created_ms;
        /* Rows go out in id order. After a refusal for now (a full queue,
         * a fatal producer, a token that cannot be read back yet) the
         * later rows wait too, so none overtakes an earlier one of its
         * key; a row refused for good is never sent, so skipping it
         * reorders nothing. */
        er_err_clear(&ferr);
        if (rows[i].token_from != NULL &&
            fill_token(ob, &rows[i], &slots[i], &ferr) != 0) {
            snprintf(ob->held_why, sizeof(ob->held_why), "%s", ferr.msg);
            break;
        }
        if (slots[i].state == SLOT_QUARANTINE)
            continue;
        if (produce_row(ob, &rows[i], &slots[i]) != 0)
            break;
    }
    drain(ob);
    for (i = 0; i < cnt; i++) {
        if (slots[i].is_filled)
            er_wipe(rows[i].value, rows[i].value_len);
    }
    /* Published, not yet deleted: a crash here republishes the batch. */
    er_fault_point("relay.after_publish");
    return settle(ob, lock_session, rows, slots, cnt, err);
}

/* While the producer is marked down and has nothing to deliver, ask a
 * broker for metadata now and then: an answer marks it up again. */
static void probe(struct er_outbox *ob, int64_t *last_ms)
{
    const struct rd_kafka_metadata *md = NULL;
    int64_t now = er_time_mono_ms();

    if (!ob->is_broker_down || now - *last_ms < PROBE_EVERY_MS)
        return;
    *last_ms = now;
    if (rd_kafka_metadata(ob->rk, 0, NULL, &md, PROBE_TIMEOUT_MS) ==
        RD_KAFKA_RESP_ERR_NO_ERROR)
        producer_up(ob);
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
}

/* Wait until kicked, stopping, or ms passed. */
static void wait_kick(struct er_outbox *ob, int64_t ms)
{
    struct timespec ts;

    er_time_deadline_in(ms, &ts);
    pthread_mutex_lock(&ob->mu);
    while (!ob->is_kicked && !ob->is_stopping) {
        if (pthread_cond_timedwait(&ob->cv, &ob->mu, &ts) != 0)
            break;
    }
    ob->is_kicked = false;
    pthread_mutex_unlock(&ob->mu);
}

/* Try to become the relay: take the lock and, with it, a new generation
 * of the relay's fence. *lock_session stays 0 unless both worked. */
static int claim(struct er_outbox *ob, int *lock_session, struct er_err *err)
{
    int rc = er_store_relay_lock(ob->store, lock_session, err);

    if (rc == 0 && *lock_session != 0)
        rc = er_store_relay_claim(ob->store, ob->owner, &ob->generation, err);
    if (rc != 0) {
        /* Tried again next time; a session that still holds the lock takes
         * it again at once (session advisory locks stack). */
        *lock_session = 0;
        return rc;
    }
    if (*lock_session != 0)
        ER_LOG_INFO("outbox", "relay claimed the outbox (generation %lld)",
                    (long long)ob->generation);
    return 0;
}

static void *relay_main(void *arg)
{
    struct er_outbox *ob = arg;
    int lock_session = 0; /* backend pid holding the relay lock; 0: none */
    int64_t last_warn = 0;
    int64_t last_probe = 0;

    for (;;) {
        struct er_err err;
        bool is_stopping;
        int64_t deadline;
        int64_t backlog = 0;
        int n;

        pthread_mutex_lock(&ob->mu);
        is_stopping = ob->is_stopping;
        deadline = ob->stop_deadline_ms;
        pthread_mutex_unlock(&ob->mu);
        if (is_stopping && er_time_mono_ms() >= deadline)
            break;

        rd_kafka_poll(ob->rk, 0); /* serve error_cb while idle */
        er_err_clear(&err);
        /* A new session does not hold the old one's lock: take it again
         * before publishing, or two relays could publish the same rows. */
        if (er_store_relay_ensure(ob->store, &lock_session, &err) != 0)
            goto backoff;
        if (lock_session == 0 && claim(ob, &lock_session, &err) != 0)
            goto backoff;
        if (lock_session == 0) {
            /* Another worker's relay publishes; be ready to take over. */
            er_metrics_set_relay_db_ready(true); /* the lock query worked */
            /* The backlog is the relay's to report. */
            er_metrics_outbox_backlog(0);
            er_metrics_outbox_oldest(0);
            if (is_stopping)
                break;
            probe(ob, &last_probe);
            wait_kick(ob, 1000);
            continue;
        }
        n = relay_batch(ob, &lock_session, &err);
        if (n < 0)
            goto backoff;
        er_metrics_set_relay_db_ready(true);
        if (n > 0)
            continue; /* more may be waiting */
        /* The fetch found no row, so the backlog was 0 as it read, unless
         * the batch was dropped with the claim (no lock session now). A
         * count scans the table (2 ms after the bench's full-speed phase
         * left dead rows), so only a stopping relay counts, for rows
         * committed since its fetch. */
        if (is_stopping) {
            if (er_store_outbox_count(ob->store, &backlog, &err) == 0)
                er_metrics_outbox_backlog(backlog);
        } else if (lock_session != 0) {
            er_metrics_outbox_backlog(0);
            er_metrics_outbox_oldest(0);
        }
        if (is_stopping && backlog == 0)
            break;
        probe(ob, &last_probe);
        /* Nothing to publish: a big batch's memory goes back, unless a
         * delivery report could still come for one of its slots. */
        if (rd_kafka_outq_len(ob->rk) == 0)
            er_arena_trim(&ob->arena, 64 * 1024);
        wait_kick(ob, IDLE_WAIT_MS);
        continue;
    backoff:
        /* Only the store fails with ER_EPG; Kafka failures say nothing
         * about the database. */
        er_metrics_set_relay_db_ready(err.code != ER_EPG);
        if (er_time_mono_ms() - last_warn >= 10000) {
            ER_LOG_WARN("outbox", "relay retrying: %s", err.msg);
            last_warn = er_time_mono_ms();
        }
        wait_kick(ob, 500);
    }
    return NULL;
}

/* message.max.bytes as configured (ENVRUN_KAFKA_PROPS may set it). */
static size_t max_msg_bytes_of(const rd_kafka_conf_t *conf)
{
    char val[32];
    size_t val_len = sizeof(val);
    char *end = NULL;
    long long v;

    if (rd_kafka_conf_get(conf, "message.max.bytes", val, &val_len) !=
        RD_KAFKA_CONF_OK)
        return MAX_MSG_DEFAULT;
    v = strtoll(val, &end, 10);
    if (end == val || *end != '\0' || v <= 0)
        return MAX_MSG_DEFAULT;
    return (size_t)v;
}

struct er_outbox *er_outbox_new(const struct er_config *cfg,
                                const char *brokers, struct er_err *err)
{
    struct er_outbox *ob = er_calloc(1, sizeof(*ob));
    rd_kafka_conf_t *conf = NULL;
    /* Idempotence is set after ENVRUN_KAFKA_PROPS: per-key order and no
     * duplicates from retries depend on it. */
    const char *const defaults[] = { "linger.ms", "2", NULL };
    char errstr[512];

    if (ob == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&ob->mu, NULL);
    pthread_cond_init(&ob->cv, NULL);
    er_arena_init(&ob->arena, ARENA_MAX);
    er_config_topic(cfg, "commands.dlq", ob->topic_dlq, sizeof(ob->topic_dlq));
    {
        char host[64] = "";

        gethostname(host, sizeof(host) - 1);
        snprintf(ob->owner, sizeof(ob->owner), "%s:%ld", host, (long)getpid());
    }
    ob->generation = -1;
    ob->brokers = er_strdup(brokers);
    ob->props = er_strdup(cfg->kafka_props);
    if (ob->brokers == NULL || ob->props == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        goto fail;
    }
    ob->store = er_store_new(cfg->database_url, err);
    if (ob->store == NULL)
        goto fail;

    conf = er_kafka_conf_new(brokers, defaults, cfg->kafka_props, errstr,
                             sizeof(errstr));
    if (conf == NULL ||
        rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL, "producer config: %s",
                   errstr);
        goto fail;
    }
    ob->max_msg_bytes = max_msg_bytes_of(conf);
    ob->value_max = ob->max_msg_bytes < VALUE_FETCH_MAX ? ob->max_msg_bytes
                                                        : VALUE_FETCH_MAX;
    rd_kafka_conf_set_opaque(conf, ob);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    ob->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (ob->rk == NULL) {
        er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL, "producer: %s", errstr);
        goto fail; /* rd_kafka_new frees conf only on success */
    }
    conf = NULL;
    if (pthread_create(&ob->tid, NULL, relay_main, ob) != 0) {
        er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "cannot start relay");
        goto fail;
    }
    ob->is_started = true;
    return ob;
fail:
    if (conf != NULL)
        rd_kafka_conf_destroy(conf);
    er_outbox_destroy(ob, 0);
    return NULL;
}

void er_outbox_kick(void *outbox)
{
    struct er_outbox *ob = outbox;

    pthread_mutex_lock(&ob->mu);
    ob->is_kicked = true;
    pthread_cond_signal(&ob->cv);
    pthread_mutex_unlock(&ob->mu);
}

void er_outbox_destroy(struct er_outbox *ob, int drain_ms)
{
    if (ob == NULL)
        return;
    if (ob->is_started) {
        pthread_mutex_lock(&ob->mu);
        ob->is_stopping = true;
        ob->stop_deadline_ms = er_time_mono_ms() + drain_ms;
        pthread_cond_signal(&ob->cv);
        pthread_mutex_unlock(&ob->mu);
        pthread_join(ob->tid, NULL);
    }
    /* The relay is gone and with it every batch's slots. */
    ob->is_slots_gone = true;
    if (ob->rk != NULL) {
        rd_kafka_flush(ob->rk, 5000);
        rd_kafka_destroy(ob->rk);
    }
    er_kafka_fetcher_destroy(ob->fetcher);
    er_free(ob->brokers);
    er_free(ob->props);
    er_store_destroy(ob->store);
    er_arena_fini(&ob->arena);
    pthread_cond_destroy(&ob->cv);
    pthread_mutex_destroy(&ob->mu);
    er_free(ob);
}
