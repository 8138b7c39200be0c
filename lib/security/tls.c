/* tls.c: TLS on OpenSSL 3 as an I/O layer for edge-triggered non-blocking sockets: the ops
 * table, server generations (certificates by SNI, ALPN, resumption, client certificates,
 * reload) and client contexts (verification, SNI, client certificates, session reuse). */
#include "security/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Ciphertext the socket did not take waits in a per-connection buffer of at most this much: a
 * record of application data, handshake flights and a few alerts fit many times over; a peer
 * that makes us queue more (by never reading while provoking answers) loses its connection. */
#define OUT_CAP (256u * 1024)
/* Plaintext per SSL_write: one full record. */
#define RECORD_MAX 16384
/* TLS 1.2 default: forward secrecy and AEAD only. */
#define DEFAULT_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"
#define DEFAULT_SESSION_TIMEOUT_S 3600
#define DEFAULT_SESSION_CACHE 20000
#define DEFAULT_CLIENT_SESSIONS 1024
#define TICKET_KEYS 3 /* the current key and two previous ones */

static const unsigned char alpn_http11[] = "\x08http/1.1";

/* ---- Errors --------------------------------------------------------------------------------- */

/* Write a formatted message into err (when there is one). */
__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t cap, const char *fmt,
                                                          ...)
{
    if (err == NULL || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/* OpenSSL's reason for the last error of this thread ("PEM routines: no start line"). */
static void ossl_reason(char *buf, size_t cap)
{
    unsigned long first = ERR_peek_error();
    if (first != 0 && ERR_SYSTEM_ERROR(first)) { /* the OS says it best: "No such file..." */
        snprintf(buf, cap, "%s", strerror(ERR_GET_REASON(first)));
        return;
    }
    unsigned long e = ERR_peek_last_error();
    if (e == 0) {
        snprintf(buf, cap, "unknown error");
        return;
    }
    const char *lib = ERR_lib_error_string(e);
    const char *reason = ERR_reason_error_string(e);
    if (reason == NULL)
        snprintf(buf, cap, "error %#lx", e);
    else if (lib == NULL)
        snprintf(buf, cap, "%s", reason);
    else
        snprintf(buf, cap, "%s: %s", lib, reason);
}

/* ---- Connections ---------------------------------------------------------------------------- */

struct tls_gen;
struct tls_conn;

static int client_store_session(struct tls_conn *c, SSL_SESSION *sess);

/* One TLS connection: io->ctx. */
struct tls_conn {
    SSL *ssl;
    int fd;
    struct tls_gen *gen;          /* server side: the configuration it was accepted with */
    struct polis_tls_client *cli; /* client side */
    char *sess_key;               /* client side: where its session is kept, or NULL */
    /* Records OpenSSL produced that the socket did not take yet, oldest first. */
    struct polis_buf out;
    /* Plaintext bytes of the last SSL_write whose record was not wholly sent when writev()
     * returned: not reported as written, so the caller passes them again at the front of its
     * next writev(), which then counts them without encrypting them twice. */
    size_t owed;
    int sys_errno; /* errno of the last failed socket call in the BIO, 0 if none */
    int fail_errno;
    bool failed;
    bool hs_done;
    bool eof;
    bool shut_wanted; /* shutdown() was called: no more writes, SHUT_WR once out is empty */
    bool shut_done;
    char err[256];
};

/* Mark the connection failed with errno e and a reason. Every later call fails alike. */
__attribute__((format(printf, 3, 4))) static void conn_fail(struct tls_conn *c, int e,
                                                            const char *fmt, ...)
{
    if (c->failed)
        return;
    c->failed = true;
    c->fail_errno = e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

/* Send what waits in c->out. Returns 0 once it is empty (then the deferred SHUT_WR goes),
 * POLIS_EAGAIN when the socket is full, POLIS_ESYS on a socket error (c->sys_errno). */
static int flush_out(struct tls_conn *c)
{
    while (polis_buf_len(&c->out) > 0) {
        ssize_t n = send(c->fd, polis_buf_head(&c->out), polis_buf_len(&c->out), MSG_NOSIGNAL);
        if (n > 0) {
            polis_buf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return POLIS_EAGAIN;
        c->sys_errno = n < 0 ? errno : EPIPE;
        return POLIS_ESYS;
    }
    polis_buf_free(&c->out); /* idle connections hold no buffer */
    if (c->shut_wanted && !c->shut_done) {
        shutdown(c->fd, SHUT_WR);
        c->shut_done = true;
    }
    return 0;
}

/* BIO write: straight to the socket while nothing waits, the rest (in order) into c->out. It
 * never asks OpenSSL to retry, so OpenSSL never stops in the middle of a record or a flight:
 * no read has to wait for writability. Returns len, or -1 on a socket error or a full c->out. */
static int bio_write(BIO *b, const char *data, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    size_t done = 0;
    if (polis_buf_len(&c->out) == 0) {
        while (done < (size_t)len) {
            ssize_t n = send(c->fd, data + done, (size_t)len - done, MSG_NOSIGNAL);
            if (n > 0) {
                done += (size_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            c->sys_errno = n < 0 ? errno : EPIPE;
            return -1;
        }
    }
    if (done < (size_t)len && polis_buf_append(&c->out, data + done, (size_t)len - done) < 0) {
        c->sys_errno = ENOBUFS;
        return -1;
    }
    return len;
}

/* BIO read: one recv(). EAGAIN becomes a retry (OpenSSL's WANT_READ): only then does SSL_read
 * stop for lack of bytes, which is what makes a short read() mean "drained". */
static int bio_read(BIO *b, char *buf, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    ssize_t n;
    do
        n = recv(c->fd, buf, (size_t)len, 0);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        BIO_set_retry_read(b);
    else
        c->sys_errno = errno;
    return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void)
{
    int type = BIO_get_new_index();
    if (type < 0)
        return;
    BIO_METHOD *m = BIO_meth_new(type | BIO_TYPE_SOURCE_SINK, "polis socket");
    if (m == NULL)
        return;
    if (!BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
        !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
        BIO_meth_free(m);
        return;
    }
    bio_method = m;
}

/* After an SSL call returned r <= 0: POLIS_EAGAIN when it waits for the peer, POLIS_ECLOSED at
 * the end of the stream, or POLIS_ESYS after marking the connection failed. */
static int ssl_outcome(struct tls_conn *c, int r)
{
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return POLIS_EAGAIN;
    if (e == SSL_ERROR_ZERO_RETURN)
        return POLIS_ECLOSED;
    const char *stage = c->hs_done ? "TLS" : "TLS handshake";
    if (e == SSL_ERROR_SYSCALL) {
        if (c->sys_errno != 0) {
            conn_fail(c, c->sys_errno, "%s: %s", stage, strerror(c->sys_errno));
            return POLIS_ESYS;
        }
        if (c->hs_done) /* end of stream without close_notify: a plain close */
            return POLIS_ECLOSED;
        conn_fail(c, ECONNRESET, "%s: the peer closed the connection", stage);
        return POLIS_ESYS;
    }
    unsigned long le = ERR_peek_last_error();
    if (ERR_GET_LIB(le) == ERR_LIB_SSL &&
        ERR_GET_REASON(le) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        conn_fail(c, ECONNRESET, "%s: the peer closed the connection", stage);
        return POLIS_ESYS;
    }
    char why[160];
    ossl_reason(why, sizeof(why));
    long vr = SSL_get_verify_result(c->ssl);
    if (vr != X509_V_OK)
        conn_fail(c, EPROTO, "%s failed: %s (%s)", stage, why, X509_verify_cert_error_string(vr));
    else
        conn_fail(c, EPROTO, "%s failed: %s", stage, why);
    return POLIS_ESYS;
}

/* Note a completed handshake. From now on OpenSSL may read ahead: only SSL_read reads once the
 * handshake is done (renegotiation is refused), and read() drains everything it reads ahead.
 * During the handshake it must not, because a writev() may drive the handshake, and bytes it
 * pulled from the socket past the handshake would wait in OpenSSL with no edge to announce
 * them. A client's resumed TLS 1.2 session is stored again here (its ticket may be new). */
static void check_handshake(struct tls_conn *c)
{
    if (c->hs_done || !SSL_is_init_finished(c->ssl))
        return;
    c->hs_done = true;
    SSL_set_read_ahead(c->ssl, 1);
    if (c->sess_key != NULL && SSL_session_reused(c->ssl) && SSL_version(c->ssl) < TLS1_3_VERSION) {
        SSL_SESSION *sess = SSL_get1_session(c->ssl);
        if (sess != NULL && !client_store_session(c, sess))
            SSL_SESSION_free(sess);
    }
}

/* Start an SSL call: a clean error queue and no stale socket error. */
static void call_begin(struct tls_conn *c)
{
    ERR_clear_error();
    c->sys_errno = 0;
}

/* Return -1 with the connection's errno. */
static ssize_t fail_ret(struct tls_conn *c)
{
    errno = c->fail_errno;
    return -1;
}

static ssize_t tls_read(struct polis_io *io, void *buf, size_t len)
{
    struct tls_conn *c = io->ctx;
    if (c->failed)
        return fail_ret(c);
    if (c->eof || len == 0)
        return 0;
    if (flush_out(c) == POLIS_ESYS) {
        conn_fail(c, c->sys_errno, "TLS: %s", strerror(c->sys_errno));
        return fail_ret(c);
    }
    /* Until the buffer is full or OpenSSL needs bytes the socket does not have: each SSL_read
     * returns at most one record, and records read ahead must not stay behind. */
    size_t got = 0;
    int rc = 0;
    while (got < len) {
        size_t n = 0;
        call_begin(c);
        int r = SSL_read_ex(c->ssl, (char *)buf + got, len - got, &n);
        check_handshake(c);
        if (r == 1) {
            got += n;
            continue;
        }
        rc = ssl_outcome(c, r);
        break;
    }
    ERR_clear_error();
    /* What the reads produced (handshake flights, alerts, key updates) goes out now. */
    if (!c->failed && flush_out(c) == POLIS_ESYS)
        conn_fail(c, c->sys_errno, "TLS: %s", strerror(c->sys_errno));
    if (rc == POLIS_ECLOSED)
        c->eof = true;
    if (got > 0) /* an end or a failure after data is reported by the next call */
        return (ssize_t)got;
    if (c->failed)
        return fail_ret(c);
    if (c->eof)
        return 0;
    errno = EAGAIN;
    return -1;
}

/* Point *p at up to RECORD_MAX plaintext bytes of iov from offset off, gathered into stage when
 * they span several iovecs. Returns the count. */
static size_t gather(const struct iovec *iov, int iovcnt, size_t off, char *stage, const char **p)
{
    int i = 0;
    while (i < iovcnt && off >= iov[i].iov_len)
        off -= iov[i++].iov_len;
    if (i == iovcnt)
        return 0;
    size_t first = iov[i].iov_len - off;
    if (first >= RECORD_MAX || i == iovcnt - 1) {
        *p = (const char *)iov[i].iov_base + off;
        return first < RECORD_MAX ? first : RECORD_MAX;
    }
    size_t n = 0;
    for (; i < iovcnt && n < RECORD_MAX; i++, off = 0) {
        size_t take = iov[i].iov_len - off;
        if (take > RECORD_MAX - n)
            take = RECORD_MAX - n;
        memcpy(stage + n, (const char *)iov[i].iov_base + off, take);
        n += take;
    }
    *p = stage;
    return n;
}

static ssize_t tls_writev(struct polis_io *io, const struct iovec *iov, int iovcnt)
{
    struct tls_conn *c = io->ctx;
    if (c->failed)
        return fail_ret(c);
    if (c->shut_wanted) {
        errno = EPIPE;
        return -1;
    }
    int rc = flush_out(c);
    if (rc == POLIS_ESYS) {
        conn_fail(c, c->sys_errno, "TLS: %s", strerror(c->sys_errno));
        return fail_ret(c);
    }
    if (rc == POLIS_EAGAIN) {
        errno = EAGAIN;
        return -1;
    }
    size_t total = 0, iov_skip = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (total == 0)
        return 0;
    /* The record of the owed bytes went out with the flush: they count now, as far as the
     * caller offers them again (a stream writer offers what was not taken, in order). */
    if (c->owed > 0) {
        size_t done = c->owed < total ? c->owed : total;
        c->owed -= done;
        if (c->owed > 0 || done == total)
            return (ssize_t)done;
        iov_skip = done;
    }
    if (!c->hs_done) {
        call_begin(c);
        int r = SSL_do_handshake(c->ssl);
        check_handshake(c);
        if (r != 1) {
            rc = ssl_outcome(c, r);
            ERR_clear_error();
            if (!c->failed && flush_out(c) == POLIS_ESYS)
                conn_fail(c, c->sys_errno, "TLS: %s", strerror(c->sys_errno));
            if (c->failed)
                return fail_ret(c);
            if (rc == POLIS_ECLOSED) {
                conn_fail(c, ECONNRESET, "TLS handshake: the peer closed the connection");
                return fail_ret(c);
            }
            if (iov_skip > 0)
                return (ssize_t)iov_skip;
            errno = EAGAIN;
            return -1;
        }
    }
    char stage[RECORD_MAX];
    size_t done = iov_skip;
    while (done < total) {
        const char *p = NULL;
        size_t chunk = gather(iov, iovcnt, done, stage, &p);
        size_t n = 0;
        call_begin(c);
        int r = SSL_write_ex(c->ssl, p, chunk, &n);
        if (r != 1) {
            rc = ssl_outcome(c, r);
            if (rc == POLIS_ECLOSED && !c->failed)
                conn_fail(c, EPIPE, "TLS: the connection was shut down");
            break;
        }
        if (polis_buf_len(&c->out) > 0) { /* its record went only partly */
            c->owed = n;
            break;
        }
        done += n;
    }
    ERR_clear_error();
    if (done > 0)
        return (ssize_t)done;
    if (c->failed)
        return fail_ret(c);
    errno = EAGAIN;
    return -1;
}

static void tls_shutdown(struct polis_io *io)
{
    struct tls_conn *c = io->ctx;
    if (c->shut_wanted)
        return;
    c->shut_wanted = true;
    if (!c->failed && c->hs_done) {
        call_begin(c);
        SSL_shutdown(c->ssl); /* close_notify, into the socket or c->out; reads go on */
        ERR_clear_error();
    }
    if (c->failed) {
        polis_buf_free(&c->out);
        shutdown(c->fd, SHUT_WR);
        c->shut_done = true;
        return;
    }
    flush_out(c); /* SHUT_WR now, or once a later read()/writev() flushed the rest */
}

static const struct polis_io_ops tls_ops = {tls_read, tls_writev, tls_shutdown};

/* A connection over fd around a fresh SSL of ctx. Returns NULL on allocation failure. */
static struct tls_conn *conn_new(SSL_CTX *ctx, int fd)
{
    pthread_once(&bio_once, bio_method_init);
    if (bio_method == NULL)
        return NULL;
    struct tls_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->fd = fd;
    polis_buf_init(&c->out, OUT_CAP);
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL)
        goto free_conn;
    BIO *b = BIO_new(bio_method);
    if (b == NULL)
        goto free_ssl;
    BIO_set_data(b, c);
    SSL_set_bio(c->ssl, b, b);
    SSL_set_app_data(c->ssl, c);
    return c;
free_ssl:
    SSL_free(c->ssl);
free_conn:
    free(c);
    ERR_clear_error();
    return NULL;
}

static struct tls_conn *conn_of(const struct polis_io *io)
{
    return io != NULL && io->ops == &tls_ops ? io->ctx : NULL;
}

int polis__tls_handshake(struct polis_io *io, unsigned *want)
{
    struct tls_conn *c = conn_of(io);
    if (c == NULL)
        return POLIS_EINVAL;
    *want = 0;
    if (!c->failed && !c->hs_done) {
        if (flush_out(c) == POLIS_ESYS) {
            conn_fail(c, c->sys_errno, "TLS handshake: %s", strerror(c->sys_errno));
        } else {
            call_begin(c);
            int r = SSL_do_handshake(c->ssl);
            check_handshake(c);
            if (r != 1 && ssl_outcome(c, r) == POLIS_ECLOSED)
                conn_fail(c, ECONNRESET, "TLS handshake: the peer closed the connection");
            ERR_clear_error();
            if (!c->failed && flush_out(c) == POLIS_ESYS)
                conn_fail(c, c->sys_errno, "TLS handshake: %s", strerror(c->sys_errno));
        }
    }
    if (c->failed)
        return c->fail_errno == EPROTO ? POLIS_EBADMSG : POLIS_ECLOSED;
    if (c->hs_done)
        return 0;
    *want = POLIS_EV_READ | (polis_buf_len(&c->out) > 0 ? POLIS_EV_WRITE : 0);
    return POLIS_EAGAIN;
}

/* ---- Certificates --------------------------------------------------------------------------- */

/* A certificate with its key and chain, as loaded from files. */
struct tls_cert {
    X509 *x509;
    EVP_PKEY *key;
    STACK_OF(X509) * chain;
};

static void cert_clear(struct tls_cert *k)
{
    X509_free(k->x509);
    EVP_PKEY_free(k->key);
    sk_X509_pop_free(k->chain, X509_free);
    memset(k, 0, sizeof(*k));
}

/* Never prompt for a passphrase: encrypted keys are refused. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return 0;
}

/* Load a PEM certificate chain (leaf first) and its key, and check they belong together.
 * Returns 0, POLIS_EINVAL with err naming the file and the reason, or POLIS_ENOMEM. */
static int cert_load(const char *cert_file, const char *key_file, struct tls_cert *k, char *err,
                     size_t cap)
{
    char why[160];
    memset(k, 0, sizeof(*k));
    ERR_clear_error();
    BIO *in = BIO_new_file(cert_file, "r");
    if (in == NULL) {
        ossl_reason(why, sizeof(why));
        set_err(err, cap, "%s: cannot open certificate file: %s", cert_file, why);
        goto fail;
    }
    k->x509 = PEM_read_bio_X509(in, NULL, no_passphrase, NULL);
    if (k->x509 == NULL) {
        ossl_reason(why, sizeof(why));
        set_err(err, cap, "%s: no PEM certificate: %s", cert_file, why);
        BIO_free(in);
        goto fail;
    }
    if ((k->chain = sk_X509_new_null()) == NULL) {
        BIO_free(in);
        goto nomem;
    }
    X509 *x;
    while ((x = PEM_read_bio_X509(in, NULL, no_passphrase, NULL)) != NULL) {
        if (!sk_X509_push(k->chain, x)) {
            X509_free(x);
            BIO_free(in);
            goto nomem;
        }
    }
    unsigned long e = ERR_peek_last_error();
    BIO_free(in);
    if (!(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
        ossl_reason(why, sizeof(why)); /* not just the end of the file */
        set_err(err, cap, "%s: bad certificate in the chain: %s", cert_file, why);
        goto fail;
    }
    ERR_clear_error();
    if ((in = BIO_new_file(key_file, "r")) == NULL) {
        ossl_reason(why, sizeof(why));
        set_err(err, cap, "%s: cannot open key file: %s", key_file, why);
        goto fail;
    }
    k->key = PEM_read_bio_PrivateKey(in, NULL, no_passphrase, NULL);
    BIO_free(in);
    if (k->key == NULL) {
        ossl_reason(why, sizeof(why));
        set_err(err, cap, "%s: no usable PEM private key (encrypted keys are not supported): %s",
                key_file, why);
        goto fail;
    }
    if (X509_check_private_key(k->x509, k->key) != 1) {
        set_err(err, cap, "%s: the key does not match the certificate in %s", key_file, cert_file);
        goto fail;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(k->x509)) < 0)
        polis_warn("TLS certificate %s has expired", cert_file);
    ERR_clear_error();
    return 0;
nomem:
    set_err(err, cap, "%s: out of memory", cert_file);
    cert_clear(k);
    ERR_clear_error();
    return POLIS_ENOMEM;
fail:
    cert_clear(k);
    ERR_clear_error();
    return POLIS_EINVAL;
}

/* Percent-encode what could break a header or the list: bytes outside printable ASCII, ','
 * and '%'. Appends to buf at *pos. Returns false when it does not fit. */
static bool put_escaped(char *buf, size_t cap, size_t *pos, const unsigned char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = s[i];
        bool esc = ch < 0x21 || ch > 0x7e || ch == ',' || ch == '%';
        size_t need = esc ? 3 : 1;
        if (cap - *pos <= need)
            return false;
        if (esc) {
            buf[(*pos)++] = '%';
            buf[(*pos)++] = hex[ch >> 4];
            buf[(*pos)++] = hex[ch & 15];
        } else {
            buf[(*pos)++] = (char)ch;
        }
    }
    buf[*pos] = '\0';
    return true;
}

static bool put_str(char *buf, size_t cap, size_t *pos, const char *s)
{
    size_t n = strlen(s);
    if (cap - *pos <= n)
        return false;
    memcpy(buf + *pos, s, n + 1);
    *pos += n;
    return true;
}

/* ---- Server: certificate choice by SNI ------------------------------------------------------ */

/* A name a certificate answers for: exact ("a.example") or a wildcard, stored as the suffix it
 * requires after one label (".example" for "*.example"). Lowercase. */
struct tls_name {
    char *name;
    size_t cert;
    bool wildcard;
};

/* One configuration of a listener: built by new or reload, shared by the connections accepted
 * with it (refs), freed with the last of them. */
struct tls_gen {
    atomic_int refs;
    SSL_CTX *ctx;
    struct tls_cert *certs;
    size_t num_certs;
    struct tls_name *names;
    size_t num_names;
    struct tls_tickets *tickets;
};

static int add_name(struct tls_gen *g, const unsigned char *s, size_t n, size_t cert)
{
    if (n == 0 || n > 253 || memchr(s, '\0', n) != NULL)
        return 0; /* not a usable DNS name */
    bool wildcard = n > 2 && s[0] == '*' && s[1] == '.';
    if (!wildcard && memchr(s, '*', n) != NULL)
        return 0; /* partial wildcards ("f*.example") are not honoured */
    struct tls_name *names = realloc(g->names, (g->num_names + 1) * sizeof(*names));
    if (names == NULL)
        return POLIS_ENOMEM;
    g->names = names;
    size_t skip = wildcard ? 1 : 0;
    char *copy = malloc(n - skip + 1);
    if (copy == NULL)
        return POLIS_ENOMEM;
    for (size_t i = skip; i < n; i++)
        copy[i - skip] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
    copy[n - skip] = '\0';
    names[g->num_names++] = (struct tls_name){copy, cert, wildcard};
    return 0;
}

/* Register the DNS names of certificate i: its subjectAltName DNS entries, or its subject CN
 * when it has none. */
static int add_cert_names(struct tls_gen *g, size_t i)
{
    X509 *x = g->certs[i].x509;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int rc = 0;
    bool any = false;
    for (int j = 0; gens != NULL && j < sk_GENERAL_NAME_num(gens) && rc == 0; j++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, j);
        if (gn->type != GEN_DNS)
            continue;
        any = true;
        rc = add_name(g, ASN1_STRING_get0_data(gn->d.dNSName),
                      (size_t)ASN1_STRING_length(gn->d.dNSName), i);
    }
    GENERAL_NAMES_free(gens);
    if (rc != 0 || any)
        return rc;
    const X509_NAME *subj = X509_get_subject_name(x);
    int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    if (idx < 0)
        return 0;
    const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
    return add_name(g, ASN1_STRING_get0_data(cn), (size_t)ASN1_STRING_length(cn), i);
}

/* The certificate for an SNI name: exact names first, then wildcards; 0 when none matches. */
static size_t pick_cert(const struct tls_gen *g, const char *sni)
{
    char low[256];
    size_t n = strlen(sni);
    if (n == 0 || n >= sizeof(low))
        return 0;
    for (size_t i = 0; i <= n; i++)
        low[i] = (char)(sni[i] >= 'A' && sni[i] <= 'Z' ? sni[i] + 32 : sni[i]);
    if (low[n - 1] == '.') /* an absolute name */
        low[--n] = '\0';
    for (size_t i = 0; i < g->num_names; i++)
        if (!g->names[i].wildcard && strcmp(g->names[i].name, low) == 0)
            return g->names[i].cert;
    const char *dot = strchr(low, '.');
    if (dot == NULL || dot == low)
        return 0;
    for (size_t i = 0; i < g->num_names; i++)
        if (g->names[i].wildcard && strcmp(g->names[i].name, dot) == 0)
            return g->names[i].cert;
    return 0;
}

/* OpenSSL's servername callback: put the chosen certificate on the connection. The default one
 * (certs[0]) is already there from the context. Every other certificate replaces all of the
 * connection's, so a default of another key type cannot win the signature choice. */
static int sni_cb(SSL *ssl, int *alert, void *arg)
{
    const struct tls_gen *g = arg;
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (sni == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    size_t i = pick_cert(g, sni);
    if (i == 0)
        return SSL_TLSEXT_ERR_OK;
    const struct tls_cert *k = &g->certs[i];
    SSL_certs_clear(ssl);
    if (SSL_use_cert_and_key(ssl, k->x509, k->key, k->chain, 1) != 1) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* ALPN: "http/1.1" when the client offers it; a client offering only other protocols is refused
 * (RFC 7301 no_application_protocol). A client offering none never comes here. */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    for (unsigned int i = 0; i < inlen;) {
        unsigned int n = in[i];
        if (n == 0 || i + 1 + n > inlen)
            break;
        if (n == sizeof(alpn_http11) - 2 && memcmp(in + i + 1, alpn_http11 + 1, n) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* ---- Server: session tickets ---------------------------------------------------------------- */

struct tls_ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
};

/* The ticket keys of one server, kept across reloads: keys[0] seals new tickets, keys[1..]
 * still open older ones. Shared by every thread (lock) and every generation (refs). */
struct tls_tickets {
    atomic_int refs;
    pthread_mutex_t lock;
    struct tls_ticket_key keys[TICKET_KEYS];
    int num_keys;
    uint64_t started_ms; /* when keys[0] became current */
    uint64_t rotate_ms;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Make a new current key. Lock held. Returns false when the random generator failed. */
static bool tickets_rotate(struct tls_tickets *t)
{
    struct tls_ticket_key k;
    if (RAND_bytes(k.name, sizeof(k.name)) != 1 || RAND_bytes(k.aes, sizeof(k.aes)) != 1 ||
        RAND_bytes(k.hmac, sizeof(k.hmac)) != 1)
        return false;
    OPENSSL_cleanse(&t->keys[TICKET_KEYS - 1], sizeof(t->keys[0]));
    memmove(&t->keys[1], &t->keys[0], (TICKET_KEYS - 1) * sizeof(t->keys[0]));
    t->keys[0] = k;
    OPENSSL_cleanse(&k, sizeof(k));
    if (t->num_keys < TICKET_KEYS)
        t->num_keys++;
    t->started_ms = mono_ms();
    return true;
}

static void tickets_unref(struct tls_tickets *t)
{
    if (t == NULL || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&t->lock);
    OPENSSL_cleanse(t->keys, sizeof(t->keys));
    free(t);
}

/* OpenSSL's ticket callback: seal with the current key (rotating it when due), open with any
 * key still kept. Returns 1, 2 (opened with an old key: issue a fresh ticket), 0 (unknown key:
 * full handshake) or -1. */
static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                     EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    const struct tls_gen *g = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    struct tls_tickets *t = g->tickets;
    struct tls_ticket_key k;
    memset(&k, 0, sizeof(k));
    int found = -1;
    pthread_mutex_lock(&t->lock);
    if (mono_ms() - t->started_ms >= t->rotate_ms)
        tickets_rotate(t); /* on failure the current key serves a while longer */
    if (enc) {
        found = 0;
    } else {
        for (int i = 0; i < t->num_keys && found < 0; i++)
            if (memcmp(t->keys[i].name, key_name, sizeof(k.name)) == 0)
                found = i;
    }
    if (found >= 0)
        k = t->keys[found];
    pthread_mutex_unlock(&t->lock);
    if (found < 0)
        return 0;
    int rc = -1;
    const EVP_CIPHER *cipher = EVP_aes_256_cbc();
    if (enc) {
        memcpy(key_name, k.name, sizeof(k.name));
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(cipher)) != 1 ||
            EVP_EncryptInit_ex(cctx, cipher, NULL, k.aes, iv) != 1)
            goto out;
    } else if (EVP_DecryptInit_ex(cctx, cipher, NULL, k.aes, iv) != 1) {
        goto out;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        goto out;
    /* TLS 1.3 clients use a ticket once (RFC 8446 C.4), so every resumption gets a fresh one;
     * a TLS 1.2 ticket is renewed only when an old key opened it. */
    rc = enc || (found == 0 && SSL_version(ssl) < TLS1_3_VERSION) ? 1 : 2;
out:
    OPENSSL_cleanse(&k, sizeof(k));
    return rc;
}

/* ---- Server: generations -------------------------------------------------------------------- */

static void gen_unref(struct tls_gen *g)
{
    if (g == NULL || atomic_fetch_sub(&g->refs, 1) != 1)
        return;
    SSL_CTX_free(g->ctx);
    for (size_t i = 0; i < g->num_certs; i++)
        cert_clear(&g->certs[i]);
    free(g->certs);
    for (size_t i = 0; i < g->num_names; i++)
        free(g->names[i].name);
    free(g->names);
    tickets_unref(g->tickets);
    free(g);
}

/* OpenSSL's version number for ours; 0 for "no bound". Returns false for an unknown value. */
static bool version_of(enum polis_tls_version v, int *out)
{
    switch (v) {
    case POLIS_TLS_DEFAULT:
        *out = 0;
        return true;
    case POLIS_TLS_1_2:
        *out = TLS1_2_VERSION;
        return true;
    case POLIS_TLS_1_3:
        *out = TLS1_3_VERSION;
        return true;
    }
    return false;
}

/* Settings common to server and client contexts. Returns 0 or POLIS_EINVAL (err set). */
static int ctx_common(SSL_CTX *ctx, enum polis_tls_version minv, enum polis_tls_version maxv,
                      const char *ciphers, const char *suites, char *err, size_t cap)
{
    char why[160];
    int lo, hi;
    if (!version_of(minv, &lo) || !version_of(maxv, &hi)) {
        set_err(err, cap, "unsupported TLS version (TLS 1.2 and 1.3 are)");
        return POLIS_EINVAL;
    }
    if (lo == 0)
        lo = TLS1_2_VERSION;
    if (hi != 0 && hi < lo) {
        set_err(err, cap, "the maximum TLS version is below the minimum");
        return POLIS_EINVAL;
    }
    SSL_CTX_set_min_proto_version(ctx, lo);
    SSL_CTX_set_max_proto_version(ctx, hi);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_cipher_list(ctx, ciphers != NULL ? ciphers : DEFAULT_CIPHERS) != 1) {
        ossl_reason(why, sizeof(why));
        set_err(err, cap, "invalid TLS 1.2 cipher list \"%s\": %s",
                ciphers != NULL ? ciphers : DEFAULT_CIPHERS, why);
        return POLIS_EINVAL;
    }
    if (suites != NULL && SSL_CTX_set_ciphersuites(ctx, suites) != 1) {
        ossl_reason(why, sizeof(why));
        set_err(err, cap, "invalid TLS 1.3 cipher suites \"%s\": %s", suites, why);
        return POLIS_EINVAL;
    }
    return 0;
}

/* The session id context: a digest of the client-certificate settings, so that a session (or
 * ticket) is never resumed under a configuration that would not have verified its client. */
static int set_sid_ctx(SSL_CTX *ctx, const struct polis_tls_server_opts *o, char *err, size_t cap)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    int rc = POLIS_ENOMEM;
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        goto out;
    char mode = (char)('0' + (int)o->client_verify);
    EVP_DigestUpdate(md, "polis-tls:", 10);
    EVP_DigestUpdate(md, &mode, 1);
    if (o->client_verify != POLIS_TLS_VERIFY_OFF) {
        FILE *f = fopen(o->client_ca_file, "rb");
        if (f == NULL) {
            set_err(err, cap, "%s: cannot open CA file: %s", o->client_ca_file, strerror(errno));
            rc = POLIS_EINVAL;
            goto out;
        }
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
            EVP_DigestUpdate(md, chunk, n);
        fclose(f);
    }
    if (EVP_DigestFinal_ex(md, digest, &dlen) != 1)
        goto out;
    if (dlen > SSL_MAX_SID_CTX_LENGTH)
        dlen = SSL_MAX_SID_CTX_LENGTH;
    if (SSL_CTX_set_session_id_context(ctx, digest, dlen) == 1)
        rc = 0;
out:
    if (rc == POLIS_ENOMEM)
        set_err(err, cap, "out of memory");
    EVP_MD_CTX_free(md);
    return rc;
}

/* Build a generation from opts. Returns 0 and *out, POLIS_EINVAL or POLIS_ENOMEM (err set). */
static int gen_build(const struct polis_tls_server_opts *o, struct tls_tickets *tickets,
                     struct tls_gen **out, char *err, size_t cap)
{
    char why[160];
    int rc;
    if (o == NULL || o->certs == NULL || o->num_certs == 0) {
        set_err(err, cap, "TLS needs at least one certificate");
        return POLIS_EINVAL;
    }
    for (size_t i = 0; i < o->num_certs; i++) {
        if (o->certs[i].cert_file == NULL || o->certs[i].key_file == NULL) {
            set_err(err, cap, "TLS certificate %zu has no certificate or no key file", i + 1);
            return POLIS_EINVAL;
        }
    }
    if (o->client_verify != POLIS_TLS_VERIFY_OFF && o->client_verify != POLIS_TLS_VERIFY_OPTIONAL &&
        o->client_verify != POLIS_TLS_VERIFY_REQUIRED) {
        set_err(err, cap, "unknown client certificate verification mode");
        return POLIS_EINVAL;
    }
    if (o->client_verify != POLIS_TLS_VERIFY_OFF && o->client_ca_file == NULL) {
        set_err(err, cap, "client certificate verification needs a CA file");
        return POLIS_EINVAL;
    }
    struct tls_gen *g = calloc(1, sizeof(*g));
    if (g == NULL)
        goto nomem;
    atomic_init(&g->refs, 1);
    g->certs = calloc(o->num_certs, sizeof(*g->certs));
    if (g->certs == NULL)
        goto nomem;
    for (size_t i = 0; i < o->num_certs; i++) {
        rc = cert_load(o->certs[i].cert_file, o->certs[i].key_file, &g->certs[i], err, cap);
        if (rc < 0)
            goto fail;
        g->num_certs = i + 1;
        if ((rc = add_cert_names(g, i)) < 0)
            goto nomem;
    }
    ERR_clear_error();
    g->ctx = SSL_CTX_new(TLS_server_method());
    if (g->ctx == NULL)
        goto nomem;
    SSL_CTX_set_app_data(g->ctx, g);
    rc = ctx_common(g->ctx, o->min_version, o->max_version, o->ciphers, o->ciphersuites, err, cap);
    if (rc < 0)
        goto fail;
    SSL_CTX_set_options(g->ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    const struct tls_cert *def = &g->certs[0];
    if (SSL_CTX_use_cert_and_key(g->ctx, def->x509, def->key, def->chain, 1) != 1) {
        ossl_reason(why, sizeof(why));
        set_err(err, cap, "%s: unusable certificate: %s", o->certs[0].cert_file, why);
        rc = POLIS_EINVAL;
        goto fail;
    }
    SSL_CTX_set_tlsext_servername_callback(g->ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(g->ctx, g);
    SSL_CTX_set_alpn_select_cb(g->ctx, alpn_cb, NULL);
    if (o->client_verify != POLIS_TLS_VERIFY_OFF) {
        if (SSL_CTX_load_verify_file(g->ctx, o->client_ca_file) != 1) {
            ossl_reason(why, sizeof(why));
            set_err(err, cap, "%s: cannot load CA certificates: %s", o->client_ca_file, why);
            rc = POLIS_EINVAL;
            goto fail;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->client_ca_file);
        if (names == NULL) {
            ossl_reason(why, sizeof(why));
            set_err(err, cap, "%s: no CA certificate: %s", o->client_ca_file, why);
            rc = POLIS_EINVAL;
            goto fail;
        }
        SSL_CTX_set_client_CA_list(g->ctx, names);
        int mode = SSL_VERIFY_PEER;
        if (o->client_verify == POLIS_TLS_VERIFY_REQUIRED)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(g->ctx, mode, NULL);
    }
    if ((rc = set_sid_ctx(g->ctx, o, err, cap)) < 0)
        goto fail;
    uint32_t timeout = o->session_timeout_s != 0 ? o->session_timeout_s : DEFAULT_SESSION_TIMEOUT_S;
    SSL_CTX_set_timeout(g->ctx, timeout);
    if (o->no_session_cache) {
        SSL_CTX_set_session_cache_mode(g->ctx, SSL_SESS_CACHE_OFF);
    } else {
        SSL_CTX_set_session_cache_mode(g->ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(
            g->ctx,
            (long)(o->session_cache_size != 0 ? o->session_cache_size : DEFAULT_SESSION_CACHE));
    }
    if (o->no_session_tickets) {
        SSL_CTX_set_options(g->ctx, SSL_OP_NO_TICKET);
        if (o->no_session_cache)
            SSL_CTX_set_num_tickets(g->ctx, 0);
    } else {
        SSL_CTX_set_tlsext_ticket_key_evp_cb(g->ctx, ticket_cb);
    }
    atomic_fetch_add(&tickets->refs, 1);
    g->tickets = tickets;
    ERR_clear_error();
    *out = g;
    return 0;
nomem:
    set_err(err, cap, "out of memory");
    rc = POLIS_ENOMEM;
fail:
    gen_unref(g);
    ERR_clear_error();
    return rc;
}

struct polis_tls_server {
    pthread_mutex_t lock;
    struct tls_gen *gen; /* the current configuration (lock) */
    struct tls_tickets *tickets;
};

/* Apply the rotation period of opts to the ticket keys. */
static void tickets_configure(struct tls_tickets *t, const struct polis_tls_server_opts *o)
{
    uint32_t s = o->ticket_key_rotate_s;
    if (s == 0)
        s = o->session_timeout_s != 0 ? o->session_timeout_s : DEFAULT_SESSION_TIMEOUT_S;
    pthread_mutex_lock(&t->lock);
    t->rotate_ms = (uint64_t)s * 1000;
    pthread_mutex_unlock(&t->lock);
}

int polis__tls_server_new(const struct polis_tls_server_opts *opts, struct polis_tls_server **out,
                          char *err, size_t errcap)
{
    set_err(err, errcap, "%s", "");
    struct tls_tickets *t = NULL;
    int rc = POLIS_ENOMEM;
    struct polis_tls_server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL) {
        set_err(err, errcap, "out of memory");
        return POLIS_ENOMEM;
    }
    pthread_mutex_init(&srv->lock, NULL);
    if ((t = calloc(1, sizeof(*t))) == NULL) {
        set_err(err, errcap, "out of memory");
        goto free_srv;
    }
    atomic_init(&t->refs, 1);
    pthread_mutex_init(&t->lock, NULL);
    srv->tickets = t;
    if (!tickets_rotate(t)) {
        set_err(err, errcap, "no random bytes for the session ticket keys");
        goto free_srv;
    }
    if (opts != NULL)
        tickets_configure(t, opts);
    if ((rc = gen_build(opts, t, &srv->gen, err, errcap)) < 0)
        goto free_srv;
    *out = srv;
    return 0;
free_srv:
    polis__tls_server_free(srv);
    return rc;
}

int polis__tls_server_reload(struct polis_tls_server *srv, const struct polis_tls_server_opts *opts,
                             char *err, size_t errcap)
{
    set_err(err, errcap, "%s", "");
    struct tls_gen *g;
    int rc = gen_build(opts, srv->tickets, &g, err, errcap);
    if (rc < 0)
        return rc;
    tickets_configure(srv->tickets, opts);
    pthread_mutex_lock(&srv->lock);
    struct tls_gen *old = srv->gen;
    srv->gen = g;
    pthread_mutex_unlock(&srv->lock);
    gen_unref(old);
    return 0;
}

void polis__tls_server_rotate_ticket_keys(struct polis_tls_server *srv)
{
    pthread_mutex_lock(&srv->tickets->lock);
    tickets_rotate(srv->tickets);
    pthread_mutex_unlock(&srv->tickets->lock);
}

void polis__tls_server_free(struct polis_tls_server *srv)
{
    if (srv == NULL)
        return;
    gen_unref(srv->gen);
    srv->gen = NULL;
    pthread_mutex_destroy(&srv->lock);
    tickets_unref(srv->tickets);
    srv->tickets = NULL;
    free(srv);
}

int polis__tls_accept(struct polis_tls_server *srv, int fd, struct polis_io *io)
{
    pthread_mutex_lock(&srv->lock);
    struct tls_gen *g = srv->gen;
    atomic_fetch_add(&g->refs, 1);
    pthread_mutex_unlock(&srv->lock);
    struct tls_conn *c = conn_new(g->ctx, fd);
    if (c == NULL) {
        gen_unref(g);
        return POLIS_ENOMEM;
    }
    c->gen = g;
    SSL_set_accept_state(c->ssl);
    io->ops = &tls_ops;
    io->fd = fd;
    io->ctx = c;
    return 0;
}

/* ---- Client --------------------------------------------------------------------------------- */

/* A session kept for the next connection to the same upstream under the same name. */
struct tls_sess_entry {
    char *key;
    SSL_SESSION *sess;
    uint64_t used;
};

struct polis_tls_client {
    atomic_int refs;
    SSL_CTX *ctx;
    bool verify;
    bool reuse;
    pthread_mutex_t lock; /* the session store */
    struct tls_sess_entry *sess;
    size_t num_sess, max_sess;
    uint64_t tick;
};

static void client_unref(struct polis_tls_client *cli)
{
    if (cli == NULL || atomic_fetch_sub(&cli->refs, 1) != 1)
        return;
    for (size_t i = 0; i < cli->num_sess; i++) {
        free(cli->sess[i].key);
        SSL_SESSION_free(cli->sess[i].sess);
    }
    free(cli->sess);
    SSL_CTX_free(cli->ctx);
    pthread_mutex_destroy(&cli->lock);
    free(cli);
}

/* Keep a client connection's session under its key, replacing the previous one, or the least
 * recently used entry when the store is full. Returns 1 when it took the reference. Sessions
 * come from OpenSSL's new-session callback (the end of a full TLS 1.2 handshake, each TLS 1.3
 * ticket) and from check_handshake() (a TLS 1.2 resumption, maybe with a renewed ticket,
 * which OpenSSL does not announce). */
static int client_store_session(struct tls_conn *c, SSL_SESSION *sess)
{
    if (c == NULL || c->cli == NULL || c->sess_key == NULL)
        return 0;
    struct polis_tls_client *cli = c->cli;
    int took = 0;
    pthread_mutex_lock(&cli->lock);
    struct tls_sess_entry *e = NULL;
    for (size_t i = 0; i < cli->num_sess && e == NULL; i++)
        if (strcmp(cli->sess[i].key, c->sess_key) == 0)
            e = &cli->sess[i];
    if (e == NULL && cli->num_sess < cli->max_sess) {
        char *key = strdup(c->sess_key);
        if (key != NULL) {
            e = &cli->sess[cli->num_sess++];
            *e = (struct tls_sess_entry){key, NULL, 0};
        }
    } else if (e == NULL && cli->num_sess > 0) {
        e = &cli->sess[0];
        for (size_t i = 1; i < cli->num_sess; i++)
            if (cli->sess[i].used < e->used)
                e = &cli->sess[i];
        char *key = strdup(c->sess_key);
        if (key == NULL) {
            e = NULL;
        } else {
            free(e->key);
            e->key = key;
        }
    }
    if (e != NULL) {
        SSL_SESSION_free(e->sess);
        e->sess = sess;
        e->used = ++cli->tick;
        took = 1;
    }
    pthread_mutex_unlock(&cli->lock);
    return took;
}

static int client_new_session(SSL *ssl, SSL_SESSION *sess)
{
    return client_store_session(SSL_get_app_data(ssl), sess);
}

int polis__tls_client_new(const struct polis_tls_client_opts *opts, struct polis_tls_client **out,
                          char *err, size_t errcap)
{
    char why[160];
    int rc;
    set_err(err, errcap, "%s", "");
    if (opts == NULL) {
        set_err(err, errcap, "no TLS client options");
        return POLIS_EINVAL;
    }
    if ((opts->cert_file == NULL) != (opts->key_file == NULL)) {
        set_err(err, errcap, "a TLS client certificate needs both a certificate and a key file");
        return POLIS_EINVAL;
    }
    struct polis_tls_client *cli = calloc(1, sizeof(*cli));
    if (cli == NULL)
        goto nomem_early;
    atomic_init(&cli->refs, 1);
    pthread_mutex_init(&cli->lock, NULL);
    cli->verify = !opts->insecure_skip_verify;
    cli->reuse = !opts->no_session_reuse;
    cli->max_sess =
        opts->session_cache_size != 0 ? opts->session_cache_size : DEFAULT_CLIENT_SESSIONS;
    if (cli->reuse && (cli->sess = calloc(cli->max_sess, sizeof(*cli->sess))) == NULL)
        goto nomem;
    ERR_clear_error();
    cli->ctx = SSL_CTX_new(TLS_client_method());
    if (cli->ctx == NULL)
        goto nomem;
    SSL_CTX_set_app_data(cli->ctx, cli);
    rc = ctx_common(cli->ctx, opts->min_version, opts->max_version, opts->ciphers,
                    opts->ciphersuites, err, errcap);
    if (rc < 0)
        goto fail;
    if (cli->verify) {
        SSL_CTX_set_verify(cli->ctx, SSL_VERIFY_PEER, NULL);
        int ok = opts->ca_file != NULL ? SSL_CTX_load_verify_file(cli->ctx, opts->ca_file)
                                       : SSL_CTX_set_default_verify_paths(cli->ctx);
        if (ok != 1) {
            ossl_reason(why, sizeof(why));
            set_err(err, errcap, "%s: cannot load CA certificates: %s",
                    opts->ca_file != NULL ? opts->ca_file : "the system store", why);
            rc = POLIS_EINVAL;
            goto fail;
        }
    } else {
        SSL_CTX_set_verify(cli->ctx, SSL_VERIFY_NONE, NULL);
    }
    if (opts->cert_file != NULL) {
        struct tls_cert k;
        rc = cert_load(opts->cert_file, opts->key_file, &k, err, errcap);
        if (rc < 0)
            goto fail;
        int ok = SSL_CTX_use_cert_and_key(cli->ctx, k.x509, k.key, k.chain, 1);
        cert_clear(&k);
        if (ok != 1) {
            ossl_reason(why, sizeof(why));
            set_err(err, errcap, "%s: unusable certificate: %s", opts->cert_file, why);
            rc = POLIS_EINVAL;
            goto fail;
        }
    }
    if (!opts->no_alpn &&
        SSL_CTX_set_alpn_protos(cli->ctx, alpn_http11, sizeof(alpn_http11) - 1) != 0)
        goto nomem;
    if (cli->reuse) {
        SSL_CTX_set_session_cache_mode(cli->ctx,
                                       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(cli->ctx, client_new_session);
    } else {
        SSL_CTX_set_session_cache_mode(cli->ctx, SSL_SESS_CACHE_OFF);
    }
    ERR_clear_error();
    *out = cli;
    return 0;
nomem:
    set_err(err, errcap, "out of memory");
    rc = POLIS_ENOMEM;
fail:
    client_unref(cli);
    ERR_clear_error();
    return rc;
nomem_early:
    set_err(err, errcap, "out of memory");
    return POLIS_ENOMEM;
}

void polis__tls_client_free(struct polis_tls_client *cli)
{
    client_unref(cli);
}

/* True for an IPv4 or IPv6 literal. */
static bool is_ip_literal(const char *s)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1;
}

int polis__tls_connect(struct polis_tls_client *cli, int fd, const char *server_name,
                       const char *session_key, struct polis_io *io)
{
    if (server_name == NULL && cli->verify)
        return POLIS_EINVAL;
    struct tls_conn *c = conn_new(cli->ctx, fd);
    if (c == NULL)
        return POLIS_ENOMEM;
    SSL *ssl = c->ssl;
    SSL_set_connect_state(ssl);
    if (server_name != NULL) {
        bool ip = is_ip_literal(server_name);
        if (!ip && SSL_set_tlsext_host_name(ssl, server_name) != 1)
            goto fail;
        if (cli->verify) {
            X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
            X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, server_name)
                        : X509_VERIFY_PARAM_set1_host(param, server_name, 0);
            if (ok != 1)
                goto fail;
        }
    }
    if (cli->reuse && session_key != NULL) {
        const char *name = server_name != NULL ? server_name : "";
        size_t n = strlen(session_key) + 1 + strlen(name) + 1;
        if ((c->sess_key = malloc(n)) == NULL)
            goto fail;
        snprintf(c->sess_key, n, "%s\n%s", session_key, name);
        SSL_SESSION *sess = NULL;
        pthread_mutex_lock(&cli->lock);
        for (size_t i = 0; i < cli->num_sess; i++) {
            struct tls_sess_entry *e = &cli->sess[i];
            if (strcmp(e->key, c->sess_key) == 0 && e->sess != NULL) {
                if (SSL_SESSION_is_resumable(e->sess) && SSL_SESSION_up_ref(e->sess) == 1) {
                    sess = e->sess;
                    e->used = ++cli->tick;
                }
                break;
            }
        }
        pthread_mutex_unlock(&cli->lock);
        if (sess != NULL) {
            SSL_set_session(ssl, sess); /* a failure only costs the resumption */
            SSL_SESSION_free(sess);
        }
    }
    atomic_fetch_add(&cli->refs, 1);
    c->cli = cli;
    ERR_clear_error();
    io->ops = &tls_ops;
    io->fd = fd;
    io->ctx = c;
    return 0;
fail:
    SSL_free(c->ssl);
    free(c->sess_key);
    free(c);
    ERR_clear_error();
    return POLIS_ENOMEM;
}

/* ---- Connection queries --------------------------------------------------------------------- */

void polis__tls_io_free(struct polis_io *io)
{
    struct tls_conn *c = conn_of(io);
    if (c == NULL)
        return;
    SSL_free(c->ssl); /* before its context's owner goes */
    c->ssl = NULL;
    polis_buf_free(&c->out);
    gen_unref(c->gen);
    client_unref(c->cli);
    free(c->sess_key);
    free(c);
    io->ctx = NULL;
}

bool polis__tls_is_tls(const struct polis_io *io)
{
    return conn_of(io) != NULL;
}

bool polis__tls_handshake_done(const struct polis_io *io)
{
    const struct tls_conn *c = conn_of(io);
    return c != NULL && c->hs_done;
}

const char *polis__tls_io_error(const struct polis_io *io)
{
    const struct tls_conn *c = conn_of(io);
    return c != NULL ? c->err : "";
}

/* The peer's certificate when it was verified, else NULL. */
static X509 *verified_peer(const struct polis_io *io)
{
    const struct tls_conn *c = conn_of(io);
    if (c == NULL || !c->hs_done)
        return NULL;
    X509 *x = SSL_get0_peer_certificate(c->ssl);
    if (x == NULL || SSL_get_verify_result(c->ssl) != X509_V_OK)
        return NULL;
    if ((SSL_get_verify_mode(c->ssl) & SSL_VERIFY_PEER) == 0)
        return NULL; /* nothing checked it */
    return x;
}

int polis__tls_peer_subject(const struct polis_io *io, char *buf, size_t cap)
{
    if (cap > 0)
        buf[0] = '\0';
    X509 *x = verified_peer(io);
    if (x == NULL)
        return POLIS_ENOTFOUND;
    BIO *m = BIO_new(BIO_s_mem());
    if (m == NULL)
        return POLIS_ENOMEM;
    int rc = POLIS_ETOOBIG;
    if (X509_NAME_print_ex(m, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0) {
        char *p;
        long n = BIO_get_mem_data(m, &p);
        if (n >= 0 && (size_t)n < cap) {
            memcpy(buf, p, (size_t)n);
            buf[n] = '\0';
            rc = 0;
        }
    } else {
        rc = POLIS_ENOMEM;
    }
    BIO_free(m);
    ERR_clear_error();
    return rc;
}

int polis__tls_peer_san(const struct polis_io *io, char *buf, size_t cap)
{
    if (cap > 0)
        buf[0] = '\0';
    X509 *x = verified_peer(io);
    if (x == NULL)
        return POLIS_ENOTFOUND;
    if (cap == 0)
        return POLIS_ETOOBIG;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    size_t pos = 0;
    bool ok = true;
    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens) && ok; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        const char *prefix;
        const ASN1_STRING *s;
        switch (gn->type) {
        case GEN_DNS:
            prefix = "DNS:";
            s = gn->d.dNSName;
            break;
        case GEN_URI:
            prefix = "URI:";
            s = gn->d.uniformResourceIdentifier;
            break;
        case GEN_EMAIL:
            prefix = "email:";
            s = gn->d.rfc822Name;
            break;
        case GEN_IPADD:
            prefix = "IP:";
            s = gn->d.iPAddress;
            break;
        default:
            continue;
        }
        if (pos > 0)
            ok = put_str(buf, cap, &pos, ",");
        ok = ok && put_str(buf, cap, &pos, prefix);
        if (!ok)
            break;
        const unsigned char *d = ASN1_STRING_get0_data(s);
        int len = ASN1_STRING_length(s);
        if (gn->type == GEN_IPADD) {
            char text[INET6_ADDRSTRLEN];
            int af = len == 4 ? AF_INET : len == 16 ? AF_INET6 : 0;
            if (af == 0 || inet_ntop(af, d, text, sizeof(text)) == NULL)
                ok = put_str(buf, cap, &pos, "?");
            else
                ok = put_str(buf, cap, &pos, text);
        } else {
            ok = put_escaped(buf, cap, &pos, d, len > 0 ? (size_t)len : 0);
        }
    }
    GENERAL_NAMES_free(gens);
    if (!ok) {
        buf[0] = '\0';
        return POLIS_ETOOBIG;
    }
    return 0;
}

struct polis_str polis__tls_alpn(const struct polis_io *io)
{
    const struct tls_conn *c = conn_of(io);
    const unsigned char *p = NULL;
    unsigned int n = 0;
    if (c != NULL)
        SSL_get0_alpn_selected(c->ssl, &p, &n);
    return p != NULL ? (struct polis_str){(const char *)p, n} : (struct polis_str){"", 0};
}

const char *polis__tls_version(const struct polis_io *io)
{
    const struct tls_conn *c = conn_of(io);
    return c != NULL && c->hs_done ? SSL_get_version(c->ssl) : "";
}

const char *polis__tls_cipher(const struct polis_io *io)
{
    const struct tls_conn *c = conn_of(io);
    const char *name = c != NULL && c->hs_done ? SSL_get_cipher_name(c->ssl) : NULL;
    return name != NULL ? name : "";
}

const char *polis__tls_server_name(const struct polis_io *io)
{
    const struct tls_conn *c = conn_of(io);
    return c != NULL && c->gen != NULL ? SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name)
                                       : NULL;
}

bool polis__tls_resumed(const struct polis_io *io)
{
    const struct tls_conn *c = conn_of(io);
    return c != NULL && c->hs_done && SSL_session_reused(c->ssl) == 1;
}

struct ssl_st *polis__tls_ssl(const struct polis_io *io)
{
    const struct tls_conn *c = conn_of(io);
    return c != NULL ? c->ssl : NULL;
}
