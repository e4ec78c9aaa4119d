/*
 * Lion (EvoLved Sign Momentum; Chen et al. 2023, arXiv:2302.06675), in the
 * update order of lucidrains/lion-pytorch (and google/automl):
 *
 *   p = p * (1 - lr * wd)                          (decoupled, mul_)
 *   u = sign(m * beta1 + (1 - beta1) * g)          (mul_, add_ -> fma)
 *   p = p + (-lr) * u                              (add_(u, alpha=-lr) -> fma)
 *   m = m * beta2 + (1 - beta2) * g                (mul_, add_ -> fma)
 *
 * Scalars (1 - lr*wd, 1 - beta, -lr) are computed in double and rounded to
 * the tensor's dtype, as torch does with Python floats; torch_ops.h gives
 * the rounding of each tensor op. tests/parity's reference runs exactly
 * these torch 1.13 ops, so the plugin matches it bit for bit (f32, f64).
 * State: exp_avg (m), like lion-pytorch's state key.
 */
#include "torch_ops.h"

enum lion_hparam_index {
    LION_HP_LR,
    LION_HP_BETA1,
    LION_HP_BETA2,
    LION_HP_WEIGHT_DECAY,
    LION_HP_COUNT
};

static const optimd_hparam_def lion_hparams[LION_HP_COUNT] = {
    [LION_HP_LR] = TORCH_HP_LR(1e-4),
    [LION_HP_BETA1] = PLUG_HP_FLOAT("beta1", OPTIMD_HP_MUTABLE, 0.0, 1.0, 0.9,
                                    "Interpolation weight of the momentum in the update sign."),
    [LION_HP_BETA2] = PLUG_HP_FLOAT("beta2", OPTIMD_HP_MUTABLE, 0.0, 1.0, 0.99,
                                    "Decay rate of the momentum (exp_avg)."),
    [LION_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT(
        "weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.0,
        "Decoupled weight decay: p *= 1 - lr * weight_decay before the update."),
};

enum lion_slot_index { LION_SLOT_EXP_AVG, LION_SLOT_COUNT };

static const optimd_slot_def lion_slots[LION_SLOT_COUNT] = {
    [LION_SLOT_EXP_AVG] = TORCH_SLOT("exp_avg", "Momentum (EMA of the gradient, beta2)."),
};

typedef struct lion_job {
    void *param;
    const void *grad;
    void *exp_avg;
    double decay;            /* 1 - lr * wd */
    double neg_lr;
    double beta1, one_minus_beta1;
    double beta2, one_minus_beta2;
} lion_job;

#define LION_DEFINE_KERNEL(name, T)                                          \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        const lion_job *job = user;                                          \
        T *restrict p = job->param;                                          \
        const T *restrict g = job->grad;                                     \
        T *restrict m = job->exp_avg;                                        \
        const T decay = (T)job->decay, neg_lr = (T)job->neg_lr;              \
        const T beta1 = (T)job->beta1, one_minus_beta1 = (T)job->one_minus_beta1; \
        const T beta2 = (T)job->beta2, one_minus_beta2 = (T)job->one_minus_beta2; \
        for (int64_t i = begin; i < end; i++) {                              \
            const T gi = g[i], mi = m[i];                                    \
            const T c = TORCH_EMA(mi, gi, beta1, one_minus_beta1);           \
            p[i] = TORCH_FMA(neg_lr, TORCH_SIGN(T, c), p[i] * decay);        \
            m[i] = TORCH_EMA(mi, gi, beta2, one_minus_beta2);                \
        }                                                                    \
    }

LION_DEFINE_KERNEL(lion_kernel_f32, float)
LION_DEFINE_KERNEL(lion_kernel_f64, double)

static optimd_status lion_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = torch_check_step(host, args, LION_HP_COUNT, lion_slots, LION_SLOT_COUNT,
                                        TORCH_SLOT_BIT(LION_SLOT_EXP_AVG));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double lr = hp[LION_HP_LR];
    lion_job job = {
        .param = args->param->data,
        .grad = args->grad->data,
        .exp_avg = args->slots[LION_SLOT_EXP_AVG].data,
        .decay = 1.0 - lr * hp[LION_HP_WEIGHT_DECAY],
        .neg_lr = -lr,
        .beta1 = hp[LION_HP_BETA1],
        .one_minus_beta1 = 1.0 - hp[LION_HP_BETA1],
        .beta2 = hp[LION_HP_BETA2],
        .one_minus_beta2 = 1.0 - hp[LION_HP_BETA2],
    };
    return torch_run_kernel(host, args, (torch_kernel_pair){lion_kernel_f32, lion_kernel_f64},
                            &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("lion", "1.0.0",
                            "Lion (sign momentum, decoupled weight decay), lucidrains/lion-pytorch order",
                            lion_hparams, lion_slots, NULL, lion_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
