/* jwt.c: the JWT verifier (see jwt.h): token parsing and checks, per-issuer key sets swapped by
 * a background JWKS refresher, and the striped verified-token cache. */
#include "security/jwt-internal.h"

#include "http/blocking.h"

#include <errno.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#define CACHE_WAYS 8     /* entries per set: a hash picks the set, LRU inside it */
#define CACHE_STRIPES 64 /* locks; set s is guarded by stripe s % CACHE_STRIPES */
#define COUNTER_SLOTS 64 /* per-thread counter shards, summed by polis__jwt_stats() */
#define MAX_CACHE (1u << 22)
#define MAX_KEY_FILE (64u * 1024)

/* ---- Structures ---------------------------------------------------------------------------- */

/* An issuer's keys at one moment, shared by reference: readers take a reference under the
 * issuer's lock, the refresher swaps in a new set, and the last reader frees the old one. */
struct keyset {
    atomic_uint refs;
    uint64_t gen; /* the issuer's generation this set belongs to */
    size_t n;
    struct polis_jwt_key keys[];
};

struct issuer {
    char *name, *iss;
    size_t iss_len;
    char **auds;
    size_t *aud_lens;
    size_t n_auds;
    unsigned algs;
    double leeway_s;
    bool exp_optional;
    struct polis_jwt_keys fixed; /* from files, jwks_file and jwks_json: in every set */

    pthread_mutex_t ks_mu; /* guards ks (the pointer) */
    struct keyset *ks;
    atomic_uint_fast64_t gen; /* ks->gen, readable without the lock (cache checks) */

    /* jwks_url */
    bool has_url;
    struct polis_jwt_url url;
    SSL_CTX *tls;
    uint64_t refresh_ms, min_refresh_ms, fetch_timeout_ms;
    atomic_bool want_refresh; /* a worker met an unknown kid */
    /* The refresher thread's own state. */
    bool attempted;
    uint64_t last_attempt, next_fetch;
    unsigned fail_streak;
    unsigned char doc_hash[32];
    bool have_doc;
    /* Stats. */
    atomic_uint_fast64_t fetches, fetch_failures;
    atomic_int last_error;
};

struct centry {
    unsigned char hash[32]; /* SHA-256 of the whole token */
    json_t *claims;         /* a reference */
    double exp, valid_from; /* usable while valid_from <= now < exp */
    uint64_t gen;           /* the key set generation it was verified with */
    uint64_t used;          /* LRU stamp from the stripe's tick */
    uint16_t issuer;
    uint8_t alg;
    bool live;
};

struct stripe {
    pthread_mutex_t mu;
    uint64_t tick;
} __attribute__((aligned(64)));

struct counters {
    atomic_uint_fast64_t verified, rejected, sig_checks, hits, misses;
} __attribute__((aligned(64)));

struct polis_jwt_verifier {
    struct issuer *iss;
    size_t n_iss;
    struct centry *cache; /* n_sets * CACHE_WAYS entries; NULL: no cache */
    size_t n_sets;
    EVP_MD *sha256;
    struct stripe stripes[CACHE_STRIPES];
    struct counters ctr[COUNTER_SLOTS];

    pthread_mutex_t mu; /* refresher schedule: want_refresh signals, stop */
    pthread_cond_t cv;
    atomic_bool stop;
    pthread_t thread;
    bool thread_started;
};

static atomic_uint next_slot;
static _Thread_local unsigned my_slot; /* 0: not assigned yet; else slot + 1 */

static struct counters *counters(struct polis_jwt_verifier *v)
{
    if (my_slot == 0)
        my_slot =
            atomic_fetch_add_explicit(&next_slot, 1, memory_order_relaxed) % COUNTER_SLOTS + 1;
    return &v->ctr[my_slot - 1];
}

static void count(atomic_uint_fast64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* ---- Names ---------------------------------------------------------------------------------- */

static const char *const reason_names[POLIS_JWT_REASON__COUNT] = {
    [POLIS_JWT_OK] = "ok",
    [POLIS_JWT_MALFORMED] = "malformed",
    [POLIS_JWT_TOO_BIG] = "too_big",
    [POLIS_JWT_ALG] = "alg",
    [POLIS_JWT_TYP] = "typ",
    [POLIS_JWT_CRIT] = "crit",
    [POLIS_JWT_HEADER] = "header",
    [POLIS_JWT_KID] = "kid",
    [POLIS_JWT_NO_KEY] = "no_key",
    [POLIS_JWT_SIGNATURE] = "signature",
    [POLIS_JWT_EXPIRED] = "expired",
    [POLIS_JWT_NBF] = "nbf",
    [POLIS_JWT_IAT] = "iat",
    [POLIS_JWT_ISSUER] = "issuer",
    [POLIS_JWT_AUDIENCE] = "audience",
    [POLIS_JWT_CLAIMS] = "claims",
    [POLIS_JWT_INTERNAL] = "internal",
};

const char *polis__jwt_reason_name(enum polis_jwt_reason r)
{
    return (unsigned)r < POLIS_JWT_REASON__COUNT ? reason_names[r] : "?";
}

/* ---- Key sets ------------------------------------------------------------------------------- */

static void keyset_put(struct keyset *ks)
{
    if (ks == NULL || atomic_fetch_sub_explicit(&ks->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < ks->n; i++)
        polis__jwt_key_clear(&ks->keys[i]);
    free(ks);
}

static struct keyset *keyset_get(struct issuer *is)
{
    pthread_mutex_lock(&is->ks_mu);
    struct keyset *ks = is->ks;
    atomic_fetch_add_explicit(&ks->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&is->ks_mu);
    return ks;
}

/* A new set of the fixed keys and then extra's. Returns NULL when out of memory. */
static struct keyset *keyset_build(const struct polis_jwt_keys *fixed,
                                   const struct polis_jwt_keys *extra, uint64_t gen)
{
    size_t n = fixed->n + (extra ? extra->n : 0);
    struct keyset *ks = calloc(1, sizeof(*ks) + n * sizeof(ks->keys[0]));
    if (ks == NULL)
        return NULL;
    atomic_init(&ks->refs, 1);
    ks->gen = gen;
    for (size_t i = 0; i < n; i++) {
        const struct polis_jwt_key *k = i < fixed->n ? &fixed->v[i] : &extra->v[i - fixed->n];
        if (polis__jwt_key_copy(&ks->keys[i], k) < 0) {
            keyset_put(ks);
            return NULL;
        }
        ks->n++;
    }
    return ks;
}

/* Make ks the issuer's current set (taking over its reference). Cache entries verified with an
 * older set stop matching at once: their gen differs. */
static void keyset_install(struct issuer *is, struct keyset *ks)
{
    pthread_mutex_lock(&is->ks_mu);
    struct keyset *old = is->ks;
    is->ks = ks;
    atomic_store_explicit(&is->gen, ks->gen, memory_order_release);
    pthread_mutex_unlock(&is->ks_mu);
    keyset_put(old);
}

/* A kid is usable only when it cannot be mistaken for a path or smuggle control bytes. */
static bool kid_ok(const char *s, size_t len)
{
    if (len == 0 || len > POLIS_JWT_MAX_KID)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '/' || (c == '.' && i + 1 < len && s[i + 1] == '.'))
            return false;
    }
    return true;
}

/* ---- The cache ------------------------------------------------------------------------------ */

static int token_hash(const struct polis_jwt_verifier *v, const char *t, size_t len,
                      unsigned char out[32])
{
    unsigned int ol = 0;
    return EVP_Digest(t, len, out, &ol, v->sha256, NULL) == 1 && ol == 32 ? 0 : POLIS_ENOMEM;
}

static size_t cache_set(const struct polis_jwt_verifier *v, const unsigned char hash[32])
{
    uint64_t h;
    memcpy(&h, hash, sizeof(h));
    return (size_t)(h % v->n_sets);
}

/* Look the token up. Returns 1 (a hit: res filled), 0 (a miss), or -1 (a hit for an issuer
 * that mask does not allow: the full check would refuse it too). */
static int cache_lookup(struct polis_jwt_verifier *v, const unsigned char hash[32], double now,
                        uint64_t mask, struct polis_jwt_result *res)
{
    size_t set = cache_set(v, hash);
    struct stripe *st = &v->stripes[set % CACHE_STRIPES];
    json_t *drop = NULL;
    int rc = 0;
    pthread_mutex_lock(&st->mu);
    for (size_t w = 0; w < CACHE_WAYS; w++) {
        struct centry *e = &v->cache[set * CACHE_WAYS + w];
        if (!e->live || CRYPTO_memcmp(e->hash, hash, 32) != 0)
            continue;
        struct issuer *is = &v->iss[e->issuer];
        if (e->gen != atomic_load_explicit(&is->gen, memory_order_acquire) || now >= e->exp) {
            drop = e->claims; /* stale for good: the key set changed, or it expired */
            e->claims = NULL;
            e->live = false;
        } else if (now < e->valid_from) {
            /* the clock went back: let the full check say why */
        } else if (!(mask & (1ull << e->issuer))) {
            rc = -1;
            res->issuer = is->name;
        } else {
            e->used = ++st->tick;
            res->claims = json_incref(e->claims);
            res->issuer = is->name;
            res->alg = (enum polis_jwt_alg)e->alg;
            res->cached = true;
            rc = 1;
        }
        break;
    }
    pthread_mutex_unlock(&st->mu);
    json_decref(drop);
    return rc;
}

static void cache_insert(struct polis_jwt_verifier *v, const unsigned char hash[32], json_t *claims,
                         size_t issuer, uint64_t gen, enum polis_jwt_alg alg, double exp,
                         double valid_from, double now)
{
    size_t set = cache_set(v, hash);
    struct stripe *st = &v->stripes[set % CACHE_STRIPES];
    struct centry *victim = NULL;
    int vrank = 3;
    pthread_mutex_lock(&st->mu);
    for (size_t w = 0; w < CACHE_WAYS; w++) {
        struct centry *e = &v->cache[set * CACHE_WAYS + w];
        if (e->live && CRYPTO_memcmp(e->hash, hash, 32) == 0) {
            victim = e; /* another thread verified it too: refresh it */
            break;
        }
        /* Prefer an empty way, then a stale entry, then the least recently used. */
        int rank = !e->live ? 0
                   : (now >= e->exp ||
                      e->gen != atomic_load_explicit(&v->iss[e->issuer].gen, memory_order_acquire))
                       ? 1
                       : 2;
        if (rank < vrank || (rank == 2 && vrank == 2 && e->used < victim->used)) {
            victim = e;
            vrank = rank;
        }
    }
    json_t *old = victim->claims;
    memcpy(victim->hash, hash, 32);
    victim->claims = json_incref(claims);
    victim->exp = exp;
    victim->valid_from = valid_from;
    victim->gen = gen;
    victim->used = ++st->tick;
    victim->issuer = (uint16_t)issuer;
    victim->alg = (uint8_t)alg;
    victim->live = true;
    pthread_mutex_unlock(&st->mu);
    json_decref(old);
}

/* ---- Verification --------------------------------------------------------------------------- */

static int refuse(struct counters *c, struct polis_jwt_result *res, enum polis_jwt_reason r,
                  const char *detail)
{
    count(&c->rejected);
    json_decref(res->claims);
    res->claims = NULL;
    res->reason = r;
    res->detail = detail;
    return r == POLIS_JWT_TOO_BIG    ? POLIS_ETOOBIG
           : r == POLIS_JWT_INTERNAL ? POLIS_ENOMEM
                                     : POLIS_EBADMSG;
}

/* Wake the refresher for an issuer with a jwks_url (at most one wake-up per burst). */
static void request_refresh(struct polis_jwt_verifier *v, struct issuer *is)
{
    if (!is->has_url || atomic_exchange(&is->want_refresh, true))
        return;
    pthread_mutex_lock(&v->mu);
    pthread_cond_signal(&v->cv);
    pthread_mutex_unlock(&v->mu);
}

/* Whether typ names a JWT media type (RFC 7519 5.1, RFC 9068 4), case-insensitively. */
static bool typ_ok(const json_t *t)
{
    static const char *const ok[] = {"JWT", "at+jwt", "application/jwt", "application/at+jwt"};
    if (!json_is_string(t))
        return false;
    struct polis_str s = {json_string_value(t), json_string_length(t)};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (polis_str_caseeq(s, (struct polis_str){ok[i], strlen(ok[i])}))
            return true;
    return false;
}

static bool aud_ok(const struct issuer *is, const json_t *aud)
{
    if (is->n_auds == 0)
        return true;
    size_t n = json_is_array(aud) ? json_array_size(aud) : 1;
    for (size_t i = 0; i < n; i++) {
        const json_t *a = json_is_array(aud) ? json_array_get(aud, i) : aud;
        if (!json_is_string(a))
            continue;
        for (size_t k = 0; k < is->n_auds; k++)
            if (json_string_length(a) == is->aud_lens[k] &&
                memcmp(json_string_value(a), is->auds[k], is->aud_lens[k]) == 0)
                return true;
    }
    return false;
}

/* A numeric claim: 0 absent, 1 present (in *out), -1 not a number. */
static int num_claim(const json_t *p, const char *name, double *out)
{
    const json_t *j = json_object_get(p, name);
    if (j == NULL)
        return 0;
    if (!json_is_number(j))
        return -1;
    *out = json_number_value(j);
    return isfinite(*out) ? 1 : -1;
}

/* The parts of a token while it is checked. */
struct tok {
    const char *si; /* signing input: header.payload */
    size_t si_len;
    json_t *hdr, *pl;
    unsigned char sig[POLIS_JWT_MAX_SIGNATURE];
    size_t sig_len;
    enum polis_jwt_alg alg;
    const char *kid;
    size_t kid_len;
};

/* Split and decode token into t and check the header. Returns POLIS_JWT_OK or a reason, with
 * *detail set. */
static enum polis_jwt_reason parse(const char *token, size_t len, struct tok *t,
                                   const char **detail)
{
    const char *end = token + len;
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
    if (d2 == NULL || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)) != NULL) {
        *detail = "not three dot-separated segments";
        return POLIS_JWT_MALFORMED;
    }
    if (d1 == token || d2 == d1 + 1) {
        *detail = "empty header or payload";
        return POLIS_JWT_MALFORMED;
    }
    t->si = token;
    t->si_len = (size_t)(d2 - token);

    unsigned char hbuf[POLIS_JWT_MAX_HEADER];
    size_t hl = 0;
    int rc = polis__jwt_b64url_decode(token, (size_t)(d1 - token), hbuf, sizeof(hbuf), &hl);
    if (rc == POLIS_ETOOBIG) {
        *detail = "header over 1 KiB";
        return POLIS_JWT_TOO_BIG;
    }
    if (rc < 0) {
        *detail = "header is not base64url";
        return POLIS_JWT_MALFORMED;
    }
    t->hdr = json_loadb((const char *)hbuf, hl, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(t->hdr)) {
        *detail = "header is not a JSON object (or repeats a member)";
        return POLIS_JWT_MALFORMED;
    }
    const json_t *alg = json_object_get(t->hdr, "alg");
    if (!json_is_string(alg)) {
        *detail = "alg missing or not a string";
        return POLIS_JWT_ALG;
    }
    int a = polis__jwt_alg_parse(json_string_value(alg), json_string_length(alg));
    if (a < 0) {
        *detail = strcasecmp(json_string_value(alg), "none") == 0 ? "alg none" : "unsupported alg";
        return POLIS_JWT_ALG;
    }
    t->alg = (enum polis_jwt_alg)a;
    if (json_object_get(t->hdr, "crit") != NULL) {
        *detail = "crit header (no extension is supported)";
        return POLIS_JWT_CRIT;
    }
    const json_t *typ = json_object_get(t->hdr, "typ");
    if (typ != NULL && !typ_ok(typ)) {
        *detail = "typ is not JWT or at+jwt";
        return POLIS_JWT_TYP;
    }
    const json_t *cty = json_object_get(t->hdr, "cty");
    if (cty != NULL && (!json_is_string(cty) || strcasecmp(json_string_value(cty), "JWT") == 0 ||
                        strcasecmp(json_string_value(cty), "application/jwt") == 0)) {
        *detail = "nested token (cty JWT)";
        return POLIS_JWT_HEADER;
    }
    const json_t *kid = json_object_get(t->hdr, "kid");
    if (kid != NULL) {
        if (!json_is_string(kid) || !kid_ok(json_string_value(kid), json_string_length(kid))) {
            *detail = "kid not a string, empty, too long, or with '/', '..' or control bytes";
            return POLIS_JWT_KID;
        }
        t->kid = json_string_value(kid);
        t->kid_len = json_string_length(kid);
    }

    /* The payload is at most 3/4 of a token that fits POLIS_JWT_MAX_TOKEN. */
    unsigned char pbuf[POLIS_JWT_MAX_TOKEN / 4 * 3];
    size_t pl = 0;
    if (polis__jwt_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), pbuf, sizeof(pbuf), &pl) < 0) {
        *detail = "payload is not base64url";
        return POLIS_JWT_MALFORMED;
    }
    t->pl = json_loadb((const char *)pbuf, pl, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(t->pl)) {
        *detail = "payload is not a JSON object (or repeats a member)";
        return POLIS_JWT_MALFORMED;
    }
    rc = polis__jwt_b64url_decode(d2 + 1, (size_t)(end - d2 - 1), t->sig, sizeof(t->sig),
                                  &t->sig_len);
    if (rc < 0) {
        *detail = rc == POLIS_ETOOBIG ? "signature too long" : "signature is not base64url";
        return rc == POLIS_ETOOBIG ? POLIS_JWT_SIGNATURE : POLIS_JWT_MALFORMED;
    }
    return POLIS_JWT_OK;
}

/* Check the signature with the issuer's keys. Returns POLIS_JWT_OK or a reason. */
static enum polis_jwt_reason check_signature(struct polis_jwt_verifier *v, struct issuer *is,
                                             struct keyset *ks, const struct tok *t,
                                             struct counters *c, const char **detail)
{
    unsigned bit = POLIS_JWT_ALG_BIT(t->alg);
    size_t named = 0, usable = 0;
    for (size_t i = 0; i < ks->n; i++) {
        const struct polis_jwt_key *k = &ks->keys[i];
        if (t->kid != NULL) {
            if (k->kid == NULL || k->kid_len != t->kid_len ||
                memcmp(k->kid, t->kid, t->kid_len) != 0)
                continue;
            named++;
        }
        /* The key's own pin (its type and alg) and its type's match with alg. */
        if (!(k->algs & bit) || k->type != polis__jwt_alg_kty(t->alg))
            continue;
        if (t->kid == NULL && usable == POLIS_JWT_KIDLESS_TRIES)
            break;
        usable++;
        count(&c->sig_checks);
        int r = polis__jwt_sig_check(k, t->alg, (const unsigned char *)t->si, t->si_len, t->sig,
                                     t->sig_len);
        if (r == 1)
            return POLIS_JWT_OK;
        if (r < 0) {
            *detail = "out of memory checking the signature";
            return POLIS_JWT_INTERNAL;
        }
    }
    if (t->kid != NULL && named == 0) {
        request_refresh(v, is);
        *detail = "unknown kid";
        return POLIS_JWT_NO_KEY;
    }
    if (usable == 0) {
        if (t->kid != NULL) {
            *detail = "alg not allowed for the key named by kid";
            return POLIS_JWT_ALG;
        }
        request_refresh(v, is);
        *detail = "no key of the issuer allows this alg";
        return POLIS_JWT_NO_KEY;
    }
    *detail = "signature does not verify";
    return POLIS_JWT_SIGNATURE;
}

int polis__jwt_verify(struct polis_jwt_verifier *v, const char *token, size_t len, int64_t now_s,
                      uint64_t issuers, struct polis_jwt_result *res)
{
    struct counters *c = counters(v);
    *res = (struct polis_jwt_result){0};
    if (len > POLIS_JWT_MAX_TOKEN)
        return refuse(c, res, POLIS_JWT_TOO_BIG, "token over 8 KiB");
    if (len == 0 || token == NULL)
        return refuse(c, res, POLIS_JWT_MALFORMED, "empty token");
    double now = (double)now_s;
    unsigned char hash[32];
    bool hashed = false;
    if (v->cache != NULL) {
        if (token_hash(v, token, len, hash) < 0)
            return refuse(c, res, POLIS_JWT_INTERNAL, "hashing failed");
        hashed = true;
        int hit = cache_lookup(v, hash, now, issuers, res);
        if (hit == 1) {
            count(&c->hits);
            count(&c->verified);
            return 0;
        }
        if (hit < 0)
            return refuse(c, res, POLIS_JWT_ISSUER, "issuer not allowed here");
        count(&c->misses);
    }

    struct tok t = {0};
    struct keyset *ks = NULL;
    const char *detail = NULL;
    enum polis_jwt_reason r = parse(token, len, &t, &detail);
    struct issuer *is = NULL;
    if (r != POLIS_JWT_OK)
        goto fail;

    r = POLIS_JWT_ISSUER;
    const json_t *iss = json_object_get(t.pl, "iss");
    if (!json_is_string(iss)) {
        detail = "iss missing or not a string";
        goto fail;
    }
    size_t idx;
    for (idx = 0; idx < v->n_iss; idx++)
        if (v->iss[idx].iss_len == json_string_length(iss) &&
            memcmp(v->iss[idx].iss, json_string_value(iss), v->iss[idx].iss_len) == 0)
            break;
    if (idx == v->n_iss) {
        detail = "unknown issuer";
        goto fail;
    }
    is = &v->iss[idx];
    if (!(issuers & (1ull << idx))) {
        detail = "issuer not allowed here";
        goto fail;
    }
    if (!(is->algs & POLIS_JWT_ALG_BIT(t.alg))) {
        r = POLIS_JWT_ALG;
        detail = "alg not allowed for the issuer";
        goto fail;
    }

    /* Claims, before the (costly) signature: a refusal is a refusal either way. */
    double exp = 0, nbf = 0, iat = 0, lw = is->leeway_s;
    int has_exp = num_claim(t.pl, "exp", &exp), has_nbf = num_claim(t.pl, "nbf", &nbf);
    int has_iat = num_claim(t.pl, "iat", &iat);
    r = POLIS_JWT_CLAIMS;
    if (has_exp < 0 || has_nbf < 0 || has_iat < 0) {
        detail = "exp, nbf or iat is not a number";
        goto fail;
    }
    if (has_exp == 0 && !is->exp_optional) {
        detail = "exp missing";
        goto fail;
    }
    if (has_exp && now >= exp + lw) {
        r = POLIS_JWT_EXPIRED;
        detail = "expired";
        goto fail;
    }
    if (has_nbf && now + lw < nbf) {
        r = POLIS_JWT_NBF;
        detail = "not yet valid (nbf)";
        goto fail;
    }
    if (has_iat && iat > now + lw) {
        r = POLIS_JWT_IAT;
        detail = "issued in the future (iat)";
        goto fail;
    }
    if (!aud_ok(is, json_object_get(t.pl, "aud"))) {
        r = POLIS_JWT_AUDIENCE;
        detail = "aud missing or not one of ours";
        goto fail;
    }

    ks = keyset_get(is);
    r = check_signature(v, is, ks, &t, c, &detail);
    if (r != POLIS_JWT_OK)
        goto fail;

    if (hashed && has_exp && now < exp) {
        double from = -INFINITY;
        if (has_nbf)
            from = nbf - lw;
        if (has_iat && iat - lw > from)
            from = iat - lw;
        cache_insert(v, hash, t.pl, idx, ks->gen, t.alg, exp, from, now);
    }
    keyset_put(ks);
    json_decref(t.hdr);
    res->claims = t.pl;
    res->issuer = is->name;
    res->alg = t.alg;
    count(&c->verified);
    return 0;

fail:
    keyset_put(ks);
    json_decref(t.hdr);
    json_decref(t.pl);
    if (is != NULL && r != POLIS_JWT_ISSUER)
        res->issuer = is->name;
    return refuse(c, res, r, detail);
}

void polis__jwt_result_free(struct polis_jwt_result *res)
{
    json_decref(res->claims);
    *res = (struct polis_jwt_result){0};
}

/* ---- Claims for the gateway ----------------------------------------------------------------- */

int polis__jwt_bearer(struct polis_str value, struct polis_str *token)
{
    const char *p = value.p;
    size_t n = value.len, i = 6;
    if (n < 8 || !polis_str_caseeq((struct polis_str){p, 6}, POLIS_STR("Bearer")) || p[6] != ' ')
        return POLIS_EINVAL;
    while (i < n && p[i] == ' ')
        i++;
    size_t start = i;
    while (i < n && p[i] != ' ' && p[i] != '\t')
        i++;
    size_t stop = i;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    if (i != n || stop == start)
        return POLIS_EINVAL;
    *token = (struct polis_str){p + start, stop - start};
    return 0;
}

/* Whether j's text equals value (strings exactly; integers, reals and booleans as JSON). */
static bool value_equals(const json_t *j, const char *value)
{
    if (json_is_string(j))
        return json_string_length(j) == strlen(value) &&
               memcmp(json_string_value(j), value, json_string_length(j)) == 0;
    if (json_is_true(j))
        return strcmp(value, "true") == 0;
    if (json_is_false(j))
        return strcmp(value, "false") == 0;
    if (json_is_number(j)) {
        char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
        bool eq = s != NULL && strcmp(s, value) == 0;
        free(s);
        return eq;
    }
    return false;
}

bool polis__jwt_claim_equals(const json_t *claims, const char *name, const char *value)
{
    const json_t *j = json_object_get(claims, name);
    if (j == NULL)
        return false;
    if (!json_is_array(j))
        return value_equals(j, value);
    size_t i;
    const json_t *e;
    json_array_foreach(j, i, e)
    {
        if (value_equals(e, value))
            return true;
    }
    return false;
}

/* Whether the space-separated list s[0..len) holds word. */
static bool words_have(const char *s, size_t len, const char *word)
{
    size_t wl = strlen(word), i = 0;
    while (i < len) {
        while (i < len && s[i] == ' ')
            i++;
        size_t b = i;
        while (i < len && s[i] != ' ')
            i++;
        if (i - b == wl && wl > 0 && memcmp(s + b, word, wl) == 0)
            return true;
    }
    return false;
}

static bool scope_granted(const json_t *claims, const char *want)
{
    const json_t *scope = json_object_get(claims, "scope");
    if (json_is_string(scope) &&
        words_have(json_string_value(scope), json_string_length(scope), want))
        return true;
    const json_t *scp = json_object_get(claims, "scp");
    if (json_is_string(scp))
        return words_have(json_string_value(scp), json_string_length(scp), want);
    if (json_is_array(scp)) {
        size_t i;
        const json_t *e;
        json_array_foreach(scp, i, e)
        {
            if (json_is_string(e) && strcmp(json_string_value(e), want) == 0 &&
                json_string_length(e) == strlen(want))
                return true;
        }
    }
    return false;
}

bool polis__jwt_has_scopes(const json_t *claims, const char *const *scopes, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!scope_granted(claims, scopes[i]))
            return false;
    return true;
}

int polis__jwt_claim_string(const json_t *claims, const char *name, char *buf, size_t cap,
                            size_t *len)
{
    const json_t *j = json_object_get(claims, name);
    if (j == NULL || json_is_null(j))
        return POLIS_ENOTFOUND;
    char *dumped = NULL;
    const char *s;
    size_t n;
    if (json_is_string(j)) {
        s = json_string_value(j);
        n = json_string_length(j);
    } else {
        dumped = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII);
        if (dumped == NULL)
            return POLIS_ENOMEM;
        s = dumped;
        n = strlen(dumped);
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            rc = POLIS_EINVAL;
    }
    if (rc == 0 && (cap == 0 || n > cap - 1))
        rc = POLIS_ETOOBIG;
    if (rc == 0) {
        memcpy(buf, s, n);
        buf[n] = '\0';
        *len = n;
    }
    free(dumped);
    return rc;
}

/* ---- The JWKS refresher --------------------------------------------------------------------- */

/* Fetch one issuer's JWK set and install it when it changed. Refresher thread only. */
static void fetch_one(struct polis_jwt_verifier *v, struct issuer *is, uint64_t start)
{
    atomic_store(&is->want_refresh, false);
    is->attempted = true;
    is->last_attempt = start;
    atomic_fetch_add(&is->fetches, 1);
    struct polis_buf body;
    polis_buf_init(&body, POLIS_JWT_MAX_JWKS);
    char err[256] = "";
    int rc = polis__jwt_https_get(is->tls, &is->url, is->fetch_timeout_ms, &v->stop,
                                  POLIS_JWT_MAX_JWKS, &body);
    if (rc == 0) {
        unsigned char h[32];
        unsigned int hl = 0;
        const char *doc = polis_buf_head(&body) ? polis_buf_head(&body) : "";
        size_t dl = polis_buf_len(&body);
        if (EVP_Digest(doc, dl, h, &hl, v->sha256, NULL) != 1) {
            rc = POLIS_ENOMEM;
        } else if (!is->have_doc || memcmp(h, is->doc_hash, 32) != 0) {
            struct polis_jwt_keys got = {0};
            size_t skipped = 0;
            rc = polis__jwt_jwks_parse(doc, dl, false, &got, &skipped, err, sizeof(err));
            if (rc == 0) {
                struct keyset *ks = keyset_build(&is->fixed, &got, atomic_load(&is->gen) + 1);
                if (ks == NULL) {
                    rc = POLIS_ENOMEM;
                } else {
                    keyset_install(is, ks);
                    memcpy(is->doc_hash, h, 32);
                    is->have_doc = true;
                    polis_info("jwt issuer %s: %zu keys from %s (%zu skipped)", is->name, got.n,
                               is->url.hostport, skipped);
                }
            }
            polis__jwt_keys_free(&got);
        }
    }
    polis_buf_free(&body);
    if (rc == 0) {
        is->fail_streak = 0;
        is->next_fetch = start + is->refresh_ms;
        atomic_store(&is->last_error, 0);
        return;
    }
    /* Keep the keys there are; retry after min_refresh_ms, doubling up to refresh_ms. */
    atomic_fetch_add(&is->fetch_failures, 1);
    atomic_store(&is->last_error, rc);
    unsigned shift = is->fail_streak < 10 ? is->fail_streak : 10;
    is->fail_streak++;
    uint64_t backoff = is->min_refresh_ms << shift;
    if (backoff > is->refresh_ms)
        backoff = is->refresh_ms;
    is->next_fetch = start + backoff;
    polis_warn("jwt issuer %s: JWK set fetch from %s failed: %s%s%s (keeping %zu keys)", is->name,
               is->url.hostport, polis_strerror(rc), err[0] ? ": " : "", err, is->ks->n);
}

static void *refresher(void *arg)
{
    struct polis_jwt_verifier *v = arg;
    pthread_mutex_lock(&v->mu);
    while (!atomic_load(&v->stop)) {
        uint64_t now = polis__mono_ms(), next = UINT64_MAX;
        struct issuer *due = NULL;
        for (size_t i = 0; i < v->n_iss && due == NULL; i++) {
            struct issuer *is = &v->iss[i];
            if (!is->has_url)
                continue;
            uint64_t t = is->attempted ? is->next_fetch : 0;
            if (atomic_load(&is->want_refresh)) {
                uint64_t early = is->attempted ? is->last_attempt + is->min_refresh_ms : 0;
                if (early < t)
                    t = early;
            }
            if (t <= now)
                due = is;
            else if (t < next)
                next = t;
        }
        if (due != NULL) {
            pthread_mutex_unlock(&v->mu);
            fetch_one(v, due, now);
            pthread_mutex_lock(&v->mu);
            continue;
        }
        if (next == UINT64_MAX) {
            pthread_cond_wait(&v->cv, &v->mu);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t wait = next - now;
            ts.tv_sec += (time_t)(wait / 1000);
            ts.tv_nsec += (long)(wait % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&v->cv, &v->mu, &ts);
        }
    }
    pthread_mutex_unlock(&v->mu);
    return NULL;
}

/* ---- Creation ------------------------------------------------------------------------------- */

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void issuer_free(struct issuer *is)
{
    free(is->name);
    free(is->iss);
    for (size_t i = 0; i < is->n_auds; i++)
        free(is->auds[i]);
    free(is->auds);
    free(is->aud_lens);
    polis__jwt_keys_free(&is->fixed);
    keyset_put(is->ks);
    is->ks = NULL;
    polis__jwt_url_free(&is->url);
    SSL_CTX_free(is->tls);
    pthread_mutex_destroy(&is->ks_mu);
}

/* Load key file o into is->fixed. */
static int load_key_file(struct issuer *is, const struct polis_jwt_key_opts *o, char *err,
                         size_t errlen)
{
    char msg[192] = "";
    if (o->path == NULL) {
        errf(err, errlen, "issuer %s: a key without a path", is->name);
        return POLIS_EINVAL;
    }
    if (o->kid != NULL && !kid_ok(o->kid, strlen(o->kid))) {
        errf(err, errlen,
             "issuer %s: key %s: kid \"%s\" is empty, too long, or has '/', '..' "
             "or control bytes",
             is->name, o->path, o->kid);
        return POLIS_EINVAL;
    }
    char *data = NULL;
    size_t len = 0;
    int rc = polis__jwt_read_file(o->path, MAX_KEY_FILE, &data, &len);
    if (rc < 0) {
        errf(err, errlen, "issuer %s: key %s: %s", is->name, o->path,
             rc == POLIS_ESYS ? strerror(errno) : polis_strerror(rc));
        return rc == POLIS_ENOMEM ? rc : POLIS_EINVAL;
    }
    struct polis_jwt_key k = {0};
    if (o->secret) {
        if (o->alg != NULL && strncmp(o->alg, "HS", 2) != 0) {
            snprintf(msg, sizeof(msg), "a secret is for HS256/384/512, not %s", o->alg);
            rc = POLIS_EINVAL;
        } else {
            rc = polis__jwt_key_from_secret((const unsigned char *)data, len, o->alg, o->kid, &k,
                                            msg, sizeof(msg));
        }
        OPENSSL_cleanse(data, len);
    } else {
        if (o->alg != NULL && strncmp(o->alg, "HS", 2) == 0) {
            snprintf(msg, sizeof(msg), "%s needs a secret (a key file is never an HMAC key)",
                     o->alg);
            rc = POLIS_EINVAL;
        } else {
            rc = polis__jwt_key_from_pem(data, len, o->alg, o->kid, &k, msg, sizeof(msg));
        }
    }
    free(data);
    if (rc == 0 && !(k.algs & is->algs)) {
        snprintf(msg, sizeof(msg), "none of its algorithms is among the issuer's");
        rc = POLIS_EINVAL;
    }
    if (rc == 0)
        rc = polis__jwt_keys_add(&is->fixed, &k);
    polis__jwt_key_clear(&k);
    if (rc == POLIS_EINVAL)
        errf(err, errlen, "issuer %s: key %s: %s", is->name, o->path, msg);
    return rc;
}

static int load_jwks(struct issuer *is, const char *what, const char *doc, size_t len, char *err,
                     size_t errlen)
{
    char msg[192] = "";
    size_t skipped = 0;
    int rc = polis__jwt_jwks_parse(doc, len, true, &is->fixed, &skipped, msg, sizeof(msg));
    if (rc == POLIS_EINVAL)
        errf(err, errlen, "issuer %s: %s: %s", is->name, what, msg);
    return rc;
}

static int issuer_init(struct issuer *is, const struct polis_jwt_issuer_opts *o, char *err,
                       size_t errlen)
{
    int rc = POLIS_ENOMEM;
    pthread_mutex_init(&is->ks_mu, NULL);
    if ((is->name = strdup(o->name)) == NULL || (is->iss = strdup(o->issuer)) == NULL)
        return POLIS_ENOMEM;
    is->iss_len = strlen(o->issuer);
    if (o->n_audiences > 0) {
        is->auds = calloc(o->n_audiences, sizeof(*is->auds));
        is->aud_lens = calloc(o->n_audiences, sizeof(*is->aud_lens));
        if (is->auds == NULL || is->aud_lens == NULL)
            return POLIS_ENOMEM;
        for (size_t i = 0; i < o->n_audiences; i++) {
            if (o->audiences[i] == NULL || o->audiences[i][0] == '\0') {
                errf(err, errlen, "issuer %s: an empty audience", o->name);
                return POLIS_EINVAL;
            }
            if ((is->auds[i] = strdup(o->audiences[i])) == NULL)
                return POLIS_ENOMEM;
            is->aud_lens[i] = strlen(o->audiences[i]);
            is->n_auds++;
        }
    }
    if (o->n_algorithms == 0) {
        errf(err, errlen, "issuer %s: no algorithms (list them: they are pinned)", o->name);
        return POLIS_EINVAL;
    }
    for (size_t i = 0; i < o->n_algorithms; i++) {
        const char *a = o->algorithms[i];
        int al = a ? polis__jwt_alg_parse(a, strlen(a)) : -1;
        if (al < 0) {
            errf(err, errlen, "issuer %s: unsupported algorithm \"%s\"", o->name, a ? a : "");
            return POLIS_EINVAL;
        }
        is->algs |= POLIS_JWT_ALG_BIT(al);
    }
    if (o->leeway_ms > 86400000) {
        errf(err, errlen, "issuer %s: leeway over one day", o->name);
        return POLIS_EINVAL;
    }
    is->leeway_s = (double)o->leeway_ms / 1000.0;
    is->exp_optional = o->exp_optional;
    if (o->n_keys == 0 && o->jwks_file == NULL && o->jwks_json == NULL && o->jwks_url == NULL) {
        errf(err, errlen, "issuer %s: no keys (keys, jwks_file, jwks_json or jwks_url)", o->name);
        return POLIS_EINVAL;
    }
    for (size_t i = 0; i < o->n_keys; i++)
        if ((rc = load_key_file(is, &o->keys[i], err, errlen)) < 0)
            return rc;
    if (o->jwks_file != NULL) {
        char *doc = NULL;
        size_t len = 0;
        rc = polis__jwt_read_file(o->jwks_file, POLIS_JWT_MAX_JWKS, &doc, &len);
        if (rc < 0) {
            errf(err, errlen, "issuer %s: %s: %s", o->name, o->jwks_file,
                 rc == POLIS_ESYS ? strerror(errno) : polis_strerror(rc));
            return rc == POLIS_ENOMEM ? rc : POLIS_EINVAL;
        }
        rc = load_jwks(is, o->jwks_file, doc, len, err, errlen);
        free(doc);
        if (rc < 0)
            return rc;
    }
    if (o->jwks_json != NULL &&
        (rc = load_jwks(is, "jwks_json", o->jwks_json, strlen(o->jwks_json), err, errlen)) < 0)
        return rc;
    if (o->jwks_url != NULL) {
        rc = polis__jwt_url_parse(o->jwks_url, &is->url);
        if (rc < 0) {
            if (rc == POLIS_EINVAL)
                errf(err, errlen, "issuer %s: jwks_url \"%s\" is not https://host[:port]/path",
                     o->name, o->jwks_url);
            return rc;
        }
        char msg[192] = "";
        is->tls = polis__jwt_tls_ctx(o->jwks_ca_file, msg, sizeof(msg));
        if (is->tls == NULL) {
            errf(err, errlen, "issuer %s: %s", o->name, msg);
            return POLIS_EINVAL;
        }
        is->has_url = true;
        is->refresh_ms = o->refresh_ms ? o->refresh_ms : 600000;
        is->min_refresh_ms = o->min_refresh_ms ? o->min_refresh_ms : 30000;
        is->fetch_timeout_ms = o->fetch_timeout_ms ? o->fetch_timeout_ms : 5000;
        if (is->min_refresh_ms > is->refresh_ms)
            is->min_refresh_ms = is->refresh_ms;
    }
    if ((is->ks = keyset_build(&is->fixed, NULL, 1)) == NULL)
        return POLIS_ENOMEM;
    atomic_init(&is->gen, 1);
    return 0;
}

int polis__jwt_new(const struct polis_jwt_issuer_opts *issuers, size_t n, size_t cache_entries,
                   struct polis_jwt_verifier **out, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (n == 0 || n > POLIS_JWT_MAX_ISSUERS) {
        errf(err, errlen, "%zu issuers (1 to %d)", n, POLIS_JWT_MAX_ISSUERS);
        return POLIS_EINVAL;
    }
    if (cache_entries > MAX_CACHE) {
        errf(err, errlen, "cache of %zu entries (at most %u)", cache_entries, MAX_CACHE);
        return POLIS_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        const struct polis_jwt_issuer_opts *o = &issuers[i];
        if (o->name == NULL || o->name[0] == '\0' || o->issuer == NULL || o->issuer[0] == '\0') {
            errf(err, errlen, "issuer %zu: name and issuer are required", i + 1);
            return POLIS_EINVAL;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(issuers[j].name, o->name) == 0 ||
                strcmp(issuers[j].issuer, o->issuer) == 0) {
                errf(err, errlen, "issuer %s: same name or iss as issuer %s", o->name,
                     issuers[j].name);
                return POLIS_EINVAL;
            }
        }
    }
    struct polis_jwt_verifier *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return POLIS_ENOMEM;
    int rc = POLIS_ENOMEM;
    pthread_mutex_init(&v->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&v->cv, &ca);
    pthread_condattr_destroy(&ca);
    for (size_t i = 0; i < CACHE_STRIPES; i++)
        pthread_mutex_init(&v->stripes[i].mu, NULL);
    if ((v->sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL)) == NULL)
        goto fail;
    if ((v->iss = calloc(n, sizeof(*v->iss))) == NULL)
        goto fail;
    bool any_url = false;
    for (size_t i = 0; i < n; i++) {
        v->n_iss++;
        if ((rc = issuer_init(&v->iss[i], &issuers[i], err, errlen)) < 0)
            goto fail;
        any_url |= v->iss[i].has_url;
    }
    if (cache_entries > 0) {
        v->n_sets = (cache_entries + CACHE_WAYS - 1) / CACHE_WAYS;
        rc = POLIS_ENOMEM;
        if ((v->cache = calloc(v->n_sets * CACHE_WAYS, sizeof(*v->cache))) == NULL)
            goto fail;
    }
    if (any_url) {
        int e = pthread_create(&v->thread, NULL, refresher, v);
        if (e != 0) {
            errno = e;
            errf(err, errlen, "JWKS refresher thread: %s", strerror(e));
            rc = POLIS_ESYS;
            goto fail;
        }
        v->thread_started = true;
    }
    *out = v;
    return 0;
fail:
    ERR_clear_error();
    polis__jwt_free(v);
    return rc;
}

void polis__jwt_free(struct polis_jwt_verifier *v)
{
    if (v == NULL)
        return;
    if (v->thread_started) {
        pthread_mutex_lock(&v->mu);
        atomic_store(&v->stop, true);
        pthread_cond_signal(&v->cv);
        pthread_mutex_unlock(&v->mu);
        pthread_join(v->thread, NULL);
    }
    if (v->cache != NULL)
        for (size_t i = 0; i < v->n_sets * CACHE_WAYS; i++)
            json_decref(v->cache[i].claims);
    free(v->cache);
    for (size_t i = 0; i < v->n_iss; i++)
        issuer_free(&v->iss[i]);
    free(v->iss);
    EVP_MD_free(v->sha256);
    for (size_t i = 0; i < CACHE_STRIPES; i++)
        pthread_mutex_destroy(&v->stripes[i].mu);
    pthread_cond_destroy(&v->cv);
    pthread_mutex_destroy(&v->mu);
    free(v);
}

int polis__jwt_issuer_mask(const struct polis_jwt_verifier *v, const char *const *names, size_t n,
                           uint64_t *mask)
{
    uint64_t m = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k;
        for (k = 0; k < v->n_iss; k++)
            if (strcmp(v->iss[k].name, names[i]) == 0)
                break;
        if (k == v->n_iss)
            return POLIS_ENOTFOUND;
        m |= 1ull << k;
    }
    *mask = m;
    return 0;
}

void polis__jwt_stats(const struct polis_jwt_verifier *v, struct polis_jwt_stats *st)
{
    *st = (struct polis_jwt_stats){.cache_capacity = v->n_sets * CACHE_WAYS};
    for (size_t i = 0; i < COUNTER_SLOTS; i++) {
        const struct counters *c = &v->ctr[i];
        st->verified += atomic_load_explicit(&c->verified, memory_order_relaxed);
        st->rejected += atomic_load_explicit(&c->rejected, memory_order_relaxed);
        st->signature_checks += atomic_load_explicit(&c->sig_checks, memory_order_relaxed);
        st->cache_hits += atomic_load_explicit(&c->hits, memory_order_relaxed);
        st->cache_misses += atomic_load_explicit(&c->misses, memory_order_relaxed);
    }
}

int polis__jwt_issuer_stats(const struct polis_jwt_verifier *v, const char *name,
                            struct polis_jwt_issuer_stats *st)
{
    for (size_t i = 0; i < v->n_iss; i++) {
        struct issuer *is = &v->iss[i];
        if (strcmp(is->name, name) != 0)
            continue;
        pthread_mutex_lock(&is->ks_mu);
        st->keys = is->ks->n;
        st->key_set_gen = is->ks->gen;
        pthread_mutex_unlock(&is->ks_mu);
        st->fetches = atomic_load(&is->fetches);
        st->fetch_failures = atomic_load(&is->fetch_failures);
        st->last_error = atomic_load(&is->last_error);
        return 0;
    }
    return POLIS_ENOTFOUND;
}
