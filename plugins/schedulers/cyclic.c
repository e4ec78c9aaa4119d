/*
 * CyclicLR: cycles the lr between base_lr and max_lr (and the optimizer's
 * momentum the other way, between max_momentum and base_momentum), as
 * torch.optim.lr_scheduler.CyclicLR of torch 1.13.1 with one of its three
 * built-in modes (a custom scale_fn cannot cross the ABI).
 *
 * torch's get_lr() is a closed form of the epoch, evaluated here in double
 * in torch's operation order, so the sequence equals torch's bit for bit
 * (e = epoch, up / down = step sizes as doubles):
 *
 *   total = up + down              ratio = up / total
 *   cycle = floor(1 + e / total)   x = 1 + e / total - cycle
 *   scale = x <= ratio ? x / ratio : (x - 1) / (ratio - 1)
 *   f     = 1                      mode 0, triangular
 *           1 / 2^(cycle - 1)      mode 1, triangular2
 *           gamma^e                mode 2, exp_range ("iterations")
 *   lr       = base_lr + (max_lr - base_lr) * scale * f
 *   momentum = max_momentum - (max_momentum - base_momentum) * scale * f
 *
 * torch's constructor overwrites the optimizer's lr with base_lr, so this
 * plugin takes base_lr from its own hyperparameter and ignores the
 * optimizer's (args->base_lr) and any lr set in between (args->last_lr):
 * like torch's, the schedule does not chain.
 */
#include "../plugin_support.h"

#include <math.h>

enum cyclic_mode { CYCLIC_TRIANGULAR = 0, CYCLIC_TRIANGULAR2 = 1, CYCLIC_EXP_RANGE = 2 };

enum cyclic_hparam_index {
    CYCLIC_HP_BASE_LR,
    CYCLIC_HP_MAX_LR,
    CYCLIC_HP_STEP_SIZE_UP,
    CYCLIC_HP_STEP_SIZE_DOWN,
    CYCLIC_HP_MODE,
    CYCLIC_HP_GAMMA,
    CYCLIC_HP_CYCLE_MOMENTUM,
    CYCLIC_HP_BASE_MOMENTUM,
    CYCLIC_HP_MAX_MOMENTUM,
    CYCLIC_HP_COUNT
};

static const optimd_hparam_def cyclic_hparams[CYCLIC_HP_COUNT] = {
    [CYCLIC_HP_BASE_LR] = PLUG_HP_FLOAT(
        "base_lr", OPTIMD_HP_REQUIRED, 0.0, PLUG_HP_LARGE, 0.0,
        "Lower lr of the cycle; replaces the optimizer's lr, as in torch."),
    [CYCLIC_HP_MAX_LR] = PLUG_HP_FLOAT("max_lr", OPTIMD_HP_REQUIRED, 0.0, PLUG_HP_LARGE, 0.0,
                                       "Upper lr of the cycle."),
    /* 0 would make torch divide by zero at epoch 0. */
    [CYCLIC_HP_STEP_SIZE_UP] = PLUG_HP_INT("step_size_up", 0, 1.0, 2147483647.0, 2000.0,
                                           "Epochs from base_lr up to max_lr."),
    [CYCLIC_HP_STEP_SIZE_DOWN] = PLUG_HP_INT(
        "step_size_down", 0, 0.0, 2147483647.0, 0.0,
        "Epochs from max_lr back down to base_lr; 0: step_size_up (torch's None)."),
    [CYCLIC_HP_MODE] = PLUG_HP_INT(
        "mode", 0, 0.0, 2.0, 0.0,
        "0 triangular, 1 triangular2 (amplitude halves each cycle), 2 exp_range (gamma^epoch)."),
    [CYCLIC_HP_GAMMA] = PLUG_HP_FLOAT("gamma", 0, 0.0, PLUG_HP_LARGE, 1.0,
                                      "exp_range: the amplitude is scaled by gamma^epoch."),
    [CYCLIC_HP_CYCLE_MOMENTUM] = PLUG_HP_BOOL(
        "cycle_momentum", 0, 1.0,
        "Also cycle the optimizer's momentum (or beta1), inversely to the lr."),
    [CYCLIC_HP_BASE_MOMENTUM] = PLUG_HP_FLOAT("base_momentum", 0, 0.0, 1.0, 0.8,
                                              "Momentum at the top of the lr cycle."),
    [CYCLIC_HP_MAX_MOMENTUM] = PLUG_HP_FLOAT("max_momentum", 0, 0.0, 1.0, 0.9,
                                             "Momentum at the bottom of the lr cycle."),
};

PLUG_DEFINE_HPARAM_CHECK(cyclic_check_hparams, "cyclic", cyclic_hparams)

/*
 * scale * f of the formulas above, split as torch computes it: the lr and
 * the momentum each multiply their own height by `scale` first and by `f`
 * second, and floating-point multiplication is not associative.
 */
typedef struct cyclic_point {
    double scale;
    double f;
} cyclic_point;

static cyclic_point cyclic_at(const double *hp, int64_t epoch)
{
    const double up = hp[CYCLIC_HP_STEP_SIZE_UP];
    const double down =
        hp[CYCLIC_HP_STEP_SIZE_DOWN] == 0.0 ? up : hp[CYCLIC_HP_STEP_SIZE_DOWN];
    const double total = up + down;
    const double ratio = up / total;
    /* Python: int / float is a double division; math.floor gives an int. */
    const double q = (double)epoch / total;
    const double cycle = floor(1.0 + q);
    const double x = 1.0 + q - cycle;
    cyclic_point p;
    p.scale = x <= ratio ? x / ratio : (x - 1.0) / (ratio - 1.0);
    switch ((int)hp[CYCLIC_HP_MODE]) {
    case CYCLIC_TRIANGULAR2:
        /* torch: 1 / (2. ** (cycle - 1)). Past 1024 cycles Python raises
         * OverflowError; here the amplitude is then 0. */
        p.f = 1.0 / pow(2.0, cycle - 1.0);
        break;
    case CYCLIC_EXP_RANGE:
        p.f = pow(hp[CYCLIC_HP_GAMMA], (double)epoch);
        break;
    default:
        p.f = 1.0;
        break;
    }
    return p;
}

static optimd_status cyclic_lr(const optimd_host *host, const optimd_sched_args *args,
                               double *lr)
{
    optimd_status st = plug_sched_begin(host, args, lr, CYCLIC_HP_COUNT, cyclic_check_hparams);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const cyclic_point p = cyclic_at(hp, args->epoch);
    const double base = hp[CYCLIC_HP_BASE_LR];
    const double base_height = (hp[CYCLIC_HP_MAX_LR] - base) * p.scale;
    const double value = base + base_height * p.f;
    if (!isfinite(value))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "cyclic: the lr at epoch %lld overflows (gamma^epoch)",
                         (long long)args->epoch);
    *lr = value;
    return OPTIMD_OK;
}

static optimd_status cyclic_momentum(const optimd_host *host, const optimd_sched_args *args,
                                     double *momentum)
{
    optimd_status st =
        plug_sched_begin(host, args, momentum, CYCLIC_HP_COUNT, cyclic_check_hparams);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    if (hp[CYCLIC_HP_CYCLE_MOMENTUM] == 0.0) {
        *momentum = NAN;
        return OPTIMD_OK;
    }
    const cyclic_point p = cyclic_at(hp, args->epoch);
    const double max_m = hp[CYCLIC_HP_MAX_MOMENTUM];
    const double base_height = (max_m - hp[CYCLIC_HP_BASE_MOMENTUM]) * p.scale;
    const double value = max_m - base_height * p.f;
    if (!isfinite(value))
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "cyclic: the momentum at epoch %lld overflows (gamma^epoch)",
                         (long long)args->epoch);
    *momentum = value;
    return OPTIMD_OK;
}

static const optimd_scheduler cyclic_scheduler = {
    .struct_size = sizeof(optimd_scheduler),
    .n_hparams = CYCLIC_HP_COUNT,
    .hparams = cyclic_hparams,
    .check_hparams = cyclic_check_hparams,
    .lr = cyclic_lr,
    .momentum = cyclic_momentum,
    .n_state = 0,
    .observe = NULL,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_SCHEDULER,
    .id = "cyclic",
    .version = "1.0.0",
    .description = "Cycles the lr between base_lr and max_lr (momentum inversely)"
                   ", as torch CyclicLR 1.13",
    .optimizer = NULL,
    .scheduler = &cyclic_scheduler,
};
