/* Unit tests of the registry client (lib/sdk/regclient.c) against a fake registry: an SDK server
 * in this process that records every request and answers as each test tells it. */
#include <polis/http.h>
#include <polis/registry.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* ---- The fake registry ---------------------------------------------------------------------- */

#define MAX_RECS 256

struct rec {
    char method[16];
    char path[256];
    char body[2048];
    char auth[128]; /* Authorization, "" when absent */
    char ctype[64]; /* Content-Type, "" when absent */
    uint64_t t;     /* when the handler saw it */
};

static struct {
    pthread_mutex_t mu;
    struct rec recs[MAX_RECS];
    int n;
    int reg_status;  /* answer to PUT .../instances/{id} */
    int hb_status;   /* answer to PUT .../heartbeat */
    int del_status;  /* answer to DELETE */
    int hb_404_once; /* answer the next heartbeat with 404, then hb_status */
    struct polis_server *srv;
    int port;
    char url[64];
} fake = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void copy_view(char *dst, size_t cap, struct polis_str s)
{
    snprintf(dst, cap, "%.*s", (int)s.len, s.p);
}

static void fake_handler(const struct polis_request *req, struct polis_response *res, void *ud)
{
    (void)ud;
    struct rec r = {.t = now_ms()};
    copy_view(r.method, sizeof(r.method), req->method);
    copy_view(r.path, sizeof(r.path), req->path);
    copy_view(r.body, sizeof(r.body), req->body);
    const struct polis_str *a = polis_request_header(req, "Authorization");
    if (a != NULL)
        copy_view(r.auth, sizeof(r.auth), *a);
    const struct polis_str *ct = polis_request_header(req, "Content-Type");
    if (ct != NULL)
        copy_view(r.ctype, sizeof(r.ctype), *ct);
    bool heartbeat =
        req->path.len > 10 && memcmp(req->path.p + req->path.len - 10, "/heartbeat", 10) == 0;

    pthread_mutex_lock(&fake.mu);
    if (fake.n < MAX_RECS)
        fake.recs[fake.n++] = r;
    int status;
    if (polis_str_eq(req->method, POLIS_STR("DELETE"))) {
        status = fake.del_status;
    } else if (heartbeat) {
        status = fake.hb_404_once ? 404 : fake.hb_status;
        fake.hb_404_once = 0;
    } else {
        status = fake.reg_status;
    }
    pthread_mutex_unlock(&fake.mu);
    polis_response_status(res, status);
    polis_response_header(res, "Content-Type", "application/json");
    polis_response_printf(res, "{\"status\":%d}", status);
}

/* Start the fake on port (0: any) and keep its URL in fake.url. */
static void fake_start(int port)
{
    char listen[32];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    struct polis_server_opts opts = {.listen = listen, .threads = 2, .handler = fake_handler};
    assert_int_equal(polis_server_start(&opts, &fake.srv), 0);
    fake.port = polis_server_port(fake.srv);
    snprintf(fake.url, sizeof(fake.url), "http://127.0.0.1:%d", fake.port);
}

static void fake_stop(void)
{
    if (fake.srv != NULL)
        polis_server_stop(fake.srv);
    fake.srv = NULL;
}

static int fake_count(void)
{
    pthread_mutex_lock(&fake.mu);
    int n = fake.n;
    pthread_mutex_unlock(&fake.mu);
    return n;
}

static struct rec fake_rec(int i)
{
    pthread_mutex_lock(&fake.mu);
    assert_true(i >= 0 && i < fake.n);
    struct rec r = fake.recs[i];
    pthread_mutex_unlock(&fake.mu);
    return r;
}

/* Wait (at most timeout_ms) until n requests were recorded. */
static bool fake_wait(int n, uint64_t timeout_ms)
{
    uint64_t until = now_ms() + timeout_ms;
    while (fake_count() < n) {
        if (now_ms() >= until)
            return false;
        sleep_ms(2);
    }
    return true;
}

static void fake_set(int reg, int hb, int del)
{
    pthread_mutex_lock(&fake.mu);
    fake.reg_status = reg;
    fake.hb_status = hb;
    fake.del_status = del;
    pthread_mutex_unlock(&fake.mu);
}

static int setup(void **state)
{
    (void)state;
    pthread_mutex_lock(&fake.mu);
    fake.n = 0;
    fake.hb_404_once = 0;
    pthread_mutex_unlock(&fake.mu);
    fake_set(201, 200, 200);
    fake_start(0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fake_stop();
    return 0;
}

#define INSTANCE_PATH "/registry/v1/services/hello/instances/hello-1"

static struct polis_registration_opts opts_for(uint32_t ttl_s)
{
    return (struct polis_registration_opts){
        .registry = fake.url,
        .service = "hello",
        .id = "hello-1",
        .port = 9001,
        .ttl_s = ttl_s,
    };
}

static bool is_register(const struct rec *r)
{
    return strcmp(r->method, "PUT") == 0 && strcmp(r->path, INSTANCE_PATH) == 0;
}

static bool is_heartbeat(const struct rec *r)
{
    return strcmp(r->method, "PUT") == 0 && strcmp(r->path, INSTANCE_PATH "/heartbeat") == 0;
}

static bool is_delete(const struct rec *r)
{
    return strcmp(r->method, "DELETE") == 0 && strcmp(r->path, INSTANCE_PATH) == 0;
}

/* ---- Tests ---------------------------------------------------------------------------------- */

/* The registration is sent before polis_register returns, with the right JSON (everything
 * escaped) and the token; deregister sends DELETE with the token. */
static void test_register_body_and_token(void **state)
{
    (void)state;
    static const char odd[] = "quote\" back\\slash\nnew line\ttab \x01 ctl \xc3\xa9t\xc3\xa9 </x>";
    const char *const meta[] = {"version", "v2", "zone", "a", "weight", "100", "note", odd, NULL};
    struct polis_registration_opts o = opts_for(10);
    o.token = "s3cr3t-t0ken";
    o.metadata = meta;
    o.address = "::1";
    o.registry = fake.url;
    char slash_url[80];
    snprintf(slash_url, sizeof(slash_url), "%s//", fake.url); /* trailing slashes are dropped */
    o.registry = slash_url;
    struct polis_registration *r = NULL;
    assert_int_equal(polis_register(&o, &r), 0);
    assert_non_null(r);
    assert_string_equal(polis_registration_id(r), "hello-1");
    assert_int_equal(fake_count(), 1);
    struct rec reg = fake_rec(0);
    assert_true(is_register(&reg));
    assert_string_equal(reg.auth, "Bearer s3cr3t-t0ken");
    assert_string_equal(reg.ctype, "application/json");

    json_error_t jerr;
    json_t *j = json_loads(reg.body, 0, &jerr);
    assert_non_null(j);
    assert_true(json_is_object(j));
    assert_int_equal(json_object_size(j), 4);
    assert_string_equal(json_string_value(json_object_get(j, "address")), "::1");
    assert_int_equal(json_integer_value(json_object_get(j, "port")), 9001);
    assert_true(json_is_integer(json_object_get(j, "port")));
    assert_int_equal(json_integer_value(json_object_get(j, "ttl_s")), 10);
    json_t *m = json_object_get(j, "metadata");
    assert_true(json_is_object(m));
    assert_int_equal(json_object_size(m), 4);
    assert_string_equal(json_string_value(json_object_get(m, "version")), "v2");
    assert_string_equal(json_string_value(json_object_get(m, "zone")), "a");
    assert_string_equal(json_string_value(json_object_get(m, "weight")), "100");
    assert_string_equal(json_string_value(json_object_get(m, "note")), odd);
    json_decref(j);

    uint64_t t0 = now_ms();
    polis_deregister(r);
    assert_true(now_ms() - t0 < 500);
    assert_int_equal(fake_count(), 2);
    struct rec del = fake_rec(1);
    assert_true(is_delete(&del));
    assert_string_equal(del.auth, "Bearer s3cr3t-t0ken");
    assert_string_equal(del.body, "");
}

/* Without a token, no Authorization; without metadata, an empty object; defaults for the
 * address, the ttl and the id. */
static void test_defaults(void **state)
{
    (void)state;
    struct polis_registration_opts o = {.registry = fake.url, .service = "hello", .port = 9002};
    struct polis_registration *r = NULL;
    assert_int_equal(polis_register(&o, &r), 0);

    char host[256] = "";
    assert_int_equal(gethostname(host, sizeof(host)), 0);
    for (char *p = host; *p != '\0'; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              *p == '.' || *p == '_' || *p == '-'))
            *p = '-';
    char want_id[300], want_path[400];
    snprintf(want_id, sizeof(want_id), "hello-%s-9002", host);
    snprintf(want_path, sizeof(want_path), "/registry/v1/services/hello/instances/%s", want_id);
    assert_string_equal(polis_registration_id(r), want_id);

    struct rec reg = fake_rec(0);
    assert_string_equal(reg.method, "PUT");
    assert_string_equal(reg.path, want_path);
    assert_string_equal(reg.auth, "");
    json_t *j = json_loads(reg.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "address")), "127.0.0.1");
    assert_int_equal(json_integer_value(json_object_get(j, "port")), 9002);
    assert_int_equal(json_integer_value(json_object_get(j, "ttl_s")), 10);
    assert_true(json_is_object(json_object_get(j, "metadata")));
    assert_int_equal(json_object_size(json_object_get(j, "metadata")), 0);
    json_decref(j);

    polis_deregister(r);
    struct rec del = fake_rec(1);
    assert_string_equal(del.method, "DELETE");
    assert_string_equal(del.path, want_path);
    assert_string_equal(del.auth, "");
    polis_deregister(NULL); /* harmless */
}

/* ttl_s = 1: a heartbeat about every 333 ms, and nothing else. */
static void test_heartbeat_interval(void **state)
{
    (void)state;
    struct polis_registration_opts o = opts_for(1);
    o.token = "tok";
    struct polis_registration *r = NULL;
    uint64_t t0 = now_ms();
    assert_int_equal(polis_register(&o, &r), 0);
    sleep_ms(1150);
    int n = fake_count();
    assert_true(n >= 4 && n <= 5); /* the registration and 3 heartbeats (a 4th is close) */
    struct rec prev = fake_rec(0);
    assert_true(is_register(&prev));
    uint64_t first_gap = prev.t - t0;
    assert_true(first_gap < 200);
    for (int i = 1; i < n; i++) {
        struct rec h = fake_rec(i);
        assert_true(is_heartbeat(&h));
        assert_string_equal(h.auth, "Bearer tok");
        uint64_t gap = h.t - prev.t;
        if (gap < 280 || gap > 420)
            fail_msg("heartbeat %d came %llu ms after the previous request", i,
                     (unsigned long long)gap);
        prev = h;
    }
    polis_deregister(r);
    struct rec last = fake_rec(fake_count() - 1);
    assert_true(is_delete(&last));
}

/* A heartbeat answered 404 (the registry forgot us) is followed at once by a registration, and
 * heartbeats go on after it. */
static void test_reregister_after_404(void **state)
{
    (void)state;
    struct polis_registration_opts o = opts_for(1);
    struct polis_registration *r = NULL;
    assert_int_equal(polis_register(&o, &r), 0);
    assert_true(fake_wait(2, 1000)); /* a first heartbeat, answered 200 */
    pthread_mutex_lock(&fake.mu);
    fake.hb_404_once = 1;
    pthread_mutex_unlock(&fake.mu);
    assert_true(fake_wait(5, 2000));
    struct rec hb404 = fake_rec(2), again = fake_rec(3), next = fake_rec(4);
    assert_true(is_heartbeat(&hb404));
    assert_true(is_register(&again));
    assert_true(again.t - hb404.t < 100); /* at once, not after an interval */
    assert_true(is_heartbeat(&next));
    assert_true(next.t - again.t >= 280 && next.t - again.t <= 420);
    json_t *j = json_loads(again.body, 0, NULL); /* the same body again */
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "port")), 9001);
    json_decref(j);
    polis_deregister(r);
}

/* The registry goes away and comes back on the same port with no memory of us: the client
 * registers again (its first call to the new registry is a registration, not a heartbeat), and
 * goes on heartbeating. */
static void test_reregister_after_restart(void **state)
{
    (void)state;
    struct polis_registration_opts o = opts_for(1);
    struct polis_registration *r = NULL;
    assert_int_equal(polis_register(&o, &r), 0);
    assert_true(fake_wait(2, 1000));
    int port = fake.port;
    fake_stop();
    sleep_ms(400); /* a heartbeat fails, then registrations with a backoff */
    pthread_mutex_lock(&fake.mu);
    fake.n = 0;
    pthread_mutex_unlock(&fake.mu);
    fake_set(201, 404, 404); /* a fresh registry knows nothing */
    uint64_t t0 = now_ms();
    fake_start(port);
    assert_int_equal(fake.port, port);
    assert_true(fake_wait(1, 1000));
    struct rec first = fake_rec(0);
    assert_true(is_register(&first));
    assert_true(first.t - t0 < 500); /* the backoff is capped at ttl / 3 */
    fake_set(201, 200, 200);
    assert_true(fake_wait(2, 1000));
    struct rec hb = fake_rec(1);
    assert_true(is_heartbeat(&hb));
    polis_deregister(r);
    struct rec del = fake_rec(fake_count() - 1);
    assert_true(is_delete(&del));
}

/* A registry that is not there when the service starts: polis_register returns 0 at once, and
 * the instance is registered as soon as the registry appears. */
static void test_registry_late(void **state)
{
    (void)state;
    int port = fake.port;
    fake_stop(); /* nothing listens on port now */
    struct polis_registration_opts o = opts_for(1);
    struct polis_registration *r = NULL;
    uint64_t t0 = now_ms();
    assert_int_equal(polis_register(&o, &r), 0);
    assert_true(now_ms() - t0 < 500);
    sleep_ms(300);
    fake_start(port);
    assert_true(fake_wait(1, 1000));
    struct rec first = fake_rec(0);
    assert_true(is_register(&first));
    polis_deregister(r);
}

/* A registry that accepts connections (the kernel's backlog does) and never answers. Returns
 * the listening socket and sets *port. */
static int hung_listen(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 64), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Accept every connection waiting on fd and keep the request line of each, in order. Returns how
 * many. */
static int hung_requests(int fd, char lines[][256], int max)
{
    int n = 0;
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK);
        if (c < 0)
            break;
        char buf[4096];
        struct pollfd pfd = {.fd = c, .events = POLLIN};
        ssize_t got = poll(&pfd, 1, 200) == 1 ? read(c, buf, sizeof(buf) - 1) : -1;
        close(c);
        if (n < max) {
            buf[got > 0 ? got : 0] = '\0';
            char *eol = strstr(buf, "\r\n");
            if (eol != NULL)
                *eol = '\0';
            snprintf(lines[n++], 256, "%.255s", buf);
        }
    }
    return n;
}

/* Deregistration when the registry is gone returns at once; when it hangs, within its bound, and
 * the DELETE is still sent, after every other call. */
static void test_deregister_bounded(void **state)
{
    (void)state;
    struct polis_registration_opts o = opts_for(1);
    struct polis_registration *r = NULL;
    assert_int_equal(polis_register(&o, &r), 0);
    fake_stop();
    uint64_t t0 = now_ms();
    polis_deregister(r);
    assert_true(now_ms() - t0 < 500); /* connection refused */

    int port;
    int lfd = hung_listen(&port);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    o.registry = url;
    t0 = now_ms();
    assert_int_equal(polis_register(&o, &r), 0); /* a timeout is not an error ... */
    uint64_t took = now_ms() - t0;
    assert_true(took >= 1900 && took < 2300); /* ... and the first call is bounded by 2 s */
    sleep_ms(150); /* a registration is in flight or the thread waits to send one */
    t0 = now_ms();
    polis_deregister(r);
    took = now_ms() - t0;
    if (took > 2300)
        fail_msg("deregistration took %llu ms", (unsigned long long)took);
    char lines[32][256];
    int n = hung_requests(lfd, lines, 32);
    close(lfd);
    assert_true(n >= 3);
    for (int i = 0; i < n - 1; i++)
        assert_string_equal(lines[i], "PUT " INSTANCE_PATH " HTTP/1.1");
    assert_string_equal(lines[n - 1], "DELETE " INSTANCE_PATH " HTTP/1.1");
}

/* Deregistration wakes the thread in the middle of a long wait. */
static void test_deregister_wakes(void **state)
{
    (void)state;
    struct polis_registration_opts o = opts_for(30); /* a heartbeat every 10 s */
    struct polis_registration *r = NULL;
    assert_int_equal(polis_register(&o, &r), 0);
    sleep_ms(50);
    uint64_t t0 = now_ms();
    polis_deregister(r);
    assert_true(now_ms() - t0 < 300);
    assert_int_equal(fake_count(), 2);
    struct rec del = fake_rec(1);
    assert_true(is_delete(&del));
}

/* A 4xx other than 408 and 429 at the first registration is a configuration error; a 503 is
 * retried in the background until it is accepted. */
static void test_refused_and_retried(void **state)
{
    (void)state;
    struct polis_registration_opts o = opts_for(1);
    struct polis_registration *r = NULL;
    fake_set(401, 200, 200);
    assert_int_equal(polis_register(&o, &r), POLIS_EINVAL);
    assert_null(r);
    fake_set(400, 200, 200);
    assert_int_equal(polis_register(&o, &r), POLIS_EINVAL);
    assert_int_equal(fake_count(), 2);

    fake_set(503, 200, 200);
    assert_int_equal(polis_register(&o, &r), 0);
    assert_non_null(r);
    assert_true(fake_wait(4, 1000)); /* retried, quickly (backoff 100 ms, then 200) */
    fake_set(200, 200, 200);
    int n = fake_count();
    assert_true(fake_wait(n + 2, 1500)); /* accepted, then a heartbeat */
    bool seen_heartbeat = false;
    for (int i = 2; i < fake_count(); i++) {
        struct rec x = fake_rec(i);
        seen_heartbeat = seen_heartbeat || is_heartbeat(&x);
        if (!seen_heartbeat)
            assert_true(is_register(&x)); /* no heartbeat before a registration is accepted */
    }
    assert_true(seen_heartbeat);
    polis_deregister(r);
}

/* Bad options are refused before any request. */
static void test_bad_options(void **state)
{
    (void)state;
    struct polis_registration *r = NULL;
    struct polis_registration_opts o;
    const char *const odd_meta[] = {"version", NULL};
    const char *const dup_meta[] = {"a", "1", "a", "2", NULL};
    const char *const empty_key[] = {"", "1", NULL};
    const char *const bad_utf8[] = {"a", "\xff\xfe", NULL};
    const char *const bad_utf8_key[] = {"\xc3", "x", NULL};

#define EXPECT_EINVAL(mutation)                                                                    \
    do {                                                                                           \
        o = opts_for(1);                                                                           \
        mutation;                                                                                  \
        assert_int_equal(polis_register(&o, &r), POLIS_EINVAL);                                    \
    } while (0)

    EXPECT_EINVAL(o.registry = NULL);
    EXPECT_EINVAL(o.registry = "ftp://127.0.0.1:1");
    EXPECT_EINVAL(o.registry = "http://");
    EXPECT_EINVAL(o.registry = "http://127.0.0.1:1/?x=1");
    EXPECT_EINVAL(o.registry = "http://127.0.0.1:99999"); /* polis_fetch refuses it */
    EXPECT_EINVAL(o.service = NULL);
    EXPECT_EINVAL(o.service = "");
    EXPECT_EINVAL(o.service = "a/b");
    EXPECT_EINVAL(o.service = "..");
    EXPECT_EINVAL(o.service = "a b");
    EXPECT_EINVAL(o.id = "x?y");
    EXPECT_EINVAL(o.id = ".");
    EXPECT_EINVAL(o.port = 0);
    EXPECT_EINVAL(o.port = 65536);
    EXPECT_EINVAL(o.ttl_s = 3601);
    EXPECT_EINVAL(o.address = "localhost");
    EXPECT_EINVAL(o.address = "10.0.0.1:80");
    EXPECT_EINVAL(o.token = "");
    EXPECT_EINVAL(o.token = "a b");
    EXPECT_EINVAL(o.token = "a\r\nX-Evil: 1");
    EXPECT_EINVAL(o.metadata = odd_meta);
    EXPECT_EINVAL(o.metadata = dup_meta);
    EXPECT_EINVAL(o.metadata = empty_key);
    EXPECT_EINVAL(o.metadata = bad_utf8);
    EXPECT_EINVAL(o.metadata = bad_utf8_key);
    char long_name[130];
    memset(long_name, 'x', 129);
    long_name[129] = '\0';
    EXPECT_EINVAL(o.service = long_name);
    EXPECT_EINVAL((o.service = long_name + 5, o.id = NULL)); /* no room for a default id */
#undef EXPECT_EINVAL
    assert_int_equal(polis_register(NULL, &r), POLIS_EINVAL);
    assert_int_equal(fake_count(), 0);

    /* At the limits: accepted. */
    o = opts_for(3600);
    o.service = long_name + 1; /* 128 bytes */
    assert_int_equal(polis_register(&o, &r), 0);
    polis_deregister(r);
    assert_int_equal(fake_count(), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_register_body_and_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_heartbeat_interval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reregister_after_404, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reregister_after_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_late, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deregister_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deregister_wakes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_and_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
