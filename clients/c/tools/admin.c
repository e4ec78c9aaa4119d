/* optimctl reload, load and switch: changing the code a daemon runs; and
 * the other admin ops, drop and shutdown. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char reload_usage[] =
    "usage: optimctl [--admin-token TOKEN] reload\n"
    "The daemon rescans its plugin directories and loads every new or\n"
    "changed file. One line per file it tried: \"loaded ID VERSION PATH\"\n"
    "or \"refused PATH: ERROR\" (the running version stays); exit 1 when\n"
    "any was refused. The admin token is --admin-token, else\n"
    "$OPTIMD_ADMIN_TOKEN (the daemon's own --admin-token).\n";
const char load_usage[] =
    "usage: optimctl [--admin-token TOKEN] load PATH\n"
    "The daemon loads the plugin file PATH (a path on its machine) as the\n"
    "current version of its id. Prints \"loaded ID VERSION PATH\", or\n"
    "\"refused PATH: ERROR\" and exits 1. The admin token is found as for\n"
    "reload.\n";
const char drop_usage[] =
    "usage: optimctl [--admin-token TOKEN] drop NAME\n"
    "Closes session NAME without its token (one whose token was lost).\n"
    "The admin token is found as for reload.\n";
const char shutdown_usage[] =
    "usage: optimctl [--admin-token TOKEN] shutdown\n"
    "Stops the daemon as SIGTERM does: requests being applied finish,\n"
    "changed sessions are snapshotted, it exits 0. The admin token is\n"
    "found as for reload.\n";
const char switch_usage[] =
    "usage: optimctl switch NAME --optimizer ID [--set KEY=VALUE]...\n"
    "                [--token TOKEN | --token-file FILE]\n"
    "Moves session NAME to optimizer ID between two steps; shared\n"
    "hyperparameters keep the session's values, --set overrides them,\n"
    "and state slots of the same key are carried over. Prints\n"
    "\"optimizer ID VERSION\", then \"carried KEY...\". The token is found\n"
    "as for info.\n";

/* The admin token, or NULL after reporting that there is none. */
static const char *admin_token(const cli *cli)
{
    const char *t = cli->admin_token;
    if (!t) t = getenv("OPTIMD_ADMIN_TOKEN");
    if (!t || !*t) {
        cli_usage_error(cli, "no admin token: give --admin-token TOKEN or "
                        "set $OPTIMD_ADMIN_TOKEN");
        return NULL;
    }
    return t;
}

/* Prints the report; CLI_FAIL when a file was refused. */
static int print_report(const optimd_reload_report *r)
{
    for (size_t i = 0; i < r->n_files; i++) {
        const optimd_plugin_file *f = &r->files[i];
        if (f->loaded)
            printf("loaded %s %s %s\n", f->id, f->version, f->path);
        else
            printf("refused %s: %s\n", f->path, f->error);
    }
    if (r->maybe_incomplete)
        fprintf(stderr, "optimctl: the request was sent again after a "
                        "lost reply; files the first attempt loaded are "
                        "not listed\n");
    return r->n_refused ? CLI_FAIL : CLI_OK;
}

int cmd_reload(const cli *cli, int argc, char **argv)
{
    (void)argv;
    if (argc > 0) return cli_usage_error(cli, "takes no arguments");
    const char *token = admin_token(cli);
    if (!token) return CLI_USAGE;
    optimd_client *c;
    int rv = cli_connect(cli, &c);
    if (rv) return rv;
    optimd_reload_report r;
    if (optimd_client_reload(c, token, &r) != 0)
        rv = cli_fail("%s", optimd_client_error(c));
    else
        rv = print_report(&r);
    optimd_reload_report_free(&r);
    optimd_client_free(c);
    return rv;
}

int cmd_load(const cli *cli, int argc, char **argv)
{
    if (argc != 1 || (argv[0][0] == '-' && argv[0][1]))
        return cli_usage_error(cli, "expects one plugin file");
    const char *token = admin_token(cli);
    if (!token) return CLI_USAGE;
    optimd_client *c;
    int rv = cli_connect(cli, &c);
    if (rv) return rv;
    optimd_reload_report r;
    int got = optimd_client_load(c, token, argv[0], &r);
    if (got == OPTIMD_E_PLUGIN) {
        /* The daemon refused the file: the same line a reload prints. */
        const char *why = optimd_client_error(c);
        size_t skip = strlen("PLUGIN: ");
        if (strncmp(why, "PLUGIN: ", skip) == 0) why += skip;
        printf("refused %s: %s\n", argv[0], why);
        rv = CLI_FAIL;
    } else if (got != 0) {
        rv = cli_fail("%s", optimd_client_error(c));
    } else {
        rv = print_report(&r);
    }
    optimd_reload_report_free(&r);
    optimd_client_free(c);
    return rv;
}

int cmd_drop(const cli *cli, int argc, char **argv)
{
    if (argc != 1 || !argv[0][0] || argv[0][0] == '-')
        return cli_usage_error(cli, "expects one session name");
    const char *token = admin_token(cli);
    if (!token) return CLI_USAGE;
    optimd_client *c;
    int rv = cli_connect(cli, &c);
    if (rv) return rv;
    if (optimd_client_drop(c, token, argv[0]) != 0)
        rv = cli_fail("%s", optimd_client_error(c));
    optimd_client_free(c);
    return rv;
}

int cmd_shutdown(const cli *cli, int argc, char **argv)
{
    (void)argv;
    if (argc > 0) return cli_usage_error(cli, "takes no arguments");
    const char *token = admin_token(cli);
    if (!token) return CLI_USAGE;
    optimd_client *c;
    int rv = cli_connect(cli, &c);
    if (rv) return rv;
    if (optimd_client_shutdown(c, token) != 0)
        rv = cli_fail("%s", optimd_client_error(c));
    optimd_client_free(c);
    return rv;
}

int cmd_switch(const cli *cli, int argc, char **argv)
{
    cli_open_spec spec;
    int rv = cli_open_spec_init(&spec, argc);
    if (rv) return rv;
    /* NAME and the token options go on to cli_session_args. */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) {
        cli_open_spec_free(&spec);
        return cli_fail("out of memory");
    }
    int n_rest = 0;
    for (int i = 0; i < argc && !rv; i++) {
        int start = i;
        const char *value;
        int got = cli_open_option(cli, argc, argv, &i, &spec);
        if (got < 0) {
            rv = -got;
        } else if (got) {
            /* The open options switch does not take: a schedule and
             * durability stay as the session has them. */
            if (spec.scheduler || spec.n_sched_hp || spec.durability)
                rv = cli_usage_error(cli, "'%s': switch takes --optimizer "
                                     "and --set only", argv[start]);
        } else if ((got = cli_option(argc, argv, &i, "--token", &value)) ||
                   (got = cli_option(argc, argv, &i, "--token-file",
                                     &value))) {
            if (got < 0) rv = cli_usage_error(cli, "%s needs a value", argv[i]);
            for (int k = start; got > 0 && k <= i; k++) rest[n_rest++] = argv[k];
        } else {
            rest[n_rest++] = argv[i];   /* cli_session_args judges it */
        }
    }
    if (!rv && !spec.optimizer)
        rv = cli_usage_error(cli, "no --optimizer given");
    optimd_session s;
    char path[4096];
    if (!rv) rv = cli_session_args(cli, n_rest, rest, &s, path, sizeof path);
    optimd_client *c = NULL;
    if (!rv) rv = cli_connect(cli, &c);
    if (!rv) {
        optimd_switch_result r;
        if (optimd_client_switch(c, &s, spec.optimizer, spec.hp, spec.n_hp,
                                 &r) != 0) {
            rv = cli_fail("%s", optimd_client_error(c));
        } else {
            printf("optimizer %s %s\ncarried", r.optimizer,
                   r.optimizer_version);
            for (size_t i = 0; i < r.n_carried; i++)
                printf(" %s", r.carried[i]);
            putchar('\n');
        }
        optimd_switch_result_free(&r);
    }
    optimd_client_free(c);
    free(rest);
    cli_open_spec_free(&spec);
    return rv;
}
