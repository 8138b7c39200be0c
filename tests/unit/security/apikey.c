/* Unit tests of consumers and API keys (lib/security/apikey.c): hashing, set building and its
 * refusals, lookups among many keys, the per-route rule, and replacing the set while reader
 * threads use it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "security/apikey.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

static struct polis_str S_(const char *s) {
    return (struct polis_str){s, strlen(s)};
}

static void
add(struct polis_consumers *s, const char *name, const char *const *groups, size_t n)
{
    char err[200] = "";
    if (polis__consumers_add(s, name, groups, n, err, sizeof(err)) != 0)
        fail_msg("add %s: %s", name, err);
}

/* Give consumer the key plain (hashed here). */
static void add_key(struct polis_consumers *s, const char *consumer, const char *plain)
{
    char stored[POLIS_APIKEY_HASH_LEN + 1], err[200] = "";
    assert_int_equal(polis__apikey_hash(S_(plain), stored), 0);
    if (polis__consumers_add_key(s, consumer, stored, err, sizeof(err)) != 0)
        fail_msg("key of %s: %s", consumer, err);
}

static void seal(struct polis_consumers *s)
{
    char err[200] = "";
    if (polis__consumers_seal(s, err, sizeof(err)) != 0)
        fail_msg("seal: %s", err);
}

static const char *who(const struct polis_consumers *s, const char *key)
{
    const struct polis_consumer *c = polis__consumers_lookup_key(s, S_(key));
    return c != NULL ? c->name : NULL;
}

#define GROUPS(...) ((const char *const[]){__VA_ARGS__})

/* ---- Keys ---------------------------------------------------------------------------------- */

static void test_hash(void **state)
{
    (void)state;
    char out[POLIS_APIKEY_HASH_LEN + 1];
    assert_int_equal(polis__apikey_hash(S_("abc"), out), 0);
    assert_string_equal(out,
                        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(polis__apikey_hash(S_("hello\n"), out), 0); /* echo hello | sha256sum */
    assert_string_equal(out,
                        "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
    /* The example of docs/security.md. */
    assert_int_equal(polis__apikey_hash(S_("demo-key-billing"), out), 0);
    assert_string_equal(out,
                        "sha256:5a822828e0b1683e1686df1d0366cdef5ca636a8bd63501275707c6a6fad87df");
    assert_int_equal(polis__apikey_hash(S_(""), out), POLIS_EINVAL);
}

static void test_generate(void **state)
{
    (void)state;
    char a[44], b[64];
    assert_int_equal(polis__apikey_generate(a, sizeof(a)), 0);
    assert_int_equal(polis__apikey_generate(b, sizeof(b)), 0);
    assert_int_equal(strlen(a), 43);
    assert_int_equal(strlen(b), 43);
    assert_string_not_equal(a, b);
    for (size_t i = 0; i < 43; i++)
        assert_non_null(
            strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", a[i]));
    assert_int_equal(polis__apikey_generate(a, 43), POLIS_EINVAL);
    /* Many keys use the whole alphabet (not stuck on a few characters). */
    bool seen[256] = {false};
    for (int k = 0; k < 200; k++) {
        assert_int_equal(polis__apikey_generate(a, sizeof(a)), 0);
        for (size_t i = 0; i < 43; i++)
            seen[(unsigned char)a[i]] = true;
    }
    int distinct = 0;
    for (int i = 0; i < 256; i++)
        distinct += seen[i];
    assert_int_equal(distinct, 64);
}

/* ---- Sets ---------------------------------------------------------------------------------- */

static void test_lookup(void **state)
{
    (void)state;
    struct polis_consumers *s;
    assert_int_equal(polis__consumers_new(&s), 0);
    add(s, "alice", GROUPS("admins", "staff"), 2);
    add(s, "bob", NULL, 0);
    add(s, "svc.billing@prod", GROUPS("services"), 1);
    add_key(s, "alice", "alice-key-1");
    add_key(s, "alice", "alice-key-2");
    add_key(s, "bob", "bob-key");
    /* Stored hashes in uppercase hex are accepted too. */
    char stored[POLIS_APIKEY_HASH_LEN + 1];
    polis__apikey_hash(S_("billing-key"), stored);
    for (char *p = stored + 7; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 32);
    assert_int_equal(polis__consumers_add_key(s, "svc.billing@prod", stored, NULL, 0), 0);
    /* A key given as a binary digest (how the configuration stores them). */
    uint8_t digest[32];
    char hx[POLIS_APIKEY_HASH_LEN + 1];
    polis__apikey_hash(S_("bob-key-2"), hx);
    for (size_t i = 0; i < 32; i++) {
        unsigned v;
        sscanf(hx + 7 + 2 * i, "%2x", &v);
        digest[i] = (uint8_t)v;
    }
    assert_int_equal(polis__consumers_add_key_digest(s, "bob", digest, NULL, 0), 0);
    assert_int_equal(polis__consumers_add_key_digest(s, "nobody", digest, NULL, 0), POLIS_EINVAL);
    /* Not sealed yet: no lookups. */
    assert_null(who(s, "bob-key"));
    seal(s);
    assert_int_equal(polis__consumers_count(s), 3);
    assert_int_equal(polis__consumers_keys(s), 5);
    assert_string_equal(who(s, "bob-key-2"), "bob");
    assert_string_equal(who(s, "alice-key-1"), "alice");
    assert_string_equal(who(s, "alice-key-2"), "alice");
    assert_string_equal(who(s, "bob-key"), "bob");
    assert_string_equal(who(s, "billing-key"), "svc.billing@prod");
    assert_null(who(s, "bob-key "));
    assert_null(who(s, "bob-ke"));
    assert_null(who(s, "BOB-KEY"));
    assert_null(who(s, ""));
    assert_null(who(s, "sha256:0000"));
    /* The stored hash itself is not a key. */
    char h[POLIS_APIKEY_HASH_LEN + 1];
    polis__apikey_hash(S_("bob-key"), h);
    assert_null(who(s, h));
    const struct polis_consumer *a = polis__consumers_lookup_key(s, S_("alice-key-2"));
    assert_int_equal(a->index, 0);
    assert_int_equal(a->num_groups, 2);
    assert_string_equal(a->groups[1], "staff");
    assert_ptr_equal(polis__consumers_find(s, S_("alice")), a);
    assert_null(polis__consumers_find(s, S_("alic")));
    /* A view with bytes after it: only len counts. */
    assert_string_equal(polis__consumers_lookup_key(s, (struct polis_str){"bob-keyXYZ", 7})->name,
                        "bob");
    /* Sealed: no more changes. */
    assert_int_equal(polis__consumers_add(s, "carol", NULL, 0, NULL, 0), POLIS_EINVAL);
    assert_int_equal(polis__consumers_add_key(s, "bob", h, NULL, 0), POLIS_EINVAL);
    assert_int_equal(polis__consumers_add_key_digest(s, "bob", digest, NULL, 0), POLIS_EINVAL);
    assert_int_equal(polis__consumers_seal(s, NULL, 0), 0);
    assert_null(polis__consumers_lookup_key(NULL, S_("bob-key")));
    polis__consumers_unref(s);
}

static void test_refusals(void **state)
{
    (void)state;
    struct polis_consumers *s;
    char err[200];
    assert_int_equal(polis__consumers_new(&s), 0);
    static const char *const bad_names[] = {"", "a b", "a/b", "a:b", "é", "a\r\nX: y", "a,b"};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++)
        assert_int_equal(polis__consumers_add(s, bad_names[i], NULL, 0, NULL, 0), POLIS_EINVAL);
    char longname[POLIS_CONSUMER_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(polis__consumers_add(s, longname, NULL, 0, NULL, 0), POLIS_EINVAL);
    longname[POLIS_CONSUMER_NAME_MAX] = '\0';
    assert_int_equal(polis__consumers_add(s, longname, NULL, 0, NULL, 0), 0);
    add(s, "alice", NULL, 0);
    err[0] = '\0';
    assert_int_equal(polis__consumers_add(s, "alice", NULL, 0, err, sizeof(err)), POLIS_EINVAL);
    assert_non_null(strstr(err, "duplicate"));
    assert_int_equal(polis__consumers_add(s, "bob", GROUPS("ok", "not ok"), 2, err, sizeof(err)),
                     POLIS_EINVAL);
    assert_non_null(strstr(err, "group"));
    const char *many[POLIS_CONSUMER_MAX_GROUPS + 1];
    for (size_t i = 0; i <= POLIS_CONSUMER_MAX_GROUPS; i++)
        many[i] = "g";
    assert_int_equal(polis__consumers_add(s, "bob", many, POLIS_CONSUMER_MAX_GROUPS + 1, NULL, 0),
                     POLIS_EINVAL);
    assert_null(polis__consumers_find(s, S_("bob")));
    /* Keys: unknown consumer, malformed stored forms. */
    char h[POLIS_APIKEY_HASH_LEN + 1];
    polis__apikey_hash(S_("k"), h);
    assert_int_equal(polis__consumers_add_key(s, "nobody", h, err, sizeof(err)), POLIS_EINVAL);
    assert_non_null(strstr(err, "unknown consumer"));
    const char *hex = h + 7;
    char bad[8][POLIS_APIKEY_HASH_LEN + 8];
    snprintf(bad[0], sizeof(bad[0]), "plain-key");
    snprintf(bad[1], sizeof(bad[1]), "sha256:");
    snprintf(bad[2], sizeof(bad[2]), "sha1:%s", hex);
    snprintf(bad[3], sizeof(bad[3]), "SHA256:%s", hex);
    snprintf(bad[4], sizeof(bad[4]), "%s0", h);
    snprintf(bad[5], sizeof(bad[5]), "sha256:%.63s", hex);
    snprintf(bad[6], sizeof(bad[6]), "sha256:%.63sg", hex);
    snprintf(bad[7], sizeof(bad[7]), " %s", h);
    for (size_t i = 0; i < 8; i++) {
        if (polis__consumers_add_key(s, "alice", bad[i], err, sizeof(err)) != POLIS_EINVAL)
            fail_msg("stored key '%s' should be refused", bad[i]);
        assert_non_null(strstr(err, "sha256:<64 hex digits>"));
    }
    assert_int_equal(polis__consumers_add_key(s, "alice", h, err, sizeof(err)), 0);
    /* The same key twice: refused when sealing. */
    add_key(s, "alice", "shared");
    add(s, "bob", NULL, 0);
    add_key(s, "bob", "shared");
    err[0] = '\0';
    assert_int_equal(polis__consumers_seal(s, err, sizeof(err)), POLIS_EINVAL);
    assert_non_null(strstr(err, "twice"));
    polis__consumers_unref(s);
}

static void test_many_keys(void **state)
{
    (void)state;
    enum { N = 20000 };
    struct polis_consumers *s;
    assert_int_equal(polis__consumers_new(&s), 0);
    char name[32], key[48];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        add(s, name, NULL, 0);
        snprintf(key, sizeof(key), "key-%d-secret", i);
        add_key(s, name, key);
    }
    seal(s);
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "key-%d-secret", i);
        const struct polis_consumer *c = polis__consumers_lookup_key(s, S_(key));
        assert_non_null(c);
        assert_int_equal(c->index, i);
        snprintf(key, sizeof(key), "key-%d-secreT", i);
        assert_null(polis__consumers_lookup_key(s, S_(key)));
    }
    polis__consumers_unref(s);
}

/* ---- Rules --------------------------------------------------------------------------------- */

static void test_acl(void **state)
{
    (void)state;
    struct polis_consumers *s;
    assert_int_equal(polis__consumers_new(&s), 0);
    add(s, "alice", GROUPS("admins", "staff"), 2);
    add(s, "bob", GROUPS("staff"), 1);
    add(s, "mallory", GROUPS("staff", "suspended"), 2);
    add(s, "svc", NULL, 0);
    seal(s);
    const struct polis_consumer *alice = polis__consumers_find(s, S_("alice"));
    const struct polis_consumer *bob = polis__consumers_find(s, S_("bob"));
    const struct polis_consumer *mallory = polis__consumers_find(s, S_("mallory"));
    const struct polis_consumer *svc = polis__consumers_find(s, S_("svc"));

    /* No rule: everyone, even anonymous. */
    assert_true(polis__consumer_acl_allows(NULL, alice));
    assert_true(polis__consumer_acl_allows(NULL, NULL));
    struct polis_consumer_acl none = {0};
    assert_true(polis__consumer_acl_allows(&none, svc));
    assert_true(polis__consumer_acl_allows(&none, NULL));

    /* Allow by group, plus one named consumer; deny a group: deny wins. */
    struct polis_consumer_acl a = {
        .allow_groups = GROUPS("staff"),
        .num_allow_groups = 1,
        .allow_consumers = GROUPS("svc"),
        .num_allow_consumers = 1,
        .deny_groups = GROUPS("suspended"),
        .num_deny_groups = 1,
    };
    assert_true(polis__consumer_acl_allows(&a, alice));
    assert_true(polis__consumer_acl_allows(&a, bob));
    assert_true(polis__consumer_acl_allows(&a, svc));
    assert_false(polis__consumer_acl_allows(&a, mallory));
    assert_false(polis__consumer_acl_allows(&a, NULL));

    /* Deny by name beats allow by name and by group. */
    struct polis_consumer_acl b = {
        .allow_consumers = GROUPS("alice", "bob"),
        .num_allow_consumers = 2,
        .allow_groups = GROUPS("admins"),
        .num_allow_groups = 1,
        .deny_consumers = GROUPS("alice"),
        .num_deny_consumers = 1,
    };
    assert_false(polis__consumer_acl_allows(&b, alice));
    assert_true(polis__consumer_acl_allows(&b, bob));
    assert_false(polis__consumer_acl_allows(&b, svc));

    /* Deny only: everyone else, anonymous included. */
    struct polis_consumer_acl d = {.deny_groups = GROUPS("admins"), .num_deny_groups = 1};
    assert_false(polis__consumer_acl_allows(&d, alice));
    assert_true(polis__consumer_acl_allows(&d, bob));
    assert_true(polis__consumer_acl_allows(&d, NULL));
    /* Names compare exactly. */
    struct polis_consumer_acl e = {.allow_consumers = GROUPS("Alice"), .num_allow_consumers = 1};
    assert_false(polis__consumer_acl_allows(&e, alice));
    polis__consumers_unref(s);
}

/* ---- Slot ---------------------------------------------------------------------------------- */

/* A sealed set of generation gen: consumer "gen-<gen>" with key "k", and "other". */
static struct polis_consumers *gen_set(unsigned gen)
{
    struct polis_consumers *s;
    assert_int_equal(polis__consumers_new(&s), 0);
    char name[32];
    snprintf(name, sizeof(name), "gen-%u", gen);
    add(s, name, NULL, 0);
    add(s, "other", NULL, 0);
    add_key(s, name, "k");
    add_key(s, "other", "other-key");
    seal(s);
    return s;
}

static void test_slot_basics(void **state)
{
    (void)state;
    struct polis_consumers_slot *slot;
    assert_int_equal(polis__consumers_slot_new(NULL, &slot), 0);
    assert_null(polis__consumers_slot_get(slot));
    assert_int_equal(polis__consumers_slot_version(slot), 0);
    polis__consumers_slot_replace(slot, gen_set(1));
    assert_int_equal(polis__consumers_slot_version(slot), 1);
    struct polis_consumers *held = polis__consumers_slot_get(slot);
    assert_string_equal(who(held, "k"), "gen-1");
    polis__consumers_slot_replace(slot, gen_set(2));
    /* The held reference keeps the old set alive and unchanged. */
    assert_string_equal(who(held, "k"), "gen-1");
    struct polis_consumers *now = polis__consumers_slot_get(slot);
    assert_string_equal(who(now, "k"), "gen-2");
    polis__consumers_unref(held);
    polis__consumers_unref(now);
    polis__consumers_slot_replace(slot, NULL);
    assert_null(polis__consumers_slot_get(slot));
    assert_int_equal(polis__consumers_slot_version(slot), 3);
    polis__consumers_slot_free(slot);
    /* Freeing a slot that holds a set releases it (the sanitizers see a leak otherwise). */
    assert_int_equal(polis__consumers_slot_new(gen_set(9), &slot), 0);
    polis__consumers_slot_free(slot);
}

struct reader {
    struct polis_consumers_slot *slot;
    _Atomic bool *stop;
    unsigned long reads;
    unsigned last_gen;
    bool ok;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    r->ok = true;
    while (!atomic_load(r->stop) || r->reads < 1000) {
        struct polis_consumers *s = polis__consumers_slot_get(r->slot);
        if (s == NULL) {
            r->ok = false;
            break;
        }
        const struct polis_consumer *c = polis__consumers_lookup_key(s, S_("k"));
        const struct polis_consumer *o = polis__consumers_lookup_key(s, S_("other-key"));
        unsigned gen = 0;
        /* Each set is whole, and generations never go backwards for one reader. */
        if (c == NULL || o == NULL || strcmp(o->name, "other") != 0 ||
            sscanf(c->name, "gen-%u", &gen) != 1 || gen < r->last_gen) {
            r->ok = false;
            polis__consumers_unref(s);
            break;
        }
        r->last_gen = gen;
        r->reads++;
        polis__consumers_unref(s);
    }
    return NULL;
}

/* Readers hammer the slot while it is replaced many times. Without the grace period a reader
 * would take a reference to a freed set: the sanitizers catch that in most runs. */
static void test_slot_threads(void **state)
{
    (void)state;
    enum { READERS = 3, SWAPS = 20000 };
    struct polis_consumers_slot *slot;
    assert_int_equal(polis__consumers_slot_new(gen_set(0), &slot), 0);
    _Atomic bool stop = false;
    struct reader r[READERS];
    pthread_t t[READERS];
    for (int i = 0; i < READERS; i++) {
        r[i] = (struct reader){.slot = slot, .stop = &stop};
        assert_int_equal(pthread_create(&t[i], NULL, reader_main, &r[i]), 0);
    }
    for (unsigned g = 1; g <= SWAPS; g++)
        polis__consumers_slot_replace(slot, gen_set(g));
    atomic_store(&stop, true);
    for (int i = 0; i < READERS; i++) {
        pthread_join(t[i], NULL);
        assert_true(r[i].ok);
        assert_true(r[i].reads >= 1000);
    }
    struct polis_consumers *last = polis__consumers_slot_get(slot);
    assert_string_equal(who(last, "k"), "gen-20000");
    polis__consumers_unref(last);
    assert_int_equal(polis__consumers_slot_version(slot), SWAPS);
    polis__consumers_slot_free(slot);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash),        cmocka_unit_test(test_generate),
        cmocka_unit_test(test_lookup),      cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_many_keys),   cmocka_unit_test(test_acl),
        cmocka_unit_test(test_slot_basics), cmocka_unit_test(test_slot_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
