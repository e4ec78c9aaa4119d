#include "options.h"

#include "log.h"

#include <errno.h>
#include <optimd/protocol.h>
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

static void usage(FILE *out)
{
    fprintf(out,
        "usage: optimd [options]\n"
        "  --listen URL         NNG address to serve (repeatable; default %s)\n"
        "  --plugin-dir DIR     load every *.so in DIR (repeatable; default %s)\n"
        "  --state-dir DIR      session state directory (default ./var/optimd)\n"
        "  --snapshot-interval S  seconds between snapshots of changed sessions\n"
        "                       (default 30; 0: only when stopping)\n"
        "  --sync-interval MS   how often logs of 'interval' sessions reach the disk\n"
        "                       (default 100)\n"
        "  --session-ttl S      close sessions unused for S seconds (default 0: never)\n"
        "  --max-message BYTES  largest request accepted (default 268435456)\n"
        "  --max-sessions N     most sessions at once (default 1024)\n"
        "  --threads N          request threads (default 4)\n"
        "  --compute-threads N  extra threads for large tensors (default: cores - 1)\n"
        "  --ready-file FILE    write the first bound URL to FILE once serving\n"
        "  --validator PATH     optimd-validate, run in a child process on every plugin\n"
        "                       file before it is loaded (default: none)\n"
        "  --admin-token TOKEN  allows the admin ops (reload, load) to requests that\n"
        "                       carry it (default: $OPTIMD_ADMIN_TOKEN; unset: refused)\n"
        "  --watch-plugins on|off  reload when a plugin directory changes (default on)\n"
        "  --log-level LEVEL    debug, info, warn or error (default info)\n"
        "  --help, --version\n",
        OPTIMD_DEFAULT_URL, OPTIMD_DEFAULT_PLUGIN_DIR);
}

static int parse_u64(const char *opt, const char *text, uint64_t min, uint64_t max,
                     uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v < min || v > max) {
        fprintf(stderr, "optimd: %s wants an integer in [%llu, %llu], got '%s'\n",
                opt, (unsigned long long)min, (unsigned long long)max, text);
        return -1;
    }
    *out = v;
    return 0;
}

int options_parse(options *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->state_dir = "./var/optimd";
    o->max_message = 256ull << 20;
    o->max_sessions = 1024;
    o->request_threads = 4;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    o->compute_threads = cores > 1 ? (uint32_t)(cores - 1) : 0;
    o->contexts = 64;
    o->snapshot_interval = 30;
    o->sync_interval_ms = 100;
    o->log_level = OPTIMD_LOG_INFO;
    o->watch_plugins = true;
    o->admin_token = getenv("OPTIMD_ADMIN_TOKEN");

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (strcmp(a, "--version") == 0) {
            printf("optimd %s (protocol %d, plugin ABI %u.%u)\n", OPTIMD_VERSION,
                   OPTIMD_PROTOCOL_VERSION, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MINOR);
            return 1;
        }
        if (i + 1 >= argc || strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "optimd: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return -1;
        }
        const char *v = argv[++i];
        uint64_t n;
        if (strcmp(a, "--listen") == 0) {
            if (o->n_listen == OPTIONS_MAX_LISTEN) {
                fprintf(stderr, "optimd: at most %d --listen\n", OPTIONS_MAX_LISTEN);
                return -1;
            }
            o->listen[o->n_listen++] = v;
        } else if (strcmp(a, "--plugin-dir") == 0) {
            if (o->n_plugin_dirs == OPTIONS_MAX_PLUGIN_DIRS) {
                fprintf(stderr, "optimd: at most %d --plugin-dir\n", OPTIONS_MAX_PLUGIN_DIRS);
                return -1;
            }
            o->plugin_dirs[o->n_plugin_dirs++] = v;
        } else if (strcmp(a, "--state-dir") == 0) {
            o->state_dir = v;
        } else if (strcmp(a, "--snapshot-interval") == 0) {
            if (parse_u64(a, v, 0, 86400, &n)) return -1;
            o->snapshot_interval = (uint32_t)n;
        } else if (strcmp(a, "--sync-interval") == 0) {
            if (parse_u64(a, v, 1, 60000, &n)) return -1;
            o->sync_interval_ms = (uint32_t)n;
        } else if (strcmp(a, "--session-ttl") == 0) {
            if (parse_u64(a, v, 0, 100ull * 365 * 86400, &n)) return -1;
            o->session_ttl = (uint32_t)n;
        } else if (strcmp(a, "--ready-file") == 0) {
            o->ready_file = v;
        } else if (strcmp(a, "--validator") == 0) {
            o->validator = v;
        } else if (strcmp(a, "--admin-token") == 0) {
            o->admin_token = v;
        } else if (strcmp(a, "--watch-plugins") == 0) {
            if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0) {
                fprintf(stderr, "optimd: --watch-plugins wants on or off\n");
                return -1;
            }
            o->watch_plugins = strcmp(v, "on") == 0;
        } else if (strcmp(a, "--max-message") == 0) {
            if (parse_u64(a, v, 1024, 1ull << 32, &n)) return -1;
            o->max_message = n;
        } else if (strcmp(a, "--max-sessions") == 0) {
            if (parse_u64(a, v, 1, 1u << 20, &n)) return -1;
            o->max_sessions = (uint32_t)n;
        } else if (strcmp(a, "--threads") == 0) {
            if (parse_u64(a, v, 1, 256, &n)) return -1;
            o->request_threads = (uint32_t)n;
        } else if (strcmp(a, "--compute-threads") == 0) {
            if (parse_u64(a, v, 0, 256, &n)) return -1;
            o->compute_threads = (uint32_t)n;
        } else if (strcmp(a, "--log-level") == 0) {
            o->log_level = log_level_from_name(v);
            if (o->log_level < 0) {
                fprintf(stderr, "optimd: --log-level wants debug, info, warn or error\n");
                return -1;
            }
        } else {
            fprintf(stderr, "optimd: unknown option '%s'\n", a);
            usage(stderr);
            return -1;
        }
    }
    if (o->n_listen == 0) o->listen[o->n_listen++] = OPTIMD_DEFAULT_URL;
    if (o->n_plugin_dirs == 0) o->plugin_dirs[o->n_plugin_dirs++] = OPTIMD_DEFAULT_PLUGIN_DIR;
    /* Enough contexts that every request thread always has work queued. */
    if (o->contexts < o->request_threads * 4) o->contexts = o->request_threads * 4;
    return 0;
}
