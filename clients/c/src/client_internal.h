/*
 * Shared by the files of the client library: the client object, and the
 * request/reply plumbing every operation goes through.
 */
#ifndef OPTIMD_CLIENT_INTERNAL_H
#define OPTIMD_CLIENT_INTERNAL_H

#include "wire.h"

#include <nng/nng.h>

#define CLIENT_ERR_CAP 1024
#define CLIENT_ID_MAX 64               /* protocol.md, `step`: `client` */

/* Writes 32 random lowercase hex digits and a NUL: client ids, and the
 * open_key that makes a retried open safe. */
void client_random_id(char id[CLIENT_ID_MAX + 1]);
#define CLIENT_SEQ_MAX (1ull << 53)    /* protocol.md, `step`: `seq` */

/* The seq of the next step on one session. */
typedef struct client_seq {
    char session[129];
    uint64_t next;
} client_seq;

struct optimd_client {
    nng_socket sock;
    bool sock_open;
    nng_dialer dialer;
    char *url;
    int timeout_ms;
    int max_retries;
    int backoff_ms;
    int backoff_max_ms;
    void (*on_retry)(void *arg, const char *message);
    void *on_retry_arg;
    unsigned last_retries;
    /* Set when a step reply lacked `duplicate`: that daemon predates
     * exactly-once steps, so a step that may have been applied must not
     * be re-sent. */
    bool no_dedup;
    char id[CLIENT_ID_MAX + 1];
    client_seq *seqs;                  /* one per session stepped */
    size_t n_seqs, cap_seqs;
    uint64_t next_id;
    char err[CLIENT_ERR_CAP];
};

/* Which requests may be sent again after a transport failure. */
typedef enum client_retry {
    /* Only when it certainly did not reach the daemon. */
    CLIENT_RETRY_UNSENT = 0,
    /* Also when it may have been applied: its repeat is harmless, or the
     * op tells a repeat's answer apart (see `ambiguous`). */
    CLIENT_RETRY_ALWAYS = 1
} client_retry;

/* Packs an op's own keys (n_keys of them, see client_call) into a request.
 * Called again for each attempt, so it must pack the same thing each time
 * from caller memory that is still there. */
typedef void (*client_pack_fn)(msgpack_packer *pk, const void *arg);

/* One call of an op, with its retries. */
typedef struct client_call {
    const char *op;
    const optimd_session *s;   /* NULL: the op takes no session keys */
    uint32_t n_keys;           /* keys `pack` adds */
    size_t size_hint;          /* bytes `pack` adds, roughly */
    client_pack_fn pack;       /* NULL when n_keys is 0 */
    const void *arg;
    client_retry retry;
    /* Out: true when an attempt before the one answered may have reached
     * the daemon and been applied, so that the answer may be to a repeat
     * (SESSION_EXISTS to a repeated open, ...). */
    bool ambiguous;
} client_call;

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

/* Builds and sends call->op, waits for the reply and checks the
 * envelope, retrying transport failures as the client's options and
 * call->retry allow (see optimd_client_options). Returns 0 with `rep`
 * filled, or a failure code (positive: the daemon's error) with nothing
 * left to free. */
int client_call_run(optimd_client *c, client_call *call, client_reply *rep);

/* Appends text to c->err (cut at its capacity). */
void client_err_append(optimd_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The seq entry of `session`, created with next = 1 when absent. Returns
 * 0, or a failure code recorded in c->err. */
int client_seq_get(optimd_client *c, const char *session, client_seq **out);

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

/* Clears the error text and the retry count at the start of a public
 * call. */
static inline void client_begin_call(optimd_client *c)
{
    c->err[0] = '\0';
    c->last_retries = 0;
}

#endif
