/* jwt.h: JSON Web Token verification on OpenSSL 3 (RFC 7519, RFC 7515, RFC 8725): keys from
 * PEM files, HMAC secrets and JWK sets (a file, inline, or an HTTPS URL refreshed in the
 * background), claims checked against per-issuer rules, and a verified-token cache shared by
 * every worker. See docs/internals/jwt.md. */
#ifndef POLIS_SECURITY_JWT_H
#define POLIS_SECURITY_JWT_H

#include "config/config.h"
#include <polis/core.h>

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Hard limits. A token over POLIS_JWT_MAX_TOKEN bytes is refused before anything is decoded. */
#define POLIS_JWT_MAX_TOKEN 8192      /* bytes of the compact token */
#define POLIS_JWT_MAX_HEADER 1024     /* bytes of the decoded header JSON */
#define POLIS_JWT_MAX_SIGNATURE 1024  /* bytes of the decoded signature (RSA 8192) */
#define POLIS_JWT_MAX_KID 256         /* bytes of a kid */
#define POLIS_JWT_MAX_JWKS (1u << 20) /* bytes of a JWK set document */
#define POLIS_JWT_MAX_KEYS 100        /* keys in a JWK set ("keys" array entries) */
#define POLIS_JWT_MAX_ISSUERS 64      /* issuers in one verifier (they fit a uint64_t mask) */
#define POLIS_JWT_KIDLESS_TRIES 16    /* keys tried for a token without kid */

/* Signature algorithms (the JOSE names are "HS256", ..., "EdDSA"). "none" is never one. */
/* The algorithms: the configuration's enum polis_jwt_alg (config/config.h), one list for both. */
#define POLIS_JWT_ALG__COUNT POLIS_JWT__COUNT

/* Why a token was refused (polis_jwt_result.reason); names from polis__jwt_reason_name(). */
enum polis_jwt_reason {
    POLIS_JWT_OK = 0,
    POLIS_JWT_MALFORMED, /* "malformed": segments, base64url, JSON, duplicate members */
    POLIS_JWT_TOO_BIG,   /* "too_big": token or header over its limit */
    POLIS_JWT_ALG,       /* "alg": none, unknown, or not allowed for the issuer or the key */
    POLIS_JWT_TYP,       /* "typ": typ present and not JWT or at+jwt */
    POLIS_JWT_CRIT,      /* "crit": a crit header (no extension is understood) */
    POLIS_JWT_HEADER,    /* "header": another unsupported header (cty JWT: nested token) */
    POLIS_JWT_KID,       /* "kid": not a string, empty, too long, '/', "..", control bytes */
    POLIS_JWT_NO_KEY,    /* "no_key": unknown kid, or no key of the issuer for the alg */
    POLIS_JWT_SIGNATURE, /* "signature": no key verified the signature */
    POLIS_JWT_EXPIRED,   /* "expired": now >= exp + leeway */
    POLIS_JWT_NBF,       /* "nbf": now + leeway < nbf */
    POLIS_JWT_IAT,       /* "iat": issued in the future, beyond the leeway */
    POLIS_JWT_ISSUER,    /* "issuer": iss missing, unknown, or not allowed here */
    POLIS_JWT_AUDIENCE,  /* "audience": aud missing or naming none of the audiences */
    POLIS_JWT_CLAIMS,    /* "claims": exp missing where required, a time claim not a number */
    POLIS_JWT_INTERNAL,  /* "internal": out of memory or an OpenSSL failure */
    POLIS_JWT_REASON__COUNT
};

/* A key from a file. */
struct polis_jwt_key_opts {
    const char *path; /* PEM public key or X.509 certificate; with secret: the HMAC secret */
    const char *kid;  /* NULL: no kid (then only tokens without a kid try it) */
    const char *alg;  /* NULL: every algorithm of the key's type; else the only one allowed */
    /* The file is an HMAC secret, used byte for byte (a trailing newline is part of it). Its
     * alg, when given, must be HS256/384/512; a file starting with "-----BEGIN" is refused, so
     * a public key can never become an HMAC secret. Secrets shorter than the hash (32, 48 or 64
     * bytes) are not allowed for that HMAC (RFC 7518 3.2); under 32 bytes they are refused. */
    bool secret;
};

/* One trusted issuer. Zero values pick the defaults noted. Strings are copied. */
struct polis_jwt_issuer_opts {
    const char *name;             /* unique, non-empty: logs, stats, issuer masks */
    const char *issuer;           /* the exact "iss" (byte comparison); unique among the issuers */
    const char *const *audiences; /* "aud" must contain one of them; none: aud not checked */
    size_t n_audiences;
    const char *const *algorithms; /* required, non-empty: JOSE names ("RS256", ...) */
    size_t n_algorithms;
    const struct polis_jwt_key_opts *keys;
    size_t n_keys;
    const char *jwks_file;     /* a JWK set file, read once by polis__jwt_new() */
    const char *jwks_json;     /* a JWK set document given inline */
    const char *jwks_url;      /* "https://host[:port]/path": fetched in the background */
    const char *jwks_ca_file;  /* CA certificates (PEM) for jwks_url; NULL: the system store */
    uint64_t refresh_ms;       /* jwks_url refetched this often; 0: 10 min */
    uint64_t min_refresh_ms;   /* never fetched more often than this; 0: 30 s */
    uint64_t fetch_timeout_ms; /* one fetch (connect, TLS, answer); 0: 5 s */
    uint64_t leeway_ms;        /* allowed clock skew for exp, nbf, iat; at most one day */
    bool exp_optional;         /* accept tokens without exp (never cached) */
};

struct polis_jwt_verifier;

/* The outcome of polis__jwt_verify(). Zero it before the first use; free with
 * polis__jwt_result_free() (which zeroes it again). */
struct polis_jwt_result {
    /* The verified payload: a reference this result owns. Read-only: the same object may be
     * shared by other threads through the cache. NULL on failure. */
    json_t *claims;
    const char *issuer; /* the matched issuer's name (valid while the verifier lives) */
    enum polis_jwt_alg alg;
    bool cached; /* answered from the verified-token cache */
    enum polis_jwt_reason reason;
    const char *detail; /* static text saying why, for logs only (never sent to clients) */
};

/* Counters for tests, metrics and the admin API (sums over all threads). */
struct polis_jwt_stats {
    uint64_t verified;         /* tokens accepted (cache hits included) */
    uint64_t rejected;         /* tokens refused */
    uint64_t signature_checks; /* signature verifications performed (the test hook) */
    uint64_t cache_hits, cache_misses;
    size_t cache_capacity; /* entries (the configured count rounded up to a multiple of 8) */
};

struct polis_jwt_issuer_stats {
    size_t keys;             /* keys in the current key set */
    uint64_t key_set_gen;    /* bumped whenever the key set changes */
    uint64_t fetches;        /* jwks_url fetch attempts */
    uint64_t fetch_failures; /* of which failed (the previous keys are kept) */
    int last_error;          /* the last failed fetch's POLIS_E* code; 0 after a success */
};

/* Build a verifier for n issuers (at most POLIS_JWT_MAX_ISSUERS): every key file and JWK set
 * file is read now, so a bad key is a configuration error, never a runtime one. Issuers with a
 * jwks_url get their first fetch at once from a background thread (one for all issuers): until
 * it succeeds their tokens are refused with POLIS_JWT_NO_KEY. cache_entries: the verified-token
 * cache's size (0: no cache; at most 1<<22). Returns 0 and *out, POLIS_EINVAL with a message in
 * err[0..errlen) (which issuer, which key, why), POLIS_ESYS (the thread) or POLIS_ENOMEM. Main
 * thread. */
int polis__jwt_new(const struct polis_jwt_issuer_opts *issuers, size_t n, size_t cache_entries,
                   struct polis_jwt_verifier **out, char *err, size_t errlen);

/* Stop the refresher (waits for a fetch in progress to notice, at most about 100 ms once its
 * TCP connection is open) and free everything. Results still held keep their claims. No thread
 * may be verifying. NULL is fine. */
void polis__jwt_free(struct polis_jwt_verifier *v);

/* The mask of issuers named in names[0..n), for polis__jwt_verify(). Returns 0, or
 * POLIS_ENOTFOUND when a name is not an issuer of v. */
int polis__jwt_issuer_mask(const struct polis_jwt_verifier *v, const char *const *names, size_t n,
                           uint64_t *mask);
#define POLIS_JWT_ANY_ISSUER UINT64_MAX

/* Verify the compact token[0..len) at now_s (Unix seconds), accepting only issuers whose bit
 * is set in issuers (polis__jwt_issuer_mask(), or POLIS_JWT_ANY_ISSUER). On success fills
 * res (claims referenced, issuer, alg, cached) and returns 0. Otherwise sets res->reason and
 * res->detail and returns POLIS_ETOOBIG (reason POLIS_JWT_TOO_BIG), POLIS_ENOMEM (reason
 * POLIS_JWT_INTERNAL) or POLIS_EBADMSG (any other refusal): all are 401s for a client. An
 * unknown kid for an issuer with a jwks_url also wakes the refresher (at most once per
 * min_refresh_ms); this call never waits for it. res must be zeroed or freed before the call.
 * Any thread, concurrently. */
int polis__jwt_verify(struct polis_jwt_verifier *v, const char *token, size_t len, int64_t now_s,
                      uint64_t issuers, struct polis_jwt_result *res);

/* Drop the result's claims reference and zero it. Harmless on a zeroed result. */
void polis__jwt_result_free(struct polis_jwt_result *res);

/* "malformed", "expired", ... (see enum polis_jwt_reason); "?" out of range. */
const char *polis__jwt_reason_name(enum polis_jwt_reason r);
/* The JOSE name of an algorithm ("RS256"); "?" out of range. */
const char *polis__jwt_alg_name(enum polis_jwt_alg a);

/* Take the token out of an Authorization value "Bearer <token>" (scheme case-insensitive, one
 * or more spaces, no trailing bytes but spaces or tabs). Returns 0 and *token (a view into
 * value), or POLIS_EINVAL (another scheme, or no token). */
int polis__jwt_bearer(struct polis_str value, struct polis_str *token);

/* Whether claim name of claims matches value exactly: a string equal to value, an array
 * holding such a string, a number or boolean whose text ("42", "true") is value. */
bool polis__jwt_claim_equals(const json_t *claims, const char *name, const char *value);

/* Whether every one of scopes[0..n) is granted: "scope" (space-separated string) or "scp" (an
 * array of strings, or a space-separated string). n == 0: true. */
bool polis__jwt_has_scopes(const json_t *claims, const char *const *scopes, size_t n);

/* Claim name as text for a header: a string as it is, a number or boolean as JSON text, an
 * array or object as compact JSON. Written to buf[0..cap) (NUL-terminated), *len its length.
 * Returns 0, POLIS_ENOTFOUND (absent or null), POLIS_ETOOBIG (does not fit cap - 1) or
 * POLIS_EINVAL (it holds a control byte other than tab, so it cannot be a header value). */
int polis__jwt_claim_string(const json_t *claims, const char *name, char *buf, size_t cap,
                            size_t *len);

/* Counters. Any thread. */
void polis__jwt_stats(const struct polis_jwt_verifier *v, struct polis_jwt_stats *st);
/* One issuer's key set and fetch counters. Returns 0 or POLIS_ENOTFOUND. Any thread. */
int polis__jwt_issuer_stats(const struct polis_jwt_verifier *v, const char *name,
                            struct polis_jwt_issuer_stats *st);

#endif
