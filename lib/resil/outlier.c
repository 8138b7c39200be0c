/* outlier.c: passive outlier detection with atomics only: consecutive counts per instance, one
 * compare-and-swap word per instance for its ejection, one counter per cluster. */
#include "resil/outlier.h"

/* The ejection word of an instance:
 *   bits  0..46  END: when the current (EJECTED set) or last (clear) ejection ends, in ms
 *   bit   47     EJECTED: the instance is counted in its cluster's ejected count
 *   bits 48..63  N: the ejection count (the multiplier of the current or last ejection)
 * Only compare-and-swap changes it, so the transition that sets or clears EJECTED happens once,
 * and the cluster's count moves once with it. */
#define END_BITS 47
#define END_MASK ((UINT64_C(1) << END_BITS) - 1)
#define EJECTED (UINT64_C(1) << END_BITS)
#define N_SHIFT 48
#define N_MAX 0xffffu

static inline uint64_t w_end(uint64_t w)
{
    return w & END_MASK;
}

static inline uint32_t w_n(uint64_t w)
{
    return (uint32_t)(w >> N_SHIFT);
}

static inline uint64_t w_pack(uint32_t n, bool ejected, uint64_t end)
{
    return ((uint64_t)n << N_SHIFT) | (ejected ? EJECTED : 0) | (end & END_MASK);
}

void polis__outlier_cluster_init(struct polis_outlier_cluster *c, uint32_t total)
{
    atomic_init(&c->ejected, 0);
    atomic_init(&c->total, total);
}

void polis__outlier_cluster_set_total(struct polis_outlier_cluster *c, uint32_t total)
{
    atomic_store_explicit(&c->total, total, memory_order_relaxed);
}

uint32_t polis__outlier_cluster_ejected(const struct polis_outlier_cluster *c)
{
    return atomic_load_explicit(&c->ejected, memory_order_relaxed);
}

void polis__outlier_inst_init(struct polis_outlier_inst *in)
{
    atomic_init(&in->consecutive_5xx, 0);
    atomic_init(&in->consecutive_gateway, 0);
    atomic_init(&in->consecutive_connect, 0);
    atomic_init(&in->ejection, 0);
    atomic_init(&in->times_ejected, 0);
}

enum polis_call_kind polis__outlier_kind_of_status(int status)
{
    if (status == 502 || status == 503 || status == 504)
        return POLIS_CALL_GATEWAY_STATUS;
    if (status >= 500 && status <= 599)
        return POLIS_CALL_5XX;
    return POLIS_CALL_OK;
}

/* ---- Ejection -------------------------------------------------------------------------------- */

/* The ejection count left at now_ms of count n whose ejection ended at end: one less per
 * base_ms in service. */
static uint32_t decayed(uint32_t n, uint64_t end, uint64_t base_ms, uint64_t now_ms)
{
    if (n == 0 || now_ms <= end)
        return n;
    if (base_ms == 0)
        return 0;
    uint64_t k = (now_ms - end) / base_ms;
    return k >= n ? 0 : n - (uint32_t)k;
}

/* The largest useful ejection count: the first whose ejection lasts max_ejection_ms. Counting
 * higher would only slow the decay. */
static uint32_t n_cap(const struct polis_outlier_cfg *cfg)
{
    if (cfg->base_ejection_ms == 0)
        return 1;
    uint64_t n = cfg->max_ejection_ms / cfg->base_ejection_ms +
                 (cfg->max_ejection_ms % cfg->base_ejection_ms != 0);
    return n == 0 ? 1 : n > N_MAX ? N_MAX : (uint32_t)n;
}

/* May one more instance be ejected when e of total already are? */
static bool share_allows(uint32_t e, uint32_t total, uint32_t max_percent)
{
    if (max_percent == 0)
        return false;
    if (e == 0)
        return true;
    return (uint64_t)(e + 1) * 100 <= (uint64_t)max_percent * total;
}

/* End the ejection whose word is *w (EJECTED set, run out): clear the bit by compare-and-swap
 * and, if this thread did it, give the place back to the cluster. On failure *w holds the word
 * now there. Returns whether the word changed as asked. */
static bool end_ejection(struct polis_outlier_cluster *c, struct polis_outlier_inst *in,
                         uint64_t *w)
{
    if (!atomic_compare_exchange_strong_explicit(&in->ejection, w, *w & ~EJECTED,
                                                 memory_order_acq_rel, memory_order_acquire))
        return false;
    atomic_fetch_sub_explicit(&c->ejected, 1, memory_order_relaxed);
    *w &= ~EJECTED;
    return true;
}

static void reset_counts(struct polis_outlier_inst *in)
{
    /* Loads first: a success is the common case, and writing zeros over zeros from every worker
     * would bounce the cache line for nothing. */
    if (atomic_load_explicit(&in->consecutive_5xx, memory_order_relaxed))
        atomic_store_explicit(&in->consecutive_5xx, 0, memory_order_relaxed);
    if (atomic_load_explicit(&in->consecutive_gateway, memory_order_relaxed))
        atomic_store_explicit(&in->consecutive_gateway, 0, memory_order_relaxed);
    if (atomic_load_explicit(&in->consecutive_connect, memory_order_relaxed))
        atomic_store_explicit(&in->consecutive_connect, 0, memory_order_relaxed);
}

/* Eject in at now_ms if the cluster's share allows it and no other thread does it first.
 * The cluster's place is taken first (compare-and-swap on its count, checked against the share)
 * and given back if the instance turns out to be ejected already. */
static bool eject(const struct polis_outlier_cfg *cfg, struct polis_outlier_cluster *c,
                  struct polis_outlier_inst *in, uint64_t now_ms)
{
    uint32_t total = atomic_load_explicit(&c->total, memory_order_relaxed);
    uint32_t e = atomic_load_explicit(&c->ejected, memory_order_relaxed);
    do {
        if (!share_allows(e, total, cfg->max_ejection_percent))
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&c->ejected, &e, e + 1, memory_order_relaxed,
                                                    memory_order_relaxed));

    uint64_t w = atomic_load_explicit(&in->ejection, memory_order_acquire);
    for (;;) {
        if (w & EJECTED) {
            if (now_ms < w_end(w)) { /* another thread ejected it first */
                atomic_fetch_sub_explicit(&c->ejected, 1, memory_order_relaxed);
                return false;
            }
            end_ejection(c, in, &w); /* a stale one first; retried with the word now there */
            continue;
        }
        uint32_t n = decayed(w_n(w), w_end(w), cfg->base_ejection_ms, now_ms) + 1;
        uint32_t cap = n_cap(cfg);
        if (n > cap)
            n = cap;
        uint64_t dur = cfg->base_ejection_ms * n;
        if (dur / n != cfg->base_ejection_ms || dur > cfg->max_ejection_ms)
            dur = cfg->max_ejection_ms;
        uint64_t end = now_ms + dur;
        if (end < now_ms || end > END_MASK)
            end = END_MASK;
        if (atomic_compare_exchange_weak_explicit(&in->ejection, &w, w_pack(n, true, end),
                                                  memory_order_acq_rel, memory_order_acquire))
            break;
    }
    atomic_store_explicit(&in->consecutive_5xx, 0, memory_order_relaxed);
    atomic_store_explicit(&in->consecutive_gateway, 0, memory_order_relaxed);
    atomic_store_explicit(&in->consecutive_connect, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&in->times_ejected, 1, memory_order_relaxed);
    return true;
}

/* Count one more failure in *counter; true when it reaches threshold (0: off). */
static bool bump(_Atomic uint32_t *counter, uint32_t threshold)
{
    uint32_t v = atomic_fetch_add_explicit(counter, 1, memory_order_relaxed) + 1;
    return threshold > 0 && v >= threshold;
}

static void clear(_Atomic uint32_t *counter)
{
    if (atomic_load_explicit(counter, memory_order_relaxed))
        atomic_store_explicit(counter, 0, memory_order_relaxed);
}

bool polis__outlier_record(const struct polis_outlier_cfg *cfg, struct polis_outlier_cluster *c,
                           struct polis_outlier_inst *in, enum polis_call_kind kind,
                           uint64_t now_ms)
{
    if (!cfg->enabled)
        return false;
    if (polis__outlier_ejected(c, in, now_ms))
        return false;
    if (kind == POLIS_CALL_OK) {
        reset_counts(in);
        return false;
    }
    bool trip = bump(&in->consecutive_5xx, cfg->consecutive_5xx);
    if (kind == POLIS_CALL_5XX)
        clear(&in->consecutive_gateway);
    else
        trip |= bump(&in->consecutive_gateway, cfg->consecutive_gateway_errors);
    if (kind == POLIS_CALL_CONNECT)
        trip |= bump(&in->consecutive_connect, cfg->consecutive_connect_failures);
    else
        clear(&in->consecutive_connect);
    return trip && eject(cfg, c, in, now_ms);
}

/* ---- Queries --------------------------------------------------------------------------------- */

bool polis__outlier_ejected(struct polis_outlier_cluster *c, struct polis_outlier_inst *in,
                            uint64_t now_ms)
{
    uint64_t w = atomic_load_explicit(&in->ejection, memory_order_acquire);
    while (w & EJECTED) {
        if (now_ms < w_end(w))
            return true;
        end_ejection(c, in, &w); /* on failure, w is the newer word: look again */
    }
    return false;
}

uint64_t polis__outlier_ejected_until(const struct polis_outlier_inst *in, uint64_t now_ms)
{
    uint64_t w = atomic_load_explicit(&in->ejection, memory_order_acquire);
    return (w & EJECTED) && now_ms < w_end(w) ? w_end(w) : 0;
}

uint32_t polis__outlier_ejections(const struct polis_outlier_cfg *cfg,
                                  const struct polis_outlier_inst *in, uint64_t now_ms)
{
    uint64_t w = atomic_load_explicit(&in->ejection, memory_order_acquire);
    return decayed(w_n(w), w_end(w), cfg->base_ejection_ms, now_ms);
}

void polis__outlier_forget(struct polis_outlier_cluster *c, struct polis_outlier_inst *in)
{
    uint64_t w = atomic_load_explicit(&in->ejection, memory_order_acquire);
    while ((w & EJECTED) && !end_ejection(c, in, &w))
        ;
}
