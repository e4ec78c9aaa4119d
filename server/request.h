/* A request as the op handlers see it, and what they share across the
 * ops_*.c files (docs/protocol.md): ops.c decodes the envelope and
 * dispatches to one handler per op. Internal to the daemon. */
#ifndef OPTIMD_SERVER_REQUEST_H
#define OPTIMD_SERVER_REQUEST_H

#include "server.h"
#include "session.h"
#include "store.h"
#include "wire.h"

#include <msgpack.h>
#include <nng/nng.h>
#include <stdbool.h>
#include <stdint.h>

#ifndef OPTIMD_VERSION
#define OPTIMD_VERSION "0.0.0"
#endif

typedef struct request {
    server *srv;
    const void *raw;           /* the request as received, for the log */
    size_t raw_len;
    /* The message `raw` is the body of. A handler may take it over as its
     * reply once nothing reads the request any more: it then sets this to
     * NULL and w->msg to it. */
    nng_msg *request_msg;
    const msgpack_object *root;
    uint64_t id;
    wire_writer *w;
    request_error err;
    /* Plugins this request looked up, each with a reference it drops when
     * done (a session takes references of its own). */
    const plugin **held;
    size_t n_held;
    const char *op;            /* the dispatched op's name, for the metrics */
    request_ticket *ticket;    /* from the transport: parking a request */
    nng_pipe pipe;             /* the connection it came on (shm_attach asks what kind) */
} request;

/* request.c */
const plugin *request_hold(request *r, plugin *p);
msgpack_packer *reply_begin(request *r, uint32_t n_pairs);
void write_error(wire_writer *w, uint64_t id, const request_error *err);
session *request_session(request *r);
store_change change_of(request *r);
const char *kind_name(uint32_t kind);
int check_memory_adding(request *r, session *s, uint64_t adding);
int check_memory(request *r, session *s, const msgpack_object *params);
int check_tensor_count(request *r, const msgpack_object *map, const char *what);
void pack_param(msgpack_packer *pk, const session *s, size_t i);
void pack_param_rows(msgpack_packer *pk, const session *s, size_t i, const msgpack_object *rows_obj);
int resolve_names(request *r, session *s, size_t **out, size_t *count);
extern const char *const durability_names[];

/* ops_daemon.c */
int op_hello(request *r);
int op_plugins(request *r);
int op_reload(request *r);
int op_load(request *r);
int op_drop(request *r);
int op_shutdown(request *r);

/* ops_session.c */
bool valid_session_name(const char *s, size_t len);
extern const char *const name_rule;   /* what valid_session_name accepts, for errors */
int get_session_name(request *r, bool required, char out[SESSION_NAME_MAX + 1], bool *given);
int get_durability(request *r, int *out);
int admit_session(request *r, session *s, char name[SESSION_NAME_MAX + 1],
                  char token[SESSION_TOKEN_LEN + 1]);
int op_open(request *r);
int op_info(request *r);
int op_hparams(request *r);
int op_set_hparams(request *r);
int close_session(request *r, session *s);
int op_close(request *r);
int op_sessions(request *r);
int op_register(request *r);
int op_observe(request *r);
int op_switch(request *r);

/* ops_step.c */
uint32_t pack_step_counter_pairs(msgpack_packer *pk, const session *s, const step_result *res,
                                 const step_clip *clip);
msgpack_packer *pack_step_counters(request *r, const session *s, const step_result *res,
                                   const step_clip *clip, uint32_t extra);
void pack_step_reply(request *r, session *s, const msgpack_object *grads, bool want_params,
                     const step_clip *clip, const step_result *res, uint32_t extra);
int apply_step(request *r, session *s, const msgpack_object *grads, const step_identity *id,
               const step_clip *clip, step_result *res);
int op_step(request *r);

/* step_reply.c: a plain step's reply with the parameters written into it
 * while the step runs. */
bool step_reply_can_stream(const session *s, const msgpack_object *grads);
int step_streaming_reply(request *r, session *s, const msgpack_object *grads, const step_identity *id,
                         const step_clip *clip);
int op_pull(request *r);
int op_state(request *r);
int op_abandon_step(request *r);

/* ops_workers.c */
void workers_abandon(session *s, const char *why);
int worker_push(request *r, session *s, const msgpack_object *grads, bool want_params,
                const step_identity *id, const step_clip *clip);
void pack_workers(msgpack_packer *pk, const session *s);
int op_join(request *r);
int op_leave(request *r);

/* ops_shm.c */
int op_shm_attach(request *r);
int op_shm_step(request *r);
int op_shm_detach(request *r);

/* ops_transfer.c */
int op_export(request *r);
int op_import(request *r);
int op_unregister(request *r);

#endif
