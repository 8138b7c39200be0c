/* gateway.h: the gateway's internals shared by its files: snapshots, workers, connections. */
#ifndef POLIS_GATEWAY_GATEWAY_H
#define POLIS_GATEWAY_GATEWAY_H

#include "config/config.h"
#include "gateway/balance.h"
#include "gateway/router.h"
#include "resil/breaker.h"
#include "resil/outlier.h"
#include "resil/retry.h"
#include "security/apikey.h"
#include "security/cidr.h"
#include "security/clientip.h"
#include "security/jwt.h"
#include "security/cors.h"
#include "security/pathnorm.h"
#include "security/ratelimit.h"
#include "security/tls.h"
#include <polis/http.h>
#include <polis/metrics.h>

#include <pthread.h>
#include <stdatomic.h>

struct polis_gateway;

/* Start a gateway on cfg, which it takes over (and frees on failure): one listener and loop per
 * worker, the admin listener if configured. Returns 0 and *out, or a negative code (bind
 * failures are logged). */
int polis__gateway_start(struct polis_config *cfg, struct polis_gateway **out);
/* Swap in a new configuration (taken over on success). In-flight requests finish on the old one.
 * Returns 0, or POLIS_EINVAL when it cannot be applied (it is then freed by the caller). */
int polis__gateway_reload(struct polis_gateway *gw, struct polis_config *cfg);
/* Reopen the access log file (SIGUSR1). */
void polis__gateway_reopen_logs(struct polis_gateway *gw);
/* Drain: stop accepting, finish in-flight requests within the drain timeout, then stop and free
 * everything. Blocks. */
void polis__gateway_drain_and_free(struct polis_gateway *gw);
/* Run the gateway until SIGTERM/SIGINT, handling SIGHUP (reload from path) and SIGUSR1.
 * Returns the process exit status. */
int polis__gateway_main(struct polis_config *cfg, const char *path);

/* ---- Internals ------------------------------------------------------------------------------ */

/* Metric series of one configuration, resolved when it is loaded (gwmetrics.c). */
#define GW_CLASSES 6 /* 1xx..5xx, other */
#define GW_UPSTREAM_ERRORS 4
enum gw_upstream_error { GW_ERR_CONNECT, GW_ERR_TIMEOUT, GW_ERR_RESET, GW_ERR_INVALID };

struct gw_route_slots {
    uint32_t requests[GW_CLASSES];
    uint32_t mirror[3]; /* polis_mirror_requests_total: match, mismatch, error */
    uint32_t duration, bytes_in, bytes_out;
};

/* Why a request was refused before reaching an instance (polis_upstream_rejected_total). */
enum gw_reject {
    GW_REJ_BREAKER,      /* the cluster's circuit breaker is open */
    GW_REJ_NO_INSTANCE,  /* no instance available (none, or all unhealthy, ejected, open) */
    GW_REJ_MAX_REQUESTS, /* bulkheads */
    GW_REJ_MAX_PENDING,
    GW_REJ_MAX_CONNECTIONS,
    GW_REJ_ROUTE_CONCURRENCY,
    GW_REJ__COUNT
};

struct gw_cluster_slots {
    uint32_t duration, connections, reused, retries, ejections, budget_exhausted;
    uint32_t errors[GW_UPSTREAM_ERRORS];
    uint32_t rejected[GW_REJ__COUNT];
};

struct gw_metrics {
    struct polis_metrics *reg;
    struct polis_metric *requests, *duration, *bytes_in, *bytes_out;
    struct polis_metric *upstream_duration, *upstream_errors, *upstream_conns, *upstream_reused;
    struct polis_metric *upstream_retries, *upstream_rejected, *ejections, *budget_exhausted;
    struct polis_metric *disc_propagation, *mirror;
    uint32_t disc_propagation_slot;
    struct polis_metric *conns_active, *conns_total, *upstream_idle;
    uint32_t conns_active_slot, conns_total_slot;
    struct polis_metrics_shard *main_shard; /* the main thread's (build info) */
    struct polis_metrics_shard *disc_shard; /* the discovery thread's */
};

/* ---- Upstream state kept across snapshots (upstream.c) ----------------------------------- */

enum gw_admin_state { GW_INST_ACTIVE = 0, GW_INST_DRAINING, GW_INST_DISABLED };

/* Gateway-wide state of one instance of one cluster (by address), shared by every snapshot that
 * lists it and every worker; freed when the last snapshot listing it goes. */
struct gw_istate {
    struct gw_cstate *cs;
    struct polis_addr addr;
    int refs;             /* snapshots listing it (under gw->state_lock) */
    atomic_bool hc_down;  /* active health checks say unhealthy */
    atomic_int admin;     /* enum gw_admin_state, set through the admin API */
    atomic_uint weight;   /* 0: as configured or discovered; else set by the admin API */
    atomic_uint inflight; /* requests on it now, over all workers */
    struct polis_outlier_inst outlier;
    struct polis_breaker *_Atomic breaker; /* instance_circuit_breaker, or NULL */
    struct gw_istate *next;                /* in gw->istates */
};

/* Gateway-wide state of one cluster (by name), kept across reloads and discovery changes. */
struct gw_cstate {
    char *name;
    struct polis_gateway *gw;
    struct polis_breaker *_Atomic breaker; /* circuit_breaker, or NULL */
    struct polis_breaker_cfg bcfg, ibcfg;  /* what the breakers were made from */
    struct polis_tls_client *_Atomic tls;  /* TLS to the instances, or NULL */
    char *tls_key;                         /* the settings it was made from */
    struct polis_outlier_cluster outlier;
    struct polis_retry_budget budget;
    atomic_uint conns, pending, requests; /* bulkheads */
    atomic_uint_fast64_t rejected;        /* requests refused by a bulkhead or the breaker */
    /* Discovery (under gw->disc_lock). */
    char *dkey;   /* what identifies the running source's settings; NULL: static */
    void *source; /* the running source */
    int skind;    /* its enum polis_discovery_kind */
    struct polis_instance_cfg *set; /* the last set it reported */
    size_t set_n;
    bool have_set;
    uint64_t changed_ns; /* when the last change arrived (monotonic), until it is published */
    struct gw_cstate *next;
};

/* A route's edge security, compiled (edge.c). */
struct gw_route_sec {
    struct polis_cidr_list *allow, *deny; /* on the client address; NULL: none */
    struct polis_consumer_acl acl;
    const char **acl_allow, **acl_deny; /* the ACL's name arrays */
    size_t *limits;                     /* indexes into gw_sec.limiters */
    size_t num_limits;
    const char **owned; /* identity headers the gateway sets: clients' copies are dropped */
    size_t num_owned;
    struct polis_cors *cors; /* NULL: no CORS handling */
    uint64_t jwt_issuers;    /* the issuers whose tokens the route accepts (a mask) */
};

/* A configuration's edge security, compiled once per configuration (edge.c). */
struct gw_sec {
    struct polis_cidr_list *allow, *deny, *trusted; /* NULL: none */
    struct polis_clientip_cfg clientip;
    struct polis_jwt_verifier *jwt;       /* NULL: no jwt section */
    struct polis_ratelimit **limiters;    /* [num_rate_limits] */
    struct polis_ratelimit_redis **redis; /* [num_rate_limits]: the ones owned, or NULL */
    struct gw_route_sec *routes;          /* [num_routes] */
};

/* A configuration shared by the snapshots built from it (a discovery change makes a new snapshot
 * of the same configuration). */
struct gw_cfgref {
    struct polis_config *cfg;
    atomic_int refs;
    atomic_uint *route_active; /* [num_routes]: requests in flight per route (max_concurrent) */
    struct gw_sec sec;
};

/* Open connections per client address, over all workers (limits.max_connections_per_ip). take:
 * count one more unless cap is reached (false: refuse it); put: one fewer. Any thread. */
struct gw_ipcount;
struct gw_ipcount *polis__ipcount_new(void);
void polis__ipcount_free(struct gw_ipcount *t);
bool polis__ipcount_take(struct gw_ipcount *t, const struct polis_ip *ip, uint32_t cap);
void polis__ipcount_put(struct gw_ipcount *t, const struct polis_ip *ip);

/* TLS (edge.c): the listener's server from the configuration (NULL when off; false on error,
 * logged); a reload of its certificates and settings. */
bool polis__edge_tls_server(const struct polis_config *cfg, struct polis_tls_server **out);
bool polis__edge_tls_reload(struct polis_tls_server *srv, const struct polis_config *cfg);
/* The cluster's TLS client, made again when its settings changed (under rebuild_lock). */
int polis__edge_tls_client(struct gw_cstate *cs, const struct polis_cluster_cfg *c);

/* Free what a consumer added through the admin API holds, and zero it. */
void polis__edge_consumer_free(struct polis_consumer_cfg *c);
/* The consumers of cfg and extra[0..num_extra) as one sealed set. Returns 0 and *out, or
 * POLIS_EINVAL with the reason in err (a duplicate name or key) or POLIS_ENOMEM. */
int polis__edge_consumers(const struct polis_config *cfg, const struct polis_consumer_cfg *extra,
                          size_t num_extra, struct polis_consumers **out, char *err, size_t errcap);

/* Compile and free a configuration's edge security (edge.c). */
int polis__edge_compile(struct gw_cfgref *cref);
void polis__edge_free(struct gw_cfgref *cref);

/* A balancer over some instances of one cluster: all of them, or a subset by metadata. */
struct gw_group {
    size_t cluster;
    size_t *members;                 /* indices into the cluster's instances */
    struct polis_instance_cfg *view; /* their entries, in order, for the balancer (shallow) */
    size_t n;
    struct polis_lb *lb; /* NULL when n is 0 */
};

/* A cluster in a snapshot: its instances at the time. */
struct gw_crt {
    struct polis_instance_cfg *insts; /* owned copies */
    size_t n;
    struct gw_istate **st; /* [n] */
    struct gw_cstate *cs;
};

/* A route in a snapshot: where its traffic goes. */
struct gw_rrt {
    size_t group;         /* without splits */
    size_t *split_groups; /* with splits: nsplit groups and cumulative weights */
    uint32_t *split_cum;
    size_t nsplit;
    uint32_t split_total;
    size_t mirror_group; /* SIZE_MAX: no mirroring */
};

/* An immutable configuration with everything compiled from it; shared read-only by workers. */
struct gw_snapshot {
    struct polis_config *cfg; /* cref->cfg */
    struct gw_cfgref *cref;
    struct polis_gateway *gw;
    struct polis_router *router;
    struct gw_crt *clusters; /* [num_clusters] */
    struct gw_group *groups; /* [ngroups]: groups[c] is the whole of cluster c */
    size_t ngroups;
    struct gw_rrt *routes;             /* [num_routes] */
    struct polis_lb_state **lb_states; /* [worker * ngroups + group] */
    size_t *inst_base;                 /* first global instance index of each cluster */
    size_t num_instances;              /* over all clusters */
    atomic_int refs;                   /* one per worker still using it, one for the gateway */
    uint64_t version;
    int workers;
    struct polis_consumers *consumers;      /* the configuration's and the admin API's */
    struct gw_route_slots *route_slots;     /* [num_routes + 1]: the last is "no route" */
    struct gw_cluster_slots *cluster_slots; /* [num_clusters] */
};

/* Idle keep-alive connections to one upstream address, per worker. */
struct gw_pool {
    struct polis_addr addr;
    struct gw_uconn *idle; /* most recently used first */
    size_t num_idle;
    uint32_t idle_slot;   /* gauge polis_upstream_idle_connections{instance} */
    struct gw_pool *next; /* in the worker's list */
};

/* A worker's view of a snapshot: its pools by instance, and how many requests still use it. */
struct gw_wsnap {
    struct gw_snapshot *snap;
    struct gw_pool **pools; /* [global instance index] */
    size_t inflight;
    struct gw_wsnap *next;
};

struct gw_dconn;

struct gw_worker {
    int id;
    struct polis_gateway *gw;
    struct polis_loop *loop;
    pthread_t thread;
    struct polis_async wake;
    struct polis_watch listen_w;
    int listen_fd;
    struct gw_wsnap *cur;         /* the snapshot new requests use */
    struct gw_wsnap *old;         /* older snapshots with requests still in flight */
    struct polis_h1_header *hdrs; /* parse scratch, hdrs_cap entries */
    char *pathbuf;                /* the normalised path of the request being started */
    size_t pathbuf_cap;
    size_t hdrs_cap;
    struct gw_dconn *conns; /* every client connection */
    size_t num_conns;
    struct gw_pool *pools;
    struct polis_buf alog; /* access log lines not yet written */
    char *spare;           /* a block for reads by connections that hold none */
    uint64_t req_seq;
    uint64_t rng;              /* fault rolls, splits, backoff jitter */
    struct gw_mirror *mirrors; /* mirrored requests in flight */
    char id_prefix[17];
    bool draining;
    bool stopped;
    atomic_bool stop_now;              /* set by the main thread: drain deadline passed */
    struct polis_metrics_shard *shard; /* this worker's metric values */
    /* Tests and fuzzers: open upstream connections as this layer instead of a socket.
     * Returns 0 and fills io, or a negative code (the connection is refused). */
    int (*connect_io)(struct gw_worker *wk, const struct polis_addr *to, struct polis_io *io);
    void *test_ud;
};

/* Splits of a route set through the admin API: they replace the configuration's until deleted
 * (kept across reloads, by route name). */
struct gw_split_override {
    char *route;
    struct polis_split_cfg *splits;
    size_t n;
    struct gw_split_override *next;
};

struct polis_gateway {
    struct gw_snapshot *_Atomic snap;
    pthread_mutex_t snap_lock;    /* publishing a snapshot vs. a worker taking a reference */
    pthread_mutex_t rebuild_lock; /* building and publishing snapshots (reload, discovery, admin) */
    struct gw_cfgref *cref;       /* the configuration in use (under rebuild_lock) */
    struct gw_split_override *overrides;        /* under rebuild_lock */
    struct polis_consumer_cfg *admin_consumers; /* added through the admin API (rebuild_lock) */
    size_t num_admin_consumers;
    pthread_mutex_t state_lock; /* the lists below */
    struct gw_cstate *cstates;
    struct gw_istate *istates;
    struct polis_breaker **retired; /* breakers replaced by a reload (permits may still point to
                                       them): freed with the gateway */
    size_t num_retired;
    /* Discovery: sources report to the discovery thread, which publishes snapshots. */
    pthread_mutex_t disc_lock;
    pthread_cond_t disc_cond;
    pthread_t disc_thread;
    bool disc_running, disc_stop, disc_dirty;
    struct polis_hc *hc;             /* active health checks, or NULL */
    struct polis_registry *registry; /* the embedded registry, or NULL */
    bool upstream_ready;             /* polis__upstream_init() succeeded */
    struct gw_ipcount *ipcount;      /* connections per client address */
    struct polis_tls_server *tls;    /* TLS termination on the listener, or NULL */
    int snap_workers;                /* workers every snapshot is built for */
    atomic_uint_fast64_t version;
    struct gw_worker *workers;
    int num_workers;
    atomic_int alog_fd; /* -1: off */
    char *alog_path;
    int elog_fd;       /* the error log file, or -1 for stderr */
    char *admin_token; /* NULL, or the bearer token the admin listener requires */
    char *elog_path;
    atomic_bool draining;
    struct polis_server *admin;
    struct gw_metrics metrics;
    struct polis_tracer *tracer;  /* NULL: tracing off */
    uint64_t started_unix;        /* seconds */
    _Atomic uint64_t loaded_unix; /* when the configuration in use was loaded */
};

/* Snapshots (snapshot.c): build one of configuration cref with the instances known now (under
 * gw->rebuild_lock). Returns 0 and *out (holding a reference to cref), or POLIS_ENOMEM. */
int polis__snapshot_new(struct polis_gateway *gw, struct gw_cfgref *cref, uint64_t version,
                        struct gw_snapshot **out);
/* Wrap a configuration (taken over on success). NULL on ENOMEM. */
struct gw_cfgref *polis__cfgref_new(struct polis_config *cfg);
void polis__cfgref_unref(struct gw_cfgref *r);

/* Upstream state (upstream.c). */
int polis__upstream_init(struct polis_gateway *gw);
void polis__upstream_fini(struct polis_gateway *gw);
void polis__upstream_free(struct polis_gateway *gw);
/* The embedded registry was created: let it show the gateway's view of instances' health. */
void polis__upstream_registry_ready(struct polis_gateway *gw);
/* The state of cluster name, created on first use (breakers from c). NULL on ENOMEM. Under
 * rebuild_lock. */
struct gw_cstate *polis__cstate_get(struct polis_gateway *gw, const struct polis_cluster_cfg *c);
/* A reference to the state of the instance at addr in cs, created on first use. */
struct gw_istate *polis__istate_ref(struct gw_cstate *cs, const struct polis_addr *addr,
                                    const struct polis_cluster_cfg *c);
void polis__istate_unref(struct gw_istate *st);
/* Start, keep or stop the discovery sources and health checks of the clusters of cfg (under
 * rebuild_lock, before the snapshot of cfg is built). */
int polis__upstream_apply(struct polis_gateway *gw, const struct polis_config *cfg);
/* Build a snapshot of the current configuration and instances and publish it (under
 * rebuild_lock). version: 0 for the next one. */
int polis__gateway_publish(struct polis_gateway *gw, struct gw_cfgref *cref);
/* Whether an instance may take a new request now (health, ejection, admin state, breaker). */
bool polis__istate_available(struct gw_istate *st, const struct polis_cluster_cfg *c,
                             uint64_t now_ms);

/* Metrics (gwmetrics.c). init declares the families (gw is read by scrape-time gauges). */
int polis__gw_metrics_init(struct gw_metrics *gm, struct polis_gateway *gw);
void polis__gw_metrics_free(struct gw_metrics *gm);
int polis__gw_metrics_resolve(struct gw_metrics *gm, struct gw_snapshot *s);
/* 0..4 for 1xx..5xx, 5 for anything else. */
int polis__gw_status_class(int status);
void polis__snapshot_release(struct gw_snapshot *s);

/* Proxying (proxy.c), all on the worker's thread. */
void polis__proxy_accept(struct gw_worker *wk, int fd, const struct sockaddr_storage *ss);
/* Serve a client connection on an existing layer (tests, fuzzers: an in-memory peer). */
void polis__proxy_accept_io(struct gw_worker *wk, const struct polis_io *io,
                            const struct sockaddr_storage *ss);
/* Tests: treat every connection of the worker as readable and writable and run it once, as
 * epoll would for in-memory peers. Returns true while connections remain. */
bool polis__proxy_poke(struct gw_worker *wk);
/* Close idle client connections and ask busy ones to close after their response (drain). */
void polis__proxy_drain(struct gw_worker *wk);
/* Close every connection now. */
void polis__proxy_close_all(struct gw_worker *wk);
/* Close every idle upstream connection of the worker. */
void polis__pools_close_all(struct gw_worker *wk);

/* Set up a worker on snapshot s without a listener or a thread, and tear it down (tests).
 * Metric shards live as long as the registry: a test that sets up many workers hands the same
 * one in (wk->shard set before setup) instead of creating one each time. */
int polis__worker_setup(struct polis_gateway *gw, struct gw_worker *wk, int id,
                        struct gw_snapshot *s);
void polis__worker_teardown(struct gw_worker *wk);

/* Request mirroring (mirror.c), on the worker's thread. start: copy the upstream head of a
 * request without a body of route `route` to an instance of the route's mirror group; NULL
 * when it cannot start. The primary's answer is then given with primary_head (its final head;
 * chunked_raw: the body bytes will come with their chunked framing) and primary_body, and
 * primary_end (complete: the whole answer arrived) hands the mirror over: it counts the
 * comparison when its own answer is in, and frees itself. */
struct gw_mirror;
struct gw_mirror *polis__mirror_start(struct gw_worker *wk, struct gw_wsnap *ws, size_t route,
                                      const char *head, size_t len);
void polis__mirror_primary_head(struct gw_mirror *m, const struct polis_h1_msg *msg,
                                bool chunked_raw);
void polis__mirror_primary_body(struct gw_mirror *m, const char *p, size_t n);
void polis__mirror_primary_end(struct gw_mirror *m, bool complete);
void polis__mirror_close_all(struct gw_worker *wk);

/* The admin listener's handler (admin.c); ud is the gateway. */
void polis__admin_handler(const struct polis_request *req, struct polis_response *res, void *ud);

/* Worker snapshots (worker.c). */
void polis__wsnap_unref(struct gw_worker *wk, struct gw_wsnap *ws);

#endif
