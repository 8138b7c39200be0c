/* apikey.c: consumer sets with SHA-256 key hashes in an open-addressing table, the per-route
 * consumer rule, and the slot that replaces a set under lock-free readers. */
#include "security/apikey.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIGEST_LEN 32
#define EMPTY UINT32_MAX

struct key {
    uint8_t digest[DIGEST_LEN];
    uint32_t consumer;
};

struct polis_consumers {
    _Atomic unsigned long refs;
    bool sealed;
    struct polis_consumer *consumers;
    size_t n, cap;
    struct key *keys;
    size_t nkeys, keycap;
    uint32_t *table; /* indices into keys, EMPTY when free; power-of-two size */
    size_t mask;
    uint32_t *names; /* indices into consumers by name hash, EMPTY when free */
    size_t names_mask;
};

/* ---- Keys ---------------------------------------------------------------------------------- */

static const char hexdig[] = "0123456789abcdef";

int polis__apikey_hash(struct polis_str key, char out[POLIS_APIKEY_HASH_LEN + 1])
{
    if (key.len == 0)
        return POLIS_EINVAL;
    uint8_t d[DIGEST_LEN];
    SHA256((const unsigned char *)key.p, key.len, d);
    memcpy(out, "sha256:", 7);
    for (size_t i = 0; i < DIGEST_LEN; i++) {
        out[7 + 2 * i] = hexdig[d[i] >> 4];
        out[8 + 2 * i] = hexdig[d[i] & 15];
    }
    out[POLIS_APIKEY_HASH_LEN] = '\0';
    OPENSSL_cleanse(d, sizeof(d));
    return 0;
}

int polis__apikey_generate(char *out, size_t cap)
{
    static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t r[33]; /* 32 random bytes and one 0 byte of padding for the last group */
    if (cap < 44)
        return POLIS_EINVAL;
    if (RAND_bytes(r, 32) != 1)
        return POLIS_ESYS;
    r[32] = 0;
    size_t w = 0;
    for (size_t i = 0; i < 33; i += 3) {
        uint32_t v = (uint32_t)r[i] << 16 | (uint32_t)r[i + 1] << 8 | r[i + 2];
        for (int k = 3; k >= 0 && w < 43; k--)
            out[w++] = b64u[(v >> (6 * k)) & 63];
    }
    out[43] = '\0';
    OPENSSL_cleanse(r, sizeof(r));
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* "sha256:" and 64 hex digits -> 32 bytes. */
static bool parse_stored(const char *s, uint8_t d[DIGEST_LEN])
{
    if (strncmp(s, "sha256:", 7) != 0 || strlen(s) != POLIS_APIKEY_HASH_LEN)
        return false;
    for (size_t i = 0; i < DIGEST_LEN; i++) {
        int h = hexval(s[7 + 2 * i]), l = hexval(s[8 + 2 * i]);
        if (h < 0 || l < 0)
            return false;
        d[i] = (uint8_t)(h << 4 | l);
    }
    return true;
}

/* ---- Sets ---------------------------------------------------------------------------------- */

static void set_err(char *err, size_t errcap, const char *msg, const char *what)
{
    if (err != NULL && errcap > 0)
        snprintf(err, errcap, "%s '%.*s'", msg, POLIS_CONSUMER_NAME_MAX, what);
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > POLIS_CONSUMER_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '~' || c == '@' || c == '+' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

int polis__consumers_new(struct polis_consumers **out)
{
    struct polis_consumers *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return POLIS_ENOMEM;
    atomic_init(&s->refs, 1);
    *out = s;
    return 0;
}

static void consumer_free(struct polis_consumer *c)
{
    for (size_t g = 0; c->groups != NULL && g < c->num_groups; g++)
        free((char *)c->groups[g]);
    free((char **)c->groups);
    free((char *)c->name);
}

static void set_free(struct polis_consumers *s)
{
    for (size_t i = 0; i < s->n; i++)
        consumer_free(&s->consumers[i]);
    free(s->consumers);
    if (s->keys != NULL)
        OPENSSL_cleanse(s->keys, s->keycap * sizeof(*s->keys));
    free(s->keys);
    free(s->table);
    free(s->names);
    free(s);
}

void polis__consumers_ref(struct polis_consumers *s)
{
    if (s != NULL)
        atomic_fetch_add(&s->refs, 1);
}

void polis__consumers_unref(struct polis_consumers *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        set_free(s);
}

/* FNV-1a: consumer names are configuration, not attacker input. */
static size_t name_hash(struct polis_str n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n.len; i++)
        h = (h ^ (unsigned char)n.p[i]) * 0x100000001b3ull;
    return (size_t)h;
}

const struct polis_consumer *polis__consumers_find(const struct polis_consumers *s,
                                                   struct polis_str name)
{
    if (s->names == NULL)
        return NULL;
    for (size_t i = name_hash(name) & s->names_mask; s->names[i] != EMPTY;
         i = (i + 1) & s->names_mask) {
        const struct polis_consumer *c = &s->consumers[s->names[i]];
        if (polis_str_eq(name, (struct polis_str){c->name, strlen(c->name)}))
            return c;
    }
    return NULL;
}

static void names_put(struct polis_consumers *s, uint32_t k)
{
    const char *n = s->consumers[k].name;
    size_t i = name_hash((struct polis_str){n, strlen(n)}) & s->names_mask;
    while (s->names[i] != EMPTY)
        i = (i + 1) & s->names_mask;
    s->names[i] = k;
}

/* Index consumer k (the last one) by name; the table is kept at most half full. Returns 0 or
 * POLIS_ENOMEM (nothing changed). */
static int names_insert(struct polis_consumers *s, uint32_t k)
{
    if (s->names == NULL || 2 * ((size_t)k + 1) > s->names_mask + 1) {
        size_t size = s->names == NULL ? 32 : 2 * (s->names_mask + 1);
        uint32_t *t = malloc(size * sizeof(*t));
        if (t == NULL)
            return POLIS_ENOMEM;
        for (size_t i = 0; i < size; i++)
            t[i] = EMPTY;
        free(s->names);
        s->names = t;
        s->names_mask = size - 1;
        for (uint32_t j = 0; j < k; j++)
            names_put(s, j);
    }
    names_put(s, k);
    return 0;
}

int polis__consumers_add(struct polis_consumers *s, const char *name, const char *const *groups,
                         size_t num_groups, char *err, size_t errcap)
{
    if (s->sealed) {
        set_err(err, errcap, "consumer set is sealed:", name);
        return POLIS_EINVAL;
    }
    if (!valid_name(name)) {
        set_err(err, errcap, "bad consumer name (1-128 of A-Z a-z 0-9 . _ ~ @ + -):", name);
        return POLIS_EINVAL;
    }
    if (polis__consumers_find(s, (struct polis_str){name, strlen(name)}) != NULL) {
        set_err(err, errcap, "duplicate consumer", name);
        return POLIS_EINVAL;
    }
    if (num_groups > POLIS_CONSUMER_MAX_GROUPS || s->n >= POLIS_CONSUMERS_MAX) {
        set_err(err, errcap, "too many groups or consumers at", name);
        return POLIS_EINVAL;
    }
    for (size_t g = 0; g < num_groups; g++) {
        if (!valid_name(groups[g])) {
            set_err(err, errcap, "bad group name:", groups[g]);
            return POLIS_EINVAL;
        }
    }
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 16;
        struct polis_consumer *a = realloc(s->consumers, nc * sizeof(*a));
        if (a == NULL)
            return POLIS_ENOMEM;
        s->consumers = a;
        s->cap = nc;
    }
    struct polis_consumer c = {.index = (uint32_t)s->n, .num_groups = num_groups};
    char **gs = calloc(num_groups + 1, sizeof(*gs));
    c.groups = (const char *const *)gs;
    c.name = strdup(name);
    if (gs == NULL || c.name == NULL)
        goto nomem;
    for (size_t g = 0; g < num_groups; g++) {
        gs[g] = strdup(groups[g]);
        if (gs[g] == NULL)
            goto nomem;
    }
    s->consumers[s->n] = c;
    if (names_insert(s, (uint32_t)s->n) < 0)
        goto nomem;
    s->n++;
    return 0;

nomem:
    consumer_free(&c);
    return POLIS_ENOMEM;
}

/* Append key k (consumer index and digest set) to the set. */
static int push_key(struct polis_consumers *s, const struct key *k, char *err, size_t errcap)
{
    if (s->nkeys >= POLIS_CONSUMERS_MAX) {
        set_err(err, errcap, "too many keys at", s->consumers[k->consumer].name);
        return POLIS_EINVAL;
    }
    if (s->nkeys == s->keycap) {
        size_t nc = s->keycap ? s->keycap * 2 : 16;
        struct key *a = realloc(s->keys, nc * sizeof(*a));
        if (a == NULL)
            return POLIS_ENOMEM;
        s->keys = a;
        s->keycap = nc;
    }
    s->keys[s->nkeys++] = *k;
    return 0;
}

/* The consumer a key is being added to, or NULL with a message. */
static const struct polis_consumer *key_owner(struct polis_consumers *s, const char *consumer,
                                              char *err, size_t errcap)
{
    if (s->sealed) {
        set_err(err, errcap, "consumer set is sealed:", consumer);
        return NULL;
    }
    const struct polis_consumer *c =
        polis__consumers_find(s, (struct polis_str){consumer, strlen(consumer)});
    if (c == NULL)
        set_err(err, errcap, "unknown consumer", consumer);
    return c;
}

int polis__consumers_add_key(struct polis_consumers *s, const char *consumer, const char *stored,
                             char *err, size_t errcap)
{
    const struct polis_consumer *c = key_owner(s, consumer, err, errcap);
    if (c == NULL)
        return POLIS_EINVAL;
    struct key k = {.consumer = c->index};
    if (!parse_stored(stored, k.digest)) {
        set_err(err, errcap, "a key must be stored as sha256:<64 hex digits>; consumer", consumer);
        return POLIS_EINVAL;
    }
    return push_key(s, &k, err, errcap);
}

int polis__consumers_add_key_digest(struct polis_consumers *s, const char *consumer,
                                    const uint8_t digest[32], char *err, size_t errcap)
{
    const struct polis_consumer *c = key_owner(s, consumer, err, errcap);
    if (c == NULL)
        return POLIS_EINVAL;
    struct key k = {.consumer = c->index};
    memcpy(k.digest, digest, DIGEST_LEN);
    return push_key(s, &k, err, errcap);
}

/* The table slot a digest starts probing at: its first 8 bytes are already uniform. */
static size_t home(const uint8_t *d, size_t mask)
{
    uint64_t h;
    memcpy(&h, d, sizeof(h));
    return (size_t)h & mask;
}

int polis__consumers_seal(struct polis_consumers *s, char *err, size_t errcap)
{
    if (s->sealed)
        return 0;
    size_t size = 16;
    while (size < 2 * s->nkeys)
        size *= 2;
    uint32_t *t = malloc(size * sizeof(*t));
    if (t == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < size; i++)
        t[i] = EMPTY;
    size_t mask = size - 1;
    for (size_t k = 0; k < s->nkeys; k++) {
        size_t i = home(s->keys[k].digest, mask);
        while (t[i] != EMPTY) {
            if (memcmp(s->keys[t[i]].digest, s->keys[k].digest, DIGEST_LEN) == 0) {
                set_err(err, errcap, "the same key is given twice; consumer",
                        s->consumers[s->keys[k].consumer].name);
                free(t);
                return POLIS_EINVAL;
            }
            i = (i + 1) & mask;
        }
        t[i] = (uint32_t)k;
    }
    s->table = t;
    s->mask = mask;
    s->sealed = true;
    return 0;
}

const struct polis_consumer *polis__consumers_lookup_key(const struct polis_consumers *s,
                                                         struct polis_str key)
{
    if (s == NULL || !s->sealed || key.len == 0)
        return NULL;
    uint8_t d[DIGEST_LEN];
    SHA256((const unsigned char *)key.p, key.len, d);
    const struct polis_consumer *found = NULL;
    for (size_t i = home(d, s->mask); s->table[i] != EMPTY; i = (i + 1) & s->mask) {
        const struct key *k = &s->keys[s->table[i]];
        if (CRYPTO_memcmp(k->digest, d, DIGEST_LEN) == 0) {
            found = &s->consumers[k->consumer];
            break;
        }
    }
    OPENSSL_cleanse(d, sizeof(d));
    return found;
}

size_t polis__consumers_count(const struct polis_consumers *s)
{
    return s->n;
}

size_t polis__consumers_keys(const struct polis_consumers *s)
{
    return s->nkeys;
}

/* ---- Rules --------------------------------------------------------------------------------- */

static bool listed(const char *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0)
            return true;
    return false;
}

static bool in_group(const char *const *list, size_t n, const struct polis_consumer *c)
{
    for (size_t g = 0; g < c->num_groups; g++)
        if (listed(list, n, c->groups[g]))
            return true;
    return false;
}

bool polis__consumer_acl_allows(const struct polis_consumer_acl *acl,
                                const struct polis_consumer *c)
{
    if (acl == NULL)
        return true;
    bool has_allow = acl->num_allow_consumers > 0 || acl->num_allow_groups > 0;
    if (c == NULL)
        return !has_allow;
    if (listed(acl->deny_consumers, acl->num_deny_consumers, c->name) ||
        in_group(acl->deny_groups, acl->num_deny_groups, c))
        return false;
    if (!has_allow)
        return true;
    return listed(acl->allow_consumers, acl->num_allow_consumers, c->name) ||
           in_group(acl->allow_groups, acl->num_allow_groups, c);
}

/* ---- Slot ---------------------------------------------------------------------------------- */

struct polis_consumers_slot {
    _Atomic(struct polis_consumers *) cur;
    _Atomic uint64_t version;
    _Atomic unsigned epoch;
    /* Readers between reading cur and taking their reference, by the epoch they saw; each on
     * its own cache line. */
    struct {
        _Alignas(64) _Atomic unsigned long n;
    } readers[2];
    pthread_mutex_t wlock;
};

int polis__consumers_slot_new(struct polis_consumers *initial, struct polis_consumers_slot **out)
{
    struct polis_consumers_slot *slot = aligned_alloc(64, (sizeof(*slot) + 63) & ~(size_t)63);
    if (slot == NULL)
        return POLIS_ENOMEM;
    memset(slot, 0, sizeof(*slot));
    if (pthread_mutex_init(&slot->wlock, NULL) != 0) {
        free(slot);
        return POLIS_ENOMEM;
    }
    atomic_init(&slot->cur, initial);
    atomic_init(&slot->version, 0);
    atomic_init(&slot->epoch, 0);
    atomic_init(&slot->readers[0].n, 0);
    atomic_init(&slot->readers[1].n, 0);
    *out = slot;
    return 0;
}

void polis__consumers_slot_free(struct polis_consumers_slot *slot)
{
    if (slot == NULL)
        return;
    polis__consumers_unref(atomic_load(&slot->cur));
    pthread_mutex_destroy(&slot->wlock);
    free(slot);
}

struct polis_consumers *polis__consumers_slot_get(struct polis_consumers_slot *slot)
{
    /* Sequentially consistent throughout: the writer's grace period relies on a reader's
     * increment being ordered before its load of cur. */
    unsigned e = atomic_load(&slot->epoch) & 1;
    atomic_fetch_add(&slot->readers[e].n, 1);
    struct polis_consumers *s = atomic_load(&slot->cur);
    if (s != NULL)
        atomic_fetch_add(&s->refs, 1);
    atomic_fetch_sub(&slot->readers[e].n, 1);
    return s;
}

/* Flip the epoch, then wait for the readers counted under the old one to leave. */
static void drain(struct polis_consumers_slot *slot)
{
    unsigned old = atomic_fetch_add(&slot->epoch, 1) & 1;
    for (unsigned spins = 0; atomic_load(&slot->readers[old].n) != 0; spins++)
        if (spins > 64)
            sched_yield();
}

void polis__consumers_slot_replace(struct polis_consumers_slot *slot, struct polis_consumers *next)
{
    pthread_mutex_lock(&slot->wlock);
    struct polis_consumers *old = atomic_exchange(&slot->cur, next);
    atomic_fetch_add(&slot->version, 1);
    /* A reader that loaded old incremented one of the two counters before that load, so before
     * the exchange: after both have drained once, every such reader holds its reference. Two
     * flips, so that new readers always go to the counter not being waited for. */
    drain(slot);
    drain(slot);
    pthread_mutex_unlock(&slot->wlock);
    polis__consumers_unref(old);
}

uint64_t polis__consumers_slot_version(struct polis_consumers_slot *slot)
{
    return atomic_load(&slot->version);
}
