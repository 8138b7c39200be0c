/* Unit tests of the circuit breaker (lib/resil/breaker.c): each transition, the count and time
 * windows, stale permits, property tests against a reference model, and threads hammering it. */
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

#include "resil/breaker.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static uint32_t rng_below(uint64_t *s, uint32_t n)
{
    return (uint32_t)(((rng_next(s) >> 32) * n) >> 32);
}

/* A count window of 10, judged from 4 calls, opening at 50% failures, 1 s open, 3 probes. */
static struct polis_breaker_cfg base_cfg(void)
{
    struct polis_breaker_cfg c = {
        .enabled = true,
        .window = POLIS_WINDOW_COUNT,
        .window_size = 10,
        .min_calls = 4,
        .failure_rate = 50,
        .slow_call_rate = 0,
        .slow_call_ms = 100,
        .consecutive_failures = 0,
        .open_ms = 1000,
        .half_open_calls = 3,
    };
    return c;
}

static struct polis_breaker *mk(const struct polis_breaker_cfg *c)
{
    struct polis_breaker *b = NULL;
    assert_int_equal(polis__breaker_new(c, &b), 0);
    assert_non_null(b);
    return b;
}

/* One whole call at now: acquire (must be granted), release with outcome o and duration d. */
static void call(struct polis_breaker *b, uint64_t now, enum polis_call_outcome o, uint64_t d)
{
    struct polis_breaker_permit p;
    uint64_t ra = 0;
    assert_true(polis__breaker_acquire(b, now, &p, &ra));
    polis__breaker_release(b, &p, o, d, now);
}

static enum polis_breaker_state st(struct polis_breaker *b, uint64_t now)
{
    return polis__breaker_state(b, now);
}

/* ---- Unit cases ---------------------------------------------------------------------------- */

static void test_new_rejects(void **state)
{
    (void)state;
    struct polis_breaker *b = NULL;
    struct polis_breaker_cfg c = base_cfg();
    c.window_size = 0;
    assert_int_equal(polis__breaker_new(&c, &b), POLIS_EINVAL);
    c = base_cfg();
    c.half_open_calls = 0;
    assert_int_equal(polis__breaker_new(&c, &b), POLIS_EINVAL);
    c = base_cfg();
    c.failure_rate = 101;
    assert_int_equal(polis__breaker_new(&c, &b), POLIS_EINVAL);
    c = base_cfg();
    c.slow_call_rate = 101;
    assert_int_equal(polis__breaker_new(&c, &b), POLIS_EINVAL);
    c = base_cfg();
    c.window = POLIS_WINDOW_TIME;
    c.window_size = POLIS_BREAKER_MAX_TIME_WINDOW + 1;
    assert_int_equal(polis__breaker_new(&c, &b), POLIS_EINVAL);
    c.window_size = POLIS_BREAKER_MAX_TIME_WINDOW;
    assert_int_equal(polis__breaker_new(&c, &b), 0);
    polis__breaker_free(b);
    polis__breaker_free(NULL);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(polis__breaker_state_name(POLIS_BREAKER_CLOSED), "closed");
    assert_string_equal(polis__breaker_state_name(POLIS_BREAKER_OPEN), "open");
    assert_string_equal(polis__breaker_state_name(POLIS_BREAKER_HALF_OPEN), "half_open");
    assert_string_equal(polis__breaker_state_name((enum polis_breaker_state)42), "unknown");
}

static void test_min_calls(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    struct polis_breaker *b = mk(&c);
    for (int i = 0; i < 3; i++)
        call(b, 10, POLIS_OUTCOME_FAILURE, 1);
    assert_int_equal(st(b, 10), POLIS_BREAKER_CLOSED); /* 100% failures, but 3 < 4 calls */
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 10, &s);
    assert_int_equal(s.calls, 3);
    assert_int_equal(s.failures, 3);
    assert_true(s.failure_rate > 99.9);
    call(b, 10, POLIS_OUTCOME_FAILURE, 1);
    assert_int_equal(st(b, 10), POLIS_BREAKER_OPEN);
    polis__breaker_free(b);
}

static void test_failure_rate_boundary(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    struct polis_breaker *b = mk(&c);
    /* 2 of 5 = 40% < 50%: closed. */
    call(b, 0, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 0, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 0, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    assert_int_equal(st(b, 0), POLIS_BREAKER_CLOSED);
    /* 3 of 6 = 50% >= 50%: open. */
    call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    assert_int_equal(st(b, 0), POLIS_BREAKER_OPEN);
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 0, &s);
    assert_int_equal(s.times_opened, 1);
    assert_int_equal(s.calls, 6); /* the window that opened it */
    assert_int_equal(s.failures, 3);
    assert_int_equal(s.ms_until_half_open, 1000);
    polis__breaker_free(b);
}

static void test_rate_off(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.failure_rate = 0;
    struct polis_breaker *b = mk(&c);
    for (int i = 0; i < 50; i++)
        call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    assert_int_equal(st(b, 0), POLIS_BREAKER_CLOSED);
    polis__breaker_free(b);
}

static void test_count_window_slides(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.window_size = 4;
    c.min_calls = 4;
    c.failure_rate = 75;
    struct polis_breaker *b = mk(&c);
    call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    call(b, 0, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 0, POLIS_OUTCOME_SUCCESS, 1); /* F F S S: 50% */
    call(b, 0, POLIS_OUTCOME_SUCCESS, 1); /* F S S S: 25% */
    call(b, 0, POLIS_OUTCOME_FAILURE, 1); /* S S S F: 25% */
    call(b, 0, POLIS_OUTCOME_FAILURE, 1); /* S S F F */
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 0, &s);
    assert_int_equal(s.calls, 4);
    assert_int_equal(s.failures, 2);
    assert_int_equal(st(b, 0), POLIS_BREAKER_CLOSED);
    call(b, 0, POLIS_OUTCOME_FAILURE, 1); /* S F F F: 75% */
    assert_int_equal(st(b, 0), POLIS_BREAKER_OPEN);
    polis__breaker_free(b);
}

static void test_slow_rate(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.failure_rate = 0;
    c.slow_call_rate = 50;
    c.slow_call_ms = 100;
    struct polis_breaker *b = mk(&c);
    call(b, 0, POLIS_OUTCOME_SUCCESS, 100); /* not slow: exactly the limit */
    call(b, 0, POLIS_OUTCOME_SUCCESS, 101);
    call(b, 0, POLIS_OUTCOME_SUCCESS, 5);
    assert_int_equal(st(b, 0), POLIS_BREAKER_CLOSED);
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 0, &s);
    assert_int_equal(s.slow_calls, 1);
    call(b, 0, POLIS_OUTCOME_FAILURE, 500); /* a slow failure is slow too: 2 of 4 */
    assert_int_equal(st(b, 0), POLIS_BREAKER_OPEN);
    polis__breaker_free(b);
}

static void test_consecutive(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.failure_rate = 0;
    c.consecutive_failures = 3;
    c.min_calls = 100;
    struct polis_breaker *b = mk(&c);
    call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    call(b, 0, POLIS_OUTCOME_SUCCESS, 1); /* resets */
    call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    struct polis_breaker_permit p;
    assert_true(polis__breaker_acquire(b, 0, &p, NULL));
    polis__breaker_release(b, &p, POLIS_OUTCOME_CANCELLED, 1, 0); /* not counted, no reset */
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 0, &s);
    assert_int_equal(s.consecutive_failures, 2);
    assert_int_equal(st(b, 0), POLIS_BREAKER_CLOSED);
    call(b, 0, POLIS_OUTCOME_FAILURE, 1); /* 3 in a row, min_calls does not apply */
    assert_int_equal(st(b, 0), POLIS_BREAKER_OPEN);
    polis__breaker_free(b);
}

/* Open the base breaker at time t (four failures). */
static struct polis_breaker *opened_at(const struct polis_breaker_cfg *c, uint64_t t)
{
    struct polis_breaker *b = mk(c);
    for (uint32_t i = 0; i < c->min_calls; i++)
        call(b, t, POLIS_OUTCOME_FAILURE, 1);
    assert_int_equal(st(b, t), POLIS_BREAKER_OPEN);
    return b;
}

static void test_open_rejects_then_half_open(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    struct polis_breaker *b = opened_at(&c, 5000);
    struct polis_breaker_permit p;
    uint64_t ra = 0;
    assert_false(polis__breaker_acquire(b, 5000, &p, &ra));
    assert_int_equal(p.kind, POLIS_PERMIT_NONE);
    assert_int_equal(ra, 1000);
    assert_false(polis__breaker_acquire(b, 5999, &p, &ra));
    assert_int_equal(ra, 1);
    assert_int_equal(st(b, 5999), POLIS_BREAKER_OPEN);
    /* Time passed: the next acquire moves it to half-open and gets a probe. */
    struct polis_breaker_permit probes[3];
    for (int i = 0; i < 3; i++) {
        assert_true(polis__breaker_acquire(b, 6000, &probes[i], &ra));
        assert_int_equal(probes[i].kind, POLIS_PERMIT_HALF_OPEN);
    }
    assert_int_equal(st(b, 6000), POLIS_BREAKER_HALF_OPEN);
    assert_false(polis__breaker_acquire(b, 6000, &p, &ra)); /* exactly 3 */
    assert_int_equal(ra, POLIS_BREAKER_BUSY_RETRY_MS);
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 6000, &s);
    assert_int_equal(s.half_open_outstanding, 3);
    /* All succeed: closed, window reset. */
    for (int i = 0; i < 3; i++)
        polis__breaker_release(b, &probes[i], POLIS_OUTCOME_SUCCESS, 1, 6001);
    assert_int_equal(st(b, 6001), POLIS_BREAKER_CLOSED);
    polis__breaker_stats(b, 6001, &s);
    assert_int_equal(s.calls, 0);
    assert_int_equal(s.failures, 0);
    assert_int_equal(s.times_opened, 1);
    assert_true(polis__breaker_acquire(b, 6001, &p, &ra));
    assert_int_equal(p.kind, POLIS_PERMIT_CLOSED);
    polis__breaker_release(b, &p, POLIS_OUTCOME_SUCCESS, 1, 6001);
    polis__breaker_free(b);
}

static void test_state_moves_to_half_open(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    struct polis_breaker *b = opened_at(&c, 0);
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 400, &s);
    assert_int_equal(s.state, POLIS_BREAKER_OPEN);
    assert_int_equal(s.ms_until_half_open, 600);
    polis__breaker_stats(b, 1000, &s);
    assert_int_equal(s.state, POLIS_BREAKER_HALF_OPEN);
    assert_int_equal(s.ms_until_half_open, 0);
    assert_int_equal(s.half_open_outstanding, 0);
    polis__breaker_free(b);
}

static void test_half_open_failures_reopen(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg(); /* 50% of 3 probes: 2 failures decide */
    struct polis_breaker *b = opened_at(&c, 0);
    struct polis_breaker_permit p[3];
    for (int i = 0; i < 3; i++)
        assert_true(polis__breaker_acquire(b, 1000, &p[i], NULL));
    polis__breaker_release(b, &p[0], POLIS_OUTCOME_FAILURE, 1, 1001);
    assert_int_equal(st(b, 1001), POLIS_BREAKER_HALF_OPEN); /* 1 of 3 could still be 33% */
    polis__breaker_release(b, &p[1], POLIS_OUTCOME_FAILURE, 1, 1002);
    assert_int_equal(st(b, 1002), POLIS_BREAKER_OPEN); /* 2 of 3 >= 50% whatever the third */
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 1002, &s);
    assert_int_equal(s.times_opened, 2);
    assert_int_equal(s.ms_until_half_open, 1000);
    /* The third probe comes back late: a stale generation, ignored. */
    polis__breaker_release(b, &p[2], POLIS_OUTCOME_SUCCESS, 1, 1003);
    assert_int_equal(st(b, 1003), POLIS_BREAKER_OPEN);
    polis__breaker_free(b);
}

static void test_half_open_mixed_closes(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.half_open_calls = 4;
    struct polis_breaker *b = opened_at(&c, 0);
    /* 1 failure of 4 = 25% < 50%: closed once the four are counted. */
    call(b, 1000, POLIS_OUTCOME_FAILURE, 1);
    call(b, 1000, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 1000, POLIS_OUTCOME_SUCCESS, 1);
    assert_int_equal(st(b, 1000), POLIS_BREAKER_HALF_OPEN);
    call(b, 1000, POLIS_OUTCOME_SUCCESS, 1);
    assert_int_equal(st(b, 1000), POLIS_BREAKER_CLOSED);
    polis__breaker_free(b);
}

static void test_half_open_consecutive_only(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.failure_rate = 0;
    c.consecutive_failures = 4;
    struct polis_breaker *b = opened_at(&c, 0);
    call(b, 1000, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 1000, POLIS_OUTCOME_FAILURE, 1); /* one failed probe re-opens */
    assert_int_equal(st(b, 1000), POLIS_BREAKER_OPEN);
    polis__breaker_free(b);
}

static void test_half_open_slow_reopens(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.failure_rate = 0;
    c.slow_call_rate = 60;
    c.slow_call_ms = 10;
    c.half_open_calls = 5;
    struct polis_breaker *b = mk(&c);
    for (int i = 0; i < 4; i++)
        call(b, 0, POLIS_OUTCOME_SUCCESS, 50);
    assert_int_equal(st(b, 0), POLIS_BREAKER_OPEN);
    call(b, 1000, POLIS_OUTCOME_SUCCESS, 50);
    call(b, 1000, POLIS_OUTCOME_FAILURE, 1); /* failures are not judged: rate off */
    call(b, 1000, POLIS_OUTCOME_SUCCESS, 50);
    assert_int_equal(st(b, 1000), POLIS_BREAKER_HALF_OPEN); /* 2 of 5 slow */
    call(b, 1000, POLIS_OUTCOME_SUCCESS, 50);               /* 3 of 5 = 60% */
    assert_int_equal(st(b, 1000), POLIS_BREAKER_OPEN);
    polis__breaker_free(b);
}

static void test_half_open_cancel_returns_permit(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.half_open_calls = 1;
    struct polis_breaker *b = opened_at(&c, 0);
    struct polis_breaker_permit p, q;
    assert_true(polis__breaker_acquire(b, 1000, &p, NULL));
    assert_false(polis__breaker_acquire(b, 1000, &q, NULL));
    polis__breaker_release(b, &p, POLIS_OUTCOME_CANCELLED, 1, 1000);
    assert_int_equal(p.kind, POLIS_PERMIT_NONE);
    assert_int_equal(st(b, 1000), POLIS_BREAKER_HALF_OPEN);
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 1000, &s);
    assert_int_equal(s.half_open_outstanding, 0);
    assert_int_equal(s.calls, 0);
    assert_true(polis__breaker_acquire(b, 1000, &q, NULL)); /* handed out again */
    polis__breaker_release(b, &q, POLIS_OUTCOME_SUCCESS, 1, 1000);
    assert_int_equal(st(b, 1000), POLIS_BREAKER_CLOSED);
    polis__breaker_free(b);
}

static void test_double_release_is_noop(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.half_open_calls = 2;
    struct polis_breaker *b = opened_at(&c, 0);
    struct polis_breaker_permit p, copy;
    assert_true(polis__breaker_acquire(b, 1000, &p, NULL));
    copy = p;
    polis__breaker_release(b, &p, POLIS_OUTCOME_SUCCESS, 1, 1000);
    polis__breaker_release(b, &p, POLIS_OUTCOME_SUCCESS, 1, 1000); /* cleared: nothing */
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 1000, &s);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.half_open_outstanding, 0);
    assert_int_equal(st(b, 1000), POLIS_BREAKER_HALF_OPEN);
    (void)copy;
    polis__breaker_free(b);
}

static void test_stale_closed_permit(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    struct polis_breaker *b = mk(&c);
    struct polis_breaker_permit late;
    assert_true(polis__breaker_acquire(b, 0, &late, NULL)); /* generation 0, closed */
    for (int i = 0; i < 4; i++)
        call(b, 0, POLIS_OUTCOME_FAILURE, 1);
    assert_int_equal(st(b, 0), POLIS_BREAKER_OPEN);
    struct polis_breaker_permit p[3];
    for (int i = 0; i < 3; i++)
        assert_true(polis__breaker_acquire(b, 1000, &p[i], NULL));
    /* The closed call ends now: it must not count as a probe nor free a probe slot. */
    polis__breaker_release(b, &late, POLIS_OUTCOME_FAILURE, 1, 1000);
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 1000, &s);
    assert_int_equal(s.state, POLIS_BREAKER_HALF_OPEN);
    assert_int_equal(s.calls, 0);
    assert_int_equal(s.half_open_outstanding, 3);
    struct polis_breaker_permit q;
    assert_false(polis__breaker_acquire(b, 1000, &q, NULL));
    for (int i = 0; i < 3; i++)
        polis__breaker_release(b, &p[i], POLIS_OUTCOME_SUCCESS, 1, 1000);
    assert_int_equal(st(b, 1000), POLIS_BREAKER_CLOSED);
    polis__breaker_free(b);
}

static void test_stale_half_open_permit(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.half_open_calls = 2;
    c.failure_rate = 50;
    struct polis_breaker *b = opened_at(&c, 0);
    struct polis_breaker_permit a, x;
    assert_true(polis__breaker_acquire(b, 1000, &a, NULL));
    assert_true(polis__breaker_acquire(b, 1000, &x, NULL));
    polis__breaker_release(b, &x, POLIS_OUTCOME_FAILURE, 1, 1000); /* 1 of 2: re-open */
    assert_int_equal(st(b, 1000), POLIS_BREAKER_OPEN);
    /* Next half-open round; the old probe a comes back in the middle of it. */
    struct polis_breaker_permit n1, n2;
    assert_true(polis__breaker_acquire(b, 2000, &n1, NULL));
    assert_true(polis__breaker_acquire(b, 2000, &n2, NULL));
    polis__breaker_release(b, &a, POLIS_OUTCOME_SUCCESS, 1, 2000);
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 2000, &s);
    assert_int_equal(s.half_open_outstanding, 2);
    assert_int_equal(s.calls, 0);
    polis__breaker_release(b, &n1, POLIS_OUTCOME_SUCCESS, 1, 2000);
    polis__breaker_release(b, &n2, POLIS_OUTCOME_SUCCESS, 1, 2000);
    assert_int_equal(st(b, 2000), POLIS_BREAKER_CLOSED);
    polis__breaker_free(b);
}

static void test_time_window(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.window = POLIS_WINDOW_TIME;
    c.window_size = 3; /* seconds */
    c.min_calls = 4;
    c.failure_rate = 50;
    struct polis_breaker *b = mk(&c);
    call(b, 10000, POLIS_OUTCOME_FAILURE, 1); /* second 10 */
    call(b, 10999, POLIS_OUTCOME_FAILURE, 1);
    call(b, 11500, POLIS_OUTCOME_FAILURE, 1); /* second 11 */
    struct polis_breaker_stats s;
    polis__breaker_stats(b, 12999, &s); /* window: seconds 10..12 */
    assert_int_equal(s.calls, 3);
    polis__breaker_stats(b, 13000, &s); /* 11..13: second 10 left */
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.failures, 1);
    call(b, 13000, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 13001, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 13002, POLIS_OUTCOME_SUCCESS, 1); /* 4 calls, 1 failure */
    assert_int_equal(st(b, 13002), POLIS_BREAKER_CLOSED);
    /* A thread whose clock lags: second 11 still counts, second 10 is gone. */
    call(b, 11000, POLIS_OUTCOME_FAILURE, 1);
    call(b, 10500, POLIS_OUTCOME_FAILURE, 1);
    polis__breaker_stats(b, 13002, &s);
    assert_int_equal(s.calls, 5);
    assert_int_equal(s.failures, 2);
    assert_int_equal(st(b, 13002), POLIS_BREAKER_CLOSED);
    call(b, 13003, POLIS_OUTCOME_FAILURE, 1); /* 3 of 6 */
    assert_int_equal(st(b, 13003), POLIS_BREAKER_OPEN);
    /* A long quiet period empties the window entirely. */
    call(b, 14003, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 14003, POLIS_OUTCOME_SUCCESS, 1);
    call(b, 14003, POLIS_OUTCOME_SUCCESS, 1); /* closed again, window reset */
    call(b, 14003, POLIS_OUTCOME_FAILURE, 1);
    polis__breaker_stats(b, 99000, &s);
    assert_int_equal(s.state, POLIS_BREAKER_CLOSED);
    assert_int_equal(s.calls, 0);
    polis__breaker_free(b);
}

static void test_open_ms_overflow(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.open_ms = UINT64_MAX;
    struct polis_breaker *b = opened_at(&c, 5);
    struct polis_breaker_permit p;
    uint64_t ra = 0;
    assert_false(polis__breaker_acquire(b, UINT64_MAX - 1, &p, &ra));
    assert_int_equal(ra, 1);
    polis__breaker_free(b);
}

/* ---- Property tests against a reference model ---------------------------------------------- */

#define MAXREC 4096
#define MAXOUT 48

/* The specification, written plainly: every record since the window was reset is kept and the
 * window is recomputed from them on each call. */
struct model {
    struct polis_breaker_cfg c;
    enum polis_breaker_state state;
    uint32_t gen;
    uint64_t open_until;
    struct {
        uint64_t sec;
        bool fail, slow;
    } rec[MAXREC];
    size_t nrec;
    uint32_t consecutive;
    uint32_t ho_out, ho_ok, ho_fail, ho_slow;
    uint64_t times_opened;
};

struct held {
    struct polis_breaker_permit p;
    uint32_t mgen;
    int mkind;
};

static void model_window(const struct model *m, uint64_t now, uint64_t *calls, uint64_t *fails,
                         uint64_t *slows)
{
    *calls = *fails = *slows = 0;
    for (size_t i = 0; i < m->nrec; i++) {
        size_t idx = m->nrec - 1 - i;
        if (m->c.window == POLIS_WINDOW_COUNT) {
            if (i >= m->c.window_size)
                break;
        } else if (m->rec[idx].sec + m->c.window_size <= now / 1000) {
            continue;
        }
        (*calls)++;
        *fails += m->rec[idx].fail;
        *slows += m->rec[idx].slow;
    }
}

static void model_to(struct model *m, enum polis_breaker_state s, uint64_t now)
{
    m->gen++;
    m->state = s;
    if (s == POLIS_BREAKER_OPEN) {
        m->open_until = now + m->c.open_ms;
        m->times_opened++;
    } else if (s == POLIS_BREAKER_HALF_OPEN) {
        m->ho_out = m->ho_ok = m->ho_fail = m->ho_slow = 0;
    } else {
        m->nrec = 0;
        m->consecutive = 0;
    }
}

static void model_lazy(struct model *m, uint64_t now)
{
    if (m->state == POLIS_BREAKER_OPEN && now >= m->open_until)
        model_to(m, POLIS_BREAKER_HALF_OPEN, now);
}

static bool model_acquire(struct model *m, uint64_t now, int *kind, uint64_t *ra)
{
    model_lazy(m, now);
    if (m->state == POLIS_BREAKER_CLOSED) {
        *kind = POLIS_PERMIT_CLOSED;
        return true;
    }
    if (m->state == POLIS_BREAKER_OPEN) {
        *ra = m->open_until - now;
        return false;
    }
    if (m->ho_out + m->ho_ok + m->ho_fail < m->c.half_open_calls) {
        m->ho_out++;
        *kind = POLIS_PERMIT_HALF_OPEN;
        return true;
    }
    *ra = POLIS_BREAKER_BUSY_RETRY_MS;
    return false;
}

static bool pct(uint32_t thr, uint64_t part, uint64_t all)
{
    return thr > 0 && all > 0 && part * 100 >= (uint64_t)thr * all;
}

static void model_release(struct model *m, const struct held *h, enum polis_call_outcome o,
                          uint64_t dur, uint64_t now)
{
    if (h->mgen != m->gen)
        return;
    bool fail = o == POLIS_OUTCOME_FAILURE, slow = dur > m->c.slow_call_ms;
    if (m->state == POLIS_BREAKER_CLOSED) {
        if (o == POLIS_OUTCOME_CANCELLED)
            return;
        m->consecutive = fail ? m->consecutive + 1 : 0;
        if (m->nrec == MAXREC) { /* keep the newest: enough for every window in these tests */
            memmove(m->rec, m->rec + MAXREC / 2, (MAXREC / 2) * sizeof(m->rec[0]));
            m->nrec = MAXREC / 2;
        }
        m->rec[m->nrec].sec = now / 1000;
        m->rec[m->nrec].fail = fail;
        m->rec[m->nrec].slow = slow;
        m->nrec++;
        uint64_t calls, fails, slows;
        model_window(m, now, &calls, &fails, &slows);
        uint64_t min = m->c.min_calls ? m->c.min_calls : 1;
        bool trip = (m->c.consecutive_failures && m->consecutive >= m->c.consecutive_failures) ||
                    (calls >= min && (pct(m->c.failure_rate, fails, calls) ||
                                      pct(m->c.slow_call_rate, slows, calls)));
        if (trip)
            model_to(m, POLIS_BREAKER_OPEN, now);
        return;
    }
    assert_int_equal(m->state, POLIS_BREAKER_HALF_OPEN);
    m->ho_out--;
    if (o == POLIS_OUTCOME_CANCELLED)
        return;
    if (fail)
        m->ho_fail++;
    else
        m->ho_ok++;
    m->ho_slow += slow;
    uint32_t h3 = m->c.half_open_calls;
    bool ftrip = m->c.failure_rate ? pct(m->c.failure_rate, m->ho_fail, h3)
                                   : (m->c.consecutive_failures && m->ho_fail > 0);
    if (ftrip || pct(m->c.slow_call_rate, m->ho_slow, h3))
        model_to(m, POLIS_BREAKER_OPEN, now);
    else if (m->ho_ok + m->ho_fail == h3)
        model_to(m, POLIS_BREAKER_CLOSED, now);
}

/* Compare the breaker with the model at now (stats moves both from open to half-open alike). */
static void check(struct polis_breaker *b, struct model *m, uint64_t now)
{
    struct polis_breaker_stats s;
    polis__breaker_stats(b, now, &s);
    model_lazy(m, now);
    assert_int_equal(s.state, m->state);
    assert_int_equal(s.times_opened, m->times_opened);
    assert_true(s.half_open_outstanding <= m->c.half_open_calls);
    if (m->state == POLIS_BREAKER_HALF_OPEN) {
        assert_int_equal(s.half_open_outstanding, m->ho_out);
        assert_int_equal(s.calls, m->ho_ok + m->ho_fail);
        assert_int_equal(s.failures, m->ho_fail);
        assert_int_equal(s.slow_calls, m->ho_slow);
    } else {
        assert_int_equal(s.half_open_outstanding, 0);
        if (m->state == POLIS_BREAKER_CLOSED) {
            uint64_t calls, fails, slows;
            model_window(m, now, &calls, &fails, &slows);
            assert_int_equal(s.calls, calls);
            assert_int_equal(s.failures, fails);
            assert_int_equal(s.slow_calls, slows);
            assert_int_equal(s.consecutive_failures, m->consecutive);
        } else {
            assert_int_equal(s.ms_until_half_open, m->open_until - now);
        }
    }
}

static struct polis_breaker_cfg random_cfg(uint64_t *r)
{
    static const uint32_t rates[] = {0, 0, 1, 20, 34, 50, 50, 67, 100};
    struct polis_breaker_cfg c = {.enabled = true};
    c.window = rng_below(r, 2) ? POLIS_WINDOW_TIME : POLIS_WINDOW_COUNT;
    c.window_size = c.window == POLIS_WINDOW_TIME ? 1 + rng_below(r, 5) : 1 + rng_below(r, 20);
    c.min_calls = rng_below(r, 12);
    c.failure_rate = rates[rng_below(r, 9)];
    c.slow_call_rate = rng_below(r, 3) ? 0 : rates[rng_below(r, 9)];
    c.slow_call_ms = 100;
    c.consecutive_failures = rng_below(r, 3) ? 0 : 1 + rng_below(r, 5);
    c.open_ms = 1 + rng_below(r, 3000);
    c.half_open_calls = 1 + rng_below(r, 5);
    return c;
}

/* Give back every permit with a success, then drive the breaker to closed with successes. It
 * must get there: nothing may be stuck. */
static void drain_and_recover(struct polis_breaker *b, struct model *m, struct held *out,
                              size_t *nout, uint64_t *now)
{
    while (*nout > 0) {
        struct held *h = &out[--(*nout)];
        polis__breaker_release(b, &h->p, POLIS_OUTCOME_SUCCESS, 1, *now);
        model_release(m, h, POLIS_OUTCOME_SUCCESS, 1, *now);
        check(b, m, *now);
    }
    struct polis_breaker_stats s;
    polis__breaker_stats(b, *now, &s);
    assert_int_equal(s.half_open_outstanding, 0);
    for (int round = 0; round < 4 && st(b, *now) != POLIS_BREAKER_CLOSED; round++) {
        *now += m->c.open_ms;
        for (uint32_t i = 0; i < m->c.half_open_calls; i++)
            call(b, *now, POLIS_OUTCOME_SUCCESS, 1);
    }
    assert_int_equal(st(b, *now), POLIS_BREAKER_CLOSED);
}

static void run_sequence(uint64_t seed, int steps)
{
    uint64_t r = seed;
    struct model *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    m->c = random_cfg(&r);
    struct polis_breaker *b = mk(&m->c);
    struct held out[MAXOUT];
    size_t nout = 0;
    uint64_t now = 1000000 + rng_below(&r, 100000);
    bool check_after_time = rng_below(&r, 2); /* else acquire does the open -> half-open move */
    for (int i = 0; i < steps; i++) {
        uint32_t op = rng_below(&r, 100);
        if (op < 40 && nout < MAXOUT) {
            struct held h = {0};
            uint64_t ra = 0, mra = 0;
            enum polis_breaker_state before = m->state;
            bool open_not_due = before == POLIS_BREAKER_OPEN && now < m->open_until;
            bool got = polis__breaker_acquire(b, now, &h.p, &ra);
            bool mgot = model_acquire(m, now, &h.mkind, &mra);
            assert_int_equal(got, mgot);
            if (open_not_due)
                assert_false(got); /* open rejects until open_ms has passed */
            if (got) {
                assert_int_equal(h.p.kind, h.mkind);
                h.mgen = m->gen;
                out[nout++] = h;
            } else {
                assert_int_equal(h.p.kind, POLIS_PERMIT_NONE);
                assert_int_equal(ra, mra);
            }
        } else if (op < 80 && nout > 0) {
            size_t k = rng_below(&r, (uint32_t)nout);
            struct held h = out[k];
            out[k] = out[--nout];
            uint32_t oc = rng_below(&r, 10);
            enum polis_call_outcome o = oc < 5   ? POLIS_OUTCOME_SUCCESS
                                        : oc < 8 ? POLIS_OUTCOME_FAILURE
                                                 : POLIS_OUTCOME_CANCELLED;
            uint64_t dur = rng_below(&r, 200);
            struct polis_breaker_stats before;
            polis__breaker_stats(b, now, &before);
            model_lazy(m, now);
            polis__breaker_release(b, &h.p, o, dur, now);
            model_release(m, &h, o, dur, now);
            assert_int_equal(h.p.kind, POLIS_PERMIT_NONE);
            /* A closed breaker opened by fewer than min_calls calls: only consecutive failures
             * may do that. */
            if (before.state == POLIS_BREAKER_CLOSED && st(b, now) == POLIS_BREAKER_OPEN &&
                before.calls + 1 < m->c.min_calls)
                assert_true(m->c.consecutive_failures > 0 &&
                            before.consecutive_failures + 1 >= m->c.consecutive_failures);
        } else {
            now += rng_below(&r, 10) == 0 ? rng_below(&r, 5000) : rng_below(&r, 300);
            if (!check_after_time)
                continue;
        }
        check(b, m, now);
    }
    drain_and_recover(b, m, out, &nout, &now);
    polis__breaker_free(b);
    free(m);
}

static void test_property_sequences(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 3000; seed++)
        run_sequence(seed * 0x2545f4914f6cdd1dull, 400);
}

/* Many permits out, then all released with random outcomes: outstanding goes back to 0, and the
 * breaker always recovers. */
static void test_property_release_all(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 500; seed++) {
        uint64_t r = seed;
        struct model *m = calloc(1, sizeof(*m));
        assert_non_null(m);
        m->c = random_cfg(&r);
        struct polis_breaker *b = mk(&m->c);
        struct held out[MAXOUT];
        size_t nout = 0;
        uint64_t now = 50000;
        for (int round = 0; round < 20; round++) {
            while (nout < MAXOUT && rng_below(&r, 4) != 0) {
                struct held h = {0};
                uint64_t ra, mra;
                bool got = polis__breaker_acquire(b, now, &h.p, &ra);
                assert_int_equal(got, model_acquire(m, now, &h.mkind, &mra));
                if (!got)
                    break;
                h.mgen = m->gen;
                out[nout++] = h;
            }
            while (nout > 0) {
                size_t k = rng_below(&r, (uint32_t)nout);
                struct held h = out[k];
                out[k] = out[--nout];
                enum polis_call_outcome o = (enum polis_call_outcome)rng_below(&r, 3);
                polis__breaker_release(b, &h.p, o, 150, now);
                model_release(m, &h, o, 150, now);
            }
            struct polis_breaker_stats s;
            polis__breaker_stats(b, now, &s);
            assert_int_equal(s.half_open_outstanding, 0);
            check(b, m, now);
            now += rng_below(&r, 4000);
        }
        drain_and_recover(b, m, out, &nout, &now);
        polis__breaker_free(b);
        free(m);
    }
}

/* ---- Threads ------------------------------------------------------------------------------- */

#define THREADS 4
#define ITERS 200000

static _Atomic uint64_t clock_ms;
static _Atomic int thread_errors;
static _Atomic uint64_t granted_half_open;

struct worker {
    struct polis_breaker *b;
    const struct polis_breaker_cfg *c;
    uint64_t seed;
};

static void *hammer(void *arg)
{
    struct worker *w = arg;
    uint64_t r = w->seed;
    struct polis_breaker_permit held[4];
    size_t n = 0;
    for (int i = 0; i < ITERS; i++) {
        uint64_t now = atomic_fetch_add(&clock_ms, rng_below(&r, 3) == 0) + 1;
        uint32_t op = rng_below(&r, 8);
        if (op < 4 && n < 4) {
            uint64_t ra = 0;
            if (polis__breaker_acquire(w->b, now, &held[n], &ra)) {
                if (held[n].kind == POLIS_PERMIT_HALF_OPEN)
                    atomic_fetch_add(&granted_half_open, 1);
                n++;
            } else if (ra == 0) {
                atomic_fetch_add(&thread_errors, 1);
            }
        } else if (n > 0) {
            size_t k = rng_below(&r, (uint32_t)n);
            uint32_t oc = rng_below(&r, 10);
            enum polis_call_outcome o = oc < 5   ? POLIS_OUTCOME_SUCCESS
                                        : oc < 9 ? POLIS_OUTCOME_FAILURE
                                                 : POLIS_OUTCOME_CANCELLED;
            polis__breaker_release(w->b, &held[k], o, rng_below(&r, 20), now);
            if (held[k].kind != POLIS_PERMIT_NONE)
                atomic_fetch_add(&thread_errors, 1);
            held[k] = held[--n];
        }
        if ((i & 255) == 0) {
            struct polis_breaker_stats s;
            polis__breaker_stats(w->b, now, &s);
            if (s.half_open_outstanding > w->c->half_open_calls ||
                (s.state != POLIS_BREAKER_HALF_OPEN && s.half_open_outstanding != 0) ||
                s.failures > s.calls)
                atomic_fetch_add(&thread_errors, 1);
        }
    }
    while (n > 0)
        polis__breaker_release(w->b, &held[--n], POLIS_OUTCOME_FAILURE, 1, atomic_load(&clock_ms));
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    struct polis_breaker_cfg c = base_cfg();
    c.window_size = 20;
    c.min_calls = 10;
    c.failure_rate = 50;
    c.slow_call_rate = 80;
    c.slow_call_ms = 15;
    c.open_ms = 20;
    c.half_open_calls = 3;
    struct polis_breaker *b = mk(&c);
    atomic_store(&clock_ms, 1000);
    pthread_t t[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){b, &c, 0x1234567ull * (uint64_t)(i + 1)};
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&thread_errors), 0);
    struct polis_breaker_stats s;
    uint64_t now = atomic_load(&clock_ms);
    polis__breaker_stats(b, now, &s);
    assert_int_equal(s.half_open_outstanding, 0);
    assert_true(s.times_opened > 10); /* it did go round the states */
    assert_true(atomic_load(&granted_half_open) > 10);
    /* Not stuck: successes bring it back to closed. */
    for (int round = 0; round < 4 && st(b, now) != POLIS_BREAKER_CLOSED; round++) {
        now += c.open_ms;
        for (uint32_t i = 0; i < c.half_open_calls; i++)
            call(b, now, POLIS_OUTCOME_SUCCESS, 1);
    }
    assert_int_equal(st(b, now), POLIS_BREAKER_CLOSED);
    polis__breaker_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_rejects),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_min_calls),
        cmocka_unit_test(test_failure_rate_boundary),
        cmocka_unit_test(test_rate_off),
        cmocka_unit_test(test_count_window_slides),
        cmocka_unit_test(test_slow_rate),
        cmocka_unit_test(test_consecutive),
        cmocka_unit_test(test_open_rejects_then_half_open),
        cmocka_unit_test(test_state_moves_to_half_open),
        cmocka_unit_test(test_half_open_failures_reopen),
        cmocka_unit_test(test_half_open_mixed_closes),
        cmocka_unit_test(test_half_open_consecutive_only),
        cmocka_unit_test(test_half_open_slow_reopens),
        cmocka_unit_test(test_half_open_cancel_returns_permit),
        cmocka_unit_test(test_double_release_is_noop),
        cmocka_unit_test(test_stale_closed_permit),
        cmocka_unit_test(test_stale_half_open_permit),
        cmocka_unit_test(test_time_window),
        cmocka_unit_test(test_open_ms_overflow),
        cmocka_unit_test(test_property_sequences),
        cmocka_unit_test(test_property_release_all),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
