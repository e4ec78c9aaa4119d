/* Whether a buffer of IEEE floats holds only finite values: the check every
 * gradient (NONFINITE) and every updated parameter (a plugin bug) goes
 * through, tens of megabytes a step. */
#ifndef OPTIMD_SERVER_FINITE_H
#define OPTIMD_SERVER_FINITE_H

#include "compute_pool.h"

#include <stdbool.h>
#include <stddef.h>

/* `n` elements of `elem_size` bytes (4: binary32, 8: binary64) at `data`,
 * which need not be aligned. */
bool optimd_all_finite(const void *data, size_t n, size_t elem_size);
/* The same, the scan spread over the compute pool: memory bound, and one
 * core does not draw all the bandwidth there is. */
bool optimd_all_finite_parallel(compute_pool *pool, const void *data, size_t n, size_t elem_size);

/* Copies `n` bytes and says whether they are all finite elements of
 * `elem_size` bytes (0: copy only, returns true), in one pass: large copies
 * use non-temporal stores. `dst` and `src` must not overlap. */
bool optimd_copy_finite(void *dst, const void *src, size_t n, size_t elem_size);
/* The same for `n` elements of `elem_size` (4 or 8) bytes, spread over the
 * compute pool. */
bool optimd_copy_finite_parallel(compute_pool *pool, void *dst, const void *src, size_t n, size_t elem_size);

#endif
