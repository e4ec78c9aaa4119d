/*
 * Plain SGD on row-sparse gradients: torch.optim.SGD of torch 1.13.1 with
 * momentum 0 and no weight decay on a sparse gradient, whose whole update
 * is param.add_(grad, alpha=-lr), bit for bit on CPU for f32 and f64.
 *
 * How torch's CPU dense.add_(sparse, alpha) rounds depends on the shape
 * (measured against torch 1.13.1, tests/parity/sparse_parity.py): rows
 * with more than one element (a hybrid sparse tensor), and a 1-D
 * parameter's gradient naming two or more elements, round once,
 * fma(alpha, g, p); a 1-D parameter's gradient naming one element (torch
 * marks a sparse tensor with fewer than two entries coalesced and takes
 * its coalesced path) rounds twice, p + alpha * g. So:
 *
 *   d = maximize ? -g : g
 *   p = (1-D and one row) ? p + (-lr) * d : fma(-lr, d, p)
 *
 * No state. One known difference: torch's SGD does not coalesce the
 * gradient, so a row named twice in one step is updated twice, fma after
 * fma, while the daemon sums the two values first and updates once (a few
 * ulp apart). Rows named once are bit-identical. A dense gradient is taken
 * as one naming every row.
 */
#include "torch_ops.h"

enum sparse_sgd_hparam_index {
    SPARSE_SGD_HP_LR,
    SPARSE_SGD_HP_MAXIMIZE,
    SPARSE_SGD_HP_COUNT
};

static const optimd_hparam_def sparse_sgd_hparams[SPARSE_SGD_HP_COUNT] = {
    /* torch has no default lr for SGD, so neither do we. */
    [SPARSE_SGD_HP_LR] = PLUG_HP_FLOAT("lr", OPTIMD_HP_REQUIRED | OPTIMD_HP_MUTABLE,
                                       0.0, PLUG_HP_LARGE, 0.0, "Learning rate."),
    [SPARSE_SGD_HP_MAXIMIZE] = TORCH_HP_MAXIMIZE,
};

PLUG_DEFINE_HPARAM_CHECK(sparse_sgd_check_hparams, "sparse_sgd", sparse_sgd_hparams)

/* A sparse tensor with fewer than two entries is flagged coalesced in
 * torch, and for 1-D values the coalesced dense.add_(sparse, alpha) rounds
 * twice (see the top); for the gathered rows of a 1-D parameter that is
 * exactly one row. */
static inline bool sparse_sgd_add_rounds_twice(const optimd_tensor *param)
{
    return param->ndim == 1 && param->numel == 1;
}

typedef struct sparse_sgd_job {
    torch_job_base base;
    double neg_lr;
    bool two_roundings;      /* torch's coalesced 1-D path: see the top */
} sparse_sgd_job;

#define SPARSE_SGD_DEFINE_KERNEL(name, T)                                    \
    PLUG_KERNEL static void name(void *user, int64_t begin, int64_t end)     \
    {                                                                        \
        TORCH_KERNEL_PROLOGUE(T, sparse_sgd_job);                            \
        (void)l2_factor;                                                     \
        (void)l2_on;                                                         \
        const T neg_lr = (T)job->neg_lr;                                     \
        const T two_roundings = TORCH_FLAG(T, job->two_roundings);           \
        for (int64_t i = begin; i < end; i++) {                              \
            const T d = g[i] * grad_sign;                                    \
            const T fused = TORCH_FMA(neg_lr, d, p[i]);                      \
            const T rounded = p[i] + neg_lr * d;                             \
            p[i] = TORCH_ON(two_roundings) ? rounded : fused;                \
        }                                                                    \
    }

SPARSE_SGD_DEFINE_KERNEL(sparse_sgd_kernel_f32, float)
SPARSE_SGD_DEFINE_KERNEL(sparse_sgd_kernel_f64, double)

static optimd_status sparse_sgd_step(const optimd_host *host,
                                     const optimd_step_args *args)
{
    optimd_status st = torch_check_step(host, args, SPARSE_SGD_HP_COUNT, NULL, 0, 0);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    sparse_sgd_job job = {
        .base = torch_job_base_make(args, hp[SPARSE_SGD_HP_MAXIMIZE], 0.0),
        .neg_lr = -hp[SPARSE_SGD_HP_LR],
        .two_roundings = sparse_sgd_add_rounds_twice(args->param),
    };
    return torch_run_kernel(
        host, args, (torch_kernel_pair){sparse_sgd_kernel_f32, sparse_sgd_kernel_f64},
        &job);
}

/* PLUG_DEFINE_OPTIMIZER takes a slot array, and C has no empty arrays. */
static const optimd_optimizer sparse_sgd_optimizer = {
    .struct_size = sizeof(optimd_optimizer),
    .n_hparams = SPARSE_SGD_HP_COUNT,
    .hparams = sparse_sgd_hparams,
    .n_slots = 0,
    .dtypes = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64),
    .slots = NULL,
    .check_hparams = sparse_sgd_check_hparams,
    .step = sparse_sgd_step,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_OPTIMIZER,
    .id = "sparse_sgd",
    .version = "1.0.0",
    .description = "Plain SGD (no momentum) for row-sparse gradients, as torch.optim.SGD 1.13",
    .optimizer = &sparse_sgd_optimizer,
    .scheduler = NULL,
};
