/*
 * AdamW (decoupled weight decay, optional AMSGrad and maximize):
 * torch.optim.AdamW of torch 1.13.1, single-tensor path, bit for bit on CPU.
 * The parameter is first scaled by (1 - lr*weight_decay) with the lr of this
 * step, then updated exactly as Adam without L2 (adam_kernel.h).
 */
#include "adam_kernel.h"

static const optimd_hparam_def adamw_hparams[ADAM_HP_COUNT] = {
    [ADAM_HP_LR] = ADAM_HP_DEF_LR,
    [ADAM_HP_BETA1] = ADAM_HP_DEF_BETA1,
    [ADAM_HP_BETA2] = ADAM_HP_DEF_BETA2,
    [ADAM_HP_EPS] = ADAM_HP_DEF_EPS,
    [ADAM_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT(
        "weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 1e-2,
        "Decoupled decay: the parameter is scaled by 1 - lr*weight_decay."),
    [ADAM_HP_AMSGRAD] = ADAM_HP_DEF_AMSGRAD,
    [ADAM_HP_MAXIMIZE] = ADAM_HP_DEF_MAXIMIZE,
};

static optimd_status adamw_plugin_step(const optimd_host *host,
                                       const optimd_step_args *args)
{
    return adam_step(host, args, true);
}

static const optimd_optimizer adamw_optimizer = {
    .struct_size = sizeof(optimd_optimizer),
    .n_hparams = ADAM_HP_COUNT,
    .hparams = adamw_hparams,
    .n_slots = ADAM_SLOT_COUNT,
    .dtypes = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64),
    .slots = adam_slots,
    .check_hparams = NULL, /* no rule spans several keys */
    .step = adamw_plugin_step,
    .flags = OPTIMD_OPTIMIZER_ELEMENTWISE,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_OPTIMIZER,
    .id = "adamw",
    .version = "1.0.0",
    .description = "AdamW (decoupled weight decay), as torch.optim.AdamW 1.13",
    .optimizer = &adamw_optimizer,
    .scheduler = NULL,
};
