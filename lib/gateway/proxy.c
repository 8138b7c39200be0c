/* proxy.c: one client connection's life in a worker: read and parse a request head, pick a route
 * and an upstream, stream the request and the response both ways with backpressure, recycle both
 * connections. Everything runs on the worker's thread; nothing here takes a lock. */
#include "gateway/gateway.h"
#include "http/blocking.h"

#include <polis/trace.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Append a string literal (a literal only: sizeof of a pointer would be wrong). */
#define APPEND_LIT(b, lit) polis_buf_append((b), "" lit, sizeof(lit) - 1)

/* Results of the steps below. GONE means the client connection was freed: touch nothing. */
enum { WAIT = 0, DONE = 1, GONE = -1, AGAIN = 2 };

enum body_mode { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE };

struct gw_uconn {
    struct polis_watch w; /* first: the loop hands us this pointer */
    struct polis_io io;   /* bytes go through this layer (plain TCP today) */
    struct polis_timer timer;
    struct gw_worker *wk;
    struct gw_pool *pool;
    struct gw_dconn *owner; /* NULL while idle in the pool */
    struct gw_cstate *cs;   /* counted in its bulkhead of connections, or NULL */
    struct gw_uconn *next;  /* in the pool's idle list */
    struct polis_buf in;    /* response bytes */
    uint64_t idle_since;    /* loop time it went back to the pool */
    bool connected, can_read, can_write, reused;
};

struct gw_req {
    struct gw_wsnap *ws;
    const struct polis_route_cfg *route;
    const struct polis_cluster_cfg *cluster;
    size_t cluster_idx, inst;
    /* Resilience: the instance of the current attempt and what the request holds. */
    size_t route_idx, group, member; /* member: the balancer's index in the group */
    struct gw_cstate *cs;
    struct gw_istate *ist; /* NULL between attempts */
    const struct polis_retry_cfg *retry;
    struct polis_breaker *cbreaker, *ibreaker; /* the breakers the permits come from */
    struct polis_breaker_permit cperm, iperm;
    uint64_t start_ms, attempt_ms, deadline_ms; /* loop clock */
    uint32_t retry_after_s;                     /* for a 503 of the gateway's own: Retry-After */
    uint8_t tries;  /* attempts under the retry policy (the first is 1) */
    uint64_t tried; /* instances tried (bit i % 64): retries go elsewhere */
    bool counted_route, counted_requests, counted_budget, counted_retry, counted_pending;
    bool retryable;           /* idempotent, or Idempotency-Key where the route allows it */
    bool waiting;             /* a fault delay or a retry backoff runs: no connection yet */
    bool repick;              /* when the wait ends, pick another instance (a retry) */
    struct gw_mirror *mirror; /* this request's mirror, until the primary answer ends */
    /* Edge security. */
    const struct polis_consumer *consumer; /* who the request is from (API key), or NULL */
    const char *www_auth;                  /* for a 401 of the gateway's own */
    char rl_hdr[192];                      /* RateLimit-* lines for the answer, or "" */
    uint8_t rl_len;
    char *id_hdr; /* identity lines for the upstream (forwarded claims), or NULL */
    size_t id_len;
    char jwt_key[160]; /* iss and sub of a verified token: a consumer's rate-limit key */
    uint8_t jwt_key_len;
    bool cors;      /* the route handles CORS: upstream Access-Control-* are dropped */
    char *cors_hdr; /* CORS lines for the answer (allocated only when there are some) */
    uint16_t cors_len;
    struct gw_uconn *up;
    struct polis_buf hbuf; /* the head sent upstream (kept for a replay on a stale connection) */
    size_t hsent;
    struct polis_buf dhead; /* the head (and error body) for the client */
    size_t dsent;
    /* request body */
    uint8_t req_mode;
    uint64_t req_left; /* BODY_LENGTH: bytes not yet classified */
    struct polis_h1_chunked req_chunk;
    size_t body_ready; /* classified body bytes at the front of the client buffer, unsent */
    bool req_body_done, req_done, body_started;
    bool head_request, upgrade, client_10, expect_continue, idempotent;
    bool up_write_blocked; /* the upstream's socket is full: waiting on it, not the client */
    bool client_eof, upstream_eof, client_shut, upstream_shut; /* tunnels */
    /* response */
    bool resp_head_done, resp_done, dechunk, tunnel, got_response_bytes, upstream_reusable;
    uint8_t resp_mode;
    uint64_t resp_left;
    struct polis_h1_chunked resp_chunk;
    size_t resp_ready;        /* classified response bytes at the front of the upstream buffer */
    size_t scan;              /* response head search resume */
    struct polis_str resp_te; /* the response's Transfer-Encoding value, while its head is built */
    int status;
    int attempts;
    uint64_t bytes_in, bytes_out;
    struct timespec t0, t_up;  /* head parsed; upstream connection taken */
    const char *upstream_addr; /* the instance of the last attempt (for the log) */
    uint32_t connect_us;       /* how long its connection took to open (0: reused) */
    /* Tracing (when the gateway has a tracer): the context sent upstream, and the spans of a
     * sampled request, allocated only then so that connections stay small. */
    bool traced, sampled;
    struct polis_trace_ctx trace; /* span_id: this request's server span */
    struct polis_span *span, *cspan;
    size_t tp_off;   /* where the traceparent value sits in hbuf, to renew it on a retry */
    char method[16]; /* for client spans: the head is gone by then (cut at 16 bytes) */
    uint8_t method_len;
    bool upstream_answered; /* the status comes from the upstream */
    char request_id[72];
    uint8_t request_id_len;
    struct polis_buf log; /* the access log fields known at head time */
};

enum dstate { D_IDLE, D_HEAD, D_REQUEST, D_LINGER };

struct gw_dconn {
    struct polis_watch w; /* first */
    struct polis_io io;
    struct polis_timer timer;      /* the phase's timeout: head, body, idle, slow reader */
    struct polis_timer req_timer;  /* timeouts.request: from the parsed head to the last byte */
    struct polis_timer wait_timer; /* a fault delay or a retry's backoff */
    struct gw_worker *wk;
    struct gw_dconn *next, *prev;
    struct polis_buf in;
    size_t scan;
    uint8_t state;
    bool can_read, can_write, close_after, peer_eof;
    bool ip_counted; /* counted in the gateway's connections per address */
    struct polis_ip peer;
    char ip[INET6_ADDRSTRLEN];
    uint8_t ip_len;
    struct gw_req r;
};

static const struct polis_config *wcfg(const struct gw_worker *wk)
{
    return wk->cur->snap->cfg;
}

/* ---- Upstream connections -------------------------------------------------------------------- */

static void u_event(struct polis_loop *loop, struct polis_watch *w, unsigned events);
static void u_timeout(struct polis_loop *loop, struct polis_timer *t);
static void d_run(struct gw_dconn *c);
static int upstream_failed(struct gw_dconn *c, int status, const char *why,
                           enum gw_upstream_error kind);

static void u_free(struct gw_uconn *u)
{
    if (u->cs != NULL)
        atomic_fetch_sub_explicit(&u->cs->conns, 1, memory_order_relaxed);
    polis_timer_cancel(u->wk->loop, &u->timer);
    if (polis__tls_is_tls(&u->io))
        polis__tls_io_free(&u->io);
    if (u->io.fd >= 0) { /* in-memory peers (tests) have no descriptor */
        polis_loop_del(u->wk->loop, &u->w);
        close(u->w.fd);
    }
    polis_buf_free(&u->in);
    free(u);
}

static void pool_unlink(struct gw_uconn *u)
{
    struct gw_uconn **pp = &u->pool->idle;
    while (*pp != NULL && *pp != u)
        pp = &(*pp)->next;
    if (*pp == u) {
        *pp = u->next;
        u->pool->num_idle--;
        polis_gauge_add(u->wk->shard, u->pool->idle_slot, -1);
    }
    u->next = NULL;
}

/* An idle pooled connection saw an event or its idle timer: the server closed it or sent
 * something unasked for. Either way it cannot carry a request any more. */
static void idle_event(struct gw_uconn *u)
{
    pool_unlink(u);
    u_free(u);
}

/* Take the most recently used idle connection. One idle for a second or more is peeked first:
 * a server that closed it (or sent an unasked 408) may have done so in this very loop
 * iteration, before its event was dispatched, and its bytes must not pass for an answer. */
static struct gw_uconn *pool_take(struct gw_pool *p, uint64_t now)
{
    for (;;) {
        struct gw_uconn *u = p->idle;
        if (u == NULL)
            return NULL;
        p->idle = u->next;
        p->num_idle--;
        polis_gauge_add(u->wk->shard, p->idle_slot, -1);
        u->next = NULL;
        if (u->io.fd >= 0 && now - u->idle_since >= 1000) {
            char byte;
            ssize_t n = recv(u->io.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if (!(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
                u_free(u);
                continue;
            }
        }
        u->reused = true;
        return u;
    }
}

static void pool_put(struct gw_uconn *u, uint32_t keepalive, uint64_t idle_ms)
{
    struct gw_pool *p = u->pool;
    u->owner = NULL;
    if (p->num_idle >= keepalive || u->wk->draining) {
        u_free(u);
        return;
    }
    if (polis_buf_len(&u->in) == 0)
        polis_buf_free(&u->in);
    u->next = p->idle;
    u->idle_since = polis_loop_now(u->wk->loop);
    p->idle = u;
    p->num_idle++;
    polis_gauge_add(u->wk->shard, p->idle_slot, 1);
    polis_timer_arm(u->wk->loop, &u->timer, idle_ms);
}

void polis__pools_close_all(struct gw_worker *wk)
{
    for (struct gw_pool *p = wk->pools; p != NULL; p = p->next) {
        while (p->idle != NULL) {
            struct gw_uconn *u = p->idle;
            p->idle = u->next;
            p->num_idle--;
            polis_gauge_add(wk->shard, p->idle_slot, -1);
            u_free(u);
        }
    }
}

/* Open a new connection to the pool's address. Returns NULL with errno set on failure. */
static struct gw_uconn *u_connect(struct gw_worker *wk, struct gw_pool *p,
                                  struct polis_tls_client *tls, const char *sni)
{
    if (wk->connect_io != NULL) { /* tests: an in-memory upstream instead of a socket */
        struct gw_uconn *u = calloc(1, sizeof(*u));
        if (u == NULL)
            return NULL;
        u->wk = wk;
        u->pool = p;
        polis_timer_init(&u->timer, u_timeout);
        polis_buf_init(&u->in, POLIS_BLOCK_SIZE);
        if (wk->connect_io(wk, &p->addr, &u->io) < 0) {
            free(u);
            errno = ECONNREFUSED;
            return NULL;
        }
        u->w.fd = -1;
        u->connected = u->can_write = u->can_read = true;
        return u;
    }
    int fd = socket(p->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct gw_uconn *u = calloc(1, sizeof(*u));
    if (u == NULL)
        goto fail_close;
    u->wk = wk;
    u->pool = p;
    polis_io_socket(&u->io, fd);
    polis_timer_init(&u->timer, u_timeout);
    polis_buf_init(&u->in, POLIS_BLOCK_SIZE);
    int rc = connect(fd, (const struct sockaddr *)&p->addr.ss, p->addr.len);
    if (rc == 0) {
        u->connected = true;
        u->can_write = true;
    } else if (errno != EINPROGRESS) {
        goto fail_free;
    }
    if (tls != NULL) {
        /* The handshake runs inside the first writes and reads, over the connecting socket. */
        char host[64];
        if (sni == NULL) { /* the instance's host: its address without the port */
            const char *t = p->addr.text, *colon = strrchr(t, ':');
            size_t n = colon != NULL ? (size_t)(colon - t) : strlen(t);
            if (n > 1 && t[0] == '[') {
                t++;
                n -= 2;
            }
            snprintf(host, sizeof(host), "%.*s", (int)n, t);
            sni = host;
        }
        if (polis__tls_connect(tls, fd, sni, p->addr.text, &u->io) < 0) {
            errno = EPROTO;
            goto fail_free;
        }
    }
    if (polis_loop_add(wk->loop, &u->w, fd, POLIS_EV_READ | POLIS_EV_WRITE, u_event) < 0)
        goto fail_free;
    return u;
fail_free:
    free(u);
fail_close : {
    int e = errno;
    close(fd);
    errno = e;
}
    return NULL;
}

/* ---- Client connections ---------------------------------------------------------------------- */

static void d_event(struct polis_loop *loop, struct polis_watch *w, unsigned events);
static void d_timeout(struct polis_loop *loop, struct polis_timer *t);
static void d_request_timeout(struct polis_loop *loop, struct polis_timer *t);
static void d_wait_done(struct polis_loop *loop, struct polis_timer *t);

static void req_release(struct gw_dconn *c);
static bool alog_on(const struct gw_worker *wk);
static void req_record(struct gw_dconn *c);
static void trace_end(struct gw_dconn *c);

static void d_free(struct gw_dconn *c)
{
    struct gw_worker *wk = c->wk;
    if (c->state == D_REQUEST) {
        /* A request that ends here was cut short: log it all the same (499: nothing was
         * answered, as nginx says for a client that went away). */
        if (c->r.request_id_len > 0) {
            if (c->r.dsent == 0 || c->r.status == 0) /* nothing reached the client */
                c->r.status = 499;
            req_record(c);
        }
        req_release(c);
    }
    polis_timer_cancel(wk->loop, &c->timer);
    polis_timer_cancel(wk->loop, &c->req_timer);
    if (polis__tls_is_tls(&c->io))
        polis__tls_io_free(&c->io);
    if (c->io.fd >= 0) {
        polis_loop_del(wk->loop, &c->w);
        close(c->w.fd);
    }
    polis_buf_free(&c->in);
    polis_buf_free(&c->r.hbuf);
    polis_buf_free(&c->r.dhead);
    polis_buf_free(&c->r.log);
    if (c->ip_counted)
        polis__ipcount_put(wk->gw->ipcount, &c->peer);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        wk->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    wk->num_conns--;
    polis_gauge_add(wk->shard, wk->gw->metrics.conns_active_slot, -1);
    free(c);
    if (wk->draining && wk->num_conns == 0)
        polis_loop_stop(wk->loop);
}

/* Set up a client connection on io; it is registered with the loop when it has a descriptor. */
static void d_start(struct gw_worker *wk, const struct polis_io *io,
                    const struct sockaddr_storage *ss)
{
    const struct polis_config *cfg = wcfg(wk);
    if (wk->num_conns >= cfg->limits.max_connections)
        goto refuse;
    struct gw_dconn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        goto refuse;
    c->wk = wk;
    c->state = D_IDLE;
    c->io = *io;
    c->w.fd = io->fd;
    polis_timer_init(&c->timer, d_timeout);
    polis_timer_init(&c->req_timer, d_request_timeout);
    polis_timer_init(&c->wait_timer, d_wait_done);
    polis_buf_init(&c->in, cfg->limits.max_header_bytes > POLIS_BLOCK_SIZE
                               ? cfg->limits.max_header_bytes
                               : POLIS_BLOCK_SIZE);
    polis_buf_init(&c->r.hbuf, 1u << 20);
    polis_buf_init(&c->r.dhead, 1u << 20);
    polis_buf_init(&c->r.log, 16384);
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, c->ip, sizeof(c->ip));
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, c->ip, sizeof(c->ip));
    c->ip_len = (uint8_t)strlen(c->ip);
    if (polis__ip_from_sockaddr((const struct sockaddr *)ss, &c->peer) == 0) {
        /* At accept: the configuration's access lists and the cap per address. */
        const struct gw_sec *sec = &wk->cur->snap->cref->sec;
        if ((sec->allow != NULL || sec->deny != NULL) &&
            !polis__ip_acl_allows(sec->allow, sec->deny, &c->peer)) {
            free(c);
            goto refuse;
        }
        uint32_t cap = cfg->limits.max_connections_per_ip;
        if (cap > 0 && wk->gw->ipcount != NULL) {
            if (!polis__ipcount_take(wk->gw->ipcount, &c->peer, cap)) {
                free(c);
                goto refuse;
            }
            c->ip_counted = true;
        }
    }
    if (io->fd >= 0 &&
        polis_loop_add(wk->loop, &c->w, io->fd, POLIS_EV_READ | POLIS_EV_WRITE, d_event) < 0) {
        if (c->ip_counted)
            polis__ipcount_put(wk->gw->ipcount, &c->peer);
        free(c);
        goto refuse;
    }
    c->next = wk->conns;
    if (wk->conns != NULL)
        wk->conns->prev = c;
    wk->conns = c;
    wk->num_conns++;
    polis_gauge_add(wk->shard, wk->gw->metrics.conns_active_slot, 1);
    polis_counter_add(wk->shard, wk->gw->metrics.conns_total_slot, 1);
    /* The first bytes usually arrive with the accept on loopback; the edge will tell anyway. */
    c->can_read = true;
    polis_timer_arm(wk->loop, &c->timer, cfg->timeouts.header_read_ms);
    d_run(c);
    return;
refuse:
    if (io->fd >= 0)
        close(io->fd);
}

void polis__proxy_accept(struct gw_worker *wk, int fd, const struct sockaddr_storage *ss)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct polis_io io;
    polis_io_socket(&io, fd);
    if (wk->gw->tls != NULL && polis__tls_accept(wk->gw->tls, fd, &io) < 0) {
        close(fd);
        return;
    }
    d_start(wk, &io, ss);
}

void polis__proxy_accept_io(struct gw_worker *wk, const struct polis_io *io,
                            const struct sockaddr_storage *ss)
{
    d_start(wk, io, ss);
}

/* Read what the client sent into c->in. Returns bytes read, 0 on EOF, POLIS_EAGAIN,
 * POLIS_ETOOBIG when the buffer is full, or POLIS_ESYS. */
static ssize_t d_read(struct gw_dconn *c)
{
    struct gw_worker *wk = c->wk;
    /* A connection without a buffer reads into the worker's spare block and keeps it only if
     * bytes came: idle and just-accepted connections hold no buffer at all. */
    bool borrowed = c->in.data == NULL && c->in.cap >= POLIS_BLOCK_SIZE;
    if (borrowed) {
        if (wk->spare == NULL && (wk->spare = polis_block_get()) == NULL)
            return POLIS_ENOMEM;
        c->in.data = wk->spare;
        c->in.size = POLIS_BLOCK_SIZE;
        c->in.start = c->in.end = 0;
    } else {
        int rc = polis_buf_reserve(&c->in, 1);
        if (rc < 0)
            return rc;
    }
    size_t space = c->in.size - c->in.end;
    ssize_t n = polis_io_read(&c->io, c->in.data + c->in.end, space);
    if (borrowed) {
        if (n > 0) {
            wk->spare = NULL; /* the block is the connection's now */
        } else {
            c->in.data = NULL;
            c->in.size = 0;
        }
    }
    if (n > 0) {
        c->in.end += (size_t)n;
        c->r.bytes_in += (uint64_t)n;
        /* A short read emptied the socket: anything later comes with a new edge, so the read
         * that would only say EAGAIN is saved. */
        if ((size_t)n < space)
            c->can_read = false;
        return n;
    }
    c->can_read = false;
    if (n == 0) {
        c->peer_eof = true;
        return 0;
    }
    return errno == EAGAIN || errno == EWOULDBLOCK ? POLIS_EAGAIN : POLIS_ESYS;
}

/* Lingering close: stop writing, swallow what the client still sends for a moment, then close,
 * so that a response is not destroyed by a reset over unread request bytes. */
static void d_linger(struct gw_dconn *c)
{
    if (c->state == D_REQUEST)
        req_release(c);
    c->state = D_LINGER;
    c->io.ops->shutdown(&c->io);
    polis_buf_free(&c->in);
    polis_timer_arm(c->wk->loop, &c->timer, 2000);
}

static void d_linger_read(struct gw_dconn *c)
{
    char sink[4096];
    for (;;) {
        ssize_t n = polis_io_read(&c->io, sink, sizeof(sink));
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        d_free(c);
        return;
    }
}

/* ---- Request ids and access log ----------------------------------------------------------------
 */

static void new_request_id(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    struct gw_worker *wk = c->wk;
    static const char hex[] = "0123456789abcdef";
    uint64_t seq = ++wk->req_seq;
    memcpy(r->request_id, wk->id_prefix, 16); /* 16 random hex digits per worker, then a count */
    for (int i = 31; i >= 16; i--, seq >>= 4)
        r->request_id[i] = hex[seq & 15];
    r->request_id_len = 32;
}

/* Keep the client's X-Request-Id when it is short and printable, else make one. */
static void make_request_id(struct gw_dconn *c, const struct polis_h1_msg *m)
{
    struct gw_req *r = &c->r;
    int i = m->hdr_index[POLIS_HDR_X_REQUEST_ID];
    if (i >= 0) {
        struct polis_str v = m->headers[i].value;
        bool ok = v.len > 0 && v.len < sizeof(r->request_id);
        for (size_t k = 0; ok && k < v.len; k++) {
            unsigned char ch = (unsigned char)v.p[k];
            ok = ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\';
        }
        if (ok) {
            memcpy(r->request_id, v.p, v.len);
            r->request_id_len = (uint8_t)v.len;
            return;
        }
    }
    new_request_id(c);
}

/* The request's trace id as 32 lowercase hex digits and a NUL. */
static void trace_id_hex(const struct gw_req *r, char out[33])
{
    char tp[POLIS_TRACEPARENT_LEN + 1]; /* "00-<trace id>-..." */
    polis_traceparent_format(&r->trace, tp);
    memcpy(out, tp + 3, 32);
    out[32] = '\0';
}

static void json_str(struct polis_buf *b, struct polis_str s)
{
    static const char hex[] = "0123456789abcdef";
    if (polis_buf_reserve(b, s.len * 6 + 2) < 0)
        return;
    char *o = b->data + b->end;
    *o++ = '"';
    for (size_t i = 0; i < s.len; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[ch >> 4];
            o[5] = hex[ch & 15];
            o += 6;
        } else {
            *o++ = (char)ch;
        }
    }
    *o++ = '"';
    b->end = (size_t)(o - b->data);
}

static bool alog_on(const struct gw_worker *wk)
{
    return atomic_load_explicit(&wk->gw->alog_fd, memory_order_relaxed) >= 0;
}

#define ALOG_ON(mask, f) ((mask) & (1u << POLIS_ALOG_##f))

/* Append ',"name":' for field f. */
static void alog_key(struct polis_buf *b, enum polis_alog_field f)
{
    const char *name = polis__alog_field_names[f];
    APPEND_LIT(b, ",\"");
    polis_buf_append(b, name, strlen(name));
    APPEND_LIT(b, "\":");
}

static void alog_str(struct polis_buf *b, uint32_t mask, enum polis_alog_field f,
                     struct polis_str v)
{
    if (mask & (1u << f)) {
        alog_key(b, f);
        json_str(b, v);
    }
}

static void alog_num(struct polis_buf *b, uint32_t mask, enum polis_alog_field f, const char *fmt,
                     double v)
{
    if (mask & (1u << f)) {
        alog_key(b, f);
        polis_buf_printf(b, fmt, v);
    }
}

/* The fields known when the head is parsed, kept until the request ends (the head's bytes do
 * not live that long). */
static void log_begin(struct gw_dconn *c, const struct polis_h1_msg *m)
{
    struct gw_req *r = &c->r;
    uint32_t mask = r->ws->snap->cfg->access_log_fields;
    struct polis_buf *b = &r->log;
    b->start = b->end = 0;
    int h = m->hdr_index[POLIS_HDR_HOST];
    alog_str(b, mask, POLIS_ALOG_METHOD, m->method);
    alog_str(b, mask, POLIS_ALOG_PATH, m->target);
    alog_str(b, mask, POLIS_ALOG_HOST, h >= 0 ? m->headers[h].value : (struct polis_str){"", 0});
}

static double ms_between(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e3 + (double)(b->tv_nsec - a->tv_nsec) / 1e6;
}

/* One JSON line with the fields access_log_fields selects, in their documented order. */
static void log_end(struct gw_dconn *c, const struct timespec *now)
{
    struct gw_worker *wk = c->wk;
    struct gw_req *r = &c->r;
    uint32_t mask = r->ws->snap->cfg->access_log_fields;
    struct polis_buf *b = &wk->alog;
    size_t start = b->end;
    if (ALOG_ON(mask, TS)) {
        struct timespec wall;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &wall);
        gmtime_r(&wall.tv_sec, &tm);
        alog_key(b, POLIS_ALOG_TS);
        polis_buf_printf(b, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\"", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                         wall.tv_nsec / 1000000);
    }
    alog_str(b, mask, POLIS_ALOG_REQUEST_ID, (struct polis_str){r->request_id, r->request_id_len});
    if (r->traced && ALOG_ON(mask, TRACE_ID)) {
        char id[33];
        trace_id_hex(r, id);
        alog_str(b, mask, POLIS_ALOG_TRACE_ID, (struct polis_str){id, 32});
    }
    alog_str(b, mask, POLIS_ALOG_CLIENT, (struct polis_str){c->ip, c->ip_len});
    if (polis_buf_len(&r->log) > 0) {
        polis_buf_append(b, polis_buf_head(&r->log), polis_buf_len(&r->log));
    } else { /* the head never parsed (400, 408, 431...) */
        alog_str(b, mask, POLIS_ALOG_METHOD, POLIS_STR(""));
        alog_str(b, mask, POLIS_ALOG_PATH, POLIS_STR(""));
        alog_str(b, mask, POLIS_ALOG_HOST, POLIS_STR(""));
    }
    alog_num(b, mask, POLIS_ALOG_STATUS, "%.0f", r->status);
    alog_num(b, mask, POLIS_ALOG_BYTES_RECEIVED, "%.0f", (double)r->bytes_in);
    alog_num(b, mask, POLIS_ALOG_BYTES_SENT, "%.0f", (double)r->bytes_out);
    alog_num(b, mask, POLIS_ALOG_DURATION_MS, "%.3f", ms_between(&r->t0, now));
    const char *up = r->upstream_addr != NULL ? r->upstream_addr : "";
    alog_str(b, mask, POLIS_ALOG_UPSTREAM, (struct polis_str){up, strlen(up)});
    alog_num(b, mask, POLIS_ALOG_UPSTREAM_CONNECT_MS, "%.3f", (double)r->connect_us / 1e3);
    alog_num(b, mask, POLIS_ALOG_UPSTREAM_MS, "%.3f",
             r->upstream_answered ? ms_between(&r->t_up, now) : 0);
    alog_num(b, mask, POLIS_ALOG_ATTEMPTS, "%.0f", r->attempts);
    const char *route = r->route != NULL ? r->route->name : "";
    alog_str(b, mask, POLIS_ALOG_ROUTE, (struct polis_str){route, strlen(route)});
    const char *cl = r->cluster != NULL ? r->cluster->name : "";
    alog_str(b, mask, POLIS_ALOG_CLUSTER, (struct polis_str){cl, strlen(cl)});
    if (b->end > start && b->data[start] == ',') /* every field began with a comma */
        b->data[start] = '{';
    APPEND_LIT(b, "}\n");
}

static double seconds_since(const struct timespec *t0, const struct timespec *now)
{
    return (double)(now->tv_sec - t0->tv_sec) + (double)(now->tv_nsec - t0->tv_nsec) / 1e9;
}

/* A request ended (answered or cut short): count it in the metrics and log it, once. */
static void req_record(struct gw_dconn *c)
{
    struct gw_worker *wk = c->wk;
    struct gw_req *r = &c->r;
    const struct gw_snapshot *s = r->ws->snap;
    struct polis_metrics_shard *sh = wk->shard;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    size_t ri = r->route != NULL ? (size_t)(r->route - s->cfg->routes) : s->cfg->num_routes;
    const struct gw_route_slots *rs = &s->route_slots[ri];
    polis_counter_add(sh, rs->requests[polis__gw_status_class(r->status)], 1);
    polis_histogram_observe(sh, wk->gw->metrics.duration, rs->duration,
                            seconds_since(&r->t0, &now));
    polis_counter_add(sh, rs->bytes_in, r->bytes_in);
    polis_counter_add(sh, rs->bytes_out, r->bytes_out);
    if (r->upstream_answered)
        polis_histogram_observe(sh, wk->gw->metrics.upstream_duration,
                                s->cluster_slots[r->cluster_idx].duration,
                                seconds_since(&r->t_up, &now));
    if (r->traced)
        trace_end(c);
    if (alog_on(wk))
        log_end(c, &now);
    r->request_id_len = 0; /* recorded: once only */
}

/* ---- Building heads -------------------------------------------------------------------------- */

static bool name_in(struct polis_str name, char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (polis_str_caseeq(name, (struct polis_str){names[i], strlen(names[i])}))
            return true;
    }
    return false;
}

static void append_str(struct polis_buf *b, struct polis_str s)
{
    polis_buf_append(b, s.p, s.len);
}

static void append_header_ops(struct polis_buf *b, const struct polis_header_ops *ops)
{
    for (size_t i = 0; i < ops->num_add; i++) {
        polis_buf_append(b, ops->add[i].name, strlen(ops->add[i].name));
        APPEND_LIT(b, ": ");
        polis_buf_append(b, ops->add[i].value, strlen(ops->add[i].value));
        APPEND_LIT(b, "\r\n");
    }
}

/* ---- Tracing -----------------------------------------------------------------------------------
 */

static bool is_name(struct polis_str n, const char *lit, size_t len)
{
    return n.len == len && polis_str_caseeq(n, (struct polis_str){lit, len});
}

/* Join the client's trace or start one, decide sampling, start the server span. */
static void trace_begin(struct gw_dconn *c, const struct polis_h1_msg *m, struct polis_str host,
                        struct polis_str path)
{
    struct gw_req *r = &c->r;
    struct polis_tracer *t = c->wk->gw->tracer;
    struct polis_trace_ctx parent;
    bool has_parent = false;
    int seen = 0;
    for (size_t i = 0; i < m->num_headers; i++) {
        if (is_name(m->headers[i].name, "traceparent", 11) && seen++ == 0)
            has_parent = polis_traceparent_parse(m->headers[i].value, &parent) == 0;
    }
    if (seen > 1) /* W3C: several traceparent headers make the context invalid */
        has_parent = false;
    r->traced = true;
    r->method_len =
        (uint8_t)(m->method.len < sizeof(r->method) ? m->method.len : sizeof(r->method));
    memcpy(r->method, m->method.p, r->method_len);
    if (has_parent)
        memcpy(r->trace.trace_id, parent.trace_id, 16);
    else
        polis_trace_random_id(r->trace.trace_id, 16);
    polis_trace_random_id(r->trace.span_id, 8);
    r->sampled = polis_tracer_sampled(t, has_parent ? &parent : NULL, r->trace.trace_id);
    r->trace.flags = r->sampled ? 1 : 0;
    if (!r->sampled || (r->span = malloc(sizeof(*r->span))) == NULL)
        return;
    char name[96];
    int n = snprintf(name, sizeof(name), "%.*s %.*s", (int)m->method.len, m->method.p,
                     (int)(r->route != NULL ? strlen(r->route->name) : 0),
                     r->route != NULL ? r->route->name : "");
    polis_span_start(
        r->span, has_parent ? &parent : NULL, POLIS_SPAN_SERVER,
        (struct polis_str){name, (size_t)n < sizeof(name) ? (size_t)n : sizeof(name) - 1});
    memcpy(r->span->trace_id, r->trace.trace_id, 16); /* a root span keeps the id chosen above */
    memcpy(r->span->span_id, r->trace.span_id, 8);
    polis_span_attr_str(r->span, "http.request.method", m->method);
    polis_span_attr_str(r->span, "url.path", path);
    polis_span_attr_str(r->span, "url.scheme", POLIS_STR("http"));
    struct polis_str hostname = host;
    const char *colon =
        host.len > 0 && host.p[host.len - 1] != ']' ? memrchr(host.p, ':', host.len) : NULL;
    if (colon != NULL && memchr(host.p, ']', host.len) == NULL &&
        memchr(host.p, ':', (size_t)(colon - host.p)) != NULL)
        colon = NULL; /* a bare IPv6 address, no port */
    if (colon != NULL) {
        hostname.len = (size_t)(colon - host.p);
        polis_span_attr_int(r->span, "server.port", strtol(colon + 1, NULL, 10));
    }
    polis_span_attr_str(r->span, "server.address", hostname);
    polis_span_attr_str(r->span, "client.address", (struct polis_str){c->ip, c->ip_len});
    polis_span_attr_str(r->span, "network.protocol.version",
                        m->minor_version == 0 ? POLIS_STR("1.0") : POLIS_STR("1.1"));
    if (r->route != NULL)
        polis_span_attr_str(r->span, "http.route",
                            (struct polis_str){r->route->name, strlen(r->route->name)});
}

/* An upstream attempt begins: its client span (sampled requests), and the traceparent of the
 * head renewed with the attempt's span id. */
static void trace_attempt(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    if (!r->traced)
        return;
    struct polis_trace_ctx ctx = r->trace;
    polis_trace_random_id(ctx.span_id, 8);
    if (r->sampled && r->cspan == NULL && (r->cspan = malloc(sizeof(*r->cspan))) != NULL) {
        polis_span_start(r->cspan, &r->trace, POLIS_SPAN_CLIENT,
                         (struct polis_str){r->span != NULL ? r->span->text : "proxy",
                                            r->span != NULL ? r->span->name_len : 5});
        memcpy(r->cspan->span_id, ctx.span_id, 8);
        const struct polis_addr *a = &r->ws->snap->clusters[r->cluster_idx].insts[r->inst].addr;
        const char *colon = strrchr(a->text, ':');
        size_t hostlen = colon != NULL ? (size_t)(colon - a->text) : strlen(a->text);
        polis_span_attr_str(r->cspan, "server.address", (struct polis_str){a->text, hostlen});
        if (colon != NULL)
            polis_span_attr_int(r->cspan, "server.port", strtol(colon + 1, NULL, 10));
        polis_span_attr_str(r->cspan, "polis.cluster",
                            (struct polis_str){r->cluster->name, strlen(r->cluster->name)});
        polis_span_attr_str(r->cspan, "http.request.method",
                            (struct polis_str){r->method, r->method_len});
    }
    char tp[POLIS_TRACEPARENT_LEN + 1];
    polis_traceparent_format(&ctx, tp);
    memcpy(r->hbuf.data + r->hbuf.start + r->tp_off, tp, POLIS_TRACEPARENT_LEN);
}

/* The attempt ended: with the upstream's status, or with an error (status 0). */
static void trace_attempt_end(struct gw_dconn *c, int status, const char *error)
{
    struct gw_req *r = &c->r;
    if (r->cspan == NULL)
        return;
    if (status > 0)
        polis_span_attr_int(r->cspan, "http.response.status_code", status);
    if (error != NULL)
        polis_span_attr_str(r->cspan, "error.type", (struct polis_str){error, strlen(error)});
    /* OpenTelemetry: a client span is an error from 4xx on, a server span from 5xx on. */
    polis_span_end(r->cspan, error != NULL || status >= 400 ? POLIS_SPAN_ERROR : POLIS_SPAN_UNSET);
    polis_tracer_submit(c->wk->gw->tracer, r->cspan);
    free(r->cspan);
    r->cspan = NULL;
}

/* The request ended: close its spans and hand them to the exporter (it copies them). */
static void trace_end(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    trace_attempt_end(c, r->upstream_answered ? r->status : 0,
                      r->upstream_answered ? NULL : "aborted");
    if (r->span == NULL)
        return;
    polis_span_attr_int(r->span, "http.response.status_code", r->status);
    polis_span_end(r->span, r->status >= 500 ? POLIS_SPAN_ERROR : POLIS_SPAN_UNSET);
    polis_tracer_submit(c->wk->gw->tracer, r->span);
    free(r->span);
    r->span = NULL;
}

/* Write the request head for the upstream into r->hbuf. Returns 0 or POLIS_ETOOBIG. */
static int build_upstream_head(struct gw_dconn *c, const struct polis_h1_msg *m,
                               struct polis_str path, struct polis_str query)
{
    struct gw_req *r = &c->r;
    struct polis_buf *b = &r->hbuf;
    const struct polis_route_cfg *rt = r->route;
    const struct gw_route_sec *rs =
        rt != NULL ? &r->ws->snap->cref->sec.routes[r->route_idx] : NULL;
    char pathbuf[8192];
    size_t plen = path.len;
    const char *pp = path.p;
    if (rt != NULL && (rt->strip_prefix || rt->rewrite != NULL)) {
        if (polis__route_upstream_path(rt, path, pathbuf, sizeof(pathbuf), &plen) < 0)
            return POLIS_EURITOOLONG;
        pp = pathbuf;
    }
    b->start = b->end = 0;
    append_str(b, m->method);
    APPEND_LIT(b, " ");
    polis_buf_append(b, pp, plen);
    if (query.p != NULL) {
        APPEND_LIT(b, "?");
        append_str(b, query);
    }
    APPEND_LIT(b, " HTTP/1.1\r\n");

    struct polis_str xff_first = {NULL, 0};
    struct polis_str via_prev = {NULL, 0};
    for (size_t i = 0; i < m->num_headers; i++) {
        const struct polis_h1_header *h = &m->headers[i];
        if (h->hop && !(r->upgrade && (h->id == POLIS_HDR_UPGRADE)))
            continue;
        switch (h->id) {
        case POLIS_HDR_X_FORWARDED_FOR:
            if (xff_first.p == NULL) {
                xff_first = h->value;
            } else { /* several: join them in order */
                APPEND_LIT(b, "X-Forwarded-For: ");
                append_str(b, xff_first);
                APPEND_LIT(b, "\r\n");
                xff_first = h->value;
            }
            continue;
        case POLIS_HDR_X_FORWARDED_PROTO:
        case POLIS_HDR_X_FORWARDED_HOST:
        case POLIS_HDR_X_REQUEST_ID:
            continue;
        case POLIS_HDR_VIA:
            via_prev = h->value;
            continue;
        default:
            break;
        }
        if (rt != NULL && rt->request_headers.num_remove > 0 &&
            name_in(h->name, rt->request_headers.remove, rt->request_headers.num_remove))
            continue;
        if (rs != NULL && rs->num_owned > 0 &&
            name_in(h->name, (char *const *)rs->owned, rs->num_owned))
            continue; /* only the gateway says who the client is */
        if (r->traced && h->id == POLIS_HDR_OTHER && is_name(h->name, "traceparent", 11))
            continue; /* ours replaces it */
        append_str(b, h->name);
        APPEND_LIT(b, ": ");
        append_str(b, h->value);
        APPEND_LIT(b, "\r\n");
    }
    if (r->req_mode == BODY_CHUNKED)
        APPEND_LIT(b, "Transfer-Encoding: chunked\r\n");
    if (r->upgrade)
        APPEND_LIT(b, "Connection: upgrade\r\n");
    APPEND_LIT(b, "X-Forwarded-For: ");
    if (xff_first.p != NULL) {
        append_str(b, xff_first);
        APPEND_LIT(b, ", ");
    }
    polis_buf_append(b, c->ip, c->ip_len);
    if (polis__tls_is_tls(&c->io)) {
        APPEND_LIT(b, "\r\nX-Forwarded-Proto: https\r\n");
        const struct polis_tls_cfg *tc = &r->ws->snap->cfg->tls;
        char subject[1024];
        if (tc->client_auth != POLIS_CLIENT_AUTH_OFF && tc->forward_subject != NULL &&
            polis__tls_peer_subject(&c->io, subject, sizeof(subject)) == 0)
            polis_buf_printf(b, "%s: %s\r\n", tc->forward_subject, subject);
    } else {
        APPEND_LIT(b, "\r\nX-Forwarded-Proto: http\r\n");
    }
    int hi = m->hdr_index[POLIS_HDR_HOST];
    if (hi >= 0) {
        APPEND_LIT(b, "X-Forwarded-Host: ");
        append_str(b, m->headers[hi].value);
        APPEND_LIT(b, "\r\n");
    } else { /* HTTP/1.0 without Host: HTTP/1.1 requires one, so name the instance */
        const char *addr = r->ws->snap->clusters[r->cluster_idx].insts[r->inst].addr.text;
        APPEND_LIT(b, "Host: ");
        polis_buf_append(b, addr, strlen(addr));
        APPEND_LIT(b, "\r\n");
    }
    APPEND_LIT(b, "Via: ");
    if (via_prev.p != NULL) {
        append_str(b, via_prev);
        APPEND_LIT(b, ", ");
    }
    if (m->minor_version == 0)
        APPEND_LIT(b, "1.0 polis\r\n");
    else
        APPEND_LIT(b, "1.1 polis\r\n");
    APPEND_LIT(b, "X-Request-Id: ");
    polis_buf_append(b, r->request_id, r->request_id_len);
    APPEND_LIT(b, "\r\n");
    if (r->traced) { /* the value is written per attempt by trace_attempt() */
        APPEND_LIT(b, "traceparent: ");
        r->tp_off = polis_buf_len(b);
        char tp[POLIS_TRACEPARENT_LEN + 1];
        polis_traceparent_format(&r->trace, tp);
        polis_buf_append(b, tp, POLIS_TRACEPARENT_LEN);
        APPEND_LIT(b, "\r\n");
    }
    if (r->id_len > 0)
        polis_buf_append(b, r->id_hdr, r->id_len);
    if (r->consumer != NULL && rt->auth.forward_consumer != NULL) {
        polis_buf_printf(b, "%s: %s\r\n", rt->auth.forward_consumer, r->consumer->name);
    }
    if (rt != NULL)
        append_header_ops(b, &rt->request_headers);
    int rc = APPEND_LIT(b, "\r\n");
    return rc < 0 ? POLIS_EHDRTOOBIG : 0;
}

/* Write the response head for the client into r->hbuf. */
static int build_client_head(struct gw_dconn *c, const struct polis_h1_msg *m, bool interim)
{
    struct gw_req *r = &c->r;
    struct polis_buf *b = &r->dhead;
    const struct polis_route_cfg *rt = r->route;
    b->start = b->end = 0;
    r->dsent = 0;
    char status[13] = "HTTP/1.1 000 ";
    status[7] = r->client_10 ? '0' : '1';
    status[9] = (char)('0' + m->status / 100);
    status[10] = (char)('0' + m->status / 10 % 10);
    status[11] = (char)('0' + m->status % 10);
    polis_buf_append(b, status, sizeof(status));
    append_str(b, m->reason);
    APPEND_LIT(b, "\r\n");
    for (size_t i = 0; i < m->num_headers; i++) {
        const struct polis_h1_header *h = &m->headers[i];
        if (h->hop && !(r->tunnel && (h->id == POLIS_HDR_UPGRADE)))
            continue;
        if (!interim && rt != NULL && rt->response_headers.num_remove > 0 &&
            name_in(h->name, rt->response_headers.remove, rt->response_headers.num_remove))
            continue;
        if (!interim && h->id == POLIS_HDR_X_REQUEST_ID)
            continue;
        if (r->cors && h->name.len > 15 &&
            polis_str_caseeq((struct polis_str){h->name.p, 15}, POLIS_STR("Access-Control-")))
            continue; /* the route's CORS policy speaks, not the service's */
        append_str(b, h->name);
        APPEND_LIT(b, ": ");
        append_str(b, h->value);
        APPEND_LIT(b, "\r\n");
    }
    if (!interim) {
        if (r->tunnel)
            APPEND_LIT(b, "Connection: upgrade\r\n");
        else if (r->resp_mode == BODY_CHUNKED && !r->dechunk) {
            /* Passed through as sent ("gzip, chunked" keeps its gzip). */
            APPEND_LIT(b, "Transfer-Encoding: ");
            append_str(b, r->resp_te);
            APPEND_LIT(b, "\r\n");
        }
        if (!r->tunnel) {
            if (c->close_after)
                APPEND_LIT(b, "Connection: close\r\n");
            else if (r->client_10)
                APPEND_LIT(b, "Connection: keep-alive\r\n");
        }
        APPEND_LIT(b, "X-Request-Id: ");
        polis_buf_append(b, r->request_id, r->request_id_len);
        APPEND_LIT(b, "\r\n");
        if (rt != NULL)
            append_header_ops(b, &rt->response_headers);
        if (r->rl_len > 0)
            polis_buf_append(b, r->rl_hdr, r->rl_len);
        if (r->cors_len > 0)
            polis_buf_append(b, r->cors_hdr, r->cors_len);
    }
    int rc = APPEND_LIT(b, "\r\n");
    return rc < 0 ? POLIS_ETOOBIG : 0;
}

/* Answer the client with an error of the gateway's own: a JSON body, then close when the rest
 * of the request cannot be told apart from the next one. */
static void error_response(struct gw_dconn *c, int status, const char *code, const char *msg)
{
    struct gw_req *r = &c->r;
    struct polis_buf *b = &r->dhead;
    char body[512];
    int n =
        snprintf(body, sizeof(body),
                 "{\"error\":\"%s\",\"status\":%d,\"message\":\"%s\",\"request_id\":\"%.*s\"}\n",
                 code, status, msg, (int)r->request_id_len, r->request_id);
    if (!r->req_done || status == 400 || (status >= 413 && status <= 431) || status == 505)
        c->close_after = true;
    b->start = b->end = 0;
    r->dsent = 0;
    if (status == 204) { /* a preflight's answer: no body, no framing headers */
        polis_buf_printf(b, "HTTP/1.1 204 No Content\r\nX-Request-Id: %.*s\r\n%s",
                         (int)r->request_id_len, r->request_id,
                         c->close_after ? "Connection: close\r\n" : "");
        n = 0;
    } else {
        polis_buf_printf(b,
                         "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: "
                         "%d\r\nX-Request-Id: %.*s\r\n%s",
                         status, polis_http_reason(status), n, (int)r->request_id_len,
                         r->request_id, c->close_after ? "Connection: close\r\n" : "");
    }
    if (r->retry_after_s > 0)
        polis_buf_printf(b, "Retry-After: %u\r\n", r->retry_after_s);
    if (r->www_auth != NULL)
        polis_buf_printf(b, "WWW-Authenticate: %s\r\n", r->www_auth);
    if (r->rl_len > 0)
        polis_buf_append(b, r->rl_hdr, r->rl_len);
    if (r->cors_len > 0)
        polis_buf_append(b, r->cors_hdr, r->cors_len);
    APPEND_LIT(b, "\r\n");
    if (!r->head_request && n > 0)
        polis_buf_append(b, body, (size_t)n);
    r->status = status;
    r->resp_head_done = true;
    r->resp_done = true;
    r->resp_mode = BODY_NONE;
    r->resp_ready = 0;
}

/* ---- Resilience: instances, breakers, bulkheads, retries ------------------------------------- */

enum att { ATT_OK, ATT_5XX, ATT_GW_STATUS, ATT_CONNECT, ATT_RESET, ATT_TIMEOUT, ATT_CANCEL };

static int req_connect(struct gw_dconn *c, bool fresh);

static uint64_t wk_rand(struct gw_worker *wk)
{
    return polis__retry_rng_next(&wk->rng);
}

/* True with probability percent / 100. */
static bool roll(struct gw_worker *wk, double percent)
{
    if (percent <= 0)
        return false;
    if (percent >= 100)
        return true;
    return (double)(wk_rand(wk) >> 11) * (1.0 / 9007199254740992.0) * 100.0 < percent;
}

static struct polis_lb_state *group_state(const struct gw_dconn *c, size_t g)
{
    const struct gw_snapshot *s = c->r.ws->snap;
    return s->lb_states[(size_t)c->wk->id * s->ngroups + g];
}

/* The attempt on r->ist ended: tell its breaker and outlier detection, free its balancer slot. */
static void attempt_end(struct gw_dconn *c, enum att kind)
{
    struct gw_req *r = &c->r;
    struct gw_istate *ist = r->ist;
    if (ist == NULL)
        return;
    uint64_t now = polis_loop_now(c->wk->loop);
    if (r->iperm.kind != POLIS_PERMIT_NONE)
        polis__breaker_release(r->ibreaker, &r->iperm,
                               kind == ATT_OK       ? POLIS_OUTCOME_SUCCESS
                               : kind == ATT_CANCEL ? POLIS_OUTCOME_CANCELLED
                                                    : POLIS_OUTCOME_FAILURE,
                               now - r->attempt_ms, now);
    if (kind != ATT_CANCEL && r->cluster->outlier.enabled) {
        static const enum polis_call_kind map[] = {
            POLIS_CALL_OK,      POLIS_CALL_5XX,   POLIS_CALL_GATEWAY_STATUS,
            POLIS_CALL_CONNECT, POLIS_CALL_RESET, POLIS_CALL_TIMEOUT};
        if (polis__outlier_record(&r->cluster->outlier, &r->cs->outlier, &ist->outlier, map[kind],
                                  now)) {
            polis_counter_add(c->wk->shard, r->ws->snap->cluster_slots[r->cluster_idx].ejections,
                              1);
            polis_warn("outlier detection: %s of cluster %s ejected", ist->addr.text,
                       r->cluster->name);
        }
    }
    if (r->counted_pending) {
        atomic_fetch_sub_explicit(&r->cs->pending, 1, memory_order_relaxed);
        r->counted_pending = false;
    }
    atomic_fetch_sub_explicit(&ist->inflight, 1, memory_order_relaxed);
    polis__lb_done(group_state(c, r->group), r->member);
    r->ist = NULL;
}

/* Take instance i (member m of the request's group) for the next attempt: its breaker permit
 * when it has one. Returns false when its breaker refuses. */
static bool take_instance(struct gw_dconn *c, size_t m, size_t i, bool counted)
{
    struct gw_req *r = &c->r;
    struct gw_istate *ist = r->ws->snap->clusters[r->cluster_idx].st[i];
    struct polis_breaker *b = atomic_load_explicit(&ist->breaker, memory_order_acquire);
    r->iperm.kind = POLIS_PERMIT_NONE;
    if (b != NULL && !polis__breaker_acquire(b, polis_loop_now(c->wk->loop), &r->iperm, NULL)) {
        if (counted)
            polis__lb_done(group_state(c, r->group), m);
        return false;
    }
    if (!counted)
        polis__lb_take(group_state(c, r->group), m);
    r->ibreaker = b;
    r->member = m;
    r->inst = i;
    r->tried |= 1ull << (i % 64);
    r->ist = ist;
    atomic_fetch_add_explicit(&ist->inflight, 1, memory_order_relaxed);
    return true;
}

/* Pick an instance of the request's group: the balancer's choice when it is available (not
 * unhealthy, ejected, drained, disabled or open), else the next available one, avoiding the
 * instances the request already tried while another exists. Below the cluster's panic
 * threshold of available instances, health is ignored (ejections and admin states too, not the
 * admin's disabled). Returns false when no instance can take the request. */
static bool pick_instance(struct gw_dconn *c, struct polis_str key)
{
    struct gw_req *r = &c->r;
    const struct gw_snapshot *s = r->ws->snap;
    const struct gw_group *g = &s->groups[r->group];
    if (g->n == 0)
        return false;
    const struct gw_crt *cr = &s->clusters[r->cluster_idx];
    struct polis_lb_state *st = group_state(c, r->group);
    uint64_t now = polis_loop_now(c->wk->loop);
    uint64_t tried = r->tried;
#define TRIED(i) ((tried >> ((i) % 64)) & 1)
    size_t m = polis__lb_pick(g->lb, st, key);
    size_t i = g->members[m];
    if (!TRIED(i) && polis__istate_available(cr->st[i], r->cluster, now) &&
        take_instance(c, m, i, true))
        return true;
    polis__lb_done(st, m);
    /* Slow path: walk the group from the balancer's choice, instances not tried yet first; a
     * half-open breaker with every probe out refuses and the walk goes on. */
    size_t avail = 0;
    for (size_t k = 0; k < g->n; k++)
        avail += polis__istate_available(cr->st[g->members[k]], r->cluster, now);
    if (avail * 100 < (size_t)r->cluster->panic_threshold * g->n) {
        /* Panic: too few left to carry the load; spread it over every instance not disabled. */
        for (size_t k = 0; k < g->n; k++) {
            size_t mm = (m + k) % g->n;
            struct gw_istate *ist = cr->st[g->members[mm]];
            if (atomic_load(&ist->admin) == GW_INST_DISABLED || (TRIED(g->members[mm]) && g->n > 1))
                continue;
            if (take_instance(c, mm, g->members[mm], false))
                return true;
        }
        return false;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 1; k <= g->n; k++) {
            size_t mm = (m + k) % g->n, i2 = g->members[mm];
            if ((pass == 0) == (TRIED(i2) != 0))
                continue;
            if (polis__istate_available(cr->st[i2], r->cluster, now) &&
                take_instance(c, mm, i2, false))
                return true;
        }
    }
    return false;
#undef TRIED
}

/* Answer 503 without reaching an instance, counted by reason. */
static void reject(struct gw_dconn *c, enum gw_reject why, uint64_t retry_after_ms)
{
    static const char *const msgs[GW_REJ__COUNT] = {
        "the cluster's circuit breaker is open",
        "no instance of the cluster is available",
        "the cluster has too many requests in flight (max_requests)",
        "the cluster has too many requests waiting for a connection (max_pending)",
        "the cluster has too many connections open (max_connections)",
        "the route has too many requests in flight (max_concurrent)",
    };
    struct gw_req *r = &c->r;
    if (r->cluster != NULL)
        polis_counter_add(c->wk->shard, r->ws->snap->cluster_slots[r->cluster_idx].rejected[why],
                          1);
    r->retry_after_s = retry_after_ms > 0 ? (uint32_t)((retry_after_ms + 999) / 1000) : 0;
    error_response(c, 503, why == GW_REJ_BREAKER ? "circuit_open" : "service_unavailable",
                   msgs[why]);
}

/* Admission at request start: fault abort, route and cluster caps, the cluster's breaker.
 * Returns false when an answer was prepared. */
static bool admit(struct gw_dconn *c, const struct polis_h1_msg *m)
{
    struct gw_worker *wk = c->wk;
    struct gw_req *r = &c->r;
    const struct polis_route_cfg *rt = r->route;
    const struct polis_cluster_cfg *cl = r->cluster;
    if (rt->fault.abort_status > 0 && roll(wk, rt->fault.abort_percent)) {
        error_response(c, rt->fault.abort_status, "fault_injected",
                       "aborted by the route's fault injection");
        return false;
    }
    if (rt->max_concurrent > 0) {
        atomic_uint *a = &r->ws->snap->cref->route_active[r->route_idx];
        r->counted_route = true;
        if (atomic_fetch_add_explicit(a, 1, memory_order_relaxed) >= rt->max_concurrent) {
            reject(c, GW_REJ_ROUTE_CONCURRENCY, 0);
            return false;
        }
    }
    if (cl->max_requests > 0) {
        r->counted_requests = true;
        if (atomic_fetch_add_explicit(&r->cs->requests, 1, memory_order_relaxed) >=
            cl->max_requests) {
            reject(c, GW_REJ_MAX_REQUESTS, 0);
            return false;
        }
    }
    struct polis_breaker *b = atomic_load_explicit(&r->cs->breaker, memory_order_acquire);
    if (b != NULL) {
        uint64_t ra = 0;
        if (!polis__breaker_acquire(b, polis_loop_now(wk->loop), &r->cperm, &ra)) {
            reject(c, GW_REJ_BREAKER, ra);
            return false;
        }
        r->cbreaker = b;
    }
    polis__budget_request_begin(&r->cs->budget);
    r->counted_budget = true;
    r->start_ms = polis_loop_now(wk->loop);
    r->retry = rt->retry != NULL ? rt->retry : &cl->retry;
    r->tries = 1;
    if (r->retry->deadline_ms > 0)
        r->deadline_ms = polis_loop_now(wk->loop) + r->retry->deadline_ms;
    r->retryable = r->idempotent;
    if (!r->retryable && rt->retry_idempotency_key) {
        for (size_t i = 0; i < m->num_headers && !r->retryable; i++)
            r->retryable = polis_str_caseeq(m->headers[i].name, POLIS_STR("Idempotency-Key"));
    }
    /* Splits: a weighted choice of group. */
    const struct gw_rrt *rr = &r->ws->snap->routes[r->route_idx];
    r->group = rr->group;
    if (rr->nsplit > 0 && rr->split_total > 0) {
        uint32_t x = (uint32_t)(((wk_rand(wk) >> 32) * rr->split_total) >> 32);
        size_t k = 0;
        while (k + 1 < rr->nsplit && x >= rr->split_cum[k])
            k++;
        r->group = rr->split_groups[k];
    }
    return true;
}

/* Whatever the request holds beyond its attempt: caps, the cluster's permit, the budget. */
static void admit_release(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    if (r->counted_route)
        atomic_fetch_sub_explicit(&r->ws->snap->cref->route_active[r->route_idx], 1,
                                  memory_order_relaxed);
    if (r->counted_requests)
        atomic_fetch_sub_explicit(&r->cs->requests, 1, memory_order_relaxed);
    if (r->cperm.kind != POLIS_PERMIT_NONE) {
        uint64_t now = polis_loop_now(c->wk->loop);
        enum polis_call_outcome o = r->status == 499 || r->status == 0 ? POLIS_OUTCOME_CANCELLED
                                    : r->status >= 500                 ? POLIS_OUTCOME_FAILURE
                                                                       : POLIS_OUTCOME_SUCCESS;
        polis__breaker_release(r->cbreaker, &r->cperm, o, now - r->start_ms, now);
    }
    if (r->counted_retry)
        polis__budget_retry_end(&r->cs->budget);
    if (r->counted_budget)
        polis__budget_request_end(&r->cs->budget);
    r->counted_route = r->counted_requests = r->counted_retry = r->counted_budget = false;
}

/* After a failed attempt (its outcome already recorded): schedule another one on another
 * instance if the policy, the request and the budget allow. on: the POLIS_RETRY_* reason.
 * Returns true when a retry is scheduled. */
static bool retry_schedule(struct gw_dconn *c, unsigned on)
{
    struct gw_worker *wk = c->wk;
    struct gw_req *r = &c->r;
    const struct polis_retry_cfg *pol = r->retry;
    if (pol == NULL || !(pol->on & on) || r->tries >= pol->attempts || !r->retryable ||
        r->body_started || r->dsent > 0)
        return false;
    /* A retry goes to another instance: none left untried, no retry (as nginx's
     * proxy_next_upstream tries each server once). */
    const struct gw_group *g = &r->ws->snap->groups[r->group];
    bool untried = false;
    for (size_t k = 0; k < g->n && !untried; k++)
        untried = !((r->tried >> (g->members[k] % 64)) & 1);
    if (!untried)
        return false;
    uint64_t now = polis_loop_now(wk->loop);
    uint64_t delay =
        polis__backoff_ms(pol->backoff_base_ms, pol->backoff_max_ms, r->tries, &wk->rng);
    if (r->deadline_ms > 0 && now + delay >= r->deadline_ms)
        return false;
    if (!r->counted_retry) {
        if (!polis__budget_retry_begin(&r->cs->budget, pol->budget_percent, pol->budget_min)) {
            polis_counter_add(wk->shard,
                              r->ws->snap->cluster_slots[r->cluster_idx].budget_exhausted, 1);
            return false;
        }
        r->counted_retry = true;
    }
    r->tries++;
    polis_counter_add(wk->shard, r->ws->snap->cluster_slots[r->cluster_idx].retries, 1);
    r->waiting = r->repick = true;
    r->scan = 0;
    r->req_done = false;
    r->got_response_bytes = false;
    polis_timer_arm(wk->loop, &c->wait_timer, delay);
    return true;
}

/* ---- Edge security: client address, access lists, API keys, consumers, rate limits ---------- */

/* The value of query parameter name in query (first occurrence, not decoded), or false. */
static bool query_param(struct polis_str query, const char *name, struct polis_str *out)
{
    size_t nlen = strlen(name);
    const char *p = query.p, *end = query.p + query.len;
    while (p != NULL && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp != NULL ? amp : end;
        if ((size_t)(e - p) > nlen && p[nlen] == '=' && memcmp(p, name, nlen) == 0) {
            *out = (struct polis_str){p + nlen + 1, (size_t)(e - p - nlen - 1)};
            return true;
        }
        p = amp != NULL ? amp + 1 : NULL;
    }
    return false;
}

/* The request's API key: the configured header, else the query parameter. */
static bool api_key_of(const struct polis_config *cfg, const struct polis_h1_msg *m,
                       struct polis_str query, struct polis_str *key)
{
    const char *h = cfg->api_keys.header != NULL ? cfg->api_keys.header : "X-API-Key";
    struct polis_str hn = {h, strlen(h)};
    for (size_t i = 0; i < m->num_headers; i++) {
        if (polis_str_caseeq(m->headers[i].name, hn)) {
            *key = m->headers[i].value;
            return key->len > 0;
        }
    }
    return cfg->api_keys.query != NULL && query.p != NULL &&
           query_param(query, cfg->api_keys.query, key) && key->len > 0;
}

/* The client's address: the peer, or what trusted proxies say it is. */
static void client_ip(const struct gw_dconn *c, const struct polis_h1_msg *m,
                      const struct gw_sec *sec, struct polis_ip *out)
{
    struct polis_ip peer = c->peer;
    if (sec->trusted == NULL) {
        *out = peer;
        return;
    }
    struct polis_str vals[16];
    size_t nv = 0;
    for (size_t i = 0; i < m->num_headers && nv < 16; i++)
        if (m->headers[i].id == POLIS_HDR_X_FORWARDED_FOR)
            vals[nv++] = m->headers[i].value;
    struct polis_clientip ci;
    polis__clientip_resolve(&sec->clientip, &peer, vals, nv, &ci);
    *out = ci.ip;
}

/* The key a rate limit counts a request under. */
static size_t limit_key(const struct gw_dconn *c, const struct polis_h1_msg *m,
                        const struct polis_rate_limit_cfg *lc, const struct polis_ip *ip,
                        const char **out)
{
    const struct gw_req *r = &c->r;
    switch (lc->key) {
    case POLIS_RL_KEY_CONSUMER:
        if (r->consumer != NULL) {
            *out = r->consumer->name;
            return strlen(r->consumer->name);
        }
        if (r->jwt_key_len > 0) {
            *out = r->jwt_key;
            return r->jwt_key_len;
        }
        break; /* no consumer: by client address */
    case POLIS_RL_KEY_ROUTE:
        *out = r->route->name;
        return strlen(r->route->name);
    case POLIS_RL_KEY_HEADER:
        for (size_t i = 0; i < m->num_headers; i++) {
            if (polis_str_caseeq(m->headers[i].name,
                                 (struct polis_str){lc->key_header, strlen(lc->key_header)})) {
                *out = m->headers[i].value.p;
                return m->headers[i].value.len;
            }
        }
        *out = "";
        return 0;
    default:
        break;
    }
    *out = (const char *)ip->a;
    return ip->family == AF_INET ? 4 : 16;
}

/* CORS of the route, before authentication (a browser's preflight carries no credentials).
 * Returns false when an answer was prepared (a preflight's 204 or 403, or 400 for two Origin
 * lines); else the headers for the response are kept in the request. */
static bool cors_check(struct gw_dconn *c, const struct polis_h1_msg *m,
                       const struct polis_cors *policy)
{
    struct gw_req *r = &c->r;
    struct polis_cors_request q = {.method = m->method};
    struct polis_str acrh[8];
    int origins = 0;
    for (size_t i = 0; i < m->num_headers; i++) {
        const struct polis_h1_header *h = &m->headers[i];
        if (polis_str_caseeq(h->name, POLIS_STR("Origin"))) {
            q.origin = h->value;
            origins++;
        } else if (polis_str_caseeq(h->name, POLIS_STR("Access-Control-Request-Method"))) {
            q.acr_method = h->value;
        } else if (polis_str_caseeq(h->name, POLIS_STR("Access-Control-Request-Headers")) &&
                   q.num_acr_headers < 8) {
            acrh[q.num_acr_headers++] = h->value;
        }
    }
    q.acr_headers = acrh;
    if (origins > 1) {
        error_response(c, 400, "bad_request", "more than one Origin header");
        return false;
    }
    r->cors = true;
    struct polis_cors_result res;
    polis__cors_evaluate(policy, &q, &res);
    if (res.action == POLIS_CORS_PREFLIGHT_DENIED) { /* no CORS header at all */
        error_response(c, 403, "cors_forbidden", "this origin, method or header is not allowed");
        return false;
    }
    struct polis_buf lines;
    polis_buf_init(&lines, 8192);
    for (size_t k = 0; k < res.num_headers; k++) {
        append_str(&lines, res.headers[k].name);
        APPEND_LIT(&lines, ": ");
        append_str(&lines, res.headers[k].value);
        APPEND_LIT(&lines, "\r\n");
    }
    if (res.vary.len > 0) {
        APPEND_LIT(&lines, "Vary: ");
        append_str(&lines, res.vary);
        APPEND_LIT(&lines, "\r\n");
    }
    size_t n = polis_buf_len(&lines);
    if (n > 0 && n < UINT16_MAX && (r->cors_hdr = malloc(n)) != NULL) {
        memcpy(r->cors_hdr, polis_buf_head(&lines), n);
        r->cors_len = (uint16_t)n;
    }
    polis_buf_free(&lines);
    if (res.action == POLIS_CORS_PREFLIGHT_OK) {
        error_response(c, 204, "preflight", "");
        return false;
    }
    return true;
}

/* The route's JWT rules: a valid bearer token of an accepted issuer, the required claims and
 * scopes; the claims to forward kept for the upstream head. Returns true when they hold. */
static bool jwt_check(struct gw_dconn *c, const struct polis_h1_msg *m,
                      const struct gw_route_sec *rs, struct polis_jwt_verifier *v)
{
    struct gw_req *r = &c->r;
    const struct polis_route_jwt_cfg *jr = &r->route->auth.jwt_rules;
    struct polis_str token = {NULL, 0};
    for (size_t i = 0; i < m->num_headers && token.p == NULL; i++) {
        if (polis_str_caseeq(m->headers[i].name, POLIS_STR("Authorization")))
            if (polis__jwt_bearer(m->headers[i].value, &token) < 0)
                token.p = NULL;
    }
    if (token.p == NULL || v == NULL)
        return false;
    struct polis_jwt_result res = {0};
    bool ok =
        polis__jwt_verify(v, token.p, token.len, (int64_t)time(NULL), rs->jwt_issuers, &res) == 0;
    for (size_t k = 0; ok && k < jr->num_required_claims; k++)
        ok = polis__jwt_claim_equals(res.claims, jr->required_claims[k].name,
                                     jr->required_claims[k].value);
    if (ok && jr->num_scopes > 0)
        ok = polis__jwt_has_scopes(res.claims, (const char *const *)jr->scopes, jr->num_scopes);
    if (ok) {
        const char *iss = json_string_value(json_object_get(res.claims, "iss"));
        const char *sub = json_string_value(json_object_get(res.claims, "sub"));
        int n = snprintf(r->jwt_key, sizeof(r->jwt_key), "%s\n%s", iss ? iss : "", sub ? sub : "");
        r->jwt_key_len = n > 0 && (size_t)n < sizeof(r->jwt_key) ? (uint8_t)n : 0;
        struct polis_buf lines;
        polis_buf_init(&lines, 16384);
        for (size_t k = 0; k < jr->num_forward_claims; k++) {
            char val[2048];
            size_t len;
            if (polis__jwt_claim_string(res.claims, jr->forward_claims[k].name, val, sizeof(val),
                                        &len) == 0)
                polis_buf_printf(&lines, "%s: %.*s\r\n", jr->forward_claims[k].value, (int)len,
                                 val);
        }
        size_t n2 = polis_buf_len(&lines);
        if (n2 > 0 && (r->id_hdr = malloc(n2)) != NULL) {
            memcpy(r->id_hdr, polis_buf_head(&lines), n2);
            r->id_len = n2;
        }
        polis_buf_free(&lines);
    } else if (res.detail != NULL) {
        polis_debug("jwt refused: %s (%s)", polis__jwt_reason_name(res.reason), res.detail);
    }
    polis__jwt_result_free(&res);
    return ok;
}

/* Access lists, authentication and rate limits of the request's route. Returns false when an
 * answer was prepared (403, 401, 429 or 503). */
static bool edge_check(struct gw_dconn *c, const struct polis_h1_msg *m, struct polis_str query)
{
    struct gw_req *r = &c->r;
    const struct polis_config *cfg = r->ws->snap->cfg;
    const struct gw_sec *sec = &r->ws->snap->cref->sec;
    const struct gw_route_sec *rs = &sec->routes[r->route_idx];
    const struct polis_route_cfg *rt = r->route;
    struct polis_ip ip;
    bool need_ip = rs->allow != NULL || rs->deny != NULL || rs->num_limits > 0;
    if (need_ip)
        client_ip(c, m, sec, &ip);
    if ((rs->allow != NULL || rs->deny != NULL) &&
        !polis__ip_acl_allows(rs->allow, rs->deny, &ip)) {
        error_response(c, 403, "forbidden", "the client address is not allowed on this route");
        return false;
    }
    if (rs->cors != NULL && !cors_check(c, m, rs->cors))
        return false;
    if (rt->auth.api_key || rt->auth.jwt) {
        struct polis_str key;
        bool key_ok = false, jwt_ok = false;
        if (rt->auth.api_key && api_key_of(cfg, m, query, &key)) {
            r->consumer = polis__consumers_lookup_key(r->ws->snap->consumers, key);
            key_ok = r->consumer != NULL;
        }
        if (rt->auth.jwt && (!rt->auth.any || !key_ok))
            jwt_ok = jwt_check(c, m, rs, sec->jwt);
        bool ok = rt->auth.any ? key_ok || jwt_ok
                               : (!rt->auth.api_key || key_ok) && (!rt->auth.jwt || jwt_ok);
        if (!ok) {
            r->www_auth = rt->auth.jwt ? "Bearer realm=\"polis\"" : "ApiKey realm=\"polis\"";
            error_response(c, 401, "unauthorized", "valid credentials are required");
            return false;
        }
        if (!polis__consumer_acl_allows(&rs->acl, r->consumer)) {
            error_response(c, 403, "forbidden", "this consumer may not use this route");
            return false;
        }
    }
    uint64_t now = polis_loop_now(c->wk->loop);
    uint32_t best = UINT32_MAX;
    for (size_t k = 0; k < rs->num_limits; k++) {
        const struct polis_rate_limit_cfg *lc = &cfg->rate_limits[rs->limits[k]];
        const char *kp;
        size_t kl = limit_key(c, m, lc, &ip, &kp);
        struct polis_ratelimit_decision d;
        polis__ratelimit_check(sec->limiters[rs->limits[k]], kp, kl, now, &d);
        if (d.headers && (!d.allowed || d.remaining < best)) {
            best = d.remaining;
            int n = polis__ratelimit_headers(&d, r->rl_hdr, sizeof(r->rl_hdr));
            r->rl_len = n > 0 && (size_t)n < sizeof(r->rl_hdr) ? (uint8_t)n : 0;
        }
        if (!d.allowed) {
            /* polis__ratelimit_headers() wrote Retry-After among the lines when it knew it. */
            if (!d.headers && d.retry_after_ms > 0)
                r->retry_after_s = (uint32_t)polis__ratelimit_secs(d.retry_after_ms);
            error_response(c, d.status ? d.status : 429,
                           d.status == 503 ? "rate_limit_unavailable" : "rate_limited",
                           d.status == 503 ? "the rate limit cannot be checked now"
                                           : "too many requests");
            return false;
        }
    }
    return true;
}

/* ---- Request start --------------------------------------------------------------------------- */

/* RFC 9110 9.2.2: may be sent again after a connection broke without changing the outcome. */
static bool method_idempotent(struct polis_str m)
{
    static const struct polis_str safe[] = {POLIS_STR("GET"),     POLIS_STR("HEAD"),
                                            POLIS_STR("OPTIONS"), POLIS_STR("TRACE"),
                                            POLIS_STR("PUT"),     POLIS_STR("DELETE")};
    for (size_t i = 0; i < sizeof(safe) / sizeof(safe[0]); i++) {
        if (polis_str_eq(m, safe[i]))
            return true;
    }
    return false;
}

static int parse_error_status(int rc, const char **code, const char **msg)
{
    switch (rc) {
    case POLIS_EURITOOLONG:
        *code = "uri_too_long";
        *msg = "request line too long";
        return 414;
    case POLIS_EHDRTOOBIG:
        *code = "headers_too_large";
        *msg = "request header section too large";
        return 431;
    case POLIS_EBODYTOOBIG:
        *code = "payload_too_large";
        *msg = "request body too large";
        return 413;
    case POLIS_EVERSION:
        *code = "http_version_not_supported";
        *msg = "only HTTP/1.0 and HTTP/1.1 are served here";
        return 505;
    case POLIS_ENOTIMPL:
        *code = "not_implemented";
        *msg = "not implemented";
        return 501;
    default:
        *code = "bad_request";
        *msg = "malformed request";
        return 400;
    }
}

static void req_begin(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    struct gw_worker *wk = c->wk;
    struct polis_buf hb = r->hbuf, db = r->dhead, lb = r->log;
    memset(r, 0, sizeof(*r));
    r->hbuf = hb;
    r->dhead = db;
    r->log = lb;
    r->hbuf.start = r->hbuf.end = 0;
    r->dhead.start = r->dhead.end = 0;
    r->log.start = r->log.end = 0;
    r->bytes_in = polis_buf_len(&c->in);
    r->ws = wk->cur;
    r->ws->inflight++;
    r->request_id_len = 0;
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    uint64_t limit = r->ws->snap->cfg->timeouts.request_ms;
    if (limit > 0)
        polis_timer_arm(wk->loop, &c->req_timer, limit);
    c->state = D_REQUEST;
}

/* Release what a request holds: its upstream connection (closed unless recycled by the caller
 * beforehand), its balancer slot and its snapshot. */
static void req_release(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    free(r->cors_hdr);
    r->cors_hdr = NULL;
    r->cors_len = 0;
    free(r->id_hdr);
    r->id_hdr = NULL;
    r->id_len = 0;
    if (r->mirror != NULL) {
        polis__mirror_primary_end(r->mirror, r->resp_done && r->upstream_answered);
        r->mirror = NULL;
    }
    if (r->up != NULL) {
        u_free(r->up);
        r->up = NULL;
    }
    free(r->span); /* spans of a request that was never recorded: dropped */
    free(r->cspan);
    r->span = r->cspan = NULL;
    if (r->cluster != NULL) {
        attempt_end(c, ATT_CANCEL); /* an attempt still running says nothing of the instance */
        admit_release(c);
        r->cluster = NULL;
    }
    polis_timer_cancel(c->wk->loop, &c->wait_timer);
    if (r->ws != NULL) {
        struct gw_wsnap *ws = r->ws;
        r->ws = NULL;
        polis__wsnap_unref(c->wk, ws);
    }
    polis_timer_cancel(c->wk->loop, &c->timer);
    polis_timer_cancel(c->wk->loop, &c->req_timer);
}

/* Split a request target into path and query; absolute-form "http://host/p" gives "/p". */
static void split_target(struct polis_str t, struct polis_str *path, struct polis_str *query)
{
    const char *p = t.p, *end = t.p + t.len;
    if (t.len > 0 && t.p[0] != '/') {
        const char *s = memchr(p, ':', t.len);
        if (s != NULL && s + 2 < end && s[1] == '/' && s[2] == '/') {
            const char *slash = memchr(s + 3, '/', (size_t)(end - s - 3));
            p = slash != NULL ? slash : end;
        }
    }
    const char *q = memchr(p, '?', (size_t)(end - p));
    if (p == end) {
        *path = POLIS_STR("/");
    } else {
        *path = (struct polis_str){p, (size_t)((q != NULL ? q : end) - p)};
    }
    *query =
        q != NULL ? (struct polis_str){q + 1, (size_t)(end - q - 1)} : (struct polis_str){NULL, 0};
}

/* A complete head is at the front of c->in: route it and set the request in motion.
 * Returns AGAIN to continue with the request, or DONE when an error answer was prepared. */
static int req_start(struct gw_dconn *c, const struct polis_h1_msg *m, size_t head_len)
{
    struct gw_worker *wk = c->wk;
    struct gw_req *r = &c->r;
    const struct gw_snapshot *s = r->ws->snap;
    const struct polis_config *cfg = s->cfg;

    make_request_id(c, m);
    if (alog_on(wk))
        log_begin(c, m);
    r->head_request = m->method.len == 4 && memcmp(m->method.p, "HEAD", 4) == 0;
    r->idempotent = method_idempotent(m->method);
    r->client_10 = m->minor_version == 0;
    r->expect_continue = m->expect_continue;
    r->upgrade = m->upgrade;
    if (!m->keep_alive || wk->draining)
        c->close_after = true;

    struct polis_str path, query;
    split_target(m->target, &path, &query);
    /* Routing, authentication and the upstream all see one spelling of the path. */
    size_t need = 3 * path.len + 1;
    if (need > wk->pathbuf_cap) {
        char *nb = realloc(wk->pathbuf, need);
        if (nb != NULL) {
            wk->pathbuf = nb;
            wk->pathbuf_cap = need;
        }
    }
    size_t nlen = 0;
    enum polis_path_reason why = POLIS_PATH_TOO_LONG;
    bool path_ok = need <= wk->pathbuf_cap &&
                   polis__path_normalize(path, 0, wk->pathbuf, wk->pathbuf_cap, &nlen, &why) == 0;
    struct polis_str host = {NULL, 0};
    int hi = m->hdr_index[POLIS_HDR_HOST];
    if (hi >= 0)
        host = m->headers[hi].value;

    switch (m->body) {
    case POLIS_BODY_LENGTH:
        r->req_mode = BODY_LENGTH;
        r->req_left = m->content_length;
        break;
    case POLIS_BODY_CHUNKED:
        r->req_mode = BODY_CHUNKED;
        break;
    default:
        r->req_mode = BODY_NONE;
        r->req_body_done = true;
        break;
    }
    polis_buf_consume(&c->in, head_len);
    c->scan = 0;

    if (!path_ok) {
        r->req_done = r->req_mode == BODY_NONE;
        error_response(c, 400, "bad_path", polis__path_reason_name(why));
        return DONE;
    }
    path = (struct polis_str){wk->pathbuf, nlen};
    int ri = polis__router_match(s->router, host, path, m->method, m);
    if (ri < 0) {
        r->req_done = r->req_mode == BODY_NONE;
        error_response(c, 404, "no_route", "no route matches this request");
        return DONE;
    }
    r->route = &cfg->routes[ri];
    uint64_t max_body = r->route->max_body ? r->route->max_body : cfg->limits.max_body;
    if (r->req_mode == BODY_LENGTH && m->content_length > max_body) {
        error_response(c, 413, "payload_too_large", "request body too large");
        return DONE;
    }
    if (r->req_mode == BODY_CHUNKED)
        polis_h1_chunked_init(&r->req_chunk, max_body);

    r->route_idx = (size_t)ri;
    r->cluster_idx = r->route->cluster_index;
    r->cluster = &cfg->clusters[r->cluster_idx];
    r->cs = s->clusters[r->cluster_idx].cs;
    if (!edge_check(c, m, query) || !admit(c, m))
        return DONE;
    struct polis_str key = {NULL, 0};
    if (r->cluster->lb == POLIS_LB_HASH)
        key = polis__lb_key(r->cluster, m, (struct polis_str){c->ip, c->ip_len});
    if (!pick_instance(c, key)) {
        reject(c, GW_REJ_NO_INSTANCE, 0);
        return DONE;
    }
    const struct polis_fault_cfg *fault = &r->route->fault;
    if (fault->delay_ms > 0 && roll(wk, fault->delay_percent)) {
        r->waiting = true;
        polis_timer_arm(wk->loop, &c->wait_timer, fault->delay_ms);
    }

    if (wk->gw->tracer != NULL)
        trace_begin(c, m, host, path);
    int rc = build_upstream_head(c, m, path, query);
    if (rc < 0) {
        const char *code, *msg;
        int status = parse_error_status(rc, &code, &msg);
        error_response(c, status, code, msg);
        return DONE;
    }
    const struct polis_mirror_cfg *mc = &r->route->mirror;
    if (mc->enabled && r->req_mode == BODY_NONE && !r->upgrade && roll(wk, mc->percent))
        r->mirror = polis__mirror_start(wk, r->ws, r->route_idx, polis_buf_head(&r->hbuf),
                                        polis_buf_len(&r->hbuf));
    return AGAIN;
}

static uint64_t upstream_timeout(const struct gw_req *r)
{
    uint64_t t = r->route->timeout_ms ? r->route->timeout_ms : r->cluster->timeout_ms;
    if (r->retry != NULL && r->retry->per_try_timeout_ms > 0 && r->retry->per_try_timeout_ms < t)
        t = r->retry->per_try_timeout_ms;
    if (r->deadline_ms > 0) { /* the retry policy's deadline bounds every attempt too */
        uint64_t now = polis__mono_ms();
        uint64_t left = r->deadline_ms > now ? r->deadline_ms - now : 1;
        if (left < t)
            t = left;
    }
    return t;
}

/* Take a pooled connection to the request's instance or open a new one. Returns 0, or DONE when
 * no connection can be made (a 502 answer is then prepared, to be flushed). */
static int req_connect(struct gw_dconn *c, bool fresh)
{
    struct gw_req *r = &c->r;
    struct gw_pool *p = r->ws->pools[r->ws->snap->inst_base[r->cluster_idx] + r->inst];
    struct gw_uconn *u = fresh ? NULL : pool_take(p, polis_loop_now(c->wk->loop));
    r->attempts++;
    r->attempt_ms = polis_loop_now(c->wk->loop);
    if (u == NULL) {
        const struct polis_cluster_cfg *cl = r->cluster;
        if (cl->max_connections > 0 &&
            atomic_load_explicit(&r->cs->conns, memory_order_relaxed) >= cl->max_connections) {
            attempt_end(c, ATT_CANCEL);
            reject(c, GW_REJ_MAX_CONNECTIONS, 0);
            return DONE;
        }
        if (cl->max_pending > 0) {
            if (atomic_fetch_add_explicit(&r->cs->pending, 1, memory_order_relaxed) >=
                cl->max_pending) {
                atomic_fetch_sub_explicit(&r->cs->pending, 1, memory_order_relaxed);
                attempt_end(c, ATT_CANCEL);
                reject(c, GW_REJ_MAX_PENDING, 0);
                return DONE;
            }
            r->counted_pending = true;
        }
        u = u_connect(c->wk, p, atomic_load_explicit(&r->cs->tls, memory_order_acquire),
                      cl->tls.server_name);
        if (u == NULL) {
            upstream_failed(c, 502, "cannot connect to upstream", GW_ERR_CONNECT);
            return DONE;
        }
        u->cs = r->cs;
        atomic_fetch_add_explicit(&r->cs->conns, 1, memory_order_relaxed);
        if (!u->connected)
            polis_timer_arm(c->wk->loop, &u->timer, r->cluster->connect_timeout_ms);
        else if (r->counted_pending) {
            atomic_fetch_sub_explicit(&r->cs->pending, 1, memory_order_relaxed);
            r->counted_pending = false;
        }
    } else {
        u->can_write = true;
    }
    if (u->connected)
        polis_timer_arm(c->wk->loop, &u->timer, upstream_timeout(r));
    u->owner = c;
    r->up = u;
    r->hsent = 0;
    r->upstream_addr = p->addr.text;
    r->connect_us = 0;
    trace_attempt(c);
    const struct gw_cluster_slots *cs = &r->ws->snap->cluster_slots[r->cluster_idx];
    polis_counter_add(c->wk->shard, u->reused ? cs->reused : cs->connections, 1);
    clock_gettime(CLOCK_MONOTONIC, &r->t_up);
    return 0;
}

/* ---- Moving bytes ---------------------------------------------------------------------------- */

/* Classify request body bytes waiting in c->in. Returns 0, or a polis error for bad framing. */
static int classify_request_body(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    size_t avail = polis_buf_len(&c->in) - r->body_ready;
    if (avail == 0 || r->req_body_done)
        return 0;
    if (r->req_mode == BODY_LENGTH) {
        size_t k = avail < r->req_left ? avail : (size_t)r->req_left;
        r->body_ready += k;
        r->req_left -= k;
        if (r->req_left == 0)
            r->req_body_done = true;
        return 0;
    }
    size_t consumed = 0;
    int rc = polis_h1_chunked_feed(&r->req_chunk, polis_buf_head(&c->in) + r->body_ready, avail,
                                   &consumed, NULL, NULL);
    if (rc < 0)
        return rc;
    r->body_ready += consumed;
    if (rc == 1)
        r->req_body_done = true;
    return 0;
}

/* Send the head and body to the upstream. Returns WAIT, AGAIN (progress: call again), DONE when
 * an error answer was prepared, or GONE. */
static int send_request(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    struct gw_uconn *u = r->up;
    const struct polis_config *cfg = r->ws->snap->cfg;
    for (;;) {
        struct iovec iov[2];
        int n = 0;
        size_t hleft = polis_buf_len(&r->hbuf) - r->hsent;
        if (hleft > 0)
            iov[n++] = (struct iovec){polis_buf_head(&r->hbuf) + r->hsent, hleft};
        if (r->body_ready > 0)
            iov[n++] = (struct iovec){polis_buf_head(&c->in), r->body_ready};
        if (n == 0) {
            if (r->req_body_done) {
                r->req_done = true;
                polis_timer_cancel(c->wk->loop, &c->timer);
                return WAIT;
            }
            int rc = classify_request_body(c);
            if (rc < 0) {
                const char *code, *msg;
                int status = parse_error_status(rc, &code, &msg);
                if (r->resp_head_done) {
                    d_free(c);
                    return GONE;
                }
                if (r->up != NULL) {
                    u_free(r->up);
                    r->up = NULL;
                }
                error_response(c, status, code, msg);
                return DONE;
            }
            if (r->body_ready > 0)
                continue;
            if (r->req_body_done)
                continue;
            /* Need more body from the client. */
            if (!c->can_read)
                return WAIT;
            ssize_t got = d_read(c);
            if (got > 0) {
                polis_timer_arm(c->wk->loop, &c->timer, cfg->timeouts.body_read_ms);
                continue;
            }
            if (got == POLIS_EAGAIN) {
                polis_timer_arm(c->wk->loop, &c->timer, cfg->timeouts.body_read_ms);
                return WAIT;
            }
            /* The client went away mid-body: nothing can be answered. */
            d_free(c);
            return GONE;
        }
        if (!u->connected || !u->can_write)
            return WAIT;
        ssize_t w = polis_io_writev(&u->io, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* The upstream does not take the request: its timeout runs, not the
                 * client's (the client is not the one stalling). */
                u->can_write = false;
                r->up_write_blocked = true;
                polis_timer_cancel(c->wk->loop, &c->timer);
                polis_timer_arm(c->wk->loop, &u->timer, upstream_timeout(r));
                return WAIT;
            }
            return upstream_failed(c, 502, "upstream connection failed while sending",
                                   GW_ERR_RESET);
        }
        size_t sent = (size_t)w;
        r->up_write_blocked = false;
        size_t hs = sent < hleft ? sent : hleft;
        r->hsent += hs;
        sent -= hs;
        if (sent > 0) {
            r->body_started = true;
            polis_buf_consume(&c->in, sent);
            r->body_ready -= sent;
        }
    }
}

/* Classify response bytes in the upstream buffer. Returns 0 or a polis error. */
static int classify_response_body_inner(struct gw_dconn *c);

/* Classify response body bytes waiting in the upstream buffer (and show them to the mirror). */
static int classify_response_body(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    size_t before = r->resp_ready;
    int rc = classify_response_body_inner(c);
    if (rc == 0 && r->mirror != NULL && r->resp_ready > before)
        polis__mirror_primary_body(r->mirror, polis_buf_head(&r->up->in) + before,
                                   r->resp_ready - before);
    return rc;
}

static int classify_response_body_inner(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    struct gw_uconn *u = r->up;
    size_t avail = polis_buf_len(&u->in) - r->resp_ready;
    if (avail == 0 || r->resp_done)
        return 0;
    switch (r->resp_mode) {
    case BODY_LENGTH: {
        size_t k = avail < r->resp_left ? avail : (size_t)r->resp_left;
        r->resp_ready += k;
        r->resp_left -= k;
        if (r->resp_left == 0)
            r->resp_done = true;
        if (avail > k) /* bytes after the response: the server is out of step */
            r->upstream_reusable = false;
        return 0;
    }
    case BODY_CLOSE:
        r->resp_ready += avail;
        return 0;
    case BODY_CHUNKED: {
        char *p = polis_buf_head(&u->in) + r->resp_ready;
        size_t consumed = 0, out_len = 0;
        int rc = polis_h1_chunked_feed(&r->resp_chunk, p, avail, &consumed, r->dechunk ? p : NULL,
                                       r->dechunk ? &out_len : NULL);
        if (rc < 0)
            return rc;
        if (r->dechunk) { /* payload now at p[0..out_len); close the gap to the rest */
            memmove(p + out_len, p + consumed, avail - consumed);
            u->in.end -= consumed - out_len;
            r->resp_ready += out_len;
        } else {
            r->resp_ready += consumed;
        }
        if (rc == 1) {
            r->resp_done = true;
            if (avail > consumed)
                r->upstream_reusable = false;
        }
        return 0;
    }
    default:
        r->resp_done = true;
        return 0;
    }
}

/* Write the pending head and response bytes to the client. Returns WAIT, AGAIN or GONE. */
static int flush_client(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    struct gw_uconn *u = r->up;
    for (;;) {
        struct iovec iov[2];
        int n = 0;
        size_t hleft = polis_buf_len(&r->dhead) - r->dsent;
        if (hleft > 0)
            iov[n++] = (struct iovec){polis_buf_head(&r->dhead) + r->dsent, hleft};
        if (u != NULL && r->resp_ready > 0)
            iov[n++] = (struct iovec){polis_buf_head(&u->in), r->resp_ready};
        if (n == 0)
            return AGAIN;
        if (!c->can_write)
            return WAIT;
        ssize_t w = polis_io_writev(&c->io, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->can_write = false;
                polis_timer_arm(c->wk->loop, &c->timer, r->ws->snap->cfg->timeouts.body_read_ms);
                return WAIT;
            }
            d_free(c);
            return GONE;
        }
        size_t sent = (size_t)w;
        r->bytes_out += sent;
        size_t hs = sent < hleft ? sent : hleft;
        r->dsent += hs;
        sent -= hs;
        if (r->req_done)
            polis_timer_cancel(c->wk->loop, &c->timer);
        if (sent > 0) {
            polis_buf_consume(&u->in, sent);
            r->resp_ready -= sent;
        }
    }
}

/* A complete response head is at the front of the upstream buffer. Returns AGAIN, DONE or GONE. */
static int handle_response_head(struct gw_dconn *c, struct polis_h1_msg *m, size_t head_len)
{
    struct gw_req *r = &c->r;
    struct gw_uconn *u = r->up;
    if (m->status >= 100 && m->status < 200 && m->status != 101) {
        /* Interim: pass it on to HTTP/1.1 clients, then wait for the final one. */
        if (!r->client_10) {
            build_client_head(c, m, true);
        }
        polis_buf_consume(&u->in, head_len);
        r->scan = 0;
        return AGAIN;
    }
    if (m->status == 101) {
        if (!r->upgrade)
            return upstream_failed(c, 502, "upstream switched protocols unasked", GW_ERR_INVALID);
        r->tunnel = true;
    }
    int te = m->hdr_index[POLIS_HDR_TRANSFER_ENCODING];
    if (te >= 0 && m->body == POLIS_BODY_CLOSE)
        return upstream_failed(c, 502, "upstream used a transfer coding other than chunked",
                               GW_ERR_INVALID);
    if (r->ist != NULL) {
        int st = m->status;
        enum att a = st >= 502 && st <= 504 ? ATT_GW_STATUS : st >= 500 ? ATT_5XX : ATT_OK;
        attempt_end(c, a);
        const struct polis_retry_cfg *pol = r->retry;
        bool listed = false;
        for (size_t i = 0; pol != NULL && (pol->on & POLIS_RETRY_STATUS) && i < pol->num_statuses;
             i++)
            listed = pol->statuses[i] == st;
        /* A listed status is retried when the whole request is still here to send again. */
        if (listed && r->req_done && r->req_mode == BODY_NONE && !r->tunnel &&
            retry_schedule(c, POLIS_RETRY_STATUS)) {
            trace_attempt_end(c, st, NULL);
            u_free(u);
            r->up = NULL;
            return AGAIN;
        }
    }
    r->status = m->status;
    r->upstream_answered = true;
    r->upstream_reusable = m->keep_alive && !r->tunnel;
    r->resp_te = te >= 0 ? m->headers[te].value : (struct polis_str){NULL, 0};
    switch (m->body) {
    case POLIS_BODY_LENGTH:
        r->resp_mode = BODY_LENGTH;
        r->resp_left = m->content_length;
        break;
    case POLIS_BODY_CHUNKED:
        r->resp_mode = BODY_CHUNKED;
        polis_h1_chunked_init(&r->resp_chunk, 0);
        r->dechunk = r->client_10;
        if (r->dechunk)
            c->close_after = true;
        break;
    case POLIS_BODY_CLOSE:
        r->resp_mode = BODY_CLOSE;
        r->upstream_reusable = false;
        c->close_after = true;
        break;
    default:
        r->resp_mode = BODY_NONE;
        r->resp_done = !r->tunnel;
        break;
    }
    if (!r->req_done && !r->tunnel)
        c->close_after = true; /* the rest of the request body will not be forwarded */
    if (r->mirror != NULL)
        polis__mirror_primary_head(r->mirror, m, r->resp_mode == BODY_CHUNKED && !r->dechunk);
    build_client_head(c, m, false);
    polis_buf_consume(&u->in, head_len);
    r->resp_head_done = true;
    return AGAIN;
}

/* One direction of a tunnel: bytes read from src are written to dst through buf; the end of
 * src's stream is passed on as a shutdown of dst once buf is empty. */
struct tunnel_dir {
    struct polis_io *src, *dst;
    struct polis_buf *buf;
    bool *can_read, *can_write;
    bool *eof, *shut;
    uint64_t *count; /* bytes written to dst, for the access log */
};

/* Move what can move without blocking. Returns 1 on progress, 0 when blocked, -1 on error. */
static int tunnel_pump(const struct tunnel_dir *d)
{
    int progress = 0;
    for (;;) {
        size_t n = polis_buf_len(d->buf);
        if (n > 0 && *d->can_write) {
            ssize_t w = polis_io_writev(d->dst, &(struct iovec){polis_buf_head(d->buf), n}, 1);
            if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
                return -1;
            if (w < 0) {
                *d->can_write = false;
                return progress;
            }
            polis_buf_consume(d->buf, (size_t)w);
            *d->count += (uint64_t)w;
            progress = 1;
            continue;
        }
        if (n > 0)
            return progress;
        if (*d->eof) {
            if (!*d->shut) {
                d->dst->ops->shutdown(d->dst);
                *d->shut = true;
                progress = 1;
            }
            return progress;
        }
        if (!*d->can_read)
            return progress;
        if (polis_buf_reserve(d->buf, 1) < 0)
            return -1;
        ssize_t got = polis_io_read(d->src, d->buf->data + d->buf->end, d->buf->size - d->buf->end);
        if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        if (got < 0) {
            *d->can_read = false;
            return progress;
        }
        if (got == 0)
            *d->eof = true;
        d->buf->end += (size_t)got;
        progress = 1;
    }
}

/* Bytes both ways for an upgraded connection (WebSocket...), each half-close passed on, until
 * both directions ended or the connection sat idle for timeouts.idle. Returns WAIT or GONE. */
static int run_tunnel(struct gw_dconn *c)
{
    struct gw_req *r = &c->r;
    struct gw_uconn *u = r->up;
    polis_timer_cancel(c->wk->loop, &u->timer);
    polis_timer_cancel(c->wk->loop, &c->req_timer); /* a tunnel may live long */
    const struct tunnel_dir up = {
        &c->io,      &u->io, &c->in, &c->can_read, &u->can_write, &r->client_eof, &r->upstream_shut,
        &r->bytes_in};
    const struct tunnel_dir down = {&u->io,          &c->io,        &u->in,
                                    &u->can_read,    &c->can_write, &r->upstream_eof,
                                    &r->client_shut, &r->bytes_out};
    for (;;) {
        int a = tunnel_pump(&up), b = tunnel_pump(&down);
        if (a < 0 || b < 0 || (r->upstream_shut && r->client_shut)) {
            d_free(c);
            return GONE;
        }
        if (a == 0 && b == 0) {
            polis_timer_arm(c->wk->loop, &c->timer, r->ws->snap->cfg->timeouts.idle_ms);
            return WAIT;
        }
    }
}

/* Read, parse and forward the response. Returns WAIT, DONE or GONE. */
static int recv_response(struct gw_dconn *c)
{
    struct gw_worker *wk = c->wk;
    struct gw_req *r = &c->r;
    for (;;) {
        struct gw_uconn *u = r->up;
        int rc;
        /* Classify what arrived before writing, so that a head and the body bytes read with it
         * leave in one writev (one system call and one packet instead of two). */
        if (u != NULL && r->resp_head_done && !r->tunnel && polis_buf_len(&u->in) > r->resp_ready &&
            classify_response_body(c) < 0) {
            if (r->dsent == 0)
                return upstream_failed(c, 502, "upstream sent an invalid body", GW_ERR_INVALID);
            d_free(c); /* the head went out already: all we can do is cut */
            return GONE;
        }
        rc = flush_client(c);
        if (rc != AGAIN) {
            if (rc == WAIT && u != NULL)
                polis_timer_cancel(wk->loop, &u->timer); /* the client is slow, not the server */
            return rc;
        }
        if (r->resp_done)
            return DONE;
        if (r->tunnel)
            return run_tunnel(c);
        if (u == NULL)
            return WAIT;
        if (!r->resp_head_done && polis_buf_len(&u->in) > 0) {
            struct polis_h1_msg m;
            size_t head_len;
            static const struct polis_h1_limits rlim = {65536, 65536, 200};
            m.headers = wk->hdrs;
            rc = polis_h1_parse_response(polis_buf_head(&u->in), polis_buf_len(&u->in), &r->scan,
                                         &m, wk->hdrs_cap, &rlim, r->head_request, &head_len);
            if (rc == 0) {
                rc = handle_response_head(c, &m, head_len);
                if (rc != AGAIN)
                    return rc;
                continue;
            }
            if (rc != POLIS_EAGAIN)
                return upstream_failed(c, 502, "upstream sent an invalid response", GW_ERR_INVALID);
        }
        if (!u->can_read) {
            /* The upstream owes us bytes only once it has the whole request. */
            if (!u->connected)
                return WAIT;
            if (r->req_done || r->up_write_blocked)
                polis_timer_arm(wk->loop, &u->timer, upstream_timeout(r));
            else
                polis_timer_cancel(wk->loop, &u->timer);
            return WAIT;
        }
        if (polis_buf_reserve(&u->in, 1) < 0)
            return upstream_failed(c, 502, "upstream response head too large", GW_ERR_INVALID);
        size_t space = u->in.size - u->in.end;
        ssize_t n = polis_io_read(&u->io, u->in.data + u->in.end, space);
        if (n > 0) {
            u->in.end += (size_t)n;
            if ((size_t)n < space) /* emptied: see d_read() */
                u->can_read = false;
            r->got_response_bytes = true;
            polis_timer_arm(wk->loop, &u->timer, upstream_timeout(r));
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            u->can_read = false;
            return WAIT;
        }
        /* EOF or error from the upstream. */
        if (r->resp_head_done && r->resp_mode == BODY_CLOSE && n == 0) {
            r->resp_done = true;
            r->upstream_reusable = false;
            continue;
        }
        if (r->resp_head_done) { /* truncated: cut the client off too */
            d_free(c);
            return GONE;
        }
        return upstream_failed(
            c, 502, n == 0 ? "upstream closed the connection" : "upstream connection reset",
            GW_ERR_RESET);
    }
}

/* One error-log line per failed upstream attempt, with the request's ids. */
static void log_upstream_failure(struct gw_dconn *c, const char *why)
{
    struct gw_req *r = &c->r;
    char trace[33] = "";
    if (r->traced)
        trace_id_hex(r, trace);
    polis_log_set_context((struct polis_str){r->request_id, r->request_id_len},
                          (struct polis_str){trace, strlen(trace)});
    polis_warn("%s: %s (cluster %s, client %s)",
               r->cluster != NULL ? r->ws->snap->clusters[r->cluster_idx].insts[r->inst].addr.text
                                  : "-",
               why, r->cluster != NULL ? r->cluster->name : "-", c->ip);
    polis_log_set_context((struct polis_str){NULL, 0}, (struct polis_str){NULL, 0});
}

/* The upstream failed before a response could be forwarded (counted by kind). A pooled
 * connection that the server had closed while idle (GW_ERR_RESET: EOF or reset, before any
 * response byte) is retried
 * once on a fresh connection, but only for an idempotent method whose body did not start to
 * flow: a timeout is never retried, and a POST is never sent twice. Otherwise the error answer
 * is prepared. Returns AGAIN (retrying, or the answer waits to be flushed by recv_response())
 * or GONE. */
static int upstream_failed(struct gw_dconn *c, int status, const char *why,
                           enum gw_upstream_error kind)
{
    static const char *const kinds[GW_UPSTREAM_ERRORS] = {"connect", "timeout", "reset",
                                                          "invalid_response"};
    struct gw_req *r = &c->r;
    struct gw_uconn *u = r->up;
    bool stale = kind == GW_ERR_RESET && u != NULL && u->reused && !r->got_response_bytes;
    bool answered = r->got_response_bytes; /* a timeout mid-answer is not retried */
    trace_attempt_end(c, 0, kinds[kind]);
    log_upstream_failure(c, why);
    if (r->cluster != NULL)
        polis_counter_add(c->wk->shard, r->ws->snap->cluster_slots[r->cluster_idx].errors[kind], 1);
    if (u != NULL) {
        u_free(u);
        r->up = NULL;
    }
    /* Part of a head (final, or an interim 1xx) went out: another head cannot follow. */
    if (r->dsent > 0 && (r->resp_head_done || r->dsent < polis_buf_len(&r->dhead))) {
        d_free(c);
        return GONE;
    }
    if (stale && r->idempotent && !r->body_started && r->attempts < 2) {
        /* The server closed a kept-alive connection while idle: nothing to hold against the
         * instance; try once more on a fresh connection to it, at once. */
        polis_counter_add(c->wk->shard, r->ws->snap->cluster_slots[r->cluster_idx].retries, 1);
        r->scan = 0;
        r->req_done = false;
        req_connect(c, true); /* on failure it prepared the answer itself */
        return AGAIN;
    }
    static const enum att atts[GW_UPSTREAM_ERRORS] = {ATT_CONNECT, ATT_TIMEOUT, ATT_RESET,
                                                      ATT_RESET};
    static const unsigned ons[GW_UPSTREAM_ERRORS] = {POLIS_RETRY_CONNECT, POLIS_RETRY_TIMEOUT,
                                                     POLIS_RETRY_RESET, POLIS_RETRY_RESET};
    attempt_end(c, atts[kind]);
    if (!answered && !r->resp_head_done && retry_schedule(c, ons[kind]))
        return AGAIN;
    error_response(c, status, status == 504 ? "gateway_timeout" : "bad_gateway", why);
    return AGAIN;
}

/* ---- The request cycle ----------------------------------------------------------------------- */

/* Finish the request: log it, recycle or close the upstream, and prepare for the next one.
 * Returns AGAIN to go on with the connection, or GONE. */
static int req_finish(struct gw_dconn *c)
{
    struct gw_worker *wk = c->wk;
    struct gw_req *r = &c->r;
    const struct polis_config *cfg = r->ws->snap->cfg;
    if (r->request_id_len > 0)
        req_record(c);
    struct gw_uconn *u = r->up;
    if (u != NULL) {
        r->up = NULL;
        if (r->upstream_reusable && r->resp_done && r->req_done && polis_buf_len(&u->in) == 0) {
            polis_timer_cancel(wk->loop, &u->timer);
            pool_put(u, r->cluster->keepalive, cfg->timeouts.idle_ms);
        } else {
            u_free(u);
        }
    }
    uint64_t idle_ms = cfg->timeouts.idle_ms;
    /* Body bytes not forwarded (the answer came first) may sit in c->in: never parse them as
     * the next request. */
    if (!r->req_done)
        c->close_after = true;
    req_release(c);
    if (c->close_after) {
        d_linger(c);
        return GONE;
    }
    c->state = D_IDLE;
    if (polis_buf_len(&c->in) == 0) {
        polis_buf_free(&c->in); /* idle connections hold no buffer */
        polis_buf_free(&c->r.hbuf);
        polis_buf_free(&c->r.dhead);
        polis_timer_arm(wk->loop, &c->timer, idle_ms);
    } else {
        polis_timer_arm(wk->loop, &c->timer, cfg->timeouts.header_read_ms);
    }
    return AGAIN;
}

/* Read and parse a request head. Returns AGAIN when a request was started, WAIT, or GONE. */
static int read_head(struct gw_dconn *c)
{
    struct gw_worker *wk = c->wk;
    const struct polis_config *cfg = wcfg(wk);
    for (;;) {
        if (polis_buf_len(&c->in) > 0) {
            struct polis_h1_msg m;
            size_t head_len;
            struct polis_h1_limits lim = {cfg->limits.max_request_line,
                                          cfg->limits.max_header_bytes, cfg->limits.max_headers};
            m.headers = wk->hdrs;
            int rc = polis_h1_parse_request(polis_buf_head(&c->in), polis_buf_len(&c->in), &c->scan,
                                            &m, wk->hdrs_cap, &lim, &head_len);
            if (rc == 0) {
                req_begin(c);
                rc = req_start(c, &m, head_len);
                if (rc == DONE)
                    c->r.req_done = c->r.req_mode == BODY_NONE;
                return AGAIN;
            }
            if (rc != POLIS_EAGAIN) {
                const char *code, *msg;
                int status = parse_error_status(rc, &code, &msg);
                req_begin(c);
                new_request_id(c);
                error_response(c, status, code, msg);
                c->close_after = true;
                return AGAIN;
            }
            if (c->state == D_IDLE) {
                c->state = D_HEAD;
                polis_timer_arm(wk->loop, &c->timer, cfg->timeouts.header_read_ms);
            }
        }
        if (!c->can_read)
            return WAIT;
        ssize_t n = d_read(c);
        if (n > 0)
            continue;
        if (n == POLIS_EAGAIN)
            return WAIT;
        if (n == POLIS_ETOOBIG) {
            req_begin(c);
            new_request_id(c);
            error_response(c, 431, "headers_too_large", "request header section too large");
            return AGAIN;
        }
        d_free(c); /* EOF or error while idle or mid-head */
        return GONE;
    }
}

static void d_run(struct gw_dconn *c)
{
    for (;;) {
        if (c->state == D_LINGER) {
            d_linger_read(c);
            return;
        }
        if (c->state != D_REQUEST) {
            if (c->wk->draining && c->state == D_IDLE && polis_buf_len(&c->in) == 0) {
                d_free(c);
                return;
            }
            if (read_head(c) != AGAIN)
                return;
        }
        struct gw_req *r = &c->r;
        int rc = AGAIN;
        if (!r->resp_done && r->up == NULL && r->cluster != NULL && !r->waiting)
            req_connect(c, false); /* on failure an answer is prepared: the loop flushes it */
        /* send_request() only moves bytes; recv_response() flushes whatever answer is ready
         * and says when the exchange is over. */
        while (rc == AGAIN) {
            if (r->up != NULL && !r->req_done && !r->resp_done && send_request(c) == GONE)
                return;
            rc = recv_response(c);
        }
        if (rc != DONE)
            return;
        if (req_finish(c) == GONE)
            return;
    }
}

/* ---- Events and timers ----------------------------------------------------------------------- */

static void d_event(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    struct gw_dconn *c = (struct gw_dconn *)w;
    /* The client closed its side while its answer is awaited: it has gone (nginx's 499). The
     * exchange is dropped, which also frees the upstream from a request nobody will read. */
    if ((events & POLIS_EV_HUP) && c->state == D_REQUEST && !c->r.tunnel && c->r.dsent == 0 &&
        c->r.req_body_done) {
        d_free(c);
        return;
    }
    if (events & POLIS_EV_READ)
        c->can_read = true;
    if (events & POLIS_EV_WRITE)
        c->can_write = true;
    d_run(c);
}

static void u_event(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    struct gw_uconn *u = (struct gw_uconn *)w;
    if (u->owner == NULL) {
        if (events & (POLIS_EV_READ | POLIS_EV_ERROR))
            idle_event(u);
        return;
    }
    if (!u->connected && (events & (POLIS_EV_WRITE | POLIS_EV_ERROR))) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(u->w.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        struct gw_dconn *c = u->owner;
        if (err != 0) {
            if (upstream_failed(c, 502, "cannot connect to upstream", GW_ERR_CONNECT) != GONE)
                d_run(c);
            return;
        }
        u->connected = true;
        if (c->r.counted_pending) {
            atomic_fetch_sub_explicit(&c->r.cs->pending, 1, memory_order_relaxed);
            c->r.counted_pending = false;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        c->r.connect_us = (uint32_t)(ms_between(&c->r.t_up, &now) * 1e3);
        polis_timer_arm(loop, &u->timer, upstream_timeout(&c->r));
    }
    if (events & POLIS_EV_READ)
        u->can_read = true;
    if (events & POLIS_EV_WRITE)
        u->can_write = true;
    d_run(u->owner);
}

static void u_timeout(struct polis_loop *loop, struct polis_timer *t)
{
    struct gw_uconn *u = (struct gw_uconn *)((char *)t - offsetof(struct gw_uconn, timer));
    if (u->owner == NULL) {
        idle_event(u);
        return;
    }
    struct gw_dconn *c = u->owner;
    int rc = upstream_failed(
        c, 504, u->connected ? "upstream timed out" : "upstream connect timed out", GW_ERR_TIMEOUT);
    if (rc != GONE)
        d_run(c);
}

static void d_timeout(struct polis_loop *loop, struct polis_timer *t)
{
    struct gw_dconn *c = (struct gw_dconn *)((char *)t - offsetof(struct gw_dconn, timer));
    switch (c->state) {
    case D_HEAD: {
        req_begin(c);
        new_request_id(c);
        error_response(c, 408, "request_timeout", "request head not received in time");
        c->close_after = true;
        c->can_write = true;
        d_run(c);
        return;
    }
    case D_REQUEST:
        if (!c->r.resp_head_done && !c->r.req_done) {
            if (c->r.up != NULL) {
                u_free(c->r.up);
                c->r.up = NULL;
            }
            error_response(c, 408, "request_timeout", "request body not received in time");
            d_run(c);
            return;
        }
        d_free(c);
        return;
    default:
        d_free(c);
        return;
    }
}

/* A fault delay or a retry's backoff is over: go on, on another instance for a retry. */
static void d_wait_done(struct polis_loop *loop, struct polis_timer *t)
{
    struct gw_dconn *c = (struct gw_dconn *)((char *)t - offsetof(struct gw_dconn, wait_timer));
    struct gw_req *r = &c->r;
    r->waiting = false;
    if (r->repick) {
        r->repick = false;
        if (!pick_instance(c, (struct polis_str){NULL, 0}))
            reject(c, GW_REJ_NO_INSTANCE, 0);
    }
    c->can_write = true;
    d_run(c);
}

/* The whole request took longer than timeouts.request: answer 504 if nothing was sent yet. */
static void d_request_timeout(struct polis_loop *loop, struct polis_timer *t)
{
    struct gw_dconn *c = (struct gw_dconn *)((char *)t - offsetof(struct gw_dconn, req_timer));
    struct gw_req *r = &c->r;
    if (c->state != D_REQUEST || r->resp_head_done) {
        d_free(c);
        return;
    }
    if (r->up != NULL) {
        u_free(r->up);
        r->up = NULL;
    }
    error_response(c, 504, "gateway_timeout", "request took longer than timeouts.request");
    c->can_write = true;
    d_run(c);
}

void polis__proxy_drain(struct gw_worker *wk)
{
    struct gw_dconn *c = wk->conns;
    while (c != NULL) {
        struct gw_dconn *next = c->next;
        if (c->state == D_IDLE && polis_buf_len(&c->in) == 0)
            d_free(c);
        else
            c->close_after = true;
        c = next;
    }
}

bool polis__proxy_poke(struct gw_worker *wk)
{
    /* Every connection may have become readable and writable: what epoll would say for
     * in-memory peers. Collect first: d_run() may free connections of the list. */
    size_t n = 0;
    for (struct gw_dconn *c = wk->conns; c != NULL; c = c->next)
        n++;
    struct gw_dconn **all = calloc(n + 1, sizeof(*all));
    if (all == NULL)
        return false;
    n = 0;
    for (struct gw_dconn *c = wk->conns; c != NULL; c = c->next)
        all[n++] = c;
    for (size_t i = 0; i < n; i++) {
        struct gw_dconn *c = all[i];
        bool alive = false;
        for (struct gw_dconn *k = wk->conns; k != NULL && !alive; k = k->next)
            alive = k == c;
        if (!alive)
            continue;
        c->can_read = c->can_write = true;
        if (c->state == D_REQUEST && c->r.up != NULL)
            c->r.up->can_read = c->r.up->can_write = true;
        d_run(c);
    }
    free(all);
    return wk->conns != NULL;
}

void polis__proxy_close_all(struct gw_worker *wk)
{
    while (wk->conns != NULL)
        d_free(wk->conns);
    polis__mirror_close_all(wk);
}
