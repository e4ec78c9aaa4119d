#include "finite.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

/* Below this a copy goes through the cache as usual. */
#define STREAM_MIN ((size_t)256 << 10)

#if defined(__SSE2__)
/* Non-temporal stores for the large copies: tensors here are tens of
 * megabytes, far beyond any cache, and a plain store first reads the line
 * it overwrites; streaming saves that third of the traffic (1.7 ms instead
 * of 2.1 for 40 MB on the machine of docs/performance.md). The check runs
 * on the registers the copy loads anyway. An f64 is not finite when its
 * high half's exponent bits are all ones: lanes 1 and 3 are compared, and
 * lanes 0 and 2 are made to never match (x & 0 is never 1). */
static bool stream_copy(unsigned char *dst, const unsigned char *src, size_t n, size_t elem_size)
{
    size_t body = (uintptr_t)dst % 16 == 0 ? n / 64 * 64 : 0;
    const __m128i mask = elem_size == 8 ? _mm_set_epi32(0x7ff00000, 0, 0x7ff00000, 0) : _mm_set1_epi32(0x7f800000);
    const __m128i want = elem_size == 8 ? _mm_set_epi32(0x7ff00000, 1, 0x7ff00000, 1) : mask;
    __m128i acc = _mm_setzero_si128();
    for (size_t i = 0; i < body; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
        if (elem_size) {
            acc = _mm_or_si128(acc, _mm_cmpeq_epi32(_mm_and_si128(a, mask), want));
            acc = _mm_or_si128(acc, _mm_cmpeq_epi32(_mm_and_si128(b, mask), want));
            acc = _mm_or_si128(acc, _mm_cmpeq_epi32(_mm_and_si128(c, mask), want));
            acc = _mm_or_si128(acc, _mm_cmpeq_epi32(_mm_and_si128(d, mask), want));
        }
        _mm_stream_si128((__m128i *)(dst + i), a);
        _mm_stream_si128((__m128i *)(dst + i + 16), b);
        _mm_stream_si128((__m128i *)(dst + i + 32), c);
        _mm_stream_si128((__m128i *)(dst + i + 48), d);
    }
    /* Streaming stores are weakly ordered: done before anyone reads them. */
    _mm_sfence();
    bool finite = _mm_movemask_epi8(acc) == 0;
    memcpy(dst + body, src + body, n - body);
    if (elem_size && !optimd_all_finite(dst + body, (n - body) / elem_size, elem_size)) finite = false;
    return finite;
}
#endif

bool optimd_copy_finite(void *dst, const void *src, size_t n, size_t elem_size)
{
#if defined(__SSE2__)
    if (n >= STREAM_MIN) return stream_copy(dst, src, n, elem_size);
#endif
    /* Checked block by block while each is still in L1. */
    const size_t block = 16384;
    bool finite = true;
    for (size_t at = 0; at < n; at += block) {
        size_t len = n - at < block ? n - at : block;
        memcpy((unsigned char *)dst + at, (const unsigned char *)src + at, len);
        if (elem_size && !optimd_all_finite((unsigned char *)dst + at, len / elem_size, elem_size)) finite = false;
    }
    return finite;
}

typedef struct copy {
    unsigned char *dst;
    const unsigned char *src;
    size_t elem_size;
    atomic_bool bad;
} copy;

static void copy_chunk(void *user, int64_t begin, int64_t end)
{
    copy *c = user;
    size_t at = (size_t)begin * c->elem_size;
    if (!optimd_copy_finite(c->dst + at, c->src + at, (size_t)(end - begin) * c->elem_size, c->elem_size))
        atomic_store(&c->bad, true);
}

bool optimd_copy_finite_parallel(compute_pool *pool, void *dst, const void *src, size_t n, size_t elem_size)
{
    if (!pool || n < (1u << 17)) return optimd_copy_finite(dst, src, n * elem_size, elem_size);
    copy c = {.dst = dst, .src = src, .elem_size = elem_size};
    atomic_init(&c.bad, false);
    compute_pool_run(pool, (int64_t)n, 1 << 16, copy_chunk, &c);
    return !atomic_load(&c.bad);
}
