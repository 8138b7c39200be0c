/* polis/metrics.h: Prometheus metrics for the gateway and for services: counters, gauges and
 * histograms with labels, written by each thread into its own shard without locks or shared
 * atomic read-modify-writes, summed when scraped. */
#ifndef POLIS_METRICS_H
#define POLIS_METRICS_H

#include <polis/core.h>

#include <stdatomic.h>

/* A registry of metric families; one per process is usual. */
struct polis_metrics;
/* A family: a name, a help text, a type and label names; its series are label-value sets. */
struct polis_metric;

enum polis_metric_type {
    POLIS_METRIC_COUNTER,   /* only goes up; name ends in _total */
    POLIS_METRIC_GAUGE,     /* a signed sum over the shards */
    POLIS_METRIC_HISTOGRAM, /* observations in fixed buckets, with sum and count */
};

/* Values live in pages of slots; a series owns one slot (a counter or gauge) or n_buckets + 3
 * (a histogram: one per bucket with +Inf last, then the count, then the sum as a double's
 * bits). */
#define POLIS_METRICS_PAGE_SLOTS 4096u
#define POLIS_METRICS_MAX_PAGES 256u

/* One writer thread's values. Only that thread writes; a scrape reads them from any thread. */
struct polis_metrics_shard {
    _Atomic(uint64_t) *_Atomic pages[POLIS_METRICS_MAX_PAGES];
    struct polis_metrics *registry;
    struct polis_metrics_shard *next;
};

/* Create a registry. Returns NULL on allocation failure. */
POLIS_API struct polis_metrics *polis_metrics_new(void);
/* Free the registry, its families and every shard. No thread may use them any more. */
POLIS_API void polis_metrics_free(struct polis_metrics *m);

/* Declare a family (or find the same one declared before: same type and label names).
 * name: [a-zA-Z_:][a-zA-Z0-9_:]*; label_names: a NULL-terminated array, or NULL for none,
 * each [a-zA-Z_][a-zA-Z0-9_]* and not starting with "__"; buckets: histograms only, ascending
 * upper bounds, n_buckets of them (at most 64; +Inf is added). Returns the family, or NULL when
 * a name is invalid, the name exists with another type or labels, or memory runs out.
 * Thread-safe; meant for start-up and configuration loads, not the request path. */
POLIS_API struct polis_metric *polis_metrics_family(struct polis_metrics *m,
                                                    enum polis_metric_type type, const char *name,
                                                    const char *help,
                                                    const char *const *label_names,
                                                    const double *buckets, size_t n_buckets);

/* The series of family f with these label values (as many as f has label names; any bytes,
 * escaped when rendered), created on first use. Sets *slot to the handle for the hot-path
 * calls below. Returns 0, POLIS_EINVAL or POLIS_ENOMEM (or POLIS_ETOOBIG when the pages are
 * full). Thread-safe; resolve once and keep the slot. */
POLIS_API int polis_metric_series(struct polis_metric *f, const char *const *label_values,
                                  uint32_t *slot);

/* A shard for the calling thread, with pages for every slot that exists or will exist.
 * Returns NULL on allocation failure. Thread-safe. */
POLIS_API struct polis_metrics_shard *polis_metrics_shard_new(struct polis_metrics *m);

/* Writer-thread only, no lock, no atomic read-modify-write: a relaxed load and store. */
static inline _Atomic(uint64_t) *polis__metrics_cell(struct polis_metrics_shard *s, uint32_t slot)
{
    _Atomic(uint64_t) *page =
        atomic_load_explicit(&s->pages[slot / POLIS_METRICS_PAGE_SLOTS], memory_order_acquire);
    return &page[slot % POLIS_METRICS_PAGE_SLOTS];
}

static inline void polis_counter_add(struct polis_metrics_shard *s, uint32_t slot, uint64_t v)
{
    _Atomic(uint64_t) *c = polis__metrics_cell(s, slot);
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

/* Gauges add signed deltas (two's complement); the scrape sums the shards. */
static inline void polis_gauge_add(struct polis_metrics_shard *s, uint32_t slot, int64_t delta)
{
    polis_counter_add(s, slot, (uint64_t)delta);
}

/* Record v (for durations: seconds) in histogram family f's series at slot. */
POLIS_API void polis_histogram_observe(struct polis_metrics_shard *s, const struct polis_metric *f,
                                       uint32_t slot, double v);

/* The sum over every shard of a counter's or gauge's slot (a gauge's as signed). Any thread;
 * for status pages and tests, not the hot path. */
POLIS_API int64_t polis_metric_value(struct polis_metrics *m, uint32_t slot);

/* A gauge whose value is computed when scraped (memory, uptime, queue lengths). fn is called
 * on the scraping thread and must be thread-safe. Returns 0, POLIS_EINVAL or POLIS_ENOMEM. */
typedef double (*polis_gauge_fn)(void *ud);
POLIS_API int polis_metrics_gauge_fn(struct polis_metrics *m, const char *name, const char *help,
                                     polis_gauge_fn fn, void *ud);

/* Append the text exposition format (version 0.0.4) of every family to out: families sorted by
 * name, series in creation order, histogram buckets cumulative. Any thread. Returns 0 or the
 * error of polis_buf_append (the output is then incomplete). */
POLIS_API int polis_metrics_render(struct polis_metrics *m, struct polis_buf *out);

/* The standard buckets for request durations in seconds (0.5 ms .. 10 s, 14 bounds). */
POLIS_API extern const double polis_duration_buckets[14];

#endif
