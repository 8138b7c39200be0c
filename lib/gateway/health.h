/* health.h: active HTTP health checks of a cluster's instances, run by one background thread. */
#ifndef POLIS_GATEWAY_HEALTH_H
#define POLIS_GATEWAY_HEALTH_H

#include "config/config.h"

/* The checker: one thread with its own loop that checks every target of every cluster given to
 * it with non-blocking sockets, many at once. */
struct polis_hc;

/* What polis__hc_get() reports about one target. */
struct polis_hc_state {
    bool healthy;                  /* a new target starts healthy */
    uint32_t consecutive_passes;   /* checks passed in a row (0 after a failure) */
    uint32_t consecutive_failures; /* checks failed in a row (0 after a pass) */
    int last_status;               /* status of the last answer; 0 when it got none (or no check) */
    char last_error[96];           /* why the last check failed; "" when it passed or none ran */
    uint64_t last_check_ms;        /* when the last check ended: ms since the Unix epoch; 0: none */
    uint64_t checks;               /* checks ended since the target was added */
};

/* Called on the checker thread when a target changes state: healthy after healthy_threshold
 * passes in a row, unhealthy after unhealthy_threshold failures in a row; never otherwise (a new
 * target starts healthy without a call). cluster and addr are valid during the call only. It runs
 * without the checker's lock: it may call polis__hc_set() (applied later, on the next loop
 * iteration) and polis__hc_get(), never polis__hc_stop(). It should return quickly: checks wait
 * for it. */
typedef void (*polis_hc_change_fn)(void *ud, const char *cluster, const struct polis_addr *addr,
                                   bool healthy);

/* Start the checker thread (no targets yet). on_change (not NULL) and ud must stay valid until
 * polis__hc_stop() returns. Returns 0 and *out, POLIS_EINVAL (on_change NULL), POLIS_ENOMEM, or
 * POLIS_ESYS (epoll, eventfd or the thread could not be made: errno says why). Any thread. */
int polis__hc_start(polis_hc_change_fn on_change, void *ud, struct polis_hc **out);

/* Stop the checker: checks in flight are abandoned (their sockets closed), the thread is joined
 * and everything is freed, hc included. on_change is never called after it returns. Any thread
 * but the checker's (not from on_change). NULL is ignored. */
void polis__hc_stop(struct polis_hc *hc);

/* Replace the set of targets checked for cluster with addrs[0..n), checked as cfg says. Everything
 * is copied (the caller keeps ownership of its arguments). Targets already checked in the cluster
 * (same address) keep their state and schedule, and use the new cfg from their next check; new
 * targets start healthy and are checked at once; targets no longer listed stop being checked (a
 * check in flight is abandoned). Duplicate addresses count once. n == 0, or cfg->enabled false,
 * removes the cluster. Zero fields of cfg take defaults: path "/health", interval 5 s, timeout
 * 1 s, thresholds 2 (healthy) and 3 (unhealthy), statuses 200-399; jitter 0 means none.
 * The change is applied asynchronously by the checker thread, normally within a millisecond:
 * until then polis__hc_get() reports the previous set. A later call for the same cluster that
 * arrives before an earlier one was applied replaces it. Any thread.
 * Returns 0, POLIS_EINVAL (cluster NULL or empty, a path that does not start with '/' or that,
 * like host, holds a space or a control character), or POLIS_ENOMEM (nothing changes). */
int polis__hc_set(struct polis_hc *hc, const char *cluster,
                  const struct polis_health_check_cfg *cfg, const struct polis_addr *addrs,
                  size_t n);

/* Copy the current state of the target addr of cluster into *out (for the admin API). Returns
 * false when no such target is checked (unknown cluster or address, or not applied yet). Any
 * thread, on_change included; it takes the checker's lock briefly. */
bool polis__hc_get(struct polis_hc *hc, const char *cluster, const struct polis_addr *addr,
                   struct polis_hc_state *out);

#endif
