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
#include "grad_clip.h"
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
#define SESSION_OPEN_KEY_MIN 16
#define SESSION_OPEN_KEY_MAX 64

#define GROUP_NAME_MAX 64
#define SESSION_MAX_GROUPS 64
#define DEFAULT_GROUP "default"

typedef struct param {
    uint32_t dtype;
    uint32_t ndim;
    uint32_t group;            /* index into the session's groups */
    int64_t shape[WIRE_MAX_DIMS];
    int64_t strides[WIRE_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    void *data;                /* 64-byte aligned */
    void **slots;              /* per declared slot; NULL until first step or when disabled */
    void *slow;                /* lookahead's slow weights; NULL until the first step */
    uint64_t steps;            /* steps that updated this parameter */
    uint64_t mark;             /* last step request that named it (duplicate check) */
} param;

struct session;

/* How a group's schedule is made: one scheduler plugin (or none), or
 * several combined as torch's SequentialLR or ChainedScheduler. */
#define SCHED_MAX_PARTS 8
typedef enum sched_combine { SCHED_ONE = 0, SCHED_SEQUENTIAL = 1, SCHED_CHAINED = 2 } sched_combine;

/* A combined schedule as open gives it (ops.c finds the plugins). */
typedef struct sched_composite {
    int combine;               /* SCHED_SEQUENTIAL or SCHED_CHAINED; SCHED_ONE: not combined */
    uint32_t n_parts;
    const plugin *parts[SCHED_MAX_PARTS];
    const msgpack_object *part_hparams[SCHED_MAX_PARTS];   /* NULL: defaults */
    int64_t milestones[SCHED_MAX_PARTS - 1];               /* sequential: n_parts - 1, rising */
} sched_composite;

/* A parameter group (torch's param_groups): its own hyperparameters and
 * scheduler. Group 0 is "default", made from open's top-level keys. */
typedef struct param_group {
    char name[GROUP_NAME_MAX + 1];
    const plugin *sched;       /* SCHED_ONE: the scheduler, or NULL for a constant lr */
    int combine;               /* sched_combine */
    uint32_t n_parts;          /* combined: the schedulers, in order */
    const plugin *parts[SCHED_MAX_PARTS];
    double *part_hp[SCHED_MAX_PARTS];
    int64_t milestones[SCHED_MAX_PARTS - 1];
    double *hp;                /* optimizer hyperparameters; hp[lr] is the lr last set */
    double *sched_hp;
    double sched_state[SCHED_MAX_STATE];   /* the scheduler's n_state values */
    double base_lr;            /* the scheduler's base (lr at open) */
    double lr;                 /* the lr the next step uses */
    uint64_t observed;         /* metrics reported (a plateau scheduler's epochs) */
} param_group;

/* What open says of a group besides "default" (ops.c finds the plugins). */
typedef struct group_spec {
    const char *name;
    size_t name_len;
    const msgpack_object *hparams;         /* over the default group's; NULL: none */
    bool sched_given;                      /* false: the default group's scheduler */
    const plugin *sched;                   /* when given; NULL: none (or combined) */
    const msgpack_object *sched_hparams;   /* NULL: defaults, or the default group's */
    sched_composite composite;             /* when given and combined */
} group_spec;

/* Names of the combined schedules ("sequential", "chained"); NULL for SCHED_ONE. */
const char *sched_combine_name(int combine);
/* Gives group `g` a combined schedule of `parts` with default
 * hyperparameters (restoring a snapshot; open goes through
 * session_create). */
int session_set_composite(param_group *g, int combine, const plugin *const *parts, uint32_t n,
                          const int64_t *milestones, request_error *err);

/* When a step is durable (docs/protocol.md, open). */
typedef enum durability {
    DURABILITY_NONE = 0,       /* snapshots only */
    DURABILITY_INTERVAL = 1,   /* logged at once, flushed to disk every --sync-interval ms */
    DURABILITY_ALWAYS = 2      /* logged and flushed before the reply */
} durability;

/* The last step a client sequenced on this session, and what it answered,
 * so that a retry is answered instead of applied again. */
typedef struct client_seq {
    char *client;
    uint64_t seq;
    uint64_t steps;
    double lr;
    double next_lr;
} client_seq;

#define SESSION_MAX_CLIENTS 4096
#define CLIENT_ID_MAX 64

/* Called by the mutating session functions after every check passed and
 * before anything changes; nonzero refuses the change (the write-ahead log
 * could not take it). `err` says why. */
typedef int (*session_commit_fn)(void *ctx, struct session *s, request_error *err);

typedef struct session {
    char name[SESSION_NAME_MAX + 1];
    char token[SESSION_TOKEN_LEN + 1];
    /* The `open_key` the creating open carried ("" if none): a retried
     * open with the same key gets the token instead of SESSION_EXISTS. */
    char open_key[SESSION_OPEN_KEY_MAX + 1];
    atomic_int refs;
    /* Parameter and state memory the session stands for (parameters, and
     * the like-parameter slots and lookahead copies they will have), read
     * without the lock to enforce --max-total-bytes. */
    _Atomic uint64_t committed_bytes;
    pthread_mutex_t mutex;
    _Atomic int64_t last_used;   /* CLOCK_MONOTONIC seconds of its last request */

    const plugin *opt;
    param_group *groups;       /* groups[0] is "default" */
    uint32_t n_groups;
    int momentum_index;        /* the hparam a scheduler's momentum sets, or -1 */
    uint32_t lookahead_k;      /* Lookahead around the optimizer: every k steps of a
                                * parameter, slow += alpha * (param - slow), param = slow;
                                * 0: off */
    double lookahead_alpha;
    uint64_t steps;            /* successful step requests */
    uint64_t request_serial;
    uint64_t version;          /* grows by one with every change of state */
    uint64_t saved_version;    /* the version the last snapshot holds */
    bool closed;               /* closed: never to be saved again */
    /* Non-empty: why the session was stopped (its plugin failed a step or
     * wrote a non-finite parameter). Steps are refused until a switch or a
     * new plugin version takes the session; reads go on. */
    char stopped[512];
    int durability;            /* enum durability */
    int wal_fd;                /* the open write-ahead log, or -1 */
    bool wal_unsynced;         /* appended since the last fdatasync */
    int64_t wal_unsynced_since;   /* metrics_now_ns() of the first such append */
    uint64_t wal_bytes;        /* the log's length */

    struct worker_set *workers;   /* workers.h; NULL: a session without workers */

    client_seq *clients;       /* sequenced clients, in first-seen order */
    size_t n_clients;

    /* The shared-memory segment a co-located client attached (shm_attach),
     * or NULL; see shm_attachment.h. */
    struct optimd_shm_attachment *shm;

    /* A sliced step between its first and last part (sliced_step.h), or
     * NULL. While there is one, nothing else may change the session. */
    struct sliced_step *pending_step;

    param *params;             /* registration order */
    char **names;              /* names[i] is params[i]'s name */
    size_t n_params;
    size_t cap_params;
    name_index index;
} session;

/* A new session with one reference. Validates the hyperparameter maps of
 * the default group and of `groups` (n_groups more). */
session *session_create(const char *name, const plugin *opt, const msgpack_object *hp_map,
                        const plugin *sched, const msgpack_object *sched_map,
                        const sched_composite *composite, const group_spec *groups, uint32_t n_groups,
                        request_error *err);
/* A session rebuilt from a snapshot: default hyperparameters, no
 * parameters, the default group only; the store fills in the rest. */
session *session_restore(const char *name, const char *token, const plugin *opt,
                         const plugin *sched, request_error *err);
/* Appends a group with default hyperparameters (restoring a snapshot). */
param_group *session_restore_group(session *s, const char *name, const plugin *sched,
                                   request_error *err);
/* Index of a group or -1. */
int session_find_group(const session *s, const char *name, size_t len);
/* Which group a request names: its optional `group` key; `all_if_absent`
 * gives -1 (every group) when absent, else the default group (0). */
int session_request_group(const session *s, const msgpack_object *req, bool all_if_absent,
                          int *group, request_error *err);
/* What a parameter of `nbytes` commits: itself, its like-parameter state
 * slots and its lookahead copy. */
uint64_t session_param_cost(const session *s, uint64_t nbytes);
/* Frees a parameter's buffers (not its name). */
void session_release_param(const session *s, param *p);
/* Adds a parameter without checks (the caller made them). -1: no memory. */
int session_append_param(session *s, const char *name, size_t name_len, uint32_t dtype,
                         uint32_t ndim, const int64_t *shape, const void *data);
/* Where one state slot of a parameter lies: its dtype and shape as the
 * slot's declared shape rule gives them (docs/abi.md, state slots). */
typedef struct slot_layout {
    uint32_t dtype;
    uint32_t ndim;
    int64_t shape[WIRE_MAX_DIMS];
    int64_t strides[WIRE_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
} slot_layout;

/* The layout of slot `k` (declaration order) of parameter `p`. */
void session_slot_layout(const session *s, const param *p, uint32_t k, slot_layout *out);
/* With lookahead on: the parameter's slow weights, a copy of it, if it has
 * none yet. */
int session_ensure_slow(const session *s, param *p);
/* Views of a parameter and of one of its slots as plugins see them (for
 * the step and for migrations); true when a tensor is finite throughout. */
void session_tensor_view(optimd_tensor *v, uint32_t dtype, const param *p, void *data);
void session_slot_view(optimd_tensor *v, const slot_layout *l, void *data);
/* A received gradient holds no NaN or infinity (its bytes may be unaligned). */
bool session_grad_finite(const wire_tensor *g);
/* BAD_TENSOR (returns -1) unless a dense gradient has parameter idx's
 * dtype and shape. */
int session_check_dense_grad(const session *s, size_t idx, const wire_tensor *g, request_error *err);
bool session_tensor_finite(const optimd_tensor *t);
/* Allocates a parameter's zero-filled state slots if it has none yet. */
int session_ensure_slots(const session *s, param *p);

void session_ref(session *s);
void session_unref(session *s);      /* frees on the last reference */
void session_lock(session *s);
void session_unlock(session *s);

/* Index of a parameter or -1. */
int64_t session_find_param(const session *s, const char *name, size_t len);

/* All-or-nothing registration of a map name -> tensor into `group`.
 * `commit` may be NULL (replaying the log). */
int session_register(session *s, const msgpack_object *params, int group, session_commit_fn commit,
                     void *ctx, request_error *err);

/* Who sent a step: a client id and its sequence number (0: unsequenced). */
typedef struct step_identity {
    const char *client;
    size_t client_len;
    uint64_t seq;
} step_identity;



/* The rows of a row-sparse gradient's "rows" array (each below
 * n_param_rows), sorted and unique in *out (malloc'd; *n_out of them);
 * `order` (may be NULL) gets the positions of the given rows sorted
 * stably by row. BAD_TENSOR on a bad index. */
int session_sparse_rows(const msgpack_object *rows, int64_t n_param_rows, int64_t **out, int64_t *n_out,
                        int64_t **order, request_error *err);

typedef struct step_result {
    bool duplicate;            /* seq already applied: nothing changed now */
    uint64_t steps;            /* the session's step count after the step */
    double lr;                 /* the lr the step used (default group) */
    double next_lr;
    double lrs[SESSION_MAX_GROUPS];        /* per group, when not a duplicate */
    double next_lrs[SESSION_MAX_GROUPS];
    double grad_norm;          /* with clip.max_norm: the norm before clipping */
    double group_norms[SESSION_MAX_GROUPS];   /* ... per group, with per_group */
    bool group_clipped[SESSION_MAX_GROUPS];   /* the group had gradients */
} step_result;

/* What a caller that moves tensors itself (a shared-memory step) adds to a
 * step, each to save a pass over tensors of tens of megabytes. */
typedef struct step_extras {
    /* The caller found every gradient finite already, in the pass that
     * copied it; the check is not run again. */
    bool grads_finite;
    /* Called for each dense parameter the plugin updated, in place of the
     * daemon's scan for NaN and infinity: returns whether every element is
     * finite (the caller copies it out and checks it in one pass). Not
     * called with lookahead on, whose synchronisation changes the
     * parameter after the check. NULL: the daemon scans. */
    bool (*updated)(void *ctx, const struct session *s, size_t index);
    void *updated_ctx;
} step_extras;

/* One step request: the map name -> gradient. Everything is checked before
 * anything changes. On success the parameters the request names (and the
 * daemon has) carry mark == request_serial. A sequenced step whose seq is
 * not above the client's last one is a duplicate: answered from the record
 * of its first application, not applied. `extras` may be NULL. */
int session_step(session *s, const msgpack_object *grads, const step_identity *id, const step_clip *clip,
                 const step_extras *extras, compute_pool *pool, session_commit_fn commit, void *ctx,
                 step_result *res, request_error *err);

/* Each group's optimizer hyperparameters with lr replaced by the group's
 * scheduled lr, side by side (group g at g * *stride), as a step passes
 * them to the plugin; malloc'd, NULL when out of memory. */
double *session_step_hparams(const session *s, uint32_t *stride);

/* Counts a step that was applied: the session's step count, each group's
 * scheduler (its lrs before and after into `res`), and `seq` in `cs` (may
 * be NULL). The caller counted the change in `version`. */
void session_count_step(session *s, client_seq *cs, uint64_t seq, step_result *res, request_error *err);

/* Mutable hyperparameters of `group` (-1: every group); "lr" also becomes
 * the next step's lr. */
int session_set_hparams(session *s, const msgpack_object *map, int group, session_commit_fn commit,
                        void *ctx, request_error *err);

/* A metric for the schedulers that take one (ReduceLROnPlateau), of
 * `group` (-1: every group whose scheduler does). */
int session_observe(session *s, double metric, int group, session_commit_fn commit, void *ctx,
                    request_error *err);

/* A client's sequence record, created if `create` (NULL: none, or the
 * table is full). */
client_seq *session_client(session *s, const char *client, size_t len, bool create);

/* Records that `client`'s step `seq` was applied with result `res` (the
 * pushes of a sync round, whose combined step carries no seq itself). */
void session_record_seq(session *s, const char *client, size_t len, uint64_t seq, const step_result *res);

/* A fresh random token, and no open_key (an imported session must not
 * keep the exporter's). */
void session_new_token(session *s);
/* Records that a request used the session now (idle expiry). */
void session_touch(session *s);
int64_t session_monotonic_seconds(void);

/* Token comparison in constant time. */
bool session_token_matches(const session *s, const char *token, size_t len);
/* open_key comparison in constant time; false when the session has none. */
bool session_open_key_matches(const session *s, const char *key, size_t len);

/* What switching the optimizer did with the state (parameter 0's). */
#define MIGRATE_MAX_KEYS 32
typedef struct migrate_report {
    const char *carried[MIGRATE_MAX_KEYS];   /* slot keys taken over */
    uint32_t n_carried;
} migrate_report;

/* Hot swap: moves the session to the current version of each of its
 * plugins, carrying hyperparameters and state slots by key (a new key
 * starts at its default / zero-filled). A version that cannot take the
 * session (its hyperparameters fail its checks) leaves it where it is, and
 * says so in the log. Returns 1 when anything moved. Under the lock,
 * between two steps. */
int session_follow_upgrades(session *s, plugin_registry *reg, request_error *err);
/* Moves the session to optimizer `to` (another plugin, or another version
 * of its own), hyperparameters carried by key and then `hp_map` applied;
 * slots with the same key and layout carried, others zero-filled. All or
 * nothing. */
int session_migrate_optimizer(session *s, const plugin *to, const msgpack_object *hp_map, migrate_report *rep,
                              request_error *err);

#endif
