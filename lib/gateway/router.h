/* router.h: the route table, compiled from the configuration, matched once per request. */
#ifndef POLIS_GATEWAY_ROUTER_H
#define POLIS_GATEWAY_ROUTER_H

#include "config/config.h"
#include <polis/http.h>

struct polis_router;

/* Compile cfg's routes. The router keeps pointers into cfg, which must outlive it.
 * Returns 0 and *out, or POLIS_ENOMEM. */
int polis__router_new(const struct polis_config *cfg, struct polis_router **out);
void polis__router_free(struct polis_router *r);

/* Find the most specific route for a request: host (the Host value, a ":port" suffix is
 * ignored, compared case-insensitively), path (the decoded-nothing path part of the target,
 * without the query), method, and the request's headers for header conditions.
 * Specificity, highest first: exact host > wildcard host > any host; then exact path > pattern
 * path (more literal segments first) > longer prefix > shorter prefix > any path; then routes with
 * a method list before those without; then more header conditions before fewer; ties keep the
 * order of the configuration. Returns the route's index in cfg->routes, or -1. */
int polis__router_match(const struct polis_router *r, struct polis_str host, struct polis_str path,
                        struct polis_str method, const struct polis_h1_msg *m);

/* The path to send upstream for a request matched by route: with strip_prefix the route's prefix
 * is removed (an empty result becomes "/"); with rewrite the matched part (prefix, or the whole
 * path for exact and pattern routes) is replaced by it. Writes into out (cap bytes) and sets
 * *out_len. Returns 0, or POLIS_ETOOBIG if it does not fit. */
int polis__route_upstream_path(const struct polis_route_cfg *route, struct polis_str path,
                               char *out, size_t cap, size_t *out_len);

#endif
