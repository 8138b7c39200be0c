/* parse.c: parsers for configuration values: durations ("5s") and sizes ("64MiB"). */
#include <polis/core.h>

#include <string.h>

/* Parse the leading decimal digits of s into *v; sets *used to the digit count. Rejects an empty
 * digit run and overflow of uint64_t. */
static int parse_digits(struct polis_str s, uint64_t *v, size_t *used)
{
    uint64_t n = 0;
    size_t i = 0;

    while (i < s.len && s.p[i] >= '0' && s.p[i] <= '9') {
        uint64_t d = (uint64_t)(s.p[i] - '0');
        if (n > (UINT64_MAX - d) / 10)
            return POLIS_EINVAL;
        n = n * 10 + d;
        i++;
    }
    if (i == 0)
        return POLIS_EINVAL;
    *v = n;
    *used = i;
    return 0;
}

static bool suffix_is(struct polis_str s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.p, lit, n) == 0;
}

/* Multiply with an overflow check. */
static int mul_checked(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b != 0 && a > UINT64_MAX / b)
        return POLIS_EINVAL;
    *out = a * b;
    return 0;
}

int polis_parse_duration(struct polis_str s, uint64_t *ms)
{
    uint64_t n, mult;
    size_t used;

    if (!s.p || parse_digits(s, &n, &used) < 0)
        return POLIS_EINVAL;
    struct polis_str unit = {s.p + used, s.len - used};
    if (unit.len == 0 || suffix_is(unit, "ms"))
        mult = 1;
    else if (suffix_is(unit, "s"))
        mult = 1000;
    else if (suffix_is(unit, "m"))
        mult = 60 * 1000;
    else if (suffix_is(unit, "h"))
        mult = 60 * 60 * 1000;
    else
        return POLIS_EINVAL;
    return mul_checked(n, mult, ms);
}

int polis_parse_size(struct polis_str s, uint64_t *bytes)
{
    static const struct {
        const char *suffix;
        uint64_t mult;
    } units[] = {
        {"", 1},
        {"B", 1},
        {"KiB", 1ull << 10},
        {"MiB", 1ull << 20},
        {"GiB", 1ull << 30},
        {"TiB", 1ull << 40},
        {"KB", 1000ull},
        {"MB", 1000ull * 1000},
        {"GB", 1000ull * 1000 * 1000},
        {"k", 1ull << 10}, /* nginx habit: lowercase k/m/g are 1024-based */
        {"m", 1ull << 20},
        {"g", 1ull << 30},
    };
    uint64_t n;
    size_t used;

    if (!s.p || parse_digits(s, &n, &used) < 0)
        return POLIS_EINVAL;
    struct polis_str unit = {s.p + used, s.len - used};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (suffix_is(unit, units[i].suffix))
            return mul_checked(n, units[i].mult, bytes);
    }
    return POLIS_EINVAL;
}
