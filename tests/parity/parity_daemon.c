/*
 * End-to-end parity with torch 1.13.1: starts the real daemon, and for
 * every case of torch_reference.py --suite daemon opens a session through
 * the C client, registers the parameters, sends torch's 20 gradients and
 * compares every returned parameter (and every lr) with torch's bit for
 * bit. A mismatch reports the first differing index, both values and the
 * distance in ulps.
 *
 * Usage: parity_daemon [DATA_DIR]   (without it, the data is generated
 * into a temporary directory first). The daemon comes from $OPTIMD_BIN and
 * the plugins from $OPTIMD_PLUGIN_DIR, which CTest sets.
 */
#include "case_data.h"
#include "check.h"
#include "test_daemon.h"

#include <optimd/client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct case_summary {
    uint64_t max_ulp;
    int64_t values_compared;
} case_summary;

static void to_hvalues(const case_hparam *in, int n, optimd_hvalue *out)
{
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].key = in[i].key;
        switch (in[i].type) {
        case CASE_HP_INT:
            out[i].type = OPTIMD_HVALUE_INT;
            out[i].i = (int64_t)in[i].value;
            break;
        case CASE_HP_BOOL:
            out[i].type = OPTIMD_HVALUE_BOOL;
            out[i].i = in[i].value != 0.0;
            break;
        default:
            out[i].type = OPTIMD_HVALUE_FLOAT;
            out[i].f = in[i].value;
            break;
        }
    }
}

static void check_lr(const parity_case *c, const char *what, int step, double got,
                     double want, case_summary *sum)
{
    uint64_t ulp = ulp_distance_f64(got, want);
    if (ulp > sum->max_ulp) sum->max_ulp = ulp;
    CHECK(ulp == 0, "%s: %s at step %d: daemon %.17g, torch %.17g (%llu ulp)", c->name, what,
          step, got, want, (unsigned long long)ulp);
}

/* Compares one parameter after `step`; returns false on a mismatch. */
static bool check_param(const parity_case *c, const case_data *d, int step, int i,
                        const void *got, case_summary *sum)
{
    bit_compare cmp;
    bool same = compare_bits(got, case_expect(c, d, step, i), c->params[i].numel, c->dtype,
                             &cmp);
    if (cmp.max_ulp > sum->max_ulp) sum->max_ulp = cmp.max_ulp;
    sum->values_compared += c->params[i].numel;
    CHECK(same,
          "%s: step %d param %s: %lld of %lld elements differ; first at [%lld]: "
          "daemon %.17g, torch %.17g (%llu ulp); max %llu ulp",
          c->name, step, c->params[i].name, (long long)cmp.mismatches,
          (long long)c->params[i].numel, (long long)cmp.first_index, cmp.first_got,
          cmp.first_want, (unsigned long long)cmp.first_ulp, (unsigned long long)cmp.max_ulp);
    return same;
}

static void run_case(optimd_client *cl, const parity_manifest *m, const parity_case *c,
                     case_summary *sum)
{
    case_data d;
    REQUIRE(case_data_load(m, c, &d) == 0, "%s: cannot load torch data", c->name);

    char session_name[96];
    snprintf(session_name, sizeof session_name, "parity-%s", c->name);
    optimd_hvalue hp[CASE_MAX_HPARAMS], sched_hp[CASE_MAX_HPARAMS];
    to_hvalues(c->hparams, c->n_hparams, hp);
    to_hvalues(c->sched_hparams, c->n_sched_hparams, sched_hp);
    optimd_session session;
    double first_lr = 0.0;
    int rc = optimd_client_open(cl, session_name, c->optimizer, hp, (size_t)c->n_hparams,
                                c->scheduler[0] ? c->scheduler : NULL, sched_hp,
                                (size_t)c->n_sched_hparams, &session, &first_lr);
    CHECK(rc == 0, "%s: open failed (%d): %s", c->name, rc, optimd_client_error(cl));
    if (rc != 0) {
        case_data_free(&d);
        return;
    }
    check_lr(c, "lr from open", 1, first_lr, d.lr[0], sum);

    /* Working buffers: what the daemon sends back, per parameter. */
    int64_t shapes[CASE_MAX_PARAMS][1];
    void *current[CASE_MAX_PARAMS] = {NULL};
    optimd_named_tensor init[CASE_MAX_PARAMS];
    bool ok = true;
    for (int i = 0; i < c->n_params; i++) {
        shapes[i][0] = c->params[i].numel;
        current[i] = malloc((size_t)c->params[i].numel * c->elem_size);
        ok = ok && current[i] != NULL;
        init[i] = (optimd_named_tensor){
            .name = c->params[i].name,
            .dtype = c->dtype,
            .ndim = 1,
            .shape = shapes[i],
            .data = case_init(c, &d, i),
        };
    }
    if (ok) {
        rc = optimd_client_register(cl, &session, init, (size_t)c->n_params);
        CHECK(rc == 0, "%s: register failed (%d): %s", c->name, rc, optimd_client_error(cl));
        ok = rc == 0;
    }

    for (int step = 1; step <= c->steps && ok; step++) {
        optimd_named_tensor grads[CASE_MAX_PARAMS], out[CASE_MAX_PARAMS];
        int n_grads = 0;
        bool all_updated = true;
        for (int i = 0; i < c->n_params; i++) {
            if (!c->has_grad[step][i]) {
                all_updated = false;
                continue;
            }
            grads[n_grads] = init[i];
            grads[n_grads].data = case_grad(c, &d, step, i);
            out[n_grads] = init[i];
            out[n_grads].data = current[i];
            n_grads++;
        }
        double lr_used = 0.0;
        uint64_t steps_after = 0;
        rc = optimd_client_step(cl, &session, grads, (size_t)n_grads, out, (size_t)n_grads,
                                &lr_used, &steps_after);
        CHECK(rc == 0, "%s: step %d failed (%d): %s", c->name, step, rc,
              optimd_client_error(cl));
        if (rc != 0) break;
        CHECK(steps_after == (uint64_t)step, "%s: step %d: daemon counts %llu steps", c->name,
              step, (unsigned long long)steps_after);
        check_lr(c, "lr used", step, lr_used, d.lr[step - 1], sum);

        /* A parameter without a gradient is not in the reply: pull it to
         * prove it was left alone, as torch leaves a param whose .grad is
         * None. */
        if (!all_updated) {
            optimd_named_tensor idle[CASE_MAX_PARAMS];
            int n_idle = 0;
            for (int i = 0; i < c->n_params; i++) {
                if (c->has_grad[step][i]) continue;
                idle[n_idle] = init[i];
                idle[n_idle].data = current[i];
                n_idle++;
            }
            rc = optimd_client_pull(cl, &session, idle, (size_t)n_idle);
            CHECK(rc == 0, "%s: pull after step %d failed (%d): %s", c->name, step, rc,
                  optimd_client_error(cl));
            if (rc != 0) break;
        }
        for (int i = 0; i < c->n_params && ok; i++)
            ok = check_param(c, &d, step, i, current[i], sum);
    }

    if (ok) {
        optimd_session_info info;
        rc = optimd_client_info(cl, &session, &info);
        CHECK(rc == 0, "%s: info failed (%d): %s", c->name, rc, optimd_client_error(cl));
        if (rc == 0) {
            CHECK(info.steps == (uint64_t)c->steps, "%s: info.steps %llu", c->name,
                  (unsigned long long)info.steps);
            check_lr(c, "lr after the last step", c->steps + 1, info.lr, d.lr[c->steps], sum);
        }
    }
    rc = optimd_client_close(cl, &session);
    CHECK(rc == 0, "%s: close failed (%d): %s", c->name, rc, optimd_client_error(cl));
    for (int i = 0; i < c->n_params; i++) free(current[i]);
    case_data_free(&d);
}

int main(int argc, char **argv)
{
    char data_dir[512];
    bool generated = argc < 2;
    if (generated) {
        int rc = parity_generate("daemon", data_dir, sizeof data_dir);
        if (rc != 0) return rc == 77 ? 77 : 1;
    } else {
        snprintf(data_dir, sizeof data_dir, "%s", argv[1]);
    }
    parity_manifest m;
    if (parity_manifest_load(data_dir, &m) != 0) {
        if (generated) parity_remove_dir(data_dir);
        return 1;
    }

    test_daemon daemon;
    if (test_daemon_start(&daemon, NULL) != 0) {
        parity_manifest_free(&m);
        if (generated) parity_remove_dir(data_dir);
        return 1;
    }
    optimd_client *cl = NULL;
    int rc = optimd_client_connect(daemon.url, 60000, &cl);
    CHECK(rc == 0, "connect to %s failed (%d): %s", daemon.url, rc,
          optimd_client_error(NULL));

    uint64_t max_ulp = 0;
    int64_t compared = 0;
    for (int i = 0; cl && i < m.n_cases; i++) {
        const parity_case *c = &m.cases[i];
        case_summary sum = {0, 0};
        int before = check_failure_count;
        run_case(cl, &m, c, &sum);
        printf("%-28s %s  %lld values, max %llu ulp\n", c->name,
               check_failure_count == before ? "ok  " : "FAIL", (long long)sum.values_compared,
               (unsigned long long)sum.max_ulp);
        fflush(stdout);
        if (sum.max_ulp > max_ulp) max_ulp = sum.max_ulp;
        compared += sum.values_compared;
        CHECK(test_daemon_alive(&daemon), "the daemon died during %s", c->name);
        if (!test_daemon_alive(&daemon)) break;
    }
    printf("parity_daemon: %d cases, %lld parameter values compared, max %llu ulp\n",
           m.n_cases, (long long)compared, (unsigned long long)max_ulp);
    if (cl) optimd_client_free(cl);
    int status = test_daemon_stop(&daemon);
    CHECK(status == 0, "daemon exit status %d after SIGTERM", status);
    parity_manifest_free(&m);
    if (generated) parity_remove_dir(data_dir);
    return check_report("parity_daemon");
}
