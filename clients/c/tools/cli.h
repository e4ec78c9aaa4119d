/*
 * What the optimctl commands share: the global options, exit codes, option
 * parsing and error reporting.
 */
#ifndef OPTIMCTL_CLI_H
#define OPTIMCTL_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include <optimd/client.h>

/* Exit codes: scripts tell a typo (2) from a daemon that said no (1). */
#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2

typedef struct cli {
    const char *server;
    int timeout_ms;
    int retries;           /* re-sends after a transport failure */
    int backoff_ms;        /* the first pause before one */
    const char *admin_token;   /* --admin-token; NULL: $OPTIMD_ADMIN_TOKEN */
    /* --tls-ca, --tls-cert, --tls-key, --tls-server-name (NULL: unset) */
    const char *tls_ca, *tls_cert, *tls_key, *tls_server_name;
    const char *command;
    const char *usage;     /* the command's usage line(s) */
} cli;

/* Prints "optimctl COMMAND: <message>" and the command's usage to stderr;
 * returns CLI_USAGE. */
int cli_usage_error(const cli *cli, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "optimctl: <message>" to stderr; returns CLI_FAIL. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Connects (with the retry options), or prints why not. Each retry is
 * reported on stderr as it happens. */
int cli_connect(const cli *cli, optimd_client **out);

/* Matches argv[*i] against option `name` ("--steps"), given as
 * "--steps N" or "--steps=N". Returns 1 with *value set and *i moved past
 * the value, 0 when argv[*i] is another option, or -1 when the value is
 * missing (the caller reports a usage error). */
int cli_option(int argc, char **argv, int *i, const char *name,
               const char **value);

/* True for "--help" and "-h". */
bool cli_is_help(const char *arg);

bool cli_parse_u64(const char *text, uint64_t *out);
bool cli_parse_double(const char *text, double *out);

/* True for a name protocol.md allows for a session: 1 to 128 bytes of
 * A-Z a-z 0-9 _ . -, not starting with a dot. Such a name is also a safe
 * file name, which the token files rely on. */
bool cli_session_name_ok(const char *name);

/* Where the token of session `name` is kept: `token_file` if not NULL,
 * else $OPTIMD_TOKEN_DIR/NAME, else ./var/optimctl-tokens/NAME. Returns
 * CLI_OK or CLI_FAIL (path too long, printed). */
int cli_token_path(const char *name, const char *token_file, char *buf,
                   size_t cap);

/* Reads a token file into token[33]. *exists is false (and CLI_OK
 * returned) when there is no such file; a file that is there but unreadable
 * or holds no token is CLI_FAIL, printed. */
int cli_read_token(const char *path, char token[33], bool *exists);

/* Writes a token file: mode 0600, its directory created 0700 if missing,
 * written whole or not at all (temporary file, fsync, rename). Returns
 * CLI_OK or CLI_FAIL, printed. */
int cli_write_token(const char *path, const char *token);

/* Session commands name the session and take --token TOKEN or, without
 * it, read the token file (--token-file FILE or the default, see
 * cli_token_path); fills *s, and token_path with the file read ("" when
 * --token was given). */
int cli_session_args(const cli *cli, int argc, char **argv,
                     optimd_session *s, char *token_path, size_t cap);

/* How to open a session: --optimizer, --set, --scheduler, --sched-set,
 * --durability. */
typedef struct cli_open_spec {
    const char *optimizer;
    const char *scheduler;
    const char *durability;   /* NULL: the daemon's default */
    optimd_hvalue *hp;
    size_t n_hp;
    optimd_hvalue *sched_hp;
    size_t n_sched_hp;
} cli_open_spec;

/* Sizes the spec for at most `argc` values. Returns CLI_OK or CLI_FAIL. */
int cli_open_spec_init(cli_open_spec *spec, int argc);
void cli_open_spec_free(cli_open_spec *spec);

/* Consumes argv[*i] when it is one of the open options. Returns 1 when
 * consumed, 0 when not, or CLI_USAGE negated after reporting a usage
 * error. */
int cli_open_option(const cli *cli, int argc, char **argv, int *i,
                    cli_open_spec *spec);

/* Checks the spec once every option is read; reports a usage error. */
int cli_open_spec_check(const cli *cli, const cli_open_spec *spec);

/* Consumes argv[*i] when it is one of open's workers options (--workers
 * MODE, --workers-count, --workers-reduce, --workers-timeout,
 * --workers-on-timeout, --workers-max-staleness) into `o`; returns as
 * cli_open_option does. */
int cli_workers_option(const cli *cli, int argc, char **argv, int *i,
                       optimd_open_options *o);
/* The "workers ..." and "worker ..." lines of info (nothing for NULL). */
void cli_print_workers(const optimd_workers_info *w);

int cmd_rosenbrock(const cli *cli, int argc, char **argv);
int cmd_join(const cli *cli, int argc, char **argv);
int cmd_leave(const cli *cli, int argc, char **argv);
int cmd_export(const cli *cli, int argc, char **argv);
int cmd_import(const cli *cli, int argc, char **argv);
int cmd_schedule(const cli *cli, int argc, char **argv);
int cmd_reload(const cli *cli, int argc, char **argv);
int cmd_load(const cli *cli, int argc, char **argv);
int cmd_drop(const cli *cli, int argc, char **argv);
int cmd_shutdown(const cli *cli, int argc, char **argv);
int cmd_switch(const cli *cli, int argc, char **argv);

extern const char rosenbrock_usage[];
extern const char join_usage[];
extern const char leave_usage[];
extern const char export_usage[];
extern const char import_usage[];
extern const char schedule_usage[];
extern const char reload_usage[];
extern const char load_usage[];
extern const char drop_usage[];
extern const char shutdown_usage[];
extern const char switch_usage[];

#endif
