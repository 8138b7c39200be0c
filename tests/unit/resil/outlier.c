/* Unit tests of passive outlier detection (lib/resil/outlier.c): thresholds per kind, resets,
 * ejection time growth, cap and decay, the cluster's share, and exactly-once returns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "resil/outlier.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

#define SEC 1000ull

static struct polis_outlier_cfg base_cfg(void)
{
    struct polis_outlier_cfg c = {
        .enabled = true,
        .consecutive_5xx = 5,
        .consecutive_gateway_errors = 3,
        .consecutive_connect_failures = 2,
        .base_ejection_ms = 30 * SEC,
        .max_ejection_ms = 300 * SEC,
        .max_ejection_percent = 50,
    };
    return c;
}

struct fixture {
    struct polis_outlier_cfg cfg;
    struct polis_outlier_cluster cl;
    struct polis_outlier_inst in[8];
};

static void fx_init(struct fixture *f, uint32_t total)
{
    f->cfg = base_cfg();
    polis__outlier_cluster_init(&f->cl, total);
    for (size_t i = 0; i < 8; i++)
        polis__outlier_inst_init(&f->in[i]);
}

/* Record kind k n times on instance i at now; returns how many of them ejected it. */
static int rec(struct fixture *f, int i, enum polis_call_kind k, int n, uint64_t now)
{
    int ej = 0;
    for (int j = 0; j < n; j++)
        ej += polis__outlier_record(&f->cfg, &f->cl, &f->in[i], k, now);
    return ej;
}

static bool ejected(struct fixture *f, int i, uint64_t now)
{
    return polis__outlier_ejected(&f->cl, &f->in[i], now);
}

/* ---- Thresholds ---------------------------------------------------------------------------- */

static void test_kind_of_status(void **state)
{
    (void)state;
    assert_int_equal(polis__outlier_kind_of_status(200), POLIS_CALL_OK);
    assert_int_equal(polis__outlier_kind_of_status(404), POLIS_CALL_OK);
    assert_int_equal(polis__outlier_kind_of_status(499), POLIS_CALL_OK);
    assert_int_equal(polis__outlier_kind_of_status(500), POLIS_CALL_5XX);
    assert_int_equal(polis__outlier_kind_of_status(501), POLIS_CALL_5XX);
    assert_int_equal(polis__outlier_kind_of_status(502), POLIS_CALL_GATEWAY_STATUS);
    assert_int_equal(polis__outlier_kind_of_status(503), POLIS_CALL_GATEWAY_STATUS);
    assert_int_equal(polis__outlier_kind_of_status(504), POLIS_CALL_GATEWAY_STATUS);
    assert_int_equal(polis__outlier_kind_of_status(505), POLIS_CALL_5XX);
    assert_int_equal(polis__outlier_kind_of_status(599), POLIS_CALL_5XX);
}

static void test_threshold_5xx(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    assert_int_equal(rec(&f, 0, POLIS_CALL_5XX, 4, 1000), 0);
    assert_false(ejected(&f, 0, 1000));
    assert_int_equal(rec(&f, 0, POLIS_CALL_5XX, 1, 1000), 1);
    assert_true(ejected(&f, 0, 1000));
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 1);
    assert_int_equal(polis__outlier_ejected_until(&f.in[0], 1000), 1000 + 30 * SEC);
    assert_int_equal(polis__outlier_ejections(&f.cfg, &f.in[0], 1000), 1);
    assert_int_equal(atomic_load(&f.in[0].times_ejected), 1);
}

static void test_threshold_gateway(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    /* 502/503/504, resets and timeouts are all gateway errors. */
    assert_int_equal(rec(&f, 0, POLIS_CALL_GATEWAY_STATUS, 1, 0), 0);
    assert_int_equal(rec(&f, 0, POLIS_CALL_RESET, 1, 0), 0);
    assert_int_equal(rec(&f, 0, POLIS_CALL_TIMEOUT, 1, 0), 1);
    assert_true(ejected(&f, 0, 0));
    /* A plain 5xx breaks a run of gateway errors (but counts for the 5xx run). */
    assert_int_equal(rec(&f, 1, POLIS_CALL_GATEWAY_STATUS, 2, 0), 0);
    assert_int_equal(rec(&f, 1, POLIS_CALL_5XX, 1, 0), 0);
    assert_int_equal(rec(&f, 1, POLIS_CALL_GATEWAY_STATUS, 1, 0), 0); /* gateway 1, 5xx 4 */
    assert_int_equal(atomic_load(&f.in[1].consecutive_gateway), 1);
    assert_int_equal(atomic_load(&f.in[1].consecutive_5xx), 4);
    assert_int_equal(rec(&f, 1, POLIS_CALL_5XX, 1, 0), 1); /* 5xx run of 5 */
}

static void test_threshold_connect(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    f.cfg.consecutive_gateway_errors = 0;
    f.cfg.consecutive_5xx = 0;
    /* A reset proves the connection was made: it breaks a run of connect failures. */
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 1, 0), 0);
    assert_int_equal(rec(&f, 0, POLIS_CALL_RESET, 1, 0), 0);
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 1, 0), 0);
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 1, 0), 1);
    assert_true(ejected(&f, 0, 0));
    /* Everything off: nothing ejects. */
    f.cfg.consecutive_connect_failures = 0;
    assert_int_equal(rec(&f, 1, POLIS_CALL_CONNECT, 50, 0), 0);
    assert_int_equal(rec(&f, 1, POLIS_CALL_5XX, 50, 0), 0);
    /* Connect failures count as gateway errors and 5xx too. */
    fx_init(&f, 10);
    f.cfg.consecutive_connect_failures = 0;
    assert_int_equal(rec(&f, 2, POLIS_CALL_CONNECT, 2, 0), 0);
    assert_int_equal(rec(&f, 2, POLIS_CALL_CONNECT, 1, 0), 1); /* gateway errors: 3 */
}

static void test_success_resets(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    assert_int_equal(rec(&f, 0, POLIS_CALL_5XX, 3, 0), 0);
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 1, 0), 0); /* 5xx 4, gateway 1, connect 1 */
    assert_int_equal(rec(&f, 0, POLIS_CALL_OK, 1, 0), 0);
    assert_int_equal(atomic_load(&f.in[0].consecutive_5xx), 0);
    assert_int_equal(atomic_load(&f.in[0].consecutive_gateway), 0);
    assert_int_equal(atomic_load(&f.in[0].consecutive_connect), 0);
    assert_int_equal(rec(&f, 0, POLIS_CALL_5XX, 3, 0), 0); /* without the reset: 5xx 8 */
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 1, 0), 0);
    assert_false(ejected(&f, 0, 0));
}

static void test_disabled(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    f.cfg.enabled = false;
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 100, 0), 0);
    assert_false(ejected(&f, 0, 0));
    assert_int_equal(atomic_load(&f.in[0].consecutive_connect), 0);
}

static void test_ignored_while_ejected(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 0), 1);
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 10, 1000), 0);
    assert_int_equal(atomic_load(&f.in[0].consecutive_connect), 0);
    assert_int_equal(atomic_load(&f.in[0].times_ejected), 1);
    /* Back in service: counts start from zero. */
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 1, 30 * SEC), 0);
    assert_false(ejected(&f, 0, 30 * SEC));
}

/* ---- Ejection time ------------------------------------------------------------------------- */

static void test_return_by_itself(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 5000), 1);
    assert_true(ejected(&f, 0, 5000 + 30 * SEC - 1));
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 1);
    assert_false(ejected(&f, 0, 5000 + 30 * SEC));
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 0);
    assert_false(ejected(&f, 0, 5000 + 30 * SEC));
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 0); /* dropped once only */
    assert_int_equal(polis__outlier_ejected_until(&f.in[0], 5000 + 30 * SEC), 0);
}

static void test_growth_and_cap(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    uint64_t now = 1000;
    /* Ejected again as soon as it is back: n = 1, 2, ... 10 (300 s), then capped. */
    for (uint32_t n = 1; n <= 13; n++) {
        assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, now), 1);
        uint64_t want = (n <= 10 ? n : 10) * 30 * SEC;
        assert_int_equal(polis__outlier_ejected_until(&f.in[0], now), now + want);
        assert_int_equal(polis__outlier_ejections(&f.cfg, &f.in[0], now), n <= 10 ? n : 10);
        now += want;
    }
    assert_int_equal(atomic_load(&f.in[0].times_ejected), 13);
    /* A max that is not a multiple of base: the last step is cut to the max. */
    fx_init(&f, 10);
    f.cfg.max_ejection_ms = 70 * SEC;
    now = 0;
    uint64_t want[] = {30 * SEC, 60 * SEC, 70 * SEC, 70 * SEC};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, now), 1);
        assert_int_equal(polis__outlier_ejected_until(&f.in[0], now), now + want[i]);
        now += want[i];
    }
    assert_int_equal(polis__outlier_ejections(&f.cfg, &f.in[0], now), 3);
}

static void test_decay(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    uint64_t now = 0;
    for (int n = 1; n <= 3; n++) { /* n = 3, ended at end */
        assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, now), 1);
        now = polis__outlier_ejected_until(&f.in[0], now);
    }
    uint64_t end = now;
    assert_int_equal(polis__outlier_ejections(&f.cfg, &f.in[0], end), 3);
    assert_int_equal(polis__outlier_ejections(&f.cfg, &f.in[0], end + 30 * SEC - 1), 3);
    assert_int_equal(polis__outlier_ejections(&f.cfg, &f.in[0], end + 30 * SEC), 2);
    assert_int_equal(polis__outlier_ejections(&f.cfg, &f.in[0], end + 89 * SEC), 1);
    assert_int_equal(polis__outlier_ejections(&f.cfg, &f.in[0], end + 90 * SEC), 0);
    assert_int_equal(polis__outlier_ejections(&f.cfg, &f.in[0], end + 9000 * SEC), 0);
    /* 59 s clean: one step of decay, n = 2 + 1 -> 90 s. */
    now = end + 59 * SEC;
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, now), 1);
    assert_int_equal(polis__outlier_ejected_until(&f.in[0], now), now + 90 * SEC);
    /* Long clean period: back to the first step. */
    now += 90 * SEC + 1000 * SEC;
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, now), 1);
    assert_int_equal(polis__outlier_ejected_until(&f.in[0], now), now + 30 * SEC);
}

/* ---- The cluster's share ------------------------------------------------------------------- */

static void test_max_percent(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 4); /* 50% of 4: two */
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 0), 1);
    assert_int_equal(rec(&f, 1, POLIS_CALL_CONNECT, 2, 0), 1);
    assert_int_equal(rec(&f, 2, POLIS_CALL_CONNECT, 2, 0), 0);
    assert_int_equal(rec(&f, 2, POLIS_CALL_CONNECT, 5, 0), 0); /* every failure asks again */
    assert_false(ejected(&f, 2, 0));
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 2);
    /* Instance 0 comes back: the next failure of instance 2 ejects it. */
    assert_false(ejected(&f, 0, 30 * SEC));
    assert_int_equal(rec(&f, 2, POLIS_CALL_CONNECT, 1, 30 * SEC), 1);
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 2);

    fx_init(&f, 3); /* 50% of 3: one (two would be 67%) */
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 0), 1);
    assert_int_equal(rec(&f, 1, POLIS_CALL_CONNECT, 2, 0), 0);

    fx_init(&f, 1); /* a one-instance cluster: one is always allowed */
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 0), 1);

    fx_init(&f, 2);
    f.cfg.max_ejection_percent = 100;
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 0), 1);
    assert_int_equal(rec(&f, 1, POLIS_CALL_CONNECT, 2, 0), 1);

    fx_init(&f, 8);
    f.cfg.max_ejection_percent = 0; /* never */
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 10, 0), 0);
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 0);
}

static void test_expired_counts_until_noticed(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 2); /* one at a time */
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 0), 1);
    /* Instance 0's time is over but nobody asked: its place is still taken. A record on it (it
     * is asked then) frees the place. */
    assert_int_equal(rec(&f, 1, POLIS_CALL_CONNECT, 2, 40 * SEC), 0);
    assert_int_equal(rec(&f, 0, POLIS_CALL_OK, 1, 40 * SEC), 0);
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 0);
    assert_int_equal(rec(&f, 1, POLIS_CALL_CONNECT, 1, 40 * SEC), 1);
}

static void test_forget_and_total(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 4);
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 0), 1);
    assert_int_equal(rec(&f, 1, POLIS_CALL_CONNECT, 2, 0), 1);
    polis__outlier_forget(&f.cl, &f.in[0]);
    polis__outlier_forget(&f.cl, &f.in[0]); /* once only */
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 1);
    assert_false(ejected(&f, 0, 0));
    polis__outlier_cluster_set_total(&f.cl, 3);
    assert_int_equal(rec(&f, 2, POLIS_CALL_CONNECT, 2, 0), 0); /* 2 of 3 > 50% */
    polis__outlier_cluster_set_total(&f.cl, 6);
    assert_int_equal(rec(&f, 2, POLIS_CALL_CONNECT, 1, 0), 1);
}

static void test_huge_values(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 10);
    f.cfg.base_ejection_ms = UINT64_MAX / 2;
    f.cfg.max_ejection_ms = UINT64_MAX;
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 5), 1);
    uint64_t until = polis__outlier_ejected_until(&f.in[0], 5);
    assert_true(until > 1ull << 46); /* clamped to what the word holds, but far away */
    assert_true(ejected(&f, 0, until - 1));
    assert_false(ejected(&f, 0, until));
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, until), 1); /* n = 2: clamped too */
    fx_init(&f, 10);
    f.cfg.base_ejection_ms = 0; /* degenerate: ejected for no time */
    assert_int_equal(rec(&f, 0, POLIS_CALL_CONNECT, 2, 5), 1);
    assert_false(ejected(&f, 0, 5));
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 0);
}

/* ---- Threads ------------------------------------------------------------------------------- */

#define THREADS 4

struct race {
    struct fixture *f;
    pthread_barrier_t *bar;
    uint64_t now;
    int rounds;
    _Atomic int *ejections;
};

/* Every round: all threads look at the same instance at the same time, wait while the main thread
 * checks, then record a failure on it at the same time. */
static void *race_return(void *arg)
{
    struct race *r = arg;
    for (int i = 0; i < r->rounds; i++) {
        pthread_barrier_wait(r->bar);
        (void)polis__outlier_ejected(&r->f->cl, &r->f->in[0], r->now + (uint64_t)i * 40 * SEC);
        pthread_barrier_wait(r->bar);
        pthread_barrier_wait(r->bar);
        if (polis__outlier_record(&r->f->cfg, &r->f->cl, &r->f->in[0], POLIS_CALL_CONNECT,
                                  r->now + (uint64_t)i * 40 * SEC + 1))
            atomic_fetch_add(r->ejections, 1);
        pthread_barrier_wait(r->bar);
    }
    return NULL;
}

static void test_exactly_once_threads(void **state)
{
    (void)state;
    struct fixture f;
    fx_init(&f, 2);
    f.cfg.consecutive_connect_failures = 1;
    f.cfg.consecutive_gateway_errors = 0;
    f.cfg.consecutive_5xx = 0;
    f.cfg.max_ejection_ms = 30 * SEC; /* every ejection 30 s: rounds are 40 s apart */
    _Atomic int ejections = 0;
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, THREADS + 1);
    struct race r = {&f, &bar, 1000, 300, &ejections};
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, race_return, &r), 0);
    for (int i = 0; i < r.rounds; i++) {
        pthread_barrier_wait(&bar); /* they ask: the last ejection is over */
        pthread_barrier_wait(&bar);
        assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 0); /* dropped once */
        pthread_barrier_wait(&bar); /* they record: exactly one ejects */
        pthread_barrier_wait(&bar);
        assert_int_equal(atomic_load(&ejections), i + 1);
        assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 1);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&bar);
}

/* Tighter races than a barrier gives: the threads spin on a round number, so they reach the
 * instance within a few nanoseconds of each other. Each round the main thread sets the instance
 * up alone, opens the round, and takes part itself. */
#define SPIN_THREADS 1
#define SPIN_ROUNDS 20000

struct spin {
    struct fixture *f;
    _Atomic int round;
    _Atomic int done;
    _Atomic int ejections;
    uint64_t now;
};

/* Odd rounds: look at an ejection that has run out. Even rounds: record a failure. */
static void spin_step(struct spin *s, int round)
{
    if (round & 1)
        (void)polis__outlier_ejected(&s->f->cl, &s->f->in[0], s->now);
    else if (polis__outlier_record(&s->f->cfg, &s->f->cl, &s->f->in[0], POLIS_CALL_CONNECT, s->now))
        atomic_fetch_add(&s->ejections, 1);
}

static void *spin_worker(void *arg)
{
    struct spin *s = arg;
    for (int seen = 0; seen < SPIN_ROUNDS;) {
        int r = atomic_load_explicit(&s->round, memory_order_acquire);
        if (r == seen) {
            sched_yield(); /* the machine may have fewer cores than spinners */
            continue;
        }
        seen = r;
        spin_step(s, r);
        atomic_fetch_add(&s->done, 1);
    }
    return NULL;
}

static void test_exactly_once_spin(void **state)
{
    (void)state;
    static struct fixture f;
    fx_init(&f, 100);
    f.cfg.max_ejection_percent = 100; /* the share never refuses: every thread takes a place */
    f.cfg.consecutive_connect_failures = 1;
    f.cfg.base_ejection_ms = 10;
    f.cfg.max_ejection_ms = 10;
    static struct spin s;
    s.f = &f;
    atomic_store(&s.round, 0);
    atomic_store(&s.done, 0);
    atomic_store(&s.ejections, 0);
    pthread_t t[SPIN_THREADS];
    for (int i = 0; i < SPIN_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, spin_worker, &s), 0);
    int bad = 0;
    for (int r = 1; r <= SPIN_ROUNDS; r++) {
        /* Round r happens at 100 ms * r: odd rounds find the last ejection (10 ms) over. */
        s.now = 100 * (uint64_t)r;
        atomic_store(&s.done, 0);
        atomic_store_explicit(&s.round, r, memory_order_release);
        spin_step(&s, r);
        while (atomic_load(&s.done) < SPIN_THREADS)
            sched_yield();
        uint32_t want = (r & 1) ? 0 : 1;
        bad += polis__outlier_cluster_ejected(&f.cl) != want;
        if (!(r & 1))
            bad += atomic_load(&s.ejections) != r / 2;
    }
    for (int i = 0; i < SPIN_THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(bad, 0);
}

static _Atomic uint64_t clock_ms;
static _Atomic int over_share;

struct hammer_arg {
    struct fixture *f;
    uint64_t seed;
};

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void *hammer(void *arg)
{
    struct hammer_arg *h = arg;
    uint64_t r = h->seed;
    for (int i = 0; i < 200000; i++) {
        uint64_t now = atomic_fetch_add(&clock_ms, rng_next(&r) % 2);
        int inst = (int)(rng_next(&r) % 8);
        enum polis_call_kind k = (enum polis_call_kind)(rng_next(&r) % 6);
        if (rng_next(&r) % 3 == 0)
            k = POLIS_CALL_OK;
        polis__outlier_record(&h->f->cfg, &h->f->cl, &h->f->in[inst], k, now);
        (void)polis__outlier_ejected(&h->f->cl, &h->f->in[(inst + 1) % 8], now);
        if (polis__outlier_cluster_ejected(&h->f->cl) > 3) /* 40% of 8 */
            atomic_fetch_add(&over_share, 1);
    }
    return NULL;
}

static void test_hammer_threads(void **state)
{
    (void)state;
    static struct fixture f;
    fx_init(&f, 8);
    f.cfg.base_ejection_ms = 50;
    f.cfg.max_ejection_ms = 400;
    f.cfg.max_ejection_percent = 40; /* of 8: three */
    atomic_store(&clock_ms, 1);
    struct hammer_arg a[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (struct hammer_arg){&f, 0xabcdefull * (uint64_t)(i + 1)};
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &a[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&over_share), 0);
    uint64_t ejections = 0;
    for (int i = 0; i < 8; i++)
        ejections += atomic_load(&f.in[i].times_ejected);
    assert_true(ejections > 20);
    /* Count what is ejected now, then let everything come back: the count must reach exactly 0. */
    uint64_t now = atomic_load(&clock_ms);
    uint32_t still = 0;
    for (int i = 0; i < 8; i++)
        still += ejected(&f, i, now);
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), still);
    for (int i = 0; i < 8; i++)
        assert_false(ejected(&f, i, now + 400));
    assert_int_equal(polis__outlier_cluster_ejected(&f.cl), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_of_status),
        cmocka_unit_test(test_threshold_5xx),
        cmocka_unit_test(test_threshold_gateway),
        cmocka_unit_test(test_threshold_connect),
        cmocka_unit_test(test_success_resets),
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_ignored_while_ejected),
        cmocka_unit_test(test_return_by_itself),
        cmocka_unit_test(test_growth_and_cap),
        cmocka_unit_test(test_decay),
        cmocka_unit_test(test_max_percent),
        cmocka_unit_test(test_expired_counts_until_noticed),
        cmocka_unit_test(test_forget_and_total),
        cmocka_unit_test(test_huge_values),
        cmocka_unit_test(test_exactly_once_threads),
        cmocka_unit_test(test_exactly_once_spin),
        cmocka_unit_test(test_hammer_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
