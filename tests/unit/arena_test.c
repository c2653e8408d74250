/* arena_test: the per-command arena of common/, and giving idle memory
 * back (er_arena_trim, er_buf_trim, er_stack_trim). */
#define _GNU_SOURCE /* pthread_getattr_np, mincore */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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

/* How many pages of the calling thread's stack below its frame are
 * resident (mincore). */
static size_t stack_pages_resident(void)
{
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    pthread_attr_t attr;
    void *low = NULL;
    size_t size = 0;
    size_t len;
    size_t cnt = 0;
    size_t i;
    unsigned char *vec;

    assert_int_equal(pthread_getattr_np(pthread_self(), &attr), 0);
    assert_int_equal(pthread_attr_getstack(&attr, &low, &size), 0);
    pthread_attr_destroy(&attr);
    len = ((here & ~(page - 1)) - (uintptr_t)low);
    vec = malloc(len / page + 1);
    assert_non_null(vec);
    assert_int_equal(mincore(low, len, vec), 0);
    for (i = 0; i < len / page; i++)
        cnt += vec[i] & 1;
    free(vec);
    return cnt;
}

/* A deep frame: 512 KiB of stack written. */
static __attribute__((noinline)) int touch_stack(void)
{
    volatile char deep[512 * 1024];
    size_t i;

    for (i = 0; i < sizeof(deep); i += 1024)
        deep[i] = (char)i;
    return deep[4096];
}

static void *stack_trim_thread(void *arg)
{
    size_t *out = arg;

    touch_stack();
    out[0] = stack_pages_resident();
    er_stack_trim();
    out[1] = stack_pages_resident();
    touch_stack(); /* the pages come back when used again */
    out[2] = stack_pages_resident();
    return NULL;
}

static void stack_trim_gives_back_the_pages_below_the_frame(void **state)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages[3] = { 0, 0, 0 };
    pthread_t tid;

    (void)state;
    assert_int_equal(pthread_create(&tid, NULL, stack_trim_thread, pages), 0);
    assert_int_equal(pthread_join(tid, NULL), 0);
    assert_true(pages[0] >= 400 * 1024 / page);
    /* At most the 16 KiB margin stays. */
    assert_true(pages[1] <= 16 * 1024 / page + 1);
    assert_true(pages[2] >= 400 * 1024 / page);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(arena_gives_zeroed_aligned_memory),
        cmocka_unit_test(arena_copies_and_formats_strings),
        cmocka_unit_test(arena_refuses_past_its_cap),
        cmocka_unit_test(arena_survives_allocation_failure),
        cmocka_unit_test(arena_trim_lets_a_big_chunk_go),
        cmocka_unit_test(stack_trim_gives_back_the_pages_below_the_frame),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
