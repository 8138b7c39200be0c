/* dns.c: the DNS discovery source: A/AAAA or SRV records resolved with c-ares on a thread of its
 * own, re-resolved by TTL, handed to the gateway as instance sets when they change. */
#include "registry/dns.h"

#include "http/blocking.h"

#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* DNS wire constants (RFC 1035, RFC 3596, RFC 2782). */
enum {
    DNS_CLASS_IN = 1,
    DNS_TYPE_A = 1,
    DNS_TYPE_AAAA = 28,
    DNS_TYPE_SRV = 33,
};

/* c-ares: a loopback or in-cluster resolver answers in well under a millisecond; a query gets
 * 1 s, then 2 s (c-ares doubles it per try), so a dead server costs 3 s per resolution. */
#define QUERY_TIMEOUT_MS 1000
#define QUERY_TRIES 2

#define DEFAULT_MIN_TTL_MS 1000
#define DEFAULT_MAX_TTL_MS 30000
#define MAX_WEIGHT 10000

enum { FAM_A = 0, FAM_AAAA = 1 };

/* One address found in an answer. */
struct ip {
    int family; /* AF_INET or AF_INET6 */
    unsigned char b[16];
};

struct iplist {
    struct ip *v;
    size_t n, cap;
};

/* A target of the SRV records used, with the addresses found for it. */
struct target {
    char *name; /* as in the answer, without the trailing dot */
    struct iplist ips;
};

/* An SRV record of the lowest priority. */
struct srv {
    uint16_t weight;
    uint16_t port;
    size_t target; /* index into round.targets */
};

/* One resolution: the queries of one pass, and what they found. */
struct round {
    struct polis_dns_source *s;
    int pending;    /* callbacks still to run, + 1 while queries are being issued */
    bool cancelled; /* a query was cancelled: the source is stopping */
    bool failed;    /* a query failed: keep what was known */
    char err[160];  /* the first failure */
    bool have_ttl;
    uint32_t ttl; /* smallest TTL (s) of the records used */
    /* A mode */
    struct iplist fam[2];
    bool fam_ok[2];
    /* SRV mode */
    bool srv_ok;
    struct srv *srv;
    size_t nsrv, srv_cap;
    struct target *targets;
    size_t ntargets, targets_cap;
};

/* The argument of one c-ares query. */
struct query {
    struct round *r;
    int fam;     /* FAM_A or FAM_AAAA (address queries) */
    long target; /* index into r->targets, or -1 for the source's name */
};

struct polis_dns_source {
    /* Set at start, read-only afterwards. */
    char *name;
    enum polis_dns_type type;
    uint16_t port;
    uint64_t min_ms, max_ms;
    polis_disc_fn fn;
    void *ud;
    ares_channel ch;
    int wake_fd; /* eventfd: stop() wakes the thread with it */
    pthread_t thread;
    atomic_bool stopping;
    /* The source's thread only. */
    struct round *round; /* in flight, or NULL */
    uint64_t next_at;    /* monotonic ms of the next resolution */
    bool have_set;       /* fn was called at least once */
    struct polis_instance_cfg *set;
    size_t nset;
    struct iplist last_fam[2]; /* A mode: the last addresses of each family ... */
    bool fam_known[2];         /* ... once that family was answered */
    bool failing;              /* in a failure streak (warned once) */
    /* Status for the admin API. */
    pthread_mutex_t lock;
    struct polis_dns_status st; /* next_resolution_ms holds the monotonic deadline here */
};

/* ---- Small helpers ------------------------------------------------------------------------- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint16_t rd16(const unsigned char *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Append an address. Returns false when out of memory. */
static bool iplist_add(struct iplist *l, int family, const void *b)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        struct ip *v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return false;
        l->v = v;
        l->cap = cap;
    }
    struct ip *ip = &l->v[l->n++];
    memset(ip, 0, sizeof(*ip));
    ip->family = family;
    memcpy(ip->b, b, family == AF_INET ? 4 : 16);
    return true;
}

static void iplist_free(struct iplist *l)
{
    free(l->v);
    memset(l, 0, sizeof(*l));
}

/* Keep the smallest TTL seen. A TTL with its top bit set counts as 0 (RFC 2181, 8). */
static void ttl_note(struct round *r, uint32_t ttl)
{
    if (ttl > INT32_MAX)
        ttl = 0;
    if (!r->have_ttl || ttl < r->ttl) {
        r->ttl = ttl;
        r->have_ttl = true;
    }
}

/* A short name for a c-ares status, for logs and the admin API. */
static const char *status_text(int status)
{
    switch (status) {
    case ARES_ESERVFAIL:
        return "SERVFAIL";
    case ARES_EREFUSED:
        return "REFUSED";
    case ARES_ENOTIMP:
        return "NOTIMP";
    case ARES_EFORMERR:
        return "FORMERR";
    case ARES_ETIMEOUT:
        return "timeout";
    case ARES_ECONNREFUSED: /* also every resolver answering SERVFAIL or REFUSED (c-ares 1.18) */
        return "refused (connection refused, SERVFAIL or REFUSED)";
    case ARES_EBADRESP:
        return "bad answer";
    default:
        return ares_strerror(status);
    }
}

static const char *type_text(int fam_or_srv)
{
    return fam_or_srv == FAM_A ? "A" : fam_or_srv == FAM_AAAA ? "AAAA" : "SRV";
}

/* Mark the round failed, keeping the first reason. */
static void round_fail(struct round *r, const char *type, const char *name, const char *why)
{
    if (!r->failed)
        snprintf(r->err, sizeof(r->err), "%s %s: %s", type, name, why);
    r->failed = true;
}

/* ---- Reading DNS messages (SRV answers and their additional section) ---------------------- */

/* A walk over the resource records of a message, section after section. */
struct msg {
    const unsigned char *buf;
    int len;
    size_t off;
    unsigned left[3]; /* records not read yet in the answer, authority, additional sections */
    int section;      /* 0, 1, 2: the section of the next record; 3: done */
};

struct rr {
    char *name; /* from ares_expand_name (ares_free_string), without the trailing dot */
    uint16_t type, cls;
    uint32_t ttl;
    size_t rdoff; /* offset of the record's data in the message */
    uint16_t rdlen;
    int section;
};

/* Expand the (possibly compressed) name at off. Returns false if it is malformed. */
static bool name_at(const struct msg *m, size_t off, char **name, long *enclen)
{
    if (off >= (size_t)m->len)
        return false;
    return ares_expand_name(m->buf + off, m->buf, m->len, name, enclen) == ARES_SUCCESS;
}

/* Read the header and skip the questions. Returns false for a malformed message. */
static bool msg_open(struct msg *m, const unsigned char *buf, int len)
{
    memset(m, 0, sizeof(*m));
    if (buf == NULL || len < 12)
        return false;
    m->buf = buf;
    m->len = len;
    m->off = 12;
    unsigned qd = rd16(buf + 4);
    m->left[0] = rd16(buf + 6);
    m->left[1] = rd16(buf + 8);
    m->left[2] = rd16(buf + 10);
    for (unsigned i = 0; i < qd; i++) {
        char *name;
        long enc;
        if (!name_at(m, m->off, &name, &enc))
            return false;
        ares_free_string(name);
        m->off += (size_t)enc;
        if (m->off + 4 > (size_t)len)
            return false;
        m->off += 4;
    }
    return true;
}

/* The next record. Returns 1 (rr filled; free rr->name), 0 at the end, -1 if malformed. */
static int msg_next(struct msg *m, struct rr *rr)
{
    while (m->section < 3 && m->left[m->section] == 0)
        m->section++;
    if (m->section == 3)
        return 0;
    m->left[m->section]--;
    long enc;
    if (!name_at(m, m->off, &rr->name, &enc))
        return -1;
    size_t o = m->off + (size_t)enc;
    if (o + 10 > (size_t)m->len)
        goto bad;
    rr->type = rd16(m->buf + o);
    rr->cls = rd16(m->buf + o + 2);
    rr->ttl = rd32(m->buf + o + 4);
    rr->rdlen = rd16(m->buf + o + 8);
    rr->rdoff = o + 10;
    if (rr->rdoff + rr->rdlen > (size_t)m->len)
        goto bad;
    rr->section = m->section;
    m->off = rr->rdoff + rr->rdlen;
    return 1;
bad:
    ares_free_string(rr->name);
    rr->name = NULL;
    return -1;
}

/* ---- A round of queries ------------------------------------------------------------------- */

static void round_finish(struct round *r);

static void round_free(struct round *r)
{
    iplist_free(&r->fam[0]);
    iplist_free(&r->fam[1]);
    for (size_t i = 0; i < r->ntargets; i++) {
        free(r->targets[i].name);
        iplist_free(&r->targets[i].ips);
    }
    free(r->targets);
    free(r->srv);
    free(r);
}

/* Drop one reference; the last one finishes the round. */
static void round_put(struct round *r)
{
    if (--r->pending == 0)
        round_finish(r);
}

static void on_addr(void *arg, int status, int timeouts, unsigned char *abuf, int alen);
static void on_srv(void *arg, int status, int timeouts, unsigned char *abuf, int alen);

/* Start one query: fam FAM_A/FAM_AAAA for an address query (target -1: the source's name,
 * through the search list; else that target, as written), or -1 for the SRV query. Its
 * callback may run before this returns. */
static void issue(struct round *r, int fam, long target)
{
    struct polis_dns_source *s = r->s;
    const char *name = target < 0 ? s->name : r->targets[target].name;
    struct query *q = malloc(sizeof(*q));
    if (q == NULL) {
        round_fail(r, type_text(fam), name, "out of memory");
        return;
    }
    q->r = r;
    q->fam = fam;
    q->target = target;
    r->pending++;
    if (fam < 0)
        ares_search(s->ch, name, DNS_CLASS_IN, DNS_TYPE_SRV, on_srv, q);
    else if (target < 0)
        ares_search(s->ch, name, DNS_CLASS_IN, fam == FAM_A ? DNS_TYPE_A : DNS_TYPE_AAAA, on_addr,
                    q);
    else /* an SRV target is a full name: no search list */
        ares_query(s->ch, name, DNS_CLASS_IN, fam == FAM_A ? DNS_TYPE_A : DNS_TYPE_AAAA, on_addr,
                   q);
}

/* What an A or AAAA answer holds, into dst, its TTLs into the round. Returns 1 (answered,
 * possibly with no address: NXDOMAIN or no records), 0 (cancelled) or -1 (failed, with the
 * round's error set). */
static int read_addrs(struct round *r, const struct query *q, int status, unsigned char *abuf,
                      int alen, struct iplist *dst)
{
    const char *name = q->target < 0 ? r->s->name : r->targets[q->target].name;
    switch (status) {
    case ARES_SUCCESS:
        break;
    case ARES_ENODATA:   /* the name has no record of this type */
    case ARES_ENOTFOUND: /* NXDOMAIN */
        return 1;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        r->cancelled = true;
        return 0;
    default:
        round_fail(r, type_text(q->fam), name, status_text(status));
        return -1;
    }
    /* Every address record takes at least 16 bytes of the message. */
    int cap = alen / 16 + 1, n = cap, prc;
    if (q->fam == FAM_A) {
        struct ares_addrttl *t = calloc((size_t)cap, sizeof(*t));
        if (t == NULL)
            goto nomem;
        prc = ares_parse_a_reply(abuf, alen, NULL, t, &n);
        for (int i = 0; prc == ARES_SUCCESS && i < n; i++) {
            if (!iplist_add(dst, AF_INET, &t[i].ipaddr)) {
                free(t);
                goto nomem;
            }
            ttl_note(r, t[i].ttl < 0 ? 0 : (uint32_t)t[i].ttl);
        }
        free(t);
    } else {
        struct ares_addr6ttl *t = calloc((size_t)cap, sizeof(*t));
        if (t == NULL)
            goto nomem;
        prc = ares_parse_aaaa_reply(abuf, alen, NULL, t, &n);
        for (int i = 0; prc == ARES_SUCCESS && i < n; i++) {
            if (!iplist_add(dst, AF_INET6, &t[i].ip6addr)) {
                free(t);
                goto nomem;
            }
            ttl_note(r, t[i].ttl < 0 ? 0 : (uint32_t)t[i].ttl);
        }
        free(t);
    }
    if (prc == ARES_SUCCESS || prc == ARES_ENODATA) /* ENODATA: only a CNAME, say */
        return 1;
    round_fail(r, type_text(q->fam), name, status_text(prc));
    return -1;
nomem:
    round_fail(r, type_text(q->fam), name, "out of memory");
    return -1;
}

/* c-ares callback of an A or AAAA query. */
static void on_addr(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct query *q = arg;
    struct round *r = q->r;
    struct iplist *dst = q->target < 0 ? &r->fam[q->fam] : &r->targets[q->target].ips;
    if (read_addrs(r, q, status, abuf, alen, dst) > 0 && q->target < 0)
        r->fam_ok[q->fam] = true;
    free(q);
    round_put(r);
}

/* The index of the target named name, added if new. Returns -1 when out of memory. */
static long target_find_add(struct round *r, const char *name)
{
    for (size_t i = 0; i < r->ntargets; i++)
        if (strcasecmp(r->targets[i].name, name) == 0)
            return (long)i;
    if (r->ntargets == r->targets_cap) {
        size_t cap = r->targets_cap ? r->targets_cap * 2 : 4;
        struct target *v = realloc(r->targets, cap * sizeof(*v));
        if (v == NULL)
            return -1;
        r->targets = v;
        r->targets_cap = cap;
    }
    struct target *t = &r->targets[r->ntargets];
    memset(t, 0, sizeof(*t));
    if ((t->name = strdup(name)) == NULL)
        return -1;
    return (long)r->ntargets++;
}

static bool srv_add(struct round *r, uint16_t weight, uint16_t port, size_t target)
{
    if (r->nsrv == r->srv_cap) {
        size_t cap = r->srv_cap ? r->srv_cap * 2 : 4;
        struct srv *v = realloc(r->srv, cap * sizeof(*v));
        if (v == NULL)
            return false;
        r->srv = v;
        r->srv_cap = cap;
    }
    r->srv[r->nsrv++] = (struct srv){.weight = weight, .port = port, .target = target};
    return true;
}

/* Read an SRV answer: the records of the lowest priority number into r->srv, their targets into
 * r->targets with the A/AAAA records the message carries for them (the additional section, as
 * Consul and Kubernetes send it). Returns 0, POLIS_EBADMSG or POLIS_ENOMEM. */
static int read_srv(struct round *r, const unsigned char *abuf, int alen)
{
    struct msg m;
    struct rr rr;
    int got;
    /* Pass 1: the lowest priority number; pass 2: its records. */
    uint32_t best = UINT32_MAX;
    for (int pass = 0; pass < 2; pass++) {
        if (!msg_open(&m, abuf, alen))
            return POLIS_EBADMSG;
        while ((got = msg_next(&m, &rr)) > 0) {
            int rc = 0;
            if (rr.section == 0 && rr.type == DNS_TYPE_SRV && rr.cls == DNS_CLASS_IN) {
                char *tname = NULL;
                long enc;
                if (rr.rdlen < 7 || !name_at(&m, rr.rdoff + 6, &tname, &enc)) {
                    rc = POLIS_EBADMSG;
                } else {
                    const unsigned char *d = abuf + rr.rdoff;
                    uint16_t prio = rd16(d), weight = rd16(d + 2), port = rd16(d + 4);
                    if (pass == 0) {
                        if (prio < best)
                            best = prio;
                    } else if (prio == best && tname[0] != '\0' && port != 0) {
                        /* A target of "." says the service is not offered there. */
                        long t = target_find_add(r, tname);
                        if (t < 0 || !srv_add(r, weight, port, (size_t)t))
                            rc = POLIS_ENOMEM;
                        ttl_note(r, rr.ttl);
                    }
                    ares_free_string(tname);
                }
            }
            ares_free_string(rr.name);
            if (rc < 0)
                return rc;
        }
        if (got < 0)
            return POLIS_EBADMSG;
    }
    /* Addresses of the targets carried in the message, in any section. */
    if (!msg_open(&m, abuf, alen))
        return POLIS_EBADMSG;
    while ((got = msg_next(&m, &rr)) > 0) {
        bool ok = true;
        if (rr.cls == DNS_CLASS_IN && ((rr.type == DNS_TYPE_A && rr.rdlen == 4) ||
                                       (rr.type == DNS_TYPE_AAAA && rr.rdlen == 16))) {
            for (size_t i = 0; i < r->ntargets; i++) {
                if (strcasecmp(r->targets[i].name, rr.name) != 0)
                    continue;
                ok = iplist_add(&r->targets[i].ips, rr.type == DNS_TYPE_A ? AF_INET : AF_INET6,
                                abuf + rr.rdoff);
                ttl_note(r, rr.ttl);
                break;
            }
        }
        ares_free_string(rr.name);
        if (!ok)
            return POLIS_ENOMEM;
    }
    return got < 0 ? POLIS_EBADMSG : 0;
}

/* c-ares callback of the SRV query: read it, then resolve the targets the answer did not
 * carry addresses for. */
static void on_srv(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct query *q = arg;
    struct round *r = q->r;
    const char *name = r->s->name;
    free(q);
    switch (status) {
    case ARES_SUCCESS: {
        int rc = read_srv(r, abuf, alen);
        if (rc < 0) {
            round_fail(r, "SRV", name, rc == POLIS_ENOMEM ? "out of memory" : "bad answer");
            break;
        }
        r->srv_ok = true;
        /* Only targets named by the records used; each once. */
        size_t n = r->ntargets;
        for (size_t i = 0; i < n && !r->failed; i++) {
            if (r->targets[i].ips.n > 0)
                continue;
            issue(r, FAM_A, (long)i);
            issue(r, FAM_AAAA, (long)i);
        }
        break;
    }
    case ARES_ENODATA:
    case ARES_ENOTFOUND:
        r->srv_ok = true; /* no instances */
        break;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        r->cancelled = true;
        break;
    default:
        round_fail(r, "SRV", name, status_text(status));
        break;
    }
    round_put(r);
}

/* ---- Building and publishing the set ------------------------------------------------------ */

struct setb {
    struct polis_instance_cfg *v;
    size_t n, cap;
};

/* Add the instance ip:port, or raise the weight of the one already there. Returns false when
 * out of memory. */
static bool set_add(struct setb *b, const struct ip *ip, uint16_t port, uint32_t weight)
{
    struct polis_addr a;
    memset(&a, 0, sizeof(a));
    char txt[INET6_ADDRSTRLEN];
    if (ip->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, ip->b, 4);
        a.len = sizeof(*sin);
        inet_ntop(AF_INET, ip->b, txt, sizeof(txt));
        snprintf(a.text, sizeof(a.text), "%s:%u", txt, port);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        memcpy(&sin6->sin6_addr, ip->b, 16);
        a.len = sizeof(*sin6);
        inet_ntop(AF_INET6, ip->b, txt, sizeof(txt));
        snprintf(a.text, sizeof(a.text), "[%s]:%u", txt, port);
    }
    for (size_t i = 0; i < b->n; i++) {
        if (strcmp(b->v[i].addr.text, a.text) == 0) {
            if (weight > b->v[i].weight)
                b->v[i].weight = weight;
            return true;
        }
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        struct polis_instance_cfg *v = realloc(b->v, cap * sizeof(*v));
        if (v == NULL)
            return false;
        b->v = v;
        b->cap = cap;
    }
    struct polis_instance_cfg *in = &b->v[b->n];
    memset(in, 0, sizeof(*in));
    in->addr = a;
    in->weight = weight;
    if ((in->id = strdup(a.text)) == NULL)
        return false;
    b->n++;
    return true;
}

static int by_id(const void *x, const void *y)
{
    const struct polis_instance_cfg *a = x, *b = y;
    return strcmp(a->id, b->id);
}

/* The set of a finished round. Returns false when out of memory (b is freed). */
static bool build_set(struct polis_dns_source *s, struct round *r, struct setb *b)
{
    memset(b, 0, sizeof(*b));
    bool ok = true;
    if (s->type == POLIS_DNS_A) {
        for (int f = 0; f < 2; f++)
            for (size_t i = 0; ok && i < s->last_fam[f].n; i++)
                ok = set_add(b, &s->last_fam[f].v[i], s->port, 1);
    } else {
        for (size_t k = 0; ok && k < r->nsrv; k++) {
            const struct srv *sv = &r->srv[k];
            uint32_t w = sv->weight == 0 ? 1 : sv->weight > MAX_WEIGHT ? MAX_WEIGHT : sv->weight;
            const struct iplist *ips = &r->targets[sv->target].ips;
            for (size_t i = 0; ok && i < ips->n; i++)
                ok = set_add(b, &ips->v[i], sv->port, w);
        }
    }
    if (!ok) {
        polis__instances_free(b->v, b->n);
        memset(b, 0, sizeof(*b));
        return false;
    }
    if (b->n > 1)
        qsort(b->v, b->n, sizeof(*b->v), by_id);
    return true;
}

/* The round is over: keep or replace the set, call fn if it changed, schedule the next one. */
static void round_finish(struct round *r)
{
    struct polis_dns_source *s = r->s;
    s->round = NULL;
    if (r->cancelled || atomic_load_explicit(&s->stopping, memory_order_acquire)) {
        round_free(r);
        return;
    }
    /* Whether this round tells what the set is now. */
    bool publish;
    if (s->type == POLIS_DNS_A) {
        /* A failed family keeps its last addresses; a family never answered yet leaves the set
         * unknown unless the other one already gives instances. */
        bool unknown = false;
        for (int f = 0; f < 2; f++) {
            if (r->fam_ok[f]) {
                iplist_free(&s->last_fam[f]);
                s->last_fam[f] = r->fam[f];
                memset(&r->fam[f], 0, sizeof(r->fam[f]));
                s->fam_known[f] = true;
            } else if (!s->fam_known[f]) {
                unknown = true;
            }
        }
        publish =
            (r->fam_ok[0] || r->fam_ok[1]) && (!unknown || s->last_fam[0].n + s->last_fam[1].n > 0);
    } else {
        publish = r->srv_ok && !r->failed;
    }

    struct setb b = {0};
    if (publish && !build_set(s, r, &b)) {
        publish = false;
        round_fail(r, type_text(s->type == POLIS_DNS_A ? FAM_A : -1), s->name, "out of memory");
    }
    bool changed = publish && (!s->have_set || !polis__instances_equal(s->set, s->nset, b.v, b.n));
    if (changed) {
        polis__instances_free(s->set, s->nset);
        s->set = b.v;
        s->nset = b.n;
        s->have_set = true;
    } else {
        polis__instances_free(b.v, b.n);
    }

    uint64_t delay = s->min_ms;
    if (!r->failed && r->have_ttl) {
        delay = (uint64_t)r->ttl * 1000u;
        delay = delay < s->min_ms ? s->min_ms : delay > s->max_ms ? s->max_ms : delay;
    }
    uint64_t now = polis__mono_ms();
    s->next_at = now + delay;

    if (r->failed && !s->failing && s->have_set)
        polis_warn("dns discovery %s: %s; keeping the last %zu instances, retrying every %llu ms",
                   s->name, r->err, s->nset, (unsigned long long)s->min_ms);
    else if (r->failed && !s->failing)
        polis_warn("dns discovery %s: %s; no instances yet, retrying every %llu ms", s->name,
                   r->err, (unsigned long long)s->min_ms);
    else if (!r->failed && s->failing)
        polis_info("dns discovery %s: answered again (%zu instances)", s->name, s->nset);
    s->failing = r->failed;

    pthread_mutex_lock(&s->lock);
    uint64_t wall = wall_ms();
    s->st.last_resolution_ms = wall;
    if (!r->failed)
        s->st.last_success_ms = wall;
    s->st.resolutions++;
    if (r->failed) {
        s->st.failures++;
        snprintf(s->st.last_error, sizeof(s->st.last_error), "%s", r->err);
    }
    s->st.failing = r->failed;
    s->st.num_instances = s->nset;
    s->st.next_resolution_ms = s->next_at;
    pthread_mutex_unlock(&s->lock);

    round_free(r);
    if (changed)
        s->fn(s->ud, s->set, s->nset);
}

/* Issue the queries of a new round (they may all finish before this returns). */
static void round_start(struct polis_dns_source *s)
{
    struct round *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        s->next_at = polis__mono_ms() + s->min_ms;
        return;
    }
    r->s = s;
    r->pending = 1;
    s->round = r;
    pthread_mutex_lock(&s->lock);
    s->st.next_resolution_ms = 0;
    pthread_mutex_unlock(&s->lock);
    if (s->type == POLIS_DNS_A) {
        issue(r, FAM_A, -1);
        issue(r, FAM_AAAA, -1);
    } else {
        issue(r, -1, -1);
    }
    round_put(r);
}

/* ---- The thread --------------------------------------------------------------------------- */

/* poll() timeout in ms from a c-ares timeval, rounded up. */
static int tv_ms(const struct timeval *tv)
{
    long long ms = (long long)tv->tv_sec * 1000 + (tv->tv_usec + 999) / 1000;
    return ms > INT_MAX ? INT_MAX : ms < 0 ? 0 : (int)ms;
}

static void *dns_main(void *arg)
{
    struct polis_dns_source *s = arg;
    s->next_at = polis__mono_ms();
    while (!atomic_load_explicit(&s->stopping, memory_order_acquire)) {
        uint64_t now = polis__mono_ms();
        if (s->round == NULL && now >= s->next_at) {
            round_start(s);
            continue;
        }
        struct pollfd pfd[1 + ARES_GETSOCK_MAXNUM];
        int n = 1, timeout;
        pfd[0] = (struct pollfd){.fd = s->wake_fd, .events = POLLIN};
        if (s->round != NULL) {
            ares_socket_t socks[ARES_GETSOCK_MAXNUM];
            /* The bits as ARES_GETSOCK_READABLE/WRITABLE read them, without their 1 << 31 in
             * a signed int. */
            unsigned bits = (unsigned)ares_getsock(s->ch, socks, ARES_GETSOCK_MAXNUM);
            for (unsigned i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
                short ev = 0;
                if (bits & (1u << i))
                    ev |= POLLIN;
                if (bits & (1u << (i + ARES_GETSOCK_MAXNUM)))
                    ev |= POLLOUT;
                if (ev != 0)
                    pfd[n++] = (struct pollfd){.fd = socks[i], .events = ev};
            }
            struct timeval tv, *tp = ares_timeout(s->ch, NULL, &tv);
            timeout = tp != NULL ? tv_ms(tp) : 1000;
        } else {
            uint64_t d = s->next_at - now;
            timeout = d > INT_MAX ? INT_MAX : (int)d;
        }
        int rc = poll(pfd, (nfds_t)n, timeout);
        if (rc < 0) {
            if (errno != EINTR) {
                polis_error("dns discovery %s: poll: %s", s->name, strerror(errno));
                poll(pfd, 1, 100); /* no busy loop; still woken by stop */
            }
            continue;
        }
        if (pfd[0].revents != 0) {
            uint64_t v;
            if (read(s->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                polis_error("dns discovery %s: wake-up: %s", s->name, strerror(errno));
        }
        if (s->round == NULL)
            continue;
        bool any = false;
        for (int i = 1; i < n; i++) {
            short ev = pfd[i].revents;
            if (ev == 0)
                continue;
            any = true;
            ares_process_fd(s->ch, ev & (POLLIN | POLLERR | POLLHUP) ? pfd[i].fd : ARES_SOCKET_BAD,
                            ev & (POLLOUT | POLLERR | POLLHUP) ? pfd[i].fd : ARES_SOCKET_BAD);
        }
        if (!any) /* timeouts only */
            ares_process_fd(s->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    }
    /* Callbacks run with ARES_ECANCELLED / ARES_EDESTRUCTION: they free the round, call nothing. */
    ares_cancel(s->ch);
    ares_destroy(s->ch);
    s->ch = NULL;
    if (s->round != NULL) { /* not expected: every query's callback has run */
        round_free(s->round);
        s->round = NULL;
    }
    return NULL;
}

/* ---- Start, stop, status ------------------------------------------------------------------ */

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;
static int ares_init_status = ARES_ENOTINITIALIZED;

static void ares_global_init(void)
{
    ares_init_status = ares_library_init(ARES_LIB_INIT_ALL);
}

int polis__dns_source_start(const struct polis_discovery_cfg *cfg, polis_disc_fn fn, void *ud,
                            struct polis_dns_source **out)
{
    if (cfg == NULL || fn == NULL || out == NULL || cfg->dns_name == NULL ||
        cfg->dns_name[0] == '\0' || strlen(cfg->dns_name) > 254 ||
        (cfg->dns_type != POLIS_DNS_A && cfg->dns_type != POLIS_DNS_SRV) ||
        (cfg->dns_type == POLIS_DNS_A && cfg->dns_port == 0))
        return POLIS_EINVAL;
    uint64_t min_ms = cfg->dns_min_ttl_ms ? cfg->dns_min_ttl_ms : DEFAULT_MIN_TTL_MS;
    uint64_t max_ms = cfg->dns_max_ttl_ms ? cfg->dns_max_ttl_ms : DEFAULT_MAX_TTL_MS;
    if (cfg->dns_min_ttl_ms == 0 && max_ms < min_ms)
        min_ms = max_ms;
    if (cfg->dns_max_ttl_ms == 0 && max_ms < min_ms)
        max_ms = min_ms;
    if (min_ms > max_ms)
        return POLIS_EINVAL;

    pthread_once(&ares_once, ares_global_init);
    if (ares_init_status != ARES_SUCCESS)
        return POLIS_ESYS;

    int rc = POLIS_ENOMEM;
    struct polis_dns_source *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return POLIS_ENOMEM;
    s->wake_fd = -1;
    s->type = cfg->dns_type;
    s->port = cfg->dns_port;
    s->min_ms = min_ms;
    s->max_ms = max_ms;
    s->fn = fn;
    s->ud = ud;
    atomic_init(&s->stopping, false);
    if ((s->name = strdup(cfg->dns_name)) == NULL)
        goto free_s;

    struct ares_options o;
    memset(&o, 0, sizeof(o));
    int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    o.timeout = QUERY_TIMEOUT_MS;
    o.tries = QUERY_TRIES;
    if (cfg->dns_server != NULL) {
        /* A server of its own (Consul, a stub): the name is asked as written, and a SERVFAIL or
         * REFUSED is reported as such at once (c-ares 1.18 would retry the only server and then
         * report "connection refused"). With the system's resolvers c-ares keeps its default:
         * such an answer makes it try the next resolver. */
        mask |= ARES_OPT_FLAGS;
        o.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOCHECKRESP;
    }
    int ar = ares_init_options(&s->ch, &o, mask);
    if (ar != ARES_SUCCESS) {
        polis_error("dns discovery %s: c-ares: %s", s->name, ares_strerror(ar));
        rc = ar == ARES_ENOMEM ? POLIS_ENOMEM : POLIS_ESYS;
        goto free_name;
    }
    if (cfg->dns_server != NULL &&
        (cfg->dns_server[0] == '\0' ||
         (ar = ares_set_servers_ports_csv(s->ch, cfg->dns_server)) != ARES_SUCCESS)) {
        polis_error("dns discovery %s: bad dns_server \"%s\"", s->name, cfg->dns_server);
        rc = ar == ARES_ENOMEM ? POLIS_ENOMEM : POLIS_EINVAL;
        goto destroy_channel;
    }
    rc = POLIS_ESYS;
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->wake_fd < 0)
        goto destroy_channel;
    if (pthread_mutex_init(&s->lock, NULL) != 0)
        goto close_wake;

    /* The thread takes no signals: the program's threads handle them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&s->thread, NULL, dns_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        errno = err;
        goto destroy_lock;
    }
    pthread_setname_np(s->thread, "polis-dns");
    *out = s;
    return 0;

destroy_lock:
    pthread_mutex_destroy(&s->lock);
close_wake:
    close(s->wake_fd);
destroy_channel:
    ares_destroy(s->ch);
free_name:
    free(s->name);
free_s:
    free(s);
    return rc;
}

void polis__dns_source_stop(struct polis_dns_source *s)
{
    if (s == NULL)
        return;
    atomic_store_explicit(&s->stopping, true, memory_order_release);
    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof(one)) < 0)
        polis_error("dns discovery %s: wake-up: %s", s->name, strerror(errno));
    pthread_join(s->thread, NULL);
    close(s->wake_fd);
    pthread_mutex_destroy(&s->lock);
    polis__instances_free(s->set, s->nset);
    iplist_free(&s->last_fam[0]);
    iplist_free(&s->last_fam[1]);
    free(s->name);
    free(s);
}

void polis__dns_source_status(struct polis_dns_source *s, struct polis_dns_status *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->st;
    pthread_mutex_unlock(&s->lock);
    uint64_t at = out->next_resolution_ms, now = polis__mono_ms();
    out->next_resolution_ms = at > now ? at - now : 0;
}
