/* token_relay_test: a masked bridge token is put back from memory, or from
 * the realize command read back through the fetch function (here a table
 * of encoded messages standing in for the commands topic), and only from
 * the command the note names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "bridge/bridge.h"
#include "schemas/schemas.h"
#include "worker/token_relay_int.h"

#define CMD_ID  "cmd-realize-1"
#define COMP_ID "2b5e1c1e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
#define RUN_ID  "7d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a"
#define CRED    "host-credential-of-the-run"
#define TOPIC   "envrun.commands"
#define RESULT                                                             \
    "xx{\"bridge\":{\"env\":{\"PAPERCLIP_API_KEY\":\"" ER_TOKEN_RELAY_MASK \
    "\",\"PAPERCLIP_API_URL\":\"http://127.0.0.1:4100\"}}}yy"

/* The stand-in commands topic: one message at OFFSET of partition 2. */
#define PARTITION 2
#define OFFSET    41
static struct er_buf message;
static int fetch_rc; /* what the fetch answers instead, when not 0 */
static int fetch_cnt;

static int fetch(void *arg, const char *topic, int32_t partition,
                 int64_t offset, struct er_buf *value, struct er_err *err)
{
    (void)arg;
    fetch_cnt++;
    if (fetch_rc != 0)
        return er_err_set(err, fetch_rc,
                          fetch_rc == ER_ETIMEDOUT ? ER_ERRCLASS_RETRY
                                                   : ER_ERRCLASS_FATAL,
                          "fetch refused");
    if (strcmp(topic, TOPIC) != 0 || partition != PARTITION || offset != OFFSET)
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_SKIP, "no message");
    er_buf_reset(value);
    return er_buf_append(value, message.data, message.len);
}

static void put_command(enum er_cmd_kind kind, const char *command_id,
                        const char *company_id, const char *cred)
{
    struct er_run_command cmd;
    struct er_err err;

    memset(&cmd, 0, sizeof(cmd));
    cmd.command_id = (char *)(uintptr_t)command_id;
    cmd.issued_at_ms = 1700000000000;
    cmd.company_id = (char *)(uintptr_t)company_id;
    cmd.agent_id = "agent-1";
    cmd.heartbeat_run_id = RUN_ID;
    cmd.kind = kind;
    cmd.adapter_type = "claude_local";
    cmd.lease_id = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d";
    cmd.workspace_json = "{\"cwd\":\"/w\"}";
    cmd.requested_mode = "isolated";
    cmd.selected_environment_id = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6e";
    if (cred != NULL)
        assert_int_equal(er_secret_set(&cmd.host_api_token, cred, strlen(cred)),
                         0);
    er_buf_reset(&message);
    er_err_clear(&err);
    if (er_codec_command_encode(&cmd, &message, &err) != 0)
        fail_msg("encode: %s", err.msg);
    er_secret_fini(&cmd.host_api_token);
}

static void want_token(char out[ER_BRIDGE_TOKEN_LEN + 1])
{
    struct er_secret cred = { 0 };

    assert_int_equal(er_secret_set(&cred, CRED, strlen(CRED)), 0);
    assert_int_equal(er_bridge_token_derive(&cred, RUN_ID, out), 0);
    er_secret_fini(&cred);
}

static const char *note(struct er_arena *arena)
{
    const char *from =
        er_token_relay_from(arena, TOPIC, PARTITION, OFFSET, CMD_ID, COMP_ID);

    assert_non_null(from);
    return from;
}

static int setup(void **state)
{
    (void)state;
    er_buf_init(&message, ER_CMD_VALUE_MAX_BYTES);
    fetch_rc = 0;
    fetch_cnt = 0;
    er_token_relay_clear();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    er_buf_fini(&message);
    er_token_relay_clear();
    return 0;
}

/* Fill a copy of RESULT for from; the copy's text (static) and rc. */
static int fill(const char *from, char *copy, struct er_err *err)
{
    memcpy(copy, RESULT, sizeof(RESULT));
    er_err_clear(err);
    return er_token_relay_fill(from, (uint8_t *)copy, sizeof(RESULT) - 1, fetch,
                               NULL, err);
}

static void find_needs_the_key_and_the_whole_value(void **state)
{
    static const char text[] = "{\"PAPERCLIP_API_KEY\":\"abc\",\"X\":\"abc\"}";
    const uint8_t *p = (const uint8_t *)text;

    (void)state;
    assert_int_equal(er_token_relay_find(p, sizeof(text) - 1, "abc"), 22);
    assert_int_equal(er_token_relay_find(p, sizeof(text) - 1, "ab"), -1);
    assert_int_equal(er_token_relay_find(p, 24, "abc"), -1);
    assert_int_equal(er_token_relay_find(p, sizeof(text) - 1, "abcd"), -1);
    assert_int_equal(strlen(ER_TOKEN_RELAY_MASK), ER_BRIDGE_TOKEN_LEN);
}

static void filled_from_memory_once(void **state)
{
    struct er_arena arena;
    char copy[sizeof(RESULT)];
    char want[ER_BRIDGE_TOKEN_LEN + 1];
    char *at;
    struct er_err err;
    const char *from;

    (void)state;
    er_arena_init(&arena, 1 << 20);
    from = note(&arena);
    er_token_relay_put(from, "0123456789abcdefghijklmnopqrstuv");
    assert_int_equal(fill(from, copy, &err), 0);
    assert_int_equal(fetch_cnt, 0);
    at = strstr(copy, "0123456789abcdefghijklmnopqrstuv\"");
    assert_non_null(at);
    assert_null(strstr(copy, ER_TOKEN_RELAY_MASK));
    /* Taken: a second fill reads Kafka, and gets the command's token. */
    put_command(ER_CMD_REALIZE, CMD_ID, COMP_ID, CRED);
    assert_int_equal(fill(from, copy, &err), 0);
    assert_int_equal(fetch_cnt, 1);
    want_token(want);
    assert_non_null(strstr(copy, want));
    assert_int_equal(strlen(copy), sizeof(RESULT) - 1);
    assert_int_equal(strncmp(copy, "xx{", 3), 0);
    er_arena_fini(&arena);
}

/* The outbox keeps the note as jsonb, which reorders and respaces it:
 * memory still knows it. */
static void note_known_however_its_json_is_written(void **state)
{
    struct er_arena arena;
    char copy[sizeof(RESULT)];
    char respaced[600];
    struct er_err err;
    const char *from;
    json_t *parsed;
    char *text;

    (void)state;
    er_arena_init(&arena, 1 << 20);
    from = note(&arena);
    er_token_relay_put(from, "0123456789abcdefghijklmnopqrstuv");
    parsed = json_loads(from, 0, NULL);
    assert_non_null(parsed);
    text = json_dumps(parsed, JSON_INDENT(2));
    assert_non_null(text);
    snprintf(respaced, sizeof(respaced), "%s", text);
    free(text);
    json_decref(parsed);
    assert_string_not_equal(respaced, from);
    assert_int_equal(fill(respaced, copy, &err), 0);
    assert_int_equal(fetch_cnt, 0);
    assert_non_null(strstr(copy, "0123456789abcdefghijklmnopqrstuv\""));
    er_arena_fini(&arena);
}

static void notes_are_this_process_s(void **state)
{
    struct er_arena arena;
    const char *a;
    const char *b;
    const char *c;
    json_t *other;
    char *text;

    (void)state;
    er_arena_init(&arena, 1 << 20);
    a = note(&arena);
    b = note(&arena);
    c = er_token_relay_from(&arena, TOPIC, PARTITION, OFFSET + 1, CMD_ID,
                            COMP_ID);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_non_null(strstr(a, "\"writer\":\""));
    assert_non_null(strstr(a, "\"offset\":41"));
    er_token_relay_put(a, "0123456789abcdefghijklmnopqrstuv");
    /* The same note from another process does not take it. */
    other = json_loads(a, 0, NULL);
    assert_non_null(other);
    assert_int_equal(
        json_object_set_new(other, "writer", json_string("another-process")),
        0);
    text = json_dumps(other, JSON_COMPACT);
    assert_non_null(text);
    assert_false(
        er_token_relay_take(text, (char[ER_BRIDGE_TOKEN_LEN + 1]){ 0 }));
    free(text);
    json_decref(other);
    assert_true(er_token_relay_take(a, (char[ER_BRIDGE_TOKEN_LEN + 1]){ 0 }));
    er_arena_fini(&arena);
}

static void restored_only_from_the_noted_command(void **state)
{
    struct er_arena arena;
    char copy[sizeof(RESULT)];
    struct er_err err;
    const char *from;

    (void)state;
    er_arena_init(&arena, 1 << 20);
    from = note(&arena);
    /* Another company's command at that offset. */
    put_command(ER_CMD_REALIZE, CMD_ID, "3c6f2d2f-5b6c-4d7e-9fa0-1b2c3d4e5f60",
                CRED);
    assert_int_equal(fill(from, copy, &err), ER_EBADMSG);
    assert_int_equal(err.cls, ER_ERRCLASS_SKIP);
    assert_non_null(strstr(err.msg, "holds another command"));
    assert_non_null(strstr(copy, ER_TOKEN_RELAY_MASK));
    /* Another command id; another kind; no credential. */
    put_command(ER_CMD_REALIZE, "cmd-other", COMP_ID, CRED);
    assert_int_equal(fill(from, copy, &err), ER_EBADMSG);
    put_command(ER_CMD_ACQUIRE, CMD_ID, COMP_ID, NULL);
    assert_int_equal(fill(from, copy, &err), ER_EBADMSG);
    put_command(ER_CMD_REALIZE, CMD_ID, COMP_ID, NULL);
    assert_int_equal(fill(from, copy, &err), ER_EBADMSG);
    assert_non_null(strstr(err.msg, "no hostApiToken"));
    /* Not a command at all. */
    er_buf_reset(&message);
    assert_int_equal(er_buf_append(&message, "garbage", 7), 0);
    assert_int_equal(fill(from, copy, &err), ER_EBADMSG);
    assert_non_null(strstr(err.msg, "no longer decodes"));
    assert_non_null(strstr(copy, ER_TOKEN_RELAY_MASK));
    /* Never the credential in a message. */
    assert_null(strstr(err.msg, CRED));
    er_arena_fini(&arena);
}

static void gone_is_for_good_unreadable_is_for_now(void **state)
{
    struct er_arena arena;
    char copy[sizeof(RESULT)];
    struct er_err err;
    const char *from;

    (void)state;
    er_arena_init(&arena, 1 << 20);
    from = er_token_relay_from(&arena, TOPIC, PARTITION, OFFSET + 7, CMD_ID,
                               COMP_ID);
    assert_int_equal(fill(from, copy, &err), ER_ENOTFOUND);
    assert_int_equal(err.cls, ER_ERRCLASS_SKIP);
    assert_non_null(strstr(err.msg, "cannot be read"));
    fetch_rc = ER_ETIMEDOUT;
    assert_int_equal(fill(from, copy, &err), ER_ETIMEDOUT);
    assert_int_equal(err.cls, ER_ERRCLASS_RETRY);
    assert_non_null(strstr(copy, ER_TOKEN_RELAY_MASK));
    /* A reader that cannot be made (its failure is FATAL for the fetcher)
     * is about the worker, not the row: for now too. */
    fetch_rc = ER_EIO;
    assert_int_equal(fill(from, copy, &err), ER_EIO);
    assert_int_equal(err.cls, ER_ERRCLASS_RETRY);
    assert_non_null(strstr(err.msg, "cannot be read now"));
    assert_non_null(strstr(copy, ER_TOKEN_RELAY_MASK));
    /* Not read from Kafka: only memory could fill it. */
    fetch_rc = 0;
    from = er_token_relay_from(&arena, TOPIC, -1, -1, CMD_ID, COMP_ID);
    assert_int_equal(fill(from, copy, &err), ER_ENOTFOUND);
    assert_int_equal(err.cls, ER_ERRCLASS_SKIP);
    assert_int_equal(fill("not json", copy, &err), ER_EINVAL);
    assert_int_equal(fill("{\"topic\":1}", copy, &err), ER_EINVAL);
    er_arena_fini(&arena);
}

static void nothing_masked_nothing_done(void **state)
{
    uint8_t text[] = "{\"PAPERCLIP_API_KEY\":\"plain\"}";
    struct er_err err;

    (void)state;
    er_err_clear(&err);
    assert_int_equal(er_token_relay_fill("not json", text, sizeof(text) - 1,
                                         fetch, NULL, &err),
                     0);
    assert_int_equal(fetch_cnt, 0);
    assert_string_equal((char *)text, "{\"PAPERCLIP_API_KEY\":\"plain\"}");
}

static void memory_is_bounded(void **state)
{
    struct er_arena arena;
    char token[ER_BRIDGE_TOKEN_LEN + 1];
    const char *first;
    const char *last = NULL;
    int i;

    (void)state;
    er_arena_init(&arena, 4 << 20);
    first = er_token_relay_from(&arena, TOPIC, 0, 0, CMD_ID, COMP_ID);
    er_token_relay_put(first, "0123456789abcdefghijklmnopqrstuv");
    for (i = 1; i <= 1024; i++) {
        last = er_token_relay_from(&arena, TOPIC, 0, i, CMD_ID, COMP_ID);
        er_token_relay_put(last, "0123456789abcdefghijklmnopqrstuv");
    }
    /* The oldest made room; the newest is there. */
    assert_false(er_token_relay_take(first, token));
    assert_true(er_token_relay_take(last, token));
    assert_false(er_token_relay_take(last, token));
    /* A token of the wrong length is not kept. */
    er_token_relay_put(first, "short");
    assert_false(er_token_relay_take(first, token));
    er_arena_fini(&arena);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(find_needs_the_key_and_the_whole_value),
        cmocka_unit_test_setup_teardown(filled_from_memory_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(notes_are_this_process_s, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(note_known_however_its_json_is_written,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(restored_only_from_the_noted_command,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(gone_is_for_good_unreadable_is_for_now,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(nothing_masked_nothing_done, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(memory_is_bounded, setup, teardown),
    };

    struct er_err err;
    int failed;

    if (er_codec_init(&err) != 0) {
        fprintf(stderr, "codec: %s\n", err.msg);
        return 1;
    }
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    er_codec_shutdown();
    return failed;
}
