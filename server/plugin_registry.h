/* The plugins a daemon has loaded: every *.so in its plugin directories,
 * checked against ABI v1 before use, each id in one current version.
 *
 * Hot swap: a rescan (SIGHUP, a change in a plugin directory, the `reload`
 * op) or the `load` op loads a new file as a new version -- validated in a
 * child process, dlopen'ed from a private copy so two versions of one file
 * live side by side -- and makes it current. Sessions hold references to
 * the versions they use and move to the current one between two of their
 * steps; a version is unloaded when its last reference goes.
 *
 * Threads: lookups take `lock` briefly and hand out references; reloads
 * are serialised by reload_mutex and take `lock` only to swap. */
#ifndef OPTIMD_SERVER_PLUGIN_REGISTRY_H
#define OPTIMD_SERVER_PLUGIN_REGISTRY_H

#include <optimd/plugin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>

/* Most state values a scheduler may ask the host to keep. */
#define SCHED_MAX_STATE 64

typedef struct plugin {
    const optimd_plugin_desc *desc;
    const optimd_hparam_def *hparams;  /* of the optimizer or scheduler */
    uint32_t n_hparams;
    int lr_index;                      /* optimizers: index of "lr" */
    /* Schedulers, ABI 1.1 members (NULL / 0 for a 1.0 plugin). */
    optimd_status (*sched_momentum)(const optimd_host *, const optimd_sched_args *, double *);
    optimd_status (*sched_observe)(const optimd_host *, const optimd_sched_args *, double, double *);
    uint32_t n_sched_state;
    /* Optimizers, ABI 1.1 (NULL for a 1.0 plugin). */
    optimd_status (*opt_migrate)(const optimd_host *, const optimd_migrate_args *);
    uint32_t opt_flags;                /* ABI 1.2 OPTIMD_OPTIMIZER_* bits it declares; 0 before */
    void *handle;                      /* from dlopen */
    char *path;                        /* the file it came from */
    uint64_t generation;               /* load order, unique in a daemon */
    atomic_int refs;                   /* the registry's (while current) and sessions' */
} plugin;

typedef struct plugin_file {
    char *path;
    dev_t dev;
    ino_t ino;
    off_t size;
    long long mtime_sec;
    long mtime_nsec;
} plugin_file;

typedef struct plugin_registry {
    /* A mutex, not a read-write lock: lookups are a few instructions, and
     * a steady stream of readers would starve a reload's writer. */
    pthread_mutex_t lock;
    plugin **plugins;                  /* current versions, sorted by id */
    size_t count;
    pthread_mutex_t reload_mutex;
    const char *const *dirs;
    int n_dirs;
    plugin_file *files;                /* what the last scan saw */
    size_t n_files;
    char *copy_dir;                    /* private copies are loaded from here */
    const char *validator;             /* run on each new file; NULL: none */
    uint64_t next_generation;
} plugin_registry;

/* What a reload or load did, file by file. */
#define RELOAD_REPORT_MAX 64
typedef struct reload_entry {
    char path[512];
    char id[65];
    char version[32];
    char why[512];                     /* refused: why */
    int loaded;
} reload_entry;
typedef struct reload_report {
    reload_entry entries[RELOAD_REPORT_MAX];
    size_t n;
} reload_report;

/* Loads every plugin it can; a plugin that breaks the ABI is skipped with a
 * log line saying why. `copy_dir` is created for the private copies;
 * `validator` (NULL: none) is optimd-validate. Returns 0, or -1. */
int plugin_registry_load(plugin_registry *r, const char *const *dirs, int n_dirs, const char *copy_dir,
                         const char *validator);
void plugin_registry_unload(plugin_registry *r);

/* A new reference to the current version of `id`, or NULL. */
plugin *plugin_registry_get(plugin_registry *r, const char *id, size_t id_len);
/* The reference count is a plugin's one mutable member, hence const. */
void plugin_ref(const plugin *p);
void plugin_unref(const plugin *p);    /* unloads on the last reference */

/* The current versions (new references, sorted by id). */
plugin **plugin_registry_list(plugin_registry *r, size_t *n);
void plugin_registry_release_list(plugin **list, size_t n);
size_t plugin_registry_count(plugin_registry *r);

/* Loads every new or changed file of the plugin directories as the current
 * version of its id; a file that fails leaves the running version in place.
 * Returns how many failed; `rep` (may be NULL) says file by file. */
int plugin_registry_reload(plugin_registry *r, reload_report *rep);
/* The same for one file anywhere. 0 when loaded. */
int plugin_registry_load_file(plugin_registry *r, const char *path, reload_report *rep);

/* Index of hyperparameter `key` in `p`, or -1. */
int plugin_hparam_index(const plugin *p, const char *key, size_t key_len);

#endif
