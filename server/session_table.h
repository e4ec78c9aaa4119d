/* Every open session by name. Lookups hand out a reference, so a session
 * closed while a request still uses it is freed only when that request is
 * done. Any thread; an internal mutex guards the table. */
#ifndef OPTIMD_SERVER_SESSION_TABLE_H
#define OPTIMD_SERVER_SESSION_TABLE_H

#include "session.h"

#include <pthread.h>

typedef struct session_table {
    pthread_mutex_t mutex;
    session **sessions;        /* sorted by name */
    size_t count;
    size_t cap;
    size_t limit;
} session_table;

void session_table_init(session_table *t, size_t limit);
/* Drops the table's references (sessions still in use live on). */
void session_table_clear(session_table *t);

/* Adds `s` (the table takes the caller's reference). */
int session_table_add(session_table *t, session *s, request_error *err);
/* A new reference to the named session, or NULL. */
session *session_table_get(session_table *t, const char *name, size_t len);
/* Removes it; returns 0 if it was there. */
int session_table_remove(session_table *t, const session *s);

/* A snapshot of the table: new references, sorted by name. Free with
 * session_table_release_list. */
session **session_table_list(session_table *t, size_t *count);
void session_table_release_list(session **list, size_t count);

/* The memory all sessions of the table commit (session.committed_bytes). */
uint64_t session_table_committed_bytes(session_table *t);

#endif
