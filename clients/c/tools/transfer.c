/* optimctl export and import: a session as a safetensors file, so it can
 * move between daemons (protocol.md, export and import). */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char export_usage[] =
    "usage: optimctl export NAME FILE [--token TOKEN | --token-file FILE]\n"
    "Writes the session (parameters, optimizer state, hyperparameters,\n"
    "counters, clients' sequence numbers) to FILE as one safetensors file,\n"
    "the format the daemon stores; torch and safetensors can read it. The\n"
    "token comes from where info reads it.\n";

const char import_usage[] =
    "usage: optimctl import FILE [--session NAME] "
    "[--durability always|interval|none]\n"
    "                       [--token-file FILE]\n"
    "Creates a session from a file that export wrote, under its stored\n"
    "name unless --session gives another, with a new token, which is\n"
    "printed (and written to --token-file, mode 0600, if given).\n";

/* Writes all of buf to path through a temporary file, so a failed export
 * leaves no half file where a whole one is expected. */
static int write_whole_file(const char *path, const void *buf, size_t size)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid()) >=
        (int)sizeof tmp)
        return cli_fail("path too long: %s", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return cli_fail("cannot create %s: %s", tmp, strerror(errno));
    bool ok = fwrite(buf, 1, size, f) == size && fflush(f) == 0 &&
              fsync(fileno(f)) == 0;
    int e = errno;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        if (ok) e = errno;
        unlink(tmp);
        return cli_fail("cannot write %s: %s", path, strerror(e));
    }
    return CLI_OK;
}

static int read_whole_file(const char *path, void **buf, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return cli_fail("cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return cli_fail("%s is not a regular file", path);
    }
    *size = (size_t)st.st_size;
    *buf = malloc(*size ? *size : 1);
    bool ok = *buf && fread(*buf, 1, *size, f) == *size;
    fclose(f);
    if (!ok) {
        free(*buf);
        *buf = NULL;
        return cli_fail("cannot read %s", path);
    }
    return CLI_OK;
}

int cmd_export(const cli *cli, int argc, char **argv)
{
    /* The second plain argument is the file; the rest are what every
     * session command takes. */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) return cli_fail("out of memory");
    const char *file = NULL;
    int n_rest = 0, plain = 0;
    for (int i = 0; i < argc; i++) {
        bool takes_value = strcmp(argv[i], "--token") == 0 ||
                           strcmp(argv[i], "--token-file") == 0;
        if (argv[i][0] != '-' && plain++ == 1) {
            file = argv[i];
            continue;
        }
        rest[n_rest++] = argv[i];
        if (takes_value && i + 1 < argc) rest[n_rest++] = argv[++i];
    }
    optimd_session s;
    char path[4096];
    int rv = file ? CLI_OK : cli_usage_error(cli, "no output FILE given");
    if (!rv) rv = cli_session_args(cli, n_rest, rest, &s, path, sizeof path);
    free(rest);
    optimd_client *c = NULL;
    if (rv || (rv = cli_connect(cli, &c))) return rv;
    void *blob = NULL;
    size_t size = 0;
    if (optimd_client_export(c, &s, &blob, &size) != 0)
        rv = cli_fail("%s", optimd_client_error(c));
    else if (!(rv = write_whole_file(file, blob, size)))
        fprintf(stderr, "optimctl: session %s exported to %s (%zu bytes)\n",
                s.name, file, size);
    free(blob);
    optimd_client_free(c);
    return rv;
}

int cmd_import(const cli *cli, int argc, char **argv)
{
    const char *file = NULL, *name = NULL, *durability = NULL,
               *token_file = NULL;
    int rv = CLI_OK;
    for (int i = 0; i < argc && !rv; i++) {
        int got;
        if ((got = cli_option(argc, argv, &i, "--session", &name)) ||
            (got = cli_option(argc, argv, &i, "--durability", &durability)) ||
            (got = cli_option(argc, argv, &i, "--token-file", &token_file))) {
            if (got < 0) rv = cli_usage_error(cli, "%s needs a value", argv[i]);
        } else if (argv[i][0] == '-' && argv[i][1]) {
            rv = cli_usage_error(cli, "unknown option '%s'", argv[i]);
        } else if (file) {
            rv = cli_usage_error(cli, "unexpected argument '%s'", argv[i]);
        } else {
            file = argv[i];
        }
    }
    if (!rv && !file) rv = cli_usage_error(cli, "no snapshot FILE given");
    if (!rv && name && !cli_session_name_ok(name))
        rv = cli_usage_error(cli, "'%s' is not a session name", name);
    if (!rv && durability && strcmp(durability, "always") &&
        strcmp(durability, "interval") && strcmp(durability, "none"))
        rv = cli_usage_error(cli, "--durability '%s': expected always, "
                             "interval or none", durability);
    void *blob = NULL;
    size_t size = 0;
    optimd_client *c = NULL;
    if (!rv) rv = read_whole_file(file, &blob, &size);
    if (!rv) rv = cli_connect(cli, &c);
    if (!rv) {
        optimd_session s;
        uint64_t steps = 0;
        if (optimd_client_import(c, blob, size, name, durability, &s,
                                 &steps) != 0) {
            rv = cli_fail("%s", optimd_client_error(c));
        } else {
            printf("%s\n", s.token);
            fprintf(stderr, "optimctl: imported session %s at step %llu\n",
                    s.name, (unsigned long long)steps);
            if (token_file) rv = cli_write_token(token_file, s.token);
        }
    }
    free(blob);
    optimd_client_free(c);
    return rv;
}
