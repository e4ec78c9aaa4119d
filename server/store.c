#include "store.h"

#include "log.h"
#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LATEST "snapshot.safetensors"
#define PREVIOUS "snapshot.previous.safetensors"
#define TEMPORARY "snapshot.tmp"

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int store_open(store *st, const char *state_dir)
{
    size_t len = strlen(state_dir) + sizeof "/sessions";
    st->sessions_dir = malloc(len);
    if (!st->sessions_dir) return -1;
    snprintf(st->sessions_dir, len, "%s/sessions", state_dir);
    if (mkdir(st->sessions_dir, 0700) != 0 && errno != EEXIST) {
        log_error("cannot create %s: %s", st->sessions_dir, strerror(errno));
        return -1;
    }
    return 0;
}

void store_close(store *st)
{
    free(st->sessions_dir);
    st->sessions_dir = NULL;
}

static void session_path(const store *st, const char *name, const char *file, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s%s%s", st->sessions_dir, name, file ? "/" : "", file ? file : "");
}

/* Writes the snapshot next to the latest one and renames it into place;
 * the latest becomes the previous. */
static int write_snapshot(store *st, const session *s)
{
    char dir[4096], tmp[4200], latest[4200], previous[4200];
    session_path(st, s->name, NULL, dir, sizeof dir);
    session_path(st, s->name, TEMPORARY, tmp, sizeof tmp);
    session_path(st, s->name, LATEST, latest, sizeof latest);
    session_path(st, s->name, PREVIOUS, previous, sizeof previous);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        return -1;
    }
    int rc = snapshot_write(s, f);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) rc = -1;
    int saved_errno = errno;
    if (fclose(f) != 0) rc = -1;
    if (rc != 0) {
        unlink(tmp);
        errno = saved_errno;
        return -1;
    }
    if (rename(latest, previous) != 0 && errno != ENOENT) return -1;
    if (rename(tmp, latest) != 0) return -1;
    return fsync_dir(dir);
}

int store_save(store *st, session *s)
{
    session_lock(s);
    int rc = 0;
    if (!s->closed && s->version != s->saved_version) {
        rc = write_snapshot(st, s);
        if (rc == 0) s->saved_version = s->version;
        else log_error("session %s: snapshot failed: %s", s->name, strerror(errno));
    }
    session_unlock(s);
    return rc;
}

int store_save_all(store *st, session_table *t)
{
    size_t n;
    session **list = session_table_list(t, &n);
    int failed = 0;
    for (size_t i = 0; list && i < n; i++) failed += store_save(st, list[i]) != 0;
    session_table_release_list(list, n);
    return failed;
}

void store_remove(store *st, const session *s)
{
    char path[4200];
    const char *files[] = {LATEST, PREVIOUS, TEMPORARY};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        session_path(st, s->name, files[i], path, sizeof path);
        if (unlink(path) != 0 && errno != ENOENT)
            log_warn("session %s: cannot remove %s: %s", s->name, path, strerror(errno));
    }
    session_path(st, s->name, NULL, path, sizeof path);
    rmdir(path);
    fsync_dir(st->sessions_dir);
}

static session *load_one(store *st, const plugin_registry *reg, const char *name)
{
    char path[4200], why[256];
    session_path(st, name, LATEST, path, sizeof path);
    session *s = snapshot_read(path, reg, why, sizeof why);
    if (s) return s;
    log_warn("session %s: latest snapshot unusable (%s); trying the previous one", name, why);
    session_path(st, name, PREVIOUS, path, sizeof path);
    s = snapshot_read(path, reg, why, sizeof why);
    if (s) {
        log_warn("session %s: restored from the previous snapshot (%llu steps)", name,
                 (unsigned long long)s->steps);
        return s;
    }
    log_error("session %s: no usable snapshot (%s); leaving its files in place", name, why);
    return NULL;
}

void store_load_all(store *st, const plugin_registry *reg, session_table *t)
{
    DIR *d = opendir(st->sessions_dir);
    if (!d) return;
    struct dirent *e;
    size_t loaded = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        session *s = load_one(st, reg, e->d_name);
        if (!s) continue;
        if (strcmp(s->name, e->d_name) != 0) {
            log_error("session directory %s holds session %s; skipped", e->d_name, s->name);
            session_unref(s);
            continue;
        }
        request_error err = {0};
        if (session_table_add(t, s, &err) != 0) {
            log_error("session %s: %s", s->name, err.message);
            session_unref(s);
            continue;
        }
        loaded++;
        log_info("session %s restored (%s, %zu parameters, %llu steps)", s->name, s->opt->desc->id,
                 s->n_params, (unsigned long long)s->steps);
    }
    closedir(d);
    if (loaded) log_info("%zu sessions restored from %s", loaded, st->sessions_dir);
}
