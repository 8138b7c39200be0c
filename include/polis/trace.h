/* polis/trace.h: distributed tracing: W3C Trace Context, spans, and a background exporter that
 * sends them in batches as OTLP/HTTP JSON without ever blocking the threads that end them. */
#ifndef POLIS_TRACE_H
#define POLIS_TRACE_H

#include <polis/core.h>

/* The context a `traceparent` header carries (W3C Trace Context, version 00). */
struct polis_trace_ctx {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t flags; /* bit 0: sampled */
};

#define POLIS_TRACEPARENT_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */

/* Parse a traceparent value. Accepts version 00 exactly as specified (lowercase hex, all-zero
 * ids invalid) and, for a later version, its first four fields. Returns 0 or POLIS_EINVAL. */
POLIS_API int polis_traceparent_parse(struct polis_str value, struct polis_trace_ctx *out);
/* Write "00-<trace>-<span>-<flags>" (POLIS_TRACEPARENT_LEN bytes, then a NUL) to out. */
POLIS_API void polis_traceparent_format(const struct polis_trace_ctx *ctx,
                                        char out[POLIS_TRACEPARENT_LEN + 1]);
/* Fill bytes with random ids (never all zero), from a fast per-thread generator seeded from
 * getrandom(). Any thread. */
POLIS_API void polis_trace_random_id(uint8_t *bytes, size_t n);

enum polis_span_kind { POLIS_SPAN_INTERNAL = 1, POLIS_SPAN_SERVER = 2, POLIS_SPAN_CLIENT = 3 };
enum polis_span_status { POLIS_SPAN_UNSET = 0, POLIS_SPAN_OK = 1, POLIS_SPAN_ERROR = 2 };

#define POLIS_SPAN_MAX_ATTRS 16
#define POLIS_SPAN_TEXT 768 /* bytes for the name and string attribute values together */

/* One attribute: key is a string with static storage (OpenTelemetry semantic-convention names
 * such as "http.request.method"); the value is an integer or a string kept in the span. */
struct polis_span_attr {
    const char *key;
    bool is_int;
    int64_t i;
    uint16_t off, len; /* string value: text[off .. off+len) */
};

/* A finished or running span. Plain data: fill it, then hand a copy to the tracer. */
struct polis_span {
    uint8_t trace_id[16], span_id[8], parent_id[8];
    bool has_parent;
    uint8_t kind;              /* enum polis_span_kind */
    uint8_t status;            /* enum polis_span_status */
    uint64_t start_ns, end_ns; /* Unix time in nanoseconds */
    uint16_t name_len, text_used;
    uint8_t num_attrs;
    struct polis_span_attr attrs[POLIS_SPAN_MAX_ATTRS];
    char text[POLIS_SPAN_TEXT]; /* the name first, then string values */
};

/* Start a span: ids from parent (a new trace when NULL), a new span id, start time now. */
POLIS_API void polis_span_start(struct polis_span *s, const struct polis_trace_ctx *parent,
                                enum polis_span_kind kind, struct polis_str name);
/* Add an attribute; silently ignored once the span's attribute slots or text are full. */
POLIS_API void polis_span_attr_str(struct polis_span *s, const char *key, struct polis_str v);
POLIS_API void polis_span_attr_int(struct polis_span *s, const char *key, int64_t v);
/* Set the end time to now. */
POLIS_API void polis_span_end(struct polis_span *s, enum polis_span_status status);
/* The context to propagate to a child of s (flags: sampled). */
POLIS_API void polis_span_context(const struct polis_span *s, bool sampled,
                                  struct polis_trace_ctx *out);
/* Unix time in nanoseconds (CLOCK_REALTIME). */
POLIS_API uint64_t polis_now_ns(void);

struct polis_tracer_opts {
    const char *endpoint;     /* "http://127.0.0.1:4318/v1/traces": http only, IP or name */
    const char *service_name; /* resource attribute service.name */
    double sample_ratio;      /* for new traces (no parent): 0..1; a parent's flag decides */
    size_t queue_spans;       /* spans buffered per submitting thread; 0: 2048 */
    size_t max_batch;         /* spans per export request; 0: 512 */
    uint64_t batch_ms;        /* export at least this often when spans wait; 0: 1000 */
    uint64_t timeout_ms;      /* per export request (connect, send, answer); 0: 2000 */
};

struct polis_tracer;

/* Start the exporter thread. Returns 0 and *out, or POLIS_EINVAL (bad endpoint or ratio),
 * POLIS_ENOMEM, POLIS_ESYS. Nothing is sent until spans are submitted; an unreachable collector
 * is not an error here. */
POLIS_API int polis_tracer_start(const struct polis_tracer_opts *opts, struct polis_tracer **out);
/* Export what is queued (bounded by one timeout), stop the thread and free t. */
POLIS_API void polis_tracer_stop(struct polis_tracer *t);

/* Decide whether a new trace is sampled: parent-based, so a parent's sampled flag wins; for a
 * root, the trace id is compared with the ratio (deterministic for a given id). Any thread. */
POLIS_API bool polis_tracer_sampled(const struct polis_tracer *t,
                                    const struct polis_trace_ctx *parent,
                                    const uint8_t trace_id[16]);

/* Queue a copy of a finished span for export. Never blocks and never allocates after the
 * calling thread's first call: each thread has its own bounded single-producer ring, drained by
 * the exporter; when it is full the span is dropped and counted. Any thread. */
POLIS_API void polis_tracer_submit(struct polis_tracer *t, const struct polis_span *s);

struct polis_tracer_stats {
    uint64_t submitted, exported, dropped, export_failures;
};
POLIS_API void polis_tracer_stats(const struct polis_tracer *t, struct polis_tracer_stats *out);

#endif
