/* balance.h: load balancers over a cluster's instances: round-robin, smooth weighted
 * round-robin, least-request (power of two choices) and consistent hashing. */
#ifndef POLIS_GATEWAY_BALANCE_H
#define POLIS_GATEWAY_BALANCE_H

#include "config/config.h"
#include <polis/http.h>

/* The immutable part of a balancer (the hash ring), built once per configuration snapshot and
 * read by every worker without locks. */
struct polis_lb;
/* The mutable part, one per worker per cluster: cursors and active request counts. */
struct polis_lb_state;

/* Build a balancer of cluster c's kind over the n instances v (n >= 1; v must outlive it: the
 * whole cluster, or a subset of it). Returns 0 and *out, POLIS_EINVAL (n is 0) or
 * POLIS_ENOMEM. */
int polis__lb_new(const struct polis_cluster_cfg *c, const struct polis_instance_cfg *v, size_t n,
                  struct polis_lb **out);
void polis__lb_free(struct polis_lb *lb);

/* Per-worker state for lb; seed makes each worker's random choices differ. NULL on ENOMEM. */
struct polis_lb_state *polis__lb_state_new(const struct polis_lb *lb, uint64_t seed);
void polis__lb_state_free(struct polis_lb_state *st);

/* Pick an instance for one request. key is the hashing key (ignored unless the balancer hashes;
 * an empty key under hashing falls back to round-robin). Returns the instance index (always
 * valid: a cluster has at least one instance) and, for least-request, counts it active until
 * polis__lb_done(). */
size_t polis__lb_pick(const struct polis_lb *lb, struct polis_lb_state *st, struct polis_str key);
/* Count instance idx active as if picked (a choice made by the caller instead). */
void polis__lb_take(struct polis_lb_state *st, size_t idx);
/* The request sent to instance idx ended (whatever the outcome). */
void polis__lb_done(struct polis_lb_state *st, size_t idx);

/* The hashing key of a request for cluster c: the named header's value, the named cookie's value
 * (from Cookie headers), or client_ip. Empty when absent. Views into m or client_ip. */
struct polis_str polis__lb_key(const struct polis_cluster_cfg *c, const struct polis_h1_msg *m,
                               struct polis_str client_ip);

/* The value of cookie name (nlen bytes) in the request's Cookie headers: true and *out (a view
 * into m, quotes removed), or false when absent. */
bool polis__cookie_value(const struct polis_h1_msg *m, const char *name, size_t nlen,
                         struct polis_str *out);

#endif
