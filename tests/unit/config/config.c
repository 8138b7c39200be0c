/* Unit tests of lib/config/config.c: the YAML loader, its file:line errors, validation of
 * configurations built in code, addresses, and the example files of the documentation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "config/config.h"

#include <arpa/inet.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A valid start for snippets that test one thing further down (line 1). */
#define LISTEN "listen: \":8080\"\n"
#define CLUSTER "clusters:\n  - name: users\n    instances: [\"127.0.0.1:9001\"]\n"

static int load(const char *yaml, struct polis_config **cfg, struct polis_config_errors *e)
{
    return polis__config_load_string(yaml, strlen(yaml), "t.yaml", cfg, e);
}

static void dump(const struct polis_config_errors *e)
{
    for (size_t i = 0; i < e->count; i++)
        print_message("  got: %s\n", e->msgs[i]);
}

static bool has_msg(const struct polis_config_errors *e, const char *want)
{
    for (size_t i = 0; i < e->count; i++) {
        if (strcmp(e->msgs[i], want) == 0)
            return true;
    }
    return false;
}

/* Load yaml, which must fail, and find the exact message want among the errors. */
static void expect_error(const char *yaml, const char *want)
{
    struct polis_config *cfg = (struct polis_config *)1;
    struct polis_config_errors e = {0};
    int rc = load(yaml, &cfg, &e);
    if (rc != POLIS_EINVAL || cfg != NULL || !has_msg(&e, want)) {
        print_message("yaml:\n%s\nwanted: %s\n", yaml, want);
        dump(&e);
        polis__config_errors_free(&e);
        fail_msg("rc %d", rc);
    }
    polis__config_errors_free(&e);
}

/* Load yaml, which must fail, with exactly one error that starts with prefix and holds part. */
static void expect_one(const char *yaml, const char *prefix, const char *part)
{
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    int rc = load(yaml, &cfg, &e);
    if (rc != POLIS_EINVAL || cfg || e.count != 1 || strncmp(e.msgs[0], prefix, strlen(prefix)) ||
        !strstr(e.msgs[0], part)) {
        print_message("yaml:\n%s\nwanted one error: %s...%s\n", yaml, prefix, part);
        dump(&e);
        polis__config_errors_free(&e);
        polis__config_free(cfg);
        fail_msg("rc %d", rc);
    }
    polis__config_errors_free(&e);
}

static struct polis_config *expect_ok(const char *yaml)
{
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    int rc = load(yaml, &cfg, &e);
    if (rc != 0 || !cfg || e.count) {
        print_message("yaml:\n%s\n", yaml);
        dump(&e);
        polis__config_errors_free(&e);
        fail_msg("rc %d", rc);
    }
    return cfg;
}

/* ---- Good configurations ----------------------------------------------------------------- */

static void test_defaults(void **state)
{
    struct polis_config cfg;
    polis__config_defaults(&cfg);
    assert_int_equal(cfg.workers, 0);
    assert_int_equal(cfg.listen.len, 0);
    assert_true(cfg.has_admin);
    assert_string_equal(cfg.admin.text, "127.0.0.1:9901");
    assert_int_equal(cfg.admin.ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&cfg.admin.ss)->sin_port), 9901);
    assert_null(cfg.access_log);
    assert_int_equal(cfg.limits.max_request_line, 8192);
    assert_int_equal(cfg.limits.max_header_bytes, 32768);
    assert_int_equal(cfg.limits.max_headers, 100);
    assert_int_equal(cfg.limits.max_body, 64u << 20);
    assert_int_equal(cfg.limits.max_connections, 100000);
    assert_int_equal(cfg.timeouts.header_read_ms, 10000);
    assert_int_equal(cfg.timeouts.body_read_ms, 30000);
    assert_int_equal(cfg.timeouts.idle_ms, 60000);
    assert_int_equal(cfg.timeouts.request_ms, 0);
    assert_int_equal(cfg.timeouts.drain_ms, 30000);
    assert_int_equal(cfg.num_clusters, 0);
    assert_int_equal(cfg.num_routes, 0);
}

static void test_minimal_defaults(void **state)
{
    struct polis_config *cfg = expect_ok(LISTEN CLUSTER "routes:\n  - cluster: users\n");
    assert_string_equal(cfg->source, "t.yaml");
    assert_string_equal(cfg->listen.text, "0.0.0.0:8080");
    assert_true(cfg->has_admin);
    assert_string_equal(cfg->admin.text, "127.0.0.1:9901");
    assert_null(cfg->access_log);
    assert_int_equal(cfg->limits.max_body, 64u << 20);
    assert_int_equal(cfg->timeouts.idle_ms, 60000);
    assert_int_equal(cfg->num_clusters, 1);
    const struct polis_cluster_cfg *c = &cfg->clusters[0];
    assert_int_equal(c->lb, POLIS_LB_ROUND_ROBIN);
    assert_null(c->hash_key);
    assert_int_equal(c->keepalive, 64);
    assert_int_equal(c->connect_timeout_ms, 2000);
    assert_int_equal(c->timeout_ms, 30000);
    assert_int_equal(c->num_instances, 1);
    assert_int_equal(c->instances[0].weight, 1);
    assert_int_equal(c->line, 3);
    assert_int_equal(cfg->num_routes, 1);
    const struct polis_route_cfg *r = &cfg->routes[0];
    assert_string_equal(r->name, "route-0");
    assert_null(r->host);
    assert_int_equal(r->path_kind, POLIS_PATH_ANY);
    assert_null(r->path);
    assert_null(r->methods);
    assert_int_equal(r->num_headers, 0);
    assert_string_equal(r->cluster, "users");
    assert_int_equal(r->cluster_index, 0);
    assert_false(r->strip_prefix);
    assert_null(r->rewrite);
    assert_int_equal(r->max_body, 0);
    assert_int_equal(r->timeout_ms, 0);
    assert_int_equal(r->request_headers.num_add + r->request_headers.num_remove, 0);
    assert_int_equal(r->line, 6);
    polis__config_free(cfg);
}

static const char FULL[] = "workers: 3\n"                                            /* 1 */
                           "listen: \"127.0.0.1:8081\"\n"                            /* 2 */
                           "admin: \"[::1]:9902\"\n"                                 /* 3 */
                           "access_log: /var/log/polis.log\n"                        /* 4 */
                           "limits:\n"                                               /* 5 */
                           "  max_request_line: 4k\n"                                /* 6 */
                           "  max_header_bytes: 16KiB\n"                             /* 7 */
                           "  max_headers: 50\n"                                     /* 8 */
                           "  max_body: 10MB\n"                                      /* 9 */
                           "  max_connections: 5000\n"                               /* 10 */
                           "timeouts:\n"                                             /* 11 */
                           "  header_read: 5s\n"                                     /* 12 */
                           "  body_read: 1500\n"                                     /* 13 */
                           "  idle: 2m\n"                                            /* 14 */
                           "  request: 1h\n"                                         /* 15 */
                           "  drain: 0\n"                                            /* 16 */
                           "clusters:\n"                                             /* 17 */
                           "  - name: users\n"                                       /* 18 */
                           "    balance: hash\n"                                     /* 19 */
                           "    hash_on: \"header:X-User-Id\"\n"                     /* 20 */
                           "    keepalive: 10\n"                                     /* 21 */
                           "    connect_timeout: 250ms\n"                            /* 22 */
                           "    timeout: 7s\n"                                       /* 23 */
                           "    instances:\n"                                        /* 24 */
                           "      - \"127.0.0.1:9001\"\n"                            /* 25 */
                           "      - address: \"[::1]:9002\"\n"                       /* 26 */
                           "        weight: 3\n"                                     /* 27 */
                           "  - name: orders.v2_x-y\n"                               /* 28 */
                           "    balance: least_request\n"                            /* 29 */
                           "    instances: [\"127.0.0.1:9003\"]\n"                   /* 30 */
                           "  - name: s\n"                                           /* 31 */
                           "    balance: hash\n"                                     /* 32 */
                           "    hash_on: cookie:session\n"                           /* 33 */
                           "    instances: [\"127.0.0.1:9004\"]\n"                   /* 34 */
                           "  - name: w\n"                                           /* 35 */
                           "    balance: weighted\n"                                 /* 36 */
                           "    instances: [\"127.0.0.1:9005\"]\n"                   /* 37 */
                           "  - name: ip\n"                                          /* 38 */
                           "    balance: hash\n"                                     /* 39 */
                           "    hash_on: client_ip\n"                                /* 40 */
                           "    instances: [\"127.0.0.1:9006\"]\n"                   /* 41 */
                           "routes:\n"                                               /* 42 */
                           "  - name: user-detail\n"                                 /* 43 */
                           "    match:\n"                                            /* 44 */
                           "      host: \"api.example.com\"\n"                       /* 45 */
                           "      path: \"/users/{id}/x\"\n"                         /* 46 */
                           "      methods: [GET, HEAD]\n"                            /* 47 */
                           "      headers:\n"                                        /* 48 */
                           "        X-Canary: \"1\"\n"                               /* 49 */
                           "        X-Debug: true\n"                                 /* 50 */
                           "        X-Str: \"true\"\n"                               /* 51 */
                           "    cluster: users\n"                                    /* 52 */
                           "    rewrite: \"/v2/\"\n"                                 /* 53 */
                           "    max_body: 1MiB\n"                                    /* 54 */
                           "    timeout: 5s\n"                                       /* 55 */
                           "    request_headers:\n"                                  /* 56 */
                           "      add: { X-Gateway: polis, X-Two: \"a b\" }\n"       /* 57 */
                           "      remove: [X-Internal]\n"                            /* 58 */
                           "    response_headers:\n"                                 /* 59 */
                           "      add: { X-Served-By: polis }\n"                     /* 60 */
                           "      remove: [Server, X-Powered-By]\n"                  /* 61 */
                           "  - match: { host: \"*.example.com\", prefix: /api/ }\n" /* 62 */
                           "    cluster: orders.v2_x-y\n"                            /* 63 */
                           "    strip_prefix: true\n"                                /* 64 */
                           "  - match: { path: /exact }\n"                           /* 65 */
                           "    cluster: ip\n";                                      /* 66 */

static void test_full(void **state)
{
    struct polis_config *cfg = expect_ok(FULL);
    assert_int_equal(cfg->workers, 3);
    assert_string_equal(cfg->listen.text, "127.0.0.1:8081");
    assert_int_equal(cfg->listen.len, sizeof(struct sockaddr_in));
    assert_true(cfg->has_admin);
    assert_string_equal(cfg->admin.text, "[::1]:9902");
    assert_int_equal(cfg->admin.ss.ss_family, AF_INET6);
    assert_int_equal(cfg->admin.len, sizeof(struct sockaddr_in6));
    assert_string_equal(cfg->access_log, "/var/log/polis.log");
    assert_int_equal(cfg->limits.max_request_line, 4096);
    assert_int_equal(cfg->limits.max_header_bytes, 16384);
    assert_int_equal(cfg->limits.max_headers, 50);
    assert_int_equal(cfg->limits.max_body, 10000000);
    assert_int_equal(cfg->limits.max_connections, 5000);
    assert_int_equal(cfg->timeouts.header_read_ms, 5000);
    assert_int_equal(cfg->timeouts.body_read_ms, 1500);
    assert_int_equal(cfg->timeouts.idle_ms, 120000);
    assert_int_equal(cfg->timeouts.request_ms, 3600000);
    assert_int_equal(cfg->timeouts.drain_ms, 0);

    assert_int_equal(cfg->num_clusters, 5);
    const struct polis_cluster_cfg *c = &cfg->clusters[0];
    assert_string_equal(c->name, "users");
    assert_int_equal(c->lb, POLIS_LB_HASH);
    assert_int_equal(c->hash_on, POLIS_HASH_HEADER);
    assert_string_equal(c->hash_key, "X-User-Id");
    assert_int_equal(c->keepalive, 10);
    assert_int_equal(c->connect_timeout_ms, 250);
    assert_int_equal(c->timeout_ms, 7000);
    assert_int_equal(c->line, 18);
    assert_int_equal(c->num_instances, 2);
    assert_string_equal(c->instances[0].addr.text, "127.0.0.1:9001");
    assert_int_equal(c->instances[0].weight, 1);
    assert_string_equal(c->instances[1].addr.text, "[::1]:9002");
    assert_int_equal(c->instances[1].weight, 3);
    const struct sockaddr_in6 *s6 = (const void *)&c->instances[1].addr.ss;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(s6->sin6_port), 9002);
    assert_string_equal(cfg->clusters[1].name, "orders.v2_x-y");
    assert_int_equal(cfg->clusters[1].lb, POLIS_LB_LEAST_REQUEST);
    assert_int_equal(cfg->clusters[2].lb, POLIS_LB_HASH);
    assert_int_equal(cfg->clusters[2].hash_on, POLIS_HASH_COOKIE);
    assert_string_equal(cfg->clusters[2].hash_key, "session");
    assert_int_equal(cfg->clusters[3].lb, POLIS_LB_WEIGHTED);
    assert_int_equal(cfg->clusters[4].hash_on, POLIS_HASH_CLIENT_IP);
    assert_null(cfg->clusters[4].hash_key);

    assert_int_equal(cfg->num_routes, 3);
    const struct polis_route_cfg *r = &cfg->routes[0];
    assert_string_equal(r->name, "user-detail");
    assert_int_equal(r->line, 43);
    assert_string_equal(r->host, "api.example.com");
    assert_int_equal(r->path_kind, POLIS_PATH_PATTERN);
    assert_string_equal(r->path, "/users/{id}/x");
    assert_int_equal(r->num_methods, 2);
    assert_string_equal(r->methods[0], "GET");
    assert_string_equal(r->methods[1], "HEAD");
    assert_int_equal(r->num_headers, 3);
    assert_string_equal(r->headers[0].name, "X-Canary");
    assert_string_equal(r->headers[0].value, "1");
    assert_string_equal(r->headers[1].name, "X-Debug");
    assert_null(r->headers[1].value);
    assert_string_equal(r->headers[2].name, "X-Str");
    assert_string_equal(r->headers[2].value, "true");
    assert_string_equal(r->cluster, "users");
    assert_int_equal(r->cluster_index, 0);
    assert_false(r->strip_prefix);
    assert_string_equal(r->rewrite, "/v2/");
    assert_int_equal(r->max_body, 1u << 20);
    assert_int_equal(r->timeout_ms, 5000);
    assert_int_equal(r->request_headers.num_add, 2);
    assert_string_equal(r->request_headers.add[0].name, "X-Gateway");
    assert_string_equal(r->request_headers.add[0].value, "polis");
    assert_string_equal(r->request_headers.add[1].name, "X-Two");
    assert_string_equal(r->request_headers.add[1].value, "a b");
    assert_int_equal(r->request_headers.num_remove, 1);
    assert_string_equal(r->request_headers.remove[0], "X-Internal");
    assert_int_equal(r->response_headers.num_add, 1);
    assert_string_equal(r->response_headers.add[0].name, "X-Served-By");
    assert_string_equal(r->response_headers.add[0].value, "polis");
    assert_int_equal(r->response_headers.num_remove, 2);
    assert_string_equal(r->response_headers.remove[1], "X-Powered-By");

    r = &cfg->routes[1];
    assert_string_equal(r->name, "route-1");
    assert_string_equal(r->host, "*.example.com");
    assert_int_equal(r->path_kind, POLIS_PATH_PREFIX);
    assert_string_equal(r->path, "/api/");
    assert_true(r->strip_prefix);
    assert_int_equal(r->cluster_index, 1);
    assert_int_equal(r->num_methods, 0);
    r = &cfg->routes[2];
    assert_int_equal(r->path_kind, POLIS_PATH_EXACT);
    assert_string_equal(r->path, "/exact");
    assert_int_equal(r->cluster_index, 4);
    polis__config_free(cfg);
}

static void test_admin_access_log_off(void **state)
{
    struct polis_config *cfg = expect_ok(LISTEN "admin: off\naccess_log: off\n");
    assert_false(cfg->has_admin);
    assert_null(cfg->access_log);
    polis__config_free(cfg);
    cfg = expect_ok(LISTEN "access_log: \"-\"\nworkers: 0\n");
    assert_string_equal(cfg->access_log, "-");
    assert_true(cfg->has_admin);
    polis__config_free(cfg);
    /* No clusters or routes at all is a valid (if useless) gateway. */
    cfg = expect_ok(LISTEN "clusters: []\nroutes: []\n");
    assert_int_equal(cfg->num_clusters + cfg->num_routes, 0);
    polis__config_free(cfg);
}

/* ---- Errors, one rule each ---------------------------------------------------------------- */

static void test_spec_unknown_cluster(void **state)
{
    expect_error(LISTEN "clusters:\n"
                        "  - name: users\n"
                        "    instances: [\"127.0.0.1:1\"]\n"
                        "  - name: orders\n"
                        "    instances: [\"127.0.0.1:2\"]\n"
                        "routes:\n"
                        "  - cluster: users\n"
                        "  - match: { prefix: / }\n"
                        "    cluster: userz\n",
                 "t.yaml:10: routes[1].cluster: unknown cluster 'userz'; expected one of: users, "
                 "orders");
    expect_error(LISTEN "routes:\n  - cluster: nope\n",
                 "t.yaml:3: routes[0].cluster: unknown cluster 'nope'; expected the name of a "
                 "cluster under clusters (none is defined)");
    expect_error(LISTEN CLUSTER "routes:\n  - match: { prefix: / }\n",
                 "t.yaml:6: routes[0]: no cluster; expected cluster: <name of a cluster>");
}

static void test_unknown_keys(void **state)
{
    expect_error(LISTEN "listn: \":80\"\n",
                 "t.yaml:2: unknown key 'listn'; expected one of: workers, listen, admin, "
                 "admin_token, access_log, access_log_fields, error_log, limits, timeouts, "
                 "tracing, clusters, routes, registry, tls, jwt, api_keys, consumers, "
                 "rate_limits, trusted_proxies, access");
    expect_error(LISTEN "limits:\n  max_bdy: 1\n",
                 "t.yaml:3: limits: unknown key 'max_bdy'; expected one of: max_request_line, "
                 "max_header_bytes, max_headers, max_body, max_connections, "
                 "max_connections_per_ip");
    expect_error(LISTEN "timeouts: { iddle: 5s }\n",
                 "t.yaml:2: timeouts: unknown key 'iddle'; expected one of: header_read, "
                 "body_read, idle, request, drain");
    expect_error(LISTEN CLUSTER "    weight: 2\n",
                 "t.yaml:5: clusters[0]: unknown key 'weight'; expected one of: name, balance, "
                 "hash_on, keepalive, instances, connect_timeout, timeout, discovery, "
                 "health_check, outlier_detection, circuit_breaker, instance_circuit_breaker, "
                 "retry, panic_threshold, max_connections, max_pending, max_requests, tls");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { hots: a }\n",
                 "t.yaml:7: routes[0].match: unknown key 'hots'; expected one of: host, path, "
                 "prefix, methods, headers, cookies");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    clster: users\n",
                 "t.yaml:7: routes[0]: unknown key 'clster'; expected one of: name, match, "
                 "cluster, strip_prefix, rewrite, max_body, timeout, request_headers, "
                 "response_headers, subset, split, fault, mirror, retry, retry_idempotency_key, "
                 "max_concurrent, auth, rate_limit, cors, access");
    expect_error(LISTEN CLUSTER
                 "routes:\n  - cluster: users\n    request_headers: { ad: { A: b } }\n",
                 "t.yaml:7: routes[0].request_headers: unknown key 'ad'; expected one of: add, "
                 "remove");
    expect_error(LISTEN "clusters:\n  - name: a\n    instances:\n      - { address: "
                        "\"127.0.0.1:1\", wieght: 2 }\n",
                 "t.yaml:5: clusters[0].instances[0]: unknown key 'wieght'; expected one of: "
                 "address, weight, metadata");
}

static void test_wrong_types(void **state)
{
    expect_error("listen: [1, 2]\n", "t.yaml:1: listen: found a list; expected an address like "
                                     "0.0.0.0:8080, [::1]:8080, :8080 or localhost:8080");
    expect_error(LISTEN "limits: 5\n", "t.yaml:2: limits: found '5'; expected a mapping of limits");
    expect_error(LISTEN "workers: two\n",
                 "t.yaml:2: workers: found 'two'; expected an integer in 0..256");
    expect_error(LISTEN "workers: -1\n",
                 "t.yaml:2: workers: found '-1'; expected an integer in 0..256");
    expect_error(LISTEN "clusters: { name: a }\n",
                 "t.yaml:2: clusters: found a mapping; expected a list of clusters");
    expect_error(LISTEN "routes: x\n", "t.yaml:2: routes: found 'x'; expected a list of routes");
    expect_error(LISTEN "clusters:\n  - users\n",
                 "t.yaml:3: clusters[0]: found 'users'; expected a mapping with name and "
                 "instances");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    strip_prefix: yes\n",
                 "t.yaml:7: routes[0].strip_prefix: found 'yes'; expected true or false");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: { a: 1 }\n",
                 "t.yaml:6: routes[0].cluster: found a mapping; expected a cluster name");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { methods: GET }\n",
                 "t.yaml:7: routes[0].match.methods: found 'GET'; expected a non-empty list of "
                 "methods like [GET, HEAD]");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { methods: [] }\n",
                 "t.yaml:7: routes[0].match.methods: found a list; expected a non-empty list of "
                 "methods like [GET, HEAD]");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match:\n      headers:\n"
                                "        X-A: false\n",
                 "t.yaml:9: routes[0].match.headers.X-A: found 'false'; expected a string value, "
                 "or true for presence only");
    expect_error(LISTEN "clusters:\n  - name: a\n    instances:\n      - [1]\n",
                 "t.yaml:5: clusters[0].instances[0]: found a list; expected an address string, "
                 "or a mapping with address, weight and metadata");
    expect_error("listen:\n", "t.yaml:1: listen: found nothing; expected an address like "
                              "0.0.0.0:8080, [::1]:8080, :8080 or localhost:8080");
    expect_error("- a\n", "t.yaml:1: found a list; expected a mapping of settings (listen, "
                          "clusters, routes, ...)");
    /* A NUL byte inside a quoted value is refused, not cut short. */
    expect_error(LISTEN "access_log: \"/tmp/a\\0b\"\n",
                 "t.yaml:2: access_log: found '/tmp/a\\x00b'; expected \"-\" (stdout), a file "
                 "path or off");
}

static void test_ranges(void **state)
{
    expect_error(LISTEN "workers: 257\n",
                 "t.yaml:2: workers: found '257', out of range; expected 0..256");
    expect_error(LISTEN "workers: 99999999999999999999999\n",
                 "t.yaml:2: workers: found '99999999999999999999999'; expected an integer in "
                 "0..256");
    expect_error(LISTEN "limits:\n  max_request_line: 255\n",
                 "t.yaml:3: limits.max_request_line: found '255', out of range; expected "
                 "256B..1MiB");
    expect_error(LISTEN "limits:\n  max_header_bytes: 2MiB\n",
                 "t.yaml:3: limits.max_header_bytes: found '2MiB', out of range; expected "
                 "1KiB..1MiB");
    expect_error(LISTEN "limits:\n  max_request_line: 64KiB\n  max_header_bytes: 32KiB\n",
                 "t.yaml:3: limits.max_request_line: 64KiB is larger than max_header_bytes "
                 "32KiB; expected at most max_header_bytes (the request line is part of the "
                 "head)");
    expect_error(LISTEN "limits:\n  max_headers: 0\n",
                 "t.yaml:3: limits.max_headers: found '0', out of range; expected 1..1000");
    expect_error(LISTEN "limits:\n  max_headers: 1001\n",
                 "t.yaml:3: limits.max_headers: found '1001', out of range; expected 1..1000");
    expect_error(LISTEN "limits:\n  max_body: 0\n",
                 "t.yaml:3: limits.max_body: found '0', out of range; expected 1B..1024TiB");
    expect_error(LISTEN "limits:\n  max_body: 1025TiB\n",
                 "t.yaml:3: limits.max_body: found '1025TiB', out of range; expected "
                 "1B..1024TiB");
    expect_error(LISTEN "limits:\n  max_connections: 0\n",
                 "t.yaml:3: limits.max_connections: found '0', out of range; expected "
                 "1..10000000");
    expect_error(LISTEN "timeouts:\n  idle: 0\n",
                 "t.yaml:3: timeouts.idle: found '0', out of range; expected 1ms..24h");
    expect_error(LISTEN "timeouts:\n  drain: 25h\n",
                 "t.yaml:3: timeouts.drain: found '25h', out of range; expected 0..24h");
    expect_error(LISTEN "clusters:\n  - name: a\n    keepalive: 10001\n    instances: "
                        "[\":1\"]\n",
                 "t.yaml:4: clusters[0].keepalive: found '10001', out of range; expected "
                 "0..10000");
    expect_error(LISTEN "clusters:\n  - name: a\n    instances:\n      - address: \":1\"\n"
                        "        weight: 10001\n",
                 "t.yaml:6: clusters[0].instances[0].weight: found '10001', out of range; "
                 "expected 1..10000");
    expect_error(LISTEN "clusters:\n  - name: a\n    connect_timeout: 0\n    instances: "
                        "[\":1\"]\n",
                 "t.yaml:4: clusters[0].connect_timeout: found '0', out of range; expected "
                 "1ms..24h");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    timeout: 1441m\n",
                 "t.yaml:7: routes[0].timeout: found '1441m', out of range; expected 0..24h");
}

static void test_bad_durations_sizes(void **state)
{
    expect_error(LISTEN "timeouts:\n  idle: 5 s\n",
                 "t.yaml:3: timeouts.idle: found '5 s'; expected a duration like 500ms, 5s, 2m "
                 "or 1h (a bare number is ms) in 1ms..24h");
    expect_one(LISTEN "timeouts:\n  idle: 5sec\n", "t.yaml:3: timeouts.idle: found '5sec'",
               "expected a duration");
    expect_one(LISTEN "timeouts:\n  idle: -5s\n", "t.yaml:3: timeouts.idle: found '-5s'",
               "expected a duration");
    expect_one(LISTEN "timeouts:\n  idle: \"\"\n", "t.yaml:3: timeouts.idle: found ''",
               "expected a duration");
    expect_one(LISTEN "timeouts:\n  idle: 250us\n", "t.yaml:3: timeouts.idle: found '250us'",
               "expected a duration");
    expect_one(LISTEN "timeouts:\n  idle: 99999999999999999999h\n",
               "t.yaml:3: timeouts.idle: found '99999999999999999999h'", "expected a duration");
    expect_error(LISTEN "limits:\n  max_body: 1 MiB\n",
                 "t.yaml:3: limits.max_body: found '1 MiB'; expected a size like 512, 64KiB, "
                 "1MiB or 10MB in 1B..1024TiB");
    expect_one(LISTEN "limits:\n  max_body: 1mib\n", "t.yaml:3: limits.max_body: found '1mib'",
               "expected a size");
    expect_one(LISTEN "limits:\n  max_body: 99999999999999999999\n",
               "t.yaml:3: limits.max_body: found '99999999999999999999'", "expected a size");
}

static void test_bad_addresses(void **state)
{
    static const char *const bad[] = {
        "8080",   "127.0.0.1",    "127.0.0.1:",      "127.0.0.1:x", "127.0.0.1:65536",
        "::1:80", "[::1]",        "[::1]80",         "[nope]:80",   "1.2.3.4.5:80",
        "a b:80", "127.0.0.1:-1", "127.0.0.1:123456"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char yaml[128], want[256];
        snprintf(yaml, sizeof(yaml), "listen: \"%s\"\n", bad[i]);
        snprintf(want, sizeof(want),
                 "t.yaml:1: listen: found '%s'; expected an address like 0.0.0.0:8080, "
                 "[::1]:8080, :8080 or localhost:8080",
                 bad[i]);
        expect_error(yaml, want);
    }
    expect_error(LISTEN "admin: \"nowhere\"\n",
                 "t.yaml:2: admin: found 'nowhere'; expected an address like 0.0.0.0:8080, "
                 "[::1]:8080, :8080 or localhost:8080");
    expect_error(LISTEN "admin: \"0.0.0.0:8080\"\n",
                 "t.yaml:2: admin: 0.0.0.0:8080 collides with listen 0.0.0.0:8080; expected "
                 "another port, or admin: off");
    expect_error("listen: \"127.0.0.1:9901\"\n",
                 "t.yaml: admin: 127.0.0.1:9901 collides with listen 127.0.0.1:9901; expected "
                 "another port, or admin: off");
}

static void test_addr_parse(void **state)
{
    struct polis_addr a;
    assert_int_equal(polis__addr_parse("127.0.0.1:80", &a), 0);
    assert_string_equal(a.text, "127.0.0.1:80");
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
    const struct sockaddr_in *sin = (const void *)&a.ss;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 80);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);

    assert_int_equal(polis__addr_parse(":8080", &a), 0);
    assert_string_equal(a.text, "0.0.0.0:8080");
    assert_int_equal(((const struct sockaddr_in *)&a.ss)->sin_addr.s_addr, INADDR_ANY);

    assert_int_equal(polis__addr_parse("[::1]:80", &a), 0);
    assert_string_equal(a.text, "[::1]:80");
    assert_int_equal(a.len, sizeof(struct sockaddr_in6));
    assert_int_equal(ntohs(((const struct sockaddr_in6 *)&a.ss)->sin6_port), 80);

    assert_int_equal(polis__addr_parse("[2001:DB8::0001]:0", &a), 0);
    assert_string_equal(a.text, "[2001:db8::1]:0");
    assert_int_equal(polis__addr_parse("0.0.0.0:65535", &a), 0);
    assert_string_equal(a.text, "0.0.0.0:65535");

    /* A name is resolved once; localhost is a loopback address of either family. */
    assert_int_equal(polis__addr_parse("localhost:8080", &a), 0);
    assert_true(strcmp(a.text, "127.0.0.1:8080") == 0 || strcmp(a.text, "[::1]:8080") == 0);

    assert_int_equal(polis__addr_parse("", &a), POLIS_EINVAL);
    assert_int_equal(polis__addr_parse(":", &a), POLIS_EINVAL);
    assert_int_equal(polis__addr_parse("1.2.3.4:+80", &a), POLIS_EINVAL);
    assert_int_equal(polis__addr_parse("[::1]:", &a), POLIS_EINVAL);
    assert_int_equal(polis__addr_parse("[]:80", &a), POLIS_EINVAL);
    assert_int_equal(polis__addr_parse("[127.0.0.1]:80", &a), POLIS_EINVAL);
    assert_int_equal(polis__addr_parse("no-such-host.invalid:80", &a), POLIS_EINVAL);
    assert_int_equal(polis__addr_parse(NULL, &a), POLIS_EINVAL);
}

static void test_duplicates(void **state)
{
    expect_error("listen: \":1\"\nlisten: \":2\"\n",
                 "t.yaml:2: duplicate key 'listen' (first at line 1); expected each key once");
    expect_error(LISTEN "limits:\n  max_headers: 5\n  max_headers: 6\n",
                 "t.yaml:4: limits: duplicate key 'max_headers' (first at line 3); expected each "
                 "key once");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match:\n      headers: { A: "
                                "x, A: y }\n",
                 "t.yaml:8: routes[0].match.headers: duplicate key 'A' (first at line 8); "
                 "expected each key once");
    expect_error(LISTEN CLUSTER "  - name: users\n    instances: [\":2\"]\n",
                 "t.yaml:5: clusters[1].name: duplicate cluster name 'users' (first at line 3); "
                 "expected a unique name");
    expect_error(LISTEN CLUSTER "routes:\n  - name: a\n    cluster: users\n  - name: a\n"
                                "    cluster: users\n",
                 "t.yaml:8: routes[1].name: duplicate route name 'a' (first at line 6); "
                 "expected a unique name");
    /* A name equal to another route's default name is a duplicate too. */
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n  - name: route-0\n"
                                "    cluster: users\n",
                 "t.yaml:7: routes[1].name: duplicate route name 'route-0' (first at line 6); "
                 "expected a unique name");
}

static void test_clusters(void **state)
{
    expect_error(LISTEN "clusters:\n  - name: a\n",
                 "t.yaml:3: clusters[0]: no instances; expected instances: a list of at least "
                 "one address like \"127.0.0.1:9001\"");
    expect_error(LISTEN "clusters:\n  - name: a\n    instances: []\n",
                 "t.yaml:4: clusters[0]: no instances; expected instances: a list of at least "
                 "one address like \"127.0.0.1:9001\"");
    expect_error(LISTEN "clusters:\n  - instances: [\":1\"]\n",
                 "t.yaml:3: clusters[0]: no name; expected name: <[A-Za-z0-9_.-]+>");
    expect_error(LISTEN "clusters:\n  - name: \"a b\"\n    instances: [\":1\"]\n",
                 "t.yaml:3: clusters[0].name: found 'a b'; expected a name of letters, digits, "
                 "'_', '.' or '-'");
    expect_error(LISTEN "clusters:\n  - name: a\n    balance: random\n    instances: [\":1\"]\n",
                 "t.yaml:4: clusters[0].balance: found 'random'; expected one of: round_robin, "
                 "weighted, least_request, hash");
    expect_error(LISTEN "clusters:\n  - name: a\n    balance: hash\n    instances: [\":1\"]\n",
                 "t.yaml:4: clusters[0]: balance is hash but hash_on is missing; expected "
                 "hash_on: header:<name>, cookie:<name> or client_ip");
    expect_error(LISTEN "clusters:\n  - name: a\n    balance: hash\n    hash_on: ip\n"
                        "    instances: [\":1\"]\n",
                 "t.yaml:5: clusters[0].hash_on: found 'ip'; expected header:<name>, "
                 "cookie:<name> or client_ip");
    expect_error(LISTEN "clusters:\n  - name: a\n    balance: hash\n    hash_on: \"header:\"\n"
                        "    instances: [\":1\"]\n",
                 "t.yaml:5: clusters[0].hash_on: found 'header:'; expected header:<name>, "
                 "cookie:<name> or client_ip");
    expect_one(LISTEN "clusters:\n  - name: a\n    balance: hash\n    hash_on: \"header:X Y\"\n"
                      "    instances: [\":1\"]\n",
               "t.yaml:5: clusters[0].hash_on: header name 'X Y' is not a token", "expected");
    expect_error(LISTEN "clusters:\n  - name: a\n    hash_on: client_ip\n    instances: "
                        "[\":1\"]\n",
                 "t.yaml:4: clusters[0].hash_on: set but balance is not hash; expected balance: "
                 "hash or no hash_on");
    expect_error(LISTEN "clusters:\n  - name: a\n    instances:\n      - weight: 2\n",
                 "t.yaml:5: clusters[0].instances[0]: no address; expected address: host:port");
    expect_error(LISTEN "clusters:\n  - name: a\n    instances:\n      - \"nope\"\n",
                 "t.yaml:5: clusters[0].instances[0]: found 'nope'; expected an address like "
                 "0.0.0.0:8080, [::1]:8080, :8080 or localhost:8080");
}

static void test_routes(void **state)
{
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { path: /a }\n"
                                "    strip_prefix: true\n",
                 "t.yaml:8: routes[0].strip_prefix: set on a route without match.prefix; "
                 "expected strip_prefix only with prefix");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    strip_prefix: true\n",
                 "t.yaml:7: routes[0].strip_prefix: set on a route without match.prefix; "
                 "expected strip_prefix only with prefix");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { path: /a, prefix: /b "
                                "}\n",
                 "t.yaml:7: routes[0].match: both path and prefix; expected only one of them");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { path: a }\n",
                 "t.yaml:7: routes[0].match.path: 'a' does not start with '/'; expected a path "
                 "starting with '/'");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { prefix: api }\n",
                 "t.yaml:7: routes[0].match.prefix: 'api' does not start with '/'; expected a "
                 "path starting with '/'");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { prefix: \"/{x}\" "
                                "}\n",
                 "t.yaml:7: routes[0].match.prefix: '/{x}' holds '{' or '}' (only path: may "
                 "hold {name} parameters); expected a path starting with '/'");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    rewrite: v2\n",
                 "t.yaml:7: routes[0].rewrite: 'v2' does not start with '/'; expected a path "
                 "starting with '/'");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { prefix: /a }\n"
                                "    strip_prefix: true\n    rewrite: /b\n",
                 "t.yaml:9: routes[0].rewrite: set together with strip_prefix; expected one of "
                 "them (rewrite already replaces the prefix)");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { host: \"a.com:80\" "
                                "}\n",
                 "t.yaml:7: routes[0].match.host: found 'a.com:80'; expected a host name like "
                 "api.example.com or *.example.com (no port)");
    expect_one(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { host: \"a.*.com\" }\n",
               "t.yaml:7: routes[0].match.host: found 'a.*.com'", "expected a host name");
    expect_one(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { host: \"*\" }\n",
               "t.yaml:7: routes[0].match.host: found '*'", "expected a host name");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    name: \"my route\"\n",
                 "t.yaml:7: routes[0].name: found 'my route'; expected a name of letters, "
                 "digits, '_', '.' or '-'");
}

static void test_path_patterns(void **state)
{
    static const struct {
        const char *path;
        const char *why;
    } bad[] = {
        {"/users/{id}x", "has a {name} that is not a whole segment"},
        {"/users/x{id}", "has a {name} that is not a whole segment"},
        {"/users/{}", "has a {name} that is not a whole segment"},
        {"/users/{id", "has a {name} that is not a whole segment"},
        {"/users/id}", "has a {name} that is not a whole segment"},
        {"/users/{a}{b}", "has a parameter name outside [A-Za-z0-9_]"},
        {"/users/{a-b}", "has a parameter name outside [A-Za-z0-9_]"},
        {"/users/{a}/{a}", "uses a parameter name twice"},
        {"/a b", "holds a space or control character"},
        {"/a?b", "holds '?' or '#'"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char yaml[256], want[512];
        snprintf(yaml, sizeof(yaml),
                 LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { path: \"%s\" }\n",
                 bad[i].path);
        snprintf(want, sizeof(want),
                 "t.yaml:7: routes[0].match.path: '%s' %s; expected a path starting with '/'%s",
                 bad[i].path, bad[i].why,
                 strchr(bad[i].path, '{') || strchr(bad[i].path, '}')
                     ? " whose {name} parameters are whole segments named [A-Za-z0-9_]"
                     : "");
        expect_error(yaml, want);
    }
    static const char *const good[] = {"/users/{id}", "/{a}/{b_2}/c", "/x/{Y9}/", "/", "/a/b"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char yaml[256];
        snprintf(yaml, sizeof(yaml),
                 LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { path: \"%s\" }\n",
                 good[i]);
        struct polis_config *cfg = expect_ok(yaml);
        assert_string_equal(cfg->routes[0].path, good[i]);
        assert_int_equal(cfg->routes[0].path_kind,
                         strchr(good[i], '{') ? POLIS_PATH_PATTERN : POLIS_PATH_EXACT);
        polis__config_free(cfg);
    }
}

static void test_headers_tokens(void **state)
{
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match: { methods: [GET, \"P "
                                "T\"] }\n",
                 "t.yaml:7: routes[0].match.methods[1]: found 'P T'; expected a method token "
                 "like GET");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match:\n      headers: { "
                                "\"X:Y\": \"1\" }\n",
                 "t.yaml:8: routes[0].match.headers: header name 'X:Y' is not a token; expected "
                 "letters, digits and !#$%&'*+-.^_`|~");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    match:\n      headers: { "
                                "X-A: \"1\\r\\nX-B: 2\" }\n",
                 "t.yaml:8: routes[0].match.headers.X-A: value holds CR or LF; expected a value "
                 "without CR or LF, or true");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    request_headers:\n"
                                "      add: { X-A: \"a\\nb\" }\n",
                 "t.yaml:8: routes[0].request_headers.add.X-A: value holds CR or LF; expected a "
                 "value without CR or LF");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    response_headers:\n"
                                "      add: { \"X A\": b }\n",
                 "t.yaml:8: routes[0].response_headers.add: header name 'X A' is not a token; "
                 "expected letters, digits and !#$%&'*+-.^_`|~");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    response_headers:\n"
                                "      remove: [Server, \"\"]\n",
                 "t.yaml:8: routes[0].response_headers.remove[1]: header name '' is not a "
                 "token; expected letters, digits and !#$%&'*+-.^_`|~");
    expect_error(LISTEN CLUSTER "routes:\n  - cluster: users\n    request_headers:\n"
                                "      add: { X-A: \"a\\0b\" }\n",
                 "t.yaml:8: routes[0].request_headers.add.X-A: found 'a\\x00b'; expected a "
                 "header value");
}

static void test_yaml_refusals(void **state)
{
    expect_error("base: &b { a: 1 }\n" LISTEN,
                 "t.yaml:1: anchor '&b'; expected plain values (anchors and aliases are refused)");
    expect_error(LISTEN "x: &a 1\ny: *a\n",
                 "t.yaml:3: alias '*a'; expected plain values (anchors and aliases are refused)");
    expect_error("listen: [\n", "t.yaml:2: YAML syntax error: did not find expected node content "
                                "(while parsing a flow node at line 2); expected valid YAML");
    expect_one("listen: \":80\"\n  bad: indent\n",
               "t.yaml:2: YAML syntax error: did not find expected key (while parsing a block "
               "mapping at line 1)",
               "expected valid YAML");
    expect_error(LISTEN "---\nlisten: \":81\"\n",
                 "t.yaml:2: a second YAML document; expected a single document");
    expect_error("", "t.yaml: empty configuration; expected a mapping with at least listen");
    expect_error("# nothing\n",
                 "t.yaml: empty configuration; expected a mapping with at least listen");
    expect_error("clusters: []\n", "t.yaml: listen: missing; expected the address to accept "
                                   "connections on, like listen: \"0.0.0.0:8080\"");
    expect_one("listen: \"\xff\xfe\x41\"\n", "t.yaml:1: YAML syntax error:", "");

    /* Billion laughs: refused at once instead of expanded. */
    const char *laughs = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
                         "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                         "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                         "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                         "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
                         "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
                         "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
                         "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
                         "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n" LISTEN;
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    assert_int_equal(load(laughs, &cfg, &e), POLIS_EINVAL);
    assert_null(cfg);
    assert_true(has_msg(&e, "t.yaml:1: anchor '&a'; expected plain values (anchors and aliases "
                            "are refused)"));
    assert_true(has_msg(&e, "t.yaml:2: alias '*a'; expected plain values (anchors and aliases "
                            "are refused)"));
    polis__config_errors_free(&e);

    /* Deep nesting is cut off instead of recursing. */
    char deep[512];
    size_t o = 0;
    o += (size_t)snprintf(deep, sizeof(deep), "listen: ");
    for (int i = 0; i < 100; i++)
        deep[o++] = '[';
    for (int i = 0; i < 100; i++)
        deep[o++] = ']';
    deep[o++] = '\n';
    deep[o] = 0;
    expect_one(deep, "t.yaml:1: nesting deeper than 64 levels", "expected a flatter document");
}

/* Every error is reported, in line order, not only the first. */
static void test_multiple_errors(void **state)
{
    const char *yaml = "workers: 999\n"             /* 1 */
                       "listen: \"nope\"\n"         /* 2 */
                       "limits:\n"                  /* 3 */
                       "  max_headers: 0\n"         /* 4 */
                       "timeouts: { idle: 5sec }\n" /* 5 */
                       "clusters:\n"                /* 6 */
                       "  - name: a\n"              /* 7 */
                       "    balance: magic\n"       /* 8 */
                       "routes:\n"                  /* 9 */
                       "  - cluster: b\n"           /* 10 */
                       "    extra: 1\n";            /* 11 */
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    assert_int_equal(load(yaml, &cfg, &e), POLIS_EINVAL);
    assert_null(cfg);
    const char *want[] = {
        "t.yaml:1: workers: found '999', out of range; expected 0..256",
        "t.yaml:2: listen: found 'nope'; expected an address like 0.0.0.0:8080, [::1]:8080, "
        ":8080 or localhost:8080",
        "t.yaml:4: limits.max_headers: found '0', out of range; expected 1..1000",
        "t.yaml:5: timeouts.idle: found '5sec'; expected a duration like 500ms, 5s, 2m or 1h (a "
        "bare number is ms) in 1ms..24h",
        "t.yaml:7: clusters[0]: no instances; expected instances: a list of at least one "
        "address like \"127.0.0.1:9001\"",
        "t.yaml:8: clusters[0].balance: found 'magic'; expected one of: round_robin, weighted, "
        "least_request, hash",
        "t.yaml:10: routes[0].cluster: unknown cluster 'b'; expected one of: a",
        "t.yaml:11: routes[0]: unknown key 'extra'; expected one of: name, match, cluster, "
        "strip_prefix, rewrite, max_body, timeout, request_headers, response_headers, subset, "
        "split, fault, mirror, retry, retry_idempotency_key, max_concurrent, auth, rate_limit, "
        "cors, access",
    };
    if (e.count != sizeof(want) / sizeof(want[0]))
        dump(&e);
    assert_int_equal(e.count, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < e.count; i++)
        assert_string_equal(e.msgs[i], want[i]);
    polis__config_errors_free(&e);
    assert_null(e.msgs);
    assert_int_equal(e.count, 0);
}

/* At most 50 errors, then one line saying how many more there were. */
static void test_error_cap(void **state)
{
    char yaml[4096];
    size_t o = (size_t)snprintf(yaml, sizeof(yaml), LISTEN);
    for (int i = 0; i < 60; i++)
        o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "k%d: 1\n", i);
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    assert_int_equal(load(yaml, &cfg, &e), POLIS_EINVAL);
    assert_int_equal(e.count, 51);
    assert_true(strncmp(e.msgs[0], "t.yaml:2: unknown key 'k0'", 26) == 0);
    assert_true(strncmp(e.msgs[49], "t.yaml:51: unknown key 'k49'", 28) == 0);
    assert_string_equal(e.msgs[50], "t.yaml: 10 more errors not shown; expected at most 50 "
                                    "errors");
    polis__config_errors_free(&e);
}

static void test_file(void **state)
{
    struct polis_config *cfg = (struct polis_config *)1;
    struct polis_config_errors e = {0};
    assert_int_equal(polis__config_load_file("/nonexistent/polis.yaml", &cfg, &e), POLIS_ESYS);
    assert_null(cfg);
    assert_int_equal(e.count, 1);
    assert_string_equal(e.msgs[0], "/nonexistent/polis.yaml: cannot open: No such file or "
                                   "directory; expected a readable YAML file");
    polis__config_errors_free(&e);

    char path[] = "/tmp/polis-config-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char bad[] = LISTEN "workers: lots\n";
    assert_int_equal(write(fd, bad, sizeof(bad) - 1), (ssize_t)(sizeof(bad) - 1));
    close(fd);
    assert_int_equal(polis__config_load_file(path, &cfg, &e), POLIS_EINVAL);
    assert_int_equal(e.count, 1);
    char want[256];
    snprintf(want, sizeof(want), "%s:2: workers: found 'lots'; expected an integer in 0..256",
             path);
    assert_string_equal(e.msgs[0], want);
    polis__config_errors_free(&e);
    unlink(path);
}

/* The examples shown in docs/configuration.md are valid. */
static void test_examples(void **state)
{
    glob_t g;
    assert_int_equal(glob("examples/config/*.yaml", 0, NULL, &g), 0);
    assert_true(g.gl_pathc >= 2);
    bool minimal = false, full = false, resilience = false, security = false;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        struct polis_config *cfg = NULL;
        struct polis_config_errors e = {0};
        int rc = polis__config_load_file(g.gl_pathv[i], &cfg, &e);
        if (rc != 0) {
            dump(&e);
            fail_msg("%s: rc %d", g.gl_pathv[i], rc);
        }
        assert_string_equal(cfg->source, g.gl_pathv[i]);
        minimal |= strstr(g.gl_pathv[i], "/minimal.yaml") != NULL;
        if (strstr(g.gl_pathv[i], "/full.yaml")) {
            full = true;
            /* It uses every kind of option. */
            assert_true(cfg->workers > 0);
            assert_non_null(cfg->access_log);
            bool lb[4] = {0}, hash_on[3] = {0}, kinds[4] = {0}, strip = false, rewrite = false;
            for (size_t c = 0; c < cfg->num_clusters; c++) {
                lb[cfg->clusters[c].lb] = true;
                if (cfg->clusters[c].lb == POLIS_LB_HASH)
                    hash_on[cfg->clusters[c].hash_on] = true;
            }
            for (size_t r = 0; r < cfg->num_routes; r++) {
                kinds[cfg->routes[r].path_kind] = true;
                strip |= cfg->routes[r].strip_prefix;
                rewrite |= cfg->routes[r].rewrite != NULL;
            }
            for (int k = 0; k < 4; k++)
                assert_true(lb[k] && kinds[k]);
            assert_true(hash_on[0] && hash_on[1] && hash_on[2]);
            assert_true(strip && rewrite);
        }
        if (strstr(g.gl_pathv[i], "/resilience.yaml")) {
            resilience = true;
            /* Static instances with metadata, every resilience section, every traffic kind. */
            const struct polis_cluster_cfg *c = &cfg->clusters[0];
            assert_int_equal(c->discovery.kind, POLIS_DISC_STATIC);
            assert_true(c->health_check.enabled && c->outlier.enabled && c->breaker.enabled &&
                        c->instance_breaker.enabled);
            assert_true(c->retry.on & POLIS_RETRY_STATUS);
            assert_true(c->max_connections && c->max_pending && c->max_requests);
            assert_true(c->instances[0].num_meta > 0);
            bool subset = false, split = false, fault = false, mirror = false, retry = false;
            bool cookies = false;
            for (size_t r = 0; r < cfg->num_routes; r++) {
                const struct polis_route_cfg *rt = &cfg->routes[r];
                subset |= rt->subset.num_match > 0;
                split |= rt->num_splits > 0;
                fault |= rt->fault.delay_ms > 0 && rt->fault.abort_status > 0;
                mirror |= rt->mirror.enabled;
                retry |= rt->retry != NULL && rt->retry_idempotency_key;
                cookies |= rt->num_cookies > 0;
            }
            assert_true(subset && split && fault && mirror && retry && cookies);
            assert_true(cfg->registry.enabled);
        }
        if (strstr(g.gl_pathv[i], "/security.yaml")) {
            security = true;
            /* Every security section, with files that exist in the repository. */
            assert_true(cfg->tls.enabled && cfg->tls.client_auth != POLIS_CLIENT_AUTH_OFF);
            assert_true(cfg->jwt.num_issuers >= 2 && cfg->num_consumers >= 2);
            assert_true(cfg->num_trusted_proxies > 0 && cfg->access.num_deny > 0);
            assert_true(cfg->limits.max_connections_per_ip > 0);
            bool redis = false, keys = false, url = false, cluster_tls = false;
            for (size_t k = 0; k < cfg->num_rate_limits; k++)
                redis |= cfg->rate_limits[k].backend == POLIS_RL_REDIS;
            for (size_t k = 0; k < cfg->jwt.num_issuers; k++) {
                keys |= cfg->jwt.issuers[k].num_keys > 0 && cfg->jwt.issuers[k].jwks_file;
                url |= cfg->jwt.issuers[k].jwks_url != NULL;
            }
            for (size_t c = 0; c < cfg->num_clusters; c++)
                cluster_tls |= cfg->clusters[c].tls.enabled && cfg->clusters[c].tls.cert;
            bool jwt = false, api_key = false, any = false, rules = false, cors = false;
            bool access = false;
            for (size_t r = 0; r < cfg->num_routes; r++) {
                const struct polis_route_cfg *rt = &cfg->routes[r];
                jwt |= rt->auth.jwt && rt->auth.jwt_rules.num_forward_claims > 0;
                api_key |= rt->auth.api_key;
                any |= rt->auth.any;
                rules |= rt->auth.consumers.num_allow_groups + rt->auth.consumers.num_deny > 0;
                cors |= rt->cors.enabled && rt->cors.credentials;
                access |= rt->access.num_allow > 0;
            }
            assert_true(redis && keys && url && cluster_tls);
            assert_true(jwt && api_key && any && rules && cors && access);
        }
        polis__config_free(cfg);
    }
    assert_true(minimal && full && resilience && security);
    globfree(&g);
}

/* A configuration built in code (quick mode) goes through the same checks. */
/* tracing: endpoint (http only), service name, sample ratio in 0..1. */
static void test_tracing(void **state)
{
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    assert_int_equal(load(LISTEN "tracing: { endpoint: \"http://127.0.0.1:4318/v1/traces\", "
                                 "service_name: edge, sample_ratio: 0.25 }\n",
                          &cfg, &e),
                     0);
    assert_string_equal(cfg->tracing.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_string_equal(cfg->tracing.service_name, "edge");
    assert_true(cfg->tracing.sample_ratio == 0.25);
    polis__config_free(cfg);
    assert_int_equal(load(LISTEN, &cfg, &e), 0);
    assert_null(cfg->tracing.endpoint); /* off by default */
    assert_true(cfg->tracing.sample_ratio == 0.1);
    polis__config_free(cfg);
    expect_error(LISTEN "tracing: { endpoint: \"https://c:4318\" }\n",
                 "t.yaml:2: tracing.endpoint: found 'https://c:4318'; expected an http:// URL "
                 "like http://127.0.0.1:4318/v1/traces");
    expect_error(LISTEN "tracing: { endpoint: \"http://c\", sample_ratio: 2 }\n",
                 "t.yaml:2: tracing.sample_ratio: found '2'; expected a number from 0 to 1, "
                 "like 0.1");
    expect_error(LISTEN "tracing: { endpoint: \"http://c\", sample_ratio: half }\n",
                 "t.yaml:2: tracing.sample_ratio: found 'half'; expected a number from 0 to 1, "
                 "like 0.1");
    expect_error(LISTEN "tracing: { endpont: x }\n",
                 "t.yaml:2: tracing: unknown key 'endpont'; expected one of: endpoint, "
                 "service_name, sample_ratio");
}

/* access_log_fields: a list of known names; all of them by default. */
static void test_access_log_fields(void **state)
{
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    assert_int_equal(load(LISTEN, &cfg, &e), 0);
    assert_int_equal(cfg->access_log_fields, (1u << POLIS_ALOG__COUNT) - 1);
    polis__config_free(cfg);
    assert_int_equal(load(LISTEN "access_log_fields: [ts, status, upstream_ms]\n", &cfg, &e), 0);
    assert_int_equal(cfg->access_log_fields, (1u << POLIS_ALOG_TS) | (1u << POLIS_ALOG_STATUS) |
                                                 (1u << POLIS_ALOG_UPSTREAM_MS));
    polis__config_free(cfg);
    expect_error(LISTEN "access_log_fields: [ts, stauts]\n",
                 "t.yaml:2: access_log_fields[1]: found 'stauts'; expected one of: ts, "
                 "request_id, trace_id, client, method, path, host, status, bytes_received, "
                 "bytes_sent, duration_ms, upstream, upstream_connect_ms, upstream_ms, attempts, "
                 "route, cluster");
    expect_error(LISTEN "access_log_fields: status\n",
                 "t.yaml:2: access_log_fields: found 'status'; expected a list of field names");
}

/* An admin listener other machines can reach needs a bearer token; no default one exists. */
static void test_admin_token(void **state)
{
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    assert_int_equal(load(LISTEN "admin: \"127.0.0.2:9901\"\n", &cfg, &e), 0);
    assert_null(cfg->admin_token);
    polis__config_free(cfg);
    assert_int_equal(
        load(LISTEN "admin: \"0.0.0.0:9901\"\nadmin_token: 0123456789abcdef\n", &cfg, &e), 0);
    assert_string_equal(cfg->admin_token, "0123456789abcdef");
    polis__config_free(cfg);
    expect_error(LISTEN "admin: \"0.0.0.0:9901\"\n",
                 "t.yaml:2: admin: 0.0.0.0:9901 is reachable from other machines; expected "
                 "admin_token (a bearer token of at least 16 characters), or a loopback address "
                 "like 127.0.0.1:9901");
    expect_error(LISTEN "admin_token: short\n",
                 "t.yaml:2: admin_token: too short; expected at least 16 characters (use a "
                 "random one)");
}

static void test_validate_in_code(void **state)
{
    struct polis_config *cfg = calloc(1, sizeof(*cfg));
    assert_non_null(cfg);
    polis__config_defaults(cfg);
    cfg->source = strdup("command line");
    assert_int_equal(polis__addr_parse(":8080", &cfg->listen), 0);
    cfg->num_clusters = 1;
    cfg->clusters = calloc(1, sizeof(*cfg->clusters));
    cfg->clusters[0].name = strdup("backend");
    cfg->clusters[0].keepalive = 64;
    cfg->clusters[0].connect_timeout_ms = 2000;
    cfg->clusters[0].timeout_ms = 30000;
    cfg->clusters[0].num_instances = 1;
    cfg->clusters[0].instances = calloc(1, sizeof(*cfg->clusters[0].instances));
    cfg->clusters[0].instances[0].weight = 1;
    assert_int_equal(polis__addr_parse("127.0.0.1:9001", &cfg->clusters[0].instances[0].addr), 0);
    cfg->num_routes = 2;
    cfg->routes = calloc(2, sizeof(*cfg->routes));
    cfg->routes[0].cluster = strdup("backend");
    cfg->routes[1].cluster = strdup("backend");
    cfg->routes[1].path_kind = POLIS_PATH_PREFIX;
    cfg->routes[1].path = strdup("/api/");
    cfg->routes[1].strip_prefix = true;
    cfg->routes[1].cluster_index = 99;

    struct polis_config_errors e = {0};
    assert_int_equal(polis__config_validate(cfg, &e), 0);
    assert_int_equal(e.count, 0);
    assert_string_equal(cfg->routes[0].name, "route-0");
    assert_string_equal(cfg->routes[1].name, "route-1");
    assert_int_equal(cfg->routes[1].cluster_index, 0);

    /* Now break it. */
    free(cfg->routes[0].cluster);
    cfg->routes[0].cluster = strdup("other");
    cfg->routes[0].strip_prefix = true;
    cfg->clusters[0].instances[0].weight = 0;
    cfg->clusters[0].lb = POLIS_LB_HASH;
    cfg->clusters[0].hash_on = POLIS_HASH_HEADER;
    cfg->limits.max_headers = 0;
    cfg->workers = -1;
    assert_int_equal(polis__config_validate(cfg, &e), POLIS_EINVAL);
    const char *want[] = {
        "command line: workers: found 18446744073709551615, out of range; expected 0..256",
        "command line: limits.max_headers: found 0, out of range; expected 1..1000",
        "command line: clusters[0].hash_on: header name '' is not a token; expected "
        "header:<name> with a name of letters, digits and !#$%&'*+-.^_`|~",
        "command line: clusters[0].instances[0].weight: found 0, out of range; expected 1..10000",
        "command line: routes[0].cluster: unknown cluster 'other'; expected one of: backend",
        "command line: routes[0].strip_prefix: set on a route without match.prefix; expected "
        "strip_prefix only with prefix",
    };
    if (e.count != sizeof(want) / sizeof(want[0]))
        dump(&e);
    assert_int_equal(e.count, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < e.count; i++)
        assert_string_equal(e.msgs[i], want[i]);
    polis__config_errors_free(&e);

    /* No listener. */
    cfg->listen.len = 0;
    assert_int_equal(polis__config_validate(cfg, NULL), POLIS_EINVAL);
    polis__config_free(cfg);
}

/* A big configuration loads quickly (no quadratic blow-up in the common paths). */
static void test_large(void **state)
{
    size_t cap = 4 << 20, o = 0;
    char *yaml = malloc(cap);
    assert_non_null(yaml);
    o += (size_t)snprintf(yaml + o, cap - o, LISTEN "clusters:\n");
    for (int i = 0; i < 200; i++)
        o += (size_t)snprintf(yaml + o, cap - o,
                              "  - name: c%d\n    instances: [\"127.0.0.1:%d\"]\n", i, 1000 + i);
    o += (size_t)snprintf(yaml + o, cap - o, "routes:\n");
    for (int i = 0; i < 2000; i++)
        o += (size_t)snprintf(yaml + o, cap - o,
                              "  - match: { prefix: \"/p%d/\", methods: [GET] }\n"
                              "    cluster: c%d\n",
                              i, i % 200);
    clock_t t0 = clock();
    struct polis_config *cfg = expect_ok(yaml);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    assert_int_equal(cfg->num_routes, 2000);
    assert_int_equal(cfg->routes[1999].cluster_index, 1999 % 200);
    assert_true(secs < 5.0);
    polis__config_free(cfg);
    free(yaml);
}

/* Every new key of a cluster and a route (lines numbered for the messages). */
static const char RES[] =
    "listen: \":8080\"\n"                                    /* 1 */
    "registry:\n"                                            /* 2 */
    "  enabled: true\n"                                      /* 3 */
    "  default_ttl: 20s\n"                                   /* 4 */
    "  max_ttl: 2h\n"                                        /* 5 */
    "  max_wait: 90s\n"                                      /* 6 */
    "clusters:\n"                                            /* 7 */
    "  - name: orders\n"                                     /* 8 */
    "    health_check:\n"                                    /* 9 */
    "      path: /healthz\n"                                 /* 10 */
    "      host: orders.internal\n"                          /* 11 */
    "      interval: 4s\n"                                   /* 12 */
    "      timeout: 2s\n"                                    /* 13 */
    "      jitter: 300ms\n"                                  /* 14 */
    "      healthy_threshold: 4\n"                           /* 15 */
    "      unhealthy_threshold: 5\n"                         /* 16 */
    "      expected_statuses: [204, \"200-299\", \"301\"]\n" /* 17 */
    "    outlier_detection:\n"                               /* 18 */
    "      consecutive_5xx: 7\n"                             /* 19 */
    "      consecutive_gateway_errors: 0\n"                  /* 20 */
    "      consecutive_connect_failures: 4\n"                /* 21 */
    "      base_ejection_time: 10s\n"                        /* 22 */
    "      max_ejection_time: 2m\n"                          /* 23 */
    "      max_ejection_percent: 30\n"                       /* 24 */
    "    circuit_breaker:\n"                                 /* 25 */
    "      window: time\n"                                   /* 26 */
    "      window_size: 60\n"                                /* 27 */
    "      minimum_calls: 15\n"                              /* 28 */
    "      failure_rate: 40\n"                               /* 29 */
    "      slow_call_rate: 90\n"                             /* 30 */
    "      slow_call_duration: 3s\n"                         /* 31 */
    "      consecutive_failures: 8\n"                        /* 32 */
    "      open_duration: 45s\n"                             /* 33 */
    "      half_open_calls: 2\n"                             /* 34 */
    "    instance_circuit_breaker:\n"                        /* 35 */
    "      enabled: false\n"                                 /* 36 */
    "      window: count\n"                                  /* 37 */
    "      window_size: 50\n"                                /* 38 */
    "    retry:\n"                                           /* 39 */
    "      attempts: 5\n"                                    /* 40 */
    "      on: [reset, timeout, 503, 502, 503]\n"            /* 41 */
    "      backoff_base: 10ms\n"                             /* 42 */
    "      backoff_max: 1s\n"                                /* 43 */
    "      per_try_timeout: 2s\n"                            /* 44 */
    "      deadline: 10s\n"                                  /* 45 */
    "      budget_percent: 30\n"                             /* 46 */
    "      budget_min: 7\n"                                  /* 47 */
    "    panic_threshold: 0\n"                               /* 48 */
    "    max_connections: 1000\n"                            /* 49 */
    "    max_pending: 100\n"                                 /* 50 */
    "    max_requests: 2000\n"                               /* 51 */
    "    instances:\n"                                       /* 52 */
    "      - address: \"127.0.0.1:9001\"\n"                  /* 53 */
    "        weight: 10\n"                                   /* 54 */
    "        metadata: { version: v1, zone: a }\n"           /* 55 */
    "      - address: \"127.0.0.1:9002\"\n"                  /* 56 */
    "        metadata: { version: v2, build: 42 }\n"         /* 57 */
    "      - \"127.0.0.1:9003\"\n"                           /* 58 */
    "  - name: reg\n"                                        /* 59 */
    "    discovery: { type: registry }\n"                    /* 60 */
    "  - name: dns\n"                                        /* 61 */
    "    discovery:\n"                                       /* 62 */
    "      type: dns\n"                                      /* 63 */
    "      name: orders.svc.local\n"                         /* 64 */
    "      port: 8080\n"                                     /* 65 */
    "      server: \"127.0.0.1:5353\"\n"                     /* 66 */
    "      min_ttl: 2s\n"                                    /* 67 */
    "      max_ttl: 1m\n"                                    /* 68 */
    "  - name: srv\n"                                        /* 69 */
    "    discovery: { type: dns, name: _http._tcp.orders.local, record: srv, server: \"[::1]:53\" "
    "}\n"                                                                      /* 70 */
    "  - name: etcd\n"                                                         /* 71 */
    "    discovery:\n"                                                         /* 72 */
    "      type: etcd\n"                                                       /* 73 */
    "      endpoints: [\"http://127.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n" /* 74 */
    "      prefix: /polis/services/orders/\n"                                  /* 75 */
    "routes:\n"                                                                /* 76 */
    "  - name: canary\n"                                                       /* 77 */
    "    match:\n"                                                             /* 78 */
    "      prefix: /orders/\n"                                                 /* 79 */
    "      headers: { X-A: \"1\" }\n"                                          /* 80 */
    "      cookies: { beta: , session: true, group: \"gold\" }\n"              /* 81 */
    "    cluster: orders\n"                                                    /* 82 */
    "    subset: { version: v2 }\n"                                            /* 83 */
    "    fault:\n"                                                             /* 84 */
    "      delay: 100ms\n"                                                     /* 85 */
    "      delay_percent: 12.5\n"                                              /* 86 */
    "      abort_status: 503\n"                                                /* 87 */
    "      abort_percent: 0.5\n"                                               /* 88 */
    "    mirror:\n"                                                            /* 89 */
    "      subset: { version: v2 }\n"                                          /* 90 */
    "      percent: 25\n"                                                      /* 91 */
    "      compare_headers: [content-type, etag]\n"                            /* 92 */
    "      ignore_fields: [timestamp, meta.id]\n"                              /* 93 */
    "    retry:\n"                                                             /* 94 */
    "      attempts: 2\n"                                                      /* 95 */
    "      on: [connect_failure]\n"                                            /* 96 */
    "    retry_idempotency_key: true\n"                                        /* 97 */
    "    max_concurrent: 100\n"                                                /* 98 */
    "  - name: split\n"                                                        /* 99 */
    "    cluster: orders\n"                                                    /* 100 */
    "    split:\n"                                                             /* 101 */
    "      - subset: { version: v1, zone: a }\n"                               /* 102 */
    "        weight: 95\n"                                                     /* 103 */
    "      - subset: { version: v2 }\n"                                        /* 104 */
    "        weight: 5\n"                                                      /* 105 */
    "      - weight: 0\n" /* 106 */;

/* ---- Discovery, health, breakers, retries, bulkheads, traffic ---------------------------- */

/* Every new key, read back field by field. */
static void test_resilience_full(void **state)
{
    struct polis_config *cfg = expect_ok(RES);
    assert_true(cfg->registry.enabled);
    assert_int_equal(cfg->registry.default_ttl_ms, 20000);
    assert_int_equal(cfg->registry.max_ttl_ms, 7200000);
    assert_int_equal(cfg->registry.max_wait_ms, 90000);
    assert_int_equal(cfg->num_clusters, 5);

    const struct polis_cluster_cfg *c = &cfg->clusters[0];
    assert_int_equal(c->discovery.kind, POLIS_DISC_STATIC);
    const struct polis_health_check_cfg *h = &c->health_check;
    assert_true(h->enabled);
    assert_string_equal(h->path, "/healthz");
    assert_string_equal(h->host, "orders.internal");
    assert_int_equal(h->interval_ms, 4000);
    assert_int_equal(h->timeout_ms, 2000);
    assert_int_equal(h->jitter_ms, 300);
    assert_int_equal(h->healthy_threshold, 4);
    assert_int_equal(h->unhealthy_threshold, 5);
    assert_int_equal(h->num_statuses, 3);
    assert_int_equal(h->statuses[0][0], 204);
    assert_int_equal(h->statuses[0][1], 204);
    assert_int_equal(h->statuses[1][0], 200);
    assert_int_equal(h->statuses[1][1], 299);
    assert_int_equal(h->statuses[2][0], 301);
    assert_int_equal(h->statuses[2][1], 301);
    const struct polis_outlier_cfg *o = &c->outlier;
    assert_true(o->enabled);
    assert_int_equal(o->consecutive_5xx, 7);
    assert_int_equal(o->consecutive_gateway_errors, 0);
    assert_int_equal(o->consecutive_connect_failures, 4);
    assert_int_equal(o->base_ejection_ms, 10000);
    assert_int_equal(o->max_ejection_ms, 120000);
    assert_int_equal(o->max_ejection_percent, 30);
    const struct polis_breaker_cfg *b = &c->breaker;
    assert_true(b->enabled);
    assert_int_equal(b->window, POLIS_WINDOW_TIME);
    assert_int_equal(b->window_size, 60);
    assert_int_equal(b->min_calls, 15);
    assert_int_equal(b->failure_rate, 40);
    assert_int_equal(b->slow_call_rate, 90);
    assert_int_equal(b->slow_call_ms, 3000);
    assert_int_equal(b->consecutive_failures, 8);
    assert_int_equal(b->open_ms, 45000);
    assert_int_equal(b->half_open_calls, 2);
    b = &c->instance_breaker;
    assert_false(b->enabled);
    assert_int_equal(b->window, POLIS_WINDOW_COUNT);
    assert_int_equal(b->window_size, 50);
    assert_int_equal(b->min_calls, 20);
    const struct polis_retry_cfg *rt = &c->retry;
    assert_int_equal(rt->attempts, 5);
    assert_int_equal(rt->on, POLIS_RETRY_RESET | POLIS_RETRY_TIMEOUT | POLIS_RETRY_STATUS);
    assert_int_equal(rt->num_statuses, 2); /* 503 twice: kept once */
    assert_int_equal(rt->statuses[0], 503);
    assert_int_equal(rt->statuses[1], 502);
    assert_int_equal(rt->backoff_base_ms, 10);
    assert_int_equal(rt->backoff_max_ms, 1000);
    assert_int_equal(rt->per_try_timeout_ms, 2000);
    assert_int_equal(rt->deadline_ms, 10000);
    assert_int_equal(rt->budget_percent, 30);
    assert_int_equal(rt->budget_min, 7);
    assert_int_equal(c->panic_threshold, 0);
    assert_int_equal(c->max_connections, 1000);
    assert_int_equal(c->max_pending, 100);
    assert_int_equal(c->max_requests, 2000);
    assert_int_equal(c->num_instances, 3);
    assert_int_equal(c->instances[0].weight, 10);
    assert_null(c->instances[0].id);
    assert_int_equal(c->instances[0].num_meta, 2);
    assert_string_equal(c->instances[0].meta[0].name, "version");
    assert_string_equal(c->instances[0].meta[0].value, "v1");
    assert_string_equal(c->instances[0].meta[1].name, "zone");
    assert_string_equal(c->instances[0].meta[1].value, "a");
    assert_int_equal(c->instances[1].weight, 1);
    assert_int_equal(c->instances[1].num_meta, 2);
    assert_string_equal(c->instances[1].meta[1].name, "build");
    assert_string_equal(c->instances[1].meta[1].value, "42"); /* a number, kept as text */
    assert_int_equal(c->instances[2].num_meta, 0);
    assert_null(c->instances[2].meta);

    c = &cfg->clusters[1];
    assert_int_equal(c->discovery.kind, POLIS_DISC_REGISTRY);
    assert_string_equal(c->discovery.service, "reg"); /* default: the cluster's name */
    assert_int_equal(c->num_instances, 0);
    c = &cfg->clusters[2];
    assert_int_equal(c->discovery.kind, POLIS_DISC_DNS);
    assert_string_equal(c->discovery.dns_name, "orders.svc.local");
    assert_int_equal(c->discovery.dns_type, POLIS_DNS_A);
    assert_int_equal(c->discovery.dns_port, 8080);
    assert_string_equal(c->discovery.dns_server, "127.0.0.1:5353");
    assert_int_equal(c->discovery.dns_min_ttl_ms, 2000);
    assert_int_equal(c->discovery.dns_max_ttl_ms, 60000);
    assert_null(c->discovery.service);
    c = &cfg->clusters[3];
    assert_int_equal(c->discovery.dns_type, POLIS_DNS_SRV);
    assert_string_equal(c->discovery.dns_name, "_http._tcp.orders.local");
    assert_int_equal(c->discovery.dns_port, 0);
    assert_string_equal(c->discovery.dns_server, "[::1]:53");
    assert_int_equal(c->discovery.dns_min_ttl_ms, 1000);
    assert_int_equal(c->discovery.dns_max_ttl_ms, 30000);
    c = &cfg->clusters[4];
    assert_int_equal(c->discovery.kind, POLIS_DISC_ETCD);
    assert_int_equal(c->discovery.num_etcd_endpoints, 2);
    assert_string_equal(c->discovery.etcd_endpoints[0], "http://127.0.0.1:2379");
    assert_string_equal(c->discovery.etcd_endpoints[1], "http://10.0.0.2:2379");
    assert_string_equal(c->discovery.etcd_prefix, "/polis/services/orders/");

    const struct polis_route_cfg *r = &cfg->routes[0];
    assert_int_equal(r->num_headers, 1);
    assert_int_equal(r->num_cookies, 3);
    assert_string_equal(r->cookies[0].name, "beta");
    assert_null(r->cookies[0].value);
    assert_string_equal(r->cookies[1].name, "session");
    assert_null(r->cookies[1].value);
    assert_string_equal(r->cookies[2].name, "group");
    assert_string_equal(r->cookies[2].value, "gold");
    assert_int_equal(r->subset.num_match, 1);
    assert_string_equal(r->subset.match[0].name, "version");
    assert_string_equal(r->subset.match[0].value, "v2");
    assert_int_equal(r->num_splits, 0);
    assert_int_equal(r->fault.delay_ms, 100);
    assert_true(r->fault.delay_percent == 12.5);
    assert_int_equal(r->fault.abort_status, 503);
    assert_true(r->fault.abort_percent == 0.5);
    assert_true(r->mirror.enabled);
    assert_int_equal(r->mirror.subset.num_match, 1);
    assert_string_equal(r->mirror.subset.match[0].value, "v2");
    assert_true(r->mirror.percent == 25);
    assert_int_equal(r->mirror.num_compare_headers, 2);
    assert_string_equal(r->mirror.compare_headers[0], "content-type");
    assert_string_equal(r->mirror.compare_headers[1], "etag");
    assert_int_equal(r->mirror.num_ignore_fields, 2);
    assert_string_equal(r->mirror.ignore_fields[0], "timestamp");
    assert_string_equal(r->mirror.ignore_fields[1], "meta.id");
    assert_non_null(r->retry);
    assert_int_equal(r->retry->attempts, 2);
    assert_int_equal(r->retry->on, POLIS_RETRY_CONNECT);
    assert_int_equal(r->retry->num_statuses, 0);
    /* The rest of the route's policy: the defaults, not the cluster's values. */
    assert_int_equal(r->retry->backoff_base_ms, 25);
    assert_int_equal(r->retry->backoff_max_ms, 250);
    assert_int_equal(r->retry->budget_percent, 20);
    assert_int_equal(r->retry->budget_min, 3);
    assert_int_equal(r->retry->per_try_timeout_ms, 0);
    assert_true(r->retry_idempotency_key);
    assert_int_equal(r->max_concurrent, 100);

    r = &cfg->routes[1];
    assert_int_equal(r->subset.num_match, 0);
    assert_null(r->subset.match);
    assert_int_equal(r->num_splits, 3);
    assert_int_equal(r->splits[0].weight, 95);
    assert_int_equal(r->splits[0].subset.num_match, 2);
    assert_string_equal(r->splits[0].subset.match[1].name, "zone");
    assert_string_equal(r->splits[0].subset.match[1].value, "a");
    assert_int_equal(r->splits[1].weight, 5);
    assert_int_equal(r->splits[2].weight, 0);
    assert_int_equal(r->splits[2].subset.num_match, 0);
    assert_null(r->retry);
    assert_false(r->mirror.enabled);
    assert_false(r->retry_idempotency_key);
    polis__config_free(cfg);
}

/* Absent sections: their defaults; present but empty sections: enabled with the defaults. */
static void test_resilience_defaults(void **state)
{
    struct polis_config d;
    polis__config_defaults(&d);
    assert_false(d.registry.enabled);
    assert_int_equal(d.registry.default_ttl_ms, 30000);
    assert_int_equal(d.registry.max_ttl_ms, 3600000);
    assert_int_equal(d.registry.max_wait_ms, 300000);

    struct polis_config *cfg = expect_ok(LISTEN CLUSTER "routes:\n  - cluster: users\n");
    const struct polis_cluster_cfg *c = &cfg->clusters[0];
    assert_int_equal(c->discovery.kind, POLIS_DISC_STATIC);
    assert_null(c->discovery.service);
    assert_false(c->health_check.enabled);
    assert_null(c->health_check.path);
    assert_false(c->outlier.enabled);
    assert_false(c->breaker.enabled);
    assert_false(c->instance_breaker.enabled);
    assert_int_equal(c->retry.attempts, 3);
    assert_int_equal(c->retry.on, POLIS_RETRY_CONNECT | POLIS_RETRY_RESET);
    assert_int_equal(c->retry.num_statuses, 0);
    assert_int_equal(c->retry.backoff_base_ms, 25);
    assert_int_equal(c->retry.backoff_max_ms, 250);
    assert_int_equal(c->retry.per_try_timeout_ms, 0);
    assert_int_equal(c->retry.deadline_ms, 0);
    assert_int_equal(c->retry.budget_percent, 20);
    assert_int_equal(c->retry.budget_min, 3);
    assert_int_equal(c->panic_threshold, 50);
    assert_int_equal(c->max_connections + c->max_pending + c->max_requests, 0);
    assert_int_equal(c->instances[0].num_meta, 0);
    const struct polis_route_cfg *r = &cfg->routes[0];
    assert_int_equal(r->num_cookies, 0);
    assert_int_equal(r->subset.num_match + r->num_splits, 0);
    assert_int_equal(r->fault.delay_ms, 0);
    assert_true(r->fault.delay_percent == 0 && r->fault.abort_percent == 0);
    assert_int_equal(r->fault.abort_status, 0);
    assert_false(r->mirror.enabled);
    assert_null(r->retry);
    assert_false(r->retry_idempotency_key);
    assert_int_equal(r->max_concurrent, 0);
    assert_false(cfg->registry.enabled);
    assert_int_equal(cfg->registry.default_ttl_ms, 30000);
    polis__config_free(cfg);

    cfg = expect_ok(LISTEN "registry: { enabled: true }\n"
                           "clusters:\n"
                           "  - name: users\n"
                           "    instances: [\"127.0.0.1:9001\"]\n"
                           "    health_check:\n"
                           "    outlier_detection: {}\n"
                           "    circuit_breaker: { window: time }\n"
                           "    instance_circuit_breaker: {}\n"
                           "    retry: { attempts: 1 }\n"
                           "routes:\n"
                           "  - cluster: users\n"
                           "    fault: { delay: 1s, abort_status: 500 }\n"
                           "    mirror:\n"
                           "    retry: {}\n");
    assert_true(cfg->registry.enabled);
    assert_int_equal(cfg->registry.max_ttl_ms, 3600000);
    c = &cfg->clusters[0];
    const struct polis_health_check_cfg *h = &c->health_check;
    assert_true(h->enabled);
    assert_string_equal(h->path, "/health");
    assert_null(h->host);
    assert_int_equal(h->interval_ms, 5000);
    assert_int_equal(h->timeout_ms, 1000);
    assert_int_equal(h->jitter_ms, 500);
    assert_int_equal(h->healthy_threshold, 2);
    assert_int_equal(h->unhealthy_threshold, 3);
    assert_int_equal(h->num_statuses, 1);
    assert_int_equal(h->statuses[0][0], 200);
    assert_int_equal(h->statuses[0][1], 399);
    const struct polis_outlier_cfg *o = &c->outlier;
    assert_true(o->enabled);
    assert_int_equal(o->consecutive_5xx, 5);
    assert_int_equal(o->consecutive_gateway_errors, 3);
    assert_int_equal(o->consecutive_connect_failures, 2);
    assert_int_equal(o->base_ejection_ms, 30000);
    assert_int_equal(o->max_ejection_ms, 300000);
    assert_int_equal(o->max_ejection_percent, 50);
    assert_true(c->breaker.enabled);
    assert_int_equal(c->breaker.window, POLIS_WINDOW_TIME);
    assert_int_equal(c->breaker.window_size, 10); /* seconds, for a time window */
    const struct polis_breaker_cfg *b = &c->instance_breaker;
    assert_true(b->enabled);
    assert_int_equal(b->window, POLIS_WINDOW_COUNT);
    assert_int_equal(b->window_size, 100);
    assert_int_equal(b->min_calls, 20);
    assert_int_equal(b->failure_rate, 50);
    assert_int_equal(b->slow_call_rate, 0);
    assert_int_equal(b->slow_call_ms, 5000);
    assert_int_equal(b->consecutive_failures, 0);
    assert_int_equal(b->open_ms, 30000);
    assert_int_equal(b->half_open_calls, 3);
    assert_int_equal(c->retry.attempts, 1);
    assert_int_equal(c->retry.on, POLIS_RETRY_CONNECT | POLIS_RETRY_RESET);
    r = &cfg->routes[0];
    assert_int_equal(r->fault.delay_ms, 1000);
    assert_true(r->fault.delay_percent == 100); /* a delay without a percent: every request */
    assert_int_equal(r->fault.abort_status, 500);
    assert_true(r->fault.abort_percent == 100);
    assert_true(r->mirror.enabled);
    assert_true(r->mirror.percent == 100);
    assert_int_equal(r->mirror.subset.num_match, 0);
    assert_int_equal(r->mirror.num_compare_headers + r->mirror.num_ignore_fields, 0);
    assert_non_null(r->retry);
    assert_int_equal(r->retry->attempts, 3);
    assert_int_equal(r->retry->on, POLIS_RETRY_CONNECT | POLIS_RETRY_RESET);
    assert_int_equal(r->retry->backoff_max_ms, 250);
    polis__config_free(cfg);

    /* jitter: a tenth of the interval unless given; enabled: false keeps a section off. */
    cfg = expect_ok(LISTEN "clusters:\n"
                           "  - name: users\n"
                           "    instances: [\"127.0.0.1:9001\"]\n"
                           "    health_check: { interval: 30s }\n"
                           "    outlier_detection: { enabled: false }\n"
                           "    circuit_breaker: { enabled: false, failure_rate: 0 }\n"
                           "routes:\n"
                           "  - cluster: users\n"
                           "    mirror: { enabled: false }\n");
    assert_int_equal(cfg->clusters[0].health_check.jitter_ms, 3000);
    assert_false(cfg->clusters[0].outlier.enabled);
    assert_false(cfg->clusters[0].breaker.enabled);
    assert_false(cfg->routes[0].mirror.enabled);
    polis__config_free(cfg);
}

/* A static cluster "users" (lines 2-4) with a health check at line 5, its keys from 6. */
#define CLUSTER_H LISTEN CLUSTER "    health_check:\n"
/* A cluster "a" at line 3, its keys from line 4 on. */
#define CL_A LISTEN "clusters:\n  - name: a\n"
/* A static cluster "users" (lines 2-6) with metadata, and a route "r" to it from line 8. */
#define META                                                                                       \
    LISTEN "clusters:\n"                                                                           \
           "  - name: users\n"                                                                     \
           "    instances:\n"                                                                      \
           "      - { address: \"127.0.0.1:9001\", metadata: { version: v1 } }\n"                  \
           "      - { address: \"127.0.0.1:9002\", metadata: { version: v2, zone: b } }\n"         \
           "routes:\n"                                                                             \
           "  - name: r\n"                                                                         \
           "    cluster: users\n"

static void test_discovery_errors(void **state)
{
    expect_error(CL_A "    discovery:\n      type: registry\n",
                 "t.yaml:5: clusters[0].discovery.type: registry, but the embedded registry is "
                 "off; expected registry: {enabled: true} at the top level, or another type");
    expect_one(LISTEN "registry: { enabled: true }\nadmin: off\n",
               "t.yaml:2: registry.enabled: true but admin is off", "expected an admin listener");
    expect_error(CL_A "    discovery: { type: consul }\n",
                 "t.yaml:4: clusters[0].discovery.type: found 'consul'; expected one of: static, "
                 "registry, dns, etcd");
    expect_one(CL_A "    discovery: { name: x }\n",
               "t.yaml:4: clusters[0].discovery: no type; expected type: static, registry, dns or "
               "etcd",
               "");
    expect_error(CL_A "    discovery: { type: registry, prefix: /x }\n",
                 "t.yaml:4: clusters[0].discovery: unknown key 'prefix'; expected one of: type, "
                 "service");
    expect_error(CL_A "    discovery: { type: dns, port: 53 }\n",
                 "t.yaml:4: clusters[0].discovery: no name; expected name: the DNS name to "
                 "resolve, like orders.svc.local");
    expect_error(CL_A "    discovery:\n      type: dns\n      name: x.local\n",
                 "t.yaml:5: clusters[0].discovery: no port; expected port: 1..65535 (A and AAAA "
                 "records carry no port)");
    expect_error(CL_A "    discovery:\n      type: dns\n      name: x.local\n      record: srv\n"
                      "      port: 80\n",
                 "t.yaml:8: clusters[0].discovery.port: set with record srv; expected no port "
                 "(SRV records carry the ports)");
    expect_error(CL_A
                 "    discovery:\n      type: dns\n      name: \"*.x.local\"\n      port: 80\n",
                 "t.yaml:6: clusters[0].discovery.name: found '*.x.local'; expected a DNS name "
                 "like orders.svc.local or _http._tcp.orders.local");
    expect_error(CL_A "    discovery:\n      type: dns\n      name: x.local\n      port: 80\n"
                      "      server: localhost:53\n",
                 "t.yaml:8: clusters[0].discovery.server: found 'localhost:53'; expected a "
                 "numeric address and port like 127.0.0.1:53 or [::1]:53");
    expect_error(CL_A "    discovery:\n      type: dns\n      name: x.local\n      port: 80\n"
                      "      min_ttl: 1m\n      max_ttl: 30s\n",
                 "t.yaml:8: clusters[0].discovery.min_ttl: 1m is longer than max_ttl 30s; "
                 "expected at most max_ttl");
    expect_error(CL_A "    discovery:\n      type: etcd\n      prefix: /p/\n",
                 "t.yaml:5: clusters[0].discovery: no endpoints; expected endpoints: a list of "
                 "http:// URLs like [http://127.0.0.1:2379]");
    expect_error(CL_A "    discovery:\n      type: etcd\n      prefix: /p/\n"
                      "      endpoints:\n        - http://a:1\n        - https://b:2379\n",
                 "t.yaml:9: clusters[0].discovery.endpoints[1]: found 'https://b:2379'; expected "
                 "an http:// URL like http://127.0.0.1:2379");
    expect_error(CL_A "    discovery:\n      type: etcd\n      endpoints: [\"http://a:1\"]\n"
                      "      prefix: \"\"\n",
                 "t.yaml:7: clusters[0].discovery: empty prefix; expected prefix: the key prefix "
                 "of the service's instances, like /polis/services/orders/");
    expect_error(CL_A "    discovery: { type: etcd, endpoints: [\"http://a:1\"] }\n",
                 "t.yaml:4: clusters[0].discovery: no prefix; expected prefix: the key prefix "
                 "of the service's instances, like /polis/services/orders/");
    expect_error(CL_A "    discovery: { type: dns, name: a.b, port: 1 }\n"
                      "    instances: [\"127.0.0.1:1\"]\n",
                 "t.yaml:5: clusters[0].instances: set with discovery type dns; expected no "
                 "instances (the discovery source finds them)");
    expect_error(CL_A "    discovery: { type: static }\n",
                 "t.yaml:3: clusters[0]: no instances; expected instances: a list of at least one "
                 "address like \"127.0.0.1:9001\"");
    /* A broken discovery section is reported once, not again as "no instances". */
    expect_one(CL_A "    discovery: dns\n",
               "t.yaml:4: clusters[0].discovery: found 'dns'; expected a mapping with type", "");
    expect_error(LISTEN "registry: { enabled: true, default_ttl: 2h, max_ttl: 1h }\n",
                 "t.yaml:2: registry.default_ttl: 2h is longer than max_ttl 1h; expected at most "
                 "max_ttl");
    expect_error(LISTEN "registry: { default_ttl: 500ms }\n",
                 "t.yaml:2: registry.default_ttl: found '500ms', out of range; expected 1s..24h");
    expect_error(LISTEN "registry: { enabled: yes }\n",
                 "t.yaml:2: registry.enabled: found 'yes'; expected true or false");
}

static void test_cluster_resilience_errors(void **state)
{
    expect_error(CLUSTER_H "      interval: 0\n",
                 "t.yaml:6: clusters[0].health_check.interval: found '0', out of range; expected "
                 "1ms..24h");
    expect_error(CLUSTER_H "      interval: 2s\n      timeout: 5s\n",
                 "t.yaml:7: clusters[0].health_check.timeout: 5s is longer than interval 2s; "
                 "expected at most interval");
    expect_error(CLUSTER_H "      expected_statuses: [200, \"500-400\", 700, abc]\n",
                 "t.yaml:6: clusters[0].health_check.expected_statuses[1]: found '500-400'; "
                 "expected a status like 200 or a range like \"200-299\" within 100..599");
    expect_error(CLUSTER_H "      expected_statuses: [700]\n",
                 "t.yaml:6: clusters[0].health_check.expected_statuses[0]: found '700'; expected "
                 "a status like 200 or a range like \"200-299\" within 100..599");
    expect_error(CLUSTER_H "      path: health\n",
                 "t.yaml:6: clusters[0].health_check.path: found 'health'; expected a path "
                 "starting with '/' without spaces, like /health");
    expect_error(CLUSTER_H "      healthy_threshold: 0\n",
                 "t.yaml:6: clusters[0].health_check.healthy_threshold: found '0', out of range; "
                 "expected 1..1000");
    expect_error(LISTEN CLUSTER "    outlier_detection: { max_ejection_percent: 101 }\n",
                 "t.yaml:5: clusters[0].outlier_detection.max_ejection_percent: found '101', out "
                 "of range; expected 0..100");
    expect_error(LISTEN CLUSTER "    outlier_detection:\n      base_ejection_time: 10m\n"
                                "      max_ejection_time: 1m\n",
                 "t.yaml:6: clusters[0].outlier_detection.base_ejection_time: 10m is longer than "
                 "max_ejection_time 1m; expected at most max_ejection_time");
    expect_error(LISTEN CLUSTER "    outlier_detection:\n      consecutive_5xx: 0\n"
                                "      consecutive_gateway_errors: 0\n"
                                "      consecutive_connect_failures: 0\n",
                 "t.yaml:5: clusters[0].outlier_detection: nothing can eject an instance; "
                 "expected consecutive_5xx, consecutive_gateway_errors or "
                 "consecutive_connect_failures above 0 (or enabled: false)");
    expect_error(LISTEN CLUSTER "    circuit_breaker: { failure_rate: 101 }\n",
                 "t.yaml:5: clusters[0].circuit_breaker.failure_rate: found '101', out of range; "
                 "expected 0..100");
    expect_error(LISTEN CLUSTER "    instance_circuit_breaker:\n      half_open_calls: 0\n",
                 "t.yaml:6: clusters[0].instance_circuit_breaker.half_open_calls: found '0', out "
                 "of range; expected 1..10000");
    expect_error(LISTEN CLUSTER "    circuit_breaker: { window_size: 0 }\n",
                 "t.yaml:5: clusters[0].circuit_breaker.window_size: found '0', out of range; "
                 "expected 1..100000");
    expect_error(LISTEN CLUSTER "    circuit_breaker: { window: time, window_size: 7200 }\n",
                 "t.yaml:5: clusters[0].circuit_breaker.window_size: found '7200', out of range; "
                 "expected 1..3600");
    expect_error(LISTEN CLUSTER "    circuit_breaker: { window: sliding }\n",
                 "t.yaml:5: clusters[0].circuit_breaker.window: found 'sliding'; expected count "
                 "or time");
    expect_error(LISTEN CLUSTER
                 "    circuit_breaker:\n      window_size: 10\n      minimum_calls: 20\n",
                 "t.yaml:7: clusters[0].circuit_breaker.minimum_calls: 20 is more than "
                 "window_size 10; expected at most window_size (a count window never holds more "
                 "calls)");
    expect_error(LISTEN CLUSTER "    circuit_breaker: { failure_rate: 0 }\n",
                 "t.yaml:5: clusters[0].circuit_breaker: nothing can open it; expected "
                 "failure_rate, slow_call_rate or consecutive_failures above 0 (or enabled: "
                 "false)");
    expect_error(LISTEN CLUSTER "    retry: { attempts: 11 }\n",
                 "t.yaml:5: clusters[0].retry.attempts: found '11', out of range; expected "
                 "1..10");
    expect_error(LISTEN CLUSTER "    retry: { attempts: 0 }\n",
                 "t.yaml:5: clusters[0].retry.attempts: found '0', out of range; expected 1..10");
    expect_error(LISTEN CLUSTER "    retry:\n      backoff_base: 1s\n",
                 "t.yaml:6: clusters[0].retry.backoff_base: 1s is longer than backoff_max 250ms; "
                 "expected at most backoff_max");
    expect_error(LISTEN CLUSTER "    retry:\n      on: [reset, 404]\n",
                 "t.yaml:6: clusters[0].retry.on[1]: found '404', out of range; expected "
                 "500..599");
    expect_error(LISTEN CLUSTER "    retry:\n      on: [reset, 5xx]\n",
                 "t.yaml:6: clusters[0].retry.on[1]: found '5xx'; expected connect_failure, "
                 "reset, timeout or a status from 500 to 599");
    expect_error(LISTEN CLUSTER "    retry: { on: reset }\n",
                 "t.yaml:5: clusters[0].retry.on: found 'reset'; expected a list like "
                 "[connect_failure, reset, timeout, 503]");
    expect_error(LISTEN CLUSTER "    retry: { budget_percent: 150 }\n",
                 "t.yaml:5: clusters[0].retry.budget_percent: found '150', out of range; "
                 "expected 0..100");
    expect_error(LISTEN CLUSTER "    panic_threshold: 101\n",
                 "t.yaml:5: clusters[0].panic_threshold: found '101', out of range; expected "
                 "0..100");
    expect_error(LISTEN CLUSTER "    max_requests: -1\n",
                 "t.yaml:5: clusters[0].max_requests: found '-1'; expected an integer in "
                 "0..10000000");
    expect_error(LISTEN "clusters:\n  - name: a\n    instances:\n"
                        "      - address: \"127.0.0.1:1\"\n"
                        "        metadata: { version: v1, weight: 5 }\n",
                 "t.yaml:6: clusters[0].instances[0].metadata.weight: a weight in metadata; "
                 "expected weight: beside address (only discovery sources read a weight from "
                 "metadata)");
    expect_error(LISTEN "clusters:\n  - name: a\n    instances:\n"
                        "      - address: \"127.0.0.1:1\"\n"
                        "        metadata: { \"a b\": v1 }\n",
                 "t.yaml:6: clusters[0].instances[0].metadata: key 'a b'; expected a metadata "
                 "key of letters, digits, '_', '.' or '-'");
    expect_error(LISTEN "clusters:\n  - name: a\n    instances:\n"
                        "      - address: \"127.0.0.1:1\"\n"
                        "        metadata: { zone: [a] }\n",
                 "t.yaml:6: clusters[0].instances[0].metadata.zone: found a list; expected a "
                 "metadata value (text or a number)");
}

/* A mapping's duplicate keys are reported once, also in metadata. */
static void test_metadata_once(void **state)
{
    expect_one(LISTEN "clusters:\n  - name: a\n    instances:\n"
                      "      - address: \"127.0.0.1:1\"\n"
                      "        metadata: { v: 1, v: 2 }\n",
               "t.yaml:6: clusters[0].instances[0].metadata: duplicate key 'v' (first at line 6)",
               "expected each key once");
    expect_one(LISTEN "clusters:\n  - name: a\n    instances:\n"
                      "      - address: \"127.0.0.1:1\"\n"
                      "        metadata: [v1]\n",
               "t.yaml:6: clusters[0].instances[0].metadata: found a list; expected a mapping of "
               "metadata keys to values, like {version: v2}",
               "");
}

static void test_route_traffic_errors(void **state)
{
    expect_error(META "    split:\n      - { subset: { version: v1 }, weight: 0 }\n"
                      "      - { subset: { version: v2 }, weight: 0 }\n",
                 "t.yaml:10: routes[0].split: every weight is 0; expected at least one weight "
                 "above 0");
    expect_error(META "    split:\n      - { subset: { version: v1 } }\n",
                 "t.yaml:11: routes[0].split[0]: no weight; expected weight: 0..10000");
    expect_error(META "    split:\n      - { weight: 10001 }\n",
                 "t.yaml:11: routes[0].split[0].weight: found '10001', out of range; expected "
                 "0..10000");
    expect_error(META "    split: []\n",
                 "t.yaml:10: routes[0].split: found a list; expected a list of {subset: {...}, "
                 "weight: N}");
    expect_error(META "    subset: { version: v1 }\n    split:\n      - { weight: 1 }\n",
                 "t.yaml:11: routes[0].split: set together with subset; expected only one of "
                 "them");
    expect_error(META "    subset: { version: \"\" }\n",
                 "t.yaml:10: routes[0].subset.version: empty value; expected a non-empty value");
    expect_error(META "    subset: {}\n",
                 "t.yaml:10: routes[0].subset: empty; expected a mapping of metadata keys to "
                 "values, like {version: v2}");
    expect_error(META "    subset: { version: v3 }\n",
                 "t.yaml:10: routes[0].subset: route 'r' selects {version: v3} but no instance "
                 "of cluster 'users' has that metadata; expected a subset that matches at least "
                 "one of its instances");
    expect_error(META "    split:\n      - { subset: { version: v1 }, weight: 1 }\n"
                      "      - subset: { version: v2, zone: a }\n        weight: 1\n",
                 "t.yaml:12: routes[0].split[1].subset: route 'r' selects {version: v2, zone: a} "
                 "but no instance of cluster 'users' has that metadata; expected a subset that "
                 "matches at least one of its instances");
    expect_error(META "    mirror: { subset: { zone: c } }\n",
                 "t.yaml:10: routes[0].mirror.subset: route 'r' selects {zone: c} but no "
                 "instance of cluster 'users' has that metadata; expected a subset that matches "
                 "at least one of its instances");
    expect_error(META "    fault: { delay: 1s, delay_percent: 150 }\n",
                 "t.yaml:10: routes[0].fault.delay_percent: found '150', out of range; expected "
                 "0..100");
    expect_error(META "    fault:\n      abort_status: 503\n      abort_percent: 5%\n",
                 "t.yaml:12: routes[0].fault.abort_percent: found '5%'; expected a percentage "
                 "from 0 to 100, like 10 or 0.5");
    expect_error(META "    fault: { abort_status: 100 }\n",
                 "t.yaml:10: routes[0].fault.abort_status: found '100', out of range; expected "
                 "200..599");
    expect_error(META "    fault:\n      delay_percent: 10\n",
                 "t.yaml:11: routes[0].fault.delay_percent: set without a delay; expected delay: "
                 "a duration above 0");
    expect_error(META "    fault:\n      abort_percent: 10\n",
                 "t.yaml:11: routes[0].fault.abort_percent: set without abort_status; expected "
                 "abort_status: 200..599");
    expect_error(META "    mirror:\n      percent: 100.5\n",
                 "t.yaml:11: routes[0].mirror.percent: found '100.5', out of range; expected "
                 "0..100");
    expect_error(META "    mirror:\n      compare_headers: [\"content type\"]\n",
                 "t.yaml:11: routes[0].mirror.compare_headers[0]: header name 'content type' is "
                 "not a token; expected letters, digits and !#$%&'*+-.^_`|~");
    expect_error(META "    mirror:\n      ignore_fields: [a..b]\n",
                 "t.yaml:11: routes[0].mirror.ignore_fields[0]: found 'a..b'; expected a JSON "
                 "field path like timestamp or meta.id");
    expect_error(META "    retry: { attempts: 3, backoff_base: 1s, backoff_max: 10ms }\n",
                 "t.yaml:10: routes[0].retry.backoff_base: 1s is longer than backoff_max 10ms; "
                 "expected at most backoff_max");
    expect_error(META "    retry_idempotency_key: 1\n",
                 "t.yaml:10: routes[0].retry_idempotency_key: found '1'; expected true or false");
    expect_error(META "    max_concurrent: lots\n",
                 "t.yaml:10: routes[0].max_concurrent: found 'lots'; expected an integer in "
                 "0..10000000");
    expect_error(META "    match:\n      cookies: { beta: false }\n",
                 "t.yaml:11: routes[0].match.cookies.beta: found 'false'; expected a string "
                 "value, or nothing (or true) for presence only");
    expect_error(META "    match:\n      cookies: { \"a;b\": x, c: \"1;2\" }\n",
                 "t.yaml:11: routes[0].match.cookies: cookie name 'a;b' is not a token; expected "
                 "letters, digits and !#$%&'*+-.^_`|~");
    expect_error(META "    match:\n      cookies: { c: \"1;2\" }\n",
                 "t.yaml:11: routes[0].match.cookies.c: value holds CR, LF or ';'; expected a "
                 "cookie value without them, or nothing for presence only");
    /* A subset on a cluster found by discovery cannot be checked at load time. */
    struct polis_config *cfg =
        expect_ok(LISTEN "registry: { enabled: true }\n"
                         "clusters:\n  - name: d\n    discovery: { type: registry }\n"
                         "routes:\n  - cluster: d\n    subset: { version: v9 }\n");
    assert_string_equal(cfg->routes[0].subset.match[0].value, "v9");
    polis__config_free(cfg);
}

/* Several mistakes in new sections at once: each reported once, in line order. */
static void test_resilience_multiple(void **state)
{
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    const char *yaml = LISTEN "clusters:\n"                        /* 2 */
                              "  - name: a\n"                      /* 3 */
                              "    health_check: { timeot: 1s }\n" /* 4 */
                              "    retry: { attempts: 99 }\n"      /* 5 */
                              "    instances: [\"127.0.0.1:1\"]\n" /* 6 */
                              "routes:\n"                          /* 7 */
                              "  - cluster: a\n"                   /* 8 */
                              "    fault: { abort_status: 700 }\n" /* 9 */
                              "    mirror: [1]\n";                 /* 10 */
    assert_int_equal(load(yaml, &cfg, &e), POLIS_EINVAL);
    assert_null(cfg);
    const char *want[] = {
        "t.yaml:4: clusters[0].health_check: unknown key 'timeot'; expected one of: enabled, "
        "path, host, interval, timeout, jitter, healthy_threshold, unhealthy_threshold, "
        "expected_statuses",
        "t.yaml:5: clusters[0].retry.attempts: found '99', out of range; expected 1..10",
        "t.yaml:9: routes[0].fault.abort_status: found '700', out of range; expected 200..599",
        "t.yaml:10: routes[0].mirror: found a list; expected a mapping of mirror settings",
    };
    if (e.count != sizeof(want) / sizeof(want[0]))
        dump(&e);
    assert_int_equal(e.count, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < e.count; i++)
        assert_string_equal(e.msgs[i], want[i]);
    polis__config_errors_free(&e);
}

/* Clusters and routes built in code (quick mode) leave the new fields zeroed: they validate,
 * with the default retry policy and panic threshold; zeroed fields of enabled sections are
 * reported. */
static void test_resilience_in_code(void **state)
{
    struct polis_config *cfg = calloc(1, sizeof(*cfg));
    assert_non_null(cfg);
    polis__config_defaults(cfg);
    cfg->source = strdup("command line");
    assert_int_equal(polis__addr_parse(":8080", &cfg->listen), 0);
    cfg->num_clusters = 1;
    cfg->clusters = calloc(1, sizeof(*cfg->clusters));
    struct polis_cluster_cfg *c = &cfg->clusters[0];
    c->name = strdup("backend");
    c->keepalive = 64;
    c->connect_timeout_ms = 2000;
    c->timeout_ms = 30000;
    c->num_instances = 1;
    c->instances = calloc(1, sizeof(*c->instances));
    c->instances[0].weight = 1;
    assert_int_equal(polis__addr_parse("127.0.0.1:9001", &c->instances[0].addr), 0);
    cfg->num_routes = 1;
    cfg->routes = calloc(1, sizeof(*cfg->routes));
    cfg->routes[0].cluster = strdup("backend");

    struct polis_config_errors e = {0};
    assert_int_equal(polis__config_validate(cfg, &e), 0);
    assert_int_equal(c->retry.attempts, 3);
    assert_int_equal(c->retry.on, POLIS_RETRY_CONNECT | POLIS_RETRY_RESET);
    assert_int_equal(c->retry.backoff_base_ms, 25);
    assert_int_equal(c->retry.backoff_max_ms, 250);
    assert_int_equal(c->retry.budget_percent, 20);
    assert_int_equal(c->retry.budget_min, 3);
    assert_int_equal(c->panic_threshold, 50);
    assert_false(c->health_check.enabled);
    assert_null(cfg->routes[0].retry);

    /* Enabled sections with zeroed numbers, a broken retry, a subset matching nothing. */
    c->health_check.enabled = true;
    c->breaker.enabled = true;
    c->retry.backoff_base_ms = 500;
    c->retry.on |= POLIS_RETRY_STATUS;
    c->discovery.kind = POLIS_DISC_DNS;
    cfg->routes[0].subset.num_match = 1;
    cfg->routes[0].subset.match = calloc(1, sizeof(*cfg->routes[0].subset.match));
    cfg->routes[0].subset.match[0].name = strdup("version");
    cfg->routes[0].subset.match[0].value = strdup("v2");
    assert_int_equal(polis__config_validate(cfg, &e), POLIS_EINVAL);
    const char *want[] = {
        "command line: clusters[0].instances: set with discovery type dns; expected no "
        "instances (the discovery source finds them)",
        "command line: clusters[0].discovery: no name; expected name: the DNS name to resolve, "
        "like orders.svc.local",
        "command line: clusters[0].discovery: no port; expected port: 1..65535 (A and AAAA "
        "records carry no port)",
        "command line: clusters[0].discovery.min_ttl: found 0, out of range; expected 100ms..24h",
        "command line: clusters[0].discovery.max_ttl: found 0, out of range; expected 1ms..24h",
        "command line: clusters[0].health_check.interval: found 0, out of range; expected "
        "1ms..24h",
        "command line: clusters[0].health_check.timeout: found 0, out of range; expected "
        "1ms..24h",
        "command line: clusters[0].health_check.healthy_threshold: found 0, out of range; "
        "expected 1..1000",
        "command line: clusters[0].health_check.unhealthy_threshold: found 0, out of range; "
        "expected 1..1000",
        "command line: clusters[0].circuit_breaker.window_size: found 0, out of range; expected "
        "1..100000",
        "command line: clusters[0].circuit_breaker.minimum_calls: found 0, out of range; "
        "expected 1..1000000",
        "command line: clusters[0].circuit_breaker.slow_call_duration: found 0, out of range; "
        "expected 1ms..24h",
        "command line: clusters[0].circuit_breaker.open_duration: found 0, out of range; "
        "expected 1ms..24h",
        "command line: clusters[0].circuit_breaker.half_open_calls: found 0, out of range; "
        "expected 1..10000",
        "command line: clusters[0].circuit_breaker: nothing can open it; expected failure_rate, "
        "slow_call_rate or consecutive_failures above 0 (or enabled: false)",
        "command line: clusters[0].retry.on: retries on a status but lists none; expected "
        "status numbers from 500 to 599",
        "command line: clusters[0].retry.backoff_base: 500ms is longer than backoff_max 250ms; "
        "expected at most backoff_max",
    };
    if (e.count != sizeof(want) / sizeof(want[0]))
        dump(&e);
    assert_int_equal(e.count, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < e.count; i++)
        assert_string_equal(e.msgs[i], want[i]);
    polis__config_errors_free(&e);
    /* The health check's path and statuses got their defaults. */
    assert_string_equal(c->health_check.path, "/health");
    assert_int_equal(c->health_check.num_statuses, 1);

    /* Back to static: now the route's subset must match an instance. */
    c->discovery.kind = POLIS_DISC_STATIC;
    c->health_check.enabled = false;
    c->breaker.enabled = false;
    c->retry.backoff_base_ms = 25;
    c->retry.on = POLIS_RETRY_CONNECT;
    assert_int_equal(polis__config_validate(cfg, &e), POLIS_EINVAL);
    assert_int_equal(e.count, 1);
    assert_string_equal(e.msgs[0], "command line: routes[0].subset: route 'route-0' selects "
                                   "{version: v2} but no instance of cluster 'backend' has that "
                                   "metadata; expected a subset that matches at least one of "
                                   "its instances");
    polis__config_errors_free(&e);
    c->instances[0].num_meta = 1;
    c->instances[0].meta = calloc(1, sizeof(*c->instances[0].meta));
    c->instances[0].meta[0].name = strdup("version");
    c->instances[0].meta[0].value = strdup("v2");
    assert_int_equal(polis__config_validate(cfg, &e), 0);
    polis__config_free(cfg);
}

/* ---- Edge security ----------------------------------------------------------------------- */

/* A directory of small files the security sections point at (their content is not parsed). */
static char sec_dir[64];

static void sec_file(const char *name, const char *content)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", sec_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

static const char *const sec_files[] = {"a.pem",    "a.key",      "b.pem",      "b.key",
                                        "ca.pem",   "client.pem", "client.key", "rsa.pub.pem",
                                        "hmac.key", "jwks.json",  "redis.pw",   NULL};

static void sec_dir_create(void)
{
    snprintf(sec_dir, sizeof(sec_dir), "/tmp/polis-sec-XXXXXX");
    assert_non_null(mkdtemp(sec_dir));
    for (size_t i = 0; sec_files[i]; i++)
        sec_file(sec_files[i], "-----BEGIN PLACEHOLDER-----\n");
    sec_file("empty", "");
    char path[128];
    snprintf(path, sizeof(path), "%s/dir", sec_dir);
    assert_int_equal(mkdir(path, 0700), 0);
}

static void sec_dir_remove(void)
{
    char path[128];
    for (size_t i = 0; sec_files[i]; i++) {
        snprintf(path, sizeof(path), "%s/%s", sec_dir, sec_files[i]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/empty", sec_dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/dir", sec_dir);
    rmdir(path);
    rmdir(sec_dir);
}

/* s with every '@' replaced by the directory of files (the caller frees it). */
static char *at_dir(const char *s)
{
    size_t n = 0, dl = strlen(sec_dir);
    for (const char *c = s; *c; c++)
        n += *c == '@' ? dl : 1;
    char *out = malloc(n + 1), *o = out;
    assert_non_null(out);
    for (const char *c = s; *c; c++) {
        if (*c == '@') {
            memcpy(o, sec_dir, dl);
            o += dl;
        } else {
            *o++ = *c;
        }
    }
    *o = 0;
    return out;
}

/* expect_error with '@' standing for the directory of files in both texts. */
static void expect_sec(const char *yaml, const char *want)
{
    char *y = at_dir(yaml), *w = at_dir(want);
    expect_error(y, w);
    free(y);
    free(w);
}

static struct polis_config *expect_sec_ok(const char *yaml)
{
    char *y = at_dir(yaml);
    struct polis_config *cfg = expect_ok(y);
    free(y);
    return cfg;
}

#define HEX_A "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
/* The SHA-256 of "alice-key". */
#define HEX_B "72ee9d4355ccb9d3a4c9dbf37382e38e75c1b1a225b5bd1f729ee91bbda30c20"

static const char SEC_FULL[] =
    "listen: \":8443\"\n"                                              /* 1 */
    "limits:\n"                                                        /* 2 */
    "  max_connections_per_ip: 64\n"                                   /* 3 */
    "tls:\n"                                                           /* 4 */
    "  certificates:\n"                                                /* 5 */
    "    - cert: @/a.pem\n"                                            /* 6 */
    "      key: @/a.key\n"                                             /* 7 */
    "    - { cert: @/b.pem, key: @/b.key }\n"                          /* 8 */
    "  min_version: \"1.3\"\n"                                         /* 9 */
    "  alpn: [http/1.1]\n"                                             /* 10 */
    "  session_tickets: false\n"                                       /* 11 */
    "  session_timeout: 10m\n"                                         /* 12 */
    "  client_auth: required\n"                                        /* 13 */
    "  client_ca: @/ca.pem\n"                                          /* 14 */
    "  forward_subject: X-Subject\n"                                   /* 15 */
    "clusters:\n"                                                      /* 16 */
    "  - name: x\n"                                                    /* 17 */
    "    instances: [\"127.0.0.1:9001\"]\n"                            /* 18 */
    "    tls:\n"                                                       /* 19 */
    "      ca: @/ca.pem\n"                                             /* 20 */
    "      verify: false\n"                                            /* 21 */
    "      server_name: svc.internal\n"                                /* 22 */
    "      cert: @/client.pem\n"                                       /* 23 */
    "      key: @/client.key\n"                                        /* 24 */
    "  - name: y\n"                                                    /* 25 */
    "    instances: [\"127.0.0.1:9002\"]\n"                            /* 26 */
    "    tls: {}\n"                                                    /* 27 */
    "jwt:\n"                                                           /* 28 */
    "  cache_size: 500\n"                                              /* 29 */
    "  issuers:\n"                                                     /* 30 */
    "    - name: main\n"                                               /* 31 */
    "      issuer: https://issuer.example\n"                           /* 32 */
    "      audiences: [api, web]\n"                                    /* 33 */
    "      algorithms: [RS256, ES256, HS256, EdDSA]\n"                 /* 34 */
    "      keys:\n"                                                    /* 35 */
    "        - {file: @/rsa.pub.pem, kid: k1, algorithm: RS256}\n"     /* 36 */
    "        - {secret_file: @/hmac.key, kid: h1, algorithm: HS256}\n" /* 37 */
    "      jwks_file: @/jwks.json\n"                                   /* 38 */
    "      jwks_url: https://idp.example/jwks.json\n"                  /* 39 */
    "      jwks_ca: @/ca.pem\n"                                        /* 40 */
    "      jwks_refresh: 1h\n"                                         /* 41 */
    "      jwks_min_refresh: 1m\n"                                     /* 42 */
    "      leeway: 5s\n"                                               /* 43 */
    "      require_exp: false\n"                                       /* 44 */
    "    - name: other\n"                                              /* 45 */
    "      issuer: other-iss\n"                                        /* 46 */
    "      algorithms: [PS256]\n"                                      /* 47 */
    "      jwks_url: \"https://other.example:8443/keys\"\n"            /* 48 */
    "api_keys:\n"                                                      /* 49 */
    "  header: X-Key\n"                                                /* 50 */
    "  query: key\n"                                                   /* 51 */
    "consumers:\n"                                                     /* 52 */
    "  - name: alice\n"                                                /* 53 */
    "    groups: [gold, staff]\n"                                      /* 54 */
    "    keys: [\"sha256:" HEX_A "\", \"sha256:" HEX_B "\"]\n"         /* 55 */
    "  - name: bob\n"                                                  /* 56 */
    "    groups: []\n"                                                 /* 57 */
    "  - name: carol\n"                                                /* 58 */
    "rate_limits:\n"                                                   /* 59 */
    "  - name: per-consumer\n"                                         /* 60 */
    "    rate: 100/s\n"                                                /* 61 */
    "    burst: 20\n"                                                  /* 62 */
    "    key: consumer\n"                                              /* 63 */
    "  - name: per-ip\n"                                               /* 64 */
    "    rate: 6000/m\n"                                               /* 65 */
    "    key: client_ip\n"                                             /* 66 */
    "    backend: redis\n"                                             /* 67 */
    "    redis: {address: \"127.0.0.1:6379\", timeout: 20ms, on_failure: closed, "
    "password_file: @/redis.pw, db: 3}\n"                           /* 68 */
    "  - name: tenant\n"                                            /* 69 */
    "    rate: 50000/h\n"                                           /* 70 */
    "    key: \"header:X-Tenant\"\n"                                /* 71 */
    "    backend: redis\n"                                          /* 72 */
    "    redis: {address: \"redis.internal:6380\"}\n"               /* 73 */
    "  - name: whole\n"                                             /* 74 */
    "    rate: 10/s\n"                                              /* 75 */
    "    key: route\n"                                              /* 76 */
    "trusted_proxies: [10.0.0.0/8, 127.0.0.1, \"fd00::/8\"]\n"      /* 77 */
    "access: {allow: [10.0.0.0/8, \"::1\"], deny: [10.1.2.3/32]}\n" /* 78 */
    "routes:\n"                                                     /* 79 */
    "  - name: orders\n"                                            /* 80 */
    "    match: { prefix: /orders/ }\n"                             /* 81 */
    "    cluster: x\n"                                              /* 82 */
    "    auth:\n"                                                   /* 83 */
    "      jwt: {issuers: [main], required_claims: {role: admin}, scopes: [orders:read, "
    "orders:write], forward_claims: {sub: X-User-Id, tenant: X-Tenant-Id}, "
    "strip_authorization: true}\n" /* 84 */
    "      api_key: true\n"        /* 85 */
    "      consumers: {allow: [alice], allow_groups: [gold], deny: [bob], "
    "deny_groups: []}\n"                       /* 86 */
    "      any: true\n"                        /* 87 */
    "      forward_consumer: X-Who\n"          /* 88 */
    "    rate_limit: [per-consumer, per-ip]\n" /* 89 */
    "    cors: {origins: [\"https://app.example\", \"http://localhost:3000\"], methods: [GET, "
    "POST], headers: [Content-Type], expose_headers: [], credentials: true, max_age: 10m}\n" /* 90
                                                                                              */
    "    access: {deny: [\"192.168.0.0/16\"]}\n" /* 91 */
    "  - name: public\n"                         /* 92 */
    "    match: { prefix: /public/ }\n"          /* 93 */
    "    cluster: y\n"                           /* 94 */
    "    auth: {api_key: true}\n"                /* 95 */
    "    rate_limit: whole\n"                    /* 96 */
    "    cors: {origins: [\"*\"]}\n"             /* 97 */
    "  - name: token\n"                          /* 98 */
    "    cluster: y\n"                           /* 99 */
    "    auth: {jwt: true}\n"                    /* 100 */
    "    rate_limit: tenant\n";                  /* 101 */

static void assert_cidr(const struct polis_cidr *c, int family, const char *ip, unsigned prefix)
{
    uint8_t want[16] = {0};
    assert_int_equal(c->family, family);
    assert_int_equal(inet_pton(family, ip, want), 1);
    assert_memory_equal(c->addr, want, family == AF_INET ? 4 : 16);
    assert_int_equal(c->prefix, prefix);
}

/* Every security setting, read back. */
static void test_security_full(void **state)
{
    sec_dir_create();
    struct polis_config *cfg = expect_sec_ok(SEC_FULL);
    char want[160];

    assert_int_equal(cfg->limits.max_connections_per_ip, 64);
    const struct polis_tls_cfg *t = &cfg->tls;
    assert_true(t->enabled);
    assert_int_equal(t->num_certs, 2);
    snprintf(want, sizeof(want), "%s/a.pem", sec_dir);
    assert_string_equal(t->certs[0].cert, want);
    snprintf(want, sizeof(want), "%s/a.key", sec_dir);
    assert_string_equal(t->certs[0].key, want);
    assert_int_equal(t->certs[0].line, 6);
    snprintf(want, sizeof(want), "%s/b.key", sec_dir);
    assert_string_equal(t->certs[1].key, want);
    assert_int_equal(t->certs[1].line, 8);
    assert_int_equal(t->min_version, POLIS_CFG_TLS_1_3);
    assert_int_equal(t->num_alpn, 1);
    assert_string_equal(t->alpn[0], "http/1.1");
    assert_false(t->session_tickets);
    assert_int_equal(t->session_timeout_ms, 600000);
    assert_int_equal(t->client_auth, POLIS_CLIENT_AUTH_REQUIRED);
    snprintf(want, sizeof(want), "%s/ca.pem", sec_dir);
    assert_string_equal(t->client_ca, want);
    assert_string_equal(t->forward_subject, "X-Subject");

    const struct polis_upstream_tls_cfg *ut = &cfg->clusters[0].tls;
    assert_true(ut->enabled);
    assert_string_equal(ut->ca, want);
    assert_false(ut->verify);
    assert_string_equal(ut->server_name, "svc.internal");
    snprintf(want, sizeof(want), "%s/client.pem", sec_dir);
    assert_string_equal(ut->cert, want);
    snprintf(want, sizeof(want), "%s/client.key", sec_dir);
    assert_string_equal(ut->key, want);
    ut = &cfg->clusters[1].tls; /* tls: {} is TLS with the defaults */
    assert_true(ut->enabled);
    assert_true(ut->verify);
    assert_null(ut->ca);
    assert_null(ut->server_name);
    assert_null(ut->cert);

    const struct polis_jwt_cfg *j = &cfg->jwt;
    assert_int_equal(j->cache_size, 500);
    assert_int_equal(j->num_issuers, 2);
    const struct polis_jwt_issuer_cfg *is = &j->issuers[0];
    assert_string_equal(is->name, "main");
    assert_string_equal(is->issuer, "https://issuer.example");
    assert_int_equal(is->num_audiences, 2);
    assert_string_equal(is->audiences[1], "web");
    assert_int_equal(is->algorithms, (1u << POLIS_JWT_RS256) | (1u << POLIS_JWT_ES256) |
                                         (1u << POLIS_JWT_HS256) | (1u << POLIS_JWT_EDDSA));
    assert_int_equal(is->num_keys, 2);
    snprintf(want, sizeof(want), "%s/rsa.pub.pem", sec_dir);
    assert_string_equal(is->keys[0].file, want);
    assert_null(is->keys[0].secret_file);
    assert_string_equal(is->keys[0].kid, "k1");
    assert_int_equal(is->keys[0].alg, POLIS_JWT_RS256);
    assert_int_equal(is->keys[0].line, 36);
    snprintf(want, sizeof(want), "%s/hmac.key", sec_dir);
    assert_string_equal(is->keys[1].secret_file, want);
    assert_null(is->keys[1].file);
    assert_int_equal(is->keys[1].alg, POLIS_JWT_HS256);
    snprintf(want, sizeof(want), "%s/jwks.json", sec_dir);
    assert_string_equal(is->jwks_file, want);
    assert_string_equal(is->jwks_url, "https://idp.example/jwks.json");
    snprintf(want, sizeof(want), "%s/ca.pem", sec_dir);
    assert_string_equal(is->jwks_ca, want);
    assert_int_equal(is->jwks_refresh_ms, 3600000);
    assert_int_equal(is->jwks_min_refresh_ms, 60000);
    assert_int_equal(is->leeway_ms, 5000);
    assert_false(is->require_exp);
    assert_int_equal(is->line, 31);
    is = &j->issuers[1]; /* the defaults */
    assert_string_equal(is->name, "other");
    assert_int_equal(is->algorithms, 1u << POLIS_JWT_PS256);
    assert_int_equal(is->num_keys, 0);
    assert_int_equal(is->num_audiences, 0);
    assert_null(is->jwks_file);
    assert_null(is->jwks_ca);
    assert_int_equal(is->jwks_refresh_ms, 600000);
    assert_int_equal(is->jwks_min_refresh_ms, 30000);
    assert_int_equal(is->leeway_ms, 30000);
    assert_true(is->require_exp);
    assert_string_equal(polis__jwt_alg_names[POLIS_JWT_EDDSA], "EdDSA");
    assert_string_equal(polis__jwt_alg_names[POLIS_JWT_PS256], "PS256");

    assert_string_equal(cfg->api_keys.header, "X-Key");
    assert_string_equal(cfg->api_keys.query, "key");

    assert_int_equal(cfg->num_consumers, 3);
    const struct polis_consumer_cfg *c = &cfg->consumers[0];
    assert_string_equal(c->name, "alice");
    assert_int_equal(c->num_groups, 2);
    assert_string_equal(c->groups[1], "staff");
    assert_int_equal(c->num_keys, 2);
    assert_int_equal(c->key_sha256[0][0], 0x01);
    assert_int_equal(c->key_sha256[0][7], 0xef);
    assert_int_equal(c->key_sha256[0][31], 0xef);
    assert_int_equal(c->key_sha256[1][0], 0x72);
    assert_int_equal(c->key_sha256[1][31], 0x20);
    assert_int_equal(c->line, 53);
    assert_string_equal(cfg->consumers[1].name, "bob");
    assert_int_equal(cfg->consumers[1].num_groups, 0);
    assert_int_equal(cfg->consumers[2].num_keys, 0);

    assert_int_equal(cfg->num_rate_limits, 4);
    const struct polis_rate_limit_cfg *rl = &cfg->rate_limits[0];
    assert_string_equal(rl->name, "per-consumer");
    assert_int_equal(rl->count, 100);
    assert_int_equal(rl->period_ms, 1000);
    assert_int_equal(rl->burst, 20);
    assert_int_equal(rl->key, POLIS_RL_KEY_CONSUMER);
    assert_int_equal(rl->backend, POLIS_RL_LOCAL);
    assert_null(rl->redis.address);
    rl = &cfg->rate_limits[1];
    assert_int_equal(rl->count, 6000);
    assert_int_equal(rl->period_ms, 60000);
    assert_int_equal(rl->burst, 6000); /* the rate's count */
    assert_int_equal(rl->key, POLIS_RL_KEY_CLIENT_IP);
    assert_int_equal(rl->backend, POLIS_RL_REDIS);
    assert_string_equal(rl->redis.address, "127.0.0.1:6379");
    assert_int_equal(rl->redis.timeout_ms, 20);
    assert_int_equal(rl->redis.on_failure, POLIS_REDIS_FAIL_CLOSED);
    snprintf(want, sizeof(want), "%s/redis.pw", sec_dir);
    assert_string_equal(rl->redis.password_file, want);
    assert_int_equal(rl->redis.db, 3);
    rl = &cfg->rate_limits[2];
    assert_int_equal(rl->count, 50000);
    assert_int_equal(rl->period_ms, 3600000);
    assert_int_equal(rl->key, POLIS_RL_KEY_HEADER);
    assert_string_equal(rl->key_header, "X-Tenant");
    assert_string_equal(rl->redis.address, "redis.internal:6380");
    assert_int_equal(rl->redis.timeout_ms, 50);
    assert_int_equal(rl->redis.on_failure, POLIS_REDIS_FAIL_LOCAL);
    assert_null(rl->redis.password_file);
    assert_int_equal(rl->redis.db, 0);
    assert_int_equal(cfg->rate_limits[3].key, POLIS_RL_KEY_ROUTE);
    assert_null(cfg->rate_limits[3].key_header);

    assert_int_equal(cfg->num_trusted_proxies, 3);
    assert_cidr(&cfg->trusted_proxies[0], AF_INET, "10.0.0.0", 8);
    assert_cidr(&cfg->trusted_proxies[1], AF_INET, "127.0.0.1", 32);
    assert_cidr(&cfg->trusted_proxies[2], AF_INET6, "fd00::", 8);
    assert_int_equal(cfg->access.num_allow, 2);
    assert_cidr(&cfg->access.allow[1], AF_INET6, "::1", 128);
    assert_int_equal(cfg->access.num_deny, 1);
    assert_cidr(&cfg->access.deny[0], AF_INET, "10.1.2.3", 32);

    const struct polis_route_cfg *r = &cfg->routes[0];
    const struct polis_auth_cfg *a = &r->auth;
    assert_true(a->jwt && a->api_key && a->any);
    assert_int_equal(a->jwt_rules.num_issuers, 1);
    assert_string_equal(a->jwt_rules.issuers[0].name, "main");
    assert_int_equal(a->jwt_rules.issuers[0].index, 0);
    assert_int_equal(a->jwt_rules.num_required_claims, 1);
    assert_string_equal(a->jwt_rules.required_claims[0].name, "role");
    assert_string_equal(a->jwt_rules.required_claims[0].value, "admin");
    assert_int_equal(a->jwt_rules.num_scopes, 2);
    assert_string_equal(a->jwt_rules.scopes[1], "orders:write");
    assert_int_equal(a->jwt_rules.num_forward_claims, 2);
    assert_string_equal(a->jwt_rules.forward_claims[1].name, "tenant");
    assert_string_equal(a->jwt_rules.forward_claims[1].value, "X-Tenant-Id");
    assert_true(a->jwt_rules.strip_authorization);
    assert_int_equal(a->consumers.num_allow, 1);
    assert_string_equal(a->consumers.allow[0].name, "alice");
    assert_int_equal(a->consumers.allow[0].index, 0);
    assert_int_equal(a->consumers.num_deny, 1);
    assert_int_equal(a->consumers.deny[0].index, 1);
    assert_int_equal(a->consumers.num_allow_groups, 1);
    assert_string_equal(a->consumers.allow_groups[0], "gold");
    assert_int_equal(a->consumers.num_deny_groups, 0);
    assert_string_equal(a->forward_consumer, "X-Who");
    assert_int_equal(r->num_rate_limits, 2);
    assert_string_equal(r->rate_limits[1].name, "per-ip");
    assert_int_equal(r->rate_limits[1].index, 1);
    const struct polis_cors_cfg *co = &r->cors;
    assert_true(co->enabled);
    assert_int_equal(co->num_origins, 2);
    assert_string_equal(co->origins[1], "http://localhost:3000");
    assert_int_equal(co->num_methods, 2);
    assert_string_equal(co->methods[1], "POST");
    assert_int_equal(co->num_headers, 1);
    assert_int_equal(co->num_expose_headers, 0);
    assert_true(co->credentials);
    assert_int_equal(co->max_age_ms, 600000);
    assert_int_equal(r->access.num_allow, 0);
    assert_cidr(&r->access.deny[0], AF_INET, "192.168.0.0", 16);

    r = &cfg->routes[1];
    assert_false(r->auth.jwt);
    assert_true(r->auth.api_key);
    assert_false(r->auth.any);
    assert_string_equal(r->auth.forward_consumer, "X-Consumer"); /* the default */
    assert_int_equal(r->num_rate_limits, 1);
    assert_int_equal(r->rate_limits[0].index, 3);
    assert_int_equal(r->cors.num_origins, 1);
    assert_string_equal(r->cors.origins[0], "*");
    assert_false(r->cors.credentials);
    assert_int_equal(r->cors.num_methods, 0);
    assert_int_equal(r->cors.max_age_ms, 0);

    r = &cfg->routes[2];
    assert_true(r->auth.jwt);
    assert_int_equal(r->auth.jwt_rules.num_issuers, 0); /* any issuer */
    assert_false(r->auth.jwt_rules.strip_authorization);
    assert_false(r->auth.api_key);
    assert_null(r->auth.forward_consumer);
    assert_int_equal(r->rate_limits[0].index, 2);
    polis__config_free(cfg);
    sec_dir_remove();
}

/* Without the security sections, everything is off and the defaults are in place. */
static void test_security_defaults(void **state)
{
    struct polis_config d;
    polis__config_defaults(&d);
    assert_false(d.tls.enabled);
    assert_int_equal(d.tls.min_version, POLIS_CFG_TLS_1_2);
    assert_true(d.tls.session_tickets);
    assert_int_equal(d.tls.session_timeout_ms, 300000);
    assert_int_equal(d.tls.client_auth, POLIS_CLIENT_AUTH_OFF);
    assert_int_equal(d.jwt.cache_size, 10000);
    assert_int_equal(d.limits.max_connections_per_ip, 0);

    struct polis_config *cfg = expect_ok(LISTEN CLUSTER "routes:\n  - cluster: users\n");
    assert_false(cfg->tls.enabled);
    assert_int_equal(cfg->tls.num_certs, 0);
    assert_null(cfg->tls.forward_subject);
    assert_int_equal(cfg->jwt.num_issuers, 0);
    assert_int_equal(cfg->jwt.cache_size, 10000);
    assert_string_equal(cfg->api_keys.header, "X-API-Key");
    assert_null(cfg->api_keys.query);
    assert_int_equal(cfg->num_consumers, 0);
    assert_int_equal(cfg->num_rate_limits, 0);
    assert_int_equal(cfg->num_trusted_proxies, 0);
    assert_int_equal(cfg->access.num_allow + cfg->access.num_deny, 0);
    assert_int_equal(cfg->limits.max_connections_per_ip, 0);
    assert_false(cfg->clusters[0].tls.enabled);
    const struct polis_route_cfg *r = &cfg->routes[0];
    assert_false(r->auth.jwt || r->auth.api_key || r->auth.any);
    assert_null(r->auth.forward_consumer);
    assert_int_equal(r->num_rate_limits, 0);
    assert_false(r->cors.enabled);
    assert_int_equal(r->access.num_allow + r->access.num_deny, 0);
    polis__config_free(cfg);

    /* A section present with only its required keys: the defaults of each key. */
    sec_dir_create();
    cfg = expect_sec_ok(LISTEN "tls:\n  certificates: [{cert: @/a.pem, key: @/a.key}]\n"
                               "rate_limits:\n  - { name: r, rate: 5/s }\n" CLUSTER
                               "routes:\n  - cluster: users\n    rate_limit: r\n"
                               "    cors: { origins: [\"https://a.example\"] }\n");
    assert_true(cfg->tls.enabled);
    assert_int_equal(cfg->tls.min_version, POLIS_CFG_TLS_1_2);
    assert_true(cfg->tls.session_tickets);
    assert_int_equal(cfg->tls.session_timeout_ms, 300000);
    assert_int_equal(cfg->tls.client_auth, POLIS_CLIENT_AUTH_OFF);
    assert_null(cfg->tls.client_ca);
    assert_int_equal(cfg->tls.num_alpn, 1);
    assert_string_equal(cfg->tls.alpn[0], "http/1.1");
    assert_string_equal(cfg->tls.forward_subject, "X-Client-Subject");
    const struct polis_rate_limit_cfg *rl = &cfg->rate_limits[0];
    assert_int_equal(rl->count, 5);
    assert_int_equal(rl->burst, 5);
    assert_int_equal(rl->key, POLIS_RL_KEY_CLIENT_IP);
    assert_int_equal(rl->backend, POLIS_RL_LOCAL);
    assert_true(cfg->routes[0].cors.enabled);
    assert_false(cfg->routes[0].cors.credentials);
    polis__config_free(cfg);
    sec_dir_remove();
}

/* Networks: parsing and matching. */
static void test_cidr(void **state)
{
    struct polis_cidr c;
    struct sockaddr_in in = {.sin_family = AF_INET};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};

    assert_int_equal(polis__cidr_parse("10.0.0.0/8", &c), 0);
    assert_cidr(&c, AF_INET, "10.0.0.0", 8);
    inet_pton(AF_INET, "10.255.1.2", &in.sin_addr);
    assert_true(polis__cidr_match(&c, (struct sockaddr *)&in));
    inet_pton(AF_INET, "11.0.0.1", &in.sin_addr);
    assert_false(polis__cidr_match(&c, (struct sockaddr *)&in));
    /* An IPv4-mapped IPv6 peer is the IPv4 address; a plain IPv6 one is not. */
    inet_pton(AF_INET6, "::ffff:10.1.2.3", &in6.sin6_addr);
    assert_true(polis__cidr_match(&c, (struct sockaddr *)&in6));
    inet_pton(AF_INET6, "::a01:203", &in6.sin6_addr);
    assert_false(polis__cidr_match(&c, (struct sockaddr *)&in6));

    assert_int_equal(polis__cidr_parse("172.16.0.0/12", &c), 0);
    inet_pton(AF_INET, "172.31.255.255", &in.sin_addr);
    assert_true(polis__cidr_match(&c, (struct sockaddr *)&in));
    inet_pton(AF_INET, "172.32.0.0", &in.sin_addr);
    assert_false(polis__cidr_match(&c, (struct sockaddr *)&in));
    inet_pton(AF_INET, "172.15.255.255", &in.sin_addr);
    assert_false(polis__cidr_match(&c, (struct sockaddr *)&in));

    assert_int_equal(polis__cidr_parse("0.0.0.0/0", &c), 0);
    inet_pton(AF_INET, "203.0.113.9", &in.sin_addr);
    assert_true(polis__cidr_match(&c, (struct sockaddr *)&in));
    assert_false(polis__cidr_match(&c, (struct sockaddr *)&in6));

    assert_int_equal(polis__cidr_parse("192.0.2.7", &c), 0); /* one host */
    assert_cidr(&c, AF_INET, "192.0.2.7", 32);
    inet_pton(AF_INET, "192.0.2.7", &in.sin_addr);
    assert_true(polis__cidr_match(&c, (struct sockaddr *)&in));
    inet_pton(AF_INET, "192.0.2.6", &in.sin_addr);
    assert_false(polis__cidr_match(&c, (struct sockaddr *)&in));

    assert_int_equal(polis__cidr_parse("fd00::/8", &c), 0);
    assert_cidr(&c, AF_INET6, "fd00::", 8);
    inet_pton(AF_INET6, "fd12:3456::1", &in6.sin6_addr);
    assert_true(polis__cidr_match(&c, (struct sockaddr *)&in6));
    inet_pton(AF_INET6, "fe80::1", &in6.sin6_addr);
    assert_false(polis__cidr_match(&c, (struct sockaddr *)&in6));
    assert_false(polis__cidr_match(&c, (struct sockaddr *)&in));
    assert_int_equal(polis__cidr_parse("2001:db8::/33", &c), 0);
    inet_pton(AF_INET6, "2001:db8:7fff::1", &in6.sin6_addr);
    assert_true(polis__cidr_match(&c, (struct sockaddr *)&in6));
    inet_pton(AF_INET6, "2001:db8:8000::1", &in6.sin6_addr);
    assert_false(polis__cidr_match(&c, (struct sockaddr *)&in6));
    assert_int_equal(polis__cidr_parse("::1", &c), 0);
    assert_cidr(&c, AF_INET6, "::1", 128);

    static const char *const bad[] = {"",           "/8",         "10.0.0.1/8",  "10.0.0.0/33",
                                      "10.0.0/8",   "10.0.0.0/",  "10.0.0.0/a",  "10.0.0.0/08a",
                                      "fd00::/129", "fd00::1/64", "10.0.0.0/8 ", "host/8",
                                      "1.2.3.4/-1", "[::1]/128",  NULL};
    for (size_t i = 0; bad[i]; i++) {
        if (polis__cidr_parse(bad[i], &c) != POLIS_EINVAL)
            fail_msg("'%s' parsed", bad[i]);
    }
    assert_int_equal(polis__cidr_parse(NULL, &c), POLIS_EINVAL);
}

#define TLS_OK "tls:\n  certificates: [{cert: @/a.pem, key: @/a.key}]\n"
#define ISS "jwt:\n  issuers:\n    - name: main\n      issuer: https://i.example\n"
#define ROUTE LISTEN CLUSTER "routes:\n  - cluster: users\n"

static void test_security_errors(void **state)
{
    sec_dir_create();
    /* tls */
    expect_sec(LISTEN "tls: { min_version: \"1.2\" }\n",
               "t.yaml:2: tls: no certificates; expected certificates: a list of {cert, key} (PEM "
               "files)");
    expect_sec(LISTEN TLS_OK "  min_version: 1.1\n",
               "t.yaml:4: tls.min_version: found '1.1'; expected \"1.2\" or \"1.3\"");
    expect_sec(LISTEN TLS_OK "  alpn: [http/1.1, h2]\n",
               "t.yaml:4: tls.alpn[1]: found 'h2'; expected http/1.1 (the only protocol served "
               "for now)");
    expect_sec(LISTEN TLS_OK "  client_auth: required\n",
               "t.yaml:4: tls.client_auth: required without client_ca; expected client_ca: a PEM "
               "file of the CAs that sign client certificates");
    expect_sec(LISTEN TLS_OK "  client_ca: @/ca.pem\n",
               "t.yaml:4: tls.client_ca: set with client_auth off; expected client_auth: optional "
               "or required");
    expect_sec(LISTEN TLS_OK "  client_auth: yes\n",
               "t.yaml:4: tls.client_auth: found 'yes'; expected off, optional or required");
    expect_sec(LISTEN "tls:\n  certificates:\n    - {cert: @/missing.pem, key: @/a.key}\n",
               "t.yaml:4: tls.certificates[0].cert: cannot read '@/missing.pem': No such file or "
               "directory; expected a readable PEM certificate chain");
    expect_sec(LISTEN "tls:\n  certificates:\n    - cert: @/a.pem\n      key: @/dir\n",
               "t.yaml:5: tls.certificates[0].key: '@/dir' is a directory; expected a readable "
               "PEM private key");
    expect_sec(LISTEN "tls:\n  certificates:\n    - cert: @/empty\n      key: @/a.key\n",
               "t.yaml:4: tls.certificates[0].cert: '@/empty' is empty; expected a readable PEM "
               "certificate chain");
    expect_sec(LISTEN "tls:\n  certificates:\n    - cert: @/a.pem\n",
               "t.yaml:4: tls.certificates[0]: no key; expected key: a PEM file of the private "
               "key");
    expect_sec(LISTEN TLS_OK "  forward_subject: \"X Subject\"\n",
               "t.yaml:4: tls.forward_subject: found 'X Subject'; expected a header name of "
               "letters, digits and !#$%&'*+-.^_`|~");
    expect_sec(LISTEN TLS_OK "  session_timeout: 10ms\n",
               "t.yaml:4: tls.session_timeout: found '10ms', out of range; expected 1s..24h");
    expect_sec(LISTEN TLS_OK "  sni: x\n",
               "t.yaml:4: tls: unknown key 'sni'; expected one of: certificates, min_version, "
               "alpn, session_tickets, session_timeout, client_auth, client_ca, "
               "forward_subject");
    /* a cluster's tls */
    expect_sec(LISTEN CLUSTER "    tls: { cert: @/client.pem }\n",
               "t.yaml:5: clusters[0].tls: cert without key; expected both cert and key (a client "
               "certificate and its private key) or neither");
    expect_sec(LISTEN CLUSTER "    tls: { server_name: \"svc internal\" }\n",
               "t.yaml:5: clusters[0].tls.server_name: found 'svc internal'; expected a host name "
               "like orders.internal");
    expect_sec(LISTEN CLUSTER "    tls:\n      ca: @/nope.pem\n",
               "t.yaml:6: clusters[0].tls.ca: cannot read '@/nope.pem': No such file or "
               "directory; expected a readable PEM file of CAs");
    expect_sec(LISTEN CLUSTER "    tls: { verify: maybe }\n",
               "t.yaml:5: clusters[0].tls.verify: found 'maybe'; expected true or false");
    /* jwt */
    expect_sec(LISTEN "jwt: { cache_size: 5 }\n",
               "t.yaml:2: jwt: no issuers; expected issuers: a list of token issuers");
    expect_sec(LISTEN ISS "      algorithms: [RS256, none]\n      jwks_url: https://i.example/k\n",
               "t.yaml:6: jwt.issuers[0].algorithms[1]: found 'none'; expected a signature "
               "algorithm (unsigned tokens are never accepted): HS256, HS384, HS512, RS256, "
               "RS384, RS512, PS256, ES256, ES384, EdDSA");
    expect_sec(LISTEN ISS "      algorithms: [NONE]\n      jwks_url: https://i.example/k\n",
               "t.yaml:6: jwt.issuers[0].algorithms[0]: found 'NONE'; expected a signature "
               "algorithm (unsigned tokens are never accepted): HS256, HS384, HS512, RS256, "
               "RS384, RS512, PS256, ES256, ES384, EdDSA");
    expect_sec(LISTEN ISS "      algorithms: [rs256]\n      jwks_url: https://i.example/k\n",
               "t.yaml:6: jwt.issuers[0].algorithms[0]: found 'rs256'; expected one of: HS256, "
               "HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n",
               "t.yaml:4: jwt.issuers[0]: no keys; expected keys, jwks_file or jwks_url");
    expect_sec(LISTEN ISS "      jwks_url: https://i.example/k\n",
               "t.yaml:4: jwt.issuers[0]: no algorithms; expected algorithms: a list like [RS256, "
               "ES256]");
    expect_sec(LISTEN "jwt:\n  issuers:\n    - name: main\n      algorithms: [RS256]\n"
                      "      jwks_url: https://i.example/k\n",
               "t.yaml:4: jwt.issuers[0]: no issuer; expected issuer: the iss claim of its tokens, "
               "like https://issuer.example");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n"
                          "      keys:\n        - {secret_file: @/hmac.key, algorithm: RS256}\n",
               "t.yaml:8: jwt.issuers[0].keys[0].secret_file: an HMAC secret with algorithm "
               "RS256; expected algorithm HS256, HS384 or HS512 (or file: a public key)");
    expect_sec(LISTEN ISS "      algorithms: [HS256]\n"
                          "      keys:\n        - {file: @/rsa.pub.pem, algorithm: HS256}\n",
               "t.yaml:8: jwt.issuers[0].keys[0].file: a public key file with algorithm HS256; "
               "expected secret_file for HMAC (a public key is never used as an HMAC secret)");
    expect_sec(LISTEN ISS "      algorithms: [RS256, ES256]\n"
                          "      keys:\n        - {file: @/rsa.pub.pem, algorithm: PS256}\n",
               "t.yaml:8: jwt.issuers[0].keys[0].algorithm: PS256 is not among the issuer's "
               "algorithms; expected one of: RS256, ES256");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n"
                          "      keys:\n        - {file: @/rsa.pub.pem}\n",
               "t.yaml:8: jwt.issuers[0].keys[0]: no algorithm; expected algorithm: the one "
               "algorithm this key verifies, like RS256");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n"
                          "      keys:\n        - {kid: a, algorithm: RS256}\n",
               "t.yaml:8: jwt.issuers[0].keys[0]: no key file; expected file (a PEM public key) "
               "or secret_file (an HMAC secret)");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      keys:\n"
                          "        - {file: @/rsa.pub.pem, kid: k1, algorithm: RS256}\n"
                          "        - {file: @/rsa.pub.pem, kid: k1, algorithm: RS256}\n",
               "t.yaml:9: jwt.issuers[0].keys[1].kid: duplicate kid 'k1' (first at line 8); "
               "expected a unique kid");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      jwks_url: http://i.example/k\n",
               "t.yaml:7: jwt.issuers[0].jwks_url: found 'http://i.example/k'; expected an "
               "https:// URL like https://idp.example/.well-known/jwks.json");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      jwks_file: @/missing.json\n",
               "t.yaml:7: jwt.issuers[0].jwks_file: cannot read '@/missing.json': No such file or "
               "directory; expected a readable JWK Set (JSON) file");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      jwks_file: @/jwks.json\n"
                          "      jwks_ca: @/ca.pem\n",
               "t.yaml:8: jwt.issuers[0].jwks_ca: set without jwks_url; expected jwks_url with "
               "it");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      jwks_url: https://i.example/k\n"
                          "      jwks_refresh: 1m\n      jwks_min_refresh: 5m\n",
               "t.yaml:9: jwt.issuers[0].jwks_min_refresh: 5m is longer than jwks_refresh 1m; "
               "expected at most jwks_refresh");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      jwks_url: https://i.example/k\n"
                          "      leeway: 1h\n",
               "t.yaml:8: jwt.issuers[0].leeway: found '1h', out of range; expected 0..10m");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      jwks_url: https://i.example/k\n"
                          "    - name: main\n      issuer: x\n      algorithms: [RS256]\n"
                          "      jwks_url: https://i.example/k\n",
               "t.yaml:8: jwt.issuers[1].name: duplicate issuer name 'main' (first at line 4); "
               "expected a unique name");
    expect_sec(LISTEN "jwt: { cache_size: 20000000, issuers: [] }\n",
               "t.yaml:2: jwt.cache_size: found '20000000', out of range; expected 0..10000000");
    /* api_keys and consumers */
    expect_sec(LISTEN "api_keys: { header: \"X API Key\" }\n",
               "t.yaml:2: api_keys.header: found 'X API Key'; expected a header name of letters, "
               "digits and !#$%&'*+-.^_`|~");
    expect_sec(LISTEN "api_keys: { query: \"api key\" }\n",
               "t.yaml:2: api_keys.query: found 'api key'; expected a query parameter name of "
               "letters, digits, '-', '.', '_' or '~'");
    expect_sec(LISTEN "consumers:\n  - name: alice\n    keys: [\"s3cr3t-key-value\"]\n",
               "t.yaml:4: consumers[0].keys[0]: a key in clear; expected sha256:<64 lowercase hex "
               "digits>, the SHA-256 of the key (printf %s \"$KEY\" | sha256sum)");
    expect_sec(LISTEN "consumers:\n  - name: alice\n    keys: [\"sha256:ABCD\"]\n",
               "t.yaml:4: consumers[0].keys[0]: found 'sha256:ABCD'; expected sha256:<64 "
               "lowercase hex digits>");
    expect_sec(LISTEN "consumers:\n  - name: alice\n    keys: [\"sha256:" HEX_A "\"]\n"
                      "  - name: bob\n    keys:\n      - \"sha256:" HEX_B "\"\n"
                      "      - \"sha256:" HEX_A "\"\n",
               "t.yaml:8: consumers[1].keys[1]: the same key as consumers[0] 'alice' (line 4); "
               "expected a key of its own");
    expect_sec(LISTEN "consumers:\n  - name: alice\n  - name: alice\n",
               "t.yaml:4: consumers[1].name: duplicate consumer name 'alice' (first at line 3); "
               "expected a unique name");
    expect_sec(LISTEN "consumers:\n  - name: alice\n    groups: [\"gold star\"]\n",
               "t.yaml:4: consumers[0].groups[0]: found 'gold star'; expected a group name of "
               "letters, digits, '_', '.' or '-'");
    expect_sec(LISTEN "consumers:\n  - groups: [gold]\n",
               "t.yaml:3: consumers[0]: no name; expected name: <[A-Za-z0-9_.-]+>");
    /* rate_limits (a malformed rate is one error: no burst or "no rate" follows from it) */
    expect_one(LISTEN "rate_limits:\n  - { name: r, rate: 100/sec }\n",
               "t.yaml:3: rate_limits[0].rate: found '100/sec'", "");
    expect_one(LISTEN "rate_limits:\n  - { name: r }\n", "t.yaml:3: rate_limits[0]: no rate", "");
    expect_one(LISTEN ISS "      algorithms: [rs256]\n      jwks_url: https://i.example/k\n",
               "t.yaml:6: jwt.issuers[0].algorithms[0]: found 'rs256'", "");
    expect_sec(LISTEN "rate_limits:\n  - { name: r, rate: 100/sec }\n",
               "t.yaml:3: rate_limits[0].rate: found '100/sec'; expected requests per period like "
               "100/s, 1000/m or 50000/h, from 1 to 1000000000 requests");
    expect_sec(LISTEN "rate_limits:\n  - { name: r, rate: 0/s }\n",
               "t.yaml:3: rate_limits[0].rate: found '0/s'; expected requests per period like "
               "100/s, 1000/m or 50000/h, from 1 to 1000000000 requests");
    expect_sec(LISTEN "rate_limits:\n  - { name: r }\n",
               "t.yaml:3: rate_limits[0]: no rate; expected rate: requests per period like 100/s");
    expect_sec(LISTEN "rate_limits:\n  - { name: r, rate: 1/s, burst: 0 }\n",
               "t.yaml:3: rate_limits[0].burst: found '0', out of range; expected 1..1000000000");
    expect_sec(LISTEN "rate_limits:\n  - name: r\n    rate: 1/s\n    backend: redis\n"
                      "    redis: { address: localhost }\n",
               "t.yaml:6: rate_limits[0].redis.address: found 'localhost'; expected host:port "
               "like 127.0.0.1:6379 or redis.internal:6379");
    expect_sec(LISTEN "rate_limits:\n  - name: r\n    rate: 1/s\n    backend: redis\n",
               "t.yaml:3: rate_limits[0]: backend redis without a redis address; expected redis: "
               "{address: host:port}");
    expect_sec(LISTEN "rate_limits:\n  - name: r\n    rate: 1/s\n"
                      "    redis: { address: \"127.0.0.1:6379\" }\n",
               "t.yaml:5: rate_limits[0].redis: set with backend local; expected backend: redis");
    expect_sec(LISTEN "rate_limits:\n  - name: r\n    rate: 1/s\n    backend: redis\n"
                      "    redis: { address: \"127.0.0.1:6379\", on_failure: retry }\n",
               "t.yaml:6: rate_limits[0].redis.on_failure: found 'retry'; expected local, open or "
               "closed");
    expect_sec(LISTEN "rate_limits:\n  - name: r\n    rate: 1/s\n    backend: redis\n"
                      "    redis: { address: \"127.0.0.1:6379\", password_file: @/none }\n",
               "t.yaml:6: rate_limits[0].redis.password_file: cannot read '@/none': No such file "
               "or directory; expected a readable file holding the password");
    expect_sec(LISTEN "rate_limits:\n  - { name: r, rate: 1/s, key: \"header:X Tenant\" }\n",
               "t.yaml:3: rate_limits[0].key: header name 'X Tenant' is not a token; expected "
               "header:<name> with a name of letters, digits and !#$%&'*+-.^_`|~");
    expect_sec(LISTEN "rate_limits:\n  - { name: r, rate: 1/s, key: user }\n",
               "t.yaml:3: rate_limits[0].key: found 'user'; expected consumer, client_ip, route "
               "or header:<name>");
    expect_sec(LISTEN "rate_limits:\n  - { name: r, rate: 1/s }\n  - { name: r, rate: 2/s }\n",
               "t.yaml:4: rate_limits[1].name: duplicate rate limit name 'r' (first at line 3); "
               "expected a unique name");
    /* networks */
    expect_sec(LISTEN "trusted_proxies: [10.0.0.0/8, 10.0.0.1/8]\n",
               "t.yaml:2: trusted_proxies[1]: '10.0.0.1/8' has bits set past the prefix length; "
               "expected the network 10.0.0.0/8 (or one address without a prefix)");
    expect_sec(LISTEN "trusted_proxies:\n  - 10.0.0.0/33\n",
               "t.yaml:3: trusted_proxies[0]: found '10.0.0.0/33', out of range; expected a "
               "prefix length 0..32");
    expect_sec(LISTEN "trusted_proxies:\n  - \"fd00::/129\"\n",
               "t.yaml:3: trusted_proxies[0]: found 'fd00::/129', out of range; expected a prefix "
               "length 0..128");
    expect_sec(LISTEN "trusted_proxies: [10.0.0/8]\n",
               "t.yaml:2: trusted_proxies[0]: found '10.0.0/8'; expected an IPv4 or IPv6 network "
               "like 10.0.0.0/8 or \"fd00::/8\", or one address");
    expect_sec(LISTEN "trusted_proxies: 10.0.0.0/8\n",
               "t.yaml:2: trusted_proxies: found '10.0.0.0/8'; expected a list of networks like "
               "[10.0.0.0/8, \"fd00::/8\"]");
    expect_sec(LISTEN "access: {}\n", "t.yaml:2: access: neither allow nor deny; expected allow or "
                                      "deny: a list of networks like [10.0.0.0/8]");
    expect_sec(LISTEN "access: { deny: [\"2001:db8::1/32\"] }\n",
               "t.yaml:2: access.deny[0]: '2001:db8::1/32' has bits set past the prefix length; "
               "expected the network 2001:db8::/32 (or one address without a prefix)");
    expect_sec(LISTEN "limits: { max_connections_per_ip: -1 }\n",
               "t.yaml:2: limits.max_connections_per_ip: found '-1'; expected an integer in "
               "0..10000000");
    /* routes */
    expect_sec(ROUTE "    rate_limit: nope\n",
               "t.yaml:7: routes[0].rate_limit: unknown rate limit 'nope'; expected the name of "
               "one under rate_limits (none is defined)");
    expect_sec(LISTEN
               "rate_limits:\n  - { name: a, rate: 1/s }\n  - { name: b, rate: 1/s }\n" CLUSTER
               "routes:\n  - cluster: users\n    rate_limit: [a, c]\n",
               "t.yaml:10: routes[0].rate_limit: unknown rate limit 'c'; expected one of: a, b");
    expect_sec(LISTEN "rate_limits:\n  - { name: a, rate: 1/s }\n" CLUSTER
                      "routes:\n  - cluster: users\n    rate_limit: [a, a]\n",
               "t.yaml:9: routes[0].rate_limit: rate limit 'a' listed twice; expected each once");
    expect_sec(LISTEN "rate_limits:\n  - { name: pc, rate: 1/s, key: consumer }\n" CLUSTER
                      "routes:\n  - cluster: users\n    rate_limit: pc\n",
               "t.yaml:9: routes[0].rate_limit: 'pc' is keyed by consumer but the route has no "
               "auth; expected auth with api_key or jwt, or a limit keyed otherwise");
    expect_sec(ROUTE "    auth: { jwt: true }\n",
               "t.yaml:7: routes[0].auth.jwt: no issuer is defined; expected jwt: {issuers: "
               "[...]} at the top level");
    expect_sec(LISTEN ISS
               "      algorithms: [RS256]\n      jwks_url: https://i.example/k\n" CLUSTER
               "routes:\n  - cluster: users\n    auth:\n      jwt: { issuers: [mian] }\n",
               "t.yaml:14: routes[0].auth.jwt.issuers: unknown issuer 'mian'; expected one of: "
               "main");
    expect_sec(ROUTE "    auth:\n      api_key: true\n      jwt:\n        scopes: [a]\n",
               "t.yaml:9: routes[0].auth.jwt: no issuer is defined; expected jwt: {issuers: "
               "[...]} at the top level");
    expect_sec(LISTEN "rate_limits:\n  - name: r\n    rate: 1/s\n    backend: redis\n"
                      "    redis:\n      timeout: 5ms\n",
               "t.yaml:6: rate_limits[0]: backend redis without a redis address; expected redis: "
               "{address: host:port}");
    expect_sec(ROUTE "    auth: {}\n",
               "t.yaml:7: routes[0].auth: no method; expected jwt, api_key or both");
    expect_sec(ROUTE "    auth: { jwt: false, api_key: false }\n",
               "t.yaml:7: routes[0].auth: no method; expected jwt, api_key or both");
    expect_sec(ROUTE "    auth: { api_key: true, any: true }\n",
               "t.yaml:7: routes[0].auth.any: set without both jwt and api_key; expected any only "
               "with both (it says that either suffices)");
    expect_sec(LISTEN "consumers:\n  - { name: alice, groups: [gold] }\n" CLUSTER
                      "routes:\n  - cluster: users\n    auth:\n      api_key: true\n"
                      "      consumers: { allow: [alcie] }\n",
               "t.yaml:11: routes[0].auth.consumers.allow: unknown consumer 'alcie'; expected one "
               "of: alice");
    expect_sec(LISTEN "consumers:\n  - { name: alice, groups: [gold] }\n" CLUSTER
                      "routes:\n  - cluster: users\n    auth:\n      api_key: true\n"
                      "      consumers: { deny_groups: [gld] }\n",
               "t.yaml:11: routes[0].auth.consumers.deny_groups[0]: no consumer is in group 'gld'; "
               "expected a group of some consumer under consumers");
    expect_sec(LISTEN "consumers:\n  - { name: alice }\n" CLUSTER
                      "routes:\n  - cluster: users\n    auth:\n"
                      "      consumers: { allow: [alice] }\n",
               "t.yaml:10: routes[0].auth.consumers: set without api_key; expected api_key: true "
               "(consumers are known by their keys)");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      jwks_url: https://i.example/k\n" CLUSTER
                          "routes:\n  - cluster: users\n    auth:\n"
                          "      jwt: { forward_claims: { sub: \"X User\" } }\n",
               "t.yaml:14: routes[0].auth.jwt.forward_claims.sub: found 'X User'; expected a "
               "header name of letters, digits and !#$%&'*+-.^_`|~");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      jwks_url: https://i.example/k\n" CLUSTER
                          "routes:\n  - cluster: users\n    auth:\n      api_key: true\n"
                          "      jwt: { forward_claims: { sub: x-consumer } }\n",
               "t.yaml:15: routes[0].auth.jwt.forward_claims.sub: header 'x-consumer' is also "
               "auth.forward_consumer; expected another header");
    expect_sec(LISTEN ISS "      algorithms: [RS256]\n      jwks_url: https://i.example/k\n" CLUSTER
                          "routes:\n  - cluster: users\n    auth:\n"
                          "      jwt: { required_claims: { role: [a, b] } }\n",
               "t.yaml:14: routes[0].auth.jwt.required_claims.role: found a list; expected a claim "
               "value (text)");
    expect_sec(ROUTE "    cors: { origins: [\"*\"], credentials: true }\n",
               "t.yaml:7: routes[0].cors.credentials: true with origin '*'; expected a list of "
               "origins (browsers refuse credentials with '*')");
    expect_sec(ROUTE "    cors: { origins: [\"https://app.example/\"] }\n",
               "t.yaml:7: routes[0].cors.origins[0]: found 'https://app.example/'; expected \"*\" "
               "or an origin like https://app.example or http://localhost:3000 (lowercase, no "
               "path)");
    expect_sec(ROUTE "    cors:\n      origins:\n        - \"https://a.example\"\n"
                     "        - \"HTTPS://B.example:99999\"\n",
               "t.yaml:10: routes[0].cors.origins[1]: found 'HTTPS://B.example:99999'; expected "
               "\"*\" or an origin like https://app.example or http://localhost:3000 (lowercase, "
               "no path)");
    expect_sec(ROUTE "    cors: { origins: [\"*\", \"https://a.example\"] }\n",
               "t.yaml:7: routes[0].cors.origins: '*' with other origins; expected '*' alone or a "
               "list of origins");
    expect_sec(ROUTE "    cors: { methods: [GET] }\n",
               "t.yaml:7: routes[0].cors: no origins; expected origins: a list like "
               "[\"https://app.example\"] or [\"*\"]");
    expect_sec(ROUTE "    cors: { origins: [\"*\"], headers: [\"Content Type\"] }\n",
               "t.yaml:7: routes[0].cors.headers[0]: found 'Content Type'; expected a header name "
               "of letters, digits and !#$%&'*+-.^_`|~");
    expect_sec(ROUTE "    access: { allow: [\"10.0.0.0/8\", bogus] }\n",
               "t.yaml:7: routes[0].access.allow[1]: found 'bogus'; expected an IPv4 or IPv6 "
               "network like 10.0.0.0/8 or \"fd00::/8\", or one address");
    expect_sec(ROUTE "    auth: { api_key: true, forward_consumer: \"X:C\" }\n",
               "t.yaml:7: routes[0].auth.forward_consumer: found 'X:C'; expected a header name of "
               "letters, digits and !#$%&'*+-.^_`|~");
    sec_dir_remove();
}

/* A key in clear is never echoed in an error (it is a secret). */
static void test_security_no_secret_echo(void **state)
{
    struct polis_config *cfg = NULL;
    struct polis_config_errors e = {0};
    assert_int_equal(
        load(LISTEN "consumers:\n  - name: a\n    keys: [hunter2-is-my-key]\n", &cfg, &e),
        POLIS_EINVAL);
    assert_int_equal(e.count, 1);
    assert_null(strstr(e.msgs[0], "hunter2"));
    polis__config_errors_free(&e);
}

/* The same checks on a configuration built in code. */
static void test_security_in_code(void **state)
{
    struct polis_config *cfg = calloc(1, sizeof(*cfg));
    assert_non_null(cfg);
    polis__config_defaults(cfg);
    cfg->source = strdup("command line");
    assert_int_equal(polis__addr_parse(":8080", &cfg->listen), 0);
    cfg->num_trusted_proxies = 2;
    cfg->trusted_proxies = calloc(2, sizeof(*cfg->trusted_proxies));
    assert_int_equal(polis__cidr_parse("10.0.0.0/8", &cfg->trusted_proxies[0]), 0);
    cfg->trusted_proxies[1] = cfg->trusted_proxies[0];
    cfg->trusted_proxies[1].prefix = 4; /* 10 = 0000 1010: bits past 4 are set */
    cfg->tls.enabled = true;
    cfg->num_rate_limits = 1;
    cfg->rate_limits = calloc(1, sizeof(*cfg->rate_limits));
    cfg->rate_limits[0].name = strdup("r");
    cfg->rate_limits[0].count = 10;
    cfg->rate_limits[0].period_ms = 2000;
    cfg->jwt.num_issuers = 1;
    cfg->jwt.issuers = calloc(1, sizeof(*cfg->jwt.issuers));
    cfg->jwt.issuers[0].name = strdup("i");
    cfg->jwt.issuers[0].issuer = strdup("iss");
    cfg->jwt.issuers[0].algorithms = 1u << 31;
    cfg->jwt.issuers[0].jwks_url = strdup("https://x/k");
    cfg->jwt.issuers[0].jwks_refresh_ms = 60000;
    cfg->jwt.issuers[0].jwks_min_refresh_ms = 1000;

    struct polis_config_errors e = {0};
    assert_int_equal(polis__config_validate(cfg, &e), POLIS_EINVAL);
    const char *want[] = {
        "command line: tls: no certificates; expected certificates: a list of {cert, key} (PEM "
        "files)",
        "command line: jwt.issuers[0].algorithms: unknown algorithm bits 0x80000000; expected "
        "(1u << POLIS_JWT_*) bits",
        "command line: rate_limits[0].rate: period of 2000ms; expected 1s, 1m or 1h",
        "command line: trusted_proxies[1]: bits set past the prefix length; expected the network "
        "0.0.0.0/4",
    };
    if (e.count != sizeof(want) / sizeof(want[0]))
        dump(&e);
    assert_int_equal(e.count, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < e.count; i++)
        assert_string_equal(e.msgs[i], want[i]);
    polis__config_errors_free(&e);
    /* What validation fills in: the defaults of the sections present. */
    assert_int_equal(cfg->rate_limits[0].burst, 10);
    assert_string_equal(cfg->tls.forward_subject, "X-Client-Subject");
    assert_string_equal(cfg->tls.alpn[0], "http/1.1");
    assert_string_equal(cfg->api_keys.header, "X-API-Key");
    polis__config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_admin_access_log_off),
        cmocka_unit_test(test_spec_unknown_cluster),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_bad_durations_sizes),
        cmocka_unit_test(test_bad_addresses),
        cmocka_unit_test(test_addr_parse),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_clusters),
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_path_patterns),
        cmocka_unit_test(test_headers_tokens),
        cmocka_unit_test(test_yaml_refusals),
        cmocka_unit_test(test_multiple_errors),
        cmocka_unit_test(test_error_cap),
        cmocka_unit_test(test_file),
        cmocka_unit_test(test_examples),
        cmocka_unit_test(test_tracing),
        cmocka_unit_test(test_access_log_fields),
        cmocka_unit_test(test_admin_token),
        cmocka_unit_test(test_validate_in_code),
        cmocka_unit_test(test_large),
        cmocka_unit_test(test_resilience_full),
        cmocka_unit_test(test_resilience_defaults),
        cmocka_unit_test(test_discovery_errors),
        cmocka_unit_test(test_cluster_resilience_errors),
        cmocka_unit_test(test_metadata_once),
        cmocka_unit_test(test_route_traffic_errors),
        cmocka_unit_test(test_resilience_multiple),
        cmocka_unit_test(test_resilience_in_code),
        cmocka_unit_test(test_security_full),
        cmocka_unit_test(test_security_defaults),
        cmocka_unit_test(test_cidr),
        cmocka_unit_test(test_security_errors),
        cmocka_unit_test(test_security_no_secret_echo),
        cmocka_unit_test(test_security_in_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
