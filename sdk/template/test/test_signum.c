/*
 * Loads the built plugin the way the daemon does (dlopen + dlsym of
 * `optimd_plugin`), steps it through the ABI on f32 and f64 data, and
 * compares every parameter and momentum element with the Signum rule
 * computed here, written independently of signum.c; then checks the
 * plugin's declared test vector against the same rule and against a step.
 *
 *   usage: test_signum path/to/signum.so
 */
#include <optimd/plugin.h>

#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "test_signum:%d: FAIL: ", __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            failures++;                                                    \
        }                                                                  \
    } while (0)

/* A minimal host: errors are kept, work runs on this thread. */
struct optimd_call {
    char error[256];
};

static void host_log(optimd_call *call, int32_t level, const char *msg)
{
    (void)call;
    fprintf(stderr, "plugin log %d: %s\n", level, msg);
}

static void host_set_error(optimd_call *call, const char *msg)
{
    snprintf(call->error, sizeof call->error, "%s", msg);
}

static void *host_scratch(optimd_call *call, size_t bytes)
{
    (void)call;
    (void)bytes;
    return NULL;
}

static optimd_status host_parallel_for(optimd_call *call, int64_t n, int64_t grain,
                                       optimd_range_fn fn, void *user)
{
    (void)call;
    (void)grain;
    fn(user, 0, n);
    return OPTIMD_OK;
}

static int find(const optimd_optimizer *o, const char *key)
{
    for (uint32_t i = 0; i < o->n_hparams; i++)
        if (strcmp(o->hparams[i].key, key) == 0) return (int)i;
    return -1;
}

#define N 12

/* Three steps with lr 0.05 and momentum 0.5 on f32 (`f64` 0) or f64. */
static void run(const optimd_optimizer *o, int f64)
{
    optimd_call call = {{0}};
    optimd_host host = {.struct_size = sizeof host, .abi_major = OPTIMD_ABI_MAJOR,
                        .abi_minor = OPTIMD_ABI_MINOR, .call = &call, .log = host_log,
                        .set_error = host_set_error, .scratch = host_scratch,
                        .parallel_for = host_parallel_for};
    double hp[2];
    hp[find(o, "lr")] = 0.05;
    hp[find(o, "momentum")] = 0.5;

    float p32[N], g32[N], m32[N] = {0}, ref_p32[N], ref_m32[N] = {0};
    double p64[N], g64[N], m64[N] = {0}, ref_p64[N], ref_m64[N] = {0};
    for (int i = 0; i < N; i++) {
        p64[i] = ref_p64[i] = 0.25 * i - 1.0;
        p32[i] = ref_p32[i] = (float)p64[i];
    }
    int64_t shape[1] = {N}, strides[1] = {1};
    optimd_tensor param = {sizeof param, f64 ? OPTIMD_DTYPE_F64 : OPTIMD_DTYPE_F32,
                           f64 ? (void *)p64 : (void *)p32, N, 1, 0, shape, strides};
    optimd_tensor grad = param, slot = param;
    grad.data = f64 ? (void *)g64 : (void *)g32;
    slot.data = f64 ? (void *)m64 : (void *)m32;

    for (int k = 1; k <= 3; k++) {
        for (int i = 0; i < N; i++) {
            /* Element 0 never gets a gradient: its momentum stays 0, so
             * sign(m) = 0 and it must not move. */
            g64[i] = i == 0 ? 0.0 : ((i * 7 + k * 3) % 11 - 5) / 4.0;
            g32[i] = (float)g64[i];
        }
        optimd_step_args args = {.struct_size = sizeof args, .n_hparams = 2, .hparams = hp,
                                 .step = (uint64_t)k, .param = &param, .grad = &grad,
                                 .slots = &slot, .n_slots = 1};
        optimd_status st = o->step(&host, &args);
        CHECK(st == OPTIMD_OK, "step %d returned %d: %s", k, st, call.error);
        for (int i = 0; i < N; i++) {
            if (f64) {
                double m = 0.5 * ref_m64[i] + 0.5 * g64[i];
                ref_m64[i] = m;
                if (m > 0) ref_p64[i] -= 0.05;
                if (m < 0) ref_p64[i] += 0.05;
                CHECK(m64[i] == ref_m64[i], "f64 step %d m[%d] = %.17g, expected %.17g", k, i,
                      m64[i], ref_m64[i]);
                CHECK(p64[i] == ref_p64[i], "f64 step %d p[%d] = %.17g, expected %.17g", k, i,
                      p64[i], ref_p64[i]);
            } else {
                float m = 0.5f * ref_m32[i] + 0.5f * g32[i];
                ref_m32[i] = m;
                if (m > 0) ref_p32[i] -= 0.05f;
                if (m < 0) ref_p32[i] += 0.05f;
                CHECK(m32[i] == ref_m32[i], "f32 step %d m[%d] = %.9g, expected %.9g", k, i,
                      m32[i], ref_m32[i]);
                CHECK(p32[i] == ref_p32[i], "f32 step %d p[%d] = %.9g, expected %.9g", k, i,
                      p32[i], ref_p32[i]);
            }
        }
    }
    CHECK(f64 ? p64[0] == -1.0 : p32[0] == -1.0f, "an element without gradient moved");

    /* A malformed call fails with a reason and writes nothing. */
    double before = f64 ? p64[1] : p32[1];
    call.error[0] = '\0';
    optimd_step_args bad = {.struct_size = sizeof bad, .n_hparams = 2, .hparams = hp, .step = 4,
                            .param = &param, .grad = &grad, .slots = &slot, .n_slots = 0};
    CHECK(o->step(&host, &bad) != OPTIMD_OK, "a step without its slot succeeded");
    CHECK(call.error[0] != '\0', "a failed step gave no reason");
    CHECK((f64 ? p64[1] : p32[1]) == before, "a failed step changed the parameter");
}

/* The plugin's declared test vectors (what optimd-validate runs): each must
 * agree with the Signum rule computed here, and the plugin's step on its
 * inputs must give exactly the declared result. */
static void check_vectors(const optimd_optimizer *o)
{
    CHECK(o->struct_size >= offsetof(optimd_optimizer, test_vectors) + sizeof o->test_vectors &&
              o->n_test_vectors >= 1 && o->test_vectors,
          "the template declares no test vector");
    if (failures) return;
    optimd_call call = {{0}};
    optimd_host host = {.struct_size = sizeof host, .abi_major = OPTIMD_ABI_MAJOR,
                        .abi_minor = OPTIMD_ABI_MINOR, .call = &call, .log = host_log,
                        .set_error = host_set_error, .scratch = host_scratch,
                        .parallel_for = host_parallel_for};
    for (uint32_t k = 0; k < o->n_test_vectors; k++) {
        const optimd_test_vector *v = &o->test_vectors[k];
        CHECK(v->struct_size == sizeof *v && v->dtype == OPTIMD_DTYPE_F32 && v->numel >= 1 &&
                  v->numel <= N && v->shape == NULL && v->n_slots == 1 && v->step >= 1 &&
                  v->max_ulps == 0 && v->max_abs_error == 0.0,
              "vector %u is not a bit-exact f32 vector of at most %d elements", k, N);
        if (failures) return;
        double hp[2];
        hp[find(o, "lr")] = o->hparams[find(o, "lr")].default_value;
        hp[find(o, "momentum")] = o->hparams[find(o, "momentum")].default_value;
        for (uint32_t i = 0; i < v->n_hparam_values; i++) {
            int h = find(o, v->hparam_keys[i]);
            CHECK(h >= 0, "vector %u names unknown hyperparameter '%s'", k, v->hparam_keys[i]);
            if (h >= 0) hp[h] = v->hparam_values[i];
        }
        if (failures) return;
        const float lr = (float)hp[find(o, "lr")], b = (float)hp[find(o, "momentum")];
        const float *in_p = v->param, *g = v->grad;
        const float *in_m = v->slots && v->slots[0] ? v->slots[0] : NULL;
        const float *want_p = v->expected_param;
        const float *want_m = v->expected_slots ? v->expected_slots[0] : NULL;
        CHECK(want_m != NULL, "vector %u does not state the momentum buffer", k);
        if (failures) return;
        float p[N], m[N];
        int64_t n = v->numel, shape[1] = {n}, strides[1] = {1};
        for (int64_t i = 0; i < n; i++) {
            /* The rule, independently of signum.c, against the declaration. */
            float ref_m = b * (in_m ? in_m[i] : 0.0f) + (1.0f - b) * g[i];
            float ref_p = in_p[i] - (ref_m > 0 ? lr : ref_m < 0 ? -lr : 0.0f);
            CHECK(memcmp(&ref_m, &want_m[i], sizeof ref_m) == 0,
                  "vector %u declares m[%lld] = %.9g; the rule gives %.9g", k, (long long)i,
                  want_m[i], ref_m);
            CHECK(memcmp(&ref_p, &want_p[i], sizeof ref_p) == 0,
                  "vector %u declares p[%lld] = %.9g; the rule gives %.9g", k, (long long)i,
                  want_p[i], ref_p);
            p[i] = in_p[i];
            m[i] = in_m ? in_m[i] : 0.0f;
        }
        optimd_tensor param = {sizeof param, OPTIMD_DTYPE_F32, p, n, 1, 0, shape, strides};
        optimd_tensor grad = param, slot = param;
        grad.data = (void *)g;
        slot.data = m;
        optimd_step_args args = {.struct_size = sizeof args, .n_hparams = 2, .hparams = hp,
                                 .step = v->step, .param = &param, .grad = &grad,
                                 .slots = &slot, .n_slots = 1};
        optimd_status st = o->step(&host, &args);
        CHECK(st == OPTIMD_OK, "vector %u: step returned %d: %s", k, st, call.error);
        CHECK(memcmp(p, want_p, (size_t)n * sizeof *p) == 0,
              "vector %u: the step's parameter differs from the declared one", k);
        CHECK(memcmp(m, want_m, (size_t)n * sizeof *m) == 0,
              "vector %u: the step's momentum buffer differs from the declared one", k);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_signum path/to/signum.so\n");
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "test_signum: %s\n", dlerror());
        return 1;
    }
    const optimd_plugin_desc *d = dlsym(h, OPTIMD_PLUGIN_SYMBOL);
    CHECK(d != NULL, "no symbol %s", OPTIMD_PLUGIN_SYMBOL);
    if (!d) return 1;
    CHECK(d->abi_major == OPTIMD_ABI_MAJOR, "abi_major %u", d->abi_major);
    CHECK(d->kind == OPTIMD_KIND_OPTIMIZER && d->optimizer, "not an optimizer");
    CHECK(strcmp(d->id, "signum") == 0, "id '%s'", d->id);
    const optimd_optimizer *o = d->optimizer;
    CHECK(o->n_hparams == 2 && find(o, "lr") >= 0 && find(o, "momentum") >= 0,
          "hyperparameters are not lr and momentum");
    CHECK(o->n_slots == 1 && strcmp(o->slots[0].key, "momentum_buffer") == 0, "slot layout");
    if (failures) return 1;
    run(o, 0);
    run(o, 1);
    check_vectors(o);
    dlclose(h);
    if (failures) {
        fprintf(stderr, "test_signum: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_signum: f32 and f64 steps and the declared test vector match the Signum rule\n");
    return 0;
}
