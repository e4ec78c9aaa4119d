/*
 * MultiStepLR: multiplies the lr by gamma at each milestone epoch, as
 * torch.optim.lr_scheduler.MultiStepLR of torch 1.13.1, bit for bit.
 *
 * Hyperparameters are scalars in the ABI, so torch's `milestones` list is
 * up to eight int keys milestone0 .. milestone7, in any order; -1 (the
 * default of milestone1..7) marks an unused key, since no epoch is -1.
 * milestone0 is required, as torch requires the list (set it to -1 for an
 * empty one). A value given twice counts twice, like torch's Counter:
 *
 *   n = number of keys equal to epoch
 *   lr = n > 0 ? last_lr * gamma^n : last_lr         (torch's recursive rule)
 *
 * Epoch 0 counts: a milestone 0 scales the lr at construction, as in torch.
 */
#include "../plugin_support.h"

#define MULTISTEP_MILESTONES 8
#define MULTISTEP_UNUSED (-1.0)
#define MULTISTEP_EPOCH_MAX 2147483647.0

enum multistep_hparam_index {
    MULTISTEP_HP_MILESTONE0,
    MULTISTEP_HP_GAMMA = MULTISTEP_HP_MILESTONE0 + MULTISTEP_MILESTONES,
    MULTISTEP_HP_COUNT
};

#define MULTISTEP_HP_LATER_MILESTONE(key_)                                   \
    PLUG_HP_INT(key_, 0, MULTISTEP_UNUSED, MULTISTEP_EPOCH_MAX, MULTISTEP_UNUSED, \
                "Another milestone epoch; -1: unused.")

static const optimd_hparam_def multistep_hparams[MULTISTEP_HP_COUNT] = {
    [MULTISTEP_HP_MILESTONE0] = PLUG_HP_INT(
        "milestone0", OPTIMD_HP_REQUIRED, MULTISTEP_UNUSED, MULTISTEP_EPOCH_MAX, 0.0,
        "An epoch at which the lr is multiplied by gamma (torch milestones[0]); -1: none."),
    [1] = MULTISTEP_HP_LATER_MILESTONE("milestone1"),
    [2] = MULTISTEP_HP_LATER_MILESTONE("milestone2"),
    [3] = MULTISTEP_HP_LATER_MILESTONE("milestone3"),
    [4] = MULTISTEP_HP_LATER_MILESTONE("milestone4"),
    [5] = MULTISTEP_HP_LATER_MILESTONE("milestone5"),
    [6] = MULTISTEP_HP_LATER_MILESTONE("milestone6"),
    [7] = MULTISTEP_HP_LATER_MILESTONE("milestone7"),
    /* As for step: a negative gamma would make the lr negative. */
    [MULTISTEP_HP_GAMMA] = PLUG_HP_FLOAT("gamma", 0, 0.0, PLUG_HP_LARGE, 0.1,
                                         "Factor applied to the lr at each milestone."),
};

PLUG_DEFINE_HPARAM_CHECK(multistep_check_hparams, "multistep", multistep_hparams)

static optimd_status multistep_lr(const optimd_host *host, const optimd_sched_args *args,
                                  double *lr)
{
    optimd_status st =
        plug_sched_begin(host, args, lr, MULTISTEP_HP_COUNT, multistep_check_hparams);
    if (st != OPTIMD_OK) return st;
    int count = 0;
    for (int k = 0; k < MULTISTEP_MILESTONES; k++)
        count += args->hparams[MULTISTEP_HP_MILESTONE0 + k] == (double)args->epoch;
    /* torch: group['lr'] * gamma ** count, a Python float power. */
    *lr = count == 0 ? args->last_lr
                     : args->last_lr * pow(args->hparams[MULTISTEP_HP_GAMMA], (double)count);
    return OPTIMD_OK;
}

PLUG_DEFINE_SCHEDULER("multistep", "1.0.0",
                      "Decays the lr by gamma at each milestone epoch, as torch MultiStepLR 1.13",
                      multistep_hparams, multistep_check_hparams, multistep_lr);
