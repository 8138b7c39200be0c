/* breaker.h: a circuit breaker (closed, open, half-open) shared by every worker thread, judged on
 * a sliding window of outcomes (by count or by time), slow calls and consecutive failures. */
#ifndef POLIS_RESIL_BREAKER_H
#define POLIS_RESIL_BREAKER_H

#include "config/config.h"

#include <stdbool.h>
#include <stdint.h>

enum polis_breaker_state {
    POLIS_BREAKER_CLOSED = 0, /* calls flow; outcomes are counted in the window */
    POLIS_BREAKER_OPEN,       /* every call is rejected until open_ms has passed */
    POLIS_BREAKER_HALF_OPEN,  /* half_open_calls probes decide: open again, or closed */
};

/* How a call that held a permit ended. */
enum polis_call_outcome {
    POLIS_OUTCOME_SUCCESS = 0,
    POLIS_OUTCOME_FAILURE,
    /* The call says nothing about the service (client abort, the gateway gave up for its own
     * reasons): the permit is returned and nothing is counted. */
    POLIS_OUTCOME_CANCELLED,
};

/* What a permit was handed out for (permit.kind). */
enum {
    POLIS_PERMIT_NONE = 0,  /* rejected, or already released: releasing it does nothing */
    POLIS_PERMIT_CLOSED,    /* handed out while closed */
    POLIS_PERMIT_HALF_OPEN, /* one of the half_open_calls probes */
};

/* A call's right to go through, filled by polis__breaker_acquire() and given back once by
 * polis__breaker_release(). gen is the generation of the state it was handed out in: every
 * transition bumps the generation, and a permit of an older generation is ignored on release,
 * so a late call never counts in a state it did not belong to. Plain data: copy it freely, but
 * release only one copy. */
struct polis_breaker_permit {
    uint32_t gen;
    uint8_t kind; /* POLIS_PERMIT_* */
};

/* A snapshot for metrics and the admin API. */
struct polis_breaker_stats {
    enum polis_breaker_state state;
    /* Closed and open: the closed window (frozen while open: what opened it). Half-open: the
     * probes' outcomes counted so far. */
    uint64_t calls;
    uint64_t failures;
    uint64_t slow_calls;
    double failure_rate;            /* percent of calls; 0 without calls */
    double slow_call_rate;          /* percent of calls; 0 without calls */
    uint32_t consecutive_failures;  /* closed: failures in a row so far */
    uint32_t half_open_outstanding; /* half-open: probes handed out and not yet released */
    uint64_t times_opened;          /* transitions to open since creation */
    uint64_t ms_until_half_open;    /* open: time left before a probe is allowed; else 0 */
};

/* Suggested wait (for Retry-After) when half-open has handed out all its probes: how long they
 * take is unknown, so one second, the smallest Retry-After. */
#define POLIS_BREAKER_BUSY_RETRY_MS 1000u

/* Largest windows accepted (they are allocated once, at creation). */
#define POLIS_BREAKER_MAX_COUNT_WINDOW 1000000u /* calls */
#define POLIS_BREAKER_MAX_TIME_WINDOW 3600u     /* seconds */

struct polis_breaker;

/* Create a closed breaker with a copy of cfg (cfg->enabled is not looked at: the owner decides
 * whether to have a breaker at all). Rejects window_size 0 or above the POLIS_BREAKER_MAX_*
 * limit of its kind, half_open_calls 0, and rates above 100. Returns 0 and *out, POLIS_EINVAL or
 * POLIS_ENOMEM. The only allocation the breaker ever makes. */
int polis__breaker_new(const struct polis_breaker_cfg *cfg, struct polis_breaker **out);
/* Free b (NULL is fine). No thread may be using it. */
void polis__breaker_free(struct polis_breaker *b);

/* Ask to send a call at now_ms (a monotonic clock in ms; threads may pass slightly different
 * values). Closed: always granted, with a single atomic load. Open: rejected until open_ms has
 * passed since it opened; the first acquire after that moves it to half-open. Half-open: granted
 * while fewer than half_open_calls probes are handed out or counted. Returns true and fills *p,
 * or false with p->kind = POLIS_PERMIT_NONE and *retry_after_ms (may be NULL) set to how long to
 * wait before trying again (>= 1). Any thread. */
bool polis__breaker_acquire(struct polis_breaker *b, uint64_t now_ms,
                            struct polis_breaker_permit *p, uint64_t *retry_after_ms);

/* Give back the permit *p of a call that took duration_ms and ended with outcome o at now_ms,
 * then clear p->kind so that releasing it again does nothing. A permit of an older generation
 * (the breaker changed state meanwhile) is dropped without counting. A call is slow when
 * duration_ms > slow_call_ms, whether it succeeded or failed. This is where the breaker opens or
 * closes. Takes the breaker's mutex for a few counter updates. Any thread. */
void polis__breaker_release(struct polis_breaker *b, struct polis_breaker_permit *p,
                            enum polis_call_outcome o, uint64_t duration_ms, uint64_t now_ms);

/* The current state. Like acquire, moves an open breaker whose time has passed to half-open (no
 * probe is handed out), so the answer is what the next call would see. Any thread. */
enum polis_breaker_state polis__breaker_state(struct polis_breaker *b, uint64_t now_ms);

/* Fill *out with a consistent snapshot at now_ms (evicts expired seconds of a time window, and
 * moves an open breaker whose time has passed to half-open, as polis__breaker_state). */
void polis__breaker_stats(struct polis_breaker *b, uint64_t now_ms,
                          struct polis_breaker_stats *out);

/* "closed", "open", "half_open" (the form used in metrics and JSON); "unknown" otherwise. */
const char *polis__breaker_state_name(enum polis_breaker_state s);

#endif
