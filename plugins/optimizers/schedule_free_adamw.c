/*
 * Schedule-Free AdamW (Defazio et al. 2024, arXiv:2405.15682), the form of
 * facebookresearch/schedule_free's AdamWScheduleFreeReference (z, x and v
 * kept explicitly). The parameter the client holds, and takes gradients
 * at, is y. With k = t - 1 (t the parameter's step count) and lr the
 * scheduled lr the host passes:
 *
 *   lr_k    = lr * min(1, (k + 1) / warmup_steps) * sqrt(1 - beta2^(k+1))
 *   lr_max  = max(lr_max, lr_k)
 *   w       = (k + 1)^r * lr_max^weight_lr_power
 *   weight_sum += w;   c = w / weight_sum  (0 when weight_sum is 0)
 *   z = z - lr_k * wd * y                     (decay at y, the default)
 *   v = beta2 * v + (1 - beta2) * g^2
 *   z = z - lr_k * g / (sqrt(v) + eps)
 *   x = (1 - c) * x + c * z
 *   y = (1 - beta1) * z + beta1 * x           (written back to the parameter)
 *
 * z and x start equal to the parameter: the host zero-fills slots, so the
 * first step (t == 1) copies y into both before updating.
 *
 * x is the point to evaluate at (the reference's optimizer.eval()); it is
 * state, not the parameter: a client reads it with the `state` op (slot
 * "x"). lr_max and weight_sum are kept per parameter in f64 scalar slots
 * (the reference keeps them, and k, per parameter group); they grow only on
 * the parameter's own steps, as the host's step count does. No lr schedule
 * is needed; one given to the session scales lr_k all the same.
 */
#include "beyond_support.h"

enum sf_hparam_index {
    SF_HP_LR,
    SF_HP_BETA1,
    SF_HP_BETA2,
    SF_HP_EPS,
    SF_HP_WEIGHT_DECAY,
    SF_HP_WARMUP_STEPS,
    SF_HP_R,
    SF_HP_WEIGHT_LR_POWER,
    SF_HP_COUNT
};

static const optimd_hparam_def sf_hparams[SF_HP_COUNT] = {
    [SF_HP_LR] = TORCH_HP_LR(0.0025),
    [SF_HP_BETA1] = PLUG_HP_FLOAT("beta1", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, 0.0, 1.0,
                                  0.9, "Interpolation weight of x in y (betas[0])."),
    [SF_HP_BETA2] = TORCH_HP_BETA2,
    [SF_HP_EPS] = TORCH_HP_EPS(1e-8, "Added to sqrt(v)."),
    [SF_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT("weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE,
                                         0.0, "Decoupled weight decay, taken at y, applied to z."),
    [SF_HP_WARMUP_STEPS] = PLUG_HP_INT("warmup_steps", OPTIMD_HP_MUTABLE, 0.0, 1e15, 0.0,
                                       "Steps of linear lr warmup; 0: none."),
    [SF_HP_R] = PLUG_HP_FLOAT("r", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.0,
                              "Polynomial weighting of the average: weight (k+1)^r."),
    [SF_HP_WEIGHT_LR_POWER] = PLUG_HP_FLOAT("weight_lr_power", OPTIMD_HP_MUTABLE, 0.0,
                                            PLUG_HP_LARGE, 2.0,
                                            "Weight of the average grows as lr_max^power."),
};

enum sf_slot_index {
    SF_SLOT_Z,
    SF_SLOT_EXP_AVG_SQ,
    SF_SLOT_X,
    SF_SLOT_LR_MAX,
    SF_SLOT_WEIGHT_SUM,
    SF_SLOT_COUNT
};

static const optimd_slot_def sf_slots[SF_SLOT_COUNT] = {
    [SF_SLOT_Z] = TORCH_SLOT("z", "The SGD-like iterate z."),
    [SF_SLOT_EXP_AVG_SQ] = TORCH_SLOT("exp_avg_sq", "Second moment (EMA of the squared gradient)."),
    [SF_SLOT_X] = TORCH_SLOT("x", "The averaged iterate x: the weights to evaluate with."),
    [SF_SLOT_LR_MAX] = PLUG_SLOT("lr_max", OPTIMD_SLOT_SCALAR, OPTIMD_DTYPE_F64, NULL,
                                 "Largest warmed-up lr so far."),
    [SF_SLOT_WEIGHT_SUM] = PLUG_SLOT("weight_sum", OPTIMD_SLOT_SCALAR, OPTIMD_DTYPE_F64, NULL,
                                     "Sum of the averaging weights so far."),
};

PLUG_DEFINE_HPARAM_CHECK(sf_check_hparams, "schedule_free_adamw", sf_hparams)

typedef struct sf_job {
    void *y;
    const void *grad;
    void *z, *v, *x;
    double first;
    double neg_lr, neg_lr_wd;
    double beta2, one_minus_beta2, eps;
    double c;
    double beta1, one_minus_beta1;
} sf_job;

#define SF_DEFINE_KERNEL(name, T)                                            \
    static inline __attribute__((always_inline)) void name##_loop(           \
        const sf_job *job, int64_t begin, int64_t end, T *restrict y,        \
        const T *restrict g, T *restrict z, T *restrict v, T *restrict x)    \
    {                                                                        \
        const T first = TORCH_FLAG(T, job->first != 0.0);                    \
        const T neg_lr = (T)job->neg_lr, neg_lr_wd = (T)job->neg_lr_wd;      \
        const T beta2 = (T)job->beta2, one_minus_beta2 = (T)job->one_minus_beta2; \
        const T eps = (T)job->eps, c = (T)job->c;                            \
        const T beta1 = (T)job->beta1, one_minus_beta1 = (T)job->one_minus_beta1; \
        for (int64_t i = begin; i < end; i++) {                              \
            const T yi = y[i], gi = g[i];                                    \
            T zi = TORCH_ON(first) ? yi : z[i];                              \
            const T xi = TORCH_ON(first) ? yi : x[i];                        \
            zi = TORCH_FMA(neg_lr_wd, yi, zi);                               \
            const T vi = TORCH_EMA_SQ(v[i], gi, beta2, one_minus_beta2);     \
            zi = zi + (neg_lr * gi) / (TORCH_SQRT(vi) + eps);                \
            const T xn = TORCH_FMA(c, zi - xi, xi);                          \
            v[i] = vi;                                                       \
            z[i] = zi;                                                       \
            x[i] = xn;                                                       \
            y[i] = TORCH_FMA(beta1, xn, one_minus_beta1 * zi);               \
        }                                                                    \
    }                                                                        \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        const sf_job *job = user;                                            \
        name##_loop(job, begin, end, job->y, job->grad, job->z, job->v, job->x); \
    }

SF_DEFINE_KERNEL(sf_kernel_f32, float)
SF_DEFINE_KERNEL(sf_kernel_f64, double)

static optimd_status sf_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = beyond_check_step(
        host, args, SF_HP_COUNT, sf_slots, SF_SLOT_COUNT,
        TORCH_SLOT_BIT(SF_SLOT_Z) | TORCH_SLOT_BIT(SF_SLOT_EXP_AVG_SQ) |
            TORCH_SLOT_BIT(SF_SLOT_X) | TORCH_SLOT_BIT(SF_SLOT_LR_MAX) |
            TORCH_SLOT_BIT(SF_SLOT_WEIGHT_SUM));
    if (st != OPTIMD_OK) return st;
    st = sf_check_hparams(host, args->hparams, args->n_hparams);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double k1 = (double)args->step; /* k + 1 */
    const double warmup = hp[SF_HP_WARMUP_STEPS];
    const double sched = k1 - 1.0 < warmup ? k1 / warmup : 1.0;
    const double beta2 = hp[SF_HP_BETA2];
    const double lr = hp[SF_HP_LR] * sched * sqrt(1.0 - pow(beta2, k1));
    double *lr_max = args->slots[SF_SLOT_LR_MAX].data;
    double *weight_sum = args->slots[SF_SLOT_WEIGHT_SUM].data;
    if (args->step == 1) *lr_max = *weight_sum = 0.0;
    if (lr > *lr_max) *lr_max = lr;
    const double weight = pow(k1, hp[SF_HP_R]) * pow(*lr_max, hp[SF_HP_WEIGHT_LR_POWER]);
    *weight_sum += weight;
    const double c = *weight_sum != 0.0 ? weight / *weight_sum : 0.0;
    const double beta1 = hp[SF_HP_BETA1];
    sf_job job = {
        .y = args->param->data,
        .grad = args->grad->data,
        .z = args->slots[SF_SLOT_Z].data,
        .v = args->slots[SF_SLOT_EXP_AVG_SQ].data,
        .x = args->slots[SF_SLOT_X].data,
        .first = args->step == 1 ? 1.0 : 0.0,
        .neg_lr = -lr,
        .neg_lr_wd = -(lr * hp[SF_HP_WEIGHT_DECAY]),
        .beta2 = beta2,
        .one_minus_beta2 = 1.0 - beta2,
        .eps = hp[SF_HP_EPS],
        .c = c,
        .beta1 = beta1,
        .one_minus_beta1 = 1.0 - beta1,
    };
    return torch_run_kernel(host, args, (torch_kernel_pair){sf_kernel_f32, sf_kernel_f64}, &job);
}

PLUG_DEFINE_OPTIMIZER_FLAGS("schedule_free_adamw", "1.0.0",
                            "Schedule-Free AdamW (parameter = y; evaluate at state slot x)", sf_hparams,
                            sf_slots, sf_check_hparams, sf_step,
                            OPTIMD_OPTIMIZER_ELEMENTWISE);
