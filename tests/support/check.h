/* Assertions for optimd's C tests: a failed check prints where and why and
 * counts as a failure; the test's main returns check_failures() != 0. */
#ifndef OPTIMD_TEST_CHECK_H
#define OPTIMD_TEST_CHECK_H

#include <stdio.h>

extern int check_failure_count;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__,         \
                    __LINE__, #cond);                                      \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            check_failure_count++;                                         \
        }                                                                  \
    } while (0)

/* Like CHECK, but stops the current test function when it fails. */
#define REQUIRE(cond, ...)                                                 \
    do {                                                                   \
        int require_before_ = check_failure_count;                         \
        CHECK(cond, __VA_ARGS__);                                          \
        if (check_failure_count != require_before_) return;                \
    } while (0)

static inline int check_report(const char *test_name)
{
    if (check_failure_count) {
        fprintf(stderr, "%s: %d check(s) failed\n", test_name,
                check_failure_count);
        return 1;
    }
    printf("%s: all checks passed\n", test_name);
    return 0;
}

#endif
