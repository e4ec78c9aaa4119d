/*
 * Adagrad on row-sparse gradients: the sparse-gradient branch of
 * torch.optim.Adagrad of torch 1.13.1 (`_single_tensor_adagrad` with
 * grad.is_sparse), bit for bit on CPU for f32 and f64.
 *
 * The daemon gathers the rows a row-sparse gradient names (coalesced) and
 * calls this step on them. torch's sparse branch rounds differently from
 * its dense one (adagrad.c): the square is rounded before it is added, and
 * the quotient before it is scaled (t = float32 step count):
 *
 *   g = maximize ? -g : g
 *   clr = lr / (1 + (t - 1) * lr_decay)                      (double)
 *   sum = sum + g * g                  state_sum.add_(sparse g.pow(2))
 *   std = sqrt(sum) + eps              the masked sum's values
 *   p = fma(-clr, g / std, p)          param.add_(sparse g / std, alpha=-clr)
 *
 * except that for a 1-D parameter and a gradient naming one element the
 * last add rounds twice, p + (-clr) * (g / std): torch takes the coalesced
 * path of dense.add_(sparse) for a sparse tensor with one entry (see
 * sparse_sgd.c; the sum's add has alpha 1, where both paths agree).
 *
 * torch refuses weight_decay with sparse gradients, so there is none.
 *
 * torch fills `sum` with initial_accumulator_value for every row when the
 * optimizer is built; the daemon zero-fills the slot at the parameter's
 * first step and gathers only the rows a step names, so a row first named
 * at step 7 arrives holding 0. A stored 0 therefore stands for "never
 * touched, still the initial value": once a row is touched its sum is at
 * least the initial value plus a square, never 0 when the initial value is
 * positive, and when the initial value is 0 the two readings agree. So
 * the slot holds torch's exact `sum` for every touched row (and 0 for the
 * others), and initial_accumulator_value is immutable, as changing it in
 * torch has no effect after construction.
 */
#include "torch_ops.h"

enum sparse_adagrad_hparam_index {
    SPARSE_ADAGRAD_HP_LR,
    SPARSE_ADAGRAD_HP_LR_DECAY,
    SPARSE_ADAGRAD_HP_INITIAL_ACCUMULATOR_VALUE,
    SPARSE_ADAGRAD_HP_EPS,
    SPARSE_ADAGRAD_HP_MAXIMIZE,
    SPARSE_ADAGRAD_HP_COUNT
};

static const optimd_hparam_def sparse_adagrad_hparams[SPARSE_ADAGRAD_HP_COUNT] = {
    [SPARSE_ADAGRAD_HP_LR] = TORCH_HP_LR(1e-2),
    [SPARSE_ADAGRAD_HP_LR_DECAY] = PLUG_HP_FLOAT(
        "lr_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 0.0,
        "Step t uses lr / (1 + (t - 1) * lr_decay)."),
    [SPARSE_ADAGRAD_HP_INITIAL_ACCUMULATOR_VALUE] = PLUG_HP_FLOAT(
        "initial_accumulator_value", 0, 0.0, PLUG_HP_LARGE, 0.0,
        "Starting value of every row's sum of squared gradients."),
    [SPARSE_ADAGRAD_HP_EPS] = TORCH_HP_EPS(1e-10, "Added to the denominator."),
    [SPARSE_ADAGRAD_HP_MAXIMIZE] = TORCH_HP_MAXIMIZE,
};

enum sparse_adagrad_slot_index { SPARSE_ADAGRAD_SLOT_SUM, SPARSE_ADAGRAD_SLOT_COUNT };

static const optimd_slot_def sparse_adagrad_slots[SPARSE_ADAGRAD_SLOT_COUNT] = {
    [SPARSE_ADAGRAD_SLOT_SUM] = TORCH_SLOT(
        "sum", "Sum of squared gradients plus the initial value; 0 in rows never touched."),
};

PLUG_DEFINE_HPARAM_CHECK(sparse_adagrad_check_hparams, "sparse_adagrad",
                         sparse_adagrad_hparams)

/* A sparse tensor with fewer than two entries is flagged coalesced in
 * torch, and for 1-D values the coalesced dense.add_(sparse, alpha) rounds
 * twice (see the top); for the gathered rows of a 1-D parameter that is
 * exactly one row. */
static inline bool sparse_adagrad_add_rounds_twice(const optimd_tensor *param)
{
    return param->ndim == 1 && param->numel == 1;
}

typedef struct sparse_adagrad_job {
    torch_job_base base;
    void *sum;
    double initial_sum;
    double neg_clr;
    double eps;
    bool two_roundings;
} sparse_adagrad_job;

#define SPARSE_ADAGRAD_DEFINE_KERNEL(name, T)                                \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, sparse_adagrad_job);                        \
        (void)l2_factor;                                                     \
        (void)l2_on;                                                         \
        T *restrict sum = job->sum;                                          \
        const T initial_sum = (T)job->initial_sum;                           \
        const T neg_clr = (T)job->neg_clr;                                   \
        const T eps = (T)job->eps;                                           \
        const T two_roundings = TORCH_FLAG(T, job->two_roundings);           \
        for (int64_t i = begin; i < end; i++) {                              \
            const T grad = g[i] * grad_sign;                                 \
            const T stored = sum[i];                                         \
            const T before = stored == (T)0 ? initial_sum : stored;          \
            const T s = before + grad * grad;                                \
            sum[i] = s;                                                      \
            const T std = TORCH_SQRT(s) + eps;                               \
            const T q = grad / std;                                          \
            const T fused = TORCH_FMA(neg_clr, q, p[i]);                     \
            const T rounded = p[i] + neg_clr * q;                            \
            p[i] = TORCH_ON(two_roundings) ? rounded : fused;                \
        }                                                                    \
    }

SPARSE_ADAGRAD_DEFINE_KERNEL(sparse_adagrad_kernel_f32, float)
SPARSE_ADAGRAD_DEFINE_KERNEL(sparse_adagrad_kernel_f64, double)

static optimd_status sparse_adagrad_step(const optimd_host *host,
                                         const optimd_step_args *args)
{
    optimd_status st = torch_check_step(host, args, SPARSE_ADAGRAD_HP_COUNT,
                                        sparse_adagrad_slots, SPARSE_ADAGRAD_SLOT_COUNT,
                                        TORCH_SLOT_BIT(SPARSE_ADAGRAD_SLOT_SUM));
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const double t = torch_f32_step_count(args->step);
    /* Same double expression as torch's Python code. */
    const double clr =
        hp[SPARSE_ADAGRAD_HP_LR] / (1.0 + (t - 1.0) * hp[SPARSE_ADAGRAD_HP_LR_DECAY]);
    sparse_adagrad_job job = {
        .base = torch_job_base_make(args, hp[SPARSE_ADAGRAD_HP_MAXIMIZE], 0.0),
        .sum = args->slots[SPARSE_ADAGRAD_SLOT_SUM].data,
        .initial_sum = hp[SPARSE_ADAGRAD_HP_INITIAL_ACCUMULATOR_VALUE],
        .neg_clr = -clr,
        .eps = hp[SPARSE_ADAGRAD_HP_EPS],
        .two_roundings = sparse_adagrad_add_rounds_twice(args->param),
    };
    return torch_run_kernel(
        host, args,
        (torch_kernel_pair){sparse_adagrad_kernel_f32, sparse_adagrad_kernel_f64}, &job);
}

PLUG_DEFINE_OPTIMIZER("sparse_adagrad", "1.0.0",
                      "Adagrad for row-sparse gradients, as torch.optim.Adagrad 1.13's sparse path",
                      sparse_adagrad_hparams, sparse_adagrad_slots,
                      sparse_adagrad_check_hparams, sparse_adagrad_step);
