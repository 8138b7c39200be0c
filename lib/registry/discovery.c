/* discovery.c: copying and comparing instance sets, shared by every discovery source. */
#include "registry/discovery.h"

#include <stdlib.h>
#include <string.h>

static char *dup_or_null(const char *s, bool *ok)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        *ok = false;
    return d;
}

void polis__instances_free(struct polis_instance_cfg *v, size_t n)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(v[i].id);
        for (size_t k = 0; k < v[i].num_meta; k++) {
            free(v[i].meta[k].name);
            free(v[i].meta[k].value);
        }
        free(v[i].meta);
    }
    free(v);
}

int polis__instances_copy(const struct polis_instance_cfg *v, size_t n,
                          struct polis_instance_cfg **out)
{
    struct polis_instance_cfg *c = calloc(n ? n : 1, sizeof(*c));
    if (c == NULL)
        return POLIS_ENOMEM;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        c[i].addr = v[i].addr;
        c[i].weight = v[i].weight;
        c[i].id = dup_or_null(v[i].id, &ok);
        if (v[i].num_meta > 0) {
            c[i].meta = calloc(v[i].num_meta, sizeof(*c[i].meta));
            if (c[i].meta == NULL) {
                ok = false;
                continue;
            }
            c[i].num_meta = v[i].num_meta;
            for (size_t k = 0; k < v[i].num_meta; k++) {
                c[i].meta[k].name = dup_or_null(v[i].meta[k].name, &ok);
                c[i].meta[k].value = dup_or_null(v[i].meta[k].value, &ok);
            }
        }
    }
    if (!ok) {
        polis__instances_free(c, n);
        return POLIS_ENOMEM;
    }
    *out = c;
    return 0;
}

static bool str_eq(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

static bool meta_has(const struct polis_instance_cfg *x, const struct polis_header_kv *kv)
{
    for (size_t k = 0; k < x->num_meta; k++)
        if (str_eq(x->meta[k].name, kv->name) && str_eq(x->meta[k].value, kv->value))
            return true;
    return false;
}

static bool instance_eq(const struct polis_instance_cfg *a, const struct polis_instance_cfg *b)
{
    if (!str_eq(a->id, b->id) || strcmp(a->addr.text, b->addr.text) != 0 ||
        a->weight != b->weight || a->num_meta != b->num_meta)
        return false;
    for (size_t k = 0; k < a->num_meta; k++)
        if (!meta_has(b, &a->meta[k]))
            return false;
    return true;
}

bool polis__instances_equal(const struct polis_instance_cfg *a, size_t na,
                            const struct polis_instance_cfg *b, size_t nb)
{
    if (na != nb)
        return false;
    /* Sets are small (tens of instances); quadratic is fine and needs no allocation. */
    for (size_t i = 0; i < na; i++) {
        size_t j = 0;
        while (j < nb && !instance_eq(&a[i], &b[j]))
            j++;
        if (j == nb)
            return false;
    }
    return true;
}
