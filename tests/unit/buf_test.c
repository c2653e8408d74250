/* buf_test: the capped growable buffer of common/. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"

static void buf_appends_and_terminates(void **state)
{
    struct er_buf buf;

    (void)state;
    er_buf_init(&buf, 1024);
    assert_int_equal(er_buf_append(&buf, "abc", 3), 0);
    assert_int_equal(er_buf_printf(&buf, "-%d-%s", 42, "x"), 0);
    assert_int_equal(buf.len, 8);
    assert_string_equal((const char *)buf.data, "abc-42-x");
    er_buf_reset(&buf);
    assert_int_equal(buf.len, 0);
    assert_string_equal((const char *)buf.data, "");
    er_buf_fini(&buf);
}

static void buf_refuses_growth_past_cap(void **state)
{
    struct er_buf buf;
    char big[100];

    (void)state;
    memset(big, 'x', sizeof(big));
    er_buf_init(&buf, 150);
    assert_int_equal(er_buf_append(&buf, big, sizeof(big)), 0);
    assert_int_equal(er_buf_append(&buf, big, sizeof(big)), ER_E2BIG);
    assert_int_equal(buf.len, 100); /* unchanged by the refused append */
    assert_int_equal(er_buf_printf(&buf, "%s",
                                   "0123456789012345678901234567"
                                   "890123456789012345678901"),
                     ER_E2BIG);
    er_buf_fini(&buf);
}

static void buf_reports_allocation_failure(void **state)
{
    struct er_buf buf;

    (void)state;
    er_buf_init(&buf, 1024);
    er_mem_fail_at(1);
    assert_int_equal(er_buf_append(&buf, "abc", 3), ER_ENOMEM);
    er_mem_fail_at(0);
    assert_int_equal(er_buf_append(&buf, "abc", 3), 0);
    er_buf_fini(&buf);
}

static void buf_take_hands_over_the_data(void **state)
{
    struct er_buf buf;
    uint8_t *p;
    size_t len = 0;

    (void)state;
    er_buf_init(&buf, 64);
    p = er_buf_take(&buf, &len); /* an empty buffer gives "" */
    assert_non_null(p);
    assert_int_equal(len, 0);
    er_free(p);
    assert_int_equal(er_buf_append(&buf, "hi", 2), 0);
    p = er_buf_take(&buf, &len);
    assert_int_equal(len, 2);
    assert_string_equal((const char *)p, "hi");
    assert_null(buf.data);
    er_free(p);
    er_buf_fini(&buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(buf_appends_and_terminates),
        cmocka_unit_test(buf_refuses_growth_past_cap),
        cmocka_unit_test(buf_reports_allocation_failure),
        cmocka_unit_test(buf_take_hands_over_the_data),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
