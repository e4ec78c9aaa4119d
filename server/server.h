/* What every request handler can reach: options, plugins, sessions, the
 * compute pool. Set up by main before the transport starts and torn down
 * after it stops; the pointers never change in between. */
#ifndef OPTIMD_SERVER_SERVER_H
#define OPTIMD_SERVER_SERVER_H

#include "compute_pool.h"
#include "options.h"
#include "plugin_registry.h"
#include "session_table.h"
#include "store.h"

#include <nng/nng.h>

typedef struct server {
    const options *opts;
    plugin_registry plugins;
    session_table sessions;
    compute_pool *pool;
    store store;
} server;

/* Decodes one request, runs it and returns the reply (never NULL unless
 * memory ran out). Takes ownership of `request`. Any request thread. */
nng_msg *server_handle(server *srv, nng_msg *request);
/* A LIMIT reply (id 0) to a request refused without reading it. Takes
 * ownership of `request`. */
nng_msg *server_refuse(server *srv, nng_msg *request, const char *message);
/* A client connection (NNG pipe id) closed: what it alone kept alive goes
 * (the shared-memory segments it attached). Any thread. */
void server_connection_closed(server *srv, uint32_t connection);

#endif
