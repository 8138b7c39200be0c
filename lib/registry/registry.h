/* registry.h: the embedded service registry: instances that services register over a REST API on
 * the gateway's admin listener, expired by TTL, watched by long polls and by the gateway. */
#ifndef POLIS_REGISTRY_REGISTRY_H
#define POLIS_REGISTRY_REGISTRY_H

#include <polis/http.h>

#include "config/config.h"
#include "registry/discovery.h"

struct polis_registry;
struct polis_registry_sub;

/* The health of an instance as GET shows it: "healthy", "unhealthy", "ejected", "unknown"...
 * (a string with static storage). Called with the registry's lock held, on whichever thread
 * answers a request: it must be quick and must not call the registry. */
typedef const char *(*polis_registry_health_fn)(void *ud, const char *service,
                                                const struct polis_instance_cfg *in);

/* Create a registry with cfg's TTLs and long-poll cap and start its thread, which expires
 * instances and ends long polls. cfg NULL: the defaults (30 s, 1 h, 5 min); a TTL of 0 takes its
 * default; max_wait_ms 0 answers long polls at once. cfg->enabled is not looked at.
 * Returns 0 and *out, or POLIS_EINVAL (a TTL under 1 s, default_ttl over max_ttl), POLIS_ENOMEM,
 * POLIS_ESYS (no thread). */
int polis__registry_new(const struct polis_registry_cfg *cfg, struct polis_registry **out);

/* Answer every waiting long poll with the current state (200, the same index), stop the thread
 * and free r with everything in it. Subscriptions still there are freed without another call.
 * Any thread but the registry's own (not from a subscriber's fn), once no call of
 * polis__registry_handle can run or start any more; NULL is ignored. */
void polis__registry_free(struct polis_registry *r);

/* Serve req when its path is under /registry/v1/ (see docs/registry.md): fills res, or defers it
 * (polis_response_defer) for a long poll, and returns true. Returns false, touching nothing, for
 * any other path: the caller answers it. Call it from a polis_server handler; thread-safe. */
bool polis__registry_handle(struct polis_registry *r, const struct polis_request *req,
                            struct polis_response *res);

/* Follow one service's set of instances (it need not exist yet). fn is called once at once, on
 * the calling thread before this returns, with the current set (maybe empty), then on the
 * registry's thread after each change of the set (registration, replacement with other content,
 * deregistration, expiry), never for a heartbeat or an identical re-registration; it is given the
 * complete set each time, and never the same set twice in a row. Calls of all subscriptions are
 * serialised and never hold the lock that request handling takes, but a slow fn delays the
 * others. fn may call polis__registry_subscribe and polis__registry_unsubscribe.
 * Returns 0 and *out, POLIS_EINVAL (a bad service name), POLIS_ENOMEM. */
int polis__registry_subscribe(struct polis_registry *r, const char *service, polis_disc_fn fn,
                              void *ud, struct polis_registry_sub **out);

/* Stop a subscription and free it: once this returns, its fn is never called again (from inside
 * a fn, the current call finishes and no other follows). NULL is ignored. */
void polis__registry_unsubscribe(struct polis_registry *r, struct polis_registry_sub *sub);

/* Set (or, with NULL, remove) the function that gives each instance's "health" in answers;
 * without one, "unknown". Any thread. */
void polis__registry_set_health_fn(struct polis_registry *r, polis_registry_health_fn fn, void *ud);

#endif
