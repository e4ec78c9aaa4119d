/*
 * LAMB (You et al. 2019, arXiv:1904.00962) in timm's `Lamb` form (NVLAMB:
 * Adam moments with bias correction, then a per-tensor trust ratio):
 *
 *   m = b1 * m + b3 * g            b3 = 1 - b1 with grad_averaging, else 1
 *   v = b2 * v + (1 - b2) * g^2
 *   u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) + wd * p
 *                                  bc = 1 - b^t, or 1 without bias_correction
 *   if wd != 0 or always_adapt:
 *       r = |p| / |u|  (2-norms of the whole tensor; 1 if either is 0)
 *       r = min(r, 1) with trust_clip (LAMBC)
 *       u = r * u
 *   p = p - lr * u
 *
 * The two norms need every new u before any p changes, so an adapted step
 * is two passes: one updates m and v and sums p^2 and u^2 (in double, in
 * fixed blocks: the result does not depend on how the work is split), the
 * other recomputes u from the stored m, v and the unchanged p, and applies
 * it. Without adaptation it is one pass.
 *
 * Left out: timm's max_grad_norm, a pre-clip of every gradient by the norm
 * over all parameters of the optimizer. A plugin sees one tensor per call
 * and cannot know that norm; the daemon's clipping by global norm is where
 * it belongs. The step count is per parameter (timm: per group).
 * State: exp_avg (m), exp_avg_sq (v), as timm's state keys.
 */
#include "beyond_support.h"

enum lamb_hparam_index {
    LAMB_HP_LR,
    LAMB_HP_BETA1,
    LAMB_HP_BETA2,
    LAMB_HP_EPS,
    LAMB_HP_WEIGHT_DECAY,
    LAMB_HP_BIAS_CORRECTION,
    LAMB_HP_GRAD_AVERAGING,
    LAMB_HP_TRUST_CLIP,
    LAMB_HP_ALWAYS_ADAPT,
    LAMB_HP_COUNT
};

static const optimd_hparam_def lamb_hparams[LAMB_HP_COUNT] = {
    [LAMB_HP_LR] = TORCH_HP_LR(1e-3),
    [LAMB_HP_BETA1] = TORCH_HP_BETA1,
    [LAMB_HP_BETA2] = TORCH_HP_BETA2,
    [LAMB_HP_EPS] = TORCH_HP_EPS(1e-6, "Added to the bias-corrected sqrt(v)."),
    [LAMB_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT(
        "weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.01,
        "Decoupled weight decay: wd * p is added to the update before the trust ratio."),
    [LAMB_HP_BIAS_CORRECTION] = PLUG_HP_BOOL("bias_correction", 0, 1.0,
                                             "Divide the moments by 1 - beta^t."),
    [LAMB_HP_GRAD_AVERAGING] = PLUG_HP_BOOL(
        "grad_averaging", 0, 1.0,
        "Weight g by 1 - beta1 in the first moment (false: by 1)."),
    [LAMB_HP_TRUST_CLIP] = PLUG_HP_BOOL("trust_clip", 0, 0.0,
                                        "Clip the trust ratio at 1 (LAMBC)."),
    [LAMB_HP_ALWAYS_ADAPT] = PLUG_HP_BOOL(
        "always_adapt", 0, 0.0,
        "Apply the trust ratio also when weight_decay is 0 (timm skips it then)."),
};

enum lamb_slot_index { LAMB_SLOT_EXP_AVG, LAMB_SLOT_EXP_AVG_SQ, LAMB_SLOT_COUNT };

static const optimd_slot_def lamb_slots[LAMB_SLOT_COUNT] = {
    [LAMB_SLOT_EXP_AVG] = TORCH_SLOT("exp_avg", "First moment (EMA of the gradient)."),
    [LAMB_SLOT_EXP_AVG_SQ] = TORCH_SLOT("exp_avg_sq", "Second moment (EMA of the squared gradient)."),
};

PLUG_DEFINE_HPARAM_CHECK(lamb_check_hparams, "lamb", lamb_hparams)

typedef struct lamb_job {
    void *param;
    const void *grad;
    void *m, *v;
    double beta1, beta3, beta2, one_minus_beta2;
    double bc1, bc2_sqrt, eps, wd;
    double neg_step;         /* -lr * trust ratio */
} lamb_job;

/* u of element i, from the new moments mi, vi and the parameter pi. */
#define LAMB_U(mi, vi, pi)                                                   \
    TORCH_FMA(wd, (pi), ((mi) / bc1) / (TORCH_SQRT(vi) / bc2_sqrt + eps))

#define LAMB_LOCALS(T)                                                       \
    const lamb_job *job = ctx;                                               \
    T *restrict p = job->param;                                              \
    const T *restrict g = job->grad;                                         \
    T *restrict m = job->m, *restrict v = job->v;                            \
    const T beta1 = (T)job->beta1, beta3 = (T)job->beta3;                    \
    const T beta2 = (T)job->beta2, one_minus_beta2 = (T)job->one_minus_beta2; \
    const T bc1 = (T)job->bc1, bc2_sqrt = (T)job->bc2_sqrt;                  \
    const T eps = (T)job->eps, wd = (T)job->wd;                              \
    (void)p; (void)g; (void)m; (void)v; (void)beta1; (void)beta3;            \
    (void)beta2; (void)one_minus_beta2

#define LAMB_DEFINE_KERNELS(suffix, T)                                       \
    /* Moments, then p^2 and u^2 summed: the first pass of an adapted step. */ \
    PLUG_KERNEL static void lamb_norms_##suffix(void *ctx, int64_t begin, int64_t end, \
                                                double *acc)                 \
    {                                                                        \
        LAMB_LOCALS(T);                                                      \
        double pp = 0.0, uu = 0.0;                                           \
        for (int64_t i = begin; i < end; i++) {                              \
            const T mi = TORCH_FMA(beta3, g[i], m[i] * beta1);               \
            const T vi = TORCH_EMA_SQ(v[i], g[i], beta2, one_minus_beta2);   \
            m[i] = mi;                                                       \
            v[i] = vi;                                                       \
            const double u = (double)LAMB_U(mi, vi, p[i]);                   \
            pp += (double)p[i] * (double)p[i];                               \
            uu += u * u;                                                     \
        }                                                                    \
        acc[0] += pp;                                                        \
        acc[1] += uu;                                                        \
    }                                                                        \
    /* p -= lr * r * u from the stored moments: the second pass. */          \
    PLUG_KERNEL static void lamb_apply_##suffix(void *ctx, int64_t begin, int64_t end) \
    {                                                                        \
        LAMB_LOCALS(T);                                                      \
        const T neg_step = (T)job->neg_step;                                 \
        for (int64_t i = begin; i < end; i++)                                \
            p[i] = TORCH_FMA(neg_step, LAMB_U(m[i], v[i], p[i]), p[i]);      \
    }                                                                        \
    /* Moments and update in one pass (no trust ratio). */                   \
    PLUG_KERNEL static void lamb_fused_##suffix(void *ctx, int64_t begin, int64_t end) \
    {                                                                        \
        LAMB_LOCALS(T);                                                      \
        const T neg_step = (T)job->neg_step;                                 \
        for (int64_t i = begin; i < end; i++) {                              \
            const T mi = TORCH_FMA(beta3, g[i], m[i] * beta1);               \
            const T vi = TORCH_EMA_SQ(v[i], g[i], beta2, one_minus_beta2);   \
            m[i] = mi;                                                       \
            v[i] = vi;                                                       \
            p[i] = TORCH_FMA(neg_step, LAMB_U(mi, vi, p[i]), p[i]);          \
        }                                                                    \
    }

LAMB_DEFINE_KERNELS(f32, float)
LAMB_DEFINE_KERNELS(f64, double)

static optimd_status lamb_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = beyond_check_step(host, args, LAMB_HP_COUNT, lamb_slots, LAMB_SLOT_COUNT,
                                         TORCH_SLOT_BIT(LAMB_SLOT_EXP_AVG) |
                                             TORCH_SLOT_BIT(LAMB_SLOT_EXP_AVG_SQ));
    if (st != OPTIMD_OK) return st;
    st = lamb_check_hparams(host, args->hparams, args->n_hparams);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double t = (double)args->step;
    const double beta1 = hp[LAMB_HP_BETA1], beta2 = hp[LAMB_HP_BETA2];
    const bool bias_correction = hp[LAMB_HP_BIAS_CORRECTION] != 0.0;
    const double wd = hp[LAMB_HP_WEIGHT_DECAY];
    lamb_job job = {
        .param = args->param->data,
        .grad = args->grad->data,
        .m = args->slots[LAMB_SLOT_EXP_AVG].data,
        .v = args->slots[LAMB_SLOT_EXP_AVG_SQ].data,
        .beta1 = beta1,
        .beta3 = hp[LAMB_HP_GRAD_AVERAGING] != 0.0 ? 1.0 - beta1 : 1.0,
        .beta2 = beta2,
        .one_minus_beta2 = 1.0 - beta2,
        .bc1 = bias_correction ? 1.0 - pow(beta1, t) : 1.0,
        .bc2_sqrt = bias_correction ? sqrt(1.0 - pow(beta2, t)) : 1.0,
        .eps = hp[LAMB_HP_EPS],
        .wd = wd,
        .neg_step = -hp[LAMB_HP_LR],
    };
    const bool f32 = args->param->dtype == OPTIMD_DTYPE_F32;
    const int64_t n = args->param->numel;
    if (wd == 0.0 && hp[LAMB_HP_ALWAYS_ADAPT] == 0.0)
        return plug_for_each_range(host, n, f32 ? lamb_fused_f32 : lamb_fused_f64, &job);

    double sums[2];
    st = beyond_sum(host, n, beyond_block(1), 1, 2, f32 ? lamb_norms_f32 : lamb_norms_f64, &job,
                    sums);
    if (st != OPTIMD_OK) return st;
    const double w_norm = sqrt(sums[0]), u_norm = sqrt(sums[1]);
    double ratio = w_norm > 0.0 && u_norm > 0.0 ? w_norm / u_norm : 1.0;
    if (hp[LAMB_HP_TRUST_CLIP] != 0.0 && ratio > 1.0) ratio = 1.0;
    job.neg_step = -hp[LAMB_HP_LR] * ratio;
    return plug_for_each_range(host, n, f32 ? lamb_apply_f32 : lamb_apply_f64, &job);
}

PLUG_DEFINE_OPTIMIZER("lamb", "1.0.0",
                      "LAMB (layer-wise adaptive Adam, NVLAMB form of timm's Lamb)", lamb_hparams,
                      lamb_slots, lamb_check_hparams, lamb_step);
