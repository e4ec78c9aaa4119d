#include "message_cache.h"

#include <stdbool.h>
#include <string.h>

void message_cache_init(message_cache *c, size_t max_bytes)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    c->max_bytes = max_bytes;
}

void message_cache_destroy(message_cache *c)
{
    for (size_t i = 0; i < c->n; i++) nng_msg_free(c->held[i]);
    c->n = 0;
    c->bytes = 0;
    pthread_mutex_destroy(&c->lock);
}

static void remove_at(message_cache *c, size_t i)
{
    c->bytes -= nng_msg_capacity(c->held[i]);
    memmove(&c->held[i], &c->held[i + 1], (c->n - i - 1) * sizeof c->held[0]);
    c->n--;
}

nng_msg *message_cache_take(message_cache *c, size_t bytes)
{
    nng_msg *m = NULL;
    pthread_mutex_lock(&c->lock);
    size_t best = c->n;
    for (size_t i = 0; i < c->n; i++) {
        size_t cap = nng_msg_capacity(c->held[i]);
        if (cap >= bytes && (best == c->n || cap < nng_msg_capacity(c->held[best]))) best = i;
    }
    if (best < c->n) {
        m = c->held[best];
        remove_at(c, best);
    }
    pthread_mutex_unlock(&c->lock);
    if (m) {
        nng_msg_clear(m);
        nng_msg_header_clear(m);
    }
    return m;
}

void message_cache_give(message_cache *c, nng_msg *m)
{
    size_t cap = nng_msg_capacity(m);
    nng_msg *evicted[MESSAGE_CACHE_SLOTS];
    size_t n_evicted = 0;
    bool kept = false;
    pthread_mutex_lock(&c->lock);
    if (cap >= MESSAGE_CACHE_MIN && cap <= c->max_bytes) {
        while (c->n && (c->n == MESSAGE_CACHE_SLOTS || c->bytes + cap > c->max_bytes)) {
            evicted[n_evicted++] = c->held[0];
            remove_at(c, 0);
        }
        c->held[c->n++] = m;
        c->bytes += cap;
        kept = true;
    }
    pthread_mutex_unlock(&c->lock);
    /* Freed outside the lock: giving back tens of megabytes takes a while. */
    for (size_t i = 0; i < n_evicted; i++) nng_msg_free(evicted[i]);
    if (!kept) nng_msg_free(m);
}
