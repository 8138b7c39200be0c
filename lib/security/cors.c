/* cors.c: CORS policies compiled once (sorted lowercase origins, header values joined in
 * advance) and evaluated per request without allocating. */
#include "security/cors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct polis_cors {
    bool any_origin, any_method, any_header, credentials;
    char **origins; /* lowercase, sorted */
    size_t norigins;
    char **methods;
    size_t nmethods;
    char **headers; /* lowercase */
    size_t nheaders;
    char *allow_methods; /* joined with ", "; NULL when any_method */
    char *allow_headers; /* joined; NULL when any_header or none */
    char *expose;        /* joined; NULL when none */
    char max_age[24];    /* empty when not sent */
};

static const char *const default_methods[] = {"GET", "HEAD", "POST"};

#define S(lit) POLIS_STR(lit)

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_tchar(char c)
{
    return is_alpha(c) || is_digit(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_token(struct polis_str s)
{
    if (s.len == 0)
        return false;
    for (size_t i = 0; i < s.len; i++)
        if (!is_tchar(s.p[i]))
            return false;
    return true;
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

/* An origin: scheme "://" host [":" port], host a DNS name, IPv4 or bracketed IPv6. Sets
 * *host_end to where the port part (if any) starts. */
static bool origin_syntax(struct polis_str s, size_t *host_end)
{
    size_t i = 0;
    if (s.len == 0 || !is_alpha(s.p[0]))
        return false;
    while (i < s.len && (is_alpha(s.p[i]) || is_digit(s.p[i]) || s.p[i] == '+' || s.p[i] == '-' ||
                         s.p[i] == '.'))
        i++;
    if (s.len - i < 4 || memcmp(s.p + i, "://", 3) != 0)
        return false;
    i += 3;
    size_t hs = i;
    if (s.p[i] == '[') {
        i++;
        while (i < s.len && (is_digit(s.p[i]) || (lower(s.p[i]) >= 'a' && lower(s.p[i]) <= 'f') ||
                             s.p[i] == ':' || s.p[i] == '.'))
            i++;
        if (i == s.len || s.p[i] != ']' || i == hs + 1)
            return false;
        i++;
    } else {
        while (i < s.len && (is_alpha(s.p[i]) || is_digit(s.p[i]) || s.p[i] == '-' ||
                             s.p[i] == '.' || s.p[i] == '_'))
            i++;
        if (i == hs)
            return false;
    }
    *host_end = i;
    if (i == s.len)
        return true;
    if (s.p[i] != ':' || s.len - i < 2 || s.len - i > 6)
        return false;
    unsigned port = 0;
    for (size_t k = i + 1; k < s.len; k++) {
        if (!is_digit(s.p[k]))
            return false;
        port = port * 10 + (unsigned)(s.p[k] - '0');
    }
    return port <= 65535 && !(s.len - i > 2 && s.p[i + 1] == '0');
}

static int cmp_origin(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Compare request origin o (any case) with a stored lowercase origin. */
static int cmp_req(struct polis_str o, const char *stored)
{
    size_t i = 0;
    for (; i < o.len && stored[i] != '\0'; i++) {
        unsigned char x = (unsigned char)lower(o.p[i]), y = (unsigned char)stored[i];
        if (x != y)
            return x < y ? -1 : 1;
    }
    if (i < o.len)
        return 1;
    return stored[i] != '\0' ? -1 : 0;
}

static bool origin_allowed(const struct polis_cors *c, struct polis_str o)
{
    size_t dummy;
    if (!origin_syntax(o, &dummy)) {
        /* "null" is only ever covered by "*" without credentials. */
        return c->any_origin && !c->credentials && polis_str_eq(o, S("null"));
    }
    if (c->any_origin)
        return true;
    size_t lo = 0, hi = c->norigins;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = cmp_req(o, c->origins[mid]);
        if (r == 0)
            return true;
        if (r < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return false;
}

static void set_err(char *err, size_t errcap, const char *what, const char *val)
{
    if (err != NULL && errcap > 0)
        snprintf(err, errcap, "%s '%.80s'", what, val);
}

static void free_list(char **a, size_t n)
{
    for (size_t i = 0; a != NULL && i < n; i++)
        free(a[i]);
    free(a);
}

/* Copy the strings of list into a new array (lowercased when low). Returns 0 and *out, or
 * POLIS_ENOMEM with nothing allocated. */
static int copy_list(const char *const *list, size_t n, bool low, char ***out)
{
    char **a = calloc(n + 1, sizeof(*a));
    if (a == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(list[i]);
        a[i] = malloc(len + 1);
        if (a[i] == NULL) {
            free_list(a, i);
            return POLIS_ENOMEM;
        }
        for (size_t k = 0; k <= len; k++)
            a[i][k] = low ? lower(list[i][k]) : list[i][k];
    }
    *out = a;
    return 0;
}

/* "a, b, c", or NULL with *rc = POLIS_ENOMEM. */
static char *join(char *const *a, size_t n, int *rc)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(a[i]) + 2;
    char *s = malloc(len);
    if (s == NULL) {
        *rc = POLIS_ENOMEM;
        return NULL;
    }
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(a[i]);
        if (i > 0) {
            memcpy(s + w, ", ", 2);
            w += 2;
        }
        memcpy(s + w, a[i], l);
        w += l;
    }
    s[w] = '\0';
    return s;
}

/* Whether list has exactly one entry "*"; a "*" among others is an error. */
static int star_list(const char *const *list, size_t n, const char *what, bool *star, char *err,
                     size_t errcap)
{
    *star = false;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i], "*") != 0)
            continue;
        if (n > 1) {
            set_err(err, errcap, what, "\"*\" must be the only entry");
            return POLIS_EINVAL;
        }
        *star = true;
    }
    return 0;
}

static int check_tokens(const char *const *list, size_t n, const char *what, char *err,
                        size_t errcap)
{
    for (size_t i = 0; i < n; i++) {
        if (!is_token((struct polis_str){list[i], strlen(list[i])})) {
            set_err(err, errcap, what, list[i]);
            return POLIS_EINVAL;
        }
    }
    return 0;
}

int polis__cors_new(const struct polis_cors_spec *spec, struct polis_cors **out, char *err,
                    size_t errcap)
{
    bool star_expose = false;
    struct polis_cors *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return POLIS_ENOMEM;
    c->credentials = spec->credentials;
    int rc = star_list(spec->origins, spec->num_origins, "origins:", &c->any_origin, err, errcap);
    if (rc == 0)
        rc = star_list(spec->methods, spec->num_methods, "methods:", &c->any_method, err, errcap);
    if (rc == 0)
        rc = star_list(spec->headers, spec->num_headers, "headers:", &c->any_header, err, errcap);
    if (rc == 0)
        rc =
            star_list(spec->expose, spec->num_expose, "expose_headers:", &star_expose, err, errcap);
    if (rc < 0)
        goto fail;
    rc = POLIS_EINVAL;
    if (spec->num_origins == 0) {
        set_err(err, errcap, "origins:", "at least one origin (or \"*\") is required");
        goto fail;
    }
    if (star_expose && spec->credentials) {
        set_err(err, errcap,
                "expose_headers:", "\"*\" is not honoured with credentials: list the headers");
        goto fail;
    }
    if (spec->max_age > 86400) {
        set_err(err, errcap, "max_age:", "at most 86400 seconds");
        goto fail;
    }
    if (!c->any_method &&
        check_tokens(spec->methods, spec->num_methods, "not a method:", err, errcap) < 0)
        goto fail;
    if (!c->any_header &&
        check_tokens(spec->headers, spec->num_headers, "not a header name:", err, errcap) < 0)
        goto fail;
    if (!star_expose &&
        check_tokens(spec->expose, spec->num_expose, "not a header name:", err, errcap) < 0)
        goto fail;
    if (!c->any_origin) {
        if (copy_list(spec->origins, spec->num_origins, true, &c->origins) < 0)
            goto nomem;
        c->norigins = spec->num_origins;
        for (size_t i = 0; i < c->norigins; i++) {
            char *o = c->origins[i];
            size_t he;
            if (strcmp(o, "null") == 0) {
                set_err(err, errcap, "origin:", "null (it would admit every sandboxed page)");
                goto fail;
            }
            if (!origin_syntax((struct polis_str){o, strlen(o)}, &he)) {
                set_err(err, errcap,
                        "not an origin (scheme://host[:port], no path):", spec->origins[i]);
                goto fail;
            }
            if ((strncmp(o, "https:", 6) == 0 && strcmp(o + he, ":443") == 0) ||
                (strncmp(o, "http:", 5) == 0 && strcmp(o + he, ":80") == 0))
                o[he] = '\0';
        }
        qsort(c->origins, c->norigins, sizeof(*c->origins), cmp_origin);
    }
    if (!c->any_method) {
        const char *const *m = spec->num_methods > 0 ? spec->methods : default_methods;
        size_t nm = spec->num_methods > 0 ? spec->num_methods : 3;
        if (copy_list(m, nm, false, &c->methods) < 0)
            goto nomem;
        c->nmethods = nm;
        c->allow_methods = join(c->methods, nm, &rc);
        if (c->allow_methods == NULL)
            goto fail;
    }
    if (!c->any_header && spec->num_headers > 0) {
        if (copy_list(spec->headers, spec->num_headers, true, &c->headers) < 0)
            goto nomem;
        c->nheaders = spec->num_headers;
        c->allow_headers = join(c->headers, c->nheaders, &rc);
        if (c->allow_headers == NULL)
            goto fail;
    }
    if (spec->num_expose > 0) {
        char **ex;
        if (copy_list(spec->expose, spec->num_expose, false, &ex) < 0)
            goto nomem;
        c->expose = join(ex, spec->num_expose, &rc);
        free_list(ex, spec->num_expose);
        if (c->expose == NULL)
            goto fail;
    }
    if (spec->max_age >= 0)
        snprintf(c->max_age, sizeof(c->max_age), "%lld", (long long)spec->max_age);
    *out = c;
    return 0;

nomem:
    rc = POLIS_ENOMEM;
fail:
    polis__cors_free(c);
    return rc;
}

void polis__cors_free(struct polis_cors *c)
{
    if (c == NULL)
        return;
    free_list(c->origins, c->norigins);
    free_list(c->methods, c->nmethods);
    free_list(c->headers, c->nheaders);
    free(c->allow_methods);
    free(c->allow_headers);
    free(c->expose);
    free(c);
}

static void add(struct polis_cors_result *r, struct polis_str name, struct polis_str value)
{
    r->headers[r->num_headers++] = (struct polis_cors_header){name, value};
}

static struct polis_str cstr(const char *s)
{
    return (struct polis_str){s, strlen(s)};
}

static bool method_allowed(const struct polis_cors *c, struct polis_str m)
{
    if (!is_token(m))
        return false;
    if (c->any_method)
        return true;
    for (size_t i = 0; i < c->nmethods; i++)
        if (polis_str_eq(m, cstr(c->methods[i])))
            return true;
    return false;
}

static bool header_allowed(const struct polis_cors *c, struct polis_str h)
{
    if (c->any_header)
        return true;
    for (size_t i = 0; i < c->nheaders; i++)
        if (polis_str_caseeq(h, cstr(c->headers[i])))
            return true;
    return false;
}

/* Check every name of Access-Control-Request-Headers; when echoing, write them lowercased and
 * joined into r->scratch. Returns false when one is not allowed, not a token, or too many. */
static bool request_headers_ok(const struct polis_cors *c, const struct polis_cors_request *q,
                               struct polis_cors_result *r, size_t *echo_len)
{
    size_t w = 0;
    for (size_t l = 0; l < q->num_acr_headers; l++) {
        struct polis_str v = q->acr_headers[l];
        size_t i = 0;
        while (i < v.len) {
            while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
                i++;
            size_t s = i;
            while (i < v.len && v.p[i] != ',')
                i++;
            size_t e = i;
            while (e > s && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'))
                e--;
            if (e == s)
                continue;
            struct polis_str h = {v.p + s, e - s};
            if (!is_token(h) || !header_allowed(c, h))
                return false;
            if (!c->any_header)
                continue;
            if (w + h.len + 2 > sizeof(r->scratch))
                return false;
            if (w > 0) {
                memcpy(r->scratch + w, ", ", 2);
                w += 2;
            }
            for (size_t k = 0; k < h.len; k++)
                r->scratch[w++] = lower(h.p[k]);
        }
    }
    *echo_len = w;
    return true;
}

void polis__cors_evaluate(const struct polis_cors *c, const struct polis_cors_request *q,
                          struct polis_cors_result *r)
{
    r->action = POLIS_CORS_PASS;
    r->status = 0;
    r->num_headers = 0;
    r->vary = (struct polis_str){"", 0};
    bool depends = !(c->any_origin && !c->credentials);
    bool has_origin = q->origin.p != NULL;
    bool preflight = has_origin && q->acr_method.p != NULL && polis_str_eq(q->method, S("OPTIONS"));
    struct polis_str acao = c->any_origin && !c->credentials ? S("*") : q->origin;

    if (!preflight) {
        if (depends)
            r->vary = S("Origin");
        if (!has_origin || !origin_allowed(c, q->origin))
            return;
        add(r, S("Access-Control-Allow-Origin"), acao);
        if (c->credentials)
            add(r, S("Access-Control-Allow-Credentials"), S("true"));
        if (c->expose != NULL)
            add(r, S("Access-Control-Expose-Headers"), cstr(c->expose));
        return;
    }

    r->vary = S("Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
    size_t echo_len = 0;
    if (!origin_allowed(c, q->origin) || !method_allowed(c, q->acr_method) ||
        !request_headers_ok(c, q, r, &echo_len)) {
        r->action = POLIS_CORS_PREFLIGHT_DENIED;
        r->status = 403;
        return;
    }
    r->action = POLIS_CORS_PREFLIGHT_OK;
    r->status = 204;
    add(r, S("Access-Control-Allow-Origin"), acao);
    if (c->credentials)
        add(r, S("Access-Control-Allow-Credentials"), S("true"));
    add(r, S("Access-Control-Allow-Methods"),
        c->any_method ? q->acr_method : cstr(c->allow_methods));
    if (c->any_header && echo_len > 0)
        add(r, S("Access-Control-Allow-Headers"), (struct polis_str){r->scratch, echo_len});
    else if (c->allow_headers != NULL)
        add(r, S("Access-Control-Allow-Headers"), cstr(c->allow_headers));
    if (c->max_age[0] != '\0')
        add(r, S("Access-Control-Max-Age"), cstr(c->max_age));
}
