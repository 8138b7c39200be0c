/* snapshot.c: an immutable configuration with its compiled router and balancers, shared
 * read-only by all workers and freed when the last of them lets go of it. */
#include "gateway/gateway.h"

#include <stdlib.h>

/* Free s and what was compiled into it; the configuration too when free_cfg. */
static void destroy(struct gw_snapshot *s, bool free_cfg)
{
    size_t nc = s->cfg->num_clusters;
    if (s->lb_states != NULL) {
        for (size_t i = 0; i < (size_t)s->workers * nc; i++)
            polis__lb_state_free(s->lb_states[i]);
        free(s->lb_states);
    }
    if (s->lbs != NULL) {
        for (size_t i = 0; i < nc; i++)
            polis__lb_free(s->lbs[i]);
        free(s->lbs);
    }
    polis__router_free(s->router);
    free(s->inst_base);
    free(s->route_slots);
    free(s->cluster_slots);
    if (free_cfg)
        polis__config_free(s->cfg);
    free(s);
}

void polis__snapshot_release(struct gw_snapshot *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        destroy(s, true);
}

int polis__snapshot_new(struct polis_config *cfg, int workers, uint64_t version,
                        struct gw_metrics *gm, struct gw_snapshot **out)
{
    struct gw_snapshot *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return POLIS_ENOMEM;
    size_t nc = cfg->num_clusters;
    s->cfg = cfg;
    s->workers = workers;
    s->version = version;
    atomic_init(&s->refs, 1);
    s->lbs = calloc(nc ? nc : 1, sizeof(*s->lbs));
    s->lb_states = calloc(nc * (size_t)workers + 1, sizeof(*s->lb_states));
    s->inst_base = calloc(nc ? nc : 1, sizeof(*s->inst_base));
    if (s->lbs == NULL || s->lb_states == NULL || s->inst_base == NULL)
        goto fail;
    if (polis__router_new(cfg, &s->router) < 0)
        goto fail;
    for (size_t i = 0; i < nc; i++) {
        s->inst_base[i] = s->num_instances;
        s->num_instances += cfg->clusters[i].num_instances;
        if (polis__lb_new(&cfg->clusters[i], &s->lbs[i]) < 0)
            goto fail;
        for (int w = 0; w < workers; w++) {
            s->lb_states[(size_t)w * nc + i] =
                polis__lb_state_new(s->lbs[i], version * 7919u + (uint64_t)w * 104729u + i);
            if (s->lb_states[(size_t)w * nc + i] == NULL)
                goto fail;
        }
    }
    if (polis__gw_metrics_resolve(gm, s) < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    /* Ownership of cfg moves only on success: the caller still frees it. */
    destroy(s, false);
    return POLIS_ENOMEM;
}
