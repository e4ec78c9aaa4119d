/*
 * A small, correct optimizer (p -= lr * g) that one compile definition
 * breaks in one way, to show that optimd-validate catches each flaw:
 *   BROKEN_ABI_MAJOR     declares ABI major 2
 *   BROKEN_NO_SYMBOL     exports its descriptor under another name
 *   BROKEN_EXTRA_SYMBOL  exports a second symbol
 *   BROKEN_DEFAULT       a default outside its declared range
 *   BROKEN_SEGV          step dies of SIGSEGV
 *   BROKEN_NONDET        step depends on a hidden global counter
 *   BROKEN_ABORT         step calls abort()
 */
#include <optimd/plugin.h>

#include <signal.h>
#include <stdlib.h>

static const optimd_hparam_def hparams[1] = {
    {.struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_FLOAT,
     .flags = OPTIMD_HP_MUTABLE | OPTIMD_HP_MIN_EXCLUSIVE, .key = "lr", .doc = "Learning rate.",
     .min = 0.0, .max = 10.0,
#ifdef BROKEN_DEFAULT
     .default_value = 20.0
#else
     .default_value = 0.1
#endif
    },
};

#ifdef BROKEN_NONDET
static int calls;
#endif

static optimd_status step(const optimd_host *host, const optimd_step_args *args)
{
    (void)host;
#ifdef BROKEN_SEGV
    raise(SIGSEGV);
#endif
#ifdef BROKEN_ABORT
    abort();
#endif
    double lr = args->hparams[0];
#ifdef BROKEN_NONDET
    lr *= 1.0 + 1e-3 * calls++;
#endif
    int64_t n = args->param->numel;
    if (args->param->dtype == OPTIMD_DTYPE_F32) {
        float *p = args->param->data;
        const float *g = args->grad->data;
        for (int64_t i = 0; i < n; i++) p[i] -= (float)lr * g[i];
    } else {
        double *p = args->param->data;
        const double *g = args->grad->data;
        for (int64_t i = 0; i < n; i++) p[i] -= lr * g[i];
    }
    return OPTIMD_OK;
}

static const optimd_optimizer optimizer = {
    .struct_size = sizeof(optimd_optimizer),
    .n_hparams = 1,
    .hparams = hparams,
    .n_slots = 0,
    .dtypes = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64),
    .slots = NULL,
    .check_hparams = NULL,
    .step = step,
};

#ifdef BROKEN_NO_SYMBOL
#define DESCRIPTOR optimd_plugin_v1
#else
#define DESCRIPTOR optimd_plugin
#endif

OPTIMD_EXPORT const optimd_plugin_desc DESCRIPTOR = {
#ifdef BROKEN_ABI_MAJOR
    .abi_major = 2,
#else
    .abi_major = OPTIMD_ABI_MAJOR,
#endif
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_OPTIMIZER,
    .id = "broken",
    .version = "0.0.1",
    .description = "deliberately broken test plugin",
    .optimizer = &optimizer,
    .scheduler = NULL,
};

#ifdef BROKEN_EXTRA_SYMBOL
OPTIMD_EXPORT int optimd_plugin_helper(void)
{
    return 1;
}
#endif
