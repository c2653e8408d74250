/* secret: a value that must never reach a log, event or result. The
 * memory is wiped before it is freed. Not thread-safe per secret. */
#include <string.h>

#include "common/common.h"

int er_secret_set(struct er_secret *secret, const char *value, size_t len)
{
    char *p = er_malloc(len + 1);

    if (p == NULL)
        return ER_ENOMEM;
    memcpy(p, value, len);
    p[len] = '\0';
    er_secret_fini(secret);
    secret->value = p;
    secret->len = len;
    return 0;
}

void er_wipe(void *p, size_t n)
{
    /* A volatile pointer keeps the compiler from eliding the wipe. */
    volatile char *v = p;
    size_t i;

    for (i = 0; p != NULL && i < n; i++)
        v[i] = 0;
}

void er_secret_fini(struct er_secret *secret)
{
    if (secret->value != NULL) {
        er_wipe(secret->value, secret->len);
        er_free(secret->value);
    }
    secret->value = NULL;
    secret->len = 0;
}

bool er_secret_is_set(const struct er_secret *secret)
{
    return secret->value != NULL;
}
