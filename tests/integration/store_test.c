/* store_test: the store's way to the server on a real PostgreSQL:
 * statements prepared once per connection, and writes sent ahead in
 * pipeline mode whose failure is the transaction's. What must hold: a
 * write sent ahead that fails fails the next statement, every statement
 * after it and the commit, with its own message and class, and nothing of
 * the transaction stays; a connection lost or a table changed under a
 * prepared statement costs one retry, not a stuck worker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "tests/support/harness.h"
#include "worker/store_int.h"
#include "worker/store_sql_int.h"

#define TOPIC "envrun.results"

struct fixture {
    struct er_harness *h;
    struct er_store *store;
    struct er_arena arena;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct er_err err;

    if (f == NULL)
        return -1;
    f->h = er_harness_new("store", 1, NULL);
    if (f->h == NULL)
        return -1;
    er_err_clear(&err);
    f->store = er_store_new(f->h->db_url, &err);
    if (f->store == NULL || er_store_migrate(f->store, &err) != 0) {
        fprintf(stderr, "store: %s\n", err.msg);
        return -1;
    }
    er_arena_init(&f->arena, 1 << 20);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    er_arena_fini(&f->arena);
    er_store_destroy(f->store);
    er_harness_destroy(f->h);
    free(f);
    return 0;
}

static long long outbox_rows(const struct fixture *f)
{
    return er_harness_pg_count(f->h->db_url,
                               "SELECT count(*) FROM envrun.outbox", 0, NULL);
}

/* An outbox row; headers NULL for valid ones, else the text sent. */
static int add(struct fixture *f, const char *headers, struct er_err *err)
{
    static const uint8_t value[] = "a result";

    return er_store_outbox_add(f->store, TOPIC, (const uint8_t *)"k", 1, value,
                               sizeof(value) - 1, headers, NULL, err);
}

static void writes_sent_ahead_commit_together(void **state)
{
    struct fixture *f = *state;
    struct er_err err;
    int i;

    er_err_clear(&err);
    assert_int_equal(er_store_begin(f->store, &err), 0);
    /* More than fit in one pipeline: it is read out and begun again. */
    for (i = 0; i < ER_STORE_PIPE_MAX * 2 + 5; i++) {
        assert_int_equal(add(f, NULL, &err), 0);
        assert_true(f->store->pipe_cnt <= ER_STORE_PIPE_MAX);
    }
    assert_true(f->store->pipe_cnt > 0); /* some still unread */
    assert_int_equal(outbox_rows(f), 0); /* not committed yet */
    assert_int_equal(er_store_commit(f->store, &err), 0);
    assert_int_equal(f->store->pipe_cnt, 0);
    assert_int_equal(outbox_rows(f), ER_STORE_PIPE_MAX * 2 + 5);
}

static void failure_sent_ahead_is_the_transactions(void **state)
{
    struct fixture *f = *state;
    struct er_processed_row row;
    struct er_err err;
    int64_t cnt = -1;

    er_err_clear(&err);
    assert_int_equal(er_store_begin(f->store, &err), 0);
    assert_int_equal(add(f, NULL, &err), 0);
    /* Not JSON: refused by the server (class 22), but only known with the
     * next statement's answer. */
    assert_int_equal(add(f, "{not json", &err), 0);
    assert_int_equal(add(f, NULL, &err), 0);
    /* The next statement that waits reports the write's failure as the
     * write's: its name, the server's message, class SKIP. */
    assert_int_not_equal(er_store_processed_get(f->store, "no-such-command",
                                                &f->arena, &row, &err),
                         0);
    ER_HARNESS_ASSERT_CONTAINS(err.msg, "outbox insert");
    ER_HARNESS_ASSERT_CONTAINS(err.msg, "22P02");
    assert_int_equal(err.cls, ER_ERRCLASS_SKIP);
    /* And so does every statement until the rollback, without a trip to
     * the server; a write sent ahead as well. */
    er_err_clear(&err);
    assert_int_not_equal(er_store_outbox_count(f->store, &cnt, &err), 0);
    ER_HARNESS_ASSERT_CONTAINS(err.msg, "outbox insert");
    er_err_clear(&err);
    assert_int_not_equal(add(f, NULL, &err), 0);
    ER_HARNESS_ASSERT_CONTAINS(err.msg, "outbox insert");
    er_store_rollback(f->store);
    /* After the rollback the connection serves a new transaction, and
     * nothing of the failed one was kept. */
    er_err_clear(&err);
    assert_int_equal(er_store_begin(f->store, &err), 0);
    assert_int_equal(er_store_outbox_count(f->store, &cnt, &err), 0);
    assert_int_equal(cnt, 0);
    assert_int_equal(er_store_commit(f->store, &err), 0);
}

static void failed_commit_ends_the_transaction(void **state)
{
    struct fixture *f = *state;
    struct er_err err;
    int64_t cnt = -1;

    er_err_clear(&err);
    assert_int_equal(er_store_begin(f->store, &err), 0);
    assert_int_equal(add(f, NULL, &err), 0);
    assert_int_equal(add(f, "[1,", &err), 0);
    /* The commit is what reads the failure: it fails, and the transaction
     * is over, as after a refused COMMIT (no rollback called). */
    assert_int_not_equal(er_store_commit(f->store, &err), 0);
    ER_HARNESS_ASSERT_CONTAINS(err.msg, "outbox insert");
    assert_int_equal(PQtransactionStatus(f->store->conn), PQTRANS_IDLE);
    er_err_clear(&err);
    assert_int_equal(er_store_begin(f->store, &err), 0);
    assert_int_equal(add(f, NULL, &err), 0);
    assert_int_equal(er_store_commit(f->store, &err), 0);
    assert_int_equal(er_store_outbox_count(f->store, &cnt, &err), 0);
    assert_int_equal(cnt, 1);
    assert_int_equal(outbox_rows(f), 1);
}

static void savepoint_sent_ahead_isolates_a_refused_row(void **state)
{
    struct fixture *f = *state;
    struct er_err err;
    int round;

    /* What the activity log does: a refused row inside a savepoint is
     * rolled back to it, and the rest of the transaction commits. The
     * first round prepares the refused statement; in the second it goes
     * out behind the savepoint sent ahead, in one round trip, and its own
     * failure still is its caller's to undo, not the transaction's. */
    for (round = 0; round < 2; round++) {
        er_err_clear(&err);
        assert_int_equal(er_store_begin(f->store, &err), 0);
        assert_int_equal(add(f, NULL, &err), 0);
        assert_int_equal(er_store_savepoint(f->store, &err), 0);
        assert_int_equal(round == 0 || f->store->pipe_cnt > 0, 1);
        assert_int_not_equal(
            er_store__exec_cmd(f->store, "refused row",
                               "INSERT INTO envrun.outbox (topic, msg_value) "
                               "VALUES ($1, NULL)",
                               1, (const char *const[]){ TOPIC }, &err),
            0);
        assert_int_equal(err.cls, ER_ERRCLASS_SKIP);
        ER_HARNESS_ASSERT_CONTAINS(err.msg, "refused row");
        er_err_clear(&err);
        assert_int_equal(er_store_savepoint_rollback(f->store, &err), 0);
        assert_int_equal(add(f, NULL, &err), 0);
        assert_int_equal(er_store_savepoint_release(f->store, &err), 0);
        assert_int_equal(er_store_commit(f->store, &err), 0);
        assert_int_equal(outbox_rows(f), 2 * (round + 1));
    }
}

static void fence_sent_ahead_is_judged_before_the_commit(void **state)
{
    struct fixture *f = *state;
    struct er_processed_row row;
    struct er_err err;

    assert_int_equal(
        er_harness_pg_exec(f->h->db_url,
                           "INSERT INTO envrun.partition_fence "
                           "(topic, partition_id, generation, owner) "
                           "VALUES ('envrun.commands', 3, 7, 'other')",
                           0, NULL),
        0);
    /* Ours is generation 7: the step goes on and commits. */
    er_err_clear(&err);
    assert_int_equal(er_store_begin(f->store, &err), 0);
    assert_int_equal(
        er_store_journal_fence_check(f->store, "envrun.commands", 3, 7, &err),
        0);
    assert_int_equal(add(f, NULL, &err), 0);
    assert_int_equal(er_store_commit(f->store, &err), 0);
    assert_int_equal(outbox_rows(f), 1);
    /* Generation 6: the next statement that waits says fenced. */
    assert_int_equal(er_store_begin(f->store, &err), 0);
    assert_int_equal(
        er_store_journal_fence_check(f->store, "envrun.commands", 3, 6, &err),
        0);
    assert_int_equal(
        er_store_processed_get(f->store, "c-3", &f->arena, &row, &err),
        ER_EFENCED);
    ER_HARNESS_ASSERT_CONTAINS(err.msg, "generation 7, ours 6");
    er_store_rollback(f->store);
    /* Only writes behind it: the COMMIT is not sent before the fence is
     * judged, so nothing of the step is kept. */
    er_err_clear(&err);
    assert_int_equal(er_store_begin(f->store, &err), 0);
    assert_int_equal(
        er_store_journal_fence_check(f->store, "envrun.commands", 3, 6, &err),
        0);
    assert_int_equal(add(f, NULL, &err), 0);
    assert_int_equal(er_store_commit(f->store, &err), ER_EFENCED);
    assert_int_equal(err.cls, ER_ERRCLASS_SKIP);
    er_store_rollback(f->store);
    assert_int_equal(outbox_rows(f), 1);
    /* A partition never claimed has no row: -1, fenced too. */
    er_err_clear(&err);
    assert_int_equal(er_store_begin(f->store, &err), 0);
    assert_int_equal(
        er_store_journal_fence_check(f->store, "envrun.commands", 4, 7, &err),
        0);
    assert_int_equal(er_store_commit(f->store, &err), ER_EFENCED);
    ER_HARNESS_ASSERT_CONTAINS(err.msg, "generation -1, ours 7");
    er_store_rollback(f->store);
}

static void changed_table_under_a_prepared_statement_is_retried(void **state)
{
    struct fixture *f = *state;
    struct er_processed_row row;
    struct er_err err;

    er_err_clear(&err);
    assert_int_equal(
        er_store_processed_get(f->store, "c-1", &f->arena, &row, &err),
        ER_ENOTFOUND);
    /* Another session (a migration) changes a column the prepared
     * statement returns. */
    assert_int_equal(er_harness_pg_exec(f->h->db_url,
                                        "ALTER TABLE envrun.processed_commands "
                                        "ALTER COLUMN kind TYPE varchar(200)",
                                        0, NULL),
                     0);
    assert_int_not_equal(
        er_store_processed_get(f->store, "c-1", &f->arena, &row, &err),
        ER_ENOTFOUND);
    assert_int_equal(err.cls, ER_ERRCLASS_RETRY);
    ER_HARNESS_ASSERT_CONTAINS(err.msg, "processed lookup");
    /* The retry: a new session, the statement prepared again. */
    er_err_clear(&err);
    assert_int_equal(er_store_ensure(f->store, &err), 0);
    assert_int_equal(
        er_store_processed_get(f->store, "c-1", &f->arena, &row, &err),
        ER_ENOTFOUND);
}

static void lost_connection_forgets_its_statements(void **state)
{
    struct fixture *f = *state;
    struct er_processed_row row;
    struct er_err err;
    char pid[24];
    const char *params[] = { pid };

    er_err_clear(&err);
    assert_int_equal(
        er_store_processed_get(f->store, "c-2", &f->arena, &row, &err),
        ER_ENOTFOUND);
    assert_true(f->store->stmt_cnt > 0);
    snprintf(pid, sizeof(pid), "%d", PQbackendPID(f->store->conn));
    assert_int_equal(er_harness_pg_exec(f->h->db_url,
                                        "SELECT pg_terminate_backend($1::int)",
                                        1, params),
                     0);
    assert_int_not_equal(
        er_store_processed_get(f->store, "c-2", &f->arena, &row, &err),
        ER_ENOTFOUND);
    assert_int_equal(err.cls, ER_ERRCLASS_RETRY);
    /* A new session has none of the old one's statements: they are
     * prepared again, not executed by a name it does not know. */
    er_err_clear(&err);
    assert_int_equal(er_store_ensure(f->store, &err), 0);
    assert_int_equal(
        er_store_processed_get(f->store, "c-2", &f->arena, &row, &err),
        ER_ENOTFOUND);
    assert_int_equal(er_store_begin(f->store, &err), 0);
    assert_int_equal(add(f, NULL, &err), 0);
    assert_int_equal(er_store_commit(f->store, &err), 0);
    assert_int_equal(outbox_rows(f), 1);
}

static void lease_id_is_the_one_the_server_derived(void **state)
{
    struct fixture *f = *state;
    static const char *const inputs[][2] = {
        { "2b5e1c1e-4a5b-4c6d-8e9f-0a1b2c3d4e5f", "cmd-1" },
        { "2B5E1C1E-4A5B-4C6D-8E9F-0A1B2C3D4E5F", "cmd-1" },
        { "c", "\xc3\xa9t\xc3\xa9 \xe2\x82\xac" },
        { "", "" },
    };
    struct er_err err;
    size_t i;

    /* The statement the store ran before it derived the id itself. */
    for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        char id[37];
        json_t *row = er_harness_pg_query(
            f->h->db_url,
            "SELECT encode(set_byte(set_byte(h, 6, (get_byte(h, 6) & 15) | "
            "128), 8, (get_byte(h, 8) & 63) | 128), 'hex')::uuid::text AS id "
            "FROM (SELECT substring(sha256(convert_to('envrun-lease:' || $1 "
            "|| ':' || $2, 'UTF8')) FROM 1 FOR 16) AS h) AS d",
            2, inputs[i]);

        er_err_clear(&err);
        assert_int_equal(er_store_lease_id_for(f->store, inputs[i][0],
                                               inputs[i][1], id, &err),
                         0);
        assert_string_equal(id,
                            er_harness_json_str(json_array_get(row, 0), "id"));
        json_decref(row);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(writes_sent_ahead_commit_together,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(failure_sent_ahead_is_the_transactions,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(failed_commit_ends_the_transaction,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            savepoint_sent_ahead_isolates_a_refused_row, setup, teardown),
        cmocka_unit_test_setup_teardown(
            fence_sent_ahead_is_judged_before_the_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(
            changed_table_under_a_prepared_statement_is_retried, setup,
            teardown),
        cmocka_unit_test_setup_teardown(lost_connection_forgets_its_statements,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(lease_id_is_the_one_the_server_derived,
                                        setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
