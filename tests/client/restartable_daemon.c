#include "restartable_daemon.h"

#include "test_daemon.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int launch(rdaemon *d, const char *listen, const char *const *extra)
{
    char ready[300], log[300];
    snprintf(ready, sizeof ready, "%s/ready", d->dir);
    d->starts++;
    snprintf(log, sizeof log, "%s/optimd-%d.log", d->dir, d->starts);
    pid_t pid = test_daemon_spawn(listen, d->state_dir, ready, log, extra, 60000, d->url, sizeof d->url);
    d->pid = pid > 0 ? pid : 0;
    return pid > 0 ? 0 : -1;
}

int rdaemon_start(rdaemon *d, const char *const *extra)
{
    memset(d, 0, sizeof *d);
    snprintf(d->dir, sizeof d->dir, "/tmp/optimd-cc-XXXXXX");
    if (!mkdtemp(d->dir)) {
        perror("rdaemon: mkdtemp");
        return -1;
    }
    snprintf(d->state_dir, sizeof d->state_dir, "%s/state", d->dir);
    return launch(d, "tcp://127.0.0.1:0", extra);
}

int rdaemon_restart(rdaemon *d, const char *const *extra)
{
    char url[256];
    snprintf(url, sizeof url, "%s", d->url);
    return launch(d, url, extra);
}

void rdaemon_kill9(rdaemon *d)
{
    if (d->pid <= 0) return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
}

int rdaemon_stop(rdaemon *d)
{
    if (d->pid <= 0) return -1;
    kill(d->pid, SIGTERM);
    int status = 0;
    pid_t r = 0;
    for (int waited = 0; waited < 20000 && r == 0; waited += 10) {
        r = waitpid(d->pid, &status, WNOHANG);
        if (r == 0) sleep_ms(10);
    }
    if (r == 0) {
        fprintf(stderr, "rdaemon: optimd ignored SIGTERM, killing\n");
        rdaemon_kill9(d);
        return -1;
    }
    d->pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void rdaemon_cleanup(rdaemon *d, int keep)
{
    if (d->pid > 0) rdaemon_stop(d);
    if (!d->dir[0]) return;
    if (keep) {
        fprintf(stderr, "rdaemon: state and logs kept in %s\n", d->dir);
        return;
    }
    if (strncmp(d->dir, "/tmp/optimd-cc-", 15) == 0) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "rdaemon: could not remove %s\n", d->dir);
    }
    d->dir[0] = '\0';
}
