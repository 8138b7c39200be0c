/* Unit tests of the JWT verifier (lib/security/jwt*.c): the committed corpus of good and bad
 * tokens (tests/data/jwt/manifest.json), leeway, the verified-token cache, configuration
 * errors, JWK set parsing, the claim helpers, threads, and JWK sets over HTTPS from a small TLS
 * server run by the test: refresh on an unknown kid, the minimum refresh interval, scheduled
 * refreshes, rotation, failed refreshes keeping the keys, and certificate verification. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http/blocking.h"
#include "security/jwt-internal.h"

#define DATA "tests/data/jwt/"

static json_t *manifest;
static int64_t unit_now, valid_from, valid_until;

/* ---- Helpers ------------------------------------------------------------------------------- */

static char *slurp(const char *path, size_t *len)
{
    char *d = NULL;
    size_t l = 0;
    int rc = polis__jwt_read_file(path, 1u << 21, &d, &l);
    if (rc != 0)
        fail_msg("cannot read %s: %s", path, polis_strerror(rc));
    if (len != NULL)
        *len = l;
    return d;
}

static char *token_file(const char *rel, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), DATA "%s", rel);
    return slurp(path, len);
}

/* Strings and arrays made while turning a manifest configuration into options; freed at once
 * by opts_free(). */
struct opts {
    struct polis_jwt_issuer_opts iss[8];
    size_t n;
    size_t cache_entries;
    void *owned[256];
    size_t n_owned;
};

static void *own(struct opts *o, void *p)
{
    assert_non_null(p);
    assert_true(o->n_owned < 256);
    o->owned[o->n_owned++] = p;
    return p;
}

static const char *data_path(struct opts *o, const char *rel)
{
    size_t l = strlen(DATA) + strlen(rel) + 1;
    char *p = own(o, malloc(l));
    snprintf(p, l, DATA "%s", rel);
    return p;
}

static const char **str_array(struct opts *o, const json_t *a, size_t *n)
{
    *n = json_array_size(a);
    const char **v = own(o, calloc(*n + 1, sizeof(*v)));
    for (size_t i = 0; i < *n; i++)
        v[i] = json_string_value(json_array_get(a, i));
    return v;
}

/* The options of manifest configuration name. */
static void opts_from_manifest(struct opts *o, const char *name)
{
    memset(o, 0, sizeof(*o));
    const json_t *cfg = json_object_get(json_object_get(manifest, "configs"), name);
    assert_non_null(cfg);
    o->cache_entries = (size_t)json_integer_value(json_object_get(cfg, "cache_entries"));
    const json_t *issuers = json_object_get(cfg, "issuers");
    size_t i;
    const json_t *j;
    json_array_foreach(issuers, i, j)
    {
        struct polis_jwt_issuer_opts *io = &o->iss[o->n++];
        io->name = json_string_value(json_object_get(j, "name"));
        io->issuer = json_string_value(json_object_get(j, "issuer"));
        io->audiences = str_array(o, json_object_get(j, "audiences"), &io->n_audiences);
        io->algorithms = str_array(o, json_object_get(j, "algorithms"), &io->n_algorithms);
        io->leeway_ms = (uint64_t)json_integer_value(json_object_get(j, "leeway_ms"));
        io->exp_optional = json_is_true(json_object_get(j, "exp_optional"));
        const json_t *keys = json_object_get(j, "keys");
        if (keys != NULL) {
            io->n_keys = json_array_size(keys);
            struct polis_jwt_key_opts *ko = own(o, calloc(io->n_keys, sizeof(*ko)));
            for (size_t k = 0; k < io->n_keys; k++) {
                const json_t *kj = json_array_get(keys, k);
                ko[k].path = data_path(o, json_string_value(json_object_get(kj, "file")));
                ko[k].kid = json_string_value(json_object_get(kj, "kid"));
                ko[k].alg = json_string_value(json_object_get(kj, "alg"));
                ko[k].secret = json_is_true(json_object_get(kj, "secret"));
            }
            io->keys = ko;
        }
        const char *jf = json_string_value(json_object_get(j, "jwks_file"));
        if (jf != NULL)
            io->jwks_file = data_path(o, jf);
    }
}

static void opts_free(struct opts *o)
{
    for (size_t i = 0; i < o->n_owned; i++)
        free(o->owned[i]);
    o->n_owned = 0;
}

static struct polis_jwt_verifier *mk(struct opts *o, size_t cache_entries)
{
    struct polis_jwt_verifier *v = NULL;
    char err[256] = "";
    int rc = polis__jwt_new(o->iss, o->n, cache_entries, &v, err, sizeof(err));
    if (rc != 0)
        fail_msg("polis__jwt_new: %s: %s", polis_strerror(rc), err);
    return v;
}

static struct polis_jwt_verifier *mk_main(size_t cache_entries)
{
    struct opts o;
    opts_from_manifest(&o, "main");
    struct polis_jwt_verifier *v = mk(&o, cache_entries);
    opts_free(&o); /* the verifier copied what it needs */
    return v;
}

/* Verify the token in file rel at now; returns the code and fills *res. */
static int verify_file(struct polis_jwt_verifier *v, const char *rel, int64_t now, uint64_t mask,
                       struct polis_jwt_result *res)
{
    size_t len = 0;
    char *t = token_file(rel, &len);
    int rc = polis__jwt_verify(v, t, len, now, mask, res);
    free(t);
    return rc;
}

static uint64_t sig_checks(struct polis_jwt_verifier *v)
{
    struct polis_jwt_stats st;
    polis__jwt_stats(v, &st);
    return st.signature_checks;
}

static int setup(void **state)
{
    json_error_t je;
    manifest = json_load_file(DATA "manifest.json", JSON_REJECT_DUPLICATES, &je);
    if (manifest == NULL)
        fail_msg("manifest: %s", je.text);
    const json_t *t = json_object_get(manifest, "time");
    unit_now = json_integer_value(json_object_get(t, "unit_test_now"));
    valid_from = json_integer_value(json_object_get(t, "valid_from"));
    valid_until = json_integer_value(json_object_get(t, "valid_until"));
    return 0;
}

static int teardown(void **state)
{
    json_decref(manifest);
    return 0;
}

/* ---- The corpus ---------------------------------------------------------------------------- */

/* Every token of the main configuration gives its expected result, at the unit test's fixed
 * time, at the two ends of the validity window and at the real time, with and without a cache,
 * and twice in a row (a cache must never turn a bad token good nor a good one bad). */
static void run_corpus(size_t cache_entries)
{
    struct polis_jwt_verifier *v = mk_main(cache_entries);
    int64_t times[4] = {unit_now, valid_from, valid_until, (int64_t)time(NULL)};
    size_t good = 0, bad = 0;
    unsigned algs_seen = 0;
    const json_t *tokens = json_object_get(manifest, "tokens");
    size_t i;
    const json_t *t;
    json_array_foreach(tokens, i, t)
    {
        if (strcmp(json_string_value(json_object_get(t, "config")), "main") != 0)
            continue;
        const char *file = json_string_value(json_object_get(t, "file"));
        const char *expect = json_string_value(json_object_get(t, "expect"));
        bool accept = strcmp(expect, "accept") == 0;
        accept ? good++ : bad++;
        for (size_t k = 0; k < 4; k++) {
            for (int round = 0; round < 2; round++) {
                struct polis_jwt_result res = {0};
                int rc = verify_file(v, file, times[k], POLIS_JWT_ANY_ISSUER, &res);
                if (accept) {
                    if (rc != 0)
                        fail_msg("%s at %lld: refused (%s: %s)", file, (long long)times[k],
                                 polis__jwt_reason_name(res.reason), res.detail);
                    assert_non_null(res.claims);
                    assert_string_equal(res.issuer,
                                        json_string_value(json_object_get(t, "issuer")));
                    assert_string_equal(polis__jwt_alg_name(res.alg),
                                        json_string_value(json_object_get(t, "alg")));
                    assert_int_equal(res.reason, POLIS_JWT_OK);
                    algs_seen |= 1u << res.alg;
                } else {
                    const char *want = json_string_value(json_object_get(t, "reason"));
                    if (rc == 0)
                        fail_msg("%s at %lld: accepted", file, (long long)times[k]);
                    assert_null(res.claims);
                    assert_true(rc == POLIS_EBADMSG || rc == POLIS_ETOOBIG);
                    assert_int_equal(rc == POLIS_ETOOBIG, res.reason == POLIS_JWT_TOO_BIG);
                    if (strcmp(polis__jwt_reason_name(res.reason), want) != 0)
                        fail_msg("%s: refused as %s (%s), expected %s", file,
                                 polis__jwt_reason_name(res.reason), res.detail, want);
                    assert_non_null(res.detail);
                }
                polis__jwt_result_free(&res);
            }
        }
    }
    assert_true(good >= 15);
    assert_true(bad >= 60);
    assert_int_equal(algs_seen, (1u << POLIS_JWT_ALG__COUNT) - 1); /* every algorithm */
    polis__jwt_free(v);
}

static void test_corpus(void **state)
{
    int64_t now = (int64_t)time(NULL);
    assert_true(now >= valid_from && now <= valid_until); /* the corpus is still in date */
    run_corpus(1024);
}

static void test_corpus_no_cache(void **state)
{
    run_corpus(0);
}

/* Every token file is listed in the manifest, and every listed file exists. */
static void test_manifest_complete(void **state)
{
    const char *dirs[] = {"good", "bad", "https"};
    size_t files = 0;
    for (size_t d = 0; d < 3; d++) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "ls " DATA "tokens/%s", dirs[d]);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        char line[256];
        while (fgets(line, sizeof(line), p) != NULL) {
            line[strcspn(line, "\n")] = '\0';
            char rel[300];
            snprintf(rel, sizeof(rel), "tokens/%s/%s", dirs[d], line);
            bool listed = false;
            size_t i;
            const json_t *t;
            json_array_foreach(json_object_get(manifest, "tokens"), i, t)
            {
                listed |= strcmp(json_string_value(json_object_get(t, "file")), rel) == 0;
            }
            if (!listed)
                fail_msg("%s is not in the manifest", rel);
            files++;
        }
        pclose(p);
    }
    assert_int_equal(files, json_array_size(json_object_get(manifest, "tokens")));
}

/* ---- Time and leeway ----------------------------------------------------------------------- */

static void test_leeway(void **state)
{
    struct polis_jwt_verifier *v = mk_main(0);
    struct polis_jwt_result res = {0};
    const int64_t exp = 4102444800, iat = 1700000000; /* the corpus's exp, iat and nbf */
    const char *f = "tokens/good/rs256.jwt";
    assert_int_equal(verify_file(v, f, exp - 1, POLIS_JWT_ANY_ISSUER, &res), 0);
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, f, exp + 59, POLIS_JWT_ANY_ISSUER, &res), 0); /* leeway 60 s */
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, f, exp + 60, POLIS_JWT_ANY_ISSUER, &res), POLIS_EBADMSG);
    assert_int_equal(res.reason, POLIS_JWT_EXPIRED);
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, f, iat - 60, POLIS_JWT_ANY_ISSUER, &res), 0);
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, f, iat - 61, POLIS_JWT_ANY_ISSUER, &res), POLIS_EBADMSG);
    assert_int_equal(res.reason, POLIS_JWT_NBF);
    polis__jwt_result_free(&res);
    /* Without nbf, iat in the future decides. */
    assert_int_equal(
        verify_file(v, "tokens/good/no-nbf-no-iat.jwt", iat - 61, POLIS_JWT_ANY_ISSUER, &res), 0);
    polis__jwt_result_free(&res);
    /* A fractional exp: valid strictly before exp + leeway. */
    assert_int_equal(
        verify_file(v, "tokens/good/exp-fractional.jwt", exp + 60, POLIS_JWT_ANY_ISSUER, &res), 0);
    polis__jwt_result_free(&res);
    assert_int_equal(
        verify_file(v, "tokens/good/exp-fractional.jwt", exp + 61, POLIS_JWT_ANY_ISSUER, &res),
        POLIS_EBADMSG);
    polis__jwt_result_free(&res);
    polis__jwt_free(v);
}

/* ---- The cache ----------------------------------------------------------------------------- */

static void test_cache_hit(void **state)
{
    struct polis_jwt_verifier *v = mk_main(64);
    struct polis_jwt_result res = {0};
    const char *f = "tokens/good/es256.jwt";
    assert_int_equal(verify_file(v, f, unit_now, POLIS_JWT_ANY_ISSUER, &res), 0);
    assert_false(res.cached);
    assert_int_equal(sig_checks(v), 1);
    json_t *first = res.claims;
    json_incref(first);
    polis__jwt_result_free(&res);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(verify_file(v, f, unit_now + i, POLIS_JWT_ANY_ISSUER, &res), 0);
        assert_true(res.cached);
        assert_ptr_equal(res.claims, first); /* the same verified claims, shared */
        assert_string_equal(res.issuer, "files");
        assert_int_equal(res.alg, POLIS_JWT_ES256);
        polis__jwt_result_free(&res);
    }
    json_decref(first);
    assert_int_equal(sig_checks(v), 1); /* a hot token costs no signature check */
    struct polis_jwt_stats st;
    polis__jwt_stats(v, &st);
    assert_int_equal(st.cache_hits, 10);
    assert_int_equal(st.cache_misses, 1);
    assert_int_equal(st.verified, 11);
    assert_int_equal(st.cache_capacity, 64);

    /* An issuer the caller does not allow is refused from the cache too. */
    const char *jw = "jwks";
    uint64_t mask = 0;
    assert_int_equal(polis__jwt_issuer_mask(v, &jw, 1, &mask), 0);
    assert_int_equal(verify_file(v, f, unit_now, mask, &res), POLIS_EBADMSG);
    assert_int_equal(res.reason, POLIS_JWT_ISSUER);
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, f, unit_now, 0, &res), POLIS_EBADMSG);
    polis__jwt_result_free(&res);
    const char *nope = "nope";
    assert_int_equal(polis__jwt_issuer_mask(v, &nope, 1, &mask), POLIS_ENOTFOUND);
    const char *files = "files";
    assert_int_equal(polis__jwt_issuer_mask(v, &files, 1, &mask), 0);
    assert_int_equal(verify_file(v, f, unit_now, mask, &res), 0);
    assert_true(res.cached);
    polis__jwt_result_free(&res);

    /* A bad token is never cached: each try checks again. */
    uint64_t before = sig_checks(v);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(
            verify_file(v, "tokens/bad/tampered-payload.jwt", unit_now, POLIS_JWT_ANY_ISSUER, &res),
            POLIS_EBADMSG);
        polis__jwt_result_free(&res);
    }
    assert_int_equal(sig_checks(v), before + 3);

    /* Tokens without exp are not cached. */
    before = sig_checks(v);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(verify_file(v, "tokens/good/noexp-issuer-no-exp.jwt", unit_now,
                                     POLIS_JWT_ANY_ISSUER, &res),
                         0);
        assert_false(res.cached);
        polis__jwt_result_free(&res);
    }
    assert_int_equal(sig_checks(v), before + 2);
    polis__jwt_free(v);
}

/* An entry is never used at or past exp, even within the leeway the full check allows. */
static void test_cache_exp(void **state)
{
    struct polis_jwt_verifier *v = mk_main(64);
    struct polis_jwt_result res = {0};
    const int64_t exp = 4102444800;
    const char *f = "tokens/good/eddsa.jwt";
    assert_int_equal(verify_file(v, f, exp - 10, POLIS_JWT_ANY_ISSUER, &res), 0);
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, f, exp - 1, POLIS_JWT_ANY_ISSUER, &res), 0);
    assert_true(res.cached);
    polis__jwt_result_free(&res);
    uint64_t before = sig_checks(v);
    assert_int_equal(verify_file(v, f, exp, POLIS_JWT_ANY_ISSUER, &res), 0); /* leeway */
    assert_false(res.cached);
    polis__jwt_result_free(&res);
    assert_int_equal(sig_checks(v), before + 1);
    assert_int_equal(verify_file(v, f, exp + 60, POLIS_JWT_ANY_ISSUER, &res), POLIS_EBADMSG);
    assert_int_equal(res.reason, POLIS_JWT_EXPIRED);
    polis__jwt_result_free(&res);
    /* The clock going back before nbf - leeway: the cache does not answer. */
    assert_int_equal(verify_file(v, f, unit_now, POLIS_JWT_ANY_ISSUER, &res), 0);
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, f, 1700000000 - 61, POLIS_JWT_ANY_ISSUER, &res), POLIS_EBADMSG);
    assert_int_equal(res.reason, POLIS_JWT_NBF);
    polis__jwt_result_free(&res);
    polis__jwt_free(v);
}

/* The cache is bounded: 8 entries (one set) hold the 8 most recently used tokens. */
static void test_cache_bounded(void **state)
{
    struct polis_jwt_verifier *v = mk_main(5); /* rounded up to 8 */
    struct polis_jwt_stats st;
    polis__jwt_stats(v, &st);
    assert_int_equal(st.cache_capacity, 8);
    const char *files[10] = {"hs256", "hs384", "hs512", "rs256", "rs384",
                             "rs512", "ps256", "es256", "es384", "eddsa"};
    char rel[10][64];
    struct polis_jwt_result res = {0};
    for (int i = 0; i < 10; i++) {
        snprintf(rel[i], sizeof(rel[i]), "tokens/good/%s.jwt", files[i]);
        assert_int_equal(verify_file(v, rel[i], unit_now, POLIS_JWT_ANY_ISSUER, &res), 0);
        polis__jwt_result_free(&res);
    }
    assert_int_equal(sig_checks(v), 10);
    for (int i = 2; i < 10; i++) { /* the last 8 are there */
        assert_int_equal(verify_file(v, rel[i], unit_now, POLIS_JWT_ANY_ISSUER, &res), 0);
        assert_true(res.cached);
        polis__jwt_result_free(&res);
    }
    assert_int_equal(sig_checks(v), 10);
    assert_int_equal(verify_file(v, rel[0], unit_now, POLIS_JWT_ANY_ISSUER, &res), 0);
    assert_false(res.cached); /* evicted; it now replaces the least recently used (rel[2]) */
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, rel[3], unit_now, POLIS_JWT_ANY_ISSUER, &res), 0);
    assert_true(res.cached);
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, rel[2], unit_now, POLIS_JWT_ANY_ISSUER, &res), 0);
    assert_false(res.cached);
    polis__jwt_result_free(&res);
    polis__jwt_free(v);
}

/* ---- Keys and configuration ---------------------------------------------------------------- */

/* An issuer whose only key is an RSA public key, even when it allows HS256: a token signed
 * with HMAC over that key's PEM is refused, with or without a kid. */
static void test_public_key_never_hmac(void **state)
{
    const char *algs[] = {"RS256", "HS256"};
    const char *auds[] = {"polis-api"};
    struct polis_jwt_key_opts k = {.path = DATA "keys/rsa-1.pub.pem", .kid = "rsa-1"};
    struct polis_jwt_issuer_opts o = {.name = "files",
                                      .issuer = "https://issuer.polis.test",
                                      .audiences = auds,
                                      .n_audiences = 1,
                                      .algorithms = algs,
                                      .n_algorithms = 2,
                                      .keys = &k,
                                      .n_keys = 1};
    struct polis_jwt_verifier *v = NULL;
    char err[256];
    assert_int_equal(polis__jwt_new(&o, 1, 16, &v, err, sizeof(err)), 0);
    struct polis_jwt_result res = {0};
    assert_int_equal(verify_file(v, "tokens/bad/hs256-rsa-public-key-as-secret.jwt", unit_now,
                                 POLIS_JWT_ANY_ISSUER, &res),
                     POLIS_EBADMSG);
    assert_int_equal(res.reason, POLIS_JWT_ALG);
    polis__jwt_result_free(&res);
    assert_int_equal(verify_file(v, "tokens/bad/hs256-rsa-public-key-as-secret-no-kid.jwt",
                                 unit_now, POLIS_JWT_ANY_ISSUER, &res),
                     POLIS_EBADMSG);
    assert_int_equal(res.reason, POLIS_JWT_NO_KEY);
    polis__jwt_result_free(&res);
    assert_int_equal(sig_checks(v), 0);
    assert_int_equal(verify_file(v, "tokens/good/rs256.jwt", unit_now, POLIS_JWT_ANY_ISSUER, &res),
                     0);
    polis__jwt_result_free(&res);
    polis__jwt_free(v);

    /* The PEM file declared as a secret is refused at configuration time. */
    k.secret = true;
    k.alg = "HS256";
    assert_int_equal(polis__jwt_new(&o, 1, 16, &v, err, sizeof(err)), POLIS_EINVAL);
    assert_non_null(strstr(err, "PEM"));
}

struct bad_cfg {
    const char *what;
    struct polis_jwt_key_opts key;
    const char *alg;
    const char *jwks_url, *jwks_ca_file, *jwks_json;
    uint64_t leeway_ms;
    const char *expect; /* a piece of the error message */
};

static void test_config_errors(void **state)
{
    const struct bad_cfg cases[] = {
        {"key file missing", {.path = DATA "keys/nope.pem"}, NULL, NULL, NULL, NULL, 0, "nope"},
        {"PEM pinned to HMAC",
         {.path = DATA "keys/rsa-1.pub.pem", .alg = "HS256"},
         "HS256",
         NULL,
         NULL,
         NULL,
         0,
         "secret"},
        {"secret too short",
         {.path = DATA "keys/hs-short.secret", .secret = true},
         "HS256",
         NULL,
         NULL,
         NULL,
         0,
         "at least 32"},
        {"secret short for HS512",
         {.path = DATA "keys/hs-256.secret", .secret = true, .alg = "HS512"},
         "HS512",
         NULL,
         NULL,
         NULL,
         0,
         "does not fit"},
        {"secret pinned to RS256",
         {.path = DATA "keys/hs-256.secret", .secret = true, .alg = "RS256"},
         NULL,
         NULL,
         NULL,
         NULL,
         0,
         "secret is for"},
        {"weak RSA", {.path = DATA "keys/rsa-1024.pub.pem"}, NULL, NULL, NULL, NULL, 0, "1024"},
        {"RSA pinned to ES256",
         {.path = DATA "keys/rsa-1.pub.pem", .alg = "ES256"},
         "ES256",
         NULL,
         NULL,
         NULL,
         0,
         "does not fit"},
        {"private key",
         {.path = DATA "keys/rsa-1.key.pem"},
         NULL,
         NULL,
         NULL,
         NULL,
         0,
         "not a PEM public key"},
        {"unknown algorithm",
         {.path = DATA "keys/rsa-1.pub.pem"},
         "none",
         NULL,
         NULL,
         NULL,
         0,
         "unsupported algorithm"},
        {"key unusable for the issuer",
         {.path = DATA "keys/ec-256.pub.pem"},
         NULL,
         NULL,
         NULL,
         NULL,
         0,
         "among the issuer"},
        {"path-like kid",
         {.path = DATA "keys/rsa-1.pub.pem", .kid = "a/b"},
         NULL,
         NULL,
         NULL,
         NULL,
         0,
         "kid"},
        {"plain http JWKS", {0}, NULL, "http://localhost/jwks.json", NULL, NULL, 0, "https"},
        {"JWKS URL with userinfo",
         {0},
         NULL,
         "https://u@localhost/jwks.json",
         NULL,
         NULL,
         0,
         "https"},
        {"CA file missing",
         {0},
         NULL,
         "https://localhost/jwks.json",
         DATA "tls/nope.pem",
         NULL,
         0,
         "CA certificates"},
        {"inline JWKS not JSON", {0}, NULL, NULL, NULL, "{keys", 0, "not JSON"},
        {"inline JWKS empty", {0}, NULL, NULL, NULL, "{\"keys\":[]}", 0, "usable key"},
        {"leeway too long",
         {.path = DATA "keys/rsa-1.pub.pem"},
         NULL,
         NULL,
         NULL,
         NULL,
         86400001,
         "leeway"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct bad_cfg *c = &cases[i];
        const char *algs[] = {c->alg ? c->alg : "RS256"};
        struct polis_jwt_issuer_opts o = {.name = "x",
                                          .issuer = "https://x.test",
                                          .algorithms = algs,
                                          .n_algorithms = 1,
                                          .keys = c->key.path ? &c->key : NULL,
                                          .n_keys = c->key.path ? 1 : 0,
                                          .jwks_url = c->jwks_url,
                                          .jwks_ca_file = c->jwks_ca_file,
                                          .jwks_json = c->jwks_json,
                                          .leeway_ms = c->leeway_ms};
        struct polis_jwt_verifier *v = NULL;
        char err[256] = "";
        int rc = polis__jwt_new(&o, 1, 16, &v, err, sizeof(err));
        if (rc != POLIS_EINVAL || strstr(err, c->expect) == NULL)
            fail_msg("%s: rc %d, err \"%s\"", c->what, rc, err);
        assert_null(v);
    }
    /* Issuer-level errors. */
    const char *algs[] = {"RS256"};
    struct polis_jwt_key_opts k = {.path = DATA "keys/rsa-1.pub.pem"};
    struct polis_jwt_issuer_opts two[2] = {
        {.name = "a",
         .issuer = "https://a",
         .algorithms = algs,
         .n_algorithms = 1,
         .keys = &k,
         .n_keys = 1},
        {.name = "a",
         .issuer = "https://b",
         .algorithms = algs,
         .n_algorithms = 1,
         .keys = &k,
         .n_keys = 1},
    };
    struct polis_jwt_verifier *v = NULL;
    char err[256];
    assert_int_equal(polis__jwt_new(two, 2, 0, &v, err, sizeof(err)), POLIS_EINVAL);
    two[1].name = "b";
    two[1].issuer = "https://a";
    assert_int_equal(polis__jwt_new(two, 2, 0, &v, err, sizeof(err)), POLIS_EINVAL);
    two[1].issuer = "https://b";
    two[1].n_algorithms = 0;
    assert_int_equal(polis__jwt_new(two, 2, 0, &v, err, sizeof(err)), POLIS_EINVAL);
    assert_non_null(strstr(err, "no algorithms"));
    two[1].n_algorithms = 1;
    two[1].n_keys = 0;
    assert_int_equal(polis__jwt_new(two, 2, 0, &v, err, sizeof(err)), POLIS_EINVAL);
    assert_non_null(strstr(err, "no keys"));
    two[1].n_keys = 1;
    assert_int_equal(polis__jwt_new(two, 0, 0, &v, err, sizeof(err)), POLIS_EINVAL);
    assert_int_equal(polis__jwt_new(two, 2, (1u << 22) + 1, &v, err, sizeof(err)), POLIS_EINVAL);
    assert_int_equal(polis__jwt_new(two, 2, 0, &v, err, sizeof(err)), 0);
    polis__jwt_free(v);
}

/* An inline JWK set behaves like the same set in a file. */
static void test_jwks_inline(void **state)
{
    char *doc = slurp(DATA "keys/jwks.json", NULL);
    const char *algs[] = {"RS256", "PS256", "ES256", "EdDSA", "HS256"};
    const char *auds[] = {"polis-api"};
    struct polis_jwt_issuer_opts o = {.name = "jwks",
                                      .issuer = "https://jwks.polis.test",
                                      .audiences = auds,
                                      .n_audiences = 1,
                                      .algorithms = algs,
                                      .n_algorithms = 5,
                                      .jwks_json = doc,
                                      .leeway_ms = 60000};
    struct polis_jwt_verifier *v = NULL;
    char err[256];
    assert_int_equal(polis__jwt_new(&o, 1, 0, &v, err, sizeof(err)), 0);
    free(doc);
    struct polis_jwt_issuer_stats is;
    assert_int_equal(polis__jwt_issuer_stats(v, "jwks", &is), 0);
    assert_int_equal(is.keys, 4);
    assert_int_equal(is.fetches, 0);
    assert_int_equal(polis__jwt_issuer_stats(v, "other", &is), POLIS_ENOTFOUND);
    const char *good[] = {"jwks-rs256", "jwks-es256", "jwks-eddsa", "jwks-hs256-oct"};
    for (size_t i = 0; i < 4; i++) {
        char rel[64];
        snprintf(rel, sizeof(rel), "tokens/good/%s.jwt", good[i]);
        struct polis_jwt_result res = {0};
        assert_int_equal(verify_file(v, rel, unit_now, POLIS_JWT_ANY_ISSUER, &res), 0);
        polis__jwt_result_free(&res);
    }
    polis__jwt_free(v);
}

static int parse_jwks(const char *doc, bool allow_oct, size_t *n, size_t *skipped)
{
    struct polis_jwt_keys keys = {0};
    char err[256];
    int rc = polis__jwt_jwks_parse(doc, strlen(doc), allow_oct, &keys, skipped, err, sizeof(err));
    *n = keys.n;
    polis__jwt_keys_free(&keys);
    return rc;
}

static void test_jwks_parse(void **state)
{
    size_t n = 0, skipped = 0;
    char *doc = slurp(DATA "keys/jwks.json", NULL);
    assert_int_equal(parse_jwks(doc, true, &n, &skipped), 0);
    assert_int_equal(n, 4);       /* RSA, EC, OKP, oct */
    assert_int_equal(skipped, 3); /* the enc key, an unknown kty, P-521 */
    assert_int_equal(parse_jwks(doc, false, &n, &skipped), 0);
    assert_int_equal(n, 3); /* no secrets from a URL */
    assert_int_equal(skipped, 4);
    free(doc);

    /* Per-key rules. */
    const struct {
        const char *doc;
        size_t keys;
    } cases[] = {
        {"{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
         "\"key_ops\":[\"sign\"]}]}",
         0},
        {"{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
         "\"key_ops\":[\"verify\"],\"use\":\"sig\",\"alg\":\"HS256\"}]}",
         1},
        {"{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAA\"}]}", 0}, /* too short */
        {"{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
         "\"alg\":\"RS256\"}]}",
         0}, /* alg of another type */
        /* Not on the curve. */
        {"{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":"
         "\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\",\"y\":"
         "\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}",
         0},
        {"{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed448\",\"x\":\"AAAA\"}]}", 0},
        {"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", 0}, /* tiny */
        {"{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":"
         "\"lbRNgGys7zDY7w012pgddBowcMZEHxgQtf-YCyOqRm4\",\"kid\":7}]}",
         0}, /* kid not a string */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = parse_jwks(cases[i].doc, true, &n, &skipped);
        if (cases[i].keys == 0) {
            if (rc != POLIS_EINVAL)
                fail_msg("case %zu: accepted", i);
        } else {
            assert_int_equal(rc, 0);
            assert_int_equal(n, cases[i].keys);
        }
    }
    /* Document rules. */
    assert_int_equal(parse_jwks("[]", true, &n, &skipped), POLIS_EINVAL);
    assert_int_equal(parse_jwks("{\"keys\":{}}", true, &n, &skipped), POLIS_EINVAL);
    assert_int_equal(parse_jwks("{\"keys\":[],\"keys\":[]}", true, &n, &skipped), POLIS_EINVAL);
    /* 101 keys: refused as a whole, even when each is fine. */
    const char *one = "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":"
                      "\"lbRNgGys7zDY7w012pgddBowcMZEHxgQtf-YCyOqRm4\"}";
    struct polis_buf b;
    polis_buf_init(&b, 1u << 22);
    for (int count = 100; count <= 101; count++) {
        b.start = b.end = 0;
        assert_int_equal(polis_buf_printf(&b, "{\"keys\":["), 0);
        for (int i = 0; i < count; i++)
            assert_int_equal(polis_buf_printf(&b, "%s%s", i ? "," : "", one), 0);
        assert_int_equal(polis_buf_printf(&b, "]}%c", '\0'), 0);
        int rc = parse_jwks(polis_buf_head(&b), true, &n, &skipped);
        assert_int_equal(rc, count == 100 ? 0 : POLIS_EINVAL);
    }
    /* Over 1 MiB: refused. */
    b.start = b.end = 0;
    assert_int_equal(polis_buf_printf(&b, "{\"keys\":[%s],\"pad\":\"", one), 0);
    while (polis_buf_len(&b) <= POLIS_JWT_MAX_JWKS)
        assert_int_equal(polis_buf_printf(&b, "xxxxxxxxxxxxxxxx"), 0);
    assert_int_equal(polis_buf_printf(&b, "\"}%c", '\0'), 0);
    assert_int_equal(parse_jwks(polis_buf_head(&b), true, &n, &skipped), POLIS_EINVAL);
    polis_buf_free(&b);
}

static void test_b64url(void **state)
{
    unsigned char out[16];
    size_t n = 99;
    assert_int_equal(polis__jwt_b64url_decode("", 0, out, sizeof(out), &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(polis__jwt_b64url_decode("QQ", 2, out, sizeof(out), &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0], 'A');
    assert_int_equal(polis__jwt_b64url_decode("QUJD", 4, out, sizeof(out), &n), 0);
    assert_memory_equal(out, "ABC", 3);
    assert_int_equal(polis__jwt_b64url_decode("-_8", 3, out, sizeof(out), &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
    assert_int_equal(polis__jwt_b64url_decode("QR", 2, out, sizeof(out), &n), POLIS_EBADMSG);
    assert_int_equal(polis__jwt_b64url_decode("Q", 1, out, sizeof(out), &n), POLIS_EBADMSG);
    assert_int_equal(polis__jwt_b64url_decode("QQ==", 4, out, sizeof(out), &n), POLIS_EBADMSG);
    assert_int_equal(polis__jwt_b64url_decode("+/8", 3, out, sizeof(out), &n), POLIS_EBADMSG);
    assert_int_equal(polis__jwt_b64url_decode("QU D", 4, out, sizeof(out), &n), POLIS_EBADMSG);
    assert_int_equal(polis__jwt_b64url_decode("QUJD", 4, out, 2, &n), POLIS_ETOOBIG);
}

/* ---- Claims for the gateway ---------------------------------------------------------------- */

static json_t *claims_of(struct polis_jwt_verifier *v, const char *rel)
{
    struct polis_jwt_result res = {0};
    assert_int_equal(verify_file(v, rel, unit_now, POLIS_JWT_ANY_ISSUER, &res), 0);
    json_t *c = json_incref(res.claims);
    polis__jwt_result_free(&res);
    return c;
}

static void test_claims(void **state)
{
    struct polis_jwt_verifier *v = mk_main(16);
    json_t *c = claims_of(v, "tokens/good/claims-unicode.jwt");
    assert_true(polis__jwt_claim_equals(c, "sub", "user-123"));
    assert_false(polis__jwt_claim_equals(c, "sub", "user-12"));
    assert_false(polis__jwt_claim_equals(c, "sub", "user-1234"));
    assert_true(polis__jwt_claim_equals(c, "groups", "b")); /* an array holding it */
    assert_false(polis__jwt_claim_equals(c, "groups", "c"));
    assert_true(polis__jwt_claim_equals(c, "tenant", "42"));
    assert_true(polis__jwt_claim_equals(c, "admin", "true"));
    assert_false(polis__jwt_claim_equals(c, "admin", "false"));
    assert_false(polis__jwt_claim_equals(c, "missing", ""));
    char buf[128];
    size_t n = 0;
    assert_int_equal(polis__jwt_claim_string(c, "name", buf, sizeof(buf), &n), 0);
    assert_string_equal(buf, "Zo\xc3\xab \xc3\x9cn\xc3\xaf"
                             "c\xc3\xb8"
                             "d\xc3\xa9 \xe2\x9c\x93");
    assert_int_equal(n, strlen(buf));
    assert_int_equal(polis__jwt_claim_string(c, "tenant", buf, sizeof(buf), &n), 0);
    assert_string_equal(buf, "42");
    assert_int_equal(polis__jwt_claim_string(c, "admin", buf, sizeof(buf), &n), 0);
    assert_string_equal(buf, "true");
    assert_int_equal(polis__jwt_claim_string(c, "groups", buf, sizeof(buf), &n), 0);
    assert_string_equal(buf, "[\"a\",\"b\"]");
    assert_int_equal(polis__jwt_claim_string(c, "nope", buf, sizeof(buf), &n), POLIS_ENOTFOUND);
    assert_int_equal(polis__jwt_claim_string(c, "sub", buf, 8, &n), POLIS_ETOOBIG);
    assert_int_equal(polis__jwt_claim_string(c, "sub", buf, 9, &n), 0);
    json_decref(c);

    json_t *inj = json_pack("{s:s, s:s, s:n}", "x", "a\r\nX-Admin: 1", "t", "a\tb", "z");
    assert_int_equal(polis__jwt_claim_string(inj, "x", buf, sizeof(buf), &n), POLIS_EINVAL);
    assert_int_equal(polis__jwt_claim_string(inj, "t", buf, sizeof(buf), &n), 0);
    assert_int_equal(polis__jwt_claim_string(inj, "z", buf, sizeof(buf), &n), POLIS_ENOTFOUND);
    json_decref(inj);

    c = claims_of(v, "tokens/good/scope-string.jwt");
    const char *rw[] = {"read", "write"}, *ra[] = {"read", "admin"}, *rd[] = {"rea"},
               *adm[] = {"admin", "write", "read"}, *other[] = {"delete"};
    assert_true(polis__jwt_has_scopes(c, rw, 2));
    assert_true(polis__jwt_has_scopes(c, adm, 3));
    assert_false(polis__jwt_has_scopes(c, rd, 1));
    assert_false(polis__jwt_has_scopes(c, other, 1));
    assert_true(polis__jwt_has_scopes(c, NULL, 0));
    json_decref(c);
    c = claims_of(v, "tokens/good/scp-array.jwt");
    assert_true(polis__jwt_has_scopes(c, rw, 2));
    assert_false(polis__jwt_has_scopes(c, ra, 2));
    json_decref(c);
    json_t *s = json_pack("{s:s}", "scp", "read  write");
    assert_true(polis__jwt_has_scopes(s, rw, 2));
    json_decref(s);
    polis__jwt_free(v);
}

static void test_bearer(void **state)
{
    struct polis_str t;
    assert_int_equal(polis__jwt_bearer(POLIS_STR("Bearer abc.def.ghi"), &t), 0);
    assert_true(polis_str_eq(t, POLIS_STR("abc.def.ghi")));
    assert_int_equal(polis__jwt_bearer(POLIS_STR("bearer   abc \t"), &t), 0);
    assert_true(polis_str_eq(t, POLIS_STR("abc")));
    assert_int_equal(polis__jwt_bearer(POLIS_STR("Basic abc"), &t), POLIS_EINVAL);
    assert_int_equal(polis__jwt_bearer(POLIS_STR("Bearer"), &t), POLIS_EINVAL);
    assert_int_equal(polis__jwt_bearer(POLIS_STR("Bearer "), &t), POLIS_EINVAL);
    assert_int_equal(polis__jwt_bearer(POLIS_STR("Bearerabc"), &t), POLIS_EINVAL);
    assert_int_equal(polis__jwt_bearer(POLIS_STR("Bearer a b"), &t), POLIS_EINVAL);
    assert_int_equal(polis__jwt_bearer(POLIS_STR("Bearer\tabc"), &t), POLIS_EINVAL);
}

/* ---- Threads ------------------------------------------------------------------------------- */

struct worker_arg {
    struct polis_jwt_verifier *v;
    char *tokens[40];
    size_t lens[40];
    bool accept[40];
    size_t n;
    int seed;
    int errors;
};

static void *worker(void *p)
{
    struct worker_arg *a = p;
    unsigned s = (unsigned)a->seed;
    for (int i = 0; i < 3000; i++) {
        s = s * 1103515245u + 12345u;
        size_t k = (s >> 8) % a->n;
        struct polis_jwt_result res = {0};
        int rc =
            polis__jwt_verify(a->v, a->tokens[k], a->lens[k], unit_now, POLIS_JWT_ANY_ISSUER, &res);
        if ((rc == 0) != a->accept[k] || (rc == 0 && res.claims == NULL))
            a->errors++;
        if (rc == 0 && !polis__jwt_claim_equals(res.claims, "sub", "user-123"))
            a->errors++;
        polis__jwt_result_free(&res);
    }
    return NULL;
}

/* Four threads verify a mix of good and bad tokens through a cache too small for them all
 * (constant eviction); every answer stays right. */
static void test_threads(void **state)
{
    struct polis_jwt_verifier *v = mk_main(16);
    struct worker_arg args[4];
    const char *good[] = {"hs256",          "hs512",
                          "es256",          "eddsa",
                          "rs256",          "ps256",
                          "aud-array",      "typ-at-jwt",
                          "jwks-hs256-oct", "jwks-eddsa",
                          "hs384",          "no-typ",
                          "es256-no-kid",   "hs256-no-kid",
                          "typ-lowercase",  "aud-second-audience",
                          "jwks-es256",     "header-unknown-fields",
                          "rs256-no-kid",   "es384"};
    const char *bad[] = {"alg-none",
                         "expired",
                         "tampered-payload",
                         "kid-unknown",
                         "aud-wrong",
                         "signature-attacker-ec",
                         "tampered-signature-hs256",
                         "iat-future"};
    for (int w = 0; w < 4; w++) {
        struct worker_arg *a = &args[w];
        memset(a, 0, sizeof(*a));
        a->v = v;
        a->seed = w + 1;
        for (size_t i = 0; i < 20; i++) {
            char rel[96];
            snprintf(rel, sizeof(rel), "tokens/good/%s.jwt", good[i]);
            a->tokens[a->n] = token_file(rel, &a->lens[a->n]);
            a->accept[a->n++] = true;
        }
        for (size_t i = 0; i < 8; i++) {
            char rel[96];
            snprintf(rel, sizeof(rel), "tokens/bad/%s.jwt", bad[i]);
            a->tokens[a->n] = token_file(rel, &a->lens[a->n]);
            a->accept[a->n++] = false;
        }
    }
    pthread_t th[4];
    for (int w = 0; w < 4; w++)
        assert_int_equal(pthread_create(&th[w], NULL, worker, &args[w]), 0);
    for (int w = 0; w < 4; w++) {
        pthread_join(th[w], NULL);
        assert_int_equal(args[w].errors, 0);
        for (size_t i = 0; i < args[w].n; i++)
            free(args[w].tokens[i]);
    }
    struct polis_jwt_stats st;
    polis__jwt_stats(v, &st);
    assert_int_equal(st.verified + st.rejected, 4 * 3000);
    assert_true(st.cache_hits > 0);
    assert_true(st.signature_checks < 4 * 3000);
    polis__jwt_free(v);
}

/* ---- JWK sets over HTTPS ------------------------------------------------------------------- */

enum serve_mode { SERVE_OK, SERVE_CHUNKED, SERVE_500, SERVE_GARBAGE, SERVE_TRUNCATED, SERVE_HANG };

/* A TLS server on 127.0.0.1 (and ::1 when it can), one connection at a time, answering every
 * GET with the current document in the current mode, and recording when each request came. */
struct server {
    SSL_CTX *ctx;
    int fd4, fd6, port;
    pthread_t th;
    atomic_bool stop;
    pthread_mutex_t mu;
    char *doc; /* the JWK set served */
    enum serve_mode mode;
    uint64_t times[64]; /* monotonic ms of each request */
    size_t requests;
    char last_host[128]; /* the SNI name of the last handshake */
};

static void server_set(struct server *s, const char *doc_file, enum serve_mode mode)
{
    pthread_mutex_lock(&s->mu);
    if (doc_file != NULL) {
        free(s->doc);
        s->doc = slurp(doc_file, NULL);
    }
    s->mode = mode;
    pthread_mutex_unlock(&s->mu);
}

static size_t server_requests(struct server *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->requests;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void ssl_write_all(SSL *ssl, const char *p, size_t n)
{
    while (n > 0) {
        int w = SSL_write(ssl, p, (int)n);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void serve_one(struct server *s, int c)
{
    struct timeval tv = {2, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    SSL *ssl = SSL_new(s->ctx);
    SSL_set_fd(ssl, c);
    if (SSL_accept(ssl) != 1)
        goto out;
    char req[4096];
    size_t n = 0;
    while (n < sizeof(req) - 1) {
        int r = SSL_read(ssl, req + n, (int)(sizeof(req) - 1 - n));
        if (r <= 0)
            goto out;
        n += (size_t)r;
        req[n] = '\0';
        if (strstr(req, "\r\n\r\n") != NULL)
            break;
    }
    pthread_mutex_lock(&s->mu);
    if (s->requests < 64)
        s->times[s->requests] = polis__mono_ms();
    s->requests++;
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    snprintf(s->last_host, sizeof(s->last_host), "%s", sni ? sni : "");
    enum serve_mode mode = s->mode;
    char *doc = strdup(s->doc ? s->doc : "");
    pthread_mutex_unlock(&s->mu);
    char head[256];
    size_t dl = strlen(doc);
    switch (mode) {
    case SERVE_OK:
        snprintf(head, sizeof(head),
                 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n",
                 dl);
        ssl_write_all(ssl, head, strlen(head));
        ssl_write_all(ssl, doc, dl);
        break;
    case SERVE_CHUNKED: {
        const char *h = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        ssl_write_all(ssl, h, strlen(h));
        for (size_t off = 0; off < dl; off += 100) {
            size_t k = dl - off < 100 ? dl - off : 100;
            snprintf(head, sizeof(head), "%zx\r\n", k);
            ssl_write_all(ssl, head, strlen(head));
            ssl_write_all(ssl, doc + off, k);
            ssl_write_all(ssl, "\r\n", 2);
        }
        ssl_write_all(ssl, "0\r\n\r\n", 5);
        break;
    }
    case SERVE_500: {
        const char *h = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\nno";
        ssl_write_all(ssl, h, strlen(h));
        break;
    }
    case SERVE_GARBAGE: {
        const char *h = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!";
        ssl_write_all(ssl, h, strlen(h));
        break;
    }
    case SERVE_TRUNCATED:
        snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", dl);
        ssl_write_all(ssl, head, strlen(head));
        ssl_write_all(ssl, doc, dl / 2);
        break;
    case SERVE_HANG:
        for (int i = 0; i < 100 && !atomic_load(&s->stop); i++)
            usleep(30000);
        break;
    }
    free(doc);
    SSL_shutdown(ssl);
out:
    SSL_free(ssl);
    close(c);
}

static void *server_main(void *p)
{
    struct server *s = p;
    while (!atomic_load(&s->stop)) {
        struct pollfd pf[2] = {{.fd = s->fd4, .events = POLLIN}, {.fd = s->fd6, .events = POLLIN}};
        int n = poll(pf, s->fd6 >= 0 ? 2 : 1, 50);
        for (int i = 0; i < 2 && n > 0; i++) {
            if (!(pf[i].revents & POLLIN))
                continue;
            int c = accept(pf[i].fd, NULL, NULL);
            if (c >= 0)
                serve_one(s, c);
        }
    }
    return NULL;
}

static void server_start(struct server *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    s->ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(s->ctx);
    assert_int_equal(SSL_CTX_use_certificate_chain_file(s->ctx, DATA "tls/server.pem"), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(s->ctx, DATA "tls/server.key", SSL_FILETYPE_PEM),
                     1);
    s->fd4 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->fd4, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd4, 16), 0);
    socklen_t al = sizeof(a);
    getsockname(s->fd4, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    /* "localhost" may resolve to ::1 first: listen there too on the same port when possible. */
    s->fd6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6,
                              .sin6_addr = IN6ADDR_LOOPBACK_INIT,
                              .sin6_port = htons((uint16_t)s->port)};
    int one = 1;
    if (s->fd6 >= 0)
        setsockopt(s->fd6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (s->fd6 >= 0 &&
        (bind(s->fd6, (struct sockaddr *)&a6, sizeof(a6)) < 0 || listen(s->fd6, 16) < 0)) {
        close(s->fd6);
        s->fd6 = -1;
    }
    assert_int_equal(pthread_create(&s->th, NULL, server_main, s), 0);
}

static void server_stop(struct server *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->th, NULL);
    close(s->fd4);
    if (s->fd6 >= 0)
        close(s->fd6);
    SSL_CTX_free(s->ctx);
    free(s->doc);
    pthread_mutex_destroy(&s->mu);
}

struct remote {
    char url[128];
    const char *algs[2];
    const char *auds[1];
    struct polis_jwt_issuer_opts o;
};

static void remote_opts(struct remote *r, const char *host, int port, const char *ca,
                        uint64_t refresh_ms, uint64_t min_refresh_ms)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->url, sizeof(r->url), "https://%s:%d/jwks.json", host, port);
    r->algs[0] = "RS256";
    r->algs[1] = "ES256";
    r->auds[0] = "polis-api";
    r->o = (struct polis_jwt_issuer_opts){.name = "remote",
                                          .issuer = "https://remote.polis.test",
                                          .audiences = r->auds,
                                          .n_audiences = 1,
                                          .algorithms = r->algs,
                                          .n_algorithms = 2,
                                          .jwks_url = r->url,
                                          .jwks_ca_file = ca,
                                          .refresh_ms = refresh_ms,
                                          .min_refresh_ms = min_refresh_ms,
                                          .fetch_timeout_ms = 3000,
                                          .leeway_ms = 60000};
}

static struct polis_jwt_issuer_stats remote_stats(struct polis_jwt_verifier *v)
{
    struct polis_jwt_issuer_stats st;
    assert_int_equal(polis__jwt_issuer_stats(v, "remote", &st), 0);
    return st;
}

/* Wait (at most 8 s) until the remote issuer has made at least n fetch attempts and is idle
 * again (the stats of the attempt are written). */
static struct polis_jwt_issuer_stats wait_fetches(struct polis_jwt_verifier *v, uint64_t n)
{
    for (int i = 0; i < 800; i++) {
        struct polis_jwt_issuer_stats st = remote_stats(v);
        if (st.fetches >= n && (st.fetch_failures > 0 || st.keys > 0)) {
            usleep(20000); /* let the attempt finish installing */
            return remote_stats(v);
        }
        usleep(10000);
    }
    fail_msg("no JWKS fetch #%llu", (unsigned long long)n);
    return remote_stats(v);
}

static int verify_remote(struct polis_jwt_verifier *v, const char *name, bool *cached,
                         enum polis_jwt_reason *why)
{
    char rel[64];
    snprintf(rel, sizeof(rel), "tokens/https/%s.jwt", name);
    struct polis_jwt_result res = {0};
    int rc = verify_file(v, rel, unit_now, POLIS_JWT_ANY_ISSUER, &res);
    if (cached != NULL)
        *cached = res.cached;
    if (why != NULL)
        *why = res.reason;
    polis__jwt_result_free(&res);
    return rc;
}

/* Poll until a token verifies (at most 8 s). */
static void wait_accepts(struct polis_jwt_verifier *v, const char *name)
{
    for (int i = 0; i < 800; i++) {
        if (verify_remote(v, name, NULL, NULL) == 0)
            return;
        usleep(10000);
    }
    fail_msg("%s never verified", name);
}

static void test_https_refresh(void **state)
{
    struct server s;
    server_start(&s);
    server_set(&s, DATA "keys/remote-jwks-1.json", SERVE_OK);
    struct remote r;
    const uint64_t min_refresh = 1000;
    remote_opts(&r, "localhost", s.port, DATA "tls/ca.pem", 600000, min_refresh);
    struct polis_jwt_verifier *v = NULL;
    char err[256];
    assert_int_equal(polis__jwt_new(&r.o, 1, 64, &v, err, sizeof(err)), 0);

    /* The first fetch happens at once. */
    struct polis_jwt_issuer_stats st = wait_fetches(v, 1);
    assert_int_equal(st.fetch_failures, 0);
    assert_int_equal(st.keys, 1);
    assert_int_equal(st.key_set_gen, 2);
    assert_string_equal(s.last_host, "localhost"); /* SNI */
    bool cached = false;
    enum polis_jwt_reason why;
    assert_int_equal(verify_remote(v, "remote-1", &cached, NULL), 0);
    assert_false(cached);
    assert_int_equal(verify_remote(v, "remote-1", &cached, NULL), 0);
    assert_true(cached);

    /* A new key appears: the first token with its kid is refused now and wakes the refresher,
     * which waits for min_refresh_ms after the previous fetch; a burst of them makes one fetch. */
    server_set(&s, DATA "keys/remote-jwks-2.json", SERVE_OK);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(verify_remote(v, "remote-2", NULL, &why), POLIS_EBADMSG);
        assert_int_equal(why, POLIS_JWT_NO_KEY);
    }
    wait_accepts(v, "remote-2");
    st = remote_stats(v);
    assert_int_equal(st.fetches, 2);
    assert_int_equal(st.keys, 2);
    assert_int_equal(server_requests(&s), 2);
    assert_true(s.times[1] - s.times[0] >= min_refresh - 100);
    /* The old key's cached token survived (its key set changed: it is checked again once). */
    assert_int_equal(verify_remote(v, "remote-1", &cached, NULL), 0);
    assert_false(cached);
    assert_int_equal(verify_remote(v, "remote-1", &cached, NULL), 0);
    assert_true(cached);

    /* Rotation: remote-1 leaves the set. Its cached entry must not outlive the key. */
    server_set(&s, DATA "keys/remote-jwks-3.json", SERVE_OK);
    assert_int_equal(verify_remote(v, "remote-unknown", NULL, &why), POLIS_EBADMSG);
    assert_int_equal(why, POLIS_JWT_NO_KEY);
    st = wait_fetches(v, 3);
    assert_int_equal(st.keys, 1);
    assert_int_equal(server_requests(&s), 3);
    assert_true(s.times[2] - s.times[1] >= min_refresh - 100);
    uint64_t before = sig_checks(v);
    assert_int_equal(verify_remote(v, "remote-1", &cached, &why), POLIS_EBADMSG);
    assert_false(cached);
    assert_int_equal(why, POLIS_JWT_NO_KEY);
    assert_int_equal(verify_remote(v, "remote-2", NULL, NULL), 0);
    assert_int_equal(sig_checks(v), before + 1);

    /* Failed refreshes keep the keys: a 500, a body that is not JSON, a truncated body. */
    const enum serve_mode fails[] = {SERVE_500, SERVE_GARBAGE, SERVE_TRUNCATED};
    for (size_t i = 0; i < 3; i++) {
        server_set(&s, NULL, fails[i]);
        uint64_t want = remote_stats(v).fetches + 1;
        assert_int_equal(verify_remote(v, "remote-unknown", NULL, NULL), POLIS_EBADMSG);
        for (int k = 0; k < 800 && remote_stats(v).fetch_failures < i + 1; k++)
            usleep(10000);
        st = remote_stats(v);
        assert_int_equal(st.fetches, want);
        assert_int_equal(st.fetch_failures, i + 1);
        assert_true(st.last_error < 0);
        assert_int_equal(st.keys, 1);
        assert_int_equal(verify_remote(v, "remote-2", NULL, NULL), 0);
    }
    /* And a good answer again (chunked this time) is taken. */
    server_set(&s, DATA "keys/remote-jwks-2.json", SERVE_CHUNKED);
    assert_int_equal(verify_remote(v, "remote-unknown", NULL, NULL), POLIS_EBADMSG);
    wait_accepts(v, "remote-1");
    st = remote_stats(v);
    assert_int_equal(st.keys, 2);
    assert_int_equal(st.last_error, 0);
    polis__jwt_free(v);
    server_stop(&s);
}

/* Without any unknown kid, the set is fetched again every refresh_ms; an unchanged document
 * keeps the key set (and so the cache). */
static void test_https_schedule(void **state)
{
    struct server s;
    server_start(&s);
    server_set(&s, DATA "keys/remote-jwks-2.json", SERVE_OK);
    struct remote r;
    remote_opts(&r, "localhost", s.port, DATA "tls/ca.pem", 300, 100);
    struct polis_jwt_verifier *v = NULL;
    char err[256];
    assert_int_equal(polis__jwt_new(&r.o, 1, 64, &v, err, sizeof(err)), 0);
    wait_fetches(v, 1);
    bool cached;
    assert_int_equal(verify_remote(v, "remote-2", &cached, NULL), 0);
    uint64_t t0 = polis__mono_ms();
    wait_fetches(v, 4);
    uint64_t took = polis__mono_ms() - t0;
    assert_true(took >= 3 * 300 - 400); /* not faster than the schedule */
    struct polis_jwt_issuer_stats st = remote_stats(v);
    assert_int_equal(st.key_set_gen, 2); /* same document: same set */
    assert_int_equal(verify_remote(v, "remote-2", &cached, NULL), 0);
    assert_true(cached);
    polis__jwt_free(v);
    server_stop(&s);
}

/* The server's certificate must chain to the configured CA and name the host. */
static void test_https_verification(void **state)
{
    struct server s;
    server_start(&s);
    server_set(&s, DATA "keys/remote-jwks-1.json", SERVE_OK);
    const struct {
        const char *host, *ca;
    } cases[] = {
        {"localhost", DATA "tls/other-ca.pem"}, /* another CA */
        {"127.0.0.1", DATA "tls/ca.pem"},       /* the certificate names localhost only */
    };
    for (size_t i = 0; i < 2; i++) {
        struct remote r;
        remote_opts(&r, cases[i].host, s.port, cases[i].ca, 600000, 100);
        struct polis_jwt_verifier *v = NULL;
        char err[256];
        assert_int_equal(polis__jwt_new(&r.o, 1, 64, &v, err, sizeof(err)), 0);
        struct polis_jwt_issuer_stats st = wait_fetches(v, 1);
        assert_int_equal(st.fetch_failures, 1);
        assert_int_equal(st.last_error, POLIS_ESYS);
        assert_int_equal(st.keys, 0);
        enum polis_jwt_reason why;
        assert_int_equal(verify_remote(v, "remote-1", NULL, &why), POLIS_EBADMSG);
        assert_int_equal(why, POLIS_JWT_NO_KEY);
        polis__jwt_free(v);
    }
    assert_int_equal(server_requests(&s), 0); /* no request was ever sent */
    server_stop(&s);
}

/* Freeing the verifier while a fetch waits on a silent server returns quickly. */
static void test_https_free_during_fetch(void **state)
{
    struct server s;
    server_start(&s);
    server_set(&s, DATA "keys/remote-jwks-1.json", SERVE_HANG);
    struct remote r;
    remote_opts(&r, "localhost", s.port, DATA "tls/ca.pem", 600000, 100);
    r.o.fetch_timeout_ms = 20000;
    struct polis_jwt_verifier *v = NULL;
    char err[256];
    assert_int_equal(polis__jwt_new(&r.o, 1, 64, &v, err, sizeof(err)), 0);
    for (int i = 0; i < 500 && server_requests(&s) == 0; i++)
        usleep(10000);
    assert_int_equal(server_requests(&s), 1);
    uint64_t t0 = polis__mono_ms();
    polis__jwt_free(v);
    assert_true(polis__mono_ms() - t0 < 1000);
    server_stop(&s);
}

static void test_url_parse(void **state)
{
    struct polis_jwt_url u;
    assert_int_equal(polis__jwt_url_parse("https://idp.example.com/.well-known/jwks.json", &u), 0);
    assert_string_equal(u.host, "idp.example.com");
    assert_string_equal(u.port, "443");
    assert_string_equal(u.target, "/.well-known/jwks.json");
    assert_false(u.ip);
    polis__jwt_url_free(&u);
    assert_int_equal(polis__jwt_url_parse("HTTPS://[::1]:8443?x=1", &u), 0);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.hostport, "[::1]:8443");
    assert_string_equal(u.port, "8443");
    assert_string_equal(u.target, "/?x=1");
    assert_true(u.ip);
    polis__jwt_url_free(&u);
    assert_int_equal(polis__jwt_url_parse("https://10.0.0.1:1/k", &u), 0);
    assert_true(u.ip);
    polis__jwt_url_free(&u);
    const char *bad[] = {"http://a/b",      "https://",      "https://:443/", "https://a:0/",
                         "https://a:65536", "https://a:x/",  "https://u@a/",  "https://a/b#c",
                         "https://a/b c",   "https://[zz]/", "https://[::1",  "https://a b/",
                         "https://[::1]x/"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (polis__jwt_url_parse(bad[i], &u) != POLIS_EINVAL)
            fail_msg("%s accepted", bad[i]);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus),
        cmocka_unit_test(test_corpus_no_cache),
        cmocka_unit_test(test_manifest_complete),
        cmocka_unit_test(test_leeway),
        cmocka_unit_test(test_cache_hit),
        cmocka_unit_test(test_cache_exp),
        cmocka_unit_test(test_cache_bounded),
        cmocka_unit_test(test_public_key_never_hmac),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_jwks_inline),
        cmocka_unit_test(test_jwks_parse),
        cmocka_unit_test(test_b64url),
        cmocka_unit_test(test_claims),
        cmocka_unit_test(test_bearer),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_url_parse),
        cmocka_unit_test(test_https_refresh),
        cmocka_unit_test(test_https_schedule),
        cmocka_unit_test(test_https_verification),
        cmocka_unit_test(test_https_free_during_fetch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
