/* server.c: the SDK's HTTP server for services: threads with their own loops and listeners,
 * keep-alive and pipelining, handlers as plain functions, metrics and traces when asked. */
#include <polis/http.h>
#include <polis/metrics.h>
#include <polis/trace.h>

#include "sdk/sdk-internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * Each thread owns a loop, a SO_REUSEPORT listener and its connections; nothing is shared but
 * the immutable options and the stop flag. A connection reads into one bounded buffer, parses
 * the head at its front (resuming the scan), then waits for the body (Content-Length, or chunked
 * decoded in place right behind the head), calls the handler, appends the response to its output
 * buffer and drops the request's bytes. Every complete request already buffered is handled before
 * the next read, and responses leave in request order. While output is pending (the peer does not
 * read), the connection neither reads nor handles requests: that is the backpressure.
 *
 * A handler may defer its answer (polis_response_defer): the request's bytes are dropped at once,
 * the connection keeps a pointer to the polis_deferred and neither handles the requests behind it
 * nor runs a timeout until the answer comes. polis_deferred_finish() on any thread builds the
 * answer in the polis_deferred, puts it on its thread's hub and wakes the loop, which sends it
 * (the connection is touched only on its loop thread). The hub outlives the thread while answers
 * may still arrive: after the thread is gone, finish only frees.
 *
 * Input buffer layout while a chunked body arrives:
 *   [head: head_len][decoded payload: up to body_end][raw bytes not yet decoded]
 * Each feed starts at body_end and decodes onto itself; the undecoded rest then moves down to the
 * end of the payload, so the buffer never holds framing already decoded.
 */

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define MAX_THREADS 256
#define MAX_HEADERS 100
#define READ_CHUNK ((size_t)16384)
#define CHUNKED_SLACK ((size_t)16384)   /* chunk framing and trailers held beyond max_body */
#define OUT_HIGH_WATER ((size_t)65536)  /* stop handling requests until output drains below */
#define RES_HEAD_CAP ((size_t)65536)    /* headers a handler may set */
#define RES_BODY_CAP ((size_t)64 << 20) /* body a handler may build */
#define RES_KEEP_SIZE ((size_t)262144)  /* larger response buffers are freed after use */
#define DEFAULT_MAX_BODY ((size_t)1 << 20)
#define DEFAULT_IDLE_MS 60000
#define DEFAULT_HEADER_MS 10000
#define DRAIN_MS 5000  /* how long stop waits for in-flight requests */
#define LINGER_MS 2000 /* how long a closing connection drains the peer's input */
#define LINGER_MAX ((size_t)1 << 20)
#define ACCEPT_RETRY_MS 100 /* after EMFILE and friends */
#define READ_BUDGET 16      /* reads per turn before a busy connection lets the others run */

struct conn;

struct polis_response {
    int status;
    struct polis_buf head; /* "Name: value\r\n" lines set by the handler */
    struct polis_buf body;
    bool open;   /* the handler is running: calls are honoured */
    bool failed; /* a call ran out of room: the response is incomplete, a 500 goes instead */
    bool close;  /* the handler set Connection: close */
    /* Set around the handler, for polis_response_defer(). */
    bool head_request;
    struct conn *conn;
    struct polis_deferred *deferred; /* the handler deferred its answer */
    struct timespec t0;              /* the handler started (metrics) */
};

/* Where polis_deferred_finish() leaves answers for a thread's loop. Shared with other threads:
 * everything but refs' owners is under mu. It lives as long as the thread or any deferred
 * request of it, whichever is longer. */
struct deferred_hub {
    pthread_mutex_t mu;
    size_t refs; /* the thread's, plus one per polis_deferred not yet freed */
    bool closed; /* the thread is gone: finish only frees */
    struct polis_async *wake;
    struct polis_deferred *done_head, *done_tail; /* finished, for the loop to send */
};

/* A deferred request: what the loop needs to send its answer, and the answer. */
struct polis_deferred {
    struct deferred_hub *hub;
    struct polis_deferred *next; /* on hub->done */
    /* Loop thread only. */
    struct conn *c;    /* NULL once the connection is gone or was answered otherwise */
    bool recorded;     /* counted and traced already */
    bool keep_alive;   /* the request allowed keep-alive */
    bool head_request; /* HEAD: no body */
    bool traced;       /* span holds a sampled SERVER span to submit when answered */
    int minor_version;
    struct timespec t0;
    struct polis_span span;
    /* Written by polis_deferred_finish(), read by the loop after it took d from the hub. */
    struct polis_response res;
};

enum conn_phase {
    PHASE_HEAD,         /* reading a request head (or idle between requests) */
    PHASE_BODY_LENGTH,  /* head parsed, waiting for content_length bytes */
    PHASE_BODY_CHUNKED, /* head parsed, decoding a chunked body */
    PHASE_LINGER,       /* output done and shut down; discarding input until the peer closes */
};

struct server_thread;

struct conn {
    struct conn *prev, *next;   /* the thread's connections */
    struct conn *rprev, *rnext; /* the thread's ready queue, when queued */
    bool queued;
    struct server_thread *th;
    struct polis_watch w;
    struct polis_timer timer; /* idle, header, body, write and linger timeouts */
    int fd;
    enum conn_phase phase;
    bool close_after; /* close once the output is written; read no more requests */
    bool eof;         /* the peer finished sending */
    bool head_timer;  /* the header timeout runs for the current head */
    size_t linger_bytes;
    struct polis_buf in;
    struct polis_buf out;
    size_t scan;         /* where the head parser resumes */
    size_t head_len;     /* bytes of the parsed head */
    size_t body_end;     /* chunked: end of the decoded payload, from the buffer head */
    uintptr_t head_base; /* address of the buffer head when the head was parsed */
    struct polis_h1_chunked chunked;
    struct polis_h1_msg msg;
    struct polis_h1_header headers[MAX_HEADERS];
    struct polis_deferred *deferred; /* a deferred request waits for its answer */
    size_t addr_len;
    char addr[INET6_ADDRSTRLEN + 8];
};

struct server_thread {
    struct polis_server *srv;
    pthread_t tid;
    bool created;
    bool ready; /* setup succeeded: the loop runs and wake works */
    int lfd;
    struct polis_loop *loop;
    struct polis_watch lw;
    bool listening;
    struct polis_async wake;
    bool wake_ok;
    struct deferred_hub *hub; /* answers of deferred requests */
    struct polis_timer accept_timer;
    struct polis_timer drain_timer;
    bool stopping;
    struct conn *conns;
    size_t nconns;
    struct conn *ready_head, *ready_tail; /* connections that used up their turn */
    size_t nready;
    struct polis_response res;         /* one handler runs at a time per thread: reused */
    struct polis_metrics_shard *shard; /* when the server counts requests */
    struct polis_span span;            /* the running handler's span, when tracing */
    char tracestate[512];              /* several tracestate fields joined */
};

struct polis_server {
    polis_handler_fn handler;
    void *ud;
    size_t max_body;
    uint64_t idle_ms;
    uint64_t header_ms;
    struct polis_h1_limits lim;
    size_t in_cap;
    int port;
    int nthreads;
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nreported;
    int setup_err;
    struct server_thread *threads;
    struct polis_metrics *metrics; /* NULL: no metrics */
    struct polis_tracer *tracer;   /* NULL: no traces */
    struct polis_metric *m_duration;
    uint32_t m_requests[6]; /* by status class: 1xx..5xx, other */
    uint32_t m_duration_slot;
};

static const struct polis_h1_limits default_limits = {
    .max_request_line = 8192,
    .max_head = 32768,
    .max_headers = MAX_HEADERS,
};

static void conn_run(struct conn *c);
static int response_fail(struct polis_response *res, int rc);

/* ---- Responses ------------------------------------------------------------------------------ */

static void response_reset(struct polis_response *res)
{
    res->status = 200;
    polis_buf_consume(&res->head, polis_buf_len(&res->head));
    polis_buf_consume(&res->body, polis_buf_len(&res->body));
    res->failed = false;
    res->close = false;
    res->head_request = false;
    res->conn = NULL;
    res->deferred = NULL;
}

/* Give back the memory of an unusually large response. */
static void response_trim(struct polis_response *res)
{
    if (res->head.size > RES_KEEP_SIZE)
        polis_buf_free(&res->head);
    if (res->body.size > RES_KEEP_SIZE)
        polis_buf_free(&res->body);
}

/* Record a failed append: the handler may ignore the code, the server will not send the
 * truncated response. */
static int response_fail(struct polis_response *res, int rc)
{
    if (rc == POLIS_ENOMEM || rc == POLIS_ETOOBIG)
        res->failed = true;
    return rc;
}

int polis_response_status(struct polis_response *res, int status)
{
    if (!res->open)
        return 0;
    if (status < 200 || status > 999)
        return POLIS_EINVAL;
    res->status = status;
    return 0;
}

static bool is_tchar(unsigned char ch)
{
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
        return true;
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

int polis_response_header(struct polis_response *res, const char *name, const char *value)
{
    if (!res->open)
        return 0;
    struct polis_str n = {name, strlen(name)};
    struct polis_str v = {value, strlen(value)};
    if (n.len == 0)
        return POLIS_EINVAL;
    for (size_t i = 0; i < n.len; i++)
        if (!is_tchar((unsigned char)n.p[i]))
            return POLIS_EINVAL;
    for (size_t i = 0; i < v.len; i++) {
        unsigned char ch = (unsigned char)v.p[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return POLIS_EINVAL; /* no CR or LF: no response splitting */
    }
    /* The server frames the message itself. */
    if (polis_str_caseeq(n, POLIS_STR("Content-Length")) ||
        polis_str_caseeq(n, POLIS_STR("Transfer-Encoding")))
        return 0;
    if (polis_str_caseeq(n, POLIS_STR("Connection"))) {
        if (polis_str_caseeq(v, POLIS_STR("close")))
            res->close = true;
        return 0;
    }
    /* One reservation, so the appends below cannot fail half-way. */
    int rc = polis_buf_reserve(&res->head, n.len + v.len + 4);
    if (rc < 0)
        return response_fail(res, rc);
    polis_buf_append(&res->head, n.p, n.len);
    polis_buf_append(&res->head, ": ", 2);
    polis_buf_append(&res->head, v.p, v.len);
    polis_buf_append(&res->head, "\r\n", 2);
    return 0;
}

int polis_response_body(struct polis_response *res, const void *data, size_t len)
{
    if (!res->open)
        return 0;
    int rc = polis_buf_append(&res->body, data, len);
    return rc < 0 ? response_fail(res, rc) : 0;
}

int polis_response_printf(struct polis_response *res, const char *fmt, ...)
{
    if (!res->open)
        return 0;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return POLIS_EINVAL;
    int rc = polis_buf_reserve(&res->body, (size_t)n + 1);
    if (rc < 0)
        return response_fail(res, rc);
    va_start(ap, fmt);
    vsnprintf(res->body.data + res->body.end, (size_t)n + 1, fmt, ap);
    va_end(ap);
    res->body.end += (size_t)n;
    return 0;
}

const struct polis_str *polis_request_header(const struct polis_request *req, const char *name)
{
    struct polis_str n = {name, strlen(name)};
    for (size_t i = 0; i < req->num_headers; i++)
        if (polis_str_caseeq(req->headers[i].name, n))
            return &req->headers[i].value;
    return NULL;
}

/* ---- Connections ---------------------------------------------------------------------------- */

/* A connection with more to do after its turn waits here; the thread's async resumes it on the
 * next loop iteration, after the other connections had their events (edge-triggered events
 * would not come again for bytes already in the socket). */
static void conn_queue(struct conn *c)
{
    struct server_thread *th = c->th;
    if (c->queued)
        return;
    c->queued = true;
    c->rnext = NULL;
    c->rprev = th->ready_tail;
    if (th->ready_tail != NULL)
        th->ready_tail->rnext = c;
    else
        th->ready_head = c;
    th->ready_tail = c;
    th->nready++;
    polis_async_send(&th->wake);
}

static void conn_unqueue(struct conn *c)
{
    struct server_thread *th = c->th;
    if (!c->queued)
        return;
    if (c->rprev != NULL)
        c->rprev->rnext = c->rnext;
    else
        th->ready_head = c->rnext;
    if (c->rnext != NULL)
        c->rnext->rprev = c->rprev;
    else
        th->ready_tail = c->rprev;
    c->rprev = c->rnext = NULL;
    c->queued = false;
    th->nready--;
}

static void conn_close(struct conn *c)
{
    struct server_thread *th = c->th;
    if (c->deferred != NULL) {
        /* The client is gone: the answer, when it comes, is only freed. */
        c->deferred->c = NULL;
        c->deferred = NULL;
    }
    conn_unqueue(c);
    polis_timer_cancel(th->loop, &c->timer);
    polis_loop_del(th->loop, &c->w);
    close(c->fd);
    c->fd = -1;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        th->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    th->nconns--;
    polis_buf_free(&c->in);
    polis_buf_free(&c->out);
    free(c);
    if (th->stopping && th->nconns == 0)
        polis_loop_stop(th->loop);
}

/* Nothing in flight: between requests with no byte of the next one. */
static bool conn_idle(const struct conn *c)
{
    return c->phase == PHASE_HEAD && c->deferred == NULL && polis_buf_len(&c->in) == 0 &&
           polis_buf_len(&c->out) == 0;
}

/* Append s to out as a JSON string body (without quotes). */
static void json_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s != '\0' && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
}

/* The answers to requests that cannot be served; anything else is a 500. */
static const struct {
    int err;
    int status;
    const char *code;
} error_answers[] = {
    {POLIS_EBADMSG, 400, "bad_request"},
    {POLIS_ETIMEDOUT, 408, "request_timeout"},
    {POLIS_EBODYTOOBIG, 413, "payload_too_large"},
    {POLIS_EURITOOLONG, 414, "uri_too_long"},
    {POLIS_EHDRTOOBIG, 431, "request_header_fields_too_large"},
    {POLIS_ENOTIMPL, 501, "not_implemented"},
    {POLIS_EVERSION, 505, "http_version_not_supported"},
};

/* Queue an error answer for a request that cannot be served, then close: the input is dropped
 * since its framing can no longer be trusted. */
static void conn_send_error(struct conn *c, int err)
{
    int status = 500;
    const char *code = "internal_error";
    for (size_t i = 0; i < sizeof(error_answers) / sizeof(error_answers[0]); i++) {
        if (error_answers[i].err == err) {
            status = error_answers[i].status;
            code = error_answers[i].code;
            break;
        }
    }
    char msg[256], body[512];
    json_escape(msg, sizeof(msg), polis_strerror(err));
    int n = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"status\":%d,\"message\":\"%s\"}",
                     code, status, msg);
    if (n < 0 || (size_t)n >= sizeof(body))
        n = 0;
    int rc = polis_buf_printf(&c->out,
                              "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                              "Content-Length: %d\r\nConnection: close\r\n\r\n%.*s",
                              status, polis_http_reason(status), n, n, body);
    if (rc < 0)
        polis_warn("http server: no room for a %d answer to %.*s", status, (int)c->addr_len,
                   c->addr);
    polis_buf_consume(&c->in, polis_buf_len(&c->in));
    c->phase = PHASE_HEAD;
    c->close_after = true;
}

/* Split the request-target into path and query. An absolute-form target loses its scheme and
 * authority in path. */
static void split_target(struct polis_str target, struct polis_str *path, struct polis_str *query)
{
    const char *p = target.p, *end = target.p + target.len;
    const char *q = memchr(p, '?', target.len);
    const char *path_end = q != NULL ? q : end;
    if (target.len > 0 && p[0] != '/' && p[0] != '*') {
        const char *scheme = memchr(p, ':', (size_t)(path_end - p));
        if (scheme != NULL && path_end - scheme >= 3 && scheme[1] == '/' && scheme[2] == '/') {
            const char *slash = memchr(scheme + 3, '/', (size_t)(path_end - (scheme + 3)));
            p = slash != NULL ? slash : path_end;
        }
    }
    *path = (struct polis_str){p, (size_t)(path_end - p)};
    if (path->len == 0)
        *path = POLIS_STR("/");
    if (q != NULL)
        *query = (struct polis_str){q + 1, (size_t)(end - q - 1)};
    else
        *query = (struct polis_str){end, 0};
}

/* Append the handler's response to the output; on failure the output is left as it was. */
static int conn_queue_response(struct conn *c, struct polis_response *res, int minor_version,
                               bool head_request, bool keep_alive)
{
    struct polis_buf *out = &c->out;
    size_t mark = polis_buf_len(out);
    int status = res->status;
    bool no_body = status == 204 || status == 304;
    size_t body_len = polis_buf_len(&res->body);
    int rc = polis_buf_printf(out, "HTTP/1.1 %d %s\r\n", status, polis_http_reason(status));
    if (rc == 0)
        rc = polis_buf_append(out, polis_buf_head(&res->head), polis_buf_len(&res->head));
    if (rc == 0 && !no_body)
        rc = polis_buf_printf(out, "Content-Length: %zu\r\n", body_len);
    if (rc == 0 && !keep_alive)
        rc = polis_buf_append(out, "Connection: close\r\n", 19);
    else if (rc == 0 && minor_version == 0)
        rc = polis_buf_append(out, "Connection: keep-alive\r\n", 24);
    if (rc == 0)
        rc = polis_buf_append(out, "\r\n", 2);
    if (rc == 0 && !no_body && !head_request && body_len > 0)
        rc = polis_buf_append(out, polis_buf_head(&res->body), body_len);
    if (rc < 0)
        out->end = out->start + mark; /* never leave half a response */
    return rc;
}

/* Declare the server's families in m and resolve its series. Returns 0 or POLIS_ENOMEM. */
static int server_metrics(struct polis_server *s, struct polis_metrics *m)
{
    static const char *const classes[6] = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};
    static const char *const labels[] = {"status_class", NULL};
    struct polis_metric *req = polis_metrics_family(
        m, POLIS_METRIC_COUNTER, "polis_server_requests_total",
        "Requests answered by the service's handler, by status class.", labels, NULL, 0);
    s->m_duration =
        polis_metrics_family(m, POLIS_METRIC_HISTOGRAM, "polis_server_request_duration_seconds",
                             "Time the handler took.", NULL, polis_duration_buckets,
                             sizeof(polis_duration_buckets) / sizeof(polis_duration_buckets[0]));
    if (req == NULL || s->m_duration == NULL)
        return POLIS_ENOMEM;
    for (int i = 0; i < 6; i++) {
        const char *const v[] = {classes[i], NULL};
        if (polis_metric_series(req, v, &s->m_requests[i]) < 0)
            return POLIS_ENOMEM;
    }
    if (polis_metric_series(s->m_duration, NULL, &s->m_duration_slot) < 0)
        return POLIS_ENOMEM;
    s->metrics = m;
    return 0;
}

/* ---- Traces -------------------------------------------------------------------------------- */

/* Set while a handler of a traced server runs on this thread (see sdk-internal.h). */
static _Thread_local struct polis__trace_state tl_trace;

struct polis__trace_state *polis__trace_state(void)
{
    return &tl_trace;
}

const struct polis_trace_ctx *polis_trace_current(void)
{
    return tl_trace.tracer != NULL ? &tl_trace.ctx : NULL;
}

/* The incoming context: one valid traceparent field (several make it invalid, as W3C Trace
 * Context says). Its tracestate fields, joined, go to th->tracestate. */
static bool trace_incoming(struct server_thread *th, const struct polis_request *req,
                           struct polis_trace_ctx *parent, struct polis_str *tracestate)
{
    const struct polis_str *tp = NULL;
    size_t state_len = 0;
    bool state_ok = true;
    *tracestate = (struct polis_str){th->tracestate, 0};
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct polis_h1_header *h = &req->headers[i];
        if (polis_str_caseeq(h->name, POLIS_STR("traceparent"))) {
            if (tp != NULL)
                return false;
            tp = &h->value;
        } else if (polis_str_caseeq(h->name, POLIS_STR("tracestate")) && h->value.len > 0) {
            /* Too long once joined: dropped whole rather than cut in the middle of a member. */
            size_t need = h->value.len + (state_len > 0 ? 1 : 0);
            if (!state_ok || state_len + need > sizeof(th->tracestate)) {
                state_ok = false;
                continue;
            }
            if (state_len > 0)
                th->tracestate[state_len++] = ',';
            memcpy(th->tracestate + state_len, h->value.p, h->value.len);
            state_len += h->value.len;
        }
    }
    if (tp == NULL || polis_traceparent_parse(*tp, parent) < 0)
        return false;
    if (state_ok)
        tracestate->len = state_len;
    return true;
}

/* OpenTelemetry's http.request.method: a known method, or "_OTHER" (the method then goes to
 * http.request.method_original), so that the attribute keeps a small set of values. */
static bool method_known(struct polis_str m)
{
    static const char *const known[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                        "CONNECT", "OPTIONS", "TRACE", "PATCH"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (polis_str_eq(m, (struct polis_str){known[i], strlen(known[i])}))
            return true;
    return false;
}

/* Split "host:port", "[v6]:port" or "host" (an address field) into its parts; port -1 when
 * absent or invalid. */
static void split_hostport(struct polis_str hp, struct polis_str *host, int64_t *port)
{
    const char *p = hp.p, *end = hp.p + hp.len;
    const char *colon = NULL;
    *port = -1;
    if (hp.len > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', hp.len);
        if (close == NULL) {
            *host = hp;
            return;
        }
        *host = (struct polis_str){p + 1, (size_t)(close - p - 1)};
        if (close + 1 < end && close[1] == ':')
            colon = close + 1;
    } else {
        colon = memrchr(p, ':', hp.len);
        *host = (struct polis_str){p, colon != NULL ? (size_t)(colon - p) : hp.len};
    }
    if (colon == NULL || colon + 1 == end || end - colon > 6)
        return;
    int64_t v = 0;
    for (const char *q = colon + 1; q < end; q++) {
        if (*q < '0' || *q > '9')
            return;
        v = v * 10 + (*q - '0');
    }
    if (v <= 65535)
        *port = v;
}

/* Start the request's SERVER span in th->span and make its context the thread's current one.
 * Returns whether the trace is sampled: then the span is filled in, and trace_submit sends it once
 * the request is answered. */
static bool trace_begin(struct conn *c, const struct polis_request *req)
{
    struct server_thread *th = c->th;
    struct polis_tracer *tracer = th->srv->tracer;
    struct polis_span *span = &th->span;
    struct polis_trace_ctx parent;
    struct polis_str tracestate;
    bool has_parent = trace_incoming(th, req, &parent, &tracestate);

    char name[256];
    int n = snprintf(name, sizeof(name), "%.*s %.*s", (int)req->method.len, req->method.p,
                     (int)req->path.len, req->path.p);
    size_t name_len = n < 0 ? 0 : (size_t)n < sizeof(name) ? (size_t)n : sizeof(name) - 1;
    polis_span_start(span, has_parent ? &parent : NULL, POLIS_SPAN_SERVER,
                     (struct polis_str){name, name_len});
    bool sampled = polis_tracer_sampled(tracer, has_parent ? &parent : NULL, span->trace_id);
    tl_trace.tracer = tracer;
    polis_span_context(span, sampled, &tl_trace.ctx);
    tl_trace.tracestate = has_parent ? tracestate : (struct polis_str){NULL, 0};
    if (!sampled)
        return false;

    bool known = method_known(req->method);
    polis_span_attr_str(span, "http.request.method", known ? req->method : POLIS_STR("_OTHER"));
    if (!known)
        polis_span_attr_str(span, "http.request.method_original", req->method);
    polis_span_attr_str(span, "url.scheme", POLIS_STR("http"));
    polis_span_attr_str(span, "network.protocol.version",
                        c->msg.minor_version == 0 ? POLIS_STR("1.0") : POLIS_STR("1.1"));
    struct polis_str host;
    int64_t port;
    const struct polis_str *h = polis_request_header(req, "Host");
    if (h != NULL && h->len > 0) {
        split_hostport(*h, &host, &port);
        polis_span_attr_str(span, "server.address", host);
        if (port >= 0)
            polis_span_attr_int(span, "server.port", port);
    }
    split_hostport(req->client_addr, &host, &port);
    polis_span_attr_str(span, "client.address", host);
    if (port >= 0)
        polis_span_attr_int(span, "client.port", port);
    h = polis_request_header(req, "User-Agent");
    if (h != NULL)
        polis_span_attr_str(span, "user_agent.original", *h);
    /* Last: a long path fills the span's text, and later string attributes would be lost. */
    polis_span_attr_str(span, "url.path", req->path);
    return true;
}

/* The handler returned: the thread runs no traced request any more. */
static void trace_clear(void)
{
    tl_trace.tracer = NULL;
    tl_trace.tracestate = (struct polis_str){NULL, 0};
}

/* The request was answered with status: finish and submit its sampled span. */
static void trace_submit(struct polis_tracer *tracer, struct polis_span *span, int status)
{
    polis_span_attr_int(span, "http.response.status_code", status);
    polis_span_end(span, status >= 500 ? POLIS_SPAN_ERROR : POLIS_SPAN_UNSET);
    polis_tracer_submit(tracer, span);
}

/* Count a request answered with status, started at t0, in the thread's metrics shard. */
static void metrics_record(struct server_thread *th, int status, const struct timespec *t0)
{
    const struct polis_server *s = th->srv;
    if (s->metrics == NULL)
        return;
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int cls = status >= 100 && status < 600 ? status / 100 - 1 : 5;
    polis_counter_add(th->shard, s->m_requests[cls], 1);
    polis_histogram_observe(th->shard, s->m_duration, s->m_duration_slot,
                            (double)(t1.tv_sec - t0->tv_sec) +
                                (double)(t1.tv_nsec - t0->tv_nsec) / 1e9);
}

/* ---- Deferred answers ----------------------------------------------------------------------- */

static void hub_unref(struct deferred_hub *h)
{
    pthread_mutex_lock(&h->mu);
    bool last = --h->refs == 0;
    pthread_mutex_unlock(&h->mu);
    if (last) {
        pthread_mutex_destroy(&h->mu);
        free(h);
    }
}

static void deferred_free(struct polis_deferred *d)
{
    struct deferred_hub *h = d->hub;
    polis_buf_free(&d->res.head);
    polis_buf_free(&d->res.body);
    free(d);
    hub_unref(h);
}

struct polis_deferred *polis_response_defer(struct polis_response *res)
{
    if (res == NULL || !res->open || res->conn == NULL || res->deferred != NULL)
        return NULL;
    struct conn *c = res->conn;
    struct server_thread *th = c->th;
    if (th->stopping || th->hub == NULL)
        return NULL;
    struct polis_deferred *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->hub = th->hub;
    pthread_mutex_lock(&d->hub->mu);
    d->hub->refs++;
    pthread_mutex_unlock(&d->hub->mu);
    d->c = c;
    d->keep_alive = c->msg.keep_alive;
    d->head_request = res->head_request;
    d->minor_version = c->msg.minor_version;
    d->t0 = res->t0;
    polis_buf_init(&d->res.head, RES_HEAD_CAP);
    polis_buf_init(&d->res.body, RES_BODY_CAP);
    d->res.status = 200;
    res->deferred = d;
    res->open = false; /* what the handler puts in res from now on is dropped */
    return d;
}

/* Add one "Name: value" line to res; a malformed one is dropped with a warning. */
static void deferred_header(struct polis_response *res, const char *line)
{
    const char *colon = strchr(line, ':');
    char name[256];
    size_t n = colon != NULL ? (size_t)(colon - line) : 0;
    if (n == 0 || n >= sizeof(name)) {
        polis_warn("http server: deferred answer: header \"%.64s\" dropped (expected "
                   "\"Name: value\")",
                   line);
        return;
    }
    memcpy(name, line, n);
    name[n] = '\0';
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (polis_response_header(res, name, v) == POLIS_EINVAL)
        polis_warn("http server: deferred answer: invalid header %s dropped", name);
}

void polis_deferred_finish(struct polis_deferred *d, int status, const char *const *headers,
                           const void *body, size_t len)
{
    if (d == NULL)
        return;
    struct polis_response *res = &d->res;
    res->open = true;
    if (polis_response_status(res, status) < 0) {
        polis_warn("http server: deferred answer with an invalid status %d: 500 instead", status);
        res->failed = true;
    }
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
        deferred_header(res, headers[i]);
    if (len > 0)
        polis_response_body(res, body, len);
    res->open = false;

    struct deferred_hub *h = d->hub;
    pthread_mutex_lock(&h->mu);
    if (!h->closed) {
        d->next = NULL;
        if (h->done_tail != NULL)
            h->done_tail->next = d;
        else
            h->done_head = d;
        h->done_tail = d;
        /* Under the lock: the thread closes the wake only after it closed the hub. */
        polis_async_send(h->wake);
        pthread_mutex_unlock(&h->mu);
        return;
    }
    pthread_mutex_unlock(&h->mu);
    deferred_free(d); /* the server is gone */
}

/* Count and trace a deferred request once, when it is answered (or its answer came after the
 * client left). */
static void deferred_record(struct server_thread *th, struct polis_deferred *d, int status)
{
    if (d->recorded)
        return;
    d->recorded = true;
    metrics_record(th, status, &d->t0);
    if (d->traced)
        trace_submit(th->srv->tracer, &d->span, status);
}

/* Queue the answer res to c's deferred request d and let the requests behind it go on. */
static void conn_answer_deferred(struct conn *c, struct polis_deferred *d,
                                 struct polis_response *res)
{
    struct server_thread *th = c->th;
    deferred_record(th, d, res->failed ? 500 : res->status);
    c->deferred = NULL;
    d->c = NULL;
    bool keep_alive = d->keep_alive && !res->close && !th->stopping;
    int rc = res->failed
                 ? POLIS_ETOOBIG
                 : conn_queue_response(c, res, d->minor_version, d->head_request, keep_alive);
    if (rc < 0) {
        polis_error("http server: deferred answer to %.*s dropped: %s", (int)c->addr_len, c->addr,
                    polis_strerror(rc));
        conn_send_error(c, POLIS_ETOOBIG); /* 500 */
        return;
    }
    if (!keep_alive)
        c->close_after = true;
}

/* The server stops: a deferred request still waiting is answered 503 now; its
 * polis_deferred_finish() will only free. */
static void conn_abort_deferred(struct conn *c)
{
    struct server_thread *th = c->th;
    struct polis_response *res = &th->res;
    response_reset(res);
    res->open = true;
    polis_response_status(res, 503);
    polis_response_header(res, "Content-Type", "application/json");
    polis_response_printf(res, "{\"error\":\"shutting_down\",\"status\":503,"
                               "\"message\":\"the server is stopping\"}");
    res->open = false;
    conn_answer_deferred(c, c->deferred, res);
}

/* Send the answers finished since the last wake-up; free each polis_deferred. */
static void thread_take_answers(struct server_thread *th)
{
    struct deferred_hub *h = th->hub;
    pthread_mutex_lock(&h->mu);
    struct polis_deferred *d = h->done_head;
    h->done_head = h->done_tail = NULL;
    pthread_mutex_unlock(&h->mu);
    while (d != NULL) {
        struct polis_deferred *next = d->next;
        struct conn *c = d->c;
        if (c != NULL) {
            conn_answer_deferred(c, d, &d->res);
            conn_run(c);
        } else {
            deferred_record(th, d, d->res.failed ? 500 : d->res.status); /* the client left */
        }
        deferred_free(d);
        d = next;
    }
}

/* The thread ends: answers that come later are only freed. */
static void hub_close(struct server_thread *th)
{
    struct deferred_hub *h = th->hub;
    if (h == NULL)
        return;
    th->hub = NULL;
    pthread_mutex_lock(&h->mu);
    h->closed = true;
    struct polis_deferred *d = h->done_head;
    h->done_head = h->done_tail = NULL;
    pthread_mutex_unlock(&h->mu);
    while (d != NULL) {
        struct polis_deferred *next = d->next;
        deferred_free(d);
        d = next;
    }
    hub_unref(h);
}

/* The request (head and body) is complete at the front of the input: run the handler.
 * msg_len: the request's bytes to drop afterwards; body: offset and length in the input. */
static void conn_dispatch(struct conn *c, size_t msg_len, size_t body_off, size_t body_len)
{
    struct server_thread *th = c->th;
    const struct polis_server *s = th->srv;
    char *p = polis_buf_head(&c->in);

    if (c->head_base != (uintptr_t)p) {
        /* The input moved while the body arrived: its views were dropped; parse again. */
        size_t scan = 0, head_len = 0;
        int rc =
            polis_h1_parse_request(p, c->head_len, &scan, &c->msg, MAX_HEADERS, &s->lim, &head_len);
        if (rc < 0 || head_len != c->head_len) {
            conn_send_error(c, rc < 0 ? rc : POLIS_EBADMSG);
            return;
        }
    }

    struct polis_request req = {
        .method = c->msg.method,
        .target = c->msg.target,
        .headers = c->msg.headers,
        .num_headers = c->msg.num_headers,
        .body = {p + body_off, body_len},
        .client_addr = {c->addr, c->addr_len},
    };
    split_target(req.target, &req.path, &req.query);

    struct polis_response *res = &th->res;
    response_reset(res);
    res->open = true;
    bool head_request = polis_str_eq(req.method, POLIS_STR("HEAD"));
    if (s->metrics != NULL && polis_str_eq(req.path, POLIS_STR("/metrics")) &&
        (polis_str_eq(req.method, POLIS_STR("GET")) ||
         polis_str_eq(req.method, POLIS_STR("HEAD")))) {
        polis_response_header(res, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        if (polis_metrics_render(s->metrics, &res->body) < 0)
            res->failed = true;
    } else {
        bool sampled = s->tracer != NULL && trace_begin(c, &req);
        /* The handler's log lines carry the request's id and trace id. */
        char tp[POLIS_TRACEPARENT_LEN + 1] = "";
        const struct polis_trace_ctx *cur = polis_trace_current();
        if (cur != NULL)
            polis_traceparent_format(cur, tp);
        int ri = c->msg.hdr_index[POLIS_HDR_X_REQUEST_ID];
        polis_log_set_context(ri >= 0 ? c->msg.headers[ri].value : (struct polis_str){NULL, 0},
                              cur != NULL ? (struct polis_str){tp + 3, 32}
                                          : (struct polis_str){NULL, 0});
        res->head_request = head_request;
        res->conn = c;
        if (s->metrics != NULL)
            clock_gettime(CLOCK_MONOTONIC, &res->t0);
        s->handler(&req, res, s->ud);
        polis_log_set_context((struct polis_str){NULL, 0}, (struct polis_str){NULL, 0});
        res->conn = NULL;
        if (s->tracer != NULL)
            trace_clear();
        struct polis_deferred *d = res->deferred;
        if (d != NULL) {
            /* Counted and traced when answered. The request's bytes go now: nothing of it is
             * needed any more, and the requests behind it wait in the input. */
            if (sampled) {
                d->traced = true;
                d->span = th->span;
            }
            res->deferred = NULL;
            res->open = false;
            response_trim(res);
            c->deferred = d;
            polis_buf_consume(&c->in, msg_len);
            c->phase = PHASE_HEAD;
            c->scan = 0;
            return;
        }
        metrics_record(th, res->failed ? 500 : res->status, &res->t0);
        if (sampled)
            trace_submit(s->tracer, &th->span, res->failed ? 500 : res->status);
    }
    res->open = false;

    bool keep_alive = c->msg.keep_alive && !res->close && !th->stopping;
    int rc = res->failed
                 ? POLIS_ETOOBIG
                 : conn_queue_response(c, res, c->msg.minor_version, head_request, keep_alive);
    response_trim(res);
    if (rc < 0) {
        polis_error("http server: response to %.*s %.*s dropped: %s", (int)req.method.len,
                    req.method.p, (int)req.target.len, req.target.p, polis_strerror(rc));
        conn_send_error(c, POLIS_ETOOBIG); /* 500 */
        return;
    }
    polis_buf_consume(&c->in, msg_len);
    c->phase = PHASE_HEAD;
    c->scan = 0;
    if (!keep_alive)
        c->close_after = true;
}

/* Send "100 Continue" when the client waits for it before sending a body it has not sent. */
static void conn_maybe_continue(struct conn *c, bool body_missing)
{
    if (c->msg.expect_continue && c->msg.minor_version >= 1 && body_missing)
        if (polis_buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25) < 0)
            c->close_after = true;
}

/* A head was parsed: set up the body. */
static int conn_head_done(struct conn *c)
{
    const struct polis_server *s = c->th->srv;
    size_t len = polis_buf_len(&c->in);
    c->head_timer = false;
    c->head_base = (uintptr_t)polis_buf_head(&c->in);
    switch (c->msg.body) {
    case POLIS_BODY_NONE:
        conn_dispatch(c, c->head_len, c->head_len, 0);
        return 0;
    case POLIS_BODY_LENGTH:
        if (c->msg.content_length > s->max_body) {
            conn_send_error(c, POLIS_EBODYTOOBIG);
            return 0;
        }
        c->phase = PHASE_BODY_LENGTH;
        conn_maybe_continue(c, len - c->head_len < c->msg.content_length);
        return 0;
    case POLIS_BODY_CHUNKED:
        polis_h1_chunked_init(&c->chunked, s->max_body);
        c->body_end = c->head_len;
        c->phase = PHASE_BODY_CHUNKED;
        conn_maybe_continue(c, len == c->head_len);
        return 0;
    default: /* POLIS_BODY_CLOSE is for responses */
        conn_send_error(c, POLIS_EBADMSG);
        return 0;
    }
}

/* Decode what arrived of a chunked body, in place. */
static int conn_chunked(struct conn *c)
{
    char *p = polis_buf_head(&c->in);
    size_t len = polis_buf_len(&c->in);
    size_t consumed = 0, out_len = 0;
    if (len == c->body_end)
        return POLIS_EAGAIN;
    char *raw = p + c->body_end;
    int rc = polis_h1_chunked_feed(&c->chunked, raw, len - c->body_end, &consumed, raw, &out_len);
    if (rc < 0) {
        conn_send_error(c, rc);
        return 0;
    }
    size_t tail = len - c->body_end - consumed;
    if (tail > 0 && out_len < consumed)
        memmove(raw + out_len, raw + consumed, tail);
    c->body_end += out_len;
    c->in.end = c->in.start + c->body_end + tail;
    if (rc == 0)
        return POLIS_EAGAIN;
    conn_dispatch(c, c->body_end, c->head_len, c->body_end - c->head_len);
    return 0;
}

/* Advance the request at the front of the input by one step. Returns 0 when something happened
 * (a response or an error was queued, or the phase changed), POLIS_EAGAIN when bytes are
 * missing. */
static int conn_step(struct conn *c)
{
    const struct polis_server *s = c->th->srv;
    size_t len = polis_buf_len(&c->in);
    switch (c->phase) {
    case PHASE_HEAD: {
        if (len == 0)
            return POLIS_EAGAIN;
        c->msg.headers = c->headers;
        int rc = polis_h1_parse_request(polis_buf_head(&c->in), len, &c->scan, &c->msg, MAX_HEADERS,
                                        &s->lim, &c->head_len);
        if (rc == POLIS_EAGAIN)
            return rc;
        if (rc < 0) {
            conn_send_error(c, rc);
            return 0;
        }
        return conn_head_done(c);
    }
    case PHASE_BODY_LENGTH:
        if (len - c->head_len < c->msg.content_length)
            return POLIS_EAGAIN;
        conn_dispatch(c, c->head_len + (size_t)c->msg.content_length, c->head_len,
                      (size_t)c->msg.content_length);
        return 0;
    case PHASE_BODY_CHUNKED:
        return conn_chunked(c);
    case PHASE_LINGER:
        break;
    }
    return POLIS_EAGAIN;
}

/* Read once into the input. Returns 0 (bytes arrived), POLIS_EAGAIN, POLIS_ECLOSED (FIN),
 * POLIS_ETOOBIG (the buffer is full), POLIS_ENOMEM or POLIS_ESYS. */
static int conn_read(struct conn *c)
{
    struct polis_buf *b = &c->in;
    size_t room = b->cap - polis_buf_len(b);
    if (room == 0)
        return POLIS_ETOOBIG;
    int rc = polis_buf_reserve(b, room < READ_CHUNK ? room : READ_CHUNK);
    if (rc < 0)
        return rc;
    if (c->phase != PHASE_HEAD && (uintptr_t)(b->data + b->start) != c->head_base) {
        /* The head moved: forget the views into the old bytes until dispatch parses again. */
        memset(c->headers, 0, c->msg.num_headers * sizeof(c->headers[0]));
        c->msg.num_headers = 0;
        c->msg.method = c->msg.target = c->msg.reason = (struct polis_str){NULL, 0};
    }
    size_t want = b->size - b->end;
    if (want > room)
        want = room;
    ssize_t n;
    do {
        n = recv(c->fd, b->data + b->end, want, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        b->end += (size_t)n;
        return 0;
    }
    if (n == 0)
        return POLIS_ECLOSED;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return POLIS_EAGAIN;
    return POLIS_ESYS;
}

/* Write the pending output. Returns 0 when all is written, POLIS_EAGAIN or POLIS_ESYS. */
static int conn_flush(struct conn *c)
{
    struct polis_buf *b = &c->out;
    while (polis_buf_len(b) > 0) {
        ssize_t n = send(c->fd, polis_buf_head(b), polis_buf_len(b), MSG_NOSIGNAL);
        if (n > 0) {
            polis_buf_consume(b, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return POLIS_EAGAIN;
        return POLIS_ESYS;
    }
    polis_buf_free(b); /* idle connections keep no output memory */
    return 0;
}

/* Arm the timeout that fits what the connection waits for. */
static void conn_set_timer(struct conn *c)
{
    struct server_thread *th = c->th;
    const struct polis_server *s = th->srv;
    if (c->deferred != NULL && polis_buf_len(&c->out) == 0) {
        /* Waiting for the application's answer: no timeout of ours applies. */
        c->head_timer = false;
        polis_timer_cancel(th->loop, &c->timer);
        return;
    }
    if (polis_buf_len(&c->out) == 0 && c->phase == PHASE_HEAD) {
        if (polis_buf_len(&c->in) == 0) {
            /* Between requests: idle. */
            c->head_timer = false;
            polis_buf_free(&c->in);
            polis_timer_arm(th->loop, &c->timer, s->idle_ms);
        } else if (!c->head_timer) {
            /* The whole head must arrive within header_ms of its first byte. */
            c->head_timer = true;
            polis_timer_arm(th->loop, &c->timer, s->header_ms);
        }
        return;
    }
    /* A body arriving or a response leaving: each bit of progress restarts the clock. */
    polis_timer_arm(th->loop, &c->timer, s->idle_ms);
}

/* Discard input after the response went out and the write side was shut down, so that the
 * peer reads the response instead of a reset. Bounded in time and bytes. */
static void conn_linger(struct conn *c)
{
    char sink[4096];
    for (;;) {
        ssize_t n = recv(c->fd, sink, sizeof(sink), 0);
        if (n > 0) {
            c->linger_bytes += (size_t)n;
            if (c->linger_bytes > LINGER_MAX)
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        break;
    }
    conn_close(c);
}

static void conn_start_linger(struct conn *c)
{
    struct server_thread *th = c->th;
    if (c->eof || th->stopping) {
        conn_close(c);
        return;
    }
    shutdown(c->fd, SHUT_WR);
    c->phase = PHASE_LINGER;
    polis_buf_free(&c->in);
    polis_buf_free(&c->out);
    polis_timer_arm(th->loop, &c->timer, LINGER_MS);
    conn_linger(c);
}

/* Drive the connection as far as it goes without waiting, or until its turn is over. May free c.
 */
static void conn_run(struct conn *c)
{
    int reads = 0;
    conn_unqueue(c);
    for (;;) {
        if (c->phase == PHASE_LINGER) {
            conn_linger(c);
            return;
        }
        /* Every complete request already here, while the output is small; none behind a
         * deferred one. */
        while (!c->close_after && c->deferred == NULL && polis_buf_len(&c->out) < OUT_HIGH_WATER)
            if (conn_step(c) == POLIS_EAGAIN)
                break;
        if (polis_buf_len(&c->out) > 0) {
            int rc = conn_flush(c);
            if (rc == POLIS_EAGAIN) {
                conn_set_timer(c); /* wait for POLIS_EV_WRITE; read nothing meanwhile */
                return;
            }
            if (rc < 0) {
                conn_close(c);
                return;
            }
            continue; /* more buffered requests may wait behind the high-water mark */
        }
        if (c->close_after) {
            conn_start_linger(c);
            return;
        }
        if (c->eof || (c->th->stopping && conn_idle(c))) {
            /* A partial request can no longer complete; a client that stops sending while
             * its answer is deferred is taken as gone (nginx does the same). */
            conn_close(c);
            return;
        }
        if (++reads > READ_BUDGET) {
            conn_set_timer(c);
            conn_queue(c);
            return;
        }
        int rc = conn_read(c);
        if (rc == 0)
            continue;
        if (rc == POLIS_EAGAIN) {
            conn_set_timer(c);
            return;
        }
        if (rc == POLIS_ECLOSED) {
            c->eof = true;
            continue;
        }
        if (rc == POLIS_ETOOBIG && c->deferred != NULL) {
            /* Requests pipelined behind a deferred one filled the input: read on later. */
            conn_set_timer(c);
            return;
        }
        if (rc == POLIS_ETOOBIG) {
            /* Unreachable with sane limits (the parser and max_body trip first). */
            conn_send_error(c, c->phase == PHASE_HEAD ? POLIS_EHDRTOOBIG : POLIS_EBODYTOOBIG);
            continue;
        }
        conn_close(c);
        return;
    }
}

static void conn_on_event(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    conn_run(container_of(w, struct conn, w));
}

static void conn_on_timer(struct polis_loop *loop, struct polis_timer *t)
{
    struct conn *c = container_of(t, struct conn, timer);
    if (c->phase == PHASE_HEAD && polis_buf_len(&c->in) > 0 && polis_buf_len(&c->out) == 0 &&
        !c->close_after && c->deferred == NULL) {
        conn_send_error(c, POLIS_ETIMEDOUT); /* the head did not arrive in time: 408 */
        conn_run(c);
        return;
    }
    conn_close(c);
}

static void format_addr(struct conn *c, const struct sockaddr_storage *ss)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0, n;
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        n = snprintf(c->addr, sizeof(c->addr), "[%s]:%d", ip, port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        n = snprintf(c->addr, sizeof(c->addr), "%s:%d", ip, port);
    }
    c->addr_len = n > 0 && (size_t)n < sizeof(c->addr) ? (size_t)n : 0;
}

/* Take ownership of an accepted socket. On failure the socket is closed. */
static void conn_new(struct server_thread *th, int fd, const struct sockaddr_storage *ss)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        polis_warn("http server: out of memory for a connection");
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->th = th;
    c->fd = fd;
    c->phase = PHASE_HEAD;
    c->msg.headers = c->headers;
    polis_buf_init(&c->in, th->srv->in_cap);
    polis_buf_init(&c->out, OUT_HIGH_WATER + RES_HEAD_CAP + RES_BODY_CAP + 4096);
    polis_timer_init(&c->timer, conn_on_timer);
    format_addr(c, ss);
    if (polis_loop_add(th->loop, &c->w, fd, POLIS_EV_READ | POLIS_EV_WRITE, conn_on_event) < 0) {
        polis_warn("http server: cannot watch a connection: %s", strerror(errno));
        close(fd);
        free(c);
        return;
    }
    c->next = th->conns;
    if (th->conns != NULL)
        th->conns->prev = c;
    th->conns = c;
    th->nconns++;
    polis_timer_arm(th->loop, &c->timer, th->srv->idle_ms);
}

/* ---- Threads -------------------------------------------------------------------------------- */

static void thread_accept(struct server_thread *th)
{
    while (th->listening) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(th->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_new(th, fd, &ss);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        /* Out of descriptors or memory: the edge is gone, so retry on a timer. */
        polis_warn("http server: accept: %s", strerror(errno));
        polis_timer_arm(th->loop, &th->accept_timer, ACCEPT_RETRY_MS);
        return;
    }
}

static void thread_on_accept(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    thread_accept(container_of(w, struct server_thread, lw));
}

static void thread_on_accept_retry(struct polis_loop *loop, struct polis_timer *t)
{
    thread_accept(container_of(t, struct server_thread, accept_timer));
}

static void thread_stop_listening(struct server_thread *th)
{
    if (th->listening) {
        polis_loop_del(th->loop, &th->lw);
        th->listening = false;
    }
    if (th->lfd >= 0) {
        close(th->lfd);
        th->lfd = -1;
    }
    polis_timer_cancel(th->loop, &th->accept_timer);
}

static void thread_on_drain_timeout(struct polis_loop *loop, struct polis_timer *t)
{
    struct server_thread *th = container_of(t, struct server_thread, drain_timer);
    while (th->conns != NULL)
        conn_close(th->conns);
    polis_loop_stop(loop);
}

/* Send the deferred answers that arrived, resume the connections queued before this iteration
 * (those that queue again wait for the next one). Then, when polis_server_stop() asked: stop
 * accepting, close what is idle, answer deferred requests 503, let the rest finish. */
static void thread_on_wake(struct polis_async *a)
{
    struct server_thread *th = container_of(a, struct server_thread, wake);
    thread_take_answers(th);
    /* conn_run(c) changes the queue only by taking c off its front and maybe putting it back at
     * the tail, so the first n entries are exactly the ones queued before. */
    for (size_t n = th->nready; n > 0 && th->ready_head != NULL; n--)
        conn_run(th->ready_head);
    if (!atomic_load(&th->srv->stop) || th->stopping)
        return;
    th->stopping = true;
    thread_stop_listening(th);
    for (struct conn *c = th->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->deferred != NULL) {
            conn_abort_deferred(c);
            conn_run(c); /* may free c only */
        } else if (conn_idle(c) || c->phase == PHASE_LINGER) {
            conn_close(c);
        }
    }
    if (th->nconns == 0) {
        polis_loop_stop(th->loop);
        return;
    }
    polis_timer_arm(th->loop, &th->drain_timer, DRAIN_MS);
}

static int thread_setup(struct server_thread *th)
{
    th->loop = polis_loop_new();
    if (th->loop == NULL)
        return errno == ENOMEM ? POLIS_ENOMEM : POLIS_ESYS;
    polis_timer_init(&th->accept_timer, thread_on_accept_retry);
    polis_timer_init(&th->drain_timer, thread_on_drain_timeout);
    polis_buf_init(&th->res.head, RES_HEAD_CAP);
    polis_buf_init(&th->res.body, RES_BODY_CAP);
    int rc = polis_async_init(th->loop, &th->wake, thread_on_wake);
    if (rc < 0)
        return rc;
    th->wake_ok = true;
    th->hub = calloc(1, sizeof(*th->hub));
    if (th->hub == NULL)
        return POLIS_ENOMEM;
    pthread_mutex_init(&th->hub->mu, NULL);
    th->hub->refs = 1;
    th->hub->wake = &th->wake;
    if (th->srv->metrics != NULL) {
        th->shard = polis_metrics_shard_new(th->srv->metrics); /* freed with the registry */
        if (th->shard == NULL)
            return POLIS_ENOMEM;
    }
    rc = polis_loop_add(th->loop, &th->lw, th->lfd, POLIS_EV_READ, thread_on_accept);
    if (rc < 0)
        return rc;
    th->listening = true;
    return 0;
}

static void thread_teardown(struct server_thread *th)
{
    if (th->loop == NULL)
        return;
    th->stopping = true;
    while (th->conns != NULL)
        conn_close(th->conns);
    thread_stop_listening(th);
    polis_timer_cancel(th->loop, &th->drain_timer);
    hub_close(th);
    if (th->wake_ok) {
        polis_async_close(&th->wake);
        th->wake_ok = false;
    }
    polis_buf_free(&th->res.head);
    polis_buf_free(&th->res.body);
    polis_loop_free(th->loop);
    th->loop = NULL;
}

static void *thread_main(void *arg)
{
    struct server_thread *th = arg;
    struct polis_server *s = th->srv;
    int rc = thread_setup(th);
    pthread_mutex_lock(&s->mu);
    th->ready = rc == 0;
    if (rc < 0 && s->setup_err == 0)
        s->setup_err = rc;
    s->nreported++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (rc == 0) {
        rc = polis_loop_run(th->loop);
        if (rc < 0)
            polis_error("http server: event loop failed: %s", strerror(errno));
    }
    thread_teardown(th);
    return NULL;
}

/* ---- Server --------------------------------------------------------------------------------- */

/* "host:port", "[v6]:port" or ":port" -> a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *sl)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (colon == NULL)
        return POLIS_EINVAL;
    size_t hlen = (size_t)(colon - listen);
    const char *h = listen;
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    } else if (memchr(h, ':', hlen) != NULL) {
        return POLIS_EINVAL; /* a bare IPv6 address needs brackets */
    }
    if (hlen >= sizeof(host))
        return POLIS_EINVAL;
    memcpy(host, h, hlen);
    host[hlen] = '\0';

    const char *port = colon + 1;
    char *end;
    errno = 0;
    long pn = strtol(port, &end, 10);
    if (*port < '0' || *port > '9' || *end != '\0' || errno != 0 || pn < 0 || pn > 65535)
        return POLIS_EINVAL;

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    hints.ai_family = hlen == 0 ? AF_INET : AF_UNSPEC; /* ":port": every IPv4 address */
    struct addrinfo *ai = NULL;
    if (getaddrinfo(hlen == 0 ? NULL : host, port, &hints, &ai) != 0 || ai == NULL)
        return POLIS_EINVAL;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *sl = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

static int listen_socket(const struct sockaddr_storage *ss, socklen_t sl, int *out)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return POLIS_ESYS;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)ss, sl) < 0 || listen(fd, SOMAXCONN) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return POLIS_ESYS;
    }
    *out = fd;
    return 0;
}

/* Ask every running thread to stop, join them all, free s. */
static void server_shutdown(struct polis_server *s)
{
    atomic_store(&s->stop, true);
    for (int i = 0; i < s->nthreads; i++) {
        struct server_thread *th = &s->threads[i];
        if (th->created && th->ready)
            polis_async_send(&th->wake);
    }
    for (int i = 0; i < s->nthreads; i++) {
        struct server_thread *th = &s->threads[i];
        if (th->created)
            pthread_join(th->tid, NULL);
        if (th->lfd >= 0)
            close(th->lfd);
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->threads);
    free(s);
}

int polis_server_start(const struct polis_server_opts *opts, struct polis_server **out)
{
    if (opts == NULL || opts->listen == NULL || opts->handler == NULL || out == NULL ||
        opts->threads < 0 || opts->threads > MAX_THREADS)
        return POLIS_EINVAL;
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    int saved_errno;
    int rc = parse_listen(opts->listen, &ss, &sl);
    if (rc < 0)
        return rc;

    struct polis_server *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return POLIS_ENOMEM;
    s->nthreads = opts->threads > 0 ? opts->threads : 1;
    s->threads = calloc((size_t)s->nthreads, sizeof(*s->threads));
    if (s->threads == NULL) {
        free(s);
        return POLIS_ENOMEM;
    }
    s->handler = opts->handler;
    s->ud = opts->ud;
    s->tracer = opts->tracer;
    if (opts->metrics != NULL && server_metrics(s, opts->metrics) < 0) {
        free(s->threads);
        free(s);
        return POLIS_ENOMEM;
    }
    s->max_body = opts->max_body > 0 ? opts->max_body : DEFAULT_MAX_BODY;
    s->idle_ms = opts->idle_timeout_ms > 0 ? opts->idle_timeout_ms : DEFAULT_IDLE_MS;
    s->header_ms = opts->header_timeout_ms > 0 ? opts->header_timeout_ms : DEFAULT_HEADER_MS;
    s->lim = default_limits;
    s->in_cap = s->lim.max_head + s->max_body + CHUNKED_SLACK;
    atomic_init(&s->stop, false);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    for (int i = 0; i < s->nthreads; i++)
        s->threads[i].lfd = -1;

    /* One listener per thread; with port 0 the first one picks the port for all. */
    for (int i = 0; i < s->nthreads; i++) {
        struct server_thread *th = &s->threads[i];
        th->srv = s;
        rc = listen_socket(&ss, sl, &th->lfd);
        if (rc < 0) {
            int e = errno;
            polis_error("http server: cannot listen on %s: %s", opts->listen, strerror(e));
            errno = e;
            goto fail;
        }
        if (i == 0) {
            struct sockaddr_storage bound;
            socklen_t bl = sizeof(bound);
            if (getsockname(th->lfd, (struct sockaddr *)&bound, &bl) < 0) {
                rc = POLIS_ESYS;
                goto fail;
            }
            s->port = bound.ss_family == AF_INET6
                          ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                          : ntohs(((struct sockaddr_in *)&bound)->sin_port);
            set_port(&ss, s->port);
        }
    }

    /* Server threads never take the process's signals: polis_wait_for_shutdown_signal() or the
     * application handles them, and SIGPIPE is avoided with MSG_NOSIGNAL anyway. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (int i = 0; i < s->nthreads; i++) {
        struct server_thread *th = &s->threads[i];
        int e = pthread_create(&th->tid, NULL, thread_main, th);
        if (e != 0) {
            errno = e;
            rc = POLIS_ESYS;
            break;
        }
        th->created = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    int created = 0;
    for (int i = 0; i < s->nthreads; i++)
        created += s->threads[i].created;
    pthread_mutex_lock(&s->mu);
    while (s->nreported < created)
        pthread_cond_wait(&s->cv, &s->mu);
    if (rc == 0)
        rc = s->setup_err;
    pthread_mutex_unlock(&s->mu);
    if (rc < 0)
        goto fail;
    *out = s;
    return 0;

fail:
    saved_errno = errno;
    server_shutdown(s);
    errno = saved_errno; /* POLIS_ESYS: errno says why */
    return rc;
}

int polis_server_port(const struct polis_server *s)
{
    return s->port;
}

void polis_server_stop(struct polis_server *s)
{
    if (s != NULL)
        server_shutdown(s);
}

int polis_wait_for_shutdown_signal(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    int sig = 0;
    while (sigwait(&set, &sig) != 0)
        ;
    return sig;
}
