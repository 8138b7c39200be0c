/* Unit tests of CORS (lib/security/cors.c): configuration checks, preflight answers, headers of
 * normal responses, wildcards with and without credentials, and origins that must not be
 * echoed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "security/cors.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

#define LIST(...) ((const char *const[]){__VA_ARGS__})

static struct polis_str S_(const char *s) {
    return s != NULL ? (struct polis_str){s, strlen(s)} : (struct polis_str){NULL, 0};
}

static struct polis_cors *
mk(const struct polis_cors_spec *spec)
{
    struct polis_cors *c = NULL;
    char err[200] = "";
    if (polis__cors_new(spec, &c, err, sizeof(err)) != 0)
        fail_msg("config refused: %s", err);
    return c;
}

static void expect_bad(const struct polis_cors_spec *spec, const char *msg)
{
    struct polis_cors *c = NULL;
    char err[200] = "";
    if (polis__cors_new(spec, &c, err, sizeof(err)) != POLIS_EINVAL)
        fail_msg("config should be refused (%s)", msg);
    if (strstr(err, msg) == NULL)
        fail_msg("message '%s' lacks '%s'", err, msg);
    assert_null(c);
}

struct req {
    const char *method, *origin, *acrm;
    const char *acrh[3];
};

static void eval(const struct polis_cors *c, const struct req *q, struct polis_cors_result *r)
{
    struct polis_str h[3];
    size_t nh = 0;
    while (nh < 3 && q->acrh[nh] != NULL) {
        h[nh] = S_(q->acrh[nh]);
        nh++;
    }
    struct polis_cors_request cq = {
        .method = S_(q->method),
        .origin = S_(q->origin),
        .acr_method = S_(q->acrm),
        .acr_headers = h,
        .num_acr_headers = nh,
    };
    memset(r, 0x5a, sizeof(*r));
    polis__cors_evaluate(c, &cq, r);
    assert_true(r->num_headers <= POLIS_CORS_MAX_HEADERS);
}

/* The value of header name in r, as a NUL-terminated copy, or NULL. */
static const char *hdr(const struct polis_cors_result *r, const char *name)
{
    static char buf[POLIS_CORS_SCRATCH + 1];
    const char *found = NULL;
    for (size_t i = 0; i < r->num_headers; i++) {
        if (polis_str_eq(r->headers[i].name, S_(name))) {
            assert_null(found); /* never twice */
            memcpy(buf, r->headers[i].value.p, r->headers[i].value.len);
            buf[r->headers[i].value.len] = '\0';
            found = buf;
        }
    }
    return found;
}

static void expect_hdr(const struct polis_cors_result *r, const char *name, const char *want)
{
    const char *v = hdr(r, name);
    if (want == NULL && v != NULL)
        fail_msg("%s should be absent, is '%s'", name, v);
    if (want != NULL && (v == NULL || strcmp(v, want) != 0))
        fail_msg("%s: want '%s', got '%s'", name, want, v ? v : "(absent)");
}

static void expect_vary(const struct polis_cors_result *r, const char *want)
{
    if (!polis_str_eq(r->vary, S_(want)))
        fail_msg("Vary: want '%s', got '%.*s'", want, (int)r->vary.len, r->vary.p);
}

static const char *const ORIGINS[] = {"https://app.example.com", "http://localhost:3000",
                                      "https://Admin.Example.com:443"};

static const char *const METHODS[] = {"GET", "POST", "DELETE"};
static const char *const HEADERS[] = {"Content-Type", "X-Request-Id", "Authorization"};
static const char *const EXPOSE[] = {"X-Total-Count", "ETag"};

static struct polis_cors_spec base_spec(void)
{
    struct polis_cors_spec s = {
        .origins = ORIGINS,
        .num_origins = 3,
        .methods = METHODS,
        .num_methods = 3,
        .headers = HEADERS,
        .num_headers = 3,
        .expose = EXPOSE,
        .num_expose = 2,
        .credentials = false,
        .max_age = 600,
    };
    return s;
}

/* ---- Configuration ------------------------------------------------------------------------- */

static void test_config_errors(void **state)
{
    (void)state;
    struct polis_cors_spec s = base_spec();
    s.num_origins = 0;
    expect_bad(&s, "at least one origin");
    s = base_spec();
    s.origins = LIST("*", "https://a.example");
    s.num_origins = 2;
    expect_bad(&s, "only entry");
    static const char *const bad_origins[] = {
        "https://a.example/", "https://a.example/path",  "a.example",    "https://",
        "https://a.example:", "https://a.example:99999", "https://a b",  "://a.example",
        "https://a.example?", "https://user@a.example",  "https://[::1", "https://a.example:08",
    };
    for (size_t i = 0; i < sizeof(bad_origins) / sizeof(bad_origins[0]); i++) {
        s = base_spec();
        s.origins = &bad_origins[i];
        s.num_origins = 1;
        expect_bad(&s, "not an origin");
    }
    s = base_spec();
    s.origins = LIST("null");
    s.num_origins = 1;
    expect_bad(&s, "null");
    s = base_spec();
    s.methods = LIST("GET", "PO ST");
    s.num_methods = 2;
    expect_bad(&s, "not a method");
    s = base_spec();
    s.methods = LIST("GET", "*");
    s.num_methods = 2;
    expect_bad(&s, "only entry");
    s = base_spec();
    s.headers = LIST("X-Ok", "Bad:Header");
    s.num_headers = 2;
    expect_bad(&s, "not a header name");
    s = base_spec();
    s.expose = LIST("");
    s.num_expose = 1;
    expect_bad(&s, "not a header name");
    s = base_spec();
    s.expose = LIST("*");
    s.num_expose = 1;
    s.credentials = true;
    expect_bad(&s, "credentials");
    s = base_spec();
    s.max_age = 86401;
    expect_bad(&s, "86400");
    /* err may be NULL. */
    struct polis_cors *c = NULL;
    s.max_age = 1000000;
    assert_int_equal(polis__cors_new(&s, &c, NULL, 0), POLIS_EINVAL);
    /* Valid edge cases. */
    s = base_spec();
    s.origins = LIST("https://[2001:db8::1]:8443", "http://127.0.0.1", "app+x-y.z://host_1");
    s.num_origins = 3;
    s.max_age = 86400;
    polis__cors_free(mk(&s));
    polis__cors_free(NULL);
}

/* ---- Preflights ---------------------------------------------------------------------------- */

static void test_preflight_ok(void **state)
{
    (void)state;
    struct polis_cors_spec s = base_spec();
    struct polis_cors *c = mk(&s);
    struct polis_cors_result r;
    struct req q = {"OPTIONS", "https://app.example.com", "DELETE", {"content-type, x-request-id"}};
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_OK);
    assert_int_equal(r.status, 204);
    expect_hdr(&r, "Access-Control-Allow-Origin", "https://app.example.com");
    expect_hdr(&r, "Access-Control-Allow-Methods", "GET, POST, DELETE");
    expect_hdr(&r, "Access-Control-Allow-Headers", "content-type, x-request-id, authorization");
    expect_hdr(&r, "Access-Control-Max-Age", "600");
    expect_hdr(&r, "Access-Control-Allow-Credentials", NULL);
    expect_hdr(&r, "Access-Control-Expose-Headers", NULL);
    expect_vary(&r, "Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
    assert_int_equal(r.num_headers, 4);

    /* Origins compare case-insensitively; the configured default port is dropped; the origin
     * is echoed as sent. */
    q.origin = "HTTPS://admin.example.COM";
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_OK);
    expect_hdr(&r, "Access-Control-Allow-Origin", "HTTPS://admin.example.COM");
    q.origin = "http://localhost:3000";
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_OK);
    /* No requested headers, several lines, empty elements. */
    q.acrh[0] = NULL;
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_OK);
    struct req q2 = {
        "OPTIONS", "https://app.example.com", "GET", {"X-Request-Id", " , ", "AUTHORIZATION"}};
    eval(c, &q2, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_OK);
    polis__cors_free(c);
}

static void test_preflight_denied(void **state)
{
    (void)state;
    struct polis_cors_spec s = base_spec();
    struct polis_cors *c = mk(&s);
    static const struct req denied[] = {
        {"OPTIONS", "https://evil.example.com", "GET", {NULL}},
        {"OPTIONS", "https://app.example.com.evil.net", "GET", {NULL}},
        {"OPTIONS", "https://app.example.co", "GET", {NULL}},
        {"OPTIONS", "http://app.example.com", "GET", {NULL}},       /* scheme matters */
        {"OPTIONS", "https://app.example.com:8443", "GET", {NULL}}, /* port matters */
        {"OPTIONS", "http://localhost", "GET", {NULL}},
        {"OPTIONS", "https://app.example.com/", "GET", {NULL}},
        {"OPTIONS", "null", "GET", {NULL}},
        {"OPTIONS", "", "GET", {NULL}},
        {"OPTIONS", "https://app.example.com", "PUT", {NULL}}, /* method not allowed */
        {"OPTIONS", "https://app.example.com", "get", {NULL}}, /* methods are case-sensitive */
        {"OPTIONS", "https://app.example.com", "", {NULL}},
        {"OPTIONS", "https://app.example.com", "GET\r\nX: y", {NULL}},
        {"OPTIONS", "https://app.example.com", "GET", {"x-other"}},
        {"OPTIONS", "https://app.example.com", "GET", {"content-type, x-other"}},
        {"OPTIONS", "https://app.example.com", "GET", {"content-type", "x-other"}},
        {"OPTIONS", "https://app.example.com", "GET", {"content type"}},
    };
    for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++) {
        struct polis_cors_result r;
        eval(c, &denied[i], &r);
        if (r.action != POLIS_CORS_PREFLIGHT_DENIED || r.status != 403 || r.num_headers != 0)
            fail_msg("case %zu (%s %s %s) should be denied", i, denied[i].origin, denied[i].acrm,
                     denied[i].acrh[0] ? denied[i].acrh[0] : "");
    }
    polis__cors_free(c);
}

static void test_not_preflight(void **state)
{
    (void)state;
    struct polis_cors_spec s = base_spec();
    struct polis_cors *c = mk(&s);
    struct polis_cors_result r;
    /* OPTIONS without Access-Control-Request-Method is an ordinary request. */
    struct req q = {"OPTIONS", "https://app.example.com", NULL, {NULL}};
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PASS);
    assert_int_equal(r.status, 0);
    expect_hdr(&r, "Access-Control-Allow-Origin", "https://app.example.com");
    expect_hdr(&r, "Access-Control-Allow-Methods", NULL);
    /* Without Origin it is not CORS at all. */
    struct req q2 = {"OPTIONS", NULL, "GET", {NULL}};
    eval(c, &q2, &r);
    assert_int_equal(r.action, POLIS_CORS_PASS);
    assert_int_equal(r.num_headers, 0);
    expect_vary(&r, "Origin");
    /* Another method with the preflight headers is ordinary too. */
    struct req q3 = {"GET", "https://app.example.com", "DELETE", {NULL}};
    eval(c, &q3, &r);
    assert_int_equal(r.action, POLIS_CORS_PASS);
    polis__cors_free(c);
}

/* ---- Normal responses ---------------------------------------------------------------------- */

static void test_simple_requests(void **state)
{
    (void)state;
    struct polis_cors_spec s = base_spec();
    struct polis_cors *c = mk(&s);
    struct polis_cors_result r;
    struct req q = {"GET", "https://app.example.com", NULL, {NULL}};
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PASS);
    expect_hdr(&r, "Access-Control-Allow-Origin", "https://app.example.com");
    expect_hdr(&r, "Access-Control-Expose-Headers", "X-Total-Count, ETag");
    expect_hdr(&r, "Access-Control-Allow-Credentials", NULL);
    expect_hdr(&r, "Access-Control-Max-Age", NULL);
    expect_vary(&r, "Origin");
    assert_int_equal(r.num_headers, 2);
    /* A disallowed origin: no CORS header, still forwarded, still Vary. */
    q.origin = "https://evil.example.com";
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PASS);
    assert_int_equal(r.num_headers, 0);
    expect_vary(&r, "Origin");
    /* No Origin. */
    q.origin = NULL;
    eval(c, &q, &r);
    assert_int_equal(r.num_headers, 0);
    expect_vary(&r, "Origin");
    /* A header-injection attempt is not an origin and is never echoed. */
    q.origin = "https://app.example.com\r\nSet-Cookie: a=b";
    eval(c, &q, &r);
    assert_int_equal(r.num_headers, 0);
    polis__cors_free(c);

    /* Without expose headers and max_age. */
    s.num_expose = 0;
    s.max_age = -1;
    c = mk(&s);
    q.origin = "https://app.example.com";
    eval(c, &q, &r);
    assert_int_equal(r.num_headers, 1);
    struct req p = {"OPTIONS", "https://app.example.com", "GET", {NULL}};
    eval(c, &p, &r);
    expect_hdr(&r, "Access-Control-Max-Age", NULL);
    polis__cors_free(c);
    s.max_age = 0;
    c = mk(&s);
    eval(c, &p, &r);
    expect_hdr(&r, "Access-Control-Max-Age", "0");
    polis__cors_free(c);
}

/* ---- Wildcards and credentials ------------------------------------------------------------- */

static void test_any_origin(void **state)
{
    (void)state;
    struct polis_cors_spec s = base_spec();
    s.origins = LIST("*");
    s.num_origins = 1;
    struct polis_cors *c = mk(&s);
    struct polis_cors_result r;
    struct req q = {"GET", "https://anything.example", NULL, {NULL}};
    eval(c, &q, &r);
    expect_hdr(&r, "Access-Control-Allow-Origin", "*");
    expect_vary(&r, ""); /* the answer does not depend on the origin */
    q.origin = "null";
    eval(c, &q, &r);
    expect_hdr(&r, "Access-Control-Allow-Origin", "*");
    q.origin = "not an origin";
    eval(c, &q, &r);
    assert_int_equal(r.num_headers, 0);
    struct req p = {"OPTIONS", "https://anything.example", "POST", {"content-type"}};
    eval(c, &p, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_OK);
    expect_hdr(&r, "Access-Control-Allow-Origin", "*");
    polis__cors_free(c);

    /* With credentials: never "*", the origin is echoed, and "null" is refused. */
    s.credentials = true;
    c = mk(&s);
    q.origin = "https://anything.example";
    eval(c, &q, &r);
    expect_hdr(&r, "Access-Control-Allow-Origin", "https://anything.example");
    expect_hdr(&r, "Access-Control-Allow-Credentials", "true");
    expect_vary(&r, "Origin");
    q.origin = "null";
    eval(c, &q, &r);
    assert_int_equal(r.num_headers, 0);
    p.origin = "null";
    eval(c, &p, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_DENIED);
    p.origin = "https://anything.example";
    eval(c, &p, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_OK);
    expect_hdr(&r, "Access-Control-Allow-Origin", "https://anything.example");
    expect_hdr(&r, "Access-Control-Allow-Credentials", "true");
    polis__cors_free(c);
}

static void test_any_method_header(void **state)
{
    (void)state;
    struct polis_cors_spec s = base_spec();
    s.methods = LIST("*");
    s.num_methods = 1;
    s.headers = LIST("*");
    s.num_headers = 1;
    s.credentials = true;
    struct polis_cors *c = mk(&s);
    struct polis_cors_result r;
    struct req q = {"OPTIONS", "https://app.example.com", "PATCH", {"X-A, Authorization", "x-b"}};
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_OK);
    expect_hdr(&r, "Access-Control-Allow-Methods", "PATCH");
    expect_hdr(&r, "Access-Control-Allow-Headers", "x-a, authorization, x-b");
    expect_hdr(&r, "Access-Control-Allow-Credentials", "true");
    /* Nothing requested: no Allow-Headers. */
    q.acrh[0] = NULL;
    eval(c, &q, &r);
    expect_hdr(&r, "Access-Control-Allow-Headers", NULL);
    /* Not tokens: denied even with "*". */
    q.acrm = "PAT CH";
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_DENIED);
    q.acrm = "PATCH";
    q.acrh[0] = "x-a, x\"b";
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_DENIED);
    /* More names than the echo buffer holds: denied, not truncated. */
    char *many = malloc(POLIS_CORS_SCRATCH * 2);
    assert_non_null(many);
    size_t w = 0;
    while (w + 12 < POLIS_CORS_SCRATCH * 2 - 1)
        w += (size_t)snprintf(many + w, 13, "x-h%05zu, ", w);
    many[w] = '\0';
    q.acrh[0] = many;
    eval(c, &q, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_DENIED);
    free(many);
    polis__cors_free(c);

    /* Default methods when none are configured. */
    s = base_spec();
    s.num_methods = 0;
    c = mk(&s);
    struct req d = {"OPTIONS", "https://app.example.com", "HEAD", {NULL}};
    eval(c, &d, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_OK);
    expect_hdr(&r, "Access-Control-Allow-Methods", "GET, HEAD, POST");
    d.acrm = "PUT";
    eval(c, &d, &r);
    assert_int_equal(r.action, POLIS_CORS_PREFLIGHT_DENIED);
    polis__cors_free(c);
}

/* Many origins: every one matches, near misses do not. */
static void test_many_origins(void **state)
{
    (void)state;
    enum { N_ORIGINS = 500 };
    char(*names)[48] = calloc(N_ORIGINS, 48);
    const char **list = calloc(N_ORIGINS, sizeof(*list));
    assert_non_null(names);
    assert_non_null(list);
    for (int i = 0; i < N_ORIGINS; i++) {
        snprintf(names[i], 48, "https://app%d.example.com", i * 7919 % 100000);
        list[i] = names[i];
    }
    struct polis_cors_spec s = base_spec();
    s.origins = list;
    s.num_origins = N_ORIGINS;
    struct polis_cors *c = mk(&s);
    struct polis_cors_result r;
    for (int i = 0; i < N_ORIGINS; i++) {
        struct req q = {"GET", names[i], NULL, {NULL}};
        eval(c, &q, &r);
        assert_int_equal(r.num_headers, 2);
        char miss[64];
        snprintf(miss, sizeof(miss), "%sx", names[i]);
        q.origin = miss;
        eval(c, &q, &r);
        assert_int_equal(r.num_headers, 0);
        snprintf(miss, sizeof(miss), "%.*s", (int)strlen(names[i]) - 1, names[i]);
        eval(c, &q, &r);
        assert_int_equal(r.num_headers, 0);
    }
    polis__cors_free(c);
    free(names);
    free(list);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),     cmocka_unit_test(test_preflight_ok),
        cmocka_unit_test(test_preflight_denied),  cmocka_unit_test(test_not_preflight),
        cmocka_unit_test(test_simple_requests),   cmocka_unit_test(test_any_origin),
        cmocka_unit_test(test_any_method_header), cmocka_unit_test(test_many_origins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
