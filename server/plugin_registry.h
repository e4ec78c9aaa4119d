/* The plugins a daemon has loaded: every *.so in its plugin directories,
 * checked against ABI v1 before use. Read-only after start, so any thread
 * may look plugins up without locking. */
#ifndef OPTIMD_SERVER_PLUGIN_REGISTRY_H
#define OPTIMD_SERVER_PLUGIN_REGISTRY_H

#include <optimd/plugin.h>
#include <stddef.h>

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
    void *handle;                      /* from dlopen */
    char *path;
} plugin;

typedef struct plugin_registry {
    plugin *plugins;                   /* sorted by id */
    size_t count;
} plugin_registry;

/* Loads every plugin it can; a plugin that breaks the ABI is skipped with a
 * log line saying why. Returns 0, or -1 when out of memory. */
int plugin_registry_load(plugin_registry *r, const char *const *dirs, int n_dirs);
void plugin_registry_unload(plugin_registry *r);

const plugin *plugin_registry_find(const plugin_registry *r, const char *id, size_t id_len);

/* Index of hyperparameter `key` in `p`, or -1. */
int plugin_hparam_index(const plugin *p, const char *key, size_t key_len);

#endif
