#include "session.h"

#include "workers.h"

#include "grad_clip.h"

#include "finite.h"
#include "metrics.h"
#include "hparams.h"
#include "host.h"
#include "log.h"
#include "shm_attachment.h"
#include "sliced_step.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static optimd_sched_args sched_args(const param_group *g, int64_t epoch, double last_lr)
{
    return (optimd_sched_args){.struct_size = sizeof(optimd_sched_args),
                               .n_hparams = g->sched->n_hparams, .hparams = g->sched_hp,
                               .epoch = epoch, .base_lr = g->base_lr, .last_lr = last_lr,
                               .state = g->sched->n_sched_state ? (double *)g->sched_state : NULL};
}

/* One scheduler plugin's lr (want_momentum false) or momentum at `epoch`. */
static int call_sched(const plugin *p, const double *hp, const double *state, int64_t epoch, double base_lr,
                      double last_lr, bool want_momentum, double *out, request_error *err)
{
    optimd_sched_args a = {.struct_size = sizeof a, .n_hparams = p->n_hparams, .hparams = hp,
                           .epoch = epoch, .base_lr = base_lr, .last_lr = last_lr,
                           .state = p->n_sched_state ? (double *)state : NULL};
    *out = NAN;
    if (want_momentum && !p->sched_momentum) return 0;
    host_call hc;
    host_call_begin(&hc, p->desc->id, NULL);
    optimd_status st = want_momentum ? p->sched_momentum(&hc.table, &a, out)
                                     : p->desc->scheduler->lr(&hc.table, &a, out);
    host_call_end(&hc);
    if (st != OPTIMD_OK || (!want_momentum && !isfinite(*out)))
        return fail(err, OPTIMD_E_PLUGIN, "scheduler %s failed at epoch %lld: %s", p->desc->id,
                    (long long)epoch,
                    hc.call.error[0] ? hc.call.error : want_momentum ? "no momentum" : "no finite lr");
    return 0;
}

/* Which part of a sequential schedule runs at `epoch`, and at which of its
 * own epochs: torch's SequentialLR, bisect_right over the milestones; at a
 * milestone the part restarts with step(0), its closed form at epoch 0. */
static uint32_t sequential_part(const param_group *g, int64_t epoch, int64_t *part_epoch)
{
    uint32_t idx = 0;
    while (idx < g->n_parts - 1 && g->milestones[idx] <= epoch) idx++;
    *part_epoch = idx ? epoch - g->milestones[idx - 1] : epoch;
    return idx;
}

/* The lr of group `g` at `epoch`, following `last_lr`. */
static int sched_lr(const session *s, const param_group *g, int64_t epoch, double last_lr, double *out,
                    request_error *err)
{
    if (g->combine == SCHED_SEQUENTIAL) {
        int64_t pe;
        uint32_t k = sequential_part(g, epoch, &pe);
        return call_sched(g->parts[k], g->part_hp[k], NULL, pe, g->base_lr, pe == 0 ? g->base_lr : last_lr,
                          false, out, err);
    }
    if (g->combine == SCHED_CHAINED) {
        /* torch's ChainedScheduler: each part steps from the lr the one
         * before it left; at epoch 0 (construction) each part starts from
         * that lr as its base, as a scheduler built on an optimizer whose
         * lr another one already changed does. */
        double lr = last_lr;
        for (uint32_t k = 0; k < g->n_parts; k++)
            if (call_sched(g->parts[k], g->part_hp[k], NULL, epoch, epoch == 0 ? lr : g->base_lr, lr, false,
                           &lr, err))
                return -1;
        *out = lr;
        return 0;
    }
    if (!g->sched) {
        *out = g->hp[s->opt->lr_index];
        return 0;
    }
    optimd_sched_args a = sched_args(g, epoch, last_lr);
    return call_sched(g->sched, g->sched_hp, a.state, epoch, a.base_lr, last_lr, false, out, err);
}

/* The momentum a cycling scheduler sets at `epoch` (NaN: leave it). */
static int sched_momentum(const param_group *g, int64_t epoch, double *out, request_error *err)
{
    *out = NAN;
    if (g->combine == SCHED_SEQUENTIAL) {
        int64_t pe;
        uint32_t k = sequential_part(g, epoch, &pe);
        return call_sched(g->parts[k], g->part_hp[k], NULL, pe, g->base_lr, g->lr, true, out, err);
    }
    if (g->combine == SCHED_CHAINED) {
        /* Each part that cycles momentum writes it in turn; the last wins. */
        for (uint32_t k = 0; k < g->n_parts; k++) {
            double m;
            if (call_sched(g->parts[k], g->part_hp[k], NULL, epoch, g->base_lr, g->lr, true, &m, err)) return -1;
            if (!isnan(m)) *out = m;
        }
        return 0;
    }
    if (!g->sched) return 0;
    return call_sched(g->sched, g->sched_hp, g->sched_state, epoch, g->base_lr, g->lr, true, out, err);
}

const char *sched_combine_name(int combine)
{
    return combine == SCHED_SEQUENTIAL ? "sequential" : combine == SCHED_CHAINED ? "chained" : NULL;
}

int session_set_composite(param_group *g, int combine, const plugin *const *parts, uint32_t n,
                          const int64_t *milestones, request_error *err)
{
    for (uint32_t k = 0; k < n; k++) {
        g->part_hp[k] = calloc(parts[k]->n_hparams ? parts[k]->n_hparams : 1, sizeof *g->part_hp[k]);
        if (!g->part_hp[k]) return fail(err, OPTIMD_E_NOMEM, "out of memory");
        g->parts[k] = parts[k];
        plugin_ref(parts[k]);
        g->n_parts = k + 1;
        hparams_defaults(parts[k], g->part_hp[k]);
    }
    if (combine == SCHED_SEQUENTIAL) memcpy(g->milestones, milestones, (n - 1) * sizeof *milestones);
    g->combine = combine;
    plugin_unref(g->sched);
    g->sched = NULL;
    return 0;
}

/* Moves group `g` to `epoch`: its lr (from last_lr) and, for a scheduler
 * that cycles it, the optimizer's momentum (torch sets both in step()). */
static int sched_advance(const session *s, param_group *g, int64_t epoch, double last_lr,
                         request_error *err)
{
    double lr, m;
    if (sched_lr(s, g, epoch, last_lr, &lr, err) || sched_momentum(g, epoch, &m, err)) return -1;
    if (!isnan(m)) {
        if (s->momentum_index < 0)
            return fail(err, OPTIMD_E_BAD_HPARAM,
                        "scheduler %s cycles momentum, but optimizer %s has neither 'momentum' nor "
                        "'beta1'; set its cycle_momentum to false",
                        g->sched->desc->id, s->opt->desc->id);
        g->hp[s->momentum_index] = m;
    }
    g->lr = lr;
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
    free(p->slow);
    if (p->slots) {
        for (uint32_t i = 0; i < s->opt->desc->optimizer->n_slots; i++) free(p->slots[i]);
        free(p->slots);
    }
}

static void session_destroy(session *s)
{
    optimd_shm_detach(s);
    sliced_step_free(s->pending_step);
    for (size_t i = 0; i < s->n_params; i++) {
        param_release(s, &s->params[i]);
        free(s->names[i]);
    }
    free(s->params);
    free(s->names);
    for (size_t i = 0; i < s->n_clients; i++) free(s->clients[i].client);
    free(s->clients);
    worker_set_free(s->workers);
    if (s->wal_fd >= 0) close(s->wal_fd);
    name_index_free(&s->index);
    for (uint32_t i = 0; i < s->n_groups; i++) {
        free(s->groups[i].hp);
        free(s->groups[i].sched_hp);
        plugin_unref(s->groups[i].sched);
        for (uint32_t k = 0; k < s->groups[i].n_parts; k++) {
            free(s->groups[i].part_hp[k]);
            plugin_unref(s->groups[i].parts[k]);
        }
    }
    plugin_unref(s->opt);
    free(s->groups);
    pthread_mutex_destroy(&s->mutex);
    free(s);
}

/* Appends a group with default hyperparameters. */
static param_group *add_group(session *s, const char *name, size_t len, const plugin *sched,
                              request_error *err)
{
    if (s->n_groups == SESSION_MAX_GROUPS) {
        fail(err, OPTIMD_E_LIMIT, "a session has at most %d parameter groups", SESSION_MAX_GROUPS);
        return NULL;
    }
    param_group *grown = realloc(s->groups, (s->n_groups + 1) * sizeof *grown);
    if (!grown) {
        fail(err, OPTIMD_E_NOMEM, "out of memory");
        return NULL;
    }
    s->groups = grown;
    param_group *g = &s->groups[s->n_groups];
    memset(g, 0, sizeof *g);
    memcpy(g->name, name, len);
    g->sched = sched;
    g->hp = calloc(s->opt->n_hparams ? s->opt->n_hparams : 1, sizeof *g->hp);
    g->sched_hp = calloc(sched && sched->n_hparams ? sched->n_hparams : 1, sizeof *g->sched_hp);
    if (!g->hp || !g->sched_hp) {
        free(g->hp);
        free(g->sched_hp);
        fail(err, OPTIMD_E_NOMEM, "out of memory");
        return NULL;
    }
    s->n_groups++;
    plugin_ref(sched);
    hparams_defaults(s->opt, g->hp);
    if (sched) hparams_defaults(sched, g->sched_hp);
    return g;
}

/* A session with default hyperparameters, the default group and no
 * parameters. */
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
    plugin_ref(opt);
    s->momentum_index = plugin_hparam_index(opt, "momentum", 8);
    if (s->momentum_index < 0) s->momentum_index = plugin_hparam_index(opt, "beta1", 5);
    if (!add_group(s, DEFAULT_GROUP, strlen(DEFAULT_GROUP), sched, err)) {
        session_destroy(s);
        return NULL;
    }
    return s;
}

session *session_restore(const char *name, const char *token, const plugin *opt,
                         const plugin *sched, request_error *err)
{
    session *s = session_alloc(name, opt, sched, err);
    if (s) snprintf(s->token, sizeof s->token, "%s", token);
    return s;
}

param_group *session_restore_group(session *s, const char *name, const plugin *sched, request_error *err)
{
    if (strlen(name) > GROUP_NAME_MAX) {
        fail(err, OPTIMD_E_BAD_REQUEST, "group name too long");
        return NULL;
    }
    return add_group(s, name, strlen(name), sched, err);
}

static bool valid_group_name(const char *name, size_t len)
{
    if (len < 1 || len > GROUP_NAME_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == '-'))
            return false;
    }
    return true;
}

int session_find_group(const session *s, const char *name, size_t len)
{
    for (uint32_t i = 0; i < s->n_groups; i++)
        if (strlen(s->groups[i].name) == len && memcmp(s->groups[i].name, name, len) == 0) return (int)i;
    return -1;
}

int session_request_group(const session *s, const msgpack_object *req, bool all_if_absent, int *group,
                          request_error *err)
{
    const char *name = NULL;
    size_t len = 0;
    *group = all_if_absent ? -1 : 0;
    if (wire_get_str(req, "group", false, &name, &len, err)) return -1;
    if (!name) return 0;
    *group = session_find_group(s, name, len);
    if (*group < 0)
        return fail(err, OPTIMD_E_BAD_REQUEST, "session '%s' has no parameter group '%.*s'", s->name,
                    (int)(len > GROUP_NAME_MAX ? GROUP_NAME_MAX : len), name);
    return 0;
}

/* The default group's hyperparameters, then each group's: its own keys
 * over the default group's values (torch's defaults + per-group options). */
/* A combined schedule for `g`: its parts with their hyperparameters over
 * the defaults. */
static int apply_composite(param_group *g, const sched_composite *c, request_error *err)
{
    if (session_set_composite(g, c->combine, c->parts, c->n_parts, c->milestones, err)) return -1;
    for (uint32_t k = 0; k < c->n_parts; k++)
        if (hparams_apply(c->parts[k], c->part_hparams[k], false, g->part_hp[k], NULL, err) ||
            hparams_validate(c->parts[k], g->part_hp[k], err))
            return -1;
    return 0;
}

/* The default group's combined schedule, hyperparameters included. */
static int copy_composite(param_group *g, const param_group *from, request_error *err)
{
    if (session_set_composite(g, from->combine, from->parts, from->n_parts, from->milestones, err)) return -1;
    for (uint32_t k = 0; k < from->n_parts; k++)
        memcpy(g->part_hp[k], from->part_hp[k], from->parts[k]->n_hparams * sizeof *g->part_hp[k]);
    return 0;
}

static int configure_groups(session *s, const msgpack_object *hp_map, const msgpack_object *sched_map,
                            const sched_composite *composite, const group_spec *specs, uint32_t n_specs,
                            request_error *err)
{
    param_group *g0 = &s->groups[0];
    if (hparams_apply(s->opt, hp_map, false, g0->hp, NULL, err) || hparams_validate(s->opt, g0->hp, err))
        return -1;
    if (composite && composite->combine != SCHED_ONE && apply_composite(g0, composite, err)) return -1;
    if (g0->sched) {
        if (hparams_apply(g0->sched, sched_map, false, g0->sched_hp, NULL, err) ||
            hparams_validate(g0->sched, g0->sched_hp, err))
            return -1;
    } else if (sched_map && sched_map->via.map.size) {
        return fail(err, OPTIMD_E_BAD_REQUEST, "'sched_hparams' given without a scheduler");
    }
    for (uint32_t i = 0; i < n_specs; i++) {
        const group_spec *gs = &specs[i];
        if (!valid_group_name(gs->name, gs->name_len))
            return fail(err, OPTIMD_E_BAD_REQUEST,
                        "group names are 1 to %d bytes of A-Z a-z 0-9 _ . -", GROUP_NAME_MAX);
        if (session_find_group(s, gs->name, gs->name_len) >= 0)
            return fail(err, OPTIMD_E_BAD_REQUEST, "parameter group '%.*s' is declared twice",
                        (int)gs->name_len, gs->name);
        const plugin *sched = gs->sched_given ? gs->sched : s->groups[0].sched;
        param_group *g = add_group(s, gs->name, gs->name_len, sched, err);
        if (!g) return -1;
        g0 = &s->groups[0];
        if (gs->sched_given && gs->composite.combine != SCHED_ONE) {
            if (apply_composite(g, &gs->composite, err)) return -1;
        } else if (!gs->sched_given && g0->combine != SCHED_ONE) {
            if (copy_composite(g, g0, err)) return -1;
        }
        memcpy(g->hp, g0->hp, s->opt->n_hparams * sizeof *g->hp);
        if (hparams_apply(s->opt, gs->hparams, false, g->hp, NULL, err) || hparams_validate(s->opt, g->hp, err))
            return -1;
        if (sched) {
            /* The default group's scheduler settings carry over with it. */
            if (!gs->sched_given) memcpy(g->sched_hp, g0->sched_hp, sched->n_hparams * sizeof *g->sched_hp);
            if (hparams_apply(sched, gs->sched_hparams, false, g->sched_hp, NULL, err) ||
                hparams_validate(sched, g->sched_hp, err))
                return -1;
        } else if (gs->sched_hparams && gs->sched_hparams->via.map.size) {
            return fail(err, OPTIMD_E_BAD_REQUEST, "group '%s': 'sched_hparams' given without a scheduler",
                        g->name);
        }
    }
    for (uint32_t i = 0; i < s->n_groups; i++) {
        param_group *g = &s->groups[i];
        g->base_lr = g->hp[s->opt->lr_index];
        if (sched_advance(s, g, 0, g->base_lr, err)) return -1;
        /* A momentum the scheduler set must still satisfy the optimizer. */
        if (hparams_validate(s->opt, g->hp, err)) return -1;
    }
    return 0;
}

session *session_create(const char *name, const plugin *opt, const msgpack_object *hp_map,
                        const plugin *sched, const msgpack_object *sched_map,
                        const sched_composite *composite, const group_spec *groups, uint32_t n_groups,
                        request_error *err)
{
    session *s = session_alloc(name, opt, sched, err);
    if (!s) return NULL;
    if (configure_groups(s, hp_map, sched_map, composite, groups, n_groups, err)) {
        session_destroy(s);
        return NULL;
    }
    make_token(s->token);
    return s;
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

int session_register(session *s, const msgpack_object *params, int group, session_commit_fn commit,
                     void *ctx, request_error *err)
{
    if (group < 0 || (uint32_t)group >= s->n_groups)
        return fail(err, OPTIMD_E_INTERNAL, "register into group %d of %u", group, s->n_groups);
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
        s->params[s->n_params - 1].group = (uint32_t)group;
    }
    s->version++;
    return 0;
undo:
    /* The index cannot drop entries, so rebuild it from what remains. */
    while (s->n_params > first) {
        s->n_params--;
        atomic_fetch_sub(&s->committed_bytes, session_param_cost(s, s->params[s->n_params].nbytes));
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

uint64_t session_param_cost(const session *s, uint64_t nbytes)
{
    const optimd_optimizer *o = s->opt->desc->optimizer;
    uint64_t copies = 1 + (s->lookahead_k ? 1 : 0);
    /* Slots switched off (amsgrad false, ...) cost nothing; the default
     * group's settings stand for all (groups rarely differ there). */
    for (uint32_t k = 0; k < o->n_slots; k++) {
        const char *en = o->slots[k].enabled_by;
        int h = en ? plugin_hparam_index(s->opt, en, strlen(en)) : -1;
        bool on = !en || (h >= 0 && s->n_groups && s->groups[0].hp[h] != 0.0);
        copies += on && o->slots[k].shape != OPTIMD_SLOT_SCALAR;
    }
    return nbytes * copies;
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
    atomic_fetch_add(&s->committed_bytes, session_param_cost(s, p->nbytes));
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
    return optimd_all_finite(g->data, (size_t)g->numel, wire_dtype_size(g->dtype));
}

bool session_grad_finite(const wire_tensor *g)
{
    return all_finite(g);
}

int session_check_dense_grad(const session *s, size_t idx, const wire_tensor *g, request_error *err)
{
    const param *p = &s->params[idx];
    if (g->dtype == p->dtype && g->ndim == p->ndim && memcmp(g->shape, p->shape, p->ndim * sizeof *p->shape) == 0)
        return 0;
    return fail(err, OPTIMD_E_BAD_TENSOR, "gradient for '%s' must be %s with the parameter's shape (%u dims, "
                "%lld elements)", s->names[idx], wire_dtype_name(p->dtype), p->ndim, (long long)p->numel);
}

static bool slot_enabled(const session *s, const param *p, const optimd_slot_def *d)
{
    if (!d->enabled_by) return true;
    int h = plugin_hparam_index(s->opt, d->enabled_by, strlen(d->enabled_by));
    return h >= 0 && s->groups[p->group].hp[h] != 0.0;
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

int session_ensure_slow(const session *s, param *p)
{
    /* The slow weights start as the parameter before its first step (the
     * paper's phi_0 = theta_0). */
    if (!s->lookahead_k || p->slow) return 0;
    p->slow = aligned_alloc(64, (p->nbytes + 63) / 64 * 64 + 64);
    if (!p->slow) return -1;
    memcpy(p->slow, p->data, p->nbytes);
    return 0;
}

/* Lookahead's synchronisation, in torch's op order for a wrapper written
 * as slow.add_(param - slow, alpha=alpha); param.copy_(slow): a fused
 * multiply-add of the rounded difference (reference §1.1). */
static void lookahead_sync(const session *s, param *p)
{
    if (p->dtype == OPTIMD_DTYPE_F32) {
        float *slow = p->slow, *w = p->data, a = (float)s->lookahead_alpha;
        for (int64_t i = 0; i < p->numel; i++) {
            slow[i] = fmaf(a, w[i] - slow[i], slow[i]);
            w[i] = slow[i];
        }
    } else {
        double *slow = p->slow, *w = p->data, a = s->lookahead_alpha;
        for (int64_t i = 0; i < p->numel; i++) {
            slow[i] = fma(a, w[i] - slow[i], slow[i]);
            w[i] = slow[i];
        }
    }
}

/* Zero-filled slots for a parameter's first step. */
int session_ensure_slots(const session *s, param *p)
{
    const optimd_optimizer *o = s->opt->desc->optimizer;
    if (p->slots || o->n_slots == 0) return 0;
    void **slots = calloc(o->n_slots, sizeof *slots);
    if (!slots) return -1;
    for (uint32_t i = 0; i < o->n_slots; i++) {
        if (!slot_enabled(s, p, &o->slots[i])) continue;
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

typedef struct pending_grad pending_grad;
struct pending_grad {
    param *p;
    wire_tensor g;             /* row-sparse: the received values, [rows given, ...] */
    void *aligned_copy;        /* set when the message held it unaligned, or clipping writes
                                * it; row-sparse: the coalesced values, always */
    /* Row-sparse gradients: the rows (sorted, unique), and room to gather
     * the parameter's rows and its like-parameter slots' rows into. */
    bool sparse;
    int64_t *rows;
    int64_t n_rows;
    void *param_rows;
    void **slot_rows;
};

static void pending_free(pending_grad *pg, uint32_t n_slots)
{
    free(pg->aligned_copy);
    free(pg->rows);
    free(pg->param_rows);
    for (uint32_t k = 0; pg->slot_rows && k < n_slots; k++) free(pg->slot_rows[k]);
    free(pg->slot_rows);
}

static int cmp_row(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;
    return x[0] != y[0] ? (x[0] < y[0] ? -1 : 1) : (x[1] < y[1] ? -1 : x[1] > y[1]);
}

int session_sparse_rows(const msgpack_object *rows, int64_t n_param_rows, int64_t **out, int64_t *n_out,
                        int64_t **order, request_error *err)
{
    *out = NULL;
    *n_out = 0;
    if (order) *order = NULL;
    if (!rows || rows->type != MSGPACK_OBJECT_ARRAY)
        return fail(err, OPTIMD_E_BAD_TENSOR, "'rows' must be an array of row indices");
    uint32_t n = rows->via.array.size;
    /* (row, position) pairs, sorted stably by row: duplicates stay in the
     * order they came, which is the order their values are summed in. */
    int64_t *pairs = malloc(2 * (n ? n : 1) * sizeof *pairs);
    if (!pairs) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *r = &rows->via.array.ptr[i];
        if (r->type != MSGPACK_OBJECT_POSITIVE_INTEGER || r->via.u64 >= (uint64_t)n_param_rows) {
            free(pairs);
            return fail(err, OPTIMD_E_BAD_TENSOR, "row index %u is not an integer in [0, %lld)", i,
                        (long long)n_param_rows);
        }
        pairs[2 * i] = (int64_t)r->via.u64;
        pairs[2 * i + 1] = i;
    }
    qsort(pairs, n, 2 * sizeof *pairs, cmp_row);
    int64_t *unique = malloc((n ? n : 1) * sizeof *unique);
    if (!unique) {
        free(pairs);
        return fail(err, OPTIMD_E_NOMEM, "out of memory");
    }
    int64_t m = 0;
    for (uint32_t i = 0; i < n; i++)
        if (m == 0 || unique[m - 1] != pairs[2 * i]) unique[m++] = pairs[2 * i];
    if (order) {
        for (uint32_t i = 0; i < n; i++) pairs[i] = pairs[2 * i + 1];
        *order = pairs;
    } else {
        free(pairs);
    }
    *out = unique;
    *n_out = m;
    return 0;
}

/* A row-sparse gradient {rows, values} for parameter `p`: checks it and
 * coalesces it (torch's coalesce(): duplicate rows summed) into
 * pg->rows / pg->aligned_copy. */
static int decode_sparse(const session *s, pending_grad *pg, const msgpack_object *obj, const char *what,
                         request_error *err)
{
    const param *p = pg->p;
    const optimd_optimizer *o = s->opt->desc->optimizer;
    for (uint32_t k = 0; k < o->n_slots; k++)
        if (o->slots[k].shape != OPTIMD_SLOT_LIKE_PARAM && o->slots[k].shape != OPTIMD_SLOT_SCALAR)
            return fail(err, OPTIMD_E_BAD_TENSOR, "optimizer '%s' keeps factored state; it takes no "
                        "row-sparse gradient ('%s')", s->opt->desc->id, what);
    if (p->ndim < 1)
        return fail(err, OPTIMD_E_BAD_TENSOR, "'%s' has no rows: a row-sparse gradient needs a parameter "
                    "of at least one dimension", what);
    const msgpack_object *values = wire_map_get(obj, "values");
    if (!values) return fail(err, OPTIMD_E_BAD_TENSOR, "row-sparse gradient for '%s' lacks 'values'", what);
    if (wire_decode_tensor(values, what, &pg->g, err)) return -1;
    const msgpack_object *rows = wire_map_get(obj, "rows");
    uint32_t given = rows && rows->type == MSGPACK_OBJECT_ARRAY ? rows->via.array.size : 0;
    bool shape_ok = pg->g.dtype == p->dtype && pg->g.ndim == p->ndim && pg->g.shape[0] == (int64_t)given &&
                    memcmp(pg->g.shape + 1, p->shape + 1, (p->ndim - 1) * sizeof *p->shape) == 0;
    if (rows && rows->type == MSGPACK_OBJECT_ARRAY && !shape_ok)
        return fail(err, OPTIMD_E_BAD_TENSOR, "row-sparse gradient for '%s': 'values' must be %s of shape "
                    "[%u, <the parameter's other dimensions>]", what, wire_dtype_name(p->dtype), given);
    int64_t *order;
    if (session_sparse_rows(rows, p->shape[0], &pg->rows, &pg->n_rows, &order, err)) return -1;
    if (!all_finite(&pg->g)) {
        free(order);
        return fail(err, OPTIMD_E_NONFINITE, "gradient for '%s' holds NaN or infinity; nothing applied", what);
    }
    int64_t row_len = p->shape[0] ? p->numel / p->shape[0] : 0;
    size_t esize = wire_dtype_size(p->dtype), row_bytes = (size_t)row_len * esize;
    size_t bytes = (size_t)pg->n_rows * row_bytes;
    pg->aligned_copy = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (!pg->aligned_copy) {
        free(order);
        return fail(err, OPTIMD_E_NOMEM, "out of memory");
    }
    /* Sum in arrival order: `order` lists positions sorted by row. */
    const unsigned char *src = pg->g.data;
    unsigned char *dst = pg->aligned_copy;
    int64_t out = -1, last_row = -1;
    for (uint32_t i = 0; i < given; i++) {
        int64_t pos = order[i];
        int64_t row = (int64_t)rows->via.array.ptr[pos].via.u64;
        const unsigned char *v = src + (size_t)pos * row_bytes;
        if (row != last_row) {
            out++;
            last_row = row;
            memcpy(dst + (size_t)out * row_bytes, v, row_bytes);
            continue;
        }
        for (int64_t j = 0; j < row_len; j++) {
            if (p->dtype == OPTIMD_DTYPE_F32) {
                float a, b;
                memcpy(&a, dst + (size_t)out * row_bytes + 4 * j, 4);
                memcpy(&b, v + 4 * j, 4);
                a = a + b;
                memcpy(dst + (size_t)out * row_bytes + 4 * j, &a, 4);
            } else {
                double a, b;
                memcpy(&a, dst + (size_t)out * row_bytes + 8 * j, 8);
                memcpy(&b, v + 8 * j, 8);
                a = a + b;
                memcpy(dst + (size_t)out * row_bytes + 8 * j, &a, 8);
            }
        }
    }
    free(order);
    /* The coalesced gradient as the plugin will see it. */
    pg->g.shape[0] = pg->n_rows;
    pg->g.numel = pg->n_rows * row_len;
    pg->g.nbytes = bytes;
    pg->g.data = pg->aligned_copy;
    pg->sparse = true;
    pg->param_rows = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    pg->slot_rows = calloc(o->n_slots ? o->n_slots : 1, sizeof *pg->slot_rows);
    if (!pg->param_rows || !pg->slot_rows) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    for (uint32_t k = 0; k < o->n_slots; k++) {
        if (o->slots[k].shape != OPTIMD_SLOT_LIKE_PARAM) continue;
        uint32_t dt = o->slots[k].dtype ? o->slots[k].dtype : p->dtype;
        size_t sb = (size_t)pg->n_rows * (size_t)row_len * wire_dtype_size(dt);
        if (!(pg->slot_rows[k] = aligned_alloc(64, (sb + 63) / 64 * 64 + 64)))
            return fail(err, OPTIMD_E_NOMEM, "out of memory");
    }
    return 0;
}

/* True when every element of a (contiguous) tensor is finite. */
bool session_tensor_finite(const optimd_tensor *t)
{
    return optimd_all_finite(t->data, (size_t)t->numel, wire_dtype_size(t->dtype));
}

/* Copies rows `rows` of a [n, row_len] buffer to or from a compact one. */
static void move_rows(void *full, void *compact, const int64_t *rows, int64_t n, size_t row_bytes, bool gather)
{
    for (int64_t i = 0; i < n; i++) {
        unsigned char *f = (unsigned char *)full + (size_t)rows[i] * row_bytes;
        unsigned char *c = (unsigned char *)compact + (size_t)i * row_bytes;
        if (gather) memcpy(c, f, row_bytes);
        else memcpy(f, c, row_bytes);
    }
}

void session_tensor_view(optimd_tensor *v, uint32_t dtype, const param *p, void *data)
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

void session_slot_view(optimd_tensor *v, const slot_layout *l, void *data)
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

void session_record_seq(session *s, const char *client, size_t len, uint64_t seq, const step_result *res)
{
    client_seq *cs = session_client(s, client, len, true);
    if (!cs) {
        log_error("session %s: out of memory recording client sequence numbers", s->name);
        return;
    }
    cs->seq = seq;
    cs->steps = res->steps;
    cs->lr = res->lr;
    cs->next_lr = res->next_lr;
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

static int clip_gradients(const session *s, pending_grad *pend, uint32_t n, const step_clip *clip,
                          step_result *res);

int session_step(session *s, const msgpack_object *grads, const step_identity *id, const step_clip *clip,
                 const step_extras *extras, compute_pool *pool, session_commit_fn commit, void *ctx,
                 step_result *res, request_error *err)
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
    if (session_refuse_if_pending(s, "a whole step", err)) return -1;
    if (s->stopped[0])
        return fail(err, OPTIMD_E_PLUGIN, "session '%s' is stopped (%s): switch it to another optimizer, "
                    "load a fixed plugin version, or close it", s->name, s->stopped);
    const optimd_optimizer *o = s->opt->desc->optimizer;
    uint32_t n = grads->via.map.size;
    pending_grad *pend = calloc(n ? n : 1, sizeof *pend);
    uint32_t n_hp;
    double *hp = session_step_hparams(s, &n_hp);
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
        if (kv->val.type == MSGPACK_OBJECT_MAP && wire_map_get(&kv->val, "offset")) {
            rc = fail(err, OPTIMD_E_BAD_REQUEST, "'%s': a range gradient {offset, values} belongs in a part of a "
                      "sliced step ('part')", s->names[idx]);
            break;
        }
        if (kv->val.type == MSGPACK_OBJECT_MAP && wire_map_get(&kv->val, "rows")) {
            if ((rc = decode_sparse(s, &pend[i], &kv->val, s->names[idx], err))) break;
            continue;
        }
        if ((rc = wire_decode_tensor(&kv->val, s->names[idx], &pend[i].g, err))) break;
        const wire_tensor *g = &pend[i].g;
        if ((rc = session_check_dense_grad(s, (size_t)idx, g, err))) break;
        bool checked = extras && extras->grads_finite;
        if (!checked && !optimd_all_finite_parallel(pool, g->data, (size_t)g->numel, wire_dtype_size(g->dtype)))
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
        /* Clipping writes the gradient; the received one stays as logged. */
        bool clipping = clip && (clip->value > 0 || clip->max_norm > 0);
        bool unaligned = ((uintptr_t)pg->g.data % esize) != 0;
        if (!pg->sparse && unaligned) metrics_unaligned_gradient(pg->g.nbytes);
        if (!pg->sparse && (clipping || unaligned)) {
            pg->aligned_copy = aligned_alloc(64, (pg->g.nbytes + 63) / 64 * 64 + 64);
            if (!pg->aligned_copy) {
                rc = fail(err, OPTIMD_E_NOMEM, "out of memory");
                break;
            }
            memcpy(pg->aligned_copy, pg->g.data, pg->g.nbytes);
        }
        if (session_ensure_slots(s, pg->p) || session_ensure_slow(s, pg->p)) {
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
    if (clip && clip_gradients(s, pend, n, clip, res)) {
        rc = fail(err, OPTIMD_E_NOMEM, "out of memory for gradient clipping");
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        pending_grad *pg = &pend[i];
        param *p = pg->p;
        /* A row-sparse step runs the plugin on the gathered rows: a
         * parameter of shape [n_rows, ...], like-parameter slots gathered
         * alike, scalar slots as they are. */
        param compact;
        const param *view = p;
        size_t row_bytes = 0;
        if (pg->sparse) {
            compact = *p;
            compact.shape[0] = pg->n_rows;
            compact.numel = pg->g.numel;
            compact.nbytes = pg->g.nbytes;
            view = &compact;
            row_bytes = p->shape[0] ? p->nbytes / (size_t)p->shape[0] : 0;
            move_rows(p->data, pg->param_rows, pg->rows, pg->n_rows, row_bytes, true);
        }
        optimd_tensor pv, gv;
        session_tensor_view(&pv, p->dtype, view, pg->sparse ? pg->param_rows : p->data);
        session_tensor_view(&gv, p->dtype, view, pg->aligned_copy ? pg->aligned_copy : (void *)pg->g.data);
        for (uint32_t k = 0; k < o->n_slots; k++) {
            session_slot_layout(s, view, k, &layouts[k]);
            void *data = p->slots ? p->slots[k] : NULL;
            if (pg->sparse && data && pg->slot_rows[k]) {
                size_t slot_row = layouts[k].nbytes / (size_t)(pg->n_rows ? pg->n_rows : 1);
                move_rows(data, pg->slot_rows[k], pg->rows, pg->n_rows, slot_row, true);
                data = pg->slot_rows[k];
            }
            session_slot_view(&slot_views[k], &layouts[k], data);
        }
        optimd_step_args a = {.struct_size = sizeof a, .n_hparams = s->opt->n_hparams,
                              .hparams = hp + (size_t)p->group * n_hp, .step = p->steps + 1, .param = &pv, .grad = &gv,
                              .slots = slot_views, .n_slots = o->n_slots};
        host_call hc;
        host_call_begin(&hc, s->opt->desc->id, pool);
        optimd_status st = o->step(&hc.table, &a);
        host_call_end(&hc);
        /* A plugin may refuse only what check_hparams could have refused,
         * and must not write NaN or infinity from finite inputs: either is
         * a plugin bug. Parameters before this one are already updated, so
         * the session is stopped rather than left to go on half-stepped. */
        const char *bad = st != OPTIMD_OK ? (hc.call.error[0] ? hc.call.error : "step failed") : NULL;
        if (!bad) {
            bool by_caller = extras && extras->updated && !pg->sparse && !s->lookahead_k;
            bool finite = by_caller ? extras->updated(extras->updated_ctx, s, (size_t)(p - s->params))
                                    : optimd_all_finite_parallel(pool, pv.data, (size_t)pv.numel,
                                                                 wire_dtype_size(pv.dtype));
            if (!finite) bad = "it wrote NaN or infinity into the parameter";
        }
        if (bad) {
            snprintf(s->stopped, sizeof s->stopped, "plugin %.64s %.32s failed on '%.40s' at step %llu: %.100s",
                     s->opt->desc->id, s->opt->desc->version, s->names[p - s->params],
                     (unsigned long long)s->steps + 1, bad);
            log_error("session %s stopped: %s", s->name, s->stopped);
            rc = fail(err, OPTIMD_E_PLUGIN, "%s; the session is stopped", s->stopped);
            goto out;
        }
        if (pg->sparse) {
            move_rows(p->data, pg->param_rows, pg->rows, pg->n_rows, row_bytes, false);
            for (uint32_t k = 0; k < o->n_slots; k++) {
                if (!p->slots || !p->slots[k] || !pg->slot_rows[k]) continue;
                size_t slot_row = layouts[k].nbytes / (size_t)(pg->n_rows ? pg->n_rows : 1);
                move_rows(p->slots[k], pg->slot_rows[k], pg->rows, pg->n_rows, slot_row, false);
            }
        }
        p->steps++;
        if (s->lookahead_k && p->steps % s->lookahead_k == 0) lookahead_sync(s, p);
    }
    s->version++;
    session_count_step(s, cs, id ? id->seq : 0, res, err);
out:
    if (pend)
        for (uint32_t i = 0; i < n; i++) pending_free(&pend[i], o->n_slots);
    free(pend);
    free(hp);
    free(slot_views);
    free(layouts);
    return rc;
}

double *session_step_hparams(const session *s, uint32_t *stride)
{
    const uint32_t n_hp = s->opt->n_hparams ? s->opt->n_hparams : 1;
    double *hp = malloc((size_t)s->n_groups * n_hp * sizeof *hp);
    for (uint32_t gi = 0; hp && gi < s->n_groups; gi++) {
        memcpy(hp + (size_t)gi * n_hp, s->groups[gi].hp, s->opt->n_hparams * sizeof *hp);
        hp[(size_t)gi * n_hp + (size_t)s->opt->lr_index] = s->groups[gi].lr;
    }
    *stride = n_hp;
    return hp;
}

void session_count_step(session *s, client_seq *cs, uint64_t seq, step_result *res, request_error *err)
{
    s->steps++;
    for (uint32_t gi = 0; gi < s->n_groups; gi++) {
        param_group *g = &s->groups[gi];
        res->lrs[gi] = g->lr;
        if (sched_advance(s, g, (int64_t)s->steps, g->lr, err)) {
            /* Keep the last lr rather than stop the session. */
            log_error("session %s, group %s: %s", s->name, g->name, err->message);
            err->code = 0;
        }
        res->next_lrs[gi] = g->lr;
    }
    res->lr = res->lrs[0];
    res->steps = s->steps;
    res->next_lr = res->next_lrs[0];
    if (cs) {
        cs->seq = seq;
        cs->steps = res->steps;
        cs->lr = res->lr;
        cs->next_lr = res->next_lr;
    }
}

/* clip_grad_value_, then clip_grad_norm_ over the whole request or per
 * group, on the gradients' writable copies. -1: out of memory. */
static int clip_gradients(const session *s, pending_grad *pend, uint32_t n, const step_clip *clip,
                          step_result *res)
{
    if (clip->value > 0)
        for (uint32_t i = 0; i < n; i++)
            grad_clip_value(pend[i].aligned_copy, pend[i].g.dtype, pend[i].g.numel, clip->value);
    if (!(clip->max_norm > 0)) return 0;
    double *norms = malloc((n ? n : 1) * sizeof *norms);
    void **data = malloc((n ? n : 1) * sizeof *data);
    uint32_t *dtypes = malloc((n ? n : 1) * sizeof *dtypes);
    int64_t *numels = malloc((n ? n : 1) * sizeof *numels);
    int rc = norms && data && dtypes && numels ? 0 : -1;
    uint32_t scopes = clip->per_group ? s->n_groups : 1;
    for (uint32_t scope = 0; rc == 0 && scope < scopes; scope++) {
        size_t m = 0;
        bool f32 = true;
        for (uint32_t i = 0; i < n; i++) {
            if (clip->per_group && pend[i].p->group != scope) continue;
            data[m] = pend[i].aligned_copy;
            dtypes[m] = pend[i].g.dtype;
            numels[m] = pend[i].g.numel;
            norms[m] = grad_clip_norm(data[m], dtypes[m], numels[m], clip->norm_type);
            f32 = f32 && dtypes[m] == OPTIMD_DTYPE_F32;
            m++;
        }
        /* torch: no gradients, norm 0 (and nothing to scale). */
        double total = m ? grad_clip_total(norms, m, clip->norm_type, f32) : 0.0;
        grad_clip_scale(data, dtypes, numels, m, total, clip->max_norm, f32);
        if (clip->per_group) {
            res->group_norms[scope] = total;
            res->group_clipped[scope] = m > 0;
        } else {
            res->grad_norm = total;
        }
    }
    free(norms);
    free(data);
    free(dtypes);
    free(numels);
    return rc;
}

int session_set_hparams(session *s, const msgpack_object *map, int group, session_commit_fn commit,
                        void *ctx, request_error *err)
{
    if (session_refuse_if_pending(s, "set_hparams", err)) return -1;
    /* Every group the request names is checked before any changes. */
    uint32_t first = group < 0 ? 0 : (uint32_t)group, last = group < 0 ? s->n_groups : (uint32_t)group + 1;
    const uint32_t n_hp = s->opt->n_hparams ? s->opt->n_hparams : 1;
    double *staged = malloc((size_t)s->n_groups * n_hp * sizeof *staged);
    if (!staged) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    int rc = 0;
    for (uint32_t gi = first; gi < last && rc == 0; gi++) {
        double *st = staged + (size_t)gi * n_hp;
        memcpy(st, s->groups[gi].hp, s->opt->n_hparams * sizeof *st);
        rc = hparams_apply(s->opt, map, true, st, NULL, err);
        if (rc == 0) rc = hparams_validate(s->opt, st, err);
    }
    if (rc == 0 && commit) rc = commit(ctx, s, err);
    for (uint32_t gi = first; gi < last && rc == 0; gi++) {
        param_group *g = &s->groups[gi];
        const double *st = staged + (size_t)gi * n_hp;
        double old_lr = g->hp[s->opt->lr_index];
        memcpy(g->hp, st, s->opt->n_hparams * sizeof *st);
        if (st[s->opt->lr_index] != old_lr || wire_map_get(map, "lr")) g->lr = st[s->opt->lr_index];
    }
    if (rc == 0) s->version++;
    free(staged);
    return rc;
}

int session_observe(session *s, double metric, int group, session_commit_fn commit, void *ctx,
                    request_error *err)
{
    if (session_refuse_if_pending(s, "observe", err)) return -1;
    uint32_t first = group < 0 ? 0 : (uint32_t)group, last = group < 0 ? s->n_groups : (uint32_t)group + 1;
    uint32_t observing = 0;
    for (uint32_t gi = first; gi < last; gi++) observing += s->groups[gi].sched && s->groups[gi].sched->sched_observe;
    if (observing == 0) {
        if (group < 0)
            return fail(err, OPTIMD_E_BAD_REQUEST, "no scheduler of session '%s' takes a metric (give a "
                        "group a scheduler such as plateau)", s->name);
        return fail(err, OPTIMD_E_BAD_REQUEST, "the scheduler of group '%s' takes no metric (use one such "
                    "as plateau)", s->groups[group].name);
    }
    if (commit && commit(ctx, s, err)) return -1;
    for (uint32_t gi = first; gi < last; gi++) {
        param_group *g = &s->groups[gi];
        if (!g->sched || !g->sched->sched_observe) continue;
        /* On a plugin failure the state may be half written; keeping the
         * lr is the best there is, and the plugin's bug is logged. */
        double before[SCHED_MAX_STATE];
        memcpy(before, g->sched_state, sizeof before);
        optimd_sched_args a = sched_args(g, (int64_t)g->observed + 1, g->lr);
        host_call hc;
        host_call_begin(&hc, g->sched->desc->id, NULL);
        double lr = NAN;
        optimd_status st = g->sched->sched_observe(&hc.table, &a, metric, &lr);
        host_call_end(&hc);
        if (st != OPTIMD_OK || !isfinite(lr)) {
            memcpy(g->sched_state, before, sizeof before);
            log_error("session %s, group %s: scheduler %s failed on a metric: %s", s->name, g->name,
                      g->sched->desc->id, hc.call.error[0] ? hc.call.error : "no finite lr");
            continue;
        }
        g->observed++;
        g->lr = lr;
    }
    s->version++;
    return 0;
}

void session_release_param(const session *s, param *p) { param_release(s, p); }
