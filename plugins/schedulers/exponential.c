/*
 * ExponentialLR: multiplies the lr by gamma every epoch, as
 * torch.optim.lr_scheduler.ExponentialLR of torch 1.13.1, with torch's
 * recursive rule (lr = last_lr * gamma after epoch 0), so the sequence
 * equals torch's bit for bit (the closed form base_lr * gamma^e does not).
 */
#include "../plugin_support.h"

enum exponential_hparam_index { EXPONENTIAL_HP_GAMMA, EXPONENTIAL_HP_COUNT };

static const optimd_hparam_def exponential_hparams[EXPONENTIAL_HP_COUNT] = {
    /* torch has no default; a negative gamma would make the lr negative. */
    [EXPONENTIAL_HP_GAMMA] = PLUG_HP_FLOAT("gamma", OPTIMD_HP_REQUIRED, 0.0, PLUG_HP_LARGE,
                                           0.0, "Factor applied to the lr every epoch."),
};

PLUG_DEFINE_HPARAM_CHECK(exponential_check_hparams, "exponential", exponential_hparams)

static optimd_status exponential_lr(const optimd_host *host, const optimd_sched_args *args,
                                    double *lr)
{
    optimd_status st =
        plug_sched_begin(host, args, lr, EXPONENTIAL_HP_COUNT, exponential_check_hparams);
    if (st != OPTIMD_OK) return st;
    *lr = args->epoch == 0 ? args->last_lr
                           : args->last_lr * args->hparams[EXPONENTIAL_HP_GAMMA];
    return OPTIMD_OK;
}

PLUG_DEFINE_SCHEDULER("exponential", "1.0.0",
                      "Multiplies the lr by gamma every epoch, as torch ExponentialLR 1.13",
                      exponential_hparams, exponential_check_hparams, exponential_lr);
