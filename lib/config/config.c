/* config.c: the gateway configuration: defaults, addresses, the YAML loader, validation with
 * file:line errors, and freeing. */
#include "config/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* Key paths and quoted values in messages are cut to fit their buffers on purpose. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

/* Limits of the configuration (documented in docs/configuration.md). */
#define MAX_ERRORS 50
#define MAX_WORKERS 256
#define MAX_KEEPALIVE 10000
#define MAX_WEIGHT 10000
#define MAX_MS (24ull * 3600 * 1000) /* every duration: at most 24h */
#define MAX_BODY (1ull << 50)        /* limits.max_body and routes' max_body */
#define MAX_CONNECTIONS 10000000     /* limits.max_connections */
#define MAX_FILE (8u << 20)          /* a configuration file: 8 MiB */
#define MAX_DEPTH 64                 /* YAML nesting */
#define MAX_NODES 1000000            /* YAML nodes */
#define MAX_COUNT 1000000            /* failure counts, thresholds, budget_min, minimum_calls */
#define MAX_ATTEMPTS 10              /* retry.attempts */
#define MAX_WINDOW_CALLS 100000      /* a breaker's count window */
#define MAX_WINDOW_SECONDS 3600      /* a breaker's time window */
#define MAX_HALF_OPEN 10000          /* a breaker's half-open probes */
#define MAX_THRESHOLD 1000           /* health check thresholds */

/* Limits of the edge security settings. */
#define MAX_RATE 1000000000u           /* a rate limit's requests per period and its burst */
#define MAX_JWT_CACHE 10000000         /* jwt.cache_size */
#define MAX_LEEWAY (10ull * 60 * 1000) /* a JWT issuer's leeway: 10 min */
#define MAX_REDIS_TIMEOUT 60000        /* a redis timeout: 1 min */

enum unit { UNIT_NUM, UNIT_MS, UNIT_BYTES };

/* One error: its line (0: none) and message without the "file:line: " part. */
struct diag_err {
    int line;
    size_t seq;
    char *msg;
};

/* Where a field of the tree was written (by address), and whether the loader already reported
 * it malformed (then validation does not report it again). */
struct diag_where {
    const void *addr;
    int line;
    bool reported;
};

/* The errors of one load or validation. */
struct diag {
    const char *file;
    struct diag_err *v;
    size_t n, cap, dropped;
    bool oom;
    struct diag_where *w;
    size_t nw, capw;
    bool w_sorted;
};

/* ---- Diagnostics ------------------------------------------------------------------------- */

static void diag_init(struct diag *d, const char *file)
{
    memset(d, 0, sizeof(*d));
    d->file = file ? file : "config";
}

__attribute__((format(printf, 3, 4))) static void diag_add(struct diag *d, int line,
                                                           const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;

    if (d->n >= MAX_ERRORS) {
        d->dropped++;
        return;
    }
    if (d->n == d->cap) {
        size_t ncap = d->cap ? d->cap * 2 : 8;
        struct diag_err *nv = realloc(d->v, ncap * sizeof(*nv));
        if (!nv) {
            d->oom = true;
            return;
        }
        d->v = nv;
        d->cap = ncap;
    }
    va_start(ap, fmt);
    int r = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (r < 0) {
        d->oom = true;
        return;
    }
    d->v[d->n].line = line;
    d->v[d->n].seq = d->n;
    d->v[d->n].msg = msg;
    d->n++;
}

static int where_cmp(const void *a, const void *b)
{
    const struct diag_where *x = a, *y = b;
    if (x->addr != y->addr)
        return (uintptr_t)x->addr < (uintptr_t)y->addr ? -1 : 1;
    return 0;
}

static void diag_where(struct diag *d, const void *addr, int line, bool reported)
{
    if (d->nw == d->capw) {
        size_t ncap = d->capw ? d->capw * 2 : 64;
        struct diag_where *nw = realloc(d->w, ncap * sizeof(*nw));
        if (!nw) {
            d->oom = true;
            return;
        }
        d->w = nw;
        d->capw = ncap;
    }
    d->w[d->nw++] = (struct diag_where){addr, line, reported};
    d->w_sorted = false;
}

static const struct diag_where *where_find(struct diag *d, const void *addr)
{
    if (d->nw == 0)
        return NULL;
    if (!d->w_sorted) {
        qsort(d->w, d->nw, sizeof(*d->w), where_cmp);
        d->w_sorted = true;
    }
    struct diag_where key = {addr, 0, false};
    return bsearch(&key, d->w, d->nw, sizeof(*d->w), where_cmp);
}

/* The line where the field at addr was written, or fallback. */
static int line_of(struct diag *d, const void *addr, int fallback)
{
    const struct diag_where *w = where_find(d, addr);
    return w && w->line > 0 ? w->line : fallback;
}

/* True when the loader already reported the field at addr as malformed. */
static bool reported(struct diag *d, const void *addr)
{
    const struct diag_where *w = where_find(d, addr);
    return w && w->reported;
}

static int err_cmp(const void *a, const void *b)
{
    const struct diag_err *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : (x->seq > y->seq);
}

static int diag_finish(struct diag *d, struct polis_config_errors *errs)
{
    int rc = 0;

    if (d->n)
        qsort(d->v, d->n, sizeof(*d->v), err_cmp);
    if (errs) {
        size_t total = d->n + (d->dropped ? 1 : 0);
        errs->msgs = total ? calloc(total, sizeof(char *)) : NULL;
        errs->count = 0;
        if (total && !errs->msgs)
            rc = POLIS_ENOMEM;
        for (size_t i = 0; errs->msgs && i < d->n; i++) {
            char *m = NULL;
            int r = d->v[i].line > 0 ? asprintf(&m, "%s:%d: %s", d->file, d->v[i].line, d->v[i].msg)
                                     : asprintf(&m, "%s: %s", d->file, d->v[i].msg);
            if (r < 0) {
                rc = POLIS_ENOMEM;
                continue;
            }
            errs->msgs[errs->count++] = m;
        }
        if (errs->msgs && d->dropped) {
            char *m = NULL;
            if (asprintf(&m, "%s: %zu more errors not shown; expected at most %d errors", d->file,
                         d->dropped, MAX_ERRORS) >= 0)
                errs->msgs[errs->count++] = m;
        }
    }
    for (size_t i = 0; i < d->n; i++)
        free(d->v[i].msg);
    free(d->v);
    free(d->w);
    if (d->oom)
        rc = POLIS_ENOMEM;
    memset(d, 0, sizeof(*d));
    return rc;
}

void polis__config_errors_free(struct polis_config_errors *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->count; i++)
        free(e->msgs[i]);
    free(e->msgs);
    e->msgs = NULL;
    e->count = 0;
}

/* ---- Text helpers ------------------------------------------------------------------------ */

static void diag_quote(const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;

    if (cap < 8) {
        if (cap)
            out[0] = 0;
        return;
    }
    out[o++] = '\'';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= cap) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c < 0x20 || c == 0x7f || c == '\\') {
            int n = snprintf(out + o, cap - o, c == '\\' ? "\\\\" : "\\x%02x", c);
            o += (size_t)n;
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '\'';
    out[o] = 0;
}

static void diag_ms(uint64_t ms, char *out, size_t cap)
{
    if (ms == 0)
        snprintf(out, cap, "0");
    else if (ms % 3600000 == 0)
        snprintf(out, cap, "%lluh", (unsigned long long)(ms / 3600000));
    else if (ms != 0 && ms % 60000 == 0)
        snprintf(out, cap, "%llum", (unsigned long long)(ms / 60000));
    else if (ms != 0 && ms % 1000 == 0)
        snprintf(out, cap, "%llus", (unsigned long long)(ms / 1000));
    else
        snprintf(out, cap, "%llums", (unsigned long long)ms);
}

static void diag_size(uint64_t v, char *out, size_t cap)
{
    static const char *const units[] = {"TiB", "GiB", "MiB", "KiB"};
    for (int i = 0; i < 4; i++) {
        uint64_t m = 1ull << (10 * (4 - i));
        if (v != 0 && v % m == 0) {
            snprintf(out, cap, "%llu%s", (unsigned long long)(v / m), units[i]);
            return;
        }
    }
    snprintf(out, cap, "%lluB", (unsigned long long)v);
}

/* ---- Rules shared by the loader and validation ------------------------------------------- */

static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool cfg_is_token(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        if (!is_tchar((unsigned char)*s))
            return false;
    }
    return true;
}

static bool cfg_is_name(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/* A header value: no CR, LF or NUL (the strings are C strings, so NUL cannot be inside). */
static bool is_header_value(const char *s)
{
    return s && strpbrk(s, "\r\n") == NULL;
}

/* "api.example.com" or "*.example.com": labels of [A-Za-z0-9-_], dot separated. */
static bool is_host(const char *s);

/* A DNS name, which may end in one dot (a fully qualified name, asked once instead of once per
 * search domain). */
static bool dns_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 2 || s[n - 1] != '.')
        return is_host(s);
    char buf[256];
    if (n > sizeof(buf) || s[n - 2] == '.')
        return false;
    memcpy(buf, s, n - 1);
    buf[n - 1] = '\0';
    return is_host(buf);
}

static bool is_host(const char *s)
{
    if (!s || !*s)
        return false;
    if (s[0] == '*') {
        if (s[1] != '.')
            return false;
        s += 2;
    }
    size_t label = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_') {
            label++;
        } else {
            return false;
        }
    }
    return label > 0;
}

/* Check a path (exact, prefix, pattern or rewrite). Returns NULL when fine, else what is wrong. */
static const char *path_problem(const char *p, bool pattern)
{
    if (!p || p[0] != '/')
        return "does not start with '/'";
    for (const char *c = p; *c; c++) {
        unsigned char u = (unsigned char)*c;
        if (u <= 0x20 || u == 0x7f)
            return "holds a space or control character";
        if (u == '?' || u == '#')
            return "holds '?' or '#'";
        if (!pattern && (u == '{' || u == '}'))
            return "holds '{' or '}' (only path: may hold {name} parameters)";
    }
    if (!pattern)
        return NULL;
    /* Every segment with a brace must be exactly "{name}", names unique. */
    const char *seg = p + 1;
    char names[32][64];
    size_t nnames = 0;
    for (;;) {
        const char *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        bool brace = memchr(seg, '{', len) || memchr(seg, '}', len);
        if (brace) {
            if (len < 3 || seg[0] != '{' || seg[len - 1] != '}')
                return "has a {name} that is not a whole segment";
            for (size_t i = 1; i + 1 < len; i++) {
                unsigned char c = (unsigned char)seg[i];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_'))
                    return "has a parameter name outside [A-Za-z0-9_]";
            }
            if (len - 2 >= sizeof(names[0]))
                return "has a parameter name longer than 63 characters";
            for (size_t i = 0; i < nnames; i++) {
                if (strlen(names[i]) == len - 2 && memcmp(names[i], seg + 1, len - 2) == 0)
                    return "uses a parameter name twice";
            }
            if (nnames == sizeof(names) / sizeof(names[0]))
                return "has more than 32 parameters";
            memcpy(names[nnames], seg + 1, len - 2);
            names[nnames][len - 2] = 0;
            nnames++;
        }
        if (!end)
            break;
        seg = end + 1;
    }
    return NULL;
}

/* ---- Defaults and freeing ---------------------------------------------------------------- */

static void addr_ipv4(struct polis_addr *a, const char *ip, uint16_t port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
    memset(a, 0, sizeof(*a));
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
    a->len = sizeof(*sin);
    snprintf(a->text, sizeof(a->text), "%s:%u", ip, (unsigned)port);
}

void polis__config_defaults(struct polis_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->workers = 0;
    cfg->has_admin = true;
    addr_ipv4(&cfg->admin, "127.0.0.1", 9901);
    cfg->limits.max_request_line = 8 * 1024;
    cfg->limits.max_header_bytes = 32 * 1024;
    cfg->limits.max_headers = 100;
    cfg->limits.max_body = 64ull * 1024 * 1024;
    cfg->limits.max_connections = 100000;
    cfg->tracing.sample_ratio = 0.1;
    cfg->access_log_fields = (1u << POLIS_ALOG__COUNT) - 1;
    cfg->timeouts.header_read_ms = 10000;
    cfg->timeouts.body_read_ms = 30000;
    cfg->timeouts.idle_ms = 60000;
    cfg->timeouts.request_ms = 0;
    cfg->timeouts.drain_ms = 30000;
    cfg->registry.enabled = false;
    cfg->registry.default_ttl_ms = 30000;
    cfg->registry.max_ttl_ms = 3600000;
    cfg->registry.max_wait_ms = 300000;
    /* Edge security: off; these are the values a present section starts from. */
    cfg->tls.min_version = POLIS_CFG_TLS_1_2;
    cfg->tls.session_tickets = true;
    cfg->tls.session_timeout_ms = 300000;
    cfg->jwt.cache_size = 10000;
}

/* The default retry policy: 3 tries on connect failures and resets, 25..250 ms full-jitter
 * backoff, a budget of 20% of active requests (at least 3). */
static void retry_defaults(struct polis_retry_cfg *r)
{
    memset(r, 0, sizeof(*r));
    r->attempts = 3;
    r->on = POLIS_RETRY_CONNECT | POLIS_RETRY_RESET;
    r->backoff_base_ms = 25;
    r->backoff_max_ms = 250;
    r->per_try_timeout_ms = 0;
    r->deadline_ms = 0;
    r->budget_percent = 20;
    r->budget_min = 3;
}

/* A breaker's defaults (disabled until its section is present). */
static void breaker_defaults(struct polis_breaker_cfg *b)
{
    memset(b, 0, sizeof(*b));
    b->window = POLIS_WINDOW_COUNT;
    b->window_size = 100;
    b->min_calls = 20;
    b->failure_rate = 50;
    b->slow_call_rate = 0;
    b->slow_call_ms = 5000;
    b->consecutive_failures = 0;
    b->open_ms = 30000;
    b->half_open_calls = 3;
}

static void cluster_defaults(struct polis_cluster_cfg *c)
{
    memset(c, 0, sizeof(*c));
    c->lb = POLIS_LB_ROUND_ROBIN;
    c->hash_on = POLIS_HASH_CLIENT_IP;
    c->keepalive = 64;
    c->connect_timeout_ms = 2000;
    c->timeout_ms = 30000;
    c->discovery.kind = POLIS_DISC_STATIC;
    c->discovery.dns_type = POLIS_DNS_A;
    c->discovery.dns_min_ttl_ms = 1000;
    c->discovery.dns_max_ttl_ms = 30000;
    /* Health checks, outlier detection and breakers are off unless their section is present;
     * their numbers are the defaults a present section starts from. path and statuses are set
     * when the section is read. */
    c->health_check.interval_ms = 5000;
    c->health_check.timeout_ms = 1000;
    c->health_check.jitter_ms = 500;
    c->health_check.healthy_threshold = 2;
    c->health_check.unhealthy_threshold = 3;
    c->outlier.consecutive_5xx = 5;
    c->outlier.consecutive_gateway_errors = 3;
    c->outlier.consecutive_connect_failures = 2;
    c->outlier.base_ejection_ms = 30000;
    c->outlier.max_ejection_ms = 300000;
    c->outlier.max_ejection_percent = 50;
    breaker_defaults(&c->breaker);
    breaker_defaults(&c->instance_breaker);
    retry_defaults(&c->retry);
    c->panic_threshold = 50;
    c->max_connections = 0;
    c->max_pending = 0;
    c->max_requests = 0;
    c->tls.verify = true;
}

static void strv_free(char ***v, size_t *n)
{
    for (size_t i = 0; *v && i < *n; i++)
        free((*v)[i]);
    free(*v);
    *v = NULL;
    *n = 0;
}

static void kv_free(struct polis_header_kv **v, size_t *n)
{
    for (size_t i = 0; *v && i < *n; i++) {
        free((*v)[i].name);
        free((*v)[i].value);
    }
    free(*v);
    *v = NULL;
    *n = 0;
}

static void refs_free(struct polis_name_ref **v, size_t *n)
{
    for (size_t i = 0; *v && i < *n; i++)
        free((*v)[i].name);
    free(*v);
    *v = NULL;
    *n = 0;
}

static void access_free(struct polis_access_cfg *a)
{
    free(a->allow);
    free(a->deny);
    memset(a, 0, sizeof(*a));
}

static void upstream_tls_free(struct polis_upstream_tls_cfg *t)
{
    free(t->ca);
    free(t->server_name);
    free(t->cert);
    free(t->key);
    t->ca = t->server_name = t->cert = t->key = NULL;
}

/* A route's auth, rate limits, CORS and access lists. */
static void route_security_free(struct polis_route_cfg *r)
{
    struct polis_auth_cfg *a = &r->auth;
    refs_free(&a->jwt_rules.issuers, &a->jwt_rules.num_issuers);
    kv_free(&a->jwt_rules.required_claims, &a->jwt_rules.num_required_claims);
    strv_free(&a->jwt_rules.scopes, &a->jwt_rules.num_scopes);
    kv_free(&a->jwt_rules.forward_claims, &a->jwt_rules.num_forward_claims);
    refs_free(&a->consumers.allow, &a->consumers.num_allow);
    strv_free(&a->consumers.allow_groups, &a->consumers.num_allow_groups);
    refs_free(&a->consumers.deny, &a->consumers.num_deny);
    strv_free(&a->consumers.deny_groups, &a->consumers.num_deny_groups);
    free(a->forward_consumer);
    a->forward_consumer = NULL;
    refs_free(&r->rate_limits, &r->num_rate_limits);
    strv_free(&r->cors.origins, &r->cors.num_origins);
    strv_free(&r->cors.methods, &r->cors.num_methods);
    strv_free(&r->cors.headers, &r->cors.num_headers);
    strv_free(&r->cors.expose_headers, &r->cors.num_expose_headers);
    access_free(&r->access);
}

/* The top-level security sections: TLS, JWT, API keys, consumers, rate limits, networks. */
static void security_free(struct polis_config *cfg)
{
    struct polis_tls_cfg *t = &cfg->tls;
    for (size_t i = 0; t->certs && i < t->num_certs; i++) {
        free(t->certs[i].cert);
        free(t->certs[i].key);
    }
    free(t->certs);
    t->certs = NULL;
    strv_free(&t->alpn, &t->num_alpn);
    free(t->client_ca);
    free(t->forward_subject);
    for (size_t i = 0; cfg->jwt.issuers && i < cfg->jwt.num_issuers; i++) {
        struct polis_jwt_issuer_cfg *is = &cfg->jwt.issuers[i];
        free(is->name);
        free(is->issuer);
        strv_free(&is->audiences, &is->num_audiences);
        for (size_t k = 0; is->keys && k < is->num_keys; k++) {
            free(is->keys[k].file);
            free(is->keys[k].secret_file);
            free(is->keys[k].kid);
        }
        free(is->keys);
        free(is->jwks_file);
        free(is->jwks_url);
        free(is->jwks_ca);
    }
    free(cfg->jwt.issuers);
    free(cfg->api_keys.header);
    free(cfg->api_keys.query);
    for (size_t i = 0; cfg->consumers && i < cfg->num_consumers; i++) {
        free(cfg->consumers[i].name);
        strv_free(&cfg->consumers[i].groups, &cfg->consumers[i].num_groups);
        free(cfg->consumers[i].key_sha256);
    }
    free(cfg->consumers);
    for (size_t i = 0; cfg->rate_limits && i < cfg->num_rate_limits; i++) {
        free(cfg->rate_limits[i].name);
        free(cfg->rate_limits[i].key_header);
        free(cfg->rate_limits[i].redis.address);
        free(cfg->rate_limits[i].redis.password_file);
    }
    free(cfg->rate_limits);
    free(cfg->trusted_proxies);
    access_free(&cfg->access);
}

static void cluster_free(struct polis_cluster_cfg *c)
{
    free(c->name);
    free(c->hash_key);
    for (size_t i = 0; c->instances && i < c->num_instances; i++) {
        free(c->instances[i].id);
        kv_free(&c->instances[i].meta, &c->instances[i].num_meta);
    }
    free(c->instances);
    free(c->discovery.service);
    free(c->discovery.dns_name);
    free(c->discovery.dns_server);
    strv_free(&c->discovery.etcd_endpoints, &c->discovery.num_etcd_endpoints);
    free(c->discovery.etcd_prefix);
    free(c->health_check.path);
    free(c->health_check.host);
    free(c->health_check.statuses);
    free(c->retry.statuses);
    upstream_tls_free(&c->tls);
}

static void header_ops_free(struct polis_header_ops *o)
{
    for (size_t i = 0; o->add && i < o->num_add; i++) {
        free(o->add[i].name);
        free(o->add[i].value);
    }
    free(o->add);
    for (size_t i = 0; o->remove && i < o->num_remove; i++)
        free(o->remove[i]);
    free(o->remove);
    memset(o, 0, sizeof(*o));
}

void polis__config_free(struct polis_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->source);
    free(cfg->access_log);
    free(cfg->error_log);
    free(cfg->admin_token);
    free(cfg->tracing.endpoint);
    free(cfg->tracing.service_name);
    for (size_t i = 0; cfg->clusters && i < cfg->num_clusters; i++)
        cluster_free(&cfg->clusters[i]);
    free(cfg->clusters);
    for (size_t i = 0; cfg->routes && i < cfg->num_routes; i++) {
        struct polis_route_cfg *r = &cfg->routes[i];
        free(r->name);
        free(r->host);
        free(r->path);
        for (size_t j = 0; r->methods && j < r->num_methods; j++)
            free(r->methods[j]);
        free(r->methods);
        for (size_t j = 0; r->headers && j < r->num_headers; j++) {
            free(r->headers[j].name);
            free(r->headers[j].value);
        }
        free(r->headers);
        free(r->cluster);
        free(r->rewrite);
        header_ops_free(&r->request_headers);
        header_ops_free(&r->response_headers);
        for (size_t j = 0; r->cookies && j < r->num_cookies; j++) {
            free(r->cookies[j].name);
            free(r->cookies[j].value);
        }
        free(r->cookies);
        kv_free(&r->subset.match, &r->subset.num_match);
        for (size_t j = 0; r->splits && j < r->num_splits; j++)
            kv_free(&r->splits[j].subset.match, &r->splits[j].subset.num_match);
        free(r->splits);
        kv_free(&r->mirror.subset.match, &r->mirror.subset.num_match);
        strv_free(&r->mirror.compare_headers, &r->mirror.num_compare_headers);
        strv_free(&r->mirror.ignore_fields, &r->mirror.num_ignore_fields);
        if (r->retry)
            free(r->retry->statuses);
        free(r->retry);
        route_security_free(r);
    }
    free(cfg->routes);
    security_free(cfg);
    free(cfg);
}

/* ---- Addresses --------------------------------------------------------------------------- */

static int addr_fill(struct polis_addr *out, const struct sockaddr *sa, socklen_t len)
{
    char ip[INET6_ADDRSTRLEN];
    unsigned port;

    memset(out, 0, sizeof(*out));
    if (len > sizeof(out->ss))
        return POLIS_EINVAL;
    memcpy(&out->ss, sa, len);
    out->len = len;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        port = ntohs(sin->sin_port);
        snprintf(out->text, sizeof(out->text), "%s:%u", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        port = ntohs(sin6->sin6_port);
        snprintf(out->text, sizeof(out->text), "[%s]:%u", ip, port);
    } else {
        return POLIS_EINVAL;
    }
    return 0;
}

int polis__addr_parse(const char *s, struct polis_addr *out)
{
    char host[256];
    const char *port;
    size_t hlen;
    bool v6 = false;

    if (!s || !out)
        return POLIS_EINVAL;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return POLIS_EINVAL;
        hlen = (size_t)(close - s - 1);
        memcpy(host, s + 1, hlen < sizeof(host) ? hlen : 0);
        port = close + 2;
        v6 = true;
        if (hlen == 0 || hlen >= sizeof(host))
            return POLIS_EINVAL;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon)
            return POLIS_EINVAL;
        hlen = (size_t)(colon - s);
        if (hlen >= sizeof(host) || memchr(s, ':', hlen))
            return POLIS_EINVAL; /* an IPv6 address needs brackets */
        memcpy(host, s, hlen);
        port = colon + 1;
    }
    host[hlen] = 0;
    /* The port: 1 to 5 digits, 0..65535. */
    size_t plen = strlen(port);
    if (plen == 0 || plen > 5 || strspn(port, "0123456789") != plen)
        return POLIS_EINVAL;
    unsigned long pnum = strtoul(port, NULL, 10);
    if (pnum > 65535)
        return POLIS_EINVAL;
    if (hlen == 0) {
        addr_ipv4(out, "0.0.0.0", (uint16_t)pnum);
        return 0;
    }
    for (size_t i = 0; i < hlen; i++) {
        unsigned char c = (unsigned char)host[i];
        if (c <= 0x20 || c >= 0x7f || c == '/' || c == '[' || c == ']')
            return POLIS_EINVAL;
    }
    /* Numeric first (no resolver), then a name, resolved once: the first result wins. */
    struct addrinfo hints = {0}, *res = NULL;
    char pbuf[8];
    snprintf(pbuf, sizeof(pbuf), "%lu", pnum);
    hints.ai_family = v6 ? AF_INET6 : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST;
    int r = getaddrinfo(host, pbuf, &hints, &res);
    if (r != 0 && !v6) {
        hints.ai_flags = AI_NUMERICSERV;
        r = getaddrinfo(host, pbuf, &hints, &res);
    }
    if (r != 0 || !res)
        return POLIS_EINVAL;
    r = addr_fill(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return r;
}

/* ---- Networks (CIDR) --------------------------------------------------------------------- */

enum cidr_result { CIDR_OK = 0, CIDR_SYNTAX, CIDR_PREFIX, CIDR_HOST_BITS };

/* Parse "10.0.0.0/8", "fd00::/8" or a bare address into out. */
static enum cidr_result cidr_parse(const char *s, struct polis_cidr *out)
{
    char host[INET6_ADDRSTRLEN];
    const char *slash = strchr(s, '/');
    size_t hlen = slash ? (size_t)(slash - s) : strlen(s);
    unsigned max;

    memset(out, 0, sizeof(*out));
    if (hlen == 0 || hlen >= sizeof(host))
        return CIDR_SYNTAX;
    memcpy(host, s, hlen);
    host[hlen] = 0;
    if (inet_pton(AF_INET, host, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, host, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return CIDR_SYNTAX;
    }
    unsigned long prefix = max;
    if (slash) {
        const char *p = slash + 1;
        size_t n = strlen(p);
        if (n == 0 || n > 3 || strspn(p, "0123456789") != n)
            return CIDR_SYNTAX;
        prefix = strtoul(p, NULL, 10);
        if (prefix > max)
            return CIDR_PREFIX;
    }
    out->prefix = (uint8_t)prefix;
    for (unsigned bit = (unsigned)prefix; bit < max; bit++) {
        if (out->addr[bit / 8] & (0x80u >> (bit % 8)))
            return CIDR_HOST_BITS;
    }
    return CIDR_OK;
}

/* The network of c with the bits past its prefix cleared, as text ("10.0.0.0/8"). */
static void cidr_network_text(const struct polis_cidr *c, char *out, size_t cap)
{
    uint8_t a[16];
    char ip[INET6_ADDRSTRLEN];
    unsigned max = c->family == AF_INET ? 32 : 128;

    memcpy(a, c->addr, sizeof(a));
    for (unsigned bit = c->prefix; bit < max; bit++)
        a[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
    inet_ntop(c->family, a, ip, sizeof(ip));
    snprintf(out, cap, "%s/%u", ip, (unsigned)c->prefix);
}

int polis__cidr_parse(const char *s, struct polis_cidr *out)
{
    if (!s || !out)
        return POLIS_EINVAL;
    return cidr_parse(s, out) == CIDR_OK ? 0 : POLIS_EINVAL;
}

bool polis__cidr_match(const struct polis_cidr *net, const struct sockaddr *sa)
{
    const uint8_t *a;
    int family;

    if (!net || !sa)
        return false;
    if (sa->sa_family == AF_INET) {
        a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
        family = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *in6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        a = in6->s6_addr;
        family = AF_INET6;
        if (IN6_IS_ADDR_V4MAPPED(in6)) {
            a += 12;
            family = AF_INET;
        }
    } else {
        return false;
    }
    if (family != net->family || net->prefix > (family == AF_INET ? 32 : 128))
        return false;
    unsigned full = net->prefix / 8, rest = net->prefix % 8;
    if (memcmp(a, net->addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (a[full] & mask) == (net->addr[full] & mask);
}

/* ---- Validation -------------------------------------------------------------------------- */

/* Report v outside [min, max]; found is the value as written, or NULL to print v. */
static bool cfg_range(struct diag *d, int line, const char *path, const char *found, uint64_t v,
                      uint64_t min, uint64_t max, enum unit unit)
{
    char fbuf[80], lo[32], hi[32];

    if (v >= min && v <= max)
        return true;
    switch (unit) {
    case UNIT_MS:
        diag_ms(v, fbuf, sizeof(fbuf));
        diag_ms(min, lo, sizeof(lo));
        diag_ms(max, hi, sizeof(hi));
        break;
    case UNIT_BYTES:
        diag_size(v, fbuf, sizeof(fbuf));
        diag_size(min, lo, sizeof(lo));
        diag_size(max, hi, sizeof(hi));
        break;
    default:
        snprintf(fbuf, sizeof(fbuf), "%llu", (unsigned long long)v);
        snprintf(lo, sizeof(lo), "%llu", (unsigned long long)min);
        snprintf(hi, sizeof(hi), "%llu", (unsigned long long)max);
        break;
    }
    diag_add(d, line, "%s: found %s, out of range; expected %s..%s", path, found ? found : fbuf, lo,
             hi);
    return false;
}

/* Check a number field unless the loader already reported it. */
#define RANGE(d, addr, fallback, path, v, min, max, unit)                                          \
    do {                                                                                           \
        if (!reported((d), (addr)))                                                                \
            cfg_range((d), line_of((d), (addr), (fallback)), (path), NULL, (v), (min), (max),      \
                      (unit));                                                                     \
    } while (0)

static void validate_header_ops(struct diag *d, const struct polis_header_ops *o, const char *path,
                                int fallback)
{
    char q[96];
    for (size_t i = 0; i < o->num_add; i++) {
        const struct polis_header_kv *kv = &o->add[i];
        int line = line_of(d, kv, fallback);
        if (reported(d, kv))
            continue;
        if (!cfg_is_token(kv->name)) {
            diag_quote(kv->name ? kv->name : "", kv->name ? strlen(kv->name) : 0, q, sizeof(q));
            diag_add(d, line,
                     "%s.add: header name %s is not a token; expected letters, "
                     "digits and !#$%%&'*+-.^_`|~",
                     path, q);
        }
        if (!is_header_value(kv->value)) {
            diag_add(d, line, "%s.add.%s: value %s; expected a value without CR or LF", path,
                     kv->name ? kv->name : "?", kv->value ? "holds CR or LF" : "is missing");
        }
    }
    for (size_t i = 0; i < o->num_remove; i++) {
        if (reported(d, &o->remove[i]) || cfg_is_token(o->remove[i]))
            continue;
        diag_quote(o->remove[i] ? o->remove[i] : "", o->remove[i] ? strlen(o->remove[i]) : 0, q,
                   sizeof(q));
        diag_add(d, line_of(d, &o->remove[i], fallback),
                 "%s.remove[%zu]: header name %s is not a token; expected letters, digits "
                 "and !#$%%&'*+-.^_`|~",
                 path, i, q);
    }
}

/* A numeric IPv4 or bracketed IPv6 address with a non-zero port ("127.0.0.1:5353",
 * "[::1]:53"): what a DNS resolver is given. Fills out; returns false otherwise. */
static bool numeric_addr(const char *s, struct polis_addr *out)
{
    char host[64];
    const char *end;
    unsigned char buf[sizeof(struct in6_addr)];

    if (!s)
        return false;
    if (s[0] == '[') {
        end = strchr(s, ']');
        if (!end || (size_t)(end - s - 1) >= sizeof(host))
            return false;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = 0;
        if (inet_pton(AF_INET6, host, buf) != 1)
            return false;
    } else {
        end = strrchr(s, ':');
        if (!end || (size_t)(end - s) >= sizeof(host))
            return false;
        memcpy(host, s, (size_t)(end - s));
        host[end - s] = 0;
        if (inet_pton(AF_INET, host, buf) != 1)
            return false;
    }
    if (polis__addr_parse(s, out) < 0)
        return false;
    if (out->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&out->ss)->sin_port != 0;
    return ((const struct sockaddr_in6 *)&out->ss)->sin6_port != 0;
}

/* "http://" and a non-empty host part, without spaces or control characters. */
static bool is_http_url(const char *s)
{
    if (!s || strncmp(s, "http://", 7) != 0 || s[7] == 0 || s[7] == '/')
        return false;
    for (const char *c = s; *c; c++) {
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c == 0x7f)
            return false;
    }
    return true;
}

/* Text without spaces or control characters (a Host header, a path). */
static bool is_visible(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7f)
            return false;
    }
    return true;
}

/* A JSON field path: names separated by single dots ("meta.id"). */
static bool is_field_path(const char *s)
{
    if (!s || !*s || s[0] == '.')
        return false;
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            return false;
        if (s[0] == '.' && (s[1] == '.' || s[1] == 0))
            return false;
    }
    return true;
}

/* A subset as "{version: v2, zone: a}" for messages. */
static void subset_text(const struct polis_subset_cfg *s, char *out, size_t cap)
{
    size_t o = 0;
    int n = snprintf(out, cap, "{");
    o = n > 0 ? (size_t)n : 0;
    for (size_t i = 0; s->match && i < s->num_match && o < cap; i++) {
        n = snprintf(out + o, cap - o, "%s%s: %s", i ? ", " : "",
                     s->match[i].name ? s->match[i].name : "?",
                     s->match[i].value ? s->match[i].value : "?");
        if (n < 0)
            break;
        o += (size_t)n;
    }
    if (o < cap)
        snprintf(out + o, cap - o, "}");
}

/* Whether every pair of the subset is in the instance's metadata. */
static bool subset_matches(const struct polis_subset_cfg *s, const struct polis_instance_cfg *in)
{
    for (size_t i = 0; i < s->num_match; i++) {
        const struct polis_header_kv *want = &s->match[i];
        bool found = false;
        for (size_t k = 0; in->meta && k < in->num_meta && !found; k++) {
            found = want->name && want->value && in->meta[k].name && in->meta[k].value &&
                    strcmp(in->meta[k].name, want->name) == 0 &&
                    strcmp(in->meta[k].value, want->value) == 0;
        }
        if (!found)
            return false;
    }
    return true;
}

/* Check a subset's keys (names) and values (non-empty). Returns false when it is malformed. */
static bool validate_subset(struct diag *d, const struct polis_subset_cfg *s, const char *path,
                            int fallback)
{
    char q[96];
    int sl = line_of(d, s, fallback);
    bool ok = true;

    if (reported(d, s))
        return false;
    if (s->num_match && !s->match) {
        diag_add(d, sl, "%s: count without a list; expected a mapping", path);
        return false;
    }
    for (size_t i = 0; i < s->num_match; i++) {
        const struct polis_header_kv *kv = &s->match[i];
        int line = line_of(d, kv, sl);
        if (reported(d, kv)) {
            ok = false;
            continue;
        }
        if (!cfg_is_name(kv->name)) {
            diag_quote(kv->name ? kv->name : "", kv->name ? strlen(kv->name) : 0, q, sizeof(q));
            diag_add(d, line,
                     "%s: key %s; expected a metadata key of letters, digits, '_', '.' or '-'",
                     path, q);
            ok = false;
        } else if (!kv->value || !*kv->value) {
            diag_add(d, line, "%s.%s: empty value; expected a non-empty value", path, kv->name);
            ok = false;
        }
    }
    return ok;
}

/* A route's subset against a static cluster: some instance must carry it. */
static void subset_in_cluster(struct diag *d, const struct polis_subset_cfg *s,
                              const struct polis_cluster_cfg *c, const struct polis_route_cfg *r,
                              const char *path, int fallback)
{
    char text[256];

    if (s->num_match == 0 || c->discovery.kind != POLIS_DISC_STATIC || !c->instances)
        return;
    for (size_t i = 0; i < c->num_instances; i++) {
        if (subset_matches(s, &c->instances[i]))
            return;
    }
    subset_text(s, text, sizeof(text));
    diag_add(d, line_of(d, s, fallback),
             "%s: route '%s' selects %s but no instance of cluster '%s' has that metadata; "
             "expected a subset that matches at least one of its instances",
             path, r->name ? r->name : "?", text, c->name ? c->name : "?");
}

/* Where a duration pair is out of order: "a: X is longer than b Y; expected at most b". */
static void ms_order(struct diag *d, const uint64_t *lo, const uint64_t *hi, int fallback,
                     const char *path, const char *lo_name, const char *hi_name)
{
    char a[32], b[32];
    if (reported(d, lo) || reported(d, hi) || *lo <= *hi)
        return;
    diag_ms(*lo, a, sizeof(a));
    diag_ms(*hi, b, sizeof(b));
    diag_add(d, line_of(d, lo, line_of(d, hi, fallback)),
             "%s.%s: %s is longer than %s %s; expected at most %s", path, lo_name, a, hi_name, b,
             hi_name);
}

/* A percentage held as a double (fault and mirror). */
static void pct_check(struct diag *d, const double *v, int fallback, const char *path)
{
    if (reported(d, v) || (*v >= 0 && *v <= 100))
        return;
    diag_add(d, line_of(d, v, fallback), "%s: found %g, out of range; expected 0..100", path, *v);
}

static void validate_retry(struct diag *d, struct polis_retry_cfg *r, const char *path,
                           int fallback)
{
    char p2[192];
    int rl = line_of(d, &r->attempts, fallback);

    snprintf(p2, sizeof(p2), "%s.attempts", path);
    RANGE(d, &r->attempts, rl, p2, r->attempts, 1, MAX_ATTEMPTS, UNIT_NUM);
    if (!reported(d, &r->on)) {
        int ol = line_of(d, &r->on, rl);
        uint32_t all =
            POLIS_RETRY_CONNECT | POLIS_RETRY_RESET | POLIS_RETRY_TIMEOUT | POLIS_RETRY_STATUS;
        if (r->on & ~all)
            diag_add(d, ol, "%s.on: unknown condition bits 0x%x; expected POLIS_RETRY_* bits", path,
                     (unsigned)(r->on & ~all));
        if ((r->on & POLIS_RETRY_STATUS) && (r->num_statuses == 0 || !r->statuses))
            diag_add(d, ol,
                     "%s.on: retries on a status but lists none; expected status numbers "
                     "from 500 to 599",
                     path);
        else if (!(r->on & POLIS_RETRY_STATUS) && r->num_statuses)
            diag_add(d, ol,
                     "%s.on: lists statuses without the status condition; expected "
                     "POLIS_RETRY_STATUS with them",
                     path);
        for (size_t i = 0; r->statuses && i < r->num_statuses; i++) {
            if (r->statuses[i] < 500 || r->statuses[i] > 599)
                diag_add(d, ol, "%s.on: status %u; expected a status from 500 to 599", path,
                         (unsigned)r->statuses[i]);
        }
    }
    snprintf(p2, sizeof(p2), "%s.backoff_base", path);
    RANGE(d, &r->backoff_base_ms, rl, p2, r->backoff_base_ms, 0, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.backoff_max", path);
    RANGE(d, &r->backoff_max_ms, rl, p2, r->backoff_max_ms, 0, MAX_MS, UNIT_MS);
    ms_order(d, &r->backoff_base_ms, &r->backoff_max_ms, rl, path, "backoff_base", "backoff_max");
    snprintf(p2, sizeof(p2), "%s.per_try_timeout", path);
    RANGE(d, &r->per_try_timeout_ms, rl, p2, r->per_try_timeout_ms, 0, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.deadline", path);
    RANGE(d, &r->deadline_ms, rl, p2, r->deadline_ms, 0, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.budget_percent", path);
    RANGE(d, &r->budget_percent, rl, p2, r->budget_percent, 0, 100, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.budget_min", path);
    RANGE(d, &r->budget_min, rl, p2, r->budget_min, 0, MAX_COUNT, UNIT_NUM);
}

static void validate_breaker(struct diag *d, const struct polis_breaker_cfg *b, const char *path,
                             int fallback)
{
    char p2[192];
    int bl = line_of(d, &b->enabled, fallback);

    if (!b->enabled || reported(d, &b->enabled))
        return;
    if ((unsigned)b->window > POLIS_WINDOW_TIME) {
        diag_add(d, line_of(d, &b->window, bl),
                 "%s.window: unknown kind %d; expected count or time", path, (int)b->window);
        return;
    }
    bool count = b->window == POLIS_WINDOW_COUNT;
    snprintf(p2, sizeof(p2), "%s.window_size", path);
    RANGE(d, &b->window_size, bl, p2, b->window_size, 1,
          count ? MAX_WINDOW_CALLS : MAX_WINDOW_SECONDS, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.minimum_calls", path);
    RANGE(d, &b->min_calls, bl, p2, b->min_calls, 1, MAX_COUNT, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.failure_rate", path);
    RANGE(d, &b->failure_rate, bl, p2, b->failure_rate, 0, 100, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.slow_call_rate", path);
    RANGE(d, &b->slow_call_rate, bl, p2, b->slow_call_rate, 0, 100, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.slow_call_duration", path);
    RANGE(d, &b->slow_call_ms, bl, p2, b->slow_call_ms, 1, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.consecutive_failures", path);
    RANGE(d, &b->consecutive_failures, bl, p2, b->consecutive_failures, 0, MAX_COUNT, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.open_duration", path);
    RANGE(d, &b->open_ms, bl, p2, b->open_ms, 1, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.half_open_calls", path);
    RANGE(d, &b->half_open_calls, bl, p2, b->half_open_calls, 1, MAX_HALF_OPEN, UNIT_NUM);
    if (count && !reported(d, &b->min_calls) && !reported(d, &b->window_size) &&
        b->window_size >= 1 && b->min_calls > b->window_size)
        diag_add(d, line_of(d, &b->min_calls, line_of(d, &b->window_size, bl)),
                 "%s.minimum_calls: %u is more than window_size %u; expected at most "
                 "window_size (a count window never holds more calls)",
                 path, (unsigned)b->min_calls, (unsigned)b->window_size);
    if (b->failure_rate == 0 && b->slow_call_rate == 0 && b->consecutive_failures == 0 &&
        !reported(d, &b->failure_rate) && !reported(d, &b->slow_call_rate) &&
        !reported(d, &b->consecutive_failures))
        diag_add(d, bl,
                 "%s: nothing can open it; expected failure_rate, slow_call_rate or "
                 "consecutive_failures above 0 (or enabled: false)",
                 path);
}

static void validate_health(struct diag *d, struct polis_health_check_cfg *h, const char *path,
                            int fallback)
{
    char p2[192], q[96];
    int hl = line_of(d, &h->enabled, fallback);

    if (!h->enabled || reported(d, &h->enabled))
        return;
    if (!h->path) {
        h->path = strdup("/health");
        if (!h->path)
            d->oom = true;
    } else if (!reported(d, &h->path) && (h->path[0] != '/' || !is_visible(h->path))) {
        diag_quote(h->path, strlen(h->path), q, sizeof(q));
        diag_add(d, line_of(d, &h->path, hl),
                 "%s.path: found %s; expected a path starting with '/' without spaces, like "
                 "/health",
                 path, q);
    }
    if (h->host && !reported(d, &h->host) && !is_visible(h->host)) {
        diag_quote(h->host, strlen(h->host), q, sizeof(q));
        diag_add(d, line_of(d, &h->host, hl),
                 "%s.host: found %s; expected a Host header value without spaces, like "
                 "orders.internal",
                 path, q);
    }
    snprintf(p2, sizeof(p2), "%s.interval", path);
    RANGE(d, &h->interval_ms, hl, p2, h->interval_ms, 1, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.timeout", path);
    RANGE(d, &h->timeout_ms, hl, p2, h->timeout_ms, 1, MAX_MS, UNIT_MS);
    ms_order(d, &h->timeout_ms, &h->interval_ms, hl, path, "timeout", "interval");
    snprintf(p2, sizeof(p2), "%s.jitter", path);
    RANGE(d, &h->jitter_ms, hl, p2, h->jitter_ms, 0, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.healthy_threshold", path);
    RANGE(d, &h->healthy_threshold, hl, p2, h->healthy_threshold, 1, MAX_THRESHOLD, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.unhealthy_threshold", path);
    RANGE(d, &h->unhealthy_threshold, hl, p2, h->unhealthy_threshold, 1, MAX_THRESHOLD, UNIT_NUM);
    if (reported(d, &h->statuses))
        return;
    if (h->num_statuses == 0 || !h->statuses) {
        free(h->statuses);
        h->statuses = calloc(1, sizeof(*h->statuses));
        if (!h->statuses) {
            d->oom = true;
            h->num_statuses = 0;
            return;
        }
        h->statuses[0][0] = 200;
        h->statuses[0][1] = 399;
        h->num_statuses = 1;
    }
    for (size_t i = 0; i < h->num_statuses; i++) {
        unsigned lo = h->statuses[i][0], hi = h->statuses[i][1];
        if (lo < 100 || hi > 599 || lo > hi)
            diag_add(d, line_of(d, &h->statuses[i], line_of(d, &h->statuses, hl)),
                     "%s.expected_statuses[%zu]: found %u-%u; expected a status or a range "
                     "lo-hi within 100..599",
                     path, i, lo, hi);
    }
}

static void validate_outlier(struct diag *d, const struct polis_outlier_cfg *o, const char *path,
                             int fallback)
{
    char p2[192];
    int ol = line_of(d, &o->enabled, fallback);

    if (!o->enabled || reported(d, &o->enabled))
        return;
    snprintf(p2, sizeof(p2), "%s.consecutive_5xx", path);
    RANGE(d, &o->consecutive_5xx, ol, p2, o->consecutive_5xx, 0, MAX_COUNT, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.consecutive_gateway_errors", path);
    RANGE(d, &o->consecutive_gateway_errors, ol, p2, o->consecutive_gateway_errors, 0, MAX_COUNT,
          UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.consecutive_connect_failures", path);
    RANGE(d, &o->consecutive_connect_failures, ol, p2, o->consecutive_connect_failures, 0,
          MAX_COUNT, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.base_ejection_time", path);
    RANGE(d, &o->base_ejection_ms, ol, p2, o->base_ejection_ms, 1, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.max_ejection_time", path);
    RANGE(d, &o->max_ejection_ms, ol, p2, o->max_ejection_ms, 1, MAX_MS, UNIT_MS);
    ms_order(d, &o->base_ejection_ms, &o->max_ejection_ms, ol, path, "base_ejection_time",
             "max_ejection_time");
    snprintf(p2, sizeof(p2), "%s.max_ejection_percent", path);
    RANGE(d, &o->max_ejection_percent, ol, p2, o->max_ejection_percent, 0, 100, UNIT_NUM);
    if (o->consecutive_5xx == 0 && o->consecutive_gateway_errors == 0 &&
        o->consecutive_connect_failures == 0 && !reported(d, &o->consecutive_5xx) &&
        !reported(d, &o->consecutive_gateway_errors) &&
        !reported(d, &o->consecutive_connect_failures))
        diag_add(d, ol,
                 "%s: nothing can eject an instance; expected consecutive_5xx, "
                 "consecutive_gateway_errors or consecutive_connect_failures above 0 (or "
                 "enabled: false)",
                 path);
}

static const char *const disc_names[] = {"static", "registry", "dns", "etcd"};

/* Where a cluster's instances come from, and whether instances are listed as they must be. */
static void validate_discovery(struct diag *d, struct polis_config *cfg,
                               struct polis_cluster_cfg *c, const char *path, int cl)
{
    struct polis_discovery_cfg *ds = &c->discovery;
    char p2[192], q[96];
    int dl = line_of(d, &ds->kind, cl);

    if (reported(d, &ds->kind))
        return;
    if ((unsigned)ds->kind > POLIS_DISC_ETCD) {
        diag_add(d, dl,
                 "%s.discovery.type: unknown kind %d; expected one of: static, registry, dns, "
                 "etcd",
                 path, (int)ds->kind);
        return;
    }
    if (ds->kind == POLIS_DISC_STATIC) {
        if (!reported(d, &c->instances) && (c->num_instances == 0 || !c->instances))
            diag_add(d, line_of(d, &c->instances, cl),
                     "%s: no instances; expected instances: a list of at least one address "
                     "like \"127.0.0.1:9001\"",
                     path);
        return;
    }
    if (c->num_instances > 0 && !reported(d, &c->instances))
        diag_add(d, line_of(d, &c->instances, cl),
                 "%s.instances: set with discovery type %s; expected no instances (the "
                 "discovery source finds them)",
                 path, disc_names[ds->kind]);
    switch (ds->kind) {
    case POLIS_DISC_REGISTRY:
        if (!cfg->registry.enabled && !reported(d, &cfg->registry.enabled))
            diag_add(d, dl,
                     "%s.discovery.type: registry, but the embedded registry is off; expected "
                     "registry: {enabled: true} at the top level, or another type",
                     path);
        if (!ds->service && c->name) {
            ds->service = strdup(c->name);
            if (!ds->service)
                d->oom = true;
        } else if (ds->service && !reported(d, &ds->service) && !cfg_is_name(ds->service)) {
            diag_quote(ds->service, strlen(ds->service), q, sizeof(q));
            diag_add(d, line_of(d, &ds->service, dl),
                     "%s.discovery.service: found %s; expected a service name of letters, "
                     "digits, '_', '.' or '-'",
                     path, q);
        }
        break;
    case POLIS_DISC_DNS:
        if (!reported(d, &ds->dns_name)) {
            if (!ds->dns_name) {
                diag_add(d, dl,
                         "%s.discovery: no name; expected name: the DNS name to resolve, like "
                         "orders.svc.local",
                         path);
            } else if (ds->dns_name[0] == '*' || !dns_name_ok(ds->dns_name)) {
                diag_quote(ds->dns_name, strlen(ds->dns_name), q, sizeof(q));
                diag_add(d, line_of(d, &ds->dns_name, dl),
                         "%s.discovery.name: found %s; expected a DNS name like "
                         "orders.svc.local or _http._tcp.orders.local",
                         path, q);
            }
        }
        if ((unsigned)ds->dns_type > POLIS_DNS_SRV) {
            diag_add(d, line_of(d, &ds->dns_type, dl),
                     "%s.discovery.record: unknown kind %d; expected a or srv", path,
                     (int)ds->dns_type);
        } else if (!reported(d, &ds->dns_port) && !reported(d, &ds->dns_type)) {
            if (ds->dns_type == POLIS_DNS_A && ds->dns_port == 0)
                diag_add(d, line_of(d, &ds->dns_port, dl),
                         "%s.discovery: no port; expected port: 1..65535 (A and AAAA records "
                         "carry no port)",
                         path);
            else if (ds->dns_type == POLIS_DNS_SRV && ds->dns_port != 0)
                diag_add(d, line_of(d, &ds->dns_port, dl),
                         "%s.discovery.port: set with record srv; expected no port (SRV "
                         "records carry the ports)",
                         path);
        }
        if (ds->dns_server && !reported(d, &ds->dns_server)) {
            struct polis_addr a;
            if (!numeric_addr(ds->dns_server, &a)) {
                diag_quote(ds->dns_server, strlen(ds->dns_server), q, sizeof(q));
                diag_add(d, line_of(d, &ds->dns_server, dl),
                         "%s.discovery.server: found %s; expected a numeric address and port "
                         "like 127.0.0.1:53 or [::1]:53",
                         path, q);
            }
        }
        snprintf(p2, sizeof(p2), "%s.discovery.min_ttl", path);
        /* A floor: a TTL of 0 (Consul's default) must not become a query every millisecond. */
        RANGE(d, &ds->dns_min_ttl_ms, dl, p2, ds->dns_min_ttl_ms, 100, MAX_MS, UNIT_MS);
        snprintf(p2, sizeof(p2), "%s.discovery.max_ttl", path);
        RANGE(d, &ds->dns_max_ttl_ms, dl, p2, ds->dns_max_ttl_ms, 1, MAX_MS, UNIT_MS);
        snprintf(p2, sizeof(p2), "%s.discovery", path);
        ms_order(d, &ds->dns_min_ttl_ms, &ds->dns_max_ttl_ms, dl, p2, "min_ttl", "max_ttl");
        break;
    case POLIS_DISC_ETCD:
        if (!reported(d, &ds->etcd_endpoints)) {
            if (ds->num_etcd_endpoints == 0 || !ds->etcd_endpoints)
                diag_add(d, dl,
                         "%s.discovery: no endpoints; expected endpoints: a list of http:// "
                         "URLs like [http://127.0.0.1:2379]",
                         path);
            for (size_t i = 0; ds->etcd_endpoints && i < ds->num_etcd_endpoints; i++) {
                const char *u = ds->etcd_endpoints[i];
                if (reported(d, &ds->etcd_endpoints[i]) || is_http_url(u))
                    continue;
                diag_quote(u ? u : "", u ? strlen(u) : 0, q, sizeof(q));
                diag_add(d, line_of(d, &ds->etcd_endpoints[i], line_of(d, &ds->etcd_endpoints, dl)),
                         "%s.discovery.endpoints[%zu]: found %s; expected an http:// URL like "
                         "http://127.0.0.1:2379",
                         path, i, q);
            }
        }
        if (!reported(d, &ds->etcd_prefix) && (!ds->etcd_prefix || !*ds->etcd_prefix))
            diag_add(d, line_of(d, &ds->etcd_prefix, dl),
                     "%s.discovery: %s; expected prefix: the key prefix of the service's "
                     "instances, like /polis/services/orders/",
                     path, ds->etcd_prefix ? "empty prefix" : "no prefix");
        break;
    default:
        break;
    }
}

/* ---- Validation of the edge security settings -------------------------------------------- */

const char *const polis__jwt_alg_names[POLIS_JWT__COUNT] = {
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"};

#define HEADER_CHARS "letters, digits and !#$%&'*+-.^_`|~"

/* Report a header name that is not an HTTP token (unless the loader already reported it). */
static void header_check(struct diag *d, const char *name, const void *addr, int fallback,
                         const char *path)
{
    char q[96];
    if (reported(d, addr) || cfg_is_token(name))
        return;
    diag_quote(name ? name : "", name ? strlen(name) : 0, q, sizeof(q));
    diag_add(d, line_of(d, addr, fallback), "%s: found %s; expected a header name of %s", path, q,
             HEADER_CHARS);
}

/* Report a file the runtime will read that cannot be read now: missing, unreadable, not a
 * regular file, or empty. Its content is not checked here (the runtime parses it). */
static void file_check(struct diag *d, const char *file, const void *addr, int fallback,
                       const char *path, const char *what)
{
    char q[256];
    struct stat st;
    const char *why = NULL;
    int err = 0;

    if (!file || reported(d, addr))
        return;
    int line = line_of(d, addr, fallback);
    diag_quote(file, strlen(file), q, sizeof(q));
    if (!*file) {
        diag_add(d, line, "%s: empty; expected %s", path, what);
        return;
    }
    /* O_NONBLOCK: a FIFO must not hang the check. */
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        err = errno;
    } else {
        if (fstat(fd, &st) < 0)
            err = errno;
        else if (!S_ISREG(st.st_mode))
            why = S_ISDIR(st.st_mode) ? "is a directory" : "is not a regular file";
        else if (st.st_size == 0)
            why = "is empty";
        close(fd);
    }
    if (err)
        diag_add(d, line, "%s: cannot read %s: %s; expected %s", path, q, strerror(err), what);
    else if (why)
        diag_add(d, line, "%s: %s %s; expected %s", path, q, why, what);
}

/* Text without spaces or control characters, or NULL (absent): a claim name, a scope. */
static void visible_check(struct diag *d, const char *s, const void *addr, int fallback,
                          const char *path, const char *what)
{
    char q[96];
    if (reported(d, addr) || is_visible(s))
        return;
    diag_quote(s ? s : "", s ? strlen(s) : 0, q, sizeof(q));
    diag_add(d, line_of(d, addr, fallback), "%s: found %s; expected %s", path, q, what);
}

/* Report name unless it is a configuration name ([A-Za-z0-9_.-]+). */
static bool name_check(struct diag *d, const char *name, const void *addr, int fallback,
                       const char *path, const char *what)
{
    char q[96];
    if (reported(d, addr))
        return false;
    if (cfg_is_name(name))
        return true;
    if (!name) {
        diag_add(d, fallback, "%s: no name; expected name: <[A-Za-z0-9_.-]+>", path);
        return false;
    }
    diag_quote(name, strlen(name), q, sizeof(q));
    diag_add(d, line_of(d, addr, fallback),
             "%s.name: found %s; expected %s of letters, digits, '_', '.' or '-'", path, q, what);
    return false;
}

/* The names of n items (at most 10), comma separated, for "expected one of". */
static void names_of(const void *items, size_t n, size_t stride, size_t off, char *out, size_t cap)
{
    size_t o = 0, shown = 0;
    out[0] = 0;
    for (size_t i = 0; items && i < n && o < cap; i++) {
        const char *name = *(char *const *)((const char *)items + i * stride + off);
        if (!name)
            continue;
        if (shown == 10) {
            snprintf(out + o, cap - o, ", ...");
            break;
        }
        int r = snprintf(out + o, cap - o, "%s%s", o ? ", " : "", name);
        if (r < 0)
            break;
        o += (size_t)r;
        shown++;
    }
}

/* A network of a list, as validation sees it (configurations built in code). */
static void cidr_check(struct diag *d, const struct polis_cidr *c, int fallback, const char *path)
{
    if (reported(d, c))
        return;
    int line = line_of(d, c, fallback);
    if (c->family != AF_INET && c->family != AF_INET6) {
        diag_add(d, line, "%s: unknown address family %d; expected AF_INET or AF_INET6", path,
                 c->family);
        return;
    }
    unsigned max = c->family == AF_INET ? 32 : 128;
    if (c->prefix > max) {
        diag_add(d, line, "%s: prefix length %u, out of range; expected 0..%u", path,
                 (unsigned)c->prefix, max);
        return;
    }
    for (unsigned bit = c->prefix; bit < max; bit++) {
        if (c->addr[bit / 8] & (0x80u >> (bit % 8))) {
            char net[64];
            cidr_network_text(c, net, sizeof(net));
            diag_add(d, line, "%s: bits set past the prefix length; expected the network %s", path,
                     net);
            return;
        }
    }
}

static void validate_access(struct diag *d, const struct polis_access_cfg *a, const char *path,
                            int fallback)
{
    char p2[192];
    for (size_t i = 0; a->allow && i < a->num_allow; i++) {
        snprintf(p2, sizeof(p2), "%s.allow[%zu]", path, i);
        cidr_check(d, &a->allow[i], fallback, p2);
    }
    for (size_t i = 0; a->deny && i < a->num_deny; i++) {
        snprintf(p2, sizeof(p2), "%s.deny[%zu]", path, i);
        cidr_check(d, &a->deny[i], fallback, p2);
    }
}

static void validate_tls(struct diag *d, struct polis_tls_cfg *t)
{
    char p2[96];
    int tl = line_of(d, &t->enabled, 0);

    if (!t->enabled || reported(d, &t->enabled))
        return;
    if (!reported(d, &t->certs)) {
        if (t->num_certs == 0 || !t->certs)
            diag_add(d, line_of(d, &t->certs, tl),
                     "tls: no certificates; expected certificates: a list of {cert, key} (PEM "
                     "files)");
        for (size_t i = 0; t->certs && i < t->num_certs; i++) {
            struct polis_tls_cert_cfg *c = &t->certs[i];
            int cl = c->line ? c->line : tl;
            snprintf(p2, sizeof(p2), "tls.certificates[%zu]", i);
            if (!c->cert && !reported(d, &c->cert))
                diag_add(d, cl, "%s: no cert; expected cert: a PEM file of the certificate chain",
                         p2);
            if (!c->key && !reported(d, &c->key))
                diag_add(d, cl, "%s: no key; expected key: a PEM file of the private key", p2);
            snprintf(p2, sizeof(p2), "tls.certificates[%zu].cert", i);
            file_check(d, c->cert, &c->cert, cl, p2, "a readable PEM certificate chain");
            snprintf(p2, sizeof(p2), "tls.certificates[%zu].key", i);
            file_check(d, c->key, &c->key, cl, p2, "a readable PEM private key");
        }
    }
    if ((unsigned)t->min_version > POLIS_CFG_TLS_1_3)
        diag_add(d, line_of(d, &t->min_version, tl),
                 "tls.min_version: unknown version %d; expected \"1.2\" or \"1.3\"",
                 (int)t->min_version);
    if (!reported(d, &t->alpn)) {
        if (t->num_alpn == 0 || !t->alpn) {
            free(t->alpn);
            t->alpn = calloc(1, sizeof(*t->alpn));
            t->num_alpn = 0;
            if (t->alpn && (t->alpn[0] = strdup("http/1.1")) != NULL)
                t->num_alpn = 1;
            else
                d->oom = true;
        }
        for (size_t i = 0; i < t->num_alpn; i++) {
            char q[96];
            const char *a = t->alpn[i];
            if (reported(d, &t->alpn[i]) || (a && strcmp(a, "http/1.1") == 0))
                continue;
            diag_quote(a ? a : "", a ? strlen(a) : 0, q, sizeof(q));
            diag_add(d, line_of(d, &t->alpn[i], line_of(d, &t->alpn, tl)),
                     "tls.alpn[%zu]: found %s; expected http/1.1 (the only protocol served for "
                     "now)",
                     i, q);
        }
    }
    RANGE(d, &t->session_timeout_ms, tl, "tls.session_timeout", t->session_timeout_ms, 1000, MAX_MS,
          UNIT_MS);
    if ((unsigned)t->client_auth > POLIS_CLIENT_AUTH_REQUIRED) {
        diag_add(d, line_of(d, &t->client_auth, tl),
                 "tls.client_auth: unknown mode %d; expected off, optional or required",
                 (int)t->client_auth);
    } else if (!reported(d, &t->client_auth) && !reported(d, &t->client_ca)) {
        if (t->client_auth != POLIS_CLIENT_AUTH_OFF && !t->client_ca)
            diag_add(d, line_of(d, &t->client_auth, tl),
                     "tls.client_auth: %s without client_ca; expected client_ca: a PEM file of the "
                     "CAs that sign client certificates",
                     t->client_auth == POLIS_CLIENT_AUTH_REQUIRED ? "required" : "optional");
        else if (t->client_auth == POLIS_CLIENT_AUTH_OFF && t->client_ca)
            diag_add(d, line_of(d, &t->client_ca, tl),
                     "tls.client_ca: set with client_auth off; expected client_auth: optional or "
                     "required");
    }
    file_check(d, t->client_ca, &t->client_ca, tl, "tls.client_ca", "a readable PEM file of CAs");
    if (!t->forward_subject && !reported(d, &t->forward_subject)) {
        t->forward_subject = strdup("X-Client-Subject");
        if (!t->forward_subject)
            d->oom = true;
    }
    header_check(d, t->forward_subject, &t->forward_subject, tl, "tls.forward_subject");
}

/* A cluster's TLS to its instances. */
static void validate_upstream_tls(struct diag *d, const struct polis_upstream_tls_cfg *t,
                                  const char *path, int fallback)
{
    char p2[192], q[96];
    int tl = line_of(d, &t->enabled, fallback);

    if (!t->enabled || reported(d, &t->enabled))
        return;
    if (t->server_name && !reported(d, &t->server_name) &&
        (t->server_name[0] == '*' || !is_host(t->server_name))) {
        diag_quote(t->server_name, strlen(t->server_name), q, sizeof(q));
        diag_add(d, line_of(d, &t->server_name, tl),
                 "%s.server_name: found %s; expected a host name like orders.internal", path, q);
    }
    if (!reported(d, &t->cert) && !reported(d, &t->key) && !t->cert != !t->key)
        diag_add(d, line_of(d, t->cert ? (const void *)&t->cert : &t->key, tl),
                 "%s: %s without %s; expected both cert and key (a client certificate and its "
                 "private key) or neither",
                 path, t->cert ? "cert" : "key", t->cert ? "key" : "cert");
    snprintf(p2, sizeof(p2), "%s.ca", path);
    file_check(d, t->ca, &t->ca, tl, p2, "a readable PEM file of CAs");
    snprintf(p2, sizeof(p2), "%s.cert", path);
    file_check(d, t->cert, &t->cert, tl, p2, "a readable PEM certificate chain");
    snprintf(p2, sizeof(p2), "%s.key", path);
    file_check(d, t->key, &t->key, tl, p2, "a readable PEM private key");
}

/* "HS256, RS256" for the algorithms set in bits. */
static void alg_list(uint32_t bits, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (int a = 0; a < POLIS_JWT__COUNT && o < cap; a++) {
        if (!(bits & (1u << a)))
            continue;
        int r = snprintf(out + o, cap - o, "%s%s", o ? ", " : "", polis__jwt_alg_names[a]);
        if (r < 0)
            break;
        o += (size_t)r;
    }
}

static void validate_jwt_key(struct diag *d, const struct polis_jwt_issuer_cfg *is, size_t ki,
                             const char *path, int il)
{
    const struct polis_jwt_key_cfg *k = &is->keys[ki];
    char p2[192], q[96], list[160];
    int kl = k->line ? k->line : il;

    snprintf(p2, sizeof(p2), "%s.keys[%zu]", path, ki);
    if (reported(d, &k->line))
        return;
    if (!k->file && !k->secret_file && !reported(d, &k->file) && !reported(d, &k->secret_file)) {
        diag_add(d, kl,
                 "%s: no key file; expected file (a PEM public key) or secret_file (an HMAC "
                 "secret)",
                 p2);
    } else if (k->file && k->secret_file) {
        diag_add(d, kl, "%s: both file and secret_file; expected only one of them", p2);
    }
    bool alg_ok = !reported(d, &k->alg);
    if (alg_ok && (unsigned)k->alg >= POLIS_JWT__COUNT) {
        diag_add(d, line_of(d, &k->alg, kl), "%s.algorithm: unknown algorithm %d", p2, (int)k->alg);
        alg_ok = false;
    }
    if (alg_ok) {
        bool hmac = (1u << k->alg) & POLIS_JWT_HMAC_BITS;
        const char *name = polis__jwt_alg_names[k->alg];
        if (hmac && k->file && !k->secret_file && !reported(d, &k->file))
            diag_add(d, line_of(d, &k->file, kl),
                     "%s.file: a public key file with algorithm %s; expected secret_file for "
                     "HMAC (a public key is never used as an HMAC secret)",
                     p2, name);
        if (!hmac && k->secret_file && !k->file && !reported(d, &k->secret_file))
            diag_add(d, line_of(d, &k->secret_file, kl),
                     "%s.secret_file: an HMAC secret with algorithm %s; expected algorithm "
                     "HS256, HS384 or HS512 (or file: a public key)",
                     p2, name);
        if (!reported(d, &is->algorithms) && is->algorithms && !(is->algorithms & (1u << k->alg))) {
            alg_list(is->algorithms, list, sizeof(list));
            diag_add(d, line_of(d, &k->alg, kl),
                     "%s.algorithm: %s is not among the issuer's algorithms; expected one of: %s",
                     p2, name, list);
        }
    }
    if (k->kid) {
        snprintf(p2, sizeof(p2), "%s.keys[%zu].kid", path, ki);
        visible_check(d, k->kid, &k->kid, kl, p2, "a key id without spaces or control characters");
        for (size_t j = 0; j < ki && !reported(d, &k->kid); j++) {
            if (is->keys[j].kid && strcmp(is->keys[j].kid, k->kid) == 0) {
                diag_quote(k->kid, strlen(k->kid), q, sizeof(q));
                diag_add(d, line_of(d, &k->kid, kl),
                         "%s: duplicate kid %s (first at line %d); expected a unique kid", p2, q,
                         is->keys[j].line);
                break;
            }
        }
    }
    snprintf(p2, sizeof(p2), "%s.keys[%zu].file", path, ki);
    file_check(d, k->file, &k->file, kl, p2, "a readable PEM public key");
    snprintf(p2, sizeof(p2), "%s.keys[%zu].secret_file", path, ki);
    file_check(d, k->secret_file, &k->secret_file, kl, p2, "a readable file holding the secret");
}

static void validate_issuer(struct diag *d, struct polis_config *cfg, size_t ii)
{
    struct polis_jwt_issuer_cfg *is = &cfg->jwt.issuers[ii];
    char path[48], p2[192], q[96];
    int il = is->line;

    snprintf(path, sizeof(path), "jwt.issuers[%zu]", ii);
    if (name_check(d, is->name, &is->name, il, path, "an issuer name")) {
        for (size_t j = 0; j < ii; j++) {
            if (cfg->jwt.issuers[j].name && strcmp(cfg->jwt.issuers[j].name, is->name) == 0) {
                diag_add(d, line_of(d, &is->name, il),
                         "%s.name: duplicate issuer name '%s' (first at line %d); expected a "
                         "unique name",
                         path, is->name, cfg->jwt.issuers[j].line);
                break;
            }
        }
    }
    if (!reported(d, &is->issuer)) {
        if (!is->issuer) {
            diag_add(d, il,
                     "%s: no issuer; expected issuer: the iss claim of its tokens, like "
                     "https://issuer.example",
                     path);
        } else {
            snprintf(p2, sizeof(p2), "%s.issuer", path);
            visible_check(d, is->issuer, &is->issuer, il, p2,
                          "an iss value without spaces, like https://issuer.example");
        }
    }
    for (size_t i = 0; is->audiences && i < is->num_audiences; i++) {
        snprintf(p2, sizeof(p2), "%s.audiences[%zu]", path, i);
        visible_check(d, is->audiences[i], &is->audiences[i], line_of(d, &is->audiences, il), p2,
                      "an audience without spaces, like api");
    }
    if (!reported(d, &is->algorithms)) {
        if (is->algorithms == 0)
            diag_add(d, il, "%s: no algorithms; expected algorithms: a list like [RS256, ES256]",
                     path);
        else if (is->algorithms >> POLIS_JWT__COUNT)
            diag_add(d, line_of(d, &is->algorithms, il),
                     "%s.algorithms: unknown algorithm bits 0x%x; expected (1u << POLIS_JWT_*) "
                     "bits",
                     path, (unsigned)(is->algorithms >> POLIS_JWT__COUNT << POLIS_JWT__COUNT));
    }
    if (is->num_keys == 0 && !is->jwks_file && !is->jwks_url && !reported(d, &is->keys) &&
        !reported(d, &is->jwks_file) && !reported(d, &is->jwks_url))
        diag_add(d, il, "%s: no keys; expected keys, jwks_file or jwks_url", path);
    for (size_t k = 0; is->keys && k < is->num_keys; k++)
        validate_jwt_key(d, is, k, path, line_of(d, &is->keys, il));
    snprintf(p2, sizeof(p2), "%s.jwks_file", path);
    file_check(d, is->jwks_file, &is->jwks_file, il, p2, "a readable JWK Set (JSON) file");
    if (is->jwks_url && !reported(d, &is->jwks_url) &&
        (strncmp(is->jwks_url, "https://", 8) != 0 || is->jwks_url[8] == 0 ||
         is->jwks_url[8] == '/' || !is_visible(is->jwks_url))) {
        diag_quote(is->jwks_url, strlen(is->jwks_url), q, sizeof(q));
        diag_add(d, line_of(d, &is->jwks_url, il),
                 "%s.jwks_url: found %s; expected an https:// URL like "
                 "https://idp.example/.well-known/jwks.json",
                 path, q);
    }
    if (is->jwks_ca && !is->jwks_url && !reported(d, &is->jwks_ca) && !reported(d, &is->jwks_url))
        diag_add(d, line_of(d, &is->jwks_ca, il),
                 "%s.jwks_ca: set without jwks_url; expected jwks_url with it", path);
    snprintf(p2, sizeof(p2), "%s.jwks_ca", path);
    file_check(d, is->jwks_ca, &is->jwks_ca, il, p2, "a readable PEM file of CAs");
    snprintf(p2, sizeof(p2), "%s.jwks_refresh", path);
    RANGE(d, &is->jwks_refresh_ms, il, p2, is->jwks_refresh_ms, 1000, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.jwks_min_refresh", path);
    RANGE(d, &is->jwks_min_refresh_ms, il, p2, is->jwks_min_refresh_ms, 1000, MAX_MS, UNIT_MS);
    ms_order(d, &is->jwks_min_refresh_ms, &is->jwks_refresh_ms, il, path, "jwks_min_refresh",
             "jwks_refresh");
    snprintf(p2, sizeof(p2), "%s.leeway", path);
    RANGE(d, &is->leeway_ms, il, p2, is->leeway_ms, 0, MAX_LEEWAY, UNIT_MS);
}

static void validate_consumers(struct diag *d, struct polis_config *cfg)
{
    char path[48], p2[160];

    if (cfg->num_consumers && !cfg->consumers) {
        diag_add(d, 0, "consumers: count without a list; expected a list");
        return;
    }
    for (size_t ci = 0; ci < cfg->num_consumers; ci++) {
        struct polis_consumer_cfg *c = &cfg->consumers[ci];
        snprintf(path, sizeof(path), "consumers[%zu]", ci);
        if (name_check(d, c->name, &c->name, c->line, path, "a consumer name")) {
            for (size_t j = 0; j < ci; j++) {
                if (cfg->consumers[j].name && strcmp(cfg->consumers[j].name, c->name) == 0) {
                    diag_add(d, line_of(d, &c->name, c->line),
                             "%s.name: duplicate consumer name '%s' (first at line %d); "
                             "expected a unique name",
                             path, c->name, cfg->consumers[j].line);
                    break;
                }
            }
        }
        for (size_t g = 0; c->groups && g < c->num_groups; g++) {
            char q[96];
            if (reported(d, &c->groups[g]) || cfg_is_name(c->groups[g]))
                continue;
            diag_quote(c->groups[g] ? c->groups[g] : "", c->groups[g] ? strlen(c->groups[g]) : 0, q,
                       sizeof(q));
            diag_add(d, line_of(d, &c->groups[g], line_of(d, &c->groups, c->line)),
                     "%s.groups[%zu]: found %s; expected a group name of letters, digits, '_', "
                     "'.' or '-'",
                     path, g, q);
        }
        /* One key, one consumer: the same digest twice would make the identity ambiguous. */
        for (size_t k = 0; c->key_sha256 && k < c->num_keys; k++) {
            if (reported(d, &c->key_sha256[k]))
                continue;
            bool dup = false;
            for (size_t cj = 0; cj <= ci && !dup; cj++) {
                const struct polis_consumer_cfg *o = &cfg->consumers[cj];
                size_t lim = cj == ci ? k : o->num_keys;
                for (size_t kj = 0; o->key_sha256 && kj < lim && !dup; kj++) {
                    if (reported(d, &o->key_sha256[kj]) ||
                        memcmp(o->key_sha256[kj], c->key_sha256[k], 32) != 0)
                        continue;
                    dup = true;
                    snprintf(p2, sizeof(p2), "%s.keys[%zu]", path, k);
                    diag_add(d, line_of(d, &c->key_sha256[k], c->line),
                             "%s: the same key as consumers[%zu] '%s' (line %d); expected a "
                             "key of its own",
                             p2, cj, o->name ? o->name : "?",
                             line_of(d, &o->key_sha256[kj], o->line));
                }
            }
        }
    }
}

/* host:port with a host name, an IPv4 address or a bracketed IPv6 address, and a port 1..65535
 * (not resolved: the runtime connects to it). */
static bool host_port_ok(const char *s)
{
    char host[256];
    const char *port;
    unsigned char buf[sizeof(struct in6_addr)];

    if (!s)
        return false;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof(host))
            return false;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = 0;
        if (inet_pton(AF_INET6, host, buf) != 1)
            return false;
        port = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof(host))
            return false;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = 0;
        if (host[0] == '*' || !is_host(host))
            return false;
        port = colon + 1;
    }
    size_t n = strlen(port);
    if (n == 0 || n > 5 || strspn(port, "0123456789") != n)
        return false;
    unsigned long p = strtoul(port, NULL, 10);
    return p >= 1 && p <= 65535;
}

static const char *const rl_key_names[] = {"client_ip", "consumer", "route", "header"};

static void validate_rate_limits(struct diag *d, struct polis_config *cfg)
{
    char path[48], p2[160], q[96];

    if (cfg->num_rate_limits && !cfg->rate_limits) {
        diag_add(d, 0, "rate_limits: count without a list; expected a list");
        return;
    }
    for (size_t li = 0; li < cfg->num_rate_limits; li++) {
        struct polis_rate_limit_cfg *rl = &cfg->rate_limits[li];
        int ll = rl->line;
        snprintf(path, sizeof(path), "rate_limits[%zu]", li);
        if (name_check(d, rl->name, &rl->name, ll, path, "a rate limit name")) {
            for (size_t j = 0; j < li; j++) {
                if (cfg->rate_limits[j].name && strcmp(cfg->rate_limits[j].name, rl->name) == 0) {
                    diag_add(d, line_of(d, &rl->name, ll),
                             "%s.name: duplicate rate limit name '%s' (first at line %d); "
                             "expected a unique name",
                             path, rl->name, cfg->rate_limits[j].line);
                    break;
                }
            }
        }
        if (!reported(d, &rl->count)) {
            int rtl = line_of(d, &rl->count, ll);
            if (rl->count == 0)
                diag_add(d, rtl, "%s: no rate; expected rate: requests per period like 100/s",
                         path);
            else if (rl->count > MAX_RATE)
                diag_add(d, rtl, "%s.rate: %llu requests, out of range; expected 1..%u", path,
                         (unsigned long long)rl->count, MAX_RATE);
            if (rl->period_ms != 1000 && rl->period_ms != 60000 && rl->period_ms != 3600000)
                diag_add(d, rtl, "%s.rate: period of %llums; expected 1s, 1m or 1h", path,
                         (unsigned long long)rl->period_ms);
        }
        /* No burst: the rate's count, unknown while the rate is missing or malformed. */
        bool burst_known = true;
        if (rl->burst == 0 && !reported(d, &rl->burst)) {
            burst_known = rl->count > 0 && !reported(d, &rl->count);
            rl->burst = burst_known ? rl->count : 0;
        }
        snprintf(p2, sizeof(p2), "%s.burst", path);
        if (burst_known)
            RANGE(d, &rl->burst, ll, p2, rl->burst, 1, MAX_RATE, UNIT_NUM);
        if (!reported(d, &rl->key)) {
            int kl = line_of(d, &rl->key, ll);
            if ((unsigned)rl->key > POLIS_RL_KEY_HEADER)
                diag_add(d, kl,
                         "%s.key: unknown kind %d; expected consumer, client_ip, route or "
                         "header:<name>",
                         path, (int)rl->key);
            else if (rl->key == POLIS_RL_KEY_HEADER && !cfg_is_token(rl->key_header)) {
                diag_quote(rl->key_header ? rl->key_header : "",
                           rl->key_header ? strlen(rl->key_header) : 0, q, sizeof(q));
                diag_add(d, kl,
                         "%s.key: header name %s is not a token; expected header:<name> with a "
                         "name of %s",
                         path, q, HEADER_CHARS);
            } else if (rl->key != POLIS_RL_KEY_HEADER && rl->key_header) {
                diag_add(d, kl, "%s.key: a header name with key %s; expected none", path,
                         rl_key_names[rl->key]);
            }
        }
        struct polis_redis_cfg *rd = &rl->redis;
        int rdl = rd->line ? rd->line : ll;
        if ((unsigned)rl->backend > POLIS_RL_REDIS) {
            diag_add(d, line_of(d, &rl->backend, ll),
                     "%s.backend: unknown kind %d; expected local or redis", path,
                     (int)rl->backend);
            continue;
        }
        if (reported(d, &rl->backend) || reported(d, &rd->line))
            continue;
        if (rl->backend == POLIS_RL_LOCAL) {
            if (rd->address || rd->password_file)
                diag_add(d, rdl, "%s.redis: set with backend local; expected backend: redis", path);
            continue;
        }
        if (!rd->address && !reported(d, &rd->address)) {
            diag_add(d, rdl,
                     "%s: backend redis without a redis address; expected redis: {address: "
                     "host:port}",
                     path);
        } else if (rd->address && !reported(d, &rd->address) && !host_port_ok(rd->address)) {
            diag_quote(rd->address, strlen(rd->address), q, sizeof(q));
            diag_add(d, line_of(d, &rd->address, rdl),
                     "%s.redis.address: found %s; expected host:port like 127.0.0.1:6379 or "
                     "redis.internal:6379",
                     path, q);
        }
        snprintf(p2, sizeof(p2), "%s.redis.timeout", path);
        RANGE(d, &rd->timeout_ms, rdl, p2, rd->timeout_ms, 1, MAX_REDIS_TIMEOUT, UNIT_MS);
        if ((unsigned)rd->on_failure > POLIS_REDIS_FAIL_CLOSED)
            diag_add(d, line_of(d, &rd->on_failure, rdl),
                     "%s.redis.on_failure: unknown mode %d; expected local, open or closed", path,
                     (int)rd->on_failure);
        snprintf(p2, sizeof(p2), "%s.redis.db", path);
        RANGE(d, &rd->db, rdl, p2, rd->db, 0, MAX_COUNT, UNIT_NUM);
        snprintf(p2, sizeof(p2), "%s.redis.password_file", path);
        file_check(d, rd->password_file, &rd->password_file, rdl, p2,
                   "a readable file holding the password");
    }
}

/* The top-level security sections. */
static void validate_security(struct diag *d, struct polis_config *cfg)
{
    char p2[96], q[96];

    validate_tls(d, &cfg->tls);
    RANGE(d, &cfg->jwt.cache_size, 0, "jwt.cache_size", cfg->jwt.cache_size, 0, MAX_JWT_CACHE,
          UNIT_NUM);
    if (cfg->jwt.num_issuers && !cfg->jwt.issuers)
        diag_add(d, 0, "jwt.issuers: count without a list; expected a list");
    else
        for (size_t i = 0; i < cfg->jwt.num_issuers; i++)
            validate_issuer(d, cfg, i);
    struct polis_api_keys_cfg *k = &cfg->api_keys;
    if (!k->header && !reported(d, &k->header)) {
        k->header = strdup("X-API-Key");
        if (!k->header)
            d->oom = true;
    }
    header_check(d, k->header, &k->header, 0, "api_keys.header");
    if (k->query && !reported(d, &k->query) &&
        (!*k->query ||
         strspn(k->query, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~") !=
             strlen(k->query))) {
        diag_quote(k->query, strlen(k->query), q, sizeof(q));
        diag_add(d, line_of(d, &k->query, 0),
                 "api_keys.query: found %s; expected a query parameter name of letters, digits, "
                 "'-', '.', '_' or '~'",
                 q);
    }
    validate_consumers(d, cfg);
    validate_rate_limits(d, cfg);
    for (size_t i = 0; cfg->trusted_proxies && i < cfg->num_trusted_proxies; i++) {
        snprintf(p2, sizeof(p2), "trusted_proxies[%zu]", i);
        cidr_check(d, &cfg->trusted_proxies[i], 0, p2);
    }
    validate_access(d, &cfg->access, "access", 0);
    RANGE(d, &cfg->limits.max_connections_per_ip, 0, "limits.max_connections_per_ip",
          cfg->limits.max_connections_per_ip, 0, MAX_CONNECTIONS, UNIT_NUM);
}

/* Find name among n items (stride, offset of the name); n when absent. */
static size_t find_name(const void *items, size_t n, size_t stride, size_t off, const char *name)
{
    for (size_t i = 0; items && name && i < n; i++) {
        const char *s = *(char *const *)((const char *)items + i * stride + off);
        if (s && strcmp(s, name) == 0)
            return i;
    }
    return n;
}

/* Resolve references to a list's entries (issuers, consumers, rate limits) by name. */
static void resolve_refs(struct diag *d, struct polis_name_ref *refs, size_t n, const void *items,
                         size_t count, size_t stride, size_t off, const char *path, int fallback,
                         const char *what, const char *where)
{
    char q[96], list[512];
    for (size_t i = 0; refs && i < n; i++) {
        struct polis_name_ref *ref = &refs[i];
        if (reported(d, ref) || !ref->name)
            continue;
        int line = line_of(d, ref, fallback);
        size_t k = find_name(items, count, stride, off, ref->name);
        diag_quote(ref->name, strlen(ref->name), q, sizeof(q));
        if (k < count) {
            ref->index = k;
            for (size_t j = 0; j < i; j++) {
                if (refs[j].name && strcmp(refs[j].name, ref->name) == 0) {
                    diag_add(d, line, "%s: %s %s listed twice; expected each once", path, what, q);
                    break;
                }
            }
            continue;
        }
        names_of(items, count, stride, off, list, sizeof(list));
        if (count)
            diag_add(d, line, "%s: unknown %s %s; expected one of: %s", path, what, q, list);
        else
            diag_add(d, line,
                     "%s: unknown %s %s; expected the name of one under %s (none is "
                     "defined)",
                     path, what, q, where);
    }
}

/* Consumer groups named by a route: some consumer must be in each. */
static void check_groups(struct diag *d, const struct polis_config *cfg, char **groups, size_t n,
                         const char *path, int fallback)
{
    char q[96], p2[192];
    for (size_t i = 0; groups && i < n; i++) {
        if (reported(d, &groups[i]) || !groups[i])
            continue;
        bool found = false;
        for (size_t c = 0; c < cfg->num_consumers && cfg->consumers && !found; c++) {
            const struct polis_consumer_cfg *co = &cfg->consumers[c];
            for (size_t g = 0; co->groups && g < co->num_groups && !found; g++)
                found = co->groups[g] && strcmp(co->groups[g], groups[i]) == 0;
        }
        if (found)
            continue;
        diag_quote(groups[i], strlen(groups[i]), q, sizeof(q));
        snprintf(p2, sizeof(p2), "%s[%zu]", path, i);
        diag_add(d, line_of(d, &groups[i], fallback),
                 "%s: no consumer is in group %s; expected a group of some consumer under "
                 "consumers",
                 p2, q);
    }
}

/* Whether two header names are the same (ignoring case). */
static bool header_same(const char *a, const char *b)
{
    return a && b && strcasecmp(a, b) == 0;
}

static void validate_route_auth(struct diag *d, struct polis_config *cfg, struct polis_route_cfg *r,
                                const char *path)
{
    struct polis_auth_cfg *a = &r->auth;
    struct polis_route_jwt_cfg *j = &a->jwt_rules;
    char p2[192], p3[224];
    int al = r->line;

    if (a->jwt && !reported(d, &a->jwt)) {
        int jl = line_of(d, &a->jwt, al);
        snprintf(p2, sizeof(p2), "%s.auth.jwt", path);
        if (cfg->jwt.num_issuers == 0 || !cfg->jwt.issuers)
            diag_add(d, jl,
                     "%s: no issuer is defined; expected jwt: {issuers: [...]} at the top "
                     "level",
                     p2);
        snprintf(p2, sizeof(p2), "%s.auth.jwt.issuers", path);
        resolve_refs(d, j->issuers, j->num_issuers, cfg->jwt.issuers, cfg->jwt.num_issuers,
                     sizeof(*cfg->jwt.issuers), offsetof(struct polis_jwt_issuer_cfg, name), p2, jl,
                     "issuer", "jwt.issuers");
        for (size_t i = 0; j->required_claims && i < j->num_required_claims; i++) {
            const struct polis_header_kv *kv = &j->required_claims[i];
            snprintf(p2, sizeof(p2), "%s.auth.jwt.required_claims", path);
            visible_check(d, kv->name, kv, jl, p2, "a claim name without spaces, like role");
            if (!reported(d, kv) && kv->name && !kv->value)
                diag_add(d, line_of(d, kv, jl), "%s.%s: no value; expected the value required", p2,
                         kv->name);
        }
        for (size_t i = 0; j->scopes && i < j->num_scopes; i++) {
            snprintf(p2, sizeof(p2), "%s.auth.jwt.scopes[%zu]", path, i);
            visible_check(d, j->scopes[i], &j->scopes[i], jl, p2,
                          "a scope without spaces, like orders:read");
        }
        for (size_t i = 0; j->forward_claims && i < j->num_forward_claims; i++) {
            const struct polis_header_kv *kv = &j->forward_claims[i];
            snprintf(p2, sizeof(p2), "%s.auth.jwt.forward_claims", path);
            visible_check(d, kv->name, kv, jl, p2, "a claim name without spaces, like sub");
            if (reported(d, kv) || !kv->name)
                continue;
            snprintf(p3, sizeof(p3), "%s.%s", p2, kv->name);
            header_check(d, kv->value, kv, jl, p3);
            for (size_t k = 0; k < i; k++) {
                if (header_same(j->forward_claims[k].value, kv->value)) {
                    diag_add(d, line_of(d, kv, jl),
                             "%s: header '%s' also carries claim '%s'; expected a header per "
                             "claim",
                             p3, kv->value, j->forward_claims[k].name);
                    break;
                }
            }
        }
    }
    if (a->any && !reported(d, &a->any) && !(a->jwt && a->api_key))
        diag_add(d, line_of(d, &a->any, al),
                 "%s.auth.any: set without both jwt and api_key; expected any only with both "
                 "(it says that either suffices)",
                 path);
    struct polis_consumer_rules_cfg *c = &a->consumers;
    bool rules = c->num_allow || c->num_allow_groups || c->num_deny || c->num_deny_groups;
    int cl = line_of(d, c, al);
    if (rules && !a->api_key && !reported(d, &a->api_key))
        diag_add(d, cl,
                 "%s.auth.consumers: set without api_key; expected api_key: true (consumers are "
                 "known by their keys)",
                 path);
    snprintf(p2, sizeof(p2), "%s.auth.consumers.allow", path);
    resolve_refs(d, c->allow, c->num_allow, cfg->consumers, cfg->num_consumers,
                 sizeof(*cfg->consumers), offsetof(struct polis_consumer_cfg, name), p2, cl,
                 "consumer", "consumers");
    snprintf(p2, sizeof(p2), "%s.auth.consumers.deny", path);
    resolve_refs(d, c->deny, c->num_deny, cfg->consumers, cfg->num_consumers,
                 sizeof(*cfg->consumers), offsetof(struct polis_consumer_cfg, name), p2, cl,
                 "consumer", "consumers");
    snprintf(p2, sizeof(p2), "%s.auth.consumers.allow_groups", path);
    check_groups(d, cfg, c->allow_groups, c->num_allow_groups, p2, cl);
    snprintf(p2, sizeof(p2), "%s.auth.consumers.deny_groups", path);
    check_groups(d, cfg, c->deny_groups, c->num_deny_groups, p2, cl);
    if (a->api_key && !a->forward_consumer && !reported(d, &a->forward_consumer)) {
        a->forward_consumer = strdup("X-Consumer");
        if (!a->forward_consumer)
            d->oom = true;
    }
    if (a->forward_consumer) {
        snprintf(p2, sizeof(p2), "%s.auth.forward_consumer", path);
        header_check(d, a->forward_consumer, &a->forward_consumer, al, p2);
    }
    /* A header the gateway sets for services must carry one thing only. */
    const char *subject = cfg->tls.enabled ? cfg->tls.forward_subject : NULL;
    for (size_t i = 0; a->jwt && j->forward_claims && i < j->num_forward_claims; i++) {
        const struct polis_header_kv *kv = &j->forward_claims[i];
        const char *other = header_same(kv->value, a->forward_consumer) ? "auth.forward_consumer"
                            : header_same(kv->value, subject)           ? "tls.forward_subject"
                                                                        : NULL;
        if (!other || reported(d, kv))
            continue;
        diag_add(d, line_of(d, kv, al),
                 "%s.auth.jwt.forward_claims.%s: header '%s' is also %s; expected another "
                 "header",
                 path, kv->name ? kv->name : "?", kv->value, other);
    }
    if (a->forward_consumer && header_same(a->forward_consumer, subject) &&
        !reported(d, &a->forward_consumer))
        diag_add(d, line_of(d, &a->forward_consumer, al),
                 "%s.auth.forward_consumer: header '%s' is also tls.forward_subject; expected "
                 "another header",
                 path, a->forward_consumer);
}

/* "https://app.example", "http://localhost:3000": a lowercase scheme://host[:port]. */
static bool origin_ok(const char *s)
{
    size_t i = 0;
    if (!s || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    while ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '+' ||
           s[i] == '-' || s[i] == '.')
        i++;
    if (strncmp(s + i, "://", 3) != 0)
        return false;
    const char *host = s + i + 3, *end;
    char buf[256];
    if (host[0] == '[') {
        unsigned char a6[sizeof(struct in6_addr)];
        end = strchr(host, ']');
        if (!end || (size_t)(end - host - 1) >= sizeof(buf))
            return false;
        memcpy(buf, host + 1, (size_t)(end - host - 1));
        buf[end - host - 1] = 0;
        if (inet_pton(AF_INET6, buf, a6) != 1)
            return false;
        end++;
    } else {
        end = host + strcspn(host, ":");
        if ((size_t)(end - host) >= sizeof(buf))
            return false;
        memcpy(buf, host, (size_t)(end - host));
        buf[end - host] = 0;
        if (buf[0] == '*' || !is_host(buf))
            return false;
        for (const char *c = buf; *c; c++) {
            if (*c >= 'A' && *c <= 'Z')
                return false;
        }
    }
    if (*end == 0)
        return true;
    if (*end != ':')
        return false;
    size_t n = strlen(end + 1);
    if (n == 0 || n > 5 || strspn(end + 1, "0123456789") != n)
        return false;
    unsigned long port = strtoul(end + 1, NULL, 10);
    return port >= 1 && port <= 65535;
}

static void validate_cors(struct diag *d, const struct polis_cors_cfg *c, const char *path,
                          int fallback)
{
    char p2[192], q[96];
    int cl = line_of(d, &c->enabled, fallback);
    bool star = false;

    if (!c->enabled || reported(d, &c->enabled))
        return;
    if (!reported(d, &c->origins)) {
        if (c->num_origins == 0 || !c->origins)
            diag_add(d, line_of(d, &c->origins, cl),
                     "%s.cors: no origins; expected origins: a list like "
                     "[\"https://app.example\"] or [\"*\"]",
                     path);
        for (size_t i = 0; c->origins && i < c->num_origins; i++) {
            const char *o = c->origins[i];
            if (reported(d, &c->origins[i]))
                continue;
            if (o && strcmp(o, "*") == 0) {
                star = true;
                continue;
            }
            if (origin_ok(o))
                continue;
            diag_quote(o ? o : "", o ? strlen(o) : 0, q, sizeof(q));
            diag_add(d, line_of(d, &c->origins[i], line_of(d, &c->origins, cl)),
                     "%s.cors.origins[%zu]: found %s; expected \"*\" or an origin like "
                     "https://app.example or http://localhost:3000 (lowercase, no path)",
                     path, i, q);
        }
        if (star && c->num_origins > 1)
            diag_add(d, line_of(d, &c->origins, cl),
                     "%s.cors.origins: '*' with other origins; expected '*' alone or a list of "
                     "origins",
                     path);
        if (star && c->credentials && !reported(d, &c->credentials))
            diag_add(d, line_of(d, &c->credentials, cl),
                     "%s.cors.credentials: true with origin '*'; expected a list of origins "
                     "(browsers refuse credentials with '*')",
                     path);
    }
    for (size_t i = 0; c->methods && i < c->num_methods; i++) {
        const char *m = c->methods[i];
        if (reported(d, &c->methods[i]) || cfg_is_token(m))
            continue;
        diag_quote(m ? m : "", m ? strlen(m) : 0, q, sizeof(q));
        diag_add(d, line_of(d, &c->methods[i], line_of(d, &c->methods, cl)),
                 "%s.cors.methods[%zu]: found %s; expected a method token like GET", path, i, q);
    }
    for (size_t i = 0; c->headers && i < c->num_headers; i++) {
        snprintf(p2, sizeof(p2), "%s.cors.headers[%zu]", path, i);
        header_check(d, c->headers[i], &c->headers[i], line_of(d, &c->headers, cl), p2);
    }
    for (size_t i = 0; c->expose_headers && i < c->num_expose_headers; i++) {
        snprintf(p2, sizeof(p2), "%s.cors.expose_headers[%zu]", path, i);
        header_check(d, c->expose_headers[i], &c->expose_headers[i],
                     line_of(d, &c->expose_headers, cl), p2);
    }
    snprintf(p2, sizeof(p2), "%s.cors.max_age", path);
    RANGE(d, &c->max_age_ms, cl, p2, c->max_age_ms, 0, MAX_MS, UNIT_MS);
}

/* A route's auth, rate limits, CORS and access lists. */
static void validate_route_security(struct diag *d, struct polis_config *cfg,
                                    struct polis_route_cfg *r, const char *path)
{
    char p2[192], q[96];
    int rl = r->line;

    validate_route_auth(d, cfg, r, path);
    snprintf(p2, sizeof(p2), "%s.rate_limit", path);
    resolve_refs(d, r->rate_limits, r->num_rate_limits, cfg->rate_limits, cfg->num_rate_limits,
                 sizeof(*cfg->rate_limits), offsetof(struct polis_rate_limit_cfg, name), p2,
                 line_of(d, &r->rate_limits, rl), "rate limit", "rate_limits");
    for (size_t i = 0; r->rate_limits && i < r->num_rate_limits; i++) {
        const struct polis_name_ref *ref = &r->rate_limits[i];
        size_t k = find_name(cfg->rate_limits, cfg->num_rate_limits, sizeof(*cfg->rate_limits),
                             offsetof(struct polis_rate_limit_cfg, name), ref->name);
        if (reported(d, ref) || k == cfg->num_rate_limits ||
            cfg->rate_limits[k].key != POLIS_RL_KEY_CONSUMER || r->auth.jwt || r->auth.api_key)
            continue;
        diag_quote(ref->name, strlen(ref->name), q, sizeof(q));
        diag_add(d, line_of(d, ref, rl),
                 "%s: %s is keyed by consumer but the route has no auth; expected auth with "
                 "api_key or jwt, or a limit keyed otherwise",
                 p2, q);
    }
    validate_cors(d, &r->cors, path, rl);
    snprintf(p2, sizeof(p2), "%s.access", path);
    validate_access(d, &r->access, p2, line_of(d, &r->access, rl));
}

/* The comma-separated cluster names for "expected one of" (at most 10 shown). */
static void cluster_list(const struct polis_config *cfg, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; i < cfg->num_clusters && o < cap; i++) {
        if (!cfg->clusters[i].name)
            continue;
        if (i == 10) {
            snprintf(out + o, cap - o, ", ...");
            break;
        }
        int n = snprintf(out + o, cap - o, "%s%s", o ? ", " : "", cfg->clusters[i].name);
        if (n < 0)
            break;
        o += (size_t)n;
    }
}

static void validate_cluster(struct diag *d, struct polis_config *cfg, size_t ci)
{
    struct polis_cluster_cfg *c = &cfg->clusters[ci];
    char path[64], p2[160], q[96];
    int cl = c->line;

    snprintf(path, sizeof(path), "clusters[%zu]", ci);
    if (!reported(d, &c->name)) {
        if (!c->name) {
            diag_add(d, cl, "%s: no name; expected name: <[A-Za-z0-9_.-]+>", path);
        } else if (!cfg_is_name(c->name)) {
            diag_quote(c->name, strlen(c->name), q, sizeof(q));
            diag_add(d, line_of(d, &c->name, cl),
                     "%s.name: found %s; expected a name of letters, digits, '_', '.' "
                     "or '-'",
                     path, q);
        } else {
            for (size_t j = 0; j < ci; j++) {
                if (cfg->clusters[j].name && strcmp(cfg->clusters[j].name, c->name) == 0) {
                    diag_add(d, line_of(d, &c->name, cl),
                             "%s.name: duplicate cluster name '%s' (first at line %d); "
                             "expected a unique name",
                             path, c->name, cfg->clusters[j].line);
                    break;
                }
            }
        }
    }
    if ((unsigned)c->lb > POLIS_LB_HASH)
        diag_add(d, line_of(d, &c->lb, cl),
                 "%s.balance: unknown kind %d; expected one of: round_robin, weighted, "
                 "least_request, hash",
                 path, (int)c->lb);
    if (!reported(d, &c->hash_key)) {
        bool keyed = c->hash_on == POLIS_HASH_HEADER || c->hash_on == POLIS_HASH_COOKIE;
        if ((unsigned)c->hash_on > POLIS_HASH_COOKIE) {
            diag_add(d, line_of(d, &c->hash_key, cl),
                     "%s.hash_on: unknown kind %d; expected header:<name>, cookie:<name> "
                     "or client_ip",
                     path, (int)c->hash_on);
        } else if (c->lb == POLIS_LB_HASH && keyed && !cfg_is_token(c->hash_key)) {
            diag_quote(c->hash_key ? c->hash_key : "", c->hash_key ? strlen(c->hash_key) : 0, q,
                       sizeof(q));
            diag_add(d, line_of(d, &c->hash_key, cl),
                     "%s.hash_on: %s name %s is not a token; expected %s:<name> with a "
                     "name of letters, digits and !#$%%&'*+-.^_`|~",
                     path, c->hash_on == POLIS_HASH_HEADER ? "header" : "cookie", q,
                     c->hash_on == POLIS_HASH_HEADER ? "header" : "cookie");
        } else if (c->lb != POLIS_LB_HASH && c->hash_key) {
            diag_add(d, line_of(d, &c->hash_key, cl),
                     "%s.hash_on: set but balance is not hash; expected balance: hash or "
                     "no hash_on",
                     path);
        }
    }
    snprintf(p2, sizeof(p2), "%s.keepalive", path);
    RANGE(d, &c->keepalive, cl, p2, c->keepalive, 0, MAX_KEEPALIVE, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.connect_timeout", path);
    RANGE(d, &c->connect_timeout_ms, cl, p2, c->connect_timeout_ms, 1, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.timeout", path);
    RANGE(d, &c->timeout_ms, cl, p2, c->timeout_ms, 1, MAX_MS, UNIT_MS);
    validate_discovery(d, cfg, c, path, cl);
    for (size_t i = 0; c->instances && i < c->num_instances; i++) {
        struct polis_instance_cfg *in = &c->instances[i];
        int il = line_of(d, &in->addr, cl);
        if (!reported(d, &in->addr) && in->addr.len == 0)
            diag_add(d, il, "%s.instances[%zu]: no address; expected address: host:port", path, i);
        snprintf(p2, sizeof(p2), "%s.instances[%zu].weight", path, i);
        RANGE(d, &in->weight, il, p2, in->weight, 1, MAX_WEIGHT, UNIT_NUM);
        if (reported(d, &in->meta))
            continue;
        int ml = line_of(d, &in->meta, il);
        if (in->num_meta && !in->meta)
            diag_add(d, ml, "%s.instances[%zu].metadata: count without a list; expected a mapping",
                     path, i);
        for (size_t k = 0; in->meta && k < in->num_meta; k++) {
            const struct polis_header_kv *kv = &in->meta[k];
            int kl = line_of(d, kv, ml);
            if (reported(d, kv))
                continue;
            if (!cfg_is_name(kv->name)) {
                diag_quote(kv->name ? kv->name : "", kv->name ? strlen(kv->name) : 0, q, sizeof(q));
                diag_add(d, kl,
                         "%s.instances[%zu].metadata: key %s; expected a metadata key of "
                         "letters, digits, '_', '.' or '-'",
                         path, i, q);
            } else if (strcmp(kv->name, "weight") == 0) {
                diag_add(d, kl,
                         "%s.instances[%zu].metadata.weight: a weight in metadata; expected "
                         "weight: beside address (only discovery sources read a weight from "
                         "metadata)",
                         path, i);
            } else if (!kv->value) {
                diag_add(d, kl, "%s.instances[%zu].metadata.%s: no value; expected a value", path,
                         i, kv->name);
            }
        }
    }
    snprintf(p2, sizeof(p2), "%s.health_check", path);
    validate_health(d, &c->health_check, p2, cl);
    snprintf(p2, sizeof(p2), "%s.outlier_detection", path);
    validate_outlier(d, &c->outlier, p2, cl);
    snprintf(p2, sizeof(p2), "%s.circuit_breaker", path);
    validate_breaker(d, &c->breaker, p2, cl);
    snprintf(p2, sizeof(p2), "%s.instance_circuit_breaker", path);
    validate_breaker(d, &c->instance_breaker, p2, cl);
    /* A cluster built in code before retries existed leaves the policy zeroed (attempts 0 is
     * never loaded from a file): it gets the defaults, and so does its panic threshold. */
    if (c->retry.attempts == 0 && c->retry.on == 0 && !c->retry.statuses &&
        c->retry.backoff_base_ms == 0 && c->retry.backoff_max_ms == 0 &&
        !reported(d, &c->retry.attempts)) {
        retry_defaults(&c->retry);
        if (c->panic_threshold == 0)
            c->panic_threshold = 50;
    }
    snprintf(p2, sizeof(p2), "%s.retry", path);
    validate_retry(d, &c->retry, p2, cl);
    snprintf(p2, sizeof(p2), "%s.panic_threshold", path);
    RANGE(d, &c->panic_threshold, cl, p2, c->panic_threshold, 0, 100, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.max_connections", path);
    RANGE(d, &c->max_connections, cl, p2, c->max_connections, 0, MAX_CONNECTIONS, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.max_pending", path);
    RANGE(d, &c->max_pending, cl, p2, c->max_pending, 0, MAX_CONNECTIONS, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.max_requests", path);
    RANGE(d, &c->max_requests, cl, p2, c->max_requests, 0, MAX_CONNECTIONS, UNIT_NUM);
    snprintf(p2, sizeof(p2), "%s.tls", path);
    validate_upstream_tls(d, &c->tls, p2, cl);
}

/* A route's traffic settings: subset or split, fault injection, mirroring. target is the
 * route's cluster when it was found (subsets of a static cluster must match an instance). */
static void validate_traffic(struct diag *d, const struct polis_route_cfg *r,
                             const struct polis_cluster_cfg *target, const char *path)
{
    char p2[192], q[96];
    int rl = r->line;

    snprintf(p2, sizeof(p2), "%s.subset", path);
    if (validate_subset(d, &r->subset, p2, rl) && target)
        subset_in_cluster(d, &r->subset, target, r, p2, rl);
    if (r->num_splits && r->subset.num_match && !reported(d, &r->splits))
        diag_add(d, line_of(d, &r->splits, rl),
                 "%s.split: set together with subset; expected only one of them", path);
    if (r->num_splits && !r->splits) {
        diag_add(d, rl, "%s.split: count without a list; expected a list", path);
    } else if (r->num_splits && !reported(d, &r->splits)) {
        uint64_t sum = 0;
        bool weights_ok = true;
        int sl = line_of(d, &r->splits, rl);
        for (size_t i = 0; i < r->num_splits; i++) {
            const struct polis_split_cfg *sp = &r->splits[i];
            snprintf(p2, sizeof(p2), "%s.split[%zu].weight", path, i);
            RANGE(d, &sp->weight, sl, p2, sp->weight, 0, MAX_WEIGHT, UNIT_NUM);
            weights_ok &= !reported(d, &sp->weight);
            sum += sp->weight;
            snprintf(p2, sizeof(p2), "%s.split[%zu].subset", path, i);
            if (validate_subset(d, &sp->subset, p2, line_of(d, &sp->weight, sl)) && target)
                subset_in_cluster(d, &sp->subset, target, r, p2, line_of(d, &sp->weight, sl));
        }
        if (weights_ok && sum == 0)
            diag_add(d, sl, "%s.split: every weight is 0; expected at least one weight above 0",
                     path);
    }

    const struct polis_fault_cfg *f = &r->fault;
    int fl = line_of(d, &f->delay_ms, rl);
    snprintf(p2, sizeof(p2), "%s.fault.delay", path);
    RANGE(d, &f->delay_ms, fl, p2, f->delay_ms, 0, MAX_MS, UNIT_MS);
    snprintf(p2, sizeof(p2), "%s.fault.delay_percent", path);
    pct_check(d, &f->delay_percent, fl, p2);
    snprintf(p2, sizeof(p2), "%s.fault.abort_percent", path);
    pct_check(d, &f->abort_percent, fl, p2);
    if (!reported(d, &f->abort_status) && f->abort_status != 0 &&
        (f->abort_status < 200 || f->abort_status > 599))
        diag_add(d, line_of(d, &f->abort_status, fl),
                 "%s.fault.abort_status: found %d, out of range; expected 200..599", path,
                 f->abort_status);
    if (f->delay_ms == 0 && f->delay_percent > 0 && !reported(d, &f->delay_ms) &&
        !reported(d, &f->delay_percent))
        diag_add(d, line_of(d, &f->delay_percent, fl),
                 "%s.fault.delay_percent: set without a delay; expected delay: a duration "
                 "above 0",
                 path);
    if (f->abort_status == 0 && f->abort_percent > 0 && !reported(d, &f->abort_status) &&
        !reported(d, &f->abort_percent))
        diag_add(d, line_of(d, &f->abort_percent, fl),
                 "%s.fault.abort_percent: set without abort_status; expected abort_status: "
                 "200..599",
                 path);

    const struct polis_mirror_cfg *m = &r->mirror;
    if (!m->enabled || reported(d, &m->enabled))
        return;
    int ml = line_of(d, &m->enabled, rl);
    snprintf(p2, sizeof(p2), "%s.mirror.percent", path);
    pct_check(d, &m->percent, ml, p2);
    snprintf(p2, sizeof(p2), "%s.mirror.subset", path);
    if (validate_subset(d, &m->subset, p2, ml) && target)
        subset_in_cluster(d, &m->subset, target, r, p2, ml);
    for (size_t i = 0; m->compare_headers && i < m->num_compare_headers; i++) {
        const char *h = m->compare_headers[i];
        if (reported(d, &m->compare_headers[i]) || cfg_is_token(h))
            continue;
        diag_quote(h ? h : "", h ? strlen(h) : 0, q, sizeof(q));
        diag_add(d, line_of(d, &m->compare_headers[i], ml),
                 "%s.mirror.compare_headers[%zu]: header name %s is not a token; expected "
                 "letters, digits and !#$%%&'*+-.^_`|~",
                 path, i, q);
    }
    for (size_t i = 0; m->ignore_fields && i < m->num_ignore_fields; i++) {
        const char *fp = m->ignore_fields[i];
        if (reported(d, &m->ignore_fields[i]) || is_field_path(fp))
            continue;
        diag_quote(fp ? fp : "", fp ? strlen(fp) : 0, q, sizeof(q));
        diag_add(d, line_of(d, &m->ignore_fields[i], ml),
                 "%s.mirror.ignore_fields[%zu]: found %s; expected a JSON field path like "
                 "timestamp or meta.id",
                 path, i, q);
    }
}

static void validate_route(struct diag *d, struct polis_config *cfg, size_t ri)
{
    struct polis_route_cfg *r = &cfg->routes[ri];
    char path[64], p2[160], q[96], list[512];
    int rl = r->line;

    snprintf(path, sizeof(path), "routes[%zu]", ri);
    if (!r->name) {
        if (asprintf(&r->name, "route-%zu", ri) < 0) {
            r->name = NULL;
            d->oom = true;
        }
    } else if (!reported(d, &r->name) && !cfg_is_name(r->name)) {
        diag_quote(r->name, strlen(r->name), q, sizeof(q));
        diag_add(d, line_of(d, &r->name, rl),
                 "%s.name: found %s; expected a name of letters, digits, '_', '.' or '-'", path, q);
    }
    for (size_t j = 0; r->name && j < ri; j++) {
        if (cfg->routes[j].name && strcmp(cfg->routes[j].name, r->name) == 0) {
            diag_add(d, line_of(d, &r->name, rl),
                     "%s.name: duplicate route name '%s' (first at line %d); expected a "
                     "unique name",
                     path, r->name, cfg->routes[j].line);
            break;
        }
    }
    /* match */
    if (r->host && !reported(d, &r->host) && !is_host(r->host)) {
        diag_quote(r->host, strlen(r->host), q, sizeof(q));
        diag_add(d, line_of(d, &r->host, rl),
                 "%s.match.host: found %s; expected a host name like api.example.com or "
                 "*.example.com (no port)",
                 path, q);
    }
    if (!reported(d, &r->path)) {
        const char *key = r->path_kind == POLIS_PATH_PREFIX ? "prefix" : "path";
        if ((unsigned)r->path_kind > POLIS_PATH_PATTERN) {
            diag_add(d, line_of(d, &r->path, rl),
                     "%s.match: unknown path kind %d; expected exact, prefix or pattern", path,
                     (int)r->path_kind);
        } else if (r->path_kind != POLIS_PATH_ANY) {
            const char *why = path_problem(r->path, r->path_kind == POLIS_PATH_PATTERN);
            if (why) {
                diag_quote(r->path ? r->path : "", r->path ? strlen(r->path) : 0, q, sizeof(q));
                diag_add(d, line_of(d, &r->path, rl),
                         "%s.match.%s: %s %s; expected a path starting with '/'%s", path, key, q,
                         why,
                         r->path_kind == POLIS_PATH_PATTERN
                             ? " whose {name} parameters are whole segments named "
                               "[A-Za-z0-9_]"
                             : "");
            }
        }
    }
    if (!reported(d, &r->methods)) {
        if (r->num_methods > 0 && !r->methods)
            diag_add(d, line_of(d, &r->methods, rl), "%s.match.methods: missing list", path);
        for (size_t i = 0; r->methods && i < r->num_methods; i++) {
            if (reported(d, &r->methods[i]) || cfg_is_token(r->methods[i]))
                continue;
            diag_quote(r->methods[i] ? r->methods[i] : "",
                       r->methods[i] ? strlen(r->methods[i]) : 0, q, sizeof(q));
            diag_add(d, line_of(d, &r->methods[i], line_of(d, &r->methods, rl)),
                     "%s.match.methods[%zu]: found %s; expected a method token like GET", path, i,
                     q);
        }
    }
    for (size_t i = 0; r->headers && i < r->num_headers; i++) {
        struct polis_header_match *h = &r->headers[i];
        int hl = line_of(d, h, rl);
        if (reported(d, h))
            continue;
        if (!cfg_is_token(h->name)) {
            diag_quote(h->name ? h->name : "", h->name ? strlen(h->name) : 0, q, sizeof(q));
            diag_add(d, hl,
                     "%s.match.headers: header name %s is not a token; expected letters, "
                     "digits and !#$%%&'*+-.^_`|~",
                     path, q);
        } else if (h->value && !is_header_value(h->value)) {
            diag_add(d, hl,
                     "%s.match.headers.%s: value holds CR or LF; expected a value without "
                     "CR or LF, or true",
                     path, h->name);
        }
    }
    for (size_t i = 0; r->cookies && i < r->num_cookies; i++) {
        struct polis_header_match *h = &r->cookies[i];
        int hl = line_of(d, h, rl);
        if (reported(d, h))
            continue;
        if (!cfg_is_token(h->name)) {
            diag_quote(h->name ? h->name : "", h->name ? strlen(h->name) : 0, q, sizeof(q));
            diag_add(d, hl,
                     "%s.match.cookies: cookie name %s is not a token; expected letters, "
                     "digits and !#$%%&'*+-.^_`|~",
                     path, q);
        } else if (h->value && (!is_header_value(h->value) || strchr(h->value, ';'))) {
            diag_add(d, hl,
                     "%s.match.cookies.%s: value holds CR, LF or ';'; expected a cookie value "
                     "without them, or nothing for presence only",
                     path, h->name);
        }
    }
    /* action */
    const struct polis_cluster_cfg *target = NULL;
    if (!reported(d, &r->cluster)) {
        if (!r->cluster) {
            diag_add(d, rl, "%s: no cluster; expected cluster: <name of a cluster>", path);
        } else {
            size_t k;
            for (k = 0; k < cfg->num_clusters; k++) {
                if (cfg->clusters[k].name && strcmp(cfg->clusters[k].name, r->cluster) == 0)
                    break;
            }
            if (k < cfg->num_clusters) {
                r->cluster_index = k;
                target = &cfg->clusters[k];
            } else {
                cluster_list(cfg, list, sizeof(list));
                diag_quote(r->cluster, strlen(r->cluster), q, sizeof(q));
                if (cfg->num_clusters)
                    diag_add(d, line_of(d, &r->cluster, rl),
                             "%s.cluster: unknown cluster %s; expected one of: %s", path, q, list);
                else
                    diag_add(d, line_of(d, &r->cluster, rl),
                             "%s.cluster: unknown cluster %s; expected the name of a "
                             "cluster under clusters (none is defined)",
                             path, q);
            }
        }
    }
    if (r->strip_prefix && r->path_kind != POLIS_PATH_PREFIX && !reported(d, &r->strip_prefix))
        diag_add(d, line_of(d, &r->strip_prefix, rl),
                 "%s.strip_prefix: set on a route without match.prefix; expected "
                 "strip_prefix only with prefix",
                 path);
    if (r->rewrite && !reported(d, &r->rewrite)) {
        const char *why = path_problem(r->rewrite, false);
        if (why) {
            diag_quote(r->rewrite, strlen(r->rewrite), q, sizeof(q));
            diag_add(d, line_of(d, &r->rewrite, rl),
                     "%s.rewrite: %s %s; expected a path starting with '/'", path, q, why);
        } else if (r->strip_prefix && !reported(d, &r->strip_prefix)) {
            diag_add(d, line_of(d, &r->rewrite, rl),
                     "%s.rewrite: set together with strip_prefix; expected one of them "
                     "(rewrite already replaces the prefix)",
                     path);
        }
    }
    snprintf(p2, sizeof(p2), "%s.request_headers", path);
    validate_header_ops(d, &r->request_headers, p2, rl);
    snprintf(p2, sizeof(p2), "%s.response_headers", path);
    validate_header_ops(d, &r->response_headers, p2, rl);
    snprintf(p2, sizeof(p2), "%s.max_body", path);
    RANGE(d, &r->max_body, rl, p2, r->max_body, 0, MAX_BODY, UNIT_BYTES);
    snprintf(p2, sizeof(p2), "%s.timeout", path);
    RANGE(d, &r->timeout_ms, rl, p2, r->timeout_ms, 0, MAX_MS, UNIT_MS);
    validate_traffic(d, r, target, path);
    if (r->retry) {
        snprintf(p2, sizeof(p2), "%s.retry", path);
        validate_retry(d, r->retry, p2, line_of(d, &r->retry, rl));
    }
    snprintf(p2, sizeof(p2), "%s.max_concurrent", path);
    RANGE(d, &r->max_concurrent, rl, p2, r->max_concurrent, 0, MAX_CONNECTIONS, UNIT_NUM);
    validate_route_security(d, cfg, r, path);
}

/* Whether two listening addresses collide: the same text, or the same port where one of them is
 * a wildcard address of the same family. */
/* 127.0.0.0/8 or ::1: only this machine can connect. */
static bool addr_loopback(const struct polis_addr *a)
{
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&a->ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->ss;
        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    }
    return false;
}

static bool addr_collide(const struct polis_addr *a, const struct polis_addr *b)
{
    if (strcmp(a->text, b->text) == 0)
        return true;
    if (a->ss.ss_family != b->ss.ss_family)
        return false;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
        return x->sin_port == y->sin_port &&
               (x->sin_addr.s_addr == INADDR_ANY || y->sin_addr.s_addr == INADDR_ANY);
    }
    const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
    return x->sin6_port == y->sin6_port &&
           (IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) || IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr));
}

static void config_validate_diag(struct polis_config *cfg, struct diag *d)
{
    RANGE(d, &cfg->workers, 0, "workers", (cfg->workers < 0 ? UINT64_MAX : (uint64_t)cfg->workers),
          0, MAX_WORKERS, UNIT_NUM);
    if (!reported(d, &cfg->listen) && cfg->listen.len == 0)
        diag_add(d, 0,
                 "listen: missing; expected the address to accept connections on, like "
                 "listen: \"0.0.0.0:8080\"");
    if (cfg->has_admin && cfg->listen.len && cfg->admin.len && !reported(d, &cfg->admin) &&
        addr_collide(&cfg->listen, &cfg->admin))
        diag_add(d, line_of(d, &cfg->admin, 0),
                 "admin: %s collides with listen %s; expected another port, or admin: off",
                 cfg->admin.text, cfg->listen.text);
    if (cfg->has_admin && cfg->admin.len == 0 && !reported(d, &cfg->admin))
        diag_add(d, 0, "admin: no address; expected an address or off");
    if (cfg->admin_token != NULL && !reported(d, &cfg->admin_token) &&
        strlen(cfg->admin_token) < 16)
        diag_add(d, line_of(d, &cfg->admin_token, 0),
                 "admin_token: too short; expected at least 16 characters (use a random one)");
    if (cfg->has_admin && cfg->admin.len && !reported(d, &cfg->admin) && cfg->admin_token == NULL &&
        !addr_loopback(&cfg->admin))
        diag_add(d, line_of(d, &cfg->admin, 0),
                 "admin: %s is reachable from other machines; expected admin_token (a bearer "
                 "token of at least 16 characters), or a loopback address like 127.0.0.1:9901",
                 cfg->admin.text);
    if (cfg->access_log && !reported(d, &cfg->access_log) && cfg->access_log[0] == 0)
        diag_add(d, line_of(d, &cfg->access_log, 0),
                 "access_log: empty; expected \"-\" (stdout), a file path or off");

    struct polis_limits_cfg *l = &cfg->limits;
    RANGE(d, &l->max_request_line, 0, "limits.max_request_line", l->max_request_line, 256, 1u << 20,
          UNIT_BYTES);
    RANGE(d, &l->max_header_bytes, 0, "limits.max_header_bytes", l->max_header_bytes, 1024,
          1u << 20, UNIT_BYTES);
    if (!reported(d, &l->max_request_line) && !reported(d, &l->max_header_bytes) &&
        l->max_request_line > l->max_header_bytes) {
        char a[32], b[32];
        diag_size(l->max_request_line, a, sizeof(a));
        diag_size(l->max_header_bytes, b, sizeof(b));
        diag_add(d, line_of(d, &l->max_request_line, 0),
                 "limits.max_request_line: %s is larger than max_header_bytes %s; expected at "
                 "most max_header_bytes (the request line is part of the head)",
                 a, b);
    }
    RANGE(d, &l->max_headers, 0, "limits.max_headers", l->max_headers, 1, 1000, UNIT_NUM);
    RANGE(d, &l->max_body, 0, "limits.max_body", l->max_body, 1, MAX_BODY, UNIT_BYTES);
    RANGE(d, &l->max_connections, 0, "limits.max_connections", l->max_connections, 1,
          MAX_CONNECTIONS, UNIT_NUM);

    struct polis_registry_cfg *g = &cfg->registry;
    int gl = line_of(d, &g->enabled, 0);
    RANGE(d, &g->default_ttl_ms, gl, "registry.default_ttl", g->default_ttl_ms, 1000, MAX_MS,
          UNIT_MS);
    RANGE(d, &g->max_ttl_ms, gl, "registry.max_ttl", g->max_ttl_ms, 1000, MAX_MS, UNIT_MS);
    RANGE(d, &g->max_wait_ms, gl, "registry.max_wait", g->max_wait_ms, 0, MAX_MS, UNIT_MS);
    ms_order(d, &g->default_ttl_ms, &g->max_ttl_ms, gl, "registry", "default_ttl", "max_ttl");
    if (g->enabled && !cfg->has_admin && !reported(d, &g->enabled))
        diag_add(d, gl,
                 "registry.enabled: true but admin is off; expected an admin listener (the "
                 "registry's API is served on it)");

    struct polis_timeouts_cfg *t = &cfg->timeouts;
    RANGE(d, &t->header_read_ms, 0, "timeouts.header_read", t->header_read_ms, 1, MAX_MS, UNIT_MS);
    RANGE(d, &t->body_read_ms, 0, "timeouts.body_read", t->body_read_ms, 1, MAX_MS, UNIT_MS);
    RANGE(d, &t->idle_ms, 0, "timeouts.idle", t->idle_ms, 1, MAX_MS, UNIT_MS);
    RANGE(d, &t->request_ms, 0, "timeouts.request", t->request_ms, 0, MAX_MS, UNIT_MS);
    RANGE(d, &t->drain_ms, 0, "timeouts.drain", t->drain_ms, 0, MAX_MS, UNIT_MS);
    validate_security(d, cfg);

    if (cfg->num_clusters && !cfg->clusters)
        diag_add(d, 0, "clusters: count without a list; expected a list");
    else
        for (size_t i = 0; i < cfg->num_clusters; i++)
            validate_cluster(d, cfg, i);
    if (cfg->num_routes && !cfg->routes)
        diag_add(d, 0, "routes: count without a list; expected a list");
    else
        for (size_t i = 0; i < cfg->num_routes; i++)
            validate_route(d, cfg, i);
}

int polis__config_validate(struct polis_config *cfg, struct polis_config_errors *errs)
{
    struct diag d;

    if (errs) {
        errs->msgs = NULL;
        errs->count = 0;
    }
    diag_init(&d, cfg && cfg->source ? cfg->source : "config");
    if (!cfg) {
        diag_add(&d, 0, "no configuration; expected one");
        diag_finish(&d, errs);
        return POLIS_EINVAL;
    }
    config_validate_diag(cfg, &d);
    bool bad = d.n > 0;
    int rc = diag_finish(&d, errs);
    if (rc < 0)
        return rc;
    return bad ? POLIS_EINVAL : 0;
}

/* ---- The YAML loader --------------------------------------------------------------------- */

/* The document as a small tree (libyaml events, anchors and aliases refused), with lines. */
enum ntype { N_SCALAR, N_SEQ, N_MAP };

struct node {
    enum ntype type;
    int line;   /* 1-based */
    bool plain; /* a plain (unquoted) scalar: may be null or a boolean */
    char *s;    /* scalar bytes, NUL-terminated, len bytes (may hold NULs) */
    size_t len;
    struct node *kids; /* items; for a mapping key, value, key, value... */
    size_t n, cap;
};

struct ld {
    struct diag *d;
    struct polis_config *cfg;
    size_t nodes;
};

static void node_free(struct node *n)
{
    for (size_t i = 0; i < n->n; i++)
        node_free(&n->kids[i]);
    free(n->kids);
    free(n->s);
    memset(n, 0, sizeof(*n));
}

static struct node *node_append(struct ld *L, struct node *parent, enum ntype type, int line)
{
    if (parent->n == parent->cap) {
        size_t ncap = parent->cap ? parent->cap * 2 : 4;
        struct node *nk = realloc(parent->kids, ncap * sizeof(*nk));
        if (!nk) {
            L->d->oom = true;
            return NULL;
        }
        parent->kids = nk;
        parent->cap = ncap;
    }
    struct node *k = &parent->kids[parent->n++];
    memset(k, 0, sizeof(*k));
    k->type = type;
    k->line = line;
    L->nodes++;
    return k;
}

static int line_at_offset(const char *s, size_t len, size_t off)
{
    int line = 1;
    for (size_t i = 0; i < off && i < len; i++)
        line += s[i] == '\n';
    return line;
}

static void syntax_error(struct ld *L, const yaml_parser_t *p, const char *yaml, size_t len)
{
    const char *problem = p->problem ? p->problem : "unknown problem";
    if (p->error == YAML_READER_ERROR) {
        diag_add(L->d, line_at_offset(yaml, len, p->problem_offset),
                 "YAML syntax error: %s (byte %zu); expected UTF-8 text without control "
                 "characters",
                 problem, p->problem_offset);
    } else if (p->context) {
        diag_add(L->d, (int)p->problem_mark.line + 1,
                 "YAML syntax error: %s (%s at line %d); expected valid YAML", problem, p->context,
                 (int)p->context_mark.line + 1);
    } else {
        diag_add(L->d, (int)p->problem_mark.line + 1, "YAML syntax error: %s; expected valid YAML",
                 problem);
    }
}

/* Parse the text into root's kids (one per document). Returns false when it could not. */
static bool build_tree(struct ld *L, const char *yaml, size_t len, struct node *root)
{
    yaml_parser_t p;
    yaml_event_t ev;
    struct node *stack[MAX_DEPTH + 1];
    size_t depth = 0;
    int docs = 0;
    bool ok = true, done = false;

    if (!yaml_parser_initialize(&p)) {
        L->d->oom = true;
        return false;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    stack[depth++] = root;
    while (!done) {
        if (!yaml_parser_parse(&p, &ev)) {
            syntax_error(L, &p, yaml, len);
            ok = false;
            break;
        }
        int line = (int)ev.start_mark.line + 1;
        struct node *top = stack[depth - 1], *k;
        const yaml_char_t *anchor = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                diag_add(L->d, line, "a second YAML document; expected a single document");
                ok = false;
                done = true;
            }
            break;
        case YAML_ALIAS_EVENT:
            diag_add(L->d, line,
                     "alias '*%s'; expected plain values (anchors and aliases are refused)",
                     (const char *)ev.data.alias.anchor);
            k = node_append(L, top, N_SCALAR, line); /* a null in its place */
            if (k)
                k->plain = true;
            break;
        case YAML_SCALAR_EVENT:
            anchor = ev.data.scalar.anchor;
            k = node_append(L, top, N_SCALAR, line);
            if (!k)
                break;
            k->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            k->len = ev.data.scalar.length;
            k->s = malloc(k->len + 1);
            if (!k->s) {
                L->d->oom = true;
                break;
            }
            memcpy(k->s, ev.data.scalar.value, k->len);
            k->s[k->len] = 0;
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            anchor = ev.type == YAML_SEQUENCE_START_EVENT ? ev.data.sequence_start.anchor
                                                          : ev.data.mapping_start.anchor;
            if (depth > MAX_DEPTH) {
                diag_add(L->d, line, "nesting deeper than %d levels; expected a flatter document",
                         MAX_DEPTH);
                ok = false;
                done = true;
                break;
            }
            k = node_append(L, top, ev.type == YAML_SEQUENCE_START_EVENT ? N_SEQ : N_MAP, line);
            if (k)
                stack[depth++] = k;
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 1)
                depth--;
            break;
        default:
            break;
        }
        if (anchor)
            diag_add(L->d, line,
                     "anchor '&%s'; expected plain values (anchors and aliases are refused)",
                     (const char *)anchor);
        yaml_event_delete(&ev);
        if (L->d->oom) {
            ok = false;
            break;
        }
        if (L->nodes > MAX_NODES) {
            diag_add(L->d, line, "more than %d values; expected a smaller document", MAX_NODES);
            ok = false;
            break;
        }
    }
    yaml_parser_delete(&p);
    return ok;
}

/* ---- Reading nodes ----------------------------------------------------------------------- */

static bool scalar_eq(const struct node *n, const char *lit)
{
    return n->type == N_SCALAR && n->len == strlen(lit) && memcmp(n->s, lit, n->len) == 0;
}

static bool is_null(const struct node *n)
{
    return n->type == N_SCALAR && n->plain &&
           (n->len == 0 || scalar_eq(n, "~") || scalar_eq(n, "null") || scalar_eq(n, "Null") ||
            scalar_eq(n, "NULL"));
}

/* 1 for a plain true, 0 for a plain false, -1 otherwise (YAML 1.2 core schema spellings). */
static int bool_of(const struct node *n)
{
    if (n->type != N_SCALAR || !n->plain)
        return -1;
    if (scalar_eq(n, "true") || scalar_eq(n, "True") || scalar_eq(n, "TRUE"))
        return 1;
    if (scalar_eq(n, "false") || scalar_eq(n, "False") || scalar_eq(n, "FALSE"))
        return 0;
    return -1;
}

/* What a node is, for "found ...". */
static void found_of(const struct node *n, char *buf, size_t cap)
{
    if (n->type == N_MAP)
        snprintf(buf, cap, "a mapping");
    else if (n->type == N_SEQ)
        snprintf(buf, cap, "a list");
    else if (is_null(n))
        snprintf(buf, cap, "nothing");
    else
        diag_quote(n->s, n->len, buf, cap);
}

static void join(char *out, size_t cap, const char *path, const char *key)
{
    if (path && *path)
        snprintf(out, cap, "%s.%s", path, key);
    else
        snprintf(out, cap, "%s", key);
}

/* "path: " or "" for the top level. */
#define PFX(path) ((path) && *(path) ? (path) : ""), ((path) && *(path) ? ": " : "")

static void wrong(struct ld *L, const struct node *n, int line, const char *path,
                  const char *expected)
{
    char f[96];
    found_of(n, f, sizeof(f));
    diag_add(L->d, line, "%s%sfound %s; expected %s", PFX(path), f, expected);
}

/* Check that m is a mapping (a null counts as an empty one) whose keys are unique and among
 * allowed. Returns false when m is not a mapping. */
static bool map_check(struct ld *L, const struct node *m, int line, const char *path,
                      const char *const *allowed, const char *expected)
{
    if (is_null(m))
        return true;
    if (m->type != N_MAP) {
        wrong(L, m, line, path, expected);
        return false;
    }
    for (size_t i = 0; i + 1 < m->n; i += 2) {
        const struct node *k = &m->kids[i];
        char q[96];
        if (k->type != N_SCALAR) {
            wrong(L, k, k->line, path, "a key name");
            continue;
        }
        bool dup = false;
        for (size_t j = 0; j < i && !dup; j += 2) {
            const struct node *o = &m->kids[j];
            if (o->type == N_SCALAR && o->len == k->len && memcmp(o->s, k->s, k->len) == 0) {
                diag_quote(k->s, k->len, q, sizeof(q));
                diag_add(L->d, k->line,
                         "%s%sduplicate key %s (first at line %d); expected each "
                         "key once",
                         PFX(path), q, o->line);
                dup = true;
            }
        }
        if (dup || !allowed)
            continue;
        bool known = false;
        for (size_t a = 0; allowed[a] && !known; a++)
            known = scalar_eq(k, allowed[a]);
        if (!known) {
            char list[512];
            size_t o = 0;
            list[0] = 0;
            for (size_t a = 0; allowed[a]; a++) {
                int r = snprintf(list + o, sizeof(list) - o, "%s%s", a ? ", " : "", allowed[a]);
                if (r < 0 || (size_t)r >= sizeof(list) - o)
                    break;
                o += (size_t)r;
            }
            diag_quote(k->s, k->len, q, sizeof(q));
            diag_add(L->d, k->line, "%s%sunknown key %s; expected one of: %s", PFX(path), q, list);
        }
    }
    return true;
}

/* The value of key in mapping m (the first one), with the key's line; NULL when absent. */
static const struct node *get(const struct node *m, const char *key, int *line)
{
    if (m->type != N_MAP)
        return NULL;
    for (size_t i = 0; i + 1 < m->n; i += 2) {
        if (scalar_eq(&m->kids[i], key)) {
            *line = m->kids[i].line;
            return &m->kids[i + 1];
        }
    }
    return NULL;
}

/* A string value (any non-null scalar without NUL bytes): a copy in *out. */
static bool rd_str(struct ld *L, const struct node *n, int line, const char *path,
                   const char *expected, char **out)
{
    if (n->type != N_SCALAR || is_null(n) || memchr(n->s, 0, n->len)) {
        wrong(L, n, line, path, expected);
        return false;
    }
    *out = strdup(n->s);
    if (!*out)
        L->d->oom = true;
    return *out != NULL;
}

/* A number, duration or size within [min, max]. */
static bool rd_num(struct ld *L, const struct node *n, int line, const char *path, enum unit u,
                   uint64_t min, uint64_t max, uint64_t *out)
{
    char expected[128], lo[32], hi[32], q[96];
    uint64_t v = 0;
    bool ok = n->type == N_SCALAR && !is_null(n) && !memchr(n->s, 0, n->len);
    struct polis_str s = {n->s, n->len};

    if (ok && u == UNIT_MS) {
        ok = polis_parse_duration(s, &v) == 0;
        diag_ms(min, lo, sizeof(lo));
        diag_ms(max, hi, sizeof(hi));
        snprintf(expected, sizeof(expected),
                 "a duration like 500ms, 5s, 2m or 1h (a bare number is ms) in %s..%s", lo, hi);
    } else if (ok && u == UNIT_BYTES) {
        ok = polis_parse_size(s, &v) == 0;
        diag_size(min, lo, sizeof(lo));
        diag_size(max, hi, sizeof(hi));
        snprintf(expected, sizeof(expected), "a size like 512, 64KiB, 1MiB or 10MB in %s..%s", lo,
                 hi);
    } else {
        snprintf(expected, sizeof(expected), "an integer in %llu..%llu", (unsigned long long)min,
                 (unsigned long long)max);
        if (ok) {
            ok = n->len > 0 && n->len <= 20 && strspn(n->s, "0123456789") == n->len;
            if (ok) {
                errno = 0;
                v = strtoull(n->s, NULL, 10);
                if (errno == ERANGE)
                    v = UINT64_MAX;
            }
        }
    }
    if (!ok) {
        wrong(L, n, line, path, expected);
        return false;
    }
    diag_quote(n->s, n->len, q, sizeof(q));
    if (!cfg_range(L->d, line, path, q, v, min, max, u))
        return false;
    *out = v;
    return true;
}

/* Read an optional number field of mapping m into dst (any integer type that holds max). */
#define NUM_FIELD(L, m, base, key, unit, min, max, dst)                                            \
    do {                                                                                           \
        int kl_ = 0;                                                                               \
        uint64_t v_ = 0;                                                                           \
        const struct node *n_ = get((m), (key), &kl_);                                             \
        if (n_) {                                                                                  \
            char p_[160];                                                                          \
            join(p_, sizeof(p_), (base), (key));                                                   \
            bool ok_ = rd_num((L), n_, kl_, p_, (unit), (min), (max), &v_);                        \
            if (ok_)                                                                               \
                (dst) = v_;                                                                        \
            diag_where((L)->d, &(dst), kl_, !ok_);                                                 \
        }                                                                                          \
    } while (0)

/* Read an optional string field of mapping m into *dst. */
static void str_field(struct ld *L, const struct node *m, const char *base, const char *key,
                      const char *expected, char **dst)
{
    int kl = 0;
    const struct node *n = get(m, key, &kl);
    char p[160];
    if (!n)
        return;
    join(p, sizeof(p), base, key);
    bool ok = rd_str(L, n, kl, p, expected, dst);
    diag_where(L->d, dst, kl, !ok);
}

static bool rd_addr(struct ld *L, const struct node *n, int line, const char *path,
                    struct polis_addr *out)
{
    const char *expected = "an address like 0.0.0.0:8080, [::1]:8080, :8080 or localhost:8080";
    if (n->type != N_SCALAR || is_null(n) || memchr(n->s, 0, n->len) ||
        polis__addr_parse(n->s, out) < 0) {
        wrong(L, n, line, path, expected);
        return false;
    }
    return true;
}

static bool is_off(const struct node *n)
{
    return scalar_eq(n, "off") || bool_of(n) == 0;
}

/* ---- The schema -------------------------------------------------------------------------- */

/* Read an optional boolean field of mapping m into *dst. Returns whether the key is present. */
static bool bool_field(struct ld *L, const struct node *m, const char *base, const char *key,
                       bool *dst)
{
    int kl = 0;
    const struct node *n = get(m, key, &kl);
    char p[160];
    if (!n)
        return false;
    join(p, sizeof(p), base, key);
    int b = bool_of(n);
    if (b < 0)
        wrong(L, n, kl, p, "true or false");
    else
        *dst = b;
    diag_where(L->d, dst, kl, b < 0);
    return true;
}

/* A percentage: digits with an optional fraction ("10", "0.5"), from 0 to 100. */
static bool rd_pct(struct ld *L, const struct node *n, int line, const char *path, double *out)
{
    bool ok = n->type == N_SCALAR && !is_null(n) && n->len > 0 && n->len <= 24 &&
              !memchr(n->s, 0, n->len);
    char q[96];
    if (ok) {
        size_t i = strspn(n->s, "0123456789");
        ok = i > 0;
        if (ok && n->s[i] == '.') {
            size_t f = strspn(n->s + i + 1, "0123456789");
            ok = f > 0;
            i += 1 + f;
        }
        ok = ok && i == n->len;
    }
    if (!ok) {
        wrong(L, n, line, path, "a percentage from 0 to 100, like 10 or 0.5");
        return false;
    }
    double v = strtod(n->s, NULL);
    if (!(v >= 0 && v <= 100)) {
        diag_quote(n->s, n->len, q, sizeof(q));
        diag_add(L->d, line, "%s: found %s, out of range; expected 0..100", path, q);
        return false;
    }
    *out = v;
    return true;
}

/* Read an optional percentage field of mapping m into the double dst. */
#define PCT_FIELD(L, m, base, key, dst)                                                            \
    do {                                                                                           \
        int kl_ = 0;                                                                               \
        const struct node *n_ = get((m), (key), &kl_);                                             \
        if (n_) {                                                                                  \
            char p_[160];                                                                          \
            join(p_, sizeof(p_), (base), (key));                                                   \
            bool ok_ = rd_pct((L), n_, kl_, p_, &(dst));                                           \
            diag_where((L)->d, &(dst), kl_, !ok_);                                                 \
        }                                                                                          \
    } while (0)

/* A non-empty list of strings into *out and *num, each item's line recorded by its address.
 * Returns false (and reports it) when n is not such a list. */
static bool load_strv(struct ld *L, const struct node *n, int line, const char *path,
                      const char *expected, const char *item, char ***out, size_t *num)
{
    if (n->type != N_SEQ || n->n == 0) {
        wrong(L, n, line, path, expected);
        return false;
    }
    *out = calloc(n->n, sizeof(**out));
    if (!*out) {
        L->d->oom = true;
        return false;
    }
    *num = n->n;
    for (size_t i = 0; i < n->n; i++) {
        char ip[192];
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i);
        bool ok = rd_str(L, &n->kids[i], n->kids[i].line, ip, item, &(*out)[i]);
        diag_where(L->d, &(*out)[i], n->kids[i].line, !ok);
    }
    return true;
}

/* A mapping of metadata keys to scalar values (numbers kept as their text) into *out and *num.
 * Each pair's line is recorded by its address; a malformed pair is reported. Returns false
 * when n is not a mapping (reported). */
static bool load_kv_map(struct ld *L, const struct node *n, int line, const char *path,
                        const char *expected, struct polis_header_kv **out, size_t *num)
{
    if (!map_check(L, n, line, path, NULL, expected))
        return false;
    if (n->n == 0)
        return true;
    *out = calloc(n->n / 2, sizeof(**out));
    if (!*out) {
        L->d->oom = true;
        return true;
    }
    *num = n->n / 2;
    for (size_t i = 0; i < *num; i++) {
        const struct node *k = &n->kids[2 * i], *v = &n->kids[2 * i + 1];
        struct polis_header_kv *kv = &(*out)[i];
        char vp[256];
        bool ok = rd_str(L, k, k->line, path, "a metadata key", &kv->name);
        if (ok) {
            join(vp, sizeof(vp), path, kv->name);
            ok = rd_str(L, v, k->line, vp, "a metadata value (text or a number)", &kv->value);
        }
        diag_where(L->d, kv, k->line, !ok);
    }
    return true;
}

/* A subset: a non-empty mapping of metadata keys to values, like {version: v2}. */
static void load_subset(struct ld *L, const struct node *n, int line, const char *path,
                        struct polis_subset_cfg *s)
{
    const char *expected = "a mapping of metadata keys to values, like {version: v2}";
    if (n->type == N_MAP && n->n == 0) {
        diag_add(L->d, line, "%s: empty; expected %s", path, expected);
        diag_where(L->d, s, line, true);
        return;
    }
    if (n->type != N_MAP) {
        wrong(L, n, line, path, expected);
        diag_where(L->d, s, line, true);
        return;
    }
    load_kv_map(L, n, line, path, expected, &s->match, &s->num_match);
    diag_where(L->d, s, line, false);
}

/* A retry policy over r (which holds the defaults already). */
static void load_retry(struct ld *L, const struct node *m, int line, const char *path,
                       struct polis_retry_cfg *r)
{
    static const char *const keys[] = {"attempts",
                                       "on",
                                       "backoff_base",
                                       "backoff_max",
                                       "per_try_timeout",
                                       "deadline",
                                       "budget_percent",
                                       "budget_min",
                                       NULL};
    char p[160];
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, path, keys, "a mapping of retry settings (attempts, on, ...)")) {
        diag_where(L->d, &r->attempts, line, true);
        return;
    }
    if (!get(m, "attempts", &kl))
        diag_where(L->d, &r->attempts, line, false);
    NUM_FIELD(L, m, path, "attempts", UNIT_NUM, 1, MAX_ATTEMPTS, r->attempts);
    if ((n = get(m, "on", &kl))) {
        const char *item = "connect_failure, reset, timeout or a status from 500 to 599";
        bool ok = n->type == N_SEQ;
        join(p, sizeof(p), path, "on");
        if (!ok) {
            wrong(L, n, kl, p, "a list like [connect_failure, reset, timeout, 503]");
        } else {
            uint32_t on = 0;
            uint16_t *st = n->n ? calloc(n->n, sizeof(*st)) : NULL;
            size_t ns = 0;
            if (n->n && !st) {
                L->d->oom = true;
                return;
            }
            for (size_t i = 0; i < n->n; i++) {
                const struct node *k = &n->kids[i];
                char ip[192], q[96];
                snprintf(ip, sizeof(ip), "%s[%zu]", p, i);
                if (scalar_eq(k, "connect_failure")) {
                    on |= POLIS_RETRY_CONNECT;
                } else if (scalar_eq(k, "reset")) {
                    on |= POLIS_RETRY_RESET;
                } else if (scalar_eq(k, "timeout")) {
                    on |= POLIS_RETRY_TIMEOUT;
                } else if (k->type == N_SCALAR && k->len > 0 && k->len <= 3 &&
                           strspn(k->s, "0123456789") == k->len) {
                    unsigned long v = strtoul(k->s, NULL, 10);
                    if (v < 500 || v > 599) {
                        diag_quote(k->s, k->len, q, sizeof(q));
                        diag_add(L->d, k->line, "%s: found %s, out of range; expected 500..599", ip,
                                 q);
                        ok = false;
                        continue;
                    }
                    size_t j = 0;
                    while (j < ns && st[j] != v)
                        j++;
                    if (j == ns)
                        st[ns++] = (uint16_t)v;
                    on |= POLIS_RETRY_STATUS;
                } else {
                    wrong(L, k, k->line, ip, item);
                    ok = false;
                }
            }
            r->on = on;
            free(r->statuses);
            r->statuses = ns ? st : NULL;
            r->num_statuses = ns;
            if (!ns)
                free(st);
        }
        diag_where(L->d, &r->on, kl, !ok);
    }
    NUM_FIELD(L, m, path, "backoff_base", UNIT_MS, 0, MAX_MS, r->backoff_base_ms);
    NUM_FIELD(L, m, path, "backoff_max", UNIT_MS, 0, MAX_MS, r->backoff_max_ms);
    NUM_FIELD(L, m, path, "per_try_timeout", UNIT_MS, 0, MAX_MS, r->per_try_timeout_ms);
    NUM_FIELD(L, m, path, "deadline", UNIT_MS, 0, MAX_MS, r->deadline_ms);
    NUM_FIELD(L, m, path, "budget_percent", UNIT_NUM, 0, 100, r->budget_percent);
    NUM_FIELD(L, m, path, "budget_min", UNIT_NUM, 0, MAX_COUNT, r->budget_min);
}

/* A circuit breaker section: its presence enables it (unless enabled: false). */
static void load_breaker(struct ld *L, const struct node *m, int line, const char *path,
                         struct polis_breaker_cfg *b)
{
    static const char *const keys[] = {"enabled",
                                       "window",
                                       "window_size",
                                       "minimum_calls",
                                       "failure_rate",
                                       "slow_call_rate",
                                       "slow_call_duration",
                                       "consecutive_failures",
                                       "open_duration",
                                       "half_open_calls",
                                       NULL};
    char p[160];
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, path, keys, "a mapping of circuit breaker settings")) {
        diag_where(L->d, &b->enabled, line, true);
        return;
    }
    b->enabled = true;
    if (!bool_field(L, m, path, "enabled", &b->enabled))
        diag_where(L->d, &b->enabled, line, false);
    bool window_ok = true;
    if ((n = get(m, "window", &kl))) {
        join(p, sizeof(p), path, "window");
        if (scalar_eq(n, "count")) {
            b->window = POLIS_WINDOW_COUNT;
        } else if (scalar_eq(n, "time")) {
            b->window = POLIS_WINDOW_TIME;
            b->window_size = 10;
        } else {
            wrong(L, n, kl, p, "count or time");
            window_ok = false;
        }
        diag_where(L->d, &b->window, kl, !window_ok);
    }
    NUM_FIELD(L, m, path, "window_size", UNIT_NUM, 1,
              b->window == POLIS_WINDOW_TIME ? MAX_WINDOW_SECONDS : MAX_WINDOW_CALLS,
              b->window_size);
    NUM_FIELD(L, m, path, "minimum_calls", UNIT_NUM, 1, MAX_COUNT, b->min_calls);
    NUM_FIELD(L, m, path, "failure_rate", UNIT_NUM, 0, 100, b->failure_rate);
    NUM_FIELD(L, m, path, "slow_call_rate", UNIT_NUM, 0, 100, b->slow_call_rate);
    NUM_FIELD(L, m, path, "slow_call_duration", UNIT_MS, 1, MAX_MS, b->slow_call_ms);
    NUM_FIELD(L, m, path, "consecutive_failures", UNIT_NUM, 0, MAX_COUNT, b->consecutive_failures);
    NUM_FIELD(L, m, path, "open_duration", UNIT_MS, 1, MAX_MS, b->open_ms);
    NUM_FIELD(L, m, path, "half_open_calls", UNIT_NUM, 1, MAX_HALF_OPEN, b->half_open_calls);
}

/* expected_statuses: numbers and "lo-hi" ranges within 100..599. */
static void load_statuses(struct ld *L, const struct node *n, int line, const char *path,
                          struct polis_health_check_cfg *h)
{
    const char *item = "a status like 200 or a range like \"200-299\" within 100..599";
    bool ok = true;

    if (n->type != N_SEQ || n->n == 0) {
        wrong(L, n, line, path, "a non-empty list of statuses and ranges, like [200, \"300-399\"]");
        diag_where(L->d, &h->statuses, line, true);
        return;
    }
    h->statuses = calloc(n->n, sizeof(*h->statuses));
    if (!h->statuses) {
        L->d->oom = true;
        return;
    }
    h->num_statuses = n->n;
    for (size_t i = 0; i < n->n; i++) {
        const struct node *k = &n->kids[i];
        char ip[192];
        unsigned long lo = 0, hi = 0;
        bool good = k->type == N_SCALAR && k->len > 0 && k->len <= 7;
        if (good) {
            size_t a = strspn(k->s, "0123456789");
            good = a == 3;
            if (good && a == k->len) {
                lo = hi = strtoul(k->s, NULL, 10);
            } else if (good) {
                good = k->s[3] == '-' && k->len == 7 && strspn(k->s + 4, "0123456789") == 3;
                if (good) {
                    lo = strtoul(k->s, NULL, 10);
                    hi = strtoul(k->s + 4, NULL, 10);
                }
            }
            good = good && lo >= 100 && hi <= 599 && lo <= hi;
        }
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i);
        if (!good) {
            wrong(L, k, k->line, ip, item);
            ok = false;
            continue;
        }
        h->statuses[i][0] = (uint16_t)lo;
        h->statuses[i][1] = (uint16_t)hi;
        diag_where(L->d, &h->statuses[i], k->line, false);
    }
    diag_where(L->d, &h->statuses, line, !ok);
}

/* health_check: its presence enables active checks (unless enabled: false). */
static void load_health(struct ld *L, const struct node *m, int line, const char *path,
                        struct polis_health_check_cfg *h)
{
    static const char *const keys[] = {"enabled",
                                       "path",
                                       "host",
                                       "interval",
                                       "timeout",
                                       "jitter",
                                       "healthy_threshold",
                                       "unhealthy_threshold",
                                       "expected_statuses",
                                       NULL};
    char p[160];
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, path, keys, "a mapping of health check settings")) {
        diag_where(L->d, &h->enabled, line, true);
        return;
    }
    h->enabled = true;
    if (!bool_field(L, m, path, "enabled", &h->enabled))
        diag_where(L->d, &h->enabled, line, false);
    str_field(L, m, path, "path", "a path like /health", &h->path);
    str_field(L, m, path, "host", "a Host header value like orders.internal", &h->host);
    NUM_FIELD(L, m, path, "interval", UNIT_MS, 1, MAX_MS, h->interval_ms);
    NUM_FIELD(L, m, path, "timeout", UNIT_MS, 1, MAX_MS, h->timeout_ms);
    h->jitter_ms = h->interval_ms / 10;
    NUM_FIELD(L, m, path, "jitter", UNIT_MS, 0, MAX_MS, h->jitter_ms);
    NUM_FIELD(L, m, path, "healthy_threshold", UNIT_NUM, 1, MAX_THRESHOLD, h->healthy_threshold);
    NUM_FIELD(L, m, path, "unhealthy_threshold", UNIT_NUM, 1, MAX_THRESHOLD,
              h->unhealthy_threshold);
    if ((n = get(m, "expected_statuses", &kl))) {
        join(p, sizeof(p), path, "expected_statuses");
        load_statuses(L, n, kl, p, h);
    }
}

/* outlier_detection: its presence enables passive ejection (unless enabled: false). */
static void load_outlier(struct ld *L, const struct node *m, int line, const char *path,
                         struct polis_outlier_cfg *o)
{
    static const char *const keys[] = {"enabled",
                                       "consecutive_5xx",
                                       "consecutive_gateway_errors",
                                       "consecutive_connect_failures",
                                       "base_ejection_time",
                                       "max_ejection_time",
                                       "max_ejection_percent",
                                       NULL};

    if (!map_check(L, m, line, path, keys, "a mapping of outlier detection settings")) {
        diag_where(L->d, &o->enabled, line, true);
        return;
    }
    o->enabled = true;
    if (!bool_field(L, m, path, "enabled", &o->enabled))
        diag_where(L->d, &o->enabled, line, false);
    NUM_FIELD(L, m, path, "consecutive_5xx", UNIT_NUM, 0, MAX_COUNT, o->consecutive_5xx);
    NUM_FIELD(L, m, path, "consecutive_gateway_errors", UNIT_NUM, 0, MAX_COUNT,
              o->consecutive_gateway_errors);
    NUM_FIELD(L, m, path, "consecutive_connect_failures", UNIT_NUM, 0, MAX_COUNT,
              o->consecutive_connect_failures);
    NUM_FIELD(L, m, path, "base_ejection_time", UNIT_MS, 1, MAX_MS, o->base_ejection_ms);
    NUM_FIELD(L, m, path, "max_ejection_time", UNIT_MS, 1, MAX_MS, o->max_ejection_ms);
    NUM_FIELD(L, m, path, "max_ejection_percent", UNIT_NUM, 0, 100, o->max_ejection_percent);
}

/* discovery: type first, then only the keys of that type. */
static void load_discovery(struct ld *L, const struct node *m, int line, const char *path,
                           struct polis_discovery_cfg *ds)
{
    static const char *const all[] = {"type",    "service", "name",      "record", "port", "server",
                                      "min_ttl", "max_ttl", "endpoints", "prefix", NULL};
    static const char *const by_kind[4][8] = {
        {"type", NULL},
        {"type", "service", NULL},
        {"type", "name", "record", "port", "server", "min_ttl", "max_ttl", NULL},
        {"type", "endpoints", "prefix", NULL},
    };
    const char *types = "static, registry, dns or etcd";
    char p[160];
    int kl = 0;
    const struct node *n;

    if (m->type != N_MAP) {
        wrong(L, m, line, path, "a mapping with type (static, registry, dns or etcd)");
        diag_where(L->d, &ds->kind, line, true);
        return;
    }
    n = get(m, "type", &kl);
    join(p, sizeof(p), path, "type");
    size_t k = 0;
    if (!n) {
        diag_add(L->d, line, "%s: no type; expected type: %s", path, types);
    } else {
        while (k < 4 && !scalar_eq(n, disc_names[k]))
            k++;
        if (k == 4)
            wrong(L, n, kl, p, "one of: static, registry, dns, etcd");
    }
    if (!n || k == 4) {
        map_check(L, m, line, path, all, NULL);
        diag_where(L->d, &ds->kind, n ? kl : line, true);
        return;
    }
    ds->kind = (enum polis_discovery_kind)k;
    diag_where(L->d, &ds->kind, kl, false);
    map_check(L, m, line, path, by_kind[k], NULL);
    if (ds->kind == POLIS_DISC_REGISTRY)
        str_field(L, m, path, "service", "a service name", &ds->service);
    if (ds->kind == POLIS_DISC_ETCD) {
        if ((n = get(m, "endpoints", &kl))) {
            join(p, sizeof(p), path, "endpoints");
            bool ok = load_strv(L, n, kl, p, "a list of http:// URLs like [http://127.0.0.1:2379]",
                                "an http:// URL like http://127.0.0.1:2379", &ds->etcd_endpoints,
                                &ds->num_etcd_endpoints);
            diag_where(L->d, &ds->etcd_endpoints, kl, !ok);
        }
        str_field(L, m, path, "prefix", "a key prefix like /polis/services/orders/",
                  &ds->etcd_prefix);
    }
    if (ds->kind != POLIS_DISC_DNS)
        return;
    str_field(L, m, path, "name", "a DNS name like orders.svc.local", &ds->dns_name);
    if ((n = get(m, "record", &kl))) {
        bool ok = true;
        join(p, sizeof(p), path, "record");
        if (scalar_eq(n, "a"))
            ds->dns_type = POLIS_DNS_A;
        else if (scalar_eq(n, "srv"))
            ds->dns_type = POLIS_DNS_SRV;
        else
            ok = false;
        if (!ok)
            wrong(L, n, kl, p, "a (A and AAAA records) or srv");
        diag_where(L->d, &ds->dns_type, kl, !ok);
    }
    NUM_FIELD(L, m, path, "port", UNIT_NUM, 1, 65535, ds->dns_port);
    if ((n = get(m, "server", &kl))) {
        struct polis_addr a;
        bool ok = n->type == N_SCALAR && !is_null(n) && !memchr(n->s, 0, n->len) &&
                  numeric_addr(n->s, &a);
        join(p, sizeof(p), path, "server");
        if (ok) {
            ds->dns_server = strdup(a.text);
            if (!ds->dns_server)
                L->d->oom = true;
        } else {
            wrong(L, n, kl, p, "a numeric address and port like 127.0.0.1:53 or [::1]:53");
        }
        diag_where(L->d, &ds->dns_server, kl, !ok);
    }
    NUM_FIELD(L, m, path, "min_ttl", UNIT_MS, 1, MAX_MS, ds->dns_min_ttl_ms);
    NUM_FIELD(L, m, path, "max_ttl", UNIT_MS, 1, MAX_MS, ds->dns_max_ttl_ms);
}

static void load_registry(struct ld *L, const struct node *m, int line)
{
    static const char *const keys[] = {"enabled", "default_ttl", "max_ttl", "max_wait", NULL};
    struct polis_registry_cfg *g = &L->cfg->registry;

    if (!map_check(L, m, line, "registry", keys,
                   "a mapping with enabled, default_ttl, max_ttl and max_wait")) {
        diag_where(L->d, &g->enabled, line, true);
        return;
    }
    if (!bool_field(L, m, "registry", "enabled", &g->enabled))
        diag_where(L->d, &g->enabled, line, false);
    NUM_FIELD(L, m, "registry", "default_ttl", UNIT_MS, 1000, MAX_MS, g->default_ttl_ms);
    NUM_FIELD(L, m, "registry", "max_ttl", UNIT_MS, 1000, MAX_MS, g->max_ttl_ms);
    NUM_FIELD(L, m, "registry", "max_wait", UNIT_MS, 0, MAX_MS, g->max_wait_ms);
}

static void load_limits(struct ld *L, const struct node *m, int line)
{
    static const char *const keys[] = {
        "max_request_line", "max_header_bytes",       "max_headers", "max_body",
        "max_connections",  "max_connections_per_ip", NULL};
    struct polis_limits_cfg *l = &L->cfg->limits;
    if (!map_check(L, m, line, "limits", keys, "a mapping of limits"))
        return;
    NUM_FIELD(L, m, "limits", "max_request_line", UNIT_BYTES, 256, 1u << 20, l->max_request_line);
    NUM_FIELD(L, m, "limits", "max_header_bytes", UNIT_BYTES, 1024, 1u << 20, l->max_header_bytes);
    NUM_FIELD(L, m, "limits", "max_headers", UNIT_NUM, 1, 1000, l->max_headers);
    NUM_FIELD(L, m, "limits", "max_body", UNIT_BYTES, 1, MAX_BODY, l->max_body);
    NUM_FIELD(L, m, "limits", "max_connections", UNIT_NUM, 1, MAX_CONNECTIONS, l->max_connections);
    NUM_FIELD(L, m, "limits", "max_connections_per_ip", UNIT_NUM, 0, MAX_CONNECTIONS,
              l->max_connections_per_ip);
}

static void load_timeouts(struct ld *L, const struct node *m, int line)
{
    static const char *const keys[] = {"header_read", "body_read", "idle",
                                       "request",     "drain",     NULL};
    struct polis_timeouts_cfg *t = &L->cfg->timeouts;
    if (!map_check(L, m, line, "timeouts", keys, "a mapping of timeouts"))
        return;
    NUM_FIELD(L, m, "timeouts", "header_read", UNIT_MS, 1, MAX_MS, t->header_read_ms);
    NUM_FIELD(L, m, "timeouts", "body_read", UNIT_MS, 1, MAX_MS, t->body_read_ms);
    NUM_FIELD(L, m, "timeouts", "idle", UNIT_MS, 1, MAX_MS, t->idle_ms);
    NUM_FIELD(L, m, "timeouts", "request", UNIT_MS, 0, MAX_MS, t->request_ms);
    NUM_FIELD(L, m, "timeouts", "drain", UNIT_MS, 0, MAX_MS, t->drain_ms);
}

const char *const polis__alog_field_names[POLIS_ALOG__COUNT] = {"ts",
                                                                "request_id",
                                                                "trace_id",
                                                                "client",
                                                                "method",
                                                                "path",
                                                                "host",
                                                                "status",
                                                                "bytes_received",
                                                                "bytes_sent",
                                                                "duration_ms",
                                                                "upstream",
                                                                "upstream_connect_ms",
                                                                "upstream_ms",
                                                                "attempts",
                                                                "route",
                                                                "cluster"};

static void load_alog_fields(struct ld *L, const struct node *n, int line)
{
    char names[400];
    size_t o = 0;
    for (int f = 0; f < POLIS_ALOG__COUNT && o < sizeof(names); f++)
        o += (size_t)snprintf(names + o, sizeof(names) - o, "%s%s", f ? ", " : "",
                              polis__alog_field_names[f]);
    if (n->type != N_SEQ || n->n == 0) {
        wrong(L, n, line, "access_log_fields", "a list of field names");
        return;
    }
    uint32_t mask = 0;
    for (size_t i = 0; i < n->n; i++) {
        const struct node *k = &n->kids[i];
        int f = 0;
        while (f < POLIS_ALOG__COUNT &&
               !(k->type == N_SCALAR && scalar_eq(k, polis__alog_field_names[f])))
            f++;
        if (f == POLIS_ALOG__COUNT) {
            char path[48], expected[460];
            snprintf(path, sizeof(path), "access_log_fields[%zu]", i);
            snprintf(expected, sizeof(expected), "one of: %s", names);
            wrong(L, k, k->line, path, expected);
            continue;
        }
        mask |= 1u << f;
    }
    L->cfg->access_log_fields = mask;
}

static void load_tracing(struct ld *L, const struct node *m, int line)
{
    static const char *const keys[] = {"endpoint", "service_name", "sample_ratio", NULL};
    struct polis_tracing_cfg *t = &L->cfg->tracing;
    int kl = 0;
    const struct node *n;
    if (!map_check(L, m, line, "tracing", keys,
                   "a mapping with endpoint, service_name and sample_ratio"))
        return;
    if ((n = get(m, "endpoint", &kl)) && !is_off(n)) {
        bool ok = rd_str(L, n, kl, "tracing.endpoint",
                         "an OTLP/HTTP URL like http://127.0.0.1:4318/v1/traces", &t->endpoint);
        if (ok && strncmp(t->endpoint, "http://", 7) != 0) {
            wrong(L, n, kl, "tracing.endpoint",
                  "an http:// URL like http://127.0.0.1:4318/v1/traces");
        }
    }
    if ((n = get(m, "service_name", &kl))) {
        free(t->service_name);
        t->service_name = NULL;
        rd_str(L, n, kl, "tracing.service_name", "a name like polis-gateway", &t->service_name);
    }
    if ((n = get(m, "sample_ratio", &kl))) {
        char *end = NULL;
        double v = n->type == N_SCALAR && !is_null(n) ? strtod(n->s, &end) : -1;
        if (end == NULL || end == n->s || *end != '\0' || !(v >= 0 && v <= 1))
            wrong(L, n, kl, "tracing.sample_ratio", "a number from 0 to 1, like 0.1");
        else
            t->sample_ratio = v;
    }
}

/* ---- Loading the edge security settings -------------------------------------------------- */

/* Read an optional list-of-strings field of mapping m (empty allowed when allow_empty); the
 * list's line is recorded by the address of *out. */
static void strv_field(struct ld *L, const struct node *m, const char *base, const char *key,
                       bool allow_empty, const char *expected, const char *item, char ***out,
                       size_t *num)
{
    int kl = 0;
    const struct node *n = get(m, key, &kl);
    char p[160];
    if (!n)
        return;
    join(p, sizeof(p), base, key);
    bool ok = allow_empty && n->type == N_SEQ && n->n == 0
                  ? true
                  : load_strv(L, n, kl, p, expected, item, out, num);
    diag_where(L->d, out, kl, !ok);
}

/* Names referring to entries of another list: a list (empty allowed when allow_empty), or one
 * name when allow_one. Each ref's line is recorded by its address; returns false (reported)
 * when n is neither. */
static bool load_refs(struct ld *L, const struct node *n, int line, const char *path,
                      bool allow_empty, bool allow_one, const char *expected, const char *item,
                      struct polis_name_ref **out, size_t *num)
{
    if (allow_one && n->type == N_SCALAR && !is_null(n)) {
        *out = calloc(1, sizeof(**out));
        if (!*out) {
            L->d->oom = true;
            return true;
        }
        *num = 1;
        bool ok = rd_str(L, n, line, path, item, &(*out)[0].name);
        diag_where(L->d, &(*out)[0], line, !ok);
        return true;
    }
    if (n->type == N_SEQ && n->n == 0 && allow_empty)
        return true;
    if (n->type != N_SEQ || n->n == 0) {
        wrong(L, n, line, path, expected);
        return false;
    }
    *out = calloc(n->n, sizeof(**out));
    if (!*out) {
        L->d->oom = true;
        return true;
    }
    *num = n->n;
    for (size_t i = 0; i < n->n; i++) {
        char ip[192];
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i);
        bool ok = rd_str(L, &n->kids[i], n->kids[i].line, ip, item, &(*out)[i].name);
        diag_where(L->d, &(*out)[i], n->kids[i].line, !ok);
    }
    return true;
}

/* A list of networks (empty allowed) into *out and *num. Returns false (reported) when n is not
 * a list; each malformed network is reported with why. */
static bool load_cidrs(struct ld *L, const struct node *n, int line, const char *path,
                       struct polis_cidr **out, size_t *num)
{
    const char *expected = "an IPv4 or IPv6 network like 10.0.0.0/8 or \"fd00::/8\", or one "
                           "address";
    if (n->type == N_SEQ && n->n == 0)
        return true;
    if (n->type != N_SEQ) {
        wrong(L, n, line, path, "a list of networks like [10.0.0.0/8, \"fd00::/8\"]");
        return false;
    }
    *out = calloc(n->n, sizeof(**out));
    if (!*out) {
        L->d->oom = true;
        return true;
    }
    *num = n->n;
    for (size_t i = 0; i < n->n; i++) {
        const struct node *k = &n->kids[i];
        struct polis_cidr *c = &(*out)[i];
        char ip[192], q[96], net[64];
        enum cidr_result r = CIDR_SYNTAX;
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i);
        if (k->type == N_SCALAR && !is_null(k) && !memchr(k->s, 0, k->len))
            r = cidr_parse(k->s, c);
        switch (r) {
        case CIDR_OK:
            break;
        case CIDR_PREFIX:
            diag_quote(k->s, k->len, q, sizeof(q));
            diag_add(L->d, k->line, "%s: found %s, out of range; expected a prefix length 0..%d",
                     ip, q, c->family == AF_INET ? 32 : 128);
            break;
        case CIDR_HOST_BITS:
            diag_quote(k->s, k->len, q, sizeof(q));
            cidr_network_text(c, net, sizeof(net));
            diag_add(L->d, k->line,
                     "%s: %s has bits set past the prefix length; expected the network %s (or "
                     "one address without a prefix)",
                     ip, q, net);
            break;
        default:
            wrong(L, k, k->line, ip, expected);
            break;
        }
        diag_where(L->d, c, k->line, r != CIDR_OK);
    }
    return true;
}

static void load_access(struct ld *L, const struct node *m, int line, const char *path,
                        struct polis_access_cfg *a)
{
    static const char *const keys[] = {"allow", "deny", NULL};
    char p[160];
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, path, keys, "a mapping with allow and deny (lists of networks)")) {
        diag_where(L->d, a, line, true);
        return;
    }
    diag_where(L->d, a, line, false);
    if ((n = get(m, "allow", &kl))) {
        join(p, sizeof(p), path, "allow");
        load_cidrs(L, n, kl, p, &a->allow, &a->num_allow);
    }
    if ((n = get(m, "deny", &kl))) {
        join(p, sizeof(p), path, "deny");
        load_cidrs(L, n, kl, p, &a->deny, &a->num_deny);
    }
    if (!get(m, "allow", &kl) && !get(m, "deny", &kl))
        diag_add(L->d, line,
                 "%s: neither allow nor deny; expected allow or deny: a list of "
                 "networks like [10.0.0.0/8]",
                 path);
}

static void load_tls_certs(struct ld *L, const struct node *n, int line, struct polis_tls_cfg *t)
{
    static const char *const keys[] = {"cert", "key", NULL};
    const char *expected = "a non-empty list of {cert, key} (PEM files)";

    if (n->type != N_SEQ || n->n == 0) {
        wrong(L, n, line, "tls.certificates", expected);
        diag_where(L->d, &t->certs, line, true);
        return;
    }
    t->certs = calloc(n->n, sizeof(*t->certs));
    if (!t->certs) {
        L->d->oom = true;
        return;
    }
    t->num_certs = n->n;
    diag_where(L->d, &t->certs, line, false);
    for (size_t i = 0; i < n->n; i++) {
        const struct node *it = &n->kids[i];
        struct polis_tls_cert_cfg *c = &t->certs[i];
        char ip[64];
        snprintf(ip, sizeof(ip), "tls.certificates[%zu]", i);
        c->line = it->line;
        if (it->type != N_MAP) {
            wrong(L, it, it->line, ip, "a mapping with cert and key");
            diag_where(L->d, &c->cert, it->line, true);
            diag_where(L->d, &c->key, it->line, true);
            continue;
        }
        map_check(L, it, it->line, ip, keys, NULL);
        str_field(L, it, ip, "cert", "a PEM file path", &c->cert);
        str_field(L, it, ip, "key", "a PEM file path", &c->key);
    }
}

/* tls: its presence turns TLS on for listen. */
static void load_tls(struct ld *L, const struct node *m, int line)
{
    static const char *const keys[] = {"certificates",    "min_version",     "alpn",
                                       "session_tickets", "session_timeout", "client_auth",
                                       "client_ca",       "forward_subject", NULL};
    struct polis_tls_cfg *t = &L->cfg->tls;
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, "tls", keys, "a mapping of TLS settings (certificates, ...)")) {
        diag_where(L->d, &t->enabled, line, true);
        return;
    }
    t->enabled = true;
    diag_where(L->d, &t->enabled, line, false);
    if ((n = get(m, "certificates", &kl)))
        load_tls_certs(L, n, kl, t);
    if ((n = get(m, "min_version", &kl))) {
        bool ok = true;
        if (scalar_eq(n, "1.2"))
            t->min_version = POLIS_CFG_TLS_1_2;
        else if (scalar_eq(n, "1.3"))
            t->min_version = POLIS_CFG_TLS_1_3;
        else
            ok = false;
        if (!ok)
            wrong(L, n, kl, "tls.min_version", "\"1.2\" or \"1.3\"");
        diag_where(L->d, &t->min_version, kl, !ok);
    }
    strv_field(L, m, "tls", "alpn", false, "a list of protocols like [http/1.1]",
               "a protocol name like http/1.1", &t->alpn, &t->num_alpn);
    bool_field(L, m, "tls", "session_tickets", &t->session_tickets);
    NUM_FIELD(L, m, "tls", "session_timeout", UNIT_MS, 1000, MAX_MS, t->session_timeout_ms);
    if ((n = get(m, "client_auth", &kl))) {
        static const char *const modes[] = {"off", "optional", "required"};
        size_t k = 0;
        while (k < 3 && !scalar_eq(n, modes[k]))
            k++;
        if (k < 3)
            t->client_auth = (enum polis_client_auth)k;
        else
            wrong(L, n, kl, "tls.client_auth", "off, optional or required");
        diag_where(L->d, &t->client_auth, kl, k == 3);
    }
    str_field(L, m, "tls", "client_ca", "a PEM file path", &t->client_ca);
    str_field(L, m, "tls", "forward_subject", "a header name like X-Client-Subject",
              &t->forward_subject);
}

/* A cluster's tls: its presence turns TLS on to its instances. */
static void load_upstream_tls(struct ld *L, const struct node *m, int line, const char *path,
                              struct polis_upstream_tls_cfg *t)
{
    static const char *const keys[] = {"ca", "verify", "server_name", "cert", "key", NULL};

    if (!map_check(L, m, line, path, keys,
                   "a mapping of TLS settings (ca, verify, server_name, cert, key)")) {
        diag_where(L->d, &t->enabled, line, true);
        return;
    }
    t->enabled = true;
    diag_where(L->d, &t->enabled, line, false);
    str_field(L, m, path, "ca", "a PEM file path", &t->ca);
    bool_field(L, m, path, "verify", &t->verify);
    str_field(L, m, path, "server_name", "a host name like orders.internal", &t->server_name);
    str_field(L, m, path, "cert", "a PEM file path", &t->cert);
    str_field(L, m, path, "key", "a PEM file path", &t->key);
}

#define ALG_NAMES "HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA"

/* An algorithm name: its enum value, or -1 (reported), "none" refused with its own reason. */
static int rd_alg(struct ld *L, const struct node *n, int line, const char *path)
{
    for (int a = 0; a < POLIS_JWT__COUNT; a++) {
        if (scalar_eq(n, polis__jwt_alg_names[a]))
            return a;
    }
    if (n->type == N_SCALAR && n->len == 4 && strncasecmp(n->s, "none", 4) == 0)
        wrong(L, n, line, path,
              "a signature algorithm (unsigned tokens are never accepted): " ALG_NAMES);
    else
        wrong(L, n, line, path, "one of: " ALG_NAMES);
    return -1;
}

static void load_jwt_key(struct ld *L, const struct node *it, const char *path,
                         struct polis_jwt_key_cfg *k)
{
    static const char *const keys[] = {"file", "secret_file", "kid", "algorithm", NULL};
    int kl = 0;
    const struct node *n;

    k->line = it->line;
    if (it->type != N_MAP) {
        wrong(L, it, it->line, path, "a mapping with file or secret_file, kid and algorithm");
        diag_where(L->d, &k->line, it->line, true);
        return;
    }
    map_check(L, it, it->line, path, keys, NULL);
    str_field(L, it, path, "file", "a PEM file path", &k->file);
    str_field(L, it, path, "secret_file", "a file path", &k->secret_file);
    str_field(L, it, path, "kid", "a key id", &k->kid);
    if ((n = get(it, "algorithm", &kl))) {
        char p[224];
        join(p, sizeof(p), path, "algorithm");
        int a = rd_alg(L, n, kl, p);
        if (a >= 0)
            k->alg = (enum polis_jwt_alg)a;
        diag_where(L->d, &k->alg, kl, a < 0);
    } else {
        diag_add(L->d, it->line,
                 "%s: no algorithm; expected algorithm: the one algorithm this key verifies, "
                 "like RS256",
                 path);
        diag_where(L->d, &k->alg, it->line, true);
    }
}

static void load_issuer(struct ld *L, const struct node *m, size_t idx,
                        struct polis_jwt_issuer_cfg *is)
{
    static const char *const keys[] = {
        "name",      "issuer",      "audiences", "algorithms",   "keys",
        "jwks_file", "jwks_url",    "jwks_ca",   "jwks_refresh", "jwks_min_refresh",
        "leeway",    "require_exp", NULL};
    char path[48], p[160];
    int kl = 0;
    const struct node *n;

    is->line = m->line;
    is->jwks_refresh_ms = 600000;
    is->jwks_min_refresh_ms = 30000;
    is->leeway_ms = 30000;
    is->require_exp = true;
    snprintf(path, sizeof(path), "jwt.issuers[%zu]", idx);
    if (m->type != N_MAP) {
        wrong(L, m, m->line, path, "a mapping with name, issuer, algorithms and keys");
        diag_where(L->d, &is->name, m->line, true);
        diag_where(L->d, &is->issuer, m->line, true);
        diag_where(L->d, &is->algorithms, m->line, true);
        diag_where(L->d, &is->keys, m->line, true);
        return;
    }
    map_check(L, m, m->line, path, keys, NULL);
    str_field(L, m, path, "name", "an issuer name", &is->name);
    str_field(L, m, path, "issuer", "the iss claim, like https://issuer.example", &is->issuer);
    strv_field(L, m, path, "audiences", false, "a list of audiences like [api]", "an audience",
               &is->audiences, &is->num_audiences);
    if ((n = get(m, "algorithms", &kl))) {
        bool ok = n->type == N_SEQ && n->n > 0, bad = false;
        join(p, sizeof(p), path, "algorithms");
        if (!ok)
            wrong(L, n, kl, p, "a non-empty list of algorithms like [RS256, ES256]");
        for (size_t i = 0; ok && i < n->n; i++) {
            char ip[192];
            snprintf(ip, sizeof(ip), "%s[%zu]", p, i);
            int a = rd_alg(L, &n->kids[i], n->kids[i].line, ip);
            if (a >= 0)
                is->algorithms |= 1u << a;
            bad |= a < 0;
        }
        diag_where(L->d, &is->algorithms, kl, !ok || bad);
    }
    if ((n = get(m, "keys", &kl))) {
        join(p, sizeof(p), path, "keys");
        if (n->type == N_SEQ && n->n > 0) {
            is->keys = calloc(n->n, sizeof(*is->keys));
            if (!is->keys) {
                L->d->oom = true;
                return;
            }
            is->num_keys = n->n;
            for (size_t i = 0; i < n->n; i++) {
                char ip[192];
                snprintf(ip, sizeof(ip), "%s[%zu]", p, i);
                load_jwt_key(L, &n->kids[i], ip, &is->keys[i]);
            }
            diag_where(L->d, &is->keys, kl, false);
        } else {
            wrong(L, n, kl, p, "a non-empty list of keys like [{file: key.pem, algorithm: RS256}]");
            diag_where(L->d, &is->keys, kl, true);
        }
    }
    str_field(L, m, path, "jwks_file", "a JWK Set file path", &is->jwks_file);
    str_field(L, m, path, "jwks_url", "an https:// URL", &is->jwks_url);
    str_field(L, m, path, "jwks_ca", "a PEM file path", &is->jwks_ca);
    NUM_FIELD(L, m, path, "jwks_refresh", UNIT_MS, 1000, MAX_MS, is->jwks_refresh_ms);
    NUM_FIELD(L, m, path, "jwks_min_refresh", UNIT_MS, 1000, MAX_MS, is->jwks_min_refresh_ms);
    NUM_FIELD(L, m, path, "leeway", UNIT_MS, 0, MAX_LEEWAY, is->leeway_ms);
    bool_field(L, m, path, "require_exp", &is->require_exp);
}

static void load_jwt(struct ld *L, const struct node *m, int line)
{
    static const char *const keys[] = {"cache_size", "issuers", NULL};
    struct polis_jwt_cfg *j = &L->cfg->jwt;
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, "jwt", keys, "a mapping with cache_size and issuers"))
        return;
    NUM_FIELD(L, m, "jwt", "cache_size", UNIT_NUM, 0, MAX_JWT_CACHE, j->cache_size);
    if (!(n = get(m, "issuers", &kl))) {
        diag_add(L->d, line, "jwt: no issuers; expected issuers: a list of token issuers");
        return;
    }
    if (n->type != N_SEQ || n->n == 0) {
        wrong(L, n, kl, "jwt.issuers", "a non-empty list of token issuers");
        return;
    }
    j->issuers = calloc(n->n, sizeof(*j->issuers));
    if (!j->issuers) {
        L->d->oom = true;
        return;
    }
    j->num_issuers = n->n;
    for (size_t i = 0; i < n->n; i++)
        load_issuer(L, &n->kids[i], i, &j->issuers[i]);
}

static void load_api_keys(struct ld *L, const struct node *m, int line)
{
    static const char *const keys[] = {"header", "query", NULL};
    struct polis_api_keys_cfg *k = &L->cfg->api_keys;

    if (!map_check(L, m, line, "api_keys", keys, "a mapping with header and query"))
        return;
    str_field(L, m, "api_keys", "header", "a header name like X-API-Key", &k->header);
    str_field(L, m, "api_keys", "query", "a query parameter name like api_key", &k->query);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* A consumer's key: "sha256:" and 64 lowercase hex digits into out. A key in clear is refused
 * without being echoed (it is a secret). */
static bool rd_key_hash(struct ld *L, const struct node *k, const char *path, uint8_t out[32])
{
    if (k->type != N_SCALAR || is_null(k) || k->len < 7 || memcmp(k->s, "sha256:", 7) != 0) {
        if (k->type == N_SCALAR && !is_null(k))
            diag_add(L->d, k->line,
                     "%s: a key in clear; expected sha256:<64 lowercase hex digits>, the SHA-256 "
                     "of the key (printf %%s \"$KEY\" | sha256sum)",
                     path);
        else
            wrong(L, k, k->line, path, "sha256:<64 lowercase hex digits>");
        return false;
    }
    bool ok = k->len == 7 + 64;
    for (size_t i = 0; ok && i < 32; i++) {
        int hi = hex_digit(k->s[7 + 2 * i]), lo = hex_digit(k->s[8 + 2 * i]);
        ok = hi >= 0 && lo >= 0;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    if (!ok)
        wrong(L, k, k->line, path, "sha256:<64 lowercase hex digits>");
    return ok;
}

static void load_consumer(struct ld *L, const struct node *m, size_t idx)
{
    static const char *const keys[] = {"name", "groups", "keys", NULL};
    struct polis_consumer_cfg *c = &L->cfg->consumers[idx];
    char path[48], p[160];
    int kl = 0;
    const struct node *n;

    c->line = m->line;
    snprintf(path, sizeof(path), "consumers[%zu]", idx);
    if (m->type != N_MAP) {
        wrong(L, m, m->line, path, "a mapping with name, groups and keys");
        diag_where(L->d, &c->name, m->line, true);
        return;
    }
    map_check(L, m, m->line, path, keys, NULL);
    str_field(L, m, path, "name", "a consumer name", &c->name);
    strv_field(L, m, path, "groups", true, "a list of group names like [gold]", "a group name",
               &c->groups, &c->num_groups);
    if ((n = get(m, "keys", &kl))) {
        join(p, sizeof(p), path, "keys");
        if (n->type == N_SEQ && n->n > 0) {
            c->key_sha256 = calloc(n->n, sizeof(*c->key_sha256));
            if (!c->key_sha256) {
                L->d->oom = true;
                return;
            }
            c->num_keys = n->n;
            for (size_t i = 0; i < n->n; i++) {
                char ip[192];
                snprintf(ip, sizeof(ip), "%s[%zu]", p, i);
                bool ok = rd_key_hash(L, &n->kids[i], ip, c->key_sha256[i]);
                diag_where(L->d, &c->key_sha256[i], n->kids[i].line, !ok);
            }
        } else if (!(n->type == N_SEQ || is_null(n))) {
            wrong(L, n, kl, p, "a list of keys like [\"sha256:<64 lowercase hex digits>\"]");
        }
    }
}

/* "100/s", "1000/m", "50000/h". */
static bool parse_rate(const struct node *n, uint64_t *count, uint64_t *period_ms)
{
    if (n->type != N_SCALAR || is_null(n) || n->len < 3)
        return false;
    size_t d = strspn(n->s, "0123456789");
    if (d == 0 || d > 10 || d + 2 != n->len || n->s[d] != '/')
        return false;
    switch (n->s[d + 1]) {
    case 's':
        *period_ms = 1000;
        break;
    case 'm':
        *period_ms = 60000;
        break;
    case 'h':
        *period_ms = 3600000;
        break;
    default:
        return false;
    }
    *count = strtoull(n->s, NULL, 10);
    return *count >= 1 && *count <= MAX_RATE;
}

static void load_redis(struct ld *L, const struct node *m, int line, const char *path,
                       struct polis_redis_cfg *rd)
{
    static const char *const keys[] = {"address",       "timeout", "on_failure",
                                       "password_file", "db",      NULL};
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, path, keys,
                   "a mapping with address, timeout, on_failure, password_file and db")) {
        diag_where(L->d, &rd->line, line, true);
        return;
    }
    rd->line = line;
    str_field(L, m, path, "address", "host:port like 127.0.0.1:6379", &rd->address);
    NUM_FIELD(L, m, path, "timeout", UNIT_MS, 1, MAX_REDIS_TIMEOUT, rd->timeout_ms);
    if ((n = get(m, "on_failure", &kl))) {
        static const char *const modes[] = {"local", "open", "closed"};
        char p[192];
        size_t k = 0;
        join(p, sizeof(p), path, "on_failure");
        while (k < 3 && !scalar_eq(n, modes[k]))
            k++;
        if (k < 3)
            rd->on_failure = (enum polis_redis_failure)k;
        else
            wrong(L, n, kl, p, "local, open or closed");
        diag_where(L->d, &rd->on_failure, kl, k == 3);
    }
    str_field(L, m, path, "password_file", "a file path", &rd->password_file);
    NUM_FIELD(L, m, path, "db", UNIT_NUM, 0, MAX_COUNT, rd->db);
}

static void load_rate_limit(struct ld *L, const struct node *m, size_t idx)
{
    static const char *const keys[] = {"name", "rate", "burst", "key", "backend", "redis", NULL};
    struct polis_rate_limit_cfg *rl = &L->cfg->rate_limits[idx];
    char path[48], p[160];
    int kl = 0;
    const struct node *n;

    rl->line = m->line;
    rl->period_ms = 1000;
    rl->redis.timeout_ms = 50;
    snprintf(path, sizeof(path), "rate_limits[%zu]", idx);
    if (m->type != N_MAP) {
        wrong(L, m, m->line, path, "a mapping with name and rate");
        diag_where(L->d, &rl->name, m->line, true);
        diag_where(L->d, &rl->count, m->line, true);
        return;
    }
    map_check(L, m, m->line, path, keys, NULL);
    str_field(L, m, path, "name", "a rate limit name", &rl->name);
    if ((n = get(m, "rate", &kl))) {
        join(p, sizeof(p), path, "rate");
        bool ok = parse_rate(n, &rl->count, &rl->period_ms);
        if (!ok) {
            char expected[128];
            snprintf(expected, sizeof(expected),
                     "requests per period like 100/s, 1000/m or 50000/h, from 1 to %u requests",
                     MAX_RATE);
            wrong(L, n, kl, p, expected);
        }
        diag_where(L->d, &rl->count, kl, !ok);
    }
    NUM_FIELD(L, m, path, "burst", UNIT_NUM, 1, MAX_RATE, rl->burst);
    if ((n = get(m, "key", &kl))) {
        bool ok = true;
        join(p, sizeof(p), path, "key");
        if (scalar_eq(n, "client_ip")) {
            rl->key = POLIS_RL_KEY_CLIENT_IP;
        } else if (scalar_eq(n, "consumer")) {
            rl->key = POLIS_RL_KEY_CONSUMER;
        } else if (scalar_eq(n, "route")) {
            rl->key = POLIS_RL_KEY_ROUTE;
        } else if (n->type == N_SCALAR && n->len > 7 && memcmp(n->s, "header:", 7) == 0 &&
                   !memchr(n->s, 0, n->len)) {
            rl->key = POLIS_RL_KEY_HEADER;
            rl->key_header = strdup(n->s + 7);
            if (!rl->key_header)
                L->d->oom = true;
        } else {
            ok = false;
            wrong(L, n, kl, p, "consumer, client_ip, route or header:<name>");
        }
        diag_where(L->d, &rl->key, kl, !ok);
    }
    if ((n = get(m, "backend", &kl))) {
        bool ok = true;
        join(p, sizeof(p), path, "backend");
        if (scalar_eq(n, "local"))
            rl->backend = POLIS_RL_LOCAL;
        else if (scalar_eq(n, "redis"))
            rl->backend = POLIS_RL_REDIS;
        else
            ok = false;
        if (!ok)
            wrong(L, n, kl, p, "local or redis");
        diag_where(L->d, &rl->backend, kl, !ok);
    }
    if ((n = get(m, "redis", &kl))) {
        join(p, sizeof(p), path, "redis");
        load_redis(L, n, kl, p, &rl->redis);
    }
}

/* A list section of the top level whose items are mappings (consumers, rate_limits). */
#define LOAD_LIST(L, root, key, expected, arr, num, load_one)                                      \
    do {                                                                                           \
        int kl_ = 0;                                                                               \
        const struct node *n_ = get((root), (key), &kl_);                                          \
        if (!n_)                                                                                   \
            break;                                                                                 \
        if (n_->type == N_SEQ && n_->n) {                                                          \
            (arr) = calloc(n_->n, sizeof(*(arr)));                                                 \
            if (!(arr)) {                                                                          \
                (L)->d->oom = true;                                                                \
                break;                                                                             \
            }                                                                                      \
            (num) = n_->n;                                                                         \
            for (size_t i_ = 0; i_ < n_->n; i_++)                                                  \
                load_one((L), &n_->kids[i_], i_);                                                  \
        } else if (!(n_->type == N_SEQ || is_null(n_))) {                                          \
            wrong((L), n_, kl_, (key), (expected));                                                \
        }                                                                                          \
    } while (0)

/* The top-level security sections of root. */
static void load_security(struct ld *L, const struct node *root)
{
    struct polis_config *cfg = L->cfg;
    int kl = 0;
    const struct node *n;

    if ((n = get(root, "tls", &kl)))
        load_tls(L, n, kl);
    if ((n = get(root, "jwt", &kl)))
        load_jwt(L, n, kl);
    if ((n = get(root, "api_keys", &kl)))
        load_api_keys(L, n, kl);
    LOAD_LIST(L, root, "consumers", "a list of consumers", cfg->consumers, cfg->num_consumers,
              load_consumer);
    LOAD_LIST(L, root, "rate_limits", "a list of rate limits", cfg->rate_limits,
              cfg->num_rate_limits, load_rate_limit);
    if ((n = get(root, "trusted_proxies", &kl)))
        load_cidrs(L, n, kl, "trusted_proxies", &cfg->trusted_proxies, &cfg->num_trusted_proxies);
    if ((n = get(root, "access", &kl)))
        load_access(L, n, kl, "access", &cfg->access);
}

static void load_consumer_rules(struct ld *L, const struct node *m, int line, const char *path,
                                struct polis_consumer_rules_cfg *c)
{
    static const char *const keys[] = {"allow", "allow_groups", "deny", "deny_groups", NULL};
    char p[192];
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, path, keys,
                   "a mapping with allow, allow_groups, deny and deny_groups")) {
        diag_where(L->d, c, line, true);
        return;
    }
    diag_where(L->d, c, line, false);
    if ((n = get(m, "allow", &kl))) {
        join(p, sizeof(p), path, "allow");
        load_refs(L, n, kl, p, true, false, "a list of consumer names like [alice]",
                  "a consumer name", &c->allow, &c->num_allow);
    }
    if ((n = get(m, "deny", &kl))) {
        join(p, sizeof(p), path, "deny");
        load_refs(L, n, kl, p, true, false, "a list of consumer names like [bob]",
                  "a consumer name", &c->deny, &c->num_deny);
    }
    strv_field(L, m, path, "allow_groups", true, "a list of group names like [gold]",
               "a group name", &c->allow_groups, &c->num_allow_groups);
    strv_field(L, m, path, "deny_groups", true, "a list of group names like [trial]",
               "a group name", &c->deny_groups, &c->num_deny_groups);
}

/* A mapping of names to string values (claims to values, claims to headers) into *out. */
static void load_pairs(struct ld *L, const struct node *n, int line, const char *path,
                       const char *expected, const char *key_item, const char *value_item,
                       struct polis_header_kv **out, size_t *num)
{
    if (n->type == N_MAP && n->n == 0) {
        diag_add(L->d, line, "%s: empty; expected %s", path, expected);
        return;
    }
    if (n->type != N_MAP) {
        wrong(L, n, line, path, expected);
        return;
    }
    map_check(L, n, line, path, NULL, expected);
    *out = calloc(n->n / 2, sizeof(**out));
    if (!*out) {
        L->d->oom = true;
        return;
    }
    *num = n->n / 2;
    for (size_t i = 0; i < *num; i++) {
        const struct node *k = &n->kids[2 * i], *v = &n->kids[2 * i + 1];
        struct polis_header_kv *kv = &(*out)[i];
        char vp[256];
        bool ok = rd_str(L, k, k->line, path, key_item, &kv->name);
        if (ok) {
            join(vp, sizeof(vp), path, kv->name);
            ok = rd_str(L, v, k->line, vp, value_item, &kv->value);
        }
        diag_where(L->d, kv, k->line, !ok);
    }
}

/* A route's auth.jwt: true (any issuer, no rules), false, or a mapping of rules. */
static void load_route_jwt(struct ld *L, const struct node *m, int line, const char *path,
                           struct polis_auth_cfg *a)
{
    static const char *const keys[] = {"issuers",        "required_claims",     "scopes",
                                       "forward_claims", "strip_authorization", NULL};
    struct polis_route_jwt_cfg *j = &a->jwt_rules;
    char p[192];
    int kl = 0;
    const struct node *n;

    if (bool_of(m) >= 0) {
        a->jwt = bool_of(m) == 1;
        diag_where(L->d, &a->jwt, line, false);
        return;
    }
    if (!map_check(L, m, line, path, keys, "true, or a mapping of token rules (issuers, ...)")) {
        diag_where(L->d, &a->jwt, line, true);
        return;
    }
    a->jwt = true;
    diag_where(L->d, &a->jwt, line, false);
    if ((n = get(m, "issuers", &kl))) {
        join(p, sizeof(p), path, "issuers");
        load_refs(L, n, kl, p, false, false, "a non-empty list of issuer names like [main]",
                  "an issuer name", &j->issuers, &j->num_issuers);
    }
    if ((n = get(m, "required_claims", &kl))) {
        join(p, sizeof(p), path, "required_claims");
        load_pairs(L, n, kl, p, "a mapping of claims to required values, like {role: admin}",
                   "a claim name", "a claim value (text)", &j->required_claims,
                   &j->num_required_claims);
    }
    strv_field(L, m, path, "scopes", false, "a list of scopes like [orders:read]", "a scope",
               &j->scopes, &j->num_scopes);
    if ((n = get(m, "forward_claims", &kl))) {
        join(p, sizeof(p), path, "forward_claims");
        load_pairs(L, n, kl, p, "a mapping of claims to header names, like {sub: X-User-Id}",
                   "a claim name", "a header name", &j->forward_claims, &j->num_forward_claims);
    }
    bool_field(L, m, path, "strip_authorization", &j->strip_authorization);
}

static void load_route_auth(struct ld *L, const struct node *m, int line, const char *path,
                            struct polis_auth_cfg *a)
{
    static const char *const keys[] = {"jwt", "api_key",          "consumers",
                                       "any", "forward_consumer", NULL};
    char p[192];
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, path, keys,
                   "a mapping with jwt, api_key, consumers, any and forward_consumer"))
        return;
    bool bad = false;
    if ((n = get(m, "jwt", &kl))) {
        join(p, sizeof(p), path, "jwt");
        load_route_jwt(L, n, kl, p, a);
        bad |= reported(L->d, &a->jwt);
    }
    if (get(m, "api_key", &kl)) {
        bool_field(L, m, path, "api_key", &a->api_key);
        bad |= reported(L->d, &a->api_key);
    }
    if ((n = get(m, "consumers", &kl))) {
        join(p, sizeof(p), path, "consumers");
        load_consumer_rules(L, n, kl, p, &a->consumers);
    }
    bool_field(L, m, path, "any", &a->any);
    str_field(L, m, path, "forward_consumer", "a header name like X-Consumer",
              &a->forward_consumer);
    if (!a->jwt && !a->api_key && !bad)
        diag_add(L->d, line, "%s: no method; expected jwt, api_key or both", path);
}

static void load_cors(struct ld *L, const struct node *m, int line, const char *path,
                      struct polis_cors_cfg *c)
{
    static const char *const keys[] = {"origins",     "methods", "headers", "expose_headers",
                                       "credentials", "max_age", NULL};

    if (!map_check(L, m, line, path, keys, "a mapping of CORS settings (origins, ...)")) {
        diag_where(L->d, &c->enabled, line, true);
        return;
    }
    c->enabled = true;
    diag_where(L->d, &c->enabled, line, false);
    strv_field(L, m, path, "origins", false, "a list of origins like [\"https://app.example\"]",
               "an origin", &c->origins, &c->num_origins);
    strv_field(L, m, path, "methods", true, "a list of methods like [GET, POST]", "a method",
               &c->methods, &c->num_methods);
    strv_field(L, m, path, "headers", true, "a list of header names like [Content-Type]",
               "a header name", &c->headers, &c->num_headers);
    strv_field(L, m, path, "expose_headers", true, "a list of header names like [X-Request-Id]",
               "a header name", &c->expose_headers, &c->num_expose_headers);
    bool_field(L, m, path, "credentials", &c->credentials);
    NUM_FIELD(L, m, path, "max_age", UNIT_MS, 0, MAX_MS, c->max_age_ms);
}

/* A route's auth, rate_limit, cors and access. */
static void load_route_security(struct ld *L, const struct node *m, const char *path,
                                struct polis_route_cfg *r)
{
    char p[160];
    int kl = 0;
    const struct node *n;

    if ((n = get(m, "auth", &kl))) {
        join(p, sizeof(p), path, "auth");
        load_route_auth(L, n, kl, p, &r->auth);
    }
    if ((n = get(m, "rate_limit", &kl))) {
        join(p, sizeof(p), path, "rate_limit");
        bool ok =
            load_refs(L, n, kl, p, false, true, "a rate limit name or a non-empty list of names",
                      "a rate limit name", &r->rate_limits, &r->num_rate_limits);
        diag_where(L->d, &r->rate_limits, kl, !ok);
    }
    if ((n = get(m, "cors", &kl))) {
        join(p, sizeof(p), path, "cors");
        load_cors(L, n, kl, p, &r->cors);
    }
    if ((n = get(m, "access", &kl))) {
        join(p, sizeof(p), path, "access");
        load_access(L, n, kl, p, &r->access);
    }
}

static void load_instance(struct ld *L, const struct node *n, const char *path,
                          struct polis_instance_cfg *in)
{
    static const char *const keys[] = {"address", "weight", "metadata", NULL};
    const char *expected = "an address string, or a mapping with address, weight and metadata";

    in->weight = 1;
    if (n->type == N_SCALAR && !is_null(n)) {
        bool ok = rd_addr(L, n, n->line, path, &in->addr);
        diag_where(L->d, &in->addr, n->line, !ok);
        return;
    }
    if (n->type != N_MAP) {
        wrong(L, n, n->line, path, expected);
        diag_where(L->d, &in->addr, n->line, true);
        return;
    }
    map_check(L, n, n->line, path, keys, expected);
    int kl = 0;
    const struct node *a = get(n, "address", &kl);
    if (a) {
        char p[160];
        join(p, sizeof(p), path, "address");
        bool ok = rd_addr(L, a, kl, p, &in->addr);
        diag_where(L->d, &in->addr, kl, !ok);
    } else {
        diag_where(L->d, &in->addr, n->line, false); /* validation says: no address */
    }
    NUM_FIELD(L, n, path, "weight", UNIT_NUM, 1, MAX_WEIGHT, in->weight);
    if ((a = get(n, "metadata", &kl))) {
        char p[160];
        join(p, sizeof(p), path, "metadata");
        bool ok = load_kv_map(L, a, kl, p,
                              "a mapping of metadata keys to values, like "
                              "{version: v2}",
                              &in->meta, &in->num_meta);
        diag_where(L->d, &in->meta, kl, !ok);
    }
}

static void load_cluster(struct ld *L, const struct node *m, size_t idx)
{
    static const char *const keys[] = {"name",
                                       "balance",
                                       "hash_on",
                                       "keepalive",
                                       "instances",
                                       "connect_timeout",
                                       "timeout",
                                       "discovery",
                                       "health_check",
                                       "outlier_detection",
                                       "circuit_breaker",
                                       "instance_circuit_breaker",
                                       "retry",
                                       "panic_threshold",
                                       "max_connections",
                                       "max_pending",
                                       "max_requests",
                                       "tls",
                                       NULL};
    struct polis_cluster_cfg *c = &L->cfg->clusters[idx];
    char path[64], p[160];
    int kl = 0;
    const struct node *n;

    cluster_defaults(c);
    c->line = m->line;
    snprintf(path, sizeof(path), "clusters[%zu]", idx);
    if (m->type != N_MAP) {
        wrong(L, m, m->line, path, "a mapping with name and instances");
        diag_where(L->d, &c->name, m->line, true);
        diag_where(L->d, &c->instances, m->line, true);
        return;
    }
    map_check(L, m, m->line, path, keys, NULL);
    str_field(L, m, path, "name", "a cluster name", &c->name);

    static const char *const kinds[] = {"round_robin", "weighted", "least_request", "hash"};
    bool lb_ok = true;
    int balance_line = m->line;
    if ((n = get(m, "balance", &kl))) {
        size_t k;
        balance_line = kl;
        for (k = 0; k < 4 && !scalar_eq(n, kinds[k]); k++)
            ;
        join(p, sizeof(p), path, "balance");
        if (k < 4)
            c->lb = (enum polis_lb_kind)k;
        else
            wrong(L, n, kl, p, "one of: round_robin, weighted, least_request, hash");
        lb_ok = k < 4;
        diag_where(L->d, &c->lb, kl, !lb_ok);
    }
    if ((n = get(m, "hash_on", &kl))) {
        const char *expected = "header:<name>, cookie:<name> or client_ip";
        join(p, sizeof(p), path, "hash_on");
        bool ok = true;
        if (n->type != N_SCALAR || is_null(n) || memchr(n->s, 0, n->len)) {
            ok = false;
        } else if (scalar_eq(n, "client_ip")) {
            c->hash_on = POLIS_HASH_CLIENT_IP;
        } else if (n->len > 7 && memcmp(n->s, "header:", 7) == 0) {
            c->hash_on = POLIS_HASH_HEADER;
            c->hash_key = strdup(n->s + 7);
        } else if (n->len > 7 && memcmp(n->s, "cookie:", 7) == 0) {
            c->hash_on = POLIS_HASH_COOKIE;
            c->hash_key = strdup(n->s + 7);
        } else {
            ok = false;
        }
        if (!ok)
            wrong(L, n, kl, p, expected);
        else if (c->hash_on != POLIS_HASH_CLIENT_IP && !c->hash_key)
            L->d->oom = true;
        if (ok && lb_ok && c->lb != POLIS_LB_HASH) {
            diag_add(L->d, kl,
                     "%s: set but balance is not hash; expected balance: hash or no "
                     "hash_on",
                     p);
            ok = false;
        }
        diag_where(L->d, &c->hash_key, kl, !ok);
    } else if (c->lb == POLIS_LB_HASH) {
        diag_add(L->d, balance_line,
                 "%s: balance is hash but hash_on is missing; expected hash_on: header:<name>, "
                 "cookie:<name> or client_ip",
                 path);
    }
    NUM_FIELD(L, m, path, "keepalive", UNIT_NUM, 0, MAX_KEEPALIVE, c->keepalive);
    NUM_FIELD(L, m, path, "connect_timeout", UNIT_MS, 1, MAX_MS, c->connect_timeout_ms);
    NUM_FIELD(L, m, path, "timeout", UNIT_MS, 1, MAX_MS, c->timeout_ms);
    if ((n = get(m, "discovery", &kl))) {
        join(p, sizeof(p), path, "discovery");
        load_discovery(L, n, kl, p, &c->discovery);
    }
    if ((n = get(m, "health_check", &kl))) {
        join(p, sizeof(p), path, "health_check");
        load_health(L, n, kl, p, &c->health_check);
    }
    if ((n = get(m, "outlier_detection", &kl))) {
        join(p, sizeof(p), path, "outlier_detection");
        load_outlier(L, n, kl, p, &c->outlier);
    }
    if ((n = get(m, "circuit_breaker", &kl))) {
        join(p, sizeof(p), path, "circuit_breaker");
        load_breaker(L, n, kl, p, &c->breaker);
    }
    if ((n = get(m, "instance_circuit_breaker", &kl))) {
        join(p, sizeof(p), path, "instance_circuit_breaker");
        load_breaker(L, n, kl, p, &c->instance_breaker);
    }
    if ((n = get(m, "retry", &kl))) {
        join(p, sizeof(p), path, "retry");
        load_retry(L, n, kl, p, &c->retry);
    }
    NUM_FIELD(L, m, path, "panic_threshold", UNIT_NUM, 0, 100, c->panic_threshold);
    NUM_FIELD(L, m, path, "max_connections", UNIT_NUM, 0, MAX_CONNECTIONS, c->max_connections);
    NUM_FIELD(L, m, path, "max_pending", UNIT_NUM, 0, MAX_CONNECTIONS, c->max_pending);
    NUM_FIELD(L, m, path, "max_requests", UNIT_NUM, 0, MAX_CONNECTIONS, c->max_requests);
    if ((n = get(m, "tls", &kl))) {
        join(p, sizeof(p), path, "tls");
        load_upstream_tls(L, n, kl, p, &c->tls);
    }

    if ((n = get(m, "instances", &kl))) {
        join(p, sizeof(p), path, "instances");
        if (n->type == N_SEQ && n->n > 0) {
            c->instances = calloc(n->n, sizeof(*c->instances));
            if (!c->instances) {
                L->d->oom = true;
                return;
            }
            c->num_instances = n->n;
            for (size_t i = 0; i < n->n; i++) {
                char ip[192];
                snprintf(ip, sizeof(ip), "%s[%zu]", p, i);
                load_instance(L, &n->kids[i], ip, &c->instances[i]);
            }
            diag_where(L->d, &c->instances, kl, false);
        } else if (n->type == N_SEQ || is_null(n)) {
            diag_where(L->d, &c->instances, kl, false); /* validation says: no instances */
        } else {
            wrong(L, n, kl, p, "a list of instances");
            diag_where(L->d, &c->instances, kl, true);
        }
    }
}

/* A header value for add: any non-null scalar. */
static void load_header_ops(struct ld *L, const struct node *m, int line, const char *path,
                            struct polis_header_ops *o)
{
    static const char *const keys[] = {"add", "remove", NULL};
    char p[192];
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, path, keys, "a mapping with add and remove"))
        return;
    if ((n = get(m, "add", &kl))) {
        join(p, sizeof(p), path, "add");
        if (map_check(L, n, kl, p, NULL, "a mapping of header names to values") && n->n) {
            o->add = calloc(n->n / 2, sizeof(*o->add));
            if (!o->add) {
                L->d->oom = true;
                return;
            }
            o->num_add = n->n / 2;
            for (size_t i = 0; i < o->num_add; i++) {
                const struct node *k = &n->kids[2 * i], *v = &n->kids[2 * i + 1];
                char vp[256];
                struct polis_header_kv *kv = &o->add[i];
                bool ok = rd_str(L, k, k->line, p, "a header name", &kv->name);
                if (ok) {
                    join(vp, sizeof(vp), p, kv->name);
                    ok = rd_str(L, v, k->line, vp, "a header value", &kv->value);
                }
                diag_where(L->d, kv, k->line, !ok);
            }
        }
    }
    if ((n = get(m, "remove", &kl))) {
        join(p, sizeof(p), path, "remove");
        if (n->type == N_SEQ && n->n) {
            o->remove = calloc(n->n, sizeof(*o->remove));
            if (!o->remove) {
                L->d->oom = true;
                return;
            }
            o->num_remove = n->n;
            for (size_t i = 0; i < n->n; i++) {
                char ip[224];
                snprintf(ip, sizeof(ip), "%s[%zu]", p, i);
                bool ok =
                    rd_str(L, &n->kids[i], n->kids[i].line, ip, "a header name", &o->remove[i]);
                diag_where(L->d, &o->remove[i], n->kids[i].line, !ok);
            }
        } else if (!(n->type == N_SEQ || is_null(n))) {
            wrong(L, n, kl, p, "a list of header names");
        }
    }
}

static void load_match(struct ld *L, const struct node *m, int line, const char *path,
                       struct polis_route_cfg *r)
{
    static const char *const keys[] = {"host",    "path",    "prefix", "methods",
                                       "headers", "cookies", NULL};
    char p[160];
    int kl = 0, kl2 = 0;
    const struct node *n, *n2;

    if (!map_check(L, m, line, path, keys, "a mapping of conditions"))
        return;
    str_field(L, m, path, "host", "a host name", &r->host);
    n = get(m, "path", &kl);
    n2 = get(m, "prefix", &kl2);
    if (n && n2) {
        diag_add(L->d, kl2, "%s: both path and prefix; expected only one of them", path);
        diag_where(L->d, &r->path, kl, true);
    } else if (n) {
        join(p, sizeof(p), path, "path");
        bool ok = rd_str(L, n, kl, p, "a path like /users or /users/{id}", &r->path);
        if (ok)
            r->path_kind = strpbrk(r->path, "{}") ? POLIS_PATH_PATTERN : POLIS_PATH_EXACT;
        diag_where(L->d, &r->path, kl, !ok);
    } else if (n2) {
        join(p, sizeof(p), path, "prefix");
        bool ok = rd_str(L, n2, kl2, p, "a path prefix like /api/", &r->path);
        if (ok)
            r->path_kind = POLIS_PATH_PREFIX;
        diag_where(L->d, &r->path, kl2, !ok);
    }
    if ((n = get(m, "methods", &kl))) {
        join(p, sizeof(p), path, "methods");
        if (n->type == N_SEQ && n->n > 0) {
            r->methods = calloc(n->n, sizeof(*r->methods));
            if (!r->methods) {
                L->d->oom = true;
                return;
            }
            r->num_methods = n->n;
            for (size_t i = 0; i < n->n; i++) {
                char ip[192];
                snprintf(ip, sizeof(ip), "%s[%zu]", p, i);
                bool ok = rd_str(L, &n->kids[i], n->kids[i].line, ip, "a method token like GET",
                                 &r->methods[i]);
                diag_where(L->d, &r->methods[i], n->kids[i].line, !ok);
            }
            diag_where(L->d, &r->methods, kl, false);
        } else {
            wrong(L, n, kl, p, "a non-empty list of methods like [GET, HEAD]");
            diag_where(L->d, &r->methods, kl, true);
        }
    }
    if ((n = get(m, "headers", &kl))) {
        join(p, sizeof(p), path, "headers");
        if (map_check(L, n, kl, p, NULL, "a mapping of header names to a value or true") && n->n) {
            r->headers = calloc(n->n / 2, sizeof(*r->headers));
            if (!r->headers) {
                L->d->oom = true;
                return;
            }
            r->num_headers = n->n / 2;
            for (size_t i = 0; i < r->num_headers; i++) {
                const struct node *k = &n->kids[2 * i], *v = &n->kids[2 * i + 1];
                struct polis_header_match *h = &r->headers[i];
                char vp[256];
                bool ok = rd_str(L, k, k->line, p, "a header name", &h->name);
                if (ok && bool_of(v) != 1) {
                    join(vp, sizeof(vp), p, h->name);
                    if (bool_of(v) == 0) {
                        wrong(L, v, k->line, vp, "a string value, or true for presence only");
                        ok = false;
                    } else {
                        ok = rd_str(L, v, k->line, vp, "a string value, or true for presence only",
                                    &h->value);
                    }
                }
                diag_where(L->d, h, k->line, !ok);
            }
        }
    }
    if ((n = get(m, "cookies", &kl))) {
        const char *expected = "a string value, or nothing (or true) for presence only";
        join(p, sizeof(p), path, "cookies");
        if (map_check(L, n, kl, p, NULL, "a mapping of cookie names to a value or nothing") &&
            n->n) {
            r->cookies = calloc(n->n / 2, sizeof(*r->cookies));
            if (!r->cookies) {
                L->d->oom = true;
                return;
            }
            r->num_cookies = n->n / 2;
            for (size_t i = 0; i < r->num_cookies; i++) {
                const struct node *k = &n->kids[2 * i], *v = &n->kids[2 * i + 1];
                struct polis_header_match *h = &r->cookies[i];
                char vp[256];
                bool ok = rd_str(L, k, k->line, p, "a cookie name", &h->name);
                if (ok && !is_null(v) && bool_of(v) != 1) {
                    join(vp, sizeof(vp), p, h->name);
                    if (bool_of(v) == 0) {
                        wrong(L, v, k->line, vp, expected);
                        ok = false;
                    } else {
                        ok = rd_str(L, v, k->line, vp, expected, &h->value);
                    }
                }
                diag_where(L->d, h, k->line, !ok);
            }
        }
    }
}

/* split: a list of {subset, weight}. */
static void load_splits(struct ld *L, const struct node *n, int line, const char *path,
                        struct polis_route_cfg *r)
{
    static const char *const keys[] = {"subset", "weight", NULL};
    const char *expected = "a list of {subset: {...}, weight: N}";

    if (n->type != N_SEQ || n->n == 0) {
        wrong(L, n, line, path, expected);
        diag_where(L->d, &r->splits, line, true);
        return;
    }
    r->splits = calloc(n->n, sizeof(*r->splits));
    if (!r->splits) {
        L->d->oom = true;
        return;
    }
    r->num_splits = n->n;
    bool ok = true;
    for (size_t i = 0; i < n->n; i++) {
        const struct node *it = &n->kids[i], *v;
        struct polis_split_cfg *sp = &r->splits[i];
        char ip[192], p[224];
        int kl = 0;
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i);
        if (it->type != N_MAP) {
            wrong(L, it, it->line, ip, "a mapping with subset and weight");
            ok = false;
            continue;
        }
        map_check(L, it, it->line, ip, keys, NULL);
        if ((v = get(it, "subset", &kl))) {
            join(p, sizeof(p), ip, "subset");
            load_subset(L, v, kl, p, &sp->subset);
        }
        if (get(it, "weight", &kl)) {
            NUM_FIELD(L, it, ip, "weight", UNIT_NUM, 0, MAX_WEIGHT, sp->weight);
        } else {
            diag_add(L->d, it->line, "%s: no weight; expected weight: 0..%d", ip, MAX_WEIGHT);
            diag_where(L->d, &sp->weight, it->line, true);
        }
    }
    diag_where(L->d, &r->splits, line, !ok);
}

/* fault: injected delays and aborts. A delay or abort given without its percent applies to
 * every request (100). */
static void load_fault(struct ld *L, const struct node *m, int line, const char *path,
                       struct polis_fault_cfg *f)
{
    static const char *const keys[] = {"delay", "delay_percent", "abort_status", "abort_percent",
                                       NULL};
    int kl = 0;

    if (!map_check(L, m, line, path, keys,
                   "a mapping with delay, delay_percent, abort_status and abort_percent")) {
        diag_where(L->d, &f->delay_ms, line, true);
        return;
    }
    if (!get(m, "delay", &kl))
        diag_where(L->d, &f->delay_ms, line, false);
    NUM_FIELD(L, m, path, "delay", UNIT_MS, 0, MAX_MS, f->delay_ms);
    if (get(m, "delay", &kl) && !get(m, "delay_percent", &kl))
        f->delay_percent = 100;
    PCT_FIELD(L, m, path, "delay_percent", f->delay_percent);
    NUM_FIELD(L, m, path, "abort_status", UNIT_NUM, 200, 599, f->abort_status);
    if (get(m, "abort_status", &kl) && !get(m, "abort_percent", &kl))
        f->abort_percent = 100;
    PCT_FIELD(L, m, path, "abort_percent", f->abort_percent);
}

/* mirror: its presence enables it (unless enabled: false). */
static void load_mirror(struct ld *L, const struct node *m, int line, const char *path,
                        struct polis_mirror_cfg *mi)
{
    static const char *const keys[] = {"enabled",         "subset",        "percent",
                                       "compare_headers", "ignore_fields", NULL};
    char p[160];
    int kl = 0;
    const struct node *n;

    if (!map_check(L, m, line, path, keys, "a mapping of mirror settings")) {
        diag_where(L->d, &mi->enabled, line, true);
        return;
    }
    mi->enabled = true;
    mi->percent = 100;
    if (!bool_field(L, m, path, "enabled", &mi->enabled))
        diag_where(L->d, &mi->enabled, line, false);
    if ((n = get(m, "subset", &kl))) {
        join(p, sizeof(p), path, "subset");
        load_subset(L, n, kl, p, &mi->subset);
    }
    PCT_FIELD(L, m, path, "percent", mi->percent);
    if ((n = get(m, "compare_headers", &kl))) {
        join(p, sizeof(p), path, "compare_headers");
        bool ok = load_strv(L, n, kl, p, "a list of header names like [content-type]",
                            "a header name", &mi->compare_headers, &mi->num_compare_headers);
        diag_where(L->d, &mi->compare_headers, kl, !ok);
    }
    if ((n = get(m, "ignore_fields", &kl))) {
        join(p, sizeof(p), path, "ignore_fields");
        bool ok = load_strv(L, n, kl, p, "a list of JSON field paths like [timestamp, meta.id]",
                            "a JSON field path", &mi->ignore_fields, &mi->num_ignore_fields);
        diag_where(L->d, &mi->ignore_fields, kl, !ok);
    }
}

static void load_route(struct ld *L, const struct node *m, size_t idx)
{
    static const char *const keys[] = {"name",
                                       "match",
                                       "cluster",
                                       "strip_prefix",
                                       "rewrite",
                                       "max_body",
                                       "timeout",
                                       "request_headers",
                                       "response_headers",
                                       "subset",
                                       "split",
                                       "fault",
                                       "mirror",
                                       "retry",
                                       "retry_idempotency_key",
                                       "max_concurrent",
                                       "auth",
                                       "rate_limit",
                                       "cors",
                                       "access",
                                       NULL};
    struct polis_route_cfg *r = &L->cfg->routes[idx];
    char path[64], p[160];
    int kl = 0;
    const struct node *n;

    r->line = m->line;
    snprintf(path, sizeof(path), "routes[%zu]", idx);
    if (m->type != N_MAP) {
        wrong(L, m, m->line, path, "a mapping with match and cluster");
        diag_where(L->d, &r->cluster, m->line, true);
        return;
    }
    map_check(L, m, m->line, path, keys, NULL);
    str_field(L, m, path, "name", "a route name", &r->name);
    if ((n = get(m, "match", &kl))) {
        join(p, sizeof(p), path, "match");
        load_match(L, n, kl, p, r);
    }
    if ((n = get(m, "cluster", &kl))) {
        join(p, sizeof(p), path, "cluster");
        bool ok = rd_str(L, n, kl, p, "a cluster name", &r->cluster);
        diag_where(L->d, &r->cluster, kl, !ok);
    }
    if ((n = get(m, "strip_prefix", &kl))) {
        join(p, sizeof(p), path, "strip_prefix");
        int b = bool_of(n);
        if (b < 0)
            wrong(L, n, kl, p, "true or false");
        else
            r->strip_prefix = b;
        diag_where(L->d, &r->strip_prefix, kl, b < 0);
    }
    str_field(L, m, path, "rewrite", "a path like /v2/", &r->rewrite);
    NUM_FIELD(L, m, path, "max_body", UNIT_BYTES, 0, MAX_BODY, r->max_body);
    NUM_FIELD(L, m, path, "timeout", UNIT_MS, 0, MAX_MS, r->timeout_ms);
    if ((n = get(m, "request_headers", &kl))) {
        join(p, sizeof(p), path, "request_headers");
        load_header_ops(L, n, kl, p, &r->request_headers);
    }
    if ((n = get(m, "response_headers", &kl))) {
        join(p, sizeof(p), path, "response_headers");
        load_header_ops(L, n, kl, p, &r->response_headers);
    }
    int sub_line = 0;
    if ((n = get(m, "subset", &sub_line))) {
        join(p, sizeof(p), path, "subset");
        load_subset(L, n, sub_line, p, &r->subset);
    }
    if ((n = get(m, "split", &kl))) {
        join(p, sizeof(p), path, "split");
        if (sub_line) {
            diag_add(L->d, kl, "%s: set together with subset; expected only one of them", p);
            diag_where(L->d, &r->splits, kl, true);
        } else {
            load_splits(L, n, kl, p, r);
        }
    }
    if ((n = get(m, "fault", &kl))) {
        join(p, sizeof(p), path, "fault");
        load_fault(L, n, kl, p, &r->fault);
    }
    if ((n = get(m, "mirror", &kl))) {
        join(p, sizeof(p), path, "mirror");
        load_mirror(L, n, kl, p, &r->mirror);
    }
    if ((n = get(m, "retry", &kl))) {
        join(p, sizeof(p), path, "retry");
        r->retry = calloc(1, sizeof(*r->retry));
        if (!r->retry) {
            L->d->oom = true;
            return;
        }
        retry_defaults(r->retry);
        load_retry(L, n, kl, p, r->retry);
        diag_where(L->d, &r->retry, kl, false);
    }
    bool_field(L, m, path, "retry_idempotency_key", &r->retry_idempotency_key);
    NUM_FIELD(L, m, path, "max_concurrent", UNIT_NUM, 0, MAX_CONNECTIONS, r->max_concurrent);
    load_route_security(L, m, path, r);
}

/* Returns false when the document is not a mapping (nothing else is worth checking then). */
static bool load_root(struct ld *L, const struct node *root)
{
    static const char *const keys[] = {
        "workers",         "listen", "admin",    "admin_token", "access_log", "access_log_fields",
        "error_log",       "limits", "timeouts", "tracing",     "clusters",   "routes",
        "registry",        "tls",    "jwt",      "api_keys",    "consumers",  "rate_limits",
        "trusted_proxies", "access", NULL};
    struct polis_config *cfg = L->cfg;
    int kl = 0;
    const struct node *n;

    if (root->type != N_MAP) {
        wrong(L, root, root->line, "", "a mapping of settings (listen, clusters, routes, ...)");
        return false;
    }
    map_check(L, root, root->line, "", keys, NULL);
    NUM_FIELD(L, root, "", "workers", UNIT_NUM, 0, MAX_WORKERS, cfg->workers);
    if ((n = get(root, "listen", &kl))) {
        bool ok = rd_addr(L, n, kl, "listen", &cfg->listen);
        diag_where(L->d, &cfg->listen, kl, !ok);
    }
    if ((n = get(root, "admin", &kl))) {
        bool ok = true;
        if (is_off(n))
            cfg->has_admin = false;
        else
            ok = rd_addr(L, n, kl, "admin", &cfg->admin);
        diag_where(L->d, &cfg->admin, kl, !ok);
    }
    if ((n = get(root, "access_log", &kl))) {
        bool ok = true;
        if (!is_off(n))
            ok = rd_str(L, n, kl, "access_log", "\"-\" (stdout), a file path or off",
                        &cfg->access_log);
        diag_where(L->d, &cfg->access_log, kl, !ok);
    }
    if ((n = get(root, "access_log_fields", &kl)))
        load_alog_fields(L, n, kl);
    if ((n = get(root, "admin_token", &kl))) {
        bool ok = rd_str(L, n, kl, "admin_token", "a secret of at least 16 characters",
                         &cfg->admin_token);
        diag_where(L->d, &cfg->admin_token, kl, !ok);
    }
    if ((n = get(root, "error_log", &kl))) {
        bool ok = rd_str(L, n, kl, "error_log", "\"-\" (stderr) or a file path", &cfg->error_log);
        diag_where(L->d, &cfg->error_log, kl, !ok);
    }
    if ((n = get(root, "limits", &kl)))
        load_limits(L, n, kl);
    if ((n = get(root, "timeouts", &kl)))
        load_timeouts(L, n, kl);
    if ((n = get(root, "tracing", &kl)))
        load_tracing(L, n, kl);
    if ((n = get(root, "registry", &kl)))
        load_registry(L, n, kl);
    load_security(L, root);
    if ((n = get(root, "clusters", &kl))) {
        if (n->type == N_SEQ && n->n) {
            cfg->clusters = calloc(n->n, sizeof(*cfg->clusters));
            if (!cfg->clusters) {
                L->d->oom = true;
                return true;
            }
            cfg->num_clusters = n->n;
            for (size_t i = 0; i < n->n; i++)
                load_cluster(L, &n->kids[i], i);
        } else if (!(n->type == N_SEQ || is_null(n))) {
            wrong(L, n, kl, "clusters", "a list of clusters");
        }
    }
    if ((n = get(root, "routes", &kl))) {
        if (n->type == N_SEQ && n->n) {
            cfg->routes = calloc(n->n, sizeof(*cfg->routes));
            if (!cfg->routes) {
                L->d->oom = true;
                return true;
            }
            cfg->num_routes = n->n;
            for (size_t i = 0; i < n->n; i++)
                load_route(L, &n->kids[i], i);
        } else if (!(n->type == N_SEQ || is_null(n))) {
            wrong(L, n, kl, "routes", "a list of routes");
        }
    }
    return true;
}

int polis__config_load_string(const char *yaml, size_t len, const char *name,
                              struct polis_config **out, struct polis_config_errors *errs)
{
    struct diag d;
    struct node root = {.type = N_SEQ};
    struct polis_config *cfg;

    if (errs) {
        errs->msgs = NULL;
        errs->count = 0;
    }
    if (out)
        *out = NULL;
    name = name ? name : "config";
    diag_init(&d, name);
    cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return POLIS_ENOMEM;
    polis__config_defaults(cfg);
    cfg->source = strdup(name);
    if (!cfg->source)
        d.oom = true;

    struct ld L = {&d, cfg, 0};
    if (!yaml && len)
        diag_add(&d, 0, "no text; expected YAML");
    else if (build_tree(&L, yaml ? yaml : "", len, &root)) {
        if (root.n == 0)
            diag_add(&d, 0, "empty configuration; expected a mapping with at least listen");
        else if (load_root(&L, &root.kids[0]))
            config_validate_diag(cfg, &d);
    }
    node_free(&root);

    bool bad = d.n > 0 || d.dropped > 0;
    int rc = diag_finish(&d, errs);
    if (rc < 0 || bad || !out) {
        polis__config_free(cfg);
        return rc < 0 ? rc : bad ? POLIS_EINVAL : 0;
    }
    *out = cfg;
    return 0;
}

/* Report a file that cannot be read, with the reason. */
static int file_error(const char *path, const char *what, int err, struct polis_config_errors *errs)
{
    struct diag d;
    diag_init(&d, path);
    diag_add(&d, 0, "%s: %s; expected a readable YAML file", what, strerror(err));
    int rc = diag_finish(&d, errs);
    return rc < 0 ? rc : POLIS_ESYS;
}

int polis__config_load_file(const char *path, struct polis_config **out,
                            struct polis_config_errors *errs)
{
    char *buf = NULL;
    size_t len = 0;
    int rc, fd;
    struct stat st;

    if (errs) {
        errs->msgs = NULL;
        errs->count = 0;
    }
    if (out)
        *out = NULL;
    if (!path)
        return POLIS_EINVAL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return file_error(path, "cannot open", errno, errs);
    if (fstat(fd, &st) < 0) {
        rc = file_error(path, "cannot stat", errno, errs);
        goto out_close;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = file_error(path, "cannot read", EISDIR, errs);
        goto out_close;
    }
    buf = malloc(MAX_FILE + 1);
    if (!buf) {
        rc = POLIS_ENOMEM;
        goto out_close;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, MAX_FILE + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = file_error(path, "cannot read", errno, errs);
            goto out_free;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > MAX_FILE) {
            struct diag d;
            diag_init(&d, path);
            diag_add(&d, 0, "file larger than %u MiB; expected a smaller configuration",
                     MAX_FILE >> 20);
            rc = diag_finish(&d, errs);
            rc = rc < 0 ? rc : POLIS_EINVAL;
            goto out_free;
        }
    }
    rc = polis__config_load_string(buf, len, path, out, errs);
out_free:
    free(buf);
out_close:
    close(fd);
    return rc;
}
