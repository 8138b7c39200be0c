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

#include <jansson.h>
/* Read one instance from the JSON the registry API and etcd values use:
 * {"address": "127.0.0.1", "port": 9001, "metadata": {"version": "v2", "weight": 100}}.
 * address: a numeric IPv4 or IPv6 address; port: 1..65535; metadata: string or number values
 * (numbers kept as their decimal text); "weight" in metadata (1..10000) sets the instance's
 * weight (default 1). Other top-level members are ignored. id is copied into out->id.
 * Returns 0 and fills out (free with polis__instances_free(out, 1) semantics:
 * polis__instance_clear), or POLIS_EINVAL with "field: what was expected" in err. */
int polis__instance_from_json(const json_t *j, const char *id, struct polis_instance_cfg *out,
                              char *err, size_t errcap);
/* Free what one instance holds (not the instance itself) and zero it. */
void polis__instance_clear(struct polis_instance_cfg *in);
