#include "store.h"

#include "workers.h"

#include "log.h"
#include "metrics.h"
#include "sliced_step.h"
#include "snapshot.h"
#include "wire.h"
#include "wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <msgpack.h>

#define LATEST "snapshot.safetensors"
#define PREVIOUS "snapshot.previous.safetensors"
#define TEMPORARY "snapshot.tmp"
#define LOG "wal.log"

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
static int write_snapshot(store *st, const session *s, const bool *keep)
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
    int rc = snapshot_write_some(s, keep, f);
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

static int open_log(store *st, session *s)
{
    char path[4200];
    session_path(st, s->name, LOG, path, sizeof path);
    s->wal_fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    return s->wal_fd < 0 ? -1 : 0;
}

/* Every record is in the snapshot just written. */
static void empty_log(session *s)
{
    if (s->wal_fd >= 0) {
        if (ftruncate(s->wal_fd, 0) != 0 || fdatasync(s->wal_fd) != 0)
            log_warn("session %s: cannot empty the log (%s); replay will skip what it holds", s->name,
                     strerror(errno));
        else
            s->wal_bytes = 0;
        s->wal_unsynced = false;
    }
}

/* Snapshot, then an empty log: every record is in the snapshot now. */
static int save_locked(store *st, session *s)
{
    if (s->closed || s->version == s->saved_version) return 0;
    if (write_snapshot(st, s, NULL) != 0) {
        log_error("session %s: snapshot failed: %s", s->name, strerror(errno));
        return -1;
    }
    s->saved_version = s->version;
    empty_log(s);
    return 0;
}

int store_save_some(store *st, session *s, const bool *keep)
{
    if (s->pending_step) {
        log_error("session %s: not snapshotted while a sliced step is pending", s->name);
        errno = EBUSY;
        return -1;
    }
    if (write_snapshot(st, s, keep) != 0) {
        int e = errno;
        log_error("session %s: snapshot failed: %s", s->name, strerror(e));
        errno = e;
        return -1;
    }
    s->saved_version = s->version;
    empty_log(s);
    return 0;
}

int store_attach(store *st, session *s, request_error *err)
{
    /* Different from saved_version, so the first snapshot is written. */
    s->saved_version = s->version - 1;
    if (save_locked(st, s) != 0 || (s->durability != DURABILITY_NONE && open_log(st, s) != 0)) {
        int e = errno;
        store_remove(st, s);
        return fail(err, OPTIMD_E_STORAGE, "cannot write session %s to the state directory: %s", s->name,
                    strerror(e));
    }
    return 0;
}

int store_log_change(void *change, session *s, request_error *err)
{
    store_change *c = change;
    if (s->wal_fd < 0) return 0;
    if (wal_append(s->wal_fd, s->version + 1, c->request, c->len) != 0)
        return fail(err, OPTIMD_E_STORAGE, "cannot log the change (nothing applied): %s", strerror(errno));
    s->wal_bytes += 16 + c->len;
    if (s->durability == DURABILITY_ALWAYS) {
        if (fdatasync(s->wal_fd) != 0)
            return fail(err, OPTIMD_E_STORAGE, "cannot flush the log (nothing applied): %s", strerror(errno));
    } else {
        if (!s->wal_unsynced) s->wal_unsynced_since = metrics_now_ns();
        s->wal_unsynced = true;
    }
    return 0;
}

void store_sync_logs(store *st, session_table *t)
{
    (void)st;
    size_t n;
    session **list = session_table_list(t, &n);
    for (size_t i = 0; list && i < n; i++) {
        session *s = list[i];
        /* Flush a duplicate of the descriptor outside the lock: flushing
         * megabytes takes milliseconds, and steps must not wait for it. */
        session_lock(s);
        int fd = s->wal_unsynced && s->wal_fd >= 0 ? dup(s->wal_fd) : -1;
        if (fd >= 0) s->wal_unsynced = false;
        session_unlock(s);
        if (fd < 0) continue;
        if (fdatasync(fd) != 0) {
            log_error("session %s: log flush failed: %s", s->name, strerror(errno));
            session_lock(s);
            s->wal_unsynced = true;
            session_unlock(s);
        }
        close(fd);
    }
    session_table_release_list(list, n);
}

/* The bytes a snapshot of `s` takes, near enough: parameters and slots. */
static uint64_t state_bytes(const session *s)
{
    uint64_t bytes = 0;
    uint32_t n_slots = s->opt->desc->optimizer->n_slots;
    for (size_t i = 0; i < s->n_params; i++) bytes += (uint64_t)s->params[i].nbytes * (1 + n_slots);
    return bytes;
}

int store_save_locked(store *st, session *s)
{
    s->saved_version = s->version - 1;   /* written even if nothing counted as a change */
    return save_locked(st, s);
}

int store_compact_if_large(store *st, session *s)
{
    /* A log as large as a snapshot costs as much to replay as the snapshot
     * to write: past that (and past a floor that keeps small sessions from
     * snapshotting all the time) a snapshot replaces it. Writing costs at
     * most as much again as the log did, so amortised it stays cheap. */
    const uint64_t floor = 64ull << 20;
    if (s->wal_fd < 0 || s->wal_bytes < floor || s->wal_bytes < state_bytes(s)) return 0;
    return save_locked(st, s);
}

int store_save(store *st, session *s)
{
    session_lock(s);
    int rc = save_locked(st, s);
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

void store_remove(store *st, session *s)
{
    char path[4200];
    const char *files[] = {LOG, LATEST, PREVIOUS, TEMPORARY};
    if (s->wal_fd >= 0) {
        close(s->wal_fd);
        s->wal_fd = -1;
    }
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        session_path(st, s->name, files[i], path, sizeof path);
        if (unlink(path) != 0 && errno != ENOENT)
            log_warn("session %s: cannot remove %s: %s", s->name, path, strerror(errno));
    }
    session_path(st, s->name, NULL, path, sizeof path);
    rmdir(path);
    fsync_dir(st->sessions_dir);
}

typedef struct replay_ctx {
    session *s;
    compute_pool *pool;
    long applied;
} replay_ctx;

/* Applies one logged request to the session, as it was applied first. */
static int replay_record(void *ctx, uint64_t version, const void *request, size_t len)
{
    replay_ctx *rc = ctx;
    session *s = rc->s;
    if (version <= s->version) return 0;   /* already in the snapshot */
    if (version != s->version + 1) {
        log_error("session %s: log jumps from version %llu to %llu; replay stops", s->name,
                  (unsigned long long)s->version, (unsigned long long)version);
        return -1;
    }
    request_error err = {0};
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int result = -1;
    if (wire_prescan(request, len, &err) != 0 ||
        msgpack_unpack_next(&u, request, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        log_error("session %s: log record %llu is not msgpack; replay stops", s->name,
                  (unsigned long long)version);
        goto out;
    }
    const msgpack_object *req = &u.data;
    const char *op = "";
    size_t op_len = 0;
    wire_get_str(req, "op", true, &op, &op_len, &err);
    const msgpack_object *map = NULL;
    int group;
    if (op_len == 8 && memcmp(op, "register", 8) == 0 && wire_get_map(req, "params", true, &map, &err) == 0 &&
        session_request_group(s, req, false, &group, &err) == 0) {
        result = session_register(s, map, group, NULL, NULL, &err);
    } else if (op_len == 4 && memcmp(op, "step", 4) == 0 && wire_get_map(req, "grads", true, &map, &err) == 0) {
        step_identity id = {"", 0, 0};
        step_clip clip;
        wire_get_uint(req, "seq", false, &id.seq, &err);
        wire_get_str(req, "client", false, &id.client, &id.client_len, &err);
        step_result res;
        bool sliced = false;
        uint32_t part_index = 0, part_count = 0;
        if (step_clip_parse(req, &clip, &err) == 0 &&
            sliced_step_parse_part(req, &sliced, &part_index, &part_count, &err) == 0) {
            if (sliced) {
                part_entry *entries;
                size_t n_entries;
                part_result pres;
                result = session_step_part(s, map, &id, part_index, part_count, &clip, rc->pool, NULL, NULL,
                                           &entries, &n_entries, &pres, &err);
                if (result == 0) free(entries);
                res = pres.step;
            } else {
                result = session_step(s, map, &id, &clip, NULL, rc->pool, NULL, NULL, &res, &err);
            }
        }
        /* A sync round's combined step: the sequence numbers of its pushes. */
        const msgpack_object *seqs = wire_map_get(req, "seqs");
        for (uint32_t i = 0; result == 0 && seqs && seqs->type == MSGPACK_OBJECT_ARRAY && i < seqs->via.array.size; i++) {
            const msgpack_object *e = &seqs->via.array.ptr[i];
            const char *client;
            size_t client_len;
            uint64_t seq;
            if (wire_get_str(e, "client", true, &client, &client_len, &err) == 0 &&
                wire_get_uint(e, "seq", true, &seq, &err) == 0)
                session_record_seq(s, client, client_len, seq, &res);
        }
    } else if (op_len == 11 && memcmp(op, "set_hparams", 11) == 0 &&
               wire_get_map(req, "hparams", true, &map, &err) == 0 &&
               session_request_group(s, req, true, &group, &err) == 0) {
        result = session_set_hparams(s, map, group, NULL, NULL, &err);
    } else if (s->workers && ((op_len == 4 && memcmp(op, "join", 4) == 0) ||
                              (op_len == 5 && memcmp(op, "leave", 5) == 0))) {
        const char *name;
        size_t name_len;
        if (wire_get_str(req, "worker", true, &name, &name_len, &err) == 0) {
            worker *w = worker_find(s->workers, name, name_len);
            if (op_len == 4 && !w && worker_join(s->workers, name, name_len, s->steps, &err)) result = 0;
            else if (op_len == 5 && w) result = (worker_leave(s->workers, w), 0);
            if (result == 0) s->version++;
        }
    } else if (op_len == 12 && memcmp(op, "abandon_step", 12) == 0) {
        step_identity id = {"", 0, 0};
        part_result pres;
        if (wire_get_uint(req, "seq", true, &id.seq, &err) == 0 &&
            wire_get_str(req, "client", false, &id.client, &id.client_len, &err) == 0)
            result = session_abandon_step(s, &id, NULL, NULL, &pres, &err);
    } else if (op_len == 7 && memcmp(op, "observe", 7) == 0) {
        double metric;
        if (wire_get_number(req, "metric", true, &metric, &err) == 0 &&
            session_request_group(s, req, true, &group, &err) == 0)
            result = session_observe(s, metric, group, NULL, NULL, &err);
    }
    if (result != 0 || s->version != version) {
        log_error("session %s: log record %llu (%.*s) did not apply (%s); replay stops", s->name,
                  (unsigned long long)version, (int)op_len, op, err.message);
        result = -1;
    } else {
        rc->applied++;
    }
out:
    msgpack_unpacked_destroy(&u);
    return result;
}

/* Replays the log onto a freshly loaded session and cuts a torn or corrupt
 * tail. Leaves the log open for appending. */
static void replay_log(store *st, session *s, compute_pool *pool)
{
    if (s->durability == DURABILITY_NONE) return;
    if (open_log(st, s) != 0) {
        log_error("session %s: cannot open its log: %s", s->name, strerror(errno));
        return;
    }
    struct stat sb;
    if (fstat(s->wal_fd, &sb) != 0 || sb.st_size == 0) return;
    s->wal_bytes = (uint64_t)sb.st_size;
    replay_ctx ctx = {.s = s, .pool = pool};
    uint64_t good = 0;
    long records = wal_replay(s->wal_fd, replay_record, &ctx, &good);
    if (records < 0) {
        log_error("session %s: cannot read its log: %s", s->name, strerror(errno));
        return;
    }
    if (good < (uint64_t)sb.st_size) {
        log_warn("session %s: log cut at byte %llu of %lld (torn or corrupt tail)", s->name,
                 (unsigned long long)good, (long long)sb.st_size);
        if (ftruncate(s->wal_fd, (off_t)good) != 0 || fdatasync(s->wal_fd) != 0)
            log_error("session %s: cannot cut its log: %s", s->name, strerror(errno));
        else
            s->wal_bytes = good;
    }
    if (ctx.applied)
        log_info("session %s: replayed %ld logged changes (now %llu steps)", s->name, ctx.applied,
                 (unsigned long long)s->steps);
}

static session *load_one(store *st, plugin_registry *reg, const char *name)
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

void store_load_all(store *st, plugin_registry *reg, session_table *t, compute_pool *pool)
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
        replay_log(st, s, pool);
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
