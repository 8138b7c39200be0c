/* Unit tests of the etcd v3 discovery source (lib/registry/etcd.c) against a real etcd-server
 * started by the test (/usr/bin/etcd, killed and restarted mid-test), and against a scripted
 * fake etcd for what a real one cannot be made to do on demand (a compacted watch). */
#include "registry/etcd.h"

#include <polis/http.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define ETCD_BIN "/usr/bin/etcd"

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* A loopback port nobody listens on right now. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        abort();
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- The etcd server ------------------------------------------------------------------------ */

static struct {
    char dir[64];  /* mkdtemp: data/ and etcd.log inside */
    char url[64];  /* http://127.0.0.1:<client port> */
    char peer[64]; /* http://127.0.0.1:<peer port> */
    pid_t pid;
    int log_fd; /* the library's log goes to this file */
} etcd = {.pid = -1, .log_fd = -1};

static bool etcd_healthy(void)
{
    char url[96];
    snprintf(url, sizeof(url), "%s/health", etcd.url);
    struct polis_fetch_result r;
    if (polis_fetch("GET", url, NULL, NULL, 0, 500, &r) != 0)
        return false;
    bool ok = r.status == 200 && polis_buf_len(&r.body) > 0 &&
              memmem(polis_buf_head(&r.body), polis_buf_len(&r.body), "true", 4) != NULL;
    polis_fetch_free(&r);
    return ok;
}

/* Start etcd on etcd.dir/data (a new member, or the same one again) and wait until it answers.
 * Returns 0 or -1. */
static int etcd_start(void)
{
    char data[96], logp[96], cluster[96];
    snprintf(data, sizeof(data), "%s/data", etcd.dir);
    snprintf(logp, sizeof(logp), "%s/etcd.log", etcd.dir);
    snprintf(cluster, sizeof(cluster), "default=%s", etcd.peer);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test, whatever happens to it */
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(ETCD_BIN, ETCD_BIN, "--name", "default", "--data-dir", data, "--listen-client-urls",
              etcd.url, "--advertise-client-urls", etcd.url, "--listen-peer-urls", etcd.peer,
              "--initial-advertise-peer-urls", etcd.peer, "--initial-cluster", cluster,
              (char *)NULL);
        _exit(127);
    }
    etcd.pid = pid;
    for (uint64_t end = now_ms() + 10000; now_ms() < end;) {
        if (etcd_healthy())
            return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            etcd.pid = -1;
            return -1;
        }
        sleep_ms(50);
    }
    return -1;
}

static void etcd_kill(int sig)
{
    if (etcd.pid <= 0)
        return;
    kill(etcd.pid, sig);
    for (int i = 0; i < 300 && waitpid(etcd.pid, NULL, WNOHANG) == 0; i++)
        sleep_ms(10);
    if (waitpid(etcd.pid, NULL, WNOHANG) == 0) {
        kill(etcd.pid, SIGKILL);
        waitpid(etcd.pid, NULL, 0);
    }
    etcd.pid = -1;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN); /* output piped to a pager that quits must not skip the cleanup */
    if (access(ETCD_BIN, X_OK) != 0) {
        fprintf(stderr, "etcd: %s is not installed\n", ETCD_BIN);
        return -1;
    }
    snprintf(etcd.dir, sizeof(etcd.dir), "/tmp/polis-etcd-XXXXXX");
    if (mkdtemp(etcd.dir) == NULL)
        return -1;
    snprintf(etcd.url, sizeof(etcd.url), "http://127.0.0.1:%d", free_port());
    snprintf(etcd.peer, sizeof(etcd.peer), "http://127.0.0.1:%d", free_port());
    etcd.log_fd = memfd_create("polis-log", MFD_CLOEXEC);
    if (etcd.log_fd < 0)
        return -1;
    polis_log_set_fd(etcd.log_fd);
    polis_log_set_level(POLIS_LOG_INFO);
    if (etcd_start() != 0) {
        fprintf(stderr, "etcd did not start: see %s/etcd.log\n", etcd.dir);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    etcd_kill(SIGTERM);
    polis_log_set_fd(2);
    if (getenv("ETCD_TEST_LOG") != NULL) { /* the library's log, to see what it did */
        char buf[4096];
        ssize_t n;
        off_t off = 0;
        while ((n = pread(etcd.log_fd, buf, sizeof(buf), off)) > 0) {
            fwrite(buf, 1, (size_t)n, stderr);
            off += n;
        }
    }
    if (etcd.log_fd >= 0)
        close(etcd.log_fd);
    if (etcd.dir[0] != '\0')
        nftw(etcd.dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* How many times needle occurs in the library's log so far. */
static int log_count(const char *needle)
{
    struct stat st;
    if (fstat(etcd.log_fd, &st) < 0 || st.st_size == 0)
        return 0;
    char *buf = malloc((size_t)st.st_size + 1);
    assert_non_null(buf);
    ssize_t n = pread(etcd.log_fd, buf, (size_t)st.st_size, 0);
    assert_true(n >= 0);
    buf[n] = '\0';
    int count = 0;
    for (char *p = buf; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        count++;
    free(buf);
    return count;
}

/* ---- Writing to etcd through its JSON gateway ----------------------------------------------- */

static char *b64(const char *s)
{
    static _Thread_local char out[4][2048];
    static _Thread_local int next;
    char *o = out[next++ % 4];
    assert_true(polis__etcd_b64_encode(s, strlen(s), o, sizeof(out[0])) >= 0);
    return o;
}

/* POST a JSON body to the etcd gateway; returns the parsed answer (status 200 required). */
static json_t *etcd_post(const char *path, const char *fmt, ...)
{
    char body[4096], url[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    snprintf(url, sizeof(url), "%s%s", etcd.url, path);
    struct polis_fetch_result r;
    assert_int_equal(polis_fetch("POST", url, NULL, body, strlen(body), 3000, &r), 0);
    if (r.status != 200)
        fprintf(stderr, "%s %s -> %d %.*s\n", path, body, r.status, (int)polis_buf_len(&r.body),
                polis_buf_head(&r.body));
    assert_int_equal(r.status, 200);
    json_t *j = json_loadb(polis_buf_head(&r.body), polis_buf_len(&r.body), 0, NULL);
    polis_fetch_free(&r);
    assert_non_null(j);
    return j;
}

static void put_lease(const char *key, const char *value, const char *lease)
{
    json_decref(etcd_post("/v3/kv/put", "{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%s\"}",
                          b64(key), b64(value), lease ? lease : "0"));
}

static void put(const char *key, const char *value)
{
    put_lease(key, value, NULL);
}

static void del(const char *key)
{
    json_decref(etcd_post("/v3/kv/deleterange", "{\"key\":\"%s\"}", b64(key)));
}

/* Grant a lease; its decimal id goes to id. */
static void lease_grant(int ttl, char *id, size_t cap)
{
    json_t *j = etcd_post("/v3/lease/grant", "{\"TTL\":%d}", ttl);
    const json_t *v = json_object_get(j, "ID");
    assert_true(json_is_string(v));
    snprintf(id, cap, "%s", json_string_value(v));
    json_decref(j);
}

/* ---- What the source tells us --------------------------------------------------------------- */

#define MAX_CALLS 64

/* Every set fn was called with, each as text: "id@addr/weight{k=v,...}" sorted by id, joined by
 * spaces ("" for no instance). */
struct recorder {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    char sets[MAX_CALLS][512];
};

static void recorder_init(struct recorder *r)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

static void recorder_destroy(struct recorder *r)
{
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static int cmp_ptr_id(const void *a, const void *b)
{
    const struct polis_instance_cfg *x = *(const struct polis_instance_cfg *const *)a;
    const struct polis_instance_cfg *y = *(const struct polis_instance_cfg *const *)b;
    return strcmp(x->id, y->id);
}

static int cmp_kv(const void *a, const void *b)
{
    return strcmp(((const struct polis_header_kv *)a)->name,
                  ((const struct polis_header_kv *)b)->name);
}

static void on_set(void *ud, const struct polis_instance_cfg *v, size_t n)
{
    struct recorder *r = ud;
    const struct polis_instance_cfg *sorted[32];
    assert_true(n <= 32);
    for (size_t i = 0; i < n; i++) {
        assert_non_null(v[i].id);
        sorted[i] = &v[i];
    }
    qsort(sorted, n, sizeof(sorted[0]), cmp_ptr_id);
    char text[512] = "";
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        struct polis_header_kv meta[16];
        size_t nm = sorted[i]->num_meta < 16 ? sorted[i]->num_meta : 16;
        if (nm > 0)
            memcpy(meta, sorted[i]->meta, nm * sizeof(meta[0]));
        qsort(meta, nm, sizeof(meta[0]), cmp_kv);
        len += (size_t)snprintf(text + len, sizeof(text) - len, "%s%s@%s/%u", i ? " " : "",
                                sorted[i]->id, sorted[i]->addr.text, sorted[i]->weight);
        for (size_t k = 0; k < nm && len < sizeof(text); k++)
            len += (size_t)snprintf(text + len, sizeof(text) - len, "%s%s=%s", k ? "," : "{",
                                    meta[k].name, meta[k].value);
        if (nm > 0 && len < sizeof(text))
            len += (size_t)snprintf(text + len, sizeof(text) - len, "}");
        assert_true(len < sizeof(text));
    }
    pthread_mutex_lock(&r->mu);
    if (r->calls < MAX_CALLS)
        memcpy(r->sets[r->calls], text, sizeof(text));
    r->calls++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Wait until the latest set is want. Returns the milliseconds it took, or -1 after timeout_ms
 * (printing what was seen). */
static long wait_set(struct recorder *r, const char *want, unsigned timeout_ms)
{
    uint64_t start = now_ms(), end = start + timeout_ms;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (r->calls > 0 && r->calls <= MAX_CALLS && strcmp(r->sets[r->calls - 1], want) == 0) {
            pthread_mutex_unlock(&r->mu);
            return (long)(now_ms() - start);
        }
        uint64_t now = now_ms();
        if (now >= end)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t left = end - now > 50 ? 50 : end - now;
        ts.tv_nsec += (long)left * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    fprintf(stderr, "wanted [%s]; %d calls, last [%s]\n", want, r->calls,
            r->calls > 0 && r->calls <= MAX_CALLS ? r->sets[r->calls - 1] : "-");
    pthread_mutex_unlock(&r->mu);
    return -1;
}

static int calls(struct recorder *r)
{
    pthread_mutex_lock(&r->mu);
    int n = r->calls;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static struct polis_etcd_source *start_source(const char *prefix, struct recorder *r,
                                              const char *ep2)
{
    char *eps[2] = {etcd.url, (char *)ep2};
    if (ep2 != NULL) { /* a dead endpoint first, the real one second */
        eps[0] = (char *)ep2;
        eps[1] = etcd.url;
    }
    struct polis_discovery_cfg cfg = {.kind = POLIS_DISC_ETCD,
                                      .etcd_endpoints = eps,
                                      .num_etcd_endpoints = ep2 ? 2 : 1,
                                      .etcd_prefix = (char *)prefix};
    struct polis_etcd_source *s = NULL;
    assert_int_equal(polis__etcd_source_start(&cfg, on_set, r, &s), 0);
    assert_non_null(s);
    return s;
}

#define A1 "{\"address\":\"127.0.0.1\",\"port\":9001}"
#define A2 "{\"address\":\"127.0.0.1\",\"port\":9002}"

/* ---- Helpers -------------------------------------------------------------------------------- */

static void test_base64(void **state)
{
    (void)state;
    static const char *const vec[][2] = {{"", ""},
                                         {"f", "Zg=="},
                                         {"fo", "Zm8="},
                                         {"foo", "Zm9v"},
                                         {"foob", "Zm9vYg=="},
                                         {"fooba", "Zm9vYmE="},
                                         {"foobar", "Zm9vYmFy"}};
    char out[64];
    unsigned char dec[64];
    size_t n;
    for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++) {
        assert_int_equal(polis__etcd_b64_encode(vec[i][0], strlen(vec[i][0]), out, sizeof(out)),
                         (int)strlen(vec[i][1]));
        assert_string_equal(out, vec[i][1]);
        assert_int_equal(polis__etcd_b64_decode(vec[i][1], strlen(vec[i][1]), dec, &n), 0);
        assert_int_equal(n, strlen(vec[i][0]));
        assert_memory_equal(dec, vec[i][0], n);
    }
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)(255 - i);
    char big[400];
    unsigned char back[300];
    int len = polis__etcd_b64_encode(all, sizeof(all), big, sizeof(big));
    assert_int_equal(len, 344);
    assert_int_equal(polis__etcd_b64_decode(big, (size_t)len, back, &n), 0);
    assert_int_equal(n, 256);
    assert_memory_equal(back, all, 256);
    /* Room for the text and its NUL, not one byte less. */
    assert_int_equal(polis__etcd_b64_encode("foo", 3, out, 5), 4);
    assert_int_equal(polis__etcd_b64_encode("foo", 3, out, 4), POLIS_ETOOBIG);
    static const char *const bad[] = {
        "Zg=", "Zh==", "Zm9=", "Z===", "====", "Zm9v!A==", "=Zm9", "Zg==Zg==", "Zm 9", "Zm9v\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(polis__etcd_b64_decode(bad[i], strlen(bad[i]), dec, &n), POLIS_EINVAL);
}

static void test_prefix_end(void **state)
{
    (void)state;
    unsigned char out[8];
    assert_int_equal(polis__etcd_prefix_end((const unsigned char *)"/svc/", 5, out), 5);
    assert_memory_equal(out, "/svc0", 5);
    assert_int_equal(polis__etcd_prefix_end((const unsigned char *)"a\xff\xff", 3, out), 1);
    assert_memory_equal(out, "b", 1);
    assert_int_equal(polis__etcd_prefix_end((const unsigned char *)"\xff\xff", 2, out), 1);
    assert_int_equal(out[0], 0);
    assert_int_equal(polis__etcd_prefix_end((const unsigned char *)"a\xfe", 2, out), 2);
    assert_memory_equal(out, "a\xff", 2);
}

static void test_start_rejects(void **state)
{
    (void)state;
    struct recorder r;
    recorder_init(&r);
    struct polis_etcd_source *s = NULL;
    static const char *const bad[] = {"https://127.0.0.1:2379",
                                      "http://127.0.0.1:0",
                                      "http://127.0.0.1:99999",
                                      "http://::1:2379",
                                      "http://127.0.0.1:2379/v3",
                                      "http://",
                                      "http://[::1",
                                      "unix:///run/etcd.sock"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *eps[1] = {(char *)bad[i]};
        struct polis_discovery_cfg cfg = {
            .etcd_endpoints = eps, .num_etcd_endpoints = 1, .etcd_prefix = "/x/"};
        assert_int_equal(polis__etcd_source_start(&cfg, on_set, &r, &s), POLIS_EINVAL);
        assert_null(s);
    }
    char *eps[1] = {"http://[::1]"};
    struct polis_discovery_cfg cfg = {
        .etcd_endpoints = eps, .num_etcd_endpoints = 0, .etcd_prefix = "/x/"};
    assert_int_equal(polis__etcd_source_start(&cfg, on_set, &r, &s), POLIS_EINVAL);
    cfg.num_etcd_endpoints = 1;
    cfg.etcd_prefix = "";
    assert_int_equal(polis__etcd_source_start(&cfg, on_set, &r, &s), POLIS_EINVAL);
    cfg.etcd_prefix = NULL;
    assert_int_equal(polis__etcd_source_start(&cfg, on_set, &r, &s), POLIS_EINVAL);
    /* Accepted forms (nothing listens there: started and stopped at once). */
    static const char *const good[] = {"http://[::1]", "http://127.0.0.1:1/", "127.0.0.1:1",
                                       "HTTP://localhost"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        eps[0] = (char *)good[i];
        cfg.etcd_prefix = "/x/";
        assert_int_equal(polis__etcd_source_start(&cfg, on_set, &r, &s), 0);
        polis__etcd_source_stop(s);
        s = NULL;
    }
    polis__etcd_source_stop(NULL);
    assert_int_equal(calls(&r), 0);
    recorder_destroy(&r);
}

/* ---- Against etcd --------------------------------------------------------------------------- */

static void test_initial_set(void **state)
{
    (void)state;
    put("/init/a", "{\"address\":\"127.0.0.1\",\"port\":9001,"
                   "\"metadata\":{\"version\":\"v2\",\"zone\":\"a\",\"weight\":5}}");
    put("/init/b", "{\"address\":\"::1\",\"port\":9002,\"ttl_s\":10}");
    put("/init", A1);  /* the prefix without its slash: not an instance */
    put("/initx", A1); /* a sibling of the prefix */
    put("/init0", A1); /* the end of the range, excluded */
    put("/init/", A1); /* the prefix itself: an empty id, skipped */
    struct recorder r;
    recorder_init(&r);
    struct polis_etcd_source *s = start_source("/init/", &r, NULL);
    assert_true(
        wait_set(&r, "a@127.0.0.1:9001/5{version=v2,weight=5,zone=a} b@[::1]:9002/1", 3000) >= 0);
    sleep_ms(300);
    assert_int_equal(calls(&r), 1); /* no second call with the same set */
    struct polis_etcd_status st;
    polis__etcd_source_status(s, &st);
    assert_true(st.connected);
    assert_string_equal(st.endpoint, etcd.url);
    assert_true(st.revision > 0);
    assert_int_equal(st.num_instances, 2);
    assert_int_equal(st.updates, 1);
    assert_int_equal(st.reconnects, 0);
    polis__etcd_source_stop(s);
    recorder_destroy(&r);
}

static void test_put_delete(void **state)
{
    (void)state;
    struct recorder r;
    recorder_init(&r);
    struct polis_etcd_source *s = start_source("/pd/", &r, NULL);
    assert_true(wait_set(&r, "", 3000) >= 0); /* an empty prefix: a first call with no instance */
    struct polis_etcd_status st;
    for (int i = 0; i < 100; i++) { /* the watch is open once connected */
        polis__etcd_source_status(s, &st);
        if (st.connected)
            break;
        sleep_ms(10);
    }
    assert_true(st.connected);

    uint64_t t0 = now_ms();
    put("/pd/a", A1);
    assert_true(wait_set(&r, "a@127.0.0.1:9001/1", 1000) >= 0);
    uint64_t took = now_ms() - t0;
    printf("put reached fn in %llu ms\n", (unsigned long long)took);
    assert_true(took < 200);
    assert_int_equal(calls(&r), 2);

    put("/pd/a", A1); /* the same value again: a watch event, not a change */
    sleep_ms(300);
    assert_int_equal(calls(&r), 2);

    t0 = now_ms();
    put("/pd/a", A2);
    assert_true(wait_set(&r, "a@127.0.0.1:9002/1", 1000) >= 0);
    put("/pd/b", A1);
    assert_true(wait_set(&r, "a@127.0.0.1:9002/1 b@127.0.0.1:9001/1", 1000) >= 0);
    del("/pd/a");
    assert_true(wait_set(&r, "b@127.0.0.1:9001/1", 1000) >= 0);
    assert_true(now_ms() - t0 < 600);
    del("/pd/b");
    assert_true(wait_set(&r, "", 1000) >= 0);
    assert_int_equal(calls(&r), 6);
    polis__etcd_source_status(s, &st);
    assert_int_equal(st.num_instances, 0);
    assert_int_equal(st.invalid_keys, 0); /* deleted keys are gone, not kept as invalid ones */
    polis__etcd_source_stop(s);
    recorder_destroy(&r);
}

static void test_lease(void **state)
{
    (void)state;
    struct recorder r;
    recorder_init(&r);
    char l1[32], l2[32];
    lease_grant(1, l1, sizeof(l1)); /* etcd raises it to its minimum TTL (2 s here) */
    put_lease("/ls/a", A1, l1);
    put("/ls/keep", A2);
    uint64_t granted = now_ms();
    struct polis_etcd_source *s = start_source("/ls/", &r, NULL);
    assert_true(wait_set(&r, "a@127.0.0.1:9001/1 keep@127.0.0.1:9002/1", 3000) >= 0);
    /* Nobody keeps the lease alive: etcd deletes the key when it expires. */
    assert_true(wait_set(&r, "keep@127.0.0.1:9002/1", 6000) >= 0);
    uint64_t after = now_ms() - granted;
    printf("lease expired after %llu ms\n", (unsigned long long)after);
    assert_true(after >= 900);

    lease_grant(60, l2, sizeof(l2));
    put_lease("/ls/b", A1, l2);
    assert_true(wait_set(&r, "b@127.0.0.1:9001/1 keep@127.0.0.1:9002/1", 1000) >= 0);
    json_decref(etcd_post("/v3/lease/revoke", "{\"ID\":\"%s\"}", l2));
    assert_true(wait_set(&r, "keep@127.0.0.1:9002/1", 500) >= 0);
    polis__etcd_source_stop(s);
    recorder_destroy(&r);
}

static void test_invalid_values(void **state)
{
    (void)state;
    put("/iv/badjson", "not json");
    put("/iv/badport", "{\"address\":\"127.0.0.1\",\"port\":70000}");
    put("/iv/good", A1);
    struct recorder r;
    recorder_init(&r);
    struct polis_etcd_source *s = start_source("/iv/", &r, NULL);
    assert_true(wait_set(&r, "good@127.0.0.1:9001/1", 3000) >= 0);
    assert_int_equal(log_count("/iv/badjson: instance skipped"), 1);
    assert_int_equal(log_count("/iv/badport: instance skipped: port"), 1);
    struct polis_etcd_status st;
    polis__etcd_source_status(s, &st);
    assert_int_equal(st.invalid_keys, 2);
    assert_int_equal(st.num_instances, 1);

    put("/iv/badjson", A2); /* repaired: it joins */
    assert_true(wait_set(&r, "badjson@127.0.0.1:9002/1 good@127.0.0.1:9001/1", 1000) >= 0);
    put("/iv/good", "{\"address\":\"example.com\",\"port\":1}"); /* broken: it leaves */
    assert_true(wait_set(&r, "badjson@127.0.0.1:9002/1", 1000) >= 0);
    assert_int_equal(log_count("/iv/good: instance skipped: address"), 1);
    put("/iv/badport", "{\"address\":\"127.0.0.1\",\"port\":9003,\"metadata\":{\"weight\":0}}");
    sleep_ms(200);
    assert_int_equal(log_count("/iv/badport: instance skipped: metadata.weight"), 1);
    assert_int_equal(calls(&r), 3); /* a bad value replacing a bad value changes nothing */
    polis__etcd_source_stop(s);
    recorder_destroy(&r);
}

static void test_restart(void **state)
{
    (void)state;
    put("/rs/a", A1);
    put("/rs/zbad", "{}");
    struct recorder r;
    recorder_init(&r);
    struct polis_etcd_source *s = start_source("/rs/", &r, NULL);
    assert_true(wait_set(&r, "a@127.0.0.1:9001/1", 3000) >= 0);
    assert_int_equal(log_count("/rs/zbad: instance skipped"), 1);

    etcd_kill(SIGKILL);
    struct polis_etcd_status st;
    for (int i = 0; i < 100; i++) {
        polis__etcd_source_status(s, &st);
        if (!st.connected)
            break;
        sleep_ms(10);
    }
    assert_false(st.connected);
    sleep_ms(400); /* a few failed reconnections */
    polis__etcd_source_status(s, &st);
    assert_false(st.connected);
    assert_true(st.reconnects >= 2);
    assert_true(st.last_error[0] != '\0');
    printf("while etcd is down: %s (%llu reconnections)\n", st.last_error,
           (unsigned long long)st.reconnects);
    assert_int_equal(calls(&r), 1); /* the last known set stands: no call while disconnected */

    assert_int_equal(etcd_start(), 0); /* the same member, the same data */
    put("/rs/b", A2);
    polis__etcd_source_status(s, &st);
    printf("put after restart while the source was %s\n",
           st.connected ? "connected" : "disconnected");
    assert_true(wait_set(&r, "a@127.0.0.1:9001/1 b@127.0.0.1:9002/1", 8000) >= 0);
    del("/rs/a");
    assert_true(wait_set(&r, "b@127.0.0.1:9002/1", 1000) >= 0);
    /* Every call had a complete set: never an empty or partial one in between. */
    pthread_mutex_lock(&r.mu);
    assert_int_equal(r.calls, 3);
    assert_string_equal(r.sets[0], "a@127.0.0.1:9001/1");
    assert_string_equal(r.sets[1], "a@127.0.0.1:9001/1 b@127.0.0.1:9002/1");
    pthread_mutex_unlock(&r.mu);
    /* The resync read the same bad value again: still one warning. */
    assert_int_equal(log_count("/rs/zbad: instance skipped"), 1);
    polis__etcd_source_stop(s);
    recorder_destroy(&r);
}

static void test_two_endpoints(void **state)
{
    (void)state;
    put("/te/a", A1);
    char dead[64];
    snprintf(dead, sizeof(dead), "http://127.0.0.1:%d", free_port());
    struct recorder r;
    recorder_init(&r);
    uint64_t t0 = now_ms();
    struct polis_etcd_source *s = start_source("/te/", &r, dead);
    assert_true(wait_set(&r, "a@127.0.0.1:9001/1", 3000) >= 0);
    printf("first set through the second endpoint after %llu ms\n",
           (unsigned long long)(now_ms() - t0));
    assert_true(now_ms() - t0 < 1000);
    struct polis_etcd_status st;
    polis__etcd_source_status(s, &st);
    assert_string_equal(st.endpoint, etcd.url);
    assert_int_equal(st.reconnects, 1);
    assert_non_null(strstr(st.last_error, dead));
    assert_non_null(strstr(st.last_error, "connect"));
    put("/te/b", A2);
    assert_true(wait_set(&r, "a@127.0.0.1:9001/1 b@127.0.0.1:9002/1", 1000) >= 0);
    polis__etcd_source_stop(s);
    recorder_destroy(&r);
}

/* An endpoint by name, resolved when connecting (every address tried in turn). */
static void test_name_endpoint(void **state)
{
    (void)state;
    put("/ne/a", A1);
    char ep[64];
    snprintf(ep, sizeof(ep), "http://localhost:%s", strrchr(etcd.url, ':') + 1);
    char *eps[1] = {ep};
    struct polis_discovery_cfg cfg = {
        .etcd_endpoints = eps, .num_etcd_endpoints = 1, .etcd_prefix = "/ne/"};
    struct recorder r;
    recorder_init(&r);
    struct polis_etcd_source *s = NULL;
    assert_int_equal(polis__etcd_source_start(&cfg, on_set, &r, &s), 0);
    assert_true(wait_set(&r, "a@127.0.0.1:9001/1", 3000) >= 0);
    struct polis_etcd_status st;
    polis__etcd_source_status(s, &st);
    assert_string_equal(st.endpoint, ep);
    polis__etcd_source_stop(s);
    recorder_destroy(&r);
}

/* A listener that accepts nothing: connections complete in its backlog and then hear nothing. */
static int silent_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void test_stop_is_prompt(void **state)
{
    (void)state;
    struct recorder r;
    recorder_init(&r);
    /* While a watch stream is open. */
    put("/sp/a", A1);
    struct polis_etcd_source *s = start_source("/sp/", &r, NULL);
    assert_true(wait_set(&r, "a@127.0.0.1:9001/1", 3000) >= 0);
    sleep_ms(100);
    uint64_t t0 = now_ms();
    polis__etcd_source_stop(s);
    assert_true(now_ms() - t0 < 100);
    int n = calls(&r);
    put("/sp/b", A1);
    sleep_ms(100);
    assert_int_equal(calls(&r), n); /* never called after stop */

    /* While waiting to reconnect to a dead endpoint (the backoff has grown past a second). */
    char dead[64];
    snprintf(dead, sizeof(dead), "http://127.0.0.1:%d", free_port());
    char *eps[1] = {dead};
    struct polis_discovery_cfg cfg = {
        .etcd_endpoints = eps, .num_etcd_endpoints = 1, .etcd_prefix = "/sp/"};
    assert_int_equal(polis__etcd_source_start(&cfg, on_set, &r, &s), 0);
    sleep_ms(1500);
    struct polis_etcd_status st;
    polis__etcd_source_status(s, &st);
    assert_true(st.reconnects >= 3);
    t0 = now_ms();
    polis__etcd_source_stop(s);
    assert_true(now_ms() - t0 < 100);

    /* While waiting for an answer that never comes. */
    int port, lfd = silent_listener(&port);
    snprintf(dead, sizeof(dead), "http://127.0.0.1:%d", port);
    assert_int_equal(polis__etcd_source_start(&cfg, on_set, &r, &s), 0);
    sleep_ms(200);
    t0 = now_ms();
    polis__etcd_source_stop(s);
    assert_true(now_ms() - t0 < 100);
    close(lfd);
    assert_int_equal(calls(&r), n);
    recorder_destroy(&r);
}

/* ---- A scripted fake etcd ------------------------------------------------------------------- */

struct fake {
    int lfd;
    int port;
    pthread_t thread;
    char requests[4][512]; /* the bodies of the requests received, in order */
    int num_requests;
    int stop_pipe[2];
};

/* Read one request (head and Content-Length body); the body goes to f->requests. Returns 0 or
 * -1. */
static int fake_read_request(struct fake *f, int fd)
{
    char buf[4096];
    size_t len = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0)
            return -1;
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end == NULL)
            continue;
        char *cl = strcasestr(buf, "Content-Length:");
        if (cl == NULL)
            return -1;
        size_t want = (size_t)strtoul(cl + 15, NULL, 10);
        size_t have = len - (size_t)(end + 4 - buf);
        if (have < want)
            continue;
        if (f->num_requests < 4)
            snprintf(f->requests[f->num_requests++], sizeof(f->requests[0]), "%.*s", (int)want,
                     end + 4);
        return 0;
    }
}

static void send_str(int fd, const char *s)
{
    size_t len = strlen(s);
    while (len > 0) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        s += n;
        len -= (size_t)n;
    }
}

/* Send text as a chunked body, in chunks of at most size bytes (not the final chunk). */
static void send_chunked(int fd, const char *text, size_t size)
{
    size_t len = strlen(text);
    for (size_t off = 0; off < len; off += size) {
        size_t n = len - off < size ? len - off : size;
        char head[32];
        snprintf(head, sizeof(head), "%zx\r\n", n);
        send_str(fd, head);
        char piece[4096];
        memcpy(piece, text + off, n);
        memcpy(piece + n, "\r\n", 3);
        send_str(fd, piece);
    }
}

/* Wait until the client closes fd or the test ends the fake. */
static void fake_hold(struct fake *f, int fd)
{
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = f->stop_pipe[0], .events = POLLIN}};
    char tmp[256];
    while (poll(p, 2, 5000) > 0 && p[1].revents == 0)
        if (recv(fd, tmp, sizeof(tmp), 0) <= 0)
            break;
}

#define FAKE_HEAD_CHUNKED                                                                          \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"                                        \
    "Transfer-Encoding: chunked\r\n\r\n"
#define HDR(rev) "{\"cluster_id\":\"1\",\"member_id\":\"2\",\"revision\":\"" rev "\"}"

static char *kv_json(const char *key, const char *value, const char *rev)
{
    static _Thread_local char out[4][512];
    static _Thread_local int next;
    char *o = out[next++ % 4];
    snprintf(o, sizeof(out[0]),
             "{\"key\":\"%s\",\"create_revision\":\"%s\",\"mod_revision\":\"%s\","
             "\"version\":\"1\",\"value\":\"%s\"}",
             b64(key), rev, rev, b64(value));
    return o;
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    char body[4096], head[128];
    /* Connection 1: a range at revision 10, then a watch that etcd cancels as compacted. */
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0 || fake_read_request(f, fd) < 0)
        goto out;
    snprintf(body, sizeof(body), "{\"header\":" HDR("10") ",\"kvs\":[%s,%s],\"count\":\"2\"}",
             kv_json("/fk/a", A1, "5"), kv_json("/fk/x", A1, "6"));
    snprintf(head, sizeof(head),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
             strlen(body));
    send_str(fd, head);
    send_str(fd, body);
    if (fake_read_request(f, fd) < 0)
        goto out;
    send_str(fd, FAKE_HEAD_CHUNKED);
    send_chunked(fd, "{\"result\":{\"header\":" HDR("10") ",\"created\":true}}\n", 4096);
    send_chunked(fd,
                 "{\"result\":{\"header\":{\"cluster_id\":\"1\"},\"canceled\":true,"
                 "\"compact_revision\":\"12\"}}\n",
                 4096);
    fake_hold(f, fd); /* etcd keeps the stream open after a cancel: the source must leave */
    close(fd);

    /* Connection 2: a fresh range (chunked, in pieces) holds a key whose put the source never
     * saw as an event and lacks one deleted meanwhile, then a watch whose responses arrive a few
     * bytes per chunk. */
    fd = accept(f->lfd, NULL, NULL);
    if (fd < 0 || fake_read_request(f, fd) < 0)
        goto out;
    snprintf(body, sizeof(body), "{\"header\":" HDR("15") ",\"kvs\":[%s,%s],\"count\":\"2\"}",
             kv_json("/fk/a", A1, "5"), kv_json("/fk/b", A2, "14"));
    send_str(fd, FAKE_HEAD_CHUNKED);
    send_chunked(fd, body, 7);
    send_str(fd, "0\r\n\r\n");
    if (fake_read_request(f, fd) < 0)
        goto out;
    send_str(fd, FAKE_HEAD_CHUNKED);
    snprintf(
        body, sizeof(body),
        "{\"result\":{\"header\":" HDR(
            "15") ",\"created\":true}}\n"
                  "{\"result\":{\"header\":" HDR(
                      "16") ",\"events\":[{\"kv\":%s}]}}\n"
                            "{\"result\":{\"header\":" HDR(
                                "18") ",\"events\":[{\"type\":\"DELETE\",\"kv\":"
                                      "{\"key\":\"%s\",\"mod_revision\":\"17\"}},{\"kv\":%s}]}}\n",
        kv_json("/fk/c", A1, "16"), b64("/fk/a"), kv_json("/fk/c", A2, "18"));
    send_chunked(fd, body, 3);
    fake_hold(f, fd);
    close(fd);
out:
    return NULL;
}

static void test_fake_compacted_resync(void **state)
{
    (void)state;
    struct fake f = {0};
    f.lfd = silent_listener(&f.port);
    assert_int_equal(pipe(f.stop_pipe), 0);
    assert_int_equal(pthread_create(&f.thread, NULL, fake_main, &f), 0);
    char ep[64];
    snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", f.port);
    char *eps[1] = {ep};
    struct polis_discovery_cfg cfg = {
        .etcd_endpoints = eps, .num_etcd_endpoints = 1, .etcd_prefix = "/fk/"};
    struct recorder r;
    recorder_init(&r);
    struct polis_etcd_source *s = NULL;
    assert_int_equal(polis__etcd_source_start(&cfg, on_set, &r, &s), 0);
    assert_true(wait_set(&r, "b@127.0.0.1:9002/1 c@127.0.0.1:9002/1", 3000) >= 0);
    struct polis_etcd_status st;
    polis__etcd_source_status(s, &st);
    assert_int_equal(st.revision, 18);
    assert_true(st.connected);
    assert_int_equal(st.reconnects, 1);
    assert_non_null(strstr(st.last_error, "compacted"));
    polis__etcd_source_stop(s);
    assert_int_equal(write(f.stop_pipe[1], "x", 1), 1);
    pthread_join(f.thread, NULL);

    /* Each watch started after the revision its range read. */
    assert_int_equal(f.num_requests, 4);
    assert_non_null(strstr(f.requests[0], "\"range_end\""));
    assert_non_null(strstr(f.requests[1], "\"start_revision\":\"11\""));
    assert_non_null(strstr(f.requests[3], "\"start_revision\":\"16\""));
    /* The calls: the first range, the resync, then one per watch response that changed it. */
    assert_int_equal(r.calls, 4);
    assert_string_equal(r.sets[0], "a@127.0.0.1:9001/1 x@127.0.0.1:9001/1");
    assert_string_equal(r.sets[1], "a@127.0.0.1:9001/1 b@127.0.0.1:9002/1");
    assert_string_equal(r.sets[2], "a@127.0.0.1:9001/1 b@127.0.0.1:9002/1 c@127.0.0.1:9001/1");
    assert_string_equal(r.sets[3], "b@127.0.0.1:9002/1 c@127.0.0.1:9002/1");
    close(f.lfd);
    close(f.stop_pipe[0]);
    close(f.stop_pipe[1]);
    recorder_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64),        cmocka_unit_test(test_prefix_end),
        cmocka_unit_test(test_start_rejects), cmocka_unit_test(test_fake_compacted_resync),
        cmocka_unit_test(test_initial_set),   cmocka_unit_test(test_put_delete),
        cmocka_unit_test(test_lease),         cmocka_unit_test(test_invalid_values),
        cmocka_unit_test(test_two_endpoints), cmocka_unit_test(test_stop_is_prompt),
        cmocka_unit_test(test_name_endpoint), cmocka_unit_test(test_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
