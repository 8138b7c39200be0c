/* Unit tests of the load balancers (lib/gateway/balance.c): round-robin, smooth weighted
 * round-robin, least-request, the consistent-hash ring and the hashing key of a request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/balance.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

#define MAXI 16

struct cluster {
    struct polis_cluster_cfg c;
    struct polis_instance_cfg in[MAXI];
    struct polis_lb *lb;
};

/* A cluster of n instances "10.0.0.<i+1>:8080" with the given weights (NULL: all 1). */
static void cluster_init(struct cluster *k, enum polis_lb_kind kind, size_t n,
                         const uint32_t *weights)
{
    memset(k, 0, sizeof(*k));
    for (size_t i = 0; i < n; i++) {
        snprintf(k->in[i].addr.text, sizeof(k->in[i].addr.text), "10.0.0.%zu:8080", i + 1);
        k->in[i].weight = weights ? weights[i] : 1;
    }
    k->c.name = "c";
    k->c.lb = kind;
    k->c.instances = k->in;
    k->c.num_instances = n;
    assert_int_equal(polis__lb_new(&k->c, k->c.instances, k->c.num_instances, &k->lb), 0);
}

static struct polis_str S(const char *s) {
    return (struct polis_str){s, strlen(s)};
}

static const struct polis_str NOKEY = {"", 0};

/* ---- Round-robin --------------------------------------------------------------------------- */

static void test_round_robin(void **state)
{
    (void)state;
    struct cluster k;
    uint32_t w[] = {5, 1, 1}; /* ignored */
    cluster_init(&k, POLIS_LB_ROUND_ROBIN, 3, w);
    struct polis_lb_state *st = polis__lb_state_new(k.lb, 0);
    assert_non_null(st);
    for (int i = 0; i < 30; i++) {
        size_t got = polis__lb_pick(k.lb, st, S("key is ignored"));
        assert_int_equal(got, (size_t)(i % 3));
        polis__lb_done(st, got);
    }
    polis__lb_state_free(st);

    /* Another worker starts elsewhere in the cycle, then goes round the same way. */
    st = polis__lb_state_new(k.lb, 4);
    for (int i = 0; i < 9; i++)
        assert_int_equal(polis__lb_pick(k.lb, st, NOKEY), (size_t)((i + 1) % 3));
    polis__lb_state_free(st);
    polis__lb_free(k.lb);

    cluster_init(&k, POLIS_LB_ROUND_ROBIN, 1, NULL);
    st = polis__lb_state_new(k.lb, 77);
    for (int i = 0; i < 5; i++)
        assert_int_equal(polis__lb_pick(k.lb, st, NOKEY), 0);
    polis__lb_state_free(st);
    polis__lb_free(k.lb);
}

/* ---- Smooth weighted round-robin ----------------------------------------------------------- */

static void test_weighted_sequence(void **state)
{
    (void)state;
    struct cluster k;
    uint32_t w[] = {5, 1, 1};
    cluster_init(&k, POLIS_LB_WEIGHTED, 3, w);
    struct polis_lb_state *st = polis__lb_state_new(k.lb, 0);
    /* nginx's sequence for {5, 1, 1}: a a b a c a a, every cycle. */
    static const size_t want[] = {0, 0, 1, 0, 2, 0, 0};
    for (int i = 0; i < 70; i++)
        assert_int_equal(polis__lb_pick(k.lb, st, NOKEY), want[i % 7]);
    polis__lb_state_free(st);

    /* Any worker, any window of 7 consecutive picks: exactly 5, 1, 1. (Runs of a are at most 2
     * inside a cycle, but cycles meet as "a a | a a": that is nginx's algorithm.) */
    for (uint64_t seed = 1; seed < 20; seed++) {
        st = polis__lb_state_new(k.lb, seed);
        size_t seq[700];
        for (int i = 0; i < 700; i++)
            seq[i] = polis__lb_pick(k.lb, st, NOKEY);
        for (int i = 0; i + 7 <= 700; i++) {
            int cnt[3] = {0};
            for (int j = 0; j < 7; j++)
                cnt[seq[i + j]]++;
            assert_int_equal(cnt[0], 5);
            assert_int_equal(cnt[1], 1);
            assert_int_equal(cnt[2], 1);
        }
        for (int i = 0; i + 5 <= 700; i++)
            assert_false(seq[i] == 0 && seq[i + 1] == 0 && seq[i + 2] == 0 && seq[i + 3] == 0 &&
                         seq[i + 4] == 0);
        polis__lb_state_free(st);
    }
    polis__lb_free(k.lb);
}

static void test_weighted_proportions(void **state)
{
    (void)state;
    struct cluster k;
    uint32_t w[] = {3, 7, 1, 10, 4};
    uint32_t total = 25;
    cluster_init(&k, POLIS_LB_WEIGHTED, 5, w);
    struct polis_lb_state *st = polis__lb_state_new(k.lb, 3);
    for (int cycle = 0; cycle < 20; cycle++) {
        uint32_t cnt[5] = {0};
        size_t prev = SIZE_MAX;
        int repeats = 0;
        for (uint32_t i = 0; i < total; i++) {
            size_t got = polis__lb_pick(k.lb, st, NOKEY);
            cnt[got]++;
            repeats += got == prev;
            prev = got;
        }
        for (int i = 0; i < 5; i++)
            assert_int_equal(cnt[i], w[i]);
        /* Interleaved: the heaviest (10 of 25) never needs to run twice in a row. */
        assert_true(repeats <= 2);
    }
    polis__lb_state_free(st);
    polis__lb_free(k.lb);

    /* Equal weights: plain round-robin. */
    cluster_init(&k, POLIS_LB_WEIGHTED, 4, NULL);
    st = polis__lb_state_new(k.lb, 0);
    for (int i = 0; i < 12; i++)
        assert_int_equal(polis__lb_pick(k.lb, st, NOKEY), (size_t)(i % 4));
    polis__lb_state_free(st);
    polis__lb_free(k.lb);
}

/* ---- Least request ------------------------------------------------------------------------- */

static void test_least_request_idle_preferred(void **state)
{
    (void)state;
    struct cluster k;
    cluster_init(&k, POLIS_LB_LEAST_REQUEST, 2, NULL);
    struct polis_lb_state *st = polis__lb_state_new(k.lb, 42);
    for (int round = 0; round < 50; round++) {
        size_t busy = polis__lb_pick(k.lb, st, NOKEY); /* stays active */
        for (int i = 0; i < 5; i++) {
            size_t got = polis__lb_pick(k.lb, st, NOKEY);
            assert_int_not_equal(got, busy);
            polis__lb_done(st, got);
        }
        polis__lb_done(st, busy);
    }
    polis__lb_state_free(st);
    polis__lb_free(k.lb);

    /* Five instances: one has a request in flight, it is never chosen over an idle one. */
    cluster_init(&k, POLIS_LB_LEAST_REQUEST, 5, NULL);
    st = polis__lb_state_new(k.lb, 7);
    size_t busy = polis__lb_pick(k.lb, st, NOKEY);
    int cnt[5] = {0};
    for (int i = 0; i < 5000; i++) {
        size_t got = polis__lb_pick(k.lb, st, NOKEY);
        cnt[got]++;
        polis__lb_done(st, got);
    }
    assert_int_equal(cnt[busy], 0);
    for (int i = 0; i < 5; i++)
        if ((size_t)i != busy)
            assert_true(cnt[i] > 1000 && cnt[i] < 1500);
    /* Once it is done it is chosen again. */
    polis__lb_done(st, busy);
    polis__lb_done(st, busy); /* a spurious extra done does not make it "less than idle" */
    memset(cnt, 0, sizeof(cnt));
    for (int i = 0; i < 5000; i++) {
        size_t got = polis__lb_pick(k.lb, st, NOKEY);
        cnt[got]++;
        polis__lb_done(st, got);
    }
    for (int i = 0; i < 5; i++)
        assert_true(cnt[i] > 800 && cnt[i] < 1200);
    polis__lb_state_free(st);
    polis__lb_free(k.lb);
}

static void test_least_request_load(void **state)
{
    (void)state;
    struct cluster k;
    cluster_init(&k, POLIS_LB_LEAST_REQUEST, 4, NULL);
    struct polis_lb_state *st = polis__lb_state_new(k.lb, 1);
    /* Requests pile up without completing: power of two choices keeps the counts close. */
    int cnt[4] = {0};
    for (int i = 0; i < 400; i++)
        cnt[polis__lb_pick(k.lb, st, NOKEY)]++;
    for (int i = 0; i < 4; i++)
        assert_true(cnt[i] >= 97 && cnt[i] <= 103);
    polis__lb_state_free(st);

    /* Single instance. */
    polis__lb_free(k.lb);
    cluster_init(&k, POLIS_LB_LEAST_REQUEST, 1, NULL);
    st = polis__lb_state_new(k.lb, 1);
    for (int i = 0; i < 10; i++)
        assert_int_equal(polis__lb_pick(k.lb, st, NOKEY), 0);
    polis__lb_state_free(st);
    polis__lb_free(k.lb);

    /* Two instances, all idle: both are used, about evenly; seeds give different orders. */
    cluster_init(&k, POLIS_LB_LEAST_REQUEST, 2, NULL);
    struct polis_lb_state *s1 = polis__lb_state_new(k.lb, 1);
    struct polis_lb_state *s2 = polis__lb_state_new(k.lb, 2);
    int c1[2] = {0}, differ = 0;
    for (int i = 0; i < 10000; i++) {
        size_t a = polis__lb_pick(k.lb, s1, NOKEY), b = polis__lb_pick(k.lb, s2, NOKEY);
        c1[a]++;
        differ += a != b;
        polis__lb_done(s1, a);
        polis__lb_done(s2, b);
    }
    assert_true(c1[0] > 4500 && c1[0] < 5500);
    assert_true(differ > 4000);
    polis__lb_state_free(s1);
    polis__lb_state_free(s2);
    polis__lb_free(k.lb);

    /* Weights 3:1, idle: traffic follows the weights; under load, active per weight. */
    uint32_t w[] = {3, 1};
    cluster_init(&k, POLIS_LB_LEAST_REQUEST, 2, w);
    st = polis__lb_state_new(k.lb, 9);
    int c[2] = {0};
    for (int i = 0; i < 20000; i++) {
        size_t got = polis__lb_pick(k.lb, st, NOKEY);
        c[got]++;
        polis__lb_done(st, got);
    }
    assert_true(c[0] > 14000 && c[0] < 16000);
    c[0] = c[1] = 0;
    for (int i = 0; i < 400; i++)
        c[polis__lb_pick(k.lb, st, NOKEY)]++;
    assert_true(c[0] >= 297 && c[0] <= 303);
    polis__lb_state_free(st);
    polis__lb_free(k.lb);
}

/* ---- Consistent hashing -------------------------------------------------------------------- */

static struct polis_str key_of(char *buf, int i)
{
    int n = snprintf(buf, 32, "user-%d", i);
    return (struct polis_str){buf, (size_t)n};
}

static void test_hash_stable(void **state)
{
    (void)state;
    struct cluster k;
    cluster_init(&k, POLIS_LB_HASH, 4, NULL);
    struct polis_lb_state *s1 = polis__lb_state_new(k.lb, 1);
    struct polis_lb_state *s2 = polis__lb_state_new(k.lb, 99);
    /* A second balancer built from the same configuration agrees too. */
    struct polis_lb *lb2;
    assert_int_equal(polis__lb_new(&k.c, k.c.instances, k.c.num_instances, &lb2), 0);
    struct polis_lb_state *s3 = polis__lb_state_new(lb2, 5);
    char buf[32];
    for (int i = 0; i < 10000; i++) {
        struct polis_str key = key_of(buf, i);
        size_t a = polis__lb_pick(k.lb, s1, key);
        assert_true(a < 4);
        assert_int_equal(polis__lb_pick(k.lb, s1, key), a);
        assert_int_equal(polis__lb_pick(k.lb, s2, key), a);
        assert_int_equal(polis__lb_pick(lb2, s3, key), a);
    }
    /* An empty key falls back to round-robin. */
    size_t first = polis__lb_pick(k.lb, s1, NOKEY);
    for (int i = 1; i < 8; i++)
        assert_int_equal(polis__lb_pick(k.lb, s1, NOKEY), (first + (size_t)i) % 4);
    polis__lb_state_free(s1);
    polis__lb_state_free(s2);
    polis__lb_state_free(s3);
    polis__lb_free(lb2);
    polis__lb_free(k.lb);
}

static void test_hash_distribution(void **state)
{
    (void)state;
    struct cluster k;
    cluster_init(&k, POLIS_LB_HASH, 4, NULL);
    struct polis_lb_state *st = polis__lb_state_new(k.lb, 1);
    int cnt[4] = {0};
    char buf[32];
    for (int i = 0; i < 100000; i++)
        cnt[polis__lb_pick(k.lb, st, key_of(buf, i))]++;
    for (int i = 0; i < 4; i++) /* within 10% of 25000 */
        assert_true(cnt[i] >= 22500 && cnt[i] <= 27500);
    polis__lb_state_free(st);
    polis__lb_free(k.lb);

    uint32_t w[] = {3, 1};
    cluster_init(&k, POLIS_LB_HASH, 2, w);
    st = polis__lb_state_new(k.lb, 1);
    cnt[0] = cnt[1] = 0;
    for (int i = 0; i < 100000; i++)
        cnt[polis__lb_pick(k.lb, st, key_of(buf, i))]++;
    assert_true(cnt[0] >= 72000 && cnt[0] <= 78000);
    polis__lb_state_free(st);
    polis__lb_free(k.lb);
}

static void test_hash_removal(void **state)
{
    (void)state;
    /* Five instances, then the same without the third one: indexes shift, addresses do not. */
    struct cluster five, four;
    cluster_init(&five, POLIS_LB_HASH, 5, NULL);
    memset(&four, 0, sizeof(four));
    for (size_t i = 0, j = 0; i < 5; i++)
        if (i != 2)
            four.in[j++] = five.in[i];
    four.c = five.c;
    four.c.instances = four.in;
    four.c.num_instances = 4;
    assert_int_equal(polis__lb_new(&four.c, four.c.instances, four.c.num_instances, &four.lb), 0);
    struct polis_lb_state *s5 = polis__lb_state_new(five.lb, 1);
    struct polis_lb_state *s4 = polis__lb_state_new(four.lb, 1);
    char buf[32];
    int moved = 0, on_removed = 0;
    for (int i = 0; i < 50000; i++) {
        struct polis_str key = key_of(buf, i);
        size_t a = polis__lb_pick(five.lb, s5, key), b = polis__lb_pick(four.lb, s4, key);
        const char *ta = five.in[a].addr.text, *tb = four.in[b].addr.text;
        if (a == 2) {
            on_removed++;
            moved++;
        } else {
            assert_string_equal(ta, tb); /* only the keys of the removed instance move */
        }
    }
    assert_true(moved < 50000 / 4);
    assert_true(on_removed > 50000 / 5 * 8 / 10); /* and the removed one did hold its share */
    polis__lb_state_free(s5);
    polis__lb_state_free(s4);
    polis__lb_free(five.lb);
    polis__lb_free(four.lb);
}

static void test_hash_addition(void **state)
{
    (void)state;
    struct cluster k4, k5;
    cluster_init(&k4, POLIS_LB_HASH, 4, NULL);
    cluster_init(&k5, POLIS_LB_HASH, 5, NULL); /* the same four plus 10.0.0.5 */
    struct polis_lb_state *s4 = polis__lb_state_new(k4.lb, 1);
    struct polis_lb_state *s5 = polis__lb_state_new(k5.lb, 1);
    char buf[32];
    int moved = 0;
    for (int i = 0; i < 50000; i++) {
        struct polis_str key = key_of(buf, i);
        size_t a = polis__lb_pick(k4.lb, s4, key), b = polis__lb_pick(k5.lb, s5, key);
        if (a != b) {
            assert_int_equal(b, 4); /* keys only move to the new instance */
            moved++;
        }
    }
    assert_true(moved > 8000 && moved < 12000); /* about 1/5 */
    polis__lb_state_free(s4);
    polis__lb_state_free(s5);
    polis__lb_free(k4.lb);
    polis__lb_free(k5.lb);
}

static void test_hash_big_weights(void **state)
{
    (void)state;
    /* Past the point cap the ring is scaled down but stays proportional. */
    struct cluster k;
    uint32_t w[] = {10000, 10000, 5000, 1};
    cluster_init(&k, POLIS_LB_HASH, 4, w);
    struct polis_lb_state *st = polis__lb_state_new(k.lb, 1);
    int cnt[4] = {0};
    char buf[32];
    for (int i = 0; i < 100000; i++)
        cnt[polis__lb_pick(k.lb, st, key_of(buf, i))]++;
    assert_true(cnt[0] > 36000 && cnt[0] < 44000);
    assert_true(cnt[1] > 36000 && cnt[1] < 44000);
    assert_true(cnt[2] > 17000 && cnt[2] < 23000);
    assert_true(cnt[3] < 500);
    polis__lb_state_free(st);
    polis__lb_free(k.lb);
}

/* ---- Hashing key --------------------------------------------------------------------------- */

struct msg {
    struct polis_h1_msg m;
    struct polis_h1_header h[16];
};

static void msg_init(struct msg *x)
{
    memset(x, 0, sizeof(*x));
    x->m.headers = x->h;
    for (int i = 0; i < POLIS_HDR__COUNT; i++)
        x->m.hdr_index[i] = -1;
}

static void msg_add(struct msg *x, const char *name, const char *value, enum polis_h1_hdr id)
{
    size_t i = x->m.num_headers++;
    x->h[i].name = S(name);
    x->h[i].value = S(value);
    x->h[i].id = (uint8_t)id;
    if (id != POLIS_HDR_OTHER && x->m.hdr_index[id] < 0)
        x->m.hdr_index[id] = (int16_t)i;
}

static void assert_key(struct polis_str got, const char *want)
{
    if (got.len != strlen(want) || (got.len && memcmp(got.p, want, got.len) != 0))
        fail_msg("key '%.*s', want '%s'", (int)got.len, got.p ? got.p : "", want);
}

static void test_key(void **state)
{
    (void)state;
    struct polis_cluster_cfg c = {0};
    struct msg x;
    msg_init(&x);
    struct polis_str ip = S("192.0.2.7");

    c.hash_on = POLIS_HASH_CLIENT_IP;
    assert_key(polis__lb_key(&c, &x.m, ip), "192.0.2.7");

    c.hash_on = POLIS_HASH_HEADER;
    c.hash_key = "X-User";
    assert_key(polis__lb_key(&c, &x.m, ip), "");
    msg_add(&x, "Host", "h", POLIS_HDR_HOST);
    msg_add(&x, "x-user", "alice", POLIS_HDR_OTHER);
    msg_add(&x, "X-USER", "bob", POLIS_HDR_OTHER);
    assert_key(polis__lb_key(&c, &x.m, ip), "alice");
    c.hash_key = "X-Use";
    assert_key(polis__lb_key(&c, &x.m, ip), "");

    c.hash_on = POLIS_HASH_COOKIE;
    c.hash_key = "sid";
    assert_key(polis__lb_key(&c, &x.m, ip), "");
    msg_add(&x, "Cookie", "a=1; xsid=no; SID=no;sid2=no", POLIS_HDR_COOKIE);
    assert_key(polis__lb_key(&c, &x.m, ip), "");
    msg_add(&x, "cookie", "b=2;  sid = \"s-42\" ; c=3", POLIS_HDR_COOKIE);
    assert_key(polis__lb_key(&c, &x.m, ip), "s-42");
    msg_add(&x, "Cookie", "sid=later", POLIS_HDR_COOKIE);
    assert_key(polis__lb_key(&c, &x.m, ip), "s-42");

    msg_init(&x);
    msg_add(&x, "Cookie", "flag; sid=abc", POLIS_HDR_COOKIE);
    assert_key(polis__lb_key(&c, &x.m, ip), "abc");
    msg_init(&x);
    msg_add(&x, "Cookie", "sid=", POLIS_HDR_COOKIE);
    assert_key(polis__lb_key(&c, &x.m, ip), "");
    msg_init(&x);
    msg_add(&x, "Cookie", "sid=\"\"", POLIS_HDR_COOKIE);
    assert_key(polis__lb_key(&c, &x.m, ip), "");
    msg_init(&x);
    msg_add(&x, "Cookie", "sid=\"x", POLIS_HDR_COOKIE); /* unbalanced quote: kept as is */
    assert_key(polis__lb_key(&c, &x.m, ip), "\"x");
    msg_init(&x);
    msg_add(&x, "X-Other", "sid=1", POLIS_HDR_OTHER); /* not a Cookie header */
    assert_key(polis__lb_key(&c, &x.m, ip), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin),
        cmocka_unit_test(test_weighted_sequence),
        cmocka_unit_test(test_weighted_proportions),
        cmocka_unit_test(test_least_request_idle_preferred),
        cmocka_unit_test(test_least_request_load),
        cmocka_unit_test(test_hash_stable),
        cmocka_unit_test(test_hash_distribution),
        cmocka_unit_test(test_hash_removal),
        cmocka_unit_test(test_hash_addition),
        cmocka_unit_test(test_hash_big_weights),
        cmocka_unit_test(test_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
