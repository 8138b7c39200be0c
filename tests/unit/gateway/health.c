/* Unit tests of the active health checker (lib/gateway/health.c) against a scripted origin in
 * this process: one listening socket per target, each answering as its test says. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gateway/health.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Evaluate cond every 2 ms for up to ms milliseconds; true as soon as it holds. */
#define WAIT_FOR(cond, ms)                                                                         \
    ({                                                                                             \
        double until_ = now_ms() + (ms);                                                           \
        bool ok_ = false;                                                                          \
        while (!(ok_ = (cond)) && now_ms() < until_)                                               \
            sleep_ms(2);                                                                           \
        ok_;                                                                                       \
    })

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

/* ---- The origin ------------------------------------------------------------------------------ */

enum behaviour {
    B_ANSWER,  /* "HTTP/1.1 <status>" with a small body, then close */
    B_HANG,    /* read the request, never answer (close when the peer does) */
    B_SLOW,    /* answer after delay_ms */
    B_GARBAGE, /* not HTTP */
    B_RESET,   /* read the request, then reset the connection */
    B_CLOSE,   /* read the request, then close without a byte */
    B_SPLIT,   /* the answer in two parts 20 ms apart */
    B_INTERIM, /* "100 Continue", then 10 ms later the answer */
    B_BIG,     /* a response head over 8 KiB */
};

#define MAXL 220
#define MAXC 1024
#define MAXT 64
#define MAXS 64

struct listener {
    int fd;
    struct polis_addr addr;
    /* under origin.mu */
    enum behaviour beh;
    int status, delay_ms;
    int script[MAXS]; /* statuses of the first requests, then `status` */
    unsigned script_len;
    unsigned count;      /* request heads received */
    double req_t[MAXT];  /* when the first MAXT arrived */
    double done_t[MAXT]; /* when their answers were sent */
    char last_req[512];
    int open, max_open; /* connections open now, and at most */
};

struct conn {
    int fd, li;
    char buf[1024];
    size_t len;
    bool got;    /* the request head arrived */
    double due;  /* when the (rest of the) answer goes out; 0: nothing scheduled */
    int stage;   /* B_SPLIT and B_INTERIM: parts sent */
    int status;  /* decided when the request arrived */
    unsigned rq; /* its request index */
};

static struct {
    pthread_mutex_t mu;
    pthread_t thread;
    volatile bool stop;
    struct listener l[MAXL];
    int nl;
    struct conn c[MAXC];
    int nc;
} origin = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void conn_close(struct conn *c, bool reset)
{
    if (reset) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(c->fd);
    c->fd = -1;
    origin.l[c->li].open--;
}

static void send_str(struct conn *c, const char *s)
{
    ssize_t r = send(c->fd, s, strlen(s), MSG_NOSIGNAL);
    (void)r; /* the checker may be gone (a timeout): that is fine */
}

static void send_answer(struct conn *c)
{
    char resp[128];
    snprintf(resp, sizeof(resp), "HTTP/1.1 %d Whatever\r\nContent-Length: 2\r\n\r\nok", c->status);
    send_str(c, resp);
    struct listener *l = &origin.l[c->li];
    if (c->rq < MAXT)
        l->done_t[c->rq] = now_ms();
    conn_close(c, false);
}

/* A request head arrived on c: count it and act as its listener says. */
static void on_request(struct conn *c)
{
    struct listener *l = &origin.l[c->li];
    c->got = true;
    c->rq = l->count++;
    if (c->rq < MAXT)
        l->req_t[c->rq] = now_ms();
    snprintf(l->last_req, sizeof(l->last_req), "%.*s", (int)c->len, c->buf);
    c->status = c->rq < l->script_len ? l->script[c->rq] : l->status;
    switch (l->beh) {
    case B_ANSWER:
        send_answer(c);
        break;
    case B_HANG:
        break;
    case B_SLOW:
        c->due = now_ms() + l->delay_ms;
        break;
    case B_GARBAGE:
        send_str(c, "HELLO THERE\r\n\r\n");
        conn_close(c, false);
        break;
    case B_RESET:
        conn_close(c, true);
        break;
    case B_CLOSE:
        conn_close(c, false);
        break;
    case B_SPLIT:
        send_str(c, "HTTP/1.1 200 OK\r\nCont");
        c->due = now_ms() + 20;
        break;
    case B_INTERIM:
        send_str(c, "HTTP/1.1 100 Continue\r\n\r\n");
        c->due = now_ms() + 10;
        break;
    case B_BIG: {
        static char big[9500];
        memcpy(big, "HTTP/1.1 200 OK\r\nX-Big: ", 24);
        memset(big + 24, 'a', sizeof(big) - 24 - 5);
        memcpy(big + sizeof(big) - 5, "\r\n\r\n", 5);
        send_str(c, big);
        conn_close(c, false);
        break;
    }
    }
}

static void on_due(struct conn *c)
{
    struct listener *l = &origin.l[c->li];
    c->due = 0;
    if (l->beh == B_SPLIT && c->stage == 0) {
        send_str(c, "ent-Length: 0\r\n\r\n");
        if (c->rq < MAXT)
            l->done_t[c->rq] = now_ms();
        conn_close(c, false);
        return;
    }
    send_answer(c);
}

static void *origin_main(void *arg)
{
    static struct pollfd pfd[MAXL + MAXC];
    while (!origin.stop) {
        pthread_mutex_lock(&origin.mu);
        int n = 0;
        for (int i = 0; i < origin.nl; i++)
            pfd[n++] = (struct pollfd){origin.l[i].fd, POLLIN, 0};
        for (int i = 0; i < origin.nc; i++)
            pfd[n++] = (struct pollfd){origin.c[i].fd, POLLIN, 0};
        pthread_mutex_unlock(&origin.mu);
        poll(pfd, (nfds_t)n, 2);
        pthread_mutex_lock(&origin.mu);
        for (int i = 0; i < origin.nl; i++) {
            if (!(pfd[i].revents & POLLIN))
                continue;
            int fd;
            while ((fd = accept4(origin.l[i].fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                if (origin.nc == MAXC) {
                    close(fd);
                    continue;
                }
                origin.c[origin.nc++] = (struct conn){.fd = fd, .li = i};
                struct listener *l = &origin.l[i];
                if (++l->open > l->max_open)
                    l->max_open = l->open;
            }
        }
        double now = now_ms();
        for (int i = 0; i < origin.nc; i++) {
            struct conn *c = &origin.c[i];
            if (c->fd < 0)
                continue;
            char tmp[1024];
            ssize_t r = recv(c->fd, tmp, sizeof(tmp), 0);
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                conn_close(c, false);
                continue;
            }
            if (r > 0 && !c->got) {
                size_t k = (size_t)r < sizeof(c->buf) - 1 - c->len ? (size_t)r
                                                                   : sizeof(c->buf) - 1 - c->len;
                memcpy(c->buf + c->len, tmp, k);
                c->len += k;
                c->buf[c->len] = '\0';
                if (strstr(c->buf, "\r\n\r\n") != NULL)
                    on_request(c);
            }
            if (c->fd >= 0 && c->due != 0 && now >= c->due) {
                if (origin.l[c->li].beh == B_INTERIM && c->stage == 0) {
                    c->stage = 1;
                    send_answer(c);
                } else {
                    on_due(c);
                }
            }
        }
        int k = 0;
        for (int i = 0; i < origin.nc; i++) {
            if (origin.c[i].fd >= 0)
                origin.c[k++] = origin.c[i];
        }
        origin.nc = k;
        pthread_mutex_unlock(&origin.mu);
    }
    return NULL;
}

/* Listener i answers beh/status. */
static void origin_set(int i, enum behaviour beh, int status, int delay_ms)
{
    pthread_mutex_lock(&origin.mu);
    origin.l[i].beh = beh;
    origin.l[i].status = status;
    origin.l[i].delay_ms = delay_ms;
    pthread_mutex_unlock(&origin.mu);
}

static unsigned origin_count(int i)
{
    pthread_mutex_lock(&origin.mu);
    unsigned n = origin.l[i].count;
    pthread_mutex_unlock(&origin.mu);
    return n;
}

static int origin_open(int i)
{
    pthread_mutex_lock(&origin.mu);
    int n = origin.l[i].open;
    pthread_mutex_unlock(&origin.mu);
    return n;
}

static int origin_open_total(void)
{
    pthread_mutex_lock(&origin.mu);
    int n = origin.nc;
    pthread_mutex_unlock(&origin.mu);
    return n;
}

/* The listener whose address is addr, or -1. */
static int origin_find(const struct polis_addr *addr)
{
    for (int i = 0; i < origin.nl; i++) {
        if (strcmp(origin.l[i].addr.text, addr->text) == 0)
            return i;
    }
    return -1;
}

/* Start n listeners on loopback, all answering 200. */
static void origin_start(int n)
{
    assert_true(n <= MAXL);
    memset(origin.l, 0, sizeof(origin.l));
    origin.nc = 0;
    origin.stop = false;
    for (int i = 0; i < n; i++) {
        struct listener *l = &origin.l[i];
        l->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(l->fd >= 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        assert_int_equal(bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(l->fd, 512), 0);
        socklen_t sl = sizeof(sa);
        getsockname(l->fd, (struct sockaddr *)&sa, &sl);
        char text[64];
        snprintf(text, sizeof(text), "127.0.0.1:%d", ntohs(sa.sin_port));
        assert_int_equal(polis__addr_parse(text, &l->addr), 0);
        l->beh = B_ANSWER;
        l->status = 200;
    }
    origin.nl = n;
    assert_int_equal(pthread_create(&origin.thread, NULL, origin_main, NULL), 0);
}

static void origin_stop(void)
{
    origin.stop = true;
    pthread_join(origin.thread, NULL);
    for (int i = 0; i < origin.nc; i++)
        close(origin.c[i].fd);
    for (int i = 0; i < origin.nl; i++)
        close(origin.l[i].fd);
    origin.nc = origin.nl = 0;
}

/* A port that refuses connections: bound, never listening (keep the socket until the end). */
static int refused_port(struct polis_addr *out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t sl = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    char text[64];
    snprintf(text, sizeof(text), "127.0.0.1:%d", ntohs(sa.sin_port));
    assert_int_equal(polis__addr_parse(text, out), 0);
    return fd;
}

/* ---- What the checker reports ------------------------------------------------------------------
 */

struct event {
    char cluster[32];
    struct polis_addr addr;
    bool healthy;
    int li;         /* the origin listener, or -1 */
    unsigned count; /* requests that listener had seen when the call came */
    double t;
    bool get_ok, get_healthy; /* polis__hc_get() from inside the callback */
};

static struct {
    pthread_mutex_t mu;
    struct polis_hc *hc;
    struct event ev[1024];
    size_t n;
    /* test_failures: add this cluster from inside the callback, once */
    const struct polis_health_check_cfg *add_cfg;
    const struct polis_addr *add_addr;
    int add_rc;
} rec = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_change(void *ud, const char *cluster, const struct polis_addr *addr, bool healthy)
{
    if (ud != &rec)
        abort(); /* cmocka's asserts belong to the test's thread */
    struct polis_hc_state st;
    bool ok = polis__hc_get(rec.hc, cluster, addr, &st);
    int li = origin_find(addr);
    unsigned count = li >= 0 ? origin_count(li) : 0;
    pthread_mutex_lock(&rec.mu);
    if (rec.n < 1024) {
        struct event *e = &rec.ev[rec.n++];
        snprintf(e->cluster, sizeof(e->cluster), "%s", cluster);
        e->addr = *addr;
        e->healthy = healthy;
        e->li = li;
        e->count = count;
        e->t = now_ms();
        e->get_ok = ok;
        e->get_healthy = ok && st.healthy;
    }
    const struct polis_health_check_cfg *add = rec.add_cfg;
    rec.add_cfg = NULL;
    pthread_mutex_unlock(&rec.mu);
    if (add != NULL)
        rec.add_rc = polis__hc_set(rec.hc, "added-from-callback", add, rec.add_addr, 1);
}

static size_t events(void)
{
    pthread_mutex_lock(&rec.mu);
    size_t n = rec.n;
    pthread_mutex_unlock(&rec.mu);
    return n;
}

/* Events about listener li, copied into out (at most max). */
static size_t events_of(int li, const char *cluster, struct event *out, size_t max)
{
    size_t k = 0;
    pthread_mutex_lock(&rec.mu);
    for (size_t i = 0; i < rec.n; i++) {
        if (rec.ev[i].li == li && strcmp(rec.ev[i].cluster, cluster) == 0 && k < max)
            out[k++] = rec.ev[i];
    }
    pthread_mutex_unlock(&rec.mu);
    return k;
}

static struct polis_hc *hc_start(void)
{
    pthread_mutex_lock(&rec.mu);
    rec.n = 0;
    rec.add_cfg = NULL;
    pthread_mutex_unlock(&rec.mu);
    struct polis_hc *hc = NULL;
    assert_int_equal(polis__hc_start(on_change, &rec, &hc), 0);
    assert_non_null(hc);
    rec.hc = hc;
    return hc;
}

static struct polis_health_check_cfg base_cfg(uint64_t interval, uint64_t timeout, uint32_t healthy,
                                              uint32_t unhealthy)
{
    return (struct polis_health_check_cfg){.enabled = true,
                                           .path = "/health",
                                           .interval_ms = interval,
                                           .timeout_ms = timeout,
                                           .healthy_threshold = healthy,
                                           .unhealthy_threshold = unhealthy};
}

static bool get_state(struct polis_hc *hc, const char *cl, int li, struct polis_hc_state *st)
{
    return polis__hc_get(hc, cl, &origin.l[li].addr, st);
}

/* ---- Tests ------------------------------------------------------------------------------------
 */

/* The request's bytes; transitions after exactly the thresholds and only then. */
static void test_request_and_thresholds(void **state)
{
    (void)state;
    origin_start(1);
    /* 1-based request numbers: fails at 3-4 and 6-7 are cut by a pass; 9-11 make it
     * unhealthy at 11; a pass at 12 then a failure at 13 reset the count; 14-15 heal it. */
    static const int script[] = {200, 200, 503, 503, 200, 503, 503, 200,
                                 503, 503, 503, 200, 503, 200, 200};
    memcpy(origin.l[0].script, script, sizeof(script));
    origin.l[0].script_len = sizeof(script) / sizeof(script[0]);

    struct polis_hc *hc = hc_start();
    struct polis_health_check_cfg cfg = base_cfg(40, 500, 2, 3);
    cfg.path = "/healthz";
    assert_int_equal(polis__hc_set(hc, "c", &cfg, &origin.l[0].addr, 1), 0);

    assert_true(WAIT_FOR(origin_count(0) >= 1, 1000));
    char want[256];
    snprintf(want, sizeof(want),
             "GET /healthz HTTP/1.1\r\nHost: %s\r\nUser-Agent: polis-health-check\r\n"
             "Connection: close\r\n\r\n",
             origin.l[0].addr.text);
    pthread_mutex_lock(&origin.mu);
    assert_string_equal(origin.l[0].last_req, want);
    pthread_mutex_unlock(&origin.mu);

    assert_true(WAIT_FOR(events() >= 2, 3000));
    assert_true(WAIT_FOR(origin_count(0) >= 18, 2000));
    struct polis_hc_state st;
    assert_true(WAIT_FOR(get_state(hc, "c", 0, &st) && st.checks >= 18, 1000));
    assert_int_equal(events(), 2); /* and no more afterwards */
    struct event ev[4];
    assert_int_equal(events_of(0, "c", ev, 4), 2);
    assert_false(ev[0].healthy);
    assert_int_equal(ev[0].count, 11);
    assert_true(ev[0].get_ok);
    assert_false(ev[0].get_healthy); /* the state is already updated when the callback runs */
    assert_true(ev[1].healthy);
    assert_int_equal(ev[1].count, 15);
    assert_true(ev[1].get_healthy);
    assert_string_equal(ev[0].addr.text, origin.l[0].addr.text);

    assert_true(get_state(hc, "c", 0, &st));
    assert_true(st.healthy);
    assert_true(st.consecutive_passes >= 3);
    assert_int_equal(st.consecutive_failures, 0);
    assert_int_equal(st.last_status, 200);
    assert_string_equal(st.last_error, "");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t wall = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    assert_true(st.last_check_ms <= wall && st.last_check_ms + 1000 > wall);

    /* A failing stretch shows in the counters. */
    origin_set(0, B_ANSWER, 500, 0);
    unsigned c0 = origin_count(0);
    assert_true(WAIT_FOR(origin_count(0) >= c0 + 2, 1000));
    assert_true(WAIT_FOR(get_state(hc, "c", 0, &st) && st.consecutive_failures == 2, 1000));
    assert_int_equal(st.last_status, 500);
    assert_string_equal(st.last_error, "unexpected status 500");
    assert_int_equal(st.consecutive_passes, 0);
    assert_true(st.healthy);

    /* A new cfg for the kept target: Host and path change from its next check, state stays. */
    origin_set(0, B_ANSWER, 200, 0);
    cfg.path = "/ready";
    cfg.host = "svc.internal";
    uint64_t checks = st.checks;
    assert_int_equal(polis__hc_set(hc, "c", &cfg, &origin.l[0].addr, 1), 0);
    c0 = origin_count(0);
    assert_true(WAIT_FOR(origin_count(0) >= c0 + 2, 1000));
    pthread_mutex_lock(&origin.mu);
    assert_string_equal(origin.l[0].last_req,
                        "GET /ready HTTP/1.1\r\nHost: svc.internal\r\nUser-Agent: "
                        "polis-health-check\r\nConnection: close\r\n\r\n");
    pthread_mutex_unlock(&origin.mu);
    assert_true(get_state(hc, "c", 0, &st));
    assert_true(st.checks > checks);
    assert_int_equal(events(), 2);

    polis__hc_stop(hc);
    origin_stop();
}

/* Every kind of failure, its text, and the timeout's timing. */
static void test_failures(void **state)
{
    (void)state;
    enum { GOOD, HANG, SLOW, GARBAGE, RESET, CLOSE, BIG, NL };
    origin_start(NL);
    origin_set(HANG, B_HANG, 200, 0);
    origin_set(SLOW, B_SLOW, 200, 250);
    origin_set(GARBAGE, B_GARBAGE, 200, 0);
    origin_set(RESET, B_RESET, 200, 0);
    origin_set(CLOSE, B_CLOSE, 200, 0);
    origin_set(BIG, B_BIG, 200, 0);
    struct polis_addr refused;
    int rfd = refused_port(&refused);

    struct polis_hc *hc = hc_start();
    struct polis_health_check_cfg cfg = base_cfg(50, 100, 1, 1);
    struct polis_addr addrs[NL + 1];
    for (int i = 0; i < NL; i++)
        addrs[i] = origin.l[i].addr;
    addrs[NL] = refused;
    struct polis_health_check_cfg other = base_cfg(50, 100, 1, 1);
    pthread_mutex_lock(&rec.mu);
    rec.add_cfg = &other;
    rec.add_addr = &origin.l[GOOD].addr;
    pthread_mutex_unlock(&rec.mu);
    assert_int_equal(polis__hc_set(hc, "f", &cfg, addrs, NL + 1), 0);

    /* Every target but GOOD turns unhealthy after its first failure. */
    assert_true(WAIT_FOR(events() >= NL, 2000));
    sleep_ms(300);
    struct event ev[8];
    assert_int_equal(events_of(GOOD, "f", ev, 8), 0);
    for (int i = 1; i < NL; i++) {
        assert_int_equal(events_of(i, "f", ev, 8), 1);
        assert_false(ev[0].healthy);
    }
    struct polis_hc_state st;
    assert_true(polis__hc_get(hc, "f", &refused, &st));
    assert_false(st.healthy);
    assert_string_equal(st.last_error, "connect: Connection refused");
    assert_int_equal(st.last_status, 0);
    assert_true(st.consecutive_failures >= 2);

    assert_true(get_state(hc, "f", HANG, &st));
    assert_string_equal(st.last_error, "timed out after 100 ms");
    assert_true(get_state(hc, "f", SLOW, &st));
    assert_string_equal(st.last_error, "timed out after 100 ms");
    assert_true(get_state(hc, "f", GARBAGE, &st));
    assert_string_equal(st.last_error, "invalid response head");
    assert_true(get_state(hc, "f", RESET, &st));
    assert_string_equal(st.last_error, "recv: Connection reset by peer");
    assert_true(get_state(hc, "f", CLOSE, &st));
    assert_string_equal(st.last_error, "closed without an answer");
    assert_true(get_state(hc, "f", BIG, &st));
    assert_string_equal(st.last_error, "response head too large");
    assert_true(get_state(hc, "f", GOOD, &st));
    assert_true(st.healthy);
    assert_string_equal(st.last_error, "");

    /* The timeout fires on time: from the request's arrival to the verdict. */
    assert_int_equal(events_of(HANG, "f", ev, 8), 1);
    pthread_mutex_lock(&origin.mu);
    double arrived = origin.l[HANG].req_t[0];
    int max_open = origin.l[HANG].max_open;
    pthread_mutex_unlock(&origin.mu);
    double took = ev[0].t - arrived;
    assert_true(took >= 95);
    assert_true(took < 100 + 150);
    /* A timed out check closes its socket: connections never pile up. */
    assert_int_equal(max_open, 1);

    /* polis__hc_set() from inside the callback was applied. */
    assert_int_equal(rec.add_rc, 0);
    assert_true(WAIT_FOR(polis__hc_get(hc, "added-from-callback", &origin.l[GOOD].addr, &st), 500));

    polis__hc_stop(hc);
    close(rfd);
    origin_stop();
}

/* Expected status ranges, interim answers, heads in pieces, clusters independent. */
static void test_statuses(void **state)
{
    (void)state;
    enum { S204, S418, S205, S302, S500, S404, INTERIM, SPLIT, NL };
    static const int status[NL] = {204, 418, 205, 302, 500, 404, 204, 200};
    origin_start(NL);
    for (int i = 0; i < NL; i++)
        origin_set(i, i == INTERIM ? B_INTERIM : i == SPLIT ? B_SPLIT : B_ANSWER, status[i], 0);

    struct polis_hc *hc = hc_start();
    uint16_t ranges[2][2] = {{200, 204}, {418, 418}};
    struct polis_health_check_cfg cfg = base_cfg(40, 500, 1, 1);
    cfg.statuses = ranges;
    cfg.num_statuses = 2;
    struct polis_addr addrs[NL];
    for (int i = 0; i < NL; i++)
        addrs[i] = origin.l[i].addr;
    assert_int_equal(polis__hc_set(hc, "s", &cfg, addrs, NL), 0);
    /* The default range (200-399) in another cluster over some of the same instances. */
    struct polis_health_check_cfg dflt = base_cfg(40, 500, 1, 1);
    struct polis_addr daddrs[] = {origin.l[S302].addr, origin.l[S404].addr, origin.l[S205].addr};
    assert_int_equal(polis__hc_set(hc, "d", &dflt, daddrs, 3), 0);

    for (int i = 0; i < NL; i++)
        assert_true(WAIT_FOR(origin_count(i) >= 5, 2000));
    struct event ev[8];
    bool fails[NL] = {[S205] = true, [S302] = true, [S500] = true, [S404] = true};
    for (int i = 0; i < NL; i++) {
        size_t n = events_of(i, "s", ev, 8);
        assert_int_equal(n, fails[i] ? 1 : 0);
        struct polis_hc_state st;
        assert_true(get_state(hc, "s", i, &st));
        assert_int_equal(st.healthy, !fails[i]);
        assert_int_equal(st.last_status, status[i]);
        if (fails[i]) {
            char want[64];
            snprintf(want, sizeof(want), "unexpected status %d", status[i]);
            assert_string_equal(st.last_error, want);
        } else {
            assert_string_equal(st.last_error, "");
        }
    }
    assert_int_equal(events_of(S302, "d", ev, 8), 0);
    assert_int_equal(events_of(S205, "d", ev, 8), 0);
    assert_int_equal(events_of(S404, "d", ev, 8), 1);
    struct polis_hc_state st;
    assert_true(get_state(hc, "d", S302, &st));
    assert_true(st.healthy);
    assert_false(get_state(hc, "d", S500, &st)); /* not a target of d */

    polis__hc_stop(hc);
    origin_stop();
}

/* The wait between checks: interval, plus a jitter in [0, jitter_ms]. */
static void test_jitter(void **state)
{
    (void)state;
    origin_start(2);
    struct polis_hc *hc = hc_start();
    struct polis_health_check_cfg fixed = base_cfg(50, 500, 2, 3);
    struct polis_health_check_cfg jit = base_cfg(50, 500, 2, 3);
    jit.jitter_ms = 60;
    assert_int_equal(polis__hc_set(hc, "fixed", &fixed, &origin.l[0].addr, 1), 0);
    assert_int_equal(polis__hc_set(hc, "jitter", &jit, &origin.l[1].addr, 1), 0);
    enum { N = 16 };
    assert_true(WAIT_FOR(origin_count(0) > N && origin_count(1) > N, 5000));
    polis__hc_stop(hc);

    for (int li = 0; li < 2; li++) {
        double lo = 1e9, hi = 0, sum = 0;
        pthread_mutex_lock(&origin.mu);
        for (int i = 0; i < N; i++) {
            double gap = origin.l[li].req_t[i + 1] - origin.l[li].done_t[i];
            lo = gap < lo ? gap : lo;
            hi = gap > hi ? gap : hi;
            sum += gap;
        }
        pthread_mutex_unlock(&origin.mu);
        print_message("gaps of %s: %.1f..%.1f ms, mean %.1f\n", li ? "jitter" : "fixed", lo, hi,
                      sum / N);
        /* The loop's clock is coarse (a few ms) and its timers fire up to a 4 ms tick late. */
        assert_true(lo >= 45);
        if (li == 0) {
            assert_true(hi <= 50 + 40);
        } else {
            assert_true(hi <= 50 + 60 + 40);
            assert_true(hi - lo >= 25); /* spread: 16 uniform draws in [0, 60] */
            assert_true(sum / N >= 60 && sum / N <= 105);
        }
    }
    origin_stop();
}

/* Replacing a cluster's targets keeps the kept ones' state and schedule, checks new ones at
 * once, stops checking removed ones; removing the cluster stops everything. */
static void test_set_replace(void **state)
{
    (void)state;
    enum { A, B, C, D, NL };
    origin_start(NL);
    origin_set(B, B_ANSWER, 503, 0);
    struct polis_hc *hc = hc_start();
    struct polis_health_check_cfg cfg = base_cfg(300, 500, 2, 1);
    struct polis_addr first[] = {origin.l[A].addr, origin.l[B].addr, origin.l[C].addr};
    assert_int_equal(polis__hc_set(hc, "r", &cfg, first, 3), 0);
    assert_true(WAIT_FOR(events() == 1 && origin_count(A) == 1 && origin_count(C) == 1, 1000));
    struct event ev[4];
    assert_int_equal(events_of(B, "r", ev, 4), 1);
    assert_false(ev[0].healthy);
    struct polis_hc_state st;
    assert_true(get_state(hc, "r", A, &st));
    assert_true(st.healthy);

    double t_set = now_ms();
    struct polis_addr second[] = {origin.l[A].addr, origin.l[B].addr, origin.l[D].addr,
                                  origin.l[A].addr};
    assert_int_equal(polis__hc_set(hc, "r", &cfg, second, 4), 0);
    assert_true(WAIT_FOR(origin_count(D) == 1, 100)); /* new: at once */
    assert_true(WAIT_FOR(!get_state(hc, "r", C, &st), 100));
    assert_true(now_ms() - t_set < 150);
    assert_int_equal(origin_count(A), 1); /* kept: on its old schedule, not re-checked now */
    assert_true(get_state(hc, "r", B, &st));
    assert_false(st.healthy); /* kept: still unhealthy, where a new target starts healthy */
    assert_true(get_state(hc, "r", D, &st));
    assert_true(st.healthy);

    /* One interval later the kept ones were checked again (A once: the duplicate counts
     * once), C never. */
    assert_true(WAIT_FOR(origin_count(A) == 2 && origin_count(B) == 2, 1000));
    sleep_ms(100);
    assert_int_equal(origin_count(A), 2);
    assert_int_equal(origin_count(C), 1);
    assert_true(get_state(hc, "r", B, &st));
    assert_int_equal(st.consecutive_failures, 2);
    assert_int_equal(events(), 1); /* no new transition */

    /* n == 0 removes the cluster: nothing is checked any more. */
    assert_int_equal(polis__hc_set(hc, "r", &cfg, NULL, 0), 0);
    assert_true(WAIT_FOR(!get_state(hc, "r", A, &st), 100));
    unsigned counts[NL];
    for (int i = 0; i < NL; i++)
        counts[i] = origin_count(i);
    sleep_ms(400);
    for (int i = 0; i < NL; i++)
        assert_int_equal(origin_count(i), counts[i]);

    /* So does enabled = false; and bad arguments change nothing. */
    assert_int_equal(polis__hc_set(hc, "r", &cfg, &origin.l[A].addr, 1), 0);
    assert_true(WAIT_FOR(get_state(hc, "r", A, &st), 100));
    struct polis_health_check_cfg bad = cfg;
    bad.path = "health";
    assert_int_equal(polis__hc_set(hc, "r", &bad, &origin.l[A].addr, 1), POLIS_EINVAL);
    bad.path = "/a b";
    assert_int_equal(polis__hc_set(hc, "r", &bad, &origin.l[A].addr, 1), POLIS_EINVAL);
    bad.path = "/ok";
    bad.host = "evil\r\nX: 1";
    assert_int_equal(polis__hc_set(hc, "r", &bad, &origin.l[A].addr, 1), POLIS_EINVAL);
    assert_int_equal(polis__hc_set(hc, NULL, &cfg, &origin.l[A].addr, 1), POLIS_EINVAL);
    assert_int_equal(polis__hc_set(hc, "", &cfg, &origin.l[A].addr, 1), POLIS_EINVAL);
    sleep_ms(20);
    assert_true(get_state(hc, "r", A, &st));
    struct polis_health_check_cfg off = cfg;
    off.enabled = false;
    assert_int_equal(polis__hc_set(hc, "r", &off, &origin.l[A].addr, 1), 0);
    assert_true(WAIT_FOR(!get_state(hc, "r", A, &st), 100));

    polis__hc_stop(hc);
    origin_stop();
}

/* 200 targets at once: half fail, and exactly those turn unhealthy. */
static void test_many(void **state)
{
    (void)state;
    enum { N = 200 };
    origin_start(N);
    for (int i = 1; i < N; i += 2)
        origin_set(i, B_ANSWER, 503, 0);
    struct polis_hc *hc = hc_start();
    struct polis_health_check_cfg cfg = base_cfg(50, 1000, 2, 2);
    static struct polis_addr addrs[N];
    for (int i = 0; i < N; i++)
        addrs[i] = origin.l[i].addr;
    assert_int_equal(polis__hc_set(hc, "many", &cfg, addrs, N), 0);
    assert_true(WAIT_FOR(events() >= N / 2, 4000));
    bool all = WAIT_FOR(({
                            bool ok = true;
                            for (int i = 0; i < N && ok; i++)
                                ok = origin_count(i) >= 3;
                            ok;
                        }),
                        3000);
    assert_true(all);
    assert_int_equal(events(), N / 2);
    struct event ev[4];
    for (int i = 0; i < N; i++) {
        size_t n = events_of(i, "many", ev, 4);
        assert_int_equal(n, (size_t)(i % 2));
        struct polis_hc_state st;
        assert_true(get_state(hc, "many", i, &st));
        assert_int_equal(st.healthy, i % 2 == 0);
    }
    polis__hc_stop(hc);
    origin_stop();
}

/* Stop with checks in flight, after churning target sets: every socket is closed, nothing
 * leaks (ASan), no callback comes. */
static void test_stop_in_flight(void **state)
{
    (void)state;
    enum { N = 30 };
    origin_start(N);
    for (int i = 0; i < N; i++)
        origin_set(i, B_HANG, 200, 0);
    int fds = count_fds();
    struct polis_hc *hc = hc_start();
    struct polis_health_check_cfg cfg = base_cfg(50, 5000, 2, 1);
    struct polis_addr addrs[N];
    for (int i = 0; i < N; i++)
        addrs[i] = origin.l[i].addr;
    double t0 = now_ms();
    assert_int_equal(polis__hc_set(hc, "hang", &cfg, addrs, N), 0);
    /* All in flight together: the checks run concurrently. */
    assert_true(WAIT_FOR(origin_open_total() == N, 1000));
    assert_true(now_ms() - t0 < 500);

    /* Churn: halves swapped in and out, checks abandoned mid-way. */
    for (int round = 0; round < 40; round++) {
        assert_int_equal(polis__hc_set(hc, "hang", &cfg, addrs + (round % 2) * (N / 2), N / 2), 0);
        assert_int_equal(polis__hc_set(hc, "other", &cfg, addrs + round % (N - 3), 1 + round % 3),
                         0);
        sleep_ms(round % 3);
    }
    assert_int_equal(polis__hc_set(hc, "hang", &cfg, addrs, N), 0);
    sleep_ms(30);
    /* A check was abandoned each time its target left: no connection is left behind. */
    assert_true(WAIT_FOR(origin_open_total() <= N + 3, 500));
    for (int i = 0; i < N; i++)
        assert_true(origin_open(i) <= 2); /* "hang" and "other" may both check it */

    assert_int_equal(polis__hc_set(hc, "pending", &cfg, addrs, N), 0); /* maybe applied */
    double t1 = now_ms();
    polis__hc_stop(hc);
    assert_true(now_ms() - t1 < 500);
    assert_int_equal(events(), 0);
    assert_true(WAIT_FOR(origin_open_total() == 0, 1000));
    assert_int_equal(count_fds(), fds);
    origin_stop();
}

int main(void)
{
    polis_log_set_level(POLIS_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_and_thresholds),
        cmocka_unit_test(test_failures),
        cmocka_unit_test(test_statuses),
        cmocka_unit_test(test_jitter),
        cmocka_unit_test(test_set_replace),
        cmocka_unit_test(test_many),
        cmocka_unit_test(test_stop_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
