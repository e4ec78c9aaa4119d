/*
 * RMSprop (centered, momentum, L2 weight decay, maximize): torch.optim.RMSprop
 * of torch 1.13.1, single-tensor path, bit for bit on CPU for f32 and f64.
 *
 * torch's rule (torch_ops.h for the rounding model; no bias correction):
 *   g = maximize ? -g : g;  if wd != 0: g = g + wd * p             (fma)
 *   v = v * alpha + (1 - alpha) * g * g                            (mul, fma)
 *   centered:   ga = ga * alpha + (1 - alpha) * g                  (mul, fma)
 *               avg = sqrt(v - ga * ga) + eps                      (fma)
 *   otherwise:  avg = sqrt(v) + eps
 *   momentum > 0:  b = b * momentum + g / avg;  p = p - lr * b     (fma)
 *   otherwise:     p = p + (-lr * g) / avg                         (addcdiv_)
 *
 * torch creates momentum_buffer only when momentum > 0 at the parameter's
 * first step; here it always exists (momentum is a number, not a switch)
 * and stays zero while momentum is 0, which is what torch's buffer would
 * hold. Raising momentum from 0 mid-session works here where torch fails.
 */
#include "torch_ops.h"

enum rmsprop_hparam_index {
    RMSPROP_HP_LR,
    RMSPROP_HP_ALPHA,
    RMSPROP_HP_EPS,
    RMSPROP_HP_WEIGHT_DECAY,
    RMSPROP_HP_MOMENTUM,
    RMSPROP_HP_CENTERED,
    RMSPROP_HP_MAXIMIZE,
    RMSPROP_HP_COUNT
};

static const optimd_hparam_def rmsprop_hparams[RMSPROP_HP_COUNT] = {
    [RMSPROP_HP_LR] = TORCH_HP_LR(1e-2),
    [RMSPROP_HP_ALPHA] = PLUG_HP_FLOAT("alpha", OPTIMD_HP_MUTABLE, 0.0, 1.0, 0.99,
                                       "Smoothing constant of the squared-gradient average."),
    [RMSPROP_HP_EPS] = TORCH_HP_EPS(1e-8, "Added to the denominator, after the square root."),
    [RMSPROP_HP_WEIGHT_DECAY] = TORCH_HP_WEIGHT_DECAY,
    [RMSPROP_HP_MOMENTUM] = PLUG_HP_FLOAT("momentum", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE,
                                          0.0, "Momentum factor; 0 disables momentum."),
    [RMSPROP_HP_CENTERED] = PLUG_HP_BOOL("centered", 0, 0.0,
                                         "Normalize by the estimated variance of the gradient."),
    [RMSPROP_HP_MAXIMIZE] = TORCH_HP_MAXIMIZE,
};

enum rmsprop_slot_index {
    RMSPROP_SLOT_SQUARE_AVG,
    RMSPROP_SLOT_MOMENTUM_BUFFER,
    RMSPROP_SLOT_GRAD_AVG,
    RMSPROP_SLOT_COUNT
};

static const optimd_slot_def rmsprop_slots[RMSPROP_SLOT_COUNT] = {
    [RMSPROP_SLOT_SQUARE_AVG] = TORCH_SLOT("square_avg", "Running mean of the squared gradient."),
    [RMSPROP_SLOT_MOMENTUM_BUFFER] = TORCH_SLOT("momentum_buffer",
                                                "Momentum buffer (used when momentum > 0)."),
    [RMSPROP_SLOT_GRAD_AVG] = PLUG_SLOT("grad_avg", OPTIMD_SLOT_LIKE_PARAM, 0, "centered",
                                        "Running mean of the gradient (centered only)."),
};

typedef struct rmsprop_job {
    torch_job_base base;
    void *square_avg;
    void *momentum_buffer;
    void *grad_avg;          /* NULL unless centered */
    double alpha, one_minus_alpha;
    double eps;
    double momentum;
    double neg_lr;
} rmsprop_job;

/* CENTERED and MOMENTUM are constants: the slots they read may be absent,
 * so they select code, not values. */
#define RMSPROP_DEFINE_KERNEL(name, T, CENTERED, MOMENTUM)                   \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, rmsprop_job);                               \
        T *restrict v = job->square_avg;                                     \
        T *restrict buf = job->momentum_buffer;                              \
        T *restrict ga = job->grad_avg;                                      \
        const T alpha = (T)job->alpha;                                       \
        const T one_minus_alpha = (T)job->one_minus_alpha;                   \
        const T eps = (T)job->eps;                                           \
        const T momentum = (T)job->momentum;                                 \
        const T neg_lr = (T)job->neg_lr;                                     \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = TORCH_GRAD(T, g[i], p[i]);                        \
            const T vi = TORCH_EMA_SQ(v[i], grad, alpha, one_minus_alpha);   \
            v[i] = vi;                                                       \
            T avg;                                                           \
            if (CENTERED) {                                                  \
                const T gai = TORCH_EMA(ga[i], grad, alpha, one_minus_alpha); \
                ga[i] = gai;                                                 \
                avg = TORCH_SQRT(TORCH_FMA(-gai, gai, vi)) + eps;            \
            } else {                                                         \
                avg = TORCH_SQRT(vi) + eps;                                  \
            }                                                                \
            if (MOMENTUM) {                                                  \
                const T b = buf[i] * momentum + grad / avg;                  \
                buf[i] = b;                                                  \
                p[i] = TORCH_FMA(neg_lr, b, p[i]);                           \
            } else {                                                         \
                p[i] = TORCH_ADDCDIV(p[i], neg_lr, grad, avg);               \
            }                                                                \
        }                                                                    \
    }

RMSPROP_DEFINE_KERNEL(rmsprop_kernel_f32, float, false, false)
RMSPROP_DEFINE_KERNEL(rmsprop_kernel_f64, double, false, false)
RMSPROP_DEFINE_KERNEL(rmsprop_centered_kernel_f32, float, true, false)
RMSPROP_DEFINE_KERNEL(rmsprop_centered_kernel_f64, double, true, false)
RMSPROP_DEFINE_KERNEL(rmsprop_momentum_kernel_f32, float, false, true)
RMSPROP_DEFINE_KERNEL(rmsprop_momentum_kernel_f64, double, false, true)
RMSPROP_DEFINE_KERNEL(rmsprop_centered_momentum_kernel_f32, float, true, true)
RMSPROP_DEFINE_KERNEL(rmsprop_centered_momentum_kernel_f64, double, true, true)

/* Indexed by centered + 2 * momentum. */
static const torch_kernel_pair rmsprop_kernels[4] = {
    {rmsprop_kernel_f32, rmsprop_kernel_f64},
    {rmsprop_centered_kernel_f32, rmsprop_centered_kernel_f64},
    {rmsprop_momentum_kernel_f32, rmsprop_momentum_kernel_f64},
    {rmsprop_centered_momentum_kernel_f32, rmsprop_centered_momentum_kernel_f64},
};

static optimd_status rmsprop_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = plug_check_step_args_defs(host, args, RMSPROP_HP_COUNT,
                                                 rmsprop_slots, RMSPROP_SLOT_COUNT);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const bool centered = hp[RMSPROP_HP_CENTERED] != 0.0;
    const bool momentum = hp[RMSPROP_HP_MOMENTUM] > 0.0;
    st = torch_require_slots(
        host, args, rmsprop_slots,
        TORCH_SLOT_BIT(RMSPROP_SLOT_SQUARE_AVG) |
            (momentum ? TORCH_SLOT_BIT(RMSPROP_SLOT_MOMENTUM_BUFFER) : 0u) |
            (centered ? TORCH_SLOT_BIT(RMSPROP_SLOT_GRAD_AVG) : 0u));
    if (st != OPTIMD_OK) return st;
    rmsprop_job job = {
        .base = torch_job_base_make(args, hp[RMSPROP_HP_MAXIMIZE],
                                    hp[RMSPROP_HP_WEIGHT_DECAY]),
        .square_avg = args->slots[RMSPROP_SLOT_SQUARE_AVG].data,
        .momentum_buffer = args->slots[RMSPROP_SLOT_MOMENTUM_BUFFER].data,
        .grad_avg = args->slots[RMSPROP_SLOT_GRAD_AVG].data,
        .alpha = hp[RMSPROP_HP_ALPHA],
        .one_minus_alpha = 1.0 - hp[RMSPROP_HP_ALPHA],
        .eps = hp[RMSPROP_HP_EPS],
        .momentum = hp[RMSPROP_HP_MOMENTUM],
        .neg_lr = -hp[RMSPROP_HP_LR],
    };
    return torch_run_kernel(host, args, rmsprop_kernels[centered + 2 * momentum], &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("rmsprop", "1.0.0",
                            "RMSprop, centered and with momentum, as torch.optim.RMSprop 1.13",
                            rmsprop_hparams, rmsprop_slots, NULL, rmsprop_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
