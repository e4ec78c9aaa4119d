/*
 * Rprop (resilient backpropagation, maximize): torch.optim.Rprop of torch
 * 1.13.1, single-tensor path, bit for bit on CPU for f32 and f64. torch's
 * Rprop has no weight decay. torch's pairs `etas` and `step_sizes` are the
 * keys eta_minus/eta_plus and step_size_min/step_size_max here.
 *
 * torch's rule, with its masked assignments as selects in their order:
 *   g = maximize ? -g : g
 *   s = sign(g * prev)             (of the rounded product: an underflow is 0)
 *   s = s > 0 ? eta_plus : s;  s = s < 0 ? eta_minus : s;  s = s == 0 ? 1 : s
 *   step_size = clamp(step_size * s, step_size_min, step_size_max)
 *   g = s == eta_minus ? 0 : g     (no move, and no sign memory, after a flip)
 *   p = p - sign(g) * step_size                                    (fma)
 *   prev = g
 * with eta_minus, eta_plus and the bounds rounded to the parameter's dtype.
 * torch fills step_size with the lr when the parameter's state is created
 * (its first step); the host zero-fills slots, so step 1 starts from the lr.
 * Later changes of lr have no effect, as in torch.
 */
#include "torch_ops.h"

enum rprop_hparam_index {
    RPROP_HP_LR,
    RPROP_HP_ETA_MINUS,
    RPROP_HP_ETA_PLUS,
    RPROP_HP_STEP_SIZE_MIN,
    RPROP_HP_STEP_SIZE_MAX,
    RPROP_HP_MAXIMIZE,
    RPROP_HP_COUNT
};

static const optimd_hparam_def rprop_hparams[RPROP_HP_COUNT] = {
    [RPROP_HP_LR] = TORCH_HP_LR(1e-2),
    /* torch requires 0 < etas[0] < 1 < etas[1]. */
    [RPROP_HP_ETA_MINUS] = PLUG_HP_FLOAT(
        "eta_minus", OPTIMD_HP_MUTABLE | OPTIMD_HP_MIN_EXCLUSIVE | OPTIMD_HP_MAX_EXCLUSIVE,
        0.0, 1.0, 0.5, "Step-size factor after a sign change (torch etas[0])."),
    [RPROP_HP_ETA_PLUS] = PLUG_HP_FLOAT(
        "eta_plus", OPTIMD_HP_MUTABLE | OPTIMD_HP_MIN_EXCLUSIVE, 1.0, PLUG_HP_LARGE, 1.2,
        "Step-size factor while the sign holds (torch etas[1])."),
    [RPROP_HP_STEP_SIZE_MIN] = PLUG_HP_FLOAT(
        "step_size_min", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 1e-6,
        "Smallest step size (torch step_sizes[0])."),
    [RPROP_HP_STEP_SIZE_MAX] = PLUG_HP_FLOAT(
        "step_size_max", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 50.0,
        "Largest step size (torch step_sizes[1])."),
    [RPROP_HP_MAXIMIZE] = TORCH_HP_MAXIMIZE,
};

enum rprop_slot_index { RPROP_SLOT_PREV, RPROP_SLOT_STEP_SIZE, RPROP_SLOT_COUNT };

static const optimd_slot_def rprop_slots[RPROP_SLOT_COUNT] = {
    [RPROP_SLOT_PREV] = TORCH_SLOT("prev", "Previous gradient (0 after a sign change)."),
    [RPROP_SLOT_STEP_SIZE] = TORCH_SLOT("step_size", "Per-element step size."),
};

/* torch clamps with min first, so min > max gives max everywhere; that is
 * never what a user means, so it is refused. */
static optimd_status rprop_check_hparams(const optimd_host *host, const double *hparams,
                                         uint32_t n)
{
    if (hparams == NULL || n != RPROP_HP_COUNT)
        return plug_fail(host, OPTIMD_ERR_INVALID, "rprop expects %u hyperparameters, got %u",
                         (unsigned)RPROP_HP_COUNT, n);
    if (hparams[RPROP_HP_STEP_SIZE_MIN] > hparams[RPROP_HP_STEP_SIZE_MAX])
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "step_size_min (%g) must not exceed step_size_max (%g)",
                         hparams[RPROP_HP_STEP_SIZE_MIN], hparams[RPROP_HP_STEP_SIZE_MAX]);
    return OPTIMD_OK;
}

typedef struct rprop_job {
    torch_job_base base;     /* no weight decay: only maximize's sign */
    void *prev;
    void *step_size;
    double eta_minus, eta_plus;
    double step_size_min, step_size_max;
    double initial_step_size;
    bool first_step;
} rprop_job;

#define RPROP_DEFINE_KERNEL(name, T)                                         \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, rprop_job);                                 \
        T *restrict prev = job->prev;                                        \
        T *restrict step_size = job->step_size;                              \
        const T eta_minus = (T)job->eta_minus;                               \
        const T eta_plus = (T)job->eta_plus;                                 \
        const T step_size_min = (T)job->step_size_min;                       \
        const T step_size_max = (T)job->step_size_max;                       \
        const T initial_step_size = (T)job->initial_step_size;               \
        const T first_step = TORCH_FLAG(T, job->first_step);                 \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = TORCH_GRAD(T, g[i], p[i]);                        \
            T s = TORCH_SIGN(T, grad * prev[i]);                             \
            s = s > 0 ? eta_plus : s;                                        \
            s = s < 0 ? eta_minus : s;                                       \
            s = s == 0 ? (T)1 : s;                                           \
            const T stored = step_size[i];                                   \
            T size = (TORCH_ON(first_step) ? initial_step_size : stored) * s; \
            size = size > step_size_min ? size : step_size_min;              \
            size = size < step_size_max ? size : step_size_max;              \
            step_size[i] = size;                                             \
            const T kept = s == eta_minus ? (T)0 : grad;                     \
            p[i] = TORCH_FMA(-TORCH_SIGN(T, kept), size, p[i]);              \
            prev[i] = kept;                                                  \
        }                                                                    \
    }

RPROP_DEFINE_KERNEL(rprop_kernel_f32, float)
RPROP_DEFINE_KERNEL(rprop_kernel_f64, double)

static optimd_status rprop_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = torch_check_step(
        host, args, RPROP_HP_COUNT, rprop_slots, RPROP_SLOT_COUNT,
        TORCH_SLOT_BIT(RPROP_SLOT_PREV) | TORCH_SLOT_BIT(RPROP_SLOT_STEP_SIZE));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    rprop_job job = {
        .base = torch_job_base_make(args, hp[RPROP_HP_MAXIMIZE], 0.0),
        .prev = args->slots[RPROP_SLOT_PREV].data,
        .step_size = args->slots[RPROP_SLOT_STEP_SIZE].data,
        .eta_minus = hp[RPROP_HP_ETA_MINUS],
        .eta_plus = hp[RPROP_HP_ETA_PLUS],
        .step_size_min = hp[RPROP_HP_STEP_SIZE_MIN],
        .step_size_max = hp[RPROP_HP_STEP_SIZE_MAX],
        .initial_step_size = hp[RPROP_HP_LR],
        .first_step = args->step == 1,
    };
    return torch_run_kernel(host, args,
                            (torch_kernel_pair){rprop_kernel_f32, rprop_kernel_f64}, &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("rprop", "1.0.0", "Rprop, as torch.optim.Rprop 1.13",
                            rprop_hparams, rprop_slots, rprop_check_hparams, rprop_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
