/* optimd_all_finite and its parallel form: every position of a NaN or an
 * infinity is found (vector body, tail, unaligned start), for f32 and f64,
 * and finite extremes are not mistaken for them. */
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
    compute_pool_stop(pool);
    return check_report("test_finite");
}
