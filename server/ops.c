/* The protocol's entry point (docs/protocol.md): decoding the envelope and
 * dispatching on "op" to the handlers in ops_*.c. */
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

typedef struct op_entry {
    const char *name;
    int (*fn)(request *r);
} op_entry;

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
    {"abandon_step", op_abandon_step},
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
                 .request_msg = request_msg, .ticket = ticket, .pipe = nng_msg_get_pipe(request_msg)};
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
    /* A step may have made the request's own message its reply
     * (step_reply.c); request_msg is NULL then. */
    reply = w.msg;
    request_msg = r.request_msg;
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
    if (request_msg) nng_msg_free(request_msg);
    return reply;
}
