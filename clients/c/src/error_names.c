#include <optimd/client.h>

const char *optimd_error_name(int code)
{
    switch (code) {
    case 0: return "OK";
    case OPTIMD_CLIENT_E_TRANSPORT: return "TRANSPORT";
    case OPTIMD_CLIENT_E_PROTOCOL: return "PROTOCOL";
    case OPTIMD_CLIENT_E_NOMEM: return "NOMEM";
    case OPTIMD_CLIENT_E_ARG: return "ARG";
    }
    const char *name = optimd_error_code_name(code);
    return name ? name : "UNKNOWN";
}
