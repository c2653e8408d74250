/* sha256_test: FIPS 180-4's SHA-256 examples, a million 'a's fed in
 * uneven pieces, and RFC 4231's HMAC-SHA256 test cases (short key, long
 * key past the block size). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"

static void digest_hex(const void *data, size_t len, char *hex)
{
    uint8_t d[ER_SHA256_LEN];

    er_sha256(data, len, d);
    er_sha256_hex(d, hex);
}

static void fips_examples(void **state)
{
    char hex[2 * ER_SHA256_LEN + 1];
    const char *two =
        "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

    (void)state;
    digest_hex("", 0, hex);
    assert_string_equal(
        hex,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    digest_hex("abc", 3, hex);
    assert_string_equal(
        hex,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    digest_hex(two, strlen(two), hex);
    assert_string_equal(
        hex,
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void million_a_in_pieces(void **state)
{
    static char chunk[1000];
    struct er_sha256 s;
    uint8_t d[ER_SHA256_LEN];
    char hex[2 * ER_SHA256_LEN + 1];
    size_t done = 0;
    size_t step = 1;

    (void)state;
    memset(chunk, 'a', sizeof(chunk));
    er_sha256_init(&s);
    while (done < 1000000) {
        size_t n = step < sizeof(chunk) ? step : sizeof(chunk);

        if (n > 1000000 - done)
            n = 1000000 - done;
        er_sha256_update(&s, chunk, n);
        done += n;
        step = step % 997 + 63; /* pieces across block edges */
    }
    er_sha256_final(&s, d);
    er_sha256_hex(d, hex);
    assert_string_equal(
        hex,
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

static void rfc4231_cases(void **state)
{
    uint8_t key[131];
    uint8_t d[ER_SHA256_LEN];
    char hex[2 * ER_SHA256_LEN + 1];
    const char *big = "Test Using Larger Than Block-Size Key - Hash Key First";

    (void)state;
    memset(key, 0x0b, 20);
    er_hmac_sha256(key, 20, "Hi There", 8, d);
    er_sha256_hex(d, hex);
    assert_string_equal(
        hex,
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    er_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, d);
    er_sha256_hex(d, hex);
    assert_string_equal(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    memset(key, 0xaa, sizeof(key));
    er_hmac_sha256(key, sizeof(key), big, strlen(big), d);
    er_sha256_hex(d, hex);
    assert_string_equal(
        hex,
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fips_examples),
        cmocka_unit_test(million_a_in_pieces),
        cmocka_unit_test(rfc4231_cases),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
