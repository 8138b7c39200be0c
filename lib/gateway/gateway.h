/* gateway.h: the gateway's internals shared by its files: snapshots, workers, connections. */
#ifndef POLIS_GATEWAY_GATEWAY_H
#define POLIS_GATEWAY_GATEWAY_H

#include "config/config.h"
#include "gateway/balance.h"
#include "gateway/router.h"
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
    uint32_t duration, bytes_in, bytes_out;
};

struct gw_cluster_slots {
    uint32_t duration, connections, reused, retries;
    uint32_t errors[GW_UPSTREAM_ERRORS];
};

struct gw_metrics {
    struct polis_metrics *reg;
    struct polis_metric *requests, *duration, *bytes_in, *bytes_out;
    struct polis_metric *upstream_duration, *upstream_errors, *upstream_conns, *upstream_reused;
    struct polis_metric *upstream_retries;
    struct polis_metric *conns_active, *conns_total, *upstream_idle;
    uint32_t conns_active_slot, conns_total_slot;
    struct polis_metrics_shard *main_shard; /* the main thread's (build info) */
};

/* An immutable configuration with everything compiled from it; shared read-only by workers. */
struct gw_snapshot {
    struct polis_config *cfg;
    struct polis_router *router;
    struct polis_lb **lbs;             /* one per cluster */
    struct polis_lb_state **lb_states; /* [worker * num_clusters + cluster] */
    size_t *inst_base;                 /* first global instance index of each cluster */
    size_t num_instances;              /* over all clusters */
    atomic_int refs;                   /* one per worker still using it, one for the gateway */
    uint64_t version;
    int workers;
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
    size_t hdrs_cap;
    struct gw_dconn *conns; /* every client connection */
    size_t num_conns;
    struct gw_pool *pools;
    struct polis_buf alog; /* access log lines not yet written */
    char *spare;           /* a block for reads by connections that hold none */
    uint64_t req_seq;
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

struct polis_gateway {
    struct gw_snapshot *_Atomic snap;
    pthread_mutex_t snap_lock; /* publishing a snapshot vs. a worker taking a reference */
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

/* Snapshots (snapshot.c). gm: the registry its series are resolved in. */
int polis__snapshot_new(struct polis_config *cfg, int workers, uint64_t version,
                        struct gw_metrics *gm, struct gw_snapshot **out);

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

/* Worker snapshots (worker.c). */
void polis__wsnap_unref(struct gw_worker *wk, struct gw_wsnap *ws);

#endif
