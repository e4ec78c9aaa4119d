/* Times one optimizer plugin's step on a large fp32 tensor, the way the
 * daemon calls it (a host table with a real compute pool), and prints the
 * median milliseconds and the useful bandwidth. bench/kernels.sh runs it
 * beside torch and the memory bandwidth bound.
 *
 * usage: bench_kernels PLUGIN.so N_ELEMENTS THREADS [key=value]...
 */
#include "compute_pool.h"
#include "host.h"

#include <dlfcn.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *filled(int64_t n, unsigned seed, float scale)
{
    float *a = aligned_alloc(64, ((size_t)n * 4 + 63) / 64 * 64);
    if (!a) exit(1);
    srand(seed);
    for (int64_t i = 0; i < n; i++) a[i] = scale * ((float)rand() / (float)RAND_MAX - 0.5f);
    return a;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s PLUGIN.so N THREADS [key=value]...\n", argv[0]);
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    const optimd_plugin_desc *d = h ? dlsym(h, OPTIMD_PLUGIN_SYMBOL) : NULL;
    if (!d || d->kind != OPTIMD_KIND_OPTIMIZER) {
        fprintf(stderr, "bench_kernels: %s is no optimizer plugin\n", argv[1]);
        return 1;
    }
    const optimd_optimizer *o = d->optimizer;
    int64_t n = atoll(argv[2]);
    uint32_t threads = (uint32_t)atoi(argv[3]);
    double *hp = calloc(o->n_hparams, sizeof *hp);
    for (uint32_t i = 0; i < o->n_hparams; i++) hp[i] = o->hparams[i].default_value;
    for (int a = 4; a < argc; a++) {
        char *eq = strchr(argv[a], '=');
        if (!eq) return 2;
        *eq = '\0';
        for (uint32_t i = 0; i < o->n_hparams; i++)
            if (strcmp(o->hparams[i].key, argv[a]) == 0) hp[i] = strcmp(eq + 1, "true") == 0 ? 1 : atof(eq + 1);
    }
    int64_t shape[1] = {n}, strides[1] = {1};
    float *p = filled(n, 1, 2.0f), *g = filled(n, 2, 2e-3f);
    optimd_tensor pv = {sizeof pv, OPTIMD_DTYPE_F32, p, n, 1, 0, shape, strides};
    optimd_tensor gv = pv;
    gv.data = g;
    optimd_tensor *slots = calloc(o->n_slots ? o->n_slots : 1, sizeof *slots);
    for (uint32_t k = 0; k < o->n_slots; k++) {
        slots[k] = pv;
        bool enabled = true;
        for (uint32_t i = 0; o->slots[k].enabled_by && i < o->n_hparams; i++)
            if (strcmp(o->hparams[i].key, o->slots[k].enabled_by) == 0) enabled = hp[i] != 0;
        slots[k].data = enabled ? filled(n, 3 + k, 0.0f) : NULL;
    }
    compute_pool *pool;
    compute_pool_start(&pool, threads > 0 ? threads - 1 : 0);
    enum { RUNS = 15 };
    double times[RUNS];
    for (int r = 0; r < RUNS + 2; r++) {
        optimd_step_args a = {sizeof a, o->n_hparams, hp, (uint64_t)r + 1, &pv, &gv, slots, o->n_slots, 0};
        host_call hc;
        host_call_begin(&hc, d->id, pool);
        double t0 = now_ms();
        optimd_status st = o->step(&hc.table, &a);
        double t1 = now_ms();
        host_call_end(&hc);
        if (st != OPTIMD_OK) {
            fprintf(stderr, "bench_kernels: step failed: %s\n", hc.call.error);
            return 1;
        }
        if (r >= 2) times[r - 2] = t1 - t0;   /* two warm-up steps */
    }
    qsort(times, RUNS, sizeof times[0], cmp_double);
    printf("%.3f\n", times[RUNS / 2]);
    compute_pool_stop(pool);
    return 0;
}
