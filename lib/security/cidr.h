/* cidr.h: IP addresses and CIDR lists (IPv4 and IPv6) matched in O(log n), and the allow/deny
 * decision built on them. */
#ifndef POLIS_SECURITY_CIDR_H
#define POLIS_SECURITY_CIDR_H

#include <polis/core.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* An IP address. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is always stored as the IPv4
 * address it maps, so that it matches IPv4 rules and compares equal to the plain IPv4 form. */
struct polis_ip {
    uint8_t family; /* AF_INET or AF_INET6 */
    uint8_t a[16];  /* network byte order; AF_INET uses a[0..4) and leaves the rest 0 */
};

/* Room for the longest text polis__ip_format() writes, with its NUL. */
#define POLIS_IP_STRLEN 46

/* Largest number of entries in one CIDR list. */
#define POLIS_CIDR_MAX_ENTRIES (1u << 20)

/* Parse a numeric address: dotted-quad IPv4 ("192.0.2.1": four decimal parts 0..255, no leading
 * zeros) or IPv6 in RFC 4291 text form ("2001:db8::1", "::ffff:192.0.2.1"), without brackets,
 * zone ("%eth0"), port or surrounding spaces. Returns 0 and fills *ip, or POLIS_EINVAL. */
int polis__ip_parse(struct polis_str s, struct polis_ip *ip);

/* The address of an AF_INET or AF_INET6 socket address (mapped IPv6 becomes IPv4). Returns 0, or
 * POLIS_EINVAL for any other family (AF_UNIX peers have no IP address). */
int polis__ip_from_sockaddr(const struct sockaddr *sa, struct polis_ip *ip);

/* Write ip as text (inet_ntop form: "192.0.2.1", "2001:db8::1") into buf (cap bytes, NUL
 * terminated). Returns the length, or 0 when cap is too small or ip is not an address. */
size_t polis__ip_format(const struct polis_ip *ip, char *buf, size_t cap);

/* True when a and b are the same address. */
bool polis__ip_eq(const struct polis_ip *a, const struct polis_ip *b);

/* One parsed CIDR block. */
struct polis_cidr_block {
    struct polis_ip ip; /* the network address (host bits are 0) */
    uint8_t prefix;     /* 0..32 for AF_INET, 0..128 for AF_INET6 */
};

/* Parse one entry: "10.0.0.0/8", "2001:db8::/32", or a bare address meaning one host (/32 or
 * /128). Surrounding spaces and tabs are ignored. The prefix length is decimal without leading
 * zeros. An IPv6 block inside ::ffff:0:0/96 (prefix >= 96) becomes the IPv4 block it maps
 * ("::ffff:10.0.0.0/104" is "10.0.0.0/8"). Rejected: a block with host bits set
 * ("10.0.0.1/8": almost always a typing mistake; write 10.0.0.0/8 or 10.0.0.1/32), a prefix
 * longer than the family allows, brackets, zones. Returns 0, or POLIS_EINVAL with a message in
 * err (errcap bytes; err may be NULL). */
int polis__cidr_block_parse(struct polis_str s, struct polis_cidr_block *out, char *err,
                            size_t errcap);

/* An immutable set of CIDR blocks: sorted, merged ranges per family. Once built it is only
 * read, so any number of threads may match against it without locks. */
struct polis_cidr_list;

/* Build a list from n entries (see polis__cidr_block_parse()). Overlapping and adjacent blocks are
 * merged. An IPv6 block shorter than /96 never matches an IPv4 address, even when it covers
 * ::ffff:0:0/96 ("::/0" is every IPv6 address, not every address). n may be 0: the list matches
 * nothing. Returns 0 and *out, POLIS_EINVAL with a message in err and the failing entry's index
 * in *bad (may be NULL), POLIS_ETOOBIG over POLIS_CIDR_MAX_ENTRIES, or POLIS_ENOMEM. */
int polis__cidr_list_new(const struct polis_str *entries, size_t n, struct polis_cidr_list **out,
                         size_t *bad, char *err, size_t errcap);

/* The same from one text of entries separated by commas and/or white space
 * ("10.0.0.0/8, 192.168.0.0/16 ::1"). *bad is the index of the failing entry in that text. */
int polis__cidr_list_parse(struct polis_str text, struct polis_cidr_list **out, size_t *bad,
                           char *err, size_t errcap);

/* The same from blocks already parsed (the configuration's networks copied field by field): an
 * AF_INET6 block inside ::ffff:0:0/96 becomes IPv4 as in polis__cidr_block_parse(). Refused
 * with POLIS_EINVAL (index in *bad): an unknown family, a prefix too long, host bits set.
 * Returns 0 and *out, POLIS_EINVAL, POLIS_ETOOBIG or POLIS_ENOMEM. */
int polis__cidr_list_from_blocks(const struct polis_cidr_block *blocks, size_t n,
                                 struct polis_cidr_list **out, size_t *bad);

/* Free a list (NULL is fine). No thread may still be matching against it. */
void polis__cidr_list_free(struct polis_cidr_list *l);

/* True when ip lies in one of the list's blocks. A NULL list matches nothing. O(log ranges). */
bool polis__cidr_list_match(const struct polis_cidr_list *l, const struct polis_ip *ip);

/* The same for a socket address; false for families without an IP address. */
bool polis__cidr_list_match_sockaddr(const struct polis_cidr_list *l, const struct sockaddr *sa);

/* The same for an address in text (polis__ip_parse() syntax); false when it does not parse. */
bool polis__cidr_list_match_text(const struct polis_cidr_list *l, struct polis_str ip);

/* How many merged ranges the list holds (both families), for logs and tests. */
size_t polis__cidr_list_ranges(const struct polis_cidr_list *l);

/* The IP allow/deny decision. deny wins: an address in deny is refused. When allow is not NULL,
 * an address is accepted only if it is in allow (an allow list with no entries accepts nothing);
 * allow == NULL means "no allow list": everything not denied is accepted. Pass NULL for a list
 * that is not configured. Returns true when ip may proceed. */
bool polis__ip_acl_allows(const struct polis_cidr_list *allow, const struct polis_cidr_list *deny,
                          const struct polis_ip *ip);

#endif
