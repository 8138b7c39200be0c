/* Unit tests of the chunked transfer-coding decoder: good and bad bodies, every split point. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <polis/http.h>

struct ccase {
    const char *in;
    size_t len;
    int rc;              /* 1: complete, 0: goes on, or an error */
    const char *payload; /* expected payload for 0 and 1 */
    size_t consumed;     /* for 1: bytes of the body (0 means the whole input) */
    uint64_t max_body;
};

#define M(s) s, sizeof(s) - 1

static const struct ccase cases[] = {
    {M("5\r\nhello\r\n0\r\n\r\n"), 1, "hello", 0, 0},
    {M("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), 1, "hello world", 0, 0},
    {M("0\r\n\r\n"), 1, "", 0, 0},
    {M("000\r\n\r\n"), 1, "", 0, 0},
    {M("A\r\n0123456789\r\n0\r\n\r\n"), 1, "0123456789", 0, 0},
    {M("a\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), 1, "0123456789", 20, 0},
    {M("0005\r\nhello\r\n0\r\n\r\n"), 1, "hello", 0, 0},
    {M("5;ext\r\nhello\r\n0\r\n\r\n"), 1, "hello", 0, 0},
    {M("5;a=b;c=\"d;e\\\"f\"\r\nhello\r\n0;x=1\r\n\r\n"), 1, "hello", 0, 0},
    {M("5 ; a = b\r\nhello\r\n0\r\n\r\n"), 1, "hello", 0, 0},
    {M("5\t;a\r\nhello\r\n0\r\n\r\n"), 1, "hello", 0, 0},
    {M("5;a=\"\"\r\nhello\r\n0\r\n\r\n"), 1, "hello", 0, 0},
    {M("5\r\nhello\r\n0\r\nExpires: never\r\nX-T:\r\n\r\n"), 1, "hello", 0, 0},
    {M("5\r\nhel"), 0, "hel", 0, 0},
    {M("5\r\nhello\r\n"), 0, "hello", 0, 0},
    {M("5\r\nhello\r\n0\r\n"), 0, "hello", 0, 0},
    {M("5\r\nhello\r\n0\r\nX: y\r\n"), 0, "hello", 0, 0},
    {M("ffffffffffffffff\r\nab"), 0, "ab", 0, 0},
    {M("5\r\nhello\r\n0\r\n\r\n"), 1, "hello", 0, 5},
    {M("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"), 1, "abcdef", 0, 6},

    {M("\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("x\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("-5\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("+5\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("0x5\r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M(" 5\r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5 \r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\rhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\n0\r\n\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhelloX\r\n0\r\n\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\rX0\r\n\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\r\n0\r\n\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\r\n0\r\n\rX"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5;\r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5;=b\r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5;a=\r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5;a=b \r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5;a=\"b\r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5;a=b@\r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5;a\x01\r\nhello\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\r\n0\r\n foo: bar\r\n\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\r\n0\r\nX : y\r\n\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\r\n0\r\n: y\r\n\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\r\n0\r\nX: a\0b\r\n\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\r\n0\r\nX: a\nb\r\n\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("5\r\nhello\r\n0\r\nNoColon\r\n\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("10000000000000000\r\n"), POLIS_EBADMSG, NULL, 0, 0},
    {M("ffffffffffffffff\r\nab\r\n1\r\n"), 0, "ab\r\n1\r\n", 0, 0},
    {M("6\r\nhello!\r\n0\r\n\r\n"), POLIS_EBODYTOOBIG, NULL, 0, 5},
    {M("3\r\nabc\r\n4\r\n"), POLIS_EBODYTOOBIG, NULL, 0, 6},
    {M("fffffffffffffffffffff\r\n"), POLIS_EBODYTOOBIG, NULL, 0, 1000},
};

/* Feed in[0..len) in pieces cut at split (0: one call), optionally decoding in place. */
static int feed(const struct ccase *c, size_t split, bool in_place, char *payload,
                size_t *payload_len, size_t *consumed_total)
{
    struct polis_h1_chunked ch;
    char *buf = malloc(c->len + 1);
    char *out = malloc(c->len + 1);
    memcpy(buf, c->in, c->len);
    polis_h1_chunked_init(&ch, c->max_body);
    size_t pos = 0, plen = 0;
    int rc = 0;
    while (pos < c->len || (pos == 0 && c->len == 0)) {
        size_t n = c->len - pos;
        if (split && n > split)
            n = split;
        size_t used = 0, olen = 0;
        char *o = in_place ? buf + pos : out;
        rc = polis_h1_chunked_feed(&ch, buf + pos, n, &used, o, &olen);
        if (rc < 0)
            break;
        assert_true(used <= n);
        assert_true(olen <= used);
        memcpy(payload + plen, o, olen);
        plen += olen;
        pos += used;
        if (rc == 1)
            break;
        assert_int_equal(used, n);
    }
    *payload_len = plen;
    *consumed_total = pos;
    free(buf);
    free(out);
    return rc;
}

static void test_table(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const struct ccase *c = &cases[k];
        char payload[256];
        size_t plen, consumed;
        /* One call, every split size, in place and not. */
        for (size_t split = 0; split <= c->len; split++) {
            for (int ip = 0; ip < 2; ip++) {
                int rc = feed(c, split, ip, payload, &plen, &consumed);
                if (rc != c->rc)
                    print_error("case %zu split %zu: rc %d want %d\n", k, split, rc, c->rc);
                assert_int_equal(rc, c->rc);
                if (rc >= 0) {
                    assert_int_equal(plen, strlen(c->payload));
                    assert_memory_equal(payload, c->payload, plen);
                    assert_int_equal(consumed, c->consumed ? c->consumed : c->len);
                }
            }
        }
    }
}

/* A body cut in two at every offset gives the same result as one call. */
static void test_split_everywhere(void **state)
{
    (void)state;
    static const char body[] = "4;name=\"va\\\"l\"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks."
                               "\r\n0\r\nX-Trailer: yes\r\n\r\nNEXT";
    size_t len = sizeof(body) - 1;
    for (size_t cut = 0; cut <= len; cut++) {
        struct polis_h1_chunked c;
        char out[128];
        size_t used1 = 0, used2 = 0, o1 = 0, o2 = 0;
        polis_h1_chunked_init(&c, 0);
        int rc = polis_h1_chunked_feed(&c, body, cut, &used1, out, &o1);
        if (rc == 1) {
            assert_true(cut >= len - 4);
        } else {
            assert_int_equal(rc, 0);
            assert_int_equal(used1, cut);
            rc = polis_h1_chunked_feed(&c, body + cut, len - cut, &used2, out + o1, &o2);
            assert_int_equal(rc, 1);
        }
        assert_int_equal(used1 + used2, len - 4);
        assert_int_equal(o1 + o2, 23);
        assert_memory_equal(out, "Wikipedia in\r\n\r\nchunks.", 23);
        /* Done stays done. */
        assert_int_equal(polis_h1_chunked_feed(&c, "x", 1, &used1, NULL, NULL), 1);
        assert_int_equal(used1, 0);
    }
}

static void test_limits(void **state)
{
    (void)state;
    struct polis_h1_chunked c;
    size_t used;
    char line[64];

    /* max_line bounds the size line with its extensions. */
    polis_h1_chunked_init(&c, 0);
    c.max_line = 16;
    assert_int_equal(polis_h1_chunked_feed(&c, "5;aaaaaaaaaaaa\r\n", 16, &used, NULL, NULL), 0);
    polis_h1_chunked_init(&c, 0);
    c.max_line = 16;
    assert_int_equal(polis_h1_chunked_feed(&c, "5;aaaaaaaaaaaaa\r\n", 17, &used, NULL, NULL),
                     POLIS_EBADMSG);
    /* Leading zeros are bounded by the line limit too. */
    memset(line, '0', sizeof(line));
    polis_h1_chunked_init(&c, 0);
    c.max_line = 32;
    assert_int_equal(polis_h1_chunked_feed(&c, line, sizeof(line), &used, NULL, NULL),
                     POLIS_EBADMSG);
    /* max_trailer bounds the trailer section. */
    polis_h1_chunked_init(&c, 0);
    c.max_trailer = 10;
    assert_int_equal(polis_h1_chunked_feed(&c, "0\r\nA: 1234\r\n\r\n", 15, &used, NULL, NULL),
                     POLIS_EBADMSG);
    polis_h1_chunked_init(&c, 0);
    c.max_trailer = 12;
    assert_int_equal(polis_h1_chunked_feed(&c, "0\r\nA: 1234\r\n\r\n", 15, &used, NULL, NULL), 1);
    assert_int_equal(c.total, 0);
    /* An error sticks. */
    polis_h1_chunked_init(&c, 0);
    assert_int_equal(polis_h1_chunked_feed(&c, "z", 1, &used, NULL, NULL), POLIS_EBADMSG);
    assert_int_equal(polis_h1_chunked_feed(&c, "0\r\n\r\n", 5, &used, NULL, NULL), POLIS_EBADMSG);
    /* The running total may not wrap around: EBADMSG without max_body. */
    polis_h1_chunked_init(&c, 0);
    c.total = UINT64_MAX - 1;
    assert_int_equal(polis_h1_chunked_feed(&c, "1\r\n", 3, &used, NULL, NULL), 0);
    polis_h1_chunked_init(&c, 0);
    c.total = UINT64_MAX - 1;
    assert_int_equal(polis_h1_chunked_feed(&c, "2\r\n", 3, &used, NULL, NULL), POLIS_EBADMSG);
    assert_int_equal(used, 0);
    /* total counts the payload. */
    polis_h1_chunked_init(&c, 0);
    assert_int_equal(polis_h1_chunked_feed(&c, "3\r\nabc\r\n2\r\nde\r\n", 15, &used, NULL, NULL),
                     0);
    assert_int_equal(c.total, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_split_everywhere),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
