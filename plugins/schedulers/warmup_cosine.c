/*
 * Linear warmup, then cosine annealing to eta_min, then eta_min for good:
 * the schedule most training recipes want, as one plugin.
 *
 * It is, bit for bit, what torch 1.13.1 users write as
 *
 *   SequentialLR(opt, [LinearLR(opt, start_factor, 1.0, warmup_iters),
 *                      CosineAnnealingLR(opt, T_max, eta_min)],
 *                milestones=[warmup_iters])
 *
 * up to epoch warmup_iters + T_max, where the cosine reaches eta_min; torch's
 * cosine would rise again after that, this plugin stays at eta_min. With
 * warmup_iters 0 it is CosineAnnealingLR alone. The formulas are torch's
 * recursive ones, evaluated in double in torch's order (W = warmup_iters,
 * s = start_factor, T = T_max, e = epoch, k = e - W, b = base_lr):
 *
 *   e == 0 < W:       lr = b * s                                (LinearLR)
 *   0 < e < W:        lr = last_lr * (1 + (1 - s) / (W s + (e - 1)(1 - s)))
 *   e == W > 0:       lr = eta_min + (b - eta_min) * (1 + cos(0)) / 2
 *                          (SequentialLR restarts the cosine with step(0),
 *                           i.e. its closed form at epoch 0)
 *   e == W == 0:      lr = b                                    (cosine, e = 0)
 *   0 < k <= T:       lr = (1 + cos(pi k / T)) / (1 + cos(pi (k - 1) / T))
 *                          * (last_lr - eta_min) + eta_min
 *   k > T:            lr = eta_min
 *
 * The warmup reaches b * (s + (1 - s)(W - 1)/W) at epoch W - 1 and b at W.
 * start_factor must be > 0 because the recursive warmup divides by it.
 */
#include "../plugin_support.h"

enum warmup_cosine_hparam_index {
    WARMUP_COSINE_HP_WARMUP_ITERS,
    WARMUP_COSINE_HP_T_MAX,
    WARMUP_COSINE_HP_START_FACTOR,
    WARMUP_COSINE_HP_ETA_MIN,
    WARMUP_COSINE_HP_COUNT
};

static const optimd_hparam_def warmup_cosine_hparams[WARMUP_COSINE_HP_COUNT] = {
    [WARMUP_COSINE_HP_WARMUP_ITERS] = PLUG_HP_INT(
        "warmup_iters", OPTIMD_HP_REQUIRED, 0.0, 2147483647.0, 0.0,
        "Epochs of linear warmup; the lr is base_lr at this epoch."),
    [WARMUP_COSINE_HP_T_MAX] = PLUG_HP_INT(
        "T_max", OPTIMD_HP_REQUIRED, 1.0, 2147483647.0, 1.0,
        "Epochs of the cosine from base_lr down to eta_min, after the warmup."),
    [WARMUP_COSINE_HP_START_FACTOR] = PLUG_HP_FLOAT(
        "start_factor", OPTIMD_HP_MIN_EXCLUSIVE, 0.0, 1.0, 1.0 / 3.0,
        "Factor of base_lr at epoch 0 (torch LinearLR start_factor)."),
    [WARMUP_COSINE_HP_ETA_MIN] = PLUG_HP_FLOAT("eta_min", 0, 0.0, PLUG_HP_LARGE, 0.0,
                                               "The lr at the end of the cosine, and after."),
};

/* start_factor > 0 is its declared range, checked with the others. */
PLUG_DEFINE_HPARAM_CHECK(warmup_cosine_check_hparams, "warmup_cosine", warmup_cosine_hparams)

static optimd_status warmup_cosine_lr(const optimd_host *host, const optimd_sched_args *args,
                                      double *lr)
{
    optimd_status st =
        plug_sched_begin(host, args, lr, WARMUP_COSINE_HP_COUNT, warmup_cosine_check_hparams);
    if (st != OPTIMD_OK) return st;
    const int64_t warmup = (int64_t)args->hparams[WARMUP_COSINE_HP_WARMUP_ITERS];
    const int64_t t_max = (int64_t)args->hparams[WARMUP_COSINE_HP_T_MAX];
    const double start = args->hparams[WARMUP_COSINE_HP_START_FACTOR];
    const double eta_min = args->hparams[WARMUP_COSINE_HP_ETA_MIN];
    const int64_t e = args->epoch;
    const int64_t k = e - warmup;
    const double t = (double)t_max;
    if (e == 0 && warmup > 0)
        *lr = args->base_lr * start;
    else if (e < warmup)
        *lr = args->last_lr * (1.0 + (1.0 - start) / ((double)warmup * start +
                                                      (double)(e - 1) * (1.0 - start)));
    else if (k == 0 && warmup > 0)
        *lr = eta_min + (args->base_lr - eta_min) * (1.0 + cos(M_PI * 0.0 / t)) / 2.0;
    else if (k == 0)
        *lr = args->base_lr;
    else if (k <= t_max)
        *lr = (1.0 + cos(M_PI * (double)k / t)) / (1.0 + cos(M_PI * (double)(k - 1) / t)) *
                  (args->last_lr - eta_min) +
              eta_min;
    else
        *lr = eta_min;
    return OPTIMD_OK;
}

PLUG_DEFINE_SCHEDULER("warmup_cosine", "1.0.0",
                      "Linear warmup then cosine annealing to eta_min"
                      " (torch LinearLR + CosineAnnealingLR in SequentialLR)",
                      warmup_cosine_hparams, warmup_cosine_check_hparams, warmup_cosine_lr);
