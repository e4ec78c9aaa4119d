/*
 * OneCycleLR: the 1cycle policy, as torch.optim.lr_scheduler.OneCycleLR of
 * torch 1.13.1: the lr rises from max_lr / div_factor to max_lr, then
 * anneals to max_lr / div_factor / final_div_factor, over total_steps
 * epochs (three_phase: up, back down to the initial lr, then down to the
 * minimum); the optimizer's momentum (or beta1) moves the other way,
 * max_momentum -> base_momentum -> max_momentum.
 *
 * torch's get_lr() is a closed form of the epoch; it is evaluated here in
 * double in torch's operation order, so the sequence equals torch's bit for
 * bit (T = total_steps, p = pct_start, e = epoch):
 *
 *   phase ends (inclusive):  two-phase    p*T - 1, T - 1
 *                            three-phase  p*T - 1, (2p)*T - 2, T - 1
 *   the phase of e is the first whose end is >= e (else the last one);
 *   start = the previous phase's end (0 for the first)
 *   pct = (e - start) / (end - start)
 *   cos:    lr = to + (from - to) / 2 * (cos(pi * pct) + 1)
 *   linear: lr = (to - from) * pct + from
 *
 * The optimizer's own lr plays no part (torch's neither). torch evaluates
 * epoch T too (after the T-th step; an extrapolated value that no step of
 * the schedule uses) and raises at epoch T + 1: so does this plugin, with
 * an error. A configuration in which torch would divide by zero at some
 * epoch 0..T (a phase of length 0, e.g. pct_start 1 with two phases) is
 * refused by check_hparams.
 *
 * torch takes either total_steps or epochs and steps_per_epoch; here the
 * client passes total_steps = epochs * steps_per_epoch.
 */
#include "../plugin_support.h"

#include <math.h>

enum onecycle_anneal { ONECYCLE_COS = 0, ONECYCLE_LINEAR = 1 };

enum onecycle_hparam_index {
    ONECYCLE_HP_MAX_LR,
    ONECYCLE_HP_TOTAL_STEPS,
    ONECYCLE_HP_PCT_START,
    ONECYCLE_HP_ANNEAL_STRATEGY,
    ONECYCLE_HP_CYCLE_MOMENTUM,
    ONECYCLE_HP_BASE_MOMENTUM,
    ONECYCLE_HP_MAX_MOMENTUM,
    ONECYCLE_HP_DIV_FACTOR,
    ONECYCLE_HP_FINAL_DIV_FACTOR,
    ONECYCLE_HP_THREE_PHASE,
    ONECYCLE_HP_COUNT
};

static const optimd_hparam_def onecycle_hparams[ONECYCLE_HP_COUNT] = {
    [ONECYCLE_HP_MAX_LR] = PLUG_HP_FLOAT("max_lr", OPTIMD_HP_REQUIRED, 0.0, PLUG_HP_LARGE, 0.0,
                                         "Peak lr of the cycle."),
    [ONECYCLE_HP_TOTAL_STEPS] = PLUG_HP_INT(
        "total_steps", OPTIMD_HP_REQUIRED, 1.0, 2147483647.0, 1.0,
        "Steps in the cycle (torch's epochs * steps_per_epoch); epochs past it fail."),
    [ONECYCLE_HP_PCT_START] = PLUG_HP_FLOAT("pct_start", 0, 0.0, 1.0, 0.3,
                                            "Fraction of the cycle spent raising the lr."),
    [ONECYCLE_HP_ANNEAL_STRATEGY] = PLUG_HP_INT("anneal_strategy", 0, 0.0, 1.0, 0.0,
                                                "0 cosine annealing, 1 linear."),
    [ONECYCLE_HP_CYCLE_MOMENTUM] = PLUG_HP_BOOL(
        "cycle_momentum", 0, 1.0,
        "Also cycle the optimizer's momentum (or beta1), inversely to the lr."),
    [ONECYCLE_HP_BASE_MOMENTUM] = PLUG_HP_FLOAT("base_momentum", 0, 0.0, 1.0, 0.85,
                                                "Momentum at the peak lr."),
    [ONECYCLE_HP_MAX_MOMENTUM] = PLUG_HP_FLOAT("max_momentum", 0, 0.0, 1.0, 0.95,
                                               "Momentum at the start and end of the cycle."),
    [ONECYCLE_HP_DIV_FACTOR] = PLUG_HP_FLOAT("div_factor", OPTIMD_HP_MIN_EXCLUSIVE, 0.0,
                                             PLUG_HP_LARGE, 25.0,
                                             "The initial lr is max_lr / div_factor."),
    [ONECYCLE_HP_FINAL_DIV_FACTOR] = PLUG_HP_FLOAT(
        "final_div_factor", OPTIMD_HP_MIN_EXCLUSIVE, 0.0, PLUG_HP_LARGE, 1e4,
        "The final lr is the initial lr / final_div_factor."),
    [ONECYCLE_HP_THREE_PHASE] = PLUG_HP_BOOL(
        "three_phase", 0, 0.0,
        "Annealing back to the initial lr before the final descent (a third phase)."),
};

#define ONECYCLE_MAX_PHASES 3

/* Which value a phase anneals the lr from and to. */
enum onecycle_level { LEVEL_INITIAL, LEVEL_MAX, LEVEL_MIN, LEVEL_COUNT };
/* And the momentum. */
enum onecycle_momentum_level { MOMENTUM_BASE, MOMENTUM_MAX };

/* torch's _schedule_phases: `end` is a double, as torch's end_step (a
 * float in every phase but the last, where the int T - 1 converts
 * exactly). */
typedef struct onecycle_phases {
    int n;
    double end[ONECYCLE_MAX_PHASES];
    int lr_from[ONECYCLE_MAX_PHASES], lr_to[ONECYCLE_MAX_PHASES];
    int m_from[ONECYCLE_MAX_PHASES], m_to[ONECYCLE_MAX_PHASES];
} onecycle_phases;

static onecycle_phases onecycle_make_phases(const double *hp)
{
    const double t = hp[ONECYCLE_HP_TOTAL_STEPS];
    const double pct = hp[ONECYCLE_HP_PCT_START];
    onecycle_phases ph;
    if (hp[ONECYCLE_HP_THREE_PHASE] != 0.0) {
        ph = (onecycle_phases){
            .n = 3,
            /* float(pct*T) - 1, float(2*pct*T) - 2 (Python: (2*pct)*T), T - 1 */
            .end = {pct * t - 1.0, 2.0 * pct * t - 2.0, t - 1.0},
            .lr_from = {LEVEL_INITIAL, LEVEL_MAX, LEVEL_INITIAL},
            .lr_to = {LEVEL_MAX, LEVEL_INITIAL, LEVEL_MIN},
            .m_from = {MOMENTUM_MAX, MOMENTUM_BASE, MOMENTUM_MAX},
            .m_to = {MOMENTUM_BASE, MOMENTUM_MAX, MOMENTUM_MAX},
        };
    } else {
        ph = (onecycle_phases){
            .n = 2,
            .end = {pct * t - 1.0, t - 1.0},
            .lr_from = {LEVEL_INITIAL, LEVEL_MAX},
            .lr_to = {LEVEL_MAX, LEVEL_MIN},
            .m_from = {MOMENTUM_MAX, MOMENTUM_BASE},
            .m_to = {MOMENTUM_BASE, MOMENTUM_MAX},
        };
    }
    return ph;
}

/* The loop of torch's get_lr(): the phase that `epoch` falls in, and where
 * that phase starts. */
static int onecycle_locate(const onecycle_phases *ph, int64_t epoch, double *start)
{
    double s = 0.0;
    for (int i = 0; i < ph->n; i++) {
        if ((double)epoch <= ph->end[i] || i == ph->n - 1) {
            *start = s;
            return i;
        }
        s = ph->end[i];
    }
    *start = s; /* not reached: the last phase always matches */
    return ph->n - 1;
}

static optimd_status onecycle_check_hparams(const optimd_host *host, const double *hparams,
                                            uint32_t n)
{
    optimd_status st = plug_check_hparam_values(host, "onecycle", onecycle_hparams,
                                                PLUG_ARRAY_LEN(onecycle_hparams), hparams, n);
    if (st != OPTIMD_OK) return st;
    /*
     * A phase of length 0 makes torch divide by zero at the first epoch
     * that falls in it, and each such phase has one in 0..T: with
     * x = pct_start * T, the first phase (and the second of three) has
     * length 0 only for x == 1, when its end is epoch 0; the last one
     * only when the phase before it ends at T - 1, so that epoch T is its.
     * The test (tests/parity/sched_parity.py) checks this refusal against
     * torch over a grid of total_steps and pct_start.
     */
    const onecycle_phases ph = onecycle_make_phases(hparams);
    for (int i = 0; i < ph.n; i++) {
        double start = i == 0 ? 0.0 : ph.end[i - 1];
        if (ph.end[i] - start == 0.0)
            return plug_fail(host, OPTIMD_ERR_INVALID,
                             "onecycle: phase %d of %d has no steps (pct_start %g, total_steps "
                             "%.0f): torch divides by zero there",
                             i + 1, ph.n, hparams[ONECYCLE_HP_PCT_START],
                             hparams[ONECYCLE_HP_TOTAL_STEPS]);
    }
    return OPTIMD_OK;
}

static double onecycle_anneal(int strategy, double from, double to, double pct)
{
    if (strategy == ONECYCLE_LINEAR) return (to - from) * pct + from;
    const double cos_out = cos(M_PI * pct) + 1.0;
    return to + (from - to) / 2.0 * cos_out;
}

/* Common part of lr and momentum: the checks, then the phase and its pct. */
static optimd_status onecycle_begin(const optimd_host *host, const optimd_sched_args *args,
                                    const double *out, onecycle_phases *ph, int *phase,
                                    double *pct)
{
    optimd_status st =
        plug_sched_begin(host, args, out, ONECYCLE_HP_COUNT, onecycle_check_hparams);
    if (st != OPTIMD_OK) return st;
    const double t = args->hparams[ONECYCLE_HP_TOTAL_STEPS];
    if ((double)args->epoch > t)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "onecycle: epoch %lld is past total_steps %.0f (torch raises "
                         "ValueError: tried to step %lld times); open a new schedule",
                         (long long)args->epoch, t, (long long)args->epoch + 1);
    *ph = onecycle_make_phases(args->hparams);
    double start = 0.0;
    *phase = onecycle_locate(ph, args->epoch, &start);
    const double length = ph->end[*phase] - start;
    if (length == 0.0) /* refused by check_hparams */
        return plug_fail(host, OPTIMD_ERR_INTERNAL, "onecycle: phase of length 0");
    *pct = ((double)args->epoch - start) / length;
    return OPTIMD_OK;
}

static optimd_status onecycle_lr(const optimd_host *host, const optimd_sched_args *args,
                                 double *lr)
{
    onecycle_phases ph;
    int phase = 0;
    double pct = 0.0;
    optimd_status st = onecycle_begin(host, args, lr, &ph, &phase, &pct);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    double level[LEVEL_COUNT];
    level[LEVEL_MAX] = hp[ONECYCLE_HP_MAX_LR];
    level[LEVEL_INITIAL] = level[LEVEL_MAX] / hp[ONECYCLE_HP_DIV_FACTOR];
    level[LEVEL_MIN] = level[LEVEL_INITIAL] / hp[ONECYCLE_HP_FINAL_DIV_FACTOR];
    *lr = onecycle_anneal((int)hp[ONECYCLE_HP_ANNEAL_STRATEGY], level[ph.lr_from[phase]],
                          level[ph.lr_to[phase]], pct);
    return OPTIMD_OK;
}

static optimd_status onecycle_momentum(const optimd_host *host, const optimd_sched_args *args,
                                       double *momentum)
{
    onecycle_phases ph;
    int phase = 0;
    double pct = 0.0;
    optimd_status st = onecycle_begin(host, args, momentum, &ph, &phase, &pct);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    if (hp[ONECYCLE_HP_CYCLE_MOMENTUM] == 0.0) {
        *momentum = NAN;
        return OPTIMD_OK;
    }
    const double max_m = hp[ONECYCLE_HP_MAX_MOMENTUM];
    const double base_m = hp[ONECYCLE_HP_BASE_MOMENTUM];
    *momentum = onecycle_anneal((int)hp[ONECYCLE_HP_ANNEAL_STRATEGY],
                                ph.m_from[phase] == MOMENTUM_MAX ? max_m : base_m,
                                ph.m_to[phase] == MOMENTUM_MAX ? max_m : base_m, pct);
    return OPTIMD_OK;
}

static const optimd_scheduler onecycle_scheduler = {
    .struct_size = sizeof(optimd_scheduler),
    .n_hparams = ONECYCLE_HP_COUNT,
    .hparams = onecycle_hparams,
    .check_hparams = onecycle_check_hparams,
    .lr = onecycle_lr,
    .momentum = onecycle_momentum,
    .n_state = 0,
    .observe = NULL,
};

OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {
    .abi_major = OPTIMD_ABI_MAJOR,
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_SCHEDULER,
    .id = "onecycle",
    .version = "1.0.0",
    .description = "The 1cycle policy over total_steps (momentum inversely)"
                   ", as torch OneCycleLR 1.13",
    .optimizer = NULL,
    .scheduler = &onecycle_scheduler,
};
