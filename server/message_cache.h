/* Large NNG messages kept for reuse as replies. NNG zero-fills every
 * message buffer it allocates, and a buffer of tens of megabytes comes
 * fresh from the kernel each time, so a 40 MB reply paid a memset and ten
 * thousand page faults before a byte of it was written. A request's
 * message, once handled, is kept here instead of freed; the next large
 * reply takes it, its pages already in place. Bounded in bytes
 * (--message-cache); any thread. */
#ifndef OPTIMD_SERVER_MESSAGE_CACHE_H
#define OPTIMD_SERVER_MESSAGE_CACHE_H

#include <nng/nng.h>
#include <pthread.h>
#include <stddef.h>

#define MESSAGE_CACHE_SLOTS 8
/* Below this a message is not worth keeping: malloc serves it from its
 * own free lists, already faulted in. */
#define MESSAGE_CACHE_MIN ((size_t)256 << 10)

typedef struct message_cache {
    pthread_mutex_t lock;
    size_t max_bytes;          /* 0: keeps nothing */
    size_t bytes;              /* capacity of the messages held */
    size_t n;
    nng_msg *held[MESSAGE_CACHE_SLOTS];   /* oldest first */
} message_cache;

void message_cache_init(message_cache *c, size_t max_bytes);
/* Frees every message held. */
void message_cache_destroy(message_cache *c);
/* An empty message (body and header cleared) whose capacity is at least
 * `bytes`, the smallest held that fits; NULL when none does. */
nng_msg *message_cache_take(message_cache *c, size_t bytes);
/* Takes ownership of `m`: kept if it is large enough to be worth it and
 * fits the bound (the oldest held go to make room), else freed. */
void message_cache_give(message_cache *c, nng_msg *m);

#endif
