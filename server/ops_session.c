/* Ops on a session's life and settings: open, attach/info, hparams,
 * set_hparams, close, sessions, register, observe, switch. */
#include "request.h"

#include "connections.h"
#include "hparams.h"
#include "log.h"
#include "metrics.h"
#include "session_transfer.h"
#include "shm_attachment.h"
#include "sliced_step.h"
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

bool valid_session_name(const char *s, size_t len)
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

const char *const name_rule =
    "session names are 1 to 128 characters of A-Z a-z 0-9 _ . - not starting with a dot";

/* The request's optional "session" name, checked, NUL-terminated in `out`.
 * *given says whether the request had one. */
int get_session_name(request *r, bool required, char out[SESSION_NAME_MAX + 1], bool *given)
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
int get_durability(request *r, int *out)
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
int admit_session(request *r, session *s, char name[SESSION_NAME_MAX + 1],
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

int op_open(request *r)
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

int op_info(request *r)
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
    msgpack_packer *pk = reply_begin(r, (client ? 14 : 13) + (s->workers != NULL) + pack_composite(NULL, &s->groups[0]) +
                                            sliced_step_pack_info(NULL, s));
    sliced_step_pack_info(pk, s);
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

int op_hparams(request *r)
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

int op_set_hparams(request *r)
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
int close_session(request *r, session *s)
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

int op_close(request *r)
{
    session *s = request_session(r);
    return s ? close_session(r, s) : -1;
}

int op_sessions(request *r)
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

int op_register(request *r)
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

int op_observe(request *r)
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

int op_switch(request *r)
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
