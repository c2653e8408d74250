/* dlq_test: values that cannot be decoded or validated land on
 * commands.dlq with the original key and bytes and the envrun.error and
 * envrun.error.code headers; those whose command id can be read also get an
 * invalid_command result; the worker stays up (contract.md 3, 4). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

#define OVERSIZE_BYTES (70 * 1024)

static struct er_harness *h;
static struct er_harness_worker *worker;

static int group_setup(void **state)
{
    (void)state;
    h = er_harness_new("dlq", 2, NULL);
    if (h == NULL)
        return -1;
    worker = er_harness_worker_start(h, NULL);
    return worker != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_destroy(h);
    h = NULL;
    return rc;
}

/* The single-object encoding of a command, into out (caller finis it). */
static void encode(const struct er_run_command *cmd, struct er_buf *out)
{
    struct er_err err;

    er_err_clear(&err);
    er_buf_init(out, (size_t)4 * 1024 * 1024);
    if (er_codec_command_encode(cmd, out, &err) != 0)
        er_harness_fail(__FILE__, __LINE__, "encode: %s", err.msg);
}

/* Wait for the DLQ record with key and check key, bytes and headers. */
static const struct er_harness_record *
expect_dead_letter(const char *key, const void *value, size_t value_len)
{
    const struct er_harness_record *rec = NULL;
    const struct er_harness_record *recs[4];

    er_harness_wait_key(h, ER_HARNESS_DLQ, key, 1, ER_HARNESS_FIRST_WAIT_MS);
    if (er_harness_find_key(h, ER_HARNESS_DLQ, key, recs, 4) != 1) {
        er_harness_worker_dump_log(worker, 3000);
        er_harness_fail(__FILE__, __LINE__,
                        "expected one dead letter with key %s, got %zu", key,
                        er_harness_find_key(h, ER_HARNESS_DLQ, key, NULL, 0));
    }
    rec = recs[0];
    assert_int_equal(rec->value_len, value_len);
    assert_memory_equal(rec->value, value, value_len);
    ER_HARNESS_NON_NULL(rec->hdr_error);
    ER_HARNESS_NON_NULL(rec->hdr_error_code);
    assert_true(strlen(rec->hdr_error) > 0);
    assert_true(strlen(rec->hdr_error_code) > 0);
    return rec;
}

/* An invalid_command result for command_id, keyed like the command. */
static void expect_invalid_result(const char *command_id, const char *key)
{
    const json_t *res;
    const struct er_harness_record *rec = NULL;

    res = er_harness_wait_result(h, command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "invalid_command");
    ER_HARNESS_NON_NULL(er_harness_json_str(res, "errorMessage"));
    assert_int_equal(er_harness_find(h, ER_HARNESS_RESULTS, "commandId",
                                     command_id, &rec, 1),
                     1);
    ER_HARNESS_NON_NULL(rec->key);
    assert_string_equal(rec->key, key);
}

static void dlq_malformed_bytes(void **state)
{
    static const uint8_t junk[] = { 'n', 'o', 't',  ' ',  'a', 'v',
                                    'r', 'o', 0xff, 0x00, 0x01 };
    char key[37];

    (void)state;
    er_uuid_v4(key);
    assert_int_equal(er_harness_produce(h, "commands", key, junk, sizeof(junk)),
                     0);
    expect_dead_letter(key, junk, sizeof(junk));
    assert_int_equal(er_harness_count(h, ER_HARNESS_RESULTS), 0);
}

static void dlq_unknown_fingerprint(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    struct er_buf buf;
    char noise[37];

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    encode(&c.cmd, &buf);
    er_uuid_v4(noise);
    /* 0xC3 0x01, then 8 bytes that are not RunCommand's fingerprint. */
    memcpy(buf.data + 2, noise, 8);
    assert_int_equal(
        er_harness_produce(h, "commands", run.run_id, buf.data, buf.len), 0);
    expect_dead_letter(run.run_id, buf.data, buf.len);
    er_harness_poll(h, 500);
    assert_int_equal(er_harness_find(h, ER_HARNESS_RESULTS, "commandId",
                                     c.command_id, NULL, 0),
                     0);
    er_buf_fini(&buf);
}

static void dlq_confluent_framing_needs_registry(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    struct er_buf buf;
    struct er_buf framed;
    const struct er_harness_record *rec;
    static const uint8_t head[] = { 0x00, 0x00, 0x00, 0x00, 0x07 };

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    encode(&c.cmd, &buf);
    er_buf_init(&framed, buf.max_len);
    assert_int_equal(er_buf_append(&framed, head, sizeof(head)), 0);
    assert_int_equal(er_buf_append(&framed, buf.data + 10, buf.len - 10), 0);
    assert_int_equal(
        er_harness_produce(h, "commands", run.run_id, framed.data, framed.len),
        0);
    /* Only the header is kept: without its schema the body cannot be told
     * from a realize command, which may carry hostApiToken. */
    rec = expect_dead_letter(run.run_id, framed.data, sizeof(head));
    if (strstr(rec->hdr_error, "registry") == NULL)
        er_harness_fail(__FILE__, __LINE__,
                        "reason \"%s\" does not say a registry is needed",
                        rec->hdr_error);
    ER_HARNESS_NON_NULL(rec->hdr_redacted);
    er_harness_assert_contains(rec->hdr_redacted, "hostApiToken", __FILE__,
                               __LINE__);
    er_buf_fini(&framed);
    er_buf_fini(&buf);
}

static void dlq_truncated_value_gets_invalid_result(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    struct er_buf buf;
    char issue_id[37];
    char ws_id[37];

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    er_uuid_v4(issue_id);
    er_uuid_v4(ws_id);
    c.cmd.issue_id = issue_id;
    c.cmd.execution_workspace_id = ws_id;
    encode(&c.cmd, &buf);
    /* Cut inside the command union (an acquire: it carries no credential,
     * so its bytes are kept whole): the ids at the front stay readable. */
    ER_ASSERT(buf.len > 120);
    buf.len -= 40;
    assert_int_equal(
        er_harness_produce(h, "commands", run.run_id, buf.data, buf.len), 0);
    expect_dead_letter(run.run_id, buf.data, buf.len);
    expect_invalid_result(c.command_id, run.run_id);
    er_buf_fini(&buf);
}

static void dlq_bad_uuids_get_invalid_result(void **state)
{
    struct er_harness_run run;
    struct er_harness_run run2;
    struct er_harness_cmd c;
    struct er_harness_cmd c2;
    struct er_buf buf;
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.agent_id = "agent-7";
    encode(&c.cmd, &buf);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    expect_dead_letter(run.run_id, buf.data, buf.len);
    expect_invalid_result(c.command_id, run.run_id);
    res = er_harness_wait_result(h, c.command_id, 0);
    if (strstr(er_harness_json_str(res, "errorMessage"), "agentId") == NULL)
        er_harness_fail(__FILE__, __LINE__, "message does not name agentId");
    er_buf_fini(&buf);

    /* A realize naming a lease id that is not a UUID. */
    er_harness_run_init(&run2);
    er_harness_cmd_realize(&c2, &run2, h->dir);
    c2.cmd.lease_id = "12345";
    encode(&c2.cmd, &buf);
    assert_int_equal(er_harness_send(h, &c2.cmd), 0);
    expect_dead_letter(run2.run_id, buf.data, buf.len);
    expect_invalid_result(c2.command_id, run2.run_id);
    er_buf_fini(&buf);
}

static void dlq_oversize_string_gets_invalid_result(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    struct er_buf buf;
    struct er_buf ws;
    size_t i;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_realize(&c, &run, h->dir);
    /* A valid JSON object over the 64 KiB cap of workspaceJson. */
    er_buf_init(&ws, 2 * OVERSIZE_BYTES);
    assert_int_equal(er_buf_printf(&ws, "{\"cwd\":\"%s\",\"pad\":\"", h->dir),
                     0);
    for (i = 0; i < OVERSIZE_BYTES; i++)
        assert_int_equal(er_buf_append(&ws, "x", 1), 0);
    assert_int_equal(er_buf_append(&ws, "\"}", 3), 0);
    c.cmd.workspace_json = (char *)ws.data;
    encode(&c.cmd, &buf);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    expect_dead_letter(run.run_id, buf.data, buf.len);
    expect_invalid_result(c.command_id, run.run_id);
    er_buf_fini(&buf);
    er_buf_fini(&ws);
}

/* After all of the above the worker is alive and serves valid commands. */
static void dlq_worker_survives(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    res = er_harness_wait_result(h, c.command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_true(er_harness_worker_is_alive(worker));
    /* Nothing of the bad values reached the tables. */
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases",
                                         0, NULL),
                     1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dlq_malformed_bytes),
        cmocka_unit_test(dlq_unknown_fingerprint),
        cmocka_unit_test(dlq_confluent_framing_needs_registry),
        cmocka_unit_test(dlq_truncated_value_gets_invalid_result),
        cmocka_unit_test(dlq_bad_uuids_get_invalid_result),
        cmocka_unit_test(dlq_oversize_string_gets_invalid_result),
        cmocka_unit_test(dlq_worker_survives),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
