/*
 * SparseAdam: torch.optim.SparseAdam of torch 1.13.1 (the lazy Adam for
 * row-sparse gradients, torch/optim/_functional.py `sparse_adam`), bit for
 * bit on CPU for f32 and f64.
 *
 * The daemon gathers the rows a row-sparse gradient names (coalesced) and
 * calls this step on them, so every element the kernel sees is one torch
 * updates; the others are never touched, which is what makes it lazy.
 * torch's sparse path orders the arithmetic differently from Adam's dense
 * one, and this kernel follows it (t = the parameter's step count, a
 * Python int in torch, so it does not saturate; scalars in double, rounded
 * to the tensor's dtype where torch hands them to a kernel):
 *
 *   g = maximize ? -g : g
 *   dm = (g - m) * (1 - beta1)                 exp_avg_update_values
 *   dv = (g * g - v) * (1 - beta2)             exp_avg_sq_update_values
 *   m = m + dm;  v = v + dv                    dense.add_(sparse): plain adds
 *   numer = dm + m_old;  denom = sqrt(dv + v_old) + eps
 *   step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)   (double)
 *   p = p + (-step_size) * (numer / denom)
 *
 * No fma anywhere: add_ of a sparse tensor with alpha 1 is fma(1, y, x),
 * the same as x + y. A dense gradient is taken as a sparse one naming
 * every row (torch's SparseAdam refuses dense gradients).
 */
#include "torch_ops.h"

enum sparse_adam_hparam_index {
    SPARSE_ADAM_HP_LR,
    SPARSE_ADAM_HP_BETA1,
    SPARSE_ADAM_HP_BETA2,
    SPARSE_ADAM_HP_EPS,
    SPARSE_ADAM_HP_MAXIMIZE,
    SPARSE_ADAM_HP_COUNT
};

/* torch's constructor refuses lr <= 0 and eps <= 0; so do the ranges. */
static const optimd_hparam_def sparse_adam_hparams[SPARSE_ADAM_HP_COUNT] = {
    [SPARSE_ADAM_HP_LR] = PLUG_HP_FLOAT(
        "lr", OPTIMD_HP_MUTABLE | OPTIMD_HP_MIN_EXCLUSIVE, 0.0, PLUG_HP_LARGE,
        1e-3, "Learning rate."),
    [SPARSE_ADAM_HP_BETA1] = TORCH_HP_BETA1,
    [SPARSE_ADAM_HP_BETA2] = TORCH_HP_BETA2,
    [SPARSE_ADAM_HP_EPS] = PLUG_HP_FLOAT(
        "eps", OPTIMD_HP_MUTABLE | OPTIMD_HP_MIN_EXCLUSIVE, 0.0, PLUG_HP_LARGE,
        1e-8, "Added to sqrt(exp_avg_sq) before bias correction."),
    [SPARSE_ADAM_HP_MAXIMIZE] = TORCH_HP_MAXIMIZE,
};

enum sparse_adam_slot_index {
    SPARSE_ADAM_SLOT_EXP_AVG,
    SPARSE_ADAM_SLOT_EXP_AVG_SQ,
    SPARSE_ADAM_SLOT_COUNT
};

static const optimd_slot_def sparse_adam_slots[SPARSE_ADAM_SLOT_COUNT] = {
    [SPARSE_ADAM_SLOT_EXP_AVG] = TORCH_SLOT(
        "exp_avg", "First moment estimate; rows change only when they get a gradient."),
    [SPARSE_ADAM_SLOT_EXP_AVG_SQ] = TORCH_SLOT(
        "exp_avg_sq", "Second moment estimate; rows change only when they get a gradient."),
};

PLUG_DEFINE_HPARAM_CHECK(sparse_adam_check_hparams, "sparse_adam", sparse_adam_hparams)

typedef struct sparse_adam_job {
    torch_job_base base;
    void *exp_avg;
    void *exp_avg_sq;
    double one_minus_beta1;
    double one_minus_beta2;
    double eps;
    double neg_step_size;
} sparse_adam_job;

#define SPARSE_ADAM_DEFINE_KERNEL(name, T)                                   \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, sparse_adam_job);                           \
        (void)l2_factor;                                                     \
        (void)l2_on;                                                         \
        T *restrict m = job->exp_avg;                                        \
        T *restrict v = job->exp_avg_sq;                                     \
        const T one_minus_beta1 = (T)job->one_minus_beta1;                   \
        const T one_minus_beta2 = (T)job->one_minus_beta2;                   \
        const T eps = (T)job->eps;                                           \
        const T neg_step_size = (T)job->neg_step_size;                       \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = g[i] * grad_sign;                                 \
            const T m_old = m[i], v_old = v[i];                              \
            const T dm = (grad - m_old) * one_minus_beta1;                   \
            const T dv = (grad * grad - v_old) * one_minus_beta2;            \
            m[i] = m_old + dm;                                               \
            v[i] = v_old + dv;                                               \
            const T numer = dm + m_old;                                      \
            const T denom = TORCH_SQRT(dv + v_old) + eps;                    \
            p[i] = p[i] + neg_step_size * (numer / denom);                   \
        }                                                                    \
    }

SPARSE_ADAM_DEFINE_KERNEL(sparse_adam_kernel_f32, float)
SPARSE_ADAM_DEFINE_KERNEL(sparse_adam_kernel_f64, double)

static optimd_status sparse_adam_step(const optimd_host *host,
                                      const optimd_step_args *args)
{
    optimd_status st = torch_check_step(
        host, args, SPARSE_ADAM_HP_COUNT, sparse_adam_slots, SPARSE_ADAM_SLOT_COUNT,
        TORCH_SLOT_BIT(SPARSE_ADAM_SLOT_EXP_AVG) | TORCH_SLOT_BIT(SPARSE_ADAM_SLOT_EXP_AVG_SQ));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double lr = hp[SPARSE_ADAM_HP_LR];
    const double beta1 = hp[SPARSE_ADAM_HP_BETA1];
    const double beta2 = hp[SPARSE_ADAM_HP_BETA2];
    /* torch's `step` is a Python int here: no float32 saturation. */
    const double t = (double)args->step;
    /* Same double expressions, same order, as torch's Python code. */
    const double bias_correction1 = 1.0 - pow(beta1, t);
    const double bias_correction2 = 1.0 - pow(beta2, t);
    const double step_size = lr * sqrt(bias_correction2) / bias_correction1;
    sparse_adam_job job = {
        .base = torch_job_base_make(args, hp[SPARSE_ADAM_HP_MAXIMIZE], 0.0),
        .exp_avg = args->slots[SPARSE_ADAM_SLOT_EXP_AVG].data,
        .exp_avg_sq = args->slots[SPARSE_ADAM_SLOT_EXP_AVG_SQ].data,
        .one_minus_beta1 = 1.0 - beta1,
        .one_minus_beta2 = 1.0 - beta2,
        .eps = hp[SPARSE_ADAM_HP_EPS],
        .neg_step_size = -step_size,
    };
    return torch_run_kernel(
        host, args,
        (torch_kernel_pair){sparse_adam_kernel_f32, sparse_adam_kernel_f64}, &job);
}

PLUG_DEFINE_OPTIMIZER("sparse_adam", "1.0.0",
                      "Lazy Adam for row-sparse gradients, as torch.optim.SparseAdam 1.13",
                      sparse_adam_hparams, sparse_adam_slots, sparse_adam_check_hparams,
                      sparse_adam_step);
