/*
 * optimd plugin SDK: helpers for writing fast step kernels.
 *
 * Header-only (macros and static inline functions), and not part of the
 * ABI: a plugin that uses them still exports nothing but `optimd_plugin`,
 * and a newer SDK may add helpers here without touching plugin.h. The
 * plugins shipped with optimd are written with them. docs/writing-a-plugin.md,
 * "Fast kernels", shows them in use.
 *
 * A step is memory-bound: a kernel that makes one pass over the parameter,
 * its gradient and its state, in vector registers, on every core the host
 * lends it, moves each byte once. Three things get a plugin there:
 *
 *  - OPTIMD_KERNEL on the function that updates a range of elements: it is
 *    compiled for AVX-512 (x86-64-v4), AVX2 + FMA (x86-64-v3) and baseline
 *    x86-64, and the dynamic loader picks the best one the CPU has.
 *  - optimd_run_ranges() to run it: on the calling thread for small
 *    tensors, split across the host's threads (optimd_host.parallel_for)
 *    for large ones.
 *  - OPTIMD_FMA / OPTIMD_SQRT / OPTIMD_ABS, type-generic, so that one kernel
 *    body written with a macro for its element type serves f32 and f64 with
 *    each operation rounded once, in the element's type.
 *
 * Bit-identical results on every path: the four operations, fma and sqrt
 * are correctly rounded in every instruction set, so a kernel gives the
 * same bits on all three as long as the compiler neither contracts a*b+c
 * into an fma by itself (-ffp-contract=off, which the SDK's
 * optimd_add_plugin and optimd-sdk.pc set) nor reorders a sum
 * (no -ffast-math or -fassociative-math). Element-wise kernels also give
 * the same bits however the range is split. To test each path on one
 * machine, build the plugin once more with -DOPTIMD_KERNEL_ISA_V3 (AVX2
 * only), -DOPTIMD_KERNEL_ISA_V4 (AVX-512 only) or -DOPTIMD_KERNEL_ISA_BASELINE
 * and compare: optimd's own tests do exactly that.
 */
#ifndef OPTIMD_KERNEL_H
#define OPTIMD_KERNEL_H

#include <optimd/plugin.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(OPTIMD_KERNEL_ISA_BASELINE)
#define OPTIMD_KERNEL
#elif defined(OPTIMD_KERNEL_ISA_V3)
#define OPTIMD_KERNEL __attribute__((target("arch=x86-64-v3")))
#elif defined(OPTIMD_KERNEL_ISA_V4)
#define OPTIMD_KERNEL __attribute__((target("arch=x86-64-v4")))
#elif defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
/* GCC 12 is the first to dispatch target_clones on x86-64 ISA levels. */
#define OPTIMD_KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OPTIMD_KERNEL
#endif

/* Tensors up to this many elements are updated on the calling thread:
 * handing them to the host's workers costs more than it saves. */
#define OPTIMD_PARALLEL_MIN ((int64_t)65536)
/* Smallest range handed to one worker (a multiple of 16 elements, so that
 * ranges start on a vector boundary whenever the tensor does). */
#define OPTIMD_PARALLEL_GRAIN ((int64_t)16384)

/* Runs fn(ctx, begin, end) over [0, numel): on the calling thread for up to
 * OPTIMD_PARALLEL_MIN elements (or when the host has no parallel_for),
 * otherwise through the host's parallel_for in ranges of at least
 * OPTIMD_PARALLEL_GRAIN. Returns what parallel_for returns. `fn` must give
 * the same result however [0, numel) is split. */
static inline optimd_status optimd_run_ranges(const optimd_host *host, int64_t numel, optimd_range_fn fn,
                                              void *ctx)
{
    if (numel <= 0) return OPTIMD_OK;
    int has_parallel_for = host != NULL &&
                           host->struct_size >= offsetof(optimd_host, parallel_for) + sizeof host->parallel_for &&
                           host->parallel_for != NULL;
    if (numel <= OPTIMD_PARALLEL_MIN || !has_parallel_for) {
        fn(ctx, 0, numel);
        return OPTIMD_OK;
    }
    return host->parallel_for(host->call, numel, OPTIMD_PARALLEL_GRAIN, fn, ctx);
}

/* One rounding of a*b+c; the square root; the absolute value: each in the
 * type of its (first) operand, float or double. */
#define OPTIMD_FMA(a, b, c) _Generic((a), float: fmaf, default: fma)((a), (b), (c))
#define OPTIMD_SQRT(x) _Generic((x), float: sqrtf, default: sqrt)(x)
#define OPTIMD_ABS(x) _Generic((x), float: fabsf, default: fabs)(x)

#endif
