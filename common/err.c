/* err: the er_err record, error names and assertions. Thread-safe. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

void er_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

int er_err_set(struct er_err *err, int code, enum er_errclass cls,
               const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;
    err->code = code;
    err->cls = cls;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return code;
}

void er_err_clear(struct er_err *err)
{
    if (err == NULL)
        return;
    err->code = ER_OK;
    err->cls = ER_ERRCLASS_NONE;
    err->msg[0] = '\0';
}

const char *er_errname(int code)
{
    switch (code) {
    case ER_OK:
        return "ER_OK";
    case ER_ENOMEM:
        return "ER_ENOMEM";
    case ER_EINVAL:
        return "ER_EINVAL";
    case ER_EBADMSG:
        return "ER_EBADMSG";
    case ER_E2BIG:
        return "ER_E2BIG";
    case ER_EPG:
        return "ER_EPG";
    case ER_EKAFKA:
        return "ER_EKAFKA";
    case ER_EIO:
        return "ER_EIO";
    case ER_ENOTFOUND:
        return "ER_ENOTFOUND";
    case ER_ECONFLICT:
        return "ER_ECONFLICT";
    case ER_ESCHEMA:
        return "ER_ESCHEMA";
    case ER_ETIMEDOUT:
        return "ER_ETIMEDOUT";
    case ER_EDRIVER:
        return "ER_EDRIVER";
    case ER_EFENCED:
        return "ER_EFENCED";
    case ER_ECANCELED:
        return "ER_ECANCELED";
    default:
        return "ER_E?";
    }
}

const char *er_strerror(int errnum, char *buf, size_t buf_len)
{
    /* The XSI strerror_r (we build with _POSIX_C_SOURCE, not _GNU_SOURCE). */
    if (strerror_r(errnum, buf, buf_len) != 0)
        snprintf(buf, buf_len, "errno %d", errnum);
    return buf;
}
