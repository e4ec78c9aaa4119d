/* optimctl's part of sessions with workers: open's --workers options,
 * join and leave, and the workers lines of info. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char join_usage[] =
    "usage: optimctl join NAME WORKER [--token TOKEN | --token-file FILE]\n"
    "Makes WORKER (1 to 64 bytes) a member of session NAME, opened with\n"
    "--workers; prints \"rank R\", the order a sync round sums in (the\n"
    "lowest free one; joining again changes nothing). The token is found\n"
    "as for info.\n";
const char leave_usage[] =
    "usage: optimctl leave NAME WORKER [--token TOKEN | --token-file FILE]\n"
    "Removes WORKER from session NAME; a push of it that waits is answered\n"
    "UNKNOWN_WORKER. The token is found as for info.\n";

/* A uint option in [min, max]; 1 consumed, 0 not this option, or
 * CLI_USAGE negated after reporting. */
static int u32_option(const cli *cli, int argc, char **argv, int *i,
                      const char *name, uint64_t min, uint64_t max,
                      uint32_t *out)
{
    const char *value;
    int got = cli_option(argc, argv, i, name, &value);
    if (got <= 0)
        return got < 0 ? -cli_usage_error(cli, "%s needs a number", name) : 0;
    uint64_t v;
    if (!cli_parse_u64(value, &v) || v < min || v > max)
        return -cli_usage_error(cli, "%s '%s': expected %llu to %llu", name,
                                value, (unsigned long long)min,
                                (unsigned long long)max);
    *out = (uint32_t)v;
    return 1;
}

static int str_option(const cli *cli, int argc, char **argv, int *i,
                      const char *name, const char *a, const char *b,
                      const char **out)
{
    const char *value;
    int got = cli_option(argc, argv, i, name, &value);
    if (got <= 0)
        return got < 0 ? -cli_usage_error(cli, "%s needs a value", name) : 0;
    if (strcmp(value, a) != 0 && (!b || strcmp(value, b) != 0))
        return -cli_usage_error(cli, "%s '%s': expected %s%s%s", name, value,
                                a, b ? " or " : "", b ? b : "");
    *out = value;
    return 1;
}

int cli_workers_option(const cli *cli, int argc, char **argv, int *i,
                       optimd_open_options *o)
{
    int got;
    const char *mode;
    /* Three modes: the third is checked by hand. */
    if ((got = cli_option(argc, argv, i, "--workers", &mode))) {
        if (got < 0) return -cli_usage_error(cli, "--workers needs a mode");
        if (strcmp(mode, "sync") != 0 && strcmp(mode, "async") != 0 &&
            strcmp(mode, "bounded") != 0)
            return -cli_usage_error(cli, "--workers '%s': expected sync, "
                                    "async or bounded", mode);
        o->workers_mode = mode;
        return 1;
    }
    if ((got = u32_option(cli, argc, argv, i, "--workers-count", 1,
                          UINT32_MAX, &o->workers_count)) ||
        (got = u32_option(cli, argc, argv, i, "--workers-timeout", 1,
                          86400000, &o->workers_timeout_ms)) ||
        (got = u32_option(cli, argc, argv, i, "--workers-max-staleness", 0,
                          UINT32_MAX, &o->workers_max_staleness)) ||
        (got = str_option(cli, argc, argv, i, "--workers-reduce", "mean",
                          "sum", &o->workers_reduce)) ||
        (got = str_option(cli, argc, argv, i, "--workers-on-timeout", "fail",
                          "proceed", &o->workers_on_timeout)))
        return got;
    return 0;
}

void cli_print_workers(const optimd_workers_info *w)
{
    if (!w) return;
    printf("workers %s", w->mode);
    if (w->count) printf(" count=%u", (unsigned)w->count);
    if (w->reduce) printf(" reduce=%s", w->reduce);
    if (w->on_timeout) printf(" on_timeout=%s", w->on_timeout);
    if (w->timeout_ms) printf(" timeout_ms=%u", (unsigned)w->timeout_ms);
    if (strcmp(w->mode, "bounded") == 0)
        printf(" max_staleness=%u", (unsigned)w->max_staleness);
    if (strcmp(w->mode, "sync") == 0)
        printf(" round_pushes=%u", (unsigned)w->round_pushes);
    putchar('\n');
    for (size_t i = 0; i < w->n_members; i++)
        printf("worker %s rank %u pushes %llu staleness %llu%s\n",
               w->members[i].name, (unsigned)w->members[i].rank,
               (unsigned long long)w->members[i].pushes,
               (unsigned long long)w->members[i].staleness,
               w->members[i].waiting ? " waiting" : "");
}

/* join and leave: NAME WORKER and the token options. */
static int membership(const cli *cli, int argc, char **argv, bool join)
{
    /* NAME and the token options go on to cli_session_args; WORKER, the
     * second positional argument, is this command's. */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) return cli_fail("out of memory");
    int n_rest = 0, positional = 0, rv = CLI_OK;
    const char *worker = NULL;
    for (int i = 0; i < argc; i++) {
        bool value_next = (strcmp(argv[i], "--token") == 0 ||
                           strcmp(argv[i], "--token-file") == 0) &&
                          i + 1 < argc;
        if (value_next) {
            rest[n_rest++] = argv[i++];
            rest[n_rest++] = argv[i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            rest[n_rest++] = argv[i];   /* cli_session_args reports it */
        } else if (positional++ == 1) {
            worker = argv[i];
        } else {
            rest[n_rest++] = argv[i];
        }
    }
    optimd_session s;
    optimd_client *c = NULL;
    char path[4096];
    if (!worker) rv = cli_usage_error(cli, "no WORKER given");
    else if (!*worker || strlen(worker) > 64)
        rv = cli_usage_error(cli, "a worker name is 1 to 64 bytes");
    if (rv == CLI_OK)
        rv = cli_session_args(cli, n_rest, rest, &s, path, sizeof path);
    if (rv == CLI_OK) rv = cli_connect(cli, &c);
    if (rv == CLI_OK) {
        uint32_t rank;
        int code = join ? optimd_client_join(c, &s, worker, &rank)
                        : optimd_client_leave(c, &s, worker);
        if (code) rv = cli_fail("%s", optimd_client_error(c));
        else if (join) printf("rank %u\n", (unsigned)rank);
    }
    optimd_client_free(c);
    free(rest);
    return rv;
}

int cmd_join(const cli *cli, int argc, char **argv)
{
    return membership(cli, argc, argv, true);
}

int cmd_leave(const cli *cli, int argc, char **argv)
{
    return membership(cli, argc, argv, false);
}
