/* consumer: the one thread that talks to the consumer group. It polls the
 * commands topic, hands messages to the dispatcher, and commits each
 * partition's offset only up to the first command whose outcome has not
 * committed yet. On a revoke it parks the partitions' running steps (they
 * go on), commits and lets the partitions go. On an assignment it cancels
 * the parked steps of partitions that moved on, claims each partition's
 * fencing generation in Postgres, hands the parked steps of a partition
 * that came back over to the new generation, and marks what a previous
 * owner left in flight as interrupted. It pauses fetching while too much
 * is in flight. Owns the rd_kafka_t consumer handle and a store connection
 * for the fence. */
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "worker/bridge_host_int.h"
#include "worker/consumer_int.h"
#include "worker/dispatch_int.h"
#include "worker/kafka_int.h"
#include "worker/store_int.h"

#define MAX_PARTITIONS   1024
#define DONE_BATCH       256
#define MIN_INFLIGHT_CAP 4096
#define MAX_HANDOVER     1024 /* running steps of one partition handed over */
/* Idle this long (no command, none in flight): give freed heap back. */
#define TRIM_IDLE_MS     1000
/* How long an assignment waits in all for the previous owners' driver
 * work to stop, and how long a claim waits for its own handed-over steps'
 * outcome transactions before it cancels them. */
#define EFFECT_WAIT_MS   10000
#define RECORDS_WAIT_MS  2000
/* How often envrun_consumer_lag is brought up to date. */
#define LAG_EVERY_MS     1000

/* Offsets of one partition in arrival order; done ones are popped from the
 * front, and the commit point is the first not done. */
struct tracker {
    bool is_assigned;
    int64_t *offsets;
    bool *is_done;
    size_t head;
    size_t len;
    size_t cap;
    int64_t commit_at; /* next offset to commit, -1: nothing new */
    int64_t committed;
    int64_t generation; /* fence of this assignment; 0: not claimed */
    int64_t eof_at;     /* offset where it last reached its end; -1: not yet */
};

/* Offsets of one partition whose steps committed their outcome while the
 * partition was revoked (parked steps that finished before the next
 * assignment): their messages come back, and are not run again. */
struct offset_set {
    int64_t *v;
    size_t len;
    size_t cap;
};

struct er_consumer {
    rd_kafka_t *rk;
    struct er_dispatch *dispatch;
    struct er_store *store; /* fence claims */
    char owner[128];        /* host:pid, recorded with each claim */
    int64_t drain_ms;
    char topic[256];
    struct tracker parts[MAX_PARTITIONS];
    /* The generation of each partition's revoked assignment (0: none),
     * and what its parked steps committed since. */
    int64_t revoked_generation[MAX_PARTITIONS];
    struct offset_set finished[MAX_PARTITIONS];
    size_t max_inflight;
    bool is_paused;
    /* Called (with the time) once an assignment is claimed: the reaper
     * re-attaches the bridges of its runs. May be NULL. */
    void (*on_assign)(void *arg, int64_t at_ms);
    void *on_assign_arg;
};

static void offset_set_clear(struct offset_set *s)
{
    er_free(s->v);
    memset(s, 0, sizeof(*s));
}

/* Out of memory: the offset is simply not remembered (its message is
 * answered again from the stored result). */
static void offset_set_add(struct offset_set *s, int64_t offset)
{
    if (s->len == s->cap) {
        size_t cap = s->cap == 0 ? 16 : s->cap * 2;
        int64_t *v = er_realloc(s->v, cap * sizeof(*v));

        if (v == NULL)
            return;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->len++] = offset;
}

/* Remove offset; whether it was there. */
static bool offset_set_take(struct offset_set *s, int64_t offset)
{
    size_t i;

    for (i = 0; i < s->len; i++) {
        if (s->v[i] == offset) {
            s->v[i] = s->v[--s->len];
            return true;
        }
    }
    return false;
}

static void tracker_reset(struct tracker *t)
{
    er_free(t->offsets);
    er_free(t->is_done);
    memset(t, 0, sizeof(*t));
    t->commit_at = -1;
    t->committed = -1;
    t->eof_at = -1;
}

static int tracker_push(struct tracker *t, int64_t offset)
{
    if (t->head > 0 && t->head == t->len) {
        t->head = 0;
        t->len = 0;
    }
    if (t->len == t->cap) {
        size_t cap;
        int64_t *o;
        bool *d;

        if (t->head > 0) { /* compact before growing */
            memmove(t->offsets, t->offsets + t->head,
                    (t->len - t->head) * sizeof(*t->offsets));
            memmove(t->is_done, t->is_done + t->head,
                    (t->len - t->head) * sizeof(*t->is_done));
            t->len -= t->head;
            t->head = 0;
        }
        if (t->len == t->cap) {
            cap = t->cap == 0 ? 256 : t->cap * 2;
            o = er_realloc(t->offsets, cap * sizeof(*o));
            if (o == NULL)
                return ER_ENOMEM;
            t->offsets = o;
            d = er_realloc(t->is_done, cap * sizeof(*d));
            if (d == NULL)
                return ER_ENOMEM;
            t->is_done = d;
            t->cap = cap;
        }
    }
    t->offsets[t->len] = offset;
    t->is_done[t->len] = false;
    t->len++;
    return 0;
}

static void tracker_done(struct tracker *t, int64_t offset)
{
    size_t i;

    for (i = t->head; i < t->len; i++) {
        if (t->offsets[i] == offset) {
            t->is_done[i] = true;
            break;
        }
    }
    while (t->head < t->len && t->is_done[t->head]) {
        t->commit_at = t->offsets[t->head] + 1;
        t->head++;
    }
}

/* Commit every partition whose commit point moved. */
static void commit_offsets(struct er_consumer *c, bool is_sync)
{
    rd_kafka_topic_partition_list_t *list =
        rd_kafka_topic_partition_list_new(8);
    rd_kafka_resp_err_t kerr;
    int32_t p;

    for (p = 0; p < MAX_PARTITIONS; p++) {
        struct tracker *t = &c->parts[p];

        if (!t->is_assigned || t->commit_at < 0 || t->commit_at == t->committed)
            continue;
        rd_kafka_topic_partition_list_add(list, c->topic, p)->offset =
            t->commit_at;
    }
    if (list->cnt > 0) {
        er_fault_point("offset.before_commit");
        kerr = rd_kafka_commit(c->rk, list, is_sync ? 0 : 1);
        er_fault_point("offset.after_commit");
        if (kerr == RD_KAFKA_RESP_ERR_NO_ERROR || !is_sync) {
            int i;

            /* An async commit that fails is retried with the next one: the
             * commit point only moves forward. */
            for (i = 0; i < list->cnt; i++)
                c->parts[list->elems[i].partition].committed =
                    list->elems[i].offset;
        } else {
            ER_LOG_WARN("consumer", "offset commit failed: %s",
                        rd_kafka_err2str(kerr));
        }
    }
    rd_kafka_topic_partition_list_destroy(list);
}

static void collect_done(struct er_consumer *c)
{
    struct er_done done[DONE_BATCH];
    size_t n;
    size_t i;

    while ((n = er_dispatch_take_done(c->dispatch, done, DONE_BATCH)) > 0) {
        for (i = 0; i < n; i++) {
            int32_t p = done[i].partition;

            if (p < 0 || p >= MAX_PARTITIONS)
                continue;
            /* A job of an earlier assignment of the partition says
             * nothing about this one's offsets; one that finished while
             * the partition was revoked committed its outcome, so its
             * message, when it comes back, is not run again. */
            if (c->parts[p].is_assigned &&
                done[i].generation == c->parts[p].generation)
                tracker_done(&c->parts[p], done[i].offset);
            else if (!c->parts[p].is_assigned && c->revoked_generation[p] > 0 &&
                     done[i].generation == c->revoked_generation[p])
                offset_set_add(&c->finished[p], done[i].offset);
        }
    }
}

/* Claim partition p's fence, hand the steps of p still running here over
 * to the new generation, and interrupt what a previous owner left in
 * flight, retrying while Postgres is unreachable. A partition that could
 * not be claimed (the worker is stopping) keeps generation 0: its steps
 * fail the fence check and record nothing. effects_until (monotonic ms)
 * bounds the wait for another previous owner's driver work. */
static void claim(struct er_consumer *c, int32_t p, int64_t effects_until)
{
    int64_t backoff_ms = 100;
    int64_t last_warn = 0;
    int64_t *offsets = er_calloc(MAX_HANDOVER, sizeof(*offsets));

    while (!er_worker_stop) {
        struct er_err err;
        struct er_claim_waits waits = { 0, 0 };
        size_t parked = 0;
        int64_t gen = 0;
        int64_t adopted = 0;
        int64_t cnt = 0;
        int rc;

        er_err_clear(&err);
        if (offsets != NULL)
            parked = er_dispatch_parked_offsets(c->dispatch, p, offsets,
                                                MAX_HANDOVER);
        if (parked > MAX_HANDOVER || (parked > 0 && offsets == NULL)) {
            er_dispatch_drop_partitions(c->dispatch, &p, 1);
            continue; /* too many to hand over: cancelled */
        }
        /* Steps of ours still running hold the effect lock: do not wait
         * for them, they are handed over. Otherwise a previous owner's
         * may: wait for them to stop, within the assignment's budget. */
        if (parked == 0) {
            int64_t left = effects_until - er_time_mono_ms();

            waits.effects_ms = left > 1 ? (int)left : 1;
        } else {
            waits.records_ms = RECORDS_WAIT_MS;
        }
        rc = er_store_ensure(c->store, &err);
        if (rc == 0)
            rc = er_store_journal_fence_claim(c->store, c->topic, p, c->owner,
                                              &waits, &gen, &err);
        if (rc == ER_ETIMEDOUT && parked > 0) {
            /* One of our steps holds the fence in a long transaction (a
             * local step's provision command): it cannot be handed over
             * without waiting for it, so it is cancelled. */
            ER_LOG_WARN("consumer",
                        "partition %d: a running step holds its fence; "
                        "cancelling the partition's steps instead of "
                        "handing them over",
                        (int)p);
            er_dispatch_drop_partitions(c->dispatch, &p, 1);
            continue;
        }
        if (rc == 0)
            rc = er_store_journal_adopt(c->store, c->topic, p, gen, offsets,
                                        parked, &adopted, &err);
        if (rc == 0)
            rc = er_store_journal_interrupt(c->store, c->topic, p, gen, &cnt,
                                            &err);
        if (rc == 0) {
            size_t handed;

            c->parts[p].generation = gen;
            handed = er_dispatch_adopt(c->dispatch, p, gen);
            if (handed > 0)
                ER_LOG_INFO("consumer",
                            "partition %d came back: %zu running steps "
                            "handed over to generation %lld (%lld journal "
                            "entries kept)",
                            (int)p, handed, (long long)gen, (long long)adopted);
            if (cnt > 0)
                ER_LOG_INFO("consumer",
                            "partition %d: %lld operations a previous owner "
                            "left in flight are interrupted; their commands "
                            "resume them",
                            (int)p, (long long)cnt);
            er_free(offsets);
            return;
        }
        if (er_time_mono_ms() - last_warn >= 10000) {
            ER_LOG_WARN("consumer", "claiming partition %d failed: %s", (int)p,
                        err.msg);
            last_warn = er_time_mono_ms();
        }
        {
            struct timespec ts = { 0, (long)backoff_ms * 1000000 };

            nanosleep(&ts, NULL);
        }
        backoff_ms = backoff_ms * 2 > 2000 ? 2000 : backoff_ms * 2;
    }
    er_free(offsets);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t kerr,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct er_consumer *c = opaque;
    int32_t ids[MAX_PARTITIONS] = { 0 };
    size_t cnt = 0;
    int i;

    for (i = 0; i < parts->cnt && cnt < MAX_PARTITIONS; i++) {
        if (parts->elems[i].partition >= 0 &&
            parts->elems[i].partition < MAX_PARTITIONS)
            ids[cnt++] = parts->elems[i].partition;
    }
    if (kerr == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        int64_t effects_until = er_time_mono_ms() + EFFECT_WAIT_MS;
        size_t moved;
        int32_t p;

        /* Steps that finished while parked; what they remember of a
         * partition that went elsewhere is the new owner's business. */
        collect_done(c);
        for (p = 0; p < MAX_PARTITIONS; p++) {
            bool is_back = false;

            if (c->revoked_generation[p] == 0 && c->finished[p].len == 0)
                continue;
            for (i = 0; i < (int)cnt && !is_back; i++)
                is_back = ids[i] == p;
            c->revoked_generation[p] = 0;
            if (!is_back)
                offset_set_clear(&c->finished[p]);
        }
        /* Steps of partitions that went elsewhere stop first. */
        moved = er_dispatch_cancel_parked(c->dispatch, ids, cnt);
        if (moved > 0)
            ER_LOG_INFO("consumer",
                        "%zu running steps of partitions that moved on "
                        "are cancelled",
                        moved);
        for (i = 0; i < (int)cnt; i++) {
            tracker_reset(&c->parts[ids[i]]);
            c->parts[ids[i]].is_assigned = true;
            claim(c, ids[i], effects_until);
        }
        /* What could not be handed over (the worker is stopping). */
        er_dispatch_cancel_parked(c->dispatch, NULL, 0);
        /* Bridges of runs whose partition went elsewhere are handed
         * over; the rest forward again. */
        er_bridge_host_assigned(ids, cnt);
        if (c->on_assign != NULL)
            c->on_assign(c->on_assign_arg, er_time_now_ms());
        rd_kafka_assign(rk, parts);
        c->is_paused = false;
        er_metrics_set_kafka_ready(true);
        ER_LOG_INFO("consumer", "assigned %zu partitions of %s", cnt, c->topic);
        return;
    }
    /* Revoked: the eager protocol takes every partition away at each
     * rebalance and mostly gives the same ones back, so the running steps
     * are parked, not cancelled; the next assignment hands them over or
     * cancels them. A lost assignment (the session expired: the partitions
     * may be someone else's already) or an error cancels them now. */
    if (kerr == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS &&
        !rd_kafka_assignment_lost(rk) && !er_worker_stop) {
        er_dispatch_park_partitions(c->dispatch, ids, cnt);
        for (i = 0; i < (int)cnt; i++)
            er_bridge_host_pause(ids[i], true);
    } else {
        er_dispatch_drop_partitions(c->dispatch, ids, cnt);
        for (i = 0; i < (int)cnt; i++)
            er_bridge_host_drop_partition(ids[i]);
    }
    collect_done(c);
    commit_offsets(c, true);
    for (i = 0; i < (int)cnt; i++) {
        c->revoked_generation[ids[i]] = c->parts[ids[i]].generation;
        tracker_reset(&c->parts[ids[i]]);
        er_metrics_consumer_lag(ids[i], -1);
    }
    rd_kafka_assign(rk, NULL);
    ER_LOG_INFO("consumer", "revoked %zu partitions of %s", cnt, c->topic);
}

static void set_paused(struct er_consumer *c, bool is_paused)
{
    rd_kafka_topic_partition_list_t *list = NULL;

    if (c->is_paused == is_paused)
        return;
    if (rd_kafka_assignment(c->rk, &list) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    if (is_paused)
        rd_kafka_pause_partitions(c->rk, list);
    else
        rd_kafka_resume_partitions(c->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    c->is_paused = is_paused;
}

/* envrun_consumer_lag of each assigned partition: the high watermark
 * librdkafka last saw minus the position consumed (or the end the
 * partition reached, when nothing was consumed since its assignment), plus
 * the consumed commands whose step has not finished. Local calls only
 * (cached watermarks, no broker round trip); a partition that has no
 * watermark or position yet keeps its last value. */
static void report_lag(struct er_consumer *c)
{
    rd_kafka_topic_partition_list_t *list =
        rd_kafka_topic_partition_list_new(8);
    int32_t p;
    int i;

    for (p = 0; p < MAX_PARTITIONS; p++) {
        if (c->parts[p].is_assigned)
            rd_kafka_topic_partition_list_add(list, c->topic, p);
    }
    if (list->cnt > 0 &&
        rd_kafka_position(c->rk, list) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (i = 0; i < list->cnt; i++) {
            const struct tracker *t = &c->parts[list->elems[i].partition];
            int64_t pos = list->elems[i].offset;
            int64_t lo = -1;
            int64_t hi = -1;
            int64_t pending = 0;
            size_t j;

            /* Nothing consumed since the assignment: the end it reached. */
            if (t->eof_at > pos)
                pos = t->eof_at;
            if (rd_kafka_get_watermark_offsets(
                    c->rk, c->topic, list->elems[i].partition, &lo, &hi) !=
                    RD_KAFKA_RESP_ERR_NO_ERROR ||
                hi < 0 || pos < 0)
                continue;
            for (j = t->head; j < t->len; j++)
                pending += t->is_done[j] ? 0 : 1;
            er_metrics_consumer_lag(list->elems[i].partition,
                                    (hi > pos ? hi - pos : 0) + pending);
        }
    }
    rd_kafka_topic_partition_list_destroy(list);
}

static void handle(struct er_consumer *c, const rd_kafka_message_t *msg)
{
    struct tracker *t;
    char run_key[320];
    int rc;

    if (msg->partition < 0 || msg->partition >= MAX_PARTITIONS) {
        ER_LOG_ERR("consumer", "partition %d is beyond %d: skipped",
                   (int)msg->partition, MAX_PARTITIONS);
        return;
    }
    t = &c->parts[msg->partition];
    /* The run is the key (the heartbeat run id, or the command id); a
     * message without a key is a run of its own. */
    if (msg->key_len > 0 && msg->key_len < 256)
        snprintf(run_key, sizeof(run_key), "k:%.*s", (int)msg->key_len,
                 (const char *)msg->key);
    else
        snprintf(run_key, sizeof(run_key), "m:%d:%" PRId64, (int)msg->partition,
                 msg->offset);
    rc = tracker_push(t, msg->offset);
    if (rc == 0 && offset_set_take(&c->finished[msg->partition], msg->offset)) {
        ER_LOG_INFO("consumer",
                    "partition %d offset %" PRId64 ": its step committed while "
                    "the partition was being reassigned; not run again",
                    (int)msg->partition, msg->offset);
        tracker_done(t, msg->offset);
        return;
    }
    /* A step handed over from the partition's previous assignment runs
     * this very message: its done record commits the offset. */
    if (rc == 0 && er_dispatch_attach(c->dispatch, msg->partition, msg->offset,
                                      t->generation))
        return;
    if (rc == 0)
        rc = er_dispatch_submit(c->dispatch, run_key, msg->partition,
                                msg->offset, t->generation, msg->key,
                                msg->key_len, msg->payload, msg->len);
    if (rc != 0) {
        /* Out of memory: stop reading; the offset stays uncommitted and the
         * message comes back after a restart. */
        ER_LOG_ERR("consumer", "cannot queue offset %" PRId64 ": %s",
                   msg->offset, er_errname(rc));
        er_worker_stop = 1;
    }
}

struct er_consumer *er_consumer_new(const struct er_config *cfg,
                                    const char *brokers,
                                    struct er_dispatch *dispatch,
                                    struct er_err *err)
{
    struct er_consumer *c = er_calloc(1, sizeof(*c));
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_topic_partition_list_t *sub = NULL;
    char errstr[512];
    rd_kafka_resp_err_t kerr;
    int32_t p;
    /* Eager assignment: librdkafka 2.0.2's cooperative-sticky assignor has
     * known bugs (DESIGN.md). Offsets are committed by hand, after the
     * step's transaction. A broker may hold a fetch for fetch.wait.max.ms
     * (the mock cluster does), which adds to every command's latency: 100
     * ms, not the 500 ms default. ENVRUN_KAFKA_PROPS overrides these, but
     * not group.id or enable.auto.commit=false, set after it. */
    const char *const defaults[] = {
        "auto.offset.reset",
        "earliest",
        "partition.assignment.strategy",
        "range,roundrobin",
        "fetch.wait.max.ms",
        "100",
        /* The end of a partition is reported: envrun_consumer_lag of a
         * partition with nothing to consume since its assignment. */
        "enable.partition.eof",
        "true",
        NULL,
    };

    if (c == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }
    for (p = 0; p < MAX_PARTITIONS; p++)
        tracker_reset(&c->parts[p]);
    c->dispatch = dispatch;
    c->drain_ms = (int64_t)cfg->drain_s * 1000;
    {
        char host[64] = "";

        gethostname(host, sizeof(host) - 1);
        snprintf(c->owner, sizeof(c->owner), "%s:%ld", host, (long)getpid());
    }
    c->store = er_store_new(cfg->database_url, err);
    if (c->store == NULL)
        goto fail;
    /* Pausing drops what librdkafka prefetched and resuming costs a fetch
     * round trip, so the bound is generous: queued jobs are small (a
     * command is at most 1 MiB, typically about 1 KiB). */
    c->max_inflight = (size_t)cfg->concurrency * 64;
    if (c->max_inflight < MIN_INFLIGHT_CAP)
        c->max_inflight = MIN_INFLIGHT_CAP;
    er_config_topic(cfg, "commands", c->topic, sizeof(c->topic));
    er_metrics_consumer_topic(c->topic);
    conf = er_kafka_conf_new(brokers, defaults, cfg->kafka_props, errstr,
                             sizeof(errstr));
    if (conf == NULL) {
        er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL, "consumer config: %s",
                   errstr);
        goto fail;
    }
    if (rd_kafka_conf_set(conf, "group.id", cfg->kafka_group, errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL, "consumer config: %s",
                   errstr);
        goto fail;
    }
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (c->rk == NULL) {
        er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL, "consumer: %s", errstr);
        goto fail;
    }
    conf = NULL; /* rd_kafka_new took it */
    rd_kafka_poll_set_consumer(c->rk);
    sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, c->topic, RD_KAFKA_PARTITION_UA);
    kerr = rd_kafka_subscribe(c->rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL, "subscribe to %s: %s",
                   c->topic, rd_kafka_err2str(kerr));
        goto fail;
    }
    return c;
fail:
    if (conf != NULL)
        rd_kafka_conf_destroy(conf);
    er_consumer_destroy(c);
    return NULL;
}

int er_consumer_run(struct er_consumer *c)
{
    char msg[ER_ERR_MSG_MAX];
    size_t inflight;
    int64_t busy_at = er_time_mono_ms();
    int64_t lag_at = 0;
    bool is_trimmed = false;
    int rc = 0;

    while (!er_worker_stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, 100);

        if (m != NULL) {
            busy_at = er_time_mono_ms();
            is_trimmed = false;
            if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
                handle(c, m);
            else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                ER_LOG_WARN("consumer", "consume error: %s",
                            rd_kafka_message_errstr(m));
            else if (m->partition >= 0 && m->partition < MAX_PARTITIONS)
                c->parts[m->partition].eof_at = m->offset; /* for the lag */
            rd_kafka_message_destroy(m);
        }
        collect_done(c);
        commit_offsets(c, false);
        if (er_time_mono_ms() - lag_at >= LAG_EVERY_MS) {
            report_lag(c);
            lag_at = er_time_mono_ms();
        }
        inflight = er_dispatch_inflight(c->dispatch);
        if (inflight > 0) {
            busy_at = er_time_mono_ms();
            is_trimmed = false;
        } else if (!is_trimmed && er_time_mono_ms() - busy_at >= TRIM_IDLE_MS) {
            /* glibc keeps what a burst's threads freed in their arenas;
             * an idle worker hands it back (idle RSS, issue [7]). */
            malloc_trim(0);
            is_trimmed = true;
        }
        if (inflight >= c->max_inflight)
            set_paused(c, true);
        else if (inflight <= c->max_inflight / 2)
            set_paused(c, false);
        if (er_dispatch_failed(c->dispatch, msg, sizeof(msg))) {
            rc = 1;
            break;
        }
    }
    /* SIGTERM (or a fatal step): finish the steps in flight, commit what
     * committed, leave the group. Queued steps are redelivered. */
    er_metrics_set_draining(true);
    er_dispatch_drain(c->dispatch, c->drain_ms);
    collect_done(c);
    commit_offsets(c, true);
    rd_kafka_consumer_close(c->rk);
    return rc;
}

void er_consumer_destroy(struct er_consumer *c)
{
    int32_t p;

    if (c == NULL)
        return;
    if (c->rk != NULL)
        rd_kafka_destroy(c->rk);
    er_store_destroy(c->store);
    for (p = 0; p < MAX_PARTITIONS; p++) {
        tracker_reset(&c->parts[p]);
        offset_set_clear(&c->finished[p]);
    }
    er_free(c);
}

void er_consumer_set_on_assign(struct er_consumer *c,
                               void (*fn)(void *arg, int64_t at_ms), void *arg)
{
    c->on_assign = fn;
    c->on_assign_arg = arg;
}

const char *er_consumer_owner(const struct er_consumer *c)
{
    return c->owner;
}
