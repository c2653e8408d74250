/* base64_test: RFC 4648's test vectors both ways, round trips of every
 * length up to 64, and the decoder refusing every non-canonical form
 * (upstream.md B3: re-encoding must give back the same text). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"

static void rfc4648_vectors(void **state)
{
    static const char *const plain[] = { "",     "f",     "fo",    "foo",
                                         "foob", "fooba", "foobar" };
    static const char *const coded[] = {
        "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"
    };
    char out[16];
    uint8_t back[16];
    size_t n;
    size_t i;

    (void)state;
    for (i = 0; i < 7; i++) {
        er_base64_encode(plain[i], strlen(plain[i]), out);
        assert_string_equal(out, coded[i]);
        assert_int_equal(er_base64_len(strlen(plain[i])), strlen(coded[i]));
        assert_int_equal(er_base64_decode(coded[i], strlen(coded[i]), back,
                                          sizeof(back), &n),
                         0);
        assert_int_equal(n, strlen(plain[i]));
        assert_memory_equal(back, plain[i], n);
    }
}

static void every_length_round_trips(void **state)
{
    uint8_t data[64];
    uint8_t back[64];
    size_t len;
    size_t n;

    (void)state;
    for (len = 0; len < sizeof(data); len++)
        data[len] = (uint8_t)(len * 37 + 11);
    for (len = 0; len <= sizeof(data); len++) {
        char *text = er_base64_dup(data, len);

        assert_non_null(text);
        assert_int_equal(
            er_base64_decode(text, strlen(text), back, sizeof(back), &n), 0);
        assert_int_equal(n, len);
        assert_memory_equal(back, data, len);
        er_free(text);
    }
}

static void non_canonical_is_refused(void **state)
{
    static const char *const bad[] = {
        "Zg=",  "Zg",     "Zh==", "Zm9=", "Zg==Zg==", "Z===",
        "====", "Zm9v\n", "Zm-v", "Zm_v", "Zm9 ",     "Zg=a",
    };
    uint8_t back[16];
    size_t n;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (er_base64_decode(bad[i], strlen(bad[i]), back, sizeof(back), &n) !=
            ER_EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_int_equal(er_base64_decode("Zm9vYmFy", 8, back, 5, &n), ER_E2BIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc4648_vectors),
        cmocka_unit_test(every_length_round_trips),
        cmocka_unit_test(non_canonical_is_refused),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
