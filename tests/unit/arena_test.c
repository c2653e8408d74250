/* arena_test: the per-command arena of common/. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"

static void arena_gives_zeroed_aligned_memory(void **state)
{
    struct er_arena arena;
    unsigned char *p;
    size_t i;

    (void)state;
    er_arena_init(&arena, 1 << 20);
    p = er_arena_alloc(&arena, 33);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 16, 0);
    for (i = 0; i < 33; i++)
        assert_int_equal(p[i], 0);
    p = er_arena_alloc(&arena, 40000); /* bigger than a chunk */
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 16, 0);
    memset(p, 0xab, 40000);
    er_arena_fini(&arena);
}

static void arena_copies_and_formats_strings(void **state)
{
    struct er_arena arena;

    (void)state;
    er_arena_init(&arena, 1 << 20);
    assert_string_equal(er_arena_strdup(&arena, "lease"), "lease");
    assert_string_equal(er_arena_strndup(&arena, "leased", 5), "lease");
    assert_string_equal(er_arena_printf(&arena, "%s-%d", "v", 3), "v-3");
    er_arena_fini(&arena);
}

static void arena_refuses_past_its_cap(void **state)
{
    struct er_arena arena;

    (void)state;
    er_arena_init(&arena, 1000);
    assert_non_null(er_arena_alloc(&arena, 900));
    assert_null(er_arena_alloc(&arena, 200));
    er_arena_reset(&arena);
    assert_int_equal(arena.total, 0);
    assert_non_null(er_arena_alloc(&arena, 200));  /* reset frees the cap */
    assert_null(er_arena_alloc(&arena, SIZE_MAX)); /* no overflow */
    er_arena_fini(&arena);
}

static void arena_survives_allocation_failure(void **state)
{
    struct er_arena arena;

    (void)state;
    er_arena_init(&arena, 1 << 20);
    er_mem_fail_at(1);
    assert_null(er_arena_alloc(&arena, 8));
    er_mem_fail_at(0);
    assert_non_null(er_arena_alloc(&arena, 8));
    er_arena_fini(&arena);
}

static void arena_trim_lets_a_big_chunk_go(void **state)
{
    struct er_arena arena;
    struct er_buf buf;
    char block[1000];
    int i;

    (void)state;
    memset(block, 'b', sizeof(block));
    er_arena_init(&arena, 1 << 20);
    assert_non_null(er_arena_alloc(&arena, 100));
    er_arena_trim(&arena, 64 * 1024); /* a small chunk is kept */
    assert_non_null(arena.head);
    assert_non_null(er_arena_alloc(&arena, 200 * 1024));
    er_arena_trim(&arena, 64 * 1024); /* a big one is not */
    assert_null(arena.head);
    assert_int_equal(arena.total, 0);
    assert_string_equal(er_arena_strdup(&arena, "after"), "after");
    er_arena_fini(&arena);

    er_buf_init(&buf, 1 << 20);
    assert_int_equal(er_buf_append(&buf, "x", 1), 0);
    er_buf_trim(&buf, 64 * 1024);
    assert_non_null(buf.data);
    assert_int_equal(buf.len, 0);
    for (i = 0; i < 100; i++)
        assert_int_equal(er_buf_append(&buf, block, sizeof(block)), 0);
    er_buf_trim(&buf, 64 * 1024);
    assert_null(buf.data);
    assert_int_equal(buf.cap, 0);
    assert_int_equal(er_buf_append(&buf, "y", 1), 0);
    assert_int_equal(buf.len, 1);
    er_buf_fini(&buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(arena_gives_zeroed_aligned_memory),
        cmocka_unit_test(arena_copies_and_formats_strings),
        cmocka_unit_test(arena_refuses_past_its_cap),
        cmocka_unit_test(arena_survives_allocation_failure),
        cmocka_unit_test(arena_trim_lets_a_big_chunk_go),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
