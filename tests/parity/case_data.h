/*
 * Reading the torch reference data that torch_reference.py writes (its
 * docstring describes the manifest and the .bin files), and comparing
 * results bit for bit. Shared by the plugin unit test and the daemon
 * parity driver.
 */
#ifndef OPTIMD_PARITY_CASE_DATA_H
#define OPTIMD_PARITY_CASE_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CASE_MAX_PARAMS 4
#define CASE_MAX_STEPS 64
#define CASE_MAX_HPARAMS 16
#define CASE_NAME_MAX 64
#define CASE_MAX_STATES 16

/* Same numbers as OPTIMD_HP_FLOAT/INT/BOOL; CASE_HP_REQUIRED only in
 * torch_default rows (torch has no default for that key). */
enum case_hparam_type {
    CASE_HP_REQUIRED = 0,
    CASE_HP_FLOAT = 1,
    CASE_HP_INT = 2,
    CASE_HP_BOOL = 3
};

typedef struct case_hparam {
    char key[CASE_NAME_MAX];
    int type;                /* case_hparam_type */
    double value;
} case_hparam;

typedef struct case_param {
    char name[CASE_NAME_MAX];
    int64_t numel;
} case_param;

/* One tensor of torch's optimizer state after the last step. */
typedef struct case_state {
    int param;               /* index into params */
    char key[CASE_NAME_MAX]; /* torch's state key, the plugin's slot key */
    int dtype;               /* OPTIMD_DTYPE_F32 / _F64 */
    int64_t numel;
} case_state;

typedef struct parity_case {
    char name[CASE_NAME_MAX];
    char optimizer[CASE_NAME_MAX];   /* "" for a scheduler-only case */
    char scheduler[CASE_NAME_MAX];   /* "" when none */
    int dtype;                       /* OPTIMD_DTYPE_F32 / _F64 */
    size_t elem_size;
    int steps;
    double base_lr;                  /* scheduler-only cases */
    case_param params[CASE_MAX_PARAMS];
    int n_params;
    int64_t total_numel;             /* sum over params */
    case_hparam hparams[CASE_MAX_HPARAMS];
    int n_hparams;
    case_hparam sched_hparams[CASE_MAX_HPARAMS];
    int n_sched_hparams;
    bool has_grad[CASE_MAX_STEPS + 1][CASE_MAX_PARAMS]; /* [step][param] */
    case_state states[CASE_MAX_STATES];
    int n_states;
} parity_case;

/* A torch constructor default: `torch_default <plugin> <key> <type> [v]`. */
typedef struct torch_default {
    char plugin[CASE_NAME_MAX];
    case_hparam hparam;
} torch_default;

typedef struct parity_manifest {
    char dir[512];
    parity_case *cases;
    int n_cases;
    torch_default *defaults;
    int n_defaults;
} parity_manifest;

/* The tensors of one case, as written by torch. */
typedef struct case_data {
    void *init;              /* total_numel elements */
    void *grad;              /* steps * total_numel */
    void *expect;            /* steps * total_numel */
    double *lr;              /* steps + 1 */
    void *state;             /* the states, in manifest order */
} case_data;

/*
 * Runs torch_reference.py --suite `suite` into a fresh temporary
 * directory, written to `dir`. Returns 0, 77 when torch is not available
 * (the caller should exit 77: skipped), or -1 with a message on stderr.
 */
int parity_generate(const char *suite, char *dir, size_t dir_cap);

/* Removes a directory made by parity_generate. */
void parity_remove_dir(const char *dir);

int parity_manifest_load(const char *dir, parity_manifest *m);
void parity_manifest_free(parity_manifest *m);

int case_data_load(const parity_manifest *m, const parity_case *c, case_data *d);
void case_data_free(case_data *d);

/* Pointers into a case_data block: `step` is 1-based. */
void *case_init(const parity_case *c, const case_data *d, int param);
void *case_grad(const parity_case *c, const case_data *d, int step, int param);
void *case_expect(const parity_case *c, const case_data *d, int step, int param);
/* Torch's final value of state `index` (see parity_case.states). */
void *case_state_data(const parity_case *c, const case_data *d, int index);

/* Outcome of a bitwise comparison of two tensors. */
typedef struct bit_compare {
    int64_t mismatches;
    int64_t first_index;     /* -1 when equal */
    double first_got, first_want;
    uint64_t first_ulp;
    uint64_t max_ulp;        /* over all elements */
} bit_compare;

/* Compares `n` elements of `dtype` bit for bit. Returns true when equal.
 * ulp distances count representable values between the two (NaNs and
 * opposite-signed zeros count as mismatches). */
bool compare_bits(const void *got, const void *want, int64_t n, int dtype,
                  bit_compare *out);

/* The ulp distance between two doubles (for lr comparisons). */
uint64_t ulp_distance_f64(double a, double b);

#endif
