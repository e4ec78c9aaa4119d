/*
 * Rendezvous placement of parameters over servers. The rule is the Python
 * client's (clients/python/src/optimd/cluster.py) to the byte: a worker in
 * any language that lists the same servers must put a parameter on the
 * same one, or its steps would reach a server that never registered it.
 */
#include "blake2b.h"

#include <optimd/client.h>

#include <string.h>

uint64_t optimd_rendezvous_weight(const char *url, const char *name)
{
    if (!url || !name) return 0;
    optimd_blake2b h;
    uint8_t digest[8];
    optimd_blake2b_init(&h, sizeof digest);
    optimd_blake2b_update(&h, url, strlen(url));
    optimd_blake2b_update(&h, "", 1);
    optimd_blake2b_update(&h, name, strlen(name));
    optimd_blake2b_final(&h, digest);
    uint64_t w = 0;
    for (size_t i = 0; i < sizeof digest; i++) w = (w << 8) | digest[i];
    return w;
}

size_t optimd_place(const char *name, const char *const *urls, size_t n)
{
    if (!name || !urls || n == 0) return (size_t)-1;
    size_t best = (size_t)-1;
    uint64_t best_w = 0;
    for (size_t i = 0; i < n; i++) {
        if (!urls[i]) return (size_t)-1;
        uint64_t w = optimd_rendezvous_weight(urls[i], name);
        /* The tie rule makes the answer independent of the list's order;
         * strcmp compares as unsigned char, which orders UTF-8 as Python
         * orders str. */
        if (best == (size_t)-1 || w > best_w ||
            (w == best_w && strcmp(urls[i], urls[best]) > 0)) {
            best = i;
            best_w = w;
        }
    }
    return best;
}
