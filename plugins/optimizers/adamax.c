/*
 * Adamax (Adam with the infinity norm; L2 weight decay, maximize):
 * torch.optim.Adamax of torch 1.13.1, single-tensor path, bit for bit on
 * CPU for f32 and f64.
 *
 * torch's rule (t = fp32 step count, torch_ops.h for the rounding model):
 *   g = maximize ? -g : g;  if wd != 0: g = g + wd * p             (fma)
 *   m = m * beta1 + (1 - beta1) * g                                (mul, fma)
 *   u = amax(u * beta2, |g| + eps)         (eps inside the max; NaN wins)
 *   p = p + (-(lr / (1 - beta1^t)) * m) / u                        (addcdiv_)
 */
#include "torch_ops.h"

enum adamax_hparam_index {
    ADAMAX_HP_LR,
    ADAMAX_HP_BETA1,
    ADAMAX_HP_BETA2,
    ADAMAX_HP_EPS,
    ADAMAX_HP_WEIGHT_DECAY,
    ADAMAX_HP_MAXIMIZE,
    ADAMAX_HP_COUNT
};

static const optimd_hparam_def adamax_hparams[ADAMAX_HP_COUNT] = {
    [ADAMAX_HP_LR] = TORCH_HP_LR(2e-3),
    [ADAMAX_HP_BETA1] = TORCH_HP_BETA1,
    [ADAMAX_HP_BETA2] = TORCH_HP_BETA2,
    [ADAMAX_HP_EPS] = TORCH_HP_EPS(1e-8, "Added to |g| inside the running maximum."),
    [ADAMAX_HP_WEIGHT_DECAY] = TORCH_HP_WEIGHT_DECAY,
    [ADAMAX_HP_MAXIMIZE] = TORCH_HP_MAXIMIZE,
};

enum adamax_slot_index { ADAMAX_SLOT_EXP_AVG, ADAMAX_SLOT_EXP_INF, ADAMAX_SLOT_COUNT };

static const optimd_slot_def adamax_slots[ADAMAX_SLOT_COUNT] = {
    [ADAMAX_SLOT_EXP_AVG] = TORCH_SLOT("exp_avg", "First moment estimate."),
    [ADAMAX_SLOT_EXP_INF] = TORCH_SLOT("exp_inf", "Exponentially weighted infinity norm."),
};

typedef struct adamax_job {
    torch_job_base base;
    void *exp_avg;
    void *exp_inf;
    double beta1, one_minus_beta1;
    double beta2;
    double eps;
    double neg_clr;          /* -lr / (1 - beta1^t) */
} adamax_job;

#define ADAMAX_DEFINE_KERNEL(name, T)                                        \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, adamax_job);                                \
        T *restrict m = job->exp_avg;                                        \
        T *restrict u = job->exp_inf;                                        \
        const T beta1 = (T)job->beta1;                                       \
        const T one_minus_beta1 = (T)job->one_minus_beta1;                   \
        const T beta2 = (T)job->beta2;                                       \
        const T eps = (T)job->eps;                                           \
        const T neg_clr = (T)job->neg_clr;                                   \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = TORCH_GRAD(T, g[i], p[i]);                        \
            const T mi = TORCH_EMA(m[i], grad, beta1, one_minus_beta1);      \
            const T ui = TORCH_MAXIMUM(u[i] * beta2, TORCH_ABS(grad) + eps); \
            m[i] = mi;                                                       \
            u[i] = ui;                                                       \
            p[i] = TORCH_ADDCDIV(p[i], neg_clr, mi, ui);                     \
        }                                                                    \
    }

ADAMAX_DEFINE_KERNEL(adamax_kernel_f32, float)
ADAMAX_DEFINE_KERNEL(adamax_kernel_f64, double)

static optimd_status adamax_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = torch_check_step(
        host, args, ADAMAX_HP_COUNT, adamax_slots, ADAMAX_SLOT_COUNT,
        TORCH_SLOT_BIT(ADAMAX_SLOT_EXP_AVG) | TORCH_SLOT_BIT(ADAMAX_SLOT_EXP_INF));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double beta1 = hp[ADAMAX_HP_BETA1];
    /* Same double expressions as torch's Python code. */
    const double bias_correction = 1.0 - pow(beta1, torch_f32_step_count(args->step));
    adamax_job job = {
        .base = torch_job_base_make(args, hp[ADAMAX_HP_MAXIMIZE], hp[ADAMAX_HP_WEIGHT_DECAY]),
        .exp_avg = args->slots[ADAMAX_SLOT_EXP_AVG].data,
        .exp_inf = args->slots[ADAMAX_SLOT_EXP_INF].data,
        .beta1 = beta1,
        .one_minus_beta1 = 1.0 - beta1,
        .beta2 = hp[ADAMAX_HP_BETA2],
        .eps = hp[ADAMAX_HP_EPS],
        .neg_clr = -(hp[ADAMAX_HP_LR] / bias_correction),
    };
    return torch_run_kernel(host, args,
                            (torch_kernel_pair){adamax_kernel_f32, adamax_kernel_f64}, &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("adamax", "1.0.0",
                            "Adamax (infinity-norm Adam), as torch.optim.Adamax 1.13",
                            adamax_hparams, adamax_slots, NULL, adamax_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
