/* Reading what info, attach, hparams and set_hparams say (hyperparameter
 * maps, groups, parameters), and the per-group values of step and observe
 * replies. */
#include "client_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void hvalues_free(optimd_hvalue *hp, size_t n)
{
    if (!hp) return;
    for (size_t i = 0; i < n; i++) free((char *)hp[i].key);
    free(hp);
}

static void sched_infos_free(optimd_sched_info *sc, size_t n)
{
    if (!sc) return;
    for (size_t i = 0; i < n; i++) {
        free(sc[i].scheduler);
        hvalues_free(sc[i].sched_hparams, sc[i].n_sched_hparams);
    }
    free(sc);
}

static void group_info_clear(optimd_group_info *g)
{
    free(g->name);
    free(g->scheduler);
    sched_infos_free(g->schedulers, g->n_schedulers);
    free(g->milestones);
    hvalues_free(g->hparams, g->n_hparams);
    hvalues_free(g->sched_hparams, g->n_sched_hparams);
}

void optimd_session_details_free(optimd_session_details *d)
{
    if (!d) return;
    free(d->session);
    free(d->durability);
    free(d->optimizer);
    free(d->optimizer_version);
    free(d->scheduler);
    sched_infos_free(d->schedulers, d->n_schedulers);
    free(d->milestones);
    for (size_t i = 0; i < d->n_params; i++) {
        free(d->params[i].name);
        free(d->params[i].group);
    }
    free(d->params);
    hvalues_free(d->hparams, d->n_hparams);
    hvalues_free(d->sched_hparams, d->n_sched_hparams);
    for (size_t i = 0; i < d->n_groups; i++) group_info_clear(&d->groups[i]);
    free(d->groups);
    workers_info_free(d->workers);
    free(d->pending_client);
    free(d);
}

static int nomem(optimd_client *c)
{
    return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
}

/* A str (nil too when `nil_ok`: *out stays NULL) copied into *out. */
static int dup_str(optimd_client *c, const char *op, const char *where,
                   const msgpack_object *o, bool nil_ok, char **out)
{
    *out = NULL;
    if (o && nil_ok && o->type == MSGPACK_OBJECT_NIL) return 0;
    bool oom = false;
    if (o) *out = wire_strdup(o, &oom);
    if (*out) return 0;
    if (oom) return nomem(c);
    return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                       "reply to '%s': %s is %s, expected a str%s", op, where,
                       o ? "of the wrong type" : "missing",
                       nil_ok ? " or nil" : "");
}

/* A hyperparameter map: str keys; bool, int or float values. */
static int read_hvalues(optimd_client *c, const char *op, const char *where,
                        const msgpack_object *o, optimd_hvalue **out,
                        size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!o || o->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(o))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': %s is %s, expected a map with str "
                           "keys", op, where, o ? "of the wrong type"
                                                : "missing");
    uint32_t size = o->via.map.size;
    optimd_hvalue *hp = calloc(size ? size : 1, sizeof *hp);
    if (!hp) return nomem(c);
    for (uint32_t i = 0; i < size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        optimd_hvalue *h = &hp[i];
        bool oom;
        char *key = wire_strdup(&kv->key, &oom);
        if (!key) {
            hvalues_free(hp, i);
            return oom ? nomem(c)
                       : client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                     "reply to '%s': %s has a key holding "
                                     "NUL", op, where);
        }
        h->key = key;
        const msgpack_object *v = &kv->val;
        if (v->type == MSGPACK_OBJECT_BOOLEAN) {
            h->type = OPTIMD_HVALUE_BOOL;
            h->i = v->via.boolean;
        } else if (v->type == MSGPACK_OBJECT_FLOAT32 ||
                   v->type == MSGPACK_OBJECT_FLOAT64) {
            h->type = OPTIMD_HVALUE_FLOAT;
            h->f = v->via.f64;
        } else if (wire_as_int(v, &h->i)) {
            h->type = OPTIMD_HVALUE_INT;
        } else {
            hvalues_free(hp, i + 1);
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s': %s['%s'] is not a bool, int "
                               "or float", op, where, key);
        }
    }
    *out = hp;
    *n = size;
    return 0;
}

static int get_float(optimd_client *c, const char *op, const char *where,
                     const msgpack_object *map, const char *key, double *out)
{
    const msgpack_object *o = wire_map_get(map, key);
    if (o && wire_as_float(o, out)) return 0;
    return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                       "reply to '%s': %s'%s' is %s, expected a float", op,
                       where, key, o ? "of the wrong type" : "missing");
}

static int get_uint(optimd_client *c, const char *op, const char *where,
                    const msgpack_object *map, const char *key, uint64_t *out)
{
    const msgpack_object *o = wire_map_get(map, key);
    if (o && wire_as_uint(o, out)) return 0;
    return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                       "reply to '%s': %s'%s' is %s, expected a uint", op,
                       where, key, o ? "of the wrong type" : "missing");
}

/* `schedulers` and `milestones` of a combined schedule, both optional. */
static int read_combined(optimd_client *c, const char *op,
                         const msgpack_object *map, optimd_sched_info **sc,
                         size_t *n_sc, uint64_t **ms, size_t *n_ms)
{
    const msgpack_object *arr = wire_map_get(map, "schedulers");
    const msgpack_object *mil = wire_map_get(map, "milestones");
    if ((arr && arr->type != MSGPACK_OBJECT_ARRAY) ||
        (mil && mil->type != MSGPACK_OBJECT_ARRAY))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': 'schedulers' or 'milestones' is "
                           "not an array", op);
    int rv;
    if (arr) {
        uint32_t n = arr->via.array.size;
        if (!(*sc = calloc(n ? n : 1, sizeof **sc))) return nomem(c);
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *e = &arr->via.array.ptr[i];
            *n_sc = i + 1;
            if (e->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(e))
                return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                   "reply to '%s': schedulers[%u] is not a "
                                   "map", op, (unsigned)i);
            if ((rv = dup_str(c, op, "a combined schedule's 'scheduler'",
                              wire_map_get(e, "scheduler"), false,
                              &(*sc)[i].scheduler)) ||
                (rv = read_hvalues(c, op, "a combined schedule's "
                                   "'sched_hparams'",
                                   wire_map_get(e, "sched_hparams"),
                                   &(*sc)[i].sched_hparams,
                                   &(*sc)[i].n_sched_hparams)))
                return rv;
        }
    }
    if (mil) {
        uint32_t n = mil->via.array.size;
        if (!(*ms = calloc(n ? n : 1, sizeof **ms))) return nomem(c);
        *n_ms = n;
        for (uint32_t i = 0; i < n; i++)
            if (!wire_as_uint(&mil->via.array.ptr[i], &(*ms)[i]))
                return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                   "reply to '%s': milestones[%u] is not a "
                                   "uint", op, (unsigned)i);
    }
    return 0;
}

static int read_group(optimd_client *c, const char *op, uint32_t i,
                      const msgpack_object *e, optimd_group_info *g)
{
    char where[64];
    snprintf(where, sizeof where, "groups[%u] ", (unsigned)i);
    if (e->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(e))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': %sis not a map", op, where);
    int rv;
    if ((rv = dup_str(c, op, "a group's 'name'", wire_map_get(e, "name"),
                      false, &g->name)) ||
        (rv = dup_str(c, op, "a group's 'scheduler'",
                      wire_map_get(e, "scheduler"), true, &g->scheduler)) ||
        (rv = read_hvalues(c, op, "a group's 'hparams'",
                           wire_map_get(e, "hparams"), &g->hparams,
                           &g->n_hparams)) ||
        (rv = read_hvalues(c, op, "a group's 'sched_hparams'",
                           wire_map_get(e, "sched_hparams"),
                           &g->sched_hparams, &g->n_sched_hparams)) ||
        (rv = get_float(c, op, where, e, "base_lr", &g->base_lr)) ||
        (rv = get_float(c, op, where, e, "lr", &g->lr)) ||
        (rv = get_uint(c, op, where, e, "params", &g->params)) ||
        (rv = read_combined(c, op, e, &g->schedulers, &g->n_schedulers,
                            &g->milestones, &g->n_milestones)))
        return rv;
    return 0;
}

static int read_param(optimd_client *c, const char *op, uint32_t i,
                      const msgpack_object *e, optimd_param_info *p)
{
    char where[64];
    snprintf(where, sizeof where, "params[%u] ", (unsigned)i);
    if (e->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(e))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': %sis not a map", op, where);
    int rv;
    const msgpack_object *group = wire_map_get(e, "group");
    if ((rv = dup_str(c, op, "a parameter's 'name'", wire_map_get(e, "name"),
                      false, &p->name)) ||
        (group && (rv = dup_str(c, op, "a parameter's 'group'", group, false,
                                &p->group))) ||
        (rv = get_uint(c, op, where, e, "steps", &p->steps)))
        return rv;
    const msgpack_object *dtype = wire_map_get(e, "dtype");
    const msgpack_object *shape = wire_map_get(e, "shape");
    p->dtype = !dtype                      ? 0
               : wire_is_str(dtype, "f32") ? OPTIMD_CLIENT_F32
               : wire_is_str(dtype, "f64") ? OPTIMD_CLIENT_F64
                                           : 0;
    bool ok = p->dtype && shape && shape->type == MSGPACK_OBJECT_ARRAY &&
              shape->via.array.size <= WIRE_MAX_DIMS;
    for (uint32_t k = 0; ok && k < shape->via.array.size; k++) {
        uint64_t d;
        ok = wire_as_uint(&shape->via.array.ptr[k], &d) &&
             d <= (uint64_t)INT64_MAX;
        if (ok) p->shape[k] = (int64_t)d;
    }
    if (!ok)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': %s'dtype' is not \"f32\" or "
                           "\"f64\", or 'shape' not an array of at most %d "
                           "uints", op, where, WIRE_MAX_DIMS);
    p->ndim = shape->via.array.size;
    return 0;
}

/* Reads an array of maps under `key` into a calloc'd array of `size`-byte
 * entries, one reader call each; *n counts the entries to clear. */
static int read_array(optimd_client *c, const client_reply *rep,
                      const char *key, size_t size, void **out, size_t *n,
                      int (*read)(optimd_client *, const char *, uint32_t,
                                  const msgpack_object *, void *))
{
    const msgpack_object *arr;
    int rv = reply_get(c, rep, key, MSGPACK_OBJECT_ARRAY, &arr);
    if (rv) return rv;
    uint32_t count = arr->via.array.size;
    char *list = calloc(count ? count : 1, size);
    if (!list) return nomem(c);
    *out = list;
    for (uint32_t i = 0; i < count; i++) {
        *n = i + 1;
        if ((rv = read(c, rep->op, i, &arr->via.array.ptr[i],
                       list + i * size)))
            return rv;
    }
    *n = count;
    return 0;
}

static int read_group_v(optimd_client *c, const char *op, uint32_t i,
                        const msgpack_object *e, void *out)
{
    return read_group(c, op, i, e, out);
}

static int read_param_v(optimd_client *c, const char *op, uint32_t i,
                        const msgpack_object *e, void *out)
{
    return read_param(c, op, i, e, out);
}

int read_details(optimd_client *c, const client_reply *rep, bool full,
                 optimd_session_details **out)
{
    optimd_session_details *d = calloc(1, sizeof *d);
    if (!d) return nomem(c);
    const char *op = rep->op;
    const msgpack_object *root = rep->root;
    int rv;
    if ((rv = read_hvalues(c, op, "'hparams'", wire_map_get(root, "hparams"),
                           &d->hparams, &d->n_hparams)) ||
        (rv = read_hvalues(c, op, "'sched_hparams'",
                           wire_map_get(root, "sched_hparams"),
                           &d->sched_hparams, &d->n_sched_hparams)) ||
        (rv = reply_float(c, rep, "base_lr", &d->base_lr)) ||
        (rv = reply_float(c, rep, "lr", &d->lr)) ||
        (rv = read_combined(c, op, root, &d->schedulers, &d->n_schedulers,
                            &d->milestones, &d->n_milestones)))
        goto fail;
    const msgpack_object *la = wire_map_get(root, "lookahead");
    if (la && la->type != MSGPACK_OBJECT_NIL) {
        const msgpack_object *k = wire_map_get(la, "k");
        if (!k || !wire_as_int(k, &d->lookahead_k) ||
            (rv = get_float(c, op, "'lookahead' ", la, "alpha",
                            &d->lookahead_alpha))) {
            if (!rv)
                rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                 "reply to '%s': 'lookahead' is not nil or "
                                 "{k: int, alpha: float}", op);
            goto fail;
        }
        d->has_lookahead = 1;
    }
    /* A daemon from before parameter groups leaves `groups` out. */
    if (wire_map_get(root, "groups") &&
        (rv = read_array(c, rep, "groups", sizeof *d->groups,
                         (void **)&d->groups, &d->n_groups, read_group_v)))
        goto fail;
    if (full) {
        const msgpack_object *durability = wire_map_get(root, "durability");
        const msgpack_object *cs = wire_map_get(root, "client_seq");
        if ((rv = dup_str(c, op, "'session'", wire_map_get(root, "session"),
                          false, &d->session)) ||
            (rv = dup_str(c, op, "'optimizer'",
                          wire_map_get(root, "optimizer"), false,
                          &d->optimizer)) ||
            (rv = dup_str(c, op, "'optimizer_version'",
                          wire_map_get(root, "optimizer_version"), false,
                          &d->optimizer_version)) ||
            (rv = dup_str(c, op, "'scheduler'",
                          wire_map_get(root, "scheduler"), true,
                          &d->scheduler)) ||
            (durability && (rv = dup_str(c, op, "'durability'", durability,
                                         false, &d->durability))) ||
            (rv = reply_uint(c, rep, "steps", &d->steps)) ||
            (rv = read_array(c, rep, "params", sizeof *d->params,
                             (void **)&d->params, &d->n_params,
                             read_param_v)))
            goto fail;
        /* Only a session opened with workers has the key. */
        const msgpack_object *workers = wire_map_get(root, "workers");
        if (workers && (rv = read_workers(c, op, workers, &d->workers)))
            goto fail;
        const msgpack_object *pending = wire_map_get(root, "pending_step");
        if (pending && pending->type != MSGPACK_OBJECT_NIL) {
            if (pending->type != MSGPACK_OBJECT_MAP ||
                !wire_map_get(pending, "seq") ||
                !wire_as_uint(wire_map_get(pending, "seq"), &d->pending_seq) ||
                !wire_map_get(pending, "count") ||
                !wire_as_uint(wire_map_get(pending, "count"),
                              &d->pending_count) ||
                !wire_map_get(pending, "applied") ||
                !wire_as_uint(wire_map_get(pending, "applied"),
                              &d->pending_applied)) {
                rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                 "reply to '%s': 'pending_step' is malformed",
                                 op);
                goto fail;
            }
            if ((rv = dup_str(c, op, "'pending_step.client'",
                              wire_map_get(pending, "client"), false,
                              &d->pending_client)))
                goto fail;
            d->has_pending_step = 1;
        }
        if (cs) {
            if (!wire_as_uint(cs, &d->client_seq)) {
                rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                 "reply to '%s': 'client_seq' is not a uint",
                                 op);
                goto fail;
            }
            d->has_client_seq = 1;
        }
    } else {
        /* hparams and set_hparams name the default group's scheduler only
         * in `groups`. */
        for (size_t i = 0; i < d->n_groups; i++)
            if (strcmp(d->groups[i].name, "default") == 0 &&
                d->groups[i].scheduler &&
                !(d->scheduler = strdup(d->groups[i].scheduler))) {
                rv = nomem(c);
                goto fail;
            }
    }
    if (out) *out = d;
    else optimd_session_details_free(d);
    return 0;
fail:
    optimd_session_details_free(d);
    return rv;
}

int read_group_values(optimd_client *c, const client_reply *rep,
                      const char *const keys[3], optimd_group_value *groups,
                      size_t cap, size_t *n_out)
{
    optimd_group_value rows[OPTIMD_MAX_GROUPS];
    size_t n = 0;
    for (int k = 0; k < 3; k++) {
        if (!keys[k]) continue;
        const msgpack_object *map = wire_map_get(rep->root, keys[k]);
        if (!map) continue;
        if (map->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(map) ||
            map->via.map.size > OPTIMD_MAX_GROUPS)
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s': '%s' is not a map of at most "
                               "%d group names", rep->op, keys[k],
                               OPTIMD_MAX_GROUPS);
        for (uint32_t i = 0; i < map->via.map.size; i++) {
            const msgpack_object_kv *kv = &map->via.map.ptr[i];
            char name[OPTIMD_GROUP_NAME_MAX + 1];
            double v;
            if (!wire_copy_str(&kv->key, name, sizeof name) || !name[0] ||
                !wire_as_float(&kv->val, &v))
                return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                   "reply to '%s': '%s' has an entry that is "
                                   "not group name -> float", rep->op,
                                   keys[k]);
            size_t r = 0;
            while (r < n && strcmp(rows[r].name, name) != 0) r++;
            if (r == n) {
                if (n == OPTIMD_MAX_GROUPS)
                    return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                       "reply to '%s' names more than %d "
                                       "groups", rep->op, OPTIMD_MAX_GROUPS);
                memcpy(rows[n].name, name, sizeof name);
                rows[n].lr = rows[n].next_lr = rows[n].grad_norm = NAN;
                n++;
            }
            double *slot = k == 0 ? &rows[r].lr
                           : k == 1 ? &rows[r].next_lr
                                    : &rows[r].grad_norm;
            if (!isnan(*slot))
                return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                   "reply to '%s': '%s' names group '%s' "
                                   "twice", rep->op, keys[k], name);
            *slot = v;
        }
    }
    for (size_t i = 0; i < n && i < cap; i++) groups[i] = rows[i];
    *n_out = n;
    return 0;
}

int read_observe(optimd_client *c, const client_reply *rep, double *lr,
                 optimd_group_value *groups, size_t groups_cap,
                 size_t *n_groups)
{
    double next;
    const msgpack_object *lrs;
    int rv;
    if ((rv = reply_float(c, rep, "lr", &next)) ||
        (rv = reply_get(c, rep, "lrs", MSGPACK_OBJECT_MAP, &lrs)))
        return rv;
    static const char *const keys[3] = {"lrs", NULL, NULL};
    size_t n;
    if ((rv = read_group_values(c, rep, keys, groups, groups_cap, &n)))
        return rv;
    if (lr) *lr = next;
    if (n_groups) *n_groups = n;
    return 0;
}
