/* Unit tests of lib/observe/metrics.c: families, series, shards, pages, the hot path, rendering. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <polis/metrics.h>

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The text of a render, NUL-terminated; the caller frees it. */
static char *render(struct polis_metrics *m)
{
    struct polis_buf b;
    polis_buf_init(&b, 64u << 20);
    assert_int_equal(polis_metrics_render(m, &b), 0);
    size_t n = polis_buf_len(&b);
    char *s = malloc(n + 1);
    assert_non_null(s);
    if (n > 0)
        memcpy(s, polis_buf_head(&b), n);
    s[n] = '\0';
    polis_buf_free(&b);
    return s;
}

/* The value on the line that starts with `series ` in text, or -1 when absent. */
static long long value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtoll(p + n + 1, NULL, 10);
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return -1;
}

/* The neighbouring double of finite x towards +Inf (dir > 0) or -Inf (dir < 0); nextafter()
 * without libm, which libpolis does not link. */
static double step(double x, int dir)
{
    uint64_t u;
    if (x == 0) {
        u = dir > 0 ? 1 : 0x8000000000000001ull;
    } else {
        memcpy(&u, &x, sizeof(u));
        u = ((x > 0) == (dir > 0)) ? u + 1 : u - 1;
    }
    memcpy(&x, &u, sizeof(x));
    return x;
}

static void empty_registry_renders_nothing(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    assert_non_null(m);
    char *s = render(m);
    assert_string_equal(s, "");
    free(s);
    /* A shard without any page is fine too. */
    assert_non_null(polis_metrics_shard_new(m));
    s = render(m);
    assert_string_equal(s, "");
    free(s);
    polis_metrics_free(m);
}

/* ---- Concurrency: 4 writer threads, one scraper ------------------------------------------- */

#define WRITES 1000000

struct scraper {
    struct polis_metrics *m;
    _Atomic(bool) stop;
    _Atomic(int) halfway;      /* writers that have done half their increments */
    _Atomic(long long) paused; /* renders made while every writer waited at halfway */
    long long renders, decreases, bad, at_half;
};

struct writer {
    struct polis_metrics_shard *shard;
    uint32_t slot;
    struct scraper *sc;
};

/* Half the increments, a pause until the scraper has rendered the halfway state a few times
 * (so some renders surely see an intermediate total), then the rest. */
static void *write_counter(void *arg)
{
    struct writer *w = arg;
    for (int i = 0; i < WRITES / 2; i++)
        polis_counter_add(w->shard, w->slot, 1);
    atomic_fetch_add(&w->sc->halfway, 1);
    while (atomic_load(&w->sc->paused) < 3)
        sched_yield();
    for (int i = WRITES / 2; i < WRITES; i++)
        polis_counter_add(w->shard, w->slot, 1);
    return NULL;
}

static void *scrape(void *arg)
{
    struct scraper *sc = arg;
    long long last = 0;
    while (!atomic_load(&sc->stop)) {
        bool all_paused = atomic_load(&sc->halfway) == 4 && atomic_load(&sc->paused) < 3;
        struct polis_buf b;
        polis_buf_init(&b, 1u << 20);
        if (polis_metrics_render(sc->m, &b) != 0 || polis_buf_append(&b, "", 1) != 0) {
            sc->bad++;
            polis_buf_free(&b);
            continue;
        }
        long long v = value_of(polis_buf_head(&b), "requests_total");
        polis_buf_free(&b);
        if (v < 0 || v > 4LL * WRITES)
            sc->bad++;
        if (v < last)
            sc->decreases++;
        last = v;
        sc->renders++;
        if (all_paused) {
            if (v == 2LL * WRITES)
                sc->at_half++;
            atomic_fetch_add(&sc->paused, 1);
        }
    }
    return NULL;
}

static void counter_sums_shards_written_concurrently(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    struct polis_metric *f =
        polis_metrics_family(m, POLIS_METRIC_COUNTER, "requests_total", "Requests.", NULL, NULL, 0);
    assert_non_null(f);
    uint32_t slot;
    assert_int_equal(polis_metric_series(f, NULL, &slot), 0);

    struct writer w[4];
    pthread_t t[4], st;
    struct scraper sc = {.m = m};
    for (int i = 0; i < 4; i++) {
        w[i].shard = polis_metrics_shard_new(m);
        assert_non_null(w[i].shard);
        w[i].slot = slot;
        w[i].sc = &sc;
    }
    assert_int_equal(pthread_create(&st, NULL, scrape, &sc), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, write_counter, &w[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    atomic_store(&sc.stop, true);
    pthread_join(st, NULL);

    assert_int_equal(sc.bad, 0);
    assert_int_equal(sc.decreases, 0);
    assert_int_equal(sc.at_half, 3);
    assert_true(sc.renders > 3);
    char *s = render(m);
    assert_string_equal(s, "# HELP requests_total Requests.\n"
                           "# TYPE requests_total counter\n"
                           "requests_total 4000000\n");
    free(s);
    assert_int_equal(polis_metric_value(m, slot), 4 * WRITES);
    /* Each shard holds its own writer's count. */
    for (int i = 0; i < 4; i++)
        assert_int_equal(atomic_load(polis__metrics_cell(w[i].shard, slot)), WRITES);
    polis_metrics_free(m);
}

/* ---- Gauges ------------------------------------------------------------------------------- */

static void gauges_go_negative(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    const char *const labels[] = {"pool", NULL};
    struct polis_metric *f =
        polis_metrics_family(m, POLIS_METRIC_GAUGE, "conns", "Open connections.", labels, NULL, 0);
    assert_non_null(f);
    struct polis_metrics_shard *a = polis_metrics_shard_new(m), *b = polis_metrics_shard_new(m);
    uint32_t s1, s2;
    assert_int_equal(polis_metric_series(f, (const char *const[]){"a"}, &s1), 0);
    assert_int_equal(polis_metric_series(f, (const char *const[]){"b"}, &s2), 0);
    assert_int_not_equal(s1, s2);
    polis_gauge_add(a, s1, 5);
    polis_gauge_add(b, s1, -12);
    polis_gauge_add(a, s2, 3);
    polis_gauge_add(b, s2, -1);
    polis_gauge_add(b, s2, -2);
    char *s = render(m);
    assert_string_equal(s, "# HELP conns Open connections.\n"
                           "# TYPE conns gauge\n"
                           "conns{pool=\"a\"} -7\n"
                           "conns{pool=\"b\"} 0\n");
    free(s);
    assert_int_equal(polis_metric_value(m, s1), -7);
    assert_int_equal(polis_metric_value(m, s2), 0);
    assert_int_equal(polis_metric_value(m, s2 + 1000), 0); /* never handed out */
    polis_gauge_add(a, s2, INT64_MIN / 2);
    polis_gauge_add(b, s2, INT64_MIN / 2);
    s = render(m);
    char want[64];
    snprintf(want, sizeof(want), "conns{pool=\"b\"} %" PRId64 "\n", INT64_MIN);
    assert_non_null(strstr(s, want));
    free(s);
    polis_metrics_free(m);
}

/* ---- Histograms --------------------------------------------------------------------------- */

static void histogram_buckets_sum_and_count(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    const double bounds[] = {0.25, 0.5, 1};
    const char *const labels[] = {"route", NULL};
    struct polis_metric *f = polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "lat_seconds",
                                                  "Latency.", labels, bounds, 3);
    assert_non_null(f);
    struct polis_metrics_shard *a = polis_metrics_shard_new(m), *b = polis_metrics_shard_new(m);
    uint32_t slot;
    assert_int_equal(polis_metric_series(f, (const char *const[]){"/x"}, &slot), 0);
    /* At a bound: that bucket. Just above: the next one. */
    polis_histogram_observe(a, f, slot, 0.25);
    polis_histogram_observe(b, f, slot, step(0.25, -1));
    polis_histogram_observe(a, f, slot, step(0.25, 1));
    polis_histogram_observe(b, f, slot, 0.5);
    polis_histogram_observe(a, f, slot, 1);
    polis_histogram_observe(b, f, slot, 1.5);
    polis_histogram_observe(a, f, slot, 2);
    polis_histogram_observe(b, f, slot, -0.25);
    polis_histogram_observe(a, f, slot, 0);
    /* Stored non-cumulative per shard: bucket 0 of shard a holds 0.25 and 0. */
    _Atomic(uint64_t) *ca = polis__metrics_cell(a, slot);
    assert_int_equal(atomic_load(&ca[0]), 2);
    assert_int_equal(atomic_load(&ca[1]), 1);
    assert_int_equal(atomic_load(&ca[2]), 1);
    assert_int_equal(atomic_load(&ca[3]), 1); /* +Inf */
    assert_int_equal(atomic_load(&ca[4]), 5); /* count */
    char *s = render(m);
    const char *want = "# HELP lat_seconds Latency.\n"
                       "# TYPE lat_seconds histogram\n"
                       "lat_seconds_bucket{route=\"/x\",le=\"0.25\"} 4\n"
                       "lat_seconds_bucket{route=\"/x\",le=\"0.5\"} 6\n"
                       "lat_seconds_bucket{route=\"/x\",le=\"1\"} 7\n"
                       "lat_seconds_bucket{route=\"/x\",le=\"+Inf\"} 9\n"
                       "lat_seconds_sum{route=\"/x\"} ";
    assert_memory_equal(s, want, strlen(want));
    /* The sum reads back within rounding of the true sum (shards are summed in any order). */
    double got = strtod(s + strlen(want), NULL);
    assert_true(fabs(got - 5.5) < 1e-12);
    assert_int_equal(value_of(s, "lat_seconds_count{route=\"/x\"}"), 9);
    free(s);
    polis_metrics_free(m);
}

/* Exact text of a histogram with dyadic values (sums are exact), no labels. */
static void histogram_exact_text(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    const double bounds[] = {0.5, 2};
    struct polis_metric *f =
        polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "size", "Sizes.", NULL, bounds, 2);
    struct polis_metrics_shard *a = polis_metrics_shard_new(m);
    uint32_t slot;
    assert_int_equal(polis_metric_series(f, NULL, &slot), 0);
    polis_histogram_observe(a, f, slot, 0.5);
    polis_histogram_observe(a, f, slot, 0.75);
    polis_histogram_observe(a, f, slot, 4);
    char *s = render(m);
    assert_string_equal(s, "# HELP size Sizes.\n"
                           "# TYPE size histogram\n"
                           "size_bucket{le=\"0.5\"} 1\n"
                           "size_bucket{le=\"2\"} 2\n"
                           "size_bucket{le=\"+Inf\"} 3\n"
                           "size_sum 5.25\n"
                           "size_count 3\n");
    free(s);
    polis_metrics_free(m);
}

/* The standard duration buckets (linear scan) and a 40-bound histogram (binary search): every
 * bound and its neighbours land where they should, and le prints as written. */
static void check_bounds(struct polis_metrics *m, const double *bounds, size_t n, const char *name)
{
    struct polis_metric *f =
        polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, name, "h", NULL, bounds, n);
    assert_non_null(f);
    struct polis_metrics_shard *sh = polis_metrics_shard_new(m);
    uint32_t slot;
    assert_int_equal(polis_metric_series(f, NULL, &slot), 0);
    for (size_t i = 0; i < n; i++) {
        polis_histogram_observe(sh, f, slot, bounds[i]);           /* bucket i */
        polis_histogram_observe(sh, f, slot, step(bounds[i], -1)); /* bucket i */
        polis_histogram_observe(sh, f, slot, step(bounds[i], 1));  /* bucket i + 1 */
    }
    _Atomic(uint64_t) *c = polis__metrics_cell(sh, slot);
    for (size_t i = 0; i <= n; i++) {
        uint64_t want = (i == 0 ? 2 : i == n ? 1 : 3);
        if (atomic_load(&c[i]) != want)
            fail_msg("%s bucket %zu: %" PRIu64 " != %" PRIu64, name, i, atomic_load(&c[i]), want);
    }
    assert_int_equal(atomic_load(&c[n + 1]), 3 * n);
}

static void histogram_bucket_search(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    check_bounds(m, polis_duration_buckets, 14, "dur_seconds");
    double many[40];
    for (int i = 0; i < 40; i++)
        many[i] = (i - 10) * 0.25;
    check_bounds(m, many, 40, "many");
    char *s = render(m);
    /* 0.005 prints as 0.005, and cumulative counts: bucket i holds 3 * (i + 1) - 1. */
    assert_non_null(strstr(s, "dur_seconds_bucket{le=\"0.0005\"} 2\n"
                              "dur_seconds_bucket{le=\"0.001\"} 5\n"
                              "dur_seconds_bucket{le=\"0.0025\"} 8\n"
                              "dur_seconds_bucket{le=\"0.005\"} 11\n"));
    assert_non_null(strstr(s, "dur_seconds_bucket{le=\"10\"} 41\n"
                              "dur_seconds_bucket{le=\"+Inf\"} 42\n"));
    assert_non_null(strstr(s, "dur_seconds_count 42\n"));
    assert_non_null(strstr(s, "many_bucket{le=\"-2.5\"} 2\n"));
    assert_non_null(strstr(s, "many_bucket{le=\"0.25\"} 35\n"));
    free(s);
    polis_metrics_free(m);
}

/* ---- Escaping, gauge functions, ordering ------------------------------------------------- */

static void label_and_help_escaping(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    const char *const labels[] = {"path", "method", NULL};
    struct polis_metric *f = polis_metrics_family(
        m, POLIS_METRIC_COUNTER, "hits_total", "Hits \\ per\nroute \"quoted\".", labels, NULL, 0);
    assert_non_null(f);
    struct polis_metrics_shard *sh = polis_metrics_shard_new(m);
    uint32_t slot, again;
    const char *const v[] = {"a\"b\\c\nd", "", NULL};
    assert_int_equal(polis_metric_series(f, v, &slot), 0);
    assert_int_equal(polis_metric_series(f, v, &again), 0);
    assert_int_equal(slot, again);
    polis_counter_add(sh, slot, 7);
    char *s = render(m);
    assert_string_equal(s, "# HELP hits_total Hits \\\\ per\\nroute \"quoted\".\n"
                           "# TYPE hits_total counter\n"
                           "hits_total{path=\"a\\\"b\\\\c\\nd\",method=\"\"} 7\n");
    free(s);
    polis_metrics_free(m);
}

static double fixed(void *ud)
{
    return *(double *)ud;
}

static void gauge_functions_and_family_order(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    double vals[] = {1.5, NAN, INFINITY, -INFINITY, 42, -0.001};
    const char *names[] = {"g_a", "g_nan", "g_pinf", "g_minf", "g_int", "g_neg"};
    for (int i = 5; i >= 0; i--)
        assert_int_equal(polis_metrics_gauge_fn(m, names[i], "fn", fixed, &vals[i]), 0);
    assert_non_null(polis_metrics_family(m, POLIS_METRIC_COUNTER, "b_total", "", NULL, NULL, 0));
    assert_non_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, "a_gauge", "x", NULL, NULL, 0));
    char *s = render(m);
    assert_string_equal(s, "# HELP a_gauge x\n# TYPE a_gauge gauge\n"
                           "# HELP b_total \n# TYPE b_total counter\n"
                           "# HELP g_a fn\n# TYPE g_a gauge\ng_a 1.5\n"
                           "# HELP g_int fn\n# TYPE g_int gauge\ng_int 42\n"
                           "# HELP g_minf fn\n# TYPE g_minf gauge\ng_minf -Inf\n"
                           "# HELP g_nan fn\n# TYPE g_nan gauge\ng_nan NaN\n"
                           "# HELP g_neg fn\n# TYPE g_neg gauge\ng_neg -0.001\n"
                           "# HELP g_pinf fn\n# TYPE g_pinf gauge\ng_pinf +Inf\n");
    free(s);
    /* The value is computed at each scrape. */
    vals[0] = 0.1 + 0.2;
    s = render(m);
    assert_non_null(strstr(s, "g_a 0.30000000000000004\n"));
    free(s);
    polis_metrics_free(m);
}

/* ---- Pages -------------------------------------------------------------------------------- */

/* More than two pages of series: an old shard gets the new pages; a new shard gets them all. */
static void series_on_later_pages(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    struct polis_metrics_shard *old = polis_metrics_shard_new(m);
    const char *const labels[] = {"id", NULL};
    struct polis_metric *f =
        polis_metrics_family(m, POLIS_METRIC_COUNTER, "items_total", "i", labels, NULL, 0);
    enum { N = 9000 };
    static uint32_t slots[N];
    char id[16];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "%d", i);
        assert_int_equal(polis_metric_series(f, (const char *const[]){id}, &slots[i]), 0);
        if (i > 0)
            assert_true(slots[i] > slots[i - 1]); /* monotonic */
    }
    assert_true(slots[N - 1] >= 2 * POLIS_METRICS_PAGE_SLOTS);
    /* A histogram after them: its series stays within one page. */
    struct polis_metric *h = polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "late", "l", NULL,
                                                  polis_duration_buckets, 14);
    uint32_t hs;
    assert_int_equal(polis_metric_series(h, NULL, &hs), 0);
    assert_int_equal(hs / POLIS_METRICS_PAGE_SLOTS, (hs + 16) / POLIS_METRICS_PAGE_SLOTS);
    struct polis_metrics_shard *young = polis_metrics_shard_new(m);
    for (int i = 0; i < N; i++) {
        polis_counter_add(old, slots[i], (uint64_t)i);
        polis_counter_add(young, slots[i], 1);
    }
    polis_histogram_observe(old, h, hs, 0.003);
    polis_histogram_observe(young, h, hs, 20);
    /* Lookups of existing series find the same slots. */
    uint32_t again;
    assert_int_equal(polis_metric_series(f, (const char *const[]){"8999"}, &again), 0);
    assert_int_equal(again, slots[8999]);
    char *s = render(m);
    assert_int_equal(value_of(s, "items_total{id=\"0\"}"), 1);
    assert_int_equal(value_of(s, "items_total{id=\"4096\"}"), 4097);
    assert_int_equal(value_of(s, "items_total{id=\"8999\"}"), 9000);
    assert_int_equal(polis_metric_value(m, slots[8999]), 9000);
    assert_int_equal(value_of(s, "late_bucket{le=\"0.005\"}"), 1);
    assert_int_equal(value_of(s, "late_bucket{le=\"+Inf\"}"), 2);
    assert_int_equal(value_of(s, "late_count"), 2);
    /* Creation order: id 10 comes after id 9. */
    assert_true(strstr(s, "{id=\"9\"}") < strstr(s, "{id=\"10\"}"));
    free(s);
    polis_metrics_free(m);
}

/* Once every page is taken, new series fail with POLIS_ETOOBIG and old ones still work. */
static void pages_run_out(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    double b[64];
    for (int i = 0; i < 64; i++)
        b[i] = i;
    const char *const labels[] = {"n", NULL};
    struct polis_metric *f =
        polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "big", "b", labels, b, 64);
    assert_non_null(f);
    uint32_t slot, first = 0;
    int rc = 0, n = 0;
    char id[16];
    while (rc == 0) {
        snprintf(id, sizeof(id), "%d", n);
        rc = polis_metric_series(f, (const char *const[]){id}, &slot);
        if (rc == 0 && n++ == 0)
            first = slot;
    }
    assert_int_equal(rc, POLIS_ETOOBIG);
    /* 61 series of 67 slots fit in a page of 4096. */
    assert_int_equal(n, 61 * POLIS_METRICS_MAX_PAGES);
    struct polis_metrics_shard *sh = polis_metrics_shard_new(m);
    assert_non_null(sh);
    polis_histogram_observe(sh, f, first, 100);
    polis_histogram_observe(sh, f, slot, 0); /* the last series */
    assert_int_equal(polis_metric_series(f, (const char *const[]){"0"}, &slot), 0);
    assert_int_equal(slot, first);
    /* The last page still has 4096 - 61 * 67 = 9 slots for one-slot series. */
    const char *const kl[] = {"k", NULL};
    struct polis_metric *c =
        polis_metrics_family(m, POLIS_METRIC_COUNTER, "more_total", "", kl, NULL, 0);
    int made = 0;
    for (;;) {
        snprintf(id, sizeof(id), "k%d", made);
        rc = polis_metric_series(c, (const char *const[]){id}, &slot);
        if (rc != 0)
            break;
        made++;
    }
    assert_int_equal(rc, POLIS_ETOOBIG);
    assert_int_equal(made, 9);
    assert_int_equal(slot, POLIS_METRICS_PAGE_SLOTS * POLIS_METRICS_MAX_PAGES - 1);
    polis_metrics_free(m);
}

/* ---- Validation --------------------------------------------------------------------------- */

static void invalid_names_rejected(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    const char *bad[] = {"", "1abc", "a-b", "a b", "caf\xc3\xa9", "a.b", "x{"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, bad[i], "", NULL, NULL, 0));
        assert_int_equal(polis_metrics_gauge_fn(m, bad[i], "", fixed, NULL), POLIS_EINVAL);
    }
    assert_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, NULL, "", NULL, NULL, 0));
    assert_non_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, "ns:sub_x1", "", NULL, NULL, 0));
    assert_non_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, ":x", "", NULL, NULL, 0));
    assert_non_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, "_x", "", NULL, NULL, 0));
    /* Counters end in _total. */
    assert_null(polis_metrics_family(m, POLIS_METRIC_COUNTER, "requests", "", NULL, NULL, 0));

    const char *const bad_labels[][3] = {{"__x", NULL},
                                         {"1a", NULL},
                                         {"a-b", NULL},
                                         {"a:b", NULL},
                                         {"", NULL},
                                         {"a", "a", NULL},
                                         {"ok", "__reserved", NULL}};
    for (size_t i = 0; i < sizeof(bad_labels) / sizeof(bad_labels[0]); i++)
        assert_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, "lbl", "", bad_labels[i], NULL, 0));
    const char *const good[] = {"_a", "b2", "A_b", NULL};
    assert_non_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, "lbl", "", good, NULL, 0));

    /* Histograms: no "le" label; ascending finite bounds, at most 64. */
    const char *const le[] = {"le", NULL};
    const double ok[] = {1, 2}, down[] = {2, 1}, same[] = {1, 1}, nan[] = {1, NAN},
                 inf[] = {1, INFINITY};
    assert_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", le, ok, 2));
    assert_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, down, 2));
    assert_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, same, 2));
    assert_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, nan, 2));
    assert_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, inf, 2));
    assert_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, NULL, 2));
    double many[65];
    for (int i = 0; i < 65; i++)
        many[i] = i;
    assert_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, many, 65));
    assert_non_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h64", "", NULL, many, 64));
    /* Buckets only for histograms. */
    assert_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, "g", "", NULL, ok, 2));
    assert_int_equal(polis_metrics_gauge_fn(m, "fn", "", NULL, NULL), POLIS_EINVAL);

    /* Series: as many values as label names, none NULL. */
    struct polis_metric *f = polis_metrics_family(m, POLIS_METRIC_GAUGE, "two", "",
                                                  (const char *const[]){"a", "b", NULL}, NULL, 0);
    uint32_t slot;
    assert_int_equal(polis_metric_series(f, NULL, &slot), POLIS_EINVAL);
    assert_int_equal(polis_metric_series(f, (const char *const[]){"x", NULL}, &slot), POLIS_EINVAL);
    /* Values are not confused by where one ends and the next starts. */
    uint32_t s1, s2;
    assert_int_equal(polis_metric_series(f, (const char *const[]){"ab", "c"}, &s1), 0);
    assert_int_equal(polis_metric_series(f, (const char *const[]){"a", "bc"}, &s2), 0);
    assert_int_not_equal(s1, s2);
    polis_metrics_free(m);
}

static void duplicate_family_rules(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    const char *const ab[] = {"a", "b", NULL}, *const ba[] = {"b", "a", NULL},
                      *const a[] = {"a", NULL};
    struct polis_metric *f =
        polis_metrics_family(m, POLIS_METRIC_COUNTER, "x_total", "first", ab, NULL, 0);
    assert_non_null(f);
    assert_ptr_equal(polis_metrics_family(m, POLIS_METRIC_COUNTER, "x_total", "other", ab, NULL, 0),
                     f);
    assert_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, "x_total", "", ab, NULL, 0));
    assert_null(polis_metrics_family(m, POLIS_METRIC_COUNTER, "x_total", "", ba, NULL, 0));
    assert_null(polis_metrics_family(m, POLIS_METRIC_COUNTER, "x_total", "", a, NULL, 0));
    assert_null(polis_metrics_family(m, POLIS_METRIC_COUNTER, "x_total", "", NULL, NULL, 0));

    const double b1[] = {1, 2}, b2[] = {1, 3};
    struct polis_metric *h = polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, b1, 2);
    assert_ptr_equal(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, b1, 2), h);
    assert_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, b2, 2));
    assert_null(polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "h", "", NULL, b1, 1));

    /* Gauge functions share the name space and are never "the same". */
    static double one = 1;
    assert_int_equal(polis_metrics_gauge_fn(m, "up", "", fixed, &one), 0);
    assert_int_equal(polis_metrics_gauge_fn(m, "up", "", fixed, &one), POLIS_EINVAL);
    assert_int_equal(polis_metrics_gauge_fn(m, "h", "", fixed, &one), POLIS_EINVAL);
    assert_null(polis_metrics_family(m, POLIS_METRIC_GAUGE, "up", "", NULL, NULL, 0));

    /* A repeat keeps the first help text and the series. */
    uint32_t s1, s2;
    assert_int_equal(polis_metric_series(f, (const char *const[]){"1", "2"}, &s1), 0);
    f = polis_metrics_family(m, POLIS_METRIC_COUNTER, "x_total", "again", ab, NULL, 0);
    assert_int_equal(polis_metric_series(f, (const char *const[]){"1", "2"}, &s2), 0);
    assert_int_equal(s1, s2);
    char *s = render(m);
    assert_non_null(strstr(s, "# HELP x_total first\n"));
    free(s);
    polis_metrics_free(m);
}

/* ---- A registry of every kind, for promtool (tests/e2e/test_promtool.py) ------------------ */

static double half(void *ud)
{
    return 0.5;
}

static double nan_fn(void *ud)
{
    return NAN;
}

static void dump_every_kind(void **state)
{
    struct polis_metrics *m = polis_metrics_new();
    struct polis_metrics_shard *a = polis_metrics_shard_new(m), *b = polis_metrics_shard_new(m);
    uint32_t slot;

    struct polis_metric *f = polis_metrics_family(m, POLIS_METRIC_COUNTER, "polis_up_total",
                                                  "Starts \\ with\nnewline.", NULL, NULL, 0);
    assert_int_equal(polis_metric_series(f, NULL, &slot), 0);
    polis_counter_add(a, slot, 3);
    polis_counter_add(b, slot, 4);

    const char *const rl[] = {"route", "code", NULL};
    f = polis_metrics_family(m, POLIS_METRIC_COUNTER, "polis_requests_total", "Requests.", rl, NULL,
                             0);
    const char *vals[][2] = {{"/a", "200"},
                             {"quote\"q", "500"},
                             {"back\\slash", "404"},
                             {"new\nline", "200"},
                             {"", "0"}};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(polis_metric_series(f, vals[i], &slot), 0);
        polis_counter_add(i % 2 ? a : b, slot, (uint64_t)i * 10);
    }

    const char *const pl[] = {"pool", NULL};
    f = polis_metrics_family(m, POLIS_METRIC_GAUGE, "polis_connections", "Open.", pl, NULL, 0);
    assert_int_equal(polis_metric_series(f, (const char *const[]){"main"}, &slot), 0);
    polis_gauge_add(a, slot, -5);
    polis_gauge_add(b, slot, 2);
    assert_int_equal(polis_metric_series(f, (const char *const[]){"idle"}, &slot), 0);
    polis_gauge_add(a, slot, 9);

    f = polis_metrics_family(m, POLIS_METRIC_GAUGE, "polis_empty", "No series.", NULL, NULL, 0);
    assert_non_null(f);

    const char *const ml[] = {"method", NULL};
    f = polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "polis_request_duration_seconds",
                             "Durations.", ml, polis_duration_buckets, 14);
    assert_int_equal(polis_metric_series(f, (const char *const[]){"GET"}, &slot), 0);
    for (int i = 0; i < 100; i++)
        polis_histogram_observe(i % 2 ? a : b, f, slot, i * 0.0031);
    assert_int_equal(polis_metric_series(f, (const char *const[]){"P\"O\\S\nT"}, &slot), 0);
    polis_histogram_observe(a, f, slot, 11);

    const double sizes[] = {100, 1000, 10000};
    f = polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "polis_body_bytes", "Bodies.", NULL, sizes,
                             3);
    assert_int_equal(polis_metric_series(f, NULL, &slot), 0);
    polis_histogram_observe(b, f, slot, 512);

    assert_int_equal(polis_metrics_gauge_fn(m, "polis_load_ratio", "Load.", half, NULL), 0);
    assert_int_equal(polis_metrics_gauge_fn(m, "polis_unknown_ratio", "NaN.", nan_fn, NULL), 0);

    char *s = render(m);
    assert_non_null(strstr(s, "polis_connections{pool=\"main\"} -3\n"));
    assert_non_null(strstr(s, "polis_requests_total{route=\"new\\nline\",code=\"200\"} 30\n"));
    assert_non_null(strstr(s, "polis_request_duration_seconds_count{method=\"GET\"} 100\n"));
    assert_non_null(strstr(s, "# HELP polis_up_total Starts \\\\ with\\nnewline.\n"));
    const char *path = getenv("POLIS_METRICS_DUMP");
    if (path != NULL && *path != '\0') {
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        assert_int_equal(fwrite(s, 1, strlen(s), fp), strlen(s));
        assert_int_equal(fclose(fp), 0);
    }
    free(s);
    polis_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(empty_registry_renders_nothing),
        cmocka_unit_test(counter_sums_shards_written_concurrently),
        cmocka_unit_test(gauges_go_negative),
        cmocka_unit_test(histogram_buckets_sum_and_count),
        cmocka_unit_test(histogram_exact_text),
        cmocka_unit_test(histogram_bucket_search),
        cmocka_unit_test(label_and_help_escaping),
        cmocka_unit_test(gauge_functions_and_family_order),
        cmocka_unit_test(series_on_later_pages),
        cmocka_unit_test(pages_run_out),
        cmocka_unit_test(invalid_names_rejected),
        cmocka_unit_test(duplicate_family_rules),
        cmocka_unit_test(dump_every_kind),
    };
    /* With POLIS_METRICS_DUMP set, only write the sample exposition (for promtool). */
    const char *dump = getenv("POLIS_METRICS_DUMP");
    if (dump != NULL && *dump != '\0')
        cmocka_set_test_filter("dump_every_kind");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
