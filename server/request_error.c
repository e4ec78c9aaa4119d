#include "request_error.h"

#include <stdarg.h>
#include <stdio.h>

int fail(request_error *err, int code, const char *fmt, ...)
{
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

const char *error_code_name(int code)
{
    const char *name = optimd_error_code_name(code);
    return name ? name : "INTERNAL";
}
