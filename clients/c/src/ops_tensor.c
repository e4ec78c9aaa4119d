/* Operations that move tensors: register, step, pull. */
#include "client_internal.h"

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

typedef struct tensors_args {
    const char *key;
    const optimd_named_tensor *t;
    size_t n;
} tensors_args;

static void pack_tensors(msgpack_packer *pk, const void *arg)
{
    const tensors_args *a = arg;
    wire_pack_str(pk, a->key);
    pack_tensor_map(pk, a->t, a->n);
}

static void pack_names(msgpack_packer *pk, const void *arg)
{
    const tensors_args *a = arg;
    /* Always name them: an absent `names` would ask for every parameter,
     * even when the caller wants none. */
    wire_pack_str(pk, "names");
    msgpack_pack_array(pk, a->n);
    for (size_t i = 0; i < a->n; i++) wire_pack_str(pk, a->t[i].name);
}

static size_t names_hint(const optimd_named_tensor *t, size_t n)
{
    size_t hint = 0;
    for (size_t i = 0; i < n; i++) hint += strlen(t[i].name) + 5;
    return hint;
}

/* After a register whose first attempt may have been applied met
 * PARAM_EXISTS on a repeat: true when every parameter holds exactly the
 * values sent, i.e. the lost attempt registered them (or someone
 * registered the same; either way the caller has what it asked for). */
static bool registered_as_sent(optimd_client *c, const optimd_session *s,
                               const optimd_named_tensor *params, size_t n)
{
    tensors_args a = {NULL, params, n};
    client_call call = {.op = "pull", .s = s, .n_keys = 1,
                        .size_hint = names_hint(params, n),
                        .pack = pack_names, .arg = &a,
                        .retry = CLIENT_RETRY_ALWAYS};
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

int optimd_client_register(optimd_client *c, const optimd_session *s,
                           const optimd_named_tensor *params, size_t n)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    size_t hint = 0;
    int rv = tensors_arg_ok(c, params, n, &hint);
    if (rv) return rv;
    if ((rv = client_session_ok(c, s))) return rv;
    tensors_args a = {"params", params, n};
    client_call call = {.op = "register", .s = s, .n_keys = 1,
                        .size_hint = hint, .pack = pack_tensors, .arg = &a,
                        .retry = CLIENT_RETRY_ALWAYS};
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
    uint64_t registered;
    if (!(rv = reply_uint(c, &rep, "registered", &registered)) &&
        registered != n)
        rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                         "reply to 'register' counts %llu parameters, the "
                         "request had %zu", (unsigned long long)registered, n);
    client_reply_free(&rep);
    return rv;
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

typedef struct step_args {
    const optimd_named_tensor *grads;
    size_t n_grads;
    bool want_params;
    uint64_t seq;
    const char *client;
} step_args;

static void pack_step(msgpack_packer *pk, const void *arg)
{
    const step_args *a = arg;
    wire_pack_str(pk, "grads");
    pack_tensor_map(pk, a->grads, a->n_grads);
    if (!a->want_params) {
        /* Nobody wants the new values: spare the daemon sending them. */
        wire_pack_str(pk, "return");
        msgpack_pack_false(pk);
    }
    /* Every attempt of one step carries the same seq: that is what lets
     * the daemon answer a repeat instead of applying it again. */
    wire_pack_str(pk, "seq");
    msgpack_pack_uint64(pk, a->seq);
    wire_pack_str(pk, "client");
    wire_pack_str(pk, a->client);
}

int optimd_client_step_ex(optimd_client *c, const optimd_session *s,
                          const optimd_named_tensor *grads, size_t n_grads,
                          optimd_named_tensor *params_out, size_t n_out,
                          optimd_step_result *result)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    size_t hint = 0;
    int rv;
    if ((rv = tensors_arg_ok(c, grads, n_grads, &hint)) ||
        (rv = tensors_arg_ok(c, params_out, n_out, NULL)))
        return rv;
    if ((rv = client_session_ok(c, s))) return rv;
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

    step_args a = {grads, n_grads, n_out > 0, e->next, c->id};
    client_call call = {.op = "step", .s = s, .n_keys = n_out ? 3 : 4,
                        .size_hint = hint, .pack = pack_step, .arg = &a,
                        .retry = c->no_dedup ? CLIENT_RETRY_UNSENT
                                             : CLIENT_RETRY_ALWAYS};
    client_reply rep;
    rv = client_call_run(c, &call, &rep);
    /* A step whose fate is unknown keeps its seq, so that calling it again
     * cannot apply it twice; any answer uses the seq up. */
    if (rv != OPTIMD_CLIENT_E_TRANSPORT &&
        client_seq_get(c, s->name, &e) == 0 && e->next == a.seq)
        e->next = a.seq + 1;
    if (rv == OPTIMD_CLIENT_E_TRANSPORT)
        client_err_append(c, " [step seq %llu of client %s on session '%s': "
                          "the next step on it carries the same seq, so "
                          "calling it again with the same gradients applies "
                          "it exactly once]",
                          (unsigned long long)a.seq, c->id, s->name);
    if (rv) return rv;
    optimd_step_result res;
    memset(&res, 0, sizeof res);
    res.seq = a.seq;
    const msgpack_object *dup = wire_map_get(rep.root, "duplicate");
    if (!dup) {
        c->no_dedup = true;
    } else if (dup->type != MSGPACK_OBJECT_BOOLEAN) {
        rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                         "reply to 'step': 'duplicate' is not a bool");
    } else {
        res.duplicate = dup->via.boolean;
    }
    if (!rv && !(rv = reply_uint(c, &rep, "steps", &res.steps)) &&
        !(rv = reply_float(c, &rep, "lr", &res.lr)) &&
        !(rv = reply_float(c, &rep, "next_lr", &res.next_lr)) && n_out)
        rv = reply_tensors_into(c, &rep, params_out, n_out);
    client_reply_free(&rep);
    if (!rv && result) *result = res;
    return rv;
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
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = tensors_arg_ok(c, params, n, NULL);
    if (rv) return rv;
    if ((rv = client_session_ok(c, s))) return rv;
    tensors_args a = {NULL, params, n};
    client_call call = {.op = "pull", .s = s, .n_keys = 1,
                        .size_hint = names_hint(params, n),
                        .pack = pack_names, .arg = &a,
                        .retry = CLIENT_RETRY_ALWAYS};
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    rv = reply_tensors_into(c, &rep, params, n);
    client_reply_free(&rep);
    return rv;
}
