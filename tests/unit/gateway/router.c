/* Unit tests of the route table (lib/gateway/router.c): precedence, hosts, patterns, methods,
 * header conditions, a large random table against a naive matcher, and upstream paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/router.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

#define MAX_ROUTES 1200

struct table {
    struct polis_config cfg;
    struct polis_route_cfg routes[MAX_ROUTES];
    struct polis_router *r;
};

static struct polis_route_cfg *add(struct table *t, const char *host, enum polis_path_kind kind,
                                   const char *path)
{
    struct polis_route_cfg *rc = &t->routes[t->cfg.num_routes++];
    memset(rc, 0, sizeof(*rc));
    rc->host = (char *)host;
    rc->path_kind = kind;
    rc->path = (char *)path;
    return rc;
}

static void build(struct table *t)
{
    t->cfg.routes = t->routes;
    assert_int_equal(polis__router_new(&t->cfg, &t->r), 0);
}

static struct table *table_new(void)
{
    struct table *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    return t;
}

static void table_free(struct table *t)
{
    polis__router_free(t->r);
    free(t);
}

struct msg {
    struct polis_h1_msg m;
    struct polis_h1_header h[16];
};

static void msg_init(struct msg *x)
{
    memset(x, 0, sizeof(*x));
    x->m.headers = x->h;
    for (int i = 0; i < POLIS_HDR__COUNT; i++)
        x->m.hdr_index[i] = -1;
}

static void msg_add(struct msg *x, const char *name, const char *value)
{
    struct polis_h1_header *h = &x->h[x->m.num_headers];
    h->name = (struct polis_str){name, strlen(name)};
    h->value = (struct polis_str){value, strlen(value)};
    h->id = POLIS_HDR_OTHER;
    x->m.num_headers++;
}

static struct polis_str S(const char *s) {
    return (struct polis_str){s, strlen(s)};
}

static int
match_m(struct table *t, const char *host, const char *path, const char *method,
        const struct msg *x)
{
    return polis__router_match(t->r, S(host), S(path), S(method), x ? &x->m : NULL);
}

static int match(struct table *t, const char *host, const char *path)
{
    struct msg x;
    msg_init(&x);
    return match_m(t, host, path, "GET", &x);
}

/* ---- Precedence ---------------------------------------------------------------------------- */

static void test_host_precedence(void **state)
{
    (void)state;
    struct table *t = table_new();
    add(t, NULL, POLIS_PATH_EXACT, "/a");                 /* 0: any host, exact path */
    add(t, "*.example.com", POLIS_PATH_PREFIX, "/");      /* 1 */
    add(t, "api.example.com", POLIS_PATH_ANY, NULL);      /* 2 */
    add(t, "www.example.com", POLIS_PATH_EXACT, "/only"); /* 3 */
    build(t);
    assert_int_equal(match(t, "api.example.com", "/a"), 2);
    assert_int_equal(match(t, "x.example.com", "/a"), 1);
    assert_int_equal(match(t, "other.com", "/a"), 0);
    assert_int_equal(match(t, "other.com", "/b"), -1);
    assert_int_equal(match(t, "www.example.com", "/only"), 3);
    /* The exact host group has no match: the wildcard one is tried, then any host. */
    assert_int_equal(match(t, "www.example.com", "/zzz"), 1);
    assert_int_equal(match(t, "www.example.com", "zzz"), -1);
    table_free(t);

    t = table_new();
    add(t, NULL, POLIS_PATH_EXACT, "/a");              /* 0 */
    add(t, "www.example.com", POLIS_PATH_EXACT, "/b"); /* 1 */
    build(t);
    assert_int_equal(match(t, "www.example.com", "/a"), 0);
    assert_int_equal(match(t, "www.example.com", "/b"), 1);
    assert_int_equal(match(t, "x.example.com", "/b"), -1);
    table_free(t);
}

static void test_path_precedence(void **state)
{
    (void)state;
    struct table *t = table_new();
    add(t, NULL, POLIS_PATH_ANY, NULL);                     /* 0 */
    add(t, NULL, POLIS_PATH_PREFIX, "/");                   /* 1 */
    add(t, NULL, POLIS_PATH_PREFIX, "/users/");             /* 2 */
    add(t, NULL, POLIS_PATH_PATTERN, "/{a}/{b}");           /* 3 */
    add(t, NULL, POLIS_PATH_PATTERN, "/users/{id}");        /* 4 */
    add(t, NULL, POLIS_PATH_EXACT, "/users/me");            /* 5 */
    add(t, NULL, POLIS_PATH_PATTERN, "/{x}/{y}/orders");    /* 6 */
    add(t, NULL, POLIS_PATH_PATTERN, "/users/{id}/orders"); /* 7 */
    add(t, NULL, POLIS_PATH_PREFIX, "/users/42/");          /* 8 */
    add(t, NULL, POLIS_PATH_PATTERN, "/{x}/{y}/{z}");       /* 9 */
    build(t);
    assert_int_equal(match(t, "h", "/users/me"), 5);
    assert_int_equal(match(t, "h", "/users/42"), 4);
    assert_int_equal(match(t, "h", "/foo/bar"), 3);
    assert_int_equal(match(t, "h", "/users/42/orders"), 7);
    assert_int_equal(match(t, "h", "/x/42/orders"), 6);
    assert_int_equal(match(t, "h", "/x/42/items"), 9);
    /* A pattern beats a longer prefix. */
    assert_int_equal(match(t, "h", "/users/42/x"), 9);
    assert_int_equal(match(t, "h", "/users/42/x/y"), 8);
    assert_int_equal(match(t, "h", "/users/7/x/y"), 2);
    assert_int_equal(match(t, "h", "/users/"), 2);
    assert_int_equal(match(t, "h", "/usersx"), 1);
    assert_int_equal(match(t, "h", "/"), 1);
    assert_int_equal(match(t, "h", ""), 0);
    assert_int_equal(match(t, "h", "*"), 0);
    table_free(t);
}

static void test_prefix_semantics(void **state)
{
    (void)state;
    struct table *t = table_new();
    add(t, NULL, POLIS_PATH_PREFIX, "/api");   /* 0: plain string prefix */
    add(t, "seg", POLIS_PATH_PREFIX, "/api/"); /* 1: segment prefix */
    build(t);
    assert_int_equal(match(t, "h", "/api"), 0);
    assert_int_equal(match(t, "h", "/api/x"), 0);
    assert_int_equal(match(t, "h", "/apix"), 0);
    assert_int_equal(match(t, "h", "/ap"), -1);
    assert_int_equal(match(t, "h", "/Api"), -1);
    assert_int_equal(match(t, "seg", "/api/"), 1);
    assert_int_equal(match(t, "seg", "/api/x/y"), 1);
    assert_int_equal(match(t, "seg", "/api"), 0);
    assert_int_equal(match(t, "seg", "/apix"), 0);
    table_free(t);
}

static void test_patterns(void **state)
{
    (void)state;
    struct table *t = table_new();
    add(t, NULL, POLIS_PATH_PATTERN, "/users/{id}/orders"); /* 0 */
    add(t, NULL, POLIS_PATH_PATTERN, "/files/{name}/");     /* 1 */
    add(t, NULL, POLIS_PATH_PATTERN, "/{only}");            /* 2 */
    add(t, NULL, POLIS_PATH_PATTERN, "/v{x}/a");            /* 3: "v{x}" is a literal */
    build(t);
    assert_int_equal(match(t, "h", "/users/1/orders"), 0);
    assert_int_equal(match(t, "h", "/users/abc-def/orders"), 0);
    assert_int_equal(match(t, "h", "/users//orders"), -1);
    assert_int_equal(match(t, "h", "/users/1/2/orders"), -1);
    assert_int_equal(match(t, "h", "/users/1/orders/"), -1);
    assert_int_equal(match(t, "h", "/users/1/orders/x"), -1);
    assert_int_equal(match(t, "h", "/users/1/Orders"), -1);
    assert_int_equal(match(t, "h", "/files/a.txt/"), 1);
    assert_int_equal(match(t, "h", "/files/a.txt"), -1);
    assert_int_equal(match(t, "h", "/x"), 2);
    assert_int_equal(match(t, "h", "/"), -1);
    assert_int_equal(match(t, "h", "x"), -1);
    assert_int_equal(match(t, "h", "/x/"), -1);
    assert_int_equal(match(t, "h", "/v{x}/a"), 3);
    assert_int_equal(match(t, "h", "/v1/a"), -1);
    table_free(t);
}

static void test_hosts(void **state)
{
    (void)state;
    struct table *t = table_new();
    add(t, "api.example.com", POLIS_PATH_PREFIX, "/"); /* 0 */
    add(t, "*.example.com", POLIS_PATH_PREFIX, "/");   /* 1 */
    add(t, "[::1]", POLIS_PATH_PREFIX, "/");           /* 2 */
    add(t, "10.0.0.1", POLIS_PATH_PREFIX, "/");        /* 3 */
    add(t, "Local.Test:8080", POLIS_PATH_PREFIX, "/"); /* 4: the port is ignored here too */
    add(t, "*.b.example.com", POLIS_PATH_EXACT, "/x"); /* 5 */
    add(t, "example.com", POLIS_PATH_EXACT, "/e");     /* 6 */
    build(t);
    assert_int_equal(match(t, "api.example.com", "/"), 0);
    assert_int_equal(match(t, "API.Example.COM", "/"), 0);
    assert_int_equal(match(t, "api.example.com:8443", "/"), 0);
    assert_int_equal(match(t, "api.example.com.", "/"), 0);
    assert_int_equal(match(t, "a.example.com", "/"), 1);
    assert_int_equal(match(t, "A.B.EXAMPLE.COM:80", "/"), 1);
    assert_int_equal(match(t, "a.b.example.com", "/x"), 5);
    assert_int_equal(match(t, "a.b.example.com", "/y"), 1);
    assert_int_equal(match(t, "c.a.b.example.com", "/x"), 5);
    assert_int_equal(match(t, "b.example.com", "/x"), 1); /* not under *.b.example.com */
    assert_int_equal(match(t, "example.com", "/"), -1);
    assert_int_equal(match(t, "example.com", "/e"), 6);
    assert_int_equal(match(t, ".example.com", "/"), -1);
    assert_int_equal(match(t, "aexample.com", "/"), -1);
    assert_int_equal(match(t, "api.example.co", "/"), -1);
    assert_int_equal(match(t, "[::1]", "/"), 2);
    assert_int_equal(match(t, "[::1]:8080", "/"), 2);
    assert_int_equal(match(t, "[::2]:8080", "/"), -1);
    assert_int_equal(match(t, "10.0.0.1:80", "/"), 3);
    assert_int_equal(match(t, "10.0.0.10", "/"), -1);
    assert_int_equal(match(t, "local.test", "/"), 4);
    assert_int_equal(match(t, "LOCAL.TEST:1", "/"), 4);
    assert_int_equal(match(t, "", "/"), -1);
    table_free(t);
}

static void test_methods(void **state)
{
    (void)state;
    static char *get_head[] = {"GET", "HEAD"};
    static char *del[] = {"DELETE"};
    struct table *t = table_new();
    add(t, NULL, POLIS_PATH_PREFIX, "/a");                              /* 0 */
    struct polis_route_cfg *rc = add(t, NULL, POLIS_PATH_PREFIX, "/a"); /* 1 */
    rc->methods = get_head;
    rc->num_methods = 2;
    rc = add(t, NULL, POLIS_PATH_EXACT, "/d"); /* 2 */
    rc->methods = del;
    rc->num_methods = 1;
    build(t);
    assert_int_equal(match_m(t, "h", "/a", "GET", NULL), 1);
    assert_int_equal(match_m(t, "h", "/a", "HEAD", NULL), 1);
    assert_int_equal(match_m(t, "h", "/a", "POST", NULL), 0);
    assert_int_equal(match_m(t, "h", "/a", "get", NULL), 0); /* methods are case-sensitive */
    assert_int_equal(match_m(t, "h", "/a", "GE", NULL), 0);
    assert_int_equal(match_m(t, "h", "/d", "DELETE", NULL), 2);
    assert_int_equal(match_m(t, "h", "/d", "GET", NULL), -1);
    table_free(t);
}

static void test_headers(void **state)
{
    (void)state;
    static struct polis_header_match canary[] = {{"X-Canary", NULL}};
    static struct polis_header_match two[] = {{"x-canary", "1"}, {"X-User", NULL}};
    static struct polis_header_match one_v[] = {{"X-Canary", "1"}};
    struct table *t = table_new();
    add(t, NULL, POLIS_PATH_EXACT, "/h");                              /* 0 */
    struct polis_route_cfg *rc = add(t, NULL, POLIS_PATH_EXACT, "/h"); /* 1 */
    rc->headers = canary;
    rc->num_headers = 1;
    rc = add(t, NULL, POLIS_PATH_EXACT, "/h"); /* 2 */
    rc->headers = two;
    rc->num_headers = 2;
    rc = add(t, NULL, POLIS_PATH_EXACT, "/v"); /* 3 */
    rc->headers = one_v;
    rc->num_headers = 1;
    build(t);

    struct msg x;
    msg_init(&x);
    assert_int_equal(match_m(t, "h", "/h", "GET", &x), 0);
    assert_int_equal(match_m(t, "h", "/h", "GET", NULL), 0);
    msg_add(&x, "x-canary", "0");
    assert_int_equal(match_m(t, "h", "/h", "GET", &x), 1);
    msg_add(&x, "X-USER", "");
    assert_int_equal(match_m(t, "h", "/h", "GET", &x), 1); /* no X-Canary: 1 */
    msg_add(&x, "X-Canary", "1"); /* a later field line with the right value counts */
    assert_int_equal(match_m(t, "h", "/h", "GET", &x), 2);

    msg_init(&x);
    msg_add(&x, "X-Canary", "10");
    assert_int_equal(match_m(t, "h", "/v", "GET", &x), -1);
    msg_init(&x);
    msg_add(&x, "X-Canary", "1 ");
    assert_int_equal(match_m(t, "h", "/v", "GET", &x), -1);
    msg_init(&x);
    msg_add(&x, "X-Canaryy", "1");
    assert_int_equal(match_m(t, "h", "/v", "GET", &x), -1);
    msg_init(&x);
    msg_add(&x, "x-CANARY", "1");
    assert_int_equal(match_m(t, "h", "/v", "GET", &x), 3);
    table_free(t);
}

static void test_ties_and_order(void **state)
{
    (void)state;
    static char *get[] = {"GET"};
    static char *post_get[] = {"POST", "GET"};
    static struct polis_header_match hx[] = {{"X-A", NULL}};
    struct table *t = table_new();
    add(t, NULL, POLIS_PATH_PREFIX, "/t");                              /* 0 */
    add(t, NULL, POLIS_PATH_PREFIX, "/t");                              /* 1: same as 0 */
    struct polis_route_cfg *rc = add(t, NULL, POLIS_PATH_PREFIX, "/u"); /* 2 */
    rc->headers = hx;
    rc->num_headers = 1;
    rc = add(t, NULL, POLIS_PATH_PREFIX, "/u"); /* 3: methods beat header conditions */
    rc->methods = get;
    rc->num_methods = 1;
    rc = add(t, NULL, POLIS_PATH_PREFIX, "/u"); /* 4: tie with 3, later */
    rc->methods = post_get;
    rc->num_methods = 2;
    rc = add(t, NULL, POLIS_PATH_PREFIX, "/u"); /* 5: methods and a header: before 3 */
    rc->methods = post_get;
    rc->num_methods = 2;
    rc->headers = hx;
    rc->num_headers = 1;
    build(t);
    struct msg x;
    msg_init(&x);
    assert_int_equal(match_m(t, "h", "/t", "GET", &x), 0);
    assert_int_equal(match_m(t, "h", "/u", "GET", &x), 3);
    assert_int_equal(match_m(t, "h", "/u", "POST", &x), 4);
    assert_int_equal(match_m(t, "h", "/u", "PUT", &x), -1);
    msg_add(&x, "x-a", "v");
    assert_int_equal(match_m(t, "h", "/u", "GET", &x), 5);
    assert_int_equal(match_m(t, "h", "/u", "PUT", &x), 2);
    table_free(t);
}

static void test_empty(void **state)
{
    (void)state;
    struct table *t = table_new();
    build(t);
    assert_int_equal(match(t, "h", "/"), -1);
    assert_int_equal(polis__router_match(t->r, (struct polis_str){NULL, 0},
                                         (struct polis_str){NULL, 0}, (struct polis_str){NULL, 0},
                                         NULL),
                     -1);
    table_free(t);
}

/* ---- A large random table against a naive matcher ------------------------------------------ */

static uint64_t rnd_state = 12345;

static uint32_t rnd(uint32_t n)
{
    rnd_state = rnd_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)((rnd_state >> 33) % n);
}

/* The host without its port, lowercased, into buf. */
static void ref_host(const char *h, char *buf)
{
    size_t n = strlen(h);
    if (h[0] == '[') {
        const char *rb = strchr(h, ']');
        n = rb ? (size_t)(rb - h) + 1 : n;
    } else if (strchr(h, ':')) {
        n = (size_t)(strchr(h, ':') - h);
    }
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)((h[i] >= 'A' && h[i] <= 'Z') ? h[i] + 32 : h[i]);
    buf[n] = 0;
    if (n > 1 && buf[n - 1] == '.')
        buf[n - 1] = 0;
}

/* 2 exact, 1 wildcard, 0 any; -1 no match. */
static int ref_host_class(const char *route_host, const char *req_host)
{
    if (!route_host)
        return 0;
    char h[128];
    ref_host(req_host, h);
    if (route_host[0] == '*') {
        const char *suffix = route_host + 1; /* ".a.com" */
        size_t hl = strlen(h), sl = strlen(suffix);
        return hl > sl && strcmp(h + hl - sl, suffix) == 0 ? 1 : -1;
    }
    return strcmp(h, route_host) == 0 ? 2 : -1;
}

static bool ref_pattern(const char *pat, const char *path)
{
    char pb[256], qb[256];
    snprintf(pb, sizeof(pb), "%s", pat);
    snprintf(qb, sizeof(qb), "%s", path);
    if ((pb[0] == '/') != (qb[0] == '/'))
        return false;
    char *ps = pb + (pb[0] == '/'), *qs = qb + (qb[0] == '/');
    for (;;) {
        char *pe = strchr(ps, '/'), *qe = strchr(qs, '/');
        if (pe)
            *pe = 0;
        if (qe)
            *qe = 0;
        if (ps[0] == '{') {
            if (qs[0] == 0)
                return false;
        } else if (strcmp(ps, qs) != 0) {
            return false;
        }
        if (!pe || !qe)
            return !pe && !qe;
        ps = pe + 1;
        qs = qe + 1;
    }
}

static int ref_match(const struct table *t, const char *host, const char *path, const char *meth,
                     const struct msg *x)
{
    int best = -1;
    long best_key[5] = {0};
    for (size_t i = 0; i < t->cfg.num_routes; i++) {
        const struct polis_route_cfg *rc = &t->routes[i];
        int hc = ref_host_class(rc->host, host);
        if (hc < 0)
            continue;
        long pc = 0, sub = 0;
        switch (rc->path_kind) {
        case POLIS_PATH_EXACT:
            if (strcmp(rc->path, path) != 0)
                continue;
            pc = 3;
            break;
        case POLIS_PATH_PATTERN:
            if (!ref_pattern(rc->path, path))
                continue;
            pc = 2;
            for (const char *s = rc->path; *s; s++)
                sub += (s == rc->path || s[-1] == '/') && *s != '{';
            break;
        case POLIS_PATH_PREFIX:
            if (strncmp(rc->path, path, strlen(rc->path)) != 0)
                continue;
            pc = 1;
            sub = (long)strlen(rc->path);
            break;
        default:
            break;
        }
        bool mok = rc->num_methods == 0;
        for (size_t k = 0; k < rc->num_methods; k++)
            mok |= strcmp(rc->methods[k], meth) == 0;
        if (!mok)
            continue;
        bool hok = true;
        for (size_t k = 0; k < rc->num_headers && hok; k++) {
            bool found = false;
            for (size_t j = 0; j < x->m.num_headers; j++)
                found |=
                    strcasecmp(x->h[j].name.p, rc->headers[k].name) == 0 &&
                    (!rc->headers[k].value || strcmp(x->h[j].value.p, rc->headers[k].value) == 0);
            hok = found;
        }
        if (!hok)
            continue;
        long key[5] = {hc, pc, sub, rc->num_methods > 0, (long)rc->num_headers};
        if (best < 0 || memcmp(key, best_key, sizeof(key)) != 0) {
            int k = 0;
            while (k < 5 && key[k] == best_key[k])
                k++;
            if (best < 0 || (k < 5 && key[k] > best_key[k])) {
                best = (int)i;
                memcpy(best_key, key, sizeof(key));
            }
        }
    }
    return best;
}

static void test_random_table(void **state)
{
    (void)state;
    static const char *hosts[] = {NULL,    NULL,      NULL,        "a.com",
                                  "b.com", "*.a.com", "*.x.a.com", "x.a.com"};
    static const char *segs[] = {"u", "v", "w", "{p}", ""};
    static char *methods[][2] = {{"GET", NULL}, {"POST", "GET"}, {"PUT", NULL}};
    static struct polis_header_match hdrs[][2] = {
        {{"X-A", NULL}, {"X-B", NULL}}, {{"X-A", "1"}, {"X-B", "2"}}, {{"x-b", NULL}, {0}}};
    static const char *req_hosts[] = {"a.com", "B.com:80", "x.a.com", "y.x.a.com",
                                      "q.com", "X.A.COM",  "z.a.com", "a.com."};
    static char paths[1000][32];

    struct table *t = table_new();
    for (int i = 0; i < 1000; i++) {
        char *p = paths[i];
        size_t len = 0;
        int nseg = 1 + (int)rnd(3);
        for (int s = 0; s < nseg; s++) {
            const char *seg = segs[rnd(5)];
            len += (size_t)snprintf(p + len, 32 - len, "/%s", seg);
        }
        enum polis_path_kind kind = (enum polis_path_kind)rnd(4);
        if (kind != POLIS_PATH_PATTERN)
            for (char *c = p; *c; c++)
                if (*c == '{' || *c == '}')
                    *c = 'q';
        if (kind == POLIS_PATH_PREFIX && rnd(3) == 0)
            p[len - 1 > 0 ? len - 1 : 0] = 0; /* a prefix that ends inside a segment */
        struct polis_route_cfg *rc = add(t, hosts[rnd(8)], kind, kind == POLIS_PATH_ANY ? NULL : p);
        if (rnd(3) == 0) {
            int k = (int)rnd(3);
            rc->methods = methods[k];
            rc->num_methods = methods[k][1] ? 2 : 1;
        }
        if (rnd(3) == 0) {
            int k = (int)rnd(3);
            rc->headers = hdrs[k];
            rc->num_headers = hdrs[k][1].name ? 1 + rnd(2) : 1;
        }
    }
    build(t);

    static const char *rsegs[] = {"u", "v", "w", "z", "", "uu"};
    static const char *rmeth[] = {"GET", "POST", "PUT"};
    int matched = 0;
    for (int i = 0; i < 30000; i++) {
        char path[64];
        size_t len = 0;
        int nseg = (int)rnd(4);
        for (int s = 0; s < nseg; s++)
            len += (size_t)snprintf(path + len, sizeof(path) - len, "/%s", rsegs[rnd(6)]);
        path[len] = 0;
        if (len > 1 && rnd(4) == 0)
            path[len - 1] = 0;
        struct msg x;
        msg_init(&x);
        if (rnd(2))
            msg_add(&x, rnd(2) ? "x-a" : "X-A", rnd(2) ? "1" : "0");
        if (rnd(2))
            msg_add(&x, "X-B", rnd(2) ? "2" : "");
        const char *host = req_hosts[rnd(8)], *meth = rmeth[rnd(3)];
        int want = ref_match(t, host, path, meth, &x);
        int got = match_m(t, host, path, meth, &x);
        if (want != got)
            fail_msg("host %s path '%s' %s: want %d got %d", host, path, meth, want, got);
        matched += want >= 0;
    }
    /* The table must exercise real matches, not only misses. */
    assert_true(matched > 20000);
    table_free(t);
}

/* ---- Upstream path ------------------------------------------------------------------------- */

static void check_up(const struct polis_route_cfg *rc, const char *path, const char *want)
{
    char out[64];
    size_t n = 0;
    assert_int_equal(polis__route_upstream_path(rc, S(path), out, sizeof(out), &n), 0);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(out, want, n);
}

static void test_upstream_path(void **state)
{
    (void)state;
    struct polis_route_cfg rc = {0};
    rc.path_kind = POLIS_PATH_PREFIX;
    rc.path = "/api/";
    check_up(&rc, "/api/users", "/api/users");
    rc.strip_prefix = true;
    check_up(&rc, "/api/users/1", "/users/1");
    check_up(&rc, "/api/", "/");
    rc.path = "/api";
    check_up(&rc, "/api", "/");
    check_up(&rc, "/api/x", "/x");
    check_up(&rc, "/apix", "/x");
    rc.path = "/api/";
    rc.rewrite = "/v2/";
    check_up(&rc, "/api/users", "/v2/users");
    rc.strip_prefix = false;
    check_up(&rc, "/api/users", "/v2/users");
    check_up(&rc, "/api/", "/v2/");
    rc.rewrite = "";
    check_up(&rc, "/api/", "/");

    struct polis_route_cfg ex = {0};
    ex.path_kind = POLIS_PATH_EXACT;
    ex.path = "/old";
    check_up(&ex, "/old", "/old");
    ex.rewrite = "/new/place";
    check_up(&ex, "/old", "/new/place");
    ex.strip_prefix = true; /* only for prefix routes */
    check_up(&ex, "/old", "/new/place");

    struct polis_route_cfg pat = {0};
    pat.path_kind = POLIS_PATH_PATTERN;
    pat.path = "/u/{id}";
    check_up(&pat, "/u/7", "/u/7");
    pat.rewrite = "/users";
    check_up(&pat, "/u/7", "/users");

    struct polis_route_cfg any = {0};
    check_up(&any, "/x/y", "/x/y");
    check_up(&any, "", "/");
    any.rewrite = "/base";
    check_up(&any, "/x", "/base/x");

    /* Too small a buffer. */
    char out[8];
    size_t n = 99;
    rc.rewrite = "/v2/";
    assert_int_equal(polis__route_upstream_path(&rc, S("/api/12345"), out, 8, &n), POLIS_ETOOBIG);
    assert_int_equal(polis__route_upstream_path(&rc, S("/api/1234"), out, 8, &n), 0);
    assert_int_equal(n, 8);
    assert_memory_equal(out, "/v2/1234", 8);
    assert_int_equal(polis__route_upstream_path(&any, S(""), out, 0, &n), POLIS_ETOOBIG);
    assert_int_equal(polis__route_upstream_path(&ex, S("/old"), out, 8, &n), POLIS_ETOOBIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_precedence),
        cmocka_unit_test(test_path_precedence),
        cmocka_unit_test(test_prefix_semantics),
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_hosts),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_ties_and_order),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_random_table),
        cmocka_unit_test(test_upstream_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
