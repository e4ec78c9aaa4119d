#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_int min_level = OPTIMD_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(int level) { atomic_store(&min_level, level); }

int log_level_from_name(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0) return i;
    return -1;
}

static atomic_bool as_json;

void log_set_json(bool json) { atomic_store(&as_json, json); }

/* `text` as the body of a JSON string: quotes, backslashes and control
 * characters escaped (the message may quote client-supplied names). */
static size_t json_escape(char *out, size_t cap, const char *text)
{
    size_t n = 0;
    for (const unsigned char *c = (const unsigned char *)text; *c && n + 7 < cap; c++) {
        if (*c == '"' || *c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)*c;
        } else if (*c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", *c);
        } else {
            out[n++] = (char)*c;
        }
    }
    out[n] = '\0';
    return n;
}

void log_msg(int level, const char *fmt, ...)
{
    if (level < atomic_load(&min_level)) return;
    if (level < 0 || level > 3) level = OPTIMD_LOG_ERROR;
    char line[1200];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[80];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000L) % 1000);
    va_list ap;
    va_start(ap, fmt);
    if (atomic_load(&as_json)) {
        /* One JSON object per line: {"ts":..., "level":..., "msg":...}. */
        char msg[768], esc[1000];
        vsnprintf(msg, sizeof msg, fmt, ap);
        json_escape(esc, sizeof esc, msg);
        snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}", when,
                 level_names[level], esc);
    } else {
        int n = snprintf(line, sizeof line, "%s optimd %s: ", when, level_names[level]);
        if (n > 0 && (size_t)n < sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    }
    va_end(ap);
    /* One fputs per line so concurrent threads never interleave mid-line. */
    size_t len = strlen(line);
    if (len + 1 < sizeof line) {
        line[len] = '\n';
        line[len + 1] = '\0';
    }
    fputs(line, stderr);
}
