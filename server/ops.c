/* The protocol operations of docs/protocol.md: decoding the envelope,
 * dispatching on "op", and each op's handler. */
#include "server.h"

#include "connections.h"
#include "hparams.h"
#include "log.h"
#include "metrics.h"
#include "session_transfer.h"
#include "shm_attachment.h"
#include "snapshot.h"
#include "transport.h"
#include "workers.h"
#include "wire.h"

#include <optimd/protocol.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#ifndef OPTIMD_VERSION
#define OPTIMD_VERSION "0.0.0"
#endif

typedef struct request {
    server *srv;
    const void *raw;           /* the request as received, for the log */
    size_t raw_len;
    const msgpack_object *root;
    uint64_t id;
    wire_writer *w;
    request_error err;
    /* Plugins this request looked up, each with a reference it drops when
     * done (a session takes references of its own). */
    const plugin **held;
    size_t n_held;
    const char *op;            /* the dispatched op's name, for the metrics */
    request_ticket *ticket;    /* from the transport: parking a request */
    nng_pipe pipe;             /* the connection it came on (shm_attach asks what kind) */
} request;

static void workers_abandon(session *s, const char *why);
static void pack_workers(msgpack_packer *pk, const session *s);

/* A looked-up plugin kept alive until the request ends. */
static const plugin *request_hold(request *r, plugin *p)
{
    if (!p) return NULL;
    const plugin **grown = realloc(r->held, (r->n_held + 1) * sizeof *grown);
    if (!grown) {
        plugin_unref(p);
        fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
        return NULL;
    }
    r->held = grown;
    r->held[r->n_held++] = p;
    return p;
}

/* Writes the success envelope; the handler then packs n_pairs more. */
static msgpack_packer *reply_begin(request *r, uint32_t n_pairs)
{
    msgpack_packer *pk = &r->w->pk;
    msgpack_pack_map(pk, 3 + n_pairs);
    wire_pack_str(pk, "v");
    msgpack_pack_int(pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(pk, "id");
    msgpack_pack_uint64(pk, r->id);
    wire_pack_str(pk, "ok");
    msgpack_pack_true(pk);
    return pk;
}

static void write_error(wire_writer *w, uint64_t id, const request_error *err)
{
    msgpack_packer *pk = &w->pk;
    msgpack_pack_map(pk, 6);
    wire_pack_str(pk, "v");
    msgpack_pack_int(pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(pk, "id");
    msgpack_pack_uint64(pk, id);
    wire_pack_str(pk, "ok");
    msgpack_pack_false(pk);
    wire_pack_str(pk, "code");
    msgpack_pack_int(pk, err->code);
    wire_pack_str(pk, "error");
    wire_pack_str(pk, error_code_name(err->code));
    wire_pack_str(pk, "message");
    wire_pack_str(pk, err->message);
}

/* The session named by the request, token checked; a new reference. */
static session *request_session(request *r)
{
    const char *name, *token = NULL;
    size_t name_len, token_len = 0;
    if (wire_get_str(r->root, "session", true, &name, &name_len, &r->err)) return NULL;
    if (wire_get_str(r->root, "token", false, &token, &token_len, &r->err)) return NULL;
    session *s = session_table_get(&r->srv->sessions, name, name_len);
    if (!s) {
        fail(&r->err, OPTIMD_E_UNKNOWN_SESSION, "no session '%.*s'",
             (int)(name_len > SESSION_NAME_MAX ? SESSION_NAME_MAX : name_len), name);
        return NULL;
    }
    if (!token || !session_token_matches(s, token, token_len)) {
        fail(&r->err, OPTIMD_E_BAD_TOKEN, "%s token for session '%s'", token ? "wrong" : "missing",
             s->name);
        session_unref(s);
        return NULL;
    }
    session_touch(s);
    return s;
}

/* The write-ahead hook for this request's change. */
static store_change change_of(request *r)
{
    return (store_change){.st = &r->srv->store, .request = r->raw, .len = r->raw_len};
}

static const char *const durability_names[] = {"none", "interval", "always"};

static const char *kind_name(uint32_t kind)
{
    return kind == OPTIMD_KIND_OPTIMIZER ? "optimizer" : "scheduler";
}

/* ------------------------------------------------------------------ ops -- */

static int op_hello(request *r)
{
    const char *client;
    size_t len;
    if (wire_get_str(r->root, "client", false, &client, &len, &r->err) == 0 &&
        wire_map_get(r->root, "client"))
        log_debug("hello from %.*s", (int)(len > 128 ? 128 : len), client);
    msgpack_packer *pk = reply_begin(r, 5);
    wire_pack_str(pk, "server");
    wire_pack_str(pk, "optimd");
    wire_pack_str(pk, "version");
    wire_pack_str(pk, OPTIMD_VERSION);
    wire_pack_str(pk, "protocol");
    msgpack_pack_int(pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(pk, "abi");
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint32(pk, OPTIMD_ABI_MAJOR);
    msgpack_pack_uint32(pk, OPTIMD_ABI_MINOR);
    wire_pack_str(pk, "max_message");
    msgpack_pack_uint64(pk, r->srv->opts->max_message);
    return 0;
}

static void pack_hparam_def(msgpack_packer *pk, const optimd_hparam_def *d)
{
    static const char *const types[] = {"?", "float", "int", "bool"};
    bool required = d->flags & OPTIMD_HP_REQUIRED;
    msgpack_pack_map(pk, 10);
    wire_pack_str(pk, "key");
    wire_pack_str(pk, d->key);
    wire_pack_str(pk, "type");
    wire_pack_str(pk, types[d->type <= OPTIMD_HP_BOOL ? d->type : 0]);
    wire_pack_str(pk, "required");
    if (required) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    wire_pack_str(pk, "mutable");
    if (d->flags & OPTIMD_HP_MUTABLE) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    wire_pack_str(pk, "min");
    msgpack_pack_double(pk, d->min);
    wire_pack_str(pk, "max");
    msgpack_pack_double(pk, d->max);
    wire_pack_str(pk, "min_exclusive");
    if (d->flags & OPTIMD_HP_MIN_EXCLUSIVE) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    wire_pack_str(pk, "max_exclusive");
    if (d->flags & OPTIMD_HP_MAX_EXCLUSIVE) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    wire_pack_str(pk, "default");
    if (required) msgpack_pack_nil(pk);
    else if (d->type == OPTIMD_HP_BOOL) {
        if (d->default_value != 0.0) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
    } else if (d->type == OPTIMD_HP_INT) msgpack_pack_int64(pk, (int64_t)d->default_value);
    else msgpack_pack_double(pk, d->default_value);
    wire_pack_str(pk, "doc");
    wire_pack_str(pk, d->doc ? d->doc : "");
}

static const char *slot_shape_name(uint32_t shape)
{
    switch (shape) {
    case OPTIMD_SLOT_SCALAR: return "scalar";
    case OPTIMD_SLOT_ROWS: return "rows";
    case OPTIMD_SLOT_COLS: return "cols";
    default: return "param";
    }
}

static int op_plugins(request *r)
{
    size_t n;
    plugin **list = plugin_registry_list(&r->srv->plugins, &n);
    if (!list) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    msgpack_packer *pk = reply_begin(r, 1);
    wire_pack_str(pk, "plugins");
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const plugin *p = list[i];
        const optimd_optimizer *o = p->desc->optimizer;
        bool is_opt = p->desc->kind == OPTIMD_KIND_OPTIMIZER;
        msgpack_pack_map(pk, is_opt ? 7 : 5);
        wire_pack_str(pk, "id");
        wire_pack_str(pk, p->desc->id);
        wire_pack_str(pk, "kind");
        wire_pack_str(pk, kind_name(p->desc->kind));
        wire_pack_str(pk, "version");
        wire_pack_str(pk, p->desc->version);
        wire_pack_str(pk, "description");
        wire_pack_str(pk, p->desc->description ? p->desc->description : "");
        wire_pack_str(pk, "hparams");
        msgpack_pack_array(pk, p->n_hparams);
        for (uint32_t h = 0; h < p->n_hparams; h++) pack_hparam_def(pk, &p->hparams[h]);
        if (!is_opt) continue;
        wire_pack_str(pk, "slots");
        msgpack_pack_array(pk, o->n_slots);
        for (uint32_t k = 0; k < o->n_slots; k++) {
            const optimd_slot_def *s = &o->slots[k];
            msgpack_pack_map(pk, 5);
            wire_pack_str(pk, "key");
            wire_pack_str(pk, s->key);
            wire_pack_str(pk, "dtype");
            wire_pack_str(pk, s->dtype ? wire_dtype_name(s->dtype) : "param");
            wire_pack_str(pk, "shape");
            wire_pack_str(pk, slot_shape_name(s->shape));
            wire_pack_str(pk, "enabled_by");
            if (s->enabled_by) wire_pack_str(pk, s->enabled_by);
            else msgpack_pack_nil(pk);
            wire_pack_str(pk, "doc");
            wire_pack_str(pk, s->doc ? s->doc : "");
        }
        wire_pack_str(pk, "dtypes");
        bool f32 = (o->dtypes >> OPTIMD_DTYPE_F32) & 1u, f64 = (o->dtypes >> OPTIMD_DTYPE_F64) & 1u;
        msgpack_pack_array(pk, (uint32_t)f32 + (uint32_t)f64);
        if (f32) wire_pack_str(pk, "f32");
        if (f64) wire_pack_str(pk, "f64");
    }
    plugin_registry_release_list(list, n);
    return 0;
}

static bool valid_session_name(const char *s, size_t len)
{
    /* A name is also a directory name: no leading dot, so never "." or "..". */
    if (len < 1 || len > SESSION_NAME_MAX || s[0] == '.') return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

static const char *const name_rule =
    "session names are 1 to 128 characters of A-Z a-z 0-9 _ . - not starting with a dot";

/* The request's optional "session" name, checked, NUL-terminated in `out`.
 * *given says whether the request had one. */
static int get_session_name(request *r, bool required, char out[SESSION_NAME_MAX + 1], bool *given)
{
    const char *name = NULL;
    size_t len = 0;
    if (wire_get_str(r->root, "session", required, &name, &len, &r->err)) return -1;
    *given = name != NULL;
    if (!name) return 0;
    if (!valid_session_name(name, len)) return fail(&r->err, OPTIMD_E_BAD_REQUEST, "%s", name_rule);
    memcpy(out, name, len);
    out[len] = '\0';
    return 0;
}

/* The request's optional "durability"; *out is left alone when absent. */
static int get_durability(request *r, int *out)
{
    const char *dur = NULL;
    size_t len = 0;
    if (wire_get_str(r->root, "durability", false, &dur, &len, &r->err)) return -1;
    if (!dur) return 0;
    for (int i = 0; i < 3; i++) {
        if (strlen(durability_names[i]) == len && memcmp(durability_names[i], dur, len) == 0) {
            *out = i;
            return 0;
        }
    }
    return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'durability' must be \"always\", \"interval\" or \"none\"");
}

/* Makes a new session (one reference, handed over) visible and durable:
 * the table, then its directory, first snapshot and log. Copies its name
 * and token out first: once in the table, others may close it. */
static int admit_session(request *r, session *s, char name[SESSION_NAME_MAX + 1],
                         char token[SESSION_TOKEN_LEN + 1])
{
    memcpy(name, s->name, SESSION_NAME_MAX + 1);
    memcpy(token, s->token, SESSION_TOKEN_LEN + 1);
    if (session_table_add(&r->srv->sessions, s, &r->err)) {
        session_unref(s);
        return -1;
    }
    session_lock(s);
    int stored = store_attach(&r->srv->store, s, &r->err);
    session_unlock(s);
    if (stored != 0) {
        session_table_remove(&r->srv->sessions, s);
        return -1;
    }
    return 0;
}

static const plugin *lookup_plugin(request *r, const char *id, size_t len, uint32_t kind)
{
    plugin *found = plugin_registry_get(&r->srv->plugins, id, len);
    const plugin *p = found ? request_hold(r, found) : NULL;
    if (found && !p) return NULL;
    if (!p)
        fail(&r->err, OPTIMD_E_UNKNOWN_PLUGIN, "no plugin '%.*s' is loaded", (int)(len > 64 ? 64 : len), id);
    else if (p->desc->kind != kind)
        fail(&r->err, OPTIMD_E_WRONG_KIND, "plugin '%s' is a%s %s, not a%s %s", p->desc->id,
             p->desc->kind == OPTIMD_KIND_OPTIMIZER ? "n" : "", kind_name(p->desc->kind),
             kind == OPTIMD_KIND_OPTIMIZER ? "n" : "", kind_name(kind));
    return r->err.code ? NULL : p;
}

static const plugin *find_plugin(request *r, const char *key, uint32_t kind, bool required)
{
    const char *id;
    size_t len;
    const msgpack_object *v = wire_map_get(r->root, key);
    if (!required && (!v || v->type == MSGPACK_OBJECT_NIL)) return NULL;
    if (wire_get_str(r->root, key, true, &id, &len, &r->err)) return NULL;
    return lookup_plugin(r, id, len, kind);
}

/* The schedule a map (the request, or one of its groups) gives: its
 * "scheduler" (absent or nil: none), and for "sequential" / "chained" its
 * "schedulers" [{scheduler, sched_hparams?}] and "milestones". */
static int get_schedule(request *r, const msgpack_object *map, const plugin **sched, sched_composite *c)
{
    memset(c, 0, sizeof *c);
    *sched = NULL;
    const msgpack_object *sv = wire_map_get(map, "scheduler");
    const msgpack_object *parts = wire_map_get(map, "schedulers");
    const msgpack_object *milestones = wire_map_get(map, "milestones");
    const char *id = NULL;
    size_t len = 0;
    if (sv && sv->type != MSGPACK_OBJECT_NIL && wire_get_str(map, "scheduler", true, &id, &len, &r->err))
        return -1;
    for (int combine = SCHED_SEQUENTIAL; id && combine <= SCHED_CHAINED; combine++)
        if (strlen(sched_combine_name(combine)) == len && memcmp(sched_combine_name(combine), id, len) == 0)
            c->combine = combine;
    if (c->combine == SCHED_ONE) {
        if (parts || milestones)
            return fail(&r->err, OPTIMD_E_BAD_REQUEST,
                        "'schedulers' and 'milestones' go with scheduler \"sequential\" or \"chained\"");
        if (id && !(*sched = lookup_plugin(r, id, len, OPTIMD_KIND_SCHEDULER))) return -1;
        return 0;
    }
    if (wire_map_get(map, "sched_hparams"))
        return fail(&r->err, OPTIMD_E_BAD_REQUEST,
                    "a combined schedule takes each scheduler's 'sched_hparams' in 'schedulers'");
    if (!parts || parts->type != MSGPACK_OBJECT_ARRAY || parts->via.array.size < 2 ||
        parts->via.array.size > SCHED_MAX_PARTS)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'schedulers' must be an array of 2 to %d maps "
                    "{scheduler, sched_hparams}", SCHED_MAX_PARTS);
    c->n_parts = parts->via.array.size;
    for (uint32_t k = 0; k < c->n_parts; k++) {
        const msgpack_object *part = &parts->via.array.ptr[k];
        if (part->type != MSGPACK_OBJECT_MAP)
            return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'schedulers' must be an array of maps");
        const char *pid;
        size_t plen;
        if (wire_get_str(part, "scheduler", true, &pid, &plen, &r->err) ||
            wire_get_map(part, "sched_hparams", false, &c->part_hparams[k], &r->err) ||
            !(c->parts[k] = lookup_plugin(r, pid, plen, OPTIMD_KIND_SCHEDULER)))
            return -1;
        /* torch combines LR schedulers only; ReduceLROnPlateau is not one. */
        if (c->parts[k]->n_sched_state)
            return fail(&r->err, OPTIMD_E_BAD_REQUEST, "scheduler '%s' keeps state and takes metrics; it "
                        "cannot be part of a combined schedule", c->parts[k]->desc->id);
    }
    if (c->combine == SCHED_CHAINED) {
        if (milestones)
            return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'milestones' go with \"sequential\" only");
        return 0;
    }
    if (!milestones || milestones->type != MSGPACK_OBJECT_ARRAY || milestones->via.array.size != c->n_parts - 1)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "a sequential schedule of %u schedulers needs %u "
                    "'milestones'", c->n_parts, c->n_parts - 1);
    for (uint32_t k = 0; k + 1 < c->n_parts; k++) {
        const msgpack_object *m = &milestones->via.array.ptr[k];
        if (m->type != MSGPACK_OBJECT_POSITIVE_INTEGER || m->via.u64 < 1 || m->via.u64 > INT32_MAX ||
            (k && (int64_t)m->via.u64 <= c->milestones[k - 1]))
            return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'milestones' must be rising positive integers");
        c->milestones[k] = (int64_t)m->via.u64;
    }
    return 0;
}

/* The request's optional "open_key": 16 to 64 printable ASCII bytes. */
static int get_open_key(request *r, const char **key, size_t *len)
{
    *key = NULL;
    *len = 0;
    if (wire_get_str(r->root, "open_key", false, key, len, &r->err)) return -1;
    if (!*key) return 0;
    bool printable = *len >= SESSION_OPEN_KEY_MIN && *len <= SESSION_OPEN_KEY_MAX;
    for (size_t i = 0; printable && i < *len; i++) printable = (*key)[i] > 0x20 && (*key)[i] < 0x7f;
    if (!printable)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'open_key' must be %d to %d printable ASCII bytes",
                    SESSION_OPEN_KEY_MIN, SESSION_OPEN_KEY_MAX);
    return 0;
}

static void pack_open_reply(request *r, const char *name, const char *token, double lr, bool existing)
{
    msgpack_packer *pk = reply_begin(r, 4);
    wire_pack_str(pk, "session");
    wire_pack_str(pk, name);
    wire_pack_str(pk, "token");
    wire_pack_str(pk, token);
    wire_pack_str(pk, "lr");
    msgpack_pack_double(pk, lr);
    wire_pack_str(pk, "existing");
    if (existing) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}

/* A retried open (same name, same open_key) whose first attempt created
 * the session: answers as that attempt did, so a lost reply strands no
 * session. False when there is no such session. */
static bool answer_retried_open(request *r, const char *name, const char *key, size_t key_len)
{
    if (!key) return false;
    session *s = session_table_get(&r->srv->sessions, name, strlen(name));
    if (!s) return false;
    session_lock(s);
    bool same = session_open_key_matches(s, key, key_len);
    if (same) {
        r->err.code = 0;
        pack_open_reply(r, s->name, s->token, s->groups[0].lr, true);
    }
    session_unlock(s);
    session_unref(s);
    return same;
}

/* open's optional "groups": [{name, hparams?, scheduler?, sched_hparams?}]
 * beyond the default group. */
static int get_group_specs(request *r, group_spec *specs, uint32_t *n)
{
    const msgpack_object *groups = wire_map_get(r->root, "groups");
    *n = 0;
    if (!groups || groups->type == MSGPACK_OBJECT_NIL) return 0;
    if (groups->type != MSGPACK_OBJECT_ARRAY)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'groups' must be an array of maps");
    if (groups->via.array.size >= SESSION_MAX_GROUPS)
        return fail(&r->err, OPTIMD_E_LIMIT, "a session has at most %d parameter groups", SESSION_MAX_GROUPS);
    for (uint32_t i = 0; i < groups->via.array.size; i++) {
        const msgpack_object *g = &groups->via.array.ptr[i];
        group_spec *gs = &specs[i];
        memset(gs, 0, sizeof *gs);
        if (g->type != MSGPACK_OBJECT_MAP)
            return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'groups' must be an array of maps");
        if (wire_get_str(g, "name", true, &gs->name, &gs->name_len, &r->err) ||
            wire_get_map(g, "hparams", false, &gs->hparams, &r->err) ||
            wire_get_map(g, "sched_hparams", false, &gs->sched_hparams, &r->err))
            return -1;
        if (gs->name_len == strlen(DEFAULT_GROUP) && memcmp(gs->name, DEFAULT_GROUP, gs->name_len) == 0)
            return fail(&r->err, OPTIMD_E_BAD_REQUEST,
                        "group 'default' is the session's own; give its settings at the top level");
        if (wire_map_get(g, "scheduler")) {
            gs->sched_given = true;
            if (get_schedule(r, g, &gs->sched, &gs->composite)) return -1;
        } else if (wire_map_get(g, "schedulers") || wire_map_get(g, "milestones")) {
            return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'schedulers' and 'milestones' need 'scheduler'");
        }
        (*n)++;
    }
    return 0;
}

/* open's optional "lookahead": {k = 5, alpha = 0.5}; *k stays 0 when absent. */
static int get_lookahead(request *r, uint32_t *k, double *alpha)
{
    const msgpack_object *la;
    if (wire_get_map(r->root, "lookahead", false, &la, &r->err)) return -1;
    if (!la) return 0;
    uint64_t steps = 5;
    *alpha = 0.5;
    if (wire_get_uint(la, "k", false, &steps, &r->err) || wire_get_number(la, "alpha", false, alpha, &r->err))
        return -1;
    if (steps < 1 || steps > UINT32_MAX || !(*alpha > 0 && *alpha <= 1))
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'lookahead' needs k >= 1 and 0 < alpha <= 1");
    *k = (uint32_t)steps;
    return 0;
}

static int op_open(request *r)
{
    char name[SESSION_NAME_MAX + 1], token[SESSION_TOKEN_LEN + 1];
    bool given;
    const char *open_key;
    size_t open_key_len;
    if (get_session_name(r, true, name, &given) || get_open_key(r, &open_key, &open_key_len)) return -1;
    if (answer_retried_open(r, name, open_key, open_key_len)) return 0;
    const plugin *opt = find_plugin(r, "optimizer", OPTIMD_KIND_OPTIMIZER, true);
    if (!opt) return -1;
    const plugin *sched;
    sched_composite composite;
    if (get_schedule(r, r->root, &sched, &composite)) return -1;
    const msgpack_object *hp, *sched_hp;
    int durability = DURABILITY_INTERVAL;
    if (wire_get_map(r->root, "hparams", false, &hp, &r->err) ||
        wire_get_map(r->root, "sched_hparams", false, &sched_hp, &r->err) || get_durability(r, &durability))
        return -1;
    group_spec specs[SESSION_MAX_GROUPS];
    uint32_t n_specs = 0;
    uint32_t la_k = 0;
    double la_alpha = 0;
    worker_config workers;
    if (get_group_specs(r, specs, &n_specs) || get_lookahead(r, &la_k, &la_alpha) ||
        worker_config_parse(r->root, r->srv->opts->contexts / 2, &workers, &r->err))
        return -1;
    session *s = session_create(name, opt, hp, sched, sched_hp, &composite, specs, n_specs, &r->err);
    if (!s) return -1;
    if (workers.mode && !(s->workers = worker_set_create(&workers))) {
        session_unref(s);
        return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    }
    s->durability = durability;
    s->lookahead_k = la_k;
    s->lookahead_alpha = la_alpha;
    if (open_key) memcpy(s->open_key, open_key, open_key_len);
    double lr = s->groups[0].lr;
    if (admit_session(r, s, name, token)) {
        /* Two attempts of one open raced: the other created it. */
        if (r->err.code == OPTIMD_E_SESSION_EXISTS && answer_retried_open(r, name, open_key, open_key_len))
            return 0;
        return -1;
    }
    log_info("session %s opened (optimizer %s%s%s)", name, opt->desc->id,
             sched ? ", scheduler " : "", sched ? sched->desc->id : "");
    pack_open_reply(r, name, token, lr, false);
    return 0;
}

static void pack_group_settings(msgpack_packer *pk, const session *s, const param_group *g)
{
    wire_pack_str(pk, "hparams");
    hparams_pack(pk, s->opt, g->hp);
    wire_pack_str(pk, "sched_hparams");
    if (g->sched) hparams_pack(pk, g->sched, g->sched_hp);
    else msgpack_pack_map(pk, 0);
    wire_pack_str(pk, "base_lr");
    msgpack_pack_double(pk, g->base_lr);
    wire_pack_str(pk, "lr");
    msgpack_pack_double(pk, g->lr);
}

static void pack_sched_id(msgpack_packer *pk, const param_group *g)
{
    if (g->combine != SCHED_ONE) wire_pack_str(pk, sched_combine_name(g->combine));
    else if (g->sched) wire_pack_str(pk, g->sched->desc->id);
    else msgpack_pack_nil(pk);
}

/* A combined schedule's parts: "schedulers" and (sequential) "milestones";
 * returns how many keys it packed when `pk` is NULL too. */
static uint32_t pack_composite(msgpack_packer *pk, const param_group *g)
{
    if (g->combine == SCHED_ONE) return 0;
    uint32_t keys = g->combine == SCHED_SEQUENTIAL ? 2 : 1;
    if (!pk) return keys;
    wire_pack_str(pk, "schedulers");
    msgpack_pack_array(pk, g->n_parts);
    for (uint32_t k = 0; k < g->n_parts; k++) {
        msgpack_pack_map(pk, 2);
        wire_pack_str(pk, "scheduler");
        wire_pack_str(pk, g->parts[k]->desc->id);
        wire_pack_str(pk, "sched_hparams");
        hparams_pack(pk, g->parts[k], g->part_hp[k]);
    }
    if (g->combine == SCHED_SEQUENTIAL) {
        wire_pack_str(pk, "milestones");
        msgpack_pack_array(pk, g->n_parts - 1);
        for (uint32_t k = 0; k + 1 < g->n_parts; k++) msgpack_pack_int64(pk, g->milestones[k]);
    }
    return keys;
}

/* The default group's settings at the top level (5 keys: hparams,
 * sched_hparams, base_lr, lr, groups), and every group's in "groups". */
static void pack_lrs(msgpack_packer *pk, const session *s)
{
    pack_group_settings(pk, s, &s->groups[0]);
    wire_pack_str(pk, "groups");
    msgpack_pack_array(pk, s->n_groups);
    for (uint32_t gi = 0; gi < s->n_groups; gi++) {
        const param_group *g = &s->groups[gi];
        uint64_t members = 0;
        for (size_t i = 0; i < s->n_params; i++) members += s->params[i].group == gi;
        msgpack_pack_map(pk, 7 + pack_composite(NULL, g));
        wire_pack_str(pk, "name");
        wire_pack_str(pk, g->name);
        wire_pack_str(pk, "scheduler");
        pack_sched_id(pk, g);
        pack_composite(pk, g);
        pack_group_settings(pk, s, g);
        wire_pack_str(pk, "params");
        msgpack_pack_uint64(pk, members);
    }
}

static int op_info(request *r)
{
    session *s = request_session(r);
    if (!s) return -1;
    const char *client = NULL;
    size_t client_len = 0;
    if (wire_get_str(r->root, "client", false, &client, &client_len, &r->err)) {
        session_unref(s);
        return -1;
    }
    session_lock(s);
    /* A client that keeps its id across restarts resumes its numbering. */
    const client_seq *cs = client ? session_client(s, client, client_len, false) : NULL;
    msgpack_packer *pk = reply_begin(r, (client ? 14 : 13) + (s->workers != NULL) + pack_composite(NULL, &s->groups[0]));
    if (s->workers) {
        wire_pack_str(pk, "workers");
        pack_workers(pk, s);
    }
    wire_pack_str(pk, "lookahead");
    if (s->lookahead_k) {
        msgpack_pack_map(pk, 2);
        wire_pack_str(pk, "k");
        msgpack_pack_uint32(pk, s->lookahead_k);
        wire_pack_str(pk, "alpha");
        msgpack_pack_double(pk, s->lookahead_alpha);
    } else {
        msgpack_pack_nil(pk);
    }
    if (client) {
        wire_pack_str(pk, "client_seq");
        msgpack_pack_uint64(pk, cs ? cs->seq : 0);
    }
    wire_pack_str(pk, "durability");
    wire_pack_str(pk, durability_names[s->durability]);
    wire_pack_str(pk, "session");
    wire_pack_str(pk, s->name);
    wire_pack_str(pk, "optimizer");
    wire_pack_str(pk, s->opt->desc->id);
    wire_pack_str(pk, "optimizer_version");
    wire_pack_str(pk, s->opt->desc->version);
    wire_pack_str(pk, "scheduler");
    pack_sched_id(pk, &s->groups[0]);
    pack_composite(pk, &s->groups[0]);
    pack_lrs(pk, s);
    wire_pack_str(pk, "steps");
    msgpack_pack_uint64(pk, s->steps);
    wire_pack_str(pk, "params");
    msgpack_pack_array(pk, (uint32_t)s->n_params);
    for (size_t i = 0; i < s->n_params; i++) {
        const param *p = &s->params[i];
        msgpack_pack_map(pk, 5);
        wire_pack_str(pk, "name");
        wire_pack_str(pk, s->names[i]);
        wire_pack_str(pk, "group");
        wire_pack_str(pk, s->groups[p->group].name);
        wire_pack_str(pk, "dtype");
        wire_pack_str(pk, wire_dtype_name(p->dtype));
        wire_pack_str(pk, "shape");
        msgpack_pack_array(pk, p->ndim);
        for (uint32_t d = 0; d < p->ndim; d++) msgpack_pack_uint64(pk, (uint64_t)p->shape[d]);
        wire_pack_str(pk, "steps");
        msgpack_pack_uint64(pk, p->steps);
    }
    session_unlock(s);
    session_unref(s);
    return 0;
}

static int op_hparams(request *r)
{
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    msgpack_packer *pk = reply_begin(r, 5);
    pack_lrs(pk, s);
    session_unlock(s);
    session_unref(s);
    return 0;
}

static int op_set_hparams(request *r)
{
    const msgpack_object *map;
    if (wire_get_map(r->root, "hparams", true, &map, &r->err)) return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    store_change change = change_of(r);
    int group;
    int rc = session_request_group(s, r->root, true, &group, &r->err);
    if (rc == 0) rc = session_set_hparams(s, map, group, store_log_change, &change, &r->err);
    if (rc == 0) store_compact_if_large(&r->srv->store, s);
    if (rc == 0) pack_lrs(reply_begin(r, 5), s);
    session_unlock(s);
    session_unref(s);
    return rc;
}

/* Removes `s` (one reference, consumed) from the table and its files from
 * the state directory; the reply is the envelope only. */
static int close_session(request *r, session *s)
{
    int rc = session_table_remove(&r->srv->sessions, s);
    if (rc == 0) {
        /* Under the lock, so a snapshot in progress finishes first and
         * none starts after the files are gone. */
        session_lock(s);
        s->closed = true;
        workers_abandon(s, "was closed");
        store_remove(&r->srv->store, s);
        /* Now, not when the last reference goes: the client is told the
         * mapping is gone once this reply comes. */
        optimd_shm_detach(s);
        session_unlock(s);
        log_info("session %s closed", s->name);
    }
    else fail(&r->err, OPTIMD_E_UNKNOWN_SESSION, "session '%s' was closed meanwhile", s->name);
    session_unref(s);
    if (rc == 0) reply_begin(r, 0);
    return rc;
}

static int op_close(request *r)
{
    session *s = request_session(r);
    return s ? close_session(r, s) : -1;
}

static int op_sessions(request *r)
{
    size_t n;
    session **list = session_table_list(&r->srv->sessions, &n);
    if (!list) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    msgpack_packer *pk = reply_begin(r, 1);
    wire_pack_str(pk, "sessions");
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        session *s = list[i];
        session_lock(s);
        msgpack_pack_map(pk, 5);
        wire_pack_str(pk, "session");
        wire_pack_str(pk, s->name);
        wire_pack_str(pk, "optimizer");
        wire_pack_str(pk, s->opt->desc->id);
        wire_pack_str(pk, "scheduler");
        pack_sched_id(pk, &s->groups[0]);
        wire_pack_str(pk, "params");
        msgpack_pack_uint64(pk, s->n_params);
        wire_pack_str(pk, "steps");
        msgpack_pack_uint64(pk, s->steps);
        session_unlock(s);
    }
    session_table_release_list(list, n);
    return 0;
}

/* --max-session-bytes and --max-total-bytes for parameters that commit
 * `adding` bytes more. */
static int check_memory_adding(request *r, session *s, uint64_t adding)
{
    const options *o = r->srv->opts;
    uint64_t mine = atomic_load(&s->committed_bytes);
    if (o->max_session_bytes && mine + adding > o->max_session_bytes)
        return fail(&r->err, OPTIMD_E_LIMIT, "session '%s' would hold %llu bytes of parameters and state; "
                    "--max-session-bytes is %llu", s->name, (unsigned long long)(mine + adding),
                    (unsigned long long)o->max_session_bytes);
    uint64_t total = session_table_committed_bytes(&r->srv->sessions);
    if (o->max_total_bytes && total + adding > o->max_total_bytes)
        return fail(&r->err, OPTIMD_E_LIMIT, "the daemon would hold %llu bytes of parameters and state; "
                    "--max-total-bytes is %llu", (unsigned long long)(total + adding),
                    (unsigned long long)o->max_total_bytes);
    return 0;
}

/* The same for the parameters a register request adds (their state
 * counted in, as they will have it). */
static int check_memory(request *r, session *s, const msgpack_object *params)
{
    uint64_t adding = 0;
    for (uint32_t i = 0; i < params->via.map.size; i++) {
        wire_tensor t;
        request_error ignored = {0};
        if (wire_decode_tensor(&params->via.map.ptr[i].val, "", &t, &ignored) == 0)
            adding += session_param_cost(s, t.nbytes);
    }
    return check_memory_adding(r, s, adding);
}

static int check_tensor_count(request *r, const msgpack_object *map, const char *what)
{
    if (map->via.map.size > r->srv->opts->max_tensors)
        return fail(&r->err, OPTIMD_E_LIMIT, "%u tensors in '%s'; --max-tensors is %u", map->via.map.size, what,
                    r->srv->opts->max_tensors);
    return 0;
}

static int op_register(request *r)
{
    const msgpack_object *params;
    if (wire_get_map(r->root, "params", true, &params, &r->err) || check_tensor_count(r, params, "params"))
        return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    store_change change = change_of(r);
    int group;
    int rc = check_memory(r, s, params);
    if (rc == 0) rc = session_request_group(s, r->root, false, &group, &r->err);
    if (rc == 0) rc = session_register(s, params, group, store_log_change, &change, &r->err);
    if (rc == 0) store_compact_if_large(&r->srv->store, s);
    session_unlock(s);
    if (rc == 0) {
        msgpack_packer *pk = reply_begin(r, 1);
        wire_pack_str(pk, "registered");
        msgpack_pack_uint32(pk, params->via.map.size);
    }
    session_unref(s);
    return rc;
}

static void pack_param(msgpack_packer *pk, const session *s, size_t i)
{
    const param *p = &s->params[i];
    wire_pack_str(pk, s->names[i]);
    wire_pack_tensor(pk, p->dtype, p->ndim, p->shape, p->data, p->nbytes);
}

/* A parameter's rows named by a (checked) row-sparse gradient's "rows":
 * {rows: [sorted, unique], values: tensor [n, ...]}. */
static void pack_param_rows(msgpack_packer *pk, const session *s, size_t i, const msgpack_object *rows_obj)
{
    const param *p = &s->params[i];
    int64_t *rows = NULL, n = 0;
    request_error ignored = {0};
    session_sparse_rows(rows_obj, p->shape[0], &rows, &n, NULL, &ignored);
    size_t row_bytes = p->shape[0] ? p->nbytes / (size_t)p->shape[0] : 0;
    int64_t shape[WIRE_MAX_DIMS];
    memcpy(shape, p->shape, sizeof shape);
    shape[0] = n;
    wire_pack_str(pk, s->names[i]);
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, "rows");
    msgpack_pack_array(pk, (uint32_t)n);
    for (int64_t k = 0; k < n; k++) msgpack_pack_uint64(pk, (uint64_t)rows[k]);
    wire_pack_str(pk, "values");
    /* The rows are not contiguous in the parameter: the tensor's bin is
     * written row by row. */
    wire_pack_tensor_rows(pk, p->dtype, p->ndim, shape, p->data, rows, n, row_bytes);
    free(rows);
}

/* The success reply of a step up to its own keys (`extra` of them, packed
 * by the caller next): steps, lr, next_lr, duplicate and, where they
 * apply, the per-group lrs and the gradient norm(s). */
static msgpack_packer *pack_step_counters(request *r, const session *s, const step_result *res,
                                          const step_clip *clip, uint32_t extra)
{
    /* Per-group lrs only where there is more than one group, and the
     * norm only where the step clipped by norm (duplicates: neither). */
    bool group_lrs = s->n_groups > 1 && !res->duplicate;
    bool norm = clip->max_norm > 0 && !res->duplicate;
    msgpack_packer *pk = reply_begin(r, 4 + extra + 2 * group_lrs + norm);
    wire_pack_str(pk, "steps");
    msgpack_pack_uint64(pk, res->steps);
    wire_pack_str(pk, "lr");
    msgpack_pack_double(pk, res->lr);
    wire_pack_str(pk, "next_lr");
    msgpack_pack_double(pk, res->next_lr);
    wire_pack_str(pk, "duplicate");
    if (res->duplicate) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    for (int which = 0; group_lrs && which < 2; which++) {
        wire_pack_str(pk, which ? "next_lrs" : "lrs");
        msgpack_pack_map(pk, s->n_groups);
        for (uint32_t gi = 0; gi < s->n_groups; gi++) {
            wire_pack_str(pk, s->groups[gi].name);
            msgpack_pack_double(pk, which ? res->next_lrs[gi] : res->lrs[gi]);
        }
    }
    if (norm && clip->per_group) {
        uint32_t clipped = 0;
        for (uint32_t gi = 0; gi < s->n_groups; gi++) clipped += res->group_clipped[gi];
        wire_pack_str(pk, "grad_norms");
        msgpack_pack_map(pk, clipped);
        for (uint32_t gi = 0; gi < s->n_groups; gi++) {
            if (!res->group_clipped[gi]) continue;
            wire_pack_str(pk, s->groups[gi].name);
            msgpack_pack_double(pk, res->group_norms[gi]);
        }
    } else if (norm) {
        wire_pack_str(pk, "grad_norm");
        msgpack_pack_double(pk, res->grad_norm);
    }
    return pk;
}

/* A step's reply: the counters, the parameters `grads` named (want_params),
 * then `extra` pairs the caller packs. */
static void pack_step_reply(request *r, session *s, const msgpack_object *grads, bool want_params,
                            const step_clip *clip, const step_result *res, uint32_t extra)
{
    if (want_params) {
        size_t bytes = 256 + 64 * (size_t)s->n_groups;
        for (uint32_t i = 0; i < grads->via.map.size; i++) {
            const msgpack_object_kv *kv = &grads->via.map.ptr[i];
            int64_t idx = session_find_param(s, kv->key.via.str.ptr, kv->key.via.str.size);
            if (idx < 0 || s->params[idx].mark != s->request_serial) continue;
            const param *p = &s->params[idx];
            const msgpack_object *rows = kv->val.type == MSGPACK_OBJECT_MAP ? wire_map_get(&kv->val, "rows") : NULL;
            /* A row-sparse entry returns at most its rows (9 bytes an index). */
            size_t n = rows && rows->type == MSGPACK_OBJECT_ARRAY ? rows->via.array.size : 0;
            bytes += 384 + (rows ? n * (9 + (p->shape[0] ? p->nbytes / (size_t)p->shape[0] : 0)) : p->nbytes);
        }
        nng_msg_reserve(r->w->msg, bytes);
    }
    msgpack_packer *pk = pack_step_counters(r, s, res, clip, want_params + extra);
    if (want_params) {
        uint32_t n_marked = 0;
        for (size_t i = 0; i < s->n_params; i++) n_marked += s->params[i].mark == s->request_serial;
        wire_pack_str(pk, "params");
        msgpack_pack_map(pk, n_marked);
        /* In the request's order; a row-sparse gradient's parameter
         * comes back as the rows it named. */
        for (uint32_t i = 0; i < grads->via.map.size; i++) {
            const msgpack_object_kv *kv = &grads->via.map.ptr[i];
            int64_t idx = session_find_param(s, kv->key.via.str.ptr, kv->key.via.str.size);
            if (idx < 0 || s->params[idx].mark != s->request_serial) continue;
            if (kv->val.type == MSGPACK_OBJECT_MAP && wire_map_get(&kv->val, "rows"))
                pack_param_rows(pk, s, (size_t)idx, wire_map_get(&kv->val, "rows"));
            else
                pack_param(pk, s, (size_t)idx);
        }
    }
}

/* The step itself, for a session without workers or a worker's push that
 * applies at once. */
static int apply_step(request *r, session *s, const msgpack_object *grads, const step_identity *id,
                      const step_clip *clip, step_result *res)
{
    store_change change = change_of(r);
    int rc = session_step(s, grads, id, clip, NULL, r->srv->pool, store_log_change, &change, res, &r->err);
    if (rc == 0 && !res->duplicate) store_compact_if_large(&r->srv->store, s);
    return rc;
}

/* ---- Workers (docs/protocol.md, "Workers") -------------------------------
 * A push that has to wait is parked: the transport keeps its context and
 * message, and the thread that completes the wait answers it (a sync
 * round's last push answers the others), or its handler runs again (a
 * bounded worker woken by a slower one, or any wait past its deadline). */

/* A parked push's request decoded again: it points into the message the
 * transport keeps while the push is parked. */
typedef struct parked_push {
    msgpack_unpacked u;
    const msgpack_object *root;
    const msgpack_object *grads;
    uint64_t id;
    bool want_params;
} parked_push;

static int decode_parked(const worker *w, parked_push *pp)
{
    msgpack_unpacked_init(&pp->u);
    size_t off = 0;
    request_error err = {0};
    pp->id = 0;
    pp->want_params = true;
    pp->grads = NULL;
    if (msgpack_unpack_next(&pp->u, (const char *)w->raw, w->raw_len, &off) != MSGPACK_UNPACK_SUCCESS) return -1;
    pp->root = &pp->u.data;
    wire_get_uint(pp->root, "id", false, &pp->id, &err);
    wire_get_bool(pp->root, "return", false, &pp->want_params, &err);
    wire_get_map(pp->root, "grads", false, &pp->grads, &err);
    return pp->grads ? 0 : -1;
}

/* Answers a parked push with an error; it is no longer parked. */
static void answer_parked_error(worker *w, const request_error *e)
{
    void *handle = w->parked;
    w->parked = NULL;
    w->deadline = 0;
    if (!handle) return;
    parked_push pp;
    uint64_t id = decode_parked(w, &pp) == 0 ? pp.id : 0;
    msgpack_unpacked_destroy(&pp.u);
    nng_msg *m;
    if (nng_msg_alloc(&m, 0) != 0) {
        log_error("out of memory: worker %s's waiting push is dropped without a reply", w->name);
        return;
    }
    wire_writer wr;
    wire_writer_init(&wr, m);
    write_error(&wr, id, e);
    transport_answer(handle, m);
}

/* Every waiting push of the session answered with an error (close, drop). */
static void workers_abandon(session *s, const char *why)
{
    if (!s->workers) return;
    request_error e = {0};
    fail(&e, OPTIMD_E_UNKNOWN_SESSION, "session '%s' %s while this push waited; not applied", s->name, why);
    for (uint32_t i = 0; i < s->workers->cap; i++) answer_parked_error(&s->workers->w[i], &e);
    worker_round_clear(s->workers);
}

/* The worker fields every worker's step reply ends with: 3, plus the
 * mode's (sync: combined; bounded: lead, waited). */
static uint32_t worker_extra_pairs(const worker_set *ws)
{
    return 3 + (ws->cfg.mode == WORKERS_SYNC) + 2 * (ws->cfg.mode == WORKERS_BOUNDED);
}

static void pack_worker_extra(msgpack_packer *pk, const worker_set *ws, const worker *w, uint64_t staleness,
                              uint32_t combined, uint64_t lead, bool waited)
{
    wire_pack_str(pk, "worker");
    wire_pack_str(pk, w->name);
    wire_pack_str(pk, "pushes");
    msgpack_pack_uint64(pk, w->pushes);
    wire_pack_str(pk, "staleness");
    msgpack_pack_uint64(pk, staleness);
    if (ws->cfg.mode == WORKERS_SYNC) {
        wire_pack_str(pk, "combined");
        msgpack_pack_uint32(pk, combined);
    }
    if (ws->cfg.mode == WORKERS_BOUNDED) {
        wire_pack_str(pk, "lead");
        msgpack_pack_uint64(pk, lead);
        wire_pack_str(pk, "waited");
        if (waited) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
    }
}

static uint64_t staleness_of(const session *s, const worker *w)
{
    return s->steps > w->seen_steps ? s->steps - w->seen_steps : 0;
}

/* Asks the transport to keep the request until `deadline`. */
static int park_request(request *r, int64_t deadline)
{
    if (!r->ticket || !r->ticket->handle)
        return fail(&r->err, OPTIMD_E_INTERNAL, "this request cannot wait for other workers here");
    r->ticket->park = true;
    r->ticket->deadline = deadline;
    return 0;
}

/* Async, and bounded once admitted: the push applies now. */
static int apply_push(request *r, session *s, worker *w, const msgpack_object *grads, bool want_params,
                      const step_identity *id, const step_clip *clip, uint64_t lead, bool waited)
{
    uint64_t staleness = staleness_of(s, w);
    step_result res;
    if (apply_step(r, s, grads, id, clip, &res)) return -1;
    if (!res.duplicate) w->pushes++;
    if (want_params) w->seen_steps = s->steps;
    pack_step_reply(r, s, grads, want_params, clip, &res, worker_extra_pairs(s->workers));
    pack_worker_extra(&r->w->pk, s->workers, w, staleness, 0, lead, waited);
    return 0;
}

/* Bounded staleness: a worker more than max_staleness pushes ahead of the
 * slowest member waits for it (up to timeout_ms). */
static int bounded_push(request *r, session *s, worker *w, const msgpack_object *grads, bool want_params,
                        const step_identity *id, const step_clip *clip)
{
    worker_set *ws = s->workers;
    const worker *slowest;
    uint64_t lead = w->pushes - worker_min_pushes(ws, &slowest);
    bool waited = w->parked != NULL;
    if (lead <= ws->cfg.max_staleness) {
        w->parked = NULL;
        w->deadline = 0;
        if (apply_push(r, s, w, grads, want_params, id, clip, lead, waited)) return -1;
        /* Waiting workers look again: this push may have been the slowest's. */
        for (uint32_t i = 0; i < ws->cap; i++)
            if (ws->w[i].parked) transport_wake(ws->w[i].parked);
        return 0;
    }
    if (r->ticket && r->ticket->timed_out) {
        w->parked = NULL;
        w->deadline = 0;
        return fail(&r->err, OPTIMD_E_TIMEOUT, "worker '%s' is %llu pushes ahead of worker '%s' (max_staleness %u) "
                    "and waited %u ms for it; this push was not applied", w->name, (unsigned long long)lead,
                    slowest ? slowest->name : "?", ws->cfg.max_staleness, ws->cfg.timeout_ms);
    }
    if (!w->parked) {
        if (!r->ticket || !r->ticket->handle) return park_request(r, 0);
        w->parked = r->ticket->handle;
        w->deadline = metrics_now_ns() + (int64_t)ws->cfg.timeout_ms * 1000000;
    }
    return park_request(r, w->deadline);
}

/* Checks one sync push's gradients as a step would, before it joins the
 * round: dense, known, of the parameter's dtype and shape, finite.
 * idx (n entries) gets their session indexes. */
static int check_sync_grads(request *r, session *s, const msgpack_object *grads, uint32_t *idx)
{
    unsigned char *seen = calloc(s->n_params ? s->n_params : 1, 1);
    if (!seen) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    int rc = 0;
    for (uint32_t i = 0; i < grads->via.map.size && rc == 0; i++) {
        const msgpack_object_kv *kv = &grads->via.map.ptr[i];
        const char *name;
        size_t len;
        if ((rc = wire_key(kv, &name, &len, &r->err))) break;
        int64_t k = session_find_param(s, name, len);
        if (k < 0) {
            rc = fail(&r->err, OPTIMD_E_UNKNOWN_PARAM, "no parameter '%.*s' in session '%s'",
                      (int)(len > PARAM_NAME_MAX ? PARAM_NAME_MAX : len), name, s->name);
            break;
        }
        const param *p = &s->params[k];
        if (seen[k]) {
            rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "gradient for '%s' given twice", s->names[k]);
            break;
        }
        seen[k] = 1;
        idx[i] = (uint32_t)k;
        if (kv->val.type == MSGPACK_OBJECT_MAP && wire_map_get(&kv->val, "rows")) {
            rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "a sync round combines dense gradients; '%s' is row-sparse",
                      s->names[k]);
            break;
        }
        wire_tensor g;
        if ((rc = wire_decode_tensor(&kv->val, s->names[k], &g, &r->err))) break;
        if (g.dtype != p->dtype || g.ndim != p->ndim || memcmp(g.shape, p->shape, p->ndim * sizeof *p->shape)) {
            rc = fail(&r->err, OPTIMD_E_BAD_TENSOR,
                      "gradient for '%s' must be %s with the parameter's shape (%u dims, %lld elements)",
                      s->names[k], wire_dtype_name(p->dtype), p->ndim, (long long)p->numel);
            break;
        }
        if (!session_grad_finite(&g))
            rc = fail(&r->err, OPTIMD_E_NONFINITE, "gradient for '%s' holds NaN or infinity; not counted",
                      s->names[k]);
    }
    free(seen);
    return rc;
}

/* dst[e] += src[e], src possibly unaligned in its message. */
static void add_into(void *dst, const void *src, uint32_t dtype, int64_t numel, void *scratch, size_t scratch_elems)
{
    size_t esize = wire_dtype_size(dtype);
    for (int64_t done = 0; done < numel;) {
        int64_t n = numel - done < (int64_t)scratch_elems ? numel - done : (int64_t)scratch_elems;
        const unsigned char *from = (const unsigned char *)src + (size_t)done * esize;
        const void *aligned = from;
        if ((uintptr_t)from % esize) {
            memcpy(scratch, from, (size_t)n * esize);
            aligned = scratch;
        }
        if (dtype == OPTIMD_DTYPE_F32) {
            float *d = (float *)dst + done;
            const float *a = aligned;
            for (int64_t e = 0; e < n; e++) d[e] += a[e];
        } else {
            double *d = (double *)dst + done;
            const double *a = aligned;
            for (int64_t e = 0; e < n; e++) d[e] += a[e];
        }
        done += n;
    }
}

/* The step request a round amounts to, as the write-ahead log keeps it:
 * for every parameter of the round, the pushes summed in rank order (then
 * divided by their number, for mean), and the clipping the lowest-ranked
 * push asked for. */
static int build_round_request(session *s, parked_push *pp, uint32_t k, nng_msg **out, request_error *err)
{
    worker_set *ws = s->workers;
    uint32_t n = ws->n_round_params;
    const void **data = calloc((size_t)k * (n ? n : 1), sizeof *data);
    int64_t *pos = malloc((s->n_params ? s->n_params : 1) * sizeof *pos);
    size_t biggest = 64;
    for (uint32_t j = 0; j < n; j++) biggest = s->params[ws->round_params[j]].nbytes > biggest ?
                                              s->params[ws->round_params[j]].nbytes : biggest;
    enum { SCRATCH_BYTES = 1 << 16 };
    void *acc = aligned_alloc(64, (biggest + 63) / 64 * 64);
    void *scratch = aligned_alloc(64, SCRATCH_BYTES);
    nng_msg *m = NULL;
    int rc = 0;
    if (!data || !pos || !acc || !scratch || nng_msg_alloc(&m, 0) != 0) {
        rc = fail(err, OPTIMD_E_NOMEM, "out of memory combining the round's gradients");
        goto out;
    }
    for (size_t i = 0; i < s->n_params; i++) pos[i] = -1;
    for (uint32_t j = 0; j < n; j++) pos[ws->round_params[j]] = j;
    for (uint32_t q = 0; q < k; q++)
        for (uint32_t i = 0; i < pp[q].grads->via.map.size; i++) {
            const msgpack_object_kv *kv = &pp[q].grads->via.map.ptr[i];
            int64_t at = session_find_param(s, kv->key.via.str.ptr, kv->key.via.str.size);
            wire_tensor g;
            request_error ignored;
            if (at < 0 || pos[at] < 0 || wire_decode_tensor(&kv->val, "", &g, &ignored)) continue;
            data[(size_t)q * n + (size_t)pos[at]] = g.data;
        }
    for (size_t q = 0; q < (size_t)k * n; q++)
        if (!data[q]) {
            rc = fail(err, OPTIMD_E_INTERNAL, "a push of the round lost a gradient");
            goto out;
        }
    size_t bytes = 256;
    for (uint32_t j = 0; j < n; j++) bytes += 384 + s->params[ws->round_params[j]].nbytes;
    nng_msg_reserve(m, bytes);
    wire_writer w;
    wire_writer_init(&w, m);
    msgpack_packer *pk = &w.pk;
    const msgpack_object *clip_value = wire_map_get(pp[0].root, "clip_value");
    const msgpack_object *clip_norm = wire_map_get(pp[0].root, "clip_norm");
    uint32_t n_seqs = 0;
    for (uint32_t q = 0; q < k; q++) n_seqs += wire_map_get(pp[q].root, "seq") != NULL;
    msgpack_pack_map(pk, 4 + (clip_value != NULL) + (clip_norm != NULL) + (n_seqs > 0));
    wire_pack_str(pk, "v");
    msgpack_pack_int(pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(pk, "op");
    wire_pack_str(pk, "step");
    wire_pack_str(pk, "session");
    wire_pack_str(pk, s->name);
    if (clip_value) {
        wire_pack_str(pk, "clip_value");
        msgpack_pack_object(pk, *clip_value);
    }
    if (clip_norm) {
        wire_pack_str(pk, "clip_norm");
        msgpack_pack_object(pk, *clip_norm);
    }
    /* The pushes' sequence numbers, recorded with the round (and on replay). */
    if (n_seqs) {
        wire_pack_str(pk, "seqs");
        msgpack_pack_array(pk, n_seqs);
        for (uint32_t q = 0; q < k; q++) {
            const msgpack_object *seq = wire_map_get(pp[q].root, "seq");
            if (!seq) continue;
            const msgpack_object *client = wire_map_get(pp[q].root, "client");
            msgpack_pack_map(pk, 2);
            wire_pack_str(pk, "client");
            if (client) msgpack_pack_object(pk, *client);
            else wire_pack_str(pk, "");
            wire_pack_str(pk, "seq");
            msgpack_pack_object(pk, *seq);
        }
    }
    wire_pack_str(pk, "grads");
    msgpack_pack_map(pk, n);
    for (uint32_t j = 0; j < n; j++) {
        const param *p = &s->params[ws->round_params[j]];
        memcpy(acc, data[j], p->nbytes);
        for (uint32_t q = 1; q < k; q++)
            add_into(acc, data[(size_t)q * n + j], p->dtype, p->numel, scratch,
                     SCRATCH_BYTES / wire_dtype_size(p->dtype));
        if (!ws->cfg.sum && k > 1) {
            if (p->dtype == OPTIMD_DTYPE_F32) {
                float *a = acc, by = (float)k;
                for (int64_t e = 0; e < p->numel; e++) a[e] /= by;
            } else {
                double *a = acc, by = (double)k;
                for (int64_t e = 0; e < p->numel; e++) a[e] /= by;
            }
        }
        wire_pack_str(pk, s->names[ws->round_params[j]]);
        wire_pack_tensor(pk, p->dtype, p->ndim, p->shape, acc, p->nbytes);
    }
    if (w.failed) rc = fail(err, OPTIMD_E_NOMEM, "out of memory combining the round's gradients");
out:
    free(data);
    free(pos);
    free(acc);
    free(scratch);
    if (rc && m) nng_msg_free(m);
    *out = rc ? NULL : m;
    return rc;
}

/* Applies the round: the pushes in it (all of them, or those present at
 * the timeout with on_timeout=proceed) combined into one step; every
 * other pushing worker is answered, `self` by the request's own reply. */
static int complete_round(request *r, session *s, worker *self, const msgpack_object *grads, bool want_params)
{
    worker_set *ws = s->workers;
    worker **members = calloc(ws->cap, sizeof *members);
    parked_push *pp = calloc(ws->cap, sizeof *pp);
    uint32_t k = 0;
    int rc = 0;
    if (!members || !pp) {
        rc = fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    } else {
        for (uint32_t i = 0; i < ws->cap; i++) {
            if (!ws->w[i].pushed) continue;
            members[k] = &ws->w[i];
            msgpack_unpacked_init(&pp[k].u);
            if (&ws->w[i] == self) {
                pp[k].root = r->root;
                pp[k].grads = grads;
                pp[k].want_params = want_params;
                pp[k].id = r->id;
            } else if (decode_parked(&ws->w[i], &pp[k])) {
                rc = fail(&r->err, OPTIMD_E_INTERNAL, "worker %s's waiting push cannot be read", ws->w[i].name);
            }
            k++;
        }
    }
    /* Staleness: steps taken since each worker's parameters, this one not counted. */
    uint64_t *stale = calloc(ws->cap, sizeof *stale);
    if (!stale && rc == 0) rc = fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    for (uint32_t q = 0; q < k && stale; q++) stale[q] = staleness_of(s, members[q]);
    nng_msg *combined = NULL;
    msgpack_unpacked cu;
    msgpack_unpacked_init(&cu);
    step_result res;
    step_clip clip;
    if (rc == 0) rc = build_round_request(s, pp, k, &combined, &r->err);
    if (rc == 0) {
        size_t off = 0;
        const msgpack_object *cgrads = NULL;
        if (msgpack_unpack_next(&cu, nng_msg_body(combined), nng_msg_len(combined), &off) != MSGPACK_UNPACK_SUCCESS ||
            wire_get_map(&cu.data, "grads", true, &cgrads, &r->err) || step_clip_parse(&cu.data, &clip, &r->err)) {
            rc = r->err.code ? -1 : fail(&r->err, OPTIMD_E_INTERNAL, "the combined step cannot be read");
        } else {
            store_change change = {.st = &r->srv->store, .request = nng_msg_body(combined),
                                   .len = nng_msg_len(combined)};
            rc = session_step(s, cgrads, NULL, &clip, NULL, r->srv->pool, store_log_change, &change, &res, &r->err);
            const msgpack_object *seqs = rc == 0 ? wire_map_get(&cu.data, "seqs") : NULL;
            for (uint32_t i = 0; seqs && i < seqs->via.array.size; i++) {
                const msgpack_object *e = &seqs->via.array.ptr[i];
                const char *client;
                size_t client_len;
                uint64_t seq;
                request_error ignored;
                if (wire_get_str(e, "client", true, &client, &client_len, &ignored) == 0 &&
                    wire_get_uint(e, "seq", true, &seq, &ignored) == 0)
                    session_record_seq(s, client, client_len, seq, &res);
            }
            if (rc == 0) store_compact_if_large(&r->srv->store, s);
        }
    }
    for (uint32_t q = 0; q < k; q++) {
        worker *w = members[q];
        if (rc == 0) {
            w->pushes++;
            if (pp[q].want_params) w->seen_steps = s->steps;
        }
        if (w == self) continue;
        if (rc != 0) {
            answer_parked_error(w, &r->err);
            continue;
        }
        nng_msg *m;
        if (nng_msg_alloc(&m, 0) != 0) {
            log_error("out of memory: worker %s's reply to a sync round is lost", w->name);
            continue;
        }
        wire_writer wr;
        wire_writer_init(&wr, m);
        request other = {.srv = r->srv, .w = &wr, .id = pp[q].id};
        pack_step_reply(&other, s, pp[q].grads, pp[q].want_params, &clip, &res, worker_extra_pairs(ws));
        pack_worker_extra(&wr.pk, ws, w, stale[q], k, 0, false);
        transport_answer(w->parked, m);
        w->parked = NULL;
    }
    if (rc == 0) {
        uint64_t own = 0;
        for (uint32_t q = 0; q < k; q++)
            if (members[q] == self) own = stale[q];
        pack_step_reply(r, s, grads, want_params, &clip, &res, worker_extra_pairs(ws));
        pack_worker_extra(&r->w->pk, ws, self, own, k, 0, false);
    }
    for (uint32_t q = 0; q < k && pp; q++) msgpack_unpacked_destroy(&pp[q].u);
    msgpack_unpacked_destroy(&cu);
    if (combined) nng_msg_free(combined);
    free(members);
    free(pp);
    free(stale);
    worker_round_clear(ws);
    return rc;
}

/* A sync round ran past its deadline: fail it for every pushing worker,
 * or step with the pushes present. */
static int round_timed_out(request *r, session *s, worker *self, const msgpack_object *grads, bool want_params)
{
    worker_set *ws = s->workers;
    if (ws->cfg.proceed) return complete_round(r, s, self, grads, want_params);
    char missing[160] = "";
    size_t used = 0;
    for (uint32_t i = 0; i < ws->cap && used < sizeof missing - 1; i++)
        if (ws->w[i].name[0] && !ws->w[i].pushed)
            used += (size_t)snprintf(missing + used, sizeof missing - used, "%s%s", used ? ", " : "", ws->w[i].name);
    fail(&r->err, OPTIMD_E_TIMEOUT, "the sync round timed out after %u ms with %u of %u pushes (missing: %s); "
         "nothing applied", ws->cfg.timeout_ms, ws->round_pushes, ws->cfg.count,
         used ? missing : "workers that have not joined");
    for (uint32_t i = 0; i < ws->cap; i++)
        if (&ws->w[i] != self && ws->w[i].pushed) answer_parked_error(&ws->w[i], &r->err);
    worker_round_clear(ws);
    return -1;
}

/* Sync: the push joins the round; the round's last push applies it. */
static int sync_push(request *r, session *s, worker *w, const msgpack_object *grads, bool want_params,
                     const step_identity *id)
{
    worker_set *ws = s->workers;
    if (r->ticket && r->ticket->rerun) {
        if (r->ticket->timed_out && w->pushed) return round_timed_out(r, s, w, grads, want_params);
        return park_request(r, ws->round_deadline);
    }
    if (id->seq && id->client_len > CLIENT_ID_MAX)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'client' is at most %d bytes", CLIENT_ID_MAX);
    uint32_t n = grads->via.map.size;
    uint32_t *idx = malloc((n ? n : 1) * sizeof *idx);
    if (!idx) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    int rc = check_sync_grads(r, s, grads, idx);
    if (rc == 0) rc = worker_round_admit(ws, idx, n, s->n_params, &r->err);
    free(idx);
    if (rc) return -1;
    bool last = ws->round_pushes + 1 >= ws->cfg.count;
    if (!last && (!r->ticket || !r->ticket->handle)) return park_request(r, 0);
    if (ws->round_pushes == 0) ws->round_deadline = metrics_now_ns() + (int64_t)ws->cfg.timeout_ms * 1000000;
    ws->round_pushes++;
    w->pushed = true;
    w->push_seq = id->seq;
    w->parked = r->ticket ? r->ticket->handle : NULL;
    w->raw = r->raw;
    w->raw_len = r->raw_len;
    if (!last) return park_request(r, ws->round_deadline);
    w->parked = NULL;
    return complete_round(r, s, w, grads, want_params);
}

/* A sequenced sync push sent again: a retry of one whose round was applied
 * is answered from the session's record; a retry of the one still waiting
 * takes its place (the first attempt's connection gave up on it). 1:
 * answered or parked, 0: not a retry, -1: error. */
static int sync_retry(request *r, session *s, worker *w, const msgpack_object *grads, bool want_params,
                      const step_identity *id, const step_clip *clip)
{
    worker_set *ws = s->workers;
    if (!id->seq) return 0;
    if (id->client_len > CLIENT_ID_MAX)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'client' is at most %d bytes", CLIENT_ID_MAX);
    const client_seq *cs = session_client(s, id->client, id->client_len, false);
    if (cs && id->seq <= cs->seq) {
        step_result res;
        uint64_t staleness = staleness_of(s, w);
        if (session_step(s, grads, id, clip, NULL, r->srv->pool, NULL, NULL, &res, &r->err)) return -1;
        if (want_params) w->seen_steps = s->steps;
        pack_step_reply(r, s, grads, want_params, clip, &res, worker_extra_pairs(ws));
        pack_worker_extra(&r->w->pk, ws, w, staleness, 0, 0, false);
        return 1;
    }
    if (!w->pushed || w->push_seq != id->seq || !w->parked || !r->ticket || !r->ticket->handle) return 0;
    request_error superseded = {0};
    fail(&superseded, OPTIMD_E_BAD_REQUEST, "push seq %llu of worker '%s' was sent again; the new attempt "
         "waits in its place", (unsigned long long)id->seq, w->name);
    answer_parked_error(w, &superseded);
    w->parked = r->ticket->handle;
    w->raw = r->raw;
    w->raw_len = r->raw_len;
    return park_request(r, ws->round_deadline) ? -1 : 1;
}

/* A step in a session with workers: who pushes, and how it combines. */
static int worker_push(request *r, session *s, const msgpack_object *grads, bool want_params,
                       const step_identity *id, const step_clip *clip)
{
    worker_set *ws = s->workers;
    const char *name = NULL;
    size_t len = 0;
    if (wire_get_str(r->root, "worker", false, &name, &len, &r->err)) return -1;
    if (!name)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "session '%s' has %s workers: a step names its 'worker' "
                    "(join first)", s->name, worker_mode_name(ws->cfg.mode));
    worker *w = worker_find(ws, name, len);
    bool rerun = r->ticket && r->ticket->rerun;
    if (rerun && (!w || w->parked != r->ticket->handle)) {
        /* Answered meanwhile by another thread (the round's last push, a
         * leave, a close): the transport sends that answer. */
        r->ticket->park = true;
        r->ticket->deadline = 0;
        return 0;
    }
    if (!w)
        return fail(&r->err, OPTIMD_E_UNKNOWN_WORKER, "no worker '%.*s' in session '%s': join first",
                    (int)(len > WORKER_NAME_MAX ? WORKER_NAME_MAX : len), name, s->name);
    if (!rerun && ws->cfg.mode == WORKERS_SYNC) {
        int retried = sync_retry(r, s, w, grads, want_params, id, clip);
        if (retried) return retried < 0 ? -1 : 0;
    }
    if (!rerun && (w->parked || w->pushed))
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "worker '%s' has a push waiting already; one at a time",
                    w->name);
    switch (ws->cfg.mode) {
    case WORKERS_SYNC:
        return sync_push(r, s, w, grads, want_params, id);
    case WORKERS_BOUNDED:
        return bounded_push(r, s, w, grads, want_params, id, clip);
    default:
        return apply_push(r, s, w, grads, want_params, id, clip, 0, false);
    }
}

static void pack_workers(msgpack_packer *pk, const session *s)
{
    const worker_set *ws = s->workers;
    uint32_t n = 2 + (ws->cfg.mode == WORKERS_SYNC) * 4 + (ws->cfg.mode != WORKERS_ASYNC) +
                 (ws->cfg.mode == WORKERS_BOUNDED);
    msgpack_pack_map(pk, n);
    wire_pack_str(pk, "mode");
    wire_pack_str(pk, worker_mode_name(ws->cfg.mode));
    if (ws->cfg.mode == WORKERS_SYNC) {
        wire_pack_str(pk, "count");
        msgpack_pack_uint32(pk, ws->cfg.count);
        wire_pack_str(pk, "reduce");
        wire_pack_str(pk, ws->cfg.sum ? "sum" : "mean");
        wire_pack_str(pk, "on_timeout");
        wire_pack_str(pk, ws->cfg.proceed ? "proceed" : "fail");
        wire_pack_str(pk, "round_pushes");
        msgpack_pack_uint32(pk, ws->round_pushes);
    }
    if (ws->cfg.mode != WORKERS_ASYNC) {
        wire_pack_str(pk, "timeout_ms");
        msgpack_pack_uint32(pk, ws->cfg.timeout_ms);
    }
    if (ws->cfg.mode == WORKERS_BOUNDED) {
        wire_pack_str(pk, "max_staleness");
        msgpack_pack_uint32(pk, ws->cfg.max_staleness);
    }
    wire_pack_str(pk, "members");
    msgpack_pack_array(pk, ws->joined);
    for (uint32_t i = 0; i < ws->cap; i++) {
        const worker *w = &ws->w[i];
        if (!w->name[0]) continue;
        msgpack_pack_map(pk, 5);
        wire_pack_str(pk, "name");
        wire_pack_str(pk, w->name);
        wire_pack_str(pk, "rank");
        msgpack_pack_uint32(pk, i);
        wire_pack_str(pk, "pushes");
        msgpack_pack_uint64(pk, w->pushes);
        wire_pack_str(pk, "staleness");
        msgpack_pack_uint64(pk, staleness_of(s, w));
        wire_pack_str(pk, "waiting");
        if (w->parked || w->pushed) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
    }
}

/* join and leave: logged, so membership survives a restart. */
static int change_membership(request *r, bool join)
{
    const char *name;
    size_t len;
    if (wire_get_str(r->root, "worker", true, &name, &len, &r->err)) return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    int rc = 0;
    worker_set *ws = s->workers;
    worker *w = ws ? worker_find(ws, name, len) : NULL;
    if (!ws) {
        rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "session '%s' has no workers (open it with 'workers')", s->name);
    } else if (!join && !w) {
        rc = fail(&r->err, OPTIMD_E_UNKNOWN_WORKER, "no worker '%.*s' in session '%s'",
                  (int)(len > WORKER_NAME_MAX ? WORKER_NAME_MAX : len), name, s->name);
    } else if (join && !w && ws->joined >= ws->cap) {
        rc = fail(&r->err, OPTIMD_E_LIMIT, "session '%s' has its %u workers already", s->name, ws->cap);
    } else if (join && !w && (len == 0 || len > WORKER_NAME_MAX || memchr(name, '\0', len))) {
        rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "a worker name is 1 to %d bytes, without NUL", WORKER_NAME_MAX);
    } else if (join == !w) {
        /* A real change (joining again, or leaving, is not one). */
        store_change change = change_of(r);
        rc = store_log_change(&change, s, &r->err);
        if (rc == 0 && join) {
            w = worker_join(ws, name, len, s->steps, &r->err);
            rc = w ? 0 : -1;
        } else if (rc == 0) {
            request_error e = {0};
            fail(&e, OPTIMD_E_UNKNOWN_WORKER, "worker '%s' left session '%s' while this push waited; not applied",
                 w->name, s->name);
            if (w->pushed) ws->round_pushes--;
            answer_parked_error(w, &e);
            worker_leave(ws, w);
            if (ws->round_pushes == 0) worker_round_clear(ws);
            /* Bounded: the slowest may have left. */
            for (uint32_t i = 0; i < ws->cap; i++)
                if (ws->w[i].parked && ws->cfg.mode == WORKERS_BOUNDED) transport_wake(ws->w[i].parked);
            w = NULL;
        }
        if (rc == 0) s->version++;
    }
    if (rc == 0) {
        msgpack_packer *pk = reply_begin(r, 2 + (w != NULL));
        if (w) {
            wire_pack_str(pk, "rank");
            msgpack_pack_uint32(pk, worker_rank(ws, w));
        }
        wire_pack_str(pk, "steps");
        msgpack_pack_uint64(pk, s->steps);
        wire_pack_str(pk, "workers");
        pack_workers(pk, s);
    }
    session_unlock(s);
    session_unref(s);
    return rc;
}

static int op_join(request *r)
{
    return change_membership(r, true);
}

static int op_leave(request *r)
{
    return change_membership(r, false);
}

static int op_step(request *r)
{
    const msgpack_object *grads;
    bool want_params = true;
    step_identity id = {"", 0, 0};
    step_clip clip;
    if (wire_get_map(r->root, "grads", true, &grads, &r->err) || check_tensor_count(r, grads, "grads") ||
        wire_get_bool(r->root, "return", false, &want_params, &r->err) ||
        wire_get_uint(r->root, "seq", false, &id.seq, &r->err) ||
        wire_get_str(r->root, "client", false, &id.client, &id.client_len, &r->err) ||
        step_clip_parse(r->root, &clip, &r->err))
        return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    /* Between two steps: move to plugin versions loaded since the last. */
    if (session_follow_upgrades(s, &r->srv->plugins, &r->err) > 0 && store_save_locked(&r->srv->store, s) != 0)
        log_error("session %s: cannot snapshot it after a plugin upgrade", s->name);
    int rc;
    if (s->workers) {
        rc = worker_push(r, s, grads, want_params, &id, &clip);
    } else if (wire_map_get(r->root, "worker")) {
        rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "session '%s' has no workers: a step names no 'worker'", s->name);
    } else {
        step_result res;
        rc = apply_step(r, s, grads, &id, &clip, &res);
        if (rc == 0) pack_step_reply(r, s, grads, want_params, &clip, &res, 0);
    }
    session_unlock(s);
    session_unref(s);
    return rc;
}

/* ------------------------------------------------------ shared memory -- */

static const char *address_family_name(uint16_t family)
{
    switch (family) {
    case NNG_AF_INPROC: return "inproc";
    case NNG_AF_IPC: return "ipc";
    case NNG_AF_INET: return "tcp";
    case NNG_AF_INET6: return "tcp (IPv6)";
    default: return "unknown";
    }
}

/* The uid of the process at the other end of this request's connection,
 * which must be an ipc:// one: only there is the client on this host, and
 * only there does the kernel tell the daemon who it is (SO_PEERCRED). */
static int ipc_peer_uid(request *r, uid_t *uid)
{
    nng_sockaddr sa;
    memset(&sa, 0, sizeof sa);
    int rv = nng_pipe_id(r->pipe) > 0 ? nng_pipe_get_addr(r->pipe, NNG_OPT_REMADDR, &sa) : NNG_ENOENT;
    if (rv != 0 || sa.s_family != NNG_AF_IPC)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "shm_attach needs an ipc:// connection (this one is %s): "
                    "shared memory is for clients on the daemon's host; others step over the wire",
                    rv != 0 ? "unknown" : address_family_name(sa.s_family));
    uint64_t peer;
    if (nng_pipe_get_uint64(r->pipe, NNG_OPT_IPC_PEER_UID, &peer) != 0)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "shm_attach: the daemon cannot tell who the ipc peer is "
                    "on this platform");
    *uid = (uid_t)peer;
    return 0;
}

static int op_shm_attach(request *r)
{
    const char *segment;
    size_t segment_len;
    uint64_t size;
    const msgpack_object *params;
    uid_t peer = 0;
    if (wire_get_str(r->root, "segment", true, &segment, &segment_len, &r->err) ||
        wire_get_uint(r->root, "size", true, &size, &r->err) ||
        wire_get_map(r->root, "params", true, &params, &r->err) || check_tensor_count(r, params, "params") ||
        ipc_peer_uid(r, &peer))
        return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    optimd_shm_attachment *a = NULL;
    int rc = optimd_shm_prepare(s, segment, segment_len, size, peer, nng_pipe_id(r->pipe), params, &a, &r->err);
    if (rc == 0) {
        /* The gradient copies are the daemon's memory: they count against
         * the limits (net of the attachment this one replaces). */
        uint64_t freed = s->shm ? s->shm->staging_bytes : 0;
        rc = check_memory_adding(r, s, a->staging_bytes > freed ? a->staging_bytes - freed : 0);
        if (rc) optimd_shm_discard(a);
    }
    size_t attached = rc == 0 ? a->n_entries : 0;
    if (rc == 0) rc = optimd_shm_install(s, a, &r->err);
    /* A connection that closed while this was applied found nothing to
     * detach: look, now that it is installed (transport.c has the order). */
    if (rc == 0 && !optimd_connection_is_open((uint32_t)nng_pipe_id(r->pipe))) optimd_shm_detach(s);
    session_unlock(s);
    session_unref(s);
    if (rc == 0) {
        msgpack_packer *pk = reply_begin(r, 1);
        wire_pack_str(pk, "attached");
        msgpack_pack_uint64(pk, attached);
    }
    return rc;
}

static int op_shm_step(request *r)
{
    step_identity id = {"", 0, 0};
    step_clip clip;
    const msgpack_object *names = wire_map_get(r->root, "names");
    if (names && names->type == MSGPACK_OBJECT_NIL) names = NULL;
    if (wire_get_uint(r->root, "seq", false, &id.seq, &r->err) ||
        wire_get_str(r->root, "client", false, &id.client, &id.client_len, &r->err) ||
        step_clip_parse(r->root, &clip, &r->err))
        return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    if (session_follow_upgrades(s, &r->srv->plugins, &r->err) > 0 && store_save_locked(&r->srv->store, s) != 0)
        log_error("session %s: cannot snapshot it after a plugin upgrade", s->name);
    step_result res;
    bool detached = false;
    int rc = optimd_shm_step(s, names, r->root, &id, &clip, r->srv->pool, &r->srv->store, &res, &detached,
                             &r->err);
    if (rc == 0 && !res.duplicate) store_compact_if_large(&r->srv->store, s);
    if (rc == 0) {
        msgpack_packer *pk = pack_step_counters(r, s, &res, &clip, 1);
        wire_pack_str(pk, "detached");
        if (detached) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
    }
    session_unlock(s);
    session_unref(s);
    return rc;
}

static int op_shm_detach(request *r)
{
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    bool detached = optimd_shm_detach(s);
    session_unlock(s);
    session_unref(s);
    msgpack_packer *pk = reply_begin(r, 1);
    wire_pack_str(pk, "detached");
    if (detached) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    return 0;
}

void server_connection_closed(server *srv, uint32_t connection)
{
    optimd_shm_detach_connection(&srv->sessions, connection);
}

static int op_observe(request *r)
{
    double metric = 0;
    if (wire_get_number(r->root, "metric", true, &metric, &r->err)) return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    store_change change = change_of(r);
    int group;
    int rc = session_request_group(s, r->root, true, &group, &r->err);
    if (rc == 0) rc = session_observe(s, metric, group, store_log_change, &change, &r->err);
    if (rc == 0) {
        store_compact_if_large(&r->srv->store, s);
        msgpack_packer *pk = reply_begin(r, 2);
        wire_pack_str(pk, "lr");
        msgpack_pack_double(pk, s->groups[group < 0 ? 0 : group].lr);
        wire_pack_str(pk, "lrs");
        msgpack_pack_map(pk, s->n_groups);
        for (uint32_t gi = 0; gi < s->n_groups; gi++) {
            wire_pack_str(pk, s->groups[gi].name);
            msgpack_pack_double(pk, s->groups[gi].lr);
        }
    }
    session_unlock(s);
    session_unref(s);
    return rc;
}

/* The parameters a request's optional "names" array selects (default: all,
 * in registration order), as indices; the caller holds the session lock and
 * frees *out. A name given twice is refused: a reply map must not repeat a
 * key. */
static int resolve_names(request *r, session *s, size_t **out, size_t *count)
{
    const msgpack_object *names = wire_map_get(r->root, "names");
    if (names && names->type == MSGPACK_OBJECT_NIL) names = NULL;
    if (names && names->type != MSGPACK_OBJECT_ARRAY)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'names' must be an array of strings");
    *count = names ? names->via.array.size : s->n_params;
    size_t *idx = malloc((*count ? *count : 1) * sizeof *idx);
    if (!idx) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    uint64_t serial = ++s->request_serial;
    for (size_t i = 0; i < *count; i++) {
        if (!names) {
            idx[i] = i;
            continue;
        }
        const msgpack_object *n = &names->via.array.ptr[i];
        if (n->type != MSGPACK_OBJECT_STR) {
            free(idx);
            return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'names' must be an array of strings");
        }
        int64_t found = session_find_param(s, n->via.str.ptr, n->via.str.size);
        if (found < 0 || s->params[found].mark == serial) {
            free(idx);
            if (found >= 0) return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'%s' is named twice", s->names[found]);
            return fail(&r->err, OPTIMD_E_UNKNOWN_PARAM, "no parameter '%.*s' in session '%s'",
                        (int)(n->via.str.size > PARAM_NAME_MAX ? PARAM_NAME_MAX : n->via.str.size),
                        n->via.str.ptr, s->name);
        }
        s->params[found].mark = serial;
        idx[i] = (size_t)found;
    }
    *out = idx;
    return 0;
}

static int op_pull(request *r)
{
    const char *wname = NULL;
    size_t wlen = 0;
    if (wire_get_str(r->root, "worker", false, &wname, &wlen, &r->err)) return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    size_t *idx = NULL, count = 0;
    int rc = resolve_names(r, s, &idx, &count);
    /* A worker's pull: its parameters are now this fresh (staleness). */
    worker *w = wname && s->workers ? worker_find(s->workers, wname, wlen) : NULL;
    if (rc == 0 && wname && !w)
        rc = fail(&r->err, OPTIMD_E_UNKNOWN_WORKER, "no worker '%.*s' in session '%s'",
                  (int)(wlen > WORKER_NAME_MAX ? WORKER_NAME_MAX : wlen), wname, s->name);
    if (rc == 0 && w) w->seen_steps = s->steps;
    if (rc == 0) {
        size_t bytes = 256;
        for (size_t i = 0; i < count; i++) bytes += 384 + s->params[idx[i]].nbytes;
        nng_msg_reserve(r->w->msg, bytes);
        msgpack_packer *pk = reply_begin(r, 1);
        wire_pack_str(pk, "params");
        msgpack_pack_map(pk, (uint32_t)count);
        for (size_t i = 0; i < count; i++) pack_param(pk, s, idx[i]);
    }
    free(idx);
    session_unlock(s);
    session_unref(s);
    return rc;
}

/* The optimizer state of the selected parameters: every slot allocated so
 * far (a parameter that never stepped has none), by slot key. */
static int op_state(request *r)
{
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    size_t *idx = NULL, count = 0;
    int rc = resolve_names(r, s, &idx, &count);
    if (rc == 0) {
        const optimd_optimizer *o = s->opt->desc->optimizer;
        msgpack_packer *pk = reply_begin(r, 1);
        wire_pack_str(pk, "state");
        msgpack_pack_map(pk, (uint32_t)count);
        for (size_t i = 0; i < count; i++) {
            const param *p = &s->params[idx[i]];
            uint32_t n_slots = p->slow != NULL;
            for (uint32_t k = 0; p->slots && k < o->n_slots; k++) n_slots += p->slots[k] != NULL;
            wire_pack_str(pk, s->names[idx[i]]);
            msgpack_pack_map(pk, n_slots);
            if (p->slow) {
                wire_pack_str(pk, "lookahead_slow");
                wire_pack_tensor(pk, p->dtype, p->ndim, p->shape, p->slow, p->nbytes);
            }
            for (uint32_t k = 0; p->slots && k < o->n_slots; k++) {
                if (!p->slots[k]) continue;
                slot_layout l;
                session_slot_layout(s, p, k, &l);
                wire_pack_str(pk, o->slots[k].key);
                wire_pack_tensor(pk, l.dtype, l.ndim, l.shape, p->slots[k], l.nbytes);
            }
        }
    }
    free(idx);
    session_unlock(s);
    session_unref(s);
    return rc;
}

/* The parameters an export's optional "names" selects, as a mask over the
 * session's (NULL: all of them); the caller holds the lock and frees it. */
static int export_selection(request *r, session *s, bool **keep)
{
    *keep = NULL;
    const msgpack_object *names = wire_map_get(r->root, "names");
    if (!names || names->type == MSGPACK_OBJECT_NIL) return 0;
    size_t *idx = NULL, count = 0;
    if (resolve_names(r, s, &idx, &count)) return -1;
    *keep = calloc(s->n_params ? s->n_params : 1, sizeof **keep);
    if (!*keep) {
        free(idx);
        return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < count; i++) (*keep)[idx[i]] = true;
    free(idx);
    return 0;
}

static int op_export(request *r)
{
    session *s = request_session(r);
    if (!s) return -1;
    char *buf = NULL;
    size_t len = 0;
    bool *keep = NULL;
    session_lock(s);
    int rc = export_selection(r, s, &keep);
    if (rc == 0) {
        FILE *f = open_memstream(&buf, &len);
        rc = f ? snapshot_write_some(s, keep, f) : -1;
        if (f && fclose(f) != 0) rc = -1;
        if (rc != 0) fail(&r->err, OPTIMD_E_NOMEM, "out of memory writing the snapshot");
    }
    session_unlock(s);
    if (rc == 0) {
        nng_msg_reserve(r->w->msg, len + 64);
        msgpack_packer *pk = reply_begin(r, 1);
        wire_pack_str(pk, "snapshot");
        msgpack_pack_bin(pk, len);
        msgpack_pack_bin_body(pk, buf, len);
    }
    free(keep);
    free(buf);
    session_unref(s);
    return rc;
}

/* import with "into": the snapshot's parameters join the session the
 * request names. Not logged: the session's snapshot is written before the
 * reply instead, so a replayed log never has to parse a snapshot. */
static int import_into(request *r, const msgpack_object *snap)
{
    if (wire_map_get(r->root, "durability"))
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'durability' cannot change with 'into' (the session keeps its own)");
    session *s = request_session(r);
    if (!s) return -1;
    char why[256];
    /* Parsed before taking the lock: a large snapshot must not stall the
     * session's steps. */
    session *from = snapshot_parse((const unsigned char *)snap->via.bin.ptr, snap->via.bin.size, &r->srv->plugins,
                                   s->name, why, sizeof why);
    if (!from) {
        session_unref(s);
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "unusable snapshot: %s", why);
    }
    session_lock(s);
    param_adoption a;
    int rc = s->closed ? fail(&r->err, OPTIMD_E_UNKNOWN_SESSION, "session '%s' was closed meanwhile", s->name)
                       : session_adopt_prepare(s, from, &a, &r->err);
    if (rc == 0 && check_memory_adding(r, s, a.adding_bytes) != 0) {
        session_adopt_end(s, &a, false);
        rc = -1;
    }
    if (rc == 0) {
        session_adopt_apply(s, &a);
        s->version++;
        if (store_save_some(&r->srv->store, s, NULL) != 0) {
            rc = fail(&r->err, OPTIMD_E_STORAGE, "cannot write session %s to the state directory (nothing added): %s",
                      s->name, strerror(errno));
            s->version--;
        }
        session_adopt_end(s, &a, rc == 0);
    }
    size_t added = from->n_params;
    uint64_t steps = s->steps;
    session_unlock(s);
    if (rc == 0) {
        log_info("session %s: %zu parameters imported into it", s->name, added);
        msgpack_packer *pk = reply_begin(r, 3);
        wire_pack_str(pk, "session");
        wire_pack_str(pk, s->name);
        wire_pack_str(pk, "imported");
        msgpack_pack_uint64(pk, added);
        wire_pack_str(pk, "steps");
        msgpack_pack_uint64(pk, steps);
    }
    session_unref(from);
    session_unref(s);
    return rc;
}

static int op_import(request *r)
{
    const msgpack_object *snap = wire_map_get(r->root, "snapshot");
    if (!snap || snap->type != MSGPACK_OBJECT_BIN)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'snapshot' must be bin (a file from 'export')");
    bool into = false;
    if (wire_get_bool(r->root, "into", false, &into, &r->err)) return -1;
    if (into) return import_into(r, snap);
    char name[SESSION_NAME_MAX + 1], token[SESSION_TOKEN_LEN + 1];
    bool renamed;
    int durability = -1;
    if (get_session_name(r, false, name, &renamed) || get_durability(r, &durability)) return -1;
    char why[256];
    session *s = snapshot_parse((const unsigned char *)snap->via.bin.ptr, snap->via.bin.size, &r->srv->plugins,
                                renamed ? name : NULL, why, sizeof why);
    if (!s) return fail(&r->err, OPTIMD_E_BAD_REQUEST, "unusable snapshot: %s", why);
    if (!valid_session_name(s->name, strlen(s->name))) {
        session_unref(s);
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "the snapshot's session name breaks the rule: %s", name_rule);
    }
    session_new_token(s);
    if (durability >= 0) s->durability = durability;
    uint64_t steps = s->steps;
    if (admit_session(r, s, name, token)) return -1;
    log_info("session %s imported (%llu steps)", name, (unsigned long long)steps);
    msgpack_packer *pk = reply_begin(r, 3);
    wire_pack_str(pk, "session");
    wire_pack_str(pk, name);
    wire_pack_str(pk, "token");
    wire_pack_str(pk, token);
    wire_pack_str(pk, "steps");
    msgpack_pack_uint64(pk, steps);
    return 0;
}

/* Removes parameters with their state, all or none. Like import-into it
 * is made durable by the session's snapshot, written (without them) before
 * anything changes in memory. */
static int op_unregister(request *r)
{
    const msgpack_object *names = wire_map_get(r->root, "names");
    if (!names || names->type != MSGPACK_OBJECT_ARRAY)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'names' must be an array of strings");
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    size_t *idx = NULL, count = 0;
    bool *keep = NULL;
    int rc = s->closed ? fail(&r->err, OPTIMD_E_UNKNOWN_SESSION, "session '%s' was closed meanwhile", s->name)
                       : resolve_names(r, s, &idx, &count);
    /* A sync round in progress holds parameter indexes that removal would shift. */
    if (rc == 0 && count > 0 && s->workers && s->workers->round_pushes)
        rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "session '%s' has a sync round in progress; unregister "
                  "between rounds", s->name);
    if (rc == 0 && count > 0) {
        keep = malloc(s->n_params * sizeof *keep);
        rc = keep ? 0 : fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
        for (size_t i = 0; keep && i < s->n_params; i++) keep[i] = true;
        for (size_t i = 0; keep && i < count; i++) keep[idx[i]] = false;
        param_removal rm;
        if (rc == 0) rc = session_remove_prepare(s, keep, &rm, &r->err);
        if (rc == 0) {
            s->version++;
            if (store_save_some(&r->srv->store, s, keep) != 0) {
                rc = fail(&r->err, OPTIMD_E_STORAGE, "cannot write session %s to the state directory (nothing removed): %s",
                          s->name, strerror(errno));
                s->version--;
                session_remove_cancel(&rm);
            } else {
                session_remove_apply(s, &rm);
            }
        }
    }
    session_unlock(s);
    if (rc == 0) {
        if (count) log_info("session %s: %zu parameters unregistered", s->name, count);
        msgpack_packer *pk = reply_begin(r, 1);
        wire_pack_str(pk, "unregistered");
        msgpack_pack_uint64(pk, count);
    }
    free(keep);
    free(idx);
    session_unref(s);
    return rc;
}

typedef struct op_entry {
    const char *name;
    int (*fn)(request *r);
} op_entry;

/* Admin ops need the daemon's --admin-token, compared in constant time. */
static int check_admin(request *r)
{
    const char *token = NULL;
    size_t len = 0;
    if (wire_get_str(r->root, "admin_token", false, &token, &len, &r->err)) return -1;
    const char *want = r->srv->opts->admin_token;
    if (!want || !*want)
        return fail(&r->err, OPTIMD_E_BAD_TOKEN, "admin ops are off: start optimd with --admin-token "
                    "(or $OPTIMD_ADMIN_TOKEN)");
    size_t want_len = strlen(want);
    unsigned diff = (unsigned)(len ^ want_len);
    for (size_t i = 0; i < want_len; i++) diff |= (unsigned char)(want[i] ^ (token && i < len ? token[i] : 0));
    if (!token || diff) return fail(&r->err, OPTIMD_E_BAD_TOKEN, "wrong or missing admin_token");
    return 0;
}

static void pack_reload_report(request *r, const reload_report *rep)
{
    msgpack_packer *pk = reply_begin(r, 1);
    wire_pack_str(pk, "plugins");
    msgpack_pack_array(pk, (uint32_t)rep->n);
    for (size_t i = 0; i < rep->n; i++) {
        const reload_entry *e = &rep->entries[i];
        msgpack_pack_map(pk, e->loaded ? 4 : 3);
        wire_pack_str(pk, "path");
        wire_pack_str(pk, e->path);
        wire_pack_str(pk, "loaded");
        if (e->loaded) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
        if (e->loaded) {
            wire_pack_str(pk, "id");
            wire_pack_str(pk, e->id);
            wire_pack_str(pk, "version");
            wire_pack_str(pk, e->version);
        } else {
            wire_pack_str(pk, "error");
            wire_pack_str(pk, e->why);
        }
    }
}

static int op_reload(request *r)
{
    if (check_admin(r)) return -1;
    reload_report *rep = calloc(1, sizeof *rep);
    if (!rep) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    plugin_registry_reload(&r->srv->plugins, rep);
    pack_reload_report(r, rep);
    free(rep);
    return 0;
}

static int op_load(request *r)
{
    if (check_admin(r)) return -1;
    const char *path;
    size_t len;
    if (wire_get_str(r->root, "path", true, &path, &len, &r->err)) return -1;
    char buf[4096];
    if (len == 0 || len >= sizeof buf || memchr(path, '\0', len))
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'path' must name a file");
    memcpy(buf, path, len);
    buf[len] = '\0';
    reload_report *rep = calloc(1, sizeof *rep);
    if (!rep) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    int rc = plugin_registry_load_file(&r->srv->plugins, buf, rep);
    if (rc != 0) fail(&r->err, OPTIMD_E_PLUGIN, "%s", rep->n ? rep->entries[0].why : "refused");
    else pack_reload_report(r, rep);
    free(rep);
    return rc ? -1 : 0;
}

/* Admin: closes any session without its token. */
static int op_drop(request *r)
{
    char name[SESSION_NAME_MAX + 1];
    bool given;
    if (check_admin(r) || get_session_name(r, true, name, &given)) return -1;
    session *s = session_table_get(&r->srv->sessions, name, strlen(name));
    if (!s) return fail(&r->err, OPTIMD_E_UNKNOWN_SESSION, "no session '%s'", name);
    log_info("session %s dropped by an admin", name);
    return close_session(r, s);
}

/* Admin: a graceful stop, as SIGTERM: this reply is sent, requests being
 * applied finish, every changed session is snapshotted. */
static void *stop_soon(void *arg)
{
    (void)arg;
    /* NNG calls a send done once the reply is queued for its connection,
     * and closing the socket may drop what is queued: the stop waits a
     * moment so that the reply to the shutdown is written first. */
    struct timespec pause = {0, 500 * 1000 * 1000};
    nanosleep(&pause, NULL);
    kill(getpid(), SIGTERM);
    return NULL;
}

static int op_shutdown(request *r)
{
    if (check_admin(r)) return -1;
    log_info("shutdown requested by an admin");
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int started = pthread_create(&t, &attr, stop_soon, NULL);
    pthread_attr_destroy(&attr);
    if (started != 0) kill(getpid(), SIGTERM);
    reply_begin(r, 0);
    return 0;
}

static int op_switch(request *r)
{
    const msgpack_object *hp;
    if (wire_get_map(r->root, "hparams", false, &hp, &r->err)) return -1;
    const plugin *to = find_plugin(r, "optimizer", OPTIMD_KIND_OPTIMIZER, true);
    if (!to) return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    migrate_report rep;
    const char *from = s->opt->desc->id;
    char from_id[65];
    snprintf(from_id, sizeof from_id, "%s", from);
    int rc = session_migrate_optimizer(s, to, hp, &rep, &r->err);
    if (rc == 0) {
        /* The log's records were applied with the old optimizer. */
        if (store_save_locked(&r->srv->store, s) != 0)
            log_error("session %s: cannot snapshot it after switching optimizer", s->name);
        log_info("session %s: optimizer %s -> %s %s", s->name, from_id, to->desc->id, to->desc->version);
        msgpack_packer *pk = reply_begin(r, 3);
        wire_pack_str(pk, "optimizer");
        wire_pack_str(pk, to->desc->id);
        wire_pack_str(pk, "optimizer_version");
        wire_pack_str(pk, to->desc->version);
        wire_pack_str(pk, "carried");
        msgpack_pack_array(pk, rep.n_carried);
        for (uint32_t i = 0; i < rep.n_carried; i++) wire_pack_str(pk, rep.carried[i]);
    }
    session_unlock(s);
    session_unref(s);
    return rc;
}

static const op_entry ops[] = {
    {"hello", op_hello},       {"plugins", op_plugins},   {"open", op_open},
    {"attach", op_info},       {"info", op_info},         {"hparams", op_hparams},
    {"set_hparams", op_set_hparams}, {"close", op_close}, {"sessions", op_sessions},
    {"register", op_register}, {"step", op_step},         {"pull", op_pull},
    {"export", op_export},     {"import", op_import},     {"state", op_state},
    {"observe", op_observe},   {"reload", op_reload},     {"load", op_load},
    {"switch", op_switch},     {"drop", op_drop},         {"shutdown", op_shutdown},
    {"join", op_join},         {"leave", op_leave},       {"unregister", op_unregister},
    {"shm_attach", op_shm_attach}, {"shm_step", op_shm_step}, {"shm_detach", op_shm_detach},
};

static int dispatch(request *r, const msgpack_object *root)
{
    if (root->type != MSGPACK_OBJECT_MAP)
        return fail(&r->err, OPTIMD_E_MALFORMED, "a request must be a msgpack map");
    r->root = root;
    uint64_t id = 0;
    if (wire_get_uint(root, "id", false, &id, &r->err)) return -1;
    r->id = id;
    uint64_t version;
    if (wire_get_uint(root, "v", true, &version, &r->err)) return -1;
    if (version != OPTIMD_PROTOCOL_VERSION)
        return fail(&r->err, OPTIMD_E_VERSION, "protocol version %llu is not supported (this daemon speaks %d)",
                    (unsigned long long)version, OPTIMD_PROTOCOL_VERSION);
    const char *op;
    size_t op_len;
    if (wire_get_str(root, "op", true, &op, &op_len, &r->err)) return -1;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strlen(ops[i].name) == op_len && memcmp(ops[i].name, op, op_len) == 0) {
            r->op = ops[i].name;
            return ops[i].fn(r);
        }
    return fail(&r->err, OPTIMD_E_UNKNOWN_OP, "unknown op '%.*s'", (int)(op_len > 32 ? 32 : op_len), op);
}

nng_msg *server_refuse(server *srv, nng_msg *request_msg, const char *message)
{
    (void)srv;
    nng_msg *reply;
    if (nng_msg_alloc(&reply, 0) != 0) {
        nng_msg_free(request_msg);
        return NULL;
    }
    /* Only the id is read, so the client can match the refusal. */
    uint64_t id = 0;
    request_error err = {0};
    size_t len = nng_msg_len(request_msg), off = 0;
    if (wire_prescan(nng_msg_body(request_msg), len, &err) == 0) {
        msgpack_unpacked root;
        msgpack_unpacked_init(&root);
        if (msgpack_unpack_next(&root, nng_msg_body(request_msg), len, &off) == MSGPACK_UNPACK_SUCCESS &&
            root.data.type == MSGPACK_OBJECT_MAP && wire_get_uint(&root.data, "id", false, &id, &err) != 0)
            id = 0;
        msgpack_unpacked_destroy(&root);
    }
    wire_writer w;
    wire_writer_init(&w, reply);
    memset(&err, 0, sizeof err);
    fail(&err, OPTIMD_E_LIMIT, "%s", message);
    write_error(&w, id, &err);
    nng_msg_free(request_msg);
    return reply;
}

nng_msg *server_handle(server *srv, nng_msg *request_msg, request_ticket *ticket)
{
    int64_t started = metrics_now_ns();
    nng_msg *reply;
    if (nng_msg_alloc(&reply, 0) != 0) {
        nng_msg_free(request_msg);
        return NULL;
    }
    wire_writer w;
    wire_writer_init(&w, reply);
    request r = {.srv = srv, .w = &w, .raw = nng_msg_body(request_msg), .raw_len = nng_msg_len(request_msg),
                 .ticket = ticket, .pipe = nng_msg_get_pipe(request_msg)};
    ticket->park = false;
    ticket->deadline = 0;
    size_t len = nng_msg_len(request_msg);
    if (len > srv->opts->max_message) {
        fail(&r.err, OPTIMD_E_TOO_LARGE, "request of %zu bytes exceeds the limit of %llu", len,
             (unsigned long long)srv->opts->max_message);
    } else if (wire_prescan(nng_msg_body(request_msg), len, &r.err) == 0) {
        msgpack_unpacked root;
        msgpack_unpacked_init(&root);
        size_t off = 0;
        msgpack_unpack_return ret = msgpack_unpack_next(&root, nng_msg_body(request_msg), len, &off);
        if (ret != MSGPACK_UNPACK_SUCCESS)
            fail(&r.err, OPTIMD_E_MALFORMED, "the message is not valid msgpack");
        else if (off != len)
            fail(&r.err, OPTIMD_E_MALFORMED, "%zu bytes follow the request map", len - off);
        else
            dispatch(&r, &root.data);
        msgpack_unpacked_destroy(&root);
    }
    for (size_t i = 0; i < r.n_held; i++) plugin_unref(r.held[i]);
    free(r.held);
    if (ticket->park && !r.err.code) {
        /* Parked: the message stays with the transport, the reply comes later. */
        nng_msg_free(reply);
        return NULL;
    }
    ticket->park = false;
    if (!r.err.code && w.failed) fail(&r.err, OPTIMD_E_NOMEM, "out of memory writing the reply");
    if (r.err.code) {
        nng_msg_clear(reply);
        w.failed = 0;
        write_error(&w, r.id, &r.err);
    }
    metrics_record(r.op, r.err.code, metrics_now_ns() - started, len, nng_msg_len(reply));
    nng_msg_free(request_msg);
    return reply;
}
