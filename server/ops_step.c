/* The step and what reads a session's tensors: step, pull, state. */
#include "request.h"

#include "connections.h"
#include "hparams.h"
#include "log.h"
#include "metrics.h"
#include "session_transfer.h"
#include "shm_attachment.h"
#include "sliced_step.h"
#include "snapshot.h"
#include "transport.h"
#include "workers.h"
#include "wire.h"

#include <optimd/protocol.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

/* The keys every step reply has (steps, lr, next_lr, duplicate) and, where
 * they apply, the per-group lrs and the gradient norm(s); returns how many
 * pairs it packed. */
uint32_t pack_step_counter_pairs(msgpack_packer *pk, const session *s, const step_result *res,
                                 const step_clip *clip)
{
    /* Per-group lrs only where there is more than one group, and the
     * norm only where the step clipped by norm (duplicates: neither). */
    bool group_lrs = s->n_groups > 1 && !res->duplicate;
    bool norm = clip->max_norm > 0 && !res->duplicate;
    wire_pack_str(pk, "steps");
    msgpack_pack_uint64(pk, res->steps);
    wire_pack_str(pk, "lr");
    msgpack_pack_double(pk, res->lr);
    wire_pack_str(pk, "next_lr");
    msgpack_pack_double(pk, res->next_lr);
    wire_pack_str(pk, "duplicate");
    if (res->duplicate) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    for (int which = 0; group_lrs && which < 2; which++) {
        wire_pack_str(pk, which ? "next_lrs" : "lrs");
        msgpack_pack_map(pk, s->n_groups);
        for (uint32_t gi = 0; gi < s->n_groups; gi++) {
            wire_pack_str(pk, s->groups[gi].name);
            msgpack_pack_double(pk, which ? res->next_lrs[gi] : res->lrs[gi]);
        }
    }
    if (norm && clip->per_group) {
        uint32_t clipped = 0;
        for (uint32_t gi = 0; gi < s->n_groups; gi++) clipped += res->group_clipped[gi];
        wire_pack_str(pk, "grad_norms");
        msgpack_pack_map(pk, clipped);
        for (uint32_t gi = 0; gi < s->n_groups; gi++) {
            if (!res->group_clipped[gi]) continue;
            wire_pack_str(pk, s->groups[gi].name);
            msgpack_pack_double(pk, res->group_norms[gi]);
        }
    } else if (norm) {
        wire_pack_str(pk, "grad_norm");
        msgpack_pack_double(pk, res->grad_norm);
    }
    return 4 + 2 * group_lrs + norm;
}

/* The success reply of a step up to its own keys (`extra` of them, packed
 * by the caller next). */
msgpack_packer *pack_step_counters(request *r, const session *s, const step_result *res,
                                   const step_clip *clip, uint32_t extra)
{
    bool group_lrs = s->n_groups > 1 && !res->duplicate;
    bool norm = clip->max_norm > 0 && !res->duplicate;
    msgpack_packer *pk = reply_begin(r, 4 + extra + 2 * group_lrs + norm);
    pack_step_counter_pairs(pk, s, res, clip);
    return pk;
}

/* A step's reply: the counters, the parameters `grads` named (want_params),
 * then `extra` pairs the caller packs. */
void pack_step_reply(request *r, session *s, const msgpack_object *grads, bool want_params,
                     const step_clip *clip, const step_result *res, uint32_t extra)
{
    if (want_params) {
        size_t bytes = 256 + 64 * (size_t)s->n_groups;
        for (uint32_t i = 0; i < grads->via.map.size; i++) {
            const msgpack_object_kv *kv = &grads->via.map.ptr[i];
            int64_t idx = session_find_param(s, kv->key.via.str.ptr, kv->key.via.str.size);
            if (idx < 0 || s->params[idx].mark != s->request_serial) continue;
            const param *p = &s->params[idx];
            const msgpack_object *rows = kv->val.type == MSGPACK_OBJECT_MAP ? wire_map_get(&kv->val, "rows") : NULL;
            /* A row-sparse entry returns at most its rows (9 bytes an index). */
            size_t n = rows && rows->type == MSGPACK_OBJECT_ARRAY ? rows->via.array.size : 0;
            bytes += 384 + (rows ? n * (9 + (p->shape[0] ? p->nbytes / (size_t)p->shape[0] : 0)) : p->nbytes);
        }
        nng_msg_reserve(r->w->msg, bytes);
    }
    msgpack_packer *pk = pack_step_counters(r, s, res, clip, want_params + extra);
    if (want_params) {
        uint32_t n_marked = 0;
        for (size_t i = 0; i < s->n_params; i++) n_marked += s->params[i].mark == s->request_serial;
        wire_pack_str(pk, "params");
        msgpack_pack_map(pk, n_marked);
        /* In the request's order; a row-sparse gradient's parameter
         * comes back as the rows it named. */
        for (uint32_t i = 0; i < grads->via.map.size; i++) {
            const msgpack_object_kv *kv = &grads->via.map.ptr[i];
            int64_t idx = session_find_param(s, kv->key.via.str.ptr, kv->key.via.str.size);
            if (idx < 0 || s->params[idx].mark != s->request_serial) continue;
            if (kv->val.type == MSGPACK_OBJECT_MAP && wire_map_get(&kv->val, "rows"))
                pack_param_rows(pk, s, (size_t)idx, wire_map_get(&kv->val, "rows"));
            else
                pack_param(pk, s, (size_t)idx);
        }
    }
}

/* The step itself, for a session without workers or a worker's push that
 * applies at once. */
int apply_step(request *r, session *s, const msgpack_object *grads, const step_identity *id,
               const step_clip *clip, step_result *res)
{
    store_change change = change_of(r);
    int rc = session_step(s, grads, id, clip, NULL, r->srv->pool, store_log_change, &change, res, &r->err);
    if (rc == 0 && !res->duplicate) store_compact_if_large(&r->srv->store, s);
    return rc;
}

/* One part of a sliced step and its reply: the counters, `complete`,
 * `parts`, and each range the part carried with its new values. */
static int step_part(request *r, session *s, const msgpack_object *grads, bool want_params,
                     const step_identity *id, const step_clip *clip, uint32_t index, uint32_t count)
{
    store_change change = change_of(r);
    part_entry *entries;
    size_t n;
    part_result res;
    if (session_step_part(s, grads, id, index, count, clip, r->srv->pool, store_log_change, &change, &entries,
                          &n, &res, &r->err))
        return -1;
    if (res.complete && !res.step.duplicate) store_compact_if_large(&r->srv->store, s);
    if (want_params) {
        size_t bytes = 256 + 64 * (size_t)s->n_groups;
        for (size_t i = 0; i < n; i++)
            bytes += 384 + (size_t)entries[i].count * wire_dtype_size(s->params[entries[i].index].dtype);
        nng_msg_reserve(r->w->msg, bytes);
    }
    msgpack_packer *pk = pack_step_counters(r, s, &res.step, clip, 2 + want_params);
    wire_pack_str(pk, "complete");
    if (res.complete) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    wire_pack_str(pk, "parts");
    msgpack_pack_uint32(pk, res.parts);
    if (want_params) {
        wire_pack_str(pk, "params");
        msgpack_pack_map(pk, (uint32_t)n);
        for (size_t i = 0; i < n; i++) {
            const param *p = &s->params[entries[i].index];
            size_t esize = wire_dtype_size(p->dtype);
            int64_t shape[1] = {entries[i].count};
            wire_pack_str(pk, s->names[entries[i].index]);
            msgpack_pack_map(pk, 2);
            wire_pack_str(pk, "offset");
            msgpack_pack_uint64(pk, (uint64_t)entries[i].offset);
            wire_pack_str(pk, "values");
            wire_pack_tensor(pk, p->dtype, 1, shape, (const char *)p->data + (size_t)entries[i].offset * esize,
                             (size_t)entries[i].count * esize);
        }
    }
    free(entries);
    return 0;
}

int op_abandon_step(request *r)
{
    step_identity id = {"", 0, 0};
    if (wire_get_uint(r->root, "seq", true, &id.seq, &r->err) ||
        wire_get_str(r->root, "client", false, &id.client, &id.client_len, &r->err))
        return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    store_change change = change_of(r);
    part_result res;
    int rc = session_abandon_step(s, &id, store_log_change, &change, &res, &r->err);
    if (rc == 0) {
        step_clip none = {0};
        msgpack_packer *pk = pack_step_counters(r, s, &res.step, &none, 1);
        wire_pack_str(pk, "parts");
        msgpack_pack_uint32(pk, res.parts);
    }
    session_unlock(s);
    session_unref(s);
    return rc;
}

int op_step(request *r)
{
    const msgpack_object *grads;
    bool want_params = true;
    step_identity id = {"", 0, 0};
    step_clip clip;
    if (wire_get_map(r->root, "grads", true, &grads, &r->err) || check_tensor_count(r, grads, "grads") ||
        wire_get_bool(r->root, "return", false, &want_params, &r->err) ||
        wire_get_uint(r->root, "seq", false, &id.seq, &r->err) ||
        wire_get_str(r->root, "client", false, &id.client, &id.client_len, &r->err) ||
        step_clip_parse(r->root, &clip, &r->err))
        return -1;
    bool sliced;
    uint32_t part_index = 0, part_count = 0;
    if (sliced_step_parse_part(r->root, &sliced, &part_index, &part_count, &r->err)) return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    /* Between two steps: move to plugin versions loaded since the last. */
    if (session_follow_upgrades(s, &r->srv->plugins, &r->err) > 0 && store_save_locked(&r->srv->store, s) != 0)
        log_error("session %s: cannot snapshot it after a plugin upgrade", s->name);
    int rc;
    if (sliced && s->workers) {
        rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "session '%s' has workers: its steps cannot be sent in parts",
                  s->name);
    } else if (sliced) {
        rc = step_part(r, s, grads, want_params, &id, &clip, part_index, part_count);
    } else if (s->workers) {
        rc = worker_push(r, s, grads, want_params, &id, &clip);
    } else if (wire_map_get(r->root, "worker")) {
        rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "session '%s' has no workers: a step names no 'worker'", s->name);
    } else if (want_params && !s->pending_step && step_reply_can_stream(s, grads)) {
        rc = step_streaming_reply(r, s, grads, &id, &clip);
    } else {
        step_result res;
        rc = apply_step(r, s, grads, &id, &clip, &res);
        if (rc == 0) pack_step_reply(r, s, grads, want_params, &clip, &res, 0);
    }
    session_unlock(s);
    session_unref(s);
    return rc;
}

int op_pull(request *r)
{
    const char *wname = NULL;
    size_t wlen = 0;
    if (wire_get_str(r->root, "worker", false, &wname, &wlen, &r->err)) return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    size_t *idx = NULL, count = 0;
    int rc = resolve_names(r, s, &idx, &count);
    /* A worker's pull: its parameters are now this fresh (staleness). */
    worker *w = wname && s->workers ? worker_find(s->workers, wname, wlen) : NULL;
    if (rc == 0 && wname && !w)
        rc = fail(&r->err, OPTIMD_E_UNKNOWN_WORKER, "no worker '%.*s' in session '%s'",
                  (int)(wlen > WORKER_NAME_MAX ? WORKER_NAME_MAX : wlen), wname, s->name);
    if (rc == 0 && w) w->seen_steps = s->steps;
    if (rc == 0) {
        size_t bytes = 256;
        for (size_t i = 0; i < count; i++) bytes += 384 + s->params[idx[i]].nbytes;
        nng_msg_reserve(r->w->msg, bytes);
        msgpack_packer *pk = reply_begin(r, 1);
        wire_pack_str(pk, "params");
        msgpack_pack_map(pk, (uint32_t)count);
        for (size_t i = 0; i < count; i++) pack_param(pk, s, idx[i]);
    }
    free(idx);
    session_unlock(s);
    session_unref(s);
    return rc;
}

/* The optimizer state of the selected parameters: every slot allocated so
 * far (a parameter that never stepped has none), by slot key. */
int op_state(request *r)
{
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    size_t *idx = NULL, count = 0;
    int rc = resolve_names(r, s, &idx, &count);
    if (rc == 0) {
        const optimd_optimizer *o = s->opt->desc->optimizer;
        msgpack_packer *pk = reply_begin(r, 1);
        wire_pack_str(pk, "state");
        msgpack_pack_map(pk, (uint32_t)count);
        for (size_t i = 0; i < count; i++) {
            const param *p = &s->params[idx[i]];
            uint32_t n_slots = p->slow != NULL;
            for (uint32_t k = 0; p->slots && k < o->n_slots; k++) n_slots += p->slots[k] != NULL;
            wire_pack_str(pk, s->names[idx[i]]);
            msgpack_pack_map(pk, n_slots);
            if (p->slow) {
                wire_pack_str(pk, "lookahead_slow");
                wire_pack_tensor(pk, p->dtype, p->ndim, p->shape, p->slow, p->nbytes);
            }
            for (uint32_t k = 0; p->slots && k < o->n_slots; k++) {
                if (!p->slots[k]) continue;
                slot_layout l;
                session_slot_layout(s, p, k, &l);
                wire_pack_str(pk, o->slots[k].key);
                wire_pack_tensor(pk, l.dtype, l.ndim, l.shape, p->slots[k], l.nbytes);
            }
        }
    }
    free(idx);
    session_unlock(s);
    session_unref(s);
    return rc;
}
