/* balance.c: load balancers: round-robin, smooth weighted round-robin, least-request (power of
 * two choices) and a consistent-hash ring; plus the hashing key of a request. */
#include "gateway/balance.h"

#include <stdlib.h>
#include <string.h>

/* Ring points per unit of weight and the cap on the whole ring. Past the cap every instance gets
 * points in proportion to its weight (at least one). nginx/ketama use 160 points, but an
 * instance's share then varies by 1/sqrt(160) = 8% (measured: up to 16% off on 4 or 5
 * instances); 1024 brings that to 3% for 8 bytes + 4 bytes per point. The count per instance
 * must not depend on the other instances (below the cap), or removing one would move keys
 * between the ones that stay. */
#define RING_POINTS_PER_WEIGHT 1024
#define RING_MAX_POINTS 40000

#define GOLDEN 0x9e3779b97f4a7c15ull

struct polis_lb {
    const struct polis_instance_cfg *v; /* the instances balanced over (outlive the balancer) */
    enum polis_lb_kind kind;
    size_t n;
    uint32_t *weight;    /* n weights, 0 read as 1 */
    uint64_t *cumweight; /* n prefix sums (weighted random choice) */
    uint64_t total;      /* sum of weights */
    bool equal;          /* every weight the same */
    uint64_t *ring;      /* npoints hashes, ascending */
    uint32_t *ring_idx;  /* the instance of each point */
    size_t npoints;
    uint32_t *lut; /* (1 << lut_bits) + 1 entries: first point whose top bits are >= b */
    unsigned lut_bits;
};

struct polis_lb_state {
    const struct polis_lb *lb;
    uint64_t rng;
    size_t cursor;
    int64_t *current; /* smooth weighted round-robin */
    uint32_t *active; /* requests picked and not yet done, per instance */
};

/* ---- Hashing and random numbers -------------------------------------------------------------- */

/* A 64-bit finalizer (the splitmix64 one): every input bit affects every output bit. */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static inline uint64_t load64le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Hash n bytes: 8-byte little-endian words chained through mix64, the length folded in at the
 * start. Same result on every architecture, so every gateway replica maps a key alike. */
static uint64_t hash64(const void *data, size_t n, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = mix64(seed ^ (GOLDEN * (n + 1)));
    for (; n >= 8; n -= 8, p += 8)
        h = mix64(h ^ load64le(p));
    uint64_t t = 0;
    for (size_t i = 0; i < n; i++)
        t |= (uint64_t)p[i] << (8 * i);
    return mix64(h ^ t ^ GOLDEN);
}

static inline uint64_t rng_next(uint64_t *s)
{
    *s += GOLDEN;
    return mix64(*s);
}

/* Uniform in [0, n) for n < 2^32 (multiply-shift; the bias is below 2^-32 * n). */
static inline size_t rng_below(uint64_t *s, size_t n)
{
    return (size_t)(((rng_next(s) >> 32) * (uint64_t)n) >> 32);
}

/* ---- Build ----------------------------------------------------------------------------------- */

struct point {
    uint64_t h;
    uint32_t idx;
};

static int point_cmp(const void *a, const void *b)
{
    const struct point *x = a, *y = b;
    if (x->h != y->h)
        return x->h < y->h ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Points of every instance, placed by its address text (so an instance keeps its points when
 * others come or go) and its rank among instances with the same text. */
static int build_ring(struct polis_lb *lb)
{
    const struct polis_instance_cfg *v = lb->v;
    uint64_t per = RING_POINTS_PER_WEIGHT;
    bool scaled = lb->total * per > RING_MAX_POINTS;
    size_t total = 0;
    for (size_t i = 0; i < lb->n; i++) {
        uint64_t k =
            scaled ? lb->weight[i] * (uint64_t)RING_MAX_POINTS / lb->total : lb->weight[i] * per;
        total += k ? k : 1;
    }
    struct point *pts = malloc(total * sizeof(*pts));
    lb->ring = malloc(total * sizeof(*lb->ring));
    lb->ring_idx = malloc(total * sizeof(*lb->ring_idx));
    if (!pts || !lb->ring || !lb->ring_idx)
        goto nomem;

    size_t np = 0;
    for (size_t i = 0; i < lb->n; i++) {
        const char *text = v[i].addr.text;
        size_t tlen = strnlen(text, sizeof(v[i].addr.text));
        uint64_t dup = 0;
        for (size_t j = 0; j < i; j++)
            dup += strncmp(v[j].addr.text, text, sizeof(v[j].addr.text)) == 0;
        uint64_t base = hash64(text, tlen, dup);
        uint64_t k =
            scaled ? lb->weight[i] * (uint64_t)RING_MAX_POINTS / lb->total : lb->weight[i] * per;
        if (k == 0)
            k = 1;
        for (uint64_t r = 0; r < k; r++)
            pts[np++] = (struct point){mix64(base + (r + 1) * GOLDEN), (uint32_t)i};
    }
    qsort(pts, np, sizeof(*pts), point_cmp);
    for (size_t i = 0; i < np; i++) {
        lb->ring[i] = pts[i].h;
        lb->ring_idx[i] = pts[i].idx;
    }
    lb->npoints = np;
    free(pts);
    pts = NULL;

    /* A lookup table on the top bits narrows the binary search to a few points. */
    unsigned bits = 4;
    while (bits < 16 && ((size_t)1 << bits) < np)
        bits++;
    lb->lut_bits = bits;
    size_t nb = (size_t)1 << bits;
    lb->lut = malloc((nb + 1) * sizeof(*lb->lut));
    if (!lb->lut)
        goto nomem;
    size_t p = 0;
    for (size_t b = 0; b <= nb; b++) {
        while (p < np && (lb->ring[p] >> (64 - bits)) < b)
            p++;
        lb->lut[b] = (uint32_t)p;
    }
    return 0;
nomem:
    free(pts);
    return POLIS_ENOMEM;
}

int polis__lb_new(const struct polis_cluster_cfg *c, const struct polis_instance_cfg *v, size_t n,
                  struct polis_lb **out)
{
    /* The sum of weights must stay below 2^32 for rng_below(). */
    if (n == 0 || n > 100000)
        return POLIS_EINVAL;
    struct polis_lb *lb = calloc(1, sizeof(*lb));
    if (!lb)
        return POLIS_ENOMEM;
    lb->v = v;
    lb->kind = c->lb;
    lb->n = n;
    lb->weight = malloc(lb->n * sizeof(*lb->weight));
    lb->cumweight = malloc(lb->n * sizeof(*lb->cumweight));
    if (!lb->weight || !lb->cumweight)
        goto nomem;
    lb->equal = true;
    for (size_t i = 0; i < lb->n; i++) {
        uint32_t w = v[i].weight ? v[i].weight : 1;
        if (w > 10000) /* the configuration range; keeps the sum below 2^32 */
            w = 10000;
        lb->weight[i] = w;
        lb->total += w;
        lb->cumweight[i] = lb->total;
        if (w != lb->weight[0])
            lb->equal = false;
    }
    if (lb->kind == POLIS_LB_HASH && build_ring(lb))
        goto nomem;
    *out = lb;
    return 0;
nomem:
    polis__lb_free(lb);
    return POLIS_ENOMEM;
}

void polis__lb_free(struct polis_lb *lb)
{
    if (!lb)
        return;
    free(lb->weight);
    free(lb->cumweight);
    free(lb->ring);
    free(lb->ring_idx);
    free(lb->lut);
    free(lb);
}

static size_t pick_weighted(const struct polis_lb *lb, struct polis_lb_state *st);

struct polis_lb_state *polis__lb_state_new(const struct polis_lb *lb, uint64_t seed)
{
    struct polis_lb_state *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->current = calloc(lb->n, sizeof(*st->current));
    st->active = calloc(lb->n, sizeof(*st->active));
    if (!st->current || !st->active) {
        polis__lb_state_free(st);
        return NULL;
    }
    st->lb = lb;
    st->rng = seed;
    /* Workers start at different points of the cycle so they do not all hit the same instance
     * first; seed 0 starts at the beginning. */
    st->cursor = (size_t)(seed % lb->n);
    if (lb->kind == POLIS_LB_WEIGHTED && !lb->equal) {
        uint64_t skip = seed % (lb->total < 1024 ? lb->total : 1024);
        for (uint64_t i = 0; i < skip; i++)
            pick_weighted(lb, st);
    }
    return st;
}

void polis__lb_state_free(struct polis_lb_state *st)
{
    if (!st)
        return;
    free(st->current);
    free(st->active);
    free(st);
}

/* ---- Pick ------------------------------------------------------------------------------------ */

static inline size_t pick_rr(const struct polis_lb *lb, struct polis_lb_state *st)
{
    size_t i = st->cursor;
    st->cursor = i + 1 == lb->n ? 0 : i + 1;
    return i;
}

/* nginx's smooth weighted round-robin: over any total consecutive picks each instance is chosen
 * exactly weight times, and the picks of a heavy instance are spread out. */
static size_t pick_weighted(const struct polis_lb *lb, struct polis_lb_state *st)
{
    size_t best = 0;
    int64_t bestv = INT64_MIN;
    for (size_t i = 0; i < lb->n; i++) {
        st->current[i] += lb->weight[i];
        if (st->current[i] > bestv) {
            bestv = st->current[i];
            best = i;
        }
    }
    st->current[best] -= (int64_t)lb->total;
    return best;
}

/* An instance chosen at random with probability proportional to its weight. */
static size_t pick_random(const struct polis_lb *lb, struct polis_lb_state *st)
{
    if (lb->equal)
        return rng_below(&st->rng, lb->n);
    uint64_t x = rng_below(&st->rng, (size_t)lb->total);
    size_t lo = 0, hi = lb->n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (lb->cumweight[mid] > x)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* Power of two choices: two distinct instances drawn by weight, the one with fewer active
 * requests per unit of weight wins; on a tie the first draw wins, which keeps the traffic of an
 * idle cluster in proportion to the weights. */
static size_t pick_least(const struct polis_lb *lb, struct polis_lb_state *st)
{
    size_t n = lb->n;
    if (n == 1)
        return 0;
    size_t a = pick_random(lb, st), b;
    if (n == 2) {
        b = 1 - a;
    } else if (lb->equal) {
        b = (a + 1 + rng_below(&st->rng, n - 1)) % n;
    } else {
        b = a;
        for (int tries = 0; tries < 4 && b == a; tries++)
            b = pick_random(lb, st);
        if (b == a)
            b = (a + 1) % n;
    }
    uint64_t la = (uint64_t)st->active[a] * lb->weight[b];
    uint64_t lb_ = (uint64_t)st->active[b] * lb->weight[a];
    return lb_ < la ? b : a;
}

static size_t pick_hash(const struct polis_lb *lb, struct polis_lb_state *st, struct polis_str key)
{
    if (key.len == 0)
        return pick_rr(lb, st);
    uint64_t h = hash64(key.p, key.len, 0);
    size_t b = (size_t)(h >> (64 - lb->lut_bits));
    size_t lo = lb->lut[b], hi = lb->lut[b + 1];
    /* The first point >= h is in [lo, hi]: points before lo have smaller top bits, points from
     * hi on larger ones. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (lb->ring[mid] < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lb->ring_idx[lo == lb->npoints ? 0 : lo];
}

size_t polis__lb_pick(const struct polis_lb *lb, struct polis_lb_state *st, struct polis_str key)
{
    size_t i;
    switch (lb->kind) {
    case POLIS_LB_WEIGHTED:
        i = lb->equal ? pick_rr(lb, st) : pick_weighted(lb, st);
        break;
    case POLIS_LB_LEAST_REQUEST:
        i = pick_least(lb, st);
        break;
    case POLIS_LB_HASH:
        i = pick_hash(lb, st, key);
        break;
    default:
        i = pick_rr(lb, st);
        break;
    }
    st->active[i]++;
    return i;
}

void polis__lb_take(struct polis_lb_state *st, size_t idx)
{
    if (idx < st->lb->n)
        st->active[idx]++;
}

void polis__lb_done(struct polis_lb_state *st, size_t idx)
{
    if (idx < st->lb->n && st->active[idx] > 0)
        st->active[idx]--;
}

/* ---- Key ------------------------------------------------------------------------------------- */

static bool caseeq(struct polis_str a, const char *b, size_t n)
{
    if (a.len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a.p[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

static inline bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* The value of cookie name in one Cookie header value ("a=1; b=2"), or false. */
static bool cookie_find(struct polis_str v, const char *name, size_t nlen, struct polis_str *out)
{
    if (!v.p)
        return false;
    const char *p = v.p, *e = v.p + v.len;
    while (p < e) {
        const char *semi = memchr(p, ';', (size_t)(e - p));
        const char *end = semi ? semi : e;
        const char *s = p, *t = end;
        while (s < t && is_ows(*s))
            s++;
        while (t > s && is_ows(t[-1]))
            t--;
        const char *eq = s < t ? memchr(s, '=', (size_t)(t - s)) : NULL;
        if (eq) {
            const char *ne = eq;
            while (ne > s && is_ows(ne[-1]))
                ne--;
            if ((size_t)(ne - s) == nlen && memcmp(s, name, nlen) == 0) {
                const char *vs = eq + 1;
                while (vs < t && is_ows(*vs))
                    vs++;
                if (t - vs >= 2 && *vs == '"' && t[-1] == '"') {
                    vs++;
                    t--;
                }
                *out = (struct polis_str){vs, (size_t)(t - vs)};
                return true;
            }
        }
        p = semi ? semi + 1 : e;
    }
    return false;
}

struct polis_str polis__lb_key(const struct polis_cluster_cfg *c, const struct polis_h1_msg *m,
                               struct polis_str client_ip)
{
    struct polis_str none = {"", 0};
    if (c->hash_on == POLIS_HASH_CLIENT_IP)
        return client_ip;
    if (!m || !c->hash_key || !c->hash_key[0])
        return none;
    size_t klen = strlen(c->hash_key);
    if (c->hash_on == POLIS_HASH_HEADER) {
        for (size_t i = 0; i < m->num_headers; i++)
            if (caseeq(m->headers[i].name, c->hash_key, klen))
                return m->headers[i].value;
        return none;
    }
    struct polis_str v;
    return polis__cookie_value(m, c->hash_key, klen, &v) ? v : none;
}

bool polis__cookie_value(const struct polis_h1_msg *m, const char *name, size_t nlen,
                         struct polis_str *out)
{
    /* The parser's index says where the first Cookie header is (or that none is). */
    int16_t first = m->hdr_index[POLIS_HDR_COOKIE];
    if (first < 0)
        return false;
    for (size_t i = (size_t)first; i < m->num_headers; i++)
        if (caseeq(m->headers[i].name, "cookie", 6) &&
            cookie_find(m->headers[i].value, name, nlen, out))
            return true;
    return false;
}
