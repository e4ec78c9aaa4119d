#include "compute_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

/* One parallel_for in progress. It lives on the caller's stack, so the
 * caller must not return while a pool thread still holds it: `helpers`
 * counts those threads. */
typedef struct pool_job {
    optimd_range_fn fn;
    void *user;
    int64_t n;
    int64_t chunk;
    int64_t n_chunks;
    atomic_llong next_chunk;
    int helpers;               /* guarded by pool->mutex */
    bool listed;               /* guarded by pool->mutex */
    struct pool_job *next;
} pool_job;

struct compute_pool {
    pthread_mutex_t mutex;
    pthread_cond_t work_ready;
    pthread_cond_t helper_left;
    pool_job *jobs;            /* jobs that may still have unclaimed chunks */
    bool stopping;
    uint32_t n_threads;
    pthread_t threads[];
};

static void run_chunks(pool_job *job)
{
    for (;;) {
        int64_t c = atomic_fetch_add(&job->next_chunk, 1);
        if (c >= job->n_chunks) return;
        int64_t begin = c * job->chunk;
        int64_t end = begin + job->chunk < job->n ? begin + job->chunk : job->n;
        job->fn(job->user, begin, end);
    }
}

static void unlist(compute_pool *pool, pool_job *job)
{
    if (!job->listed) return;
    for (pool_job **p = &pool->jobs; *p; p = &(*p)->next) {
        if (*p == job) {
            *p = job->next;
            break;
        }
    }
    job->listed = false;
}

static void *pool_thread(void *arg)
{
    compute_pool *pool = arg;
    pthread_mutex_lock(&pool->mutex);
    for (;;) {
        while (!pool->jobs && !pool->stopping)
            pthread_cond_wait(&pool->work_ready, &pool->mutex);
        if (pool->stopping) break;
        pool_job *job = pool->jobs;
        job->helpers++;
        pthread_mutex_unlock(&pool->mutex);
        run_chunks(job);
        pthread_mutex_lock(&pool->mutex);
        /* Every chunk is claimed: no one else should pick this job up. */
        unlist(pool, job);
        job->helpers--;
        pthread_cond_broadcast(&pool->helper_left);
    }
    pthread_mutex_unlock(&pool->mutex);
    return NULL;
}

int compute_pool_start(compute_pool **out, uint32_t threads)
{
    compute_pool *pool = calloc(1, sizeof *pool + threads * sizeof(pthread_t));
    if (!pool) return -1;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->work_ready, NULL);
    pthread_cond_init(&pool->helper_left, NULL);
    for (uint32_t i = 0; i < threads; i++) {
        if (pthread_create(&pool->threads[i], NULL, pool_thread, pool) != 0) break;
        pool->n_threads++;
    }
    *out = pool;
    return 0;
}

void compute_pool_stop(compute_pool *pool)
{
    if (!pool) return;
    pthread_mutex_lock(&pool->mutex);
    pool->stopping = true;
    pthread_cond_broadcast(&pool->work_ready);
    pthread_mutex_unlock(&pool->mutex);
    for (uint32_t i = 0; i < pool->n_threads; i++) pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->work_ready);
    pthread_cond_destroy(&pool->helper_left);
    pthread_mutex_destroy(&pool->mutex);
    free(pool);
}

void compute_pool_run(compute_pool *pool, int64_t n, int64_t grain,
                      optimd_range_fn fn, void *user)
{
    if (n <= 0) return;
    if (grain < 16) grain = 16;
    int64_t workers = (int64_t)pool->n_threads + 1;
    /* Rounded down, so that no chunk is smaller than the grain. */
    int64_t n_chunks = n / grain;
    if (n_chunks > workers) n_chunks = workers;
    if (n_chunks <= 1) {
        fn(user, 0, n);
        return;
    }
    int64_t chunk = (n + n_chunks - 1) / n_chunks;
    chunk = (chunk + 15) / 16 * 16;
    pool_job job = {.fn = fn, .user = user, .n = n, .chunk = chunk,
                    .n_chunks = (n + chunk - 1) / chunk, .listed = true};
    atomic_init(&job.next_chunk, 0);

    pthread_mutex_lock(&pool->mutex);
    job.next = pool->jobs;
    pool->jobs = &job;
    pthread_cond_broadcast(&pool->work_ready);
    pthread_mutex_unlock(&pool->mutex);

    run_chunks(&job);

    pthread_mutex_lock(&pool->mutex);
    unlist(pool, &job);
    while (job.helpers > 0) pthread_cond_wait(&pool->helper_left, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
}
