/* cors.h: CORS per route: a compiled policy, and for each request either the answer to a
 * preflight or the headers to add to the normal response. */
#ifndef POLIS_SECURITY_CORS_H
#define POLIS_SECURITY_CORS_H

#include <polis/core.h>

#include <stdbool.h>
#include <stdint.h>

/* A route's CORS settings as configured. Strings are NUL-terminated; nothing is kept after
 * polis__cors_new() returns. */
struct polis_cors_spec {
    const char *const *origins; /* exact origins ("https://app.example.com"), or one "*" */
    size_t num_origins;
    const char *const *methods; /* methods allowed by a preflight; none: GET, HEAD, POST;
                                   "*": any (the requested one is echoed) */
    size_t num_methods;
    const char *const *headers; /* request headers allowed; "*": any (the requested ones are
                                   echoed) */
    size_t num_headers;
    const char *const *expose; /* response headers scripts may read (Access-Control-Expose-
                                  Headers); "*" only without credentials */
    size_t num_expose;
    bool credentials; /* Access-Control-Allow-Credentials: true; the origin is then always
                         echoed, never "*" */
    int64_t max_age;  /* seconds a preflight may be cached, 0..86400; < 0: not sent */
};

struct polis_cors;

/* Compile spec. Origins are compared case-insensitively and written without a default port
 * ("https://a.example:443" is stored as "https://a.example"); an origin must be scheme://host
 * with an optional :port and nothing else (no path, not even a trailing '/'); "null" is refused
 * (sandboxed documents and file: pages send it: allowing it allows all of them). "*" must be
 * the only origin. Methods and header names must be RFC 9110 tokens. Returns 0 and *out,
 * POLIS_EINVAL with a message in err (errcap bytes, err may be NULL), or POLIS_ENOMEM. */
int polis__cors_new(const struct polis_cors_spec *spec, struct polis_cors **out, char *err,
                    size_t errcap);
void polis__cors_free(struct polis_cors *c);

/* The parts of a request CORS looks at. A view with p == NULL is an absent header. The caller
 * refuses a request with more than one Origin line before getting here. */
struct polis_cors_request {
    struct polis_str method;
    struct polis_str origin;
    struct polis_str acr_method;         /* Access-Control-Request-Method */
    const struct polis_str *acr_headers; /* Access-Control-Request-Headers, every line */
    size_t num_acr_headers;
};

enum polis_cors_action {
    POLIS_CORS_PASS = 0,         /* not a preflight: forward it and add headers[] to the response */
    POLIS_CORS_PREFLIGHT_OK,     /* answer 204 with headers[] (and Vary), do not forward */
    POLIS_CORS_PREFLIGHT_DENIED, /* answer 403 without CORS headers, do not forward */
};

#define POLIS_CORS_MAX_HEADERS 6
/* Room for echoed request header names. A preflight asking for more is denied. */
#define POLIS_CORS_SCRATCH 2048

struct polis_cors_header {
    struct polis_str name, value;
};

/* What to do. Views point into the policy, into the request's header values, or into scratch:
 * valid while all three live and this result is not moved. */
struct polis_cors_result {
    enum polis_cors_action action;
    int status; /* 204 or 403 for preflights; 0 for PASS */
    struct polis_cors_header headers[POLIS_CORS_MAX_HEADERS];
    size_t num_headers;
    /* Field names the response varies on ("Origin", or the preflight's three), or empty: to be
     * merged into a Vary header the response may already have. */
    struct polis_str vary;
    char scratch[POLIS_CORS_SCRATCH];
};

/* Decide. A preflight is an OPTIONS request with Origin and Access-Control-Request-Method: it is
 * answered 204 when the origin, the method and every requested header are allowed, 403
 * otherwise. Any other request is PASS: with an allowed Origin it gets
 * Access-Control-Allow-Origin (the origin, or "*" when every origin is allowed without
 * credentials), -Allow-Credentials and -Expose-Headers; with no Origin or one not allowed it
 * gets no CORS header (the browser then withholds the response from the page). Any thread. */
void polis__cors_evaluate(const struct polis_cors *c, const struct polis_cors_request *req,
                          struct polis_cors_result *out);

#endif
