/* Operations that move tensors: register, step, pull. */
#include "client_internal.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Per-tensor bytes besides the name and the data: the tensor map's keys,
 * the dtype, and up to 9 bytes per dimension. */
#define TENSOR_OVERHEAD (48 + 9 * WIRE_MAX_DIMS)

/* Checks caller tensors and sums what packing them will take. */
static int tensors_arg_ok(optimd_client *c, const optimd_named_tensor *t,
                          size_t n, size_t *size_hint)
{
    if (n && !t) return client_fail(c, OPTIMD_CLIENT_E_ARG, "tensor array is NULL");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t nbytes;
        if (!wire_tensor_arg_ok(&t[i], &nbytes, c->err, sizeof c->err))
            return OPTIMD_CLIENT_E_ARG;
        size_t more = nbytes + strlen(t[i].name) + TENSOR_OVERHEAD;
        total = total > SIZE_MAX - more ? SIZE_MAX : total + more;
    }
    if (size_hint) *size_hint = total;
    return 0;
}

static void pack_tensor_map(msgpack_packer *pk, const optimd_named_tensor *t,
                            size_t n)
{
    msgpack_pack_map(pk, n);
    for (size_t i = 0; i < n; i++) {
        size_t nbytes;
        char unused[8];
        wire_tensor_arg_ok(&t[i], &nbytes, unused, sizeof unused);
        wire_pack_str(pk, t[i].name);
        wire_pack_tensor(pk, &t[i], nbytes);
    }
}

static void pack_names(msgpack_packer *pk, const void *arg)
{
    const req_names *a = arg;
    if (a->worker) {
        wire_pack_str(pk, "worker");
        wire_pack_str(pk, a->worker);
    }
    if (a->absent) return;
    wire_pack_str(pk, "names");
    msgpack_pack_array(pk, a->n);
    for (size_t i = 0; i < a->n; i++)
        wire_pack_str(pk, a->names ? a->names[i] : a->from[i].name);
}

void req_names_call(const optimd_session *s, const req_names *a,
                    client_call *call)
{
    size_t hint = a->worker ? strlen(a->worker) + 16 : 0;
    for (size_t i = 0; !a->absent && i < a->n; i++)
        hint += strlen(a->names ? a->names[i] : a->from[i].name) + 5;
    uint32_t n_keys = (a->absent ? 0 : 1) + (a->worker ? 1 : 0);
    /* A worker's pull only resets its staleness, so a repeat is as
     * harmless as a repeated read. */
    *call = (client_call){.op = a->op, .s = s, .n_keys = n_keys,
                          .size_hint = hint,
                          .pack = pack_names, .arg = a,
                          .retry = CLIENT_RETRY_ALWAYS};
}

/* After a register whose first attempt may have been applied met
 * PARAM_EXISTS on a repeat: true when every parameter holds exactly the
 * values sent, i.e. the lost attempt registered them (or someone
 * registered the same; either way the caller has what it asked for). */
static bool registered_as_sent(optimd_client *c, const optimd_session *s,
                               const optimd_named_tensor *params, size_t n)
{
    /* Always name them: an absent `names` would ask for every parameter. */
    req_names a = {.op = "pull", .from = params, .n = n};
    client_call call;
    req_names_call(s, &a, &call);
    client_reply rep;
    if (client_call_run(c, &call, &rep) != 0) return false;
    const msgpack_object *map = wire_map_get(rep.root, "params");
    bool same = map && map->type == MSGPACK_OBJECT_MAP &&
                wire_keys_are_str(map);
    char why[8];
    for (size_t i = 0; same && i < n; i++) {
        const msgpack_object *o = wire_map_get(map, params[i].name);
        wire_tensor t;
        size_t nbytes;
        same = o && wire_read_tensor(o, &t, why, sizeof why) &&
               wire_tensor_arg_ok(&params[i], &nbytes, why, sizeof why) &&
               wire_tensor_equals(&t, &params[i], nbytes);
    }
    client_reply_free(&rep);
    return same;
}

static void pack_register(msgpack_packer *pk, const void *arg)
{
    const req_register *a = arg;
    wire_pack_str(pk, "params");
    pack_tensor_map(pk, a->params, a->n);
    if (a->group) {
        wire_pack_str(pk, "group");
        wire_pack_str(pk, a->group);
    }
}

void req_register_call(const optimd_session *s, const req_register *a,
                       client_call *call)
{
    size_t hint = 0;
    for (size_t i = 0; i < a->n; i++) {
        size_t nbytes = 0;
        char unused[8];
        wire_tensor_arg_ok(&a->params[i], &nbytes, unused, sizeof unused);
        size_t more = nbytes + strlen(a->params[i].name) + TENSOR_OVERHEAD;
        hint = hint > SIZE_MAX - more ? SIZE_MAX : hint + more;
    }
    *call = (client_call){.op = "register", .s = s,
                          .n_keys = 1 + (a->group ? 1 : 0),
                          .size_hint = hint, .pack = pack_register, .arg = a,
                          .retry = CLIENT_RETRY_ALWAYS};
}

int read_register(optimd_client *c, const client_reply *rep, size_t n)
{
    uint64_t registered;
    int rv = reply_uint(c, rep, "registered", &registered);
    if (!rv && registered != n)
        rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                         "reply to 'register' counts %llu parameters, the "
                         "request had %zu", (unsigned long long)registered, n);
    return rv;
}

int optimd_client_register_ex(optimd_client *c, const optimd_session *s,
                              const optimd_named_tensor *params, size_t n,
                              const char *group)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = tensors_arg_ok(c, params, n, NULL);
    if (rv) return rv;
    if ((rv = client_session_ok(c, s))) return rv;
    if (group && (!*group || strlen(group) > OPTIMD_GROUP_NAME_MAX))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "a group name is 1 to %d bytes",
                           OPTIMD_GROUP_NAME_MAX);
    req_register a = {params, n, group};
    client_call call;
    req_register_call(s, &a, &call);
    client_reply rep;
    rv = client_call_run(c, &call, &rep);
    if (rv == OPTIMD_E_PARAM_EXISTS && call.ambiguous) {
        char daemon_said[CLIENT_ERR_CAP];
        unsigned retries = c->last_retries;
        snprintf(daemon_said, sizeof daemon_said, "%s", c->err);
        if (registered_as_sent(c, s, params, n)) {
            c->err[0] = '\0';
            c->last_retries = retries;
            return 0;
        }
        c->last_retries = retries;
        client_fail(c, rv, "%s (a repeat after a lost reply; the parameters "
                    "there do not hold the values sent)", daemon_said);
        return rv;
    }
    if (rv) return rv;
    rv = read_register(c, &rep, n);
    client_reply_free(&rep);
    return rv;
}

int optimd_client_register(optimd_client *c, const optimd_session *s,
                           const optimd_named_tensor *params, size_t n)
{
    return optimd_client_register_ex(c, s, params, n, NULL);
}

/* True when `name` is among the gradients, trying position `hint` first
 * (callers usually list outputs in the order of their gradients). */
static bool has_grad(const optimd_named_tensor *grads, size_t n,
                     const char *name, size_t hint)
{
    if (hint < n && strcmp(grads[hint].name, name) == 0) return true;
    for (size_t i = 0; i < n; i++)
        if (strcmp(grads[i].name, name) == 0) return true;
    return false;
}

static void pack_step(msgpack_packer *pk, const void *arg)
{
    const req_step *a = arg;
    wire_pack_str(pk, "grads");
    pack_tensor_map(pk, a->grads, a->n_grads);
    if (a->ret >= 0) {
        wire_pack_str(pk, "return");
        if (a->ret) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
    }
    if (a->seq) {
        wire_pack_str(pk, "seq");
        msgpack_pack_uint64(pk, a->seq);
    }
    if (a->client) {
        wire_pack_str(pk, "client");
        wire_pack_str(pk, a->client);
    }
    if (a->worker) {
        wire_pack_str(pk, "worker");
        wire_pack_str(pk, a->worker);
    }
    if (a->clip_value > 0) {
        wire_pack_str(pk, "clip_value");
        msgpack_pack_double(pk, a->clip_value);
    }
    if (a->max_norm > 0) {
        wire_pack_str(pk, "clip_norm");
        msgpack_pack_map(pk, 1 + (a->norm_type > 0 ? 1 : 0) +
                                 (a->per_group >= 0 ? 1 : 0));
        wire_pack_str(pk, "max_norm");
        msgpack_pack_double(pk, a->max_norm);
        if (a->norm_type > 0) {
            wire_pack_str(pk, "norm_type");
            msgpack_pack_double(pk, a->norm_type);
        }
        if (a->per_group >= 0) {
            wire_pack_str(pk, "per_group");
            if (a->per_group) msgpack_pack_true(pk);
            else msgpack_pack_false(pk);
        }
    }
}

void req_step_call(const optimd_session *s, const req_step *a,
                   client_call *call)
{
    size_t hint = 0;
    for (size_t i = 0; i < a->n_grads; i++) {
        size_t nbytes = 0;
        char unused[8];
        wire_tensor_arg_ok(&a->grads[i], &nbytes, unused, sizeof unused);
        size_t more = nbytes + strlen(a->grads[i].name) + TENSOR_OVERHEAD;
        hint = hint > SIZE_MAX - more ? SIZE_MAX : hint + more;
    }
    *call = (client_call){
        .op = "step", .s = s,
        .n_keys = 1 + (a->ret >= 0) + (a->seq != 0) + (a->client != NULL) +
                  (a->worker != NULL) + (a->clip_value > 0) +
                  (a->max_norm > 0),
        .size_hint = hint, .pack = pack_step, .arg = a,
        /* Only a sequenced step may be repeated: its seq makes the daemon
         * answer a repeat instead of applying it again. */
        .retry = a->seq ? CLIENT_RETRY_ALWAYS : CLIENT_RETRY_UNSENT};
}

int read_step(optimd_client *c, const client_reply *rep,
              optimd_named_tensor *params_out, size_t n_out,
              optimd_group_value *groups, size_t groups_cap,
              optimd_step_result *res)
{
    memset(res, 0, sizeof *res);
    res->grad_norm = NAN;
    const msgpack_object *dup = wire_map_get(rep->root, "duplicate");
    if (dup && dup->type != MSGPACK_OBJECT_BOOLEAN)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'step': 'duplicate' is not a bool");
    res->duplicate = dup && dup->via.boolean;
    int rv;
    if ((rv = reply_uint(c, rep, "steps", &res->steps)) ||
        (rv = reply_float(c, rep, "lr", &res->lr)) ||
        (rv = reply_float(c, rep, "next_lr", &res->next_lr)))
        return rv;
    const msgpack_object *norm = wire_map_get(rep->root, "grad_norm");
    if (norm && !wire_as_float(norm, &res->grad_norm))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'step': 'grad_norm' is not a float");
    static const char *const keys[3] = {"lrs", "next_lrs", "grad_norms"};
    if ((rv = read_group_values(c, rep, keys, groups, groups_cap,
                                &res->n_groups)))
        return rv;
    /* An absent `params` is fine when nothing was asked for (`return`
     * false); present, it must be well-formed all the same. */
    if (n_out || wire_map_get(rep->root, "params"))
        rv = reply_tensors_into(c, rep, params_out, n_out);
    return rv;
}

void optimd_step_options_init(optimd_step_options *opts)
{
    if (!opts) return;
    memset(opts, 0, sizeof *opts);
    opts->struct_size = sizeof *opts;
}

#define STEP_HAS(o, member)                                                \
    ((o)->struct_size >= offsetof(optimd_step_options, member) +           \
                             sizeof((o)->member))

int optimd_client_step_opts(optimd_client *c, const optimd_session *s,
                            const optimd_named_tensor *grads, size_t n_grads,
                            optimd_named_tensor *params_out, size_t n_out,
                            const optimd_step_options *opts,
                            optimd_step_result *result)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    optimd_step_options o;
    optimd_step_options_init(&o);
    if (opts) {
        if (!STEP_HAS(opts, clip_value))
            return client_fail(c, OPTIMD_CLIENT_E_ARG,
                               "options.struct_size is %zu: fill the options "
                               "with optimd_step_options_init",
                               opts->struct_size);
        o.clip_value = opts->clip_value;
        if (STEP_HAS(opts, clip_norm)) o.clip_norm = opts->clip_norm;
        if (STEP_HAS(opts, norm_type)) o.norm_type = opts->norm_type;
        if (STEP_HAS(opts, clip_per_group))
            o.clip_per_group = opts->clip_per_group;
        if (STEP_HAS(opts, groups)) o.groups = opts->groups;
        if (STEP_HAS(opts, groups_cap)) o.groups_cap = opts->groups_cap;
        if (STEP_HAS(opts, worker)) o.worker = opts->worker;
        if (STEP_HAS(opts, worker_result))
            o.worker_result = opts->worker_result;
        if (STEP_HAS(opts, worker_wait_ms))
            o.worker_wait_ms = opts->worker_wait_ms;
        if (STEP_HAS(opts, part_elements))
            o.part_elements = opts->part_elements;
    }
    if (o.part_elements && (o.clip_norm > 0 || o.worker))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "a sliced step (part_elements) takes no clip_norm "
                           "and no worker");
    /* `!(x >= 0)` catches NaN too. */
    if (!(o.clip_value >= 0) || !(o.clip_norm >= 0) || !(o.norm_type >= 0))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "clip_value, clip_norm and norm_type must be "
                           "positive, or 0 for none");
    if ((o.norm_type > 0 || o.clip_per_group) && o.clip_norm == 0)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "norm_type or clip_per_group without clip_norm");
    if (o.groups_cap && !o.groups)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "groups_cap is %zu but groups is NULL",
                           o.groups_cap);
    if (o.worker && (!*o.worker || strlen(o.worker) > CLIENT_WORKER_MAX))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "a worker name is 1 to %d bytes",
                           CLIENT_WORKER_MAX);
    if (o.worker_result &&
        o.worker_result->struct_size < offsetof(optimd_worker_result, pushes) +
                                           sizeof o.worker_result->pushes)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "worker_result->struct_size is %zu: fill it with "
                           "optimd_worker_result_init",
                           o.worker_result->struct_size);
    size_t hint = 0;
    int rv;
    if ((rv = tensors_arg_ok(c, grads, n_grads, &hint)) ||
        (rv = tensors_arg_ok(c, params_out, n_out, NULL)))
        return rv;
    if ((rv = client_session_ok(c, s))) return rv;
    uint32_t wait_ms = 0;
    if (o.worker && (rv = workers_wait_ms(c, s, o.worker_wait_ms, &wait_ms)))
        return rv;
    for (size_t i = 0; i < n_out; i++)
        if (!has_grad(grads, n_grads, params_out[i].name, i))
            return client_fail(c, OPTIMD_CLIENT_E_ARG,
                               "output '%s' has no gradient: the daemon "
                               "returns only the parameters it updates",
                               params_out[i].name);
    client_seq *e;
    if ((rv = client_seq_get(c, s->name, &e))) return rv;
    if (e->next > CLIENT_SEQ_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "session '%s': this client used up its 2^53 "
                           "sequence numbers; give it a new id", s->name);

    if (o.part_elements) {
        uint64_t seq = e->next;
        rv = client_step_sliced(c, s, grads, n_grads, params_out, n_out,
                                o.part_elements, o.clip_value, seq, o.groups,
                                o.groups_cap, result);
        /* Only a complete step uses the seq up: after a failed part the
         * step is pending, and calling again with the same gradients (the
         * same seq) completes it. */
        if (rv == 0 && client_seq_get(c, s->name, &e) == 0 && e->next == seq)
            e->next = seq + 1;
        else if (rv)
            client_err_append(c, " [sliced step seq %llu of client %s on "
                              "session '%s': the next step on it carries "
                              "the same seq, so calling it again with the "
                              "same gradients completes it]",
                              (unsigned long long)seq, c->id, s->name);
        return rv;
    }
    /* Every attempt of one step carries the same seq: that is what lets
     * the daemon answer a repeat instead of applying it again. Nobody
     * wanting the new values spares the daemon sending them. */
    req_step a = {.grads = grads, .n_grads = n_grads,
                  .ret = n_out > 0 ? -1 : 0, .seq = e->next,
                  .client = c->id, .clip_value = o.clip_value,
                  .max_norm = o.clip_norm, .norm_type = o.norm_type,
                  .per_group = o.clip_per_group ? 1 : -1,
                  .worker = o.worker};
    client_call call;
    req_step_call(s, &a, &call);
    call.wait_ms = wait_ms;
    if (c->no_dedup) call.retry = CLIENT_RETRY_UNSENT;
    client_reply rep;
    rv = client_call_run(c, &call, &rep);
    /* A step whose fate is unknown keeps its seq, so that calling it again
     * cannot apply it twice; any answer uses the seq up. */
    /* STEP_PENDING leaves it too: this client's own failed sliced step
     * may hold that seq, and a call with its gradients completes it. */
    if (rv != OPTIMD_CLIENT_E_TRANSPORT && rv != OPTIMD_E_STEP_PENDING &&
        client_seq_get(c, s->name, &e) == 0 && e->next == a.seq)
        e->next = a.seq + 1;
    if (rv == OPTIMD_CLIENT_E_TRANSPORT)
        client_err_append(c, " [step seq %llu of client %s on session '%s': "
                          "the next step on it carries the same seq, so "
                          "calling it again with the same gradients applies "
                          "it exactly once]",
                          (unsigned long long)a.seq, c->id, s->name);
    if (rv) return rv;
    /* A daemon that predates exactly-once steps leaves `duplicate` out. */
    if (!wire_map_get(rep.root, "duplicate")) c->no_dedup = true;
    optimd_step_result res;
    rv = read_step(c, &rep, params_out, n_out, o.groups, o.groups_cap, &res);
    if (!rv && o.worker_result)
        rv = read_worker_result(c, &rep, o.worker_result);
    client_reply_free(&rep);
    res.seq = a.seq;
    if (!rv && result) *result = res;
    return rv;
}

int optimd_client_step_ex(optimd_client *c, const optimd_session *s,
                          const optimd_named_tensor *grads, size_t n_grads,
                          optimd_named_tensor *params_out, size_t n_out,
                          optimd_step_result *result)
{
    return optimd_client_step_opts(c, s, grads, n_grads, params_out, n_out,
                                   NULL, result);
}

int optimd_client_step(optimd_client *c, const optimd_session *s,
                       const optimd_named_tensor *grads, size_t n_grads,
                       optimd_named_tensor *params_out, size_t n_out,
                       double *lr_used, uint64_t *steps)
{
    optimd_step_result res;
    int rv = optimd_client_step_ex(c, s, grads, n_grads, params_out,
                                   params_out ? n_out : 0, &res);
    if (rv) return rv;
    if (lr_used) *lr_used = res.lr;
    if (steps) *steps = res.steps;
    return 0;
}

int optimd_client_pull(optimd_client *c, const optimd_session *s,
                       optimd_named_tensor *params, size_t n)
{
    return optimd_client_pull_as(c, s, NULL, params, n);
}

int optimd_client_pull_as(optimd_client *c, const optimd_session *s,
                          const char *worker, optimd_named_tensor *params,
                          size_t n)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = tensors_arg_ok(c, params, n, NULL);
    if (rv) return rv;
    if ((rv = client_session_ok(c, s))) return rv;
    if (worker && (!*worker || strlen(worker) > CLIENT_WORKER_MAX))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "a worker name is 1 to %d bytes",
                           CLIENT_WORKER_MAX);
    /* Always name them: an absent `names` would ask for every parameter,
     * even when the caller wants none. */
    req_names a = {.op = "pull", .from = params, .n = n, .worker = worker};
    client_call call;
    req_names_call(s, &a, &call);
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    rv = reply_tensors_into(c, &rep, params, n);
    client_reply_free(&rep);
    return rv;
}

void optimd_param_state_free(optimd_param_state *list, size_t count)
{
    if (!list) return;
    for (size_t i = 0; i < count; i++) {
        for (size_t k = 0; k < list[i].n_slots; k++) {
            free(list[i].slots[k].name);
            free(list[i].slots[k].data);
        }
        free(list[i].slots);
        free(list[i].name);
    }
    free(list);
}

/* A tensor of the reply copied into library memory, in host order. */
static int own_tensor(optimd_client *c, const msgpack_object *key,
                      const wire_tensor *t, optimd_tensor *out)
{
    bool oom;
    out->name = wire_strdup(key, &oom);
    out->data = malloc(t->nbytes ? t->nbytes : 1);
    if (!out->name || !out->data)
        return oom || !out->data
                   ? client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory")
                   : client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                 "reply to 'state': a key holds NUL");
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof t->shape);
    out->nbytes = t->nbytes;
    optimd_named_tensor dst = {out->name, out->dtype, out->ndim, out->shape,
                               out->data};
    char why[8];
    wire_tensor_into(t, &dst, why, sizeof why);
    return 0;
}

int read_state(optimd_client *c, const client_reply *rep,
               optimd_param_state **out, size_t *count)
{
    const msgpack_object *map;
    int rv = reply_get(c, rep, "state", MSGPACK_OBJECT_MAP, &map);
    if (rv) return rv;
    uint32_t n = map->via.map.size;
    optimd_param_state *list = calloc(n ? n : 1, sizeof *list);
    if (!list) return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    char why[256];
    for (uint32_t i = 0; i < n && !rv; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        const msgpack_object *slots = &kv->val;
        optimd_param_state *p = &list[i];
        bool oom;
        if (!(p->name = wire_strdup(&kv->key, &oom))) {
            rv = oom ? client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory")
                     : client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                   "reply to 'state': a name holds NUL");
            break;
        }
        if (slots->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(slots)) {
            rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                             "reply to 'state': state['%s'] is not a map of "
                             "slot key -> tensor", p->name);
            break;
        }
        uint32_t k_n = slots->via.map.size;
        if (!(p->slots = calloc(k_n ? k_n : 1, sizeof *p->slots))) {
            rv = client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
            break;
        }
        for (uint32_t k = 0; k < k_n && !rv; k++) {
            const msgpack_object_kv *slot = &slots->via.map.ptr[k];
            wire_tensor t;
            if (!wire_read_tensor(&slot->val, &t, why, sizeof why)) {
                rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                 "reply to 'state': state['%s']['%.*s']: %s",
                                 p->name, (int)slot->key.via.str.size,
                                 slot->key.via.str.ptr, why);
                break;
            }
            p->n_slots = k + 1;
            rv = own_tensor(c, &slot->key, &t, &p->slots[k]);
        }
    }
    if (rv) {
        /* calloc'd: entries not reached hold nothing to free. */
        optimd_param_state_free(list, n);
        return rv;
    }
    *out = list;
    *count = n;
    return 0;
}

int optimd_client_state(optimd_client *c, const optimd_session *s,
                        const char *const *names, size_t n_names,
                        optimd_param_state **out, size_t *count)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!out || !count)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "out or count is NULL");
    *out = NULL;
    *count = 0;
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    for (size_t i = 0; names && i < n_names; i++)
        if (!names[i])
            return client_fail(c, OPTIMD_CLIENT_E_ARG, "names[%zu] is NULL",
                               i);
    req_names a = {.op = "state", .names = names, .n = n_names,
                   .absent = names == NULL};
    client_call call;
    req_names_call(s, &a, &call);
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    rv = read_state(c, &rep, out, count);
    client_reply_free(&rep);
    return rv;
}
