/* Unit tests of the rate limiters (lib/security/ratelimit.c): GCRA against a reference model,
 * the header values, keys, exactness across threads, the key table's bound and eviction, and the
 * Redis backend against a real redis-server started by the test (stopped, frozen and restarted
 * mid-test). Prints the cost of a decision for each backend. */
#include "security/ratelimit.h"

#include <polis/core.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define REDIS_BIN "/usr/bin/redis-server"

/* ---- Helpers ------------------------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *s, uint64_t n)
{
    return rng_next(s) % n;
}

static struct polis_ratelimit *mk_local(uint32_t rate, uint64_t period_ms, uint32_t burst,
                                        uint32_t max_keys)
{
    struct polis_ratelimit_opts o = {
        .name = "test", .rate = rate, .period_ms = period_ms, .burst = burst, .max_keys = max_keys};
    struct polis_ratelimit *rl = NULL;
    assert_int_equal(polis__ratelimit_new(&o, &rl), 0);
    assert_non_null(rl);
    return rl;
}

static struct polis_ratelimit_decision chk(struct polis_ratelimit *rl, const char *key, uint64_t t)
{
    struct polis_ratelimit_decision d;
    memset(&d, 0xa5, sizeof(d)); /* every field must be written */
    bool ok = polis__ratelimit_check(rl, key, strlen(key), t, &d);
    assert_int_equal(ok, d.allowed);
    return d;
}

static void assert_allowed(struct polis_ratelimit_decision d, uint32_t limit, uint32_t remaining,
                           uint64_t reset_ms)
{
    assert_true(d.allowed);
    assert_true(d.headers);
    assert_int_equal(d.status, 0);
    assert_int_equal(d.limit, limit);
    assert_int_equal(d.remaining, remaining);
    assert_int_equal(d.reset_ms, reset_ms);
    assert_int_equal(d.retry_after_ms, 0);
}

static void assert_denied(struct polis_ratelimit_decision d, uint32_t limit, uint64_t reset_ms,
                          uint64_t retry_ms)
{
    assert_false(d.allowed);
    assert_true(d.headers);
    assert_int_equal(d.status, 429);
    assert_int_equal(d.limit, limit);
    assert_int_equal(d.remaining, 0);
    assert_int_equal(d.reset_ms, reset_ms);
    assert_int_equal(d.retry_after_ms, retry_ms);
}

/* ---- Options ------------------------------------------------------------------------------- */

static void test_new_rejects(void **state)
{
    (void)state;
    struct polis_ratelimit *rl = NULL;
    struct polis_ratelimit_opts ok = {.name = "api", .rate = 10, .period_ms = 1000};
    struct polis_ratelimit_opts o;
    const char *bad_names[] = {NULL,
                               "",
                               "a:b",
                               "a b",
                               "a\tb",
                               "a\x7f",
                               "0123456789012345678901234567890123456789012345678901234567890123x"};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
        o = ok;
        o.name = bad_names[i];
        assert_int_equal(polis__ratelimit_new(&o, &rl), POLIS_EINVAL);
    }
    o = ok, o.rate = 0;
    assert_int_equal(polis__ratelimit_new(&o, &rl), POLIS_EINVAL);
    o = ok, o.rate = POLIS_RATELIMIT_MAX_RATE + 1;
    assert_int_equal(polis__ratelimit_new(&o, &rl), POLIS_EINVAL);
    o = ok, o.period_ms = 0;
    assert_int_equal(polis__ratelimit_new(&o, &rl), POLIS_EINVAL);
    o = ok, o.period_ms = (uint64_t)POLIS_RATELIMIT_MAX_PERIOD_MS + 1;
    assert_int_equal(polis__ratelimit_new(&o, &rl), POLIS_EINVAL);
    o = ok, o.burst = POLIS_RATELIMIT_MAX_BURST + 1;
    assert_int_equal(polis__ratelimit_new(&o, &rl), POLIS_EINVAL);
    o = ok, o.max_keys = POLIS_RATELIMIT_MAX_KEYS + 1;
    assert_int_equal(polis__ratelimit_new(&o, &rl), POLIS_EINVAL);
    o = ok, o.on_failure = (enum polis_ratelimit_failure)7;
    assert_int_equal(polis__ratelimit_new(&o, &rl), POLIS_EINVAL);
    assert_null(rl);

    /* The largest values are accepted and stay exact (see the model test). */
    o = ok;
    o.name = "0123456789012345678901234567890123456789012345678901234567890123";
    o.rate = POLIS_RATELIMIT_MAX_RATE;
    o.period_ms = POLIS_RATELIMIT_MAX_PERIOD_MS;
    o.burst = POLIS_RATELIMIT_MAX_BURST;
    o.max_keys = 16;
    assert_int_equal(polis__ratelimit_new(&o, &rl), 0);
    assert_string_equal(polis__ratelimit_name(rl), o.name);
    polis__ratelimit_free(rl);
    polis__ratelimit_free(NULL);

    struct polis_ratelimit_redis *r = NULL;
    const char *bad_addr[] = {NULL,         "",         "host",   "host:",     "host:0",
                              "host:65536", "host:12x", ":6379",  "[::1]6379", "[::1:6379",
                              "unix:rel",   "a:b:6379", "[]:6379"};
    for (size_t i = 0; i < sizeof(bad_addr) / sizeof(bad_addr[0]); i++) {
        struct polis_ratelimit_redis_opts ro = {.address = bad_addr[i]};
        assert_int_equal(polis__ratelimit_redis_new(&ro, &r), POLIS_EINVAL);
    }
    assert_int_equal(polis__ratelimit_redis_new(NULL, &r), POLIS_EINVAL);
    const char *good_addr[] = {"127.0.0.1:6379", "[::1]:6379", "unix:/run/redis.sock",
                               "redis.local:1"};
    for (size_t i = 0; i < sizeof(good_addr) / sizeof(good_addr[0]); i++) {
        struct polis_ratelimit_redis_opts ro = {.address = good_addr[i], .password = "pw"};
        assert_int_equal(polis__ratelimit_redis_new(&ro, &r), 0);
        struct polis_ratelimit_redis_stats st;
        polis__ratelimit_redis_stats(r, &st);
        assert_true(st.up);
        assert_int_equal(st.connects, 0); /* nothing before the first decision */
        polis__ratelimit_redis_free(r);
    }
    polis__ratelimit_redis_free(NULL);
}

/* ---- GCRA ---------------------------------------------------------------------------------- */

/* 10 per second with a bucket of 5: the burst, then one every 100 ms, and every header value. */
static void test_burst_then_steady(void **state)
{
    (void)state;
    struct polis_ratelimit *rl = mk_local(10, 1000, 5, 64);
    for (uint32_t i = 0; i < 5; i++) {
        struct polis_ratelimit_decision d = chk(rl, "k", 1000);
        assert_allowed(d, 5, 4 - i, 100 * (i + 1));
        assert_int_equal(d.source, POLIS_RATELIMIT_SRC_LOCAL);
    }
    assert_denied(chk(rl, "k", 1000), 5, 500, 100);
    assert_denied(chk(rl, "k", 1099), 5, 401, 1);
    assert_allowed(chk(rl, "k", 1100), 5, 0, 500);
    assert_denied(chk(rl, "k", 1100), 5, 500, 100);
    /* An old time (another worker's cached clock) is judged as strictly as it should be. */
    assert_denied(chk(rl, "k", 1050), 5, 550, 150);

    /* Steady state: at each ms, as many requests as possible; exactly one every 100 ms. */
    uint64_t allowed = 6;
    for (uint64_t t = 1101; t <= 11100; t++) {
        uint32_t n = 0;
        while (chk(rl, "k", t).allowed)
            n++;
        assert_true(n == (t % 100 == 0 ? 1u : 0u));
        allowed += n;
    }
    assert_int_equal(allowed, 5 + 10100 * 10 / 1000); /* burst + rate * time */

    /* Idle for long enough: the bucket is full again, and reset says when that happens. */
    struct polis_ratelimit_decision d = chk(rl, "k", 11200);
    assert_allowed(d, 5, 0, 500); /* one came back at 11200, and this takes it */
    assert_int_equal(chk(rl, "k", 11200 + 500).remaining, 4);
    for (int i = 0; i < 5; i++)
        assert_true(chk(rl, "k", 20000).allowed);
    assert_false(chk(rl, "k", 20000).allowed);

    struct polis_ratelimit_stats st;
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.keys, 1);
    assert_int_equal(st.fallback, 0);
    assert_int_equal(st.redis_errors, 0);
    assert_true(st.denied > 10000);
    assert_int_equal(st.decisions - st.denied, allowed + 1 + 1 + 5);
    polis__ratelimit_free(rl);
}

/* An interval that is not a whole number of ms (3 per second), and burst 0 (= rate). */
static void test_fractional_interval(void **state)
{
    (void)state;
    /* A bucket of 1: no tolerance, so arriving late loses the fraction of a slot. */
    struct polis_ratelimit *rl = mk_local(3, 1000, 1, 64);
    assert_allowed(chk(rl, "k", 0), 1, 0, 334);   /* 333.33 ms, rounded up */
    assert_denied(chk(rl, "k", 0), 1, 334, 334);  /* the next at 333.33 ms */
    assert_denied(chk(rl, "k", 333), 1, 1, 1);    /* 0.33 ms away: 1 */
    assert_allowed(chk(rl, "k", 334), 1, 0, 334); /* late by 0.67 ms: next at 667.33 */
    assert_denied(chk(rl, "k", 667), 1, 1, 1);
    assert_allowed(chk(rl, "k", 668), 1, 0, 334); /* next at 1001.33 */
    assert_denied(chk(rl, "k", 1000), 1, 2, 2);
    /* Waiting retry_after is always enough, and one ms less never is. */
    uint64_t t = 1000, allowed = 0;
    for (int i = 0; i < 300; i++) {
        struct polis_ratelimit_decision d = chk(rl, "k", t);
        if (d.allowed) {
            allowed++;
            continue;
        }
        if (d.retry_after_ms > 1)
            assert_false(chk(rl, "k", t + d.retry_after_ms - 1).allowed);
        t += d.retry_after_ms;
    }
    assert_int_equal(allowed, 150);
    polis__ratelimit_free(rl);

    /* A bucket of 2 absorbs the lateness: polled every ms, exactly burst + floor(t * 3 / 1000)
     * requests are allowed over [0, t], for every t. */
    rl = mk_local(3, 1000, 2, 64);
    uint64_t total = 0;
    for (t = 0; t <= 10000; t++) {
        while (chk(rl, "k", t).allowed)
            total++;
        assert_int_equal(total, 2 + t * 3 / 1000);
    }
    polis__ratelimit_free(rl);

    rl = mk_local(7, 1000, 0, 64);
    for (int i = 0; i < 7; i++)
        assert_int_equal(chk(rl, "x", 5).remaining, 6 - i);
    assert_false(chk(rl, "x", 5).allowed);
    polis__ratelimit_free(rl);
}

/* The reference: GCRA in units of 1/rate ms (no gcd), in 128-bit arithmetic. */
struct model {
    unsigned __int128 tat;
};

static void model_check(struct model *m, uint64_t rate, uint64_t period, uint64_t burst,
                        uint64_t now, struct polis_ratelimit_decision *d)
{
    unsigned __int128 nu = (unsigned __int128)now * rate, T = period,
                      tau = (unsigned __int128)burst * T;
    unsigned __int128 base = m->tat > nu ? m->tat : nu, next = base + T;
    memset(d, 0, sizeof(*d));
    d->limit = (uint32_t)burst;
    if (next - nu > tau) {
        d->reset_ms = (uint64_t)((m->tat - nu + rate - 1) / rate);
        d->retry_after_ms = (uint64_t)((next - nu - tau + rate - 1) / rate);
        return;
    }
    m->tat = next;
    d->allowed = true;
    d->remaining = (uint32_t)((tau - (next - nu)) / T);
    d->reset_ms = (uint64_t)((next - nu + rate - 1) / rate);
}

/* Random policies (the extremes included) and random times against the reference model. */
static void test_against_model(void **state)
{
    (void)state;
    uint64_t seed = 42;
    for (int round = 0; round < 300; round++) {
        uint64_t rate, period, burst;
        switch (round % 4) {
        case 0: /* small */
            rate = 1 + rng_below(&seed, 20), period = 1 + rng_below(&seed, 5000);
            burst = 1 + rng_below(&seed, 10);
            break;
        case 1: /* coprime-ish and large */
            rate = 1 + rng_below(&seed, POLIS_RATELIMIT_MAX_RATE);
            period = 1 + rng_below(&seed, 100000), burst = 1 + rng_below(&seed, 1000);
            break;
        case 2: /* the limits */
            rate = POLIS_RATELIMIT_MAX_RATE - rng_below(&seed, 3);
            period = POLIS_RATELIMIT_MAX_PERIOD_MS - rng_below(&seed, 3);
            burst = POLIS_RATELIMIT_MAX_BURST - rng_below(&seed, 3);
            break;
        default: /* common shapes */
            rate = 100 * (1 + rng_below(&seed, 10)), period = 1000 * (1 + rng_below(&seed, 60));
            burst = rate;
            break;
        }
        struct polis_ratelimit *rl = mk_local((uint32_t)rate, period, (uint32_t)burst, 64);
        struct model m[3] = {{0}, {0}, {0}};
        uint64_t t = rng_below(&seed, 1ull << 41);
        uint64_t span = period / rate + 2;
        for (int i = 0; i < 400; i++) {
            int k = (int)rng_below(&seed, 3);
            char key[2] = {(char)('a' + k), 0};
            if (rng_below(&seed, 3) == 0)
                t += rng_below(&seed, span * (rng_below(&seed, 4) == 0 ? burst + 2 : 2));
            struct polis_ratelimit_decision want, got = chk(rl, key, t);
            model_check(&m[k], rate, period, burst, t, &want);
            if (got.allowed != want.allowed || got.remaining != want.remaining ||
                got.reset_ms != want.reset_ms || got.retry_after_ms != want.retry_after_ms ||
                got.limit != want.limit)
                fail_msg("rate %" PRIu64 "/%" PRIu64 " burst %" PRIu64 " t %" PRIu64
                         ": got %d rem %u reset %" PRIu64 " retry %" PRIu64 ", want %d rem %u "
                         "reset %" PRIu64 " retry %" PRIu64,
                         rate, period, burst, t, got.allowed, got.remaining, got.reset_ms,
                         got.retry_after_ms, want.allowed, want.remaining, want.reset_ms,
                         want.retry_after_ms);
        }
        polis__ratelimit_free(rl);
    }
}

static void test_headers(void **state)
{
    (void)state;
    char buf[128];
    struct polis_ratelimit *rl = mk_local(10, 1000, 5, 64);
    struct polis_ratelimit_decision d = chk(rl, "k", 1000);
    int n = polis__ratelimit_headers(&d, buf, sizeof(buf));
    const char *want = "RateLimit-Limit: 5\r\nRateLimit-Remaining: 4\r\nRateLimit-Reset: 1\r\n";
    assert_int_equal(n, (int)strlen(want));
    assert_string_equal(buf, want);
    for (int i = 0; i < 4; i++)
        chk(rl, "k", 1000);
    d = chk(rl, "k", 1000);
    n = polis__ratelimit_headers(&d, buf, sizeof(buf));
    assert_int_equal(n, (int)strlen(buf));
    assert_string_equal(buf, "RateLimit-Limit: 5\r\nRateLimit-Remaining: 0\r\n"
                             "RateLimit-Reset: 1\r\nRetry-After: 1\r\n");
    assert_int_equal(polis__ratelimit_headers(&d, buf, 20), POLIS_ETOOBIG);
    assert_int_equal(polis__ratelimit_headers(&d, buf, 0), POLIS_ETOOBIG);
    polis__ratelimit_free(rl);

    /* Seconds round up: 1 per 90 s with a bucket of 2. */
    rl = mk_local(1, 90000, 2, 64);
    chk(rl, "k", 0);
    chk(rl, "k", 0);
    d = chk(rl, "k", 1);
    assert_int_equal(d.reset_ms, 179999);
    assert_int_equal(d.retry_after_ms, 89999);
    polis__ratelimit_headers(&d, buf, sizeof(buf));
    assert_string_equal(buf, "RateLimit-Limit: 2\r\nRateLimit-Remaining: 0\r\n"
                             "RateLimit-Reset: 180\r\nRetry-After: 90\r\n");
    polis__ratelimit_free(rl);
    assert_int_equal(polis__ratelimit_secs(0), 0);
    assert_int_equal(polis__ratelimit_secs(1), 1);
    assert_int_equal(polis__ratelimit_secs(1000), 1);
    assert_int_equal(polis__ratelimit_secs(1001), 2);

    /* Fallbacks: fail-closed carries only Retry-After, fail-open nothing. */
    struct polis_ratelimit_decision closed = {
        .allowed = false, .status = 503, .retry_after_ms = 1500, .limit = 5};
    polis__ratelimit_headers(&closed, buf, sizeof(buf));
    assert_string_equal(buf, "Retry-After: 2\r\n");
    struct polis_ratelimit_decision open = {.allowed = true, .limit = 5};
    assert_int_equal(polis__ratelimit_headers(&open, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
}

/* Keys are opaque bytes: binary bytes, the empty key, and long keys (hashed) all stay apart. */
static void test_keys(void **state)
{
    (void)state;
    struct polis_ratelimit *rl = mk_local(1, 60000, 2, 1024);
    struct polis_ratelimit_decision d;
    char long_a[300], long_b[300];
    memset(long_a, 'x', sizeof(long_a));
    memcpy(long_b, long_a, sizeof(long_b));
    long_b[299] = 'y'; /* differs in the last byte only */
    struct {
        const void *p;
        size_t len;
    } keys[] = {
        {"a\0b", 3},   {"a\0c", 3},   {"a", 1},      {"", 0},      {NULL, 0},    {"\xff\r\n", 3},
        {long_a, 300}, {long_b, 300}, {long_a, 299}, {long_a, 48}, {long_a, 49}, {long_a, 47},
    };
    size_t n = sizeof(keys) / sizeof(keys[0]);
    for (size_t i = 0; i < n; i++) {
        bool shared_with_empty = i == 4; /* NULL, 0 is the empty key */
        bool a1 = polis__ratelimit_check(rl, keys[i].p, keys[i].len, 10, &d);
        bool a2 = polis__ratelimit_check(rl, keys[i].p, keys[i].len, 10, &d);
        bool a3 = polis__ratelimit_check(rl, keys[i].p, keys[i].len, 10, &d);
        if (shared_with_empty) {
            assert_false(a1 || a2 || a3);
            continue;
        }
        assert_true(a1 && a2);
        assert_false(a3);
    }
    struct polis_ratelimit_stats st;
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.keys, n - 1);
    /* A long key is the same key every time (its hash is stable). */
    assert_false(polis__ratelimit_check(rl, long_b, 300, 10, &d));
    polis__ratelimit_free(rl);
}

/* ---- Threads ------------------------------------------------------------------------------- */

#define NTHREADS 4

static struct {
    struct polis_ratelimit *rl;
    _Atomic uint64_t vnow;           /* the virtual clock */
    _Atomic uint64_t seen[NTHREADS]; /* each thread: the last time at which it was denied */
    _Atomic uint64_t allowed;
    _Atomic uint64_t calls;
    _Atomic bool stop;
    bool real_clock; /* hammer with the real clock instead */
    _Atomic uint64_t min_now, max_now;
} H;

static void *hammer(void *arg)
{
    int i = (int)(intptr_t)arg;
    struct polis_ratelimit_decision d;
    uint64_t calls = 0;
    while (!atomic_load(&H.stop)) {
        uint64_t n = H.real_clock ? now_ms() : atomic_load(&H.vnow);
        if (!H.real_clock && atomic_load(&H.seen[i]) == n) {
            sched_yield(); /* nothing is left at this time: wait for the clock */
            continue;
        }
        calls++;
        if (polis__ratelimit_check(H.rl, "hot", 3, n, &d))
            atomic_fetch_add(&H.allowed, 1);
        else
            atomic_store(&H.seen[i], n);
        if (H.real_clock) {
            uint64_t v = atomic_load(&H.min_now);
            while (n < v && !atomic_compare_exchange_weak(&H.min_now, &v, n))
                ;
            v = atomic_load(&H.max_now);
            while (n > v && !atomic_compare_exchange_weak(&H.max_now, &v, n))
                ;
        }
    }
    atomic_fetch_add(&H.calls, calls);
    return NULL;
}

/* 4 threads on one key with a virtual clock moved one ms at a time, each step only once every
 * thread has been denied at that time: after each step exactly burst + floor(t * rate / period)
 * requests were allowed, with an interval of 3/17 ms (not whole: 5 or 6 each ms to race for). */
static void test_threads_exact(void **state)
{
    (void)state;
    const uint64_t rate = 17, period = 3, burst = 50, base = 100000, steps = 1500;
    memset(&H, 0, sizeof(H));
    H.rl = mk_local(rate, period, burst, 1024);
    atomic_store(&H.vnow, base);
    for (int i = 0; i < NTHREADS; i++)
        atomic_store(&H.seen[i], UINT64_MAX);
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, (void *)(intptr_t)i), 0);
    uint64_t deadline = now_ms() + 60000;
    for (uint64_t k = 0; k <= steps; k++) {
        atomic_store(&H.vnow, base + k);
        for (int i = 0; i < NTHREADS; i++)
            while (atomic_load(&H.seen[i]) != base + k) {
                if (now_ms() > deadline) {
                    atomic_store(&H.stop, true);
                    for (int j = 0; j < NTHREADS; j++)
                        pthread_join(th[j], NULL);
                    fail_msg("threads stalled at step %" PRIu64, k);
                }
                sched_yield();
            }
        uint64_t want = burst + k * rate / period;
        uint64_t got = atomic_load(&H.allowed);
        if (got != want) {
            atomic_store(&H.stop, true);
            for (int i = 0; i < NTHREADS; i++)
                pthread_join(th[i], NULL);
            fail_msg("step %" PRIu64 ": %" PRIu64 " allowed, want %" PRIu64, k, got, want);
        }
    }
    atomic_store(&H.stop, true);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    printf("ratelimit: %d threads, one key, virtual clock: %" PRIu64 " allowed of %" PRIu64
           " calls, exact at each of %" PRIu64 " steps\n",
           NTHREADS, atomic_load(&H.allowed), atomic_load(&H.calls), steps + 1);
    polis__ratelimit_free(H.rl);
}

/* 4 threads hammering one key on the real clock: never more than burst + rate * time between
 * the earliest and the latest time used; prints the cost of a contended decision. */
static void test_threads_hammer(void **state)
{
    (void)state;
    const uint64_t rate = 1000, period = 1000, burst = 50;
    memset(&H, 0, sizeof(H));
    H.rl = mk_local(rate, period, burst, 1024);
    H.real_clock = true;
    atomic_store(&H.min_now, UINT64_MAX);
    pthread_t th[NTHREADS];
    uint64_t t0 = now_ns();
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, (void *)(intptr_t)i), 0);
    sleep_ms(300);
    atomic_store(&H.stop, true);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    uint64_t el = now_ns() - t0;
    uint64_t allowed = atomic_load(&H.allowed), calls = atomic_load(&H.calls);
    uint64_t bound = burst + (atomic_load(&H.max_now) - atomic_load(&H.min_now)) * rate / period;
    printf("ratelimit: local, %d threads on one key: %.0f ns per decision (wall / calls, 2 "
           "cores), %" PRIu64 " allowed, bound %" PRIu64 "\n",
           NTHREADS, (double)el / (double)calls, allowed, bound);
    assert_true(allowed <= bound);
    assert_true(allowed >= burst);
    polis__ratelimit_free(H.rl);
}

/* ---- Table bound and eviction -------------------------------------------------------------- */

static void key_name(char *buf, size_t cap, const char *prefix, int i)
{
    snprintf(buf, cap, "%s%d", prefix, i);
}

/* 64 keys: idle keys are evicted first and active ones keep their state; when every key is
 * active, the one nearest to idle goes. */
static void test_eviction(void **state)
{
    (void)state;
    char k[32];
    struct polis_ratelimit_stats st;
    /* T = 10 ms, a bucket of 4 (40 ms). */
    struct polis_ratelimit *rl = mk_local(100, 1000, 4, 64);
    for (int i = 0; i < 64; i++) {
        key_name(k, sizeof(k), "k", i);
        int n = i < 32 ? 1 : 4; /* TAT 1010 for k0..k31, 1040 for k32..k63 */
        for (int j = 0; j < n; j++)
            assert_true(chk(rl, k, 1000).allowed);
    }
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.keys, 64);
    assert_int_equal(st.evicted_idle + st.evicted_active, 0);

    /* At 1020 the first half is idle: 32 new keys replace exactly them. */
    for (int i = 0; i < 32; i++) {
        key_name(k, sizeof(k), "n", i);
        assert_allowed(chk(rl, k, 1020), 4, 3, 10);
    }
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.keys, 64);
    assert_int_equal(st.evicted_idle, 32);
    assert_int_equal(st.evicted_active, 0);
    for (int i = 32; i < 64; i++) { /* kept: TAT 1040 -> 1050, so 1 left (a new key has 3) */
        key_name(k, sizeof(k), "k", i);
        assert_allowed(chk(rl, k, 1020), 4, 1, 30);
    }

    /* All 64 active: n* (TAT 1030) are nearest to idle; one goes for the new key. */
    assert_true(chk(rl, "extra", 1020).allowed);
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.keys, 64);
    assert_int_equal(st.evicted_active, 1);
    for (int i = 32; i < 64; i++) {
        key_name(k, sizeof(k), "k", i);
        assert_allowed(chk(rl, k, 1020), 4, 0, 40);
    }
    /* The evicted n key starts again with a full bucket (and, coming back into a full table,
     * evicts another key nearest to idle: an n key not seen yet, or "extra"). */
    int fresh = 0;
    for (int i = 0; i < 32; i++) {
        key_name(k, sizeof(k), "n", i);
        struct polis_ratelimit_decision d = chk(rl, k, 1020);
        assert_true(d.allowed);
        fresh += d.remaining == 3;
        if (d.remaining != 3)
            assert_int_equal(d.remaining, 2);
    }
    assert_true(fresh >= 1);
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.keys, 64);
    assert_int_equal(st.evicted_active, 1 + (uint64_t)fresh);
    polis__ratelimit_free(rl);
}

/* Ten times more keys than fit, over several stripes, all active (one request each, 1 an
 * hour): the table never holds more than max_keys and each new key past the bound evicts one.
 * The one evicted is the nearest to idle, so keys that made two requests (one in twenty) all
 * stay, and so do the most recent keys; all keep their counts through the entry moves and
 * backward shifts of thousands of evictions. */
static void test_table_bound(void **state)
{
    (void)state;
    const uint32_t max = 5000;
    const int total = 50000;
    struct polis_ratelimit *rl = mk_local(1, 3600000, 10, max);
    struct polis_ratelimit_stats st;
    char k[32];
    uint64_t seed = 7;
    bool *twice = calloc((size_t)total, sizeof(bool));
    assert_non_null(twice);
    for (int i = 0; i < total; i++) {
        key_name(k, sizeof(k), "key-", i);
        assert_allowed(chk(rl, k, 1000 + (uint64_t)i), 10, 9, 3600000);
        if (rng_below(&seed, 20) == 0) { /* a recent key once more */
            int j = i - (int)rng_below(&seed, 50);
            if (j < 0 || twice[j])
                continue;
            twice[j] = true;
            key_name(k, sizeof(k), "key-", j);
            assert_int_equal(chk(rl, k, 1000 + (uint64_t)i).remaining, 8);
        }
        if (i % 1000 == 0) {
            polis__ratelimit_stats(rl, &st);
            assert_true(st.keys <= max);
        }
    }
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.keys, max);
    assert_int_equal(st.evicted_idle, 0);
    assert_int_equal(st.evicted_active, (uint64_t)total - max); /* no key came back */
    int n_twice = 0;
    for (int i = 0; i < total; i++) {
        if (!twice[i])
            continue;
        key_name(k, sizeof(k), "key-", i);
        assert_int_equal(chk(rl, k, 1000 + (uint64_t)total).remaining, 7);
        n_twice++;
    }
    assert_true(n_twice > 2000);
    for (int i = total - 1, n = 0; n < 300; i--) {
        if (twice[i])
            continue;
        key_name(k, sizeof(k), "key-", i);
        assert_int_equal(chk(rl, k, 1000 + (uint64_t)total).remaining, 8);
        n++;
    }
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.evicted_active, (uint64_t)total - max); /* all were found */
    free(twice);
    polis__ratelimit_free(rl);
}

/* ---- Cost of a local decision -------------------------------------------------------------- */

static void test_local_cost(void **state)
{
    (void)state;
    struct polis_ratelimit *rl = mk_local(1000000, 1000, 1000, 65536);
    struct polis_ratelimit_decision d;
    const int n = 2000000;
    uint64_t allowed = 0, t0 = now_ns();
    for (int i = 0; i < n; i++)
        allowed += polis__ratelimit_check(rl, "consumer-42", 11, 1000 + (uint64_t)i / 1000, &d);
    uint64_t el = now_ns() - t0;
    printf("ratelimit: local, one thread, one key: %.1f ns per decision\n", (double)el / n);
    assert_true(allowed > 0);

    char keys[10000][16];
    for (int i = 0; i < 10000; i++)
        snprintf(keys[i], sizeof(keys[i]), "10.0.%d.%d", i / 256, i % 256);
    t0 = now_ns();
    for (int i = 0; i < n; i++)
        polis__ratelimit_check(rl, keys[i % 10000], strlen(keys[i % 10000]),
                               1000 + (uint64_t)i / 1000, &d);
    el = now_ns() - t0;
    printf("ratelimit: local, one thread, 10000 keys: %.1f ns per decision\n", (double)el / n);

    char lk[200];
    memset(lk, 'k', sizeof(lk));
    t0 = now_ns();
    for (int i = 0; i < n / 10; i++)
        polis__ratelimit_check(rl, lk, sizeof(lk), 1000, &d);
    el = now_ns() - t0;
    printf("ratelimit: local, one thread, a 200-byte key (SHA-256): %.1f ns per decision\n",
           (double)el / (n / 10));
    polis__ratelimit_free(rl);
}

/* ---- Redis --------------------------------------------------------------------------------- */

static struct {
    int port;
    pid_t pid;
    char addr[32];
} R = {.pid = -1};

/* A plain hiredis connection to the test's Redis, or NULL. */
static redisContext *raw_connect(void)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", R.port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static bool redis_ping(void)
{
    redisContext *c = raw_connect();
    if (!c)
        return false;
    redisReply *rep = redisCommand(c, "PING");
    bool ok = rep && rep->type == REDIS_REPLY_STATUS;
    freeReplyObject(rep);
    redisFree(c);
    return ok;
}

/* Redis' clock in ms (TIME). */
static uint64_t redis_time_ms(void)
{
    redisContext *c = raw_connect();
    assert_non_null(c);
    redisReply *rep = redisCommand(c, "TIME");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    uint64_t ms = strtoull(rep->element[0]->str, NULL, 10) * 1000 +
                  strtoull(rep->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(rep);
    redisFree(c);
    return ms;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        abort();
    close(fd);
    return ntohs(a.sin_port);
}

/* Start redis-server on R.port and wait until it answers. Returns 0 or -1. */
static int redis_start(void)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", R.port);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(REDIS_BIN, REDIS_BIN, "--port", port, "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    R.pid = pid;
    for (uint64_t end = now_ms() + 10000; now_ms() < end; sleep_ms(20)) {
        if (redis_ping())
            return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            R.pid = -1;
            return -1;
        }
    }
    return -1;
}

static void redis_kill(void)
{
    if (R.pid <= 0)
        return;
    kill(R.pid, SIGCONT);
    kill(R.pid, SIGKILL);
    waitpid(R.pid, NULL, 0);
    R.pid = -1;
}

static int redis_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN); /* hiredis writes with write(): the gateway ignores SIGPIPE too */
    if (access(REDIS_BIN, X_OK) != 0) {
        fprintf(stderr, "redis: %s is not installed\n", REDIS_BIN);
        return -1;
    }
    R.port = free_port();
    snprintf(R.addr, sizeof(R.addr), "127.0.0.1:%d", R.port);
    if (redis_start() != 0) {
        fprintf(stderr, "redis-server did not start on port %d\n", R.port);
        return -1;
    }
    polis_log_set_level(POLIS_LOG_ERROR); /* the outage warnings are expected */
    return 0;
}

static int redis_teardown(void **state)
{
    (void)state;
    redis_kill();
    polis_log_set_level(POLIS_LOG_INFO);
    return 0;
}

static struct polis_ratelimit_redis *mk_store(uint32_t timeout_ms, uint32_t retry_ms)
{
    struct polis_ratelimit_redis_opts o = {
        .address = R.addr, .timeout_ms = timeout_ms, .retry_ms = retry_ms};
    struct polis_ratelimit_redis *r = NULL;
    assert_int_equal(polis__ratelimit_redis_new(&o, &r), 0);
    return r;
}

static struct polis_ratelimit *mk_redis(struct polis_ratelimit_redis *r, const char *name,
                                        uint32_t rate, uint64_t period, uint32_t burst,
                                        enum polis_ratelimit_failure f)
{
    struct polis_ratelimit_opts o = {.name = name,
                                     .rate = rate,
                                     .period_ms = period,
                                     .burst = burst,
                                     .max_keys = 1024,
                                     .redis = r,
                                     .on_failure = f};
    struct polis_ratelimit *rl = NULL;
    assert_int_equal(polis__ratelimit_new(&o, &rl), 0);
    return rl;
}

static struct polis_ratelimit_decision rchk(struct polis_ratelimit *rl, const void *key, size_t len)
{
    struct polis_ratelimit_decision d;
    memset(&d, 0xa5, sizeof(d));
    polis__ratelimit_check(rl, key, len, now_ms(), &d);
    return d;
}

/* The burst, then denials, decided in Redis with the same header values as locally (up to the
 * few ms that pass between the calls on Redis' clock). */
static void test_redis_basic(void **state)
{
    (void)state;
    struct polis_ratelimit_redis *r = mk_store(1000, 200);
    struct polis_ratelimit *rl = mk_redis(r, "basic", 10, 1000, 5, POLIS_RATELIMIT_FAIL_OPEN);
    for (uint32_t i = 0; i < 5; i++) {
        struct polis_ratelimit_decision d = rchk(rl, "k", 1);
        assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
        assert_true(d.allowed);
        assert_true(d.headers);
        assert_int_equal(d.limit, 5);
        assert_int_equal(d.remaining, 4 - i);
        assert_true(d.reset_ms <= 100 * (i + 1) && d.reset_ms + 100 >= 100 * (i + 1));
    }
    struct polis_ratelimit_decision d = rchk(rl, "k", 1);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    assert_false(d.allowed);
    assert_int_equal(d.status, 429);
    assert_true(d.headers);
    assert_int_equal(d.remaining, 0);
    assert_true(d.retry_after_ms >= 1 && d.retry_after_ms <= 100);
    assert_true(d.reset_ms > 400 && d.reset_ms <= 500);
    /* Waiting retry_after is enough. */
    sleep_ms((unsigned)d.retry_after_ms);
    d = rchk(rl, "k", 1);
    assert_true(d.allowed);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);

    /* A second policy name is a second namespace. */
    struct polis_ratelimit *rl2 = mk_redis(r, "basic2", 10, 1000, 5, POLIS_RATELIMIT_FAIL_OPEN);
    assert_int_equal(rchk(rl2, "k", 1).remaining, 4);

    /* The stored value and its expiry: "ms:frac:r" that lives until the TAT. */
    redisContext *c = raw_connect();
    assert_non_null(c);
    redisReply *rep = redisCommand(c, "GET polis:rl:basic:=k");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    unsigned long long ms, frac, rr;
    char tail;
    assert_int_equal(sscanf(rep->str, "%llu:%llu:%llu%c", &ms, &frac, &rr, &tail), 3);
    assert_int_equal(rr, 1); /* 10 per 1000 ms: units of 100 ms... r = 10/10 = 1 unit per ms */
    freeReplyObject(rep);
    rep = redisCommand(c, "PTTL polis:rl:basic:=k");
    assert_true(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0 && rep->integer <= 501);
    freeReplyObject(rep);
    redisFree(c);

    struct polis_ratelimit_stats st;
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.decisions, 7);
    assert_int_equal(st.denied, 1);
    assert_int_equal(st.fallback, 0);
    assert_int_equal(st.redis_errors, 0);
    assert_int_equal(st.keys, 0); /* no local table for fail-open */
    struct polis_ratelimit_redis_stats rs;
    polis__ratelimit_redis_stats(r, &rs);
    assert_true(rs.up);
    assert_int_equal(rs.connects, 1); /* one thread: one pooled connection */
    assert_int_equal(rs.connections, 1);
    assert_int_equal(rs.errors, 0);
    polis__ratelimit_free(rl2);
    polis__ratelimit_free(rl);
    polis__ratelimit_redis_free(r);
}

/* Binary bytes in keys reach Redis intact; long keys are stored as their SHA-256. */
static void test_redis_binary_keys(void **state)
{
    (void)state;
    struct polis_ratelimit_redis *r = mk_store(1000, 200);
    struct polis_ratelimit *rl = mk_redis(r, "bin", 1, 60000, 2, POLIS_RATELIMIT_FAIL_CLOSED);
    const char k1[] = "k\0a\r\n\xff", k2[] = "k\0b\r\n\xff";
    char lk[200];
    memset(lk, 0, sizeof(lk));
    lk[199] = 1;
    const void *keys[] = {k1, k2, lk};
    size_t lens[] = {sizeof(k1) - 1, sizeof(k2) - 1, sizeof(lk)};
    for (int i = 0; i < 3; i++) {
        assert_true(rchk(rl, keys[i], lens[i]).allowed);
        assert_true(rchk(rl, keys[i], lens[i]).allowed);
        struct polis_ratelimit_decision d = rchk(rl, keys[i], lens[i]);
        assert_false(d.allowed);
        assert_int_equal(d.status, 429);
        assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    }
    redisContext *c = raw_connect();
    assert_non_null(c);
    char name[128];
    memcpy(name, "polis:rl:bin:=", 14);
    memcpy(name + 14, k1, sizeof(k1) - 1);
    redisReply *rep = redisCommand(c, "EXISTS %b", name, (size_t)14 + sizeof(k1) - 1);
    assert_true(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1);
    freeReplyObject(rep);
    unsigned char dg[32];
    unsigned int dn = 0;
    assert_int_equal(EVP_Digest(lk, sizeof(lk), dg, &dn, EVP_sha256(), NULL), 1);
    memcpy(name, "polis:rl:bin:#", 14);
    memcpy(name + 14, dg, 32);
    rep = redisCommand(c, "EXISTS %b", name, (size_t)14 + 32);
    assert_true(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1);
    freeReplyObject(rep);
    redisFree(c);
    polis__ratelimit_free(rl);
    polis__ratelimit_redis_free(r);
}

/* SCRIPT FLUSH (or a restart) loses the script: EVAL takes over, no error is seen. */
static void test_redis_noscript(void **state)
{
    (void)state;
    struct polis_ratelimit_redis *r = mk_store(1000, 200);
    struct polis_ratelimit *rl =
        mk_redis(r, "noscript", 100, 60000, 100, POLIS_RATELIMIT_FAIL_OPEN);
    assert_int_equal(rchk(rl, "k", 1).source, POLIS_RATELIMIT_SRC_REDIS);
    redisContext *c = raw_connect();
    assert_non_null(c);
    freeReplyObject(redisCommand(c, "SCRIPT FLUSH"));
    struct polis_ratelimit_decision d = rchk(rl, "k", 1);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    assert_int_equal(d.remaining, 98);
    struct polis_ratelimit_stats st;
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.redis_errors, 0);
    /* A foreign value under the key: an error reply, which falls back (fail-open) and counts. */
    freeReplyObject(redisCommand(c, "HSET polis:rl:noscript:=bad f v"));
    d = rchk(rl, "bad", 3);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_FAIL_OPEN);
    polis__ratelimit_stats(rl, &st);
    assert_int_equal(st.redis_errors, 1);
    assert_int_equal(st.fallback, 1);
    struct polis_ratelimit_redis_stats rs;
    polis__ratelimit_redis_stats(r, &rs);
    assert_true(rs.up); /* Redis is reachable: not an outage */
    assert_int_equal(rchk(rl, "k", 1).source, POLIS_RATELIMIT_SRC_REDIS);
    redisFree(c);
    polis__ratelimit_free(rl);
    polis__ratelimit_redis_free(r);
}

/* A policy changed under a running gateway (another rate, so other units): the TAT in Redis
 * keeps its meaning, its fraction rescaled. And the caller's clock plays no part in Redis. */
static void test_redis_policy_change(void **state)
{
    (void)state;
    struct polis_ratelimit_redis *r = mk_store(1000, 200);
    /* 999 per second: units of 1/999 ms, so 300 requests leave a TAT 300 + 300/999 ms ahead. */
    struct polis_ratelimit *a = mk_redis(r, "policy", 999, 1000, 1000, POLIS_RATELIMIT_FAIL_OPEN);
    struct polis_ratelimit_decision d;
    for (int i = 0; i < 300; i++)
        assert_true(polis__ratelimit_check(a, "k", 1, 0, &d)); /* a caller time of 0: unused */
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    /* Now 1 per second with a bucket of 10: the TAT is about 300 ms ahead (less the time the
     * requests took), one request adds 1000 ms. Without rescaling, the fraction (300/999 ms)
     * would be read as 300 whole ms. */
    struct polis_ratelimit *b = mk_redis(r, "policy", 1, 1000, 10, POLIS_RATELIMIT_FAIL_OPEN);
    assert_true(polis__ratelimit_check(b, "k", 1, UINT64_C(1) << 40, &d));
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    assert_int_equal(d.remaining, 8);
    assert_true(d.reset_ms <= 1301);
    assert_true(d.reset_ms > 1000);
    polis__ratelimit_free(a);
    polis__ratelimit_free(b);
    polis__ratelimit_redis_free(r);
}

/* Two "gateways" (two connection pools, two limiters of the same policy), one thread each,
 * hammering one key for a second: together they stay within burst + rate * time on Redis'
 * clock, and get close to it. Prints the cost of a Redis decision. */
struct gw {
    struct polis_ratelimit *rl;
    uint64_t allowed, calls, redis;
    uint64_t stop_at;
};

static void *gw_run(void *arg)
{
    struct gw *g = arg;
    struct polis_ratelimit_decision d;
    while (now_ms() < g->stop_at) {
        g->calls++;
        g->allowed += polis__ratelimit_check(g->rl, "consumer-1", 10, now_ms(), &d);
        g->redis += d.source == POLIS_RATELIMIT_SRC_REDIS;
    }
    return NULL;
}

static void test_redis_two_gateways(void **state)
{
    (void)state;
    const uint32_t rate = 200, burst = 20;
    struct polis_ratelimit_redis *r1 = mk_store(1000, 200), *r2 = mk_store(1000, 200);
    struct gw g[2] = {
        {.rl = mk_redis(r1, "shared", rate, 1000, burst, POLIS_RATELIMIT_FAIL_OPEN)},
        {.rl = mk_redis(r2, "shared", rate, 1000, burst, POLIS_RATELIMIT_FAIL_OPEN)},
    };
    /* Alone, one gateway would allow the whole burst: together they share it. */
    uint64_t t0 = redis_time_ms();
    g[0].stop_at = g[1].stop_at = now_ms() + 1000;
    pthread_t th[2];
    uint64_t n0 = now_ns();
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, gw_run, &g[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    uint64_t el = now_ns() - n0;
    uint64_t t1 = redis_time_ms();
    uint64_t allowed = g[0].allowed + g[1].allowed, calls = g[0].calls + g[1].calls;
    uint64_t bound = burst + (t1 - t0) * rate / 1000;
    printf("ratelimit: redis, 2 gateways x 1 thread: %" PRIu64 " calls, %.1f us per decision "
           "per thread, allowed %" PRIu64 " + %" PRIu64 " = %" PRIu64 " (bound %" PRIu64 ")\n",
           calls, (double)el / 1000.0 / ((double)calls / 2), g[0].allowed, g[1].allowed, allowed,
           bound);
    assert_int_equal(g[0].redis, g[0].calls);
    assert_int_equal(g[1].redis, g[1].calls);
    assert_true(allowed <= bound);
    assert_true(allowed * 100 >= bound * 95); /* and close to it: within 5% */
    assert_true(g[0].allowed > 0 && g[1].allowed > 0);

    /* Sequential cost on one connection. */
    struct polis_ratelimit_decision d;
    const int n = 2000;
    n0 = now_ns();
    for (int i = 0; i < n; i++)
        polis__ratelimit_check(g[0].rl, "cost", 4, now_ms(), &d);
    el = now_ns() - n0;
    printf("ratelimit: redis, one thread: %.1f us per decision (EVALSHA round trip)\n",
           (double)el / 1000.0 / n);
    for (int i = 0; i < 2; i++)
        polis__ratelimit_free(g[i].rl);
    polis__ratelimit_redis_free(r1);
    polis__ratelimit_redis_free(r2);
}

/* Redis killed mid-test: fail-open allows, fail-closed denies with 503, local applies the limit
 * per gateway; calls do not block while down and probes are spaced by retry_ms; once Redis is
 * back, decisions return to it within the retry interval. */
static void test_redis_outage(void **state)
{
    (void)state;
    const uint32_t retry = 300;
    struct polis_ratelimit_redis *r1 = mk_store(1000, retry), *r2 = mk_store(1000, retry);
    /* 3 per minute: nothing comes back during the test. */
    struct polis_ratelimit *op = mk_redis(r1, "o", 3, 60000, 3, POLIS_RATELIMIT_FAIL_OPEN);
    struct polis_ratelimit *cl = mk_redis(r1, "c", 3, 60000, 3, POLIS_RATELIMIT_FAIL_CLOSED);
    struct polis_ratelimit *lo1 = mk_redis(r1, "l", 3, 60000, 3, POLIS_RATELIMIT_FAIL_LOCAL);
    struct polis_ratelimit *lo2 = mk_redis(r2, "l", 3, 60000, 3, POLIS_RATELIMIT_FAIL_LOCAL);
    assert_int_equal(rchk(op, "k", 1).source, POLIS_RATELIMIT_SRC_REDIS);
    assert_int_equal(rchk(cl, "k", 1).source, POLIS_RATELIMIT_SRC_REDIS);
    struct polis_ratelimit_decision d = rchk(lo1, "k", 1);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    assert_int_equal(d.remaining, 2);
    d = rchk(lo2, "k", 1);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    assert_int_equal(d.remaining, 1); /* one bucket for both gateways */

    redis_kill();

    d = rchk(op, "k", 1); /* finds out: EOF, then refused */
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_FAIL_OPEN);
    assert_true(d.allowed);
    assert_false(d.headers);
    assert_int_equal(d.status, 0);
    struct polis_ratelimit_redis_stats rs;
    polis__ratelimit_redis_stats(r1, &rs);
    assert_false(rs.up);
    assert_int_equal(rs.outages, 1);
    assert_int_equal(rs.connections, 0);

    d = rchk(cl, "k", 1);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_FAIL_CLOSED);
    assert_false(d.allowed);
    assert_false(d.headers);
    assert_int_equal(d.status, 503);
    assert_true(d.retry_after_ms >= 1 && d.retry_after_ms <= retry);

    /* Local: each gateway applies the limit alone (a full bucket of 3 each). */
    for (int i = 0; i < 3; i++) {
        d = rchk(lo1, "k", 1);
        assert_int_equal(d.source, POLIS_RATELIMIT_SRC_FAIL_LOCAL);
        assert_true(d.allowed);
        assert_true(d.headers);
        assert_int_equal(d.remaining, 2 - i);
    }
    d = rchk(lo1, "k", 1);
    assert_false(d.allowed);
    assert_int_equal(d.status, 429);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_FAIL_LOCAL);
    for (int i = 0; i < 3; i++) { /* r2 has not seen the outage yet: its first call probes */
        d = rchk(lo2, "k", 1);
        assert_int_equal(d.source, POLIS_RATELIMIT_SRC_FAIL_LOCAL);
        assert_true(d.allowed);
    }
    assert_false(rchk(lo2, "k", 1).allowed);

    /* While down, calls do not touch the network; one probe per retry interval. */
    polis__ratelimit_redis_stats(r1, &rs);
    uint64_t connects = rs.connects;
    uint64_t t0 = now_ms(), calls = 0;
    while (now_ms() - t0 < 1000) {
        uint64_t c0 = now_ns();
        d = rchk(op, "k", 1);
        assert_int_equal(d.source, POLIS_RATELIMIT_SRC_FAIL_OPEN);
        assert_true(now_ns() - c0 < 100 * 1000000ull); /* a refused connect at most */
        calls++;
        sleep_ms(1);
    }
    polis__ratelimit_redis_stats(r1, &rs);
    printf("ratelimit: redis down: %" PRIu64 " calls in 1 s, %" PRIu64 " connect attempts\n", calls,
           rs.connects - connects);
    assert_true(rs.connects - connects >= 2);
    assert_true(rs.connects - connects <= 1000 / retry + 1);
    struct polis_ratelimit_stats st;
    polis__ratelimit_stats(op, &st);
    assert_int_equal(st.fallback, calls + 1);
    assert_true(st.redis_errors >= 1);
    polis__ratelimit_stats(cl, &st);
    assert_int_equal(st.denied, 1);
    assert_int_equal(st.fallback, 1);

    /* Back: decisions return to Redis within the retry interval. */
    assert_int_equal(redis_start(), 0);
    uint64_t back = now_ms(), took = 0;
    for (;;) {
        d = rchk(op, "k", 1);
        if (d.source == POLIS_RATELIMIT_SRC_REDIS)
            break;
        took = now_ms() - back;
        assert_true(took <= retry + 500);
        sleep_ms(5);
    }
    took = now_ms() - back;
    printf("ratelimit: redis back: decisions in Redis again after %" PRIu64 " ms (retry %u)\n",
           took, retry);
    assert_true(d.allowed && d.headers);
    polis__ratelimit_redis_stats(r1, &rs);
    assert_true(rs.up);
    assert_int_equal(rs.outages, 1);
    /* The whole pool is back: the other policies on it too; r2 on its own probe. */
    assert_int_equal(rchk(cl, "k", 1).source, POLIS_RATELIMIT_SRC_REDIS);
    /* r2 probes on its own; Redis lost its data (no persistence): the bucket starts full. */
    d = rchk(lo2, "k", 1);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    assert_int_equal(d.remaining, 2);
    d = rchk(lo1, "k", 1);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    assert_int_equal(d.remaining, 1); /* shared again, not the local buckets (both empty) */

    polis__ratelimit_free(op);
    polis__ratelimit_free(cl);
    polis__ratelimit_free(lo1);
    polis__ratelimit_free(lo2);
    polis__ratelimit_redis_free(r1);
    polis__ratelimit_redis_free(r2);
}

/* Redis frozen (SIGSTOP): a decision waits at most about the timeout, then falls back; later
 * calls fall back without waiting; after SIGCONT, Redis decides again. */
static void test_redis_timeout(void **state)
{
    (void)state;
    const uint32_t timeout = 50, retry = 300;
    struct polis_ratelimit_redis *r = mk_store(timeout, retry);
    struct polis_ratelimit *rl = mk_redis(r, "frozen", 100, 1000, 100, POLIS_RATELIMIT_FAIL_LOCAL);
    assert_int_equal(rchk(rl, "k", 1).source, POLIS_RATELIMIT_SRC_REDIS);
    assert_int_equal(kill(R.pid, SIGSTOP), 0);
    uint64_t t0 = now_ms();
    struct polis_ratelimit_decision d = rchk(rl, "k", 1);
    uint64_t el = now_ms() - t0;
    printf("ratelimit: redis frozen: the first decision took %" PRIu64 " ms (timeout %u)\n", el,
           timeout);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_FAIL_LOCAL);
    assert_true(el >= timeout - 5);
    assert_true(el <= timeout + 250);
    t0 = now_ms();
    for (int i = 0; i < 100; i++)
        assert_int_equal(rchk(rl, "k", 1).source, POLIS_RATELIMIT_SRC_FAIL_LOCAL);
    assert_true(now_ms() - t0 < 50);
    /* A probe after retry_ms connects (the kernel accepts) but times out: one timeout more. */
    sleep_ms(retry);
    t0 = now_ms();
    assert_int_equal(rchk(rl, "k", 1).source, POLIS_RATELIMIT_SRC_FAIL_LOCAL);
    el = now_ms() - t0;
    assert_true(el <= 2 * timeout + 250);
    assert_int_equal(kill(R.pid, SIGCONT), 0);
    sleep_ms(retry + 10);
    d = rchk(rl, "k", 1);
    assert_int_equal(d.source, POLIS_RATELIMIT_SRC_REDIS);
    struct polis_ratelimit_redis_stats rs;
    polis__ratelimit_redis_stats(r, &rs);
    assert_true(rs.up);
    assert_int_equal(rs.outages, 1);
    polis__ratelimit_free(rl);
    polis__ratelimit_redis_free(r);
}

int main(void)
{
    const struct CMUnitTest local[] = {
        cmocka_unit_test(test_new_rejects),
        cmocka_unit_test(test_burst_then_steady),
        cmocka_unit_test(test_fractional_interval),
        cmocka_unit_test(test_against_model),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_threads_exact),
        cmocka_unit_test(test_threads_hammer),
        cmocka_unit_test(test_eviction),
        cmocka_unit_test(test_table_bound),
        cmocka_unit_test(test_local_cost),
    };
    const struct CMUnitTest redis[] = {
        cmocka_unit_test(test_redis_basic),        cmocka_unit_test(test_redis_binary_keys),
        cmocka_unit_test(test_redis_noscript),     cmocka_unit_test(test_redis_policy_change),
        cmocka_unit_test(test_redis_two_gateways), cmocka_unit_test(test_redis_outage),
        cmocka_unit_test(test_redis_timeout),
    };
    int failed = cmocka_run_group_tests_name("ratelimit_local", local, NULL, NULL);
    failed += cmocka_run_group_tests_name("ratelimit_redis", redis, redis_setup, redis_teardown);
    return failed;
}
