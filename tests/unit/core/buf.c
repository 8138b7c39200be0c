/* Unit tests of lib/core/buf.c and arena.c: capped buffers, pooled blocks, arenas. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <polis/core.h>

#include <stdlib.h>
#include <string.h>

static void append_consume_and_compact(void **state)
{
    struct polis_buf b;
    polis_buf_init(&b, 64 * 1024);
    assert_int_equal(polis_buf_len(&b), 0);
    assert_int_equal(polis_buf_append(&b, "hello ", 6), 0);
    assert_int_equal(polis_buf_printf(&b, "%s %d", "world", 42), 0);
    assert_int_equal(polis_buf_len(&b), 14);
    assert_memory_equal(polis_buf_head(&b), "hello world 42", 14);
    polis_buf_consume(&b, 6);
    assert_memory_equal(polis_buf_head(&b), "world 42", 8);
    polis_buf_consume(&b, 8);
    assert_int_equal(polis_buf_len(&b), 0);
    assert_int_equal(b.start, 0); /* emptied buffers restart at the front */
    polis_buf_free(&b);
}

/* The cap is hard: appends past it fail with POLIS_ETOOBIG and change nothing. */
static void cap_is_enforced(void **state)
{
    struct polis_buf b;
    polis_buf_init(&b, 100);
    char data[100];
    memset(data, 'x', sizeof(data));
    assert_int_equal(polis_buf_append(&b, data, 60), 0);
    assert_int_equal(polis_buf_append(&b, data, 41), POLIS_ETOOBIG);
    assert_int_equal(polis_buf_len(&b), 60);
    assert_int_equal(polis_buf_append(&b, data, 40), 0);
    assert_int_equal(polis_buf_len(&b), 100);
    assert_int_equal(polis_buf_append(&b, data, 1), POLIS_ETOOBIG);
    /* Consumed space at the front is reused by moving the unread bytes. */
    polis_buf_consume(&b, 50);
    assert_int_equal(polis_buf_append(&b, data, 50), 0);
    assert_int_equal(polis_buf_len(&b), 100);
    polis_buf_free(&b);
}

/* Growing past one block keeps the content; large caps grow by doubling. */
static void grows_past_a_block(void **state)
{
    struct polis_buf b;
    polis_buf_init(&b, 1u << 20);
    size_t total = 0;
    char chunk[1000];
    for (int i = 0; i < 100; i++) {
        memset(chunk, 'a' + i % 26, sizeof(chunk));
        assert_int_equal(polis_buf_append(&b, chunk, sizeof(chunk)), 0);
        total += sizeof(chunk);
    }
    assert_int_equal(polis_buf_len(&b), total);
    for (int i = 0; i < 100; i++)
        assert_int_equal(polis_buf_head(&b)[i * 1000 + 999], 'a' + i % 26);
    polis_buf_free(&b);
    assert_null(b.data);
}

static void blocks_are_reused(void **state)
{
    char *a = polis_block_get();
    assert_non_null(a);
    memset(a, 1, POLIS_BLOCK_SIZE);
    polis_block_put(a);
    char *b = polis_block_get();
    assert_non_null(b);
#ifndef POLIS_POOL_DEBUG
    assert_ptr_equal(a, b); /* the per-thread cache hands the same block back */
#endif
    polis_block_put(b);
}

static void arena_allocates_aligned_and_resets(void **state)
{
    struct polis_arena *a = polis_arena_new();
    assert_non_null(a);
    for (int i = 0; i < 1000; i++) {
        void *p = polis_arena_alloc(a, (size_t)(i % 97) + 1);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % _Alignof(max_align_t), 0);
        memset(p, 0xab, (size_t)(i % 97) + 1);
    }
    void *big = polis_arena_alloc(a, 100000); /* larger than a chunk */
    assert_non_null(big);
    memset(big, 0, 100000);
    char *s = polis_arena_strdup(a, POLIS_STR("polis"));
    assert_string_equal(s, "polis");
    polis_arena_reset(a);
    assert_non_null(polis_arena_alloc(a, 10));
    polis_arena_free(a);
}

static void str_compare(void **state)
{
    assert_true(polis_str_eq(POLIS_STR("abc"), POLIS_STR("abc")));
    assert_false(polis_str_eq(POLIS_STR("abc"), POLIS_STR("abd")));
    assert_true(polis_str_caseeq(POLIS_STR("Content-Length"), POLIS_STR("content-LENGTH")));
    assert_false(polis_str_caseeq(POLIS_STR("a@"), POLIS_STR("a`"))); /* not letters */
    assert_false(polis_str_caseeq(POLIS_STR("ab"), POLIS_STR("abc")));
    assert_string_equal(polis_strerror(POLIS_EBADMSG), "malformed message");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(append_consume_and_compact),
        cmocka_unit_test(cap_is_enforced),
        cmocka_unit_test(grows_past_a_block),
        cmocka_unit_test(blocks_are_reused),
        cmocka_unit_test(arena_allocates_aligned_and_resets),
        cmocka_unit_test(str_compare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
