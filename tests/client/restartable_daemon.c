#include "restartable_daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int read_line(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    buf[strcspn(buf, "\r\n")] = '\0';
    return buf[0] ? 0 : -1;
}

static int launch(rdaemon *d, const char *listen, const char *const *extra)
{
    const char *bin = getenv("OPTIMD_BIN");
    const char *plugins = getenv("OPTIMD_PLUGIN_DIR");
    if (!bin || !plugins) {
        fprintf(stderr, "rdaemon: set OPTIMD_BIN and OPTIMD_PLUGIN_DIR\n");
        return -1;
    }
    char ready[300], log[300];
    snprintf(ready, sizeof ready, "%s/ready", d->dir);
    /* A restart must not read the previous start's address. */
    unlink(ready);
    d->starts++;
    snprintf(log, sizeof log, "%s/optimd-%d.log", d->dir, d->starts);

    const char *argv[48];
    int argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "--listen";
    argv[argc++] = listen;
    argv[argc++] = "--plugin-dir";
    argv[argc++] = plugins;
    argv[argc++] = "--state-dir";
    argv[argc++] = d->state_dir;
    argv[argc++] = "--ready-file";
    argv[argc++] = ready;
    for (int i = 0; extra && extra[i] && argc < 46; i++) argv[argc++] = extra[i];
    argv[argc] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("rdaemon: fork");
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        if (!freopen(log, "w", stderr)) _exit(127);
        execv(bin, (char *const *)argv);
        perror("rdaemon: execv");
        _exit(127);
    }
    d->pid = pid;
    char url[256];
    for (int waited = 0; waited < 60000; waited += 5) {
        if (read_line(ready, url, sizeof url) == 0) {
            snprintf(d->url, sizeof d->url, "%s", url);
            return 0;
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "rdaemon: optimd exited during start-up (log %s)\n",
                    log);
            d->pid = 0;
            return -1;
        }
        sleep_ms(5);
    }
    fprintf(stderr, "rdaemon: optimd not ready after 60 s (log %s)\n", log);
    rdaemon_kill9(d);
    return -1;
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
