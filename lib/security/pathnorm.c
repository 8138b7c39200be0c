/* pathnorm.c: request path normalisation in one left-to-right pass: escapes decoded and
 * re-encoded canonically byte by byte, UTF-8 checked, segments resolved as they end. */
#include "security/pathnorm.h"

/* Byte classes of the canonical form. */
enum {
    K_LIT = 1,  /* written as itself: unreserved, sub-delims but ';', ':', '@' */
    K_ENC = 2,  /* written as %XX: allowed in a segment, but only encoded */
    K_CTL = 3,  /* a control character: refused raw or encoded */
    K_HIGH = 4, /* >= 0x80: part of a UTF-8 sequence, written as %XX */
};

static unsigned char byte_class(unsigned char c)
{
    if (c < 0x20 || c == 0x7f)
        return K_CTL;
    if (c >= 0x80)
        return K_HIGH;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return K_LIT;
    switch (c) {
    case '-':
    case '.':
    case '_':
    case '~':
    case '!':
    case '$':
    case '&':
    case '\'':
    case '(':
    case ')':
    case '*':
    case '+':
    case ',':
    case '=':
    case ':':
    case '@':
        return K_LIT;
    default:
        return K_ENC;
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A UTF-8 decoder that only checks: how many continuation bytes are still due and the range
 * the next one must be in (which is what rules out overlong forms, surrogates and code points
 * above U+10FFFF). */
struct utf8 {
    unsigned need;
    unsigned char lo, hi;
};

/* Feed one byte >= 0x80. Returns false when it cannot come here. */
static bool utf8_feed(struct utf8 *u, unsigned char c)
{
    if (u->need > 0) {
        if (c < u->lo || c > u->hi)
            return false;
        u->need--;
        u->lo = 0x80;
        u->hi = 0xbf;
        return true;
    }
    u->lo = 0x80;
    u->hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        u->need = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
        u->need = 2;
        if (c == 0xe0)
            u->lo = 0xa0; /* below: overlong */
        else if (c == 0xed)
            u->hi = 0x9f; /* above: surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        u->need = 3;
        if (c == 0xf0)
            u->lo = 0x90; /* below: overlong */
        else if (c == 0xf4)
            u->hi = 0x8f; /* above: past U+10FFFF */
    } else {
        return false; /* a continuation byte first, C0/C1 (overlong), F5..FF */
    }
    return true;
}

struct out {
    char *p;
    size_t len, cap;
    bool overflow;
};

static void put(struct out *o, char c)
{
    if (o->len < o->cap)
        o->p[o->len++] = c;
    else
        o->overflow = true;
}

static void put_escape(struct out *o, unsigned char c)
{
    static const char hex[] = "0123456789ABCDEF";
    put(o, '%');
    put(o, hex[c >> 4]);
    put(o, hex[c & 15]);
}

int polis__path_normalize(struct polis_str path, unsigned flags, char *out, size_t cap,
                          size_t *out_len, enum polis_path_reason *reason)
{
    enum polis_path_reason why = POLIS_PATH_OK;
    struct out o = {out, 0, cap, false};
    struct utf8 u = {0, 0x80, 0xbf};
    const char *p = path.p;
    size_t n = path.len;
    *out_len = 0;
    if (n == 0 || p[0] != '/') {
        why = POLIS_PATH_NOT_ABSOLUTE;
        goto refuse;
    }
    put(&o, '/');
    size_t seg = o.len;  /* where the current segment starts in out */
    bool params = false; /* inside a stripped ";..." */
    size_t i = 1;
    for (;;) {
        if (i == n || p[i] == '/') {
            /* The segment out[seg, o.len) is complete. */
            if (u.need > 0) {
                why = POLIS_PATH_BAD_UTF8;
                goto refuse;
            }
            if (o.overflow)
                break;
            size_t sl = o.len - seg;
            if (sl == 1 && out[seg] == '.') {
                o.len = seg;
            } else if (sl == 2 && out[seg] == '.' && out[seg + 1] == '.') {
                if (seg == 1) {
                    why = POLIS_PATH_ABOVE_ROOT;
                    goto refuse;
                }
                /* Back over the '/' before this segment, then over the previous segment. */
                o.len = seg - 1;
                while (out[o.len - 1] != '/')
                    o.len--;
            } else if (sl > 0 && i < n) {
                put(&o, '/');
            }
            if (i == n)
                break;
            i++;
            seg = o.len;
            params = false;
            continue;
        }
        unsigned char c = (unsigned char)p[i];
        bool raw = true;
        if (c == '%') {
            int h1 = i + 2 < n ? hexval(p[i + 1]) : -1;
            int h2 = h1 >= 0 ? hexval(p[i + 2]) : -1;
            if (h2 < 0) {
                why = POLIS_PATH_BAD_ESCAPE;
                goto refuse;
            }
            c = (unsigned char)(h1 << 4 | h2);
            raw = false;
            i += 3;
        } else {
            i++;
        }
        unsigned char k = byte_class(c);
        if (k == K_HIGH) {
            if (!utf8_feed(&u, c)) {
                why = POLIS_PATH_BAD_UTF8;
                goto refuse;
            }
        } else if (u.need > 0) {
            why = POLIS_PATH_BAD_UTF8;
            goto refuse;
        }
        if (k == K_CTL) {
            why = c == 0 ? POLIS_PATH_NUL : POLIS_PATH_CONTROL;
            goto refuse;
        }
        if (c == '/') { /* only escaped: a raw one ended the segment above */
            why = POLIS_PATH_ENCODED_SLASH;
            goto refuse;
        }
        if (c == '\\') {
            why = raw ? POLIS_PATH_BACKSLASH : POLIS_PATH_ENCODED_BACKSLASH;
            goto refuse;
        }
        if (raw && (c == ' ' || c == '?' || c == '#')) {
            why = POLIS_PATH_BAD_CHAR;
            goto refuse;
        }
        if (raw && c == ';') {
            if (!(flags & POLIS_PATH_STRIP_PARAMS)) {
                why = POLIS_PATH_PARAMS;
                goto refuse;
            }
            params = true;
            continue;
        }
        if (params)
            continue;
        if (k == K_LIT)
            put(&o, (char)c);
        else
            put_escape(&o, c);
    }
    if (o.overflow) {
        *reason = POLIS_PATH_TOO_LONG;
        return POLIS_ETOOBIG;
    }
    *out_len = o.len;
    *reason = POLIS_PATH_OK;
    return 0;

refuse:
    *reason = why;
    return POLIS_EBADMSG;
}

const char *polis__path_reason_name(enum polis_path_reason r)
{
    static const char *const names[POLIS_PATH__COUNT] = {
        [POLIS_PATH_OK] = "ok",
        [POLIS_PATH_NOT_ABSOLUTE] = "not_absolute",
        [POLIS_PATH_BAD_ESCAPE] = "bad_escape",
        [POLIS_PATH_ENCODED_SLASH] = "encoded_slash",
        [POLIS_PATH_BACKSLASH] = "backslash",
        [POLIS_PATH_ENCODED_BACKSLASH] = "encoded_backslash",
        [POLIS_PATH_NUL] = "nul",
        [POLIS_PATH_CONTROL] = "control",
        [POLIS_PATH_BAD_CHAR] = "bad_char",
        [POLIS_PATH_BAD_UTF8] = "bad_utf8",
        [POLIS_PATH_PARAMS] = "params",
        [POLIS_PATH_ABOVE_ROOT] = "above_root",
        [POLIS_PATH_TOO_LONG] = "too_long",
    };
    if ((unsigned)r >= POLIS_PATH__COUNT || names[r] == NULL)
        return "unknown";
    return names[r];
}
