/* Unit tests of the DNS discovery source (lib/registry/dns.c) against a stub DNS server in this
 * process: a UDP socket on 127.0.0.1 answering A, AAAA and SRV (with additional records),
 * NXDOMAIN, SERVFAIL or nothing, with chosen TTLs, and counting the queries it gets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http/blocking.h"
#include "registry/dns.h"

/* ---- The stub DNS server ------------------------------------------------------------------- */

enum { T_A = 1, T_AAAA = 28, T_SRV = 33 };
enum { RC_OK = 0, RC_SERVFAIL = 2, RC_NXDOMAIN = 3, RC_DROP = -1 };

#define MAXREC 8
#define MAXNAMES 8
#define MAXCOUNTS 32

struct srvrec {
    uint16_t prio, weight, port;
    const char *target;
};

/* A name of the zone and what the stub answers for it. */
struct zname {
    char name[64];  /* lower-case, without the trailing dot */
    int rcode;      /* RC_OK, RC_SERVFAIL, RC_NXDOMAIN or RC_DROP (no answer) ... */
    int rcode_type; /* ... for queries of this type only (0: every type) */
    uint32_t ttl;
    const char *a[MAXREC];
    int na;
    const char *aaaa[MAXREC];
    int naaaa;
    struct srvrec srv[MAXREC];
    int nsrv;
    bool in_additional; /* SRV answers naming this name as a target carry its A/AAAA records */
};

struct stub {
    int fd;
    uint16_t port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock;
    struct zname zone[MAXNAMES];
    int nzone;
    struct {
        char name[64];
        uint16_t type;
        int n;
    } counts[MAXCOUNTS];
};

static struct stub stub;

/* The zone entry for name (NULL: NXDOMAIN). Under the lock. */
static struct zname *zone_find(const char *name)
{
    for (int i = 0; i < stub.nzone; i++)
        if (strcmp(stub.zone[i].name, name) == 0)
            return &stub.zone[i];
    return NULL;
}

static void count_query(const char *name, uint16_t type)
{
    for (int i = 0; i < MAXCOUNTS; i++) {
        if (stub.counts[i].n == 0) {
            snprintf(stub.counts[i].name, sizeof(stub.counts[i].name), "%.63s", name);
            stub.counts[i].type = type;
        }
        if (stub.counts[i].type == type && strcmp(stub.counts[i].name, name) == 0) {
            stub.counts[i].n++;
            return;
        }
    }
}

/* Queries the stub got for name and type so far. */
static int queries(const char *name, uint16_t type)
{
    pthread_mutex_lock(&stub.lock);
    int n = 0;
    for (int i = 0; i < MAXCOUNTS; i++)
        if (stub.counts[i].n > 0 && stub.counts[i].type == type &&
            strcmp(stub.counts[i].name, name) == 0)
            n = stub.counts[i].n;
    pthread_mutex_unlock(&stub.lock);
    return n;
}

struct wbuf {
    unsigned char b[1500];
    size_t n;
};

static void put16(struct wbuf *w, uint16_t v)
{
    w->b[w->n++] = (unsigned char)(v >> 8);
    w->b[w->n++] = (unsigned char)v;
}

static void put32(struct wbuf *w, uint32_t v)
{
    put16(w, (uint16_t)(v >> 16));
    put16(w, (uint16_t)v);
}

/* A name as labels, uncompressed. */
static void put_name(struct wbuf *w, const char *name)
{
    const char *p = name;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        w->b[w->n++] = (unsigned char)len;
        memcpy(w->b + w->n, p, len);
        w->n += len;
        p += len;
        if (*p == '.')
            p++;
    }
    w->b[w->n++] = 0;
}

/* A record's fixed part; name_ptr: the question's name (0xc00c) or NULL to write name. */
static void put_rr(struct wbuf *w, const char *name, uint16_t type, uint32_t ttl, uint16_t rdlen)
{
    if (name == NULL)
        put16(w, 0xc00c);
    else
        put_name(w, name);
    put16(w, type);
    put16(w, 1);
    put32(w, ttl);
    put16(w, rdlen);
}

/* The A and AAAA records of z, owner name (NULL: the question's). Returns how many. */
static int put_addrs(struct wbuf *w, const struct zname *z, const char *name, uint16_t type)
{
    int n = 0;
    if (type == T_A) {
        for (int i = 0; i < z->na; i++, n++) {
            put_rr(w, name, T_A, z->ttl, 4);
            assert_int_equal(inet_pton(AF_INET, z->a[i], w->b + w->n), 1);
            w->n += 4;
        }
    } else {
        for (int i = 0; i < z->naaaa; i++, n++) {
            put_rr(w, name, T_AAAA, z->ttl, 16);
            assert_int_equal(inet_pton(AF_INET6, z->aaaa[i], w->b + w->n), 1);
            w->n += 16;
        }
    }
    return n;
}

/* The answer to one query, into w. Returns false to send nothing. */
static bool answer(const unsigned char *q, size_t qlen, struct wbuf *w)
{
    if (qlen < 12 || (q[2] & 0x80) || q[4] != 0 || q[5] != 1)
        return false;
    char name[256];
    size_t off = 12, nl = 0;
    while (off < qlen && q[off] != 0) {
        size_t len = q[off++];
        if (len > 63 || off + len > qlen || nl + len + 2 > sizeof(name))
            return false;
        if (nl > 0)
            name[nl++] = '.';
        for (size_t i = 0; i < len; i++)
            name[nl++] = (char)tolower(q[off + i]);
        off += len;
    }
    name[nl] = '\0';
    if (off + 5 > qlen)
        return false;
    off++;
    uint16_t type = (uint16_t)(q[off] << 8 | q[off + 1]);
    off += 4;

    pthread_mutex_lock(&stub.lock);
    count_query(name, type);
    struct zname *z = zone_find(name);
    int rcode = z == NULL ? RC_NXDOMAIN : RC_OK;
    if (z != NULL && z->rcode != RC_OK && (z->rcode_type == 0 || z->rcode_type == type))
        rcode = z->rcode;
    if (rcode == RC_DROP) {
        pthread_mutex_unlock(&stub.lock);
        return false;
    }
    w->n = 0;
    memcpy(w->b, q, 2);                                     /* id */
    w->b[2] = (unsigned char)(0x80 | 0x04 | (q[2] & 0x01)); /* QR AA RD */
    w->b[3] = (unsigned char)(0x80 | rcode);                /* RA rcode */
    memset(w->b + 4, 0, 8);
    w->b[5] = 1;
    w->n = 12;
    memcpy(w->b + w->n, q + 12, off - 12); /* the question */
    w->n += off - 12;
    int an = 0, ar = 0;
    if (rcode == RC_OK && (type == T_A || type == T_AAAA)) {
        an = put_addrs(w, z, NULL, type);
    } else if (rcode == RC_OK && type == T_SRV) {
        for (int i = 0; i < z->nsrv; i++, an++) {
            put_rr(w, NULL, T_SRV, z->ttl, 0);
            size_t rdlen_at = w->n - 2;
            put16(w, z->srv[i].prio);
            put16(w, z->srv[i].weight);
            put16(w, z->srv[i].port);
            put_name(w, z->srv[i].target);
            size_t rdlen = w->n - rdlen_at - 2;
            w->b[rdlen_at] = (unsigned char)(rdlen >> 8);
            w->b[rdlen_at + 1] = (unsigned char)rdlen;
        }
        /* Each target's addresses once (the same target may serve several records). */
        for (int i = 0; i < z->nsrv; i++) {
            bool seen = false;
            for (int k = 0; k < i; k++)
                seen = seen || strcmp(z->srv[k].target, z->srv[i].target) == 0;
            struct zname *t = zone_find(z->srv[i].target);
            if (seen || t == NULL || !t->in_additional)
                continue;
            ar += put_addrs(w, t, t->name, T_A);
            ar += put_addrs(w, t, t->name, T_AAAA);
        }
    }
    w->b[7] = (unsigned char)an;
    w->b[11] = (unsigned char)ar;
    pthread_mutex_unlock(&stub.lock);
    return true;
}

static void *stub_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&stub.stop)) {
        struct pollfd p = {.fd = stub.fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        unsigned char q[1500];
        struct sockaddr_storage from;
        socklen_t flen = sizeof(from);
        ssize_t n = recvfrom(stub.fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen);
        if (n <= 0)
            continue;
        struct wbuf w;
        if (answer(q, (size_t)n, &w))
            sendto(stub.fd, w.b, w.n, 0, (struct sockaddr *)&from, flen);
    }
    return NULL;
}

/* Start the stub with an empty zone (every name NXDOMAIN). */
static void stub_start(void)
{
    memset(&stub, 0, sizeof(stub));
    pthread_mutex_init(&stub.lock, NULL);
    stub.fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(stub.fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(stub.fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t len = sizeof(sin);
    assert_int_equal(getsockname(stub.fd, (struct sockaddr *)&sin, &len), 0);
    stub.port = ntohs(sin.sin_port);
    assert_int_equal(pthread_create(&stub.thread, NULL, stub_main, NULL), 0);
}

static void stub_stop(void)
{
    atomic_store(&stub.stop, true);
    pthread_join(stub.thread, NULL);
    close(stub.fd);
    pthread_mutex_destroy(&stub.lock);
}

/* Add or replace a name of the zone (the entry is copied). */
static void zone_set(const struct zname *z)
{
    pthread_mutex_lock(&stub.lock);
    struct zname *e = zone_find(z->name);
    if (e == NULL) {
        assert_true(stub.nzone < MAXNAMES);
        e = &stub.zone[stub.nzone++];
    }
    *e = *z;
    pthread_mutex_unlock(&stub.lock);
}

static void zone_del(const char *name)
{
    pthread_mutex_lock(&stub.lock);
    struct zname *e = zone_find(name);
    if (e != NULL)
        *e = stub.zone[--stub.nzone];
    pthread_mutex_unlock(&stub.lock);
}

/* ---- What the source hands over ----------------------------------------------------------- */

struct got {
    pthread_mutex_t lock;
    int calls;
    struct polis_instance_cfg *v;
    size_t n;
    uint64_t at; /* monotonic ms of the last call */
};

static struct got got;

static void on_set(void *ud, const struct polis_instance_cfg *v, size_t n)
{
    assert_ptr_equal(ud, &got);
    pthread_mutex_lock(&got.lock);
    polis__instances_free(got.v, got.n);
    got.v = NULL;
    assert_int_equal(polis__instances_copy(v, n, &got.v), 0);
    got.n = n;
    got.calls++;
    got.at = polis__mono_ms();
    pthread_mutex_unlock(&got.lock);
}

static int calls(void)
{
    pthread_mutex_lock(&got.lock);
    int c = got.calls;
    pthread_mutex_unlock(&got.lock);
    return c;
}

/* Wait until fn was called at least n times, at most timeout_ms. */
static bool wait_calls(int n, uint64_t timeout_ms)
{
    uint64_t end = polis__mono_ms() + timeout_ms;
    while (calls() < n) {
        if (polis__mono_ms() > end)
            return false;
        usleep(2000);
    }
    return true;
}

/* The instance with this id in the last set, or NULL. */
static const struct polis_instance_cfg *find(const char *id)
{
    for (size_t i = 0; i < got.n; i++)
        if (strcmp(got.v[i].id, id) == 0)
            return &got.v[i];
    return NULL;
}

/* Check that the last set is exactly these ids (sorted as the source sorts them) with these
 * weights. */
static void expect_set(const char *const *ids, const uint32_t *weights, size_t n)
{
    pthread_mutex_lock(&got.lock);
    if (got.n != n) {
        for (size_t i = 0; i < got.n; i++)
            fprintf(stderr, "  got %s weight %u\n", got.v[i].id, got.v[i].weight);
    }
    assert_int_equal(got.n, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(got.v[i].id, ids[i]);
        assert_string_equal(got.v[i].addr.text, ids[i]);
        assert_int_equal(got.v[i].weight, weights ? weights[i] : 1);
        assert_int_equal(got.v[i].num_meta, 0);
    }
    pthread_mutex_unlock(&got.lock);
}

static int setup(void **state)
{
    (void)state;
    memset(&got, 0, sizeof(got));
    pthread_mutex_init(&got.lock, NULL);
    stub_start();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    stub_stop();
    polis__instances_free(got.v, got.n);
    pthread_mutex_destroy(&got.lock);
    return 0;
}

/* A source on the stub. */
static struct polis_dns_source *start(const char *name, enum polis_dns_type type, uint16_t port,
                                      uint64_t min_ms, uint64_t max_ms)
{
    char server[32];
    snprintf(server, sizeof(server), "127.0.0.1:%u", stub.port);
    struct polis_discovery_cfg cfg = {
        .kind = POLIS_DISC_DNS,
        .dns_name = (char *)name,
        .dns_type = type,
        .dns_port = port,
        .dns_server = server,
        .dns_min_ttl_ms = min_ms,
        .dns_max_ttl_ms = max_ms,
    };
    struct polis_dns_source *s = NULL;
    assert_int_equal(polis__dns_source_start(&cfg, on_set, &got, &s), 0);
    assert_non_null(s);
    return s;
}

/* ---- A and AAAA ---------------------------------------------------------------------------- */

static void test_a_records(void **state)
{
    (void)state;
    zone_set(&(struct zname){.name = "web.test",
                             .ttl = 30,
                             .a = {"10.0.0.2", "10.0.0.1"},
                             .na = 2,
                             .aaaa = {"fd00::1"},
                             .naaaa = 1});
    struct polis_dns_source *s = start("web.test", POLIS_DNS_A, 8080, 1000, 30000);
    assert_true(wait_calls(1, 2000));
    const char *ids[] = {"10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"};
    expect_set(ids, NULL, 3);

    /* The socket addresses, not only their text. */
    const struct polis_instance_cfg *in = find("10.0.0.2:8080");
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&in->addr.ss;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(in->addr.len, sizeof(*sin));
    assert_int_equal(ntohs(sin->sin_port), 8080);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x0a000002);
    in = find("[fd00::1]:8080");
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&in->addr.ss;
    assert_int_equal(sin6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(sin6->sin6_port), 8080);
    assert_int_equal(sin6->sin6_addr.s6_addr[0], 0xfd);
    assert_int_equal(sin6->sin6_addr.s6_addr[15], 1);

    /* One query per family; the next one after the TTL (30 s). */
    usleep(100 * 1000);
    assert_int_equal(queries("web.test", T_A), 1);
    assert_int_equal(queries("web.test", T_AAAA), 1);
    struct polis_dns_status st;
    polis__dns_source_status(s, &st);
    assert_int_equal(st.resolutions, 1);
    assert_int_equal(st.failures, 0);
    assert_false(st.failing);
    assert_string_equal(st.last_error, "");
    assert_int_equal(st.num_instances, 3);
    assert_true(st.last_resolution_ms > 1600000000000ull);
    assert_int_equal(st.last_success_ms, st.last_resolution_ms);
    assert_true(st.next_resolution_ms > 29000 && st.next_resolution_ms <= 30000);
    polis__dns_source_stop(s);
    assert_int_equal(calls(), 1);
}

/* A name written with its trailing dot is the same name. */
static void test_trailing_dot(void **state)
{
    (void)state;
    zone_set(&(struct zname){.name = "web.test", .ttl = 30, .a = {"10.0.0.1"}, .na = 1});
    struct polis_dns_source *s = start("web.test.", POLIS_DNS_A, 80, 1000, 30000);
    assert_true(wait_calls(1, 2000));
    const char *ids[] = {"10.0.0.1:80"};
    expect_set(ids, NULL, 1);
    polis__dns_source_stop(s);
}

/* With a TTL of 1 s a change reaches fn within about 1.2 s; while nothing changes, no call. */
static void test_change_and_no_change(void **state)
{
    (void)state;
    struct zname z = {.name = "web.test", .ttl = 1, .a = {"10.0.0.1", "10.0.0.2"}, .na = 2};
    zone_set(&z);
    struct polis_dns_source *s = start("web.test", POLIS_DNS_A, 80, 1000, 30000);
    assert_true(wait_calls(1, 2000));
    uint64_t t0 = polis__mono_ms();
    /* Re-resolved every second (t = 0, 1, 2), the same answer: no call. */
    usleep(2300 * 1000);
    assert_int_equal(calls(), 1);
    int q = queries("web.test", T_A);
    assert_true(q >= 3 && q <= 4);

    z.a[2] = "10.0.0.3";
    z.na = 3;
    zone_set(&z);
    uint64_t changed = polis__mono_ms();
    assert_true(wait_calls(2, 2000));
    pthread_mutex_lock(&got.lock);
    uint64_t took = got.at - changed;
    pthread_mutex_unlock(&got.lock);
    fprintf(stderr, "  change reached fn after %llu ms (source started %llu ms before)\n",
            (unsigned long long)took, (unsigned long long)(changed - t0));
    assert_true(took <= 1200);
    const char *ids[] = {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"};
    expect_set(ids, NULL, 3);
    polis__dns_source_stop(s);
    assert_int_equal(calls(), 2);
}

/* NXDOMAIN and an answer without records: an empty set. */
static void test_nxdomain_and_nodata(void **state)
{
    (void)state;
    struct polis_dns_source *s = start("gone.test", POLIS_DNS_A, 80, 200, 30000);
    assert_true(wait_calls(1, 2000)); /* NXDOMAIN: a first answer, empty */
    expect_set(NULL, NULL, 0);

    struct zname z = {.name = "gone.test", .ttl = 1, .a = {"10.0.0.7"}, .na = 1};
    zone_set(&z);
    assert_true(wait_calls(2, 1000)); /* empty sets are re-resolved at the minimum (200 ms) */
    const char *ids[] = {"10.0.0.7:80"};
    expect_set(ids, NULL, 1);

    z.na = 0; /* the name exists, without A or AAAA records */
    zone_set(&z);
    assert_true(wait_calls(3, 2000));
    expect_set(NULL, NULL, 0);

    zone_del("gone.test"); /* NXDOMAIN again: still empty, so no call */
    int q = queries("gone.test", T_A);
    usleep(700 * 1000);
    assert_true(queries("gone.test", T_A) >= q + 2);
    assert_int_equal(calls(), 3);
    polis__dns_source_stop(s);
}

/* SERVFAIL keeps the last set and is retried at the minimum TTL; an answer ends it. */
static void test_servfail_keeps_set(void **state)
{
    (void)state;
    struct zname z = {.name = "web.test", .ttl = 1, .a = {"10.0.0.1"}, .na = 1};
    zone_set(&z);
    struct polis_dns_source *s = start("web.test", POLIS_DNS_A, 80, 200, 30000);
    assert_true(wait_calls(1, 2000));

    z.rcode = RC_SERVFAIL;
    zone_set(&z);
    int q = queries("web.test", T_A);
    usleep(1500 * 1000);
    assert_int_equal(calls(), 1); /* kept */
    const char *ids1[] = {"10.0.0.1:80"};
    expect_set(ids1, NULL, 1);
    /* The round at t = 1 s fails, then one every 200 ms: 1.2, 1.4. */
    assert_true(queries("web.test", T_A) >= q + 3);
    struct polis_dns_status st;
    polis__dns_source_status(s, &st);
    assert_true(st.failing);
    assert_true(st.failures >= 2);
    assert_non_null(strstr(st.last_error, "SERVFAIL"));
    assert_non_null(strstr(st.last_error, "web.test"));
    assert_int_equal(st.num_instances, 1);
    assert_true(st.next_resolution_ms <= 200);
    assert_true(st.last_success_ms < st.last_resolution_ms);

    z.rcode = RC_OK;
    z.a[0] = "10.0.0.9";
    zone_set(&z);
    assert_true(wait_calls(2, 1000));
    const char *ids2[] = {"10.0.0.9:80"};
    expect_set(ids2, NULL, 1);
    polis__dns_source_stop(s);
}

/* A source that never got an answer does not call fn. */
static void test_servfail_first(void **state)
{
    (void)state;
    zone_set(&(struct zname){.name = "web.test", .rcode = RC_SERVFAIL, .ttl = 1});
    struct polis_dns_source *s = start("web.test", POLIS_DNS_A, 80, 100, 30000);
    usleep(600 * 1000);
    assert_int_equal(calls(), 0);
    struct polis_dns_status st;
    polis__dns_source_status(s, &st);
    assert_true(st.failures >= 2);
    assert_int_equal(st.last_success_ms, 0);
    polis__dns_source_stop(s);
    assert_int_equal(calls(), 0);
}

/* One family failing keeps that family's addresses while the other one changes. */
static void test_aaaa_failure_keeps_family(void **state)
{
    (void)state;
    struct zname z = {
        .name = "web.test", .ttl = 1, .a = {"10.0.0.1"}, .na = 1, .aaaa = {"fd00::1"}, .naaaa = 1};
    zone_set(&z);
    struct polis_dns_source *s = start("web.test", POLIS_DNS_A, 80, 200, 30000);
    assert_true(wait_calls(1, 2000));
    const char *ids1[] = {"10.0.0.1:80", "[fd00::1]:80"};
    expect_set(ids1, NULL, 2);

    z.rcode = RC_SERVFAIL;
    z.rcode_type = T_AAAA;
    z.a[0] = "10.0.0.2";
    zone_set(&z);
    assert_true(wait_calls(2, 2000));
    const char *ids2[] = {"10.0.0.2:80", "[fd00::1]:80"};
    expect_set(ids2, NULL, 2);
    polis__dns_source_stop(s);
}

/* ---- SRV ----------------------------------------------------------------------------------- */

static void test_srv(void **state)
{
    (void)state;
    struct zname svc = {.name = "_http._tcp.api.test",
                        .ttl = 1,
                        .srv = {{10, 5, 9001, "a.node.test"},
                                {10, 0, 9002, "A.Node.Test"}, /* same target, another port */
                                {10, 60000, 9003, "b.node.test"},
                                {20, 1, 9004, "c.node.test"}},
                        .nsrv = 4};
    zone_set(&svc);
    /* a and c come in the additional section (Consul); b must be resolved. */
    zone_set(&(struct zname){
        .name = "a.node.test", .ttl = 60, .a = {"10.0.1.1"}, .na = 1, .in_additional = true});
    zone_set(&(struct zname){.name = "b.node.test",
                             .ttl = 60,
                             .a = {"10.0.1.2"},
                             .na = 1,
                             .aaaa = {"fd00::2"},
                             .naaaa = 1});
    zone_set(&(struct zname){
        .name = "c.node.test", .ttl = 60, .a = {"10.0.1.3"}, .na = 1, .in_additional = true});
    struct polis_dns_source *s = start("_http._tcp.api.test", POLIS_DNS_SRV, 0, 200, 30000);
    assert_true(wait_calls(1, 2000));
    const char *ids1[] = {"10.0.1.1:9001", "10.0.1.1:9002", "10.0.1.2:9003", "[fd00::2]:9003"};
    const uint32_t w1[] = {5, 1, 10000, 10000};
    expect_set(ids1, w1, 4);
    assert_int_equal(queries("a.node.test", T_A), 0); /* from the additional section */
    assert_int_equal(queries("a.node.test", T_AAAA), 0);
    assert_int_equal(queries("b.node.test", T_A), 1);
    assert_int_equal(queries("b.node.test", T_AAAA), 1);
    assert_int_equal(queries("c.node.test", T_A), 0); /* priority 20: unused */

    /* A target that fails keeps the whole set. */
    zone_set(&(struct zname){.name = "b.node.test", .rcode = RC_SERVFAIL, .ttl = 60});
    svc.srv[0].weight = 7;
    zone_set(&svc);
    int q = queries("b.node.test", T_A);
    usleep(1500 * 1000);
    assert_true(queries("b.node.test", T_A) > q);
    assert_int_equal(calls(), 1);
    struct polis_dns_status st;
    polis__dns_source_status(s, &st);
    assert_true(st.failing);
    assert_non_null(strstr(st.last_error, "b.node.test"));

    /* Priority 10 gone: the priority 20 record is used. */
    svc.srv[0] = svc.srv[3];
    svc.nsrv = 1;
    zone_set(&svc);
    assert_true(wait_calls(2, 2000));
    const char *ids2[] = {"10.0.1.3:9004"};
    expect_set(ids2, NULL, 1);

    /* No SRV record any more: empty. */
    zone_del("_http._tcp.api.test");
    assert_true(wait_calls(3, 2000));
    expect_set(NULL, NULL, 0);
    polis__dns_source_stop(s);
}

/* An SRV record whose target is "." (no service) or whose target does not exist adds nothing. */
static void test_srv_missing_targets(void **state)
{
    (void)state;
    zone_set(&(struct zname){.name = "_x._tcp.svc.test",
                             .ttl = 5,
                             .srv = {{1, 1, 81, ""}, {1, 1, 82, "nx.test"}, {1, 3, 83, "d.test"}},
                             .nsrv = 3});
    zone_set(&(struct zname){.name = "d.test", .ttl = 5, .aaaa = {"::1"}, .naaaa = 1});
    struct polis_dns_source *s = start("_x._tcp.svc.test", POLIS_DNS_SRV, 0, 200, 30000);
    assert_true(wait_calls(1, 2000));
    const char *ids[] = {"[::1]:83"};
    const uint32_t w[] = {3};
    expect_set(ids, w, 1);
    assert_int_equal(queries("nx.test", T_A), 1);
    polis__dns_source_stop(s);
}

/* ---- TTL clamping -------------------------------------------------------------------------- */

/* Resolutions (A queries) during 1.6 s with this TTL and these bounds. */
static int rounds_in_1600ms(uint32_t ttl, uint64_t min_ms, uint64_t max_ms)
{
    zone_set(&(struct zname){.name = "ttl.test", .ttl = ttl, .a = {"10.0.0.1"}, .na = 1});
    int q0 = queries("ttl.test", T_A);
    struct polis_dns_source *s = start("ttl.test", POLIS_DNS_A, 80, min_ms, max_ms);
    usleep(1600 * 1000);
    polis__dns_source_stop(s);
    int n = queries("ttl.test", T_A) - q0;
    fprintf(stderr, "  ttl %u s, min %llu ms, max %llu ms: %d resolutions in 1.6 s\n", ttl,
            (unsigned long long)min_ms, (unsigned long long)max_ms, n);
    return n;
}

static void test_ttl_clamping(void **state)
{
    (void)state;
    int n = rounds_in_1600ms(0, 300, 10000); /* TTL 0 -> every 300 ms: t = 0, .3, ... 1.5 */
    assert_true(n >= 5 && n <= 7);
    n = rounds_in_1600ms(3600, 100, 300); /* TTL 1 h -> every 300 ms */
    assert_true(n >= 5 && n <= 7);
    n = rounds_in_1600ms(1, 100, 10000); /* TTL 1 s within the bounds: t = 0, 1 */
    assert_int_equal(n, 2);
}

/* ---- Stopping ------------------------------------------------------------------------------ */

static void test_stop_is_prompt(void **state)
{
    (void)state;
    zone_set(&(struct zname){.name = "web.test", .ttl = 3600, .a = {"10.0.0.1"}, .na = 1});
    struct polis_dns_source *s = start("web.test", POLIS_DNS_A, 80, 1000, 3600000);
    assert_true(wait_calls(1, 2000));
    uint64_t t0 = polis__mono_ms();
    polis__dns_source_stop(s);
    uint64_t took = polis__mono_ms() - t0;
    assert_true(took < 100);

    /* With a query in flight that is never answered. */
    zone_set(&(struct zname){.name = "slow.test", .rcode = RC_DROP});
    s = start("slow.test", POLIS_DNS_A, 80, 1000, 30000);
    usleep(150 * 1000);
    assert_true(queries("slow.test", T_A) >= 1);
    t0 = polis__mono_ms();
    polis__dns_source_stop(s);
    took = polis__mono_ms() - t0;
    assert_true(took < 100);
    assert_int_equal(calls(), 1); /* only the first source's */
}

/* A server that never answers: the query times out, the set is kept. */
static void test_timeout_keeps_set(void **state)
{
    (void)state;
    struct zname z = {.name = "web.test", .ttl = 1, .a = {"10.0.0.1"}, .na = 1};
    zone_set(&z);
    struct polis_dns_source *s = start("web.test", POLIS_DNS_A, 80, 200, 30000);
    assert_true(wait_calls(1, 2000));
    z.rcode = RC_DROP;
    z.na = 0;
    zone_set(&z);
    /* The round at 1 s waits 1 s + 2 s before it fails. */
    uint64_t end = polis__mono_ms() + 6000;
    struct polis_dns_status st;
    do {
        usleep(50 * 1000);
        polis__dns_source_status(s, &st);
    } while (!st.failing && polis__mono_ms() < end);
    assert_true(st.failing);
    assert_non_null(strstr(st.last_error, "timeout"));
    assert_int_equal(calls(), 1);
    const char *ids[] = {"10.0.0.1:80"};
    expect_set(ids, NULL, 1);
    polis__dns_source_stop(s);
}

/* ---- Arguments ----------------------------------------------------------------------------- */

static void test_bad_config(void **state)
{
    (void)state;
    struct polis_dns_source *s = NULL;
    struct polis_discovery_cfg cfg = {
        .kind = POLIS_DISC_DNS, .dns_name = "web.test", .dns_type = POLIS_DNS_A, .dns_port = 80};
    cfg.dns_name = NULL;
    assert_int_equal(polis__dns_source_start(&cfg, on_set, &got, &s), POLIS_EINVAL);
    cfg.dns_name = "";
    assert_int_equal(polis__dns_source_start(&cfg, on_set, &got, &s), POLIS_EINVAL);
    cfg.dns_name = "web.test";
    cfg.dns_port = 0; /* A needs a port */
    assert_int_equal(polis__dns_source_start(&cfg, on_set, &got, &s), POLIS_EINVAL);
    cfg.dns_port = 80;
    cfg.dns_min_ttl_ms = 5000;
    cfg.dns_max_ttl_ms = 1000;
    assert_int_equal(polis__dns_source_start(&cfg, on_set, &got, &s), POLIS_EINVAL);
    cfg.dns_min_ttl_ms = 0;
    cfg.dns_max_ttl_ms = 0;
    cfg.dns_server = "not a server";
    assert_int_equal(polis__dns_source_start(&cfg, on_set, &got, &s), POLIS_EINVAL);
    assert_int_equal(polis__dns_source_start(&cfg, NULL, &got, &s), POLIS_EINVAL);
    assert_null(s);
    polis__dns_source_stop(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trailing_dot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change_and_no_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nxdomain_and_nodata, setup, teardown),
        cmocka_unit_test_setup_teardown(test_servfail_keeps_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_servfail_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aaaa_failure_keeps_family, setup, teardown),
        cmocka_unit_test_setup_teardown(test_srv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_srv_missing_targets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ttl_clamping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_is_prompt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_keeps_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_config, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
