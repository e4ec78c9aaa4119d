#include "name_index.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

void name_index_init(name_index *ix) { memset(ix, 0, sizeof *ix); }

void name_index_free(name_index *ix)
{
    free(ix->slots);
    memset(ix, 0, sizeof *ix);
}

static void place(uint32_t *slots, size_t cap, const char *name, uint32_t value)
{
    size_t i = hash(name, strlen(name)) & (cap - 1);
    while (slots[i]) i = (i + 1) & (cap - 1);
    slots[i] = value + 1;
}

int name_index_insert(name_index *ix, const char *const *names, uint32_t value)
{
    if ((ix->count + 1) * 2 > ix->cap) {
        size_t cap = ix->cap ? ix->cap * 2 : 16;
        uint32_t *slots = calloc(cap, sizeof *slots);
        if (!slots) return -1;
        for (size_t i = 0; i < ix->cap; i++)
            if (ix->slots[i]) place(slots, cap, names[ix->slots[i] - 1], ix->slots[i] - 1);
        free(ix->slots);
        ix->slots = slots;
        ix->cap = cap;
    }
    place(ix->slots, ix->cap, names[value], value);
    ix->count++;
    return 0;
}

int64_t name_index_find(const name_index *ix, const char *const *names, const char *key,
                        size_t len)
{
    if (!ix->cap) return -1;
    size_t i = hash(key, len) & (ix->cap - 1);
    while (ix->slots[i]) {
        const char *n = names[ix->slots[i] - 1];
        if (strlen(n) == len && memcmp(n, key, len) == 0) return ix->slots[i] - 1;
        i = (i + 1) & (ix->cap - 1);
    }
    return -1;
}
