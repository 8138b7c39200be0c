/* loop.c: the per-thread epoll event loop, its hashed timing wheel and cross-thread wake-ups. */
#include "core/loop-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static uint64_t clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct polis_loop *polis_loop_new(void)
{
    struct polis_loop *loop = calloc(1, sizeof(*loop));
    if (loop == NULL)
        return NULL;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) {
        free(loop);
        return NULL;
    }
    loop->now = clock_ms();
    loop->wheel_tick = loop->now / POLIS_WHEEL_TICK_MS - 1;
    return loop;
}

void polis_loop_free(struct polis_loop *loop)
{
    if (loop == NULL)
        return;
    close(loop->epfd);
    free(loop);
}

static uint32_t to_epoll(unsigned events)
{
    uint32_t e = EPOLLET | EPOLLRDHUP;
    if (events & POLIS_EV_READ)
        e |= EPOLLIN;
    if (events & POLIS_EV_WRITE)
        e |= EPOLLOUT;
    return e;
}

int polis_loop_add(struct polis_loop *loop, struct polis_watch *w, int fd, unsigned events,
                   polis_watch_fn cb)
{
    struct epoll_event ev = {.events = to_epoll(events), .data.ptr = w};
    w->fd = fd;
    w->events = events;
    w->cb = cb;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return POLIS_ESYS;
    return 0;
}

int polis_loop_mod(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    struct epoll_event ev = {.events = to_epoll(events), .data.ptr = w};
    if (w->events == events)
        return 0;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0)
        return POLIS_ESYS;
    w->events = events;
    return 0;
}

void polis_loop_del(struct polis_loop *loop, struct polis_watch *w)
{
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    /* Drop events gathered for w in this iteration so that its owner may be freed now. */
    for (int i = loop->cur + 1; i < loop->nevents; i++) {
        if (loop->events[i].data.ptr == w)
            loop->events[i].data.ptr = NULL;
    }
}

void polis_loop_stop(struct polis_loop *loop)
{
    loop->stop = true;
}

uint64_t polis_loop_now(const struct polis_loop *loop)
{
    return loop->now;
}

uint64_t polis_loop_update_time(struct polis_loop *loop)
{
    loop->now = clock_ms();
    return loop->now;
}

void polis_loop_set_flush(struct polis_loop *loop, polis_loop_hook_fn fn, void *ud)
{
    loop->flush = fn;
    loop->flush_ud = ud;
}

/* ---- Timing wheel --------------------------------------------------------------------------
 * A single hashed wheel: slot = (expire / tick) % slots. A slot may hold timers of later
 * rotations; they stay until their turn. A bitmap of non-empty slots finds the next wake-up. */

void polis_timer_init(struct polis_timer *t, polis_timer_fn cb)
{
    t->next = t->prev = NULL;
    t->expire = 0;
    t->cb = cb;
}

bool polis_timer_armed(const struct polis_timer *t)
{
    return t->prev != NULL;
}

static void slot_unlink(struct polis_loop *loop, struct polis_timer *t)
{
    size_t slot = (t->expire / POLIS_WHEEL_TICK_MS) & (POLIS_WHEEL_SLOTS - 1);
    t->prev->next = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    if (loop->wheel[slot].next == NULL)
        loop->wheel_bits[slot / 64] &= ~(1ull << (slot % 64));
    t->next = t->prev = NULL;
    loop->armed--;
}

void polis_timer_cancel(struct polis_loop *loop, struct polis_timer *t)
{
    if (t->prev != NULL)
        slot_unlink(loop, t);
}

void polis_timer_arm(struct polis_loop *loop, struct polis_timer *t, uint64_t timeout_ms)
{
    uint64_t expire = loop->now + timeout_ms;
    if (t->prev != NULL) {
        /* Lazy re-arm: a deadline that moved later by less than a tick, or by under 1/64 of
         * the timeout, stays where it is (it fires a little early, like nginx's lazy timers). */
        uint64_t slack =
            timeout_ms / 64 > POLIS_WHEEL_TICK_MS ? timeout_ms / 64 : POLIS_WHEEL_TICK_MS;
        if (expire >= t->expire && expire - t->expire < slack)
            return;
        slot_unlink(loop, t);
    }
    /* Never land in a slot the wheel has already passed. */
    if (expire / POLIS_WHEEL_TICK_MS <= loop->wheel_tick)
        expire = (loop->wheel_tick + 1) * POLIS_WHEEL_TICK_MS;
    t->expire = expire;
    size_t slot = (expire / POLIS_WHEEL_TICK_MS) & (POLIS_WHEEL_SLOTS - 1);
    struct polis_timer *head = &loop->wheel[slot];
    t->next = head->next;
    t->prev = head;
    if (head->next != NULL)
        head->next->prev = t;
    head->next = t;
    loop->wheel_bits[slot / 64] |= 1ull << (slot % 64);
    loop->armed++;
}

/* Fire the timers of every tick that has fully passed. The current tick is never marked done,
 * so a timer due later within it is not skipped; timers fire at most one tick late. */
static void run_timers(struct polis_loop *loop)
{
    uint64_t last = loop->now / POLIS_WHEEL_TICK_MS - 1; /* the newest tick wholly in the past */
    uint64_t tick = loop->wheel_tick;
    if (last > tick && last - tick > POLIS_WHEEL_SLOTS) /* a long sleep: one rotation is all */
        tick = last - POLIS_WHEEL_SLOTS;
    while (tick < last && loop->armed > 0) {
        tick++;
        loop->wheel_tick = tick;
        size_t slot = tick & (POLIS_WHEEL_SLOTS - 1);
        struct polis_timer *t = loop->wheel[slot].next;
        while (t != NULL) {
            struct polis_timer *next = t->next;
            if (t->expire <= loop->now) {
                slot_unlink(loop, t);
                t->cb(loop, t);
                /* The callback may have cancelled or armed other timers, next among them:
                 * restart the slot (fired timers are gone from it). */
                next = loop->wheel[slot].next;
                while (next != NULL && next->expire > loop->now)
                    next = next->next;
            }
            t = next;
        }
    }
    if (last > loop->wheel_tick)
        loop->wheel_tick = last;
}

/* Milliseconds until the first non-empty slot's tick has passed, or -1 with no timer armed. */
static int next_timeout(const struct polis_loop *loop)
{
    if (loop->armed == 0)
        return -1;
    uint64_t first = loop->wheel_tick + 1; /* the oldest tick not processed yet */
    for (uint64_t d = 0; d < POLIS_WHEEL_SLOTS;) {
        size_t slot = (first + d) & (POLIS_WHEEL_SLOTS - 1);
        uint64_t word = loop->wheel_bits[slot / 64] >> (slot % 64);
        if (word == 0) { /* skip the rest of this 64-slot word */
            d += 64 - (slot % 64);
            continue;
        }
        d += (uint64_t)__builtin_ctzll(word);
        if (d >= POLIS_WHEEL_SLOTS)
            break;
        uint64_t due = (first + d + 1) * POLIS_WHEEL_TICK_MS;
        return due > loop->now ? (int)(due - loop->now) : 0;
    }
    return POLIS_WHEEL_SLOTS * POLIS_WHEEL_TICK_MS;
}

int polis_loop_run(struct polis_loop *loop)
{
    loop->stop = false;
    while (!loop->stop) {
        int timeout = next_timeout(loop);
        int n = epoll_wait(loop->epfd, loop->events, POLIS_LOOP_EVENTS, timeout);
        loop->now = clock_ms();
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return POLIS_ESYS;
        }
        loop->nevents = n;
        for (loop->cur = 0; loop->cur < n; loop->cur++) {
            struct epoll_event *ev = &loop->events[loop->cur];
            struct polis_watch *w = ev->data.ptr;
            if (w == NULL)
                continue;
            unsigned e = 0;
            if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                e |= POLIS_EV_READ;
            if (ev->events & (EPOLLOUT | EPOLLERR))
                e |= POLIS_EV_WRITE;
            if (ev->events & (EPOLLERR | EPOLLHUP))
                e |= POLIS_EV_ERROR;
            if (ev->events & (EPOLLRDHUP | EPOLLHUP))
                e |= POLIS_EV_HUP;
            w->cb(loop, w, e);
        }
        loop->nevents = 0;
        loop->cur = 0;
        if (loop->armed > 0)
            run_timers(loop);
        else
            loop->wheel_tick = loop->now / POLIS_WHEEL_TICK_MS - 1;
        if (loop->flush != NULL)
            loop->flush(loop, loop->flush_ud);
    }
    return 0;
}

/* ---- Cross-thread wake-ups ------------------------------------------------------------------ */

static void async_ready(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    struct polis_async *a = (struct polis_async *)w;
    uint64_t v;
    while (read(w->fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
        ;
    a->cb(a);
}

int polis_async_init(struct polis_loop *loop, struct polis_async *a, polis_async_fn cb)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return POLIS_ESYS;
    a->loop = loop;
    a->cb = cb;
    if (polis_loop_add(loop, &a->w, fd, POLIS_EV_READ, async_ready) < 0) {
        close(fd);
        return POLIS_ESYS;
    }
    return 0;
}

void polis_async_send(struct polis_async *a)
{
    uint64_t one = 1;
    ssize_t r = write(a->w.fd, &one, sizeof(one));
    (void)r; /* EAGAIN: the counter is saturated, a wake-up is pending anyway */
}

void polis_async_close(struct polis_async *a)
{
    polis_loop_del(a->loop, &a->w);
    close(a->w.fd);
    a->w.fd = -1;
}
