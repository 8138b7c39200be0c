/* config.h: the gateway configuration, loaded from YAML (or built from quick-mode flags) into an
 * immutable, validated tree. */
#ifndef POLIS_CONFIG_H
#define POLIS_CONFIG_H

#include <polis/core.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* A resolved socket address with its text form ("127.0.0.1:9001"). */
struct polis_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[64];
};

/* "127.0.0.1:80", "[::1]:80", ":8080" (all addresses), "localhost:80" (resolved once, numeric
 * first). Returns 0 or POLIS_EINVAL. */
int polis__addr_parse(const char *s, struct polis_addr *out);

enum polis_lb_kind {
    POLIS_LB_ROUND_ROBIN = 0, /* every instance in turn (weights ignored) */
    POLIS_LB_WEIGHTED,        /* smooth weighted round-robin */
    POLIS_LB_LEAST_REQUEST,   /* power of two choices on active requests (weight-aware) */
    POLIS_LB_HASH,            /* consistent hashing on hash_on */
};

enum polis_hash_on {
    POLIS_HASH_CLIENT_IP = 0,
    POLIS_HASH_HEADER, /* hash_key names the header */
    POLIS_HASH_COOKIE, /* hash_key names the cookie */
};

struct polis_header_kv {
    char *name;
    char *value;
};

/* One instance of a cluster: listed in the configuration (static discovery) or found by a
 * discovery source (the same structure, built by the source). */
struct polis_instance_cfg {
    struct polis_addr addr;
    uint32_t weight;              /* 1..10000, default 1 */
    char *id;                     /* NULL for static instances (their address names them) */
    struct polis_header_kv *meta; /* metadata ("version": "v2", "zone": "a"), for subsets */
    size_t num_meta;
};

/* Where a cluster's instances come from. */
enum polis_discovery_kind {
    POLIS_DISC_STATIC = 0, /* instances: in the configuration */
    POLIS_DISC_REGISTRY,   /* the embedded registry (registry: enabled) */
    POLIS_DISC_DNS,        /* A/AAAA or SRV records, re-resolved by TTL */
    POLIS_DISC_ETCD,       /* keys under a prefix in etcd v3, followed with a watch */
};

enum polis_dns_type { POLIS_DNS_A = 0 /* A and AAAA */, POLIS_DNS_SRV };

struct polis_discovery_cfg {
    enum polis_discovery_kind kind;
    char *service; /* REGISTRY: the service's name (default: the cluster's name) */
    /* DNS */
    char *dns_name;
    enum polis_dns_type dns_type;
    uint16_t dns_port;       /* A/AAAA: the instances' port (required) */
    char *dns_server;        /* "127.0.0.1:5353"; NULL: the system's resolvers */
    uint64_t dns_min_ttl_ms; /* re-resolve no sooner than this: 1 s */
    uint64_t dns_max_ttl_ms; /* nor later than this, whatever the TTL: 30 s */
    /* ETCD */
    char **etcd_endpoints; /* "http://127.0.0.1:2379"; tried in turn */
    size_t num_etcd_endpoints;
    char *etcd_prefix; /* keys "<prefix><id>" hold JSON {"address","port","metadata"} */
};

/* Active HTTP health checks of every instance of a cluster. */
struct polis_health_check_cfg {
    bool enabled;
    char *path;                   /* default "/health" */
    char *host;                   /* Host header; NULL: the instance's address */
    uint64_t interval_ms;         /* 5 s */
    uint64_t timeout_ms;          /* 1 s */
    uint64_t jitter_ms;           /* up to this much added to each interval: 10% of interval */
    uint32_t healthy_threshold;   /* consecutive passes to become healthy: 2 */
    uint32_t unhealthy_threshold; /* consecutive failures to become unhealthy: 3 */
    uint16_t (*statuses)[2];      /* expected status ranges [lo, hi]; default one: 200-399 */
    size_t num_statuses;
};

/* Passive outlier detection: instances that fail in a row are ejected for a while. */
struct polis_outlier_cfg {
    bool enabled;
    uint32_t consecutive_5xx;              /* any 5xx answer or gateway error: 5 (0: off) */
    uint32_t consecutive_gateway_errors;   /* 502/503/504 and connect/reset/timeout: 3 (0: off) */
    uint32_t consecutive_connect_failures; /* connect failures only: 2 (0: off) */
    uint64_t base_ejection_ms;             /* the n-th ejection in a row lasts n times this: 30 s */
    uint64_t max_ejection_ms;              /* 300 s */
    uint32_t max_ejection_percent;         /* of the cluster's instances: 50 */
};

enum polis_window_kind { POLIS_WINDOW_COUNT = 0, POLIS_WINDOW_TIME };

/* A circuit breaker (closed, open, half-open). */
struct polis_breaker_cfg {
    bool enabled;
    enum polis_window_kind window;
    uint32_t window_size;          /* COUNT: calls (100); TIME: seconds (10) */
    uint32_t min_calls;            /* no rate is judged on fewer calls: 20 */
    uint32_t failure_rate;         /* percent of failed calls that opens it: 50 (0: off) */
    uint32_t slow_call_rate;       /* percent of slow calls that opens it: 0 (off) */
    uint64_t slow_call_ms;         /* a call slower than this is slow: 5 s */
    uint32_t consecutive_failures; /* failures in a row that open it: 0 (off) */
    uint64_t open_ms;              /* wait in open before half-open: 30 s */
    uint32_t half_open_calls;      /* probes allowed in half-open: 3 */
};

/* What is retried, how often and how fast. */
enum {
    POLIS_RETRY_CONNECT = 1u << 0, /* connect failure (never reached the instance) */
    POLIS_RETRY_RESET = 1u << 1,   /* reset or closed before any answer byte */
    POLIS_RETRY_TIMEOUT = 1u << 2, /* per-try timeout before any answer byte */
    POLIS_RETRY_STATUS = 1u << 3,  /* an answer whose status is in statuses */
};

struct polis_retry_cfg {
    uint32_t attempts;  /* tries in all, the first included: 3 (1: no retries) */
    uint32_t on;        /* POLIS_RETRY_* bits: connect|reset */
    uint16_t *statuses; /* for POLIS_RETRY_STATUS, e.g. 503 */
    size_t num_statuses;
    uint64_t backoff_base_ms;    /* full jitter: sleep random [0, min(max, base * 2^n)): 25 ms */
    uint64_t backoff_max_ms;     /* 250 ms */
    uint64_t per_try_timeout_ms; /* 0: the route's or cluster's timeout */
    uint64_t deadline_ms;        /* all tries together: 0 = none */
    uint32_t budget_percent;     /* retries active at once at most this % of active requests: 20 */
    uint32_t budget_min;         /* ... but always allow this many: 3 */
};

/* Matching a subset of a cluster's instances by metadata: every pair must be equal. */
struct polis_subset_cfg {
    struct polis_header_kv *match; /* NULL/0: every instance */
    size_t num_match;
};

struct polis_split_cfg {
    struct polis_subset_cfg subset;
    uint32_t weight; /* 0..10000; the split's share is weight / sum of weights */
};

struct polis_fault_cfg {
    uint64_t delay_ms;    /* 0: no delay */
    double delay_percent; /* 0..100 */
    int abort_status;     /* 0: no abort; else 200..599 */
    double abort_percent; /* 0..100 */
};

struct polis_mirror_cfg {
    bool enabled;
    struct polis_subset_cfg subset; /* mirrored to these instances of the route's cluster */
    double percent;                 /* of requests mirrored: 100 */
    char **compare_headers;         /* response headers compared (case-insensitive) */
    size_t num_compare_headers;
    char **ignore_fields; /* JSON body fields ignored ("a.b" paths) */
    size_t num_ignore_fields;
};

/* ---- Edge security ---------------------------------------------------------------------- */

/* An IPv4 or IPv6 network: "10.0.0.0/8", "fd00::/8"; a bare address is one host (/32, /128). */
struct polis_cidr {
    int family;       /* AF_INET or AF_INET6 */
    uint8_t addr[16]; /* the network in network byte order (IPv4: the first 4 bytes); host bits 0 */
    uint8_t prefix;   /* 0..32 (IPv4) or 0..128 (IPv6) */
};

/* "10.0.0.0/8", "::1/128", "10.1.2.3" into out. Host bits past the prefix must be 0. Returns 0
 * or POLIS_EINVAL. */
int polis__cidr_parse(const char *s, struct polis_cidr *out);

/* Whether the address (struct sockaddr_in or sockaddr_in6) is inside the network. An IPv4-mapped
 * IPv6 address (::ffff:10.0.0.1) is compared as the IPv4 address; other families never match.
 * Reads only its arguments: any thread may call it. */
bool polis__cidr_match(const struct polis_cidr *net, const struct sockaddr *sa);

/* IP allow and deny lists (top level: the peer at accept; a route: the client address). Both
 * empty: everyone. deny wins over allow; a non-empty allow admits only its networks. */
struct polis_access_cfg {
    struct polis_cidr *allow;
    size_t num_allow;
    struct polis_cidr *deny;
    size_t num_deny;
};

enum polis_cfg_tls_version { POLIS_CFG_TLS_1_2 = 0, POLIS_CFG_TLS_1_3 };

enum polis_client_auth {
    POLIS_CLIENT_AUTH_OFF = 0,  /* no client certificate asked for */
    POLIS_CLIENT_AUTH_OPTIONAL, /* asked for; verified when sent; a client without one passes */
    POLIS_CLIENT_AUTH_REQUIRED, /* a verified client certificate is needed to connect (mTLS) */
};

/* A certificate chain and its private key, PEM files (paths as written: relative ones are
 * relative to the working directory). Checked readable at load, parsed by the runtime. */
struct polis_tls_cert_cfg {
    char *cert; /* the chain, leaf first */
    char *key;
    int line;
};

/* TLS termination on listen. Off (plain HTTP) unless the tls section is present. */
struct polis_tls_cfg {
    bool enabled;
    struct polis_tls_cert_cfg *certs; /* at least one; chosen by SNI, the first is the default */
    size_t num_certs;
    enum polis_cfg_tls_version min_version; /* 1.2 */
    char **alpn; /* protocols offered: "http/1.1" (filled by validation) */
    size_t num_alpn;
    bool session_tickets;               /* resumption by tickets (else by session IDs): true */
    uint64_t session_timeout_ms;        /* how long a session may be resumed: 5 min */
    enum polis_client_auth client_auth; /* off */
    char *client_ca;       /* PEM CAs that sign client certificates; required unless off */
    char *forward_subject; /* header carrying the verified client subject to services, always
                              removed from clients' requests: "X-Client-Subject" (filled by
                              validation) */
};

/* TLS from the gateway to a cluster's instances. Off unless the cluster's tls is present. */
struct polis_upstream_tls_cfg {
    bool enabled;
    char *ca;          /* PEM CAs trusted for the instances; NULL: the system's store */
    bool verify;       /* verify the instance's certificate and name: true */
    char *server_name; /* sent as SNI and verified; NULL: the instance's host */
    char *cert;        /* client certificate (mTLS to services), with key; NULL: none */
    char *key;
};

/* JWT signature algorithms (RFC 7518 names); "none" has no value on purpose. */
enum polis_jwt_alg {
    POLIS_JWT_HS256 = 0,
    POLIS_JWT_HS384,
    POLIS_JWT_HS512,
    POLIS_JWT_RS256,
    POLIS_JWT_RS384,
    POLIS_JWT_RS512,
    POLIS_JWT_PS256,
    POLIS_JWT_ES256,
    POLIS_JWT_ES384,
    POLIS_JWT_EDDSA,
    POLIS_JWT__COUNT
};
/* Their names ("HS256", ..., "EdDSA"), indexed by enum polis_jwt_alg. */
extern const char *const polis__jwt_alg_names[POLIS_JWT__COUNT];
/* The HMAC algorithms, as bits (1u << POLIS_JWT_*). */
#define POLIS_JWT_HMAC_BITS                                                                        \
    ((1u << POLIS_JWT_HS256) | (1u << POLIS_JWT_HS384) | (1u << POLIS_JWT_HS512))

/* One verification key of an issuer: a PEM public key (file) or an HMAC secret (secret_file:
 * the file's bytes), never both; pinned to one algorithm. */
struct polis_jwt_key_cfg {
    char *file;             /* RSA, EC or Ed25519 public key, PEM; not with HS* */
    char *secret_file;      /* only with HS* */
    char *kid;              /* matched against the token's kid; NULL: keys tried by algorithm */
    enum polis_jwt_alg alg; /* required; one of the issuer's algorithms */
    int line;
};

/* A token issuer: which tokens are accepted and with which keys. */
struct polis_jwt_issuer_cfg {
    char *name;       /* what routes refer to */
    char *issuer;     /* the iss claim required, compared exactly */
    char **audiences; /* aud must hold one of them; NULL/0: aud is not checked */
    size_t num_audiences;
    uint32_t algorithms; /* accepted, bits (1u << POLIS_JWT_*); at least one */
    struct polis_jwt_key_cfg *keys;
    size_t num_keys;
    char *jwks_file;              /* a JWK Set file, read at load and on reload */
    char *jwks_url;               /* https:// only; fetched, cached, refreshed */
    char *jwks_ca;                /* PEM CAs for jwks_url; NULL: the system's store */
    uint64_t jwks_refresh_ms;     /* refetch jwks_url this often: 10 min */
    uint64_t jwks_min_refresh_ms; /* but no sooner than this after the last fetch, even on an
                                     unknown kid: 30 s */
    uint64_t leeway_ms;           /* clock skew allowed on exp, nbf and iat: 30 s */
    bool require_exp;             /* a token without exp is refused: true */
    int line;
};

struct polis_jwt_cfg {
    uint32_t cache_size; /* verified tokens cached per gateway (each until its exp): 10000; 0: no
                            cache */
    struct polis_jwt_issuer_cfg *issuers;
    size_t num_issuers;
};

/* Where clients send API keys. */
struct polis_api_keys_cfg {
    char *header; /* "X-API-Key" (filled by validation) */
    char *query;  /* a query parameter also read; NULL: none */
};

/* A consumer of the API, known by its keys (stored as SHA-256 digests, never in clear). */
struct polis_consumer_cfg {
    char *name;
    char **groups;
    size_t num_groups;
    uint8_t (*key_sha256)[32]; /* the SHA-256 of each key; NULL/0: none (JWT only, or admin API) */
    size_t num_keys;
    int line;
};

/* A name that refers to an entry of another list; index is filled by validation. */
struct polis_name_ref {
    char *name;
    size_t index;
};

enum polis_rl_key {
    POLIS_RL_KEY_CLIENT_IP = 0, /* the client address (through trusted_proxies) */
    POLIS_RL_KEY_CONSUMER,      /* the consumer (API key), else the token's iss and sub */
    POLIS_RL_KEY_ROUTE,         /* one bucket per route */
    POLIS_RL_KEY_HEADER,        /* a header's value (key_header); absent: one shared count */
};

enum polis_rl_backend {
    POLIS_RL_LOCAL = 0, /* exact across the workers of one gateway */
    POLIS_RL_REDIS,     /* shared by gateways through redis */
};

/* What a redis-backed limit does while redis cannot be reached. */
enum polis_redis_failure {
    POLIS_REDIS_FAIL_LOCAL = 0, /* limit locally, per gateway, until redis answers again */
    POLIS_REDIS_FAIL_OPEN,      /* let every request through */
    POLIS_REDIS_FAIL_CLOSED,    /* refuse every request (429) */
};

struct polis_redis_cfg {
    char *address;       /* "host:port" as written (the runtime resolves and connects) */
    uint64_t timeout_ms; /* connect and each command: 50 ms */
    enum polis_redis_failure on_failure; /* local */
    char *password_file;                 /* AUTH with the file's first line; NULL: no AUTH */
    uint32_t db;                         /* SELECT: 0 */
    int line;                            /* where redis was written (0: in code) */
};

/* A named rate limit: count requests per period, with a burst, per key. */
struct polis_rate_limit_cfg {
    char *name;
    uint64_t count;     /* requests ... */
    uint64_t period_ms; /* ... per 1 s, 1 min or 1 h */
    uint64_t burst;     /* requests allowed at once above the steady rate: count (filled) */
    enum polis_rl_key key;
    char *key_header; /* POLIS_RL_KEY_HEADER: the header's name */
    enum polis_rl_backend backend;
    struct polis_redis_cfg redis; /* POLIS_RL_REDIS only */
    int line;
};

/* A route's JWT rules. */
struct polis_route_jwt_cfg {
    struct polis_name_ref *issuers; /* NULL/0: any issuer under jwt.issuers */
    size_t num_issuers;
    struct polis_header_kv *required_claims; /* claim name: value (a string, or in an array) */
    size_t num_required_claims;
    char **scopes; /* every one in the token's scope (space-separated) or scp (array) */
    size_t num_scopes;
    struct polis_header_kv *forward_claims; /* claim name: header name sent to the service */
    size_t num_forward_claims;
    bool strip_authorization; /* remove Authorization before the service: false */
};

/* Which consumers a route admits (by name or group). deny wins; a non-empty allow or allow_groups
 * admits only those. */
struct polis_consumer_rules_cfg {
    struct polis_name_ref *allow;
    size_t num_allow;
    char **allow_groups;
    size_t num_allow_groups;
    struct polis_name_ref *deny;
    size_t num_deny;
    char **deny_groups;
    size_t num_deny_groups;
};

/* A route's authentication. Off when neither jwt nor api_key is set. */
struct polis_auth_cfg {
    bool jwt; /* a valid token is needed (rules in jwt_rules) */
    struct polis_route_jwt_cfg jwt_rules;
    bool api_key; /* a consumer's key is needed */
    bool any;     /* jwt and api_key both set: either suffices (false: both are needed) */
    struct polis_consumer_rules_cfg consumers;
    char *forward_consumer; /* header with the consumer's name: "X-Consumer" (filled by
                               validation when api_key is set) */
};

/* CORS for a route: preflights answered by the gateway, headers added to responses. Off unless
 * the cors section is present. */
struct polis_cors_cfg {
    bool enabled;
    char **origins; /* "*" alone, or "scheme://host[:port]" each */
    size_t num_origins;
    char **methods; /* allowed; NULL/0: GET, HEAD, POST */
    size_t num_methods;
    char **headers; /* request headers allowed; NULL/0: only CORS-safelisted ones */
    size_t num_headers;
    char **expose_headers; /* response headers shown to scripts; NULL/0: none */
    size_t num_expose_headers;
    bool credentials;    /* Access-Control-Allow-Credentials: false; never with "*" */
    uint64_t max_age_ms; /* Access-Control-Max-Age (in s); 0: not sent */
};

struct polis_cluster_cfg {
    char *name;
    enum polis_lb_kind lb;
    enum polis_hash_on hash_on;
    char *hash_key; /* header or cookie name, for POLIS_HASH_HEADER/COOKIE */
    struct polis_instance_cfg *instances;
    size_t num_instances;
    uint32_t keepalive;          /* idle upstream connections kept per worker per instance */
    uint64_t connect_timeout_ms; /* default 2 s */
    uint64_t timeout_ms; /* upstream response timeout (first byte and between reads); 30 s */
    struct polis_discovery_cfg discovery;
    struct polis_health_check_cfg health_check;
    struct polis_outlier_cfg outlier;
    struct polis_breaker_cfg breaker;          /* circuit_breaker: the whole cluster */
    struct polis_breaker_cfg instance_breaker; /* instance_circuit_breaker: each instance */
    struct polis_retry_cfg retry;
    uint32_t panic_threshold; /* percent: below this share of available instances, use all: 50 */
    /* Bulkheads, over all workers; 0: no cap. Past one: an immediate 503. */
    uint32_t max_connections; /* upstream connections open */
    uint32_t max_pending;     /* requests waiting for a new upstream connection */
    uint32_t max_requests;    /* requests in flight */
    int line;                 /* where it was defined (0 for quick mode) */
    struct polis_upstream_tls_cfg tls;
};

struct polis_header_ops {
    struct polis_header_kv *add; /* added (after removal), in order */
    size_t num_add;
    char **remove; /* names removed (case-insensitive) */
    size_t num_remove;
};

enum polis_path_kind {
    POLIS_PATH_ANY = 0, /* no path condition */
    POLIS_PATH_EXACT,   /* path: "/users" */
    POLIS_PATH_PREFIX,  /* prefix: "/api/" */
    POLIS_PATH_PATTERN, /* path: "/users/{id}/orders" : {name} matches one non-empty segment */
};

struct polis_header_match {
    char *name;
    char *value; /* NULL: the header must be present; otherwise exact value */
};

struct polis_route_cfg {
    char *name; /* defaults to "route-<index>" */
    /* match */
    char *host; /* NULL: any; "api.example.com" exact (port ignored); "*.example.com" suffix */
    enum polis_path_kind path_kind;
    char *path;     /* the exact path, prefix or pattern */
    char **methods; /* NULL/0: any */
    size_t num_methods;
    struct polis_header_match *headers;
    size_t num_headers;
    /* action */
    char *cluster;        /* cluster name */
    size_t cluster_index; /* resolved by validation */
    bool strip_prefix;    /* PREFIX routes: remove the prefix (the result keeps a leading '/') */
    char *rewrite;        /* NULL or a replacement for the matched path part (prefix or whole) */
    struct polis_header_ops request_headers;
    struct polis_header_ops response_headers;
    uint64_t max_body;                  /* 0: the global limit */
    uint64_t timeout_ms;                /* 0: the cluster's */
    struct polis_header_match *cookies; /* match: cookie values (NULL value: present) */
    size_t num_cookies;
    /* traffic: at most one of subset and splits */
    struct polis_subset_cfg subset; /* only these instances of the cluster */
    struct polis_split_cfg *splits; /* weighted subsets */
    size_t num_splits;
    struct polis_fault_cfg fault;
    struct polis_mirror_cfg mirror;
    struct polis_retry_cfg *retry; /* NULL: the cluster's */
    bool retry_idempotency_key; /* a non-idempotent request with Idempotency-Key may be retried */
    uint32_t max_concurrent;    /* requests in flight on this route (all workers); 0: no cap */
    struct polis_auth_cfg auth;
    struct polis_name_ref *rate_limits; /* every one applies; NULL/0: none */
    size_t num_rate_limits;
    struct polis_cors_cfg cors;
    struct polis_access_cfg access; /* on the client address (through trusted_proxies) */
    int line;
};

struct polis_limits_cfg {
    size_t max_request_line;  /* default 8 KiB */
    size_t max_header_bytes;  /* default 32 KiB: also the size of a connection's head buffer */
    size_t max_headers;       /* default 100 */
    uint64_t max_body;        /* default 64 MiB: 413 past it */
    uint32_t max_connections; /* per worker, default 100000 */
    uint32_t max_connections_per_ip; /* open connections of one peer address, all workers; 0: no
                                        cap (default) */
};

struct polis_timeouts_cfg {
    uint64_t header_read_ms; /* whole request head: 10 s */
    uint64_t body_read_ms;   /* between request body reads: 30 s */
    uint64_t idle_ms;        /* keep-alive idle: 60 s */
    uint64_t request_ms;     /* whole request, first byte to last: 0 = none (default 0) */
    uint64_t drain_ms;       /* SIGTERM: how long in-flight requests may take: 30 s */
};

/* Distributed tracing (OTLP/HTTP JSON). Off unless an endpoint is set. */
struct polis_tracing_cfg {
    char *endpoint;      /* "http://127.0.0.1:4318/v1/traces"; NULL: tracing off */
    char *service_name;  /* default "polis-gateway" */
    double sample_ratio; /* new traces: 0..1, default 0.1; a parent's decision wins */
};

/* The embedded registry: its REST API on the admin listener. */
struct polis_registry_cfg {
    bool enabled;
    uint64_t default_ttl_ms; /* an instance registered without ttl_s: 30 s */
    uint64_t max_ttl_ms;     /* longest ttl_s accepted: 1 h */
    uint64_t max_wait_ms;    /* longest long poll (?wait=): 5 min */
};

struct polis_config {
    char *source; /* file path, or "command line" */
    int workers;  /* 0: number of cores */
    struct polis_addr listen;
    bool has_admin;
    struct polis_addr admin; /* default 127.0.0.1:9901 */
    char *admin_token;       /* NULL, or the bearer token every admin request must carry; required
                                when admin is not a loopback address */
    char *access_log;        /* NULL: off; "-": stdout; else a file path */
    char *error_log;         /* NULL or "-": stderr; else a file path */
    uint32_t access_log_fields; /* bit (1 << POLIS_ALOG_*) per field logged */
    struct polis_limits_cfg limits;
    struct polis_timeouts_cfg timeouts;
    struct polis_tracing_cfg tracing;
    struct polis_registry_cfg registry;
    struct polis_cluster_cfg *clusters;
    size_t num_clusters;
    struct polis_route_cfg *routes;
    size_t num_routes;
    /* Edge security: all off when absent. */
    struct polis_tls_cfg tls;
    struct polis_jwt_cfg jwt;
    struct polis_api_keys_cfg api_keys;
    struct polis_consumer_cfg *consumers;
    size_t num_consumers;
    struct polis_rate_limit_cfg *rate_limits;
    size_t num_rate_limits;
    struct polis_cidr *trusted_proxies; /* peers whose X-Forwarded-For/Forwarded are believed */
    size_t num_trusted_proxies;
    struct polis_access_cfg access; /* on the peer address, at accept */
};

/* The access log's fields, in the order they are written. */
enum polis_alog_field {
    POLIS_ALOG_TS,
    POLIS_ALOG_REQUEST_ID,
    POLIS_ALOG_TRACE_ID,
    POLIS_ALOG_CLIENT,
    POLIS_ALOG_METHOD,
    POLIS_ALOG_PATH,
    POLIS_ALOG_HOST,
    POLIS_ALOG_STATUS,
    POLIS_ALOG_BYTES_RECEIVED,
    POLIS_ALOG_BYTES_SENT,
    POLIS_ALOG_DURATION_MS,
    POLIS_ALOG_UPSTREAM,
    POLIS_ALOG_UPSTREAM_CONNECT_MS,
    POLIS_ALOG_UPSTREAM_MS,
    POLIS_ALOG_ATTEMPTS,
    POLIS_ALOG_ROUTE,
    POLIS_ALOG_CLUSTER,
    POLIS_ALOG__COUNT
};
/* Their names in the configuration and in the log lines, indexed by enum polis_alog_field. */
extern const char *const polis__alog_field_names[POLIS_ALOG__COUNT];

/* Errors found while loading, each "file:line: what was found, what was expected". */
struct polis_config_errors {
    char **msgs;
    size_t count;
};

void polis__config_errors_free(struct polis_config_errors *e);

/* Fill cfg with the defaults (no listener, clusters or routes). */
void polis__config_defaults(struct polis_config *cfg);

/* Load and validate a YAML file. Returns 0 and a new configuration in *out, or POLIS_EINVAL with
 * every error found in *errs (the caller frees them), or POLIS_ESYS when the file cannot be read
 * (the message is in *errs too). */
int polis__config_load_file(const char *path, struct polis_config **out,
                            struct polis_config_errors *errs);
/* The same from a string (name is used in messages). */
int polis__config_load_string(const char *yaml, size_t len, const char *name,
                              struct polis_config **out, struct polis_config_errors *errs);

/* Check cross references and values of a configuration built in code (quick mode); also run by
 * the loaders. Fills cluster_index of routes. Returns 0 or POLIS_EINVAL with errs filled. */
int polis__config_validate(struct polis_config *cfg, struct polis_config_errors *errs);

void polis__config_free(struct polis_config *cfg);

#endif
