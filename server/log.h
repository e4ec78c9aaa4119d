/* Daemon log: one line per event on stderr, safe from any thread. */
#ifndef OPTIMD_SERVER_LOG_H
#define OPTIMD_SERVER_LOG_H

#include <optimd/plugin.h>

#include <stdbool.h>

void log_set_level(int level);   /* optimd_log_level; lower ones are dropped */
/* One JSON object per line ({"ts","level","msg"}) instead of text. */
void log_set_json(bool json);
int log_level_from_name(const char *name);   /* -1 if unknown */
void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(OPTIMD_LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(OPTIMD_LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(OPTIMD_LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(OPTIMD_LOG_ERROR, __VA_ARGS__)

#endif
