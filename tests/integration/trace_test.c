/* trace_test: a command's W3C traceparent (contract.md 4, RunCommand) is
 * carried into the worker's log lines for its step and, as the Kafka header
 * traceparent, into its result, lease events and activity events; a
 * command without one leaves none, and one that cannot be read is dropped
 * without the command. (The bridge's forwarded requests:
 * bridge_forward_test.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

#define TRACE_A_IDS "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
#define TRACE_A     "00-" TRACE_A_IDS "-01"
#define TRACE_B     "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-00"

static struct er_harness *h;
static struct er_harness_worker *worker;

static int group_setup(void **state)
{
    (void)state;
    h = er_harness_new("trace", 2, NULL);
    if (h == NULL)
        return -1;
    worker = er_harness_worker_start_warm(h, NULL);
    return worker != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_destroy(h);
    return rc;
}

/* Every record of topic whose decoded field is value carries want (NULL:
 * no traceparent header); returns how many there were. */
static size_t expect_trace(enum er_harness_topic topic, const char *field,
                           const char *value, const char *want)
{
    const struct er_harness_record *recs[16];
    size_t n = er_harness_find(h, topic, field, value, recs, 16);
    size_t i;

    for (i = 0; i < n && i < 16; i++) {
        if (want == NULL) {
            assert_null(recs[i]->hdr_traceparent);
            continue;
        }
        ER_HARNESS_NON_NULL(recs[i]->hdr_traceparent);
        assert_string_equal(recs[i]->hdr_traceparent, want);
    }
    return n;
}

/* The "command processed" line of command_id has traceparent want (NULL:
 * none). */
static void expect_log_trace(const char *log, const char *command_id,
                             const char *want)
{
    const char *p = log;

    while ((p = strstr(p, "\"msg\":\"command processed\"")) != NULL) {
        const char *bol = p;
        const char *eol = strchr(p, '\n');
        char line[2048];

        while (bol > log && bol[-1] != '\n')
            bol--;
        if (eol == NULL)
            eol = p + strlen(p);
        snprintf(line, sizeof(line), "%.*s", (int)(eol - bol), bol);
        p = eol;
        if (strstr(line, command_id) == NULL)
            continue;
        if (want == NULL)
            assert_null(strstr(line, "traceparent"));
        else
            ER_HARNESS_ASSERT_CONTAINS(line, want);
        return;
    }
    er_harness_fail(__FILE__, __LINE__, "no log line for command %s",
                    command_id);
}

static void trace_follows_each_command(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd acq;
    struct er_harness_cmd rel;
    const json_t *res;
    const char *lease_id;
    char *log;
    char line_a[160];

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&acq, &run);
    acq.cmd.traceparent = TRACE_A;
    res = er_harness_roundtrip(h, worker, &acq, ER_HARNESS_WAIT_MS);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    lease_id = er_harness_json_str(res, "leaseId");
    ER_HARNESS_NON_NULL(lease_id);
    er_harness_cmd_release(&rel, &run, ER_RELEASE_RELEASED);
    rel.cmd.traceparent = TRACE_B;
    res = er_harness_roundtrip(h, worker, &rel, ER_HARNESS_WAIT_MS);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_true(er_harness_wait_count(h, ER_HARNESS_LEASE_EVENTS, "status",
                                      "released", 1, ER_HARNESS_WAIT_MS));
    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "runId",
                                      run.run_id, 2, ER_HARNESS_WAIT_MS));

    /* Results: each its own command's. */
    assert_int_equal(
        expect_trace(ER_HARNESS_RESULTS, "commandId", acq.command_id, TRACE_A),
        1);
    assert_int_equal(
        expect_trace(ER_HARNESS_RESULTS, "commandId", rel.command_id, TRACE_B),
        1);
    /* Events: the acquire's (active) and the release's (released). */
    {
        const struct er_harness_record *recs[8];
        size_t n = er_harness_find(h, ER_HARNESS_LEASE_EVENTS, "leaseId",
                                   lease_id, recs, 8);
        size_t i;
        size_t with_a = 0;
        size_t with_b = 0;

        assert_true(n >= 2);
        for (i = 0; i < n; i++) {
            ER_HARNESS_NON_NULL(recs[i]->hdr_traceparent);
            with_a += strcmp(recs[i]->hdr_traceparent, TRACE_A) == 0;
            with_b += strcmp(recs[i]->hdr_traceparent, TRACE_B) == 0;
        }
        assert_true(with_a >= 1);
        assert_true(with_b >= 1);
        assert_int_equal(with_a + with_b, n);
    }
    {
        const struct er_harness_record *recs[8];
        size_t n = er_harness_find(h, ER_HARNESS_ACTIVITY, "runId", run.run_id,
                                   recs, 8);
        size_t i;

        assert_true(n >= 2);
        for (i = 0; i < n; i++)
            ER_HARNESS_NON_NULL(recs[i]->hdr_traceparent);
    }

    /* Logs: each step's line carries its command's, and only that. */
    snprintf(line_a, sizeof(line_a), "\"traceparent\":\"%s\"", TRACE_A);
    assert_true(er_harness_worker_wait_log(worker, line_a, 5000));
    log = er_harness_worker_log(worker);
    ER_HARNESS_NON_NULL(log);
    expect_log_trace(log, acq.command_id, TRACE_A);
    expect_log_trace(log, rel.command_id, TRACE_B);
    er_free(log);
}

/* No traceparent on the command: nothing invented. */
static void no_trace_no_header(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd acq;
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&acq, &run);
    res = er_harness_roundtrip(h, worker, &acq, ER_HARNESS_WAIT_MS);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_int_equal(
        expect_trace(ER_HARNESS_RESULTS, "commandId", acq.command_id, NULL), 1);
    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "runId",
                                      run.run_id, 1, ER_HARNESS_WAIT_MS));
    assert_true(expect_trace(ER_HARNESS_ACTIVITY, "runId", run.run_id, NULL) >=
                1);
    {
        char *log = er_harness_worker_log(worker);

        ER_HARNESS_NON_NULL(log);
        expect_log_trace(log, acq.command_id, NULL);
        er_free(log);
    }
}

/* A traceparent that cannot be read is dropped, never the command that
 * carries it; a later version is carried as version 00 (W3C Trace
 * Context, "Versioning of traceparent"). */
static void unreadable_trace_dropped_later_version_carried(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd acq;
    struct er_harness_cmd rel;
    size_t dlq_before = er_harness_count(h, ER_HARNESS_DLQ);
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&acq, &run);
    acq.cmd.traceparent =
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    res = er_harness_roundtrip(h, worker, &acq, ER_HARNESS_WAIT_MS);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_int_equal(
        expect_trace(ER_HARNESS_RESULTS, "commandId", acq.command_id, NULL), 1);
    assert_true(er_harness_worker_wait_log(
        worker, "traceparent dropped, not a W3C traceparent", 5000));

    er_harness_cmd_release(&rel, &run, ER_RELEASE_RELEASED);
    rel.cmd.traceparent = "01-" TRACE_A_IDS "-01-a-later-field";
    res = er_harness_roundtrip(h, worker, &rel, ER_HARNESS_WAIT_MS);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_int_equal(
        expect_trace(ER_HARNESS_RESULTS, "commandId", rel.command_id, TRACE_A),
        1);
    assert_int_equal(er_harness_count(h, ER_HARNESS_DLQ), dlq_before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(trace_follows_each_command),
        cmocka_unit_test(no_trace_no_header),
        cmocka_unit_test(unreadable_trace_dropped_later_version_carried),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
