/* Maps names to array indices with open addressing; grows, never shrinks.
 * Names are borrowed from the caller and must outlive the index. */
#ifndef OPTIMD_SERVER_NAME_INDEX_H
#define OPTIMD_SERVER_NAME_INDEX_H

#include <stddef.h>
#include <stdint.h>

typedef struct name_index {
    uint32_t *slots;           /* value + 1, 0 = empty */
    size_t cap;                /* power of two */
    size_t count;
} name_index;

void name_index_init(name_index *ix);
void name_index_free(name_index *ix);
/* `names` may move when the owner's array grows; pass it each time. */
int name_index_insert(name_index *ix, const char *const *names, uint32_t value);
/* Returns the value, or -1. */
int64_t name_index_find(const name_index *ix, const char *const *names, const char *key,
                        size_t len);

#endif
