/* Unit tests of the SDK's HTTP server (lib/sdk/server.c) over real loopback sockets. */
#include <polis/http.h>
#include <polis/metrics.h>
#include <polis/trace.h>

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <netinet/in.h>
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

#define CLIENT_BUF (8u << 20)

struct fixture {
    struct polis_server *srv;
    int port;
};

struct client {
    int fd;
    char *buf;
    size_t off, len; /* unread bytes: buf[off, len) */
};

struct resp {
    int status;
    char head[8192];
    char *body;
    size_t body_len;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Deferred requests parked by the handler (GET /park?id=N), for the tests to finish. */
#define MAX_PARKED 600
static pthread_mutex_t park_mu = PTHREAD_MUTEX_INITIALIZER;
static struct polis_deferred *parked[MAX_PARKED];

/* The test handler: answers "<method> <path> <query> <body length>:<body>", with routes that
 * exercise the response API. */
static void handler(const struct polis_request *req, struct polis_response *res, void *ud)
{
    (void)ud;
    const struct polis_str *host = polis_request_header(req, "HOST");
    if (host != NULL) {
        char v[256];
        snprintf(v, sizeof(v), "%.*s", (int)host->len, host->p);
        polis_response_header(res, "X-Host", v);
    }
    if (polis_str_eq(req->path, POLIS_STR("/big"))) {
        /* n bytes of a known pattern, built in pieces */
        size_t n = strtoull(req->query.p + 2, NULL, 10); /* query is "n=<bytes>" */
        char piece[65536];
        for (size_t off = 0; off < n;) {
            size_t k = n - off < sizeof(piece) ? n - off : sizeof(piece);
            for (size_t i = 0; i < k; i++)
                piece[i] = (char)('a' + (off + i) % 26);
            assert_int_equal(polis_response_body(res, piece, k), 0);
            off += k;
        }
        return;
    }
    if (polis_str_eq(req->path, POLIS_STR("/park"))) {
        /* query "id=N": defer, and leave the handle for the test */
        long id = strtol(req->query.p + 3, NULL, 10);
        assert_true(id >= 0 && id < MAX_PARKED);
        polis_response_status(res, 500); /* dropped: the deferred answer replaces it */
        struct polis_deferred *d = polis_response_defer(res);
        assert_non_null(d);
        assert_null(polis_response_defer(res)); /* once */
        polis_response_printf(res, "dropped");
        pthread_mutex_lock(&park_mu);
        assert_null(parked[id]);
        parked[id] = d;
        pthread_mutex_unlock(&park_mu);
        return;
    }
    if (polis_str_eq(req->path, POLIS_STR("/defer-now"))) {
        /* Deferred and finished before the handler returns. */
        struct polis_deferred *d = polis_response_defer(res);
        assert_non_null(d);
        const char *const hdrs[] = {"Content-Type: text/plain", "X-Bad",
                                    "X-Split: a\r\nInjected: 1", "X-Ok:   fine", NULL};
        polis_deferred_finish(d, 202, hdrs, "now", 3);
        return;
    }
    if (polis_str_eq(req->path, POLIS_STR("/defer-bad-status"))) {
        polis_deferred_finish(polis_response_defer(res), 42, NULL, "x", 1);
        return;
    }
    if (polis_str_eq(req->path, POLIS_STR("/sleep")))
        usleep(300000); /* a handler may block briefly: it holds up only its thread */
    if (polis_str_eq(req->path, POLIS_STR("/close")))
        polis_response_header(res, "Connection", "close");
    if (polis_str_eq(req->path, POLIS_STR("/created")))
        polis_response_status(res, 201);
    if (polis_str_eq(req->path, POLIS_STR("/bad-header"))) {
        char rc[32];
        snprintf(rc, sizeof(rc), "%d", polis_response_header(res, "X-Bad", "a\r\nInjected: 1"));
        polis_response_header(res, "X-Bad-Rc", rc);
    }
    polis_response_header(res, "Content-Type", "text/plain");
    polis_response_printf(res, "%.*s %.*s %.*s %zu:", (int)req->method.len, req->method.p,
                          (int)req->path.len, req->path.p, (int)req->query.len, req->query.p,
                          req->body.len);
    polis_response_body(res, req->body.p, req->body.len);
}

static int start(void **state, uint64_t idle_ms, uint64_t header_ms)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    struct polis_server_opts opts = {
        .listen = "127.0.0.1:0",
        .threads = 2,
        .max_body = 64 * 1024,
        .idle_timeout_ms = idle_ms,
        .header_timeout_ms = header_ms,
        .handler = handler,
    };
    assert_int_equal(polis_server_start(&opts, &f->srv), 0);
    f->port = polis_server_port(f->srv);
    assert_true(f->port > 0);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return start(state, 5000, 5000);
}

static int setup_short_timeouts(void **state)
{
    return start(state, 200, 300);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->srv != NULL)
        polis_server_stop(f->srv);
    free(f);
    return 0;
}

static void client_open(struct client *c, int port)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    c->buf = malloc(CLIENT_BUF);
    assert_non_null(c->buf);
    c->off = c->len = 0;
}

static void client_close(struct client *c)
{
    close(c->fd);
    free(c->buf);
}

static void client_send(struct client *c, const char *s)
{
    size_t len = strlen(s);
    while (len > 0) {
        ssize_t n = send(c->fd, s, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        s += n;
        len -= (size_t)n;
    }
}

/* Read more bytes; fails the test on EOF or timeout. */
static void client_fill(struct client *c)
{
    memmove(c->buf, c->buf + c->off, c->len - c->off);
    c->len -= c->off;
    c->off = 0;
    assert_true(c->len < CLIENT_BUF);
    ssize_t n = recv(c->fd, c->buf + c->len, CLIENT_BUF - c->len, 0);
    if (n <= 0)
        fail_msg("recv: %zd (%s) after %zu bytes", n, n < 0 ? strerror(errno) : "EOF", c->len);
    c->len += (size_t)n;
}

/* Read one response. head_request: it has no body whatever Content-Length says. */
static void client_response(struct client *c, struct resp *r, bool head_request)
{
    char *end;
    for (;;) {
        end = memmem(c->buf + c->off, c->len - c->off, "\r\n\r\n", 4);
        if (end != NULL)
            break;
        client_fill(c);
    }
    size_t head_len = (size_t)(end - (c->buf + c->off)) + 4;
    assert_true(head_len < sizeof(r->head));
    memcpy(r->head, c->buf + c->off, head_len);
    r->head[head_len] = '\0';
    assert_int_equal(sscanf(r->head, "HTTP/1.1 %d ", &r->status), 1);
    size_t cl = 0;
    const char *h = strcasestr(r->head, "\r\nContent-Length:");
    if (h != NULL)
        cl = strtoull(h + 17, NULL, 10);
    if (head_request || r->status == 100)
        cl = 0;
    while (c->len - c->off < head_len + cl)
        client_fill(c);
    r->body = malloc(cl + 1);
    assert_non_null(r->body);
    memcpy(r->body, c->buf + c->off + head_len, cl);
    r->body[cl] = '\0';
    r->body_len = cl;
    c->off += head_len + cl;
}

/* True when the server closes the connection (after any bytes already read) within ms. */
static bool client_sees_eof(struct client *c, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char tmp[256];
    ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
    return n == 0;
}

static void expect(struct client *c, const char *method, int status, const char *body)
{
    struct resp r;
    client_response(c, &r, strcmp(method, "HEAD") == 0);
    assert_int_equal(r.status, status);
    assert_string_equal(r.body, body);
    free(r.body);
}

static void test_simple_get(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "GET /hello?x=1&y=2 HTTP/1.1\r\nHost: example.test\r\n\r\n");
    struct resp r;
    client_response(&c, &r, false);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "GET /hello x=1&y=2 0:");
    assert_non_null(strstr(r.head, "\r\nX-Host: example.test\r\n"));
    assert_non_null(strstr(r.head, "\r\nContent-Type: text/plain\r\n"));
    assert_non_null(strstr(r.head, "\r\nContent-Length: 21\r\n"));
    assert_null(strstr(r.head, "Connection:"));
    free(r.body);
    client_close(&c);
}

static void test_keep_alive(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    for (int i = 0; i < 3; i++) {
        char req[128], body[64];
        snprintf(req, sizeof(req), "GET /k%d HTTP/1.1\r\nHost: a\r\n\r\n", i);
        snprintf(body, sizeof(body), "GET /k%d  0:", i);
        client_send(&c, req);
        expect(&c, "GET", 200, body);
    }
    client_close(&c);
}

static void test_pipelined(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
                    "POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                    "GET /third?q HTTP/1.1\r\nHost: a\r\n\r\n");
    expect(&c, "GET", 200, "GET /first  0:");
    expect(&c, "POST", 200, "POST /second  3:abc");
    expect(&c, "GET", 200, "GET /third q 0:");
    client_close(&c);
}

static void test_chunked_body(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    /* In one write, followed by a pipelined request. */
    client_send(&c, "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                    "GET /after HTTP/1.1\r\nHost: a\r\n\r\n");
    expect(&c, "POST", 200, "POST /c  11:hello world");
    expect(&c, "GET", 200, "GET /after  0:");
    /* A piece at a time. */
    const char *pieces[] = {"POST /d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                            "3\r",
                            "\nab",
                            "c\r\n",
                            "a\r\n0123456789\r\n",
                            "0\r\n",
                            "\r\n"};
    for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
        client_send(&c, pieces[i]);
        usleep(20000);
    }
    expect(&c, "POST", 200, "POST /d  13:abc0123456789");

    /* 60000 bytes in 60 chunks in one write: the input buffer grows (and moves) mid-body. */
    size_t size = 60 * (6 + 1000 + 2) + 256;
    char *req = malloc(size), *body = malloc(60001);
    assert_non_null(req);
    assert_non_null(body);
    int o = snprintf(req, size,
                     "POST /big-chunked HTTP/1.1\r\nHost: a\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 60; i++) {
        o += snprintf(req + o, size - (size_t)o, "3e8\r\n");
        for (int k = 0; k < 1000; k++)
            body[i * 1000 + k] = req[o++] = (char)('0' + (i + k) % 10);
        req[o++] = '\r';
        req[o++] = '\n';
    }
    body[60000] = '\0';
    snprintf(req + o, size - (size_t)o, "0\r\n\r\n");
    client_send(&c, req);
    struct resp r;
    client_response(&c, &r, false);
    assert_int_equal(r.status, 200);
    assert_true(strncmp(r.body, "POST /big-chunked  60000:", 25) == 0);
    assert_string_equal(r.body + 25, body);
    free(r.body);
    free(body);
    free(req);
    client_close(&c);
}

static void test_content_length_body(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "PUT /p HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello");
    usleep(50000);
    client_send(&c, " world");
    expect(&c, "PUT", 200, "PUT /p  11:hello world");

    /* A body large enough to need several reads and a larger input buffer. */
    size_t n = 60000;
    char *req = malloc(n + 128);
    assert_non_null(req);
    int h = snprintf(req, 128, "POST /large HTTP/1.1\r\nHost: a\r\nContent-Length: %zu\r\n\r\n", n);
    for (size_t i = 0; i < n; i++)
        req[h + (int)i] = (char)('A' + i % 23);
    req[h + (int)n] = '\0';
    client_send(&c, req);
    struct resp r;
    client_response(&c, &r, false);
    assert_int_equal(r.status, 200);
    const char *colon = strchr(r.body, ':');
    assert_non_null(colon);
    assert_string_equal(colon + 1, req + h);
    assert_int_equal(strtoull(r.body + strlen("POST /large  "), NULL, 10), n);
    free(r.body);
    free(req);
    client_close(&c);
}

static void check_error(struct client *c, int status, const char *code)
{
    struct resp r;
    client_response(c, &r, false);
    assert_int_equal(r.status, status);
    assert_non_null(strstr(r.head, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(r.head, "\r\nConnection: close\r\n"));
    char want[128];
    snprintf(want, sizeof(want), "{\"error\":\"%s\",\"status\":%d,\"message\":\"", code, status);
    assert_true(strncmp(r.body, want, strlen(want)) == 0);
    assert_true(r.body[r.body_len - 1] == '}');
    free(r.body);
    assert_true(client_sees_eof(c, 3000));
}

static void test_body_too_big(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\nsome");
    check_error(&c, 413, "payload_too_large");
    client_close(&c);

    /* A chunked body that grows past max_body. */
    client_open(&c, f->port);
    client_send(&c, "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "11170\r\n"); /* 70000 bytes announced */
    char block[8192];
    memset(block, 'z', sizeof(block) - 1);
    block[sizeof(block) - 1] = '\0';
    for (int i = 0; i < 9; i++) {
        ssize_t n = send(c.fd, block, strlen(block), MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the server may have answered and closed already */
    }
    check_error(&c, 413, "payload_too_large");
    client_close(&c);
}

static void test_bad_request(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n");
    check_error(&c, 400, "bad_request");
    client_close(&c);

    /* The good request before a bad one is still answered, in order. */
    client_open(&c, f->port);
    client_send(&c, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n");
    expect(&c, "GET", 200, "GET /ok  0:");
    check_error(&c, 400, "bad_request");
    client_close(&c);

    client_open(&c, f->port);
    client_send(&c, "GET / HTTP/2.0\r\nHost: a\r\n\r\n");
    check_error(&c, 505, "http_version_not_supported");
    client_close(&c);
}

static void test_limits(void **state)
{
    struct fixture *f = *state;
    struct client c;
    size_t n = 10000;
    char *req = malloc(n + 64);
    assert_non_null(req);

    /* Request line over 8 KiB: 414. */
    client_open(&c, f->port);
    memcpy(req, "GET /", 5);
    memset(req + 5, 'a', n);
    req[5 + n] = '\0';
    client_send(&c, req);
    check_error(&c, 414, "uri_too_long");
    client_close(&c);

    /* More than 100 headers: 431. */
    client_open(&c, f->port);
    client_send(&c, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < 120; i++) {
        char line[64];
        snprintf(line, sizeof(line), "X-H%d: v\r\n", i);
        client_send(&c, line);
    }
    client_send(&c, "\r\n");
    check_error(&c, 431, "request_header_fields_too_large");
    client_close(&c);
    free(req);
}

static void test_head(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /g HTTP/1.1\r\nHost: a\r\n\r\n");
    struct resp r;
    client_response(&c, &r, true);
    assert_int_equal(r.status, 200);
    /* The length the GET would have had, and no body: the next bytes are the next response. */
    assert_non_null(strstr(r.head, "\r\nContent-Length: 11\r\n"));
    free(r.body);
    expect(&c, "GET", 200, "GET /g  0:");
    client_close(&c);
}

static void test_expect_continue(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                    "Expect: 100-continue\r\n\r\n");
    while (c.len < 25)
        client_fill(&c);
    assert_int_equal(c.len, 25);
    assert_memory_equal(c.buf, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c.off = 25;
    client_send(&c, "hello");
    expect(&c, "POST", 200, "POST /e  5:hello");

    /* Too large: the final answer comes at once, without 100. */
    client_send(&c, "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n"
                    "Expect: 100-continue\r\n\r\n");
    check_error(&c, 413, "payload_too_large");
    client_close(&c);
}

static void test_connection_close(void **state)
{
    struct fixture *f = *state;
    struct client c;
    struct resp r;

    /* Asked by the client. */
    client_open(&c, f->port);
    client_send(&c, "GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    client_response(&c, &r, false);
    assert_string_equal(r.body, "GET /a  0:");
    assert_non_null(strstr(r.head, "\r\nConnection: close\r\n"));
    free(r.body);
    assert_true(client_sees_eof(&c, 3000));
    client_close(&c);

    /* Set by the handler. */
    client_open(&c, f->port);
    client_send(&c, "GET /close HTTP/1.1\r\nHost: a\r\n\r\n");
    client_response(&c, &r, false);
    assert_non_null(strstr(r.head, "\r\nConnection: close\r\n"));
    free(r.body);
    assert_true(client_sees_eof(&c, 3000));
    client_close(&c);

    /* HTTP/1.0 without keep-alive closes; with it, stays open. */
    client_open(&c, f->port);
    client_send(&c, "GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    client_response(&c, &r, false);
    assert_non_null(strstr(r.head, "\r\nConnection: keep-alive\r\n"));
    free(r.body);
    client_send(&c, "GET /ten HTTP/1.0\r\n\r\n");
    expect(&c, "GET", 200, "GET /ten  0:");
    assert_true(client_sees_eof(&c, 3000));
    client_close(&c);
}

static void test_response_api(void **state)
{
    struct fixture *f = *state;
    struct client c;
    struct resp r;
    client_open(&c, f->port);
    client_send(&c, "GET /created HTTP/1.1\r\nHost: a\r\n\r\n");
    client_response(&c, &r, false);
    assert_int_equal(r.status, 201);
    assert_true(strncmp(r.head, "HTTP/1.1 201 Created\r\n", 22) == 0);
    free(r.body);

    /* A header value with CR LF is refused (no response splitting). */
    client_send(&c, "GET /bad-header HTTP/1.1\r\nHost: a\r\n\r\n");
    client_response(&c, &r, false);
    assert_non_null(strstr(r.head, "\r\nX-Bad-Rc: -3\r\n"));
    assert_null(strstr(r.head, "Injected"));
    free(r.body);
    client_close(&c);
}

static void test_backpressure(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    /* Three 2 MiB responses the client does not read at first: the server must keep the rest of
     * each and answer the queued requests in order once the client reads. */
    client_send(&c, "GET /big?n=2097152 HTTP/1.1\r\nHost: a\r\n\r\n"
                    "GET /big?n=2097152 HTTP/1.1\r\nHost: a\r\n\r\n"
                    "GET /small HTTP/1.1\r\nHost: a\r\n\r\n");
    usleep(200000);
    for (int i = 0; i < 2; i++) {
        struct resp r;
        client_response(&c, &r, false);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body_len, 2097152);
        for (size_t k = 0; k < r.body_len; k++)
            if (r.body[k] != (char)('a' + k % 26))
                fail_msg("byte %zu of response %d is wrong", k, i);
        free(r.body);
    }
    expect(&c, "GET", 200, "GET /small  0:");
    client_close(&c);
}

struct flood {
    int fd;
    const char *data;
    size_t len;
};

static void *flood_send(void *arg)
{
    struct flood *fl = arg;
    for (size_t off = 0; off < fl->len;) {
        ssize_t n = send(fl->fd, fl->data + off, fl->len - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    return NULL;
}

static void test_many_pipelined(void **state)
{
    struct fixture *f = *state;
    struct client c, other;
    client_open(&c, f->port);
    client_open(&other, f->port);
    /* While the handler sleeps on the first request, the rest piles up in the socket: far more
     * than one turn of reads. The connection yields and resumes, and answers in order. */
    enum { N = 40000 };
    size_t size = (size_t)N * 48;
    char *blob = malloc(size);
    assert_non_null(blob);
    size_t len = (size_t)snprintf(blob, size, "GET /sleep HTTP/1.1\r\nHost: a\r\n\r\n");
    for (int i = 0; i < N; i++)
        len += (size_t)snprintf(blob + len, size - len, "GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n", i);
    struct flood fl = {c.fd, blob, len};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, flood_send, &fl), 0);
    expect(&c, "GET", 200, "GET /sleep  0:");
    for (int i = 0; i < N; i++) {
        char want[64];
        snprintf(want, sizeof(want), "GET /p%d  0:", i);
        expect(&c, "GET", 200, want);
        if (i == N / 2) {
            /* Another connection is served meanwhile. */
            client_send(&other, "GET /other HTTP/1.1\r\nHost: a\r\n\r\n");
            expect(&other, "GET", 200, "GET /other  0:");
        }
    }
    pthread_join(tid, NULL);
    free(blob);
    client_close(&c);
    client_close(&other);
}

static void test_idle_timeout(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "GET /i HTTP/1.1\r\nHost: a\r\n\r\n");
    expect(&c, "GET", 200, "GET /i  0:");
    uint64_t t0 = now_ms();
    assert_true(client_sees_eof(&c, 3000));
    uint64_t waited = now_ms() - t0;
    assert_true(waited >= 150);
    assert_true(waited < 2000);
    client_close(&c);

    /* A connection that never sends a byte is idle too. */
    client_open(&c, f->port);
    t0 = now_ms();
    assert_true(client_sees_eof(&c, 3000));
    assert_true(now_ms() - t0 < 2000);
    client_close(&c);
}

static void test_header_timeout(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    /* Bytes keep coming every 100 ms, but the head must be complete within header_timeout_ms
     * (300) of its first byte: the 408 comes then, not 300 ms after the last byte. */
    uint64_t t0 = now_ms(), answered = 0;
    client_send(&c, "GET /slow HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < 15; i++) {
        usleep(100000);
        char peek;
        if (recv(c.fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT) == 1) {
            answered = now_ms();
            break;
        }
        char line[32];
        snprintf(line, sizeof(line), "X-H%d: v\r\n", i);
        client_send(&c, line);
    }
    assert_true(answered != 0);
    assert_true(answered - t0 >= 250);
    assert_true(answered - t0 < 1000);
    check_error(&c, 408, "request_timeout");
    client_close(&c);
}

static void test_stop_with_idle_connection(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "GET /s HTTP/1.1\r\nHost: a\r\n\r\n");
    expect(&c, "GET", 200, "GET /s  0:");
    struct client idle;
    client_open(&idle, f->port);
    usleep(20000);
    uint64_t t0 = now_ms();
    polis_server_stop(f->srv);
    f->srv = NULL;
    assert_true(now_ms() - t0 < 1000);
    assert_true(client_sees_eof(&c, 1000));
    client_close(&c);
    client_close(&idle);
}

static void test_start_errors(void **state)
{
    (void)state;
    struct polis_server *s = NULL;
    struct polis_server_opts opts = {.listen = "127.0.0.1:99999", .handler = handler};
    assert_int_equal(polis_server_start(&opts, &s), POLIS_EINVAL);
    opts.listen = "no-port";
    assert_int_equal(polis_server_start(&opts, &s), POLIS_EINVAL);
    opts.listen = "127.0.0.1:0";
    opts.handler = NULL;
    assert_int_equal(polis_server_start(&opts, &s), POLIS_EINVAL);

    /* A port in use without SO_REUSEPORT on the other socket: bind fails. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 1), 0);
    socklen_t sl = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    char listen_addr[64];
    snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%d", ntohs(sa.sin_port));
    opts.listen = listen_addr;
    opts.handler = handler;
    assert_int_equal(polis_server_start(&opts, &s), POLIS_ESYS);
    assert_int_equal(errno, EADDRINUSE);
    close(fd);
}

/* ---- Deferred answers ------------------------------------------------------------------------ */

/* Wait (bounded) until the handler parked request id; take its handle. */
static struct polis_deferred *take_parked(int id)
{
    for (int i = 0; i < 400; i++) {
        pthread_mutex_lock(&park_mu);
        struct polis_deferred *d = parked[id];
        parked[id] = NULL;
        pthread_mutex_unlock(&park_mu);
        if (d != NULL)
            return d;
        usleep(5000);
    }
    fail_msg("request %d was not parked", id);
    return NULL;
}

static void finish_text(struct polis_deferred *d, int status, const char *text)
{
    const char *const hdrs[] = {"Content-Type: text/plain", NULL};
    polis_deferred_finish(d, status, hdrs, text, strlen(text));
}

/* True when no byte arrives on c within ms. */
static bool client_quiet(struct client *c, int ms)
{
    if (c->len > c->off)
        return false;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    return poll(&pfd, 1, ms) == 0;
}

struct late_finish {
    struct polis_deferred *d;
    int delay_ms;
    const char *text;
};

static void *late_finish_main(void *arg)
{
    struct late_finish *lf = arg;
    usleep((useconds_t)lf->delay_ms * 1000);
    finish_text(lf->d, 200, lf->text);
    return NULL;
}

static void test_deferred_from_thread(void **state)
{
    struct fixture *f = *state; /* idle 200 ms, header 300 ms: both shorter than the wait */
    struct client c;
    client_open(&c, f->port);
    uint64_t t0 = now_ms();
    client_send(&c, "GET /park?id=0 HTTP/1.1\r\nHost: a\r\n\r\n");
    struct late_finish lf = {take_parked(0), 200, "late answer"};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, late_finish_main, &lf), 0);
    struct resp r;
    client_response(&c, &r, false);
    uint64_t took = now_ms() - t0;
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "late answer");
    assert_non_null(strstr(r.head, "\r\nContent-Type: text/plain\r\n"));
    assert_null(strstr(r.head, "Connection:"));
    assert_true(took >= 190);
    assert_true(took < 1500);
    free(r.body);
    pthread_join(tid, NULL);

    /* Longer than the idle and header timeouts together: neither fires while deferred. */
    client_send(&c, "GET /park?id=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    struct late_finish lf2 = {take_parked(1), 700, "very late"};
    assert_int_equal(pthread_create(&tid, NULL, late_finish_main, &lf2), 0);
    expect(&c, "GET", 200, "very late");
    pthread_join(tid, NULL);

    /* The connection goes on: finished inside the handler; malformed headers dropped. */
    client_send(&c, "GET /defer-now HTTP/1.1\r\nHost: a\r\n\r\n");
    client_response(&c, &r, false);
    assert_int_equal(r.status, 202);
    assert_string_equal(r.body, "now");
    assert_non_null(strstr(r.head, "\r\nX-Ok: fine\r\n"));
    assert_null(strstr(r.head, "X-Bad"));
    assert_null(strstr(r.head, "Injected"));
    assert_null(strstr(r.head, "X-Split"));
    free(r.body);

    /* HEAD: the headers of the deferred answer, no body. */
    client_send(&c, "HEAD /park?id=2 HTTP/1.1\r\nHost: a\r\n\r\n");
    finish_text(take_parked(2), 200, "twelve bytes");
    client_response(&c, &r, true);
    assert_non_null(strstr(r.head, "\r\nContent-Length: 12\r\n"));
    free(r.body);
    client_send(&c, "GET /k HTTP/1.1\r\nHost: a\r\n\r\n");
    expect(&c, "GET", 200, "GET /k  0:");

    /* An invalid status becomes a 500 (and the connection closes). */
    client_send(&c, "GET /defer-bad-status HTTP/1.1\r\nHost: a\r\n\r\n");
    client_response(&c, &r, false);
    assert_int_equal(r.status, 500);
    free(r.body);
    assert_true(client_sees_eof(&c, 3000));
    client_close(&c);
}

static void test_deferred_client_gone(void **state)
{
    struct fixture *f = *state;
    struct client c;

    /* Closed: the connection is freed; the answer, later, is only freed. */
    client_open(&c, f->port);
    client_send(&c, "GET /park?id=0 HTTP/1.1\r\nHost: a\r\n\r\n");
    struct polis_deferred *d = take_parked(0);
    client_close(&c);
    usleep(100000);
    finish_text(d, 200, "nobody reads this");

    /* Half-closed: taken as gone too, so the server closes its side at once. */
    client_open(&c, f->port);
    client_send(&c, "GET /park?id=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    d = take_parked(1);
    shutdown(c.fd, SHUT_WR);
    assert_true(client_sees_eof(&c, 2000));
    client_close(&c);
    finish_text(d, 200, "nobody reads this either");

    /* The answer arrives while the client is leaving: either way nothing breaks. */
    client_open(&c, f->port);
    client_send(&c, "GET /park?id=2 HTTP/1.1\r\nHost: a\r\n\r\n");
    d = take_parked(2);
    finish_text(d, 200, "racing");
    client_close(&c);

    /* The server is fine. */
    client_open(&c, f->port);
    client_send(&c, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n");
    expect(&c, "GET", 200, "GET /ok  0:");
    client_close(&c);
}

struct finisher {
    int *order;
    int from, to;
};

static void *finisher_main(void *arg)
{
    struct finisher *fi = arg;
    for (int i = fi->from; i < fi->to; i++) {
        char text[32];
        snprintf(text, sizeof(text), "answer %d", fi->order[i]);
        finish_text(take_parked(fi->order[i]), 200, text);
    }
    return NULL;
}

static void test_deferred_many(void **state)
{
    struct fixture *f = *state;
    enum { N = 500 };
    struct client *cl = calloc(N, sizeof(*cl));
    int *order = calloc(N, sizeof(*order));
    assert_non_null(cl);
    assert_non_null(order);
    for (int i = 0; i < N; i++) {
        char req[64];
        client_open(&cl[i], f->port);
        snprintf(req, sizeof(req), "GET /park?id=%d HTTP/1.1\r\nHost: a\r\n\r\n", i);
        client_send(&cl[i], req);
        order[i] = i;
    }
    /* Every one is parked before any is answered. */
    for (int i = 0; i < 400; i++) {
        int n = 0;
        pthread_mutex_lock(&park_mu);
        for (int k = 0; k < N; k++)
            n += parked[k] != NULL;
        pthread_mutex_unlock(&park_mu);
        if (n == N)
            break;
        usleep(5000);
    }
    srand(42);
    for (int i = N - 1; i > 0; i--) {
        int j = rand() % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    /* Finished in random order from two threads at once. */
    struct finisher fa = {order, 0, N / 2}, fb = {order, N / 2, N};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, finisher_main, &fa), 0);
    assert_int_equal(pthread_create(&tb, NULL, finisher_main, &fb), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    for (int k = 0; k < N; k++) {
        int i = order[(k * 7) % N];
        char want[32];
        snprintf(want, sizeof(want), "answer %d", i);
        expect(&cl[i], "GET", 200, want);
        client_close(&cl[i]);
    }
    free(order);
    free(cl);
}

static void test_deferred_pipelined(void **state)
{
    struct fixture *f = *state;
    struct client c;
    client_open(&c, f->port);
    client_send(&c, "GET /before HTTP/1.1\r\nHost: a\r\n\r\n"
                    "GET /park?id=0 HTTP/1.1\r\nHost: a\r\n\r\n"
                    "POST /after HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                    "GET /park?id=1 HTTP/1.1\r\nHost: a\r\n\r\n"
                    "GET /last HTTP/1.1\r\nHost: a\r\n\r\n");
    expect(&c, "GET", 200, "GET /before  0:");
    struct polis_deferred *d0 = take_parked(0);
    /* Nothing behind the deferred request is answered meanwhile (nor parked). */
    assert_true(client_quiet(&c, 200));
    pthread_mutex_lock(&park_mu);
    assert_null(parked[1]);
    pthread_mutex_unlock(&park_mu);
    finish_text(d0, 200, "first deferred");
    expect(&c, "GET", 200, "first deferred");
    expect(&c, "POST", 200, "POST /after  3:abc");
    struct polis_deferred *d1 = take_parked(1);
    assert_true(client_quiet(&c, 100));
    finish_text(d1, 201, "second deferred");
    struct resp r;
    client_response(&c, &r, false);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "second deferred");
    free(r.body);
    expect(&c, "GET", 200, "GET /last  0:");

    /* Connection: close on the deferred request: answered, then closed; the rest is dropped. */
    client_send(&c, "GET /park?id=2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                    "GET /never HTTP/1.1\r\nHost: a\r\n\r\n");
    finish_text(take_parked(2), 200, "bye");
    client_response(&c, &r, false);
    assert_string_equal(r.body, "bye");
    assert_non_null(strstr(r.head, "\r\nConnection: close\r\n"));
    free(r.body);
    assert_true(client_sees_eof(&c, 3000));
    client_close(&c);
}

static void test_deferred_stop(void **state)
{
    struct fixture *f = *state;
    struct client a, b, gone;
    client_open(&a, f->port);
    client_open(&b, f->port);
    client_open(&gone, f->port);
    client_send(&a, "GET /park?id=0 HTTP/1.1\r\nHost: a\r\n\r\n");
    client_send(&b, "GET /park?id=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    client_send(&gone, "GET /park?id=2 HTTP/1.1\r\nHost: a\r\n\r\n");
    struct polis_deferred *d0 = take_parked(0), *d1 = take_parked(1), *d2 = take_parked(2);
    client_close(&gone);
    /* One answer races with the stop. */
    struct late_finish lf = {d1, 0, "raced"};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, late_finish_main, &lf), 0);
    uint64_t t0 = now_ms();
    polis_server_stop(f->srv);
    f->srv = NULL;
    assert_true(now_ms() - t0 < 1000); /* no wait for the deferred answers */
    pthread_join(tid, NULL);

    struct resp r;
    client_response(&a, &r, false);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "\"error\":\"shutting_down\""));
    assert_non_null(strstr(r.head, "\r\nConnection: close\r\n"));
    free(r.body);
    assert_true(client_sees_eof(&a, 2000));
    client_response(&b, &r, false);
    assert_true(r.status == 503 || (r.status == 200 && strcmp(r.body, "raced") == 0));
    free(r.body);
    client_close(&a);
    client_close(&b);
    /* After the server is gone, finishing only frees (ASan checks). */
    finish_text(d0, 200, "too late");
    finish_text(d2, 200, "too late");
}

/* Read the rendered metrics; return the value of the line starting with prefix, or -1. */
static double metric_value(struct polis_metrics *m, const char *prefix)
{
    struct polis_buf out;
    polis_buf_init(&out, 1 << 20);
    assert_int_equal(polis_metrics_render(m, &out), 0);
    assert_int_equal(polis_buf_append(&out, "", 1), 0);
    double v = -1;
    const char *p = strstr(polis_buf_head(&out), prefix);
    if (p != NULL)
        v = strtod(p + strlen(prefix), NULL);
    polis_buf_free(&out);
    return v;
}

static void test_deferred_metrics_and_trace(void **state)
{
    (void)state;
    /* A tracer whose collector is down: spans are counted as submitted, then dropped. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t sl = sizeof(sa);
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    close(lfd);
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d/v1/traces", ntohs(sa.sin_port));
    struct polis_tracer_opts topts = {
        .endpoint = endpoint, .service_name = "test", .sample_ratio = 1.0, .timeout_ms = 200};
    struct polis_tracer *tracer;
    assert_int_equal(polis_tracer_start(&topts, &tracer), 0);
    struct polis_metrics *m = polis_metrics_new();
    assert_non_null(m);
    struct polis_server_opts opts = {
        .listen = "127.0.0.1:0", .threads = 1, .handler = handler, .metrics = m, .tracer = tracer};
    struct polis_server *srv;
    assert_int_equal(polis_server_start(&opts, &srv), 0);

    struct client c;
    client_open(&c, polis_server_port(srv));
    client_send(&c, "GET /park?id=0 HTTP/1.1\r\nHost: a\r\n\r\n");
    struct polis_deferred *d = take_parked(0);
    usleep(250000);
    struct polis_tracer_stats st0, st1;
    polis_tracer_stats(tracer, &st0);
    /* Not counted nor traced while deferred. */
    assert_true(metric_value(m, "polis_server_requests_total{status_class=\"2xx\"} ") <= 0);
    finish_text(d, 202, "done");
    expect(&c, "GET", 202, "done");
    polis_tracer_stats(tracer, &st1);
    assert_int_equal(st1.submitted - st0.submitted, 1);
    assert_true(metric_value(m, "polis_server_requests_total{status_class=\"2xx\"} ") == 1);
    double sum = metric_value(m, "polis_server_request_duration_seconds_sum ");
    assert_true(sum >= 0.24 && sum < 5);

    /* A client gone before the answer: counted when the answer comes. */
    client_send(&c, "GET /park?id=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    d = take_parked(1);
    client_close(&c);
    usleep(50000);
    polis_tracer_stats(tracer, &st0);
    finish_text(d, 404, "gone");
    for (int i = 0; i < 200; i++) {
        if (metric_value(m, "polis_server_requests_total{status_class=\"4xx\"} ") == 1)
            break;
        usleep(5000);
    }
    assert_true(metric_value(m, "polis_server_requests_total{status_class=\"4xx\"} ") == 1);
    polis_tracer_stats(tracer, &st1);
    assert_int_equal(st1.submitted - st0.submitted, 1);

    polis_server_stop(srv);
    polis_tracer_stop(tracer);
    polis_metrics_free(m);
}

int main(void)
{
    polis_log_set_level(POLIS_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_simple_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_content_length_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_too_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_api, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup_short_timeouts, teardown),
        cmocka_unit_test_setup_teardown(test_header_timeout, setup_short_timeouts, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_idle_connection, setup, teardown),
        cmocka_unit_test(test_start_errors),
        cmocka_unit_test_setup_teardown(test_deferred_from_thread, setup_short_timeouts, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_client_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_stop, setup, teardown),
        cmocka_unit_test(test_deferred_metrics_and_trace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
