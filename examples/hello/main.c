/* polis-example-hello: a small JSON service on the public SDK, the one `make run` puts behind the
 * gateway. */
#include <polis/core.h>
#include <polis/http.h>
#include <polis/metrics.h>
#include <polis/registry.h>
#include <polis/trace.h>

#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct service {
    const char *name; /* this instance's name, in every answer */
    const char *next; /* NULL, or the base URL of the service GET /chain calls */
};

/* Send obj (taking its reference) as the JSON body. */
static void reply_json(struct polis_response *res, int status, json_t *obj)
{
    char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(obj);
    if (text == NULL) {
        polis_response_status(res, 500);
        polis_response_header(res, "Content-Type", "application/json");
        polis_response_printf(res, "{\"error\":\"internal_error\",\"status\":500,"
                                   "\"message\":\"cannot build the answer\"}");
        return;
    }
    polis_response_status(res, status);
    polis_response_header(res, "Content-Type", "application/json");
    polis_response_body(res, text, strlen(text));
    free(text);
}

static void reply_error(struct polis_response *res, int status, const char *error,
                        const char *message)
{
    reply_json(res, status,
               json_pack("{s:s, s:i, s:s}", "error", error, "status", status, "message", message));
}

/* A JSON string from a view; bytes that are not UTF-8 become U+FFFD so that any request can be
 * echoed. */
static json_t *json_str(struct polis_str s)
{
    json_t *j = json_stringn(s.p, s.len);
    if (j != NULL)
        return j;
    char *copy = malloc(s.len * 3 + 1);
    if (copy == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        if (ch < 0x80) {
            copy[o++] = (char)ch;
        } else {
            memcpy(copy + o, "\xef\xbf\xbd", 3);
            o += 3;
        }
    }
    j = json_stringn(copy, o);
    free(copy);
    return j;
}

static bool method_is(const struct polis_request *req, const char *m)
{
    return polis_str_eq(req->method, (struct polis_str){m, strlen(m)});
}

static void handle_root(const struct service *svc, struct polis_response *res)
{
    char message[256];
    snprintf(message, sizeof(message), "hello from %s", svc->name);
    reply_json(res, 200,
               json_pack("{s:s, s:s, s:s}", "service", "hello", "instance", svc->name, "message",
                         message));
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode a path segment into out (cap bytes); a bad escape stays as it is. */
static struct polis_str percent_decode(struct polis_str s, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < s.len && o < cap; i++) {
        int hi, lo;
        if (s.p[i] == '%' && i + 2 < s.len && (hi = hex_digit(s.p[i + 1])) >= 0 &&
            (lo = hex_digit(s.p[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = s.p[i];
        }
    }
    return (struct polis_str){out, o};
}

static void handle_hello(const struct service *svc, struct polis_str segment,
                         struct polis_response *res)
{
    char buf[256], greeting[512];
    struct polis_str who = percent_decode(segment, buf, sizeof(buf));
    snprintf(greeting, sizeof(greeting), "hello, %.*s!", (int)who.len, who.p);
    reply_json(res, 200,
               json_pack("{s:o, s:o, s:s}", "greeting",
                         json_str((struct polis_str){greeting, strlen(greeting)}), "who",
                         json_str(who), "instance", svc->name));
}

static void handle_echo(const struct service *svc, const struct polis_request *req,
                        struct polis_response *res)
{
    json_t *headers = json_object();
    for (size_t i = 0; headers != NULL && i < req->num_headers; i++) {
        const struct polis_h1_header *h = &req->headers[i];
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)h->name.len, h->name.p);
        for (char *p = name; *p != '\0'; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        /* A repeated field becomes one comma-separated value, as RFC 9110 allows. */
        json_t *prev = json_object_get(headers, name);
        if (prev != NULL) {
            char *joined = NULL;
            size_t plen = json_string_length(prev);
            joined = malloc(plen + 2 + h->value.len);
            if (joined != NULL) {
                memcpy(joined, json_string_value(prev), plen);
                memcpy(joined + plen, ", ", 2);
                memcpy(joined + plen + 2, h->value.p, h->value.len);
                json_object_set_new(headers, name,
                                    json_str((struct polis_str){joined, plen + 2 + h->value.len}));
                free(joined);
            }
            continue;
        }
        json_object_set_new(headers, name, json_str(h->value));
    }
    reply_json(res, 200,
               json_pack("{s:s, s:o, s:o, s:o, s:o, s:I, s:o}", "instance", svc->name, "method",
                         json_str(req->method), "path", json_str(req->path), "query",
                         json_str(req->query), "headers", headers, "body_length",
                         (json_int_t)req->body.len, "client", json_str(req->client_addr)));
}

/* GET /chain: call GET <next>/hello/chained and wrap its answer; the last of a chain answers like
 * /hello/chained. In a traced server, the call carries the trace on (polis_fetch does it). */
static void handle_chain(const struct service *svc, struct polis_response *res)
{
    if (svc->next == NULL) {
        handle_hello(svc, POLIS_STR("chained"), res);
        return;
    }
    char url[1024];
    int n = snprintf(url, sizeof(url), "%s/hello/chained", svc->next);
    if (n < 0 || (size_t)n >= sizeof(url)) {
        reply_error(res, 500, "internal_error", "--next is too long");
        return;
    }
    struct polis_fetch_result r;
    int rc = polis_fetch("GET", url, NULL, NULL, 0, 5000, &r);
    if (rc < 0) {
        char message[1200];
        snprintf(message, sizeof(message), "GET %s: %s", url, polis_strerror(rc));
        polis_warn("chain: %s", message); /* the line carries the request and trace ids */
        reply_error(res, rc == POLIS_ETIMEDOUT ? 504 : 502,
                    rc == POLIS_ETIMEDOUT ? "gateway_timeout" : "bad_gateway", message);
        return;
    }
    /* The next answer as JSON, or as a string when it is not JSON. */
    json_t *next = json_loadb(polis_buf_head(&r.body), polis_buf_len(&r.body), 0, NULL);
    if (next == NULL)
        next = json_str((struct polis_str){polis_buf_head(&r.body), polis_buf_len(&r.body)});
    int status = r.status;
    polis_fetch_free(&r);
    reply_json(res, 200,
               json_pack("{s:s, s:i, s:o}", "instance", svc->name, "next_status", status, "next",
                         next != NULL ? next : json_null()));
}

/* The routes. Runs on a server thread; it only reads svc, so it needs no lock. */
static void handle(const struct polis_request *req, struct polis_response *res, void *ud)
{
    const struct service *svc = ud;
    struct polis_str path = req->path;
    static const struct polis_str hello_prefix = POLIS_STR("/hello/");

    if (polis_str_eq(path, POLIS_STR("/")) || polis_str_eq(path, POLIS_STR("/health"))) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD")) {
            polis_response_header(res, "Allow", "GET, HEAD");
            reply_error(res, 405, "method_not_allowed", "use GET");
        } else if (path.len == 1) {
            handle_root(svc, res);
        } else {
            reply_json(res, 200, json_pack("{s:s}", "status", "ok"));
        }
        return;
    }
    if (path.len > hello_prefix.len &&
        polis_str_eq((struct polis_str){path.p, hello_prefix.len}, hello_prefix) &&
        memchr(path.p + hello_prefix.len, '/', path.len - hello_prefix.len) == NULL) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD")) {
            polis_response_header(res, "Allow", "GET, HEAD");
            reply_error(res, 405, "method_not_allowed", "use GET");
            return;
        }
        handle_hello(
            svc, (struct polis_str){path.p + hello_prefix.len, path.len - hello_prefix.len}, res);
        return;
    }
    if (polis_str_eq(path, POLIS_STR("/chain"))) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD")) {
            polis_response_header(res, "Allow", "GET, HEAD");
            reply_error(res, 405, "method_not_allowed", "use GET");
            return;
        }
        handle_chain(svc, res);
        return;
    }
    if (polis_str_eq(path, POLIS_STR("/echo"))) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD") && !method_is(req, "POST")) {
            polis_response_header(res, "Allow", "GET, HEAD, POST");
            reply_error(res, 405, "method_not_allowed", "use GET or POST");
            return;
        }
        handle_echo(svc, req, res);
        return;
    }
    char message[512];
    snprintf(message, sizeof(message), "no route for %.*s %.*s", (int)req->method.len,
             req->method.p, (int)(path.len < 256 ? path.len : 256), path.p);
    json_t *m = json_str((struct polis_str){message, strlen(message)});
    reply_json(res, 404,
               json_pack("{s:s, s:i, s:o}", "error", "not_found", "status", 404, "message", m));
}

static void usage(FILE *to)
{
    fprintf(to,
            "usage: polis-example-hello [--listen HOST:PORT] [--name NAME] [--threads N]\n"
            "                           [--next URL] [--trace-endpoint URL]\n"
            "                           [--register URL [--service NAME] [--id ID]\n"
            "                            [--metadata KEY=VALUE]... [--ttl SECONDS]\n"
            "                            [--registry-token TOKEN]]\n"
            "  --listen          address to serve on (default 127.0.0.1:9001)\n"
            "  --name            instance name in the answers (default hello)\n"
            "  --threads         event-loop threads (default 1)\n"
            "  --next            base URL that GET /chain calls (http://127.0.0.1:9002)\n"
            "  --trace-endpoint  OTLP/HTTP JSON collector to send traces to\n"
            "                    (http://127.0.0.1:4318/v1/traces); none: no tracing\n"
            "  --register        the gateway's admin listener (http://127.0.0.1:9901): register\n"
            "                    there at start, heartbeat, and deregister on SIGTERM or SIGINT\n"
            "                    before the drain; none: no registration\n"
            "  --service         service name to register under (default hello)\n"
            "  --id              instance id (default SERVICE-HOSTNAME-PORT)\n"
            "  --metadata        instance metadata, repeatable (--metadata version=v2\n"
            "                    --metadata weight=100)\n"
            "  --ttl             seconds the registry keeps the instance without a heartbeat\n"
            "                    (1..3600, default 10; heartbeats every ttl/3)\n"
            "  --registry-token  bearer token of the admin listener, when it wants one\n"
            "The registered address is the --listen host, or 127.0.0.1 when it listens on\n"
            "every address.\n");
}

#define MAX_METADATA 64

/* The address the gateway reaches us on: the host of listen ("127.0.0.1:9001", "[::1]:9001"),
 * or 127.0.0.1 when it is empty or a wildcard (":9001", "0.0.0.0:9001"). Into buf. */
static const char *advertised_address(const char *listen, char *buf, size_t cap)
{
    const char *colon = strrchr(listen, ':');
    size_t n = colon != NULL ? (size_t)(colon - listen) : strlen(listen);
    if (n >= 2 && listen[0] == '[' && listen[n - 1] == ']') {
        listen++;
        n -= 2;
    }
    if (n == 0 || n >= cap)
        return "127.0.0.1";
    snprintf(buf, cap, "%.*s", (int)n, listen);
    if (strcmp(buf, "0.0.0.0") == 0 || strcmp(buf, "::") == 0)
        return "127.0.0.1";
    return buf;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"listen", required_argument, NULL, 'l'},
        {"name", required_argument, NULL, 'n'},
        {"threads", required_argument, NULL, 't'},
        {"next", required_argument, NULL, 'x'},
        {"trace-endpoint", required_argument, NULL, 'e'},
        {"register", required_argument, NULL, 'r'},
        {"service", required_argument, NULL, 's'},
        {"id", required_argument, NULL, 'i'},
        {"metadata", required_argument, NULL, 'm'},
        {"ttl", required_argument, NULL, 'T'},
        {"registry-token", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *listen = "127.0.0.1:9001";
    struct service svc = {.name = "hello"};
    const char *trace_endpoint = NULL;
    long threads = 1;
    /* Registration: NULL registry, no registration. metadata holds key, value, ..., NULL; the
     * keys are copies (the values point into argv after the '='). */
    struct polis_registration_opts ropts = {.service = "hello"};
    const char *metadata[2 * MAX_METADATA + 1] = {NULL};
    char *meta_keys[MAX_METADATA] = {NULL};
    size_t num_meta = 0;
    int exit_code = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "l:n:t:x:e:r:s:i:m:T:k:h", options, NULL)) != -1) {
        char *end;
        switch (opt) {
        case 'l':
            listen = optarg;
            break;
        case 'n':
            svc.name = optarg;
            break;
        case 'x':
            svc.next = optarg;
            break;
        case 'e':
            trace_endpoint = optarg;
            break;
        case 'r':
            ropts.registry = optarg;
            break;
        case 's':
            ropts.service = optarg;
            break;
        case 'i':
            ropts.id = optarg;
            break;
        case 'k':
            ropts.token = optarg;
            break;
        case 'm': {
            const char *eq = strchr(optarg, '=');
            if (eq == NULL || eq == optarg || num_meta == MAX_METADATA) {
                fprintf(stderr, "polis-example-hello: --metadata wants KEY=VALUE (at most %d)\n",
                        MAX_METADATA);
                exit_code = 2;
                goto out_meta;
            }
            meta_keys[num_meta] = strndup(optarg, (size_t)(eq - optarg));
            if (meta_keys[num_meta] == NULL) {
                fprintf(stderr, "polis-example-hello: out of memory\n");
                exit_code = 1;
                goto out_meta;
            }
            metadata[2 * num_meta] = meta_keys[num_meta];
            metadata[2 * num_meta + 1] = eq + 1;
            num_meta++;
            break;
        }
        case 'T': {
            long ttl = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || ttl < 1 || ttl > 3600) {
                fprintf(stderr, "polis-example-hello: --ttl wants 1..3600 seconds\n");
                exit_code = 2;
                goto out_meta;
            }
            ropts.ttl_s = (uint32_t)ttl;
            break;
        }
        case 't':
            threads = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || threads < 1 || threads > 256) {
                fprintf(stderr, "polis-example-hello: --threads wants 1..256\n");
                exit_code = 2;
                goto out_meta;
            }
            break;
        case 'h':
            usage(stdout);
            goto out_meta;
        default:
            usage(stderr);
            exit_code = 2;
            goto out_meta;
        }
    }
    if (optind != argc) {
        usage(stderr);
        exit_code = 2;
        goto out_meta;
    }
    if (ropts.registry == NULL && (ropts.id != NULL || ropts.token != NULL || num_meta > 0 ||
                                   ropts.ttl_s != 0 || strcmp(ropts.service, "hello") != 0)) {
        fprintf(stderr, "polis-example-hello: --service, --id, --metadata, --ttl and "
                        "--registry-token go with --register\n");
        exit_code = 2;
        goto out_meta;
    }
    ropts.metadata = num_meta > 0 ? metadata : NULL;

    /* The server counts requests in this registry and serves it on GET /metrics. */
    struct polis_metrics *metrics = polis_metrics_new();
    if (metrics == NULL) {
        polis_error("hello: out of memory");
        exit_code = 1;
        goto out_meta;
    }
    /* Traces: every request continues its caller's trace (parent-based: the caller's sampling
     * decision wins; new traces are all sampled), and GET /chain's call carries it on. */
    struct polis_tracer *tracer = NULL;
    if (trace_endpoint != NULL) {
        struct polis_tracer_opts topts = {
            .endpoint = trace_endpoint,
            .service_name = "hello",
            .sample_ratio = 1.0,
        };
        int rc = polis_tracer_start(&topts, &tracer);
        if (rc < 0) {
            polis_error("hello: cannot trace to %s: %s", trace_endpoint, polis_strerror(rc));
            exit_code = rc == POLIS_EINVAL ? 2 : 1;
            goto out_metrics;
        }
    }
    struct polis_server_opts opts = {
        .listen = listen,
        .threads = (int)threads,
        .handler = handle,
        .ud = &svc,
        .metrics = metrics,
        .tracer = tracer,
    };
    struct polis_server *srv;
    int rc = polis_server_start(&opts, &srv);
    if (rc < 0) {
        polis_error("hello: cannot serve on %s: %s", listen, polis_strerror(rc));
        exit_code = 1;
        goto out_tracer;
    }
    polis_info("hello: instance %s listening on %s (port %d, %ld thread%s)", svc.name, listen,
               polis_server_port(srv), threads, threads == 1 ? "" : "s");

    /* Register once the port is known. An unreachable registry is not fatal (the registration
     * goes on in the background); options the registry or libpolis refuse are. */
    struct polis_registration *reg = NULL;
    char addr[64];
    if (ropts.registry != NULL) {
        ropts.address = advertised_address(listen, addr, sizeof(addr));
        ropts.port = polis_server_port(srv);
        rc = polis_register(&ropts, &reg);
        if (rc < 0) {
            polis_error("hello: cannot register with %s: %s", ropts.registry, polis_strerror(rc));
            polis_server_stop(srv);
            exit_code = rc == POLIS_EINVAL ? 2 : 1;
            goto out_tracer;
        }
    }

    int sig = polis_wait_for_shutdown_signal();
    polis_info("hello: %s received, stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    /* Deregister first, so that the gateway stops sending requests, then drain the server. */
    polis_deregister(reg);
    polis_server_stop(srv);
    polis_info("hello: stopped");

out_tracer:
    if (tracer != NULL)
        polis_tracer_stop(tracer); /* after the server: its last spans are exported */
out_metrics:
    polis_metrics_free(metrics);
out_meta:
    for (size_t i = 0; i < num_meta; i++)
        free(meta_keys[i]);
    return exit_code;
}
