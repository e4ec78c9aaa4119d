/* The workers of a session (docs/protocol.md, "Workers"): who has joined,
 * how their pushes combine (sync rounds, async, bounded staleness), and
 * the pushes that wait. The session's mutex guards all of it; the ops in
 * ops.c drive it and talk to the transport. */
#ifndef OPTIMD_SERVER_WORKERS_H
#define OPTIMD_SERVER_WORKERS_H

#include "request_error.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum worker_mode { WORKERS_OFF = 0, WORKERS_SYNC = 1, WORKERS_ASYNC = 2, WORKERS_BOUNDED = 3 } worker_mode;

#define WORKER_NAME_MAX 64
#define WORKERS_MAX 256
#define WORKERS_DEFAULT_TIMEOUT_MS 60000u

typedef struct worker_config {
    int mode;                  /* worker_mode */
    uint32_t count;            /* sync: the pushes a round combines (and the most workers) */
    bool sum;                  /* sync: sum instead of mean */
    bool proceed;              /* sync: at the timeout, step with the pushes present */
    uint32_t timeout_ms;       /* sync: a round's wait; bounded: a push's wait */
    uint32_t max_staleness;    /* bounded: how many pushes a worker may lead the slowest by */
} worker_config;

typedef struct worker {
    char name[WORKER_NAME_MAX + 1];   /* "" : a free rank */
    uint64_t pushes;           /* pushes applied (its clock) */
    uint64_t seen_steps;       /* the session's steps in the last parameters it received */
    bool pushed;               /* sync: its push is in the round */
    uint64_t push_seq;         /* ... and that push's seq (0: none) */
    /* A push that waits (in the sync round, or for the bounded bound): the
     * transport's handle and the request, which stays valid while parked. */
    void *parked;
    const unsigned char *raw;
    size_t raw_len;
    int64_t deadline;          /* bounded: when its wait ends (metrics_now_ns) */
} worker;

typedef struct worker_set {
    worker_config cfg;
    worker *w;                 /* by rank; cap of them */
    uint32_t cap;
    uint32_t joined;
    /* The sync round in progress: its pushes and, from the first push, the
     * parameters every push of it must name (session indexes, in the first
     * push's order). */
    uint32_t round_pushes;
    int64_t round_deadline;
    uint32_t *round_params;
    uint32_t n_round_params;
} worker_set;

/* Reads open's optional "workers" map; cfg->mode is WORKERS_OFF without
 * one. `max_parked` bounds the workers that may wait at once (the daemon's
 * request contexts): more would leave none to receive the last push. */
int worker_config_parse(const msgpack_object *req, uint32_t max_parked, worker_config *cfg,
                        request_error *err);
const char *worker_mode_name(int mode);
/* NULL when out of memory. */
worker_set *worker_set_create(const worker_config *cfg);
void worker_set_free(worker_set *ws);

/* The worker of that name or NULL. */
worker *worker_find(worker_set *ws, const char *name, size_t len);
static inline uint32_t worker_rank(const worker_set *ws, const worker *w) { return (uint32_t)(w - ws->w); }
/* Joins (the lowest free rank) or finds an existing member; LIMIT when full. */
worker *worker_join(worker_set *ws, const char *name, size_t len, uint64_t steps, request_error *err);
/* Frees the worker's rank; the caller has dealt with a parked push. */
void worker_leave(worker_set *ws, worker *w);
/* The fewest pushes any member has applied (bounded staleness). */
uint64_t worker_min_pushes(const worker_set *ws, const worker **slowest);

/* Sync: the first push of a round fixes its parameters; later pushes must
 * name the same ones (`idx`, session indexes in push order). */
int worker_round_admit(worker_set *ws, const uint32_t *idx, uint32_t n, size_t n_session_params,
                       request_error *err);
/* Forgets the round (its pushes were answered). */
void worker_round_clear(worker_set *ws);

#endif
