/* Unit tests of lib/observe/trace.c: traceparent, ids, sampling, spans, rings and the exporter.
 * With POLIS_TRACE_ENDPOINT set it is instead the driver of tests/e2e/test_trace_export.py. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <polis/trace.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Internal (lib/observe/trace.c): stop, and read the counts once the exporter has finished. */
void polis__tracer_stop_stats(struct polis_tracer *t, struct polis_tracer_stats *final);

static struct polis_str S(const char *s) {
    return (struct polis_str){s, strlen(s)};
}

static uint64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A listening socket on 127.0.0.1 (port in *port). */
static int listen_local(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* A port on 127.0.0.1 where nothing listens. */
static int closed_port(void)
{
    int port;
    close(listen_local(&port));
    return port;
}

static struct polis_tracer *start_tracer(const char *endpoint, double ratio, size_t queue,
                                         size_t max_batch, uint64_t batch_ms, uint64_t timeout_ms)
{
    struct polis_tracer_opts o = {.endpoint = endpoint,
                                  .service_name = "unit-test",
                                  .sample_ratio = ratio,
                                  .queue_spans = queue,
                                  .max_batch = max_batch,
                                  .batch_ms = batch_ms,
                                  .timeout_ms = timeout_ms};
    struct polis_tracer *t = NULL;
    int rc = polis_tracer_start(&o, &t);
    if (rc != 0)
        fail_msg("polis_tracer_start(%s): %d", endpoint, rc);
    return t;
}

static struct polis_tracer *start_closed(double ratio)
{
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/v1/traces", closed_port());
    return start_tracer(ep, ratio, 0, 0, 0, 300);
}

/* ---- traceparent -------------------------------------------------------------------------- */

#define TP_OK "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static void traceparent_roundtrip(void **state)
{
    struct polis_trace_ctx c;
    assert_int_equal(polis_traceparent_parse(S(TP_OK), &c), 0);
    static const uint8_t tid[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                    0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
    static const uint8_t sid[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
    assert_memory_equal(c.trace_id, tid, 16);
    assert_memory_equal(c.span_id, sid, 8);
    assert_int_equal(c.flags, 1);
    char out[POLIS_TRACEPARENT_LEN + 1];
    memset(out, 'x', sizeof out);
    polis_traceparent_format(&c, out);
    assert_string_equal(out, TP_OK);

    /* Random contexts survive format -> parse. */
    for (int i = 0; i < 1000; i++) {
        struct polis_trace_ctx a, b;
        polis_trace_random_id(a.trace_id, 16);
        polis_trace_random_id(a.span_id, 8);
        a.flags = (uint8_t)i;
        polis_traceparent_format(&a, out);
        assert_int_equal(strlen(out), POLIS_TRACEPARENT_LEN);
        for (int k = 0; k < POLIS_TRACEPARENT_LEN; k++)
            assert_true(out[k] == '-' || (out[k] >= '0' && out[k] <= '9') ||
                        (out[k] >= 'a' && out[k] <= 'f'));
        assert_int_equal(polis_traceparent_parse(S(out), &b), 0);
        assert_memory_equal(&a.trace_id, &b.trace_id, 16);
        assert_memory_equal(&a.span_id, &b.span_id, 8);
        assert_int_equal(a.flags, b.flags);
    }

    /* Flags other than sampled are kept as sent; unsampled parses. */
    assert_int_equal(
        polis_traceparent_parse(S("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), &c),
        0);
    assert_int_equal(c.flags, 0);
    assert_int_equal(
        polis_traceparent_parse(S("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff"), &c),
        0);
    assert_int_equal(c.flags, 0xff);

    /* Later versions: the first four fields, exactly 55 bytes or more after a '-'. */
    assert_int_equal(
        polis_traceparent_parse(S("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), &c),
        0);
    assert_int_equal(
        polis_traceparent_parse(
            S("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds"), &c),
        0);
    assert_memory_equal(c.trace_id, tid, 16);
    assert_int_equal(c.flags, 9);
    /* A NULL out only validates. */
    assert_int_equal(polis_traceparent_parse(S(TP_OK), NULL), 0);
}

static void traceparent_invalid(void **state)
{
    static const char *const bad[] = {
        "",
        "00",
        /* wrong lengths */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b-01",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        /* uppercase hex anywhere */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
        "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        /* all-zero ids */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        /* version ff, non-hex version */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        /* separators */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
        "00 4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 01",
        /* non-hex digits */
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba9z2b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        "00-4bf92f3577b34da6a3ce929d0e0e 736-00f067aa0ba902b7-01",
        "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        /* a later version: too short, or more without a '-' */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "01-00000000000000000000000000000000-00f067aa0ba902b7-01",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct polis_trace_ctx c;
        memset(&c, 0xaa, sizeof c);
        if (polis_traceparent_parse(S(bad[i]), &c) != POLIS_EINVAL)
            fail_msg("accepted invalid traceparent '%s'", bad[i]);
    }
    /* An embedded NUL is not a terminator. */
    char nul[] = TP_OK;
    nul[10] = '\0';
    assert_int_equal(polis_traceparent_parse((struct polis_str){nul, POLIS_TRACEPARENT_LEN}, NULL),
                     POLIS_EINVAL);
    assert_int_equal(polis_traceparent_parse((struct polis_str){NULL, 0}, NULL), POLIS_EINVAL);
}

/* ---- ids ---------------------------------------------------------------------------------- */

static int cmp16(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}
static int cmp8(const void *a, const void *b)
{
    return memcmp(a, b, 8);
}

static void random_ids(void **state)
{
    enum { N = 100000 };
    uint8_t(*t)[16] = malloc(N * 16);
    uint8_t(*s)[8] = malloc(N * 8);
    static const uint8_t zero[16];
    for (int i = 0; i < N; i++) {
        polis_trace_random_id(t[i], 16);
        polis_trace_random_id(s[i], 8);
        assert_memory_not_equal(t[i], zero, 16);
        assert_memory_not_equal(s[i], zero, 8);
    }
    qsort(t, N, 16, cmp16);
    qsort(s, N, 8, cmp8);
    for (int i = 1; i < N; i++) {
        assert_memory_not_equal(t[i - 1], t[i], 16);
        assert_memory_not_equal(s[i - 1], s[i], 8);
    }
    /* Every byte value appears in every position (the generator is not stuck on some bits). */
    unsigned seen[16][256] = {{0}};
    for (int i = 0; i < N; i++)
        for (int k = 0; k < 16; k++)
            seen[k][t[i][k]]++;
    for (int k = 0; k < 16; k++)
        for (int v = 0; v < 256; v++)
            assert_true(seen[k][v] > 200); /* ~390 expected */
    free(t);
    free(s);
    /* Short ids are never zero either (1 byte: a zero draw is 1 in 256 and must be redrawn). */
    for (int i = 0; i < 20000; i++) {
        uint8_t b[3] = {0, 0, 0};
        polis_trace_random_id(b, 1);
        assert_int_not_equal(b[0], 0);
        polis_trace_random_id(b, 3);
        assert_true(b[0] | b[1] | b[2]);
    }
}

static void *ids_in_thread(void *arg)
{
    polis_trace_random_id(arg, 16);
    return NULL;
}

/* Threads seed their own generators: their first ids differ. */
static void random_ids_per_thread(void **state)
{
    uint8_t ids[8][16];
    pthread_t th[8];
    for (int i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, ids_in_thread, ids[i]);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 8; i++)
        for (int j = i + 1; j < 8; j++)
            assert_memory_not_equal(ids[i], ids[j], 16);
}

/* ---- sampling ----------------------------------------------------------------------------- */

static void sampling_ratio(void **state)
{
    struct polis_tracer *t = start_closed(0.1);
    enum { N = 100000 };
    unsigned yes = 0;
    for (int i = 0; i < N; i++) {
        uint8_t id[16];
        polis_trace_random_id(id, 16);
        bool a = polis_tracer_sampled(t, NULL, id);
        for (int k = 0; k < 3; k++)
            assert_int_equal(polis_tracer_sampled(t, NULL, id), a); /* deterministic */
        yes += a;
    }
    if (yes < 9000 || yes > 11000)
        fail_msg("ratio 0.1 sampled %u of %d", yes, N);

    /* The decision reads the last 8 bytes as a big-endian number: below 0.1 * 2^64 or not. */
    uint8_t id[16];
    memset(id, 0xff, 8); /* the first 8 bytes do not count */
    memset(id + 8, 0, 8);
    assert_true(polis_tracer_sampled(t, NULL, id));
    /* 0.1 as a double times 2^64 is 0x1999999999999a00. */
    static const uint8_t below[8] = {0x19, 0x99, 0x99, 0x99, 0x99, 0x99, 0x99, 0xff};
    static const uint8_t at[8] = {0x19, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a, 0x00};
    memcpy(id + 8, below, 8);
    assert_true(polis_tracer_sampled(t, NULL, id));
    memcpy(id + 8, at, 8);
    assert_false(polis_tracer_sampled(t, NULL, id));
    memset(id + 8, 0xff, 8);
    assert_false(polis_tracer_sampled(t, NULL, id));
    memset(id, 0, 8);
    memset(id + 8, 0x01, 1); /* 0x0100.. : the most significant byte comes first */
    memset(id + 9, 0xff, 7);
    assert_true(polis_tracer_sampled(t, NULL, id));
    polis_tracer_stop(t);

    /* 0: never, 1: always. */
    struct polis_tracer *never = start_closed(0.0), *always = start_closed(1.0);
    unsigned n0 = 0, n1 = 0;
    for (int i = 0; i < 10000; i++) {
        polis_trace_random_id(id, 16);
        n0 += polis_tracer_sampled(never, NULL, id);
        n1 += polis_tracer_sampled(always, NULL, id);
    }
    memset(id, 0xff, 16);
    n1 += polis_tracer_sampled(always, NULL, id) ? 0 : 1000;
    memset(id + 8, 0, 8);
    n0 += polis_tracer_sampled(never, NULL, id);
    assert_int_equal(n0, 0);
    assert_int_equal(n1, 10000);
    polis_tracer_stop(never);
    polis_tracer_stop(always);
}

static void sampling_parent_based(void **state)
{
    struct polis_tracer *never = start_closed(0.0), *always = start_closed(1.0);
    struct polis_trace_ctx p;
    assert_int_equal(polis_traceparent_parse(S(TP_OK), &p), 0);
    uint8_t id[16];
    memset(id, 0, 16); /* would be sampled by any ratio > 0 */
    assert_true(polis_tracer_sampled(never, &p, p.trace_id));
    assert_true(polis_tracer_sampled(never, &p, id));
    p.flags = 0;
    assert_false(polis_tracer_sampled(always, &p, p.trace_id));
    assert_false(polis_tracer_sampled(always, &p, id));
    p.flags = 0xfe; /* only bit 0 is "sampled" */
    assert_false(polis_tracer_sampled(always, &p, id));
    p.flags = 0x03;
    assert_true(polis_tracer_sampled(never, &p, id));
    polis_tracer_stop(never);
    polis_tracer_stop(always);
}

static void tracer_start_checks(void **state)
{
    static const char *const bad[] = {
        "https://127.0.0.1:4318/v1/traces",
        "127.0.0.1:4318/v1/traces",
        "http://",
        "http:///v1/traces",
        "http://127.0.0.1:0/v1/traces",
        "http://127.0.0.1:65536/v1/traces",
        "http://127.0.0.1:/v1/traces",
        "http://127.0.0.1:12a/v1/traces",
        "http://127.0.0.1:4318:1/v1/traces",
        "http://[::1/v1/traces",
        "http://[::1]x/v1/traces",
        "http://user@127.0.0.1:4318/v1/traces",
        "http://127.0.0.1:4318/v1/tr aces",
        "http://127.0.0.1:4318/v1/traces\r\nX: y",
        "http://no-such-host.invalid:4318/v1/traces",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct polis_tracer_opts o = {.endpoint = bad[i], .sample_ratio = 1};
        struct polis_tracer *t = NULL;
        int rc = polis_tracer_start(&o, &t);
        if (rc != POLIS_EINVAL)
            fail_msg("endpoint '%s': rc %d", bad[i], rc);
        assert_null(t);
    }
    static const double ratios[] = {-0.01, 1.01, NAN, INFINITY};
    for (size_t i = 0; i < 4; i++) {
        struct polis_tracer_opts o = {.endpoint = "http://127.0.0.1:4318/v1/traces",
                                      .sample_ratio = ratios[i]};
        struct polis_tracer *t = NULL;
        assert_int_equal(polis_tracer_start(&o, &t), POLIS_EINVAL);
    }
    struct polis_tracer *t = NULL;
    assert_int_equal(polis_tracer_start(NULL, &t), POLIS_EINVAL);
    struct polis_tracer_opts none = {0};
    assert_int_equal(polis_tracer_start(&none, &t), POLIS_EINVAL);

    static const char *const good[] = {
        "http://127.0.0.1:4318/v1/traces",
        "HTTP://127.0.0.1:4318/v1/traces",
        "http://[::1]:4318/v1/traces",
        "http://localhost:4318/v1/traces",
        "http://127.0.0.1",
        "http://127.0.0.1:9/",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct polis_tracer_opts o = {.endpoint = good[i], .sample_ratio = 0.5};
        int rc = polis_tracer_start(&o, &t);
        if (rc != 0)
            fail_msg("endpoint '%s': rc %d", good[i], rc);
        polis_tracer_stop(t);
    }
    polis_tracer_stop(NULL);

    /* Huge periods do not overflow into a busy loop or a stop that never returns. */
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/v1/traces", closed_port());
    t = start_tracer(ep, 1.0, 4, 1, UINT64_MAX, UINT64_MAX);
    struct polis_span s;
    polis_span_start(&s, NULL, POLIS_SPAN_SERVER, S("x"));
    polis_tracer_submit(t, &s);
    uint64_t t0 = mono_ms();
    struct polis_tracer_stats st;
    polis__tracer_stop_stats(t, &st);
    assert_true(mono_ms() - t0 < 1000);
    assert_int_equal(st.submitted, 1);
    assert_int_equal(st.dropped, 1);
}

/* ---- spans -------------------------------------------------------------------------------- */

static void span_basics(void **state)
{
    struct polis_span root, child;
    uint64_t before = polis_now_ns();
    polis_span_start(&root, NULL, POLIS_SPAN_SERVER, S("GET /users"));
    uint64_t after = polis_now_ns();
    assert_false(root.has_parent);
    assert_int_equal(root.kind, POLIS_SPAN_SERVER);
    assert_int_equal(root.status, POLIS_SPAN_UNSET);
    assert_int_equal(root.name_len, 10);
    assert_int_equal(root.text_used, 10);
    assert_memory_equal(root.text, "GET /users", 10);
    assert_int_equal(root.num_attrs, 0);
    assert_true(root.start_ns >= before && root.start_ns <= after);
    /* Unix time: after 2020 and before 2100. */
    assert_true(root.start_ns > 1577836800ull * 1000000000ull);
    assert_true(root.start_ns < 4102444800ull * 1000000000ull);
    static const uint8_t zero[16];
    assert_memory_not_equal(root.trace_id, zero, 16);
    assert_memory_not_equal(root.span_id, zero, 8);

    struct polis_trace_ctx ctx;
    polis_span_context(&root, true, &ctx);
    assert_memory_equal(ctx.trace_id, root.trace_id, 16);
    assert_memory_equal(ctx.span_id, root.span_id, 8);
    assert_int_equal(ctx.flags, 1);
    polis_span_context(&root, false, &ctx);
    assert_int_equal(ctx.flags, 0);

    polis_span_start(&child, &ctx, POLIS_SPAN_CLIENT, S("upstream"));
    assert_true(child.has_parent);
    assert_memory_equal(child.trace_id, root.trace_id, 16);
    assert_memory_equal(child.parent_id, root.span_id, 8);
    assert_memory_not_equal(child.span_id, root.span_id, 8);
    assert_int_equal(child.kind, POLIS_SPAN_CLIENT);

    polis_span_end(&child, POLIS_SPAN_ERROR);
    assert_int_equal(child.status, POLIS_SPAN_ERROR);
    assert_true(child.end_ns >= child.start_ns);
    assert_true(child.end_ns <= polis_now_ns());

    /* A second root starts a new trace. */
    struct polis_span other;
    polis_span_start(&other, NULL, POLIS_SPAN_INTERNAL, S(""));
    assert_memory_not_equal(other.trace_id, root.trace_id, 16);
    assert_int_equal(other.name_len, 0);
}

static void span_limits(void **state)
{
    struct polis_span s;
    polis_span_start(&s, NULL, POLIS_SPAN_SERVER, S("op"));
    polis_span_attr_str(&s, "http.request.method", S("GET"));
    polis_span_attr_int(&s, "http.response.status_code", 200);
    assert_int_equal(s.num_attrs, 2);
    assert_string_equal(s.attrs[0].key, "http.request.method");
    assert_false(s.attrs[0].is_int);
    assert_int_equal(s.attrs[0].off, 2);
    assert_int_equal(s.attrs[0].len, 3);
    assert_memory_equal(s.text + s.attrs[0].off, "GET", 3);
    assert_true(s.attrs[1].is_int);
    assert_int_equal(s.attrs[1].i, 200);
    assert_int_equal(s.text_used, 5);
    for (int i = 2; i < POLIS_SPAN_MAX_ATTRS; i++)
        polis_span_attr_int(&s, "n", i);
    assert_int_equal(s.num_attrs, POLIS_SPAN_MAX_ATTRS);
    polis_span_attr_int(&s, "extra", 1);
    polis_span_attr_str(&s, "extra", S("x"));
    assert_int_equal(s.num_attrs, POLIS_SPAN_MAX_ATTRS);
    assert_int_equal(s.text_used, 5);
    assert_int_equal(s.attrs[POLIS_SPAN_MAX_ATTRS - 1].i, POLIS_SPAN_MAX_ATTRS - 1);

    /* A name longer than the text is cut to it. */
    char big[2000];
    memset(big, 'n', sizeof big);
    polis_span_start(&s, NULL, POLIS_SPAN_SERVER, (struct polis_str){big, sizeof big});
    assert_int_equal(s.name_len, POLIS_SPAN_TEXT);
    assert_int_equal(s.text_used, POLIS_SPAN_TEXT);
    polis_span_attr_str(&s, "k", S("v")); /* no room: ignored */
    assert_int_equal(s.num_attrs, 0);
    polis_span_attr_int(&s, "k", 7); /* ints need no text */
    assert_int_equal(s.num_attrs, 1);

    /* A string value is cut to the room left, then the next ones are ignored. */
    polis_span_start(&s, NULL, POLIS_SPAN_SERVER, (struct polis_str){big, 700});
    memset(big, 'v', 100);
    polis_span_attr_str(&s, "a", (struct polis_str){big, 50});
    assert_int_equal(s.text_used, 750);
    polis_span_attr_str(&s, "b", (struct polis_str){big, 100});
    assert_int_equal(s.num_attrs, 2);
    assert_int_equal(s.attrs[1].off, 750);
    assert_int_equal(s.attrs[1].len, POLIS_SPAN_TEXT - 750);
    assert_int_equal(s.text_used, POLIS_SPAN_TEXT);
    polis_span_attr_str(&s, "c", S("x"));
    assert_int_equal(s.num_attrs, 2);
    polis_span_attr_str(&s, "empty", S("")); /* an empty value takes no text */
    assert_int_equal(s.num_attrs, 3);
    assert_int_equal(s.attrs[2].len, 0);

    /* The cut does not split a UTF-8 sequence. */
    memset(big, 'a', POLIS_SPAN_TEXT - 1);
    memcpy(big + POLIS_SPAN_TEXT - 1, "\xc3\xa9zz", 4); /* an e-acute across the boundary */
    polis_span_start(&s, NULL, POLIS_SPAN_SERVER, (struct polis_str){big, POLIS_SPAN_TEXT + 3});
    assert_int_equal(s.name_len, POLIS_SPAN_TEXT - 1);
    memcpy(big + POLIS_SPAN_TEXT - 2, "\xe2\x82\xac", 3); /* a euro sign */
    polis_span_start(&s, NULL, POLIS_SPAN_SERVER, (struct polis_str){big, POLIS_SPAN_TEXT + 1});
    assert_int_equal(s.name_len, POLIS_SPAN_TEXT - 2);
    /* Bytes that are not UTF-8 are cut where the room ends. */
    memset(big, 0x80, POLIS_SPAN_TEXT + 10);
    polis_span_start(&s, NULL, POLIS_SPAN_SERVER, (struct polis_str){big, POLIS_SPAN_TEXT + 10});
    assert_int_equal(s.name_len, POLIS_SPAN_TEXT);
}

/* ---- the ring ----------------------------------------------------------------------------- */

static void make_span(struct polis_span *s, const char *name, int i)
{
    polis_span_start(s, NULL, POLIS_SPAN_SERVER, S(name));
    polis_span_attr_str(s, "http.request.method", S("GET"));
    polis_span_attr_int(s, "seq", i);
    polis_span_end(s, POLIS_SPAN_OK);
}

/* Read one HTTP request (head and Content-Length body) from fd into buf; returns its size. */
static size_t read_request(int fd, char *buf, size_t cap, size_t *head_len)
{
    size_t n = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) != 1)
            fail_msg("no request within 5 s");
        ssize_t k = read(fd, buf + n, cap - 1 - n);
        if (k <= 0)
            return 0;
        n += (size_t)k;
        buf[n] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end == NULL)
            continue;
        *head_len = (size_t)(end + 4 - buf);
        const char *cl = strcasestr(buf, "\r\nContent-Length: ");
        assert_non_null(cl);
        size_t body = strtoul(cl + 18, NULL, 10);
        if (n >= *head_len + body)
            return *head_len + body;
    }
}

/* One thread fills its ring while the exporter is stuck on a collector that never answers:
 * exactly queue_spans are kept and the rest are counted as dropped. */
static void ring_exact_drops(void **state)
{
    int port, ls = listen_local(&port);
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/v1/traces", port);
    struct polis_tracer *t = start_tracer(ep, 1.0, 64, 512, 20, 10000);

    struct polis_span s;
    make_span(&s, "first", 0);
    polis_tracer_submit(t, &s);
    struct pollfd p = {.fd = ls, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 5000), 1);
    int c = accept(ls, NULL, NULL);
    assert_true(c >= 0);
    static char req[65536];
    size_t head = 0, n = read_request(c, req, sizeof req, &head);
    assert_true(n > head);
    assert_memory_equal(req, "POST /v1/traces HTTP/1.1\r\n", 26);
    assert_non_null(strcasestr(req, "\r\nContent-Type: application/json\r\n"));
    char host[64];
    snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%d\r\n", port);
    assert_non_null(strstr(req, host));
    assert_non_null(strstr(req + head, "\"name\":\"first\""));

    /* The exporter now waits for an answer (10 s): nothing drains the ring. */
    for (int i = 0; i < 100; i++) {
        make_span(&s, "fill", i);
        polis_tracer_submit(t, &s);
    }
    struct polis_tracer_stats st;
    polis_tracer_stats(t, &st);
    assert_int_equal(st.submitted, 101);
    assert_int_equal(st.dropped, 100 - 64);
    assert_int_equal(st.exported, 0);
    assert_int_equal(st.export_failures, 0);

    /* The collector goes away: the batch in flight fails and stop drops the queued spans. */
    close(c);
    close(ls);
    uint64_t t0 = mono_ms();
    polis__tracer_stop_stats(t, &st);
    assert_true(mono_ms() - t0 < 10000 + 500);
    assert_int_equal(st.submitted, 101);
    assert_int_equal(st.exported, 0);
    assert_int_equal(st.dropped, 101);
    assert_true(st.export_failures >= 1);
}

struct flood {
    struct polis_tracer *t;
    int id, count;
};

static void *flood_thread(void *arg)
{
    struct flood *f = arg;
    struct polis_span s;
    for (int i = 0; i < f->count; i++) {
        make_span(&s, "flood", i);
        polis_span_attr_int(&s, "thread", f->id);
        polis_tracer_submit(f->t, &s);
    }
    return NULL;
}

/* Four threads submit while the exporter fails against a closed port: every span is either
 * exported or dropped, and stop returns within the timeout. */
static void concurrent_closed_port(void **state)
{
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/v1/traces", closed_port());
    struct polis_tracer *t = start_tracer(ep, 1.0, 256, 64, 5, 300);
    struct flood f[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        f[i] = (struct flood){t, i, 20000};
        pthread_create(&th[i], NULL, flood_thread, &f[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    struct polis_tracer_stats st;
    polis_tracer_stats(t, &st);
    assert_int_equal(st.submitted, 80000);
    uint64_t t0 = mono_ms();
    polis__tracer_stop_stats(t, &st);
    uint64_t took = mono_ms() - t0;
    if (took > 300 + 500)
        fail_msg("stop took %llu ms", (unsigned long long)took);
    assert_int_equal(st.submitted, 80000);
    assert_int_equal(st.exported, 0);
    assert_int_equal(st.submitted, st.exported + st.dropped);
    assert_true(st.export_failures >= 1);
}

/* ---- export to a collector inside the test ------------------------------------------------ */

struct mini_collector {
    int ls;
    atomic_bool done;
    int connections, requests, status;
    json_t *spans;
    char service[64];
    char error[256];
};

static void mc_fail(struct mini_collector *m, const char *what)
{
    if (m->error[0] == '\0')
        snprintf(m->error, sizeof m->error, "%s", what);
}

static void mc_request(struct mini_collector *m, const char *body, size_t len)
{
    json_error_t err;
    json_t *root = json_loadb(body, len, 0, &err);
    if (root == NULL) {
        mc_fail(m, err.text);
        return;
    }
    json_t *rs = json_array_get(json_object_get(root, "resourceSpans"), 0);
    json_t *attr =
        json_array_get(json_object_get(json_object_get(rs, "resource"), "attributes"), 0);
    const char *svc =
        json_string_value(json_object_get(json_object_get(attr, "value"), "stringValue"));
    if (svc == NULL || strcmp(json_string_value(json_object_get(attr, "key")), "service.name"))
        mc_fail(m, "no service.name");
    else
        snprintf(m->service, sizeof m->service, "%s", svc);
    json_t *ss = json_array_get(json_object_get(rs, "scopeSpans"), 0);
    json_t *scope = json_object_get(ss, "scope");
    if (!json_is_string(json_object_get(scope, "name")) ||
        strcmp(json_string_value(json_object_get(scope, "name")), "polis") != 0)
        mc_fail(m, "scope name");
    json_t *spans = json_object_get(ss, "spans");
    if (!json_is_array(spans) || json_array_size(spans) == 0)
        mc_fail(m, "no spans");
    json_array_extend(m->spans, spans);
    json_decref(root);
}

static void *mini_collector_main(void *arg)
{
    struct mini_collector *m = arg;
    static char buf[1 << 20];
    while (!atomic_load(&m->done)) {
        struct pollfd p = {.fd = m->ls, .events = POLLIN};
        if (poll(&p, 1, 50) != 1)
            continue;
        int c = accept(m->ls, NULL, NULL);
        if (c < 0)
            continue;
        m->connections++;
        size_t head;
        size_t n;
        while ((n = read_request(c, buf, sizeof buf, &head)) > 0) {
            m->requests++;
            if (memcmp(buf, "POST /v1/traces HTTP/1.1\r\n", 26) != 0)
                mc_fail(m, "request line");
            mc_request(m, buf + head, n - head);
            char answer[128];
            int k = snprintf(answer, sizeof answer,
                             "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                             "Content-Length: 2\r\n\r\n{}",
                             m->status);
            if (write(c, answer, (size_t)k) != k)
                mc_fail(m, "write");
        }
        close(c);
    }
    return NULL;
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (s == NULL)
        fail_msg("no string %s", key);
    return s;
}

static json_t *attr_value(json_t *span, const char *key)
{
    json_t *a;
    size_t i;
    json_array_foreach(json_object_get(span, "attributes"), i, a)
    {
        if (strcmp(jstr(a, "key"), key) == 0)
            return json_object_get(a, "value");
    }
    return NULL;
}

static void hex(char *out, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* Spans go out as OTLP JSON over one kept-alive connection, with every field in place. */
static void export_to_collector(void **state)
{
    enum { N = 250 };
    struct mini_collector m = {.status = 200, .spans = json_array()};
    int port;
    m.ls = listen_local(&port);
    pthread_t th;
    pthread_create(&th, NULL, mini_collector_main, &m);
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/v1/traces", port);
    struct polis_tracer *t = start_tracer(ep, 1.0, 1024, 100, 10, 2000);

    static struct polis_span sent[N];
    const char weird[] = "q\"b\\s\n\t\x01 \xc3\xa9 \xff\xc0\xaf end\x7f";
    const char weird_out[] =
        "q\"b\\s\n\t\x01 \xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd end\x7f";
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "op-%d", i);
        struct polis_trace_ctx parent;
        if (i % 2 == 1)
            polis_span_context(&sent[i - 1], true, &parent);
        polis_span_start(&sent[i], i % 2 ? &parent : NULL,
                         i % 2 ? POLIS_SPAN_CLIENT : POLIS_SPAN_SERVER, S(name));
        polis_span_attr_str(&sent[i], "http.request.method", S("GET"));
        polis_span_attr_int(&sent[i], "http.response.status_code", 200 + i);
        polis_span_attr_int(&sent[i], "neg", -1000000000000ll * i);
        polis_span_attr_str(&sent[i], "weird", S(weird));
        polis_span_end(&sent[i], (enum polis_span_status)(i % 3));
        polis_tracer_submit(t, &sent[i]);
    }
    struct polis_tracer_stats st;
    polis__tracer_stop_stats(t, &st);
    atomic_store(&m.done, true);
    pthread_join(th, NULL);
    close(m.ls);

    if (m.error[0])
        fail_msg("collector: %s", m.error);
    assert_int_equal(st.submitted, N);
    assert_int_equal(st.exported, N);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.export_failures, 0);
    assert_int_equal(m.connections, 1); /* kept alive */
    assert_true(m.requests >= 3);       /* at most 100 spans per request */
    assert_string_equal(m.service, "unit-test");
    assert_int_equal(json_array_size(m.spans), N);

    bool seen[N] = {false};
    json_t *js;
    size_t k;
    json_array_foreach(m.spans, k, js)
    {
        int i = (int)strtol(jstr(js, "name") + 3, NULL, 10);
        assert_true(i >= 0 && i < N && !seen[i]);
        seen[i] = true;
        struct polis_span *s = &sent[i];
        char want[40];
        hex(want, s->trace_id, 16);
        assert_string_equal(jstr(js, "traceId"), want);
        hex(want, s->span_id, 8);
        assert_string_equal(jstr(js, "spanId"), want);
        if (i % 2) {
            hex(want, sent[i - 1].span_id, 8);
            assert_string_equal(jstr(js, "parentSpanId"), want);
        } else {
            assert_null(json_object_get(js, "parentSpanId"));
        }
        assert_int_equal(json_integer_value(json_object_get(js, "kind")), s->kind);
        snprintf(want, sizeof want, "%llu", (unsigned long long)s->start_ns);
        assert_string_equal(jstr(js, "startTimeUnixNano"), want);
        snprintf(want, sizeof want, "%llu", (unsigned long long)s->end_ns);
        assert_string_equal(jstr(js, "endTimeUnixNano"), want);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(js, "status"), "code")),
                         i % 3);
        assert_string_equal(jstr(attr_value(js, "http.request.method"), "stringValue"), "GET");
        snprintf(want, sizeof want, "%d", 200 + i);
        assert_string_equal(jstr(attr_value(js, "http.response.status_code"), "intValue"), want);
        snprintf(want, sizeof want, "%lld", -1000000000000ll * i);
        assert_string_equal(jstr(attr_value(js, "neg"), "intValue"), want);
        assert_string_equal(jstr(attr_value(js, "weird"), "stringValue"), weird_out);
    }
    json_decref(m.spans);
}

/* A collector that answers 503 makes each batch fail: counted, dropped, never retried. */
static void export_rejected(void **state)
{
    struct mini_collector m = {.status = 503, .spans = json_array()};
    int port;
    m.ls = listen_local(&port);
    pthread_t th;
    pthread_create(&th, NULL, mini_collector_main, &m);
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/v1/traces", port);
    struct polis_tracer *t = start_tracer(ep, 1.0, 1024, 10, 10, 2000);
    struct polis_span s;
    for (int i = 0; i < 30; i++) {
        make_span(&s, "rejected", i);
        polis_tracer_submit(t, &s);
    }
    struct polis_tracer_stats st;
    polis__tracer_stop_stats(t, &st);
    atomic_store(&m.done, true);
    pthread_join(th, NULL);
    close(m.ls);
    if (m.error[0])
        fail_msg("collector: %s", m.error);
    assert_int_equal(st.submitted, 30);
    assert_int_equal(st.exported, 0);
    assert_int_equal(st.dropped, 30);
    assert_true(st.export_failures >= 1);
    assert_int_equal(json_array_size(m.spans), 10 * (size_t)m.requests); /* no batch twice */
    json_decref(m.spans);
}

/* ---- the e2e driver (tests/e2e/test_trace_export.py) -------------------------------------- */

struct driver {
    struct polis_tracer *t;
    int id, count, round;
    bool flood;
    uint64_t ns;
};

static void *driver_thread(void *arg)
{
    struct driver *d = arg;
    struct polis_span root, child;
    uint64_t t0 = mono_ns();
    if (d->flood) {
        make_span(&root, "flood", 0);
        for (int i = 0; i < d->count; i++)
            polis_tracer_submit(d->t, &root);
        d->ns = mono_ns() - t0;
        return NULL;
    }
    /* count/2 pairs: a server root "root t<id> i<i>" and its client child "child t<id> i<i>". */
    for (int i = 0; i < d->count / 2; i++) {
        char name[64];
        int k = snprintf(name, sizeof name, "root t%d i%d", d->id, i);
        if (d->round > 0)
            snprintf(name + k, sizeof name - (size_t)k, " r%d", d->round);
        polis_span_start(&root, NULL, POLIS_SPAN_SERVER, S(name));
        polis_span_attr_str(&root, "http.request.method", S("GET"));
        polis_span_attr_int(&root, "http.response.status_code", 200 + i);
        polis_span_attr_int(&root, "polis.thread", d->id);
        polis_span_attr_str(&root, "polis.text", S("a\"b\\c\nd\x01\xff"));
        struct polis_trace_ctx ctx;
        polis_span_context(&root, true, &ctx);
        k = snprintf(name, sizeof name, "child t%d i%d", d->id, i);
        if (d->round > 0)
            snprintf(name + k, sizeof name - (size_t)k, " r%d", d->round);
        polis_span_start(&child, &ctx, POLIS_SPAN_CLIENT, S(name));
        polis_span_attr_int(&child, "polis.seq", -i);
        polis_span_end(&child, i % 10 == 0 ? POLIS_SPAN_ERROR : POLIS_SPAN_OK);
        polis_tracer_submit(d->t, &child);
        polis_span_end(&root, POLIS_SPAN_OK);
        polis_tracer_submit(d->t, &root);
    }
    d->ns = mono_ns() - t0;
    return NULL;
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    return v != NULL && *v ? strtoull(v, NULL, 10) : dflt;
}

/* POLIS_TRACE_MODE=spans (default): 4 threads x POLIS_TRACE_SPANS/4 spans (pairs named
 * "root t<thread> i<i>" and "child ..."), in POLIS_TRACE_ROUNDS rounds (names of round r > 0 end
 * in " r<r>") POLIS_TRACE_ROUND_MS apart.
 * POLIS_TRACE_MODE=flood: 4 threads submit POLIS_TRACE_SPANS/4 spans as fast as they can.
 * Prints one JSON line with the final stats and timings. */
static int run_driver(const char *endpoint)
{
    const char *mode = getenv("POLIS_TRACE_MODE");
    bool flood = mode != NULL && strcmp(mode, "flood") == 0;
    struct polis_tracer_opts o = {
        .endpoint = endpoint,
        .service_name = "trace-e2e",
        .sample_ratio = 1.0,
        .queue_spans = env_u64("POLIS_TRACE_QUEUE", 0),
        .max_batch = env_u64("POLIS_TRACE_MAX_BATCH", 0),
        .batch_ms = env_u64("POLIS_TRACE_BATCH_MS", 50),
        .timeout_ms = env_u64("POLIS_TRACE_TIMEOUT_MS", 2000),
    };
    struct polis_tracer *t = NULL;
    int rc = polis_tracer_start(&o, &t);
    if (rc != 0) {
        fprintf(stderr, "polis_tracer_start: %s\n", polis_strerror(rc));
        return 1;
    }
    int total = (int)env_u64("POLIS_TRACE_SPANS", flood ? 100000 : 1000);
    int rounds = flood ? 1 : (int)env_u64("POLIS_TRACE_ROUNDS", 1);
    uint64_t round_ms = env_u64("POLIS_TRACE_ROUND_MS", 300);
    struct driver d[4];
    pthread_t th[4];
    uint64_t max_ns = 0, submit_ns = 0;
    for (int r = 0; r < rounds; r++) {
        if (r > 0) {
            struct timespec ts = {(time_t)(round_ms / 1000), (long)(round_ms % 1000) * 1000000};
            nanosleep(&ts, NULL);
        }
        uint64_t t0 = mono_ns();
        for (int i = 0; i < 4; i++) {
            d[i] = (struct driver){t, i, total / 4, r, flood, 0};
            pthread_create(&th[i], NULL, driver_thread, &d[i]);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            if (d[i].ns > max_ns)
                max_ns = d[i].ns;
        }
        submit_ns += mono_ns() - t0;
    }
    struct polis_tracer_stats st;
    polis_tracer_stats(t, &st);
    uint64_t dropped_before_stop = st.dropped;
    uint64_t t0 = mono_ns();
    polis__tracer_stop_stats(t, &st);
    uint64_t stop_ns = mono_ns() - t0;
    printf("{\"submitted\":%llu,\"exported\":%llu,\"dropped\":%llu,\"export_failures\":%llu,"
           "\"dropped_before_stop\":%llu,\"submit_ms\":%.3f,\"thread_max_ms\":%.3f,"
           "\"stop_ms\":%.3f}\n",
           (unsigned long long)st.submitted, (unsigned long long)st.exported,
           (unsigned long long)st.dropped, (unsigned long long)st.export_failures,
           (unsigned long long)dropped_before_stop, submit_ns / 1e6, max_ns / 1e6, stop_ns / 1e6);
    fflush(stdout);
    return 0;
}

int main(void)
{
    const char *endpoint = getenv("POLIS_TRACE_ENDPOINT");
    if (endpoint != NULL && *endpoint)
        return run_driver(endpoint);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(traceparent_roundtrip),
        cmocka_unit_test(traceparent_invalid),
        cmocka_unit_test(random_ids),
        cmocka_unit_test(random_ids_per_thread),
        cmocka_unit_test(sampling_ratio),
        cmocka_unit_test(sampling_parent_based),
        cmocka_unit_test(tracer_start_checks),
        cmocka_unit_test(span_basics),
        cmocka_unit_test(span_limits),
        cmocka_unit_test(ring_exact_drops),
        cmocka_unit_test(concurrent_closed_port),
        cmocka_unit_test(export_to_collector),
        cmocka_unit_test(export_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
