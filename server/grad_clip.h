/* Gradient clipping before the update (torch 1.13's clip_grad_value_ and
 * clip_grad_norm_, reproduced to the rounding; docs/protocol.md, step). */
#ifndef OPTIMD_SERVER_GRAD_CLIP_H
#define OPTIMD_SERVER_GRAD_CLIP_H

#include "request_error.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct step_clip {
    double value;              /* > 0: clamp every gradient to [-value, value] */
    double max_norm;           /* > 0: scale by max_norm / (norm + 1e-6) when below 1 */
    double norm_type;          /* p of the p-norm; INFINITY for the max norm */
    bool per_group;            /* a norm per parameter group instead of one */
} step_clip;

/* Reads a step request's "clip_value" and "clip_norm" (none: all zero). */
int step_clip_parse(const msgpack_object *req, step_clip *clip, request_error *err);

/* clip_grad_value_: clamps n elements (optimd_dtype `dtype`) to
 * [-value, value]. Clamping is exact, so any order gives torch's values. */
void grad_clip_value(void *data, uint32_t dtype, int64_t numel, double value);
/* The p-norm of one gradient (optimd_dtype `dtype`), as torch.norm. */
double grad_clip_norm(const void *data, uint32_t dtype, int64_t numel, double p);
/* torch.norm(torch.stack(norms), p), in float32 when `f32`. */
double grad_clip_total(const double *norms, size_t n, double p, bool f32);
/* Multiplies n gradients by clamp(max_norm / (total + 1e-6), max=1). */
void grad_clip_scale(void **data, const uint32_t *dtypes, const int64_t *numels, size_t n, double total,
                     double max_norm, bool f32);

#endif
