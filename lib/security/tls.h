/* tls.h: TLS on OpenSSL 3 as an I/O layer (struct polis_io_ops) under the HTTP code: server
 * contexts for listeners (SNI, ALPN, resumption, client certificates, reload) and client
 * contexts for upstream connections (verification, SNI, client certificates, session reuse). */
#ifndef POLIS_SECURITY_TLS_H
#define POLIS_SECURITY_TLS_H

#include <polis/core.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ssl_st; /* OpenSSL's SSL */

/* Protocol versions. 0 means the default: at least TLS 1.2, at most the newest (TLS 1.3). */
enum polis_tls_version {
    POLIS_TLS_DEFAULT = 0,
    POLIS_TLS_1_2 = 12,
    POLIS_TLS_1_3 = 13,
};

/* Client certificate checking on a listener. */
enum polis_tls_verify {
    POLIS_TLS_VERIFY_OFF = 0,  /* no certificate is asked for */
    POLIS_TLS_VERIFY_OPTIONAL, /* asked for; a client may send none, but one it sends must verify */
    POLIS_TLS_VERIFY_REQUIRED, /* a certificate that verifies against client_ca_file is required */
};

/* A certificate (PEM: the leaf first, then its intermediates) and its private key (PEM,
 * unencrypted). */
struct polis_tls_cert {
    const char *cert_file;
    const char *key_file;
};

/* How a listener terminates TLS. Zero-initialised fields take the default given. The strings
 * are read during the call only. */
struct polis_tls_server_opts {
    /* At least one. A client's SNI picks the certificate whose subjectAltName DNS names (the
     * subject CN when there are none) match it: exact names first, then wildcards ("*.x.org"
     * matches one whole leftmost label), the first in this order on ties. No SNI, or no match:
     * certs[0]. */
    const struct polis_tls_cert *certs;
    size_t num_certs;
    enum polis_tls_version min_version; /* default TLS 1.2 */
    enum polis_tls_version max_version; /* default TLS 1.3 */
    const char *ciphers;      /* TLS 1.2 cipher list; default ECDHE with AES-GCM or ChaCha20 */
    const char *ciphersuites; /* TLS 1.3 suites; default OpenSSL's */
    enum polis_tls_verify client_verify;
    const char *client_ca_file;   /* required unless client_verify is OFF */
    uint32_t session_timeout_s;   /* lifetime of a resumable session; default 3600 */
    size_t session_cache_size;    /* sessions kept by the server cache; default 20000 */
    bool no_session_tickets;      /* stateful resumption only (tickets are on by default) */
    bool no_session_cache;        /* no server-side session cache */
    uint32_t ticket_key_rotate_s; /* a new ticket key this often; default session_timeout_s */
};

/* A listener's TLS state, shared by every worker thread (accept and reload are thread-safe). */
struct polis_tls_server;

/* Build a server from opts: loads every file, checks each key against its certificate.
 * Returns 0 and *out, or POLIS_EINVAL (bad option or file: err says which file and OpenSSL's
 * reason) or POLIS_ENOMEM. err (may be NULL) receives a NUL-terminated message on failure. */
int polis__tls_server_new(const struct polis_tls_server_opts *opts, struct polis_tls_server **out,
                          char *err, size_t errcap);

/* Build a new configuration from opts and swap it in atomically: connections accepted from
 * now on use it, connections accepted before keep theirs to the end. Session ticket keys are
 * kept, so tickets issued before resume after (when the client-certificate settings did not
 * change). On failure nothing changes and the return and err are those of
 * polis__tls_server_new(). Any thread. */
int polis__tls_server_reload(struct polis_tls_server *srv, const struct polis_tls_server_opts *opts,
                             char *err, size_t errcap);

/* Start a new ticket key; tickets under the two previous keys still resume (and are replaced
 * by fresh ones), older ones do not. Keys also rotate on their own every ticket_key_rotate_s.
 * Any thread. */
void polis__tls_server_rotate_ticket_keys(struct polis_tls_server *srv);

/* Drop the caller's reference. Connections already accepted keep what they use; the memory
 * goes with the last of them. NULL is ignored. */
void polis__tls_server_free(struct polis_tls_server *srv);

/* Make io a TLS server connection over fd, an accepted non-blocking socket, with the current
 * configuration. Nothing is sent yet: the handshake runs inside the first read() and writev()
 * calls (see below). The caller keeps fd (closes it after polis__tls_io_free()). Returns 0, or
 * POLIS_ENOMEM (io untouched). Any thread. */
int polis__tls_accept(struct polis_tls_server *srv, int fd, struct polis_io *io);

/* How the gateway connects to TLS upstreams. Zero-initialised fields take the default given. */
struct polis_tls_client_opts {
    const char *ca_file; /* trusted CAs (PEM); NULL: the system's store */
    /* Skip certificate and name verification (test setups only: it gives up authentication). */
    bool insecure_skip_verify;
    const char *cert_file; /* a client certificate for mTLS (PEM, leaf then chain), optional */
    const char *key_file;  /* its key, required with cert_file */
    enum polis_tls_version min_version; /* default TLS 1.2 */
    enum polis_tls_version max_version; /* default TLS 1.3 */
    const char *ciphers;
    const char *ciphersuites;
    bool no_alpn;              /* do not offer "http/1.1" by ALPN */
    size_t session_cache_size; /* upstream sessions kept for reuse; default 1024 */
    bool no_session_reuse;     /* never resume (session_key is ignored) */
};

/* The TLS settings of one upstream cluster, shared by every worker thread. */
struct polis_tls_client;

/* Returns 0 and *out, or POLIS_EINVAL (err says which file and why) or POLIS_ENOMEM. */
int polis__tls_client_new(const struct polis_tls_client_opts *opts, struct polis_tls_client **out,
                          char *err, size_t errcap);
/* Drop the caller's reference; connections keep theirs. NULL is ignored. */
void polis__tls_client_free(struct polis_tls_client *cli);

/* Make io a TLS client connection over fd, a non-blocking socket connected (or connecting) to
 * the upstream. server_name (a DNS name or an IP literal) is sent as SNI (not for an IP) and
 * the certificate must match it; it may be NULL only with insecure_skip_verify. session_key
 * (e.g. "10.0.0.7:8443"; NULL: no reuse) names where the session is kept for the next
 * connection; it is combined with server_name, so a session is never resumed under another
 * name. The handshake runs inside the first writev() and read() calls. The caller keeps fd.
 * Returns 0, POLIS_EINVAL (no server_name while verifying) or POLIS_ENOMEM. Any thread. */
int polis__tls_connect(struct polis_tls_client *cli, int fd, const char *server_name,
                       const char *session_key, struct polis_io *io);

/* ---- Connections ----------------------------------------------------------------------------
 *
 * The ops of a TLS io follow struct polis_io_ops, with these guarantees for edge-triggered
 * callers (docs/internals/tls.md explains them):
 *  - read() returns fewer bytes than asked only when the socket said EAGAIN (or the stream
 *    ended or failed): no decrypted or undecrypted byte stays inside OpenSSL after a short
 *    read, so "short read = drained, wait for the next edge" holds.
 *  - writev() returns the plaintext bytes whose records the kernel took entirely. A record
 *    that went only partly is not counted yet (its rest waits in the layer), so the caller,
 *    which still holds those bytes, calls writev() again: after EAGAIN, like any socket
 *    retry. As on any stream, the bytes not taken must be offered again, in order (more may
 *    follow, fewer may be offered); the layer counts them without encrypting them twice.
 *    Hence nothing is left in the layer once all the caller's bytes were reported written.
 *    writev() with no bytes flushes what the layer holds: 0 when all went, else -1/EAGAIN.
 *  - The handshake runs inside read() and writev(), which return -1/EAGAIN until it is done.
 *    What it sends never blocks it: records the socket does not take wait in the layer and go
 *    out on the next read() or writev(). A writev() waiting for the peer's handshake answer is
 *    woken by the read edge, which epoll reports together with writability: watch the fd for
 *    both (as the gateway does).
 *  - A failed handshake or a protocol error: -1 with errno EPROTO, or ECONNRESET when the peer
 *    closed or reset during the handshake; polis__tls_io_error() gives the reason. Every later
 *    call fails the same way.
 *  - read() returns 0 at close_notify, and also at a plain TCP close after the handshake (as a
 *    socket would; HTTP framing detects truncation).
 *  - shutdown() sends close_notify (best effort), then shuts the socket's sending side once
 *    everything the layer holds went out.
 * Each connection belongs to one thread at a time. */

/* Drive the handshake without moving application data (for a caller that wants it done before
 * handing the connection on). Returns 0 once done; POLIS_EAGAIN with *want set to
 * POLIS_EV_READ (and POLIS_EV_WRITE when records wait for the socket); POLIS_ECLOSED when the
 * peer closed or reset; POLIS_EBADMSG on a TLS or verification failure (see io_error). */
int polis__tls_handshake(struct polis_io *io, unsigned *want);

/* Free the connection's state (not the fd, which the caller closes) and set io->ctx to NULL.
 * Nothing is sent: call io->ops->shutdown() first for a clean close. NULL ctx is ignored. */
void polis__tls_io_free(struct polis_io *io);

/* True when io is a TLS connection made by this module. */
bool polis__tls_is_tls(const struct polis_io *io);
/* True once the handshake completed. */
bool polis__tls_handshake_done(const struct polis_io *io);
/* Why the connection failed ("" when it did not): OpenSSL's reason, with the certificate
 * verification error when there is one. Valid until polis__tls_io_free(). */
const char *polis__tls_io_error(const struct polis_io *io);

/* The peer's verified certificate subject as an RFC 2253 string ("CN=x,O=y", non-ASCII and
 * control bytes escaped). Returns 0; POLIS_ENOTFOUND when the peer sent no certificate or it
 * was not verified (buf gets ""); POLIS_ETOOBIG when cap is too small. */
int polis__tls_peer_subject(const struct polis_io *io, char *buf, size_t cap);
/* The verified peer certificate's subjectAltNames as "DNS:a.example,URI:spiffe://x/y,
 * IP:10.0.0.1,email:a@b" (bytes outside printable ASCII, ',' and '%' percent-encoded).
 * Returns like polis__tls_peer_subject() ("" and 0 for a certificate without SANs). */
int polis__tls_peer_san(const struct polis_io *io, char *buf, size_t cap);

/* The protocol chosen by ALPN ("http/1.1"), or an empty view. */
struct polis_str polis__tls_alpn(const struct polis_io *io);
/* "TLSv1.2" or "TLSv1.3" once the handshake is done, else "". */
const char *polis__tls_version(const struct polis_io *io);
/* The cipher suite's name once the handshake is done, else "". */
const char *polis__tls_cipher(const struct polis_io *io);
/* The SNI name the client sent (server side), or NULL. */
const char *polis__tls_server_name(const struct polis_io *io);
/* True when the handshake resumed a session. */
bool polis__tls_resumed(const struct polis_io *io);
/* The OpenSSL connection, for what this API does not cover (tests, diagnostics). Changing it
 * after the handshake started is not supported. */
struct ssl_st *polis__tls_ssl(const struct polis_io *io);

#endif
