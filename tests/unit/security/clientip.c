/* Unit tests of the client address (lib/security/clientip.c): X-Forwarded-For and Forwarded read
 * from the right through trusted proxies, malformed and hidden elements, several header lines,
 * and random client junk that must never change the answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "security/clientip.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

static struct polis_cidr_list *trusted;

static int setup(void **state)
{
    (void)state;
    const char *t = "10.0.0.0/8, 2001:db8:1::/48";
    return polis__cidr_list_parse((struct polis_str){t, strlen(t)}, &trusted, NULL, NULL, 0);
}

static int teardown(void **state)
{
    (void)state;
    polis__cidr_list_free(trusted);
    return 0;
}

static struct polis_ip ip_of(const char *s)
{
    struct polis_ip ip;
    if (polis__ip_parse((struct polis_str){s, strlen(s)}, &ip) != 0)
        fail_msg("'%s' does not parse", s);
    return ip;
}

/* Resolve with header kind h from peer with the given header lines (NULL-terminated). */
static struct polis_clientip resolve_v(enum polis_clientip_header h, const char *peer,
                                       const char *const *lines)
{
    struct polis_str v[8];
    size_t n = 0;
    while (lines[n] != NULL) {
        v[n] = (struct polis_str){lines[n], strlen(lines[n])};
        n++;
    }
    struct polis_clientip_cfg cfg = {trusted, h};
    struct polis_ip p = ip_of(peer);
    struct polis_clientip out;
    memset(&out, 0x5a, sizeof(out));
    polis__clientip_resolve(&cfg, &p, v, n, &out);
    return out;
}

static void expect_v(enum polis_clientip_header h, const char *peer, const char *const *lines,
                     const char *want, enum polis_clientip_stop stop, unsigned hops)
{
    struct polis_clientip r = resolve_v(h, peer, lines);
    struct polis_ip w = ip_of(want);
    char got[POLIS_IP_STRLEN] = "?";
    polis__ip_format(&r.ip, got, sizeof(got));
    if (!polis__ip_eq(&r.ip, &w) || r.stop != stop || r.trusted_hops != hops)
        fail_msg("peer %s, '%s'%s: want %s %s %u, got %s %s %u", peer, lines[0] ? lines[0] : "",
                 lines[0] && lines[1] ? " (+ more lines)" : "", want,
                 polis__clientip_stop_name(stop), hops, got, polis__clientip_stop_name(r.stop),
                 r.trusted_hops);
}

/* One header line. */
static void xff(const char *peer, const char *line, const char *want, enum polis_clientip_stop s,
                unsigned hops)
{
    const char *lines[] = {line, NULL};
    expect_v(POLIS_CLIENTIP_XFF, peer, lines, want, s, hops);
}

static void fwd(const char *peer, const char *line, const char *want, enum polis_clientip_stop s,
                unsigned hops)
{
    const char *lines[] = {line, NULL};
    expect_v(POLIS_CLIENTIP_FORWARDED, peer, lines, want, s, hops);
}

#define PEER POLIS_CLIENTIP_PEER
#define UNTRUSTED POLIS_CLIENTIP_UNTRUSTED
#define EXHAUSTED POLIS_CLIENTIP_EXHAUSTED
#define MALFORMED POLIS_CLIENTIP_MALFORMED
#define HIDDEN POLIS_CLIENTIP_HIDDEN

/* ---- Cases --------------------------------------------------------------------------------- */

static void test_untrusted_peer(void **state)
{
    (void)state;
    /* The peer is not a trusted proxy: nothing in the headers counts, however it looks. */
    xff("203.0.113.5", "198.51.100.7", "203.0.113.5", PEER, 0);
    xff("203.0.113.5", "10.0.0.1", "203.0.113.5", PEER, 0);
    xff("203.0.113.5", "garbage", "203.0.113.5", PEER, 0);
    fwd("203.0.113.5", "for=198.51.100.7", "203.0.113.5", PEER, 0);
    fwd("2001:db8:2::1", "for=\"[2001:db8:1::9]\"", "2001:db8:2::1", PEER, 0);
    /* No header kind configured: the peer, even a trusted one. */
    const char *lines[] = {"198.51.100.7", NULL};
    expect_v(POLIS_CLIENTIP_NONE, "10.0.0.1", lines, "10.0.0.1", PEER, 0);
    /* No trusted list at all. */
    struct polis_clientip_cfg cfg = {NULL, POLIS_CLIENTIP_XFF};
    struct polis_ip p = ip_of("10.0.0.1");
    struct polis_str v = {"198.51.100.7", 12};
    struct polis_clientip out;
    polis__clientip_resolve(&cfg, &p, &v, 1, &out);
    assert_true(polis__ip_eq(&out.ip, &p));
    assert_int_equal(out.stop, PEER);
}

static void test_xff(void **state)
{
    (void)state;
    xff("10.0.0.1", "198.51.100.7", "198.51.100.7", UNTRUSTED, 1);
    xff("10.0.0.1", "198.51.100.7, 10.0.0.2", "198.51.100.7", UNTRUSTED, 2);
    xff("10.0.0.1", "1.1.1.1, 198.51.100.7, 10.0.0.2", "198.51.100.7", UNTRUSTED, 2);
    xff("10.0.0.1", "1.1.1.1,198.51.100.7,10.0.0.2", "198.51.100.7", UNTRUSTED, 2);
    /* A client claiming a trusted address on the left gains nothing. */
    xff("10.0.0.1", "10.9.9.9, 198.51.100.7", "198.51.100.7", UNTRUSTED, 1);
    /* Every hop trusted: the leftmost. */
    xff("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3", EXHAUSTED, 3);
    xff("10.0.0.1", "", "10.0.0.1", EXHAUSTED, 1);
    xff("10.0.0.1", " , ,", "10.0.0.1", EXHAUSTED, 1);
    /* Empty elements are skipped; spaces and tabs trimmed. */
    xff("10.0.0.1", "198.51.100.7,, \t,", "198.51.100.7", UNTRUSTED, 1);
    xff("10.0.0.1", "\t198.51.100.7\t", "198.51.100.7", UNTRUSTED, 1);
    /* Ports and brackets. */
    xff("10.0.0.1", "198.51.100.7:8080", "198.51.100.7", UNTRUSTED, 1);
    xff("10.0.0.1", "[2001:db8::7]:443", "2001:db8::7", UNTRUSTED, 1);
    xff("10.0.0.1", "[2001:db8::7]", "2001:db8::7", UNTRUSTED, 1);
    xff("10.0.0.1", "2001:db8::7", "2001:db8::7", UNTRUSTED, 1);
    xff("10.0.0.1", "::ffff:198.51.100.7", "198.51.100.7", UNTRUSTED, 1);
    xff("10.0.0.1", "[::ffff:10.0.0.5], 10.0.0.2", "10.0.0.5", EXHAUSTED, 3);
    /* IPv6 and mapped peers. */
    xff("2001:db8:1::1", "198.51.100.7", "198.51.100.7", UNTRUSTED, 1);
    xff("::ffff:10.0.0.1", "198.51.100.7", "198.51.100.7", UNTRUSTED, 1);
    xff("2001:db8:1::1", "2001:db8:1::2, 2001:db8:1::3", "2001:db8:1::2", EXHAUSTED, 3);
}

static void test_xff_malformed(void **state)
{
    (void)state;
    /* In the trusted part: stop at the last trusted hop. */
    xff("10.0.0.1", "1.2.3.4, garbage", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "1.2.3.4, junk, 10.0.0.2", "10.0.0.2", MALFORMED, 2);
    xff("10.0.0.1", "1.2.3.4, 10.0.0.2, 1.2.3", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "01.2.3.4", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "1.2.3.4:", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "1.2.3.4:99999", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "1.2.3.4:80:80", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "[1.2.3.4]", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "[2001:db8::7", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "[2001:db8::7]x", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "2001:db8::7:", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "\"198.51.100.7\"", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "198.51.100.7 10.0.0.2", "10.0.0.1", MALFORMED, 1);
    xff("10.0.0.1", "fe80::1%eth0", "10.0.0.1", MALFORMED, 1);
    /* "unknown" names no address. */
    xff("10.0.0.1", "198.51.100.7, unknown", "10.0.0.1", HIDDEN, 1);
    xff("10.0.0.1", "198.51.100.7, UNKNOWN, 10.0.0.2", "10.0.0.2", HIDDEN, 2);
    /* In the client's part: never looked at. */
    xff("10.0.0.1", "garbage, 198.51.100.7", "198.51.100.7", UNTRUSTED, 1);
    xff("10.0.0.1", "\"[:::, unknown, 198.51.100.7, 10.0.0.2", "198.51.100.7", UNTRUSTED, 2);
}

static void test_xff_lines(void **state)
{
    (void)state;
    /* Several lines are one list, in order. */
    const char *a[] = {"1.1.1.1", "198.51.100.7, 10.0.0.2", NULL};
    expect_v(POLIS_CLIENTIP_XFF, "10.0.0.1", a, "198.51.100.7", UNTRUSTED, 2);
    const char *b[] = {"198.51.100.7", "10.0.0.2", NULL};
    expect_v(POLIS_CLIENTIP_XFF, "10.0.0.1", b, "198.51.100.7", UNTRUSTED, 2);
    const char *c[] = {"10.0.0.3", "10.0.0.2", "", NULL};
    expect_v(POLIS_CLIENTIP_XFF, "10.0.0.1", c, "10.0.0.3", EXHAUSTED, 3);
    /* A client's own line first, the proxy's line last. */
    const char *d[] = {"10.1.1.1, garbage", "203.0.113.99", NULL};
    expect_v(POLIS_CLIENTIP_XFF, "10.0.0.1", d, "203.0.113.99", UNTRUSTED, 1);
    const char *e[] = {"203.0.113.99", "bad", NULL};
    expect_v(POLIS_CLIENTIP_XFF, "10.0.0.1", e, "10.0.0.1", MALFORMED, 1);
}

static void test_forwarded(void **state)
{
    (void)state;
    fwd("10.0.0.1", "for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60", UNTRUSTED, 1);
    fwd("10.0.0.1", "for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17", UNTRUSTED, 1);
    fwd("10.0.0.1", "for=\"[2001:db8:cafe::17]\"", "2001:db8:cafe::17", UNTRUSTED, 1);
    fwd("10.0.0.1", "For=\"192.0.2.60:8080\"", "192.0.2.60", UNTRUSTED, 1);
    fwd("10.0.0.1", "FOR=192.0.2.60", "192.0.2.60", UNTRUSTED, 1);
    fwd("10.0.0.1", "for=192.0.2.60:_obfport", "10.0.0.1", MALFORMED, 1); /* ':' not a tchar */
    fwd("10.0.0.1", "for=\"192.0.2.60:_obfport\"", "192.0.2.60", UNTRUSTED, 1);
    fwd("10.0.0.1", "for=192.0.2.43, for=198.51.100.17", "198.51.100.17", UNTRUSTED, 1);
    fwd("10.0.0.1", "for=192.0.2.43, for=10.0.0.5", "192.0.2.43", UNTRUSTED, 2);
    fwd("10.0.0.1", "for=10.0.0.6, for=10.0.0.5", "10.0.0.6", EXHAUSTED, 3);
    fwd("10.0.0.1", "proto=https;for=192.0.2.60;host=example.com", "192.0.2.60", UNTRUSTED, 1);
    fwd("10.0.0.1", "for=192.0.2.60 ; proto=https", "192.0.2.60", UNTRUSTED, 1);
    fwd("10.0.0.1", ";;for=192.0.2.60;", "192.0.2.60", UNTRUSTED, 1);
    fwd("10.0.0.1", "for=\"\\1\\9\\2.0.2.60\"", "192.0.2.60", UNTRUSTED, 1); /* quoted-pairs */
    fwd("10.0.0.1", "for=\"[::ffff:192.0.2.60]\"", "192.0.2.60", UNTRUSTED, 1);
    /* Commas and escaped quotes inside quoted strings do not split elements. */
    fwd("10.0.0.1", "for=192.0.2.43;ext=\"a,b\", for=10.0.0.5", "192.0.2.43", UNTRUSTED, 2);
    fwd("10.0.0.1", "for=192.0.2.43;ext=\"a\\\",b\", for=10.0.0.5", "192.0.2.43", UNTRUSTED, 2);
    fwd("10.0.0.1", "for=192.0.2.43;ext=\"a\\\\\", for=10.0.0.5", "192.0.2.43", UNTRUSTED, 2);
    fwd("10.0.0.1", "for=192.0.2.43;ext=\",\\\",\\\\\\\",\", for=10.0.0.5", "192.0.2.43", UNTRUSTED,
        2);
    /* Hidden: unknown, obfuscated, no for=. */
    fwd("10.0.0.1", "for=unknown", "10.0.0.1", HIDDEN, 1);
    fwd("10.0.0.1", "for=\"unknown:4711\"", "10.0.0.1", HIDDEN, 1);
    fwd("10.0.0.1", "for=_gazonk", "10.0.0.1", HIDDEN, 1);
    fwd("10.0.0.1", "For=\"_gazonk\"", "10.0.0.1", HIDDEN, 1);
    fwd("10.0.0.1", "for=198.51.100.17, for=_hidden, for=10.0.0.5", "10.0.0.5", HIDDEN, 2);
    fwd("10.0.0.1", "proto=https", "10.0.0.1", HIDDEN, 1);
    fwd("10.0.0.1", "for=198.51.100.17, by=10.0.0.2", "10.0.0.1", HIDDEN, 1);
}

static void test_forwarded_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "for=[2001:db8::1]",       /* IPv6 must be quoted */
        "for=\"2001:db8::1\"",     /* and bracketed */
        "for=\"[2001:db8::1]:x\"", /* bad port */
        "for=\"[2001:db8::1]:65536\"",
        "for=\"[192.0.2.1]\"",         /* brackets hold IPv6 */
        "for=",                        /* empty value */
        "for",                         /* no '=' */
        "=192.0.2.1",                  /* no name */
        "for=192.0.2.1 x",             /* junk after the value */
        "for=192.0.2.1;for=192.0.2.2", /* for= twice */
        "for=\"192.0.2.1",             /* unterminated quote */
        "for=\"192.0.2.1\"x",          /* junk after the quote */
        "for=01.2.3.4",
        "for=192.0.2.1:",
        "for=\"_\"", /* "_" alone is not an obfuscated node */
        "for=\"_a b\"",
        "for=\"\x01\"",
        "for=1.2.3.4;ext=\"\x7f\"",
        "for = 192.0.2.1",
        "for=\"192.0.2.1\\\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        fwd("10.0.0.1", bad[i], "10.0.0.1", MALFORMED, 1);
    /* Past a trusted hop: that hop. */
    fwd("10.0.0.1", "for=192.0.2.1;;for=1.2.3.4, for=10.0.0.2", "10.0.0.2", MALFORMED, 2);
    /* In the client's part: not looked at. */
    fwd("10.0.0.1", "for=\"x, for=198.51.100.17", "198.51.100.17", UNTRUSTED, 1);
    fwd("10.0.0.1", "\"\"\", for=[, for=198.51.100.17", "198.51.100.17", UNTRUSTED, 1);
    /* A long for= value is malformed, not truncated. */
    char longv[300];
    snprintf(longv, sizeof(longv), "for=\"[2001:db8::1]:%0200d\"", 1);
    fwd("10.0.0.1", longv, "10.0.0.1", MALFORMED, 1);
    /* Several lines. */
    const char *a[] = {"for=198.51.100.1", "for=198.51.100.17;proto=https", NULL};
    expect_v(POLIS_CLIENTIP_FORWARDED, "10.0.0.1", a, "198.51.100.17", UNTRUSTED, 1);
    const char *b[] = {"for=198.51.100.1", "for=10.0.0.9", NULL};
    expect_v(POLIS_CLIENTIP_FORWARDED, "10.0.0.1", b, "198.51.100.1", UNTRUSTED, 2);
    const char *c[] = {"for=\"unterminated", "for=198.51.100.17", NULL};
    expect_v(POLIS_CLIENTIP_FORWARDED, "10.0.0.1", c, "198.51.100.17", UNTRUSTED, 1);
}

/* Whatever a client writes on the left, what the trusted proxy appended decides; and from an
 * untrusted peer nothing does. */
static void test_spoofing(void **state)
{
    (void)state;
    static const char alphabet[] = "0123456789abcdef.:[]\",;=_ \t\\forFORunknown";
    uint64_t seed = 7;
    char junk[96], line[160];
    for (int iter = 0; iter < 50000; iter++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t r = seed;
        size_t n = (size_t)(r >> 58);
        for (size_t i = 0; i < n; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            junk[i] = alphabet[(seed >> 33) % (sizeof(alphabet) - 1)];
        }
        junk[n] = '\0';
        bool forwarded = iter & 1;
        bool same_line = iter & 2;
        const char *real = forwarded ? "for=198.51.100.17" : "198.51.100.17";
        enum polis_clientip_header h = forwarded ? POLIS_CLIENTIP_FORWARDED : POLIS_CLIENTIP_XFF;
        if (same_line) {
            snprintf(line, sizeof(line), "%s, %s", junk, real);
            const char *l1[] = {line, NULL};
            expect_v(h, "10.0.0.1", l1, "198.51.100.17", UNTRUSTED, 1);
            expect_v(h, "203.0.113.5", l1, "203.0.113.5", PEER, 0);
        } else {
            const char *l2[] = {junk, real, NULL};
            expect_v(h, "10.0.0.1", l2, "198.51.100.17", UNTRUSTED, 1);
            expect_v(h, "203.0.113.5", l2, "203.0.113.5", PEER, 0);
        }
        /* Junk alone from a trusted peer: an answer with a known stop, never a crash (the
         * sanitizers watch the parsing). */
        const char *l3[] = {junk, NULL};
        struct polis_clientip res = resolve_v(h, "10.0.0.1", l3);
        assert_true(res.stop >= PEER && res.stop <= HIDDEN);
    }
}

static void test_format(void **state)
{
    (void)state;
    char buf[64];
    struct polis_ip a = ip_of("192.0.2.1"), b = ip_of("2001:db8::1");
    assert_int_equal(polis__clientip_forwarded_for(&a, buf, sizeof(buf)), 13);
    assert_string_equal(buf, "for=192.0.2.1");
    assert_int_equal(polis__clientip_forwarded_for(&b, buf, sizeof(buf)), 19);
    assert_string_equal(buf, "for=\"[2001:db8::1]\"");
    assert_int_equal(polis__clientip_forwarded_for(&b, buf, 19), 0);
    assert_string_equal(buf, "");
    /* What it writes is read back by the Forwarded parser. */
    fwd("10.0.0.1", "for=\"[2001:db8::1]\"", "2001:db8::1", UNTRUSTED, 1);
    assert_string_equal(polis__clientip_stop_name(POLIS_CLIENTIP_MALFORMED), "malformed");
    assert_string_equal(polis__clientip_stop_name((enum polis_clientip_stop)99), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_untrusted_peer), cmocka_unit_test(test_xff),
        cmocka_unit_test(test_xff_malformed),  cmocka_unit_test(test_xff_lines),
        cmocka_unit_test(test_forwarded),      cmocka_unit_test(test_forwarded_malformed),
        cmocka_unit_test(test_spoofing),       cmocka_unit_test(test_format),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
