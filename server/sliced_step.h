/* A sliced step: one optimizer step whose gradients arrive in several
 * `step` requests (parts), each applied when it arrives, so the daemon
 * computes one part while the next is still on the wire
 * (docs/protocol.md, sliced steps). Only optimizers that declare
 * element-wise updates take them (docs/abi.md §6).
 *
 * Between its first and last part the step is *pending* on the session
 * (session->pending_step): what the parts covered so far, and each touched
 * parameter's scalar slots as they were before the step, so that every
 * range of the step sees the same scalar state. The step is counted (step
 * counts, scheduler, client seq) when its last part is applied. */
#ifndef OPTIMD_SERVER_SLICED_STEP_H
#define OPTIMD_SERVER_SLICED_STEP_H

#include "session.h"

#include <stdio.h>

#define SLICED_MAX_PARTS 65536

typedef struct sliced_step sliced_step;

/* What a part did, for its reply. */
typedef struct part_result {
    step_result step;          /* counters; duplicate: the part (or the whole step) was applied before */
    bool complete;             /* the step is complete (by this part, or before it) */
    uint32_t parts;            /* the step's parts applied so far */
} part_result;

/* One element range of a parameter that a part names: the whole
 * parameter (a plain tensor) or {offset, values}. */
typedef struct part_entry {
    size_t index;              /* into s->params */
    int64_t offset;
    int64_t count;             /* elements */
    const void *values;        /* the gradient of those elements, as received */
} part_entry;

/* Applies part `index` of `count` of the step (id->seq, id->client) with
 * `grads`; everything is checked before anything changes. `*entries`
 * (malloc'd, *n_entries of them; free it) lists what the part named, in
 * the request's order, for the reply; set on success, duplicates too. */
int session_step_part(session *s, const msgpack_object *grads, const step_identity *id, uint32_t index,
                      uint32_t count, const step_clip *clip, compute_pool *pool, session_commit_fn commit,
                      void *ctx, part_entry **entries, size_t *n_entries, part_result *res,
                      request_error *err);

/* Ends the pending step of (id->client, id->seq) as it stands, for a
 * client that cannot send its remaining parts: the ranges applied stay
 * applied, and the step counts as a complete one (step counts, scheduler,
 * seq) so that its parts are duplicates from now on. */
int session_abandon_step(session *s, const step_identity *id, session_commit_fn commit, void *ctx,
                         part_result *res, request_error *err);

/* A step request's optional `part: {index, count}`; *present false when
 * absent. BAD_REQUEST when malformed. */
int sliced_step_parse_part(const msgpack_object *req, bool *present, uint32_t *index, uint32_t *count,
                           request_error *err);

/* STEP_PENDING (returns -1) when the session has a pending sliced step:
 * `what` (e.g. "set_hparams") must wait for its last part. 0 otherwise. */
int session_refuse_if_pending(const session *s, const char *what, request_error *err);

/* Adds the session's pending step to an `info` reply as `pending_step`;
 * returns the number of pairs packed (0 or 1; pk NULL: just counts). */
uint32_t sliced_step_pack_info(msgpack_packer *pk, const session *s);

/* Whether an optimizer may be stepped in parts (it declares element-wise
 * updates and has no factored state). */
bool sliced_step_supported(const plugin *opt);

void sliced_step_free(sliced_step *st);

/* Snapshots (snapshot.c): the session's pending step as the manifest's
 * `,"pending_step":{...}` (nothing when there is none), and back. */
struct json_value;
void sliced_step_write_manifest(FILE *f, const session *s);
/* Rebuilds s->pending_step from the manifest's value, after the session's
 * parameters and slots are restored. -1 with `why` when it is malformed. */
int sliced_step_restore(session *s, const struct json_value *v, char *why, size_t why_cap);
/* Whether the manifest's pending step touched parameter `name` (its slots
 * exist even before its first complete step). */
bool sliced_step_manifest_touches(const struct json_value *v, const char *name);

#endif
