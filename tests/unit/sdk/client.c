/* Unit tests of the SDK's blocking HTTP client (lib/sdk/client.c) against SDK servers and
 * scripted raw servers on loopback, and of trace propagation through a traced server. */
#include <polis/http.h>
#include <polis/trace.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool body_is(const struct polis_fetch_result *r, const char *want)
{
    size_t n = strlen(want);
    return polis_buf_len(&r->body) == n &&
           (n == 0 || memcmp(polis_buf_head(&r->body), want, n) == 0);
}

/* ---- An SDK server that echoes and records -------------------------------------------------- */

static pthread_mutex_t rec_mu = PTHREAD_MUTEX_INITIALIZER;
static char rec_client[64][64]; /* client_addr of each request, in order */
static int rec_count;

static void echo_handler(const struct polis_request *req, struct polis_response *res, void *ud)
{
    (void)ud;
    pthread_mutex_lock(&rec_mu);
    if (rec_count < 64)
        snprintf(rec_client[rec_count++], sizeof(rec_client[0]), "%.*s", (int)req->client_addr.len,
                 req->client_addr.p);
    pthread_mutex_unlock(&rec_mu);
    if (polis_str_eq(req->path, POLIS_STR("/close")))
        polis_response_header(res, "Connection", "close");
    if (polis_str_eq(req->path, POLIS_STR("/big"))) {
        for (size_t i = 0; i < 1000000; i++) {
            char ch = (char)('a' + i % 26);
            polis_response_body(res, &ch, 1);
        }
        return;
    }
    if (polis_str_eq(req->path, POLIS_STR("/status")))
        polis_response_status(res, 503);
    const struct polis_str *x = polis_request_header(req, "X-Test");
    const struct polis_str *host = polis_request_header(req, "Host");
    polis_response_printf(res, "%.*s %.*s %.*s x=%.*s host=%.*s %zu:", (int)req->method.len,
                          req->method.p, (int)req->path.len, req->path.p, (int)req->query.len,
                          req->query.p, x ? (int)x->len : 0, x ? x->p : "",
                          host ? (int)host->len : 0, host ? host->p : "", req->body.len);
    polis_response_body(res, req->body.p, req->body.len);
}

struct fixture {
    struct polis_server *srv;
    int port;
    char base[64];
};

static int start_echo(void **state, uint64_t idle_ms)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    struct polis_server_opts opts = {
        .listen = "127.0.0.1:0",
        .threads = 2,
        .idle_timeout_ms = idle_ms,
        .handler = echo_handler,
    };
    assert_int_equal(polis_server_start(&opts, &f->srv), 0);
    f->port = polis_server_port(f->srv);
    snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%d", f->port);
    pthread_mutex_lock(&rec_mu);
    rec_count = 0;
    pthread_mutex_unlock(&rec_mu);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return start_echo(state, 5000);
}

static int setup_short_idle(void **state)
{
    return start_echo(state, 200);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->srv != NULL)
        polis_server_stop(f->srv);
    free(f);
    return 0;
}

static int fetch(const char *method, const char *base, const char *path, const char *const *hdrs,
                 const char *body, struct polis_fetch_result *r)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", base, path);
    return polis_fetch(method, url, hdrs, body, body != NULL ? strlen(body) : 0, 3000, r);
}

/* The port of the n-th recorded request's client. */
static int rec_port(int n)
{
    pthread_mutex_lock(&rec_mu);
    assert_true(n < rec_count);
    const char *colon = strrchr(rec_client[n], ':');
    int port = colon != NULL ? (int)strtol(colon + 1, NULL, 10) : -1;
    pthread_mutex_unlock(&rec_mu);
    return port;
}

/* ---- Against the SDK server ----------------------------------------------------------------- */

static void test_get(void **state)
{
    struct fixture *f = *state;
    struct polis_fetch_result r;
    assert_int_equal(fetch("GET", f->base, "/x/y?a=1&b=2", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    char want[128];
    snprintf(want, sizeof(want), "GET /x/y a=1&b=2 x= host=127.0.0.1:%d 0:", f->port);
    assert_true(body_is(&r, want));
    polis_fetch_free(&r);
    polis_fetch_free(&r); /* harmless twice */

    /* No path: "/"; a fragment is not sent; a status is returned as it is. */
    assert_int_equal(fetch("GET", f->base, "", NULL, NULL, &r), 0);
    snprintf(want, sizeof(want), "GET /  x= host=127.0.0.1:%d 0:", f->port);
    assert_true(body_is(&r, want));
    polis_fetch_free(&r);
    assert_int_equal(fetch("GET", f->base, "?q=1#frag", NULL, NULL, &r), 0);
    snprintf(want, sizeof(want), "GET / q=1 x= host=127.0.0.1:%d 0:", f->port);
    assert_true(body_is(&r, want));
    polis_fetch_free(&r);
    assert_int_equal(fetch("GET", f->base, "/status", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 503);
    polis_fetch_free(&r);

    /* A name and an IPv6 literal. */
    char url[128];
    snprintf(url, sizeof(url), "http://localhost:%d/n", f->port);
    int rc = polis_fetch("GET", url, NULL, NULL, 0, 3000, &r);
    assert_int_equal(rc, 0);
    assert_int_equal(r.status, 200);
    polis_fetch_free(&r);
}

static void test_post_with_body_and_headers(void **state)
{
    struct fixture *f = *state;
    struct polis_fetch_result r;
    const char *const hdrs[] = {"X-Test:   spaced value  ", "Host: example.test", NULL};
    assert_int_equal(fetch("POST", f->base, "/submit", hdrs, "hello body", &r), 0);
    assert_int_equal(r.status, 200);
    assert_true(body_is(&r, "POST /submit  x=spaced value host=example.test 10:hello body"));
    polis_fetch_free(&r);

    /* POST without a body still says Content-Length: 0. */
    assert_int_equal(fetch("POST", f->base, "/empty", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    char want[128];
    snprintf(want, sizeof(want), "POST /empty  x= host=127.0.0.1:%d 0:", f->port);
    assert_true(body_is(&r, want));
    polis_fetch_free(&r);

    /* HEAD: the Content-Length does not announce a body. */
    assert_int_equal(fetch("HEAD", f->base, "/h", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(polis_buf_len(&r.body), 0);
    polis_fetch_free(&r);

    /* A large body arrives whole. */
    assert_int_equal(fetch("GET", f->base, "/big", NULL, NULL, &r), 0);
    assert_int_equal(polis_buf_len(&r.body), 1000000);
    const char *b = polis_buf_head(&r.body);
    for (size_t i = 0; i < 1000000; i++)
        if (b[i] != (char)('a' + i % 26))
            fail_msg("byte %zu differs", i);
    polis_fetch_free(&r);
}

static void test_keep_alive_reuse(void **state)
{
    struct fixture *f = *state;
    struct polis_fetch_result r;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(fetch(i == 1 ? "POST" : "GET", f->base, "/ka", NULL, "b", &r), 0);
        assert_int_equal(r.status, 200);
        polis_fetch_free(&r);
    }
    /* One connection for the three requests. */
    assert_int_equal(rec_port(0), rec_port(1));
    assert_int_equal(rec_port(1), rec_port(2));

    /* The server asks to close: the next request opens a new connection. */
    assert_int_equal(fetch("GET", f->base, "/close", NULL, NULL, &r), 0);
    polis_fetch_free(&r);
    assert_int_equal(fetch("GET", f->base, "/after", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    polis_fetch_free(&r);
    assert_int_equal(rec_port(3), rec_port(2));
    assert_true(rec_port(4) != rec_port(3));

    /* The caller asks to close: not kept either. */
    const char *const close_hdr[] = {"Connection: close", NULL};
    assert_int_equal(fetch("GET", f->base, "/c", close_hdr, NULL, &r), 0);
    polis_fetch_free(&r);
    assert_int_equal(fetch("GET", f->base, "/d", NULL, NULL, &r), 0);
    polis_fetch_free(&r);
    assert_int_equal(rec_port(5), rec_port(4));
    assert_true(rec_port(6) != rec_port(5));
}

/* The server closes the idle kept connection (its idle timeout): the next fetch sees it and
 * opens another, for POST too since nothing was sent on the dead one. */
static void test_stale_kept_connection(void **state)
{
    struct fixture *f = *state;
    struct polis_fetch_result r;
    assert_int_equal(fetch("GET", f->base, "/one", NULL, NULL, &r), 0);
    polis_fetch_free(&r);
    usleep(600 * 1000);
    assert_int_equal(fetch("POST", f->base, "/two", NULL, "x", &r), 0);
    assert_int_equal(r.status, 200);
    polis_fetch_free(&r);
    assert_true(rec_port(0) != rec_port(1));
}

/* The server restarts on the same port between two fetches. */
static void test_server_restart(void **state)
{
    struct fixture *f = *state;
    struct polis_fetch_result r;
    assert_int_equal(fetch("GET", f->base, "/one", NULL, NULL, &r), 0);
    polis_fetch_free(&r);
    polis_server_stop(f->srv);
    f->srv = NULL;
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", f->port);
    struct polis_server_opts opts = {.listen = listen, .handler = echo_handler};
    assert_int_equal(polis_server_start(&opts, &f->srv), 0);
    assert_int_equal(fetch("GET", f->base, "/two", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    polis_fetch_free(&r);
}

/* ---- Scripted raw servers ------------------------------------------------------------------- */

struct step {
    const char *send; /* bytes to answer with; NULL: close without answering */
    bool close;       /* close after sending */
};

struct raw {
    int lfd, port;
    pthread_t tid;
    const struct step *steps; /* one per request, in arrival order */
    int nsteps;
    int conns, requests;
    char base[64];
};

/* Read one request head (and a Content-Length body) from fd. False at EOF. */
static bool raw_read_request(int fd)
{
    char buf[8192];
    size_t len = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0)
            return false;
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end == NULL)
            continue;
        size_t have = len - (size_t)(end + 4 - buf);
        const char *cl = strcasestr(buf, "\r\nContent-Length:");
        size_t want = cl != NULL && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
        while (have < want) {
            n = recv(fd, buf, sizeof(buf), 0);
            if (n <= 0)
                return false;
            have += (size_t)n;
        }
        return true;
    }
}

static void *raw_main(void *arg)
{
    struct raw *rs = arg;
    while (rs->requests < rs->nsteps) {
        int fd = accept(rs->lfd, NULL, NULL);
        if (fd < 0)
            return NULL;
        rs->conns++;
        while (rs->requests < rs->nsteps && raw_read_request(fd)) {
            const struct step *s = &rs->steps[rs->requests++];
            if (s->send == NULL)
                break;
            size_t n = strlen(s->send), off = 0;
            while (off < n) {
                ssize_t w = send(fd, s->send + off, n - off, MSG_NOSIGNAL);
                if (w <= 0)
                    break;
                off += (size_t)w;
            }
            if (s->close)
                break;
        }
        close(fd);
    }
    return NULL;
}

static int listener(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, backlog), 0);
    socklen_t sl = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

static void raw_start(struct raw *rs, const struct step *steps, int n)
{
    memset(rs, 0, sizeof(*rs));
    rs->lfd = listener(16, &rs->port);
    rs->steps = steps;
    rs->nsteps = n;
    snprintf(rs->base, sizeof(rs->base), "http://127.0.0.1:%d", rs->port);
    assert_int_equal(pthread_create(&rs->tid, NULL, raw_main, rs), 0);
}

static void raw_stop(struct raw *rs)
{
    pthread_join(rs->tid, NULL);
    close(rs->lfd);
}

static void test_chunked_and_close_delimited(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         "5;ext=1\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
         false},
        /* 1xx answers are skipped. */
        {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
         "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
         false},
        /* HTTP/1.0 without a length: the body runs to the close. */
        {"HTTP/1.0 200 OK\r\n\r\nuntil the end", true},
    };
    struct raw rs;
    raw_start(&rs, steps, 3);
    struct polis_fetch_result r;
    assert_int_equal(fetch("GET", rs.base, "/chunked", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_true(body_is(&r, "hello, world"));
    polis_fetch_free(&r);
    assert_int_equal(fetch("GET", rs.base, "/interim", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 201);
    assert_true(body_is(&r, "ok"));
    polis_fetch_free(&r);
    assert_int_equal(fetch("GET", rs.base, "/close", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_true(body_is(&r, "until the end"));
    polis_fetch_free(&r);
    raw_stop(&rs);
    assert_int_equal(rs.conns, 1); /* the chunked and 1xx answers kept the connection */
}

/* A kept connection that the server drops when the next request arrives: an idempotent request
 * is sent again on a new connection, a POST is not. */
static void test_retry_idempotent_only(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", false},
        {NULL, false}, /* the GET on the kept connection: closed without an answer */
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2", false},
        {NULL, false}, /* the POST on the kept connection */
    };
    struct raw rs;
    raw_start(&rs, steps, 4);
    struct polis_fetch_result r;
    assert_int_equal(fetch("GET", rs.base, "/a", NULL, NULL, &r), 0);
    assert_true(body_is(&r, "1"));
    polis_fetch_free(&r);
    assert_int_equal(fetch("GET", rs.base, "/b", NULL, NULL, &r), 0); /* retried */
    assert_true(body_is(&r, "2"));
    polis_fetch_free(&r);
    errno = 0;
    assert_int_equal(fetch("POST", rs.base, "/c", NULL, "body", &r), POLIS_ESYS);
    assert_int_equal(errno, ECONNRESET);
    assert_int_equal(r.status, 0);
    assert_int_equal(polis_buf_len(&r.body), 0);
    raw_stop(&rs);
    assert_int_equal(rs.conns, 2);
    assert_int_equal(rs.requests, 4);
}

static void test_invalid_answers(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"SSH-2.0-OpenSSH_9.2 not http\r\n\r\n", true},
        {"HTTP/1.1 200 OK\r\nContent-Length: 20000000\r\n\r\n", true},
        {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", true},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", true},
    };
    struct raw rs;
    raw_start(&rs, steps, 5);
    struct polis_fetch_result r;
    assert_int_equal(fetch("GET", rs.base, "/", NULL, NULL, &r), POLIS_EBADMSG);
    assert_int_equal(fetch("GET", rs.base, "/", NULL, NULL, &r), POLIS_ETOOBIG);
    assert_int_equal(fetch("GET", rs.base, "/", NULL, NULL, &r), POLIS_EBADMSG);
    assert_int_equal(fetch("GET", rs.base, "/", NULL, NULL, &r), POLIS_EBADMSG);
    assert_int_equal(fetch("GET", rs.base, "/", NULL, NULL, &r), POLIS_EBADMSG);
    raw_stop(&rs);
}

/* A listener that never accepts: the connection completes in the kernel, the answer never
 * comes. */
static void test_timeout(void **state)
{
    (void)state;
    int port;
    int lfd = listener(4, &port);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/slow", port);
    struct polis_fetch_result r;
    uint64_t t0 = now_ms();
    assert_int_equal(polis_fetch("GET", url, NULL, NULL, 0, 300, &r), POLIS_ETIMEDOUT);
    uint64_t took = now_ms() - t0;
    assert_true(took >= 290 && took < 1500);
    close(lfd);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    static const char *const bad_urls[] = {
        "ftp://127.0.0.1/",       "http://",          "http:///path",
        "https://127.0.0.1/",     "http://a b/",      "http://user@127.0.0.1/",
        "http://127.0.0.1:0/",    "http://h:99999/",  "http://h:/",
        "http://h:8x/",           "http://[::1/",     "http://[zz]/",
        "http://[::1]x/",         "127.0.0.1:80/",    "http://h/\r\nX: y",
        "http://h\xc3\xa9.test/", "http://bad!host/", "",
    };
    struct polis_fetch_result r;
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        int rc = polis_fetch("GET", bad_urls[i], NULL, NULL, 0, 1000, &r);
        if (rc != POLIS_EINVAL)
            fail_msg("%s: %d", bad_urls[i], rc);
    }
    assert_int_equal(polis_fetch("GET", NULL, NULL, NULL, 0, 1000, &r), POLIS_EINVAL);
    assert_int_equal(polis_fetch("G T", "http://127.0.0.1:1/", NULL, NULL, 0, 1000, &r),
                     POLIS_EINVAL);
    assert_int_equal(polis_fetch("", "http://127.0.0.1:1/", NULL, NULL, 0, 1000, &r), POLIS_EINVAL);
    assert_int_equal(polis_fetch("GET", "http://127.0.0.1:1/", NULL, NULL, 5, 1000, &r),
                     POLIS_EINVAL);
    static const char *const bad_headers[][2] = {
        {"X-Bad: a\r\nInjected: 1", NULL},
        {"No colon here", NULL},
        {"Bad Name: x", NULL},
        {": empty name", NULL},
        {"Content-Length: 5", NULL},
        {"Transfer-Encoding: x", NULL},
    };
    for (size_t i = 0; i < sizeof(bad_headers) / sizeof(bad_headers[0]); i++) {
        const char *const *h = bad_headers[i];
        int rc = polis_fetch("GET", "http://127.0.0.1:1/", h, NULL, 0, 1000, &r);
        if (rc != POLIS_EINVAL)
            fail_msg("%s: %d", h[0], rc);
    }
}

static void test_connection_refused(void **state)
{
    (void)state;
    int port;
    int fd = listener(1, &port);
    close(fd); /* nothing listens there now */
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
    struct polis_fetch_result r;
    errno = 0;
    assert_int_equal(polis_fetch("GET", url, NULL, NULL, 0, 1000, &r), POLIS_ESYS);
    assert_int_equal(errno, ECONNREFUSED);
    assert_int_equal(polis_fetch("GET", "http://no-such-host.invalid/", NULL, NULL, 0, 1000, &r),
                     POLIS_ENOTFOUND);
}

/* ---- Trace propagation ---------------------------------------------------------------------- */

/* What the second service saw, and what the first one had as its current context. */
static char seen_traceparent[128], seen_tracestate[128];
static struct polis_trace_ctx seen_current;
static bool seen_current_set;
static int downstream_port;

static void downstream_handler(const struct polis_request *req, struct polis_response *res,
                               void *ud)
{
    (void)ud;
    const struct polis_str *tp = polis_request_header(req, "traceparent");
    const struct polis_str *ts = polis_request_header(req, "tracestate");
    pthread_mutex_lock(&rec_mu);
    snprintf(seen_traceparent, sizeof(seen_traceparent), "%.*s", tp ? (int)tp->len : 0,
             tp ? tp->p : "");
    snprintf(seen_tracestate, sizeof(seen_tracestate), "%.*s", ts ? (int)ts->len : 0,
             ts ? ts->p : "");
    pthread_mutex_unlock(&rec_mu);
    polis_response_printf(res, "downstream");
}

static void traced_handler(const struct polis_request *req, struct polis_response *res, void *ud)
{
    (void)req;
    (void)ud;
    const struct polis_trace_ctx *cur = polis_trace_current();
    pthread_mutex_lock(&rec_mu);
    seen_current_set = cur != NULL;
    if (cur != NULL)
        seen_current = *cur;
    pthread_mutex_unlock(&rec_mu);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/down", downstream_port);
    struct polis_fetch_result r;
    int rc = polis_fetch("GET", url, NULL, NULL, 0, 2000, &r);
    polis_response_status(res, rc == 0 ? r.status : 502);
    if (rc == 0)
        polis_response_body(res, polis_buf_head(&r.body), polis_buf_len(&r.body));
    polis_fetch_free(&r);
}

struct trace_fixture {
    struct polis_tracer *tracer;
    struct polis_server *up, *down;
    char base[64];
};

static int setup_traced(void **state)
{
    struct trace_fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    int port;
    int fd = listener(1, &port);
    close(fd); /* the collector is down: spans are dropped, never blocking */
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d/v1/traces", port);
    struct polis_tracer_opts topts = {
        .endpoint = endpoint, .service_name = "test", .sample_ratio = 1.0, .timeout_ms = 200};
    assert_int_equal(polis_tracer_start(&topts, &f->tracer), 0);
    struct polis_server_opts dopts = {.listen = "127.0.0.1:0", .handler = downstream_handler};
    assert_int_equal(polis_server_start(&dopts, &f->down), 0);
    downstream_port = polis_server_port(f->down);
    struct polis_server_opts uopts = {
        .listen = "127.0.0.1:0", .handler = traced_handler, .tracer = f->tracer};
    assert_int_equal(polis_server_start(&uopts, &f->up), 0);
    snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%d", polis_server_port(f->up));
    *state = f;
    return 0;
}

static int teardown_traced(void **state)
{
    struct trace_fixture *f = *state;
    polis_server_stop(f->up);
    polis_server_stop(f->down);
    polis_tracer_stop(f->tracer);
    free(f);
    return 0;
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* Call the traced service with hdrs; return what the downstream saw as a parsed context. */
static void call_traced(struct trace_fixture *f, const char *const *hdrs,
                        struct polis_trace_ctx *down_ctx, struct polis_trace_ctx *cur)
{
    struct polis_fetch_result r;
    pthread_mutex_lock(&rec_mu);
    seen_traceparent[0] = seen_tracestate[0] = '\0';
    seen_current_set = false;
    pthread_mutex_unlock(&rec_mu);
    assert_null(polis_trace_current()); /* the test's thread runs no traced request */
    assert_int_equal(fetch("GET", f->base, "/up", hdrs, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_true(body_is(&r, "downstream"));
    polis_fetch_free(&r);
    pthread_mutex_lock(&rec_mu);
    assert_true(seen_current_set);
    *cur = seen_current;
    assert_int_equal(strlen(seen_traceparent), POLIS_TRACEPARENT_LEN);
    assert_int_equal(polis_traceparent_parse(
                         (struct polis_str){seen_traceparent, strlen(seen_traceparent)}, down_ctx),
                     0);
    pthread_mutex_unlock(&rec_mu);
}

static void test_trace_propagation(void **state)
{
    struct trace_fixture *f = *state;
    struct polis_tracer_stats st0, st1;
    polis_tracer_stats(f->tracer, &st0);

    /* An incoming sampled context is continued. */
    static const char tid[] = "4bf92f3577b34da6a3ce929d0e0e4736";
    static const char sid[] = "00f067aa0ba902b7";
    const char *const hdrs[] = {
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate: vendor=abc, other=1", NULL};
    struct polis_trace_ctx down, cur;
    char t[33], s[17], cs[17];
    call_traced(f, hdrs, &down, &cur);
    hex(cur.trace_id, 16, t);
    hex(cur.span_id, 8, cs);
    assert_string_equal(t, tid);      /* the server span is in the caller's trace */
    assert_string_not_equal(cs, sid); /* ... with a span of its own */
    assert_int_equal(cur.flags & 1, 1);
    hex(down.trace_id, 16, t);
    hex(down.span_id, 8, s);
    assert_string_equal(t, tid);     /* the same trace downstream */
    assert_string_not_equal(s, sid); /* whose parent is a new span: the CLIENT span */
    assert_string_not_equal(s, cs);
    assert_int_equal(down.flags, 1);
    assert_string_equal(seen_tracestate, "vendor=abc, other=1"); /* kept */
    polis_tracer_stats(f->tracer, &st1);
    assert_int_equal(st1.submitted - st0.submitted, 2); /* the SERVER and the CLIENT span */

    /* No incoming context: a new trace (ratio 1.0: sampled), propagated; no tracestate. */
    call_traced(f, NULL, &down, &cur);
    assert_memory_equal(down.trace_id, cur.trace_id, 16);
    assert_memory_not_equal(down.span_id, cur.span_id, 8);
    hex(cur.trace_id, 16, t);
    assert_string_not_equal(t, tid);
    assert_int_equal(down.flags, 1);
    assert_string_equal(seen_tracestate, "");
    polis_tracer_stats(f->tracer, &st0);
    assert_int_equal(st0.submitted - st1.submitted, 2);

    /* An unsampled incoming context: nothing recorded, the decision travels on. */
    const char *const unsampled[] = {
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", NULL};
    call_traced(f, unsampled, &down, &cur);
    hex(down.trace_id, 16, t);
    assert_string_equal(t, tid);
    assert_int_equal(down.flags, 0);
    assert_int_equal(cur.flags, 0);
    polis_tracer_stats(f->tracer, &st1);
    assert_int_equal(st1.submitted, st0.submitted);

    /* An invalid traceparent starts a new trace, and its tracestate is dropped. */
    const char *const invalid[] = {
        "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "tracestate: vendor=abc", NULL};
    call_traced(f, invalid, &down, &cur);
    assert_memory_equal(down.trace_id, cur.trace_id, 16);
    hex(cur.trace_id, 16, t);
    assert_string_not_equal(t, "00000000000000000000000000000000");
    assert_string_equal(seen_tracestate, "");

    /* A traceparent given by the caller of polis_fetch is sent as it is. */
    struct polis_fetch_result r;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/down", downstream_port);
    assert_int_equal(polis_fetch("GET", url, hdrs, NULL, 0, 2000, &r), 0);
    polis_fetch_free(&r);
    assert_string_equal(seen_traceparent,
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_with_body_and_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_kept_connection, setup_short_idle, teardown),
        cmocka_unit_test_setup_teardown(test_server_restart, setup, teardown),
        cmocka_unit_test(test_chunked_and_close_delimited),
        cmocka_unit_test(test_retry_idempotent_only),
        cmocka_unit_test(test_invalid_answers),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test_setup_teardown(test_trace_propagation, setup_traced, teardown_traced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
