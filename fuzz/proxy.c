/* proxy.c: fuzz the gateway's whole proxy state machine with in-memory client and upstream
 * peers. Whatever the two peers send, in whatever pieces, the gateway must not crash, leak or
 * hang, everything it sends upstream must parse as valid requests, and what it sends the
 * client must begin with a valid response head. */
#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Input: 6 bytes of settings, then the client's bytes (length from bytes 4-5), then the
 * upstream's answer, replayed on every upstream connection the gateway opens. */
struct settings {
    bool client_eof, upstream_eof, stutter;
    size_t client_chunk, upstream_chunk, write_chunk;
};

#define MAX_UPSTREAMS 8

static struct polis_io_mem ups[MAX_UPSTREAMS];
static int num_ups;
static const char *up_data;
static size_t up_len;
static struct settings set;

static int connect_io(struct gw_worker *wk, const struct polis_addr *to, struct polis_io *io)
{
    if (num_ups == MAX_UPSTREAMS)
        return POLIS_EAGAIN;
    struct polis_io_mem *m = &ups[num_ups++];
    *m = (struct polis_io_mem){.in = up_data,
                               .in_len = up_len,
                               .read_chunk = set.upstream_chunk,
                               .eof = set.upstream_eof,
                               .stutter = set.stutter};
    polis_buf_init(&m->out, 1u << 24);
    polis_io_memory(io, m);
    return 0;
}

static const char config_yaml[] =
    "listen: \"127.0.0.1:1\"\n"
    "admin: off\n"
    "limits: {max_header_bytes: 8KiB, max_body: 1MiB}\n"
    "clusters:\n"
    "  - name: api\n"
    "    keepalive: 4\n"
    "    instances: [\"127.0.0.1:2\", \"127.0.0.1:3\"]\n"
    "routes:\n"
    "  - match: {prefix: \"/api/\"}\n"
    "    cluster: api\n"
    "    strip_prefix: true\n"
    "    request_headers: {add: {X-Gw: polis}, remove: [Cookie]}\n"
    "    response_headers: {add: {X-Served: polis}, remove: [Server]}\n"
    "  - match: {path: \"/users/{id}\", methods: [GET, HEAD]}\n"
    "    cluster: api\n"
    "  - match: {prefix: \"/\"}\n"
    "    cluster: api\n";

static struct polis_gateway gw;

static struct gw_snapshot *snapshot(void)
{
    static struct gw_snapshot *s;
    if (s == NULL) {
        struct polis_config *cfg;
        struct polis_config_errors errs = {0};
        gw.snap_workers = 1;
        if (polis__gw_metrics_init(&gw.metrics, &gw) < 0 || polis__upstream_init(&gw) < 0 ||
            polis__config_load_string(config_yaml, sizeof(config_yaml) - 1, "fuzz", &cfg, &errs) <
                0 ||
            (gw.cref = polis__cfgref_new(cfg)) == NULL ||
            polis__snapshot_new(&gw, gw.cref, 1, &s) < 0)
            abort();
    }
    return s;
}

/* Every request the gateway sent upstream must parse; only the last may be incomplete. */
static void check_requests(const char *p, size_t len)
{
    struct polis_h1_header hdrs[256];
    static const struct polis_h1_limits lim = {65536, 1u << 20, 256};
    while (len > 0) {
        struct polis_h1_msg m = {.headers = hdrs};
        size_t scan = 0, head;
        int rc = polis_h1_parse_request(p, len, &scan, &m, 256, &lim, &head);
        if (rc == POLIS_EAGAIN)
            return;
        if (rc < 0) {
            fprintf(stderr, "gateway sent an invalid request upstream (%s):\n%.*s\n",
                    polis_strerror(rc), (int)(len < 2000 ? len : 2000), p);
            abort();
        }
        p += head;
        len -= head;
        if (m.upgrade) /* after a 101 the bytes are the tunnel's, not HTTP */
            return;
        if (m.body == POLIS_BODY_LENGTH) {
            if (m.content_length > len)
                return;
            p += m.content_length;
            len -= m.content_length;
        } else if (m.body == POLIS_BODY_CHUNKED) {
            struct polis_h1_chunked ch;
            polis_h1_chunked_init(&ch, 0);
            size_t used = 0;
            rc = polis_h1_chunked_feed(&ch, p, len, &used, NULL, NULL);
            if (rc < 0) {
                fprintf(stderr, "gateway sent an invalid chunked body upstream\n");
                abort();
            }
            if (rc == 0)
                return;
            p += used;
            len -= used;
        }
    }
}

/* The client must first see a valid response head (or nothing, or the start of one). */
static void check_response(const char *p, size_t len)
{
    struct polis_h1_header hdrs[256];
    static const struct polis_h1_limits lim = {65536, 1u << 20, 256};
    struct polis_h1_msg m = {.headers = hdrs};
    size_t scan = 0, head;
    if (len == 0)
        return;
    int rc = polis_h1_parse_response(p, len, &scan, &m, 256, &lim, false, &head);
    if (rc < 0 && rc != POLIS_EAGAIN) {
        fprintf(stderr, "gateway sent an invalid response head (%s):\n%.*s\n", polis_strerror(rc),
                (int)(len < 2000 ? len : 2000), p);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6)
        return 0;
    polis_log_set_level(POLIS_LOG_ERROR);
    set = (struct settings){.client_eof = data[0] & 1,
                            .upstream_eof = data[0] & 2,
                            .stutter = data[0] & 4,
                            .client_chunk = data[1],
                            .upstream_chunk = data[2],
                            .write_chunk = data[3]};
    size_t client_len = ((size_t)data[4] << 8 | data[5]);
    data += 6;
    size -= 6;
    if (client_len > size)
        client_len = size;
    up_data = (const char *)data + client_len;
    up_len = size - client_len;
    num_ups = 0;

    struct gw_snapshot *s = snapshot();
    atomic_store(&gw.alog_fd, -1);
    atomic_store(&gw.snap, s);
    static struct polis_metrics_shard *shard; /* one for every run: shards live on */
    struct gw_worker wk;
    memset(&wk, 0, sizeof(wk));
    wk.shard = shard;
    if (polis__worker_setup(&gw, &wk, 0, s) < 0)
        abort();
    shard = wk.shard;
    wk.connect_io = connect_io;

    struct polis_io_mem cm = {.in = (const char *)data,
                              .in_len = client_len,
                              .read_chunk = set.client_chunk,
                              .write_chunk = set.write_chunk,
                              .eof = set.client_eof,
                              .stutter = set.stutter};
    polis_buf_init(&cm.out, 1u << 24);
    struct polis_io io;
    polis_io_memory(&io, &cm);
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(0x7f000001);
    polis__proxy_accept_io(&wk, &io, &ss);

    /* Run until nothing moves any more (what a peer that stopped talking looks like). */
    for (int round = 0; round < 4096; round++) {
        size_t before = cm.in_pos + cm.out.end;
        for (int i = 0; i < num_ups; i++)
            before += ups[i].in_pos + ups[i].out.end;
        int ups_before = num_ups;
        if (!polis__proxy_poke(&wk))
            break;
        size_t after = cm.in_pos + cm.out.end;
        for (int i = 0; i < num_ups; i++)
            after += ups[i].in_pos + ups[i].out.end;
        if (after == before && num_ups == ups_before && round > 2)
            break;
    }

    for (int i = 0; i < num_ups; i++)
        check_requests(polis_buf_head(&ups[i].out), polis_buf_len(&ups[i].out));
    check_response(polis_buf_head(&cm.out), polis_buf_len(&cm.out));

    polis__worker_teardown(&wk);
    for (int i = 0; i < num_ups; i++)
        polis_buf_free(&ups[i].out);
    polis_buf_free(&cm.out);
    return 0;
}
