/* Session life cycle and settings: open, attach, info, set_hparams, close. */
#include "client_internal.h"

#include <stddef.h>
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

void optimd_open_options_init(optimd_open_options *opts)
{
    if (!opts) return;
    memset(opts, 0, sizeof *opts);
    opts->struct_size = sizeof *opts;
}

/* True when the caller's options struct reaches past `member`. */
#define OPEN_HAS(o, member)                                                \
    ((o)->struct_size >= offsetof(optimd_open_options, member) +           \
                             sizeof((o)->member))

typedef struct open_args {
    const char *name;
    optimd_open_options o;
    char open_key[CLIENT_ID_MAX + 1];
} open_args;

static void pack_open(msgpack_packer *pk, const void *arg)
{
    const open_args *a = arg;
    wire_pack_str(pk, "session");
    wire_pack_str(pk, a->name);
    wire_pack_str(pk, "optimizer");
    wire_pack_str(pk, a->o.optimizer);
    wire_pack_str(pk, "open_key");
    wire_pack_str(pk, a->open_key);
    if (a->o.n_hparams) {
        wire_pack_str(pk, "hparams");
        wire_pack_hvalues(pk, a->o.hparams, a->o.n_hparams);
    }
    if (a->o.scheduler) {
        wire_pack_str(pk, "scheduler");
        wire_pack_str(pk, a->o.scheduler);
    }
    if (a->o.n_sched_hparams) {
        wire_pack_str(pk, "sched_hparams");
        wire_pack_hvalues(pk, a->o.sched_hparams, a->o.n_sched_hparams);
    }
    if (a->o.durability) {
        wire_pack_str(pk, "durability");
        wire_pack_str(pk, a->o.durability);
    }
}

int optimd_client_open_ex(optimd_client *c, const char *name,
                          const optimd_open_options *opts,
                          optimd_session *out, double *lr)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!opts) return client_fail(c, OPTIMD_CLIENT_E_ARG, "options is NULL");
    if (!OPEN_HAS(opts, optimizer))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "options.struct_size is %zu: fill the options "
                           "with optimd_open_options_init",
                           opts->struct_size);
    open_args a = {.name = name};
    optimd_open_options_init(&a.o);
    a.o.optimizer = opts->optimizer;
    if (OPEN_HAS(opts, hparams)) a.o.hparams = opts->hparams;
    if (OPEN_HAS(opts, n_hparams)) a.o.n_hparams = opts->n_hparams;
    if (OPEN_HAS(opts, scheduler)) a.o.scheduler = opts->scheduler;
    if (OPEN_HAS(opts, sched_hparams)) a.o.sched_hparams = opts->sched_hparams;
    if (OPEN_HAS(opts, n_sched_hparams))
        a.o.n_sched_hparams = opts->n_sched_hparams;
    if (OPEN_HAS(opts, durability)) a.o.durability = opts->durability;

    if (!name || !a.o.optimizer || !out)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "name, optimizer or out is NULL");
    size_t name_len = strlen(name);
    if (name_len == 0 || name_len > SESSION_NAME_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "session name must be 1 to %d bytes",
                           SESSION_NAME_MAX);
    if (a.o.n_sched_hparams && !a.o.scheduler)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "scheduler hyperparameters given without a "
                           "scheduler");
    if (!wire_hvalues_arg_ok(a.o.hparams, a.o.n_hparams, c->err,
                             sizeof c->err) ||
        !wire_hvalues_arg_ok(a.o.sched_hparams, a.o.n_sched_hparams, c->err,
                             sizeof c->err))
        return OPTIMD_CLIENT_E_ARG;

    /* One key for every attempt of this open: a retry whose first attempt
     * created the session gets its token back (protocol.md, `open`). */
    client_random_id(a.open_key);
    client_call call = {
        .op = "open",
        .n_keys = 3 + (a.o.n_hparams ? 1 : 0) + (a.o.scheduler ? 1 : 0) +
                  (a.o.n_sched_hparams ? 1 : 0) + (a.o.durability ? 1 : 0),
        .size_hint = name_len + 64 * (a.o.n_hparams + a.o.n_sched_hparams),
        .pack = pack_open,
        .arg = &a,
        /* Repeating an open cannot create a second session, and with the
         * open_key a repeat whose first attempt got through is answered
         * with that session's token. */
        .retry = CLIENT_RETRY_ALWAYS};
    client_reply rep;
    int rv = client_call_run(c, &call, &rep);
    if (rv) return rv;

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

int optimd_client_open(optimd_client *c, const char *name,
                       const char *optimizer, const optimd_hvalue *hp,
                       size_t n_hp, const char *scheduler,
                       const optimd_hvalue *sched_hp, size_t n_sched_hp,
                       optimd_session *out, double *lr)
{
    optimd_open_options o;
    optimd_open_options_init(&o);
    o.optimizer = optimizer;
    o.hparams = hp;
    o.n_hparams = n_hp;
    o.scheduler = scheduler;
    o.sched_hparams = sched_hp;
    o.n_sched_hparams = n_sched_hp;
    return optimd_client_open_ex(c, name, &o, out, lr);
}

/* Copies an optional str key into buf ("" when absent or nil); false
 * when it is there but not a str that fits. */
static bool optional_str(const client_reply *rep, const char *key, char *buf,
                         size_t cap)
{
    const msgpack_object *o = wire_map_get(rep->root, key);
    buf[0] = '\0';
    if (!o || o->type == MSGPACK_OBJECT_NIL) return true;
    return wire_copy_str(o, buf, cap);
}

/* Reads the keys shared by the replies of info and attach, and raises
 * the session's next seq above the daemon's `client_seq` if it says one. */
static int read_info(optimd_client *c, const optimd_session *s,
                     const client_reply *rep, optimd_session_info *out)
{
    optimd_session_info info;
    memset(&info, 0, sizeof info);
    const msgpack_object *params;
    int rv;
    if ((rv = reply_uint(c, rep, "steps", &info.steps)) ||
        (rv = reply_float(c, rep, "base_lr", &info.base_lr)) ||
        (rv = reply_float(c, rep, "lr", &info.lr)) ||
        (rv = reply_get(c, rep, "params", MSGPACK_OBJECT_ARRAY, &params)))
        return rv;
    info.params = params->via.array.size;
    /* `durability` came with durable sessions: a daemon from before them
     * leaves it out, which is no error. */
    if (!optional_str(rep, "durability", info.durability,
                      sizeof info.durability) ||
        !optional_str(rep, "optimizer", info.optimizer,
                      sizeof info.optimizer) ||
        !optional_str(rep, "scheduler", info.scheduler,
                      sizeof info.scheduler))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': 'durability', 'optimizer' or "
                           "'scheduler' is not a str of a sensible length",
                           rep->op);
    const msgpack_object *cs = wire_map_get(rep->root, "client_seq");
    uint64_t last;
    if (cs) {
        if (!wire_as_uint(cs, &last) || last >= CLIENT_SEQ_MAX)
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s': 'client_seq' is not a uint "
                               "below 2^53", rep->op);
        client_seq *e;
        if ((rv = client_seq_get(c, s->name, &e))) return rv;
        if (e->next <= last) e->next = last + 1;
    }
    if (out) *out = info;
    return 0;
}

static void pack_client(msgpack_packer *pk, const void *arg)
{
    const optimd_client *c = arg;
    wire_pack_str(pk, "client");
    wire_pack_str(pk, c->id);
}

static int session_info_op(optimd_client *c, const char *op,
                           const optimd_session *s, optimd_session_info *out)
{
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    /* `client` asks for this client's last applied seq; a daemon that
     * does not know the key ignores it (protocol.md section 2). */
    client_call call = {.op = op, .s = s, .n_keys = 1, .pack = pack_client,
                        .arg = c, .size_hint = CLIENT_ID_MAX + 16,
                        .retry = CLIENT_RETRY_ALWAYS};
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    rv = read_info(c, s, &rep, out);
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

typedef struct hvalues_args {
    const optimd_hvalue *hp;
    size_t n;
} hvalues_args;

static void pack_set_hparams(msgpack_packer *pk, const void *arg)
{
    const hvalues_args *a = arg;
    wire_pack_str(pk, "hparams");
    wire_pack_hvalues(pk, a->hp, a->n);
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
    hvalues_args a = {hp, n};
    client_call call = {.op = "set_hparams", .s = s, .n_keys = 1,
                        .size_hint = 64 * n, .pack = pack_set_hparams,
                        .arg = &a, .retry = CLIENT_RETRY_UNSENT};
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
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
    client_call call = {.op = "close", .s = s,
                        .retry = CLIENT_RETRY_ALWAYS};
    client_reply rep;
    rv = client_call_run(c, &call, &rep);
    if (rv == OPTIMD_E_UNKNOWN_SESSION && call.ambiguous) {
        /* The attempt whose reply was lost closed it. */
        c->err[0] = '\0';
        rv = 0;
    } else if (rv) {
        return rv;
    } else {
        client_reply_free(&rep);
    }
    /* A later session of that name starts a fresh record of seqs. */
    for (size_t i = 0; i < c->n_seqs; i++)
        if (strcmp(c->seqs[i].session, s->name) == 0) {
            c->seqs[i] = c->seqs[--c->n_seqs];
            break;
        }
    return 0;
}
