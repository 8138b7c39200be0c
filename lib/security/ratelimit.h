/* ratelimit.h: rate limiting with GCRA (one theoretical arrival time per key), exact across the
 * worker threads of one process (a shared key table) or across gateways (a Lua script in Redis),
 * with a configured fallback while Redis is unreachable. Design: docs/internals/ratelimit.md. */
#ifndef POLIS_SECURITY_RATELIMIT_H
#define POLIS_SECURITY_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits on the options (they keep every computation exact in 64-bit integers and in the
 * doubles of Redis' Lua). */
#define POLIS_RATELIMIT_MAX_RATE (1u << 20)       /* requests per period */
#define POLIS_RATELIMIT_MAX_BURST (1u << 20)      /* requests at once */
#define POLIS_RATELIMIT_MAX_PERIOD_MS 0xffffffffu /* about 49 days */
#define POLIS_RATELIMIT_MAX_KEYS (1u << 26)
#define POLIS_RATELIMIT_MAX_NAME 64 /* bytes of a policy name */
/* Keys longer than this are replaced by their SHA-256 (locally and in Redis). */
#define POLIS_RATELIMIT_KEY_INLINE 48

/* ---- Redis connection (shared by the limiters that use one Redis) ------------------------- */

struct polis_ratelimit_redis_opts {
    /* "host:port", "[v6addr]:port" or "unix:/path". A host name is resolved by the blocking
     * resolver inside connect: prefer an address. Copied. */
    const char *address;
    const char *password; /* AUTH on every new connection; NULL: none. Copied. */
    uint32_t timeout_ms;  /* connect and each command; 0: 50 ms */
    uint32_t retry_ms;    /* after a failure, fall back this long before trying again; 0: 1000 */
    uint32_t max_idle;    /* idle connections kept for reuse; 0: 32 */
};

/* Connection state and counters of one Redis. */
struct polis_ratelimit_redis_stats {
    bool up;              /* false while falling back (until a probe succeeds) */
    uint64_t connects;    /* connections opened (including failed attempts) */
    uint64_t errors;      /* failed connects and commands */
    uint64_t outages;     /* times it went from up to down */
    uint32_t connections; /* open connections (idle and in use) */
};

struct polis_ratelimit_redis;

/* Create the connection pool of one Redis. Connects nothing yet (the first decision does), and
 * starts "up". Returns 0 and *out, POLIS_EINVAL (no address, bad address) or POLIS_ENOMEM. The
 * process must ignore SIGPIPE (the gateway does): hiredis writes with plain write(). */
int polis__ratelimit_redis_new(const struct polis_ratelimit_redis_opts *o,
                               struct polis_ratelimit_redis **out);
/* Close every connection and free r (NULL is fine). Every limiter using r must be freed first. */
void polis__ratelimit_redis_free(struct polis_ratelimit_redis *r);
/* A snapshot. Any thread. */
void polis__ratelimit_redis_stats(struct polis_ratelimit_redis *r,
                                  struct polis_ratelimit_redis_stats *out);

/* ---- Limiters ----------------------------------------------------------------------------- */

/* What a limiter does with a decision while its Redis is unreachable. */
enum polis_ratelimit_failure {
    POLIS_RATELIMIT_FAIL_OPEN = 0, /* allow (no headers), counted as a fallback */
    POLIS_RATELIMIT_FAIL_CLOSED,   /* deny with 503 and Retry-After: the time until the next try */
    POLIS_RATELIMIT_FAIL_LOCAL,    /* apply the same limit in this process only */
};

struct polis_ratelimit_opts {
    /* The policy's name: 1..POLIS_RATELIMIT_MAX_NAME bytes, no ':', space or control byte. It
     * namespaces the keys in Redis ("polis:rl:<name>:..."), so gateways whose policies have the
     * same name share their counts. Copied. */
    const char *name;
    uint32_t rate;      /* requests per period, 1..POLIS_RATELIMIT_MAX_RATE */
    uint64_t period_ms; /* 1..POLIS_RATELIMIT_MAX_PERIOD_MS */
    /* The bucket: requests allowed at once from a key that was idle, and RateLimit-Limit.
     * 0: rate. At most POLIS_RATELIMIT_MAX_BURST. */
    uint32_t burst;
    /* Keys held by the local table (the local backend, or the local fallback). 0: 65536. At
     * most POLIS_RATELIMIT_MAX_KEYS. Memory is allocated at creation: about 80 bytes a key. */
    uint32_t max_keys;
    /* NULL: the local backend. Otherwise decisions are taken in this Redis (it must outlive the
     * limiter) and on_failure says what happens while it is unreachable. */
    struct polis_ratelimit_redis *redis;
    enum polis_ratelimit_failure on_failure;
};

/* Who took a decision. */
enum polis_ratelimit_source {
    POLIS_RATELIMIT_SRC_LOCAL = 0,   /* the local backend */
    POLIS_RATELIMIT_SRC_REDIS,       /* the Redis script */
    POLIS_RATELIMIT_SRC_FAIL_OPEN,   /* Redis unreachable: allowed by fail-open */
    POLIS_RATELIMIT_SRC_FAIL_CLOSED, /* Redis unreachable: denied by fail-closed */
    POLIS_RATELIMIT_SRC_FAIL_LOCAL,  /* Redis unreachable: the local table decided */
};

/* One decision and what the response headers need. Times are exact and rounded up to the ms;
 * headers carry them in whole seconds, rounded up (polis__ratelimit_secs()). */
struct polis_ratelimit_decision {
    bool allowed;
    /* limit, remaining and reset_ms are known (false for fail-open and fail-closed, whose
     * responses should carry no RateLimit-* headers). */
    bool headers;
    uint16_t status; /* 0 when allowed; 429 over the limit, 503 when failing closed */
    uint8_t source;  /* enum polis_ratelimit_source */
    uint32_t limit;  /* RateLimit-Limit: the burst */
    /* RateLimit-Remaining: requests that would be allowed right now after this one */
    uint32_t remaining;
    /* RateLimit-Reset: until the bucket is full again (limit requests allowed at once) */
    uint64_t reset_ms;
    /* Retry-After when denied: until one request would be allowed (>= 1). 0 when allowed. */
    uint64_t retry_after_ms;
};

/* Counters for metrics, summed over threads (each a monotonic count except keys). */
struct polis_ratelimit_stats {
    uint64_t decisions;      /* every check */
    uint64_t denied;         /* checks that were denied (429 and 503) */
    uint64_t fallback;       /* checks decided by on_failure because Redis was unreachable */
    uint64_t redis_errors;   /* checks whose Redis call failed (error replies, I/O, timeouts) */
    uint64_t keys;           /* keys in the local table now (idle ones included) */
    uint64_t evicted_idle;   /* keys dropped from a full table while idle: nothing lost */
    uint64_t evicted_active; /* keys dropped while not idle: they start again with a full bucket */
};

struct polis_ratelimit;

/* Create a limiter from o (strings are copied). Returns 0 and *out, POLIS_EINVAL (bad option:
 * see the fields) or POLIS_ENOMEM. Allocates its whole local table here, and nothing per check
 * (except Redis connections). */
int polis__ratelimit_new(const struct polis_ratelimit_opts *o, struct polis_ratelimit **out);
/* Free rl (NULL is fine). No thread may be using it. */
void polis__ratelimit_free(struct polis_ratelimit *rl);

/* Decide on one request of the key [key, key + keylen) (opaque bytes, any length; NULL is fine
 * when keylen is 0) at now_ms, a monotonic clock in ms (the loop's time; threads may pass
 * slightly different values, each at most 2^42). Fills *d and returns d->allowed. Any thread.
 * Local backend: a lookup under a shared stripe lock and a compare-and-swap, well under a
 * microsecond. Redis backend: one round trip on a pooled connection of the calling thread,
 * blocking at most timeout_ms (plus one connect of at most timeout_ms when a new connection is
 * needed); while Redis is unreachable, on_failure decides without blocking, and once every
 * retry_ms one caller probes Redis again (blocking at most about 2 * timeout_ms). */
bool polis__ratelimit_check(struct polis_ratelimit *rl, const void *key, size_t keylen,
                            uint64_t now_ms, struct polis_ratelimit_decision *d);

/* A snapshot of the counters. Any thread. */
void polis__ratelimit_stats(struct polis_ratelimit *rl, struct polis_ratelimit_stats *out);

/* The policy's name (NUL-terminated, owned by rl). */
const char *polis__ratelimit_name(const struct polis_ratelimit *rl);

/* Whole seconds for a header, rounded up: 1..1000 ms -> 1. */
static inline uint64_t polis__ratelimit_secs(uint64_t ms)
{
    return ms / 1000 + (ms % 1000 != 0);
}

/* Write the response header lines of d into buf ("RateLimit-Limit: 10\r\nRateLimit-Remaining:
 * 0\r\nRateLimit-Reset: 3\r\n", then "Retry-After: 1\r\n" when denied; only Retry-After when
 * d->headers is false and the request was denied; nothing for an allowed fail-open). Returns
 * the length written (a NUL follows it), or POLIS_ETOOBIG when cap is too small (128 is
 * always enough). */
int polis__ratelimit_headers(const struct polis_ratelimit_decision *d, char *buf, size_t cap);

#endif
