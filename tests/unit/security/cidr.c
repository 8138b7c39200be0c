/* Unit tests of IP addresses and CIDR lists (lib/security/cidr.c): strict parsing, mapped
 * addresses, host bits, merging, boundaries, random lists against a linear matcher, and the
 * allow/deny decision. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "security/cidr.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

static struct polis_str S_(const char *s) {
    return (struct polis_str){s, strlen(s)};
}

static struct polis_ip
ip_of(const char *s)
{
    struct polis_ip ip;
    if (polis__ip_parse(S_(s), &ip) != 0)
        fail_msg("'%s' does not parse", s);
    return ip;
}

static struct polis_cidr_list *list_of(const char *text)
{
    struct polis_cidr_list *l = NULL;
    char err[160] = "";
    size_t bad = 0;
    int rc = polis__cidr_list_parse(S_(text), &l, &bad, err, sizeof(err));
    if (rc != 0)
        fail_msg("'%s': rc %d at %zu: %s", text, rc, bad, err);
    return l;
}

static bool match(const struct polis_cidr_list *l, const char *ip)
{
    return polis__cidr_list_match_text(l, S_(ip));
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- Addresses ----------------------------------------------------------------------------- */

static void test_ip_parse(void **state)
{
    (void)state;
    static const char *const good[] = {
        "0.0.0.0",
        "1.2.3.4",
        "255.255.255.255",
        "10.0.0.1",
        "::",
        "::1",
        "2001:db8::1",
        "2001:DB8::A",
        "fe80::1:2",
        "1:2:3:4:5:6:7:8",
        "::ffff:1.2.3.4",
        "64:ff9b::1.2.3.4",
    };
    static const char *const bad[] = {
        "",
        "1.2.3",
        "1.2.3.4.5",
        "256.0.0.1",
        "1.2.3.256",
        "01.2.3.4",
        "1.02.3.4",
        "1.2.3.04",
        "1.2.3.-4",
        "+1.2.3.4",
        " 1.2.3.4",
        "1.2.3.4 ",
        "1.2.3.4/32",
        "1.2.3.4:80",
        "0x1.2.3.4",
        "1..2.3",
        "1.2.3.",
        ".1.2.3",
        "[::1]",
        "fe80::1%eth0",
        "1:2:3:4:5:6:7:8:9",
        ":::1",
        "1::2::3",
        "::ffff:01.2.3.4",
        "12345::",
        "g::1",
        "localhost",
        "1.2.3.4\n",
        "1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct polis_ip ip;
        if (polis__ip_parse(S_(good[i]), &ip) != 0)
            fail_msg("'%s' should parse", good[i]);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct polis_ip ip;
        if (polis__ip_parse(S_(bad[i]), &ip) != POLIS_EINVAL)
            fail_msg("'%s' should not parse", bad[i]);
    }
    /* A view is not NUL-terminated: only len bytes count. */
    struct polis_ip ip;
    assert_int_equal(polis__ip_parse((struct polis_str){"1.2.3.45", 7}, &ip), 0);
    assert_true(polis__ip_eq(&ip, &(struct polis_ip){AF_INET, {1, 2, 3, 4}}));

    struct polis_ip a = ip_of("::ffff:192.0.2.1"), b = ip_of("192.0.2.1");
    assert_int_equal(a.family, AF_INET);
    assert_true(polis__ip_eq(&a, &b));
    a = ip_of("::ffff:c000:201");
    assert_true(polis__ip_eq(&a, &b));
    a = ip_of("::192.0.2.1"); /* IPv4-compatible (deprecated) stays IPv6 */
    assert_int_equal(a.family, AF_INET6);
    assert_false(polis__ip_eq(&a, &b));
    a = ip_of("2001:db8::1");
    b = ip_of("2001:0DB8:0:0:0:0:0:1");
    assert_true(polis__ip_eq(&a, &b));
}

static void test_ip_sockaddr_format(void **state)
{
    (void)state;
    struct sockaddr_in in = {.sin_family = AF_INET};
    inet_pton(AF_INET, "203.0.113.9", &in.sin_addr);
    struct polis_ip ip;
    char buf[POLIS_IP_STRLEN];
    assert_int_equal(polis__ip_from_sockaddr((struct sockaddr *)&in, &ip), 0);
    assert_int_equal(polis__ip_format(&ip, buf, sizeof(buf)), strlen("203.0.113.9"));
    assert_string_equal(buf, "203.0.113.9");

    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:203.0.113.9", &in6.sin6_addr);
    assert_int_equal(polis__ip_from_sockaddr((struct sockaddr *)&in6, &ip), 0);
    assert_int_equal(ip.family, AF_INET);
    polis__ip_format(&ip, buf, sizeof(buf));
    assert_string_equal(buf, "203.0.113.9");

    inet_pton(AF_INET6, "2001:db8::42", &in6.sin6_addr);
    assert_int_equal(polis__ip_from_sockaddr((struct sockaddr *)&in6, &ip), 0);
    assert_int_equal(ip.family, AF_INET6);
    polis__ip_format(&ip, buf, sizeof(buf));
    assert_string_equal(buf, "2001:db8::42");
    assert_int_equal(polis__ip_format(&ip, buf, 5), 0); /* too small */

    struct sockaddr_un un = {.sun_family = AF_UNIX};
    assert_int_equal(polis__ip_from_sockaddr((struct sockaddr *)&un, &ip), POLIS_EINVAL);
    assert_int_equal(polis__ip_from_sockaddr(NULL, &ip), POLIS_EINVAL);
    struct polis_cidr_list *l = list_of("0.0.0.0/0 ::/0");
    assert_false(polis__cidr_list_match_sockaddr(l, (struct sockaddr *)&un));
    assert_true(polis__cidr_list_match_sockaddr(l, (struct sockaddr *)&in));
    assert_true(polis__cidr_list_match_sockaddr(l, (struct sockaddr *)&in6));
    polis__cidr_list_free(l);
}

/* ---- Blocks -------------------------------------------------------------------------------- */

static void expect_block(const char *text, int family, const char *net, unsigned prefix)
{
    struct polis_cidr_block c;
    char err[160] = "";
    if (polis__cidr_block_parse(S_(text), &c, err, sizeof(err)) != 0)
        fail_msg("'%s': %s", text, err);
    struct polis_ip want = ip_of(net);
    assert_int_equal(c.ip.family, family);
    assert_true(polis__ip_eq(&c.ip, &want));
    assert_int_equal(c.prefix, prefix);
}

static void expect_bad_block(const char *text, const char *msg)
{
    struct polis_cidr_block c;
    char err[160] = "";
    if (polis__cidr_block_parse(S_(text), &c, err, sizeof(err)) != POLIS_EINVAL)
        fail_msg("'%s' should be refused", text);
    if (strstr(err, msg) == NULL)
        fail_msg("'%s': message '%s' lacks '%s'", text, err, msg);
}

static void test_cidr_parse(void **state)
{
    (void)state;
    expect_block("10.0.0.0/8", AF_INET, "10.0.0.0", 8);
    expect_block("192.168.1.7", AF_INET, "192.168.1.7", 32);
    expect_block(" 172.16.0.0/12\t", AF_INET, "172.16.0.0", 12);
    expect_block("0.0.0.0/0", AF_INET, "0.0.0.0", 0);
    expect_block("255.255.255.255/32", AF_INET, "255.255.255.255", 32);
    expect_block("::1", AF_INET6, "::1", 128);
    expect_block("::1/128", AF_INET6, "::1", 128);
    expect_block("::/0", AF_INET6, "::", 0);
    expect_block("2001:db8::/32", AF_INET6, "2001:db8::", 32);
    expect_block("2001:DB8:8000::/33", AF_INET6, "2001:db8:8000::", 33);
    /* Mapped blocks become IPv4 blocks. */
    expect_block("::ffff:10.0.0.0/104", AF_INET, "10.0.0.0", 8);
    expect_block("::ffff:0:0/96", AF_INET, "0.0.0.0", 0);
    expect_block("::ffff:192.0.2.1", AF_INET, "192.0.2.1", 32);
    /* Host bits set. */
    expect_bad_block("10.0.0.1/8", "host bits are set after the prefix length (the block is "
                                   "10.0.0.0/8; write that, or /32 for one host)");
    expect_bad_block("2001:db8::1/33", "the block is 2001:db8::/33; write that, or /128");
    expect_bad_block("10.255.255.255/9", "the block is 10.128.0.0/9");
    expect_bad_block("192.168.1.7/24", "host bits");
    expect_bad_block("0.0.0.1/0", "host bits");
    expect_bad_block("2001:db8::1/32", "host bits");
    expect_bad_block("2001:db8:8000::/32", "host bits");
    expect_bad_block("::ffff:10.0.0.1/104", "host bits");
    /* Bad prefixes and addresses. */
    expect_bad_block("10.0.0.0/33", "prefix");
    expect_bad_block("::/129", "prefix");
    expect_bad_block("10.0.0.0/", "prefix");
    expect_bad_block("10.0.0.0/08", "prefix");
    expect_bad_block("10.0.0.0/-8", "prefix");
    expect_bad_block("10.0.0.0/8/8", "prefix");
    expect_bad_block("10.0.0.0/1000", "prefix");
    expect_bad_block("10.0.0.0 /8", "not an");
    expect_bad_block("10.0.0/8", "not an");
    expect_bad_block("[::1]/128", "not an");
    expect_bad_block("fe80::%eth0/64", "not an");
    expect_bad_block("", "not an");
    expect_bad_block("/8", "not an");
    expect_bad_block("any", "not an");
    /* err may be NULL. */
    struct polis_cidr_block c;
    assert_int_equal(polis__cidr_block_parse(S_("1.2.3.4/40"), &c, NULL, 0), POLIS_EINVAL);
}

/* ---- Lists --------------------------------------------------------------------------------- */

static void test_list_match(void **state)
{
    (void)state;
    struct polis_cidr_list *l =
        list_of("10.0.0.0/8, 192.168.1.7 172.16.0.0/12,,2001:db8::/32\n::1");
    assert_true(match(l, "10.0.0.0"));
    assert_true(match(l, "10.255.255.255"));
    assert_false(match(l, "9.255.255.255"));
    assert_false(match(l, "11.0.0.0"));
    assert_true(match(l, "192.168.1.7"));
    assert_false(match(l, "192.168.1.6"));
    assert_false(match(l, "192.168.1.8"));
    assert_true(match(l, "172.31.255.255"));
    assert_false(match(l, "172.32.0.0"));
    assert_true(match(l, "2001:db8::"));
    assert_true(match(l, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(match(l, "2001:db9::"));
    assert_false(match(l, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_true(match(l, "::1"));
    assert_false(match(l, "::2"));
    assert_false(match(l, "::"));
    /* IPv4-mapped IPv6 addresses match the IPv4 rules. */
    assert_true(match(l, "::ffff:10.1.2.3"));
    assert_true(match(l, "::ffff:192.168.1.7"));
    assert_false(match(l, "::ffff:11.1.2.3"));
    /* Unparsable text matches nothing. */
    assert_false(match(l, "10.0.0.1:80"));
    assert_false(match(l, ""));
    assert_int_equal(polis__cidr_list_ranges(l), 5);
    polis__cidr_list_free(l);

    /* ::/0 is every IPv6 address, not IPv4 (mapped ones included); 0.0.0.0/0 is every IPv4. */
    l = list_of("::/0");
    assert_true(match(l, "2001:db8::1"));
    assert_true(match(l, "::"));
    assert_false(match(l, "1.2.3.4"));
    assert_false(match(l, "::ffff:1.2.3.4"));
    polis__cidr_list_free(l);
    l = list_of("0.0.0.0/0");
    assert_true(match(l, "0.0.0.0"));
    assert_true(match(l, "255.255.255.255"));
    assert_true(match(l, "::ffff:1.2.3.4"));
    assert_false(match(l, "::1"));
    polis__cidr_list_free(l);
    /* The mapped block written in IPv6 matches plain IPv4 addresses. */
    l = list_of("::ffff:10.0.0.0/104");
    assert_true(match(l, "10.9.8.7"));
    assert_false(match(l, "11.0.0.0"));
    polis__cidr_list_free(l);
    /* The very top of both spaces. */
    l = list_of("255.255.255.255 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    assert_true(match(l, "255.255.255.255"));
    assert_false(match(l, "255.255.255.254"));
    assert_true(match(l, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(match(l, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"));
    polis__cidr_list_free(l);
    /* Empty and NULL lists match nothing. */
    l = list_of("");
    assert_int_equal(polis__cidr_list_ranges(l), 0);
    assert_false(match(l, "1.2.3.4"));
    assert_false(match(l, "::1"));
    polis__cidr_list_free(l);
    assert_false(match(NULL, "1.2.3.4"));
    polis__cidr_list_free(NULL);
}

static void test_list_merge(void **state)
{
    (void)state;
    struct polis_cidr_list *l = list_of("10.0.0.0/9 10.128.0.0/9");
    assert_int_equal(polis__cidr_list_ranges(l), 1);
    polis__cidr_list_free(l);
    l = list_of("10.0.0.0/8 10.1.0.0/16 10.1.2.3 10.0.0.0/8");
    assert_int_equal(polis__cidr_list_ranges(l), 1);
    polis__cidr_list_free(l);
    l = list_of("10.0.0.1 10.0.0.2 10.0.0.0 10.0.0.3"); /* adjacent hosts */
    assert_int_equal(polis__cidr_list_ranges(l), 1);
    assert_true(match(l, "10.0.0.3"));
    assert_false(match(l, "10.0.0.4"));
    polis__cidr_list_free(l);
    l = list_of("0.0.0.0/0 255.255.255.255 1.2.3.4");
    assert_int_equal(polis__cidr_list_ranges(l), 1);
    polis__cidr_list_free(l);
    l = list_of("::/1 8000::/1 ::1");
    assert_int_equal(polis__cidr_list_ranges(l), 1);
    assert_true(match(l, "ffff::"));
    polis__cidr_list_free(l);
    l = list_of("::/64 0:0:0:1::/64 10.0.0.0/8 12.0.0.0/8");
    assert_int_equal(polis__cidr_list_ranges(l), 3);
    assert_false(match(l, "11.0.0.0"));
    assert_true(match(l, "0:0:0:1:ffff:ffff:ffff:ffff"));
    assert_false(match(l, "0:0:0:2::"));
    polis__cidr_list_free(l);
}

static void test_list_errors(void **state)
{
    (void)state;
    struct polis_cidr_list *l = (struct polis_cidr_list *)0x1;
    char err[160] = "";
    size_t bad = 99;
    assert_int_equal(polis__cidr_list_parse(S_("10.0.0.0/8, 1.2.3.4, 10.0.0.1/8, ::1"), &l, &bad,
                                            err, sizeof(err)),
                     POLIS_EINVAL);
    assert_int_equal(bad, 2);
    assert_non_null(strstr(err, "10.0.0.1/8"));
    assert_ptr_equal(l, (struct polis_cidr_list *)0x1); /* untouched on failure */

    struct polis_str entries[] = {S_("::1"), S_("2001:db8::/32"), S_("nope")};
    assert_int_equal(polis__cidr_list_new(entries, 3, &l, &bad, err, sizeof(err)), POLIS_EINVAL);
    assert_int_equal(bad, 2);
    assert_int_equal(polis__cidr_list_new(entries, 2, &l, NULL, NULL, 0), 0);
    assert_true(match(l, "2001:db8::5"));
    polis__cidr_list_free(l);
    assert_int_equal(polis__cidr_list_new(entries, POLIS_CIDR_MAX_ENTRIES + 1, &l, NULL, NULL, 0),
                     POLIS_ETOOBIG);
}

/* Lists from blocks parsed elsewhere (the configuration). */
static void test_list_from_blocks(void **state)
{
    (void)state;
    struct polis_cidr_block b[4];
    memset(b, 0, sizeof(b));
    b[0].ip = ip_of("10.0.0.0");
    b[0].prefix = 8;
    b[1].ip.family = AF_INET6; /* ::ffff:192.0.2.0/120 written as raw IPv6 bytes */
    inet_pton(AF_INET6, "::ffff:192.0.2.0", b[1].ip.a);
    b[1].prefix = 120;
    b[2].ip = ip_of("2001:db8::");
    b[2].prefix = 32;
    b[3].ip = ip_of("192.0.2.128");
    b[3].prefix = 25;
    struct polis_cidr_list *l = NULL;
    size_t bad = 99;
    assert_int_equal(polis__cidr_list_from_blocks(b, 4, &l, &bad), 0);
    assert_true(match(l, "10.1.2.3"));
    assert_true(match(l, "192.0.2.1"));
    assert_true(match(l, "::ffff:192.0.2.200"));
    assert_false(match(l, "192.0.3.0"));
    assert_true(match(l, "2001:db8::1"));
    assert_int_equal(polis__cidr_list_ranges(l), 3); /* the two 192.0.2 halves merged */
    polis__cidr_list_free(l);
    /* Refusals, with the index. */
    b[2].prefix = 16; /* 2001:db8::/16 has host bits set */
    assert_int_equal(polis__cidr_list_from_blocks(b, 4, &l, &bad), POLIS_EINVAL);
    assert_int_equal(bad, 2);
    b[2].prefix = 32;
    b[0].prefix = 33;
    assert_int_equal(polis__cidr_list_from_blocks(b, 4, &l, &bad), POLIS_EINVAL);
    assert_int_equal(bad, 0);
    b[0].prefix = 8;
    b[3].ip.family = 99;
    assert_int_equal(polis__cidr_list_from_blocks(b, 4, &l, NULL), POLIS_EINVAL);
}

/* Random blocks of both families against a linear scan of the blocks. */
static void test_list_random(void **state)
{
    (void)state;
    enum { N = 3000, PROBES = 200000 };
    uint64_t seed = 42;
    struct polis_cidr_block *blocks = calloc(N, sizeof(*blocks));
    struct polis_str *entries = calloc(N, sizeof(*entries));
    char(*texts)[64] = calloc(N, 64);
    assert_non_null(blocks);
    assert_non_null(entries);
    assert_non_null(texts);
    for (size_t i = 0; i < N; i++) {
        bool v6 = rng_next(&seed) & 1;
        uint8_t a[16];
        for (int k = 0; k < 16; k++)
            a[k] = (uint8_t)rng_next(&seed);
        /* Keep IPv6 in a narrow space so that blocks overlap and probes hit them. */
        if (v6) {
            memcpy(a, "\x20\x01\x0d\xb8", 4);
            a[4] = a[4] & 3;
        } else {
            a[0] = 10;
        }
        unsigned max = v6 ? 128 : 32;
        unsigned prefix =
            v6 ? 34 + (unsigned)(rng_next(&seed) % 95) : 8 + (unsigned)(rng_next(&seed) % 25);
        if (prefix > max)
            prefix = max;
        for (unsigned bit = prefix; bit < max; bit++)
            a[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
        char addr[POLIS_IP_STRLEN];
        inet_ntop(v6 ? AF_INET6 : AF_INET, a, addr, sizeof(addr));
        snprintf(texts[i], 64, "%s/%u", addr, prefix);
        entries[i] = S_(texts[i]);
        assert_int_equal(polis__cidr_block_parse(entries[i], &blocks[i], NULL, 0), 0);
    }
    struct polis_cidr_list *l = NULL;
    char err[160];
    assert_int_equal(polis__cidr_list_new(entries, N, &l, NULL, err, sizeof(err)), 0);
    int hits = 0;
    for (int p = 0; p < PROBES; p++) {
        struct polis_ip ip = {0};
        const struct polis_cidr_block *b = &blocks[rng_next(&seed) % N];
        ip.family = b->ip.family;
        size_t nb = ip.family == AF_INET ? 4 : 16;
        /* Near a block: its first or last address, one off, or random within its /prefix-8. */
        memcpy(ip.a, b->ip.a, nb);
        unsigned max = (unsigned)nb * 8;
        for (unsigned bit = b->prefix >= 8 ? b->prefix - 8 : 0; bit < max; bit++) {
            uint64_t r = rng_next(&seed) % 4;
            if (r == 0)
                ip.a[bit / 8] |= (uint8_t)(0x80u >> (bit % 8));
            else if (r == 1)
                ip.a[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
        }
        bool want = false;
        for (size_t i = 0; i < N && !want; i++) {
            const struct polis_cidr_block *c = &blocks[i];
            if (c->ip.family != ip.family)
                continue;
            unsigned whole = c->prefix / 8, rest = c->prefix % 8;
            uint8_t m = (uint8_t)(0xff00u >> rest);
            want = memcmp(c->ip.a, ip.a, whole) == 0 &&
                   (rest == 0 || (c->ip.a[whole] & m) == (ip.a[whole] & m));
        }
        bool got = polis__cidr_list_match(l, &ip);
        if (got != want) {
            char t[POLIS_IP_STRLEN];
            polis__ip_format(&ip, t, sizeof(t));
            fail_msg("%s: want %d got %d", t, want, got);
        }
        hits += got;
    }
    assert_true(hits > PROBES / 10 && hits < PROBES * 9 / 10);
    assert_true(polis__cidr_list_ranges(l) <= N);
    polis__cidr_list_free(l);
    free(blocks);
    free(entries);
    free(texts);
}

/* ---- Allow and deny ------------------------------------------------------------------------ */

static void test_acl(void **state)
{
    (void)state;
    struct polis_cidr_list *allow = list_of("10.0.0.0/8 2001:db8::/32");
    struct polis_cidr_list *deny = list_of("10.6.6.0/24 2001:db8:bad::/48");
    struct polis_cidr_list *empty = list_of("");
    struct polis_ip a = ip_of("10.1.1.1"), d = ip_of("10.6.6.6"), o = ip_of("192.0.2.1");
    struct polis_ip a6 = ip_of("2001:db8::1"), d6 = ip_of("2001:db8:bad::1");
    struct polis_ip m = ip_of("::ffff:10.6.6.1");
    /* Allow and deny: deny wins, anything not allowed is refused. */
    assert_true(polis__ip_acl_allows(allow, deny, &a));
    assert_false(polis__ip_acl_allows(allow, deny, &d));
    assert_false(polis__ip_acl_allows(allow, deny, &o));
    assert_true(polis__ip_acl_allows(allow, deny, &a6));
    assert_false(polis__ip_acl_allows(allow, deny, &d6));
    assert_false(polis__ip_acl_allows(allow, deny, &m));
    /* Deny only. */
    assert_true(polis__ip_acl_allows(NULL, deny, &a));
    assert_true(polis__ip_acl_allows(NULL, deny, &o));
    assert_false(polis__ip_acl_allows(NULL, deny, &d));
    /* Allow only. */
    assert_true(polis__ip_acl_allows(allow, NULL, &d));
    assert_false(polis__ip_acl_allows(allow, NULL, &o));
    /* Neither; an empty allow list allows nothing. */
    assert_true(polis__ip_acl_allows(NULL, NULL, &o));
    assert_false(polis__ip_acl_allows(empty, NULL, &o));
    assert_true(polis__ip_acl_allows(NULL, empty, &o));
    polis__cidr_list_free(allow);
    polis__cidr_list_free(deny);
    polis__cidr_list_free(empty);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ip_parse),
        cmocka_unit_test(test_ip_sockaddr_format),
        cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_list_match),
        cmocka_unit_test(test_list_merge),
        cmocka_unit_test(test_list_errors),
        cmocka_unit_test(test_list_from_blocks),
        cmocka_unit_test(test_list_random),
        cmocka_unit_test(test_acl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
