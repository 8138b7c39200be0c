/* metrics.c: Prometheus metric families, per-thread shards of value pages, and the text renderer.
 */
#include <polis/metrics.h>

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BUCKETS 64
/* Binary search pays off only past this many bounds. */
#define LINEAR_BUCKETS 16

const double polis_duration_buckets[14] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                           0.1,    0.25,  0.5,    1,     2.5,  5,     10};

/* One label-value set of a family: its first slot and its values, each NUL-terminated, one
 * after the other (a value cannot hold a NUL, so the key is unambiguous). */
struct series {
    char *key;
    size_t key_len;
    uint32_t hash;
    uint32_t slot;
};

struct polis_metric {
    struct polis_metrics *registry;
    enum polis_metric_type type;
    char *name;
    char *help;
    char **label_names;
    size_t n_labels;
    double *bounds; /* histograms: n_buckets ascending finite bounds; +Inf is implicit */
    size_t n_buckets;
    uint32_t width; /* slots per series: 1, or n_buckets + 3 */
    /* Series in creation order, and an open-addressing index over them (index + 1; 0 empty). */
    struct series *series;
    size_t n_series, cap_series;
    uint32_t *table;
    size_t table_cap;  /* a power of two, kept at least twice n_series */
    polis_gauge_fn fn; /* gauge functions: computed when scraped, no series */
    void *ud;
};

struct polis_metrics {
    /* Guards families, series, slots, pages and the shard list. The hot path never takes it. */
    pthread_mutex_t lock;
    struct polis_metric **families; /* sorted by name */
    size_t n_families, cap_families;
    struct polis_metrics_shard *shards;
    uint32_t next_slot; /* slots are handed out monotonically, never reused */
    uint32_t n_pages;   /* pages [0, n_pages) exist in every shard */
};

/* ---- Names -------------------------------------------------------------------------------- */

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* */
static bool valid_metric_name(const char *s)
{
    if (s == NULL || s[0] == '\0' || !(is_alpha(s[0]) || s[0] == ':'))
        return false;
    for (const char *p = s + 1; *p != '\0'; p++)
        if (!(is_alpha(*p) || is_digit(*p) || *p == ':'))
            return false;
    return true;
}

/* [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved for Prometheus). */
static bool valid_label_name(const char *s)
{
    if (s == NULL || !is_alpha(s[0]) || (s[0] == '_' && s[1] == '_'))
        return false;
    for (const char *p = s + 1; *p != '\0'; p++)
        if (!(is_alpha(*p) || is_digit(*p)))
            return false;
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* ---- Registry ----------------------------------------------------------------------------- */

struct polis_metrics *polis_metrics_new(void)
{
    struct polis_metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

static void family_free(struct polis_metric *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < f->n_series; i++)
        free(f->series[i].key);
    free(f->series);
    free(f->table);
    for (size_t i = 0; i < f->n_labels; i++)
        free(f->label_names[i]);
    free(f->label_names);
    free(f->bounds);
    free(f->help);
    free(f->name);
    free(f);
}

static void shard_free(struct polis_metrics_shard *s)
{
    for (size_t p = 0; p < POLIS_METRICS_MAX_PAGES; p++)
        free(atomic_load_explicit(&s->pages[p], memory_order_relaxed));
    free(s);
}

void polis_metrics_free(struct polis_metrics *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->n_families; i++)
        family_free(m->families[i]);
    free(m->families);
    struct polis_metrics_shard *s = m->shards;
    while (s != NULL) {
        struct polis_metrics_shard *next = s->next;
        shard_free(s);
        s = next;
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* The position of name in the sorted family array; *found says whether it is there. Locked. */
static size_t family_find(const struct polis_metrics *m, const char *name, bool *found)
{
    size_t lo = 0, hi = m->n_families;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(m->families[mid]->name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

/* Insert f at position pos of the sorted array. Locked. Returns 0 or POLIS_ENOMEM. */
static int family_insert(struct polis_metrics *m, size_t pos, struct polis_metric *f)
{
    if (m->n_families == m->cap_families) {
        size_t cap = m->cap_families ? m->cap_families * 2 : 16;
        struct polis_metric **a = realloc(m->families, cap * sizeof(*a));
        if (a == NULL)
            return POLIS_ENOMEM;
        m->families = a;
        m->cap_families = cap;
    }
    memmove(&m->families[pos + 1], &m->families[pos],
            (m->n_families - pos) * sizeof(m->families[0]));
    m->families[pos] = f;
    m->n_families++;
    return 0;
}

/* True when f was declared with this type, these label names and these buckets. */
static bool same_shape(const struct polis_metric *f, enum polis_metric_type type,
                       const char *const *label_names, size_t n_labels, const double *buckets,
                       size_t n_buckets)
{
    if (f->fn != NULL || f->type != type || f->n_labels != n_labels || f->n_buckets != n_buckets)
        return false;
    for (size_t i = 0; i < n_labels; i++)
        if (strcmp(f->label_names[i], label_names[i]) != 0)
            return false;
    for (size_t i = 0; i < n_buckets; i++)
        if (f->bounds[i] != buckets[i])
            return false;
    return true;
}

static char *dup_or_empty(const char *s)
{
    return strdup(s != NULL ? s : "");
}

/* A new unregistered family, or NULL when memory runs out. Arguments already validated. */
static struct polis_metric *family_new(struct polis_metrics *m, enum polis_metric_type type,
                                       const char *name, const char *help,
                                       const char *const *label_names, size_t n_labels,
                                       const double *buckets, size_t n_buckets)
{
    struct polis_metric *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->registry = m;
    f->type = type;
    f->name = strdup(name);
    f->help = dup_or_empty(help);
    if (f->name == NULL || f->help == NULL)
        goto fail;
    if (n_labels > 0) {
        f->label_names = calloc(n_labels, sizeof(char *));
        if (f->label_names == NULL)
            goto fail;
        for (size_t i = 0; i < n_labels; i++) {
            f->label_names[i] = strdup(label_names[i]);
            if (f->label_names[i] == NULL) {
                f->n_labels = i;
                goto fail;
            }
        }
        f->n_labels = n_labels;
    }
    f->width = 1;
    if (type == POLIS_METRIC_HISTOGRAM) {
        if (n_buckets > 0) {
            f->bounds = malloc(n_buckets * sizeof(double));
            if (f->bounds == NULL)
                goto fail;
            memcpy(f->bounds, buckets, n_buckets * sizeof(double));
        }
        f->n_buckets = n_buckets;
        f->width = (uint32_t)n_buckets + 3;
    }
    return f;
fail:
    family_free(f);
    return NULL;
}

struct polis_metric *polis_metrics_family(struct polis_metrics *m, enum polis_metric_type type,
                                          const char *name, const char *help,
                                          const char *const *label_names, const double *buckets,
                                          size_t n_buckets)
{
    if (m == NULL || !valid_metric_name(name))
        return NULL;
    if (type != POLIS_METRIC_COUNTER && type != POLIS_METRIC_GAUGE &&
        type != POLIS_METRIC_HISTOGRAM)
        return NULL;
    /* Prometheus lints counters without the suffix, and OpenMetrics requires it. */
    if (type == POLIS_METRIC_COUNTER && !ends_with(name, "_total"))
        return NULL;
    size_t n_labels = 0;
    if (label_names != NULL) {
        for (; label_names[n_labels] != NULL; n_labels++) {
            const char *ln = label_names[n_labels];
            if (!valid_label_name(ln))
                return NULL;
            /* "le" names the bucket bound of every histogram series. */
            if (type == POLIS_METRIC_HISTOGRAM && strcmp(ln, "le") == 0)
                return NULL;
            for (size_t j = 0; j < n_labels; j++)
                if (strcmp(label_names[j], ln) == 0)
                    return NULL;
        }
    }
    if (type == POLIS_METRIC_HISTOGRAM) {
        if (n_buckets > MAX_BUCKETS || (n_buckets > 0 && buckets == NULL))
            return NULL;
        for (size_t i = 0; i < n_buckets; i++) {
            if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
                return NULL;
        }
    } else if (n_buckets != 0) {
        return NULL;
    }

    struct polis_metric *f = NULL;
    pthread_mutex_lock(&m->lock);
    bool found;
    size_t pos = family_find(m, name, &found);
    if (found) {
        struct polis_metric *old = m->families[pos];
        if (same_shape(old, type, label_names, n_labels, buckets, n_buckets))
            f = old;
        goto out;
    }
    f = family_new(m, type, name, help, label_names, n_labels, buckets, n_buckets);
    if (f == NULL)
        goto out;
    if (family_insert(m, pos, f) < 0) {
        family_free(f);
        f = NULL;
    }
out:
    pthread_mutex_unlock(&m->lock);
    return f;
}

int polis_metrics_gauge_fn(struct polis_metrics *m, const char *name, const char *help,
                           polis_gauge_fn fn, void *ud)
{
    if (m == NULL || fn == NULL || !valid_metric_name(name))
        return POLIS_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    bool found;
    size_t pos = family_find(m, name, &found);
    if (found) {
        rc = POLIS_EINVAL;
        goto out;
    }
    struct polis_metric *f = family_new(m, POLIS_METRIC_GAUGE, name, help, NULL, 0, NULL, 0);
    if (f == NULL) {
        rc = POLIS_ENOMEM;
        goto out;
    }
    f->fn = fn;
    f->ud = ud;
    rc = family_insert(m, pos, f);
    if (rc < 0)
        family_free(f);
out:
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* ---- Shards and slots --------------------------------------------------------------------- */

struct polis_metrics_shard *polis_metrics_shard_new(struct polis_metrics *m)
{
    if (m == NULL)
        return NULL;
    struct polis_metrics_shard *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->registry = m;
    pthread_mutex_lock(&m->lock);
    for (uint32_t p = 0; p < m->n_pages; p++) {
        _Atomic(uint64_t) *page = calloc(POLIS_METRICS_PAGE_SLOTS, sizeof(*page));
        if (page == NULL)
            goto fail;
        atomic_store_explicit(&s->pages[p], page, memory_order_release);
    }
    s->next = m->shards;
    m->shards = s;
    pthread_mutex_unlock(&m->lock);
    return s;
fail:
    pthread_mutex_unlock(&m->lock);
    shard_free(s);
    return NULL;
}

/* Make page p exist in every shard: all allocations first, then publication, so a failure
 * leaves no shard with the page and another without. Locked. Returns 0 or POLIS_ENOMEM. */
static int page_add(struct polis_metrics *m)
{
    size_t n = 0;
    for (struct polis_metrics_shard *s = m->shards; s != NULL; s = s->next)
        n++;
    _Atomic(uint64_t) **fresh = calloc(n ? n : 1, sizeof(*fresh));
    if (fresh == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        fresh[i] = calloc(POLIS_METRICS_PAGE_SLOTS, sizeof(**fresh));
        if (fresh[i] == NULL) {
            for (size_t j = 0; j < i; j++)
                free(fresh[j]);
            free(fresh);
            return POLIS_ENOMEM;
        }
    }
    size_t i = 0;
    for (struct polis_metrics_shard *s = m->shards; s != NULL; s = s->next)
        atomic_store_explicit(&s->pages[m->n_pages], fresh[i++], memory_order_release);
    free(fresh);
    m->n_pages++;
    return 0;
}

/* Hand out width consecutive slots within one page (a series never straddles two, so the hot
 * path loads one page pointer). Locked. Returns 0, POLIS_ETOOBIG or POLIS_ENOMEM. */
static int slots_take(struct polis_metrics *m, uint32_t width, uint32_t *first)
{
    uint64_t start = m->next_slot;
    if (start % POLIS_METRICS_PAGE_SLOTS + width > POLIS_METRICS_PAGE_SLOTS)
        start = (start / POLIS_METRICS_PAGE_SLOTS + 1) * POLIS_METRICS_PAGE_SLOTS;
    uint64_t end = start + width;
    if (end > (uint64_t)POLIS_METRICS_PAGE_SLOTS * POLIS_METRICS_MAX_PAGES)
        return POLIS_ETOOBIG;
    uint32_t need = (uint32_t)((end - 1) / POLIS_METRICS_PAGE_SLOTS + 1);
    while (m->n_pages < need) {
        int rc = page_add(m);
        if (rc < 0)
            return rc;
    }
    *first = (uint32_t)start;
    m->next_slot = (uint32_t)end;
    return 0;
}

/* ---- Series ------------------------------------------------------------------------------- */

static uint32_t hash_bytes(const char *p, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 16777619u;
    }
    return h;
}

/* Rebuild the index at twice the size. Locked. Returns 0 or POLIS_ENOMEM. */
static int table_grow(struct polis_metric *f)
{
    size_t cap = f->table_cap ? f->table_cap * 2 : 16;
    uint32_t *t = calloc(cap, sizeof(*t));
    if (t == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < f->n_series; i++) {
        size_t j = f->series[i].hash & (cap - 1);
        while (t[j] != 0)
            j = (j + 1) & (cap - 1);
        t[j] = (uint32_t)i + 1;
    }
    free(f->table);
    f->table = t;
    f->table_cap = cap;
    return 0;
}

int polis_metric_series(struct polis_metric *f, const char *const *label_values, uint32_t *slot)
{
    if (f == NULL || slot == NULL || f->fn != NULL || (f->n_labels > 0 && label_values == NULL))
        return POLIS_EINVAL;
    size_t key_len = 0;
    for (size_t i = 0; i < f->n_labels; i++) {
        if (label_values[i] == NULL)
            return POLIS_EINVAL;
        key_len += strlen(label_values[i]) + 1;
    }
    char *key = malloc(key_len ? key_len : 1);
    if (key == NULL)
        return POLIS_ENOMEM;
    size_t off = 0;
    for (size_t i = 0; i < f->n_labels; i++) {
        size_t n = strlen(label_values[i]) + 1;
        memcpy(key + off, label_values[i], n);
        off += n;
    }
    uint32_t h = hash_bytes(key, key_len);

    struct polis_metrics *m = f->registry;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    if (f->table_cap > 0) {
        for (size_t j = h & (f->table_cap - 1); f->table[j] != 0;
             j = (j + 1) & (f->table_cap - 1)) {
            const struct series *s = &f->series[f->table[j] - 1];
            if (s->hash == h && s->key_len == key_len && memcmp(s->key, key, key_len) == 0) {
                *slot = s->slot;
                goto out;
            }
        }
    }
    if (f->n_series >= UINT32_MAX - 1) {
        rc = POLIS_ETOOBIG;
        goto out;
    }
    if ((f->n_series + 1) * 2 > f->table_cap) {
        rc = table_grow(f);
        if (rc < 0)
            goto out;
    }
    if (f->n_series == f->cap_series) {
        size_t cap = f->cap_series ? f->cap_series * 2 : 8;
        struct series *a = realloc(f->series, cap * sizeof(*a));
        if (a == NULL) {
            rc = POLIS_ENOMEM;
            goto out;
        }
        f->series = a;
        f->cap_series = cap;
    }
    uint32_t first;
    rc = slots_take(m, f->width, &first);
    if (rc < 0)
        goto out;
    f->series[f->n_series] =
        (struct series){.key = key, .key_len = key_len, .hash = h, .slot = first};
    size_t j = h & (f->table_cap - 1);
    while (f->table[j] != 0)
        j = (j + 1) & (f->table_cap - 1);
    f->table[j] = (uint32_t)f->n_series + 1;
    f->n_series++;
    key = NULL; /* owned by the series now */
    *slot = first;
out:
    pthread_mutex_unlock(&m->lock);
    free(key);
    return rc;
}

/* ---- Hot path ----------------------------------------------------------------------------- */

static inline void cell_add(_Atomic(uint64_t) *c, uint64_t v)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

void polis_histogram_observe(struct polis_metrics_shard *s, const struct polis_metric *f,
                             uint32_t slot, double v)
{
    /* A counter's or gauge's slot has no neighbours to write: refuse rather than corrupt. */
    if (f->type != POLIS_METRIC_HISTOGRAM)
        return;
    /* The series never straddles a page: one page load for all its cells. */
    _Atomic(uint64_t) *c = polis__metrics_cell(s, slot);
    const double *b = f->bounds;
    size_t n = f->n_buckets, i;
    if (n <= LINEAR_BUCKETS) {
        for (i = 0; i < n && !(v <= b[i]); i++)
            ;
    } else {
        size_t lo = 0, hi = n; /* the first bound >= v; NaN lands in +Inf */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (v <= b[mid])
                hi = mid;
            else
                lo = mid + 1;
        }
        i = lo;
    }
    cell_add(&c[i], 1);
    cell_add(&c[n + 1], 1);
    uint64_t bits = atomic_load_explicit(&c[n + 2], memory_order_relaxed);
    double sum;
    memcpy(&sum, &bits, sizeof(sum));
    sum += v;
    memcpy(&bits, &sum, sizeof(bits));
    atomic_store_explicit(&c[n + 2], bits, memory_order_relaxed);
}

/* ---- Rendering ---------------------------------------------------------------------------- */

/* v with the fewest significant digits that read back as v, in fixed notation up to 6 digits
 * before the point like Go's strconv 'g' (10, not 1e+01); NaN, +Inf and -Inf as Prometheus
 * spells them. */
static void format_double(char *out, size_t size, double v)
{
    if (isnan(v)) {
        snprintf(out, size, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, size, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, size, "%.*g", prec, v);
        if (strtod(out, NULL) == v) {
            /* More digits of a correctly rounded v are the same digits then zeros, which %g
             * strips; the larger precision only moves the switch to exponent notation. */
            if (prec < 6)
                snprintf(out, size, "%.6g", v);
            return;
        }
    }
}

/* Append s with the given characters escaped (backslash and newline always; the double quote
 * too when quote is set, for label values). */
static int append_escaped(struct polis_buf *out, const char *s, bool quote)
{
    const char *run = s;
    for (const char *p = s;; p++) {
        const char *esc = NULL;
        if (*p == '\\')
            esc = "\\\\";
        else if (*p == '\n')
            esc = "\\n";
        else if (*p == '"' && quote)
            esc = "\\\"";
        else if (*p != '\0')
            continue;
        int rc = polis_buf_append(out, run, (size_t)(p - run));
        if (rc < 0)
            return rc;
        if (esc == NULL)
            return 0;
        rc = polis_buf_append(out, esc, 2);
        if (rc < 0)
            return rc;
        run = p + 1;
    }
}

/* name[suffix]{a="x",b="y"[,le="bound"]} with no braces when there is nothing inside. */
static int append_series_name(struct polis_buf *out, const struct polis_metric *f,
                              const char *suffix, const struct series *s, const char *le)
{
    int rc = polis_buf_printf(out, "%s%s", f->name, suffix);
    if (rc < 0)
        return rc;
    if (f->n_labels == 0 && le == NULL)
        return 0;
    rc = polis_buf_append(out, "{", 1);
    const char *v = s->key;
    for (size_t i = 0; i < f->n_labels && rc == 0; i++) {
        rc = polis_buf_printf(out, "%s%s=\"", i ? "," : "", f->label_names[i]);
        if (rc == 0)
            rc = append_escaped(out, v, true);
        if (rc == 0)
            rc = polis_buf_append(out, "\"", 1);
        v += strlen(v) + 1;
    }
    if (rc == 0 && le != NULL)
        rc = polis_buf_printf(out, "%sle=\"%s\"", f->n_labels ? "," : "", le);
    if (rc == 0)
        rc = polis_buf_append(out, "}", 1);
    return rc;
}

/* The sum over the shards of the cell at slot. Locked (so the page exists in every shard). */
static uint64_t sum_cells(const struct polis_metrics *m, uint32_t slot)
{
    uint64_t total = 0;
    for (struct polis_metrics_shard *s = m->shards; s != NULL; s = s->next)
        total += atomic_load_explicit(polis__metrics_cell(s, slot), memory_order_relaxed);
    return total;
}

static double sum_doubles(const struct polis_metrics *m, uint32_t slot)
{
    double total = 0;
    for (struct polis_metrics_shard *s = m->shards; s != NULL; s = s->next) {
        uint64_t bits = atomic_load_explicit(polis__metrics_cell(s, slot), memory_order_relaxed);
        double d;
        memcpy(&d, &bits, sizeof(d));
        total += d;
    }
    return total;
}

int64_t polis_metric_value(struct polis_metrics *m, uint32_t slot)
{
    uint64_t v = 0;
    pthread_mutex_lock(&m->lock);
    /* Slots never handed out have no page to read; they count as 0. */
    if (slot < m->next_slot)
        v = sum_cells(m, slot);
    pthread_mutex_unlock(&m->lock);
    return (int64_t)v;
}

static int render_histogram(const struct polis_metrics *m, const struct polis_metric *f,
                            const struct series *s, struct polis_buf *out)
{
    char num[32];
    uint64_t cumulative = 0;
    int rc = 0;
    for (size_t i = 0; i <= f->n_buckets && rc == 0; i++) {
        cumulative += sum_cells(m, s->slot + (uint32_t)i);
        if (i < f->n_buckets)
            format_double(num, sizeof(num), f->bounds[i]);
        else
            snprintf(num, sizeof(num), "+Inf");
        rc = append_series_name(out, f, "_bucket", s, num);
        if (rc == 0)
            rc = polis_buf_printf(out, " %" PRIu64 "\n", cumulative);
    }
    if (rc < 0)
        return rc;
    format_double(num, sizeof(num), sum_doubles(m, s->slot + (uint32_t)f->n_buckets + 2));
    rc = append_series_name(out, f, "_sum", s, NULL);
    if (rc == 0)
        rc = polis_buf_printf(out, " %s\n", num);
    if (rc == 0)
        rc = append_series_name(out, f, "_count", s, NULL);
    /* The count slot, not the bucket total: each is read once and they may differ by a few
     * in-flight observations, which Prometheus tolerates. */
    if (rc == 0)
        rc = polis_buf_printf(out, " %" PRIu64 "\n",
                              sum_cells(m, s->slot + (uint32_t)f->n_buckets + 1));
    return rc;
}

static int render_family(const struct polis_metrics *m, const struct polis_metric *f,
                         struct polis_buf *out)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    int rc = polis_buf_printf(out, "# HELP %s ", f->name);
    if (rc == 0)
        rc = append_escaped(out, f->help, false);
    if (rc == 0)
        rc = polis_buf_printf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
    if (rc < 0)
        return rc;
    if (f->fn != NULL) {
        char num[32];
        format_double(num, sizeof(num), f->fn(f->ud));
        return polis_buf_printf(out, "%s %s\n", f->name, num);
    }
    for (size_t i = 0; i < f->n_series && rc == 0; i++) {
        const struct series *s = &f->series[i];
        if (f->type == POLIS_METRIC_HISTOGRAM) {
            rc = render_histogram(m, f, s, out);
            continue;
        }
        rc = append_series_name(out, f, "", s, NULL);
        if (rc < 0)
            break;
        uint64_t v = sum_cells(m, s->slot);
        if (f->type == POLIS_METRIC_GAUGE)
            rc = polis_buf_printf(out, " %" PRId64 "\n", (int64_t)v);
        else
            rc = polis_buf_printf(out, " %" PRIu64 "\n", v);
    }
    return rc;
}

int polis_metrics_render(struct polis_metrics *m, struct polis_buf *out)
{
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_families && rc == 0; i++)
        rc = render_family(m, m->families[i], out);
    pthread_mutex_unlock(&m->lock);
    return rc;
}
