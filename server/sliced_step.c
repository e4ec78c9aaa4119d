/* A step sent in parts: checking a part, applying its ranges, and counting
 * the step when the last part is in. See sliced_step.h. */
#include "sliced_step.h"

#include "finite.h"
#include "host.h"
#include "json.h"
#include "log.h"
#include "metrics.h"

#include <optimd/protocol.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct range {
    int64_t begin, end;        /* elements [begin, end) */
} range;

/* A parameter the pending step has touched. */
typedef struct touched {
    size_t index;              /* into s->params */
    range *ranges;             /* applied so far, sorted, disjoint */
    size_t n_ranges;
    int64_t covered;           /* elements in ranges */
    void **scalars_before;     /* per slot: a scalar slot's bytes before the step, else NULL */
} touched;

struct sliced_step {
    char client[CLIENT_ID_MAX + 1];
    size_t client_len;
    uint64_t seq;
    uint32_t count;
    uint32_t applied;
    uint32_t n_slots;          /* the optimizer's (it cannot change while the step is pending) */
    unsigned char *received;   /* count flags */
    touched *params;
    size_t n_params;
    /* where[i]: 1 + the position in params of s->params[i], or 0; a part
     * naming thousands of small tensors finds each in constant time. */
    uint32_t *where;
    size_t n_where;
};

static void touched_free(touched *t, uint32_t n_slots)
{
    free(t->ranges);
    for (uint32_t k = 0; t->scalars_before && k < n_slots; k++) free(t->scalars_before[k]);
    free(t->scalars_before);
}

void sliced_step_free(sliced_step *st)
{
    if (!st) return;
    for (size_t i = 0; i < st->n_params; i++) touched_free(&st->params[i], st->n_slots);
    free(st->params);
    free(st->received);
    free(st->where);
    free(st);
}

bool sliced_step_supported(const plugin *opt)
{
    if (!(opt->opt_flags & OPTIMD_OPTIMIZER_ELEMENTWISE)) return false;
    /* Factored state is not element-wise, whatever the flag says. */
    const optimd_optimizer *o = opt->desc->optimizer;
    for (uint32_t k = 0; k < o->n_slots; k++)
        if (o->slots[k].shape == OPTIMD_SLOT_ROWS || o->slots[k].shape == OPTIMD_SLOT_COLS) return false;
    return true;
}

int session_refuse_if_pending(const session *s, const char *what, request_error *err)
{
    const sliced_step *st = s->pending_step;
    if (!st) return 0;
    return fail(err, OPTIMD_E_STEP_PENDING,
                "session '%s' has a sliced step in progress (client '%.*s', seq %llu, %u of %u parts applied): "
                "%s waits until its last part is in",
                s->name, (int)st->client_len, st->client, (unsigned long long)st->seq, st->applied, st->count,
                what);
}

uint32_t sliced_step_pack_info(msgpack_packer *pk, const session *s)
{
    const sliced_step *st = s->pending_step;
    if (!st) return 0;
    if (!pk) return 1;
    wire_pack_str(pk, "pending_step");
    msgpack_pack_map(pk, 4);
    wire_pack_str(pk, "client");
    wire_pack_strn(pk, st->client, st->client_len);
    wire_pack_str(pk, "seq");
    msgpack_pack_uint64(pk, st->seq);
    wire_pack_str(pk, "count");
    msgpack_pack_uint32(pk, st->count);
    wire_pack_str(pk, "applied");
    msgpack_pack_uint32(pk, st->applied);
    return 1;
}

int sliced_step_parse_part(const msgpack_object *req, bool *present, uint32_t *index, uint32_t *count,
                           request_error *err)
{
    const msgpack_object *part;
    *present = false;
    if (wire_get_map(req, "part", false, &part, err)) return -1;
    if (!part) return 0;
    uint64_t i, n;
    if (wire_get_uint(part, "index", true, &i, err) || wire_get_uint(part, "count", true, &n, err)) return -1;
    if (n < 1 || n > SLICED_MAX_PARTS || i >= n)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'part' needs 1 <= count <= %d and index < count", SLICED_MAX_PARTS);
    *present = true;
    *index = (uint32_t)i;
    *count = (uint32_t)n;
    return 0;
}

static touched *find_touched(const sliced_step *st, size_t index)
{
    if (!st || index >= st->n_where || !st->where[index]) return NULL;
    return &st->params[st->where[index] - 1];
}

/* Records that params[pos] is s->params[index]. -1: no memory. */
static int note_touched(sliced_step *st, size_t index, size_t pos)
{
    if (index >= st->n_where) {
        size_t n = index + 1 > 2 * st->n_where ? index + 1 : 2 * st->n_where;
        uint32_t *w = realloc(st->where, n * sizeof *w);
        if (!w) return -1;
        memset(w + st->n_where, 0, (n - st->n_where) * sizeof *w);
        st->where = w;
        st->n_where = n;
    }
    st->where[index] = (uint32_t)pos + 1;
    return 0;
}

/* Whether [begin, end) meets a range already applied. */
static bool overlaps(const touched *t, int64_t begin, int64_t end)
{
    for (size_t i = 0; t && i < t->n_ranges; i++)
        if (t->ranges[i].begin < end && begin < t->ranges[i].end) return true;
    return false;
}

/* Reads one entry of a part's `grads`: a whole tensor or {offset, values}. */
static int decode_entry(session *s, const msgpack_object_kv *kv, part_entry *e, request_error *err)
{
    const char *name;
    size_t len;
    if (wire_key(kv, &name, &len, err)) return -1;
    int64_t idx = session_find_param(s, name, len);
    if (idx < 0)
        return fail(err, OPTIMD_E_UNKNOWN_PARAM, "no parameter '%.*s' in session '%s'",
                    (int)(len > PARAM_NAME_MAX ? PARAM_NAME_MAX : len), name, s->name);
    const param *p = &s->params[idx];
    const char *pname = s->names[idx];
    e->index = (size_t)idx;
    wire_tensor g;
    if (kv->val.type == MSGPACK_OBJECT_MAP && wire_map_get(&kv->val, "rows"))
        return fail(err, OPTIMD_E_BAD_REQUEST, "'%s': a part of a sliced step takes no row-sparse gradient", pname);
    if (kv->val.type == MSGPACK_OBJECT_MAP && wire_map_get(&kv->val, "offset")) {
        uint64_t offset;
        const msgpack_object *values = wire_map_get(&kv->val, "values");
        if (wire_get_uint(&kv->val, "offset", true, &offset, err)) return -1;
        if (!values) return fail(err, OPTIMD_E_BAD_REQUEST, "'%s': a range gradient needs 'values'", pname);
        if (wire_decode_tensor(values, pname, &g, err)) return -1;
        if (g.dtype != p->dtype || g.ndim != 1 || g.numel < 1)
            return fail(err, OPTIMD_E_BAD_TENSOR, "'%s': a range's values must be a 1-D %s tensor of at least "
                        "one element", pname, wire_dtype_name(p->dtype));
        if (offset > (uint64_t)p->numel || (uint64_t)g.numel > (uint64_t)p->numel - offset)
            return fail(err, OPTIMD_E_BAD_TENSOR, "'%s': elements %llu to %llu are beyond its %lld elements",
                        pname, (unsigned long long)offset, (unsigned long long)(offset + (uint64_t)g.numel - 1),
                        (long long)p->numel);
        e->offset = (int64_t)offset;
    } else {
        if (wire_decode_tensor(&kv->val, pname, &g, err) || session_check_dense_grad(s, e->index, &g, err))
            return -1;
        e->offset = 0;
    }
    e->count = g.numel;
    e->values = g.data;
    return 0;
}

/* The first elements of parameter `t` that no range covers, after the
 * ranges applied and `extra` (may be NULL). */
static void first_gap(const touched *t, const part_entry *extra, int64_t numel, int64_t *begin, int64_t *end)
{
    int64_t at = 0;
    for (;;) {
        int64_t next = numel;
        bool moved = false;
        for (size_t i = 0; t && i < t->n_ranges; i++) {
            if (t->ranges[i].begin == at) { at = t->ranges[i].end; moved = true; }
            else if (t->ranges[i].begin > at && t->ranges[i].begin < next) next = t->ranges[i].begin;
        }
        if (extra) {
            if (extra->offset == at) { at = extra->offset + extra->count; moved = true; }
            else if (extra->offset > at && extra->offset < next) next = extra->offset;
        }
        if (!moved) {
            *begin = at;
            *end = next;
            return;
        }
    }
}

/* BAD_REQUEST naming the first elements of parameter `index` that neither
 * the ranges applied (t, may be NULL) nor this part's entry (extra, may be
 * NULL) cover. */
static int gap_error(session *s, uint64_t seq, size_t index, const touched *t, const part_entry *extra,
                     request_error *err)
{
    int64_t b, e;
    first_gap(t, extra, s->params[index].numel, &b, &e);
    return fail(err, OPTIMD_E_BAD_REQUEST, "this part would complete step %llu, but '%s' has no gradient for "
                "elements %lld to %lld; the part is not applied: send it again with them",
                (unsigned long long)seq, s->names[index], (long long)b, (long long)e - 1);
}

/* With the part being the step's last: every parameter the step touched,
 * or this part names, is covered whole. */
static int check_coverage(session *s, const sliced_step *st, uint64_t seq, const part_entry *entries, size_t n,
                          request_error *err)
{
    /* Which touched parameters this part names, by their position in st->params. */
    unsigned char *named = calloc(st && st->n_params ? st->n_params : 1, 1);
    if (!named) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    int rc = 0;
    for (size_t j = 0; j < n && rc == 0; j++) {
        const touched *t = find_touched(st, entries[j].index);
        if (t) named[t - st->params] = 1;
        if ((t ? t->covered : 0) + entries[j].count != s->params[entries[j].index].numel)
            rc = gap_error(s, seq, entries[j].index, t, &entries[j], err);
    }
    for (size_t i = 0; st && i < st->n_params && rc == 0; i++)
        if (!named[i] && st->params[i].covered != s->params[st->params[i].index].numel)
            rc = gap_error(s, seq, st->params[i].index, &st->params[i], NULL, err);
    free(named);
    return rc;
}

/* Room for the part's new parameters and ranges, so that applying it
 * cannot fail for memory once it is logged. */
static int reserve(sliced_step *st, const session *s, const part_entry *entries, size_t n)
{
    size_t new_params = 0;
    for (size_t j = 0; j < n; j++) {
        touched *t = find_touched(st, entries[j].index);
        if (t) {
            range *r = realloc(t->ranges, (t->n_ranges + 1) * sizeof *r);
            if (!r) return -1;
            t->ranges = r;
        } else {
            new_params++;
        }
    }
    touched *p = realloc(st->params, (st->n_params + new_params + 1) * sizeof *p);
    if (!p) return -1;
    st->params = p;
    const optimd_optimizer *o = s->opt->desc->optimizer;
    for (size_t j = 0; j < n; j++) {
        if (find_touched(st, entries[j].index)) continue;
        touched *t = &st->params[st->n_params];
        memset(t, 0, sizeof *t);
        t->index = entries[j].index;
        t->ranges = malloc(sizeof *t->ranges);
        t->scalars_before = calloc(o->n_slots ? o->n_slots : 1, sizeof *t->scalars_before);
        if (!t->ranges || !t->scalars_before || note_touched(st, t->index, st->n_params)) {
            touched_free(t, st->n_slots);
            if (t->index < st->n_where) st->where[t->index] = 0;
            return -1;
        }
        /* No range yet: drop_untouched removes it if the part fails. */
        st->n_params++;
    }
    return 0;
}

/* Drops parameters the part added that no range covers (after a failure). */
static void drop_untouched(sliced_step *st)
{
    size_t kept = 0;
    for (size_t i = 0; i < st->n_params; i++) {
        size_t index = st->params[i].index;
        if (st->params[i].n_ranges == 0) {
            touched_free(&st->params[i], st->n_slots);
            st->where[index] = 0;
            continue;
        }
        st->where[index] = (uint32_t)kept + 1;
        st->params[kept++] = st->params[i];
    }
    st->n_params = kept;
}

static void insert_range(touched *t, int64_t begin, int64_t end)
{
    size_t at = 0;
    while (at < t->n_ranges && t->ranges[at].begin < begin) at++;
    memmove(&t->ranges[at + 1], &t->ranges[at], (t->n_ranges - at) * sizeof *t->ranges);
    t->ranges[at] = (range){begin, end};
    t->n_ranges++;
    t->covered += end - begin;
}

/* Saves the scalar slots before the parameter's first range of the step
 * (-1: no memory), or puts the saved values back before a later one. */
static int scalars_before_range(const session *s, const sliced_step *st, touched *t, param *p, bool first)
{
    const optimd_optimizer *o = s->opt->desc->optimizer;
    for (uint32_t k = 0; p->slots && k < st->n_slots; k++) {
        if (!p->slots[k] || o->slots[k].shape != OPTIMD_SLOT_SCALAR) continue;
        slot_layout l;
        session_slot_layout(s, p, k, &l);
        if (first) {
            t->scalars_before[k] = malloc(l.nbytes);
            if (!t->scalars_before[k]) return -1;
            memcpy(t->scalars_before[k], p->slots[k], l.nbytes);
        } else {
            memcpy(p->slots[k], t->scalars_before[k], l.nbytes);
        }
    }
    return 0;
}

/* Runs the optimizer on one range of a parameter: 1-D views of the range
 * of the parameter, of the gradient and of the like-parameter slots. */
static const char *step_range(session *s, param *p, const part_entry *e, const void *grad, const double *hp,
                              optimd_tensor *slots, compute_pool *pool)
{
    const optimd_optimizer *o = s->opt->desc->optimizer;
    size_t esize = wire_dtype_size(p->dtype);
    int64_t shape[1] = {e->count}, strides[1] = {1};
    optimd_tensor pv = {.struct_size = sizeof pv, .dtype = p->dtype, .ndim = 1, .numel = e->count,
                        .shape = shape, .strides = strides, .data = (char *)p->data + (size_t)e->offset * esize};
    optimd_tensor gv = pv;
    gv.data = (void *)grad;
    slot_layout l;
    for (uint32_t k = 0; k < o->n_slots; k++) {
        session_slot_layout(s, p, k, &l);
        void *data = p->slots ? p->slots[k] : NULL;
        if (o->slots[k].shape == OPTIMD_SLOT_SCALAR) {
            session_slot_view(&slots[k], &l, data);
        } else {
            slots[k] = pv;
            slots[k].dtype = l.dtype;
            slots[k].data = data ? (char *)data + (size_t)e->offset * wire_dtype_size(l.dtype) : NULL;
        }
    }
    optimd_step_args a = {.struct_size = sizeof a, .n_hparams = s->opt->n_hparams, .hparams = hp,
                          .step = p->steps + 1, .param = &pv, .grad = &gv, .slots = slots, .n_slots = o->n_slots};
    host_call hc;
    host_call_begin(&hc, s->opt->desc->id, pool);
    optimd_status st = o->step(&hc.table, &a);
    static _Thread_local char why[256];
    const char *bad = NULL;
    if (st != OPTIMD_OK) {
        snprintf(why, sizeof why, "%s", hc.call.error[0] ? hc.call.error : "step failed");
        bad = why;
    }
    host_call_end(&hc);
    if (!bad && !optimd_all_finite_parallel(pool, pv.data, (size_t)pv.numel, esize))
        bad = "it wrote NaN or infinity into the parameter";
    return bad;
}

static void fill_counters(const session *s, part_result *res)
{
    for (uint32_t gi = 0; gi < s->n_groups; gi++) res->step.lrs[gi] = res->step.next_lrs[gi] = s->groups[gi].lr;
    res->step.lr = res->step.next_lr = s->groups[0].lr;
    res->step.steps = s->steps;
}

static int decode_entries(session *s, const msgpack_object *grads, part_entry **out, size_t *n_out,
                          request_error *err)
{
    uint32_t n = grads->via.map.size;
    part_entry *entries = calloc(n ? n : 1, sizeof *entries);
    if (!entries) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    /* A name given twice, found as session_step finds it: by the request's mark. */
    uint64_t serial = ++s->request_serial;
    for (uint32_t i = 0; i < n; i++) {
        if (decode_entry(s, &grads->via.map.ptr[i], &entries[i], err)) goto bad;
        param *p = &s->params[entries[i].index];
        if (p->mark == serial) {
            fail(err, OPTIMD_E_BAD_REQUEST, "'%s' is named twice in one part", s->names[entries[i].index]);
            goto bad;
        }
        p->mark = serial;
    }
    *out = entries;
    *n_out = n;
    return 0;
bad:
    free(entries);
    return -1;
}

int session_step_part(session *s, const msgpack_object *grads, const step_identity *id, uint32_t index,
                      uint32_t count, const step_clip *clip, compute_pool *pool, session_commit_fn commit,
                      void *ctx, part_entry **entries_out, size_t *n_out, part_result *res, request_error *err)
{
    memset(res, 0, sizeof *res);
    *entries_out = NULL;
    *n_out = 0;
    if (!id->seq) return fail(err, OPTIMD_E_BAD_REQUEST, "a part of a sliced step needs 'seq'");
    if (id->client_len > CLIENT_ID_MAX)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'client' is at most %d bytes", CLIENT_ID_MAX);
    if (count < 1 || count > SLICED_MAX_PARTS || index >= count)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'part' needs 1 <= count <= %d and index < count", SLICED_MAX_PARTS);
    if (!sliced_step_supported(s->opt))
        return fail(err, OPTIMD_E_BAD_REQUEST, "optimizer '%s' does not declare element-wise updates, so its steps "
                    "cannot be sent in parts: send whole tensors", s->opt->desc->id);
    if (s->lookahead_k)
        return fail(err, OPTIMD_E_BAD_REQUEST, "a session with lookahead takes no sliced steps");
    if (clip->max_norm > 0)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'clip_norm' needs every gradient at once: not in a sliced step");

    part_entry *entries = NULL;
    size_t n = 0;
    if (decode_entries(s, grads, &entries, &n, err)) return -1;

    client_seq *cs = session_client(s, id->client, id->client_len, false);
    sliced_step *st = s->pending_step;
    bool ours = st && st->seq == id->seq && st->client_len == id->client_len &&
                memcmp(st->client, id->client, id->client_len) == 0;
    if (cs && id->seq <= cs->seq && !ours) {
        /* The whole step was applied before: answered from its record. */
        res->step.duplicate = true;
        res->step.steps = cs->steps;
        res->step.lr = cs->lr;
        res->step.next_lr = cs->next_lr;
        res->complete = true;
        res->parts = count;
        goto answered;
    }
    if (st && !ours) {
        free(entries);
        return session_refuse_if_pending(s, "a step of another client or seq", err);
    }
    if (ours && st->count != count) {
        free(entries);
        return fail(err, OPTIMD_E_BAD_REQUEST, "step %llu has %u parts, not %u", (unsigned long long)id->seq,
                    st->count, count);
    }
    if (ours && st->received[index]) {
        res->step.duplicate = true;
        fill_counters(s, res);
        res->parts = st->applied;
        goto answered;
    }
    if (s->stopped[0]) {
        free(entries);
        return fail(err, OPTIMD_E_PLUGIN, "session '%s' is stopped (%s): switch it to another optimizer, "
                    "load a fixed plugin version, or close it", s->name, s->stopped);
    }

    int rc = 0;
    for (size_t j = 0; j < n && rc == 0; j++) {
        const part_entry *e = &entries[j];
        if (overlaps(find_touched(st, e->index), e->offset, e->offset + e->count))
            rc = fail(err, OPTIMD_E_BAD_REQUEST, "'%s': elements %lld to %lld meet elements an earlier part of step "
                      "%llu carried; the part is not applied", s->names[e->index], (long long)e->offset,
                      (long long)(e->offset + e->count - 1), (unsigned long long)id->seq);
        else if (!optimd_all_finite_parallel(pool, e->values, (size_t)e->count, wire_dtype_size(s->params[e->index].dtype)))
            rc = fail(err, OPTIMD_E_NONFINITE, "gradient for '%s' holds NaN or infinity; nothing applied",
                      s->names[e->index]);
    }
    uint32_t applied = st ? st->applied : 0;
    if (rc == 0 && applied + 1 == count) rc = check_coverage(s, st, id->seq, entries, n, err);
    if (rc) {
        free(entries);
        return -1;
    }

    /* Everything that can fail for memory, before the change is logged. */
    bool fresh = st == NULL;
    if (fresh) {
        st = calloc(1, sizeof *st);
        if (st) st->received = calloc(count, 1);
        if (!st || !st->received) {
            sliced_step_free(st);
            free(entries);
            return fail(err, OPTIMD_E_NOMEM, "out of memory");
        }
        memcpy(st->client, id->client, id->client_len);
        st->client_len = id->client_len;
        st->seq = id->seq;
        st->count = count;
        st->n_slots = s->opt->desc->optimizer->n_slots;
    }
    uint32_t n_hp;
    double *hp = session_step_hparams(s, &n_hp);
    void **copies = calloc(n ? n : 1, sizeof *copies);
    uint32_t n_slots = s->opt->desc->optimizer->n_slots;
    optimd_tensor *slot_views = calloc(n_slots ? n_slots : 1, sizeof *slot_views);
    rc = hp && copies && slot_views && reserve(st, s, entries, n) == 0 ? 0 : -1;
    for (size_t j = 0; j < n && rc == 0; j++) {
        param *p = &s->params[entries[j].index];
        size_t esize = wire_dtype_size(p->dtype);
        size_t bytes = (size_t)entries[j].count * esize;
        bool unaligned = ((uintptr_t)entries[j].values % esize) != 0;
        if (unaligned) metrics_unaligned_gradient(bytes);
        if (unaligned || clip->value > 0) {
            copies[j] = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
            if (!copies[j]) rc = -1;
            else memcpy(copies[j], entries[j].values, bytes);
        }
        touched *t = find_touched(st, entries[j].index);
        if (rc == 0 && t->n_ranges == 0 && session_ensure_slots(s, p)) rc = -1;
    }
    if (rc == 0 && commit && commit(ctx, s, err)) rc = -2;
    if (rc) {
        if (rc == -1) fail(err, OPTIMD_E_NOMEM, "out of memory");
        if (fresh) sliced_step_free(st);
        else drop_untouched(st);
        for (size_t j = 0; copies && j < n; j++) free(copies[j]);
        free(copies);
        free(slot_views);
        free(hp);
        free(entries);
        return -1;
    }

    /* From here on the part is applied. */
    s->pending_step = st;
    for (size_t j = 0; j < n; j++) {
        const part_entry *e = &entries[j];
        param *p = &s->params[e->index];
        touched *t = find_touched(st, e->index);
        if (scalars_before_range(s, st, t, p, t->n_ranges == 0)) {
            /* Keeping the step exact needs the saved values: stop rather
             * than let a later range see this one's scalars. */
            snprintf(s->stopped, sizeof s->stopped, "out of memory in a sliced step on '%.40s'", s->names[e->index]);
        }
        if (copies[j] && clip->value > 0) grad_clip_value(copies[j], p->dtype, e->count, clip->value);
        const char *bad = s->stopped[0] ? s->stopped
                                        : step_range(s, p, e, copies[j] ? copies[j] : e->values,
                                                     hp + (size_t)p->group * n_hp, slot_views, pool);
        insert_range(t, e->offset, e->offset + e->count);
        if (bad) {
            if (bad != s->stopped)
                snprintf(s->stopped, sizeof s->stopped, "plugin %.64s %.32s failed on '%.40s' at step %llu: %.100s",
                         s->opt->desc->id, s->opt->desc->version, s->names[e->index],
                         (unsigned long long)s->steps + 1, bad);
            log_error("session %s stopped: %s", s->name, s->stopped);
            rc = fail(err, OPTIMD_E_PLUGIN, "%s; the session is stopped", s->stopped);
            break;
        }
    }
    if (rc) {
        /* The session is stopped, and a switch or a fixed plugin version
         * takes it on from here: a pending step would refuse both. */
        s->pending_step = NULL;
        sliced_step_free(st);
    } else {
        st->received[index] = 1;
        st->applied++;
        s->version++;
    }
    if (rc == 0 && st->applied == st->count) {
        if (!cs) {
            cs = session_client(s, id->client, id->client_len, true);
            if (!cs) log_error("session %s: out of memory recording client sequence numbers", s->name);
        }
        for (size_t i = 0; i < st->n_params; i++) s->params[st->params[i].index].steps++;
        s->pending_step = NULL;
        res->parts = st->count;
        sliced_step_free(st);
        session_count_step(s, cs, id->seq, &res->step, err);
        res->complete = true;
    } else if (rc == 0) {
        fill_counters(s, res);
        res->parts = st->applied;
    }
    for (size_t j = 0; j < n; j++) free(copies[j]);
    free(copies);
    free(slot_views);
    free(hp);
    if (rc) {
        free(entries);
        return rc;
    }
answered:
    *entries_out = entries;
    *n_out = n;
    return 0;
}

int session_abandon_step(session *s, const step_identity *id, session_commit_fn commit, void *ctx,
                         part_result *res, request_error *err)
{
    memset(res, 0, sizeof *res);
    sliced_step *st = s->pending_step;
    if (!st) return fail(err, OPTIMD_E_BAD_REQUEST, "session '%s' has no pending step", s->name);
    if (st->seq != id->seq || st->client_len != id->client_len || memcmp(st->client, id->client, id->client_len))
        return fail(err, OPTIMD_E_BAD_REQUEST, "the pending step is client '%.*s', seq %llu: name it to abandon it",
                    (int)st->client_len, st->client, (unsigned long long)st->seq);
    client_seq *cs = session_client(s, id->client, id->client_len, true);
    if (!cs) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    if (commit && commit(ctx, s, err)) return -1;
    log_warn("session %s: sliced step %llu of client '%.*s' abandoned with %u of %u parts applied", s->name,
             (unsigned long long)st->seq, (int)st->client_len, st->client, st->applied, st->count);
    for (size_t i = 0; i < st->n_params; i++) s->params[st->params[i].index].steps++;
    res->parts = st->applied;
    s->pending_step = NULL;
    sliced_step_free(st);
    s->version++;
    session_count_step(s, cs, id->seq, &res->step, err);
    res->complete = true;
    return 0;
}

/* ------------------------------------------------------------ snapshots -- */

void sliced_step_write_manifest(FILE *f, const session *s)
{
    const sliced_step *st = s->pending_step;
    if (!st) return;
    fputs(",\"pending_step\":{\"client\":", f);
    json_write_string(f, st->client, st->client_len);
    fprintf(f, ",\"seq\":%llu,\"count\":%u,\"received\":[", (unsigned long long)st->seq, st->count);
    bool first = true;
    for (uint32_t i = 0; i < st->count; i++) {
        if (!st->received[i]) continue;
        fprintf(f, first ? "%u" : ",%u", i);
        first = false;
    }
    fputs("],\"params\":[", f);
    for (size_t i = 0; i < st->n_params; i++) {
        const touched *t = &st->params[i];
        const param *p = &s->params[t->index];
        fputs(i ? ",{\"name\":" : "{\"name\":", f);
        json_write_string(f, s->names[t->index], strlen(s->names[t->index]));
        fputs(",\"ranges\":[", f);
        for (size_t r = 0; r < t->n_ranges; r++)
            fprintf(f, "%s[%lld,%lld]", r ? "," : "", (long long)t->ranges[r].begin, (long long)t->ranges[r].end);
        /* Scalar slots before the step, as the bytes' hex: exact. */
        fputs("],\"scalars_before\":[", f);
        for (uint32_t k = 0; k < st->n_slots; k++) {
            if (k) fputc(',', f);
            if (!t->scalars_before[k]) {
                fputs("null", f);
                continue;
            }
            slot_layout l;
            session_slot_layout(s, p, k, &l);
            fputc('"', f);
            for (size_t b = 0; b < l.nbytes; b++) fprintf(f, "%02x", ((const unsigned char *)t->scalars_before[k])[b]);
            fputc('"', f);
        }
        fputs("]}", f);
    }
    fputs("]}", f);
}

bool sliced_step_manifest_touches(const json_value *v, const char *name)
{
    const json_value *params = v ? json_get(v, "params") : NULL;
    const char *pname;
    for (size_t i = 0; params && params->type == JSON_ARRAY && i < params->count; i++)
        if (json_get_string(&params->items[i], "name", &pname) && strcmp(pname, name) == 0) return true;
    return false;
}

static int hex_bytes(const json_value *v, void *out, size_t n)
{
    if (!v || v->type != JSON_STRING || v->string_len != 2 * n) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned hi, lo;
        if (sscanf(v->string + 2 * i, "%1x%1x", &hi, &lo) != 2) return -1;
        ((unsigned char *)out)[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static int restore_param(session *s, sliced_step *st, const json_value *e, char *why, size_t cap)
{
    const char *name;
    const json_value *ranges = json_get(e, "ranges"), *scalars = json_get(e, "scalars_before");
    if (!json_get_string(e, "name", &name) || !ranges || ranges->type != JSON_ARRAY || !scalars ||
        scalars->type != JSON_ARRAY || scalars->count != st->n_slots) {
        snprintf(why, cap, "a parameter of the pending step is malformed");
        return -1;
    }
    int64_t idx = session_find_param(s, name, strlen(name));
    if (idx < 0 || find_touched(st, (size_t)idx)) {
        snprintf(why, cap, "the pending step names '%s', which the session has not or twice", name);
        return -1;
    }
    param *p = &s->params[idx];
    touched *t = &st->params[st->n_params];
    memset(t, 0, sizeof *t);
    t->index = (size_t)idx;
    t->ranges = calloc(ranges->count + 1, sizeof *t->ranges);
    t->scalars_before = calloc(st->n_slots ? st->n_slots : 1, sizeof *t->scalars_before);
    st->n_params++;
    if (!t->ranges || !t->scalars_before || (!p->slots && st->n_slots) ||
        note_touched(st, t->index, st->n_params - 1)) {
        snprintf(why, cap, "out of memory, or '%s' has no state", name);
        return -1;
    }
    int64_t at = 0;
    for (size_t r = 0; r < ranges->count; r++) {
        const json_value *rv = &ranges->items[r];
        if (rv->type != JSON_ARRAY || rv->count != 2 || rv->items[0].type != JSON_NUMBER ||
            rv->items[1].type != JSON_NUMBER || rv->items[0].number < (double)at ||
            rv->items[1].number <= rv->items[0].number || rv->items[1].number > (double)p->numel) {
            snprintf(why, cap, "the pending step's ranges of '%s' are malformed", name);
            return -1;
        }
        t->ranges[r] = (range){(int64_t)rv->items[0].number, (int64_t)rv->items[1].number};
        t->covered += t->ranges[r].end - t->ranges[r].begin;
        at = t->ranges[r].end;
        t->n_ranges++;
    }
    const optimd_optimizer *o = s->opt->desc->optimizer;
    for (uint32_t k = 0; k < st->n_slots; k++) {
        const json_value *sv = &scalars->items[k];
        if (sv->type == JSON_NULL) continue;
        slot_layout l;
        session_slot_layout(s, p, k, &l);
        t->scalars_before[k] = o->slots[k].shape == OPTIMD_SLOT_SCALAR && p->slots[k] ? malloc(l.nbytes) : NULL;
        if (!t->scalars_before[k] || hex_bytes(sv, t->scalars_before[k], l.nbytes)) {
            snprintf(why, cap, "the pending step's saved scalar '%s' of '%s' is malformed", o->slots[k].key, name);
            return -1;
        }
    }
    return 0;
}

int sliced_step_restore(session *s, const json_value *v, char *why, size_t why_cap)
{
    if (!v) return 0;
    const char *client;
    double seq, count;
    const json_value *received = json_get(v, "received"), *params = json_get(v, "params");
    const json_value *cv = json_get(v, "client");
    if (v->type != JSON_OBJECT || !json_get_string(v, "client", &client) || !json_get_number(v, "seq", &seq) ||
        !json_get_number(v, "count", &count) || !received || received->type != JSON_ARRAY || !params ||
        params->type != JSON_ARRAY || cv->string_len > CLIENT_ID_MAX || seq < 1 || count < 1 ||
        count > SLICED_MAX_PARTS || received->count >= count || !sliced_step_supported(s->opt)) {
        snprintf(why, why_cap, "its pending sliced step is malformed (or its optimizer takes none)");
        return -1;
    }
    sliced_step *st = calloc(1, sizeof *st);
    if (st) {
        st->received = calloc((size_t)count, 1);
        st->params = calloc(params->count + 1, sizeof *st->params);
    }
    if (!st || !st->received || !st->params) {
        sliced_step_free(st);
        snprintf(why, why_cap, "out of memory");
        return -1;
    }
    memcpy(st->client, cv->string, cv->string_len);
    st->client_len = cv->string_len;
    st->seq = (uint64_t)seq;
    st->count = (uint32_t)count;
    st->n_slots = s->opt->desc->optimizer->n_slots;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < received->count; i++) {
        const json_value *iv = &received->items[i];
        if (iv->type != JSON_NUMBER || iv->number < 0 || iv->number >= count || st->received[(size_t)iv->number]) {
            snprintf(why, why_cap, "the pending step's parts are malformed");
            rc = -1;
        } else {
            st->received[(size_t)iv->number] = 1;
            st->applied++;
        }
    }
    for (size_t i = 0; rc == 0 && i < params->count; i++) rc = restore_param(s, st, &params->items[i], why, why_cap);
    if (rc) {
        sliced_step_free(st);
        return -1;
    }
    s->pending_step = st;
    return 0;
}
