/*
 * Heavy-ball momentum (v = momentum * v + g; p -= lr * v) compiled against
 * the first released plugin header, ABI 1.0 (tests/sdk/abi-1.0, frozen from
 * git). The current daemon must keep loading and stepping it.
 */
#include <optimd/plugin.h>

#if OPTIMD_ABI_MAJOR != 1 || OPTIMD_ABI_MINOR != 0
#error "abi10_plugin must be built against the frozen ABI 1.0 header"
#endif

static const optimd_hparam_def hparams[2] = {
    {.struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_FLOAT, .flags = OPTIMD_HP_MUTABLE,
     .key = "lr", .doc = "Learning rate.", .min = 0.0, .max = 1e6, .default_value = 0.01},
    {.struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_FLOAT,
     .flags = OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, .key = "momentum",
     .doc = "Decay of the velocity.", .min = 0.0, .max = 1.0, .default_value = 0.9},
};

static const optimd_slot_def slots[1] = {
    {.struct_size = sizeof(optimd_slot_def), .shape = OPTIMD_SLOT_LIKE_PARAM, .dtype = 0,
     .key = "velocity", .doc = "Running sum of decayed gradients.", .enabled_by = 0},
};

static optimd_status step(const optimd_host *host, const optimd_step_args *args)
{
    if (args->n_hparams != 2 || args->n_slots != 1 || !args->slots[0].data) {
        host->set_error(host->call, "abi10: malformed step arguments");
        return OPTIMD_ERR_INVALID;
    }
    int64_t n = args->param->numel;
    double lr = args->hparams[0], mu = args->hparams[1];
    if (args->param->dtype == OPTIMD_DTYPE_F32) {
        float *p = args->param->data, *v = args->slots[0].data;
        const float *g = args->grad->data;
        for (int64_t i = 0; i < n; i++) {
            v[i] = (float)mu * v[i] + g[i];
            p[i] = p[i] - (float)lr * v[i];
        }
    } else {
        double *p = args->param->data, *v = args->slots[0].data;
        const double *g = args->grad->data;
        for (int64_t i = 0; i < n; i++) {
            v[i] = mu * v[i] + g[i];
            p[i] = p[i] - lr * v[i];
        }
    }
    return OPTIMD_OK;
}

static const optimd_optimizer optimizer = {
    .struct_size = sizeof(optimd_optimizer),
    .n_hparams = 2,
    .hparams = hparams,
    .n_slots = 1,
    .dtypes = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64),
    .slots = slots,
    .check_hparams = 0,
    .step = step,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_OPTIMIZER,
    .id = "abi10_heavyball",
    .version = "1.0.0",
    .description = "heavy-ball momentum built against the ABI 1.0 header",
    .optimizer = &optimizer,
    .scheduler = 0,
};
