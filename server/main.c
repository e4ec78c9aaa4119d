/* optimd: the daemon's entry point. The main thread runs a libuv loop that
 * owns the process lifecycle (signals, timers, plugin-directory watches);
 * requests are served by the transport's threads. */
#include "compute_pool.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "options.h"
#include "server.h"
#include "shm_attachment.h"
#include "transport.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

static void on_snapshot_timer(uv_timer_t *timer)
{
    server *srv = timer->data;
    store_save_all(&srv->store, &srv->sessions);
}

/* Closes sessions nobody used for --session-ttl seconds, files and all. */
static void on_expiry_timer(uv_timer_t *timer)
{
    server *srv = timer->data;
    int64_t now = session_monotonic_seconds();
    size_t n;
    session **list = session_table_list(&srv->sessions, &n);
    for (size_t i = 0; list && i < n; i++) {
        session *s = list[i];
        int64_t idle = now - atomic_load(&s->last_used);
        if (idle < (int64_t)srv->opts->session_ttl) continue;
        if (session_table_remove(&srv->sessions, s) != 0) continue;
        session_lock(s);
        s->closed = true;
        store_remove(&srv->store, s);
        optimd_shm_detach(s);
        session_unlock(s);
        log_info("session %s expired after %lld s unused", s->name, (long long)idle);
    }
    session_table_release_list(list, n);
}

static void on_sync_timer(uv_timer_t *timer)
{
    server *srv = timer->data;
    store_sync_logs(&srv->store, &srv->sessions);
}

/* Plugin hot swap: SIGHUP, or a change in a plugin directory (settled for
 * a moment, since copying a file into place is several events). */
static void reload_plugins(server *srv, const char *why)
{
    log_info("rescanning plugin directories (%s)", why);
    notify_systemd("RELOADING=1");
    int failed = plugin_registry_reload(&srv->plugins, NULL);
    notify_systemd("READY=1");
    if (failed) log_warn("%d plugin file(s) refused; the running versions stay", failed);
}

static void on_hangup(uv_signal_t *h, int signum)
{
    (void)signum;
    reload_plugins(h->data, "SIGHUP");
}

static void on_watch_settled(uv_timer_t *timer)
{
    reload_plugins(timer->data, "a plugin directory changed");
}

static void on_plugin_dir_event(uv_fs_event_t *h, const char *file, int events, int status)
{
    (void)events;
    if (status < 0 || !file) return;
    size_t len = strlen(file);
    if (len < 4 || strcmp(file + len - 3, ".so") != 0) return;
    uv_timer_t *settle = h->data;
    uv_timer_start(settle, on_watch_settled, 250, 0);
}

static void on_stop_signal(uv_signal_t *h, int signum)
{
    log_info("%s received: stopping", signum == SIGINT ? "SIGINT" : "SIGTERM");
    uv_stop(h->loop);
}

static int make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return -1;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int write_ready_file(const char *path, const char *url)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    fprintf(f, "%s\n", url);
    if (fclose(f) != 0) return -1;
    /* Renamed into place so a reader never sees half a line. */
    return rename(tmp, path);
}

static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* --check-config: everything the options name, checked without serving.
 * Returns the exit status. */
static int check_config(const options *o)
{
    int problems = 0;
    char probe[4200];
    if (make_dirs(o->state_dir) != 0) {
        log_error("state directory %s cannot be created: %s", o->state_dir, strerror(errno));
        problems++;
    } else {
        snprintf(probe, sizeof probe, "%s/.check-config", o->state_dir);
        FILE *f = fopen(probe, "w");
        if (!f || fclose(f) != 0) {
            log_error("state directory %s is not writable: %s", o->state_dir, strerror(errno));
            problems++;
        }
        unlink(probe);
    }
    for (int i = 0; i < o->n_plugin_dirs; i++) {
        DIR *d = opendir(o->plugin_dirs[i]);
        int n = 0;
        struct dirent *e;
        while (d && (e = readdir(d))) {
            size_t len = strlen(e->d_name);
            n += len > 3 && strcmp(e->d_name + len - 3, ".so") == 0;
        }
        if (!d) {
            log_error("plugin directory %s cannot be read: %s", o->plugin_dirs[i], strerror(errno));
            problems++;
        } else {
            closedir(d);
            log_info("plugin directory %s: %d plugin file(s)", o->plugin_dirs[i], n);
        }
    }
    if (o->validator && access(o->validator, X_OK) != 0) {
        log_error("validator %s cannot be run: %s", o->validator, strerror(errno));
        problems++;
    }
    if (o->tls_cert && transport_check_tls(o) != 0) problems++;
    if (o->metrics_listen && !strrchr(o->metrics_listen, ':')) {
        log_error("--metrics-listen wants HOST:PORT, got '%s'", o->metrics_listen);
        problems++;
    }
    if (o->admin_token && *o->admin_token && strlen(o->admin_token) < 16)
        log_warn("the admin token is shorter than 16 characters: easy to guess");
    for (int i = 0; i < o->n_listen; i++) log_info("would listen on %s", o->listen[i]);
    if (problems) {
        log_error("configuration%s%s: %d problem(s)", o->config ? " " : "", o->config ? o->config : "", problems);
        return 1;
    }
    log_info("configuration%s%s is fine", o->config ? " " : "", o->config ? o->config : "");
    return 0;
}

int main(int argc, char **argv)
{
    options opts;
    int rc = options_parse(&opts, argc, argv);
    if (rc != 0) {
        options_free(&opts);
        return rc > 0 ? 0 : 2;
    }
    log_set_level(opts.log_level);
    log_set_json(opts.log_json);
    if (opts.check_config) {
        rc = check_config(&opts);
        options_free(&opts);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit must fail a write (EFBIG, answered STORAGE), not
     * kill the daemon. */
    signal(SIGXFSZ, SIG_IGN);

    if (make_dirs(opts.state_dir) != 0) {
        log_error("cannot create state directory %s: %s", opts.state_dir, strerror(errno));
        return 1;
    }

    server srv = {.opts = &opts};
    if (store_open(&srv.store, opts.state_dir) != 0) return 1;
    char copy_dir[4200];
    snprintf(copy_dir, sizeof copy_dir, "%s/plugins-loaded", opts.state_dir);
    if (plugin_registry_load(&srv.plugins, opts.plugin_dirs, opts.n_plugin_dirs, copy_dir, opts.validator) != 0) {
        log_error("cannot load plugins");
        return 1;
    }
    if (srv.plugins.count == 0)
        log_warn("no plugins loaded: every 'open' will fail until plugins are installed");
    session_table_init(&srv.sessions, opts.max_sessions);
    if (compute_pool_start(&srv.pool, opts.compute_threads) != 0) {
        log_error("cannot start compute threads");
        return 1;
    }
    store_load_all(&srv.store, &srv.plugins, &srv.sessions, srv.pool);

    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_signal_t sigint, sigterm;
    uv_signal_init(&loop, &sigint);
    uv_signal_init(&loop, &sigterm);
    uv_signal_start(&sigint, on_stop_signal, SIGINT);
    uv_signal_start(&sigterm, on_stop_signal, SIGTERM);
    uv_signal_t sighup;
    uv_signal_init(&loop, &sighup);
    sighup.data = &srv;
    uv_signal_start(&sighup, on_hangup, SIGHUP);
    uv_timer_t settle_timer;
    uv_timer_init(&loop, &settle_timer);
    settle_timer.data = &srv;
    uv_fs_event_t watches[OPTIONS_MAX_PLUGIN_DIRS];
    for (int i = 0; opts.watch_plugins && i < opts.n_plugin_dirs; i++) {
        uv_fs_event_init(&loop, &watches[i]);
        watches[i].data = &settle_timer;
        int w = uv_fs_event_start(&watches[i], on_plugin_dir_event, opts.plugin_dirs[i], 0);
        if (w != 0) log_warn("cannot watch plugin directory %s: %s", opts.plugin_dirs[i], uv_strerror(w));
    }
    uv_timer_t snapshot_timer;
    uv_timer_init(&loop, &snapshot_timer);
    snapshot_timer.data = &srv;
    uv_timer_t sync_timer;
    uv_timer_init(&loop, &sync_timer);
    sync_timer.data = &srv;
    uv_timer_start(&sync_timer, on_sync_timer, opts.sync_interval_ms, opts.sync_interval_ms);
    uv_timer_t expiry_timer;
    uv_timer_init(&loop, &expiry_timer);
    expiry_timer.data = &srv;
    if (opts.session_ttl) {
        uint64_t every = opts.session_ttl < 4 ? 1000 : (opts.session_ttl / 4 < 60 ? opts.session_ttl / 4 : 60) * 1000ull;
        uv_timer_start(&expiry_timer, on_expiry_timer, every, every);
    }
    if (opts.snapshot_interval)
        uv_timer_start(&snapshot_timer, on_snapshot_timer, opts.snapshot_interval * 1000ull,
                       opts.snapshot_interval * 1000ull);

    transport *t = NULL;
    char bound[512] = "";
    int exit_code = 0;
    if (metrics_start(&loop, &srv, opts.metrics_listen) != 0 || transport_start(&t, &srv, bound, sizeof bound) != 0) {
        exit_code = 1;
    } else {
        log_info("optimd %s serving (%zu plugins, state in %s)", OPTIMD_VERSION, plugin_registry_count(&srv.plugins),
                 opts.state_dir);
        if (opts.ready_file && write_ready_file(opts.ready_file, bound) != 0) {
            log_error("cannot write ready file %s: %s", opts.ready_file, strerror(errno));
            exit_code = 1;
        } else {
            notify_systemd("READY=1");
            uv_run(&loop, UV_RUN_DEFAULT);
        }
        notify_systemd("STOPPING=1");
        transport_stop(t);
        /* Nothing changes sessions any more: make every change durable. */
        int failed = store_save_all(&srv.store, &srv.sessions);
        if (failed) {
            log_error("%d sessions could not be saved", failed);
            exit_code = 1;
        }
    }

    metrics_stop();
    uv_walk(&loop, close_handle, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    session_table_clear(&srv.sessions);
    compute_pool_stop(srv.pool);
    plugin_registry_unload(&srv.plugins);
    store_close(&srv.store);
    log_info("stopped");
    options_free(&opts);
    return exit_code;
}
