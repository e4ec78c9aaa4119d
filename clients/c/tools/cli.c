#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static void report_retry(void *arg, const char *message)
{
    (void)arg;
    fprintf(stderr, "optimctl: %s\n", message);
}

int cli_connect(const cli *cli, optimd_client **out)
{
    optimd_client_options o;
    optimd_client_options_init(&o);
    o.timeout_ms = cli->timeout_ms;
    o.max_retries = cli->retries;
    o.backoff_ms = cli->backoff_ms;
    /* A user watching a run stall deserves to know it is waiting for the
     * daemon, not hung. */
    o.on_retry = report_retry;
    o.tls_ca_file = cli->tls_ca;
    o.tls_cert_file = cli->tls_cert;
    o.tls_key_file = cli->tls_key;
    o.tls_server_name = cli->tls_server_name;
    if (optimd_client_connect_ex(cli->server, &o, out) != 0)
        return cli_fail("%s", optimd_client_error(NULL));
    return CLI_OK;
}

bool cli_session_name_ok(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > 128 || name[0] == '.') return false;
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

int cli_token_path(const char *name, const char *token_file, char *buf,
                   size_t cap)
{
    const char *dir = getenv("OPTIMD_TOKEN_DIR");
    int n;
    if (token_file) n = snprintf(buf, cap, "%s", token_file);
    else if (dir && *dir) n = snprintf(buf, cap, "%s/%s", dir, name);
    else n = snprintf(buf, cap, "var/optimctl-tokens/%s", name);
    if (n < 0 || (size_t)n >= cap || buf[0] == '\0')
        return cli_fail("token file path for session %s is empty or too "
                        "long", name);
    return CLI_OK;
}

static bool is_token(const char *t)
{
    if (strlen(t) != 32) return false;
    for (const char *p = t; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

int cli_read_token(const char *path, char token[33], bool *exists)
{
    *exists = false;
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return CLI_OK;
        return cli_fail("cannot read token file %s: %s", path,
                        strerror(errno));
    }
    char line[128] = "";
    bool got = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    line[strcspn(line, " \t\r\n")] = '\0';
    if (!got || !is_token(line))
        return cli_fail("token file %s does not hold a token (32 lowercase "
                        "hex digits)", path);
    memcpy(token, line, 33);
    *exists = true;
    return CLI_OK;
}

/* mkdir -p for the directory part of `path`; new directories are 0700,
 * since what they hold opens sessions. */
static int make_parents(const char *path)
{
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return cli_fail("token file path %s is too long", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return CLI_OK;
    *slash = '\0';
    for (char *p = dir + 1; ; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            return cli_fail("cannot create directory %s: %s", dir,
                            strerror(errno));
        *p = saved;
        if (!saved) break;
    }
    return CLI_OK;
}

int cli_write_token(const char *path, const char *token)
{
    if (make_parents(path)) return CLI_FAIL;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return cli_fail("cannot write token file %s: %s", tmp,
                        strerror(errno));
    char line[40];
    int len = snprintf(line, sizeof line, "%s\n", token);
    /* A torn token file would strand the session, so it is whole on disk
     * before it takes the real name. */
    bool ok = write(fd, line, (size_t)len) == len && fsync(fd) == 0;
    int err = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        err = errno;
    }
    if (!ok) {
        unlink(tmp);
        return cli_fail("cannot write token file %s: %s", path,
                        strerror(err));
    }
    /* The rename itself must survive a crash too. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    int dfd = open(slash ? (slash == dir ? "/" : dir) : ".",
                   O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
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
                     optimd_session *s, char *token_path, size_t cap)
{
    const char *name = NULL, *token = NULL, *token_file = NULL;
    for (int i = 0; i < argc; i++) {
        int got = cli_option(argc, argv, &i, "--token", &token);
        if (got < 0) return cli_usage_error(cli, "--token needs a value");
        if (got) continue;
        got = cli_option(argc, argv, &i, "--token-file", &token_file);
        if (got < 0) return cli_usage_error(cli, "--token-file needs a file");
        if (got) continue;
        if (argv[i][0] == '-' && argv[i][1])
            return cli_usage_error(cli, "unknown option '%s'", argv[i]);
        if (name)
            return cli_usage_error(cli, "unexpected argument '%s'", argv[i]);
        name = argv[i];
    }
    if (!name) return cli_usage_error(cli, "no session name given");
    if (token && token_file)
        return cli_usage_error(cli, "give --token or --token-file, not both");
    if (strlen(name) >= sizeof s->name || !*name)
        return cli_usage_error(cli, "session name must be 1 to %zu bytes",
                               sizeof s->name - 1);
    memset(s, 0, sizeof *s);
    strcpy(s->name, name);
    token_path[0] = '\0';
    if (token) {
        if (strlen(token) >= sizeof s->token)
            return cli_usage_error(cli, "a token is %zu characters",
                                   sizeof s->token - 1);
        strcpy(s->token, token);
        return CLI_OK;
    }
    /* The default file is named after the session, so the name must be
     * one the daemon could have: nothing that walks out of the directory. */
    if (!token_file && !cli_session_name_ok(name))
        return cli_usage_error(cli, "'%s' is not a session name, so it has "
                               "no token file; give --token", name);
    bool exists;
    if (cli_token_path(name, token_file, token_path, cap) ||
        cli_read_token(token_path, s->token, &exists))
        return CLI_FAIL;
    if (!exists)
        return cli_usage_error(cli, "no --token given and no token file %s",
                               token_path);
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
                                        "--set", "--sched-set",
                                        "--durability"};
    for (int k = 0; k < 5; k++) {
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
        case 4:
            if (strcmp(value, "always") && strcmp(value, "interval") &&
                strcmp(value, "none"))
                return -cli_usage_error(cli, "--durability '%s': expected "
                                        "always, interval or none", value);
            spec->durability = value;
            return 1;
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
