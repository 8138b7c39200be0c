/* h1_common.h: what the request and response parser fuzzers check alike: the header views,
 * determinism, and that feeding a message in pieces ends as parsing it in one call. */
#ifndef POLIS_FUZZ_H1_COMMON_H
#define POLIS_FUZZ_H1_COMMON_H

#include <polis/http.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NHDR 40
#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

static const struct polis_h1_limits lim = {
    .max_request_line = 512,
    .max_head = 4096,
    .max_headers = 32,
};

struct result {
    int rc;
    bool head_request; /* responses: the request was HEAD */
    size_t head_len;
    struct polis_h1_msg m;
    struct polis_h1_header h[NHDR];
};

/* The target's parser and its message checks. */
static void parse(const char *buf, size_t len, size_t *scan, struct result *r);
static void check_msg(const char *buf, const struct result *r);
static void same_start_line(const char *b1, const struct polis_h1_msg *a, const char *b2,
                            const struct polis_h1_msg *b);

static inline bool in(const char *buf, size_t len, struct polis_str s)
{
    return s.p >= buf && s.len <= len && s.p + s.len <= buf + len;
}

/* Checks every parsed head passes: its end, its header views and the index of known ids. */
static inline void check_head(const char *buf, const struct result *r)
{
    const struct polis_h1_msg *m = &r->m;
    CHECK(r->head_len >= 4 && memcmp(buf + r->head_len - 4, "\r\n\r\n", 4) == 0);
    CHECK(r->head_len <= lim.max_head);
    CHECK(m->minor_version == 0 || m->minor_version == 1);
    CHECK(m->num_headers <= lim.max_headers);
    CHECK(m->hdr_index[POLIS_HDR_OTHER] == -1);
    for (int id = 1; id < POLIS_HDR__COUNT; id++) {
        int first = -1;
        for (size_t i = 0; i < m->num_headers; i++) {
            if (m->headers[i].id == id) {
                first = (int)i;
                break;
            }
        }
        CHECK(m->hdr_index[id] == first);
    }
    for (size_t i = 0; i < m->num_headers; i++) {
        const struct polis_h1_header *h = &m->headers[i];
        CHECK(in(buf, r->head_len, h->name) && h->name.len > 0);
        CHECK(in(buf, r->head_len, h->value));
        CHECK(h->id < POLIS_HDR__COUNT);
        if (h->value.len) {
            CHECK(h->value.p[0] != ' ' && h->value.p[0] != '\t');
            CHECK(h->value.p[h->value.len - 1] != ' ' && h->value.p[h->value.len - 1] != '\t');
        }
        for (size_t k = 0; k < h->value.len; k++)
            CHECK(h->value.p[k] != '\r' && h->value.p[k] != '\n' && h->value.p[k] != 0);
        if (h->id == POLIS_HDR_CONNECTION || h->id == POLIS_HDR_TRANSFER_ENCODING ||
            h->id == POLIS_HDR_UPGRADE || h->id == POLIS_HDR_TE)
            CHECK(h->hop);
        if (h->id == POLIS_HDR_CONTENT_LENGTH || h->id == POLIS_HDR_HOST)
            CHECK(!h->hop);
    }
    if (m->body == POLIS_BODY_LENGTH)
        CHECK(m->content_length > 0 && m->hdr_index[POLIS_HDR_TRANSFER_ENCODING] == -1);
    if (m->body == POLIS_BODY_CHUNKED)
        CHECK(m->minor_version == 1 && m->hdr_index[POLIS_HDR_CONTENT_LENGTH] == -1);
    if (m->body == POLIS_BODY_NONE)
        CHECK(m->content_length == 0);
}

/* Two parses of the same bytes (maybe in different buffers) found the same message. */
static inline void same(const char *b1, const struct result *r1, const char *b2,
                        const struct result *r2)
{
    CHECK(r1->rc == r2->rc);
    if (r1->rc != 0)
        return;
    const struct polis_h1_msg *a = &r1->m, *b = &r2->m;
    CHECK(r1->head_len == r2->head_len);
    same_start_line(b1, a, b2, b);
    CHECK(a->minor_version == b->minor_version && a->num_headers == b->num_headers);
    CHECK(a->body == b->body && a->content_length == b->content_length);
    CHECK(a->keep_alive == b->keep_alive && a->expect_continue == b->expect_continue);
    CHECK(a->upgrade == b->upgrade && a->has_connection_tokens == b->has_connection_tokens);
    CHECK(memcmp(a->hdr_index, b->hdr_index, sizeof(a->hdr_index)) == 0);
    for (size_t i = 0; i < a->num_headers; i++) {
        const struct polis_h1_header *x = &a->headers[i], *y = &b->headers[i];
        CHECK(x->name.p - b1 == y->name.p - b2 && x->name.len == y->name.len);
        CHECK(x->value.p - b1 == y->value.p - b2 && x->value.len == y->value.len);
        CHECK(x->id == y->id && x->hop == y->hop);
    }
}

/* The whole check of one input: one call, determinism, the head alone in an exact-size buffer,
 * and the input fed in pieces (sizes from a hash of the input, one byte at a time for small
 * inputs), each prefix in an exact-size copy: EAGAIN until the same outcome as one call. */
static inline void check_input(const uint8_t *data, size_t size, bool head_request)
{
    static struct result r1, r2, r3;
    const char *buf = (const char *)data;
    size_t scan = 0;
    r1.head_request = r2.head_request = r3.head_request = head_request;
    parse(buf, size, &scan, &r1);
    if (r1.rc == 0) {
        check_head(buf, &r1);
        check_msg(buf, &r1);
    }

    scan = 0;
    parse(buf, size, &scan, &r2);
    same(buf, &r1, buf, &r2);

    if (r1.rc == 0) {
        char *h = malloc(r1.head_len);
        memcpy(h, buf, r1.head_len);
        scan = 0;
        parse(h, r1.head_len, &scan, &r2);
        same(buf, &r1, h, &r2);
        free(h);
    }

    uint32_t seed = 2166136261u;
    for (size_t i = 0; i < size; i++)
        seed = (seed ^ data[i]) * 16777619u;
    size_t n = 0;
    scan = 0;
    r3.rc = POLIS_EAGAIN;
    while (n < size) {
        size_t step = 1;
        if (size > 256) {
            seed = seed * 1103515245u + 12345u;
            step = 1 + (seed >> 16) % 97;
        }
        n = n + step > size ? size : n + step;
        char *p = malloc(n);
        memcpy(p, buf, n);
        size_t before = scan;
        parse(p, n, &scan, &r3);
        if (r3.rc == POLIS_EAGAIN) {
            CHECK(scan >= before && scan + 2 >= (n < lim.max_head ? n : lim.max_head));
            free(p);
            continue;
        }
        if (r1.rc == 0)
            same(buf, &r1, p, &r3);
        else
            CHECK(r1.rc != POLIS_EAGAIN && r3.rc != 0);
        free(p);
        break;
    }
    if (r3.rc == POLIS_EAGAIN)
        CHECK(r1.rc == POLIS_EAGAIN);
}

#endif
