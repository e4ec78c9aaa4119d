/* Moving a session between daemons: export and import (protocol.md). */
#include "client_internal.h"

#include <stdlib.h>
#include <string.h>

#define SESSION_NAME_MAX 128
#define TOKEN_LEN 32

int optimd_client_export(optimd_client *c, const optimd_session *s,
                         void **snapshot, size_t *size)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    int rv = client_session_ok(c, s);
    if (rv) return rv;
    if (!snapshot || !size)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "snapshot or size is NULL");
    *snapshot = NULL;
    *size = 0;
    req_str a = {"export", NULL, NULL};
    client_call call;
    req_str_call(s, &a, &call);
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    rv = read_export(c, &rep, snapshot, size);
    client_reply_free(&rep);
    return rv;
}

int read_export(optimd_client *c, const client_reply *rep, void **snapshot,
                size_t *size)
{
    const msgpack_object *bin;
    int rv = reply_get(c, rep, "snapshot", MSGPACK_OBJECT_BIN, &bin);
    if (rv) return rv;
    /* The reply's buffer goes with it; the caller keeps a copy. */
    void *copy = malloc(bin->via.bin.size ? bin->via.bin.size : 1);
    if (!copy)
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                           "out of memory for a %u-byte snapshot",
                           bin->via.bin.size);
    if (bin->via.bin.size) memcpy(copy, bin->via.bin.ptr, bin->via.bin.size);
    *snapshot = copy;
    *size = bin->via.bin.size;
    return 0;
}

static void pack_import(msgpack_packer *pk, const void *arg)
{
    const req_import *a = arg;
    wire_pack_str(pk, "snapshot");
    msgpack_pack_bin(pk, a->size);
    msgpack_pack_bin_body(pk, a->snapshot, a->size);
    if (a->name) {
        wire_pack_str(pk, "session");
        wire_pack_str(pk, a->name);
    }
    if (a->durability) {
        wire_pack_str(pk, "durability");
        wire_pack_str(pk, a->durability);
    }
}

int optimd_client_import(optimd_client *c, const void *snapshot, size_t size,
                         const char *name, const char *durability,
                         optimd_session *out, uint64_t *steps)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!snapshot || !out)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "snapshot or out is NULL");
    if (size > UINT32_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "a snapshot of %zu bytes does not fit a message",
                           size);
    if (name && (name[0] == '\0' || strlen(name) > SESSION_NAME_MAX))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "session name must be 1 to %d bytes",
                           SESSION_NAME_MAX);
    req_import a = {snapshot, size, name, durability};
    client_call call;
    req_import_call(&a, &call);
    client_reply rep;
    int rv = client_call_run(c, &call, &rep);
    if (rv) return rv;
    rv = read_import(c, &rep, name, out, steps);
    client_reply_free(&rep);
    return rv;
}

void req_import_call(const req_import *a, client_call *call)
{
    *call = (client_call){
        .op = "import",
        .n_keys = 1 + (a->name ? 1 : 0) + (a->durability ? 1 : 0),
        .size_hint = a->size + 64,
        .pack = pack_import,
        .arg = a,
        /* A repeat whose lost attempt imported meets SESSION_EXISTS; the
         * new token is then lost, so do not repeat what may have landed. */
        .retry = CLIENT_RETRY_UNSENT};
}

static bool is_token(const msgpack_object *o)
{
    if (!o || o->type != MSGPACK_OBJECT_STR || o->via.str.size != TOKEN_LEN)
        return false;
    for (uint32_t i = 0; i < TOKEN_LEN; i++) {
        char ch = o->via.str.ptr[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
    }
    return true;
}

int read_import(optimd_client *c, const client_reply *rep, const char *name,
                optimd_session *out, uint64_t *steps)
{
    const msgpack_object *session = wire_map_get(rep->root, "session");
    const msgpack_object *token = wire_map_get(rep->root, "token");
    uint64_t n = 0;
    int rv;
    if (!session || session->type != MSGPACK_OBJECT_STR ||
        session->via.str.size == 0 ||
        session->via.str.size > SESSION_NAME_MAX ||
        memchr(session->via.str.ptr, '\0', session->via.str.size) ||
        (name && !wire_is_str(session, name)))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'import': 'session' is missing or not "
                           "the name asked for");
    if (!is_token(token))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to 'import': 'token' is not 32 lowercase "
                           "hex digits");
    if ((rv = reply_uint(c, rep, "steps", &n))) return rv;
    memcpy(out->name, session->via.str.ptr, session->via.str.size);
    out->name[session->via.str.size] = '\0';
    memcpy(out->token, token->via.str.ptr, TOKEN_LEN);
    out->token[TOKEN_LEN] = '\0';
    if (steps) *steps = n;
    return 0;
}
