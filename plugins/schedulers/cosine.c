/*
 * CosineAnnealingLR: anneals the lr from base_lr to eta_min along half a
 * cosine over T_max epochs (and back up over the next T_max: it is not a
 * restart schedule), as torch.optim.lr_scheduler.CosineAnnealingLR 1.13.1.
 *
 * torch's recursive (chainable) get_lr(), evaluated in double with the
 * same operation order, so the sequence matches scheduler.get_last_lr()
 * bit for bit (e = epoch, T = T_max):
 *
 *   e == 0:                          lr = base_lr
 *   (e - 1 - T) % (2T) == 0:         lr = last_lr + (base_lr - eta_min)
 *                                              * (1 - cos(pi / T)) / 2
 *   otherwise:                       lr = (1 + cos(pi*e/T)) / (1 + cos(pi*(e-1)/T))
 *                                         * (last_lr - eta_min) + eta_min
 *
 * The second case is where the cosine bottoms out and the ratio of the
 * third would divide by 1 + cos(pi) = 0.
 */
#include "../plugin_support.h"

#include <math.h>

enum cosine_hparam_index { COSINE_HP_T_MAX, COSINE_HP_ETA_MIN, COSINE_HP_COUNT };

static const optimd_hparam_def cosine_hparams[COSINE_HP_COUNT] = {
    /* torch's own name, so users type what they know. */
    [COSINE_HP_T_MAX] = PLUG_HP_INT("T_max", OPTIMD_HP_REQUIRED, 1.0,
                                    2147483647.0, 1.0,
                                    "Epochs from base_lr down to eta_min."),
    [COSINE_HP_ETA_MIN] = PLUG_HP_FLOAT("eta_min", 0, 0.0, PLUG_HP_LARGE, 0.0,
                                        "Lowest lr of the schedule."),
};

static optimd_status cosine_check_hparams(const optimd_host *host,
                                          const double *hparams, uint32_t n)
{
    if (hparams == NULL || n != COSINE_HP_COUNT)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "cosine expects %u hyperparameters, got %u",
                         (unsigned)COSINE_HP_COUNT, n);
    if (hparams[COSINE_HP_T_MAX] != floor(hparams[COSINE_HP_T_MAX]))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "T_max must be an integer, got %g",
                         hparams[COSINE_HP_T_MAX]);
    return OPTIMD_OK;
}

static optimd_status cosine_lr(const optimd_host *host,
                               const optimd_sched_args *args, double *lr)
{
    optimd_status st = plug_check_sched_args(host, args, COSINE_HP_COUNT, lr);
    if (st != OPTIMD_OK) return st;
    st = cosine_check_hparams(host, args->hparams, args->n_hparams);
    if (st != OPTIMD_OK) return st;
    const int64_t t_max = (int64_t)args->hparams[COSINE_HP_T_MAX];
    const double eta_min = args->hparams[COSINE_HP_ETA_MIN];
    const int64_t e = args->epoch;
    /* torch divides by the Python int T_max, i.e. by a double. */
    const double t = (double)t_max;
    if (e == 0) {
        *lr = args->base_lr;
    } else if ((e - 1 - t_max) % (2 * t_max) == 0) {
        /* Python's % differs from C's for negative operands, but both are
         * zero exactly when 2T divides e - 1 - T. */
        *lr = args->last_lr +
              (args->base_lr - eta_min) * (1.0 - cos(M_PI / t)) / 2.0;
    } else {
        *lr = (1.0 + cos(M_PI * (double)e / t)) /
                  (1.0 + cos(M_PI * (double)(e - 1) / t)) *
                  (args->last_lr - eta_min) +
              eta_min;
    }
    return OPTIMD_OK;
}

static const optimd_scheduler cosine_scheduler = {
    .struct_size = sizeof(optimd_scheduler),
    .n_hparams = COSINE_HP_COUNT,
    .hparams = cosine_hparams,
    .check_hparams = cosine_check_hparams,
    .lr = cosine_lr,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_SCHEDULER,
    .id = "cosine",
    .version = "1.0.0",
    .description = "Cosine annealing from base_lr to eta_min over T_max epochs, as torch CosineAnnealingLR 1.13",
    .optimizer = NULL,
    .scheduler = &cosine_scheduler,
};
