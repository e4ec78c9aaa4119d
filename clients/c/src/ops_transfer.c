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
    client_call call = {.op = "export", .s = s, .retry = CLIENT_RETRY_ALWAYS};
    client_reply rep;
    if ((rv = client_call_run(c, &call, &rep))) return rv;
    const msgpack_object *bin;
    if (!(rv = reply_get(c, &rep, "snapshot", MSGPACK_OBJECT_BIN, &bin))) {
        /* The reply's buffer goes with it; the caller keeps a copy. */
        void *copy = malloc(bin->via.bin.size ? bin->via.bin.size : 1);
        if (!copy) {
            rv = client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                             "out of memory for a %u-byte snapshot",
                             bin->via.bin.size);
        } else {
            memcpy(copy, bin->via.bin.ptr, bin->via.bin.size);
            *snapshot = copy;
            *size = bin->via.bin.size;
        }
    }
    client_reply_free(&rep);
    return rv;
}

typedef struct import_args {
    const void *snapshot;
    size_t size;
    const char *name;
    const char *durability;
} import_args;

static void pack_import(msgpack_packer *pk, const void *arg)
{
    const import_args *a = arg;
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
    import_args a = {snapshot, size, name, durability};
    client_call call = {
        .op = "import",
        .n_keys = 1 + (name ? 1 : 0) + (durability ? 1 : 0),
        .size_hint = size + 64,
        .pack = pack_import,
        .arg = &a,
        /* A repeat whose lost attempt imported meets SESSION_EXISTS; the
         * new token is then lost, so do not repeat what may have landed. */
        .retry = CLIENT_RETRY_UNSENT};
    client_reply rep;
    int rv = client_call_run(c, &call, &rep);
    if (rv) return rv;
    const msgpack_object *session = wire_map_get(rep.root, "session");
    const msgpack_object *token = wire_map_get(rep.root, "token");
    uint64_t n = 0;
    if (!session || session->type != MSGPACK_OBJECT_STR ||
        session->via.str.size == 0 ||
        session->via.str.size > SESSION_NAME_MAX ||
        (name && !wire_is_str(session, name)))
        rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                         "reply to 'import': 'session' is missing or not "
                         "the name asked for");
    else if (!token || token->type != MSGPACK_OBJECT_STR ||
             token->via.str.size != TOKEN_LEN)
        rv = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                         "reply to 'import': 'token' is not 32 characters");
    else if (!(rv = reply_uint(c, &rep, "steps", &n))) {
        memcpy(out->name, session->via.str.ptr, session->via.str.size);
        out->name[session->via.str.size] = '\0';
        memcpy(out->token, token->via.str.ptr, TOKEN_LEN);
        out->token[TOKEN_LEN] = '\0';
        if (steps) *steps = n;
    }
    client_reply_free(&rep);
    return rv;
}
