/* A session's shared-memory segment (docs/protocol.md, shm_attach and
 * shm_step): where each attached parameter and its gradient lie in the
 * segment, the private copies gradients are read into, and the step that
 * reads gradients from the segment and writes parameters back into it.
 *
 * The daemon's own copy of the parameters stays authoritative: the
 * segment's parameter areas are output only, rewritten after each step, so
 * a client scribbling over them corrupts nothing but its own view.
 * Gradients are copied out of the segment before they are checked, so a
 * client changing them during a step cannot slip a NaN past the check.
 *
 * Every function here is called with the session's lock held, except
 * optimd_shm_detach_connection, which takes the locks itself. */
#ifndef OPTIMD_SERVER_SHM_ATTACHMENT_H
#define OPTIMD_SERVER_SHM_ATTACHMENT_H

#include "compute_pool.h"
#include "session.h"
#include "session_table.h"
#include "shared_segment.h"
#include "store.h"

#include <msgpack.h>

typedef struct optimd_shm_entry {
    size_t param;              /* index into the session's params */
    uint64_t param_offset;     /* in the segment */
    uint64_t grad_offset;
    unsigned char *staging;    /* the gradient's private copy */
    uint64_t seen;             /* the last shm_step that named it (duplicate names) */
    uint64_t published;        /* the last shm_step that wrote it into the segment */
} optimd_shm_entry;

typedef struct optimd_shm_attachment {
    optimd_shared_segment seg;
    uint32_t connection;       /* NNG pipe id of the connection that attached it */
    optimd_shm_entry *entries; /* in the request's order */
    size_t n_entries;
    int64_t *entry_of;         /* parameter index -> entry, or -1; n_params at attach long */
    size_t n_params;
    unsigned char *staging;    /* every entry's private gradient copy, 64-byte aligned */
    uint64_t staging_bytes;    /* counted in the session's committed_bytes while attached */
    uint64_t serial;
} optimd_shm_attachment;

/* Maps segment `name` (must belong to `owner`, be `size` bytes) and lays
 * out `params` (map name -> {param: offset, grad: offset}) in it: every
 * name registered, given once, each tensor aligned, inside the segment and
 * overlapping no other. The new attachment is not installed yet, and its
 * gradient copies not allocated: staging_bytes tell the caller what they
 * would commit. */
int optimd_shm_prepare(session *s, const char *name, size_t name_len, uint64_t size, uid_t owner,
                       uint32_t connection, const msgpack_object *params, optimd_shm_attachment **out,
                       request_error *err);
/* Allocates the gradient copies, writes the session's current parameters
 * into the segment and makes `a` the session's attachment, detaching the
 * one it had. On failure (no memory, the segment shrank meanwhile) `a` is
 * freed and the old one stays. */
int optimd_shm_install(session *s, optimd_shm_attachment *a, request_error *err);
/* Frees an attachment that was never installed. */
void optimd_shm_discard(optimd_shm_attachment *a);
/* Unmaps the session's segment, if any; true if there was one. */
bool optimd_shm_detach(session *s);
/* Detaches every segment attached over connection `connection` (its
 * client went away). Takes each session's lock. */
void optimd_shm_detach_connection(session_table *t, uint32_t connection);

/* One step with the gradients in the segment: `names` (array of str, or
 * NULL for every attached parameter) selects them, as the keys of a step's
 * "grads" map would. Runs session_step on private copies (so every check
 * of a wire step applies), logs it as the equivalent wire step, then
 * writes the stepped parameters into the segment. `request` is the
 * shm_step request (its seq, client and clip keys go into the log).
 * *detached is set when the segment shrank after the step was applied: the
 * step stands, the segment is detached. */
int optimd_shm_step(session *s, const msgpack_object *names, const msgpack_object *request,
                    const step_identity *id, const step_clip *clip, compute_pool *pool, store *st,
                    step_result *res, bool *detached, request_error *err);

#endif
