/* optimd_all_finite and its parallel form: every position of a NaN or an
 * infinity is found (vector body, tail, unaligned start), for f32 and f64,
 * and finite extremes are not mistaken for them. optimd_copy_finite and its
 * parallel form: the copy is exact, through the cached and the streaming
 * paths and at unaligned destinations, and the check finds what the scan
 * finds. */
#include "check.h"
#include "compute_pool.h"
#include "finite.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int check_failure_count;

int main(void)
{
    float f[80];
    double d[80];
    int wrong = 0;
    for (size_t n = 0; n < 70; n++) {
        for (size_t at = 0; at <= n; at++) {
            for (size_t off = 0; off < 3; off++) {
                for (size_t i = 0; i < 80; i++) {
                    f[i] = i % 2 ? 3.4e38f : -1e-45f;
                    d[i] = i % 2 ? -1.7e308 : 5e-324;
                }
                if (at < n) {
                    f[off + at] = at % 2 ? NAN : -INFINITY;
                    d[off + at] = at % 2 ? -NAN : INFINITY;
                }
                bool want = at == n;
                wrong += optimd_all_finite(f + off, n, 4) != want;
                wrong += optimd_all_finite(d + off, n, 8) != want;
            }
        }
    }
    CHECK(wrong == 0, "%d wrong answers on small buffers", wrong);

    compute_pool *pool;
    CHECK(compute_pool_start(&pool, 2) == 0, "pool starts");
    size_t n = 3000017;
    float *big = malloc(n * sizeof *big);
    for (size_t i = 0; i < n; i++) big[i] = (float)i;
    CHECK(optimd_all_finite_parallel(pool, big, n, 4), "a large finite buffer is finite");
    size_t spots[] = {0, 65535, 65536, n / 2, n - 1};
    for (size_t k = 0; k < sizeof spots / sizeof spots[0]; k++) {
        big[spots[k]] = NAN;
        CHECK(!optimd_all_finite_parallel(pool, big, n, 4), "NaN at %zu found", spots[k]);
        big[spots[k]] = 1.0f;
    }
    free(big);

    /* Copies, small (cached path) and large (streaming path). */
    size_t sizes[] = {0, 1, 15, 16, 17, 63, 64, 65, 4099, 70000, 300007};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t m = sizes[k];
        for (size_t esize = 4; esize <= 8; esize += 4) {
            for (size_t off = 0; off < 2; off++) {
                size_t bytes = m * esize;
                unsigned char *src = malloc(bytes + 16), *dst = malloc(bytes + 32);
                for (size_t i = 0; i < m; i++) {
                    if (esize == 4) {
                        float v = (float)i * 0.5f - 7.0f;
                        memcpy(src + 4 * i, &v, 4);
                    } else {
                        double v = (double)i * -0.25 + 3.0;
                        memcpy(src + 8 * i, &v, 8);
                    }
                }
                memset(dst, 0xAB, bytes + 32);
                bool fin = optimd_copy_finite(dst + off * 4, src, bytes, esize);
                CHECK(fin, "%zu finite elements of %zu bytes copied as finite (offset %zu)", m, esize, off);
                CHECK(memcmp(dst + off * 4, src, bytes) == 0, "%zu x %zu bytes copied exactly", m, esize);
                CHECK(dst[off * 4 + bytes] == 0xAB, "nothing written past %zu bytes", bytes);
                size_t where[] = {0, m / 2, m ? m - 1 : 0};
                for (size_t w = 0; m && w < 3; w++) {
                    unsigned char saved[8];
                    memcpy(saved, src + where[w] * esize, esize);
                    if (esize == 4) {
                        float bad = w % 2 ? INFINITY : NAN;
                        memcpy(src + where[w] * esize, &bad, 4);
                    } else {
                        double bad = w % 2 ? -INFINITY : NAN;
                        memcpy(src + where[w] * esize, &bad, 8);
                    }
                    CHECK(!optimd_copy_finite(dst + off * 4, src, bytes, esize),
                          "a non-finite element at %zu of %zu (size %zu) found by the copy", where[w], m, esize);
                    CHECK(memcmp(dst + off * 4, src, bytes) == 0, "copied exactly with a NaN in it");
                    CHECK(!optimd_copy_finite_parallel(pool, dst + off * 4, src, m, esize),
                          "... and by the parallel copy");
                    memcpy(src + where[w] * esize, saved, esize);
                }
                CHECK(optimd_copy_finite_parallel(pool, dst + off * 4, src, m, esize), "parallel copy: finite");
                CHECK(memcmp(dst + off * 4, src, bytes) == 0, "parallel copy exact (%zu x %zu)", m, esize);
                CHECK(optimd_copy_finite(dst, src, bytes, 0), "elem_size 0: a plain copy");
                free(src);
                free(dst);
            }
        }
    }
    compute_pool_stop(pool);
    return check_report("test_finite");
}
