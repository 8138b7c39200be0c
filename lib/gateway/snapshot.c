/* snapshot.c: an immutable configuration with the instances known when it was built, its
 * compiled router, balancer groups and route targets, shared read-only by all workers and freed
 * when the last of them lets go of it. A reload makes a snapshot of a new configuration; a
 * discovery change or an admin action makes one of the same configuration. */
#include "gateway/gateway.h"
#include "registry/discovery.h"

#include <stdlib.h>
#include <string.h>

struct gw_cfgref *polis__cfgref_new(struct polis_config *cfg)
{
    struct gw_cfgref *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->route_active = calloc(cfg->num_routes + 1, sizeof(*r->route_active));
    if (r->route_active == NULL) {
        free(r);
        return NULL;
    }
    r->cfg = cfg;
    atomic_init(&r->refs, 1);
    if (polis__edge_compile(r) < 0) {
        polis__edge_free(r);
        free(r->route_active);
        free(r);
        return NULL;
    }
    return r;
}

void polis__cfgref_unref(struct gw_cfgref *r)
{
    if (r == NULL || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    polis__edge_free(r);
    polis__config_free(r->cfg);
    free(r->route_active);
    free(r);
}

static void destroy(struct gw_snapshot *s)
{
    for (size_t i = 0; s->lb_states != NULL && i < (size_t)s->workers * s->ngroups; i++)
        polis__lb_state_free(s->lb_states[i]);
    free(s->lb_states);
    for (size_t g = 0; s->groups != NULL && g < s->ngroups; g++) {
        polis__lb_free(s->groups[g].lb);
        free(s->groups[g].members);
        free(s->groups[g].view);
    }
    free(s->groups);
    for (size_t r = 0; s->routes != NULL && r < s->cfg->num_routes; r++) {
        free(s->routes[r].split_groups);
        free(s->routes[r].split_cum);
    }
    free(s->routes);
    for (size_t c = 0; s->clusters != NULL && c < s->cfg->num_clusters; c++) {
        struct gw_crt *cr = &s->clusters[c];
        for (size_t i = 0; cr->st != NULL && i < cr->n; i++)
            if (cr->st[i] != NULL)
                polis__istate_unref(cr->st[i]);
        free(cr->st);
        polis__instances_free(cr->insts, cr->n);
    }
    free(s->clusters);
    polis__router_free(s->router);
    polis__consumers_unref(s->consumers);
    free(s->inst_base);
    free(s->route_slots);
    free(s->cluster_slots);
    polis__cfgref_unref(s->cref);
    free(s);
}

void polis__snapshot_release(struct gw_snapshot *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        destroy(s);
}

/* Whether instance in has every metadata pair of sub. */
static bool subset_has(const struct polis_subset_cfg *sub, const struct polis_instance_cfg *in)
{
    for (size_t k = 0; k < sub->num_match; k++) {
        bool found = false;
        for (size_t m = 0; m < in->num_meta && !found; m++)
            found = strcmp(in->meta[m].name, sub->match[k].name) == 0 &&
                    strcmp(in->meta[m].value, sub->match[k].value) == 0;
        if (!found)
            return false;
    }
    return true;
}

/* Fill group g with the instances of cluster ci that match sub (NULL: all). */
static int group_fill(struct gw_snapshot *s, size_t g, size_t ci,
                      const struct polis_subset_cfg *sub)
{
    struct gw_group *gr = &s->groups[g];
    const struct gw_crt *cr = &s->clusters[ci];
    gr->cluster = ci;
    gr->members = calloc(cr->n + 1, sizeof(*gr->members));
    gr->view = calloc(cr->n + 1, sizeof(*gr->view));
    if (gr->members == NULL || gr->view == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < cr->n; i++) {
        if (sub != NULL && !subset_has(sub, &cr->insts[i]))
            continue;
        gr->members[gr->n] = i;
        gr->view[gr->n] = cr->insts[i];
        gr->n++;
    }
    if (gr->n > 0)
        return polis__lb_new(&s->cfg->clusters[ci], gr->view, gr->n, &gr->lb);
    return 0;
}

/* The splits of route r: an admin override, or the configuration's. */
static const struct polis_split_cfg *route_splits(struct polis_gateway *gw,
                                                  const struct polis_route_cfg *r, size_t *n)
{
    for (struct gw_split_override *o = gw->overrides; o != NULL; o = o->next) {
        if (strcmp(o->route, r->name) == 0) {
            *n = o->n;
            return o->splits;
        }
    }
    *n = r->num_splits;
    return r->splits;
}

/* The instances of cluster ci: the configuration's, or the last set its source reported. */
static int cluster_fill(struct polis_gateway *gw, struct gw_snapshot *s, size_t ci)
{
    const struct polis_cluster_cfg *c = &s->cfg->clusters[ci];
    struct gw_crt *cr = &s->clusters[ci];
    cr->cs = polis__cstate_get(gw, c);
    if (cr->cs == NULL)
        return POLIS_ENOMEM;
    if (polis__edge_tls_client(cr->cs, c) < 0)
        return POLIS_EINVAL;
    int rc;
    if (c->discovery.kind == POLIS_DISC_STATIC) {
        rc = polis__instances_copy(c->instances, c->num_instances, &cr->insts);
        cr->n = c->num_instances;
    } else {
        pthread_mutex_lock(&gw->disc_lock);
        rc = polis__instances_copy(cr->cs->set, cr->cs->set_n, &cr->insts);
        cr->n = cr->cs->set_n;
        pthread_mutex_unlock(&gw->disc_lock);
    }
    if (rc < 0) {
        cr->n = 0;
        return rc;
    }
    cr->st = calloc(cr->n + 1, sizeof(*cr->st));
    if (cr->st == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < cr->n; i++) {
        cr->st[i] = polis__istate_ref(cr->cs, &cr->insts[i].addr, c);
        if (cr->st[i] == NULL)
            return POLIS_ENOMEM;
        unsigned w = atomic_load(&cr->st[i]->weight);
        if (w > 0)
            cr->insts[i].weight = w;
    }
    return 0;
}

static int routes_fill(struct polis_gateway *gw, struct gw_snapshot *s)
{
    const struct polis_config *cfg = s->cfg;
    size_t nc = cfg->num_clusters;
    /* Count the groups: one per cluster, then one per subset, split and mirror of a route. */
    size_t ng = nc;
    for (size_t r = 0; r < cfg->num_routes; r++) {
        size_t nsplit;
        route_splits(gw, &cfg->routes[r], &nsplit);
        ng += (cfg->routes[r].subset.num_match > 0) + nsplit + cfg->routes[r].mirror.enabled;
    }
    s->groups = calloc(ng, sizeof(*s->groups));
    s->routes = calloc(cfg->num_routes + 1, sizeof(*s->routes));
    if (s->groups == NULL || s->routes == NULL)
        return POLIS_ENOMEM;
    s->ngroups = ng;
    for (size_t c = 0; c < nc; c++)
        if (group_fill(s, c, c, NULL) < 0)
            return POLIS_ENOMEM;
    size_t g = nc;
    for (size_t r = 0; r < cfg->num_routes; r++) {
        const struct polis_route_cfg *rc = &cfg->routes[r];
        struct gw_rrt *rt = &s->routes[r];
        size_t ci = rc->cluster_index;
        rt->group = ci;
        rt->mirror_group = SIZE_MAX;
        if (rc->subset.num_match > 0) {
            if (group_fill(s, g, ci, &rc->subset) < 0)
                return POLIS_ENOMEM;
            rt->group = g++;
        }
        size_t nsplit;
        const struct polis_split_cfg *sp = route_splits(gw, rc, &nsplit);
        if (nsplit > 0) {
            rt->split_groups = calloc(nsplit, sizeof(*rt->split_groups));
            rt->split_cum = calloc(nsplit, sizeof(*rt->split_cum));
            if (rt->split_groups == NULL || rt->split_cum == NULL)
                return POLIS_ENOMEM;
            for (size_t k = 0; k < nsplit; k++) {
                if (group_fill(s, g, ci, &sp[k].subset) < 0)
                    return POLIS_ENOMEM;
                rt->split_total += sp[k].weight;
                rt->split_groups[k] = g++;
                rt->split_cum[k] = rt->split_total;
            }
            rt->nsplit = nsplit;
        }
        if (rc->mirror.enabled) {
            if (group_fill(s, g, ci, &rc->mirror.subset) < 0)
                return POLIS_ENOMEM;
            rt->mirror_group = g++;
        }
    }
    return 0;
}

int polis__snapshot_new(struct polis_gateway *gw, struct gw_cfgref *cref, uint64_t version,
                        struct gw_snapshot **out)
{
    struct gw_snapshot *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return POLIS_ENOMEM;
    atomic_fetch_add(&cref->refs, 1);
    s->cref = cref;
    s->cfg = cref->cfg;
    s->gw = gw;
    s->workers = gw->snap_workers;
    s->version = version;
    atomic_init(&s->refs, 1);
    const struct polis_config *cfg = s->cfg;
    size_t nc = cfg->num_clusters;
    s->clusters = calloc(nc + 1, sizeof(*s->clusters));
    s->inst_base = calloc(nc + 1, sizeof(*s->inst_base));
    if (s->clusters == NULL || s->inst_base == NULL)
        goto fail;
    if (polis__router_new(cfg, &s->router) < 0)
        goto fail;
    for (size_t c = 0; c < nc; c++) {
        if (cluster_fill(gw, s, c) < 0)
            goto fail;
        s->inst_base[c] = s->num_instances;
        s->num_instances += s->clusters[c].n;
    }
    if (routes_fill(gw, s) < 0)
        goto fail;
    s->lb_states = calloc(s->ngroups * (size_t)s->workers + 1, sizeof(*s->lb_states));
    if (s->lb_states == NULL)
        goto fail;
    for (size_t g = 0; g < s->ngroups; g++) {
        if (s->groups[g].lb == NULL)
            continue;
        for (int w = 0; w < s->workers; w++) {
            struct polis_lb_state **st = &s->lb_states[(size_t)w * s->ngroups + g];
            *st = polis__lb_state_new(s->groups[g].lb, version * 7919u + (uint64_t)w * 104729u + g);
            if (*st == NULL)
                goto fail;
        }
    }
    char err[256];
    if (polis__edge_consumers(cfg, gw->admin_consumers, gw->num_admin_consumers, &s->consumers, err,
                              sizeof(err)) < 0) {
        polis_error("consumers: %s", err[0] ? err : "out of memory");
        goto fail;
    }
    if (polis__gw_metrics_resolve(&gw->metrics, s) < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    destroy(s);
    return POLIS_ENOMEM;
}
