/* polis/registry.h: a service registers itself with the gateway's embedded registry, keeps its
 * registration alive with heartbeats, and deregisters before it drains. */
#ifndef POLIS_REGISTRY_H
#define POLIS_REGISTRY_H

#include <polis/core.h>

/*
 * The client speaks the registry's REST API on the gateway's admin listener:
 *   PUT    {registry}/registry/v1/services/{service}/instances/{id}            register or replace
 *          body {"address": "127.0.0.1", "port": 9001, "ttl_s": 10,
 *                "metadata": {"version": "v2", "zone": "a", "weight": "100"}}
 *   PUT    {registry}/registry/v1/services/{service}/instances/{id}/heartbeat  renew (404: unknown)
 *   DELETE {registry}/registry/v1/services/{service}/instances/{id}            deregister
 * each with `Authorization: Bearer <token>` when a token is given.
 */

/* What to register. Every string is copied by polis_register(): none needs to outlive it. */
struct polis_registration_opts {
    /* The registry's base URL: the gateway's admin listener, "http://127.0.0.1:9901" (http only,
     * an optional path prefix, no query). Required. */
    const char *registry;
    /* NULL, or the admin listener's bearer token (visible ASCII, no spaces). */
    const char *token;
    /* The service's name: 1..128 bytes of letters, digits, '.', '_' and '-', not "." or "..".
     * Required. */
    const char *service;
    /* This instance's id, same characters as service; NULL: "<service>-<hostname>-<port>"
     * (characters of the host name outside that set become '-', and the host name is cut so the
     * id fits in 128 bytes). */
    const char *id;
    /* The numeric IPv4 or IPv6 address the gateway reaches this instance on; NULL: "127.0.0.1". */
    const char *address;
    /* The port the gateway reaches this instance on: 1..65535 (polis_server_port() of the
     * service's server). Required. */
    int port;
    /* Seconds the registry keeps the instance without a heartbeat: 1..3600; 0: 10. Heartbeats
     * are sent every ttl_s / 3. */
    uint32_t ttl_s;
    /* NULL, or a NULL-terminated array of strings read in pairs: key, value, key, value, ...
     * At most 64 pairs; keys 1..128 bytes, values at most 1024, both UTF-8; no key twice. They
     * are sent as JSON strings ("weight" too: the registry reads "100" as 100). */
    const char *const *metadata;
};

struct polis_registration;

/* Register an instance and keep it registered.
 * The first registration is sent at once, on the calling thread (it takes at most 2 s):
 *  - accepted (200 or 201): the instance is registered when this returns;
 *  - the registry is unreachable, times out, answers 5xx, 408 or 429, or answers something that is
 *    not HTTP: this is not an error. polis_register() logs a warning, returns 0, and the
 *    background thread keeps trying, so a service may start before its gateway;
 *  - refused with another 4xx (401 or 403: a wrong or missing token; 400: a body the registry
 *    rejects; 404 or 405: no registry at that URL): a configuration error, logged with the
 *    registry's answer; returns POLIS_EINVAL and registers nothing.
 * Then a background thread (that blocks SIGINT, SIGTERM, SIGHUP and SIGPIPE) sends a heartbeat
 * every ttl_s / 3, measured from the start of the last call. After a heartbeat answered 404 (the
 * gateway restarted, or the instance expired) it registers again at once; after any other failure
 * (the registry unreachable, a timeout, another status) its next call is a registration, retried
 * with a backoff that starts at 100 ms and doubles up to min(ttl_s / 3, 5 s), with jitter. Each
 * background call is bounded by min(ttl_s / 3, 1 s). Problems are logged with polis_warn once
 * when they start or change, and polis_info says when the instance is registered again.
 * Returns 0 and *out (owned by the caller until polis_deregister()), POLIS_EINVAL (bad options,
 * see the fields, or a refused registration, see above), POLIS_ENOMEM or POLIS_ESYS (the thread
 * could not be started). On failure *out is not set. Any thread. */
POLIS_API int polis_register(const struct polis_registration_opts *o,
                             struct polis_registration **out);

/* Deregister and free r (NULL: nothing). Stops the background thread at once, even in the middle
 * of its wait (a call it has in flight is let finish: at most 1 s), then sends the DELETE, and
 * returns within about 2 s in all: when the registry is gone, hangs or refuses, the outcome is
 * logged and r is freed anyway (the instance then expires after its ttl_s). Call it before the
 * service stops its server, so that the gateway stops sending requests before the drain starts.
 * Any thread, once per registration; r may not be used after. */
POLIS_API void polis_deregister(struct polis_registration *r);

/* The instance id r registers (the one given, or the default one built from the host name).
 * Valid until polis_deregister(r). */
POLIS_API const char *polis_registration_id(const struct polis_registration *r);

#endif
