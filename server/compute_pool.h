/* Threads that run the chunks of a plugin's parallel_for. The calling thread
 * always works too, so a pool of zero threads is a plain serial loop. */
#ifndef OPTIMD_SERVER_COMPUTE_POOL_H
#define OPTIMD_SERVER_COMPUTE_POOL_H

#include <optimd/plugin.h>
#include <stdint.h>

typedef struct compute_pool compute_pool;

int compute_pool_start(compute_pool **out, uint32_t threads);
/* Waits for running work; no run may be in progress or start afterwards. */
void compute_pool_stop(compute_pool *pool);

/* Runs fn over [0, n) in chunks of at least `grain` elements (multiples of
 * 16 but the last) and returns when all are done. Any thread may call it,
 * several at once. */
void compute_pool_run(compute_pool *pool, int64_t n, int64_t grain,
                      optimd_range_fn fn, void *user);

#endif
