/* sdk-internal.h: what the SDK's server shares with its client: the trace state of the request
 * a server thread is handling. */
#ifndef POLIS_SDK_INTERNAL_H
#define POLIS_SDK_INTERNAL_H

#include <polis/http.h>
#include <polis/trace.h>

/* The calling thread's trace state. The server sets it for the duration of a handler when it
 * has a tracer and clears it after; polis_fetch() reads it to make its CLIENT span. */
struct polis__trace_state {
    struct polis_tracer *tracer; /* NULL: no traced request runs on this thread */
    struct polis_trace_ctx ctx;  /* the current span's context; flags bit 0: sampled */
    struct polis_str tracestate; /* the request's tracestate (a view into it), or empty */
};

/* The calling thread's state; never NULL. Calling thread only. */
struct polis__trace_state *polis__trace_state(void);

#endif
