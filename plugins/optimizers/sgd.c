/*
 * SGD with momentum, dampening, Nesterov momentum, L2 weight decay and
 * maximize: torch.optim.SGD of torch 1.13.1, single-tensor (foreach=False)
 * path, reproduced bit for bit on CPU.
 *
 * torch's per-element rule, with every scalar rounded to the tensor's dtype
 * before use (docs/abi.md and the torch sources under torch/optim/sgd.py):
 *
 *   d = maximize ? -g : g
 *   if weight_decay != 0:  d = d + weight_decay * p          (one fma)
 *   if momentum != 0:
 *       first step:        b = d                               (no dampening)
 *       later:             b = b * momentum + (1 - dampening) * d  (mul, fma)
 *       d = nesterov ? d + momentum * b (fma) : b
 *   p = p + (-lr) * d                                          (one fma)
 *
 * Known difference: torch creates the momentum buffer on the first step in
 * which momentum is nonzero. This plugin sees only the parameter's step
 * count, so it treats step 1 as that first step; a session that raises
 * momentum from 0 later starts from a zero buffer instead of a copy of d.
 */
#include "../plugin_support.h"

#include <math.h>

enum sgd_hparam_index {
    SGD_HP_LR,
    SGD_HP_MOMENTUM,
    SGD_HP_DAMPENING,
    SGD_HP_WEIGHT_DECAY,
    SGD_HP_NESTEROV,
    SGD_HP_MAXIMIZE,
    SGD_HP_COUNT
};

static const optimd_hparam_def sgd_hparams[SGD_HP_COUNT] = {
    /* torch has no default lr for SGD, so neither do we. */
    [SGD_HP_LR] = PLUG_HP_FLOAT("lr", OPTIMD_HP_REQUIRED | OPTIMD_HP_MUTABLE,
                                0.0, PLUG_HP_LARGE, 0.0, "Learning rate."),
    [SGD_HP_MOMENTUM] = PLUG_HP_FLOAT("momentum", OPTIMD_HP_MUTABLE, 0.0,
                                      PLUG_HP_LARGE, 0.0,
                                      "Momentum factor; 0 disables momentum."),
    /* torch validates no range for dampening; any finite value is allowed. */
    [SGD_HP_DAMPENING] = PLUG_HP_FLOAT("dampening", OPTIMD_HP_MUTABLE,
                                       -PLUG_HP_LARGE, PLUG_HP_LARGE, 0.0,
                                       "Dampening of the gradient's share in the momentum buffer."),
    [SGD_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT("weight_decay", OPTIMD_HP_MUTABLE,
                                          0.0, PLUG_HP_LARGE, 0.0,
                                          "L2 penalty added to the gradient."),
    [SGD_HP_NESTEROV] = PLUG_HP_BOOL("nesterov", 0, 0.0,
                                     "Use Nesterov momentum (needs momentum > 0 and dampening 0)."),
    [SGD_HP_MAXIMIZE] = PLUG_HP_BOOL("maximize", 0, 0.0,
                                     "Maximize the objective instead of minimizing it."),
};

enum sgd_slot_index { SGD_SLOT_MOMENTUM_BUFFER, SGD_SLOT_COUNT };

/* Declared unconditionally: momentum is a float, not a bool, so it cannot
 * be an enabled_by switch. The buffer is only read when momentum != 0. */
static const optimd_slot_def sgd_slots[SGD_SLOT_COUNT] = {
    [SGD_SLOT_MOMENTUM_BUFFER] = {
        .struct_size = sizeof(optimd_slot_def),
        .shape = OPTIMD_SLOT_LIKE_PARAM,
        .dtype = 0,
        .key = "momentum_buffer",
        .doc = "Momentum buffer (used when momentum != 0).",
        .enabled_by = NULL,
    },
};

static optimd_status sgd_check_hparams(const optimd_host *host,
                                       const double *hparams, uint32_t n)
{
    if (hparams == NULL || n != SGD_HP_COUNT)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "sgd expects %u hyperparameters, got %u",
                         (unsigned)SGD_HP_COUNT, n);
    if (hparams[SGD_HP_NESTEROV] != 0.0 &&
        (hparams[SGD_HP_MOMENTUM] <= 0.0 || hparams[SGD_HP_DAMPENING] != 0.0))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "nesterov requires momentum > 0 and dampening == 0 "
                         "(got momentum=%g, dampening=%g)",
                         hparams[SGD_HP_MOMENTUM], hparams[SGD_HP_DAMPENING]);
    return OPTIMD_OK;
}

/* Everything one chunk of the update needs; shared read-only by the worker
 * threads, each of which writes only its own [begin, end). */
typedef struct sgd_job {
    void *param;
    const void *grad;
    void *momentum_buffer;
    /* Scalars in double; the f32 kernel rounds them to float first, as
     * torch converts a Python float to the tensor's dtype. */
    double grad_sign;        /* -1 with maximize; negating is exact */
    double weight_decay;
    double momentum;
    double one_minus_dampening;
    double neg_lr;
    bool use_weight_decay;
    bool use_momentum;
    bool first_momentum_step;
    bool nesterov;
} sgd_job;

/* The kernels differ only in the element type, in which fma() they call and
 * in MOMENTUM (a constant); the remaining flags become selects, so every
 * loop body is branch-free and vectorises. */
#define SGD_DEFINE_KERNEL(name, T, FMA, MOMENTUM)                            \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        const sgd_job *job = user;                                           \
        T *restrict p = job->param;                                          \
        const T *restrict g = job->grad;                                     \
        T *restrict buf = job->momentum_buffer;                              \
        const T grad_sign = (T)job->grad_sign;                               \
        const T weight_decay = (T)job->weight_decay;                         \
        const T momentum = (T)job->momentum;                                 \
        const T one_minus_dampening = (T)job->one_minus_dampening;           \
        const T neg_lr = (T)job->neg_lr;                                     \
        const bool use_weight_decay = job->use_weight_decay;                 \
        const bool first_momentum_step = job->first_momentum_step;           \
        const bool nesterov = job->nesterov;                                 \
        for (int64_t i = begin; i < end; i++) {                              \
            const T param = p[i];                                            \
            T d = g[i] * grad_sign;                                          \
            const T with_decay = FMA(weight_decay, param, d);                \
            d = use_weight_decay ? with_decay : d;                           \
            if (MOMENTUM) {                                                  \
                const T later = FMA(one_minus_dampening, d, buf[i] * momentum); \
                const T b = first_momentum_step ? d : later;                 \
                buf[i] = b;                                                  \
                const T with_nesterov = FMA(momentum, b, d);                 \
                d = nesterov ? with_nesterov : b;                            \
            }                                                                \
            p[i] = FMA(neg_lr, d, param);                                    \
        }                                                                    \
    }

SGD_DEFINE_KERNEL(sgd_kernel_f32, float, fmaf, false)
SGD_DEFINE_KERNEL(sgd_kernel_f64, double, fma, false)
SGD_DEFINE_KERNEL(sgd_momentum_kernel_f32, float, fmaf, true)
SGD_DEFINE_KERNEL(sgd_momentum_kernel_f64, double, fma, true)

static optimd_status sgd_step(const optimd_host *host,
                              const optimd_step_args *args)
{
    optimd_status st = plug_check_step_args(host, args, SGD_HP_COUNT,
                                            SGD_SLOT_COUNT);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    sgd_job job = {
        .param = args->param->data,
        .grad = args->grad->data,
        .momentum_buffer = args->slots[SGD_SLOT_MOMENTUM_BUFFER].data,
        .grad_sign = hp[SGD_HP_MAXIMIZE] != 0.0 ? -1.0 : 1.0,
        .weight_decay = hp[SGD_HP_WEIGHT_DECAY],
        .momentum = hp[SGD_HP_MOMENTUM],
        .one_minus_dampening = 1.0 - hp[SGD_HP_DAMPENING],
        .neg_lr = -hp[SGD_HP_LR],
        /* torch skips these terms entirely when the factor is 0, which
         * matters for inf/NaN and signed zeros, so we do too. */
        .use_weight_decay = hp[SGD_HP_WEIGHT_DECAY] != 0.0,
        .use_momentum = hp[SGD_HP_MOMENTUM] != 0.0,
        .first_momentum_step = args->step == 1,
        .nesterov = hp[SGD_HP_NESTEROV] != 0.0,
    };
    if (job.use_momentum && job.momentum_buffer == NULL && args->param->numel > 0)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "momentum_buffer slot missing");
    const bool f32 = args->param->dtype == OPTIMD_DTYPE_F32;
    optimd_range_fn kernel =
        job.use_momentum ? (f32 ? sgd_momentum_kernel_f32 : sgd_momentum_kernel_f64)
                         : (f32 ? sgd_kernel_f32 : sgd_kernel_f64);
    return plug_for_each_range(host, args->param->numel, kernel, &job);
}

static const optimd_optimizer sgd_optimizer = {
    .struct_size = sizeof(optimd_optimizer),
    .n_hparams = SGD_HP_COUNT,
    .hparams = sgd_hparams,
    .n_slots = SGD_SLOT_COUNT,
    .dtypes = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64),
    .slots = sgd_slots,
    .check_hparams = sgd_check_hparams,
    .step = sgd_step,
    .flags = OPTIMD_OPTIMIZER_ELEMENTWISE,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_OPTIMIZER,
    .id = "sgd",
    .version = "1.0.0",
    .description = "Stochastic gradient descent with momentum, as torch.optim.SGD 1.13",
    .optimizer = &sgd_optimizer,
    .scheduler = NULL,
};
