/* Unit tests of the SDK's HTTP server (lib/sdk/server.c) over real loopback sockets. */
#include <polis/http.h>

#include <arpa/inet.h>
#include <errno.h>
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
