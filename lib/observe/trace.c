/* trace.c: W3C Trace Context, spans, per-thread span rings and the OTLP/HTTP JSON exporter. */
#include <polis/trace.h>

#include "http/blocking.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef POLIS_VERSION
#define POLIS_VERSION "0.1.0"
#endif

static const char hexdigits[] = "0123456789abcdef";

/* ---- Trace context ------------------------------------------------------------------------ */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f') /* lowercase only, as the specification requires */
        return c - 'a' + 10;
    return -1;
}

/* Decode 2*n lowercase hex digits at p into out[0..n). */
static bool parse_hex(const char *p, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(p[2 * i]), lo = hexval(p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static bool all_zero(const uint8_t *b, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= b[i];
    return acc == 0;
}

static char *put_hex(char *out, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        *out++ = hexdigits[b[i] >> 4];
        *out++ = hexdigits[b[i] & 15];
    }
    return out;
}

int polis_traceparent_parse(struct polis_str v, struct polis_trace_ctx *out)
{
    uint8_t version, flags, tid[16], sid[8];
    if (v.p == NULL || v.len < POLIS_TRACEPARENT_LEN)
        return POLIS_EINVAL;
    if (!parse_hex(v.p, 1, &version) || version == 0xff)
        return POLIS_EINVAL;
    /* Version 00 is exactly 55 bytes; a later version may append fields after a '-'. */
    if (version == 0 && v.len != POLIS_TRACEPARENT_LEN)
        return POLIS_EINVAL;
    if (v.len > POLIS_TRACEPARENT_LEN && v.p[POLIS_TRACEPARENT_LEN] != '-')
        return POLIS_EINVAL;
    if (v.p[2] != '-' || v.p[35] != '-' || v.p[52] != '-')
        return POLIS_EINVAL;
    if (!parse_hex(v.p + 3, 16, tid) || !parse_hex(v.p + 36, 8, sid) ||
        !parse_hex(v.p + 53, 1, &flags))
        return POLIS_EINVAL;
    if (all_zero(tid, sizeof tid) || all_zero(sid, sizeof sid))
        return POLIS_EINVAL;
    if (out != NULL) {
        memcpy(out->trace_id, tid, sizeof tid);
        memcpy(out->span_id, sid, sizeof sid);
        out->flags = flags;
    }
    return 0;
}

void polis_traceparent_format(const struct polis_trace_ctx *ctx,
                              char out[POLIS_TRACEPARENT_LEN + 1])
{
    char *p = out;
    *p++ = '0';
    *p++ = '0';
    *p++ = '-';
    p = put_hex(p, ctx->trace_id, 16);
    *p++ = '-';
    p = put_hex(p, ctx->span_id, 8);
    *p++ = '-';
    p = put_hex(p, &ctx->flags, 1);
    *p = '\0';
}

/* ---- Random ids: xoshiro256** per thread, seeded from getrandom() -------------------------- */

static _Thread_local uint64_t rng_state[4];
static _Thread_local bool rng_seeded;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(void)
{
    uint64_t seed[4] = {0};
    if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        /* No kernel randomness (seccomp, very old kernel): weak but distinct per thread. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                     (uint64_t)(uintptr_t)&rng_state ^ ((uint64_t)getpid() << 40);
        for (int i = 0; i < 4; i++)
            seed[i] = splitmix64(&x);
    }
    memcpy(rng_state, seed, sizeof seed);
    if (all_zero((const uint8_t *)rng_state, sizeof rng_state)) /* the one forbidden state */
        rng_state[0] = 0x9e3779b97f4a7c15ull;
    rng_seeded = true;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    uint64_t *s = rng_state;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

void polis_trace_random_id(uint8_t *bytes, size_t n)
{
    if (n == 0)
        return;
    if (!rng_seeded)
        rng_seed();
    do {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = rng_next();
            memcpy(bytes + i, &r, n - i < 8 ? n - i : 8);
        }
    } while (all_zero(bytes, n));
}

/* ---- Spans -------------------------------------------------------------------------------- */

uint64_t polis_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* How many of len bytes at p fit in max without splitting a UTF-8 sequence (at most 3 bytes
 * are given back; anything still invalid is replaced when the span is exported). */
static size_t utf8_fit(const char *p, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && max - n < 3 && ((unsigned char)p[n] & 0xc0) == 0x80)
        n--;
    if (((unsigned char)p[n] & 0xc0) == 0x80) /* not UTF-8 anyway: cut where asked */
        n = max;
    return n;
}

void polis_span_start(struct polis_span *s, const struct polis_trace_ctx *parent,
                      enum polis_span_kind kind, struct polis_str name)
{
    memset(s, 0, offsetof(struct polis_span, text));
    if (parent != NULL) {
        memcpy(s->trace_id, parent->trace_id, sizeof s->trace_id);
        memcpy(s->parent_id, parent->span_id, sizeof s->parent_id);
        s->has_parent = true;
    } else {
        polis_trace_random_id(s->trace_id, sizeof s->trace_id);
    }
    polis_trace_random_id(s->span_id, sizeof s->span_id);
    s->kind = (uint8_t)kind;
    s->status = POLIS_SPAN_UNSET;
    size_t n = name.p != NULL ? utf8_fit(name.p, name.len, POLIS_SPAN_TEXT) : 0;
    if (n > 0)
        memcpy(s->text, name.p, n);
    s->name_len = s->text_used = (uint16_t)n;
    s->start_ns = polis_now_ns();
}

void polis_span_attr_str(struct polis_span *s, const char *key, struct polis_str v)
{
    if (key == NULL || s->num_attrs >= POLIS_SPAN_MAX_ATTRS)
        return;
    size_t used = s->text_used < POLIS_SPAN_TEXT ? s->text_used : POLIS_SPAN_TEXT;
    size_t n = v.p != NULL ? utf8_fit(v.p, v.len, POLIS_SPAN_TEXT - used) : 0;
    if (n == 0 && v.p != NULL && v.len > 0)
        return; /* the text is full */
    struct polis_span_attr *a = &s->attrs[s->num_attrs++];
    a->key = key;
    a->is_int = false;
    a->i = 0;
    a->off = (uint16_t)used;
    a->len = (uint16_t)n;
    if (n > 0)
        memcpy(s->text + used, v.p, n);
    s->text_used = (uint16_t)(used + n);
}

void polis_span_attr_int(struct polis_span *s, const char *key, int64_t v)
{
    if (key == NULL || s->num_attrs >= POLIS_SPAN_MAX_ATTRS)
        return;
    struct polis_span_attr *a = &s->attrs[s->num_attrs++];
    a->key = key;
    a->is_int = true;
    a->i = v;
    a->off = a->len = 0;
}

void polis_span_end(struct polis_span *s, enum polis_span_status status)
{
    s->end_ns = polis_now_ns();
    s->status = (uint8_t)status;
}

void polis_span_context(const struct polis_span *s, bool sampled, struct polis_trace_ctx *out)
{
    memcpy(out->trace_id, s->trace_id, sizeof out->trace_id);
    memcpy(out->span_id, s->span_id, sizeof out->span_id);
    out->flags = sampled ? 1 : 0;
}

/* ---- JSON output buffer ------------------------------------------------------------------- */

#define BODY_CAP (64u << 20) /* a request body never grows past this: the batch is dropped */

struct jbuf {
    char *p;
    size_t len, size;
    bool err; /* an append failed: the content is incomplete */
};

static bool jb_grow(struct jbuf *b, size_t n)
{
    if (b->err)
        return false;
    if (n > BODY_CAP || b->len > BODY_CAP - n) {
        b->err = true;
        return false;
    }
    size_t size = b->size ? b->size : 4096;
    while (size < b->len + n)
        size *= 2;
    char *p = realloc(b->p, size);
    if (p == NULL) {
        b->err = true;
        return false;
    }
    b->p = p;
    b->size = size;
    return true;
}

static inline void jb_put(struct jbuf *b, const void *s, size_t n)
{
    if (b->size - b->len < n && !jb_grow(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

#define jb_lit(b, lit) jb_put((b), (lit), sizeof(lit) - 1)

static void jb_u64(struct jbuf *b, uint64_t v)
{
    char d[20];
    size_t i = sizeof d;
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    jb_put(b, d + i, sizeof d - i);
}

static void jb_i64(struct jbuf *b, int64_t v)
{
    if (v < 0) {
        jb_lit(b, "-");
        jb_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        jb_u64(b, (uint64_t)v);
    }
}

static void jb_hex(struct jbuf *b, const uint8_t *bytes, size_t n)
{
    char tmp[64];
    put_hex(tmp, bytes, n); /* n <= 16 here */
    jb_put(b, tmp, 2 * n);
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when it is not one (overlong forms,
 * surrogates and code points past U+10FFFF are invalid). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
#define CONT(c) (((c)&0xc0) == 0x80)
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c < 0xc2)
        return 0;
    if (c < 0xe0)
        return n >= 2 && CONT(s[1]) ? 2 : 0;
    if (c < 0xf0) {
        if (n < 3 || !CONT(s[1]) || !CONT(s[2]))
            return 0;
        if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0))
            return 0;
        return 3;
    }
    if (c < 0xf5) {
        if (n < 4 || !CONT(s[1]) || !CONT(s[2]) || !CONT(s[3]))
            return 0;
        if ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
#undef CONT
}

/* Append a JSON string: quotes, backslashes and control characters escaped, invalid UTF-8
 * replaced by U+FFFD. */
static void jb_str(struct jbuf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0;
    jb_lit(b, "\"");
    while (i < n) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        jb_put(b, s + run, i - run);
        if (c < 0x80) {
            char esc[6] = {'\\', 0, 0, 0, 0, 0};
            size_t len = 2;
            switch (c) {
            case '"':
            case '\\':
                esc[1] = (char)c;
                break;
            case '\b':
                esc[1] = 'b';
                break;
            case '\f':
                esc[1] = 'f';
                break;
            case '\n':
                esc[1] = 'n';
                break;
            case '\r':
                esc[1] = 'r';
                break;
            case '\t':
                esc[1] = 't';
                break;
            default:
                memcpy(esc + 1, "u00", 3);
                esc[4] = hexdigits[c >> 4];
                esc[5] = hexdigits[c & 15];
                len = 6;
            }
            jb_put(b, esc, len);
            i++;
        } else {
            size_t k = utf8_seq(s + i, n - i);
            if (k > 0) {
                jb_put(b, s + i, k);
                i += k;
            } else {
                jb_lit(b, "\xef\xbf\xbd");
                i++;
            }
        }
        run = i;
    }
    jb_put(b, s + run, i - run);
    jb_lit(b, "\"");
}

/* One span as an OTLP JSON object. The span is plain data that callers may have filled by
 * hand, so every length and offset is checked against the text actually held. */
static void encode_span(struct jbuf *b, const struct polis_span *s)
{
    size_t used = s->text_used < POLIS_SPAN_TEXT ? s->text_used : POLIS_SPAN_TEXT;
    jb_lit(b, "{\"traceId\":\"");
    jb_hex(b, s->trace_id, 16);
    jb_lit(b, "\",\"spanId\":\"");
    jb_hex(b, s->span_id, 8);
    if (s->has_parent) {
        jb_lit(b, "\",\"parentSpanId\":\"");
        jb_hex(b, s->parent_id, 8);
    }
    jb_lit(b, "\",\"name\":");
    jb_str(b, s->text, s->name_len < used ? s->name_len : used);
    jb_lit(b, ",\"kind\":");
    jb_u64(b, s->kind <= 5 ? s->kind : 0); /* OTLP SpanKind: 0..5; ours are 1..3 */
    jb_lit(b, ",\"startTimeUnixNano\":\"");
    jb_u64(b, s->start_ns);
    jb_lit(b, "\",\"endTimeUnixNano\":\"");
    jb_u64(b, s->end_ns);
    jb_lit(b, "\",\"attributes\":[");
    size_t na = s->num_attrs < POLIS_SPAN_MAX_ATTRS ? s->num_attrs : POLIS_SPAN_MAX_ATTRS;
    bool first = true;
    for (size_t i = 0; i < na; i++) {
        const struct polis_span_attr *a = &s->attrs[i];
        if (a->key == NULL || (!a->is_int && (size_t)a->off + a->len > used))
            continue;
        if (!first)
            jb_lit(b, ",");
        first = false;
        jb_lit(b, "{\"key\":");
        jb_str(b, a->key, strlen(a->key));
        if (a->is_int) {
            jb_lit(b, ",\"value\":{\"intValue\":\""); /* int64 is a decimal string in OTLP JSON */
            jb_i64(b, a->i);
            jb_lit(b, "\"}}");
        } else {
            jb_lit(b, ",\"value\":{\"stringValue\":");
            jb_str(b, s->text + a->off, a->len);
            jb_lit(b, "}}");
        }
    }
    jb_lit(b, "],\"status\":{\"code\":");
    jb_u64(b, s->status <= 2 ? s->status : 0);
    jb_lit(b, "}}");
}

/* ---- The tracer --------------------------------------------------------------------------- */

/* One submitting thread's single-producer/single-consumer ring. head and tail count spans
 * since the start (slot = count % cap); head - tail spans wait. */
struct ring {
    _Atomic size_t head;                 /* written by the producer (release) */
    _Atomic uint64_t submitted, dropped; /* written by the producer only (relaxed) */
    size_t cap, wake_at;
    pthread_t owner;
    struct ring *next;                /* immutable once the ring is published */
    _Alignas(64) _Atomic size_t tail; /* written by the exporter (release) */
    _Alignas(64) struct polis_span slots[];
};

struct polis_tracer {
    uint64_t id; /* unique for the process's life: the key of the per-thread cache */
    bool sample_all;
    uint64_t sample_below; /* a root is sampled when its id's low 64 bits are below this */
    size_t queue_spans, max_batch;
    uint64_t batch_ms, timeout_ms;

    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *req_head; /* "POST <path> HTTP/1.1\r\nHost: ...\r\n...Content-Length: " */
    size_t req_head_len;
    struct jbuf prefix; /* the OTLP envelope up to the first span */

    int efd; /* eventfd: wakes the exporter (a ring reached its mark, or stop) */
    pthread_t thread;
    pthread_mutex_t lock; /* registration of rings only */
    struct ring *_Atomic rings;
    _Atomic bool stopping;
    _Atomic uint64_t stop_deadline; /* monotonic ms, set before stopping */

    _Atomic uint64_t lost;     /* submits that found no ring (out of memory) */
    _Atomic uint64_t exported; /* written by the exporter only */
    _Atomic uint64_t export_dropped;
    _Atomic uint64_t failures;

    /* The exporter thread's own state. */
    int fd; /* the kept-alive connection, or -1 */
    struct jbuf body;
    bool failing; /* the last export failed (log transitions only) */
};

static _Atomic uint64_t next_tracer_id = 1;

#define RING_CACHE 4
static _Thread_local struct {
    uint64_t id;
    struct ring *ring;
} tl_rings[RING_CACHE];
static _Thread_local unsigned tl_next;

/* a + b, saturating: timeouts and periods come from configuration. */
static inline uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a + b < a ? UINT64_MAX : a + b;
}

static inline void bump(_Atomic uint64_t *c) /* single writer: no locked instruction needed */
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static void wake(struct polis_tracer *t)
{
    uint64_t one = 1;
    if (write(t->efd, &one, sizeof one) < 0) {
        /* EAGAIN: the counter is saturated, so the exporter is awake anyway. */
    }
}

/* The calling thread's ring, found in its cache, in the tracer's list (a thread whose cache
 * entry was evicted), or made and registered (the thread's first submit). */
static struct ring *thread_ring(struct polis_tracer *t)
{
    for (unsigned i = 0; i < RING_CACHE; i++)
        if (tl_rings[i].id == t->id)
            return tl_rings[i].ring;

    pthread_t self = pthread_self();
    struct ring *r = atomic_load_explicit(&t->rings, memory_order_acquire);
    for (; r != NULL; r = r->next)
        if (pthread_equal(r->owner, self))
            goto cache;

    void *mem = NULL;
    if (posix_memalign(&mem, 64, sizeof(struct ring) + t->queue_spans * sizeof(struct polis_span)))
        return NULL;
    r = mem;
    memset(r, 0, sizeof *r);
    r->cap = t->queue_spans;
    r->wake_at = t->max_batch < r->cap / 2 ? t->max_batch : r->cap / 2;
    if (r->wake_at == 0)
        r->wake_at = 1;
    r->owner = self;
    pthread_mutex_lock(&t->lock);
    r->next = atomic_load_explicit(&t->rings, memory_order_relaxed);
    atomic_store_explicit(&t->rings, r, memory_order_release);
    pthread_mutex_unlock(&t->lock);
cache:
    tl_rings[tl_next].id = t->id;
    tl_rings[tl_next].ring = r;
    tl_next = (tl_next + 1) % RING_CACHE;
    return r;
}

void polis_tracer_submit(struct polis_tracer *t, const struct polis_span *s)
{
    if (t == NULL || s == NULL)
        return;
    struct ring *r = thread_ring(t);
    if (r == NULL) {
        atomic_fetch_add_explicit(&t->lost, 1, memory_order_relaxed);
        return;
    }
    bump(&r->submitted);
    size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    size_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (head - tail >= r->cap) {
        bump(&r->dropped);
        return;
    }
    /* Copy the fixed part and only the text in use. */
    size_t used = s->text_used < POLIS_SPAN_TEXT ? s->text_used : POLIS_SPAN_TEXT;
    struct polis_span *slot = &r->slots[head % r->cap];
    memcpy(slot, s, offsetof(struct polis_span, text) + used);
    slot->text_used = (uint16_t)used;
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
    if (head + 1 - tail == r->wake_at)
        wake(t);
}

bool polis_tracer_sampled(const struct polis_tracer *t, const struct polis_trace_ctx *parent,
                          const uint8_t trace_id[16])
{
    if (parent != NULL)
        return (parent->flags & 1) != 0;
    if (t == NULL)
        return false;
    if (t->sample_all)
        return true;
    uint64_t v = 0;
    for (int i = 8; i < 16; i++)
        v = v << 8 | trace_id[i];
    return v < t->sample_below;
}

void polis_tracer_stats(const struct polis_tracer *tc, struct polis_tracer_stats *out)
{
    memset(out, 0, sizeof *out);
    if (tc == NULL)
        return;
    struct polis_tracer *t = (struct polis_tracer *)tc; /* atomics are read, never written */
    uint64_t lost = atomic_load_explicit(&t->lost, memory_order_relaxed);
    out->submitted = lost;
    out->dropped = lost + atomic_load_explicit(&t->export_dropped, memory_order_relaxed);
    for (struct ring *r = atomic_load_explicit(&t->rings, memory_order_acquire); r != NULL;
         r = r->next) {
        out->submitted += atomic_load_explicit(&r->submitted, memory_order_relaxed);
        out->dropped += atomic_load_explicit(&r->dropped, memory_order_relaxed);
    }
    out->exported = atomic_load_explicit(&t->exported, memory_order_relaxed);
    out->export_failures = atomic_load_explicit(&t->failures, memory_order_relaxed);
}

/* ---- HTTP client (exporter thread) -------------------------------------------------------- */
static int conn_open(struct polis_tracer *t, uint64_t deadline)
{
    return polis__tcp_connect((const struct sockaddr *)&t->addr, t->addrlen, deadline, &t->fd);
}

/* A buffered reader of the answer, bounded by the request's deadline. */
struct reader {
    int fd;
    uint64_t deadline;
    size_t pos, len;
    bool any; /* a byte of the answer arrived */
    char buf[4096];
};

static int rd_fill(struct reader *r)
{
    for (;;) {
        ssize_t n = recv(r->fd, r->buf, sizeof r->buf, 0);
        if (n > 0) {
            r->pos = 0;
            r->len = (size_t)n;
            r->any = true;
            return 0;
        }
        if (n == 0)
            return POLIS_ECLOSED;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return POLIS_ESYS;
        int rc = polis__fd_wait(r->fd, POLLIN, r->deadline);
        if (rc < 0)
            return rc;
    }
}

/* Read a line (without its CRLF or LF) into line[0..cap). */
static int rd_line(struct reader *r, char *line, size_t cap, size_t *len)
{
    size_t n = 0;
    for (;;) {
        if (r->pos == r->len) {
            int rc = rd_fill(r);
            if (rc < 0)
                return rc;
        }
        char c = r->buf[r->pos++];
        if (c == '\n')
            break;
        if (n + 1 >= cap)
            return POLIS_EBADMSG;
        line[n++] = c;
    }
    if (n > 0 && line[n - 1] == '\r')
        n--;
    line[n] = '\0';
    *len = n;
    return 0;
}

static int rd_skip(struct reader *r, uint64_t n)
{
    while (n > 0) {
        if (r->pos == r->len) {
            int rc = rd_fill(r);
            if (rc < 0)
                return rc;
        }
        size_t k = r->len - r->pos;
        if (k > n)
            k = (size_t)n;
        r->pos += k;
        n -= k;
    }
    return 0;
}

/* Read one answer: the status, then the body is skipped (Content-Length, chunked, or up to the
 * end of the stream). *keep says whether the connection may carry the next request. */
static int read_answer(struct reader *r, int *status, bool *keep)
{
    char line[1024];
    size_t len;
    int rc = rd_line(r, line, sizeof line, &len);
    if (rc < 0)
        return rc;
    if (len < 12 || memcmp(line, "HTTP/1.", 7) != 0 || line[8] != ' ')
        return POLIS_EBADMSG;
    *status = 0;
    for (int i = 9; i < 12; i++) {
        if (line[i] < '0' || line[i] > '9')
            return POLIS_EBADMSG;
        *status = *status * 10 + (line[i] - '0');
    }
    *keep = line[7] == '1';
    bool chunked = false, has_length = false;
    uint64_t length = 0;
    for (;;) {
        rc = rd_line(r, line, sizeof line, &len);
        if (rc < 0)
            return rc;
        if (len == 0)
            break;
        char *colon = memchr(line, ':', len);
        if (colon == NULL)
            return POLIS_EBADMSG;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (strcasecmp(line, "content-length") == 0) {
            char *end;
            errno = 0;
            length = strtoull(v, &end, 10);
            if (errno != 0 || end == v || *v == '-')
                return POLIS_EBADMSG;
            has_length = true;
        } else if (strcasecmp(line, "transfer-encoding") == 0) {
            chunked = strcasestr(v, "chunked") != NULL;
        } else if (strcasecmp(line, "connection") == 0) {
            if (strcasestr(v, "close") != NULL)
                *keep = false;
        }
    }
    if (*status == 204 || *status == 304 || (*status >= 100 && *status < 200))
        return 0;
    if (chunked) {
        for (;;) {
            rc = rd_line(r, line, sizeof line, &len);
            if (rc < 0)
                return rc;
            char *end;
            errno = 0;
            uint64_t size = strtoull(line, &end, 16);
            if (errno != 0 || end == line)
                return POLIS_EBADMSG;
            if (size == 0)
                break;
            if ((rc = rd_skip(r, size)) < 0 || (rc = rd_line(r, line, sizeof line, &len)) < 0)
                return rc;
        }
        do { /* trailers up to the empty line */
            if ((rc = rd_line(r, line, sizeof line, &len)) < 0)
                return rc;
        } while (len > 0);
        return 0;
    }
    if (has_length)
        return rd_skip(r, length);
    *keep = false; /* the body ends with the connection */
    rc = rd_skip(r, UINT64_MAX);
    return rc == POLIS_ECLOSED ? 0 : rc;
}

static void conn_close(struct polis_tracer *t)
{
    if (t->fd >= 0) {
        close(t->fd);
        t->fd = -1;
    }
}

/* A kept-alive connection with something to read (the end of the stream, or bytes nobody
 * asked for) cannot carry a request. */
static bool conn_stale(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) != 0;
}

/* POST t->body. Returns 0 on a 2xx answer, or a negative code (POLIS_EBADMSG for another
 * status, left in *status). */
static int post_body(struct polis_tracer *t, uint64_t deadline, int *status)
{
    if (t->body.err)
        return POLIS_ENOMEM;
    char tail[32];
    int tl = snprintf(tail, sizeof tail, "%zu\r\n\r\n", t->body.len);
    struct iovec iov[3] = {
        {t->req_head, t->req_head_len}, {tail, (size_t)tl}, {t->body.p, t->body.len}};
    for (int attempt = 0;; attempt++) {
        if (t->fd >= 0 && conn_stale(t->fd))
            conn_close(t);
        bool reused = t->fd >= 0;
        int rc = 0;
        if (!reused)
            rc = conn_open(t, deadline);
        if (rc < 0)
            return rc;
        struct reader r = {.fd = t->fd, .deadline = deadline};
        bool keep = false;
        rc = polis__send_all(t->fd, iov, 3, deadline);
        if (rc == 0)
            rc = read_answer(&r, status, &keep);
        if (rc == 0) {
            if (!keep)
                conn_close(t);
            return *status >= 200 && *status < 300 ? 0 : POLIS_EBADMSG;
        }
        conn_close(t);
        *status = 0; /* no complete answer */
        /* A kept-alive connection the collector closed while idle: retry once on a new one. */
        if (!reused || r.any || attempt > 0 || rc == POLIS_ETIMEDOUT)
            return rc;
    }
}

/* ---- The exporter loop -------------------------------------------------------------------- */

/* Move up to max_batch queued spans into t->body (a complete OTLP request), taking a fair share
 * of each ring. Returns the number of spans taken; their ring slots are free again. */
static size_t build_batch(struct polis_tracer *t)
{
    struct ring *list = atomic_load_explicit(&t->rings, memory_order_acquire);
    size_t nrings = 0;
    for (struct ring *r = list; r != NULL; r = r->next)
        nrings++;
    if (nrings == 0)
        return 0;
    size_t quota = t->max_batch / nrings ? t->max_batch / nrings : 1;
    size_t n = 0;
    t->body.len = 0;
    t->body.err = false;
    jb_put(&t->body, t->prefix.p, t->prefix.len);
    for (bool progress = true; progress && n < t->max_batch;) {
        progress = false;
        for (struct ring *r = list; r != NULL && n < t->max_batch; r = r->next) {
            size_t head = atomic_load_explicit(&r->head, memory_order_acquire);
            size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
            size_t take = head - tail;
            if (take > quota)
                take = quota;
            if (take > t->max_batch - n)
                take = t->max_batch - n;
            for (size_t k = 0; k < take; k++) {
                if (n + k > 0)
                    jb_lit(&t->body, ",");
                encode_span(&t->body, &r->slots[(tail + k) % r->cap]);
            }
            if (take > 0) {
                atomic_store_explicit(&r->tail, tail + take, memory_order_release);
                n += take;
                progress = true;
            }
        }
    }
    jb_lit(&t->body, "]}]}]}");
    return n;
}

static void account(struct polis_tracer *t, size_t n, int rc, int status)
{
    if (rc == 0) {
        atomic_fetch_add_explicit(&t->exported, n, memory_order_relaxed);
        if (t->failing)
            polis_info("trace export: the collector answers again");
        t->failing = false;
        return;
    }
    atomic_fetch_add_explicit(&t->export_dropped, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->failures, 1, memory_order_relaxed);
    if (!t->failing && status != 0)
        polis_warn("trace export failed (the collector answered %d): spans are dropped until "
                   "it succeeds",
                   status);
    else if (!t->failing)
        polis_warn("trace export failed (%s%s%s): spans are dropped until it succeeds",
                   polis_strerror(rc), rc == POLIS_ESYS ? ": " : "",
                   rc == POLIS_ESYS ? strerror(errno) : "");
    t->failing = true;
}

/* Sleep up to ms, or until woken. While backing off, only stop ends the sleep (a ring that
 * fills must not turn a dead collector into a busy loop). Returns true when stopping. */
static bool exporter_sleep(struct polis_tracer *t, uint64_t ms, bool only_stop)
{
    uint64_t until = sat_add(polis__mono_ms(), ms);
    for (;;) {
        if (atomic_load_explicit(&t->stopping, memory_order_acquire))
            return true;
        uint64_t now = polis__mono_ms();
        if (now >= until)
            return false;
        uint64_t left = until - now;
        struct pollfd p = {.fd = t->efd, .events = POLLIN};
        int n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0) {
            uint64_t v;
            if (read(t->efd, &v, sizeof v) < 0) {
                /* EAGAIN: another read took it */
            }
            if (!only_stop && !atomic_load_explicit(&t->stopping, memory_order_acquire))
                return false;
        }
    }
}

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

static void *exporter_main(void *arg)
{
    struct polis_tracer *t = arg;
    uint64_t backoff = 0;
    while (!exporter_sleep(t, backoff ? backoff : t->batch_ms, backoff != 0)) {
        /* Export back to back while full batches wait, then sleep again. */
        for (;;) {
            size_t n = build_batch(t);
            if (n == 0)
                break;
            int status = 0;
            int rc = post_body(t, sat_add(polis__mono_ms(), t->timeout_ms), &status);
            account(t, n, rc, status);
            if (rc < 0) {
                backoff = backoff ? backoff * 2 : BACKOFF_MIN_MS;
                if (backoff > BACKOFF_MAX_MS)
                    backoff = BACKOFF_MAX_MS;
                break;
            }
            backoff = 0;
            if (n < t->max_batch || atomic_load_explicit(&t->stopping, memory_order_relaxed))
                break;
        }
    }

    /* Stopping: export what waits until the first failure or the deadline, drop the rest. */
    uint64_t deadline = atomic_load_explicit(&t->stop_deadline, memory_order_relaxed);
    while (polis__mono_ms() < deadline) {
        size_t n = build_batch(t);
        if (n == 0)
            break;
        int status = 0;
        int rc = post_body(t, deadline, &status);
        account(t, n, rc, status);
        if (rc < 0)
            break;
    }
    for (struct ring *r = atomic_load_explicit(&t->rings, memory_order_acquire); r != NULL;
         r = r->next) {
        size_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        atomic_fetch_add_explicit(&t->export_dropped, head - tail, memory_order_relaxed);
        atomic_store_explicit(&r->tail, head, memory_order_release);
    }
    conn_close(t);
    free(t->body.p);
    t->body.p = NULL;
    return NULL;
}

/* ---- Start and stop ----------------------------------------------------------------------- */

static bool printable(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
            return false;
    return true;
}

/* "http://host[:port][/path]" with host a name, an IPv4 address or [IPv6]. Resolves the host
 * and builds the constant head of every request. Returns 0 or POLIS_EINVAL / POLIS_ENOMEM. */
static int parse_endpoint(struct polis_tracer *t, const char *ep)
{
    if (strncasecmp(ep, "http://", 7) != 0)
        return POLIS_EINVAL;
    const char *auth = ep + 7;
    const char *slash = strchr(auth, '/');
    size_t auth_len = slash ? (size_t)(slash - auth) : strlen(auth);
    const char *path = slash ? slash : "/v1/traces";
    if (auth_len == 0 || !printable(auth, auth_len) || memchr(auth, '@', auth_len) != NULL ||
        !printable(path, strlen(path)))
        return POLIS_EINVAL;

    char host[256], port[8] = "80";
    const char *host_p = auth, *rest;
    size_t host_len;
    if (auth[0] == '[') {
        const char *close_br = memchr(auth, ']', auth_len);
        if (close_br == NULL)
            return POLIS_EINVAL;
        host_p = auth + 1;
        host_len = (size_t)(close_br - host_p);
        rest = close_br + 1;
    } else {
        const char *colon = memchr(auth, ':', auth_len);
        host_len = colon ? (size_t)(colon - auth) : auth_len;
        rest = auth + host_len;
    }
    size_t rest_len = auth_len - (size_t)(rest - auth);
    if (host_len == 0 || host_len >= sizeof host)
        return POLIS_EINVAL;
    memcpy(host, host_p, host_len);
    host[host_len] = '\0';
    if (rest_len > 0) {
        if (rest[0] != ':' || rest_len < 2 || rest_len > 6)
            return POLIS_EINVAL;
        unsigned v = 0;
        for (size_t i = 1; i < rest_len; i++) {
            if (rest[i] < '0' || rest[i] > '9')
                return POLIS_EINVAL;
            v = v * 10 + (unsigned)(rest[i] - '0');
        }
        if (v == 0 || v > 65535)
            return POLIS_EINVAL;
        snprintf(port, sizeof port, "%u", v);
    }

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (auth[0] == '[')
        hints.ai_flags = AI_NUMERICHOST;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return POLIS_EINVAL;
    memcpy(&t->addr, res->ai_addr, res->ai_addrlen);
    t->addrlen = res->ai_addrlen;
    freeaddrinfo(res);

    int n = snprintf(NULL, 0,
                     "POST %s HTTP/1.1\r\nHost: %.*s\r\nUser-Agent: polis/" POLIS_VERSION
                     "\r\nContent-Type: application/json\r\nContent-Length: ",
                     path, (int)auth_len, auth);
    t->req_head = malloc((size_t)n + 1);
    if (t->req_head == NULL)
        return POLIS_ENOMEM;
    snprintf(t->req_head, (size_t)n + 1,
             "POST %s HTTP/1.1\r\nHost: %.*s\r\nUser-Agent: polis/" POLIS_VERSION
             "\r\nContent-Type: application/json\r\nContent-Length: ",
             path, (int)auth_len, auth);
    t->req_head_len = (size_t)n;
    return 0;
}

int polis_tracer_start(const struct polis_tracer_opts *opts, struct polis_tracer **out)
{
    if (opts == NULL || out == NULL || opts->endpoint == NULL)
        return POLIS_EINVAL;
    if (!(opts->sample_ratio >= 0.0 && opts->sample_ratio <= 1.0)) /* NaN too */
        return POLIS_EINVAL;
    size_t queue = opts->queue_spans ? opts->queue_spans : 2048;
    if (queue > (SIZE_MAX / 2 - sizeof(struct ring)) / sizeof(struct polis_span))
        return POLIS_EINVAL;

    int rc = POLIS_ENOMEM;
    struct polis_tracer *t = calloc(1, sizeof *t);
    if (t == NULL)
        return POLIS_ENOMEM;
    t->fd = -1;
    t->efd = -1;
    t->queue_spans = queue;
    t->max_batch = opts->max_batch ? opts->max_batch : 512;
    t->batch_ms = opts->batch_ms ? opts->batch_ms : 1000;
    t->timeout_ms = opts->timeout_ms ? opts->timeout_ms : 2000;
    t->sample_all = opts->sample_ratio >= 1.0;
    if (!t->sample_all) /* ratio * 2^64, below 2^64 since ratio < 1 */
        t->sample_below = (uint64_t)(opts->sample_ratio * 18446744073709551616.0);

    if ((rc = parse_endpoint(t, opts->endpoint)) < 0)
        goto fail;
    const char *svc = opts->service_name ? opts->service_name : "unknown_service";
    jb_lit(&t->prefix, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":"
                       "\"service.name\",\"value\":{\"stringValue\":");
    jb_str(&t->prefix, svc, strlen(svc));
    jb_lit(&t->prefix,
           "}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"polis\",\"version\":\"" POLIS_VERSION
           "\"},\"spans\":[");
    rc = POLIS_ENOMEM;
    if (t->prefix.err)
        goto fail;

    rc = POLIS_ESYS;
    t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->efd < 0)
        goto fail;
    if (pthread_mutex_init(&t->lock, NULL) != 0)
        goto fail;
    t->id = atomic_fetch_add(&next_tracer_id, 1);

    /* The exporter takes no signals: the program's threads handle them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&t->thread, NULL, exporter_main, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        errno = err;
        pthread_mutex_destroy(&t->lock);
        goto fail;
    }
    *out = t;
    return 0;

fail:
    if (t->efd >= 0)
        close(t->efd);
    free(t->prefix.p);
    free(t->req_head);
    free(t);
    return rc;
}

/* polis_tracer_stop(), and when final is not NULL the stats once the exporter has finished
 * (submitted == exported + dropped then). Internal until the header offers a way to read the
 * final counts: the tests and the e2e driver use it. */
void polis__tracer_stop_stats(struct polis_tracer *t, struct polis_tracer_stats *final);

void polis_tracer_stop(struct polis_tracer *t)
{
    polis__tracer_stop_stats(t, NULL);
}

void polis__tracer_stop_stats(struct polis_tracer *t, struct polis_tracer_stats *final)
{
    if (t == NULL)
        return;
    atomic_store_explicit(&t->stop_deadline, sat_add(polis__mono_ms(), t->timeout_ms),
                          memory_order_relaxed);
    atomic_store_explicit(&t->stopping, true, memory_order_release);
    wake(t);
    pthread_join(t->thread, NULL);
    if (final != NULL)
        polis_tracer_stats(t, final);

    struct ring *r = atomic_load_explicit(&t->rings, memory_order_acquire);
    while (r != NULL) {
        struct ring *next = r->next;
        free(r);
        r = next;
    }
    atomic_store_explicit(&t->rings, NULL, memory_order_relaxed);
    close(t->efd);
    pthread_mutex_destroy(&t->lock);
    free(t->prefix.p);
    free(t->req_head);
    free(t);
}
