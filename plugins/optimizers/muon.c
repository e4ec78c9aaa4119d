/*
 * Muon (MomentUm Orthogonalized by Newton-Schulz; K. Jordan 2024,
 * kellerjordan.github.io/posts/muon), in the formulation of
 * KellerJordan/Muon's muon_update (momentum as a lerp, not torch 2.x's
 * B = mu B + g). For a parameter with 2 or more dimensions, seen as a
 * rows x cols matrix (rows = shape[0], cols = the product of the rest, as
 * KellerJordan/Muon flattens conv weights):
 *
 *   B = B + (1 - mu) * (g - B)                    momentum_buffer
 *   U = nesterov ? g + mu * (B - g) : B
 *   X = U / (|U|_F + eps), transposed when rows > cols (so X is m x n, m <= n)
 *   ns_steps times:  A = X X^T;  X = a X + (b A + c A A) X
 *   O = X (transposed back) * sqrt(max(1, rows / cols))
 *   p = p * (1 - lr * wd) - lr * O
 *
 * Newton-Schulz runs in the parameter's dtype (float32 for f32, double for
 * f64), not in bfloat16 as the reference does on GPUs, so its result is
 * closer to the exact iteration than the reference's. The products are
 * row-blocked loops on host scratch memory (5 matrices: X, X^T, A, A A,
 * the next X), split by rows across the host's workers; each element is
 * one in-order sum, so the split never changes a result. Cost per step:
 * ns_steps * (4 m^2 n + 2 m^3) flops for an m x n matrix (m <= n).
 *
 * Parameters with fewer than 2 dimensions (biases, gains, scalars) get
 * AdamW instead, as KellerJordan/Muon's MuonWithAuxAdam does, with the
 * adamw_* hyperparameters (the reference's defaults: lr 3e-4, betas
 * (0.9, 0.95), eps 1e-10, wd 0), torch's AdamW rule and the parameter's
 * step count for bias correction. adamw_lr is not scheduled: the host
 * schedules `lr` only. The fallback keeps its first moment in
 * momentum_buffer and its second moment in exp_avg_sq, a ROWS slot: for
 * such parameters it has the parameter's shape, for matrices it is one
 * value per row and unused, so Muon's state stays about 4 bytes per
 * element.
 */
#include "beyond_support.h"

enum muon_hparam_index {
    MUON_HP_LR,
    MUON_HP_MOMENTUM,
    MUON_HP_NESTEROV,
    MUON_HP_WEIGHT_DECAY,
    MUON_HP_NS_STEPS,
    MUON_HP_NS_A,
    MUON_HP_NS_B,
    MUON_HP_NS_C,
    MUON_HP_EPS,
    MUON_HP_ADAMW_LR,
    MUON_HP_ADAMW_BETA1,
    MUON_HP_ADAMW_BETA2,
    MUON_HP_ADAMW_EPS,
    MUON_HP_ADAMW_WEIGHT_DECAY,
    MUON_HP_COUNT
};

#define MUON_HP_COEF(key_, default_, doc_)                                   \
    PLUG_HP_FLOAT((key_), OPTIMD_HP_MUTABLE, -PLUG_HP_LARGE, PLUG_HP_LARGE, (default_), (doc_))

static const optimd_hparam_def muon_hparams[MUON_HP_COUNT] = {
    [MUON_HP_LR] = TORCH_HP_LR(0.02),
    [MUON_HP_MOMENTUM] = PLUG_HP_FLOAT("momentum", OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE,
                                       0.0, 1.0, 0.95, "Momentum (lerp weight 1 - momentum)."),
    [MUON_HP_NESTEROV] = PLUG_HP_BOOL("nesterov", 0, 1.0,
                                      "Orthogonalize g + momentum * (B - g) instead of B."),
    [MUON_HP_WEIGHT_DECAY] = PLUG_HP_FLOAT("weight_decay", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE,
                                           0.0, "Decoupled weight decay: p *= 1 - lr * wd."),
    [MUON_HP_NS_STEPS] = PLUG_HP_INT("ns_steps", OPTIMD_HP_MUTABLE, 0.0, 100.0, 5.0,
                                     "Newton-Schulz iterations."),
    [MUON_HP_NS_A] = MUON_HP_COEF("ns_a", 3.4445, "Newton-Schulz coefficient a (of X)."),
    [MUON_HP_NS_B] = MUON_HP_COEF("ns_b", -4.7750, "Newton-Schulz coefficient b (of A X)."),
    [MUON_HP_NS_C] = MUON_HP_COEF("ns_c", 2.0315, "Newton-Schulz coefficient c (of A A X)."),
    [MUON_HP_EPS] = TORCH_HP_EPS(1e-7, "Added to the Frobenius norm before normalizing."),
    [MUON_HP_ADAMW_LR] = PLUG_HP_FLOAT("adamw_lr", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE, 3e-4,
                                       "AdamW lr for parameters of fewer than 2 dimensions "
                                       "(not scheduled)."),
    [MUON_HP_ADAMW_BETA1] = PLUG_HP_FLOAT("adamw_beta1",
                                          OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, 0.0, 1.0,
                                          0.9, "AdamW beta1 of the fallback."),
    [MUON_HP_ADAMW_BETA2] = PLUG_HP_FLOAT("adamw_beta2",
                                          OPTIMD_HP_MUTABLE | OPTIMD_HP_MAX_EXCLUSIVE, 0.0, 1.0,
                                          0.95, "AdamW beta2 of the fallback."),
    [MUON_HP_ADAMW_EPS] = PLUG_HP_FLOAT("adamw_eps", OPTIMD_HP_MUTABLE, 0.0, PLUG_HP_LARGE,
                                        1e-10, "AdamW eps of the fallback."),
    [MUON_HP_ADAMW_WEIGHT_DECAY] = PLUG_HP_FLOAT("adamw_weight_decay", OPTIMD_HP_MUTABLE, 0.0,
                                                 PLUG_HP_LARGE, 0.0,
                                                 "AdamW decoupled weight decay of the fallback."),
};

enum muon_slot_index { MUON_SLOT_MOMENTUM_BUFFER, MUON_SLOT_EXP_AVG_SQ, MUON_SLOT_COUNT };

static const optimd_slot_def muon_slots[MUON_SLOT_COUNT] = {
    [MUON_SLOT_MOMENTUM_BUFFER] = TORCH_SLOT(
        "momentum_buffer", "Momentum B (matrices) or AdamW's first moment (others)."),
    [MUON_SLOT_EXP_AVG_SQ] = PLUG_SLOT("exp_avg_sq", OPTIMD_SLOT_ROWS, 0, NULL,
                                       "AdamW's second moment for parameters of fewer than 2 "
                                       "dimensions; unused for matrices."),
};

static optimd_status muon_check_hparams(const optimd_host *host, const double *hp, uint32_t n)
{
    optimd_status st = plug_check_hparam_values(host, "muon", muon_hparams,
                                                PLUG_ARRAY_LEN(muon_hparams), hp, n);
    if (st != OPTIMD_OK) return st;
    if (hp[MUON_HP_NESTEROV] != 0.0 && hp[MUON_HP_MOMENTUM] <= 0.0)
        return plug_fail(host, OPTIMD_ERR_INVALID, "nesterov requires momentum > 0");
    return OPTIMD_OK;
}

/* ------------------------------------------------------------ products -- */

/* C[i][0..N) = sum over k of A[i][k] * M[k][0..N), for rows [begin, end). */
typedef struct muon_mm_job {
    const void *a, *m;
    void *c;
    int64_t k, n;
} muon_mm_job;

#define MUON_MM_TILE 256

/* Four rows at a time share each loaded row of M; columns in tiles that
 * keep the four accumulators in L1. Each C element is one sum in k order. */
#define MUON_DEFINE_MM(suffix, T)                                            \
    PLUG_KERNEL static void muon_mm_##suffix(void *user, int64_t begin, int64_t end) \
    {                                                                        \
        const muon_mm_job *job = user;                                       \
        const T *a = job->a, *m = job->m;                                    \
        T *c = job->c;                                                       \
        const int64_t K = job->k, N = job->n;                                \
        T acc[4][MUON_MM_TILE];                                              \
        for (int64_t i = begin; i < end; i += 4) {                           \
            const int64_t rows = end - i < 4 ? end - i : 4;                  \
            for (int64_t j0 = 0; j0 < N; j0 += MUON_MM_TILE) {               \
                const int64_t jn = N - j0 < MUON_MM_TILE ? N - j0 : MUON_MM_TILE; \
                for (int64_t r = 0; r < 4; r++)                              \
                    for (int64_t j = 0; j < jn; j++) acc[r][j] = 0;          \
                if (rows == 4) {                                             \
                    const T *a0 = a + i * K, *a1 = a0 + K, *a2 = a1 + K, *a3 = a2 + K; \
                    for (int64_t kk = 0; kk < K; kk++) {                     \
                        const T *restrict mk = m + kk * N + j0;              \
                        const T s0 = a0[kk], s1 = a1[kk], s2 = a2[kk], s3 = a3[kk]; \
                        for (int64_t j = 0; j < jn; j++) {                   \
                            const T x = mk[j];                               \
                            acc[0][j] = TORCH_FMA(s0, x, acc[0][j]);         \
                            acc[1][j] = TORCH_FMA(s1, x, acc[1][j]);         \
                            acc[2][j] = TORCH_FMA(s2, x, acc[2][j]);         \
                            acc[3][j] = TORCH_FMA(s3, x, acc[3][j]);         \
                        }                                                    \
                    }                                                        \
                } else {                                                     \
                    for (int64_t r = 0; r < rows; r++) {                     \
                        const T *ar = a + (i + r) * K;                       \
                        for (int64_t kk = 0; kk < K; kk++) {                 \
                            const T *restrict mk = m + kk * N + j0;          \
                            const T s = ar[kk];                              \
                            for (int64_t j = 0; j < jn; j++)                 \
                                acc[r][j] = TORCH_FMA(s, mk[j], acc[r][j]);  \
                        }                                                    \
                    }                                                        \
                }                                                            \
                for (int64_t r = 0; r < rows; r++)                           \
                    for (int64_t j = 0; j < jn; j++) c[(i + r) * N + j0 + j] = acc[r][j]; \
            }                                                                \
        }                                                                    \
    }

MUON_DEFINE_MM(f32, float)
MUON_DEFINE_MM(f64, double)

/* C (rows x n) = A (rows x k) M (k x n), on workers when it is big. */
static optimd_status muon_mm(const optimd_host *host, bool f32, const void *a, const void *m,
                             void *c, int64_t rows, int64_t k, int64_t n)
{
    muon_mm_job job = {.a = a, .m = m, .c = c, .k = k, .n = n};
    optimd_range_fn fn = f32 ? muon_mm_f32 : muon_mm_f64;
    if (rows * k * n > ((int64_t)1 << 21) && rows >= 32 && PLUG_HOST_HAS(host, parallel_for))
        return host->parallel_for(host->call, rows, 16, fn, &job);
    fn(&job, 0, rows);
    return OPTIMD_OK;
}

/* ------------------------------------------------------------ the step -- */

typedef struct muon_shape {
    int64_t rows, cols;      /* of the parameter as a matrix */
    int64_t m, n;            /* of X: m <= n */
    bool transposed;         /* X = U^T */
} muon_shape;

/* X = U / (|U| + eps) (U transposed if needed) after the momentum update.
 * Returns |U|^2 through the normalization; writes B. */
#define MUON_DEFINE_PREPARE(suffix, T)                                       \
    static void muon_prepare_##suffix(const muon_shape *s, T *restrict buf,  \
                                      const T *restrict g, T *restrict x, double momentum, \
                                      bool nesterov, double eps)             \
    {                                                                        \
        const T w = (T)(1.0 - momentum), mu = (T)momentum;                   \
        const int64_t rows = s->rows, cols = s->cols;                        \
        double sq = 0.0;                                                     \
        for (int64_t i = 0; i < rows; i++)                                   \
            for (int64_t j = 0; j < cols; j++) {                             \
                const int64_t e = i * cols + j;                              \
                const T b = TORCH_FMA(w, g[e] - buf[e], buf[e]);             \
                buf[e] = b;                                                  \
                const T u = nesterov ? TORCH_FMA(mu, b - g[e], g[e]) : b;    \
                x[s->transposed ? j * rows + i : e] = u;                     \
                sq += (double)u * (double)u;                                 \
            }                                                                \
        const T inv = (T)(1.0 / (sqrt(sq) + eps));                           \
        for (int64_t e = 0; e < rows * cols; e++) x[e] *= inv;               \
    }                                                                        \
    static void muon_transpose_##suffix(const T *restrict x, T *restrict xt, int64_t m, \
                                        int64_t n)                           \
    {                                                                        \
        for (int64_t i0 = 0; i0 < m; i0 += 32)                               \
            for (int64_t j0 = 0; j0 < n; j0 += 32)                           \
                for (int64_t i = i0; i < m && i < i0 + 32; i++)              \
                    for (int64_t j = j0; j < n && j < j0 + 32; j++) xt[j * m + i] = x[i * n + j]; \
    }                                                                        \
    static void muon_axpby_##suffix(T *restrict y, const T *restrict x, double a, double b, \
                                    int64_t n)                               \
    {                                                                        \
        const T ta = (T)a, tb = (T)b;                                        \
        for (int64_t e = 0; e < n; e++) y[e] = TORCH_FMA(tb, y[e], ta * x[e]); \
    }                                                                        \
    static void muon_apply_##suffix(const muon_shape *s, T *restrict p, const T *restrict x, \
                                    double decay, double neg_step)           \
    {                                                                        \
        const T d = (T)decay, ns = (T)neg_step;                              \
        const int64_t rows = s->rows, cols = s->cols;                        \
        for (int64_t i = 0; i < rows; i++)                                   \
            for (int64_t j = 0; j < cols; j++) {                             \
                const int64_t e = i * cols + j;                              \
                p[e] = TORCH_FMA(ns, x[s->transposed ? j * rows + i : e], p[e] * d); \
            }                                                                \
    }

MUON_DEFINE_PREPARE(f32, float)
MUON_DEFINE_PREPARE(f64, double)

static optimd_status muon_matrix_step(const optimd_host *host, const optimd_step_args *args)
{
    const double *hp = args->hparams;
    const optimd_tensor *param = args->param;
    const bool f32 = param->dtype == OPTIMD_DTYPE_F32;
    const size_t elem = f32 ? sizeof(float) : sizeof(double);
    muon_shape s = {.rows = param->shape[0]};
    s.cols = param->numel / s.rows;
    s.transposed = s.rows > s.cols;
    s.m = s.transposed ? s.cols : s.rows;
    s.n = s.transposed ? s.rows : s.cols;
    const size_t mn = (size_t)(s.m * s.n) * elem, mm = (size_t)(s.m * s.m) * elem;
    void *x = host->scratch(host->call, mn);
    void *xt = host->scratch(host->call, mn);
    void *xn = host->scratch(host->call, mn);
    void *a = host->scratch(host->call, mm);
    void *aa = host->scratch(host->call, mm);
    if (x == NULL || xt == NULL || xn == NULL || a == NULL || aa == NULL)
        return plug_fail(host, OPTIMD_ERR_NOMEM, "no scratch memory for Newton-Schulz (%lld x %lld)",
                         (long long)s.m, (long long)s.n);
    void *buf = args->slots[MUON_SLOT_MOMENTUM_BUFFER].data;
    const bool nesterov = hp[MUON_HP_NESTEROV] != 0.0;
    if (f32)
        muon_prepare_f32(&s, buf, args->grad->data, x, hp[MUON_HP_MOMENTUM], nesterov,
                         hp[MUON_HP_EPS]);
    else
        muon_prepare_f64(&s, buf, args->grad->data, x, hp[MUON_HP_MOMENTUM], nesterov,
                         hp[MUON_HP_EPS]);
    const int64_t steps = (int64_t)hp[MUON_HP_NS_STEPS];
    const double ca = hp[MUON_HP_NS_A], cb = hp[MUON_HP_NS_B], cc = hp[MUON_HP_NS_C];
    for (int64_t it = 0; it < steps; it++) {
        optimd_status st;
        if (f32) muon_transpose_f32(x, xt, s.m, s.n);
        else muon_transpose_f64(x, xt, s.m, s.n);
        /* A = X X^T; AA = A A; AA = b A + c AA; XN = AA X; XN = a X + XN. */
        if ((st = muon_mm(host, f32, x, xt, a, s.m, s.n, s.m)) != OPTIMD_OK) return st;
        if ((st = muon_mm(host, f32, a, a, aa, s.m, s.m, s.m)) != OPTIMD_OK) return st;
        if (f32) muon_axpby_f32(aa, a, cb, cc, s.m * s.m);
        else muon_axpby_f64(aa, a, cb, cc, s.m * s.m);
        if ((st = muon_mm(host, f32, aa, x, xn, s.m, s.m, s.n)) != OPTIMD_OK) return st;
        if (f32) muon_axpby_f32(xn, x, ca, 1.0, s.m * s.n);
        else muon_axpby_f64(xn, x, ca, 1.0, s.m * s.n);
        void *swap = x;
        x = xn;
        xn = swap;
    }
    const double lr = hp[MUON_HP_LR];
    const double ratio = (double)s.rows / (double)s.cols;
    const double scale = sqrt(ratio > 1.0 ? ratio : 1.0);
    const double decay = 1.0 - lr * hp[MUON_HP_WEIGHT_DECAY];
    if (f32) muon_apply_f32(&s, param->data, x, decay, -lr * scale);
    else muon_apply_f64(&s, param->data, x, decay, -lr * scale);
    return OPTIMD_OK;
}

/* ---------------------------------------------------- AdamW fallback -- */

typedef struct muon_adamw_job {
    void *param;
    const void *grad;
    void *m, *v;
    double decay, beta1, one_minus_beta1, beta2, one_minus_beta2;
    double bc2_sqrt, eps, neg_step;
} muon_adamw_job;

#define MUON_DEFINE_ADAMW(suffix, T)                                         \
    PLUG_KERNEL static void muon_adamw_##suffix(void *user, int64_t begin, int64_t end) \
    {                                                                        \
        const muon_adamw_job *job = user;                                    \
        T *restrict p = job->param, *restrict m = job->m, *restrict v = job->v; \
        const T *restrict g = job->grad;                                     \
        const T decay = (T)job->decay, eps = (T)job->eps;                    \
        const T beta1 = (T)job->beta1, one_minus_beta1 = (T)job->one_minus_beta1; \
        const T beta2 = (T)job->beta2, one_minus_beta2 = (T)job->one_minus_beta2; \
        const T bc2_sqrt = (T)job->bc2_sqrt, neg_step = (T)job->neg_step;    \
        for (int64_t i = begin; i < end; i++) {                              \
            TORCH_MOMENTS_UPDATE(T, m, v, i, g[i]);                          \
            p[i] = TORCH_ADDCDIV(p[i] * decay, neg_step, mi, TORCH_SQRT(vi) / bc2_sqrt + eps); \
        }                                                                    \
    }

MUON_DEFINE_ADAMW(f32, float)
MUON_DEFINE_ADAMW(f64, double)

static optimd_status muon_adamw_step(const optimd_host *host, const optimd_step_args *args)
{
    const double *hp = args->hparams;
    const double t = (double)args->step, lr = hp[MUON_HP_ADAMW_LR];
    const double beta1 = hp[MUON_HP_ADAMW_BETA1], beta2 = hp[MUON_HP_ADAMW_BETA2];
    muon_adamw_job job = {
        .param = args->param->data,
        .grad = args->grad->data,
        .m = args->slots[MUON_SLOT_MOMENTUM_BUFFER].data,
        .v = args->slots[MUON_SLOT_EXP_AVG_SQ].data,
        .decay = 1.0 - lr * hp[MUON_HP_ADAMW_WEIGHT_DECAY],
        .beta1 = beta1,
        .one_minus_beta1 = 1.0 - beta1,
        .beta2 = beta2,
        .one_minus_beta2 = 1.0 - beta2,
        .bc2_sqrt = sqrt(1.0 - pow(beta2, t)),
        .eps = hp[MUON_HP_ADAMW_EPS],
        .neg_step = -(lr / (1.0 - pow(beta1, t))),
    };
    return torch_run_kernel(host, args, (torch_kernel_pair){muon_adamw_f32, muon_adamw_f64},
                            &job);
}

static optimd_status muon_step(const optimd_host *host, const optimd_step_args *args)
{
    optimd_status st = beyond_check_step(host, args, MUON_HP_COUNT, muon_slots, MUON_SLOT_COUNT,
                                         TORCH_SLOT_BIT(MUON_SLOT_MOMENTUM_BUFFER) |
                                             TORCH_SLOT_BIT(MUON_SLOT_EXP_AVG_SQ));
    if (st != OPTIMD_OK) return st;
    st = muon_check_hparams(host, args->hparams, args->n_hparams);
    if (st != OPTIMD_OK) return st;
    if (args->param->numel == 0) return OPTIMD_OK;
    if (args->param->ndim < 2) return muon_adamw_step(host, args);
    return muon_matrix_step(host, args);
}

PLUG_DEFINE_OPTIMIZER("muon", "1.0.0",
                      "Muon (momentum orthogonalized by Newton-Schulz; AdamW below 2 dims), "
                      "KellerJordan/Muon form",
                      muon_hparams, muon_slots, muon_check_hparams, muon_step);
