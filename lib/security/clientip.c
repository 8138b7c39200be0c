/* clientip.c: the client address behind trusted proxies: X-Forwarded-For and Forwarded lists
 * split from the right (so a client's junk on the left never disturbs the split) and parsed one
 * element at a time, stopping at the first address that is not trusted. */
#include "security/clientip.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

/* What one list element says. */
enum elem_kind { ELEM_EMPTY, ELEM_ADDR, ELEM_HIDDEN, ELEM_BAD };

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 9110 tchar. */
static bool is_tchar(char c)
{
    return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static struct polis_str trim(struct polis_str s)
{
    while (s.len > 0 && is_ows(s.p[0])) {
        s.p++;
        s.len--;
    }
    while (s.len > 0 && is_ows(s.p[s.len - 1]))
        s.len--;
    return s;
}

static bool caseeq(struct polis_str s, const char *lit)
{
    return polis_str_caseeq(s, (struct polis_str){lit, strlen(lit)});
}

/* 1 to 5 digits, at most 65535. */
static bool valid_port(struct polis_str s)
{
    if (s.len == 0 || s.len > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (!is_digit(s.p[i]))
            return false;
        v = v * 10 + (unsigned)(s.p[i] - '0');
    }
    return v <= 65535;
}

/* RFC 7239 obfnode / obfport: "_" 1*(ALPHA / DIGIT / "." / "_" / "-"). */
static bool valid_obf(struct polis_str s)
{
    if (s.len < 2 || s.p[0] != '_')
        return false;
    for (size_t i = 1; i < s.len; i++)
        if (!is_alnum(s.p[i]) && s.p[i] != '.' && s.p[i] != '_' && s.p[i] != '-')
            return false;
    return true;
}

/* "[v6]" or "[v6]:port" (port checked by okport). Returns ELEM_ADDR or ELEM_BAD. */
static enum elem_kind bracketed(struct polis_str s, bool (*okport)(struct polis_str),
                                struct polis_ip *ip)
{
    const char *close = memchr(s.p, ']', s.len);
    if (close == NULL)
        return ELEM_BAD;
    size_t inner = (size_t)(close - s.p) - 1;
    size_t rest = s.len - inner - 2;
    if (rest > 0 && (close[1] != ':' || !okport((struct polis_str){close + 2, rest - 1})))
        return ELEM_BAD;
    if (polis__ip_parse((struct polis_str){s.p + 1, inner}, ip) < 0)
        return ELEM_BAD;
    /* Brackets hold IPv6 text; a mapped IPv4 address is still fine (it unwraps). */
    if (memchr(s.p + 1, ':', inner) == NULL)
        return ELEM_BAD;
    return ELEM_ADDR;
}

/* One X-Forwarded-For element (already trimmed). */
static enum elem_kind xff_element(struct polis_str e, struct polis_ip *ip)
{
    if (e.len == 0)
        return ELEM_EMPTY;
    if (caseeq(e, "unknown"))
        return ELEM_HIDDEN;
    if (e.p[0] == '[')
        return bracketed(e, valid_port, ip);
    const char *colon = memchr(e.p, ':', e.len);
    if (colon != NULL && memchr(colon + 1, ':', e.len - (size_t)(colon - e.p) - 1) == NULL) {
        /* One colon: IPv4 with a port. */
        size_t hl = (size_t)(colon - e.p);
        if (!valid_port((struct polis_str){colon + 1, e.len - hl - 1}))
            return ELEM_BAD;
        e.len = hl;
    }
    return polis__ip_parse(e, ip) == 0 ? ELEM_ADDR : ELEM_BAD;
}

static bool fwd_port(struct polis_str s)
{
    return valid_port(s) || valid_obf(s);
}

/* A Forwarded node (the decoded value of for=). */
static enum elem_kind fwd_node(struct polis_str v, struct polis_ip *ip)
{
    if (v.len == 0)
        return ELEM_BAD;
    if (v.p[0] == '[')
        return bracketed(v, fwd_port, ip);
    struct polis_str name = v;
    const char *colon = memchr(v.p, ':', v.len);
    if (colon != NULL) {
        name.len = (size_t)(colon - v.p);
        if (!fwd_port((struct polis_str){colon + 1, v.len - name.len - 1}))
            return ELEM_BAD;
    }
    if (caseeq(name, "unknown") || valid_obf(name))
        return ELEM_HIDDEN;
    if (memchr(name.p, ':', name.len) != NULL || polis__ip_parse(name, ip) < 0)
        return ELEM_BAD;
    if (ip->family != AF_INET)
        return ELEM_BAD; /* IPv6 must be bracketed */
    return ELEM_ADDR;
}

/* Largest decoded for= value looked at: "[" 45 chars "]:" and a port fit easily. */
#define FOR_MAX 96

/* One Forwarded element (already trimmed): its for= node. */
static enum elem_kind fwd_element(struct polis_str e, struct polis_ip *ip)
{
    if (e.len == 0)
        return ELEM_EMPTY;
    char val[FOR_MAX];
    size_t vlen = 0;
    bool have_for = false, too_long = false;
    size_t i = 0;
    while (i < e.len) {
        while (i < e.len && is_ows(e.p[i]))
            i++;
        if (i == e.len)
            break;
        if (e.p[i] == ';') {
            i++;
            continue;
        }
        size_t ns = i;
        while (i < e.len && is_tchar(e.p[i]))
            i++;
        struct polis_str name = {e.p + ns, i - ns};
        if (name.len == 0 || i == e.len || e.p[i] != '=')
            return ELEM_BAD;
        i++;
        bool is_for = caseeq(name, "for");
        if (is_for) {
            if (have_for)
                return ELEM_BAD;
            have_for = true;
        }
        if (i < e.len && e.p[i] == '"') {
            i++;
            bool closed = false;
            while (i < e.len) {
                char c = e.p[i++];
                if (c == '"') {
                    closed = true;
                    break;
                }
                if (c == '\\') {
                    if (i == e.len)
                        return ELEM_BAD;
                    c = e.p[i++];
                }
                /* qdtext and quoted-pair: HTAB, SP, VCHAR, obs-text; no other controls. */
                if ((unsigned char)c < 0x20 && c != '\t')
                    return ELEM_BAD;
                if (c == 0x7f)
                    return ELEM_BAD;
                if (is_for) {
                    if (vlen == sizeof(val))
                        too_long = true;
                    else
                        val[vlen++] = c;
                }
            }
            if (!closed)
                return ELEM_BAD;
        } else {
            size_t vs = i;
            while (i < e.len && is_tchar(e.p[i]))
                i++;
            if (i == vs)
                return ELEM_BAD;
            if (is_for) {
                if (i - vs > sizeof(val)) {
                    too_long = true;
                } else {
                    memcpy(val, e.p + vs, i - vs);
                    vlen = i - vs;
                }
            }
        }
        while (i < e.len && is_ows(e.p[i]))
            i++;
        if (i < e.len && e.p[i] != ';')
            return ELEM_BAD;
    }
    if (!have_for)
        return ELEM_HIDDEN;
    if (too_long)
        return ELEM_BAD;
    return fwd_node((struct polis_str){val, vlen}, ip);
}

/* Where the element that ends at end (exclusive) starts in v: just after the nearest comma to its
 * left that is outside a quoted string, or 0. Scanning leftwards, a '"' ends a quoted string
 * unless an odd run of backslashes precedes it. Sets *unbalanced when the start of v is reached
 * inside a quoted string. */
static size_t element_start(const char *v, size_t end, bool quotes, bool *unbalanced)
{
    bool inq = false;
    for (size_t i = end; i > 0; i--) {
        char c = v[i - 1];
        if (inq) {
            if (c == '"') {
                size_t bs = 0;
                while (i - 1 - bs > 0 && v[i - 2 - bs] == '\\')
                    bs++;
                if (bs % 2 == 0)
                    inq = false;
                else
                    i -= bs; /* skip the backslashes with the escaped quote */
            }
        } else if (c == '"' && quotes) {
            inq = true;
        } else if (c == ',') {
            return i;
        }
    }
    *unbalanced = inq;
    return 0;
}

void polis__clientip_resolve(const struct polis_clientip_cfg *cfg, const struct polis_ip *peer,
                             const struct polis_str *values, size_t nvalues,
                             struct polis_clientip *out)
{
    out->ip = *peer;
    out->stop = POLIS_CLIENTIP_PEER;
    out->trusted_hops = 0;
    if (cfg->header == POLIS_CLIENTIP_NONE || !polis__cidr_list_match(cfg->trusted, peer))
        return;
    out->trusted_hops = 1;
    bool fwd = cfg->header == POLIS_CLIENTIP_FORWARDED;
    for (size_t k = nvalues; k > 0; k--) {
        struct polis_str line = values[k - 1];
        size_t end = line.len;
        for (;;) {
            bool unbalanced = false;
            size_t start = line.len > 0 ? element_start(line.p, end, fwd, &unbalanced) : 0;
            struct polis_str e = trim((struct polis_str){line.p + start, end - start});
            struct polis_ip ip;
            enum elem_kind kind = unbalanced ? ELEM_BAD
                                  : fwd      ? fwd_element(e, &ip)
                                             : xff_element(e, &ip);
            switch (kind) {
            case ELEM_EMPTY:
                break;
            case ELEM_BAD:
                out->stop = POLIS_CLIENTIP_MALFORMED;
                return;
            case ELEM_HIDDEN:
                out->stop = POLIS_CLIENTIP_HIDDEN;
                return;
            case ELEM_ADDR:
                out->ip = ip;
                if (!polis__cidr_list_match(cfg->trusted, &ip)) {
                    out->stop = POLIS_CLIENTIP_UNTRUSTED;
                    return;
                }
                out->trusted_hops++;
                break;
            }
            if (start == 0)
                break;
            end = start - 1;
        }
    }
    out->stop = POLIS_CLIENTIP_EXHAUSTED;
}

size_t polis__clientip_forwarded_for(const struct polis_ip *ip, char *buf, size_t cap)
{
    char a[POLIS_IP_STRLEN];
    if (polis__ip_format(ip, a, sizeof(a)) == 0)
        return 0;
    int n = ip->family == AF_INET6 ? snprintf(buf, cap, "for=\"[%s]\"", a)
                                   : snprintf(buf, cap, "for=%s", a);
    if (n < 0 || (size_t)n >= cap) {
        if (cap > 0)
            buf[0] = '\0';
        return 0;
    }
    return (size_t)n;
}

const char *polis__clientip_stop_name(enum polis_clientip_stop s)
{
    switch (s) {
    case POLIS_CLIENTIP_PEER:
        return "peer";
    case POLIS_CLIENTIP_UNTRUSTED:
        return "untrusted";
    case POLIS_CLIENTIP_EXHAUSTED:
        return "exhausted";
    case POLIS_CLIENTIP_MALFORMED:
        return "malformed";
    case POLIS_CLIENTIP_HIDDEN:
        return "hidden";
    }
    return "unknown";
}
