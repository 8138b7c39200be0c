/* outlier.h: passive outlier detection: an instance that fails several times in a row is ejected
 * from its cluster's balancing for a while, longer each time, never more than a share of the
 * cluster at once. Lock-free; every worker thread records into the same objects. */
#ifndef POLIS_RESIL_OUTLIER_H
#define POLIS_RESIL_OUTLIER_H

#include "config/config.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* How a call to an instance ended, as outlier detection sees it. */
enum polis_call_kind {
    POLIS_CALL_OK = 0,         /* any answer below 500 */
    POLIS_CALL_5XX,            /* a 5xx answer other than 502/503/504 */
    POLIS_CALL_GATEWAY_STATUS, /* a 502, 503 or 504 answer */
    POLIS_CALL_CONNECT,        /* the connection could not be opened */
    POLIS_CALL_RESET,          /* reset or closed before a complete answer */
    POLIS_CALL_TIMEOUT,        /* no answer in time */
};

/* The share of a cluster that is ejected. The owner sets total (the number of instances) with
 * polis__outlier_cluster_init() and polis__outlier_cluster_set_total(); ejected is counted here. */
struct polis_outlier_cluster {
    _Atomic uint32_t ejected;
    _Atomic uint32_t total;
};

/* One instance: its consecutive failure counts and its ejection word (the end of the current or
 * last ejection, an "ejected" bit and the ejection count n, changed only by compare-and-swap).
 * Zeroed memory (or polis__outlier_inst_init()) is an instance in service. */
struct polis_outlier_inst {
    _Atomic uint32_t consecutive_5xx;
    _Atomic uint32_t consecutive_gateway;
    _Atomic uint32_t consecutive_connect;
    _Atomic uint64_t ejection;      /* see outlier.c */
    _Atomic uint64_t times_ejected; /* since creation, for metrics */
};

void polis__outlier_cluster_init(struct polis_outlier_cluster *c, uint32_t total);
/* The cluster now has total instances (discovery changed it). Ejections in force stay. */
void polis__outlier_cluster_set_total(struct polis_outlier_cluster *c, uint32_t total);
/* Instances counted as ejected now (expired ejections count until someone notices them, see
 * polis__outlier_ejected()). */
uint32_t polis__outlier_cluster_ejected(const struct polis_outlier_cluster *c);

void polis__outlier_inst_init(struct polis_outlier_inst *in);

/* The kind of an HTTP answer with this status: OK, 5XX or GATEWAY_STATUS. */
enum polis_call_kind polis__outlier_kind_of_status(int status);

/* Record how a call to instance in of cluster c ended at now_ms (monotonic). A success (OK)
 * resets the consecutive counts; a failure increments those it belongs to: 5XX the 5xx count;
 * GATEWAY_STATUS, RESET and TIMEOUT the 5xx and gateway counts; CONNECT all three. A failure of
 * one kind resets the counts it does not belong to (a 500 proves the connection worked and is not
 * a gateway error). When a count reaches its threshold (0: off) the instance is ejected for
 * min(n * base_ejection_ms, max_ejection_ms), n being its ejection count after this one, unless
 * the cluster's share of ejected instances forbids it: allowed when no instance is ejected yet
 * (so even a one-instance cluster can eject its instance), otherwise only if the ejected
 * instances, this one included, stay within max_ejection_percent of total. 0 forbids every
 * ejection. Outcomes of an instance already ejected are ignored (they come from calls sent before
 * the ejection). Does nothing when cfg->enabled is false. Returns true when this call ejected the
 * instance. Any thread. */
bool polis__outlier_record(const struct polis_outlier_cfg *cfg, struct polis_outlier_cluster *c,
                           struct polis_outlier_inst *in, enum polis_call_kind kind,
                           uint64_t now_ms);

/* True while instance in is ejected at now_ms. An ejection that has run out is ended here (the
 * cluster's count drops exactly once, whichever threads look at the same time), so the owner
 * should ask about every instance now and then (the balancer does when it considers one; a
 * periodic sweep covers those it does not). Any thread. */
bool polis__outlier_ejected(struct polis_outlier_cluster *c, struct polis_outlier_inst *in,
                            uint64_t now_ms);

/* When the current ejection ends (monotonic ms), or 0 when in is not ejected at now_ms. */
uint64_t polis__outlier_ejected_until(const struct polis_outlier_inst *in, uint64_t now_ms);

/* The ejection count n at now_ms: that of the current ejection, or, between ejections, what is
 * left of it after decay (one less per base_ejection_ms spent in service since the last ejection
 * ended); the next ejection uses this plus one. */
uint32_t polis__outlier_ejections(const struct polis_outlier_cfg *cfg,
                                  const struct polis_outlier_inst *in, uint64_t now_ms);

/* The instance leaves the cluster: if it is counted as ejected, give its place back (once).
 * Call it before dropping an instance, then lower the total. */
void polis__outlier_forget(struct polis_outlier_cluster *c, struct polis_outlier_inst *in);

#endif
