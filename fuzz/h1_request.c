/* libFuzzer target: the HTTP/1.1 request parser, checked for invariants, determinism and
 * incremental parsing giving the same result as one call. */
#include "h1_common.h"

static void check_msg(const char *buf, const struct result *r)
{
    const struct polis_h1_msg *m = &r->m;
    CHECK(in(buf, r->head_len, m->method) && m->method.len > 0);
    CHECK(in(buf, r->head_len, m->target) && m->target.len > 0);
    size_t nhost = 0;
    for (size_t i = 0; i < m->num_headers; i++)
        nhost += m->headers[i].id == POLIS_HDR_HOST;
    CHECK(nhost <= 1 && (m->minor_version == 0 || nhost == 1));
    CHECK(m->body != POLIS_BODY_CLOSE); /* only responses run until close */
}

static void same_start_line(const char *b1, const struct polis_h1_msg *a, const char *b2,
                            const struct polis_h1_msg *b)
{
    CHECK(a->method.p - b1 == b->method.p - b2 && a->method.len == b->method.len);
    CHECK(a->target.p - b1 == b->target.p - b2 && a->target.len == b->target.len);
}

static void parse(const char *buf, size_t len, size_t *scan, struct result *r)
{
    r->m.headers = r->h;
    r->rc = polis_h1_parse_request(buf, len, scan, &r->m, NHDR, &lim, &r->head_len);
    CHECK(r->rc == 0 || r->rc == POLIS_EAGAIN || r->rc == POLIS_EBADMSG ||
          r->rc == POLIS_EURITOOLONG || r->rc == POLIS_EHDRTOOBIG || r->rc == POLIS_EVERSION);
    CHECK(*scan <= len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_input(data, size, false);
    return 0;
}
