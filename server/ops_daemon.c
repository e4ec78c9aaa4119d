/* Ops on the daemon itself: hello, plugins, and the admin ops (reload,
 * load, drop, shutdown). */
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

int op_hello(request *r)
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

int op_plugins(request *r)
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
        msgpack_pack_map(pk, is_opt ? 8 : 5);
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
        wire_pack_str(pk, "sliced");
        if (sliced_step_supported(p)) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
    }
    plugin_registry_release_list(list, n);
    return 0;
}

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

int op_reload(request *r)
{
    if (check_admin(r)) return -1;
    reload_report *rep = calloc(1, sizeof *rep);
    if (!rep) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    plugin_registry_reload(&r->srv->plugins, rep);
    pack_reload_report(r, rep);
    free(rep);
    return 0;
}

int op_load(request *r)
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
int op_drop(request *r)
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

int op_shutdown(request *r)
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
