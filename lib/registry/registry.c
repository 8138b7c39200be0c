/* registry.c: the embedded service registry: its store, its REST API under /registry/v1/, TTL
 * expiry, long polls and subscriptions (design: docs/internals/registry.md). */
#include "registry/registry.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define API_PREFIX "/registry/v1/"
#define MAX_NAME 128
#define MAX_BODY ((size_t)64 * 1024)
#define MAX_SERVICES 10000  /* services known at once */
#define MAX_INSTANCES 10000 /* instances of one service */
#define MAX_WATCHES 10000   /* long polls waiting at once; past it, polls answer at once */
#define MAX_SEGMENTS 6
#define DEFAULT_TTL_MS 30000
#define DEFAULT_MAX_TTL_MS 3600000
#define DEFAULT_MAX_WAIT_MS 300000
#define DEFAULT_WAIT_MS 30000
#define IDLE_SLEEP_MS 60000 /* the thread's longest sleep when nothing is due */

/* One registered instance. cfg.id is its id. */
struct inst {
    struct polis_instance_cfg cfg;
    uint64_t ttl_ms;
    uint64_t expires_at;    /* monotonic ms */
    uint64_t registered_at; /* Unix ms of its first registration */
};

struct service;

/* A long poll waiting for its service to change, or ready to be answered (body set). */
struct watch {
    struct watch *next, *prev; /* the service's watches; next alone on a list to answer */
    struct service *svc;
    uint64_t index;    /* the client's index */
    uint64_t deadline; /* monotonic ms */
    struct polis_deferred *d;
    char *body; /* the answer, once taken off its service */
    size_t body_len;
    uint64_t answer_index;
};

struct service {
    char *name;
    uint64_t index;     /* of its last change; 0: it never had an instance */
    struct inst *insts; /* sorted by id */
    size_t n, cap;
    struct watch *watches;
    size_t nwatches;
};

struct polis_registry_sub {
    struct polis_registry_sub *next, *prev;
    char *service;
    polis_disc_fn fn;
    void *ud;
    bool dirty;   /* the set changed since fn was last called (under mu) */
    bool removed; /* unsubscribed from inside a fn: freed when the delivery ends */
    struct polis_instance_cfg *last, *pending; /* what fn was last given; what it will be */
    size_t nlast, npending;
    bool has_pending;
};

struct polis_registry {
    pthread_mutex_t notify_mu; /* serialises subscribers' calls; taken before mu */
    pthread_mutex_t mu;        /* everything below */
    pthread_cond_t cv;         /* wakes the thread: a change, an earlier deadline, stop */
    pthread_t tid;
    bool started;
    bool stop;
    uint64_t default_ttl_ms, max_ttl_ms, max_wait_ms;
    uint64_t index;        /* the last index given to a change */
    struct service **svcs; /* sorted by name */
    size_t nsvcs, capsvcs;
    size_t nwatches;
    struct polis_registry_sub *subs; /* changed under notify_mu and mu; read under either */
    bool subs_dirty;
    polis_registry_health_fn health_fn;
    void *health_ud;
};

/* The registry whose subscribers the calling thread is calling now, if any. */
static _Thread_local struct polis_registry *tl_delivering;

/* ---- Time ----------------------------------------------------------------------------------- */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* RFC 3339 in UTC with milliseconds: "2026-01-02T03:04:05.678Z". */
static void format_time(uint64_t ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(ms % 1000));
}

/* ---- Names ---------------------------------------------------------------------------------- */

/* 1..128 bytes of [A-Za-z0-9._-], neither "." nor "..". */
static bool name_ok(struct polis_str s)
{
    if (s.len == 0 || s.len > MAX_NAME)
        return false;
    if (polis_str_eq(s, POLIS_STR(".")) || polis_str_eq(s, POLIS_STR("..")))
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char ch = s.p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* Compare a view with a C string, as strcmp orders them. */
static int str_cmp(struct polis_str a, const char *b)
{
    size_t bl = strlen(b);
    int c = memcmp(a.p, b, a.len < bl ? a.len : bl);
    if (c != 0)
        return c;
    return a.len < bl ? -1 : a.len > bl ? 1 : 0;
}

/* ---- The store (under mu) ------------------------------------------------------------------ */

/* The service named name, or NULL; *pos: where it is or would go. */
static struct service *svc_find(struct polis_registry *r, struct polis_str name, size_t *pos)
{
    size_t lo = 0, hi = r->nsvcs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = str_cmp(name, r->svcs[mid]->name);
        if (c == 0) {
            if (pos != NULL)
                *pos = mid;
            return r->svcs[mid];
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (pos != NULL)
        *pos = lo;
    return NULL;
}

static void svc_free(struct service *svc)
{
    for (size_t i = 0; i < svc->n; i++)
        polis__instance_clear(&svc->insts[i].cfg);
    free(svc->insts);
    free(svc->name);
    free(svc);
}

static void svc_remove_at(struct polis_registry *r, size_t pos)
{
    svc_free(r->svcs[pos]);
    memmove(&r->svcs[pos], &r->svcs[pos + 1], (r->nsvcs - pos - 1) * sizeof(r->svcs[0]));
    r->nsvcs--;
}

/* Drop a service that holds nothing worth keeping: no instance, no watch, and no index (a
 * service that had instances keeps its index, so that its watchers never see it go back). */
static bool svc_maybe_drop(struct polis_registry *r, struct service *svc)
{
    size_t pos;
    if (svc->n > 0 || svc->nwatches > 0 || svc->index != 0)
        return false;
    if (svc_find(r, (struct polis_str){svc->name, strlen(svc->name)}, &pos) != svc)
        return false;
    svc_remove_at(r, pos);
    return true;
}

/* The service named name, created empty when new. Returns NULL when out of memory
 * (*full false) or when MAX_SERVICES are known and none of them is empty and unwatched
 * (*full true). */
static struct service *svc_get(struct polis_registry *r, struct polis_str name, bool *full)
{
    size_t pos;
    *full = false;
    struct service *svc = svc_find(r, name, &pos);
    if (svc != NULL)
        return svc;
    if (r->nsvcs >= MAX_SERVICES) {
        /* Make room by forgetting an empty service nobody watches. */
        size_t i = 0;
        while (i < r->nsvcs && (r->svcs[i]->n > 0 || r->svcs[i]->nwatches > 0))
            i++;
        if (i == r->nsvcs) {
            *full = true;
            return NULL;
        }
        svc_remove_at(r, i);
        svc_find(r, name, &pos);
    }
    if (r->nsvcs == r->capsvcs) {
        size_t cap = r->capsvcs ? r->capsvcs * 2 : 16;
        struct service **v = realloc(r->svcs, cap * sizeof(*v));
        if (v == NULL)
            return NULL;
        r->svcs = v;
        r->capsvcs = cap;
    }
    svc = calloc(1, sizeof(*svc));
    if (svc == NULL)
        return NULL;
    svc->name = strndup(name.p, name.len);
    if (svc->name == NULL) {
        free(svc);
        return NULL;
    }
    memmove(&r->svcs[pos + 1], &r->svcs[pos], (r->nsvcs - pos) * sizeof(r->svcs[0]));
    r->svcs[pos] = svc;
    r->nsvcs++;
    return svc;
}

/* The instance with this id, or NULL; *pos: where it is or would go. */
static struct inst *inst_find(struct service *svc, struct polis_str id, size_t *pos)
{
    size_t lo = 0, hi = svc->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = str_cmp(id, svc->insts[mid].cfg.id);
        if (c == 0) {
            *pos = mid;
            return &svc->insts[mid];
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    *pos = lo;
    return NULL;
}

static void inst_remove_at(struct service *svc, size_t pos)
{
    polis__instance_clear(&svc->insts[pos].cfg);
    memmove(&svc->insts[pos], &svc->insts[pos + 1], (svc->n - pos - 1) * sizeof(svc->insts[0]));
    svc->n--;
}

/* The instance's address without its port, as text. */
static void inst_address(const struct inst *in, char *out, size_t cap, int *port)
{
    const struct sockaddr_storage *ss = &in->cfg.addr.ss;
    out[0] = '\0';
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, out, (socklen_t)cap);
        *port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, out, (socklen_t)cap);
        *port = ntohs(a->sin_port);
    }
}

/* ---- JSON answers (under mu) --------------------------------------------------------------- */

static json_t *inst_json(struct polis_registry *r, const struct service *svc, const struct inst *in,
                         uint64_t now)
{
    char addr[INET6_ADDRSTRLEN], when[32];
    int port = 0;
    inst_address(in, addr, sizeof(addr), &port);
    format_time(in->registered_at, when);
    const char *health =
        r->health_fn != NULL ? r->health_fn(r->health_ud, svc->name, &in->cfg) : NULL;
    json_t *meta = json_object();
    for (size_t k = 0; meta != NULL && k < in->cfg.num_meta; k++)
        json_object_set_new(meta, in->cfg.meta[k].name, json_string(in->cfg.meta[k].value));
    return json_pack("{s:s, s:s, s:i, s:o*, s:I, s:I, s:s, s:s}", "id", in->cfg.id, "address", addr,
                     "port", port, "metadata", meta, "ttl_s", (json_int_t)(in->ttl_ms / 1000),
                     "expires_in_ms", (json_int_t)(in->expires_at > now ? in->expires_at - now : 0),
                     "registered_at", when, "health", health != NULL ? health : "unknown");
}

/* {"service": name, "index": N, "instances": [...]}, as text; NULL when out of memory. */
static char *svc_body(struct polis_registry *r, struct polis_str name, const struct service *svc,
                      size_t *len)
{
    uint64_t now = mono_ms();
    json_t *list = json_array();
    for (size_t i = 0; list != NULL && svc != NULL && i < svc->n; i++)
        if (json_array_append_new(list, inst_json(r, svc, &svc->insts[i], now)) < 0) {
            json_decref(list);
            list = NULL;
        }
    json_t *j = json_pack("{s:s%, s:I, s:o*}", "service", name.p, name.len, "index",
                          (json_int_t)(svc != NULL ? svc->index : 0), "instances", list);
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    *len = text != NULL ? strlen(text) : 0;
    return text;
}

/* ---- Long polls and subscribers ------------------------------------------------------------ */

static void watch_unlink(struct polis_registry *r, struct watch *w)
{
    struct service *svc = w->svc;
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        svc->watches = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    svc->nwatches--;
    r->nwatches--;
}

/* Take w off its service and put it on *fire with a copy of the answer body (NULL: a 500). */
static void watch_take(struct polis_registry *r, struct watch *w, const char *body, size_t len,
                       struct watch **fire)
{
    watch_unlink(r, w);
    w->answer_index = w->svc->index;
    w->svc = NULL;
    if (body != NULL && (w->body = malloc(len + 1)) != NULL) {
        memcpy(w->body, body, len + 1);
        w->body_len = len;
    }
    w->next = *fire;
    *fire = w;
}

/* Answer the long polls on a list taken by watch_take. Without mu. */
static void watches_answer(struct watch *w)
{
    while (w != NULL) {
        struct watch *next = w->next;
        char index[48];
        snprintf(index, sizeof(index), "X-Polis-Index: %" PRIu64, w->answer_index);
        const char *const hdrs[] = {"Content-Type: application/json", index, NULL};
        if (w->body != NULL) {
            polis_deferred_finish(w->d, 200, hdrs, w->body, w->body_len);
        } else {
            static const char oom[] =
                "{\"error\":\"internal_error\",\"status\":500,\"message\":\"out of memory\"}";
            polis_deferred_finish(w->d, 500, hdrs, oom, sizeof(oom) - 1);
        }
        free(w->body);
        free(w);
        w = next;
    }
}

/* The content of svc changed: give it a new index, take its long polls to answer, tell its
 * subscribers through the thread. */
static void svc_changed(struct polis_registry *r, struct service *svc, struct watch **fire)
{
    svc->index = ++r->index;
    if (svc->watches != NULL) {
        size_t len;
        struct polis_str name = {svc->name, strlen(svc->name)};
        char *body = svc_body(r, name, svc, &len);
        while (svc->watches != NULL)
            watch_take(r, svc->watches, body, len, fire);
        free(body);
    }
    for (struct polis_registry_sub *s = r->subs; s != NULL; s = s->next) {
        if (!s->removed && strcmp(s->service, svc->name) == 0) {
            s->dirty = true;
            r->subs_dirty = true;
        }
    }
    pthread_cond_signal(&r->cv);
}

/* A deep copy of the service's current set (empty for an unknown service). */
static int svc_snapshot(struct polis_registry *r, const char *name, struct polis_instance_cfg **out,
                        size_t *n)
{
    const struct service *svc = svc_find(r, (struct polis_str){name, strlen(name)}, NULL);
    size_t count = svc != NULL ? svc->n : 0;
    struct polis_instance_cfg *flat = calloc(count ? count : 1, sizeof(*flat));
    if (flat == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < count; i++)
        flat[i] = svc->insts[i].cfg; /* shallow: copied deeply below */
    int rc = polis__instances_copy(flat, count, out);
    free(flat);
    if (rc == 0)
        *n = count;
    return rc;
}

static void sub_free(struct polis_registry_sub *s)
{
    polis__instances_free(s->last, s->nlast);
    if (s->has_pending)
        polis__instances_free(s->pending, s->npending);
    free(s->service);
    free(s);
}

static void sub_unlink(struct polis_registry *r, struct polis_registry_sub *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        r->subs = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
}

/* Call the subscribers whose service changed with its current set. Registry thread, without
 * mu. */
static void subs_deliver(struct polis_registry *r)
{
    pthread_mutex_lock(&r->notify_mu);
    tl_delivering = r;
    pthread_mutex_lock(&r->mu);
    r->subs_dirty = false;
    for (struct polis_registry_sub *s = r->subs; s != NULL; s = s->next) {
        if (!s->dirty || s->removed)
            continue;
        if (svc_snapshot(r, s->service, &s->pending, &s->npending) < 0) {
            r->subs_dirty = true; /* out of memory: try again on the next turn */
            continue;
        }
        s->dirty = false;
        s->has_pending = true;
    }
    pthread_mutex_unlock(&r->mu);

    /* The list changes meanwhile only through fn on this thread: a subscription added at its
     * head (not visited) or one marked removed (skipped, unlinked below). */
    for (struct polis_registry_sub *s = r->subs; s != NULL; s = s->next) {
        if (!s->has_pending)
            continue;
        s->has_pending = false;
        if (s->removed || polis__instances_equal(s->last, s->nlast, s->pending, s->npending)) {
            polis__instances_free(s->pending, s->npending);
            continue;
        }
        polis__instances_free(s->last, s->nlast);
        s->last = s->pending;
        s->nlast = s->npending;
        s->fn(s->ud, s->last, s->nlast);
    }

    struct polis_registry_sub *dead = NULL;
    pthread_mutex_lock(&r->mu);
    for (struct polis_registry_sub *s = r->subs, *next; s != NULL; s = next) {
        next = s->next;
        if (s->removed) {
            sub_unlink(r, s);
            s->next = dead;
            dead = s;
        }
    }
    pthread_mutex_unlock(&r->mu);
    tl_delivering = NULL;
    pthread_mutex_unlock(&r->notify_mu);
    while (dead != NULL) {
        struct polis_registry_sub *next = dead->next;
        sub_free(dead);
        dead = next;
    }
}

/* ---- The thread ----------------------------------------------------------------------------- */

/* Expire instances and end long polls that are due; return the next deadline. Under mu. */
static uint64_t registry_expire(struct polis_registry *r, uint64_t now, struct watch **fire)
{
    uint64_t next = now + IDLE_SLEEP_MS;
    for (size_t i = 0; i < r->nsvcs; i++) {
        struct service *svc = r->svcs[i];
        bool changed = false;
        for (size_t k = 0; k < svc->n;) {
            if (svc->insts[k].expires_at <= now) {
                polis_info("registry: %s/%s expired (no heartbeat in %" PRIu64 " s)", svc->name,
                           svc->insts[k].cfg.id, svc->insts[k].ttl_ms / 1000);
                inst_remove_at(svc, k);
                changed = true;
                continue;
            }
            if (svc->insts[k].expires_at < next)
                next = svc->insts[k].expires_at;
            k++;
        }
        if (changed) {
            svc_changed(r, svc, fire);
            continue;
        }
        char *body = NULL;
        size_t len = 0;
        bool built = false;
        for (struct watch *w = svc->watches, *wn; w != NULL; w = wn) {
            wn = w->next;
            if (w->deadline > now) {
                if (w->deadline < next)
                    next = w->deadline;
                continue;
            }
            if (!built) {
                body = svc_body(r, (struct polis_str){svc->name, strlen(svc->name)}, svc, &len);
                built = true;
            }
            watch_take(r, w, body, len, fire);
        }
        free(body);
        if (built && svc_maybe_drop(r, svc))
            i--; /* the next one moved here (unsigned wrap-around, then ++) */
    }
    return next;
}

static void *registry_main(void *arg)
{
    struct polis_registry *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        struct watch *fire = NULL;
        uint64_t next = registry_expire(r, mono_ms(), &fire);
        bool deliver = r->subs_dirty;
        if (fire != NULL || deliver) {
            pthread_mutex_unlock(&r->mu);
            watches_answer(fire);
            if (deliver)
                subs_deliver(r);
            pthread_mutex_lock(&r->mu);
            continue;
        }
        struct timespec ts;
        ts.tv_sec = (time_t)(next / 1000);
        ts.tv_nsec = (long)(next % 1000) * 1000000;
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* ---- Lifecycle ------------------------------------------------------------------------------ */

int polis__registry_new(const struct polis_registry_cfg *cfg, struct polis_registry **out)
{
    struct polis_registry *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return POLIS_ENOMEM;
    r->default_ttl_ms = cfg != NULL && cfg->default_ttl_ms ? cfg->default_ttl_ms : DEFAULT_TTL_MS;
    r->max_ttl_ms = cfg != NULL && cfg->max_ttl_ms ? cfg->max_ttl_ms : DEFAULT_MAX_TTL_MS;
    r->max_wait_ms = cfg != NULL ? cfg->max_wait_ms : DEFAULT_MAX_WAIT_MS; /* 0: no waiting */
    if (r->max_ttl_ms < 1000 || r->default_ttl_ms < 1000 || r->default_ttl_ms > r->max_ttl_ms) {
        free(r);
        return POLIS_EINVAL;
    }
    /* Indexes start from the clock, so that those given before a restart are not given again
     * for other content. */
    r->index = unix_ms();
    pthread_mutex_init(&r->notify_mu, NULL);
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    int e = pthread_create(&r->tid, NULL, registry_main, r);
    if (e != 0) {
        errno = e;
        polis__registry_free(r);
        return POLIS_ESYS;
    }
    r->started = true;
    *out = r;
    return 0;
}

void polis__registry_free(struct polis_registry *r)
{
    if (r == NULL)
        return;
    struct watch *fire = NULL;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    for (size_t i = 0; i < r->nsvcs; i++) {
        struct service *svc = r->svcs[i];
        if (svc->watches == NULL)
            continue;
        size_t len;
        char *body = svc_body(r, (struct polis_str){svc->name, strlen(svc->name)}, svc, &len);
        while (svc->watches != NULL)
            watch_take(r, svc->watches, body, len, &fire);
        free(body);
    }
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    watches_answer(fire);
    if (r->started)
        pthread_join(r->tid, NULL);
    while (r->subs != NULL) {
        struct polis_registry_sub *s = r->subs;
        sub_unlink(r, s);
        sub_free(s);
    }
    for (size_t i = 0; i < r->nsvcs; i++)
        svc_free(r->svcs[i]);
    free(r->svcs);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->notify_mu);
    free(r);
}

void polis__registry_set_health_fn(struct polis_registry *r, polis_registry_health_fn fn, void *ud)
{
    pthread_mutex_lock(&r->mu);
    r->health_fn = fn;
    r->health_ud = ud;
    pthread_mutex_unlock(&r->mu);
}

int polis__registry_subscribe(struct polis_registry *r, const char *service, polis_disc_fn fn,
                              void *ud, struct polis_registry_sub **out)
{
    if (r == NULL || service == NULL || fn == NULL || out == NULL ||
        !name_ok((struct polis_str){service, strlen(service)}))
        return POLIS_EINVAL;
    struct polis_registry_sub *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->service = strdup(service)) == NULL) {
        free(s);
        return POLIS_ENOMEM;
    }
    s->fn = fn;
    s->ud = ud;
    bool nested = tl_delivering == r; /* from a fn: notify_mu is ours already */
    if (!nested)
        pthread_mutex_lock(&r->notify_mu);
    pthread_mutex_lock(&r->mu);
    int rc = svc_snapshot(r, service, &s->last, &s->nlast);
    if (rc == 0) {
        s->next = r->subs;
        if (r->subs != NULL)
            r->subs->prev = s;
        r->subs = s;
    }
    pthread_mutex_unlock(&r->mu);
    if (rc == 0) {
        tl_delivering = r; /* so that fn may unsubscribe, even this subscription */
        fn(ud, s->last, s->nlast);
        if (!nested)
            tl_delivering = NULL;
    }
    if (!nested)
        pthread_mutex_unlock(&r->notify_mu);
    if (rc < 0) {
        free(s->service);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void polis__registry_unsubscribe(struct polis_registry *r, struct polis_registry_sub *sub)
{
    if (r == NULL || sub == NULL)
        return;
    if (tl_delivering == r) {
        /* Inside a delivery that may still hold sub: it is skipped and freed at its end. */
        pthread_mutex_lock(&r->mu);
        sub->removed = true;
        pthread_mutex_unlock(&r->mu);
        return;
    }
    pthread_mutex_lock(&r->notify_mu);
    pthread_mutex_lock(&r->mu);
    sub_unlink(r, sub);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_unlock(&r->notify_mu);
    sub_free(sub);
}

/* ---- The REST API --------------------------------------------------------------------------- */

static void answer_json(struct polis_response *res, int status, json_t *j, uint64_t index)
{
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    polis_response_header(res, "Content-Type", "application/json");
    if (text == NULL) {
        polis_response_status(res, 500);
        polis_response_printf(res, "{\"error\":\"internal_error\",\"status\":500,"
                                   "\"message\":\"out of memory\"}");
        return;
    }
    if (index != 0) {
        char v[24];
        snprintf(v, sizeof(v), "%" PRIu64, index);
        polis_response_header(res, "X-Polis-Index", v);
    }
    polis_response_status(res, status);
    polis_response_body(res, text, strlen(text));
    free(text);
}

/* {"error": code, "status": status, "field": field (when not NULL), "message": ...}. */
static void answer_error(struct polis_response *res, int status, const char *code,
                         const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void answer_error(struct polis_response *res, int status, const char *code,
                         const char *field, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *j = json_pack("{s:s, s:i, s:s}", "error", code, "status", status, "message", msg);
    if (j != NULL && field != NULL)
        json_object_set_new(j, "field", json_string(field));
    answer_json(res, status, j, 0);
}

static void answer_bad_name(struct polis_response *res, const char *field)
{
    answer_error(res, 400, "invalid_name", field,
                 "%s: expected 1 to %d bytes of A-Z a-z 0-9 . _ - (not . or ..)", field, MAX_NAME);
}

static void answer_405(struct polis_response *res, const char *allow)
{
    polis_response_header(res, "Allow", allow);
    answer_error(res, 405, "method_not_allowed", NULL, "allowed methods: %s", allow);
}

static void answer_full(struct polis_response *res, const char *what)
{
    answer_error(res, 507, "registry_full", NULL, "the registry holds as many %s as it may", what);
}

/* Read the registration body: the instance and its TTL. Answers 400 and returns false when it
 * is bad. */
static bool read_instance(struct polis_registry *r, const struct polis_request *req,
                          struct polis_str id, struct polis_response *res,
                          struct polis_instance_cfg *cfg, uint64_t *ttl_ms)
{
    json_error_t jerr;
    json_t *j = json_loadb(req->body.p != NULL ? req->body.p : "", req->body.len,
                           JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL) {
        answer_error(res, 400, "invalid_json", "body", "body: %s (line %d, column %d)", jerr.text,
                     jerr.line, jerr.column);
        return false;
    }
    char idz[MAX_NAME + 1], err[256];
    memcpy(idz, id.p, id.len);
    idz[id.len] = '\0';
    int rc = polis__instance_from_json(j, idz, cfg, err, sizeof(err));
    if (rc == POLIS_ENOMEM) {
        json_decref(j);
        answer_error(res, 500, "internal_error", NULL, "out of memory");
        return false;
    }
    if (rc < 0) {
        json_decref(j);
        /* err is "field: what was expected" */
        char field[96];
        const char *sep = strstr(err, ": ");
        size_t flen = sep != NULL ? (size_t)(sep - err) : 0;
        if (flen >= sizeof(field))
            flen = sizeof(field) - 1;
        memcpy(field, err, flen);
        field[flen] = '\0';
        answer_error(res, 400, "invalid_field", flen > 0 ? field : "body", "%s", err);
        return false;
    }
    /* Strictly an address in its usual text form (the resolver would also take "1.2.3"). */
    const char *addr = json_string_value(json_object_get(j, "address"));
    unsigned char bin[sizeof(struct in6_addr)];
    if (addr == NULL ||
        (inet_pton(AF_INET, addr, bin) != 1 && inet_pton(AF_INET6, addr, bin) != 1)) {
        json_decref(j);
        polis__instance_clear(cfg);
        answer_error(res, 400, "invalid_field", "address",
                     "address: expected a numeric IPv4 or IPv6 address string");
        return false;
    }
    const json_t *t = json_object_get(j, "ttl_s");
    json_int_t max_s = (json_int_t)(r->max_ttl_ms / 1000);
    *ttl_ms = r->default_ttl_ms;
    if (t != NULL && !json_is_null(t)) {
        if (!json_is_integer(t) || json_integer_value(t) < 1 || json_integer_value(t) > max_s) {
            json_decref(j);
            polis__instance_clear(cfg);
            answer_error(res, 400, "invalid_field", "ttl_s",
                         "ttl_s: expected an integer from 1 to %lld", (long long)max_s);
            return false;
        }
        *ttl_ms = (uint64_t)json_integer_value(t) * 1000;
    }
    json_decref(j);
    return true;
}

/* PUT .../instances/{id}: register or replace. */
static void api_register(struct polis_registry *r, const struct polis_request *req,
                         struct polis_str name, struct polis_str id, struct polis_response *res)
{
    struct polis_instance_cfg cfg;
    uint64_t ttl_ms;
    if (!read_instance(r, req, id, res, &cfg, &ttl_ms))
        return;
    struct watch *fire = NULL;
    bool full;
    pthread_mutex_lock(&r->mu);
    struct service *svc = svc_get(r, name, &full);
    if (svc == NULL) {
        pthread_mutex_unlock(&r->mu);
        polis__instance_clear(&cfg);
        if (full)
            answer_full(res, "services");
        else
            answer_error(res, 500, "internal_error", NULL, "out of memory");
        return;
    }
    uint64_t now = mono_ms();
    size_t pos;
    struct inst *in = inst_find(svc, id, &pos);
    bool created = in == NULL;
    if (in != NULL) {
        if (!polis__instances_equal(&in->cfg, 1, &cfg, 1)) {
            polis__instance_clear(&in->cfg);
            in->cfg = cfg;
            in->ttl_ms = ttl_ms;
            in->expires_at = now + ttl_ms;
            svc_changed(r, svc, &fire);
        } else {
            polis__instance_clear(&cfg); /* the same content: a heartbeat */
        }
    } else {
        if (svc->n >= MAX_INSTANCES) {
            svc_maybe_drop(r, svc);
            pthread_mutex_unlock(&r->mu);
            polis__instance_clear(&cfg);
            answer_full(res, "instances of one service");
            return;
        }
        if (svc->n == svc->cap) {
            size_t cap = svc->cap ? svc->cap * 2 : 4;
            struct inst *v = realloc(svc->insts, cap * sizeof(*v));
            if (v == NULL) {
                svc_maybe_drop(r, svc);
                pthread_mutex_unlock(&r->mu);
                polis__instance_clear(&cfg);
                answer_error(res, 500, "internal_error", NULL, "out of memory");
                return;
            }
            svc->insts = v;
            svc->cap = cap;
        }
        memmove(&svc->insts[pos + 1], &svc->insts[pos], (svc->n - pos) * sizeof(svc->insts[0]));
        svc->n++;
        in = &svc->insts[pos];
        memset(in, 0, sizeof(*in));
        in->cfg = cfg;
        in->registered_at = unix_ms();
        in->ttl_ms = ttl_ms;
        in->expires_at = now + ttl_ms;
        svc_changed(r, svc, &fire);
    }
    in->ttl_ms = ttl_ms;
    in->expires_at = now + ttl_ms;
    pthread_cond_signal(&r->cv); /* its deadline may be the next one */
    json_t *j = inst_json(r, svc, in, now);
    uint64_t index = svc->index;
    pthread_mutex_unlock(&r->mu);
    watches_answer(fire);
    answer_json(res, created ? 201 : 200, j, index);
}

/* PUT .../instances/{id}/heartbeat (renew) and DELETE .../instances/{id}. */
static void api_renew_or_delete(struct polis_registry *r, struct polis_str name,
                                struct polis_str id, bool remove, struct polis_response *res)
{
    struct watch *fire = NULL;
    pthread_mutex_lock(&r->mu);
    struct service *svc = svc_find(r, name, NULL);
    size_t pos;
    struct inst *in = svc != NULL ? inst_find(svc, id, &pos) : NULL;
    if (in == NULL) {
        pthread_mutex_unlock(&r->mu);
        answer_error(res, 404, "not_found", NULL, "no instance %.*s of service %.*s%s", (int)id.len,
                     id.p, (int)name.len, name.p, remove ? "" : ": register it again");
        return;
    }
    uint64_t now = mono_ms();
    if (!remove)
        in->expires_at = now + in->ttl_ms;
    json_t *j = inst_json(r, svc, in, now);
    if (remove) {
        inst_remove_at(svc, pos);
        svc_changed(r, svc, &fire);
    }
    uint64_t index = svc->index;
    pthread_mutex_unlock(&r->mu);
    watches_answer(fire);
    answer_json(res, 200, j, index);
}

/* GET /registry/v1/services. */
static void api_list(struct polis_registry *r, struct polis_response *res)
{
    json_t *list = json_array();
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; list != NULL && i < r->nsvcs; i++) {
        const struct service *svc = r->svcs[i];
        if (svc->index == 0)
            continue; /* known only because someone waits for it */
        json_array_append_new(list, json_pack("{s:s, s:I, s:I}", "name", svc->name, "instances",
                                              (json_int_t)svc->n, "index", (json_int_t)svc->index));
    }
    uint64_t index = r->index;
    pthread_mutex_unlock(&r->mu);
    answer_json(res, 200, json_pack("{s:I, s:o*}", "index", (json_int_t)index, "services", list),
                0);
}

/* Find key=value in a query string. */
static bool query_param(struct polis_str q, const char *key, struct polis_str *value)
{
    size_t klen = strlen(key);
    const char *p = q.p, *end = q.p + q.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp != NULL ? amp : end;
        if ((size_t)(stop - p) >= klen && memcmp(p, key, klen) == 0 &&
            (p + klen == stop || p[klen] == '=')) {
            const char *v = p + klen == stop ? stop : p + klen + 1;
            *value = (struct polis_str){v, (size_t)(stop - v)};
            return true;
        }
        if (amp == NULL)
            break;
        p = amp + 1;
    }
    return false;
}

/* GET /registry/v1/services/{service}[?index=N[&wait=D]]. */
static void api_service(struct polis_registry *r, const struct polis_request *req,
                        struct polis_str name, bool may_wait, struct polis_response *res)
{
    struct polis_str v;
    bool has_index = query_param(req->query, "index", &v);
    uint64_t index = 0, wait_ms = DEFAULT_WAIT_MS;
    if (has_index) {
        bool ok = v.len > 0 && v.len <= 19;
        for (size_t i = 0; ok && i < v.len; i++)
            ok = v.p[i] >= '0' && v.p[i] <= '9';
        if (!ok) {
            answer_error(res, 400, "invalid_query", "index",
                         "index: expected a non-negative integer");
            return;
        }
        index = strtoull(v.p, NULL, 10);
    }
    if (query_param(req->query, "wait", &v) && polis_parse_duration(v, &wait_ms) < 0) {
        answer_error(res, 400, "invalid_query", "wait",
                     "wait: expected a duration such as 500ms, 30s or 5m");
        return;
    }
    if (wait_ms > r->max_wait_ms)
        wait_ms = r->max_wait_ms;

    pthread_mutex_lock(&r->mu);
    struct service *svc = svc_find(r, name, NULL);
    uint64_t current = svc != NULL ? svc->index : 0;
    if (has_index && may_wait && current == index && wait_ms > 0 && r->nwatches < MAX_WATCHES) {
        bool full;
        struct watch *w = calloc(1, sizeof(*w));
        svc = w != NULL ? svc_get(r, name, &full) : svc;
        struct polis_deferred *d = svc != NULL && w != NULL ? polis_response_defer(res) : NULL;
        if (d != NULL) {
            w->svc = svc;
            w->index = index;
            w->deadline = mono_ms() + wait_ms;
            w->d = d;
            w->next = svc->watches;
            if (svc->watches != NULL)
                svc->watches->prev = w;
            svc->watches = w;
            svc->nwatches++;
            r->nwatches++;
            pthread_cond_signal(&r->cv); /* its deadline may be the next one */
            pthread_mutex_unlock(&r->mu);
            return;
        }
        free(w); /* cannot wait: answer now */
        if (svc != NULL)
            svc_maybe_drop(r, svc);
        svc = svc_find(r, name, NULL);
    }
    size_t len;
    char *body = svc_body(r, name, svc, &len);
    pthread_mutex_unlock(&r->mu);
    if (body == NULL) {
        answer_error(res, 500, "internal_error", NULL, "out of memory");
        return;
    }
    polis_response_header(res, "Content-Type", "application/json");
    char idx[24];
    snprintf(idx, sizeof(idx), "%" PRIu64, current);
    polis_response_header(res, "X-Polis-Index", idx);
    polis_response_body(res, body, len);
    free(body);
}

bool polis__registry_handle(struct polis_registry *r, const struct polis_request *req,
                            struct polis_response *res)
{
    const size_t plen = sizeof(API_PREFIX) - 1;
    struct polis_str path = req->path;
    if (r == NULL || !((path.len >= plen && memcmp(path.p, API_PREFIX, plen) == 0) ||
                       polis_str_eq(path, POLIS_STR("/registry/v1"))))
        return false;

    /* The segments after the prefix. */
    struct polis_str seg[MAX_SEGMENTS];
    size_t nseg = 0;
    bool too_many = false;
    if (path.len >= plen) {
        const char *p = path.p + plen, *end = path.p + path.len;
        for (;;) {
            const char *slash = memchr(p, '/', (size_t)(end - p));
            const char *stop = slash != NULL ? slash : end;
            if (nseg == MAX_SEGMENTS) {
                too_many = true;
                break;
            }
            seg[nseg++] = (struct polis_str){p, (size_t)(stop - p)};
            if (slash == NULL)
                break;
            p = slash + 1;
        }
    }
    bool is_get = polis_str_eq(req->method, POLIS_STR("GET"));
    bool is_head = polis_str_eq(req->method, POLIS_STR("HEAD"));
    bool is_put = polis_str_eq(req->method, POLIS_STR("PUT"));
    bool is_delete = polis_str_eq(req->method, POLIS_STR("DELETE"));
    bool services = nseg >= 1 && polis_str_eq(seg[0], POLIS_STR("services"));
    bool instances = nseg >= 3 && polis_str_eq(seg[2], POLIS_STR("instances"));

    if (req->body.len > MAX_BODY) {
        answer_error(res, 413, "payload_too_large", NULL, "the body is over %zu bytes", MAX_BODY);
        return true;
    }
    if (!too_many && services && nseg == 1) {
        if (!is_get && !is_head)
            answer_405(res, "GET, HEAD");
        else
            api_list(r, res);
        return true;
    }
    if (!too_many && services && nseg == 2) {
        if (!is_get && !is_head)
            answer_405(res, "GET, HEAD");
        else if (!name_ok(seg[1]))
            answer_bad_name(res, "service");
        else
            api_service(r, req, seg[1], is_get, res);
        return true;
    }
    if (!too_many && services && instances && nseg == 4) {
        if (!is_put && !is_delete)
            answer_405(res, "PUT, DELETE");
        else if (!name_ok(seg[1]))
            answer_bad_name(res, "service");
        else if (!name_ok(seg[3]))
            answer_bad_name(res, "id");
        else if (is_put)
            api_register(r, req, seg[1], seg[3], res);
        else
            api_renew_or_delete(r, seg[1], seg[3], true, res);
        return true;
    }
    if (!too_many && services && instances && nseg == 5 &&
        polis_str_eq(seg[4], POLIS_STR("heartbeat"))) {
        if (!is_put)
            answer_405(res, "PUT");
        else if (!name_ok(seg[1]))
            answer_bad_name(res, "service");
        else if (!name_ok(seg[3]))
            answer_bad_name(res, "id");
        else
            api_renew_or_delete(r, seg[1], seg[3], false, res);
        return true;
    }
    answer_error(res, 404, "not_found", NULL, "no such resource: %.*s", (int)path.len, path.p);
    return true;
}
