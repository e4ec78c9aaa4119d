#include "session.h"

#include "hparams.h"
#include "host.h"
#include "log.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static int sched_lr(const session *s, int64_t epoch, double last_lr, double *out,
                    request_error *err)
{
    if (!s->sched) {
        *out = s->hp[s->opt->lr_index];
        return 0;
    }
    optimd_sched_args a = {.struct_size = sizeof a, .n_hparams = s->sched->n_hparams,
                           .hparams = s->sched_hp, .epoch = epoch,
                           .base_lr = s->base_lr, .last_lr = last_lr};
    host_call hc;
    host_call_begin(&hc, s->sched->desc->id, NULL);
    double lr = NAN;
    optimd_status st = s->sched->desc->scheduler->lr(&hc.table, &a, &lr);
    host_call_end(&hc);
    if (st != OPTIMD_OK || !isfinite(lr))
        return fail(err, OPTIMD_E_PLUGIN, "scheduler %s failed at epoch %lld: %s", s->sched->desc->id,
                    (long long)epoch, hc.call.error[0] ? hc.call.error : "no finite lr");
    *out = lr;
    return 0;
}

static void make_token(char out[SESSION_TOKEN_LEN + 1])
{
    unsigned char raw[SESSION_TOKEN_LEN / 2];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n > 0) got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[SESSION_TOKEN_LEN] = '\0';
}

static void param_release(const session *s, param *p)
{
    free(p->data);
    if (p->slots) {
        for (uint32_t i = 0; i < s->opt->desc->optimizer->n_slots; i++) free(p->slots[i]);
        free(p->slots);
    }
}

static void session_destroy(session *s)
{
    for (size_t i = 0; i < s->n_params; i++) {
        param_release(s, &s->params[i]);
        free(s->names[i]);
    }
    free(s->params);
    free(s->names);
    for (size_t i = 0; i < s->n_clients; i++) free(s->clients[i].client);
    free(s->clients);
    if (s->wal_fd >= 0) close(s->wal_fd);
    name_index_free(&s->index);
    free(s->hp);
    free(s->sched_hp);
    pthread_mutex_destroy(&s->mutex);
    free(s);
}

/* A session with default hyperparameters and no parameters. */
static session *session_alloc(const char *name, const plugin *opt, const plugin *sched,
                              request_error *err)
{
    session *s = calloc(1, sizeof *s);
    if (!s) {
        fail(err, OPTIMD_E_NOMEM, "out of memory");
        return NULL;
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    s->wal_fd = -1;
    atomic_init(&s->refs, 1);
    atomic_init(&s->last_used, session_monotonic_seconds());
    pthread_mutex_init(&s->mutex, NULL);
    name_index_init(&s->index);
    s->opt = opt;
    s->sched = sched;
    s->hp = calloc(opt->n_hparams ? opt->n_hparams : 1, sizeof *s->hp);
    s->sched_hp = calloc(sched && sched->n_hparams ? sched->n_hparams : 1, sizeof *s->sched_hp);
    if (!s->hp || !s->sched_hp) {
        fail(err, OPTIMD_E_NOMEM, "out of memory");
        session_destroy(s);
        return NULL;
    }
    hparams_defaults(opt, s->hp);
    if (sched) hparams_defaults(sched, s->sched_hp);
    return s;
}

session *session_restore(const char *name, const char *token, const plugin *opt,
                         const plugin *sched, request_error *err)
{
    session *s = session_alloc(name, opt, sched, err);
    if (s) snprintf(s->token, sizeof s->token, "%s", token);
    return s;
}

session *session_create(const char *name, const plugin *opt, const msgpack_object *hp_map,
                        const plugin *sched, const msgpack_object *sched_map,
                        request_error *err)
{
    session *s = session_alloc(name, opt, sched, err);
    if (!s) return NULL;
    if (hparams_apply(opt, hp_map, false, s->hp, NULL, err) || hparams_validate(opt, s->hp, err))
        goto fail_out;
    if (sched) {
        if (hparams_apply(sched, sched_map, false, s->sched_hp, NULL, err) ||
            hparams_validate(sched, s->sched_hp, err))
            goto fail_out;
    } else if (sched_map && sched_map->via.map.size) {
        fail(err, OPTIMD_E_BAD_REQUEST, "'sched_hparams' given without a scheduler");
        goto fail_out;
    }
    s->base_lr = s->hp[opt->lr_index];
    if (sched_lr(s, 0, s->base_lr, &s->lr, err)) goto fail_out;
    make_token(s->token);
    return s;
fail_out:
    session_destroy(s);
    return NULL;
}

void session_new_token(session *s)
{
    make_token(s->token);
    /* The old key would hand out the new token to whoever knew the old. */
    s->open_key[0] = '\0';
}

int64_t session_monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

void session_touch(session *s) { atomic_store(&s->last_used, session_monotonic_seconds()); }

void session_ref(session *s) { atomic_fetch_add(&s->refs, 1); }

void session_unref(session *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1) session_destroy(s);
}

void session_lock(session *s) { pthread_mutex_lock(&s->mutex); }
void session_unlock(session *s) { pthread_mutex_unlock(&s->mutex); }

bool session_token_matches(const session *s, const char *token, size_t len)
{
    if (len != SESSION_TOKEN_LEN) return false;
    unsigned diff = 0;
    for (size_t i = 0; i < len; i++) diff |= (unsigned char)(s->token[i] ^ token[i]);
    return diff == 0;
}

bool session_open_key_matches(const session *s, const char *key, size_t len)
{
    size_t have = strlen(s->open_key);
    if (have == 0 || len != have) return false;
    unsigned diff = 0;
    for (size_t i = 0; i < len; i++) diff |= (unsigned char)(s->open_key[i] ^ key[i]);
    return diff == 0;
}

int64_t session_find_param(const session *s, const char *name, size_t len)
{
    return name_index_find(&s->index, (const char *const *)s->names, name, len);
}

static bool valid_param_name(const char *name, size_t len)
{
    return len >= 1 && len <= PARAM_NAME_MAX && memchr(name, '\0', len) == NULL;
}

static bool dtype_supported(const session *s, uint32_t dtype)
{
    return (s->opt->desc->optimizer->dtypes >> dtype) & 1u;
}

int session_register(session *s, const msgpack_object *params, session_commit_fn commit, void *ctx,
                     request_error *err)
{
    uint32_t n = params->via.map.size;
    if (s->n_params + n > SESSION_MAX_PARAMS)
        return fail(err, OPTIMD_E_LIMIT, "a session holds at most %d parameters", SESSION_MAX_PARAMS);
    /* Check everything first: names, duplicates, tensors. */
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &params->via.map.ptr[i];
        const char *name;
        size_t len;
        if (wire_key(kv, &name, &len, err)) return -1;
        if (!valid_param_name(name, len))
            return fail(err, OPTIMD_E_BAD_REQUEST, "parameter names are 1 to %d bytes without NUL",
                        PARAM_NAME_MAX);
        if (session_find_param(s, name, len) >= 0)
            return fail(err, OPTIMD_E_PARAM_EXISTS, "parameter '%.*s' is already registered", (int)len,
                        name);
        for (uint32_t j = 0; j < i; j++) {
            const msgpack_object *k = &params->via.map.ptr[j].key;
            if (k->via.str.size == len && memcmp(k->via.str.ptr, name, len) == 0)
                return fail(err, OPTIMD_E_PARAM_EXISTS, "parameter '%.*s' is given twice", (int)len, name);
        }
        wire_tensor t;
        char what[PARAM_NAME_MAX + 1];
        snprintf(what, sizeof what, "%.*s", (int)len, name);
        if (wire_decode_tensor(&kv->val, what, &t, err)) return -1;
        if (!dtype_supported(s, t.dtype))
            return fail(err, OPTIMD_E_BAD_TENSOR, "optimizer '%s' does not update %s tensors",
                        s->opt->desc->id, wire_dtype_name(t.dtype));
    }
    if (commit && commit(ctx, s, err)) return -1;
    /* Then allocate; on failure undo this request's parameters only. */
    size_t first = s->n_params;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &params->via.map.ptr[i];
        wire_tensor t;
        request_error ignored;
        wire_decode_tensor(&kv->val, "", &t, &ignored);
        if (session_append_param(s, kv->key.via.str.ptr, kv->key.via.str.size, t.dtype, t.ndim,
                                 t.shape, t.data))
            goto undo;
    }
    s->version++;
    return 0;
undo:
    /* The index cannot drop entries, so rebuild it from what remains. */
    while (s->n_params > first) {
        s->n_params--;
        param_release(s, &s->params[s->n_params]);
        free(s->names[s->n_params]);
    }
    name_index_free(&s->index);
    name_index_init(&s->index);
    for (size_t i = 0; i < s->n_params; i++)
        if (name_index_insert(&s->index, (const char *const *)s->names, (uint32_t)i))
            log_error("session %s: index rebuild failed after out-of-memory", s->name);
    return fail(err, OPTIMD_E_NOMEM, "out of memory registering parameters");
}

int session_append_param(session *s, const char *name, size_t name_len, uint32_t dtype,
                         uint32_t ndim, const int64_t *shape, const void *data)
{
    if (s->n_params == s->cap_params) {
        size_t cap = s->cap_params ? s->cap_params * 2 : 8;
        param *ps = realloc(s->params, cap * sizeof *ps);
        if (ps) s->params = ps;
        char **names = ps ? realloc(s->names, cap * sizeof *names) : NULL;
        if (names) s->names = names;
        if (!ps || !names) return -1;
        s->cap_params = cap;
    }
    param *p = &s->params[s->n_params];
    memset(p, 0, sizeof *p);
    p->dtype = dtype;
    p->ndim = ndim;
    p->numel = 1;
    int64_t stride = 1;
    for (int d = (int)ndim - 1; d >= 0; d--) {
        p->shape[d] = shape[d];
        p->strides[d] = stride;
        /* A zero dimension counts as one for strides, as torch has it. */
        stride *= shape[d] ? shape[d] : 1;
        p->numel *= shape[d];
    }
    p->nbytes = (size_t)p->numel * wire_dtype_size(dtype);
    p->data = aligned_alloc(64, (p->nbytes + 63) / 64 * 64 + 64);
    char *name_copy = strndup(name, name_len);
    if (!p->data || !name_copy) {
        free(p->data);
        free(name_copy);
        return -1;
    }
    memcpy(p->data, data, p->nbytes);
    s->names[s->n_params] = name_copy;
    s->n_params++;
    if (name_index_insert(&s->index, (const char *const *)s->names, (uint32_t)(s->n_params - 1))) {
        s->n_params--;
        param_release(s, p);
        free(name_copy);
        return -1;
    }
    return 0;
}

static bool all_finite(const wire_tensor *g)
{
    /* memcpy per element: the bytes may be unaligned in the message. */
    const unsigned char *b = g->data;
    if (g->dtype == OPTIMD_DTYPE_F32) {
        for (int64_t i = 0; i < g->numel; i++) {
            uint32_t bits;
            memcpy(&bits, b + 4 * i, 4);
            if ((bits & 0x7f800000u) == 0x7f800000u) return false;
        }
    } else {
        for (int64_t i = 0; i < g->numel; i++) {
            uint64_t bits;
            memcpy(&bits, b + 8 * i, 8);
            if ((bits & 0x7ff0000000000000ull) == 0x7ff0000000000000ull) return false;
        }
    }
    return true;
}

static bool slot_enabled(const session *s, const optimd_slot_def *d)
{
    if (!d->enabled_by) return true;
    int h = plugin_hparam_index(s->opt, d->enabled_by, strlen(d->enabled_by));
    return h >= 0 && s->hp[h] != 0.0;
}

void session_slot_layout(const session *s, const param *p, uint32_t k, slot_layout *out)
{
    const optimd_slot_def *d = &s->opt->desc->optimizer->slots[k];
    memset(out, 0, sizeof *out);
    out->dtype = d->dtype ? d->dtype : p->dtype;
    bool factored = p->ndim >= 2 && (d->shape == OPTIMD_SLOT_ROWS || d->shape == OPTIMD_SLOT_COLS);
    if (d->shape == OPTIMD_SLOT_SCALAR || (d->shape == OPTIMD_SLOT_COLS && p->ndim < 2)) {
        out->ndim = 0;
    } else if (factored) {
        /* [..., r, c] -> [..., r] (rows) or [..., c] (columns). */
        out->ndim = p->ndim - 1;
        memcpy(out->shape, p->shape, (p->ndim - 2) * sizeof *out->shape);
        out->shape[p->ndim - 2] = p->shape[d->shape == OPTIMD_SLOT_ROWS ? p->ndim - 2 : p->ndim - 1];
    } else {
        out->ndim = p->ndim;
        memcpy(out->shape, p->shape, p->ndim * sizeof *out->shape);
    }
    out->numel = 1;
    for (uint32_t i = out->ndim; i-- > 0;) {
        out->strides[i] = out->numel;
        out->numel *= out->shape[i];
    }
    out->nbytes = (size_t)out->numel * wire_dtype_size(out->dtype);
}

/* Zero-filled slots for a parameter's first step. */
int session_ensure_slots(const session *s, param *p)
{
    const optimd_optimizer *o = s->opt->desc->optimizer;
    if (p->slots || o->n_slots == 0) return 0;
    void **slots = calloc(o->n_slots, sizeof *slots);
    if (!slots) return -1;
    for (uint32_t i = 0; i < o->n_slots; i++) {
        if (!slot_enabled(s, &o->slots[i])) continue;
        slot_layout l;
        session_slot_layout(s, p, i, &l);
        size_t bytes = l.nbytes;
        slots[i] = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
        if (!slots[i]) {
            for (uint32_t j = 0; j < i; j++) free(slots[j]);
            free(slots);
            return -1;
        }
        memset(slots[i], 0, bytes);
    }
    p->slots = slots;
    return 0;
}

typedef struct pending_grad {
    param *p;
    wire_tensor g;
    void *aligned_copy;        /* set when the message held it unaligned */
} pending_grad;

static void tensor_view(optimd_tensor *v, uint32_t dtype, const param *p, void *data)
{
    memset(v, 0, sizeof *v);
    v->struct_size = sizeof *v;
    v->dtype = dtype;
    v->data = data;
    v->numel = p->numel;
    v->ndim = p->ndim;
    v->shape = p->shape;
    v->strides = p->strides;
}

static void slot_view(optimd_tensor *v, const slot_layout *l, void *data)
{
    memset(v, 0, sizeof *v);
    v->struct_size = sizeof *v;
    v->dtype = l->dtype;
    v->data = data;
    v->numel = l->numel;
    v->ndim = l->ndim;
    /* ABI: shape and strides are NULL for a 0-dimensional tensor. */
    v->shape = l->ndim ? l->shape : NULL;
    v->strides = l->ndim ? l->strides : NULL;
}

client_seq *session_client(session *s, const char *client, size_t len, bool create)
{
    for (size_t i = 0; i < s->n_clients; i++)
        if (strlen(s->clients[i].client) == len && memcmp(s->clients[i].client, client, len) == 0)
            return &s->clients[i];
    if (!create) return NULL;
    if (s->n_clients == SESSION_MAX_CLIENTS) {
        /* Full: forget the client whose latest step is the oldest (short-
         * lived processes with fresh ids would otherwise fill the table
         * for good). Only that client loses its protection against a
         * replayed retry. */
        size_t oldest = 0;
        for (size_t i = 1; i < s->n_clients; i++)
            if (s->clients[i].steps < s->clients[oldest].steps) oldest = i;
        char *id = strndup(client, len);
        if (!id) return NULL;
        free(s->clients[oldest].client);
        memset(&s->clients[oldest], 0, sizeof s->clients[oldest]);
        s->clients[oldest].client = id;
        return &s->clients[oldest];
    }
    client_seq *grown = realloc(s->clients, (s->n_clients + 1) * sizeof *grown);
    if (!grown) return NULL;
    s->clients = grown;
    client_seq *c = &s->clients[s->n_clients];
    memset(c, 0, sizeof *c);
    c->client = strndup(client, len);
    if (!c->client) return NULL;
    s->n_clients++;
    return c;
}

/* Marks the named parameters the session has, for a duplicate's reply. */
static void mark_named(session *s, const msgpack_object *grads, uint64_t serial)
{
    for (uint32_t i = 0; i < grads->via.map.size; i++) {
        const msgpack_object *k = &grads->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR) continue;
        int64_t idx = session_find_param(s, k->via.str.ptr, k->via.str.size);
        if (idx >= 0) s->params[idx].mark = serial;
    }
}

int session_step(session *s, const msgpack_object *grads, const step_identity *id, compute_pool *pool,
                 session_commit_fn commit, void *ctx, step_result *res, request_error *err)
{
    memset(res, 0, sizeof *res);
    client_seq *cs = NULL;
    if (id && id->seq) {
        if (id->client_len > CLIENT_ID_MAX)
            return fail(err, OPTIMD_E_BAD_REQUEST, "'client' is at most %d bytes", CLIENT_ID_MAX);
        cs = session_client(s, id->client, id->client_len, false);
        if (cs && id->seq <= cs->seq) {
            res->duplicate = true;
            res->steps = cs->steps;
            res->lr = cs->lr;
            res->next_lr = cs->next_lr;
            mark_named(s, grads, ++s->request_serial);
            return 0;
        }
    }
    const optimd_optimizer *o = s->opt->desc->optimizer;
    uint32_t n = grads->via.map.size;
    pending_grad *pend = calloc(n ? n : 1, sizeof *pend);
    double *hp = malloc((s->opt->n_hparams ? s->opt->n_hparams : 1) * sizeof *hp);
    optimd_tensor *slot_views = calloc(o->n_slots ? o->n_slots : 1, sizeof *slot_views);
    slot_layout *layouts = calloc(o->n_slots ? o->n_slots : 1, sizeof *layouts);
    int rc = 0;
    if (!pend || !hp || !slot_views || !layouts) {
        rc = fail(err, OPTIMD_E_NOMEM, "out of memory");
        goto out;
    }
    uint64_t serial = ++s->request_serial;

    for (uint32_t i = 0; i < n && rc == 0; i++) {
        const msgpack_object_kv *kv = &grads->via.map.ptr[i];
        const char *name;
        size_t len;
        if ((rc = wire_key(kv, &name, &len, err))) break;
        int64_t idx = session_find_param(s, name, len);
        if (idx < 0) {
            rc = fail(err, OPTIMD_E_UNKNOWN_PARAM, "no parameter '%.*s' in session '%s'",
                      (int)(len > PARAM_NAME_MAX ? PARAM_NAME_MAX : len), name, s->name);
            break;
        }
        param *p = &s->params[idx];
        if (p->mark == serial) {
            rc = fail(err, OPTIMD_E_BAD_REQUEST, "gradient for '%s' given twice", s->names[idx]);
            break;
        }
        p->mark = serial;
        pend[i].p = p;
        if ((rc = wire_decode_tensor(&kv->val, s->names[idx], &pend[i].g, err))) break;
        const wire_tensor *g = &pend[i].g;
        bool same_shape = g->dtype == p->dtype && g->ndim == p->ndim &&
                          memcmp(g->shape, p->shape, p->ndim * sizeof *p->shape) == 0;
        if (!same_shape) {
            rc = fail(err, OPTIMD_E_BAD_TENSOR,
                      "gradient for '%s' must be %s with the parameter's shape (%u dims, %lld elements)",
                      s->names[idx], wire_dtype_name(p->dtype), p->ndim, (long long)p->numel);
            break;
        }
        if (!all_finite(g))
            rc = fail(err, OPTIMD_E_NONFINITE, "gradient for '%s' holds NaN or infinity; nothing applied",
                      s->names[idx]);
    }
    if (rc) {
        /* Unmark, so a failed request leaves no trace. */
        for (uint32_t i = 0; i < n; i++)
            if (pend[i].p) pend[i].p->mark = 0;
        goto out;
    }

    for (uint32_t i = 0; i < n; i++) {
        pending_grad *pg = &pend[i];
        size_t esize = wire_dtype_size(pg->g.dtype);
        if (((uintptr_t)pg->g.data % esize) != 0) {
            pg->aligned_copy = aligned_alloc(64, (pg->g.nbytes + 63) / 64 * 64 + 64);
            if (!pg->aligned_copy) {
                rc = fail(err, OPTIMD_E_NOMEM, "out of memory");
                break;
            }
            memcpy(pg->aligned_copy, pg->g.data, pg->g.nbytes);
        }
        if (session_ensure_slots(s, pg->p)) {
            rc = fail(err, OPTIMD_E_NOMEM, "out of memory for optimizer state");
            break;
        }
    }
    if (rc) {
        for (uint32_t i = 0; i < n; i++) pend[i].p->mark = 0;
        goto out;
    }

    if (commit && commit(ctx, s, err)) {
        for (uint32_t i = 0; i < n; i++) pend[i].p->mark = 0;
        rc = -1;
        goto out;
    }
    if (id && id->seq && !cs) {
        cs = session_client(s, id->client, id->client_len, true);
        if (!cs) log_error("session %s: out of memory recording client sequence numbers", s->name);
    }

    /* From here on the step is applied. */
    memcpy(hp, s->hp, s->opt->n_hparams * sizeof *hp);
    hp[s->opt->lr_index] = s->lr;
    for (uint32_t i = 0; i < n; i++) {
        pending_grad *pg = &pend[i];
        param *p = pg->p;
        optimd_tensor pv, gv;
        tensor_view(&pv, p->dtype, p, p->data);
        tensor_view(&gv, p->dtype, p, pg->aligned_copy ? pg->aligned_copy : (void *)pg->g.data);
        for (uint32_t k = 0; k < o->n_slots; k++) {
            session_slot_layout(s, p, k, &layouts[k]);
            slot_view(&slot_views[k], &layouts[k], p->slots ? p->slots[k] : NULL);
        }
        optimd_step_args a = {.struct_size = sizeof a, .n_hparams = s->opt->n_hparams,
                              .hparams = hp, .step = p->steps + 1, .param = &pv, .grad = &gv,
                              .slots = slot_views, .n_slots = o->n_slots};
        host_call hc;
        host_call_begin(&hc, s->opt->desc->id, pool);
        optimd_status st = o->step(&hc.table, &a);
        host_call_end(&hc);
        if (st != OPTIMD_OK) {
            /* Parameters before this one are already updated; a plugin may
             * refuse only what it could have refused in check_hparams, so
             * this is a plugin bug and is logged as one. */
            log_error("session %s: plugin %s failed on '%s' (status %d): %s", s->name,
                      s->opt->desc->id, s->names[p - s->params], st, hc.call.error);
            rc = fail(err, OPTIMD_E_PLUGIN, "%s: %s", s->opt->desc->id,
                      hc.call.error[0] ? hc.call.error : "step failed");
            goto out;
        }
        p->steps++;
    }
    res->lr = s->lr;
    s->steps++;
    s->version++;
    double next;
    if (sched_lr(s, (int64_t)s->steps, s->lr, &next, err)) {
        /* Keep the last lr rather than stop the session. */
        log_error("session %s: %s", s->name, err->message);
        err->code = 0;
    } else {
        s->lr = next;
    }
    res->steps = s->steps;
    res->next_lr = s->lr;
    if (cs) {
        cs->seq = id->seq;
        cs->steps = res->steps;
        cs->lr = res->lr;
        cs->next_lr = res->next_lr;
    }
out:
    if (pend)
        for (uint32_t i = 0; i < n; i++) free(pend[i].aligned_copy);
    free(pend);
    free(hp);
    free(slot_views);
    free(layouts);
    return rc;
}

int session_set_hparams(session *s, const msgpack_object *map, session_commit_fn commit, void *ctx,
                        request_error *err)
{
    double *staged = malloc((s->opt->n_hparams ? s->opt->n_hparams : 1) * sizeof *staged);
    if (!staged) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    memcpy(staged, s->hp, s->opt->n_hparams * sizeof *staged);
    int rc = hparams_apply(s->opt, map, true, staged, NULL, err);
    if (rc == 0) rc = hparams_validate(s->opt, staged, err);
    if (rc == 0 && commit) rc = commit(ctx, s, err);
    if (rc == 0) {
        double old_lr = s->hp[s->opt->lr_index];
        memcpy(s->hp, staged, s->opt->n_hparams * sizeof *staged);
        if (staged[s->opt->lr_index] != old_lr || wire_map_get(map, "lr"))
            s->lr = staged[s->opt->lr_index];
        s->version++;
    }
    free(staged);
    return rc;
}
