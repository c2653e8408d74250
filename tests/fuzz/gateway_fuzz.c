/* gateway_fuzz: the gateway's hand-written parsers on arbitrary bytes. The
 * first byte picks one: 0 the request head (then the URL of its target),
 * 1 the chunked decoder, 2 the response envelope (pass one whole and in
 * pieces must agree; pass two must decode exactly the length pass one
 * promised). The rest is the input. Stateless. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bridge/gateway/gateway_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_head(const char *buf, size_t len)
{
    static struct er_gwhttp_req req;
    static char url[ER_GW_URL_MAX];
    size_t i, path_len, query_len;

    if (er_gwhttp_parse_head(buf, len, &req) != 0)
        return;
    ER_GW_ASSERT(req.head_len <= len);
    ER_GW_ASSERT(req.method == buf || req.method > buf);
    ER_GW_ASSERT(req.method + req.method_len <= buf + req.head_len);
    ER_GW_ASSERT(er_gwhttp_is_token(req.method, req.method_len));
    ER_GW_ASSERT(req.target + req.target_len <= buf + req.head_len);
    ER_GW_ASSERT(req.hdr_cnt <= ER_GW_HDR_MAX);
    for (i = 0; i < req.hdr_cnt; i++) {
        const struct er_gwhttp_hdr *h = &req.hdrs[i];

        ER_GW_ASSERT(h->name >= buf && h->name + h->name_len <= buf + len);
        ER_GW_ASSERT(h->value >= buf && h->value + h->value_len <= buf + len);
        ER_GW_ASSERT(memchr(h->value, '\n', h->value_len) == NULL);
        ER_GW_ASSERT(memchr(h->value, '\r', h->value_len) == NULL);
    }
    if (er_gwhttp_url(req.target, req.target_len, url, sizeof(url), &path_len,
                      &query_len) != 0)
        return;
    ER_GW_ASSERT(path_len >= 1 && url[0] == '/');
    ER_GW_ASSERT(path_len + query_len < sizeof(url));
    ER_GW_ASSERT(memchr(url, '?', path_len) == NULL);
    ER_GW_ASSERT(memchr(url, '#', path_len + query_len) == NULL);
    ER_GW_ASSERT(query_len == 0 || url[path_len] == '?');
    /* No dot segment survives. */
    for (i = 0; i < path_len; i++) {
        size_t k = i + 1;

        if (url[i] != '/')
            continue;
        while (k < path_len && url[k] != '/')
            k++;
        ER_GW_ASSERT(!(k - i == 2 && url[i + 1] == '.'));
        ER_GW_ASSERT(!(k - i == 3 && url[i + 1] == '.' && url[i + 2] == '.'));
    }
}

static void fuzz_chunked(const char *buf, size_t len)
{
    struct er_gwhttp_chunked ck;
    size_t at = 0, step = 1, total = 0;

    memset(&ck, 0, sizeof(ck));
    while (at < len) {
        const char *data;
        size_t used, data_len;
        size_t n = len - at < step ? len - at : step;
        int rc =
            er_gwhttp_chunked_feed(&ck, buf + at, n, &used, &data, &data_len);

        ER_GW_ASSERT(used <= n);
        ER_GW_ASSERT(data_len == 0 ||
                     (data >= buf + at && data + data_len <= buf + at + n));
        total += data_len;
        ER_GW_ASSERT(total <= len);
        if (rc != 0)
            return;
        at += used;
        step = step * 3 % 17 + 1; /* uneven pieces */
    }
}

struct pass {
    struct er_gwjson js;
    struct er_gwenvelope_resp resp;
    char hdr[2048];
    int rc;
};

static void pass_one(struct pass *p, const char *buf, size_t len, size_t step)
{
    size_t at = 0;

    er_gwjson_init(&p->js, 0);
    er_gwenvelope_resp_init(&p->resp, p->hdr, sizeof(p->hdr));
    p->rc = 0;
    while (at < len && p->rc == 0) {
        size_t n = len - at < step ? len - at : step;

        p->rc = er_gwjson_feed(&p->js, buf + at, n, er_gwenvelope_resp_event,
                               &p->resp, NULL);
        at += n;
    }
    if (p->rc == 0)
        p->rc = er_gwjson_finish(&p->js, er_gwenvelope_resp_event, &p->resp);
}

static void fuzz_envelope(const char *buf, size_t len)
{
    static struct pass whole, pieces;
    static char out[3 * 64 + 16];
    struct er_gwenvelope_out bo;
    uint64_t body_len = 0, got = 0;
    size_t at;
    char msg[160];
    int status;

    pass_one(&whole, buf, len, len == 0 ? 1 : len);
    pass_one(&pieces, buf, len, 7);
    ER_GW_ASSERT(whole.rc == pieces.rc);
    if (whole.rc != 0)
        return;
    ER_GW_ASSERT(whole.resp.body_pos == pieces.resp.body_pos);
    ER_GW_ASSERT(whole.resp.body_len == pieces.resp.body_len);
    ER_GW_ASSERT(whole.resp.hdr_len == pieces.resp.hdr_len);
    ER_GW_ASSERT(memcmp(whole.hdr, pieces.hdr, whole.resp.hdr_len) == 0);
    if (er_gwenvelope_resp_check(&whole.resp, 1 << 20, &status, &body_len, msg,
                                 sizeof(msg)) != 0)
        return;
    ER_GW_ASSERT(status >= 100 && status <= 999);
    if (whole.resp.body_pos < 0) {
        ER_GW_ASSERT(body_len == 0);
        return;
    }
    ER_GW_ASSERT((size_t)whole.resp.body_pos < len);
    ER_GW_ASSERT(buf[whole.resp.body_pos] == '"');
    bo.out = out;
    bo.out_cap = sizeof(out);
    er_gwenvelope_out_init(&bo, (uint64_t)whole.resp.body_pos,
                           whole.resp.enc == ER_GWENVELOPE_BASE64);
    at = (size_t)whole.resp.body_pos;
    for (;;) {
        size_t used = 0;
        size_t n = len - at < 64 ? len - at : 64;
        int rc;

        ER_GW_ASSERT(n > 0); /* pass one saw the string end */
        bo.out_len = 0;
        rc = er_gwenvelope_out_feed(&bo, buf + at, n, &used);
        ER_GW_ASSERT(rc >= 0);
        got += bo.out_len;
        at += used;
        if (rc == 1)
            break;
    }
    ER_GW_ASSERT(got == body_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data + 1;

    if (size == 0)
        return 0;
    switch (data[0] % 3) {
    case 0:
        fuzz_head(buf, size - 1);
        break;
    case 1:
        fuzz_chunked(buf, size - 1);
        break;
    default:
        fuzz_envelope(buf, size - 1);
        break;
    }
    return 0;
}
