/* The optimd_host table handed to plugin callbacks, and the per-call state
 * behind it (error text, scratch memory). One host_call per callback; it
 * lives on the calling thread's stack. */
#ifndef OPTIMD_SERVER_HOST_H
#define OPTIMD_SERVER_HOST_H

#include "compute_pool.h"

#include <optimd/plugin.h>

#define HOST_MAX_SCRATCH 8

struct optimd_call {
    const char *plugin_id;
    compute_pool *pool;        /* NULL: parallel_for runs serially */
    char error[256];
    void *scratch[HOST_MAX_SCRATCH];
    int n_scratch;
};

typedef struct host_call {
    optimd_host table;
    struct optimd_call call;
} host_call;

void host_call_begin(host_call *hc, const char *plugin_id, compute_pool *pool);
/* Frees the call's scratch memory. */
void host_call_end(host_call *hc);

#endif
