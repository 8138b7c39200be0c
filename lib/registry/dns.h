/* dns.h: the DNS discovery source: a cluster's instances from A/AAAA or SRV records, resolved
 * with c-ares on a thread of its own and re-resolved when the answer's TTL runs out. */
#ifndef POLIS_REGISTRY_DNS_H
#define POLIS_REGISTRY_DNS_H

#include "registry/discovery.h"

struct polis_dns_source;

/* What the source did last, for the admin API. */
struct polis_dns_status {
    uint64_t last_resolution_ms; /* wall clock (Unix ms) the last resolution ended; 0: none yet */
    uint64_t last_success_ms;    /* ... and the last one that got an answer; 0: none yet */
    uint64_t next_resolution_ms; /* ms from now until the next one starts (0: under way) */
    uint64_t resolutions;        /* resolutions finished */
    uint64_t failures;           /* ... of which failed (the last set was kept) */
    size_t num_instances;        /* in the set last handed to fn */
    bool failing;                /* the last resolution failed */
    char last_error[160];        /* "" or what the last failed resolution got, e.g.
                                    "A web.service.consul: SERVFAIL" */
};

/* Start resolving cfg->dns_name (cfg->kind must be POLIS_DISC_DNS) on a new thread:
 * - POLIS_DNS_A: A and AAAA records; one instance per address, port cfg->dns_port, weight 1;
 * - POLIS_DNS_SRV: SRV records of the lowest priority number; one instance per address of each
 *   record's target (taken from the answer's additional section, else resolved), port and
 *   weight (0 counts as 1, capped at 10000) from the record.
 * Every instance's id is its address text ("10.0.0.1:8080", "[fd00::1]:8080"); an address found
 * twice counts once (with the larger weight); there is no metadata.
 * fn is called on that thread with the first answer, then only when the set changes. NXDOMAIN
 * or no records: an empty set. A failure (SERVFAIL, REFUSED, timeout, bad answer) keeps the last
 * set and is retried after cfg->dns_min_ttl_ms; in A mode a failure of one family keeps that
 * family's last addresses. The name is re-resolved after the smallest TTL of the records used,
 * clamped to [dns_min_ttl_ms, dns_max_ttl_ms] (0 means 1 s and 30 s).
 * cfg->dns_server "host:port" or "[v6]:port" (port optional, 53) replaces the system's
 * resolvers and turns off the search list; NULL uses /etc/resolv.conf as it is at start.
 * cfg is copied (it need not outlive the source). Returns 0 and *out, POLIS_EINVAL for a bad
 * cfg (no name, A without a port, min > max, a bad server), POLIS_ENOMEM, or POLIS_ESYS (c-ares
 * or the thread could not start). Any thread. */
int polis__dns_source_start(const struct polis_discovery_cfg *cfg, polis_disc_fn fn, void *ud,
                            struct polis_dns_source **out);

/* Stop the source: wake its thread, cancel the queries in flight, join it and free everything.
 * Prompt (no wait for a TTL or a DNS timeout). fn is never called after it returns; it must not
 * be called from fn. NULL is ignored. Any thread but the source's. */
void polis__dns_source_stop(struct polis_dns_source *s);

/* Copy the source's status into *out. Any thread, while the source runs. */
void polis__dns_source_status(struct polis_dns_source *s, struct polis_dns_status *out);

#endif
