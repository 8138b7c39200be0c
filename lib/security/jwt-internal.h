/* jwt-internal.h: the pieces of the JWT verifier shared by its files (jwt.c, jwt-key.c,
 * jwt-fetch.c), its unit test and its fuzzer: base64url, keys, JWK sets, signature checks and
 * the HTTPS fetch of JWK sets. Not for other modules: they use jwt.h. */
#ifndef POLIS_SECURITY_JWT_INTERNAL_H
#define POLIS_SECURITY_JWT_INTERNAL_H

#include "security/jwt.h"

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdatomic.h>

/* Key types. An algorithm works only with its own type (the table in jwt-key.c): HMAC only
 * with secrets, so a public key is never an HMAC secret. */
enum polis_jwt_kty {
    POLIS_JWT_KTY_HMAC = 0,
    POLIS_JWT_KTY_RSA,
    POLIS_JWT_KTY_P256,
    POLIS_JWT_KTY_P384,
    POLIS_JWT_KTY_ED25519,
};

#define POLIS_JWT_ALG_BIT(a) (1u << (unsigned)(a))

/* One verification key. algs: the algorithms it may verify (POLIS_JWT_ALG_BIT), always a
 * subset of its type's. */
struct polis_jwt_key {
    enum polis_jwt_kty type;
    unsigned algs;
    char *kid; /* NUL-terminated; NULL: no kid */
    size_t kid_len;
    EVP_PKEY *pkey;        /* asymmetric keys (a reference) */
    unsigned char *secret; /* HMAC */
    size_t secret_len;
};

/* A growable list of keys (capped by its users). */
struct polis_jwt_keys {
    struct polis_jwt_key *v;
    size_t n, cap;
};

/* Free what k holds and zero it. */
void polis__jwt_key_clear(struct polis_jwt_key *k);
/* Copy src into dst (the EVP_PKEY is shared by reference). Returns 0 or POLIS_ENOMEM. */
int polis__jwt_key_copy(struct polis_jwt_key *dst, const struct polis_jwt_key *src);
/* Append a copy of k. Returns 0 or POLIS_ENOMEM. */
int polis__jwt_keys_add(struct polis_jwt_keys *l, const struct polis_jwt_key *k);
/* Free every key and the array. */
void polis__jwt_keys_free(struct polis_jwt_keys *l);

/* The algorithm named s[0..len) (exact, case-sensitive JOSE name), or -1. */
int polis__jwt_alg_parse(const char *s, size_t len);
/* The key type an algorithm needs. */
enum polis_jwt_kty polis__jwt_alg_kty(enum polis_jwt_alg a);

/* Decode base64url s[0..len) (RFC 4648 section 5) into out[0..cap): no padding, no other
 * characters, no length that is 1 modulo 4, and the unused bits of the last character must be
 * zero, so every byte string has exactly one accepted spelling. Returns 0 and *outlen,
 * POLIS_EBADMSG or POLIS_ETOOBIG (the result would not fit cap). */
int polis__jwt_b64url_decode(const char *s, size_t len, unsigned char *out, size_t cap,
                             size_t *outlen);

/* Read a whole file of at most max bytes into a malloc'd buffer (NUL-terminated, *len without
 * the NUL). Returns 0, POLIS_ESYS (errno), POLIS_ETOOBIG or POLIS_ENOMEM. */
int polis__jwt_read_file(const char *path, size_t max, char **data, size_t *len);

/* A key from PEM text: a public key (SubjectPublicKeyInfo) or an X.509 certificate; RSA of
 * 2048..8192 bits, EC P-256 or P-384, or Ed25519. alg: NULL (every algorithm of the type) or
 * the only allowed one, which must fit the type. kid: copied, may be NULL. Returns 0 and *out,
 * POLIS_EINVAL with a message in err, or POLIS_ENOMEM. */
int polis__jwt_key_from_pem(const char *pem, size_t len, const char *alg, const char *kid,
                            struct polis_jwt_key *out, char *err, size_t errlen);

/* An HMAC key from secret bytes (see polis_jwt_key_opts.secret for the rules). */
int polis__jwt_key_from_secret(const unsigned char *s, size_t len, const char *alg, const char *kid,
                               struct polis_jwt_key *out, char *err, size_t errlen);

/* Parse a JWK set document doc[0..len) (at most POLIS_JWT_MAX_JWKS bytes and
 * POLIS_JWT_MAX_KEYS keys) and append its usable keys to out. A key is skipped (and counted in
 * *skipped) when its use is not "sig", its key_ops lack "verify", its alg is not one of ours or
 * does not fit its kty, it is malformed or too weak, or it is an "oct" key and allow_oct is
 * false (secrets are never taken from a URL). Returns 0, POLIS_EINVAL (not JSON, no "keys"
 * array, too large, too many keys, or no usable key; err says which) or POLIS_ENOMEM; out gets
 * nothing on failure. */
int polis__jwt_jwks_parse(const char *doc, size_t len, bool allow_oct, struct polis_jwt_keys *out,
                          size_t *skipped, char *err, size_t errlen);

/* Check the JOSE signature sig[0..siglen) of msg[0..len) with key k under alg (k->type must be
 * alg's type; the caller checked k->algs). ES256/ES384 signatures are r||s of fixed length,
 * converted to DER for OpenSSL. Returns 1 (valid), 0 (invalid) or POLIS_ENOMEM. Any thread. */
int polis__jwt_sig_check(const struct polis_jwt_key *k, enum polis_jwt_alg alg,
                         const unsigned char *msg, size_t len, const unsigned char *sig,
                         size_t siglen);

/* ---- JWK sets over HTTPS (jwt-fetch.c) ----------------------------------------------------- */

/* A parsed "https://host[:port][/path][?query]" URL. */
struct polis_jwt_url {
    char *host;     /* without brackets */
    char *hostport; /* as written in the URL: the Host header */
    char *target;   /* path and query, "/" when empty */
    char port[6];
    bool ip; /* host is an IPv4 or IPv6 literal: no SNI, the certificate's IP is checked */
};

/* Parse url. https only; no userinfo, no fragment, no spaces or control bytes. Returns 0 or
 * POLIS_EINVAL / POLIS_ENOMEM. */
int polis__jwt_url_parse(const char *url, struct polis_jwt_url *u);
void polis__jwt_url_free(struct polis_jwt_url *u);

/* A TLS client context: TLS 1.2 or later, peer verification against ca_file (PEM) or, when
 * NULL, the system store. Returns NULL with a message in err. */
SSL_CTX *polis__jwt_tls_ctx(const char *ca_file, char *err, size_t errlen);

/* GET u over TLS (certificate and host name verified, SNI for names) within timeout_ms, giving
 * up early when *stop becomes true. On a 200 answer whose body is at most max_body bytes, puts
 * the body in *body (initialised by the caller) and returns 0. Otherwise POLIS_ENOTFOUND (name
 * does not resolve), POLIS_ESYS (connect, TLS or verification failure), POLIS_ETIMEDOUT,
 * POLIS_EBADMSG (not a 200, or a malformed or truncated answer), POLIS_ETOOBIG, POLIS_ENOMEM;
 * why goes to the log. Blocks; for the refresher thread (and tests). */
int polis__jwt_https_get(SSL_CTX *ctx, const struct polis_jwt_url *u, uint64_t timeout_ms,
                         const atomic_bool *stop, size_t max_body, struct polis_buf *body);

#endif
