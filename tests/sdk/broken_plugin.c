/*
 * A small, correct optimizer (p -= lr * g) that one compile definition
 * breaks in one way, to show that optimd-validate catches each flaw:
 *   BROKEN_ABI_MAJOR     declares ABI major 2
 *   BROKEN_NO_SYMBOL     exports its descriptor under another name
 *   BROKEN_EXTRA_SYMBOL  exports a second symbol
 *   BROKEN_DEFAULT       a default outside its declared range
 *   BROKEN_SEGV          step dies of SIGSEGV
 *   BROKEN_NONDET        step depends on a hidden global counter
 *   BROKEN_ABORT         step calls abort()
 *   BROKEN_VECTOR        declares test vectors, two of them wrong (a value
 *                        far off, and one 1 ulp off where bit-exact is asked)
 *   BROKEN_VECTOR_KEY    a test vector names an hparam the plugin lacks
 *   BROKEN_VECTOR_SLOTS  a test vector gives a slot the plugin lacks
 *   BROKEN_ELEMENTWISE   declares element-wise updates, but its update
 *                        depends on the tensor's length
 * The BROKEN_VECTOR* builds also declare correct vectors (bit-exact, within
 * a ulp tolerance, within an absolute tolerance), which must pass.
 */
#include <optimd/plugin.h>

#include <signal.h>
#include <stdlib.h>

static const optimd_hparam_def hparams[1] = {
    {.struct_size = sizeof(optimd_hparam_def), .type = OPTIMD_HP_FLOAT,
     .flags = OPTIMD_HP_MUTABLE | OPTIMD_HP_MIN_EXCLUSIVE, .key = "lr", .doc = "Learning rate.",
     .min = 0.0, .max = 10.0,
#ifdef BROKEN_DEFAULT
     .default_value = 20.0
#else
     .default_value = 0.1
#endif
    },
};

#ifdef BROKEN_NONDET
static int calls;
#endif

static optimd_status step(const optimd_host *host, const optimd_step_args *args)
{
    (void)host;
#ifdef BROKEN_SEGV
    raise(SIGSEGV);
#endif
#ifdef BROKEN_ABORT
    abort();
#endif
    double lr = args->hparams[0];
#ifdef BROKEN_NONDET
    lr *= 1.0 + 1e-3 * calls++;
#endif
    int64_t n = args->param->numel;
#ifdef BROKEN_ELEMENTWISE
    lr *= (double)n / 64.0;
#endif
    if (args->param->dtype == OPTIMD_DTYPE_F32) {
        float *p = args->param->data;
        const float *g = args->grad->data;
        for (int64_t i = 0; i < n; i++) p[i] -= (float)lr * g[i];
    } else {
        double *p = args->param->data;
        const double *g = args->grad->data;
        for (int64_t i = 0; i < n; i++) p[i] -= lr * g[i];
    }
    return OPTIMD_OK;
}

#if defined(BROKEN_VECTOR) || defined(BROKEN_VECTOR_KEY) || defined(BROKEN_VECTOR_SLOTS)
#define HAS_VECTORS 1
static const char *const lr_key[] = {"lr"};
static const double half[] = {0.5};
static const double p64[] = {1.0, 2.0, -3.0};
static const double g64[] = {0.5, -1.0, 0.25};
static const double p64_out[] = {0.75, 2.5, -3.125};        /* p - 0.5 g */
static const double p64_near[] = {0.75 + 1e-12, 2.5, -3.125};
static const float p32[] = {1.0f};
static const float g32[] = {0.5f};
static const float p32_next[] = {0x1.800002p-1f};           /* 0.75f and 1 ulp */

#define VEC(NAME, DTYPE, N, KEYS, NSLOTS, ULPS, ABS, P, G, WANT)                          \
    {.struct_size = sizeof(optimd_test_vector), .dtype = DTYPE, .name = NAME,             \
     .n_hparam_values = 1, .n_slots = NSLOTS, .hparam_keys = KEYS, .hparam_values = half, \
     .step = 1, .numel = N, .ndim = 0, .max_ulps = ULPS, .shape = NULL,                   \
     .max_abs_error = ABS, .param = P, .grad = G, .slots = NULL, .expected_param = WANT,  \
     .expected_slots = NULL}

static const optimd_test_vector vectors[] = {
    VEC("exact", OPTIMD_DTYPE_F64, 3, lr_key, 0, 0, 0.0, p64, g64, p64_out),
    VEC("within_2_ulps", OPTIMD_DTYPE_F32, 1, lr_key, 0, 2, 0.0, p32, g32, p32_next),
    VEC("within_1e-9", OPTIMD_DTYPE_F64, 3, lr_key, 0, 0, 1e-9, p64, g64, p64_near),
#ifdef BROKEN_VECTOR
#define p64_wrong ((const double[]){0.75, 2.4, -3.125})
    VEC("wrong", OPTIMD_DTYPE_F64, 3, lr_key, 0, 0, 0.0, p64, g64, p64_wrong),
    VEC("one_ulp_exact", OPTIMD_DTYPE_F32, 1, lr_key, 0, 0, 0.0, p32, g32, p32_next),
#endif
#ifdef BROKEN_VECTOR_KEY
    VEC("unknown_key", OPTIMD_DTYPE_F64, 3, ((const char *const[]){"learning_rate"}), 0, 0, 0.0, p64, g64, p64_out),
#endif
#ifdef BROKEN_VECTOR_SLOTS
    VEC("extra_slot", OPTIMD_DTYPE_F64, 3, lr_key, 1, 0, 0.0, p64, g64, p64_out),
#endif
};
#endif

static const optimd_optimizer optimizer = {
    .struct_size = sizeof(optimd_optimizer),
    .n_hparams = 1,
    .hparams = hparams,
    .n_slots = 0,
    .dtypes = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64),
    .slots = NULL,
    .check_hparams = NULL,
    .step = step,
#ifdef BROKEN_ELEMENTWISE
    .flags = OPTIMD_OPTIMIZER_ELEMENTWISE,
#endif
#ifdef HAS_VECTORS
    .n_test_vectors = sizeof vectors / sizeof vectors[0],
    .test_vectors = vectors,
#endif
};

#ifdef BROKEN_NO_SYMBOL
#define DESCRIPTOR optimd_plugin_v1
#else
#define DESCRIPTOR optimd_plugin
#endif

OPTIMD_EXPORT const optimd_plugin_desc DESCRIPTOR = {
#ifdef BROKEN_ABI_MAJOR
    .abi_major = 2,
#else
    .abi_major = OPTIMD_ABI_MAJOR,
#endif
    .abi_minor = OPTIMD_ABI_MINOR,
    .struct_size = sizeof(optimd_plugin_desc),
    .kind = OPTIMD_KIND_OPTIMIZER,
    .id = "broken",
    .version = "0.0.1",
    .description = "deliberately broken test plugin",
    .optimizer = &optimizer,
    .scheduler = NULL,
};

#ifdef BROKEN_EXTRA_SYMBOL
OPTIMD_EXPORT int optimd_plugin_helper(void)
{
    return 1;
}
#endif
