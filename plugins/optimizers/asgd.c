/*
 * ASGD (averaged SGD, L2 weight decay, maximize): torch.optim.ASGD of torch
 * 1.13.1, single-tensor path, bit for bit on CPU for f32 and f64.
 *
 * torch's rule (t = fp32 step count, torch_ops.h for the rounding model):
 *   g = maximize ? -g : g;  if wd != 0: g = g + wd * p             (fma)
 *   p = p * (1 - lambd * eta)                                      (mul)
 *   p = p - eta * g                                                (fma)
 *   ax = mu != 1 ? ax + (p - ax) * mu : p
 *   then, for the next step:
 *   eta = lr / (1 + lambd * lr * t)^alpha;  mu = 1 / max(1, t - t0)
 *
 * eta and mu are float32 0-dim tensors in torch (torch.tensor(x), whatever
 * the parameter's dtype): here float32 OPTIMD_SLOT_SCALAR slots, rounded
 * to float32 when stored, exactly like torch's copy_. torch starts eta at
 * the lr of the parameter's first step and mu at 1; the host zero-fills
 * slots, so step 1 uses those values instead of the slots. The eta of
 * step t is computed at step t - 1 from that step's lr, as in torch, so a
 * scheduler acts one step late on ASGD.
 */
#include "torch_ops.h"

enum asgd_hparam_index {
    ASGD_HP_LR,
    ASGD_HP_LAMBD,
    ASGD_HP_ALPHA,
    ASGD_HP_T0,
    ASGD_HP_WEIGHT_DECAY,
    ASGD_HP_MAXIMIZE,
    ASGD_HP_COUNT
};

/* t0 beyond torch's saturated step count (2^24) means "never average". */
#define ASGD_T0_MAX 1e18

static const optimd_hparam_def asgd_hparams[ASGD_HP_COUNT] = {
    [ASGD_HP_LR] = TORCH_HP_LR(1e-2),
    [ASGD_HP_LAMBD] = PLUG_HP_FLOAT("lambd", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 1e-4,
                                    "Decay term: eta = lr / (1 + lambd * lr * t)^alpha."),
    [ASGD_HP_ALPHA] = PLUG_HP_FLOAT("alpha", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.75,
                                    "Power of the eta decay."),
    [ASGD_HP_T0] = PLUG_HP_FLOAT("t0", OPTIMD_HP_MUTABLE, 0.0, ASGD_T0_MAX, 1e6,
                                 "Step after which averaging starts."),
    [ASGD_HP_WEIGHT_DECAY] = TORCH_HP_WEIGHT_DECAY,
    [ASGD_HP_MAXIMIZE] = TORCH_HP_MAXIMIZE,
};

enum asgd_slot_index { ASGD_SLOT_ETA, ASGD_SLOT_MU, ASGD_SLOT_AX, ASGD_SLOT_COUNT };

static const optimd_slot_def asgd_slots[ASGD_SLOT_COUNT] = {
    [ASGD_SLOT_ETA] = TORCH_SCALAR_SLOT("eta", "Step size of the next step (float32)."),
    [ASGD_SLOT_MU] = TORCH_SCALAR_SLOT("mu", "Averaging coefficient of the next step (float32)."),
    [ASGD_SLOT_AX] = TORCH_SLOT("ax", "Averaged parameter (not written back to the parameter)."),
};

typedef struct asgd_job {
    torch_job_base base;
    void *ax;
    double decay;            /* 1 - lambd * eta */
    double neg_eta;
    double mu;
    bool average;            /* mu != 1 */
} asgd_job;

#define ASGD_DEFINE_KERNEL(name, T)                                          \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, asgd_job);                                  \
        T *restrict ax = job->ax;                                            \
        const T decay = (T)job->decay;                                       \
        const T neg_eta = (T)job->neg_eta;                                   \
        const T mu = (T)job->mu;                                             \
        const T average = TORCH_FLAG(T, job->average);                       \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = TORCH_GRAD(T, g[i], p[i]);                        \
            const T pi = TORCH_FMA(neg_eta, grad, p[i] * decay);             \
            p[i] = pi;                                                       \
            const T averaged = ax[i] + (pi - ax[i]) * mu;                    \
            ax[i] = TORCH_ON(average) ? averaged : pi;                       \
        }                                                                    \
    }

ASGD_DEFINE_KERNEL(asgd_kernel_f32, float)
ASGD_DEFINE_KERNEL(asgd_kernel_f64, double)

static optimd_status asgd_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = torch_check_step(
        host, args, ASGD_HP_COUNT, asgd_slots, ASGD_SLOT_COUNT,
        TORCH_SLOT_BIT(ASGD_SLOT_ETA) | TORCH_SLOT_BIT(ASGD_SLOT_MU) |
            TORCH_SLOT_BIT(ASGD_SLOT_AX));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double lr = hp[ASGD_HP_LR];
    const double lambd = hp[ASGD_HP_LAMBD];
    optimd_tensor *eta_slot = &args->slots[ASGD_SLOT_ETA];
    optimd_tensor *mu_slot = &args->slots[ASGD_SLOT_MU];
    const bool first = args->step == 1;
    const double eta = first ? (double)(float)lr : (double)torch_scalar_get(eta_slot);
    const double mu = first ? 1.0 : (double)torch_scalar_get(mu_slot);
    asgd_job job = {
        .base = torch_job_base_make(args, hp[ASGD_HP_MAXIMIZE], hp[ASGD_HP_WEIGHT_DECAY]),
        .ax = args->slots[ASGD_SLOT_AX].data,
        .decay = 1.0 - lambd * eta,
        .neg_eta = -eta,
        .mu = mu,
        .average = mu != 1.0,
    };
    st = torch_run_kernel(host, args, (torch_kernel_pair){asgd_kernel_f32, asgd_kernel_f64},
                          &job);
    if (st != OPTIMD_OK) return st;
    /* Same double expressions as torch's Python code, then torch.tensor()
     * rounds them to float32. */
    const double t = torch_f32_step_count(args->step);
    const double t_past_t0 = t - hp[ASGD_HP_T0];
    torch_scalar_set(eta_slot, (float)(lr / pow(1.0 + lambd * lr * t, hp[ASGD_HP_ALPHA])));
    torch_scalar_set(mu_slot, (float)(1.0 / (t_past_t0 > 1.0 ? t_past_t0 : 1.0)));
    return OPTIMD_OK;
}

PLUG_DEFINE_OPTIMIZER_FLAGS("asgd", "1.0.0", "Averaged SGD, as torch.optim.ASGD 1.13",
                            asgd_hparams, asgd_slots, NULL, asgd_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
