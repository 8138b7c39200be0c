/* Unit tests of what discovery sources share (lib/registry/discovery.c): reading an instance from
 * JSON, comparing, copying and freeing instance sets. */
#include "registry/discovery.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Read text as an instance with id; returns the code, fills in and err. */
static int read_json(const char *text, const char *id, struct polis_instance_cfg *in, char *err,
                     size_t errcap)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (j == NULL)
        fail_msg("test JSON is bad: %s", text);
    err[0] = '\0';
    int rc = polis__instance_from_json(j, id, in, err, errcap);
    json_decref(j);
    return rc;
}

static const char *meta_of(const struct polis_instance_cfg *in, const char *name)
{
    for (size_t k = 0; k < in->num_meta; k++)
        if (strcmp(in->meta[k].name, name) == 0)
            return in->meta[k].value;
    return NULL;
}

static void test_from_json_good(void **state)
{
    (void)state;
    struct polis_instance_cfg in;
    char err[256];
    assert_int_equal(read_json("{\"address\": \"127.0.0.1\", \"port\": 9001, \"ttl_s\": 10, "
                               "\"metadata\": {\"version\": \"v2\", \"zone\": \"a\", "
                               "\"weight\": 100}}",
                               "web-1", &in, err, sizeof(err)),
                     0);
    assert_string_equal(in.id, "web-1");
    assert_string_equal(in.addr.text, "127.0.0.1:9001");
    assert_int_equal(in.weight, 100);
    assert_int_equal(in.num_meta, 3);
    assert_string_equal(meta_of(&in, "version"), "v2");
    assert_string_equal(meta_of(&in, "zone"), "a");
    assert_string_equal(meta_of(&in, "weight"), "100"); /* numbers kept as text */
    polis__instance_clear(&in);
    assert_null(in.id);
    assert_null(in.meta);
    assert_int_equal(in.num_meta, 0);

    /* IPv6, no metadata, no id, extra members ignored. */
    assert_int_equal(read_json("{\"address\": \"::1\", \"port\": 80, \"other\": [1, 2]}", NULL, &in,
                               err, sizeof(err)),
                     0);
    assert_string_equal(in.addr.text, "[::1]:80");
    assert_int_equal(in.addr.ss.ss_family, AF_INET6);
    assert_null(in.id);
    assert_int_equal(in.weight, 1);
    assert_int_equal(in.num_meta, 0);
    polis__instance_clear(&in);

    /* Null metadata; edges of the ranges. */
    assert_int_equal(read_json("{\"address\": \"10.1.2.3\", \"port\": 65535, \"metadata\": null}",
                               "x", &in, err, sizeof(err)),
                     0);
    assert_string_equal(in.addr.text, "10.1.2.3:65535");
    polis__instance_clear(&in);
    assert_int_equal(read_json("{\"address\": \"10.1.2.3\", \"port\": 1, \"metadata\": "
                               "{\"weight\": \"10000\", \"n\": -3}}",
                               "x", &in, err, sizeof(err)),
                     0);
    assert_int_equal(in.weight, 10000);
    assert_string_equal(meta_of(&in, "n"), "-3");
    polis__instance_clear(&in);
}

static void test_from_json_bad(void **state)
{
    (void)state;
    char many[4096];
    int o = snprintf(many, sizeof(many), "{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {");
    for (int i = 0; i < 65; i++)
        o += snprintf(many + o, sizeof(many) - (size_t)o, "%s\"k%d\": \"v\"", i ? ", " : "", i);
    snprintf(many + o, sizeof(many) - (size_t)o, "}}");
    char longkey[300], longval[1200];
    snprintf(longkey, sizeof(longkey),
             "{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": "
             "{\"%0129d\": \"v\"}}",
             0);
    o = snprintf(longval, sizeof(longval),
                 "{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"k\": \"");
    memset(longval + o, 'v', 1025);
    snprintf(longval + o + 1025, sizeof(longval) - (size_t)o - 1025, "\"}}");

    const struct {
        const char *json, *field;
    } cases[] = {
        {"[]", "body"},
        {"\"text\"", "body"},
        {"{}", "address"},
        {"{\"address\": 1, \"port\": 1}", "address"},
        {"{\"address\": \"\", \"port\": 1}", "address"},
        {"{\"address\": \"localhost\", \"port\": 1}", "address"},
        {"{\"address\": \"example.com\", \"port\": 1}", "address"},
        {"{\"address\": \"1.2.3.4.5\", \"port\": 1}", "address"},
        {"{\"address\": \"::g\", \"port\": 1}", "address"},
        {"{\"address\": \"1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa\", \"port\": 1}",
         "address"},
        {"{\"address\": \"1.1.1.1\"}", "port"},
        {"{\"address\": \"1.1.1.1\", \"port\": 0}", "port"},
        {"{\"address\": \"1.1.1.1\", \"port\": 65536}", "port"},
        {"{\"address\": \"1.1.1.1\", \"port\": -1}", "port"},
        {"{\"address\": \"1.1.1.1\", \"port\": \"80\"}", "port"},
        {"{\"address\": \"1.1.1.1\", \"port\": 80.5}", "port"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": []}", "metadata"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": \"v2\"}", "metadata"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"a\": true}}", "metadata.a"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"b\": 1.5}}", "metadata.b"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"c\": null}}", "metadata.c"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"d\": {}}}", "metadata.d"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"\": \"v\"}}", "metadata."},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"weight\": 0}}",
         "metadata.weight"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"weight\": 10001}}",
         "metadata.weight"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"weight\": \"abc\"}}",
         "metadata.weight"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"weight\": \"\"}}",
         "metadata.weight"},
        {"{\"address\": \"1.1.1.1\", \"port\": 1, \"metadata\": {\"weight\": \"5x\"}}",
         "metadata.weight"},
        {many, "metadata"},
        {longkey, "metadata."},
        {longval, "metadata.k"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct polis_instance_cfg in;
        char err[256], want[128];
        int rc = read_json(cases[i].json, "id", &in, err, sizeof(err));
        if (rc != POLIS_EINVAL)
            fail_msg("case %zu (%.80s): %d", i, cases[i].json, rc);
        snprintf(want, sizeof(want), "%s", cases[i].field);
        if (strncmp(err, want, strlen(want)) != 0 || strstr(err, ": expected") == NULL)
            fail_msg("case %zu (%.80s): message \"%s\", expected field %s", i, cases[i].json, err,
                     want);
        /* Nothing is left to free on failure. */
        assert_null(in.id);
        assert_null(in.meta);
        assert_int_equal(in.num_meta, 0);
    }
}

/* An instance built by hand: id, address text, weight and metadata pairs (NULL-terminated). */
static void make(struct polis_instance_cfg *in, const char *id, const char *addr, uint32_t weight,
                 const char *const *meta)
{
    memset(in, 0, sizeof(*in));
    assert_int_equal(polis__addr_parse(addr, &in->addr), 0);
    in->weight = weight;
    in->id = id != NULL ? strdup(id) : NULL;
    size_t n = 0;
    while (meta != NULL && meta[2 * n] != NULL)
        n++;
    in->meta = n > 0 ? calloc(n, sizeof(*in->meta)) : NULL;
    for (size_t k = 0; k < n; k++) {
        in->meta[k].name = strdup(meta[2 * k]);
        in->meta[k].value = strdup(meta[2 * k + 1]);
    }
    in->num_meta = n;
}

static void test_equal(void **state)
{
    (void)state;
    const char *const m1[] = {"version", "v2", "zone", "a", NULL};
    const char *const m1r[] = {"zone", "a", "version", "v2", NULL}; /* the same, reordered */
    const char *const m2[] = {"version", "v3", "zone", "a", NULL};
    const char *const m3[] = {"version", "v2", NULL};
    struct polis_instance_cfg a[2], b[2], c[2];
    make(&a[0], "i1", "127.0.0.1:1", 1, m1);
    make(&a[1], "i2", "127.0.0.1:2", 5, NULL);
    /* The same set in another order, with metadata in another order. */
    make(&b[0], "i2", "127.0.0.1:2", 5, NULL);
    make(&b[1], "i1", "127.0.0.1:1", 1, m1r);
    assert_true(polis__instances_equal(a, 2, b, 2));
    assert_true(polis__instances_equal(b, 2, a, 2));
    assert_true(polis__instances_equal(a, 0, NULL, 0));
    assert_false(polis__instances_equal(a, 2, b, 1));
    assert_false(polis__instances_equal(a, 1, b, 2));

    /* One difference at a time. */
    make(&c[0], "i1", "127.0.0.1:1", 1, m2); /* metadata value */
    assert_false(polis__instances_equal(a, 1, c, 1));
    polis__instance_clear(&c[0]);
    make(&c[0], "i1", "127.0.0.1:1", 1, m3); /* fewer metadata */
    assert_false(polis__instances_equal(a, 1, c, 1));
    polis__instance_clear(&c[0]);
    make(&c[0], "i1", "127.0.0.1:9", 1, m1); /* port */
    assert_false(polis__instances_equal(a, 1, c, 1));
    polis__instance_clear(&c[0]);
    make(&c[0], "i1", "127.0.0.2:1", 1, m1); /* address */
    assert_false(polis__instances_equal(a, 1, c, 1));
    polis__instance_clear(&c[0]);
    make(&c[0], "i1", "127.0.0.1:1", 2, m1); /* weight */
    assert_false(polis__instances_equal(a, 1, c, 1));
    polis__instance_clear(&c[0]);
    make(&c[0], "other", "127.0.0.1:1", 1, m1); /* id */
    assert_false(polis__instances_equal(a, 1, c, 1));
    polis__instance_clear(&c[0]);
    make(&c[0], NULL, "127.0.0.1:1", 1, m1); /* no id */
    assert_false(polis__instances_equal(a, 1, c, 1));
    assert_true(polis__instances_equal(c, 1, c, 1));
    polis__instance_clear(&c[0]);
    /* Sets hold each instance once (ids are unique in a source): duplicates are not compared. */
    make(&c[0], "i1", "127.0.0.1:1", 1, m1);
    make(&c[1], "i3", "127.0.0.1:2", 5, NULL);
    assert_false(polis__instances_equal(c, 2, a, 2));
    for (int i = 0; i < 2; i++) {
        polis__instance_clear(&a[i]);
        polis__instance_clear(&b[i]);
        polis__instance_clear(&c[i]);
    }
}

static void test_copy_free(void **state)
{
    (void)state;
    const char *const m[] = {"version", "v2", "weight", "7", NULL};
    struct polis_instance_cfg *v = calloc(2, sizeof(*v));
    assert_non_null(v);
    make(&v[0], "i1", "127.0.0.1:1", 7, m);
    make(&v[1], NULL, "[::1]:2", 1, NULL);
    struct polis_instance_cfg *c = NULL;
    assert_int_equal(polis__instances_copy(v, 2, &c), 0);
    assert_non_null(c);
    assert_true(polis__instances_equal(v, 2, c, 2));
    /* A deep copy: nothing shared. */
    assert_ptr_not_equal(c[0].id, v[0].id);
    assert_ptr_not_equal(c[0].meta, v[0].meta);
    assert_ptr_not_equal(c[0].meta[0].name, v[0].meta[0].name);
    assert_ptr_not_equal(c[0].meta[0].value, v[0].meta[0].value);
    assert_null(c[1].id);
    assert_null(c[1].meta);
    assert_string_equal(c[1].addr.text, "[::1]:2");
    assert_int_equal(c[0].weight, 7);
    /* Freeing the original leaves the copy whole (ASan would see a use after free). */
    polis__instances_free(v, 2);
    assert_string_equal(c[0].id, "i1");
    assert_string_equal(c[0].meta[1].value, "7");
    polis__instances_free(c, 2);

    /* An empty set copies to something to free. */
    struct polis_instance_cfg *e = NULL;
    assert_int_equal(polis__instances_copy(NULL, 0, &e), 0);
    assert_non_null(e);
    polis__instances_free(e, 0);
    polis__instances_free(NULL, 3); /* harmless */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_json_good),
        cmocka_unit_test(test_from_json_bad),
        cmocka_unit_test(test_equal),
        cmocka_unit_test(test_copy_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
