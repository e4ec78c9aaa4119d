/* What every op handler shares: the reply envelope and error replies, the
 * session a request names, the write-ahead hook, memory limits, and
 * packing parameters. */
#include "request.h"

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

/* A looked-up plugin kept alive until the request ends. */
const plugin *request_hold(request *r, plugin *p)
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
msgpack_packer *reply_begin(request *r, uint32_t n_pairs)
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

void write_error(wire_writer *w, uint64_t id, const request_error *err)
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
session *request_session(request *r)
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
store_change change_of(request *r)
{
    return (store_change){.st = &r->srv->store, .request = r->raw, .len = r->raw_len};
}

const char *const durability_names[] = {"none", "interval", "always"};

const char *kind_name(uint32_t kind)
{
    return kind == OPTIMD_KIND_OPTIMIZER ? "optimizer" : "scheduler";
}

/* --max-session-bytes and --max-total-bytes for parameters that commit
 * `adding` bytes more. */
int check_memory_adding(request *r, session *s, uint64_t adding)
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
int check_memory(request *r, session *s, const msgpack_object *params)
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

int check_tensor_count(request *r, const msgpack_object *map, const char *what)
{
    if (map->via.map.size > r->srv->opts->max_tensors)
        return fail(&r->err, OPTIMD_E_LIMIT, "%u tensors in '%s'; --max-tensors is %u", map->via.map.size, what,
                    r->srv->opts->max_tensors);
    return 0;
}

void pack_param(msgpack_packer *pk, const session *s, size_t i)
{
    const param *p = &s->params[i];
    wire_pack_str(pk, s->names[i]);
    wire_pack_tensor(pk, p->dtype, p->ndim, p->shape, p->data, p->nbytes);
}

/* A parameter's rows named by a (checked) row-sparse gradient's "rows":
 * {rows: [sorted, unique], values: tensor [n, ...]}. */
void pack_param_rows(msgpack_packer *pk, const session *s, size_t i, const msgpack_object *rows_obj)
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

/* The parameters a request's optional "names" array selects (default: all,
 * in registration order), as indices; the caller holds the session lock and
 * frees *out. A name given twice is refused: a reply map must not repeat a
 * key. */
int resolve_names(request *r, session *s, size_t **out, size_t *count)
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
