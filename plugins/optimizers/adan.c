/*
 * Adan (Adaptive Nesterov Momentum; Xie et al. 2022, arXiv:2208.06677),
 * in the op order of sail-sg/Adan's single-tensor path (_single_tensor_adan).
 * The slot neg_pre_grad holds -g of the previous step (sail-sg's
 * "neg_pre_grad"); on a parameter's first step it is taken as -g, so the
 * gradient difference D is 0 there:
 *
 *   D  = neg_pre_grad + g                       (= g - g_prev; +0 at step 1)
 *   m  = m * b1 + (1 - b1) * g                  exp_avg        (mul_, fma)
 *   n  = n * b2 + (1 - b2) * D                  exp_avg_diff   (mul_, fma)
 *   w  = D * b2 + g                             (mul_, add_ -> fma(1, g, .))
 *   v  = v * b3 + ((1 - b3) * w) * w            exp_avg_sq     (mul_, addcmul_)
 *   denom = sqrt(v) / sqrt(1 - b3^t) + eps
 *   no_prox:  p = p * (1 - lr*wd);  p += (-lr/bc1 * m) / denom;
 *             p += (-lr*b2/bc2 * n) / denom                   (addcdiv_ x2)
 *   else:     the two addcdiv_, then p = p / (1 + lr*wd)
 *   neg_pre_grad = -g
 *
 * Left out: sail-sg's max_grad_norm (a pre-clip by the global gradient norm
 * over every parameter of the optimizer): a plugin sees one tensor per
 * call, so it cannot know that norm; the daemon's gradient clipping (issue
 * 4) is where it belongs. The step count is the host's per-parameter
 * counter (sail-sg keeps one per parameter group).
 */
#include "torch_ops.h"

enum adan_hparam_index {
    ADAN_HP_LR,
    ADAN_HP_BETA1,
    ADAN_HP_BETA2,
    ADAN_HP_BETA3,
    ADAN_HP_EPS,
    ADAN_HP_WEIGHT_DECAY,
    ADAN_HP_NO_PROX,
    ADAN_HP_COUNT
};

#define ADAN_HP_BETA(key_, default_, doc_)                                   \
    PLUG_HP_FLOAT((key_), OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, 0.0,  \
                  1.0, (default_), (doc_))

static const optimd_hparam_def adan_hparams[ADAN_HP_COUNT] = {
    [ADAN_HP_LR] = TORCH_HP_LR(1e-3),
    [ADAN_HP_BETA1] = ADAN_HP_BETA("beta1", 0.98, "Decay rate of the gradient EMA (betas[0])."),
    [ADAN_HP_BETA2] = ADAN_HP_BETA("beta2", 0.92,
                                   "Decay rate of the gradient-difference EMA (betas[1])."),
    [ADAN_HP_BETA3] = ADAN_HP_BETA("beta3", 0.99, "Decay rate of the second moment (betas[2])."),
    [ADAN_HP_EPS] = TORCH_HP_EPS(1e-8, "Added to the denominator, after bias correction."),
    [ADAN_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT(
        "weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.0,
        "Decoupled weight decay: proximal p /= 1 + lr*wd after the update, or see no_prox."),
    [ADAN_HP_NO_PROX] = PLUG_HP_BOOL("no_prox", 0, 0.0,
                                     "Decay as p *= 1 - lr*wd before the update instead."),
};

enum adan_slot_index {
    ADAN_SLOT_EXP_AVG,
    ADAN_SLOT_EXP_AVG_SQ,
    ADAN_SLOT_EXP_AVG_DIFF,
    ADAN_SLOT_NEG_PRE_GRAD,
    ADAN_SLOT_COUNT
};

static const optimd_slot_def adan_slots[ADAN_SLOT_COUNT] = {
    [ADAN_SLOT_EXP_AVG] = TORCH_SLOT("exp_avg", "EMA of the gradient (m)."),
    [ADAN_SLOT_EXP_AVG_SQ] = TORCH_SLOT("exp_avg_sq", "EMA of (g + beta2 * D)^2 (v)."),
    [ADAN_SLOT_EXP_AVG_DIFF] = TORCH_SLOT("exp_avg_diff", "EMA of the gradient difference D (n)."),
    [ADAN_SLOT_NEG_PRE_GRAD] = TORCH_SLOT("neg_pre_grad", "Minus the previous step's gradient."),
};

typedef struct adan_job {
    void *param;
    const void *grad;
    void *m, *v, *n, *neg_pre;
    double first;            /* 1 on the parameter's first step */
    double beta1, one_minus_beta1;
    double beta2, one_minus_beta2;
    double beta3, one_minus_beta3;
    double bc3_sqrt;
    double eps;
    double neg_step_size;    /* -lr / bc1 */
    double neg_step_size_diff; /* -(lr * beta2 / bc2) */
    /* no_prox: 1 - lr*wd and 1; proximal: 1 and 1 + lr*wd. Multiplying
     * or dividing by 1 is exact, so one branch-free expression serves
     * both (torch's own mul_(1 - lr*0) is such a multiplication). */
    double decay_mul;
    double decay_div;
} adan_job;

/* Six streams: GCC gives up on restrict-qualified locals here (it would
 * need more than 10 run-time alias checks), so the loop lives in an
 * always-inlined function whose restrict parameters it does honour. */
#define ADAN_DEFINE_KERNEL(name, T)                                          \
    static inline __attribute__((always_inline)) void name##_loop(           \
        const adan_job *job, int64_t begin, int64_t end, T *restrict p,      \
        const T *restrict g, T *restrict m, T *restrict v, T *restrict n,    \
        T *restrict neg_pre)                                                 \
    {                                                                        \
        const T first = TORCH_FLAG(T, job->first != 0.0);                    \
        const T beta1 = (T)job->beta1, one_minus_beta1 = (T)job->one_minus_beta1; \
        const T beta2 = (T)job->beta2, one_minus_beta2 = (T)job->one_minus_beta2; \
        const T beta3 = (T)job->beta3, one_minus_beta3 = (T)job->one_minus_beta3; \
        const T bc3_sqrt = (T)job->bc3_sqrt, eps = (T)job->eps;              \
        const T neg_step_size = (T)job->neg_step_size;                       \
        const T neg_step_size_diff = (T)job->neg_step_size_diff;             \
        const T decay_mul = (T)job->decay_mul, decay_div = (T)job->decay_div; \
        for (int64_t i = begin; i < end; i++) {                              \
            const T gi = g[i], neg_pre_i = neg_pre[i];                       \
            const T prev = TORCH_ON(first) ? -gi : neg_pre_i;                \
            const T diff = prev + gi;                                        \
            const T mi = TORCH_EMA(m[i], gi, beta1, one_minus_beta1);        \
            const T ni = TORCH_EMA(n[i], diff, beta2, one_minus_beta2);      \
            const T w = diff * beta2 + gi;                                   \
            const T vi = TORCH_EMA_SQ(v[i], w, beta3, one_minus_beta3);      \
            m[i] = mi;                                                       \
            n[i] = ni;                                                       \
            v[i] = vi;                                                       \
            neg_pre[i] = (T)0 - gi; /* = fma(-1, g, +0): zero_().add_(g, -1) */ \
            const T denom = TORCH_SQRT(vi) / bc3_sqrt + eps;                 \
            T q = p[i] * decay_mul;                                          \
            q = TORCH_ADDCDIV(q, neg_step_size, mi, denom);                  \
            q = TORCH_ADDCDIV(q, neg_step_size_diff, ni, denom);             \
            p[i] = q / decay_div;                                            \
        }                                                                    \
    }                                                                        \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        const adan_job *job = user;                                          \
        name##_loop(job, begin, end, job->param, job->grad, job->m, job->v,  \
                    job->n, job->neg_pre);                                   \
    }

ADAN_DEFINE_KERNEL(adan_kernel_f32, float)
ADAN_DEFINE_KERNEL(adan_kernel_f64, double)

static optimd_status adan_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = torch_check_step(
        host, args, ADAN_HP_COUNT, adan_slots, ADAN_SLOT_COUNT,
        TORCH_SLOT_BIT(ADAN_SLOT_EXP_AVG) | TORCH_SLOT_BIT(ADAN_SLOT_EXP_AVG_SQ) |
            TORCH_SLOT_BIT(ADAN_SLOT_EXP_AVG_DIFF) | TORCH_SLOT_BIT(ADAN_SLOT_NEG_PRE_GRAD));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double lr = hp[ADAN_HP_LR], wd = hp[ADAN_HP_WEIGHT_DECAY];
    const double beta1 = hp[ADAN_HP_BETA1], beta2 = hp[ADAN_HP_BETA2], beta3 = hp[ADAN_HP_BETA3];
    const double t = (double)args->step;
    const bool no_prox = hp[ADAN_HP_NO_PROX] != 0.0;
    /* The same double expressions as sail-sg's Python code. */
    const double bc1 = 1.0 - pow(beta1, t);
    const double bc2 = 1.0 - pow(beta2, t);
    const double bc3 = 1.0 - pow(beta3, t);
    adan_job job = {
        .param = args->param->data,
        .grad = args->grad->data,
        .m = args->slots[ADAN_SLOT_EXP_AVG].data,
        .v = args->slots[ADAN_SLOT_EXP_AVG_SQ].data,
        .n = args->slots[ADAN_SLOT_EXP_AVG_DIFF].data,
        .neg_pre = args->slots[ADAN_SLOT_NEG_PRE_GRAD].data,
        .first = args->step == 1 ? 1.0 : 0.0,
        .beta1 = beta1,
        .one_minus_beta1 = 1.0 - beta1,
        .beta2 = beta2,
        .one_minus_beta2 = 1.0 - beta2,
        .beta3 = beta3,
        .one_minus_beta3 = 1.0 - beta3,
        .bc3_sqrt = sqrt(bc3),
        .eps = hp[ADAN_HP_EPS],
        .neg_step_size = -(lr / bc1),
        .neg_step_size_diff = -(lr * beta2 / bc2),
        .decay_mul = no_prox ? 1.0 - lr * wd : 1.0,
        .decay_div = no_prox ? 1.0 : 1.0 + lr * wd,
    };
    return torch_run_kernel(host, args, (torch_kernel_pair){adan_kernel_f32, adan_kernel_f64},
                            &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("adan", "1.0.0",
                            "Adan (adaptive Nesterov momentum), sail-sg/Adan single-tensor order",
                            adan_hparams, adan_slots, NULL, adan_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
