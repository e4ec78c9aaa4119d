/*
 * The C client library against the real daemon: every operation, the
 * errors a caller meets (each with its protocol code), a large tensor, and
 * a daemon that is not there.
 */
#include "check.h"
#include "test_daemon.h"

#include <optimd/client.h>

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static optimd_client *c;

static const int64_t shape_w[2] = {2, 3};
static const int64_t shape_b[1] = {3};

#define EXPECT_CODE(expr, code)                                            \
    do {                                                                   \
        int rv_ = (expr);                                                  \
        CHECK(rv_ == (code), "%s: got %d (%s), expected %d (%s): %s",      \
              #expr, rv_, optimd_error_name(rv_), (int)(code),             \
              optimd_error_name(code), optimd_client_error(c));            \
        if (rv_ > 0)                                                       \
            CHECK(strncmp(optimd_client_error(c), optimd_error_name(rv_),  \
                          strlen(optimd_error_name(rv_))) == 0,            \
                  "message '%s' does not start with the error name",       \
                  optimd_client_error(c));                                 \
    } while (0)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void test_hello_and_plugins(void)
{
    optimd_server_info info;
    int rv = optimd_client_hello(c, &info);
    REQUIRE(rv == 0, "hello: %s", optimd_client_error(c));
    CHECK(strcmp(info.server, "optimd") == 0, "server '%s'", info.server);
    CHECK(info.protocol == OPTIMD_PROTOCOL_VERSION, "protocol %lld",
          (long long)info.protocol);
    CHECK(info.version[0] != '\0', "empty version");
    CHECK(info.max_message > 0, "max_message 0");

    optimd_plugin_info *list;
    size_t n;
    rv = optimd_client_plugins(c, &list, &n);
    REQUIRE(rv == 0, "plugins: %s", optimd_client_error(c));
    static const struct {
        const char *id, *kind;
    } want[] = {{"sgd", "optimizer"},  {"adam", "optimizer"},
                {"adamw", "optimizer"}, {"step", "scheduler"},
                {"cosine", "scheduler"}};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        size_t i = 0;
        while (i < n && strcmp(list[i].id, want[k].id) != 0) i++;
        CHECK(i < n, "plugin '%s' not listed", want[k].id);
        if (i < n)
            CHECK(strcmp(list[i].kind, want[k].kind) == 0,
                  "plugin '%s' is a %s", want[k].id, list[i].kind);
    }
    for (size_t i = 1; i < n; i++)
        CHECK(strcmp(list[i - 1].id, list[i].id) < 0,
              "plugins not sorted by id");
    optimd_plugin_list_free(list, n);
}

static const optimd_session_summary *find_summary(
    const optimd_session_summary *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i].name, name) == 0) return &list[i];
    return NULL;
}

/* open -> register -> step -> pull -> info -> set_hparams -> step ->
 * close, checking what each one says. */
static void test_session_life(void)
{
    optimd_session s;
    optimd_hvalue hp[] = {{"lr", OPTIMD_HVALUE_FLOAT, 0.5, 0}};
    double lr = 0;
    int rv = optimd_client_open(c, "life", "sgd", hp, 1, NULL, NULL, 0, &s,
                                &lr);
    REQUIRE(rv == 0, "open: %s", optimd_client_error(c));
    CHECK(strcmp(s.name, "life") == 0 && strlen(s.token) == 32,
          "handle '%s' '%s'", s.name, s.token);
    CHECK(lr == 0.5, "first lr %g", lr);
    CHECK(optimd_client_attach(c, &s) == 0, "attach: %s",
          optimd_client_error(c));

    float w[6] = {1, 2, 3, 4, 5, 6};
    double b[3] = {0.25, -0.5, 1.0};
    optimd_named_tensor params[2] = {
        {"w", OPTIMD_CLIENT_F32, 2, shape_w, w},
        {"b", OPTIMD_CLIENT_F64, 1, shape_b, b}};
    rv = optimd_client_register(c, &s, params, 2);
    REQUIRE(rv == 0, "register: %s", optimd_client_error(c));

    optimd_session_summary *list;
    size_t n;
    REQUIRE(optimd_client_sessions(c, &list, &n) == 0, "sessions: %s",
            optimd_client_error(c));
    const optimd_session_summary *sum = find_summary(list, n, "life");
    CHECK(sum && strcmp(sum->optimizer, "sgd") == 0 && !sum->scheduler &&
              sum->params == 2 && sum->steps == 0,
          "sessions entry for 'life'");
    optimd_session_list_free(list, n);

    /* Gradients that are powers of two keep lr*g exact in fp32. */
    float gw[6] = {1, -1, 2, -2, 0.5f, 0};
    float w_new[6];
    optimd_named_tensor grad = {"w", OPTIMD_CLIENT_F32, 2, shape_w, gw};
    optimd_named_tensor out = {"w", OPTIMD_CLIENT_F32, 2, shape_w, w_new};
    optimd_step_result res;
    rv = optimd_client_step_ex(c, &s, &grad, 1, &out, 1, &res);
    REQUIRE(rv == 0, "step: %s", optimd_client_error(c));
    CHECK(res.steps == 1 && res.lr == 0.5 && res.next_lr == 0.5,
          "step result %llu %g %g", (unsigned long long)res.steps, res.lr,
          res.next_lr);
    for (int i = 0; i < 6; i++)
        CHECK(w_new[i] == w[i] - 0.5f * gw[i], "w[%d] = %g, expected %g", i,
              w_new[i], w[i] - 0.5f * gw[i]);

    float w_pulled[6];
    double b_pulled[3];
    optimd_named_tensor pulled[2] = {
        {"b", OPTIMD_CLIENT_F64, 1, shape_b, b_pulled},
        {"w", OPTIMD_CLIENT_F32, 2, shape_w, w_pulled}};
    rv = optimd_client_pull(c, &s, pulled, 2);
    REQUIRE(rv == 0, "pull: %s", optimd_client_error(c));
    CHECK(memcmp(w_pulled, w_new, sizeof w_new) == 0, "pulled w != stepped w");
    CHECK(memcmp(b_pulled, b, sizeof b) == 0,
          "b changed without a gradient");

    optimd_session_info info;
    rv = optimd_client_info(c, &s, &info);
    REQUIRE(rv == 0, "info: %s", optimd_client_error(c));
    CHECK(info.steps == 1 && info.params == 2 && info.base_lr == 0.5 &&
              info.lr == 0.5,
          "info %llu %llu %g %g", (unsigned long long)info.steps,
          (unsigned long long)info.params, info.base_lr, info.lr);

    optimd_hvalue newlr = {"lr", OPTIMD_HVALUE_FLOAT, 0.25, 0};
    rv = optimd_client_set_hparams(c, &s, &newlr, 1);
    CHECK(rv == 0, "set_hparams: %s", optimd_client_error(c));
    rv = optimd_client_info(c, &s, &info);
    /* The next step uses the new lr; base_lr stays the schedule's base
     * fixed at open (docs/protocol.md, set_hparams). */
    CHECK(rv == 0 && info.base_lr == 0.5 && info.lr == 0.25,
          "lr after set_hparams %g %g", info.base_lr, info.lr);

    /* A step that asks for nothing back still applies. */
    double gb[3] = {1, 1, 1};
    optimd_named_tensor grad_b = {"b", OPTIMD_CLIENT_F64, 1, shape_b, gb};
    rv = optimd_client_step_ex(c, &s, &grad_b, 1, NULL, 0, &res);
    CHECK(rv == 0 && res.steps == 2 && res.lr == 0.25,
          "step without return: %s", optimd_client_error(c));
    rv = optimd_client_pull(c, &s, &pulled[0], 1);
    CHECK(rv == 0, "pull b: %s", optimd_client_error(c));
    for (int i = 0; i < 3; i++)
        CHECK(b_pulled[i] == b[i] - 0.25, "b[%d] = %.17g", i, b_pulled[i]);

    /* The original step API, with an empty gradient set. */
    uint64_t steps = 0;
    double lr_used = 0;
    rv = optimd_client_step(c, &s, NULL, 0, NULL, 0, &lr_used, &steps);
    CHECK(rv == 0 && steps == 3 && lr_used == 0.25, "empty step: %d %s", rv,
          optimd_client_error(c));

    CHECK(optimd_client_close(c, &s) == 0, "close: %s",
          optimd_client_error(c));
    EXPECT_CODE(optimd_client_info(c, &s, &info), OPTIMD_E_UNKNOWN_SESSION);
}

static void test_errors(void)
{
    optimd_session s, other;
    optimd_hvalue lr = {"lr", OPTIMD_HVALUE_FLOAT, 0.1, 0};
    int rv = optimd_client_open(c, "errs", "sgd", &lr, 1, NULL, NULL, 0, &s,
                                NULL);
    REQUIRE(rv == 0, "open: %s", optimd_client_error(c));
    float w[2] = {1, 2};
    static const int64_t two[1] = {2}, three[1] = {3};
    optimd_named_tensor p = {"w", OPTIMD_CLIENT_F32, 1, two, w};
    REQUIRE(optimd_client_register(c, &s, &p, 1) == 0, "register: %s",
            optimd_client_error(c));

    optimd_session bad = s;
    bad.token[0] = bad.token[0] == 'a' ? 'b' : 'a';
    optimd_session_info info;
    EXPECT_CODE(optimd_client_info(c, &bad, &info), OPTIMD_E_BAD_TOKEN);
    EXPECT_CODE(optimd_client_attach(c, &bad), OPTIMD_E_BAD_TOKEN);
    optimd_session nobody = s;
    strcpy(nobody.name, "no-such-session");
    EXPECT_CODE(optimd_client_attach(c, &nobody), OPTIMD_E_UNKNOWN_SESSION);

    EXPECT_CODE(optimd_client_open(c, "errs", "sgd", &lr, 1, NULL, NULL, 0,
                                   &other, NULL),
                OPTIMD_E_SESSION_EXISTS);
    EXPECT_CODE(optimd_client_open(c, "x1", "no-such-plugin", &lr, 1, NULL,
                                   NULL, 0, &other, NULL),
                OPTIMD_E_UNKNOWN_PLUGIN);
    EXPECT_CODE(optimd_client_open(c, "x2", "cosine", NULL, 0, NULL, NULL, 0,
                                   &other, NULL),
                OPTIMD_E_WRONG_KIND);
    optimd_hvalue unknown = {"no_such_key", OPTIMD_HVALUE_FLOAT, 1, 0};
    EXPECT_CODE(optimd_client_open(c, "x3", "sgd", &unknown, 1, NULL, NULL,
                                   0, &other, NULL),
                OPTIMD_E_UNKNOWN_HPARAM);
    optimd_hvalue negative = {"lr", OPTIMD_HVALUE_FLOAT, -1, 0};
    EXPECT_CODE(optimd_client_open(c, "x4", "sgd", &negative, 1, NULL, NULL,
                                   0, &other, NULL),
                OPTIMD_E_BAD_HPARAM);
    EXPECT_CODE(optimd_client_open(c, "bad name!", "sgd", &lr, 1, NULL, NULL,
                                   0, &other, NULL),
                OPTIMD_E_BAD_REQUEST);

    EXPECT_CODE(optimd_client_register(c, &s, &p, 1), OPTIMD_E_PARAM_EXISTS);

    float g3[3] = {1, 1, 1}, g2[2] = {1, 1}, out[2];
    double g2d[2] = {1, 1};
    optimd_named_tensor wrong_shape = {"w", OPTIMD_CLIENT_F32, 1, three, g3};
    optimd_named_tensor wrong_dtype = {"w", OPTIMD_CLIENT_F64, 1, two, g2d};
    optimd_named_tensor unknown_param = {"v", OPTIMD_CLIENT_F32, 1, two, g2};
    optimd_named_tensor result = {"w", OPTIMD_CLIENT_F32, 1, two, out};
    EXPECT_CODE(optimd_client_step(c, &s, &wrong_shape, 1, NULL, 0, NULL,
                                   NULL),
                OPTIMD_E_BAD_TENSOR);
    EXPECT_CODE(optimd_client_step(c, &s, &wrong_dtype, 1, NULL, 0, NULL,
                                   NULL),
                OPTIMD_E_BAD_TENSOR);
    EXPECT_CODE(optimd_client_step(c, &s, &unknown_param, 1, NULL, 0, NULL,
                                   NULL),
                OPTIMD_E_UNKNOWN_PARAM);
    float nan_grad[2] = {NAN, 1};
    optimd_named_tensor nonfinite = {"w", OPTIMD_CLIENT_F32, 1, two,
                                     nan_grad};
    EXPECT_CODE(optimd_client_step(c, &s, &nonfinite, 1, NULL, 0, NULL, NULL),
                OPTIMD_E_NONFINITE);
    EXPECT_CODE(optimd_client_pull(c, &s, &unknown_param, 1),
                OPTIMD_E_UNKNOWN_PARAM);
    /* The caller's buffer has another shape than the parameter: the daemon
     * answers correctly, the library refuses to write past the buffer. */
    optimd_named_tensor small = {"w", OPTIMD_CLIENT_F32, 1, three, g3};
    EXPECT_CODE(optimd_client_pull(c, &s, &small, 1),
                OPTIMD_CLIENT_E_PROTOCOL);
    EXPECT_CODE(optimd_client_set_hparams(c, &s, &unknown, 1),
                OPTIMD_E_UNKNOWN_HPARAM);

    /* None of the failed requests changed anything. */
    CHECK(optimd_client_pull(c, &s, &result, 1) == 0, "pull: %s",
          optimd_client_error(c));
    CHECK(out[0] == 1 && out[1] == 2, "w changed by failed requests: %g %g",
          out[0], out[1]);
    CHECK(optimd_client_info(c, &s, &info) == 0 && info.steps == 0,
          "steps after failed requests: %llu",
          (unsigned long long)info.steps);

    CHECK(optimd_client_close(c, &s) == 0, "close: %s",
          optimd_client_error(c));
    EXPECT_CODE(optimd_client_close(c, &s), OPTIMD_E_UNKNOWN_SESSION);
}

/* With a cosine scheduler, step k uses the lr of epoch k-1. */
static void test_scheduler(void)
{
    optimd_session s;
    optimd_hvalue hp = {"lr", OPTIMD_HVALUE_FLOAT, 0.1, 0};
    optimd_hvalue shp = {"T_max", OPTIMD_HVALUE_INT, 0, 4};
    double lr;
    int rv = optimd_client_open(c, "sched", "adam", &hp, 1, "cosine", &shp, 1,
                                &s, &lr);
    REQUIRE(rv == 0, "open: %s", optimd_client_error(c));
    float w[1] = {1};
    optimd_named_tensor p = {"w", OPTIMD_CLIENT_F32, 0, NULL, w};
    REQUIRE(optimd_client_register(c, &s, &p, 1) == 0, "register scalar: %s",
            optimd_client_error(c));
    optimd_session_summary *list;
    size_t n;
    if (optimd_client_sessions(c, &list, &n) == 0) {
        const optimd_session_summary *sum = find_summary(list, n, "sched");
        CHECK(sum && sum->scheduler && strcmp(sum->scheduler, "cosine") == 0,
              "scheduler not listed");
        optimd_session_list_free(list, n);
    }
    float g[1] = {1};
    optimd_named_tensor grad = {"w", OPTIMD_CLIENT_F32, 0, NULL, g};
    for (int k = 1; k <= 4; k++) {
        optimd_step_result res;
        rv = optimd_client_step_ex(c, &s, &grad, 1, &p, 1, &res);
        REQUIRE(rv == 0, "step %d: %s", k, optimd_client_error(c));
        double want = 0.05 * (1 + cos(M_PI * (k - 1) / 4));
        double next = 0.05 * (1 + cos(M_PI * k / 4));
        CHECK(fabs(res.lr - want) < 1e-12 && fabs(res.next_lr - next) < 1e-12,
              "step %d: lr %.17g next %.17g, expected %.17g %.17g", k, res.lr,
              res.next_lr, want, next);
        if (k == 1) CHECK(res.lr == lr, "open lr %g vs first step %g", lr,
                          res.lr);
    }
    CHECK(optimd_client_close(c, &s) == 0, "close: %s",
          optimd_client_error(c));
}

/* 32 MiB each way: the client must not cap the reply size, and must pack
 * the tensor without choking. */
static void test_large_tensor(void)
{
    optimd_session s;
    optimd_hvalue hp = {"lr", OPTIMD_HVALUE_FLOAT, 1, 0};
    REQUIRE(optimd_client_open(c, "large", "sgd", &hp, 1, NULL, NULL, 0, &s,
                               NULL) == 0,
            "open: %s", optimd_client_error(c));
    const size_t n = 8u << 20;
    const int64_t shape[1] = {(int64_t)n};
    float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g);
    REQUIRE(w && g, "malloc");
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)(i % 1000);
        g[i] = 1.0f;
    }
    optimd_named_tensor p = {"big", OPTIMD_CLIENT_F32, 1, shape, w};
    optimd_named_tensor gt = {"big", OPTIMD_CLIENT_F32, 1, shape, g};
    int rv = optimd_client_register(c, &s, &p, 1);
    CHECK(rv == 0, "register: %s", optimd_client_error(c));
    if (rv == 0) {
        rv = optimd_client_step(c, &s, &gt, 1, &p, 1, NULL, NULL);
        CHECK(rv == 0, "step: %s", optimd_client_error(c));
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += w[i] != (float)(i % 1000) - 1.0f;
        CHECK(bad == 0, "%zu wrong elements after the step", bad);
    }
    free(w);
    free(g);
    optimd_client_close(c, &s);
}

/* A port nobody listens on: the request fails with TRANSPORT within the
 * timeout instead of hanging. */
static void test_dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
                getsockname(fd, (struct sockaddr *)&sa, &len) == 0,
            "cannot find a free port");
    close(fd);
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));

    optimd_client *dead;
    REQUIRE(optimd_client_connect(url, 400, &dead) == 0, "connect: %s",
            optimd_client_error(NULL));
    double t0 = now_ms();
    optimd_server_info info;
    int rv = optimd_client_hello(dead, &info);
    double took = now_ms() - t0;
    CHECK(rv == OPTIMD_CLIENT_E_TRANSPORT, "dead port: rv %d", rv);
    CHECK(took < 1500, "took %.0f ms with a 400 ms timeout", took);
    CHECK(strstr(optimd_client_error(dead), url), "message '%s' lacks the URL",
          optimd_client_error(dead));
    printf("dead port: %s (%.0f ms)\n", optimd_client_error(dead), took);
    optimd_client_free(dead);
}

/* protocol.md section 5: up to twice max_message gets TOO_LARGE; beyond
 * that the transport drops the connection and the client must fail within
 * its timeout, then work again on a fresh connection. */
static void test_size_limits(void)
{
    static const char *const args[] = {"--max-message", "65536", NULL};
    test_daemon small;
    REQUIRE(test_daemon_start(&small, args) == 0, "second daemon");
    optimd_client *sc;
    if (optimd_client_connect(small.url, 1000, &sc) != 0) {
        CHECK(0, "connect: %s", optimd_client_error(NULL));
        test_daemon_stop(&small);
        return;
    }
    optimd_session s;
    optimd_hvalue hp = {"lr", OPTIMD_HVALUE_FLOAT, 1, 0};
    int rv = optimd_client_open(sc, "limits", "sgd", &hp, 1, NULL, NULL, 0,
                                &s, NULL);
    CHECK(rv == 0, "open: %s", optimd_client_error(sc));
    static float data[64 * 1024];
    const int64_t over[1] = {24 * 1024};   /* 96 KiB: TOO_LARGE */
    const int64_t far_over[1] = {64 * 1024}; /* 256 KiB: dropped */
    optimd_named_tensor t = {"w", OPTIMD_CLIENT_F32, 1, over, data};
    rv = optimd_client_register(sc, &s, &t, 1);
    CHECK(rv == OPTIMD_E_TOO_LARGE, "96 KiB request: %d %s", rv,
          optimd_client_error(sc));
    t.shape = far_over;
    double t0 = now_ms();
    rv = optimd_client_register(sc, &s, &t, 1);
    double took = now_ms() - t0;
    CHECK(rv == OPTIMD_CLIENT_E_TRANSPORT, "256 KiB request: %d %s", rv,
          optimd_client_error(sc));
    CHECK(took < 3000, "256 KiB request took %.0f ms", took);
    printf("oversized request: %s (%.0f ms)\n", optimd_client_error(sc), took);
    optimd_server_info info;
    rv = optimd_client_hello(sc, &info);
    CHECK(rv == 0, "hello after a dropped connection: %s",
          optimd_client_error(sc));
    CHECK(info.max_message == 65536, "max_message %llu",
          (unsigned long long)info.max_message);
    optimd_client_close(sc, &s);
    optimd_client_free(sc);
    CHECK(test_daemon_stop(&small) == 0, "second daemon exit status");
}

int main(void)
{
    test_daemon d;
    if (test_daemon_start(&d, NULL) != 0) return 1;
    if (optimd_client_connect(d.url, 10000, &c) != 0) {
        fprintf(stderr, "connect: %s\n", optimd_client_error(NULL));
        test_daemon_stop(&d);
        return 1;
    }
    test_hello_and_plugins();
    test_session_life();
    test_errors();
    test_scheduler();
    test_large_tensor();
    test_dead_port();
    test_size_limits();
    optimd_client_free(c);
    CHECK(test_daemon_alive(&d), "the daemon died");
    int status = test_daemon_stop(&d);
    CHECK(status == 0, "daemon exit status %d", status);
    return check_report("client_daemon");
}
