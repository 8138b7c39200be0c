/* lib/http/h1-parse.c: the strict, incremental HTTP/1.1 head parser and chunked decoder (RFC 9112).
 */
#include <polis/http.h>
#include "http/h1-internal.h"

#include <string.h>

/* Character classes, one lookup per byte (RFC 9110 section 5.6.2, RFC 3986 section 3.2.2). */
enum {
    C_TCHAR = 1,   /* token character */
    C_VALUE = 2,   /* field-value character: VCHAR, obs-text, SP, HTAB */
    C_TARGET = 4,  /* request-target character: VCHAR except '#' */
    C_HEX = 8,     /* HEXDIG */
    C_HOST = 16,   /* reg-name: unreserved, sub-delims, '%' */
    C_QDTEXT = 32, /* quoted-string text: qdtext */
    C_OWS = 64,    /* SP, HTAB */
};

static const uint8_t ctype[256] = {
    0,  0,  0,  0,  0,  0,  0,  0,  0,  98, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
    0,  0,  0,  0,  0,  0,  0,  0,  98, 55, 6,  35, 55, 55, 55, 55, 54, 54, 55, 55, 54, 55, 55, 38,
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 38, 54, 38, 54, 38, 38, 38, 63, 63, 63, 63, 63, 63, 55,
    55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 38, 6,  38, 39, 55,
    39, 63, 63, 63, 63, 63, 63, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55,
    55, 55, 55, 38, 39, 38, 55, 0,  34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34,
    34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34,
    34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34,
    34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34,
    34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34,
    34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34,
};

#define CT(c) ctype[(uint8_t)(c)]

#define DEFAULT_MAX_REQUEST_LINE 8192
#define DEFAULT_MAX_HEAD 65536
#define DEFAULT_MAX_LINE 4096
#define DEFAULT_MAX_TRAILER 8192
/* RFC 9112 section 2.2: a server SHOULD ignore at least one empty line before a request-line. */
#define MAX_LEADING_EMPTY_LINES 4

/* n bytes of p equal lit, where lit is lower case letters, digits and '-'. Setting bit 0x20
 * folds upper case letters; it maps no other token or value character onto a letter, '-' or a
 * digit of lit, so this is exact for token and field-value bytes (the only callers). Eight
 * bytes at a time: the names compared are up to 17 bytes. */
static inline bool lc_eq(const char *p, const char *lit, size_t n)
{
    while (n >= 8) {
        uint64_t a, b;
        memcpy(&a, p, 8);
        memcpy(&b, lit, 8);
        if ((a | 0x2020202020202020ull) != b)
            return false;
        p += 8;
        lit += 8;
        n -= 8;
    }
    for (size_t i = 0; i < n; i++) {
        if (((uint8_t)p[i] | 0x20) != (uint8_t)lit[i])
            return false;
    }
    return true;
}

/* ---- Scanners ------------------------------------------------------------------------------
 * Each scanner returns the first byte of [p, hi) outside its class, or hi. The scalar twins
 * (one table lookup per byte) are the reference. On x86-64 the SSE2 versions do the work 16
 * bytes at a time (SSE2 is part of the x86-64 baseline: no -march flag, no runtime dispatch);
 * elsewhere, on little-endian machines, values and targets go 8 bytes at a time (SWAR).
 * Vector loads stay inside [lo, hi), lo being the start of the caller's buffer: the last
 * partial block is read as the 16 bytes that end at hi, shifted, so only a buffer shorter than
 * 16 bytes is scanned byte by byte. */

static inline const char *lf_scalar(const char *p, const char *hi)
{
    while (p < hi && *p != '\n')
        p++;
    return p;
}

static inline const char *value_scalar(const char *p, const char *hi)
{
    while (p < hi && (CT(*p) & C_VALUE))
        p++;
    return p;
}

static inline const char *target_scalar(const char *p, const char *hi)
{
    while (p < hi && (CT(*p) & C_TARGET))
        p++;
    return p;
}

static inline const char *token_scalar(const char *p, const char *hi)
{
    while (p < hi && (CT(*p) & C_TCHAR))
        p++;
    return p;
}

/* reg-name bytes but '%' (the caller checks each pct-encoding). */
static inline const char *host_scalar(const char *p, const char *hi)
{
    while (p < hi && (CT(*p) & C_HOST) && *p != '%')
        p++;
    return p;
}

#if defined(__SSE2__)
#include <emmintrin.h>
#define SCAN_SSE2 1

static inline __m128i ld16(const char *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

static inline unsigned mask16(__m128i v)
{
    return (unsigned)_mm_movemask_epi8(v);
}

/* Stop masks: bit i set when byte i ends the run. */
static inline unsigned stops_lf(__m128i x)
{
    return mask16(_mm_cmpeq_epi8(x, _mm_set1_epi8('\n')));
}

/* Not a field-value byte: CTL but HTAB, or DEL. */
static inline unsigned stops_value(__m128i x)
{
    __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
    __m128i tab = _mm_cmpeq_epi8(x, _mm_set1_epi8('\t'));
    __m128i del = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f));
    return mask16(_mm_or_si128(_mm_andnot_si128(tab, ctl), del));
}

/* Not a request-target byte: as signed bytes, below 0x21 covers CTL, SP and 0x80-0xff. */
static inline unsigned stops_target(__m128i x)
{
    __m128i m = _mm_cmplt_epi8(x, _mm_set1_epi8(0x21));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f)));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('#')));
    return mask16(m);
}

/* Not a letter, digit or '-' (and '.' when dot): the bytes of nearly every field name and host.
 * A range test is one add and one signed compare: adding 0x80 - lo maps [lo, lo + n) onto
 * [-128, -128 + n); bytes 0x80-0xff never land there. */
static inline unsigned stops_alnum(__m128i x, bool dot)
{
    __m128i l = _mm_or_si128(x, _mm_set1_epi8(0x20));
    __m128i alpha = _mm_cmplt_epi8(_mm_add_epi8(l, _mm_set1_epi8((char)(0x80 - 'a'))),
                                   _mm_set1_epi8((char)(-128 + 26)));
    __m128i digit = _mm_cmplt_epi8(_mm_add_epi8(x, _mm_set1_epi8((char)(0x80 - '0'))),
                                   _mm_set1_epi8((char)(-128 + 10)));
    __m128i ok = _mm_or_si128(_mm_or_si128(alpha, digit), _mm_cmpeq_epi8(x, _mm_set1_epi8('-')));
    if (dot)
        ok = _mm_or_si128(ok, _mm_cmpeq_epi8(x, _mm_set1_epi8('.')));
    return mask16(ok) ^ 0xffffu;
}

/* The shared loop; kind is a constant after inlining. */
enum { K_LF, K_VALUE, K_TARGET, K_NAME, K_HOST };

static inline __attribute__((always_inline)) unsigned stops(__m128i x, int kind)
{
    switch (kind) {
    case K_LF:
        return stops_lf(x);
    case K_VALUE:
        return stops_value(x);
    case K_TARGET:
        return stops_target(x);
    case K_NAME:
        return stops_alnum(x, false);
    default:
        return stops_alnum(x, true);
    }
}

static inline __attribute__((always_inline)) const char *scan_sse2(const char *lo, const char *p,
                                                                   const char *hi, int kind)
{
    while (hi - p >= 16) {
        unsigned m = stops(ld16(p), kind);
        if (m != 0)
            return p + __builtin_ctz(m);
        p += 16;
    }
    if (p < hi && hi - lo >= 16) {
        const char *q = hi - 16; /* q < p: shift out the bytes already seen */
        unsigned m = stops(ld16(q), kind) >> (p - q);
        return m != 0 ? p + __builtin_ctz(m) : hi;
    }
    switch (kind) {
    case K_LF:
        return lf_scalar(p, hi);
    case K_VALUE:
        return value_scalar(p, hi);
    case K_TARGET:
        return target_scalar(p, hi);
    default:
        return p; /* the fast classes: the scalar continuation does the rest */
    }
}
#elif defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SCAN_SWAR 1
/* A mask has the high bit set in each byte that stops the scan; the lowest set bit is exact
 * (borrows only spoil the bytes above a true hit), so ctz gives the first stop byte. */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t bytes_below(uint64_t x, uint8_t n)
{
    return (x - ONES * n) & ~x & HIGHS;
}

static inline uint64_t bytes_equal(uint64_t x, uint8_t c)
{
    uint64_t y = x ^ (ONES * c);
    return (y - ONES) & ~y & HIGHS;
}

static inline const char *value_swar(const char *p, const char *hi)
{
    while (hi - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t m = bytes_below(x, 0x20) | bytes_equal(x, 0x7f);
        if (m == 0) {
            p += 8;
            continue;
        }
        p += __builtin_ctzll(m) >> 3;
        if (*p != '\t')
            return p;
        p++;
    }
    return value_scalar(p, hi);
}

static inline const char *target_swar(const char *p, const char *hi)
{
    while (hi - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t m =
            bytes_below(x, 0x21) | (x & HIGHS) | bytes_equal(x, 0x7f) | bytes_equal(x, '#');
        if (m != 0)
            return p + (__builtin_ctzll(m) >> 3);
        p += 8;
    }
    return target_scalar(p, hi);
}
#endif

/* Next LF. */
static inline const char *scan_lf(const char *lo, const char *p, const char *hi)
{
#ifdef SCAN_SSE2
    return scan_sse2(lo, p, hi, K_LF);
#else
    (void)lo;
    const char *nl = p < hi ? memchr(p, '\n', (size_t)(hi - p)) : NULL;
    return nl != NULL ? nl : hi;
#endif
}

/* Field-value bytes: VCHAR, obs-text, SP, HTAB. */
static inline const char *scan_value(const char *lo, const char *p, const char *hi)
{
#if defined(SCAN_SSE2)
    return scan_sse2(lo, p, hi, K_VALUE);
#elif defined(SCAN_SWAR)
    (void)lo;
    return value_swar(p, hi);
#else
    (void)lo;
    return value_scalar(p, hi);
#endif
}

/* Request-target bytes: VCHAR but '#'. */
static inline const char *scan_target(const char *lo, const char *p, const char *hi)
{
#if defined(SCAN_SSE2)
    return scan_sse2(lo, p, hi, K_TARGET);
#elif defined(SCAN_SWAR)
    (void)lo;
    return target_swar(p, hi);
#else
    (void)lo;
    return target_scalar(p, hi);
#endif
}

/* Token bytes (tchar): letters, digits and '-' in bulk, then the other tchars byte by byte. */
static inline const char *scan_token(const char *lo, const char *p, const char *hi)
{
#ifdef SCAN_SSE2
    p = scan_sse2(lo, p, hi, K_NAME);
#else
    (void)lo;
#endif
    return token_scalar(p, hi);
}

/* reg-name bytes but '%': letters, digits, '-' and '.' in bulk, then the rest byte by byte. */
static inline const char *scan_host(const char *lo, const char *p, const char *hi)
{
#ifdef SCAN_SSE2
    p = scan_sse2(lo, p, hi, K_HOST);
#else
    (void)lo;
#endif
    return host_scalar(p, hi);
}

/* Declared in h1-internal.h, for the unit test. */
size_t polis__h1_scan(int kind, bool fast, const char *lo, const char *p, const char *hi)
{
    const char *r;
    switch (kind) {
    case 0:
        r = fast ? scan_lf(lo, p, hi) : lf_scalar(p, hi);
        break;
    case 1:
        r = fast ? scan_value(lo, p, hi) : value_scalar(p, hi);
        break;
    case 2:
        r = fast ? scan_target(lo, p, hi) : target_scalar(p, hi);
        break;
    case 3:
        r = fast ? scan_token(lo, p, hi) : token_scalar(p, hi);
        break;
    default:
        r = fast ? scan_host(lo, p, hi) : host_scalar(p, hi);
        break;
    }
    return (size_t)(r - p);
}

static inline uint8_t ascii_lower(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

/* ASCII case-insensitive equality of two byte strings. */
static bool ci_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++) {
        if (ascii_lower((uint8_t)a[i]) != ascii_lower((uint8_t)b[i]))
            return false;
    }
    return true;
}

static inline bool is_ows(char c)
{
    return CT(c) & C_OWS;
}

/* n equals lit (its length, a constant after inlining, is len; lower case letters and '-'),
 * ASCII case-insensitively, exactly: bit 0x20 is folded in only where lit has a letter (bit 0x40
 * set among these characters), so '-' matches only '-' and a CR cannot pass for it. Two or
 * three overlapping loads, whatever the length. */
static inline __attribute__((always_inline)) bool name_is(const char *n, const char *lit,
                                                          size_t len)
{
    if (len >= 8) {
        uint64_t a, b, x, y;
        memcpy(&a, lit, 8);
        memcpy(&b, lit + len - 8, 8);
        memcpy(&x, n, 8);
        memcpy(&y, n + len - 8, 8);
        bool eq = ((x | ((a & 0x4040404040404040ull) >> 1)) == a) &
                  ((y | ((b & 0x4040404040404040ull) >> 1)) == b);
        if (len > 16) {
            memcpy(&a, lit + 8, 8);
            memcpy(&x, n + 8, 8);
            eq &= (x | ((a & 0x4040404040404040ull) >> 1)) == a;
        }
        return eq;
    }
    if (len >= 4) {
        uint32_t a, b, x, y;
        memcpy(&a, lit, 4);
        memcpy(&b, lit + len - 4, 4);
        memcpy(&x, n, 4);
        memcpy(&y, n + len - 4, 4);
        return ((x | ((a & 0x40404040u) >> 1)) == a) & ((y | ((b & 0x40404040u) >> 1)) == b);
    }
    uint16_t a, b, x, y;
    memcpy(&a, lit, 2);
    memcpy(&b, lit + len - 2, 2);
    memcpy(&x, n, 2);
    memcpy(&y, n + len - 2, 2);
    return ((x | ((a & 0x4040u) >> 1)) == a) & ((y | ((b & 0x4040u) >> 1)) == b);
}

#define NAME_IS(n, lit) name_is(n, lit, sizeof(lit) - 1)

/* The id of a header name: a switch on the length and the first letter, then one compare. */
static inline __attribute__((always_inline)) uint8_t header_id(const char *n, size_t len)
{
    uint8_t c = (uint8_t)(n[0] | 0x20);
    switch (len) {
    case 2:
        return NAME_IS(n, "te") ? POLIS_HDR_TE : POLIS_HDR_OTHER;
    case 3:
        return NAME_IS(n, "via") ? POLIS_HDR_VIA : POLIS_HDR_OTHER;
    case 4:
        return NAME_IS(n, "host") ? POLIS_HDR_HOST : POLIS_HDR_OTHER;
    case 6:
        if (c == 'c')
            return NAME_IS(n, "cookie") ? POLIS_HDR_COOKIE : POLIS_HDR_OTHER;
        return NAME_IS(n, "expect") ? POLIS_HDR_EXPECT : POLIS_HDR_OTHER;
    case 7:
        if (c == 'u')
            return NAME_IS(n, "upgrade") ? POLIS_HDR_UPGRADE : POLIS_HDR_OTHER;
        return NAME_IS(n, "trailer") ? POLIS_HDR_TRAILER : POLIS_HDR_OTHER;
    case 10:
        if (c == 'c')
            return NAME_IS(n, "connection") ? POLIS_HDR_CONNECTION : POLIS_HDR_OTHER;
        return NAME_IS(n, "keep-alive") ? POLIS_HDR_KEEP_ALIVE : POLIS_HDR_OTHER;
    case 12:
        return NAME_IS(n, "x-request-id") ? POLIS_HDR_X_REQUEST_ID : POLIS_HDR_OTHER;
    case 14:
        return NAME_IS(n, "content-length") ? POLIS_HDR_CONTENT_LENGTH : POLIS_HDR_OTHER;
    case 15:
        return NAME_IS(n, "x-forwarded-for") ? POLIS_HDR_X_FORWARDED_FOR : POLIS_HDR_OTHER;
    case 16:
        if (c == 'p')
            return NAME_IS(n, "proxy-connection") ? POLIS_HDR_PROXY_CONNECTION : POLIS_HDR_OTHER;
        return NAME_IS(n, "x-forwarded-host") ? POLIS_HDR_X_FORWARDED_HOST : POLIS_HDR_OTHER;
    case 17:
        if (c == 't')
            return NAME_IS(n, "transfer-encoding") ? POLIS_HDR_TRANSFER_ENCODING : POLIS_HDR_OTHER;
        return NAME_IS(n, "x-forwarded-proto") ? POLIS_HDR_X_FORWARDED_PROTO : POLIS_HDR_OTHER;
    default:
        return POLIS_HDR_OTHER;
    }
}

/* Hop-by-hop by definition (RFC 9110 section 7.6.1, RFC 9112 section 6.1). */
static const bool id_is_hop[POLIS_HDR__COUNT] = {
    [POLIS_HDR_CONNECTION] = true,
    [POLIS_HDR_KEEP_ALIVE] = true,
    [POLIS_HDR_TE] = true,
    [POLIS_HDR_TRAILER] = true,
    [POLIS_HDR_UPGRADE] = true,
    [POLIS_HDR_PROXY_CONNECTION] = true,
    [POLIS_HDR_TRANSFER_ENCODING] = true,
};

/* ---- Host and authority (RFC 9110 section 7.2, RFC 3986 section 3.2) ----------------------- */

/* host [ ":" port ]: host is a reg-name (pct-encoding checked), an IPv4 address (a reg-name
 * syntactically) or an IP-literal in brackets. port_required: authority-form for CONNECT.
 * allow_empty_host: the Host field may be empty (RFC 9110 section 7.2). [lo, p + len) may be
 * read (lo: the start of the buffer). */
static bool valid_authority(const char *lo, const char *p, size_t len, bool port_required,
                            bool allow_empty_host)
{
    const char *e = p + len;
    const char *h = p;

    if (p < e && *p == '[') {
        p++;
        const char *lit = p;
        while (p < e && *p != ']') {
            uint8_t c = (uint8_t)*p;
            /* IPv6address / IPvFuture: hex digits, ':', '.', 'v' and, for IPvFuture, the
             * unreserved and sub-delims characters; never '[', '/', '@' or spaces. */
            if (!(CT(c) & C_HOST) && c != ':')
                return false;
            if (c == '%')
                return false; /* zone identifiers are not allowed in URIs (RFC 6874 aside) */
            p++;
        }
        if (p == e || p == lit)
            return false;
        p++; /* ']' */
    } else {
        for (;;) {
            p = scan_host(lo, p, e);
            if (p == e || *p != '%')
                break;
            if (e - p < 3 || !(CT(p[1]) & C_HEX) || !(CT(p[2]) & C_HEX))
                return false;
            p += 3;
        }
        if (p < e && *p != ':') /* not a reg-name byte */
            return false;
        if (p == h && !allow_empty_host)
            return false;
    }
    if (p == e)
        return !port_required;
    if (*p != ':')
        return false;
    p++;
    size_t digits = (size_t)(e - p);
    if (digits > 5 || (port_required && digits == 0))
        return false;
    for (; p < e; p++) {
        if (*p < '0' || *p > '9')
            return false;
    }
    return true;
}

/* ---- Request-target (RFC 9112 section 3.2) -------------------------------------------------- */

static int check_target(const char *lo, struct polis_str method, struct polis_str t)
{
    bool connect = method.len == 7 && memcmp(method.p, "CONNECT", 7) == 0;
    bool options = method.len == 7 && memcmp(method.p, "OPTIONS", 7) == 0;

    if (connect) /* authority-form, only for CONNECT (section 3.2.3) */
        return valid_authority(lo, t.p, t.len, true, false) ? 0 : POLIS_EBADMSG;
    if (t.p[0] == '/') /* origin-form (section 3.2.1) */
        return 0;
    if (t.len == 1 && t.p[0] == '*') /* asterisk-form, only for OPTIONS (section 3.2.4) */
        return options ? 0 : POLIS_EBADMSG;
    /* absolute-form (section 3.2.2): only the http and https schemes make sense here. */
    size_t skip;
    if (t.len >= 7 && lc_eq(t.p, "http://", 7))
        skip = 7;
    else if (t.len >= 8 && lc_eq(t.p, "https://", 8))
        skip = 8;
    else
        return POLIS_EBADMSG;
    const char *a = t.p + skip, *e = t.p + t.len, *q = a;
    while (q < e && *q != '/' && *q != '?')
        q++;
    /* No userinfo: '@' is not a host character, so valid_authority rejects it. */
    return valid_authority(lo, a, (size_t)(q - a), false, false) ? 0 : POLIS_EBADMSG;
}

/* ---- End of head search --------------------------------------------------------------------- */

/* Find the end of the head ("\r\n\r\n") in buf[0..len), resuming at *scan. Every LF seen must
 * follow a CR, and a line starting with CR must be the empty line: both are rejected here so a
 * head with bare LFs fails at once instead of waiting for a terminator that never comes.
 * Returns the head length (> 0), 0 when not found yet, or POLIS_EBADMSG (as a negative). */
static long find_end(const char *buf, size_t len, size_t start, size_t *scan)
{
    size_t i = start;
    while (i < len) {
        /* The LFs of the next block of up to 16 bytes from i, as a mask over buf[base..). */
        size_t base;
        unsigned lfs;
#ifdef SCAN_SSE2
        if (len - i >= 16) {
            base = i;
            lfs = stops_lf(ld16(buf + i));
            i += 16;
        } else if (len >= 16) {
            base = len - 16; /* the last 16 bytes, without the ones before i */
            lfs = stops_lf(ld16(buf + base)) >> (i - base) << (i - base);
            i = len;
        } else
#endif
        {
            base = i;
            lfs = 0;
            for (size_t k = 0; k < 16 && i < len; k++, i++)
                lfs |= (unsigned)(buf[i] == '\n') << k;
        }
        for (; lfs != 0; lfs &= lfs - 1) {
            size_t k = base + (size_t)__builtin_ctz(lfs);
            if (k == 0 || buf[k - 1] != '\r')
                return POLIS_EBADMSG;
            if (k + 1 >= len) {
                *scan = k;
                return 0;
            }
            if (buf[k + 1] == '\r') {
                if (k + 2 >= len) {
                    *scan = k;
                    return 0;
                }
                if (buf[k + 2] != '\n')
                    return POLIS_EBADMSG;
                return (long)(k + 3);
            }
        }
    }
    *scan = len;
    return 0;
}

/* ---- Head parsing --------------------------------------------------------------------------- */

struct limits {
    size_t max_request_line, max_head, max_headers;
};

static void get_limits(const struct polis_h1_limits *lim, size_t array_len, struct limits *l)
{
    l->max_request_line = DEFAULT_MAX_REQUEST_LINE;
    l->max_head = DEFAULT_MAX_HEAD;
    l->max_headers = array_len;
    if (lim != NULL) {
        if (lim->max_request_line)
            l->max_request_line = lim->max_request_line;
        if (lim->max_head)
            l->max_head = lim->max_head;
        if (lim->max_headers && lim->max_headers < l->max_headers)
            l->max_headers = lim->max_headers;
    }
    if (l->max_headers > INT16_MAX)
        l->max_headers = INT16_MAX; /* hdr_index is int16_t */
}

/* Parse the header lines from p up to and including the empty line, reading nothing at or past
 * hi ([lo, hi) is readable); *end is set past the empty line. Fails with POLIS_EBADMSG when a
 * line does not end with CRLF before hi, so the caller that knows where the head ends
 * (find_end) checks that *end is that place, and the one-pass caller (hi: all the bytes) falls
 * back on the two-phase path on any failure. */
static int parse_headers(const char *lo, const char *p, const char *hi, struct polis_h1_msg *m,
                         size_t max, unsigned counts[POLIS_HDR__COUNT], const char **end)
{
    size_t n = 0;
    for (;;) {
        if (hi - p < 2)
            return POLIS_EBADMSG;
        if (*p == '\r') {
            if (p[1] != '\n')
                return POLIS_EBADMSG;
            *end = p + 2;
            break;
        }
        /* field-name = token, then ':' at once (section 5.1); obs-fold and an empty name fail
         * here because SP, HTAB and ':' are not token characters. */
        const char *name = p;
        p = scan_token(lo, p, hi);
        if (p == name || p == hi || *p != ':')
            return POLIS_EBADMSG;
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < hi && is_ows(*p))
            p++;
        const char *val = p;
        p = scan_value(lo, p, hi);
        if (hi - p < 2 || p[0] != '\r' || p[1] != '\n') /* NUL, CTL, bare CR or bare LF */
            return POLIS_EBADMSG;
        const char *ve = p;
        while (ve > val && is_ows(ve[-1]))
            ve--;
        p += 2;

        if (n == max)
            return POLIS_EHDRTOOBIG;
        struct polis_h1_header *h = &m->headers[n];
        uint8_t id = header_id(name, name_len);
        h->name.p = name;
        h->name.len = name_len;
        h->value.p = val;
        h->value.len = (size_t)(ve - val);
        h->id = id;
        h->hop = id_is_hop[id];
        if (id != POLIS_HDR_OTHER) {
            if (counts[id]++ == 0)
                m->hdr_index[id] = (int16_t)n;
        }
        n++;
    }
    m->num_headers = n;
    return 0;
}

/* Content-Length = 1*DIGIT (RFC 9110 section 8.6); no sign, no list, at most 19 digits so it
 * never overflows a uint64_t. */
static int parse_content_length(struct polis_str v, uint64_t *out)
{
    if (v.len == 0 || v.len > 19)
        return POLIS_EBADMSG;
    uint64_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned)((uint8_t)v.p[i] - '0');
        if (d > 9)
            return POLIS_EBADMSG;
        n = n * 10 + d;
    }
    *out = n;
    return 0;
}

static const char *skip_ows(const char *p, const char *e)
{
    while (p < e && is_ows(*p))
        p++;
    return p;
}

/* Walk one Transfer-Encoding value: 1#transfer-coding, with transfer-coding = token
 * *( OWS ";" OWS token BWS "=" BWS ( token / quoted-string ) ) (RFC 9110 section 10.1.4,
 * RFC 9112 section 6.1). Empty elements are refused: this field decides framing. Counts the
 * codings and the "chunked" ones, and says whether the last coding is chunked. */
static int walk_te(const char *lo, struct polis_str v, unsigned *ncodings, unsigned *nchunked,
                   bool *last_chunked)
{
    const char *p = v.p, *e = v.p + v.len;
    for (;;) {
        p = skip_ows(p, e);
        const char *tok = p;
        p = scan_token(lo, p, e);
        if (p == tok)
            return POLIS_EBADMSG;
        bool chunked = p - tok == 7 && lc_eq(tok, "chunked", 7);
        bool params = false;
        p = skip_ows(p, e);
        while (p < e && *p == ';') {
            params = true;
            p = skip_ows(p + 1, e);
            const char *pn = p;
            while (p < e && (CT(*p) & C_TCHAR))
                p++;
            if (p == pn)
                return POLIS_EBADMSG;
            p = skip_ows(p, e);
            if (p == e || *p != '=')
                return POLIS_EBADMSG;
            p = skip_ows(p + 1, e);
            if (p < e && *p == '"') {
                p++;
                for (;;) {
                    if (p == e)
                        return POLIS_EBADMSG;
                    if (*p == '"')
                        break;
                    if (*p == '\\') {
                        p++;
                        if (p == e || !(CT(*p) & C_VALUE))
                            return POLIS_EBADMSG;
                    } else if (!(CT(*p) & C_QDTEXT)) {
                        return POLIS_EBADMSG;
                    }
                    p++;
                }
                p++;
            } else {
                const char *pv = p;
                while (p < e && (CT(*p) & C_TCHAR))
                    p++;
                if (p == pv)
                    return POLIS_EBADMSG;
            }
            p = skip_ows(p, e);
        }
        if (chunked && params) /* chunked has no parameters */
            return POLIS_EBADMSG;
        (*ncodings)++;
        *nchunked += chunked;
        *last_chunked = chunked;
        if (p == e)
            return 0;
        if (*p != ',')
            return POLIS_EBADMSG;
        p++;
    }
}

/* Mark every header named name as hop-by-hop. */
static void mark_hop(struct polis_h1_msg *m, const char *name, size_t len)
{
    for (size_t i = 0; i < m->num_headers; i++) {
        struct polis_h1_header *h = &m->headers[i];
        if (!h->hop && ci_eq(h->name.p, h->name.len, name, len))
            h->hop = true;
    }
}

/* Connection = #connection-option (RFC 9110 section 7.6.1). Empty elements are ignored. */
static int walk_connection(const char *lo, struct polis_h1_msg *m, struct polis_str v, bool *close,
                           bool *keep_alive, bool *upgrade)
{
    const char *p = v.p, *e = v.p + v.len;
    while (p < e) {
        p = skip_ows(p, e);
        const char *tok = p;
        p = scan_token(lo, p, e);
        size_t n = (size_t)(p - tok);
        p = skip_ows(p, e);
        if (p < e && *p != ',')
            return POLIS_EBADMSG;
        if (p < e)
            p++; /* the comma */
        if (n == 0)
            continue;
        if (n == 5 && lc_eq(tok, "close", 5)) {
            *close = true;
        } else if (n == 10 && lc_eq(tok, "keep-alive", 10)) {
            *keep_alive = true;
        } else if (n == 7 && lc_eq(tok, "upgrade", 7)) {
            *upgrade = true;
        } else {
            /* A proxy drops the headers named here: never let a peer name framing or routing
             * headers (request smuggling by hop-by-hop stripping). */
            uint8_t id = header_id(tok, n);
            if (id == POLIS_HDR_CONTENT_LENGTH || id == POLIS_HDR_TRANSFER_ENCODING ||
                id == POLIS_HDR_HOST)
                return POLIS_EBADMSG;
            m->has_connection_tokens = true;
            mark_hop(m, tok, n);
        }
    }
    return 0;
}

/* Derive framing and connection flags from the headers (RFC 9112 sections 6.1 to 6.3, 9.3). */
static int derive(const char *lo, struct polis_h1_msg *m, const unsigned counts[POLIS_HDR__COUNT],
                  bool request, bool no_body)
{
    int rc;
    bool close = false, ka = false, up = false;

    m->body = POLIS_BODY_NONE;
    m->content_length = 0;
    m->keep_alive = m->minor_version == 1;
    m->expect_continue = false;
    m->upgrade = false;
    m->has_connection_tokens = false;

    /* Each walk starts at the first field of its id and stops after the last one (counts). */
    unsigned left = counts[POLIS_HDR_CONNECTION];
    for (size_t i = (size_t)m->hdr_index[POLIS_HDR_CONNECTION]; left > 0; i++) {
        if (m->headers[i].id != POLIS_HDR_CONNECTION)
            continue;
        struct polis_str v = m->headers[i].value;
        if (v.len == 10 && NAME_IS(v.p, "keep-alive")) { /* the usual lone tokens */
            ka = true;
        } else if (v.len == 5 && NAME_IS(v.p, "close")) {
            close = true;
        } else {
            rc = walk_connection(lo, m, v, &close, &ka, &up);
            if (rc < 0)
                return rc;
        }
        left--;
    }
    if (close)
        m->keep_alive = false;
    else if (ka)
        m->keep_alive = true;
    m->upgrade = up && counts[POLIS_HDR_UPGRADE] > 0;

    if (request) {
        /* Host (RFC 9112 section 3.2): exactly one in HTTP/1.1, at most one in HTTP/1.0. */
        if (counts[POLIS_HDR_HOST] > 1 || (m->minor_version == 1 && !counts[POLIS_HDR_HOST]))
            return POLIS_EBADMSG;
        if (counts[POLIS_HDR_HOST]) {
            struct polis_str h = m->headers[m->hdr_index[POLIS_HDR_HOST]].value;
            if (!valid_authority(lo, h.p, h.len, false, true))
                return POLIS_EBADMSG;
        }
        /* RFC 9110 section 10.1.1: ignore 100-continue in an HTTP/1.0 request. */
        if (counts[POLIS_HDR_EXPECT] && m->minor_version == 1) {
            struct polis_str x = m->headers[m->hdr_index[POLIS_HDR_EXPECT]].value;
            m->expect_continue = x.len == 12 && lc_eq(x.p, "100-continue", 12);
        }
    }

    if (counts[POLIS_HDR_CONTENT_LENGTH] > 1)
        return POLIS_EBADMSG;
    if (counts[POLIS_HDR_TRANSFER_ENCODING]) {
        /* Section 6.1: TE with CL is a smuggling vector, TE in HTTP/1.0 is faulty framing. */
        if (counts[POLIS_HDR_CONTENT_LENGTH] || m->minor_version == 0)
            return POLIS_EBADMSG;
        unsigned ncodings = 0, nchunked = 0;
        bool last_chunked = false;
        left = counts[POLIS_HDR_TRANSFER_ENCODING];
        for (size_t i = (size_t)m->hdr_index[POLIS_HDR_TRANSFER_ENCODING]; left > 0; i++) {
            if (m->headers[i].id != POLIS_HDR_TRANSFER_ENCODING)
                continue;
            rc = walk_te(lo, m->headers[i].value, &ncodings, &nchunked, &last_chunked);
            if (rc < 0)
                return rc;
            left--;
        }
        if (nchunked > 1) /* chunked applied twice (section 6.1) */
            return POLIS_EBADMSG;
        if (request) {
            /* Only a lone "chunked" is accepted; anything else cannot be framed (6.3 item 4). */
            if (ncodings != 1 || !last_chunked)
                return POLIS_EBADMSG;
            m->body = POLIS_BODY_CHUNKED;
        } else if (!no_body) {
            m->body = last_chunked ? POLIS_BODY_CHUNKED : POLIS_BODY_CLOSE;
        }
    } else if (counts[POLIS_HDR_CONTENT_LENGTH]) {
        uint64_t cl;
        rc = parse_content_length(m->headers[m->hdr_index[POLIS_HDR_CONTENT_LENGTH]].value, &cl);
        if (rc < 0)
            return rc;
        if (cl > 0 && !no_body) {
            m->body = POLIS_BODY_LENGTH;
            m->content_length = cl;
        }
    } else if (!request && !no_body) {
        m->body = POLIS_BODY_CLOSE;
    }
    if (m->body == POLIS_BODY_CLOSE)
        m->keep_alive = false;
    return 0;
}

/* HTTP-version = "HTTP/" DIGIT "." DIGIT (section 2.3): 0 for 1.0 or 1.1 (minor set),
 * POLIS_EVERSION for another well-formed version, POLIS_EBADMSG for anything else. p has 8
 * readable bytes. */
static int parse_version(const char *p, int *minor)
{
    uint64_t v, v11;
    memcpy(&v, p, 8);
    memcpy(&v11, "HTTP/1.1", 8);
    if (v == v11) {
        *minor = 1;
        return 0;
    }
    if (memcmp(p, "HTTP/", 5) != 0 || p[6] != '.' || p[5] < '0' || p[5] > '9' || p[7] < '0' ||
        p[7] > '9')
        return POLIS_EBADMSG;
    if (p[5] != '1' || p[7] > '1')
        return POLIS_EVERSION;
    *minor = p[7] - '0';
    return 0;
}

static void msg_reset(struct polis_h1_msg *m)
{
    m->method.p = m->target.p = m->reason.p = NULL;
    m->method.len = m->target.len = m->reason.len = 0;
    m->status = 0;
    m->minor_version = 0;
    m->num_headers = 0;
    memset(m->hdr_index, 0xff, sizeof(m->hdr_index)); /* -1 */
}

/* The shared front half: skip leading empty lines (requests), find the end of the head, apply
 * the limits on an incomplete head. Returns the head length (> 0) or a negative code; *skip is
 * the offset of the start line. */
static long locate_head(const char *buf, size_t len, size_t *scan, const struct limits *l,
                        bool request, size_t *skip_out)
{
    size_t skip = 0;
    if (request) {
        unsigned n = 0;
        while (skip + 1 < len && buf[skip] == '\r' && buf[skip + 1] == '\n') {
            if (++n > MAX_LEADING_EMPTY_LINES)
                return POLIS_EBADMSG;
            skip += 2;
        }
        if (skip == len || (skip + 1 == len && buf[skip] == '\r')) {
            *scan = skip;
            return POLIS_EAGAIN;
        }
    }
    *skip_out = skip;
    if (*scan > len)
        return POLIS_EINVAL;

    /* The head must end within max_head bytes: never search further. */
    size_t searchable = len < l->max_head ? len : l->max_head;
    size_t start = *scan > skip ? *scan : skip;
    if (start > searchable)
        start = searchable;
    long end = find_end(buf, searchable, start, scan);
    if (end != 0)
        return end;

    /* Incomplete: enforce the limits on what was seen. A request line whose LF is not within
     * max_request_line + 2 bytes is too long; this memchr runs only past that size and stops
     * at the first LF, so it costs at most the request line once per call. */
    if (request && len - skip >= l->max_request_line + 2 &&
        memchr(buf + skip, '\n', l->max_request_line + 2) == NULL)
        return POLIS_EURITOOLONG;
    if (len >= l->max_head)
        return POLIS_EHDRTOOBIG;
    return POLIS_EAGAIN;
}

/* ---- Start lines and the two paths ----------------------------------------------------------
 * A head that is whole in the first call (*scan == 0), the usual case, is parsed in one pass:
 * the header lines are walked up to the empty line without find_end() searching them first.
 * That pass only succeeds where the two-phase path succeeds, with the same result: every line
 * it accepts ends with CRLF and holds no CR, LF or other CTL but HTAB, so the empty line it
 * stops at ends the first CRLFCRLF, the one find_end() finds, within the same max_head bytes.
 * On any failure (an error, or bytes missing) the two-phase path runs from the start and gives
 * the verdict of record; that costs one extra pass over the first call's bytes, never more,
 * because later calls pass *scan > 0. */

/* request-line = method SP request-target SP HTTP-version (section 3), from p to the LF at
 * lf (lf - 1 is a CR). */
static int request_line(const char *buf, const char *p, const char *lf, struct polis_h1_msg *m)
{
    const char *s = p;
    p = scan_token(buf, p, lf);
    if (p == s || *p != ' ')
        return POLIS_EBADMSG;
    m->method.p = s;
    m->method.len = (size_t)(p - s);
    s = ++p;
    p = scan_target(buf, p, lf);
    if (p == s || *p != ' ')
        return POLIS_EBADMSG;
    m->target.p = s;
    m->target.len = (size_t)(p - s);
    p++;
    if (lf - 1 - p != 8) /* "HTTP/1.10", "HTTP/1.1 ", "HTTP/2": garbage, not a version */
        return POLIS_EBADMSG;
    int rc = parse_version(p, &m->minor_version);
    if (rc < 0)
        return rc;
    return check_target(buf, m->method, m->target);
}

static int request_one_pass(const char *buf, size_t len, const struct limits *l,
                            struct polis_h1_msg *m, unsigned counts[POLIS_HDR__COUNT],
                            size_t *end_off)
{
    const char *hi = buf + (len < l->max_head ? len : l->max_head);
    /* The request line, as request_line() has it; a leading CRLF (an empty line to skip)
     * fails at once and goes the two-phase way. The line has no LF before the one checked
     * here: method and target bytes stop at SP at the latest, the version is 8 fixed bytes. */
    const char *p = scan_token(buf, buf, hi);
    if (p == buf || p == hi || *p != ' ')
        return POLIS_EAGAIN;
    msg_reset(m);
    m->method.p = buf;
    m->method.len = (size_t)(p - buf);
    const char *s = ++p;
    p = scan_target(buf, p, hi);
    if (p == s || hi - p < 11 || p[0] != ' ' || p[9] != '\r' || p[10] != '\n')
        return POLIS_EAGAIN;
    m->target.p = s;
    m->target.len = (size_t)(p - s);
    if ((size_t)(p + 9 - buf) > l->max_request_line)
        return POLIS_EAGAIN;
    if (parse_version(p + 1, &m->minor_version) < 0)
        return POLIS_EAGAIN;
    if (check_target(buf, m->method, m->target) < 0)
        return POLIS_EAGAIN;
    const char *end;
    if (parse_headers(buf, p + 11, hi, m, l->max_headers, counts, &end) < 0)
        return POLIS_EAGAIN;
    *end_off = (size_t)(end - buf);
    return 0;
}

static int request_two_phase(const char *buf, size_t len, size_t *scan, const struct limits *l,
                             struct polis_h1_msg *m, unsigned counts[POLIS_HDR__COUNT],
                             size_t *end_off)
{
    size_t skip = 0;
    long hl = locate_head(buf, len, scan, l, true, &skip);
    if (hl < 0)
        return (int)hl;
    *end_off = (size_t)hl;
    if (*end_off > l->max_head)
        return POLIS_EHDRTOOBIG;

    const char *p = buf + skip, *end = buf + *end_off;
    /* The request line ends at the first LF, which find_end() checked follows a CR. */
    const char *lf = scan_lf(buf, p, end);
    if ((size_t)(lf - 1 - p) > l->max_request_line)
        return POLIS_EURITOOLONG;
    msg_reset(m);
    int rc = request_line(buf, p, lf, m);
    if (rc < 0)
        return rc;
    const char *hend;
    rc = parse_headers(buf, lf + 1, end, m, l->max_headers, counts, &hend);
    if (rc < 0)
        return rc;
    if (hend != end) /* find_end() found the final CRLF: the empty line is there */
        return POLIS_EBADMSG;
    return 0;
}

POLIS_API int polis_h1_parse_request(const char *buf, size_t len, size_t *scan,
                                     struct polis_h1_msg *m, size_t max_headers,
                                     const struct polis_h1_limits *lim, size_t *head_len)
{
    struct limits l;
    unsigned counts[POLIS_HDR__COUNT] = {0};
    size_t end_off = 0;
    int rc = POLIS_EAGAIN;

    if (buf == NULL || scan == NULL || m == NULL || head_len == NULL ||
        (m->headers == NULL && max_headers))
        return POLIS_EINVAL;
    get_limits(lim, max_headers, &l);
    if (*scan == 0)
        rc = request_one_pass(buf, len, &l, m, counts, &end_off);
    if (rc != 0) {
        memset(counts, 0, sizeof(counts));
        rc = request_two_phase(buf, len, scan, &l, m, counts, &end_off);
        if (rc < 0)
            return rc;
    }
    rc = derive(buf, m, counts, true, false);
    if (rc < 0)
        return rc;
    *scan = end_off;
    *head_len = end_off;
    return 0;
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ] (section 4), from buf to the
 * LF at lf (lf - 1 is a CR); a missing SP after the code is tolerated, as common servers have
 * it. */
static int status_line(const char *buf, const char *lf, struct polis_h1_msg *m)
{
    const char *p = buf, *cr = lf - 1;
    size_t line = (size_t)(cr - p);
    if (line < 8)
        return POLIS_EBADMSG;
    int rc = parse_version(p, &m->minor_version);
    if (rc < 0)
        return rc;
    if (line < 12 || p[8] != ' ' || p[9] < '1' || p[9] > '9' || p[10] < '0' || p[10] > '9' ||
        p[11] < '0' || p[11] > '9')
        return POLIS_EBADMSG;
    m->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    p += 12;
    if (p < cr) {
        if (*p != ' ')
            return POLIS_EBADMSG;
        p++;
    }
    const char *r = p;
    p = scan_value(buf, p, lf);
    if (p != cr)
        return POLIS_EBADMSG;
    m->reason.p = r;
    m->reason.len = (size_t)(p - r);
    return 0;
}

static int response_one_pass(const char *buf, size_t len, const struct limits *l,
                             struct polis_h1_msg *m, unsigned counts[POLIS_HDR__COUNT],
                             size_t *end_off)
{
    const char *hi = buf + (len < l->max_head ? len : l->max_head);
    /* The status line is field-value bytes but for its CRLF: the first byte that is not one
     * is the CR before the first LF, or the status line is refused. */
    if (hi - buf < 14)
        return POLIS_EAGAIN;
    const char *p = scan_value(buf, buf + 12, hi);
    if (hi - p < 2 || p[0] != '\r' || p[1] != '\n')
        return POLIS_EAGAIN;
    msg_reset(m);
    if (status_line(buf, p + 1, m) < 0)
        return POLIS_EAGAIN;
    const char *end;
    if (parse_headers(buf, p + 2, hi, m, l->max_headers, counts, &end) < 0)
        return POLIS_EAGAIN;
    *end_off = (size_t)(end - buf);
    return 0;
}

static int response_two_phase(const char *buf, size_t len, size_t *scan, const struct limits *l,
                              struct polis_h1_msg *m, unsigned counts[POLIS_HDR__COUNT],
                              size_t *end_off)
{
    size_t skip = 0;
    long hl = locate_head(buf, len, scan, l, false, &skip);
    if (hl < 0)
        return (int)hl;
    *end_off = (size_t)hl;
    if (*end_off > l->max_head)
        return POLIS_EHDRTOOBIG;

    const char *end = buf + *end_off;
    const char *lf = scan_lf(buf, buf, end);
    msg_reset(m);
    int rc = status_line(buf, lf, m);
    if (rc < 0)
        return rc;
    const char *hend;
    rc = parse_headers(buf, lf + 1, end, m, l->max_headers, counts, &hend);
    if (rc < 0)
        return rc;
    if (hend != end) /* find_end() found the final CRLF: the empty line is there */
        return POLIS_EBADMSG;
    return 0;
}

POLIS_API int polis_h1_parse_response(const char *buf, size_t len, size_t *scan,
                                      struct polis_h1_msg *m, size_t max_headers,
                                      const struct polis_h1_limits *lim, bool head_request,
                                      size_t *head_len)
{
    struct limits l;
    unsigned counts[POLIS_HDR__COUNT] = {0};
    size_t end_off = 0;
    int rc = POLIS_EAGAIN;

    if (buf == NULL || scan == NULL || m == NULL || head_len == NULL ||
        (m->headers == NULL && max_headers))
        return POLIS_EINVAL;
    get_limits(lim, max_headers, &l);
    if (*scan == 0)
        rc = response_one_pass(buf, len, &l, m, counts, &end_off);
    if (rc != 0) {
        memset(counts, 0, sizeof(counts));
        rc = response_two_phase(buf, len, scan, &l, m, counts, &end_off);
        if (rc < 0)
            return rc;
    }
    bool no_body = head_request || m->status < 200 || m->status == 204 || m->status == 304;
    rc = derive(buf, m, counts, false, no_body);
    if (rc < 0)
        return rc;
    *scan = end_off;
    *head_len = end_off;
    return 0;
}

/* ---- Chunked transfer coding (RFC 9112 section 7.1) ----------------------------------------- */

enum chunk_state {
    CS_SIZE_START = 0, /* first HEXDIG of chunk-size */
    CS_SIZE,           /* more HEXDIG, ';', BWS or CR */
    CS_EXT_SEP,        /* BWS before ';' (after the size or a value) */
    CS_EXT_NAME_START, /* BWS then the first tchar of ext-name */
    CS_EXT_NAME,       /* tchar, BWS, '=', ';' or CR */
    CS_EXT_AFTER_NAME, /* BWS, then '=' or ';' */
    CS_EXT_VAL_START,  /* BWS, then a token or a quoted-string */
    CS_EXT_VAL,        /* tchar, BWS, ';' or CR */
    CS_EXT_QS,         /* inside a quoted-string */
    CS_EXT_QS_ESC,     /* after a backslash */
    CS_EXT_QS_END,     /* after the closing quote: BWS, ';' or CR */
    CS_SIZE_LF,        /* LF ending the size line */
    CS_DATA,           /* chunk-data */
    CS_DATA_CR,        /* CR after chunk-data */
    CS_DATA_LF,        /* LF after chunk-data */
    CS_TR_START,       /* start of a trailer line, or CR of the final CRLF */
    CS_TR_NAME,        /* field-name */
    CS_TR_VALUE,       /* field-value up to CR */
    CS_TR_LF,          /* LF ending a trailer line */
    CS_FINAL_LF,       /* LF of the final CRLF */
    CS_DONE,
    CS_ERROR,
};

POLIS_API void polis_h1_chunked_init(struct polis_h1_chunked *c, uint64_t max_body)
{
    memset(c, 0, sizeof(*c));
    c->max_body = max_body;
}

static inline int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

POLIS_API int polis_h1_chunked_feed(struct polis_h1_chunked *c, const char *buf, size_t len,
                                    size_t *consumed, char *out, size_t *out_len)
{
    size_t i = 0, o = 0;
    int rc = 0;
    size_t max_line = c->max_line ? c->max_line : DEFAULT_MAX_LINE;
    size_t max_trailer = c->max_trailer ? c->max_trailer : DEFAULT_MAX_TRAILER;

    if (c->state == CS_DONE) {
        rc = 1;
        goto out;
    }
    if (c->state == CS_ERROR) {
        rc = POLIS_EBADMSG;
        goto out;
    }
    while (i < len) {
        uint8_t ch = (uint8_t)buf[i];

        if (c->state == CS_DATA) {
            /* The bulk of the work: one copy per run of payload. */
            size_t n = len - i;
            if (n > c->remaining)
                n = (size_t)c->remaining;
            if (out != NULL) {
                if (out + o != buf + i)
                    memmove(out + o, buf + i, n);
                o += n;
            }
            i += n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CS_DATA_CR;
            continue;
        }

        if (c->state <= CS_SIZE_LF) {
            /* Bytes of the size line, extensions and CRLF included, are bounded by max_line. */
            if (++c->line_len > max_line)
                goto bad;
        } else if (c->state >= CS_TR_START && c->state <= CS_FINAL_LF) {
            if (++c->trailer_bytes > max_trailer)
                goto bad;
        }

        switch (c->state) {
        case CS_SIZE_START:
        case CS_SIZE: {
            int d = hexval(ch);
            if (d >= 0) {
                if (c->remaining == 0 && d == 0) {
                    /* a leading zero adds no significant digit */
                } else if (++c->digits > 16) {
                    goto bad;
                } else {
                    c->remaining = (c->remaining << 4) | (uint64_t)d;
                }
                c->state = CS_SIZE;
                /* Check the total as the size grows, so the verdict does not depend on where
                 * the input was split. */
                if (c->remaining > UINT64_MAX - c->total)
                    goto bad;
                if (c->max_body && c->total + c->remaining > c->max_body) {
                    rc = POLIS_EBODYTOOBIG;
                    c->state = CS_ERROR;
                    goto out;
                }
                break;
            }
            if (c->state == CS_SIZE_START)
                goto bad;
            if (ch == '\r')
                c->state = CS_SIZE_LF;
            else if (ch == ';')
                c->state = CS_EXT_NAME_START;
            else if (is_ows((char)ch))
                c->state = CS_EXT_SEP;
            else
                goto bad;
            break;
        }
        case CS_EXT_SEP:
        case CS_EXT_QS_END:
            if (ch == ';')
                c->state = CS_EXT_NAME_START;
            else if (is_ows((char)ch))
                c->state = CS_EXT_SEP;
            else if (ch == '\r' && c->state == CS_EXT_QS_END)
                c->state = CS_SIZE_LF;
            else
                goto bad;
            break;
        case CS_EXT_NAME_START:
            if (CT(ch) & C_TCHAR)
                c->state = CS_EXT_NAME;
            else if (!is_ows((char)ch))
                goto bad;
            break;
        case CS_EXT_NAME:
        case CS_EXT_AFTER_NAME:
            if ((CT(ch) & C_TCHAR) && c->state == CS_EXT_NAME)
                break;
            if (ch == '=')
                c->state = CS_EXT_VAL_START;
            else if (ch == ';')
                c->state = CS_EXT_NAME_START;
            else if (is_ows((char)ch))
                c->state = CS_EXT_AFTER_NAME;
            else if (ch == '\r' && c->state == CS_EXT_NAME)
                c->state = CS_SIZE_LF;
            else
                goto bad;
            break;
        case CS_EXT_VAL_START:
            if (ch == '"')
                c->state = CS_EXT_QS;
            else if (CT(ch) & C_TCHAR)
                c->state = CS_EXT_VAL;
            else if (!is_ows((char)ch))
                goto bad;
            break;
        case CS_EXT_VAL:
            if (CT(ch) & C_TCHAR)
                break;
            if (ch == ';')
                c->state = CS_EXT_NAME_START;
            else if (is_ows((char)ch))
                c->state = CS_EXT_SEP;
            else if (ch == '\r')
                c->state = CS_SIZE_LF;
            else
                goto bad;
            break;
        case CS_EXT_QS:
            if (ch == '"')
                c->state = CS_EXT_QS_END;
            else if (ch == '\\')
                c->state = CS_EXT_QS_ESC;
            else if (!(CT(ch) & C_QDTEXT))
                goto bad;
            break;
        case CS_EXT_QS_ESC:
            if (!(CT(ch) & C_VALUE))
                goto bad;
            c->state = CS_EXT_QS;
            break;
        case CS_SIZE_LF:
            if (ch != '\n')
                goto bad;
            c->line_len = 0;
            c->digits = 0;
            c->total += c->remaining;
            c->state = c->remaining ? CS_DATA : CS_TR_START;
            break;
        case CS_DATA_CR:
            if (ch != '\r')
                goto bad;
            c->state = CS_DATA_LF;
            break;
        case CS_DATA_LF:
            if (ch != '\n')
                goto bad;
            c->state = CS_SIZE_START;
            break;
        case CS_TR_START:
            if (ch == '\r')
                c->state = CS_FINAL_LF;
            else if (CT(ch) & C_TCHAR)
                c->state = CS_TR_NAME; /* obs-fold, an empty name: not tchar, rejected */
            else
                goto bad;
            break;
        case CS_TR_NAME:
            if (ch == ':')
                c->state = CS_TR_VALUE;
            else if (!(CT(ch) & C_TCHAR))
                goto bad;
            break;
        case CS_TR_VALUE:
            if (ch == '\r')
                c->state = CS_TR_LF;
            else if (!(CT(ch) & C_VALUE))
                goto bad;
            break;
        case CS_TR_LF:
            if (ch != '\n')
                goto bad;
            c->state = CS_TR_START;
            break;
        case CS_FINAL_LF:
            if (ch != '\n')
                goto bad;
            c->state = CS_DONE;
            i++;
            rc = 1;
            goto out;
        default:
            goto bad;
        }
        i++;
    }
    goto out;
bad:
    c->state = CS_ERROR;
    rc = POLIS_EBADMSG;
out:
    *consumed = i;
    if (out_len != NULL)
        *out_len = o;
    return rc;
}

/* ---- Reason phrases (RFC 9110 section 15) --------------------------------------------------- */

POLIS_API const char *polis_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 300:
        return "Multiple Choices";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 305:
        return "Use Proxy";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 451:
        return "Unavailable For Legal Reasons";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 511:
        return "Network Authentication Required";
    default:
        return "Unknown";
    }
}
