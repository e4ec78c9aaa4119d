/* A training session: its optimizer and scheduler, hyperparameters, named
 * parameters with their state slots, and counters. Everything a session is
 * lives in this struct, so a snapshot only has to walk it.
 *
 * Threads: a session is shared by request threads. `mutex` guards every
 * field except name, token and refs (immutable, or atomic). Callers take it
 * with session_lock() around any use. */
#ifndef OPTIMD_SERVER_SESSION_H
#define OPTIMD_SERVER_SESSION_H

#include "compute_pool.h"
#include "name_index.h"
#include "plugin_registry.h"
#include "request_error.h"
#include "wire.h"

#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#define SESSION_NAME_MAX 128
#define SESSION_TOKEN_LEN 32
#define SESSION_MAX_PARAMS 65536
#define PARAM_NAME_MAX 256

typedef struct param {
    uint32_t dtype;
    uint32_t ndim;
    int64_t shape[WIRE_MAX_DIMS];
    int64_t strides[WIRE_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    void *data;                /* 64-byte aligned */
    void **slots;              /* per declared slot; NULL until first step or when disabled */
    uint64_t steps;            /* steps that updated this parameter */
    uint64_t mark;             /* last step request that named it (duplicate check) */
} param;

typedef struct session {
    char name[SESSION_NAME_MAX + 1];
    char token[SESSION_TOKEN_LEN + 1];
    atomic_int refs;
    pthread_mutex_t mutex;

    const plugin *opt;
    const plugin *sched;       /* NULL: constant lr */
    double *hp;                /* optimizer hyperparameters; hp[lr] is the lr last set */
    double *sched_hp;
    double base_lr;            /* the scheduler's base (lr at open) */
    double lr;                 /* the lr the next step uses */
    uint64_t steps;            /* successful step requests */
    uint64_t request_serial;
    uint64_t version;          /* grows with every change of state */
    uint64_t saved_version;    /* the version the last snapshot holds */
    bool closed;               /* closed: never to be saved again */

    param *params;             /* registration order */
    char **names;              /* names[i] is params[i]'s name */
    size_t n_params;
    size_t cap_params;
    name_index index;
} session;

/* A new session with one reference. Validates the hyperparameter maps. */
session *session_create(const char *name, const plugin *opt, const msgpack_object *hp_map,
                        const plugin *sched, const msgpack_object *sched_map,
                        request_error *err);
/* A session rebuilt from a snapshot: default hyperparameters, no
 * parameters; the store fills in the rest. */
session *session_restore(const char *name, const char *token, const plugin *opt,
                         const plugin *sched, request_error *err);
/* Adds a parameter without checks (the caller made them). -1: no memory. */
int session_append_param(session *s, const char *name, size_t name_len, uint32_t dtype,
                         uint32_t ndim, const int64_t *shape, const void *data);
/* Allocates a parameter's zero-filled state slots if it has none yet. */
int session_ensure_slots(const session *s, param *p);

void session_ref(session *s);
void session_unref(session *s);      /* frees on the last reference */
void session_lock(session *s);
void session_unlock(session *s);

/* Index of a parameter or -1. */
int64_t session_find_param(const session *s, const char *name, size_t len);

/* All-or-nothing registration of a map name -> tensor. */
int session_register(session *s, const msgpack_object *params, request_error *err);

/* One step request: the map name -> gradient. Everything is checked before
 * anything changes. On success *lr_used holds this step's lr and the
 * parameters it updated have mark == request_serial. */
int session_step(session *s, const msgpack_object *grads, compute_pool *pool,
                 double *lr_used, request_error *err);

/* Mutable hyperparameters; "lr" also becomes the next step's lr. */
int session_set_hparams(session *s, const msgpack_object *map, request_error *err);

/* Token comparison in constant time. */
bool session_token_matches(const session *s, const char *token, size_t len);

#endif
