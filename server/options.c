#include "options.h"

#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <optimd/protocol.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef OPTIMD_VERSION
#define OPTIMD_VERSION "0.0.0"
#endif
#ifndef OPTIMD_DEFAULT_PLUGIN_DIR
#define OPTIMD_DEFAULT_PLUGIN_DIR "/usr/local/lib/optimd/plugins"
#endif

/* One option: its name (the flag without "--", the key in a config file),
 * whether it takes a value, and its line in --help. */
typedef struct option_def {
    const char *name;
    const char *arg;           /* NULL: a switch without a value */
    const char *help;
} option_def;

static const option_def defs[] = {
    {"config", "FILE", "read options from FILE (key = value lines); flags given here override it"},
    {"check-config", NULL, "check the options, files and directories, print the result, exit"},
    {"listen", "URL", "NNG address to serve (repeatable; default " OPTIMD_DEFAULT_URL ")"},
    {"plugin-dir", "DIR", "load every *.so in DIR (repeatable; default " OPTIMD_DEFAULT_PLUGIN_DIR ")"},
    {"state-dir", "DIR", "session state directory (default ./var/optimd)"},
    {"snapshot-interval", "S", "seconds between snapshots of changed sessions (default 30; 0: at stop)"},
    {"sync-interval", "MS", "how often logs of 'interval' sessions reach the disk (default 100)"},
    {"session-ttl", "S", "close sessions unused for S seconds (default 0: never)"},
    {"max-message", "BYTES", "largest request accepted (default 268435456)"},
    {"max-sessions", "N", "most sessions at once (default 1024)"},
    {"max-tensors", "N", "most tensors in one request (default 65536)"},
    {"max-session-bytes", "BYTES", "most parameter and state memory of one session (default 0: only the total)"},
    {"max-total-bytes", "BYTES", "most parameter and state memory of all sessions (default: 3/4 of RAM)"},
    {"threads", "N", "request threads (default 4)"},
    {"compute-threads", "N", "extra threads for large tensors (default: cores - 1)"},
    {"ready-file", "FILE", "write the first bound URL to FILE once serving"},
    {"log-level", "LEVEL", "debug, info, warn or error (default info)"},
    {"log-format", "text|json", "one text line, or one JSON object, per event (default text)"},
    {"max-in-flight", "N", "most requests one connection may have in flight (default 16)"},
    {"validator", "PATH", "optimd-validate, run on every plugin file before it is loaded"},
    {"admin-token", "TOKEN", "allows the admin ops (reload, load) (default: $OPTIMD_ADMIN_TOKEN)"},
    {"watch-plugins", "on|off", "reload when a plugin directory changes (default on)"},
    {"tls-cert", "FILE", "certificate (PEM) of tls+tcp:// listeners"},
    {"tls-key", "FILE", "its private key (PEM)"},
    {"tls-ca", "FILE", "CA certificates (PEM) that client certificates must chain to"},
    {"tls-client-auth", "MODE", "none, optional or required (default none; required when --tls-ca only)"},
    {"allow-remote", "yes|no", "serve non-loopback addresses without client certificates (default no)"},
    {"metrics-listen", "HOST:PORT", "serve Prometheus metrics over HTTP there (default: off)"},
};
#define N_DEFS (sizeof defs / sizeof defs[0])

static void usage(FILE *out)
{
    fprintf(out, "usage: optimd [options]\n");
    for (size_t i = 0; i < N_DEFS; i++) {
        char left[48];
        snprintf(left, sizeof left, "--%s%s%s", defs[i].name, defs[i].arg ? " " : "",
                 defs[i].arg ? defs[i].arg : "");
        fprintf(out, "  %-28s %s\n", left, defs[i].help);
    }
    fprintf(out, "  %-28s %s\n", "--help, --version", "");
}

static int bad(const char *source, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(const char *source, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "optimd: %s: ", source);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return -1;
}

static int parse_u64(const char *source, const char *name, const char *text, uint64_t min, uint64_t max,
                     uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v < min || v > max)
        return bad(source, "%s wants an integer in [%llu, %llu], got '%s'", name, (unsigned long long)min,
                   (unsigned long long)max, text);
    *out = v;
    return 0;
}

static int parse_bool(const char *source, const char *name, const char *v, const char *yes, const char *no,
                      bool *out)
{
    if (strcmp(v, yes) == 0) *out = true;
    else if (strcmp(v, no) == 0) *out = false;
    else return bad(source, "%s wants %s or %s, got '%s'", name, yes, no, v);
    return 0;
}

/* A string that lives as long as the options (config file values). */
static const char *keep(options *o, const char *s)
{
    char *copy = strdup(s);
    char **grown = copy ? realloc(o->owned, (o->n_owned + 1) * sizeof *grown) : NULL;
    if (!grown) {
        free(copy);
        return NULL;
    }
    o->owned = grown;
    o->owned[o->n_owned++] = copy;
    return copy;
}

/* Applies one option. `from_config`: a repeatable option given on the
 * command line replaces the config file's list instead of adding to it. */
static int apply(options *o, const char *name, const char *v, const char *source, bool from_config)
{
    uint64_t n;
    if (strcmp(name, "listen") == 0 || strcmp(name, "plugin-dir") == 0) {
        bool listen = name[0] == 'l';
        int *count = listen ? &o->n_listen : &o->n_plugin_dirs;
        bool *cleared = listen ? &o->listen_from_args : &o->plugin_dirs_from_args;
        const char **list = listen ? o->listen : o->plugin_dirs;
        int cap = listen ? OPTIONS_MAX_LISTEN : OPTIONS_MAX_PLUGIN_DIRS;
        if (!from_config && !*cleared) {
            *count = 0;
            *cleared = true;
        }
        if (*count == cap) return bad(source, "at most %d --%s", cap, name);
        list[(*count)++] = v;
    } else if (strcmp(name, "state-dir") == 0) {
        o->state_dir = v;
    } else if (strcmp(name, "snapshot-interval") == 0) {
        if (parse_u64(source, name, v, 0, 86400, &n)) return -1;
        o->snapshot_interval = (uint32_t)n;
    } else if (strcmp(name, "sync-interval") == 0) {
        if (parse_u64(source, name, v, 1, 60000, &n)) return -1;
        o->sync_interval_ms = (uint32_t)n;
    } else if (strcmp(name, "session-ttl") == 0) {
        if (parse_u64(source, name, v, 0, 100ull * 365 * 86400, &n)) return -1;
        o->session_ttl = (uint32_t)n;
    } else if (strcmp(name, "ready-file") == 0) {
        o->ready_file = v;
    } else if (strcmp(name, "max-message") == 0) {
        if (parse_u64(source, name, v, 1024, 1ull << 32, &o->max_message)) return -1;
    } else if (strcmp(name, "max-sessions") == 0) {
        if (parse_u64(source, name, v, 1, 1u << 20, &n)) return -1;
        o->max_sessions = (uint32_t)n;
    } else if (strcmp(name, "max-tensors") == 0) {
        if (parse_u64(source, name, v, 1, 1u << 24, &n)) return -1;
        o->max_tensors = (uint32_t)n;
    } else if (strcmp(name, "max-session-bytes") == 0) {
        if (parse_u64(source, name, v, 0, UINT64_MAX, &o->max_session_bytes)) return -1;
    } else if (strcmp(name, "max-total-bytes") == 0) {
        if (parse_u64(source, name, v, 0, UINT64_MAX, &o->max_total_bytes)) return -1;
    } else if (strcmp(name, "threads") == 0) {
        if (parse_u64(source, name, v, 1, 256, &n)) return -1;
        o->request_threads = (uint32_t)n;
    } else if (strcmp(name, "compute-threads") == 0) {
        if (parse_u64(source, name, v, 0, 256, &n)) return -1;
        o->compute_threads = (uint32_t)n;
    } else if (strcmp(name, "log-level") == 0) {
        o->log_level = log_level_from_name(v);
        if (o->log_level < 0) return bad(source, "log-level wants debug, info, warn or error");
    } else if (strcmp(name, "log-format") == 0) {
        return parse_bool(source, name, v, "json", "text", &o->log_json);
    } else if (strcmp(name, "max-in-flight") == 0) {
        if (parse_u64(source, name, v, 1, 4096, &n)) return -1;
        o->max_in_flight = (uint32_t)n;
    } else if (strcmp(name, "validator") == 0) {
        o->validator = v;
    } else if (strcmp(name, "admin-token") == 0) {
        o->admin_token = v;
    } else if (strcmp(name, "watch-plugins") == 0) {
        return parse_bool(source, name, v, "on", "off", &o->watch_plugins);
    } else if (strcmp(name, "tls-cert") == 0) {
        o->tls_cert = v;
    } else if (strcmp(name, "tls-key") == 0) {
        o->tls_key = v;
    } else if (strcmp(name, "tls-ca") == 0) {
        o->tls_ca = v;
    } else if (strcmp(name, "tls-client-auth") == 0) {
        if (strcmp(v, "none") && strcmp(v, "optional") && strcmp(v, "required"))
            return bad(source, "tls-client-auth wants none, optional or required");
        o->tls_client_auth = v;
    } else if (strcmp(name, "allow-remote") == 0) {
        return parse_bool(source, name, v, "yes", "no", &o->allow_remote);
    } else if (strcmp(name, "metrics-listen") == 0) {
        o->metrics_listen = v;
    } else {
        return bad(source, "unknown option '%s'", name);
    }
    return 0;
}

static const option_def *find_def(const char *name)
{
    for (size_t i = 0; i < N_DEFS; i++)
        if (strcmp(defs[i].name, name) == 0) return &defs[i];
    return NULL;
}

/* key = value lines; '#' starts a comment; blank lines are skipped. */
static int read_config(options *o, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return bad(path, "cannot read it: %s", strerror(errno));
    char line[4096];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char source[4200];
        snprintf(source, sizeof source, "%s:%d", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            rc = bad(source, "line longer than %zu bytes", sizeof line - 1);
            break;
        }
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        char *end = s + strlen(s);
        while (end > s && isspace((unsigned char)end[-1])) *--end = '\0';
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = bad(source, "expected 'key = value'");
            break;
        }
        char *key_end = eq;
        while (key_end > s && isspace((unsigned char)key_end[-1])) key_end--;
        *key_end = '\0';
        char *value = eq + 1;
        while (isspace((unsigned char)*value)) value++;
        const option_def *d = find_def(s);
        if (!d || !d->arg || strcmp(s, "config") == 0) {
            rc = bad(source, "unknown key '%s'", s);
            break;
        }
        const char *kept = keep(o, value);
        if (!kept) {
            rc = bad(source, "out of memory");
            break;
        }
        rc = apply(o, s, kept, source, true);
    }
    fclose(f);
    return rc;
}

int options_parse(options *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->state_dir = "./var/optimd";
    o->max_message = 256ull << 20;
    o->max_sessions = 1024;
    o->max_tensors = 65536;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    o->max_total_bytes = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page / 4 * 3 : 0;
    o->request_threads = 4;
    o->max_in_flight = 16;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    o->compute_threads = cores > 1 ? (uint32_t)(cores - 1) : 0;
    o->contexts = 64;
    o->snapshot_interval = 30;
    o->sync_interval_ms = 100;
    o->log_level = OPTIMD_LOG_INFO;
    o->watch_plugins = true;
    o->admin_token = getenv("OPTIMD_ADMIN_TOKEN");

    /* The config file first, wherever --config stands: flags override it. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("optimd %s (protocol %d, plugin ABI %u.%u)\n", OPTIMD_VERSION, OPTIMD_PROTOCOL_VERSION,
                   OPTIMD_ABI_MAJOR, OPTIMD_ABI_MINOR);
            return 1;
        }
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            o->config = argv[++i];
            if (read_config(o, o->config)) return -1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const option_def *d = strncmp(a, "--", 2) == 0 ? find_def(a + 2) : NULL;
        if (!d) {
            bad("command line", "unknown option '%s'", a);
            usage(stderr);
            return -1;
        }
        if (!d->arg) {
            o->check_config = true;
            continue;
        }
        if (i + 1 >= argc) {
            bad("command line", "%s needs a value", a);
            return -1;
        }
        const char *v = argv[++i];
        if (strcmp(d->name, "config") == 0) continue;
        if (apply(o, d->name, v, "command line", false)) return -1;
    }
    if (o->n_listen == 0) o->listen[o->n_listen++] = OPTIMD_DEFAULT_URL;
    if (o->n_plugin_dirs == 0) o->plugin_dirs[o->n_plugin_dirs++] = OPTIMD_DEFAULT_PLUGIN_DIR;
    /* Enough contexts that every request thread always has work queued. */
    if (o->contexts < o->request_threads * 4) o->contexts = o->request_threads * 4;
    if (!o->tls_client_auth) o->tls_client_auth = o->tls_ca ? "required" : "none";
    if ((o->tls_cert == NULL) != (o->tls_key == NULL))
        return bad("options", "--tls-cert and --tls-key go together");
    if (o->metrics_listen && !o->allow_remote && strncmp(o->metrics_listen, "127.", 4) != 0 &&
        strncmp(o->metrics_listen, "localhost:", 10) != 0 && strncmp(o->metrics_listen, "[::1]:", 6) != 0)
        return bad("options", "--metrics-listen %s is reachable from other machines and has no "
                   "authentication: use a loopback address, or say --allow-remote yes", o->metrics_listen);
    for (int i = 0; i < o->n_listen; i++) {
        bool tls = strncmp(o->listen[i], "tls+tcp://", 10) == 0;
        if (tls && !o->tls_cert)
            return bad("options", "%s needs --tls-cert and --tls-key", o->listen[i]);
        if (!options_listen_is_local(o->listen[i]) && !o->allow_remote &&
            !(tls && strcmp(o->tls_client_auth, "required") == 0))
            return bad("options", "%s is reachable from other machines, and nothing there proves who a "
                       "client is: use tls+tcp:// with --tls-ca (client certificates required), or say "
                       "--allow-remote yes", o->listen[i]);
    }
    return 0;
}

bool options_listen_is_local(const char *url)
{
    if (strncmp(url, "ipc://", 6) == 0 || strncmp(url, "inproc://", 9) == 0) return true;
    const char *host = strstr(url, "://");
    if (!host) return false;
    host += 3;
    return strncmp(host, "127.", 4) == 0 || strncmp(host, "localhost:", 10) == 0 ||
           strncmp(host, "[::1]:", 6) == 0;
}

void options_free(options *o)
{
    for (size_t i = 0; i < o->n_owned; i++) free(o->owned[i]);
    free(o->owned);
    o->owned = NULL;
    o->n_owned = 0;
}
