/* Unit tests of lib/core/loop.c: watches, the timing wheel and cross-thread wake-ups. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/loop-internal.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct fired {
    struct polis_timer t;
    int id;
    uint64_t at;
    int *order;
    int *n;
};

static void on_fire(struct polis_loop *loop, struct polis_timer *t)
{
    struct fired *f = (struct fired *)t;
    f->at = polis_loop_now(loop);
    f->order[(*f->n)++] = f->id;
}

static void on_stop(struct polis_loop *loop, struct polis_timer *t)
{
    polis_loop_stop(loop);
}

/* Timers fire once each, in deadline order, not before their deadline (minus the lazy slack). */
static void timers_fire_in_order(void **state)
{
    struct polis_loop *loop = polis_loop_new();
    assert_non_null(loop);
    int order[8], n = 0;
    struct fired f[5];
    const uint64_t ms[5] = {50, 10, 30, 5000, 20};
    uint64_t start = polis_loop_now(loop);
    for (int i = 0; i < 5; i++) {
        f[i] = (struct fired){.id = i, .order = order, .n = &n};
        polis_timer_init(&f[i].t, on_fire);
        polis_timer_arm(loop, &f[i].t, ms[i]);
    }
    polis_timer_cancel(loop, &f[3].t); /* the 5 s one never fires */
    assert_false(polis_timer_armed(&f[3].t));
    struct polis_timer stop;
    polis_timer_init(&stop, on_stop);
    polis_timer_arm(loop, &stop, 120);
    assert_int_equal(polis_loop_run(loop), 0);
    assert_int_equal(n, 4);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 4);
    assert_int_equal(order[2], 2);
    assert_int_equal(order[3], 0);
    for (int i = 0; i < 5; i++) {
        if (i == 3)
            continue;
        assert_true(f[i].at >= start + ms[i]);
        assert_true(f[i].at <= start + ms[i] + 60); /* generous for a loaded machine */
    }
    assert_int_equal(loop->armed, 0);
    polis_loop_free(loop);
}

/* Re-arming moves a timer; a move within the lazy slack keeps the first deadline. */
static void rearm_moves_timer(void **state)
{
    struct polis_loop *loop = polis_loop_new();
    int order[4], n = 0;
    struct fired f = {.id = 7, .order = order, .n = &n};
    polis_timer_init(&f.t, on_fire);
    polis_timer_arm(loop, &f.t, 10);
    uint64_t first = f.t.expire;
    polis_timer_arm(loop, &f.t, 10); /* same deadline: skipped */
    assert_int_equal(f.t.expire, first);
    polis_timer_arm(loop, &f.t, 80); /* far later: moved */
    assert_true(f.t.expire >= first + 60);
    assert_int_equal(loop->armed, 1);
    struct polis_timer stop;
    polis_timer_init(&stop, on_stop);
    polis_timer_arm(loop, &stop, 40);
    polis_loop_run(loop);
    assert_int_equal(n, 0); /* not fired at 10 ms any more */
    polis_timer_arm(loop, &stop, 100);
    polis_loop_run(loop);
    assert_int_equal(n, 1);
    polis_loop_free(loop);
}

/* Many timers over more than one wheel rotation all fire, and only once. */
static void many_timers_beyond_one_rotation(void **state)
{
    struct polis_loop *loop = polis_loop_new();
    enum { N = 2000 };
    struct fired *f = calloc(N, sizeof(*f));
    int *order = calloc(N, sizeof(int));
    int n = 0;
    for (int i = 0; i < N; i++) {
        f[i] = (struct fired){.id = i, .order = order, .n = &n};
        polis_timer_init(&f[i].t, on_fire);
        /* spread over 0..~200 ms, plus some one wheel rotation away (the same slots) */
        uint64_t ms = (uint64_t)(i % 50) * 4 + (i % 7 == 0 ? POLIS_WHEEL_SLOTS * 4 : 0);
        polis_timer_arm(loop, &f[i].t, ms);
    }
    struct polis_timer stop;
    polis_timer_init(&stop, on_stop);
    polis_timer_arm(loop, &stop, 300);
    polis_loop_run(loop);
    int early = 0;
    for (int i = 0; i < N; i++)
        early += i % 7 != 0;
    assert_int_equal(n, early); /* the far ones have not fired yet */
    for (int i = 0; i < N; i++) {
        if (i % 7 == 0)
            assert_true(polis_timer_armed(&f[i].t));
        else
            assert_false(polis_timer_armed(&f[i].t));
    }
    for (int i = 0; i < N; i++)
        polis_timer_cancel(loop, &f[i].t);
    assert_int_equal(loop->armed, 0);
    free(f);
    free(order);
    polis_loop_free(loop);
}

struct pipe_watch {
    struct polis_watch w;
    int reads;
    struct polis_watch *other; /* deleted from inside the callback */
};

static void on_pipe(struct polis_loop *loop, struct polis_watch *w, unsigned events)
{
    struct pipe_watch *p = (struct pipe_watch *)w;
    char buf[64];
    while (read(w->fd, buf, sizeof(buf)) > 0)
        p->reads++;
    if (p->other != NULL) {
        polis_loop_del(loop, p->other);
        p->other = NULL;
    }
    polis_loop_stop(loop);
}

/* A readable descriptor is reported; a watch deleted during dispatch gets no stale event. */
static void watch_and_delete_during_dispatch(void **state)
{
    struct polis_loop *loop = polis_loop_new();
    int a[2], b[2];
    assert_int_equal(pipe2(a, O_NONBLOCK), 0);
    assert_int_equal(pipe2(b, O_NONBLOCK), 0);
    struct pipe_watch pa = {0}, pb = {0};
    assert_int_equal(polis_loop_add(loop, &pa.w, a[0], POLIS_EV_READ, on_pipe), 0);
    assert_int_equal(polis_loop_add(loop, &pb.w, b[0], POLIS_EV_READ, on_pipe), 0);
    pa.other = &pb.w;
    pb.other = &pa.w;
    assert_int_equal(write(a[1], "x", 1), 1);
    assert_int_equal(write(b[1], "y", 1), 1);
    polis_loop_run(loop);
    /* Exactly one of them ran: it deleted the other before its event was dispatched. */
    assert_int_equal(pa.reads + pb.reads, 1);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
    polis_loop_free(loop);
}

static int async_calls;

static void on_async(struct polis_async *a)
{
    async_calls++;
    polis_loop_stop(a->loop);
}

static void *send_from_thread(void *arg)
{
    usleep(20000);
    polis_async_send(arg);
    return NULL;
}

/* polis_async_send() from another thread runs the callback on the loop's thread. */
static void async_wakes_loop(void **state)
{
    struct polis_loop *loop = polis_loop_new();
    struct polis_async a;
    assert_int_equal(polis_async_init(loop, &a, on_async), 0);
    pthread_t t;
    pthread_create(&t, NULL, send_from_thread, &a);
    polis_loop_run(loop);
    pthread_join(t, NULL);
    assert_int_equal(async_calls, 1);
    polis_async_close(&a);
    polis_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(timers_fire_in_order),
        cmocka_unit_test(rearm_moves_timer),
        cmocka_unit_test(many_timers_beyond_one_rotation),
        cmocka_unit_test(watch_and_delete_during_dispatch),
        cmocka_unit_test(async_wakes_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
