/*
 * Adadelta (L2 weight decay, maximize): torch.optim.Adadelta of torch
 * 1.13.1, single-tensor path, bit for bit on CPU for f32 and f64.
 *
 * torch's rule (torch_ops.h for the rounding model; eps inside both roots):
 *   g = maximize ? -g : g;  if wd != 0: g = g + wd * p             (fma)
 *   v = v * rho + (1 - rho) * g * g                                (mul, fma)
 *   delta = (sqrt(u + eps) / sqrt(v + eps)) * g
 *   u = u * rho + (1 - rho) * delta * delta                        (mul, fma)
 *   p = p - lr * delta                                             (fma)
 */
#include "torch_ops.h"

enum adadelta_hparam_index {
    ADADELTA_HP_LR,
    ADADELTA_HP_RHO,
    ADADELTA_HP_EPS,
    ADADELTA_HP_WEIGHT_DECAY,
    ADADELTA_HP_MAXIMIZE,
    ADADELTA_HP_COUNT
};

static const optimd_hparam_def adadelta_hparams[ADADELTA_HP_COUNT] = {
    /* torch's lr scales the delta; 1.0 is the original Adadelta. */
    [ADADELTA_HP_LR] = TORCH_HP_LR(1.0),
    [ADADELTA_HP_RHO] = PLUG_HP_FLOAT("rho", OPTIMD_HP_MUTABLE, 0.0, 1.0, 0.9,
                                      "Decay rate of both running averages."),
    [ADADELTA_HP_EPS] = TORCH_HP_EPS(1e-6, "Added inside both square roots."),
    [ADADELTA_HP_WEIGHT_DECAY] = TORCH_HP_WEIGHT_DECAY,
    [ADADELTA_HP_MAXIMIZE] = TORCH_HP_MAXIMIZE,
};

enum adadelta_slot_index {
    ADADELTA_SLOT_SQUARE_AVG,
    ADADELTA_SLOT_ACC_DELTA,
    ADADELTA_SLOT_COUNT
};

static const optimd_slot_def adadelta_slots[ADADELTA_SLOT_COUNT] = {
    [ADADELTA_SLOT_SQUARE_AVG] = TORCH_SLOT("square_avg", "Running mean of the squared gradient."),
    [ADADELTA_SLOT_ACC_DELTA] = TORCH_SLOT("acc_delta", "Running mean of the squared update."),
};

typedef struct adadelta_job {
    torch_job_base base;
    void *square_avg;
    void *acc_delta;
    double rho, one_minus_rho;
    double eps;
    double neg_lr;
} adadelta_job;

#define ADADELTA_DEFINE_KERNEL(name, T)                                      \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, adadelta_job);                              \
        T *restrict v = job->square_avg;                                     \
        T *restrict u = job->acc_delta;                                      \
        const T rho = (T)job->rho;                                           \
        const T one_minus_rho = (T)job->one_minus_rho;                       \
        const T eps = (T)job->eps;                                           \
        const T neg_lr = (T)job->neg_lr;                                     \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = TORCH_GRAD(T, g[i], p[i]);                        \
            const T vi = TORCH_EMA_SQ(v[i], grad, rho, one_minus_rho);       \
            const T std = TORCH_SQRT(vi + eps);                              \
            const T delta = (TORCH_SQRT(u[i] + eps) / std) * grad;           \
            v[i] = vi;                                                       \
            u[i] = TORCH_EMA_SQ(u[i], delta, rho, one_minus_rho);            \
            p[i] = TORCH_FMA(neg_lr, delta, p[i]);                           \
        }                                                                    \
    }

ADADELTA_DEFINE_KERNEL(adadelta_kernel_f32, float)
ADADELTA_DEFINE_KERNEL(adadelta_kernel_f64, double)

static optimd_status adadelta_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = torch_check_step(
        host, args, ADADELTA_HP_COUNT, adadelta_slots, ADADELTA_SLOT_COUNT,
        TORCH_SLOT_BIT(ADADELTA_SLOT_SQUARE_AVG) | TORCH_SLOT_BIT(ADADELTA_SLOT_ACC_DELTA));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    adadelta_job job = {
        .base = torch_job_base_make(args, hp[ADADELTA_HP_MAXIMIZE],
                                    hp[ADADELTA_HP_WEIGHT_DECAY]),
        .square_avg = args->slots[ADADELTA_SLOT_SQUARE_AVG].data,
        .acc_delta = args->slots[ADADELTA_SLOT_ACC_DELTA].data,
        .rho = hp[ADADELTA_HP_RHO],
        .one_minus_rho = 1.0 - hp[ADADELTA_HP_RHO],
        .eps = hp[ADADELTA_HP_EPS],
        .neg_lr = -hp[ADADELTA_HP_LR],
    };
    return torch_run_kernel(host, args,
                            (torch_kernel_pair){adadelta_kernel_f32, adadelta_kernel_f64},
                            &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("adadelta", "1.0.0", "Adadelta, as torch.optim.Adadelta 1.13",
                            adadelta_hparams, adadelta_slots, NULL, adadelta_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
