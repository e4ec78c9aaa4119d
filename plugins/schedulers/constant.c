/*
 * ConstantLR: the lr times `factor` until epoch total_iters, then the lr
 * itself, as torch.optim.lr_scheduler.ConstantLR of torch 1.13.1, with
 * torch's recursive (chainable) rule evaluated in double, so the sequence
 * equals torch's bit for bit:
 *
 *   epoch == 0:            lr = last_lr * factor
 *   epoch == total_iters:  lr = last_lr * (1 / factor)
 *   otherwise:             lr = last_lr
 *
 * (epoch 0 wins when total_iters is 0: the lr stays scaled for good.)
 * torch raises ZeroDivisionError at epoch total_iters when factor is 0;
 * here that combination is refused when the session opens.
 */
#include "../plugin_support.h"

enum constant_hparam_index { CONSTANT_HP_FACTOR, CONSTANT_HP_TOTAL_ITERS, CONSTANT_HP_COUNT };

static const optimd_hparam_def constant_hparams[CONSTANT_HP_COUNT] = {
    [CONSTANT_HP_FACTOR] = PLUG_HP_FLOAT("factor", 0, 0.0, 1.0, 1.0 / 3.0,
                                         "Factor applied to the lr until total_iters."),
    [CONSTANT_HP_TOTAL_ITERS] = PLUG_HP_INT("total_iters", 0, 0.0, 2147483647.0, 5.0,
                                            "Epoch at which the lr returns to its base value."),
};

static optimd_status constant_check_hparams(const optimd_host *host, const double *hparams,
                                            uint32_t n)
{
    optimd_status st = plug_check_hparam_values(host, "constant", constant_hparams,
                                                CONSTANT_HP_COUNT, hparams, n);
    if (st != OPTIMD_OK) return st;
    if (hparams[CONSTANT_HP_FACTOR] == 0.0 && hparams[CONSTANT_HP_TOTAL_ITERS] > 0.0)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "factor 0 needs total_iters 0 (the lr would be divided by 0 "
                         "at epoch total_iters)");
    return OPTIMD_OK;
}

static optimd_status constant_lr(const optimd_host *host, const optimd_sched_args *args,
                                 double *lr)
{
    optimd_status st = plug_sched_begin(host, args, lr, CONSTANT_HP_COUNT, constant_check_hparams);
    if (st != OPTIMD_OK) return st;
    const double factor = args->hparams[CONSTANT_HP_FACTOR];
    const int64_t total_iters = (int64_t)args->hparams[CONSTANT_HP_TOTAL_ITERS];
    if (args->epoch == 0)
        *lr = args->last_lr * factor;
    else if (args->epoch != total_iters)
        *lr = args->last_lr;
    else
        *lr = args->last_lr * (1.0 / factor);
    return OPTIMD_OK;
}

PLUG_DEFINE_SCHEDULER("constant", "1.0.0",
                      "Scales the lr by a constant factor for total_iters epochs"
                      ", as torch ConstantLR 1.13",
                      constant_hparams, constant_check_hparams, constant_lr);
