/*
 * NAdam (L2 weight decay, momentum decay): torch.optim.NAdam of torch
 * 1.13.1, single-tensor (foreach=False, the default) path, bit for bit on
 * CPU for f32 and f64. torch 1.13's NAdam has no maximize.
 *
 * torch's rule (t = fp32 step count, psi = momentum_decay, torch_ops.h for
 * the rounding model):
 *   g = g + wd * p  if wd != 0                                     (fma)
 *   mu      = beta1 * (1 - 0.5 * 0.96^(t * psi))                   (double)
 *   mu_next = beta1 * (1 - 0.5 * 0.96^((t + 1) * psi))             (double)
 *   mu_product = mu_product * mu                   (a float32 0-dim tensor)
 *   mu_product_next = mu_product * mu * mu_next    (float32, see below)
 *   m = m * beta1 + (1 - beta1) * g;  v = v * beta2 + (1 - beta2) * g * g
 *   denom = sqrt(v / (1 - beta2^t)) + eps
 *   p = p + (-lr * (1 - mu) / (1 - mu_product) * g) / denom        (addcdiv_)
 *   p = p + (-lr * mu_next / (1 - mu_product_next) * m) / denom    (addcdiv_)
 *
 * Quirk kept on purpose: torch 1.13's single-tensor path multiplies the
 * already updated mu_product by mu again for mu_product_next, so mu_t is
 * counted twice (torch 2.0 fixed it, PR #92699); torch 1.13's foreach path
 * does not have it. mu_product is torch.tensor(1.), float32 even for f64
 * parameters, so it lives in a float32 OPTIMD_SLOT_SCALAR slot and every
 * product is rounded to float32 as torch's tensor arithmetic does.
 */
#include "torch_ops.h"

enum nadam_hparam_index {
    NADAM_HP_LR,
    NADAM_HP_BETA1,
    NADAM_HP_BETA2,
    NADAM_HP_EPS,
    NADAM_HP_WEIGHT_DECAY,
    NADAM_HP_MOMENTUM_DECAY,
    NADAM_HP_COUNT
};

static const optimd_hparam_def nadam_hparams[NADAM_HP_COUNT] = {
    [NADAM_HP_LR] = TORCH_HP_LR(2e-3),
    [NADAM_HP_BETA1] = TORCH_HP_BETA1,
    [NADAM_HP_BETA2] = TORCH_HP_BETA2,
    [NADAM_HP_EPS] = TORCH_HP_EPS(1e-8, "Added to the denominator, after bias correction."),
    [NADAM_HP_WEIGHT_DECAY] = TORCH_HP_WEIGHT_DECAY,
    [NADAM_HP_MOMENTUM_DECAY] = PLUG_HP_FLOAT(
        "momentum_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 4e-3,
        "psi in mu_t = beta1 * (1 - 0.5 * 0.96^(t * psi))."),
};

enum nadam_slot_index {
    NADAM_SLOT_EXP_AVG,
    NADAM_SLOT_EXP_AVG_SQ,
    NADAM_SLOT_MU_PRODUCT,
    NADAM_SLOT_COUNT
};

static const optimd_slot_def nadam_slots[NADAM_SLOT_COUNT] = {
    [NADAM_SLOT_EXP_AVG] = TORCH_SLOT("exp_avg", "First moment estimate."),
    [NADAM_SLOT_EXP_AVG_SQ] = TORCH_SLOT("exp_avg_sq", "Second moment estimate."),
    /* The host zero-fills it; step 1 starts from torch's 1.0 instead. */
    [NADAM_SLOT_MU_PRODUCT] = TORCH_SCALAR_SLOT("mu_product",
                                                "Product of the momentum coefficients mu_1..mu_t."),
};

typedef struct nadam_job {
    torch_job_base base;
    void *exp_avg;
    void *exp_avg_sq;
    torch_moments moments;
    double bias_correction2;
    double eps;
    double grad_coef;        /* -lr * (1 - mu) / (1 - mu_product) */
    double exp_avg_coef;     /* -lr * mu_next / (1 - mu_product_next) */
} nadam_job;

#define NADAM_DEFINE_KERNEL(name, T)                                         \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, nadam_job);                                 \
        T *restrict m = job->exp_avg;                                        \
        T *restrict v = job->exp_avg_sq;                                     \
        TORCH_MOMENTS_LOCALS(T, job->moments);                               \
        const T bias_correction2 = (T)job->bias_correction2;                 \
        const T eps = (T)job->eps;                                           \
        const T grad_coef = (T)job->grad_coef;                               \
        const T exp_avg_coef = (T)job->exp_avg_coef;                         \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = TORCH_GRAD(T, g[i], p[i]);                        \
            TORCH_MOMENTS_UPDATE(T, m, v, i, grad);                          \
            const T denom = TORCH_SQRT(vi / bias_correction2) + eps;         \
            const T pi = TORCH_ADDCDIV(p[i], grad_coef, grad, denom);        \
            p[i] = TORCH_ADDCDIV(pi, exp_avg_coef, mi, denom);               \
        }                                                                    \
    }

NADAM_DEFINE_KERNEL(nadam_kernel_f32, float)
NADAM_DEFINE_KERNEL(nadam_kernel_f64, double)

static optimd_status nadam_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = torch_check_step(
        host, args, NADAM_HP_COUNT, nadam_slots, NADAM_SLOT_COUNT,
        TORCH_SLOT_BIT(NADAM_SLOT_EXP_AVG) | TORCH_SLOT_BIT(NADAM_SLOT_EXP_AVG_SQ) |
            TORCH_SLOT_BIT(NADAM_SLOT_MU_PRODUCT));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double lr = hp[NADAM_HP_LR];
    const double beta1 = hp[NADAM_HP_BETA1];
    const double beta2 = hp[NADAM_HP_BETA2];
    const double psi = hp[NADAM_HP_MOMENTUM_DECAY];
    const double t = torch_f32_step_count(args->step);
    /* Same double expressions as torch's Python code. */
    const double mu = beta1 * (1.0 - 0.5 * pow(0.96, t * psi));
    const double mu_next = beta1 * (1.0 - 0.5 * pow(0.96, (t + 1.0) * psi));
    optimd_tensor *mu_product_slot = &args->slots[NADAM_SLOT_MU_PRODUCT];
    const float mu_product_before = args->step == 1 ? 1.0f : torch_scalar_get(mu_product_slot);
    /* float32 tensor times a Python float: the float is rounded first. */
    const float mu_product = mu_product_before * (float)mu;
    const float mu_product_next = mu_product * (float)mu * (float)mu_next;
    nadam_job job = {
        .base = torch_job_base_make(args, 0.0, hp[NADAM_HP_WEIGHT_DECAY]),
        .exp_avg = args->slots[NADAM_SLOT_EXP_AVG].data,
        .exp_avg_sq = args->slots[NADAM_SLOT_EXP_AVG_SQ].data,
        .moments = torch_moments_make(beta1, beta2),
        .bias_correction2 = 1.0 - pow(beta2, t),
        .eps = hp[NADAM_HP_EPS],
        .grad_coef = -lr * (1.0 - mu) / (1.0 - (double)mu_product),
        .exp_avg_coef = -lr * mu_next / (1.0 - (double)mu_product_next),
    };
    st = torch_run_kernel(host, args, (torch_kernel_pair){nadam_kernel_f32, nadam_kernel_f64},
                          &job);
    if (st == OPTIMD_OK) torch_scalar_set(mu_product_slot, mu_product);
    return st;
}

PLUG_DEFINE_OPTIMIZER_FLAGS("nadam", "1.0.0",
                            "NAdam (Nesterov Adam) with torch 1.13's single-tensor rule, as torch.optim.NAdam 1.13",
                            nadam_hparams, nadam_slots, NULL, nadam_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
