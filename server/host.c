#include "host.h"

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void host_log(optimd_call *call, int32_t level, const char *msg)
{
    log_msg(level, "plugin %s: %s", call->plugin_id, msg ? msg : "(null)");
}

static void host_set_error(optimd_call *call, const char *msg)
{
    snprintf(call->error, sizeof call->error, "%s", msg ? msg : "");
}

static void *host_scratch(optimd_call *call, size_t bytes)
{
    if (call->n_scratch == HOST_MAX_SCRATCH || bytes == 0) return NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded < bytes) return NULL;
    void *p = aligned_alloc(64, rounded);
    if (p) call->scratch[call->n_scratch++] = p;
    return p;
}

static optimd_status host_parallel_for(optimd_call *call, int64_t n, int64_t grain,
                                       optimd_range_fn fn, void *user)
{
    if (!fn) return OPTIMD_ERR_INVALID;
    if (call->pool)
        compute_pool_run(call->pool, n, grain, fn, user);
    else if (n > 0)
        fn(user, 0, n);
    return OPTIMD_OK;
}

void host_call_begin(host_call *hc, const char *plugin_id, compute_pool *pool)
{
    memset(hc, 0, sizeof *hc);
    hc->call.plugin_id = plugin_id;
    hc->call.pool = pool;
    hc->table.struct_size = sizeof hc->table;
    hc->table.abi_major = OPTIMD_ABI_MAJOR;
    hc->table.abi_minor = OPTIMD_ABI_MINOR;
    hc->table.call = &hc->call;
    hc->table.log = host_log;
    hc->table.set_error = host_set_error;
    hc->table.scratch = host_scratch;
    hc->table.parallel_for = host_parallel_for;
}

void host_call_end(host_call *hc)
{
    for (int i = 0; i < hc->call.n_scratch; i++) free(hc->call.scratch[i]);
    hc->call.n_scratch = 0;
}
