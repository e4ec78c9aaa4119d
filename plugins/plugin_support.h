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

#include <optimd/kernel.h>
#include <optimd/plugin.h>

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The SDK's kernel helpers (optimd/kernel.h), under the names the plugins
 * were written with. plugins/CMakeLists.txt builds ISA-pinned copies by
 * defining OPTIMD_KERNEL_ISA_V3 or OPTIMD_KERNEL_ISA_BASELINE. */
#define PLUG_PARALLEL_MIN_NUMEL OPTIMD_PARALLEL_MIN
#define PLUG_PARALLEL_GRAIN OPTIMD_PARALLEL_GRAIN
#define PLUG_KERNEL OPTIMD_KERNEL

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

/* A state slot declaration; `enabled_by_` is NULL or a bool hparam key. */
#define PLUG_SLOT(key_, shape_, dtype_, enabled_by_, doc_)                   \
    {                                                                        \
        .struct_size = sizeof(optimd_slot_def), .shape = (shape_),           \
        .dtype = (dtype_), .key = (key_), .doc = (doc_),                     \
        .enabled_by = (enabled_by_)                                          \
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

/* Runs `fn` over [0, numel), split across the host's workers when large;
 * callers pass elementwise kernels, so the split never changes a result. */
static inline optimd_status plug_for_each_range(const optimd_host *host,
                                                int64_t numel,
                                                optimd_range_fn fn,
                                                void *ctx)
{
    return optimd_run_ranges(host, numel, fn, ctx);
}

static inline bool plug_tensor_ok(const optimd_tensor *t)
{
    return t != NULL && t->struct_size >= sizeof(optimd_tensor) &&
           t->numel >= 0 && (t->data != NULL || t->numel == 0);
}

/* dtype of a slot of a parameter of dtype `param_dtype`: the declared one,
 * or the parameter's when the declaration says 0. */
static inline uint32_t plug_slot_dtype(const optimd_slot_def *def,
                                       uint32_t param_dtype)
{
    return def != NULL && def->dtype != 0 ? def->dtype : param_dtype;
}

/* Element count of a slot: one for OPTIMD_SLOT_SCALAR, the parameter's
 * otherwise. */
static inline int64_t plug_slot_numel(const optimd_slot_def *def,
                                      int64_t param_numel)
{
    return def != NULL && def->shape == OPTIMD_SLOT_SCALAR ? 1 : param_numel;
}

/*
 * Checks what the host promises about one step call, so that a host bug
 * turns into an error reply instead of a wild write: the argument struct is
 * big enough, the hyperparameter and slot counts are the plugin's own,
 * parameter and gradient share a supported dtype and an element count, and
 * every present slot has the dtype and element count its declaration in
 * `slot_defs` implies (OPTIMD_SLOT_SCALAR: one element; a fixed dtype: that
 * dtype). `slot_defs` NULL means every slot is LIKE_PARAM in the
 * parameter's dtype. Which slots must be present (enabled_by) is the
 * caller's business.
 */
static inline optimd_status plug_check_step_args_defs(
    const optimd_host *host, const optimd_step_args *args, uint32_t n_hparams,
    const optimd_slot_def *slot_defs, uint32_t n_slots)
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
        const optimd_slot_def *def = slot_defs != NULL ? &slot_defs[i] : NULL;
        if (!plug_tensor_ok(slot) ||
            slot->dtype != plug_slot_dtype(def, param->dtype) ||
            slot->numel != plug_slot_numel(def, param->numel))
            return plug_fail(host, OPTIMD_ERR_INVALID,
                             "state slot %u does not match its declaration", i);
    }
    return OPTIMD_OK;
}

/* plug_check_step_args_defs for plugins whose slots are all LIKE_PARAM in
 * the parameter's dtype (sgd, adam, adamw). */
static inline optimd_status plug_check_step_args(const optimd_host *host,
                                                 const optimd_step_args *args,
                                                 uint32_t n_hparams,
                                                 uint32_t n_slots)
{
    return plug_check_step_args_defs(host, args, n_hparams, NULL, n_slots);
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

/* What a scheduler's lr callback checks first: the call itself
 * (plug_check_sched_args), then the values, with the plugin's own
 * check_hparams, so that lr never computes with values the host would
 * have refused. */
static inline optimd_status plug_sched_begin(
    const optimd_host *host, const optimd_sched_args *args, const double *lr_out,
    uint32_t n_hparams,
    optimd_status (*check_hparams)(const optimd_host *, const double *, uint32_t))
{
    optimd_status st = plug_check_sched_args(host, args, n_hparams, lr_out);
    if (st != OPTIMD_OK) return st;
    return check_hparams(host, args->hparams, args->n_hparams);
}

/* Whether `value` lies in the declared range of `def` (false for NaN). */
static inline bool plug_hparam_in_range(const optimd_hparam_def *def, double value)
{
    bool above_min = (def->flags & OPTIMD_HP_MIN_EXCLUSIVE) ? value > def->min
                                                            : value >= def->min;
    bool below_max = (def->flags & OPTIMD_HP_MAX_EXCLUSIVE) ? value < def->max
                                                            : value <= def->max;
    return above_min && below_max;
}

/*
 * The checks every check_hparams starts with: `n` values, as many as the
 * plugin declares in `defs`, each inside its declared range, and every
 * OPTIMD_HP_INT value integral (so casting it to int64_t is defined). The
 * host guarantees all of it for the calls it makes; a plugin's own
 * callbacks check anyway, so that a hand-made call cannot make them
 * misbehave.
 */
static inline optimd_status plug_check_hparam_values(const optimd_host *host,
                                                     const char *plugin_id,
                                                     const optimd_hparam_def *defs,
                                                     uint32_t n_defs,
                                                     const double *values,
                                                     uint32_t n)
{
    if (values == NULL || n != n_defs)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "%s expects %u hyperparameters, got %u", plugin_id,
                         n_defs, n);
    for (uint32_t i = 0; i < n; i++) {
        if (!plug_hparam_in_range(&defs[i], values[i]))
            return plug_fail(
                host, OPTIMD_ERR_INVALID, "%s = %g is outside %c%g, %g%c",
                defs[i].key, values[i],
                (defs[i].flags & OPTIMD_HP_MIN_EXCLUSIVE) ? '(' : '[',
                defs[i].min, defs[i].max,
                (defs[i].flags & OPTIMD_HP_MAX_EXCLUSIVE) ? ')' : ']');
        if (defs[i].type == OPTIMD_HP_INT && values[i] != floor(values[i]))
            return plug_fail(host, OPTIMD_ERR_INVALID,
                             "%s must be an integer, got %g", defs[i].key,
                             values[i]);
    }
    return OPTIMD_OK;
}

/* Defines `name` as the check_hparams of a plugin whose only rules are its
 * declarations `defs_` (plug_check_hparam_values). */
#define PLUG_DEFINE_HPARAM_CHECK(name, plugin_id_, defs_)                    \
    static optimd_status name(const optimd_host *host, const double *hparams, \
                              uint32_t n)                                    \
    {                                                                        \
        return plug_check_hparam_values(host, (plugin_id_), (defs_),         \
                                        PLUG_ARRAY_LEN(defs_), hparams, n);  \
    }

/*
 * The optimizer table and the exported descriptor of a plugin whose step
 * handles f32 and f64 parameters. `hparams_` and `slots_` are the plugin's
 * static arrays (their lengths are taken with PLUG_ARRAY_LEN); `check_`
 * may be NULL. Expands to the plugin's one exported symbol.
 */
#define PLUG_DEFINE_OPTIMIZER(id_, version_, description_, hparams_, slots_, \
                              check_, step_)                                 \
    PLUG_DEFINE_OPTIMIZER_FLAGS(id_, version_, description_, hparams_,       \
                                slots_, check_, step_, 0u)

/* The same with `flags` (OPTIMD_OPTIMIZER_ELEMENTWISE, docs/abi.md §6). */
#define PLUG_DEFINE_OPTIMIZER_FLAGS(id_, version_, description_, hparams_,   \
                                    slots_, check_, step_, flags_)           \
    static const optimd_optimizer plug_optimizer_table = {                   \
        .struct_size = sizeof(optimd_optimizer),                             \
        .n_hparams = PLUG_ARRAY_LEN(hparams_),                               \
        .hparams = (hparams_),                                               \
        .n_slots = PLUG_ARRAY_LEN(slots_),                                   \
        .dtypes = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64),       \
        .slots = (slots_),                                                   \
        .check_hparams = (check_),                                           \
        .step = (step_),                                                     \
        .flags = (flags_),                                                   \
    };                                                                       \
    OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {                 \
        .abi_major = OPTIMD_ABI_MAJOR,                                       \
        .abi_minor = OPTIMD_ABI_MINOR,                                       \
        .struct_size = sizeof(optimd_plugin_desc),                           \
        .kind = OPTIMD_KIND_OPTIMIZER,                                       \
        .id = (id_),                                                         \
        .version = (version_),                                               \
        .description = (description_),                                       \
        .optimizer = &plug_optimizer_table,                                  \
        .scheduler = NULL,                                                   \
    }

/* The same for a scheduler plugin. */
#define PLUG_DEFINE_SCHEDULER(id_, version_, description_, hparams_, check_, \
                              lr_)                                           \
    static const optimd_scheduler plug_scheduler_table = {                   \
        .struct_size = sizeof(optimd_scheduler),                             \
        .n_hparams = PLUG_ARRAY_LEN(hparams_),                               \
        .hparams = (hparams_),                                               \
        .check_hparams = (check_),                                           \
        .lr = (lr_),                                                         \
    };                                                                       \
    OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {                 \
        .abi_major = OPTIMD_ABI_MAJOR,                                       \
        .abi_minor = OPTIMD_ABI_MINOR,                                       \
        .struct_size = sizeof(optimd_plugin_desc),                           \
        .kind = OPTIMD_KIND_SCHEDULER,                                       \
        .id = (id_),                                                         \
        .version = (version_),                                               \
        .description = (description_),                                      \
        .optimizer = NULL,                                                   \
        .scheduler = &plug_scheduler_table,                                  \
    }

#endif /* OPTIMD_PLUGIN_SUPPORT_H */
