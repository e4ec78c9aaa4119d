/* Sessions with workers (protocol.md, **Workers**): join and leave, the
 * `workers` map of info, join and leave, what a worker's step reply adds,
 * and how long a worker's push may wait for the others. */
#include "client_internal.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* The daemon's timeout_ms when open gave none (protocol.md, `open`). */
#define WORKERS_DEFAULT_TIMEOUT_MS 60000u

void optimd_worker_result_init(optimd_worker_result *r)
{
    if (!r) return;
    memset(r, 0, sizeof *r);
    r->struct_size = sizeof *r;
}

void workers_info_free(optimd_workers_info *w)
{
    if (!w) return;
    free(w->mode);
    free(w->reduce);
    free(w->on_timeout);
    for (size_t i = 0; i < w->n_members; i++) free(w->members[i].name);
    free(w->members);
    free(w);
}

static int bad(optimd_client *c, const char *op, const char *what)
{
    return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL, "reply to '%s': %s", op,
                       what);
}

/* An optional uint key of `map` that fits 32 bits into *out (0 when
 * absent); false when present and not such a uint. */
static bool opt_u32(const msgpack_object *map, const char *key,
                    uint32_t *out)
{
    const msgpack_object *o = wire_map_get(map, key);
    uint64_t v = 0;
    *out = 0;
    if (!o) return true;
    if (!wire_as_uint(o, &v) || v > UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

/* An optional str key copied into *out (NULL when absent). */
static int opt_str(optimd_client *c, const char *op,
                   const msgpack_object *map, const char *key, char **out)
{
    const msgpack_object *o = wire_map_get(map, key);
    *out = NULL;
    if (!o) return 0;
    bool oom = false;
    if ((*out = wire_strdup(o, &oom))) return 0;
    if (oom) return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                       "reply to '%s': workers.%s is not a str", op, key);
}

/* A required uint key of `map` into *out; false when absent or not one. */
static bool get_u64(const msgpack_object *map, const char *key,
                    uint64_t *out)
{
    const msgpack_object *o = wire_map_get(map, key);
    return o && wire_as_uint(o, out);
}

static int read_member(optimd_client *c, const char *op,
                       const msgpack_object *e, optimd_worker_info *m)
{
    if (e->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(e))
        return bad(c, op, "a member of workers.members is not a map");
    const msgpack_object *name = wire_map_get(e, "name");
    const msgpack_object *waiting = wire_map_get(e, "waiting");
    uint64_t rank;
    if (!get_u64(e, "rank", &rank) || rank > UINT32_MAX ||
        !get_u64(e, "pushes", &m->pushes) ||
        !get_u64(e, "staleness", &m->staleness) || !waiting ||
        waiting->type != MSGPACK_OBJECT_BOOLEAN)
        return bad(c, op, "a member of workers.members lacks a uint rank, "
                          "pushes or staleness, or a bool waiting");
    m->rank = (uint32_t)rank;
    m->waiting = waiting->via.boolean;
    bool oom = false;
    if (!name || !(m->name = wire_strdup(name, &oom)))
        return oom ? client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory")
                   : bad(c, op, "a member of workers.members has no str "
                                "name");
    return 0;
}

int read_workers(optimd_client *c, const char *op, const msgpack_object *o,
                 optimd_workers_info **out)
{
    *out = NULL;
    if (!o || o->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(o))
        return bad(c, op, "'workers' is not a map");
    optimd_workers_info *w = calloc(1, sizeof *w);
    if (!w) return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    const msgpack_object *members = wire_map_get(o, "members");
    int rv;
    if ((rv = opt_str(c, op, o, "mode", &w->mode)) ||
        (rv = opt_str(c, op, o, "reduce", &w->reduce)) ||
        (rv = opt_str(c, op, o, "on_timeout", &w->on_timeout)))
        goto fail;
    if (!w->mode || !opt_u32(o, "count", &w->count) ||
        !opt_u32(o, "timeout_ms", &w->timeout_ms) ||
        !opt_u32(o, "max_staleness", &w->max_staleness) ||
        !opt_u32(o, "round_pushes", &w->round_pushes) || !members ||
        members->type != MSGPACK_OBJECT_ARRAY) {
        rv = bad(c, op, "'workers' lacks a str mode or an array of members, "
                        "or a setting is not a 32-bit uint");
        goto fail;
    }
    uint32_t n = members->via.array.size;
    if (!(w->members = calloc(n ? n : 1, sizeof *w->members))) {
        rv = client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < n; i++) {
        w->n_members = i + 1;
        if ((rv = read_member(c, op, &members->via.array.ptr[i],
                              &w->members[i])))
            goto fail;
    }
    *out = w;
    return 0;
fail:
    workers_info_free(w);
    return rv;
}

/* How long a push may wait under these settings: sync rounds and bounded
 * workers ahead of the slowest wait up to timeout_ms, async ones never; a
 * mode this library does not know, as long as the timeout it has. */
static uint32_t wait_of(const char *mode, uint32_t timeout_ms)
{
    if (strcmp(mode, "async") == 0) return 0;
    if (timeout_ms) return timeout_ms;
    if (strcmp(mode, "sync") == 0 || strcmp(mode, "bounded") == 0)
        return WORKERS_DEFAULT_TIMEOUT_MS;
    return 0;
}

static int learn(optimd_client *c, const char *session, bool known,
                 uint32_t wait_ms)
{
    client_seq *e;
    int rv = client_seq_get(c, session, &e);
    if (rv) return rv;
    e->wait_known = known;
    e->wait_ms = wait_ms;
    return 0;
}

int workers_learn(optimd_client *c, const char *session,
                  const msgpack_object *workers)
{
    if (!workers) return learn(c, session, true, 0);
    const msgpack_object *mode = wire_map_get(workers, "mode");
    char buf[32];
    uint32_t timeout_ms = 0;
    /* A map this library cannot read leaves the wait to be found out by
     * the next push (read_workers reports it where the caller asked). */
    bool known = mode && wire_copy_str(mode, buf, sizeof buf) &&
                 opt_u32(workers, "timeout_ms", &timeout_ms);
    return learn(c, session, known, known ? wait_of(buf, timeout_ms) : 0);
}

int workers_learn_open(optimd_client *c, const char *session,
                       const optimd_open_options *o)
{
    return learn(c, session, true,
                 o->workers_mode
                     ? wait_of(o->workers_mode, o->workers_timeout_ms)
                     : 0);
}

int workers_wait_ms(optimd_client *c, const optimd_session *s,
                    uint32_t given, uint32_t *out)
{
    *out = given;
    if (given) return 0;
    client_seq *e;
    int rv = client_seq_get(c, s->name, &e);
    if (rv) return rv;
    if (!e->wait_known) {
        /* A push sent with the plain timeout could be given up on while
         * it waits; one `info` first is cheaper than that. */
        req_str a = {"info", NULL, NULL};
        client_call call;
        req_str_call(s, &a, &call);
        client_reply rep;
        if ((rv = client_call_run(c, &call, &rep))) return rv;
        rv = workers_learn(c, s->name, wire_map_get(rep.root, "workers"));
        client_reply_free(&rep);
        if (rv) return rv;
        if ((rv = client_seq_get(c, s->name, &e))) return rv;
    }
    *out = e->wait_ms;
    return 0;
}

int read_worker_result(optimd_client *c, const client_reply *rep,
                       optimd_worker_result *out)
{
    optimd_worker_result r;
    memset(&r, 0, sizeof r);
    const msgpack_object *waited = wire_map_get(rep->root, "waited");
    int rv;
    if ((rv = reply_uint(c, rep, "pushes", &r.pushes)) ||
        (rv = reply_uint(c, rep, "staleness", &r.staleness)))
        return rv;
    /* combined (sync), lead and waited (bounded) come with their mode. */
    if (!opt_u32(rep->root, "combined", &r.combined) ||
        (wire_map_get(rep->root, "lead") &&
         !wire_as_uint(wire_map_get(rep->root, "lead"), &r.lead)) ||
        (waited && waited->type != MSGPACK_OBJECT_BOOLEAN))
        return bad(c, rep->op, "'combined' or 'lead' is not a uint, or "
                               "'waited' not a bool");
    r.waited = waited && waited->via.boolean;
    size_t size = out->struct_size < sizeof r ? out->struct_size : sizeof r;
    r.struct_size = out->struct_size;
    memcpy(out, &r, size);
    return 0;
}

/* join and leave: `worker`, and the same reply but for `rank`. */
typedef struct req_member {
    const char *op;
    const char *worker;
} req_member;

static void pack_member(msgpack_packer *pk, const void *arg)
{
    const req_member *a = arg;
    wire_pack_str(pk, "worker");
    wire_pack_str(pk, a->worker);
}

static int membership(optimd_client *c, const optimd_session *s,
                      const char *op, const char *worker, uint32_t *rank)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    if (!worker || !*worker || strlen(worker) > CLIENT_WORKER_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "a worker name is 1 to %d bytes",
                           CLIENT_WORKER_MAX);
    req_member a = {op, worker};
    /* Joining again changes nothing, and a repeated leave that meets
     * UNKNOWN_WORKER is told apart below: both may be re-sent. */
    client_call call = {.op = op, .s = s, .n_keys = 1,
                        .size_hint = strlen(worker) + 16,
                        .pack = pack_member, .arg = &a,
                        .retry = CLIENT_RETRY_ALWAYS};
    client_reply rep;
    rv = client_call_run(c, &call, &rep);
    bool leaving = strcmp(op, "leave") == 0;
    if (rv == OPTIMD_E_UNKNOWN_WORKER && leaving && call.ambiguous) {
        /* The attempt whose reply was lost removed it. */
        c->err[0] = '\0';
        return 0;
    }
    if (rv) return rv;
    uint64_t r = 0;
    if (!leaving && !(rv = reply_uint(c, &rep, "rank", &r)) &&
        r > UINT32_MAX)
        rv = bad(c, op, "'rank' is beyond 32 bits");
    if (!rv) rv = workers_learn(c, s->name, wire_map_get(rep.root, "workers"));
    client_reply_free(&rep);
    if (!rv && rank) *rank = (uint32_t)r;
    return rv;
}

int optimd_client_join(optimd_client *c, const optimd_session *s,
                       const char *worker, uint32_t *rank)
{
    return membership(c, s, "join", worker, rank);
}

int optimd_client_leave(optimd_client *c, const optimd_session *s,
                        const char *worker)
{
    return membership(c, s, "leave", worker, NULL);
}
