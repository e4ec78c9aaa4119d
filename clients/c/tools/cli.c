#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_usage_error(const cli *cli, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "optimctl %s: ", cli->command);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%s", cli->usage);
    return CLI_USAGE;
}

int cli_fail(const char *fmt, ...)
{
    va_list ap;
    fputs("optimctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_FAIL;
}

int cli_connect(const cli *cli, optimd_client **out)
{
    if (optimd_client_connect(cli->server, cli->timeout_ms, out) != 0)
        return cli_fail("%s", optimd_client_error(NULL));
    return CLI_OK;
}

int cli_option(int argc, char **argv, int *i, const char *name,
               const char **value)
{
    const char *arg = argv[*i];
    size_t len = strlen(name);
    if (strncmp(arg, name, len) != 0) return 0;
    if (arg[len] == '=') {
        *value = arg + len + 1;
        return 1;
    }
    if (arg[len] != '\0') return 0;
    if (*i + 1 >= argc) return -1;
    *i += 1;
    *value = argv[*i];
    return 1;
}

bool cli_is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

bool cli_parse_u64(const char *text, uint64_t *out)
{
    if (!*text) return false;
    for (const char *p = text; *p; p++)
        if (*p < '0' || *p > '9') return false;
    errno = 0;
    unsigned long long v = strtoull(text, NULL, 10);
    if (errno) return false;
    *out = v;
    return true;
}

bool cli_parse_double(const char *text, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno == ERANGE) return false;
    *out = v;
    return true;
}

int cli_session_args(const cli *cli, int argc, char **argv,
                     optimd_session *s)
{
    const char *name = NULL, *token = NULL;
    for (int i = 0; i < argc; i++) {
        int got = cli_option(argc, argv, &i, "--token", &token);
        if (got < 0) return cli_usage_error(cli, "--token needs a value");
        if (got) continue;
        if (argv[i][0] == '-' && argv[i][1])
            return cli_usage_error(cli, "unknown option '%s'", argv[i]);
        if (name)
            return cli_usage_error(cli, "unexpected argument '%s'", argv[i]);
        name = argv[i];
    }
    if (!name) return cli_usage_error(cli, "no session name given");
    if (!token) return cli_usage_error(cli, "--token is required");
    if (strlen(name) >= sizeof s->name || !*name)
        return cli_usage_error(cli, "session name must be 1 to %zu bytes",
                               sizeof s->name - 1);
    if (strlen(token) >= sizeof s->token)
        return cli_usage_error(cli, "a token is %zu characters",
                               sizeof s->token - 1);
    memset(s, 0, sizeof *s);
    strcpy(s->name, name);
    strcpy(s->token, token);
    return CLI_OK;
}

int cli_open_spec_init(cli_open_spec *spec, int argc)
{
    memset(spec, 0, sizeof *spec);
    size_t n = argc > 0 ? (size_t)argc : 1;
    spec->hp = calloc(n, sizeof *spec->hp);
    spec->sched_hp = calloc(n, sizeof *spec->sched_hp);
    if (!spec->hp || !spec->sched_hp) {
        cli_open_spec_free(spec);
        return cli_fail("out of memory");
    }
    return CLI_OK;
}

void cli_open_spec_free(cli_open_spec *spec)
{
    free(spec->hp);
    free(spec->sched_hp);
    spec->hp = spec->sched_hp = NULL;
}

static int parse_set(const cli *cli, const char *option, char *text,
                     optimd_hvalue *out)
{
    char shown[256];
    snprintf(shown, sizeof shown, "%s", text);
    if (optimd_hvalue_parse(text, out) != 0)
        return -cli_usage_error(cli, "bad %s '%s': expected KEY=VALUE with "
                                "VALUE true, false, an integer or a number",
                                option, shown);
    return 1;
}

int cli_open_option(const cli *cli, int argc, char **argv, int *i,
                    cli_open_spec *spec)
{
    static const char *const names[] = {"--optimizer", "--scheduler",
                                        "--set", "--sched-set"};
    for (int k = 0; k < 4; k++) {
        const char *value;
        int got = cli_option(argc, argv, i, names[k], &value);
        if (got == 0) continue;
        if (got < 0)
            return -cli_usage_error(cli, "%s needs a value", names[k]);
        switch (k) {
        case 0: spec->optimizer = value; return 1;
        case 1: spec->scheduler = value; return 1;
        case 2:
            return parse_set(cli, names[k], (char *)value,
                             &spec->hp[spec->n_hp++]);
        default:
            return parse_set(cli, names[k], (char *)value,
                             &spec->sched_hp[spec->n_sched_hp++]);
        }
    }
    return 0;
}

int cli_open_spec_check(const cli *cli, const cli_open_spec *spec)
{
    if (!spec->optimizer)
        return cli_usage_error(cli, "--optimizer is required");
    if (spec->n_sched_hp && !spec->scheduler)
        return cli_usage_error(cli, "--sched-set needs --scheduler");
    return CLI_OK;
}
