/*
 * LinearLR: moves the lr's factor linearly from start_factor to end_factor
 * over total_iters epochs, as torch.optim.lr_scheduler.LinearLR of torch
 * 1.13.1, with torch's recursive (chainable) rule evaluated in double in
 * torch's operation order, so the sequence equals torch's bit for bit
 * (s = start_factor, f = end_factor, T = total_iters, e = epoch):
 *
 *   e == 0:     lr = last_lr * s
 *   e > T:      lr = last_lr
 *   otherwise:  lr = last_lr * (1 + (f - s) / (T * s + (e - 1) * (f - s)))
 *
 * torch raises ZeroDivisionError at epoch 1 when s is 0 and T >= 1; here
 * that combination is refused when the session opens.
 */
#include "../plugin_support.h"

enum linear_hparam_index {
    LINEAR_HP_START_FACTOR,
    LINEAR_HP_END_FACTOR,
    LINEAR_HP_TOTAL_ITERS,
    LINEAR_HP_COUNT
};

static const optimd_hparam_def linear_hparams[LINEAR_HP_COUNT] = {
    [LINEAR_HP_START_FACTOR] = PLUG_HP_FLOAT("start_factor", 0, 0.0, 1.0, 1.0 / 3.0,
                                             "Factor of the lr at epoch 0."),
    [LINEAR_HP_END_FACTOR] = PLUG_HP_FLOAT("end_factor", 0, 0.0, 1.0, 1.0,
                                           "Factor of the lr from epoch total_iters on."),
    [LINEAR_HP_TOTAL_ITERS] = PLUG_HP_INT("total_iters", 0, 0.0, 2147483647.0, 5.0,
                                          "Epochs from start_factor to end_factor."),
};

static optimd_status linear_check_hparams(const optimd_host *host, const double *hparams,
                                          uint32_t n)
{
    optimd_status st = plug_check_hparam_values(host, "linear", linear_hparams,
                                                LINEAR_HP_COUNT, hparams, n);
    if (st != OPTIMD_OK) return st;
    if (hparams[LINEAR_HP_START_FACTOR] == 0.0 && hparams[LINEAR_HP_TOTAL_ITERS] > 0.0)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "start_factor must be > 0 when total_iters > 0 (torch's recursive "
                         "rule divides by it at epoch 1)");
    return OPTIMD_OK;
}

static optimd_status linear_lr(const optimd_host *host, const optimd_sched_args *args,
                               double *lr)
{
    optimd_status st = plug_sched_begin(host, args, lr, LINEAR_HP_COUNT, linear_check_hparams);
    if (st != OPTIMD_OK) return st;
    const double start = args->hparams[LINEAR_HP_START_FACTOR];
    const double end = args->hparams[LINEAR_HP_END_FACTOR];
    const int64_t total_iters = (int64_t)args->hparams[LINEAR_HP_TOTAL_ITERS];
    const int64_t e = args->epoch;
    if (e == 0)
        *lr = args->last_lr * start;
    else if (e > total_iters)
        *lr = args->last_lr;
    else
        *lr = args->last_lr * (1.0 + (end - start) / ((double)total_iters * start +
                                                      (double)(e - 1) * (end - start)));
    return OPTIMD_OK;
}

PLUG_DEFINE_SCHEDULER("linear", "1.0.0",
                      "Moves the lr's factor linearly over total_iters epochs"
                      ", as torch LinearLR 1.13",
                      linear_hparams, linear_check_hparams, linear_lr);
