/* Unit tests of the TLS layer (lib/security/tls.c) over loopback TCP, driven the way the gateway
 * drives sockets: edge-triggered epoll, and after a short read or EAGAIN no read until the next
 * edge (a short read means "drained"), after EAGAIN on write no write until the next edge. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "security/tls.h"

#define DATA "tests/data/tls/"
#define STALL_MS 5000

extern char **environ;

static const struct polis_tls_cert cert_a = {DATA "server-a.pem", DATA "server-a.key"};
static const struct polis_tls_cert cert_b = {DATA "server-b.pem", DATA "server-b.key"};
static const struct polis_tls_cert cert_wild = {DATA "wildcard.pem", DATA "wildcard.key"};
static const struct polis_tls_cert cert_expired = {DATA "expired.pem", DATA "expired.key"};

/* ---- Helpers ------------------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static size_t rng_below(uint64_t *s, size_t n)
{
    return n == 0 ? 0 : (size_t)(rng_next(s) % n);
}

/* A chunk size in [1, max]: tiny, small or anything, a third of the time each. */
static size_t rng_chunk(uint64_t *s, size_t max)
{
    size_t cls = rng_below(s, 3);
    size_t lim = cls == 0 ? 16 : cls == 1 ? 1024 : max;
    if (lim > max)
        lim = max;
    return 1 + rng_below(s, lim);
}

static unsigned char *random_bytes(size_t n, uint64_t seed)
{
    unsigned char *p = malloc(n);
    assert_non_null(p);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = rng_next(&seed);
        memcpy(p + i, &v, n - i < 8 ? n - i : 8);
    }
    return p;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    assert_true(fl >= 0);
    assert_int_equal(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

/* A connected pair of non-blocking loopback TCP sockets (a listener of its own each time, so
 * threads may call it). sndbuf, when not 0, shrinks both send buffers. */
static void tcp_pair(int *sfd, int *cfd, int sndbuf)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(l >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(l, 4), 0);
    socklen_t al = sizeof(a);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &al), 0);
    *cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(*cfd >= 0);
    if (sndbuf > 0)
        setsockopt(*cfd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    assert_int_equal(connect(*cfd, (struct sockaddr *)&a, sizeof(a)), 0);
    *sfd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    assert_true(*sfd >= 0);
    close(l);
    if (sndbuf > 0)
        setsockopt(*sfd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    int one = 1;
    setsockopt(*sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(*cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    set_nonblock(*sfd);
    set_nonblock(*cfd);
}

/* ---- The edge-triggered driver ----------------------------------------------------------------
 */

/* One end of a connection, moved by the driver like the gateway moves a connection. */
struct ep {
    struct polis_io io;
    bool can_read, can_write; /* set by an edge, cleared by EAGAIN or a short read */
    /* Sent: tx[0..tx_len), or, for an echo, what was received. */
    const unsigned char *tx;
    size_t tx_len, tx_pos;
    unsigned char *rx;
    size_t rx_len, rx_cap;
    size_t rx_want; /* done_last_rx: this much received (0: rx_cap) */
    bool echo;
    size_t echo_window;  /* echo: stop reading while this much waits to be sent back */
    bool paused;         /* neither reads nor writes */
    bool read_only;      /* never writes */
    bool shut_when_sent; /* shutdown() once everything (tx_len, or shut_at for an echo) went */
    size_t shut_at;
    bool shut, eof, failed;
    int err;
    size_t max_read, max_write; /* chunk bounds; random sizes up to them */
    bool fixed_chunks;          /* always max_read / max_write */
    uint64_t rng;
    size_t short_reads;
};

static void ep_init(struct ep *e, const struct polis_io *io, uint64_t seed)
{
    memset(e, 0, sizeof(*e));
    e->io = *io;
    /* As the gateway at accept: try reading once, writability comes with registration. */
    e->can_read = true;
    e->rng = seed;
    e->max_read = 65536;
    e->max_write = 65536;
    e->echo_window = 256 * 1024;
}

/* Move what can move without an edge. Returns true on progress. */
static bool pump(struct ep *e)
{
    bool progress = false;
    if (e->paused || e->failed)
        return false;
    while (e->can_write && !e->read_only && !e->shut) {
        const unsigned char *src = e->echo ? e->rx : e->tx;
        size_t end = e->echo ? e->rx_len : e->tx_len;
        size_t avail = end - e->tx_pos;
        if (avail == 0)
            break;
        size_t want = e->fixed_chunks ? e->max_write : rng_chunk(&e->rng, e->max_write);
        if (want > avail)
            want = avail;
        /* Up to three iovecs, cut at random points. */
        struct iovec iov[3];
        int cnt = 0;
        size_t off = 0;
        while (off < want) {
            size_t part =
                cnt == 2 || e->fixed_chunks ? want - off : 1 + rng_below(&e->rng, want - off);
            iov[cnt++] = (struct iovec){(void *)(src + e->tx_pos + off), part};
            off += part;
        }
        ssize_t w = polis_io_writev(&e->io, iov, cnt);
        if (w < 0) {
            if (errno == EAGAIN) {
                e->can_write = false;
            } else {
                e->failed = true;
                e->err = errno;
            }
            break;
        }
        assert_true(w > 0 && (size_t)w <= want);
        e->tx_pos += (size_t)w;
        progress = true;
    }
    size_t goal = e->echo ? e->shut_at : e->tx_len;
    if (e->shut_when_sent && !e->shut && !e->failed && e->tx_pos == goal) {
        e->io.ops->shutdown(&e->io);
        e->shut = true;
        progress = true;
    }
    while (e->can_read && !e->eof && !e->failed) {
        if (e->echo && e->rx_len - e->tx_pos >= e->echo_window)
            break; /* backpressure: the flag stays, as in the gateway */
        size_t space = e->rx_cap - e->rx_len;
        if (space == 0)
            break;
        size_t want = e->fixed_chunks ? e->max_read : rng_chunk(&e->rng, e->max_read);
        if (want > space)
            want = space;
        ssize_t n = polis_io_read(&e->io, e->rx + e->rx_len, want);
        if (n > 0) {
            e->rx_len += (size_t)n;
            progress = true;
            if ((size_t)n < want) {
                /* "Drained": the layer must hold no decrypted byte back. */
                assert_int_equal(SSL_pending(polis__tls_ssl(&e->io)), 0);
                e->short_reads++;
                e->can_read = false;
            }
            continue;
        }
        e->can_read = false;
        if (n == 0) {
            e->eof = true;
            progress = true;
        } else if (errno != EAGAIN) {
            e->failed = true;
            e->err = errno;
            progress = true;
        } else {
            assert_int_equal(SSL_pending(polis__tls_ssl(&e->io)), 0);
        }
    }
    return progress;
}

struct drv {
    int epfd;
    struct ep *eps[4];
    int n;
};

static void drv_init(struct drv *d)
{
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    assert_true(d->epfd >= 0);
    d->n = 0;
}

static void drv_add(struct drv *d, struct ep *e)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, .data.ptr = e};
    assert_int_equal(epoll_ctl(d->epfd, EPOLL_CTL_ADD, e->io.fd, &ev), 0);
    d->eps[d->n++] = e;
}

static void drv_close(struct drv *d)
{
    close(d->epfd);
}

typedef bool (*done_fn)(struct drv *d);

/* Pump and wait for edges until done(d). Returns false when nothing happened for STALL_MS
 * while not done: with edge-triggered readiness, that is a stall. */
static bool drv_run(struct drv *d, done_fn done)
{
    for (;;) {
        bool progress = true;
        while (progress) {
            progress = false;
            for (int i = 0; i < d->n; i++)
                progress |= pump(d->eps[i]);
        }
        if (done(d))
            return true;
        struct epoll_event evs[8];
        int k = epoll_wait(d->epfd, evs, 8, STALL_MS);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        for (int i = 0; i < k; i++) {
            struct ep *e = evs[i].data.ptr;
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                e->can_read = true;
            if (evs[i].events & (EPOLLOUT | EPOLLERR))
                e->can_write = true;
        }
    }
}

/* Done when the last endpoint received everything, or when something failed. */
static bool done_last_rx(struct drv *d)
{
    for (int i = 0; i < d->n; i++)
        if (d->eps[i]->failed)
            return true;
    struct ep *e = d->eps[d->n - 1];
    return e->rx_len == (e->rx_want != 0 ? e->rx_want : e->rx_cap);
}

/* Done when every endpoint failed or saw the end of the stream. */
static bool done_all_ended(struct drv *d)
{
    for (int i = 0; i < d->n; i++)
        if (!d->eps[i]->failed && !d->eps[i]->eof)
            return false;
    return true;
}

/* Done when the first endpoint failed or saw the end of the stream. */
static bool done_first_ended(struct drv *d)
{
    return d->eps[0]->failed || d->eps[0]->eof;
}

/* ---- Connections ----------------------------------------------------------------------------- */

struct pair {
    int sfd, cfd;
    struct polis_io s, c;
};

static void pair_open_buf(struct pair *p, struct polis_tls_server *srv,
                          struct polis_tls_client *cli, const char *name, const char *key,
                          int sndbuf)
{
    tcp_pair(&p->sfd, &p->cfd, sndbuf);
    assert_int_equal(polis__tls_accept(srv, p->sfd, &p->s), 0);
    assert_int_equal(polis__tls_connect(cli, p->cfd, name, key, &p->c), 0);
    assert_true(polis__tls_is_tls(&p->s));
    assert_true(polis__tls_is_tls(&p->c));
}

static void pair_open(struct pair *p, struct polis_tls_server *srv, struct polis_tls_client *cli,
                      const char *name, const char *key)
{
    pair_open_buf(p, srv, cli, name, key, 0);
}

static void pair_close(struct pair *p)
{
    polis__tls_io_free(&p->s);
    polis__tls_io_free(&p->c);
    assert_null(p->s.ctx);
    close(p->sfd);
    close(p->cfd);
}

/* What an exchange ended with. */
struct xres {
    bool ok; /* the client got its bytes back intact */
    bool s_failed, c_failed;
    int s_err, c_err;
    size_t s_short_reads, c_short_reads;
};

/* The client sends n random bytes (chunks up to max_chunk), the server echoes them back. */
static struct xres echo_n(struct pair *p, size_t n, size_t max_chunk, uint64_t seed)
{
    unsigned char *tx = random_bytes(n, seed);
    unsigned char *crx = malloc(n), *srx = malloc(n);
    assert_non_null(crx);
    assert_non_null(srx);
    struct ep s, c;
    ep_init(&s, &p->s, seed * 3 + 1);
    ep_init(&c, &p->c, seed * 5 + 2);
    s.echo = true;
    s.rx = srx;
    s.rx_cap = n;
    c.tx = tx;
    c.tx_len = n;
    c.rx = crx;
    c.rx_cap = n;
    s.max_read = s.max_write = c.max_read = c.max_write = max_chunk;
    struct drv d;
    drv_init(&d);
    drv_add(&d, &s);
    drv_add(&d, &c);
    bool ran = drv_run(&d, done_last_rx);
    drv_close(&d);
    struct xres r = {
        .ok = ran && !s.failed && !c.failed && c.rx_len == n && memcmp(tx, crx, n) == 0,
        .s_failed = s.failed,
        .c_failed = c.failed,
        .s_err = s.err,
        .c_err = c.err,
        .s_short_reads = s.short_reads,
        .c_short_reads = c.short_reads,
    };
    if (!r.ok && ran && !s.failed && !c.failed)
        fail_msg("echo of %zu bytes came back different", n);
    if (s.failed || c.failed)
        print_message("echo: server %s (%s), client %s (%s)\n", strerror(s.err),
                      polis__tls_io_error(&p->s), strerror(c.err), polis__tls_io_error(&p->c));
    if (!ran)
        fail_msg("echo of %zu bytes stalled: client has %zu/%zu sent, %zu received; server "
                 "received %zu, sent %zu",
                 n, c.tx_pos, n, c.rx_len, s.rx_len, s.tx_pos);
    free(tx);
    free(crx);
    free(srx);
    return r;
}

/* An exchange that must fail: run until both ends failed or ended. */
static struct xres echo_fail(struct pair *p)
{
    static const unsigned char msg[] = "ping";
    unsigned char crx[8], srx[8];
    struct ep s, c;
    ep_init(&s, &p->s, 7);
    ep_init(&c, &p->c, 8);
    s.echo = true;
    s.rx = srx;
    s.rx_cap = sizeof(srx);
    c.tx = msg;
    c.tx_len = sizeof(msg) - 1;
    c.rx = crx;
    c.rx_cap = sizeof(crx);
    struct drv d;
    drv_init(&d);
    drv_add(&d, &s);
    drv_add(&d, &c);
    bool ran = drv_run(&d, done_all_ended);
    drv_close(&d);
    assert_true(ran);
    return (struct xres){
        .ok = false, .s_failed = s.failed, .c_failed = c.failed, .s_err = s.err, .c_err = c.err};
}

static struct polis_tls_server *server_with(const struct polis_tls_server_opts *o)
{
    char err[512];
    struct polis_tls_server *srv = NULL;
    int rc = polis__tls_server_new(o, &srv, err, sizeof(err));
    if (rc != 0)
        fail_msg("server: %s", err);
    return srv;
}

static struct polis_tls_server *server_certs(const struct polis_tls_cert *certs, size_t n)
{
    struct polis_tls_server_opts o = {.certs = certs, .num_certs = n};
    return server_with(&o);
}

static struct polis_tls_client *client_with(const struct polis_tls_client_opts *o)
{
    char err[512];
    struct polis_tls_client *cli = NULL;
    int rc = polis__tls_client_new(o, &cli, err, sizeof(err));
    if (rc != 0)
        fail_msg("client: %s", err);
    return cli;
}

static struct polis_tls_client *client_ca(void)
{
    struct polis_tls_client_opts o = {.ca_file = DATA "ca.pem"};
    return client_with(&o);
}

/* The CN of the certificate the peer presented (verified or not). */
static void peer_cn(const struct polis_io *io, char *buf, int cap)
{
    buf[0] = '\0';
    X509 *x = SSL_get0_peer_certificate(polis__tls_ssl(io));
    assert_non_null(x);
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, cap);
}

/* ---- Echo ------------------------------------------------------------------------------------ */

#define TEN_MIB (10u * 1024 * 1024)

/* 10 MiB each way through TLS 1.3 in random chunks, the handshake driven by the client's first
 * writev() and the server's first read(). */
static void test_echo_10mib_tls13(void **state)
{
    (void)state;
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client *cli = client_ca();
    struct pair p;
    pair_open(&p, srv, cli, "a.test", NULL);
    assert_false(polis__tls_handshake_done(&p.c));
    assert_string_equal(polis__tls_version(&p.c), "");
    struct xres r = echo_n(&p, TEN_MIB, 65536, 42);
    assert_true(r.ok);
    assert_true(polis__tls_handshake_done(&p.s));
    assert_string_equal(polis__tls_version(&p.s), "TLSv1.3");
    assert_string_equal(polis__tls_version(&p.c), "TLSv1.3");
    assert_true(strlen(polis__tls_cipher(&p.c)) > 0);
    assert_false(polis__tls_resumed(&p.c));
    assert_string_equal(polis__tls_io_error(&p.s), "");
    pair_close(&p);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* The same over TLS 1.2 (the client caps the version). */
static void test_echo_10mib_tls12(void **state)
{
    (void)state;
    struct polis_tls_server *srv = server_certs(&cert_b, 1);
    struct polis_tls_client_opts co = {.ca_file = DATA "ca.pem", .max_version = POLIS_TLS_1_2};
    struct polis_tls_client *cli = client_with(&co);
    struct pair p;
    pair_open(&p, srv, cli, "b.test", NULL);
    struct xres r = echo_n(&p, TEN_MIB, 65536, 43);
    assert_true(r.ok);
    assert_string_equal(polis__tls_version(&p.s), "TLSv1.2");
    assert_string_equal(polis__tls_version(&p.c), "TLSv1.2");
    pair_close(&p);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* Tiny send buffers: records constantly go out in pieces, so writev() keeps owing bytes. */
static void test_echo_small_sndbuf(void **state)
{
    (void)state;
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client *cli = client_ca();
    for (uint64_t seed = 1; seed <= 3; seed++) {
        struct pair p;
        pair_open_buf(&p, srv, cli, "a.test", NULL, 4096);
        struct xres r = echo_n(&p, 2u * 1024 * 1024, 40000, seed);
        assert_true(r.ok);
        pair_close(&p);
    }
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* The server speaks first: its writev() starts the server handshake, the client's read() the
 * client's. Then the client answers. */
static void test_handshake_driven_by_either_side(void **state)
{
    (void)state;
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client *cli = client_ca();
    struct pair p;
    pair_open(&p, srv, cli, "a.test", NULL);
    size_t n = 300000;
    unsigned char *banner = random_bytes(n, 9);
    unsigned char *crx = malloc(n), *srx = malloc(n);
    struct ep s, c;
    ep_init(&s, &p.s, 1);
    ep_init(&c, &p.c, 2);
    s.tx = banner;
    s.tx_len = n;
    s.rx = srx;
    s.rx_cap = n;
    c.echo = true; /* the client echoes what the server says */
    c.rx = crx;
    c.rx_cap = n; /* its first read() sends the ClientHello, as the gateway's first read would */
    struct drv d;
    drv_init(&d);
    drv_add(&d, &c);
    drv_add(&d, &s); /* the server is last: done when it got its banner back */
    assert_true(drv_run(&d, done_last_rx));
    drv_close(&d);
    assert_false(s.failed);
    assert_false(c.failed);
    assert_memory_equal(srx, banner, n);
    free(banner);
    free(crx);
    free(srx);
    pair_close(&p);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* polis__tls_handshake() completes a handshake on its own, with read wants. */
static void test_handshake_helper(void **state)
{
    (void)state;
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client *cli = client_ca();
    struct pair p;
    pair_open(&p, srv, cli, "localhost", NULL);
    int rs = POLIS_EAGAIN, rc = POLIS_EAGAIN;
    for (int i = 0; i < 2000 && (rs != 0 || rc != 0); i++) {
        unsigned want = 0;
        if (rc != 0)
            rc = polis__tls_handshake(&p.c, &want);
        if (rc == POLIS_EAGAIN)
            assert_true(want & POLIS_EV_READ);
        if (rs != 0)
            rs = polis__tls_handshake(&p.s, &want);
        assert_true(rs == 0 || rs == POLIS_EAGAIN);
        assert_true(rc == 0 || rc == POLIS_EAGAIN);
        usleep(1000);
    }
    assert_int_equal(rs, 0);
    assert_int_equal(rc, 0);
    assert_true(polis__tls_handshake_done(&p.c));
    struct xres r = echo_n(&p, 1000, 100, 5);
    assert_true(r.ok);
    pair_close(&p);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* ---- The edge-triggered constraint -------------------------------------------------------------
 */

/* Many small records arrive while the server does not read; then it reads with a large buffer
 * and with a tiny one. OpenSSL reads ahead several records per recv(): a read() that returned
 * after one record would leave the rest inside OpenSSL with no edge to come, and stall. */
static void small_records(size_t read_max, bool fixed)
{
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client *cli = client_ca();
    struct pair p;
    pair_open(&p, srv, cli, "a.test", NULL);
    assert_true(echo_n(&p, 10, 10, 1).ok); /* handshake done, tickets read */
    size_t n = 40000;
    unsigned char *tx = random_bytes(n, 77);
    unsigned char *srx = malloc(n + 4096);
    struct ep s, c;
    ep_init(&s, &p.s, 3);
    ep_init(&c, &p.c, 4);
    c.tx = tx;
    c.tx_len = n;
    c.max_write = 16; /* one record per 1..16 bytes: about 4700 records */
    s.rx = srx;
    s.rx_cap = n + 4096; /* room to spare: reads can come back short */
    s.rx_want = n;
    s.paused = true;
    struct drv d;
    drv_init(&d);
    drv_add(&d, &c);
    drv_add(&d, &s);
    /* Phase 1: the client writes until done or blocked; nothing is read. */
    c.can_write = true; /* writable since the handshake */
    while (c.tx_pos < n && c.can_write)
        pump(&c);
    assert_true(c.tx_pos > n / 2); /* thousands of records wait for the server */
    /* Let them reach its socket: until the client's queue is empty or stops moving (the
     * server's window closes before all of them fit). */
    int unsent = -1, still = 0;
    for (int i = 0; i < 2000 && unsent != 0 && still < 20; i++) {
        int now = 0;
        assert_int_equal(ioctl(p.cfd, SIOCOUTQ, &now), 0);
        still = now == unsent ? still + 1 : 0;
        unsent = now;
        usleep(1000);
    }
    int queued = 0;
    assert_int_equal(ioctl(p.sfd, FIONREAD, &queued), 0);
    assert_true(queued > 50000); /* thousands of records for the server to read at once */
    /* Phase 2: the server reads, by edges only. */
    s.paused = false;
    s.max_read = read_max;
    s.fixed_chunks = fixed;
    s.can_read = true; /* the edges of phase 1 */
    bool ran = drv_run(&d, done_last_rx);
    drv_close(&d);
    if (!ran)
        fail_msg("stalled with %zu of %zu bytes read (%zu sent)", s.rx_len, n, c.tx_pos);
    assert_false(s.failed);
    assert_memory_equal(srx, tx, n);
    free(tx);
    free(srx);
    pair_close(&p);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

static void test_small_records_big_reads(void **state)
{
    (void)state;
    small_records(65536, true);
}

static void test_small_records_tiny_reads(void **state)
{
    (void)state;
    small_records(5, true);
}

static void test_small_records_random_reads(void **state)
{
    (void)state;
    small_records(3000, false);
}

/* ---- Versions, SNI, ALPN -----------------------------------------------------------------------
 */

static void test_versions(void **state)
{
    (void)state;
    struct polis_tls_server_opts so13 = {
        .certs = &cert_a, .num_certs = 1, .min_version = POLIS_TLS_1_3};
    struct polis_tls_server_opts so12 = {
        .certs = &cert_a, .num_certs = 1, .max_version = POLIS_TLS_1_2};
    struct polis_tls_client_opts co12 = {.ca_file = DATA "ca.pem", .max_version = POLIS_TLS_1_2};
    struct polis_tls_client_opts co13 = {.ca_file = DATA "ca.pem", .min_version = POLIS_TLS_1_3};
    struct polis_tls_server *srv13 = server_with(&so13), *srv12 = server_with(&so12);
    struct polis_tls_client *cli12 = client_with(&co12), *cli13 = client_with(&co13);
    struct pair p;

    pair_open(&p, srv13, cli13, "a.test", NULL); /* 1.3 forced on both */
    assert_true(echo_n(&p, 5000, 1000, 1).ok);
    assert_string_equal(polis__tls_version(&p.s), "TLSv1.3");
    pair_close(&p);

    pair_open(&p, srv12, cli12, "a.test", NULL); /* 1.2 forced on both */
    assert_true(echo_n(&p, 5000, 1000, 2).ok);
    assert_string_equal(polis__tls_version(&p.c), "TLSv1.2");
    pair_close(&p);

    pair_open(&p, srv13, cli12, "a.test", NULL); /* no common version */
    struct xres r = echo_fail(&p);
    assert_true(r.s_failed && r.c_failed);
    assert_int_equal(r.s_err, EPROTO);
    assert_non_null(strstr(polis__tls_io_error(&p.s), "unsupported protocol"));
    assert_non_null(strstr(polis__tls_io_error(&p.c), "protocol version"));
    pair_close(&p);

    polis__tls_server_free(srv13);
    polis__tls_server_free(srv12);
    polis__tls_client_free(cli12);
    polis__tls_client_free(cli13);

    char err[256];
    struct polis_tls_server *bad = NULL;
    struct polis_tls_server_opts inv = {.certs = &cert_a,
                                        .num_certs = 1,
                                        .min_version = POLIS_TLS_1_3,
                                        .max_version = POLIS_TLS_1_2};
    assert_int_equal(polis__tls_server_new(&inv, &bad, err, sizeof(err)), POLIS_EINVAL);
    assert_null(bad);
    inv.min_version = (enum polis_tls_version)11;
    assert_int_equal(polis__tls_server_new(&inv, &bad, err, sizeof(err)), POLIS_EINVAL);
    assert_non_null(strstr(err, "version"));
}

/* Connect with name (verified against the test CA unless cli says otherwise); check the
 * certificate served by its CN and the name the server saw. */
static void expect_cert(struct polis_tls_server *srv, struct polis_tls_client *cli,
                        const char *name, const char *cn)
{
    struct pair p;
    pair_open(&p, srv, cli, name, NULL);
    struct xres r = echo_n(&p, 100, 100, 3);
    if (!r.ok)
        fail_msg("%s: %s / %s", name, polis__tls_io_error(&p.c), polis__tls_io_error(&p.s));
    char got[128];
    peer_cn(&p.c, got, sizeof(got));
    if (strcmp(got, cn) != 0)
        fail_msg("SNI %s: got the certificate of %s, not %s", name ? name : "(none)", got, cn);
    const char *seen = polis__tls_server_name(&p.s);
    bool sends_sni = name != NULL && strcmp(name, "127.0.0.1") != 0;
    if (sends_sni)
        assert_string_equal(seen, name);
    else
        assert_null(seen);
    pair_close(&p);
}

static void test_sni(void **state)
{
    (void)state;
    const struct polis_tls_cert certs[] = {cert_a, cert_b, cert_wild};
    struct polis_tls_server *srv = server_certs(certs, 3);
    struct polis_tls_client *cli = client_ca();
    expect_cert(srv, cli, "a.test", "a.test");
    expect_cert(srv, cli, "b.test", "b.test"); /* an EC certificate beside the RSA default */
    expect_cert(srv, cli, "www.b.test", "b.test");
    expect_cert(srv, cli, "WWW.B.Test", "b.test");
    expect_cert(srv, cli, "x.wild.test", "*.wild.test");
    expect_cert(srv, cli, "Some-Host.wild.test", "*.wild.test");
    expect_cert(srv, cli, "127.0.0.1", "a.test"); /* an IP: no SNI, default, IP SAN verified */
    /* What a name matches nothing or only wrongly: the default, whatever the client makes of
     * it (here it does not verify). */
    struct polis_tls_client_opts io = {.insecure_skip_verify = true};
    struct polis_tls_client *lax = client_with(&io);
    expect_cert(srv, lax, NULL, "a.test");
    expect_cert(srv, lax, "unknown.test", "a.test");
    expect_cert(srv, lax, "a.b.wild.test", "a.test"); /* a wildcard covers one label */
    expect_cert(srv, lax, "wild.test", "a.test");
    polis__tls_client_free(lax);
    /* A wildcard first: exact names still win, the wildcard takes the rest. */
    const struct polis_tls_cert certs2[] = {cert_wild, cert_b};
    struct polis_tls_server *srv2 = server_certs(certs2, 2);
    expect_cert(srv2, cli, "b.test", "b.test");
    expect_cert(srv2, cli, "q.wild.test", "*.wild.test");
    polis__tls_server_free(srv2);
    /* An EC default and an RSA certificate by SNI: the default must not win the signature
     * algorithm choice (clients prefer ECDSA). */
    const struct polis_tls_cert certs3[] = {cert_b, cert_a};
    struct polis_tls_server *srv3 = server_certs(certs3, 2);
    expect_cert(srv3, cli, "a.test", "a.test");
    expect_cert(srv3, cli, "b.test", "b.test");
    expect_cert(srv3, cli, "localhost", "a.test");
    polis__tls_server_free(srv3);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

static void test_alpn(void **state)
{
    (void)state;
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client *cli = client_ca();
    struct polis_tls_client_opts no = {.ca_file = DATA "ca.pem", .no_alpn = true};
    struct polis_tls_client *cli_none = client_with(&no);
    struct pair p;

    pair_open(&p, srv, cli, "a.test", NULL);
    assert_true(echo_n(&p, 10, 10, 1).ok);
    assert_true(polis_str_eq(polis__tls_alpn(&p.s), POLIS_STR("http/1.1")));
    assert_true(polis_str_eq(polis__tls_alpn(&p.c), POLIS_STR("http/1.1")));
    pair_close(&p);

    pair_open(&p, srv, cli_none, "a.test", NULL); /* no ALPN at all: accepted */
    assert_true(echo_n(&p, 10, 10, 2).ok);
    assert_int_equal(polis__tls_alpn(&p.s).len, 0);
    assert_int_equal(polis__tls_alpn(&p.c).len, 0);
    pair_close(&p);

    pair_open(&p, srv, cli, "a.test", NULL); /* h2 and http/1.1: http/1.1 */
    static const unsigned char both[] = "\x02h2\x08http/1.1";
    assert_int_equal(SSL_set_alpn_protos(polis__tls_ssl(&p.c), both, sizeof(both) - 1), 0);
    assert_true(echo_n(&p, 10, 10, 3).ok);
    assert_true(polis_str_eq(polis__tls_alpn(&p.s), POLIS_STR("http/1.1")));
    pair_close(&p);

    pair_open(&p, srv, cli, "a.test", NULL); /* only h2: refused */
    static const unsigned char h2[] = "\x02h2";
    assert_int_equal(SSL_set_alpn_protos(polis__tls_ssl(&p.c), h2, sizeof(h2) - 1), 0);
    struct xres r = echo_fail(&p);
    assert_true(r.s_failed && r.c_failed);
    assert_non_null(strstr(polis__tls_io_error(&p.s), "application protocol"));
    assert_non_null(strstr(polis__tls_io_error(&p.c), "application protocol"));
    pair_close(&p);

    polis__tls_client_free(cli_none);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* ---- Resumption ------------------------------------------------------------------------------ */

/* One short exchange; returns whether both ends resumed (and checks they agree). */
static bool connect_resumed(struct polis_tls_server *srv, struct polis_tls_client *cli,
                            const char *name, const char *key)
{
    struct pair p;
    pair_open(&p, srv, cli, name, key);
    struct xres r = echo_n(&p, 2000, 500, 11);
    if (!r.ok)
        fail_msg("%s / %s", polis__tls_io_error(&p.c), polis__tls_io_error(&p.s));
    bool s = polis__tls_resumed(&p.s), c = polis__tls_resumed(&p.c);
    assert_int_equal(s, c);
    assert_int_equal(SSL_session_reused(polis__tls_ssl(&p.c)), c ? 1 : 0);
    p.c.ops->shutdown(&p.c);
    p.s.ops->shutdown(&p.s);
    pair_close(&p);
    return s;
}

static void resumption(enum polis_tls_version v, bool tickets)
{
    struct polis_tls_server_opts so = {
        .certs = &cert_a, .num_certs = 1, .no_session_tickets = !tickets};
    struct polis_tls_server *srv = server_with(&so);
    struct polis_tls_client_opts co = {.ca_file = DATA "ca.pem", .max_version = v};
    struct polis_tls_client *cli = client_with(&co);
    assert_false(connect_resumed(srv, cli, "a.test", "127.0.0.1:1"));
    assert_true(connect_resumed(srv, cli, "a.test", "127.0.0.1:1"));
    assert_true(connect_resumed(srv, cli, "a.test", "127.0.0.1:1"));
    assert_false(connect_resumed(srv, cli, "a.test", "127.0.0.1:2"));    /* another upstream */
    assert_false(connect_resumed(srv, cli, "localhost", "127.0.0.1:1")); /* another name */
    assert_true(connect_resumed(srv, cli, "localhost", "127.0.0.1:1"));
    assert_false(connect_resumed(srv, cli, "a.test", NULL)); /* no key: no reuse */
    struct polis_tls_client_opts off = co;
    off.no_session_reuse = true;
    struct polis_tls_client *cli_off = client_with(&off);
    assert_false(connect_resumed(srv, cli_off, "a.test", "k"));
    assert_false(connect_resumed(srv, cli_off, "a.test", "k"));
    polis__tls_client_free(cli_off);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

static void test_resumption_tickets_tls13(void **state)
{
    (void)state;
    resumption(POLIS_TLS_1_3, true);
}

static void test_resumption_tickets_tls12(void **state)
{
    (void)state;
    resumption(POLIS_TLS_1_2, true);
}

static void test_resumption_cache_tls13(void **state)
{
    (void)state;
    resumption(POLIS_TLS_1_3, false);
}

static void test_resumption_cache_tls12(void **state)
{
    (void)state;
    resumption(POLIS_TLS_1_2, false);
}

/* The client keeps a bounded number of upstream sessions, dropping the least recently used. */
static void test_client_session_store_bound(void **state)
{
    (void)state;
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client_opts co = {.ca_file = DATA "ca.pem", .session_cache_size = 2};
    struct polis_tls_client *cli = client_with(&co);
    assert_false(connect_resumed(srv, cli, "a.test", "A"));
    assert_false(connect_resumed(srv, cli, "a.test", "B"));
    assert_true(connect_resumed(srv, cli, "a.test", "A"));  /* A is now the most recent */
    assert_false(connect_resumed(srv, cli, "a.test", "C")); /* evicts B */
    assert_true(connect_resumed(srv, cli, "a.test", "A"));
    assert_true(connect_resumed(srv, cli, "a.test", "C"));
    assert_false(connect_resumed(srv, cli, "a.test", "B"));
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* Neither tickets nor cache: never resumed. */
static void test_resumption_off(void **state)
{
    (void)state;
    struct polis_tls_server_opts so = {
        .certs = &cert_a, .num_certs = 1, .no_session_tickets = true, .no_session_cache = true};
    struct polis_tls_server *srv = server_with(&so);
    struct polis_tls_client *cli = client_ca();
    assert_false(connect_resumed(srv, cli, "a.test", "x"));
    assert_false(connect_resumed(srv, cli, "a.test", "x"));
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* Tickets under the previous two keys resume; older ones do not. */
static void test_ticket_key_rotation(void **state)
{
    (void)state;
    for (int v = 0; v < 2; v++) {
        struct polis_tls_server *srv = server_certs(&cert_a, 1);
        struct polis_tls_client_opts co = {.ca_file = DATA "ca.pem",
                                           .max_version = v ? POLIS_TLS_1_2 : POLIS_TLS_1_3};
        struct polis_tls_client *cli = client_with(&co);
        assert_false(connect_resumed(srv, cli, "a.test", "k"));
        polis__tls_server_rotate_ticket_keys(srv);
        assert_true(connect_resumed(srv, cli, "a.test", "k")); /* renewed under the new key */
        polis__tls_server_rotate_ticket_keys(srv);
        polis__tls_server_rotate_ticket_keys(srv);
        assert_true(connect_resumed(srv, cli, "a.test", "k")); /* two keys back: still */
        polis__tls_server_rotate_ticket_keys(srv);
        polis__tls_server_rotate_ticket_keys(srv);
        polis__tls_server_rotate_ticket_keys(srv);
        assert_false(connect_resumed(srv, cli, "a.test", "k")); /* three back: gone */
        assert_true(connect_resumed(srv, cli, "a.test", "k"));
        polis__tls_client_free(cli);
        polis__tls_server_free(srv);
    }
}

/* Ticket keys outlive a reload: a session of the old configuration resumes on the new one,
 * unless the client-certificate settings changed. */
static void test_resumption_across_reload(void **state)
{
    (void)state;
    char err[512];
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client *cli = client_ca();
    assert_false(connect_resumed(srv, cli, "a.test", "k"));
    struct polis_tls_server_opts same = {.certs = &cert_a, .num_certs = 1};
    assert_int_equal(polis__tls_server_reload(srv, &same, err, sizeof(err)), 0);
    assert_true(connect_resumed(srv, cli, "a.test", "k"));
    struct polis_tls_server_opts mtls = {.certs = &cert_a,
                                         .num_certs = 1,
                                         .client_verify = POLIS_TLS_VERIFY_OPTIONAL,
                                         .client_ca_file = DATA "ca.pem"};
    assert_int_equal(polis__tls_server_reload(srv, &mtls, err, sizeof(err)), 0);
    assert_false(connect_resumed(srv, cli, "a.test", "k"));
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* ---- Client certificates (mTLS) ------------------------------------------------------------- */

static struct polis_tls_client *client_cert(const char *cert, const char *key)
{
    struct polis_tls_client_opts o = {.ca_file = DATA "ca.pem", .cert_file = cert, .key_file = key};
    return client_with(&o);
}

static void test_mtls_required(void **state)
{
    (void)state;
    struct polis_tls_server_opts so = {.certs = &cert_a,
                                       .num_certs = 1,
                                       .client_verify = POLIS_TLS_VERIFY_REQUIRED,
                                       .client_ca_file = DATA "ca.pem"};
    struct polis_tls_server *srv = server_with(&so);
    struct polis_tls_client *none = client_ca();
    struct polis_tls_client *good = client_cert(DATA "client.pem", DATA "client.key");
    struct polis_tls_client *other = client_cert(DATA "other-client.pem", DATA "other-client.key");
    char buf[256];
    struct pair p;

    for (int v = 0; v < 2; v++) {
        struct polis_tls_client_opts o12 = {.ca_file = DATA "ca.pem", .max_version = POLIS_TLS_1_2};
        struct polis_tls_client *c12 = client_with(&o12);
        pair_open(&p, srv, v ? c12 : none, "a.test", NULL); /* no certificate */
        struct xres r = echo_fail(&p);
        assert_true(r.s_failed);
        assert_int_equal(r.s_err, EPROTO);
        assert_true(r.c_failed);
        assert_non_null(strstr(polis__tls_io_error(&p.s), "certificate"));
        assert_int_equal(polis__tls_peer_subject(&p.s, buf, sizeof(buf)), POLIS_ENOTFOUND);
        assert_string_equal(buf, "");
        pair_close(&p);
        polis__tls_client_free(c12);
    }

    pair_open(&p, srv, other, "a.test", NULL); /* signed by another CA */
    struct xres r = echo_fail(&p);
    assert_true(r.s_failed && r.c_failed);
    assert_non_null(strstr(polis__tls_io_error(&p.s), "certificate verify failed"));
    assert_non_null(strstr(polis__tls_io_error(&p.s), "issuer"));
    assert_int_equal(polis__tls_peer_subject(&p.s, buf, sizeof(buf)), POLIS_ENOTFOUND);
    pair_close(&p);

    pair_open(&p, srv, good, "a.test", NULL);
    assert_true(echo_n(&p, 100000, 5000, 3).ok);
    assert_int_equal(polis__tls_peer_subject(&p.s, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "CN=client.test,O=Polis Tests");
    assert_int_equal(polis__tls_peer_san(&p.s, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "DNS:client.test,URI:spiffe://polis.test/client");
    assert_int_equal(polis__tls_peer_subject(&p.s, buf, 10), POLIS_ETOOBIG);
    assert_int_equal(polis__tls_peer_san(&p.s, buf, 10), POLIS_ETOOBIG);
    /* The client verified the server too. */
    assert_int_equal(polis__tls_peer_subject(&p.c, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "CN=a.test,O=Polis Tests");
    assert_int_equal(polis__tls_peer_san(&p.c, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "DNS:a.test,DNS:localhost,IP:127.0.0.1");
    pair_close(&p);

    /* A resumed session keeps its verified client. */
    assert_false(connect_resumed(srv, good, "a.test", "m"));
    pair_open(&p, srv, good, "a.test", "m");
    assert_true(echo_n(&p, 10, 10, 4).ok);
    assert_true(polis__tls_resumed(&p.s));
    assert_int_equal(polis__tls_peer_subject(&p.s, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "CN=client.test,O=Polis Tests");
    pair_close(&p);

    polis__tls_client_free(none);
    polis__tls_client_free(good);
    polis__tls_client_free(other);
    polis__tls_server_free(srv);
}

static void test_mtls_optional_and_off(void **state)
{
    (void)state;
    struct polis_tls_server_opts so = {.certs = &cert_a,
                                       .num_certs = 1,
                                       .client_verify = POLIS_TLS_VERIFY_OPTIONAL,
                                       .client_ca_file = DATA "ca.pem"};
    struct polis_tls_server *opt = server_with(&so);
    struct polis_tls_server *off = server_certs(&cert_a, 1);
    struct polis_tls_client *none = client_ca();
    struct polis_tls_client *good = client_cert(DATA "client.pem", DATA "client.key");
    struct polis_tls_client *other = client_cert(DATA "other-client.pem", DATA "other-client.key");
    char buf[256];
    struct pair p;

    pair_open(&p, opt, none, "a.test", NULL);
    assert_true(echo_n(&p, 10, 10, 1).ok);
    assert_int_equal(polis__tls_peer_subject(&p.s, buf, sizeof(buf)), POLIS_ENOTFOUND);
    assert_int_equal(polis__tls_peer_san(&p.s, buf, sizeof(buf)), POLIS_ENOTFOUND);
    pair_close(&p);

    pair_open(&p, opt, good, "a.test", NULL);
    assert_true(echo_n(&p, 10, 10, 2).ok);
    assert_int_equal(polis__tls_peer_subject(&p.s, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "CN=client.test,O=Polis Tests");
    pair_close(&p);

    pair_open(&p, opt, other, "a.test", NULL); /* sent, but does not verify: refused */
    struct xres r = echo_fail(&p);
    assert_true(r.s_failed);
    pair_close(&p);

    pair_open(&p, off, good, "a.test", NULL); /* not asked for: nothing to expose */
    assert_true(echo_n(&p, 10, 10, 3).ok);
    assert_int_equal(polis__tls_peer_subject(&p.s, buf, sizeof(buf)), POLIS_ENOTFOUND);
    pair_close(&p);

    polis__tls_client_free(none);
    polis__tls_client_free(good);
    polis__tls_client_free(other);
    polis__tls_server_free(opt);
    polis__tls_server_free(off);
}

/* ---- Client verification --------------------------------------------------------------------- */

/* The client must refuse: check its reason contains want, and that the server failed too. */
static void expect_refused(struct polis_tls_server *srv, struct polis_tls_client *cli,
                           const char *name, const char *want)
{
    struct pair p;
    pair_open(&p, srv, cli, name, NULL);
    struct xres r = echo_fail(&p);
    assert_true(r.c_failed);
    assert_int_equal(r.c_err, EPROTO);
    assert_true(r.s_failed);
    const char *why = polis__tls_io_error(&p.c);
    if (strstr(why, want) == NULL)
        fail_msg("%s: expected \"%s\" in \"%s\"", name, want, why);
    assert_false(polis__tls_handshake_done(&p.c));
    pair_close(&p);
}

static void test_client_verification(void **state)
{
    (void)state;
    const struct polis_tls_cert certs[] = {cert_a, cert_expired};
    struct polis_tls_server *srv = server_certs(certs, 2);
    struct polis_tls_client *cli = client_ca();
    expect_refused(srv, cli, "wrong.test", "hostname mismatch");
    expect_refused(srv, cli, "10.1.2.3", "IP address mismatch");
    expect_refused(srv, cli, "expired.test", "certificate has expired");
    struct polis_tls_client_opts oo = {.ca_file = DATA "other-ca.pem"};
    struct polis_tls_client *other = client_with(&oo);
    expect_refused(srv, other, "a.test", "unable to get local issuer certificate");
    polis__tls_client_free(other);
    /* Verification needs a name. */
    struct polis_io io;
    assert_int_equal(polis__tls_connect(cli, 0, NULL, NULL, &io), POLIS_EINVAL);
    /* Without verification, anything goes (and nothing counts as verified). */
    struct polis_tls_client_opts lo = {.insecure_skip_verify = true};
    struct polis_tls_client *lax = client_with(&lo);
    struct pair p;
    pair_open(&p, srv, lax, "expired.test", NULL);
    assert_true(echo_n(&p, 10, 10, 1).ok);
    char buf[128];
    assert_int_equal(polis__tls_peer_subject(&p.c, buf, sizeof(buf)), POLIS_ENOTFOUND);
    pair_close(&p);
    polis__tls_client_free(lax);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* ---- Reload and bad files
 * ------------------------------------------------------------------------ */

static void test_reload(void **state)
{
    (void)state;
    char err[512];
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client_opts lo = {.insecure_skip_verify = true};
    struct polis_tls_client *cli = client_with(&lo);
    struct pair established, accepted, fresh;
    pair_open(&established, srv, cli, "b.test", NULL);
    assert_true(echo_n(&established, 1000, 100, 1).ok);
    pair_open(&accepted, srv, cli, "b.test", NULL); /* accepted, handshake not started */

    const struct polis_tls_cert next[] = {cert_b, cert_wild};
    struct polis_tls_server_opts o = {.certs = next, .num_certs = 2};
    assert_int_equal(polis__tls_server_reload(srv, &o, err, sizeof(err)), 0);
    assert_string_equal(err, "");

    char cn[128];
    pair_open(&fresh, srv, cli, "b.test", NULL);
    assert_true(echo_n(&fresh, 1000, 100, 2).ok);
    peer_cn(&fresh.c, cn, sizeof(cn));
    assert_string_equal(cn, "b.test");
    pair_close(&fresh);
    pair_open(&fresh, srv, cli, "z.wild.test", NULL);
    assert_true(echo_n(&fresh, 1000, 100, 2).ok);
    peer_cn(&fresh.c, cn, sizeof(cn));
    assert_string_equal(cn, "*.wild.test");
    pair_close(&fresh);

    /* Connections from before keep theirs, even once the server itself is gone. */
    polis__tls_server_free(srv);
    assert_true(echo_n(&accepted, 300000, 30000, 3).ok);
    peer_cn(&accepted.c, cn, sizeof(cn));
    assert_string_equal(cn, "a.test");
    assert_true(echo_n(&established, 300000, 30000, 4).ok);
    polis__tls_client_free(cli); /* the same holds for the client */
    assert_true(echo_n(&established, 1000, 100, 5).ok);
    pair_close(&accepted);
    pair_close(&established);
}

/* Write text to a fresh file under dir; returns its path (static buffer per slot). */
static const char *write_file(const char *dir, const char *name, const char *text)
{
    static char paths[4][256];
    static int slot;
    char *path = paths[slot++ % 4];
    snprintf(path, 256, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* A reload with bad files fails with the file and the reason, and changes nothing. */
static void expect_bad(struct polis_tls_server *srv, struct polis_tls_client *cli,
                       const struct polis_tls_server_opts *o, const char *want1, const char *want2)
{
    char err[512];
    int rc = polis__tls_server_reload(srv, o, err, sizeof(err));
    assert_int_equal(rc, POLIS_EINVAL);
    if (strstr(err, want1) == NULL || (want2 != NULL && strstr(err, want2) == NULL))
        fail_msg("expected \"%s\" and \"%s\" in \"%s\"", want1, want2 ? want2 : "", err);
    struct polis_tls_server *none = NULL;
    assert_int_equal(polis__tls_server_new(o, &none, err, sizeof(err)), POLIS_EINVAL);
    assert_null(none);
    expect_cert(srv, cli, "a.test", "a.test"); /* the old configuration still serves */
}

static void test_reload_bad_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/polis-tls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *garbage = write_file(dir, "garbage.pem", "this is not a certificate\n");
    char *pem = NULL;
    {
        FILE *f = fopen(DATA "server-a.pem", "r");
        assert_non_null(f);
        pem = calloc(1, 8192);
        assert_true(fread(pem, 1, 8191, f) > 0);
        fclose(f);
        pem[strlen(pem) / 2] = '\0'; /* cut in the middle of the base64 */
    }
    const char *truncated = write_file(dir, "truncated.pem", pem);
    free(pem);

    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client *cli = client_ca();
    struct polis_tls_cert c[2];
    struct polis_tls_server_opts o = {.certs = c, .num_certs = 1};

    c[0] = (struct polis_tls_cert){DATA "missing.pem", DATA "server-a.key"};
    expect_bad(srv, cli, &o, DATA "missing.pem", "No such file");
    c[0] = (struct polis_tls_cert){garbage, DATA "server-a.key"};
    expect_bad(srv, cli, &o, garbage, "no start line");
    c[0] = (struct polis_tls_cert){truncated, DATA "server-a.key"};
    expect_bad(srv, cli, &o, truncated, NULL);
    c[0] = (struct polis_tls_cert){DATA "server-a.pem", DATA "missing.key"};
    expect_bad(srv, cli, &o, DATA "missing.key", "No such file");
    c[0] = (struct polis_tls_cert){DATA "server-a.pem", garbage};
    expect_bad(srv, cli, &o, garbage, "key");
    c[0] = (struct polis_tls_cert){DATA "server-a.pem", DATA "server-b.key"};
    expect_bad(srv, cli, &o, DATA "server-b.key", "does not match");
    /* The second certificate is bad: all or nothing. */
    c[0] = cert_b;
    c[1] = (struct polis_tls_cert){DATA "wildcard.pem", DATA "missing.key"};
    o.num_certs = 2;
    expect_bad(srv, cli, &o, DATA "missing.key", NULL);
    o.num_certs = 1;
    /* Client CA files. */
    o.client_verify = POLIS_TLS_VERIFY_REQUIRED;
    o.client_ca_file = DATA "missing-ca.pem";
    expect_bad(srv, cli, &o, DATA "missing-ca.pem", NULL);
    o.client_ca_file = garbage;
    expect_bad(srv, cli, &o, garbage, NULL);
    o.client_ca_file = NULL;
    expect_bad(srv, cli, &o, "CA file", NULL);
    o.client_verify = POLIS_TLS_VERIFY_OFF;
    o.ciphers = "NOT-A-CIPHER";
    expect_bad(srv, cli, &o, "NOT-A-CIPHER", NULL);
    o.ciphers = NULL;
    o.num_certs = 0;
    expect_bad(srv, cli, &o, "certificate", NULL);

    /* Client contexts report the same way. */
    char err[512];
    struct polis_tls_client *bad = NULL;
    struct polis_tls_client_opts co = {.ca_file = DATA "missing-ca.pem"};
    assert_int_equal(polis__tls_client_new(&co, &bad, err, sizeof(err)), POLIS_EINVAL);
    assert_non_null(strstr(err, DATA "missing-ca.pem"));
    co = (struct polis_tls_client_opts){
        .ca_file = DATA "ca.pem", .cert_file = DATA "client.pem", .key_file = DATA "server-a.key"};
    assert_int_equal(polis__tls_client_new(&co, &bad, err, sizeof(err)), POLIS_EINVAL);
    assert_non_null(strstr(err, "does not match"));
    co.key_file = NULL;
    assert_int_equal(polis__tls_client_new(&co, &bad, err, sizeof(err)), POLIS_EINVAL);
    assert_null(bad);

    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
    unlink(garbage);
    unlink(truncated);
    rmdir(dir);
}

/* Workers accept and handshake while another thread keeps reloading. */
struct worker_arg {
    struct polis_tls_server *srv;
    struct polis_tls_client *cli;
    int rounds;
    int ok;
};

static void *worker(void *p)
{
    struct worker_arg *a = p;
    for (int i = 0; i < a->rounds; i++) {
        struct pair pr;
        pair_open(&pr, a->srv, a->cli, i % 2 ? "a.test" : "b.test", NULL);
        if (echo_n(&pr, 4000, 1000, (uint64_t)i).ok)
            a->ok++;
        pair_close(&pr);
    }
    return NULL;
}

static void test_reload_concurrent(void **state)
{
    (void)state;
    const struct polis_tls_cert certs[] = {cert_a, cert_b};
    struct polis_tls_server_opts o = {.certs = certs, .num_certs = 2};
    struct polis_tls_server *srv = server_with(&o);
    struct polis_tls_client *cli = client_ca();
    struct worker_arg args[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (struct worker_arg){srv, cli, 15, 0};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    char err[512];
    for (int i = 0; i < 20; i++) {
        assert_int_equal(polis__tls_server_reload(srv, &o, err, sizeof(err)), 0);
        polis__tls_server_rotate_ticket_keys(srv);
        usleep(2000);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].ok, args[i].rounds);
    }
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* ---- Shutdown and failures ------------------------------------------------------------------- */

/* close_notify ends the stream in each direction separately, after everything written. */
static void test_shutdown_half_close(void **state)
{
    (void)state;
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    struct polis_tls_client *cli = client_ca();
    struct pair p;
    pair_open(&p, srv, cli, "a.test", NULL);
    size_t n = 500000;
    unsigned char *req = random_bytes(n, 1), *resp = random_bytes(n, 2);
    unsigned char *srx = malloc(n + 1), *crx = malloc(n + 1);
    struct ep s, c;
    ep_init(&s, &p.s, 5);
    ep_init(&c, &p.c, 6);
    c.tx = req;
    c.tx_len = n;
    c.shut_when_sent = true;
    c.rx = crx;
    c.rx_cap = n + 1; /* room for more: the end must come as EOF */
    s.rx = srx;
    s.rx_cap = n + 1;
    struct drv d;
    drv_init(&d);
    drv_add(&d, &s);
    drv_add(&d, &c);
    /* The server hears the whole request, then the end. */
    assert_true(drv_run(&d, done_first_ended));
    assert_false(s.failed || c.failed);
    assert_true(s.eof);
    assert_int_equal(s.rx_len, n);
    assert_memory_equal(srx, req, n);
    /* It answers on its still-open side, then closes it. */
    s.tx = resp;
    s.tx_len = n;
    s.shut_when_sent = true;
    assert_true(drv_run(&d, done_all_ended));
    drv_close(&d);
    assert_false(c.failed);
    assert_true(c.eof);
    assert_int_equal(c.rx_len, n);
    assert_memory_equal(crx, resp, n);
    /* Writing after shutdown is refused; the socket's sending side is shut too. */
    char byte = 'x';
    assert_int_equal(polis_io_writev(&p.c, &(struct iovec){&byte, 1}, 1), -1);
    assert_int_equal(errno, EPIPE);
    assert_int_equal(polis_io_read(&p.s, &byte, 1), 0);
    assert_int_equal(recv(p.sfd, &byte, 1, MSG_DONTWAIT), 0); /* the FIN after close_notify */
    free(req);
    free(resp);
    free(srx);
    free(crx);
    pair_close(&p);
    polis__tls_client_free(cli);
    polis__tls_server_free(srv);
}

/* Not TLS, a close during the handshake, a reset: clear errors, sticky. */
static void test_handshake_failures(void **state)
{
    (void)state;
    struct polis_tls_server *srv = server_certs(&cert_a, 1);
    char buf[256];
    int sfd, cfd;
    struct polis_io io;

    tcp_pair(&sfd, &cfd, 0); /* plain HTTP to a TLS port */
    assert_int_equal(polis__tls_accept(srv, sfd, &io), 0);
    const char *get = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(send(cfd, get, strlen(get), 0), (ssize_t)strlen(get));
    usleep(20000);
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), -1);
    assert_int_equal(errno, EPROTO);
    assert_non_null(strstr(polis__tls_io_error(&io), "TLS handshake failed"));
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), -1); /* sticky */
    assert_int_equal(errno, EPROTO);
    assert_int_equal(polis_io_writev(&io, &(struct iovec){buf, 1}, 1), -1);
    assert_int_equal(errno, EPROTO);
    unsigned want;
    assert_int_equal(polis__tls_handshake(&io, &want), POLIS_EBADMSG);
    io.ops->shutdown(&io);
    polis__tls_io_free(&io);
    close(sfd);
    close(cfd);

    tcp_pair(&sfd, &cfd, 0); /* connected, then closed without a byte */
    assert_int_equal(polis__tls_accept(srv, sfd, &io), 0);
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), -1);
    assert_int_equal(errno, EAGAIN);
    close(cfd);
    usleep(20000);
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), -1);
    assert_int_equal(errno, ECONNRESET);
    assert_non_null(strstr(polis__tls_io_error(&io), "closed"));
    assert_int_equal(polis__tls_handshake(&io, &want), POLIS_ECLOSED);
    polis__tls_io_free(&io);
    close(sfd);

    /* Half a ClientHello, then a reset. */
    tcp_pair(&sfd, &cfd, 0);
    assert_int_equal(polis__tls_accept(srv, sfd, &io), 0);
    static const unsigned char hello_start[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00};
    assert_int_equal(send(cfd, hello_start, sizeof(hello_start), 0), (ssize_t)sizeof(hello_start));
    usleep(20000);
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), -1);
    assert_int_equal(errno, EAGAIN);
    struct linger lg = {1, 0};
    setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(cfd);
    usleep(20000);
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), -1);
    assert_int_equal(errno, ECONNRESET);
    polis__tls_io_free(&io);
    close(sfd);

    /* After the handshake, a TCP close without close_notify ends the stream like a socket. */
    {
        struct polis_tls_client *cli = client_ca();
        struct pair p;
        pair_open(&p, srv, cli, "a.test", NULL);
        assert_true(echo_n(&p, 100, 100, 1).ok);
        polis__tls_io_free(&p.c);
        close(p.cfd);
        usleep(20000);
        assert_int_equal(polis_io_read(&p.s, buf, sizeof(buf)), 0);
        assert_int_equal(polis_io_read(&p.s, buf, sizeof(buf)), 0);
        assert_string_equal(polis__tls_io_error(&p.s), "");
        polis__tls_io_free(&p.s);
        close(p.sfd);
        polis__tls_client_free(cli);
    }

    /* Not a TLS io: the queries say so. */
    struct polis_io plain;
    polis_io_socket(&plain, 0);
    assert_false(polis__tls_is_tls(&plain));
    assert_null(polis__tls_ssl(&plain));
    assert_string_equal(polis__tls_io_error(&plain), "");
    assert_int_equal(polis__tls_peer_subject(&plain, buf, sizeof(buf)), POLIS_ENOTFOUND);
    polis__tls_io_free(&plain); /* ignored */
    polis__tls_server_free(srv);
}

/* ---- The openssl CLI ------------------------------------------------------------------------ */

/* `openssl s_client` against a server run by the driver: SNI, verification, ALPN, echo. */
static void test_openssl_s_client(void **state)
{
    (void)state;
    if (access("/usr/bin/openssl", X_OK) != 0)
        skip();
    const struct polis_tls_cert certs[] = {cert_a, cert_b};
    struct polis_tls_server *srv = server_certs(certs, 2);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(l, 1), 0);
    socklen_t al = sizeof(a);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &al), 0);
    char connect_to[64];
    snprintf(connect_to, sizeof(connect_to), "127.0.0.1:%d", ntohs(a.sin_port));

    char dir[] = "/tmp/polis-tls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const char line[] = "hello from s_client\n";
    const char *in_path = write_file(dir, "in", line);
    char out_path[300];
    snprintf(out_path, sizeof(out_path), "%s/out", dir);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, in_path, O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    char *argv[] = {"openssl",
                    "s_client",
                    "-connect",
                    connect_to,
                    "-servername",
                    "b.test",
                    "-alpn",
                    "http/1.1",
                    "-CAfile",
                    DATA "ca.pem",
                    "-verify_hostname",
                    "b.test",
                    "-verify_return_error",
                    "-ign_eof",
                    NULL};
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, "/usr/bin/openssl", &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);

    int sfd = -1;
    for (int i = 0; i < 500 && sfd < 0; i++) {
        sfd = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (sfd < 0)
            usleep(10000);
    }
    assert_true(sfd >= 0);
    close(l);
    struct polis_io io;
    assert_int_equal(polis__tls_accept(srv, sfd, &io), 0);
    unsigned char rx[256];
    struct ep s;
    ep_init(&s, &io, 1);
    s.echo = true;
    s.rx = rx;
    s.rx_cap = sizeof(rx);
    s.shut_when_sent = true; /* s_client (-ign_eof) leaves when we close */
    s.shut_at = sizeof(line) - 1;
    struct drv d;
    drv_init(&d);
    drv_add(&d, &s);
    bool ran = drv_run(&d, done_all_ended);
    drv_close(&d);
    int status = -1;
    for (int i = 0; i < 500; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
        usleep(10000);
        if (i == 499) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
        }
    }
    char out[16384] = {0};
    FILE *f = fopen(out_path, "r");
    assert_non_null(f);
    size_t got = fread(out, 1, sizeof(out) - 1, f);
    fclose(f);
    out[got] = '\0';
    if (getenv("KEEP_OUT") != NULL)
        print_message("s_client output in %s\n", out_path);
    if (!ran || s.failed)
        fail_msg("server (%s, %zu bytes in, %zu out, eof %d): %s; s_client said, last:\n%s",
                 ran ? "ended" : "stalled", s.rx_len, s.tx_pos, s.eof, polis__tls_io_error(&io),
                 got > 1000 ? out + got - 1000 : out);
    assert_int_equal(s.rx_len, sizeof(line) - 1);
    assert_memory_equal(rx, line, sizeof(line) - 1);
    assert_non_null(strstr(out, "CN = b.test"));
    assert_non_null(strstr(out, "Verification: OK"));
    assert_non_null(strstr(out, "ALPN protocol: http/1.1"));
    assert_non_null(strstr(out, "TLSv1.3"));
    assert_non_null(strstr(out, line));
    assert_string_equal(polis__tls_server_name(&io), "b.test");
    polis__tls_io_free(&io);
    close(sfd);
    if (getenv("KEEP_OUT") == NULL) {
        unlink(in_path);
        unlink(out_path);
        rmdir(dir);
    }
    polis__tls_server_free(srv);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* the layer never raises it; a mistake should fail, not kill */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_10mib_tls13),
        cmocka_unit_test(test_echo_10mib_tls12),
        cmocka_unit_test(test_echo_small_sndbuf),
        cmocka_unit_test(test_handshake_driven_by_either_side),
        cmocka_unit_test(test_handshake_helper),
        cmocka_unit_test(test_small_records_big_reads),
        cmocka_unit_test(test_small_records_tiny_reads),
        cmocka_unit_test(test_small_records_random_reads),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_sni),
        cmocka_unit_test(test_alpn),
        cmocka_unit_test(test_resumption_tickets_tls13),
        cmocka_unit_test(test_resumption_tickets_tls12),
        cmocka_unit_test(test_resumption_cache_tls13),
        cmocka_unit_test(test_resumption_cache_tls12),
        cmocka_unit_test(test_resumption_off),
        cmocka_unit_test(test_client_session_store_bound),
        cmocka_unit_test(test_ticket_key_rotation),
        cmocka_unit_test(test_resumption_across_reload),
        cmocka_unit_test(test_mtls_required),
        cmocka_unit_test(test_mtls_optional_and_off),
        cmocka_unit_test(test_client_verification),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_reload_bad_files),
        cmocka_unit_test(test_reload_concurrent),
        cmocka_unit_test(test_shutdown_half_close),
        cmocka_unit_test(test_handshake_failures),
        cmocka_unit_test(test_openssl_s_client),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
