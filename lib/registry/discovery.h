/* discovery.h: what every discovery source (the embedded registry, DNS, etcd) hands the gateway:
 * the complete current set of a cluster's instances, each time it changes. */
#ifndef POLIS_REGISTRY_DISCOVERY_H
#define POLIS_REGISTRY_DISCOVERY_H

#include "config/config.h"

/* Called on the source's own thread with the complete current set of instances (n may be 0:
 * the service has none). v and what it points to are valid during the call only: the callee
 * copies what it keeps. A source calls it once it has a first answer, then only when the set
 * changed (same ids, addresses, weights and metadata: no call). */
typedef void (*polis_disc_fn)(void *ud, const struct polis_instance_cfg *v, size_t n);

/* Deep copies and frees of instance arrays (id and metadata included). */
int polis__instances_copy(const struct polis_instance_cfg *v, size_t n,
                          struct polis_instance_cfg **out);
void polis__instances_free(struct polis_instance_cfg *v, size_t n);
/* Whether two sets hold the same instances (in any order): same id, address text, weight and
 * metadata. */
bool polis__instances_equal(const struct polis_instance_cfg *a, size_t na,
                            const struct polis_instance_cfg *b, size_t nb);

#endif
