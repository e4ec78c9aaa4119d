/*
 * Sliced steps from the C client (docs/protocol.md, `step`): the cut of a
 * step's gradients into parts, each part's request, and the updated
 * parameters put back together from the parts' replies.
 */
#include "client_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARTS 65536u               /* protocol.md: `part` count */

/* Elements [offset, offset + count) of one gradient, in one part; `whole`
 * when they are all of it (sent as the tensor itself). */
typedef struct piece {
    size_t grad;
    uint64_t offset, count;
    bool whole;
} piece;

typedef struct req_part {
    const optimd_named_tensor *grads;
    const piece *pieces;
    size_t n_pieces;
    uint32_t index, count;
    uint64_t seq;
    const char *client;
    bool ret;
    double clip_value;
} req_part;

static uint64_t numel(const optimd_named_tensor *t)
{
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n;
}

/* The gradients in order, cut into consecutive parts of `size` elements
 * (the last may be shorter); parts[i] is the index of part i's first
 * piece, parts[n_parts] the number of pieces. */
static int cut(const optimd_named_tensor *grads, size_t n_grads, uint64_t size,
               piece **pieces_out, size_t **parts_out, size_t *n_parts_out)
{
    size_t cap = n_grads + 1, n = 0, n_parts = 0, cap_parts = 16;
    piece *pieces = malloc(cap * sizeof *pieces);
    size_t *parts = malloc(cap_parts * sizeof *parts);
    if (!pieces || !parts) goto nomem;
    parts[n_parts++] = 0;
    uint64_t room = size;
    for (size_t g = 0; g < n_grads; g++) {
        uint64_t total = numel(&grads[g]), off = 0;
        do {
            if (room == 0) {
                if (n_parts + 1 >= cap_parts) {
                    size_t *grown = realloc(parts, 2 * cap_parts * sizeof *parts);
                    if (!grown) goto nomem;
                    parts = grown;
                    cap_parts *= 2;
                }
                parts[n_parts++] = n;
                room = size;
            }
            uint64_t take = total - off < room ? total - off : room;
            if (n == cap) {
                piece *grown = realloc(pieces, 2 * cap * sizeof *pieces);
                if (!grown) goto nomem;
                pieces = grown;
                cap *= 2;
            }
            pieces[n++] = (piece){g, off, take, off == 0 && take == total};
            off += take;
            room -= take;
        } while (off < total);
    }
    parts[n_parts] = n;
    *pieces_out = pieces;
    *parts_out = parts;
    *n_parts_out = n_parts;
    return 0;
nomem:
    free(pieces);
    free(parts);
    return -1;
}

static void pack_part(msgpack_packer *pk, const void *arg)
{
    const req_part *a = arg;
    wire_pack_str(pk, "grads");
    msgpack_pack_map(pk, a->n_pieces);
    for (size_t i = 0; i < a->n_pieces; i++) {
        const piece *p = &a->pieces[i];
        const optimd_named_tensor *g = &a->grads[p->grad];
        size_t es = wire_dtype_size(g->dtype);
        wire_pack_str(pk, g->name);
        if (p->whole) {
            wire_pack_tensor(pk, g, (size_t)p->count * es);
            continue;
        }
        int64_t shape[1] = {(int64_t)p->count};
        optimd_named_tensor range = {g->name, g->dtype, 1, shape,
                                     (char *)g->data + (size_t)p->offset * es};
        msgpack_pack_map(pk, 2);
        wire_pack_str(pk, "offset");
        msgpack_pack_uint64(pk, p->offset);
        wire_pack_str(pk, "values");
        wire_pack_tensor(pk, &range, (size_t)p->count * es);
    }
    wire_pack_str(pk, "return");
    if (a->ret) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    wire_pack_str(pk, "seq");
    msgpack_pack_uint64(pk, a->seq);
    wire_pack_str(pk, "client");
    wire_pack_str(pk, a->client);
    wire_pack_str(pk, "part");
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, "index");
    msgpack_pack_uint32(pk, a->index);
    wire_pack_str(pk, "count");
    msgpack_pack_uint32(pk, a->count);
    if (a->clip_value > 0) {
        wire_pack_str(pk, "clip_value");
        msgpack_pack_double(pk, a->clip_value);
    }
}

/* Copies each range of a part's reply that an output asked for into that
 * output, at its offset; `written` counts the elements each output got. */
static int take_ranges(optimd_client *c, const client_reply *rep, optimd_named_tensor *out, size_t n_out,
                       uint64_t *written)
{
    const msgpack_object *params;
    int rv = reply_get(c, rep, "params", MSGPACK_OBJECT_MAP, &params);
    if (rv) return rv;
    char why[512];
    for (uint32_t i = 0; i < params->via.map.size; i++) {
        const msgpack_object_kv *kv = &params->via.map.ptr[i];
        size_t k = 0;
        while (k < n_out && !wire_is_str(&kv->key, out[k].name)) k++;
        if (k == n_out) continue;
        const msgpack_object *off = wire_map_get(&kv->val, "offset");
        const msgpack_object *values = wire_map_get(&kv->val, "values");
        uint64_t offset;
        wire_tensor t;
        if (kv->val.type != MSGPACK_OBJECT_MAP || !off || !wire_as_uint(off, &offset) || !values ||
            !wire_read_tensor(values, &t, why, sizeof why) || t.ndim != 1)
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL, "reply to a part of a sliced step: params['%s'] "
                               "is not {offset, values} with 1-D values", out[k].name);
        uint64_t total = numel(&out[k]);
        if (offset > total || (uint64_t)t.shape[0] > total - offset)
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL, "reply to a part of a sliced step: params['%s'] "
                               "names elements beyond its %llu", out[k].name, (unsigned long long)total);
        int64_t shape[1] = {t.shape[0]};
        optimd_named_tensor dst = {out[k].name, out[k].dtype, 1, shape,
                                   (char *)out[k].data + (size_t)offset * wire_dtype_size(out[k].dtype)};
        if (!wire_tensor_matches(&t, &dst, why, sizeof why) || !wire_tensor_into(&t, &dst, why, sizeof why))
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL, "reply to a part of a sliced step: params['%s']: %s",
                               out[k].name, why);
        written[k] += (uint64_t)t.shape[0];
    }
    return 0;
}

/* The counters of the reply that completed the step. */
static int take_counters(optimd_client *c, const client_reply *rep, optimd_group_value *groups, size_t groups_cap,
                         optimd_step_result *res)
{
    int rv;
    if ((rv = reply_uint(c, rep, "steps", &res->steps)) || (rv = reply_float(c, rep, "lr", &res->lr)) ||
        (rv = reply_float(c, rep, "next_lr", &res->next_lr)))
        return rv;
    static const char *const keys[3] = {"lrs", "next_lrs", "grad_norms"};
    return read_group_values(c, rep, keys, groups, groups_cap, &res->n_groups);
}

int client_step_sliced(optimd_client *c, const optimd_session *s,
                       const optimd_named_tensor *grads, size_t n_grads,
                       optimd_named_tensor *params_out, size_t n_out,
                       uint64_t part_elements, double clip_value, uint64_t seq,
                       optimd_group_value *groups, size_t groups_cap,
                       optimd_step_result *result)
{
    uint64_t total = 0;
    for (size_t g = 0; g < n_grads; g++) total += numel(&grads[g]);
    /* At most MAX_PARTS parts: larger ones when the step needs it. */
    if (total / part_elements >= MAX_PARTS) part_elements = total / MAX_PARTS + 1;
    piece *pieces;
    size_t *parts, n_parts;
    uint64_t *written = calloc(n_out ? n_out : 1, sizeof *written);
    if (!written || cut(grads, n_grads, part_elements, &pieces, &parts, &n_parts)) {
        free(written);
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    }
    optimd_step_result res;
    memset(&res, 0, sizeof res);
    res.grad_norm = NAN;
    res.seq = seq;
    bool all_duplicates = true, complete = false;
    int rv = 0;
    for (size_t i = 0; i < n_parts && rv == 0; i++) {
        req_part a = {.grads = grads, .pieces = pieces + parts[i], .n_pieces = parts[i + 1] - parts[i],
                      .index = (uint32_t)i, .count = (uint32_t)n_parts, .seq = seq, .client = c->id,
                      .ret = n_out > 0, .clip_value = clip_value};
        size_t hint = 256;
        for (size_t k = 0; k < a.n_pieces; k++)
            hint += 96 + strlen(grads[a.pieces[k].grad].name) +
                    (size_t)a.pieces[k].count * wire_dtype_size(grads[a.pieces[k].grad].dtype);
        /* A part sent again is answered as a duplicate: always safe. */
        client_call call = {.op = "step", .s = s, .n_keys = 5 + (clip_value > 0), .size_hint = hint,
                            .pack = pack_part, .arg = &a, .retry = CLIENT_RETRY_ALWAYS};
        client_reply rep;
        if ((rv = client_call_run(c, &call, &rep))) break;
        const msgpack_object *dup = wire_map_get(rep.root, "duplicate");
        const msgpack_object *done = wire_map_get(rep.root, "complete");
        if (!dup || dup->type != MSGPACK_OBJECT_BOOLEAN || !done || done->type != MSGPACK_OBJECT_BOOLEAN)
            rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL, "reply to a part of a sliced step lacks bool "
                             "'duplicate' and 'complete' (a daemon without sliced steps?)");
        if (rv == 0) {
            all_duplicates = all_duplicates && dup->via.boolean;
            if (done->via.boolean && !complete) {
                complete = true;
                rv = take_counters(c, &rep, groups, groups_cap, &res);
            }
        }
        if (rv == 0 && n_out) rv = take_ranges(c, &rep, params_out, n_out, written);
        client_reply_free(&rep);
    }
    if (rv == 0 && !complete)
        rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL, "the daemon took all %zu parts of the step but none "
                         "completed it", n_parts);
    for (size_t k = 0; rv == 0 && k < n_out; k++)
        if (written[k] != numel(&params_out[k]))
            rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL, "the parts' replies gave %llu of the %llu elements "
                             "of '%s'", (unsigned long long)written[k],
                             (unsigned long long)numel(&params_out[k]), params_out[k].name);
    res.duplicate = all_duplicates;
    free(pieces);
    free(parts);
    free(written);
    if (rv == 0 && result) *result = res;
    return rv;
}
