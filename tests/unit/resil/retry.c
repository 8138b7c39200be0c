/* Unit tests of retry pacing (lib/resil/retry.c): full-jitter backoff bounds, mean and overflow,
 * and the retry budget with its minimum and percentage, alone and under threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>

#include "resil/retry.h"

/* ---- Backoff ------------------------------------------------------------------------------- */

/* Draw n backoffs; check each is within [0, cap]; return the mean and whether 0 and cap were
 * both seen (small caps only). */
static double draws(uint64_t base, uint64_t max, unsigned retry_no, uint64_t cap, int n,
                    uint64_t *rng, bool *saw_ends)
{
    double sum = 0;
    bool lo = false, hi = false;
    for (int i = 0; i < n; i++) {
        uint64_t v = polis__backoff_ms(base, max, retry_no, rng);
        assert_true(v <= cap);
        lo |= v == 0;
        hi |= v == cap;
        sum += (double)v;
    }
    if (saw_ends)
        *saw_ends = lo && hi;
    return sum / n;
}

static void test_backoff_bounds_and_mean(void **state)
{
    (void)state;
    uint64_t rng = 42;
    /* base 25, max 250: caps 25, 50, 100, 200, then 250 for ever. */
    const uint64_t caps[] = {25, 50, 100, 200, 250, 250, 250};
    for (unsigned k = 1; k <= 7; k++) {
        bool ends;
        double mean = draws(25, 250, k, caps[k - 1], 200000, &rng, &ends);
        double want = (double)caps[k - 1] / 2;
        assert_true(mean > want * 0.98 && mean < want * 1.02);
        assert_true(ends); /* the interval is closed at both ends */
    }
    /* retry_no 0 is the first retry. */
    double mean = draws(25, 250, 0, 25, 100000, &rng, NULL);
    assert_true(mean > 12.5 * 0.98 && mean < 12.5 * 1.02);
}

static void test_backoff_uniform(void **state)
{
    (void)state;
    uint64_t rng = 7;
    int hist[10] = {0};
    const int n = 1000000;
    for (int i = 0; i < n; i++) {
        uint64_t v = polis__backoff_ms(9, 1000, 1, &rng);
        assert_true(v <= 9);
        hist[v]++;
    }
    for (int i = 0; i < 10; i++) /* 100000 expected each; 5 sigma is about 1500 */
        assert_true(hist[i] > 98000 && hist[i] < 102000);
}

static void test_backoff_overflow(void **state)
{
    (void)state;
    uint64_t rng = 99;
    const unsigned tries[] = {33, 63, 64, 65, 100, 1000, UINT_MAX};
    for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
        double mean = draws(25, 250, tries[i], 250, 20000, &rng, NULL);
        assert_true(mean > 120 && mean < 130);
    }
    /* A base near the top: the first doubling passes 64 bits. */
    (void)draws(UINT64_MAX / 2 + 1, UINT64_MAX - 5, 2, UINT64_MAX - 5, 1000, &rng, NULL);
    (void)draws(UINT64_MAX, UINT64_MAX, 1, UINT64_MAX, 1000, &rng, NULL);
    (void)draws(1, UINT64_MAX, 64, 1ull << 63, 1000, &rng, NULL);
    (void)draws(1, UINT64_MAX, 65, UINT64_MAX, 1000, &rng, NULL);
    /* Shifts that fit exactly. */
    (void)draws(3, 3ull << 61, 62, 3ull << 61, 1000, &rng, NULL);
    /* Nothing to wait for. */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(polis__backoff_ms(0, 250, 5, &rng), 0);
        assert_int_equal(polis__backoff_ms(25, 0, 5, &rng), 0);
    }
}

static void test_rng(void **state)
{
    (void)state;
    uint64_t a = 0, b = 0, c = 1;
    uint64_t x = polis__retry_rng_next(&a);
    assert_int_equal(x, polis__retry_rng_next(&b)); /* deterministic */
    assert_true(x != polis__retry_rng_next(&c));
    assert_true(x != polis__retry_rng_next(&a)); /* moves on */
    /* Bits are balanced. */
    uint64_t s = 5;
    int ones = 0;
    for (int i = 0; i < 10000; i++)
        ones += __builtin_popcountll(polis__retry_rng_next(&s));
    assert_true(ones > 320000 - 3000 && ones < 320000 + 3000);
}

/* ---- Budget -------------------------------------------------------------------------------- */

static void test_budget_min(void **state)
{
    (void)state;
    struct polis_retry_budget b;
    polis__budget_init(&b);
    /* No requests: the minimum still allows 3. */
    for (int i = 0; i < 3; i++)
        assert_true(polis__budget_retry_begin(&b, 20, 3));
    assert_false(polis__budget_retry_begin(&b, 20, 3));
    assert_int_equal(atomic_load(&b.active_retries), 3);
    polis__budget_retry_end(&b);
    assert_true(polis__budget_retry_begin(&b, 20, 3));
    for (int i = 0; i < 3; i++)
        polis__budget_retry_end(&b);
    assert_int_equal(atomic_load(&b.active_retries), 0);
    /* min 0 and no requests: nothing. */
    assert_false(polis__budget_retry_begin(&b, 20, 0));
}

static void test_budget_percent(void **state)
{
    (void)state;
    struct polis_retry_budget b;
    polis__budget_init(&b);
    for (int i = 0; i < 100; i++)
        polis__budget_request_begin(&b);
    int ok = 0;
    while (polis__budget_retry_begin(&b, 20, 3))
        ok++;
    assert_int_equal(ok, 20);
    /* 19 requests: 20% is 3.8, rounded down to 3 — but 20 retries are already out. */
    for (int i = 0; i < 81; i++)
        polis__budget_request_end(&b);
    assert_false(polis__budget_retry_begin(&b, 20, 3));
    for (int i = 0; i < 20; i++)
        polis__budget_retry_end(&b);
    ok = 0;
    while (polis__budget_retry_begin(&b, 20, 0))
        ok++;
    assert_int_equal(ok, 3);
    for (int i = 0; i < 3; i++)
        polis__budget_retry_end(&b);
    /* The minimum wins when larger: 19 * 20% = 3 < 5. */
    ok = 0;
    while (polis__budget_retry_begin(&b, 20, 5))
        ok++;
    assert_int_equal(ok, 5);
    for (int i = 0; i < 5; i++)
        polis__budget_retry_end(&b);
    /* 100 percent: as many retries as requests. */
    ok = 0;
    while (polis__budget_retry_begin(&b, 100, 0))
        ok++;
    assert_int_equal(ok, 19);
}

struct budget_arg {
    struct polis_retry_budget *b;
    _Atomic int *inside;
    _Atomic int *over;
};

static void *budget_hammer(void *arg)
{
    struct budget_arg *a = arg;
    for (int i = 0; i < 200000; i++) {
        if (polis__budget_retry_begin(a->b, 10, 1)) {
            /* 20 requests * 10%: never more than 2 counted, nor 2 inside at once. */
            if (atomic_load(&a->b->active_retries) > 2)
                atomic_fetch_add(a->over, 1);
            if (atomic_fetch_add(a->inside, 1) + 1 > 2)
                atomic_fetch_add(a->over, 1);
            atomic_fetch_sub(a->inside, 1);
            polis__budget_retry_end(a->b);
        }
    }
    return NULL;
}

static void test_budget_threads(void **state)
{
    (void)state;
    struct polis_retry_budget b;
    polis__budget_init(&b);
    for (int i = 0; i < 20; i++)
        polis__budget_request_begin(&b);
    _Atomic int inside = 0, over = 0;
    struct budget_arg a = {&b, &inside, &over};
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&t[i], NULL, budget_hammer, &a), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&over), 0);
    assert_int_equal(atomic_load(&b.active_retries), 0);
    assert_int_equal(atomic_load(&b.active_requests), 20);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_bounds_and_mean),
        cmocka_unit_test(test_backoff_uniform),
        cmocka_unit_test(test_backoff_overflow),
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_budget_min),
        cmocka_unit_test(test_budget_percent),
        cmocka_unit_test(test_budget_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
