/* Which client connections (NNG pipe ids) are open right now. The
 * transport reports them as NNG adds and removes pipes; a request that
 * leaves something tied to its connection (a shared-memory attachment)
 * asks afterwards whether the connection is still there, since it may have
 * closed while the request was being applied. Any thread. */
#ifndef OPTIMD_SERVER_CONNECTIONS_H
#define OPTIMD_SERVER_CONNECTIONS_H

#include <stdbool.h>
#include <stdint.h>

/* 0 on success; -1 when out of memory (the connection then counts as
 * closed, which errs on the side of detaching). */
int optimd_connection_opened(uint32_t id);
void optimd_connection_closed(uint32_t id);
bool optimd_connection_is_open(uint32_t id);

#endif
