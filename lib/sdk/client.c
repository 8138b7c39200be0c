/* client.c: the SDK's blocking HTTP/1.1 client for services: one kept-alive connection per thread
 * and host, bounded answers decoded with the polis_h1 parser, trace context propagation. */
#include <polis/http.h>

#include "http/blocking.h"
#include <polis/trace.h>

#include "sdk/sdk-internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/*
 * One exchange: take the thread's kept connection to host:port (when it still looks alive: no
 * byte and no FIN waiting on it) or open one; send the head and the body; read the answer head
 * into `in`, skipping 1xx; then the body into the result: Content-Length bytes read straight into
 * it, chunked fed through polis_h1_chunked_feed() with the payload copied out, close-delimited
 * until FIN. The connection goes back to the cache only when the answer was framed, asked for
 * keep-alive, and nothing followed it. Every wait is a poll() bounded by one deadline.
 */

#define DEFAULT_TIMEOUT_MS 10000
#define MAX_BODY ((size_t)16 << 20)
#define MAX_HEAD ((size_t)65536) /* answer head; also the request head we build */
#define MAX_HEADERS 100
#define MAX_INTERIM 16 /* 1xx answers skipped before giving up */
#define READ_CHUNK ((size_t)16384)
/* The body buffer holds MAX_BODY and one read, or one input buffer of chunked framing, past it:
 * the walks check MAX_BODY themselves, so going over is a typed error, not a short read. */
#define BODY_BUF_CAP (MAX_BODY + MAX_HEAD + 2 * READ_CHUNK)
#define KEPT_SLOTS 8 /* host:port pairs a thread keeps a connection to */
#define HOST_MAX 256
#define KEY_MAX (HOST_MAX + 8)
#define USER_AGENT "polis-fetch"

/* ---- URLs ----------------------------------------------------------------------------------- */

struct url {
    char host[HOST_MAX];        /* NUL-terminated, without brackets */
    char port[6];               /* decimal, NUL-terminated */
    int port_num;               /* 1..65535 */
    bool numeric;               /* an IP literal: no name resolution */
    struct polis_str authority; /* host[:port] as written: the Host header */
    struct polis_str target;    /* path and query as written, without the fragment */
    struct polis_str full;      /* the URL without the fragment */
};

static bool host_char(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           ch == '-' || ch == '.' || ch == '_';
}

/* "http://host[:port][/path][?query][#fragment]" -> u. Returns 0 or POLIS_EINVAL. */
static int url_parse(const char *s, struct url *u)
{
    static const char scheme[] = "http://";
    size_t len = strlen(s);
    memset(u, 0, sizeof(*u));
    if (len < sizeof(scheme) - 1 || strncasecmp(s, scheme, sizeof(scheme) - 1) != 0)
        return POLIS_EINVAL;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f)
            return POLIS_EINVAL; /* no spaces, controls or raw non-ASCII bytes on a request line */
    }
    const char *frag = memchr(s, '#', len);
    const char *end = frag != NULL ? frag : s + len;
    const char *a = s + sizeof(scheme) - 1;
    const char *a_end = a;
    while (a_end < end && *a_end != '/' && *a_end != '?')
        a_end++;
    if (a_end == a || memchr(a, '@', (size_t)(a_end - a)) != NULL)
        return POLIS_EINVAL; /* no host, or userinfo (credentials do not belong in a URL) */

    const char *h = a, *h_end, *colon;
    if (*a == '[') {
        const char *close = memchr(a, ']', (size_t)(a_end - a));
        if (close == NULL)
            return POLIS_EINVAL;
        h = a + 1;
        h_end = close;
        colon = close + 1 < a_end ? close + 1 : NULL;
        if (colon != NULL && *colon != ':')
            return POLIS_EINVAL;
        u->numeric = true;
    } else {
        colon = memchr(a, ':', (size_t)(a_end - a));
        h_end = colon != NULL ? colon : a_end;
        for (const char *p = h; p < h_end; p++)
            if (!host_char((unsigned char)*p))
                return POLIS_EINVAL;
    }
    size_t hlen = (size_t)(h_end - h);
    if (hlen == 0 || hlen >= sizeof(u->host))
        return POLIS_EINVAL;
    memcpy(u->host, h, hlen);
    u->host[hlen] = '\0';
    if (u->numeric) {
        struct in6_addr a6;
        if (inet_pton(AF_INET6, u->host, &a6) != 1)
            return POLIS_EINVAL;
    } else {
        struct in_addr a4;
        u->numeric = inet_pton(AF_INET, u->host, &a4) == 1;
    }

    u->port_num = 80;
    if (colon != NULL) {
        const char *p = colon + 1;
        size_t plen = (size_t)(a_end - p);
        if (plen == 0 || plen > 5)
            return POLIS_EINVAL;
        long v = 0;
        for (size_t i = 0; i < plen; i++) {
            if (p[i] < '0' || p[i] > '9')
                return POLIS_EINVAL;
            v = v * 10 + (p[i] - '0');
        }
        if (v < 1 || v > 65535)
            return POLIS_EINVAL;
        u->port_num = (int)v;
    }
    snprintf(u->port, sizeof(u->port), "%d", u->port_num);
    u->authority = (struct polis_str){a, (size_t)(a_end - a)};
    u->target = (struct polis_str){a_end, (size_t)(end - a_end)};
    u->full = (struct polis_str){s, (size_t)(end - s)};
    return 0;
}

/* ---- Kept connections ----------------------------------------------------------------------- */

/* Each thread keeps its idle connections in its own table: no lock, no sharing. The table is
 * thread-local storage (no heap), and a key destructor closes what is left when the thread
 * exits. */
struct kept {
    bool live;
    int fd;
    uint64_t used; /* tl_clock when it was put back: the least recently used goes first */
    char key[KEY_MAX];
};

static _Thread_local struct kept tl_kept[KEPT_SLOTS];
static _Thread_local uint64_t tl_clock;
static _Thread_local bool tl_registered;
static pthread_key_t kept_key;
static pthread_once_t kept_once = PTHREAD_ONCE_INIT;
static bool kept_key_ok;

static void kept_close_all(void *unused)
{
    (void)unused;
    for (int i = 0; i < KEPT_SLOTS; i++) {
        if (tl_kept[i].live) {
            close(tl_kept[i].fd);
            tl_kept[i].live = false;
        }
    }
}

static void kept_key_init(void)
{
    kept_key_ok = pthread_key_create(&kept_key, kept_close_all) == 0;
}

/* The thread's kept connection for key, taken out of the table; -1 when none. */
static int kept_take(const char *key)
{
    for (int i = 0; i < KEPT_SLOTS; i++) {
        if (tl_kept[i].live && strcmp(tl_kept[i].key, key) == 0) {
            tl_kept[i].live = false;
            return tl_kept[i].fd;
        }
    }
    return -1;
}

/* Keep fd for key (taking it), in a free slot or in place of the least recently used. */
static void kept_put(const char *key, int fd)
{
    if (!tl_registered) {
        pthread_once(&kept_once, kept_key_init);
        /* Any non-NULL value makes the destructor run at thread exit. */
        if (!kept_key_ok || pthread_setspecific(kept_key, tl_kept) != 0) {
            close(fd);
            return;
        }
        tl_registered = true;
    }
    int slot = 0;
    for (int i = 0; i < KEPT_SLOTS; i++) {
        if (!tl_kept[i].live) {
            slot = i;
            break;
        }
        if (tl_kept[i].used < tl_kept[slot].used)
            slot = i;
    }
    struct kept *k = &tl_kept[slot];
    if (k->live)
        close(k->fd);
    k->live = true;
    k->fd = fd;
    k->used = ++tl_clock;
    snprintf(k->key, sizeof(k->key), "%s", key);
}

/* An idle connection is worth reusing only when nothing is waiting on it: a byte would be an
 * answer to nothing, a FIN or an error means the server closed it. */
static bool kept_alive(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n;
    do {
        n = poll(&p, 1, 0);
    } while (n < 0 && errno == EINTR);
    return n == 0;
}

/* ---- Blocking I/O with a deadline ----------------------------------------------------------- */
/* Resolve and connect, trying each address in turn. Returns 0 and *out, POLIS_ENOTFOUND,
 * POLIS_ETIMEDOUT, POLIS_ESYS (errno: the last address's failure) or POLIS_ENOMEM. */
static int conn_open(const struct url *u, uint64_t deadline, int *out)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    hints.ai_flags = AI_NUMERICSERV | (u->numeric ? AI_NUMERICHOST : 0);
    struct addrinfo *res = NULL;
    int g = getaddrinfo(u->host, u->port, &hints, &res);
    if (g != 0) {
        if (g == EAI_MEMORY)
            return POLIS_ENOMEM;
        if (g == EAI_SYSTEM)
            return POLIS_ESYS;
        return POLIS_ENOTFOUND;
    }
    int rc = POLIS_ENOTFOUND;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        rc = polis__tcp_connect(ai->ai_addr, ai->ai_addrlen, deadline, out);
        if (rc == 0 || rc == POLIS_ETIMEDOUT)
            break;
    }
    int e = errno;
    freeaddrinfo(res);
    errno = e;
    return rc;
}
/* Read once. Returns 0 with *got > 0, POLIS_ECLOSED (FIN), POLIS_ETIMEDOUT or POLIS_ESYS. */
static int recv_some(int fd, void *buf, size_t len, uint64_t deadline, size_t *got)
{
    for (;;) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n > 0) {
            *got = (size_t)n;
            return 0;
        }
        if (n == 0)
            return POLIS_ECLOSED;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return POLIS_ESYS;
        int rc = polis__fd_wait(fd, POLLIN, deadline);
        if (rc < 0)
            return rc;
    }
}

/* ---- The request ---------------------------------------------------------------------------- */

static bool is_tchar(unsigned char ch)
{
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
        return true;
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool is_token(struct polis_str s)
{
    if (s.len == 0)
        return false;
    for (size_t i = 0; i < s.len; i++)
        if (!is_tchar((unsigned char)s.p[i]))
            return false;
    return true;
}

static bool method_is(struct polis_str m, const char *name)
{
    return polis_str_eq(m, (struct polis_str){name, strlen(name)});
}

/* RFC 9110 9.2.2: a retry cannot do what the first attempt did not intend. */
static bool method_idempotent(struct polis_str m)
{
    static const char *const idem[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < sizeof(idem) / sizeof(idem[0]); i++)
        if (method_is(m, idem[i]))
            return true;
    return false;
}

/* What the caller's headers say about the ones the client would add. */
struct user_headers {
    bool host, user_agent, traceparent, close;
};

/* Does the comma-separated list v hold the token t (ASCII case-insensitive)? */
static bool list_has(struct polis_str v, struct polis_str t)
{
    size_t i = 0;
    while (i < v.len) {
        while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
            i++;
        size_t start = i;
        while (i < v.len && v.p[i] != ',' && v.p[i] != ' ' && v.p[i] != '\t')
            i++;
        if (polis_str_caseeq((struct polis_str){v.p + start, i - start}, t))
            return true;
    }
    return false;
}

/* Append the caller's "Name: value" fields to head, validated and normalised. Returns 0,
 * POLIS_EINVAL, POLIS_ETOOBIG or POLIS_ENOMEM. */
static int add_user_headers(struct polis_buf *head, const char *const *headers,
                            struct user_headers *seen)
{
    memset(seen, 0, sizeof(*seen));
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        const char *f = headers[i];
        const char *colon = strchr(f, ':');
        if (colon == NULL)
            return POLIS_EINVAL;
        struct polis_str name = {f, (size_t)(colon - f)};
        const char *v = colon + 1, *v_end = v + strlen(v);
        while (v < v_end && (*v == ' ' || *v == '\t'))
            v++;
        while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t'))
            v_end--;
        struct polis_str value = {v, (size_t)(v_end - v)};
        if (!is_token(name))
            return POLIS_EINVAL;
        for (size_t k = 0; k < value.len; k++) {
            unsigned char ch = (unsigned char)value.p[k];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                return POLIS_EINVAL; /* no CR or LF: no request splitting */
        }
        if (polis_str_caseeq(name, POLIS_STR("Content-Length")) ||
            polis_str_caseeq(name, POLIS_STR("Transfer-Encoding")))
            return POLIS_EINVAL; /* the client frames the body itself */
        if (polis_str_caseeq(name, POLIS_STR("Host")))
            seen->host = true;
        else if (polis_str_caseeq(name, POLIS_STR("User-Agent")))
            seen->user_agent = true;
        else if (polis_str_caseeq(name, POLIS_STR("traceparent")))
            seen->traceparent = true;
        else if (polis_str_caseeq(name, POLIS_STR("Connection")) &&
                 list_has(value, POLIS_STR("close")))
            seen->close = true;
        int rc = polis_buf_printf(head, "%.*s: %.*s\r\n", (int)name.len, name.p, (int)value.len,
                                  value.p);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- The answer ----------------------------------------------------------------------------- */

struct exchange {
    int fd;
    uint64_t deadline;
    bool head_request;
    bool received; /* a byte of the answer arrived */
    bool reusable; /* framed, keep-alive, nothing after it */
    struct polis_buf in;
    struct polis_h1_msg msg;
    struct polis_h1_header headers[MAX_HEADERS];
};

static const struct polis_h1_limits answer_limits = {
    .max_request_line = 8192, /* the status line */
    .max_head = MAX_HEAD,
    .max_headers = MAX_HEADERS,
};

/* Read more of the answer into x->in. Returns 0, POLIS_ECLOSED, POLIS_ETIMEDOUT, POLIS_ESYS,
 * POLIS_ETOOBIG (the head buffer is full) or POLIS_ENOMEM. */
static int read_in(struct exchange *x)
{
    size_t room = x->in.cap - polis_buf_len(&x->in);
    if (room == 0)
        return POLIS_ETOOBIG;
    int rc = polis_buf_reserve(&x->in, room < READ_CHUNK ? room : READ_CHUNK);
    if (rc < 0)
        return rc;
    size_t want = x->in.size - x->in.end;
    if (want > room)
        want = room;
    size_t got = 0;
    rc = recv_some(x->fd, x->in.data + x->in.end, want, x->deadline, &got);
    if (rc < 0)
        return rc;
    x->in.end += got;
    x->received = true;
    return 0;
}

/* A parser verdict as the client's error: limits are ETOOBIG, anything else is invalid. */
static int parse_error(int rc)
{
    if (rc == POLIS_EHDRTOOBIG || rc == POLIS_EURITOOLONG || rc == POLIS_EBODYTOOBIG ||
        rc == POLIS_ETOOBIG)
        return POLIS_ETOOBIG;
    if (rc == POLIS_ENOMEM || rc == POLIS_ETIMEDOUT || rc == POLIS_ESYS || rc == POLIS_ECLOSED)
        return rc;
    return POLIS_EBADMSG;
}

/* Read the final answer's head (skipping 1xx). On return 0 x->in starts with it, *head_len long.
 * Errors: those of read_in (POLIS_ECLOSED before any byte) and POLIS_EBADMSG, POLIS_ETOOBIG. */
static int read_head(struct exchange *x, size_t *head_len)
{
    int interim = 0;
    size_t scan = 0;
    for (;;) {
        if (polis_buf_len(&x->in) > 0) {
            x->msg.headers = x->headers;
            int rc = polis_h1_parse_response(polis_buf_head(&x->in), polis_buf_len(&x->in), &scan,
                                             &x->msg, MAX_HEADERS, &answer_limits, x->head_request,
                                             head_len);
            if (rc == 0) {
                if (x->msg.status >= 200)
                    return 0;
                if (x->msg.status == 101 || ++interim > MAX_INTERIM)
                    return POLIS_EBADMSG; /* no upgrade was asked for */
                polis_buf_consume(&x->in, *head_len);
                scan = 0;
                continue;
            }
            if (rc != POLIS_EAGAIN)
                return parse_error(rc);
        }
        int rc = read_in(x);
        if (rc == POLIS_ECLOSED && x->received)
            return POLIS_EBADMSG; /* cut in the middle of a head */
        if (rc < 0)
            return rc;
    }
}

/* Read the body the head announced into body. */
static int read_body(struct exchange *x, struct polis_buf *body)
{
    const char *rest = polis_buf_head(&x->in);
    size_t rest_len = polis_buf_len(&x->in);
    int rc;
    switch (x->msg.body) {
    case POLIS_BODY_NONE:
        x->reusable = rest_len == 0;
        return 0;

    case POLIS_BODY_LENGTH: {
        if (x->msg.content_length > MAX_BODY)
            return POLIS_ETOOBIG;
        size_t want = (size_t)x->msg.content_length;
        size_t take = rest_len < want ? rest_len : want;
        if ((rc = polis_buf_append(body, rest, take)) < 0)
            return rc;
        x->reusable = rest_len <= want;
        while (polis_buf_len(body) < want) {
            size_t left = want - polis_buf_len(body);
            if ((rc = polis_buf_reserve(body, left < READ_CHUNK ? left : READ_CHUNK)) < 0)
                return rc;
            size_t room = body->size - body->end, got = 0;
            rc = recv_some(x->fd, body->data + body->end, room < left ? room : left, x->deadline,
                           &got);
            if (rc == POLIS_ECLOSED)
                return POLIS_EBADMSG;
            if (rc < 0)
                return rc;
            body->end += got;
        }
        return 0;
    }

    case POLIS_BODY_CHUNKED: {
        struct polis_h1_chunked ch;
        polis_h1_chunked_init(&ch, MAX_BODY);
        char tmp[READ_CHUNK];
        const char *p = rest;
        size_t len = rest_len;
        for (;;) {
            if (len > 0) {
                size_t consumed = 0, out_len = 0;
                /* The payload is never longer than the bytes it came in (the buffer's cap has
                 * room for one read past MAX_BODY, which the chunked walk enforces). */
                if ((rc = polis_buf_reserve(body, len)) < 0)
                    return rc;
                rc =
                    polis_h1_chunked_feed(&ch, p, len, &consumed, body->data + body->end, &out_len);
                if (rc < 0)
                    return parse_error(rc);
                body->end += out_len;
                if (rc == 1) {
                    x->reusable = consumed == len;
                    return 0;
                }
            }
            size_t got = 0;
            rc = recv_some(x->fd, tmp, sizeof(tmp), x->deadline, &got);
            if (rc == POLIS_ECLOSED)
                return POLIS_EBADMSG;
            if (rc < 0)
                return rc;
            p = tmp;
            len = got;
        }
    }

    case POLIS_BODY_CLOSE:
        if ((rc = polis_buf_append(body, rest, rest_len)) < 0)
            return rc;
        for (;;) {
            if (polis_buf_len(body) > MAX_BODY)
                return POLIS_ETOOBIG;
            if ((rc = polis_buf_reserve(body, READ_CHUNK)) < 0)
                return rc;
            size_t got = 0;
            rc =
                recv_some(x->fd, body->data + body->end, body->size - body->end, x->deadline, &got);
            if (rc == POLIS_ECLOSED)
                return 0;
            if (rc < 0)
                return rc;
            body->end += got;
        }
    }
    return POLIS_EBADMSG;
}

/* ---- Traces --------------------------------------------------------------------------------- */

static const char *error_type(int rc)
{
    switch (rc) {
    case POLIS_ETIMEDOUT:
        return "timeout";
    case POLIS_ENOTFOUND:
        return "name_not_resolved";
    case POLIS_EBADMSG:
        return "invalid_response";
    case POLIS_ETOOBIG:
        return "response_too_big";
    case POLIS_ENOMEM:
        return "out_of_memory";
    default:
        return "connection_error";
    }
}

/* Finish and submit a sampled CLIENT span: OpenTelemetry HTTP client attributes. */
static void span_finish(struct polis_span *span, struct polis_tracer *tracer, struct polis_str m,
                        const struct url *u, int rc, int status)
{
    static const char *const known[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                        "CONNECT", "OPTIONS", "TRACE", "PATCH"};
    bool is_known = false;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        is_known = is_known || method_is(m, known[i]);
    polis_span_attr_str(span, "http.request.method", is_known ? m : POLIS_STR("_OTHER"));
    if (!is_known)
        polis_span_attr_str(span, "http.request.method_original", m);
    polis_span_attr_str(span, "server.address", (struct polis_str){u->host, strlen(u->host)});
    polis_span_attr_int(span, "server.port", u->port_num);
    polis_span_attr_str(span, "network.protocol.version", POLIS_STR("1.1"));
    enum polis_span_status st = POLIS_SPAN_UNSET;
    char code[16];
    if (rc < 0) {
        const char *e = error_type(rc);
        polis_span_attr_str(span, "error.type", (struct polis_str){e, strlen(e)});
        st = POLIS_SPAN_ERROR;
    } else {
        polis_span_attr_int(span, "http.response.status_code", status);
        if (status >= 400) {
            int n = snprintf(code, sizeof(code), "%d", status);
            polis_span_attr_str(span, "error.type", (struct polis_str){code, (size_t)n});
            st = POLIS_SPAN_ERROR;
        }
    }
    /* Last: a long URL fills the span's text, and later string attributes would be lost. */
    polis_span_attr_str(span, "url.full", u->full);
    polis_span_end(span, st);
    polis_tracer_submit(tracer, span);
}

/* ---- polis_fetch ---------------------------------------------------------------------------- */

/* One attempt on fd (taken). On return the connection is kept or closed. Returns 0 or an error;
 * *retry says the attempt failed on a kept connection before any byte of the answer. */
static int attempt(int fd, bool reused, const char *key, struct iovec *iov_in, int iovcnt,
                   bool head_request, bool keep, uint64_t deadline, struct polis_fetch_result *out,
                   bool *retry)
{
    struct exchange *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        close(fd);
        return POLIS_ENOMEM;
    }
    x->fd = fd;
    x->deadline = deadline;
    x->head_request = head_request;
    polis_buf_init(&x->in, MAX_HEAD + READ_CHUNK);
    polis_buf_init(&out->body, BODY_BUF_CAP);
    struct iovec iov[2];
    memcpy(iov, iov_in, (size_t)iovcnt * sizeof(iov[0]));
    size_t head_len = 0;
    int e;

    int rc = polis__send_all(fd, iov, iovcnt, deadline);
    if (rc == 0)
        rc = read_head(x, &head_len);
    if (rc < 0) {
        /* A kept connection the server closed meanwhile: EPIPE or ECONNRESET on the send, FIN or
         * reset instead of the answer. */
        *retry =
            reused && !x->received &&
            (rc == POLIS_ECLOSED || (rc == POLIS_ESYS && (errno == EPIPE || errno == ECONNRESET)));
        if (rc == POLIS_ECLOSED) {
            errno = ECONNRESET;
            rc = POLIS_ESYS; /* closed before any byte of the answer */
        }
        goto fail;
    }
    out->status = x->msg.status;
    bool keep_alive = x->msg.keep_alive;
    polis_buf_consume(&x->in, head_len);
    rc = read_body(x, &out->body);
    if (rc < 0)
        goto fail;
    if (keep && keep_alive && x->reusable && x->msg.body != POLIS_BODY_CLOSE)
        kept_put(key, fd);
    else
        close(fd);
    polis_buf_free(&x->in);
    free(x);
    return 0;

fail:
    e = errno;
    close(fd);
    polis_buf_free(&x->in);
    polis_buf_free(&out->body);
    out->status = 0;
    free(x);
    errno = e;
    return rc;
}

int polis_fetch(const char *method, const char *url, const char *const *headers, const void *body,
                size_t body_len, uint64_t timeout_ms, struct polis_fetch_result *out)
{
    if (out == NULL)
        return POLIS_EINVAL;
    memset(out, 0, sizeof(*out));
    if (method == NULL || url == NULL || (body == NULL && body_len > 0))
        return POLIS_EINVAL;
    struct polis_str m = {method, strlen(method)};
    struct url u;
    if (!is_token(m) || m.len > 32 || url_parse(url, &u) < 0)
        return POLIS_EINVAL;
    uint64_t deadline = polis__mono_ms() + (timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS);

    struct polis_buf head;
    polis_buf_init(&head, MAX_HEAD);
    struct user_headers seen;
    int rc = polis_buf_printf(&head, "%s %.*s%.*s HTTP/1.1\r\n", method,
                              u.target.len == 0 || u.target.p[0] != '/' ? 1 : 0, "/",
                              (int)u.target.len, u.target.p);
    if (rc == 0)
        rc = add_user_headers(&head, headers, &seen);
    if (rc == 0 && !seen.host)
        rc = polis_buf_printf(&head, "Host: %.*s\r\n", (int)u.authority.len, u.authority.p);
    if (rc == 0 && !seen.user_agent)
        rc = polis_buf_printf(&head, "User-Agent: " USER_AGENT "\r\n");
    if (rc == 0 &&
        (body_len > 0 || method_is(m, "POST") || method_is(m, "PUT") || method_is(m, "PATCH")))
        rc = polis_buf_printf(&head, "Content-Length: %zu\r\n", body_len);

    /* The CLIENT span: a child of the thread's current span, and the context sent on. */
    struct polis__trace_state *ts = polis__trace_state();
    struct polis_tracer *tracer = ts->tracer;
    bool traced = tracer != NULL && !seen.traceparent;
    bool sampled = false;
    struct polis_span span;
    if (rc == 0 && traced) {
        struct polis_trace_ctx ctx;
        char tp[POLIS_TRACEPARENT_LEN + 1];
        polis_span_start(&span, &ts->ctx, POLIS_SPAN_CLIENT, m);
        sampled = (ts->ctx.flags & 1) != 0;
        polis_span_context(&span, sampled, &ctx);
        polis_traceparent_format(&ctx, tp);
        rc = polis_buf_printf(&head, "traceparent: %s\r\n", tp);
        if (rc == 0 && ts->tracestate.len > 0)
            rc = polis_buf_printf(&head, "tracestate: %.*s\r\n", (int)ts->tracestate.len,
                                  ts->tracestate.p);
    }
    if (rc == 0)
        rc = polis_buf_append(&head, "\r\n", 2);
    if (rc < 0) {
        polis_buf_free(&head);
        return rc == POLIS_ENOMEM ? rc : rc == POLIS_ETOOBIG ? POLIS_ETOOBIG : POLIS_EINVAL;
    }

    char key[KEY_MAX];
    snprintf(key, sizeof(key), "%s:%s", u.host, u.port);
    struct iovec iov[2] = {{polis_buf_head(&head), polis_buf_len(&head)}, {(void *)body, body_len}};
    int iovcnt = body_len > 0 ? 2 : 1;
    bool head_request = method_is(m, "HEAD");
    bool idempotent = method_idempotent(m);

    for (int tries = 0;; tries++) {
        int fd = kept_take(key);
        bool reused = fd >= 0;
        if (reused && !kept_alive(fd)) {
            close(fd);
            fd = -1;
            reused = false;
        }
        if (fd < 0) {
            rc = conn_open(&u, deadline, &fd);
            if (rc < 0)
                break;
        }
        bool retry = false;
        rc =
            attempt(fd, reused, key, iov, iovcnt, head_request, !seen.close, deadline, out, &retry);
        if (rc == 0 || !retry || !idempotent || tries > 0)
            break;
    }
    int e = errno;
    polis_buf_free(&head);
    if (traced && sampled)
        span_finish(&span, tracer, m, &u, rc, out->status);
    errno = e;
    return rc;
}

void polis_fetch_free(struct polis_fetch_result *r)
{
    if (r == NULL)
        return;
    polis_buf_free(&r->body);
    r->status = 0;
}
