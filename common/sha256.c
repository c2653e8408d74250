/* sha256: SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), for the
 * bridge: the gateway's checksum before an upload, and the bridge token a
 * run's host credential derives. Pure functions; thread-safe. */
#include <string.h>

#include "common/common.h"

static const uint32_t round_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, unsigned n)
{
    return x >> n | x << (32 - n);
}

static void compress(uint32_t h[8], const uint8_t block[64])
{
    uint32_t w[64];
    uint32_t v[8];
    size_t i;

    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
               (uint32_t)block[4 * i + 2] << 8 | block[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 =
            rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 =
            rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);

        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(v, h, sizeof(v));
    for (i = 0; i < 64; i++) {
        uint32_t s1 = rotr(v[4], 6) ^ rotr(v[4], 11) ^ rotr(v[4], 25);
        uint32_t ch = (v[4] & v[5]) ^ (~v[4] & v[6]);
        uint32_t t1 = v[7] + s1 + ch + round_k[i] + w[i];
        uint32_t s0 = rotr(v[0], 2) ^ rotr(v[0], 13) ^ rotr(v[0], 22);
        uint32_t maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);

        memmove(v + 1, v, 7 * sizeof(v[0]));
        v[4] += t1;
        v[0] = t1 + s0 + maj;
    }
    for (i = 0; i < 8; i++)
        h[i] += v[i];
}

void er_sha256_init(struct er_sha256 *s)
{
    static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372,
                                    0xa54ff53a, 0x510e527f, 0x9b05688c,
                                    0x1f83d9ab, 0x5be0cd19 };

    memcpy(s->h, iv, sizeof(iv));
    s->total = 0;
    s->used = 0;
}

void er_sha256_update(struct er_sha256 *s, const void *data, size_t len)
{
    const uint8_t *p = data;

    s->total += len;
    while (len > 0) {
        size_t n = 64 - s->used;

        if (n > len)
            n = len;
        memcpy(s->buf + s->used, p, n);
        s->used += n;
        p += n;
        len -= n;
        if (s->used == 64) {
            compress(s->h, s->buf);
            s->used = 0;
        }
    }
}

void er_sha256_final(struct er_sha256 *s, uint8_t out[ER_SHA256_LEN])
{
    uint64_t bits = s->total * 8;
    size_t i;

    s->buf[s->used++] = 0x80;
    if (s->used > 56) {
        memset(s->buf + s->used, 0, 64 - s->used);
        compress(s->h, s->buf);
        s->used = 0;
    }
    memset(s->buf + s->used, 0, 56 - s->used);
    for (i = 0; i < 8; i++)
        s->buf[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    compress(s->h, s->buf);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
    er_wipe(s, sizeof(*s));
}

void er_sha256(const void *data, size_t len, uint8_t out[ER_SHA256_LEN])
{
    struct er_sha256 s;

    er_sha256_init(&s);
    er_sha256_update(&s, data, len);
    er_sha256_final(&s, out);
}

void er_sha256_hex(const uint8_t digest[ER_SHA256_LEN],
                   char out[2 * ER_SHA256_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < ER_SHA256_LEN; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[2 * ER_SHA256_LEN] = '\0';
}

void er_hmac_sha256(const void *key, size_t key_len, const void *msg,
                    size_t msg_len, uint8_t out[ER_SHA256_LEN])
{
    uint8_t k[64];
    uint8_t pad[64];
    uint8_t inner[ER_SHA256_LEN];
    struct er_sha256 s;
    size_t i;

    memset(k, 0, sizeof(k));
    if (key_len > sizeof(k))
        er_sha256(key, key_len, k);
    else if (key_len > 0)
        memcpy(k, key, key_len);
    for (i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x36;
    er_sha256_init(&s);
    er_sha256_update(&s, pad, sizeof(pad));
    er_sha256_update(&s, msg, msg_len);
    er_sha256_final(&s, inner);
    for (i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x5c;
    er_sha256_init(&s);
    er_sha256_update(&s, pad, sizeof(pad));
    er_sha256_update(&s, inner, sizeof(inner));
    er_sha256_final(&s, out);
    er_wipe(k, sizeof(k));
    er_wipe(pad, sizeof(pad));
    er_wipe(inner, sizeof(inner));
}
