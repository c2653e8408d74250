/* outbox_test: the relay's pure helpers: which librdkafka errors refuse a
 * message for good (quarantine) and which are worth retrying, and how much
 * of an oversized dead letter fits under message.max.bytes; and the
 * readiness parts the relay sets, which gate /readyz apart from the
 * consumer's. The metrics are process-wide; one thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>

#include "worker/outbox_int.h"

static void outbox_refusals_of_the_message_are_permanent(void **state)
{
    static const rd_kafka_resp_err_t permanent[] = {
        RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
        RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE,
        RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE,
        RD_KAFKA_RESP_ERR_INVALID_RECORD,
        RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION,
        RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC,
        RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION,
        RD_KAFKA_RESP_ERR__INVALID_ARG,
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(permanent) / sizeof(permanent[0]); i++) {
        if (!er_outbox_err_is_permanent(permanent[i]))
            fail_msg("%s should be permanent", rd_kafka_err2name(permanent[i]));
    }
}

static void outbox_cluster_and_client_failures_are_retried(void **state)
{
    static const rd_kafka_resp_err_t transient[] = {
        RD_KAFKA_RESP_ERR_NO_ERROR,
        RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN,
        RD_KAFKA_RESP_ERR__TRANSPORT,
        RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
        RD_KAFKA_RESP_ERR__TIMED_OUT,
        RD_KAFKA_RESP_ERR__QUEUE_FULL,
        RD_KAFKA_RESP_ERR__FATAL,
        RD_KAFKA_RESP_ERR__PURGE_QUEUE,
        RD_KAFKA_RESP_ERR__PURGE_INFLIGHT,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(transient) / sizeof(transient[0]); i++) {
        if (er_outbox_err_is_permanent(transient[i]))
            fail_msg("%s should be retried", rd_kafka_err2name(transient[i]));
    }
    /* Codes librdkafka does not know are not a reason to drop a row. */
    assert_false(er_outbox_err_is_permanent(-12345));
    assert_false(er_outbox_err_is_permanent(12345));
}

static void outbox_fit_len_leaves_room_for_key_headers_and_slack(void **state)
{
    (void)state;
    /* The default limit, a run-id key and the DLQ headers. */
    assert_int_equal(er_outbox_fit_len(1000000, 36, 120),
                     1000000 - 36 - 120 - ER_OUTBOX_FIT_SLACK);
    assert_int_equal(er_outbox_fit_len(500000, 0, 0),
                     500000 - ER_OUTBOX_FIT_SLACK);
    /* What fits plus the slack is exactly the limit. */
    assert_int_equal(er_outbox_fit_len(1000000, 36, 120) + 36 + 120 +
                         ER_OUTBOX_FIT_SLACK,
                     1000000);
}

static void outbox_fit_len_is_zero_when_nothing_fits(void **state)
{
    (void)state;
    assert_int_equal(er_outbox_fit_len(0, 0, 0), 0);
    assert_int_equal(er_outbox_fit_len(ER_OUTBOX_FIT_SLACK, 0, 0), 0);
    assert_int_equal(er_outbox_fit_len(ER_OUTBOX_FIT_SLACK + 1, 0, 0), 1);
    assert_int_equal(er_outbox_fit_len(10000, 6000, 0), 0);
    assert_int_equal(er_outbox_fit_len(10000, 0, 6000), 0);
    /* No wrap-around on absurd lengths. */
    assert_int_equal(er_outbox_fit_len(1000000, SIZE_MAX, 0), 0);
    assert_int_equal(er_outbox_fit_len(1000000, 0, SIZE_MAX), 0);
    assert_int_equal(er_outbox_fit_len(1000000, SIZE_MAX - 10, 5000), 0);
    assert_int_equal(er_outbox_fit_len(1000000, 5000, SIZE_MAX - 10), 0);
}

static void outbox_relay_readiness_parts_gate_readyz(void **state)
{
    (void)state;
    er_metrics_set_db_ready(true);
    er_metrics_set_kafka_ready(true);
    assert_true(er_metrics_is_ready());

    er_metrics_set_relay_db_ready(false);
    assert_false(er_metrics_is_ready());
    er_metrics_set_db_ready(true); /* run.c's flag does not override it */
    assert_false(er_metrics_is_ready());
    er_metrics_set_relay_db_ready(true);
    assert_true(er_metrics_is_ready());

    er_metrics_set_producer_ready(false);
    assert_false(er_metrics_is_ready());
    er_metrics_set_kafka_ready(true); /* nor does the consumer's */
    assert_false(er_metrics_is_ready());
    er_metrics_set_producer_ready(true);
    assert_true(er_metrics_is_ready());

    er_metrics_set_draining(true);
    assert_false(er_metrics_is_ready());
    er_metrics_set_draining(false);
    assert_true(er_metrics_is_ready());

    er_metrics_set_db_ready(false);
    er_metrics_set_kafka_ready(false);
}

static void outbox_quarantined_rows_are_counted(void **state)
{
    struct er_buf buf;
    const char *line = "\nenvrun_outbox_quarantined_total ";
    const char *p;
    long long before;
    long long after;

    (void)state;
    er_buf_init(&buf, (size_t)1 << 20);
    assert_int_equal(er_metrics_render(&buf), 0);
    p = strstr((const char *)buf.data, line);
    ER_ASSERT(p != NULL);
    before = strtoll(p + strlen(line), NULL, 10);
    er_metrics_outbox_quarantined(3);
    er_buf_reset(&buf);
    assert_int_equal(er_metrics_render(&buf), 0);
    assert_non_null(strstr((const char *)buf.data,
                           "# TYPE envrun_outbox_quarantined_total counter\n"));
    assert_non_null(
        strstr((const char *)buf.data, "# TYPE envrun_draining gauge\n"));
    p = strstr((const char *)buf.data, line);
    ER_ASSERT(p != NULL);
    after = strtoll(p + strlen(line), NULL, 10);
    assert_int_equal(after, before + 3);
    er_buf_fini(&buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(outbox_refusals_of_the_message_are_permanent),
        cmocka_unit_test(outbox_cluster_and_client_failures_are_retried),
        cmocka_unit_test(outbox_fit_len_leaves_room_for_key_headers_and_slack),
        cmocka_unit_test(outbox_fit_len_is_zero_when_nothing_fits),
        cmocka_unit_test(outbox_relay_readiness_parts_gate_readyz),
        cmocka_unit_test(outbox_quarantined_rows_are_counted),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
