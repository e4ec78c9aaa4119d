/* The error a request ends with: a protocol code and a message for the
 * client. Every handler checks its input completely before it changes state
 * and reports the first problem it finds here. */
#ifndef OPTIMD_SERVER_REQUEST_ERROR_H
#define OPTIMD_SERVER_REQUEST_ERROR_H

#include <optimd/protocol.h>

typedef struct request_error {
    int code;                  /* optimd_error_code, 0 while none */
    char message[256];
} request_error;

/* Records code and message; returns -1 so callers can `return fail(...)`. */
int fail(request_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Stable name of an error code ("BAD_TENSOR"), "INTERNAL" if unknown. */
const char *error_code_name(int code);

#endif
