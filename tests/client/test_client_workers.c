/*
 * Sessions with workers through the C client, against the real daemon
 * (protocol.md, **Workers**):
 *   - 4 sync workers, each on its own thread and client, arriving in a
 *     different order each round, end bit-identical to a plain session
 *     stepped with ((g0 + g1) + g2) + g3) / 4 in float32, rank order being
 *     join order; their clients' timeout is far shorter than a round's
 *     wait, with no retries, so a wait cut short would fail the round;
 *   - async staleness for a fixed interleaving, and a worker's pull;
 *   - bounded: a worker too far ahead waits for the slowest;
 *   - a sync round that times out: TIMEOUT, nothing applied; with
 *     on_timeout "proceed" the pushes present are applied;
 *   - join and leave errors, and options refused before sending.
 */
#include "check.h"
#include "test_daemon.h"

#include <optimd/client.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_WORKERS 4
#define N_ROUNDS 5
#define N_ELEMS 257             /* odd, to leave a tail after any SIMD width */
/* A worker's client gives the daemon this long per reply; a sync round
 * here waits far longer (SLOW_MS) than that. */
#define CLIENT_TIMEOUT_MS 300
#define SLOW_MS 1200

static const char *url;
static optimd_client *c;        /* the main thread's */
static const int64_t shape[1] = {N_ELEMS};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Deterministic values of varied magnitude, so that the order of a sum
 * shows in its last bits. */
static float value_at(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    double u = (double)(*state >> 11) / 9007199254740992.0 - 0.5;
    int scale = (int)((*state >> 3) % 7) - 3;
    double m = 1.0;
    for (int i = 0; i < scale; i++) m *= 10.0;
    for (int i = 0; i > scale; i--) m /= 10.0;
    return (float)(u * m);
}

static optimd_client *worker_client(void)
{
    optimd_client_options o;
    optimd_client_options_init(&o);
    o.timeout_ms = CLIENT_TIMEOUT_MS;
    o.max_retries = 0;
    optimd_client *wc = NULL;
    if (optimd_client_connect_ex(url, &o, &wc) != 0)
        fprintf(stderr, "connect: %s\n", optimd_client_error(NULL));
    return wc;
}

static optimd_named_tensor tensor(const char *name, float *data)
{
    return (optimd_named_tensor){name, OPTIMD_CLIENT_F32, 1, shape, data};
}

static int open_workers(const char *name, const char *optimizer,
                        const char *mode, uint32_t count,
                        uint32_t timeout_ms, const char *on_timeout,
                        uint32_t max_staleness, optimd_session *s)
{
    optimd_hvalue hp[2] = {{"lr", OPTIMD_HVALUE_FLOAT, 0.01, 0},
                           {"weight_decay", OPTIMD_HVALUE_FLOAT, 0.1, 0}};
    optimd_open_options o;
    optimd_open_options_init(&o);
    o.optimizer = optimizer;
    o.hparams = hp;
    o.n_hparams = strcmp(optimizer, "adamw") == 0 ? 2 : 1;
    o.workers_mode = mode;
    o.workers_count = count;
    o.workers_timeout_ms = timeout_ms;
    o.workers_on_timeout = on_timeout;
    o.workers_max_staleness = max_staleness;
    int rv = optimd_client_open_ex(c, name, &o, s, NULL);
    CHECK(rv == 0, "open %s: %s", name, optimd_client_error(c));
    return rv;
}

/* One worker's push in a sync round: it waits until `position` pushes are
 * in (so the arrival order is exactly the round's), then pushes. */
typedef struct push_job {
    optimd_client *wc;
    const optimd_session *s;
    const char *worker;
    int position;
    int delay_ms;              /* before pushing, once its turn came */
    float *grad;
    float out[N_ELEMS];
    optimd_worker_result wr;
    optimd_step_result res;
    int rv;
    unsigned retries;
    char err[256];
} push_job;

static void *push_in_turn(void *arg)
{
    push_job *j = arg;
    for (int tries = 0;; tries++) {
        optimd_session_details *d = NULL;
        if (optimd_client_info_ex(j->wc, j->s, &d) != 0 || !d->workers) {
            j->rv = -100;
            snprintf(j->err, sizeof j->err, "info: %s",
                     optimd_client_error(j->wc));
            optimd_session_details_free(d);
            return NULL;
        }
        uint32_t in = d->workers->round_pushes;
        optimd_session_details_free(d);
        if ((int)in == j->position) break;
        if (tries > 5000) {
            j->rv = -101;
            snprintf(j->err, sizeof j->err, "round stuck at %u pushes", in);
            return NULL;
        }
        sleep_ms(2);
    }
    if (j->delay_ms) sleep_ms(j->delay_ms);
    optimd_named_tensor g = tensor("p", j->grad);
    optimd_named_tensor out = tensor("p", j->out);
    optimd_step_options so;
    optimd_step_options_init(&so);
    so.worker = j->worker;
    optimd_worker_result_init(&j->wr);
    so.worker_result = &j->wr;
    j->rv = optimd_client_step_opts(j->wc, j->s, &g, 1, &out, 1, &so,
                                    &j->res);
    j->retries = optimd_client_last_retries(j->wc);
    snprintf(j->err, sizeof j->err, "%s", optimd_client_error(j->wc));
    return NULL;
}

static void test_sync_matches_one_client_with_the_mean(void)
{
    optimd_session s, ref;
    if (open_workers("sync-mean", "adamw", "sync", N_WORKERS, 20000, NULL,
                     0, &s))
        return;
    static const char *const names[N_WORKERS] = {"w0", "w1", "w2", "w3"};
    for (uint32_t i = 0; i < N_WORKERS; i++) {
        uint32_t rank = 99;
        int rv = optimd_client_join(c, &s, names[i], &rank);
        CHECK(rv == 0 && rank == i, "join %s: rv %d rank %u: %s", names[i],
              rv, rank, optimd_client_error(c));
    }
    optimd_open_options o;
    optimd_open_options_init(&o);
    optimd_hvalue hp[2] = {{"lr", OPTIMD_HVALUE_FLOAT, 0.01, 0},
                           {"weight_decay", OPTIMD_HVALUE_FLOAT, 0.1, 0}};
    o.optimizer = "adamw";
    o.hparams = hp;
    o.n_hparams = 2;
    REQUIRE(optimd_client_open_ex(c, "sync-ref", &o, &ref, NULL) == 0,
            "open the reference: %s", optimd_client_error(c));

    uint64_t st = 7;
    float init[N_ELEMS];
    for (int k = 0; k < N_ELEMS; k++) init[k] = value_at(&st);
    optimd_named_tensor p = tensor("p", init);
    REQUIRE(optimd_client_register(c, &s, &p, 1) == 0 &&
                optimd_client_register(c, &ref, &p, 1) == 0,
            "register: %s", optimd_client_error(c));

    push_job jobs[N_WORKERS];
    memset(jobs, 0, sizeof jobs);
    static float grads[N_WORKERS][N_ELEMS];
    for (int w = 0; w < N_WORKERS; w++) {
        jobs[w].wc = worker_client();
        jobs[w].s = &s;
        jobs[w].worker = names[w];
        jobs[w].grad = grads[w];
        if (!jobs[w].wc) {
            CHECK(0, "worker client %d", w);
            for (int k = 0; k < w; k++) optimd_client_free(jobs[k].wc);
            return;
        }
    }
    /* positions[r][w]: when worker w pushes in round r. */
    static const int positions[N_ROUNDS][N_WORKERS] = {
        {3, 1, 0, 2}, {0, 1, 2, 3}, {2, 3, 1, 0}, {1, 0, 3, 2}, {3, 2, 1, 0}};
    bool order_shows = false;
    for (int r = 0; r < N_ROUNDS; r++) {
        for (int w = 0; w < N_WORKERS; w++)
            for (int k = 0; k < N_ELEMS; k++) grads[w][k] = value_at(&st);
        pthread_t th[N_WORKERS];
        for (int w = 0; w < N_WORKERS; w++) {
            jobs[w].position = positions[r][w];
            /* In the first round the last to arrive comes late, so the
             * others wait well past their client's timeout. */
            jobs[w].delay_ms = r == 0 && positions[r][w] == N_WORKERS - 1
                                   ? SLOW_MS
                                   : 0;
            pthread_create(&th[w], NULL, push_in_turn, &jobs[w]);
        }
        for (int w = 0; w < N_WORKERS; w++) pthread_join(th[w], NULL);

        float mean[N_ELEMS], ref_out[N_ELEMS];
        for (int k = 0; k < N_ELEMS; k++) {
            float sum = ((grads[0][k] + grads[1][k]) + grads[2][k]) +
                        grads[3][k];
            mean[k] = sum / (float)N_WORKERS;
            float other = ((grads[3][k] + grads[2][k]) + grads[1][k]) +
                          grads[0][k];
            if (other / (float)N_WORKERS != mean[k]) order_shows = true;
        }
        optimd_named_tensor g = tensor("p", mean), out = tensor("p", ref_out);
        REQUIRE(optimd_client_step(c, &ref, &g, 1, &out, 1, NULL, NULL) == 0,
                "reference step: %s", optimd_client_error(c));
        for (int w = 0; w < N_WORKERS; w++) {
            push_job *j = &jobs[w];
            CHECK(j->rv == 0, "round %d worker %d: rv %d: %s", r, w, j->rv,
                  j->err);
            if (j->rv) continue;
            CHECK(j->retries == 0, "round %d worker %d was re-sent %u times",
                  r, w, j->retries);
            CHECK(memcmp(j->out, ref_out, sizeof ref_out) == 0,
                  "round %d worker %d: parameters differ from one client "
                  "stepping with the rank-order mean", r, w);
            CHECK(j->res.steps == (uint64_t)r + 1, "round %d: steps %llu", r,
                  (unsigned long long)j->res.steps);
            CHECK(j->wr.combined == N_WORKERS && j->wr.pushes == (uint64_t)r + 1
                      && j->wr.staleness == 0,
                  "round %d worker %d: combined %u pushes %llu staleness "
                  "%llu", r, w, j->wr.combined,
                  (unsigned long long)j->wr.pushes,
                  (unsigned long long)j->wr.staleness);
        }
    }
    CHECK(order_shows, "the gradients do not tell rank order from another "
          "order: the test could not fail");
    float final_w[N_ELEMS], final_ref[N_ELEMS];
    optimd_named_tensor pw = tensor("p", final_w), pr = tensor("p", final_ref);
    CHECK(optimd_client_pull(c, &s, &pw, 1) == 0 &&
              optimd_client_pull(c, &ref, &pr, 1) == 0 &&
              memcmp(final_w, final_ref, sizeof final_w) == 0,
          "final parameters differ: %s", optimd_client_error(c));
    for (int w = 0; w < N_WORKERS; w++) optimd_client_free(jobs[w].wc);
    optimd_client_close(c, &s);
    optimd_client_close(c, &ref);
}

/* A push by `worker`; *wr gets the worker keys. */
static int push(optimd_client *wc, const optimd_session *s,
                const char *worker, bool want_params,
                optimd_worker_result *wr)
{
    float g[N_ELEMS], out[N_ELEMS];
    for (int k = 0; k < N_ELEMS; k++) g[k] = 0.01f * (float)(k % 5);
    optimd_named_tensor gt = tensor("p", g), ot = tensor("p", out);
    optimd_step_options so;
    optimd_step_options_init(&so);
    so.worker = worker;
    optimd_worker_result_init(wr);
    so.worker_result = wr;
    return optimd_client_step_opts(wc, s, &gt, 1, &ot, want_params ? 1 : 0,
                                   &so, NULL);
}

static void test_async_staleness(void)
{
    optimd_session s;
    if (open_workers("async", "sgd", "async", 0, 0, NULL, 0, &s)) return;
    uint32_t ra = 9, rb = 9;
    REQUIRE(optimd_client_join(c, &s, "a", &ra) == 0 &&
                optimd_client_join(c, &s, "b", &rb) == 0,
            "join: %s", optimd_client_error(c));
    CHECK(ra == 0 && rb == 1, "ranks %u %u", ra, rb);
    float init[N_ELEMS] = {0};
    optimd_named_tensor p = tensor("p", init);
    REQUIRE(optimd_client_register(c, &s, &p, 1) == 0, "register: %s",
            optimd_client_error(c));
    /* a, b, b, b, a, each receiving the parameters: a's second push comes
     * three steps after the parameters it last got. */
    static const char *const order[5] = {"a", "b", "b", "b", "a"};
    static const uint64_t staleness[5] = {0, 1, 0, 0, 3};
    static const uint64_t pushes[5] = {1, 1, 2, 3, 2};
    for (int i = 0; i < 5; i++) {
        optimd_worker_result wr;
        int rv = push(c, &s, order[i], true, &wr);
        CHECK(rv == 0, "push %d: %s", i, optimd_client_error(c));
        CHECK(wr.staleness == staleness[i] && wr.pushes == pushes[i] &&
                  wr.combined == 0 && wr.waited == 0,
              "push %d by %s: staleness %llu (want %llu), pushes %llu (want "
              "%llu), combined %u", i, order[i],
              (unsigned long long)wr.staleness,
              (unsigned long long)staleness[i],
              (unsigned long long)wr.pushes, (unsigned long long)pushes[i],
              wr.combined);
    }
    /* b last got the parameters at step 4, a stepped since: a pull as b
     * brings it level, so its next push is not stale; without the pull
     * it would be 1. */
    float got[N_ELEMS];
    optimd_named_tensor g = tensor("p", got);
    CHECK(optimd_client_pull_as(c, &s, "b", &g, 1) == 0, "pull as b: %s",
          optimd_client_error(c));
    optimd_worker_result wr;
    CHECK(push(c, &s, "b", false, &wr) == 0 && wr.staleness == 0,
          "after a pull as b: staleness %llu",
          (unsigned long long)wr.staleness);
    /* Not given the parameters that time: one step stale now. */
    CHECK(push(c, &s, "b", false, &wr) == 0 && wr.staleness == 1,
          "b without parameters: staleness %llu",
          (unsigned long long)wr.staleness);
    optimd_session_details *d = NULL;
    if (optimd_client_info_ex(c, &s, &d) == 0 && d->workers) {
        const optimd_workers_info *w = d->workers;
        CHECK(strcmp(w->mode, "async") == 0 && w->n_members == 2 &&
                  strcmp(w->members[0].name, "a") == 0 &&
                  w->members[0].pushes == 2 && w->members[0].rank == 0 &&
                  strcmp(w->members[1].name, "b") == 0 &&
                  w->members[1].pushes == 5 && w->members[1].rank == 1 &&
                  w->members[1].staleness == 2 && !w->members[1].waiting &&
                  w->members[0].staleness == 2,
              "info's workers: mode %s, %zu members", w->mode, w->n_members);
    } else {
        CHECK(0, "info: no workers: %s", optimd_client_error(c));
    }
    optimd_session_details_free(d);
    optimd_client_close(c, &s);
}

typedef struct bounded_job {
    optimd_client *wc;
    const optimd_session *s;
    optimd_worker_result wr;
    int rv;
    char err[256];
} bounded_job;

static void *bounded_push(void *arg)
{
    bounded_job *j = arg;
    j->rv = push(j->wc, j->s, "a", false, &j->wr);
    snprintf(j->err, sizeof j->err, "%s", optimd_client_error(j->wc));
    return NULL;
}

static void test_bounded_waits_for_the_slowest(void)
{
    optimd_session s;
    if (open_workers("bounded", "sgd", "bounded", 0, 20000, NULL, 0, &s))
        return;
    REQUIRE(optimd_client_join(c, &s, "a", NULL) == 0 &&
                optimd_client_join(c, &s, "b", NULL) == 0,
            "join: %s", optimd_client_error(c));
    float init[N_ELEMS] = {0};
    optimd_named_tensor p = tensor("p", init);
    REQUIRE(optimd_client_register(c, &s, &p, 1) == 0, "register: %s",
            optimd_client_error(c));
    bounded_job j = {.wc = worker_client(), .s = &s};
    REQUIRE(j.wc, "worker client");
    optimd_worker_result wr;
    CHECK(push(j.wc, &s, "a", false, &wr) == 0 && wr.lead == 0 &&
              wr.waited == 0,
          "a's first push: lead %llu waited %d: %s",
          (unsigned long long)wr.lead, wr.waited,
          optimd_client_error(j.wc));
    /* One ahead of b with max_staleness 0: a's next push waits for b,
     * longer than its client's own timeout. */
    pthread_t th;
    pthread_create(&th, NULL, bounded_push, &j);
    sleep_ms(SLOW_MS);
    CHECK(push(c, &s, "b", false, &wr) == 0, "b: %s",
          optimd_client_error(c));
    pthread_join(th, NULL);
    CHECK(j.rv == 0 && j.wr.waited == 1 && j.wr.lead == 0 &&
              j.wr.pushes == 2,
          "a's waiting push: rv %d waited %d lead %llu pushes %llu: %s",
          j.rv, j.wr.waited, (unsigned long long)j.wr.lead,
          (unsigned long long)j.wr.pushes, j.err);
    CHECK(optimd_client_last_retries(j.wc) == 0, "a's push was re-sent");
    optimd_client_free(j.wc);
    optimd_client_close(c, &s);
}

static void test_sync_timeout(void)
{
    optimd_session s;
    if (open_workers("sync-timeout", "sgd", "sync", 2, 400, NULL, 0, &s))
        return;
    REQUIRE(optimd_client_join(c, &s, "w0", NULL) == 0 &&
                optimd_client_join(c, &s, "w1", NULL) == 0,
            "join: %s", optimd_client_error(c));
    float init[N_ELEMS];
    for (int k = 0; k < N_ELEMS; k++) init[k] = (float)k;
    optimd_named_tensor p = tensor("p", init);
    REQUIRE(optimd_client_register(c, &s, &p, 1) == 0, "register: %s",
            optimd_client_error(c));
    optimd_client *wc = worker_client();
    REQUIRE(wc, "worker client");
    optimd_worker_result wr;
    int rv = push(wc, &s, "w0", true, &wr);
    CHECK(rv == OPTIMD_E_TIMEOUT, "a round missing w1: rv %d (%s): %s", rv,
          optimd_error_name(rv), optimd_client_error(wc));
    CHECK(strcmp(optimd_error_name(OPTIMD_E_TIMEOUT), "TIMEOUT") == 0,
          "name of TIMEOUT: %s", optimd_error_name(OPTIMD_E_TIMEOUT));
    float now[N_ELEMS];
    optimd_named_tensor g = tensor("p", now);
    optimd_session_info info;
    CHECK(optimd_client_pull(c, &s, &g, 1) == 0 &&
              memcmp(now, init, sizeof now) == 0,
          "a timed-out round changed the parameters");
    CHECK(optimd_client_info(c, &s, &info) == 0 && info.steps == 0,
          "a timed-out round stepped: steps %llu",
          (unsigned long long)info.steps);
    optimd_client_close(c, &s);

    /* proceed: the pushes present make the step. */
    if (open_workers("sync-proceed", "sgd", "sync", 2, 400, "proceed", 0, &s))
        goto out;
    REQUIRE(optimd_client_join(c, &s, "w0", NULL) == 0 &&
                optimd_client_join(c, &s, "w1", NULL) == 0 &&
                optimd_client_register(c, &s, &p, 1) == 0,
            "join, register: %s", optimd_client_error(c));
    rv = push(wc, &s, "w0", true, &wr);
    CHECK(rv == 0 && wr.combined == 1 && wr.pushes == 1,
          "proceed: rv %d combined %u: %s", rv, wr.combined,
          optimd_client_error(wc));
    CHECK(optimd_client_info(c, &s, &info) == 0 && info.steps == 1,
          "proceed: steps %llu", (unsigned long long)info.steps);
    optimd_client_close(c, &s);
out:
    optimd_client_free(wc);
}

static void test_membership_errors(void)
{
    optimd_session s, plain;
    if (open_workers("members", "sgd", "sync", 2, 0, NULL, 0, &s)) return;
    uint32_t rank = 9;
    CHECK(optimd_client_join(c, &s, "x", &rank) == 0 && rank == 0,
          "join x: %s", optimd_client_error(c));
    CHECK(optimd_client_join(c, &s, "y", &rank) == 0 && rank == 1,
          "join y: %s", optimd_client_error(c));
    rank = 9;
    CHECK(optimd_client_join(c, &s, "x", &rank) == 0 && rank == 0,
          "joining again: rank %u: %s", rank, optimd_client_error(c));
    int rv = optimd_client_join(c, &s, "z", &rank);
    CHECK(rv == OPTIMD_E_LIMIT, "a third member of count 2: %d (%s)", rv,
          optimd_error_name(rv));
    rv = optimd_client_leave(c, &s, "nobody");
    CHECK(rv == OPTIMD_E_UNKNOWN_WORKER &&
              strcmp(optimd_error_name(rv), "UNKNOWN_WORKER") == 0,
          "leave nobody: %d (%s)", rv, optimd_error_name(rv));
    float init[N_ELEMS] = {0};
    optimd_named_tensor p = tensor("p", init);
    REQUIRE(optimd_client_register(c, &s, &p, 1) == 0, "register: %s",
            optimd_client_error(c));
    optimd_worker_result wr;
    rv = push(c, &s, "ghost", false, &wr);
    CHECK(rv == OPTIMD_E_UNKNOWN_WORKER, "push by a non-member: %d (%s)", rv,
          optimd_error_name(rv));
    CHECK(optimd_client_leave(c, &s, "y") == 0, "leave y: %s",
          optimd_client_error(c));
    rv = optimd_client_leave(c, &s, "y");
    CHECK(rv == OPTIMD_E_UNKNOWN_WORKER, "leave y again: %d", rv);
    /* y's rank is free again. */
    rank = 9;
    CHECK(optimd_client_join(c, &s, "z", &rank) == 0 && rank == 1,
          "z after y left: rank %u: %s", rank, optimd_client_error(c));
    optimd_client_close(c, &s);

    REQUIRE(optimd_client_open(c, "plain", "sgd",
                               &(optimd_hvalue){"lr", OPTIMD_HVALUE_FLOAT,
                                                0.1, 0},
                               1, NULL, NULL, 0, &plain, NULL) == 0,
            "open plain: %s", optimd_client_error(c));
    rv = optimd_client_join(c, &plain, "x", &rank);
    CHECK(rv == OPTIMD_E_BAD_REQUEST, "join on a session without workers: "
          "%d (%s)", rv, optimd_error_name(rv));
    rv = optimd_client_leave(c, &plain, "x");
    CHECK(rv == OPTIMD_E_BAD_REQUEST, "leave on a session without workers: "
          "%d (%s)", rv, optimd_error_name(rv));
    optimd_client_close(c, &plain);
}

static void test_refused_before_sending(void)
{
    optimd_session s;
    optimd_open_options o;
    optimd_open_options_init(&o);
    o.optimizer = "sgd";
    o.workers_mode = "async";
    o.workers_count = 2;
    int rv = optimd_client_open_ex(c, "bad-workers", &o, &s, NULL);
    CHECK(rv == OPTIMD_CLIENT_E_ARG, "count with async: %d", rv);
    o.workers_count = 0;
    o.workers_max_staleness = 1;
    o.workers_mode = "sync";
    rv = optimd_client_open_ex(c, "bad-workers", &o, &s, NULL);
    CHECK(rv == OPTIMD_CLIENT_E_ARG, "max_staleness with sync: %d", rv);
    o.workers_mode = NULL;
    rv = optimd_client_open_ex(c, "bad-workers", &o, &s, NULL);
    CHECK(rv == OPTIMD_CLIENT_E_ARG, "settings without a mode: %d", rv);
    /* The daemon judges a count of 0 for sync (required). */
    o.workers_mode = "sync";
    o.workers_max_staleness = 0;
    rv = optimd_client_open_ex(c, "bad-workers", &o, &s, NULL);
    CHECK(rv == OPTIMD_E_BAD_REQUEST, "sync without count: %d (%s)", rv,
          optimd_error_name(rv));
}

int main(void)
{
    test_daemon d;
    if (test_daemon_start(&d, NULL) != 0) return 1;
    url = d.url;
    if (optimd_client_connect(d.url, 10000, &c) != 0) {
        fprintf(stderr, "connect: %s\n", optimd_client_error(NULL));
        test_daemon_stop(&d);
        return 1;
    }
    test_sync_matches_one_client_with_the_mean();
    test_async_staleness();
    test_bounded_waits_for_the_slowest();
    test_sync_timeout();
    test_membership_errors();
    test_refused_before_sending();
    optimd_client_free(c);
    CHECK(test_daemon_alive(&d), "the daemon died");
    CHECK(test_daemon_stop(&d) == 0, "the daemon did not exit cleanly");
    return check_report("client_workers");
}
