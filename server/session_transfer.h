/* Parameters moving between the sessions of one training run spread over
 * several daemons (a session resharded from N servers to M): one session
 * takes in the parameters of another's exported snapshot, or lets some of
 * its own go.
 *
 * Each move comes in halves so that the caller can write the session's
 * snapshot between them and keep the move all-or-nothing: `prepare` checks
 * and allocates everything (nothing changes when it fails), what follows
 * cannot fail, and an adoption can still be undone after it was applied.
 * The caller holds the session's lock throughout. */
#ifndef OPTIMD_SERVER_SESSION_TRANSFER_H
#define OPTIMD_SERVER_SESSION_TRANSFER_H

#include "session.h"

#include <stdbool.h>

typedef struct param_adoption {
    session *from;             /* the parsed snapshot; its parameters move */
    uint32_t *groups;          /* per parameter of `from`: its group's index in the taker */
    name_index index;          /* the taker's index with the newcomers; after apply, the old one */
    size_t first;              /* the taker's n_params before */
    uint64_t adding_bytes;     /* what the newcomers commit (session_param_cost) */
    bool applied;
} param_adoption;

/* Checks that the parameters of `from` can join `s`: the same optimizer
 * (id and version), step count and lookahead; each parameter's group
 * present in `s` with the same schedule, hyperparameters, base lr and lr;
 * no name already in `s` or twice in `from`; at most SESSION_MAX_PARAMS.
 * BAD_REQUEST (incompatible), PARAM_EXISTS, LIMIT or NOMEM otherwise. */
int session_adopt_prepare(session *s, session *from, param_adoption *a, request_error *err);
/* Appends them to `s` (after its own, in `from`'s order, with their state
 * and step counts). `from` still owns the buffers until adopt_end. */
void session_adopt_apply(session *s, param_adoption *a);
/* keep: the newcomers stay and `from` lets go of them; otherwise `s` is
 * as it was before apply (if there was one). Frees what prepare took. */
void session_adopt_end(session *s, param_adoption *a, bool keep);

typedef struct param_removal {
    const bool *keep;          /* per parameter of the session: false goes */
    name_index index;          /* the kept parameters' index, by their new positions */
} param_removal;

/* Builds what removing the parameters `keep` does not mark needs (NOMEM
 * only). */
int session_remove_prepare(const session *s, const bool *keep, param_removal *rm, request_error *err);
/* Frees those parameters and closes the gaps (the rest keep their
 * registration order). */
void session_remove_apply(session *s, param_removal *rm);
/* Instead of apply. */
void session_remove_cancel(param_removal *rm);

#endif
