#include <optimd/client.h>

const char *optimd_error_name(int code)
{
    switch (code) {
    case 0: return "OK";
    case OPTIMD_CLIENT_E_TRANSPORT: return "TRANSPORT";
    case OPTIMD_CLIENT_E_PROTOCOL: return "PROTOCOL";
    case OPTIMD_CLIENT_E_NOMEM: return "NOMEM";
    case OPTIMD_CLIENT_E_ARG: return "ARG";
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
    case OPTIMD_E_UNKNOWN_PARAM: return "UNKNOWN_PARAM";
    case OPTIMD_E_PARAM_EXISTS: return "PARAM_EXISTS";
    case OPTIMD_E_BAD_TENSOR: return "BAD_TENSOR";
    case OPTIMD_E_NONFINITE: return "NONFINITE";
    case OPTIMD_E_PLUGIN: return "PLUGIN";
    case OPTIMD_E_INTERNAL: return "INTERNAL";
    case OPTIMD_E_NOMEM: return "NOMEM";
    case OPTIMD_E_SHUTTING_DOWN: return "SHUTTING_DOWN";
    default: return "UNKNOWN";
    }
}
