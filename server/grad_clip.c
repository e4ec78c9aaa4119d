/* Gradient clipping as torch 1.13's clip_grad_norm_ and clip_grad_value_
 * compute it, and the step request's clipping options. */
#include "grad_clip.h"

#include "wire.h"

#include <math.h>
#include <optimd/plugin.h>
#include <optimd/protocol.h>
#include <stdlib.h>
#include <string.h>

/* The p-norm of n values as torch 1.13's CPU kernels compute torch.norm
 * with one thread, so that clipping scales by the same coefficient:
 *  - p = 2: 8 float (4 double) lanes, each accumulating x*x with a fused
 *    multiply-add, summed lane by lane, then the tail, fused too, and sqrt;
 *  - p = 1: a sequential sum of |x|; p = inf: the largest |x| (exact);
 *  - other p: a sequential sum of |x|^p, then ^(1/p) (within 1 ulp of
 *    torch; its pow rounds differently somewhere).
 * Accumulation is in the values' dtype, as torch's is. */
static double norm_f32(const float *x, int64_t n, double p)
{
    if (p == 2.0) {
        float lane[8] = {0};
        int64_t d = 0;
        for (; d + 8 <= n; d += 8)
            for (int j = 0; j < 8; j++) lane[j] = fmaf(x[d + j], x[d + j], lane[j]);
        float acc = lane[0];
        for (int j = 1; j < 8; j++) acc = acc + lane[j];
        for (; d < n; d++) acc = fmaf(x[d], x[d], acc);
        return sqrtf(acc);
    }
    float acc = 0.0f, pf = (float)p;
    for (int64_t i = 0; i < n; i++) {
        float v = fabsf(x[i]);
        if (isinf(p)) acc = v > acc ? v : acc;
        else if (p == 1.0) acc = acc + v;
        else acc = acc + powf(v, pf);
    }
    return isinf(p) || p == 1.0 ? acc : powf(acc, 1.0f / pf);
}

static double norm_f64(const double *x, int64_t n, double p)
{
    if (p == 2.0) {
        double lane[4] = {0};
        int64_t d = 0;
        for (; d + 4 <= n; d += 4)
            for (int j = 0; j < 4; j++) lane[j] = fma(x[d + j], x[d + j], lane[j]);
        double acc = lane[0];
        for (int j = 1; j < 4; j++) acc = acc + lane[j];
        for (; d < n; d++) acc = fma(x[d], x[d], acc);
        return sqrt(acc);
    }
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double v = fabs(x[i]);
        if (isinf(p)) acc = v > acc ? v : acc;
        else if (p == 1.0) acc = acc + v;
        else acc = acc + pow(v, p);
    }
    return isinf(p) || p == 1.0 ? acc : pow(acc, 1.0 / p);
}

void grad_clip_value(void *data, uint32_t dtype, int64_t numel, double value)
{
    if (dtype == OPTIMD_DTYPE_F32) {
        float *g = data, v = (float)value;
        for (int64_t k = 0; k < numel; k++) g[k] = g[k] < -v ? -v : g[k] > v ? v : g[k];
    } else {
        double *g = data;
        for (int64_t k = 0; k < numel; k++) g[k] = g[k] < -value ? -value : g[k] > value ? value : g[k];
    }
}

double grad_clip_norm(const void *data, uint32_t dtype, int64_t numel, double p)
{
    return dtype == OPTIMD_DTYPE_F32 ? norm_f32(data, numel, p) : norm_f64(data, numel, p);
}

/* torch.norm(torch.stack(norms), p): the same kernel over the norms. */
double grad_clip_total(const double *norms, size_t n, double p, bool f32)
{
    if (!f32) return norm_f64(norms, (int64_t)n, p);
    float *f = malloc((n ? n : 1) * sizeof *f);
    if (!f) return NAN;
    for (size_t i = 0; i < n; i++) f[i] = (float)norms[i];
    double total = norm_f32(f, (int64_t)n, p);
    free(f);
    return total;
}

/* Multiplies the gradients by torch's clip coefficient for `total`:
 * clamp(max_norm / (total + 1e-6), max=1), where torch 1.13 computes the
 * division as reciprocal(total + 1e-6) * max_norm, in the gradients'
 * dtype; every gradient is multiplied, even by 1. */
void grad_clip_scale(void **data, const uint32_t *dtypes, const int64_t *numels, size_t n, double total,
                     double max_norm, bool f32)
{
    double coef;
    if (f32) {
        float r = 1.0f / ((float)total + (float)1e-6);
        float c = r * (float)max_norm;
        coef = c < 1.0f ? c : 1.0f;
    } else {
        double c = (1.0 / (total + 1e-6)) * max_norm;
        coef = c < 1.0 ? c : 1.0;
    }
    for (size_t i = 0; i < n; i++) {
        if (dtypes[i] == OPTIMD_DTYPE_F32) {
            float *g = data[i], cf = (float)coef;
            for (int64_t k = 0; k < numels[i]; k++) g[k] *= cf;
        } else {
            double *g = data[i];
            for (int64_t k = 0; k < numels[i]; k++) g[k] *= coef;
        }
    }
}

/* The step's optional clipping: "clip_value" (float > 0) and "clip_norm"
 * {max_norm, norm_type = 2, per_group = false}. */
int step_clip_parse(const msgpack_object *req, step_clip *clip, request_error *err)
{
    memset(clip, 0, sizeof *clip);
    clip->norm_type = 2.0;
    const msgpack_object *norm;
    if (wire_get_number(req, "clip_value", false, &clip->value, err) ||
        wire_get_map(req, "clip_norm", false, &norm, err))
        return -1;
    if (wire_map_get(req, "clip_value") && !(clip->value > 0 && isfinite(clip->value)))
        return fail(err, OPTIMD_E_BAD_REQUEST, "'clip_value' must be a finite number > 0");
    if (!norm) return 0;
    if (wire_get_number(norm, "max_norm", true, &clip->max_norm, err) ||
        wire_get_number(norm, "norm_type", false, &clip->norm_type, err) ||
        wire_get_bool(norm, "per_group", false, &clip->per_group, err))
        return -1;
    if (!(clip->max_norm > 0 && isfinite(clip->max_norm)))
        return fail(err, OPTIMD_E_BAD_REQUEST, "'clip_norm.max_norm' must be a finite number > 0");
    if (!(clip->norm_type > 0))
        return fail(err, OPTIMD_E_BAD_REQUEST, "'clip_norm.norm_type' must be > 0 (inf for the max norm)");
    return 0;
}

