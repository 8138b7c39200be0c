/* retry.c: full-jitter exponential backoff and the retry budget. */
#include "resil/retry.h"

#include <assert.h>

uint64_t polis__backoff_ms(uint64_t base_ms, uint64_t max_ms, unsigned retry_no, uint64_t *rng)
{
    unsigned shift = retry_no > 0 ? retry_no - 1 : 0;
    uint64_t cap;
    if (shift >= 64 || base_ms > (max_ms >> shift))
        cap = max_ms; /* base << shift would pass max (or 64 bits) */
    else
        cap = base_ms << shift;
    uint64_t r = polis__retry_rng_next(rng);
    if (cap == UINT64_MAX)
        return r;
    /* Uniform in [0, cap]: the high half of r * (cap + 1), no modulo bias worth the name. */
    return (uint64_t)(((unsigned __int128)r * (cap + 1)) >> 64);
}

void polis__budget_init(struct polis_retry_budget *b)
{
    atomic_init(&b->active_requests, 0);
    atomic_init(&b->active_retries, 0);
}

void polis__budget_request_begin(struct polis_retry_budget *b)
{
    atomic_fetch_add_explicit(&b->active_requests, 1, memory_order_relaxed);
}

void polis__budget_request_end(struct polis_retry_budget *b)
{
    uint32_t old = atomic_fetch_sub_explicit(&b->active_requests, 1, memory_order_relaxed);
    assert(old > 0);
    (void)old;
}

bool polis__budget_retry_begin(struct polis_retry_budget *b, uint32_t percent, uint32_t min)
{
    uint32_t r = atomic_load_explicit(&b->active_retries, memory_order_relaxed);
    for (;;) {
        uint64_t req = atomic_load_explicit(&b->active_requests, memory_order_relaxed);
        uint64_t limit = req * percent / 100;
        if (limit < min)
            limit = min;
        if ((uint64_t)r + 1 > limit)
            return false;
        if (atomic_compare_exchange_weak_explicit(&b->active_retries, &r, r + 1,
                                                  memory_order_relaxed, memory_order_relaxed))
            return true;
    }
}

void polis__budget_retry_end(struct polis_retry_budget *b)
{
    uint32_t old = atomic_fetch_sub_explicit(&b->active_retries, 1, memory_order_relaxed);
    assert(old > 0);
    (void)old;
}
