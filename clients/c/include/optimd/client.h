/*
 * optimd C client: a small synchronous API over the wire protocol of
 * docs/protocol.md.
 *
 * One `optimd_client` is one REQ socket with one request in flight at a
 * time; it is not thread-safe (use one client per thread). Functions return
 * 0 on success, a positive optimd_error_code when the daemon answered with
 * an error, or a negative OPTIMD_CLIENT_E_* code for a local failure. After
 * any failure optimd_client_error() says what happened.
 *
 * Every step is sequenced (protocol.md, `step`): a client has an id and
 * numbers its steps per session, so a step sent twice is applied once.
 * A client made by optimd_client_connect_ex re-sends a request on its own
 * after a transport failure (a daemon restart), within a retry budget;
 * see optimd_client_options.
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
 * reply may or may not have been applied; a client made here never
 * resends on its own (optimd_client_connect_ex makes one that does). Its
 * steps are sequenced all the same, so a step called again after such a
 * failure is applied at most once (see optimd_client_next_seq). */
int optimd_client_connect(const char *url, int timeout_ms,
                          optimd_client **out);
void optimd_client_free(optimd_client *c);

/*
 * How a client made by optimd_client_connect_ex behaves. Fill it with
 * optimd_client_options_init, then change what you need. The library reads
 * a member only when `struct_size` covers it (the rule of docs/abi.md), so
 * a caller built against this header keeps working when members are added
 * at the end; members it does not cover take their defaults.
 *
 * Retries. A request that fails in transport (no connection within the
 * timeout, the connection lost before the reply, no reply within the
 * timeout) is sent again on a fresh connection, after a pause that starts
 * at `backoff_ms` and doubles up to `backoff_max_ms`, at most `max_retries`
 * times; then the call fails with OPTIMD_CLIENT_E_TRANSPORT, saying so. A
 * reply from the daemon, error or not, is never retried. What is re-sent:
 *   - a request that certainly did not reach the daemon (it found no
 *     connection within the timeout): every op;
 *   - one that may have been applied (sent, then no reply): the reads
 *     (hello, plugins, sessions, attach, info, pull), `step` (its `seq`
 *     makes the daemon answer a repeat with `duplicate` instead of applying
 *     it again), `register` (a repeat that meets PARAM_EXISTS checks that
 *     the parameters hold exactly the values sent, and then succeeds),
 *     `close` (a repeat that meets UNKNOWN_SESSION succeeds: the first one
 *     closed it), and `open` (every attempt carries the same random
 *     `open_key`, so a repeat whose lost attempt created the session gets
 *     that session and its token);
 *   - `set_hparams` is not: between the lost attempt and the repeat another
 *     client's step could make "set lr" mean something else.
 * Each attempt waits up to `timeout_ms` for a connection and up to
 * `timeout_ms` for its reply, so a daemon that stays away costs about
 * (1 + max_retries) * timeout_ms plus the pauses before the call fails.
 */
typedef struct optimd_client_options {
    size_t struct_size;    /* sizeof(optimd_client_options) */
    int timeout_ms;        /* per attempt, > 0 (default 30000) */
    int max_retries;       /* re-sends after a transport failure, >= 0
                            * (default 5; 0: never, like ..._connect) */
    int backoff_ms;        /* pause before the first re-send (default 100) */
    int backoff_max_ms;    /* longest pause (default 2000) */
    const char *client_id; /* 1 to 64 bytes naming this client's sequence
                            * numbers; NULL (default): 32 random hex
                            * digits. Copied. */
    /* Called before each re-send with a one-line account of the failure
     * and the next attempt (for a log); NULL: nothing is called. */
    void (*on_retry)(void *arg, const char *message);
    void *on_retry_arg;
    /* TLS, for a tls+tcp:// URL (and only there: any of these with another
     * scheme is OPTIMD_CLIENT_E_ARG). The files are PEM and are read once,
     * by optimd_client_connect_ex; the strings need not outlive it.
     *   tls_ca_file: the CA (or chain) the daemon's certificate must chain
     *     to; required for tls+tcp://, since a connection that checks
     *     nothing would accept any daemon.
     *   tls_cert_file, tls_key_file: this client's certificate and its
     *     private key, both or neither; needed when the daemon was started
     *     with --tls-ca (client certificates required).
     *   tls_server_name: the name the daemon's certificate must carry;
     *     NULL: the URL's host. A certificate is matched by DNS name, so
     *     for tls+tcp://127.0.0.1:PORT give the name it was issued for
     *     (e.g. "localhost").
     * A daemon that refuses the handshake (no or untrusted client
     * certificate), or whose certificate this client does not trust, is
     * reported as OPTIMD_CLIENT_E_TRANSPORT by the first request once its
     * timeout has passed without a connection (then one more connection,
     * bounded by the same timeout, finds out why), with the TLS failure in
     * optimd_client_error; such a failure is not retried, since sending
     * again would meet the same certificates. */
    const char *tls_ca_file;
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_server_name;
} optimd_client_options;

/* Sets struct_size and every default. */
void optimd_client_options_init(optimd_client_options *opts);

/* optimd_client_connect with options; `opts` NULL takes every default
 * (so retries are on: 5 of them). */
int optimd_client_connect_ex(const char *url,
                             const optimd_client_options *opts,
                             optimd_client **out);

/* The id this client sends as `client` with each step (NUL-terminated,
 * valid as long as `c`). */
const char *optimd_client_id(const optimd_client *c);

/* Changes the client id (1 to 64 bytes, copied) and forgets every sequence
 * number: the next step on each session is seq 1 of the new id. Use it
 * before the first step, e.g. to resume an id kept from an earlier run
 * together with optimd_client_set_next_seq. */
int optimd_client_set_id(optimd_client *c, const char *client_id);

/* The `seq` the next step on `session` will carry (1 for a session this
 * client has not stepped, 0 if `c` or `session` is NULL). A seq is used up
 * once the daemon answers the step (success, duplicate or error); after a
 * step failed in transport, whose outcome is unknown, the next step on
 * that session carries the same seq again, so calling the step again with
 * the same gradients applies it exactly once. */
uint64_t optimd_client_next_seq(const optimd_client *c, const char *session);

/* Sets the seq of the next step on `session` (1 to 2^53). A process that
 * reuses a client id must start above the highest seq the daemon applied
 * for it, or its steps are answered as duplicates. */
int optimd_client_set_next_seq(optimd_client *c, const char *session,
                               uint64_t seq);

/* How many times the last call re-sent its request (0 when the first
 * attempt got an answer). */
unsigned optimd_client_last_retries(const optimd_client *c);

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
    struct optimd_slot_info *slots; /* optimizers: per-parameter state */
    size_t n_slots;
    char **dtypes;             /* optimizers: "f32", "f64" they update */
    size_t n_dtypes;
    int sliced;                /* optimizers: 1 if its steps may be sent in
                                * parts (docs/protocol.md, sliced steps) */
} optimd_plugin_info;

/* A per-parameter state slot an optimizer declares (`state` returns them
 * by key). */
typedef struct optimd_slot_info {
    char *key;
    char *dtype;               /* "param", "f32" or "f64" */
    char *shape;               /* "param", "scalar", "rows", "cols", or one
                                * this library does not know */
    char *enabled_by;          /* the bool hyperparameter that switches it
                                * on; NULL: always on */
    char *doc;
} optimd_slot_info;

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

/* What optimd_client_open_ex creates. Fill it with
 * optimd_open_options_init; members are read only when `struct_size`
 * covers them, as for optimd_client_options. */
typedef struct optimd_open_options {
    size_t struct_size;                /* sizeof(optimd_open_options) */
    const char *optimizer;             /* plugin id (required) */
    const optimd_hvalue *hparams;
    size_t n_hparams;
    const char *scheduler;             /* NULL: none */
    const optimd_hvalue *sched_hparams;
    size_t n_sched_hparams;
    /* "always", "interval" or "none" (protocol.md, `open`); NULL: the
     * daemon's default ("interval"). The daemon judges the value. */
    const char *durability;
    /* Parameter groups besides "default" (which the members above
     * configure), n_groups of them; see optimd_group_spec. */
    const struct optimd_group_spec *groups;
    size_t n_groups;
    /* 16 to 64 printable ASCII bytes (0x21 to 0x7e) naming this open, so
     * that sending it again (even from another process, after a crash)
     * gets the session it created instead of SESSION_EXISTS. NULL: a
     * random key, the same for every re-send of this call. A secret like
     * the token. */
    const char *open_key;
    /* Out, when not NULL: 1 when the daemon answered with the session an
     * earlier open with the same open_key created (`existing`), else 0. */
    int32_t *existing;
    /* A combined schedule (`scheduler` "sequential" or "chained"): its
     * schedulers, 2 to 8, and for "sequential" the epochs where each after
     * the first starts (n_schedulers - 1 rising positive integers). */
    const struct optimd_sched_spec *schedulers;
    size_t n_schedulers;
    const int64_t *milestones;
    size_t n_milestones;
    /* 1: wrap the optimizer in Lookahead: every lookahead_k steps of a
     * parameter (0: the daemon's default, 5) its slow weights move
     * lookahead_alpha of the way to it (0: the default, 0.5). */
    int32_t lookahead;
    int64_t lookahead_k;
    double lookahead_alpha;
    /* Workers (protocol.md, `open`'s `workers`): a session that several
     * workers push to, each after optimd_client_join. workers_mode is
     * "sync", "async" or "bounded"; NULL: an ordinary session, and the
     * members below must be 0 / NULL. Each member below is sent only when
     * set (0 / NULL: the daemon's default), and only for the modes it
     * belongs to; setting one of another mode is OPTIMD_CLIENT_E_ARG
     * (a mode this library does not know goes to the daemon as given). */
    const char *workers_mode;
    uint32_t workers_count;            /* sync: pushes per round, and the
                                        * most members (required) */
    const char *workers_reduce;        /* sync: "mean" (default) or "sum" */
    uint32_t workers_timeout_ms;       /* sync, bounded: the longest a push
                                        * waits (default 60000) */
    const char *workers_on_timeout;    /* sync: "fail" (default) or
                                        * "proceed" */
    uint32_t workers_max_staleness;    /* bounded: default 0 */
} optimd_open_options;

/* One scheduler of a combined schedule. */
typedef struct optimd_sched_spec {
    const char *scheduler;     /* plugin id */
    const optimd_hvalue *sched_hparams;
    size_t n_sched_hparams;
} optimd_sched_spec;

/* Zeroes the options and sets struct_size. */
void optimd_open_options_init(optimd_open_options *opts);

#define OPTIMD_GROUP_NAME_MAX 64
#define OPTIMD_MAX_GROUPS 64   /* "default" and at most 63 more */

/* One parameter group of optimd_open_options (torch's param_groups). */
typedef struct optimd_group_spec {
    const char *name;          /* 1 to 64 bytes of A-Z a-z 0-9 _ . -,
                                * not "default" */
    /* Applied over the default group's values: name only what differs. */
    const optimd_hvalue *hparams;
    size_t n_hparams;
    /* NULL: the default group's scheduler, its sched_hparams the starting
     * point (unless no_scheduler); else a scheduler plugin id, its
     * defaults the starting point. */
    const char *scheduler;
    int32_t no_scheduler;      /* 1: this group has no scheduler */
    const optimd_hvalue *sched_hparams;   /* over that starting point */
    size_t n_sched_hparams;
    /* With scheduler "sequential" or "chained", as in
     * optimd_open_options. */
    const optimd_sched_spec *schedulers;
    size_t n_schedulers;
    const int64_t *milestones;
    size_t n_milestones;
} optimd_group_spec;

/* optimd_client_open with options, durability among them. */
int optimd_client_open_ex(optimd_client *c, const char *name,
                          const optimd_open_options *opts,
                          optimd_session *out, double *lr);

/* Checks the token; the session must exist. Like info it sends this
 * client's id, and when the reply carries `client_seq` (the highest seq
 * the daemon applied for that id; a daemon that does not say is fine) the
 * next seq on the session is raised above it, so a process that resumes a
 * kept client id resumes its numbering too. */
int optimd_client_attach(optimd_client *c, const optimd_session *s);
int optimd_client_close(optimd_client *c, const optimd_session *s);

/* Ends the session's pending sliced step (sent as `seq` by `client`; NULL
 * for "") as it stands, for a client that lost its gradients: the elements
 * its parts updated stay updated, and it counts as a step. `steps` (may be
 * NULL) gets the session's step count after it. docs/protocol.md,
 * abandon_step. Ending this client's own failed step (client =
 * optimd_client_id(c)) moves its numbering past that seq. */
int optimd_client_abandon_step(optimd_client *c, const optimd_session *s,
                               uint64_t seq, const char *client,
                               uint64_t *steps);

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
    uint64_t seq;              /* the seq this step carried */
    int32_t duplicate;         /* 1: the daemon had applied this seq
                                * already (a retry, or a step sent again
                                * after a transport failure) and did not
                                * apply it again; steps, lr and next_lr are
                                * those it recorded then, the parameters
                                * their current values */
    /* Filled by optimd_client_step_opts (optimd_client_step_ex leaves
     * NaN and 0): the total gradient norm before clipping, when clip_norm
     * was given without clip_per_group (NaN otherwise, and on a
     * duplicate); and how many groups the reply gave per-group values for
     * (0 for a session of one group and on a duplicate). */
    double grad_norm;
    size_t n_groups;
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
    char durability[16];       /* "always", "interval", "none"; "" when
                                * the daemon does not say */
    char optimizer[65];        /* plugin ids are at most 64 bytes */
    char scheduler[65];        /* "" when the session has none */
} optimd_session_info;

int optimd_client_info(optimd_client *c, const optimd_session *s,
                       optimd_session_info *out);

/* The session as one safetensors file (protocol.md, `export`): on success
 * *snapshot is a malloc'd copy of *size bytes; free() it. */
int optimd_client_export(optimd_client *c, const optimd_session *s,
                         void **snapshot, size_t *size);

/* Creates a session from an exported snapshot. `name` NULL keeps the stored
 * name; `durability` NULL keeps the stored policy. *out gets the name and
 * its new token; *steps (if not NULL) its step count. Not re-sent once it
 * may have reached the daemon: a repeat could not learn the new token. */
int optimd_client_import(optimd_client *c, const void *snapshot, size_t size,
                         const char *name, const char *durability,
                         optimd_session *out, uint64_t *steps);

/* optimd_client_register into parameter group `group` (NULL:
 * "default"). */
int optimd_client_register_ex(optimd_client *c, const optimd_session *s,
                              const optimd_named_tensor *params, size_t n,
                              const char *group);

/* Per-group values of a step or observe reply, in a caller array. */
typedef struct optimd_group_value {
    char name[OPTIMD_GROUP_NAME_MAX + 1];
    double lr;                 /* step: the lr this step used (`lrs`);
                                * observe: the group's next lr (`lrs`) */
    double next_lr;            /* step: `next_lrs`; NaN for observe */
    double grad_norm;          /* step with clip_per_group: this group's
                                * norm before clipping; NaN when the group
                                * had no gradient in the step */
} optimd_group_value;

/* Clipping, and where per-group values go. Fill it with
 * optimd_step_options_init; members are read only when `struct_size`
 * covers them. */
typedef struct optimd_step_options {
    size_t struct_size;        /* sizeof(optimd_step_options) */
    /* > 0: clamp every gradient element to [-clip_value, clip_value]
     * (torch's clip_grad_value_); 0: no. */
    double clip_value;
    /* > 0: torch's clip_grad_norm_ with this max_norm; 0: no. Applied
     * after clip_value. */
    double clip_norm;
    double norm_type;          /* 0: the daemon's default, 2; INFINITY:
                                * the max norm */
    int32_t clip_per_group;    /* 1: one norm per group */
    /* Out: room for groups_cap per-group values (a session with more than
     * one group; OPTIMD_MAX_GROUPS is always enough); NULL: not wanted. */
    optimd_group_value *groups;
    size_t groups_cap;
    /* A session with workers: every step is a push by `worker` (joined
     * with optimd_client_join; NULL: none, for an ordinary session). */
    const char *worker;
    /* Out, when not NULL: what the reply adds for a worker. */
    struct optimd_worker_result *worker_result;
    /* The longest the daemon may hold this push before answering (sync:
     * the session's timeout_ms; bounded: the same; async: 0). The reply is
     * awaited for the client's timeout_ms plus this. 0: what this client
     * learned of the session (its open, join, leave or info_ex), or, when
     * it learned nothing, what an `info` request sent first says. */
    uint32_t worker_wait_ms;
    /* > 0: send the step in parts of about this many elements (a sliced
     * step, docs/protocol.md `step`): the gradients, in the order given,
     * are cut into consecutive parts, a tensor a cut crosses going as
     * element ranges. The daemon applies each part when it arrives; the
     * parts go one after another on this client's one request at a time,
     * so what it buys is messages of part_elements elements instead of one
     * holding the whole step. Needs an element-wise optimizer (the
     * plugin's `sliced`); not with clip_norm or worker. If a part fails,
     * the step stays pending on the session with the parts before it
     * applied, and the client keeps the step's seq: call again with the
     * same gradients to complete it, or end it with
     * optimd_client_abandon_step (info's pending_seq names it); the
     * outputs then hold the new values of the parts before the failing
     * one. 0: one message. */
    uint64_t part_elements;
} optimd_step_options;

/* What a worker's step reply adds (protocol.md, **Workers**). Caller
 * memory: set struct_size (optimd_worker_result_init does); the library
 * writes only the members it covers. */
typedef struct optimd_worker_result {
    size_t struct_size;        /* sizeof(optimd_worker_result) */
    uint64_t pushes;           /* this worker's pushes applied so far, this
                                * one included */
    uint64_t staleness;        /* steps the session took since the
                                * parameters this worker last received,
                                * not counting this one */
    uint32_t combined;         /* sync: the pushes the round combined
                                * (0 on a duplicate); else 0 */
    uint64_t lead;             /* bounded: its pushes minus the slowest
                                * member's when admitted; else 0 */
    int32_t waited;            /* bounded: 1 when it waited for the
                                * slowest; else 0 */
} optimd_worker_result;

/* Zeroes the result and sets struct_size. */
void optimd_worker_result_init(optimd_worker_result *r);

/* Zeroes the options and sets struct_size. */
void optimd_step_options_init(optimd_step_options *opts);

/* optimd_client_step_ex with options (`opts` NULL: none). The first
 * min(result->n_groups, groups_cap) entries of opts->groups are
 * written; result->n_groups > groups_cap says some did not fit. */
int optimd_client_step_opts(optimd_client *c, const optimd_session *s,
                            const optimd_named_tensor *grads, size_t n_grads,
                            optimd_named_tensor *params_out, size_t n_out,
                            const optimd_step_options *opts,
                            optimd_step_result *result);

/* Reports a metric to the schedulers that take one (`plateau`): to
 * `group`'s, or (NULL) every group's whose scheduler takes metrics. NaN
 * counts as a bad epoch. *lr (if not NULL) gets the next lr of `group`
 * (NULL: the default group); up to groups_cap entries of `groups` get
 * every group's next lr, *n_groups (if not NULL) how many the reply
 * named. Not re-sent once it may have reached the daemon: a repeat would
 * count the metric twice. */
int optimd_client_observe(optimd_client *c, const optimd_session *s,
                          double metric, const char *group, double *lr,
                          optimd_group_value *groups, size_t groups_cap,
                          size_t *n_groups);

/* A tensor the library allocated; `data` is in host byte order. */
typedef struct optimd_tensor {
    char *name;
    int32_t dtype;             /* OPTIMD_CLIENT_F32 or OPTIMD_CLIENT_F64 */
    uint32_t ndim;
    int64_t shape[8];
    void *data;
    size_t nbytes;
} optimd_tensor;

/* The optimizer state of one parameter: its slots, by key (`name` of
 * each tensor). Empty before the parameter's first step. */
typedef struct optimd_param_state {
    char *name;
    optimd_tensor *slots;
    size_t n_slots;
} optimd_param_state;

/* The optimizer state of the parameters named (names NULL: every one;
 * n_names 0 with names not NULL: none), in the reply's order. Free with
 * optimd_param_state_free. */
int optimd_client_state(optimd_client *c, const optimd_session *s,
                        const char *const *names, size_t n_names,
                        optimd_param_state **out, size_t *count);
void optimd_param_state_free(optimd_param_state *list, size_t count);

/* One scheduler of a combined schedule, as the daemon reports it. */
typedef struct optimd_sched_info {
    char *scheduler;
    optimd_hvalue *sched_hparams;
    size_t n_sched_hparams;
} optimd_sched_info;

/* A parameter group as the daemon reports it. */
typedef struct optimd_group_info {
    char *name;
    char *scheduler;           /* NULL: none */
    optimd_sched_info *schedulers;   /* a combined schedule's; else none */
    size_t n_schedulers;
    uint64_t *milestones;      /* "sequential" only */
    size_t n_milestones;
    optimd_hvalue *hparams;    /* every optimizer hyperparameter */
    size_t n_hparams;
    optimd_hvalue *sched_hparams;
    size_t n_sched_hparams;
    double base_lr;
    double lr;                 /* the lr its next step will use */
    uint64_t params;           /* parameters in it */
} optimd_group_info;

typedef struct optimd_param_info {
    char *name;
    char *group;               /* NULL when the daemon does not say */
    int32_t dtype;
    uint32_t ndim;
    int64_t shape[8];
    uint64_t steps;            /* steps that updated it */
} optimd_param_info;

/* What info, attach, hparams and set_hparams say. Keys a reply does not
 * carry stay NULL / 0: hparams and set_hparams fill only the default
 * group's settings and `groups`. */
typedef struct optimd_session_details {
    char *session;
    char *durability;
    char *optimizer;
    char *optimizer_version;
    uint64_t steps;
    int32_t has_client_seq;    /* 1: client_seq is the daemon's */
    uint64_t client_seq;
    optimd_param_info *params;
    size_t n_params;
    int32_t has_lookahead;     /* 1: Lookahead wraps the optimizer */
    int64_t lookahead_k;
    double lookahead_alpha;
    /* The default group's: */
    char *scheduler;           /* NULL: none */
    optimd_sched_info *schedulers;
    size_t n_schedulers;
    uint64_t *milestones;
    size_t n_milestones;
    optimd_hvalue *hparams;
    size_t n_hparams;
    optimd_hvalue *sched_hparams;
    size_t n_sched_hparams;
    double base_lr;
    double lr;
    /* Every group, "default" first; n_groups 0 from a daemon that
     * predates groups. */
    optimd_group_info *groups;
    size_t n_groups;
    /* A session with workers: its settings and members; NULL otherwise
     * (and from hparams and set_hparams). */
    struct optimd_workers_info *workers;
    /* A sliced step between its first and last part (docs/protocol.md,
     * step): who sent it, its parts and how many are in. */
    int32_t has_pending_step;
    char *pending_client;
    uint64_t pending_seq;
    uint64_t pending_count;
    uint64_t pending_applied;
} optimd_session_details;

void optimd_session_details_free(optimd_session_details *d);

/* One member of a session's workers. */
typedef struct optimd_worker_info {
    char *name;
    uint32_t rank;             /* the order a sync round sums in */
    uint64_t pushes;           /* pushes applied since it joined (or the
                                * daemon restarted) */
    uint64_t staleness;        /* steps since the parameters it last got */
    int32_t waiting;           /* 1: a push of it waits */
} optimd_worker_info;

/* A session's workers as info, join and leave report them: the settings
 * (every key of the mode filled in; the others 0 / NULL) and the members
 * in rank order. */
typedef struct optimd_workers_info {
    char *mode;                /* "sync", "async" or "bounded" */
    uint32_t count;            /* sync */
    char *reduce;              /* sync */
    char *on_timeout;          /* sync */
    uint32_t timeout_ms;       /* sync, bounded */
    uint32_t max_staleness;    /* bounded */
    uint32_t round_pushes;     /* sync: pushes the round in progress has */
    optimd_worker_info *members;
    size_t n_members;
} optimd_workers_info;

/* Everything `info` says, with the session's groups and parameters;
 * raises the next seq like optimd_client_attach. Free *out with
 * optimd_session_details_free. */
int optimd_client_info_ex(optimd_client *c, const optimd_session *s,
                          optimd_session_details **out);

/* The `hparams` op. */
int optimd_client_hparams(optimd_client *c, const optimd_session *s,
                          optimd_session_details **out);

/* optimd_client_set_hparams for one group (`group` NULL: every group,
 * each keeping the keys not given). *out (when `out` is not NULL) gets
 * the settings after the change. */
int optimd_client_set_hparams_ex(optimd_client *c, const optimd_session *s,
                                 const optimd_hvalue *hp, size_t n,
                                 const char *group,
                                 optimd_session_details **out);

/*
 * Workers (protocol.md, **Workers**): a session opened with workers_mode
 * (optimd_open_options) is stepped by its members, each a worker that
 * joined it; optimd_client_step_opts with opts->worker makes the step that
 * worker's push. Use one client per worker thread (a client is not
 * thread-safe, and a sync push blocks until its round is complete).
 *
 * Waiting. A sync push returns when the round has `count` pushes, and a
 * bounded push that is too far ahead waits for the slowest member: either
 * may be held up to the session's timeout_ms before the daemon answers
 * (TIMEOUT, or the step). Such a push awaits its reply for the client's
 * timeout_ms plus that wait (opts->worker_wait_ms, or else what the client
 * learned of the session), so a long wait is neither cut short into a
 * transport failure nor re-sent while it waits. The client's own
 * timeout_ms then only has to cover the daemon's work, as for any step. A
 * push that still gets no reply is re-sent with the same seq (with retries
 * on): the daemon answers a repeat of an applied round as a `duplicate`,
 * and a repeat of a push still waiting takes its place in the round.
 */

/* Makes `worker` (1 to 64 bytes) a member of session `s`, at the lowest
 * free rank (*rank, when not NULL); joining again changes nothing and
 * gives the same rank. A session without workers is
 * OPTIMD_E_BAD_REQUEST; a full one OPTIMD_E_LIMIT. */
int optimd_client_join(optimd_client *c, const optimd_session *s,
                       const char *worker, uint32_t *rank);

/* Removes `worker`; a push of it that waits is answered
 * OPTIMD_E_UNKNOWN_WORKER. Not a member: OPTIMD_E_UNKNOWN_WORKER (except
 * for a repeat after a lost reply, which the lost attempt's leave
 * explains: that is success). */
int optimd_client_leave(optimd_client *c, const optimd_session *s,
                        const char *worker);

/* optimd_client_pull as `worker` (NULL: as optimd_client_pull): the
 * worker's staleness counts from these parameters. */
int optimd_client_pull_as(optimd_client *c, const optimd_session *s,
                          const char *worker, optimd_named_tensor *params,
                          size_t n);

/*
 * Changing what runs: switch (a session) and the admin ops reload, load,
 * drop and shutdown (protocol.md). Their results live in one block the library allocates per
 * call; the strings point into it. Free it with the matching _free, which
 * also zeroes the struct (freeing a zeroed one is fine, so a caller may
 * free after a failed call too).
 */

/* What optimd_client_switch says. */
typedef struct optimd_switch_result {
    const char *optimizer;         /* the plugin id the session now uses */
    const char *optimizer_version; /* that plugin's version */
    const char *const *carried;    /* slot keys whose state was carried
                                    * over, n_carried of them; the other
                                    * slots of the new optimizer start
                                    * zero-filled */
    size_t n_carried;
    void *mem;                     /* owned; see optimd_switch_result_free */
} optimd_switch_result;

void optimd_switch_result_free(optimd_switch_result *r);

/* Moves session `s` to optimizer plugin `optimizer` between two steps.
 * The new optimizer takes the session's values for the hyperparameters it
 * shares (same type), its defaults for the rest, then `hp` (n of them;
 * n 0: none) over them; steps, parameters, groups, schedules and seqs
 * carry on. All or nothing: on an error the session is as it was.
 * `result` may be NULL. Not re-sent once it may have reached the daemon:
 * had the lost attempt switched, a repeat would switch the session from
 * the new optimizer to itself, reporting every slot as carried instead of
 * what the switch that happened carried, and would lay `hp` again over any
 * change made in between. */
int optimd_client_switch(optimd_client *c, const optimd_session *s,
                         const char *optimizer, const optimd_hvalue *hp,
                         size_t n, optimd_switch_result *result);

/* One plugin file a reload or load tried. */
typedef struct optimd_plugin_file {
    const char *path;          /* the file, as the daemon named it */
    int32_t loaded;            /* 1: it is now the current version of `id` */
    const char *id;            /* loaded: the plugin id; else NULL */
    const char *version;       /* loaded: its version; else NULL */
    const char *error;         /* refused: why (the running version, if
                                * any, stays); else NULL */
} optimd_plugin_file;

/* What optimd_client_reload and optimd_client_load say. */
typedef struct optimd_reload_report {
    const optimd_plugin_file *files;  /* n_files of them, in the daemon's
                                       * order */
    size_t n_files;
    size_t n_refused;          /* files with loaded 0 */
    /* reload only: 1 when the request was re-sent after an attempt whose
     * reply was lost; that attempt may have loaded files this report,
     * the answer to the repeat, does not list (they no longer changed). */
    int32_t maybe_incomplete;
    void *mem;                 /* owned; see optimd_reload_report_free */
} optimd_reload_report;

void optimd_reload_report_free(optimd_reload_report *r);

/* Admin op `reload`: the daemon rescans its plugin directories and loads
 * every new or changed file (after its --validator, when it has one) as
 * the current version of its id; sessions move to it between two steps.
 * `admin_token` is the daemon's --admin-token (a wrong one:
 * OPTIMD_E_BAD_TOKEN). A refused file is not a failure of the call: it is
 * a report entry with loaded 0. `report` may be NULL. Re-sent like the
 * reads: a rescan loads only what changed since the last one, so a repeat
 * loads nothing twice (see maybe_incomplete). */
int optimd_client_reload(optimd_client *c, const char *admin_token,
                         optimd_reload_report *report);

/* Admin op `load`: loads the plugin file at `path` (on the daemon's
 * machine) as a reload loads a changed one. A file the daemon refuses is
 * OPTIMD_E_PLUGIN, with the reason in optimd_client_error (wrong ABI
 * major, no optimd_plugin symbol, the validator's first failing check,
 * ...). `report` may be NULL. Not re-sent once it may have reached the
 * daemon: each load installs the file as a new version, so a repeat would
 * move every session through one more swap, and, had someone loaded
 * another version in between, would put this older one back over it. */
int optimd_client_load(optimd_client *c, const char *admin_token,
                       const char *path, optimd_reload_report *report);

/* Admin op `drop`: closes session `name` as optimd_client_close does,
 * without its token (for a session whose token was lost); an unknown name
 * is OPTIMD_E_UNKNOWN_SESSION. Not re-sent once it may have reached the
 * daemon: had the lost attempt dropped it and someone opened a session of
 * that name since, a repeat would drop that one. A caller that repeats a
 * drop itself after a transport failure may take UNKNOWN_SESSION as done,
 * as close does. */
int optimd_client_drop(optimd_client *c, const char *admin_token,
                       const char *name);

/* Admin op `shutdown`: the daemon answers, finishes the requests it is
 * applying, snapshots every changed session and exits 0, as on SIGTERM.
 * Not re-sent once it may have reached the daemon: a repeat would meet a
 * daemon that is gone, or one started since. */
int optimd_client_shutdown(optimd_client *c, const char *admin_token);

/*
 * Clusters: one session spread over several daemons, as the Python
 * client's optimd.Cluster and the Go client's optimd.NewCluster do it, and
 * placing every parameter where they place it.
 *
 * Each parameter lives on exactly one server, chosen by rendezvous
 * (highest-random-weight) hashing of its name: the server whose
 * optimd_rendezvous_weight(url, name) is highest, a tie (two equal 64-bit
 * digests) going to the greater URL (byte-wise). The choice depends only
 * on the name and the set of URLs, not on their order, so workers in any
 * language that list the same servers, spelled the same way, agree; and
 * adding a server moves only the parameters whose weight on it beats their
 * old maximum (about 1/(N+1) of them), all to the new server.
 *
 * Per-parameter optimizers (SGD, Adam, AdamW, ...) do not look at other
 * parameters, so a session spread this way trains bit-identically to the
 * same session on one server. What a server cannot see is the others'
 * gradients: global-norm clipping (clip_norm) is refused with more than
 * one server.
 *
 * Requests go to the servers one at a time, in the order of the URLs given
 * to optimd_cluster_create (the library has no asynchronous requests, and
 * this order is what lets an error say exactly which servers applied a
 * call). A server holding none of the parameters a call names gets no
 * request, except for step, which every server gets (with no gradients if
 * need be) so that step counts and schedules keep pace everywhere.
 *
 * A cluster call is one request per server, not atomic: when a server
 * fails, the servers before it have applied the call and the later ones
 * were not asked. The call returns that server's code (a positive
 * optimd_error_code, or an OPTIMD_CLIENT_E_*), and
 * optimd_cluster_error, optimd_cluster_failed_server and
 * optimd_cluster_applied say which server failed and which applied it.
 *
 * Like optimd_client, an optimd_cluster is not thread-safe.
 */
typedef struct optimd_cluster optimd_cluster;

/* The weight of parameter `name` on server `url`: the 8-byte BLAKE2b
 * digest (digest size 8, not a truncated longer one) of the bytes of
 * `url`, a NUL byte and the bytes of `name`, read big-endian. Python:
 * int.from_bytes(hashlib.blake2b(f"{url}\0{name}".encode(),
 * digest_size=8).digest(), "big"). */
uint64_t optimd_rendezvous_weight(const char *url, const char *name);

/* The index in urls[0..n) of the server that holds `name`; (size_t)-1
 * when n is 0 or an argument is NULL. */
size_t optimd_place(const char *name, const char *const *urls, size_t n);

/* Connects one client per URL (n of them, at least 1, none listed twice),
 * each with optimd_client_connect_ex(url, opts) (`opts` NULL: every
 * default), so TLS, timeouts and retries are set as for one client. On a
 * failure nothing is left open, *out is NULL and optimd_cluster_error(NULL)
 * says why (per thread). */
int optimd_cluster_create(const char *const *urls, size_t n,
                          const optimd_client_options *opts,
                          optimd_cluster **out);
/* Frees every connection; the sessions stay on the daemons. */
void optimd_cluster_free(optimd_cluster *cl);

/* The number of servers, the URL of server i (as given; NULL when i is out
 * of range) and its client (for the single-server calls: info, state,
 * set_hparams, ...). */
size_t optimd_cluster_size(const optimd_cluster *cl);
const char *optimd_cluster_url(const optimd_cluster *cl, size_t i);
optimd_client *optimd_cluster_client(optimd_cluster *cl, size_t i);

/* The index of the server that holds parameter `name` (optimd_place over
 * the cluster's URLs); (size_t)-1 when an argument is NULL. */
size_t optimd_cluster_place(const optimd_cluster *cl, const char *name);

/*
 * The session calls. `sessions` is an array of optimd_cluster_size
 * handles, one per server in the cluster's order, all of the same session
 * name: what optimd_cluster_open filled. Keep it (names and tokens) to use
 * the session again.
 */

/* Opens session `name` on every server with the same options (as
 * optimd_client_open_ex; *opts->existing, when asked for, is 1 only when
 * every server answered with an existing session). *lr (if not NULL) gets
 * the first server's. If one server refuses, the sessions already opened
 * on the others are closed again (best effort) and its error is returned
 * (optimd_cluster_applied then lists none). */
int optimd_cluster_open(optimd_cluster *cl, const char *name,
                        const optimd_open_options *opts,
                        optimd_session *sessions, double *lr);

/* Registers each parameter on its server into group `group` (NULL:
 * "default"), one request per server holding any. A refusal leaves the
 * earlier servers' parameters registered (optimd_cluster_applied). */
int optimd_cluster_register(optimd_cluster *cl, const optimd_session *sessions,
                            const optimd_named_tensor *params, size_t n,
                            const char *group);

/*
 * One step on every server with its share of `grads`; each output in
 * `params_out` (by name, as optimd_client_step_opts: each needs a
 * gradient) is filled by the server that holds it, and with n_out 0 no
 * server sends parameters back. `results` (NULL, or optimd_cluster_size
 * entries) gets each server's optimd_step_result in the cluster's order;
 * they agree on steps and lrs unless an earlier step failed part-way.
 * `opts` goes to every server, except that only the first server writes
 * the per-group values (opts->groups); clip_norm with more than one server
 * is OPTIMD_CLIENT_E_ARG, before anything is sent.
 *
 * Exactly once across servers: every server gets the same `seq` (see
 * optimd_cluster_next_seq), and it advances only when every server
 * answered with success. So after a failure, calling the step again with
 * the same gradients completes it: the servers that had applied it answer
 * `duplicate` (results[i].duplicate) and are not stepped twice, the others
 * apply it. To give up on the failed step instead, skip its seq with
 * optimd_cluster_set_next_seq(cl, name, optimd_cluster_next_seq(cl, name)
 * + 1); the servers that applied it keep it applied.
 */
int optimd_cluster_step(optimd_cluster *cl, const optimd_session *sessions,
                        const optimd_named_tensor *grads, size_t n_grads,
                        optimd_named_tensor *params_out, size_t n_out,
                        const optimd_step_options *opts,
                        optimd_step_result *results);

/* The seq the next cluster step on session `name` sends to every server
 * (0 if an argument is NULL). A session the cluster has not stepped starts
 * from the highest next seq of its clients (optimd_client_next_seq), so an
 * optimd_client_attach through optimd_cluster_client is taken into
 * account if made before the first cluster step. */
uint64_t optimd_cluster_next_seq(const optimd_cluster *cl, const char *name);
/* Sets it (1 to 2^53). */
int optimd_cluster_set_next_seq(optimd_cluster *cl, const char *name,
                                uint64_t seq);

/* Fetches the named parameters into their `data`, each from its server,
 * one request per server holding any. */
int optimd_cluster_pull(optimd_cluster *cl, const optimd_session *sessions,
                        optimd_named_tensor *params, size_t n);

/* Closes the session on every server; after trying them all, returns the
 * first failure (optimd_cluster_failed_server names it; applied lists the
 * servers where it was closed before that one). */
int optimd_cluster_close(optimd_cluster *cl, const optimd_session *sessions);

/* Text of the last failure (empty after a success): the call, the failing
 * server's URL, the servers that had already applied the call, and that
 * server's own error, e.g. "cluster step on tcp://b:1 (already applied on:
 * tcp://a:1): NONFINITE: ...". Valid until the next call on `cl`.
 * optimd_cluster_error(NULL) is why the calling thread's last
 * optimd_cluster_create failed. */
const char *optimd_cluster_error(const optimd_cluster *cl);

/* After a failure: the index of the server that failed, or -1 when the
 * failure was no server's (a bad argument, out of memory). */
long optimd_cluster_failed_server(const optimd_cluster *cl);

/* After a failure: the indexes of the servers that had applied the failed
 * call, in the order they applied it (*count of them; count may be NULL);
 * valid until the next call on `cl`. */
const size_t *optimd_cluster_applied(const optimd_cluster *cl, size_t *count);

#ifdef __cplusplus
}
#endif

#endif /* OPTIMD_CLIENT_H */
