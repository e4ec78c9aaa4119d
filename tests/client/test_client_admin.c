/*
 * switch, reload and load through the C client against the real daemon:
 * a session moved from SGD with momentum to RMSprop keeps its momentum
 * buffer and its step count; versions of tests/hotswap/toy.c (the update
 * is p -= lr * scale * g, scale 1 in v1 and 2 in v2) loaded by path and by
 * a rescan change what the next step does; a wrong admin token and a
 * broken plugin are refused; drop closes a session without its token and
 * shutdown stops the daemon, which exits 0. CTest gives OPTIMD_TOYS (the built toy
 * versions, <dir>/<variant>/toy.so) and OPTIMD_VALIDATE (optimd-validate).
 */
#include "check.h"
#include "test_daemon.h"

#include <optimd/client.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ADMIN "admin-secret-for-the-c-test"

static optimd_client *c;
static char toys[2048];
static char plugin_dir[256];

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

static void toy_path(const char *variant, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s/toy.so", toys, variant);
}

/* Puts a toy version into the watched directory as an installer should:
 * a new file renamed over the old one. */
static int put_toy(const char *variant)
{
    char src[4096], tmp[512], dst[512];
    toy_path(variant, src, sizeof src);
    snprintf(tmp, sizeof tmp, "%s/.toy.so.tmp", plugin_dir);
    snprintf(dst, sizeof dst, "%s/toy.so", plugin_dir);
    FILE *in = fopen(src, "rb"), *out = fopen(tmp, "wb");
    int rc = in && out ? 0 : -1;
    char buf[65536];
    size_t n;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = -1;
    if (in) fclose(in);
    if (out && fclose(out) != 0) rc = -1;
    if (rc == 0 && rename(tmp, dst) != 0) rc = -1;
    if (rc) fprintf(stderr, "cannot put %s into %s\n", src, plugin_dir);
    return rc;
}

static const optimd_tensor *slot(const optimd_param_state *st,
                                 const char *key)
{
    for (size_t i = 0; i < st->n_slots; i++)
        if (strcmp(st->slots[i].name, key) == 0) return &st->slots[i];
    return NULL;
}

static void test_switch(void)
{
    enum { N = 5 };
    static const int64_t shape[1] = {N};
    optimd_session s;
    optimd_hvalue hp[] = {{"lr", OPTIMD_HVALUE_FLOAT, 0.1, 0},
                          {"momentum", OPTIMD_HVALUE_FLOAT, 0.9, 0}};
    REQUIRE(optimd_client_open(c, "sw", "sgd", hp, 2, NULL, NULL, 0, &s,
                               NULL) == 0,
            "open: %s", optimd_client_error(c));
    double w[N] = {-1, -0.5, 0, 0.5, 1};
    optimd_named_tensor t = {"w", OPTIMD_CLIENT_F64, 1, shape, w};
    REQUIRE(optimd_client_register(c, &s, &t, 1) == 0, "register: %s",
            optimd_client_error(c));
    double g[N];
    optimd_named_tensor grad = {"w", OPTIMD_CLIENT_F64, 1, shape, g};
    optimd_named_tensor out = {"w", OPTIMD_CLIENT_F64, 1, shape, w};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < N; i++) g[i] = 0.5 + k + 0.25 * i;
        REQUIRE(optimd_client_step(c, &s, &grad, 1, &out, 1, NULL, NULL) == 0,
                "step %d: %s", k, optimd_client_error(c));
    }
    const char *names[] = {"w"};
    optimd_param_state *before;
    size_t n_before;
    REQUIRE(optimd_client_state(c, &s, names, 1, &before, &n_before) == 0,
            "state: %s", optimd_client_error(c));
    const optimd_tensor *buf0 = n_before == 1 ? slot(&before[0],
                                                     "momentum_buffer")
                                              : NULL;
    if (!buf0 || buf0->nbytes != sizeof(double) * N) {
        CHECK(0, "SGD with momentum has no momentum_buffer of %d doubles", N);
        optimd_param_state_free(before, n_before);
        return;
    }
    double buf[N];
    memcpy(buf, buf0->data, sizeof buf);
    optimd_param_state_free(before, n_before);
    /* Three SGD steps left a buffer that is far from zero. */
    CHECK(buf[0] > 1, "momentum_buffer[0] %g after three steps", buf[0]);

    /* Refusals first: each leaves the session on SGD. */
    optimd_hvalue nesterov[] = {{"nesterov", OPTIMD_HVALUE_BOOL, 0, 1},
                                {"momentum", OPTIMD_HVALUE_FLOAT, 0, 0}};
    EXPECT_CODE(optimd_client_switch(c, &s, "nope", NULL, 0, NULL),
                OPTIMD_E_UNKNOWN_PLUGIN);
    EXPECT_CODE(optimd_client_switch(c, &s, "step", NULL, 0, NULL),
                OPTIMD_E_WRONG_KIND);
    EXPECT_CODE(optimd_client_switch(c, &s, "sgd", nesterov, 2, NULL),
                OPTIMD_E_BAD_HPARAM);
    optimd_hvalue unknown = {"no_such_key", OPTIMD_HVALUE_FLOAT, 1, 0};
    EXPECT_CODE(optimd_client_switch(c, &s, "rmsprop", &unknown, 1, NULL),
                OPTIMD_E_UNKNOWN_HPARAM);
    optimd_session wrong = s;
    wrong.token[0] = wrong.token[0] == 'a' ? 'b' : 'a';
    EXPECT_CODE(optimd_client_switch(c, &wrong, "rmsprop", NULL, 0, NULL),
                OPTIMD_E_BAD_TOKEN);
    EXPECT_CODE(optimd_client_switch(c, &s, NULL, NULL, 0, NULL),
                OPTIMD_CLIENT_E_ARG);
    optimd_session_info info;
    REQUIRE(optimd_client_info(c, &s, &info) == 0, "info: %s",
            optimd_client_error(c));
    CHECK(strcmp(info.optimizer, "sgd") == 0 && info.steps == 3,
          "after refused switches: %s, %llu steps", info.optimizer,
          (unsigned long long)info.steps);

    optimd_hvalue mom = {"momentum", OPTIMD_HVALUE_FLOAT, 0.5, 0};
    optimd_switch_result r;
    int rv = optimd_client_switch(c, &s, "rmsprop", &mom, 1, &r);
    REQUIRE(rv == 0, "switch: %s", optimd_client_error(c));
    CHECK(strcmp(r.optimizer, "rmsprop") == 0, "switched to %s", r.optimizer);
    CHECK(r.optimizer_version && r.optimizer_version[0], "no version");
    CHECK(r.n_carried == 1 && strcmp(r.carried[0], "momentum_buffer") == 0 &&
              r.carried[1] == NULL,
          "carried %zu keys, first '%s'", r.n_carried,
          r.n_carried ? r.carried[0] : "");
    optimd_switch_result_free(&r);
    CHECK(r.mem == NULL && r.n_carried == 0, "free left the result set");

    optimd_param_state *after;
    size_t n_after;
    REQUIRE(optimd_client_state(c, &s, names, 1, &after, &n_after) == 0,
            "state: %s", optimd_client_error(c));
    const optimd_tensor *b1 = n_after == 1 ? slot(&after[0],
                                                  "momentum_buffer")
                                           : NULL;
    const optimd_tensor *sq = n_after == 1 ? slot(&after[0], "square_avg")
                                           : NULL;
    CHECK(b1 && b1->nbytes == sizeof buf &&
              memcmp(b1->data, buf, sizeof buf) == 0,
          "momentum_buffer not carried bit for bit");
    bool zero = sq && sq->nbytes == sizeof buf;
    for (int i = 0; zero && i < N; i++) zero = ((double *)sq->data)[i] == 0;
    CHECK(zero, "square_avg does not start zero-filled");
    optimd_param_state_free(after, n_after);

    optimd_session_details *d;
    REQUIRE(optimd_client_info_ex(c, &s, &d) == 0, "info: %s",
            optimd_client_error(c));
    CHECK(strcmp(d->optimizer, "rmsprop") == 0 && d->steps == 3,
          "after the switch: %s, %llu steps", d->optimizer,
          (unsigned long long)d->steps);
    /* lr is shared, so it keeps the session's value; momentum is --set. */
    for (size_t i = 0; i < d->n_hparams; i++) {
        if (strcmp(d->hparams[i].key, "lr") == 0)
            CHECK(d->hparams[i].f == 0.1, "lr %g", d->hparams[i].f);
        if (strcmp(d->hparams[i].key, "momentum") == 0)
            CHECK(d->hparams[i].f == 0.5, "momentum %g", d->hparams[i].f);
    }
    optimd_session_details_free(d);

    /* The next step is RMSprop's from the carried buffer (torch's
     * defaults: alpha 0.99, eps 1e-8): a zero buffer would give another
     * value. */
    double before_w[N], want[N];
    memcpy(before_w, w, sizeof w);
    for (int i = 0; i < N; i++) {
        g[i] = 1.0 - 0.5 * i;
        double v = (1 - 0.99) * g[i] * g[i];
        double b = buf[i] * 0.5 + g[i] / (sqrt(v) + 1e-8);
        want[i] = before_w[i] - 0.1 * b;
    }
    optimd_step_result res;
    REQUIRE(optimd_client_step_ex(c, &s, &grad, 1, &out, 1, &res) == 0,
            "step after the switch: %s", optimd_client_error(c));
    CHECK(res.steps == 4, "step count %llu after the switch, expected 4",
          (unsigned long long)res.steps);
    for (int i = 0; i < N; i++)
        CHECK(fabs(w[i] - want[i]) <= 1e-12 * (1 + fabs(want[i])),
              "w[%d] = %.17g, RMSprop from the carried buffer gives %.17g",
              i, w[i], want[i]);
    CHECK(optimd_client_close(c, &s) == 0, "close: %s",
          optimd_client_error(c));
}

static const int64_t toy_shape[1] = {4};
static const float toy_g[4] = {0.5f, 1, 2, 0.25f};

/* One toy step; checks that it moved p by lr * scale * g, exactly (the
 * numbers are powers of two). */
static void toy_step(const optimd_session *s, float p[4], int scale,
                     const char *when)
{
    float before[4];
    memcpy(before, p, sizeof before);
    optimd_named_tensor grad = {"p", OPTIMD_CLIENT_F32, 1, toy_shape,
                                (void *)toy_g};
    optimd_named_tensor out = {"p", OPTIMD_CLIENT_F32, 1, toy_shape, p};
    int rv = optimd_client_step(c, s, &grad, 1, &out, 1, NULL, NULL);
    REQUIRE(rv == 0, "step %s: %s", when, optimd_client_error(c));
    for (int i = 0; i < 4; i++) {
        float want = before[i] - (float)(0.125 * scale) * toy_g[i];
        CHECK(p[i] == want, "%s: p[%d] = %g, scale %d gives %g", when, i,
              p[i], scale, want);
    }
}

static void expect_version(const optimd_session *s, const char *version)
{
    optimd_session_details *d;
    REQUIRE(optimd_client_info_ex(c, s, &d) == 0, "info: %s",
            optimd_client_error(c));
    CHECK(strcmp(d->optimizer, "toy") == 0 &&
              strcmp(d->optimizer_version, version) == 0,
          "session on %s %s, expected toy %s", d->optimizer,
          d->optimizer_version, version);
    optimd_session_details_free(d);
}

static void test_reload_and_load(void)
{
    optimd_reload_report r;
    EXPECT_CODE(optimd_client_reload(c, "not-the-token", &r),
                OPTIMD_E_BAD_TOKEN);
    CHECK(r.n_files == 0 && r.mem == NULL, "a failed reload left a report");
    EXPECT_CODE(optimd_client_reload(c, "", NULL), OPTIMD_E_BAD_TOKEN);
    char v1[4096], v2[4096], wrong_abi[4096];
    toy_path("v1", v1, sizeof v1);
    toy_path("v2", v2, sizeof v2);
    toy_path("wrong_abi", wrong_abi, sizeof wrong_abi);
    EXPECT_CODE(optimd_client_load(c, ADMIN "x", v2, NULL),
                OPTIMD_E_BAD_TOKEN);
    EXPECT_CODE(optimd_client_reload(c, NULL, &r), OPTIMD_CLIENT_E_ARG);
    EXPECT_CODE(optimd_client_load(c, ADMIN, NULL, &r), OPTIMD_CLIENT_E_ARG);

    optimd_session s;
    optimd_hvalue lr = {"lr", OPTIMD_HVALUE_FLOAT, 0.125, 0};
    REQUIRE(optimd_client_open(c, "toy", "toy", &lr, 1, NULL, NULL, 0, &s,
                               NULL) == 0,
            "open on the toy: %s", optimd_client_error(c));
    float p[4] = {1, 2, -3, 0.5f};
    optimd_named_tensor t = {"p", OPTIMD_CLIENT_F32, 1, toy_shape, p};
    REQUIRE(optimd_client_register(c, &s, &t, 1) == 0, "register: %s",
            optimd_client_error(c));
    expect_version(&s, "1.0.0");
    toy_step(&s, p, 1, "on v1");

    /* Nothing changed since the daemon started: a rescan loads nothing. */
    int rv = optimd_client_reload(c, ADMIN, &r);
    CHECK(rv == 0 && r.n_files == 0 && r.n_refused == 0,
          "an idle reload: %d, %zu files: %s", rv, r.n_files,
          optimd_client_error(c));
    optimd_reload_report_free(&r);

    rv = optimd_client_load(c, ADMIN, v2, &r);
    REQUIRE(rv == 0, "load v2: %s", optimd_client_error(c));
    CHECK(r.n_files == 1 && r.n_refused == 0 && r.files[0].loaded &&
              strcmp(r.files[0].path, v2) == 0 &&
              strcmp(r.files[0].id, "toy") == 0 &&
              strcmp(r.files[0].version, "2.0.0") == 0 &&
              r.files[0].error == NULL && !r.maybe_incomplete,
          "load v2 report: %zu files", r.n_files);
    optimd_reload_report_free(&r);
    CHECK(r.files == NULL && r.mem == NULL, "free left the report set");
    toy_step(&s, p, 2, "after loading v2");
    expect_version(&s, "2.0.0");

    /* A plugin for another ABI major is refused; v2 stays. */
    rv = optimd_client_load(c, ADMIN, wrong_abi, &r);
    EXPECT_CODE(rv, OPTIMD_E_PLUGIN);
    CHECK(strstr(optimd_client_error(c), "ABI") != NULL,
          "the refusal does not name the ABI: %s", optimd_client_error(c));
    CHECK(r.n_files == 0 && r.mem == NULL, "a refused load left a report");
    toy_step(&s, p, 2, "after the refused load");

    /* The rescan picks up v1 put back into the directory. */
    REQUIRE(put_toy("v1") == 0, "put v1");
    rv = optimd_client_reload(c, ADMIN, &r);
    REQUIRE(rv == 0, "reload: %s", optimd_client_error(c));
    char dst[512];
    snprintf(dst, sizeof dst, "%s/toy.so", plugin_dir);
    CHECK(r.n_files == 1 && r.n_refused == 0 && r.files[0].loaded &&
              strcmp(r.files[0].path, dst) == 0 &&
              strcmp(r.files[0].id, "toy") == 0 &&
              strcmp(r.files[0].version, "1.0.0") == 0,
          "reload report: %zu files, first %s", r.n_files,
          r.n_files ? r.files[0].path : "-");
    optimd_reload_report_free(&r);
    toy_step(&s, p, 1, "after reloading v1");
    expect_version(&s, "1.0.0");

    /* A broken file in the directory is a refused entry, not an error. */
    REQUIRE(put_toy("no_symbol") == 0, "put no_symbol");
    rv = optimd_client_reload(c, ADMIN, &r);
    REQUIRE(rv == 0, "reload: %s", optimd_client_error(c));
    CHECK(r.n_files == 1 && r.n_refused == 1 && !r.files[0].loaded &&
              r.files[0].id == NULL && r.files[0].version == NULL &&
              r.files[0].error &&
              strstr(r.files[0].error, "optimd_plugin") != NULL,
          "reload of a broken file: %zu files, %zu refused, error %s",
          r.n_files, r.n_refused,
          r.n_files && r.files[0].error ? r.files[0].error : "-");
    optimd_reload_report_free(&r);
    toy_step(&s, p, 1, "after the refused reload");
    expect_version(&s, "1.0.0");
    CHECK(optimd_client_close(c, &s) == 0, "close: %s",
          optimd_client_error(c));
}

/* drop: a wrong admin token is refused and leaves the session; the right
 * one closes it, so its own token no longer reaches it; then shutdown. */
static void test_drop_and_shutdown(test_daemon *d)
{
    optimd_session s;
    optimd_hvalue hp = {"lr", OPTIMD_HVALUE_FLOAT, 0.1, 0};
    REQUIRE(optimd_client_open(c, "dropme", "sgd", &hp, 1, NULL, NULL, 0, &s,
                               NULL) == 0,
            "open: %s", optimd_client_error(c));
    EXPECT_CODE(optimd_client_drop(c, "not-the-token", "dropme"),
                OPTIMD_E_BAD_TOKEN);
    optimd_session_details *det;
    REQUIRE(optimd_client_info_ex(c, &s, &det) == 0,
            "info after a refused drop: %s", optimd_client_error(c));
    optimd_session_details_free(det);
    EXPECT_CODE(optimd_client_drop(c, NULL, "dropme"), OPTIMD_CLIENT_E_ARG);
    CHECK(optimd_client_drop(c, ADMIN, "dropme") == 0, "drop: %s",
          optimd_client_error(c));
    EXPECT_CODE(optimd_client_info_ex(c, &s, &det), OPTIMD_E_UNKNOWN_SESSION);
    EXPECT_CODE(optimd_client_drop(c, ADMIN, "dropme"),
                OPTIMD_E_UNKNOWN_SESSION);

    EXPECT_CODE(optimd_client_shutdown(c, "not-the-token"),
                OPTIMD_E_BAD_TOKEN);
    CHECK(test_daemon_alive(d), "a refused shutdown stopped the daemon");
    CHECK(optimd_client_shutdown(c, ADMIN) == 0, "shutdown: %s",
          optimd_client_error(c));
    /* Bounded: a daemon that ignored the shutdown fails the test here
     * instead of hanging it. */
    int status = 0;
    pid_t r = 0;
    for (int i = 0; i < 500 && r == 0; i++) {
        r = waitpid(d->pid, &status, WNOHANG);
        if (r == 0) nanosleep(&(struct timespec){0, 20000000}, NULL);
    }
    CHECK(r == d->pid, "the daemon still runs 10 s after shutdown");
    if (r == d->pid) {
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the daemon ended with status %#x after shutdown", status);
        d->pid = 0;    /* reaped: test_daemon_stop only cleans up */
    }
}

int main(void)
{
    const char *t = getenv("OPTIMD_TOYS"), *validate = getenv("OPTIMD_VALIDATE");
    if (!t || !validate) {
        fprintf(stderr, "set OPTIMD_TOYS and OPTIMD_VALIDATE (CTest does)\n");
        return 1;
    }
    snprintf(toys, sizeof toys, "%s", t);
    snprintf(plugin_dir, sizeof plugin_dir, "/tmp/optimd-admin-XXXXXX");
    if (!mkdtemp(plugin_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_daemon d;
    const char *args[] = {"--plugin-dir", plugin_dir, "--validator", validate,
                          "--admin-token", ADMIN, "--watch-plugins", "off",
                          NULL};
    if (put_toy("v1") != 0 || test_daemon_start(&d, args) != 0) return 1;
    if (optimd_client_connect(d.url, 30000, &c) != 0) {
        fprintf(stderr, "connect: %s\n", optimd_client_error(NULL));
        test_daemon_stop(&d);
        return 1;
    }
    test_switch();
    test_reload_and_load();
    CHECK(test_daemon_alive(&d), "the daemon died");
    test_drop_and_shutdown(&d);
    optimd_client_free(c);
    /* Stops a daemon the shutdown left running; either way it removes the
     * state directory. */
    test_daemon_stop(&d);
    char path[512];
    snprintf(path, sizeof path, "%s/toy.so", plugin_dir);
    unlink(path);
    rmdir(plugin_dir);
    return check_report("client_admin");
}
