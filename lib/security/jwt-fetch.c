/* jwt-fetch.c: a small blocking HTTPS GET for JWK sets, on OpenSSL, bounded in time and size,
 * run by the JWT verifier's refresher thread (see jwt-internal.h). */
#include "security/jwt-internal.h"

#include "http/blocking.h"

#include <polis/http.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- URLs ------------------------------------------------------------------------------------ */

void polis__jwt_url_free(struct polis_jwt_url *u)
{
    free(u->host);
    free(u->hostport);
    free(u->target);
    *u = (struct polis_jwt_url){0};
}

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

int polis__jwt_url_parse(const char *url, struct polis_jwt_url *u)
{
    *u = (struct polis_jwt_url){0};
    if (url == NULL || strncasecmp(url, "https://", 8) != 0)
        return POLIS_EINVAL;
    const char *a = url + 8, *p = a;
    for (const char *c = url; *c; c++)
        if ((unsigned char)*c <= 0x20 || *c == 0x7f || *c == '#')
            return POLIS_EINVAL;
    while (*p && *p != '/' && *p != '?')
        p++;
    const char *hs = a, *he, *port = NULL;
    if (*a == '[') {
        he = memchr(a, ']', (size_t)(p - a));
        if (he == NULL)
            return POLIS_EINVAL;
        hs = a + 1;
        if (he + 1 < p) {
            if (he[1] != ':')
                return POLIS_EINVAL;
            port = he + 2;
        }
    } else {
        he = memchr(a, ':', (size_t)(p - a));
        if (he != NULL)
            port = he + 1;
        else
            he = p;
        for (const char *c = hs; c < he; c++)
            if (!host_char(*c))
                return POLIS_EINVAL; /* also refuses userinfo ('@') */
    }
    if (he == hs)
        return POLIS_EINVAL;
    if (port != NULL) {
        size_t pl = (size_t)(p - port);
        unsigned long v = 0;
        if (pl == 0 || pl > 5)
            return POLIS_EINVAL;
        for (size_t i = 0; i < pl; i++) {
            if (port[i] < '0' || port[i] > '9')
                return POLIS_EINVAL;
            v = v * 10 + (unsigned long)(port[i] - '0');
        }
        if (v == 0 || v > 65535)
            return POLIS_EINVAL;
        snprintf(u->port, sizeof(u->port), "%lu", v);
    } else {
        memcpy(u->port, "443", 4);
    }
    u->host = strndup(hs, (size_t)(he - hs));
    u->hostport = strndup(a, (size_t)(p - a));
    u->target = *p == '/' ? strdup(p) : NULL;
    if (*p != '/' && u->host != NULL) {
        /* "https://host?q" -> "/?q" */
        size_t tl = strlen(p) + 2;
        u->target = malloc(tl);
        if (u->target != NULL)
            snprintf(u->target, tl, "/%s", p);
    }
    if (u->host == NULL || u->hostport == NULL || u->target == NULL) {
        polis__jwt_url_free(u);
        return POLIS_ENOMEM;
    }
    unsigned char bin[16];
    u->ip = inet_pton(AF_INET, u->host, bin) == 1 || inet_pton(AF_INET6, u->host, bin) == 1;
    if (*a == '[' && !u->ip) {
        polis__jwt_url_free(u);
        return POLIS_EINVAL;
    }
    return 0;
}

/* ---- TLS ------------------------------------------------------------------------------------- */

SSL_CTX *polis__jwt_tls_ctx(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "TLS context: out of memory");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int ok = ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                             : SSL_CTX_set_default_verify_paths(ctx);
    if (!ok) {
        unsigned long e = ERR_get_error();
        char buf[128];
        ERR_error_string_n(e, buf, sizeof(buf));
        snprintf(err, errlen, "CA certificates %s: %s", ca_file ? ca_file : "(system)", buf);
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Wait for events on fd until the deadline, in slices of at most 100 ms so that *stop is seen
 * soon. Returns 0, POLIS_ETIMEDOUT (deadline or stop) or POLIS_ESYS. */
static int wait_fd(int fd, short events, uint64_t deadline, const atomic_bool *stop)
{
    for (;;) {
        if (stop != NULL && atomic_load_explicit(stop, memory_order_relaxed))
            return POLIS_ETIMEDOUT;
        uint64_t now = polis__mono_ms();
        if (now >= deadline)
            return POLIS_ETIMEDOUT;
        uint64_t left = deadline - now;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left > 100 ? 100 : (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return POLIS_ESYS;
    }
}

/* Connect to one of the addresses of u by the deadline. Returns 0 and *out (non-blocking), or
 * POLIS_ENOTFOUND / POLIS_ESYS / POLIS_ETIMEDOUT. */
static int connect_any(const struct polis_jwt_url *u, uint64_t deadline, const atomic_bool *stop,
                       int *out)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
    struct addrinfo *res = NULL;
    if (u->ip)
        hints.ai_flags = AI_NUMERICHOST;
    int g = getaddrinfo(u->host, u->port, &hints, &res);
    if (g != 0)
        return g == EAI_SYSTEM ? POLIS_ESYS : POLIS_ENOTFOUND;
    int rc = POLIS_ESYS;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            if (errno != EINPROGRESS) {
                close(fd);
                continue;
            }
            rc = wait_fd(fd, POLLOUT, deadline, stop);
            int e = 0;
            socklen_t el = sizeof(e);
            if (rc == 0 && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0 || e != 0))
                rc = POLIS_ESYS;
            if (rc < 0) {
                close(fd);
                if (rc == POLIS_ETIMEDOUT)
                    break;
                continue;
            }
        }
        *out = fd;
        freeaddrinfo(res);
        return 0;
    }
    freeaddrinfo(res);
    return rc;
}

/* After an SSL call returned ret <= 0: wait for what it wants. Returns 0 to retry, or an
 * error (POLIS_ECLOSED for a clean close_notify, POLIS_ESYS for TLS failures). */
static int tls_wait(SSL *ssl, int fd, int ret, uint64_t deadline, const atomic_bool *stop)
{
    switch (SSL_get_error(ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        return wait_fd(fd, POLLIN, deadline, stop);
    case SSL_ERROR_WANT_WRITE:
        return wait_fd(fd, POLLOUT, deadline, stop);
    case SSL_ERROR_ZERO_RETURN:
        return POLIS_ECLOSED;
    default:
        return POLIS_ESYS;
    }
}

/* Log why a TLS step failed (the OpenSSL error queue, or the certificate verdict). */
static void log_tls(const struct polis_jwt_url *u, SSL *ssl, const char *step)
{
    long vr = SSL_get_verify_result(ssl);
    unsigned long e = ERR_peek_last_error();
    char buf[160] = "";
    if (e != 0)
        ERR_error_string_n(e, buf, sizeof(buf));
    polis_warn("jwks %s:%s: TLS %s failed: %s%s%s", u->host, u->port, step,
               vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "",
               vr != X509_V_OK ? "; " : "", buf);
    ERR_clear_error();
}

/* How much of the answer in raw is complete: the head is parsed into m once, then the body is
 * decoded into body. Returns 1 when the whole body is in body, 0 when more bytes are needed, or
 * an error. eof: the server closed cleanly. */
struct answer {
    struct polis_h1_msg m;
    struct polis_h1_header hdrs[64];
    size_t scan, head_len, fed; /* fed: raw bytes given to the body decoder */
    bool head;
    struct polis_h1_chunked ch;
};

static int answer_progress(struct answer *a, struct polis_buf *raw, struct polis_buf *body,
                           size_t max_body, bool eof)
{
    const char *p = polis_buf_head(raw);
    size_t n = polis_buf_len(raw);
    if (!a->head) {
        static const struct polis_h1_limits lim = {0, 16384, 64};
        a->m.headers = a->hdrs;
        int rc = polis_h1_parse_response(p, n, &a->scan, &a->m, 64, &lim, false, &a->head_len);
        if (rc == POLIS_EAGAIN)
            return eof ? POLIS_EBADMSG : 0;
        if (rc < 0)
            return POLIS_EBADMSG;
        if (a->m.status != 200)
            return POLIS_EBADMSG;
        a->head = true;
        a->fed = a->head_len;
        polis_h1_chunked_init(&a->ch, max_body);
        if (a->m.body == POLIS_BODY_LENGTH && a->m.content_length > max_body)
            return POLIS_ETOOBIG;
    }
    switch (a->m.body) {
    case POLIS_BODY_NONE:
        return 1;
    case POLIS_BODY_LENGTH: {
        size_t want = (size_t)a->m.content_length;
        if (n - a->head_len >= want) {
            polis_buf_consume(raw, a->head_len);
            raw->end = raw->start + want;
            *body = *raw;
            *raw = (struct polis_buf){0};
            return 1;
        }
        return eof ? POLIS_EBADMSG : 0;
    }
    case POLIS_BODY_CHUNKED: {
        size_t used = 0, outl = 0;
        char *chunk = malloc(n - a->fed + 1);
        if (chunk == NULL)
            return POLIS_ENOMEM;
        int rc = polis_h1_chunked_feed(&a->ch, p + a->fed, n - a->fed, &used, chunk, &outl);
        a->fed += used;
        if (rc >= 0 && polis_buf_append(body, chunk, outl) < 0)
            rc = POLIS_ETOOBIG;
        free(chunk);
        if (rc == POLIS_EBODYTOOBIG || rc == POLIS_ETOOBIG)
            return POLIS_ETOOBIG;
        if (rc < 0)
            return POLIS_EBADMSG;
        if (rc == 1)
            return 1;
        return eof ? POLIS_EBADMSG : 0;
    }
    case POLIS_BODY_CLOSE:
    default:
        if (n - a->head_len > max_body)
            return POLIS_ETOOBIG;
        if (!eof)
            return 0;
        polis_buf_consume(raw, a->head_len);
        *body = *raw;
        *raw = (struct polis_buf){0};
        return 1;
    }
}

int polis__jwt_https_get(SSL_CTX *ctx, const struct polis_jwt_url *u, uint64_t timeout_ms,
                         const atomic_bool *stop, size_t max_body, struct polis_buf *body)
{
    uint64_t deadline = polis__mono_ms() + timeout_ms;
    int fd = -1, rc;
    SSL *ssl = NULL;
    struct polis_buf raw, out;
    struct answer *a = calloc(1, sizeof(*a));
    polis_buf_init(&raw, max_body + 4 * 16384);
    polis_buf_init(&out, max_body);
    /* A write to a closed socket must not kill the process: SIGPIPE is blocked in this thread
     * while it runs, and a pending one is taken back before unblocking. */
    sigset_t pipe_set, old_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
    if (a == NULL) {
        rc = POLIS_ENOMEM;
        goto out;
    }
    if ((rc = connect_any(u, deadline, stop, &fd)) < 0) {
        polis_warn("jwks %s:%s: connect failed: %s", u->host, u->port, polis_strerror(rc));
        goto out;
    }
    rc = POLIS_ENOMEM;
    if ((ssl = SSL_new(ctx)) == NULL || !SSL_set_fd(ssl, fd))
        goto out;
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (u->ip) {
        if (!X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), u->host))
            goto out;
    } else if (!SSL_set_tlsext_host_name(ssl, u->host) || !SSL_set1_host(ssl, u->host)) {
        goto out;
    }
    for (;;) {
        int r = SSL_connect(ssl);
        if (r == 1)
            break;
        if ((rc = tls_wait(ssl, fd, r, deadline, stop)) < 0) {
            if (rc != POLIS_ETIMEDOUT)
                log_tls(u, ssl, "handshake");
            rc = rc == POLIS_ETIMEDOUT ? rc : POLIS_ESYS;
            goto out;
        }
    }
    char req[2048];
    int rl = snprintf(req, sizeof(req),
                      "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: polis-jwks\r\n"
                      "Accept: application/jwk-set+json, application/json\r\n"
                      "Connection: close\r\n\r\n",
                      u->target, u->hostport);
    if (rl < 0 || (size_t)rl >= sizeof(req)) {
        rc = POLIS_EINVAL;
        goto out;
    }
    for (int off = 0; off < rl;) {
        int r = SSL_write(ssl, req + off, rl - off);
        if (r > 0) {
            off += r;
            continue;
        }
        if ((rc = tls_wait(ssl, fd, r, deadline, stop)) < 0) {
            rc = rc == POLIS_ETIMEDOUT ? rc : POLIS_ESYS;
            goto out;
        }
    }
    for (;;) {
        if ((rc = polis_buf_reserve(&raw, 16384)) < 0) {
            /* Full: the answer is too large unless what is there completes it. */
            rc = answer_progress(a, &raw, &out, max_body, false);
            if (rc == 1)
                break;
            rc = rc < 0 ? rc : POLIS_ETOOBIG;
            goto out;
        }
        int r = SSL_read(ssl, raw.data + raw.end, (int)(raw.size - raw.end));
        bool eof = false;
        if (r > 0) {
            raw.end += (size_t)r;
        } else {
            rc = tls_wait(ssl, fd, r, deadline, stop);
            if (rc == POLIS_ECLOSED) {
                eof = true;
            } else if (rc < 0) {
                if (rc != POLIS_ETIMEDOUT)
                    log_tls(u, ssl, "read");
                /* An unexpected EOF (no close_notify) may be a truncation: refused. */
                rc = rc == POLIS_ETIMEDOUT ? rc : POLIS_EBADMSG;
                goto out;
            } else {
                continue;
            }
        }
        rc = answer_progress(a, &raw, &out, max_body, eof);
        if (rc == 1)
            break;
        if (rc < 0)
            goto out;
    }
    polis_buf_free(body);
    *body = out;
    out = (struct polis_buf){0};
    rc = 0;
out:
    if (ssl != NULL) {
        if (rc == 0)
            SSL_shutdown(ssl); /* best effort: send our close_notify */
        SSL_free(ssl);
    }
    if (fd >= 0)
        close(fd);
    ERR_clear_error();
    free(a);
    polis_buf_free(&raw);
    polis_buf_free(&out);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_set, NULL);
    return rc;
}
