/* main.c: the polis program: `polis gateway`, `polis check`, `polis version`. */
#include "config/config.h"
#include "gateway/gateway.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef POLIS_VERSION
#define POLIS_VERSION "0.1.0"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage:\n"
            "  polis gateway -c FILE                 run the gateway on a YAML configuration\n"
            "  polis gateway --listen ADDR --upstream ADDR [--upstream ADDR ...]\n"
            "                [--workers N] [--admin ADDR] [--access-log FILE|-]\n"
            "                [--upstream-timeout DURATION] [--max-body SIZE]\n"
            "                                        quick mode: every path to the upstreams\n"
            "  polis check -c FILE                   validate a configuration\n"
            "  polis version                         print the version\n"
            "\n"
            "Signals: SIGHUP reloads -c FILE, SIGTERM/SIGINT drain and exit, SIGUSR1 reopens the\n"
            "access log. Documentation: docs/getting-started.md, docs/configuration.md.\n");
}

static void print_errors(const struct polis_config_errors *e)
{
    for (size_t i = 0; i < e->count; i++)
        fprintf(stderr, "%s\n", e->msgs[i]);
}

static int cmd_check(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc)
            path = argv[++i];
        else {
            fprintf(stderr, "polis check: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (path == NULL) {
        fprintf(stderr, "polis check: -c FILE is required\n");
        return 2;
    }
    struct polis_config *cfg = NULL;
    struct polis_config_errors errs = {0};
    if (polis__config_load_file(path, &cfg, &errs) < 0) {
        print_errors(&errs);
        fprintf(stderr, "%s: %zu error%s\n", path, errs.count, errs.count == 1 ? "" : "s");
        polis__config_errors_free(&errs);
        return 1;
    }
    printf("%s: ok\n", path);
    polis__config_free(cfg);
    return 0;
}

/* Append an instance to the quick-mode cluster. */
static int add_upstream(struct polis_cluster_cfg *c, const char *addr)
{
    struct polis_instance_cfg *n =
        realloc(c->instances, (c->num_instances + 1) * sizeof(*c->instances));
    if (n == NULL)
        return POLIS_ENOMEM;
    c->instances = n;
    struct polis_instance_cfg *in = &c->instances[c->num_instances];
    memset(in, 0, sizeof(*in));
    in->weight = 1;
    if (polis__addr_parse(addr, &in->addr) < 0)
        return POLIS_EINVAL;
    c->num_instances++;
    return 0;
}

static int flag_value(int argc, char **argv, int *i, const char **out)
{
    if (*i + 1 >= argc) {
        fprintf(stderr, "polis gateway: %s needs a value\n", argv[*i]);
        return -1;
    }
    *out = argv[++*i];
    return 0;
}

/* Build a configuration from quick-mode flags: one cluster, one route matching everything. */
static struct polis_config *quick_config(int argc, char **argv)
{
    struct polis_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL)
        return NULL;
    polis__config_defaults(cfg);
    cfg->source = strdup("command line");
    cfg->has_admin = false;
    cfg->clusters = calloc(1, sizeof(*cfg->clusters));
    cfg->routes = calloc(1, sizeof(*cfg->routes));
    if (cfg->source == NULL || cfg->clusters == NULL || cfg->routes == NULL)
        goto fail;
    cfg->num_clusters = 1;
    cfg->num_routes = 1;
    struct polis_cluster_cfg *c = &cfg->clusters[0];
    c->name = strdup("upstream");
    c->lb = POLIS_LB_ROUND_ROBIN;
    c->keepalive = 64;
    c->connect_timeout_ms = 2000;
    c->timeout_ms = 30000;
    struct polis_route_cfg *r = &cfg->routes[0];
    r->name = strdup("default");
    r->cluster = strdup("upstream");
    if (c->name == NULL || r->name == NULL || r->cluster == NULL)
        goto fail;
    bool have_listen = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "--listen") == 0) {
            if (flag_value(argc, argv, &i, &v) < 0)
                goto fail;
            if (polis__addr_parse(v, &cfg->listen) < 0) {
                fprintf(stderr, "polis gateway: --listen %s: expected HOST:PORT\n", v);
                goto fail;
            }
            have_listen = true;
        } else if (strcmp(a, "--upstream") == 0) {
            if (flag_value(argc, argv, &i, &v) < 0)
                goto fail;
            if (add_upstream(c, v) < 0) {
                fprintf(stderr, "polis gateway: --upstream %s: expected HOST:PORT\n", v);
                goto fail;
            }
        } else if (strcmp(a, "--workers") == 0) {
            if (flag_value(argc, argv, &i, &v) < 0)
                goto fail;
            char *end;
            errno = 0;
            long n = strtol(v, &end, 10);
            if (errno != 0 || *end != '\0' || n < 0 || n > 256) {
                fprintf(stderr, "polis gateway: --workers %s: expected 0..256\n", v);
                goto fail;
            }
            cfg->workers = (int)n;
        } else if (strcmp(a, "--admin") == 0) {
            if (flag_value(argc, argv, &i, &v) < 0)
                goto fail;
            if (polis__addr_parse(v, &cfg->admin) < 0) {
                fprintf(stderr, "polis gateway: --admin %s: expected HOST:PORT\n", v);
                goto fail;
            }
            cfg->has_admin = true;
        } else if (strcmp(a, "--access-log") == 0) {
            if (flag_value(argc, argv, &i, &v) < 0)
                goto fail;
            free(cfg->access_log);
            cfg->access_log = strdup(v);
        } else if (strcmp(a, "--upstream-timeout") == 0) {
            if (flag_value(argc, argv, &i, &v) < 0)
                goto fail;
            if (polis_parse_duration((struct polis_str){v, strlen(v)}, &c->timeout_ms) < 0 ||
                c->timeout_ms == 0) {
                fprintf(stderr,
                        "polis gateway: --upstream-timeout %s: expected a duration "
                        "such as 500ms, 5s, 1m\n",
                        v);
                goto fail;
            }
        } else if (strcmp(a, "--max-body") == 0) {
            if (flag_value(argc, argv, &i, &v) < 0)
                goto fail;
            if (polis_parse_size((struct polis_str){v, strlen(v)}, &cfg->limits.max_body) < 0) {
                fprintf(stderr, "polis gateway: --max-body %s: expected a size such as 1MiB\n", v);
                goto fail;
            }
        } else {
            fprintf(stderr, "polis gateway: unknown argument '%s'\n", a);
            usage(stderr);
            goto fail;
        }
    }
    if (!have_listen || c->num_instances == 0) {
        fprintf(stderr, "polis gateway: quick mode needs --listen and at least one --upstream "
                        "(or use -c FILE)\n");
        goto fail;
    }
    struct polis_config_errors errs = {0};
    if (polis__config_validate(cfg, &errs) < 0) {
        print_errors(&errs);
        polis__config_errors_free(&errs);
        goto fail;
    }
    return cfg;
fail:
    polis__config_free(cfg);
    return NULL;
}

static int cmd_gateway(int argc, char **argv)
{
    const char *path = NULL;
    if (argc >= 2 && (strcmp(argv[0], "-c") == 0 || strcmp(argv[0], "--config") == 0)) {
        if (argc > 2) {
            fprintf(stderr, "polis gateway: -c FILE takes no other arguments\n");
            return 2;
        }
        path = argv[1];
        struct polis_config *cfg = NULL;
        struct polis_config_errors errs = {0};
        if (polis__config_load_file(path, &cfg, &errs) < 0) {
            print_errors(&errs);
            polis__config_errors_free(&errs);
            return 1;
        }
        return polis__gateway_main(cfg, path);
    }
    struct polis_config *cfg = quick_config(argc, argv);
    if (cfg == NULL)
        return 2;
    return polis__gateway_main(cfg, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "gateway") == 0)
        return cmd_gateway(argc - 2, argv + 2);
    if (strcmp(cmd, "check") == 0)
        return cmd_check(argc - 2, argv + 2);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("polis %s\n", POLIS_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "polis: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
