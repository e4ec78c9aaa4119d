/*
 * A real optimd that a test can kill -9 and start again on the same state
 * directory and the same address, as a crash and a supervisor's restart
 * would. (tests/support/test_daemon.h gives each start a fresh state
 * directory and port, which is what most tests want and these cannot use.)
 *
 * The binary and plugins come from OPTIMD_BIN and OPTIMD_PLUGIN_DIR. Start
 * and kill from one thread: the daemon dies with the thread that forked it
 * (PR_SET_PDEATHSIG), so that a crashed test leaves no daemon behind.
 */
#ifndef OPTIMD_RESTARTABLE_DAEMON_H
#define OPTIMD_RESTARTABLE_DAEMON_H

#include <sys/types.h>

typedef struct rdaemon {
    pid_t pid;
    char dir[200];         /* /tmp/optimd-cc-XXXXXX: state/, logs, ready */
    char state_dir[256];
    char url[256];         /* set by the first start; kept by restarts */
    int starts;
} rdaemon;

/* Makes a fresh directory and starts the daemon on a free port. `extra`:
 * NULL or a NULL-terminated list of more options. Returns 0, or -1 with a
 * message on stderr. */
int rdaemon_start(rdaemon *d, const char *const *extra);

/* Starts it again on the same state directory and URL (after
 * rdaemon_kill9 or rdaemon_stop). */
int rdaemon_restart(rdaemon *d, const char *const *extra);

/* SIGKILL and reap: a crash. */
void rdaemon_kill9(rdaemon *d);

/* SIGTERM and reap; returns the exit status, or -1. */
int rdaemon_stop(rdaemon *d);

/* Stops it if running and removes its directory, unless `keep` (then the
 * path is printed, for a failed test's post-mortem). */
void rdaemon_cleanup(rdaemon *d, int keep);

#endif
