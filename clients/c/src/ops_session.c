/* Session life cycle and settings: open, attach, info, set_hparams, close. */
#include "client_internal.h"

#include <string.h>

#define SESSION_NAME_MAX 128
#define TOKEN_LEN 32

static bool is_token(const msgpack_object *o)
{
    if (!o || o->type != MSGPACK_OBJECT_STR || o->via.str.size != TOKEN_LEN)
        return false;
    for (uint32_t i = 0; i < TOKEN_LEN; i++) {
        char ch = o->via.str.ptr[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
    }
    return true;
}

int optimd_client_open(optimd_client *c, const char *name,
                       const char *optimizer, const optimd_hvalue *hp,
                       size_t n_hp, const char *scheduler,
                       const optimd_hvalue *sched_hp, size_t n_sched_hp,
                       optimd_session *out, double *lr)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!name || !optimizer || !out)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "name, optimizer or out is NULL");
    size_t name_len = strlen(name);
    if (name_len == 0 || name_len > SESSION_NAME_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "session name must be 1 to %d bytes",
                           SESSION_NAME_MAX);
    if (n_sched_hp && !scheduler)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "scheduler hyperparameters given without a "
                           "scheduler");
    if (!wire_hvalues_arg_ok(hp, n_hp, c->err, sizeof c->err) ||
        !wire_hvalues_arg_ok(sched_hp, n_sched_hp, c->err, sizeof c->err))
        return OPTIMD_CLIENT_E_ARG;

    client_request rq;
    uint32_t keys = 2 + (n_hp ? 1 : 0) + (scheduler ? 1 : 0) +
                    (n_sched_hp ? 1 : 0);
    int rv = client_request_begin(c, &rq, "open", NULL, keys,
                                  name_len + 64 * (n_hp + n_sched_hp));
    if (rv) return rv;
    msgpack_packer *pk = &rq.w.pk;
    wire_pack_str(pk, "session");
    wire_pack_str(pk, name);
    wire_pack_str(pk, "optimizer");
    wire_pack_str(pk, optimizer);
    if (n_hp) {
        wire_pack_str(pk, "hparams");
        wire_pack_hvalues(pk, hp, n_hp);
    }
    if (scheduler) {
        wire_pack_str(pk, "scheduler");
        wire_pack_str(pk, scheduler);
    }
    if (n_sched_hp) {
        wire_pack_str(pk, "sched_hparams");
        wire_pack_hvalues(pk, sched_hp, n_sched_hp);
    }
    client_reply rep;
    if ((rv = client_roundtrip(&rq, &rep))) return rv;

    const msgpack_object *session = wire_map_get(rep.root, "session");
    const msgpack_object *token = wire_map_get(rep.root, "token");
    double first_lr;
    if (!session || !wire_is_str(session, name))
        rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                         "reply to 'open': 'session' is not \"%s\"", name);
    else if (!is_token(token))
        rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                         "reply to 'open': 'token' is not 32 lowercase hex "
                         "digits");
    else if (!(rv = reply_float(c, &rep, "lr", &first_lr))) {
        memcpy(out->name, name, name_len + 1);
        memcpy(out->token, token->via.str.ptr, TOKEN_LEN);
        out->token[TOKEN_LEN] = '\0';
        if (lr) *lr = first_lr;
    }
    client_reply_free(&rep);
    return rv;
}

/* Reads the keys shared by the replies of info and attach. */
static int read_info(optimd_client *c, const client_reply *rep,
                     optimd_session_info *out)
{
    optimd_session_info info;
    const msgpack_object *params;
    int rv;
    if ((rv = reply_uint(c, rep, "steps", &info.steps)) ||
        (rv = reply_float(c, rep, "base_lr", &info.base_lr)) ||
        (rv = reply_float(c, rep, "lr", &info.lr)) ||
        (rv = reply_get(c, rep, "params", MSGPACK_OBJECT_ARRAY, &params)))
        return rv;
    info.params = params->via.array.size;
    if (out) *out = info;
    return 0;
}

static int session_info_op(optimd_client *c, const char *op,
                           const optimd_session *s, optimd_session_info *out)
{
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    client_request rq;
    if ((rv = client_request_begin(c, &rq, op, s, 0, 0))) return rv;
    client_reply rep;
    if ((rv = client_roundtrip(&rq, &rep))) return rv;
    rv = read_info(c, &rep, out);
    client_reply_free(&rep);
    return rv;
}

int optimd_client_attach(optimd_client *c, const optimd_session *s)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    return session_info_op(c, "attach", s, NULL);
}

int optimd_client_info(optimd_client *c, const optimd_session *s,
                       optimd_session_info *out)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!out) return client_fail(c, OPTIMD_CLIENT_E_ARG, "out is NULL");
    return session_info_op(c, "info", s, out);
}

int optimd_client_set_hparams(optimd_client *c, const optimd_session *s,
                              const optimd_hvalue *hp, size_t n)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    if (!wire_hvalues_arg_ok(hp, n, c->err, sizeof c->err))
        return OPTIMD_CLIENT_E_ARG;
    client_request rq;
    if ((rv = client_request_begin(c, &rq, "set_hparams", s, 1, 64 * n)))
        return rv;
    wire_pack_str(&rq.w.pk, "hparams");
    wire_pack_hvalues(&rq.w.pk, hp, n);
    client_reply rep;
    if ((rv = client_roundtrip(&rq, &rep))) return rv;
    const msgpack_object *map;
    double lr;
    if (!(rv = reply_get(c, &rep, "hparams", MSGPACK_OBJECT_MAP, &map)) &&
        !(rv = reply_float(c, &rep, "base_lr", &lr)))
        rv = reply_float(c, &rep, "lr", &lr);
    client_reply_free(&rep);
    return rv;
}

int optimd_client_close(optimd_client *c, const optimd_session *s)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    client_request rq;
    if ((rv = client_request_begin(c, &rq, "close", s, 0, 0))) return rv;
    client_reply rep;
    if ((rv = client_roundtrip(&rq, &rep))) return rv;
    client_reply_free(&rep);
    return 0;
}
