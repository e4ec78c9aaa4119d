/*
 * RAdam (rectified Adam, L2 weight decay): torch.optim.RAdam of torch
 * 1.13.1, single-tensor (foreach=False, the default) path, bit for bit on
 * CPU for f32 and f64. torch 1.13's RAdam has no maximize.
 *
 * torch's rule (t = fp32 step count, torch_ops.h for the rounding model):
 *   g = g + wd * p  if wd != 0                                     (fma)
 *   m = m * beta1 + (1 - beta1) * g;  v = v * beta2 + (1 - beta2) * g * g
 *   mc = m / (1 - beta1^t)
 *   rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
 *   rho_t > 5:   rect = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
 *                a = (1 / (sqrt(v) + eps)) * sqrt(1 - beta2^t)
 *                p = p - ((mc * lr) * a) * rect
 *   otherwise:   p = p - mc * lr             (un-adapted momentum step)
 * Scalars in double, each tensor operation rounded in the parameter's
 * dtype, left to right as torch evaluates the Python expression; torch's
 * `scalar / tensor` is `tensor.reciprocal() * scalar`, hence `a`. With
 * beta2 = 0.999 the rectified branch starts at t = 6 (rho_5 = 4.996).
 * torch 1.13's foreach path leaves eps out; the single-tensor path, the
 * default and the one reproduced here, has it.
 */
#include "torch_ops.h"

enum radam_hparam_index {
    RADAM_HP_LR,
    RADAM_HP_BETA1,
    RADAM_HP_BETA2,
    RADAM_HP_EPS,
    RADAM_HP_WEIGHT_DECAY,
    RADAM_HP_COUNT
};

static const optimd_hparam_def radam_hparams[RADAM_HP_COUNT] = {
    [RADAM_HP_LR] = TORCH_HP_LR(1e-3),
    [RADAM_HP_BETA1] = TORCH_HP_BETA1,
    [RADAM_HP_BETA2] = TORCH_HP_BETA2,
    [RADAM_HP_EPS] = TORCH_HP_EPS(1e-8, "Added to sqrt(v), before bias correction."),
    [RADAM_HP_WEIGHT_DECAY] = TORCH_HP_WEIGHT_DECAY,
};

enum radam_slot_index { RADAM_SLOT_EXP_AVG, RADAM_SLOT_EXP_AVG_SQ, RADAM_SLOT_COUNT };

static const optimd_slot_def radam_slots[RADAM_SLOT_COUNT] = {
    [RADAM_SLOT_EXP_AVG] = TORCH_SLOT("exp_avg", "First moment estimate."),
    [RADAM_SLOT_EXP_AVG_SQ] = TORCH_SLOT("exp_avg_sq", "Second moment estimate."),
};

typedef struct radam_job {
    torch_job_base base;
    void *exp_avg;
    void *exp_avg_sq;
    torch_moments moments;
    double bias_correction1;
    double bias_correction2_sqrt;
    double eps;
    double lr;
    double rect;
} radam_job;

/* RECTIFIED is a constant: the branch is per step, not per element. */
#define RADAM_DEFINE_KERNEL(name, T, RECTIFIED)                              \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, radam_job);                                 \
        T *restrict m = job->exp_avg;                                        \
        T *restrict v = job->exp_avg_sq;                                     \
        TORCH_MOMENTS_LOCALS(T, job->moments);                               \
        const T bias_correction1 = (T)job->bias_correction1;                 \
        const T bias_correction2_sqrt = (T)job->bias_correction2_sqrt;       \
        const T eps = (T)job->eps;                                           \
        const T lr = (T)job->lr;                                             \
        const T rect = (T)job->rect;                                         \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = TORCH_GRAD(T, g[i], p[i]);                        \
            TORCH_MOMENTS_UPDATE(T, m, v, i, grad);                          \
            const T corrected = mi / bias_correction1;                       \
            if (RECTIFIED) {                                                 \
                const T adaptive =                                           \
                    ((T)1 / (TORCH_SQRT(vi) + eps)) * bias_correction2_sqrt; \
                p[i] = p[i] - ((corrected * lr) * adaptive) * rect;          \
            } else {                                                         \
                p[i] = p[i] - corrected * lr;                                \
            }                                                                \
        }                                                                    \
    }

RADAM_DEFINE_KERNEL(radam_kernel_f32, float, false)
RADAM_DEFINE_KERNEL(radam_kernel_f64, double, false)
RADAM_DEFINE_KERNEL(radam_rectified_kernel_f32, float, true)
RADAM_DEFINE_KERNEL(radam_rectified_kernel_f64, double, true)

static optimd_status radam_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = torch_check_step(
        host, args, RADAM_HP_COUNT, radam_slots, RADAM_SLOT_COUNT,
        TORCH_SLOT_BIT(RADAM_SLOT_EXP_AVG) | TORCH_SLOT_BIT(RADAM_SLOT_EXP_AVG_SQ));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double beta1 = hp[RADAM_HP_BETA1];
    const double beta2 = hp[RADAM_HP_BETA2];
    const double t = torch_f32_step_count(args->step);
    /* Same double expressions, in the same order, as torch's Python code. */
    const double bias_correction1 = 1.0 - pow(beta1, t);
    const double bias_correction2 = 1.0 - pow(beta2, t);
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * t * pow(beta2, t) / bias_correction2;
    const bool rectified = rho_t > 5.0;
    const double rect =
        rectified ? sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                         ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                  : 0.0;
    radam_job job = {
        .base = torch_job_base_make(args, 0.0, hp[RADAM_HP_WEIGHT_DECAY]),
        .exp_avg = args->slots[RADAM_SLOT_EXP_AVG].data,
        .exp_avg_sq = args->slots[RADAM_SLOT_EXP_AVG_SQ].data,
        .moments = torch_moments_make(beta1, beta2),
        .bias_correction1 = bias_correction1,
        .bias_correction2_sqrt = sqrt(bias_correction2),
        .eps = hp[RADAM_HP_EPS],
        .lr = hp[RADAM_HP_LR],
        .rect = rect,
    };
    const torch_kernel_pair kernel =
        rectified ? (torch_kernel_pair){radam_rectified_kernel_f32, radam_rectified_kernel_f64}
                  : (torch_kernel_pair){radam_kernel_f32, radam_kernel_f64};
    return torch_run_kernel(host, args, kernel, &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("radam", "1.0.0",
                            "RAdam (rectified Adam), as torch.optim.RAdam 1.13",
                            radam_hparams, radam_slots, NULL, radam_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
