/* loop-internal.h: the layout of struct polis_loop, shared by loop.c and the core tests. */
#ifndef POLIS_CORE_LOOP_INTERNAL_H
#define POLIS_CORE_LOOP_INTERNAL_H

#include <polis/core.h>
#include <sys/epoll.h>

#define POLIS_LOOP_EVENTS 256
#define POLIS_WHEEL_TICK_MS 4u
#define POLIS_WHEEL_SLOTS 1024u /* a power of two: one rotation is about 4 s */

struct polis_loop {
    int epfd;
    bool stop;
    uint64_t now;        /* ms, read once per iteration */
    uint64_t wheel_tick; /* last tick whose slot was processed */
    size_t armed;        /* timers on the wheel */
    int nevents, cur;    /* the batch being dispatched, for polis_loop_del() */
    polis_loop_hook_fn flush;
    void *flush_ud;
    struct epoll_event events[POLIS_LOOP_EVENTS];
    struct polis_timer wheel[POLIS_WHEEL_SLOTS]; /* list heads: only next is used */
    uint64_t wheel_bits[POLIS_WHEEL_SLOTS / 64]; /* non-empty slots */
};

#endif
