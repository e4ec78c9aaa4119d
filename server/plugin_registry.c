#include "plugin_registry.h"

#include "log.h"

#include <dirent.h>
#include <dlfcn.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        log_warn("plugin %s: n_hparams is %u but hparams is NULL", path, n);
        return false;
    }
    for (uint32_t i = 0; i < n; i++) {
        const optimd_hparam_def *d = &defs[i];
        if (d->struct_size < sizeof *d) {
            log_warn("plugin %s: hparam %u has struct_size %u < %zu", path, i, d->struct_size, sizeof *d);
            return false;
        }
        if (!valid_key(d->key, UPPER)) {
            log_warn("plugin %s: hparam %u has an invalid key", path, i);
            return false;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(defs[j].key, d->key) == 0) {
                log_warn("plugin %s: hparam key '%s' declared twice", path, d->key);
                return false;
            }
        }
        if (d->type < OPTIMD_HP_FLOAT || d->type > OPTIMD_HP_BOOL) {
            log_warn("plugin %s: hparam '%s' has unknown type %u", path, d->key, d->type);
            return false;
        }
        if (!isfinite(d->min) || !isfinite(d->max) || !isfinite(d->default_value) || d->min > d->max) {
            log_warn("plugin %s: hparam '%s' needs finite min <= max and a finite default", path, d->key);
            return false;
        }
        bool required = d->flags & OPTIMD_HP_REQUIRED;
        if (!required && (d->default_value < d->min || d->default_value > d->max)) {
            log_warn("plugin %s: hparam '%s' default %g is outside [%g, %g]", path, d->key,
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
        log_warn("plugin %s: optimizer table missing, too small or without step", path);
        return false;
    }
    if (!check_hparams(path, o->hparams, o->n_hparams)) return false;
    p->hparams = o->hparams;
    p->n_hparams = o->n_hparams;
    p->lr_index = find_key(o->hparams, o->n_hparams, "lr", 2);
    if (p->lr_index < 0 || o->hparams[p->lr_index].type != OPTIMD_HP_FLOAT) {
        log_warn("plugin %s: an optimizer must declare a float hyperparameter 'lr'", path);
        return false;
    }
    if ((o->dtypes & ((1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64))) == 0) {
        log_warn("plugin %s: optimizer declares no supported dtype", path);
        return false;
    }
    if (o->n_slots && !o->slots) {
        log_warn("plugin %s: n_slots is %u but slots is NULL", path, o->n_slots);
        return false;
    }
    for (uint32_t i = 0; i < o->n_slots; i++) {
        const optimd_slot_def *s = &o->slots[i];
        if (s->struct_size < sizeof *s || !valid_key(s->key, UPPER) ||
            s->shape < OPTIMD_SLOT_LIKE_PARAM ||
            s->shape > (p->desc->abi_minor >= 1 ? OPTIMD_SLOT_COLS : OPTIMD_SLOT_SCALAR) ||
            s->dtype > OPTIMD_DTYPE_F64) {
            log_warn("plugin %s: slot %u is malformed (size, key, shape or dtype)", path, i);
            return false;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(o->slots[j].key, s->key) == 0) {
                log_warn("plugin %s: slot key '%s' declared twice", path, s->key);
                return false;
            }
        }
        if (s->enabled_by) {
            int h = find_key(o->hparams, o->n_hparams, s->enabled_by, strlen(s->enabled_by));
            if (h < 0 || o->hparams[h].type != OPTIMD_HP_BOOL) {
                log_warn("plugin %s: slot '%s' is enabled_by '%s', which is no bool hparam", path,
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
        log_warn("plugin %s: scheduler table missing, too small or without lr", path);
        return false;
    }
    if (!check_hparams(path, s->hparams, s->n_hparams)) return false;
    p->hparams = s->hparams;
    p->n_hparams = s->n_hparams;
    p->lr_index = -1;
    if (s->struct_size >= offsetof(optimd_scheduler, observe) + sizeof s->observe) {
        if (s->n_state > SCHED_MAX_STATE) {
            log_warn("plugin %s: scheduler declares %u state values; at most %u", path, s->n_state,
                     (unsigned)SCHED_MAX_STATE);
            return false;
        }
        if (s->observe && s->n_state == 0) {
            log_warn("plugin %s: a scheduler with observe must declare state", path);
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
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        log_warn("plugin %s: dlopen failed: %s", path, dlerror());
        return false;
    }
    const optimd_plugin_desc *d = dlsym(h, OPTIMD_PLUGIN_SYMBOL);
    if (!d) {
        log_warn("plugin %s: no symbol '%s'", path, OPTIMD_PLUGIN_SYMBOL);
        dlclose(h);
        return false;
    }
    p->desc = d;
    p->handle = h;
    bool ok = true;
    if (d->abi_major != OPTIMD_ABI_MAJOR || d->abi_minor > OPTIMD_ABI_MINOR) {
        log_warn("plugin %s: built for ABI %u.%u, this daemon speaks %u.0 to %u.%u", path,
                 d->abi_major, d->abi_minor, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MINOR);
        ok = false;
    } else if (d->struct_size < offsetof(optimd_plugin_desc, scheduler) + sizeof d->scheduler) {
        log_warn("plugin %s: descriptor struct_size %u < %zu", path, d->struct_size, sizeof *d);
        ok = false;
    } else if (!valid_key(d->id, ".-") || !d->version) {
        log_warn("plugin %s: id must match [a-z0-9_.-]+ and version must be set", path);
        ok = false;
    } else if (strcmp(d->id, "sequential") == 0 || strcmp(d->id, "chained") == 0) {
        /* The names of the daemon's combined schedules (protocol.md, open). */
        log_warn("plugin %s: id '%s' is reserved", path, d->id);
        ok = false;
    } else if (d->kind == OPTIMD_KIND_OPTIMIZER) {
        ok = check_optimizer(path, p);
    } else if (d->kind == OPTIMD_KIND_SCHEDULER) {
        ok = check_scheduler(path, p);
    } else {
        log_warn("plugin %s: unknown kind %u", path, d->kind);
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

static int by_id(const void *a, const void *b)
{
    return strcmp(((const plugin *)a)->desc->id, ((const plugin *)b)->desc->id);
}

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

int plugin_registry_load(plugin_registry *r, const char *const *dirs, int n_dirs)
{
    memset(r, 0, sizeof *r);
    size_t cap = 0;
    for (int di = 0; di < n_dirs; di++) {
        size_t n_names;
        char **names = list_shared_objects(dirs[di], &n_names);
        for (size_t i = 0; i < n_names; i++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dirs[di], names[i]);
            free(names[i]);
            plugin p;
            if (!load_one(path, &p)) continue;
            if (plugin_registry_find(r, p.desc->id, strlen(p.desc->id))) {
                log_warn("plugin %s: id '%s' is already loaded; skipping this one", path, p.desc->id);
                dlclose(p.handle);
                free(p.path);
                continue;
            }
            if (r->count == cap) {
                cap = cap ? cap * 2 : 16;
                plugin *grown = realloc(r->plugins, cap * sizeof *grown);
                if (!grown) {
                    dlclose(p.handle);
                    free(p.path);
                    free(names);
                    return -1;
                }
                r->plugins = grown;
            }
            r->plugins[r->count++] = p;
            /* Kept sorted so lookups can bisect and listings are ordered. */
            qsort(r->plugins, r->count, sizeof *r->plugins, by_id);
            log_info("loaded plugin %s %s (%s) from %s", p.desc->id, p.desc->version,
                     p.desc->kind == OPTIMD_KIND_OPTIMIZER ? "optimizer" : "scheduler", path);
        }
        free(names);
    }
    return 0;
}

void plugin_registry_unload(plugin_registry *r)
{
    for (size_t i = 0; i < r->count; i++) {
        dlclose(r->plugins[i].handle);
        free(r->plugins[i].path);
    }
    free(r->plugins);
    memset(r, 0, sizeof *r);
}

const plugin *plugin_registry_find(const plugin_registry *r, const char *id, size_t id_len)
{
    size_t lo = 0, hi = r->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *m = r->plugins[mid].desc->id;
        size_t m_len = strlen(m);
        int c = memcmp(m, id, m_len < id_len ? m_len : id_len);
        if (c == 0) c = (m_len > id_len) - (m_len < id_len);
        if (c == 0) return &r->plugins[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

int plugin_hparam_index(const plugin *p, const char *key, size_t key_len)
{
    return find_key(p->hparams, p->n_hparams, key, key_len);
}
