/* buf.c: per-thread pools of fixed-size blocks and byte buffers with hard caps. */
#include <polis/core.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Blocks returned on a thread are cached there, up to a bound, for the next polis_block_get(). */
#define BLOCK_CACHE_MAX 512

#ifndef POLIS_POOL_DEBUG
struct free_block {
    struct free_block *next;
};

static _Thread_local struct free_block *cache;
static _Thread_local size_t cache_len;
#endif

char *polis_block_get(void)
{
#ifndef POLIS_POOL_DEBUG
    if (cache != NULL) {
        struct free_block *b = cache;
        cache = b->next;
        cache_len--;
        return (char *)b;
    }
#endif
    return malloc(POLIS_BLOCK_SIZE);
}

void polis_block_put(char *block)
{
    if (block == NULL)
        return;
#ifndef POLIS_POOL_DEBUG
    if (cache_len < BLOCK_CACHE_MAX) {
        struct free_block *b = (struct free_block *)(void *)block;
        b->next = cache;
        cache = b;
        cache_len++;
        return;
    }
#endif
    free(block);
}

void polis_buf_init(struct polis_buf *b, size_t cap)
{
    b->data = NULL;
    b->start = b->end = b->size = 0;
    b->cap = cap;
}

/* A buffer of exactly POLIS_BLOCK_SIZE bytes lives in a pooled block; larger ones in malloc. */
static void release(char *data, size_t size)
{
    if (size == POLIS_BLOCK_SIZE)
        polis_block_put(data);
    else
        free(data);
}

void polis_buf_free(struct polis_buf *b)
{
    if (b->data != NULL)
        release(b->data, b->size);
    b->data = NULL;
    b->start = b->end = b->size = 0;
}

int polis_buf_reserve(struct polis_buf *b, size_t want)
{
    size_t used = b->end - b->start;
    if (want > b->cap || used > b->cap - want)
        return POLIS_ETOOBIG;
    if (b->size - b->end >= want)
        return 0;
    if (b->size - used >= want) { /* room enough once the unread bytes move to the front */
        memmove(b->data, b->data + b->start, used);
        b->start = 0;
        b->end = used;
        return 0;
    }
    size_t size = b->size ? b->size : POLIS_BLOCK_SIZE;
    while (size < used + want)
        size *= 2;
    if (size > b->cap && b->cap >= used + want)
        size = b->cap > POLIS_BLOCK_SIZE ? b->cap : POLIS_BLOCK_SIZE;
    char *data = size == POLIS_BLOCK_SIZE ? polis_block_get() : malloc(size);
    if (data == NULL)
        return POLIS_ENOMEM;
    if (used > 0)
        memcpy(data, b->data + b->start, used);
    if (b->data != NULL)
        release(b->data, b->size);
    b->data = data;
    b->size = size;
    b->start = 0;
    b->end = used;
    return 0;
}

int polis_buf_printf(struct polis_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return POLIS_EINVAL;
    int rc = polis_buf_reserve(b, (size_t)n + 1);
    if (rc < 0)
        return rc;
    if ((size_t)n < sizeof(small)) {
        memcpy(b->data + b->end, small, (size_t)n);
    } else {
        va_start(ap, fmt);
        vsnprintf(b->data + b->end, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->end += (size_t)n;
    return 0;
}

void polis_buf_consume(struct polis_buf *b, size_t n)
{
    b->start += n;
    if (b->start >= b->end)
        b->start = b->end = 0;
}
