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

/* The change being logged: the request that makes it, as received. */
typedef struct store_change {
    store *st;
    const void *request;
    size_t len;
} store_change;

int store_open(store *st, const char *state_dir);
void store_close(store *st);

/* Gives a new session its directory, a first snapshot and (unless its
 * durability is none) its write-ahead log. The caller holds the lock. */
int store_attach(store *st, session *s, request_error *err);

/* session_commit_fn for a store_change: appends the request to the
 * session's log (flushed now for DURABILITY_ALWAYS); STORAGE on failure. */
int store_log_change(void *change, session *s, request_error *err);

/* fdatasync of every log appended to since the last call (the group commit
 * of DURABILITY_INTERVAL). */
void store_sync_logs(store *st, session_table *t);

/* Snapshots `s` (the caller holds the lock) when its log has grown to the
 * size of a snapshot; called after each logged change. */
int store_compact_if_large(store *st, session *s);

/* Snapshots `s` now and empties its log; the caller holds the lock (a
 * session that moved to another plugin version: its log must not be
 * replayed through a version it was not applied with). */
int store_save_locked(store *st, session *s);
/* Snapshots `s` now, as it will be without the parameters keep[i] does
 * not mark (NULL: all of them), and empties its log; the caller holds the
 * lock and has already counted the change in s->version. A change that is
 * not logged (parameters added or removed between steps) is durable once
 * this returns 0; on failure (errno) the files are as they were. */
int store_save_some(store *st, session *s, const bool *keep);
/* Saves `s` if it changed since its last snapshot, then empties its log.
 * Takes the session lock. */
int store_save(store *st, session *s);
/* Saves every session of the table that changed. Returns how many failed. */
int store_save_all(store *st, session_table *t);
/* Deletes a session's files; the caller holds the session lock and has
 * marked it closed. */
void store_remove(store *st, session *s);
/* Loads every stored session into the table; a session whose latest
 * snapshot is unreadable comes from the previous one. Logs each case. */
void store_load_all(store *st, plugin_registry *reg, session_table *t, compute_pool *pool);

#endif
