/* arena: a bump allocator per command, reset when the step commits.
 * Not thread-safe: one arena belongs to one worker thread at a time. */
#include <stdio.h>
#include <string.h>

#include "common/common.h"

#define CHUNK_MIN (16 * 1024)

struct er_arena_chunk {
    struct er_arena_chunk *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    /* Data follows, aligned to max_align_t by the allocation. */
    _Alignas(16) unsigned char data[];
};

void er_arena_init(struct er_arena *arena, size_t max_total)
{
    arena->head = NULL;
    arena->total = 0;
    arena->max_total = max_total;
}

void er_arena_fini(struct er_arena *arena)
{
    struct er_arena_chunk *c = arena->head;

    while (c != NULL) {
        struct er_arena_chunk *next = c->next;

        er_free(c);
        c = next;
    }
    arena->head = NULL;
    arena->total = 0;
}

void er_arena_trim(struct er_arena *arena, size_t keep_max)
{
    er_arena_reset(arena);
    if (arena->head != NULL && arena->head->size > keep_max) {
        er_free(arena->head);
        arena->head = NULL;
    }
}

void er_arena_reset(struct er_arena *arena)
{
    struct er_arena_chunk *c = arena->head;

    if (c == NULL)
        return;
    /* Keep the most recent chunk (the list head); free the rest. */
    while (c->next != NULL) {
        struct er_arena_chunk *next = c->next;

        c->next = next->next;
        er_free(next);
    }
    c->used = 0;
    arena->total = 0;
}

void *er_arena_alloc(struct er_arena *arena, size_t n)
{
    struct er_arena_chunk *c = arena->head;
    size_t need = (n + 15) & ~(size_t)15;
    void *p;

    if (need < n || need > arena->max_total - arena->total)
        return NULL;
    if (c == NULL || c->size - c->used < need) {
        size_t size = need > CHUNK_MIN ? need : CHUNK_MIN;

        c = er_malloc(sizeof(*c) + size);
        if (c == NULL)
            return NULL;
        c->size = size;
        c->used = 0;
        c->next = arena->head;
        arena->head = c;
    }
    p = c->data + c->used;
    c->used += need;
    arena->total += need;
    memset(p, 0, n);
    return p;
}

char *er_arena_strndup(struct er_arena *arena, const char *s, size_t n)
{
    char *d = er_arena_alloc(arena, n + 1);

    if (d == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *er_arena_strdup(struct er_arena *arena, const char *s)
{
    return er_arena_strndup(arena, s, strlen(s));
}

char *er_arena_printf(struct er_arena *arena, const char *fmt, ...)
{
    va_list ap;
    int n;
    char *d;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    d = er_arena_alloc(arena, (size_t)n + 1);
    if (d == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return d;
}
