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

void polis__instance_clear(struct polis_instance_cfg *in)
{
    free(in->id);
    for (size_t k = 0; k < in->num_meta; k++) {
        free(in->meta[k].name);
        free(in->meta[k].value);
    }
    free(in->meta);
    memset(in, 0, sizeof(*in));
}

/* A numeric address and a port into a polis_addr. */
static bool numeric_addr(const char *ip, long port, struct polis_addr *out)
{
    char text[80];
    if (strchr(ip, ':') != NULL)
        snprintf(text, sizeof(text), "[%s]:%ld", ip, port);
    else
        snprintf(text, sizeof(text), "%s:%ld", ip, port);
    for (const char *p = ip; *p; p++) /* digits, dots, colons, hex: no names */
        if (!((*p >= '0' && *p <= '9') || *p == '.' || *p == ':' || (*p >= 'a' && *p <= 'f') ||
              (*p >= 'A' && *p <= 'F')))
            return false;
    return polis__addr_parse(text, out) == 0;
}

int polis__instance_from_json(const json_t *j, const char *id, struct polis_instance_cfg *out,
                              char *err, size_t errcap)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(j)) {
        snprintf(err, errcap, "body: expected a JSON object");
        return POLIS_EINVAL;
    }
    const json_t *a = json_object_get(j, "address");
    if (!json_is_string(a) || json_string_length(a) == 0 || json_string_length(a) > 45) {
        snprintf(err, errcap, "address: expected a numeric IPv4 or IPv6 address string");
        return POLIS_EINVAL;
    }
    const json_t *p = json_object_get(j, "port");
    if (!json_is_integer(p) || json_integer_value(p) < 1 || json_integer_value(p) > 65535) {
        snprintf(err, errcap, "port: expected an integer from 1 to 65535");
        return POLIS_EINVAL;
    }
    if (!numeric_addr(json_string_value(a), (long)json_integer_value(p), &out->addr)) {
        snprintf(err, errcap, "address: expected a numeric IPv4 or IPv6 address string");
        return POLIS_EINVAL;
    }
    out->weight = 1;
    const json_t *m = json_object_get(j, "metadata");
    if (m != NULL && !json_is_null(m)) {
        if (!json_is_object(m) || json_object_size(m) > 64) {
            snprintf(err, errcap, "metadata: expected an object of at most 64 string values");
            return POLIS_EINVAL;
        }
        out->meta = calloc(json_object_size(m) + 1, sizeof(*out->meta));
        if (out->meta == NULL)
            goto nomem;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)m, k, v)
        {
            char num[32];
            const char *val;
            if (json_is_string(v)) {
                val = json_string_value(v);
            } else if (json_is_integer(v)) {
                snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
                val = num;
            } else {
                snprintf(err, errcap, "metadata.%.64s: expected a string or an integer", k);
                polis__instance_clear(out);
                return POLIS_EINVAL;
            }
            if (strlen(k) == 0 || strlen(k) > 128 || strlen(val) > 1024) {
                snprintf(err, errcap,
                         "metadata.%.64s: expected a key of 1 to 128 bytes and a "
                         "value of at most 1024",
                         k);
                polis__instance_clear(out);
                return POLIS_EINVAL;
            }
            if (strcmp(k, "weight") == 0) {
                char *end;
                long w = strtol(val, &end, 10);
                if (*val == '\0' || *end != '\0' || w < 1 || w > 10000) {
                    snprintf(err, errcap, "metadata.weight: expected an integer from 1 to 10000");
                    polis__instance_clear(out);
                    return POLIS_EINVAL;
                }
                out->weight = (uint32_t)w;
            }
            struct polis_header_kv *kv = &out->meta[out->num_meta++];
            kv->name = strdup(k);
            kv->value = strdup(val);
            if (kv->name == NULL || kv->value == NULL)
                goto nomem;
        }
    }
    if (id != NULL && (out->id = strdup(id)) == NULL)
        goto nomem;
    return 0;
nomem:
    polis__instance_clear(out);
    snprintf(err, errcap, "out of memory");
    return POLIS_ENOMEM;
}
