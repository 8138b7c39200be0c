/* apikey.h: consumers, their API keys stored as SHA-256 hashes, per-route allow/deny by consumer
 * or group, and a slot that swaps a whole consumer set atomically under readers. */
#ifndef POLIS_SECURITY_APIKEY_H
#define POLIS_SECURITY_APIKEY_H

#include <polis/core.h>

#include <stdbool.h>
#include <stdint.h>

/* "sha256:" and 64 lowercase hex digits, without the NUL. */
#define POLIS_APIKEY_HASH_LEN 71
/* Consumer and group names: 1..POLIS_CONSUMER_NAME_MAX bytes of [A-Za-z0-9._~@+-] (they are
 * forwarded to services in a header, so nothing else is allowed). */
#define POLIS_CONSUMER_NAME_MAX 128
#define POLIS_CONSUMER_MAX_GROUPS 64
/* Largest number of consumers, and of keys, in one set. */
#define POLIS_CONSUMERS_MAX (1u << 20)

/* Write the stored form of a plain key: "sha256:<hex of SHA-256(key)>" and a NUL into out.
 * Returns 0, or POLIS_EINVAL for an empty key. (Shell: printf %s "$KEY" | sha256sum.) */
int polis__apikey_hash(struct polis_str key, char out[POLIS_APIKEY_HASH_LEN + 1]);

/* Write a new random key (32 bytes from the OpenSSL CSPRNG in base64url, 43 characters) and a NUL
 * into out (cap >= 44). Returns 0, POLIS_EINVAL when cap is too small, or POLIS_ESYS when the
 * generator fails. */
int polis__apikey_generate(char *out, size_t cap);

/* A consumer: an identity that requests are attributed to. Owned by its set. */
struct polis_consumer {
    const char *name;
    const char *const *groups;
    size_t num_groups;
    uint32_t index; /* its position in the set, 0.. in order of polis__consumers_add() */
};

/* A set of consumers and keys: filled by one thread, then sealed; a sealed set never changes
 * and may be read by any number of threads. Reference counted: the creator holds one. */
struct polis_consumers;

/* An empty, unsealed set with one reference. Returns 0 and *out, or POLIS_ENOMEM. */
int polis__consumers_new(struct polis_consumers **out);

/* Add a consumer (name and groups copied). Refused with POLIS_EINVAL and a message in err
 * (errcap bytes, err may be NULL): a bad or duplicate name, a bad group name, too many groups or
 * consumers, or a sealed set. Returns 0, POLIS_EINVAL or POLIS_ENOMEM. */
int polis__consumers_add(struct polis_consumers *s, const char *name, const char *const *groups,
                         size_t num_groups, char *err, size_t errcap);

/* Give the consumer named consumer a key, in stored form ("sha256:" and 64 hex digits, either
 * case). Refused: an unknown consumer, a malformed hash, too many keys, a sealed set. A key
 * given twice (to one or two consumers) is refused by polis__consumers_seal(). Returns 0,
 * POLIS_EINVAL (message in err) or POLIS_ENOMEM. */
int polis__consumers_add_key(struct polis_consumers *s, const char *consumer, const char *stored,
                             char *err, size_t errcap);

/* The same with the key's SHA-256 digest in binary (the configuration stores keys that way). */
int polis__consumers_add_key_digest(struct polis_consumers *s, const char *consumer,
                                    const uint8_t digest[32], char *err, size_t errcap);

/* Build the lookup table; the set is then read-only. Returns 0, POLIS_EINVAL when two keys have
 * the same hash (message in err), or POLIS_ENOMEM. */
int polis__consumers_seal(struct polis_consumers *s, char *err, size_t errcap);

/* The consumer whose key is key (the plain key as presented), or NULL. The key is hashed with
 * SHA-256, the hash looked up in an open-addressing table keyed on its first bytes, and the
 * candidate compared in constant time (CRYPTO_memcmp), so the time taken says nothing about how
 * close a wrong key came. Sealed sets only (NULL otherwise). Any thread. */
const struct polis_consumer *polis__consumers_lookup_key(const struct polis_consumers *s,
                                                         struct polis_str key);

/* The consumer with this name, or NULL. Any thread, sealed or not (not concurrently with add). */
const struct polis_consumer *polis__consumers_find(const struct polis_consumers *s,
                                                   struct polis_str name);

/* How many consumers and keys the set holds. */
size_t polis__consumers_count(const struct polis_consumers *s);
size_t polis__consumers_keys(const struct polis_consumers *s);

/* Take and drop a reference; the last drop frees the set. Any thread. NULL is fine. */
void polis__consumers_ref(struct polis_consumers *s);
void polis__consumers_unref(struct polis_consumers *s);

/* ---- Per-route access by consumer and group --------------------------------------------- */

/* A route's rule; the strings belong to the configuration. */
struct polis_consumer_acl {
    const char *const *allow_consumers;
    size_t num_allow_consumers;
    const char *const *allow_groups;
    size_t num_allow_groups;
    const char *const *deny_consumers;
    size_t num_deny_consumers;
    const char *const *deny_groups;
    size_t num_deny_groups;
};

/* Whether consumer c may use the route. Deny wins: c named in deny_consumers or a member of a
 * deny group is refused. Then, when the rule has any allow entry, c must be named in
 * allow_consumers or be a member of an allow group. A rule with no allow entry allows everyone
 * not denied. acl == NULL allows everyone. c == NULL (no consumer identified) is allowed only by
 * a rule without allow entries: authentication is a separate requirement of the route. */
bool polis__consumer_acl_allows(const struct polis_consumer_acl *acl,
                                const struct polis_consumer *c);

/* ---- Atomic replacement ------------------------------------------------------------------ */

/* Holds the current set. Readers take a reference without a lock; a writer (the admin API, a
 * reload) publishes a new sealed set, waits until no reader can still be between reading the
 * old pointer and taking its reference (a grace period over two reader counters, as userspace
 * RCU does), then drops the slot's reference to the old set. Readers holding a reference keep
 * using the old set until they drop it. */
struct polis_consumers_slot;

/* A slot holding initial (its reference moves into the slot; NULL: empty). Returns 0 and *out,
 * or POLIS_ENOMEM (initial is then still the caller's). */
int polis__consumers_slot_new(struct polis_consumers *initial, struct polis_consumers_slot **out);

/* Free the slot and drop its reference. No reader or writer may be using it. */
void polis__consumers_slot_free(struct polis_consumers_slot *slot);

/* A new reference to the current set (NULL when empty): release it with
 * polis__consumers_unref(). Lock-free: five atomic operations. Any thread. Long-lived users
 * (a worker) keep their reference and take a new one when polis__consumers_slot_version()
 * changes. */
struct polis_consumers *polis__consumers_slot_get(struct polis_consumers_slot *slot);

/* Publish next (sealed; its reference moves into the slot; NULL empties the slot) and release
 * the previous set once no reader can be about to take a reference to it. Writers are
 * serialised; readers never wait. Any thread but not from inside a reader. */
void polis__consumers_slot_replace(struct polis_consumers_slot *slot, struct polis_consumers *next);

/* Incremented by every replace. Any thread. */
uint64_t polis__consumers_slot_version(struct polis_consumers_slot *slot);

#endif
