/* mirror.c: request mirroring. A copy of a request (one without a body) goes to an instance of
 * the route's mirror subset on a connection of its own; the mirror's answer is read, compared
 * with the primary's (status, chosen headers, the body: as JSON with fields ignored when both
 * parse, else byte for byte) and counted as a match, a mismatch or an error. It is never sent
 * to the client, and nothing the mirror does (failing, hanging, answering late) touches the
 * primary request. Everything runs on the worker's thread. */
#include "gateway/gateway.h"

#include <errno.h>
#include <jansson.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MIRROR_MAX_BODY (1u << 20) /* bodies compared up to this size; beyond, heads only */
#define MIRROR_MAX_HEADERS 16

/* One side's answer. */
struct answer {
    int status;                        /* 0: none (failed or incomplete) */
    char *headers[MIRROR_MAX_HEADERS]; /* values of the route's compare_headers, or NULL */
    struct polis_buf body;             /* as received: chunked framing is decoded at the end */
    bool chunked, truncated, done;
};

struct gw_mirror {
    struct polis_watch w; /* first: the loop hands us this pointer */
    struct polis_timer timer;
    struct polis_io io;
    struct gw_worker *wk;
    struct gw_wsnap *ws; /* pinned: the route's settings live in its snapshot */
    size_t route;
    struct gw_mirror *next, *prev;
    struct polis_buf out; /* the request */
    size_t sent;
    struct polis_buf in; /* the mirror's answer as it arrives */
    size_t head_len, scan;
    uint64_t body_left;
    int mode; /* 0: head pending; 1: length; 2: chunked; 3: until close; 4: none */
    struct polis_h1_chunked chunk;
    bool connected, sock_open;
    struct answer primary, mirror;
    bool primary_ended;
};

static const struct polis_route_cfg *route_of(const struct gw_mirror *m)
{
    return &m->ws->snap->cfg->routes[m->route];
}

static void answer_free(struct answer *a)
{
    for (int i = 0; i < MIRROR_MAX_HEADERS; i++)
        free(a->headers[i]);
    polis_buf_free(&a->body);
}

static void close_socket(struct gw_mirror *m)
{
    if (m->sock_open) {
        polis_loop_del(m->wk->loop, &m->w);
        close(m->w.fd);
        m->sock_open = false;
    }
    polis_timer_cancel(m->wk->loop, &m->timer);
}

static void mirror_free(struct gw_mirror *m)
{
    struct gw_worker *wk = m->wk;
    close_socket(m);
    if (m->prev != NULL)
        m->prev->next = m->next;
    else
        wk->mirrors = m->next;
    if (m->next != NULL)
        m->next->prev = m->prev;
    answer_free(&m->primary);
    answer_free(&m->mirror);
    polis_buf_free(&m->out);
    polis_buf_free(&m->in);
    polis__wsnap_unref(wk, m->ws);
    free(m);
}

/* Keep the values of the route's compare_headers from a parsed head. */
static void keep_headers(const struct polis_route_cfg *rt, const struct polis_h1_msg *msg,
                         struct answer *a)
{
    for (size_t k = 0; k < rt->mirror.num_compare_headers && k < MIRROR_MAX_HEADERS; k++) {
        const char *name = rt->mirror.compare_headers[k];
        for (size_t i = 0; i < msg->num_headers && a->headers[k] == NULL; i++) {
            if (polis_str_caseeq(msg->headers[i].name, (struct polis_str){name, strlen(name)}))
                a->headers[k] = strndup(msg->headers[i].value.p, msg->headers[i].value.len);
        }
    }
}

static void body_add(struct answer *a, const char *p, size_t n)
{
    if (a->truncated || n == 0)
        return;
    if (polis_buf_len(&a->body) + n > MIRROR_MAX_BODY || polis_buf_append(&a->body, p, n) < 0)
        a->truncated = true;
}

/* Decode a chunked body in place. False when it does not decode. */
static bool dechunk(struct answer *a)
{
    if (!a->chunked || a->truncated)
        return true;
    struct polis_h1_chunked ch;
    polis_h1_chunked_init(&ch, 0);
    size_t consumed = 0, out = 0;
    char *p = polis_buf_head(&a->body);
    int rc = polis_h1_chunked_feed(&ch, p, polis_buf_len(&a->body), &consumed, p, &out);
    if (rc != 1)
        return false;
    a->body.end = a->body.start + out;
    a->chunked = false;
    return true;
}

/* Remove a dotted path ("a.b.c") from a JSON value. */
static void json_drop(json_t *j, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    char *dot = strchr(buf, '.');
    while (dot != NULL && json_is_object(j)) {
        *dot = '\0';
        j = json_object_get(j, buf);
        memmove(buf, dot + 1, strlen(dot + 1) + 1);
        dot = strchr(buf, '.');
    }
    if (json_is_object(j))
        json_object_del(j, buf);
}

/* 0: match, 1: mismatch (what is set in *why). */
static int compare(const struct polis_route_cfg *rt, struct answer *p, struct answer *m,
                   const char **why)
{
    if (p->status != m->status) {
        *why = "status";
        return 1;
    }
    for (size_t k = 0; k < rt->mirror.num_compare_headers && k < MIRROR_MAX_HEADERS; k++) {
        const char *a = p->headers[k], *b = m->headers[k];
        if ((a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0)) {
            *why = rt->mirror.compare_headers[k];
            return 1;
        }
    }
    if (p->truncated || m->truncated)
        return 0; /* too large to compare: heads only */
    if (!dechunk(p) || !dechunk(m)) {
        *why = "body framing";
        return 1;
    }
    size_t pl = polis_buf_len(&p->body), ml = polis_buf_len(&m->body);
    json_t *pj = pl > 0 ? json_loadb(polis_buf_head(&p->body), pl, 0, NULL) : NULL;
    json_t *mj = pj != NULL && ml > 0 ? json_loadb(polis_buf_head(&m->body), ml, 0, NULL) : NULL;
    int rc;
    if (pj != NULL && mj != NULL) {
        for (size_t k = 0; k < rt->mirror.num_ignore_fields; k++) {
            json_drop(pj, rt->mirror.ignore_fields[k]);
            json_drop(mj, rt->mirror.ignore_fields[k]);
        }
        rc = json_equal(pj, mj) ? 0 : 1;
    } else {
        rc = pl == ml && (pl == 0 ||
                          memcmp(polis_buf_head(&p->body), polis_buf_head(&m->body), pl) == 0)
                 ? 0
                 : 1;
    }
    json_decref(pj);
    json_decref(mj);
    if (rc != 0)
        *why = "body";
    return rc;
}

/* Both sides are over (or one failed): count the result, then free m. */
static void finish(struct gw_mirror *m)
{
    const struct polis_route_cfg *rt = route_of(m);
    const struct gw_route_slots *rs = &m->ws->snap->route_slots[m->route];
    int result = 2; /* error */
    const char *why = NULL;
    if (m->primary.done && m->mirror.done)
        result = compare(rt, &m->primary, &m->mirror, &why);
    polis_counter_add(m->wk->shard, rs->mirror[result], 1);
    if (result == 1)
        polis_info("mirror of route %s: the answers differ in %s (primary %d, mirror %d)", rt->name,
                   why, m->primary.status, m->mirror.status);
    mirror_free(m);
}

/* The mirror's side ended (done or failed). */
static void mirror_side_over(struct gw_mirror *m)
{
    close_socket(m);
    if (m->primary_ended)
        finish(m);
}

/* Parse what arrived; returns true when the answer is complete. */
static bool parse_answer(struct gw_mirror *m, bool eof)
{
    struct answer *a = &m->mirror;
    if (m->mode == 0) {
        struct polis_h1_msg msg;
        struct polis_h1_header hdrs[100];
        static const struct polis_h1_limits lim = {65536, 65536, 100};
        msg.headers = hdrs;
        size_t hl;
        int rc = polis_h1_parse_response(polis_buf_head(&m->in), polis_buf_len(&m->in), &m->scan,
                                         &msg, 100, &lim, false, &hl);
        if (rc == POLIS_EAGAIN)
            return false;
        if (rc < 0 || (msg.status >= 100 && msg.status < 200)) {
            m->mode = -1; /* invalid, or an interim answer we do not follow: an error */
            return true;
        }
        a->status = msg.status;
        keep_headers(route_of(m), &msg, a);
        polis_buf_consume(&m->in, hl);
        m->scan = 0;
        switch (msg.body) {
        case POLIS_BODY_LENGTH:
            m->mode = 1;
            m->body_left = msg.content_length;
            break;
        case POLIS_BODY_CHUNKED:
            m->mode = 2;
            a->chunked = true;
            polis_h1_chunked_init(&m->chunk, 0);
            break;
        case POLIS_BODY_CLOSE:
            m->mode = 3;
            break;
        default:
            m->mode = 4;
            return true;
        }
    }
    size_t n = polis_buf_len(&m->in);
    const char *p = polis_buf_head(&m->in);
    if (m->mode == 1) {
        size_t k = n < m->body_left ? n : (size_t)m->body_left;
        body_add(a, p, k);
        m->body_left -= k;
        polis_buf_consume(&m->in, n);
        return m->body_left == 0;
    }
    if (m->mode == 2) {
        size_t consumed = 0;
        int rc = polis_h1_chunked_feed(&m->chunk, p, n, &consumed, NULL, NULL);
        if (rc < 0) {
            m->mode = -1;
            return true;
        }
        body_add(a, p, consumed);
        polis_buf_consume(&m->in, n);
        return rc == 1;
    }
    body_add(a, p, n); /* until close */
    polis_buf_consume(&m->in, n);
    return eof;
}

static void m_event(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    struct gw_mirror *m = (struct gw_mirror *)w;
    if (!m->connected) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(m->w.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (events & POLIS_EV_ERROR)) {
            mirror_side_over(m);
            return;
        }
        m->connected = true;
    }
    while (m->sent < polis_buf_len(&m->out)) {
        ssize_t k = send(m->w.fd, polis_buf_head(&m->out) + m->sent,
                         polis_buf_len(&m->out) - m->sent, MSG_NOSIGNAL);
        if (k > 0) {
            m->sent += (size_t)k;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (k < 0 && errno == EINTR)
            continue;
        mirror_side_over(m);
        return;
    }
    for (;;) {
        if (polis_buf_reserve(&m->in, 4096) < 0) {
            mirror_side_over(m);
            return;
        }
        ssize_t k = recv(m->w.fd, m->in.data + m->in.end, m->in.size - m->in.end, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (k > 0)
            m->in.end += (size_t)k;
        if (parse_answer(m, k <= 0)) {
            m->mirror.done = m->mode >= 1 && m->mirror.status > 0;
            mirror_side_over(m);
            return;
        }
        if (k <= 0) { /* closed or reset before a complete answer */
            mirror_side_over(m);
            return;
        }
    }
}

static void m_timeout(struct polis_loop *loop, struct polis_timer *t)
{
    struct gw_mirror *m = (struct gw_mirror *)((char *)t - offsetof(struct gw_mirror, timer));
    mirror_side_over(m);
}

struct gw_mirror *polis__mirror_start(struct gw_worker *wk, struct gw_wsnap *ws, size_t route,
                                      const char *head, size_t len)
{
    const struct gw_snapshot *s = ws->snap;
    const struct gw_rrt *rr = &s->routes[route];
    const struct gw_group *g = &s->groups[rr->mirror_group];
    if (rr->mirror_group == SIZE_MAX || g->n == 0)
        return NULL;
    struct polis_lb_state *st = s->lb_states[(size_t)wk->id * s->ngroups + rr->mirror_group];
    size_t member = polis__lb_pick(g->lb, st, (struct polis_str){NULL, 0});
    polis__lb_done(st, member);
    const struct polis_addr *to = &s->clusters[g->cluster].insts[g->members[member]].addr;
    struct gw_mirror *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    polis_buf_init(&m->out, len + 64);
    polis_buf_init(&m->in, MIRROR_MAX_BODY + 65536);
    polis_buf_init(&m->primary.body, MIRROR_MAX_BODY);
    polis_buf_init(&m->mirror.body, MIRROR_MAX_BODY);
    if (polis_buf_append(&m->out, head, len) < 0) {
        free(m);
        return NULL;
    }
    m->wk = wk;
    m->ws = ws;
    ws->inflight++;
    m->route = route;
    polis_timer_init(&m->timer, m_timeout);
    m->next = wk->mirrors;
    if (wk->mirrors != NULL)
        wk->mirrors->prev = m;
    wk->mirrors = m;
    int fd = socket(to->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int rc = connect(fd, (const struct sockaddr *)&to->ss, to->len);
        if ((rc == 0 || errno == EINPROGRESS) &&
            polis_loop_add(wk->loop, &m->w, fd, POLIS_EV_READ | POLIS_EV_WRITE, m_event) == 0) {
            m->sock_open = true;
            m->connected = rc == 0;
            polis_timer_arm(wk->loop, &m->timer, s->cfg->clusters[g->cluster].timeout_ms);
            return m;
        }
        close(fd);
    }
    return m; /* failed at once: counted as an error when the primary ends */
}

void polis__mirror_primary_head(struct gw_mirror *m, const struct polis_h1_msg *msg,
                                bool chunked_raw)
{
    m->primary.status = msg->status;
    m->primary.chunked = chunked_raw;
    keep_headers(route_of(m), msg, &m->primary);
}

void polis__mirror_primary_body(struct gw_mirror *m, const char *p, size_t n)
{
    body_add(&m->primary, p, n);
}

void polis__mirror_primary_end(struct gw_mirror *m, bool complete)
{
    m->primary.done = complete && m->primary.status > 0;
    m->primary_ended = true;
    if (!m->sock_open)
        finish(m);
}

void polis__mirror_close_all(struct gw_worker *wk)
{
    while (wk->mirrors != NULL)
        mirror_free(wk->mirrors);
}
