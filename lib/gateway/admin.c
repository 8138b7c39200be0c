/* admin.c: the admin listener's API: health, readiness and metrics for orchestrators and
 * Prometheus, /status for people, the embedded registry, and /admin/v1 to look at and steer the
 * upstreams (instances' health, ejections and breakers; drain, disable, weights, splits). */
#include "gateway/gateway.h"
#include "gateway/health.h"
#include "http/blocking.h"
#include "registry/discovery.h"
#include "registry/dns.h"
#include "registry/etcd.h"
#include "registry/registry.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Answer with JSON j (taken over) and status. */
static void reply(struct polis_response *res, int status, json_t *j)
{
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    polis_response_header(res, "Content-Type", "application/json");
    if (text == NULL) {
        polis_response_status(res, 500);
        polis_response_printf(res, "{\"error\":\"internal_error\",\"status\":500}\n");
    } else {
        polis_response_status(res, status);
        polis_response_printf(res, "%s\n", text);
    }
    free(text);
    json_decref(j);
}

/* 400 naming the body field that is wrong. */
static void reply_bad_field(struct polis_response *res, const char *field, const char *msg)
{
    reply(res, 400,
          json_pack("{s:s,s:i,s:s,s:s}", "error", "bad_request", "status", 400, "field", field,
                    "message", msg));
}

static void reply_error(struct polis_response *res, int status, const char *code, const char *msg)
{
    reply(res, status, json_pack("{s:s,s:i,s:s}", "error", code, "status", status, "message", msg));
}

/* The snapshot in use, referenced (release with polis__snapshot_release). */
static struct gw_snapshot *snap_ref(struct polis_gateway *gw)
{
    pthread_mutex_lock(&gw->snap_lock);
    struct gw_snapshot *s = atomic_load(&gw->snap);
    atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&gw->snap_lock);
    return s;
}

/* /status: what an operator asks first, as JSON. */
static void admin_status(struct polis_gateway *gw, struct polis_response *res)
{
    struct gw_snapshot *snap;
    pthread_mutex_lock(&gw->snap_lock); /* keep the snapshot alive while it is read */
    snap = atomic_load(&gw->snap);
    atomic_fetch_add(&snap->refs, 1);
    pthread_mutex_unlock(&gw->snap_lock);
    const struct polis_config *cfg = snap->cfg;
    uint64_t now = (uint64_t)time(NULL);
    time_t loaded = (time_t)atomic_load(&gw->loaded_unix);
    struct tm tm;
    gmtime_r(&loaded, &tm);
    json_t *clusters = json_array();
    for (size_t i = 0; i < cfg->num_clusters; i++) {
        json_t *inst = json_array();
        for (size_t k = 0; k < cfg->clusters[i].num_instances; k++)
            json_array_append_new(inst, json_string(cfg->clusters[i].instances[k].addr.text));
        json_array_append_new(
            clusters, json_pack("{s:s,s:o}", "name", cfg->clusters[i].name, "instances", inst));
    }
    char loaded_at[32];
    strftime(loaded_at, sizeof(loaded_at), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *j = json_pack(
        "{s:s,s:I,s:{s:I,s:s,s:s},s:i,s:{s:I,s:I},s:b,s:s,s:o}", "version", POLIS_VERSION,
        "uptime_seconds", (json_int_t)(now - gw->started_unix), "config", "version",
        (json_int_t)snap->version, "source", cfg->source, "loaded_at", loaded_at, "workers",
        gw->num_workers, "connections", "active",
        (json_int_t)polis_metric_value(gw->metrics.reg, gw->metrics.conns_active_slot), "total",
        (json_int_t)polis_metric_value(gw->metrics.reg, gw->metrics.conns_total_slot), "draining",
        atomic_load(&gw->draining), "listen", cfg->listen.text, "clusters", clusters);
    polis__snapshot_release(snap);
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    if (text == NULL) {
        polis_response_status(res, 500);
        polis_response_printf(res, "{\"error\":\"internal_error\",\"status\":500}\n");
    } else {
        polis_response_printf(res, "%s\n", text);
    }
    free(text);
    json_decref(j);
}

/* ---- /admin/v1 ------------------------------------------------------------------------------- */

static const char *admin_state_name(int st)
{
    return st == GW_INST_DRAINING ? "draining" : st == GW_INST_DISABLED ? "disabled" : "active";
}

static json_t *breaker_json(struct polis_breaker *b, uint64_t now)
{
    if (b == NULL)
        return json_null();
    struct polis_breaker_stats st;
    polis__breaker_stats(b, now, &st);
    return json_pack("{s:s,s:I,s:I,s:f,s:f,s:I,s:I}", "state", polis__breaker_state_name(st.state),
                     "calls", (json_int_t)st.calls, "failures", (json_int_t)st.failures,
                     "failure_rate", st.failure_rate, "slow_call_rate", st.slow_call_rate,
                     "times_opened", (json_int_t)st.times_opened, "ms_until_half_open",
                     (json_int_t)st.ms_until_half_open);
}

static json_t *meta_json(const struct polis_instance_cfg *in)
{
    json_t *m = json_object();
    for (size_t k = 0; k < in->num_meta; k++)
        json_object_set_new(m, in->meta[k].name, json_string(in->meta[k].value));
    return m;
}

/* What the cluster's discovery source last did (DNS, etcd), or null. */
static json_t *source_json(struct polis_gateway *gw, struct gw_cstate *cs)
{
    json_t *j = json_null();
    pthread_mutex_lock(&gw->disc_lock); /* the source is not stopped meanwhile */
    if (cs->source != NULL && cs->skind == POLIS_DISC_DNS) {
        struct polis_dns_status st;
        polis__dns_source_status(cs->source, &st);
        j = json_pack("{s:I,s:I,s:I,s:I,s:I,s:b,s:s}", "last_resolution_unix_ms",
                      (json_int_t)st.last_resolution_ms, "last_success_unix_ms",
                      (json_int_t)st.last_success_ms, "next_resolution_in_ms",
                      (json_int_t)st.next_resolution_ms, "resolutions", (json_int_t)st.resolutions,
                      "failures", (json_int_t)st.failures, "failing", st.failing, "last_error",
                      st.last_error);
    } else if (cs->source != NULL && cs->skind == POLIS_DISC_ETCD) {
        struct polis_etcd_status st;
        polis__etcd_source_status(cs->source, &st);
        j = json_pack("{s:b,s:s,s:I,s:s,s:I,s:I,s:I}", "connected", st.connected, "endpoint",
                      st.endpoint, "revision", (json_int_t)st.revision, "last_error", st.last_error,
                      "reconnects", (json_int_t)st.reconnects, "updates", (json_int_t)st.updates,
                      "invalid_keys", (json_int_t)st.invalid_keys);
    }
    pthread_mutex_unlock(&gw->disc_lock);
    return j;
}

static json_t *cluster_json(struct polis_gateway *gw, const struct gw_snapshot *s, size_t ci)
{
    const struct polis_cluster_cfg *c = &s->cfg->clusters[ci];
    const struct gw_crt *cr = &s->clusters[ci];
    uint64_t now = polis__mono_ms();
    static const char *const kinds[] = {"static", "registry", "dns", "etcd"};
    json_t *insts = json_array();
    for (size_t i = 0; i < cr->n; i++) {
        struct gw_istate *st = cr->st[i];
        const char *health = "unchecked";
        if (c->health_check.enabled)
            health = atomic_load(&st->hc_down) ? "unhealthy" : "healthy";
        bool ejected =
            c->outlier.enabled && polis__outlier_ejected(&cr->cs->outlier, &st->outlier, now);
        uint64_t until = polis__outlier_ejected_until(&st->outlier, now);
        json_t *j = json_pack(
            "{s:s,s:s?,s:i,s:o,s:s,s:b,s:I,s:s,s:b,s:i,s:o}", "address", cr->insts[i].addr.text,
            "id", cr->insts[i].id, "weight", (int)cr->insts[i].weight, "metadata",
            meta_json(&cr->insts[i]), "health", health, "ejected", ejected, "ejected_for_ms",
            (json_int_t)(until > now ? until - now : 0), "state",
            admin_state_name(atomic_load(&st->admin)), "available",
            polis__istate_available(st, c, now), "inflight", (int)atomic_load(&st->inflight),
            "breaker", breaker_json(atomic_load(&st->breaker), now));
        json_array_append_new(insts, j);
    }
    return json_pack(
        "{s:s,s:s,s:o,s:i,s:o,s:{s:i,s:i,s:i},s:I,s:o}", "name", c->name, "discovery",
        kinds[c->discovery.kind], "source", source_json(gw, cr->cs), "panic_threshold",
        (int)c->panic_threshold, "breaker", breaker_json(atomic_load(&cr->cs->breaker), now),
        "active", "connections", (int)atomic_load(&cr->cs->conns), "pending",
        (int)atomic_load(&cr->cs->pending), "requests", (int)atomic_load(&cr->cs->requests),
        "ejected", (json_int_t)atomic_load(&cr->cs->outlier.ejected), "instances", insts);
}

static json_t *subset_json(const struct polis_subset_cfg *sub)
{
    json_t *m = json_object();
    for (size_t k = 0; k < sub->num_match; k++)
        json_object_set_new(m, sub->match[k].name, json_string(sub->match[k].value));
    return m;
}

static json_t *route_json(struct polis_gateway *gw, const struct gw_snapshot *s, size_t ri)
{
    const struct polis_route_cfg *r = &s->cfg->routes[ri];
    const struct gw_rrt *rt = &s->routes[ri];
    json_t *splits = json_array();
    bool overridden = false;
    for (struct gw_split_override *o = gw->overrides; o != NULL; o = o->next)
        overridden |= strcmp(o->route, r->name) == 0;
    for (size_t k = 0; k < rt->nsplit; k++) {
        const struct gw_group *g = &s->groups[rt->split_groups[k]];
        uint32_t w = rt->split_cum[k] - (k > 0 ? rt->split_cum[k - 1] : 0);
        json_array_append_new(splits,
                              json_pack("{s:i,s:i}", "weight", (int)w, "instances", (int)g->n));
    }
    size_t n;
    const struct polis_split_cfg *sp = NULL;
    n = r->num_splits;
    sp = r->splits;
    for (struct gw_split_override *o = gw->overrides; o != NULL; o = o->next) {
        if (strcmp(o->route, r->name) == 0) {
            sp = o->splits;
            n = o->n;
        }
    }
    for (size_t k = 0; k < n && k < json_array_size(splits); k++)
        json_object_set_new(json_array_get(splits, k), "subset", subset_json(&sp[k].subset));
    return json_pack("{s:s,s:s,s:o,s:b,s:o,s:I}", "name", r->name, "cluster", r->cluster, "subset",
                     subset_json(&r->subset), "splits_overridden", overridden, "splits", splits,
                     "in_flight", (json_int_t)atomic_load(&s->cref->route_active[ri]));
}

/* Next path segment after *p (which points just past a '/'): [start, end). */
static struct polis_str segment(const char **p, const char *end)
{
    const char *s = *p;
    const char *e = memchr(s, '/', (size_t)(end - s));
    if (e == NULL)
        e = end;
    *p = e < end ? e + 1 : end;
    return (struct polis_str){s, (size_t)(e - s)};
}

static bool seg_is(struct polis_str s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

static json_t *body_json(const struct polis_request *req, struct polis_response *res)
{
    json_error_t err;
    json_t *j = json_loadb(req->body.p, req->body.len, 0, &err);
    if (j == NULL || !json_is_object(j)) {
        json_decref(j);
        reply_error(res, 400, "bad_request", "expected a JSON object body");
        return NULL;
    }
    return j;
}

/* PUT .../instances/{addr}/state {"state": "active"|"draining"|"disabled"} and
 * .../weight {"weight": 0..10000} (0: back to the configured or discovered weight). */
static void instance_action(struct polis_gateway *gw, struct gw_snapshot *s, size_t ci,
                            struct polis_str addr, struct polis_str action,
                            const struct polis_request *req, struct polis_response *res)
{
    const struct gw_crt *cr = &s->clusters[ci];
    struct gw_istate *st = NULL;
    for (size_t i = 0; i < cr->n && st == NULL; i++)
        if (strlen(cr->insts[i].addr.text) == addr.len &&
            memcmp(cr->insts[i].addr.text, addr.p, addr.len) == 0)
            st = cr->st[i];
    if (st == NULL) {
        reply_error(res, 404, "not_found", "no such instance in the cluster");
        return;
    }
    if (!polis_str_eq(req->method, POLIS_STR("PUT"))) {
        polis_response_header(res, "Allow", "PUT");
        reply_error(res, 405, "method_not_allowed", "use PUT");
        return;
    }
    json_t *j = body_json(req, res);
    if (j == NULL)
        return;
    if (seg_is(action, "state")) {
        const char *v = json_string_value(json_object_get(j, "state"));
        int a = v == NULL                    ? -1
                : strcmp(v, "active") == 0   ? GW_INST_ACTIVE
                : strcmp(v, "draining") == 0 ? GW_INST_DRAINING
                : strcmp(v, "disabled") == 0 ? GW_INST_DISABLED
                                             : -1;
        if (a < 0) {
            reply_bad_field(res, "state", "expected one of: active, draining, disabled");
        } else {
            atomic_store(&st->admin, a);
            polis_info("admin: %s of cluster %s is now %s", st->addr.text, st->cs->name,
                       admin_state_name(a));
            reply(res, 200, json_pack("{s:s,s:s}", "address", st->addr.text, "state", v));
        }
    } else if (seg_is(action, "weight")) {
        json_t *w = json_object_get(j, "weight");
        if (!json_is_integer(w) || json_integer_value(w) < 0 || json_integer_value(w) > 10000) {
            reply_bad_field(res, "weight", "expected an integer from 0 to 10000");
        } else {
            atomic_store(&st->weight, (unsigned)json_integer_value(w));
            pthread_mutex_lock(&gw->rebuild_lock); /* balancers are rebuilt with it */
            int rc = polis__gateway_publish(gw, gw->cref);
            pthread_mutex_unlock(&gw->rebuild_lock);
            if (rc < 0)
                reply_error(res, 500, "internal_error", "out of memory");
            else
                reply(res, 200,
                      json_pack("{s:s,s:I}", "address", st->addr.text, "weight",
                                (json_int_t)json_integer_value(w)));
        }
    } else {
        reply_error(res, 404, "not_found", "expected .../state or .../weight");
    }
    json_decref(j);
}

static void free_splits(struct polis_split_cfg *sp, size_t n)
{
    for (size_t k = 0; sp != NULL && k < n; k++) {
        for (size_t m = 0; m < sp[k].subset.num_match; m++) {
            free(sp[k].subset.match[m].name);
            free(sp[k].subset.match[m].value);
        }
        free(sp[k].subset.match);
    }
    free(sp);
}

/* PUT /admin/v1/routes/{name}/splits {"splits": [{"subset": {"version": "v2"}, "weight": 5}]}
 * replaces the route's splits at once (one new snapshot); DELETE returns to the configuration's. */
static void route_splits_action(struct polis_gateway *gw, const char *route,
                                const struct polis_request *req, struct polis_response *res)
{
    bool del = polis_str_eq(req->method, POLIS_STR("DELETE"));
    if (!del && !polis_str_eq(req->method, POLIS_STR("PUT"))) {
        polis_response_header(res, "Allow", "PUT, DELETE");
        reply_error(res, 405, "method_not_allowed", "use PUT or DELETE");
        return;
    }
    struct polis_split_cfg *sp = NULL;
    size_t n = 0;
    if (!del) {
        json_t *j = body_json(req, res);
        if (j == NULL)
            return;
        json_t *a = json_object_get(j, "splits");
        const char *bad = NULL;
        if (!json_is_array(a) || json_array_size(a) == 0 || json_array_size(a) > 64)
            bad = "splits: expected an array of 1 to 64 {subset, weight} objects";
        sp = calloc(json_array_size(a) + 1, sizeof(*sp));
        uint64_t total = 0;
        for (size_t k = 0; bad == NULL && sp != NULL && k < json_array_size(a); k++) {
            json_t *e = json_array_get(a, k), *w = json_object_get(e, "weight");
            json_t *sub = json_object_get(e, "subset");
            if (!json_is_integer(w) || json_integer_value(w) < 0 || json_integer_value(w) > 10000) {
                bad = "splits[].weight: expected an integer from 0 to 10000";
                break;
            }
            if (sub != NULL && !json_is_object(sub)) {
                bad = "splits[].subset: expected an object of metadata strings";
                break;
            }
            sp[k].weight = (uint32_t)json_integer_value(w);
            total += sp[k].weight;
            n = k + 1;
            sp[k].subset.match = calloc(json_object_size(sub) + 1, sizeof(*sp[k].subset.match));
            const char *key;
            json_t *v;
            json_object_foreach(sub, key, v)
            {
                if (!json_is_string(v) || key[0] == '\0') {
                    bad = "splits[].subset: expected an object of metadata strings";
                    break;
                }
                struct polis_header_kv *kv = &sp[k].subset.match[sp[k].subset.num_match++];
                kv->name = strdup(key);
                kv->value = strdup(json_string_value(v));
            }
        }
        if (bad == NULL && total == 0)
            bad = "splits: expected at least one weight above 0";
        json_decref(j);
        if (bad != NULL || sp == NULL) {
            free_splits(sp, n);
            reply_bad_field(res, "splits", bad != NULL ? bad : "out of memory");
            return;
        }
    }
    pthread_mutex_lock(&gw->rebuild_lock);
    struct gw_split_override **pp = &gw->overrides;
    while (*pp != NULL && strcmp((*pp)->route, route) != 0)
        pp = &(*pp)->next;
    struct gw_split_override *old = *pp;
    if (old != NULL)
        *pp = old->next;
    struct gw_split_override *o = NULL;
    if (!del) {
        o = calloc(1, sizeof(*o));
        if (o != NULL && (o->route = strdup(route)) != NULL) {
            o->splits = sp;
            o->n = n;
            o->next = gw->overrides;
            gw->overrides = o;
        }
    }
    int rc = polis__gateway_publish(gw, gw->cref);
    pthread_mutex_unlock(&gw->rebuild_lock);
    if (old != NULL) {
        free_splits(old->splits, old->n);
        free(old->route);
        free(old);
    }
    if (rc < 0) {
        reply_error(res, 500, "internal_error", "out of memory");
        return;
    }
    polis_info("admin: splits of route %s %s", route, del ? "reset" : "replaced");
    struct gw_snapshot *s = snap_ref(gw);
    for (size_t i = 0; i < s->cfg->num_routes; i++)
        if (strcmp(s->cfg->routes[i].name, route) == 0)
            reply(res, 200, route_json(gw, s, i));
    polis__snapshot_release(s);
}

/* ---- /admin/v1/consumers ------------------------------------------------------------------ */

/* "sha256:" and 64 hex digits into a digest. */
static bool digest_of(const char *s, uint8_t out[32])
{
    if (strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64)
        return false;
    for (int i = 0; i < 32; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char ch = s[7 + 2 * i + k];
            int d = ch >= '0' && ch <= '9'   ? ch - '0'
                    : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                    : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                             : -1;
            if (d < 0)
                return false;
            v = v * 16 + (unsigned)d;
        }
        out[i] = (uint8_t)v;
    }
    return true;
}

/* A consumer from a PUT body: {"groups": [...], "keys": ["sha256:..."], "key": "plain"}. A plain
 * key is hashed at once and never kept. Returns NULL, or the field that is wrong. */
static const char *consumer_from_json(const char *name, json_t *j, struct polis_consumer_cfg *c)
{
    memset(c, 0, sizeof(*c));
    json_t *groups = json_object_get(j, "groups"), *keys = json_object_get(j, "keys");
    json_t *plain = json_object_get(j, "key");
    if (groups != NULL && (!json_is_array(groups) || json_array_size(groups) > 64))
        return "groups";
    if (keys != NULL && (!json_is_array(keys) || json_array_size(keys) > 64))
        return "keys";
    if (plain != NULL && (!json_is_string(plain) || json_string_length(plain) < 16))
        return "key";
    size_t ng = json_array_size(groups), nk = json_array_size(keys) + (plain != NULL);
    c->name = strdup(name);
    c->groups = calloc(ng + 1, sizeof(*c->groups));
    c->key_sha256 = calloc(nk + 1, sizeof(*c->key_sha256));
    if (c->name == NULL || c->groups == NULL || c->key_sha256 == NULL)
        return "memory";
    for (size_t i = 0; i < ng; i++) {
        const char *g = json_string_value(json_array_get(groups, i));
        if (g == NULL || g[0] == '\0' || (c->groups[c->num_groups++] = strdup(g)) == NULL)
            return "groups";
    }
    for (size_t i = 0; i < json_array_size(keys); i++) {
        const char *k = json_string_value(json_array_get(keys, i));
        if (k == NULL || !digest_of(k, c->key_sha256[c->num_keys++]))
            return "keys";
    }
    if (plain != NULL) {
        char stored[POLIS_APIKEY_HASH_LEN + 1];
        const char *k = json_string_value(plain);
        if (polis__apikey_hash((struct polis_str){k, strlen(k)}, stored) < 0 ||
            !digest_of(stored, c->key_sha256[c->num_keys++]))
            return "key";
    }
    return NULL;
}

static void consumers_api(struct polis_gateway *gw, struct polis_str name,
                          const struct polis_request *req, struct polis_response *res)
{
    if (name.len == 0) {
        struct gw_snapshot *s = snap_ref(gw);
        json_t *a = json_array();
        const struct polis_config *cfg = s->cfg;
        for (size_t i = 0; i < cfg->num_consumers; i++)
            json_array_append_new(a, json_pack("{s:s,s:s,s:i}", "name", cfg->consumers[i].name,
                                               "source", "config", "keys",
                                               (int)cfg->consumers[i].num_keys));
        pthread_mutex_lock(&gw->rebuild_lock);
        for (size_t i = 0; i < gw->num_admin_consumers; i++)
            json_array_append_new(a, json_pack("{s:s,s:s,s:i}", "name", gw->admin_consumers[i].name,
                                               "source", "admin", "keys",
                                               (int)gw->admin_consumers[i].num_keys));
        pthread_mutex_unlock(&gw->rebuild_lock);
        polis__snapshot_release(s);
        reply(res, 200, json_pack("{s:o}", "consumers", a));
        return;
    }
    char cname[POLIS_CONSUMER_NAME_MAX + 1];
    if (name.len > POLIS_CONSUMER_NAME_MAX) {
        reply_bad_field(res, "name", "expected a consumer name of at most 128 bytes");
        return;
    }
    memcpy(cname, name.p, name.len);
    cname[name.len] = '\0';
    bool put = polis_str_eq(req->method, POLIS_STR("PUT"));
    bool del = polis_str_eq(req->method, POLIS_STR("DELETE"));
    if (!put && !del) {
        polis_response_header(res, "Allow", "PUT, DELETE");
        reply_error(res, 405, "method_not_allowed", "use PUT or DELETE");
        return;
    }
    struct polis_consumer_cfg c = {0};
    if (put) {
        json_t *j = body_json(req, res);
        if (j == NULL)
            return;
        const char *bad = consumer_from_json(cname, j, &c);
        json_decref(j);
        if (bad != NULL) {
            polis__edge_consumer_free(&c);
            reply_bad_field(res, bad,
                            "expected groups: [names], keys: [\"sha256:<64 hex>\"] "
                            "and/or key: a plain key of at least 16 bytes");
            return;
        }
    }
    pthread_mutex_lock(&gw->rebuild_lock);
    const struct polis_config *cfg = gw->cref->cfg;
    for (size_t i = 0; i < cfg->num_consumers; i++) {
        if (strcmp(cfg->consumers[i].name, cname) == 0) {
            pthread_mutex_unlock(&gw->rebuild_lock);
            polis__edge_consumer_free(&c);
            reply_error(res, 409, "conflict", "this consumer is defined in the configuration file");
            return;
        }
    }
    size_t at = gw->num_admin_consumers;
    for (size_t i = 0; i < gw->num_admin_consumers; i++)
        if (strcmp(gw->admin_consumers[i].name, cname) == 0)
            at = i;
    if (del && at == gw->num_admin_consumers) {
        pthread_mutex_unlock(&gw->rebuild_lock);
        reply_error(res, 404, "not_found", "no such consumer");
        return;
    }
    struct polis_consumer_cfg old = {0};
    if (at < gw->num_admin_consumers) {
        old = gw->admin_consumers[at];
        gw->admin_consumers[at] = gw->admin_consumers[--gw->num_admin_consumers];
    }
    if (put) {
        struct polis_consumer_cfg *v = realloc(
            gw->admin_consumers, (gw->num_admin_consumers + 1) * sizeof(*gw->admin_consumers));
        if (v != NULL) {
            gw->admin_consumers = v;
            v[gw->num_admin_consumers++] = c;
            memset(&c, 0, sizeof(c));
        }
    }
    int rc = polis__gateway_publish(gw, gw->cref);
    if (rc < 0 && put) { /* refused (a duplicate key): put the old state back */
        polis__edge_consumer_free(&gw->admin_consumers[--gw->num_admin_consumers]);
        if (old.name != NULL) {
            gw->admin_consumers[gw->num_admin_consumers++] = old;
            memset(&old, 0, sizeof(old));
        }
        polis__gateway_publish(gw, gw->cref);
    }
    pthread_mutex_unlock(&gw->rebuild_lock);
    polis__edge_consumer_free(&old);
    polis__edge_consumer_free(&c);
    if (rc < 0) {
        reply_bad_field(res, "keys", "a key is already another consumer's");
        return;
    }
    polis_info("admin: consumer %s %s", cname, put ? "set" : "removed");
    reply(res, 200, json_pack("{s:s,s:b}", "name", cname, "present", put));
}

static void admin_api(struct polis_gateway *gw, const struct polis_request *req,
                      struct polis_response *res)
{
    const char *p = req->path.p + 10, *end = req->path.p + req->path.len;
    struct polis_str what = segment(&p, end);
    struct polis_str name = p < end ? segment(&p, end) : (struct polis_str){NULL, 0};
    struct gw_snapshot *s = snap_ref(gw);
    const struct polis_config *cfg = s->cfg;
    if (seg_is(what, "clusters")) {
        if (name.len == 0) {
            json_t *a = json_array();
            for (size_t i = 0; i < cfg->num_clusters; i++)
                json_array_append_new(a, cluster_json(gw, s, i));
            reply(res, 200, json_pack("{s:o}", "clusters", a));
            goto out;
        }
        size_t ci = cfg->num_clusters;
        for (size_t i = 0; i < cfg->num_clusters; i++)
            if (seg_is(name, cfg->clusters[i].name))
                ci = i;
        if (ci == cfg->num_clusters) {
            reply_error(res, 404, "not_found", "no such cluster");
            goto out;
        }
        if (p >= end) {
            reply(res, 200, cluster_json(gw, s, ci));
            goto out;
        }
        struct polis_str inst = segment(&p, end);
        struct polis_str addr = segment(&p, end);
        struct polis_str action = segment(&p, end);
        if (!seg_is(inst, "instances") || addr.len == 0) {
            reply_error(res, 404, "not_found",
                        "expected /admin/v1/clusters/{name}/instances/"
                        "{address}/state or /weight");
            goto out;
        }
        instance_action(gw, s, ci, addr, action, req, res);
    } else if (seg_is(what, "routes")) {
        if (name.len == 0) {
            json_t *a = json_array();
            for (size_t i = 0; i < cfg->num_routes; i++)
                json_array_append_new(a, route_json(gw, s, i));
            reply(res, 200, json_pack("{s:o}", "routes", a));
            goto out;
        }
        size_t ri = cfg->num_routes;
        for (size_t i = 0; i < cfg->num_routes; i++)
            if (seg_is(name, cfg->routes[i].name))
                ri = i;
        if (ri == cfg->num_routes) {
            reply_error(res, 404, "not_found", "no such route");
            goto out;
        }
        struct polis_str action = segment(&p, end);
        if (action.len == 0) {
            reply(res, 200, route_json(gw, s, ri));
        } else if (seg_is(action, "splits")) {
            char route[256];
            snprintf(route, sizeof(route), "%s", cfg->routes[ri].name);
            polis__snapshot_release(s);
            route_splits_action(gw, route, req, res);
            return;
        } else {
            reply_error(res, 404, "not_found", "expected /admin/v1/routes/{name}/splits");
        }
    } else if (seg_is(what, "consumers")) {
        polis__snapshot_release(s);
        consumers_api(gw, name, req, res);
        return;
    } else if (seg_is(what, "config")) {
        json_t *cl = json_array(), *rt = json_array();
        for (size_t i = 0; i < cfg->num_clusters; i++)
            json_array_append_new(cl, json_string(cfg->clusters[i].name));
        for (size_t i = 0; i < cfg->num_routes; i++)
            json_array_append_new(rt, json_pack("{s:s,s:s}", "name", cfg->routes[i].name, "cluster",
                                                cfg->routes[i].cluster));
        reply(res, 200,
              json_pack("{s:I,s:s,s:i,s:s,s:o,s:o}", "version", (json_int_t)s->version, "source",
                        cfg->source, "workers", s->workers, "listen", cfg->listen.text, "clusters",
                        cl, "routes", rt));
    } else {
        reply_error(res, 404, "not_found",
                    "expected /admin/v1/clusters, /routes, /consumers or /config");
    }
out:
    polis__snapshot_release(s);
}

/* "Bearer <token>" against the configured token, in time independent of where they differ. */
static bool bearer_ok(const struct polis_str *auth, const char *token)
{
    static const char scheme[] = "Bearer ";
    size_t n = strlen(token);
    if (auth == NULL || auth->len != sizeof(scheme) - 1 + n ||
        strncasecmp(auth->p, scheme, sizeof(scheme) - 1) != 0)
        return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(auth->p[sizeof(scheme) - 1 + i] ^ token[i]);
    return diff == 0;
}

/* The admin listener: health for orchestrators, metrics for Prometheus, status for people. */
void polis__admin_handler(const struct polis_request *req, struct polis_response *res, void *ud)
{
    struct polis_gateway *gw = ud;
    if (gw->admin_token != NULL &&
        !bearer_ok(polis_request_header(req, "Authorization"), gw->admin_token)) {
        polis_response_status(res, 401);
        polis_response_header(res, "Content-Type", "application/json");
        polis_response_header(res, "WWW-Authenticate", "Bearer realm=\"polis-admin\"");
        polis_response_printf(res, "{\"error\":\"unauthorized\",\"status\":401,"
                                   "\"message\":\"the admin listener requires its bearer "
                                   "token\"}\n");
        return;
    }
    if (polis_str_eq(req->path, POLIS_STR("/metrics"))) {
        struct polis_buf out;
        polis_buf_init(&out, 64u << 20);
        polis_response_header(res, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        if (polis_metrics_render(gw->metrics.reg, &out) < 0) {
            polis_response_status(res, 500);
        } else {
            polis_response_body(res, polis_buf_head(&out), polis_buf_len(&out));
        }
        polis_buf_free(&out);
        return;
    }
    if (req->path.len >= 10 && memcmp(req->path.p, "/admin/v1/", 10) == 0) {
        admin_api(gw, req, res);
        return;
    }
    if (gw->registry != NULL && polis__registry_handle(gw->registry, req, res))
        return;
    polis_response_header(res, "Content-Type", "application/json");
    if (polis_str_eq(req->path, POLIS_STR("/health"))) {
        polis_response_printf(res, "{\"status\":\"ok\"}\n");
    } else if (polis_str_eq(req->path, POLIS_STR("/ready"))) {
        if (atomic_load(&gw->draining)) {
            polis_response_status(res, 503);
            polis_response_printf(res, "{\"status\":\"draining\"}\n");
        } else {
            polis_response_printf(res, "{\"status\":\"ready\",\"config_version\":%llu}\n",
                                  (unsigned long long)atomic_load(&gw->version));
        }
    } else if (polis_str_eq(req->path, POLIS_STR("/status"))) {
        admin_status(gw, res);
    } else {
        polis_response_status(res, 404);
        polis_response_printf(res, "{\"error\":\"not_found\",\"status\":404}\n");
    }
}
