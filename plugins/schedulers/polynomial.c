/*
 * PolynomialLR: decays the lr to 0 along (1 - e/T)^power over total_iters
 * epochs, as torch.optim.lr_scheduler.PolynomialLR of torch 1.13.1, with
 * torch's recursive (chainable) rule evaluated in double in torch's
 * operation order, so the sequence equals torch's bit for bit
 * (T = total_iters, e = epoch):
 *
 *   e == 0 or e > T:  lr = last_lr
 *   otherwise:        lr = last_lr * ((1 - e/T) / (1 - (e-1)/T))^power
 *
 * The lr reaches exactly 0 at e = T (for power > 0) and stays there.
 */
#include "../plugin_support.h"

enum polynomial_hparam_index {
    POLYNOMIAL_HP_TOTAL_ITERS,
    POLYNOMIAL_HP_POWER,
    POLYNOMIAL_HP_COUNT
};

static const optimd_hparam_def polynomial_hparams[POLYNOMIAL_HP_COUNT] = {
    [POLYNOMIAL_HP_TOTAL_ITERS] = PLUG_HP_INT("total_iters", 0, 0.0, 2147483647.0, 5.0,
                                              "Epochs until the lr reaches 0."),
    /* A negative power would divide by 0 at e = T (torch raises there). */
    [POLYNOMIAL_HP_POWER] = PLUG_HP_FLOAT("power", 0, 0.0, PLUG_HP_LARGE, 1.0,
                                          "Power of the polynomial decay."),
};

PLUG_DEFINE_HPARAM_CHECK(polynomial_check_hparams, "polynomial", polynomial_hparams)

static optimd_status polynomial_lr(const optimd_host *host, const optimd_sched_args *args,
                                   double *lr)
{
    optimd_status st =
        plug_sched_begin(host, args, lr, POLYNOMIAL_HP_COUNT, polynomial_check_hparams);
    if (st != OPTIMD_OK) return st;
    const int64_t total_iters = (int64_t)args->hparams[POLYNOMIAL_HP_TOTAL_ITERS];
    const int64_t e = args->epoch;
    if (e == 0 || e > total_iters) {
        *lr = args->last_lr;
        return OPTIMD_OK;
    }
    /* Python's int / int is a correctly rounded double division, and
     * float ** float is C's pow for these (non-negative) bases. */
    const double t = (double)total_iters;
    const double decay_factor =
        pow((1.0 - (double)e / t) / (1.0 - (double)(e - 1) / t),
            args->hparams[POLYNOMIAL_HP_POWER]);
    *lr = args->last_lr * decay_factor;
    return OPTIMD_OK;
}

PLUG_DEFINE_SCHEDULER("polynomial", "1.0.0",
                      "Polynomial decay of the lr to 0 over total_iters epochs"
                      ", as torch PolynomialLR 1.13",
                      polynomial_hparams, polynomial_check_hparams, polynomial_lr);
