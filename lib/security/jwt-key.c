/* jwt-key.c: JWT verification keys (PEM files, HMAC secrets, JWK sets), strict base64url and
 * the signature checks on OpenSSL 3 EVP (see jwt-internal.h). */
#include "security/jwt-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- Algorithms ---------------------------------------------------------------------------- */

struct alg_info {
    const char *name;
    enum polis_jwt_kty kty;
    const char *md;   /* digest name; NULL for EdDSA */
    size_t fixed_len; /* signature length for HMAC, ECDSA (r||s) and EdDSA; 0 for RSA */
    bool pss;         /* RSASSA-PSS, salt length = digest length (RFC 7518 3.5) */
};

static const struct alg_info algs[POLIS_JWT_ALG__COUNT] = {
    [POLIS_JWT_HS256] = {"HS256", POLIS_JWT_KTY_HMAC, "SHA2-256", 32, false},
    [POLIS_JWT_HS384] = {"HS384", POLIS_JWT_KTY_HMAC, "SHA2-384", 48, false},
    [POLIS_JWT_HS512] = {"HS512", POLIS_JWT_KTY_HMAC, "SHA2-512", 64, false},
    [POLIS_JWT_RS256] = {"RS256", POLIS_JWT_KTY_RSA, "SHA2-256", 0, false},
    [POLIS_JWT_RS384] = {"RS384", POLIS_JWT_KTY_RSA, "SHA2-384", 0, false},
    [POLIS_JWT_RS512] = {"RS512", POLIS_JWT_KTY_RSA, "SHA2-512", 0, false},
    [POLIS_JWT_PS256] = {"PS256", POLIS_JWT_KTY_RSA, "SHA2-256", 0, true},
    [POLIS_JWT_ES256] = {"ES256", POLIS_JWT_KTY_P256, "SHA2-256", 64, false},
    [POLIS_JWT_ES384] = {"ES384", POLIS_JWT_KTY_P384, "SHA2-384", 96, false},
    [POLIS_JWT_EDDSA] = {"EdDSA", POLIS_JWT_KTY_ED25519, NULL, 64, false},
};

const char *polis__jwt_alg_name(enum polis_jwt_alg a)
{
    return (unsigned)a < POLIS_JWT_ALG__COUNT ? algs[a].name : "?";
}

int polis__jwt_alg_parse(const char *s, size_t len)
{
    for (int i = 0; i < POLIS_JWT_ALG__COUNT; i++)
        if (strlen(algs[i].name) == len && memcmp(algs[i].name, s, len) == 0)
            return i;
    return -1;
}

enum polis_jwt_kty polis__jwt_alg_kty(enum polis_jwt_alg a)
{
    return algs[a].kty;
}

/* Every algorithm of key type t. */
static unsigned kty_algs(enum polis_jwt_kty t)
{
    unsigned m = 0;
    for (int i = 0; i < POLIS_JWT_ALG__COUNT; i++)
        if (algs[i].kty == t)
            m |= POLIS_JWT_ALG_BIT(i);
    return m;
}

/* Digests and the HMAC implementation, fetched once for the process (explicit fetches avoid a
 * provider lookup on every verification). */
static EVP_MD *mds[3];
static EVP_MAC *hmac_impl;
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_impls(void)
{
    mds[0] = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    mds[1] = EVP_MD_fetch(NULL, "SHA2-384", NULL);
    mds[2] = EVP_MD_fetch(NULL, "SHA2-512", NULL);
    hmac_impl = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

static const EVP_MD *alg_md(enum polis_jwt_alg a)
{
    pthread_once(&fetch_once, fetch_impls);
    const char *n = algs[a].md;
    if (n == NULL)
        return NULL;
    return n[5] == '2' ? mds[0] : n[5] == '3' ? mds[1] : mds[2];
}

/* ---- Keys ----------------------------------------------------------------------------------- */

void polis__jwt_key_clear(struct polis_jwt_key *k)
{
    free(k->kid);
    EVP_PKEY_free(k->pkey);
    if (k->secret != NULL)
        OPENSSL_clear_free(k->secret, k->secret_len);
    *k = (struct polis_jwt_key){0};
}

int polis__jwt_key_copy(struct polis_jwt_key *dst, const struct polis_jwt_key *src)
{
    *dst = *src;
    dst->kid = NULL;
    dst->pkey = NULL;
    dst->secret = NULL;
    if (src->kid != NULL && (dst->kid = strdup(src->kid)) == NULL)
        goto nomem;
    if (src->secret != NULL) {
        dst->secret = OPENSSL_memdup(src->secret, src->secret_len);
        if (dst->secret == NULL)
            goto nomem;
    }
    if (src->pkey != NULL) {
        if (!EVP_PKEY_up_ref(src->pkey))
            goto nomem;
        dst->pkey = src->pkey;
    }
    return 0;
nomem:
    polis__jwt_key_clear(dst);
    return POLIS_ENOMEM;
}

int polis__jwt_keys_add(struct polis_jwt_keys *l, const struct polis_jwt_key *k)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        struct polis_jwt_key *v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return POLIS_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    int rc = polis__jwt_key_copy(&l->v[l->n], k);
    if (rc == 0)
        l->n++;
    return rc;
}

void polis__jwt_keys_free(struct polis_jwt_keys *l)
{
    for (size_t i = 0; i < l->n; i++)
        polis__jwt_key_clear(&l->v[i]);
    free(l->v);
    *l = (struct polis_jwt_keys){0};
}

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Restrict k to alg (a JOSE name) when given; the type must allow it. */
static int pin_alg(struct polis_jwt_key *k, const char *alg, char *err, size_t errlen)
{
    if (alg == NULL)
        return 0;
    int a = polis__jwt_alg_parse(alg, strlen(alg));
    if (a < 0) {
        errf(err, errlen, "unknown algorithm \"%s\"", alg);
        return POLIS_EINVAL;
    }
    if (!(k->algs & POLIS_JWT_ALG_BIT(a))) {
        errf(err, errlen, "algorithm %s does not fit this key", alg);
        return POLIS_EINVAL;
    }
    k->algs = POLIS_JWT_ALG_BIT(a);
    return 0;
}

static int set_kid(struct polis_jwt_key *k, const char *kid, size_t len)
{
    if (kid == NULL)
        return 0;
    k->kid = strndup(kid, len);
    if (k->kid == NULL)
        return POLIS_ENOMEM;
    k->kid_len = len;
    return 0;
}

/* Classify an asymmetric key and set type and algs. Returns 0 or POLIS_EINVAL. */
static int classify(struct polis_jwt_key *k, char *err, size_t errlen)
{
    EVP_PKEY *p = k->pkey;
    if (EVP_PKEY_is_a(p, "RSA")) {
        int bits = EVP_PKEY_get_bits(p);
        if (bits < 2048 || bits > 8192) {
            errf(err, errlen, "RSA key of %d bits (2048 to 8192 accepted)", bits);
            return POLIS_EINVAL;
        }
        k->type = POLIS_JWT_KTY_RSA;
    } else if (EVP_PKEY_is_a(p, "EC")) {
        char g[64];
        size_t gl = 0;
        if (!EVP_PKEY_get_group_name(p, g, sizeof(g), &gl)) {
            errf(err, errlen, "EC key without a named curve");
            return POLIS_EINVAL;
        }
        if (strcmp(g, "prime256v1") == 0 || strcmp(g, "P-256") == 0) {
            k->type = POLIS_JWT_KTY_P256;
        } else if (strcmp(g, "secp384r1") == 0 || strcmp(g, "P-384") == 0) {
            k->type = POLIS_JWT_KTY_P384;
        } else {
            errf(err, errlen, "EC curve %s (P-256 and P-384 accepted)", g);
            return POLIS_EINVAL;
        }
    } else if (EVP_PKEY_is_a(p, "ED25519")) {
        k->type = POLIS_JWT_KTY_ED25519;
    } else {
        errf(err, errlen, "unsupported key type %s", EVP_PKEY_get0_type_name(p));
        return POLIS_EINVAL;
    }
    k->algs = kty_algs(k->type);
    return 0;
}

int polis__jwt_key_from_pem(const char *pem, size_t len, const char *alg, const char *kid,
                            struct polis_jwt_key *out, char *err, size_t errlen)
{
    struct polis_jwt_key k = {0};
    int rc = POLIS_EINVAL;
    if (len > INT_MAX) {
        errf(err, errlen, "PEM too large");
        return POLIS_EINVAL;
    }
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    if (b == NULL)
        return POLIS_ENOMEM;
    k.pkey = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    if (k.pkey == NULL) {
        /* Not a public key: maybe a certificate. */
        BIO_free(b);
        b = BIO_new_mem_buf(pem, (int)len);
        if (b == NULL)
            return POLIS_ENOMEM;
        X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
        if (x != NULL) {
            k.pkey = X509_get_pubkey(x);
            X509_free(x);
        }
    }
    BIO_free(b);
    ERR_clear_error();
    if (k.pkey == NULL) {
        errf(err, errlen, "not a PEM public key or certificate");
        goto fail;
    }
    if ((rc = classify(&k, err, errlen)) < 0 || (rc = pin_alg(&k, alg, err, errlen)) < 0)
        goto fail;
    if ((rc = set_kid(&k, kid, kid ? strlen(kid) : 0)) < 0)
        goto fail;
    *out = k;
    return 0;
fail:
    polis__jwt_key_clear(&k);
    return rc;
}

int polis__jwt_key_from_secret(const unsigned char *s, size_t len, const char *alg, const char *kid,
                               struct polis_jwt_key *out, char *err, size_t errlen)
{
    static const char pem[] = "-----BEGIN";
    if (len >= sizeof(pem) - 1 && memcmp(s, pem, sizeof(pem) - 1) == 0) {
        errf(err, errlen, "a PEM file cannot be an HMAC secret");
        return POLIS_EINVAL;
    }
    if (len < 32) {
        errf(err, errlen, "HMAC secret of %zu bytes (at least 32)", len);
        return POLIS_EINVAL;
    }
    if (len > 4096) {
        errf(err, errlen, "HMAC secret of %zu bytes (at most 4096)", len);
        return POLIS_EINVAL;
    }
    struct polis_jwt_key k = {.type = POLIS_JWT_KTY_HMAC, .algs = 0};
    /* RFC 7518 3.2: a key at least as long as the hash. */
    for (int a = POLIS_JWT_HS256; a <= POLIS_JWT_HS512; a++)
        if (len >= algs[a].fixed_len)
            k.algs |= POLIS_JWT_ALG_BIT(a);
    int rc = pin_alg(&k, alg, err, errlen);
    if (rc < 0)
        return rc;
    k.secret = OPENSSL_memdup(s, len);
    if (k.secret == NULL)
        return POLIS_ENOMEM;
    k.secret_len = len;
    if ((rc = set_kid(&k, kid, kid ? strlen(kid) : 0)) < 0) {
        polis__jwt_key_clear(&k);
        return rc;
    }
    *out = k;
    return 0;
}

int polis__jwt_read_file(const char *path, size_t max, char **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return POLIS_ESYS;
    int rc = POLIS_ESYS;
    char *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) < 0)
        goto out;
    if (!S_ISREG(st.st_mode)) {
        errno = EINVAL;
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        rc = POLIS_ETOOBIG;
        goto out;
    }
    /* Read up to max + 1 bytes whatever stat said (the file may grow meanwhile). */
    size_t cap = (size_t)st.st_size + 1, n = 0;
    buf = malloc(cap + 1);
    if (buf == NULL) {
        rc = POLIS_ENOMEM;
        goto out;
    }
    for (;;) {
        if (n == cap) {
            if (cap > max) {
                rc = POLIS_ETOOBIG;
                goto out;
            }
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (nb == NULL) {
                rc = POLIS_ENOMEM;
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n > max) {
        rc = POLIS_ETOOBIG;
        goto out;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    close(fd);
    return rc;
}

/* ---- base64url ------------------------------------------------------------------------------ */

/* Value of a base64url character, or -1. */
static int b64v(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

int polis__jwt_b64url_decode(const char *s, size_t len, unsigned char *out, size_t cap,
                             size_t *outlen)
{
    if (len % 4 == 1)
        return POLIS_EBADMSG;
    size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (need > cap)
        return POLIS_ETOOBIG;
    size_t o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64v((unsigned char)s[i]);
        if (v < 0)
            return POLIS_EBADMSG;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* unused trailing bits must be zero: one spelling per value */
        return POLIS_EBADMSG;
    *outlen = o;
    return 0;
}

/* ---- JWK sets ------------------------------------------------------------------------------- */

/* Decode the base64url string member name of o into a fresh buffer of at most max bytes. */
static int jwk_bytes(const json_t *o, const char *name, size_t max, unsigned char **out,
                     size_t *len)
{
    const json_t *j = json_object_get(o, name);
    if (!json_is_string(j))
        return POLIS_EINVAL;
    size_t sl = json_string_length(j);
    unsigned char *b = malloc(sl / 4 * 3 + 3);
    if (b == NULL)
        return POLIS_ENOMEM;
    if (polis__jwt_b64url_decode(json_string_value(j), sl, b, sl / 4 * 3 + 3, len) < 0 ||
        *len == 0 || *len > max) {
        free(b);
        return POLIS_EINVAL;
    }
    *out = b;
    return 0;
}

static int jwk_rsa(const json_t *o, struct polis_jwt_key *k)
{
    unsigned char *n = NULL, *e = NULL;
    size_t nl = 0, el = 0;
    int rc = jwk_bytes(o, "n", 1024, &n, &nl);
    if (rc == 0)
        rc = jwk_bytes(o, "e", 8, &e, &el);
    BIGNUM *bn = NULL, *be = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pc = NULL;
    if (rc < 0)
        goto out;
    rc = POLIS_ENOMEM;
    if ((bn = BN_bin2bn(n, (int)nl, NULL)) == NULL || (be = BN_bin2bn(e, (int)el, NULL)) == NULL)
        goto out;
    rc = POLIS_EINVAL;
    if (!BN_is_odd(be) || BN_is_one(be) || !BN_is_odd(bn))
        goto out;
    rc = POLIS_ENOMEM;
    if ((bld = OSSL_PARAM_BLD_new()) == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
        (pc = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL)
        goto out;
    rc = POLIS_EINVAL;
    if (EVP_PKEY_fromdata_init(pc) <= 0 ||
        EVP_PKEY_fromdata(pc, &k->pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        goto out;
    rc = 0;
out:
    EVP_PKEY_CTX_free(pc);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return rc;
}

static int jwk_ec(const json_t *o, struct polis_jwt_key *k)
{
    const char *crv = json_string_value(json_object_get(o, "crv"));
    size_t cl;
    const char *group;
    if (crv != NULL && strcmp(crv, "P-256") == 0) {
        cl = 32;
        group = "P-256";
    } else if (crv != NULL && strcmp(crv, "P-384") == 0) {
        cl = 48;
        group = "P-384";
    } else {
        return POLIS_EINVAL;
    }
    unsigned char *x = NULL, *y = NULL, pub[1 + 2 * 48];
    size_t xl = 0, yl = 0;
    OSSL_PARAM params[3];
    EVP_PKEY_CTX *pc = NULL;
    int rc = jwk_bytes(o, "x", cl, &x, &xl);
    if (rc == 0)
        rc = jwk_bytes(o, "y", cl, &y, &yl);
    if (rc < 0)
        goto out;
    rc = POLIS_EINVAL;
    if (xl != cl || yl != cl)
        goto out;
    pub[0] = 0x04; /* uncompressed point */
    memcpy(pub + 1, x, cl);
    memcpy(pub + 1 + cl, y, cl);
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pub, 1 + 2 * cl);
    params[2] = OSSL_PARAM_construct_end();
    rc = POLIS_ENOMEM;
    if ((pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) == NULL)
        goto out;
    rc = POLIS_EINVAL;
    /* Importing checks that the point is on the curve. */
    if (EVP_PKEY_fromdata_init(pc) <= 0 ||
        EVP_PKEY_fromdata(pc, &k->pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        goto out;
    rc = 0;
out:
    EVP_PKEY_CTX_free(pc);
    free(x);
    free(y);
    return rc;
}

static int jwk_okp(const json_t *o, struct polis_jwt_key *k)
{
    const char *crv = json_string_value(json_object_get(o, "crv"));
    if (crv == NULL || strcmp(crv, "Ed25519") != 0)
        return POLIS_EINVAL;
    unsigned char *x = NULL;
    size_t xl = 0;
    int rc = jwk_bytes(o, "x", 32, &x, &xl);
    if (rc < 0)
        return rc;
    if (xl == 32)
        k->pkey = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, x, xl);
    free(x);
    return k->pkey != NULL ? 0 : POLIS_EINVAL;
}

/* Whether member name of o, when present, allows verification (use "sig"; key_ops with
 * "verify"). */
static bool jwk_for_verify(const json_t *o)
{
    const json_t *use = json_object_get(o, "use");
    if (use != NULL && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0))
        return false;
    const json_t *ops = json_object_get(o, "key_ops");
    if (ops == NULL)
        return true;
    if (!json_is_array(ops))
        return false;
    size_t i;
    const json_t *op;
    json_array_foreach(ops, i, op)
    {
        if (json_is_string(op) && strcmp(json_string_value(op), "verify") == 0)
            return true;
    }
    return false;
}

/* One JWK into *k. Returns 0, POLIS_EINVAL (skip it) or POLIS_ENOMEM. */
static int jwk_key(const json_t *o, bool allow_oct, struct polis_jwt_key *k)
{
    if (!json_is_object(o) || !jwk_for_verify(o))
        return POLIS_EINVAL;
    const char *kty = json_string_value(json_object_get(o, "kty"));
    if (kty == NULL)
        return POLIS_EINVAL;
    int rc;
    if (strcmp(kty, "RSA") == 0) {
        rc = jwk_rsa(o, k);
    } else if (strcmp(kty, "EC") == 0) {
        rc = jwk_ec(o, k);
    } else if (strcmp(kty, "OKP") == 0) {
        rc = jwk_okp(o, k);
    } else if (strcmp(kty, "oct") == 0 && allow_oct) {
        unsigned char *s = NULL;
        size_t sl = 0;
        rc = jwk_bytes(o, "k", 4096, &s, &sl);
        if (rc == 0) {
            rc = polis__jwt_key_from_secret(s, sl, NULL, NULL, k, NULL, 0);
            OPENSSL_clear_free(s, sl);
        }
    } else {
        return POLIS_EINVAL;
    }
    if (rc < 0)
        return rc;
    if (k->pkey != NULL && (rc = classify(k, NULL, 0)) < 0)
        goto fail;
    const json_t *alg = json_object_get(o, "alg");
    if (alg != NULL) {
        int a = json_is_string(alg)
                    ? polis__jwt_alg_parse(json_string_value(alg), json_string_length(alg))
                    : -1;
        rc = POLIS_EINVAL;
        if (a < 0 || !(k->algs & POLIS_JWT_ALG_BIT(a)))
            goto fail;
        k->algs = POLIS_JWT_ALG_BIT(a);
    }
    const json_t *kid = json_object_get(o, "kid");
    if (kid != NULL) {
        rc = POLIS_EINVAL;
        if (!json_is_string(kid) || json_string_length(kid) > POLIS_JWT_MAX_KID)
            goto fail;
        if ((rc = set_kid(k, json_string_value(kid), json_string_length(kid))) < 0)
            goto fail;
    }
    return 0;
fail:
    polis__jwt_key_clear(k);
    return rc;
}

int polis__jwt_jwks_parse(const char *doc, size_t len, bool allow_oct, struct polis_jwt_keys *out,
                          size_t *skipped, char *err, size_t errlen)
{
    *skipped = 0;
    if (len > POLIS_JWT_MAX_JWKS) {
        errf(err, errlen, "JWK set of %zu bytes (at most %u)", len, POLIS_JWT_MAX_JWKS);
        return POLIS_EINVAL;
    }
    json_error_t je;
    json_t *root = json_loadb(doc, len, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL) {
        errf(err, errlen, "JWK set is not JSON: %s (line %d)", je.text, je.line);
        return POLIS_EINVAL;
    }
    int rc = POLIS_EINVAL;
    struct polis_jwt_keys got = {0};
    const json_t *keys = json_object_get(root, "keys");
    if (!json_is_object(root) || !json_is_array(keys)) {
        errf(err, errlen, "JWK set without a \"keys\" array");
        goto out;
    }
    if (json_array_size(keys) > POLIS_JWT_MAX_KEYS) {
        errf(err, errlen, "JWK set of %zu keys (at most %d)", json_array_size(keys),
             POLIS_JWT_MAX_KEYS);
        goto out;
    }
    size_t i;
    const json_t *o;
    json_array_foreach(keys, i, o)
    {
        struct polis_jwt_key k = {0};
        int r = jwk_key(o, allow_oct, &k);
        if (r == POLIS_ENOMEM) {
            rc = r;
            goto out;
        }
        if (r < 0) {
            ERR_clear_error();
            (*skipped)++;
            continue;
        }
        r = polis__jwt_keys_add(&got, &k);
        polis__jwt_key_clear(&k);
        if (r < 0) {
            rc = r;
            goto out;
        }
    }
    if (got.n == 0) {
        errf(err, errlen, "JWK set without a usable key (%zu skipped)", *skipped);
        goto out;
    }
    for (i = 0; i < got.n; i++) {
        if ((rc = polis__jwt_keys_add(out, &got.v[i])) < 0) {
            while (i-- > 0)
                polis__jwt_key_clear(&out->v[--out->n]);
            goto out;
        }
    }
    rc = 0;
out:
    polis__jwt_keys_free(&got);
    json_decref(root);
    return rc;
}

/* ---- Signatures ------------------------------------------------------------------------------ */

/* A DER INTEGER of the big-endian unsigned v[0..n) at out; returns its length. */
static size_t der_uint(unsigned char *out, const unsigned char *v, size_t n)
{
    while (n > 1 && v[0] == 0) {
        v++;
        n--;
    }
    size_t pad = (v[0] & 0x80) ? 1 : 0;
    out[0] = 0x02;
    out[1] = (unsigned char)(n + pad);
    out[2] = 0;
    memcpy(out + 2 + pad, v, n);
    return 2 + pad + n;
}

static int check_hmac(const struct polis_jwt_key *k, enum polis_jwt_alg alg,
                      const unsigned char *msg, size_t len, const unsigned char *sig, size_t siglen)
{
    if (siglen != algs[alg].fixed_len)
        return 0;
    alg_md(alg); /* fetch once */
    if (hmac_impl == NULL)
        return POLIS_ENOMEM;
    EVP_MAC_CTX *c = EVP_MAC_CTX_new(hmac_impl);
    if (c == NULL)
        return POLIS_ENOMEM;
    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)algs[alg].md, 0),
        OSSL_PARAM_construct_end(),
    };
    unsigned char mac[64];
    size_t ml = 0;
    int rc = POLIS_ENOMEM;
    if (EVP_MAC_init(c, k->secret, k->secret_len, params) && EVP_MAC_update(c, msg, len) &&
        EVP_MAC_final(c, mac, &ml, sizeof(mac)))
        rc = ml == siglen && CRYPTO_memcmp(mac, sig, siglen) == 0;
    EVP_MAC_CTX_free(c);
    OPENSSL_cleanse(mac, sizeof(mac));
    return rc;
}

int polis__jwt_sig_check(const struct polis_jwt_key *k, enum polis_jwt_alg alg,
                         const unsigned char *msg, size_t len, const unsigned char *sig,
                         size_t siglen)
{
    if ((unsigned)alg >= POLIS_JWT_ALG__COUNT || k->type != algs[alg].kty)
        return 0;
    if (k->type == POLIS_JWT_KTY_HMAC)
        return check_hmac(k, alg, msg, len, sig, siglen);
    if (k->pkey == NULL)
        return 0;
    unsigned char der[8 + 2 * 52];
    if (k->type == POLIS_JWT_KTY_P256 || k->type == POLIS_JWT_KTY_P384) {
        /* JOSE sends r||s, each exactly half; OpenSSL wants SEQUENCE { INTEGER r, INTEGER s }. */
        if (siglen != algs[alg].fixed_len)
            return 0;
        size_t h = siglen / 2, n = 2;
        n += der_uint(der + n, sig, h);
        n += der_uint(der + n, sig + h, h);
        der[0] = 0x30;
        der[1] = (unsigned char)(n - 2);
        sig = der;
        siglen = n;
    } else if (k->type == POLIS_JWT_KTY_ED25519) {
        if (siglen != algs[alg].fixed_len)
            return 0;
    } else if (siglen != (size_t)EVP_PKEY_get_size(k->pkey)) {
        return 0;
    }
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (c == NULL)
        return POLIS_ENOMEM;
    EVP_PKEY_CTX *pc = NULL;
    const EVP_MD *md = alg_md(alg);
    int rc = POLIS_ENOMEM;
    if (algs[alg].md != NULL && md == NULL)
        goto out;
    rc = 0;
    if (EVP_DigestVerifyInit(c, &pc, md, NULL, k->pkey) <= 0)
        goto out;
    if (algs[alg].pss && (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) <= 0 ||
                          EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST) <= 0))
        goto out;
    rc = EVP_DigestVerify(c, sig, siglen, msg, len) == 1;
out:
    EVP_MD_CTX_free(c);
    ERR_clear_error();
    return rc;
}
