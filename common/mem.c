/* mem: the allocation door, with a fail-the-Nth hook for torture tests.
 * The counters are atomic, so it is thread-safe. */
#define _GNU_SOURCE /* pthread_getattr_np */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"

static atomic_uint_fast64_t alloc_cnt;
static atomic_uint_fast64_t fail_at_cnt; /* 0: never fail */

static bool should_fail(void)
{
    uint_fast64_t n = atomic_fetch_add(&alloc_cnt, 1) + 1;
    uint_fast64_t at = atomic_load(&fail_at_cnt);

    return at != 0 && n == at;
}

uint64_t er_mem_fail_at(uint64_t fail_at)
{
    uint64_t n = atomic_exchange(&alloc_cnt, 0);

    atomic_store(&fail_at_cnt, fail_at);
    return n;
}

void *er_malloc(size_t n)
{
    if (should_fail())
        return NULL;
    return malloc(n == 0 ? 1 : n);
}

void *er_calloc(size_t nmemb, size_t size)
{
    if (should_fail())
        return NULL;
    return calloc(nmemb == 0 ? 1 : nmemb, size == 0 ? 1 : size);
}

void *er_realloc(void *p, size_t n)
{
    if (should_fail())
        return NULL;
    return realloc(p, n == 0 ? 1 : n);
}

void er_free(void *p)
{
    free(p);
}

char *er_strndup(const char *s, size_t n)
{
    char *d = er_malloc(n + 1);

    if (d == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *er_strdup(const char *s)
{
    return er_strndup(s, strlen(s));
}

void er_stack_trim(void)
{
    /* Left below the caller's frame: the red zone, and the frames of
     * pthread_getattr_np and madvise themselves. */
    const uintptr_t margin = 16 * 1024;
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    pthread_attr_t attr;
    void *low = NULL;
    size_t size = 0;
    uintptr_t end;
    int rc;

    if (pthread_getattr_np(pthread_self(), &attr) != 0)
        return;
    rc = pthread_attr_getstack(&attr, &low, &size);
    pthread_attr_destroy(&attr);
    if (rc != 0 || low == NULL || here < margin)
        return;
    end = (here - margin) & ~(page - 1);
    /* A frame outside the reported stack (another one, e.g. a signal
     * stack) is left alone. */
    if (end <= (uintptr_t)low || here >= (uintptr_t)low + size)
        return;
    madvise(low, end - (uintptr_t)low, MADV_DONTNEED);
}
