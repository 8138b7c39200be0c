/* edge.c: the edge-security settings of a configuration compiled once, when it is loaded, into
 * what the workers read on every request: CIDR lists, the consumers and their keys, the rate
 * limiters (with their Redis connections), and per route the consumer rules, limiters and the
 * identity headers the gateway owns. Shared read-only by every snapshot of the configuration. */
#include "gateway/gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A list from the configuration's networks; NULL for none. */
static int cidr_list(const struct polis_cidr *v, size_t n, struct polis_cidr_list **out)
{
    *out = NULL;
    if (n == 0)
        return 0;
    struct polis_cidr_block *b = calloc(n, sizeof(*b));
    if (b == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        b[i].ip.family = (uint8_t)v[i].family;
        memcpy(b[i].ip.a, v[i].addr, sizeof(b[i].ip.a));
        b[i].prefix = v[i].prefix;
    }
    size_t bad = 0;
    int rc = polis__cidr_list_from_blocks(b, n, out, &bad);
    free(b);
    return rc;
}

/* Names of consumer rules as the ACL wants them (pointers into the configuration). */
static const char **ref_names(const struct polis_name_ref *r, size_t n)
{
    const char **v = calloc(n + 1, sizeof(*v));
    for (size_t i = 0; v != NULL && i < n; i++)
        v[i] = r[i].name;
    return v;
}

/* The first line of a file (a Redis password), or NULL. */
static char *first_line(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char buf[512];
    char *line = fgets(buf, sizeof(buf), f) != NULL ? buf : NULL;
    fclose(f);
    if (line == NULL)
        return NULL;
    line[strcspn(line, "\r\n")] = '\0';
    return strdup(line);
}

static int limiters_new(struct gw_sec *sec, const struct polis_config *cfg)
{
    size_t n = cfg->num_rate_limits;
    sec->limiters = calloc(n + 1, sizeof(*sec->limiters));
    sec->redis = calloc(n + 1, sizeof(*sec->redis));
    if (sec->limiters == NULL || sec->redis == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const struct polis_rate_limit_cfg *rc = &cfg->rate_limits[i];
        struct polis_ratelimit_redis *redis = NULL;
        enum polis_ratelimit_failure fail = POLIS_RATELIMIT_FAIL_LOCAL;
        if (rc->backend == POLIS_RL_REDIS) {
            /* One connection object per address: an outage is noticed once. */
            for (size_t k = 0; k < i && redis == NULL; k++)
                if (sec->redis[k] != NULL && cfg->rate_limits[k].backend == POLIS_RL_REDIS &&
                    strcmp(cfg->rate_limits[k].redis.address, rc->redis.address) == 0)
                    redis = sec->redis[k];
            if (redis == NULL) {
                char *pw = rc->redis.password_file ? first_line(rc->redis.password_file) : NULL;
                struct polis_ratelimit_redis_opts ro = {
                    .address = rc->redis.address,
                    .password = pw,
                    .timeout_ms = (uint32_t)rc->redis.timeout_ms,
                };
                int e = polis__ratelimit_redis_new(&ro, &redis);
                free(pw);
                if (e < 0) {
                    polis_error("rate limit %s: redis %s: %s", rc->name, rc->redis.address,
                                polis_strerror(e));
                    return e;
                }
                sec->redis[i] = redis;
            }
            fail = rc->redis.on_failure == POLIS_REDIS_FAIL_OPEN     ? POLIS_RATELIMIT_FAIL_OPEN
                   : rc->redis.on_failure == POLIS_REDIS_FAIL_CLOSED ? POLIS_RATELIMIT_FAIL_CLOSED
                                                                     : POLIS_RATELIMIT_FAIL_LOCAL;
        }
        struct polis_ratelimit_opts o = {
            .name = rc->name,
            .rate = (uint32_t)rc->count,
            .period_ms = rc->period_ms,
            .burst = (uint32_t)rc->burst,
            .redis = redis,
            .on_failure = fail,
        };
        int e = polis__ratelimit_new(&o, &sec->limiters[i]);
        if (e < 0) {
            polis_error("rate limit %s: %s", rc->name, polis_strerror(e));
            return e;
        }
    }
    return 0;
}

void polis__edge_consumer_free(struct polis_consumer_cfg *c)
{
    free(c->name);
    for (size_t g = 0; g < c->num_groups; g++)
        free(c->groups[g]);
    free(c->groups);
    free(c->key_sha256);
    memset(c, 0, sizeof(*c));
}

/* Add the consumers of v[0..n) to the set s. */
static int consumers_add(struct polis_consumers *s, const struct polis_consumer_cfg *v, size_t n,
                         char *err, size_t errcap)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = polis__consumers_add(s, v[i].name, (const char *const *)v[i].groups, v[i].num_groups,
                                  err, errcap);
        for (size_t k = 0; rc == 0 && k < v[i].num_keys; k++)
            rc = polis__consumers_add_key_digest(s, v[i].name, v[i].key_sha256[k], err, errcap);
    }
    return rc;
}

int polis__edge_consumers(const struct polis_config *cfg, const struct polis_consumer_cfg *extra,
                          size_t num_extra, struct polis_consumers **out, char *err, size_t errcap)
{
    err[0] = '\0';
    int rc = polis__consumers_new(out);
    if (rc == 0)
        rc = consumers_add(*out, cfg->consumers, cfg->num_consumers, err, errcap);
    if (rc == 0)
        rc = consumers_add(*out, extra, num_extra, err, errcap);
    if (rc == 0)
        rc = polis__consumers_seal(*out, err, errcap);
    if (rc < 0) {
        polis__consumers_unref(*out);
        *out = NULL;
    }
    return rc;
}

/* Header names of route r that the gateway sets itself: a client's copy never passes. */
static int owned_headers(const struct polis_config *cfg, const struct polis_route_cfg *r,
                         struct gw_route_sec *rs)
{
    size_t n = 3 + r->auth.jwt_rules.num_forward_claims;
    rs->owned = calloc(n + 1, sizeof(*rs->owned));
    if (rs->owned == NULL)
        return POLIS_ENOMEM;
    if (cfg->tls.enabled && cfg->tls.forward_subject != NULL)
        rs->owned[rs->num_owned++] = cfg->tls.forward_subject;
    if ((r->auth.api_key || r->auth.jwt) && r->auth.forward_consumer != NULL)
        rs->owned[rs->num_owned++] = r->auth.forward_consumer;
    for (size_t k = 0; k < r->auth.jwt_rules.num_forward_claims; k++)
        rs->owned[rs->num_owned++] = r->auth.jwt_rules.forward_claims[k].value;
    if (r->auth.jwt && r->auth.jwt_rules.strip_authorization)
        rs->owned[rs->num_owned++] = "Authorization";
    return 0;
}

/* The configuration's issuers as the verifier wants them. */
static int jwt_new(struct gw_sec *sec, const struct polis_config *cfg)
{
    const struct polis_jwt_cfg *jc = &cfg->jwt;
    if (jc->num_issuers == 0)
        return 0;
    struct polis_jwt_issuer_opts *io = calloc(jc->num_issuers, sizeof(*io));
    const char **algs = calloc(jc->num_issuers * POLIS_JWT__COUNT + 1, sizeof(*algs));
    size_t nkeys = 0;
    for (size_t i = 0; i < jc->num_issuers; i++)
        nkeys += jc->issuers[i].num_keys;
    struct polis_jwt_key_opts *ko = calloc(nkeys + 1, sizeof(*ko));
    int rc = POLIS_ENOMEM;
    if (io == NULL || algs == NULL || ko == NULL)
        goto out;
    size_t ka = 0, kk = 0;
    for (size_t i = 0; i < jc->num_issuers; i++) {
        const struct polis_jwt_issuer_cfg *ic = &jc->issuers[i];
        struct polis_jwt_issuer_opts *o = &io[i];
        o->name = ic->name;
        o->issuer = ic->issuer;
        o->audiences = (const char *const *)ic->audiences;
        o->n_audiences = ic->num_audiences;
        o->algorithms = &algs[ka];
        for (int a = 0; a < POLIS_JWT__COUNT; a++)
            if (ic->algorithms & (1u << a))
                algs[ka + o->n_algorithms++] = polis__jwt_alg_names[a];
        ka += o->n_algorithms;
        o->keys = &ko[kk];
        for (size_t k = 0; k < ic->num_keys; k++) {
            const struct polis_jwt_key_cfg *kc = &ic->keys[k];
            ko[kk + k] = (struct polis_jwt_key_opts){
                .path = kc->secret_file != NULL ? kc->secret_file : kc->file,
                .kid = kc->kid,
                .alg = polis__jwt_alg_names[kc->alg],
                .secret = kc->secret_file != NULL,
            };
        }
        o->n_keys = ic->num_keys;
        kk += ic->num_keys;
        o->jwks_file = ic->jwks_file;
        o->jwks_url = ic->jwks_url;
        o->jwks_ca_file = ic->jwks_ca;
        o->refresh_ms = ic->jwks_refresh_ms;
        o->min_refresh_ms = ic->jwks_min_refresh_ms;
        o->leeway_ms = ic->leeway_ms;
        o->exp_optional = !ic->require_exp;
    }
    char err[512] = "";
    rc = polis__jwt_new(io, jc->num_issuers, jc->cache_size, &sec->jwt, err, sizeof(err));
    if (rc < 0)
        polis_error("jwt: %s", err[0] ? err : polis_strerror(rc));
out:
    free(io);
    free(algs);
    free(ko);
    return rc;
}

int polis__edge_compile(struct gw_cfgref *cref)
{
    const struct polis_config *cfg = cref->cfg;
    struct gw_sec *sec = &cref->sec;
    int rc = cidr_list(cfg->access.allow, cfg->access.num_allow, &sec->allow);
    if (rc == 0)
        rc = cidr_list(cfg->access.deny, cfg->access.num_deny, &sec->deny);
    if (rc == 0)
        rc = cidr_list(cfg->trusted_proxies, cfg->num_trusted_proxies, &sec->trusted);
    sec->clientip.trusted = sec->trusted;
    sec->clientip.header = sec->trusted != NULL ? POLIS_CLIENTIP_XFF : POLIS_CLIENTIP_NONE;
    if (rc == 0)
        rc = limiters_new(sec, cfg);
    if (rc == 0)
        rc = jwt_new(sec, cfg);
    sec->routes = calloc(cfg->num_routes + 1, sizeof(*sec->routes));
    if (rc == 0 && sec->routes == NULL)
        rc = POLIS_ENOMEM;
    for (size_t i = 0; rc == 0 && i < cfg->num_routes; i++) {
        const struct polis_route_cfg *r = &cfg->routes[i];
        struct gw_route_sec *rs = &sec->routes[i];
        rc = cidr_list(r->access.allow, r->access.num_allow, &rs->allow);
        if (rc == 0)
            rc = cidr_list(r->access.deny, r->access.num_deny, &rs->deny);
        const struct polis_consumer_rules_cfg *cr = &r->auth.consumers;
        rs->acl_allow = ref_names(cr->allow, cr->num_allow);
        rs->acl_deny = ref_names(cr->deny, cr->num_deny);
        if (rs->acl_allow == NULL || rs->acl_deny == NULL) {
            rc = POLIS_ENOMEM;
            break;
        }
        rs->acl = (struct polis_consumer_acl){
            rs->acl_allow,
            cr->num_allow,
            (const char *const *)cr->allow_groups,
            cr->num_allow_groups,
            rs->acl_deny,
            cr->num_deny,
            (const char *const *)cr->deny_groups,
            cr->num_deny_groups,
        };
        rs->limits = calloc(r->num_rate_limits + 1, sizeof(*rs->limits));
        if (rs->limits == NULL) {
            rc = POLIS_ENOMEM;
            break;
        }
        for (size_t k = 0; k < r->num_rate_limits; k++)
            rs->limits[rs->num_limits++] = r->rate_limits[k].index;
        if (rc == 0)
            rc = owned_headers(cfg, r, rs);
        rs->jwt_issuers = POLIS_JWT_ANY_ISSUER;
        if (rc == 0 && r->auth.jwt && r->auth.jwt_rules.num_issuers > 0 && sec->jwt != NULL) {
            const char **names =
                ref_names(r->auth.jwt_rules.issuers, r->auth.jwt_rules.num_issuers);
            rc = names == NULL
                     ? POLIS_ENOMEM
                     : polis__jwt_issuer_mask(sec->jwt, names, r->auth.jwt_rules.num_issuers,
                                              &rs->jwt_issuers);
            free(names);
        }
        if (rc == 0 && r->cors.enabled) {
            const struct polis_cors_cfg *cc = &r->cors;
            struct polis_cors_spec spec = {
                (const char *const *)cc->origins,
                cc->num_origins,
                (const char *const *)cc->methods,
                cc->num_methods,
                (const char *const *)cc->headers,
                cc->num_headers,
                (const char *const *)cc->expose_headers,
                cc->num_expose_headers,
                cc->credentials,
                cc->max_age_ms > 0 ? (int64_t)(cc->max_age_ms / 1000) : -1,
            };
            char err[256] = "";
            rc = polis__cors_new(&spec, &rs->cors, err, sizeof(err));
            if (rc < 0)
                polis_error("route %s: cors: %s", r->name, err);
        }
    }
    return rc;
}

void polis__edge_free(struct gw_cfgref *cref)
{
    struct gw_sec *sec = &cref->sec;
    const struct polis_config *cfg = cref->cfg;
    for (size_t i = 0; sec->routes != NULL && cfg != NULL && i < cfg->num_routes; i++) {
        struct gw_route_sec *rs = &sec->routes[i];
        polis__cidr_list_free(rs->allow);
        polis__cidr_list_free(rs->deny);
        free(rs->acl_allow);
        free(rs->acl_deny);
        free(rs->limits);
        free(rs->owned);
        polis__cors_free(rs->cors);
    }
    free(sec->routes);
    for (size_t i = 0; sec->limiters != NULL && cfg != NULL && i < cfg->num_rate_limits; i++)
        polis__ratelimit_free(sec->limiters[i]);
    for (size_t i = 0; sec->redis != NULL && cfg != NULL && i < cfg->num_rate_limits; i++)
        polis__ratelimit_redis_free(sec->redis[i]);
    free(sec->limiters);
    free(sec->redis);
    polis__jwt_free(sec->jwt);
    polis__cidr_list_free(sec->allow);
    polis__cidr_list_free(sec->deny);
    polis__cidr_list_free(sec->trusted);
    memset(sec, 0, sizeof(*sec));
}

/* ---- Connections per client address -------------------------------------------------------- */

#define IPC_SLOTS 65536u /* addresses tracked at once; past it a new address is not capped */
#define IPC_STRIPES 64u

struct ipc_slot {
    struct polis_ip ip;
    uint32_t count;
};

struct gw_ipcount {
    pthread_mutex_t locks[IPC_STRIPES];
    struct ipc_slot slots[IPC_SLOTS];
};

struct gw_ipcount *polis__ipcount_new(void)
{
    struct gw_ipcount *t = calloc(1, sizeof(*t));
    for (unsigned i = 0; t != NULL && i < IPC_STRIPES; i++)
        pthread_mutex_init(&t->locks[i], NULL);
    return t;
}

void polis__ipcount_free(struct gw_ipcount *t)
{
    for (unsigned i = 0; t != NULL && i < IPC_STRIPES; i++)
        pthread_mutex_destroy(&t->locks[i]);
    free(t);
}

static uint32_t ip_hash(const struct polis_ip *ip)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ip->family;
    for (int i = 0; i < 16; i++)
        h = (h ^ ip->a[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

/* The slot of ip among the stripe's slots, or (create) a free one to take; NULL when absent or
 * full. The stripe is locked. A full scan of its 1024 slots: only with the cap on. */
static struct ipc_slot *ipc_find(struct gw_ipcount *t, const struct polis_ip *ip, uint32_t h,
                                 bool create)
{
    uint32_t stripe = h % IPC_STRIPES, per = IPC_SLOTS / IPC_STRIPES;
    struct ipc_slot *free_slot = NULL;
    for (uint32_t k = 0; k < per; k++) {
        struct ipc_slot *s = &t->slots[k * IPC_STRIPES + stripe];
        if (s->count > 0 && polis__ip_eq(&s->ip, ip))
            return s;
        if (s->count == 0 && free_slot == NULL)
            free_slot = s;
    }
    if (create && free_slot != NULL)
        free_slot->ip = *ip;
    return create ? free_slot : NULL;
}

bool polis__ipcount_take(struct gw_ipcount *t, const struct polis_ip *ip, uint32_t cap)
{
    uint32_t h = ip_hash(ip);
    pthread_mutex_t *l = &t->locks[h % IPC_STRIPES];
    pthread_mutex_lock(l);
    struct ipc_slot *s = ipc_find(t, ip, h, true);
    bool ok = s == NULL || s->count < cap;
    if (s != NULL && ok)
        s->count++;
    pthread_mutex_unlock(l);
    return ok;
}

void polis__ipcount_put(struct gw_ipcount *t, const struct polis_ip *ip)
{
    uint32_t h = ip_hash(ip);
    pthread_mutex_t *l = &t->locks[h % IPC_STRIPES];
    pthread_mutex_lock(l);
    struct ipc_slot *s = ipc_find(t, ip, h, false);
    if (s != NULL && s->count > 0)
        s->count--;
    pthread_mutex_unlock(l);
}

/* ---- TLS ------------------------------------------------------------------------------------ */

static int tls_server_opts(const struct polis_config *cfg, struct polis_tls_server_opts *o,
                           struct polis_tls_cert **certs)
{
    const struct polis_tls_cfg *t = &cfg->tls;
    *certs = calloc(t->num_certs + 1, sizeof(**certs));
    if (*certs == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < t->num_certs; i++)
        (*certs)[i] = (struct polis_tls_cert){t->certs[i].cert, t->certs[i].key};
    *o = (struct polis_tls_server_opts){
        .certs = *certs,
        .num_certs = t->num_certs,
        .min_version = t->min_version == POLIS_CFG_TLS_1_3 ? POLIS_TLS_1_3 : POLIS_TLS_1_2,
        .client_verify = t->client_auth == POLIS_CLIENT_AUTH_REQUIRED   ? POLIS_TLS_VERIFY_REQUIRED
                         : t->client_auth == POLIS_CLIENT_AUTH_OPTIONAL ? POLIS_TLS_VERIFY_OPTIONAL
                                                                        : POLIS_TLS_VERIFY_OFF,
        .client_ca_file = t->client_ca,
        .session_timeout_s = (uint32_t)(t->session_timeout_ms / 1000),
        .no_session_tickets = !t->session_tickets,
    };
    return 0;
}

bool polis__edge_tls_server(const struct polis_config *cfg, struct polis_tls_server **out)
{
    *out = NULL;
    if (!cfg->tls.enabled)
        return true;
    struct polis_tls_server_opts o;
    struct polis_tls_cert *certs;
    if (tls_server_opts(cfg, &o, &certs) < 0)
        return false;
    char err[512] = "";
    int rc = polis__tls_server_new(&o, out, err, sizeof(err));
    free(certs);
    if (rc < 0)
        polis_error("tls: %s", err[0] ? err : polis_strerror(rc));
    return rc == 0;
}

bool polis__edge_tls_reload(struct polis_tls_server *srv, const struct polis_config *cfg)
{
    struct polis_tls_server_opts o;
    struct polis_tls_cert *certs;
    if (tls_server_opts(cfg, &o, &certs) < 0)
        return false;
    char err[512] = "";
    int rc = polis__tls_server_reload(srv, &o, err, sizeof(err));
    free(certs);
    if (rc < 0)
        polis_error("tls reload: %s; keeping the previous certificates",
                    err[0] ? err : polis_strerror(rc));
    return rc == 0;
}

int polis__edge_tls_client(struct gw_cstate *cs, const struct polis_cluster_cfg *c)
{
    const struct polis_upstream_tls_cfg *t = &c->tls;
    char key[2048] = "";
    if (t->enabled)
        snprintf(key, sizeof(key), "%s\n%d\n%s\n%s\n%s", t->ca ? t->ca : "", t->verify,
                 t->server_name ? t->server_name : "", t->cert ? t->cert : "",
                 t->key ? t->key : "");
    if ((cs->tls_key == NULL && !t->enabled) ||
        (cs->tls_key != NULL && t->enabled && strcmp(cs->tls_key, key) == 0))
        return 0; /* unchanged */
    struct polis_tls_client *cli = NULL;
    if (t->enabled) {
        struct polis_tls_client_opts o = {
            .ca_file = t->ca,
            .insecure_skip_verify = !t->verify,
            .cert_file = t->cert,
            .key_file = t->key,
        };
        char err[512] = "";
        int rc = polis__tls_client_new(&o, &cli, err, sizeof(err));
        if (rc < 0) {
            polis_error("cluster %s: tls: %s", c->name, err[0] ? err : polis_strerror(rc));
            return rc;
        }
    }
    /* Connections hold their own reference: the old client can go now. */
    polis__tls_client_free(atomic_exchange(&cs->tls, cli));
    free(cs->tls_key);
    cs->tls_key = t->enabled ? strdup(key) : NULL;
    return 0;
}
