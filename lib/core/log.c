/* log.c: the structured error log: one JSON line per message, written with one write(). */
#include <polis/core.h>

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_fd = 2;
static atomic_int log_level = POLIS_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* The calling thread's request context, appended to its lines. */
static _Thread_local char ctx_request_id[65];
static _Thread_local char ctx_trace_id[33];

void polis_log_set_context(struct polis_str request_id, struct polis_str trace_id)
{
    size_t n =
        request_id.len < sizeof(ctx_request_id) - 1 ? request_id.len : sizeof(ctx_request_id) - 1;
    if (n > 0)
        memcpy(ctx_request_id, request_id.p, n);
    ctx_request_id[n] = '\0';
    n = trace_id.len < sizeof(ctx_trace_id) - 1 ? trace_id.len : sizeof(ctx_trace_id) - 1;
    if (n > 0)
        memcpy(ctx_trace_id, trace_id.p, n);
    ctx_trace_id[n] = '\0';
}

void polis_log_set_level(enum polis_log_level level)
{
    atomic_store(&log_level, (int)level);
}

void polis_log_set_fd(int fd)
{
    atomic_store(&log_fd, fd);
}

/* Append s to out[*n..cap) with JSON escaping; stops short of cap. */
static void json_escape(char *out, size_t cap, size_t *n, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = *n;
    for (; *s != '\0' && i + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[i++] = '\\';
            out[i++] = (char)c;
        } else if (c == '\n') {
            out[i++] = '\\';
            out[i++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(out + i, "\\u00", 4);
            out[i + 4] = hex[c >> 4];
            out[i + 5] = hex[c & 15];
            i += 6;
        } else {
            out[i++] = (char)c;
        }
    }
    *n = i;
}

void polis_log(enum polis_log_level level, const char *fmt, ...)
{
    if ((int)level < atomic_load(&log_level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char line[4096];
    int h = snprintf(line, sizeof(line),
                     "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"msg\":\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level]);
    size_t n = (size_t)h;
    json_escape(line, sizeof(line) - 200, &n, msg);
    line[n++] = '"';
    if (ctx_request_id[0] != '\0') {
        memcpy(line + n, ",\"request_id\":\"", 15);
        n += 15;
        json_escape(line, sizeof(line) - 100, &n, ctx_request_id);
        line[n++] = '"';
    }
    if (ctx_trace_id[0] != '\0') {
        memcpy(line + n, ",\"trace_id\":\"", 13);
        n += 13;
        json_escape(line, sizeof(line) - 4, &n, ctx_trace_id);
        line[n++] = '"';
    }
    memcpy(line + n, "}\n", 2);
    n += 2;
    ssize_t w = write(atomic_load(&log_fd), line, n);
    (void)w;
}
