/* Operations about the daemon as a whole: hello, plugins, sessions. */
#include "client_internal.h"

#include <stdlib.h>
#include <string.h>

/* Copies a str that may be longer than the fixed field meant for it; a
 * long version string is not a protocol error, so it is cut short. */
static bool copy_str_cut(const msgpack_object *o, char *buf, size_t cap)
{
    if (!o || o->type != MSGPACK_OBJECT_STR) return false;
    size_t n = o->via.str.size < cap - 1 ? o->via.str.size : cap - 1;
    memcpy(buf, o->via.str.ptr, n);
    buf[n] = '\0';
    return memchr(buf, '\0', n) == NULL;
}

static void pack_str_key(msgpack_packer *pk, const void *arg)
{
    const req_str *a = arg;
    if (!a->value) return;
    wire_pack_str(pk, a->key);
    wire_pack_str(pk, a->value);
}

void req_str_call(const optimd_session *s, const req_str *a,
                  client_call *call)
{
    /* hello, plugins, sessions, attach, info and hparams change nothing;
     * close and export are safe to repeat too (see optimd_client_close). */
    *call = (client_call){.op = a->op, .s = s, .n_keys = a->value ? 1 : 0,
                          .size_hint = a->value ? strlen(a->value) + 16 : 0,
                          .pack = pack_str_key, .arg = a,
                          .retry = CLIENT_RETRY_ALWAYS};
}

int read_hello(optimd_client *c, const client_reply *rep,
               optimd_server_info *out)
{
    optimd_server_info info;
    memset(&info, 0, sizeof info);
    const msgpack_object *abi;
    uint64_t protocol;
    int rv;
    if (!copy_str_cut(wire_map_get(rep->root, "server"), info.server,
                      sizeof info.server) ||
        !copy_str_cut(wire_map_get(rep->root, "version"), info.version,
                      sizeof info.version))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'hello': 'server' or 'version' is "
                           "missing or not a str");
    if ((rv = reply_uint(c, rep, "protocol", &protocol)) ||
        (rv = reply_uint(c, rep, "max_message", &info.max_message)) ||
        (rv = reply_get(c, rep, "abi", MSGPACK_OBJECT_ARRAY, &abi)))
        return rv;
    if (abi->via.array.size != 2 ||
        !wire_as_int(&abi->via.array.ptr[0], &info.abi_major) ||
        !wire_as_int(&abi->via.array.ptr[1], &info.abi_minor))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'hello': 'abi' is not [major, minor]");
    if (protocol > INT64_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'hello': 'protocol' is out of range");
    info.protocol = (int64_t)protocol;
    *out = info;
    return 0;
}

int optimd_client_hello(optimd_client *c, optimd_server_info *out)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!out) return client_fail(c, OPTIMD_CLIENT_E_ARG, "out is NULL");
    req_str a = {"hello", "client", "optimd C client"};
    client_call call;
    req_str_call(NULL, &a, &call);
    client_reply rep;
    int rv = client_call_run(c, &call, &rep);
    if (rv) return rv;
    rv = read_hello(c, &rep, out);
    client_reply_free(&rep);
    return rv;
}

void optimd_plugin_list_free(optimd_plugin_info *list, size_t count)
{
    if (!list) return;
    for (size_t i = 0; i < count; i++) {
        for (size_t k = 0; k < list[i].n_hparams; k++) {
            free(list[i].hparams[k].key);
            free(list[i].hparams[k].doc);
        }
        free(list[i].hparams);
        for (size_t k = 0; k < list[i].n_slots; k++) {
            free(list[i].slots[k].key);
            free(list[i].slots[k].dtype);
            free(list[i].slots[k].shape);
            free(list[i].slots[k].enabled_by);
            free(list[i].slots[k].doc);
        }
        free(list[i].slots);
        for (size_t k = 0; k < list[i].n_dtypes; k++) free(list[i].dtypes[k]);
        free(list[i].dtypes);
        free(list[i].id);
        free(list[i].kind);
        free(list[i].version);
        free(list[i].description);
    }
    free(list);
}

/* Reads str `key` of map `o` into a fresh string. */
static int dup_key(optimd_client *c, const char *op, const msgpack_object *o,
                   const char *key, size_t index, char **out)
{
    const msgpack_object *v = wire_map_get(o, key);
    bool nomem = false;
    *out = v ? wire_strdup(v, &nomem) : NULL;
    if (*out) return 0;
    if (nomem) return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                       "reply to '%s': entry %zu: '%s' is missing or not a "
                       "str", op, index, key);
}

/* The reply array `key`, whose entries must all be maps with str keys. */
static int reply_map_array(optimd_client *c, const client_reply *rep,
                           const char *key, const msgpack_object **out)
{
    int rv = reply_get(c, rep, key, MSGPACK_OBJECT_ARRAY, out);
    if (rv) return rv;
    for (uint32_t i = 0; i < (*out)->via.array.size; i++) {
        const msgpack_object *e = &(*out)->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(e))
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s': entry %u of '%s' is not a map",
                               rep->op, (unsigned)i, key);
    }
    return 0;
}

static bool get_bool(const msgpack_object *map, const char *key,
                     int32_t *out)
{
    const msgpack_object *o = wire_map_get(map, key);
    if (!o || o->type != MSGPACK_OBJECT_BOOLEAN) return false;
    *out = o->via.boolean;
    return true;
}

static bool get_float(const msgpack_object *map, const char *key,
                      double *out)
{
    const msgpack_object *o = wire_map_get(map, key);
    return o && wire_as_float(o, out);
}

/* Reads the default of a hyperparameter whose type is known: nil exactly
 * when it is required, otherwise a value of its type. */
static bool read_default(const msgpack_object *o, optimd_hparam_info *h)
{
    if (!o) return false;
    if (h->required) return o->type == MSGPACK_OBJECT_NIL;
    h->def.key = h->key;
    h->def.type = h->type;
    switch (h->type) {
    case OPTIMD_HVALUE_BOOL:
        h->def.i = o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean;
        return o->type == MSGPACK_OBJECT_BOOLEAN;
    case OPTIMD_HVALUE_INT: return wire_as_int(o, &h->def.i);
    default: return wire_as_float(o, &h->def.f);
    }
}

static int read_hparam(optimd_client *c, const msgpack_object *e,
                       const char *plugin, size_t k, optimd_hparam_info *h)
{
    if (e->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(e))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'plugins': '%s' hparams[%zu] is not a "
                           "map", plugin, k);
    int rv;
    if ((rv = dup_key(c, "plugins", e, "key", k, &h->key)) ||
        (rv = dup_key(c, "plugins", e, "doc", k, &h->doc)))
        return rv;
    const msgpack_object *type = wire_map_get(e, "type");
    h->type = !type ? 0
              : wire_is_str(type, "float") ? OPTIMD_HVALUE_FLOAT
              : wire_is_str(type, "int")   ? OPTIMD_HVALUE_INT
              : wire_is_str(type, "bool")  ? OPTIMD_HVALUE_BOOL
                                           : 0;
    if (!h->type || !get_bool(e, "required", &h->required) ||
        !get_bool(e, "mutable", &h->is_mutable) ||
        !get_bool(e, "min_exclusive", &h->min_exclusive) ||
        !get_bool(e, "max_exclusive", &h->max_exclusive) ||
        !get_float(e, "min", &h->min) || !get_float(e, "max", &h->max) ||
        !read_default(wire_map_get(e, "default"), h))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'plugins': '%s' hyperparameter '%s': "
                           "type, required, mutable, min, max, "
                           "min_exclusive, max_exclusive or default is "
                           "missing or of the wrong type", plugin, h->key);
    return 0;
}

static int read_slot(optimd_client *c, const msgpack_object *e,
                     const char *plugin, size_t k, optimd_slot_info *slot)
{
    if (e->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(e))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'plugins': '%s' slots[%zu] is not a "
                           "map", plugin, k);
    int rv;
    const msgpack_object *by = wire_map_get(e, "enabled_by");
    if ((rv = dup_key(c, "plugins", e, "key", k, &slot->key)) ||
        (rv = dup_key(c, "plugins", e, "dtype", k, &slot->dtype)) ||
        (rv = dup_key(c, "plugins", e, "shape", k, &slot->shape)) ||
        (rv = dup_key(c, "plugins", e, "doc", k, &slot->doc)))
        return rv;
    if (!by)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'plugins': '%s' slot '%s' lacks "
                           "'enabled_by'", plugin, slot->key);
    if (by->type != MSGPACK_OBJECT_NIL &&
        (rv = dup_key(c, "plugins", e, "enabled_by", k, &slot->enabled_by)))
        return rv;
    return 0;
}

static int read_plugin(optimd_client *c, const msgpack_object *e, size_t i,
                       optimd_plugin_info *p)
{
    int rv;
    if ((rv = dup_key(c, "plugins", e, "id", i, &p->id)) ||
        (rv = dup_key(c, "plugins", e, "kind", i, &p->kind)) ||
        (rv = dup_key(c, "plugins", e, "version", i, &p->version)) ||
        (rv = dup_key(c, "plugins", e, "description", i, &p->description)))
        return rv;
    if (strcmp(p->kind, "optimizer") && strcmp(p->kind, "scheduler"))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'plugins': '%s' has kind '%s', neither "
                           "optimizer nor scheduler", p->id, p->kind);
    const msgpack_object *hp = wire_map_get(e, "hparams");
    if (!hp || hp->type != MSGPACK_OBJECT_ARRAY)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'plugins': '%s' has no 'hparams' array",
                           p->id);
    size_t n = hp->via.array.size;
    p->hparams = calloc(n ? n : 1, sizeof *p->hparams);
    if (!p->hparams)
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    for (size_t k = 0; k < n; k++) {
        p->n_hparams = k + 1;
        if ((rv = read_hparam(c, &hp->via.array.ptr[k], p->id, k,
                              &p->hparams[k])))
            return rv;
    }
    /* Schedulers may leave slots and dtypes out. */
    const msgpack_object *slots = wire_map_get(e, "slots");
    const msgpack_object *dtypes = wire_map_get(e, "dtypes");
    if ((slots && slots->type != MSGPACK_OBJECT_ARRAY) ||
        (dtypes && dtypes->type != MSGPACK_OBJECT_ARRAY))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'plugins': '%s': 'slots' or 'dtypes' "
                           "is not an array", p->id);
    if (slots) {
        n = slots->via.array.size;
        if (!(p->slots = calloc(n ? n : 1, sizeof *p->slots)))
            return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
        for (size_t k = 0; k < n; k++) {
            p->n_slots = k + 1;
            if ((rv = read_slot(c, &slots->via.array.ptr[k], p->id, k,
                                &p->slots[k])))
                return rv;
        }
    }
    if (dtypes) {
        n = dtypes->via.array.size;
        if (!(p->dtypes = calloc(n ? n : 1, sizeof *p->dtypes)))
            return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
        for (size_t k = 0; k < n; k++) {
            bool oom;
            p->n_dtypes = k + 1;
            if (!(p->dtypes[k] = wire_strdup(&dtypes->via.array.ptr[k],
                                             &oom)))
                return oom ? client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                                         "out of memory")
                           : client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                                         "reply to 'plugins': '%s' "
                                         "dtypes[%zu] is not a str", p->id,
                                         k);
        }
    }
    /* Absent from daemons before it existed: not sliced. */
    const msgpack_object *sliced = wire_map_get(e, "sliced");
    if (sliced && sliced->type != MSGPACK_OBJECT_BOOLEAN)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'plugins': '%s': 'sliced' is not a bool",
                           p->id);
    p->sliced = sliced && sliced->via.boolean;
    return 0;
}

/* Reads one entry of a listing reply into `out` (an element of the array
 * read_list allocates). */
typedef int (*read_entry_fn)(optimd_client *c, const msgpack_object *e,
                             size_t i, void *out);
typedef void (*free_list_fn)(void *list, size_t count);

/* Reads the array the reply holds under its op's name into a new array of
 * `elem_size` entries. */
static int read_list(optimd_client *c, const client_reply *rep,
                     size_t elem_size, read_entry_fn read_entry,
                     free_list_fn free_list, void **out, size_t *count)
{
    const msgpack_object *arr;
    int rv = reply_map_array(c, rep, rep->op, &arr);
    if (rv) return rv;
    size_t n = arr->via.array.size;
    char *list = calloc(n ? n : 1, elem_size);
    if (!list) return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n && !rv; i++)
        rv = read_entry(c, &arr->via.array.ptr[i], i, list + i * elem_size);
    if (rv) {
        free_list(list, n);
        return rv;
    }
    *out = list;
    *count = n;
    return 0;
}

/* Sends `op` (no arguments) and reads its listing. */
static int fetch_list(optimd_client *c, const char *op,
                      int (*read)(optimd_client *, const client_reply *,
                                  void **, size_t *),
                      void **out, size_t *count)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!out || !count)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "out or count is NULL");
    *out = NULL;
    *count = 0;
    req_str a = {op, NULL, NULL};
    client_call call;
    req_str_call(NULL, &a, &call);
    client_reply rep;
    int rv = client_call_run(c, &call, &rep);
    if (rv) return rv;
    rv = read(c, &rep, out, count);
    client_reply_free(&rep);
    return rv;
}

static int read_plugin_entry(optimd_client *c, const msgpack_object *e,
                             size_t i, void *out)
{
    return read_plugin(c, e, i, out);
}

static void free_plugin_list(void *list, size_t count)
{
    optimd_plugin_list_free(list, count);
}

int read_plugins(optimd_client *c, const client_reply *rep,
                 optimd_plugin_info **out, size_t *count)
{
    void *list = NULL;
    int rv = read_list(c, rep, sizeof(**out), read_plugin_entry,
                       free_plugin_list, &list, count);
    if (!rv) *out = list;
    return rv;
}

static int read_plugins_v(optimd_client *c, const client_reply *rep,
                          void **out, size_t *count)
{
    return read_plugins(c, rep, (optimd_plugin_info **)out, count);
}

int optimd_client_plugins(optimd_client *c, optimd_plugin_info **out,
                          size_t *count)
{
    return fetch_list(c, "plugins", read_plugins_v, (void **)out, count);
}

void optimd_session_list_free(optimd_session_summary *list, size_t count)
{
    if (!list) return;
    for (size_t i = 0; i < count; i++) {
        free(list[i].name);
        free(list[i].optimizer);
        free(list[i].scheduler);
    }
    free(list);
}

static int read_summary(optimd_client *c, const msgpack_object *e, size_t i,
                        optimd_session_summary *s)
{
    int rv;
    if ((rv = dup_key(c, "sessions", e, "session", i, &s->name)) ||
        (rv = dup_key(c, "sessions", e, "optimizer", i, &s->optimizer)))
        return rv;
    const msgpack_object *sched = wire_map_get(e, "scheduler");
    if (sched && sched->type != MSGPACK_OBJECT_NIL &&
        (rv = dup_key(c, "sessions", e, "scheduler", i, &s->scheduler)))
        return rv;
    const msgpack_object *params = wire_map_get(e, "params");
    const msgpack_object *steps = wire_map_get(e, "steps");
    if (!sched || !params || !steps || !wire_as_uint(params, &s->params) ||
        !wire_as_uint(steps, &s->steps))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'sessions': entry %zu: 'scheduler', "
                           "'params' or 'steps' is missing or of the wrong "
                           "type", i);
    return 0;
}

static int read_summary_entry(optimd_client *c, const msgpack_object *e,
                              size_t i, void *out)
{
    return read_summary(c, e, i, out);
}

static void free_summary_list(void *list, size_t count)
{
    optimd_session_list_free(list, count);
}

int read_sessions(optimd_client *c, const client_reply *rep,
                  optimd_session_summary **out, size_t *count)
{
    void *list = NULL;
    int rv = read_list(c, rep, sizeof(**out), read_summary_entry,
                       free_summary_list, &list, count);
    if (!rv) *out = list;
    return rv;
}

static int read_sessions_v(optimd_client *c, const client_reply *rep,
                           void **out, size_t *count)
{
    return read_sessions(c, rep, (optimd_session_summary **)out, count);
}

int optimd_client_sessions(optimd_client *c, optimd_session_summary **out,
                           size_t *count)
{
    return fetch_list(c, "sessions", read_sessions_v, (void **)out, count);
}
