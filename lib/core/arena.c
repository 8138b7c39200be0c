/* arena.c: per-request arenas: bump allocation in chunks, freed in one step. */
#include <polis/core.h>

#include <stdlib.h>
#include <string.h>

#define ARENA_CHUNK 4096

struct chunk {
    struct chunk *next;
    size_t size, used;
    _Alignas(max_align_t) unsigned char mem[];
};

struct polis_arena {
    struct chunk *head; /* the current chunk; the first one allocated is last in the list */
};

static struct chunk *chunk_new(size_t size)
{
    struct chunk *c = malloc(sizeof(*c) + size);
    if (c == NULL)
        return NULL;
    c->next = NULL;
    c->size = size;
    c->used = 0;
    return c;
}

struct polis_arena *polis_arena_new(void)
{
    struct polis_arena *a = malloc(sizeof(*a));
    if (a == NULL)
        return NULL;
    a->head = chunk_new(ARENA_CHUNK);
    if (a->head == NULL) {
        free(a);
        return NULL;
    }
    return a;
}

void *polis_arena_alloc(struct polis_arena *a, size_t n)
{
    const size_t align = _Alignof(max_align_t);
    size_t need = (n + align - 1) & ~(align - 1);
    if (need < n)
        return NULL;
    struct chunk *c = a->head;
    if (c->size - c->used < need) {
        size_t size = need > ARENA_CHUNK ? need : ARENA_CHUNK;
        c = chunk_new(size);
        if (c == NULL)
            return NULL;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->mem + c->used;
    c->used += need;
    return p;
}

char *polis_arena_strdup(struct polis_arena *a, struct polis_str s)
{
    char *p = polis_arena_alloc(a, s.len + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s.p, s.len);
    p[s.len] = '\0';
    return p;
}

void polis_arena_reset(struct polis_arena *a)
{
    while (a->head->next != NULL) {
        struct chunk *c = a->head;
        a->head = c->next;
        free(c);
    }
    a->head->used = 0;
}

void polis_arena_free(struct polis_arena *a)
{
    if (a == NULL)
        return;
    while (a->head != NULL) {
        struct chunk *c = a->head;
        a->head = c->next;
        free(c);
    }
    free(a);
}
