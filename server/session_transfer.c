#include "session_transfer.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* What makes a group of `from` a different group from `s`'s of the same
 * name, or NULL. Parameters of one run agree on all of it; a mismatch means
 * the snapshot comes from another run or from another point of this one,
 * and adopting it would silently change how those parameters train. */
static const char *group_difference(const session *s, const param_group *g, const session *from,
                                    const param_group *h)
{
    if (g->combine != h->combine || g->n_parts != h->n_parts || (g->sched == NULL) != (h->sched == NULL) ||
        (g->sched && strcmp(g->sched->desc->id, h->sched->desc->id) != 0))
        return "its scheduler";
    for (uint32_t k = 0; k < g->n_parts; k++)
        if (strcmp(g->parts[k]->desc->id, h->parts[k]->desc->id) != 0 ||
            (k + 1 < g->n_parts && g->milestones[k] != h->milestones[k]))
            return "its combined schedule";
    for (uint32_t k = 0; k < s->opt->n_hparams; k++)
        if (g->hp[k] != h->hp[k]) return "its hyperparameters";
    for (uint32_t k = 0; g->sched && k < g->sched->n_hparams; k++)
        if (g->sched_hp[k] != h->sched_hp[k]) return "its scheduler's hyperparameters";
    for (uint32_t k = 0; g->sched && k < g->sched->n_sched_state; k++)
        if (memcmp(&g->sched_state[k], &h->sched_state[k], sizeof g->sched_state[k]) != 0)
            return "its scheduler's state";
    if (g->base_lr != h->base_lr || g->lr != h->lr || g->observed != h->observed) return "its lr";
    (void)from;
    return NULL;
}

static int check_compatible(const session *s, const session *from, request_error *err)
{
    const optimd_plugin_desc *mine = s->opt->desc, *theirs = from->opt->desc;
    if (strcmp(mine->id, theirs->id) != 0 || strcmp(mine->version, theirs->version) != 0)
        return fail(err, OPTIMD_E_BAD_REQUEST, "the snapshot's optimizer is %s %s; session '%s' runs %s %s",
                    theirs->id, theirs->version, s->name, mine->id, mine->version);
    if (from->steps != s->steps)
        return fail(err, OPTIMD_E_BAD_REQUEST,
                    "the snapshot was taken at step %" PRIu64 "; session '%s' is at step %" PRIu64, from->steps,
                    s->name, s->steps);
    if (from->lookahead_k != s->lookahead_k || (s->lookahead_k && from->lookahead_alpha != s->lookahead_alpha))
        return fail(err, OPTIMD_E_BAD_REQUEST, "the snapshot's lookahead differs from session '%s''s", s->name);
    if (s->n_params + from->n_params > SESSION_MAX_PARAMS)
        return fail(err, OPTIMD_E_LIMIT, "a session holds at most %d parameters", SESSION_MAX_PARAMS);
    return 0;
}

/* Room for `more` parameters; growing an array early is harmless if the
 * adoption is then refused. */
static int reserve(session *s, size_t more)
{
    size_t need = s->n_params + more;
    if (need <= s->cap_params) return 0;
    param *ps = realloc(s->params, need * sizeof *ps);
    if (ps) s->params = ps;
    char **names = ps ? realloc(s->names, need * sizeof *names) : NULL;
    if (names) s->names = names;
    if (!ps || !names) return -1;
    s->cap_params = need;
    return 0;
}

int session_adopt_prepare(session *s, session *from, param_adoption *a, request_error *err)
{
    memset(a, 0, sizeof *a);
    a->from = from;
    a->first = s->n_params;
    name_index_init(&a->index);
    if (check_compatible(s, from, err)) return -1;
    a->groups = malloc((from->n_params ? from->n_params : 1) * sizeof *a->groups);
    if (!a->groups) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    for (size_t i = 0; i < from->n_params; i++) {
        const char *name = from->names[i];
        size_t len = strlen(name);
        const param_group *h = &from->groups[from->params[i].group];
        int gi = session_find_group(s, h->name, strlen(h->name));
        const char *diff = gi < 0 ? NULL : group_difference(s, &s->groups[gi], from, h);
        int rc = 0;
        if (session_find_param(s, name, len) >= 0)
            rc = fail(err, OPTIMD_E_PARAM_EXISTS, "parameter '%s' is already in session '%s'", name, s->name);
        else if (session_find_param(from, name, len) != (int64_t)i)
            rc = fail(err, OPTIMD_E_BAD_REQUEST, "the snapshot holds parameter '%s' twice", name);
        else if (gi < 0)
            rc = fail(err, OPTIMD_E_BAD_REQUEST, "parameter '%s' is in group '%s', which session '%s' lacks", name,
                      h->name, s->name);
        else if (diff)
            rc = fail(err, OPTIMD_E_BAD_REQUEST, "group '%s' of the snapshot differs from session '%s''s in %s",
                      h->name, s->name, diff);
        if (rc) {
            free(a->groups);
            a->groups = NULL;
            return rc;
        }
        a->groups[i] = (uint32_t)gi;
        a->adding_bytes += session_param_cost(s, from->params[i].nbytes);
    }
    /* The new index is built beside the old one so that apply cannot fail
     * and undoing it is a swap back. The newcomers' names are put where
     * apply will put them (past n_params, so nothing sees them yet). */
    if (reserve(s, from->n_params)) goto nomem;
    for (size_t i = 0; i < from->n_params; i++) s->names[a->first + i] = from->names[i];
    for (size_t i = 0; i < a->first + from->n_params; i++)
        if (name_index_insert(&a->index, (const char *const *)s->names, (uint32_t)i)) goto nomem;
    return 0;
nomem:
    name_index_free(&a->index);
    free(a->groups);
    a->groups = NULL;
    return fail(err, OPTIMD_E_NOMEM, "out of memory adding parameters");
}

void session_adopt_apply(session *s, param_adoption *a)
{
    session *from = a->from;
    for (size_t i = 0; i < from->n_params; i++) {
        param *p = &s->params[a->first + i];
        *p = from->params[i];
        p->group = a->groups[i];
        p->mark = 0;
        s->names[a->first + i] = from->names[i];
    }
    s->n_params = a->first + from->n_params;
    name_index old = s->index;
    s->index = a->index;
    a->index = old;
    atomic_fetch_add(&s->committed_bytes, a->adding_bytes);
    a->applied = true;
}

void session_adopt_end(session *s, param_adoption *a, bool keep)
{
    session *from = a->from;
    if (a->applied && keep) {
        /* The buffers belong to `s` now: `from` must not free them. */
        for (size_t i = 0; i < from->n_params; i++) {
            param *p = &from->params[i];
            p->data = NULL;
            p->slots = NULL;
            p->slow = NULL;
            from->names[i] = NULL;
        }
    } else if (a->applied) {
        s->n_params = a->first;
        name_index newer = s->index;
        s->index = a->index;
        a->index = newer;
        atomic_fetch_sub(&s->committed_bytes, a->adding_bytes);
    }
    name_index_free(&a->index);
    free(a->groups);
    a->groups = NULL;
    a->applied = false;
}

int session_remove_prepare(const session *s, const bool *keep, param_removal *rm, request_error *err)
{
    rm->keep = keep;
    name_index_init(&rm->index);
    const char **kept = malloc((s->n_params ? s->n_params : 1) * sizeof *kept);
    if (!kept) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    uint32_t n = 0;
    for (size_t i = 0; i < s->n_params; i++) {
        if (!keep[i]) continue;
        kept[n] = s->names[i];
        if (name_index_insert(&rm->index, kept, n)) {
            free(kept);
            name_index_free(&rm->index);
            return fail(err, OPTIMD_E_NOMEM, "out of memory");
        }
        n++;
    }
    free(kept);
    return 0;
}

void session_remove_apply(session *s, param_removal *rm)
{
    size_t w = 0;
    for (size_t i = 0; i < s->n_params; i++) {
        if (!rm->keep[i]) {
            atomic_fetch_sub(&s->committed_bytes, session_param_cost(s, s->params[i].nbytes));
            session_release_param(s, &s->params[i]);
            free(s->names[i]);
            continue;
        }
        s->params[w] = s->params[i];
        s->names[w] = s->names[i];
        w++;
    }
    s->n_params = w;
    name_index_free(&s->index);
    s->index = rm->index;
    name_index_init(&rm->index);
}

void session_remove_cancel(param_removal *rm) { name_index_free(&rm->index); }
