/* stream_test: the host's view of a stream_v1 frame from the gateway
 * (er_bridge_stream_frame_parse): ready with its port and pid, abandon
 * with its id, request (a body may hold NUL bytes), and everything else
 * bad; ids are bounded and cut at a character boundary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "bridge/bridge.h"

#define UUID  "0f8e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
#define READY "{\"type\":\"ready\",\"port\":43123,\"pid\":42}"

static enum er_bridge_frame_type parse(const char *text,
                                       struct er_bridge_frame *frame)
{
    return er_bridge_stream_frame_parse(text, strlen(text), frame);
}

static void frame_ready_gives_port_and_pid(void **state)
{
    struct er_bridge_frame f;

    (void)state;
    assert_int_equal(parse(READY, &f), ER_BRIDGE_FRAME_READY);
    assert_int_equal(f.port, 43123);
    assert_int_equal(f.pid, 42);
    assert_false(f.has_id);
    assert_string_equal(f.id, "");
    /* pid is optional. */
    assert_int_equal(parse("{\"type\":\"ready\",\"port\":1,\"pid\":\"x\"}", &f),
                     ER_BRIDGE_FRAME_READY);
    assert_int_equal(f.port, 1);
    assert_int_equal(f.pid, 0);
    assert_int_equal(parse("{\"type\":\"ready\",\"port\":65535}", &f),
                     ER_BRIDGE_FRAME_READY);
}

static void frame_ready_without_a_valid_port_is_set_apart(void **state)
{
    static const char *const bad[] = {
        "{\"type\":\"ready\"}",
        "{\"type\":\"ready\",\"port\":0,\"pid\":1}",
        "{\"type\":\"ready\",\"port\":-1}",
        "{\"type\":\"ready\",\"port\":65536}",
        "{\"type\":\"ready\",\"port\":4294967297}",
        "{\"type\":\"ready\",\"port\":\"8080\"}",
        "{\"type\":\"ready\",\"port\":8080.0}",
    };
    struct er_bridge_frame f;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(parse(bad[i], &f), ER_BRIDGE_FRAME_READY_BAD);
        assert_int_equal(f.port, 0);
        assert_int_equal(f.pid, 0);
    }
}

static void frame_abandon_needs_an_id(void **state)
{
    struct er_bridge_frame f;

    (void)state;
    assert_int_equal(parse("{\"type\":\"abandon\",\"id\":\"" UUID "\"}", &f),
                     ER_BRIDGE_FRAME_ABANDON);
    assert_true(f.has_id);
    assert_string_equal(f.id, UUID);
    assert_int_equal(parse("{\"type\":\"abandon\"}", &f), ER_BRIDGE_FRAME_BAD);
    assert_int_equal(parse("{\"type\":\"abandon\",\"id\":7}", &f),
                     ER_BRIDGE_FRAME_BAD);
    assert_false(f.has_id);
    assert_int_equal(parse("{\"type\":\"abandon\",\"id\":\"a\\u0000b\"}", &f),
                     ER_BRIDGE_FRAME_BAD);
    assert_false(f.has_id);
    assert_string_equal(f.id, "");
}

static void frame_request_may_carry_nul_bytes_in_its_body(void **state)
{
    /* What the gateway writes for a JSON body holding a NUL byte: before,
     * the host took it for a bad frame and the request was never answered
     * (queue_v1 forwards it). */
    static const char req[] =
        "{\"type\":\"request\",\"id\":\"" UUID "\",\"method\":\"PUT\","
        "\"path\":\"/api/x\",\"query\":\"\",\"headers\":{\"content-type\":"
        "\"application/json\"},\"body\":\"a\\u0000b\","
        "\"createdAt\":\"2024-05-01T12:00:00.000Z\"}";
    struct er_bridge_envelope env;
    struct er_bridge_frame f;
    struct er_err err;
    int rc;

    (void)state;
    assert_int_equal(parse(req, &f), ER_BRIDGE_FRAME_REQUEST);
    assert_true(f.has_id);
    assert_string_equal(f.id, UUID);
    rc = er_bridge_envelope_parse(req, strlen(req), 1024, &env, &err);
    assert_int_equal(rc, 0);
    assert_int_equal(env.body_len, 3);
    assert_memory_equal(env.body, "a\0b", 3);
    er_bridge_envelope_fini(&env);
    /* A request without an id is still one (nobody gets an answer). */
    assert_int_equal(parse("{\"type\":\"request\"}", &f),
                     ER_BRIDGE_FRAME_REQUEST);
    assert_false(f.has_id);
}

static void frame_ids_are_bounded_at_a_character_boundary(void **state)
{
    char text[1024];
    char id[512];
    struct er_bridge_frame f;
    size_t i;

    (void)state;
    /* The longest id an envelope takes (128 bytes) is kept whole. */
    for (i = 0; i < 64; i++)
        memcpy(id + 2 * i, "\xc3\xa9", 2);
    id[128] = '\0';
    snprintf(text, sizeof(text), "{\"type\":\"request\",\"id\":\"%s\"}", id);
    assert_int_equal(parse(text, &f), ER_BRIDGE_FRAME_REQUEST);
    assert_string_equal(f.id, id);
    /* One byte more: cut before the character the limit splits. */
    memmove(id + 1, id, 129);
    id[0] = 'a';
    snprintf(text, sizeof(text), "{\"type\":\"request\",\"id\":\"%s\"}", id);
    assert_int_equal(parse(text, &f), ER_BRIDGE_FRAME_REQUEST);
    assert_int_equal(strlen(f.id), 127);
    assert_memory_equal(f.id, id, 127);
    /* ASCII: cut at the limit. */
    memset(id, 'x', 300);
    id[300] = '\0';
    snprintf(text, sizeof(text), "{\"type\":\"abandon\",\"id\":\"%s\"}", id);
    assert_int_equal(parse(text, &f), ER_BRIDGE_FRAME_ABANDON);
    assert_int_equal(strlen(f.id), ER_BRIDGE_ENVELOPE_ID_MAX);
}

static void frame_rejects_what_is_not_a_typed_object(void **state)
{
    static const char *const bad[] = {
        "",
        "{",
        "null",
        "[\"ready\"]",
        "{}",
        "{\"type\":7}",
        "{\"type\":\"response\",\"id\":\"x\"}",
        "{\"type\":\"ready\\u0000\",\"port\":80}",
        "{\"type\":\"ready\",\"port\":80} {}",
        "{\"type\":\"READY\",\"port\":80}",
    };
    struct er_bridge_frame f;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(parse(bad[i], &f), ER_BRIDGE_FRAME_BAD);
    assert_int_equal(er_bridge_stream_frame_parse(NULL, 0, &f),
                     ER_BRIDGE_FRAME_BAD);
    assert_false(f.has_id);
    /* Only len bytes are read. */
    assert_int_equal(er_bridge_stream_frame_parse(READY, 10, &f),
                     ER_BRIDGE_FRAME_BAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(frame_ready_gives_port_and_pid),
        cmocka_unit_test(frame_ready_without_a_valid_port_is_set_apart),
        cmocka_unit_test(frame_abandon_needs_an_id),
        cmocka_unit_test(frame_request_may_carry_nul_bytes_in_its_body),
        cmocka_unit_test(frame_ids_are_bounded_at_a_character_boundary),
        cmocka_unit_test(frame_rejects_what_is_not_a_typed_object),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
