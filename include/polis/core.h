/* polis/core.h: errors, string views, the event loop, timers, buffers, arenas and logging. */
#ifndef POLIS_CORE_H
#define POLIS_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

#define POLIS_API __attribute__((visibility("default")))

/* ---- Errors ------------------------------------------------------------------------------- */

/* Commands return 0 or one of these negative codes. */
enum polis_err {
    POLIS_OK = 0,
    POLIS_EAGAIN = -1,      /* try again later: incomplete input, would block */
    POLIS_ENOMEM = -2,      /* allocation failed */
    POLIS_EINVAL = -3,      /* invalid argument */
    POLIS_EBADMSG = -4,     /* malformed or ambiguous message: 400 */
    POLIS_ETOOBIG = -5,     /* a hard cap was hit (generic) */
    POLIS_EURITOOLONG = -6, /* request line over its limit: 414 */
    POLIS_EHDRTOOBIG = -7,  /* header section over its limits: 431 */
    POLIS_EBODYTOOBIG = -8, /* body over its limit: 413 */
    POLIS_EVERSION = -9,    /* HTTP version not supported: 505 */
    POLIS_ECLOSED = -10,    /* the peer closed the connection */
    POLIS_ETIMEDOUT = -11,  /* a timer expired */
    POLIS_ESYS = -12,       /* a system call failed; errno says why */
    POLIS_ENOTFOUND = -13,  /* no such thing */
    POLIS_ENOTIMPL = -14,   /* understood but not implemented: 501 */
};

/* A static English description of a polis_err code. Never NULL. */
POLIS_API const char *polis_strerror(int err);

/* ---- String views ------------------------------------------------------------------------- */

/* A string is a pointer and a length; it is not NUL-terminated and does not own its bytes. */
struct polis_str {
    const char *p;
    size_t len;
};

#define POLIS_STR(lit) ((struct polis_str){(lit), sizeof(lit) - 1})

/* True when a and b hold the same bytes. */
POLIS_API bool polis_str_eq(struct polis_str a, struct polis_str b);
/* True when a and b are equal ignoring ASCII case. */
POLIS_API bool polis_str_caseeq(struct polis_str a, struct polis_str b);

/* ---- Event loop --------------------------------------------------------------------------- */

struct polis_loop;
struct polis_watch;

enum {
    POLIS_EV_READ = 1u << 0,  /* readable, or the peer closed */
    POLIS_EV_WRITE = 1u << 1, /* writable */
    POLIS_EV_ERROR = 1u << 2, /* error or hang-up on the descriptor */
    POLIS_EV_HUP = 1u << 3,   /* the peer closed its sending side (comes with POLIS_EV_READ) */
};

/* Called on the loop's thread with the events seen (POLIS_EV_* bits). */
typedef void (*polis_watch_fn)(struct polis_loop *loop, struct polis_watch *w, unsigned events);

/* A watched descriptor; embed it in the object that owns the descriptor. */
struct polis_watch {
    int fd;
    unsigned events;
    polis_watch_fn cb;
};

/* Create a loop for the calling thread. Returns NULL on failure (errno set). */
POLIS_API struct polis_loop *polis_loop_new(void);
/* Free a loop; every watch and timer must have been removed first. */
POLIS_API void polis_loop_free(struct polis_loop *loop);

/* Watch fd for events (POLIS_EV_READ | POLIS_EV_WRITE), edge-triggered: after an event the
 * callback must read or write until POLIS_EAGAIN before it is told again. w must stay valid until
 * polis_loop_del(). Returns 0 or POLIS_ESYS. */
POLIS_API int polis_loop_add(struct polis_loop *loop, struct polis_watch *w, int fd,
                             unsigned events, polis_watch_fn cb);
/* Change the events watched. Returns 0 or POLIS_ESYS. */
POLIS_API int polis_loop_mod(struct polis_loop *loop, struct polis_watch *w, unsigned events);
/* Stop watching w (the descriptor is not closed). Events already gathered for w in this
 * iteration are dropped, so w may be freed right after. */
POLIS_API void polis_loop_del(struct polis_loop *loop, struct polis_watch *w);

/* Run until polis_loop_stop(). Returns 0, or POLIS_ESYS if epoll failed. */
POLIS_API int polis_loop_run(struct polis_loop *loop);
/* Ask the loop to return after the current iteration. Loop thread only. */
POLIS_API void polis_loop_stop(struct polis_loop *loop);
/* Milliseconds on a monotonic clock, read once per iteration. */
POLIS_API uint64_t polis_loop_now(const struct polis_loop *loop);
/* Re-read the clock now (for code that measures inside one iteration). */
POLIS_API uint64_t polis_loop_update_time(struct polis_loop *loop);

/* A hook called once per iteration after the events were handled, before the loop sleeps
 * (flush batched output there). Only one; NULL removes it. */
typedef void (*polis_loop_hook_fn)(struct polis_loop *loop, void *ud);
POLIS_API void polis_loop_set_flush(struct polis_loop *loop, polis_loop_hook_fn fn, void *ud);

/* Cross-thread wake-up: polis_async_send() from any thread makes cb run on the loop's thread
 * (several sends before it runs coalesce into one call). */
struct polis_async;
typedef void (*polis_async_fn)(struct polis_async *a);
struct polis_async {
    struct polis_watch w;
    struct polis_loop *loop;
    polis_async_fn cb;
};
/* Returns 0 or POLIS_ESYS. */
POLIS_API int polis_async_init(struct polis_loop *loop, struct polis_async *a, polis_async_fn cb);
/* Thread-safe and async-signal-safe. */
POLIS_API void polis_async_send(struct polis_async *a);
POLIS_API void polis_async_close(struct polis_async *a);

/* ---- Timers ------------------------------------------------------------------------------- */

struct polis_timer;
typedef void (*polis_timer_fn)(struct polis_loop *loop, struct polis_timer *t);

/* A one-shot timer kept on the loop's timing wheel; embed it in its owner. */
struct polis_timer {
    struct polis_timer *next, *prev;
    uint64_t expire; /* loop time in ms */
    polis_timer_fn cb;
};

POLIS_API void polis_timer_init(struct polis_timer *t, polis_timer_fn cb);
/* Fire cb once, timeout_ms from the loop's time. Re-arming an armed timer moves it, except that
 * a move of less than the wheel's tick is skipped (cheap re-arms on every read). */
POLIS_API void polis_timer_arm(struct polis_loop *loop, struct polis_timer *t, uint64_t timeout_ms);
/* Disarm; harmless when not armed. */
POLIS_API void polis_timer_cancel(struct polis_loop *loop, struct polis_timer *t);
POLIS_API bool polis_timer_armed(const struct polis_timer *t);

/* ---- Buffers ------------------------------------------------------------------------------ */

/* Fixed-size blocks from a per-thread pool: the memory of connection buffers. With
 * POLIS_POOL_DEBUG every block is a fresh malloc so sanitizers see each one. */
#define POLIS_BLOCK_SIZE 16384

/* Returns a block of POLIS_BLOCK_SIZE bytes, or NULL. */
POLIS_API char *polis_block_get(void);
/* Return a block taken by polis_block_get() on any thread (it joins that thread's cache). */
POLIS_API void polis_block_put(char *block);

/* A byte buffer with a hard cap fixed at creation: [start, end) holds the unread bytes. */
struct polis_buf {
    char *data;
    size_t start, end, size; /* size: bytes allocated */
    size_t cap;              /* never grows past this */
};

/* Set up an empty buffer that may grow to cap bytes; allocates nothing yet. */
POLIS_API void polis_buf_init(struct polis_buf *b, size_t cap);
/* Release the memory (the buffer may be used again: it re-allocates on demand). */
POLIS_API void polis_buf_free(struct polis_buf *b);
/* Make room for at least want more bytes after end (moving unread bytes to the front when that
 * is enough). Returns 0, POLIS_ETOOBIG past the cap, or POLIS_ENOMEM. */
POLIS_API int polis_buf_reserve(struct polis_buf *b, size_t want);
/* Append bytes. Returns 0, POLIS_ETOOBIG or POLIS_ENOMEM. Inline: it is on every hot path. */
static inline int polis_buf_append(struct polis_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (b->size - b->end < n || b->end - b->start > b->cap - n) {
        int rc = polis_buf_reserve(b, n);
        if (rc < 0)
            return rc;
    }
    memcpy(b->data + b->end, p, n);
    b->end += n;
    return 0;
}
/* Append formatted text. Returns 0, POLIS_ETOOBIG or POLIS_ENOMEM. */
POLIS_API int polis_buf_printf(struct polis_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Drop n bytes from the front. */
POLIS_API void polis_buf_consume(struct polis_buf *b, size_t n);
static inline size_t polis_buf_len(const struct polis_buf *b)
{
    return b->end - b->start;
}
/* The first unread byte; NULL for a buffer that holds no memory (NULL + 0 is undefined). */
static inline char *polis_buf_head(const struct polis_buf *b)
{
    return b->data != NULL ? b->data + b->start : NULL;
}

/* ---- I/O layers -------------------------------------------------------------------------- */

/* Connection I/O goes through a small table of operations so that the HTTP code does not know
 * whether bytes travel over a plain socket, TLS (a later layer) or memory (tests, fuzzers). */
struct polis_io;

struct polis_io_ops {
    /* Read up to len bytes. Returns the count (> 0), 0 at the end of the stream, or -1 with
     * errno set (EAGAIN when nothing is ready now). */
    ssize_t (*read)(struct polis_io *io, void *buf, size_t len);
    /* Write from iov. Returns the bytes taken (>= 0) or -1 with errno (EAGAIN: try later).
     * Never raises SIGPIPE. */
    ssize_t (*writev)(struct polis_io *io, const struct iovec *iov, int iovcnt);
    /* Stop sending: the peer reads the end of the stream after what was written. */
    void (*shutdown)(struct polis_io *io);
};

struct polis_io {
    const struct polis_io_ops *ops;
    int fd;    /* the descriptor the loop watches (-1 for memory) */
    void *ctx; /* the layer's state */
};

/* Plain non-blocking sockets: io->fd is the socket. */
POLIS_API extern const struct polis_io_ops polis_io_socket_ops;

static inline void polis_io_socket(struct polis_io *io, int fd)
{
    io->ops = &polis_io_socket_ops;
    io->fd = fd;
    io->ctx = NULL;
}
static inline ssize_t polis_io_read(struct polis_io *io, void *buf, size_t len)
{
    return io->ops->read(io, buf, len);
}
static inline ssize_t polis_io_writev(struct polis_io *io, const struct iovec *iov, int n)
{
    return io->ops->writev(io, iov, n);
}

/* An in-memory peer: reads are served from `in` (at most `read_chunk` bytes per call when not
 * 0, then EAGAIN once per chunk boundary when `stutter` is set), then end of stream when `eof`
 * is set or EAGAIN otherwise; writes are appended to `out` (at most `write_chunk` bytes per call
 * when not 0, so callers see short writes). Owned by the caller; `out` must be initialised. */
struct polis_io_mem {
    const char *in;
    size_t in_len, in_pos;
    size_t read_chunk, write_chunk;
    bool eof, stutter, stalled;
    bool shut; /* shutdown() was called */
    struct polis_buf out;
};

POLIS_API extern const struct polis_io_ops polis_io_mem_ops;

static inline void polis_io_memory(struct polis_io *io, struct polis_io_mem *m)
{
    io->ops = &polis_io_mem_ops;
    io->fd = -1;
    io->ctx = m;
}

/* ---- Arenas ------------------------------------------------------------------------------- */

/* A per-request arena: many small allocations freed in one step. Not thread-safe. */
struct polis_arena;

/* Create an arena. Returns NULL on allocation failure. */
POLIS_API struct polis_arena *polis_arena_new(void);
/* Allocate n bytes aligned for any type; valid until reset or free. Returns NULL on failure. */
POLIS_API void *polis_arena_alloc(struct polis_arena *a, size_t n);
/* Copy a string view into the arena (NUL-terminated). */
POLIS_API char *polis_arena_strdup(struct polis_arena *a, struct polis_str s);
/* Free everything allocated but keep the first block for reuse. */
POLIS_API void polis_arena_reset(struct polis_arena *a);
POLIS_API void polis_arena_free(struct polis_arena *a);

/* ---- Logging ------------------------------------------------------------------------------ */

enum polis_log_level { POLIS_LOG_DEBUG, POLIS_LOG_INFO, POLIS_LOG_WARN, POLIS_LOG_ERROR };

/* Log one structured line (JSON: time, level, msg) to the error log, stderr by default.
 * Thread-safe: each line is written with one write(). */
POLIS_API void polis_log(enum polis_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
POLIS_API void polis_log_set_level(enum polis_log_level level);
/* Attach a request id and a trace id to every line the calling thread logs from now on, as the
 * fields "request_id" and "trace_id" (an empty view leaves its field out); pass two empty views
 * to stop. The SDK server sets them around each handler, the gateway around each request's
 * log lines. Bytes past 64 (request id) or 32 (trace id) are cut. */
POLIS_API void polis_log_set_context(struct polis_str request_id, struct polis_str trace_id);
/* Send the error log to fd (not closed by Polis). */
POLIS_API void polis_log_set_fd(int fd);

#define polis_debug(...) polis_log(POLIS_LOG_DEBUG, __VA_ARGS__)
#define polis_info(...) polis_log(POLIS_LOG_INFO, __VA_ARGS__)
#define polis_warn(...) polis_log(POLIS_LOG_WARN, __VA_ARGS__)
#define polis_error(...) polis_log(POLIS_LOG_ERROR, __VA_ARGS__)

/* ---- Parsing helpers for configuration values ---------------------------------------------- */

/* "500ms", "5s", "2m", "1h" (a bare number means ms) -> milliseconds. Returns 0 or POLIS_EINVAL. */
POLIS_API int polis_parse_duration(struct polis_str s, uint64_t *ms);
/* "512", "64KiB", "64MiB", "1GiB", "10KB", "5MB" -> bytes. Returns 0 or POLIS_EINVAL. */
POLIS_API int polis_parse_size(struct polis_str s, uint64_t *bytes);

#endif
