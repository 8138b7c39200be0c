/* libFuzzer target: request path normalisation, checked for the shape of its output (no "//",
 * no dot segments, only canonical escapes), idempotence, buffer bounds, and agreement between
 * the two path-parameter modes. */
#include "security/pathnorm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

struct res {
    int rc;
    enum polis_path_reason why;
    size_t len;
};

static bool is_hexup(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

static int hexv(char c)
{
    return c <= '9' ? c - '0' : c - 'A' + 10;
}

/* Written as themselves in the canonical form, so never as an escape. */
static bool literal(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("-._~!$&'()*+,=:@", c) != NULL);
}

static bool contains(const char *p, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(p + i, needle, k) == 0)
            return true;
    return false;
}

static bool ends_with(const char *p, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(p + n - k, suffix, k) == 0;
}

/* The shape every accepted output has. */
static void check_output(const char *o, size_t n)
{
    CHECK(n >= 1 && o[0] == '/');
    CHECK(!contains(o, n, "//"));
    CHECK(!contains(o, n, "/./") && !contains(o, n, "/../"));
    CHECK(!ends_with(o, n, "/.") && !ends_with(o, n, "/.."));
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)o[i];
        CHECK(c > 0x20 && c < 0x7f);
        CHECK(c != ';' && c != '\\' && c != '?' && c != '#');
        if (c == '%') {
            CHECK(i + 2 < n && is_hexup(o[i + 1]) && is_hexup(o[i + 2]));
            unsigned char d = (unsigned char)(hexv(o[i + 1]) * 16 + hexv(o[i + 2]));
            CHECK(!literal(d) && d != '/' && d != '\\' && d >= 0x20 && d != 0x7f);
            i += 2;
        }
    }
}

static struct res run(const char *in, size_t n, unsigned flags, char *out, size_t cap)
{
    struct res r;
    r.len = 12345;
    r.rc = polis__path_normalize((struct polis_str){in, n}, flags, out, cap, &r.len, &r.why);
    CHECK(r.rc == 0 || r.rc == POLIS_EBADMSG || r.rc == POLIS_ETOOBIG);
    CHECK((r.rc == 0) == (r.why == POLIS_PATH_OK));
    CHECK(r.rc != POLIS_ETOOBIG || r.why == POLIS_PATH_TOO_LONG);
    CHECK(r.rc == 0 ? r.len <= cap : r.len == 0);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    size_t cap = 3 * size + 1;
    char *a = malloc(cap), *b = malloc(cap), *c = malloc(cap);
    if (a == NULL || b == NULL || c == NULL)
        goto out;
    bool has_semicolon = memchr(in, ';', size) != NULL;
    struct res r0 = run(in, size, 0, a, cap);
    struct res r1 = run(in, size, POLIS_PATH_STRIP_PARAMS, b, cap);
    /* 3 * len + 1 is always enough. */
    CHECK(r0.rc != POLIS_ETOOBIG && r1.rc != POLIS_ETOOBIG);
    /* Without a ';' the modes agree; with one, refusing mode refuses (for some reason). */
    if (!has_semicolon) {
        CHECK(r0.rc == r1.rc && r0.why == r1.why);
        CHECK(r0.rc != 0 || (r0.len == r1.len && memcmp(a, b, r0.len) == 0));
    } else {
        CHECK(r0.rc != 0);
    }
    const struct {
        struct res r;
        const char *o;
        unsigned flags;
    } done[2] = {{r0, a, 0}, {r1, b, POLIS_PATH_STRIP_PARAMS}};
    for (int k = 0; k < 2; k++) {
        if (done[k].r.rc != 0)
            continue;
        size_t n = done[k].r.len;
        check_output(done[k].o, n);
        CHECK(n <= 3 * size);
        /* Idempotent, in both modes. */
        for (unsigned f = 0; f <= POLIS_PATH_STRIP_PARAMS; f += POLIS_PATH_STRIP_PARAMS) {
            struct res again = run(done[k].o, n, f, c, 3 * n + 1);
            CHECK(again.rc == 0 && again.len == n && memcmp(c, done[k].o, n) == 0);
        }
        /* Less room than the result itself never succeeds. */
        if (n > 0) {
            struct res tight = run(in, size, done[k].flags, c, n - 1);
            CHECK(tight.rc == POLIS_ETOOBIG);
        }
    }
out:
    free(a);
    free(b);
    free(c);
    return 0;
}
