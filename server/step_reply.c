/* A step's reply with the updated parameters written into it while the
 * step runs. The reply of a dense step of tens of megabytes used to cost
 * two more passes after the update: the daemon's scan of each updated
 * parameter for NaN and infinity, and the copy into the reply. Here the
 * reply's layout is written first, with a hole of the right size where
 * each parameter's bytes go, and the step's `updated` hook (session.h)
 * copies each parameter into its hole as soon as the plugin is done with
 * it, checking it in the same pass. What the client receives is the same
 * map as the one pack_step_reply writes, with `params` before the counters
 * (their values are known only after the step) and so a map32 header whose
 * count is filled in at the end: msgpack lets an encoder choose a longer
 * form, and every decoder reads it (docs/protocol.md, section 2). */
#include "request.h"

#include "finite.h"
#include "wire.h"

#include <optimd/protocol.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Where each parameter's bytes go in the reply. */
typedef struct reply_holes {
    compute_pool *pool;
    nng_msg *msg;
    size_t *offset;            /* by parameter index; SIZE_MAX: not in the reply */
    bool *filled;              /* by parameter index: the hook copied it */
} reply_holes;

bool step_reply_can_stream(const session *s, const msgpack_object *grads)
{
    /* Lookahead changes a parameter after the hook saw it; a row-sparse
     * gradient's reply holds only its rows. Unknown names fail the step. */
    if (s->lookahead_k || grads->type != MSGPACK_OBJECT_MAP || grads->via.map.size == 0) return false;
    for (uint32_t i = 0; i < grads->via.map.size; i++) {
        const msgpack_object_kv *kv = &grads->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR || kv->val.type != MSGPACK_OBJECT_MAP ||
            wire_map_get(&kv->val, "rows") ||
            session_find_param(s, kv->key.via.str.ptr, kv->key.via.str.size) < 0)
            return false;
    }
    return true;
}

/* step_extras.updated: the parameter goes into its hole, checked on the way. */
static bool copy_into_reply(void *ctx, const session *s, size_t index)
{
    reply_holes *h = ctx;
    const param *p = &s->params[index];
    size_t esize = wire_dtype_size(p->dtype);
    if (h->offset[index] == SIZE_MAX)
        return optimd_all_finite_parallel(h->pool, p->data, (size_t)p->numel, esize);
    unsigned char *dst = (unsigned char *)nng_msg_body(h->msg) + h->offset[index];
    h->filled[index] = true;
    return optimd_copy_finite_parallel(h->pool, dst, p->data, (size_t)p->numel, esize);
}

/* The envelope and the parameters' map with a hole for each one's bytes. */
static int lay_out(request *r, session *s, const msgpack_object *grads, reply_holes *h)
{
    size_t bytes = 512 + 64 * (size_t)s->n_groups;
    for (uint32_t i = 0; i < grads->via.map.size; i++) {
        const msgpack_object *key = &grads->via.map.ptr[i].key;
        int64_t idx = session_find_param(s, key->via.str.ptr, key->via.str.size);
        bytes += 384 + s->params[idx].nbytes;
    }
    nng_msg_reserve(r->w->msg, bytes);
    nng_msg *msg = r->w->msg;
    static const unsigned char map32[5] = {0xdf, 0, 0, 0, 0};
    if (nng_msg_append(msg, map32, sizeof map32) != 0) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    msgpack_packer *pk = &r->w->pk;
    wire_pack_str(pk, "v");
    msgpack_pack_int(pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(pk, "id");
    msgpack_pack_uint64(pk, r->id);
    wire_pack_str(pk, "ok");
    msgpack_pack_true(pk);
    wire_pack_str(pk, "params");
    msgpack_pack_map(pk, grads->via.map.size);
    for (uint32_t i = 0; i < grads->via.map.size; i++) {
        const msgpack_object *key = &grads->via.map.ptr[i].key;
        size_t idx = (size_t)session_find_param(s, key->via.str.ptr, key->via.str.size);
        const param *p = &s->params[idx];
        wire_pack_str(pk, s->names[idx]);
        msgpack_pack_map(pk, 3);
        wire_pack_str(pk, "dtype");
        wire_pack_str(pk, wire_dtype_name(p->dtype));
        wire_pack_str(pk, "shape");
        msgpack_pack_array(pk, p->ndim);
        for (uint32_t d = 0; d < p->ndim; d++) msgpack_pack_uint64(pk, (uint64_t)p->shape[d]);
        wire_pack_str(pk, "data");
        msgpack_pack_bin(pk, p->nbytes);
        if (r->w->failed) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory writing the reply");
        /* The hole: bytes the copy overwrites, never read before. */
        h->offset[idx] = nng_msg_len(msg);
        if (nng_msg_realloc(msg, h->offset[idx] + p->nbytes) != 0)
            return fail(&r->err, OPTIMD_E_NOMEM, "out of memory writing the reply");
    }
    h->msg = msg;
    return 0;
}

int step_streaming_reply(request *r, session *s, const msgpack_object *grads, const step_identity *id,
                         const step_clip *clip)
{
    reply_holes h = {.pool = r->srv->pool, .offset = malloc(s->n_params * sizeof *h.offset),
                     .filled = calloc(s->n_params, sizeof *h.filled)};
    int rc = 0;
    if (!h.offset || !h.filled) {
        rc = fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < s->n_params; i++) h.offset[i] = SIZE_MAX;
    if ((rc = lay_out(r, s, grads, &h)) != 0) goto out;
    step_extras extras = {.updated = copy_into_reply, .updated_ctx = &h};
    step_result res;
    store_change change = change_of(r);
    rc = session_step(s, grads, id, clip, &extras, r->srv->pool, store_log_change, &change, &res, &r->err);
    if (rc != 0) goto out;   /* the error reply replaces what was laid out */
    if (!res.duplicate) store_compact_if_large(&r->srv->store, s);
    /* A duplicate applies nothing and so calls no hook: its reply is the
     * parameters as they stand. */
    unsigned char *body = nng_msg_body(h.msg);
    for (size_t i = 0; i < s->n_params; i++)
        if (h.offset[i] != SIZE_MAX && !h.filled[i] && s->params[i].nbytes)
            memcpy(body + h.offset[i], s->params[i].data, s->params[i].nbytes);
    uint32_t pairs = 4 + pack_step_counter_pairs(&r->w->pk, s, &res, clip);
    body = nng_msg_body(h.msg);
    body[1] = (unsigned char)(pairs >> 24);
    body[2] = (unsigned char)(pairs >> 16);
    body[3] = (unsigned char)(pairs >> 8);
    body[4] = (unsigned char)pairs;
out:
    free(h.offset);
    free(h.filled);
    return rc;
}
