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

int optimd_client_register(optimd_client *c, const optimd_session *s,
                           const optimd_named_tensor *params, size_t n)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    size_t hint;
    int rv = tensors_arg_ok(c, params, n, &hint);
    if (rv) return rv;
    if ((rv = client_session_ok(c, s))) return rv;
    client_request rq;
    if ((rv = client_request_begin(c, &rq, "register", s, 1, hint))) return rv;
    wire_pack_str(&rq.w.pk, "params");
    pack_tensor_map(&rq.w.pk, params, n);
    client_reply rep;
    if ((rv = client_roundtrip(&rq, &rep))) return rv;
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

int optimd_client_step_ex(optimd_client *c, const optimd_session *s,
                          const optimd_named_tensor *grads, size_t n_grads,
                          optimd_named_tensor *params_out, size_t n_out,
                          optimd_step_result *result)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    size_t hint;
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

    client_request rq;
    if ((rv = client_request_begin(c, &rq, "step", s, n_out ? 1 : 2, hint)))
        return rv;
    wire_pack_str(&rq.w.pk, "grads");
    pack_tensor_map(&rq.w.pk, grads, n_grads);
    if (!n_out) {
        /* Nobody wants the new values: spare the daemon sending them. */
        wire_pack_str(&rq.w.pk, "return");
        msgpack_pack_false(&rq.w.pk);
    }
    client_reply rep;
    if ((rv = client_roundtrip(&rq, &rep))) return rv;
    optimd_step_result res;
    if (!(rv = reply_uint(c, &rep, "steps", &res.steps)) &&
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
    size_t hint = 0;
    for (size_t i = 0; i < n; i++) hint += strlen(params[i].name) + 5;
    client_request rq;
    if ((rv = client_request_begin(c, &rq, "pull", s, 1, hint))) return rv;
    /* Always name them: an absent `names` would ask for every parameter,
     * even when the caller wants none. */
    wire_pack_str(&rq.w.pk, "names");
    msgpack_pack_array(&rq.w.pk, n);
    for (size_t i = 0; i < n; i++) wire_pack_str(&rq.w.pk, params[i].name);
    client_reply rep;
    if ((rv = client_roundtrip(&rq, &rep))) return rv;
    rv = reply_tensors_into(c, &rep, params, n);
    client_reply_free(&rep);
    return rv;
}
