/* Changing what runs: switch, and the admin ops reload, load, drop and
 * shutdown (protocol.md). */
#include "client_internal.h"

#include <stdlib.h>
#include <string.h>

/* A str a caller can hold as a C string: no NUL inside. */
static bool str_ok(const msgpack_object *o)
{
    return o && o->type == MSGPACK_OBJECT_STR &&
           (o->via.str.size == 0 ||
            !memchr(o->via.str.ptr, '\0', o->via.str.size));
}

/* Copies a str checked by str_ok to *w, NUL-terminated, and moves *w past
 * it. Results are one block (pointers first, then these strings), so a
 * caller frees one thing whatever the reply held. */
static const char *put_str(char **w, const msgpack_object *o)
{
    char *s = *w;
    if (o->via.str.size) memcpy(s, o->via.str.ptr, o->via.str.size);
    s[o->via.str.size] = '\0';
    *w += o->via.str.size + 1;
    return s;
}

static void pack_switch(msgpack_packer *pk, const void *arg)
{
    const req_switch *a = arg;
    wire_pack_str(pk, "optimizer");
    wire_pack_str(pk, a->optimizer);
    if (a->hp) {
        wire_pack_str(pk, "hparams");
        wire_pack_hvalues(pk, a->hp, a->n);
    }
}

void req_switch_call(const optimd_session *s, const req_switch *a,
                     client_call *call)
{
    *call = (client_call){.op = "switch", .s = s,
                          .n_keys = 1 + (a->hp ? 1 : 0),
                          .size_hint = strlen(a->optimizer) + 64 * (a->n + 1),
                          .pack = pack_switch, .arg = a,
                          /* A repeat of a switch that happened would be a
                           * switch to the same optimizer: another report,
                           * and `hparams` laid again over later changes
                           * (optimd_client_switch). */
                          .retry = CLIENT_RETRY_UNSENT};
}

void optimd_switch_result_free(optimd_switch_result *r)
{
    if (!r) return;
    free(r->mem);
    memset(r, 0, sizeof *r);
}

int read_switch(optimd_client *c, const client_reply *rep,
                optimd_switch_result *out)
{
    const msgpack_object *opt = wire_map_get(rep->root, "optimizer");
    const msgpack_object *ver = wire_map_get(rep->root, "optimizer_version");
    const msgpack_object *carried;
    if (!str_ok(opt) || opt->via.str.size == 0 || !str_ok(ver))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'switch': 'optimizer' or "
                           "'optimizer_version' is missing or not a str");
    int rv = reply_get(c, rep, "carried", MSGPACK_OBJECT_ARRAY, &carried);
    if (rv) return rv;
    size_t n = carried->via.array.size;
    size_t size = (n + 1) * sizeof(char *) + opt->via.str.size +
                  ver->via.str.size + 2;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *k = &carried->via.array.ptr[i];
        if (!str_ok(k))
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to 'switch': carried[%zu] is not a "
                               "str", i);
        size += k->via.str.size + 1;
    }
    char *block = malloc(size);
    if (!block) return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    const char **keys = (const char **)(void *)block;
    char *w = block + (n + 1) * sizeof(char *);
    out->optimizer = put_str(&w, opt);
    out->optimizer_version = put_str(&w, ver);
    for (size_t i = 0; i < n; i++)
        keys[i] = put_str(&w, &carried->via.array.ptr[i]);
    keys[n] = NULL;
    out->carried = keys;
    out->n_carried = n;
    out->mem = block;
    return 0;
}

int optimd_client_switch(optimd_client *c, const optimd_session *s,
                         const char *optimizer, const optimd_hvalue *hp,
                         size_t n, optimd_switch_result *result)
{
    if (result) memset(result, 0, sizeof *result);
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    if (!optimizer || !*optimizer)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "optimizer is NULL or empty");
    if (!wire_hvalues_arg_ok(hp, n, c->err, sizeof c->err))
        return OPTIMD_CLIENT_E_ARG;
    req_switch a = {optimizer, n ? hp : NULL, n};
    client_call call;
    req_switch_call(s, &a, &call);
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    optimd_switch_result local = {0};
    rv = read_switch(c, &rep, result ? result : &local);
    client_reply_free(&rep);
    optimd_switch_result_free(&local);
    return rv;
}

static void pack_admin(msgpack_packer *pk, const void *arg)
{
    const req_admin *a = arg;
    if (a->path) {
        wire_pack_str(pk, "path");
        wire_pack_str(pk, a->path);
    }
    if (a->session) {
        wire_pack_str(pk, "session");
        wire_pack_str(pk, a->session);
    }
    if (a->admin_token) {
        wire_pack_str(pk, "admin_token");
        wire_pack_str(pk, a->admin_token);
    }
}

void req_admin_call(const req_admin *a, client_call *call)
{
    bool reload = strcmp(a->op, "reload") == 0;
    *call = (client_call){
        .op = a->op,
        .n_keys = (a->admin_token ? 1 : 0) + (a->path ? 1 : 0) +
                  (a->session ? 1 : 0),
        .size_hint = (a->admin_token ? strlen(a->admin_token) : 0) +
                     (a->path ? strlen(a->path) : 0) +
                     (a->session ? strlen(a->session) : 0) + 48,
        .pack = pack_admin,
        .arg = a,
        /* A rescan loads only files changed since the last one, so a
         * repeated reload loads nothing twice; each load installs its file
         * as a new version (optimd_client_load); drop and shutdown are not
         * repeated either (optimd_client_drop, optimd_client_shutdown). */
        .retry = reload ? CLIENT_RETRY_ALWAYS : CLIENT_RETRY_UNSENT};
}

void optimd_reload_report_free(optimd_reload_report *r)
{
    if (!r) return;
    free(r->mem);
    memset(r, 0, sizeof *r);
}

/* Checks entry i of `plugins` and adds the bytes its strings need. */
static int check_file_entry(optimd_client *c, const client_reply *rep,
                            const msgpack_object *e, size_t i, size_t *size)
{
    if (e->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(e))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': plugins[%zu] is not a map",
                           rep->op, i);
    const msgpack_object *path = wire_map_get(e, "path");
    const msgpack_object *loaded = wire_map_get(e, "loaded");
    if (!str_ok(path) || !loaded || loaded->type != MSGPACK_OBJECT_BOOLEAN)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': plugins[%zu]: 'path' (str) or "
                           "'loaded' (bool) is missing or of the wrong type",
                           rep->op, i);
    *size += path->via.str.size + 1;
    static const char *const loaded_keys[] = {"id", "version"};
    static const char *const refused_keys[] = {"error"};
    const char *const *keys = loaded->via.boolean ? loaded_keys : refused_keys;
    size_t n_keys = loaded->via.boolean ? 2 : 1;
    for (size_t k = 0; k < n_keys; k++) {
        const msgpack_object *v = wire_map_get(e, keys[k]);
        if (!str_ok(v))
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s': plugins[%zu] (loaded: %s): "
                               "'%s' is missing or not a str", rep->op, i,
                               loaded->via.boolean ? "true" : "false",
                               keys[k]);
        *size += v->via.str.size + 1;
    }
    return 0;
}

int read_reload(optimd_client *c, const client_reply *rep,
                optimd_reload_report *out)
{
    const msgpack_object *arr;
    int rv = reply_get(c, rep, "plugins", MSGPACK_OBJECT_ARRAY, &arr);
    if (rv) return rv;
    size_t n = arr->via.array.size;
    size_t size = (n ? n : 1) * sizeof(optimd_plugin_file);
    for (size_t i = 0; i < n; i++)
        if ((rv = check_file_entry(c, rep, &arr->via.array.ptr[i], i,
                                   &size)))
            return rv;
    char *block = malloc(size);
    if (!block) return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    optimd_plugin_file *files = (optimd_plugin_file *)(void *)block;
    char *w = block + (n ? n : 1) * sizeof(optimd_plugin_file);
    size_t refused = 0;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *e = &arr->via.array.ptr[i];
        optimd_plugin_file *f = &files[i];
        memset(f, 0, sizeof *f);
        f->path = put_str(&w, wire_map_get(e, "path"));
        f->loaded = wire_map_get(e, "loaded")->via.boolean;
        if (f->loaded) {
            f->id = put_str(&w, wire_map_get(e, "id"));
            f->version = put_str(&w, wire_map_get(e, "version"));
        } else {
            f->error = put_str(&w, wire_map_get(e, "error"));
            refused++;
        }
    }
    out->files = files;
    out->n_files = n;
    out->n_refused = refused;
    out->maybe_incomplete = 0;
    out->mem = block;
    return 0;
}

static int admin_call(optimd_client *c, const req_admin *a,
                      optimd_reload_report *report)
{
    client_call call;
    req_admin_call(a, &call);
    client_reply rep;
    int rv = client_call_run(c, &call, &rep);
    if (rv) return rv;
    optimd_reload_report local = {0};
    optimd_reload_report *out = report ? report : &local;
    rv = read_reload(c, &rep, out);
    client_reply_free(&rep);
    if (rv == 0) out->maybe_incomplete = call.ambiguous;
    optimd_reload_report_free(&local);
    return rv;
}

int optimd_client_reload(optimd_client *c, const char *admin_token,
                         optimd_reload_report *report)
{
    if (report) memset(report, 0, sizeof *report);
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!admin_token)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "admin_token is NULL");
    req_admin a = {"reload", admin_token, NULL, NULL};
    return admin_call(c, &a, report);
}

int optimd_client_load(optimd_client *c, const char *admin_token,
                       const char *path, optimd_reload_report *report)
{
    if (report) memset(report, 0, sizeof *report);
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!admin_token)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "admin_token is NULL");
    if (!path || !*path)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "path is NULL or empty");
    req_admin a = {"load", admin_token, path, NULL};
    return admin_call(c, &a, report);
}

int optimd_client_drop(optimd_client *c, const char *admin_token,
                       const char *name)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!admin_token)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "admin_token is NULL");
    if (!name || !*name)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "name is NULL or empty");
    req_admin a = {"drop", admin_token, NULL, name};
    client_call call;
    req_admin_call(&a, &call);
    client_reply rep;
    int rv = client_call_run(c, &call, &rep);
    if (rv == OPTIMD_E_UNKNOWN_SESSION && call.ambiguous) {
        /* The attempt whose reply was lost dropped it. */
        c->err[0] = '\0';
        rv = 0;
    } else if (rv == 0) {
        client_reply_free(&rep);
    }
    if (rv) return rv;
    /* A later session of that name starts a fresh record of seqs. */
    for (size_t i = 0; i < c->n_seqs; i++)
        if (strcmp(c->seqs[i].session, name) == 0) {
            c->seqs[i] = c->seqs[--c->n_seqs];
            break;
        }
    return 0;
}

int optimd_client_shutdown(optimd_client *c, const char *admin_token)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!admin_token)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "admin_token is NULL");
    req_admin a = {"shutdown", admin_token, NULL, NULL};
    client_call call;
    req_admin_call(&a, &call);
    client_reply rep;
    int rv = client_call_run(c, &call, &rep);
    if (rv == 0) client_reply_free(&rep);
    return rv;
}
