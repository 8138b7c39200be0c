/* etcd.h: the etcd v3 discovery source: instances are keys under a prefix, read with a range and
 * followed with a watch through etcd's JSON gateway (HTTP/1.1, no gRPC library). */
#ifndef POLIS_REGISTRY_ETCD_H
#define POLIS_REGISTRY_ETCD_H

#include "registry/discovery.h"

#include <stdint.h>

struct polis_etcd_source;

/* Start following cfg->etcd_prefix on cfg->etcd_endpoints ("http://host[:port]", port 2379 by
 * default; names are resolved at each connection) on a thread of its own. Each key
 * "<prefix><id>" holds {"address", "port", "metadata"} (polis__instance_from_json); a key whose
 * value is not a valid instance is skipped with one warning. The thread range-reads the prefix,
 * calls fn with the complete set, then watches from the next revision and calls fn after each
 * watch response that changed the set (never with a partial set, never twice with the same
 * set). On any error it moves to the next endpoint after a backoff (100 ms doubling to 5 s, with
 * jitter) and resyncs with a fresh range. fn runs on the source's thread only.
 * The source copies what it needs from cfg. Returns 0 and *out, POLIS_EINVAL (no endpoint, an
 * endpoint that is not http://host[:port], no prefix), POLIS_ENOMEM or POLIS_ESYS. */
int polis__etcd_source_start(const struct polis_discovery_cfg *cfg, polis_disc_fn fn, void *ud,
                             struct polis_etcd_source **out);

/* Stop the thread at once, whatever it is doing (connecting, reading a watch stream, waiting to
 * reconnect), join it and free s. fn is never called once this returns, nor while it runs
 * after the thread saw the request. Any thread but the source's own (not from fn); NULL is
 * ignored. */
void polis__etcd_source_stop(struct polis_etcd_source *s);

/* What the source is doing, for the admin API. */
struct polis_etcd_status {
    bool connected;       /* a watch stream is open and the set is in sync */
    char endpoint[128];   /* the endpoint connected to, or the last one tried */
    int64_t revision;     /* the etcd revision the set reflects (0: none yet) */
    char last_error[256]; /* the last error, "" when none happened */
    uint64_t reconnects;  /* sessions that ended in an error */
    uint64_t updates;     /* calls of fn */
    size_t num_instances; /* in the current set (invalid keys left out) */
    size_t invalid_keys;  /* keys under the prefix skipped because of their value */
};

/* Fill *out with a snapshot of the source's status. Any thread. */
void polis__etcd_source_status(struct polis_etcd_source *s, struct polis_etcd_status *out);

/* ---- Helpers, exposed for tests ------------------------------------------------------------- */

/* Base64 (RFC 4648, with padding) of src[0..len) into out[0..cap): NUL-terminated. Returns the
 * text's length, or POLIS_ETOOBIG when cap is smaller than 4 * ceil(len / 3) + 1. */
int polis__etcd_b64_encode(const void *src, size_t len, char *out, size_t cap);

/* Decode base64 text src[0..len) (padding required when the length is not a multiple of 4, no
 * whitespace) into out, which must hold len / 4 * 3 bytes. Returns 0 and *out_len, or
 * POLIS_EINVAL (a character outside the alphabet, bad padding, non-zero trailing bits). */
int polis__etcd_b64_decode(const char *src, size_t len, unsigned char *out, size_t *out_len);

/* The end of the key range of every key starting with prefix[0..len): the prefix with its last
 * byte below 0xff incremented and what follows dropped; a single zero byte (etcd's "to the end
 * of the keyspace") when every byte is 0xff or the prefix is empty. Writes to out (room for len
 * bytes, at least 1) and returns its length. */
size_t polis__etcd_prefix_end(const unsigned char *prefix, size_t len, unsigned char *out);

#endif
