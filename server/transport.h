/* The NNG side of the daemon: a rep0 socket with one context per in-flight
 * request, and the request threads that run server_handle.
 *
 * Threads: NNG completes receives and sends on its own threads; those only
 * queue work or re-arm a receive. Request threads decode, apply and send. */
#ifndef OPTIMD_SERVER_TRANSPORT_H
#define OPTIMD_SERVER_TRANSPORT_H

#include "server.h"

#include <stddef.h>

typedef struct transport transport;

/* Listens on every URL of the options and starts serving. `bound_url`
 * receives the first address with its real port (for tcp port 0). */
int transport_start(transport **out, server *srv, char *bound_url, size_t cap);
/* Stops receiving, lets running requests finish, frees everything. */
void transport_stop(transport *t);

/* A parked request (request_ticket.park): answer it with `reply` (taken),
 * or have its handler run again (ticket.rerun). Any thread, once the
 * handle is known; a call that comes before the parking handler returned
 * takes effect when it has. */
void transport_answer(void *handle, nng_msg *reply);
void transport_wake(void *handle);

/* Builds the TLS configuration the options describe and throws it away:
 * -1 (logged) when a file is unreadable or the certificate, key and CA do
 * not go together. For --check-config. */
int transport_check_tls(const options *o);

#endif
