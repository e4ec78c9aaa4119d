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
    const char *command;
    const char *usage;     /* the command's usage line(s) */
} cli;

/* Prints "optimctl COMMAND: <message>" and the command's usage to stderr;
 * returns CLI_USAGE. */
int cli_usage_error(const cli *cli, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "optimctl: <message>" to stderr; returns CLI_FAIL. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Connects, or prints why not. */
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

/* Session commands name the session and take --token; fills *s. */
int cli_session_args(const cli *cli, int argc, char **argv,
                     optimd_session *s);

/* How to open a session: --optimizer, --set, --scheduler, --sched-set. */
typedef struct cli_open_spec {
    const char *optimizer;
    const char *scheduler;
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

int cmd_rosenbrock(const cli *cli, int argc, char **argv);

extern const char rosenbrock_usage[];

#endif
