/* polis/http.h: the strict HTTP/1.1 parser (RFC 9112) and a simple HTTP server for services. */
#ifndef POLIS_HTTP_H
#define POLIS_HTTP_H

#include <polis/core.h>

/* ---- Parser ------------------------------------------------------------------------------- */

/* Headers the parser recognises, so that callers never compare names again. */
enum polis_h1_hdr {
    POLIS_HDR_OTHER = 0,
    POLIS_HDR_HOST,
    POLIS_HDR_CONTENT_LENGTH,
    POLIS_HDR_TRANSFER_ENCODING,
    POLIS_HDR_CONNECTION,
    POLIS_HDR_KEEP_ALIVE,
    POLIS_HDR_TE,
    POLIS_HDR_TRAILER,
    POLIS_HDR_UPGRADE,
    POLIS_HDR_PROXY_CONNECTION,
    POLIS_HDR_EXPECT,
    POLIS_HDR_X_FORWARDED_FOR,
    POLIS_HDR_X_FORWARDED_PROTO,
    POLIS_HDR_X_FORWARDED_HOST,
    POLIS_HDR_X_REQUEST_ID,
    POLIS_HDR_VIA,
    POLIS_HDR_COOKIE,
    POLIS_HDR__COUNT
};

/* One header field: views into the parsed buffer; value has surrounding OWS removed. */
struct polis_h1_header {
    struct polis_str name;
    struct polis_str value;
    uint8_t id; /* enum polis_h1_hdr */
    bool hop;   /* hop-by-hop: a fixed one (Connection, Keep-Alive, TE, Trailer, Upgrade,
                   Proxy-Connection, Transfer-Encoding) or one named in Connection */
};

enum polis_h1_body {
    POLIS_BODY_NONE = 0, /* no body (or Content-Length: 0) */
    POLIS_BODY_LENGTH,   /* content_length bytes follow */
    POLIS_BODY_CHUNKED,  /* chunked coding; walk it with polis_h1_chunked_feed() */
    POLIS_BODY_CLOSE,    /* responses only: the body runs until the server closes */
};

struct polis_h1_limits {
    size_t max_request_line; /* request line bytes; over it: POLIS_EURITOOLONG (414) */
    size_t max_head;         /* whole head bytes; over it: POLIS_EHDRTOOBIG (431) */
    size_t max_headers;      /* header count; over it: POLIS_EHDRTOOBIG (431) */
};

/* A parsed request or response head. Every view points into the caller's buffer. */
struct polis_h1_msg {
    struct polis_str method; /* requests */
    struct polis_str target; /* requests: the request-target as sent */
    int status;              /* responses: 100..999 */
    struct polis_str reason; /* responses */
    int minor_version;       /* 0 or 1 (HTTP/1.x only) */

    struct polis_h1_header *headers; /* caller's array of max_headers entries */
    size_t num_headers;

    /* Derived from the headers, once, by the parser. */
    enum polis_h1_body body;
    uint64_t content_length;    /* POLIS_BODY_LENGTH only */
    bool keep_alive;            /* version default adjusted by Connection: close/keep-alive */
    bool expect_continue;       /* request carries Expect: 100-continue */
    bool upgrade;               /* Connection: upgrade together with an Upgrade header */
    bool has_connection_tokens; /* Connection named other headers (their hop flag is set) */
    int16_t hdr_index[POLIS_HDR__COUNT]; /* index of the first header of each known id, or -1 */
};

/* Parse a request head from buf[0..len), all bytes received so far on the connection.
 * *scan is where the search for the end of the head resumes: set it to 0 for a new message and
 * pass it back unchanged on each later call, so bytes are never searched twice.
 * Returns 0 and sets *head_len (bytes of the head, the body starts there) when the head is
 * complete and valid; POLIS_EAGAIN when more bytes are needed (the limits are already enforced
 * on what was seen); POLIS_EBADMSG (400), POLIS_EURITOOLONG (414), POLIS_EHDRTOOBIG (431),
 * POLIS_EVERSION (505) or POLIS_ENOTIMPL (501) otherwise. Rejected: Content-Length with
 * Transfer-Encoding, several or malformed Content-Length, any transfer coding other than a
 * single "chunked", Transfer-Encoding in HTTP/1.0, bare CR, bare LF line ends, obs-fold,
 * whitespace before a colon, non-token names, control characters or NUL in values, a missing
 * or repeated Host in HTTP/1.1, invalid request targets. */
POLIS_API int polis_h1_parse_request(const char *buf, size_t len, size_t *scan,
                                     struct polis_h1_msg *m, size_t max_headers,
                                     const struct polis_h1_limits *lim, size_t *head_len);

/* Parse a response head, like polis_h1_parse_request(). head_request: the request was HEAD,
 * so the response has no body whatever its headers say. 1xx, 204 and 304 have no body either.
 * A response with neither Content-Length nor Transfer-Encoding has POLIS_BODY_CLOSE. */
POLIS_API int polis_h1_parse_response(const char *buf, size_t len, size_t *scan,
                                      struct polis_h1_msg *m, size_t max_headers,
                                      const struct polis_h1_limits *lim, bool head_request,
                                      size_t *head_len);

/* State of a chunked body walk; zero it (or polis_h1_chunked_init) before the first byte. */
struct polis_h1_chunked {
    uint8_t state;
    uint8_t digits;       /* hex digits read in the current size */
    uint64_t remaining;   /* payload bytes left in the current chunk */
    uint64_t total;       /* payload bytes so far */
    size_t line_len;      /* bytes in the current size/extension or trailer line */
    size_t trailer_bytes; /* bytes of trailer section so far */
    uint64_t max_body;    /* 0: no limit on total payload */
    size_t max_line;      /* cap on a chunk-size line with extensions (default 4096 if 0) */
    size_t max_trailer;   /* cap on the trailer section (default 8192 if 0) */
};

POLIS_API void polis_h1_chunked_init(struct polis_h1_chunked *c, uint64_t max_body);

/* Walk buf[0..len) of a chunked body. *consumed is set to the number of bytes that belong to
 * the body (framing included); when out is not NULL the payload bytes among them are copied to
 * out (which may be buf itself: decoding in place) and *out_len says how many.
 * Returns 0 when all len bytes were consumed and the body goes on, 1 when the body (with its
 * trailers and the final CRLF) ended at buf + *consumed (later bytes are the next message),
 * POLIS_EBADMSG on a framing error (bad size, size overflow, bad extension, bare CR or LF,
 * missing CRLF after data, bad trailer), POLIS_EBODYTOOBIG past max_body. Never reads past len
 * and keeps its state between calls so a body may arrive one byte at a time. */
POLIS_API int polis_h1_chunked_feed(struct polis_h1_chunked *c, const char *buf, size_t len,
                                    size_t *consumed, char *out, size_t *out_len);

/* Reason phrase for a status code ("OK", "Not Found", ...); "Unknown" when not known. */
POLIS_API const char *polis_http_reason(int status);

/* ---- A simple HTTP server for services ------------------------------------------------------ */

/* A request as a handler sees it: views valid until the handler returns. The body is complete
 * (de-chunked) and bounded by the server's max_body. */
struct polis_request {
    struct polis_str method;
    struct polis_str target; /* as sent: path and query */
    struct polis_str path;   /* target before '?' */
    struct polis_str query;  /* after '?', without it; empty when none */
    const struct polis_h1_header *headers;
    size_t num_headers;
    struct polis_str body;
    struct polis_str client_addr; /* "ip:port" of the peer */
};

struct polis_response;

/* Find a request header by name (ASCII case-insensitive). Returns NULL when absent. */
POLIS_API const struct polis_str *polis_request_header(const struct polis_request *req,
                                                       const char *name);

/* Build the response. The status defaults to 200; Content-Length, Date-less, keep-alive framing
 * is added by the server. Calls after the handler returned are ignored. Each returns 0 or
 * POLIS_ENOMEM / POLIS_ETOOBIG. */
POLIS_API int polis_response_status(struct polis_response *res, int status);
POLIS_API int polis_response_header(struct polis_response *res, const char *name,
                                    const char *value);
POLIS_API int polis_response_body(struct polis_response *res, const void *data, size_t len);
POLIS_API int polis_response_printf(struct polis_response *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Called on a server thread for each complete request; it fills res and returns, or defers
 * the answer (polis_response_defer). It may block briefly (it holds up only its own thread's
 * connections). */
typedef void (*polis_handler_fn)(const struct polis_request *req, struct polis_response *res,
                                 void *ud);

/* A request whose answer comes later, from any thread (long polls, work handed to a pool). */
struct polis_deferred;

/* In a handler: keep the request open and answer it later with polis_deferred_finish(). The
 * handler returns at once; what it put or puts in res is dropped, and req's views still end when
 * it returns (copy what the answer needs). Meanwhile the connection runs no header or idle
 * timeout, and requests pipelined behind this one wait (they are answered in order after it).
 * A client that closes, or only shuts down its sending side, meanwhile is taken as gone: its
 * connection is freed and the answer, when finished, is dropped.
 * polis_server_stop() answers requests still deferred then with 503 (error "shutting_down",
 * Connection: close) at once rather than waiting for them.
 * Loop thread (inside the handler) only. Returns the request's handle, owned by the caller until
 * it passes it to polis_deferred_finish() (which must happen exactly once, even after the client
 * left or the server stopped), or NULL when the request cannot be deferred: a second call, a
 * call after the handler returned, the server stopping, out of memory; the handler then answers
 * in res as usual. */
POLIS_API struct polis_deferred *polis_response_defer(struct polis_response *res);

/* Once per deferred request, from any thread (the handler's own included): send the answer and
 * free d. status: 200..999 (else a 500 goes instead); headers: NULL or a NULL-terminated array of
 * "Name: value" strings, taken as polis_response_header() takes them (a malformed one is dropped
 * with a warning); body: len bytes (NULL when len is 0). Everything is copied before it returns.
 * The answer is handed to the connection's loop thread, which sends it; if the client went away
 * or the server stopped meanwhile, it only frees d. Metrics and the request's span are recorded
 * when the answer is sent (their duration runs from the request to the answer). */
POLIS_API void polis_deferred_finish(struct polis_deferred *d, int status,
                                     const char *const *headers, const void *body, size_t len);

struct polis_server_opts {
    const char *listen;         /* "host:port" ("127.0.0.1:8081", "[::1]:80", ":8080") */
    int threads;                /* event-loop threads; 0: 1 */
    size_t max_body;            /* request bodies over it get 413; 0: 1 MiB */
    uint64_t idle_timeout_ms;   /* keep-alive idle; 0: 60 s */
    uint64_t header_timeout_ms; /* whole head must arrive in it; 0: 10 s */
    polis_handler_fn handler;
    void *ud;
    /* NULL, or a registry (polis/metrics.h) in which the server counts requests
     * (polis_server_requests_total{status_class}, polis_server_request_duration_seconds) and
     * which it renders itself for GET /metrics, before the handler sees the request. */
    struct polis_metrics *metrics;
    /* NULL, or a tracer (polis/trace.h) that must outlive the server. Each request a handler
     * answers then continues the trace of its `traceparent` (or starts one, sampled by the
     * tracer's ratio), and its SERVER span ("METHOD /path", OpenTelemetry HTTP attributes,
     * ERROR for 5xx) is submitted when the handler returns, if sampled. While the handler runs,
     * the span's context is the thread's current one (polis_trace_current), which polis_fetch
     * propagates. GET /metrics answered by the server itself is not traced. */
    struct polis_tracer *tracer;
};

struct polis_server;
struct polis_metrics;
struct polis_tracer;
struct polis_trace_ctx;

/* Bind and listen (SO_REUSEPORT per thread) and start the threads. Returns 0 and *out, or
 * POLIS_EINVAL (bad address), POLIS_ESYS (bind failed: errno says why), POLIS_ENOMEM. */
POLIS_API int polis_server_start(const struct polis_server_opts *opts, struct polis_server **out);
/* The port actually bound (useful with port 0). */
POLIS_API int polis_server_port(const struct polis_server *s);
/* Stop accepting, finish in-flight requests, close everything, join the threads, free s.
 * Any thread but a server thread. */
POLIS_API void polis_server_stop(struct polis_server *s);

/* The context of the span the calling thread is running: the SERVER span of the request
 * whose handler runs on it, when its server has a tracer (flags say whether it is sampled:
 * unsampled requests have a context too, so that the decision travels downstream). NULL
 * otherwise. Valid until the handler returns; calling thread only. */
POLIS_API const struct polis_trace_ctx *polis_trace_current(void);

/* Block until SIGINT or SIGTERM arrives (they are blocked in the calling thread and any thread
 * it starts afterwards). Returns the signal number. Call it from main() after start. */
POLIS_API int polis_wait_for_shutdown_signal(void);

/* ---- A blocking HTTP client for services ---------------------------------------------------- */

/* The answer to polis_fetch(): any status the server sent. */
struct polis_fetch_result {
    int status;
    struct polis_buf body; /* the decoded body; the caller frees it with polis_fetch_free */
};

/* Send one request and wait for the answer.
 * method: a token ("GET", "POST", ...). url: "http://host[:port][/path][?query]", host an IPv4
 * address, a [bracketed] IPv6 address or a name (resolved with getaddrinfo, which the timeout
 * does not bound); no userinfo, no fragment, http only. headers: NULL or a NULL-terminated
 * array of "Name: value" strings, sent as given after Host (replaced by one given here),
 * User-Agent (likewise), Content-Length and trace headers; Content-Length, Transfer-Encoding
 * and invalid fields are rejected. body: body_len bytes (NULL when body_len is 0); a
 * Content-Length is sent when there is a body or the method is POST, PUT or PATCH.
 * timeout_ms bounds the whole exchange (connect, send, answer); 0: 10 s.
 * Any thread; blocks it. Each thread keeps one idle keep-alive connection per host:port (a few
 * hosts, the least recently used closed first; closed when the thread exits) and checks it
 * before reuse; a kept connection that fails before any byte of the answer is closed and the
 * request retried once on a new one, for idempotent methods only (GET, HEAD, OPTIONS, TRACE,
 * PUT, DELETE). Interim 1xx answers are skipped. The body (at most 16 MiB) is decoded from
 * Content-Length, chunked or close-delimited framing with the polis_h1 parser.
 * Tracing: when the calling thread runs a traced request (polis_trace_current() is not NULL), a
 * CLIENT span child of it is made and sent as `traceparent` (with the incoming `tracestate`);
 * it is submitted to the server's tracer if sampled. A traceparent among headers is sent as is.
 * Returns 0 and *out (any status; the caller owns out->body), or POLIS_EINVAL (bad method, url
 * or header), POLIS_ENOTFOUND (the name does not resolve), POLIS_ESYS (connect or I/O error:
 * errno says why), POLIS_ETIMEDOUT, POLIS_EBADMSG (invalid answer, or closed before a complete
 * one), POLIS_ETOOBIG (answer head or body over its limit), POLIS_ENOMEM. On failure *out
 * holds nothing to free. */
POLIS_API int polis_fetch(const char *method, const char *url, const char *const *headers,
                          const void *body, size_t body_len, uint64_t timeout_ms,
                          struct polis_fetch_result *out);
/* Free the body of a result (harmless on a zeroed or already freed one). */
POLIS_API void polis_fetch_free(struct polis_fetch_result *r);

#endif
