/* name_index: finds what was inserted, by exact bytes, across growth; finds
 * nothing else. */
#include "check.h"
#include "name_index.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int check_failure_count;

int main(void)
{
    enum { N = 5000 };
    char **names = calloc(N, sizeof *names);
    name_index ix;
    name_index_init(&ix);
    CHECK(name_index_find(&ix, (const char *const *)names, "a", 1) == -1, "empty index finds nothing");
    for (int i = 0; i < N; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "layer.%d.weight", i);
        names[i] = strdup(buf);
        CHECK(name_index_insert(&ix, (const char *const *)names, (uint32_t)i) == 0, "insert %d", i);
    }
    int misses = 0;
    for (int i = 0; i < N; i++)
        misses += name_index_find(&ix, (const char *const *)names, names[i], strlen(names[i])) != i;
    CHECK(misses == 0, "%d names not found at their index", misses);
    CHECK(name_index_find(&ix, (const char *const *)names, "layer.1.weigh", 13) == -1, "prefix is no match");
    CHECK(name_index_find(&ix, (const char *const *)names, "layer.1.weightx", 15) == -1, "longer is no match");
    CHECK(name_index_find(&ix, (const char *const *)names, "layer.1.weight\0x", 16) == -1,
          "embedded NUL is no match");
    name_index_free(&ix);
    for (int i = 0; i < N; i++) free(names[i]);
    free(names);
    return check_report("test_name_index");
}
