/*
 * LARS (You, Gitman, Ginsburg 2017, arXiv:1708.03888) in timm's `Lars`
 * form: the gradient plus weight decay is scaled by a per-tensor trust
 * ratio, then torch's SGD (momentum, dampening, Nesterov) runs on it, with
 * lr applied after the momentum buffer:
 *
 *   if wd != 0 or always_adapt:
 *       r = trust_coeff * |p| / (|g| + wd * |p| + eps)
 *           (2-norms of the whole tensor; r = 1 if |p| or |g| is 0)
 *       r = min(r / lr, 1) with trust_clip (LARC; r = 1 when lr is 0)
 *       d = (g + wd * p) * r
 *   else d = g
 *   if momentum != 0:
 *       b = d on the parameter's first step, else b = momentum * b + (1 - dampening) * d
 *       d = d + momentum * b with nesterov, else d = b
 *   p = p - lr * d
 *
 * The paper's own form (v = m v + lr * local_lr * (g + wd p), lr inside the
 * buffer) and MoCo v3's (matrices only) are not this one. The norms take
 * one read-only pass (in double, in fixed blocks, so the result does not
 * depend on how the work is split), the update a second one.
 *
 * Known difference, as for sgd: timm creates the momentum buffer on the
 * first step in which momentum is nonzero; here it is the parameter's
 * first step, so a session that raises momentum from 0 later starts from a
 * zero buffer. State: momentum_buffer (timm's key).
 */
#include "beyond_support.h"

enum lars_hparam_index {
    LARS_HP_LR,
    LARS_HP_MOMENTUM,
    LARS_HP_DAMPENING,
    LARS_HP_WEIGHT_DECAY,
    LARS_HP_NESTEROV,
    LARS_HP_TRUST_COEFF,
    LARS_HP_EPS,
    LARS_HP_TRUST_CLIP,
    LARS_HP_ALWAYS_ADAPT,
    LARS_HP_COUNT
};

static const optimd_hparam_def lars_hparams[LARS_HP_COUNT] = {
    [LARS_HP_LR] = TORCH_HP_LR(1.0),
    [LARS_HP_MOMENTUM] = PLUG_HP_FLOAT("momentum", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.0,
                                       "Momentum factor; 0 disables momentum."),
    [LARS_HP_DAMPENING] = PLUG_HP_FLOAT("dampening", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.0,
                                        "Dampening of the gradient's share in the momentum buffer."),
    [LARS_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT(
        "weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.0,
        "L2 penalty added to the gradient before the trust ratio scales it."),
    [LARS_HP_NESTEROV] = PLUG_HP_BOOL("nesterov", 0, 0.0,
                                      "Nesterov momentum (needs momentum > 0 and dampening 0)."),
    [LARS_HP_TRUST_COEFF] = PLUG_HP_FLOAT("trust_coeff", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE,
                                          0.001, "Trust coefficient eta of the trust ratio."),
    [LARS_HP_EPS] = TORCH_HP_EPS(1e-8, "Added to the trust ratio's denominator."),
    [LARS_HP_TRUST_CLIP] = PLUG_HP_BOOL("trust_clip", 0, 0.0,
                                        "Clip the trust ratio divided by lr at 1 (LARC)."),
    [LARS_HP_ALWAYS_ADAPT] = PLUG_HP_BOOL(
        "always_adapt", 0, 0.0,
        "Apply the trust ratio also when weight_decay is 0 (timm skips it then)."),
};

enum lars_slot_index { LARS_SLOT_MOMENTUM_BUFFER, LARS_SLOT_COUNT };

static const optimd_slot_def lars_slots[LARS_SLOT_COUNT] = {
    [LARS_SLOT_MOMENTUM_BUFFER] = TORCH_SLOT("momentum_buffer",
                                             "Momentum buffer (used when momentum != 0)."),
};

static optimd_status lars_check_hparams(const optimd_host *host, const double *hp, uint32_t n)
{
    optimd_status st = plug_check_hparam_values(host, "lars", lars_hparams,
                                                PLUG_ARRAY_LEN(lars_hparams), hp, n);
    if (st != OPTIMD_OK) return st;
    if (hp[LARS_HP_NESTEROV] != 0.0 &&
        (hp[LARS_HP_MOMENTUM] <= 0.0 || hp[LARS_HP_DAMPENING] != 0.0))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "nesterov requires momentum > 0 and dampening == 0 "
                         "(got momentum=%g, dampening=%g)",
                         hp[LARS_HP_MOMENTUM], hp[LARS_HP_DAMPENING]);
    return OPTIMD_OK;
}

typedef struct lars_job {
    void *param;
    const void *grad;
    void *buf;
    double l2;               /* wd when adapting, else 0 */
    double ratio;            /* trust ratio, 1 when not adapting */
    double momentum, one_minus_dampening;
    double first, use_momentum, nesterov;
    double neg_lr;
} lars_job;

#define LARS_DEFINE_KERNELS(suffix, T)                                       \
    PLUG_KERNEL static void lars_norms_##suffix(void *ctx, int64_t begin, int64_t end, \
                                                double *acc)                 \
    {                                                                        \
        const lars_job *job = ctx;                                           \
        const T *restrict p = job->param, *restrict g = job->grad;           \
        double pp = 0.0, gg = 0.0;                                           \
        for (int64_t i = begin; i < end; i++) {                              \
            pp += (double)p[i] * (double)p[i];                               \
            gg += (double)g[i] * (double)g[i];                               \
        }                                                                    \
        acc[0] += pp;                                                        \
        acc[1] += gg;                                                        \
    }                                                                        \
    static inline __attribute__((always_inline)) void lars_loop_##suffix(    \
        const lars_job *job, int64_t begin, int64_t end, T *restrict p,      \
        const T *restrict g, T *restrict buf)                                \
    {                                                                        \
        const T l2 = (T)job->l2, ratio = (T)job->ratio;                      \
        const T momentum = (T)job->momentum;                                 \
        const T one_minus_dampening = (T)job->one_minus_dampening;           \
        const T first = TORCH_FLAG(T, job->first != 0.0);                    \
        const T nesterov = TORCH_FLAG(T, job->nesterov != 0.0);              \
        const T neg_lr = (T)job->neg_lr;                                     \
        if (job->use_momentum == 0.0) {                                      \
            for (int64_t i = begin; i < end; i++)                            \
                p[i] = TORCH_FMA(neg_lr, TORCH_FMA(l2, p[i], g[i]) * ratio, p[i]); \
            return;                                                          \
        }                                                                    \
        for (int64_t i = begin; i < end; i++) {                              \
            const T d = TORCH_FMA(l2, p[i], g[i]) * ratio;                   \
            const T b = TORCH_ON(first) ? d                                  \
                                        : TORCH_FMA(one_minus_dampening, d, buf[i] * momentum); \
            buf[i] = b;                                                      \
            const T step = TORCH_ON(nesterov) ? TORCH_FMA(momentum, b, d) : b; \
            p[i] = TORCH_FMA(neg_lr, step, p[i]);                            \
        }                                                                    \
    }                                                                        \
    PLUG_KERNEL static void lars_apply_##suffix(void *ctx, int64_t begin, int64_t end) \
    {                                                                        \
        const lars_job *job = ctx;                                           \
        lars_loop_##suffix(job, begin, end, job->param, job->grad, job->buf); \
    }

LARS_DEFINE_KERNELS(f32, float)
LARS_DEFINE_KERNELS(f64, double)

static optimd_status lars_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = beyond_check_step(host, args, LARS_HP_COUNT, lars_slots, LARS_SLOT_COUNT,
                                         TORCH_SLOT_BIT(LARS_SLOT_MOMENTUM_BUFFER));
    if (st != OPTIMD_OK) return st;
    st = lars_check_hparams(host, args->hparams, args->n_hparams);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double lr = hp[LARS_HP_LR], wd = hp[LARS_HP_WEIGHT_DECAY];
    const bool f32 = args->param->dtype == OPTIMD_DTYPE_F32;
    const int64_t n = args->param->numel;
    lars_job job = {
        .param = args->param->data,
        .grad = args->grad->data,
        .buf = args->slots[LARS_SLOT_MOMENTUM_BUFFER].data,
        .l2 = 0.0,
        .ratio = 1.0,
        .momentum = hp[LARS_HP_MOMENTUM],
        .one_minus_dampening = 1.0 - hp[LARS_HP_DAMPENING],
        .first = args->step == 1 ? 1.0 : 0.0,
        .use_momentum = hp[LARS_HP_MOMENTUM] != 0.0 ? 1.0 : 0.0,
        .nesterov = hp[LARS_HP_NESTEROV],
        .neg_lr = -lr,
    };
    if (wd != 0.0 || hp[LARS_HP_ALWAYS_ADAPT] != 0.0) {
        double sums[2];
        st = beyond_sum(host, n, beyond_block(1), 1, 2, f32 ? lars_norms_f32 : lars_norms_f64,
                        &job, sums);
        if (st != OPTIMD_OK) return st;
        const double w_norm = sqrt(sums[0]), g_norm = sqrt(sums[1]);
        double ratio = 1.0;
        if (w_norm > 0.0 && g_norm > 0.0)
            ratio = hp[LARS_HP_TRUST_COEFF] * w_norm / (g_norm + w_norm * wd + hp[LARS_HP_EPS]);
        if (hp[LARS_HP_TRUST_CLIP] != 0.0) ratio = lr > 0.0 ? fmin(ratio / lr, 1.0) : 1.0;
        job.l2 = wd;
        job.ratio = ratio;
    }
    return plug_for_each_range(host, n, f32 ? lars_apply_f32 : lars_apply_f64, &job);
}

PLUG_DEFINE_OPTIMIZER("lars", "1.0.0",
                      "LARS (layer-wise trust ratio, then SGD with momentum), timm's Lars form",
                      lars_hparams, lars_slots, lars_check_hparams, lars_step);
