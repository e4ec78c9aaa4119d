#include "shm_attachment.h"

#include "finite.h"
#include "log.h"
#include "wire.h"

#include <optimd/protocol.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Installed attachments, so that a closing connection that attached none
 * (nearly all of them) costs no walk over the sessions. */
static atomic_size_t n_attached;

static uint64_t round_up(uint64_t n) { return (n + OPTIMD_SHM_ALIGN - 1) / OPTIMD_SHM_ALIGN * OPTIMD_SHM_ALIGN; }

void optimd_shm_discard(optimd_shm_attachment *a)
{
    if (!a) return;
    optimd_shm_unmap(&a->seg);
    free(a->entries);
    free(a->entry_of);
    free(a->staging);
    free(a);
}

static int get_offset(const msgpack_object *entry, const char *key, const char *name, uint64_t *out,
                      request_error *err)
{
    const msgpack_object *v = wire_map_get(entry, key);
    if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fail(err, OPTIMD_E_BAD_REQUEST, "params['%.64s'] needs '%s', a byte offset (uint)", name, key);
    *out = v->via.u64;
    return 0;
}

int optimd_shm_prepare(session *s, const char *name, size_t name_len, uint64_t size, uid_t owner,
                       uint32_t connection, const msgpack_object *params, optimd_shm_attachment **out,
                       request_error *err)
{
    *out = NULL;
    uint32_t n = params->via.map.size;
    optimd_shm_attachment *a = calloc(1, sizeof *a);
    optimd_shm_range *ranges = NULL;
    if (!a) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    a->seg.fd = -1;
    a->connection = connection;
    a->n_params = s->n_params;
    a->entries = calloc(n ? n : 1, sizeof *a->entries);
    a->entry_of = malloc((s->n_params ? s->n_params : 1) * sizeof *a->entry_of);
    ranges = calloc(2 * (size_t)(n ? n : 1), sizeof *ranges);
    if (!a->entries || !a->entry_of || !ranges) {
        fail(err, OPTIMD_E_NOMEM, "out of memory");
        goto fail_out;
    }
    for (size_t i = 0; i < s->n_params; i++) a->entry_of[i] = -1;
    /* The names and offsets first: they need no segment. */
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &params->via.map.ptr[i];
        const char *pname;
        size_t plen;
        if (wire_key(kv, &pname, &plen, err)) goto fail_out;
        int64_t idx = session_find_param(s, pname, plen);
        if (idx < 0) {
            fail(err, OPTIMD_E_UNKNOWN_PARAM, "no parameter '%.*s' in session '%s'",
                 (int)(plen > PARAM_NAME_MAX ? PARAM_NAME_MAX : plen), pname, s->name);
            goto fail_out;
        }
        if (a->entry_of[idx] >= 0) {
            fail(err, OPTIMD_E_BAD_REQUEST, "parameter '%s' is given twice", s->names[idx]);
            goto fail_out;
        }
        if (kv->val.type != MSGPACK_OBJECT_MAP) {
            fail(err, OPTIMD_E_BAD_REQUEST, "params['%.64s'] must be a map {param, grad}", s->names[idx]);
            goto fail_out;
        }
        optimd_shm_entry *e = &a->entries[i];
        e->param = (size_t)idx;
        if (get_offset(&kv->val, "param", s->names[idx], &e->param_offset, err) ||
            get_offset(&kv->val, "grad", s->names[idx], &e->grad_offset, err))
            goto fail_out;
        a->entry_of[idx] = i;
        size_t nbytes = s->params[idx].nbytes;
        ranges[2 * i] = (optimd_shm_range){e->param_offset, nbytes, s->names[idx], "param"};
        ranges[2 * i + 1] = (optimd_shm_range){e->grad_offset, nbytes, s->names[idx], "grad"};
        a->staging_bytes += round_up(nbytes);
    }
    a->n_entries = n;
    if (optimd_shm_map(&a->seg, name, name_len, size, owner, err) ||
        optimd_shm_check_ranges(&a->seg, ranges, 2 * (size_t)n, err))
        goto fail_out;
    free(ranges);
    *out = a;
    return 0;
fail_out:
    free(ranges);
    optimd_shm_discard(a);
    return -1;
}

static void release(session *s, optimd_shm_attachment *a)
{
    atomic_fetch_sub(&s->committed_bytes, a->staging_bytes);
    atomic_fetch_sub(&n_attached, 1);
    optimd_shm_discard(a);
}

bool optimd_shm_detach(session *s)
{
    optimd_shm_attachment *a = s->shm;
    if (!a) return false;
    s->shm = NULL;
    log_info("session %s: shared memory segment %s detached", s->name, a->seg.name);
    release(s, a);
    return true;
}

/* The session's current value of every entry, into the segment. */
static int write_params(const session *s, const optimd_shm_attachment *a)
{
    for (size_t k = 0; k < a->n_entries; k++) {
        const optimd_shm_entry *e = &a->entries[k];
        const param *p = &s->params[e->param];
        if (optimd_shm_write(&a->seg, e->param_offset, p->data, p->nbytes)) return -1;
    }
    return 0;
}

/* One private block for all gradients, touched now so that a step takes
 * no page faults on it. */
static int allocate_staging(const session *s, optimd_shm_attachment *a, request_error *err)
{
    a->staging = aligned_alloc(OPTIMD_SHM_ALIGN, a->staging_bytes ? a->staging_bytes : OPTIMD_SHM_ALIGN);
    if (!a->staging)
        return fail(err, OPTIMD_E_NOMEM, "out of memory for %llu bytes of gradient copies",
                    (unsigned long long)a->staging_bytes);
    memset(a->staging, 0, a->staging_bytes);
    uint64_t at = 0;
    for (size_t i = 0; i < a->n_entries; i++) {
        a->entries[i].staging = a->staging + at;
        at += round_up(s->params[a->entries[i].param].nbytes);
    }
    return 0;
}

int optimd_shm_install(session *s, optimd_shm_attachment *a, request_error *err)
{
    if (allocate_staging(s, a, err)) {
        optimd_shm_discard(a);
        return -1;
    }
    if (!optimd_shm_intact(&a->seg, err) || write_params(s, a)) {
        if (!err->code)
            fail(err, OPTIMD_E_BAD_REQUEST, "shared memory segment %s shrank while the parameters were "
                 "written into it", a->seg.name);
        optimd_shm_discard(a);
        return -1;
    }
    optimd_shm_detach(s);
    s->shm = a;
    atomic_fetch_add(&s->committed_bytes, a->staging_bytes);
    atomic_fetch_add(&n_attached, 1);
    log_info("session %s: shared memory segment %s attached (%zu parameters, %llu bytes)", s->name, a->seg.name,
             a->n_entries, (unsigned long long)a->seg.size);
    return 0;
}

void optimd_shm_detach_connection(session_table *t, uint32_t connection)
{
    if (atomic_load(&n_attached) == 0) return;
    size_t n;
    session **list = session_table_list(t, &n);
    for (size_t i = 0; list && i < n; i++) {
        session *s = list[i];
        session_lock(s);
        if (s->shm && s->shm->connection == connection) optimd_shm_detach(s);
        session_unlock(s);
    }
    session_table_release_list(list, n);
}

/* The entries a shm_step names, in its order (all of them when `names` is
 * NULL). */
static int select_entries(session *s, optimd_shm_attachment *a, const msgpack_object *names, size_t **out,
                          size_t *count, request_error *err)
{
    if (names && names->type != MSGPACK_OBJECT_ARRAY)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'names' must be an array of strings");
    *count = names ? names->via.array.size : a->n_entries;
    size_t *which = malloc((*count ? *count : 1) * sizeof *which);
    if (!which) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    uint64_t serial = ++a->serial;
    for (size_t k = 0; k < *count; k++) {
        if (!names) {
            which[k] = k;
            continue;
        }
        const msgpack_object *o = &names->via.array.ptr[k];
        if (o->type != MSGPACK_OBJECT_STR) {
            free(which);
            return fail(err, OPTIMD_E_BAD_REQUEST, "'names' must be an array of strings");
        }
        int64_t idx = session_find_param(s, o->via.str.ptr, o->via.str.size);
        int64_t entry = idx >= 0 && (size_t)idx < a->n_params ? a->entry_of[idx] : -1;
        if (entry < 0) {
            free(which);
            if (idx < 0)
                return fail(err, OPTIMD_E_UNKNOWN_PARAM, "no parameter '%.*s' in session '%s'",
                            (int)(o->via.str.size > PARAM_NAME_MAX ? PARAM_NAME_MAX : o->via.str.size),
                            o->via.str.ptr, s->name);
            return fail(err, OPTIMD_E_BAD_REQUEST, "parameter '%s' is not in the attached segment %s",
                        s->names[idx], a->seg.name);
        }
        if (a->entries[entry].seen == serial) {
            free(which);
            return fail(err, OPTIMD_E_BAD_REQUEST, "'%s' is named twice", s->names[idx]);
        }
        a->entries[entry].seen = serial;
        which[k] = (size_t)entry;
    }
    *out = which;
    return 0;
}

/* The "grads" map a wire step with these gradients would carry, built as
 * msgpack objects over the private copies (no tensor bytes copied), so
 * that session_step and the log see exactly what a wire step gives them. */
typedef struct grads_object {
    msgpack_object map;
    msgpack_object_kv *kvs;    /* n: name -> tensor */
    msgpack_object_kv *fields; /* 3 per tensor: dtype, shape, data */
    msgpack_object *dims;      /* WIRE_MAX_DIMS per tensor */
} grads_object;

static msgpack_object str_object(const char *s, size_t len)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_STR};
    o.via.str.ptr = s;
    o.via.str.size = (uint32_t)len;
    return o;
}

static int build_grads(const session *s, const optimd_shm_attachment *a, const size_t *which, size_t n,
                       grads_object *g, request_error *err)
{
    memset(g, 0, sizeof *g);
    size_t m = n ? n : 1;
    g->kvs = calloc(m, sizeof *g->kvs);
    g->fields = calloc(3 * m, sizeof *g->fields);
    g->dims = calloc(WIRE_MAX_DIMS * m, sizeof *g->dims);
    if (!g->kvs || !g->fields || !g->dims) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    for (size_t k = 0; k < n; k++) {
        const optimd_shm_entry *e = &a->entries[which[k]];
        const param *p = &s->params[e->param];
        /* msgpack's bin length is 32 bits; the wire could never have
         * registered anything longer. */
        if (p->nbytes > UINT32_MAX)
            return fail(err, OPTIMD_E_BAD_TENSOR, "'%s' is too large for a step", s->names[e->param]);
        msgpack_object_kv *f = &g->fields[3 * k];
        msgpack_object *dims = &g->dims[WIRE_MAX_DIMS * k];
        f[0].key = str_object("dtype", 5);
        f[0].val = str_object(wire_dtype_name(p->dtype), 3);
        f[1].key = str_object("shape", 5);
        for (uint32_t d = 0; d < p->ndim; d++) {
            dims[d].type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            dims[d].via.u64 = (uint64_t)p->shape[d];
        }
        f[1].val.type = MSGPACK_OBJECT_ARRAY;
        f[1].val.via.array.size = p->ndim;
        f[1].val.via.array.ptr = dims;
        f[2].key = str_object("data", 4);
        f[2].val.type = MSGPACK_OBJECT_BIN;
        f[2].val.via.bin.size = (uint32_t)p->nbytes;
        f[2].val.via.bin.ptr = (const char *)e->staging;
        g->kvs[k].key = str_object(s->names[e->param], strlen(s->names[e->param]));
        g->kvs[k].val.type = MSGPACK_OBJECT_MAP;
        g->kvs[k].val.via.map.size = 3;
        g->kvs[k].val.via.map.ptr = f;
    }
    g->map.type = MSGPACK_OBJECT_MAP;
    g->map.via.map.size = (uint32_t)n;
    g->map.via.map.ptr = g->kvs;
    return 0;
}

static void free_grads(grads_object *g)
{
    free(g->kvs);
    free(g->fields);
    free(g->dims);
}

/* A growing buffer for msgpack_packer, sized up front to what it will
 * take, so that a 40 MB record is written once rather than regrown. */
typedef struct record_buffer {
    char *data;
    size_t len, cap;
    bool failed;
} record_buffer;

static int record_write(void *ctx, const char *buf, size_t len)
{
    record_buffer *b = ctx;
    if (b->failed) return -1;
    if (b->len + len > b->cap) {
        size_t cap = (b->len + len) * 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = true;
            return -1;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, buf, len);
    b->len += len;
    return 0;
}

/* What the log needs to write the step as a wire step. */
typedef struct log_context {
    store *st;
    const grads_object *grads;
    const msgpack_object *request;
    uint64_t tensor_bytes;
} log_context;

/* session_commit_fn: logs the step as the wire step it is equivalent to
 * ("step" with the gradients inline, "return" false), which replay applies
 * like any other; built only for a session that has a log. */
static int log_as_wire_step(void *ctx, session *s, request_error *err)
{
    log_context *lc = ctx;
    if (s->wal_fd < 0) return 0;
    static const char *const copied[] = {"seq", "client", "clip_value", "clip_norm"};
    record_buffer b = {0};
    b.cap = lc->tensor_bytes + 512 + (size_t)lc->grads->map.via.map.size * (PARAM_NAME_MAX + 128);
    b.data = malloc(b.cap);
    if (!b.data) return fail(err, OPTIMD_E_NOMEM, "out of memory logging the step (nothing applied)");
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, record_write);
    uint32_t keys = 5;
    for (size_t i = 0; i < sizeof copied / sizeof copied[0]; i++) keys += wire_map_get(lc->request, copied[i]) != NULL;
    msgpack_pack_map(&pk, keys);
    wire_pack_str(&pk, "v");
    msgpack_pack_int(&pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(&pk, "op");
    wire_pack_str(&pk, "step");
    wire_pack_str(&pk, "session");
    wire_pack_str(&pk, s->name);
    wire_pack_str(&pk, "return");
    msgpack_pack_false(&pk);
    for (size_t i = 0; i < sizeof copied / sizeof copied[0]; i++) {
        const msgpack_object *v = wire_map_get(lc->request, copied[i]);
        if (!v) continue;
        wire_pack_str(&pk, copied[i]);
        msgpack_pack_object(&pk, *v);
    }
    wire_pack_str(&pk, "grads");
    msgpack_pack_object(&pk, lc->grads->map);
    int rc;
    if (b.failed) {
        rc = fail(err, OPTIMD_E_NOMEM, "out of memory logging the step (nothing applied)");
    } else {
        store_change change = {.st = lc->st, .request = b.data, .len = b.len};
        rc = store_log_change(&change, s, err);
    }
    free(b.data);
    return rc;
}

/* One tensor copied between the segment and private memory, in chunks
 * spread over the compute pool: a single core does not saturate memory
 * bandwidth here, and these copies are most of a step's cost besides the
 * update itself. */
typedef struct tensor_copy {
    const optimd_shared_segment *seg;
    unsigned char *mem;        /* the private side */
    uint64_t offset;           /* the segment side */
    size_t esize;
    bool to_segment;
    atomic_bool faulted;       /* SIGBUS: the segment shrank */
    atomic_bool nonfinite;     /* reading: a NaN or infinity came by */
} tensor_copy;

static void copy_chunk(void *user, int64_t begin, int64_t end)
{
    tensor_copy *c = user;
    size_t at = (size_t)begin * c->esize, n = (size_t)(end - begin) * c->esize;
    bool finite = true;
    int rc = c->to_segment ? optimd_shm_write_checked(c->seg, c->offset + at, c->mem + at, n, c->esize, &finite)
                           : optimd_shm_read_checked(c->seg, c->mem + at, c->offset + at, n, c->esize, &finite);
    if (rc) atomic_store(&c->faulted, true);
    if (!finite) atomic_store(&c->nonfinite, true);
}

/* Returns -1 if the segment shrank under the copy; *finite becomes false
 * if an element that passed is not finite. */
static int copy_tensor(compute_pool *pool, const optimd_shared_segment *seg, const param *p, unsigned char *mem,
                       uint64_t offset, bool to_segment, bool *finite)
{
    tensor_copy c = {.seg = seg, .mem = mem, .offset = offset, .esize = wire_dtype_size(p->dtype),
                     .to_segment = to_segment};
    atomic_init(&c.faulted, false);
    atomic_init(&c.nonfinite, false);
    compute_pool_run(pool, p->numel, 1 << 16, copy_chunk, &c);
    if (atomic_load(&c.nonfinite)) *finite = false;
    return atomic_load(&c.faulted) ? -1 : 0;
}

/* The step's copy-out: which entries went back into the segment already. */
typedef struct publish_context {
    compute_pool *pool;
    optimd_shm_attachment *a;
    uint64_t serial;           /* entries[].published == serial: written out */
    bool shrank;
} publish_context;

/* step_extras.updated: the parameter the plugin just updated goes into the
 * segment, checked for NaN and infinity in the same pass. */
static bool publish_updated(void *ctx, const session *s, size_t index)
{
    publish_context *pc = ctx;
    const param *p = &s->params[index];
    int64_t entry = index < pc->a->n_params ? pc->a->entry_of[index] : -1;
    if (entry < 0 || pc->shrank)
        return optimd_all_finite_parallel(pc->pool, p->data, (size_t)p->numel, wire_dtype_size(p->dtype));
    optimd_shm_entry *e = &pc->a->entries[entry];
    bool finite = true;
    if (copy_tensor(pc->pool, &pc->a->seg, p, p->data, e->param_offset, true, &finite) != 0) {
        pc->shrank = true;
        return optimd_all_finite_parallel(pc->pool, p->data, (size_t)p->numel, wire_dtype_size(p->dtype));
    }
    e->published = pc->serial;
    return finite;
}

int optimd_shm_step(session *s, const msgpack_object *names, const msgpack_object *request,
                    const step_identity *id, const step_clip *clip, compute_pool *pool, store *st,
                    step_result *res, bool *detached, request_error *err)
{
    *detached = false;
    optimd_shm_attachment *a = s->shm;
    if (!a)
        return fail(err, OPTIMD_E_BAD_REQUEST, "session '%s' has no shared memory segment attached (shm_attach "
                    "first; see docs/protocol.md for when an attachment ends)", s->name);
    size_t *which = NULL, n = 0;
    if (select_entries(s, a, names, &which, &n, err)) return -1;
    int rc = 0;
    /* The size check gives the usual case a clear message up front; the
     * guarded copy catches a truncation that races with it. */
    if (!optimd_shm_intact(&a->seg, err)) rc = -1;
    uint64_t tensor_bytes = 0;
    bool all_finite = true;
    for (size_t k = 0; rc == 0 && k < n; k++) {
        const optimd_shm_entry *e = &a->entries[which[k]];
        const param *p = &s->params[e->param];
        tensor_bytes += p->nbytes;
        if (copy_tensor(pool, &a->seg, p, e->staging, e->grad_offset, false, &all_finite))
            rc = fail(err, OPTIMD_E_BAD_REQUEST, "shared memory segment %s shrank while gradients were read "
                      "from it", a->seg.name);
    }
    if (rc) {
        /* A segment that shrank is useless from now on: its owner must
         * attach a good one. Nothing was applied. */
        char msg[sizeof err->message];
        snprintf(msg, sizeof msg, "%s", err->message);
        optimd_shm_detach(s);
        fail(err, OPTIMD_E_BAD_REQUEST, "%.180s; nothing applied, segment detached", msg);
        free(which);
        return -1;
    }
    grads_object g;
    publish_context pc = {.pool = pool, .a = a, .serial = a->serial};
    rc = build_grads(s, a, which, n, &g, err);
    if (rc == 0) {
        /* A non-finite gradient is left for session_step to find again
         * and refuse: it answers a duplicate first, as for a wire step. */
        log_context lc = {.st = st, .grads = &g, .request = request, .tensor_bytes = tensor_bytes};
        step_extras extras = {.grads_finite = all_finite, .updated = publish_updated, .updated_ctx = &pc};
        rc = session_step(s, &g.map, id, clip, &extras, pool, log_as_wire_step, &lc, res, err);
    }
    free_grads(&g);
    /* Applied (or a duplicate, answered with the current values, as a wire
     * step answers one): the parameters not written out during the step
     * (a duplicate's, with lookahead: all) go back into the segment. */
    for (size_t k = 0; rc == 0 && !pc.shrank && k < n; k++) {
        const optimd_shm_entry *e = &a->entries[which[k]];
        if (e->published == pc.serial) continue;
        bool unused = true;
        pc.shrank = copy_tensor(pool, &a->seg, &s->params[e->param], s->params[e->param].data, e->param_offset,
                                true, &unused) != 0;
    }
    if (pc.shrank) {
        log_warn("session %s: shared memory segment %s shrank during step %llu; the step stands, the "
                 "segment is detached", s->name, a->seg.name, (unsigned long long)res->steps);
        optimd_shm_detach(s);
        *detached = true;
    }
    free(which);
    return rc;
}
