/* Session life cycle and settings: open, attach, info, set_hparams, close. */
#include "client_internal.h"

#include <math.h>
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

/* Packs one hyperparameter map key when there is something to say. */
static void pack_hvalues_key(msgpack_packer *pk, const char *key,
                             const optimd_hvalue *hp, size_t n)
{
    wire_pack_str(pk, key);
    wire_pack_hvalues(pk, hp, n);
}

static void pack_combined(msgpack_packer *pk, const optimd_sched_spec *sc,
                          size_t n, const int64_t *ms, size_t n_ms)
{
    if (n) {
        wire_pack_str(pk, "schedulers");
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++) {
            msgpack_pack_map(pk, 1 + (sc[i].n_sched_hparams ? 1 : 0));
            wire_pack_str(pk, "scheduler");
            wire_pack_str(pk, sc[i].scheduler);
            if (sc[i].n_sched_hparams)
                pack_hvalues_key(pk, "sched_hparams", sc[i].sched_hparams,
                                 sc[i].n_sched_hparams);
        }
    }
    if (n_ms) {
        wire_pack_str(pk, "milestones");
        msgpack_pack_array(pk, n_ms);
        for (size_t i = 0; i < n_ms; i++) msgpack_pack_int64(pk, ms[i]);
    }
}

static void pack_group_spec(msgpack_packer *pk, const optimd_group_spec *g)
{
    bool sched_key = g->scheduler || g->no_scheduler;
    msgpack_pack_map(pk, 1 + (g->n_hparams ? 1 : 0) + (sched_key ? 1 : 0) +
                             (g->n_sched_hparams ? 1 : 0) +
                             (g->n_schedulers ? 1 : 0) +
                             (g->n_milestones ? 1 : 0));
    wire_pack_str(pk, "name");
    wire_pack_str(pk, g->name);
    if (g->n_hparams) pack_hvalues_key(pk, "hparams", g->hparams, g->n_hparams);
    if (sched_key) {
        wire_pack_str(pk, "scheduler");
        if (g->scheduler) wire_pack_str(pk, g->scheduler);
        else msgpack_pack_nil(pk);
    }
    if (g->n_sched_hparams)
        pack_hvalues_key(pk, "sched_hparams", g->sched_hparams,
                         g->n_sched_hparams);
    pack_combined(pk, g->schedulers, g->n_schedulers, g->milestones,
                  g->n_milestones);
}

/* The `workers` map: the mode and the settings given. */
static void pack_workers(msgpack_packer *pk, const optimd_open_options *o)
{
    wire_pack_str(pk, "workers");
    msgpack_pack_map(pk, 1 + (o->workers_count > 0) +
                             (o->workers_reduce != NULL) +
                             (o->workers_timeout_ms > 0) +
                             (o->workers_on_timeout != NULL) +
                             (o->workers_max_staleness > 0));
    wire_pack_str(pk, "mode");
    wire_pack_str(pk, o->workers_mode);
    if (o->workers_count) {
        wire_pack_str(pk, "count");
        msgpack_pack_uint32(pk, o->workers_count);
    }
    if (o->workers_reduce) {
        wire_pack_str(pk, "reduce");
        wire_pack_str(pk, o->workers_reduce);
    }
    if (o->workers_timeout_ms) {
        wire_pack_str(pk, "timeout_ms");
        msgpack_pack_uint32(pk, o->workers_timeout_ms);
    }
    if (o->workers_on_timeout) {
        wire_pack_str(pk, "on_timeout");
        wire_pack_str(pk, o->workers_on_timeout);
    }
    if (o->workers_max_staleness) {
        wire_pack_str(pk, "max_staleness");
        msgpack_pack_uint32(pk, o->workers_max_staleness);
    }
}

static void pack_open(msgpack_packer *pk, const void *arg)
{
    const req_open *a = arg;
    wire_pack_str(pk, "session");
    wire_pack_str(pk, a->name);
    wire_pack_str(pk, "optimizer");
    wire_pack_str(pk, a->o.optimizer);
    if (a->open_key) {
        wire_pack_str(pk, "open_key");
        wire_pack_str(pk, a->open_key);
    }
    if (a->o.n_hparams)
        pack_hvalues_key(pk, "hparams", a->o.hparams, a->o.n_hparams);
    if (a->o.scheduler) {
        wire_pack_str(pk, "scheduler");
        wire_pack_str(pk, a->o.scheduler);
    }
    if (a->o.n_sched_hparams)
        pack_hvalues_key(pk, "sched_hparams", a->o.sched_hparams,
                         a->o.n_sched_hparams);
    if (a->o.durability) {
        wire_pack_str(pk, "durability");
        wire_pack_str(pk, a->o.durability);
    }
    pack_combined(pk, a->o.schedulers, a->o.n_schedulers, a->o.milestones,
                  a->o.n_milestones);
    if (a->o.lookahead) {
        wire_pack_str(pk, "lookahead");
        msgpack_pack_map(pk, (a->o.lookahead_k ? 1 : 0) +
                                 (a->o.lookahead_alpha > 0 ? 1 : 0));
        if (a->o.lookahead_k) {
            wire_pack_str(pk, "k");
            msgpack_pack_int64(pk, a->o.lookahead_k);
        }
        if (a->o.lookahead_alpha > 0) {
            wire_pack_str(pk, "alpha");
            msgpack_pack_double(pk, a->o.lookahead_alpha);
        }
    }
    if (a->o.workers_mode) pack_workers(pk, &a->o);
    if (a->o.n_groups) {
        wire_pack_str(pk, "groups");
        msgpack_pack_array(pk, a->o.n_groups);
        for (size_t i = 0; i < a->o.n_groups; i++)
            pack_group_spec(pk, &a->o.groups[i]);
    }
}

void req_open_call(const req_open *a, client_call *call)
{
    size_t hint = strlen(a->name) +
                  64 * (a->o.n_hparams + a->o.n_sched_hparams + 1);
    for (size_t i = 0; i < a->o.n_groups; i++)
        hint += 96 + 64 * (a->o.groups[i].n_hparams +
                           a->o.groups[i].n_sched_hparams);
    *call = (client_call){
        .op = "open",
        .n_keys = 2 + (a->open_key ? 1 : 0) + (a->o.n_hparams ? 1 : 0) +
                  (a->o.scheduler ? 1 : 0) + (a->o.n_sched_hparams ? 1 : 0) +
                  (a->o.durability ? 1 : 0) + (a->o.n_groups ? 1 : 0) +
                  (a->o.n_schedulers ? 1 : 0) + (a->o.n_milestones ? 1 : 0) +
                  (a->o.lookahead ? 1 : 0) + (a->o.workers_mode ? 1 : 0),
        .size_hint = hint,
        .pack = pack_open,
        .arg = a,
        /* Repeating an open cannot create a second session, and with the
         * open_key a repeat whose first attempt got through is answered
         * with that session's token. */
        .retry = CLIENT_RETRY_ALWAYS};
}

int read_open(optimd_client *c, const client_reply *rep, const char *name,
              optimd_session *out, double *lr, int32_t *existing)
{
    const msgpack_object *session = wire_map_get(rep->root, "session");
    const msgpack_object *token = wire_map_get(rep->root, "token");
    const msgpack_object *ex = wire_map_get(rep->root, "existing");
    double first_lr;
    int rv;
    if (!session || !wire_is_str(session, name))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'open': 'session' is not \"%s\"", name);
    if (!is_token(token))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'open': 'token' is not 32 lowercase "
                           "hex digits");
    /* A daemon from before open_key leaves `existing` out. */
    if (ex && ex->type != MSGPACK_OBJECT_BOOLEAN)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'open': 'existing' is not a bool");
    if ((rv = reply_float(c, rep, "lr", &first_lr))) return rv;
    size_t name_len = strlen(name);
    memcpy(out->name, name, name_len + 1);
    memcpy(out->token, token->via.str.ptr, TOKEN_LEN);
    out->token[TOKEN_LEN] = '\0';
    if (lr) *lr = first_lr;
    if (existing) *existing = ex && ex->via.boolean;
    return 0;
}

/* protocol.md, `open`: a group name is 1 to 64 bytes of A-Z a-z 0-9 _ . - */
static bool group_name_ok(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > OPTIMD_GROUP_NAME_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

static bool open_key_ok(const char *key)
{
    size_t len = strlen(key);
    if (len < 16 || len > 64) return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)key[i] < 0x21 || (unsigned char)key[i] > 0x7e)
            return false;
    return true;
}

static int combined_arg_ok(optimd_client *c, const optimd_sched_spec *sc,
                           size_t n, const int64_t *ms, size_t n_ms)
{
    if ((n && !sc) || (n_ms && !ms))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "schedulers or milestones is NULL");
    for (size_t i = 0; i < n; i++) {
        if (!sc[i].scheduler)
            return client_fail(c, OPTIMD_CLIENT_E_ARG,
                               "schedulers[%zu] names no scheduler", i);
        if (!wire_hvalues_arg_ok(sc[i].sched_hparams, sc[i].n_sched_hparams,
                                 c->err, sizeof c->err))
            return OPTIMD_CLIENT_E_ARG;
    }
    return 0;
}

static int groups_arg_ok(optimd_client *c, const optimd_group_spec *g,
                         size_t n)
{
    if (n && !g) return client_fail(c, OPTIMD_CLIENT_E_ARG, "groups is NULL");
    if (n >= OPTIMD_MAX_GROUPS)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "%zu groups: at most %d besides \"default\"", n,
                           OPTIMD_MAX_GROUPS - 1);
    for (size_t i = 0; i < n; i++) {
        if (!group_name_ok(g[i].name))
            return client_fail(c, OPTIMD_CLIENT_E_ARG,
                               "group %zu: a name is 1 to %d bytes of "
                               "A-Z a-z 0-9 _ . -", i, OPTIMD_GROUP_NAME_MAX);
        if (g[i].scheduler && g[i].no_scheduler)
            return client_fail(c, OPTIMD_CLIENT_E_ARG,
                               "group '%s': a scheduler and no_scheduler",
                               g[i].name);
        if (g[i].n_sched_hparams && g[i].no_scheduler)
            return client_fail(c, OPTIMD_CLIENT_E_ARG,
                               "group '%s': scheduler hyperparameters with "
                               "no_scheduler", g[i].name);
        int rv = combined_arg_ok(c, g[i].schedulers, g[i].n_schedulers,
                                 g[i].milestones, g[i].n_milestones);
        if (rv) return rv;
        if (!wire_hvalues_arg_ok(g[i].hparams, g[i].n_hparams, c->err,
                                 sizeof c->err) ||
            !wire_hvalues_arg_ok(g[i].sched_hparams, g[i].n_sched_hparams,
                                 c->err, sizeof c->err))
            return OPTIMD_CLIENT_E_ARG;
    }
    return 0;
}

/* The protocol makes a key of another mode BAD_REQUEST; said here, the
 * caller learns which member it was. */
static int workers_arg_ok(optimd_client *c, const optimd_open_options *o)
{
    const char *m = o->workers_mode;
    bool any = o->workers_count || o->workers_reduce ||
               o->workers_timeout_ms || o->workers_on_timeout ||
               o->workers_max_staleness;
    if (!m) {
        if (any)
            return client_fail(c, OPTIMD_CLIENT_E_ARG,
                               "workers settings without workers_mode");
        return 0;
    }
    bool sync = strcmp(m, "sync") == 0, bounded = strcmp(m, "bounded") == 0;
    if (!sync && !bounded && strcmp(m, "async") != 0) return 0;
    const char *stray =
        !sync && o->workers_count        ? "workers_count"
        : !sync && o->workers_reduce     ? "workers_reduce"
        : !sync && o->workers_on_timeout ? "workers_on_timeout"
        : !sync && !bounded && o->workers_timeout_ms ? "workers_timeout_ms"
        : !bounded && o->workers_max_staleness ? "workers_max_staleness"
                                               : NULL;
    if (stray)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "%s does not belong to workers_mode \"%s\"",
                           stray, m);
    return 0;
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
    req_open a = {.name = name};
    optimd_open_options_init(&a.o);
    a.o.optimizer = opts->optimizer;
    if (OPEN_HAS(opts, hparams)) a.o.hparams = opts->hparams;
    if (OPEN_HAS(opts, n_hparams)) a.o.n_hparams = opts->n_hparams;
    if (OPEN_HAS(opts, scheduler)) a.o.scheduler = opts->scheduler;
    if (OPEN_HAS(opts, sched_hparams)) a.o.sched_hparams = opts->sched_hparams;
    if (OPEN_HAS(opts, n_sched_hparams))
        a.o.n_sched_hparams = opts->n_sched_hparams;
    if (OPEN_HAS(opts, durability)) a.o.durability = opts->durability;
    if (OPEN_HAS(opts, groups)) a.o.groups = opts->groups;
    if (OPEN_HAS(opts, n_groups)) a.o.n_groups = opts->n_groups;
    if (OPEN_HAS(opts, n_milestones)) {
        a.o.schedulers = opts->schedulers;
        a.o.n_schedulers = opts->n_schedulers;
        a.o.milestones = opts->milestones;
        a.o.n_milestones = opts->n_milestones;
    }
    if (OPEN_HAS(opts, lookahead_alpha)) {
        a.o.lookahead = opts->lookahead;
        a.o.lookahead_k = opts->lookahead_k;
        a.o.lookahead_alpha = opts->lookahead_alpha;
    }
    if (OPEN_HAS(opts, workers_max_staleness)) {
        a.o.workers_mode = opts->workers_mode;
        a.o.workers_count = opts->workers_count;
        a.o.workers_reduce = opts->workers_reduce;
        a.o.workers_timeout_ms = opts->workers_timeout_ms;
        a.o.workers_on_timeout = opts->workers_on_timeout;
        a.o.workers_max_staleness = opts->workers_max_staleness;
    }
    int32_t *existing = OPEN_HAS(opts, existing) ? opts->existing : NULL;
    const char *key = OPEN_HAS(opts, open_key) ? opts->open_key : NULL;

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
    int rv = groups_arg_ok(c, a.o.groups, a.o.n_groups);
    if (rv) return rv;
    if ((rv = combined_arg_ok(c, a.o.schedulers, a.o.n_schedulers,
                              a.o.milestones, a.o.n_milestones)))
        return rv;
    if (a.o.lookahead && (a.o.lookahead_k < 0 || !(a.o.lookahead_alpha >= 0)))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "lookahead_k and lookahead_alpha must be positive, "
                           "or 0 for the default");
    if ((rv = workers_arg_ok(c, &a.o))) return rv;
    if (key && !open_key_ok(key))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "open_key must be 16 to 64 printable ASCII bytes "
                           "(0x21 to 0x7e)");

    /* One key for every attempt of this open: a retry whose first attempt
     * created the session gets its token back (protocol.md, `open`). */
    char random_key[CLIENT_ID_MAX + 1];
    if (!key) {
        client_random_id(random_key);
        key = random_key;
    }
    a.open_key = key;
    client_call call;
    req_open_call(&a, &call);
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    rv = read_open(c, &rep, name, out, lr, existing);
    client_reply_free(&rep);
    if (!rv) rv = workers_learn_open(c, name, &a.o);
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

/* Reads the keys shared by the replies of info and attach. */
static int read_info(optimd_client *c, const client_reply *rep,
                     optimd_session_info *out)
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
    if (out) *out = info;
    return 0;
}

/* Raises the session's next seq above the daemon's `client_seq`, if the
 * reply says one. */
static int take_client_seq(optimd_client *c, const optimd_session *s,
                           const client_reply *rep)
{
    const msgpack_object *cs = wire_map_get(rep->root, "client_seq");
    uint64_t last;
    if (!cs) return 0;
    if (!wire_as_uint(cs, &last) || last >= CLIENT_SEQ_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': 'client_seq' is not a uint "
                           "below 2^53", rep->op);
    client_seq *e;
    int rv = client_seq_get(c, s->name, &e);
    if (rv) return rv;
    if (e->next <= last) e->next = last + 1;
    return 0;
}

/* info and attach: read the reply into `info` and/or `details`. */
static int session_info_op(optimd_client *c, const char *op,
                           const optimd_session *s, optimd_session_info *info,
                           optimd_session_details **details)
{
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    /* `client` asks for this client's last applied seq; a daemon that
     * does not know the key ignores it (protocol.md section 2). */
    req_str a = {op, "client", c->id};
    client_call call;
    req_str_call(s, &a, &call);
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    optimd_session_details *d = NULL;
    /* The details are read (and checked) only when asked for: a caller
     * of optimd_client_info needs none of them. */
    if (!(rv = read_info(c, &rep, info)) &&
        !(details && (rv = read_details(c, &rep, true, &d))) &&
        !(rv = take_client_seq(c, s, &rep)) &&
        !(rv = workers_learn(c, s->name, wire_map_get(rep.root, "workers"))) &&
        details) {
        *details = d;
        d = NULL;
    }
    optimd_session_details_free(d);
    client_reply_free(&rep);
    return rv;
}

int optimd_client_attach(optimd_client *c, const optimd_session *s)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    return session_info_op(c, "attach", s, NULL, NULL);
}

int optimd_client_info(optimd_client *c, const optimd_session *s,
                       optimd_session_info *out)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!out) return client_fail(c, OPTIMD_CLIENT_E_ARG, "out is NULL");
    return session_info_op(c, "info", s, out, NULL);
}

int optimd_client_info_ex(optimd_client *c, const optimd_session *s,
                          optimd_session_details **out)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!out) return client_fail(c, OPTIMD_CLIENT_E_ARG, "out is NULL");
    *out = NULL;
    return session_info_op(c, "info", s, NULL, out);
}

int optimd_client_hparams(optimd_client *c, const optimd_session *s,
                          optimd_session_details **out)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!out) return client_fail(c, OPTIMD_CLIENT_E_ARG, "out is NULL");
    *out = NULL;
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    req_str a = {"hparams", NULL, NULL};
    client_call call;
    req_str_call(s, &a, &call);
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    rv = read_details(c, &rep, false, out);
    client_reply_free(&rep);
    return rv;
}

static void pack_set_hparams(msgpack_packer *pk, const void *arg)
{
    const req_set_hparams *a = arg;
    wire_pack_str(pk, "hparams");
    wire_pack_hvalues(pk, a->hp, a->n);
    if (a->group) {
        wire_pack_str(pk, "group");
        wire_pack_str(pk, a->group);
    }
}

void req_set_hparams_call(const optimd_session *s, const req_set_hparams *a,
                          client_call *call)
{
    *call = (client_call){.op = "set_hparams", .s = s,
                          .n_keys = 1 + (a->group ? 1 : 0),
                          .size_hint = 64 * (a->n + 1),
                          .pack = pack_set_hparams, .arg = a,
                          /* Between a lost attempt and its repeat another
                           * client's step could change what "set lr"
                           * means. */
                          .retry = CLIENT_RETRY_UNSENT};
}

int optimd_client_set_hparams_ex(optimd_client *c, const optimd_session *s,
                                 const optimd_hvalue *hp, size_t n,
                                 const char *group,
                                 optimd_session_details **out)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (out) *out = NULL;
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    if (!wire_hvalues_arg_ok(hp, n, c->err, sizeof c->err))
        return OPTIMD_CLIENT_E_ARG;
    if (group && !group_name_ok(group))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "a group name is 1 to %d bytes of A-Z a-z 0-9 _ "
                           ". -", OPTIMD_GROUP_NAME_MAX);
    req_set_hparams a = {hp, n, group};
    client_call call;
    req_set_hparams_call(s, &a, &call);
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    rv = read_details(c, &rep, false, out);
    client_reply_free(&rep);
    return rv;
}

int optimd_client_set_hparams(optimd_client *c, const optimd_session *s,
                              const optimd_hvalue *hp, size_t n)
{
    return optimd_client_set_hparams_ex(c, s, hp, n, NULL, NULL);
}

static void pack_observe(msgpack_packer *pk, const void *arg)
{
    const req_observe *a = arg;
    wire_pack_str(pk, "metric");
    msgpack_pack_double(pk, a->metric);
    if (a->group) {
        wire_pack_str(pk, "group");
        wire_pack_str(pk, a->group);
    }
}

void req_observe_call(const optimd_session *s, const req_observe *a,
                      client_call *call)
{
    *call = (client_call){.op = "observe", .s = s,
                          .n_keys = 1 + (a->group ? 1 : 0),
                          .size_hint = 96, .pack = pack_observe, .arg = a,
                          /* A repeat would count the metric twice. */
                          .retry = CLIENT_RETRY_UNSENT};
}

int optimd_client_observe(optimd_client *c, const optimd_session *s,
                          double metric, const char *group, double *lr,
                          optimd_group_value *groups, size_t groups_cap,
                          size_t *n_groups)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    if (group && !group_name_ok(group))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "a group name is 1 to %d bytes of A-Z a-z 0-9 _ "
                           ". -", OPTIMD_GROUP_NAME_MAX);
    if (groups_cap && !groups)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "groups is NULL");
    req_observe a = {metric, group};
    client_call call;
    req_observe_call(s, &a, &call);
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    rv = read_observe(c, &rep, lr, groups, groups_cap, n_groups);
    client_reply_free(&rep);
    return rv;
}

typedef struct req_abandon {
    uint64_t seq;
    const char *client;
} req_abandon;

static void pack_abandon(msgpack_packer *pk, const void *arg)
{
    const req_abandon *a = arg;
    wire_pack_str(pk, "seq");
    msgpack_pack_uint64(pk, a->seq);
    wire_pack_str(pk, "client");
    wire_pack_str(pk, a->client);
}

int optimd_client_abandon_step(optimd_client *c, const optimd_session *s,
                               uint64_t seq, const char *client,
                               uint64_t *steps)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    req_abandon a = {seq, client ? client : ""};
    /* A repeat would find no pending step: sent at most once. */
    client_call call = {.op = "abandon_step", .s = s, .n_keys = 2,
                        .size_hint = 160, .pack = pack_abandon, .arg = &a,
                        .retry = CLIENT_RETRY_UNSENT};
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    uint64_t n = 0;
    rv = reply_uint(c, &rep, "steps", &n);
    client_reply_free(&rep);
    if (rv == 0 && steps) *steps = n;
    /* This client's own failed sliced step kept its seq for a retry; the
     * seq is used up now, and the next step must carry a new one. */
    client_seq *e;
    if (rv == 0 && strcmp(a.client, c->id) == 0 && client_seq_get(c, s->name, &e) == 0 && e->next == seq)
        e->next = seq + 1;
    return rv;
}

int optimd_client_close(optimd_client *c, const optimd_session *s)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    req_str a = {"close", NULL, NULL};
    client_call call;
    req_str_call(s, &a, &call);
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
