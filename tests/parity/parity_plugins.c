/*
 * Plugin unit test: loads every plugin in $OPTIMD_PLUGIN_DIR the way the
 * daemon does (dlopen RTLD_NOW | RTLD_LOCAL, dlsym "optimd_plugin"), checks
 * each descriptor against the ABI rules and torch's constructor defaults,
 * then drives the optimizers and schedulers through a host table
 * implemented here and compares every result with torch 1.13.1 bit for bit.
 *
 * The expected numbers come from torch itself: unless a directory is given
 * as argv[1], tests/parity/torch_reference.py --suite unit is run into a
 * temporary directory first. No daemon is involved.
 *
 * Usage: parity_plugins [DATA_DIR | --descriptors-only]
 */
#include "case_data.h"
#include "check.h"

#include <optimd/plugin.h>

#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PLUGINS 256

/* Elements past the end of every host buffer, filled with a pattern that a
 * plugin writing out of bounds would disturb. */
#define GUARD_ELEMS 16
#define GUARD_BYTE 0xA5

typedef struct loaded_plugin {
    char path[600];
    char file_id[64];        /* file name without ".so" */
    void *handle;
    const optimd_plugin_desc *desc;
} loaded_plugin;

/* ------------------------------------------------------ the test host -- */

/* The host's per-call context. The ABI makes it opaque to plugins; this
 * test defines it to observe what the plugin asked for. */
struct optimd_call {
    char error[256];
    int errors_set;
    int parallel_calls;
    int chunks_run;
    int scratch_calls;
    void *scratch[8];
};

static void host_log(optimd_call *call, int32_t level, const char *msg)
{
    (void)call;
    fprintf(stderr, "plugin log [%d]: %s\n", level, msg);
}

static void host_set_error(optimd_call *call, const char *msg)
{
    snprintf(call->error, sizeof call->error, "%s", msg);
    call->errors_set++;
}

static void *host_scratch(optimd_call *call, size_t bytes)
{
    if (call->scratch_calls == 8) return NULL;
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p) call->scratch[call->scratch_calls++] = p;
    return p;
}

/* Runs the chunks serially, last chunk first, with chunk sizes that obey
 * the ABI (at least `grain`, multiples of 16 except the last), so that a
 * kernel depending on chunk order or on running as one piece shows up. */
static optimd_status host_parallel_for(optimd_call *call, int64_t n,
                                       int64_t grain, optimd_range_fn fn,
                                       void *user)
{
    call->parallel_calls++;
    if (n <= 0 || grain <= 0 || fn == NULL) {
        fprintf(stderr, "host: parallel_for(n=%lld, grain=%lld) is invalid\n",
                (long long)n, (long long)grain);
        return OPTIMD_ERR_INVALID;
    }
    int64_t chunk = (grain + 15) / 16 * 16;
    int64_t n_chunks = (n + chunk - 1) / chunk;
    for (int64_t c = n_chunks - 1; c >= 0; c--) {
        int64_t begin = c * chunk;
        int64_t end = begin + chunk < n ? begin + chunk : n;
        fn(user, begin, end);
        call->chunks_run++;
    }
    return OPTIMD_OK;
}

static optimd_host make_host(optimd_call *call)
{
    memset(call, 0, sizeof *call);
    optimd_host host = {
        .struct_size = sizeof(optimd_host),
        .abi_major = OPTIMD_ABI_MAJOR,
        .abi_minor = OPTIMD_ABI_MINOR,
        .call = call,
        .log = host_log,
        .set_error = host_set_error,
        .scratch = host_scratch,
        .parallel_for = host_parallel_for,
    };
    return host;
}

static void end_call(optimd_call *call)
{
    for (int i = 0; i < call->scratch_calls; i++) free(call->scratch[i]);
    call->scratch_calls = 0;
}

/* ------------------------------------------------ loading and symbols -- */

/* Number of symbols the shared object defines in its dynamic symbol table
 * (what dlsym could find); `name_out` receives the first one's name. */
static int count_exported_symbols(const char *path, char *name_out, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *image = size > 0 ? malloc((size_t)size) : NULL;
    bool read_ok = image && fread(image, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    if (!read_ok || (size_t)size < sizeof(Elf64_Ehdr) ||
        memcmp(image, ELFMAG, SELFMAG) != 0 || image[EI_CLASS] != ELFCLASS64) {
        free(image);
        return -1;
    }
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)image;
    int count = -1;
    if (eh->e_shoff + (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr) <= (uint64_t)size) {
        const Elf64_Shdr *sh = (const Elf64_Shdr *)(image + eh->e_shoff);
        for (int i = 0; i < eh->e_shnum; i++) {
            if (sh[i].sh_type != SHT_DYNSYM || sh[i].sh_link >= eh->e_shnum) continue;
            const Elf64_Shdr *strtab = &sh[sh[i].sh_link];
            if (sh[i].sh_offset + sh[i].sh_size > (uint64_t)size ||
                strtab->sh_offset + strtab->sh_size > (uint64_t)size)
                break;
            const Elf64_Sym *syms = (const Elf64_Sym *)(image + sh[i].sh_offset);
            size_t n = sh[i].sh_size / sizeof(Elf64_Sym);
            count = 0;
            for (size_t s = 0; s < n; s++) {
                int bind = ELF64_ST_BIND(syms[s].st_info);
                if (syms[s].st_shndx == SHN_UNDEF || syms[s].st_name == 0 ||
                    (bind != STB_GLOBAL && bind != STB_WEAK))
                    continue;
                if (count == 0 && syms[s].st_name < strtab->sh_size)
                    snprintf(name_out, cap, "%s",
                             (const char *)image + strtab->sh_offset + syms[s].st_name);
                count++;
            }
            break;
        }
    }
    free(image);
    return count;
}

static int by_file_id(const void *a, const void *b)
{
    return strcmp(((const loaded_plugin *)a)->file_id, ((const loaded_plugin *)b)->file_id);
}

static int load_plugins(const char *dir, loaded_plugin *out, int cap)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "cannot open plugin directory %s\n", dir);
        return -1;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 4 || strcmp(e->d_name + len - 3, ".so") != 0) continue;
        if (n == cap) {
            CHECK(0, "more than %d plugins in %s: raise MAX_PLUGINS", cap, dir);
            break;
        }
        loaded_plugin *p = &out[n];
        memset(p, 0, sizeof *p);
        snprintf(p->path, sizeof p->path, "%s/%s", dir, e->d_name);
        snprintf(p->file_id, sizeof p->file_id, "%.*s", (int)(len - 3), e->d_name);
        p->handle = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
        CHECK(p->handle != NULL, "dlopen %s: %s", p->path, dlerror());
        if (!p->handle) continue;
        p->desc = dlsym(p->handle, OPTIMD_PLUGIN_SYMBOL);
        CHECK(p->desc != NULL, "%s exports no %s", p->path, OPTIMD_PLUGIN_SYMBOL);
        if (!p->desc) {
            dlclose(p->handle);
            continue;
        }
        n++;
    }
    closedir(d);
    qsort(out, (size_t)n, sizeof *out, by_file_id);
    return n;
}

static const loaded_plugin *find_plugin(const loaded_plugin *plugins, int n,
                                        const char *id)
{
    for (int i = 0; i < n; i++)
        if (strcmp(plugins[i].desc->id, id) == 0) return &plugins[i];
    return NULL;
}

/* ------------------------------------------------ descriptor sanity -- */

/* Hyperparameter and slot keys may use torch's capitals (T_max). */
#define UPPERCASE "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

static bool key_chars_ok(const char *s, const char *extra)
{
    if (!s || !*s) return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              (extra && strchr(extra, *s))))
            return false;
    return true;
}

static bool in_range(const optimd_hparam_def *d, double v)
{
    bool lo = (d->flags & OPTIMD_HP_MIN_EXCLUSIVE) ? v > d->min : v >= d->min;
    bool hi = (d->flags & OPTIMD_HP_MAX_EXCLUSIVE) ? v < d->max : v <= d->max;
    return lo && hi;
}

static void check_hparam_table(const char *id, const optimd_hparam_def *defs,
                               uint32_t n, bool optimizer)
{
    REQUIRE(n == 0 || defs != NULL, "%s: hparams NULL", id);
    const uint32_t known_flags = OPTIMD_HP_REQUIRED | OPTIMD_HP_MUTABLE |
                                 OPTIMD_HP_MIN_EXCLUSIVE | OPTIMD_HP_MAX_EXCLUSIVE;
    for (uint32_t i = 0; i < n; i++) {
        const optimd_hparam_def *d = &defs[i];
        CHECK(d->struct_size == sizeof *d, "%s: hparam %u struct_size %u", id, i,
              d->struct_size);
        CHECK(key_chars_ok(d->key, UPPERCASE), "%s: hparam %u key '%s'", id, i,
              d->key ? d->key : "(null)");
        if (!d->key) continue;
        CHECK(d->doc && *d->doc, "%s.%s: no doc", id, d->key);
        CHECK((d->flags & ~known_flags) == 0, "%s.%s: unknown flags %#x", id,
              d->key, d->flags);
        CHECK(d->type >= OPTIMD_HP_FLOAT && d->type <= OPTIMD_HP_BOOL,
              "%s.%s: type %u", id, d->key, d->type);
        CHECK(isfinite(d->min) && isfinite(d->max) && isfinite(d->default_value),
              "%s.%s: non-finite min/max/default", id, d->key);
        CHECK(d->min <= d->max, "%s.%s: min %g > max %g", id, d->key, d->min, d->max);
        if (!(d->flags & OPTIMD_HP_REQUIRED))
            CHECK(in_range(d, d->default_value), "%s.%s: default %g outside range",
                  id, d->key, d->default_value);
        for (uint32_t j = 0; j < i; j++)
            CHECK(defs[j].key == NULL || strcmp(defs[j].key, d->key) != 0,
                  "%s: key '%s' declared twice", id, d->key);
        if (d->type == OPTIMD_HP_BOOL) {
            CHECK(d->min == 0.0 && d->max == 1.0 &&
                      (d->default_value == 0.0 || d->default_value == 1.0),
                  "%s.%s: bool must be [0, 1] with default 0 or 1", id, d->key);
            /* Structural switches (amsgrad, nesterov, maximize) change the
             * state layout or the algorithm: never mutable mid-session. */
            CHECK(!(d->flags & OPTIMD_HP_MUTABLE), "%s.%s: bool marked mutable", id,
                  d->key);
        } else if (d->type == OPTIMD_HP_INT) {
            CHECK(d->min == floor(d->min) && d->max == floor(d->max) &&
                      d->default_value == floor(d->default_value),
                  "%s.%s: int with fractional bounds", id, d->key);
        } else if (optimizer && !(strcmp(id, "sparse_adagrad") == 0 &&
                                  strcmp(d->key, "initial_accumulator_value") == 0)) {
            /* torch lets every numeric optimizer hparam change between steps.
             * sparse_adagrad's initial value is the exception: it stands for
             * rows never touched, which torch filled at construction, so a
             * later change would mean something torch cannot do. */
            CHECK(d->flags & OPTIMD_HP_MUTABLE, "%s.%s: numeric but not mutable", id,
                  d->key);
        }
    }
}

static void check_descriptor(const loaded_plugin *p)
{
    const optimd_plugin_desc *d = p->desc;
    const char *id = p->file_id;
    CHECK(d->abi_major == OPTIMD_ABI_MAJOR && d->abi_minor == OPTIMD_ABI_MINOR,
          "%s: ABI %u.%u", id, d->abi_major, d->abi_minor);
    CHECK(d->struct_size == sizeof *d, "%s: struct_size %u != %zu", id, d->struct_size,
          sizeof *d);
    CHECK(d->id && strcmp(d->id, p->file_id) == 0, "%s: id '%s' differs from file name",
          id, d->id ? d->id : "(null)");
    CHECK(key_chars_ok(d->id, ".-"), "%s: id has bad characters", id);
    unsigned a, b, c;
    CHECK(d->version && sscanf(d->version, "%u.%u.%u", &a, &b, &c) == 3,
          "%s: version '%s' is not major.minor.patch", id, d->version ? d->version : "");
    CHECK(d->description && *d->description, "%s: no description", id);

    char first_symbol[128] = "";
    int exported = count_exported_symbols(p->path, first_symbol, sizeof first_symbol);
    CHECK(exported == 1 && strcmp(first_symbol, OPTIMD_PLUGIN_SYMBOL) == 0,
          "%s: exports %d dynamic symbols (first '%s'), want only %s", id, exported,
          first_symbol, OPTIMD_PLUGIN_SYMBOL);

    if (d->kind == OPTIMD_KIND_OPTIMIZER) {
        const optimd_optimizer *o = d->optimizer;
        REQUIRE(o != NULL && d->scheduler == NULL, "%s: optimizer kind, tables wrong", id);
        CHECK(o->struct_size == sizeof *o, "%s: optimizer struct_size %u", id, o->struct_size);
        CHECK(o->step != NULL, "%s: no step", id);
        check_hparam_table(id, o->hparams, o->n_hparams, true);
        REQUIRE(o->n_hparams > 0 && o->hparams[0].key && strcmp(o->hparams[0].key, "lr") == 0,
                "%s: lr must be declared first", id);
        CHECK(o->hparams[0].type == OPTIMD_HP_FLOAT && (o->hparams[0].flags & OPTIMD_HP_MUTABLE),
              "%s: lr must be a mutable float", id);
        uint32_t supported = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64);
        CHECK((o->dtypes & (1u << OPTIMD_DTYPE_F32)) && !(o->dtypes & ~supported),
              "%s: dtypes %#x", id, o->dtypes);
        REQUIRE(o->n_slots == 0 || o->slots != NULL, "%s: slots NULL", id);
        for (uint32_t i = 0; i < o->n_slots; i++) {
            const optimd_slot_def *s = &o->slots[i];
            CHECK(s->struct_size == sizeof *s, "%s: slot %u struct_size", id, i);
            CHECK(key_chars_ok(s->key, UPPERCASE), "%s: slot %u key", id, i);
            CHECK(s->doc && *s->doc, "%s: slot %u doc", id, i);
            CHECK(s->shape >= OPTIMD_SLOT_LIKE_PARAM && s->shape <= OPTIMD_SLOT_COLS &&
                      (s->shape <= OPTIMD_SLOT_SCALAR || d->abi_minor >= 1) &&
                      s->dtype <= OPTIMD_DTYPE_F64,
                  "%s: slot %u shape/dtype", id, i);
            for (uint32_t j = 0; j < i; j++)
                CHECK(strcmp(o->slots[j].key, s->key) != 0, "%s: slot key twice", id);
            if (s->enabled_by) {
                bool found = false;
                for (uint32_t h = 0; h < o->n_hparams; h++)
                    found |= strcmp(o->hparams[h].key, s->enabled_by) == 0 &&
                             o->hparams[h].type == OPTIMD_HP_BOOL;
                CHECK(found, "%s: slot %s enabled_by '%s' is no bool hparam", id, s->key,
                      s->enabled_by);
            }
        }
    } else if (d->kind == OPTIMD_KIND_SCHEDULER) {
        const optimd_scheduler *s = d->scheduler;
        REQUIRE(s != NULL && d->optimizer == NULL, "%s: scheduler kind, tables wrong", id);
        CHECK(s->struct_size == sizeof *s, "%s: scheduler struct_size %u", id, s->struct_size);
        CHECK(s->lr != NULL, "%s: no lr", id);
        check_hparam_table(id, s->hparams, s->n_hparams, false);
    } else {
        CHECK(0, "%s: unknown kind %u", id, d->kind);
    }
}

static const optimd_hparam_def *plugin_hparams(const optimd_plugin_desc *d, uint32_t *n)
{
    if (d->kind == OPTIMD_KIND_OPTIMIZER) {
        *n = d->optimizer->n_hparams;
        return d->optimizer->hparams;
    }
    *n = d->scheduler->n_hparams;
    return d->scheduler->hparams;
}

/* Every hyperparameter torch's constructor has is declared with the same
 * type and default (or as required), and the plugin declares no others. */
static void check_torch_defaults(const loaded_plugin *plugins, int n_plugins,
                                 const parity_manifest *m)
{
    for (int i = 0; i < n_plugins; i++) {
        uint32_t n;
        const optimd_hparam_def *defs = plugin_hparams(plugins[i].desc, &n);
        int matched = 0;
        for (int r = 0; r < m->n_defaults; r++) {
            const torch_default *t = &m->defaults[r];
            if (strcmp(t->plugin, plugins[i].desc->id) != 0) continue;
            const optimd_hparam_def *d = NULL;
            for (uint32_t k = 0; k < n; k++)
                if (strcmp(defs[k].key, t->hparam.key) == 0) d = &defs[k];
            CHECK(d != NULL, "%s: torch has '%s', the plugin does not declare it",
                  t->plugin, t->hparam.key);
            if (!d) continue;
            matched++;
            if (t->hparam.type == CASE_HP_REQUIRED) {
                CHECK(d->flags & OPTIMD_HP_REQUIRED, "%s.%s: torch requires it", t->plugin,
                      d->key);
            } else {
                CHECK(!(d->flags & OPTIMD_HP_REQUIRED), "%s.%s: torch has a default",
                      t->plugin, d->key);
                CHECK((int)d->type == t->hparam.type, "%s.%s: type %u, torch's %d",
                      t->plugin, d->key, d->type, t->hparam.type);
                CHECK(d->default_value == t->hparam.value,
                      "%s.%s: default %.17g, torch's %.17g", t->plugin, d->key,
                      d->default_value, t->hparam.value);
            }
        }
        /* Plugins the reference has no defaults for (beyond torch, tested
         * by their own suites) are not judged here. */
        bool known = false;
        for (int r = 0; r < m->n_defaults && !known; r++)
            known = strcmp(m->defaults[r].plugin, plugins[i].desc->id) == 0;
        CHECK(!known || matched == (int)n, "%s: declares %u hparams, torch has %d of them",
              plugins[i].desc->id, n, matched);
    }
}

/* ------------------------------------------------- hyperparameters -- */

/* Dense values in declaration order, as the host builds them: defaults,
 * then the case's values (each must be declared and in range). */
static bool build_hparams(const char *id, const optimd_hparam_def *defs, uint32_t n,
                          const case_hparam *given, int n_given, double *out)
{
    bool ok = true;
    for (uint32_t k = 0; k < n; k++) out[k] = defs[k].default_value;
    bool set[CASE_MAX_HPARAMS] = {false};
    for (int g = 0; g < n_given; g++) {
        uint32_t k = 0;
        while (k < n && strcmp(defs[k].key, given[g].key) != 0) k++;
        CHECK(k < n, "%s: no hyperparameter '%s'", id, given[g].key);
        if (k == n) {
            ok = false;
            continue;
        }
        CHECK(in_range(&defs[k], given[g].value), "%s.%s: %g out of range", id,
              given[g].key, given[g].value);
        out[k] = given[g].value;
        set[k] = true;
    }
    for (uint32_t k = 0; k < n; k++) {
        if ((defs[k].flags & OPTIMD_HP_REQUIRED) && !set[k]) {
            CHECK(0, "%s: required '%s' not given", id, defs[k].key);
            ok = false;
        }
    }
    return ok;
}

/* ---------------------------------------------------- running cases -- */

typedef struct host_tensor {
    optimd_tensor view;
    int64_t shape[1];
    int64_t strides[1];
} host_tensor;

/* A 64-byte aligned buffer with guard elements after its end. */
static void *alloc_guarded(int64_t numel, size_t elem)
{
    size_t bytes = (size_t)(numel + GUARD_ELEMS) * elem;
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p) memset(p, GUARD_BYTE, bytes);
    return p;
}

static bool guard_intact(const void *p, int64_t numel, size_t elem)
{
    const unsigned char *g = (const unsigned char *)p + (size_t)numel * elem;
    for (size_t i = 0; i < GUARD_ELEMS * elem; i++)
        if (g[i] != GUARD_BYTE) return false;
    return true;
}

static void make_view(host_tensor *t, int dtype, void *data, int64_t numel)
{
    memset(t, 0, sizeof *t);
    t->shape[0] = numel;
    t->strides[0] = 1;
    t->view.struct_size = sizeof t->view;
    t->view.dtype = (uint32_t)dtype;
    t->view.data = data;
    t->view.numel = numel;
    /* One-element parameters travel as 0-d tensors, as a scalar would. */
    t->view.ndim = numel == 1 ? 0 : 1;
    t->view.shape = t->shape;
    t->view.strides = t->strides;
}

/* A view of a slot as the daemon passes it: OPTIMD_SLOT_SCALAR slots are
 * 0-dim tensors with no shape or strides; others are shaped like the
 * parameter. */
static void make_slot_view(host_tensor *t, const optimd_slot_def *def, int dtype,
                           void *data, int64_t numel)
{
    make_view(t, dtype, data, numel);
    if (def->shape == OPTIMD_SLOT_SCALAR) {
        t->view.ndim = 0;
        t->view.shape = NULL;
        t->view.strides = NULL;
    }
}

/* Element count, dtype and element size of slot `def` of a parameter of
 * `numel` elements and dtype `dtype`, as the daemon allocates it. */
static int64_t slot_numel(const optimd_slot_def *def, int64_t numel)
{
    return def->shape == OPTIMD_SLOT_SCALAR ? 1 : numel;
}

static int slot_dtype(const optimd_slot_def *def, int dtype)
{
    return def->dtype ? (int)def->dtype : dtype;
}

static size_t dtype_size(int dtype)
{
    return dtype == OPTIMD_DTYPE_F64 ? 8 : 4;
}

/* Computes the lr of epochs 0..epochs with the scheduler plugin, chained
 * as the daemon does (last_lr = previous epoch's value). */
static bool run_schedule(const loaded_plugin *sp, const parity_case *c, double base_lr,
                         double *lrs)
{
    const optimd_scheduler *s = sp->desc->scheduler;
    double hp[CASE_MAX_HPARAMS];
    if (!build_hparams(sp->desc->id, s->hparams, s->n_hparams, c->sched_hparams,
                       c->n_sched_hparams, hp))
        return false;
    optimd_call call;
    optimd_host host = make_host(&call);
    if (s->check_hparams) {
        optimd_status st = s->check_hparams(&host, hp, s->n_hparams);
        CHECK(st == OPTIMD_OK, "%s: check_hparams refused: %s", c->name, call.error);
        if (st != OPTIMD_OK) return false;
    }
    for (int e = 0; e <= c->steps; e++) {
        optimd_sched_args args = {
            .struct_size = sizeof args,
            .n_hparams = s->n_hparams,
            .hparams = hp,
            .epoch = e,
            .base_lr = base_lr,
            .last_lr = e == 0 ? base_lr : lrs[e - 1],
        };
        host = make_host(&call);
        optimd_status st = s->lr(&host, &args, &lrs[e]);
        CHECK(st == OPTIMD_OK, "%s: lr(epoch %d) failed: %s", c->name, e, call.error);
        if (st != OPTIMD_OK) return false;
    }
    return true;
}

static void compare_lrs(const parity_case *c, const double *got, const double *want,
                        int n, uint64_t *max_ulp)
{
    for (int e = 0; e < n; e++) {
        uint64_t ulp = ulp_distance_f64(got[e], want[e]);
        if (ulp > *max_ulp) *max_ulp = ulp;
        CHECK(ulp == 0, "%s: lr at epoch %d: got %.17g, torch %.17g (%llu ulp)", c->name, e,
              got[e], want[e], (unsigned long long)ulp);
    }
}

typedef struct case_result {
    uint64_t max_ulp;
    int64_t elements_compared;
    int parallel_calls;
} case_result;

/* Compares `n` values bit for bit with torch's, records the distance in
 * `r` and reports a mismatch; `what` names the values in the report. */
static bool compare_with_torch(const parity_case *c, const char *what, const void *got,
                               const void *want, int64_t n, int dtype, case_result *r)
{
    bit_compare cmp;
    bool same = compare_bits(got, want, n, dtype, &cmp);
    if (cmp.max_ulp > r->max_ulp) r->max_ulp = cmp.max_ulp;
    r->elements_compared += n;
    CHECK(same,
          "%s: %s: %lld of %lld elements differ; first at [%lld]: got %.9g, torch %.9g "
          "(%llu ulp); max %llu ulp",
          c->name, what, (long long)cmp.mismatches, (long long)n, (long long)cmp.first_index,
          cmp.first_got, cmp.first_want, (unsigned long long)cmp.first_ulp,
          (unsigned long long)cmp.max_ulp);
    return same;
}

static void run_scheduler_case(const loaded_plugin *plugins, int n_plugins,
                               const parity_manifest *m, const parity_case *c,
                               case_result *r)
{
    const loaded_plugin *sp = find_plugin(plugins, n_plugins, c->scheduler);
    REQUIRE(sp && sp->desc->kind == OPTIMD_KIND_SCHEDULER, "%s: no scheduler %s", c->name,
            c->scheduler);
    case_data d;
    REQUIRE(case_data_load(m, c, &d) == 0, "%s: cannot load data", c->name);
    double lrs[CASE_MAX_STEPS + 1];
    if (run_schedule(sp, c, c->base_lr, lrs)) compare_lrs(c, lrs, d.lr, c->steps + 1, &r->max_ulp);
    r->elements_compared += c->steps + 1;
    case_data_free(&d);
}

static void run_optimizer_case(const loaded_plugin *plugins, int n_plugins,
                               const parity_manifest *m, const parity_case *c,
                               case_result *r)
{
    const loaded_plugin *op = find_plugin(plugins, n_plugins, c->optimizer);
    REQUIRE(op && op->desc->kind == OPTIMD_KIND_OPTIMIZER, "%s: no optimizer %s", c->name,
            c->optimizer);
    const optimd_optimizer *o = op->desc->optimizer;
    const char *id = op->desc->id;
    double hp[CASE_MAX_HPARAMS];
    REQUIRE(o->n_hparams <= CASE_MAX_HPARAMS, "%s: too many hparams", id);
    REQUIRE(build_hparams(id, o->hparams, o->n_hparams, c->hparams, c->n_hparams, hp),
            "%s: bad hyperparameters", c->name);
    optimd_call call;
    optimd_host host = make_host(&call);
    if (o->check_hparams)
        REQUIRE(o->check_hparams(&host, hp, o->n_hparams) == OPTIMD_OK,
                "%s: check_hparams refused: %s", c->name, call.error);

    case_data d;
    REQUIRE(case_data_load(m, c, &d) == 0, "%s: cannot load data", c->name);

    /* The lr of every step: the base lr, or the scheduler's sequence. */
    const double base_lr = hp[0];
    double lrs[CASE_MAX_STEPS + 1];
    bool schedule_ok = true;
    if (c->scheduler[0]) {
        const loaded_plugin *sp = find_plugin(plugins, n_plugins, c->scheduler);
        CHECK(sp && sp->desc->kind == OPTIMD_KIND_SCHEDULER, "%s: no scheduler %s",
              c->name, c->scheduler);
        schedule_ok = sp && run_schedule(sp, c, base_lr, lrs);
    } else {
        for (int e = 0; e <= c->steps; e++) lrs[e] = base_lr;
    }
    if (schedule_ok) compare_lrs(c, lrs, d.lr, c->steps + 1, &r->max_ulp);

    /* Host-side state, as the daemon keeps it. */
    void *param[CASE_MAX_PARAMS] = {NULL};
    void *slot[CASE_MAX_PARAMS][8] = {{NULL}};
    uint64_t steps_done[CASE_MAX_PARAMS] = {0};
    bool failed = !schedule_ok || o->n_slots > 8;
    for (int i = 0; i < c->n_params && !failed; i++) {
        param[i] = alloc_guarded(c->params[i].numel, c->elem_size);
        failed = param[i] == NULL;
        if (!failed)
            memcpy(param[i], case_init(c, &d, i), (size_t)c->params[i].numel * c->elem_size);
    }
    for (int step = 1; step <= c->steps && !failed; step++) {
        hp[0] = lrs[step - 1]; /* the host replaces lr by the scheduled lr */
        for (int i = 0; i < c->n_params && !failed; i++) {
            if (!c->has_grad[step][i]) continue;
            const int64_t numel = c->params[i].numel;
            host_tensor slot_views[8];
            optimd_tensor slot_tensors[8];
            for (uint32_t s = 0; s < o->n_slots; s++) {
                const char *enabler = o->slots[s].enabled_by;
                bool enabled = true;
                for (uint32_t k = 0; enabler && k < o->n_hparams; k++)
                    if (strcmp(o->hparams[k].key, enabler) == 0) enabled = hp[k] != 0.0;
                const optimd_slot_def *def = &o->slots[s];
                const int sdtype = slot_dtype(def, c->dtype);
                const int64_t snumel = slot_numel(def, numel);
                /* Zero-filled on the parameter's first step. */
                if (enabled && slot[i][s] == NULL) {
                    slot[i][s] = alloc_guarded(snumel, dtype_size(sdtype));
                    if (slot[i][s]) memset(slot[i][s], 0, (size_t)snumel * dtype_size(sdtype));
                    else failed = true;
                }
                make_slot_view(&slot_views[s], def, sdtype, enabled ? slot[i][s] : NULL,
                               snumel);
                slot_tensors[s] = slot_views[s].view;
            }
            if (failed) break;
            host_tensor pv, gv;
            make_view(&pv, c->dtype, param[i], numel);
            make_view(&gv, c->dtype, case_grad(c, &d, step, i), numel);
            optimd_step_args args = {
                .struct_size = sizeof args,
                .n_hparams = o->n_hparams,
                .hparams = hp,
                .step = ++steps_done[i],
                .param = &pv.view,
                .grad = &gv.view,
                .slots = slot_tensors,
                .n_slots = o->n_slots,
            };
            host = make_host(&call);
            optimd_status st = o->step(&host, &args);
            r->parallel_calls += call.parallel_calls;
            end_call(&call);
            CHECK(st == OPTIMD_OK, "%s: step %d param %s failed (%d): %s", c->name, step,
                  c->params[i].name, st, call.error);
            CHECK(call.errors_set == 0, "%s: set_error on success: %s", c->name, call.error);
            failed = st != OPTIMD_OK;
        }
        for (int i = 0; i < c->n_params && !failed; i++) {
            const int64_t numel = c->params[i].numel;
            char what[96];
            snprintf(what, sizeof what, "step %d param %s", step, c->params[i].name);
            bool same = compare_with_torch(c, what, param[i], case_expect(c, &d, step, i),
                                           numel, c->dtype, r);
            CHECK(guard_intact(param[i], numel, c->elem_size),
                  "%s: write past the end of param %s", c->name, c->params[i].name);
            for (uint32_t s = 0; s < o->n_slots; s++)
                CHECK(!slot[i][s] ||
                          guard_intact(slot[i][s], slot_numel(&o->slots[s], numel),
                                       dtype_size(slot_dtype(&o->slots[s], c->dtype))),
                      "%s: write past the end of slot %s", c->name, o->slots[s].key);
            failed = !same; /* later steps would only repeat the report */
        }
    }
    /* torch's final state, slot by slot: the keys must match torch's
     * state_dict keys and the values its bits. */
    for (int k = 0; k < c->n_states && !failed; k++) {
        const case_state *want = &c->states[k];
        uint32_t s = 0;
        while (s < o->n_slots && strcmp(o->slots[s].key, want->key) != 0) s++;
        CHECK(s < o->n_slots, "%s: torch keeps state '%s', the plugin has no such slot",
              c->name, want->key);
        if (s == o->n_slots) continue;
        const optimd_slot_def *def = &o->slots[s];
        const int64_t numel = slot_numel(def, c->params[want->param].numel);
        const int dtype = slot_dtype(def, c->dtype);
        CHECK(numel == want->numel && dtype == want->dtype,
              "%s: slot %s holds %lld elements of dtype %d, torch's %lld of dtype %d", c->name,
              want->key, (long long)numel, dtype, (long long)want->numel, want->dtype);
        CHECK(slot[want->param][s] != NULL, "%s: slot %s of param %s never allocated",
              c->name, want->key, c->params[want->param].name);
        if (numel != want->numel || dtype != want->dtype || slot[want->param][s] == NULL)
            continue;
        char what[160];
        snprintf(what, sizeof what, "final state %s of param %s", want->key,
                 c->params[want->param].name);
        compare_with_torch(c, what, slot[want->param][s], case_state_data(c, &d, k), numel,
                           dtype, r);
    }
    for (int i = 0; i < c->n_params; i++) {
        free(param[i]);
        for (int s = 0; s < 8; s++) free(slot[i][s]);
    }
    case_data_free(&d);
}

/* ------------------------------------------------- refusal behaviour -- */

static int find_hparam(const optimd_hparam_def *defs, uint32_t n, const char *key)
{
    for (uint32_t k = 0; k < n; k++)
        if (strcmp(defs[k].key, key) == 0) return (int)k;
    return -1;
}

static void check_scheduler_refusals(const loaded_plugin *plugins, int n_plugins);
static void check_catalog_refusals(const loaded_plugin *plugins, int n_plugins);

/* Cross-key rules and malformed calls are refused with a status and a
 * reason, and leave the parameter untouched. */
static void check_refusals(const loaded_plugin *plugins, int n_plugins)
{
    optimd_call call;
    optimd_host host;

    const loaded_plugin *sgd = find_plugin(plugins, n_plugins, "sgd");
    REQUIRE(sgd != NULL, "sgd plugin missing");
    const optimd_optimizer *o = sgd->desc->optimizer;
    REQUIRE(o->check_hparams != NULL, "sgd has no check_hparams");
    double hp[CASE_MAX_HPARAMS];
    for (uint32_t k = 0; k < o->n_hparams; k++) hp[k] = o->hparams[k].default_value;
    int nesterov = find_hparam(o->hparams, o->n_hparams, "nesterov");
    int momentum = find_hparam(o->hparams, o->n_hparams, "momentum");
    int dampening = find_hparam(o->hparams, o->n_hparams, "dampening");
    REQUIRE(nesterov >= 0 && momentum >= 0 && dampening >= 0, "sgd keys missing");
    hp[0] = 0.1;
    hp[nesterov] = 1.0;
    host = make_host(&call);
    CHECK(o->check_hparams(&host, hp, o->n_hparams) == OPTIMD_ERR_INVALID,
          "sgd: nesterov without momentum accepted");
    CHECK(strstr(call.error, "nesterov") != NULL, "sgd: unclear error '%s'", call.error);
    hp[momentum] = 0.9;
    hp[dampening] = 0.1;
    host = make_host(&call);
    CHECK(o->check_hparams(&host, hp, o->n_hparams) == OPTIMD_ERR_INVALID,
          "sgd: nesterov with dampening accepted");
    hp[dampening] = 0.0;
    host = make_host(&call);
    CHECK(o->check_hparams(&host, hp, o->n_hparams) == OPTIMD_OK,
          "sgd: valid nesterov refused: %s", call.error);

    /* Malformed step calls on adam: a missing amsgrad slot, mismatched
     * dtypes, an unknown dtype, a wrong hyperparameter count. */
    const loaded_plugin *adam = find_plugin(plugins, n_plugins, "adam");
    REQUIRE(adam != NULL, "adam plugin missing");
    o = adam->desc->optimizer;
    for (uint32_t k = 0; k < o->n_hparams; k++) hp[k] = o->hparams[k].default_value;
    int amsgrad = find_hparam(o->hparams, o->n_hparams, "amsgrad");
    REQUIRE(amsgrad >= 0 && o->n_slots == 3, "adam layout unexpected");
    hp[amsgrad] = 1.0;
    float p[4] = {1, 2, 3, 4}, g[4] = {1, 1, 1, 1}, m[4] = {0}, v[4] = {0};
    double g64[4] = {1, 1, 1, 1};
    host_tensor pv, gv, sv[3];
    make_view(&pv, OPTIMD_DTYPE_F32, p, 4);
    make_view(&gv, OPTIMD_DTYPE_F32, g, 4);
    make_view(&sv[0], OPTIMD_DTYPE_F32, m, 4);
    make_view(&sv[1], OPTIMD_DTYPE_F32, v, 4);
    make_view(&sv[2], OPTIMD_DTYPE_F32, NULL, 4); /* amsgrad slot missing */
    optimd_tensor slots[3] = {sv[0].view, sv[1].view, sv[2].view};
    optimd_step_args args = {
        .struct_size = sizeof args, .n_hparams = o->n_hparams, .hparams = hp,
        .step = 1, .param = &pv.view, .grad = &gv.view, .slots = slots, .n_slots = 3,
    };
    host = make_host(&call);
    CHECK(o->step(&host, &args) == OPTIMD_ERR_INVALID && call.errors_set == 1,
          "adam: missing max_exp_avg_sq accepted");
    CHECK(p[0] == 1 && p[3] == 4, "adam: refused step changed the parameter");

    hp[amsgrad] = 0.0;
    make_view(&gv, OPTIMD_DTYPE_F64, g64, 4);
    host = make_host(&call);
    CHECK(o->step(&host, &args) == OPTIMD_ERR_INVALID && call.error[0],
          "adam: f64 gradient for an f32 parameter accepted");

    make_view(&gv, OPTIMD_DTYPE_F32, g, 4);
    pv.view.dtype = 7;
    gv.view.dtype = 7;
    host = make_host(&call);
    CHECK(o->step(&host, &args) == OPTIMD_ERR_DTYPE, "adam: dtype 7 accepted");
    make_view(&pv, OPTIMD_DTYPE_F32, p, 4);
    make_view(&gv, OPTIMD_DTYPE_F32, g, 4);

    args.n_hparams = o->n_hparams - 1;
    host = make_host(&call);
    CHECK(o->step(&host, &args) == OPTIMD_ERR_INVALID, "adam: short hparams accepted");
    args.n_hparams = o->n_hparams;

    /* Sanity of the fixture: the same call with everything right works. */
    host = make_host(&call);
    CHECK(o->step(&host, &args) == OPTIMD_OK, "adam: valid step refused: %s", call.error);
    CHECK(p[0] != 1.0f, "adam: valid step left the parameter unchanged");

    check_scheduler_refusals(plugins, n_plugins);
    check_catalog_refusals(plugins, n_plugins);
}

/* The value of every hyperparameter of `defs` set to its default, then
 * `key` set to `value` for each (key, value) pair of `overrides`. */
typedef struct hp_override {
    const char *key;
    double value;
} hp_override;

static bool defaults_with(const optimd_hparam_def *defs, uint32_t n, const hp_override *overrides,
                          int n_overrides, double *out)
{
    for (uint32_t k = 0; k < n; k++) out[k] = defs[k].default_value;
    for (int i = 0; i < n_overrides; i++) {
        int k = find_hparam(defs, n, overrides[i].key);
        CHECK(k >= 0, "no hyperparameter '%s'", overrides[i].key);
        if (k < 0) return false;
        out[k] = overrides[i].value;
    }
    return true;
}

/* check_hparams of plugin `id` on its defaults with `overrides`. */
static optimd_status check_hparams_with(const loaded_plugin *plugins, int n_plugins,
                                        const char *id, const hp_override *overrides,
                                        int n_overrides, char *error, size_t error_cap)
{
    const loaded_plugin *p = find_plugin(plugins, n_plugins, id);
    CHECK(p != NULL, "%s plugin missing", id);
    if (p == NULL) return OPTIMD_ERR_INTERNAL;
    uint32_t n;
    const optimd_hparam_def *defs = plugin_hparams(p->desc, &n);
    optimd_status (*check)(const optimd_host *, const double *, uint32_t) =
        p->desc->kind == OPTIMD_KIND_OPTIMIZER ? p->desc->optimizer->check_hparams
                                               : p->desc->scheduler->check_hparams;
    double hp[CASE_MAX_HPARAMS];
    if (n > CASE_MAX_HPARAMS || !defaults_with(defs, n, overrides, n_overrides, hp))
        return OPTIMD_ERR_INTERNAL;
    if (check == NULL) return OPTIMD_OK;
    optimd_call call;
    optimd_host host = make_host(&call);
    optimd_status st = check(&host, hp, n);
    snprintf(error, error_cap, "%s", call.error);
    return st;
}

/* Every scheduler: a negative epoch is refused with a reason by lr, and a
 * fractional value of any integer hyperparameter by check_hparams. */
static void check_scheduler_refusals(const loaded_plugin *plugins, int n_plugins)
{
    for (int i = 0; i < n_plugins; i++) {
        if (plugins[i].desc->kind != OPTIMD_KIND_SCHEDULER) continue;
        const char *id = plugins[i].desc->id;
        const optimd_scheduler *s = plugins[i].desc->scheduler;
        REQUIRE(s->n_hparams <= CASE_MAX_HPARAMS, "%s: too many hparams", id);
        double shp[CASE_MAX_HPARAMS];
        for (uint32_t k = 0; k < s->n_hparams; k++) shp[k] = s->hparams[k].default_value;
        optimd_call call;
        optimd_host host = make_host(&call);
        CHECK(!s->check_hparams || s->check_hparams(&host, shp, s->n_hparams) == OPTIMD_OK,
              "%s: its own defaults refused: %s", id, call.error);
        optimd_sched_args sargs = {
            .struct_size = sizeof sargs, .n_hparams = s->n_hparams, .hparams = shp,
            .epoch = -1, .base_lr = 0.1, .last_lr = 0.1,
        };
        double lr = 0.0;
        host = make_host(&call);
        CHECK(s->lr(&host, &sargs, &lr) == OPTIMD_ERR_INVALID && call.error[0],
              "%s: epoch -1 accepted", id);
        for (uint32_t k = 0; k < s->n_hparams; k++) {
            if (s->hparams[k].type != OPTIMD_HP_INT) continue;
            const double saved = shp[k];
            shp[k] = s->hparams[k].min + 1.5;
            host = make_host(&call);
            CHECK(s->check_hparams && s->check_hparams(&host, shp, s->n_hparams) != OPTIMD_OK,
                  "%s: fractional %s accepted", id, s->hparams[k].key);
            sargs.epoch = 3;
            host = make_host(&call);
            CHECK(s->lr(&host, &sargs, &lr) == OPTIMD_ERR_INVALID,
                  "%s: lr() with fractional %s accepted", id, s->hparams[k].key);
            shp[k] = saved;
        }
    }
}

/* One step of optimizer `id` on four f32 elements with the given slots;
 * returns the status and leaves the parameter as the step left it. */
static optimd_status step_with_slots(const optimd_optimizer *o, const double *hp, float *param,
                                     optimd_tensor *slots, char *error, size_t error_cap)
{
    float grad[4] = {0.5f, -0.25f, 1.0f, 0.0f};
    host_tensor pv, gv;
    make_view(&pv, OPTIMD_DTYPE_F32, param, 4);
    make_view(&gv, OPTIMD_DTYPE_F32, grad, 4);
    optimd_step_args args = {
        .struct_size = sizeof args, .n_hparams = o->n_hparams, .hparams = hp,
        .step = 1, .param = &pv.view, .grad = &gv.view, .slots = slots,
        .n_slots = o->n_slots,
    };
    optimd_call call;
    optimd_host host = make_host(&call);
    optimd_status st = o->step(&host, &args);
    snprintf(error, error_cap, "%s", call.error);
    return st;
}

/* The cross-key rules of the catalog plugins, and slots that do not match
 * their declaration (a scalar slot of the wrong dtype or size, a missing
 * one) refused without touching the parameter. */
static void check_catalog_refusals(const loaded_plugin *plugins, int n_plugins)
{
    char error[256];
    static const struct {
        const char *id;
        hp_override overrides[2];
        int n_overrides;
        bool accepted;
        const char *reason;      /* a word the refusal must contain */
    } rules[] = {
        {"rprop", {{"step_size_min", 0.1}, {"step_size_max", 0.01}}, 2, false, "step_size_min"},
        {"rprop", {{"step_size_min", 0.01}, {"step_size_max", 0.01}}, 2, true, NULL},
        {"constant", {{"factor", 0.0}, {"total_iters", 5}}, 2, false, "factor"},
        {"constant", {{"factor", 0.0}, {"total_iters", 0}}, 2, true, NULL},
        {"linear", {{"start_factor", 0.0}, {"total_iters", 5}}, 2, false, "start_factor"},
        {"linear", {{"start_factor", 0.0}, {"total_iters", 0}}, 2, true, NULL},
        {"warmup_cosine", {{"start_factor", 0.0}, {"warmup_iters", 5}}, 2, false, "start_factor"},
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        optimd_status st = check_hparams_with(plugins, n_plugins, rules[i].id, rules[i].overrides,
                                              rules[i].n_overrides, error, sizeof error);
        if (rules[i].accepted)
            CHECK(st == OPTIMD_OK, "%s: rule %zu refused: %s", rules[i].id, i, error);
        else
            CHECK(st == OPTIMD_ERR_INVALID && strstr(error, rules[i].reason) != NULL,
                  "%s: rule %zu accepted or unclear (%d, '%s')", rules[i].id, i, st, error);
    }

    /* nadam's mu_product is a float32 scalar slot. */
    const loaded_plugin *nadam = find_plugin(plugins, n_plugins, "nadam");
    REQUIRE(nadam != NULL, "nadam plugin missing");
    const optimd_optimizer *o = nadam->desc->optimizer;
    REQUIRE(o->n_slots == 3 && strcmp(o->slots[2].key, "mu_product") == 0 &&
                o->slots[2].shape == OPTIMD_SLOT_SCALAR && o->slots[2].dtype == OPTIMD_DTYPE_F32,
            "nadam: mu_product is not slot 2, scalar, float32");
    double hp[CASE_MAX_HPARAMS];
    REQUIRE(defaults_with(o->hparams, o->n_hparams, NULL, 0, hp), "nadam defaults");
    float param[4] = {1, 2, 3, 4}, m[4] = {0}, v[4] = {0}, mu_product[2] = {0};
    double mu_product64 = 0.0;
    host_tensor views[3];
    optimd_tensor slots[3];
    make_view(&views[0], OPTIMD_DTYPE_F32, m, 4);
    make_view(&views[1], OPTIMD_DTYPE_F32, v, 4);
    make_slot_view(&views[2], &o->slots[2], OPTIMD_DTYPE_F64, &mu_product64, 1);
    for (int s = 0; s < 3; s++) slots[s] = views[s].view;
    CHECK(step_with_slots(o, hp, param, slots, error, sizeof error) == OPTIMD_ERR_INVALID &&
              error[0],
          "nadam: a float64 mu_product slot accepted");
    make_view(&views[2], OPTIMD_DTYPE_F32, mu_product, 2);
    slots[2] = views[2].view;
    CHECK(step_with_slots(o, hp, param, slots, error, sizeof error) == OPTIMD_ERR_INVALID,
          "nadam: a two-element mu_product slot accepted");
    CHECK(param[0] == 1 && param[3] == 4, "nadam: a refused step changed the parameter");
    make_slot_view(&views[2], &o->slots[2], OPTIMD_DTYPE_F32, mu_product, 1);
    slots[2] = views[2].view;
    CHECK(step_with_slots(o, hp, param, slots, error, sizeof error) == OPTIMD_OK,
          "nadam: a valid step refused: %s", error);
    CHECK(param[0] != 1 && mu_product[0] > 0.0f && mu_product[0] < 1.0f && mu_product[1] == 0,
          "nadam: the valid step did not update the parameter and mu_product");

    /* asgd refuses a missing eta slot, without touching anything. */
    const loaded_plugin *asgd = find_plugin(plugins, n_plugins, "asgd");
    REQUIRE(asgd != NULL, "asgd plugin missing");
    o = asgd->desc->optimizer;
    REQUIRE(o->n_slots == 3, "asgd: expected 3 slots");
    REQUIRE(defaults_with(o->hparams, o->n_hparams, NULL, 0, hp), "asgd defaults");
    float mu = 0.0f, ax[4] = {0};
    for (uint32_t s = 0; s < 3; s++) {
        void *data = strcmp(o->slots[s].key, "ax") == 0 ? (void *)ax
                     : strcmp(o->slots[s].key, "mu") == 0 ? (void *)&mu
                                                          : NULL; /* eta missing */
        make_slot_view(&views[s], &o->slots[s], OPTIMD_DTYPE_F32, data,
                       slot_numel(&o->slots[s], 4));
        slots[s] = views[s].view;
    }
    param[0] = 1;
    CHECK(step_with_slots(o, hp, param, slots, error, sizeof error) == OPTIMD_ERR_INVALID &&
              strstr(error, "eta") != NULL,
          "asgd: a missing eta slot accepted or unclear ('%s')", error);
    CHECK(param[0] == 1 && mu == 0.0f && ax[0] == 0.0f, "asgd: a refused step wrote something");
}

/* ------------------------------------------- published test vectors -- */

/*
 * The scheduler test vectors of the optimizer reference (§4, measured with
 * torch 1.13.1, base lr 0.1, the value after construction then after each
 * step, printed to about four digits): a check that does not depend on
 * the torch installed here. The torch cases above compare bit for bit.
 */
static void check_reference_vectors(const loaded_plugin *plugins, int n_plugins)
{
    static const struct {
        const char *id;
        hp_override hparams[2];
        int n_hparams;
        int n_values;
        double values[12];
    } vectors[] = {
        {"linear", {{0}}, 0, 7, {.03333, .04667, .06, .07333, .08667, .1, .1}},
        {"constant", {{0}}, 0, 7, {.03333, .03333, .03333, .03333, .03333, .1, .1}},
        {"polynomial", {{"total_iters", 4}, {"power", 2}}, 2, 6, {.1, .05625, .025, .00625, 0, 0}},
        {"cosine_warm_restarts", {{"T_0", 3}, {"T_mult", 2}}, 2, 11,
         {.1, .075, .025, .1, .0933, .075, .05, .025, .0067, .1, .0983}},
    };
    for (size_t v = 0; v < sizeof vectors / sizeof vectors[0]; v++) {
        const loaded_plugin *sp = find_plugin(plugins, n_plugins, vectors[v].id);
        CHECK(sp != NULL, "%s plugin missing", vectors[v].id);
        if (sp == NULL) continue;
        static parity_case c;
        memset(&c, 0, sizeof c);
        snprintf(c.name, sizeof c.name, "reference_%s", vectors[v].id);
        c.steps = vectors[v].n_values - 1;
        c.n_sched_hparams = vectors[v].n_hparams;
        for (int k = 0; k < vectors[v].n_hparams; k++) {
            snprintf(c.sched_hparams[k].key, sizeof c.sched_hparams[k].key, "%s",
                     vectors[v].hparams[k].key);
            c.sched_hparams[k].value = vectors[v].hparams[k].value;
        }
        double lrs[CASE_MAX_STEPS + 1];
        if (!run_schedule(sp, &c, 0.1, lrs)) continue;
        for (int e = 0; e < vectors[v].n_values; e++) {
            const double want = vectors[v].values[e];
            /* Half a unit of the last printed digit. */
            CHECK(fabs(lrs[e] - want) <= 5e-5, "%s: epoch %d: lr %.9g, reference %.5g",
                  c.name, e, lrs[e], want);
        }
    }
}

/* ---------------------------------------------------------------- main -- */

int main(int argc, char **argv)
{
    const char *plugin_dir = getenv("OPTIMD_PLUGIN_DIR");
    if (!plugin_dir) {
        fprintf(stderr, "parity_plugins: set OPTIMD_PLUGIN_DIR\n");
        return 1;
    }
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    /* The AVX2-only copies of the plugins (plugins/CMakeLists.txt) would
     * die of SIGILL on a CPU without it. */
    const char *isa = getenv("OPTIMD_PLUGIN_ISA");
    __builtin_cpu_init();
    if (isa && strcmp(isa, "v3") == 0 && !__builtin_cpu_supports("x86-64-v3")) {
        printf("parity_plugins: this CPU cannot run x86-64-v3 code; skipped\n");
        return 77;
    }
#endif
    static loaded_plugin plugins[MAX_PLUGINS];
    int n_plugins = load_plugins(plugin_dir, plugins, MAX_PLUGINS);
    if (n_plugins < 0) return 1;
    /* --descriptors-only: just the ABI checks, on any plugin directory
     * (abi_examples.sh runs it on the examples of docs/abi.md). */
    bool descriptors_only = argc > 1 && strcmp(argv[1], "--descriptors-only") == 0;
    CHECK(n_plugins > 0, "no plugins in %s", plugin_dir);
    static const char *const shipped[] = {
        "sgd", "adam", "adamw", "adagrad", "rmsprop", "adamax", "nadam", "radam", "adadelta",
        "asgd", "rprop", "step", "cosine", "multistep", "constant", "linear", "exponential",
        "polynomial", "cosine_warm_restarts", "warmup_cosine", "lion", "adan", "ademamix"};
    for (size_t i = 0; !descriptors_only && i < sizeof shipped / sizeof shipped[0]; i++)
        CHECK(find_plugin(plugins, n_plugins, shipped[i]) != NULL, "plugin %s not found in %s",
              shipped[i], plugin_dir);
    for (int i = 0; i < n_plugins; i++) check_descriptor(&plugins[i]);
    for (int i = 0; i < n_plugins; i++)
        for (int j = 0; j < i; j++)
            CHECK(strcmp(plugins[i].desc->id, plugins[j].desc->id) != 0, "id %s twice",
                  plugins[i].desc->id);
    if (check_failure_count || descriptors_only) {
        printf("parity_plugins: %d plugin descriptors checked\n", n_plugins);
        for (int i = 0; i < n_plugins; i++) dlclose(plugins[i].handle);
        return check_report("parity_plugins");
    }
    check_refusals(plugins, n_plugins);
    check_reference_vectors(plugins, n_plugins);

    char data_dir[512];
    bool generated = argc < 2;
    if (generated) {
        int rc = parity_generate("unit", data_dir, sizeof data_dir);
        if (rc != 0) return rc == 77 ? 77 : 1;
    } else {
        snprintf(data_dir, sizeof data_dir, "%s", argv[1]);
    }
    parity_manifest m;
    if (parity_manifest_load(data_dir, &m) != 0) {
        if (generated) parity_remove_dir(data_dir);
        return 1;
    }
    check_torch_defaults(plugins, n_plugins, &m);

    uint64_t max_ulp = 0;
    int64_t compared = 0;
    int parallel_calls = 0;
    for (int i = 0; i < m.n_cases; i++) {
        const parity_case *c = &m.cases[i];
        case_result r = {0};
        int before = check_failure_count;
        if (c->optimizer[0])
            run_optimizer_case(plugins, n_plugins, &m, c, &r);
        else
            run_scheduler_case(plugins, n_plugins, &m, c, &r);
        printf("%-28s %s  %lld values, max %llu ulp\n", c->name,
               check_failure_count == before ? "ok  " : "FAIL", (long long)r.elements_compared,
               (unsigned long long)r.max_ulp);
        if (r.max_ulp > max_ulp) max_ulp = r.max_ulp;
        compared += r.elements_compared;
        parallel_calls += r.parallel_calls;
    }
    /* The *_parallel cases are larger than the plugins' serial threshold. */
    CHECK(parallel_calls > 0, "no plugin used parallel_for on a 70001-element tensor");
    printf("parity_plugins: %d plugins, %d cases, %lld values compared, max %llu ulp, "
           "%d parallel_for calls\n",
           n_plugins, m.n_cases, (long long)compared, (unsigned long long)max_ulp,
           parallel_calls);
    parity_manifest_free(&m);
    if (generated) parity_remove_dir(data_dir);
    for (int i = 0; i < n_plugins; i++) dlclose(plugins[i].handle);
    return check_report("parity_plugins");
}
