/*
 * optimd plugin ABI, version 1.
 *
 * A plugin is a shared object that exports exactly one data symbol,
 * `optimd_plugin` (see OPTIMD_PLUGIN_SYMBOL), of type `optimd_plugin_desc`.
 * Everything else the host learns about the plugin it reads from that
 * descriptor; everything the plugin may ask of the host it finds in the
 * `optimd_host` table passed to each call.
 *
 * Rules that keep the ABI stable (docs/abi.md explains each in full):
 *  - Every struct starts with `struct_size` and only ever grows at its end.
 *    A reader uses a field only when `struct_size` covers it.
 *  - Only fixed-width integer types, double, pointers and function pointers.
 *  - The host owns every long-lived buffer (parameters, state slots, error
 *    text). A plugin keeps no pointer into host memory after a call returns,
 *    starts no threads and has no global mutable state.
 */
#ifndef OPTIMD_PLUGIN_H
#define OPTIMD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OPTIMD_ABI_MAJOR 1u
#define OPTIMD_ABI_MINOR 2u

/* Name of the one symbol a plugin exports (dlsym this string). */
#define OPTIMD_PLUGIN_SYMBOL "optimd_plugin"

#if defined(__GNUC__)
#define OPTIMD_EXPORT __attribute__((visibility("default")))
#else
#define OPTIMD_EXPORT
#endif

/* Status codes returned by plugin callbacks. 0 is success; codes are never
 * reused for another meaning. */
typedef int32_t optimd_status;
#define OPTIMD_OK 0
#define OPTIMD_ERR_INVALID (-1)     /* arguments violate the plugin's rules */
#define OPTIMD_ERR_DTYPE (-2)       /* a tensor dtype the plugin cannot handle */
#define OPTIMD_ERR_NOMEM (-3)       /* scratch memory could not be had */
#define OPTIMD_ERR_INTERNAL (-4)    /* a bug or an unexpected condition */

/* Element types of tensors crossing the ABI. */
typedef enum optimd_dtype {
    OPTIMD_DTYPE_F32 = 1,
    OPTIMD_DTYPE_F64 = 2
} optimd_dtype;

/*
 * A view of a dense tensor in host memory (DLPack-like). `strides` are in
 * elements and always filled in (never NULL when ndim > 0). In ABI 1.0 every
 * tensor the host passes is C-contiguous and aligned to its element size;
 * parameters and state slots are also aligned to 64 bytes, gradients may
 * not be (they are read where they lie in the received message).
 */
typedef struct optimd_tensor {
    uint32_t struct_size;
    uint32_t dtype;          /* optimd_dtype */
    void *data;
    int64_t numel;           /* product of shape; 1 for ndim == 0 */
    uint32_t ndim;
    uint32_t reserved;
    const int64_t *shape;
    const int64_t *strides;
} optimd_tensor;

/* ---------------------------------------------------------------- host -- */

typedef enum optimd_log_level {
    OPTIMD_LOG_DEBUG = 0,
    OPTIMD_LOG_INFO = 1,
    OPTIMD_LOG_WARN = 2,
    OPTIMD_LOG_ERROR = 3
} optimd_log_level;

/* Opaque per-call context; valid only for the duration of one callback. */
typedef struct optimd_call optimd_call;

/* Body of a parallel loop: process elements [begin, end). */
typedef void (*optimd_range_fn)(void *user, int64_t begin, int64_t end);

/*
 * What the host offers a plugin. The table is owned by the host and is valid
 * only during the callback it was passed to. Members are never removed; new
 * ones are appended and a plugin checks `struct_size` before using them.
 */
typedef struct optimd_host {
    uint32_t struct_size;
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t reserved;
    optimd_call *call;

    /* Any thread. `msg` is copied; the plugin id is prefixed by the host. */
    void (*log)(optimd_call *call, int32_t level, const char *msg);

    /* Calling thread only. Records why the current callback is about to
     * fail; the text (copied, truncated to 255 bytes) reaches the client. */
    void (*set_error)(optimd_call *call, const char *msg);

    /* Calling thread only. Returns `bytes` of memory aligned to 64 bytes,
     * valid until the callback returns, or NULL. Never free it. */
    void *(*scratch)(optimd_call *call, size_t bytes);

    /* Calling thread only. Splits [0, n) into chunks of at least `grain`
     * elements (a multiple of 16 except the last), runs `fn` on the host's
     * worker threads and on the calling thread, and returns when every chunk
     * is done. `fn` must be safe to run concurrently on disjoint ranges and
     * must not call back into the host. Returns OPTIMD_OK. */
    optimd_status (*parallel_for)(optimd_call *call, int64_t n, int64_t grain,
                                  optimd_range_fn fn, void *user);
} optimd_host;

/* ---------------------------------------------------- hyperparameters -- */

typedef enum optimd_hparam_type {
    OPTIMD_HP_FLOAT = 1,     /* any double in [min, max] */
    OPTIMD_HP_INT = 2,       /* an integer in [min, max], passed as double */
    OPTIMD_HP_BOOL = 3       /* false or true, passed as 0.0 or 1.0 */
} optimd_hparam_type;

/* Flags of a hyperparameter declaration. */
#define OPTIMD_HP_REQUIRED 0x1u        /* no default: the client must give it */
#define OPTIMD_HP_MUTABLE 0x2u         /* may change while a session runs */
#define OPTIMD_HP_MIN_EXCLUSIVE 0x4u   /* value must be > min, not >= min */
#define OPTIMD_HP_MAX_EXCLUSIVE 0x8u   /* value must be < max, not <= max */

/*
 * One hyperparameter a plugin accepts. The host validates client input
 * against this declaration and hands the plugin a dense array of doubles in
 * declaration order. `min`, `max` and `default_value` are finite.
 */
typedef struct optimd_hparam_def {
    uint32_t struct_size;
    uint32_t type;           /* optimd_hparam_type */
    uint32_t flags;          /* OPTIMD_HP_* flags */
    uint32_t reserved;
    const char *key;         /* stable forever, [A-Za-z0-9_]+ */
    const char *doc;         /* one sentence for `plugins` listings */
    double min;
    double max;
    double default_value;    /* ignored when OPTIMD_HP_REQUIRED */
} optimd_hparam_def;

/* ---------------------------------------------------------- state slots -- */

typedef enum optimd_slot_shape {
    OPTIMD_SLOT_LIKE_PARAM = 1,  /* same shape as the parameter */
    OPTIMD_SLOT_SCALAR = 2,      /* one element per parameter (ndim 0), e.g.
                                    NAdam's running product of momenta */
    /* ABI 1.1: factored statistics (Adafactor). For a parameter of ndim >= 2
     * with shape [..., r, c], ROWS has shape [..., r] (one value per row) and
     * COLS has shape [..., c] (one per column). For ndim < 2, ROWS has the
     * parameter's shape and COLS is one element (ndim 0). */
    OPTIMD_SLOT_ROWS = 3,
    OPTIMD_SLOT_COLS = 4
} optimd_slot_shape;

/*
 * One piece of per-parameter optimizer state (Adam's "exp_avg", ...). The
 * host allocates it zero-filled on the parameter's first step, owns it,
 * persists it and carries it across plugin swaps by `key`.
 */
typedef struct optimd_slot_def {
    uint32_t struct_size;
    uint32_t shape;          /* optimd_slot_shape */
    uint32_t dtype;          /* 0: same dtype as the parameter */
    uint32_t reserved;
    const char *key;         /* stable forever, [A-Za-z0-9_]+ */
    const char *doc;
    /* Key of a boolean hyperparameter; the slot exists only when it is true
     * (Adam's "max_exp_avg_sq" with "amsgrad"). NULL: always present. */
    const char *enabled_by;
} optimd_slot_def;

/* ------------------------------------------------------------ optimizer -- */

/* Arguments of one optimizer step on one parameter tensor. */
typedef struct optimd_step_args {
    uint32_t struct_size;
    uint32_t n_hparams;
    const double *hparams;   /* declaration order; "lr" is the scheduled lr */
    uint64_t step;           /* this parameter's step count, 1 on its first */
    optimd_tensor *param;    /* read and updated in place */
    const optimd_tensor *grad;   /* read-only, same dtype and shape */
    optimd_tensor *slots;    /* declaration order; data NULL when disabled */
    uint32_t n_slots;
    uint32_t reserved;
} optimd_step_args;

/* ABI 1.1. Arguments of a state migration (optimd_optimizer.migrate) for
 * one parameter, when a session moves to this plugin from another optimizer
 * or from another version of this one. */
typedef struct optimd_migrate_args {
    uint32_t struct_size;
    uint32_t n_hparams;
    const double *hparams;           /* this plugin's, declaration order */
    const char *from_id;             /* the plugin the state comes from */
    const char *from_version;
    uint64_t step;                   /* the parameter's step count */
    const optimd_tensor *param;      /* read-only */
    uint32_t n_from_slots;
    uint32_t n_slots;
    const char *const *from_keys;    /* the old plugin's slot keys */
    const optimd_tensor *from_slots; /* read-only; data NULL where it had none */
    optimd_tensor *slots;            /* this plugin's, declaration order: slots
                                      * whose key and layout are unchanged hold
                                      * a copy of the old values, the others
                                      * zeros; data NULL when disabled */
} optimd_migrate_args;

/*
 * ABI 1.1. A known-answer test of one step (optimd_optimizer.test_vectors):
 * inputs, hyperparameters and the result the plugin promises for them.
 * optimd-validate runs each one as the host would and compares; the daemon
 * never reads them. Values are arrays of elements of the tensor's dtype:
 * `dtype` for the parameter and gradient, each slot's own dtype for slots.
 * The array of vectors is read with a stride of the first element's
 * struct_size (not the reader's sizeof), so this struct may grow in 1.x.
 */
typedef struct optimd_test_vector {
    uint32_t struct_size;            /* sizeof(optimd_test_vector) */
    uint32_t dtype;                  /* optimd_dtype of param and grad */
    const char *name;                /* short label for reports; may be NULL */
    uint32_t n_hparam_values;
    uint32_t n_slots;                /* must equal the optimizer's n_slots */
    /* Hyperparameters by key, so that the vector stays valid when the
     * plugin adds keys later: keys not named take their defaults. "lr" is
     * passed as the step's scheduled lr. */
    const char *const *hparam_keys;
    const double *hparam_values;
    uint64_t step;                   /* args->step of the tested call, >= 1 */
    int64_t numel;                   /* elements of the parameter, >= 1 */
    uint32_t ndim;                   /* with shape; 0 when shape is NULL */
    /* Tolerance. An element matches when its bits equal the expected ones,
     * or it is within max_ulps units in the last place, or within
     * max_abs_error of it. Both 0: bit-exact. */
    uint32_t max_ulps;
    const int64_t *shape;            /* NULL: one dimension of numel */
    double max_abs_error;
    const void *param;               /* numel input values */
    const void *grad;                /* numel values */
    /* n_slots pointers, declaration order: each slot's input state; NULL
     * (the array or an entry) means zeros. Ignored for disabled slots. */
    const void *const *slots;
    const void *expected_param;      /* numel values after the step */
    /* n_slots pointers: each slot after the step; a NULL entry is not
     * compared. Ignored for disabled slots. */
    const void *const *expected_slots;
} optimd_test_vector;

typedef struct optimd_optimizer {
    uint32_t struct_size;
    uint32_t n_hparams;
    const optimd_hparam_def *hparams;
    uint32_t n_slots;
    uint32_t dtypes;         /* bit (1 << optimd_dtype) per supported dtype */
    const optimd_slot_def *slots;

    /* Optional (NULL). Rules that span several hyperparameters, e.g.
     * "nesterov needs momentum > 0". Any thread; must be pure. */
    optimd_status (*check_hparams)(const optimd_host *host,
                                   const double *hparams, uint32_t n);

    /* Applies one update. Called on a host request thread; the host never
     * runs two steps on the same parameter at once, but may run steps on
     * different parameters (and sessions) concurrently. */
    optimd_status (*step)(const optimd_host *host,
                          const optimd_step_args *args);

    /* ---- ABI 1.1; the host reads it only when struct_size covers it. */

    /* Optional (NULL). Converts a parameter's state when a session moves to
     * this plugin (hot swap of a new version, or the `switch` op). Without
     * it the host carries slots by key and zero-fills new ones, and refuses
     * the move when a slot keeps its key but changes dtype or shape; with
     * it the host accepts that too and lets this hook fill the new slot
     * from `from_slots`. Return OPTIMD_OK, or an error (with set_error) to
     * refuse: the session then stays on the plugin it had. Calling thread
     * only; nothing else runs on the session meanwhile. */
    optimd_status (*migrate)(const optimd_host *host,
                             const optimd_migrate_args *args);

    /* Optional (0 and NULL). Known-answer tests of `step`, checked by
     * optimd-validate and ignored by the daemon. */
    uint32_t n_test_vectors;
    /* ---- ABI 1.2 (was `reserved2`, 0, in 1.1): OPTIMD_OPTIMIZER_* bits.
     * The host reads it only from a plugin that declares abi_minor >= 2. */
    uint32_t flags;
    const optimd_test_vector *test_vectors;
} optimd_optimizer;

/* `flags` bit: the update is element-wise, so the host may run `step` on
 * any range of a parameter's elements (a sliced step; docs/abi.md §6):
 * element i of the parameter and of every like-parameter slot after the
 * step depends only on element i of the parameter, the gradient and those
 * slots before it, the hyperparameters and `step`; scalar slots change in
 * a way that does not depend on the tensors' values; no ROWS/COLS slots. */
#define OPTIMD_OPTIMIZER_ELEMENTWISE (1u << 0)

/* ------------------------------------------------------------ scheduler -- */

/* Arguments of one learning-rate evaluation. */
typedef struct optimd_sched_args {
    uint32_t struct_size;
    uint32_t n_hparams;
    const double *hparams;   /* the scheduler's own, declaration order */
    int64_t epoch;           /* 0 at construction, then 1, 2, ... */
    double base_lr;          /* the lr the client configured */
    double last_lr;          /* lr at epoch - 1 (base_lr when epoch == 0) */
    /* ABI 1.1. The scheduler's own state values (n_state of them, zero at
     * construction, kept and persisted by the host); NULL when n_state is 0.
     * Read-only in `lr` and `momentum`, writable in `observe`. */
    double *state;
} optimd_sched_args;

typedef struct optimd_scheduler {
    uint32_t struct_size;
    uint32_t n_hparams;
    const optimd_hparam_def *hparams;
    optimd_status (*check_hparams)(const optimd_host *host,
                                   const double *hparams, uint32_t n);
    /* Writes the lr for `args->epoch` to *lr. Any thread; must be pure. */
    optimd_status (*lr)(const optimd_host *host,
                        const optimd_sched_args *args, double *lr);

    /* ---- ABI 1.1; the host reads these only when struct_size covers them. */

    /* Optional (NULL). Writes the optimizer momentum for `args->epoch` to
     * *momentum, or NaN to leave it alone (e.g. cycle_momentum off). The
     * host writes a finite value into the optimizer's "momentum"
     * hyperparameter, or "beta1" when it has none (torch's betas[0]), and
     * refuses the combination at open when the optimizer has neither.
     * Any thread; must be pure. */
    optimd_status (*momentum)(const optimd_host *host,
                              const optimd_sched_args *args, double *momentum);

    /* Number of state values (doubles) the host keeps for the scheduler. */
    uint32_t n_state;
    uint32_t reserved;

    /* Optional (NULL). A metric the client reported (ReduceLROnPlateau's
     * step(metric)): may update args->state and writes the lr the next step
     * uses to *lr. `args->epoch` counts the reports, 1 on the first;
     * `args->last_lr` is the lr the next step would have used. NaN metrics
     * are passed on, as torch counts them as bad epochs. */
    optimd_status (*observe)(const optimd_host *host,
                             const optimd_sched_args *args, double metric, double *lr);
} optimd_scheduler;

/* -------------------------------------------------------- the descriptor -- */

typedef enum optimd_plugin_kind {
    OPTIMD_KIND_OPTIMIZER = 1,
    OPTIMD_KIND_SCHEDULER = 2
} optimd_plugin_kind;

/* The one exported symbol. abi_major, abi_minor and struct_size come first
 * and keep their places in every future ABI version. */
typedef struct optimd_plugin_desc {
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t struct_size;
    uint32_t kind;           /* optimd_plugin_kind */
    const char *id;          /* "adamw": [a-z0-9_.-]+, unique in a daemon */
    const char *version;     /* "1.0.0" */
    const char *description;
    const optimd_optimizer *optimizer;   /* set iff kind is OPTIMIZER */
    const optimd_scheduler *scheduler;   /* set iff kind is SCHEDULER */
} optimd_plugin_desc;

#ifdef __cplusplus
}
#endif

#endif /* OPTIMD_PLUGIN_H */
