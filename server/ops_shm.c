/* Shared memory for co-located clients: shm_attach, shm_step, shm_detach. */
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

int op_shm_attach(request *r)
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

int op_shm_step(request *r)
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
    int rc = session_refuse_if_pending(s, "shm_step", &r->err);
    if (rc == 0) rc = optimd_shm_step(s, names, r->root, &id, &clip, r->srv->pool, &r->srv->store, &res, &detached,
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

int op_shm_detach(request *r)
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
