/* ratelimit.c: GCRA limiters: a striped key table whose entries are one atomic TAT each (the
 * local backend and the local fallback), and a pool of hiredis connections running one Lua
 * script per decision (the Redis backend), with the failure and recovery logic between them. */
#include "security/ratelimit.h"

#include <polis/core.h>

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>

/* ---- Time in units ------------------------------------------------------------------------ */

/* GCRA in integers: with g = gcd(rate, period_ms), time is counted in units of g/rate ms, so
 * the emission interval (period/rate ms) is exactly T = period_ms/g units and one ms is
 * r = rate/g units. The burst tolerance is tau = burst * T: a request is allowed when, after it,
 * the theoretical arrival time (TAT) is at most tau ahead of now. */
struct gcra {
    uint64_t r;   /* units per ms */
    uint64_t T;   /* units per request */
    uint64_t tau; /* units of tolerance */
    uint32_t burst;
};

/* Caller times are capped here so that now * r never overflows (r <= 2^20). */
#define NOW_MAX ((uint64_t)1 << 42)

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b != 0) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static uint64_t units_to_ms(const struct gcra *g, uint64_t u)
{
    return u / g->r + (u % g->r != 0);
}

/* An allowed request: next_minus_now is TAT - now after it. */
static void fill_allowed(const struct gcra *g, uint64_t next_minus_now,
                         struct polis_ratelimit_decision *d)
{
    d->allowed = true;
    d->headers = true;
    d->status = 0;
    d->limit = g->burst;
    d->remaining = (uint32_t)((g->tau - next_minus_now) / g->T);
    d->reset_ms = units_to_ms(g, next_minus_now);
    d->retry_after_ms = 0;
}

/* A denied request: tat_minus_now is the unchanged TAT - now, over how far the request would
 * have pushed the TAT past the tolerance (>= 1). */
static void fill_denied(const struct gcra *g, uint64_t tat_minus_now, uint64_t over,
                        struct polis_ratelimit_decision *d)
{
    d->allowed = false;
    d->headers = true;
    d->status = 429;
    d->limit = g->burst;
    d->remaining = 0;
    d->reset_ms = units_to_ms(g, tat_minus_now);
    d->retry_after_ms = units_to_ms(g, over);
}

/* The GCRA step on one key's TAT (units; 0 for a key never seen): a compare-and-swap loop, so
 * that concurrent requests on one key are each counted exactly once. The TAT is the whole state
 * of the key, so relaxed ordering is enough: every thread sees one modification order of it. */
static void gcra_step(const struct gcra *g, _Atomic uint64_t *tatp, uint64_t now_u,
                      struct polis_ratelimit_decision *d)
{
    uint64_t tat = atomic_load_explicit(tatp, memory_order_relaxed);
    for (;;) {
        uint64_t base = tat > now_u ? tat : now_u;
        uint64_t next = base + g->T;
        if (next - now_u > g->tau) { /* implies tat > now_u, since tau >= T */
            fill_denied(g, tat - now_u, next - now_u - g->tau, d);
            return;
        }
        if (atomic_compare_exchange_weak_explicit(tatp, &tat, next, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            fill_allowed(g, next - now_u, d);
            return;
        }
    }
}

/* ---- Keys --------------------------------------------------------------------------------- */

/* A key as stored: its bytes when short, else its SHA-256 (hashed set). */
struct nkey {
    uint8_t len;
    uint8_t hashed;
    char b[POLIS_RATELIMIT_KEY_INLINE];
};

_Static_assert(POLIS_RATELIMIT_KEY_INLINE >= 32, "a SHA-256 must fit inline");

/* Fill k from the caller's key. Returns false when hashing failed (out of memory in OpenSSL). */
static bool key_normalize(const EVP_MD *sha256, const void *key, size_t len, struct nkey *k)
{
    if (len <= POLIS_RATELIMIT_KEY_INLINE) {
        k->len = (uint8_t)len;
        k->hashed = 0;
        if (len > 0)
            memcpy(k->b, key, len);
        return true;
    }
    unsigned int n = 0;
    if (EVP_Digest(key, len, (unsigned char *)k->b, &n, sha256, NULL) != 1 || n != 32)
        return false;
    k->len = 32;
    k->hashed = 1;
    return true;
}

/* SipHash-1-3 with a random key per table: the table's hash, which callers cannot aim at one
 * slot since they do not know the key (keys come from clients). Written from the SipHash paper
 * (Aumasson and Bernstein, 2012). */
static inline uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = rotl(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = rotl(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = rotl(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = rotl(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = rotl(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = rotl(v2, 32);                                                                         \
    } while (0)

static uint64_t siphash13(const uint64_t k[2], const uint8_t *p, size_t len, uint8_t salt)
{
    uint64_t v0 = k[0] ^ 0x736f6d6570736575ull, v1 = k[1] ^ 0x646f72616e646f6dull;
    uint64_t v2 = k[0] ^ 0x6c7967656e657261ull, v3 = k[1] ^ 0x7465646279746573ull;
    v1 ^= salt; /* hashed and raw keys of the same bytes land apart */
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t m;
        memcpy(&m, p + i, 8); /* little-endian machines only: x86-64 and arm64 */
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- The local key table ------------------------------------------------------------------ */

/* One key: 64 bytes, a cache line. */
struct entry {
    _Atomic uint64_t tat; /* units; 0: never used */
    uint32_t tag;         /* the low 32 bits of the key's hash: its home slot and a filter */
    uint8_t klen;
    uint8_t hashed;
    char key[POLIS_RATELIMIT_KEY_INLINE];
};

/* A share of the keys under one reader-writer lock. Checks of known keys hold it shared (and
 * race on the entry's TAT with compare-and-swap); inserting, evicting and moving entries hold it
 * exclusive, so an entry never changes identity under a reader. entries[0, count) are dense;
 * index is open addressing with linear probing over slots "tag << 32 | (entry + 1)" (0: empty),
 * at most half full, with backward-shift deletion (no tombstones). */
struct stripe {
    _Alignas(64) pthread_rwlock_t lock;
    uint32_t count, limit; /* entries in use, and the most this stripe may hold */
    uint32_t mask;         /* index slots - 1 */
    uint32_t hand;         /* where the next eviction scan starts */
    uint64_t *index;
    struct entry *entries;
    uint64_t evicted_idle, evicted_active; /* under the exclusive lock */
};

/* Entries looked at to choose one to evict: the first idle one, else the one nearest to idle
 * (the smallest TAT), so a full table stays O(1) per insert. */
#define EVICT_SCAN 64
/* Stripes have at least this many keys (when max_keys allows), at most MAX_STRIPES stripes. */
#define MIN_STRIPE_KEYS 256
#define MAX_STRIPES 64

struct table {
    struct stripe *stripes;
    uint32_t nstripes; /* a power of two */
    uint64_t sipkey[2];
};

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

static int table_init(struct table *t, uint32_t max_keys)
{
    uint32_t ns = 1;
    while (ns < MAX_STRIPES && max_keys / (ns * 2) >= MIN_STRIPE_KEYS)
        ns <<= 1;
    if (getrandom(t->sipkey, sizeof(t->sipkey), 0) != (ssize_t)sizeof(t->sipkey))
        return POLIS_ESYS;
    t->stripes = aligned_alloc(64, sizeof(struct stripe) * ns);
    if (!t->stripes)
        return POLIS_ENOMEM;
    memset(t->stripes, 0, sizeof(struct stripe) * ns);
    t->nstripes = 0;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* A stream of new keys must not wait behind an endless stream of readers. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = 0;
    for (uint32_t i = 0; i < ns; i++) {
        struct stripe *s = &t->stripes[i];
        s->limit = max_keys / ns + (i < max_keys % ns);
        uint32_t slots = pow2_at_least((uint64_t)s->limit * 2);
        s->mask = slots - 1;
        s->index = calloc(slots, sizeof(*s->index));
        s->entries = aligned_alloc(64, sizeof(struct entry) * (s->limit ? s->limit : 1));
        if (!s->index || !s->entries || pthread_rwlock_init(&s->lock, &attr) != 0) {
            free(s->index);
            free(s->entries);
            rc = POLIS_ENOMEM;
            break;
        }
        t->nstripes++;
    }
    pthread_rwlockattr_destroy(&attr);
    return rc;
}

static void table_free(struct table *t)
{
    if (!t->stripes)
        return;
    for (uint32_t i = 0; i < t->nstripes; i++) {
        struct stripe *s = &t->stripes[i];
        pthread_rwlock_destroy(&s->lock);
        free(s->index);
        free(s->entries);
    }
    free(t->stripes);
    t->stripes = NULL;
}

static struct entry *stripe_find(const struct stripe *s, uint32_t tag, const struct nkey *k)
{
    for (uint32_t pos = tag & s->mask;; pos = (pos + 1) & s->mask) {
        uint64_t v = s->index[pos];
        if (v == 0)
            return NULL;
        if ((uint32_t)(v >> 32) != tag)
            continue;
        struct entry *e = &s->entries[(uint32_t)v - 1];
        if (e->klen == k->len && e->hashed == k->hashed && memcmp(e->key, k->b, k->len) == 0)
            return e;
    }
}

/* The index slot that points at entry idx (which must be in the index). */
static uint32_t stripe_slot_of(const struct stripe *s, uint32_t idx)
{
    uint64_t want = ((uint64_t)s->entries[idx].tag << 32) | (idx + 1);
    uint32_t pos = s->entries[idx].tag & s->mask;
    while (s->index[pos] != want)
        pos = (pos + 1) & s->mask;
    return pos;
}

/* Remove entry idx: empty its slot, shift back the slots that probed past it, and move the last
 * entry into its place. Exclusive lock held. */
static void stripe_remove(struct stripe *s, uint32_t idx)
{
    uint32_t i = stripe_slot_of(s, idx);
    for (uint32_t j = (i + 1) & s->mask; s->index[j] != 0; j = (j + 1) & s->mask) {
        uint32_t home = (uint32_t)(s->index[j] >> 32) & s->mask;
        /* The slot at j may move to the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            s->index[i] = s->index[j];
            i = j;
        }
    }
    s->index[i] = 0;
    uint32_t last = s->count - 1;
    if (idx != last) {
        uint32_t lpos = stripe_slot_of(s, last);
        struct entry *to = &s->entries[idx], *from = &s->entries[last];
        atomic_store_explicit(&to->tat, atomic_load_explicit(&from->tat, memory_order_relaxed),
                              memory_order_relaxed);
        to->tag = from->tag;
        to->klen = from->klen;
        to->hashed = from->hashed;
        memcpy(to->key, from->key, from->klen);
        s->index[lpos] = ((uint64_t)to->tag << 32) | (idx + 1);
    }
    s->count--;
}

/* Make room in a full stripe: drop the first idle key among EVICT_SCAN from the hand (an idle
 * key's bucket is full, which is what a missing key means: nothing is lost), or else the key
 * nearest to idle. Exclusive lock held. */
static void stripe_evict(struct stripe *s, uint64_t now_u)
{
    uint32_t n = s->count < EVICT_SCAN ? s->count : EVICT_SCAN;
    uint32_t victim = 0;
    uint64_t best = UINT64_MAX;
    bool idle = false;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = (s->hand + k) % s->count;
        uint64_t tat = atomic_load_explicit(&s->entries[i].tat, memory_order_relaxed);
        if (tat <= now_u) {
            victim = i;
            idle = true;
            break;
        }
        if (tat < best) {
            best = tat;
            victim = i;
        }
    }
    s->hand = (victim + 1) % s->count;
    if (idle)
        s->evicted_idle++;
    else
        s->evicted_active++;
    stripe_remove(s, victim);
}

/* Add a key known to be missing. Exclusive lock held. */
static struct entry *stripe_insert(struct stripe *s, uint32_t tag, const struct nkey *k,
                                   uint64_t now_u)
{
    if (s->count >= s->limit)
        stripe_evict(s, now_u);
    uint32_t idx = s->count++;
    struct entry *e = &s->entries[idx];
    atomic_store_explicit(&e->tat, 0, memory_order_relaxed);
    e->tag = tag;
    e->klen = k->len;
    e->hashed = k->hashed;
    memcpy(e->key, k->b, k->len);
    uint32_t pos = tag & s->mask;
    while (s->index[pos] != 0)
        pos = (pos + 1) & s->mask;
    s->index[pos] = ((uint64_t)tag << 32) | (idx + 1);
    return e;
}

/* The local decision on key k at now_u. */
static void table_check(struct table *t, const struct gcra *g, const struct nkey *k, uint64_t now_u,
                        struct polis_ratelimit_decision *d)
{
    uint64_t h = siphash13(t->sipkey, (const uint8_t *)k->b, k->len, k->hashed);
    struct stripe *s = &t->stripes[(uint32_t)(h >> 32) & (t->nstripes - 1)];
    uint32_t tag = (uint32_t)h;
    pthread_rwlock_rdlock(&s->lock);
    struct entry *e = stripe_find(s, tag, k);
    if (e) {
        gcra_step(g, &e->tat, now_u, d);
        pthread_rwlock_unlock(&s->lock);
        return;
    }
    pthread_rwlock_unlock(&s->lock);
    pthread_rwlock_wrlock(&s->lock);
    e = stripe_find(s, tag, k); /* another thread may have added it meanwhile */
    if (!e)
        e = stripe_insert(s, tag, k, now_u);
    gcra_step(g, &e->tat, now_u, d);
    pthread_rwlock_unlock(&s->lock);
}

/* ---- Counters ----------------------------------------------------------------------------- */

/* Counters are sharded by thread so that workers do not share a cache line per decision. */
#define SHARDS 16

struct shard {
    _Alignas(64) _Atomic uint64_t decisions;
    _Atomic uint64_t denied;
    _Atomic uint64_t fallback;
    _Atomic uint64_t redis_errors;
};

static _Atomic unsigned next_thread_id;
static _Thread_local unsigned thread_id; /* 0: not assigned yet */

static unsigned shard_of_thread(void)
{
    if (thread_id == 0)
        thread_id = atomic_fetch_add_explicit(&next_thread_id, 1, memory_order_relaxed) + 1;
    return (thread_id - 1) % SHARDS;
}

static inline void count(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* ---- Redis -------------------------------------------------------------------------------- */

/* The decision, atomically in Redis. KEYS[1]: the key. ARGV: T, tau, r (see struct gcra). The
 * value is "ms:frac:r": the TAT is ms + frac/r milliseconds of Redis' clock (TIME), so gateways'
 * clocks do not matter, and every number stays an integer below 2^53, exact in Lua's doubles. A
 * value written under another r (the policy changed) is rescaled. The key expires when its TAT
 * passes: a missing key is a full bucket. Returns {allowed, until_full, over} in units: allowed
 * 1 with TAT - now after the request, or 0 with the TAT - now as it is and how far the request
 * would have gone past the tolerance. */
static const char SCRIPT[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local T, tau, r = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local ms, f = now, 0\n"
    "local v = redis.call('GET', KEYS[1])\n"
    "if v then\n"
    "  local a, b, c = string.match(v, '^(%d+):(%d+):(%d+)$')\n"
    "  a, b, c = tonumber(a), tonumber(b), tonumber(c)\n"
    "  if a and c > 0 and b < c then\n"
    "    if c ~= r then b = math.floor(b * r / c) end\n"
    "    if a >= now then ms, f = a, b end\n"
    "  end\n"
    "end\n"
    "local diff = (ms - now) * r + f\n"
    "local nd = diff + T\n"
    "if nd > tau then return {0, diff, nd - tau} end\n"
    "f = f + T\n"
    "ms = ms + math.floor(f / r)\n"
    "f = f % r\n"
    "redis.call('SET', KEYS[1], string.format('%d:%d:%d', ms, f, r), 'PX',\n"
    "  string.format('%d', math.floor(nd / r) + 1))\n"
    "return {1, nd, 0}\n";

struct conn {
    redisContext *c;
    struct conn *next;
    uint32_t gen; /* the pool's generation when it was opened */
    char sha[41]; /* the script's SHA1, from SCRIPT LOAD */
};

struct polis_ratelimit_redis {
    char *host; /* or the socket path when unix */
    int port;
    bool unix_socket;
    char *password;
    uint32_t timeout_ms, retry_ms, max_idle;

    pthread_mutex_t mu; /* the idle list */
    struct conn *idle;
    uint32_t nidle;

    /* 0 while up; else the caller time (ms) from which one caller may probe Redis again. */
    _Atomic uint64_t down_until;
    _Atomic bool probing;
    /* Bumped on every failure: connections of an older generation are closed, not reused. */
    _Atomic uint32_t gen;
    _Atomic uint64_t connects, errors, outages;
    _Atomic uint32_t open;
};

/* Parse "host:port", "[v6]:port" or "unix:/path" into r. Returns 0 or POLIS_EINVAL/ENOMEM. */
static int redis_parse_address(struct polis_ratelimit_redis *r, const char *a)
{
    if (strncmp(a, "unix:", 5) == 0) {
        if (a[5] != '/')
            return POLIS_EINVAL;
        r->unix_socket = true;
        r->host = strdup(a + 5);
        return r->host ? 0 : POLIS_ENOMEM;
    }
    const char *colon, *hs = a, *he;
    if (a[0] == '[') {
        he = strchr(a, ']');
        if (!he || he[1] != ':')
            return POLIS_EINVAL;
        hs = a + 1;
        colon = he + 1;
    } else {
        colon = strrchr(a, ':');
        if (!colon || memchr(a, ':', (size_t)(colon - a)) != NULL)
            return POLIS_EINVAL;
        he = colon;
    }
    if (he == hs)
        return POLIS_EINVAL;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || port < 1 || port > 65535)
        return POLIS_EINVAL;
    r->port = (int)port;
    r->host = strndup(hs, (size_t)(he - hs));
    return r->host ? 0 : POLIS_ENOMEM;
}

int polis__ratelimit_redis_new(const struct polis_ratelimit_redis_opts *o,
                               struct polis_ratelimit_redis **out)
{
    if (!o || !o->address || o->address[0] == '\0')
        return POLIS_EINVAL;
    struct polis_ratelimit_redis *r = calloc(1, sizeof(*r));
    if (!r)
        return POLIS_ENOMEM;
    int rc = redis_parse_address(r, o->address);
    if (rc < 0)
        goto free_r;
    rc = POLIS_ENOMEM;
    if (o->password && !(r->password = strdup(o->password)))
        goto free_r;
    r->timeout_ms = o->timeout_ms ? o->timeout_ms : 50;
    r->retry_ms = o->retry_ms ? o->retry_ms : 1000;
    r->max_idle = o->max_idle ? o->max_idle : 32;
    if (pthread_mutex_init(&r->mu, NULL) != 0)
        goto free_r;
    *out = r;
    return 0;
free_r:
    free(r->password);
    free(r->host);
    free(r);
    return rc;
}

static void conn_close(struct polis_ratelimit_redis *r, struct conn *c)
{
    redisFree(c->c);
    free(c);
    atomic_fetch_sub_explicit(&r->open, 1, memory_order_relaxed);
}

void polis__ratelimit_redis_free(struct polis_ratelimit_redis *r)
{
    if (!r)
        return;
    while (r->idle) {
        struct conn *c = r->idle;
        r->idle = c->next;
        conn_close(r, c);
    }
    pthread_mutex_destroy(&r->mu);
    free(r->password);
    free(r->host);
    free(r);
}

void polis__ratelimit_redis_stats(struct polis_ratelimit_redis *r,
                                  struct polis_ratelimit_redis_stats *out)
{
    out->up = atomic_load(&r->down_until) == 0;
    out->connects = atomic_load(&r->connects);
    out->errors = atomic_load(&r->errors);
    out->outages = atomic_load(&r->outages);
    out->connections = atomic_load(&r->open);
}

/* Open a connection, authenticate and load the script (blocking, each step bounded by the
 * timeout). Returns it, or NULL (counted as an error). */
static struct conn *conn_open(struct polis_ratelimit_redis *r)
{
    struct timeval tv = {.tv_sec = r->timeout_ms / 1000,
                         .tv_usec = (suseconds_t)(r->timeout_ms % 1000) * 1000};
    atomic_fetch_add_explicit(&r->connects, 1, memory_order_relaxed);
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        goto fail;
    c->gen = atomic_load_explicit(&r->gen, memory_order_relaxed);
    c->c = r->unix_socket ? redisConnectUnixWithTimeout(r->host, tv)
                          : redisConnectWithTimeout(r->host, r->port, tv);
    if (!c->c || c->c->err || redisSetTimeout(c->c, tv) != REDIS_OK)
        goto free_c;
    redisReply *rep;
    if (r->password) {
        const char *argv[] = {"AUTH", r->password};
        rep = redisCommandArgv(c->c, 2, argv, NULL);
        bool ok = rep && rep->type == REDIS_REPLY_STATUS;
        if (rep && !ok)
            polis_warn("ratelimit: redis AUTH refused: %.*s", (int)rep->len,
                       rep->str ? rep->str : "");
        freeReplyObject(rep);
        if (!ok)
            goto free_c;
    }
    const char *argv[] = {"SCRIPT", "LOAD", SCRIPT};
    rep = redisCommandArgv(c->c, 3, argv, NULL);
    bool ok = rep && rep->type == REDIS_REPLY_STRING && rep->len == 40;
    if (ok)
        memcpy(c->sha, rep->str, 41);
    freeReplyObject(rep);
    if (!ok)
        goto free_c;
    atomic_fetch_add_explicit(&r->open, 1, memory_order_relaxed);
    return c;
free_c:
    if (c->c)
        redisFree(c->c);
    free(c);
fail:
    atomic_fetch_add_explicit(&r->errors, 1, memory_order_relaxed);
    return NULL;
}

/* An idle connection of the current generation, or NULL. */
static struct conn *pool_take(struct polis_ratelimit_redis *r)
{
    uint32_t gen = atomic_load_explicit(&r->gen, memory_order_relaxed);
    for (;;) {
        pthread_mutex_lock(&r->mu);
        struct conn *c = r->idle;
        if (c) {
            r->idle = c->next;
            r->nidle--;
        }
        pthread_mutex_unlock(&r->mu);
        if (!c || c->gen == gen)
            return c;
        conn_close(r, c); /* opened before a failure: its peer may be gone */
    }
}

static void pool_put(struct polis_ratelimit_redis *r, struct conn *c)
{
    if (c->gen == atomic_load_explicit(&r->gen, memory_order_relaxed)) {
        pthread_mutex_lock(&r->mu);
        if (r->nidle < r->max_idle) {
            c->next = r->idle;
            r->idle = c;
            r->nidle++;
            c = NULL;
        }
        pthread_mutex_unlock(&r->mu);
    }
    if (c)
        conn_close(r, c);
}

/* Redis is unreachable: fall back until now_ms + retry_ms, then let one caller probe it. */
static void redis_mark_down(struct polis_ratelimit_redis *r, uint64_t now_ms, const char *why)
{
    uint64_t until = now_ms + r->retry_ms;
    atomic_fetch_add_explicit(&r->gen, 1, memory_order_relaxed);
    if (atomic_exchange(&r->down_until, until ? until : 1) == 0) {
        atomic_fetch_add_explicit(&r->outages, 1, memory_order_relaxed);
        polis_warn("ratelimit: redis %s unreachable (%s): falling back, retrying every %" PRIu32
                   " ms",
                   r->host, why, r->retry_ms);
    }
}

enum run_result { RUN_OK, RUN_REPLY_ERROR, RUN_IO_ERROR, RUN_TIMEOUT };

/* Run the script for one key on c: EVALSHA, or EVAL when Redis lost the script (NOSCRIPT: a
 * restart or SCRIPT FLUSH). Fills out[3] on RUN_OK. After RUN_IO_ERROR or RUN_TIMEOUT the
 * connection is unusable. */
static enum run_result conn_run(struct conn *c, const char *key, size_t keylen,
                                const char *const args[3], uint64_t out[3], char *err, size_t cap)
{
    const char *argv[7] = {"EVALSHA", c->sha, "1", key, args[0], args[1], args[2]};
    size_t lens[7] = {7, 40, 1, keylen, strlen(args[0]), strlen(args[1]), strlen(args[2])};
    for (int attempt = 0;; attempt++) {
        errno = 0;
        redisReply *rep = redisCommandArgv(c->c, 7, argv, lens);
        if (!rep) {
            bool timeout = errno == EAGAIN || errno == EWOULDBLOCK;
            snprintf(err, cap, "%s", c->c->errstr[0] ? c->c->errstr : "I/O error");
            return timeout ? RUN_TIMEOUT : RUN_IO_ERROR;
        }
        if (rep->type == REDIS_REPLY_ERROR && attempt == 0 && rep->str &&
            strncmp(rep->str, "NOSCRIPT", 8) == 0) {
            freeReplyObject(rep);
            argv[0] = "EVAL";
            argv[1] = SCRIPT;
            lens[0] = 4;
            lens[1] = sizeof(SCRIPT) - 1;
            continue;
        }
        enum run_result res = RUN_REPLY_ERROR;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3) {
            res = RUN_OK;
            for (int i = 0; i < 3; i++) {
                if (rep->element[i]->type != REDIS_REPLY_INTEGER || rep->element[i]->integer < 0)
                    res = RUN_REPLY_ERROR;
                else
                    out[i] = (uint64_t)rep->element[i]->integer;
            }
        }
        if (res != RUN_OK)
            snprintf(err, cap, "%.*s",
                     rep->type == REDIS_REPLY_ERROR && rep->str ? (int)rep->len : 16,
                     rep->type == REDIS_REPLY_ERROR && rep->str ? rep->str : "unexpected reply");
        freeReplyObject(rep);
        return res;
    }
}

/* ---- Limiters ----------------------------------------------------------------------------- */

struct polis_ratelimit {
    char name[POLIS_RATELIMIT_MAX_NAME + 1];
    struct gcra g;
    struct polis_ratelimit_redis *redis;
    enum polis_ratelimit_failure on_failure;
    bool has_table;
    struct table table; /* the local backend, or the local fallback */
    EVP_MD *sha256;
    /* Redis: "polis:rl:<name>:" and the script's arguments, formatted once. */
    char prefix[POLIS_RATELIMIT_MAX_NAME + 16];
    size_t prefix_len;
    char arg_T[24], arg_tau[24], arg_r[24];
    struct shard shards[SHARDS];
};

static bool name_ok(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len == 0 || len > POLIS_RATELIMIT_MAX_NAME)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)n[i];
        if (ch <= 0x20 || ch == 0x7f || ch == ':')
            return false;
    }
    return true;
}

int polis__ratelimit_new(const struct polis_ratelimit_opts *o, struct polis_ratelimit **out)
{
    if (!o || !name_ok(o->name) || o->rate == 0 || o->rate > POLIS_RATELIMIT_MAX_RATE ||
        o->period_ms == 0 || o->period_ms > POLIS_RATELIMIT_MAX_PERIOD_MS ||
        o->burst > POLIS_RATELIMIT_MAX_BURST || o->max_keys > POLIS_RATELIMIT_MAX_KEYS ||
        o->on_failure > POLIS_RATELIMIT_FAIL_LOCAL)
        return POLIS_EINVAL;
    size_t size = (sizeof(struct polis_ratelimit) + 63) & ~(size_t)63;
    struct polis_ratelimit *rl = aligned_alloc(64, size);
    if (!rl)
        return POLIS_ENOMEM;
    memset(rl, 0, sizeof(*rl));
    snprintf(rl->name, sizeof(rl->name), "%s", o->name);
    uint64_t g = gcd(o->rate, o->period_ms);
    rl->g.r = o->rate / g;
    rl->g.T = o->period_ms / g;
    rl->g.burst = o->burst ? o->burst : o->rate;
    rl->g.tau = (uint64_t)rl->g.burst * rl->g.T;
    rl->redis = o->redis;
    rl->on_failure = o->on_failure;
    rl->prefix_len = (size_t)snprintf(rl->prefix, sizeof(rl->prefix), "polis:rl:%s:", rl->name);
    snprintf(rl->arg_T, sizeof(rl->arg_T), "%" PRIu64, rl->g.T);
    snprintf(rl->arg_tau, sizeof(rl->arg_tau), "%" PRIu64, rl->g.tau);
    snprintf(rl->arg_r, sizeof(rl->arg_r), "%" PRIu64, rl->g.r);
    int rc = POLIS_ENOMEM;
    rl->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!rl->sha256)
        goto free_rl;
    rl->has_table = !o->redis || o->on_failure == POLIS_RATELIMIT_FAIL_LOCAL;
    if (rl->has_table) {
        rc = table_init(&rl->table, o->max_keys ? o->max_keys : 65536);
        if (rc < 0)
            goto free_table;
    }
    *out = rl;
    return 0;
free_table:
    table_free(&rl->table);
    EVP_MD_free(rl->sha256);
free_rl:
    free(rl);
    return rc;
}

void polis__ratelimit_free(struct polis_ratelimit *rl)
{
    if (!rl)
        return;
    table_free(&rl->table);
    EVP_MD_free(rl->sha256);
    free(rl);
}

const char *polis__ratelimit_name(const struct polis_ratelimit *rl)
{
    return rl->name;
}

static void local_check(struct polis_ratelimit *rl, const struct nkey *k, uint64_t now_ms,
                        struct polis_ratelimit_decision *d)
{
    if (now_ms > NOW_MAX)
        now_ms = NOW_MAX;
    table_check(&rl->table, &rl->g, k, now_ms * rl->g.r, d);
}

/* Redis is unreachable: decide as on_failure says. retry_ms: until the next attempt. */
static void fallback(struct polis_ratelimit *rl, struct shard *sh, const struct nkey *k,
                     uint64_t now_ms, uint64_t retry_ms, struct polis_ratelimit_decision *d)
{
    count(&sh->fallback);
    switch (rl->on_failure) {
    case POLIS_RATELIMIT_FAIL_LOCAL:
        local_check(rl, k, now_ms, d);
        d->source = POLIS_RATELIMIT_SRC_FAIL_LOCAL;
        return;
    case POLIS_RATELIMIT_FAIL_CLOSED:
        *d = (struct polis_ratelimit_decision){
            .allowed = false,
            .status = 503,
            .source = POLIS_RATELIMIT_SRC_FAIL_CLOSED,
            .limit = rl->g.burst,
            .retry_after_ms = retry_ms ? retry_ms : 1,
        };
        return;
    case POLIS_RATELIMIT_FAIL_OPEN:
    default:
        *d = (struct polis_ratelimit_decision){
            .allowed = true,
            .source = POLIS_RATELIMIT_SRC_FAIL_OPEN,
            .limit = rl->g.burst,
        };
        return;
    }
}

/* Fill d from the script's reply. */
static void redis_decision(const struct gcra *g, const uint64_t v[3],
                           struct polis_ratelimit_decision *d)
{
    if (v[0] == 1)
        fill_allowed(g, v[1] <= g->tau ? v[1] : g->tau, d);
    else
        fill_denied(g, v[1], v[2] ? v[2] : 1, d);
    d->source = POLIS_RATELIMIT_SRC_REDIS;
}

static void redis_check(struct polis_ratelimit *rl, struct shard *sh, const struct nkey *k,
                        uint64_t now_ms, struct polis_ratelimit_decision *d)
{
    struct polis_ratelimit_redis *r = rl->redis;
    char key[sizeof(rl->prefix) + 1 + POLIS_RATELIMIT_KEY_INLINE];
    memcpy(key, rl->prefix, rl->prefix_len);
    key[rl->prefix_len] = k->hashed ? '#' : '=';
    memcpy(key + rl->prefix_len + 1, k->b, k->len);
    size_t keylen = rl->prefix_len + 1 + k->len;
    const char *const args[3] = {rl->arg_T, rl->arg_tau, rl->arg_r};
    uint64_t v[3];
    char err[128];
    struct conn *c = NULL;
    bool probe = false;

    uint64_t du = atomic_load_explicit(&r->down_until, memory_order_relaxed);
    if (du != 0) {
        if (now_ms < du || atomic_exchange(&r->probing, true)) {
            fallback(rl, sh, k, now_ms, now_ms < du ? du - now_ms : r->retry_ms, d);
            return;
        }
        probe = true; /* this caller alone tries Redis again */
    } else {
        c = pool_take(r);
    }
    bool fresh = c == NULL;
    if (!c && !(c = conn_open(r))) {
        snprintf(err, sizeof(err), "cannot connect");
        goto down;
    }
    enum run_result res = conn_run(c, key, keylen, args, v, err, sizeof(err));
    if (res == RUN_IO_ERROR && !fresh) {
        /* A pooled connection may have been closed by Redis (a restart, a client timeout):
         * one more try on a new connection before calling Redis unreachable. */
        conn_close(r, c);
        fresh = true;
        if (!(c = conn_open(r))) {
            snprintf(err, sizeof(err), "cannot connect");
            goto down;
        }
        res = conn_run(c, key, keylen, args, v, err, sizeof(err));
    }
    switch (res) {
    case RUN_OK:
        if (probe) {
            atomic_store(&r->down_until, 0);
            atomic_store(&r->probing, false);
            polis_info("ratelimit: redis %s is back", r->host);
        }
        pool_put(r, c);
        redis_decision(&rl->g, v, d);
        return;
    case RUN_REPLY_ERROR:
        /* Redis answered but refused (LOADING, OOM, a foreign value under the key...): this
         * decision falls back; the connection is fine. A probe keeps Redis marked down. */
        atomic_fetch_add_explicit(&r->errors, 1, memory_order_relaxed);
        count(&sh->redis_errors);
        polis_debug("ratelimit: redis %s refused a decision: %s", r->host, err);
        pool_put(r, c);
        if (probe) {
            redis_mark_down(r, now_ms, err);
            atomic_store(&r->probing, false);
        }
        fallback(rl, sh, k, now_ms, r->retry_ms, d);
        return;
    case RUN_IO_ERROR:
    case RUN_TIMEOUT:
    default:
        atomic_fetch_add_explicit(&r->errors, 1, memory_order_relaxed);
        conn_close(r, c);
        c = NULL;
        goto down;
    }
down:
    count(&sh->redis_errors);
    redis_mark_down(r, now_ms, err);
    if (probe)
        atomic_store(&r->probing, false);
    fallback(rl, sh, k, now_ms, r->retry_ms, d);
}

bool polis__ratelimit_check(struct polis_ratelimit *rl, const void *key, size_t keylen,
                            uint64_t now_ms, struct polis_ratelimit_decision *d)
{
    struct shard *sh = &rl->shards[shard_of_thread()];
    count(&sh->decisions);
    struct nkey k;
    if (!key_normalize(rl->sha256, key, keylen, &k)) {
        /* Out of memory inside OpenSSL: the key cannot be named, so nothing can be counted. */
        polis_error("ratelimit %s: cannot hash a long key", rl->name);
        k.len = 0;
        k.hashed = 2;
    }
    if (rl->redis) {
        redis_check(rl, sh, &k, now_ms, d);
    } else {
        local_check(rl, &k, now_ms, d);
        d->source = POLIS_RATELIMIT_SRC_LOCAL;
    }
    if (!d->allowed)
        count(&sh->denied);
    return d->allowed;
}

void polis__ratelimit_stats(struct polis_ratelimit *rl, struct polis_ratelimit_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < SHARDS; i++) {
        struct shard *sh = &rl->shards[i];
        out->decisions += atomic_load_explicit(&sh->decisions, memory_order_relaxed);
        out->denied += atomic_load_explicit(&sh->denied, memory_order_relaxed);
        out->fallback += atomic_load_explicit(&sh->fallback, memory_order_relaxed);
        out->redis_errors += atomic_load_explicit(&sh->redis_errors, memory_order_relaxed);
    }
    if (!rl->has_table)
        return;
    for (uint32_t i = 0; i < rl->table.nstripes; i++) {
        struct stripe *s = &rl->table.stripes[i];
        pthread_rwlock_rdlock(&s->lock);
        out->keys += s->count;
        out->evicted_idle += s->evicted_idle;
        out->evicted_active += s->evicted_active;
        pthread_rwlock_unlock(&s->lock);
    }
}

int polis__ratelimit_headers(const struct polis_ratelimit_decision *d, char *buf, size_t cap)
{
    int n = 0;
    if (cap == 0)
        return POLIS_ETOOBIG;
    buf[0] = '\0';
    if (d->headers)
        n = snprintf(buf, cap,
                     "RateLimit-Limit: %" PRIu32 "\r\nRateLimit-Remaining: %" PRIu32
                     "\r\nRateLimit-Reset: %" PRIu64 "\r\n",
                     d->limit, d->remaining, polis__ratelimit_secs(d->reset_ms));
    if (n < 0 || (size_t)n >= cap)
        return POLIS_ETOOBIG;
    if (!d->allowed) {
        uint64_t ra = polis__ratelimit_secs(d->retry_after_ms);
        int m = snprintf(buf + n, cap - (size_t)n, "Retry-After: %" PRIu64 "\r\n", ra ? ra : 1);
        if (m < 0 || (size_t)m >= cap - (size_t)n)
            return POLIS_ETOOBIG;
        n += m;
    }
    return n;
}
