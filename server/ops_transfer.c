/* Moving sessions and their shares: export, import, unregister. */
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

int op_export(request *r)
{
    session *s = request_session(r);
    if (!s) return -1;
    char *buf = NULL;
    size_t len = 0;
    bool *keep = NULL;
    session_lock(s);
    int rc = session_refuse_if_pending(s, "export", &r->err);
    if (rc == 0) rc = export_selection(r, s, &keep);
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
                       : session_refuse_if_pending(s, "import into it", &r->err);
    if (rc == 0) rc = session_adopt_prepare(s, from, &a, &r->err);
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

int op_import(request *r)
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
int op_unregister(request *r)
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
                       : session_refuse_if_pending(s, "unregister", &r->err);
    if (rc == 0) rc = resolve_names(r, s, &idx, &count);
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
