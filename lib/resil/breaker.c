/* breaker.c: the circuit breaker: a lock-free closed fast path over an atomic state word, and a
 * mutex around the window, the half-open probe counts and every transition. */
#include "resil/breaker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* One second of a time window. */
struct bucket {
    uint32_t calls;
    uint32_t failures;
    uint32_t slow;
};

/* Outcome bits of one call in a count window. */
enum { OUT_FAIL = 1u << 0, OUT_SLOW = 1u << 1 };

struct polis_breaker {
    /* Read by every acquire without the lock; written only under mu, open_until before sw. Alone
     * on their cache line so that releases (which write the fields below) do not slow them. */
    _Alignas(64) _Atomic uint64_t sw; /* gen << 32 | state */
    _Atomic uint64_t open_until;      /* OPEN: the first ms at which a probe may go */

    _Alignas(64) pthread_mutex_t mu;
    struct polis_breaker_cfg cfg;
    /* Closed window: totals over the window, and what backs them. */
    uint64_t calls, failures, slow;
    uint32_t consecutive;
    uint8_t *ring; /* COUNT: window_size outcome bytes (OUT_* bits) */
    uint32_t ring_pos;
    uint32_t ring_len;
    /* TIME: bucket s % window_size holds second s, for s in (head_sec - window_size, head_sec] */
    struct bucket *buckets;
    uint64_t head_sec;
    /* Half-open probes: handed out and not released, and the outcomes counted. */
    uint32_t ho_out, ho_ok, ho_fail, ho_slow;
    uint64_t times_opened;
};

static inline uint64_t pack(uint32_t gen, enum polis_breaker_state s)
{
    return ((uint64_t)gen << 32) | (uint64_t)s;
}

static inline uint32_t gen_of(uint64_t w)
{
    return (uint32_t)(w >> 32);
}

static inline enum polis_breaker_state state_of(uint64_t w)
{
    return (enum polis_breaker_state)(w & 0xffffffffu);
}

int polis__breaker_new(const struct polis_breaker_cfg *cfg, struct polis_breaker **out)
{
    uint32_t max = cfg->window == POLIS_WINDOW_TIME ? POLIS_BREAKER_MAX_TIME_WINDOW
                                                    : POLIS_BREAKER_MAX_COUNT_WINDOW;
    if (cfg->window_size == 0 || cfg->window_size > max || cfg->half_open_calls == 0 ||
        cfg->failure_rate > 100 || cfg->slow_call_rate > 100)
        return POLIS_EINVAL;
    size_t size = (sizeof(struct polis_breaker) + 63) & ~(size_t)63;
    struct polis_breaker *b = aligned_alloc(64, size);
    if (!b)
        return POLIS_ENOMEM;
    memset(b, 0, sizeof(*b));
    b->cfg = *cfg;
    if (cfg->window == POLIS_WINDOW_TIME)
        b->buckets = calloc(cfg->window_size, sizeof(*b->buckets));
    else
        b->ring = calloc(cfg->window_size, 1);
    if (!b->buckets && !b->ring)
        goto free_b;
    if (pthread_mutex_init(&b->mu, NULL) != 0)
        goto free_window;
    atomic_init(&b->sw, pack(0, POLIS_BREAKER_CLOSED));
    atomic_init(&b->open_until, 0);
    *out = b;
    return 0;

free_window:
    free(b->buckets);
    free(b->ring);
free_b:
    free(b);
    return POLIS_ENOMEM;
}

void polis__breaker_free(struct polis_breaker *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->mu);
    free(b->buckets);
    b->buckets = NULL;
    free(b->ring);
    b->ring = NULL;
    free(b);
}

const char *polis__breaker_state_name(enum polis_breaker_state s)
{
    switch (s) {
    case POLIS_BREAKER_CLOSED:
        return "closed";
    case POLIS_BREAKER_OPEN:
        return "open";
    case POLIS_BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}

/* ---- The closed window (under mu) ------------------------------------------------------------ */

/* Time window: move the head to second t, emptying the buckets of the seconds that leave the
 * window. An older t (another thread's clock lags a little) leaves the head where it is. */
static void window_advance(struct polis_breaker *b, uint64_t t)
{
    if (!b->buckets || t <= b->head_sec)
        return;
    uint32_t n = b->cfg.window_size;
    if (t - b->head_sec >= n) {
        memset(b->buckets, 0, n * sizeof(*b->buckets));
        b->calls = b->failures = b->slow = 0;
    } else {
        for (uint64_t s = b->head_sec + 1; s <= t; s++) {
            struct bucket *k = &b->buckets[s % n];
            b->calls -= k->calls;
            b->failures -= k->failures;
            b->slow -= k->slow;
            memset(k, 0, sizeof(*k));
        }
    }
    b->head_sec = t;
}

/* Count one outcome in the window (and the consecutive failures). */
static void window_record(struct polis_breaker *b, bool fail, bool slow, uint64_t now_ms)
{
    if (fail)
        b->consecutive++;
    else
        b->consecutive = 0;
    if (b->ring) {
        if (b->ring_len == b->cfg.window_size) {
            uint8_t old = b->ring[b->ring_pos];
            b->calls--;
            b->failures -= (old & OUT_FAIL) != 0;
            b->slow -= (old & OUT_SLOW) != 0;
        } else {
            b->ring_len++;
        }
        b->ring[b->ring_pos] = (uint8_t)((fail ? OUT_FAIL : 0) | (slow ? OUT_SLOW : 0));
        b->ring_pos = b->ring_pos + 1 == b->cfg.window_size ? 0 : b->ring_pos + 1;
    } else {
        uint64_t t = now_ms / 1000;
        window_advance(b, t);
        if (t + b->cfg.window_size <= b->head_sec)
            return; /* older than the whole window */
        struct bucket *k = &b->buckets[t % b->cfg.window_size];
        k->calls++;
        k->failures += fail;
        k->slow += slow;
    }
    b->calls++;
    b->failures += fail;
    b->slow += slow;
}

static void window_reset(struct polis_breaker *b)
{
    if (b->ring)
        memset(b->ring, 0, b->cfg.window_size);
    if (b->buckets)
        memset(b->buckets, 0, b->cfg.window_size * sizeof(*b->buckets));
    b->ring_pos = b->ring_len = 0;
    b->calls = b->failures = b->slow = 0;
    b->consecutive = 0;
}

/* True when a rate threshold (percent, 0: off) is reached by part out of all. */
static inline bool rate_reached(uint32_t threshold, uint64_t part, uint64_t all)
{
    return threshold > 0 && all > 0 && part * 100 >= (uint64_t)threshold * all;
}

/* Does the closed window call for opening? */
static bool window_trips(const struct polis_breaker *b)
{
    if (b->cfg.consecutive_failures > 0 && b->consecutive >= b->cfg.consecutive_failures)
        return true;
    uint64_t min = b->cfg.min_calls > 0 ? b->cfg.min_calls : 1;
    if (b->calls < min)
        return false;
    return rate_reached(b->cfg.failure_rate, b->failures, b->calls) ||
           rate_reached(b->cfg.slow_call_rate, b->slow, b->calls);
}

/* ---- Transitions (under mu) ------------------------------------------------------------------ */

static void set_state(struct polis_breaker *b, enum polis_breaker_state s)
{
    uint64_t w = atomic_load_explicit(&b->sw, memory_order_relaxed);
    atomic_store_explicit(&b->sw, pack(gen_of(w) + 1, s), memory_order_release);
}

static void to_open(struct polis_breaker *b, uint64_t now_ms)
{
    uint64_t until = now_ms + b->cfg.open_ms;
    if (until < now_ms)
        until = UINT64_MAX;
    /* Stored before the state word (release), so whoever sees OPEN sees this deadline. */
    atomic_store_explicit(&b->open_until, until, memory_order_relaxed);
    b->times_opened++;
    set_state(b, POLIS_BREAKER_OPEN);
}

static void to_half_open(struct polis_breaker *b)
{
    b->ho_out = b->ho_ok = b->ho_fail = b->ho_slow = 0;
    set_state(b, POLIS_BREAKER_HALF_OPEN);
}

static void to_closed(struct polis_breaker *b)
{
    window_reset(b);
    set_state(b, POLIS_BREAKER_CLOSED);
}

/* OPEN whose time has passed -> HALF_OPEN. Returns the (possibly new) state word. */
static uint64_t maybe_half_open(struct polis_breaker *b, uint64_t now_ms)
{
    uint64_t w = atomic_load_explicit(&b->sw, memory_order_relaxed);
    if (state_of(w) == POLIS_BREAKER_OPEN &&
        now_ms >= atomic_load_explicit(&b->open_until, memory_order_relaxed)) {
        to_half_open(b);
        w = atomic_load_explicit(&b->sw, memory_order_relaxed);
    }
    return w;
}

/* A probe's outcome in half-open. The verdict is taken as soon as it is certain: failures (or
 * slow calls) enough to reach the rate over all half_open_calls probes re-open at once, whatever
 * the probes still out would say; half_open_calls outcomes without that close it. With
 * failure_rate off but consecutive_failures on, a single failed probe re-opens. */
static void half_open_record(struct polis_breaker *b, bool fail, bool slow, uint64_t now_ms)
{
    uint32_t h = b->cfg.half_open_calls;
    if (fail)
        b->ho_fail++;
    else
        b->ho_ok++;
    b->ho_slow += slow;
    bool fail_trips = b->cfg.failure_rate > 0 ? rate_reached(b->cfg.failure_rate, b->ho_fail, h)
                                              : b->cfg.consecutive_failures > 0 && b->ho_fail > 0;
    if (fail_trips || rate_reached(b->cfg.slow_call_rate, b->ho_slow, h))
        to_open(b, now_ms);
    else if (b->ho_ok + b->ho_fail == h)
        to_closed(b);
}

/* ---- Calls ----------------------------------------------------------------------------------- */

bool polis__breaker_acquire(struct polis_breaker *b, uint64_t now_ms,
                            struct polis_breaker_permit *p, uint64_t *retry_after_ms)
{
    uint64_t w = atomic_load_explicit(&b->sw, memory_order_acquire);
    if (state_of(w) == POLIS_BREAKER_CLOSED) {
        p->gen = gen_of(w);
        p->kind = POLIS_PERMIT_CLOSED;
        return true;
    }
    uint64_t wait = 0;
    if (state_of(w) == POLIS_BREAKER_OPEN) {
        uint64_t until = atomic_load_explicit(&b->open_until, memory_order_acquire);
        if (now_ms < until) {
            wait = until - now_ms;
            goto reject;
        }
    }

    bool granted = false;
    pthread_mutex_lock(&b->mu);
    w = maybe_half_open(b, now_ms);
    switch (state_of(w)) {
    case POLIS_BREAKER_CLOSED:
        p->kind = POLIS_PERMIT_CLOSED;
        granted = true;
        break;
    case POLIS_BREAKER_OPEN:
        wait = atomic_load_explicit(&b->open_until, memory_order_relaxed) - now_ms;
        break;
    case POLIS_BREAKER_HALF_OPEN:
        if (b->ho_out + b->ho_ok + b->ho_fail < b->cfg.half_open_calls) {
            b->ho_out++;
            p->kind = POLIS_PERMIT_HALF_OPEN;
            granted = true;
        } else {
            wait = POLIS_BREAKER_BUSY_RETRY_MS;
        }
        break;
    }
    pthread_mutex_unlock(&b->mu);
    if (granted) {
        p->gen = gen_of(w);
        return true;
    }
reject:
    p->gen = gen_of(w);
    p->kind = POLIS_PERMIT_NONE;
    if (retry_after_ms)
        *retry_after_ms = wait > 0 ? wait : 1;
    return false;
}

void polis__breaker_release(struct polis_breaker *b, struct polis_breaker_permit *p,
                            enum polis_call_outcome o, uint64_t duration_ms, uint64_t now_ms)
{
    if (p->kind == POLIS_PERMIT_NONE)
        return;
    bool fail = o == POLIS_OUTCOME_FAILURE;
    bool slow = duration_ms > b->cfg.slow_call_ms;
    pthread_mutex_lock(&b->mu);
    uint64_t w = atomic_load_explicit(&b->sw, memory_order_relaxed);
    if (gen_of(w) == p->gen) {
        if (state_of(w) == POLIS_BREAKER_CLOSED && p->kind == POLIS_PERMIT_CLOSED) {
            if (o != POLIS_OUTCOME_CANCELLED) {
                window_record(b, fail, slow, now_ms);
                if (window_trips(b))
                    to_open(b, now_ms);
            }
        } else if (state_of(w) == POLIS_BREAKER_HALF_OPEN && p->kind == POLIS_PERMIT_HALF_OPEN) {
            b->ho_out--;
            if (o != POLIS_OUTCOME_CANCELLED)
                half_open_record(b, fail, slow, now_ms);
        }
    }
    pthread_mutex_unlock(&b->mu);
    p->kind = POLIS_PERMIT_NONE;
}

/* ---- Inspection ------------------------------------------------------------------------------ */

enum polis_breaker_state polis__breaker_state(struct polis_breaker *b, uint64_t now_ms)
{
    uint64_t w = atomic_load_explicit(&b->sw, memory_order_acquire);
    if (state_of(w) != POLIS_BREAKER_OPEN ||
        now_ms < atomic_load_explicit(&b->open_until, memory_order_acquire))
        return state_of(w);
    pthread_mutex_lock(&b->mu);
    w = maybe_half_open(b, now_ms);
    pthread_mutex_unlock(&b->mu);
    return state_of(w);
}

static double percent(uint64_t part, uint64_t all)
{
    return all ? 100.0 * (double)part / (double)all : 0.0;
}

void polis__breaker_stats(struct polis_breaker *b, uint64_t now_ms, struct polis_breaker_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&b->mu);
    uint64_t w = maybe_half_open(b, now_ms);
    out->state = state_of(w);
    out->times_opened = b->times_opened;
    if (out->state == POLIS_BREAKER_HALF_OPEN) {
        out->calls = b->ho_ok + b->ho_fail;
        out->failures = b->ho_fail;
        out->slow_calls = b->ho_slow;
        out->half_open_outstanding = b->ho_out;
    } else {
        if (out->state == POLIS_BREAKER_CLOSED)
            window_advance(b, now_ms / 1000);
        else
            out->ms_until_half_open =
                atomic_load_explicit(&b->open_until, memory_order_relaxed) - now_ms;
        out->calls = b->calls;
        out->failures = b->failures;
        out->slow_calls = b->slow;
        out->consecutive_failures = b->consecutive;
    }
    pthread_mutex_unlock(&b->mu);
    out->failure_rate = percent(out->failures, out->calls);
    out->slow_call_rate = percent(out->slow_calls, out->calls);
}
