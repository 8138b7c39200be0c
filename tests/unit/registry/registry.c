/* Unit tests of the embedded registry (lib/registry/registry.c) through its REST API, served by
 * a real polis_server on loopback and driven with polis_fetch. */
#include "registry/registry.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
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

#define MAX_WAIT_MS 2000

struct fixture {
    struct polis_registry *reg;
    struct polis_server *srv;
    int port;
};

/* The registry the server's handler serves; NULL: every request is the caller's 404. */
static struct polis_registry *_Atomic served;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void handler(const struct polis_request *req, struct polis_response *res, void *ud)
{
    (void)ud;
    if (polis__registry_handle(served, req, res))
        return;
    polis_response_status(res, 404);
    polis_response_header(res, "Content-Type", "application/json");
    polis_response_printf(res, "{\"error\":\"caller\"}");
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    struct polis_registry_cfg cfg = {.enabled = true,
                                     .default_ttl_ms = 30000,
                                     .max_ttl_ms = 3600000,
                                     .max_wait_ms = MAX_WAIT_MS};
    assert_int_equal(polis__registry_new(&cfg, &f->reg), 0);
    served = f->reg;
    struct polis_server_opts opts = {.listen = "127.0.0.1:0", .threads = 1, .handler = handler};
    assert_int_equal(polis_server_start(&opts, &f->srv), 0);
    f->port = polis_server_port(f->srv);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->srv != NULL)
        polis_server_stop(f->srv);
    served = NULL;
    polis__registry_free(f->reg);
    free(f);
    return 0;
}

/* The test's port, for helpers that run on other threads. */
static int g_port;

/* One request; returns the status and, when json is not NULL, the parsed body (which must be
 * JSON). */
static int call(const char *method, const char *path, const char *body, json_t **json)
{
    char url[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", g_port, path);
    struct polis_fetch_result r;
    int rc = polis_fetch(method, url, NULL, body, body != NULL ? strlen(body) : 0, 5000, &r);
    if (rc != 0)
        fail_msg("%s %s: %s", method, path, polis_strerror(rc));
    if (json != NULL) {
        json_error_t err;
        *json = json_loadb(polis_buf_head(&r.body) ? polis_buf_head(&r.body) : "",
                           polis_buf_len(&r.body), 0, &err);
        if (*json == NULL)
            fail_msg("%s %s: the answer is not JSON: %.*s", method, path,
                     (int)polis_buf_len(&r.body), polis_buf_head(&r.body));
    }
    int status = r.status;
    polis_fetch_free(&r);
    return status;
}

/* A raw exchange (Connection: close), to see the answer's headers. */
struct raw {
    int status;
    char text[65536];
};

static void raw_call(const char *method, const char *path, const char *body, struct raw *out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char req[2048];
    int n =
        snprintf(req, sizeof(req),
                 "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s",
                 method, path, body != NULL ? strlen(body) : 0, body != NULL ? body : "");
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    size_t len = 0;
    for (;;) {
        ssize_t k = recv(fd, out->text + len, sizeof(out->text) - 1 - len, 0);
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    out->text[len] = '\0';
    assert_int_equal(sscanf(out->text, "HTTP/1.1 %d", &out->status), 1);
}

static const char *jstr(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_string(v))
        fail_msg("%s is not a string", key);
    return json_string_value(v);
}

static json_int_t jint(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v))
        fail_msg("%s is not an integer", key);
    return json_integer_value(v);
}

/* GET the service: its index and its instances (the caller frees *json when asked for). */
static json_int_t get_service(const char *svc, json_t **json)
{
    char path[256];
    snprintf(path, sizeof(path), "/registry/v1/services/%s", svc);
    json_t *j;
    assert_int_equal(call("GET", path, NULL, &j), 200);
    json_int_t index = jint(j, "index");
    assert_true(json_is_array(json_object_get(j, "instances")));
    if (json != NULL)
        *json = j;
    else
        json_decref(j);
    return index;
}

static void put_instance(const char *svc, const char *id, const char *body, int want, json_t **json)
{
    char path[256];
    snprintf(path, sizeof(path), "/registry/v1/services/%s/instances/%s", svc, id);
    json_t *j;
    assert_int_equal(call("PUT", path, body, &j), want);
    if (json != NULL)
        *json = j;
    else
        json_decref(j);
}

static int heartbeat(const char *svc, const char *id)
{
    char path[256];
    snprintf(path, sizeof(path), "/registry/v1/services/%s/instances/%s/heartbeat", svc, id);
    json_t *j;
    int status = call("PUT", path, NULL, &j);
    json_decref(j);
    return status;
}

static const char *const BODY_V2 =
    "{\"address\": \"127.0.0.1\", \"port\": 9001, \"ttl_s\": 10, "
    "\"metadata\": {\"version\": \"v2\", \"zone\": \"a\", \"weight\": 100}}";

static void test_register_replace(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    struct raw raw;
    raw_call("PUT", "/registry/v1/services/web/instances/web-1", BODY_V2, &raw);
    assert_int_equal(raw.status, 201);
    assert_non_null(strstr(raw.text, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(raw.text, "\r\nX-Polis-Index: "));
    json_t *in = json_loads(strstr(raw.text, "\r\n\r\n") + 4, 0, NULL);
    assert_non_null(in);
    assert_string_equal(jstr(in, "id"), "web-1");
    assert_string_equal(jstr(in, "address"), "127.0.0.1");
    assert_int_equal(jint(in, "port"), 9001);
    assert_int_equal(jint(in, "ttl_s"), 10);
    assert_true(jint(in, "expires_in_ms") > 9000 && jint(in, "expires_in_ms") <= 10000);
    assert_string_equal(jstr(in, "health"), "unknown");
    const char *when = jstr(in, "registered_at");
    assert_int_equal(strlen(when), 24); /* 2026-01-02T03:04:05.678Z */
    assert_true(when[10] == 'T' && when[23] == 'Z');
    char first_seen[32];
    snprintf(first_seen, sizeof(first_seen), "%s", when);
    json_t *meta = json_object_get(in, "metadata");
    assert_string_equal(jstr(meta, "version"), "v2");
    assert_string_equal(jstr(meta, "zone"), "a");
    assert_string_equal(jstr(meta, "weight"), "100");
    json_decref(in);

    json_t *j;
    json_int_t i1 = get_service("web", &j);
    assert_true(i1 > 0);
    assert_string_equal(jstr(j, "service"), "web");
    assert_int_equal(json_array_size(json_object_get(j, "instances")), 1);
    json_decref(j);

    /* The same content again: 200, nothing changes. */
    usleep(5000);
    put_instance("web", "web-1", BODY_V2, 200, &in);
    assert_string_equal(jstr(in, "registered_at"), first_seen);
    json_decref(in);
    assert_int_equal(get_service("web", NULL), i1);

    /* Other content: replaced, the index grows; it keeps its first registration time. */
    put_instance(
        "web", "web-1",
        "{\"address\": \"127.0.0.1\", \"port\": 9002, \"metadata\": {\"version\": \"v3\"}}", 200,
        &in);
    assert_int_equal(jint(in, "port"), 9002);
    assert_int_equal(jint(in, "ttl_s"), 30); /* the default */
    assert_string_equal(jstr(in, "registered_at"), first_seen);
    json_decref(in);
    json_int_t i2 = get_service("web", &j);
    assert_true(i2 > i1);
    json_t *list = json_object_get(j, "instances");
    assert_int_equal(json_array_size(list), 1);
    assert_int_equal(jint(json_array_get(list, 0), "port"), 9002);
    assert_string_equal(jstr(json_object_get(json_array_get(list, 0), "metadata"), "version"),
                        "v3");
    json_decref(j);

    /* A second instance, IPv6; listed in id order. */
    put_instance("web", "a-ipv6", "{\"address\": \"::1\", \"port\": 9003}", 201, &in);
    assert_string_equal(jstr(in, "address"), "::1");
    json_decref(in);
    json_int_t i3 = get_service("web", &j);
    assert_true(i3 > i2);
    list = json_object_get(j, "instances");
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(jstr(json_array_get(list, 0), "id"), "a-ipv6");
    assert_string_equal(jstr(json_array_get(list, 1), "id"), "web-1");
    json_decref(j);

    /* A ttl_s alone changes nothing watchers care about. */
    put_instance("web", "a-ipv6", "{\"address\": \"::1\", \"port\": 9003, \"ttl_s\": 100}", 200,
                 &in);
    assert_int_equal(jint(in, "ttl_s"), 100);
    json_decref(in);
    assert_int_equal(get_service("web", NULL), i3);
}

static void test_heartbeat_delete_list(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    put_instance("api", "i-1", "{\"address\": \"10.0.0.1\", \"port\": 80, \"ttl_s\": 2}", 201,
                 NULL);
    put_instance("api", "i-2", "{\"address\": \"10.0.0.2\", \"port\": 80}", 201, NULL);
    put_instance("db", "d-1", "{\"address\": \"10.0.1.1\", \"port\": 5432}", 201, NULL);
    json_int_t index = get_service("api", NULL);

    /* A heartbeat renews: 200, the index stays. */
    usleep(300000);
    json_t *j;
    assert_int_equal(call("PUT", "/registry/v1/services/api/instances/i-1/heartbeat", NULL, &j),
                     200);
    assert_true(jint(j, "expires_in_ms") > 1900);
    json_decref(j);
    assert_int_equal(get_service("api", NULL), index);

    /* Unknown: 404 with a JSON error, so that the client registers again. */
    struct raw raw;
    raw_call("PUT", "/registry/v1/services/api/instances/nope/heartbeat", NULL, &raw);
    assert_int_equal(raw.status, 404);
    assert_non_null(strstr(raw.text, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(raw.text, "\"error\":\"not_found\""));
    assert_int_equal(heartbeat("nosuchservice", "i-1"), 404);

    /* The list. */
    assert_int_equal(call("GET", "/registry/v1/services", NULL, &j), 200);
    json_t *list = json_object_get(j, "services");
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(jstr(json_array_get(list, 0), "name"), "api");
    assert_int_equal(jint(json_array_get(list, 0), "instances"), 2);
    assert_int_equal(jint(json_array_get(list, 0), "index"), index);
    assert_string_equal(jstr(json_array_get(list, 1), "name"), "db");
    assert_int_equal(jint(json_array_get(list, 1), "instances"), 1);
    json_decref(j);

    /* Delete: 200, gone, the index grows; a second time: 404. */
    assert_int_equal(call("DELETE", "/registry/v1/services/api/instances/i-1", NULL, &j), 200);
    assert_string_equal(jstr(j, "id"), "i-1");
    json_decref(j);
    json_int_t after = get_service("api", &j);
    assert_true(after > index);
    assert_int_equal(json_array_size(json_object_get(j, "instances")), 1);
    json_decref(j);
    assert_int_equal(call("DELETE", "/registry/v1/services/api/instances/i-1", NULL, &j), 404);
    assert_string_equal(jstr(j, "error"), "not_found");
    json_decref(j);
    assert_int_equal(heartbeat("api", "i-1"), 404);

    /* The last instance gone: the service stays known, with its index and no instance. */
    assert_int_equal(call("DELETE", "/registry/v1/services/db/instances/d-1", NULL, &j), 200);
    json_decref(j);
    json_int_t db = get_service("db", &j);
    assert_true(db > after);
    assert_int_equal(json_array_size(json_object_get(j, "instances")), 0);
    json_decref(j);

    /* An unknown service: index 0 and no instance (not a 404), and not listed. */
    assert_int_equal(get_service("unknown", &j), 0);
    assert_int_equal(json_array_size(json_object_get(j, "instances")), 0);
    json_decref(j);
    assert_int_equal(call("GET", "/registry/v1/services", NULL, &j), 200);
    assert_int_equal(json_array_size(json_object_get(j, "services")), 2);
    json_decref(j);
}

/* Expect a 400 naming field for this body. */
static void bad_body(const char *body, const char *error, const char *field)
{
    json_t *j;
    int status = call("PUT", "/registry/v1/services/web/instances/x", body, &j);
    if (status != 400)
        fail_msg("%s: status %d", body, status);
    assert_string_equal(jstr(j, "error"), error);
    if (strcmp(jstr(j, "field"), field) != 0)
        fail_msg("%s: field %s, expected %s", body, jstr(j, "field"), field);
    assert_true(strlen(jstr(j, "message")) > 0);
    json_decref(j);
}

static void test_bad_requests(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    bad_body("", "invalid_json", "body");
    bad_body("not json", "invalid_json", "body");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 1, \"port\": 2}", "invalid_json", "body");
    bad_body("[1]", "invalid_field", "body");
    bad_body("{}", "invalid_field", "address");
    bad_body("{\"address\": 7, \"port\": 80}", "invalid_field", "address");
    bad_body("{\"address\": \"example.com\", \"port\": 80}", "invalid_field", "address");
    bad_body("{\"address\": \"1.2.3\", \"port\": 80}", "invalid_field", "address");
    bad_body("{\"address\": \"127.0.0.1\"}", "invalid_field", "port");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 0}", "invalid_field", "port");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 65536}", "invalid_field", "port");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": \"80\"}", "invalid_field", "port");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 80, \"metadata\": [1]}", "invalid_field",
             "metadata");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 80, \"metadata\": {\"a\": true}}",
             "invalid_field", "metadata.a");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 80, \"metadata\": {\"weight\": 0}}",
             "invalid_field", "metadata.weight");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 80, \"ttl_s\": 0}", "invalid_field", "ttl_s");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 80, \"ttl_s\": -5}", "invalid_field", "ttl_s");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 80, \"ttl_s\": \"10\"}", "invalid_field",
             "ttl_s");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 80, \"ttl_s\": 1.5}", "invalid_field",
             "ttl_s");
    bad_body("{\"address\": \"127.0.0.1\", \"port\": 80, \"ttl_s\": 3601}", "invalid_field",
             "ttl_s");

    /* Bad names. */
    json_t *j;
    char longname[200], path[512];
    memset(longname, 'a', 129);
    longname[129] = '\0';
    const struct {
        const char *path, *field;
    } names[] = {
        {"/registry/v1/services/bad%20name/instances/x", "service"},
        {"/registry/v1/services/../instances/x", "service"},
        {"/registry/v1/services//instances/x", "service"},
        {"/registry/v1/services/web/instances/x!", "id"},
        {"/registry/v1/services/web/instances/%2e", "id"},
        {"/registry/v1/services/b@d", "service"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *method = strstr(names[i].path, "instances") ? "PUT" : "GET";
        assert_int_equal(call(method, names[i].path, BODY_V2, &j), 400);
        assert_string_equal(jstr(j, "error"), "invalid_name");
        assert_string_equal(jstr(j, "field"), names[i].field);
        json_decref(j);
    }
    snprintf(path, sizeof(path), "/registry/v1/services/%s/instances/x", longname);
    assert_int_equal(call("PUT", path, BODY_V2, &j), 400);
    assert_string_equal(jstr(j, "field"), "service");
    json_decref(j);
    longname[128] = '\0'; /* 128 bytes: fine */
    snprintf(path, sizeof(path), "/registry/v1/services/%s/instances/%s", longname, longname);
    assert_int_equal(call("PUT", path, BODY_V2, &j), 201);
    json_decref(j);

    /* Bad query. */
    assert_int_equal(call("GET", "/registry/v1/services/web?index=abc", NULL, &j), 400);
    assert_string_equal(jstr(j, "field"), "index");
    json_decref(j);
    assert_int_equal(call("GET", "/registry/v1/services/web?index=1&wait=soon", NULL, &j), 400);
    assert_string_equal(jstr(j, "field"), "wait");
    json_decref(j);

    /* Methods: 405 with Allow. */
    struct raw raw;
    raw_call("POST", "/registry/v1/services", "{}", &raw);
    assert_int_equal(raw.status, 405);
    assert_non_null(strstr(raw.text, "\r\nAllow: GET, HEAD\r\n"));
    assert_non_null(strstr(raw.text, "\r\nContent-Type: application/json\r\n"));
    raw_call("DELETE", "/registry/v1/services/web", NULL, &raw);
    assert_int_equal(raw.status, 405);
    assert_non_null(strstr(raw.text, "\r\nAllow: GET, HEAD\r\n"));
    raw_call("GET", "/registry/v1/services/web/instances/x", NULL, &raw);
    assert_int_equal(raw.status, 405);
    assert_non_null(strstr(raw.text, "\r\nAllow: PUT, DELETE\r\n"));
    raw_call("POST", "/registry/v1/services/web/instances/x/heartbeat", NULL, &raw);
    assert_int_equal(raw.status, 405);
    assert_non_null(strstr(raw.text, "\r\nAllow: PUT\r\n"));

    /* Over 64 KiB: 413. */
    size_t big = 70000;
    char *body = malloc(big + 1);
    assert_non_null(body);
    memset(body, ' ', big);
    body[big] = '\0';
    assert_int_equal(call("PUT", "/registry/v1/services/web/instances/x", body, &j), 413);
    assert_string_equal(jstr(j, "error"), "payload_too_large");
    json_decref(j);
    free(body);

    /* Unknown resources under the prefix: the registry's 404; elsewhere: the caller's. */
    const char *const unknown[] = {"/registry/v1/",
                                   "/registry/v1",
                                   "/registry/v1/nothing",
                                   "/registry/v1/services/web/instances",
                                   "/registry/v1/services/web/instances/x/heartbeat/more",
                                   "/registry/v1/services/web/other/x"};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        assert_int_equal(call("GET", unknown[i], NULL, &j), 404);
        assert_string_equal(jstr(j, "error"), "not_found");
        json_decref(j);
    }
    assert_int_equal(call("GET", "/registry/v2/services", NULL, &j), 404);
    assert_string_equal(jstr(j, "error"), "caller");
    json_decref(j);
    assert_int_equal(call("GET", "/registry/v1x", NULL, &j), 404);
    assert_string_equal(jstr(j, "error"), "caller");
    json_decref(j);

    /* Nothing bad was stored. */
    assert_int_equal(get_service("web", NULL), 0);
}

static void test_expiry(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    uint64_t t0 = now_ms();
    put_instance("short", "s-1", "{\"address\": \"127.0.0.1\", \"port\": 1, \"ttl_s\": 1}", 201,
                 NULL);
    put_instance("short", "kept", "{\"address\": \"127.0.0.1\", \"port\": 2, \"ttl_s\": 1}", 201,
                 NULL);
    json_int_t index = get_service("short", NULL);
    uint64_t gone = 0, last_beat = now_ms();
    while (now_ms() - t0 < 1500) {
        if (now_ms() - last_beat >= 300) {
            assert_int_equal(heartbeat("short", "kept"), 200); /* keeps it alive */
            last_beat = now_ms();
        }
        json_t *j;
        json_int_t i = get_service("short", &j);
        size_t n = json_array_size(json_object_get(j, "instances"));
        if (n == 1 && gone == 0) {
            gone = now_ms();
            assert_true(i > index); /* expiry is a change */
            assert_string_equal(jstr(json_array_get(json_object_get(j, "instances"), 0), "id"),
                                "kept");
        }
        json_decref(j);
        usleep(10000);
    }
    assert_true(gone != 0);
    assert_true(gone - t0 >= 950);
    assert_true(gone - t0 <= 1200);
    json_t *j;
    get_service("short", &j);
    assert_int_equal(json_array_size(json_object_get(j, "instances")), 1); /* kept is kept */
    json_decref(j);
    assert_int_equal(heartbeat("short", "s-1"), 404); /* so that it registers again */
}

/* A long poll on another thread. */
struct poll {
    char path[256];
    pthread_t tid;
    int status;
    json_t *json;
    uint64_t answered; /* now_ms() */
};

static void *poll_main(void *arg)
{
    struct poll *p = arg;
    p->status = call("GET", p->path, NULL, &p->json);
    p->answered = now_ms();
    return NULL;
}

static void poll_start(struct poll *p, const char *svc, json_int_t index, const char *wait)
{
    snprintf(p->path, sizeof(p->path), "/registry/v1/services/%s?index=%lld&wait=%s", svc,
             (long long)index, wait);
    p->json = NULL;
    p->status = 0;
    p->answered = 0;
    assert_int_equal(pthread_create(&p->tid, NULL, poll_main, p), 0);
}

static void poll_join(struct poll *p)
{
    pthread_join(p->tid, NULL);
}

static void test_long_poll_change(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    put_instance("lp", "a", "{\"address\": \"127.0.0.1\", \"port\": 1}", 201, NULL);
    json_int_t index = get_service("lp", NULL);

    /* An index other than the current one: answered at once. */
    uint64_t t0 = now_ms();
    json_t *j;
    char path[128];
    snprintf(path, sizeof(path), "/registry/v1/services/lp?index=%lld&wait=10s",
             (long long)index - 1);
    assert_int_equal(call("GET", path, NULL, &j), 200);
    assert_int_equal(jint(j, "index"), index);
    json_decref(j);
    assert_true(now_ms() - t0 < 500);

    /* The current index: it waits, and a change answers it at once. */
    struct poll p;
    poll_start(&p, "lp", index, "10s");
    usleep(200000);
    assert_int_equal(p.answered, 0);
    uint64_t changed = now_ms();
    put_instance("lp", "b", "{\"address\": \"127.0.0.1\", \"port\": 2}", 201, NULL);
    poll_join(&p);
    assert_int_equal(p.status, 200);
    assert_true(p.answered - changed < 100);
    assert_true(jint(p.json, "index") > index);
    assert_int_equal(json_array_size(json_object_get(p.json, "instances")), 2);
    json_decref(p.json);

    /* A service with no instance yet: a client long-polls for its first one. */
    poll_start(&p, "first", 0, "10s");
    usleep(200000);
    assert_int_equal(p.answered, 0);
    changed = now_ms();
    put_instance("first", "f-1", "{\"address\": \"127.0.0.1\", \"port\": 3}", 201, NULL);
    poll_join(&p);
    assert_int_equal(p.status, 200);
    assert_true(p.answered - changed < 100);
    assert_int_equal(json_array_size(json_object_get(p.json, "instances")), 1);
    json_decref(p.json);

    /* A deregistration wakes it too. */
    index = get_service("lp", NULL);
    poll_start(&p, "lp", index, "10s");
    usleep(100000);
    changed = now_ms();
    assert_int_equal(call("DELETE", "/registry/v1/services/lp/instances/a", NULL, &j), 200);
    json_decref(j);
    poll_join(&p);
    assert_true(p.answered - changed < 100);
    assert_int_equal(json_array_size(json_object_get(p.json, "instances")), 1);
    json_decref(p.json);
}

static void test_long_poll_not_woken(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    const char *body = "{\"address\": \"127.0.0.1\", \"port\": 1, \"metadata\": {\"v\": \"1\"}}";
    put_instance("quiet", "a", body, 201, NULL);
    json_int_t index = get_service("quiet", NULL);
    struct poll p;
    uint64_t t0 = now_ms();
    poll_start(&p, "quiet", index, "700ms");
    usleep(150000);
    assert_int_equal(heartbeat("quiet", "a"), 200);
    usleep(150000);
    put_instance("quiet", "a", body, 200, NULL); /* identical */
    /* A change of another service does not wake it either. */
    put_instance("other", "o", "{\"address\": \"127.0.0.1\", \"port\": 1}", 201, NULL);
    poll_join(&p);
    assert_int_equal(p.status, 200);
    assert_true(p.answered - t0 >= 680);
    assert_true(p.answered - t0 < 1200);
    assert_int_equal(jint(p.json, "index"), index);
    json_decref(p.json);

    /* The wait is capped by max_wait (2 s here). */
    t0 = now_ms();
    poll_start(&p, "quiet", index, "1m");
    poll_join(&p);
    assert_int_equal(p.status, 200);
    assert_true(p.answered - t0 >= MAX_WAIT_MS - 20);
    assert_true(p.answered - t0 < MAX_WAIT_MS + 500);
    json_decref(p.json);
}

static void test_many_long_polls(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    put_instance("crowd", "a", "{\"address\": \"127.0.0.1\", \"port\": 1}", 201, NULL);
    json_int_t index = get_service("crowd", NULL);
    enum { N = 50 };
    struct poll *p = calloc(N, sizeof(*p));
    assert_non_null(p);
    for (int i = 0; i < N; i++)
        poll_start(&p[i], "crowd", index, "10s");
    usleep(400000);
    for (int i = 0; i < N; i++)
        assert_int_equal(p[i].answered, 0);
    uint64_t changed = now_ms();
    put_instance("crowd", "b", "{\"address\": \"127.0.0.1\", \"port\": 2}", 201, NULL);
    for (int i = 0; i < N; i++) {
        poll_join(&p[i]);
        assert_int_equal(p[i].status, 200);
        assert_true(jint(p[i].json, "index") > index);
        assert_int_equal(json_array_size(json_object_get(p[i].json, "instances")), 2);
        assert_true(p[i].answered - changed < 500);
        json_decref(p[i].json);
    }
    free(p);
}

/* What a subscription was told. */
struct seen {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    size_t n;
    char ids[8][32];
    pthread_t thread;
};

static void on_set(void *ud, const struct polis_instance_cfg *v, size_t n)
{
    struct seen *s = ud;
    pthread_mutex_lock(&s->mu);
    s->calls++;
    s->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        snprintf(s->ids[i], sizeof(s->ids[i]), "%s", v[i].id);
    s->thread = pthread_self();
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Wait up to ms for the call count to reach calls; returns the count. */
static int seen_wait(struct seen *s, int calls, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&s->mu);
    while (s->calls < calls)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) != 0)
            break;
    int c = s->calls;
    pthread_mutex_unlock(&s->mu);
    return c;
}

static void test_subscriptions(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    struct seen s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct polis_registry_sub *sub;
    assert_int_equal(polis__registry_subscribe(f->reg, "bad name", on_set, &s, &sub), POLIS_EINVAL);
    assert_int_equal(polis__registry_subscribe(f->reg, "sv", on_set, &s, &sub), 0);
    /* At once, on this thread, even empty. */
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.n, 0);
    assert_true(pthread_equal(s.thread, pthread_self()));

    put_instance("sv", "a", "{\"address\": \"127.0.0.1\", \"port\": 1}", 201, NULL);
    assert_int_equal(seen_wait(&s, 2, 1000), 2);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.ids[0], "a");
    assert_false(pthread_equal(s.thread, pthread_self())); /* the registry's thread */

    /* Not for a heartbeat, an identical registration or another service. */
    assert_int_equal(heartbeat("sv", "a"), 200);
    put_instance("sv", "a", "{\"address\": \"127.0.0.1\", \"port\": 1}", 200, NULL);
    put_instance("elsewhere", "x", "{\"address\": \"127.0.0.1\", \"port\": 1}", 201, NULL);
    assert_int_equal(seen_wait(&s, 3, 300), 2);

    /* A replacement with other content, a second instance, a deregistration: each is told. */
    put_instance("sv", "a", "{\"address\": \"127.0.0.1\", \"port\": 1, \"metadata\": {\"z\": 1}}",
                 200, NULL);
    assert_int_equal(seen_wait(&s, 3, 1000), 3);
    put_instance("sv", "b", "{\"address\": \"127.0.0.1\", \"port\": 2, \"ttl_s\": 1}", 201, NULL);
    assert_int_equal(seen_wait(&s, 4, 1000), 4);
    assert_int_equal(s.n, 2);
    json_t *j;
    assert_int_equal(call("DELETE", "/registry/v1/services/sv/instances/a", NULL, &j), 200);
    json_decref(j);
    assert_int_equal(seen_wait(&s, 5, 1000), 5);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.ids[0], "b");
    /* Expiry (b has ttl_s 1). */
    assert_int_equal(seen_wait(&s, 6, 2000), 6);
    assert_int_equal(s.n, 0);

    /* A second subscription of the same service gets its own first call. */
    struct seen s2 = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct polis_registry_sub *sub2;
    assert_int_equal(polis__registry_subscribe(f->reg, "sv", on_set, &s2, &sub2), 0);
    assert_int_equal(s2.calls, 1);

    /* After unsubscribe, never again. */
    polis__registry_unsubscribe(f->reg, sub);
    put_instance("sv", "c", "{\"address\": \"127.0.0.1\", \"port\": 3}", 201, NULL);
    assert_int_equal(seen_wait(&s2, 2, 1000), 2);
    usleep(100000);
    assert_int_equal(s.calls, 6);
    polis__registry_unsubscribe(f->reg, sub2);
}

static const char *health_of(void *ud, const char *service, const struct polis_instance_cfg *in)
{
    (void)ud;
    if (strcmp(service, "h") == 0 && strcmp(in->id, "good") == 0)
        return "healthy";
    return NULL;
}

static void test_health_fn(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    polis__registry_set_health_fn(f->reg, health_of, NULL);
    put_instance("h", "good", "{\"address\": \"127.0.0.1\", \"port\": 1}", 201, NULL);
    put_instance("h", "other", "{\"address\": \"127.0.0.1\", \"port\": 2}", 201, NULL);
    json_t *j;
    get_service("h", &j);
    json_t *list = json_object_get(j, "instances");
    assert_string_equal(jstr(json_array_get(list, 0), "health"), "healthy");
    assert_string_equal(jstr(json_array_get(list, 1), "health"), "unknown");
    json_decref(j);
    polis__registry_set_health_fn(f->reg, NULL, NULL);
}

static void test_free_and_stop_with_long_polls(void **state)
{
    struct fixture *f = *state;
    g_port = f->port;
    json_int_t index = get_service("w", NULL);

    /* The server stops first: its waiting long poll gets a 503; the registry frees later. */
    struct poll p;
    poll_start(&p, "w", index, "10s");
    usleep(200000);
    uint64_t t0 = now_ms();
    polis_server_stop(f->srv);
    f->srv = NULL;
    poll_join(&p);
    assert_int_equal(p.status, 503);
    assert_true(p.answered - t0 < 1000);
    json_decref(p.json);
    served = NULL;
    polis__registry_free(f->reg);

    /* The registry is freed first: its long polls are answered with the current state. */
    struct polis_registry_cfg cfg = {.max_wait_ms = 60000};
    assert_int_equal(polis__registry_new(&cfg, &f->reg), 0);
    served = f->reg;
    struct polis_server_opts opts = {.listen = "127.0.0.1:0", .threads = 1, .handler = handler};
    assert_int_equal(polis_server_start(&opts, &f->srv), 0);
    g_port = polis_server_port(f->srv);
    put_instance("w", "a", "{\"address\": \"127.0.0.1\", \"port\": 1}", 201, NULL);
    index = get_service("w", NULL);
    poll_start(&p, "w", index, "30s");
    usleep(200000);
    t0 = now_ms();
    served = NULL;
    polis__registry_free(f->reg);
    poll_join(&p);
    assert_int_equal(p.status, 200);
    assert_int_equal(jint(p.json, "index"), index);
    assert_true(p.answered - t0 < 1000);
    json_decref(p.json);
    /* Teardown frees a new, empty registry. */
    assert_int_equal(polis__registry_new(NULL, &f->reg), 0);

    struct polis_registry *r;
    struct polis_registry_cfg bad = {.default_ttl_ms = 7200000, .max_ttl_ms = 3600000};
    assert_int_equal(polis__registry_new(&bad, &r), POLIS_EINVAL);
}

int main(void)
{
    polis_log_set_level(POLIS_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_register_replace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_heartbeat_delete_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_poll_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_poll_not_woken, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_long_polls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subscriptions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health_fn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_and_stop_with_long_polls, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
