/*
 * What the torch 1.13.1 optimizer plugins (adagrad, rmsprop, adamax, nadam,
 * radam, adadelta, asgd, rprop) share: torch's tensor operations written as
 * element expressions with torch's rounding, the hyperparameter entries
 * that mean the same in every torch optimizer, torch's fp32 step counter,
 * and the step driver that checks the call and runs a kernel.
 *
 * The rounding model (reference §1.1, checked against torch by
 * tests/parity): every scalar is rounded to the tensor's dtype before use,
 * then per element
 *   x.mul_(s)                  -> x * s
 *   x.add_(y, alpha=s)         -> fma(s, y, x)
 *   x.addcmul_(y, z, value=s)  -> fma(s * y, z, x)
 *   x.addcdiv_(y, z, value=s)  -> x + (s * y) / z            (no fma)
 *   x / s, x + s, sqrt(x)      -> the IEEE operation
 * The kernels are written with the macros below so that each line reads as
 * the torch statement it reproduces. They are type-generic (_Generic picks
 * fmaf/fma, sqrtf/sqrt), so one kernel body serves f32 and f64.
 */
#ifndef OPTIMD_PLUGINS_TORCH_OPS_H
#define OPTIMD_PLUGINS_TORCH_OPS_H

#include "../plugin_support.h"

#include <math.h>

/* One rounding of a*b+c, and the square root, in the operands' type. */
#define TORCH_FMA(a, b, c) OPTIMD_FMA(a, b, c)
#define TORCH_SQRT(x) OPTIMD_SQRT(x)
#define TORCH_ABS(x) OPTIMD_ABS(x)

/* avg.mul_(beta).add_(x, alpha=one_minus_beta): a running mean. */
#define TORCH_EMA(avg, x, beta, one_minus_beta)                              \
    TORCH_FMA((one_minus_beta), (x), (avg) * (beta))

/* avg.mul_(beta).addcmul_(x, x, value=one_minus_beta): a running mean of
 * squares. */
#define TORCH_EMA_SQ(avg, x, beta, one_minus_beta)                           \
    TORCH_FMA((one_minus_beta) * (x), (x), (avg) * (beta))

/* x.addcdiv_(y, z, value=s). */
#define TORCH_ADDCDIV(x, s, y, z) ((x) + ((s) * (y)) / (z))

/* torch.maximum / amax: NaN in either operand gives NaN (fmax drops it). */
#define TORCH_MAXIMUM(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))

/* torch.sign: -1, 0 or +1 in type T; +0 for both zeros (and NaN). Written
 * with float selects rather than torch's int arithmetic because GCC 12
 * vectorises this form after a select (same values). */
#define TORCH_SIGN(T, x) (((x) > 0 ? (T)1 : (T)0) - ((x) < 0 ? (T)1 : (T)0))

/*
 * Per-step switches inside kernels. GCC 12's vectoriser cannot use a
 * loop-invariant _Bool as a select mask: such loops vectorise only when
 * -O3 unswitches them, which it stops doing once a loop body passes about
 * 50 instructions. A comparison of floating-point values it can use. So a
 * kernel holds each switch as a value of its element type, 1 or 0
 * (TORCH_FLAG, computed once before the loop), and selects with
 * TORCH_ON(flag) ? a : b. Both operands are computed; neither may be a
 * load that could fault.
 */
#define TORCH_FLAG(T, b) ((b) ? (T)1 : (T)0)
#define TORCH_ON(flag) ((flag) > 0)

/*
 * The gradient as every torch 1.13 optimizer first rewrites it:
 *   grad = -grad if maximize;  if weight_decay != 0: grad = grad.add(p, alpha=wd)
 * Without weight decay torch adds nothing. Rather than select between
 * fma(wd, p, g) and g (GCC will not if-convert the call), the operands
 * are selected: fma(-0.0, +0.0, g) is g exactly for every g, -0, inf and
 * NaN included, so with l2_factor = -0.0 and the parameter replaced by
 * +0.0 the fma is the identity. torch_grad_rule holds the step's values.
 */
typedef struct torch_grad_rule {
    double sign;             /* -1 with maximize; negating is exact */
    double l2_factor;        /* weight_decay, or -0.0 when it is 0 */
    bool l2;                 /* weight_decay != 0 (torch's own test) */
} torch_grad_rule;

static inline torch_grad_rule torch_grad_rule_make(double maximize,
                                                   double weight_decay)
{
    torch_grad_rule rule = {
        .sign = maximize != 0.0 ? -1.0 : 1.0,
        .l2_factor = weight_decay != 0.0 ? weight_decay : -0.0,
        .l2 = weight_decay != 0.0,
    };
    return rule;
}

/* Declares grad_sign, l2_factor and l2_on, `rule`'s fields in type T,
 * before a kernel's loop; TORCH_GRAD(T, g, p) then applies the rule to one
 * element (g, p: the raw gradient and the parameter). */
#define TORCH_GRAD_LOCALS(T, rule)                                           \
    const T grad_sign = (T)(rule).sign, l2_factor = (T)(rule).l2_factor,     \
            l2_on = TORCH_FLAG(T, (rule).l2)
#define TORCH_GRAD(T, g, p)                                                  \
    TORCH_FMA(l2_factor, TORCH_ON(l2_on) ? (p) : (T)0, (g) * grad_sign)

/* What every kernel's job starts with, as its member `base`. */
typedef struct torch_job_base {
    void *param;
    const void *grad;
    torch_grad_rule rule;
} torch_job_base;

static inline torch_job_base torch_job_base_make(const optimd_step_args *args,
                                                 double maximize,
                                                 double weight_decay)
{
    torch_job_base base = {
        .param = args->param->data,
        .grad = args->grad->data,
        .rule = torch_grad_rule_make(maximize, weight_decay),
    };
    return base;
}

/* Opens a kernel body over a `job_type` whose first member is a
 * torch_job_base named base: declares job, p (the parameter), g (the
 * gradient) and TORCH_GRAD's locals. */
#define TORCH_KERNEL_PROLOGUE(T, job_type)                                   \
    const job_type *job = user;                                              \
    T *restrict p = job->base.param;                                         \
    const T *restrict g = job->base.grad;                                    \
    TORCH_GRAD_LOCALS(T, job->base.rule)

/* Adam's moment coefficients, shared by NAdam and RAdam. */
typedef struct torch_moments {
    double beta1, one_minus_beta1;
    double beta2, one_minus_beta2;
} torch_moments;

static inline torch_moments torch_moments_make(double beta1, double beta2)
{
    torch_moments moments = {
        .beta1 = beta1,
        .one_minus_beta1 = 1.0 - beta1,
        .beta2 = beta2,
        .one_minus_beta2 = 1.0 - beta2,
    };
    return moments;
}

/* Declares beta1, one_minus_beta1, beta2, one_minus_beta2 in type T, for
 * TORCH_MOMENTS_UPDATE. */
#define TORCH_MOMENTS_LOCALS(T, moments)                                     \
    const T beta1 = (T)(moments).beta1,                                      \
            one_minus_beta1 = (T)(moments).one_minus_beta1,                  \
            beta2 = (T)(moments).beta2,                                      \
            one_minus_beta2 = (T)(moments).one_minus_beta2

/* Adam's moment updates of element i (m = exp_avg, v = exp_avg_sq):
 *   m = m * beta1 + (1 - beta1) * grad;  v = v * beta2 + (1 - beta2) * grad^2
 * Declares mi and vi, the new values, and stores them. */
#define TORCH_MOMENTS_UPDATE(T, m, v, i, grad)                               \
    const T mi = TORCH_EMA((m)[i], (grad), beta1, one_minus_beta1);         \
    const T vi = TORCH_EMA_SQ((v)[i], (grad), beta2, one_minus_beta2);      \
    (m)[i] = mi;                                                             \
    (v)[i] = vi

/* torch keeps the step count of Adagrad, Adamax, NAdam, RAdam and ASGD in
 * a float32 tensor, which stops growing at 2^24 (2^24 + 1 rounds back to
 * 2^24); the bias corrections use that saturated count. */
static inline double torch_f32_step_count(uint64_t step)
{
    const uint64_t float32_integer_limit = (uint64_t)1 << 24;
    return (double)(step < float32_integer_limit ? step : float32_integer_limit);
}

/* Hyperparameter entries that read the same in every torch optimizer.
 * Ranges follow torch's constructor checks; where torch has none, the
 * shipped plugins' large finite bound. */
#define TORCH_HP_LR(default_)                                                \
    PLUG_HP_FLOAT("lr", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, (default_),   \
                  "Learning rate.")
#define TORCH_HP_BETA1                                                       \
    PLUG_HP_FLOAT("beta1", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, 0.0, \
                  1.0, 0.9, "Decay rate of the first moment (torch betas[0]).")
#define TORCH_HP_BETA2                                                       \
    PLUG_HP_FLOAT("beta2", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, 0.0, \
                  1.0, 0.999,                                                \
                  "Decay rate of the second moment (torch betas[1]).")
#define TORCH_HP_EPS(default_, doc_)                                         \
    PLUG_HP_FLOAT("eps", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, (default_),  \
                  (doc_))
#define TORCH_HP_WEIGHT_DECAY                                                \
    PLUG_HP_FLOAT("weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE,     \
                  0.0, "L2 penalty added to the gradient (coupled).")
#define TORCH_HP_MAXIMIZE                                                    \
    PLUG_HP_BOOL("maximize", 0, 0.0,                                         \
                 "Maximize the objective instead of minimizing it.")

/* A state slot shaped like the parameter, in its dtype. */
#define TORCH_SLOT(key_, doc_)                                               \
    PLUG_SLOT((key_), OPTIMD_SLOT_LIKE_PARAM, 0, NULL, (doc_))

/* A 0-dim float32 tensor of torch's state (NAdam's mu_product, ASGD's eta
 * and mu): torch creates these with torch.tensor(x), float32 whatever the
 * parameter's dtype, so the slot is float32 too. */
#define TORCH_SCALAR_SLOT(key_, doc_)                                        \
    PLUG_SLOT((key_), OPTIMD_SLOT_SCALAR, OPTIMD_DTYPE_F32, NULL, (doc_))

/* Reads / writes a float32 scalar slot. */
static inline float torch_scalar_get(const optimd_tensor *slot)
{
    return *(const float *)slot->data;
}

static inline void torch_scalar_set(optimd_tensor *slot, float value)
{
    *(float *)slot->data = value;
}

/* Both instantiations of one kernel, picked by the parameter's dtype. */
typedef struct torch_kernel_pair {
    optimd_range_fn f32;
    optimd_range_fn f64;
} torch_kernel_pair;

/* Fails unless every slot whose bit is set in `required_slots` is present
 * (enabled slots may arrive with data NULL only when they hold nothing). */
static inline optimd_status torch_require_slots(const optimd_host *host,
                                                const optimd_step_args *args,
                                                const optimd_slot_def *slots,
                                                uint32_t required_slots)
{
    for (uint32_t i = 0; i < args->n_slots; i++)
        if ((required_slots >> i & 1u) && args->slots[i].data == NULL &&
            plug_slot_numel(&slots[i], args->param->numel) > 0)
            return plug_fail(host, OPTIMD_ERR_INVALID,
                             "state slot '%s' is missing", slots[i].key);
    return OPTIMD_OK;
}

/*
 * The common part of every step: the call matches the plugin's tables
 * (hyperparameter count, slots by declaration) and the slots in
 * `required_slots` are present. Call before computing anything; nothing
 * has been written when it fails.
 */
static inline optimd_status torch_check_step(const optimd_host *host,
                                             const optimd_step_args *args,
                                             uint32_t n_hparams,
                                             const optimd_slot_def *slots,
                                             uint32_t n_slots,
                                             uint32_t required_slots)
{
    optimd_status st = plug_check_step_args_defs(host, args, n_hparams, slots,
                                                 n_slots);
    if (st != OPTIMD_OK) return st;
    return torch_require_slots(host, args, slots, required_slots);
}

/* Runs the kernel of the parameter's dtype over the whole parameter. */
static inline optimd_status torch_run_kernel(const optimd_host *host,
                                             const optimd_step_args *args,
                                             torch_kernel_pair kernel,
                                             void *job)
{
    optimd_range_fn fn =
        args->param->dtype == OPTIMD_DTYPE_F32 ? kernel.f32 : kernel.f64;
    return plug_for_each_range(host, args->param->numel, fn, job);
}

/* Bit mask of slot indexes, for torch_check_step's `required_slots`. */
#define TORCH_SLOT_BIT(index) (1u << (index))

#endif /* OPTIMD_PLUGINS_TORCH_OPS_H */
