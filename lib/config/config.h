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

struct polis_instance_cfg {
    struct polis_addr addr;
    uint32_t weight; /* 1..10000, default 1 */
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
    int line;            /* where it was defined (0 for quick mode) */
};

struct polis_header_kv {
    char *name;
    char *value;
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
    uint64_t max_body;   /* 0: the global limit */
    uint64_t timeout_ms; /* 0: the cluster's */
    int line;
};

struct polis_limits_cfg {
    size_t max_request_line;  /* default 8 KiB */
    size_t max_header_bytes;  /* default 32 KiB: also the size of a connection's head buffer */
    size_t max_headers;       /* default 100 */
    uint64_t max_body;        /* default 64 MiB: 413 past it */
    uint32_t max_connections; /* per worker, default 100000 */
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
    struct polis_cluster_cfg *clusters;
    size_t num_clusters;
    struct polis_route_cfg *routes;
    size_t num_routes;
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
