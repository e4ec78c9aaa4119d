/* The memory-bandwidth bound an optimizer kernel is measured against: GB/s
 * of an in-place a[i] += s * b[i] (2 reads + 1 write per element, all
 * counted) over N fp32 elements on THREADS threads, best of 9 runs.
 * usage: bench_bandwidth N THREADS */
#include "compute_pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct axpy {
    float *a;
    const float *b;
} axpy;

static void run_axpy(void *user, int64_t begin, int64_t end)
{
    axpy *x = user;
    float *restrict a = x->a;
    const float *restrict b = x->b;
    for (int64_t i = begin; i < end; i++) a[i] += 1e-3f * b[i];
}

int main(int argc, char **argv)
{
    if (argc < 3) return 2;
    int64_t n = atoll(argv[1]);
    int threads = atoi(argv[2]);
    float *a = aligned_alloc(64, ((size_t)n * 4 + 63) / 64 * 64);
    float *b = aligned_alloc(64, ((size_t)n * 4 + 63) / 64 * 64);
    if (!a || !b) return 1;
    memset(a, 0, (size_t)n * 4);
    for (int64_t i = 0; i < n; i++) b[i] = (float)(i & 1023);
    compute_pool *pool;
    compute_pool_start(&pool, threads > 0 ? (uint32_t)threads - 1 : 0);
    axpy x = {a, b};
    double best = 1e30;
    for (int r = 0; r < 9; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        compute_pool_run(pool, n, 16384, run_axpy, &x);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        if (s < best) best = s;
    }
    printf("%.2f\n", 12.0 * (double)n / best / 1e9);
    compute_pool_stop(pool);
    return 0;
}
