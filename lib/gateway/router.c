/* router.c: the route table: routes compiled into host groups and first-segment buckets. */
#include "gateway/router.h"
#include "gateway/balance.h"

#include <stdlib.h>
#include <string.h>

/* Layout (see docs/internals/gateway-routing.md):
 * - routes[] holds the compiled routes sorted by specificity, so a route's position is its rank
 *   and "more specific" is "smaller id".
 * - Routes are grouped by host: one group per exact host, one per wildcard suffix, one for any
 *   host. Groups are found with two hash tables keyed on the lowercased host / ".suffix".
 * - Inside a group, routes whose first path segment is fixed (exact paths, patterns with a
 *   literal first segment, prefixes that contain a whole first segment) sit in a bucket keyed on
 *   that segment; the others (any path, short prefixes, patterns starting with a parameter) sit in
 *   the group's wild list. Every list is sorted by id, and matching merges the request's bucket
 *   with the wild list, stopping at the first full match. */

enum { HOST_ANY = 0, HOST_WILD = 1, HOST_EXACT = 2 };

#define NONE UINT32_MAX

struct rseg {
    const char *p;
    uint32_t len;
    bool param;
};

struct rhdr {
    const char *name;
    const char *value; /* NULL: presence only */
    uint32_t name_len;
    uint32_t value_len;
    bool cookie; /* a cookie of that name, not a header */
};

struct rroute {
    const char *path;
    uint32_t path_len;
    uint32_t cfg_index;
    uint8_t host_kind;
    uint8_t path_kind;
    bool pat_slash; /* PATTERN: the pattern starts with '/' */
    uint32_t seg, nsegs, lits;
    uint32_t meth, nmeths;
    uint32_t hdr, nhdrs;
    const char *host; /* lowercased, port removed; ".suffix" for wildcards */
    uint32_t host_len;
    uint32_t group;
};

struct hslot {
    const char *key;
    uint32_t len;
    uint32_t hash;
    uint32_t val; /* NONE: empty */
};

struct htab {
    struct hslot *slots;
    uint32_t mask;
    uint32_t count;
};

struct rbucket {
    uint32_t list, n; /* route ids in lists[list .. list + n) */
};

struct rgroup {
    struct htab segs; /* first segment -> bucket index */
    uint32_t wild, nwild;
    uint32_t size; /* build only */
};

struct polis_router {
    struct rroute *routes;
    size_t n;
    struct rseg *segs;
    struct polis_str *meths;
    struct rhdr *hdrs;
    char *hostbuf;
    struct htab exact_hosts; /* lowercased host -> group */
    struct htab wild_hosts;  /* lowercased ".suffix" -> group */
    uint32_t any_group;      /* NONE when no route has an any-host condition */
    struct rgroup *groups;
    uint32_t ngroups;
    struct rbucket *buckets;
    uint32_t nbuckets;
    uint32_t *lists;
};

/* ---- Small helpers ------------------------------------------------------------------------- */

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static inline bool bytes_eq(const char *a, const char *b, size_t n)
{
    return n == 0 || memcmp(a, b, n) == 0;
}

static bool bytes_caseeq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    return true;
}

/* FNV-1a over a segment, case-sensitive. */
static inline uint32_t seg_hash(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

/* FNV-1a over the lowercased bytes taken from the last one to the first: the hash of every
 * suffix of a host comes out along the way, which is what wildcard lookups need. */
static inline uint32_t rhash_step(uint32_t h, char c)
{
    return (h ^ lower((unsigned char)c)) * 16777619u;
}

static uint32_t host_hash(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    while (n > 0)
        h = rhash_step(h, p[--n]);
    return h;
}

/* The first path segment: after one leading '/', up to the next '/' or the end. */
static inline struct polis_str first_segment(const char *p, size_t n)
{
    const char *e = p + n;
    if (n > 0 && *p == '/')
        p++;
    const char *q = p < e ? memchr(p, '/', (size_t)(e - p)) : NULL;
    return (struct polis_str){p, (size_t)((q ? q : e) - p)};
}

/* The host without a ":port" suffix ("[v6]:port" keeps its brackets) and without one trailing
 * dot. */
static inline struct polis_str host_strip(const char *p, size_t n)
{
    if (n > 0 && p[0] == '[') {
        const char *rb = memchr(p, ']', n);
        if (rb)
            n = (size_t)(rb - p) + 1;
    } else if (n > 0) {
        const char *c = memchr(p, ':', n);
        if (c)
            n = (size_t)(c - p);
    }
    if (n > 1 && p[n - 1] == '.')
        n--;
    return (struct polis_str){p, n};
}

static int htab_init(struct htab *t, size_t n)
{
    size_t cap = 8;
    while (cap < n * 2)
        cap <<= 1;
    t->slots = malloc(cap * sizeof(*t->slots));
    if (!t->slots)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < cap; i++)
        t->slots[i] = (struct hslot){NULL, 0, 0, NONE};
    t->mask = (uint32_t)(cap - 1);
    t->count = 0;
    return 0;
}

/* The slot holding key, or the empty slot where it would go. Keys of case-insensitive tables
 * are stored lowercased. */
static inline struct hslot *htab_slot(const struct htab *t, const char *k, size_t len, uint32_t h,
                                      bool ci)
{
    for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
        struct hslot *s = &t->slots[i];
        if (s->val == NONE)
            return s;
        if (s->hash == h && s->len == len &&
            (ci ? bytes_caseeq(s->key, k, len) : bytes_eq(s->key, k, len)))
            return s;
    }
}

static inline uint32_t htab_get(const struct htab *t, const char *k, size_t len, uint32_t h,
                                bool ci)
{
    if (t->count == 0)
        return NONE;
    return htab_slot(t, k, len, h, ci)->val;
}

/* ---- Build --------------------------------------------------------------------------------- */

static size_t cstrlen(const char *s)
{
    return s ? strlen(s) : 0;
}

static int route_cmp(const void *a, const void *b)
{
    const struct rroute *x = a, *y = b;
    static const int path_class[] = {[POLIS_PATH_ANY] = 0,
                                     [POLIS_PATH_PREFIX] = 1,
                                     [POLIS_PATH_PATTERN] = 2,
                                     [POLIS_PATH_EXACT] = 3};
    if (x->host_kind != y->host_kind)
        return x->host_kind > y->host_kind ? -1 : 1;
    int cx = path_class[x->path_kind], cy = path_class[y->path_kind];
    if (cx != cy)
        return cx > cy ? -1 : 1;
    if (x->path_kind == POLIS_PATH_PATTERN && x->lits != y->lits)
        return x->lits > y->lits ? -1 : 1;
    if (x->path_kind == POLIS_PATH_PREFIX && x->path_len != y->path_len)
        return x->path_len > y->path_len ? -1 : 1;
    if ((x->nmeths > 0) != (y->nmeths > 0))
        return x->nmeths > 0 ? -1 : 1;
    if (x->nhdrs != y->nhdrs)
        return x->nhdrs > y->nhdrs ? -1 : 1;
    return x->cfg_index < y->cfg_index ? -1 : x->cfg_index > y->cfg_index;
}

/* Fill the host fields of rt from the configured host, writing the lowercased form at *buf. */
static void compile_host(struct rroute *rt, const char *host, char **buf)
{
    size_t n = cstrlen(host);
    if (n == 0 || (n == 1 && host[0] == '*')) {
        rt->host_kind = HOST_ANY;
        return;
    }
    char *d = *buf;
    for (size_t i = 0; i < n; i++)
        d[i] = (char)lower((unsigned char)host[i]);
    struct polis_str s = host_strip(d, n);
    *buf += n + 1;
    if (s.len >= 2 && s.p[0] == '*' && s.p[1] == '.') {
        rt->host_kind = HOST_WILD;
        rt->host = s.p + 1;
        rt->host_len = (uint32_t)(s.len - 1);
    } else {
        rt->host_kind = HOST_EXACT;
        rt->host = s.p;
        rt->host_len = (uint32_t)s.len;
    }
}

/* Split a pattern into segments (after one leading '/'); with segs NULL, only count them. */
static uint32_t split_pattern(const char *p, size_t n, struct rseg *segs, uint32_t *lits)
{
    const char *e = p + n;
    uint32_t count = 0;
    if (n > 0 && *p == '/')
        p++;
    for (;;) {
        const char *q = p < e ? memchr(p, '/', (size_t)(e - p)) : NULL;
        const char *end = q ? q : e;
        size_t len = (size_t)(end - p);
        if (segs) {
            bool param = len >= 2 && p[0] == '{' && p[len - 1] == '}';
            segs[count] = (struct rseg){p, (uint32_t)len, param};
            if (!param)
                (*lits)++;
        }
        count++;
        if (!q)
            break;
        p = q + 1;
    }
    return count;
}

/* The bucket key of a compiled route: false when the route may match any first segment. */
static bool route_key(const struct polis_router *r, const struct rroute *rt, struct polis_str *key)
{
    switch (rt->path_kind) {
    case POLIS_PATH_EXACT:
        *key = first_segment(rt->path, rt->path_len);
        return true;
    case POLIS_PATH_PATTERN: {
        const struct rseg *s = &r->segs[rt->seg];
        if (s->param)
            return false;
        *key = (struct polis_str){s->p, s->len};
        return true;
    }
    case POLIS_PATH_PREFIX: {
        /* Only a prefix holding a whole first segment (and the '/' after it) fixes it. */
        struct polis_str seg = first_segment(rt->path, rt->path_len);
        if (seg.p + seg.len >= rt->path + rt->path_len)
            return false;
        *key = seg;
        return true;
    }
    default:
        return false;
    }
}

static int build_groups(struct polis_router *r)
{
    size_t nexact = 0, nwild = 0;
    for (size_t i = 0; i < r->n; i++) {
        nexact += r->routes[i].host_kind == HOST_EXACT;
        nwild += r->routes[i].host_kind == HOST_WILD;
    }
    if (htab_init(&r->exact_hosts, nexact) || htab_init(&r->wild_hosts, nwild))
        return POLIS_ENOMEM;
    r->groups = calloc(r->n + 1, sizeof(*r->groups));
    uint32_t *bucket_of = malloc((r->n + 1) * sizeof(*bucket_of));
    int err = POLIS_ENOMEM;
    if (!r->groups || !bucket_of)
        goto out;

    /* Assign groups. */
    for (size_t i = 0; i < r->n; i++) {
        struct rroute *rt = &r->routes[i];
        if (rt->host_kind == HOST_ANY) {
            if (r->any_group == NONE)
                r->any_group = r->ngroups++;
            rt->group = r->any_group;
        } else {
            struct htab *t = rt->host_kind == HOST_EXACT ? &r->exact_hosts : &r->wild_hosts;
            uint32_t h = host_hash(rt->host, rt->host_len);
            struct hslot *s = htab_slot(t, rt->host, rt->host_len, h, true);
            if (s->val == NONE) {
                *s = (struct hslot){rt->host, rt->host_len, h, r->ngroups++};
                t->count++;
            }
            rt->group = s->val;
        }
        r->groups[rt->group].size++;
    }
    for (uint32_t g = 0; g < r->ngroups; g++)
        if (htab_init(&r->groups[g].segs, r->groups[g].size))
            goto out;

    /* Assign buckets (bucket_of[i] = NONE for wild routes) and count entries. */
    r->buckets = calloc(r->n + 1, sizeof(*r->buckets));
    r->lists = malloc((r->n + 1) * sizeof(*r->lists));
    if (!r->buckets || !r->lists)
        goto out;
    for (size_t i = 0; i < r->n; i++) {
        const struct rroute *rt = &r->routes[i];
        struct rgroup *g = &r->groups[rt->group];
        struct polis_str key;
        if (!route_key(r, rt, &key)) {
            bucket_of[i] = NONE;
            g->nwild++;
            continue;
        }
        uint32_t h = seg_hash(key.p, key.len);
        struct hslot *s = htab_slot(&g->segs, key.p, key.len, h, false);
        if (s->val == NONE) {
            *s = (struct hslot){key.p, (uint32_t)key.len, h, r->nbuckets++};
            g->segs.count++;
        }
        bucket_of[i] = s->val;
        r->buckets[s->val].n++;
    }

    /* Lay the lists out: per group, the wild list then its buckets. */
    uint32_t pos = 0;
    for (uint32_t gi = 0; gi < r->ngroups; gi++) {
        struct rgroup *g = &r->groups[gi];
        g->wild = pos;
        pos += g->nwild;
        g->nwild = 0;
        for (uint32_t k = 0; k <= g->segs.mask; k++) {
            uint32_t b = g->segs.slots[k].val;
            if (b != NONE) {
                r->buckets[b].list = pos;
                pos += r->buckets[b].n;
                r->buckets[b].n = 0;
            }
        }
    }
    /* Fill them in id order, so every list is sorted. */
    for (size_t i = 0; i < r->n; i++) {
        struct rgroup *g = &r->groups[r->routes[i].group];
        if (bucket_of[i] == NONE) {
            r->lists[g->wild + g->nwild++] = (uint32_t)i;
        } else {
            struct rbucket *b = &r->buckets[bucket_of[i]];
            r->lists[b->list + b->n++] = (uint32_t)i;
        }
    }
    err = 0;
out:
    free(bucket_of);
    return err;
}

int polis__router_new(const struct polis_config *cfg, struct polis_router **out)
{
    int err = POLIS_ENOMEM;
    struct polis_router *r = calloc(1, sizeof(*r));
    if (!r)
        return POLIS_ENOMEM;
    r->any_group = NONE;
    r->n = cfg->num_routes;
    if (r->n >= NONE / 2) {
        err = POLIS_EINVAL;
        goto fail;
    }

    size_t nsegs = 0, nmeths = 0, nhdrs = 0, hostbytes = 0;
    for (size_t i = 0; i < r->n; i++) {
        const struct polis_route_cfg *rc = &cfg->routes[i];
        if (rc->path_kind == POLIS_PATH_PATTERN)
            nsegs += split_pattern(rc->path ? rc->path : "", cstrlen(rc->path), NULL, NULL);
        nmeths += rc->methods ? rc->num_methods : 0;
        nhdrs += (rc->headers ? rc->num_headers : 0) + (rc->cookies ? rc->num_cookies : 0);
        hostbytes += cstrlen(rc->host) + 1;
    }
    r->routes = calloc(r->n + 1, sizeof(*r->routes));
    r->segs = calloc(nsegs + 1, sizeof(*r->segs));
    r->meths = calloc(nmeths + 1, sizeof(*r->meths));
    r->hdrs = calloc(nhdrs + 1, sizeof(*r->hdrs));
    r->hostbuf = malloc(hostbytes + 1);
    if (!r->routes || !r->segs || !r->meths || !r->hdrs || !r->hostbuf)
        goto fail;

    uint32_t seg = 0, meth = 0, hdr = 0;
    char *hb = r->hostbuf;
    for (size_t i = 0; i < r->n; i++) {
        const struct polis_route_cfg *rc = &cfg->routes[i];
        struct rroute *rt = &r->routes[i];
        rt->cfg_index = (uint32_t)i;
        compile_host(rt, rc->host, &hb);
        rt->path_kind = (uint8_t)rc->path_kind;
        if (rc->path_kind > POLIS_PATH_PATTERN) {
            err = POLIS_EINVAL;
            goto fail;
        }
        rt->path = rc->path ? rc->path : "";
        rt->path_len = (uint32_t)cstrlen(rc->path);
        if (rc->path_kind == POLIS_PATH_PATTERN) {
            rt->seg = seg;
            rt->pat_slash = rt->path_len > 0 && rt->path[0] == '/';
            rt->nsegs = split_pattern(rt->path, rt->path_len, &r->segs[seg], &rt->lits);
            seg += rt->nsegs;
        }
        rt->meth = meth;
        for (size_t k = 0; rc->methods && k < rc->num_methods; k++)
            r->meths[meth++] = (struct polis_str){rc->methods[k], cstrlen(rc->methods[k])};
        rt->nmeths = meth - rt->meth;
        rt->hdr = hdr;
        for (size_t k = 0; rc->headers && k < rc->num_headers; k++) {
            const struct polis_header_match *hm = &rc->headers[k];
            r->hdrs[hdr++] =
                (struct rhdr){hm->name ? hm->name : "", hm->value, (uint32_t)cstrlen(hm->name),
                              (uint32_t)cstrlen(hm->value), false};
        }
        for (size_t k = 0; rc->cookies && k < rc->num_cookies; k++) {
            const struct polis_header_match *cm = &rc->cookies[k];
            r->hdrs[hdr++] =
                (struct rhdr){cm->name ? cm->name : "", cm->value, (uint32_t)cstrlen(cm->name),
                              (uint32_t)cstrlen(cm->value), true};
        }
        rt->nhdrs = hdr - rt->hdr;
    }
    qsort(r->routes, r->n, sizeof(*r->routes), route_cmp);
    err = build_groups(r);
    if (err)
        goto fail;
    *out = r;
    return 0;
fail:
    polis__router_free(r);
    return err;
}

void polis__router_free(struct polis_router *r)
{
    if (!r)
        return;
    for (uint32_t g = 0; r->groups && g < r->ngroups; g++)
        free(r->groups[g].segs.slots);
    free(r->groups);
    free(r->buckets);
    free(r->lists);
    free(r->exact_hosts.slots);
    free(r->wild_hosts.slots);
    free(r->routes);
    free(r->segs);
    free(r->meths);
    free(r->hdrs);
    free(r->hostbuf);
    free(r);
}

/* ---- Match --------------------------------------------------------------------------------- */

struct req {
    struct polis_str path, seg, method;
    uint32_t seg_hash;
    const struct polis_h1_msg *m;
};

static bool pattern_matches(const struct polis_router *r, const struct rroute *rt,
                            struct polis_str path)
{
    const char *p = path.p, *e = path.p + path.len;
    bool slash = path.len > 0 && *p == '/';
    if (slash != rt->pat_slash)
        return false;
    p += slash;
    const struct rseg *s = &r->segs[rt->seg];
    for (uint32_t i = 0; i < rt->nsegs; i++, s++) {
        const char *q = p < e ? memchr(p, '/', (size_t)(e - p)) : NULL;
        const char *end = q ? q : e;
        size_t len = (size_t)(end - p);
        if (s->param ? len == 0 : (len != s->len || !bytes_eq(p, s->p, len)))
            return false;
        if (i + 1 < rt->nsegs) {
            if (!q)
                return false;
            p = q + 1;
        } else if (q) {
            return false;
        }
    }
    return true;
}

static bool header_present(const struct polis_h1_msg *m, const struct rhdr *c)
{
    if (c->cookie) {
        struct polis_str v;
        return polis__cookie_value(m, c->name, c->name_len, &v) &&
               (!c->value || (v.len == c->value_len && bytes_eq(v.p, c->value, c->value_len)));
    }
    for (size_t i = 0; i < m->num_headers; i++) {
        const struct polis_h1_header *h = &m->headers[i];
        if (h->name.len == c->name_len && bytes_caseeq(h->name.p, c->name, c->name_len) &&
            (!c->value ||
             (h->value.len == c->value_len && bytes_eq(h->value.p, c->value, c->value_len))))
            return true;
    }
    return false;
}

static bool route_matches(const struct polis_router *r, const struct rroute *rt,
                          const struct req *q)
{
    switch (rt->path_kind) {
    case POLIS_PATH_EXACT:
        if (q->path.len != rt->path_len || !bytes_eq(q->path.p, rt->path, rt->path_len))
            return false;
        break;
    case POLIS_PATH_PREFIX:
        if (q->path.len < rt->path_len || !bytes_eq(q->path.p, rt->path, rt->path_len))
            return false;
        break;
    case POLIS_PATH_PATTERN:
        if (!pattern_matches(r, rt, q->path))
            return false;
        break;
    default:
        break;
    }
    if (rt->nmeths > 0) {
        const struct polis_str *mt = &r->meths[rt->meth];
        uint32_t k = 0;
        for (; k < rt->nmeths; k++)
            if (mt[k].len == q->method.len && bytes_eq(mt[k].p, q->method.p, q->method.len))
                break;
        if (k == rt->nmeths)
            return false;
    }
    for (uint32_t k = 0; k < rt->nhdrs; k++)
        if (!q->m || !header_present(q->m, &r->hdrs[rt->hdr + k]))
            return false;
    return true;
}

/* The id of the best route of group g matching the request, or NONE. */
static uint32_t match_group(const struct polis_router *r, uint32_t g, const struct req *q)
{
    const struct rgroup *G = &r->groups[g];
    const uint32_t *a = NULL, *ae = NULL;
    uint32_t b = htab_get(&G->segs, q->seg.p, q->seg.len, q->seg_hash, false);
    if (b != NONE) {
        a = r->lists + r->buckets[b].list;
        ae = a + r->buckets[b].n;
    }
    const uint32_t *w = r->lists + G->wild, *we = w + G->nwild;
    while (a != ae || w != we) {
        uint32_t id = (a != ae && (w == we || *a < *w)) ? *a++ : *w++;
        if (route_matches(r, &r->routes[id], q))
            return id;
    }
    return NONE;
}

int polis__router_match(const struct polis_router *r, struct polis_str host, struct polis_str path,
                        struct polis_str method, const struct polis_h1_msg *m)
{
    /* Views may be {NULL, 0}: give them a base so that pointer arithmetic stays defined. */
    if (!host.p)
        host.p = "";
    if (!path.p)
        path.p = "";
    if (!method.p)
        method.p = "";
    struct req q = {.path = path, .method = method, .m = m};
    q.seg = first_segment(path.p, path.len);
    q.seg_hash = seg_hash(q.seg.p, q.seg.len);
    struct polis_str h = host_strip(host.p, host.len);
    uint32_t id;

    if (r->exact_hosts.count) {
        uint32_t g = htab_get(&r->exact_hosts, h.p, h.len, host_hash(h.p, h.len), true);
        if (g != NONE && (id = match_group(r, g, &q)) != NONE)
            return (int)r->routes[id].cfg_index;
    }
    if (r->wild_hosts.count) {
        /* Every suffix starting at a dot (with at least one byte before it) may name a group;
         * each group's best match is its first, and the best of those wins. */
        uint32_t best = NONE, hh = 2166136261u;
        for (size_t i = h.len; i-- > 0;) {
            hh = rhash_step(hh, h.p[i]);
            if (h.p[i] != '.' || i == 0)
                continue;
            uint32_t g = htab_get(&r->wild_hosts, h.p + i, h.len - i, hh, true);
            if (g != NONE && (id = match_group(r, g, &q)) < best)
                best = id;
        }
        if (best != NONE)
            return (int)r->routes[best].cfg_index;
    }
    if (r->any_group != NONE && (id = match_group(r, r->any_group, &q)) != NONE)
        return (int)r->routes[id].cfg_index;
    return -1;
}

/* ---- Upstream path ------------------------------------------------------------------------- */

int polis__route_upstream_path(const struct polis_route_cfg *route, struct polis_str path,
                               char *out, size_t cap, size_t *out_len)
{
    /* The result is head + tail: head replaces the matched part, tail is what follows it. */
    if (!path.p)
        path.p = "";
    struct polis_str head = {"", 0}, tail = path;
    bool slash = false; /* strip_prefix: put back the leading '/' */
    size_t plen = cstrlen(route->path);
    bool prefix_ok = path.len >= plen && bytes_eq(path.p, route->path, plen);

    if (route->path_kind == POLIS_PATH_PREFIX || route->path_kind == POLIS_PATH_ANY) {
        if (route->path_kind == POLIS_PATH_ANY)
            plen = 0;
        if (route->rewrite && (prefix_ok || plen == 0)) {
            head = (struct polis_str){route->rewrite, strlen(route->rewrite)};
            tail = (struct polis_str){path.p + plen, path.len - plen};
        } else if (route->strip_prefix && route->path_kind == POLIS_PATH_PREFIX && prefix_ok) {
            tail = (struct polis_str){path.p + plen, path.len - plen};
            slash = tail.len > 0 && tail.p[0] != '/';
        }
    } else if (route->rewrite) {
        head = (struct polis_str){route->rewrite, strlen(route->rewrite)};
        tail = (struct polis_str){"", 0};
    }

    size_t len = slash + head.len + tail.len;
    bool root = len == 0;
    if (root)
        len = 1;
    if (len > cap)
        return POLIS_ETOOBIG;
    if (root || slash)
        out[0] = '/';
    if (head.len)
        memcpy(out + slash, head.p, head.len);
    if (tail.len)
        memcpy(out + slash + head.len, tail.p, tail.len);
    *out_len = len;
    return 0;
}
