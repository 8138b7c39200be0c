/* gwmetrics.c: the gateway's metric families, and the series of each configuration snapshot
 * resolved once, so that a request only adds to slots it already knows. */
#include "gateway/gateway.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const status_classes[GW_CLASSES] = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};
static const char *const upstream_error_kinds[GW_UPSTREAM_ERRORS] = {"connect", "timeout", "reset",
                                                                     "invalid_response"};

static double process_rss_bytes(void *ud)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

static double process_open_fds(void *ud)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return 0;
    double n = -1; /* the directory's own descriptor */
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 2; /* "." and ".." */
}

static double process_start_time(void *ud)
{
    const struct polis_gateway *gw = ud;
    return (double)gw->started_unix;
}

static double config_version(void *ud)
{
    const struct polis_gateway *gw = ud;
    return (double)atomic_load(&gw->version);
}

static double config_reload_time(void *ud)
{
    const struct polis_gateway *gw = ud;
    return (double)atomic_load(&gw->loaded_unix);
}

int polis__gw_metrics_init(struct gw_metrics *gm, struct polis_gateway *gw)
{
    memset(gm, 0, sizeof(*gm));
    gm->reg = polis_metrics_new();
    if (gm->reg == NULL)
        return POLIS_ENOMEM;
    static const char *const route_labels[] = {"route", "cluster", "status_class", NULL};
    static const char *const route_only[] = {"route", NULL};
    static const char *const cluster_only[] = {"cluster", NULL};
    static const char *const cluster_kind[] = {"cluster", "kind", NULL};
    static const char *const version_label[] = {"version", NULL};
    struct polis_metrics *m = gm->reg;
    const double *b = polis_duration_buckets;
    size_t nb = sizeof(polis_duration_buckets) / sizeof(polis_duration_buckets[0]);
    gm->requests = polis_metrics_family(
        m, POLIS_METRIC_COUNTER, "polis_http_requests_total",
        "Requests answered, by route, cluster and status class (route \"\": no route matched).",
        route_labels, NULL, 0);
    gm->duration = polis_metrics_family(
        m, POLIS_METRIC_HISTOGRAM, "polis_http_request_duration_seconds",
        "Time from a parsed request head to the last byte of its answer.", route_only, b, nb);
    gm->bytes_in =
        polis_metrics_family(m, POLIS_METRIC_COUNTER, "polis_http_request_bytes_total",
                             "Bytes received from clients, heads included.", route_only, NULL, 0);
    gm->bytes_out =
        polis_metrics_family(m, POLIS_METRIC_COUNTER, "polis_http_response_bytes_total",
                             "Bytes sent to clients, heads included.", route_only, NULL, 0);
    gm->upstream_duration = polis_metrics_family(
        m, POLIS_METRIC_HISTOGRAM, "polis_upstream_response_duration_seconds",
        "Time from taking an upstream connection to the last byte of the upstream's answer.",
        cluster_only, b, nb);
    gm->upstream_errors =
        polis_metrics_family(m, POLIS_METRIC_COUNTER, "polis_upstream_errors_total",
                             "Failed upstream attempts: connect, timeout, reset, invalid_response.",
                             cluster_kind, NULL, 0);
    gm->upstream_conns =
        polis_metrics_family(m, POLIS_METRIC_COUNTER, "polis_upstream_connections_total",
                             "Upstream connections opened.", cluster_only, NULL, 0);
    gm->upstream_reused = polis_metrics_family(
        m, POLIS_METRIC_COUNTER, "polis_upstream_connections_reused_total",
        "Requests sent on a kept-alive upstream connection.", cluster_only, NULL, 0);
    static const char *const instance_only[] = {"instance", NULL};
    gm->upstream_idle = polis_metrics_family(
        m, POLIS_METRIC_GAUGE, "polis_upstream_idle_connections",
        "Kept-alive upstream connections waiting for a request, by instance address.",
        instance_only, NULL, 0);
    gm->upstream_retries = polis_metrics_family(
        m, POLIS_METRIC_COUNTER, "polis_upstream_retries_total",
        "Upstream attempts after the first of a request (retry policy, or a kept-alive "
        "connection found closed).",
        cluster_only, NULL, 0);
    static const char *const cluster_reason[] = {"cluster", "reason", NULL};
    gm->upstream_rejected = polis_metrics_family(
        m, POLIS_METRIC_COUNTER, "polis_upstream_rejected_total",
        "Requests answered 503 without reaching an instance: breaker_open, no_instance, "
        "max_requests, max_pending, max_connections, route_max_concurrent.",
        cluster_reason, NULL, 0);
    gm->ejections =
        polis_metrics_family(m, POLIS_METRIC_COUNTER, "polis_outlier_ejections_total",
                             "Instances ejected by outlier detection.", cluster_only, NULL, 0);
    gm->budget_exhausted = polis_metrics_family(
        m, POLIS_METRIC_COUNTER, "polis_retry_budget_exhausted_total",
        "Retries not made because the retry budget was spent.", cluster_only, NULL, 0);
    static const char *const route_result[] = {"route", "result", NULL};
    gm->mirror = polis_metrics_family(
        m, POLIS_METRIC_COUNTER, "polis_mirror_requests_total",
        "Mirrored requests by how the mirror's answer compared with the primary's: match, "
        "mismatch, error (either side failed or did not finish).",
        route_result, NULL, 0);
    static const double prop_buckets[] = {0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1};
    gm->disc_propagation = polis_metrics_family(
        m, POLIS_METRIC_HISTOGRAM, "polis_discovery_propagation_seconds",
        "Time from a discovery source reporting a change to the workers being handed the new "
        "instances.",
        NULL, prop_buckets, sizeof(prop_buckets) / sizeof(prop_buckets[0]));
    gm->conns_active = polis_metrics_family(m, POLIS_METRIC_GAUGE, "polis_connections_active",
                                            "Client connections open now.", NULL, NULL, 0);
    gm->conns_total = polis_metrics_family(m, POLIS_METRIC_COUNTER, "polis_connections_total",
                                           "Client connections accepted.", NULL, NULL, 0);
    struct polis_metric *build =
        polis_metrics_family(m, POLIS_METRIC_GAUGE, "polis_build_info",
                             "Always 1; the version is in the label.", version_label, NULL, 0);
    if (gm->requests == NULL || gm->duration == NULL || gm->bytes_in == NULL ||
        gm->bytes_out == NULL || gm->upstream_duration == NULL || gm->upstream_errors == NULL ||
        gm->upstream_conns == NULL || gm->upstream_reused == NULL || gm->conns_active == NULL ||
        gm->conns_total == NULL || gm->upstream_idle == NULL || gm->upstream_retries == NULL ||
        gm->upstream_rejected == NULL || gm->ejections == NULL || gm->budget_exhausted == NULL ||
        gm->disc_propagation == NULL || gm->mirror == NULL || build == NULL)
        goto fail;
    uint32_t build_slot;
    const char *const version[] = {POLIS_VERSION, NULL};
    if (polis_metric_series(gm->conns_active, NULL, &gm->conns_active_slot) < 0 ||
        polis_metric_series(gm->conns_total, NULL, &gm->conns_total_slot) < 0 ||
        polis_metric_series(build, version, &build_slot) < 0 ||
        polis_metric_series(gm->disc_propagation, NULL, &gm->disc_propagation_slot) < 0)
        goto fail;
    gm->main_shard = polis_metrics_shard_new(m);
    gm->disc_shard = polis_metrics_shard_new(m);
    if (gm->main_shard == NULL || gm->disc_shard == NULL)
        goto fail;
    polis_gauge_add(gm->main_shard, build_slot, 1);
    if (polis_metrics_gauge_fn(m, "process_resident_memory_bytes", "Resident memory size.",
                               process_rss_bytes, NULL) < 0 ||
        polis_metrics_gauge_fn(m, "process_open_fds", "Open file descriptors.", process_open_fds,
                               NULL) < 0 ||
        polis_metrics_gauge_fn(m, "process_start_time_seconds",
                               "Start time of the process since the Unix epoch.",
                               process_start_time, gw) < 0 ||
        polis_metrics_gauge_fn(m, "polis_config_version",
                               "Version of the configuration in use (1 at start, +1 per reload).",
                               config_version, gw) < 0 ||
        polis_metrics_gauge_fn(m, "polis_config_last_reload_success_timestamp_seconds",
                               "When the configuration in use was loaded.", config_reload_time,
                               gw) < 0)
        goto fail;
    return 0;
fail:
    polis_metrics_free(gm->reg);
    gm->reg = NULL;
    return POLIS_ENOMEM;
}

void polis__gw_metrics_free(struct gw_metrics *gm)
{
    polis_metrics_free(gm->reg);
    gm->reg = NULL;
}

int polis__gw_metrics_resolve(struct gw_metrics *gm, struct gw_snapshot *s)
{
    const struct polis_config *cfg = s->cfg;
    s->route_slots = calloc(cfg->num_routes + 1, sizeof(*s->route_slots));
    s->cluster_slots = calloc(cfg->num_clusters + 1, sizeof(*s->cluster_slots));
    if (s->route_slots == NULL || s->cluster_slots == NULL)
        return POLIS_ENOMEM;
    int rc = 0;
    /* One more route than configured: requests that matched none (route and cluster ""). */
    for (size_t i = 0; i <= cfg->num_routes && rc == 0; i++) {
        const struct polis_route_cfg *r = i < cfg->num_routes ? &cfg->routes[i] : NULL;
        const char *route = r != NULL ? r->name : "";
        const char *cluster = r != NULL ? r->cluster : "";
        struct gw_route_slots *rs = &s->route_slots[i];
        for (int k = 0; k < GW_CLASSES && rc == 0; k++) {
            const char *const v[] = {route, cluster, status_classes[k], NULL};
            rc = polis_metric_series(gm->requests, v, &rs->requests[k]);
        }
        const char *const v[] = {route, NULL};
        static const char *const results[3] = {"match", "mismatch", "error"};
        for (int k = 0; k < 3 && rc == 0 && r != NULL && r->mirror.enabled; k++) {
            const char *const mv[] = {route, results[k], NULL};
            rc = polis_metric_series(gm->mirror, mv, &rs->mirror[k]);
        }
        if (rc == 0)
            rc = polis_metric_series(gm->duration, v, &rs->duration);
        if (rc == 0)
            rc = polis_metric_series(gm->bytes_in, v, &rs->bytes_in);
        if (rc == 0)
            rc = polis_metric_series(gm->bytes_out, v, &rs->bytes_out);
    }
    for (size_t i = 0; i < cfg->num_clusters && rc == 0; i++) {
        struct gw_cluster_slots *cs = &s->cluster_slots[i];
        const char *const v[] = {cfg->clusters[i].name, NULL};
        rc = polis_metric_series(gm->upstream_duration, v, &cs->duration);
        if (rc == 0)
            rc = polis_metric_series(gm->upstream_conns, v, &cs->connections);
        if (rc == 0)
            rc = polis_metric_series(gm->upstream_reused, v, &cs->reused);
        if (rc == 0)
            rc = polis_metric_series(gm->upstream_retries, v, &cs->retries);
        if (rc == 0)
            rc = polis_metric_series(gm->ejections, v, &cs->ejections);
        if (rc == 0)
            rc = polis_metric_series(gm->budget_exhausted, v, &cs->budget_exhausted);
        static const char *const reasons[GW_REJ__COUNT] = {
            "breaker_open", "no_instance",     "max_requests",
            "max_pending",  "max_connections", "route_max_concurrent"};
        for (int k = 0; k < GW_REJ__COUNT && rc == 0; k++) {
            const char *const e[] = {cfg->clusters[i].name, reasons[k], NULL};
            rc = polis_metric_series(gm->upstream_rejected, e, &cs->rejected[k]);
        }
        for (int k = 0; k < GW_UPSTREAM_ERRORS && rc == 0; k++) {
            const char *const e[] = {cfg->clusters[i].name, upstream_error_kinds[k], NULL};
            rc = polis_metric_series(gm->upstream_errors, e, &cs->errors[k]);
        }
    }
    return rc;
}

int polis__gw_status_class(int status)
{
    return status >= 100 && status < 600 ? status / 100 - 1 : GW_CLASSES - 1;
}
