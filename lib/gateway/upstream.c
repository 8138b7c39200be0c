/* upstream.c: what the gateway knows about its upstreams beyond one configuration: the state of
 * each cluster and instance (breakers, ejections, health, admin actions, bulkhead counts), kept
 * across reloads and discovery changes; the discovery sources and the thread that turns their
 * reports into new snapshots; the active health checks. */
#include "gateway/gateway.h"
#include "gateway/health.h"
#include "http/blocking.h"
#include "registry/discovery.h"
#include "registry/dns.h"
#include "registry/etcd.h"
#include "registry/registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- Cluster and instance state -------------------------------------------------------------- */

/* Keep b until the gateway goes: requests may still hold permits of it. */
static void retire(struct polis_gateway *gw, struct polis_breaker *b)
{
    if (b == NULL)
        return;
    struct polis_breaker **v = realloc(gw->retired, (gw->num_retired + 1) * sizeof(*v));
    if (v == NULL)
        return; /* leaks one breaker rather than freeing one in use */
    gw->retired = v;
    v[gw->num_retired++] = b;
}

static struct polis_breaker *breaker_make(const struct polis_breaker_cfg *cfg)
{
    struct polis_breaker *b = NULL;
    if (cfg->enabled && polis__breaker_new(cfg, &b) < 0)
        return NULL;
    return b;
}

struct gw_cstate *polis__cstate_get(struct polis_gateway *gw, const struct polis_cluster_cfg *c)
{
    pthread_mutex_lock(&gw->state_lock);
    struct gw_cstate *cs = gw->cstates;
    while (cs != NULL && strcmp(cs->name, c->name) != 0)
        cs = cs->next;
    if (cs == NULL) {
        cs = calloc(1, sizeof(*cs));
        if (cs == NULL || (cs->name = strdup(c->name)) == NULL) {
            free(cs);
            pthread_mutex_unlock(&gw->state_lock);
            return NULL;
        }
        cs->gw = gw;
        cs->next = gw->cstates;
        gw->cstates = cs;
        cs->bcfg.enabled = cs->ibcfg.enabled = false;
    }
    /* Breakers follow the configuration: a changed one starts afresh. */
    if (memcmp(&cs->bcfg, &c->breaker, sizeof(c->breaker)) != 0) {
        struct polis_breaker *old = atomic_exchange(&cs->breaker, breaker_make(&c->breaker));
        retire(gw, old);
        cs->bcfg = c->breaker;
    }
    if (memcmp(&cs->ibcfg, &c->instance_breaker, sizeof(c->instance_breaker)) != 0) {
        cs->ibcfg = c->instance_breaker;
        for (struct gw_istate *st = gw->istates; st != NULL; st = st->next) {
            if (st->cs != cs)
                continue;
            retire(gw, atomic_exchange(&st->breaker, breaker_make(&cs->ibcfg)));
        }
    }
    pthread_mutex_unlock(&gw->state_lock);
    return cs;
}

struct gw_istate *polis__istate_ref(struct gw_cstate *cs, const struct polis_addr *addr,
                                    const struct polis_cluster_cfg *c)
{
    struct polis_gateway *gw = cs->gw;
    pthread_mutex_lock(&gw->state_lock);
    struct gw_istate *st = gw->istates;
    while (st != NULL && !(st->cs == cs && strcmp(st->addr.text, addr->text) == 0))
        st = st->next;
    if (st == NULL) {
        st = calloc(1, sizeof(*st));
        if (st != NULL) {
            st->cs = cs;
            st->addr = *addr;
            atomic_init(&st->breaker, breaker_make(&cs->ibcfg));
            st->next = gw->istates;
            gw->istates = st;
        }
    }
    if (st != NULL)
        st->refs++;
    pthread_mutex_unlock(&gw->state_lock);
    return st;
}

void polis__istate_unref(struct gw_istate *st)
{
    struct polis_gateway *gw = st->cs->gw;
    pthread_mutex_lock(&gw->state_lock);
    if (--st->refs == 0) {
        struct gw_istate **pp = &gw->istates;
        while (*pp != st)
            pp = &(*pp)->next;
        *pp = st->next;
        /* Gone from every snapshot: no request can reach it any more, but an ejection it
         * holds must not count against the cluster for ever. */
        polis__outlier_forget(&st->cs->outlier, &st->outlier);
        retire(gw, atomic_load(&st->breaker));
        free(st);
    }
    pthread_mutex_unlock(&gw->state_lock);
}

bool polis__istate_available(struct gw_istate *st, const struct polis_cluster_cfg *c,
                             uint64_t now_ms)
{
    if (atomic_load_explicit(&st->admin, memory_order_relaxed) != GW_INST_ACTIVE)
        return false;
    if (c->health_check.enabled && atomic_load_explicit(&st->hc_down, memory_order_relaxed))
        return false;
    if (c->outlier.enabled && polis__outlier_ejected(&st->cs->outlier, &st->outlier, now_ms))
        return false;
    struct polis_breaker *b = atomic_load_explicit(&st->breaker, memory_order_acquire);
    return b == NULL || polis__breaker_state(b, now_ms) != POLIS_BREAKER_OPEN;
}

/* ---- Health checks --------------------------------------------------------------------------- */

static void hc_changed(void *ud, const char *cluster, const struct polis_addr *addr, bool healthy)
{
    struct polis_gateway *gw = ud;
    pthread_mutex_lock(&gw->state_lock);
    for (struct gw_istate *st = gw->istates; st != NULL; st = st->next) {
        if (strcmp(st->cs->name, cluster) == 0 && strcmp(st->addr.text, addr->text) == 0)
            atomic_store(&st->hc_down, !healthy);
    }
    pthread_mutex_unlock(&gw->state_lock); /* the checker logs the transition itself */
}

/* Check what snapshot s lists (clusters without checks: none). */
static void hc_update(struct polis_gateway *gw, const struct gw_snapshot *s)
{
    bool any = false;
    for (size_t c = 0; c < s->cfg->num_clusters; c++)
        any |= s->cfg->clusters[c].health_check.enabled;
    if (gw->hc == NULL && !any)
        return;
    if (gw->hc == NULL && polis__hc_start(hc_changed, gw, &gw->hc) < 0) {
        polis_error("cannot start the health checker");
        gw->hc = NULL;
        return;
    }
    /* Clusters gone from the configuration are removed as their state goes (below). */
    for (struct gw_cstate *cs = gw->cstates; cs != NULL; cs = cs->next) {
        const struct gw_crt *cr = NULL;
        const struct polis_cluster_cfg *c = NULL;
        for (size_t i = 0; i < s->cfg->num_clusters && cr == NULL; i++) {
            if (s->clusters[i].cs == cs) {
                cr = &s->clusters[i];
                c = &s->cfg->clusters[i];
            }
        }
        struct polis_addr *addrs = NULL;
        size_t n = 0;
        if (cr != NULL && c->health_check.enabled && cr->n > 0) {
            addrs = calloc(cr->n, sizeof(*addrs));
            if (addrs == NULL)
                continue;
            for (size_t i = 0; i < cr->n; i++)
                addrs[n++] = cr->insts[i].addr;
        }
        static const struct polis_health_check_cfg off = {0};
        if (polis__hc_set(gw->hc, cs->name, n > 0 ? &c->health_check : &off, addrs, n) < 0)
            polis_error("health checks of cluster %s cannot be set up", cs->name);
        free(addrs);
    }
}

/* The registry's GET shows what the gateway thinks of each registered instance. */
static const char *registry_health(void *ud, const char *service,
                                   const struct polis_instance_cfg *in)
{
    struct polis_gateway *gw = ud;
    const char *h = "unknown";
    uint64_t now = polis__mono_ms();
    pthread_mutex_lock(&gw->state_lock);
    for (struct gw_istate *st = gw->istates; st != NULL; st = st->next) {
        struct gw_cstate *cs = st->cs;
        if (cs->skind != POLIS_DISC_REGISTRY || cs->dkey == NULL ||
            strcmp(cs->dkey + sizeof("registry"), service) != 0 ||
            strcmp(st->addr.text, in->addr.text) != 0)
            continue;
        int admin = atomic_load(&st->admin);
        if (admin == GW_INST_DRAINING)
            h = "draining";
        else if (admin == GW_INST_DISABLED)
            h = "disabled";
        else if (atomic_load(&st->hc_down))
            h = "unhealthy";
        else if (polis__outlier_ejected_until(&st->outlier, now) > now)
            h = "ejected";
        else
            h = "healthy";
        break;
    }
    pthread_mutex_unlock(&gw->state_lock);
    return h;
}

void polis__upstream_registry_ready(struct polis_gateway *gw)
{
    if (gw->registry != NULL)
        polis__registry_set_health_fn(gw->registry, registry_health, gw);
}

/* ---- Publishing ------------------------------------------------------------------------------ */

int polis__gateway_publish(struct polis_gateway *gw, struct gw_cfgref *cref)
{
    uint64_t version = atomic_load(&gw->version) + 1;
    struct gw_snapshot *s;
    int rc = polis__snapshot_new(gw, cref, version, &s);
    if (rc < 0)
        return rc;
    for (size_t c = 0; c < s->cfg->num_clusters; c++)
        atomic_store(&s->clusters[c].cs->outlier.total, (unsigned)s->clusters[c].n);
    atomic_store(&gw->version, version);
    pthread_mutex_lock(&gw->snap_lock);
    struct gw_snapshot *old = atomic_load(&gw->snap);
    atomic_store(&gw->snap, s);
    if (old != NULL)
        polis__snapshot_release(old);
    pthread_mutex_unlock(&gw->snap_lock);
    for (int i = 0; i < gw->num_workers; i++)
        if (gw->workers[i].wake.loop != NULL)
            polis_async_send(&gw->workers[i].wake);
    hc_update(gw, s);
    return 0;
}

/* ---- Discovery ------------------------------------------------------------------------------- */

/* A source reports a cluster's complete set (any thread). */
static void disc_report(void *ud, const struct polis_instance_cfg *v, size_t n)
{
    struct gw_cstate *cs = ud;
    struct polis_gateway *gw = cs->gw;
    struct polis_instance_cfg *copy;
    if (polis__instances_copy(v, n, &copy) < 0) {
        polis_error("discovery of cluster %s: out of memory; keeping the previous instances",
                    cs->name);
        return;
    }
    pthread_mutex_lock(&gw->disc_lock);
    polis__instances_free(cs->set, cs->set_n);
    cs->set = copy;
    cs->set_n = n;
    cs->have_set = true;
    if (cs->changed_ns == 0)
        cs->changed_ns = now_ns();
    gw->disc_dirty = true;
    pthread_cond_signal(&gw->disc_cond);
    pthread_mutex_unlock(&gw->disc_lock);
}

static void *disc_main(void *arg)
{
    struct polis_gateway *gw = arg;
    pthread_mutex_lock(&gw->disc_lock);
    while (!gw->disc_stop) {
        if (!gw->disc_dirty) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += 1;
            if (pthread_cond_timedwait(&gw->disc_cond, &gw->disc_lock, &until) != 0) {
                /* Once a second: ejections whose time is over give their place in the
                 * cluster's count back even if no request asks about the instance. */
                pthread_mutex_unlock(&gw->disc_lock);
                uint64_t now = polis__mono_ms();
                pthread_mutex_lock(&gw->state_lock);
                for (struct gw_istate *st = gw->istates; st != NULL; st = st->next)
                    polis__outlier_ejected(&st->cs->outlier, &st->outlier, now);
                pthread_mutex_unlock(&gw->state_lock);
                pthread_mutex_lock(&gw->disc_lock);
            }
            continue;
        }
        gw->disc_dirty = false;
        pthread_mutex_unlock(&gw->disc_lock);
        pthread_mutex_lock(&gw->rebuild_lock);
        if (gw->cref != NULL && polis__gateway_publish(gw, gw->cref) < 0)
            polis_error("discovery: out of memory building a snapshot; retrying on the next "
                        "change");
        pthread_mutex_unlock(&gw->rebuild_lock);
        uint64_t t = now_ns();
        pthread_mutex_lock(&gw->disc_lock);
        for (struct gw_cstate *cs = gw->cstates; cs != NULL; cs = cs->next) {
            if (cs->changed_ns == 0)
                continue;
            polis_histogram_observe(gw->metrics.disc_shard, gw->metrics.disc_propagation,
                                    gw->metrics.disc_propagation_slot,
                                    (double)(t - cs->changed_ns) / 1e9);
            cs->changed_ns = 0;
        }
    }
    pthread_mutex_unlock(&gw->disc_lock);
    return NULL;
}

/* What identifies a source's settings: same key, same source. */
static char *disc_key(const struct polis_cluster_cfg *c)
{
    const struct polis_discovery_cfg *d = &c->discovery;
    char buf[2048];
    int n = 0;
    switch (d->kind) {
    case POLIS_DISC_REGISTRY:
        n = snprintf(buf, sizeof(buf), "registry\n%s", d->service ? d->service : c->name);
        break;
    case POLIS_DISC_DNS:
        n = snprintf(buf, sizeof(buf), "dns\n%s\n%d\n%u\n%s\n%llu\n%llu", d->dns_name,
                     (int)d->dns_type, d->dns_port, d->dns_server ? d->dns_server : "",
                     (unsigned long long)d->dns_min_ttl_ms, (unsigned long long)d->dns_max_ttl_ms);
        break;
    case POLIS_DISC_ETCD:
        n = snprintf(buf, sizeof(buf), "etcd\n%s", d->etcd_prefix);
        for (size_t i = 0; i < d->num_etcd_endpoints && n > 0 && (size_t)n < sizeof(buf); i++)
            n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\n%s", d->etcd_endpoints[i]);
        break;
    default:
        return NULL;
    }
    if (n < 0 || (size_t)n >= sizeof(buf))
        return NULL;
    return strdup(buf);
}

static void source_stop(struct polis_gateway *gw, struct gw_cstate *cs)
{
    pthread_mutex_lock(&gw->disc_lock); /* the admin API reads cs->source under it */
    void *src = cs->source;
    cs->source = NULL;
    pthread_mutex_unlock(&gw->disc_lock);
    if (src != NULL) {
        switch (cs->skind) {
        case POLIS_DISC_REGISTRY:
            polis__registry_unsubscribe(gw->registry, src);
            break;
        case POLIS_DISC_DNS:
            polis__dns_source_stop(src);
            break;
        case POLIS_DISC_ETCD:
            polis__etcd_source_stop(src);
            break;
        default:
            break;
        }
    }
    pthread_mutex_lock(&gw->state_lock); /* registry_health() reads dkey under it */
    free(cs->dkey);
    cs->dkey = NULL;
    pthread_mutex_unlock(&gw->state_lock);
    pthread_mutex_lock(&gw->disc_lock);
    polis__instances_free(cs->set, cs->set_n);
    cs->set = NULL;
    cs->set_n = 0;
    cs->have_set = false;
    pthread_mutex_unlock(&gw->disc_lock);
}

static int source_start(struct polis_gateway *gw, struct gw_cstate *cs,
                        const struct polis_cluster_cfg *c, char *key)
{
    const struct polis_discovery_cfg *d = &c->discovery;
    int rc = POLIS_EINVAL;
    void *src = NULL;
    pthread_mutex_lock(&gw->state_lock);
    cs->dkey = key;
    cs->skind = (int)d->kind;
    pthread_mutex_unlock(&gw->state_lock);
    switch (d->kind) {
    case POLIS_DISC_REGISTRY:
        if (gw->registry != NULL)
            rc = polis__registry_subscribe(gw->registry, d->service ? d->service : c->name,
                                           disc_report, cs, (struct polis_registry_sub **)&src);
        break;
    case POLIS_DISC_DNS:
        rc = polis__dns_source_start(d, disc_report, cs, (struct polis_dns_source **)&src);
        break;
    case POLIS_DISC_ETCD:
        rc = polis__etcd_source_start(d, disc_report, cs, (struct polis_etcd_source **)&src);
        break;
    default:
        break;
    }
    if (rc < 0) {
        polis_error("cluster %s: cannot start its discovery: %s", c->name, polis_strerror(rc));
        pthread_mutex_lock(&gw->state_lock);
        cs->dkey = NULL;
        pthread_mutex_unlock(&gw->state_lock);
        free(key);
        return rc;
    }
    pthread_mutex_lock(&gw->disc_lock);
    cs->source = src;
    pthread_mutex_unlock(&gw->disc_lock);
    return 0;
}

int polis__upstream_apply(struct polis_gateway *gw, const struct polis_config *cfg)
{
    /* Sources whose settings are gone or changed stop; new ones start. */
    for (struct gw_cstate *cs = gw->cstates; cs != NULL; cs = cs->next) {
        const struct polis_cluster_cfg *c = NULL;
        for (size_t i = 0; i < cfg->num_clusters && c == NULL; i++)
            if (strcmp(cfg->clusters[i].name, cs->name) == 0)
                c = &cfg->clusters[i];
        char *key = c != NULL ? disc_key(c) : NULL;
        if (cs->dkey != NULL && (key == NULL || strcmp(key, cs->dkey) != 0))
            source_stop(gw, cs);
        free(key);
    }
    for (size_t i = 0; i < cfg->num_clusters; i++) {
        const struct polis_cluster_cfg *c = &cfg->clusters[i];
        if (c->discovery.kind == POLIS_DISC_STATIC)
            continue;
        struct gw_cstate *cs = polis__cstate_get(gw, c);
        if (cs == NULL)
            return POLIS_ENOMEM;
        if (cs->dkey != NULL)
            continue; /* running with the same settings */
        char *key = disc_key(c);
        if (key == NULL)
            return POLIS_ENOMEM;
        int rc = source_start(gw, cs, c, key);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int polis__upstream_init(struct polis_gateway *gw)
{
    pthread_mutex_init(&gw->rebuild_lock, NULL);
    pthread_mutex_init(&gw->state_lock, NULL);
    pthread_mutex_init(&gw->disc_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&gw->disc_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&gw->disc_thread, NULL, disc_main, gw) != 0)
        return POLIS_ESYS;
    gw->disc_running = true;
    return 0;
}

/* Stop every source and the discovery thread, then free the state (no worker runs any more). */
void polis__upstream_fini(struct polis_gateway *gw)
{
    for (struct gw_cstate *cs = gw->cstates; cs != NULL; cs = cs->next)
        source_stop(gw, cs);
    if (gw->disc_running) {
        pthread_mutex_lock(&gw->disc_lock);
        gw->disc_stop = true;
        pthread_cond_signal(&gw->disc_cond);
        pthread_mutex_unlock(&gw->disc_lock);
        pthread_join(gw->disc_thread, NULL);
        gw->disc_running = false;
    }
    if (gw->hc != NULL) {
        polis__hc_stop(gw->hc);
        gw->hc = NULL;
    }
    if (gw->registry != NULL) {
        polis__registry_free(gw->registry);
        gw->registry = NULL;
    }
}

/* After the last snapshot is gone: the cluster states and retired breakers. */
void polis__upstream_free(struct polis_gateway *gw)
{
    while (gw->cstates != NULL) {
        struct gw_cstate *cs = gw->cstates;
        gw->cstates = cs->next;
        polis__breaker_free(atomic_load(&cs->breaker));
        polis__tls_client_free(atomic_load(&cs->tls));
        free(cs->tls_key);
        free(cs->dkey);
        polis__instances_free(cs->set, cs->set_n);
        free(cs->name);
        free(cs);
    }
    for (size_t i = 0; i < gw->num_retired; i++)
        polis__breaker_free(gw->retired[i]);
    free(gw->retired);
    for (size_t i = 0; i < gw->num_admin_consumers; i++)
        polis__edge_consumer_free(&gw->admin_consumers[i]);
    free(gw->admin_consumers);
    while (gw->overrides != NULL) {
        struct gw_split_override *o = gw->overrides;
        gw->overrides = o->next;
        for (size_t k = 0; k < o->n; k++) {
            for (size_t m = 0; m < o->splits[k].subset.num_match; m++) {
                free(o->splits[k].subset.match[m].name);
                free(o->splits[k].subset.match[m].value);
            }
            free(o->splits[k].subset.match);
        }
        free(o->splits);
        free(o->route);
        free(o);
    }
    pthread_cond_destroy(&gw->disc_cond);
    pthread_mutex_destroy(&gw->disc_lock);
    pthread_mutex_destroy(&gw->state_lock);
    pthread_mutex_destroy(&gw->rebuild_lock);
}
