/* compute_pool: every element of every parallel_for is visited exactly
 * once, chunks respect the grain, and several threads may run loops at the
 * same time. */
#include "check.h"
#include "compute_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

int check_failure_count;

typedef struct visit {
    atomic_int *hits;
    atomic_int calls;
    int64_t grain;
    int64_t n;
    int bad_alignment;
    int too_small;
} visit;

static void mark(void *user, int64_t begin, int64_t end)
{
    visit *v = user;
    atomic_fetch_add(&v->calls, 1);
    if (end < v->n && (end - begin) % 16 != 0) v->bad_alignment = 1;
    if (end < v->n && end - begin < v->grain) v->too_small = 1;
    for (int64_t i = begin; i < end; i++) atomic_fetch_add(&v->hits[i], 1);
}

static void run_and_check(compute_pool *pool, int64_t n, int64_t grain)
{
    visit v = {.n = n, .grain = grain};
    v.hits = calloc((size_t)(n ? n : 1), sizeof *v.hits);
    atomic_init(&v.calls, 0);
    compute_pool_run(pool, n, grain, mark, &v);
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; i++) wrong += atomic_load(&v.hits[i]) != 1;
    CHECK(wrong == 0, "n=%lld grain=%lld: %lld elements not visited exactly once", (long long)n,
          (long long)grain, (long long)wrong);
    CHECK(!v.too_small, "n=%lld grain=%lld: a chunk other than the last is below the grain", (long long)n,
          (long long)grain);
    CHECK(!v.bad_alignment, "n=%lld: a chunk other than the last is not a multiple of 16", (long long)n);
    if (n <= grain) CHECK(atomic_load(&v.calls) <= 1, "n=%lld <= grain ran in %d chunks", (long long)n,
                          atomic_load(&v.calls));
    free(v.hits);
}

typedef struct concurrent_arg {
    compute_pool *pool;
    int seed;
} concurrent_arg;

static void *concurrent_loops(void *arg)
{
    concurrent_arg *a = arg;
    for (int i = 0; i < 50; i++) run_and_check(a->pool, 10000 + 997 * ((a->seed + i) % 13), 64);
    return NULL;
}

int main(void)
{
    for (uint32_t threads = 0; threads <= 3; threads++) {
        compute_pool *pool;
        CHECK(compute_pool_start(&pool, threads) == 0, "start with %u threads", threads);
        int64_t sizes[] = {0, 1, 15, 16, 17, 100, 1000, 65536, 100003};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            run_and_check(pool, sizes[i], 1);
            run_and_check(pool, sizes[i], 4096);
            run_and_check(pool, sizes[i], 16384);
        }
        pthread_t t[4];
        concurrent_arg args[4];
        for (int i = 0; i < 4; i++) {
            args[i] = (concurrent_arg){pool, i};
            pthread_create(&t[i], NULL, concurrent_loops, &args[i]);
        }
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        compute_pool_stop(pool);
    }
    return check_report("test_compute_pool");
}
