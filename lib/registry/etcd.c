/* etcd.c: the etcd v3 discovery source: a thread that range-reads a key prefix through etcd's
 * JSON gateway, then follows it with a watch stream, and resyncs after any error (etcd.h,
 * docs/internals/discovery-etcd.md). */
#include "registry/etcd.h"

#include "http/blocking.h"

#include <polis/http.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 2000
#define REQUEST_TIMEOUT_MS 10000 /* a range: sending it and reading the whole answer */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* etcd 3.4 sends a progress notification on an idle watch every 10 minutes (progress_notify):
 * a stream silent for longer than this is dead even if TCP keepalive did not notice. */
#define WATCH_IDLE_MS (15 * 60 * 1000)
#define MAX_BODY (64u << 20) /* a range answer, or one watch response line */
#define MAX_HEAD 16384
#define MAX_HEADERS 64
#define READ_CHUNK 65536
#define MAX_ENDPOINT 200 /* "host:port" */
#define MAX_ID 256       /* bytes of a key after the prefix */

/* One key under the prefix, whose value is an instance or not. */
struct entry {
    char *id;
    int64_t mod_revision;
    bool valid;
    struct polis_instance_cfg inst; /* when valid; inst.id is the entry's id */
};

struct polis_etcd_source {
    polis_disc_fn fn;
    void *ud;
    char **endpoints; /* "host:port" */
    size_t num_endpoints;
    char *prefix;
    size_t prefix_len;
    char *key_b64; /* the prefix and the end of its range, in base64 for the JSON requests */
    char *end_b64;
    pthread_t thread;
    int wake[2]; /* polis__etcd_source_stop writes a byte to wake[1] */
    atomic_bool stopping;

    /* The source's thread only. */
    struct entry *entries;
    size_t num_entries;
    struct polis_instance_cfg *delivered; /* the set fn was last called with */
    size_t num_delivered;
    bool has_delivered;
    int64_t revision;
    uint64_t rng;
    char last_logged[256]; /* the last error logged as a warning (repeats go to debug) */

    pthread_mutex_t mu; /* guards st */
    struct polis_etcd_status st;
};

/* ---- Base64 and key ranges ------------------------------------------------------------------ */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int polis__etcd_b64_encode(const void *src, size_t len, char *out, size_t cap)
{
    const unsigned char *p = src;
    size_t need = (len + 2) / 3 * 4;
    if (cap <= need)
        return POLIS_ETOOBIG;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64_alphabet[v & 63] : '=';
    }
    out[o] = '\0';
    return (int)o;
}

/* The value of one base64 character, or -1. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int polis__etcd_b64_decode(const char *src, size_t len, unsigned char *out, size_t *out_len)
{
    if (len % 4 != 0)
        return POLIS_EINVAL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)src[i + k];
            if (c == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad > 0) /* "=" followed by a character */
                return POLIS_EINVAL;
            if ((v[k] = b64_value(c)) < 0)
                return POLIS_EINVAL;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        /* The bits a padded group leaves over must be zero (one text per byte string). */
        if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
            return POLIS_EINVAL;
        out[o++] = (unsigned char)(w >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(w >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)w;
    }
    *out_len = o;
    return 0;
}

size_t polis__etcd_prefix_end(const unsigned char *prefix, size_t len, unsigned char *out)
{
    size_t n = len;
    while (n > 0 && prefix[n - 1] == 0xff)
        n--;
    if (n == 0) {
        out[0] = 0;
        return 1;
    }
    memcpy(out, prefix, n);
    out[n - 1]++;
    return n;
}

/* A malloc'ed base64 text of src[0..len), or NULL. */
static char *b64_dup(const void *src, size_t len)
{
    size_t cap = (len + 2) / 3 * 4 + 1;
    char *s = malloc(cap);
    if (s != NULL)
        polis__etcd_b64_encode(src, len, s, cap);
    return s;
}

/* Decode a JSON base64 string into a malloc'ed NUL-terminated buffer. Returns NULL when j is not
 * a string, is not base64, or memory ran out. */
static unsigned char *b64_json(const json_t *j, size_t *len)
{
    if (!json_is_string(j))
        return NULL;
    size_t n = json_string_length(j);
    unsigned char *out = malloc(n / 4 * 3 + 1);
    if (out == NULL)
        return NULL;
    if (polis__etcd_b64_decode(json_string_value(j), n, out, len) < 0) {
        free(out);
        return NULL;
    }
    out[*len] = '\0';
    return out;
}

/* An int64 in etcd's JSON: proto3 writes them as strings ("42"), omits zeros. Returns false
 * when v is present but neither an integer nor a decimal string. */
static bool json_int64(const json_t *v, int64_t *out)
{
    *out = 0;
    if (v == NULL)
        return true;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return true;
    }
    if (!json_is_string(v) || json_string_length(v) == 0)
        return false;
    char *end;
    errno = 0;
    long long x = strtoll(json_string_value(v), &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = x;
    return true;
}

/* ---- Status and errors ---------------------------------------------------------------------- */

/* An error of the current session: its text, kept until the session ends. */
struct session_err {
    char msg[256];
};

/* Format the error and return rc (for "return fail(...)"). */
__attribute__((format(printf, 3, 4))) static int fail(struct session_err *e, int rc,
                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return rc;
}

/* The text of an I/O error code (errno for POLIS_ESYS). */
static const char *io_error(int rc)
{
    switch (rc) {
    case POLIS_ESYS:
        return strerror(errno);
    case POLIS_ETIMEDOUT:
        return "timed out";
    case POLIS_ECLOSED:
        return "connection closed";
    case POLIS_ETOOBIG:
        return "answer over its size limit";
    case POLIS_ENOMEM:
        return "out of memory";
    case POLIS_ENOTFOUND:
        return "address does not resolve";
    default:
        return "invalid HTTP answer";
    }
}

static void status_set_connected(struct polis_etcd_source *s, bool connected)
{
    pthread_mutex_lock(&s->mu);
    s->st.connected = connected;
    pthread_mutex_unlock(&s->mu);
}

/* ---- Interruptible socket I/O --------------------------------------------------------------- */

/* The deadline-bounded helpers of blocking.h wait on one descriptor; the source must also wake
 * when it is stopped, so its waits poll the wake pipe too (sends, which are small requests into
 * an empty socket buffer, use polis__send_all as they are). */

/* Wait until fd (-1: none) is ready for events, the source is stopped or the deadline (UINT64_MAX:
 * none) passes. Returns 0, POLIS_ETIMEDOUT, POLIS_ECLOSED (stopped) or POLIS_ESYS. */
static int wait_fd(struct polis_etcd_source *s, int fd, short events, uint64_t deadline)
{
    for (;;) {
        if (atomic_load(&s->stopping))
            return POLIS_ECLOSED;
        int timeout = -1;
        if (deadline != UINT64_MAX) {
            uint64_t now = polis__mono_ms();
            if (now >= deadline)
                return POLIS_ETIMEDOUT;
            timeout = deadline - now > INT_MAX ? INT_MAX : (int)(deadline - now);
        }
        struct pollfd p[2] = {{.fd = s->wake[0], .events = POLLIN}, {.fd = fd, .events = events}};
        int n = poll(p, fd >= 0 ? 2 : 1, timeout);
        if (n < 0 && errno != EINTR)
            return POLIS_ESYS;
        if (n > 0 && p[0].revents != 0)
            return POLIS_ECLOSED;
        if (n > 0)
            return 0;
    }
}

/* Connect to one address by CONNECT_TIMEOUT_MS, with TCP keepalive so that a vanished host ends
 * a silent watch stream within a minute. Returns 0 and *out, or POLIS_ETIMEDOUT, POLIS_ECLOSED
 * (stopped), POLIS_ESYS (errno). */
static int connect_one(struct polis_etcd_source *s, const struct addrinfo *ai, int *out)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return POLIS_ESYS;
    int rc = POLIS_ESYS;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS && errno != EINTR)
            goto fail;
        rc = wait_fd(s, fd, POLLOUT, polis__mono_ms() + CONNECT_TIMEOUT_MS);
        if (rc < 0)
            goto fail;
        rc = POLIS_ESYS;
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            goto fail;
        if (err != 0) {
            errno = err;
            goto fail;
        }
    }
    int one = 1, idle = 20, intvl = 5, cnt = 4;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    *out = fd;
    return 0;
fail:;
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Resolve hostport ("host:port", "[v6]:port"; a name resolves at each call, so DNS changes are
 * followed) and connect to its addresses in turn ("localhost" may give ::1 first while etcd
 * listens on 127.0.0.1 only). Returns 0 and *out, or POLIS_ENOTFOUND, POLIS_ETIMEDOUT,
 * POLIS_ECLOSED (stopped), POLIS_ESYS (errno: the last address's failure), POLIS_ENOMEM. */
static int conn_open(struct polis_etcd_source *s, const char *hostport, int *out)
{
    char host[MAX_ENDPOINT + 1];
    const char *colon = strrchr(hostport, ':');
    size_t hlen = (size_t)(colon - hostport);
    if (hostport[0] == '[') { /* endpoint_parse made sure of "[...]:port" */
        hostport++;
        hlen -= 2;
    }
    memcpy(host, hostport, hlen);
    host[hlen] = '\0';
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(host, colon + 1, &hints, &res);
    if (g != 0)
        return g == EAI_MEMORY ? POLIS_ENOMEM : g == EAI_SYSTEM ? POLIS_ESYS : POLIS_ENOTFOUND;
    int rc = POLIS_ENOTFOUND;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        rc = connect_one(s, ai, out);
        if (rc == 0 || rc == POLIS_ECLOSED)
            break;
    }
    int e = errno;
    freeaddrinfo(res);
    errno = e;
    return rc;
}

/* One connection to an endpoint and the bytes received on it, not yet used. */
struct conn {
    struct polis_etcd_source *s;
    const char *hostport;
    int fd;
    struct polis_buf in;
};

/* Receive more bytes into c->in. Returns 0, POLIS_ECLOSED (FIN, or stopped), POLIS_ETIMEDOUT,
 * POLIS_ESYS, POLIS_ETOOBIG (c->in is full) or POLIS_ENOMEM. */
static int read_more(struct conn *c, uint64_t deadline)
{
    int rc = polis_buf_reserve(&c->in, READ_CHUNK);
    if (rc < 0)
        return rc;
    for (;;) {
        ssize_t n = recv(c->fd, c->in.data + c->in.end, c->in.size - c->in.end, 0);
        if (n > 0) {
            c->in.end += (size_t)n;
            return 0;
        }
        if (n == 0)
            return POLIS_ECLOSED;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return POLIS_ESYS;
        if ((rc = wait_fd(c->s, c->fd, POLLIN, deadline)) < 0)
            return rc;
    }
}

/* Send "POST path" with a JSON body. Returns 0, or an I/O error of polis__send_all. */
static int send_post(struct conn *c, const char *path, const struct polis_buf *body, bool watch,
                     uint64_t deadline)
{
    char head[512];
    /* Grpc-Metadata-Hasleader: the gateway passes it on as gRPC metadata "hasleader", with which
     * etcd cancels a watch on a member that lost its leader (a partitioned member would
     * otherwise keep a silent stream open). */
    int n = snprintf(head, sizeof(head),
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "%sContent-Length: %zu\r\n\r\n",
                     path, c->hostport, watch ? "Grpc-Metadata-Hasleader: true\r\n" : "",
                     polis_buf_len(body));
    if (n < 0 || (size_t)n >= sizeof(head))
        return POLIS_ETOOBIG;
    struct iovec iov[2] = {{head, (size_t)n}, {polis_buf_head(body), polis_buf_len(body)}};
    return polis__send_all(c->fd, iov, 2, deadline);
}

static const struct polis_h1_limits answer_limits = {
    .max_request_line = MAX_HEAD,
    .max_head = MAX_HEAD,
    .max_headers = MAX_HEADERS,
};

/* Read an answer's head (skipping 1xx) and consume it from c->in. Returns 0 and fills m (its views
 * are not kept: only the scalar fields may be used), or an error of read_more, POLIS_EBADMSG. */
static int read_head(struct conn *c, struct polis_h1_msg *m, uint64_t deadline)
{
    struct polis_h1_header headers[MAX_HEADERS];
    size_t scan = 0, head_len = 0;
    for (;;) {
        if (polis_buf_len(&c->in) > 0) {
            m->headers = headers;
            int rc = polis_h1_parse_response(polis_buf_head(&c->in), polis_buf_len(&c->in), &scan,
                                             m, MAX_HEADERS, &answer_limits, false, &head_len);
            if (rc == 0) {
                polis_buf_consume(&c->in, head_len);
                m->headers = NULL;
                m->num_headers = 0;
                if (m->status >= 200)
                    return 0;
                if (m->status == 101)
                    return POLIS_EBADMSG;
                scan = 0;
                continue;
            }
            if (rc != POLIS_EAGAIN)
                return POLIS_EBADMSG;
        }
        int rc = read_more(c, deadline);
        if (rc == POLIS_ETOOBIG)
            return POLIS_EBADMSG;
        if (rc < 0)
            return rc;
    }
}

/* Where the reading of an answer's body is. */
struct body {
    enum polis_h1_body kind;
    uint64_t left; /* POLIS_BODY_LENGTH */
    struct polis_h1_chunked ch;
    bool done;
};

static void body_init(struct body *b, const struct polis_h1_msg *m)
{
    memset(b, 0, sizeof(*b));
    b->kind = m->body;
    b->left = m->content_length;
    polis_h1_chunked_init(&b->ch, 0);
    b->done = b->kind == POLIS_BODY_NONE || (b->kind == POLIS_BODY_LENGTH && b->left == 0);
}

/* Move the next payload bytes of the body into out (receiving when none are waiting), or mark it
 * done. Returns 0, an error of read_more (POLIS_ETOOBIG when out is full), or POLIS_EBADMSG
 * (bad framing, or closed before the end). */
static int body_step(struct conn *c, struct body *b, struct polis_buf *out, uint64_t deadline)
{
    int rc;
    if (polis_buf_len(&c->in) == 0) {
        rc = read_more(c, deadline);
        if (rc == POLIS_ECLOSED && b->kind == POLIS_BODY_CLOSE && !atomic_load(&c->s->stopping)) {
            b->done = true;
            return 0;
        }
        if (rc == POLIS_ECLOSED && !atomic_load(&c->s->stopping))
            return POLIS_EBADMSG;
        if (rc < 0)
            return rc;
    }
    const char *p = polis_buf_head(&c->in);
    size_t len = polis_buf_len(&c->in);
    switch (b->kind) {
    case POLIS_BODY_LENGTH: {
        size_t take = b->left < len ? (size_t)b->left : len;
        if ((rc = polis_buf_append(out, p, take)) < 0)
            return rc;
        polis_buf_consume(&c->in, take);
        b->left -= take;
        b->done = b->left == 0;
        return 0;
    }
    case POLIS_BODY_CHUNKED: {
        /* The payload is never longer than the bytes it came in. */
        if ((rc = polis_buf_reserve(out, len)) < 0)
            return rc;
        size_t consumed = 0, out_len = 0;
        rc = polis_h1_chunked_feed(&b->ch, p, len, &consumed, out->data + out->end, &out_len);
        if (rc < 0)
            return POLIS_EBADMSG;
        out->end += out_len;
        polis_buf_consume(&c->in, consumed);
        b->done = rc == 1;
        return 0;
    }
    case POLIS_BODY_CLOSE:
        if ((rc = polis_buf_append(out, p, len)) < 0)
            return rc;
        polis_buf_consume(&c->in, len);
        return 0;
    case POLIS_BODY_NONE:
        b->done = true;
        return 0;
    }
    return POLIS_EBADMSG;
}

/* ---- The set of instances ------------------------------------------------------------------- */

static void entry_clear(struct entry *e)
{
    free(e->id);
    if (e->valid) {
        e->inst.id = NULL; /* the same string as e->id */
        polis__instance_clear(&e->inst);
    }
    memset(e, 0, sizeof(*e));
}

static void entries_free(struct entry *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        entry_clear(&v[i]);
    free(v);
}

static ssize_t entry_find(const struct entry *v, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].id, id) == 0)
            return (ssize_t)i;
    return -1;
}

/* Whether an invalid value of this key at this revision was already reported (a resync reads
 * the same bad value again: it is not worth a second warning). */
static bool warned_before(const struct polis_etcd_source *s, const char *id, int64_t mod_rev)
{
    ssize_t i = entry_find(s->entries, s->num_entries, id);
    return i >= 0 && !s->entries[i].valid && s->entries[i].mod_revision == mod_rev;
}

/* Build the entry of one etcd kv ({"key", "value", "mod_revision", ...}, base64 key and value).
 * Returns 1 and fills *e, 0 when the key is not one of the source's (outside the prefix, or an
 * id that is empty, too long or holds control bytes: warned), or POLIS_ENOMEM. An invalid value
 * gives a valid = false entry, warned once. */
static int entry_from_kv(struct polis_etcd_source *s, const json_t *kv, struct entry *e)
{
    memset(e, 0, sizeof(*e));
    size_t klen = 0, vlen = 0;
    unsigned char *key = b64_json(json_object_get(kv, "key"), &klen);
    if (key == NULL) {
        polis_warn("etcd %s: a watch or range answer holds a key that is not base64: skipped",
                   s->prefix);
        return 0;
    }
    size_t idlen = klen - s->prefix_len;
    bool ok = klen > s->prefix_len && memcmp(key, s->prefix, s->prefix_len) == 0 && idlen <= MAX_ID;
    for (size_t i = s->prefix_len; ok && i < klen; i++)
        if (key[i] < 0x20 || key[i] == 0x7f)
            ok = false;
    if (!ok) {
        polis_warn("etcd %s: key %.300s skipped: expected the prefix then an id of 1 to %d "
                   "printable bytes",
                   s->prefix, (const char *)key, MAX_ID);
        free(key);
        return 0;
    }
    e->id = strndup((const char *)key + s->prefix_len, idlen);
    free(key);
    if (e->id == NULL)
        return POLIS_ENOMEM;
    if (!json_int64(json_object_get(kv, "mod_revision"), &e->mod_revision))
        e->mod_revision = -1;

    char err[160] = "value: expected base64";
    unsigned char *val = b64_json(json_object_get(kv, "value"), &vlen);
    if (json_object_get(kv, "value") == NULL) { /* proto3 omits an empty value */
        snprintf(err, sizeof(err), "body: expected a JSON object");
    } else if (val != NULL) {
        json_error_t je;
        json_t *j = json_loadb((const char *)val, vlen, JSON_REJECT_DUPLICATES, &je);
        if (j == NULL) {
            snprintf(err, sizeof(err), "body: invalid JSON: %.100s", je.text);
        } else {
            int rc = polis__instance_from_json(j, NULL, &e->inst, err, sizeof(err));
            json_decref(j);
            if (rc == POLIS_ENOMEM) {
                free(val);
                entry_clear(e);
                return POLIS_ENOMEM;
            }
            if (rc == 0) {
                e->valid = true;
                e->inst.id = e->id;
            }
        }
    }
    free(val);
    if (!e->valid && !warned_before(s, e->id, e->mod_revision))
        polis_warn("etcd %s%s: instance skipped: %s", s->prefix, e->id, err);
    return 1;
}

static int cmp_instance_id(const void *a, const void *b)
{
    const struct polis_instance_cfg *x = a, *y = b;
    return strcmp(x->id, y->id);
}

/* Call fn with the valid entries (sorted by id) unless they are the set fn last had. Returns 0 or
 * POLIS_ENOMEM. */
static int deliver(struct polis_etcd_source *s)
{
    size_t n = 0, invalid = 0;
    struct polis_instance_cfg *v = calloc(s->num_entries ? s->num_entries : 1, sizeof(*v));
    if (v == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < s->num_entries; i++) {
        if (s->entries[i].valid)
            v[n++] = s->entries[i].inst; /* shallow: fn copies what it keeps */
        else
            invalid++;
    }
    qsort(v, n, sizeof(*v), cmp_instance_id);
    bool changed =
        !s->has_delivered || !polis__instances_equal(v, n, s->delivered, s->num_delivered);
    struct polis_instance_cfg *copy = NULL;
    int rc = changed ? polis__instances_copy(v, n, &copy) : 0;
    /* The status first: whoever fn tells can read a status that matches the set. */
    pthread_mutex_lock(&s->mu);
    s->st.revision = s->revision;
    s->st.num_instances = n;
    s->st.invalid_keys = invalid;
    if (changed && rc == 0)
        s->st.updates++;
    pthread_mutex_unlock(&s->mu);
    if (changed && rc == 0) {
        if (!atomic_load(&s->stopping))
            s->fn(s->ud, v, n);
        polis__instances_free(s->delivered, s->num_delivered);
        s->delivered = copy;
        s->num_delivered = n;
        s->has_delivered = true;
    }
    free(v);
    return rc;
}

/* Apply one watch event ({"type": "DELETE" or absent for PUT, "kv": {...}}). Returns 0 or
 * POLIS_ENOMEM. */
static int apply_event(struct polis_etcd_source *s, const json_t *ev)
{
    const json_t *type = json_object_get(ev, "type");
    const json_t *kv = json_object_get(ev, "kv");
    if (!json_is_object(kv))
        return 0;
    bool del = json_is_string(type) && strcmp(json_string_value(type), "DELETE") == 0;
    if (del) {
        size_t klen;
        unsigned char *key = b64_json(json_object_get(kv, "key"), &klen);
        if (key == NULL)
            return 0;
        if (klen > s->prefix_len && memcmp(key, s->prefix, s->prefix_len) == 0) {
            ssize_t i = entry_find(s->entries, s->num_entries, (char *)key + s->prefix_len);
            if (i >= 0) {
                entry_clear(&s->entries[i]);
                s->entries[i] = s->entries[--s->num_entries];
            }
        }
        free(key);
        return 0;
    }
    struct entry e;
    int rc = entry_from_kv(s, kv, &e);
    if (rc <= 0)
        return rc;
    ssize_t i = entry_find(s->entries, s->num_entries, e.id);
    if (i >= 0) {
        entry_clear(&s->entries[i]);
        s->entries[i] = e;
        return 0;
    }
    struct entry *grown = realloc(s->entries, (s->num_entries + 1) * sizeof(*grown));
    if (grown == NULL) {
        entry_clear(&e);
        return POLIS_ENOMEM;
    }
    s->entries = grown;
    s->entries[s->num_entries++] = e;
    return 0;
}

/* ---- Range and watch ------------------------------------------------------------------------ */

/* The error etcd's gateway puts in a failed answer ({"error": "...", "message": "..."}, or in a
 * stream {"error": {"message": ...}}), or "" */
static const char *etcd_message(const json_t *j)
{
    const json_t *e = json_object_get(j, "error");
    const json_t *m = json_object_get(json_is_object(e) ? e : j, "message");
    if (json_is_string(m))
        return json_string_value(m);
    return json_is_string(e) ? json_string_value(e) : "";
}

/* Read the whole prefix (POST /v3/kv/range), replace the entries with it and deliver the set.
 * Returns 0, or an error with its text in *err. *keep_alive says whether c may be used again. */
static int range_read(struct polis_etcd_source *s, struct conn *c, bool *keep_alive,
                      struct session_err *err)
{
    struct polis_buf req, body;
    polis_buf_init(&req, MAX_BODY);
    polis_buf_init(&body, MAX_BODY);
    json_t *j = NULL;
    struct entry *fresh = NULL;
    size_t num_fresh = 0;
    uint64_t deadline = polis__mono_ms() + REQUEST_TIMEOUT_MS;
    int rc =
        polis_buf_printf(&req, "{\"key\":\"%s\",\"range_end\":\"%s\"}", s->key_b64, s->end_b64);
    if (rc < 0) {
        rc = fail(err, rc, "range: %s", io_error(rc));
        goto out;
    }
    if ((rc = send_post(c, "/v3/kv/range", &req, false, deadline)) < 0) {
        rc = fail(err, rc, "range: send: %s", io_error(rc));
        goto out;
    }
    struct polis_h1_msg m;
    if ((rc = read_head(c, &m, deadline)) < 0) {
        rc = fail(err, rc, "range: %s", io_error(rc));
        goto out;
    }
    *keep_alive = m.keep_alive && m.body != POLIS_BODY_CLOSE;
    struct body b;
    body_init(&b, &m);
    while (!b.done)
        if ((rc = body_step(c, &b, &body, deadline)) < 0) {
            rc = fail(err, rc, "range: %s", io_error(rc));
            goto out;
        }
    json_error_t je;
    j = json_loadb(polis_buf_head(&body), polis_buf_len(&body), 0, &je);
    if (m.status != 200) {
        rc = fail(err, POLIS_EBADMSG, "range: status %d: %.160s", m.status, etcd_message(j));
        goto out;
    }
    const json_t *kvs = json_object_get(j, "kvs");
    int64_t rev = 0;
    if (!json_is_object(j) || (kvs != NULL && !json_is_array(kvs)) ||
        !json_int64(json_object_get(json_object_get(j, "header"), "revision"), &rev) || rev <= 0) {
        rc = fail(err, POLIS_EBADMSG, "range: unexpected answer (no header.revision or kvs)");
        goto out;
    }
    fresh = calloc(json_array_size(kvs) + 1, sizeof(*fresh));
    if (fresh == NULL) {
        rc = fail(err, POLIS_ENOMEM, "range: out of memory");
        goto out;
    }
    for (size_t i = 0; i < json_array_size(kvs); i++) {
        rc = entry_from_kv(s, json_array_get(kvs, i), &fresh[num_fresh]);
        if (rc < 0) {
            rc = fail(err, rc, "range: out of memory");
            goto out;
        }
        num_fresh += (size_t)rc;
    }
    entries_free(s->entries, s->num_entries);
    s->entries = fresh;
    s->num_entries = num_fresh;
    fresh = NULL;
    num_fresh = 0;
    s->revision = rev;
    if ((rc = deliver(s)) < 0)
        rc = fail(err, rc, "range: out of memory");
out:
    entries_free(fresh, num_fresh);
    json_decref(j);
    polis_buf_free(&req);
    polis_buf_free(&body);
    return rc;
}

/* Handle one watch response line. Returns 0, 1 when it was the creation of the watch, or an error
 * (canceled, compacted, an error object, invalid JSON) with its text in *err. */
static int watch_line(struct polis_etcd_source *s, const char *p, size_t n, struct session_err *err)
{
    json_error_t je;
    json_t *j = json_loadb(p, n, 0, &je);
    if (j == NULL)
        return fail(err, POLIS_EBADMSG, "watch: invalid JSON: %.100s", je.text);
    int rc = 0;
    const json_t *r = json_object_get(j, "result");
    if (!json_is_object(r)) {
        rc = fail(err, POLIS_EBADMSG, "watch: %.200s", etcd_message(j));
        goto out;
    }
    int64_t rev = 0, compact = 0;
    if (!json_int64(json_object_get(json_object_get(r, "header"), "revision"), &rev) ||
        !json_int64(json_object_get(r, "compact_revision"), &compact)) {
        rc = fail(err, POLIS_EBADMSG, "watch: unexpected answer");
        goto out;
    }
    if (json_is_true(json_object_get(r, "canceled"))) {
        const json_t *why = json_object_get(r, "cancel_reason");
        if (compact > 0)
            rc = fail(err, POLIS_EBADMSG, "watch: revision %lld was compacted (oldest %lld)",
                      (long long)s->revision + 1, (long long)compact);
        else
            rc = fail(err, POLIS_EBADMSG, "watch canceled: %.200s",
                      json_is_string(why) ? json_string_value(why) : "no reason given");
        goto out;
    }
    const json_t *events = json_object_get(r, "events");
    for (size_t i = 0; i < json_array_size(events); i++)
        if ((rc = apply_event(s, json_array_get(events, i))) < 0) {
            rc = fail(err, rc, "watch: out of memory");
            goto out;
        }
    if (rev > s->revision)
        s->revision = rev;
    if (json_array_size(events) == 0) { /* created, or a progress notification: no change */
        pthread_mutex_lock(&s->mu);
        s->st.revision = s->revision;
        pthread_mutex_unlock(&s->mu);
    } else if ((rc = deliver(s)) < 0) {
        rc = fail(err, rc, "watch: out of memory");
        goto out;
    }
    rc = json_is_true(json_object_get(r, "created")) ? 1 : 0;
out:
    json_decref(j);
    return rc;
}

/* Open a watch from the revision after the range and follow it until an error (a watch never
 * ends well). *since is set to when it was created (0: never). Returns the error, its text in
 * *err. */
static int watch_follow(struct polis_etcd_source *s, struct conn *c, uint64_t *since,
                        struct session_err *err)
{
    struct polis_buf req, lines;
    polis_buf_init(&req, MAX_BODY);
    polis_buf_init(&lines, MAX_BODY);
    uint64_t deadline = polis__mono_ms() + REQUEST_TIMEOUT_MS;
    int rc = polis_buf_printf(&req,
                              "{\"create_request\":{\"key\":\"%s\",\"range_end\":\"%s\","
                              "\"start_revision\":\"%lld\",\"progress_notify\":true}}",
                              s->key_b64, s->end_b64, (long long)s->revision + 1);
    if (rc < 0) {
        rc = fail(err, rc, "watch: %s", io_error(rc));
        goto out;
    }
    if ((rc = send_post(c, "/v3/watch", &req, true, deadline)) < 0) {
        rc = fail(err, rc, "watch: send: %s", io_error(rc));
        goto out;
    }
    struct polis_h1_msg m;
    if ((rc = read_head(c, &m, deadline)) < 0) {
        rc = fail(err, rc, "watch: %s", io_error(rc));
        goto out;
    }
    if (m.status != 200) {
        rc = fail(err, POLIS_EBADMSG, "watch: status %d", m.status);
        goto out;
    }
    struct body b;
    body_init(&b, &m);
    size_t scanned = 0; /* bytes of lines known to hold no newline */
    for (;;) {
        /* The gateway writes one JSON object per watch response, each ending with a newline (one
         * chunk each, but lines are found in the decoded payload, wherever chunks split it). */
        char *start = polis_buf_head(&lines);
        size_t len = polis_buf_len(&lines);
        char *nl = len > scanned ? memchr(start + scanned, '\n', len - scanned) : NULL;
        if (nl != NULL) {
            size_t line = (size_t)(nl - start);
            rc = watch_line(s, start, line, err);
            polis_buf_consume(&lines, line + 1);
            scanned = 0;
            if (rc < 0)
                goto out;
            if (rc == 1 && *since == 0) {
                *since = polis__mono_ms();
                status_set_connected(s, true);
                polis_info("etcd %s: following %s from revision %lld (%zu keys)", s->prefix,
                           c->hostport, (long long)s->revision, s->num_entries);
            }
            continue;
        }
        scanned = len;
        if (b.done) {
            rc = fail(err, POLIS_ECLOSED, "watch: etcd ended the stream");
            goto out;
        }
        /* Before creation the answer is due by the request deadline; after it, silence is
         * bounded by the progress notifications etcd sends. */
        uint64_t wait_until = *since == 0 ? deadline : polis__mono_ms() + WATCH_IDLE_MS;
        rc = body_step(c, &b, &lines, wait_until);
        if (rc == POLIS_ETOOBIG) {
            rc = fail(err, rc, "watch: a response over %u bytes", MAX_BODY);
            goto out;
        }
        if (rc < 0) {
            rc = fail(err, rc, "watch: %s", io_error(rc));
            goto out;
        }
    }
out:
    polis_buf_free(&req);
    polis_buf_free(&lines);
    return rc;
}

/* One session with one endpoint: connect, range, watch until an error. Returns the error (its
 * text in *err) and how long the watch was open in *watched_ms. */
static int session(struct polis_etcd_source *s, const char *hostport, uint64_t *watched_ms,
                   struct session_err *err)
{
    struct conn c = {.s = s, .hostport = hostport, .fd = -1};
    polis_buf_init(&c.in, MAX_BODY + MAX_HEAD);
    uint64_t since = 0;
    *watched_ms = 0;
    pthread_mutex_lock(&s->mu);
    snprintf(s->st.endpoint, sizeof(s->st.endpoint), "http://%s", hostport);
    pthread_mutex_unlock(&s->mu);
    int rc = conn_open(s, hostport, &c.fd);
    if (rc < 0) {
        rc = fail(err, rc, "connect: %s", io_error(rc));
        goto out;
    }
    bool keep_alive = false;
    if ((rc = range_read(s, &c, &keep_alive, err)) < 0)
        goto out;
    if (!keep_alive) {
        close(c.fd);
        c.fd = -1;
        polis_buf_consume(&c.in, polis_buf_len(&c.in));
        if ((rc = conn_open(s, hostport, &c.fd)) < 0) {
            rc = fail(err, rc, "connect: %s", io_error(rc));
            goto out;
        }
    }
    rc = watch_follow(s, &c, &since, err);
out:
    if (since != 0)
        *watched_ms = polis__mono_ms() - since;
    if (c.fd >= 0)
        close(c.fd);
    polis_buf_free(&c.in);
    return rc;
}

/* A pseudo-random number for backoff jitter (xorshift64). */
static uint64_t next_random(struct polis_etcd_source *s)
{
    uint64_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->rng = x;
    return x;
}

static void *source_main(void *arg)
{
    struct polis_etcd_source *s = arg;
    uint64_t backoff = BACKOFF_MIN_MS;
    size_t ep = 0;
    while (!atomic_load(&s->stopping)) {
        struct session_err err = {{0}};
        uint64_t watched_ms = 0;
        session(s, s->endpoints[ep], &watched_ms, &err);
        if (atomic_load(&s->stopping))
            break;
        status_set_connected(s, false);
        pthread_mutex_lock(&s->mu);
        snprintf(s->st.last_error, sizeof(s->st.last_error), "http://%.100s: %.120s",
                 s->endpoints[ep], err.msg);
        s->st.reconnects++;
        pthread_mutex_unlock(&s->mu);
        /* A stream that worked for a while starts the backoff again; an endpoint that keeps
         * failing at once (or a watch canceled as soon as created) does not. */
        if (watched_ms >= BACKOFF_MAX_MS)
            backoff = BACKOFF_MIN_MS;
        /* Warn when something new goes wrong; the same failure again is only debug. */
        char line[256];
        snprintf(line, sizeof(line), "http://%.100s: %.120s", s->endpoints[ep], err.msg);
        if (watched_ms > 0 || strcmp(line, s->last_logged) != 0)
            polis_warn("etcd %s: %s; reconnecting", s->prefix, line);
        else
            polis_debug("etcd %s: %s; reconnecting", s->prefix, line);
        memcpy(s->last_logged, line, sizeof(line));
        ep = (ep + 1) % s->num_endpoints;
        /* Half fixed, half random: a fleet of gateways does not reconnect in step. */
        uint64_t delay = backoff / 2 + next_random(s) % (backoff / 2 + 1);
        wait_fd(s, -1, 0, polis__mono_ms() + delay);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    return NULL;
}

/* ---- Start and stop ------------------------------------------------------------------------- */

/* "http://host[:port][/]" into a malloc'ed "host:port" (port 2379 by default). Returns NULL when
 * the endpoint is not that (https, a path, a bad port, an IPv6 address without brackets) or
 * memory ran out. */
static char *endpoint_parse(const char *url)
{
    const char *p = url;
    if (strncasecmp(p, "http://", 7) == 0)
        p += 7;
    else if (strstr(p, "://") != NULL)
        return NULL; /* https and others: not supported */
    size_t n = strlen(p);
    if (n > 0 && p[n - 1] == '/')
        n--;
    if (n == 0 || n > MAX_ENDPOINT)
        return NULL;
    char host[MAX_ENDPOINT + 1];
    memcpy(host, p, n);
    host[n] = '\0';
    const char *port = NULL;
    if (host[0] == '[') {
        char *close = strchr(host, ']');
        if (close == NULL || close == host + 1 || (close[1] != '\0' && close[1] != ':'))
            return NULL;
        if (close[1] == ':')
            port = close + 2;
        else
            close[1] = '\0';
    } else {
        char *colon = strchr(host, ':');
        if (colon != NULL) {
            if (strchr(colon + 1, ':') != NULL || colon == host)
                return NULL;
            port = colon + 1;
        }
    }
    for (const char *h = host; *h; h++)
        if ((unsigned char)*h <= 0x20 || *h == '/' || *h == '?' || *h == '#' || *h == '@' ||
            (unsigned char)*h >= 0x7f)
            return NULL;
    if (port != NULL) {
        size_t pl = strlen(port);
        if (pl == 0 || pl > 5 || strspn(port, "0123456789") != pl)
            return NULL;
        long v = strtol(port, NULL, 10);
        if (v < 1 || v > 65535)
            return NULL;
        return strdup(host);
    }
    char out[MAX_ENDPOINT + 8];
    snprintf(out, sizeof(out), "%s:2379", host);
    return strdup(out);
}

static void source_free(struct polis_etcd_source *s)
{
    for (size_t i = 0; i < s->num_endpoints; i++)
        free(s->endpoints[i]);
    free(s->endpoints);
    free(s->prefix);
    free(s->key_b64);
    free(s->end_b64);
    entries_free(s->entries, s->num_entries);
    polis__instances_free(s->delivered, s->num_delivered);
    if (s->wake[0] >= 0)
        close(s->wake[0]);
    if (s->wake[1] >= 0)
        close(s->wake[1]);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int polis__etcd_source_start(const struct polis_discovery_cfg *cfg, polis_disc_fn fn, void *ud,
                             struct polis_etcd_source **out)
{
    if (cfg == NULL || fn == NULL || out == NULL || cfg->num_etcd_endpoints == 0 ||
        cfg->etcd_prefix == NULL || cfg->etcd_prefix[0] == '\0')
        return POLIS_EINVAL;
    struct polis_etcd_source *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return POLIS_ENOMEM;
    s->fn = fn;
    s->ud = ud;
    s->wake[0] = s->wake[1] = -1;
    pthread_mutex_init(&s->mu, NULL);
    atomic_init(&s->stopping, false);
    s->rng = polis__mono_ms() ^ (uint64_t)(uintptr_t)s ^ 0x9e3779b97f4a7c15ull;
    int rc = POLIS_ENOMEM;
    s->endpoints = calloc(cfg->num_etcd_endpoints, sizeof(*s->endpoints));
    if (s->endpoints == NULL)
        goto fail;
    for (size_t i = 0; i < cfg->num_etcd_endpoints; i++) {
        if (cfg->etcd_endpoints[i] == NULL ||
            (s->endpoints[i] = endpoint_parse(cfg->etcd_endpoints[i])) == NULL) {
            rc = POLIS_EINVAL;
            goto fail;
        }
        s->num_endpoints++;
    }
    s->prefix_len = strlen(cfg->etcd_prefix);
    s->prefix = strdup(cfg->etcd_prefix);
    unsigned char *end = malloc(s->prefix_len);
    if (s->prefix == NULL || end == NULL) {
        free(end);
        goto fail;
    }
    size_t end_len = polis__etcd_prefix_end((const unsigned char *)s->prefix, s->prefix_len, end);
    s->key_b64 = b64_dup(s->prefix, s->prefix_len);
    s->end_b64 = b64_dup(end, end_len);
    free(end);
    if (s->key_b64 == NULL || s->end_b64 == NULL)
        goto fail;
    rc = POLIS_ESYS;
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0)
        goto fail;
    int e = pthread_create(&s->thread, NULL, source_main, s);
    if (e != 0) {
        errno = e;
        goto fail;
    }
    *out = s;
    return 0;
fail:
    source_free(s);
    return rc;
}

void polis__etcd_source_stop(struct polis_etcd_source *s)
{
    if (s == NULL)
        return;
    atomic_store(&s->stopping, true);
    char one = 1;
    ssize_t w;
    do
        w = write(s->wake[1], &one, 1);
    while (w < 0 && errno == EINTR);
    pthread_join(s->thread, NULL);
    source_free(s);
}

void polis__etcd_source_status(struct polis_etcd_source *s, struct polis_etcd_status *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    pthread_mutex_unlock(&s->mu);
}
