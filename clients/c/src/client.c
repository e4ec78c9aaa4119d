/*
 * The connection and the request/reply plumbing: one REQ socket, one
 * request in flight, each reply checked against the envelope of
 * docs/protocol.md section 2 before an operation reads its keys.
 */
#include "client_internal.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/protocol/reqrep0/req.h>

#define CLIENT_DEFAULT_TIMEOUT_MS 30000

/* Room for the envelope and the session keys, on top of an operation's own
 * size hint. */
#define CLIENT_ENVELOPE_BYTES 512

/* A failed connect has no client to hold its reason. */
static _Thread_local char connect_err[CLIENT_ERR_CAP];

int client_fail(optimd_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return code;
}

static int connect_fail(optimd_client *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int connect_fail(optimd_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(connect_err, sizeof connect_err, fmt, ap);
    va_end(ap);
    optimd_client_free(c);
    return code;
}

int optimd_client_connect(const char *url, int timeout_ms,
                          optimd_client **out)
{
    connect_err[0] = '\0';
    if (!out) return connect_fail(NULL, OPTIMD_CLIENT_E_ARG, "out is NULL");
    *out = NULL;
    if (!url || !*url)
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG, "no URL given");
    if (timeout_ms < 0)
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG,
                            "timeout %d ms is negative", timeout_ms);

    optimd_client *c = calloc(1, sizeof *c);
    if (!c || !(c->url = strdup(url))) {
        free(c);
        return connect_fail(NULL, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    }
    c->timeout_ms = timeout_ms ? timeout_ms : CLIENT_DEFAULT_TIMEOUT_MS;
    c->next_id = 1;

    int rv = nng_req0_open(&c->sock);
    if (rv)
        return connect_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                            "cannot open a REQ socket: %s", nng_strerror(rv));
    c->sock_open = true;
    /* Replies can be as large as the parameters they carry, and the
     * daemon, not the client, decides how large that may be. */
    if ((rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, 0)) ||
        (rv = nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO, c->timeout_ms)) ||
        (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, c->timeout_ms)) ||
        /* A step is not idempotent: REQ's automatic resend (every minute
         * by default) could apply a gradient twice. */
        (rv = nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME,
                                NNG_DURATION_INFINITE)))
        return connect_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                            "cannot set socket options: %s",
                            nng_strerror(rv));

    /* Non-blocking: a daemon that starts a little later, or restarts, is
     * picked up by NNG's redial; requests wait for it up to the timeout. */
    rv = nng_dial(c->sock, url, &c->dialer, NNG_FLAG_NONBLOCK);
    if (rv)
        return connect_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                            "cannot dial %s: %s", url, nng_strerror(rv));
    *out = c;
    return 0;
}

void optimd_client_free(optimd_client *c)
{
    if (!c) return;
    if (c->sock_open) nng_close(c->sock);
    free(c->url);
    free(c);
}

const char *optimd_client_error(const optimd_client *c)
{
    return c ? c->err : connect_err;
}

int client_session_ok(optimd_client *c, const optimd_session *s)
{
    if (!s) return client_fail(c, OPTIMD_CLIENT_E_ARG, "session is NULL");
    if (!memchr(s->name, '\0', sizeof s->name) ||
        !memchr(s->token, '\0', sizeof s->token))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "session name or token is not NUL-terminated");
    return 0;
}

int client_request_begin(optimd_client *c, client_request *rq, const char *op,
                         const optimd_session *s, uint32_t n_keys,
                         size_t size_hint)
{
    rq->c = c;
    rq->op = op;
    rq->id = c->next_id++;
    nng_msg *msg;
    if (nng_msg_alloc(&msg, 0) != 0)
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    size_t want = size_hint > SIZE_MAX - CLIENT_ENVELOPE_BYTES
                      ? size_hint
                      : size_hint + CLIENT_ENVELOPE_BYTES;
    if (nng_msg_reserve(msg, want) != 0) {
        nng_msg_free(msg);
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                           "out of memory for a %zu-byte request", want);
    }
    wire_writer_init(&rq->w, msg);
    msgpack_packer *pk = &rq->w.pk;
    msgpack_pack_map(pk, 3 + n_keys + (s ? 2 : 0));
    wire_pack_str(pk, "v");
    msgpack_pack_int(pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(pk, "op");
    wire_pack_str(pk, op);
    wire_pack_str(pk, "id");
    msgpack_pack_uint64(pk, rq->id);
    if (s) {
        wire_pack_str(pk, "session");
        wire_pack_str(pk, s->name);
        wire_pack_str(pk, "token");
        wire_pack_str(pk, s->token);
    }
    return 0;
}

void client_request_abort(client_request *rq)
{
    nng_msg_free(rq->w.msg);
    rq->w.msg = NULL;
}

void client_reply_free(client_reply *rep)
{
    if (!rep->msg) return;
    msgpack_unpacked_destroy(&rep->up);
    nng_msg_free(rep->msg);
    rep->msg = NULL;
    rep->root = NULL;
}

/* Turns an error reply into the daemon's code and "NAME: message". */
static int error_reply(optimd_client *c, const client_request *rq,
                       const msgpack_object *root)
{
    const msgpack_object *code = wire_map_get(root, "code");
    const msgpack_object *name = wire_map_get(root, "error");
    const msgpack_object *text = wire_map_get(root, "message");
    int64_t value;
    if (!code || !wire_as_int(code, &value) || value <= 0 || value > INT_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "error reply to '%s': 'code' is missing or not a "
                           "positive int", rq->op);
    if (!name || name->type != MSGPACK_OBJECT_STR || !text ||
        text->type != MSGPACK_OBJECT_STR)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "error reply to '%s' (code %lld): 'error' or "
                           "'message' is missing or not a str",
                           rq->op, (long long)value);
    client_fail(c, (int)value, "%.*s: %.*s", (int)name->via.str.size,
                name->via.str.ptr, (int)text->via.str.size, text->via.str.ptr);
    return (int)value;
}

static int check_envelope(optimd_client *c, const client_request *rq,
                          const msgpack_object *root)
{
    if (root->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(root))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s' is not a map with str keys",
                           rq->op);
    const msgpack_object *v = wire_map_get(root, "v");
    const msgpack_object *id = wire_map_get(root, "id");
    const msgpack_object *ok = wire_map_get(root, "ok");
    uint64_t num;
    if (!v || !wire_as_uint(v, &num) || num != OPTIMD_PROTOCOL_VERSION)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': 'v' is missing or not %d",
                           rq->op, OPTIMD_PROTOCOL_VERSION);
    if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': 'ok' is missing or not a bool",
                           rq->op);
    if (!id || !wire_as_uint(id, &num))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': 'id' is missing or not a uint",
                           rq->op);
    /* An undecodable request is answered with id 0 (protocol.md section
     * 2), so only an error reply may carry it. */
    if (num != rq->id && !(num == 0 && !ok->via.boolean))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s' carries id %llu, the request had "
                           "id %llu", rq->op, (unsigned long long)num,
                           (unsigned long long)rq->id);
    if (!ok->via.boolean) return error_reply(c, rq, root);
    return 0;
}

int client_roundtrip(client_request *rq, client_reply *rep)
{
    optimd_client *c = rq->c;
    memset(rep, 0, sizeof *rep);
    rep->op = rq->op;
    if (rq->w.failed) {
        client_request_abort(rq);
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                           "out of memory building the '%s' request", rq->op);
    }
    nng_msg *msg = rq->w.msg;
    rq->w.msg = NULL;
    int rv = nng_sendmsg(c->sock, msg, 0);
    if (rv) {
        nng_msg_free(msg);
        /* REQ holds a message until some connection can take it, so a
         * send timeout means no connection was up all that time. */
        if (rv == NNG_ETIMEDOUT)
            return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                               "no connection to optimd at %s within %d ms "
                               "(is the daemon running and listening there?)",
                               c->url, c->timeout_ms);
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "sending '%s' to %s: %s", rq->op, c->url,
                           nng_strerror(rv));
    }
    rv = nng_recvmsg(c->sock, &msg, 0);
    if (rv == NNG_ETIMEDOUT)
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "optimd at %s sent no reply to '%s' within %d ms "
                           "(the request may or may not have taken effect)",
                           c->url, rq->op, c->timeout_ms);
    if (rv == NNG_ECONNRESET)
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "the connection to optimd at %s was lost before "
                           "the reply to '%s' (the daemon stopped, or "
                           "dropped a request over twice its max_message; "
                           "the request may or may not have taken effect)",
                           c->url, rq->op);
    if (rv)
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "receiving the reply to '%s' from %s: %s (the "
                           "request may or may not have taken effect)",
                           rq->op, c->url, nng_strerror(rv));

    rep->msg = msg;
    msgpack_unpacked_init(&rep->up);
    const char *body = nng_msg_body(msg);
    size_t len = nng_msg_len(msg), off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&rep->up, body, len, &off);
    int code = 0;
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        code = client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                           "out of memory decoding the %zu-byte reply to '%s'",
                           len, rq->op);
    else if (ur != MSGPACK_UNPACK_SUCCESS)
        code = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s' is not one msgpack value (%zu "
                           "bytes, %s)", rq->op, len,
                           ur == MSGPACK_UNPACK_CONTINUE ? "truncated"
                                                         : "parse error");
    else if (off != len)
        code = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s' has %zu stray bytes after its "
                           "msgpack value", rq->op, len - off);
    else
        code = check_envelope(c, rq, &rep->up.data);
    if (code) {
        client_reply_free(rep);
        return code;
    }
    rep->root = &rep->up.data;
    return 0;
}

static const char *type_name(msgpack_object_type type)
{
    switch (type) {
    case MSGPACK_OBJECT_STR: return "str";
    case MSGPACK_OBJECT_MAP: return "map";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_BOOLEAN: return "bool";
    case MSGPACK_OBJECT_BIN: return "bin";
    default: return "value of the right type";
    }
}

int reply_get(optimd_client *c, const client_reply *rep, const char *key,
              msgpack_object_type type, const msgpack_object **out)
{
    const msgpack_object *o = wire_map_get(rep->root, key);
    if (!o || o->type != type)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': '%s' is %s, expected a %s",
                           rep->op, key, o ? "of the wrong type" : "missing",
                           type_name(type));
    if (type == MSGPACK_OBJECT_MAP && !wire_keys_are_str(o))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': '%s' has a key that is not a str",
                           rep->op, key);
    *out = o;
    return 0;
}

int reply_uint(optimd_client *c, const client_reply *rep, const char *key,
               uint64_t *out)
{
    const msgpack_object *o = wire_map_get(rep->root, key);
    if (!o || !wire_as_uint(o, out))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': '%s' is %s, expected a uint",
                           rep->op, key, o ? "of the wrong type" : "missing");
    return 0;
}

int reply_float(optimd_client *c, const client_reply *rep, const char *key,
                double *out)
{
    const msgpack_object *o = wire_map_get(rep->root, key);
    if (!o || !wire_as_float(o, out))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': '%s' is %s, expected a float",
                           rep->op, key, o ? "of the wrong type" : "missing");
    return 0;
}

/* The entry of `map` named `name`, trying position `hint` first: the daemon
 * usually answers in the order it was asked, which keeps matching n
 * parameters linear instead of quadratic. */
static const msgpack_object *find_param(const msgpack_object *map,
                                        const char *name, size_t hint)
{
    const msgpack_object_map *m = &map->via.map;
    if (hint < m->size && wire_is_str(&m->ptr[hint].key, name))
        return &m->ptr[hint].val;
    return wire_map_get(map, name);
}

int reply_tensors_into(optimd_client *c, const client_reply *rep,
                       optimd_named_tensor *dst, size_t n)
{
    const msgpack_object *params;
    int rv = reply_get(c, rep, "params", MSGPACK_OBJECT_MAP, &params);
    if (rv) return rv;
    char why[512];
    wire_tensor t;
    for (uint32_t i = 0; i < params->via.map.size; i++) {
        const msgpack_object_kv *kv = &params->via.map.ptr[i];
        if (!wire_read_tensor(&kv->val, &t, why, sizeof why))
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s': params['%.*s']: %s", rep->op,
                               (int)kv->key.via.str.size, kv->key.via.str.ptr,
                               why);
    }
    /* Check everything before copying anything, so that a bad reply
     * leaves every caller buffer as it was. */
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *o = find_param(params, dst[i].name, i);
        if (!o)
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s' lacks parameter '%s'", rep->op,
                               dst[i].name);
        wire_read_tensor(o, &t, why, sizeof why);
        if (!wire_tensor_matches(&t, &dst[i], why, sizeof why))
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s': params['%s']: %s", rep->op,
                               dst[i].name, why);
    }
    for (size_t i = 0; i < n; i++) {
        wire_read_tensor(find_param(params, dst[i].name, i), &t, why,
                         sizeof why);
        wire_tensor_into(&t, &dst[i], why, sizeof why);
    }
    return 0;
}
