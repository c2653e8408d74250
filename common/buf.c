/* buf: growable byte buffers with a hard cap. Not thread-safe per buffer. */
#include <stdio.h>
#include <string.h>

#include "common/common.h"

void er_buf_init(struct er_buf *buf, size_t max_len)
{
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
    buf->max_len = max_len;
}

void er_buf_fini(struct er_buf *buf)
{
    er_free(buf->data);
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
}

void er_buf_trim(struct er_buf *buf, size_t keep_max)
{
    if (buf->cap <= keep_max) {
        er_buf_reset(buf);
        return;
    }
    er_free(buf->data);
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
}

void er_buf_reset(struct er_buf *buf)
{
    buf->len = 0;
    if (buf->data != NULL)
        buf->data[0] = '\0';
}

static int reserve(struct er_buf *buf, size_t extra)
{
    size_t want;
    size_t cap;
    uint8_t *p;

    if (extra > buf->max_len - buf->len)
        return ER_E2BIG;
    want = buf->len + extra + 1; /* room for the NUL */
    if (want <= buf->cap)
        return 0;
    cap = buf->cap == 0 ? 256 : buf->cap;
    while (cap < want)
        cap *= 2;
    p = er_realloc(buf->data, cap);
    if (p == NULL)
        return ER_ENOMEM;
    buf->data = p;
    buf->cap = cap;
    return 0;
}

int er_buf_append(struct er_buf *buf, const void *p, size_t n)
{
    int rc = reserve(buf, n);

    if (rc != 0)
        return rc;
    if (n != 0)
        memcpy(buf->data + buf->len, p, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
    return 0;
}

int er_buf_printf(struct er_buf *buf, const char *fmt, ...)
{
    va_list ap;
    int n;
    int rc;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return ER_EINVAL;
    rc = reserve(buf, (size_t)n);
    if (rc != 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf((char *)buf->data + buf->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf->len += (size_t)n;
    return 0;
}

uint8_t *er_buf_take(struct er_buf *buf, size_t *len)
{
    uint8_t *p;

    if (buf->data == NULL) {
        if (reserve(buf, 0) != 0)
            return NULL;
        buf->data[0] = '\0'; /* never written: hand out "" */
    }
    p = buf->data;
    if (len != NULL)
        *len = buf->len;
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
    return p;
}

int er_sh_quote(struct er_buf *buf, const char *s)
{
    int rc = er_buf_append(buf, "'", 1);

    while (rc == 0 && *s != '\0') {
        const char *q = strchr(s, '\'');
        size_t n = q != NULL ? (size_t)(q - s) : strlen(s);

        rc = er_buf_append(buf, s, n);
        if (rc == 0 && q != NULL)
            rc = er_buf_append(buf, "'\"'\"'", 5);
        s += n + (q != NULL ? 1 : 0);
    }
    if (rc == 0)
        rc = er_buf_append(buf, "'", 1);
    return rc;
}
