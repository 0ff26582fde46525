/* loop_fixture.h: runs a test's libuv loop until a condition holds, for the tests that drive a
 * server and its clients on one loop (test_net.c, test_http.c). */
#ifndef LOOP_FIXTURE_H
#define LOOP_FIXTURE_H

#include <check.h>
#include <pthread.h>
#include <stdbool.h>
#include <uv.h>

typedef bool (*cond_fn)(void *arg);
typedef struct {
    cond_fn f;
    void *arg;
    bool met;
} poll_ctx;

static inline void on_poll(uv_timer_t *t) {
    poll_ctx *pc = t->data;
    if (pc->f(pc->arg)) {
        pc->met = true;
        uv_stop(t->loop);
    }
}
static inline void on_deadline(uv_timer_t *t) { uv_stop(t->loop); }

/* Runs the loop until f(arg) holds or timeout_ms pass; returns whether it held. Both timers are
 * closed before it returns, so the loop holds nothing of it. */
static inline bool run_until(uv_loop_t *loop, cond_fn f, void *arg, uint64_t timeout_ms) {
    poll_ctx pc = {f, arg, false};
    if (f(arg)) return true;
    uv_timer_t poll, deadline;
    ck_assert_int_eq(uv_timer_init(loop, &poll), 0);
    ck_assert_int_eq(uv_timer_init(loop, &deadline), 0);
    poll.data = &pc;
    ck_assert_int_eq(uv_timer_start(&poll, on_poll, 1, 1), 0);
    ck_assert_int_eq(uv_timer_start(&deadline, on_deadline, timeout_ms, 0), 0);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&poll, NULL);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return pc.met;
}

/* Runs client(arg) on its own thread while the loop serves it, until done(arg) or timeout_ms;
 * joins the thread either way (the client's own timeouts end it) and returns whether done held. */
static inline bool run_with_client(uv_loop_t *loop, void *(*client)(void *), cond_fn done, void *arg,
                                   uint64_t timeout_ms) {
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, client, arg), 0);
    bool finished = run_until(loop, done, arg, timeout_ms);
    pthread_join(th, NULL);
    return finished;
}

#endif
