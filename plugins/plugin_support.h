/*
 * Helpers shared by the plugins shipped with optimd.
 *
 * Every plugin is a single C file that includes this header; the functions
 * are `static inline`, so each .so gets its own private copy and still
 * exports nothing but `optimd_plugin`. Nothing here keeps state between
 * calls: plugins have no global mutable state (docs/abi.md).
 */
#ifndef OPTIMD_PLUGIN_SUPPORT_H
#define OPTIMD_PLUGIN_SUPPORT_H

#include <optimd/plugin.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Tensors up to this many elements are updated on the calling thread:
 * handing them to the worker pool costs more than it saves. */
#define PLUG_PARALLEL_MIN_NUMEL ((int64_t)65536)

/* Smallest chunk handed to one worker (a multiple of 16, so chunk borders
 * stay vector-aligned for the SIMD kernels that will come later). */
#define PLUG_PARALLEL_GRAIN ((int64_t)16384)

/* Marks a kernel to be compiled twice, for x86-64-v3 (AVX2 + FMA: fmaf()
 * becomes one instruction and loops vectorise) and for the baseline, with
 * the dynamic loader picking one at load time. Results are bit-identical
 * either way: fma, sqrt and the four operations are correctly rounded on
 * every path, and the plugins build with -ffp-contract=off. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PLUG_KERNEL __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PLUG_KERNEL
#endif

/* Upper bound of "unbounded" numeric hyperparameters. The ABI wants finite
 * ranges; torch itself has no upper limit on lr, eps, weight_decay, ... */
#define PLUG_HP_LARGE 1e6

/* Declaration helpers, so that hyperparameter tables read as tables. */
#define PLUG_HP_FLOAT(key_, flags_, min_, max_, default_, doc_)              \
    {                                                                        \
        .struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_FLOAT,   \
        .flags = (flags_), .key = (key_), .doc = (doc_), .min = (min_),      \
        .max = (max_), .default_value = (default_)                          \
    }
#define PLUG_HP_INT(key_, flags_, min_, max_, default_, doc_)                \
    {                                                                        \
        .struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_INT,     \
        .flags = (flags_), .key = (key_), .doc = (doc_), .min = (min_),      \
        .max = (max_), .default_value = (default_)                          \
    }
#define PLUG_HP_BOOL(key_, flags_, default_, doc_)                           \
    {                                                                        \
        .struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_BOOL,    \
        .flags = (flags_), .key = (key_), .doc = (doc_), .min = 0.0,         \
        .max = 1.0, .default_value = (default_)                             \
    }

#define PLUG_ARRAY_LEN(a) ((uint32_t)(sizeof(a) / sizeof((a)[0])))

/* Nonzero when the host table is large enough to contain `member`. */
#define PLUG_HOST_HAS(host, member)                                          \
    ((host) != NULL &&                                                       \
     (host)->struct_size >= offsetof(optimd_host, member) +                  \
                                sizeof((host)->member) &&                    \
     (host)->member != NULL)

/* Records a formatted error text with the host and returns `status`, so a
 * failing callback can end with `return plug_fail(host, ..., "...")`. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline optimd_status plug_fail(const optimd_host *host,
                                      optimd_status status, const char *fmt,
                                      ...)
{
    if (PLUG_HOST_HAS(host, set_error)) {
        /* The host keeps at most 255 bytes of it anyway. */
        char text[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof text, fmt, ap);
        va_end(ap);
        host->set_error(host->call, text);
    }
    return status;
}

static inline bool plug_dtype_supported(uint32_t dtype)
{
    return dtype == OPTIMD_DTYPE_F32 || dtype == OPTIMD_DTYPE_F64;
}

/* Runs `fn` over [0, numel): on the calling thread for small tensors (or a
 * host without parallel_for), on the host's workers otherwise. Callers pass
 * elementwise kernels, so how the range is split never changes a result. */
static inline optimd_status plug_for_each_range(const optimd_host *host,
                                                int64_t numel,
                                                optimd_range_fn fn,
                                                void *ctx)
{
    if (numel <= 0) return OPTIMD_OK;
    if (numel <= PLUG_PARALLEL_MIN_NUMEL || !PLUG_HOST_HAS(host, parallel_for)) {
        fn(ctx, 0, numel);
        return OPTIMD_OK;
    }
    return host->parallel_for(host->call, numel, PLUG_PARALLEL_GRAIN, fn, ctx);
}

static inline bool plug_tensor_ok(const optimd_tensor *t)
{
    return t != NULL && t->struct_size >= sizeof(optimd_tensor) &&
           t->numel >= 0 && (t->data != NULL || t->numel == 0);
}

/*
 * Checks what the host promises about one step call, so that a host bug
 * turns into an error reply instead of a wild write: the argument struct is
 * big enough, the hyperparameter and slot counts are the plugin's own,
 * parameter and gradient share a supported dtype and an element count, and
 * every present slot looks like the parameter. Which slots must be present
 * (enabled_by) is the caller's business.
 */
static inline optimd_status plug_check_step_args(const optimd_host *host,
                                                 const optimd_step_args *args,
                                                 uint32_t n_hparams,
                                                 uint32_t n_slots)
{
    if (args == NULL || args->struct_size < sizeof(optimd_step_args))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "step arguments missing or struct_size too small");
    if (args->n_hparams != n_hparams || args->hparams == NULL)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "expected %u hyperparameters, got %u", n_hparams,
                         args->n_hparams);
    if (args->step == 0)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "step counter must start at 1");
    if (!plug_tensor_ok(args->param) || !plug_tensor_ok(args->grad))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "parameter or gradient tensor is malformed");
    const optimd_tensor *param = args->param;
    if (!plug_dtype_supported(param->dtype))
        return plug_fail(host, OPTIMD_ERR_DTYPE, "unsupported dtype %u",
                         param->dtype);
    if (args->grad->dtype != param->dtype || args->grad->numel != param->numel)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "gradient dtype or size differs from the parameter");
    if (args->n_slots != n_slots || (n_slots > 0 && args->slots == NULL))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "expected %u state slots, got %u", n_slots,
                         args->n_slots);
    for (uint32_t i = 0; i < n_slots; i++) {
        const optimd_tensor *slot = &args->slots[i];
        if (slot->data == NULL) continue; /* disabled slot */
        if (!plug_tensor_ok(slot) || slot->dtype != param->dtype ||
            slot->numel != param->numel)
            return plug_fail(host, OPTIMD_ERR_INVALID,
                             "state slot %u does not match the parameter", i);
    }
    return OPTIMD_OK;
}

/* Common check of a scheduler call. */
static inline optimd_status plug_check_sched_args(const optimd_host *host,
                                                  const optimd_sched_args *args,
                                                  uint32_t n_hparams,
                                                  const double *lr_out)
{
    if (args == NULL || args->struct_size < sizeof(optimd_sched_args) ||
        lr_out == NULL)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "scheduler arguments missing or too small");
    if (args->n_hparams != n_hparams || (n_hparams > 0 && args->hparams == NULL))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "expected %u hyperparameters, got %u", n_hparams,
                         args->n_hparams);
    if (args->epoch < 0)
        return plug_fail(host, OPTIMD_ERR_INVALID, "negative epoch %lld",
                         (long long)args->epoch);
    return OPTIMD_OK;
}

#endif /* OPTIMD_PLUGIN_SUPPORT_H */
