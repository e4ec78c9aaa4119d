/* Command-line options of the daemon and their embedded defaults. */
#ifndef OPTIMD_SERVER_OPTIONS_H
#define OPTIMD_SERVER_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OPTIONS_MAX_LISTEN 8
#define OPTIONS_MAX_PLUGIN_DIRS 8

typedef struct options {
    const char *config;        /* --config FILE, or NULL */
    bool check_config;         /* --check-config: check, report, exit */
    const char *listen[OPTIONS_MAX_LISTEN];
    int n_listen;
    bool listen_from_args;     /* the command line replaced the config's list */
    const char *plugin_dirs[OPTIONS_MAX_PLUGIN_DIRS];
    int n_plugin_dirs;
    bool plugin_dirs_from_args;
    const char *state_dir;
    const char *ready_file;    /* NULL: none; receives the first bound URL */
    uint64_t max_message;      /* bytes */
    uint32_t max_sessions;
    uint32_t max_tensors;      /* tensors in one request */
    uint64_t max_session_bytes;   /* parameters + state of one session; 0: no own limit */
    uint64_t max_total_bytes;     /* of all sessions; 0: none */
    uint32_t request_threads;  /* threads that decode and apply requests */
    uint32_t compute_threads;  /* extra threads for parallel_for */
    uint32_t contexts;         /* requests the transport holds at once */
    uint32_t snapshot_interval;   /* seconds between snapshots; 0: only at stop */
    uint32_t sync_interval_ms;    /* group commit of "interval" sessions' logs */
    uint32_t session_ttl;         /* seconds a session may stay unused; 0: forever */
    int log_level;
    bool log_json;             /* --log-format json */
    uint32_t max_in_flight;    /* requests one connection (pipe) may have at once */
    const char *validator;     /* optimd-validate for new plugin files; NULL: none */
    const char *admin_token;   /* NULL or "": admin ops refused */
    bool watch_plugins;        /* reload on changes in the plugin directories */
    const char *tls_cert;      /* PEM files of tls+tcp:// listeners */
    const char *tls_key;
    const char *tls_ca;        /* client certificates chain to these */
    const char *tls_client_auth;   /* "none", "optional", "required" */
    bool allow_remote;         /* non-loopback without client certificates */
    const char *metrics_listen;   /* HOST:PORT of the metrics endpoint, or NULL */
    char **owned;              /* strings read from the config file */
    size_t n_owned;
} options;

/* Fills `o` from the config file (--config) and then argv, whose flags
 * override it. Returns 0 to run, 1 when --help or --version was printed,
 * -1 after printing what is wrong. */
int options_parse(options *o, int argc, char **argv);
void options_free(options *o);

/* True for ipc:// and loopback tcp/ws/tls addresses. */
bool options_listen_is_local(const char *url);

#endif
