/* base64: the standard alphabet with padding (RFC 4648 section 4), as the
 * bridge's envelopes and the sandbox uploads carry it. The decoder takes
 * only the canonical form (upstream.md B3): what encoding the bytes again
 * gives back exactly. Pure functions; thread-safe. */
#include <string.h>

#include "common/common.h"

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t er_base64_len(size_t len)
{
    return (len + 2) / 3 * 4;
}

void er_base64_encode(const void *data, size_t len, char *out)
{
    const unsigned char *p = data;
    size_t i;
    size_t o = 0;

    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];

        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16;

        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
}

char *er_base64_dup(const void *data, size_t len)
{
    char *out = er_malloc(er_base64_len(len) + 1);

    if (out != NULL)
        er_base64_encode(data, len, out);
    return out;
}

static int value_of(unsigned char c)
{
    const char *at = c != '\0' ? strchr(alphabet, c) : NULL;

    return at != NULL ? (int)(at - alphabet) : -1;
}

int er_base64_decode(const char *text, size_t len, void *out, size_t max,
                     size_t *out_len)
{
    unsigned char *o = out;
    size_t pad = 0;
    size_t n;
    size_t i;

    *out_len = 0;
    if (len % 4 != 0)
        return ER_EINVAL;
    while (pad < 2 && len > pad && text[len - 1 - pad] == '=')
        pad++;
    n = len / 4 * 3 - pad;
    if (n > max)
        return ER_E2BIG;
    for (i = 0; i < len; i += 4) {
        int v[4];
        uint32_t w;
        int k;

        for (k = 0; k < 4; k++) {
            bool is_pad = i + (size_t)k >= len - pad;

            v[k] = is_pad ? 0 : value_of((unsigned char)text[i + (size_t)k]);
            if (v[k] < 0)
                return ER_EINVAL;
        }
        w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
            (uint32_t)v[3];
        if (i + 4 == len && pad > 0) {
            /* Canonical: the bits under the padding are zero. */
            if ((pad == 1 && (w & 0xff) != 0) ||
                (pad == 2 && (w & 0xffff) != 0))
                return ER_EINVAL;
        }
        for (k = 0; k < 3 && *out_len < n; k++)
            o[(*out_len)++] = (unsigned char)(w >> (16 - 8 * k));
    }
    return 0;
}
