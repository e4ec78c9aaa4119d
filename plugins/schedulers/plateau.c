/*
 * ReduceLROnPlateau: multiplies the lr by `factor` when a metric the client
 * reports has not improved for more than `patience` reports, as
 * torch.optim.lr_scheduler.ReduceLROnPlateau of torch 1.13.1.
 *
 * Steps alone never change the lr: `lr` returns the previous value (the
 * optimizer's lr at epoch 0). The client reports each metric with the
 * daemon's `observe` op, which calls `observe` below: torch's
 * step(metric), operation for operation:
 *
 *   better(a)  min/rel: a < best * (1 - threshold)   min/abs: a < best - threshold
 *              max/rel: a > best * (threshold + 1)   max/abs: a > best + threshold
 *   if better(metric): best = metric, bad = 0   else: bad += 1
 *   if cooldown_counter > 0: cooldown_counter -= 1, bad = 0
 *   if bad > patience:
 *       new = max(lr * factor, min_lr); if lr - new > eps: lr = new
 *       cooldown_counter = cooldown, bad = 0
 *
 * A NaN metric is never better, so it counts as a bad epoch, as in torch.
 * The host keeps the counters (state, zero-filled at open): best starts
 * at +inf (min) or -inf (max), which zero cannot say, so a flag records
 * whether best holds a value yet.
 */
#include "../plugin_support.h"

#include <math.h>

enum plateau_mode { PLATEAU_MIN = 0, PLATEAU_MAX = 1 };
enum plateau_threshold_mode { PLATEAU_REL = 0, PLATEAU_ABS = 1 };

enum plateau_hparam_index {
    PLATEAU_HP_MODE,
    PLATEAU_HP_FACTOR,
    PLATEAU_HP_PATIENCE,
    PLATEAU_HP_THRESHOLD,
    PLATEAU_HP_THRESHOLD_MODE,
    PLATEAU_HP_COOLDOWN,
    PLATEAU_HP_MIN_LR,
    PLATEAU_HP_EPS,
    PLATEAU_HP_COUNT
};

static const optimd_hparam_def plateau_hparams[PLATEAU_HP_COUNT] = {
    [PLATEAU_HP_MODE] = PLUG_HP_INT("mode", 0, 0.0, 1.0, 0.0,
                                    "0 min: lower metrics are better; 1 max: higher are."),
    /* torch raises for factor >= 1. */
    [PLATEAU_HP_FACTOR] = PLUG_HP_FLOAT("factor", OPTIMD_HP_MAX_EXCLUSIVE, 0.0, 1.0, 0.1,
                                        "Factor applied to the lr on a plateau (< 1)."),
    [PLATEAU_HP_PATIENCE] = PLUG_HP_INT(
        "patience", 0, 0.0, 2147483647.0, 10.0,
        "Reports without improvement tolerated; the lr drops on the next bad one."),
    [PLATEAU_HP_THRESHOLD] = PLUG_HP_FLOAT("threshold", 0, 0.0, PLUG_HP_LARGE, 1e-4,
                                           "How much better than the best a metric must be."),
    [PLATEAU_HP_THRESHOLD_MODE] = PLUG_HP_INT(
        "threshold_mode", 0, 0.0, 1.0, 0.0,
        "0 rel: better by a factor of threshold; 1 abs: by threshold itself."),
    [PLATEAU_HP_COOLDOWN] = PLUG_HP_INT("cooldown", 0, 0.0, 2147483647.0, 0.0,
                                        "Reports ignored after each reduction."),
    [PLATEAU_HP_MIN_LR] = PLUG_HP_FLOAT("min_lr", 0, 0.0, PLUG_HP_LARGE, 0.0,
                                        "The lr never drops below this."),
    [PLATEAU_HP_EPS] = PLUG_HP_FLOAT("eps", 0, 0.0, PLUG_HP_LARGE, 1e-8,
                                     "A reduction smaller than this is skipped."),
};

PLUG_DEFINE_HPARAM_CHECK(plateau_check_hparams, "plateau", plateau_hparams)

/* The scheduler's state values, kept by the host. The counters are
 * integers held exactly in doubles. */
enum plateau_state_index {
    PLATEAU_ST_STARTED,        /* 0 until the first report sets best */
    PLATEAU_ST_BEST,
    PLATEAU_ST_NUM_BAD_EPOCHS,
    PLATEAU_ST_COOLDOWN_COUNTER,
    PLATEAU_ST_COUNT
};

static optimd_status plateau_lr(const optimd_host *host, const optimd_sched_args *args,
                                double *lr)
{
    optimd_status st =
        plug_sched_begin(host, args, lr, PLATEAU_HP_COUNT, plateau_check_hparams);
    if (st != OPTIMD_OK) return st;
    *lr = args->epoch == 0 ? args->base_lr : args->last_lr;
    return OPTIMD_OK;
}

static bool plateau_is_better(const double *hp, double a, double best)
{
    const double threshold = hp[PLATEAU_HP_THRESHOLD];
    const bool rel = hp[PLATEAU_HP_THRESHOLD_MODE] == PLATEAU_REL;
    if (hp[PLATEAU_HP_MODE] == PLATEAU_MIN)
        return rel ? a < best * (1.0 - threshold) : a < best - threshold;
    return rel ? a > best * (threshold + 1.0) : a > best + threshold;
}

static optimd_status plateau_observe(const optimd_host *host, const optimd_sched_args *args,
                                     double metric, double *lr)
{
    optimd_status st =
        plug_sched_begin(host, args, lr, PLATEAU_HP_COUNT, plateau_check_hparams);
    if (st != OPTIMD_OK) return st;
    if (args->state == NULL)
        return plug_fail(host, OPTIMD_ERR_INVALID, "plateau: no state passed to observe");
    const double *hp = args->hparams;
    double *state = args->state;
    /* Computed on copies and stored at the end: a failure changes nothing. */
    double best = state[PLATEAU_ST_BEST];
    double bad = state[PLATEAU_ST_NUM_BAD_EPOCHS];
    double cooldown_counter = state[PLATEAU_ST_COOLDOWN_COUNTER];
    if (state[PLATEAU_ST_STARTED] == 0.0) {
        /* torch's mode_worse */
        best = hp[PLATEAU_HP_MODE] == PLATEAU_MIN ? INFINITY : -INFINITY;
        bad = 0.0;
        cooldown_counter = 0.0;
    }
    double next = args->last_lr;
    if (plateau_is_better(hp, metric, best)) {
        best = metric;
        bad = 0.0;
    } else {
        bad += 1.0;
    }
    if (cooldown_counter > 0.0) {
        cooldown_counter -= 1.0;
        bad = 0.0;
    }
    if (bad > hp[PLATEAU_HP_PATIENCE]) {
        const double old_lr = args->last_lr;
        const double scaled = old_lr * hp[PLATEAU_HP_FACTOR];
        /* Python's max(a, b) keeps a unless b > a. */
        const double new_lr = hp[PLATEAU_HP_MIN_LR] > scaled ? hp[PLATEAU_HP_MIN_LR] : scaled;
        if (old_lr - new_lr > hp[PLATEAU_HP_EPS]) next = new_lr;
        cooldown_counter = hp[PLATEAU_HP_COOLDOWN];
        bad = 0.0;
    }
    state[PLATEAU_ST_STARTED] = 1.0;
    state[PLATEAU_ST_BEST] = best;
    state[PLATEAU_ST_NUM_BAD_EPOCHS] = bad;
    state[PLATEAU_ST_COOLDOWN_COUNTER] = cooldown_counter;
    *lr = next;
    return OPTIMD_OK;
}

static const optimd_scheduler plateau_scheduler = {
    .struct_size = sizeof(optimd_scheduler),
    .n_hparams = PLATEAU_HP_COUNT,
    .hparams = plateau_hparams,
    .check_hparams = plateau_check_hparams,
    .lr = plateau_lr,
    .momentum = NULL,
    .n_state = PLATEAU_ST_COUNT,
    .observe = plateau_observe,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_SCHEDULER,
    .id = "plateau",
    .version = "1.0.0",
    .description = "Reduces the lr by factor when a reported metric stops improving"
                   ", as torch ReduceLROnPlateau 1.13",
    .optimizer = NULL,
    .scheduler = &plateau_scheduler,
};
