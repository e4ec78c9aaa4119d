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

/* ---- the request's own buffer as the reply ----------------------------
 *
 * Better than a fresh reply buffer (NNG zero-fills every buffer it
 * allocates, 40 MB for a 10M-parameter step) is none: a dense step's reply
 * has the request's shape, each parameter's bytes where its gradient was,
 * so each updated parameter is written over its own gradient once the
 * plugin is done with it, the msgpack between the tensors is rewritten in
 * the gaps between them once the step no longer reads the request, the
 * envelope and the counters go where the request had its envelope (the
 * message's front is trimmed to fit), whatever followed the last tensor is
 * cut, and the request's message goes back as the reply. Each later
 * tensor's map must fill its gap exactly, which non-minimal msgpack forms
 * or a `pad` key make it do. Whatever does not fit falls back to a fresh
 * buffer, before anything of the request was overwritten but gradients
 * the step had already consumed. */

/* Bytes written into memory, or only counted (p NULL). */
typedef struct span {
    unsigned char *p;
    size_t len;
} span;

static void put(span *b, const void *bytes, size_t n)
{
    if (b->p && n) memcpy(b->p + b->len, bytes, n);
    b->len += n;
}

static void put_byte(span *b, unsigned v)
{
    unsigned char c = (unsigned char)v;
    put(b, &c, 1);
}

static void put_be(span *b, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) put_byte(b, (unsigned)(v >> (8 * i)) & 0xff);
}

/* A str in its shortest form or, `wide`, at least a str8 (one byte more
 * than a fixstr). */
static void put_str(span *b, const char *str, size_t n, bool wide)
{
    if (n < 32 && !wide) put_byte(b, 0xa0 | (unsigned)n);
    else if (n < 256) put_byte(b, 0xd9), put_be(b, n, 1);
    else if (n < 65536) put_byte(b, 0xda), put_be(b, n, 2);
    else put_byte(b, 0xdb), put_be(b, n, 4);
    put(b, str, n);
}

static void put_uint(span *b, uint64_t v)
{
    if (v < 128) put_byte(b, (unsigned)v);
    else if (v < 256) put_byte(b, 0xcc), put_be(b, v, 1);
    else if (v < 65536) put_byte(b, 0xcd), put_be(b, v, 2);
    else if (v < 4294967296ull) put_byte(b, 0xce), put_be(b, v, 4);
    else put_byte(b, 0xcf), put_be(b, v, 8);
}

/* A bin header of `size` bytes (2: bin8, 3: bin16, 5: bin32; 0: the
 * shortest that holds n). */
static void put_bin_header(span *b, size_t n, int size)
{
    if (!size) size = n < 256 ? 2 : n < 65536 ? 3 : 5;
    put_byte(b, size == 2 ? 0xc4 : size == 3 ? 0xc5 : 0xc6);
    put_be(b, n, size - 1);
}

/* One parameter's entry in `params` up to its bytes: its name, then
 * {dtype, shape, [pad,] data} up to data's bin header, `slack` bytes
 * longer than the shortest form: 1 to 4 by writing that many of the four
 * fixstr ("dtype", its value, "shape", "data") as str8, 5 by a map16
 * header and three of them, 6 or more by a pad of zeros. */
static void put_entry(span *b, const session *s, size_t idx, size_t slack)
{
    const param *p = &s->params[idx];
    size_t wide = slack <= 4 ? slack : slack == 5 ? 3 : 0;
    bool map16 = slack == 5, pad = slack >= 6;
    put_str(b, s->names[idx], strlen(s->names[idx]), false);
    if (map16) put_byte(b, 0xde), put_be(b, 3, 2);
    else put_byte(b, 0x80 | (pad ? 4u : 3u));
    put_str(b, "dtype", 5, wide > 0);
    put_str(b, wire_dtype_name(p->dtype), 3, wide > 1);
    put_str(b, "shape", 5, wide > 2);
    put_byte(b, 0x90 | p->ndim);               /* at most 8 dimensions */
    for (uint32_t d = 0; d < p->ndim; d++) put_uint(b, (uint64_t)p->shape[d]);
    if (pad) {
        /* "pad" (4 bytes), a bin header of 2, 3 or 5 bytes, zeros. */
        int header = slack - 6 < 256 ? 2 : slack - 7 < 65536 ? 3 : 5;
        size_t zeros = slack - 4 - (size_t)header;
        put_str(b, "pad", 3, false);
        put_bin_header(b, zeros, header);
        static const unsigned char nothing[256];
        for (size_t at = 0; at < zeros; at += sizeof nothing)
            put(b, nothing, zeros - at < sizeof nothing ? zeros - at : sizeof nothing);
    }
    put_str(b, "data", 4, wide > 3);
    put_bin_header(b, p->nbytes, 0);
}

static size_t entry_length(const session *s, size_t idx)
{
    span b = {0};
    put_entry(&b, s, idx, 0);
    return b.len;
}

/* The start of a step reply: a map32 header whose count set_pair_count
 * fills in once the keys are known, then v, id and ok. */
static void begin_envelope(wire_writer *w, uint64_t id)
{
    static const unsigned char map32[5] = {0xdf, 0, 0, 0, 0};
    if (nng_msg_append(w->msg, map32, sizeof map32) != 0) w->failed = 1;
    wire_pack_str(&w->pk, "v");
    msgpack_pack_int(&w->pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(&w->pk, "id");
    msgpack_pack_uint64(&w->pk, id);
    wire_pack_str(&w->pk, "ok");
    msgpack_pack_true(&w->pk);
}

/* `envelope` points at begin_envelope's map32 header. */
static void set_pair_count(unsigned char *envelope, uint32_t pairs)
{
    envelope[1] = (unsigned char)(pairs >> 24);
    envelope[2] = (unsigned char)(pairs >> 16);
    envelope[3] = (unsigned char)(pairs >> 8);
    envelope[4] = (unsigned char)pairs;
}

/* A fresh reply: the envelope and the parameters' map with a hole for each
 * one's bytes; the counters follow after the step. */
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
    begin_envelope(r->w, r->id);
    wire_pack_str(&r->w->pk, "params");
    msgpack_pack_map(&r->w->pk, grads->via.map.size);
    if (r->w->failed) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory writing the reply");
    for (uint32_t i = 0; i < grads->via.map.size; i++) {
        const msgpack_object *key = &grads->via.map.ptr[i].key;
        size_t idx = (size_t)session_find_param(s, key->via.str.ptr, key->via.str.size);
        size_t at = nng_msg_len(msg), len = entry_length(s, idx);
        /* The entry, then the hole: bytes the copy overwrites, never read
         * before. */
        if (nng_msg_realloc(msg, at + len + s->params[idx].nbytes) != 0)
            return fail(&r->err, OPTIMD_E_NOMEM, "out of memory writing the reply");
        span entry = {(unsigned char *)nng_msg_body(msg) + at, 0};
        put_entry(&entry, s, idx, 0);
        h->offset[idx] = at + len;
    }
    h->msg = msg;
    return 0;
}

/* Where the request's gradients lie. */
typedef struct in_place {
    uint32_t n;
    size_t *param;             /* by request entry: the parameter's index */
    size_t *at;                /* by request entry: its gradient's offset in the body */
} in_place;

/* The counters of a one-group step without clipping take at most this
 * many bytes; more groups or a norm make the fit a question for later. */
#define COUNTERS_MIN 55

/* Whether the reply can be the request: every gradient where its
 * parameter's bytes go, every later entry's map fitting its gap, and the
 * front likely to hold the envelope and counters. */
static bool plan_in_place(request *r, const session *s, const msgpack_object *grads, in_place *ip)
{
    const unsigned char *body = nng_msg_body(r->request_msg);
    size_t end = 0;
    if (grads->via.map.size == 0) return false;
    for (uint32_t i = 0; i < grads->via.map.size; i++) {
        const msgpack_object_kv *kv = &grads->via.map.ptr[i];
        wire_tensor g;
        request_error ignored = {0};
        if (wire_decode_tensor(&kv->val, "", &g, &ignored) != 0) return false;   /* the step says why */
        size_t idx = (size_t)session_find_param(s, kv->key.via.str.ptr, kv->key.via.str.size);
        if (g.nbytes != s->params[idx].nbytes || g.nbytes == 0) return false;
        size_t at = (size_t)((const unsigned char *)g.data - body);
        if (at < end || (i > 0 && at - end < entry_length(s, idx))) return false;
        ip->param[i] = idx;
        ip->at[i] = at;
        end = at + g.nbytes;
    }
    ip->n = grads->via.map.size;
    /* map32, v, id (uint64), ok, the counters, params and a map32 header. */
    size_t front = 5 + 3 + 9 + 3 + 1 + COUNTERS_MIN + 7 + 5 + entry_length(s, ip->param[0]);
    return front <= ip->at[0];
}

/* After a successful step: the reply over the request's bytes. Returns 1
 * (nothing of the request but the consumed gradients touched) when the
 * front turns out too small for the envelope and counters. */
static int finish_in_place(request *r, const session *s, const in_place *ip, const step_result *res,
                           const step_clip *clip)
{
    nng_msg *head;
    if (nng_msg_alloc(&head, 0) != 0) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    wire_writer front;
    wire_writer_init(&front, head);
    begin_envelope(&front, r->id);
    uint32_t pairs = 4 + pack_step_counter_pairs(&front.pk, s, res, clip);
    wire_pack_str(&front.pk, "params");
    msgpack_pack_map(&front.pk, ip->n);
    size_t len = nng_msg_len(head) + entry_length(s, ip->param[0]);
    if (front.failed || len > ip->at[0]) {
        nng_msg_free(head);
        return front.failed ? fail(&r->err, OPTIMD_E_NOMEM, "out of memory") : 1;
    }
    nng_msg *msg = r->request_msg;
    unsigned char *body = nng_msg_body(msg);
    for (uint32_t i = 1; i < ip->n; i++) {
        size_t gap = ip->at[i - 1] + s->params[ip->param[i - 1]].nbytes;
        span b = {body + gap, 0};
        put_entry(&b, s, ip->param[i], ip->at[i] - gap - entry_length(s, ip->param[i]));
    }
    size_t start = ip->at[0] - len;
    memcpy(body + start, nng_msg_body(head), nng_msg_len(head));
    span b = {body + start + nng_msg_len(head), 0};
    put_entry(&b, s, ip->param[0], 0);
    set_pair_count(body + start, pairs);
    nng_msg_free(head);
    size_t end = ip->at[ip->n - 1] + s->params[ip->param[ip->n - 1]].nbytes;
    nng_msg_chop(msg, nng_msg_len(msg) - end);
    nng_msg_trim(msg, start);
    nng_msg_header_clear(msg);
    /* The request's message is the reply now. */
    nng_msg_free(r->w->msg);
    r->w->msg = msg;
    r->request_msg = NULL;
    return 0;
}

int step_streaming_reply(request *r, session *s, const msgpack_object *grads, const step_identity *id,
                         const step_clip *clip)
{
    reply_holes h = {.pool = r->srv->pool, .offset = malloc(s->n_params * sizeof *h.offset),
                     .filled = calloc(s->n_params, sizeof *h.filled)};
    in_place ip = {.param = malloc(grads->via.map.size * sizeof *ip.param),
                   .at = malloc(grads->via.map.size * sizeof *ip.at)};
    int rc = 0;
    if (!h.offset || !h.filled || !ip.param || !ip.at) {
        rc = fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < s->n_params; i++) h.offset[i] = SIZE_MAX;
    bool over_request = r->request_msg && plan_in_place(r, s, grads, &ip);
    if (over_request) {
        h.msg = r->request_msg;
        for (uint32_t i = 0; i < ip.n; i++) h.offset[ip.param[i]] = ip.at[i];
    } else if ((rc = lay_out(r, s, grads, &h)) != 0) {
        goto out;
    }
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
    if (over_request) {
        rc = finish_in_place(r, s, &ip, &res, clip);
        if (rc == 1) {
            rc = 0;
            pack_step_reply(r, s, grads, true, clip, &res, 0);
        }
        goto out;
    }
    uint32_t pairs = 4 + pack_step_counter_pairs(&r->w->pk, s, &res, clip);
    set_pair_count(nng_msg_body(h.msg), pairs);
out:
    free(h.offset);
    free(h.filled);
    free(ip.param);
    free(ip.at);
    return rc;
}
