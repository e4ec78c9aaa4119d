#include "finite.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* Written with vector types rather than left to the auto-vectoriser: at
 * -O2, GCC 12 vectorises only loops whose trip count needs no epilogue, so
 * the element-wise loop ran at about one element a cycle, slower than
 * memory delivers them. A value is not finite when its exponent bits are
 * all ones; lanes are or-ed together and looked at once at the end, so
 * the loop has no branch but its own. 16-byte vectors: the baseline
 * (SSE2) has them, and GCC splits wider ones into scalar code there. */
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint64_t u64x2 __attribute__((vector_size(16)));

static bool finite_f32(const unsigned char *b, size_t n)
{
    const uint32_t e = 0x7f800000u;
    const u32x4 exp = {e, e, e, e};
    u32x4 acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        u32x4 v0, v1, v2, v3;
        memcpy(&v0, b + 4 * i, 16);
        memcpy(&v1, b + 4 * i + 16, 16);
        memcpy(&v2, b + 4 * i + 32, 16);
        memcpy(&v3, b + 4 * i + 48, 16);
        acc0 |= (u32x4)((v0 & exp) == exp);
        acc1 |= (u32x4)((v1 & exp) == exp);
        acc2 |= (u32x4)((v2 & exp) == exp);
        acc3 |= (u32x4)((v3 & exp) == exp);
    }
    acc0 |= acc1 | acc2 | acc3;
    uint32_t bad = acc0[0] | acc0[1] | acc0[2] | acc0[3];
    for (; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, b + 4 * i, 4);
        bad |= (bits & e) == e;
    }
    return bad == 0;
}

static bool finite_f64(const unsigned char *b, size_t n)
{
    const uint64_t e = 0x7ff0000000000000ull;
    const u64x2 exp = {e, e};
    u64x2 acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        u64x2 v0, v1, v2, v3;
        memcpy(&v0, b + 8 * i, 16);
        memcpy(&v1, b + 8 * i + 16, 16);
        memcpy(&v2, b + 8 * i + 32, 16);
        memcpy(&v3, b + 8 * i + 48, 16);
        acc0 |= (u64x2)((v0 & exp) == exp);
        acc1 |= (u64x2)((v1 & exp) == exp);
        acc2 |= (u64x2)((v2 & exp) == exp);
        acc3 |= (u64x2)((v3 & exp) == exp);
    }
    acc0 |= acc1 | acc2 | acc3;
    uint64_t bad = acc0[0] | acc0[1];
    for (; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, b + 8 * i, 8);
        bad |= (bits & e) == e;
    }
    return bad == 0;
}

bool optimd_all_finite(const void *data, size_t n, size_t elem_size)
{
    return elem_size == 8 ? finite_f64(data, n) : finite_f32(data, n);
}

typedef struct scan {
    const unsigned char *data;
    size_t elem_size;
    atomic_bool bad;
} scan;

static void scan_chunk(void *user, int64_t begin, int64_t end)
{
    scan *sc = user;
    if (!optimd_all_finite(sc->data + (size_t)begin * sc->elem_size, (size_t)(end - begin), sc->elem_size))
        atomic_store(&sc->bad, true);
}

bool optimd_all_finite_parallel(compute_pool *pool, const void *data, size_t n, size_t elem_size)
{
    /* Below a few hundred kilobytes the hand-off costs more than it saves. */
    if (!pool || n < (1u << 17)) return optimd_all_finite(data, n, elem_size);
    scan sc = {.data = data, .elem_size = elem_size};
    atomic_init(&sc.bad, false);
    compute_pool_run(pool, (int64_t)n, 1 << 16, scan_chunk, &sc);
    return !atomic_load(&sc.bad);
}
