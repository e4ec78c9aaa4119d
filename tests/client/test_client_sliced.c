/*
 * Sliced steps through the C client (optimd_step_options.part_elements)
 * against the real daemon: the same steps sent whole to a twin session
 * give the same bits, for AdamW and NAdam (per-tensor scalar state), f32
 * and f64, with cuts that split tensors anywhere; a part the daemon refuses
 * leaves the step pending with the client's seq kept, and
 * optimd_client_abandon_step ends it and moves the numbering on.
 */
#include "check.h"
#include "test_daemon.h"

#include <optimd/client.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

static optimd_client *c;

#define N_PARAMS 4
static const int64_t shape_a[2] = {7, 5};
static const int64_t shape_b[1] = {13};
static const int64_t shape_c[3] = {3, 2, 4};
static const int64_t shape_big[1] = {70001};   /* large enough for the wire's pad */
static const char *const names[N_PARAMS] = {"a", "b", "c", "big"};
static const int64_t *const shapes[N_PARAMS] = {shape_a, shape_b, shape_c, shape_big};
static const uint32_t ndims[N_PARAMS] = {2, 1, 3, 1};
static const size_t numels[N_PARAMS] = {35, 13, 24, 70001};

static double next_value(unsigned *state)
{
    *state = *state * 1103515245u + 12345u;
    return ((double)((*state >> 8) & 0xffff) / 65536.0) - 0.5;
}

/* Fills n elements of dtype with pseudo-random values. */
static void fill(void *data, int32_t dtype, size_t n, unsigned *state)
{
    for (size_t i = 0; i < n; i++) {
        double v = next_value(state);
        if (dtype == OPTIMD_CLIENT_F64) ((double *)data)[i] = v;
        else ((float *)data)[i] = (float)v;
    }
}

static void open_twin(const char *name, const char *optimizer, void *const *init, int32_t dtype,
                      optimd_session *s)
{
    REQUIRE(optimd_client_open(c, name, optimizer, NULL, 0, NULL, NULL, 0, s, NULL) == 0, "open %s: %s", name,
            optimd_client_error(c));
    optimd_named_tensor p[N_PARAMS];
    for (int i = 0; i < N_PARAMS; i++) p[i] = (optimd_named_tensor){names[i], dtype, ndims[i], shapes[i], init[i]};
    REQUIRE(optimd_client_register(c, s, p, N_PARAMS) == 0, "register %s: %s", name, optimd_client_error(c));
}

static void test_same_bits(const char *optimizer, int32_t dtype)
{
    size_t es = dtype == OPTIMD_CLIENT_F64 ? 8 : 4;
    void *init[N_PARAMS], *grad[N_PARAMS], *whole[N_PARAMS], *sliced[N_PARAMS];
    unsigned state = 7;
    for (int i = 0; i < N_PARAMS; i++) {
        init[i] = malloc(numels[i] * es);
        grad[i] = malloc(numels[i] * es);
        whole[i] = malloc(numels[i] * es);
        sliced[i] = malloc(numels[i] * es);
        fill(init[i], dtype, numels[i], &state);
    }
    char wn[64], sn[64];
    snprintf(wn, sizeof wn, "whole-%s-%d", optimizer, dtype);
    snprintf(sn, sizeof sn, "sliced-%s-%d", optimizer, dtype);
    optimd_session sw, ss;
    open_twin(wn, optimizer, init, dtype, &sw);
    open_twin(sn, optimizer, init, dtype, &ss);
    static const uint64_t part_sizes[] = {17, 1000, 5, 33333, 70001};
    for (size_t step = 0; step < sizeof part_sizes / sizeof part_sizes[0]; step++) {
        optimd_named_tensor g[N_PARAMS], ow[N_PARAMS], os[N_PARAMS];
        for (int i = 0; i < N_PARAMS; i++) {
            fill(grad[i], dtype, numels[i], &state);
            g[i] = (optimd_named_tensor){names[i], dtype, ndims[i], shapes[i], grad[i]};
            ow[i] = (optimd_named_tensor){names[i], dtype, ndims[i], shapes[i], whole[i]};
            os[i] = (optimd_named_tensor){names[i], dtype, ndims[i], shapes[i], sliced[i]};
        }
        optimd_step_result rw, rs;
        REQUIRE(optimd_client_step_ex(c, &sw, g, N_PARAMS, ow, N_PARAMS, &rw) == 0, "whole step: %s",
                optimd_client_error(c));
        optimd_step_options o;
        optimd_step_options_init(&o);
        o.part_elements = part_sizes[step];
        REQUIRE(optimd_client_step_opts(c, &ss, g, N_PARAMS, os, N_PARAMS, &o, &rs) == 0,
                "sliced step (parts of %llu): %s", (unsigned long long)part_sizes[step], optimd_client_error(c));
        CHECK(rs.steps == rw.steps && rs.lr == rw.lr && rs.next_lr == rw.next_lr && !rs.duplicate,
              "%s step %zu: counters %llu %g %g vs %llu %g %g", sn, step, (unsigned long long)rs.steps, rs.lr,
              rs.next_lr, (unsigned long long)rw.steps, rw.lr, rw.next_lr);
        for (int i = 0; i < N_PARAMS; i++)
            CHECK(memcmp(whole[i], sliced[i], numels[i] * es) == 0, "%s step %zu: '%s' differs", sn, step,
                  names[i]);
    }
    /* The state too, every slot byte for byte. */
    optimd_param_state *a, *b;
    size_t na, nb;
    REQUIRE(optimd_client_state(c, &sw, NULL, 0, &a, &na) == 0 && optimd_client_state(c, &ss, NULL, 0, &b, &nb) == 0,
            "state: %s", optimd_client_error(c));
    CHECK(na == nb && na == N_PARAMS, "%zu and %zu parameters with state", na, nb);
    for (size_t i = 0; i < na && i < nb; i++) {
        CHECK(a[i].n_slots == b[i].n_slots && a[i].n_slots > 0, "'%s': %zu and %zu slots", a[i].name, a[i].n_slots,
              b[i].n_slots);
        for (size_t k = 0; k < a[i].n_slots && k < b[i].n_slots; k++)
            CHECK(a[i].slots[k].nbytes == b[i].slots[k].nbytes &&
                      memcmp(a[i].slots[k].data, b[i].slots[k].data, a[i].slots[k].nbytes) == 0,
                  "%s: '%s' slot '%s' differs", sn, a[i].name, a[i].slots[k].name);
    }
    optimd_param_state_free(a, na);
    optimd_param_state_free(b, nb);
    CHECK(optimd_client_close(c, &sw) == 0 && optimd_client_close(c, &ss) == 0, "close");
    for (int i = 0; i < N_PARAMS; i++) {
        free(init[i]);
        free(grad[i]);
        free(whole[i]);
        free(sliced[i]);
    }
}

static void test_refused_part_and_abandon(void)
{
    float w[10] = {0}, g[10], out[10];
    for (int i = 0; i < 10; i++) g[i] = 0.1f * (float)i;
    static const int64_t shape[1] = {10};
    optimd_session s;
    REQUIRE(optimd_client_open(c, "refused", "adamw", NULL, 0, NULL, NULL, 0, &s, NULL) == 0, "open: %s",
            optimd_client_error(c));
    optimd_named_tensor p = {"w", OPTIMD_CLIENT_F32, 1, shape, w};
    REQUIRE(optimd_client_register(c, &s, &p, 1) == 0, "register: %s", optimd_client_error(c));
    optimd_named_tensor grad = {"w", OPTIMD_CLIENT_F32, 1, shape, g};
    optimd_named_tensor o = {"w", OPTIMD_CLIENT_F32, 1, shape, out};
    optimd_step_options so;
    optimd_step_options_init(&so);
    so.part_elements = 4;              /* parts [0,4) [4,8) [8,10) */
    g[9] = NAN;                        /* the last part is refused */
    optimd_step_result r;
    CHECK(optimd_client_step_opts(c, &s, &grad, 1, &o, 1, &so, &r) == OPTIMD_E_NONFINITE, "NaN in the last part: %s",
          optimd_client_error(c));
    optimd_session_details *d;
    REQUIRE(optimd_client_info_ex(c, &s, &d) == 0, "info: %s", optimd_client_error(c));
    uint64_t pending_seq = d->pending_seq;
    CHECK(d->has_pending_step && d->pending_applied == 2 && d->pending_count == 3 && d->steps == 0 &&
              d->pending_client && strcmp(d->pending_client, optimd_client_id(c)) == 0,
          "pending step: %d, %llu of %llu parts", d->has_pending_step, (unsigned long long)d->pending_applied,
          (unsigned long long)d->pending_count);
    optimd_session_details_free(d);
    /* A whole step meanwhile is refused, and with the kept seq. */
    CHECK(optimd_client_step_ex(c, &s, &grad, 1, &o, 1, &r) == OPTIMD_E_STEP_PENDING, "a whole step while pending: %s",
          optimd_client_error(c));
    /* The same step again, fixed: the applied parts are duplicates and the last completes it. */
    g[9] = 0.9f;
    REQUIRE(optimd_client_step_opts(c, &s, &grad, 1, &o, 1, &so, &r) == 0, "the step again: %s",
            optimd_client_error(c));
    CHECK(r.steps == 1 && r.seq == pending_seq && !r.duplicate, "completed step: steps %llu seq %llu",
          (unsigned long long)r.steps, (unsigned long long)r.seq);

    /* A step left pending, then abandoned: the next step carries a new seq and is applied. */
    g[9] = NAN;
    CHECK(optimd_client_step_opts(c, &s, &grad, 1, &o, 1, &so, &r) == OPTIMD_E_NONFINITE, "NaN again");
    REQUIRE(optimd_client_info_ex(c, &s, &d) == 0, "info: %s", optimd_client_error(c));
    pending_seq = d->pending_seq;
    CHECK(d->has_pending_step, "no pending step");
    optimd_session_details_free(d);
    uint64_t steps = 0;
    CHECK(optimd_client_abandon_step(c, &s, pending_seq, "nobody", &steps) == OPTIMD_E_BAD_REQUEST,
          "abandon under another client id");
    REQUIRE(optimd_client_abandon_step(c, &s, pending_seq, optimd_client_id(c), &steps) == 0, "abandon: %s",
            optimd_client_error(c));
    CHECK(steps == 2, "steps after abandon: %llu", (unsigned long long)steps);
    g[9] = 0.9f;
    REQUIRE(optimd_client_step_opts(c, &s, &grad, 1, &o, 1, &so, &r) == 0, "a step after abandon: %s",
            optimd_client_error(c));
    CHECK(r.steps == 3 && !r.duplicate && r.seq == pending_seq + 1, "after abandon: steps %llu seq %llu dup %d",
          (unsigned long long)r.steps, (unsigned long long)r.seq, r.duplicate);
    CHECK(optimd_client_close(c, &s) == 0, "close");
}

static void test_arguments(void)
{
    float w[4] = {0};
    static const int64_t shape[1] = {4};
    optimd_session s;
    REQUIRE(optimd_client_open(c, "lamb", "lamb", NULL, 0, NULL, NULL, 0, &s, NULL) == 0, "open: %s",
            optimd_client_error(c));
    optimd_named_tensor p = {"w", OPTIMD_CLIENT_F32, 1, shape, w};
    REQUIRE(optimd_client_register(c, &s, &p, 1) == 0, "register: %s", optimd_client_error(c));
    optimd_step_options so;
    optimd_step_options_init(&so);
    so.part_elements = 2;
    CHECK(optimd_client_step_opts(c, &s, &p, 1, NULL, 0, &so, NULL) == OPTIMD_E_BAD_REQUEST,
          "lamb in parts: %s", optimd_client_error(c));
    so.clip_norm = 1.0;
    CHECK(optimd_client_step_opts(c, &s, &p, 1, NULL, 0, &so, NULL) == OPTIMD_CLIENT_E_ARG, "clip_norm in parts");
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
    test_same_bits("adamw", OPTIMD_CLIENT_F32);
    test_same_bits("adamw", OPTIMD_CLIENT_F64);
    test_same_bits("nadam", OPTIMD_CLIENT_F32);
    test_same_bits("nadam", OPTIMD_CLIENT_F64);
    test_refused_part_and_abandon();
    test_arguments();
    optimd_client_free(c);
    CHECK(test_daemon_alive(&d), "the daemon died");
    int status = test_daemon_stop(&d);
    CHECK(status == 0, "daemon exit status %d", status);
    return check_report("client_sliced");
}
