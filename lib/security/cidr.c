/* cidr.c: IP address parsing and CIDR lists kept as sorted, merged ranges per family, matched by
 * binary search. */
#include "security/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A 128-bit number in two halves: the numeric value of an IPv6 address. */
struct u128 {
    uint64_t hi, lo;
};

struct range4 {
    uint32_t lo, hi;
};

struct range6 {
    struct u128 lo, hi;
};

struct polis_cidr_list {
    struct range4 *v4;
    size_t n4;
    struct range6 *v6;
    size_t n6;
};

static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* ---- Addresses ----------------------------------------------------------------------------- */

/* Strict dotted quad: exactly four decimal parts 0..255, no sign, no leading zero. */
static bool parse_v4(const char *p, size_t len, uint8_t out[4])
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= len || p[i] != '.')
                return false;
            i++;
        }
        size_t start = i;
        unsigned v = 0;
        while (i < len && p[i] >= '0' && p[i] <= '9' && i - start < 3) {
            v = v * 10 + (unsigned)(p[i] - '0');
            i++;
        }
        size_t digits = i - start;
        if (digits == 0 || v > 255 || (digits > 1 && p[start] == '0'))
            return false;
        out[part] = (uint8_t)v;
    }
    return i == len;
}

/* Store a raw 16-byte IPv6 address, unwrapping IPv4-mapped ones. */
static void set_v6(struct polis_ip *ip, const uint8_t a[16])
{
    memset(ip, 0, sizeof(*ip));
    if (memcmp(a, mapped_prefix, sizeof(mapped_prefix)) == 0) {
        ip->family = AF_INET;
        memcpy(ip->a, a + 12, 4);
        return;
    }
    ip->family = AF_INET6;
    memcpy(ip->a, a, 16);
}

/* IPv6 text (hex digits, ':' and '.' only, so no brackets, zone or spaces) -> 16 raw bytes. */
static bool parse_v6(const char *p, size_t len, uint8_t out[16])
{
    if (len == 0 || len >= POLIS_IP_STRLEN)
        return false;
    char buf[POLIS_IP_STRLEN];
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (!hex && c != '.' && c != ':')
            return false;
        buf[i] = c;
    }
    buf[len] = '\0';
    return inet_pton(AF_INET6, buf, out) == 1;
}

int polis__ip_parse(struct polis_str s, struct polis_ip *ip)
{
    uint8_t a[16];
    if (s.len > 0 && memchr(s.p, ':', s.len) != NULL) {
        if (!parse_v6(s.p, s.len, a))
            return POLIS_EINVAL;
        set_v6(ip, a);
        return 0;
    }
    if (!parse_v4(s.p, s.len, a))
        return POLIS_EINVAL;
    memset(ip, 0, sizeof(*ip));
    ip->family = AF_INET;
    memcpy(ip->a, a, 4);
    return 0;
}

int polis__ip_from_sockaddr(const struct sockaddr *sa, struct polis_ip *ip)
{
    if (sa == NULL)
        return POLIS_EINVAL;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memset(ip, 0, sizeof(*ip));
        ip->family = AF_INET;
        memcpy(ip->a, &in->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        set_v6(ip, in6->sin6_addr.s6_addr);
        return 0;
    }
    return POLIS_EINVAL;
}

size_t polis__ip_format(const struct polis_ip *ip, char *buf, size_t cap)
{
    if (cap == 0 || (ip->family != AF_INET && ip->family != AF_INET6))
        return 0;
    if (inet_ntop(ip->family, ip->a, buf, (socklen_t)cap) == NULL) {
        buf[0] = '\0';
        return 0;
    }
    return strlen(buf);
}

bool polis__ip_eq(const struct polis_ip *a, const struct polis_ip *b)
{
    size_t n = a->family == AF_INET ? 4 : 16;
    return a->family == b->family && memcmp(a->a, b->a, n) == 0;
}

/* ---- CIDR blocks --------------------------------------------------------------------------- */

static void set_err(char *err, size_t errcap, const char *fmt, struct polis_str s)
{
    if (err != NULL && errcap > 0)
        snprintf(err, errcap, fmt, (int)(s.len > 60 ? 60 : s.len), s.p);
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t';
}

/* Whether the bits of a (nbytes long) after the first prefix bits are all 0. */
static bool host_bits_zero(const uint8_t *a, size_t nbytes, unsigned prefix)
{
    for (size_t i = 0; i < nbytes; i++) {
        unsigned first = (unsigned)i * 8;
        uint8_t mask;
        if (prefix >= first + 8)
            mask = 0;
        else if (prefix <= first)
            mask = 0xff;
        else
            mask = (uint8_t)(0xffu >> (prefix - first));
        if (a[i] & mask)
            return false;
    }
    return true;
}

int polis__cidr_block_parse(struct polis_str s, struct polis_cidr_block *out, char *err,
                            size_t errcap)
{
    while (s.len > 0 && is_ws(s.p[0])) {
        s.p++;
        s.len--;
    }
    while (s.len > 0 && is_ws(s.p[s.len - 1]))
        s.len--;
    const char *slash = s.len > 0 ? memchr(s.p, '/', s.len) : NULL;
    struct polis_str addr = {s.p, slash != NULL ? (size_t)(slash - s.p) : s.len};
    bool v6text = addr.len > 0 && memchr(addr.p, ':', addr.len) != NULL;
    uint8_t raw[16] = {0};
    if (v6text ? !parse_v6(addr.p, addr.len, raw) : !parse_v4(addr.p, addr.len, raw)) {
        set_err(err, errcap, "'%.*s': not an IPv4 or IPv6 address or CIDR block", s);
        return POLIS_EINVAL;
    }
    unsigned max = v6text ? 128 : 32;
    unsigned prefix = max;
    if (slash != NULL) {
        const char *d = slash + 1;
        size_t dl = s.len - addr.len - 1;
        prefix = 0;
        bool ok = dl > 0 && dl <= 3 && !(dl > 1 && d[0] == '0');
        for (size_t i = 0; ok && i < dl; i++) {
            ok = d[i] >= '0' && d[i] <= '9';
            prefix = prefix * 10 + (unsigned)(d[i] - '0');
        }
        if (!ok || prefix > max) {
            set_err(err, errcap, "'%.*s': bad prefix length", s);
            return POLIS_EINVAL;
        }
    }
    size_t nbytes = v6text ? 16 : 4;
    if (!host_bits_zero(raw, nbytes, prefix)) {
        if (err != NULL && errcap > 0) {
            /* Say which block was probably meant. */
            uint8_t net[16];
            char text[POLIS_IP_STRLEN] = "?";
            for (size_t i = 0; i < nbytes; i++) {
                unsigned first = (unsigned)i * 8;
                unsigned keep = prefix >= first + 8 ? 8 : prefix > first ? prefix - first : 0;
                net[i] = (uint8_t)(raw[i] & (0xff00u >> keep));
            }
            inet_ntop(v6text ? AF_INET6 : AF_INET, net, text, sizeof(text));
            snprintf(err, errcap,
                     "'%.*s': host bits are set after the prefix length (the block is %s/%u; "
                     "write that, or /%u for one host)",
                     (int)(s.len > 60 ? 60 : s.len), s.p, text, prefix, max);
        }
        return POLIS_EINVAL;
    }
    memset(out, 0, sizeof(*out));
    if (v6text && prefix >= 96 && memcmp(raw, mapped_prefix, sizeof(mapped_prefix)) == 0) {
        out->ip.family = AF_INET;
        memcpy(out->ip.a, raw + 12, 4);
        out->prefix = (uint8_t)(prefix - 96);
    } else {
        out->ip.family = v6text ? AF_INET6 : AF_INET;
        memcpy(out->ip.a, raw, v6text ? 16 : 4);
        out->prefix = (uint8_t)prefix;
    }
    return 0;
}

/* ---- Lists --------------------------------------------------------------------------------- */

static uint32_t be32(const uint8_t *a)
{
    return (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
}

static uint64_t be64(const uint8_t *a)
{
    return (uint64_t)be32(a) << 32 | be32(a + 4);
}

static struct u128 u128_of(const uint8_t a[16])
{
    return (struct u128){be64(a), be64(a + 8)};
}

static int u128_cmp(struct u128 x, struct u128 y)
{
    if (x.hi != y.hi)
        return x.hi < y.hi ? -1 : 1;
    if (x.lo != y.lo)
        return x.lo < y.lo ? -1 : 1;
    return 0;
}

/* x + 1 would not wrap (x is not all ones). */
static bool u128_succ(struct u128 x, struct u128 *out)
{
    if (x.hi == UINT64_MAX && x.lo == UINT64_MAX)
        return false;
    out->lo = x.lo + 1;
    out->hi = x.hi + (out->lo == 0);
    return true;
}

static int cmp4(const void *a, const void *b)
{
    const struct range4 *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return x->hi < y->hi ? -1 : x->hi > y->hi;
}

static int cmp6(const void *a, const void *b)
{
    const struct range6 *x = a, *y = b;
    int c = u128_cmp(x->lo, y->lo);
    return c != 0 ? c : u128_cmp(x->hi, y->hi);
}

/* Sort and merge overlapping or adjacent ranges in place. */
static size_t merge4(struct range4 *r, size_t n)
{
    if (n == 0)
        return 0;
    qsort(r, n, sizeof(*r), cmp4);
    size_t w = 0;
    for (size_t i = 1; i < n; i++) {
        if (r[w].hi == UINT32_MAX || r[i].lo <= r[w].hi + 1) {
            if (r[i].hi > r[w].hi)
                r[w].hi = r[i].hi;
        } else {
            r[++w] = r[i];
        }
    }
    return w + 1;
}

static size_t merge6(struct range6 *r, size_t n)
{
    if (n == 0)
        return 0;
    qsort(r, n, sizeof(*r), cmp6);
    size_t w = 0;
    for (size_t i = 1; i < n; i++) {
        struct u128 next;
        if (!u128_succ(r[w].hi, &next) || u128_cmp(r[i].lo, next) <= 0) {
            if (u128_cmp(r[i].hi, r[w].hi) > 0)
                r[w].hi = r[i].hi;
        } else {
            r[++w] = r[i];
        }
    }
    return w + 1;
}

static void add_block(struct polis_cidr_list *l, const struct polis_cidr_block *c)
{
    if (c->ip.family == AF_INET) {
        uint32_t lo = be32(c->ip.a);
        /* Shifting a 32-bit value by 32 is undefined: /0 and /32 are spelled out. */
        uint32_t span = c->prefix == 0    ? UINT32_MAX
                        : c->prefix == 32 ? 0
                                          : (UINT32_MAX >> c->prefix);
        l->v4[l->n4++] = (struct range4){lo, lo | span};
        return;
    }
    struct u128 lo = u128_of(c->ip.a), hi = lo;
    unsigned p = c->prefix;
    if (p < 64) {
        hi.hi |= p == 0 ? UINT64_MAX : (UINT64_MAX >> p);
        hi.lo = UINT64_MAX;
    } else if (p < 128) {
        hi.lo |= UINT64_MAX >> (p - 64);
    }
    l->v6[l->n6++] = (struct range6){lo, hi};
}

/* Split text into entries at commas and white space: calls fn for each one, stops at an error. */
static int each_entry(struct polis_str text, int (*fn)(struct polis_str e, size_t i, void *ud),
                      void *ud)
{
    size_t i = 0, k = 0;
    while (i < text.len) {
        while (i < text.len &&
               (is_ws(text.p[i]) || text.p[i] == ',' || text.p[i] == '\n' || text.p[i] == '\r'))
            i++;
        size_t s = i;
        while (i < text.len && !is_ws(text.p[i]) && text.p[i] != ',' && text.p[i] != '\n' &&
               text.p[i] != '\r')
            i++;
        if (i > s) {
            int rc = fn((struct polis_str){text.p + s, i - s}, k++, ud);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

struct build {
    struct polis_cidr_list *l;
    size_t *bad;
    char *err;
    size_t errcap;
    size_t count;
};

static int count_entry(struct polis_str e, size_t i, void *ud)
{
    (void)e;
    (void)i;
    ((struct build *)ud)->count++;
    return 0;
}

static int build_entry(struct polis_str e, size_t i, void *ud)
{
    struct build *b = ud;
    struct polis_cidr_block c;
    if (polis__cidr_block_parse(e, &c, b->err, b->errcap) < 0) {
        if (b->bad != NULL)
            *b->bad = i;
        return POLIS_EINVAL;
    }
    add_block(b->l, &c);
    return 0;
}

static int list_alloc(size_t n, struct polis_cidr_list **out)
{
    if (n > POLIS_CIDR_MAX_ENTRIES)
        return POLIS_ETOOBIG;
    struct polis_cidr_list *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return POLIS_ENOMEM;
    /* Room for every entry in either family; trimmed after merging. */
    l->v4 = calloc(n + 1, sizeof(*l->v4));
    l->v6 = calloc(n + 1, sizeof(*l->v6));
    if (l->v4 == NULL || l->v6 == NULL) {
        polis__cidr_list_free(l);
        return POLIS_ENOMEM;
    }
    *out = l;
    return 0;
}

static void list_finish(struct polis_cidr_list *l)
{
    l->n4 = merge4(l->v4, l->n4);
    l->n6 = merge6(l->v6, l->n6);
    /* Shrinking cannot usefully fail: keep the larger block when realloc says no. */
    struct range4 *r4 = realloc(l->v4, (l->n4 + 1) * sizeof(*l->v4));
    if (r4 != NULL)
        l->v4 = r4;
    struct range6 *r6 = realloc(l->v6, (l->n6 + 1) * sizeof(*l->v6));
    if (r6 != NULL)
        l->v6 = r6;
}

int polis__cidr_list_new(const struct polis_str *entries, size_t n, struct polis_cidr_list **out,
                         size_t *bad, char *err, size_t errcap)
{
    struct polis_cidr_list *l;
    int rc = list_alloc(n, &l);
    if (rc < 0)
        return rc;
    struct build b = {l, bad, err, errcap, 0};
    for (size_t i = 0; i < n; i++) {
        rc = build_entry(entries[i], i, &b);
        if (rc < 0) {
            polis__cidr_list_free(l);
            return rc;
        }
    }
    list_finish(l);
    *out = l;
    return 0;
}

int polis__cidr_list_parse(struct polis_str text, struct polis_cidr_list **out, size_t *bad,
                           char *err, size_t errcap)
{
    struct build b = {NULL, bad, err, errcap, 0};
    each_entry(text, count_entry, &b);
    int rc = list_alloc(b.count, &b.l);
    if (rc < 0)
        return rc;
    rc = each_entry(text, build_entry, &b);
    if (rc < 0) {
        polis__cidr_list_free(b.l);
        return rc;
    }
    list_finish(b.l);
    *out = b.l;
    return 0;
}

int polis__cidr_list_from_blocks(const struct polis_cidr_block *blocks, size_t n,
                                 struct polis_cidr_list **out, size_t *bad)
{
    struct polis_cidr_list *l;
    int rc = list_alloc(n, &l);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        struct polis_cidr_block c = blocks[i];
        bool v6 = c.ip.family == AF_INET6;
        unsigned max = v6 ? 128 : 32;
        if ((!v6 && c.ip.family != AF_INET) || c.prefix > max ||
            !host_bits_zero(c.ip.a, v6 ? 16 : 4, c.prefix)) {
            if (bad != NULL)
                *bad = i;
            polis__cidr_list_free(l);
            return POLIS_EINVAL;
        }
        if (v6 && c.prefix >= 96 && memcmp(c.ip.a, mapped_prefix, sizeof(mapped_prefix)) == 0) {
            c.ip.family = AF_INET;
            memmove(c.ip.a, c.ip.a + 12, 4);
            memset(c.ip.a + 4, 0, 12);
            c.prefix = (uint8_t)(c.prefix - 96);
        }
        add_block(l, &c);
    }
    list_finish(l);
    *out = l;
    return 0;
}

void polis__cidr_list_free(struct polis_cidr_list *l)
{
    if (l == NULL)
        return;
    free(l->v4);
    free(l->v6);
    free(l);
}

bool polis__cidr_list_match(const struct polis_cidr_list *l, const struct polis_ip *ip)
{
    if (l == NULL)
        return false;
    if (ip->family == AF_INET) {
        uint32_t x = be32(ip->a);
        /* The last range whose lo <= x, then check its hi. */
        size_t lo = 0, hi = l->n4;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (l->v4[mid].lo <= x)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo > 0 && x <= l->v4[lo - 1].hi;
    }
    if (ip->family == AF_INET6) {
        struct u128 x = u128_of(ip->a);
        size_t lo = 0, hi = l->n6;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (u128_cmp(l->v6[mid].lo, x) <= 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo > 0 && u128_cmp(x, l->v6[lo - 1].hi) <= 0;
    }
    return false;
}

bool polis__cidr_list_match_sockaddr(const struct polis_cidr_list *l, const struct sockaddr *sa)
{
    struct polis_ip ip;
    return polis__ip_from_sockaddr(sa, &ip) == 0 && polis__cidr_list_match(l, &ip);
}

bool polis__cidr_list_match_text(const struct polis_cidr_list *l, struct polis_str text)
{
    struct polis_ip ip;
    return polis__ip_parse(text, &ip) == 0 && polis__cidr_list_match(l, &ip);
}

size_t polis__cidr_list_ranges(const struct polis_cidr_list *l)
{
    return l == NULL ? 0 : l->n4 + l->n6;
}

bool polis__ip_acl_allows(const struct polis_cidr_list *allow, const struct polis_cidr_list *deny,
                          const struct polis_ip *ip)
{
    if (polis__cidr_list_match(deny, ip))
        return false;
    return allow == NULL || polis__cidr_list_match(allow, ip);
}
