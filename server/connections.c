#include "connections.h"

#include <pthread.h>
#include <stdlib.h>

/* Unsorted: connections come and go far more often than anyone asks, and
 * a daemon has at most a few thousand. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t *open_ids;
static size_t n_open, cap_open;

int optimd_connection_opened(uint32_t id)
{
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (n_open == cap_open) {
        size_t cap = cap_open ? cap_open * 2 : 64;
        uint32_t *grown = realloc(open_ids, cap * sizeof *grown);
        if (grown) {
            open_ids = grown;
            cap_open = cap;
        } else {
            rc = -1;
        }
    }
    if (rc == 0) open_ids[n_open++] = id;
    pthread_mutex_unlock(&lock);
    return rc;
}

void optimd_connection_closed(uint32_t id)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n_open; i++)
        if (open_ids[i] == id) {
            open_ids[i] = open_ids[--n_open];
            break;
        }
    if (n_open == 0) {
        /* Give the memory back when the last client goes. */
        free(open_ids);
        open_ids = NULL;
        cap_open = 0;
    }
    pthread_mutex_unlock(&lock);
}

bool optimd_connection_is_open(uint32_t id)
{
    pthread_mutex_lock(&lock);
    bool found = false;
    for (size_t i = 0; i < n_open && !found; i++) found = open_ids[i] == id;
    pthread_mutex_unlock(&lock);
    return found;
}
