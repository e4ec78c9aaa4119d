/*
 * StepLR: multiplies the lr by gamma every step_size epochs, as
 * torch.optim.lr_scheduler.StepLR of torch 1.13.1.
 *
 * torch's recursive (chainable) get_lr(), evaluated in double exactly as
 * torch does, so the sequence matches scheduler.get_last_lr() bit for bit:
 *
 *   epoch == 0 or epoch % step_size != 0:  lr = last_lr
 *   otherwise:                             lr = last_lr * gamma
 */
#include "../plugin_support.h"

#include <math.h>

enum step_hparam_index { STEP_HP_STEP_SIZE, STEP_HP_GAMMA, STEP_HP_COUNT };

static const optimd_hparam_def step_hparams[STEP_HP_COUNT] = {
    [STEP_HP_STEP_SIZE] = PLUG_HP_INT("step_size", OPTIMD_HP_REQUIRED, 1.0,
                                      2147483647.0, 1.0,
                                      "Epochs between two decays."),
    /* torch accepts any gamma; a negative one would make the lr negative,
     * which no optimizer accepts, so it is refused here. */
    [STEP_HP_GAMMA] = PLUG_HP_FLOAT("gamma", 0, 0.0, PLUG_HP_LARGE, 0.1,
                                    "Factor applied to the lr at each decay."),
};

static optimd_status step_check_hparams(const optimd_host *host,
                                        const double *hparams, uint32_t n)
{
    if (hparams == NULL || n != STEP_HP_COUNT)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "step expects %u hyperparameters, got %u",
                         (unsigned)STEP_HP_COUNT, n);
    if (hparams[STEP_HP_STEP_SIZE] != floor(hparams[STEP_HP_STEP_SIZE]))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "step_size must be an integer, got %g",
                         hparams[STEP_HP_STEP_SIZE]);
    return OPTIMD_OK;
}

static optimd_status step_lr(const optimd_host *host,
                             const optimd_sched_args *args, double *lr)
{
    optimd_status st = plug_check_sched_args(host, args, STEP_HP_COUNT, lr);
    if (st != OPTIMD_OK) return st;
    st = step_check_hparams(host, args->hparams, args->n_hparams);
    if (st != OPTIMD_OK) return st;
    const int64_t step_size = (int64_t)args->hparams[STEP_HP_STEP_SIZE];
    const double gamma = args->hparams[STEP_HP_GAMMA];
    if (args->epoch == 0)
        *lr = args->base_lr;
    else if (args->epoch % step_size != 0)
        *lr = args->last_lr;
    else
        *lr = args->last_lr * gamma;
    return OPTIMD_OK;
}

static const optimd_scheduler step_scheduler = {
    .struct_size = sizeof(optimd_scheduler),
    .n_hparams = STEP_HP_COUNT,
    .hparams = step_hparams,
    .check_hparams = step_check_hparams,
    .lr = step_lr,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_SCHEDULER,
    .id = "step",
    .version = "1.0.0",
    .description = "Decays the lr by gamma every step_size epochs, as torch StepLR 1.13",
    .optimizer = NULL,
    .scheduler = &step_scheduler,
};
