/*
 * optimd C client: a small synchronous API over the wire protocol of
 * docs/protocol.md.
 *
 * One `optimd_client` is one REQ socket with one request in flight at a
 * time; it is not thread-safe (use one client per thread). Functions return
 * 0 on success, a positive optimd_error_code when the daemon answered with
 * an error, or a negative OPTIMD_CLIENT_E_* code for a local failure. After
 * any failure optimd_client_error() says what happened.
 */
#ifndef OPTIMD_CLIENT_H
#define OPTIMD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <optimd/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OPTIMD_CLIENT_E_TRANSPORT (-1)  /* connect, send or receive failed */
#define OPTIMD_CLIENT_E_PROTOCOL (-2)   /* the reply broke docs/protocol.md */
#define OPTIMD_CLIENT_E_NOMEM (-3)
#define OPTIMD_CLIENT_E_ARG (-4)        /* a bad argument to this library */

typedef struct optimd_client optimd_client;

/* Element type of a client tensor (same numbers as the plugin ABI). */
#define OPTIMD_CLIENT_F32 1
#define OPTIMD_CLIENT_F64 2

/*
 * A named tensor in caller memory. For inputs `data` is read; for outputs
 * (optimd_client_step, optimd_client_pull) the library writes the reply's
 * values into `data`, after checking that dtype and shape match.
 */
typedef struct optimd_named_tensor {
    const char *name;
    int32_t dtype;             /* OPTIMD_CLIENT_F32 or OPTIMD_CLIENT_F64 */
    uint32_t ndim;
    const int64_t *shape;
    void *data;
} optimd_named_tensor;

/* One hyperparameter value for open / set_hparams. */
typedef enum optimd_hvalue_type {
    OPTIMD_HVALUE_FLOAT = 1,
    OPTIMD_HVALUE_INT = 2,
    OPTIMD_HVALUE_BOOL = 3
} optimd_hvalue_type;

typedef struct optimd_hvalue {
    const char *key;
    int32_t type;              /* optimd_hvalue_type */
    double f;                  /* OPTIMD_HVALUE_FLOAT */
    int64_t i;                 /* OPTIMD_HVALUE_INT and OPTIMD_HVALUE_BOOL (0/1) */
} optimd_hvalue;

/* Parses "key=value": "true"/"false" give a bool, an integer literal an
 * int, anything strtod accepts a float. `key` points into `text`, which is
 * modified. Returns 0, or OPTIMD_CLIENT_E_ARG. */
int optimd_hvalue_parse(char *text, optimd_hvalue *out);

/* A session handle: what the daemon's `open` returned. */
typedef struct optimd_session {
    char name[129];
    char token[33];
} optimd_session;

/* Connects to `url`; each later request waits at most `timeout_ms`
 * (0: 30 s) for its reply. The dial happens in the background (NNG
 * redials a lost connection), so connect succeeds before the daemon is
 * reached; a request that finds no connection within the timeout fails
 * with OPTIMD_CLIENT_E_TRANSPORT. A request that timed out waiting for its
 * reply may or may not have been applied; the library never resends. */
int optimd_client_connect(const char *url, int timeout_ms,
                          optimd_client **out);
void optimd_client_free(optimd_client *c);

/* Text of the last failure (empty after a success); the daemon's message
 * when it answered with an error. Valid until the next call on `c`.
 * optimd_client_error(NULL) is the reason the calling thread's last
 * optimd_client_connect failed, since no client exists to hold it. */
const char *optimd_client_error(const optimd_client *c);

/* The name of a return code: "BAD_TOKEN" for OPTIMD_E_BAD_TOKEN (the names
 * of docs/protocol.md section 6), "TRANSPORT", "PROTOCOL", "NOMEM", "ARG"
 * for the OPTIMD_CLIENT_E_* codes, "OK" for 0, "UNKNOWN" otherwise. */
const char *optimd_error_name(int code);

typedef struct optimd_server_info {
    char server[32];
    char version[32];
    int64_t protocol;
    int64_t abi_major, abi_minor;
    uint64_t max_message;
} optimd_server_info;

int optimd_client_hello(optimd_client *c, optimd_server_info *out);

/* A hyperparameter as a plugin declares it. */
typedef struct optimd_hparam_info {
    char *key;
    int32_t type;              /* optimd_hvalue_type */
    int32_t required;          /* 1: open must give a value */
    int32_t is_mutable;        /* 1: set_hparams may change it */
    int32_t min_exclusive;     /* 1: the bound itself is out of range */
    int32_t max_exclusive;
    double min, max;
    optimd_hvalue def;         /* the default (key == this key); type 0
                                * when the hyperparameter is required */
    char *doc;
} optimd_hparam_info;

typedef struct optimd_plugin_info {
    char *id;
    char *kind;                /* "optimizer" or "scheduler" */
    char *version;
    char *description;
    optimd_hparam_info *hparams;   /* as declared, n_hparams of them */
    size_t n_hparams;
} optimd_plugin_info;

/* Lists the loaded plugins; free with optimd_plugin_list_free. */
int optimd_client_plugins(optimd_client *c, optimd_plugin_info **out,
                          size_t *count);
void optimd_plugin_list_free(optimd_plugin_info *list, size_t count);

typedef struct optimd_session_summary {
    char *name;
    char *optimizer;
    char *scheduler;           /* NULL when the session has none */
    uint64_t params;
    uint64_t steps;
} optimd_session_summary;

int optimd_client_sessions(optimd_client *c, optimd_session_summary **out,
                           size_t *count);
void optimd_session_list_free(optimd_session_summary *list, size_t count);

/* Opens session `name`. `scheduler` may be NULL. On success *out holds the
 * name and token; *lr (if not NULL) the lr of the first step. */
int optimd_client_open(optimd_client *c, const char *name,
                       const char *optimizer, const optimd_hvalue *hp,
                       size_t n_hp, const char *scheduler,
                       const optimd_hvalue *sched_hp, size_t n_sched_hp,
                       optimd_session *out, double *lr);

/* Checks the token; the session must exist. */
int optimd_client_attach(optimd_client *c, const optimd_session *s);
int optimd_client_close(optimd_client *c, const optimd_session *s);

int optimd_client_register(optimd_client *c, const optimd_session *s,
                           const optimd_named_tensor *params, size_t n);

/* Sends `grads` and, when `params_out` is not NULL, writes the updated
 * values of parameters named in it (by name) into their `data`; each of
 * them must have a gradient in `grads` (OPTIMD_CLIENT_E_ARG otherwise).
 * `lr_used` and `steps` may be NULL. */
int optimd_client_step(optimd_client *c, const optimd_session *s,
                       const optimd_named_tensor *grads, size_t n_grads,
                       optimd_named_tensor *params_out, size_t n_out,
                       double *lr_used, uint64_t *steps);

/* What a step reply says besides the parameters. */
typedef struct optimd_step_result {
    uint64_t steps;            /* the session's step count after this step */
    double lr;                 /* the lr this step used */
    double next_lr;            /* the lr the next step will use */
} optimd_step_result;

/* optimd_client_step, reporting next_lr too. `result` may be NULL. When
 * `n_out` is 0 the request says `return: false`, so the daemon sends no
 * parameters back. Every name in `params_out` must also be in `grads`:
 * the daemon returns only the parameters it updated. */
int optimd_client_step_ex(optimd_client *c, const optimd_session *s,
                          const optimd_named_tensor *grads, size_t n_grads,
                          optimd_named_tensor *params_out, size_t n_out,
                          optimd_step_result *result);

/* Fetches the named parameters into their `data`. */
int optimd_client_pull(optimd_client *c, const optimd_session *s,
                       optimd_named_tensor *params, size_t n);

int optimd_client_set_hparams(optimd_client *c, const optimd_session *s,
                              const optimd_hvalue *hp, size_t n);

typedef struct optimd_session_info {
    uint64_t steps;
    double base_lr;
    double lr;                 /* the lr the next step will use */
    uint64_t params;
} optimd_session_info;

int optimd_client_info(optimd_client *c, const optimd_session *s,
                       optimd_session_info *out);

#ifdef __cplusplus
}
#endif

#endif /* OPTIMD_CLIENT_H */
