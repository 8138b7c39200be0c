/* regclient.c: the registry client of libpolis: register an instance with the gateway's embedded
 * registry, heartbeat from a background thread, register again after a 404 or an outage, and
 * deregister on the way out. */
#include <polis/registry.h>

#include <polis/http.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/*
 * States of the background thread (the thread alone reads and writes them once it runs):
 *
 *   registered --heartbeat 2xx--> registered        (next call: interval after this one started)
 *   registered --heartbeat 404--> unregistered      (register again at once)
 *   registered --anything else--> unregistered      (register after a backoff)
 *   unregistered --register 2xx--> registered       (interval after the call started)
 *   unregistered --anything else--> unregistered    (backoff doubles, up to its cap)
 *
 * Every wait is a timed wait on a condition variable (monotonic clock) that polis_deregister()
 * signals, so a stop never waits for a heartbeat interval; it only waits for a call in flight,
 * which is bounded by call_ms. Register is a PUT that replaces, so repeating it is harmless.
 */

#define NAME_MAX_LEN 128
#define DEFAULT_TTL_S 10
#define MAX_TTL_S 3600
#define MAX_META_PAIRS 64
#define MAX_META_KEY 128
#define MAX_META_VALUE 1024
#define MAX_TOKEN 4096
#define MAX_URL 2048
#define FIRST_CALL_MS 2000  /* the registration polis_register() sends itself */
#define CALL_MS_MAX 1000    /* each background call */
#define DEREGISTER_MS 2000  /* polis_deregister() in all ... */
#define DELETE_MIN_MS 500   /* ... but the DELETE always gets this much */
#define BACKOFF_BASE_MS 100 /* first retry after a failure */
#define BACKOFF_MAX_MS 5000 /* and never less often than this (nor than the interval) */
#define DETAIL_MAX 200      /* bytes of an answer's body quoted in the log */
#define API_PREFIX "/registry/v1/services/"
#define PROBLEM_FORGOTTEN 1 /* r->problem after a heartbeat got 404 (statuses are >= 100) */

struct polis_registration {
    char *id;
    char *label;                /* "service/id" for the log */
    char *url;                  /* {registry}/registry/v1/services/{service}/instances/{id} */
    char *hb_url;               /* url + "/heartbeat" */
    char *auth;                 /* "Authorization: Bearer <token>", or NULL */
    const char *put_headers[3]; /* Content-Type and auth */
    const char *auth_headers[2];
    char *body; /* the registration's JSON */
    size_t body_len;
    uint64_t interval_ms;    /* between heartbeats: ttl / 3 */
    uint64_t call_ms;        /* timeout of each background call */
    uint64_t backoff_max_ms; /* min(interval, BACKOFF_MAX_MS) */

    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled when stop is set; waits use CLOCK_MONOTONIC */
    bool stop;         /* under mu */
    pthread_t thread;

    /* The background thread's state (set by polis_register() before it starts). */
    bool registered;
    bool ever_registered;
    unsigned failures; /* consecutive failed calls */
    int problem;       /* last problem logged: 0 none, > 0 a status, < 0 a POLIS_E* code */
    uint64_t next_ms;  /* when the next call goes out */
    uint64_t rng;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- Options -------------------------------------------------------------------------------- */

/* Whether s is a service name or an id we can put in a path segment as it is. */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

static bool token_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_TOKEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

static bool address_ok(const char *s)
{
    struct in_addr a4;
    struct in6_addr a6;
    return strlen(s) <= 45 && (inet_pton(AF_INET, s, &a4) == 1 || inet_pton(AF_INET6, s, &a6) == 1);
}

/* Whether s looks like "http://host..." without a query or fragment (polis_fetch checks the
 * rest, before it connects). */
static bool registry_url_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 7 && n <= MAX_URL && strncasecmp(s, "http://", 7) == 0 && strpbrk(s, "?#") == NULL;
}

/* "<service>-<hostname>-<port>" with the host name made fit. Returns a new string, or NULL with
 * *err set (POLIS_ENOMEM, or POLIS_EINVAL when the service name leaves no room). */
static char *default_id(const char *service, int port, int *err)
{
    char host[256];
    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "host");
    host[sizeof(host) - 1] = '\0';
    for (char *p = host; *p != '\0'; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              *p == '.' || *p == '_' || *p == '-'))
            *p = '-';
    char portbuf[16];
    int plen = snprintf(portbuf, sizeof(portbuf), "%d", port);
    size_t fixed = strlen(service) + 2 + (size_t)plen;
    if (fixed + 1 > NAME_MAX_LEN) {
        *err = POLIS_EINVAL;
        return NULL;
    }
    size_t hlen = strlen(host);
    if (hlen > NAME_MAX_LEN - fixed)
        hlen = NAME_MAX_LEN - fixed;
    char *id = malloc(fixed + hlen + 1);
    if (id == NULL) {
        *err = POLIS_ENOMEM;
        return NULL;
    }
    snprintf(id, fixed + hlen + 1, "%s-%.*s-%s", service, (int)hlen, host, portbuf);
    return id;
}

/* The registration's JSON body. Returns 0 and *out (free() it), POLIS_EINVAL (bad metadata: why
 * is logged) or POLIS_ENOMEM. */
static int build_body(const char *address, int port, uint32_t ttl_s, const char *const *meta,
                      char **out, size_t *out_len)
{
    json_t *m = json_object();
    if (m == NULL)
        return POLIS_ENOMEM;
    size_t pairs = 0;
    for (size_t i = 0; meta != NULL && meta[i] != NULL; i += 2) {
        const char *k = meta[i], *v = meta[i + 1];
        if (v == NULL) {
            polis_warn("registry: metadata key \"%.128s\" has no value", k);
            goto invalid;
        }
        if (++pairs > MAX_META_PAIRS) {
            polis_warn("registry: more than %d metadata pairs", MAX_META_PAIRS);
            goto invalid;
        }
        if (strlen(k) == 0 || strlen(k) > MAX_META_KEY || strlen(v) > MAX_META_VALUE) {
            polis_warn("registry: metadata \"%.128s\": keys take 1 to %d bytes, values at most %d",
                       k, MAX_META_KEY, MAX_META_VALUE);
            goto invalid;
        }
        if (json_object_get(m, k) != NULL) {
            polis_warn("registry: metadata key \"%.128s\" given twice", k);
            goto invalid;
        }
        json_t *js = json_string(v); /* NULL for bytes that are not UTF-8 */
        if (js == NULL || json_object_set_new(m, k, js) != 0) {
            polis_warn("registry: metadata pair %zu is not UTF-8", pairs);
            goto invalid;
        }
    }
    json_t *doc = json_pack("{s:s, s:i, s:I, s:o}", "address", address, "port", port, "ttl_s",
                            (json_int_t)ttl_s, "metadata", m);
    if (doc == NULL)
        return POLIS_ENOMEM; /* json_pack took m's reference, even on failure */
    char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(doc);
    if (text == NULL)
        return POLIS_ENOMEM;
    *out = text;
    *out_len = strlen(text);
    return 0;
invalid:
    json_decref(m);
    return POLIS_EINVAL;
}

/* ---- Calls -------------------------------------------------------------------------------- */

/* The outcome of one call to the registry. */
struct call {
    int rc;                      /* polis_fetch()'s code */
    int status;                  /* the answer's status when rc is 0 */
    char what[DETAIL_MAX + 128]; /* for the log: "timed out", "503 {...}" */
};

/* One call to the registry, its outcome in c. The answer's body goes into c->what after its
 * status, cut and made printable ASCII. */
static void registry_call(struct call *c, const char *method, const char *url,
                          const char *const *headers, const char *body, size_t body_len,
                          uint64_t timeout_ms)
{
    struct polis_fetch_result res;
    c->status = 0;
    c->rc = polis_fetch(method, url, headers, body, body_len, timeout_ms, &res);
    if (c->rc < 0) {
        int err = errno;
        if (c->rc == POLIS_ESYS)
            snprintf(c->what, sizeof(c->what), "%s", strerror(err));
        else
            snprintf(c->what, sizeof(c->what), "%s", polis_strerror(c->rc));
        return;
    }
    c->status = res.status;
    int o = snprintf(c->what, sizeof(c->what), "%d ", res.status);
    const char *b = polis_buf_head(&res.body);
    size_t n = polis_buf_len(&res.body);
    for (size_t i = 0; i < n && i < DETAIL_MAX && (size_t)o + 1 < sizeof(c->what); i++) {
        unsigned char ch = (unsigned char)b[i];
        c->what[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : ' ';
    }
    c->what[o] = '\0';
    polis_fetch_free(&res);
}

static bool call_ok(const struct call *c)
{
    return c->rc == 0 && (c->status == 200 || c->status == 201 || c->status == 204);
}

/* A 4xx that trying again will not fix (408 and 429 will). */
static bool refused(int status)
{
    return status >= 400 && status < 500 && status != 408 && status != 429;
}

/* Log a failed call unless the same problem was the last one logged. */
static void report(struct polis_registration *r, const char *what, const struct call *c)
{
    int problem = c->rc < 0 ? c->rc : c->status;
    if (problem == r->problem)
        return;
    r->problem = problem;
    polis_warn("registry: %s of %s failed: %s; retrying", what, r->label, c->what);
}

/* The next retry's delay: BACKOFF_BASE_MS doubled per consecutive failure up to the cap, the
 * upper half of it random (so instances restarted together do not call together). */
static uint64_t backoff_ms(struct polis_registration *r)
{
    unsigned shift = r->failures > 0 ? r->failures - 1 : 0;
    uint64_t d = BACKOFF_BASE_MS << (shift > 16 ? 16 : shift);
    if (d > r->backoff_max_ms)
        d = r->backoff_max_ms;
    r->rng ^= r->rng << 13; /* xorshift64 */
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return d / 2 + r->rng % (d / 2 + 1);
}

/* Wait until deadline (monotonic ms) or a stop. Returns true when asked to stop. */
static bool wait_until(struct polis_registration *r, uint64_t deadline)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline / 1000),
                          .tv_nsec = (long)(deadline % 1000) * 1000000};
    pthread_mutex_lock(&r->mu);
    while (!r->stop && now_ms() < deadline)
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    bool stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    return stop;
}

/* Register (PUT with the body). Updates the thread's state and logs. */
static void do_register(struct polis_registration *r)
{
    struct call c;
    uint64_t started = now_ms();
    registry_call(&c, "PUT", r->url, r->put_headers, r->body, r->body_len, r->call_ms);
    if (call_ok(&c)) {
        if (r->problem != 0 || !r->ever_registered)
            polis_info("registry: %s registered%s", r->label, r->ever_registered ? " again" : "");
        r->registered = true;
        r->ever_registered = true;
        r->problem = 0;
        r->failures = 0;
        r->next_ms = started + r->interval_ms;
        return;
    }
    report(r, "registration", &c);
    r->failures++;
    r->next_ms = now_ms() + backoff_ms(r);
}

/* Renew (PUT .../heartbeat). Updates the thread's state and logs. */
static void do_heartbeat(struct polis_registration *r)
{
    struct call c;
    uint64_t started = now_ms();
    registry_call(&c, "PUT", r->hb_url, r->auth_headers, NULL, 0, r->call_ms);
    if (call_ok(&c)) {
        r->next_ms = started + r->interval_ms;
        return;
    }
    r->registered = false;
    if (c.rc == 0 && c.status == 404) {
        /* The registry forgot us: it restarted, or our ttl passed. Register at once. */
        polis_info("registry: %s is unknown to the registry (expired, or the gateway "
                   "restarted); registering again",
                   r->label);
        r->problem = PROBLEM_FORGOTTEN;
        r->next_ms = now_ms();
        return;
    }
    report(r, "heartbeat", &c);
    r->failures = 1;
    r->next_ms = now_ms() + backoff_ms(r);
}

static void *registration_thread(void *arg)
{
    struct polis_registration *r = arg;
    while (!wait_until(r, r->next_ms)) {
        if (r->registered)
            do_heartbeat(r);
        else
            do_register(r);
    }
    return NULL;
}

/* ---- API ---------------------------------------------------------------------------------- */

static void registration_free(struct polis_registration *r)
{
    free(r->id);
    free(r->label);
    free(r->url);
    free(r->hb_url);
    free(r->auth);
    free(r->body);
    free(r);
}

/* Check the options and build every string r needs. Returns 0, POLIS_EINVAL (why is logged) or
 * POLIS_ENOMEM. */
static int registration_build(struct polis_registration *r, const struct polis_registration_opts *o)
{
    if (o->registry == NULL || o->service == NULL) {
        polis_warn("registry: the registry URL and the service name are required");
        return POLIS_EINVAL;
    }
    if (!name_ok(o->service) || (o->id != NULL && !name_ok(o->id))) {
        polis_warn("registry: service names and ids take 1 to %d letters, digits, '.', '_' or "
                   "'-' (\"%.128s\", \"%.128s\")",
                   NAME_MAX_LEN, o->service, o->id != NULL ? o->id : "");
        return POLIS_EINVAL;
    }
    const char *address = o->address != NULL ? o->address : "127.0.0.1";
    if (!address_ok(address)) {
        polis_warn("registry: address \"%.64s\" is not a numeric IPv4 or IPv6 address", address);
        return POLIS_EINVAL;
    }
    if (o->port < 1 || o->port > 65535) {
        polis_warn("registry: port %d is not in 1..65535", o->port);
        return POLIS_EINVAL;
    }
    uint32_t ttl_s = o->ttl_s != 0 ? o->ttl_s : DEFAULT_TTL_S;
    if (ttl_s > MAX_TTL_S) {
        polis_warn("registry: ttl_s %u is not in 1..%d", ttl_s, MAX_TTL_S);
        return POLIS_EINVAL;
    }
    if (o->token != NULL && !token_ok(o->token)) {
        polis_warn("registry: the token must be 1 to %d visible ASCII characters", MAX_TOKEN);
        return POLIS_EINVAL;
    }

    if (!registry_url_ok(o->registry)) {
        polis_warn("registry: \"%.256s\" is not an http:// URL without a query", o->registry);
        return POLIS_EINVAL;
    }
    int err = 0;
    r->id = o->id != NULL ? strdup(o->id) : default_id(o->service, o->port, &err);
    if (r->id == NULL) {
        if (err == POLIS_EINVAL)
            polis_warn("registry: service \"%s\" is too long for a default id: give an id",
                       o->service);
        return err != 0 ? err : POLIS_ENOMEM;
    }
    size_t blen = strlen(o->registry); /* the base URL without its trailing slashes */
    while (blen > 7 && o->registry[blen - 1] == '/')
        blen--;
    bool ok = asprintf(&r->url, "%.*s" API_PREFIX "%s/instances/%s", (int)blen, o->registry,
                       o->service, r->id) >= 0;
    if (!ok)
        r->url = NULL;
    if (ok && asprintf(&r->hb_url, "%s/heartbeat", r->url) < 0) {
        r->hb_url = NULL;
        ok = false;
    }
    if (ok && asprintf(&r->label, "%s/%s", o->service, r->id) < 0) {
        r->label = NULL;
        ok = false;
    }
    if (ok && o->token != NULL && asprintf(&r->auth, "Authorization: Bearer %s", o->token) < 0) {
        r->auth = NULL;
        ok = false;
    }
    if (!ok)
        return POLIS_ENOMEM;
    int rc = build_body(address, o->port, ttl_s, o->metadata, &r->body, &r->body_len);
    if (rc < 0)
        return rc;

    size_t h = 0;
    r->put_headers[h++] = "Content-Type: application/json";
    if (r->auth != NULL)
        r->put_headers[h++] = r->auth;
    r->put_headers[h] = NULL;
    r->auth_headers[0] = r->auth; /* NULL when there is no token: no header at all */
    r->auth_headers[1] = NULL;

    r->interval_ms = (uint64_t)ttl_s * 1000 / 3;
    r->call_ms = r->interval_ms < CALL_MS_MAX ? r->interval_ms : CALL_MS_MAX;
    r->backoff_max_ms = r->interval_ms < BACKOFF_MAX_MS ? r->interval_ms : BACKOFF_MAX_MS;
    return 0;
}

/* The first registration, on the caller's thread. Returns 0 (registered, or to be retried in
 * the background: r's state says which) or POLIS_EINVAL (refused: logged). */
static int first_registration(struct polis_registration *r, const char *registry)
{
    struct call c;
    uint64_t started = now_ms();
    registry_call(&c, "PUT", r->url, r->put_headers, r->body, r->body_len, FIRST_CALL_MS);
    if (c.rc == POLIS_EINVAL) {
        polis_warn("registry: cannot call %s: bad URL or token", r->url);
        return POLIS_EINVAL;
    }
    if (call_ok(&c)) {
        polis_info("registry: registered %s at %s (heartbeat every %llu ms)", r->label, registry,
                   (unsigned long long)r->interval_ms);
        r->registered = true;
        r->ever_registered = true;
        r->next_ms = started + r->interval_ms;
        return 0;
    }
    if (c.rc == 0 && refused(c.status)) {
        polis_error("registry: %s refused the registration of %s: %s", registry, r->label, c.what);
        return POLIS_EINVAL;
    }
    polis_warn("registry: cannot register %s at %s yet: %s; retrying in the background", r->label,
               registry, c.what);
    r->problem = c.rc < 0 ? c.rc : c.status;
    r->failures = 1;
    r->next_ms = now_ms() + backoff_ms(r);
    return 0;
}

int polis_register(const struct polis_registration_opts *o, struct polis_registration **out)
{
    if (o == NULL || out == NULL)
        return POLIS_EINVAL;
    struct polis_registration *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return POLIS_ENOMEM;
    int rc = registration_build(r, o);
    if (rc < 0)
        goto out_free;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)r ^
             ((uint64_t)getpid() << 40);
    if (r->rng == 0)
        r->rng = 0x9e3779b97f4a7c15ULL;

    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) {
        rc = POLIS_ENOMEM;
        goto out_free;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int e = pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (e != 0) {
        rc = POLIS_ENOMEM;
        goto out_free;
    }
    pthread_mutex_init(&r->mu, NULL);

    rc = first_registration(r, o->registry);
    if (rc < 0)
        goto out_sync;

    /* The thread never takes the process's signals (like the server's threads): the
     * application's signal handling stays on its own threads. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    e = pthread_create(&r->thread, NULL, registration_thread, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        polis_error("registry: cannot start the heartbeat thread of %s: %s", r->label, strerror(e));
        rc = POLIS_ESYS;
        goto out_sync;
    }
    *out = r;
    return 0;

out_sync:
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
out_free:
    registration_free(r);
    return rc;
}

void polis_deregister(struct polis_registration *r)
{
    if (r == NULL)
        return;
    uint64_t start = now_ms();
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL); /* at once, or after the call in flight (<= call_ms) */

    /* The DELETE goes after the thread's last call, so a registration still in flight cannot
     * bring the instance back after it. */
    uint64_t spent = now_ms() - start;
    uint64_t budget = spent + DELETE_MIN_MS < DEREGISTER_MS ? DEREGISTER_MS - spent : DELETE_MIN_MS;
    struct call c;
    registry_call(&c, "DELETE", r->url, r->auth_headers, NULL, 0, budget);
    if (call_ok(&c))
        polis_info("registry: deregistered %s", r->label);
    else if (c.rc == 0 && c.status == 404)
        polis_info("registry: %s was not registered any more", r->label);
    else
        polis_warn("registry: deregistration of %s failed: %s (it expires after its ttl)", r->label,
                   c.what);

    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    registration_free(r);
}

const char *polis_registration_id(const struct polis_registration *r)
{
    return r->id;
}
