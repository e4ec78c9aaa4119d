/*
 * The Adam update shared by the `adam` and `adamw` plugins: torch.optim.Adam
 * and torch.optim.AdamW of torch 1.13.1, single-tensor (foreach=False,
 * capturable=False) path, reproduced bit for bit on CPU.
 *
 * Both plugins declare the same hyperparameters in the same order (only
 * weight_decay's default and meaning differ), so this header owns the
 * index enum, the slot table and the kernel; each plugin file owns its
 * hyperparameter table and descriptor.
 *
 * torch's per-element rule (t = the parameter's step count, scalars in
 * double and rounded to the tensor's dtype where torch passes them to a
 * kernel; "fma" is one rounding, everything else rounds per operation):
 *
 *   g = maximize ? -g : g
 *   AdamW:                    p = p * (1 - lr*wd)          (even when wd == 0)
 *   Adam, if wd != 0:         g = g + wd * p               (fma)
 *   m = m * beta1 + (1 - beta1) * g                        (mul, fma)
 *   v = fma((1 - beta2) * g, g, v * beta2)                 (addcmul_)
 *   amsgrad:                  vmax = max(vmax, v); use vmax for v below
 *   denom = sqrt(v) / sqrt(1 - beta2^t) + eps
 *   p = p + ((-lr / (1 - beta1^t)) * m) / denom            (addcdiv_, no fma)
 */
#ifndef OPTIMD_PLUGINS_ADAM_KERNEL_H
#define OPTIMD_PLUGINS_ADAM_KERNEL_H

#include "../plugin_support.h"

#include <math.h>

/* Declaration order of both plugins' hyperparameters (torch's argument
 * order, with `betas` split into beta1 and beta2). */
enum adam_hparam_index {
    ADAM_HP_LR,
    ADAM_HP_BETA1,
    ADAM_HP_BETA2,
    ADAM_HP_EPS,
    ADAM_HP_WEIGHT_DECAY,
    ADAM_HP_AMSGRAD,
    ADAM_HP_MAXIMIZE,
    ADAM_HP_COUNT
};

/* Entries of the hyperparameter tables that adam and adamw share. */
#define ADAM_HP_DEF_LR                                                       \
    PLUG_HP_FLOAT("lr", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 1e-3,         \
                  "Learning rate.")
#define ADAM_HP_DEF_BETA1                                                    \
    PLUG_HP_FLOAT("beta1", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, 0.0, \
                  1.0, 0.9, "Decay rate of the first moment (torch betas[0]).")
#define ADAM_HP_DEF_BETA2                                                    \
    PLUG_HP_FLOAT("beta2", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, 0.0, \
                  1.0, 0.999,                                                \
                  "Decay rate of the second moment (torch betas[1]).")
#define ADAM_HP_DEF_EPS                                                      \
    PLUG_HP_FLOAT("eps", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 1e-8,        \
                  "Added to the denominator, after bias correction.")
#define ADAM_HP_DEF_AMSGRAD                                                  \
    PLUG_HP_BOOL("amsgrad", 0, 0.0,                                          \
                 "Use the maximum of past second moments (AMSGrad).")
#define ADAM_HP_DEF_MAXIMIZE                                                 \
    PLUG_HP_BOOL("maximize", 0, 0.0,                                         \
                 "Maximize the objective instead of minimizing it.")

enum adam_slot_index {
    ADAM_SLOT_EXP_AVG,
    ADAM_SLOT_EXP_AVG_SQ,
    ADAM_SLOT_MAX_EXP_AVG_SQ,
    ADAM_SLOT_COUNT
};

/* Keys equal torch's state_dict keys, so snapshots map one to one. */
static const optimd_slot_def adam_slots[ADAM_SLOT_COUNT] = {
    [ADAM_SLOT_EXP_AVG] = {
        .struct_size = sizeof(optimd_slot_def),
        .shape = OPTIMD_SLOT_LIKE_PARAM,
        .dtype = 0,
        .key = "exp_avg",
        .doc = "First moment estimate (running mean of the gradient).",
        .enabled_by = NULL,
    },
    [ADAM_SLOT_EXP_AVG_SQ] = {
        .struct_size = sizeof(optimd_slot_def),
        .shape = OPTIMD_SLOT_LIKE_PARAM,
        .dtype = 0,
        .key = "exp_avg_sq",
        .doc = "Second moment estimate (running mean of the squared gradient).",
        .enabled_by = NULL,
    },
    [ADAM_SLOT_MAX_EXP_AVG_SQ] = {
        .struct_size = sizeof(optimd_slot_def),
        .shape = OPTIMD_SLOT_LIKE_PARAM,
        .dtype = 0,
        .key = "max_exp_avg_sq",
        .doc = "Running maximum of exp_avg_sq (AMSGrad only).",
        .enabled_by = "amsgrad",
    },
};

/* torch keeps Adam's step count in a float32 tensor, which stops growing
 * at 2^24 (2^24 + 1 rounds back to 2^24). Using the same saturated count
 * keeps the bias corrections identical for arbitrarily long sessions. */
static inline double adam_torch_step_count(uint64_t step)
{
    const uint64_t float32_integer_limit = (uint64_t)1 << 24;
    return (double)(step < float32_integer_limit ? step : float32_integer_limit);
}

/* Everything one chunk of the update needs; shared read-only by the worker
 * threads, each of which writes only its own [begin, end). */
typedef struct adam_job {
    void *param;
    const void *grad;
    void *exp_avg;
    void *exp_avg_sq;
    void *max_exp_avg_sq;    /* NULL unless amsgrad */
    /* Scalars in double, as torch computes them; the f32 kernel rounds
     * each to float once, as torch converts a Python float argument. */
    double grad_sign;        /* -1 with maximize; negating is exact */
    double param_decay;      /* AdamW: 1 - lr*wd */
    double l2_weight_decay;  /* Adam: wd */
    double beta1, one_minus_beta1;
    double beta2, one_minus_beta2;
    double bias_correction2_sqrt;
    double eps;
    double neg_step_size;    /* -lr / (1 - beta1^t) */
    bool decoupled;          /* AdamW */
    bool use_l2;             /* Adam with wd != 0 */
    bool amsgrad;
} adam_job;

/* torch.maximum: NaN in either operand gives NaN (fmax would drop it). */
#define ADAM_TORCH_MAXIMUM(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))

/* The kernels differ only in the element type, in which fma()/sqrt() they
 * call and in AMSGRAD (a constant, so each loop body is branch-free and
 * vectorises), so one body is instantiated for all four. */
#define ADAM_DEFINE_KERNEL(name, T, FMA, SQRT, AMSGRAD)                      \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        const adam_job *job = user;                                          \
        T *restrict p = job->param;                                          \
        const T *restrict g = job->grad;                                     \
        T *restrict m = job->exp_avg;                                        \
        T *restrict v = job->exp_avg_sq;                                     \
        T *restrict vmax = job->max_exp_avg_sq;                              \
        const T grad_sign = (T)job->grad_sign;                               \
        const T param_decay = (T)job->param_decay;                           \
        const T l2_weight_decay = (T)job->l2_weight_decay;                   \
        const T beta1 = (T)job->beta1;                                       \
        const T one_minus_beta1 = (T)job->one_minus_beta1;                   \
        const T beta2 = (T)job->beta2;                                       \
        const T one_minus_beta2 = (T)job->one_minus_beta2;                   \
        const T bias_correction2_sqrt = (T)job->bias_correction2_sqrt;       \
        const T eps = (T)job->eps;                                           \
        const T neg_step_size = (T)job->neg_step_size;                       \
        const bool decoupled = job->decoupled;                               \
        const bool use_l2 = job->use_l2;                                     \
        for (int64_t i = begin; i < end; i++) {                              \
            T grad = g[i] * grad_sign;                                       \
            T param = p[i];                                                  \
            /* Both candidates, then a select: no branch in the loop. */     \
            const T decayed = param * param_decay;                           \
            const T with_l2 = FMA(l2_weight_decay, param, grad);             \
            param = decoupled ? decayed : param;                             \
            grad = use_l2 ? with_l2 : grad;                                  \
            T mi = FMA(one_minus_beta1, grad, m[i] * beta1);                 \
            T vi = FMA(one_minus_beta2 * grad, grad, v[i] * beta2);          \
            m[i] = mi;                                                       \
            v[i] = vi;                                                       \
            if (AMSGRAD) {                                                   \
                vi = ADAM_TORCH_MAXIMUM(vmax[i], vi);                        \
                vmax[i] = vi;                                                \
            }                                                                \
            T denom = SQRT(vi) / bias_correction2_sqrt + eps;                \
            p[i] = param + (neg_step_size * mi) / denom;                     \
        }                                                                    \
    }

ADAM_DEFINE_KERNEL(adam_kernel_f32, float, fmaf, sqrtf, false)
ADAM_DEFINE_KERNEL(adam_kernel_f64, double, fma, sqrt, false)
ADAM_DEFINE_KERNEL(amsgrad_kernel_f32, float, fmaf, sqrtf, true)
ADAM_DEFINE_KERNEL(amsgrad_kernel_f64, double, fma, sqrt, true)

/* One Adam (decoupled == false) or AdamW (decoupled == true) step on one
 * parameter. The hyperparameters were validated by the host against the
 * plugin's declarations. */
static inline optimd_status adam_step(const optimd_host *host,
                                      const optimd_step_args *args,
                                      bool decoupled)
{
    optimd_status st = plug_check_step_args(host, args, ADAM_HP_COUNT,
                                            ADAM_SLOT_COUNT);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double lr = hp[ADAM_HP_LR];
    const double beta1 = hp[ADAM_HP_BETA1];
    const double beta2 = hp[ADAM_HP_BETA2];
    const double weight_decay = hp[ADAM_HP_WEIGHT_DECAY];
    const double t = adam_torch_step_count(args->step);
    /* Same double-precision expressions as torch's Python code. */
    const double bias_correction1 = 1.0 - pow(beta1, t);
    const double bias_correction2 = 1.0 - pow(beta2, t);
    adam_job job = {
        .param = args->param->data,
        .grad = args->grad->data,
        .exp_avg = args->slots[ADAM_SLOT_EXP_AVG].data,
        .exp_avg_sq = args->slots[ADAM_SLOT_EXP_AVG_SQ].data,
        .max_exp_avg_sq = args->slots[ADAM_SLOT_MAX_EXP_AVG_SQ].data,
        .grad_sign = hp[ADAM_HP_MAXIMIZE] != 0.0 ? -1.0 : 1.0,
        .param_decay = 1.0 - lr * weight_decay,
        .l2_weight_decay = weight_decay,
        .beta1 = beta1,
        .one_minus_beta1 = 1.0 - beta1,
        .beta2 = beta2,
        .one_minus_beta2 = 1.0 - beta2,
        .bias_correction2_sqrt = sqrt(bias_correction2),
        .eps = hp[ADAM_HP_EPS],
        .neg_step_size = -(lr / bias_correction1),
        .decoupled = decoupled,
        /* torch skips the L2 term when wd == 0 (matters for inf/NaN). */
        .use_l2 = !decoupled && weight_decay != 0.0,
        .amsgrad = hp[ADAM_HP_AMSGRAD] != 0.0,
    };
    if (args->param->numel > 0 &&
        (job.exp_avg == NULL || job.exp_avg_sq == NULL ||
         (job.amsgrad && job.max_exp_avg_sq == NULL)))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "a state slot the hyperparameters need is missing");
    const bool f32 = args->param->dtype == OPTIMD_DTYPE_F32;
    optimd_range_fn kernel =
        job.amsgrad ? (f32 ? amsgrad_kernel_f32 : amsgrad_kernel_f64)
                    : (f32 ? adam_kernel_f32 : adam_kernel_f64);
    return plug_for_each_range(host, args->param->numel, kernel, &job);
}

#endif /* OPTIMD_PLUGINS_ADAM_KERNEL_H */
