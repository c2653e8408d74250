/* timeid_test: timestamps and UUIDs of common/. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"

static void iso_formats_utc_with_millis(void **state)
{
    char out[32];

    (void)state;
    er_time_iso(0, out);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    er_time_iso(1795699986510LL, out);
    assert_string_equal(out, "2026-11-26T13:33:06.510Z");
    er_time_iso(-1, out); /* one ms before the epoch */
    assert_string_equal(out, "1969-12-31T23:59:59.999Z");
}

static void uuid_v4_has_version_and_variant(void **state)
{
    char a[37];
    char b[37];

    (void)state;
    assert_int_equal(er_uuid_v4(a), 0);
    assert_int_equal(er_uuid_v4(b), 0);
    assert_true(er_uuid_is_valid(a, strlen(a)));
    assert_int_equal(a[14], '4');
    assert_non_null(strchr("89ab", a[19]));
    assert_string_not_equal(a, b);
}

static void uuid_shape_is_checked(void **state)
{
    const char *ok = "1d037e4c-7c53-47b6-a102-ae9a5ebe0c35";

    (void)state;
    assert_true(er_uuid_is_valid(ok, 36));
    assert_true(er_uuid_is_valid("1D037E4C-7C53-47B6-A102-AE9A5EBE0C35", 36));
    assert_false(er_uuid_is_valid(ok, 35));
    assert_false(er_uuid_is_valid("1d037e4c-7c53-47b6-a102-ae9a5ebe0c3g", 36));
    assert_false(er_uuid_is_valid("1d037e4c07c53-47b6-a102-ae9a5ebe0c35", 36));
    assert_false(er_uuid_is_valid("", 0));
    assert_false(er_uuid_is_valid(NULL, 36));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(iso_formats_utc_with_millis),
        cmocka_unit_test(uuid_v4_has_version_and_variant),
        cmocka_unit_test(uuid_shape_is_checked),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
