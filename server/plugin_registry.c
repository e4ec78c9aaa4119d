#include "plugin_registry.h"

#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Why the last plugin this thread tried to load was refused (a reload
 * reports it to the client that asked). */
static _Thread_local char last_refusal[512];

static void refuse(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void refuse(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_refusal, sizeof last_refusal, fmt, ap);
    va_end(ap);
    log_warn("%s", last_refusal);
}

/* Plugin ids: [a-z0-9_.-]; hyperparameter and slot keys: [A-Za-z0-9_], so
 * torch's own spellings (T_max, T_0) carry over. */
#define UPPER "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

static bool valid_key(const char *s, const char *extra)
{
    if (!s || !*s || strlen(s) > 64) return false;
    for (const char *c = s; *c; c++) {
        bool ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' ||
                  (extra && strchr(extra, *c));
        if (!ok) return false;
    }
    return true;
}

static bool check_hparams(const char *path, const optimd_hparam_def *defs, uint32_t n)
{
    if (n && !defs) {
        refuse("plugin %s: n_hparams is %u but hparams is NULL", path, n);
        return false;
    }
    for (uint32_t i = 0; i < n; i++) {
        const optimd_hparam_def *d = &defs[i];
        if (d->struct_size < sizeof *d) {
            refuse("plugin %s: hparam %u has struct_size %u < %zu", path, i, d->struct_size, sizeof *d);
            return false;
        }
        if (!valid_key(d->key, UPPER)) {
            refuse("plugin %s: hparam %u has an invalid key", path, i);
            return false;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(defs[j].key, d->key) == 0) {
                refuse("plugin %s: hparam key '%s' declared twice", path, d->key);
                return false;
            }
        }
        if (d->type < OPTIMD_HP_FLOAT || d->type > OPTIMD_HP_BOOL) {
            refuse("plugin %s: hparam '%s' has unknown type %u", path, d->key, d->type);
            return false;
        }
        if (!isfinite(d->min) || !isfinite(d->max) || !isfinite(d->default_value) || d->min > d->max) {
            refuse("plugin %s: hparam '%s' needs finite min <= max and a finite default", path, d->key);
            return false;
        }
        bool required = d->flags & OPTIMD_HP_REQUIRED;
        if (!required && (d->default_value < d->min || d->default_value > d->max)) {
            refuse("plugin %s: hparam '%s' default %g is outside [%g, %g]", path, d->key,
                     d->default_value, d->min, d->max);
            return false;
        }
    }
    return true;
}

static int find_key(const optimd_hparam_def *defs, uint32_t n, const char *key, size_t len)
{
    for (uint32_t i = 0; i < n; i++)
        if (strlen(defs[i].key) == len && memcmp(defs[i].key, key, len) == 0) return (int)i;
    return -1;
}

static bool check_optimizer(const char *path, plugin *p)
{
    const optimd_optimizer *o = p->desc->optimizer;
    /* The sizes of ABI 1.0's tables, not today's: a table only grows, and
     * members past a plugin's struct_size are read as absent. */
    if (!o || o->struct_size < offsetof(optimd_optimizer, step) + sizeof o->step || !o->step) {
        refuse("plugin %s: optimizer table missing, too small or without step", path);
        return false;
    }
    if (!check_hparams(path, o->hparams, o->n_hparams)) return false;
    p->hparams = o->hparams;
    p->n_hparams = o->n_hparams;
    if (o->struct_size >= offsetof(optimd_optimizer, migrate) + sizeof o->migrate) p->opt_migrate = o->migrate;
    /* 1.1 plugins had a reserved 0 there; bits this host does not know are ignored. */
    if (p->desc->abi_minor >= 2 && o->struct_size >= offsetof(optimd_optimizer, flags) + sizeof o->flags)
        p->opt_flags = o->flags & OPTIMD_OPTIMIZER_ELEMENTWISE;
    p->lr_index = find_key(o->hparams, o->n_hparams, "lr", 2);
    if (p->lr_index < 0 || o->hparams[p->lr_index].type != OPTIMD_HP_FLOAT) {
        refuse("plugin %s: an optimizer must declare a float hyperparameter 'lr'", path);
        return false;
    }
    if ((o->dtypes & ((1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64))) == 0) {
        refuse("plugin %s: optimizer declares no supported dtype", path);
        return false;
    }
    if (o->n_slots && !o->slots) {
        refuse("plugin %s: n_slots is %u but slots is NULL", path, o->n_slots);
        return false;
    }
    for (uint32_t i = 0; i < o->n_slots; i++) {
        const optimd_slot_def *s = &o->slots[i];
        if (s->struct_size < sizeof *s || !valid_key(s->key, UPPER) ||
            s->shape < OPTIMD_SLOT_LIKE_PARAM ||
            s->shape > (p->desc->abi_minor >= 1 ? OPTIMD_SLOT_COLS : OPTIMD_SLOT_SCALAR) ||
            s->dtype > OPTIMD_DTYPE_F64) {
            refuse("plugin %s: slot %u is malformed (size, key, shape or dtype)", path, i);
            return false;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(o->slots[j].key, s->key) == 0) {
                refuse("plugin %s: slot key '%s' declared twice", path, s->key);
                return false;
            }
        }
        if (s->enabled_by) {
            int h = find_key(o->hparams, o->n_hparams, s->enabled_by, strlen(s->enabled_by));
            if (h < 0 || o->hparams[h].type != OPTIMD_HP_BOOL) {
                refuse("plugin %s: slot '%s' is enabled_by '%s', which is no bool hparam", path,
                         s->key, s->enabled_by);
                return false;
            }
        }
    }
    return true;
}

static bool check_scheduler(const char *path, plugin *p)
{
    const optimd_scheduler *s = p->desc->scheduler;
    /* ABI 1.0's table ends where `momentum` begins; 1.1 members are read
     * only when the plugin's struct_size covers them. */
    if (!s || s->struct_size < offsetof(optimd_scheduler, momentum) || !s->lr) {
        refuse("plugin %s: scheduler table missing, too small or without lr", path);
        return false;
    }
    if (!check_hparams(path, s->hparams, s->n_hparams)) return false;
    p->hparams = s->hparams;
    p->n_hparams = s->n_hparams;
    p->lr_index = -1;
    if (s->struct_size >= offsetof(optimd_scheduler, observe) + sizeof s->observe) {
        if (s->n_state > SCHED_MAX_STATE) {
            refuse("plugin %s: scheduler declares %u state values; at most %u", path, s->n_state,
                     (unsigned)SCHED_MAX_STATE);
            return false;
        }
        if (s->observe && s->n_state == 0) {
            refuse("plugin %s: a scheduler with observe must declare state", path);
            return false;
        }
        p->sched_momentum = s->momentum;
        p->sched_observe = s->observe;
        p->n_sched_state = s->n_state;
    }
    return true;
}

/* Opens one file; on success fills *p and returns true. */
static bool load_one(const char *path, plugin *p)
{
    memset(p, 0, sizeof *p);
    last_refusal[0] = '\0';
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        refuse("plugin %s: dlopen failed: %s", path, dlerror());
        return false;
    }
    const optimd_plugin_desc *d = dlsym(h, OPTIMD_PLUGIN_SYMBOL);
    if (!d) {
        refuse("plugin %s: no symbol '%s'", path, OPTIMD_PLUGIN_SYMBOL);
        dlclose(h);
        return false;
    }
    p->desc = d;
    p->handle = h;
    bool ok = true;
    if (d->abi_major != OPTIMD_ABI_MAJOR || d->abi_minor > OPTIMD_ABI_MINOR) {
        refuse("plugin %s: built for ABI %u.%u, this daemon speaks %u.0 to %u.%u", path,
                 d->abi_major, d->abi_minor, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MINOR);
        ok = false;
    } else if (d->struct_size < offsetof(optimd_plugin_desc, scheduler) + sizeof d->scheduler) {
        refuse("plugin %s: descriptor struct_size %u < %zu", path, d->struct_size, sizeof *d);
        ok = false;
    } else if (!valid_key(d->id, ".-") || !d->version) {
        refuse("plugin %s: id must match [a-z0-9_.-]+ and version must be set", path);
        ok = false;
    } else if (strcmp(d->id, "sequential") == 0 || strcmp(d->id, "chained") == 0) {
        /* The names of the daemon's combined schedules (protocol.md, open). */
        refuse("plugin %s: id '%s' is reserved", path, d->id);
        ok = false;
    } else if (d->kind == OPTIMD_KIND_OPTIMIZER) {
        ok = check_optimizer(path, p);
    } else if (d->kind == OPTIMD_KIND_SCHEDULER) {
        ok = check_scheduler(path, p);
    } else {
        refuse("plugin %s: unknown kind %u", path, d->kind);
        ok = false;
    }
    if (!ok) {
        dlclose(h);
        return false;
    }
    p->path = strdup(path);
    if (!p->path) {
        dlclose(h);
        return false;
    }
    return true;
}

/* ------------------------------------------------------ the registry -- */

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted *.so names of a directory, so load order (and which of two
 * duplicate ids wins) does not depend on the file system. */
static char **list_shared_objects(const char *dir, size_t *count)
{
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) {
        log_warn("plugin directory %s: cannot open it", dir);
        return NULL;
    }
    char **names = NULL;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 4 || strcmp(e->d_name + len - 3, ".so") != 0) continue;
        if (*count == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) break;
            names = grown;
        }
        names[*count] = strdup(e->d_name);
        if (names[*count]) (*count)++;
    }
    closedir(d);
    if (names) qsort(names, *count, sizeof *names, by_name);
    return names;
}

void plugin_ref(const plugin *cp)
{
    plugin *p = (plugin *)cp;
    if (p) atomic_fetch_add(&p->refs, 1);
}

void plugin_unref(const plugin *cp)
{
    plugin *p = (plugin *)cp;
    if (!p || atomic_fetch_sub(&p->refs, 1) != 1) return;
    /* Nothing uses this version any more: no session holds it and it is
     * not the one new sessions get. */
    log_info("unloaded plugin %s %s (generation %llu)", p->desc->id, p->desc->version,
             (unsigned long long)p->generation);
    dlclose(p->handle);
    free(p->path);
    free(p);
}

/* Index of id in the sorted current list, or where it would go (negated - 1). */
static long find_index(const plugin_registry *r, const char *id, size_t id_len)
{
    size_t lo = 0, hi = r->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *m = r->plugins[mid]->desc->id;
        size_t m_len = strlen(m);
        int c = memcmp(m, id, m_len < id_len ? m_len : id_len);
        if (c == 0) c = (m_len > id_len) - (m_len < id_len);
        if (c == 0) return (long)mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -(long)lo - 1;
}

plugin *plugin_registry_get(plugin_registry *r, const char *id, size_t id_len)
{
    pthread_mutex_lock(&r->lock);
    long i = find_index(r, id, id_len);
    plugin *p = i >= 0 ? r->plugins[i] : NULL;
    plugin_ref(p);
    pthread_mutex_unlock(&r->lock);
    return p;
}

plugin **plugin_registry_list(plugin_registry *r, size_t *n)
{
    pthread_mutex_lock(&r->lock);
    plugin **list = malloc((r->count ? r->count : 1) * sizeof *list);
    *n = list ? r->count : 0;
    for (size_t i = 0; list && i < r->count; i++) {
        list[i] = r->plugins[i];
        plugin_ref(list[i]);
    }
    pthread_mutex_unlock(&r->lock);
    return list;
}

void plugin_registry_release_list(plugin **list, size_t n)
{
    for (size_t i = 0; i < n; i++) plugin_unref(list[i]);
    free(list);
}

size_t plugin_registry_count(plugin_registry *r)
{
    pthread_mutex_lock(&r->lock);
    size_t n = r->count;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* Runs the validator on `path` in a child process (exit 0: fine). A
 * plugin that crashes there is reported, not fatal. Its first FAIL line
 * (what to fix) goes into `why`. */
static bool validated(const plugin_registry *r, const char *path, const char *shown, char *why, size_t cap)
{
    if (!r->validator) return true;
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        snprintf(why, cap, "cannot start the validator: %s", strerror(errno));
        return false;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, cap, "cannot start the validator: %s", strerror(errno));
        close(out[0]);
        close(out[1]);
        return false;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls between fork and exec. */
        dup2(out[1], STDOUT_FILENO);
        dup2(out[1], STDERR_FILENO);
        execl(r->validator, r->validator, path, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char text[16384];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(out[0], text + have, have < sizeof text - 1 ? sizeof text - 1 - have : 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            /* Full or at the end: drain the rest so the child never blocks. */
            char sink[4096];
            while (n != 0 && (n = read(out[0], sink, sizeof sink)) != 0)
                if (n < 0 && errno != EINTR) break;
            break;
        }
        have += (size_t)n;
    }
    close(out[0]);
    text[have] = '\0';
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
    const char *fail_line = strstr(text, "FAIL");
    size_t fail_len = fail_line ? strcspn(fail_line, "\n") : 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
        snprintf(why, cap, "the validator %.300s could not be run", r->validator);
    else if (WIFEXITED(status))
        snprintf(why, cap, "optimd-validate refused %.200s: %.*s", shown, (int)(fail_len > 280 ? 280 : fail_len),
                 fail_line ? fail_line : "(see optimd-validate's output)");
    else
        snprintf(why, cap, "the validator died with signal %d on %.200s", WTERMSIG(status), shown);
    return false;
}

/* Copies `src` to a unique name in the registry's private directory, so
 * that dlopen gives a new version its own handle even when the source path
 * is the same as the running one's. */
static int private_copy(plugin_registry *r, const char *src, char *out, size_t cap, char *why, size_t why_cap)
{
    const char *base = strrchr(src, '/');
    base = base ? base + 1 : src;
    snprintf(out, cap, "%s/%llu-%s", r->copy_dir, (unsigned long long)r->next_generation, base);
    int in = open(src, O_RDONLY | O_CLOEXEC);
    int fd = in >= 0 ? open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;
    bool ok = in >= 0 && fd >= 0;
    char buf[65536];
    ssize_t n;
    while (ok && (n = read(in, buf, sizeof buf)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        ok = n > 0 && write(fd, buf, (size_t)n) == n;
    }
    int e = errno;
    if (in >= 0) close(in);
    if (fd >= 0 && close(fd) != 0) ok = false;
    if (!ok) {
        unlink(out);
        snprintf(why, why_cap, "cannot copy %s to %s: %s", src, out, strerror(e));
        return -1;
    }
    return 0;
}

/* Loads `src` as a new version (validated, from a private copy unless
 * `in_place`). On success *out holds one reference (the caller's). At
 * start a file is loaded where it lies: dlopen would hand a later version
 * of the same path the old handle, so only later loads need the copy. */
static int load_version(plugin_registry *r, const char *src, bool in_place, plugin **out, char *why, size_t cap)
{
    char copy[4400];
    *out = NULL;
    r->next_generation++;
    if (in_place) snprintf(copy, sizeof copy, "%s", src);
    else if (private_copy(r, src, copy, sizeof copy, why, cap) != 0) return -1;
    if (!validated(r, copy, src, why, cap)) {
        if (!in_place) unlink(copy);
        return -1;
    }
    plugin *p = calloc(1, sizeof *p);
    if (!p) {
        if (!in_place) unlink(copy);
        snprintf(why, cap, "out of memory");
        return -1;
    }
    bool ok = load_one(copy, p);
    /* The mapping outlives the file: nothing is left to clean up later. */
    if (!in_place) unlink(copy);
    if (!ok) {
        snprintf(why, cap, "%s", last_refusal[0] ? last_refusal : "refused");
        free(p);
        return -1;
    }
    free(p->path);
    p->path = strdup(src);
    p->generation = r->next_generation;
    atomic_init(&p->refs, 1);
    *out = p;
    return 0;
}

/* Makes `p` (one reference, handed over) the current version of its id.
 * *replaced (may be NULL) tells whether an older version was. */
static int install(plugin_registry *r, plugin *p, bool *replaced)
{
    pthread_mutex_lock(&r->lock);
    long i = find_index(r, p->desc->id, strlen(p->desc->id));
    plugin *old = NULL;
    if (i >= 0) {
        old = r->plugins[i];
        r->plugins[i] = p;
    } else {
        plugin **grown = realloc(r->plugins, (r->count + 1) * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&r->lock);
            return -1;
        }
        r->plugins = grown;
        size_t at = (size_t)(-i - 1);
        memmove(&r->plugins[at + 1], &r->plugins[at], (r->count - at) * sizeof *grown);
        r->plugins[at] = p;
        r->count++;
    }
    pthread_mutex_unlock(&r->lock);
    if (replaced) *replaced = old != NULL;
    if (old)
        log_info("plugin %s: version %s (generation %llu) replaces %s (generation %llu); sessions move to it "
                 "between two of their steps", p->desc->id, p->desc->version, (unsigned long long)p->generation,
                 old->desc->version, (unsigned long long)old->generation);
    plugin_unref(old);
    return 0;
}

/* What a scan last saw of a file, to load only what changed. */
static plugin_file *file_seen(plugin_registry *r, const char *path)
{
    for (size_t i = 0; i < r->n_files; i++)
        if (strcmp(r->files[i].path, path) == 0) return &r->files[i];
    return NULL;
}

static bool file_changed(plugin_registry *r, const char *path, struct stat *st)
{
    if (stat(path, st) != 0) return false;
    const plugin_file *f = file_seen(r, path);
    return !f || f->dev != st->st_dev || f->ino != st->st_ino || f->size != st->st_size ||
           f->mtime_sec != st->st_mtim.tv_sec || f->mtime_nsec != st->st_mtim.tv_nsec;
}

static void remember_file(plugin_registry *r, const char *path, const struct stat *st)
{
    plugin_file *f = file_seen(r, path);
    if (!f) {
        plugin_file *grown = realloc(r->files, (r->n_files + 1) * sizeof *grown);
        char *copy = strdup(path);
        if (!grown || !copy) {
            if (grown) r->files = grown;
            free(copy);
            return;
        }
        r->files = grown;
        f = &r->files[r->n_files++];
        f->path = copy;
    }
    f->dev = st->st_dev;
    f->ino = st->st_ino;
    f->size = st->st_size;
    f->mtime_sec = st->st_mtim.tv_sec;
    f->mtime_nsec = st->st_mtim.tv_nsec;
}

static void report_add(reload_report *rep, const char *path, const char *id, const char *version,
                       const char *why)
{
    if (!rep || rep->n == RELOAD_REPORT_MAX) return;
    reload_entry *e = &rep->entries[rep->n++];
    snprintf(e->path, sizeof e->path, "%s", path);
    snprintf(e->id, sizeof e->id, "%s", id ? id : "");
    snprintf(e->version, sizeof e->version, "%s", version ? version : "");
    snprintf(e->why, sizeof e->why, "%s", why ? why : "");
    e->loaded = why == NULL;
}

int plugin_registry_load_file(plugin_registry *r, const char *path, reload_report *rep)
{
    pthread_mutex_lock(&r->reload_mutex);
    char why[512] = "";
    plugin *p;
    int rc = load_version(r, path, false, &p, why, sizeof why);
    if (rc == 0) rc = install(r, p, NULL);
    if (rc == 0) {
        struct stat st;
        if (stat(path, &st) == 0) remember_file(r, path, &st);
        log_info("loaded plugin %s %s (%s) from %s", p->desc->id, p->desc->version,
                 p->desc->kind == OPTIMD_KIND_OPTIMIZER ? "optimizer" : "scheduler", path);
        report_add(rep, path, p->desc->id, p->desc->version, NULL);
    } else {
        if (!why[0]) snprintf(why, sizeof why, "out of memory");
        log_warn("plugin %s refused, the running version (if any) stays: %s", path, why);
        report_add(rep, path, NULL, NULL, why);
    }
    pthread_mutex_unlock(&r->reload_mutex);
    return rc;
}

int plugin_registry_reload(plugin_registry *r, reload_report *rep)
{
    int failed = 0;
    for (int di = 0; di < r->n_dirs; di++) {
        size_t n_names;
        char **names = list_shared_objects(r->dirs[di], &n_names);
        for (size_t i = 0; i < n_names; i++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", r->dirs[di], names[i]);
            free(names[i]);
            struct stat st;
            if (!file_changed(r, path, &st)) continue;
            failed += plugin_registry_load_file(r, path, rep) != 0;
            /* A refused file is not tried again until it changes. */
            remember_file(r, path, &st);
        }
        free(names);
    }
    return failed;
}

int plugin_registry_load(plugin_registry *r, const char *const *dirs, int n_dirs, const char *copy_dir,
                         const char *validator)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_init(&r->reload_mutex, NULL);
    r->dirs = dirs;
    r->n_dirs = n_dirs;
    r->validator = validator;
    r->copy_dir = strdup(copy_dir);
    if (!r->copy_dir || (mkdir(copy_dir, 0700) != 0 && errno != EEXIST)) {
        log_error("cannot create the plugin copy directory %s: %s", copy_dir, strerror(errno));
        return -1;
    }
    /* Copies left by a daemon that did not stop cleanly. */
    DIR *d = opendir(copy_dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char stale[4400];
        if (snprintf(stale, sizeof stale, "%s/%s", copy_dir, e->d_name) >= (int)sizeof stale) continue;
        unlink(stale);
    }
    if (d) closedir(d);
    /* At start the first file of an id wins; later duplicates are skipped,
     * as before hot swap existed. */
    for (int di = 0; di < n_dirs; di++) {
        size_t n_names;
        char **names = list_shared_objects(dirs[di], &n_names);
        for (size_t i = 0; i < n_names; i++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dirs[di], names[i]);
            free(names[i]);
            struct stat st;
            if (stat(path, &st) != 0) continue;
            remember_file(r, path, &st);
            char why[512] = "";
            plugin *p;
            if (load_version(r, path, true, &p, why, sizeof why) != 0) {
                log_warn("plugin %s skipped: %s", path, why);
                continue;
            }
            if (find_index(r, p->desc->id, strlen(p->desc->id)) >= 0) {
                log_warn("plugin %s: id '%s' is already loaded; skipping this one", path, p->desc->id);
                plugin_unref(p);
                continue;
            }
            if (install(r, p, NULL) != 0) {
                plugin_unref(p);
                free(names);
                return -1;
            }
            log_info("loaded plugin %s %s (%s) from %s", p->desc->id, p->desc->version,
                     p->desc->kind == OPTIMD_KIND_OPTIMIZER ? "optimizer" : "scheduler", path);
        }
        free(names);
    }
    return 0;
}

void plugin_registry_unload(plugin_registry *r)
{
    for (size_t i = 0; i < r->count; i++) plugin_unref(r->plugins[i]);
    free(r->plugins);
    for (size_t i = 0; i < r->n_files; i++) free(r->files[i].path);
    free(r->files);
    rmdir(r->copy_dir);
    free(r->copy_dir);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->reload_mutex);
    memset(r, 0, sizeof *r);
}

int plugin_hparam_index(const plugin *p, const char *key, size_t key_len)
{
    return find_key(p->hparams, p->n_hparams, key, key_len);
}
