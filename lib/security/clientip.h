/* clientip.h: the client address of a request: the peer, or what trusted proxies reported in
 * X-Forwarded-For or Forwarded (RFC 7239), read from the right. */
#ifndef POLIS_SECURITY_CLIENTIP_H
#define POLIS_SECURITY_CLIENTIP_H

#include "security/cidr.h"

/* Which header the trusted proxies in front of the gateway write. Only one is read: a proxy that
 * appends to one of them passes the other through untouched, so reading both would let a client
 * choose its own address. */
enum polis_clientip_header {
    POLIS_CLIENTIP_NONE = 0,  /* headers are ignored: the client is the peer */
    POLIS_CLIENTIP_XFF,       /* X-Forwarded-For */
    POLIS_CLIENTIP_FORWARDED, /* Forwarded (RFC 7239), its for= parameters */
};

struct polis_clientip_cfg {
    const struct polis_cidr_list *trusted; /* the proxies whose header is believed; NULL: none */
    enum polis_clientip_header header;
};

/* Why the walk stopped where it did. */
enum polis_clientip_stop {
    POLIS_CLIENTIP_PEER = 0,  /* the peer is not trusted (or no header is read): the peer */
    POLIS_CLIENTIP_UNTRUSTED, /* the first address not trusted, read from the header */
    POLIS_CLIENTIP_EXHAUSTED, /* every hop was trusted: the leftmost address (or the peer) */
    POLIS_CLIENTIP_MALFORMED, /* a malformed element in the trusted part: the last trusted hop */
    POLIS_CLIENTIP_HIDDEN,    /* "unknown", an obfuscated node ("_x") or an element without
                                 for=: no address to give, so the last trusted hop */
};

struct polis_clientip {
    struct polis_ip ip;
    enum polis_clientip_stop stop;
    unsigned trusted_hops; /* trusted addresses passed, the peer included */
};

/* Find the client address of a request that came from peer.
 *
 * When the peer is not in cfg->trusted, or cfg->header is NONE, the answer is the peer and the
 * headers are not even parsed: whatever a client writes in them changes nothing. Otherwise the
 * header's elements are read from the right (values[] are the header's lines in the order
 * received, read as one comma-separated list): each trusted address is a proxy hop and is
 * passed; the first address that is not trusted is the client. A malformed element, or one that
 * names no address, stops the walk at the last trusted hop reached (the peer when it is the
 * rightmost element); the part left of the first untrusted address is never looked at, so junk
 * a client put there cannot change the answer. When every address is trusted the leftmost is
 * the client.
 *
 * X-Forwarded-For elements: an IPv4 or IPv6 address, optionally "[v6]", "[v6]:port" or
 * "v4:port"; "unknown" names no address; empty elements are skipped. Forwarded elements:
 * ';'-separated name=value pairs (names case-insensitive, values a token or a quoted string);
 * for= holds "v4", "v4:port", "[v6]" or "[v6]:port" (quoted when it has ':' or '['), "unknown"
 * or an obfuscated "_name" (both name no address); a second for= in one element is malformed.
 * Never fails; any thread. */
void polis__clientip_resolve(const struct polis_clientip_cfg *cfg, const struct polis_ip *peer,
                             const struct polis_str *values, size_t nvalues,
                             struct polis_clientip *out);

/* Write the for= pair of a Forwarded element naming ip into buf (cap bytes, NUL terminated):
 * for=192.0.2.1 or for="[2001:db8::1]". Returns the length, or 0 when it does not fit. */
size_t polis__clientip_forwarded_for(const struct polis_ip *ip, char *buf, size_t cap);

/* "peer", "untrusted", "exhausted", "malformed", "hidden": for logs and tests. */
const char *polis__clientip_stop_name(enum polis_clientip_stop s);

#endif
