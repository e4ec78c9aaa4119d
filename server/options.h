/* Command-line options of the daemon and their embedded defaults. */
#ifndef OPTIMD_SERVER_OPTIONS_H
#define OPTIMD_SERVER_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OPTIONS_MAX_LISTEN 8
#define OPTIONS_MAX_PLUGIN_DIRS 8

typedef struct options {
    const char *listen[OPTIONS_MAX_LISTEN];
    int n_listen;
    const char *plugin_dirs[OPTIONS_MAX_PLUGIN_DIRS];
    int n_plugin_dirs;
    const char *state_dir;
    const char *ready_file;    /* NULL: none; receives the first bound URL */
    uint64_t max_message;      /* bytes */
    uint32_t max_sessions;
    uint32_t request_threads;  /* threads that decode and apply requests */
    uint32_t compute_threads;  /* extra threads for parallel_for */
    uint32_t contexts;         /* requests the transport holds at once */
    uint32_t snapshot_interval;   /* seconds between snapshots; 0: only at stop */
    uint32_t sync_interval_ms;    /* group commit of "interval" sessions' logs */
    uint32_t session_ttl;         /* seconds a session may stay unused; 0: forever */
    int log_level;
    const char *validator;     /* optimd-validate for new plugin files; NULL: none */
    const char *admin_token;   /* NULL or "": admin ops refused */
    bool watch_plugins;        /* reload on changes in the plugin directories */
} options;

/* Fills `o` from argv. Returns 0 to run, 1 when --help or --version was
 * printed, -1 after printing a usage error. */
int options_parse(options *o, int argc, char **argv);

#endif
