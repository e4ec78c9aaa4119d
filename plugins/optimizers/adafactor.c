/*
 * Adafactor (Shazeer & Stern 2018, arXiv:1804.04235) with the semantics of
 * Hugging Face transformers' `Adafactor` (the paper's algorithm plus its
 * options). With t the parameter's step count:
 *
 *   rho   = relative_step ? min(warmup_init ? 1e-6 * t : 1e-2, 1 / sqrt(t)) : lr
 *   alpha = (scale_parameter ? max(eps2, RMS(p)) : 1) * rho
 *   b2    = 1 - t^decay_rate
 *   q     = g^2 + eps1
 *   matrices [..., r, c] (ndim >= 2; each trailing r x c matrix on its own):
 *       R = b2 * R + (1 - b2) * rowmean(q)        exp_avg_sq_row  [..., r]
 *       C = b2 * C + (1 - b2) * colmean(q)        exp_avg_sq_col  [..., c]
 *       U = g / sqrt(R_i / mean(R) * C_j)
 *   vectors and scalars (ndim < 2):
 *       V = b2 * V + (1 - b2) * q                 exp_avg_sq_row  (param's shape)
 *       U = g / sqrt(V)
 *   U = alpha * U / max(1, RMS(U) / clip_threshold)     (RMS over the tensor)
 *   with use_momentum: m = beta1 * m + (1 - beta1) * U; U = m    exp_avg
 *   p = p - weight_decay * alpha * p;  p = p - U
 *
 * Every optimizer declares `lr`, which the host schedules; with
 * relative_step (the default) Adafactor computes its own step size and lr
 * is ignored. HF's beta1 None is use_momentum false here (the slot exists
 * only then); HF refuses warmup_init without relative_step, and so does
 * check_hparams.
 *
 * Passes: (1) row and column sums of q in double, on the calling thread,
 * and the factored statistics; (2) sums of U^2 and p^2 (double, fixed
 * blocks, so workers do not change the result); (3) the update. The RMS of
 * p is taken before the update, as HF does.
 */
#include "beyond_support.h"

enum adafactor_hparam_index {
    AF_HP_LR,
    AF_HP_EPS1,
    AF_HP_EPS2,
    AF_HP_CLIP_THRESHOLD,
    AF_HP_DECAY_RATE,
    AF_HP_BETA1,
    AF_HP_USE_MOMENTUM,
    AF_HP_WEIGHT_DECAY,
    AF_HP_RELATIVE_STEP,
    AF_HP_SCALE_PARAMETER,
    AF_HP_WARMUP_INIT,
    AF_HP_COUNT
};

static const optimd_hparam_def adafactor_hparams[AF_HP_COUNT] = {
    [AF_HP_LR] = PLUG_HP_FLOAT("lr", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 1e-3,
                               "Step size when relative_step is false; ignored otherwise."),
    [AF_HP_EPS1] = PLUG_HP_FLOAT("eps1", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 1e-30,
                                 "Added to the squared gradient (eps[0])."),
    [AF_HP_EPS2] = PLUG_HP_FLOAT("eps2", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 1e-3,
                                 "Floor of RMS(p) in the relative step size (eps[1])."),
    [AF_HP_CLIP_THRESHOLD] = PLUG_HP_FLOAT(
        "clip_threshold", OPTIMD_HP_MUTABLE | OPTIMD_HP_MIN_EXCLUSIVE, 0.0, PLUG_HP_LARGE, 1.0,
        "Threshold d of the update's RMS clipping."),
    [AF_HP_DECAY_RATE] = PLUG_HP_FLOAT("decay_rate", OPTIMD_HP_MUTABLE, -PLUG_HP_LARGE, 0.0, -0.8,
                                       "Second-moment decay: beta2_t = 1 - t^decay_rate."),
    [AF_HP_BETA1] = PLUG_HP_FLOAT("beta1", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, 0.0, 1.0,
                                  0.0, "Momentum of the update (needs use_momentum)."),
    [AF_HP_USE_MOMENTUM] = PLUG_HP_BOOL("use_momentum", 0, 0.0,
                                        "Keep exp_avg, an EMA of the update (HF: beta1 not None)."),
    [AF_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT("weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE,
                                         0.0, "Decoupled weight decay, scaled by the step size."),
    [AF_HP_RELATIVE_STEP] = PLUG_HP_BOOL("relative_step", 0, 1.0,
                                         "Step size min(1e-2, 1/sqrt(t)) instead of lr."),
    [AF_HP_SCALE_PARAMETER] = PLUG_HP_BOOL("scale_parameter", 0, 1.0,
                                           "Scale the step size by max(eps2, RMS(p))."),
    [AF_HP_WARMUP_INIT] = PLUG_HP_BOOL("warmup_init", 0, 0.0,
                                       "Relative step grows as 1e-6 * t (needs relative_step)."),
};

enum adafactor_slot_index { AF_SLOT_ROW, AF_SLOT_COL, AF_SLOT_EXP_AVG, AF_SLOT_COUNT };

static const optimd_slot_def adafactor_slots[AF_SLOT_COUNT] = {
    [AF_SLOT_ROW] = PLUG_SLOT("exp_avg_sq_row", OPTIMD_SLOT_ROWS, 0, NULL,
                              "Row means of the second moment; the full second moment when "
                              "the parameter has fewer than 2 dimensions."),
    [AF_SLOT_COL] = PLUG_SLOT("exp_avg_sq_col", OPTIMD_SLOT_COLS, 0, NULL,
                              "Column means of the second moment (unused below 2 dimensions)."),
    [AF_SLOT_EXP_AVG] = PLUG_SLOT("exp_avg", OPTIMD_SLOT_LIKE_PARAM, 0, "use_momentum",
                                  "EMA of the scaled update (beta1)."),
};

static optimd_status adafactor_check_hparams(const optimd_host *host, const double *hp,
                                             uint32_t n)
{
    optimd_status st = plug_check_hparam_values(host, "adafactor", adafactor_hparams,
                                                PLUG_ARRAY_LEN(adafactor_hparams), hp, n);
    if (st != OPTIMD_OK) return st;
    if (hp[AF_HP_WARMUP_INIT] != 0.0 && hp[AF_HP_RELATIVE_STEP] == 0.0)
        return plug_fail(host, OPTIMD_ERR_INVALID, "warmup_init requires relative_step");
    if (hp[AF_HP_BETA1] != 0.0 && hp[AF_HP_USE_MOMENTUM] == 0.0)
        return plug_fail(host, OPTIMD_ERR_INVALID,
                         "beta1 = %g needs use_momentum true (the exp_avg slot)",
                         hp[AF_HP_BETA1]);
    return OPTIMD_OK;
}

typedef struct adafactor_job {
    void *param;
    const void *grad;
    void *v;                 /* unfactored second moment */
    void *m;                 /* exp_avg or NULL */
    const void *rowf, *colf; /* factored: 1/sqrt(R_i/mean R), 1/sqrt(C_j), param dtype */
    int64_t rows, cols;      /* of each matrix; cols is the unit length */
    double beta2, one_minus_beta2, eps1;
    double scale;            /* alpha / max(1, RMS(U)/d) */
    double neg_wd_alpha;
    double beta1, one_minus_beta1;
} adafactor_job;

#define AF_DEFINE_KERNELS(suffix, T)                                         \
    /* Unfactored: V updated, sums of U^2 and p^2. Units are elements. */    \
    PLUG_KERNEL static void af_vec_sums_##suffix(void *ctx, int64_t begin, int64_t end, \
                                                 double *acc)                \
    {                                                                        \
        const adafactor_job *job = ctx;                                      \
        const T *restrict p = job->param, *restrict g = job->grad;           \
        T *restrict v = job->v;                                              \
        const T beta2 = (T)job->beta2, one_minus_beta2 = (T)job->one_minus_beta2; \
        const T eps1 = (T)job->eps1;                                         \
        double uu = 0.0, pp = 0.0;                                           \
        for (int64_t i = begin; i < end; i++) {                              \
            const T vi = TORCH_FMA(one_minus_beta2, g[i] * g[i] + eps1, v[i] * beta2); \
            v[i] = vi;                                                       \
            const double u = (double)(g[i] / TORCH_SQRT(vi));                \
            uu += u * u;                                                     \
            pp += (double)p[i] * (double)p[i];                               \
        }                                                                    \
        acc[0] += uu;                                                        \
        acc[1] += pp;                                                        \
    }                                                                        \
    /* Factored: sums of U^2 and p^2. Units are rows of `cols` elements. */  \
    PLUG_KERNEL static void af_mat_sums_##suffix(void *ctx, int64_t begin, int64_t end, \
                                                 double *acc)                \
    {                                                                        \
        const adafactor_job *job = ctx;                                      \
        const int64_t c = job->cols;                                         \
        const T *restrict rowf = job->rowf, *restrict colf_all = job->colf;  \
        double uu = 0.0, pp = 0.0;                                           \
        for (int64_t row = begin; row < end; row++) {                        \
            const T *restrict p = (const T *)job->param + row * c;           \
            const T *restrict g = (const T *)job->grad + row * c;            \
            const T *restrict colf = colf_all + row / job->rows * c;         \
            const T rf = rowf[row];                                          \
            for (int64_t j = 0; j < c; j++) {                                \
                const double u = (double)(rf * colf[j] * g[j]);              \
                uu += u * u;                                                 \
                pp += (double)p[j] * (double)p[j];                           \
            }                                                                \
        }                                                                    \
        acc[0] += uu;                                                        \
        acc[1] += pp;                                                        \
    }                                                                        \
    static inline __attribute__((always_inline)) void af_apply_##suffix##_loop( \
        const adafactor_job *job, int64_t n, T *restrict p, const T *restrict u_of, \
        T *restrict m)                                                       \
    {                                                                        \
        const T scale = (T)job->scale, neg_wd_alpha = (T)job->neg_wd_alpha;  \
        const T beta1 = (T)job->beta1, one_minus_beta1 = (T)job->one_minus_beta1; \
        if (m != NULL) {                                                     \
            for (int64_t j = 0; j < n; j++) {                                \
                const T mj = TORCH_EMA(m[j], u_of[j] * scale, beta1, one_minus_beta1); \
                m[j] = mj;                                                   \
                p[j] = TORCH_FMA(neg_wd_alpha, p[j], p[j]) - mj;             \
            }                                                                \
        } else {                                                             \
            for (int64_t j = 0; j < n; j++)                                  \
                p[j] = TORCH_FMA(neg_wd_alpha, p[j], p[j]) - u_of[j] * scale; \
        }                                                                    \
    }                                                                        \
    /* Unfactored update; u_of is computed into a small stack buffer so the \
     * apply loop is shared with the factored case. */                       \
    PLUG_KERNEL static void af_vec_apply_##suffix(void *ctx, int64_t begin, int64_t end) \
    {                                                                        \
        const adafactor_job *job = ctx;                                      \
        T u[256];                                                            \
        for (int64_t i0 = begin; i0 < end; i0 += 256) {                      \
            const int64_t n = end - i0 < 256 ? end - i0 : 256;               \
            const T *restrict g = (const T *)job->grad + i0;                 \
            const T *restrict v = (const T *)job->v + i0;                    \
            for (int64_t j = 0; j < n; j++) u[j] = g[j] / TORCH_SQRT(v[j]);  \
            af_apply_##suffix##_loop(job, n, (T *)job->param + i0, u,        \
                                     job->m ? (T *)job->m + i0 : NULL);      \
        }                                                                    \
    }                                                                        \
    PLUG_KERNEL static void af_mat_apply_##suffix(void *ctx, int64_t begin, int64_t end) \
    {                                                                        \
        const adafactor_job *job = ctx;                                      \
        const int64_t c = job->cols;                                         \
        const T *rowf = job->rowf;                                           \
        T u[256];                                                            \
        for (int64_t row = begin; row < end; row++) {                        \
            const T *restrict colf = (const T *)job->colf + row / job->rows * c; \
            const T rf = rowf[row];                                          \
            for (int64_t j0 = 0; j0 < c; j0 += 256) {                        \
                const int64_t n = c - j0 < 256 ? c - j0 : 256;               \
                const T *restrict g = (const T *)job->grad + row * c + j0;   \
                for (int64_t j = 0; j < n; j++) u[j] = rf * colf[j0 + j] * g[j]; \
                af_apply_##suffix##_loop(job, n, (T *)job->param + row * c + j0, u, \
                                         job->m ? (T *)job->m + row * c + j0 : NULL); \
            }                                                                \
        }                                                                    \
    }                                                                        \
    /* Pass 1 of the factored case: R and C of every matrix, then the       \
     * factors pass 2 and 3 use. colsum: `cols` doubles of scratch. */       \
    static void af_factor_##suffix(const adafactor_job *job, int64_t batch, T *R, T *C, \
                                   T *rowf, T *colf, double *colsum)         \
    {                                                                        \
        const int64_t r = job->rows, c = job->cols;                          \
        const double b2 = job->beta2, omb2 = job->one_minus_beta2, eps1 = job->eps1; \
        for (int64_t b = 0; b < batch; b++) {                                \
            const T *g = (const T *)job->grad + b * r * c;                   \
            T *Rb = R + b * r, *Cb = C + b * c;                              \
            for (int64_t j = 0; j < c; j++) colsum[j] = 0.0;                 \
            double rsum = 0.0;                                               \
            for (int64_t i = 0; i < r; i++) {                                \
                double s = 0.0;                                              \
                const T *gi = g + i * c;                                     \
                for (int64_t j = 0; j < c; j++) {                            \
                    const double q = (double)gi[j] * (double)gi[j] + eps1;   \
                    s += q;                                                  \
                    colsum[j] += q;                                          \
                }                                                            \
                Rb[i] = (T)((double)Rb[i] * b2 + omb2 * (s / (double)c));    \
                rsum += (double)Rb[i];                                       \
            }                                                                \
            const double rmean = rsum / (double)r;                           \
            for (int64_t i = 0; i < r; i++)                                  \
                rowf[b * r + i] = (T)(1.0 / sqrt((double)Rb[i] / rmean));    \
            for (int64_t j = 0; j < c; j++) {                                \
                Cb[j] = (T)((double)Cb[j] * b2 + omb2 * (colsum[j] / (double)r)); \
                colf[b * c + j] = (T)(1.0 / sqrt((double)Cb[j]));            \
            }                                                                \
        }                                                                    \
    }

AF_DEFINE_KERNELS(f32, float)
AF_DEFINE_KERNELS(f64, double)

static optimd_status adafactor_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = beyond_check_step(
        host, args, AF_HP_COUNT, adafactor_slots, AF_SLOT_COUNT,
        TORCH_SLOT_BIT(AF_SLOT_ROW) | TORCH_SLOT_BIT(AF_SLOT_COL));
    if (st != OPTIMD_OK) return st;
    st = adafactor_check_hparams(host, args->hparams, args->n_hparams);
    if (st != OPTIMD_OK) return st;
    const double *hp = args->hparams;
    const bool use_momentum = hp[AF_HP_USE_MOMENTUM] != 0.0;
    if (use_momentum && args->slots[AF_SLOT_EXP_AVG].data == NULL && args->param->numel > 0)
        return plug_fail(host, OPTIMD_ERR_INVALID, "state slot 'exp_avg' is missing");
    const optimd_tensor *param = args->param;
    const int64_t numel = param->numel;
    if (numel == 0) return OPTIMD_OK;
    const bool f32 = param->dtype == OPTIMD_DTYPE_F32;
    const size_t elem = f32 ? sizeof(float) : sizeof(double);
    const double t = (double)args->step;
    const double beta2 = 1.0 - pow(t, hp[AF_HP_DECAY_RATE]);
    adafactor_job job = {
        .param = param->data,
        .grad = args->grad->data,
        .v = args->slots[AF_SLOT_ROW].data,
        .m = use_momentum ? args->slots[AF_SLOT_EXP_AVG].data : NULL,
        .beta2 = beta2,
        .one_minus_beta2 = 1.0 - beta2,
        .eps1 = hp[AF_HP_EPS1],
        .beta1 = hp[AF_HP_BETA1],
        .one_minus_beta1 = 1.0 - hp[AF_HP_BETA1],
    };
    const bool factored = param->ndim >= 2;
    double sums[2]; /* U^2, p^2 */
    int64_t units = numel, cost = 1, batch = 1;
    void *rowf = NULL, *colf = NULL;
    double *colsum = NULL;
    if (factored) {
        const int64_t r = param->shape[param->ndim - 2], c = param->shape[param->ndim - 1];
        batch = numel / (r * c);
        job.rows = r;
        job.cols = c;
        units = batch * r;
        cost = c;
        rowf = host->scratch(host->call, (size_t)(batch * r) * elem);
        colf = host->scratch(host->call, (size_t)(batch * c) * elem);
        colsum = host->scratch(host->call, (size_t)c * sizeof(double));
        if (rowf == NULL || colf == NULL || colsum == NULL)
            return plug_fail(host, OPTIMD_ERR_NOMEM, "no scratch memory for the factors");
        job.rowf = rowf;
        job.colf = colf;
    }
    /* All scratch is taken before anything is written, so a failure leaves
     * the state as it was. */
    double *partial = beyond_sum_scratch(host, units, beyond_block(cost), 2);
    if (partial == NULL) return OPTIMD_ERR_NOMEM;
    if (factored) {
        if (f32)
            af_factor_f32(&job, batch, args->slots[AF_SLOT_ROW].data,
                          args->slots[AF_SLOT_COL].data, rowf, colf, colsum);
        else
            af_factor_f64(&job, batch, args->slots[AF_SLOT_ROW].data,
                          args->slots[AF_SLOT_COL].data, rowf, colf, colsum);
    }
    st = beyond_sum_with(host, units, beyond_block(cost), cost, 2,
                         factored ? (f32 ? af_mat_sums_f32 : af_mat_sums_f64)
                                  : (f32 ? af_vec_sums_f32 : af_vec_sums_f64),
                         &job, partial, sums);
    if (st != OPTIMD_OK) return st;
    const double n = (double)numel;
    const double rms_u = sqrt(sums[0] / n), rms_p = sqrt(sums[1] / n);
    double rho = hp[AF_HP_LR];
    if (hp[AF_HP_RELATIVE_STEP] != 0.0) {
        const double min_step = hp[AF_HP_WARMUP_INIT] != 0.0 ? 1e-6 * t : 1e-2;
        rho = fmin(min_step, 1.0 / sqrt(t));
    }
    const double alpha =
        (hp[AF_HP_SCALE_PARAMETER] != 0.0 ? fmax(hp[AF_HP_EPS2], rms_p) : 1.0) * rho;
    job.scale = alpha / fmax(1.0, rms_u / hp[AF_HP_CLIP_THRESHOLD]);
    job.neg_wd_alpha = -(hp[AF_HP_WEIGHT_DECAY] * alpha);
    optimd_range_fn apply = factored ? (f32 ? af_mat_apply_f32 : af_mat_apply_f64)
                                     : (f32 ? af_vec_apply_f32 : af_vec_apply_f64);
    return beyond_for_each(host, units, cost, apply, &job);
}

PLUG_DEFINE_OPTIMIZER("adafactor", "1.0.0",
                      "Adafactor (factored second moment, relative step), HF transformers form",
                      adafactor_hparams, adafactor_slots, adafactor_check_hparams,
                      adafactor_step);
