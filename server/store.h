/* Session snapshots in the state directory:
 *   <state>/sessions/<name>/snapshot.safetensors           the latest
 *   <state>/sessions/<name>/snapshot.previous.safetensors  the one before
 * A snapshot is written to a temporary file, fsynced and renamed into
 * place, and the directory fsynced, so a crash leaves either the old or the
 * new file, never half of one. Any thread may call these; a session is
 * saved under its own lock. */
#ifndef OPTIMD_SERVER_STORE_H
#define OPTIMD_SERVER_STORE_H

#include "plugin_registry.h"
#include "session.h"
#include "session_table.h"

typedef struct store {
    char *sessions_dir;
} store;

int store_open(store *st, const char *state_dir);
void store_close(store *st);

/* Saves `s` if it changed since its last snapshot. Takes the session lock. */
int store_save(store *st, session *s);
/* Saves every session of the table that changed. Returns how many failed. */
int store_save_all(store *st, session_table *t);
/* Deletes a session's files; the caller holds the session lock and has
 * marked it closed. */
void store_remove(store *st, const session *s);
/* Loads every stored session into the table; a session whose latest
 * snapshot is unreadable comes from the previous one. Logs each case. */
void store_load_all(store *st, const plugin_registry *reg, session_table *t);

#endif
