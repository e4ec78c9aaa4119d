/*
 * CosineAnnealingWarmRestarts (SGDR): cosine annealing from base_lr to
 * eta_min over T_i epochs, then a restart, with cycle lengths T_0,
 * T_0 * T_mult, T_0 * T_mult^2, ..., as
 * torch.optim.lr_scheduler.CosineAnnealingWarmRestarts of torch 1.13.1
 * stepped without an epoch argument, bit for bit.
 *
 * torch has no recursive form here: every epoch's lr is its closed form,
 * evaluated in double in torch's operation order,
 *
 *   lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2
 *
 * where torch tracks T_cur and T_i by counting: T_cur += 1 each epoch, and
 * when T_cur reaches T_i, T_cur -= T_i and T_i *= T_mult. This plugin
 * derives the same two integers from the epoch alone (the ABI keeps no
 * scheduler state); last_lr is not used, so the schedule does not chain.
 */
#include "../plugin_support.h"

enum warm_restarts_hparam_index {
    WARM_RESTARTS_HP_T_0,
    WARM_RESTARTS_HP_T_MULT,
    WARM_RESTARTS_HP_ETA_MIN,
    WARM_RESTARTS_HP_COUNT
};

static const optimd_hparam_def warm_restarts_hparams[WARM_RESTARTS_HP_COUNT] = {
    [WARM_RESTARTS_HP_T_0] = PLUG_HP_INT("T_0", OPTIMD_HP_REQUIRED, 1.0, 2147483647.0, 1.0,
                                         "Epochs of the first cycle."),
    [WARM_RESTARTS_HP_T_MULT] = PLUG_HP_INT("T_mult", 0, 1.0, 2147483647.0, 1.0,
                                            "Factor by which each cycle is longer than the last."),
    [WARM_RESTARTS_HP_ETA_MIN] = PLUG_HP_FLOAT("eta_min", 0, 0.0, PLUG_HP_LARGE, 0.0,
                                               "Lowest lr of each cycle."),
};

PLUG_DEFINE_HPARAM_CHECK(warm_restarts_check_hparams, "cosine_warm_restarts", warm_restarts_hparams)

/*
 * Where `epoch` falls: cycle length *t_i and the position *t_cur in it.
 * Walking the cycles takes O(log epoch) steps when T_mult > 1; with
 * T_mult == 1 a remainder does it. T_i only grows while it is at most the
 * remaining epochs (< 2^63); the last multiplication may exceed int64 when
 * both T_i and T_mult are huge, so T_i is returned as a double, which is
 * also how torch's formula uses it.
 */
static void warm_restarts_position(int64_t epoch, int64_t t_0, int64_t t_mult,
                                   int64_t *t_cur, double *t_i)
{
    if (t_mult == 1) {
        *t_cur = epoch % t_0;
        *t_i = (double)t_0;
        return;
    }
    int64_t cycle = t_0;
    int64_t rest = epoch;
    while (rest >= cycle) {
        rest -= cycle;
        if (cycle > INT64_MAX / t_mult) {
            /* The next cycle is longer than any int64 epoch: it is the last. */
            *t_cur = rest;
            *t_i = (double)cycle * (double)t_mult;
            return;
        }
        cycle *= t_mult;
    }
    *t_cur = rest;
    *t_i = (double)cycle;
}

static optimd_status warm_restarts_lr(const optimd_host *host, const optimd_sched_args *args,
                                      double *lr)
{
    optimd_status st =
        plug_sched_begin(host, args, lr, WARM_RESTARTS_HP_COUNT, warm_restarts_check_hparams);
    if (st != OPTIMD_OK) return st;
    const double eta_min = args->hparams[WARM_RESTARTS_HP_ETA_MIN];
    int64_t t_cur;
    double t_i;
    warm_restarts_position(args->epoch, (int64_t)args->hparams[WARM_RESTARTS_HP_T_0],
                           (int64_t)args->hparams[WARM_RESTARTS_HP_T_MULT], &t_cur, &t_i);
    *lr = eta_min + (args->base_lr - eta_min) * (1.0 + cos(M_PI * (double)t_cur / t_i)) / 2.0;
    return OPTIMD_OK;
}

PLUG_DEFINE_SCHEDULER("cosine_warm_restarts", "1.0.0",
                      "Cosine annealing with warm restarts (SGDR)"
                      ", as torch CosineAnnealingWarmRestarts 1.13",
                      warm_restarts_hparams, warm_restarts_check_hparams, warm_restarts_lr);
