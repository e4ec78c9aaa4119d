/*
 * AdEMAMix (Pagliardini, Ablin, Grangier 2024, arXiv:2409.03137), in the op
 * order of apple/ml-ademamix's AdEMAMix.step (torch ops, torch_ops.h for
 * their rounding):
 *
 *   m1 = m1 * b1 + (1 - b1) * g    exp_avg_fast   (mul_, fma; m1 = g if b1 == 0)
 *   m2 = m2 * b3 + (1 - b3) * g    exp_avg_slow   (mul_, fma)
 *   nu = nu * b2 + ((1 - b2) * g) * g  exp_avg_sq (mul_, addcmul_)
 *   denom  = sqrt(nu) / sqrt(1 - b2^t) + eps
 *   update = (m1 / (1 - b1^t) + alpha * m2) / denom
 *   update = update + wd * p                      (add_(p, alpha=wd) -> fma)
 *   p = p + (-lr) * update                        (two roundings, as torch)
 *
 * Warmups (the reference's schedulers, per parameter step t):
 *   alpha_warmup T > 0: alpha_t = (1 - t/T) * 0 + (t/T) * alpha while t < T
 *   beta3_warmup T > 0: half-life interpolation from beta1 to beta3 while t < T,
 *     f(b) = ln 0.5 / ln(b + 1e-8) - 1, b3_t = 0.5^(1 / ((1-a) f(b1) + a f(b3) + 1))
 * The reference's None (no warmup) is 0 here. With beta1 == 0 the reference
 * keeps no exp_avg_fast and uses g; the slot is still allocated here (an ABI
 * 1.0 slot can only be switched by a bool); it then holds m1 computed with
 * beta1 = 0 (about the last gradient) and is not used.
 */
#include "torch_ops.h"

enum ademamix_hparam_index {
    ADEMAMIX_HP_LR,
    ADEMAMIX_HP_BETA1,
    ADEMAMIX_HP_BETA2,
    ADEMAMIX_HP_BETA3,
    ADEMAMIX_HP_ALPHA,
    ADEMAMIX_HP_BETA3_WARMUP,
    ADEMAMIX_HP_ALPHA_WARMUP,
    ADEMAMIX_HP_EPS,
    ADEMAMIX_HP_WEIGHT_DECAY,
    ADEMAMIX_HP_COUNT
};

static const optimd_hparam_def ademamix_hparams[ADEMAMIX_HP_COUNT] = {
    [ADEMAMIX_HP_LR] = TORCH_HP_LR(1e-3),
    [ADEMAMIX_HP_BETA1] = PLUG_HP_FLOAT("beta1", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE,
                                        0.0, 1.0, 0.9,
                                        "Decay rate of the fast EMA (betas[0]); 0: use g."),
    [ADEMAMIX_HP_BETA2] = PLUG_HP_FLOAT("beta2", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE,
                                        0.0, 1.0, 0.999,
                                        "Decay rate of the second moment (betas[1])."),
    [ADEMAMIX_HP_BETA3] = PLUG_HP_FLOAT("beta3", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE,
                                        0.0, 1.0, 0.9999,
                                        "Decay rate of the slow EMA (betas[2]), after warmup."),
    [ADEMAMIX_HP_ALPHA] = PLUG_HP_FLOAT("alpha", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 2.0,
                                        "Weight of the slow EMA, after warmup."),
    [ADEMAMIX_HP_BETA3_WARMUP] = PLUG_HP_INT(
        "beta3_warmup", 0, 0.0, 1e15, 0.0,
        "Steps of half-life warmup of beta3 from beta1; 0: none (the reference's None)."),
    [ADEMAMIX_HP_ALPHA_WARMUP] = PLUG_HP_INT(
        "alpha_warmup", 0, 0.0, 1e15, 0.0,
        "Steps of linear warmup of alpha from 0; 0: none (the reference's None)."),
    [ADEMAMIX_HP_EPS] = TORCH_HP_EPS(1e-8, "Added to the denominator, after bias correction."),
    [ADEMAMIX_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT(
        "weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.0,
        "Decoupled weight decay: wd * p is added to the update, then scaled by lr."),
};

enum ademamix_slot_index {
    ADEMAMIX_SLOT_EXP_AVG_FAST,
    ADEMAMIX_SLOT_EXP_AVG_SLOW,
    ADEMAMIX_SLOT_EXP_AVG_SQ,
    ADEMAMIX_SLOT_COUNT
};

static const optimd_slot_def ademamix_slots[ADEMAMIX_SLOT_COUNT] = {
    [ADEMAMIX_SLOT_EXP_AVG_FAST] = TORCH_SLOT("exp_avg_fast", "Fast EMA of the gradient (beta1)."),
    [ADEMAMIX_SLOT_EXP_AVG_SLOW] = TORCH_SLOT("exp_avg_slow", "Slow EMA of the gradient (beta3)."),
    [ADEMAMIX_SLOT_EXP_AVG_SQ] = TORCH_SLOT("exp_avg_sq", "Second moment estimate (beta2)."),
};

typedef struct ademamix_job {
    void *param;
    const void *grad;
    void *m1, *m2, *nu;
    double use_fast;         /* beta1 != 0 */
    double beta1, one_minus_beta1;
    double beta2, one_minus_beta2;
    double beta3, one_minus_beta3;
    double bc1, bc2_sqrt, alpha, eps, wd, neg_lr;
} ademamix_job;

#define ADEMAMIX_DEFINE_KERNEL(name, T)                                      \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        const ademamix_job *job = user;                                      \
        T *restrict p = job->param;                                          \
        const T *restrict g = job->grad;                                     \
        T *restrict m1 = job->m1, *restrict m2 = job->m2, *restrict nu = job->nu; \
        const T use_fast = TORCH_FLAG(T, job->use_fast != 0.0);              \
        const T beta1 = (T)job->beta1, one_minus_beta1 = (T)job->one_minus_beta1; \
        const T beta2 = (T)job->beta2, one_minus_beta2 = (T)job->one_minus_beta2; \
        const T beta3 = (T)job->beta3, one_minus_beta3 = (T)job->one_minus_beta3; \
        const T bc1 = (T)job->bc1, bc2_sqrt = (T)job->bc2_sqrt;              \
        const T alpha = (T)job->alpha, eps = (T)job->eps, wd = (T)job->wd;   \
        const T neg_lr = (T)job->neg_lr;                                     \
        for (int64_t i = begin; i < end; i++) {                              \
            const T gi = g[i];                                               \
            const T m1i = TORCH_EMA(m1[i], gi, beta1, one_minus_beta1);      \
            const T m2i = TORCH_EMA(m2[i], gi, beta3, one_minus_beta3);      \
            const T nui = TORCH_EMA_SQ(nu[i], gi, beta2, one_minus_beta2);   \
            m1[i] = m1i;                                                     \
            m2[i] = m2i;                                                     \
            nu[i] = nui;                                                     \
            const T fast = TORCH_ON(use_fast) ? m1i : gi;                    \
            const T denom = TORCH_SQRT(nui) / bc2_sqrt + eps;                \
            const T update = (fast / bc1 + m2i * alpha) / denom;             \
            const T decayed = TORCH_FMA(wd, p[i], update);                   \
            p[i] = p[i] + decayed * neg_lr;                                  \
        }                                                                    \
    }

ADEMAMIX_DEFINE_KERNEL(ademamix_kernel_f32, float)
ADEMAMIX_DEFINE_KERNEL(ademamix_kernel_f64, double)

/* The reference's linear_warmup_scheduler(step, alpha_end, 0, warmup). */
static double ademamix_alpha(double t, double alpha_end, double warmup)
{
    if (warmup > 0.0 && t < warmup) {
        const double a = t / warmup;
        return (1.0 - a) * 0.0 + a * alpha_end;
    }
    return alpha_end;
}

/* The reference's linear_hl_warmup_scheduler(step, beta_end, beta_start,
 * warmup). */
static double ademamix_half_life(double beta)
{
    return log(0.5) / log(beta + 1e-8) - 1.0;
}

static double ademamix_beta3(double t, double beta_end, double beta_start, double warmup)
{
    if (warmup > 0.0 && t < warmup) {
        const double a = t / warmup;
        const double h = (1.0 - a) * ademamix_half_life(beta_start) +
                         a * ademamix_half_life(beta_end);
        return pow(0.5, 1.0 / (h + 1.0));
    }
    return beta_end;
}

static optimd_status ademamix_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = torch_check_step(
        host, args, ADEMAMIX_HP_COUNT, ademamix_slots, ADEMAMIX_SLOT_COUNT,
        TORCH_SLOT_BIT(ADEMAMIX_SLOT_EXP_AVG_FAST) | TORCH_SLOT_BIT(ADEMAMIX_SLOT_EXP_AVG_SLOW) |
            TORCH_SLOT_BIT(ADEMAMIX_SLOT_EXP_AVG_SQ));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double beta1 = hp[ADEMAMIX_HP_BETA1], beta2 = hp[ADEMAMIX_HP_BETA2];
    const double t = (double)args->step;
    const double beta3 =
        ademamix_beta3(t, hp[ADEMAMIX_HP_BETA3], beta1, hp[ADEMAMIX_HP_BETA3_WARMUP]);
    ademamix_job job = {
        .param = args->param->data,
        .grad = args->grad->data,
        .m1 = args->slots[ADEMAMIX_SLOT_EXP_AVG_FAST].data,
        .m2 = args->slots[ADEMAMIX_SLOT_EXP_AVG_SLOW].data,
        .nu = args->slots[ADEMAMIX_SLOT_EXP_AVG_SQ].data,
        .use_fast = beta1 != 0.0 ? 1.0 : 0.0,
        .beta1 = beta1,
        .one_minus_beta1 = 1.0 - beta1,
        .beta2 = beta2,
        .one_minus_beta2 = 1.0 - beta2,
        .beta3 = beta3,
        .one_minus_beta3 = 1.0 - beta3,
        /* The same double expressions as the reference's Python code. */
        .bc1 = 1.0 - pow(beta1, t),
        .bc2_sqrt = sqrt(1.0 - pow(beta2, t)),
        .alpha = ademamix_alpha(t, hp[ADEMAMIX_HP_ALPHA], hp[ADEMAMIX_HP_ALPHA_WARMUP]),
        .eps = hp[ADEMAMIX_HP_EPS],
        .wd = hp[ADEMAMIX_HP_WEIGHT_DECAY],
        .neg_lr = -hp[ADEMAMIX_HP_LR],
    };
    return torch_run_kernel(host, args,
                            (torch_kernel_pair){ademamix_kernel_f32, ademamix_kernel_f64}, &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("ademamix", "1.0.0",
                            "AdEMAMix (fast and slow gradient EMAs), apple/ml-ademamix order",
                            ademamix_hparams, ademamix_slots, NULL, ademamix_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
