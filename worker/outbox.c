/* outbox: the relay thread (see outbox_int.h). A row is deleted only after
 * the broker acknowledged it, so a crash republishes at worst (consumers
 * drop duplicates by event id); nothing committed is ever lost. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "worker/kafka_int.h"
#include "worker/outbox_int.h"
#include "worker/store_int.h"

#define BATCH_ROWS   500
#define IDLE_WAIT_MS 200
#define FLUSH_MS     30000
#define ARENA_MAX    (256u * 1024 * 1024)

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
    struct er_arena arena;
    int failed_cnt; /* delivery failures in the current batch */
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                        void *opaque)
{
    struct er_outbox *ob = opaque;

    (void)rk;
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ob->failed_cnt++; /* runs on the relay thread, inside flush */
        ER_LOG_WARN("outbox", "delivery to %s failed: %s",
                    rd_kafka_topic_name(msg->rkt), rd_kafka_err2str(msg->err));
    }
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
    hdrs = rd_kafka_headers_new(json_object_size(obj));
    json_object_foreach(obj, k, v)
    {
        if (json_is_string(v))
            rd_kafka_header_add(hdrs, k, -1, json_string_value(v),
                                (ssize_t)json_string_length(v));
    }
    json_decref(obj);
    return hdrs;
}

/* Publish one batch. Returns rows published (>= 0) or a negative code. */
static int relay_batch(struct er_outbox *ob, struct er_err *err)
{
    struct er_outbox_row *rows = NULL;
    size_t cnt = 0;
    size_t i;
    int64_t *ids = NULL;
    int rc;

    er_arena_reset(&ob->arena);
    rc = er_store_outbox_fetch(ob->store, BATCH_ROWS, &ob->arena, &rows, &cnt,
                               err);
    if (rc != 0 || cnt == 0)
        return rc;
    ids = er_arena_alloc(&ob->arena, sizeof(*ids) * cnt);
    if (ids == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    ob->failed_cnt = 0;
    for (i = 0; i < cnt; i++) {
        const struct er_outbox_row *r = &rows[i];
        rd_kafka_headers_t *hdrs = headers_from(r->headers_json);
        rd_kafka_resp_err_t kerr;

        kerr = (rd_kafka_resp_err_t)er_kafka_produce(ob->rk, r->topic, r->key,
                                                     r->key_len, r->value,
                                                     r->value_len, hdrs, NULL);
        if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_headers_destroy(hdrs);
            rd_kafka_flush(ob->rk, FLUSH_MS);
            return er_err_set(err, ER_EKAFKA, ER_ERRCLASS_RETRY,
                              "produce to %s failed: %s", r->topic,
                              rd_kafka_err2str(kerr));
        }
        ids[i] = r->id;
    }
    if (rd_kafka_flush(ob->rk, FLUSH_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return er_err_set(err, ER_ETIMEDOUT, ER_ERRCLASS_RETRY,
                          "outbox flush timed out");
    if (ob->failed_cnt > 0)
        return er_err_set(err, ER_EKAFKA, ER_ERRCLASS_RETRY,
                          "%d of %zu outbox messages not delivered",
                          ob->failed_cnt, cnt);
    rc = er_store_outbox_delete(ob->store, ids, cnt, err);
    if (rc != 0)
        return rc;
    er_metrics_outbox_published(cnt);
    return (int)cnt;
}

/* Wait until kicked, stopping, or ms passed. */
static void wait_kick(struct er_outbox *ob, int64_t ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&ob->mu);
    while (!ob->is_kicked && !ob->is_stopping) {
        if (pthread_cond_timedwait(&ob->cv, &ob->mu, &ts) != 0)
            break;
    }
    ob->is_kicked = false;
    pthread_mutex_unlock(&ob->mu);
}

static void *relay_main(void *arg)
{
    struct er_outbox *ob = arg;
    bool is_held = false;
    int64_t last_warn = 0;

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

        er_err_clear(&err);
        if (er_store_ensure(ob->store, &err) != 0) {
            is_held = false;
            goto backoff;
        }
        if (!is_held && er_store_relay_lock(ob->store, &is_held, &err) != 0)
            goto backoff;
        if (!is_held) {
            /* Another worker's relay publishes; be ready to take over. */
            if (is_stopping)
                break;
            wait_kick(ob, 1000);
            continue;
        }
        n = relay_batch(ob, &err);
        if (n < 0)
            goto backoff;
        if (n == BATCH_ROWS)
            continue;
        if (er_store_outbox_count(ob->store, &backlog, &err) == 0)
            er_metrics_outbox_backlog(backlog);
        if (is_stopping && backlog == 0)
            break;
        wait_kick(ob, IDLE_WAIT_MS);
        continue;
    backoff:
        if (er_time_mono_ms() - last_warn >= 10000) {
            ER_LOG_WARN("outbox", "relay retrying: %s", err.msg);
            last_warn = er_time_mono_ms();
        }
        wait_kick(ob, 500);
    }
    return NULL;
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
    rd_kafka_conf_set_opaque(conf, ob);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
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
    if (ob->rk != NULL) {
        rd_kafka_flush(ob->rk, 5000);
        rd_kafka_destroy(ob->rk);
    }
    er_store_destroy(ob->store);
    er_arena_fini(&ob->arena);
    pthread_cond_destroy(&ob->cv);
    pthread_mutex_destroy(&ob->mu);
    er_free(ob);
}
