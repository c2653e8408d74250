/* outbox_relay_test: the outbox relay cannot wedge. A row the broker
 * refuses for good is quarantined while the rest of its batch publishes in
 * order; an oversized dead letter is cut to fit; the relay takes its lock
 * again after its database session is killed; /readyz follows Kafka and
 * PostgreSQL going away and coming back. Each case has its own harness and
 * worker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "tests/support/harness.h"

/* The relay's advisory lock key (store_outbox.c): pg_locks shows a bigint
 * key as classid (high 32 bits) and objid (low 32 bits), objsubid 1. */
#define RELAY_LOCK_HOLDERS_SQL                                              \
    "FROM pg_locks WHERE locktype = 'advisory' AND granted AND "            \
    "objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = "         \
    "7295104812 AND database = (SELECT oid FROM pg_database WHERE datname " \
    "= current_database())"

#define POISON_KEY       "poison-key"
#define GARBAGE_BYTES    999000
#define WORKER_MAX_BYTES 500000 /* the worker's message.max.bytes */

static struct er_harness *h;
static struct er_harness_worker *worker;

static int teardown(void **state)
{
    int rc = h != NULL && er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_destroy(h);
    h = NULL;
    worker = NULL;
    return rc;
}

/* A fresh world with one warm worker serving /metrics and /readyz; env:
 * extra variables for the worker (NULL-terminated, may be NULL). */
static void start(const char *name, const char *const *env)
{
    struct er_harness_worker_opts opts;

    memset(&opts, 0, sizeof(opts));
    opts.has_http = true;
    opts.env = env;
    h = er_harness_new(name, 2, NULL);
    ER_HARNESS_NON_NULL(h);
    worker = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(worker);
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Send an acquire for a fresh run (or for run when not NULL) and wait for
 * its ok result. */
static void roundtrip(struct er_harness_run *run)
{
    struct er_harness_run fresh;
    struct er_harness_cmd c;
    const json_t *res;

    if (run == NULL) {
        er_harness_run_init(&fresh);
        run = &fresh;
    }
    er_harness_cmd_acquire(&c, run);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_WAIT_MS);
    if (res == NULL) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__, "no result for %s", c.command_id);
    }
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
}

/* Poll until the outbox is empty; its row count at the end. */
static long long wait_outbox_empty(int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    long long n;

    for (;;) {
        n = er_harness_pg_count(h->db_url, "SELECT count(*) FROM envrun.outbox",
                                0, NULL);
        if (n == 0 || now_ms() >= deadline)
            return n;
        sleep_ms(100);
    }
}

/* The backend pid holding the relay lock in the test's database; 0 when
 * none does. */
static long long lock_holder(void)
{
    return er_harness_pg_count(
        h->db_url, "SELECT coalesce(max(pid), 0) " RELAY_LOCK_HOLDERS_SQL, 0,
        NULL);
}

static long long lock_holder_cnt(void)
{
    return er_harness_pg_count(
        h->db_url, "SELECT count(*) " RELAY_LOCK_HOLDERS_SQL, 0, NULL);
}

/* ----------------------------------------------------------------
 * A reader of our own: the harness keeps only the envrun.error headers of
 * a record, and its clients do not recover from a mock broker going down
 * and up (librdkafka 2.0.2's mock leaves their connections hanging).
 * ---------------------------------------------------------------- */

/* Read topic prefix + suffix from the start with a new consumer until a
 * record with key shows, within timeout_ms. Returns the value of its
 * header name (name NULL: "") as a NUL-terminated er_malloc'd string, and
 * the record's value length in *value_len; NULL when no such record (or
 * header) showed. */
static char *read_record(const char *suffix, const char *key, const char *name,
                         size_t *value_len, int timeout_ms)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_t *rk = NULL;
    char topic[128];
    char errstr[256];
    char *found = NULL;
    int64_t deadline = now_ms() + timeout_ms;
    int p;

    er_harness_topic_name(h, suffix, topic, sizeof(topic));
    if (rd_kafka_conf_set(conf, "bootstrap.servers", h->brokers, errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "group.id", "outbox-test-reader", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "fetch.wait.max.ms", "100", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        er_harness_fail(__FILE__, __LINE__, "reader config: %s", errstr);
    }
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        er_harness_fail(__FILE__, __LINE__, "reader: %s", errstr);
    }
    parts = rd_kafka_topic_partition_list_new(h->partition_cnt);
    for (p = 0; p < h->partition_cnt; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    while (found == NULL && now_ms() < deadline) {
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 200);
        rd_kafka_headers_t *hdrs = NULL;
        const void *val = NULL;
        size_t size = 0;

        if (msg == NULL)
            continue;
        if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR && msg->key != NULL &&
            msg->key_len == strlen(key) &&
            memcmp(msg->key, key, msg->key_len) == 0) {
            if (name == NULL)
                found = er_strndup("", 0);
            else if (rd_kafka_message_headers(msg, &hdrs) ==
                         RD_KAFKA_RESP_ERR_NO_ERROR &&
                     rd_kafka_header_get_last(hdrs, name, &val, &size) ==
                         RD_KAFKA_RESP_ERR_NO_ERROR)
                found =
                    er_strndup(val != NULL ? val : "", val != NULL ? size : 0);
            *value_len = msg->len;
        }
        rd_kafka_message_destroy(msg);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return found;
}

/* ----------------------------------------------------------------
 * Cases
 * ---------------------------------------------------------------- */

/* Five rows of one key in one batch: two the producer can never send (a
 * value over message.max.bytes, refused before it is produced, and one
 * that fits the fetch but not the producer once its key is added, refused
 * by the produce call) between three small ones. The small ones publish in
 * order, the big ones move to the quarantine with a reason, and later
 * commands are answered. */
static void poison_outbox_row_is_quarantined_and_the_rest_publish(void **state)
{
    char topic[128];
    const struct er_harness_record *recs[8];
    json_t *rows;
    size_t n;
    size_t i;

    (void)state;
    start("outbox_poison", NULL);
    er_harness_topic_name(h, "results", topic, sizeof(topic));
    assert_int_equal(
        er_harness_pg_exec(
            h->db_url,
            "INSERT INTO envrun.outbox (topic, msg_key, msg_value) VALUES "
            "($1, convert_to($2, 'UTF8'), convert_to('first', 'UTF8')), "
            "($1, convert_to($2, 'UTF8'), "
            " convert_to(repeat('x', 1100000), 'UTF8')), "
            "($1, convert_to($2, 'UTF8'), convert_to('second', 'UTF8')), "
            "($1, convert_to($2, 'UTF8'), "
            " convert_to(repeat('y', 1000000 - length($2)), 'UTF8')), "
            "($1, convert_to($2, 'UTF8'), convert_to('third', 'UTF8'))",
            2, (const char *[]){ topic, POISON_KEY }),
        0);

    roundtrip(NULL);
    if (!er_harness_wait_key(h, ER_HARNESS_RESULTS, POISON_KEY, 3,
                             ER_HARNESS_WAIT_MS)) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__, "the small rows did not publish");
    }
    er_harness_poll(h, 1000);
    n = er_harness_find_key(h, ER_HARNESS_RESULTS, POISON_KEY, recs, 8);
    assert_int_equal(n, 3);
    assert_int_equal(recs[0]->value_len, 5);
    assert_memory_equal(recs[0]->value, "first", 5);
    assert_int_equal(recs[1]->value_len, 6);
    assert_memory_equal(recs[1]->value, "second", 6);
    assert_int_equal(recs[2]->value_len, 5);
    assert_memory_equal(recs[2]->value, "third", 5);
    assert_true(recs[0]->offset < recs[1]->offset);
    assert_true(recs[1]->offset < recs[2]->offset);

    assert_int_equal(wait_outbox_empty(ER_HARNESS_WAIT_MS), 0);
    rows = er_harness_pg_query(
        h->db_url,
        "SELECT convert_from(msg_key, 'UTF8') AS k, topic, reason, "
        "octet_length(msg_value) AS len FROM envrun.outbox_quarantine "
        "ORDER BY id",
        0, NULL);
    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), 2);
    for (i = 0; i < 2; i++) {
        const json_t *row = json_array_get(rows, i);

        ER_HARNESS_ASSERT_STR(row, "k", POISON_KEY);
        ER_HARNESS_ASSERT_STR(row, "topic", topic);
        ER_HARNESS_NON_NULL(er_harness_json_str(row, "reason"));
        assert_true(strlen(er_harness_json_str(row, "reason")) > 0);
    }
    ER_HARNESS_ASSERT_STR(json_array_get(rows, 0), "len", "1100000");
    ER_HARNESS_ASSERT_STR(json_array_get(rows, 1), "len",
                          "999990"); /* 1000000 - strlen(POISON_KEY) */
    if (strstr(er_harness_json_str(json_array_get(rows, 0), "reason"),
               "message.max.bytes") == NULL ||
        strstr(er_harness_json_str(json_array_get(rows, 1), "reason"),
               "too large") == NULL)
        er_harness_fail(__FILE__, __LINE__,
                        "reasons do not say the rows are too large");
    json_decref(rows);
    assert_int_equal(
        er_harness_worker_metric(worker, "envrun_outbox_quarantined_total"), 2);

    /* The relay is not wedged: more results flow. */
    roundtrip(NULL);
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_RESULTS, POISON_KEY, NULL, 0), 3);
}

/* A 999,000-byte undecodable command: its dead-letter copy is over the
 * worker's producer limit (message.max.bytes 500000 here), so the relay
 * sends its first bytes with an envrun.truncated header instead of
 * retrying it forever; a command of the same run sent after it, and one of
 * another run, are answered. */
static void
oversized_undecodable_command_is_dead_lettered_truncated_and_later_results_flow(
    void **state)
{
    static const char *const env[] = {
        "ENVRUN_KAFKA_PROPS=session.timeout.ms=6000,heartbeat.interval.ms=500,"
        "message.max.bytes=500000",
        NULL,
    };
    struct er_harness_run run;
    const struct er_harness_record *rec = NULL;
    uint8_t *garbage;
    char *note;
    char want[96];
    size_t value_len = 0;
    size_t i;

    (void)state;
    start("outbox_dlq_trunc", env);
    garbage = er_malloc(GARBAGE_BYTES);
    ER_HARNESS_NON_NULL(garbage);
    for (i = 0; i < GARBAGE_BYTES; i++)
        garbage[i] = (uint8_t)('a' + i % 26); /* no 0xC3 0x01 marker */
    er_harness_run_init(&run);
    assert_int_equal(
        er_harness_produce(h, "commands", run.run_id, garbage, GARBAGE_BYTES),
        0);
    assert_int_equal(er_harness_flush(h), 0);
    roundtrip(&run);
    roundtrip(NULL);

    if (!er_harness_wait_key(h, ER_HARNESS_DLQ, run.run_id, 1,
                             ER_HARNESS_WAIT_MS)) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__, "no dead letter");
    }
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_DLQ, run.run_id, &rec, 1), 1);
    ER_HARNESS_NON_NULL(rec->hdr_error);
    ER_HARNESS_NON_NULL(rec->hdr_error_code);
    assert_true(rec->value_len > 0 && rec->value_len < WORKER_MAX_BYTES);
    assert_memory_equal(rec->value, garbage, rec->value_len);

    note = read_record("commands.dlq", run.run_id, "envrun.truncated",
                       &value_len, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(note);
    assert_int_equal(value_len, rec->value_len);
    snprintf(want, sizeof(want), "%d bytes, first %zu kept", GARBAGE_BYTES,
             rec->value_len);
    assert_string_equal(note, want);
    er_free(note);
    er_free(garbage);

    assert_int_equal(wait_outbox_empty(ER_HARNESS_WAIT_MS), 0);
    assert_int_equal(
        er_harness_pg_count(h->db_url,
                            "SELECT count(*) FROM envrun.outbox_quarantine", 0,
                            NULL),
        0);
    assert_int_equal(
        er_harness_worker_metric(worker, "envrun_outbox_quarantined_total"), 0);
}

/* Kill the relay's database session: the relay reconnects, takes the lock
 * again before it publishes (a new session does not hold the old one's
 * lock), and exactly one session holds it. */
static void
relay_retakes_its_lock_after_losing_the_database_connection(void **state)
{
    char pid[24];
    long long before;
    long long after = 0;
    int64_t deadline;

    (void)state;
    start("outbox_relock", NULL);
    before = lock_holder();
    assert_true(before > 0);
    assert_int_equal(lock_holder_cnt(), 1);
    snprintf(pid, sizeof(pid), "%lld", before);
    assert_int_equal(er_harness_pg_exec(h->db_url,
                                        "SELECT pg_terminate_backend($1::int)",
                                        1, (const char *[]){ pid }),
                     0);
    deadline = now_ms() + ER_HARNESS_WAIT_MS;
    while (now_ms() < deadline) {
        after = lock_holder();
        if (after > 0 && after != before)
            break;
        sleep_ms(100);
    }
    if (after <= 0 || after == before) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__,
                        "no new session holds the relay lock (holder %lld)",
                        after);
    }
    assert_int_equal(lock_holder_cnt(), 1);
    /* It publishes, still under the lock of its new session. */
    roundtrip(NULL);
    roundtrip(NULL);
    assert_int_equal(wait_outbox_empty(ER_HARNESS_WAIT_MS), 0);
    assert_int_equal(lock_holder(), after);
    assert_int_equal(lock_holder_cnt(), 1);
}

/* /readyz answers 503 while the only broker is down and 200 again once it
 * is back (with nothing to publish, so the relay must notice by itself);
 * then the relay publishes again. */
static void readyz_follows_kafka_going_down_and_up(void **state)
{
    rd_kafka_mock_cluster_t *mock;
    char topic[128];
    char key[37];
    char *found;
    size_t value_len = 0;

    (void)state;
    start("outbox_ready_kafka", NULL);
    assert_true(er_harness_worker_wait_ready(worker, ER_HARNESS_WAIT_MS));
    mock = er_harness_mock(h);
    ER_HARNESS_NON_NULL(mock);
    assert_int_equal(rd_kafka_mock_broker_set_down(mock, 1), 0);
    if (!er_harness_worker_wait_readyz(worker, 503, ER_HARNESS_WAIT_MS)) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__, "still ready with Kafka down");
    }
    assert_int_equal(rd_kafka_mock_broker_set_up(mock, 1), 0);
    if (!er_harness_worker_wait_readyz(worker, 200, ER_HARNESS_FIRST_WAIT_MS)) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__, "not ready with Kafka back");
    }
    er_harness_topic_name(h, "results", topic, sizeof(topic));
    er_uuid_v4(key);
    assert_int_equal(
        er_harness_pg_exec(h->db_url,
                           "INSERT INTO envrun.outbox (topic, msg_key, "
                           "msg_value) VALUES ($1, convert_to($2, 'UTF8'), "
                           "convert_to('after the outage', 'UTF8'))",
                           2, (const char *[]){ topic, key }),
        0);
    found = read_record("results", key, NULL, &value_len, ER_HARNESS_WAIT_MS);
    if (found == NULL) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__, "nothing published after");
    }
    er_free(found);
    assert_int_equal(value_len, strlen("after the outage"));
    assert_int_equal(wait_outbox_empty(ER_HARNESS_WAIT_MS), 0);
}

/* /readyz answers 503 while the database refuses connections and the
 * relay's session is gone, and 200 again once it accepts them. */
static void readyz_follows_postgres_going_away_and_back(void **state)
{
    char admin_url[ER_HARNESS_URL_MAX + 32];
    char sql[160];

    (void)state;
    start("outbox_ready_pg", NULL);
    assert_true(er_harness_worker_wait_ready(worker, ER_HARNESS_WAIT_MS));
    /* h->db_url is a keyword string; a later dbname overrides. */
    snprintf(admin_url, sizeof(admin_url), "%s dbname=postgres", h->db_url);
    snprintf(sql, sizeof(sql), "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS %s",
             h->db_name, "false");
    assert_int_equal(er_harness_pg_exec(admin_url, sql, 0, NULL), 0);
    assert_true(
        er_harness_pg_count(admin_url,
                            "SELECT count(pg_terminate_backend(pid)) FROM "
                            "pg_stat_activity WHERE datname = $1",
                            1, (const char *[]){ h->db_name }) >= 1);
    if (!er_harness_worker_wait_readyz(worker, 503, ER_HARNESS_WAIT_MS)) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__, "still ready with no database");
    }
    snprintf(sql, sizeof(sql), "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS %s",
             h->db_name, "true");
    assert_int_equal(er_harness_pg_exec(admin_url, sql, 0, NULL), 0);
    if (!er_harness_worker_wait_readyz(worker, 200, ER_HARNESS_WAIT_MS)) {
        er_harness_worker_dump_log(worker, 4000);
        er_harness_fail(__FILE__, __LINE__, "not ready with the database back");
    }
    roundtrip(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(
            poison_outbox_row_is_quarantined_and_the_rest_publish, teardown),
        cmocka_unit_test_teardown(
            oversized_undecodable_command_is_dead_lettered_truncated_and_later_results_flow,
            teardown),
        cmocka_unit_test_teardown(
            relay_retakes_its_lock_after_losing_the_database_connection,
            teardown),
        cmocka_unit_test_teardown(readyz_follows_kafka_going_down_and_up,
                                  teardown),
        cmocka_unit_test_teardown(readyz_follows_postgres_going_away_and_back,
                                  teardown),
    };

    /* ENVRUN_TEST_FILTER=<glob> runs only the matching cases. */
    if (getenv("ENVRUN_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("ENVRUN_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
