/* libFuzzer target: the HTTP/1.1 response parser, checked for invariants, determinism and
 * incremental parsing giving the same result as one call. */
#include "h1_common.h"

static void check_msg(const char *buf, const struct result *r)
{
    const struct polis_h1_msg *m = &r->m;
    CHECK(m->status >= 100 && m->status <= 999);
    CHECK(in(buf, r->head_len, m->reason));
    CHECK(m->method.p == NULL && m->target.p == NULL);
    bool nobody = r->head_request || m->status < 200 || m->status == 204 || m->status == 304;
    if (nobody)
        CHECK(m->body == POLIS_BODY_NONE);
    if (m->body == POLIS_BODY_CLOSE)
        CHECK(!m->keep_alive && m->content_length == 0 &&
              m->hdr_index[POLIS_HDR_CONTENT_LENGTH] == -1);
}

static void same_start_line(const char *b1, const struct polis_h1_msg *a, const char *b2,
                            const struct polis_h1_msg *b)
{
    CHECK(a->status == b->status);
    CHECK(a->reason.p - b1 == b->reason.p - b2 && a->reason.len == b->reason.len);
}

static void parse(const char *buf, size_t len, size_t *scan, struct result *r)
{
    r->m.headers = r->h;
    r->rc =
        polis_h1_parse_response(buf, len, scan, &r->m, NHDR, &lim, r->head_request, &r->head_len);
    CHECK(r->rc == 0 || r->rc == POLIS_EAGAIN || r->rc == POLIS_EBADMSG ||
          r->rc == POLIS_EHDRTOOBIG || r->rc == POLIS_EVERSION);
    CHECK(*scan <= len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The last byte's low bit says whether the request was HEAD. */
    bool head = size > 0 && (data[size - 1] & 1) && (data[size - 1] != '\n');
    check_input(data, size, head);
    return 0;
}
