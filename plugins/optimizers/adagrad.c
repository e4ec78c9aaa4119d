/*
 * Adagrad (learning-rate decay, L2 weight decay, initial accumulator value,
 * maximize): torch.optim.Adagrad of torch 1.13.1, single-tensor path,
 * bit for bit on CPU for f32 and f64 (dense gradients).
 *
 * torch's rule (t = fp32 step count, torch_ops.h for the rounding model):
 *   g = maximize ? -g : g;  if wd != 0: g = g + wd * p         (fma)
 *   clr = lr / (1 + (t - 1) * lr_decay)                        (double)
 *   sum = sum + g * g                                          (fma)
 *   p = p + (-clr * g) / (sqrt(sum) + eps)                     (addcdiv_)
 *
 * torch fills `sum` with initial_accumulator_value when the optimizer is
 * built; the host zero-fills slots, so the kernel reads the initial value
 * instead of the slot on the parameter's first step.
 */
#include "torch_ops.h"

enum adagrad_hparam_index {
    ADAGRAD_HP_LR,
    ADAGRAD_HP_LR_DECAY,
    ADAGRAD_HP_WEIGHT_DECAY,
    ADAGRAD_HP_INITIAL_ACCUMULATOR_VALUE,
    ADAGRAD_HP_EPS,
    ADAGRAD_HP_MAXIMIZE,
    ADAGRAD_HP_COUNT
};

static const optimd_hparam_def adagrad_hparams[ADAGRAD_HP_COUNT] = {
    [ADAGRAD_HP_LR] = TORCH_HP_LR(1e-2),
    [ADAGRAD_HP_LR_DECAY] = PLUG_HP_FLOAT(
        "lr_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.0,
        "Step t uses lr / (1 + (t - 1) * lr_decay)."),
    [ADAGRAD_HP_WEIGHT_DECAY] = TORCH_HP_WEIGHT_DECAY,
    /* Read only on a parameter's first step, when torch would have filled
     * the accumulator; changing it later has no effect, as in torch. */
    [ADAGRAD_HP_INITIAL_ACCUMULATOR_VALUE] = PLUG_HP_FLOAT(
        "initial_accumulator_value", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE,
        0.0, "Starting value of the sum of squared gradients."),
    [ADAGRAD_HP_EPS] = TORCH_HP_EPS(1e-10, "Added to the denominator."),
    [ADAGRAD_HP_MAXIMIZE] = TORCH_HP_MAXIMIZE,
};

enum adagrad_slot_index { ADAGRAD_SLOT_SUM, ADAGRAD_SLOT_COUNT };

static const optimd_slot_def adagrad_slots[ADAGRAD_SLOT_COUNT] = {
    [ADAGRAD_SLOT_SUM] = TORCH_SLOT("sum", "Sum of squared gradients (plus the initial value)."),
};

typedef struct adagrad_job {
    torch_job_base base;
    void *sum;
    double initial_sum;
    double neg_clr;
    double eps;
    bool first_step;
} adagrad_job;

#define ADAGRAD_DEFINE_KERNEL(name, T)                                       \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, adagrad_job);                               \
        T *restrict sum = job->sum;                                          \
        const T initial_sum = (T)job->initial_sum;                           \
        const T neg_clr = (T)job->neg_clr;                                   \
        const T eps = (T)job->eps;                                           \
        const T first_step = TORCH_FLAG(T, job->first_step);                 \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = TORCH_GRAD(T, g[i], p[i]);                        \
            const T stored = sum[i];                                         \
            const T before = TORCH_ON(first_step) ? initial_sum : stored;    \
            const T s = TORCH_FMA(grad, grad, before);                       \
            sum[i] = s;                                                      \
            p[i] = TORCH_ADDCDIV(p[i], neg_clr, grad, TORCH_SQRT(s) + eps);  \
        }                                                                    \
    }

ADAGRAD_DEFINE_KERNEL(adagrad_kernel_f32, float)
ADAGRAD_DEFINE_KERNEL(adagrad_kernel_f64, double)

static optimd_status adagrad_step(const optimd_host *host,
                                  const optimd_step_args *args)
{
    optimd_status st = torch_check_step(host, args, ADAGRAD_HP_COUNT, adagrad_slots,
                                        ADAGRAD_SLOT_COUNT,
                                        TORCH_SLOT_BIT(ADAGRAD_SLOT_SUM));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double t = torch_f32_step_count(args->step);
    /* Same double expression as torch's Python code. */
    const double clr = hp[ADAGRAD_HP_LR] / (1.0 + (t - 1.0) * hp[ADAGRAD_HP_LR_DECAY]);
    adagrad_job job = {
        .base = torch_job_base_make(args, hp[ADAGRAD_HP_MAXIMIZE],
                                    hp[ADAGRAD_HP_WEIGHT_DECAY]),
        .sum = args->slots[ADAGRAD_SLOT_SUM].data,
        .initial_sum = hp[ADAGRAD_HP_INITIAL_ACCUMULATOR_VALUE],
        .neg_clr = -clr,
        .eps = hp[ADAGRAD_HP_EPS],
        .first_step = args->step == 1,
    };
    return torch_run_kernel(host, args,
                            (torch_kernel_pair){adagrad_kernel_f32, adagrad_kernel_f64},
                            &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("adagrad", "1.0.0",
                            "Adagrad with lr decay and initial accumulator, as torch.optim.Adagrad 1.13",
                            adagrad_hparams, adagrad_slots, NULL, adagrad_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
