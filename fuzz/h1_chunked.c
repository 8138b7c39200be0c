/* libFuzzer target: the chunked decoder; one call, byte-by-byte, a random split and in-place
 * decoding must all agree on the return code, the bytes consumed and the payload. */
#include <polis/http.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

struct run {
    int rc;
    size_t consumed;
    size_t out_len;
    char *out;
};

static void setup(struct polis_h1_chunked *c, uint64_t max_body)
{
    polis_h1_chunked_init(c, max_body);
    c->max_line = 64; /* small limits so the fuzzer reaches them */
    c->max_trailer = 256;
}

/* Feed data in pieces of at most step bytes (0: one call); in_place decodes into the input. */
static void feed(const uint8_t *data, size_t size, size_t step, size_t first, bool in_place,
                 uint64_t max_body, struct run *r)
{
    struct polis_h1_chunked c;
    char *buf = malloc(size ? size : 1);
    char *out = malloc(size ? size : 1);
    memcpy(buf, data, size);
    setup(&c, max_body);
    size_t pos = 0;
    r->rc = 0;
    r->out_len = 0;
    do {
        size_t n = size - pos;
        size_t lim = pos == 0 && first ? first : step;
        if (lim && n > lim)
            n = lim;
        /* Each piece in an exact-size allocation so ASan sees any read past it. */
        char *piece = malloc(n ? n : 1);
        memcpy(piece, buf + pos, n);
        size_t used = (size_t)-1, olen = (size_t)-1;
        char *o = in_place ? piece : out + r->out_len;
        r->rc = polis_h1_chunked_feed(&c, piece, n, &used, o, &olen);
        if (r->rc >= 0) {
            CHECK(used <= n && olen <= used);
            CHECK(r->rc == 1 || used == n);
            if (in_place)
                memcpy(out + r->out_len, piece, olen);
            r->out_len += olen;
            pos += used;
            CHECK(c.total >= r->out_len);
        }
        free(piece);
    } while (r->rc == 0 && pos < size);
    CHECK(r->out_len <= pos && pos <= size);
    if (r->rc == 1) {
        CHECK(c.total == r->out_len);
        /* Done stays done and takes nothing more. */
        size_t used;
        CHECK(polis_h1_chunked_feed(&c, "0", 1, &used, NULL, NULL) == 1 && used == 0);
    }
    CHECK(max_body == 0 || r->out_len <= max_body);
    r->consumed = pos;
    r->out = out;
    free(buf);
}

static void same(const struct run *a, const struct run *b)
{
    CHECK(a->rc == b->rc);
    if (a->rc < 0)
        return; /* payload before an error is not specified to match byte for byte */
    CHECK(a->consumed == b->consumed);
    CHECK(a->out_len == b->out_len);
    CHECK(memcmp(a->out, b->out, a->out_len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 16777619u;

    for (int pass = 0; pass < 2; pass++) {
        uint64_t max_body = pass ? 1 + h % 64 : 0;
        struct run one, bytes, split, inplace;
        feed(data, size, 0, 0, false, max_body, &one);
        CHECK(one.rc == 0 || one.rc == 1 || one.rc == POLIS_EBADMSG || one.rc == POLIS_EBODYTOOBIG);
        if (one.rc == 0)
            CHECK(one.consumed == size);
        feed(data, size, 1, 0, false, max_body, &bytes);
        feed(data, size, 0, size ? h % size + 1 : 0, false, max_body, &split);
        feed(data, size, 1 + (h >> 8) % 7, 0, true, max_body, &inplace);
        same(&one, &bytes);
        same(&one, &split);
        same(&one, &inplace);
        free(one.out);
        free(bytes.out);
        free(split.out);
        free(inplace.out);
    }
    return 0;
}
