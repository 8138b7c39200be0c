/* worker.c: the gateway's worker threads (one loop and one SO_REUSEPORT listener each), snapshot
 * hand-over on reload, drain on SIGTERM, the access log, and the signal loop of the main thread. */
#include "gateway/gateway.h"
#include "registry/registry.h"

#include <errno.h>
#include <jansson.h>
#include <polis/trace.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- Worker snapshots ------------------------------------------------------------------------ */

static struct gw_pool *pool_find(struct gw_worker *wk, const struct polis_addr *a)
{
    for (struct gw_pool *p = wk->pools; p != NULL; p = p->next) {
        if (p->addr.len == a->len && memcmp(&p->addr.ss, &a->ss, a->len) == 0)
            return p;
    }
    struct gw_pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->addr = *a;
    const char *const instance[] = {a->text, NULL};
    if (polis_metric_series(wk->gw->metrics.upstream_idle, instance, &p->idle_slot) < 0) {
        free(p);
        return NULL;
    }
    p->next = wk->pools;
    wk->pools = p;
    return p;
}

/* Make s the worker's current snapshot. Returns 0 or POLIS_ENOMEM (the old one stays). */
static void wsnap_gc(struct gw_worker *wk, struct gw_wsnap *ws);

static int wsnap_adopt(struct gw_worker *wk, struct gw_snapshot *s)
{
    struct gw_wsnap *ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return POLIS_ENOMEM;
    ws->pools = calloc(s->num_instances + 1, sizeof(*ws->pools));
    if (ws->pools == NULL)
        goto fail;
    for (size_t c = 0; c < s->cfg->num_clusters; c++) {
        const struct gw_crt *cl = &s->clusters[c];
        for (size_t i = 0; i < cl->n; i++) {
            ws->pools[s->inst_base[c] + i] = pool_find(wk, &cl->insts[i].addr);
            if (ws->pools[s->inst_base[c] + i] == NULL)
                goto fail;
        }
    }
    size_t need = s->cfg->limits.max_headers > 200 ? s->cfg->limits.max_headers : 200;
    if (need > wk->hdrs_cap) {
        struct polis_h1_header *h = realloc(wk->hdrs, need * sizeof(*h));
        if (h == NULL)
            goto fail;
        wk->hdrs = h;
        wk->hdrs_cap = need;
    }
    ws->snap = s;
    struct gw_wsnap *prev = wk->cur;
    wk->cur = ws;
    if (prev != NULL) {
        prev->next = wk->old;
        wk->old = prev;
        wsnap_gc(wk, prev);
    }
    return 0;
fail:
    free(ws->pools);
    free(ws);
    return POLIS_ENOMEM;
}

/* Free ws once it is neither current nor used by a request, handing its snapshot back. */
static void wsnap_gc(struct gw_worker *wk, struct gw_wsnap *ws)
{
    if (ws == wk->cur || ws->inflight > 0)
        return;
    struct gw_wsnap **pp = &wk->old;
    while (*pp != NULL && *pp != ws)
        pp = &(*pp)->next;
    if (*pp == ws)
        *pp = ws->next;
    polis__snapshot_release(ws->snap);
    free(ws->pools);
    free(ws);
}

/* A request that pinned ws (inflight++) ended. */
void polis__wsnap_unref(struct gw_worker *wk, struct gw_wsnap *ws)
{
    ws->inflight--;
    wsnap_gc(wk, ws);
}

/* ---- Listener and loop ----------------------------------------------------------------------- */

static int listen_on(const struct polis_addr *a)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 4096) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Workers share the port through SO_REUSEPORT, which would also let a second gateway (a stale
 * one, a typo in a deploy script) bind it silently and take part of the traffic. A bind without
 * SO_REUSEPORT fails while anything listens there, which tells. Returns 0 or POLIS_ESYS. */
static int check_port_free(const struct polis_addr *a)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return POLIS_ESYS;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int rc = bind(fd, (const struct sockaddr *)&a->ss, a->len);
    int e = errno;
    close(fd);
    if (rc < 0) {
        polis_error("cannot listen on %s: %s%s", a->text, strerror(e),
                    e == EADDRINUSE ? " (another process listens there)" : "");
        return POLIS_ESYS;
    }
    return 0;
}

static void on_accept(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    struct gw_worker *wk = (struct gw_worker *)((char *)w - offsetof(struct gw_worker, listen_w));
    for (int i = 0; i < 1024; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(w->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                polis_warn("worker %d: accept: %s", wk->id, strerror(errno));
            return;
        }
        polis__proxy_accept(wk, fd, &ss);
        if (wk->listen_fd < 0) /* a drain began meanwhile */
            return;
    }
    /* Edge-triggered: more may be waiting; come back after serving the others. */
    polis_loop_mod(loop, w, 0);
    polis_loop_mod(loop, w, POLIS_EV_READ);
}

static void alog_flush(struct polis_loop *loop, void *ud)
{
    struct gw_worker *wk = ud;
    size_t n = polis_buf_len(&wk->alog);
    if (n == 0)
        return;
    int fd = atomic_load(&wk->gw->alog_fd);
    const char *p = polis_buf_head(&wk->alog);
    while (fd >= 0 && n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* a full disk loses log lines, never requests */
        p += w;
        n -= (size_t)w;
    }
    wk->alog.start = wk->alog.end = 0;
}

static void stop_listening(struct gw_worker *wk)
{
    if (wk->listen_fd >= 0) {
        polis_loop_del(wk->loop, &wk->listen_w);
        close(wk->listen_fd);
        wk->listen_fd = -1;
    }
}

static void on_wake(struct polis_async *a)
{
    struct gw_worker *wk = (struct gw_worker *)((char *)a - offsetof(struct gw_worker, wake));
    struct polis_gateway *gw = wk->gw;
    /* Load and reference under the lock that reload publishes under: otherwise a second
     * reload could free s between the load and the reference. Rare: not the hot path. */
    pthread_mutex_lock(&gw->snap_lock);
    struct gw_snapshot *s = atomic_load(&gw->snap);
    bool fresh = s != wk->cur->snap;
    if (fresh)
        atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&gw->snap_lock);
    if (fresh) {
        if (wsnap_adopt(wk, s) < 0) {
            polis__snapshot_release(s);
            polis_error("worker %d: out of memory adopting configuration %llu", wk->id,
                        (unsigned long long)s->version);
        }
    }
    if (atomic_load(&wk->stop_now)) {
        stop_listening(wk);
        wk->draining = true;
        polis__proxy_close_all(wk);
        polis_loop_stop(wk->loop);
        return;
    }
    if (atomic_load(&gw->draining) && !wk->draining) {
        wk->draining = true;
        stop_listening(wk);
        polis__proxy_drain(wk);
        polis__pools_close_all(wk);
        if (wk->num_conns == 0)
            polis_loop_stop(wk->loop);
    }
}

static void *worker_main(void *arg)
{
    struct gw_worker *wk = arg;
    polis_loop_run(wk->loop);
    polis__proxy_close_all(wk);
    polis__pools_close_all(wk);
    alog_flush(wk->loop, wk);
    return NULL;
}

static void worker_free(struct gw_worker *wk)
{
    stop_listening(wk);
    if (wk->wake.loop != NULL)
        polis_async_close(&wk->wake);
    while (wk->old != NULL) {
        struct gw_wsnap *ws = wk->old;
        wk->old = ws->next;
        polis__snapshot_release(ws->snap);
        free(ws->pools);
        free(ws);
    }
    if (wk->cur != NULL) {
        polis__snapshot_release(wk->cur->snap);
        free(wk->cur->pools);
        free(wk->cur);
        wk->cur = NULL;
    }
    while (wk->pools != NULL) {
        struct gw_pool *p = wk->pools;
        wk->pools = p->next;
        free(p);
    }
    free(wk->hdrs);
    free(wk->pathbuf);
    polis_block_put(wk->spare);
    wk->spare = NULL;
    polis_buf_free(&wk->alog);
    polis_loop_free(wk->loop);
}

int polis__worker_setup(struct polis_gateway *gw, struct gw_worker *wk, int id,
                        struct gw_snapshot *s)
{
    wk->id = id;
    wk->gw = gw;
    wk->listen_fd = -1;
    polis_buf_init(&wk->alog, 1u << 20);
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        rnd = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    wk->rng = rnd ^ ((uint64_t)id << 48);
    snprintf(wk->id_prefix, sizeof(wk->id_prefix), "%016llx",
             (unsigned long long)(rnd ^ (uint64_t)id));
    if (wk->shard == NULL) /* a test may hand in the shard of an earlier worker */
        wk->shard = polis_metrics_shard_new(gw->metrics.reg);
    if (wk->shard == NULL)
        return POLIS_ENOMEM;
    wk->loop = polis_loop_new();
    if (wk->loop == NULL)
        return POLIS_ESYS;
    atomic_fetch_add(&s->refs, 1);
    if (wsnap_adopt(wk, s) < 0) {
        polis__snapshot_release(s);
        return POLIS_ENOMEM;
    }
    if (polis_async_init(wk->loop, &wk->wake, on_wake) < 0)
        return POLIS_ESYS;
    polis_loop_set_flush(wk->loop, alog_flush, wk);
    return 0;
}

void polis__worker_teardown(struct gw_worker *wk)
{
    polis__proxy_close_all(wk);
    polis__pools_close_all(wk);
    worker_free(wk);
}

static int worker_init(struct polis_gateway *gw, struct gw_worker *wk, int id,
                       struct gw_snapshot *s)
{
    int rc = polis__worker_setup(gw, wk, id, s);
    if (rc < 0)
        return rc;
    wk->listen_fd = listen_on(&s->cfg->listen);
    if (wk->listen_fd < 0) {
        polis_error("cannot listen on %s: %s", s->cfg->listen.text, strerror(errno));
        return POLIS_ESYS;
    }
    if (polis_loop_add(wk->loop, &wk->listen_w, wk->listen_fd, POLIS_EV_READ, on_accept) < 0)
        return POLIS_ESYS;
    return 0;
}

/* ---- The gateway ----------------------------------------------------------------------------- */

static int open_access_log(const char *path)
{
    if (path == NULL)
        return -1;
    if (strcmp(path, "-") == 0)
        return dup(1);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        polis_error("cannot open access log %s: %s", path, strerror(errno));
    return fd;
}

static int num_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static double spans_exported(void *ud)
{
    struct polis_tracer_stats st;
    polis_tracer_stats(((struct polis_gateway *)ud)->tracer, &st);
    return (double)st.exported;
}

static double spans_dropped(void *ud)
{
    struct polis_tracer_stats st;
    polis_tracer_stats(((struct polis_gateway *)ud)->tracer, &st);
    return (double)st.dropped;
}

static void gateway_free(struct polis_gateway *gw)
{
    if (gw->upstream_ready)
        polis__upstream_fini(gw); /* no source reports and no snapshot is built after this */
    for (int i = 0; i < gw->num_workers; i++)
        worker_free(&gw->workers[i]);
    free(gw->workers);
    polis__snapshot_release(atomic_load(&gw->snap));
    polis__cfgref_unref(gw->cref);
    if (gw->upstream_ready)
        polis__upstream_free(gw);
    int fd = atomic_load(&gw->alog_fd);
    if (fd >= 0)
        close(fd);
    free(gw->alog_path);
    if (gw->elog_fd >= 0) {
        polis_log_set_fd(2);
        close(gw->elog_fd);
    }
    free(gw->elog_path);
    free(gw->admin_token);
    if (gw->tracer != NULL) /* every worker has stopped: nobody submits any more */
        polis_tracer_stop(gw->tracer);
    polis__gw_metrics_free(&gw->metrics); /* the workers' shards go with it */
    polis__ipcount_free(gw->ipcount);
    polis__tls_server_free(gw->tls);
    free(gw);
}

int polis__gateway_start(struct polis_config *cfg, struct polis_gateway **out)
{
    struct polis_gateway *gw = calloc(1, sizeof(*gw));
    if (gw == NULL)
        return POLIS_ENOMEM;
    int n = cfg->workers > 0 ? cfg->workers : num_cores();
    gw->started_unix = (uint64_t)time(NULL);
    atomic_init(&gw->loaded_unix, gw->started_unix);
    gw->snap_workers = n;
    gw->ipcount = polis__ipcount_new();
    atomic_init(&gw->alog_fd, -1);
    gw->elog_fd = -1;
    pthread_mutex_init(&gw->snap_lock, NULL);
    atomic_init(&gw->version, 0);
    int rc = polis__gw_metrics_init(&gw->metrics, gw);
    if (rc == 0)
        rc = polis__upstream_init(gw);
    if (rc == 0)
        gw->upstream_ready = true;
    if (rc == 0 && (gw->cref = polis__cfgref_new(cfg)) == NULL)
        rc = POLIS_ENOMEM;
    if (rc < 0) {
        if (gw->upstream_ready) {
            polis__upstream_fini(gw);
            polis__upstream_free(gw);
        }
        polis__gw_metrics_free(&gw->metrics);
        polis__config_free(cfg);
        polis__ipcount_free(gw->ipcount);
        free(gw);
        return rc;
    }
    pthread_mutex_lock(&gw->rebuild_lock);
    bool locked = true;
    if (cfg->registry.enabled && polis__registry_new(&cfg->registry, &gw->registry) < 0)
        rc = POLIS_ENOMEM;
    polis__upstream_registry_ready(gw);
    if (rc == 0 && !polis__edge_tls_server(cfg, &gw->tls))
        rc = POLIS_EINVAL;
    if (rc == 0)
        rc = polis__upstream_apply(gw, cfg);
    if (rc == 0)
        rc = polis__gateway_publish(gw, gw->cref);
    /* The lock is held until the workers are set up: the discovery thread publishes (and wakes
     * workers) only then. */
    if (rc < 0)
        goto fail;
    struct gw_snapshot *s = atomic_load(&gw->snap);
    atomic_init(&gw->alog_fd, open_access_log(cfg->access_log));
    gw->elog_fd = -1;
    if (cfg->error_log != NULL && strcmp(cfg->error_log, "-") != 0) {
        gw->elog_fd = open(cfg->error_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (gw->elog_fd < 0) {
            polis_error("cannot open error log %s: %s", cfg->error_log, strerror(errno));
            rc = POLIS_ESYS;
            goto fail;
        }
        gw->elog_path = strdup(cfg->error_log);
        polis_log_set_fd(gw->elog_fd);
    }
    gw->alog_path = cfg->access_log != NULL ? strdup(cfg->access_log) : NULL;
    rc = check_port_free(&cfg->listen);
    if (rc < 0)
        goto fail;
    if (cfg->tracing.endpoint != NULL) {
        struct polis_tracer_opts to = {
            .endpoint = cfg->tracing.endpoint,
            .service_name = cfg->tracing.service_name ? cfg->tracing.service_name : "polis-gateway",
            .sample_ratio = cfg->tracing.sample_ratio,
        };
        rc = polis_tracer_start(&to, &gw->tracer);
        if (rc < 0) {
            polis_error("cannot start tracing to %s: %s", to.endpoint, polis_strerror(rc));
            goto fail;
        }
    }
    if (gw->tracer != NULL &&
        (polis_metrics_gauge_fn(gw->metrics.reg, "polis_tracing_spans_exported",
                                "Spans sent to the collector (grows only).", spans_exported,
                                gw) < 0 ||
         polis_metrics_gauge_fn(gw->metrics.reg, "polis_tracing_spans_dropped",
                                "Spans dropped: queue full or collector failing (grows only).",
                                spans_dropped, gw) < 0)) {
        rc = POLIS_ENOMEM;
        goto fail;
    }
    gw->workers = calloc((size_t)n, sizeof(*gw->workers));
    if (gw->workers == NULL) {
        rc = POLIS_ENOMEM;
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        gw->num_workers = i + 1; /* gateway_free() undoes what worker_init() did, even partly */
        rc = worker_init(gw, &gw->workers[i], i, s);
        if (rc < 0)
            goto fail;
    }
    pthread_mutex_unlock(&gw->rebuild_lock);
    locked = false;
    if (cfg->admin_token != NULL && (gw->admin_token = strdup(cfg->admin_token)) == NULL) {
        rc = POLIS_ENOMEM;
        goto fail;
    }
    if (cfg->has_admin) {
        struct polis_server_opts o = {
            .listen = cfg->admin.text, .threads = 1, .handler = polis__admin_handler, .ud = gw};
        rc = polis_server_start(&o, &gw->admin);
        if (rc < 0) {
            polis_error("cannot start the admin listener on %s: %s", cfg->admin.text,
                        polis_strerror(rc));
            goto fail;
        }
    }
    for (int i = 0; i < n; i++) {
        if (pthread_create(&gw->workers[i].thread, NULL, worker_main, &gw->workers[i]) != 0) {
            /* Threads already started must be stopped before anything is freed. */
            atomic_store(&gw->draining, true);
            for (int k = 0; k < i; k++) {
                atomic_store(&gw->workers[k].stop_now, true);
                polis_async_send(&gw->workers[k].wake);
                pthread_join(gw->workers[k].thread, NULL);
            }
            rc = POLIS_ESYS;
            goto fail;
        }
    }
    polis_info("polis gateway listening on %s with %d worker%s%s%s", cfg->listen.text, n,
               n == 1 ? "" : "s", cfg->has_admin ? ", admin on " : "",
               cfg->has_admin ? cfg->admin.text : "");
    *out = gw;
    return 0;
fail:
    if (locked)
        pthread_mutex_unlock(&gw->rebuild_lock);
    if (gw->admin != NULL)
        polis_server_stop(gw->admin);
    gateway_free(gw); /* releases the snapshot, and cfg with it */
    return rc;
}

int polis__gateway_reload(struct polis_gateway *gw, struct polis_config *cfg)
{
    pthread_mutex_lock(&gw->rebuild_lock);
    const struct polis_config *oc = gw->cref->cfg;
    if (oc->listen.len != cfg->listen.len ||
        memcmp(&oc->listen.ss, &cfg->listen.ss, cfg->listen.len))
        polis_warn("reload: the listen address (%s) changes only on restart; still on %s",
                   cfg->listen.text, oc->listen.text);
    if (cfg->registry.enabled && gw->registry == NULL &&
        polis__registry_new(&cfg->registry, &gw->registry) < 0) {
        pthread_mutex_unlock(&gw->rebuild_lock);
        return POLIS_ENOMEM;
    }
    polis__upstream_registry_ready(gw);
    if (cfg->tls.enabled != (gw->tls != NULL))
        polis_warn("reload: TLS on the listener is turned %s only on restart",
                   cfg->tls.enabled ? "on" : "off");
    else if (gw->tls != NULL && !polis__edge_tls_reload(gw->tls, cfg)) {
        pthread_mutex_unlock(&gw->rebuild_lock);
        return POLIS_EINVAL;
    }
    struct gw_cfgref *cref = polis__cfgref_new(cfg);
    if (cref == NULL) {
        pthread_mutex_unlock(&gw->rebuild_lock);
        return POLIS_ENOMEM;
    }
    /* Sources start before the snapshot is built so that the registry's current instances are
     * in it; a failing source leaves its cluster without instances until it answers. */
    polis__upstream_apply(gw, cfg);
    int rc = polis__gateway_publish(gw, cref);
    if (rc < 0) {
        cref->cfg = NULL; /* the caller frees cfg */
        polis__cfgref_unref(cref);
        pthread_mutex_unlock(&gw->rebuild_lock);
        return rc;
    }
    polis__cfgref_unref(gw->cref);
    gw->cref = cref;
    atomic_store(&gw->loaded_unix, (uint64_t)time(NULL));
    uint64_t version = atomic_load(&gw->version);
    pthread_mutex_unlock(&gw->rebuild_lock);
    polis_info("configuration %llu loaded from %s", (unsigned long long)version, cfg->source);
    return 0;
}

void polis__gateway_reopen_logs(struct polis_gateway *gw)
{
    if (gw->elog_path != NULL) { /* swapped under the descriptor, like the access log */
        int fd = open(gw->elog_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            dup2(fd, gw->elog_fd);
            close(fd);
        }
    }
    if (gw->alog_path == NULL || strcmp(gw->alog_path, "-") == 0)
        return;
    int fd = open_access_log(gw->alog_path);
    if (fd < 0)
        return;
    /* Workers may be writing to the old descriptor right now: dup2 swaps the file under it
     * atomically, so no worker ever sees a closed descriptor. */
    int old = atomic_load(&gw->alog_fd);
    if (old >= 0) {
        dup2(fd, old);
        close(fd);
    } else {
        atomic_store(&gw->alog_fd, fd);
    }
    polis_info("access log reopened");
}

void polis__gateway_drain_and_free(struct polis_gateway *gw)
{
    uint64_t drain_ms = atomic_load(&gw->snap)->cfg->timeouts.drain_ms;
    atomic_store(&gw->draining, true);
    for (int i = 0; i < gw->num_workers; i++)
        polis_async_send(&gw->workers[i].wake);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)(drain_ms / 1000);
    deadline.tv_nsec += (long)(drain_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    for (int i = 0; i < gw->num_workers; i++) {
        struct gw_worker *wk = &gw->workers[i];
        if (pthread_timedjoin_np(wk->thread, NULL, &deadline) != 0) {
            polis_warn("worker %d: drain timeout passed, closing its connections", i);
            atomic_store(&wk->stop_now, true);
            polis_async_send(&wk->wake);
            pthread_join(wk->thread, NULL);
        }
    }
    if (gw->admin != NULL)
        polis_server_stop(gw->admin);
    gateway_free(gw);
}

static void log_errors(const struct polis_config_errors *e)
{
    for (size_t i = 0; i < e->count; i++)
        polis_error("%s", e->msgs[i]);
}

int polis__gateway_main(struct polis_config *cfg, const char *path)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* threads started below inherit the mask */
    signal(SIGPIPE, SIG_IGN);
    /* A gateway holds two descriptors per proxied connection: take all the system allows
     * (the soft limit is often 1024, far below what limits.max_connections means). */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            polis_warn("cannot raise the open-file limit: %s", strerror(errno));
    }

    struct polis_gateway *gw;
    if (polis__gateway_start(cfg, &gw) < 0)
        return 1;
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            if (path == NULL) {
                polis_warn("SIGHUP: nothing to reload (started without -c)");
                continue;
            }
            struct polis_config *ncfg = NULL;
            struct polis_config_errors errs = {0};
            if (polis__config_load_file(path, &ncfg, &errs) < 0) {
                log_errors(&errs);
                polis_error("reload refused: %s has %zu error%s; still serving configuration "
                            "%llu",
                            path, errs.count, errs.count == 1 ? "" : "s",
                            (unsigned long long)atomic_load(&gw->version));
                polis__config_errors_free(&errs);
                continue;
            }
            if (polis__gateway_reload(gw, ncfg) < 0) {
                polis_error("reload refused; still serving the previous configuration");
                polis__config_free(ncfg);
            }
        } else if (sig == SIGUSR1) {
            polis__gateway_reopen_logs(gw);
        } else {
            polis_info("%s: draining", sig == SIGINT ? "SIGINT" : "SIGTERM");
            polis__gateway_drain_and_free(gw);
            polis_info("stopped");
            return 0;
        }
    }
}
