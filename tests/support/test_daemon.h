/* Starts and stops a real optimd for a test. The binary comes from the
 * OPTIMD_BIN environment variable and the plugins from OPTIMD_PLUGIN_DIR
 * (CTest sets both). The daemon listens on a free loopback TCP port and is
 * killed if the test process dies. */
#ifndef OPTIMD_TEST_DAEMON_H
#define OPTIMD_TEST_DAEMON_H

#include <stddef.h>
#include <sys/types.h>

typedef struct test_daemon {
    pid_t pid;
    char url[256];         /* where it listens, e.g. tcp://127.0.0.1:40123 */
    char state_dir[256];   /* a fresh temporary directory */
} test_daemon;

/* `extra_args`: NULL or a NULL-terminated list of more daemon options.
 * Returns 0 once the daemon accepts requests, -1 (with a message on
 * stderr) otherwise. */
int test_daemon_start(test_daemon *d, const char *const *extra_args);

/* SIGTERM, then waits up to 10 s (SIGKILL after). Returns the daemon's exit
 * status, or -1 if it had to be killed or died from a signal. */
int test_daemon_stop(test_daemon *d);

/* The launcher under test_daemon_start, for tests that manage state
 * directories themselves (restarts on the same directory and address):
 * runs $OPTIMD_BIN --listen LISTEN --plugin-dir $OPTIMD_PLUGIN_DIR
 * --state-dir STATE_DIR --ready-file READY [extra...], with stderr to `log`
 * unless NULL, killed if the calling thread dies, and waits up to
 * `timeout_ms` for the ready file. Returns the pid with the bound URL in
 * `url`, or -1 (message on stderr, process reaped). */
pid_t test_daemon_spawn(const char *listen, const char *state_dir, const char *ready, const char *log,
                        const char *const *extra_args, int timeout_ms, char *url, size_t url_cap);

/* Nonzero while the daemon process is alive. */
int test_daemon_alive(const test_daemon *d);

#endif
