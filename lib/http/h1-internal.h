/* h1-internal.h: parser internals exposed to its unit test, not to users. */
#ifndef POLIS_HTTP_H1_INTERNAL_H
#define POLIS_HTTP_H1_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

/* The parser's byte scanners, by kind. */
enum {
    POLIS_H1_SCAN_LF,
    POLIS_H1_SCAN_VALUE,
    POLIS_H1_SCAN_TARGET,
    POLIS_H1_SCAN_TOKEN,
    POLIS_H1_SCAN_HOST
};

/* Run scanner kind on [p, hi) with loads allowed in [lo, hi), vectorised (fast) or as the
 * scalar twin it must agree with; returns the offset of the first stop byte from p (hi - p
 * when none). Any thread. */
size_t polis__h1_scan(int kind, bool fast, const char *lo, const char *p, const char *hi);

#endif
