/* retry.h: retry pacing: exponential backoff with full jitter, and a retry budget that caps the
 * retries in flight to a share of the requests in flight (shared by every worker thread). */
#ifndef POLIS_RESIL_RETRY_H
#define POLIS_RESIL_RETRY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* A small fast generator (splitmix64) over a caller-owned state: any seed is fine, zero too.
 * Not for secrets. One state per thread: it is not atomic. */
static inline uint64_t polis__retry_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* How long to wait before retry number retry_no (1 for the first retry; 0 is taken as 1): uniform
 * in [0, min(max_ms, base_ms * 2^(retry_no - 1))] ("full jitter"), drawn from *rng
 * (polis__retry_rng_next). Never overflows: a doubling past max_ms (or past 64 bits) is max_ms. */
uint64_t polis__backoff_ms(uint64_t base_ms, uint64_t max_ms, unsigned retry_no, uint64_t *rng);

/* Requests and retries in flight over all workers. Zeroed memory (or polis__budget_init()) is an
 * empty budget. */
struct polis_retry_budget {
    _Atomic uint32_t active_requests;
    _Atomic uint32_t active_retries;
};

void polis__budget_init(struct polis_retry_budget *b);

/* A request starts (once per client request, however many tries it makes) / ends. Paired. */
void polis__budget_request_begin(struct polis_retry_budget *b);
void polis__budget_request_end(struct polis_retry_budget *b);

/* May a retry start now? True, and the retry is counted until polis__budget_retry_end(), when
 * active retries + 1 <= max(min, active requests * percent / 100) (the division rounds down);
 * false, and nothing is counted, otherwise. Any thread. */
bool polis__budget_retry_begin(struct polis_retry_budget *b, uint32_t percent, uint32_t min);
/* A retry counted by polis__budget_retry_begin() ended (its try got an answer or failed). */
void polis__budget_retry_end(struct polis_retry_budget *b);

#endif
