/*
 * Retries and exactly-once steps against a real daemon that loses replies,
 * dies and comes back.
 *
 * Losing a reply at a chosen moment needs a man in the middle: `proxy`
 * forwards SP messages between the client and the daemon (raw REP in
 * front, raw REQ behind, like nng_device) and, when told, drops the next
 * request or reply and closes the client's connection, or drops everything
 * (a daemon that is away, as seen from the client). Dropping a reply after
 * the daemon answered is the case that matters: the step is applied, the
 * client cannot know, and only the seq keeps its retry from applying it
 * twice.
 *
 * Every run of steps is compared, bit for bit, with the same steps taken
 * by a plain client on a daemon nobody disturbs.
 */
#include "check.h"
#include "restartable_daemon.h"

#include <optimd/client.h>

#include <arpa/inet.h>
#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the proxy ------------------------------------------------------ */

typedef struct proxy {
    nng_socket front, back;
    char url[64];
    pthread_t up, down;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int drop_requests;     /* drop the next N requests, cutting the client */
    int drop_replies;      /* drop the next N replies, cutting the client */
    bool blackhole_after_reply_drop;
    bool blackhole;        /* drop every request, cutting the client */
    unsigned forwarded;    /* requests passed to the daemon */
    unsigned replies_dropped;
} proxy;

/* Closing the client's connection is what a dying daemon does to it. */
static void cut(uint32_t pipe_id)
{
    nng_pipe p;
    p.id = pipe_id;
    nng_pipe_close(p);
}

static uint32_t header_pipe(nng_msg *m)
{
    const unsigned char *h = nng_msg_header(m);
    if (nng_msg_header_len(m) < 4) return 0;
    return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 |
           h[3];
}

static void *proxy_up(void *arg)
{
    proxy *p = arg;
    for (;;) {
        nng_msg *m;
        if (nng_recvmsg(p->front, &m, 0) != 0) return NULL;
        pthread_mutex_lock(&p->mu);
        bool drop = p->blackhole || p->drop_requests > 0;
        if (!p->blackhole && p->drop_requests > 0) p->drop_requests--;
        if (!drop) p->forwarded++;
        pthread_mutex_unlock(&p->mu);
        if (drop) {
            cut(header_pipe(m));
            nng_msg_free(m);
        } else if (nng_sendmsg(p->back, m, 0) != 0) {
            nng_msg_free(m);
        }
    }
}

static void *proxy_down(void *arg)
{
    proxy *p = arg;
    for (;;) {
        nng_msg *m;
        if (nng_recvmsg(p->back, &m, 0) != 0) return NULL;
        pthread_mutex_lock(&p->mu);
        bool drop = p->drop_replies > 0;
        if (drop) {
            p->drop_replies--;
            p->replies_dropped++;
            if (p->blackhole_after_reply_drop) p->blackhole = true;
            pthread_cond_broadcast(&p->cv);
        }
        pthread_mutex_unlock(&p->mu);
        if (drop) {
            cut(header_pipe(m));
            nng_msg_free(m);
        } else if (nng_sendmsg(p->front, m, 0) != 0) {
            nng_msg_free(m);
        }
    }
}

static int proxy_start(proxy *p, const char *daemon_url)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    nng_listener l;
    nng_sockaddr sa;
    if (nng_rep0_open_raw(&p->front) || nng_req0_open_raw(&p->back) ||
        nng_listen(p->front, "tcp://127.0.0.1:0", &l, 0) ||
        nng_listener_get_addr(l, NNG_OPT_LOCADDR, &sa) ||
        /* Find a restarted daemon quickly. */
        nng_socket_set_ms(p->back, NNG_OPT_RECONNMINT, 10) ||
        nng_socket_set_ms(p->back, NNG_OPT_RECONNMAXT, 10) ||
        nng_dial(p->back, daemon_url, NULL, NNG_FLAG_NONBLOCK)) {
        fprintf(stderr, "proxy: cannot start\n");
        return -1;
    }
    snprintf(p->url, sizeof p->url, "tcp://127.0.0.1:%u",
             (unsigned)ntohs(sa.s_in.sa_port));
    pthread_create(&p->up, NULL, proxy_up, p);
    pthread_create(&p->down, NULL, proxy_down, p);
    return 0;
}

static void proxy_stop(proxy *p)
{
    nng_close(p->front);
    nng_close(p->back);
    pthread_join(p->up, NULL);
    pthread_join(p->down, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

static void proxy_set(proxy *p, int drop_requests, int drop_replies,
                      bool blackhole_after, bool blackhole)
{
    pthread_mutex_lock(&p->mu);
    p->drop_requests = drop_requests;
    p->drop_replies = drop_replies;
    p->blackhole_after_reply_drop = blackhole_after;
    p->blackhole = blackhole;
    pthread_mutex_unlock(&p->mu);
}

static unsigned proxy_forwarded(proxy *p)
{
    pthread_mutex_lock(&p->mu);
    unsigned n = p->forwarded;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* Waits until `n` replies have been dropped in all; false after 20 s. */
static bool proxy_wait_dropped(proxy *p, unsigned n)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    pthread_mutex_lock(&p->mu);
    int rc = 0;
    while (p->replies_dropped < n && rc == 0)
        rc = pthread_cond_timedwait(&p->cv, &p->mu, &deadline);
    bool ok = p->replies_dropped >= n;
    pthread_mutex_unlock(&p->mu);
    return ok;
}

/* ---- the steps ------------------------------------------------------- */

#define W_N 17
#define V_N 5

static const int64_t w_shape[1] = {W_N};
static const int64_t v_shape[1] = {V_N};

/* A session's parameters and the procedure that steps them: each gradient
 * depends on the values the daemon last returned, so a step applied twice
 * or skipped changes everything after it. */
typedef struct run {
    optimd_session s;
    float w[W_N];
    double v[V_N];
    unsigned duplicates;
} run;

static void run_init(run *r)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < W_N; i++) r->w[i] = (float)(i - 8) * 0.25f;
    for (int i = 0; i < V_N; i++) r->v[i] = 1.0 + i;
}

static int open_run(optimd_client *c, run *r, const char *name)
{
    run_init(r);
    optimd_hvalue hp[] = {{"lr", OPTIMD_HVALUE_FLOAT, 0.01, 0}};
    optimd_hvalue shp[] = {{"step_size", OPTIMD_HVALUE_INT, 0, 7},
                           {"gamma", OPTIMD_HVALUE_FLOAT, 0.5, 0}};
    optimd_open_options o;
    optimd_open_options_init(&o);
    o.optimizer = "adam";
    o.hparams = hp;
    o.n_hparams = 1;
    o.scheduler = "step";
    o.sched_hparams = shp;
    o.n_sched_hparams = 2;
    o.durability = "always";
    int rv = optimd_client_open_ex(c, name, &o, &r->s, NULL);
    if (rv) return rv;
    optimd_named_tensor p[2] = {{"w", OPTIMD_CLIENT_F32, 1, w_shape, r->w},
                                {"v", OPTIMD_CLIENT_F64, 1, v_shape, r->v}};
    return optimd_client_register(c, &r->s, p, 2);
}

/* Step k (1-based) of the procedure. */
static int step_run(optimd_client *c, run *r, uint64_t k,
                    optimd_step_result *res)
{
    float gw[W_N];
    double gv[V_N];
    for (int i = 0; i < W_N; i++)
        gw[i] = (float)(0.3 * r->w[i] + sin((double)k + i));
    for (int i = 0; i < V_N; i++) gv[i] = r->v[i] * r->v[i] - cos((double)k * i);
    optimd_named_tensor g[2] = {{"w", OPTIMD_CLIENT_F32, 1, w_shape, gw},
                                {"v", OPTIMD_CLIENT_F64, 1, v_shape, gv}};
    optimd_named_tensor p[2] = {{"w", OPTIMD_CLIENT_F32, 1, w_shape, r->w},
                                {"v", OPTIMD_CLIENT_F64, 1, v_shape, r->v}};
    int rv = optimd_client_step_ex(c, &r->s, g, 2, p, 2, res);
    if (rv == 0 && res->duplicate) r->duplicates++;
    return rv;
}

/* Steps from+1 .. to, checking the session's count after each. */
static int steps(optimd_client *c, run *r, uint64_t from, uint64_t to)
{
    for (uint64_t k = from + 1; k <= to; k++) {
        optimd_step_result res;
        int rv = step_run(c, r, k, &res);
        if (rv) {
            CHECK(0, "step %llu: %d %s", (unsigned long long)k, rv,
                  optimd_client_error(c));
            return rv;
        }
        CHECK(res.steps == k, "step %llu: the session counts %llu",
              (unsigned long long)k, (unsigned long long)res.steps);
        if (res.steps != k) return -1;
    }
    return 0;
}

/* The undisturbed run every test compares with: N_REF steps on its own
 * daemon, kept after each step. */
#define N_REF 300
static float ref_w[N_REF + 1][W_N];
static double ref_v[N_REF + 1][V_N];

static int make_reference(void)
{
    rdaemon d;
    if (rdaemon_start(&d, NULL) != 0) return -1;
    optimd_client *c;
    int rv = optimd_client_connect(d.url, 20000, &c);
    run r;
    if (!rv) rv = open_run(c, &r, "reference");
    memcpy(ref_w[0], r.w, sizeof r.w);
    memcpy(ref_v[0], r.v, sizeof r.v);
    for (uint64_t k = 1; !rv && k <= N_REF; k++) {
        optimd_step_result res;
        rv = step_run(c, &r, k, &res);
        memcpy(ref_w[k], r.w, sizeof r.w);
        memcpy(ref_v[k], r.v, sizeof r.v);
    }
    if (rv) fprintf(stderr, "reference: %s\n", optimd_client_error(c));
    optimd_client_free(c);
    rdaemon_cleanup(&d, rv != 0);
    return rv;
}

static void check_matches(const char *what, const run *r, uint64_t k)
{
    CHECK(memcmp(r->w, ref_w[k], sizeof r->w) == 0 &&
              memcmp(r->v, ref_v[k], sizeof r->v) == 0,
          "%s: parameters after step %llu differ from the undisturbed run",
          what, (unsigned long long)k);
}

/* The daemon's own count and values, read afresh. */
static void check_daemon_state(const char *what, optimd_client *c,
                               const run *r, uint64_t k)
{
    optimd_session_info info;
    int rv = optimd_client_info(c, &r->s, &info);
    CHECK(rv == 0 && info.steps == k, "%s: info: %d, %llu steps, want %llu",
          what, rv, (unsigned long long)info.steps, (unsigned long long)k);
    float w[W_N];
    double v[V_N];
    optimd_named_tensor p[2] = {{"w", OPTIMD_CLIENT_F32, 1, w_shape, w},
                                {"v", OPTIMD_CLIENT_F64, 1, v_shape, v}};
    rv = optimd_client_pull(c, &r->s, p, 2);
    CHECK(rv == 0 && memcmp(w, ref_w[k], sizeof w) == 0 &&
              memcmp(v, ref_v[k], sizeof v) == 0,
          "%s: pulled values differ from the undisturbed run after %llu "
          "steps (%d)", what, (unsigned long long)k, rv);
}

static unsigned retry_reports;

static void on_retry(void *arg, const char *message)
{
    (void)arg;
    retry_reports++;
    if (getenv("OPTIMD_TEST_VERBOSE")) fprintf(stderr, "retry: %s\n", message);
}

static optimd_client *connect_retrying(const char *url, int timeout_ms,
                                       int retries)
{
    optimd_client_options o;
    optimd_client_options_init(&o);
    o.timeout_ms = timeout_ms;
    o.max_retries = retries;
    o.backoff_ms = 10;
    o.backoff_max_ms = 200;
    o.on_retry = on_retry;
    optimd_client *c = NULL;
    if (optimd_client_connect_ex(url, &o, &c) != 0)
        CHECK(0, "connect_ex %s: %s", url, optimd_client_error(NULL));
    return c;
}

/* ---- lost requests and replies, the daemon alive ---------------------- */

static void test_lost_messages(rdaemon *d, proxy *px)
{
    optimd_client *c = connect_retrying(px->url, 10000, 5);
    if (!c) return;
    run r;
    int rv = open_run(c, &r, "lost");
    REQUIRE(rv == 0, "open: %s", optimd_client_error(c));
    REQUIRE(steps(c, &r, 0, 5) == 0, "first steps");

    /* The request never reaches the daemon: the retry applies it. */
    optimd_step_result res;
    proxy_set(px, 1, 0, false, false);
    rv = step_run(c, &r, 6, &res);
    CHECK(rv == 0 && !res.duplicate && res.steps == 6 && res.seq == 6 &&
              optimd_client_last_retries(c) == 1,
          "lost request: %d dup %d steps %llu retries %u %s", rv,
          (int)res.duplicate, (unsigned long long)res.steps,
          optimd_client_last_retries(c), optimd_client_error(c));

    /* The daemon applied it and the reply is lost: the retry is answered
     * from the record of the first application. */
    proxy_set(px, 0, 1, false, false);
    unsigned fwd = proxy_forwarded(px);
    rv = step_run(c, &r, 7, &res);
    CHECK(rv == 0 && res.duplicate && res.steps == 7 && res.seq == 7 &&
              optimd_client_last_retries(c) == 1 &&
              proxy_forwarded(px) - fwd == 2,
          "lost reply: %d dup %d steps %llu retries %u %s", rv,
          (int)res.duplicate, (unsigned long long)res.steps,
          optimd_client_last_retries(c), optimd_client_error(c));
    CHECK(optimd_client_error(c)[0] == '\0',
          "error text after a retried success: '%s'", optimd_client_error(c));
    check_matches("after a lost reply", &r, 7);
    CHECK(steps(c, &r, 7, 12) == 0, "steps after the lost reply");
    check_daemon_state("lost messages", c, &r, 12);

    /* An error answer is final: one request, no retry. */
    float nan_w[W_N];
    double gv[V_N] = {0};
    for (int i = 0; i < W_N; i++) nan_w[i] = NAN;
    optimd_named_tensor g[2] = {{"w", OPTIMD_CLIENT_F32, 1, w_shape, nan_w},
                                {"v", OPTIMD_CLIENT_F64, 1, v_shape, gv}};
    fwd = proxy_forwarded(px);
    rv = optimd_client_step_ex(c, &r.s, g, 2, NULL, 0, &res);
    CHECK(rv == OPTIMD_E_NONFINITE && optimd_client_last_retries(c) == 0 &&
              proxy_forwarded(px) - fwd == 1,
          "NONFINITE: %d, %u retries, %u requests", rv,
          optimd_client_last_retries(c), proxy_forwarded(px) - fwd);

    /* Each op whose reply is lost. */
    optimd_server_info hello;
    proxy_set(px, 0, 1, false, false);
    rv = optimd_client_hello(c, &hello);
    CHECK(rv == 0 && optimd_client_last_retries(c) == 1, "hello: %d %s", rv,
          optimd_client_error(c));
    optimd_session_info info;
    proxy_set(px, 0, 1, false, false);
    rv = optimd_client_info(c, &r.s, &info);
    CHECK(rv == 0 && info.steps == 12 && optimd_client_last_retries(c) == 1 &&
              strcmp(info.durability, "always") == 0 &&
              strcmp(info.optimizer, "adam") == 0 &&
              strcmp(info.scheduler, "step") == 0,
          "info: %d %s", rv, optimd_client_error(c));

    /* register: the repeat meets PARAM_EXISTS, finds the values it sent,
     * and succeeds. */
    float extra[3] = {1, 2, 3};
    static const int64_t three[1] = {3};
    optimd_named_tensor e = {"extra", OPTIMD_CLIENT_F32, 1, three, extra};
    proxy_set(px, 0, 1, false, false);
    rv = optimd_client_register(c, &r.s, &e, 1);
    CHECK(rv == 0 && optimd_client_last_retries(c) == 1,
          "register after a lost reply: %d %s", rv, optimd_client_error(c));
    /* Without a lost reply, PARAM_EXISTS is what it always was. */
    rv = optimd_client_register(c, &r.s, &e, 1);
    CHECK(rv == OPTIMD_E_PARAM_EXISTS, "register twice: %d", rv);

    /* set_hparams may have been applied: not repeated. */
    optimd_hvalue hv = {"lr", OPTIMD_HVALUE_FLOAT, 0.01, 0};
    proxy_set(px, 0, 1, false, false);
    fwd = proxy_forwarded(px);
    rv = optimd_client_set_hparams(c, &r.s, &hv, 1);
    CHECK(rv == OPTIMD_CLIENT_E_TRANSPORT && proxy_forwarded(px) - fwd == 1 &&
              strstr(optimd_client_error(c), "not re-sent"),
          "set_hparams after a lost reply: %d %s", rv, optimd_client_error(c));

    /* open: the lost attempt created the session; the repeat, with the
     * same open_key, gets that session and its token. */
    optimd_session other;
    optimd_open_options o;
    optimd_open_options_init(&o);
    o.optimizer = "sgd";
    optimd_hvalue lr = {"lr", OPTIMD_HVALUE_FLOAT, 0.1, 0};
    o.hparams = &lr;
    o.n_hparams = 1;
    proxy_set(px, 0, 1, false, false);
    rv = optimd_client_open_ex(c, "lost-open", &o, &other, NULL);
    CHECK(rv == 0 && optimd_client_last_retries(c) == 1,
          "open after a lost reply: %d %s", rv, optimd_client_error(c));
    CHECK(rv != 0 || optimd_client_attach(c, &other) == 0,
          "the token of the repeated open works: %s", optimd_client_error(c));
    /* A second open of the name is a new request with a new key. */
    optimd_session third;
    rv = optimd_client_open_ex(c, "lost-open", &o, &third, NULL);
    CHECK(rv == OPTIMD_E_SESSION_EXISTS, "open of a taken name: %d %s", rv,
          optimd_client_error(c));

    /* close: the repeat meets UNKNOWN_SESSION, which means done. */
    proxy_set(px, 0, 1, false, false);
    rv = optimd_client_close(c, &r.s);
    CHECK(rv == 0 && optimd_client_last_retries(c) == 1,
          "close after a lost reply: %d %s", rv, optimd_client_error(c));
    CHECK(optimd_client_attach(c, &r.s) == OPTIMD_E_UNKNOWN_SESSION,
          "the session is gone");
    (void)d;
    optimd_client_free(c);
}

/* ---- switch, reload and load whose replies are lost ------------------- */

#define RETRY_ADMIN "admin-token-of-the-retry-test"

static void test_admin_lost_replies(proxy *px)
{
    optimd_client *c = connect_retrying(px->url, 10000, 5);
    if (!c) return;
    /* reload is re-sent: the repeat is a rescan after the lost one, and
     * the report says it may miss what that one loaded. */
    optimd_reload_report rep;
    proxy_set(px, 0, 1, false, false);
    unsigned fwd = proxy_forwarded(px);
    int rv = optimd_client_reload(c, RETRY_ADMIN, &rep);
    CHECK(rv == 0 && optimd_client_last_retries(c) == 1 &&
              proxy_forwarded(px) - fwd == 2 && rep.maybe_incomplete == 1,
          "reload after a lost reply: %d, %u retries, incomplete %d: %s", rv,
          optimd_client_last_retries(c), (int)rep.maybe_incomplete,
          optimd_client_error(c));
    optimd_reload_report_free(&rep);
    rv = optimd_client_reload(c, RETRY_ADMIN, &rep);
    CHECK(rv == 0 && optimd_client_last_retries(c) == 0 &&
              rep.maybe_incomplete == 0,
          "reload: %d, incomplete %d", rv, (int)rep.maybe_incomplete);
    optimd_reload_report_free(&rep);

    /* load is not: each one installs its file again. (The daemon refuses
     * this path; the client cannot know, the reply being lost.) */
    proxy_set(px, 0, 1, false, false);
    fwd = proxy_forwarded(px);
    rv = optimd_client_load(c, RETRY_ADMIN, "/nonexistent/optimd-retry.so",
                            &rep);
    CHECK(rv == OPTIMD_CLIENT_E_TRANSPORT && proxy_forwarded(px) - fwd == 1 &&
              strstr(optimd_client_error(c), "not re-sent") &&
              rep.n_files == 0 && rep.mem == NULL,
          "load after a lost reply: %d %s", rv, optimd_client_error(c));

    /* Nor is switch; the lost attempt did switch. */
    optimd_session s;
    optimd_hvalue lr = {"lr", OPTIMD_HVALUE_FLOAT, 0.1, 0};
    rv = optimd_client_open(c, "lost-switch", "sgd", &lr, 1, NULL, NULL, 0,
                            &s, NULL);
    REQUIRE(rv == 0, "open: %s", optimd_client_error(c));
    optimd_switch_result sw;
    proxy_set(px, 0, 1, false, false);
    fwd = proxy_forwarded(px);
    rv = optimd_client_switch(c, &s, "adam", NULL, 0, &sw);
    CHECK(rv == OPTIMD_CLIENT_E_TRANSPORT && proxy_forwarded(px) - fwd == 1 &&
              strstr(optimd_client_error(c), "not re-sent") &&
              sw.mem == NULL,
          "switch after a lost reply: %d %s", rv, optimd_client_error(c));
    optimd_session_info info;
    rv = optimd_client_info(c, &s, &info);
    CHECK(rv == 0 && strcmp(info.optimizer, "adam") == 0,
          "the lost switch: %d, optimizer %s", rv, info.optimizer);
    CHECK(optimd_client_close(c, &s) == 0, "close: %s",
          optimd_client_error(c));
    optimd_client_free(c);
}

/* ---- a step in flight when the daemon dies ---------------------------- */

typedef struct stepper {
    optimd_client *c;
    run *r;
    uint64_t k;
    optimd_step_result res;
    int rv;
    unsigned retries;
} stepper;

static void *one_step(void *arg)
{
    stepper *st = arg;
    st->rv = step_run(st->c, st->r, st->k, &st->res);
    st->retries = optimd_client_last_retries(st->c);
    return NULL;
}

static void test_in_flight_across_restart(rdaemon *d, proxy *px)
{
    optimd_client *c = connect_retrying(px->url, 10000, 50);
    if (!c) return;
    run r;
    int rv = open_run(c, &r, "in-flight");
    REQUIRE(rv == 0, "open: %s", optimd_client_error(c));
    REQUIRE(steps(c, &r, 0, 20) == 0, "first steps");

    /* Step 21 is applied and logged (durability always: on disk before
     * the reply exists); its reply is dropped and from then on the daemon
     * is unreachable while it is killed and restarted. */
    proxy_set(px, 0, 1, true, false);
    stepper st = {c, &r, 21, {0}, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, one_step, &st);
    bool dropped = proxy_wait_dropped(px, px->replies_dropped + 1);
    CHECK(dropped, "the reply of step 21 never came");
    rdaemon_kill9(d);
    int restarted = rdaemon_restart(d, NULL);
    CHECK(restarted == 0, "restart failed");
    proxy_set(px, 0, 0, false, false);
    pthread_join(t, NULL);
    CHECK(st.rv == 0 && st.res.duplicate && st.res.steps == 21 &&
              st.res.seq == 21 && st.retries >= 1,
          "step 21 across the restart: %d dup %d steps %llu retries %u %s",
          st.rv, (int)st.res.duplicate, (unsigned long long)st.res.steps,
          st.retries, optimd_client_error(c));
    check_matches("step 21 answered after the restart", &r, 21);
    REQUIRE(restarted == 0 && st.rv == 0, "cannot go on");
    CHECK(steps(c, &r, 21, 40) == 0, "steps after the restart");
    check_matches("after the restart", &r, 40);
    check_daemon_state("after the restart", c, &r, 40);
    optimd_client_free(c);
}

/* ---- the budget runs out ----------------------------------------------- */

static void test_budget(rdaemon *d, proxy *px)
{
    optimd_client *c = connect_retrying(px->url, 400, 2);
    if (!c) return;
    run r;
    int rv = open_run(c, &r, "budget");
    REQUIRE(rv == 0, "open: %s", optimd_client_error(c));
    REQUIRE(steps(c, &r, 0, 3) == 0, "first steps");

    /* Step 4 is applied, its reply lost, and the daemon stays away: the
     * client gives up, saying so, and keeps seq 4. */
    proxy_set(px, 0, 1, true, false);
    optimd_step_result res;
    double t0 = now_ms();
    rv = step_run(c, &r, 4, &res);
    double took = now_ms() - t0;
    const char *msg = optimd_client_error(c);
    CHECK(rv == OPTIMD_CLIENT_E_TRANSPORT &&
              strstr(msg, "gave up after 2 retries") && strstr(msg, "seq 4") &&
              strstr(msg, px->url),
          "budget spent: %d %s", rv, msg);
    CHECK(took < 5000, "giving up took %.0f ms", took);
    printf("budget spent: %s (%.0f ms)\n", msg, took);
    CHECK(optimd_client_next_seq(c, r.s.name) == 4, "seq 4 not kept");
    /* The caller calls step 4 again once the daemon is back: the daemon
     * recognises it. */
    proxy_set(px, 0, 0, false, false);
    rv = step_run(c, &r, 4, &res);
    CHECK(rv == 0 && res.duplicate && res.steps == 4,
          "step 4 called again: %d dup %d %s", rv, (int)res.duplicate,
          optimd_client_error(c));
    check_matches("step 4 called again", &r, 4);

    optimd_client_free(c);

    /* A real crash with nobody restarting it, seen by a client connected
     * straight to the daemon (the proxy would queue the attempts and
     * deliver them to the next daemon, which is fine but not this case). */
    c = connect_retrying(d->url, 400, 2);
    REQUIRE(c, "direct client");
    rdaemon_kill9(d);
    t0 = now_ms();
    rv = step_run(c, &r, 5, &res);
    took = now_ms() - t0;
    msg = optimd_client_error(c);
    CHECK(rv == OPTIMD_CLIENT_E_TRANSPORT &&
              strstr(msg, "gave up after 2 retries") &&
              strstr(msg, "no connection to optimd at") && strstr(msg, d->url),
          "daemon dead: %d %s", rv, msg);
    CHECK(took < 5000, "giving up took %.0f ms", took);
    printf("daemon dead: %s (%.0f ms)\n", msg, took);
    REQUIRE(rdaemon_restart(d, NULL) == 0, "restart");
    rv = step_run(c, &r, 5, &res);
    CHECK(rv == 0 && !res.duplicate && res.steps == 5,
          "step 5 after the restart: %d dup %d %s", rv, (int)res.duplicate,
          optimd_client_error(c));
    CHECK(steps(c, &r, 5, 10) == 0, "steps after the restart");
    check_matches("budget", &r, 10);
    check_daemon_state("budget", c, &r, 10);
    optimd_client_free(c);
}

/* ---- kill -9 at random moments while steps stream ---------------------- */

typedef struct streamer {
    optimd_client *c;
    run *r;
    atomic_uint done;
    int rv;
} streamer;

static void *stream(void *arg)
{
    streamer *st = arg;
    for (uint64_t k = 1; k <= N_REF; k++) {
        optimd_step_result res;
        st->rv = step_run(st->c, st->r, k, &res);
        if (!st->rv && res.steps != k) st->rv = -100;
        if (st->rv) {
            fprintf(stderr, "stream: step %llu: %d (%llu) %s\n",
                    (unsigned long long)k, st->rv,
                    (unsigned long long)res.steps,
                    optimd_client_error(st->c));
            break;
        }
        atomic_store(&st->done, (unsigned)k);
    }
    return NULL;
}

static void test_random_kills(void)
{
    rdaemon d;
    REQUIRE(rdaemon_start(&d, NULL) == 0, "daemon");
    optimd_client *c = connect_retrying(d.url, 10000, 50);
    run r;
    int rv = c ? open_run(c, &r, "crashy") : -1;
    if (rv) {
        CHECK(0, "open: %s", c ? optimd_client_error(c) : "no client");
        optimd_client_free(c);
        rdaemon_cleanup(&d, 1);
        return;
    }
    /* Kills land at chosen step counts rather than chosen times, so that
     * a fast machine cannot finish before the last one; the moment within
     * a step is whatever it is. */
    const char *fixed = getenv("OPTIMD_TEST_SEED");
    unsigned seed = fixed ? (unsigned)strtoul(fixed, NULL, 10)
                          : (unsigned)time(NULL) ^ (unsigned)getpid();
    printf("random kills: seed %u (OPTIMD_TEST_SEED repeats it)\n", seed);
    srand(seed);
    unsigned at[5];
    for (int i = 0; i < 5; i++)
        at[i] = 20 + (unsigned)i * 55 + (unsigned)(rand() % 50);
    streamer st = {c, &r, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, stream, &st);
    int kills = 0;
    double deadline = now_ms() + 60000;
    for (int i = 0; i < 5 && now_ms() < deadline; i++) {
        while (atomic_load(&st.done) < at[i] && now_ms() < deadline &&
               atomic_load(&st.done) < N_REF && !st.rv)
            sleep_ms(1);
        if (st.rv || atomic_load(&st.done) >= N_REF) break;
        sleep_ms(rand() % 3);
        rdaemon_kill9(&d);
        kills++;
        sleep_ms(rand() % 30);
        if (rdaemon_restart(&d, NULL) != 0) {
            CHECK(0, "restart %d failed", kills);
            break;
        }
    }
    pthread_join(t, NULL);
    CHECK(kills == 5, "only %d kills landed before the run ended", kills);
    CHECK(st.rv == 0, "the stream failed: %d", st.rv);
    if (st.rv == 0) {
        check_matches("after 5 kills", &r, N_REF);
        check_daemon_state("after 5 kills", c, &r, N_REF);
    }
    printf("random kills: %d kills, %u duplicates answered, %u retries "
           "reported\n", kills, r.duplicates, retry_reports);
    optimd_client_free(c);
    rdaemon_cleanup(&d, check_failure_count != 0);
}

/* ---- client ids across processes --------------------------------------- */

static void test_client_ids(rdaemon *d)
{
    optimd_client *a = connect_retrying(d->url, 10000, 5);
    optimd_client *b = connect_retrying(d->url, 10000, 5);
    if (!a || !b) {
        optimd_client_free(a);
        optimd_client_free(b);
        return;
    }
    CHECK(strcmp(optimd_client_id(a), optimd_client_id(b)) != 0,
          "two clients share the id %s", optimd_client_id(a));
    run r;
    int rv = open_run(a, &r, "ids");
    REQUIRE(rv == 0, "open: %s", optimd_client_error(a));
    CHECK(steps(a, &r, 0, 3) == 0, "client a");
    /* A client in a new process has a new id: its seq 1 is a new step,
     * not a repeat of the old process's seq 1. */
    CHECK(steps(b, &r, 3, 6) == 0, "client b");
    /* A process that takes over a's id must start above a's last seq:
     * otherwise its steps are answered as repeats and not applied. */
    optimd_client *a2 = connect_retrying(d->url, 10000, 5);
    REQUIRE(a2 && optimd_client_set_id(a2, optimd_client_id(a)) == 0,
            "set id");
    optimd_step_result res;
    rv = step_run(a2, &r, 7, &res);
    CHECK(rv == 0 && res.duplicate && res.steps == 3,
          "reused id, seq 1: %d dup %d steps %llu", rv, (int)res.duplicate,
          (unsigned long long)res.steps);
    /* That duplicate reply carried the current values: put the run back
     * where the session stands. */
    CHECK(optimd_client_set_next_seq(a2, r.s.name, 4) == 0, "set seq");
    CHECK(steps(a2, &r, 6, 9) == 0, "reused id from seq 4");
    check_matches("ids", &r, 9);
    optimd_client_free(a);
    optimd_client_free(b);
    optimd_client_free(a2);
}

int main(void)
{
    double t0 = now_ms();
    if (make_reference() != 0) return 1;

    rdaemon d;
    static const char *const admin[] = {"--admin-token", RETRY_ADMIN, NULL};
    if (rdaemon_start(&d, admin) != 0) return 1;
    proxy px;
    if (proxy_start(&px, d.url) != 0) {
        rdaemon_cleanup(&d, 1);
        return 1;
    }
    test_lost_messages(&d, &px);
    test_admin_lost_replies(&px);
    test_in_flight_across_restart(&d, &px);
    test_budget(&d, &px);
    test_client_ids(&d);
    proxy_stop(&px);
    CHECK(rdaemon_stop(&d) == 0, "daemon exit status");
    rdaemon_cleanup(&d, check_failure_count != 0);

    test_random_kills();
    printf("client_retry: %.1f s\n", (now_ms() - t0) / 1000);
    return check_report("client_retry");
}
