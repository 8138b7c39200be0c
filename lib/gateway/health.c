/* health.c: active HTTP health checks. One thread runs its own loop and checks every target with
 * a non-blocking connect, a GET and a parsed response head, many targets at once; other threads
 * hand it new target sets through a locked pending list and an async wake-up. */
#include "gateway/health.h"

#include <polis/http.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define HC_MAX_HEAD 8192     /* a response head larger than this fails the check */
#define HC_MAX_HEADERS 100   /* so does one with more header fields */
#define HC_MAX_MS 2592000000 /* 30 days: longer durations are cut to it (no clock overflow) */
#define HC_NO_SLOT UINT32_MAX

/* A cluster's settings, with its own copies of every string and array. */
struct hc_cfg {
    char *path;
    char *host; /* NULL: each target's address */
    uint64_t interval_ms, timeout_ms, jitter_ms;
    uint32_t healthy_threshold, unhealthy_threshold;
    uint16_t (*statuses)[2];
    size_t num_statuses;
};

struct hc_cluster;

/* One checked address. Between checks only `timer` (the next check) is live; during a check the
 * socket, the buffer and `timer` (the timeout) are. */
struct hc_target {
    struct hc_cluster *cl;
    struct polis_addr addr;
    struct polis_hc_state st; /* written by the checker thread under hc->lock, read by any */
    struct polis_timer timer;
    struct polis_watch w;
    struct polis_io io;
    bool checking, connected;
    bool fresh; /* made by polis__hc_set(), not started yet */
    char *buf;  /* the request (req_len bytes), then room for the response head */
    size_t req_len, sent, head_len, scan;
};

struct hc_cluster {
    struct hc_cluster *next;
    struct polis_hc *hc;
    char *name;
    struct hc_cfg cfg;
    struct hc_target **targets;
    size_t n;
};

/* A target set handed over by polis__hc_set(), with everything the checker thread needs to apply
 * it already allocated: applying never fails. */
struct hc_update {
    struct hc_update *next;
    char *cluster;
    bool remove;
    struct hc_cfg cfg;
    struct hc_target **tg; /* m new targets (unique addresses), in the caller's order */
    size_t m;
    uint32_t *slots; /* open addressing over tg by address: nslots (a power of two) entries */
    size_t nslots;
    struct hc_cluster *spare; /* used when the cluster is new */
};

struct polis_hc {
    polis_hc_change_fn on_change;
    void *ud;
    struct polis_loop *loop;
    struct polis_async wake;
    pthread_t thread;
    uint64_t rng; /* checker thread only */
    /* The lock guards the pending list, `stopping`, the cluster list with each cluster's target
     * array, and every target's st. The checker thread is the only writer of the last three, so
     * it reads them without the lock. */
    pthread_mutex_t lock;
    struct hc_update *pending;
    bool stopping;
    struct hc_cluster *clusters;
};

/* ---- Small helpers --------------------------------------------------------------------------- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* xorshift64*: the jitter needs spread, not secrecy. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* True when a and b are the same socket address (family, port, address; the padding and the
 * text form are ignored). */
static bool addr_eq(const struct polis_addr *a, const struct polis_addr *b)
{
    if (a->ss.ss_family != b->ss.ss_family)
        return false;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return a->len == b->len && a->len <= sizeof(a->ss) && memcmp(&a->ss, &b->ss, a->len) == 0;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 0x100000001b3ull;
    return h;
}

/* A hash of what addr_eq() compares. */
static uint64_t addr_hash(const struct polis_addr *a)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, &a->ss.ss_family, sizeof(a->ss.ss_family));
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss;
        h = fnv(h, &x->sin_port, sizeof(x->sin_port));
        return fnv(h, &x->sin_addr, sizeof(x->sin_addr));
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)&a->ss;
        h = fnv(h, &x->sin6_port, sizeof(x->sin6_port));
        h = fnv(h, &x->sin6_scope_id, sizeof(x->sin6_scope_id));
        return fnv(h, &x->sin6_addr, sizeof(x->sin6_addr));
    }
    return fnv(h, &a->ss, a->len <= sizeof(a->ss) ? a->len : sizeof(a->ss));
}

/* The slot of u->slots that holds addr, or the empty slot where it would go. */
static size_t slot_find(const struct hc_update *u, const struct polis_addr *addr)
{
    size_t mask = u->nslots - 1;
    size_t i = (size_t)addr_hash(addr) & mask;
    while (u->slots[i] != HC_NO_SLOT && !addr_eq(&u->tg[u->slots[i]]->addr, addr))
        i = (i + 1) & mask;
    return i;
}

static void cfg_free(struct hc_cfg *c)
{
    free(c->path);
    free(c->host);
    free(c->statuses);
    memset(c, 0, sizeof(*c));
}

/* True for a string that may go into the request line or a header value as is. */
static bool text_ok(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s <= ' ' || *s == 0x7f)
            return false;
    }
    return true;
}

static uint64_t ms_or(uint64_t v, uint64_t dflt)
{
    if (v == 0)
        return dflt;
    return v > HC_MAX_MS ? HC_MAX_MS : v;
}

/* Copy src into dst with the defaults filled in. Returns 0, POLIS_EINVAL or POLIS_ENOMEM (dst
 * then holds nothing). */
static int cfg_copy(struct hc_cfg *dst, const struct polis_health_check_cfg *src)
{
    memset(dst, 0, sizeof(*dst));
    const char *path = src->path != NULL && src->path[0] != '\0' ? src->path : "/health";
    if (path[0] != '/' || !text_ok(path) || (src->host != NULL && !text_ok(src->host)))
        return POLIS_EINVAL;
    dst->interval_ms = ms_or(src->interval_ms, 5000);
    dst->timeout_ms = ms_or(src->timeout_ms, 1000);
    dst->jitter_ms = src->jitter_ms > HC_MAX_MS ? HC_MAX_MS : src->jitter_ms;
    dst->healthy_threshold = src->healthy_threshold ? src->healthy_threshold : 2;
    dst->unhealthy_threshold = src->unhealthy_threshold ? src->unhealthy_threshold : 3;
    dst->path = strdup(path);
    if (dst->path == NULL)
        goto nomem;
    if (src->host != NULL && src->host[0] != '\0') {
        dst->host = strdup(src->host);
        if (dst->host == NULL)
            goto nomem;
    }
    size_t ns = src->num_statuses > 0 && src->statuses != NULL ? src->num_statuses : 1;
    dst->statuses = calloc(ns, sizeof(*dst->statuses));
    if (dst->statuses == NULL)
        goto nomem;
    dst->num_statuses = ns;
    if (src->num_statuses > 0 && src->statuses != NULL) {
        memcpy(dst->statuses, src->statuses, ns * sizeof(*dst->statuses));
    } else {
        dst->statuses[0][0] = 200;
        dst->statuses[0][1] = 399;
    }
    return 0;

nomem:
    cfg_free(dst);
    return POLIS_ENOMEM;
}

static bool status_expected(const struct hc_cfg *c, int status)
{
    for (size_t i = 0; i < c->num_statuses; i++) {
        if (status >= c->statuses[i][0] && status <= c->statuses[i][1])
            return true;
    }
    return false;
}

/* ---- One check ------------------------------------------------------------------------------- */

static void check_start(struct hc_target *t);

/* Close what a check holds (socket, buffer, timeout); the target is idle afterwards. */
static void check_release(struct hc_target *t)
{
    struct polis_loop *loop = t->cl->hc->loop;
    polis_timer_cancel(loop, &t->timer);
    if (t->io.fd >= 0) {
        polis_loop_del(loop, &t->w);
        close(t->io.fd);
        t->io.fd = -1;
    }
    free(t->buf);
    t->buf = NULL;
    t->checking = t->connected = false;
}

/* End the check of t: status is the answer's (0: none), err says why it failed (NULL: it got an
 * answer, which passes when its status is expected). Counts the outcome, schedules the next
 * check and reports a change of state. */
static void check_end(struct hc_target *t, int status, const char *err)
{
    struct hc_cluster *cl = t->cl;
    struct polis_hc *hc = cl->hc;
    const struct hc_cfg *c = &cl->cfg;
    char why[sizeof(t->st.last_error)];

    check_release(t);
    bool pass = err == NULL && status_expected(c, status);
    if (err == NULL && !pass) {
        snprintf(why, sizeof(why), "unexpected status %d", status);
        err = why;
    }

    bool changed = false;
    pthread_mutex_lock(&hc->lock);
    struct polis_hc_state *st = &t->st;
    st->checks++;
    st->last_status = status;
    snprintf(st->last_error, sizeof(st->last_error), "%s", pass ? "" : err);
    st->last_check_ms = wall_ms();
    if (pass) {
        st->consecutive_failures = 0;
        if (st->consecutive_passes < UINT32_MAX)
            st->consecutive_passes++;
        if (!st->healthy && st->consecutive_passes >= c->healthy_threshold)
            st->healthy = changed = true;
    } else {
        st->consecutive_passes = 0;
        if (st->consecutive_failures < UINT32_MAX)
            st->consecutive_failures++;
        if (st->healthy && st->consecutive_failures >= c->unhealthy_threshold) {
            st->healthy = false;
            changed = true;
        }
    }
    bool healthy = st->healthy;
    pthread_mutex_unlock(&hc->lock);

    uint64_t wait = c->interval_ms;
    if (c->jitter_ms > 0)
        wait += rng_next(&hc->rng) % (c->jitter_ms + 1);
    polis_timer_arm(hc->loop, &t->timer, wait);

    if (changed) {
        if (healthy)
            polis_info("health check: %s %s is healthy again", cl->name, t->addr.text);
        else
            polis_warn("health check: %s %s is unhealthy: %s", cl->name, t->addr.text, err);
        hc->on_change(hc->ud, cl->name, &t->addr, healthy);
    }
}

/* Fail the check with "what: <errno text>". */
static void check_fail_errno(struct hc_target *t, const char *what, int e)
{
    char why[sizeof(t->st.last_error)], ebuf[64];
    snprintf(why, sizeof(why), "%s: %s", what, strerror_r(e, ebuf, sizeof(ebuf)));
    check_end(t, 0, why);
}

/* Parse what was read. Returns 0 and *status for a final answer's head, POLIS_EAGAIN when more
 * is needed, or a parser error. Interim 1xx heads (not 101) are dropped. */
static int head_parse(struct hc_target *t, int *status)
{
    static const struct polis_h1_limits lim = {HC_MAX_HEAD, HC_MAX_HEAD, HC_MAX_HEADERS};
    struct polis_h1_header hdrs[HC_MAX_HEADERS];
    for (;;) {
        struct polis_h1_msg m;
        size_t hl;
        m.headers = hdrs;
        char *head = t->buf + t->req_len;
        int rc = polis_h1_parse_response(head, t->head_len, &t->scan, &m, HC_MAX_HEADERS, &lim,
                                         false, &hl);
        if (rc < 0)
            return rc;
        if (m.status >= 200 || m.status == 101) {
            *status = m.status;
            return 0;
        }
        memmove(head, head + hl, t->head_len - hl);
        t->head_len -= hl;
        t->scan = 0;
    }
}

/* The socket of a check in flight is ready: finish connecting, send what is left of the
 * request, read and parse what came. */
static void on_io(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    struct hc_target *t = container_of(w, struct hc_target, w);
    if (!t->connected) {
        int e = 0;
        socklen_t elen = sizeof(e);
        if (getsockopt(t->io.fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
            e = errno;
        if (e != 0) {
            check_fail_errno(t, "connect", e);
            return;
        }
        if (!(events & POLIS_EV_WRITE))
            return; /* still connecting */
        t->connected = true;
    }

    while (t->sent < t->req_len) {
        struct iovec iov = {t->buf + t->sent, t->req_len - t->sent};
        ssize_t n = polis_io_writev(&t->io, &iov, 1);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            check_fail_errno(t, "send", errno);
            return;
        }
        t->sent += (size_t)n;
    }

    for (;;) {
        char *head = t->buf + t->req_len;
        if (t->head_len == HC_MAX_HEAD) { /* the parser reports this first; never read past */
            check_end(t, 0, "response head too large");
            return;
        }
        ssize_t n = polis_io_read(&t->io, head + t->head_len, HC_MAX_HEAD - t->head_len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            check_fail_errno(t, "recv", errno);
            return;
        }
        if (n == 0) {
            check_end(t, 0,
                      t->head_len == 0 ? "closed without an answer"
                                       : "closed before a complete response head");
            return;
        }
        t->head_len += (size_t)n;
        int status = 0;
        int rc = head_parse(t, &status);
        if (rc == 0) {
            check_end(t, status, NULL);
            return;
        }
        if (rc != POLIS_EAGAIN) {
            check_end(t, 0,
                      rc == POLIS_EHDRTOOBIG ? "response head too large" : "invalid response head");
            return;
        }
    }
}

/* Open a connection to t and send the check's request; the outcome arrives through on_io() or
 * the timeout. */
static void check_start(struct hc_target *t)
{
    struct polis_hc *hc = t->cl->hc;
    const struct hc_cfg *c = &t->cl->cfg;
    const char *host = c->host != NULL ? c->host : t->addr.text;
    static const char fmt[] = "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: polis-health-check\r\n"
                              "Connection: close\r\n\r\n";

    int len = snprintf(NULL, 0, fmt, c->path, host);
    t->buf = len > 0 ? malloc((size_t)len + 1 + HC_MAX_HEAD) : NULL;
    if (t->buf == NULL) {
        check_end(t, 0, "out of memory");
        return;
    }
    snprintf(t->buf, (size_t)len + 1, fmt, c->path, host);
    t->req_len = (size_t)len;
    t->sent = t->head_len = t->scan = 0;
    t->checking = true;
    t->connected = false;

    int fd = socket(t->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        check_fail_errno(t, "socket", errno);
        return;
    }
    int rc;
    do
        rc = connect(fd, (const struct sockaddr *)&t->addr.ss, t->addr.len);
    while (rc < 0 && errno == EINTR);
    if (rc < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        check_fail_errno(t, "connect", e);
        return;
    }
    t->connected = rc == 0;
    polis_io_socket(&t->io, fd);
    /* Edge-triggered, registered with both directions: the first event says the connect ended. */
    if (polis_loop_add(hc->loop, &t->w, fd, POLIS_EV_READ | POLIS_EV_WRITE, on_io) < 0) {
        int e = errno;
        close(fd);
        t->io.fd = -1;
        check_fail_errno(t, "epoll", e);
        return;
    }
    polis_timer_arm(hc->loop, &t->timer, c->timeout_ms);
}

/* The target's one timer: the next check when idle, the timeout during a check. */
static void on_timer(struct polis_loop *loop, struct polis_timer *timer)
{
    struct hc_target *t = container_of(timer, struct hc_target, timer);
    if (t->checking) {
        char why[sizeof(t->st.last_error)];
        snprintf(why, sizeof(why), "timed out after %llu ms",
                 (unsigned long long)t->cl->cfg.timeout_ms);
        check_end(t, 0, why);
    } else {
        check_start(t);
    }
}

/* ---- Target sets ----------------------------------------------------------------------------- */

static struct hc_target *target_new(const struct polis_addr *addr)
{
    struct hc_target *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->addr = *addr;
    t->st.healthy = true;
    t->fresh = true;
    t->io.fd = -1;
    polis_timer_init(&t->timer, on_timer);
    return t;
}

/* Stop checking t (a check in flight is abandoned) and free it. t must be unreachable from the
 * cluster list already. */
static void target_free(struct hc_target *t)
{
    if (t == NULL)
        return;
    if (!t->fresh)
        check_release(t);
    free(t->buf);
    free(t);
}

static void update_free(struct hc_update *u)
{
    if (u == NULL)
        return;
    free(u->cluster);
    cfg_free(&u->cfg);
    for (size_t i = 0; i < u->m; i++)
        target_free(u->tg[i]);
    free(u->tg);
    free(u->slots);
    if (u->spare != NULL) {
        free(u->spare->name);
        free(u->spare);
    }
    free(u);
}

static void cluster_free(struct hc_cluster *cl)
{
    for (size_t i = 0; i < cl->n; i++)
        target_free(cl->targets[i]);
    free(cl->targets);
    cfg_free(&cl->cfg);
    free(cl->name);
    free(cl);
}

static struct hc_cluster *cluster_find(struct polis_hc *hc, const char *name)
{
    for (struct hc_cluster *cl = hc->clusters; cl != NULL; cl = cl->next) {
        if (strcmp(cl->name, name) == 0)
            return cl;
    }
    return NULL;
}

/* Apply one update on the checker thread. Consumes u; allocates nothing. */
static void update_apply(struct polis_hc *hc, struct hc_update *u)
{
    struct hc_cluster *cl = cluster_find(hc, u->cluster);
    if (u->remove) {
        if (cl != NULL) {
            pthread_mutex_lock(&hc->lock);
            struct hc_cluster **pp = &hc->clusters;
            while (*pp != cl)
                pp = &(*pp)->next;
            *pp = cl->next;
            pthread_mutex_unlock(&hc->lock);
            cluster_free(cl);
        }
        update_free(u);
        return;
    }

    if (cl == NULL) {
        cl = u->spare;
        u->spare = NULL;
        cl->hc = hc;
        pthread_mutex_lock(&hc->lock);
        cl->next = hc->clusters;
        hc->clusters = cl;
        pthread_mutex_unlock(&hc->lock);
    }

    /* Kept targets take the place of their fresh twins; the others are dropped below, once they
     * are out of the cluster's array. */
    for (size_t i = 0; i < cl->n; i++) {
        struct hc_target *old = cl->targets[i];
        size_t s = slot_find(u, &old->addr);
        if (u->slots[s] == HC_NO_SLOT)
            continue;
        target_free(u->tg[u->slots[s]]);
        u->tg[u->slots[s]] = old;
        cl->targets[i] = NULL;
    }

    struct hc_target **gone = cl->targets;
    size_t ngone = cl->n;
    struct hc_cfg oldcfg = cl->cfg;
    pthread_mutex_lock(&hc->lock);
    cl->targets = u->tg;
    cl->n = u->m;
    cl->cfg = u->cfg;
    pthread_mutex_unlock(&hc->lock);
    u->tg = NULL;
    u->m = 0;
    memset(&u->cfg, 0, sizeof(u->cfg));

    for (size_t i = 0; i < ngone; i++)
        target_free(gone[i]);
    free(gone);
    cfg_free(&oldcfg);

    for (size_t i = 0; i < cl->n; i++) {
        struct hc_target *t = cl->targets[i];
        t->cl = cl;
        if (t->fresh) {
            t->fresh = false;
            polis_timer_arm(hc->loop, &t->timer, 0); /* checked at once */
        }
    }
    update_free(u);
}

/* Wake-up from another thread: apply the pending updates, or stop. */
static void on_wake(struct polis_async *a)
{
    struct polis_hc *hc = container_of(a, struct polis_hc, wake);
    pthread_mutex_lock(&hc->lock);
    if (hc->stopping) { /* what is pending is freed by polis__hc_stop() */
        pthread_mutex_unlock(&hc->lock);
        polis_loop_stop(hc->loop);
        return;
    }
    struct hc_update *list = hc->pending;
    hc->pending = NULL;
    pthread_mutex_unlock(&hc->lock);
    while (list != NULL) {
        struct hc_update *next = list->next;
        update_apply(hc, list);
        list = next;
    }
}

int polis__hc_set(struct polis_hc *hc, const char *cluster,
                  const struct polis_health_check_cfg *cfg, const struct polis_addr *addrs,
                  size_t n)
{
    if (cluster == NULL || cluster[0] == '\0' || (n > 0 && (cfg == NULL || addrs == NULL)))
        return POLIS_EINVAL;
    if (n >= HC_NO_SLOT / 2)
        return POLIS_ENOMEM;
    struct hc_update *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return POLIS_ENOMEM;
    int rc = POLIS_ENOMEM;
    u->cluster = strdup(cluster);
    if (u->cluster == NULL)
        goto fail;
    u->remove = n == 0 || !cfg->enabled;
    if (!u->remove) {
        rc = cfg_copy(&u->cfg, cfg);
        if (rc < 0)
            goto fail;
        rc = POLIS_ENOMEM;
        u->nslots = 8;
        while (u->nslots < 2 * n)
            u->nslots *= 2;
        u->slots = malloc(u->nslots * sizeof(*u->slots));
        u->tg = calloc(n, sizeof(*u->tg));
        u->spare = calloc(1, sizeof(*u->spare));
        if (u->slots == NULL || u->tg == NULL || u->spare == NULL)
            goto fail;
        u->spare->name = strdup(cluster);
        if (u->spare->name == NULL)
            goto fail;
        memset(u->slots, 0xff, u->nslots * sizeof(*u->slots)); /* all HC_NO_SLOT */
        for (size_t i = 0; i < n; i++) {
            size_t s = slot_find(u, &addrs[i]);
            if (u->slots[s] != HC_NO_SLOT)
                continue; /* a duplicate */
            u->tg[u->m] = target_new(&addrs[i]);
            if (u->tg[u->m] == NULL)
                goto fail;
            u->slots[s] = (uint32_t)u->m++;
        }
    }

    /* Queue it, replacing an update of the same cluster not applied yet. */
    struct hc_update *replaced = NULL;
    pthread_mutex_lock(&hc->lock);
    struct hc_update **pp = &hc->pending;
    while (*pp != NULL) {
        if (strcmp((*pp)->cluster, cluster) == 0) {
            replaced = *pp;
            *pp = replaced->next;
            continue;
        }
        pp = &(*pp)->next;
    }
    *pp = u;
    pthread_mutex_unlock(&hc->lock);
    polis_async_send(&hc->wake);
    update_free(replaced);
    return 0;

fail:
    update_free(u);
    return rc;
}

bool polis__hc_get(struct polis_hc *hc, const char *cluster, const struct polis_addr *addr,
                   struct polis_hc_state *out)
{
    bool found = false;
    if (cluster == NULL || addr == NULL)
        return false;
    pthread_mutex_lock(&hc->lock);
    struct hc_cluster *cl = cluster_find(hc, cluster);
    for (size_t i = 0; cl != NULL && i < cl->n; i++) {
        if (addr_eq(&cl->targets[i]->addr, addr)) {
            *out = cl->targets[i]->st;
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&hc->lock);
    return found;
}

/* ---- The thread ------------------------------------------------------------------------------ */

static void *hc_main(void *arg)
{
    struct polis_hc *hc = arg;
    /* Checks in flight when it returns are abandoned by polis__hc_stop(), once joined. */
    if (polis_loop_run(hc->loop) < 0) {
        char ebuf[64];
        polis_error("health check: the event loop failed: %s",
                    strerror_r(errno, ebuf, sizeof(ebuf)));
    }
    return NULL;
}

int polis__hc_start(polis_hc_change_fn on_change, void *ud, struct polis_hc **out)
{
    if (on_change == NULL)
        return POLIS_EINVAL;
    struct polis_hc *hc = calloc(1, sizeof(*hc));
    if (hc == NULL)
        return POLIS_ENOMEM;
    hc->on_change = on_change;
    hc->ud = ud;
    if (getrandom(&hc->rng, sizeof(hc->rng), GRND_NONBLOCK) != (ssize_t)sizeof(hc->rng))
        hc->rng = wall_ms() ^ ((uint64_t)getpid() << 32);
    hc->rng |= 1; /* xorshift must not start at 0 */

    int rc = POLIS_ESYS;
    hc->loop = polis_loop_new();
    if (hc->loop == NULL)
        goto free_hc;
    if (polis_async_init(hc->loop, &hc->wake, on_wake) < 0)
        goto free_loop;
    int err = pthread_mutex_init(&hc->lock, NULL);
    if (err != 0) {
        errno = err;
        goto close_wake;
    }
    /* The checker takes no signals: the program's threads handle them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&hc->thread, NULL, hc_main, hc);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        errno = err;
        goto destroy_lock;
    }
    pthread_setname_np(hc->thread, "polis-health");
    *out = hc;
    return 0;

destroy_lock:
    pthread_mutex_destroy(&hc->lock);
close_wake:
    polis_async_close(&hc->wake);
free_loop:
    polis_loop_free(hc->loop);
free_hc:
    free(hc);
    return rc;
}

void polis__hc_stop(struct polis_hc *hc)
{
    if (hc == NULL)
        return;
    pthread_mutex_lock(&hc->lock);
    hc->stopping = true;
    pthread_mutex_unlock(&hc->lock);
    polis_async_send(&hc->wake);
    pthread_join(hc->thread, NULL);

    while (hc->clusters != NULL) {
        struct hc_cluster *cl = hc->clusters;
        hc->clusters = cl->next;
        cluster_free(cl);
    }
    while (hc->pending != NULL) {
        struct hc_update *u = hc->pending;
        hc->pending = u->next;
        update_free(u);
    }
    polis_async_close(&hc->wake);
    polis_loop_free(hc->loop);
    pthread_mutex_destroy(&hc->lock);
    free(hc);
}
