#include "test_daemon.h"
#include "check.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int check_failure_count;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int read_ready_file(const char *path, char *url, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fgets(url, (int)cap, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    url[strcspn(url, "\r\n")] = '\0';
    return url[0] ? 0 : -1;
}

pid_t test_daemon_spawn(const char *listen, const char *state_dir, const char *ready, const char *log,
                        const char *const *extra_args, int timeout_ms, char *url, size_t url_cap)
{
    const char *bin = getenv("OPTIMD_BIN");
    const char *plugins = getenv("OPTIMD_PLUGIN_DIR");
    if (!bin || !plugins) {
        fprintf(stderr, "test_daemon: set OPTIMD_BIN and OPTIMD_PLUGIN_DIR\n");
        return -1;
    }
    /* A restart must not read the previous start's address. */
    unlink(ready);
    const char *argv[64];
    int argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "--listen";
    argv[argc++] = listen;
    argv[argc++] = "--plugin-dir";
    argv[argc++] = plugins;
    argv[argc++] = "--state-dir";
    argv[argc++] = state_dir;
    argv[argc++] = "--ready-file";
    argv[argc++] = ready;
    for (int i = 0; extra_args && extra_args[i] && argc < 62; i++)
        argv[argc++] = extra_args[i];
    argv[argc] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("test_daemon: fork");
        return -1;
    }
    if (pid == 0) {
        /* A test that crashes must not leave its daemon behind. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        if (log && !freopen(log, "w", stderr)) _exit(127);
        execv(bin, (char *const *)argv);
        perror("test_daemon: execv");
        _exit(127);
    }
    for (int waited = 0; waited < timeout_ms; waited += 5) {
        if (read_ready_file(ready, url, url_cap) == 0) return pid;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "test_daemon: optimd exited during start-up%s%s\n", log ? "; log " : "",
                    log ? log : "");
            return -1;
        }
        sleep_ms(5);
    }
    fprintf(stderr, "test_daemon: optimd not ready after %d ms\n", timeout_ms);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

int test_daemon_start(test_daemon *d, const char *const *extra_args)
{
    memset(d, 0, sizeof *d);
    snprintf(d->state_dir, sizeof d->state_dir, "/tmp/optimd-test-XXXXXX");
    if (!mkdtemp(d->state_dir)) {
        perror("test_daemon: mkdtemp");
        return -1;
    }
    char ready[300];
    snprintf(ready, sizeof ready, "%s/ready", d->state_dir);
    d->pid = test_daemon_spawn("tcp://127.0.0.1:0", d->state_dir, ready, NULL, extra_args, 30000, d->url,
                               sizeof d->url);
    if (d->pid < 0) {
        d->pid = 0;
        test_daemon_stop(d);
        return -1;
    }
    return 0;
}

int test_daemon_alive(const test_daemon *d)
{
    return d->pid > 0 && kill(d->pid, 0) == 0 &&
           waitpid(d->pid, NULL, WNOHANG) == 0;
}

static void remove_tree(const char *dir)
{
    char cmd[400];
    if (strncmp(dir, "/tmp/optimd-test-", 17) != 0) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "test_daemon: could not remove %s\n", dir);
}

int test_daemon_stop(test_daemon *d)
{
    int result = -1;
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        int status = 0;
        pid_t r = 0;
        for (int waited = 0; waited < 10000 && r == 0; waited += 20) {
            r = waitpid(d->pid, &status, WNOHANG);
            if (r == 0) sleep_ms(20);
        }
        if (r == 0) {
            fprintf(stderr, "test_daemon: optimd ignored SIGTERM, killing\n");
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &status, 0);
        } else if (r == d->pid && WIFEXITED(status)) {
            result = WEXITSTATUS(status);
        } else if (r == d->pid && WIFSIGNALED(status)) {
            fprintf(stderr, "test_daemon: optimd died from signal %d\n",
                    WTERMSIG(status));
        }
        d->pid = 0;
    }
    if (d->state_dir[0]) remove_tree(d->state_dir);
    d->state_dir[0] = '\0';
    return result;
}
