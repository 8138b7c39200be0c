/* Unit tests of the HTTP/1.1 head parser: tables of good and bad requests and responses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <polis/http.h>
#include "http/h1-internal.h"

#define NHDR 32
#define ANY (-99)

static const struct polis_h1_limits lim = {
    .max_request_line = 256,
    .max_head = 2048,
    .max_headers = 16,
};

struct rcase {
    const char *msg;
    size_t len;
    int rc;
    int body; /* expected body kind on success, ANY to skip */
    int keep_alive;
};

#define M(s) s, sizeof(s) - 1
#define H "Host: example.com\r\n"

static const struct rcase requests[] = {
    /* good */
    {M("GET / HTTP/1.1\r\n" H "\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("GET /a/b?c=d&e HTTP/1.1\r\n" H "User-Agent: x\r\nAccept: */*\r\n\r\n"), 0, POLIS_BODY_NONE,
     1},
    {M("GET / HTTP/1.0\r\n\r\n"), 0, POLIS_BODY_NONE, 0},
    {M("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("GET / HTTP/1.1\r\n" H "Connection: close\r\n\r\n"), 0, POLIS_BODY_NONE, 0},
    {M("GET / HTTP/1.1\r\n" H "Connection: keep-alive, close\r\n\r\n"), 0, POLIS_BODY_NONE, 0},
    {M("GET / HTTP/1.1\r\n" H "Connection: ,, Close ,\r\n\r\n"), 0, POLIS_BODY_NONE, 0},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 5\r\n\r\nhello"), 0, POLIS_BODY_LENGTH, 1},
    {M("POST / HTTP/1.1\r\n" H "Content-Length:  5 \t\r\n\r\n"), 0, POLIS_BODY_LENGTH, 1},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 0\r\n\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 9999999999999999999\r\n\r\n"), 0, POLIS_BODY_LENGTH,
     1},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\n\r\n"), 0, POLIS_BODY_CHUNKED, 1},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: Chunked\r\n\r\n"), 0, POLIS_BODY_CHUNKED, 1},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked \r\n\r\n"), 0, POLIS_BODY_CHUNKED, 1},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding:\tchunked\r\n\r\n"), 0, POLIS_BODY_CHUNKED, 1},
    {M("GET http://example.com/x HTTP/1.1\r\n" H "\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("GET HTTPS://example.com:8443 HTTP/1.1\r\n" H "\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("GET http://[::1]:80/?q HTTP/1.1\r\n" H "\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("OPTIONS * HTTP/1.1\r\n" H "\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n"), 0, POLIS_BODY_NONE,
     1},
    {M("\r\nGET / HTTP/1.1\r\n" H "\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" H "\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("GET / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("GET / HTTP/1.1\r\nHost: a-b.c_d~e%41\r\n\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("GET / HTTP/1.1\r\n" H "X-Empty:\r\nX-Obs: caf\xc3\xa9\r\n\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("M-SEARCH / HTTP/1.1\r\n" H "\r\n"), 0, POLIS_BODY_NONE, 1},
    {M("GET / HTTP/1.1\r\n" H "Expect: 100-Continue\r\nContent-Length: 3\r\n\r\n"), 0,
     POLIS_BODY_LENGTH, 1},
    {M("GET / HTTP/1.1\r\n" H "X-A: a\tb  c\r\n\r\n"), 0, POLIS_BODY_NONE, 1},

    /* framing */
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
     POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"),
     POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 5\r\nContent-Length: 5\r\n\r\n"), POLIS_EBADMSG,
     ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: +5\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: -5\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 5 5\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 5,5\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 0x5\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Content-Length:\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 18446744073709551616\r\n\r\n"), POLIS_EBADMSG, ANY,
     ANY},
    {M("POST / HTTP/1.1\r\n" H "Content-Length: 00000000000000000005\r\n\r\n"), POLIS_EBADMSG, ANY,
     ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked,chunked\r\n\r\n"), POLIS_EBADMSG, ANY,
     ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
     POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: x-chunked\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: xchunked\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked;q=1\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: identity\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: gzip, chunked\r\n\r\n"), POLIS_EBADMSG, ANY,
     ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding:\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked,\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.1\r\n" H "Transfer-Encoding: \"chunked\"\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "Connection: content-length\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "Connection: Transfer-Encoding\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "Connection: close, host\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "Connection: a b\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},

    /* syntax */
    {M("GET / HTTP/1.1\r\n" H "X-Fold: a\r\n b\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H " X-Lead: a\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "X-Sp : a\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "X-Tab\t: a\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H ": a\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "X(a): a\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "NoColon\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "X-Nul: a\0b\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "X-Cr: a\rb\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "X-Ctl: a\x01z\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "X-Del: a\x7fz\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "X-Lf: a\nX-B: b\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\n\n"), POLIS_EBADMSG, ANY, ANY},
    {M("\nGET / HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "\r\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H "\rX: a\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},

    /* request line */
    {M("GET  / HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET /  HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1 \r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M(" GET / HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET\t/ HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("G(T / HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET /a b HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET /\x7f HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET /\x80 HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET /\x01 HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET /a#frag HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/2.0\r\n" H "\r\n"), POLIS_EVERSION, ANY, ANY},
    {M("GET / HTTP/1.2\r\n" H "\r\n"), POLIS_EVERSION, ANY, ANY},
    {M("GET / HTTP/0.9\r\n" H "\r\n"), POLIS_EVERSION, ANY, ANY},
    {M("GET / HTTP/1.10\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / http/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.x\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/2\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET /\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET * HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("OPTIONS *x HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET example.com:443 HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("CONNECT / HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("CONNECT example.com HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("CONNECT user@example.com:443 HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET ftp://example.com/ HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET http:///x HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET http://u@example.com/ HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET x HTTP/1.1\r\n" H "\r\n"), POLIS_EBADMSG, ANY, ANY},

    /* Host */
    {M("GET / HTTP/1.1\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\n" H H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.0\r\n" H H "\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\nHost: a:80:80\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
    {M("GET / HTTP/1.1\r\nHost: a\xc3\xa9\r\n\r\n"), POLIS_EBADMSG, ANY, ANY},
};

static void check_views(const char *buf, size_t head_len, const struct polis_h1_msg *m)
{
    for (size_t i = 0; i < m->num_headers; i++) {
        const struct polis_h1_header *h = &m->headers[i];
        assert_true(h->name.p >= buf && h->name.p + h->name.len <= buf + head_len);
        assert_true(h->value.p >= buf && h->value.p + h->value.len <= buf + head_len);
    }
}

static int parse_req(const char *msg, size_t len, struct polis_h1_msg *m,
                     struct polis_h1_header *hdrs, size_t *head_len)
{
    size_t scan = 0;
    memset(m, 0, sizeof(*m));
    m->headers = hdrs;
    return polis_h1_parse_request(msg, len, &scan, m, NHDR, &lim, head_len);
}

static void test_request_table(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof(requests) / sizeof(requests[0]); k++) {
        const struct rcase *c = &requests[k];
        struct polis_h1_header hdrs[NHDR];
        struct polis_h1_msg m;
        size_t head_len = 0;
        /* A heap copy of the exact size: ASan catches any read past the end. */
        char *buf = malloc(c->len);
        assert_non_null(buf);
        memcpy(buf, c->msg, c->len);
        int rc = parse_req(buf, c->len, &m, hdrs, &head_len);
        if (rc != c->rc)
            print_error("case %zu: \"%.*s\": rc %d, want %d\n", k, (int)c->len, c->msg, rc, c->rc);
        assert_int_equal(rc, c->rc);
        if (rc == 0) {
            assert_true(head_len <= c->len);
            assert_memory_equal(buf + head_len - 4, "\r\n\r\n", 4);
            check_views(buf, head_len, &m);
            if (c->body != ANY)
                assert_int_equal(m.body, c->body);
            if (c->keep_alive != ANY)
                assert_int_equal(m.keep_alive, c->keep_alive);
        }
        free(buf);
    }
}

/* Feed every case one byte at a time: EAGAIN until the whole message is there, *scan never
 * goes back and stays within 2 bytes of the end, and the outcome matches the one-shot parse. */
static void test_request_bytewise(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof(requests) / sizeof(requests[0]); k++) {
        const struct rcase *c = &requests[k];
        struct polis_h1_header hdrs[NHDR];
        struct polis_h1_msg m;
        size_t scan = 0, head_len = 0, prev_scan = 0;
        int rc = POLIS_EAGAIN;
        size_t n;
        memset(&m, 0, sizeof(m));
        m.headers = hdrs;
        for (n = 1; n <= c->len; n++) {
            char *buf = malloc(n);
            memcpy(buf, c->msg, n);
            rc = polis_h1_parse_request(buf, n, &scan, &m, NHDR, &lim, &head_len);
            free(buf);
            if (rc != POLIS_EAGAIN)
                break;
            assert_true(scan >= prev_scan);
            assert_true(scan + 2 >= n);
            assert_true(scan <= n);
            prev_scan = scan;
        }
        if (c->rc == 0) {
            assert_int_equal(rc, 0);
            assert_int_equal(head_len, n);
        } else {
            assert_true(rc < 0 && rc != POLIS_EAGAIN);
        }
    }
}

static void test_request_fields(void **state)
{
    (void)state;
    static const char msg[] = "\r\nPOST /up?x=1 HTTP/1.1\r\n"
                              "host: Example.com:8080\r\n"
                              "Content-Length: 11\r\n"
                              "Connection: keep-alive, X-Secret ,Upgrade\r\n"
                              "Upgrade: websocket\r\n"
                              "x-secret: 1\r\n"
                              "X-Forwarded-For: 1.2.3.4\r\n"
                              "TE: trailers\r\n"
                              "Expect: 100-continue\r\n"
                              "X-Secret: 2\r\n"
                              "Cookie:   a=b  \r\n"
                              "\r\nhello world";
    struct polis_h1_header hdrs[NHDR];
    struct polis_h1_msg m;
    size_t head_len;
    assert_int_equal(parse_req(msg, sizeof(msg) - 1, &m, hdrs, &head_len), 0);
    assert_int_equal(head_len, sizeof(msg) - 1 - 11);
    assert_int_equal(m.method.len, 4);
    assert_memory_equal(m.method.p, "POST", 4);
    assert_int_equal(m.target.len, 7);
    assert_memory_equal(m.target.p, "/up?x=1", 7);
    assert_int_equal(m.minor_version, 1);
    assert_int_equal(m.num_headers, 10);
    assert_int_equal(m.body, POLIS_BODY_LENGTH);
    assert_int_equal(m.content_length, 11);
    assert_true(m.keep_alive);
    assert_true(m.expect_continue);
    assert_true(m.upgrade);
    assert_true(m.has_connection_tokens);
    assert_int_equal(m.hdr_index[POLIS_HDR_HOST], 0);
    assert_int_equal(m.hdr_index[POLIS_HDR_CONTENT_LENGTH], 1);
    assert_int_equal(m.hdr_index[POLIS_HDR_CONNECTION], 2);
    assert_int_equal(m.hdr_index[POLIS_HDR_UPGRADE], 3);
    assert_int_equal(m.hdr_index[POLIS_HDR_X_FORWARDED_FOR], 5);
    assert_int_equal(m.hdr_index[POLIS_HDR_TE], 6);
    assert_int_equal(m.hdr_index[POLIS_HDR_EXPECT], 7);
    assert_int_equal(m.hdr_index[POLIS_HDR_COOKIE], 9);
    assert_int_equal(m.hdr_index[POLIS_HDR_VIA], -1);
    assert_int_equal(m.hdr_index[POLIS_HDR_TRANSFER_ENCODING], -1);
    assert_int_equal(m.hdr_index[POLIS_HDR_OTHER], -1);
    static const bool hop[10] = {false, false, true, true, true, false, true, false, true, false};
    for (int i = 0; i < 10; i++)
        assert_int_equal(hdrs[i].hop, hop[i]);
    assert_int_equal(hdrs[0].id, POLIS_HDR_HOST);
    assert_int_equal(hdrs[4].id, POLIS_HDR_OTHER);
    assert_int_equal(hdrs[9].value.len, 3);
    assert_memory_equal(hdrs[9].value.p, "a=b", 3);
    assert_int_equal(hdrs[0].value.len, 16);
    assert_memory_equal(hdrs[0].value.p, "Example.com:8080", 16);
}

static void test_header_ids(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int id;
    } ids[] = {
        {"Host", POLIS_HDR_HOST},
        {"CONTENT-LENGTH", POLIS_HDR_CONTENT_LENGTH},
        {"transfer-encoding", POLIS_HDR_TRANSFER_ENCODING},
        {"Connection", POLIS_HDR_CONNECTION},
        {"Keep-Alive", POLIS_HDR_KEEP_ALIVE},
        {"te", POLIS_HDR_TE},
        {"Trailer", POLIS_HDR_TRAILER},
        {"Upgrade", POLIS_HDR_UPGRADE},
        {"Proxy-Connection", POLIS_HDR_PROXY_CONNECTION},
        {"Expect", POLIS_HDR_EXPECT},
        {"X-Forwarded-For", POLIS_HDR_X_FORWARDED_FOR},
        {"X-Forwarded-Proto", POLIS_HDR_X_FORWARDED_PROTO},
        {"X-Forwarded-Host", POLIS_HDR_X_FORWARDED_HOST},
        {"X-Request-Id", POLIS_HDR_X_REQUEST_ID},
        {"Via", POLIS_HDR_VIA},
        {"Cookie", POLIS_HDR_COOKIE},
        {"Cookies", POLIS_HDR_OTHER},
        {"Hosts", POLIS_HDR_OTHER},
        {"Content-Lengt", POLIS_HDR_OTHER},
        {"Content_Length", POLIS_HDR_OTHER},
        {"X-Forwarded-Fox", POLIS_HDR_OTHER},
        {"Tf", POLIS_HDR_OTHER},
    };
    for (size_t k = 0; k < sizeof(ids) / sizeof(ids[0]); k++) {
        char msg[256];
        int n = snprintf(msg, sizeof(msg), "GET / HTTP/1.0\r\n%s: 1\r\n\r\n", ids[k].name);
        struct polis_h1_header hdrs[NHDR];
        struct polis_h1_msg m;
        size_t head_len;
        int rc = parse_req(msg, (size_t)n, &m, hdrs, &head_len);
        if (ids[k].id == POLIS_HDR_TRANSFER_ENCODING || ids[k].id == POLIS_HDR_CONTENT_LENGTH) {
            /* TE in 1.0 is refused; "1" is a valid length */
            if (ids[k].id == POLIS_HDR_TRANSFER_ENCODING) {
                assert_int_equal(rc, POLIS_EBADMSG);
                continue;
            }
        }
        assert_int_equal(rc, 0);
        assert_int_equal(hdrs[0].id, ids[k].id);
        if (ids[k].id != POLIS_HDR_OTHER)
            assert_int_equal(m.hdr_index[ids[k].id], 0);
    }
}

static void test_limits(void **state)
{
    (void)state;
    struct polis_h1_header hdrs[NHDR];
    struct polis_h1_msg m;
    size_t head_len, scan;
    char buf[4096];
    int n;

    /* A request line of exactly 256 bytes passes, 257 is 414. */
    n = snprintf(buf, sizeof(buf), "GET /%0*d HTTP/1.1\r\nHost: a\r\n\r\n", 256 - 14, 0);
    assert_int_equal(parse_req(buf, (size_t)n, &m, hdrs, &head_len), 0);
    n = snprintf(buf, sizeof(buf), "GET /%0*d HTTP/1.1\r\nHost: a\r\n\r\n", 257 - 14, 0);
    assert_int_equal(parse_req(buf, (size_t)n, &m, hdrs, &head_len), POLIS_EURITOOLONG);
    /* An incomplete request line already over the limit is 414 at once. */
    memset(buf, 'a', 300);
    memcpy(buf, "GET /", 5);
    assert_int_equal(parse_req(buf, 257, &m, hdrs, &head_len), POLIS_EAGAIN);
    assert_int_equal(parse_req(buf, 258, &m, hdrs, &head_len), POLIS_EURITOOLONG);
    /* ... also when it was fed in pieces. */
    memset(&m, 0, sizeof(m));
    m.headers = hdrs;
    scan = 0;
    assert_int_equal(polis_h1_parse_request(buf, 100, &scan, &m, NHDR, &lim, &head_len),
                     POLIS_EAGAIN);
    assert_int_equal(scan, 100);
    assert_int_equal(polis_h1_parse_request(buf, 300, &scan, &m, NHDR, &lim, &head_len),
                     POLIS_EURITOOLONG);

    /* 16 headers pass, 17 are 431 (the limit is the smaller of the array and lim). */
    n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < 15; i++)
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, "X-%d: v\r\n", i);
    memcpy(buf + n, "\r\n", 2);
    assert_int_equal(parse_req(buf, (size_t)n + 2, &m, hdrs, &head_len), 0);
    assert_int_equal(m.num_headers, 16);
    n += snprintf(buf + n, sizeof(buf) - (size_t)n, "X-x: v\r\n\r\n");
    assert_int_equal(parse_req(buf, (size_t)n, &m, hdrs, &head_len), POLIS_EHDRTOOBIG);
    scan = 0;
    memset(&m, 0, sizeof(m));
    m.headers = hdrs;
    assert_int_equal(polis_h1_parse_request(buf, (size_t)n, &scan, &m, 4, &lim, &head_len),
                     POLIS_EHDRTOOBIG);

    /* Head of 2048 bytes passes, 2049 is 431; an incomplete head past 2048 is 431 at once. */
    n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    int fill = 2048 - n - 4;
    memset(buf + n, 'v', (size_t)fill);
    memcpy(buf + n + fill, "\r\n\r\n", 4);
    assert_int_equal(parse_req(buf, 2048, &m, hdrs, &head_len), 0);
    assert_int_equal(head_len, 2048);
    memset(buf + n, 'v', (size_t)fill + 1);
    memcpy(buf + n + fill + 1, "\r\n\r\n", 4);
    assert_int_equal(parse_req(buf, 2049, &m, hdrs, &head_len), POLIS_EHDRTOOBIG);
    assert_int_equal(parse_req(buf, 2047, &m, hdrs, &head_len), POLIS_EAGAIN);
    assert_int_equal(parse_req(buf, 2048, &m, hdrs, &head_len), POLIS_EHDRTOOBIG);

    /* NULL limits: defaults (8 KiB line, 64 KiB head), the array bounds the count. */
    scan = 0;
    static const char ok[] = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    assert_int_equal(polis_h1_parse_request(ok, sizeof(ok) - 1, &scan, &m, 2, NULL, &head_len),
                     POLIS_EHDRTOOBIG);
    scan = 0;
    assert_int_equal(polis_h1_parse_request(ok, sizeof(ok) - 1, &scan, &m, 3, NULL, &head_len), 0);
}

/* The end-of-head search never looks at a byte twice: after each EAGAIN, *scan is at most two
 * bytes behind the end (an LF whose next bytes were not there yet). */
static void test_scan_resumes(void **state)
{
    (void)state;
    static const char msg[] = "GET /x HTTP/1.1\r\nHost: h\r\nA: b\r\n\r\nBODY";
    struct polis_h1_header hdrs[NHDR];
    struct polis_h1_msg m;
    size_t scan = 0, head_len = 0;
    memset(&m, 0, sizeof(m));
    m.headers = hdrs;
    size_t end = sizeof(msg) - 1 - 4;
    for (size_t n = 1; n < end; n++) {
        assert_int_equal(polis_h1_parse_request(msg, n, &scan, &m, NHDR, &lim, &head_len),
                         POLIS_EAGAIN);
        if (msg[n - 1] != '\n' && msg[n - 1] != '\r')
            assert_int_equal(scan, n);
    }
    assert_int_equal(polis_h1_parse_request(msg, end + 4, &scan, &m, NHDR, &lim, &head_len), 0);
    assert_int_equal(head_len, end);
    /* A *scan beyond the data is a caller error. */
    scan = 100;
    assert_int_equal(polis_h1_parse_request(msg, 10, &scan, &m, NHDR, &lim, &head_len),
                     POLIS_EINVAL);
}

struct scase {
    const char *msg;
    size_t len;
    bool head;
    int rc;
    int status;
    int body;
    uint64_t cl;
    int keep_alive;
};

static const struct scase responses[] = {
    {M("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), false, 0, 200, POLIS_BODY_LENGTH, 5,
     1},
    {M("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), false, 0, 200, POLIS_BODY_NONE, 0, 1},
    {M("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), true, 0, 200, POLIS_BODY_NONE, 0, 1},
    {M("HTTP/1.1 200 OK\r\n\r\n"), false, 0, 200, POLIS_BODY_CLOSE, 0, 0},
    {M("HTTP/1.1 200 OK\r\n\r\n"), true, 0, 200, POLIS_BODY_NONE, 0, 1},
    {M("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"), false, 0, 200, POLIS_BODY_LENGTH, 1, 0},
    {M("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"), false, 0, 200,
     POLIS_BODY_LENGTH, 1, 1},
    {M("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), false, 0, 200, POLIS_BODY_CHUNKED,
     0, 1},
    {M("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), false, 0, 200,
     POLIS_BODY_CHUNKED, 0, 1},
    {M("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"), false,
     0, 200, POLIS_BODY_CHUNKED, 0, 1},
    {M("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), false, 0, 200,
     POLIS_BODY_CLOSE, 0, 0},
    {M("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip;level=\"a,b\" , chunked\r\n\r\n"), false, 0, 200,
     POLIS_BODY_CHUNKED, 0, 1},
    {M("HTTP/1.1 100 Continue\r\n\r\n"), false, 0, 100, POLIS_BODY_NONE, 0, 1},
    {M("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
     false, 0, 101, POLIS_BODY_NONE, 0, 1},
    {M("HTTP/1.1 204 No Content\r\n\r\n"), false, 0, 204, POLIS_BODY_NONE, 0, 1},
    {M("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n"), false, 0, 304, POLIS_BODY_NONE,
     0, 1},
    {M("HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n"), false, 0, 200, POLIS_BODY_LENGTH, 1, 1},
    {M("HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\n"), false, 0, 200, POLIS_BODY_LENGTH, 1, 1},
    {M("HTTP/1.1 999 Whatever it is\r\nContent-Length: 1\r\n\r\n"), false, 0, 999,
     POLIS_BODY_LENGTH, 1, 1},
    {M("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"), false, 0, 200,
     POLIS_BODY_LENGTH, 1, 0},
    {M("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), false,
     POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 204 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), false,
     POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"), false, POLIS_EBADMSG,
     0, 0, 0, 0},
    {M("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), false, POLIS_EBADMSG, 0,
     0, 0, 0},
    {M("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,,chunked\r\n\r\n"), false, POLIS_EBADMSG, 0, 0,
     0, 0},
    {M("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip;x\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip;x=\"a\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0,
     0},
    {M("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 099 Low\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 20 OK\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 2000 OK\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1  200 OK\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 200 O\x01K\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/2.0 200 OK\r\n\r\n"), false, POLIS_EVERSION, 0, 0, 0, 0},
    {M("HTTP/2 200 OK\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("http/1.1 200 OK\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 200 OK\n\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("\r\nHTTP/1.1 200 OK\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
    {M("HTTP/1.1 200 OK\r\nConnection: Content-Length\r\n\r\n"), false, POLIS_EBADMSG, 0, 0, 0, 0},
};

static void test_response_table(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof(responses) / sizeof(responses[0]); k++) {
        const struct scase *c = &responses[k];
        struct polis_h1_header hdrs[NHDR];
        struct polis_h1_msg m;
        size_t scan = 0, head_len = 0;
        char *buf = malloc(c->len);
        memcpy(buf, c->msg, c->len);
        memset(&m, 0, sizeof(m));
        m.headers = hdrs;
        int rc = polis_h1_parse_response(buf, c->len, &scan, &m, NHDR, &lim, c->head, &head_len);
        if (rc != c->rc)
            print_error("case %zu: \"%.*s\": rc %d, want %d\n", k, (int)c->len, c->msg, rc, c->rc);
        assert_int_equal(rc, c->rc);
        if (rc == 0) {
            assert_int_equal(m.status, c->status);
            assert_int_equal(m.body, c->body);
            assert_int_equal(m.content_length, c->cl);
            assert_int_equal(m.keep_alive, c->keep_alive);
            check_views(buf, head_len, &m);
        }
        /* The same outcome fed one byte at a time (errors may differ only in kind). */
        size_t n;
        scan = 0;
        for (n = 1; n <= c->len; n++) {
            rc = polis_h1_parse_response(buf, n, &scan, &m, NHDR, &lim, c->head, &head_len);
            if (rc != POLIS_EAGAIN)
                break;
        }
        if (c->rc == 0)
            assert_int_equal(rc, 0);
        else
            assert_true(rc < 0 && rc != POLIS_EAGAIN);
        free(buf);
    }
}

static void test_response_fields(void **state)
{
    (void)state;
    static const char msg[] = "HTTP/1.1 404 Not  Found \r\nX-A: 1\r\nConnection: x-a\r\n"
                              "Content-Length: 3\r\n\r\nabc";
    struct polis_h1_header hdrs[NHDR];
    struct polis_h1_msg m;
    size_t scan = 0, head_len;
    memset(&m, 0, sizeof(m));
    m.headers = hdrs;
    assert_int_equal(
        polis_h1_parse_response(msg, sizeof(msg) - 1, &scan, &m, NHDR, &lim, false, &head_len), 0);
    assert_int_equal(m.status, 404);
    assert_int_equal(m.reason.len, 11);
    assert_memory_equal(m.reason.p, "Not  Found ", 11);
    assert_int_equal(head_len, sizeof(msg) - 1 - 3);
    assert_true(hdrs[0].hop);
    assert_true(m.has_connection_tokens);
    assert_false(hdrs[2].hop);
}

static void test_reason(void **state)
{
    (void)state;
    assert_string_equal(polis_http_reason(200), "OK");
    assert_string_equal(polis_http_reason(404), "Not Found");
    assert_string_equal(polis_http_reason(413), "Content Too Large");
    assert_string_equal(polis_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(polis_http_reason(505), "HTTP Version Not Supported");
    assert_string_equal(polis_http_reason(511), "Network Authentication Required");
    assert_string_equal(polis_http_reason(299), "Unknown");
    assert_string_equal(polis_http_reason(-1), "Unknown");
}

/* The vector scanners of lib/http/h1-parse.c (internal, not in a public header): kind 0 LF,
 * 1 field-value, 2 request-target, 3 token, 4 reg-name but '%'; fast (SIMD or SWAR) or the
 * scalar twin; loads allowed in [lo, hi); returns the offset of the stop byte from p. */

/* Every scanner agrees with its scalar twin at every start offset and length 0..64, on random
 * and adversarial bytes, in an exact-size heap buffer (ASan catches any load outside it). */
static void test_scanners(void **state)
{
    (void)state;
    static const char special[] = {'\r', '\n', '\0', 0x7f, (char)0x80, (char)0xff, ':', ' ',
                                   '\t', '#',  '%',  '/',  '@',        '"',        '(', 0x1f};
    static const char run[] = "abcxyzABCXYZ0189-._~!$&'*+^`|()[];=,?";
    uint32_t seed = 2463534242u;
    for (int round = 0; round < 48; round++) {
        /* round 0..7: how often a special byte appears (never .. always); 8: any byte */
        int mode = round % 9;
        for (size_t len = 0; len <= 64; len++) {
            char *buf = malloc(len ? len : 1);
            assert_non_null(buf);
            for (size_t i = 0; i < len; i++) {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                if (mode == 8)
                    buf[i] = (char)(seed >> 24);
                else if ((int)((seed >> 8) % 8) < mode)
                    buf[i] = special[(seed >> 16) % sizeof(special)];
                else
                    buf[i] = run[(seed >> 16) % (sizeof(run) - 1)];
            }
            for (size_t off = 0; off <= len; off++) {
                for (int kind = 0; kind < 5; kind++) {
                    const char *p = buf + off, *hi = buf + len;
                    size_t want = polis__h1_scan(kind, false, buf, p, hi);
                    assert_true(want <= len - off);
                    assert_int_equal(polis__h1_scan(kind, true, buf, p, hi), want);
                    assert_int_equal(polis__h1_scan(kind, true, p, p, hi), want);
                }
            }
            free(buf);
        }
    }
}

/* The one-pass path (a whole head in the first call) and the two-phase path (the same head
 * after a leading empty line, or resumed with *scan > 0) agree on every field. */
static void test_paths_agree(void **state)
{
    (void)state;
    static const char *const heads[] = {
        "GET /a?b HTTP/1.1\r\nHost: x.example\r\nConnection: Keep-Alive\r\nX-A:  v \t\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive, x-b\r\nX-B: 1\r\n\r\n",
        "POST /p HTTP/1.1\r\nHost: [::1]:8080\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET http://a.b:81/x HTTP/1.1\r\nhost: a.b:81\r\nx_y.z~!: \x80\xff\r\n\r\n",
    };
    for (size_t k = 0; k < sizeof(heads) / sizeof(heads[0]); k++) {
        size_t n = strlen(heads[k]);
        char *one = malloc(n), *two = malloc(n + 2);
        assert_non_null(one);
        assert_non_null(two);
        memcpy(one, heads[k], n);
        memcpy(two, "\r\n", 2);
        memcpy(two + 2, heads[k], n);
        struct polis_h1_header h1[NHDR], h2[NHDR];
        struct polis_h1_msg m1 = {.headers = h1}, m2 = {.headers = h2};
        size_t s1 = 0, s2 = 0, l1 = 0, l2 = 0;
        assert_int_equal(polis_h1_parse_request(one, n, &s1, &m1, NHDR, &lim, &l1), 0);
        assert_int_equal(polis_h1_parse_request(two, n + 2, &s2, &m2, NHDR, &lim, &l2), 0);
        assert_int_equal(l1 + 2, l2);
        assert_int_equal(l1, n);
        assert_int_equal(m1.method.p - one, m2.method.p - two - 2);
        assert_int_equal(m1.target.len, m2.target.len);
        assert_int_equal(m1.num_headers, m2.num_headers);
        assert_int_equal(m1.keep_alive, m2.keep_alive);
        assert_int_equal(m1.body, m2.body);
        assert_int_equal(m1.has_connection_tokens, m2.has_connection_tokens);
        assert_memory_equal(m1.hdr_index, m2.hdr_index, sizeof(m1.hdr_index));
        for (size_t i = 0; i < m1.num_headers; i++) {
            assert_int_equal(h1[i].name.p - one, h2[i].name.p - two - 2);
            assert_int_equal(h1[i].value.p - one, h2[i].value.p - two - 2);
            assert_int_equal(h1[i].name.len, h2[i].name.len);
            assert_int_equal(h1[i].value.len, h2[i].value.len);
            assert_int_equal(h1[i].id, h2[i].id);
            assert_int_equal(h1[i].hop, h2[i].hop);
        }
        free(one);
        free(two);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_table),  cmocka_unit_test(test_request_bytewise),
        cmocka_unit_test(test_request_fields), cmocka_unit_test(test_header_ids),
        cmocka_unit_test(test_limits),         cmocka_unit_test(test_scan_resumes),
        cmocka_unit_test(test_response_table), cmocka_unit_test(test_response_fields),
        cmocka_unit_test(test_reason),         cmocka_unit_test(test_scanners),
        cmocka_unit_test(test_paths_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
