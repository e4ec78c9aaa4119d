/*
 * optimctl: the command line for an optimd daemon, built on the C client
 * library. Output is plain columns so that shell scripts can cut it.
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_RETRIES 5
#define DEFAULT_BACKOFF_MS 100

static const char main_usage[] =
    "usage: optimctl [--server URL] [--timeout MS] [--retries N]\n"
    "                [--retry-backoff MS] [--admin-token TOKEN]\n"
    "                [--tls-ca FILE [--tls-cert FILE --tls-key FILE]\n"
    "                 [--tls-server-name NAME]] COMMAND [ARGS]\n"
    "\n"
    "Talks to an optimd daemon.\n"
    "\n"
    "commands:\n"
    "  hello                      the daemon's version, protocol and limits\n"
    "  plugins                    loaded plugins: id, kind, version, "
    "description\n"
    "  hparams PLUGIN             a plugin's hyperparameters: key, type, "
    "default,\n"
    "                             range, mutable or fixed, doc\n"
    "  sessions                   sessions: name, optimizer, scheduler "
    "(- if none),\n"
    "                             parameter count, step count\n"
    "  open NAME --optimizer ID [--set KEY=VALUE]...\n"
    "       [--scheduler ID [--sched-set KEY=VALUE]...]\n"
    "       [--durability always|interval|none] [--token-file FILE]\n"
    "       [--workers sync|async|bounded [--workers-count N] ...]\n"
    "                             open a session; prints its token\n"
    "  info NAME [--token TOKEN | --token-file FILE]\n"
    "                             a session's steps, parameters, lr, "
    "optimizer,\n"
    "                             scheduler and durability (and "
    "workers)\n"
    "  observe NAME METRIC [--group G] [--token TOKEN | --token-file FILE]\n"
    "                             report a metric to a metric-driven "
    "scheduler\n"
    "                             (plateau); prints the next lr\n"
    "  close NAME [--token TOKEN | --token-file FILE]\n"
    "                             close a session and drop its state\n"
    "  abandon-step NAME SEQ [--client ID] [--token TOKEN | --token-file FILE]\n"
    "                             end a pending sliced step as it stands\n"
    "  join NAME WORKER [--token TOKEN | --token-file FILE]\n"
    "                             make WORKER a member of a session with\n"
    "                             workers; prints its rank\n"
    "  leave NAME WORKER [--token TOKEN | --token-file FILE]\n"
    "                             remove WORKER from the session\n"
    "  switch NAME --optimizer ID [--set KEY=VALUE]...\n"
    "       [--token TOKEN | --token-file FILE]\n"
    "                             move a session to another optimizer; "
    "prints\n"
    "                             it and the state slots carried over\n"
    "  export NAME FILE [--token TOKEN | --token-file FILE]\n"
    "                             write a session to a safetensors file\n"
    "  import FILE [--session NAME] [--durability D] [--token-file FILE]\n"
    "                             create a session from such a file; "
    "prints\n"
    "                             its new token\n"
    "  schedule ID [--sched-set KEY=VALUE]... [--base-lr LR] --steps N\n"
    "                             a scheduler's lr after construction and "
    "after\n"
    "                             each step, one per line\n"
    "  rosenbrock --optimizer ID --steps N [--session NAME] [...]\n"
    "                             minimise the Rosenbrock function "
    "remotely;\n"
    "                             a named session is created or resumed\n"
    "  reload                     (admin) the daemon rescans its "
    "plugins; one\n"
    "                             line per file: loaded or refused\n"
    "  load PATH                  (admin) the daemon loads one plugin "
    "file\n"
    "  drop NAME                  (admin) close a session without its "
    "token\n"
    "  shutdown                   (admin) stop the daemon gracefully\n"
    "  help [COMMAND]             this text, or a command's usage\n"
    "\n"
    "options:\n"
    "  --server URL   the daemon's address (default " OPTIMD_DEFAULT_URL ")\n"
    "  --timeout MS   how long a request waits for a connection, and then "
    "for\n"
    "                 its reply (default 30000)\n"
    "  --retries N    how often a request is sent again after the "
    "connection\n"
    "                 failed, e.g. while the daemon restarts (default 5)\n"
    "  --retry-backoff MS\n"
    "                 the pause before the first re-send, doubling up to "
    "2 s\n"
    "                 (default 100)\n"
    "  --admin-token TOKEN\n"
    "                 the daemon's --admin-token, for reload, load, drop\n"
    "                 and shutdown\n"
    "                 (default $OPTIMD_ADMIN_TOKEN)\n"
    "  --tls-ca FILE  for a tls+tcp:// server: the CA (PEM) that issued the\n"
    "                 daemon's certificate (required there)\n"
    "  --tls-cert FILE, --tls-key FILE\n"
    "                 this client's certificate and key (PEM), for a daemon\n"
    "                 that requires client certificates\n"
    "  --tls-server-name NAME\n"
    "                 the name the daemon's certificate must carry (default:\n"
    "                 the URL's host; for tls+tcp://127.0.0.1:PORT give the\n"
    "                 certificate's DNS name, e.g. localhost)\n"
    "\n"
    "Token files: without --token, info, observe, switch, join, leave and "
    "close\n"
    "read the session's token from --token-file FILE, else "
    "$OPTIMD_TOKEN_DIR/NAME,\n"
    "else ./var/optimctl-tokens/NAME; rosenbrock --session keeps it "
    "there.\n"
    "\n"
    "Exit status: 0 success, 1 the daemon or the connection failed, "
    "2 usage error.\n";

static const char hello_usage[] = "usage: optimctl hello\n";
static const char plugins_usage[] = "usage: optimctl plugins\n";
static const char sessions_usage[] = "usage: optimctl sessions\n";
static const char hparams_usage[] =
    "usage: optimctl hparams PLUGIN\n"
    "One line per hyperparameter: key, type, default (or \"required\"),\n"
    "range ([ ] inclusive, ( ) exclusive; - for bool), mutable or fixed, "
    "doc.\n";
static const char open_usage[] =
    "usage: optimctl open NAME --optimizer ID [--set KEY=VALUE]...\n"
    "                [--scheduler ID [--sched-set KEY=VALUE]...]\n"
    "                [--durability always|interval|none] "
    "[--token-file FILE]\n"
    "                [--workers sync|async|bounded] [--workers-count N]\n"
    "                [--workers-reduce mean|sum] [--workers-timeout MS]\n"
    "                [--workers-on-timeout fail|proceed]\n"
    "                [--workers-max-staleness N]\n"
    "Prints the session's token; keep it for info and close. With\n"
    "--token-file it is also written there (mode 0600).\n"
    "--durability: when a change is on disk (protocol.md, open); default\n"
    "the daemon's (interval).\n"
    "--workers: a session that workers push to after `optimctl join`\n"
    "(protocol.md, Workers). sync: --workers-count pushes (required) make\n"
    "a round, combined by --workers-reduce (mean); --workers-on-timeout\n"
    "says what a round missing pushes after --workers-timeout (60000) does.\n"
    "async: each push applies at once. bounded: as async, but a worker\n"
    "more than --workers-max-staleness (0) pushes ahead of the slowest\n"
    "waits up to --workers-timeout. An option of another mode is a usage\n"
    "error.\n";
static const char info_usage[] =
    "usage: optimctl info NAME [--token TOKEN | --token-file FILE]\n"
    "Without --token the token is read from FILE, else "
    "$OPTIMD_TOKEN_DIR/NAME,\n"
    "else ./var/optimctl-tokens/NAME.\n";
static const char observe_usage[] =
    "usage: optimctl observe NAME METRIC [--group G]\n"
    "                [--token TOKEN | --token-file FILE]\n"
    "Reports METRIC (e.g. a validation loss; nan counts as a bad epoch) to\n"
    "the session's metric-driven schedulers (plateau): to group G's, or\n"
    "to every group's that takes one. Prints \"lr X\", the next lr of G\n"
    "(else of the default group), then \"group NAME lr X\" for each group\n"
    "when the session has more than one. The token is found as for info.\n";
static const char abandon_usage[] =
    "usage: optimctl abandon-step NAME SEQ [--client ID]\n"
    "                [--token TOKEN | --token-file FILE]\n"
    "Ends the session's pending sliced step (info shows it: \"pending_step\n"
    "client ID seq SEQ ...\") for a client that died before sending all its\n"
    "parts: the elements its parts updated stay updated, the others are not,\n"
    "and it counts as a step. Prints \"steps N\", the step count after it.\n"
    "The token is found as for info.\n";
static const char close_usage[] =
    "usage: optimctl close NAME [--token TOKEN | --token-file FILE]\n"
    "The token comes from where info reads it; a token file read is "
    "removed\n"
    "once the session is closed.\n";

/* Commands without arguments still reject stray ones, so that a typo is
 * not silently ignored. */
static int no_args(const cli *cli, int argc, char **argv)
{
    (void)argv;
    if (argc > 0) return cli_usage_error(cli, "takes no arguments");
    return CLI_OK;
}

static int daemon_error(optimd_client *c)
{
    return cli_fail("%s", optimd_client_error(c));
}

static int cmd_hello(const cli *cli, int argc, char **argv)
{
    int rv = no_args(cli, argc, argv);
    optimd_client *c;
    if (rv || (rv = cli_connect(cli, &c))) return rv;
    optimd_server_info info;
    if (optimd_client_hello(c, &info) != 0) rv = daemon_error(c);
    else
        printf("server %s\nversion %s\nprotocol %lld\nabi %lld.%lld\n"
               "max_message %llu\n",
               info.server, info.version, (long long)info.protocol,
               (long long)info.abi_major, (long long)info.abi_minor,
               (unsigned long long)info.max_message);
    optimd_client_free(c);
    return rv;
}

static int cmd_plugins(const cli *cli, int argc, char **argv)
{
    int rv = no_args(cli, argc, argv);
    optimd_client *c;
    if (rv || (rv = cli_connect(cli, &c))) return rv;
    optimd_plugin_info *list;
    size_t n;
    if (optimd_client_plugins(c, &list, &n) != 0) rv = daemon_error(c);
    else {
        for (size_t i = 0; i < n; i++)
            printf("%s\t%s\t%s\t%s\n", list[i].id, list[i].kind,
                   list[i].version, list[i].description);
        optimd_plugin_list_free(list, n);
    }
    optimd_client_free(c);
    return rv;
}

static void print_hvalue(const optimd_hvalue *v)
{
    switch (v->type) {
    case OPTIMD_HVALUE_FLOAT: printf("%.9g", v->f); break;
    case OPTIMD_HVALUE_INT: printf("%lld", (long long)v->i); break;
    case OPTIMD_HVALUE_BOOL: fputs(v->i ? "true" : "false", stdout); break;
    default: fputs("required", stdout); break;
    }
}

static void print_hparam(const optimd_hparam_info *h)
{
    static const char *const types[] = {"?", "float", "int", "bool"};
    printf("%s\t%s\t", h->key, types[h->type]);
    print_hvalue(&h->def);
    if (h->type == OPTIMD_HVALUE_BOOL)
        fputs("\t-", stdout);
    else if (h->type == OPTIMD_HVALUE_INT)
        printf("\t%c%.17g, %.17g%c", h->min_exclusive ? '(' : '[', h->min,
               h->max, h->max_exclusive ? ')' : ']');
    else
        printf("\t%c%.9g, %.9g%c", h->min_exclusive ? '(' : '[', h->min,
               h->max, h->max_exclusive ? ')' : ']');
    printf("\t%s\t%s\n", h->is_mutable ? "mutable" : "fixed", h->doc);
}

static int cmd_hparams(const cli *cli, int argc, char **argv)
{
    if (argc != 1 || argv[0][0] == '-')
        return cli_usage_error(cli, "expects one plugin id");
    optimd_client *c;
    int rv = cli_connect(cli, &c);
    if (rv) return rv;
    optimd_plugin_info *list;
    size_t n;
    if (optimd_client_plugins(c, &list, &n) != 0) {
        rv = daemon_error(c);
    } else {
        size_t i = 0;
        while (i < n && strcmp(list[i].id, argv[0]) != 0) i++;
        if (i == n)
            rv = cli_fail("no plugin '%s' is loaded", argv[0]);
        else
            for (size_t k = 0; k < list[i].n_hparams; k++)
                print_hparam(&list[i].hparams[k]);
        optimd_plugin_list_free(list, n);
    }
    optimd_client_free(c);
    return rv;
}

static int cmd_sessions(const cli *cli, int argc, char **argv)
{
    int rv = no_args(cli, argc, argv);
    optimd_client *c;
    if (rv || (rv = cli_connect(cli, &c))) return rv;
    optimd_session_summary *list;
    size_t n;
    if (optimd_client_sessions(c, &list, &n) != 0) rv = daemon_error(c);
    else {
        for (size_t i = 0; i < n; i++)
            printf("%s\t%s\t%s\t%llu\t%llu\n", list[i].name,
                   list[i].optimizer,
                   list[i].scheduler ? list[i].scheduler : "-",
                   (unsigned long long)list[i].params,
                   (unsigned long long)list[i].steps);
        optimd_session_list_free(list, n);
    }
    optimd_client_free(c);
    return rv;
}

/* The library refuses a setting of another mode too; said here as a
 * usage error, with the option's name. */
static int workers_check(const cli *cli, const optimd_open_options *o)
{
    const char *m = o->workers_mode;
    bool sync = m && strcmp(m, "sync") == 0;
    bool bounded = m && strcmp(m, "bounded") == 0;
    const char *stray =
        !sync && o->workers_count        ? "--workers-count"
        : !sync && o->workers_reduce     ? "--workers-reduce"
        : !sync && o->workers_on_timeout ? "--workers-on-timeout"
        : !sync && !bounded && o->workers_timeout_ms ? "--workers-timeout"
        : !bounded && o->workers_max_staleness ? "--workers-max-staleness"
                                               : NULL;
    if (stray && !m)
        return cli_usage_error(cli, "%s needs --workers", stray);
    if (stray)
        return cli_usage_error(cli, "%s does not go with --workers %s", stray,
                               m);
    if (sync && !o->workers_count)
        return cli_usage_error(cli, "--workers sync needs --workers-count");
    return CLI_OK;
}

static int cmd_open(const cli *cli, int argc, char **argv)
{
    cli_open_spec spec;
    int rv = cli_open_spec_init(&spec, argc);
    if (rv) return rv;
    const char *name = NULL, *token_file = NULL;
    optimd_open_options o;
    optimd_open_options_init(&o);
    for (int i = 0; i < argc && !rv; i++) {
        int got = cli_open_option(cli, argc, argv, &i, &spec);
        if (!got) got = cli_workers_option(cli, argc, argv, &i, &o);
        if (got < 0) rv = -got;
        else if (got) continue;
        else if ((got = cli_option(argc, argv, &i, "--token-file",
                                   &token_file)))
            rv = got < 0 ? cli_usage_error(cli, "--token-file needs a file")
                         : 0;
        else if (argv[i][0] == '-' && argv[i][1])
            rv = cli_usage_error(cli, "unknown option '%s'", argv[i]);
        else if (name)
            rv = cli_usage_error(cli, "unexpected argument '%s'", argv[i]);
        else name = argv[i];
    }
    if (!rv && !name) rv = cli_usage_error(cli, "no session name given");
    if (!rv) rv = cli_open_spec_check(cli, &spec);
    if (!rv) rv = workers_check(cli, &o);
    optimd_client *c = NULL;
    if (!rv) rv = cli_connect(cli, &c);
    if (!rv) {
        optimd_session s;
        o.optimizer = spec.optimizer;
        o.hparams = spec.hp;
        o.n_hparams = spec.n_hp;
        o.scheduler = spec.scheduler;
        o.sched_hparams = spec.sched_hp;
        o.n_sched_hparams = spec.n_sched_hp;
        o.durability = spec.durability;
        if (optimd_client_open_ex(c, name, &o, &s, NULL) != 0) {
            rv = daemon_error(c);
        } else {
            printf("%s\n", s.token);
            if (token_file) rv = cli_write_token(token_file, s.token);
        }
    }
    optimd_client_free(c);
    cli_open_spec_free(&spec);
    return rv;
}

static int cmd_info(const cli *cli, int argc, char **argv)
{
    optimd_session s;
    optimd_client *c;
    char path[4096];
    int rv = cli_session_args(cli, argc, argv, &s, path, sizeof path);
    if (rv || (rv = cli_connect(cli, &c))) return rv;
    optimd_session_details *d;
    if (optimd_client_info_ex(c, &s, &d) != 0) {
        rv = daemon_error(c);
    } else {
        printf("session %s\nsteps %llu\nparams %llu\nbase_lr %.9g\n"
               "lr %.9g\noptimizer %s\nscheduler %s\ndurability %s\n",
               s.name, (unsigned long long)d->steps,
               (unsigned long long)d->n_params, d->base_lr, d->lr,
               d->optimizer, d->scheduler ? d->scheduler : "-",
               d->durability ? d->durability : "-");
        if (d->has_lookahead)
            printf("lookahead k=%lld alpha=%.9g\n",
                   (long long)d->lookahead_k, d->lookahead_alpha);
        if (d->has_pending_step)
            printf("pending_step client %s seq %llu parts %llu of %llu\n",
                   d->pending_client, (unsigned long long)d->pending_seq,
                   (unsigned long long)d->pending_applied,
                   (unsigned long long)d->pending_count);
        for (size_t i = 0; i < d->n_groups; i++)
            printf("group %s lr %.9g base_lr %.9g params %llu "
                   "scheduler %s\n",
                   d->groups[i].name, d->groups[i].lr, d->groups[i].base_lr,
                   (unsigned long long)d->groups[i].params,
                   d->groups[i].scheduler ? d->groups[i].scheduler : "-");
        cli_print_workers(d->workers);
        optimd_session_details_free(d);
    }
    optimd_client_free(c);
    return rv;
}

static int cmd_observe(const cli *cli, int argc, char **argv)
{
    /* NAME and the token options go on to cli_session_args; METRIC and
     * --group are this command's. */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) return cli_fail("out of memory");
    int n_rest = 0, positional = 0, rv = CLI_OK;
    const char *group = NULL, *metric_text = NULL, *value;
    for (int i = 0; i < argc && rv == CLI_OK; i++) {
        int start = i;
        int got = cli_option(argc, argv, &i, "--group", &value);
        if (got < 0) {
            rv = cli_usage_error(cli, "--group needs a name");
        } else if (got) {
            group = value;
        } else if ((got = cli_option(argc, argv, &i, "--token", &value)) ||
                   (got = cli_option(argc, argv, &i, "--token-file",
                                     &value))) {
            if (got < 0) rv = cli_usage_error(cli, "%s needs a value", argv[i]);
            for (int k = start; got > 0 && k <= i; k++) rest[n_rest++] = argv[k];
        } else if (argv[i][0] == '-' && argv[i][1] &&
                   !(positional == 1 &&
                     cli_parse_double(argv[i], &(double){0}))) {
            rest[n_rest++] = argv[i];   /* cli_session_args reports it */
        } else if (positional++ == 1) {
            metric_text = argv[i];
        } else {
            rest[n_rest++] = argv[i];
        }
    }
    double metric = 0;
    optimd_session s;
    optimd_client *c = NULL;
    char path[4096];
    if (rv == CLI_OK && !metric_text)
        rv = cli_usage_error(cli, "no METRIC given");
    /* strtod reads "nan", a bad epoch for plateau. */
    if (rv == CLI_OK && !cli_parse_double(metric_text, &metric))
        rv = cli_usage_error(cli, "METRIC '%s' is not a number", metric_text);
    if (rv == CLI_OK)
        rv = cli_session_args(cli, n_rest, rest, &s, path, sizeof path);
    if (rv == CLI_OK) rv = cli_connect(cli, &c);
    if (rv == CLI_OK) {
        double lr;
        optimd_group_value groups[OPTIMD_MAX_GROUPS];
        size_t n = 0;
        if (optimd_client_observe(c, &s, metric, group, &lr, groups,
                                  OPTIMD_MAX_GROUPS, &n) != 0) {
            rv = daemon_error(c);
        } else {
            printf("lr %.17g\n", lr);
            for (size_t i = 0; n > 1 && i < n && i < OPTIMD_MAX_GROUPS; i++)
                printf("group %s lr %.17g\n", groups[i].name, groups[i].lr);
        }
    }
    optimd_client_free(c);
    free(rest);
    return rv;
}

static int cmd_abandon(const cli *cli, int argc, char **argv)
{
    /* NAME and the token options go on to cli_session_args; SEQ and
     * --client are this command's. */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) return cli_fail("out of memory");
    int n_rest = 0, positional = 0, rv = CLI_OK;
    const char *client = "", *seq_text = NULL, *value;
    for (int i = 0; i < argc && rv == CLI_OK; i++) {
        int got = cli_option(argc, argv, &i, "--client", &value);
        if (got < 0) rv = cli_usage_error(cli, "--client needs an id");
        else if (got) client = value;
        else if (argv[i][0] != '-' && positional++ == 1) seq_text = argv[i];
        else rest[n_rest++] = argv[i];
    }
    uint64_t seq = 0;
    optimd_session s;
    optimd_client *c = NULL;
    char path[4096];
    if (rv == CLI_OK && !seq_text) rv = cli_usage_error(cli, "no SEQ given");
    if (rv == CLI_OK && (!cli_parse_u64(seq_text, &seq) || seq == 0))
        rv = cli_usage_error(cli, "SEQ '%s' is not a positive integer", seq_text);
    if (rv == CLI_OK)
        rv = cli_session_args(cli, n_rest, rest, &s, path, sizeof path);
    if (rv == CLI_OK) rv = cli_connect(cli, &c);
    if (rv == CLI_OK) {
        uint64_t steps;
        if (optimd_client_abandon_step(c, &s, seq, client, &steps) != 0)
            rv = daemon_error(c);
        else
            printf("steps %llu\n", (unsigned long long)steps);
    }
    optimd_client_free(c);
    free(rest);
    return rv;
}

static int cmd_close(const cli *cli, int argc, char **argv)
{
    optimd_session s;
    optimd_client *c;
    char path[4096];
    int rv = cli_session_args(cli, argc, argv, &s, path, sizeof path);
    if (rv || (rv = cli_connect(cli, &c))) return rv;
    if (optimd_client_close(c, &s) != 0) rv = daemon_error(c);
    /* The token opens nothing any more. */
    else if (path[0] && unlink(path) != 0 && errno != ENOENT)
        rv = cli_fail("session closed, but its token file %s stays: %s",
                      path, strerror(errno));
    optimd_client_free(c);
    return rv;
}

typedef struct command {
    const char *name;
    int (*run)(const cli *cli, int argc, char **argv);
    const char *usage;
} command;

static const command commands[] = {
    {"hello", cmd_hello, hello_usage},
    {"plugins", cmd_plugins, plugins_usage},
    {"hparams", cmd_hparams, hparams_usage},
    {"sessions", cmd_sessions, sessions_usage},
    {"open", cmd_open, open_usage},
    {"info", cmd_info, info_usage},
    {"observe", cmd_observe, observe_usage},
    {"close", cmd_close, close_usage},
    {"abandon-step", cmd_abandon, abandon_usage},
    {"join", cmd_join, join_usage},
    {"leave", cmd_leave, leave_usage},
    {"switch", cmd_switch, switch_usage},
    {"reload", cmd_reload, reload_usage},
    {"load", cmd_load, load_usage},
    {"drop", cmd_drop, drop_usage},
    {"shutdown", cmd_shutdown, shutdown_usage},
    {"export", cmd_export, export_usage},
    {"import", cmd_import, import_usage},
    {"schedule", cmd_schedule, schedule_usage},
    {"rosenbrock", cmd_rosenbrock, rosenbrock_usage},
};

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

/* Only the synopsis: the full text would bury the message. */
static int main_usage_error(const char *fmt, const char *arg)
{
    fputs("optimctl: ", stderr);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: optimctl [--server URL] [--timeout MS] "
                    "[--retries N] [--retry-backoff MS]\n"
                    "                [--admin-token TOKEN] [--tls-ca FILE] "
                    "[--tls-cert FILE]\n"
                    "                [--tls-key FILE] [--tls-server-name NAME] "
                    "COMMAND [ARGS]\n"
                    "(optimctl --help lists the commands)\n");
    return CLI_USAGE;
}

static int cmd_help(int argc, char **argv)
{
    if (argc == 0) {
        fputs(main_usage, stdout);
        return CLI_OK;
    }
    const command *cmd = find_command(argv[0]);
    if (!cmd || argc > 1)
        return main_usage_error("help: no command '%s'", argv[0]);
    fputs(cmd->usage, stdout);
    return CLI_OK;
}

int main(int argc, char **argv)
{
    cli cli = {.server = OPTIMD_DEFAULT_URL, .timeout_ms = DEFAULT_TIMEOUT_MS,
               .retries = DEFAULT_RETRIES, .backoff_ms = DEFAULT_BACKOFF_MS};
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *value;
        int got;
        if (cli_is_help(argv[i])) {
            fputs(main_usage, stdout);
            return CLI_OK;
        }
        if ((got = cli_option(argc, argv, &i, "--server", &value))) {
            if (got < 0) return main_usage_error("%s needs a URL", argv[i]);
            cli.server = value;
        } else if ((got = cli_option(argc, argv, &i, "--timeout", &value))) {
            uint64_t ms;
            if (got < 0)
                return main_usage_error("%s needs milliseconds", argv[i]);
            if (!cli_parse_u64(value, &ms) || ms == 0 || ms > 86400000)
                return main_usage_error(
                    "--timeout '%s': expected milliseconds, 1 to 86400000",
                    value);
            cli.timeout_ms = (int)ms;
        } else if ((got = cli_option(argc, argv, &i, "--retries", &value))) {
            uint64_t n;
            if (got < 0) return main_usage_error("%s needs a count", argv[i]);
            if (!cli_parse_u64(value, &n) || n > 1000)
                return main_usage_error(
                    "--retries '%s': expected a count, 0 to 1000", value);
            cli.retries = (int)n;
        } else if ((got = cli_option(argc, argv, &i, "--retry-backoff",
                                     &value))) {
            uint64_t ms;
            if (got < 0)
                return main_usage_error("%s needs milliseconds", argv[i]);
            if (!cli_parse_u64(value, &ms) || ms > 60000)
                return main_usage_error(
                    "--retry-backoff '%s': expected milliseconds, 0 to 60000",
                    value);
            cli.backoff_ms = (int)ms;
        } else if ((got = cli_option(argc, argv, &i, "--admin-token",
                                     &value))) {
            if (got < 0) return main_usage_error("%s needs a token", argv[i]);
            cli.admin_token = value;
        } else if ((got = cli_option(argc, argv, &i, "--tls-ca", &value))) {
            if (got < 0) return main_usage_error("%s needs a file", argv[i]);
            cli.tls_ca = value;
        } else if ((got = cli_option(argc, argv, &i, "--tls-cert", &value))) {
            if (got < 0) return main_usage_error("%s needs a file", argv[i]);
            cli.tls_cert = value;
        } else if ((got = cli_option(argc, argv, &i, "--tls-key", &value))) {
            if (got < 0) return main_usage_error("%s needs a file", argv[i]);
            cli.tls_key = value;
        } else if ((got = cli_option(argc, argv, &i, "--tls-server-name",
                                     &value))) {
            if (got < 0) return main_usage_error("%s needs a name", argv[i]);
            cli.tls_server_name = value;
        } else {
            return main_usage_error("unknown option '%s'", argv[i]);
        }
    }
    if (i == argc) return main_usage_error("no command given%s", "");
    if (strcmp(argv[i], "help") == 0) return cmd_help(argc - i - 1, argv + i + 1);
    const command *cmd = find_command(argv[i]);
    if (!cmd) return main_usage_error("unknown command '%s'", argv[i]);
    cli.command = cmd->name;
    cli.usage = cmd->usage;
    for (int k = i + 1; k < argc; k++)
        if (cli_is_help(argv[k])) {
            fputs(cmd->usage, stdout);
            return CLI_OK;
        }
    return cmd->run(&cli, argc - i - 1, argv + i + 1);
}
