/*
 * A plugin for the hot-swap tests, built in several versions from this one
 * file (tests/hotswap/CMakeLists.txt):
 *   TOY_SCALE    the update is p -= (lr * TOY_SCALE) * g, so the version that
 *                applied a step can be told from its result;
 *   TOY_VERSION  its version string;
 *   TOY_EXTRA    1: declares one more hyperparameter (a schema change);
 *   TOY_BROKEN   0: sound; 1: built for ABI major 99; 2: exports another
 *                symbol name; 3: refuses its own defaults; 4: crashes in step;
 *                5: fails its third step; 6: writes NaN on its third step;
 *   TOY_ACC_F64  1: keeps "acc" in float64 whatever the parameter (a slot
 *                layout change under the same key);
 *   TOY_MIGRATE  1: declares the ABI 1.1 migrate hook that converts an old
 *                "acc" into the new layout.
 * One slot, "acc", sums every gradient, so a test can check that state is
 * carried over every swap.
 */
#include <optimd/plugin.h>

#include <stddef.h>

#ifndef TOY_SCALE
#define TOY_SCALE 1
#endif
#ifndef TOY_VERSION
#define TOY_VERSION "1.0.0"
#endif
#ifndef TOY_EXTRA
#define TOY_EXTRA 0
#endif
#ifndef TOY_BROKEN
#define TOY_BROKEN 0
#endif
#ifndef TOY_ACC_F64
#define TOY_ACC_F64 0
#endif
#ifndef TOY_MIGRATE
#define TOY_MIGRATE 0
#endif

static const optimd_hparam_def toy_hparams[] = {
    {.struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_FLOAT, .flags = OPTIMD_HP_MUTABLE,
     .key = "lr", .doc = "Learning rate.", .min = 0.0, .max = 1e6, .default_value = 0.1},
#if TOY_EXTRA
    {.struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_FLOAT, .flags = OPTIMD_HP_MUTABLE,
     .key = "extra", .doc = "A key version 2 added.", .min = 0.0, .max = 1.0, .default_value = 0.5},
#endif
};
#define TOY_N_HPARAMS (sizeof toy_hparams / sizeof toy_hparams[0])

static const optimd_slot_def toy_slots[] = {
    {.struct_size = sizeof(optimd_slot_def), .shape = OPTIMD_SLOT_LIKE_PARAM,
     .dtype = TOY_ACC_F64 ? OPTIMD_DTYPE_F64 : 0, .key = "acc", .doc = "The sum of every gradient."},
};

static optimd_status toy_check(const optimd_host *host, const double *hp, uint32_t n)
{
    (void)hp;
    (void)n;
    if (TOY_BROKEN == 3) {
        host->set_error(host->call, "toy refuses every setting");
        return OPTIMD_ERR_INVALID;
    }
    return OPTIMD_OK;
}

static optimd_status toy_step(const optimd_host *host, const optimd_step_args *a)
{
    if (a->n_slots != 1 || a->slots[0].data == NULL) {
        host->set_error(host->call, "toy needs its acc slot");
        return OPTIMD_ERR_INVALID;
    }
    if (TOY_BROKEN == 4) {
        volatile int *nowhere = NULL;
        *nowhere = 1;
    }
    if (TOY_BROKEN == 5 && a->step >= 3) {
        host->set_error(host->call, "toy gives up on its third step");
        return OPTIMD_ERR_INTERNAL;
    }
    const double lr = a->hparams[0];
    if (a->param->dtype == OPTIMD_DTYPE_F32) {
        float *p = a->param->data;
        const float *g = a->grad->data;
        const float c = (float)(lr * TOY_SCALE);
        for (int64_t i = 0; i < a->param->numel; i++) {
            if (TOY_ACC_F64) ((double *)a->slots[0].data)[i] += g[i];
            else ((float *)a->slots[0].data)[i] += g[i];
            p[i] = p[i] - c * g[i];
            if (TOY_BROKEN == 6 && a->step >= 3) p[i] = p[i] * (1.0f / 0.0f) * 0.0f;
        }
    } else {
        double *p = a->param->data, *acc = a->slots[0].data;
        const double *g = a->grad->data;
        const double c = lr * TOY_SCALE;
        for (int64_t i = 0; i < a->param->numel; i++) {
            acc[i] = acc[i] + g[i];
            p[i] = p[i] - c * g[i];
        }
    }
    return OPTIMD_OK;
}

#if TOY_MIGRATE
/* An "acc" kept in the parameter's dtype becomes float64. */
static optimd_status toy_migrate(const optimd_host *host, const optimd_migrate_args *a)
{
    for (uint32_t j = 0; j < a->n_from_slots; j++) {
        const optimd_tensor *from = &a->from_slots[j];
        if (from->data == NULL || a->from_keys[j][0] != 'a') continue;
        if (from->numel != a->slots[0].numel) {
            host->set_error(host->call, "acc has another size");
            return OPTIMD_ERR_INVALID;
        }
        double *to = a->slots[0].data;
        for (int64_t i = 0; i < from->numel; i++)
            to[i] = from->dtype == OPTIMD_DTYPE_F32 ? (double)((const float *)from->data)[i]
                                                    : ((const double *)from->data)[i];
    }
    return OPTIMD_OK;
}
#endif

static const optimd_optimizer toy_optimizer = {
    .struct_size = sizeof(optimd_optimizer),
    .n_hparams = TOY_N_HPARAMS,
    .hparams = toy_hparams,
    .n_slots = 1,
    .dtypes = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64),
    .slots = toy_slots,
    .check_hparams = toy_check,
    .step = toy_step,
#if TOY_MIGRATE
    .migrate = toy_migrate,
#endif
};

#if TOY_BROKEN == 2
#define TOY_SYMBOL not_the_plugin
#else
#define TOY_SYMBOL optimd_plugin
#endif

OPTIMD_EXPORT const optimd_plugin_desc TOY_SYMBOL = {
    .abi_major = TOY_BROKEN == 1 ? 99u : OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_OPTIMIZER,
    .id = "toy",
    .version = TOY_VERSION,
    .description = "p -= lr * scale * g, for the hot-swap tests",
    .optimizer = &toy_optimizer,
    .scheduler = NULL,
};
