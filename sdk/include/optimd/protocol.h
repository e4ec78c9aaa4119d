/*
 * optimd wire protocol, version 1: constants shared by the daemon and the
 * clients. docs/protocol.md is the contract; this header only names its
 * numbers.
 */
#ifndef OPTIMD_PROTOCOL_H
#define OPTIMD_PROTOCOL_H

#ifdef __cplusplus
extern "C" {
#endif

#define OPTIMD_PROTOCOL_VERSION 1

/* Default listen address of the daemon. */
#define OPTIMD_DEFAULT_URL "tcp://127.0.0.1:7878"

/*
 * Error codes carried in the "code" field of an error reply. Stable: a code
 * keeps its meaning forever and is never reused.
 */
typedef enum optimd_error_code {
    OPTIMD_E_MALFORMED = 1,        /* not one msgpack map */
    OPTIMD_E_BAD_REQUEST = 2,      /* a key missing or of the wrong type */
    OPTIMD_E_UNKNOWN_OP = 3,
    OPTIMD_E_VERSION = 4,          /* protocol version not supported */
    OPTIMD_E_TOO_LARGE = 5,        /* message over the daemon's size limit */
    OPTIMD_E_UNKNOWN_PLUGIN = 10,
    OPTIMD_E_WRONG_KIND = 11,      /* a scheduler named as optimizer or back */
    OPTIMD_E_UNKNOWN_HPARAM = 12,
    OPTIMD_E_BAD_HPARAM = 13,      /* wrong type, out of range, rule broken */
    OPTIMD_E_NOT_MUTABLE = 14,
    OPTIMD_E_UNKNOWN_SESSION = 20,
    OPTIMD_E_BAD_TOKEN = 21,
    OPTIMD_E_SESSION_EXISTS = 22,
    OPTIMD_E_LIMIT = 23,           /* a limit of protocol.md §5 */
    OPTIMD_E_UNKNOWN_WORKER = 24,  /* a worker that has not joined the session */
    OPTIMD_E_TIMEOUT = 25,         /* a sync round or a bounded wait ran out of time */
    OPTIMD_E_STEP_PENDING = 26,    /* a sliced step is between its first and last part */
    OPTIMD_E_UNKNOWN_PARAM = 30,
    OPTIMD_E_PARAM_EXISTS = 31,
    OPTIMD_E_BAD_TENSOR = 32,      /* dtype, shape or byte length wrong */
    OPTIMD_E_NONFINITE = 33,       /* NaN or infinity in a gradient */
    OPTIMD_E_PLUGIN = 40,          /* the plugin refused or failed */
    OPTIMD_E_INTERNAL = 50,
    OPTIMD_E_NOMEM = 51,
    OPTIMD_E_SHUTTING_DOWN = 52,
    OPTIMD_E_STORAGE = 53          /* the state directory could not be written */
} optimd_error_code;

/* The stable name of a protocol error code, as sent in a reply's "error"
 * field ("BAD_TENSOR"); NULL for a number that names no code. */
static inline const char *optimd_error_code_name(int code)
{
    switch (code) {
    case OPTIMD_E_MALFORMED: return "MALFORMED";
    case OPTIMD_E_BAD_REQUEST: return "BAD_REQUEST";
    case OPTIMD_E_UNKNOWN_OP: return "UNKNOWN_OP";
    case OPTIMD_E_VERSION: return "VERSION";
    case OPTIMD_E_TOO_LARGE: return "TOO_LARGE";
    case OPTIMD_E_UNKNOWN_PLUGIN: return "UNKNOWN_PLUGIN";
    case OPTIMD_E_WRONG_KIND: return "WRONG_KIND";
    case OPTIMD_E_UNKNOWN_HPARAM: return "UNKNOWN_HPARAM";
    case OPTIMD_E_BAD_HPARAM: return "BAD_HPARAM";
    case OPTIMD_E_NOT_MUTABLE: return "NOT_MUTABLE";
    case OPTIMD_E_UNKNOWN_SESSION: return "UNKNOWN_SESSION";
    case OPTIMD_E_BAD_TOKEN: return "BAD_TOKEN";
    case OPTIMD_E_SESSION_EXISTS: return "SESSION_EXISTS";
    case OPTIMD_E_LIMIT: return "LIMIT";
    case OPTIMD_E_UNKNOWN_WORKER: return "UNKNOWN_WORKER";
    case OPTIMD_E_TIMEOUT: return "TIMEOUT";
    case OPTIMD_E_STEP_PENDING: return "STEP_PENDING";
    case OPTIMD_E_UNKNOWN_PARAM: return "UNKNOWN_PARAM";
    case OPTIMD_E_PARAM_EXISTS: return "PARAM_EXISTS";
    case OPTIMD_E_BAD_TENSOR: return "BAD_TENSOR";
    case OPTIMD_E_NONFINITE: return "NONFINITE";
    case OPTIMD_E_PLUGIN: return "PLUGIN";
    case OPTIMD_E_INTERNAL: return "INTERNAL";
    case OPTIMD_E_NOMEM: return "NOMEM";
    case OPTIMD_E_SHUTTING_DOWN: return "SHUTTING_DOWN";
    case OPTIMD_E_STORAGE: return "STORAGE";
    }
    return (const char *)0;
}

#ifdef __cplusplus
}
#endif

#endif /* OPTIMD_PROTOCOL_H */
