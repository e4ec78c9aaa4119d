/*
 * 16 clients, each on its own socket and thread, step 4 sessions at once.
 * Every session has parameters w0..w3 (the same names in each session, so
 * that a mix-up between sessions would go unnoticed by name alone), every
 * client owns one parameter of one session, and each gradient depends on
 * the values the daemon last returned. The sessions use different
 * optimizers; afterwards the same procedure runs serially on fresh
 * sessions, and every final value must be bit-identical. A reply meant for
 * another client, a step applied to the wrong session, or state shared
 * between sessions shows up as a difference.
 *
 * Each parameter's trajectory depends only on its own steps (torch keeps
 * optimizer state per parameter, protocol.md: a parameter without a
 * gradient is untouched), so the interleaving of clients does not change
 * the expected values.
 */
#include "check.h"
#include "test_daemon.h"

#include <optimd/client.h>

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define N_SESSIONS 4
#define N_PARAMS 4              /* per session: one client each */
#define N_CLIENTS (N_SESSIONS * N_PARAMS)
#define N_STEPS 60
#define N_ELEMS 257             /* odd, to leave a tail after any SIMD width */

typedef struct session_spec {
    const char *optimizer;
    optimd_hvalue hp[3];
    size_t n_hp;
} session_spec;

static const session_spec specs[N_SESSIONS] = {
    {"sgd", {{"lr", OPTIMD_HVALUE_FLOAT, 0.01, 0},
             {"momentum", OPTIMD_HVALUE_FLOAT, 0.9, 0}}, 2},
    {"adam", {{"lr", OPTIMD_HVALUE_FLOAT, 0.01, 0}}, 1},
    {"adamw", {{"lr", OPTIMD_HVALUE_FLOAT, 0.02, 0},
               {"weight_decay", OPTIMD_HVALUE_FLOAT, 0.1, 0}}, 2},
    {"sgd", {{"lr", OPTIMD_HVALUE_FLOAT, 0.005, 0},
             {"momentum", OPTIMD_HVALUE_FLOAT, 0.8, 0},
             {"nesterov", OPTIMD_HVALUE_BOOL, 0, 1}}, 3},
};

static const char *const param_names[N_PARAMS] = {"w0", "w1", "w2", "w3"};
static const int64_t shape[1] = {N_ELEMS};
static const char *url;

/* w3 is f64 in every session, the rest f32. */
static int32_t param_dtype(int j)
{
    return j == 3 ? OPTIMD_CLIENT_F64 : OPTIMD_CLIENT_F32;
}

static double initial_value(int k, int j, int i)
{
    return sin(0.37 * i + 1.3 * j + 2.9 * k);
}

static double target_value(int k, int j, int i)
{
    return 0.5 * cos(0.11 * i - 0.7 * j + k);
}

typedef struct param_buf {
    float f[N_ELEMS];
    double d[N_ELEMS];
} param_buf;

static optimd_named_tensor tensor_of(int j, param_buf *b)
{
    optimd_named_tensor t = {param_names[j], param_dtype(j), 1, shape,
                             param_dtype(j) == OPTIMD_CLIENT_F32
                                 ? (void *)b->f
                                 : (void *)b->d};
    return t;
}

static void fill_initial(int k, int j, param_buf *b)
{
    for (int i = 0; i < N_ELEMS; i++) {
        b->d[i] = initial_value(k, j, i);
        b->f[i] = (float)b->d[i];
    }
}

/* The gradient of 0.5*|p - target|^2 at the current point. */
static void gradient(int k, int j, const param_buf *p, param_buf *g)
{
    for (int i = 0; i < N_ELEMS; i++) {
        g->f[i] = p->f[i] - (float)target_value(k, j, i);
        g->d[i] = p->d[i] - target_value(k, j, i);
    }
}

/* Steps parameter j of session s N_STEPS times from `p`. Returns 0, or
 * the failing call's code (with a message on stderr). */
static int run_param(optimd_client *c, const optimd_session *s, int k, int j,
                     param_buf *p)
{
    param_buf g;
    optimd_named_tensor out = tensor_of(j, p);
    optimd_named_tensor grad = tensor_of(j, &g);
    for (int step = 0; step < N_STEPS; step++) {
        gradient(k, j, p, &g);
        int rv = optimd_client_step(c, s, &grad, 1, &out, 1, NULL, NULL);
        if (rv) {
            fprintf(stderr, "session %s %s step %d: %s\n", s->name,
                    param_names[j], step, optimd_client_error(c));
            return rv;
        }
    }
    return 0;
}

typedef struct worker {
    pthread_t thread;
    int session;
    int param;
    optimd_session handle;
    param_buf p;
    int rv;
} worker;

static pthread_barrier_t start_line;

static void *worker_main(void *arg)
{
    worker *w = arg;
    optimd_client *c;
    w->rv = optimd_client_connect(url, 30000, &c);
    pthread_barrier_wait(&start_line);
    if (w->rv) {
        fprintf(stderr, "worker connect: %s\n", optimd_client_error(NULL));
        return NULL;
    }
    w->rv = run_param(c, &w->handle, w->session, w->param, &w->p);
    optimd_client_free(c);
    return NULL;
}

/* Opens session k under `name` and registers its initial parameters. */
static int open_session(optimd_client *c, int k, const char *name,
                        optimd_session *s)
{
    int rv = optimd_client_open(c, name, specs[k].optimizer, specs[k].hp,
                                specs[k].n_hp, NULL, NULL, 0, s, NULL);
    if (rv) {
        fprintf(stderr, "open %s: %s\n", name, optimd_client_error(c));
        return rv;
    }
    param_buf init[N_PARAMS];
    optimd_named_tensor t[N_PARAMS];
    for (int j = 0; j < N_PARAMS; j++) {
        fill_initial(k, j, &init[j]);
        t[j] = tensor_of(j, &init[j]);
    }
    rv = optimd_client_register(c, s, t, N_PARAMS);
    if (rv) fprintf(stderr, "register %s: %s\n", name, optimd_client_error(c));
    return rv;
}

static bool same_values(int j, const param_buf *a, const param_buf *b)
{
    return param_dtype(j) == OPTIMD_CLIENT_F32
               ? memcmp(a->f, b->f, sizeof a->f) == 0
               : memcmp(a->d, b->d, sizeof a->d) == 0;
}

static void run(optimd_client *c)
{
    static worker workers[N_CLIENTS];
    optimd_session sessions[N_SESSIONS];
    for (int k = 0; k < N_SESSIONS; k++) {
        char name[32];
        snprintf(name, sizeof name, "concurrent-%d", k);
        REQUIRE(open_session(c, k, name, &sessions[k]) == 0, "open");
    }

    pthread_barrier_init(&start_line, NULL, N_CLIENTS);
    for (int t = 0; t < N_CLIENTS; t++) {
        worker *w = &workers[t];
        /* Interleave sessions across thread start order. */
        w->session = t % N_SESSIONS;
        w->param = t / N_SESSIONS;
        w->handle = sessions[w->session];
        fill_initial(w->session, w->param, &w->p);
        pthread_create(&w->thread, NULL, worker_main, w);
    }
    for (int t = 0; t < N_CLIENTS; t++) pthread_join(workers[t].thread, NULL);
    pthread_barrier_destroy(&start_line);
    for (int t = 0; t < N_CLIENTS; t++)
        REQUIRE(workers[t].rv == 0, "worker %d failed: %d", t, workers[t].rv);

    for (int k = 0; k < N_SESSIONS; k++) {
        optimd_session_info info;
        int rv = optimd_client_info(c, &sessions[k], &info);
        CHECK(rv == 0 && info.steps == N_PARAMS * N_STEPS,
              "session %d: %llu steps, expected %d", k,
              (unsigned long long)info.steps, N_PARAMS * N_STEPS);
    }

    /* The serial reference, one parameter after another on one client. */
    for (int k = 0; k < N_SESSIONS; k++) {
        char name[32];
        snprintf(name, sizeof name, "serial-%d", k);
        optimd_session ref;
        REQUIRE(open_session(c, k, name, &ref) == 0, "open reference");
        for (int j = 0; j < N_PARAMS; j++) {
            param_buf p, pulled;
            fill_initial(k, j, &p);
            REQUIRE(run_param(c, &ref, k, j, &p) == 0, "reference run");
            const worker *w = NULL;
            for (int t = 0; t < N_CLIENTS; t++)
                if (workers[t].session == k && workers[t].param == j)
                    w = &workers[t];
            CHECK(same_values(j, &w->p, &p),
                  "session %d (%s) %s: concurrent result differs from the "
                  "serial one", k, specs[k].optimizer, param_names[j]);
            /* What the daemon holds is what the last reply said. */
            optimd_named_tensor t = tensor_of(j, &pulled);
            CHECK(optimd_client_pull(c, &sessions[k], &t, 1) == 0 &&
                      same_values(j, &w->p, &pulled),
                  "session %d %s: pulled values differ from the last reply",
                  k, param_names[j]);
        }
        optimd_client_close(c, &ref);
        optimd_client_close(c, &sessions[k]);
    }
}

int main(void)
{
    test_daemon d;
    if (test_daemon_start(&d, NULL) != 0) return 1;
    url = d.url;
    optimd_client *c;
    if (optimd_client_connect(url, 30000, &c) != 0) {
        fprintf(stderr, "connect: %s\n", optimd_client_error(NULL));
        test_daemon_stop(&d);
        return 1;
    }
    run(c);
    optimd_client_free(c);
    CHECK(test_daemon_alive(&d), "the daemon died");
    int status = test_daemon_stop(&d);
    CHECK(status == 0, "daemon exit status %d", status);
    return check_report("client_concurrency");
}
