/* Unit tests of lib/core/parse.c: durations and sizes in configuration values. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <polis/core.h>
#include <string.h>

static struct polis_str S(const char *s) {
    return (struct polis_str){s, strlen(s)};
}

static void
test_duration_good(void **state)
{
    static const struct {
        const char *in;
        uint64_t ms;
    } cases[] = {
        {"0", 0},
        {"1", 1},
        {"500", 500},
        {"500ms", 500},
        {"0ms", 0},
        {"5s", 5000},
        {"2m", 120000},
        {"1h", 3600000},
        {"24h", 86400000},
        {"007s", 7000},
        {"18446744073709551615", UINT64_MAX},
        {"18446744073709551615ms", UINT64_MAX},
        {"5124095576030h", 5124095576030ull * 3600000ull},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 12345;
        int rc = polis_parse_duration(S(cases[i].in), &v);
        if (rc != 0 || v != cases[i].ms)
            fail_msg("duration '%s': rc %d value %llu", cases[i].in, rc, (unsigned long long)v);
    }
}

static void test_duration_bad(void **state)
{
    static const char *const cases[] = {
        "",
        "-5s",
        "+5s",
        "5 s",
        " 5s",
        "5s ",
        "5sec",
        "5S",
        "5ms5",
        "s",
        "ms",
        "5us",
        "250us",
        "1.5s",
        "5d",
        "0x10",
        "5hh",
        "5mss",
        "18446744073709551616", /* overflows uint64 */
        "5124095576031h",       /* overflows once multiplied */
        "18446744073709552s",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 777;
        int rc = polis_parse_duration(S(cases[i]), &v);
        if (rc != POLIS_EINVAL || v != 777)
            fail_msg("duration '%s' accepted: rc %d value %llu", cases[i], rc,
                     (unsigned long long)v);
    }
    /* A length shorter than the text: only the view is parsed. */
    uint64_t v = 0;
    assert_int_equal(polis_parse_duration((struct polis_str){"5sX", 2}, &v), 0);
    assert_int_equal(v, 5000);
    assert_int_equal(polis_parse_duration((struct polis_str){NULL, 0}, &v), POLIS_EINVAL);
}

static void test_size_good(void **state)
{
    static const struct {
        const char *in;
        uint64_t bytes;
    } cases[] = {
        {"0", 0},
        {"512", 512},
        {"512B", 512},
        {"1KiB", 1024},
        {"64KiB", 65536},
        {"64MiB", 64ull << 20},
        {"1GiB", 1ull << 30},
        {"2TiB", 2ull << 40},
        {"10KB", 10000},
        {"5MB", 5000000},
        {"3GB", 3000000000ull},
        {"8k", 8192},
        {"2m", 2ull << 20},
        {"1g", 1ull << 30},
        {"18446744073709551615", UINT64_MAX},
        {"16777215TiB", 16777215ull << 40},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 12345;
        int rc = polis_parse_size(S(cases[i].in), &v);
        if (rc != 0 || v != cases[i].bytes)
            fail_msg("size '%s': rc %d value %llu", cases[i].in, rc, (unsigned long long)v);
    }
}

static void test_size_bad(void **state)
{
    static const char *const cases[] = {
        "",
        "-1",
        "+1",
        "1 KiB",
        "1KiB ",
        " 1",
        "1kib",
        "1KIB",
        "1K",
        "1M",
        "1G",
        "1kb",
        "1Kb",
        "1TB",
        "1PiB",
        "1.5MiB",
        "KiB",
        "1bytes",
        "1BB",
        "18446744073709551616", /* overflows uint64 */
        "16777216TiB",          /* overflows once multiplied */
        "18446744073709552KB",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 777;
        int rc = polis_parse_size(S(cases[i]), &v);
        if (rc != POLIS_EINVAL || v != 777)
            fail_msg("size '%s' accepted: rc %d value %llu", cases[i], rc, (unsigned long long)v);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_good),
        cmocka_unit_test(test_duration_bad),
        cmocka_unit_test(test_size_good),
        cmocka_unit_test(test_size_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
