/*
 * The protocol additions through the C client against the real daemon:
 * parameter groups (per-group lr in info and in step replies), clipping
 * (grad_norm), observe with the plateau scheduler, and a retried open with
 * the same open_key. Expected values come from the formulas (SGD without
 * momentum: p - lr * g; torch's clip_grad_norm_), not from the daemon.
 */
#include "check.h"
#include "test_daemon.h"

#include <optimd/client.h>

#include <math.h>
#include <string.h>

static optimd_client *c;

static const optimd_group_value *find_group(const optimd_group_value *g,
                                            size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(g[i].name, name) == 0) return &g[i];
    return NULL;
}

static void test_two_groups(void)
{
    optimd_hvalue hp[] = {{"lr", OPTIMD_HVALUE_FLOAT, 0.1, 0}};
    optimd_hvalue head_hp[] = {{"lr", OPTIMD_HVALUE_FLOAT, 0.01, 0}};
    optimd_group_spec groups[] = {{.name = "head", .hparams = head_hp,
                                   .n_hparams = 1}};
    optimd_open_options o;
    optimd_open_options_init(&o);
    o.optimizer = "sgd";
    o.hparams = hp;
    o.n_hparams = 1;
    o.groups = groups;
    o.n_groups = 1;
    optimd_session s;
    REQUIRE(optimd_client_open_ex(c, "groups", &o, &s, NULL) == 0, "open: %s",
            optimd_client_error(c));

    static const int64_t shape[1] = {2};
    double w[2] = {1.0, -2.0}, h[2] = {0.5, 4.0};
    optimd_named_tensor pw = {"w", OPTIMD_CLIENT_F64, 1, shape, w};
    optimd_named_tensor ph = {"h", OPTIMD_CLIENT_F64, 1, shape, h};
    REQUIRE(optimd_client_register(c, &s, &pw, 1) == 0, "register w: %s",
            optimd_client_error(c));
    REQUIRE(optimd_client_register_ex(c, &s, &ph, 1, "head") == 0,
            "register h: %s", optimd_client_error(c));
    CHECK(optimd_client_register_ex(c, &s, &(optimd_named_tensor){
              "x", OPTIMD_CLIENT_F64, 1, shape, w}, 1, "nope") ==
              OPTIMD_E_BAD_REQUEST,
          "register into an unknown group: %s", optimd_client_error(c));

    optimd_session_details *d;
    REQUIRE(optimd_client_info_ex(c, &s, &d) == 0, "info: %s",
            optimd_client_error(c));
    CHECK(d->n_groups == 2, "%zu groups", d->n_groups);
    if (d->n_groups == 2) {
        CHECK(strcmp(d->groups[0].name, "default") == 0 &&
                  d->groups[0].lr == 0.1 && d->groups[0].params == 1,
              "default group: %s lr %g params %llu", d->groups[0].name,
              d->groups[0].lr, (unsigned long long)d->groups[0].params);
        CHECK(strcmp(d->groups[1].name, "head") == 0 &&
                  d->groups[1].lr == 0.01 && d->groups[1].params == 1,
              "head group: %s lr %g params %llu", d->groups[1].name,
              d->groups[1].lr, (unsigned long long)d->groups[1].params);
    }
    CHECK(d->n_params == 2 && d->params[1].group &&
              strcmp(d->params[1].name, "h") == 0 &&
              strcmp(d->params[1].group, "head") == 0,
          "params[1] is not h in head");
    optimd_session_details_free(d);

    double gw[2] = {1.0, 1.0}, gh[2] = {2.0, -1.0};
    optimd_named_tensor grads[2] = {{"w", OPTIMD_CLIENT_F64, 1, shape, gw},
                                    {"h", OPTIMD_CLIENT_F64, 1, shape, gh}};
    double nw[2], nh[2];
    optimd_named_tensor out[2] = {{"w", OPTIMD_CLIENT_F64, 1, shape, nw},
                                  {"h", OPTIMD_CLIENT_F64, 1, shape, nh}};
    optimd_group_value gv[OPTIMD_MAX_GROUPS];
    optimd_step_options so;
    optimd_step_options_init(&so);
    so.groups = gv;
    so.groups_cap = OPTIMD_MAX_GROUPS;
    optimd_step_result res;
    REQUIRE(optimd_client_step_opts(c, &s, grads, 2, out, 2, &so, &res) == 0,
            "step: %s", optimd_client_error(c));
    CHECK(res.n_groups == 2, "%zu groups in the step reply", res.n_groups);
    const optimd_group_value *gd = find_group(gv, res.n_groups, "default");
    const optimd_group_value *gh_ = find_group(gv, res.n_groups, "head");
    CHECK(gd && gd->lr == 0.1 && gd->next_lr == 0.1, "default lrs");
    CHECK(gh_ && gh_->lr == 0.01 && gh_->next_lr == 0.01, "head lrs");
    CHECK(isnan(res.grad_norm), "grad_norm without clip_norm");
    for (int i = 0; i < 2; i++) {
        CHECK(nw[i] == w[i] - 0.1 * gw[i], "w[%d] = %.17g", i, nw[i]);
        CHECK(nh[i] == h[i] - 0.01 * gh[i], "h[%d] = %.17g", i, nh[i]);
    }

    /* One group only: the other keeps its lr. */
    optimd_hvalue lr2[] = {{"lr", OPTIMD_HVALUE_FLOAT, 0.02, 0}};
    REQUIRE(optimd_client_set_hparams_ex(c, &s, lr2, 1, "head", &d) == 0,
            "set_hparams: %s", optimd_client_error(c));
    CHECK(d->n_groups == 2 && d->groups[0].lr == 0.1 &&
              d->groups[1].lr == 0.02,
          "after set_hparams on head: default %g head %g",
          d->n_groups == 2 ? d->groups[0].lr : NAN,
          d->n_groups == 2 ? d->groups[1].lr : NAN);
    optimd_session_details_free(d);
    CHECK(optimd_client_set_hparams_ex(c, &s, lr2, 1, "nope", NULL) ==
              OPTIMD_E_BAD_REQUEST,
          "set_hparams on an unknown group");
    CHECK(optimd_client_close(c, &s) == 0, "close");
}

static void test_clipping(void)
{
    optimd_hvalue hp[] = {{"lr", OPTIMD_HVALUE_FLOAT, 1.0, 0}};
    optimd_session s;
    REQUIRE(optimd_client_open(c, "clip", "sgd", hp, 1, NULL, NULL, 0, &s,
                               NULL) == 0,
            "open: %s", optimd_client_error(c));
    static const int64_t shape[1] = {2};
    double w[2] = {0.0, 0.0};
    optimd_named_tensor pw = {"w", OPTIMD_CLIENT_F64, 1, shape, w};
    REQUIRE(optimd_client_register(c, &s, &pw, 1) == 0, "register: %s",
            optimd_client_error(c));

    /* |(3, 4)| = 5, scaled by max_norm / (5 + 1e-6) (torch 1.13). */
    double g[2] = {3.0, 4.0}, nw[2];
    optimd_named_tensor grad = {"w", OPTIMD_CLIENT_F64, 1, shape, g};
    optimd_named_tensor out = {"w", OPTIMD_CLIENT_F64, 1, shape, nw};
    optimd_step_options so;
    optimd_step_options_init(&so);
    so.clip_norm = 1.0;
    optimd_step_result res;
    REQUIRE(optimd_client_step_opts(c, &s, &grad, 1, &out, 1, &so, &res) == 0,
            "clipped step: %s", optimd_client_error(c));
    CHECK(res.grad_norm == 5.0, "grad_norm %.17g", res.grad_norm);
    double coef = 1.0 / (5.0 + 1e-6);
    for (int i = 0; i < 2; i++)
        CHECK(fabs(nw[i] - (0.0 - g[i] * coef)) <= 1e-15,
              "w[%d] = %.17g, expected %.17g", i, nw[i], -g[i] * coef);

    /* By value: (3, 4) clamped to (2, 2). */
    optimd_step_options_init(&so);
    so.clip_value = 2.0;
    double before[2] = {nw[0], nw[1]};
    REQUIRE(optimd_client_step_opts(c, &s, &grad, 1, &out, 1, &so, &res) == 0,
            "step clipped by value: %s", optimd_client_error(c));
    CHECK(nw[0] == before[0] - 2.0 && nw[1] == before[1] - 2.0,
          "clip_value: w = (%.17g, %.17g)", nw[0], nw[1]);
    CHECK(isnan(res.grad_norm), "grad_norm without clip_norm");

    /* Local argument checks. */
    optimd_step_options_init(&so);
    so.clip_value = -1;
    CHECK(optimd_client_step_opts(c, &s, &grad, 1, NULL, 0, &so, NULL) ==
              OPTIMD_CLIENT_E_ARG, "negative clip_value");
    optimd_step_options_init(&so);
    so.clip_per_group = 1;
    CHECK(optimd_client_step_opts(c, &s, &grad, 1, NULL, 0, &so, NULL) ==
              OPTIMD_CLIENT_E_ARG, "clip_per_group without clip_norm");
    CHECK(optimd_client_close(c, &s) == 0, "close");
}

static void test_observe_plateau(void)
{
    optimd_hvalue hp[] = {{"lr", OPTIMD_HVALUE_FLOAT, 1.0, 0}};
    optimd_hvalue shp[] = {{"patience", OPTIMD_HVALUE_INT, 0, 0},
                           {"factor", OPTIMD_HVALUE_FLOAT, 0.5, 0}};
    optimd_session s;
    REQUIRE(optimd_client_open(c, "plateau", "sgd", hp, 1, "plateau", shp, 2,
                               &s, NULL) == 0,
            "open: %s", optimd_client_error(c));
    double lr = 0;
    optimd_group_value gv[4];
    size_t n = 0;
    REQUIRE(optimd_client_observe(c, &s, 1.0, NULL, &lr, gv, 4, &n) == 0,
            "observe: %s", optimd_client_error(c));
    CHECK(lr == 1.0, "lr after the first metric: %g", lr);
    REQUIRE(optimd_client_observe(c, &s, 2.0, NULL, &lr, gv, 4, &n) == 0,
            "observe: %s", optimd_client_error(c));
    CHECK(lr == 0.5, "lr after a worse metric: %g", lr);
    CHECK(n == 1 && strcmp(gv[0].name, "default") == 0 && gv[0].lr == 0.5 &&
              isnan(gv[0].next_lr),
          "lrs: %zu groups", n);
    optimd_session_info info;
    REQUIRE(optimd_client_info(c, &s, &info) == 0, "info");
    CHECK(info.lr == 0.5, "info lr %g", info.lr);
    CHECK(optimd_client_observe(c, &s, 1.0, "nope", NULL, NULL, 0, NULL) ==
              OPTIMD_E_BAD_REQUEST, "observe on an unknown group");
    CHECK(optimd_client_close(c, &s) == 0, "close");

    /* A scheduler that takes no metric refuses one. */
    REQUIRE(optimd_client_open(c, "nometric", "sgd", hp, 1, NULL, NULL, 0, &s,
                               NULL) == 0, "open");
    CHECK(optimd_client_observe(c, &s, 1.0, NULL, &lr, NULL, 0, NULL) ==
              OPTIMD_E_BAD_REQUEST, "observe without a metric scheduler");
    CHECK(optimd_client_close(c, &s) == 0, "close");
}

static void test_open_key(void)
{
    optimd_open_options o;
    optimd_open_options_init(&o);
    int32_t existing = -1;
    o.optimizer = "adam";
    o.open_key = "retry-key-0123456789";
    o.existing = &existing;
    optimd_session first, again;
    REQUIRE(optimd_client_open_ex(c, "keyed", &o, &first, NULL) == 0,
            "open: %s", optimd_client_error(c));
    CHECK(existing == 0, "first open: existing %d", (int)existing);
    existing = -1;
    REQUIRE(optimd_client_open_ex(c, "keyed", &o, &again, NULL) == 0,
            "retried open: %s", optimd_client_error(c));
    CHECK(existing == 1, "retried open: existing %d", (int)existing);
    CHECK(strcmp(first.token, again.token) == 0, "tokens differ");
    o.open_key = "another-key-0123456789";
    CHECK(optimd_client_open_ex(c, "keyed", &o, &again, NULL) ==
              OPTIMD_E_SESSION_EXISTS, "open with another key");
    o.open_key = "short";
    CHECK(optimd_client_open_ex(c, "keyed", &o, &again, NULL) ==
              OPTIMD_CLIENT_E_ARG, "a 5-byte open_key");
    CHECK(optimd_client_close(c, &first) == 0, "close");
}

static void test_state(void)
{
    optimd_session s;
    REQUIRE(optimd_client_open(c, "state", "adam", NULL, 0, NULL, NULL, 0, &s,
                               NULL) == 0, "open: %s", optimd_client_error(c));
    static const int64_t shape[1] = {3};
    float w[3] = {1, 2, 3}, g[3] = {0.5f, -1.0f, 2.0f};
    optimd_named_tensor pw = {"w", OPTIMD_CLIENT_F32, 1, shape, w};
    optimd_named_tensor gw = {"w", OPTIMD_CLIENT_F32, 1, shape, g};
    REQUIRE(optimd_client_register(c, &s, &pw, 1) == 0, "register");
    optimd_param_state *st;
    size_t n;
    REQUIRE(optimd_client_state(c, &s, NULL, 0, &st, &n) == 0, "state: %s",
            optimd_client_error(c));
    CHECK(n == 1 && strcmp(st[0].name, "w") == 0 && st[0].n_slots == 0,
          "state before a step");
    optimd_param_state_free(st, n);
    REQUIRE(optimd_client_step(c, &s, &gw, 1, NULL, 0, NULL, NULL) == 0,
            "step");
    const char *names[] = {"w"};
    REQUIRE(optimd_client_state(c, &s, names, 1, &st, &n) == 0, "state: %s",
            optimd_client_error(c));
    /* Adam's first moment after one step: (1 - beta1) * g. */
    const optimd_tensor *m = NULL;
    for (size_t k = 0; n == 1 && k < st[0].n_slots; k++)
        if (strcmp(st[0].slots[k].name, "exp_avg") == 0) m = &st[0].slots[k];
    CHECK(m && m->dtype == OPTIMD_CLIENT_F32 && m->ndim == 1 &&
              m->shape[0] == 3 && m->nbytes == 12,
          "exp_avg slot missing or misshapen");
    for (int i = 0; m && i < 3; i++)
        CHECK(fabs(((float *)m->data)[i] - 0.1 * g[i]) <= 1e-6,
              "exp_avg[%d] = %.9g", i,
              ((float *)m->data)[i]);
    optimd_param_state_free(st, n);
    CHECK(optimd_client_close(c, &s) == 0, "close");
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
    test_two_groups();
    test_clipping();
    test_observe_plateau();
    test_open_key();
    test_state();
    optimd_client_free(c);
    CHECK(test_daemon_alive(&d), "the daemon died");
    int status = test_daemon_stop(&d);
    CHECK(status == 0, "daemon exit status %d", status);
    return check_report("client_groups");
}
