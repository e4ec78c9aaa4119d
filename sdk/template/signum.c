/*
 * signum: signSGD with momentum (Bernstein et al., 2018, "signSGD:
 * Compressed Optimisation for Non-Convex Problems", Algorithm "Signum").
 * The optimd plugin template: copy this project, rename, change the math.
 *
 *   m = momentum * m + (1 - momentum) * g
 *   p = p - lr * sign(m)              (sign(0) = 0)
 *
 * Two hyperparameters (lr, momentum), one state slot (m), f32 and f64.
 * Every operation is rounded in the parameter's dtype, in the order written
 * above, so a client can reproduce a step exactly.
 */
#include <optimd/kernel.h>
#include <optimd/plugin.h>

#include <stddef.h>

enum { HP_LR, HP_MOMENTUM, HP_COUNT };
enum { SLOT_MOMENTUM_BUFFER, SLOT_COUNT };

static const optimd_hparam_def hparams[HP_COUNT] = {
    [HP_LR] = {.struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_FLOAT,
               .flags = OPTIMD_HP_MUTABLE, .key = "lr",
               .doc = "Learning rate: every element moves by exactly lr per step.",
               .min = 0.0, .max = 1e6, .default_value = 1e-3},
    [HP_MOMENTUM] = {.struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_FLOAT,
                     .flags = OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, .key = "momentum",
                     .doc = "Decay of the gradient average whose sign is followed; 0 is signSGD.",
                     .min = 0.0, .max = 1.0, .default_value = 0.9},
};

static const optimd_slot_def slots[SLOT_COUNT] = {
    [SLOT_MOMENTUM_BUFFER] = {.struct_size = sizeof(optimd_slot_def),
                              .shape = OPTIMD_SLOT_LIKE_PARAM, .dtype = 0,
                              .key = "momentum_buffer",
                              .doc = "Exponential average of the gradients.",
                              .enabled_by = NULL},
};

/* Shared, read-only, by the chunks of one step. */
typedef struct job {
    void *param;
    const void *grad;
    void *m;
    double lr, momentum;
} job;

/* OPTIMD_KERNEL (optimd/kernel.h): compiled for AVX-512, AVX2 and baseline
 * x86-64, the loader picking one; the same bits on each. */
OPTIMD_KERNEL static void update_f32(void *user, int64_t begin, int64_t end)
{
    const job *j = user;
    float *p = j->param, *m = j->m;
    const float *g = j->grad;
    const float lr = (float)j->lr, b = (float)j->momentum, c = 1.0f - b;
    for (int64_t i = begin; i < end; i++) {
        float mi = b * m[i] + c * g[i];
        m[i] = mi;
        float s = (mi > 0.0f) - (mi < 0.0f);
        p[i] = p[i] - lr * s;
    }
}

OPTIMD_KERNEL static void update_f64(void *user, int64_t begin, int64_t end)
{
    const job *j = user;
    double *p = j->param, *m = j->m;
    const double *g = j->grad;
    const double lr = j->lr, b = j->momentum, c = 1.0 - b;
    for (int64_t i = begin; i < end; i++) {
        double mi = b * m[i] + c * g[i];
        m[i] = mi;
        double s = (mi > 0.0) - (mi < 0.0);
        p[i] = p[i] - lr * s;
    }
}

static optimd_status step(const optimd_host *host, const optimd_step_args *args)
{
    /* Check everything before writing anything. */
    if (args->n_hparams != HP_COUNT || args->n_slots != SLOT_COUNT ||
        args->slots[SLOT_MOMENTUM_BUFFER].data == NULL) {
        host->set_error(host->call, "signum: malformed step arguments");
        return OPTIMD_ERR_INVALID;
    }
    uint32_t dtype = args->param->dtype;
    if ((dtype != OPTIMD_DTYPE_F32 && dtype != OPTIMD_DTYPE_F64) || args->grad->dtype != dtype ||
        args->slots[SLOT_MOMENTUM_BUFFER].dtype != dtype) {
        host->set_error(host->call, "signum: parameters must be f32 or f64");
        return OPTIMD_ERR_DTYPE;
    }
    job j = {.param = args->param->data,
             .grad = args->grad->data,
             .m = args->slots[SLOT_MOMENTUM_BUFFER].data,
             .lr = args->hparams[HP_LR],
             .momentum = args->hparams[HP_MOMENTUM]};
    optimd_range_fn fn = dtype == OPTIMD_DTYPE_F32 ? update_f32 : update_f64;
    /* Large tensors are split across the host's threads. */
    return optimd_run_ranges(host, args->param->numel, fn, &j);
}

/*
 * A known-answer test of one step, which optimd-validate runs through the
 * ABI and compares bit for bit (docs/abi.md, "Test vectors"). Worked by
 * hand; lr 0.125 and momentum 0.5 keep every intermediate value exact in
 * f32, so the result is exact too. Step 2, from a nonzero momentum buffer:
 *
 *   i   p      g      m_in    m = 0.5 m_in + 0.5 g    p - 0.125 sign(m)
 *   0   1.0    0.5    0.25     0.125 + 0.25  =  0.375   0.875
 *   1  -0.5   -1.0    0.5      0.25  - 0.5   = -0.25   -0.375
 *   2   0.25   0.25  -0.5     -0.25  + 0.125 = -0.125   0.375
 *   3   2.0   -0.75   0.75     0.375 - 0.375 =  0       2.0    (sign(0) = 0)
 *   4  -1.5    2.0   -1.0     -0.5   + 1.0   =  0.5    -1.625
 */
static const char *const tv_keys[] = {"lr", "momentum"};
static const double tv_values[] = {0.125, 0.5};
static const float tv_param[] = {1.0f, -0.5f, 0.25f, 2.0f, -1.5f};
static const float tv_grad[] = {0.5f, -1.0f, 0.25f, -0.75f, 2.0f};
static const float tv_m_in[] = {0.25f, 0.5f, -0.5f, 0.75f, -1.0f};
static const float tv_param_out[] = {0.875f, -0.375f, 0.375f, 2.0f, -1.625f};
static const float tv_m_out[] = {0.375f, -0.25f, -0.125f, 0.0f, 0.5f};
static const void *const tv_slots_in[SLOT_COUNT] = {tv_m_in};
static const void *const tv_slots_out[SLOT_COUNT] = {tv_m_out};

static const optimd_test_vector test_vectors[] = {
    {.struct_size = sizeof(optimd_test_vector), .dtype = OPTIMD_DTYPE_F32,
     .name = "f32_by_hand", .n_hparam_values = 2, .n_slots = SLOT_COUNT,
     .hparam_keys = tv_keys, .hparam_values = tv_values, .step = 2, .numel = 5,
     .max_ulps = 0, .max_abs_error = 0.0,  /* bit-exact */
     .param = tv_param, .grad = tv_grad, .slots = tv_slots_in,
     .expected_param = tv_param_out, .expected_slots = tv_slots_out},
};

static const optimd_optimizer optimizer = {
    .struct_size = sizeof(optimd_optimizer),
    .n_hparams = HP_COUNT,
    .hparams = hparams,
    .n_slots = SLOT_COUNT,
    .dtypes = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64),
    .slots = slots,
    .check_hparams = NULL,
    .step = step,
    .migrate = NULL,
    /* Signum updates each element from that element alone: clients may
     * send its steps in parts (docs/abi.md §6). */
    .flags = OPTIMD_OPTIMIZER_ELEMENTWISE,
    .n_test_vectors = sizeof test_vectors / sizeof test_vectors[0],
    .test_vectors = test_vectors,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_OPTIMIZER,
    .id = "signum",
    .version = "1.0.0",
    .description = "signSGD with momentum (Signum): p -= lr * sign(EMA of gradients)",
    .optimizer = &optimizer,
    .scheduler = NULL,
};
