/*
 * What the optimizers beyond torch 1.13 that need more than one elementwise
 * pass share (lamb, lars, adafactor, schedule_free_adamw, muon):
 *
 *  - a sum over a tensor (norms, RMS) that is split across the host's
 *    workers and still gives the same bits however the host cuts the range:
 *    the range is cut into fixed blocks that depend only on the tensor's
 *    size, each block is summed in order (in double), and the block sums
 *    are added in block order on the calling thread;
 *  - the element count of ABI 1.1's factored slots (ROWS / COLS), which
 *    plug_check_step_args_defs does not know, so step arguments are
 *    checked here against the parameter's shape.
 */
#ifndef OPTIMD_PLUGINS_BEYOND_SUPPORT_H
#define OPTIMD_PLUGINS_BEYOND_SUPPORT_H

#include "torch_ops.h"

#include <string.h>

/* Most accumulators one reduction carries (sums of squares of p and of the
 * update, ...). */
#define BEYOND_MAX_ACC 4

/* Adds the contributions of units [begin, end) to acc[0 .. k). */
typedef void (*beyond_sum_fn)(void *ctx, int64_t begin, int64_t end, double *acc);

typedef struct beyond_sum_job {
    beyond_sum_fn fn;
    void *ctx;
    int64_t n, block;
    int k;
    double *partial;         /* [n_blocks][k] */
} beyond_sum_job;

static inline void beyond_sum_blocks(void *user, int64_t first, int64_t last)
{
    const beyond_sum_job *job = user;
    for (int64_t b = first; b < last; b++) {
        double *acc = job->partial + b * job->k;
        for (int i = 0; i < job->k; i++) acc[i] = 0.0;
        int64_t begin = b * job->block;
        int64_t end = begin + job->block < job->n ? begin + job->block : job->n;
        job->fn(job->ctx, begin, end, acc);
    }
}

/*
 * Scratch for the block sums of a reduction (one scratch block), or NULL
 * after recording the error.
 *
 * beyond_sum: out[0 .. k) = the sums `fn` produces over units [0, n), blocks of `block`
 * units each. `fn` may also write elementwise results for its own units
 * (e.g. moments updated on the way); it must not depend on other units.
 * `cost` is the number of elements one unit stands for (1 for flat
 * elementwise work, a row's length when units are rows), to decide whether
 * workers are worth it. Takes one scratch block.
 */
static inline double *beyond_sum_scratch(const optimd_host *host, int64_t n, int64_t block,
                                         int k)
{
    int64_t n_blocks = n > 0 ? (n + block - 1) / block : 1;
    double *partial = host->scratch(host->call, (size_t)n_blocks * (size_t)k * sizeof(double));
    if (partial == NULL) plug_fail(host, OPTIMD_ERR_NOMEM, "no scratch memory for a reduction");
    return partial;
}

/* beyond_sum with its scratch taken beforehand (beyond_sum_scratch with the
 * same n, block and k), for steps that must not fail once they have
 * written something. */
static inline optimd_status beyond_sum_with(const optimd_host *host, int64_t n, int64_t block,
                                            int64_t cost, int k, beyond_sum_fn fn, void *ctx,
                                            double *partial, double *out)
{
    for (int i = 0; i < k; i++) out[i] = 0.0;
    if (n <= 0) return OPTIMD_OK;
    int64_t n_blocks = (n + block - 1) / block;
    beyond_sum_job job = {.fn = fn, .ctx = ctx, .n = n, .block = block, .k = k,
                          .partial = partial};
    if (n_blocks > 1 && n * cost > PLUG_PARALLEL_MIN_NUMEL && PLUG_HOST_HAS(host, parallel_for)) {
        optimd_status st = host->parallel_for(host->call, n_blocks, 1, beyond_sum_blocks, &job);
        if (st != OPTIMD_OK) return st;
    } else {
        beyond_sum_blocks(&job, 0, n_blocks);
    }
    for (int64_t b = 0; b < n_blocks; b++)
        for (int i = 0; i < k; i++) out[i] += partial[b * k + i];
    return OPTIMD_OK;
}

static inline optimd_status beyond_sum(const optimd_host *host, int64_t n, int64_t block,
                                       int64_t cost, int k, beyond_sum_fn fn, void *ctx,
                                       double *out)
{
    double *partial = beyond_sum_scratch(host, n, block, k);
    if (partial == NULL) return OPTIMD_ERR_NOMEM;
    return beyond_sum_with(host, n, block, cost, k, fn, ctx, partial, out);
}

/* Block size, in units, of a reduction whose units stand for `cost`
 * elements each: about PLUG_PARALLEL_GRAIN elements per block. */
static inline int64_t beyond_block(int64_t cost)
{
    return cost >= PLUG_PARALLEL_GRAIN ? 1 : PLUG_PARALLEL_GRAIN / (cost > 0 ? cost : 1);
}

/* Runs elementwise `fn` over units [0, n) (rows of `cost` elements, or
 * single elements with cost 1), on workers when the work is large. */
static inline optimd_status beyond_for_each(const optimd_host *host, int64_t n, int64_t cost,
                                            optimd_range_fn fn, void *ctx)
{
    if (n <= 0) return OPTIMD_OK;
    if (n * cost <= PLUG_PARALLEL_MIN_NUMEL || !PLUG_HOST_HAS(host, parallel_for)) {
        fn(ctx, 0, n);
        return OPTIMD_OK;
    }
    return host->parallel_for(host->call, n, beyond_block(cost), fn, ctx);
}

/* Elements of a slot declared with `def` for parameter `param`
 * (ABI 1.1 slot shapes included). */
static inline int64_t beyond_slot_numel(const optimd_slot_def *def, const optimd_tensor *param)
{
    switch (def->shape) {
    case OPTIMD_SLOT_SCALAR: return 1;
    case OPTIMD_SLOT_ROWS:
    case OPTIMD_SLOT_COLS:
        if (param->ndim < 2) return def->shape == OPTIMD_SLOT_ROWS ? param->numel : 1;
        {
            int64_t n = 1;
            for (uint32_t i = 0; i + 2 < param->ndim; i++) n *= param->shape[i];
            return n * param->shape[def->shape == OPTIMD_SLOT_ROWS ? param->ndim - 2
                                                                   : param->ndim - 1];
        }
    default: return param->numel;
    }
}

/*
 * torch_check_step for plugins with ROWS / COLS slots: the call matches the
 * plugin's tables, the parameter's shape is consistent with its element
 * count, every present slot has its declared dtype and the element count
 * its shape implies, and the slots in `required` are present.
 */
static inline optimd_status beyond_check_step(const optimd_host *host,
                                              const optimd_step_args *args,
                                              uint32_t n_hparams, const optimd_slot_def *slots,
                                              uint32_t n_slots, uint32_t required)
{
    if (args == NULL || args->struct_size < sizeof(optimd_step_args))
        return plug_fail(host, OPTIMD_ERR_INVALID, "step arguments missing or too small");
    if (args->n_hparams != n_hparams || args->hparams == NULL)
        return plug_fail(host, OPTIMD_ERR_INVALID, "expected %u hyperparameters, got %u",
                         n_hparams, args->n_hparams);
    if (args->step == 0)
        return plug_fail(host, OPTIMD_ERR_INVALID, "step counter must start at 1");
    if (!plug_tensor_ok(args->param) || !plug_tensor_ok(args->grad))
        return plug_fail(host, OPTIMD_ERR_INVALID, "parameter or gradient tensor is malformed");
    const optimd_tensor *param = args->param;
    if (!plug_dtype_supported(param->dtype))
        return plug_fail(host, OPTIMD_ERR_DTYPE, "unsupported dtype %u", param->dtype);
    if (args->grad->dtype != param->dtype || args->grad->numel != param->numel)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "gradient dtype or size differs from the parameter");
    if (param->ndim > 8 || (param->ndim > 0 && param->shape == NULL))
        return plug_fail(host, OPTIMD_ERR_INVALID, "parameter shape is malformed");
    int64_t numel = 1;
    for (uint32_t i = 0; i < param->ndim; i++) {
        if (param->shape[i] < 0)
            return plug_fail(host, OPTIMD_ERR_INVALID, "parameter shape is malformed");
        numel *= param->shape[i];
    }
    if (numel != param->numel)
        return plug_fail(host, OPTIMD_ERR_INVALID, "parameter shape does not match its size");
    if (args->n_slots != n_slots || (n_slots > 0 && args->slots == NULL))
        return plug_fail(host, OPTIMD_ERR_INVALID, "expected %u state slots, got %u", n_slots,
                         args->n_slots);
    for (uint32_t i = 0; i < n_slots; i++) {
        const optimd_tensor *slot = &args->slots[i];
        int64_t want = beyond_slot_numel(&slots[i], param);
        if (slot->data == NULL) {
            if ((required >> i & 1u) && want > 0)
                return plug_fail(host, OPTIMD_ERR_INVALID, "state slot '%s' is missing",
                                 slots[i].key);
            continue;
        }
        if (!plug_tensor_ok(slot) || slot->dtype != plug_slot_dtype(&slots[i], param->dtype) ||
            slot->numel != want)
            return plug_fail(host, OPTIMD_ERR_INVALID,
                             "state slot '%s' does not match its declaration", slots[i].key);
    }
    return OPTIMD_OK;
}

#endif /* OPTIMD_PLUGINS_BEYOND_SUPPORT_H */
