/*
 * Shared by the files of the client library: the client object, and the
 * request/reply plumbing every operation goes through.
 */
#ifndef OPTIMD_CLIENT_INTERNAL_H
#define OPTIMD_CLIENT_INTERNAL_H

#include "wire.h"

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

#define CLIENT_ERR_CAP 1024
#define CLIENT_ID_MAX 64               /* protocol.md, `step`: `client` */
#define CLIENT_WORKER_MAX 64           /* protocol.md, `join`: `worker` */

/* Writes 32 random lowercase hex digits and a NUL: client ids, and the
 * open_key that makes a retried open safe. */
void client_random_id(char id[CLIENT_ID_MAX + 1]);
#define CLIENT_SEQ_MAX (1ull << 53)    /* protocol.md, `step`: `seq` */

/* The seq of the next step on one session. */
/* The seq of the next step on one session, and how long the daemon may
 * hold a worker's push there (see optimd_step_options.worker_wait_ms). */
typedef struct client_seq {
    char session[129];
    uint64_t next;
    bool wait_known;           /* learned from open, join, leave or info */
    uint32_t wait_ms;          /* 0: pushes are answered at once */
} client_seq;

struct optimd_client {
    nng_socket sock;
    bool sock_open;
    nng_dialer dialer;
    char *url;
    /* Set for a tls+tcp:// URL; each new dialer takes its own reference. */
    nng_tls_config *tls;
    /* The last attempt met a TLS handshake failure, which a retry would
     * meet again. */
    bool tls_refused;
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
/* ops_sliced.c: a step sent in parts of about part_elements elements,
 * one after another, under `seq`. */
int client_step_sliced(optimd_client *c, const optimd_session *s,
                       const optimd_named_tensor *grads, size_t n_grads,
                       optimd_named_tensor *params_out, size_t n_out,
                       uint64_t part_elements, double clip_value, uint64_t seq,
                       optimd_group_value *groups, size_t groups_cap,
                       optimd_step_result *result);

typedef struct client_call {
    const char *op;
    const optimd_session *s;   /* NULL: the op takes no session keys */
    uint32_t n_keys;           /* keys `pack` adds */
    size_t size_hint;          /* bytes `pack` adds, roughly */
    client_pack_fn pack;       /* NULL when n_keys is 0 */
    const void *arg;
    client_retry retry;
    /* Milliseconds the daemon may hold the request before it answers
     * (a worker's push waiting for others): each attempt awaits its reply
     * for the client's timeout plus this. */
    uint32_t wait_ms;
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

/* Builds call's request (envelope, session keys, the op's keys) with the
 * client's next id, without sending it: *out is the message. Returns 0, or
 * a failure code recorded in c->err. */
int client_call_pack(optimd_client *c, const client_call *call,
                     nng_msg **out);

/* Reads `msg` (taking it) as the reply to an `op` request whose id was
 * `id`: the bytes are checked to be one msgpack value (bounded by
 * wire_prescan before msgpack-c allocates for it), then the envelope.
 * Returns 0 with `rep` filled, or a failure code (positive: the daemon's
 * error) with nothing left to free. */
int client_parse_reply(optimd_client *c, const char *op, uint64_t id,
                       nng_msg *msg, client_reply *rep);

/*
 * Request builders: each fills a client_call for one op from the
 * protocol's own request keys (NULL, -1 or 0 where noted: the key is
 * absent). The public calls use them with their policies (an open_key on
 * every open, a seq on every step); tests/client/test_client_vectors.c
 * uses them with the conformance vectors' keys. The call points at `a`.
 */
typedef struct req_open {
    const char *name;
    optimd_open_options o;     /* optimizer, hparams, scheduler,
                                * sched_hparams, durability, groups */
    const char *open_key;      /* NULL: absent */
} req_open;
void req_open_call(const req_open *a, client_call *call);

typedef struct req_register {
    const optimd_named_tensor *params;
    size_t n;
    const char *group;         /* NULL: absent */
} req_register;
void req_register_call(const optimd_session *s, const req_register *a,
                       client_call *call);

typedef struct req_step {
    const optimd_named_tensor *grads;
    size_t n_grads;
    int ret;                   /* `return`: -1 absent, 0 or 1 */
    uint64_t seq;              /* 0: absent */
    const char *client;        /* NULL: absent */
    double clip_value;         /* 0: absent */
    double max_norm;           /* 0: no clip_norm */
    double norm_type;          /* 0: absent */
    int per_group;             /* -1: absent, 0 or 1 */
    const char *worker;        /* NULL: absent */
} req_step;
void req_step_call(const optimd_session *s, const req_step *a,
                   client_call *call);

/* `names` of pull and state: from `names`, or else the names of `from`;
 * absent when `absent`. */
typedef struct req_names {
    const char *op;            /* "pull" or "state" */
    const char *const *names;
    const optimd_named_tensor *from;
    size_t n;
    bool absent;
    const char *worker;        /* pull's `worker`; NULL: absent */
} req_names;
void req_names_call(const optimd_session *s, const req_names *a,
                    client_call *call);

typedef struct req_set_hparams {
    const optimd_hvalue *hp;
    size_t n;
    const char *group;         /* NULL: absent */
} req_set_hparams;
void req_set_hparams_call(const optimd_session *s, const req_set_hparams *a,
                          client_call *call);

typedef struct req_observe {
    double metric;
    const char *group;         /* NULL: absent */
} req_observe;
void req_observe_call(const optimd_session *s, const req_observe *a,
                      client_call *call);

/* An op whose only own key is an optional str: hello's and info's
 * `client`; every op without keys of its own (plugins, sessions, attach,
 * hparams, close, export) with value NULL. */
typedef struct req_str {
    const char *op;
    const char *key;
    const char *value;         /* NULL: absent */
} req_str;
void req_str_call(const optimd_session *s, const req_str *a,
                  client_call *call);

typedef struct req_import {
    const void *snapshot;
    size_t size;
    const char *name;          /* NULL: absent */
    const char *durability;    /* NULL: absent */
} req_import;
void req_import_call(const req_import *a, client_call *call);

typedef struct req_switch {
    const char *optimizer;
    const optimd_hvalue *hp;   /* NULL: `hparams` absent */
    size_t n;
} req_switch;
void req_switch_call(const optimd_session *s, const req_switch *a,
                     client_call *call);

/* reload and shutdown (path and session NULL), load, drop. */
typedef struct req_admin {
    const char *op;            /* "reload", "load", "drop" or "shutdown" */
    const char *admin_token;   /* NULL: absent */
    const char *path;          /* NULL: absent */
    const char *session;       /* drop's session name; NULL: absent */
} req_admin;
void req_admin_call(const req_admin *a, client_call *call);

/*
 * Reply readers: each reads a success reply of its op into the public
 * result types, checking every key it reads, and records a precise
 * E_PROTOCOL failure otherwise. Used by the public calls and the
 * conformance test.
 */
int read_hello(optimd_client *c, const client_reply *rep,
               optimd_server_info *out);
int read_open(optimd_client *c, const client_reply *rep, const char *name,
              optimd_session *out, double *lr, int32_t *existing);
int read_register(optimd_client *c, const client_reply *rep, size_t n);
/* `params_out` must each name a tensor of the reply's `params`. */
int read_step(optimd_client *c, const client_reply *rep,
              optimd_named_tensor *params_out, size_t n_out,
              optimd_group_value *groups, size_t groups_cap,
              optimd_step_result *res);
int read_observe(optimd_client *c, const client_reply *rep, double *lr,
                 optimd_group_value *groups, size_t groups_cap,
                 size_t *n_groups);
int read_state(optimd_client *c, const client_reply *rep,
               optimd_param_state **out, size_t *count);
int read_plugins(optimd_client *c, const client_reply *rep,
                 optimd_plugin_info **out, size_t *count);
int read_sessions(optimd_client *c, const client_reply *rep,
                  optimd_session_summary **out, size_t *count);
int read_export(optimd_client *c, const client_reply *rep, void **snapshot,
                size_t *size);
int read_import(optimd_client *c, const client_reply *rep, const char *name,
                optimd_session *out, uint64_t *steps);
int read_switch(optimd_client *c, const client_reply *rep,
                optimd_switch_result *out);
/* reload and load. */
int read_reload(optimd_client *c, const client_reply *rep,
                optimd_reload_report *out);
/* The per-group values under keys[0] (-> lr), keys[1] (-> next_lr) and
 * keys[2] (-> grad_norm), each a map group name -> float or absent (a
 * NULL key is not read), merged by group name in order of appearance;
 * the first `cap` go to `groups`, *n gets how many there were. */
int read_group_values(optimd_client *c, const client_reply *rep,
                      const char *const keys[3], optimd_group_value *groups,
                      size_t cap, size_t *n);
/* info and attach (`full`), hparams and set_hparams (not). */
int read_details(optimd_client *c, const client_reply *rep, bool full,
                 optimd_session_details **out);

/* Workers (ops_workers.c). */

/* Reads a `workers` map (info, join, leave) into *out (calloc'd; free with
 * workers_info_free). */
int read_workers(optimd_client *c, const char *op, const msgpack_object *o,
                 struct optimd_workers_info **out);
void workers_info_free(struct optimd_workers_info *w);
/* Records what a reply's `workers` map says of how long a push on `s`
 * may wait; a reply without one says the session has none. */
int workers_learn(optimd_client *c, const char *session,
                  const msgpack_object *workers);
/* The same from the options of an open that succeeded. */
int workers_learn_open(optimd_client *c, const char *session,
                       const optimd_open_options *o);
/* The wait of a push by a worker on `s`: `given` when not 0, else what
 * the client learned, else what an `info` request finds out. */
int workers_wait_ms(optimd_client *c, const optimd_session *s,
                    uint32_t given, uint32_t *out);
/* Reads the worker keys of a step reply into *out (only the members
 * out->struct_size covers). */
int read_worker_result(optimd_client *c, const client_reply *rep,
                       optimd_worker_result *out);

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
