/*
 * Shared by the files of the client library: the client object, and the
 * request/reply plumbing every operation goes through.
 */
#ifndef OPTIMD_CLIENT_INTERNAL_H
#define OPTIMD_CLIENT_INTERNAL_H

#include "wire.h"

#include <nng/nng.h>

#define CLIENT_ERR_CAP 1024

struct optimd_client {
    nng_socket sock;
    bool sock_open;
    nng_dialer dialer;
    char *url;
    int timeout_ms;
    uint64_t next_id;
    char err[CLIENT_ERR_CAP];
};

/* A request being packed. Built on the stack by one operation; `w` is
 * referenced by its own packer, so the struct must not be copied. */
typedef struct client_request {
    optimd_client *c;
    const char *op;
    uint64_t id;
    wire_writer w;
} client_request;

/* A decoded success reply. `root` is the reply map; its str and bin objects
 * point into `msg`. */
typedef struct client_reply {
    const char *op;
    nng_msg *msg;
    msgpack_unpacked up;
    const msgpack_object *root;
} client_reply;

/* Records a failure in c->err and returns `code`. */
int client_fail(optimd_client *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Starts a request map holding `n_keys` keys besides v, op and id (and
 * session and token when `s` is not NULL). `size_hint` is the expected
 * size of what the caller adds, so that tensor bytes are appended without
 * the message growing (and being copied) on the way. */
int client_request_begin(optimd_client *c, client_request *rq, const char *op,
                         const optimd_session *s, uint32_t n_keys,
                         size_t size_hint);

/* Drops a request that will not be sent. */
void client_request_abort(client_request *rq);

/* Sends the request (always consuming it), waits for the reply and checks
 * the envelope. Returns 0 with `rep` filled, or a failure code (positive:
 * the daemon's error) with nothing left to free. */
int client_roundtrip(client_request *rq, client_reply *rep);

void client_reply_free(client_reply *rep);

/* Readers of reply keys: each records a precise E_PROTOCOL failure when
 * the key is missing or has the wrong type. */
int reply_get(optimd_client *c, const client_reply *rep, const char *key,
              msgpack_object_type type, const msgpack_object **out);
int reply_uint(optimd_client *c, const client_reply *rep, const char *key,
               uint64_t *out);
int reply_float(optimd_client *c, const client_reply *rep, const char *key,
                double *out);

/* Reads the `params` map of a step or pull reply and copies each tensor
 * named in `dst` into the caller's buffer. */
int reply_tensors_into(optimd_client *c, const client_reply *rep,
                       optimd_named_tensor *dst, size_t n);

/* Checks a session handle given to an op; the daemon judges its contents,
 * this only keeps the request well-formed. */
int client_session_ok(optimd_client *c, const optimd_session *s);

/* Clears the error text at the start of a public call. */
static inline void client_begin_call(optimd_client *c) { c->err[0] = '\0'; }

#endif
