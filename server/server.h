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
#include <stdbool.h>
#include <stdint.h>

typedef struct server {
    const options *opts;
    plugin_registry plugins;
    session_table sessions;
    compute_pool *pool;
    store store;
} server;

/* How the transport hands a request to server_handle, and what the handler
 * may ask back: to park the request instead of answering it now (a
 * worker's push that waits for the others). A parked request keeps its
 * message; transport_answer or transport_wake (transport.h) ends it. */
typedef struct request_ticket {
    void *handle;              /* the transport's context of this request */
    bool rerun;                /* handled before, parked, woken since */
    bool timed_out;            /* ... because its deadline passed */
    bool park;                 /* out: leave unanswered, keep the message */
    int64_t deadline;          /* out, with park: metrics_now_ns() time of a
                                * rerun with timed_out (0: none) */
} request_ticket;

/* Decodes one request, runs it and returns the reply (never NULL unless
 * memory ran out or the ticket asks to park). Takes ownership of
 * `request`, unless parked. Any request thread. */
nng_msg *server_handle(server *srv, nng_msg *request, request_ticket *ticket);
/* A LIMIT reply (id 0) to a request refused without reading it. Takes
 * ownership of `request`. */
nng_msg *server_refuse(server *srv, nng_msg *request, const char *message);
/* A client connection (NNG pipe id) closed: what it alone kept alive goes
 * (the shared-memory segments it attached). Any thread. */
void server_connection_closed(server *srv, uint32_t connection);

#endif
