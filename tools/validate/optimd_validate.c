/*
 * optimd-validate: the conformance checker a plugin author runs before
 * shipping a plugin (docs/writing-a-plugin.md, docs/abi.md).
 *
 *   optimd-validate [-q] PLUGIN.so...
 *
 * Prints one PASS or FAIL line per check, each FAIL saying what to fix, and
 * exits 0 when every check of every plugin passed, 1 when one failed, 2 on a
 * usage error.
 *
 * The dynamic symbol table is read from the file itself, without running any
 * plugin code. Everything that runs plugin code runs in a child process, so a
 * plugin that crashes, aborts or hangs is reported as a failure (with the
 * check it was in) instead of taking the validator down.
 */
#include <optimd/plugin.h>

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ABI 1.1 slot shapes, for a header that predates them. */
#ifndef OPTIMD_SLOT_ROWS
#define OPTIMD_SLOT_ROWS 3
#endif
#ifndef OPTIMD_SLOT_COLS
#define OPTIMD_SLOT_COLS 4
#endif

/* Sizes of ABI 1.0's growable structs on LP64 (tests/unit/test_abi_layout.c
 * pins the prefixes): a plugin's struct_size below these is refused. */
#define DESC_SIZE_1_0 56u
#define OPTIMIZER_SIZE_1_0 48u
#define SCHEDULER_SIZE_1_0 32u
/* A struct_size beyond this is no struct of ours but garbage. */
#define STRUCT_SIZE_SANE 4096u

/* A plugin that has not finished every check by then is reported as hung. */
#define CHILD_TIME_LIMIT_S 120

static bool quiet;

/* ------------------------------------------------------------ reporting -- */

/* Results travel from the child to the parent over a pipe, one line each:
 * "P <check>" (the check now running, for crash reports), "R PASS|FAIL
 * <check>\t<text>", "L <text>" (a log line of the plugin). */
static int report_fd = -1;
static char current_check[128] = "loading";

static void child_line(const char *kind, const char *check, const char *fmt, va_list ap)
{
    char text[1024];
    vsnprintf(text, sizeof text, fmt, ap);
    for (char *c = text; *c; c++)
        if (*c == '\n' || *c == '\t') *c = ' ';
    dprintf(report_fd, "%s %s\t%s\n", kind, check, text);
}

static void phase(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(current_check, sizeof current_check, fmt, ap);
    va_end(ap);
    dprintf(report_fd, "P %s\t-\n", current_check);
}

static int n_fail_in_child;

static void pass(const char *check, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    child_line("R PASS", check, fmt, ap);
    va_end(ap);
}

static void fail(const char *check, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    child_line("R FAIL", check, fmt, ap);
    va_end(ap);
    n_fail_in_child++;
}

/* Parent side: counts and prints. */
typedef struct tally {
    int passed, failed;
} tally;

static void print_result(tally *t, bool ok, const char *check, const char *text)
{
    if (ok) {
        t->passed++;
        if (!quiet) printf("  PASS  %s: %s\n", check, text);
    } else {
        t->failed++;
        printf("  FAIL  %s: %s\n", check, text);
    }
    fflush(stdout);
}

/* ------------------------------------------------------- ELF, no dlopen -- */

static bool read_at(int fd, uint64_t off, void *buf, size_t n)
{
    ssize_t got = pread(fd, buf, n, (off_t)off);
    return got >= 0 && (size_t)got == n;
}

static uint16_t own_machine(void)
{
    Elf64_Ehdr eh;
    int fd = open("/proc/self/exe", O_RDONLY);
    bool ok = fd >= 0 && read_at(fd, 0, &eh, sizeof eh);
    if (fd >= 0) close(fd);
    return ok ? eh.e_machine : EM_NONE;
}

/* Checks that the file is a shared object for this machine and that its
 * dynamic symbol table defines exactly one global symbol, optimd_plugin, a
 * data object. */
static void check_symbols(const char *path, tally *t)
{
    char msg[2048];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(msg, sizeof msg, "cannot open %s: %s", path, strerror(errno));
        print_result(t, false, "elf", msg);
        return;
    }
    Elf64_Ehdr eh;
    if (!read_at(fd, 0, &eh, sizeof eh) || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) {
        print_result(t, false, "elf", "not an ELF file: build the plugin as a shared object (-shared)");
        goto out;
    }
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
        eh.e_machine != own_machine()) {
        print_result(t, false, "elf",
                     "not a 64-bit little-endian object for this machine: build it with the "
                     "compiler that targets the daemon's machine");
        goto out;
    }
    if (eh.e_type != ET_DYN) {
        print_result(t, false, "elf",
                     "not a shared object (ELF type is not ET_DYN): link with -shared, or use "
                     "optimd_add_plugin() from the optimd-sdk CMake package");
        goto out;
    }
    print_result(t, true, "elf", "64-bit shared object for this machine");

    if (eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shnum == 0) {
        print_result(t, false, "symbols",
                     "the file has no section headers, so its dynamic symbols cannot be listed; "
                     "do not strip them with sstrip");
        goto out;
    }
    Elf64_Shdr *sh = calloc(eh.e_shnum, sizeof *sh);
    if (!sh || !read_at(fd, eh.e_shoff, sh, (size_t)eh.e_shnum * sizeof *sh)) {
        print_result(t, false, "symbols", "truncated section header table");
        free(sh);
        goto out;
    }
    int dynsym = -1;
    for (int i = 0; i < eh.e_shnum; i++)
        if (sh[i].sh_type == SHT_DYNSYM) dynsym = i;
    if (dynsym < 0 || sh[dynsym].sh_link >= eh.e_shnum ||
        sh[dynsym].sh_entsize != sizeof(Elf64_Sym)) {
        print_result(t, false, "symbols",
                     "no dynamic symbol table (.dynsym): the plugin must export optimd_plugin");
        free(sh);
        goto out;
    }
    const Elf64_Shdr *sym_sh = &sh[dynsym], *str_sh = &sh[sym_sh->sh_link];
    size_t n_syms = sym_sh->sh_size / sizeof(Elf64_Sym);
    Elf64_Sym *syms = malloc(sym_sh->sh_size ? sym_sh->sh_size : 1);
    char *strs = malloc(str_sh->sh_size + 1);
    if (!syms || !strs || !read_at(fd, sym_sh->sh_offset, syms, sym_sh->sh_size) ||
        !read_at(fd, str_sh->sh_offset, strs, str_sh->sh_size)) {
        print_result(t, false, "symbols", "truncated dynamic symbol table");
        goto free_all;
    }
    strs[str_sh->sh_size] = '\0';

    /* Exported = defined, global or weak, and visible to dlsym. */
    char others[1024] = "";
    int n_exported = 0, n_others = 0;
    bool found = false, is_object = false;
    for (size_t i = 1; i < n_syms; i++) {
        const Elf64_Sym *s = &syms[i];
        int bind = ELF64_ST_BIND(s->st_info), vis = ELF64_ST_VISIBILITY(s->st_other);
        if (s->st_shndx == SHN_UNDEF) continue;
        if (bind != STB_GLOBAL && bind != STB_WEAK && bind != STB_GNU_UNIQUE) continue;
        if (vis == STV_HIDDEN || vis == STV_INTERNAL) continue;
        const char *name = s->st_name < str_sh->sh_size ? strs + s->st_name : "?";
        /* AddressSanitizer's ODR indicators: instrumentation, not API. */
        if (strncmp(name, "__odr_asan", 10) == 0) continue;
        n_exported++;
        if (strcmp(name, "optimd_plugin") == 0) {
            found = true;
            is_object = ELF64_ST_TYPE(s->st_info) == STT_OBJECT;
        } else {
            if (n_others < 8) {
                size_t len = strlen(others);
                snprintf(others + len, sizeof others - len, "%s%s", n_others ? ", " : "", name);
            }
            n_others++;
        }
    }
    if (found && n_others == 0 && is_object) {
        print_result(t, true, "symbols", "exports exactly one symbol, optimd_plugin");
    } else if (!found) {
        snprintf(msg, sizeof msg,
                 "the plugin does not export optimd_plugin (it exports %d symbol(s)%s%s): define "
                 "`OPTIMD_EXPORT const optimd_plugin_desc optimd_plugin = {...};` at file scope",
                 n_exported, n_others ? ": " : "", others);
        print_result(t, false, "symbols", msg);
    } else if (!is_object) {
        print_result(t, false, "symbols",
                     "optimd_plugin is not a data object: it must be the descriptor variable "
                     "`const optimd_plugin_desc optimd_plugin`, not a function");
    } else {
        snprintf(msg, sizeof msg,
                 "exports %d symbol(s) besides optimd_plugin (%s%s): compile with "
                 "-fvisibility=hidden and link with a version script "
                 "`{ global: optimd_plugin; local: *; };` (optimd_add_plugin() does both)",
                 n_others, others, n_others > 8 ? ", ..." : "");
        print_result(t, false, "symbols", msg);
    }
free_all:
    free(syms);
    free(strs);
    free(sh);
out:
    close(fd);
}

/* ----------------------------------------------- the validator's host -- */

#define MAX_SCRATCH 8

struct optimd_call {
    char error[256];
    void *scratch[MAX_SCRATCH];
    int n_scratch;
    /* 0: parallel_for runs [0, n) as one chunk; else chunks of `grain`
     * elements, last chunk first, to show that the result does not depend
     * on how the host cuts the range. */
    int chunked;
};

static void host_log(optimd_call *call, int32_t level, const char *msg)
{
    (void)call;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    dprintf(report_fd, "L %s\t%s\n", level >= 0 && level <= 3 ? names[level] : "?",
            msg ? msg : "(null)");
}

static void host_set_error(optimd_call *call, const char *msg)
{
    snprintf(call->error, sizeof call->error, "%s", msg ? msg : "");
}

static void *host_scratch(optimd_call *call, size_t bytes)
{
    if (call->n_scratch == MAX_SCRATCH || bytes == 0) return NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded < bytes) return NULL;
    void *p = aligned_alloc(64, rounded);
    if (p) {
        /* Scratch memory is uninitialized: a plugin must not rely on zeros. */
        memset(p, 0xA5, rounded);
        call->scratch[call->n_scratch++] = p;
    }
    return p;
}

static optimd_status host_parallel_for(optimd_call *call, int64_t n, int64_t grain,
                                       optimd_range_fn fn, void *user)
{
    if (!fn) return OPTIMD_ERR_INVALID;
    if (n <= 0) return OPTIMD_OK;
    if (!call->chunked) {
        fn(user, 0, n);
        return OPTIMD_OK;
    }
    int64_t chunk = grain < 16 ? 16 : (grain + 15) / 16 * 16;
    for (int64_t begin = (n - 1) / chunk * chunk; begin >= 0; begin -= chunk)
        fn(user, begin, begin + chunk < n ? begin + chunk : n);
    return OPTIMD_OK;
}

typedef struct host_ctx {
    optimd_call call;
    optimd_host table;
} host_ctx;

static void host_begin(host_ctx *h, int chunked)
{
    memset(h, 0, sizeof *h);
    h->call.chunked = chunked;
    h->table.struct_size = sizeof h->table;
    h->table.abi_major = OPTIMD_ABI_MAJOR;
    h->table.abi_minor = OPTIMD_ABI_MINOR;
    h->table.call = &h->call;
    h->table.log = host_log;
    h->table.set_error = host_set_error;
    h->table.scratch = host_scratch;
    h->table.parallel_for = host_parallel_for;
}

static void host_end(host_ctx *h)
{
    for (int i = 0; i < h->call.n_scratch; i++) free(h->call.scratch[i]);
    h->call.n_scratch = 0;
}

static const char *error_text(const host_ctx *h)
{
    return h->call.error[0] ? h->call.error : "(the plugin gave no reason: call host->set_error)";
}

/* ----------------------------------------------------- schema checks -- */

static bool valid_name(const char *s, bool is_id)
{
    if (!s || !*s || strlen(s) > 64) return false;
    for (const char *c = s; *c; c++) {
        bool ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' ||
                  (is_id ? (*c == '.' || *c == '-') : (*c >= 'A' && *c <= 'Z'));
        if (!ok) return false;
    }
    return true;
}

static bool in_range(const optimd_hparam_def *d, double v)
{
    if (!isfinite(v)) return false;
    if ((d->flags & OPTIMD_HP_MIN_EXCLUSIVE) ? v <= d->min : v < d->min) return false;
    if ((d->flags & OPTIMD_HP_MAX_EXCLUSIVE) ? v >= d->max : v > d->max) return false;
    if (d->type == OPTIMD_HP_INT && v != floor(v)) return false;
    if (d->type == OPTIMD_HP_BOOL && v != 0.0 && v != 1.0) return false;
    return true;
}

/* Returns true when every declaration is sound; reports each problem. */
static bool check_hparam_defs(const optimd_hparam_def *defs, uint32_t n, bool optimizer)
{
    bool ok = true;
    if (n && !defs) {
        fail("hparams", "n_hparams is %u but hparams is NULL: point it at your static array", n);
        return false;
    }
    if (n > 256) {
        fail("hparams", "n_hparams is %u: that is no real count; use the array's length", n);
        return false;
    }
    int lr = -1;
    for (uint32_t i = 0; i < n; i++) {
        const optimd_hparam_def *d = &defs[i];
        if (d->struct_size != sizeof *d) {
            fail("hparams",
                 "hparam %u has struct_size %u, expected %zu: set .struct_size = "
                 "sizeof(optimd_hparam_def) in every entry",
                 i, d->struct_size, sizeof *d);
            ok = false;
            continue;
        }
        if (!valid_name(d->key, false)) {
            fail("hparams", "hparam %u has key '%s': keys are 1 to 64 characters of [A-Za-z0-9_]",
                 i, d->key ? d->key : "(null)");
            ok = false;
            continue;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (defs[j].key && strcmp(defs[j].key, d->key) == 0) {
                fail("hparams", "key '%s' is declared twice (entries %u and %u): keys must be unique",
                     d->key, j, i);
                ok = false;
            }
        }
        if (d->type < OPTIMD_HP_FLOAT || d->type > OPTIMD_HP_BOOL) {
            fail("hparams", "'%s' has type %u: use OPTIMD_HP_FLOAT, OPTIMD_HP_INT or OPTIMD_HP_BOOL",
                 d->key, d->type);
            ok = false;
            continue;
        }
        if (d->flags & ~(uint32_t)(OPTIMD_HP_REQUIRED | OPTIMD_HP_MUTABLE |
                                   OPTIMD_HP_MIN_EXCLUSIVE | OPTIMD_HP_MAX_EXCLUSIVE)) {
            fail("hparams", "'%s' has unknown flag bits 0x%x: use only OPTIMD_HP_* flags", d->key,
                 d->flags);
            ok = false;
        }
        if (!isfinite(d->min) || !isfinite(d->max) || !isfinite(d->default_value)) {
            fail("hparams",
                 "'%s' has a non-finite min, max or default: use finite bounds (1e6 where the "
                 "math has none)",
                 d->key);
            ok = false;
            continue;
        }
        if (d->min > d->max) {
            fail("hparams", "'%s' has min %g > max %g: swap them", d->key, d->min, d->max);
            ok = false;
            continue;
        }
        if (d->type == OPTIMD_HP_BOOL && (d->min != 0.0 || d->max != 1.0)) {
            fail("hparams", "bool '%s' has range [%g, %g]: bools use min 0 and max 1", d->key,
                 d->min, d->max);
            ok = false;
        }
        if (!(d->flags & OPTIMD_HP_REQUIRED) && !in_range(d, d->default_value)) {
            fail("hparams",
                 "'%s' default %g is outside its range %s%g, %g%s%s: change default_value or "
                 "the bounds (or flag it OPTIMD_HP_REQUIRED)",
                 d->key, d->default_value, (d->flags & OPTIMD_HP_MIN_EXCLUSIVE) ? "(" : "[",
                 d->min, d->max, (d->flags & OPTIMD_HP_MAX_EXCLUSIVE) ? ")" : "]",
                 d->type == OPTIMD_HP_INT ? " (or not an integer)" : "");
            ok = false;
        }
        if (!d->doc || !*d->doc) {
            fail("hparams", "'%s' has no doc: give it one sentence for `plugins` listings", d->key);
            ok = false;
        }
        if (strcmp(d->key, "lr") == 0) lr = (int)i;
    }
    if (optimizer && lr < 0) {
        fail("hparams", "an optimizer must declare a float hyperparameter with key 'lr'");
        ok = false;
    } else if (optimizer && defs[lr].type != OPTIMD_HP_FLOAT) {
        fail("hparams", "'lr' must have type OPTIMD_HP_FLOAT");
        ok = false;
    }
    if (ok) pass("hparams", "%u declaration(s): keys, ranges and defaults are sound", n);
    return ok;
}

/* A value for each hyperparameter: the default, or for a REQUIRED one a
 * value inside its range (0.01 or 1 when allowed, else the middle). */
static void pick_values(const optimd_hparam_def *defs, uint32_t n, double *hp)
{
    for (uint32_t i = 0; i < n; i++) {
        const optimd_hparam_def *d = &defs[i];
        if (!(d->flags & OPTIMD_HP_REQUIRED)) {
            hp[i] = d->default_value;
            continue;
        }
        double typical = d->type == OPTIMD_HP_FLOAT ? 0.01 : d->type == OPTIMD_HP_INT ? 1.0 : 0.0;
        if (in_range(d, typical)) {
            hp[i] = typical;
        } else {
            double mid = d->min + (d->max - d->min) / 2;
            hp[i] = d->type == OPTIMD_HP_FLOAT ? mid : floor(mid);
            if (!in_range(d, hp[i])) hp[i] = ceil(mid);
        }
    }
}

static int hparam_index(const optimd_hparam_def *defs, uint32_t n, const char *key)
{
    for (uint32_t i = 0; i < n; i++)
        if (defs[i].key && strcmp(defs[i].key, key) == 0) return (int)i;
    return -1;
}

static bool check_slot_defs(const optimd_plugin_desc *d, const optimd_optimizer *o)
{
    bool ok = true;
    uint32_t max_shape = d->abi_minor >= 1 ? OPTIMD_SLOT_COLS : OPTIMD_SLOT_SCALAR;
    if (o->n_slots && !o->slots) {
        fail("slots", "n_slots is %u but slots is NULL: point it at your static array", o->n_slots);
        return false;
    }
    if (o->n_slots > 64) {
        fail("slots", "n_slots is %u: that is no real count; use the array's length", o->n_slots);
        return false;
    }
    for (uint32_t i = 0; i < o->n_slots; i++) {
        const optimd_slot_def *s = &o->slots[i];
        if (s->struct_size != sizeof *s) {
            fail("slots", "slot %u has struct_size %u, expected %zu: set .struct_size = "
                 "sizeof(optimd_slot_def)", i, s->struct_size, sizeof *s);
            ok = false;
            continue;
        }
        if (!valid_name(s->key, false)) {
            fail("slots", "slot %u has key '%s': keys are 1 to 64 characters of [A-Za-z0-9_]", i,
                 s->key ? s->key : "(null)");
            ok = false;
            continue;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (o->slots[j].key && strcmp(o->slots[j].key, s->key) == 0) {
                fail("slots", "slot key '%s' is declared twice: keys must be unique", s->key);
                ok = false;
            }
        }
        if (s->shape < OPTIMD_SLOT_LIKE_PARAM || s->shape > max_shape) {
            fail("slots", "slot '%s' has shape %u: ABI %u.%u allows 1 to %u (ROWS and COLS need "
                 "ABI 1.1 headers)", s->key, s->shape, d->abi_major, d->abi_minor, max_shape);
            ok = false;
        }
        if (s->dtype > OPTIMD_DTYPE_F64) {
            fail("slots", "slot '%s' has dtype %u: use 0 (the parameter's), OPTIMD_DTYPE_F32 or "
                 "OPTIMD_DTYPE_F64", s->key, s->dtype);
            ok = false;
        }
        if (s->enabled_by) {
            int h = hparam_index(o->hparams, o->n_hparams, s->enabled_by);
            if (h < 0 || o->hparams[h].type != OPTIMD_HP_BOOL) {
                fail("slots", "slot '%s' is enabled_by '%s', which is no bool hyperparameter of "
                     "this plugin: name a bool hparam or use NULL", s->key, s->enabled_by);
                ok = false;
            }
        }
    }
    if (ok) pass("slots", "%u slot declaration(s) are sound", o->n_slots);
    return ok;
}

/* ----------------------------------------------------- running steps -- */

static uint64_t rng_state;

static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static size_t dtype_size(uint32_t dtype)
{
    return dtype == OPTIMD_DTYPE_F64 ? 8 : 4;
}

static const char *dtype_name(uint32_t dtype)
{
    return dtype == OPTIMD_DTYPE_F64 ? "f64" : "f32";
}

#define MAX_DIMS 8

/* A tensor with its own memory, 64-byte aligned (or `offset` bytes past
 * that, for gradients). */
typedef struct buf {
    optimd_tensor t;
    int64_t shape[MAX_DIMS], strides[MAX_DIMS];
    void *block;
    size_t bytes;
} buf;

static void buf_init(buf *b, uint32_t dtype, uint32_t ndim, const int64_t *shape, size_t offset)
{
    memset(b, 0, sizeof *b);
    b->t.struct_size = sizeof b->t;
    b->t.dtype = dtype;
    b->t.ndim = ndim;
    int64_t numel = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        b->shape[i] = shape[i];
        numel *= shape[i];
    }
    for (int i = (int)ndim - 1, stride = 1; i >= 0; i--) {
        b->strides[i] = stride;
        stride *= (int)shape[i];
    }
    b->t.numel = numel;
    b->t.shape = ndim ? b->shape : NULL;
    b->t.strides = ndim ? b->strides : NULL;
    b->bytes = (size_t)numel * dtype_size(dtype);
    size_t total = (b->bytes + offset + 63) / 64 * 64;
    b->block = aligned_alloc(64, total ? total : 64);
    if (!b->block) {
        perror("optimd-validate");
        _exit(3);
    }
    memset(b->block, 0, total ? total : 64);
    b->t.data = (char *)b->block + offset;
}

static void buf_free(buf *b)
{
    free(b->block);
    b->block = NULL;
}

static void buf_fill(buf *b)
{
    for (int64_t i = 0; i < b->t.numel; i++) {
        double v = uniform();
        if (b->t.dtype == OPTIMD_DTYPE_F64)
            ((double *)b->t.data)[i] = v;
        else
            ((float *)b->t.data)[i] = (float)v;
    }
}

static double buf_get(const buf *b, int64_t i)
{
    return b->t.dtype == OPTIMD_DTYPE_F64 ? ((const double *)b->t.data)[i]
                                          : ((const float *)b->t.data)[i];
}

static bool buf_finite(const buf *b)
{
    for (int64_t i = 0; i < b->t.numel; i++)
        if (!isfinite(buf_get(b, i))) return false;
    return true;
}

/* Shape of a slot of the given kind for a parameter (docs/abi.md §4). */
static uint32_t slot_shape(uint32_t kind, uint32_t ndim, const int64_t *p, int64_t *out)
{
    switch (kind) {
    case OPTIMD_SLOT_SCALAR:
        return 0;
    case OPTIMD_SLOT_ROWS:
        if (ndim < 2) break;
        memcpy(out, p, (ndim - 1) * sizeof *out);
        return ndim - 1;
    case OPTIMD_SLOT_COLS:
        if (ndim < 2) return 0;
        memcpy(out, p, (ndim - 2) * sizeof *out);
        out[ndim - 2] = p[ndim - 1];
        return ndim - 1;
    default:
        break;
    }
    memcpy(out, p, ndim * sizeof *out);
    return ndim;
}

/* One parameter's complete optimizer state: the parameter and its slots. */
typedef struct pstate {
    buf param;
    buf *slots;
    optimd_tensor *slot_views;
    uint32_t n_slots;
    uint64_t step;
} pstate;

static void pstate_init(pstate *s, const optimd_optimizer *o, const double *hp, uint32_t dtype,
                        uint32_t ndim, const int64_t *shape)
{
    memset(s, 0, sizeof *s);
    buf_init(&s->param, dtype, ndim, shape, 0);
    s->n_slots = o->n_slots;
    s->slots = calloc(o->n_slots ? o->n_slots : 1, sizeof *s->slots);
    s->slot_views = calloc(o->n_slots ? o->n_slots : 1, sizeof *s->slot_views);
    for (uint32_t i = 0; i < o->n_slots; i++) {
        const optimd_slot_def *sd = &o->slots[i];
        int64_t sshape[MAX_DIMS];
        uint32_t sndim = slot_shape(sd->shape, ndim, shape, sshape);
        buf_init(&s->slots[i], sd->dtype ? sd->dtype : dtype, sndim, sshape, 0);
        s->slot_views[i] = s->slots[i].t;
        if (sd->enabled_by) {
            int h = hparam_index(o->hparams, o->n_hparams, sd->enabled_by);
            if (h >= 0 && hp[h] == 0.0) s->slot_views[i].data = NULL;
        }
    }
}

/* A copy at new addresses: what a host restoring saved state would hand
 * the plugin. */
static void pstate_copy(pstate *dst, const pstate *src, const optimd_optimizer *o, const double *hp)
{
    pstate_init(dst, o, hp, src->param.t.dtype, src->param.t.ndim, src->param.shape);
    memcpy(dst->param.t.data, src->param.t.data, src->param.bytes);
    for (uint32_t i = 0; i < src->n_slots; i++)
        memcpy(dst->slots[i].t.data, src->slots[i].t.data, src->slots[i].bytes);
    dst->step = src->step;
}

static void pstate_free(pstate *s)
{
    buf_free(&s->param);
    for (uint32_t i = 0; i < s->n_slots; i++) buf_free(&s->slots[i]);
    free(s->slots);
    free(s->slot_views);
}

static bool pstate_equal(const pstate *a, const pstate *b)
{
    if (memcmp(a->param.t.data, b->param.t.data, a->param.bytes) != 0) return false;
    for (uint32_t i = 0; i < a->n_slots; i++)
        if (a->slot_views[i].data && memcmp(a->slots[i].t.data, b->slots[i].t.data, a->slots[i].bytes))
            return false;
    return true;
}

/* Runs one step; returns its status. `why` gets the plugin's error text. */
static optimd_status run_step(const optimd_optimizer *o, const double *hp, pstate *s,
                              const buf *grad, int chunked, char *why, size_t why_len)
{
    host_ctx h;
    host_begin(&h, chunked);
    optimd_step_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.n_hparams = o->n_hparams;
    a.hparams = hp;
    a.step = ++s->step;
    a.param = &s->param.t;
    a.grad = &grad->t;
    a.slots = s->slot_views;
    a.n_slots = s->n_slots;
    optimd_status st = o->step(&h.table, &a);
    if (st != OPTIMD_OK && why) snprintf(why, why_len, "%s", error_text(&h));
    host_end(&h);
    return st;
}

typedef struct shape_case {
    uint32_t ndim;
    int64_t shape[3];
} shape_case;

/* A vector, a matrix (ROWS/COLS slots differ from the parameter there), a
 * 0-d scalar, and one large enough for the shipped plugins' parallel_for
 * threshold (65,536), so that chunking is exercised. */
static const shape_case shapes[] = {
    {1, {67}}, {2, {6, 11}}, {3, {2, 3, 5}}, {0, {0}}, {1, {70001}},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])
#define N_STEPS 3

static void describe_shape(const shape_case *c, char *out, size_t len)
{
    int n = snprintf(out, len, "[");
    for (uint32_t i = 0; i < c->ndim; i++)
        n += snprintf(out + n, len - (size_t)n, "%s%lld", i ? "," : "", (long long)c->shape[i]);
    snprintf(out + n, len - (size_t)n, "]");
}

/* Runs N_STEPS steps from zero state on seeded random data; fills `out`
 * (caller frees). Returns false after reporting a failure. */
static bool run_sequence(const char *check, const optimd_optimizer *o, const double *hp,
                         uint32_t dtype, const shape_case *c, int chunked, uint64_t seed,
                         pstate *out, bool check_progress)
{
    char sh[64], why[300];
    describe_shape(c, sh, sizeof sh);
    rng_state = seed;
    pstate_init(out, o, hp, dtype, c->ndim, c->shape);
    buf_fill(&out->param);
    buf grad, grad_copy;
    buf_init(&grad, dtype, c->ndim, c->shape, dtype_size(dtype));
    buf_init(&grad_copy, dtype, c->ndim, c->shape, 0);
    buf before;
    buf_init(&before, dtype, c->ndim, c->shape, 0);
    bool ok = true;
    for (int k = 0; k < N_STEPS && ok; k++) {
        buf_fill(&grad);
        memcpy(grad_copy.t.data, grad.t.data, grad.bytes);
        memcpy(before.t.data, out->param.t.data, out->param.bytes);
        optimd_status st = run_step(o, hp, out, &grad, chunked, why, sizeof why);
        if (st != OPTIMD_OK) {
            fail(check, "step %d on %s %s data returned %d: %s", k + 1, dtype_name(dtype), sh, st, why);
            ok = false;
        } else if (memcmp(grad.t.data, grad_copy.t.data, grad.bytes) != 0) {
            fail(check, "step %d on %s %s data wrote to the gradient: the gradient is read-only",
                 k + 1, dtype_name(dtype), sh);
            ok = false;
        } else if (!buf_finite(&out->param)) {
            fail(check, "step %d on %s %s data left a non-finite parameter value with finite "
                 "inputs and the default hyperparameters", k + 1, dtype_name(dtype), sh);
            ok = false;
        } else {
            for (uint32_t i = 0; i < out->n_slots && ok; i++) {
                if (out->slot_views[i].data && !buf_finite(&out->slots[i])) {
                    fail(check, "step %d on %s %s data left a non-finite value in slot '%s'",
                         k + 1, dtype_name(dtype), sh, o->slots[i].key);
                    ok = false;
                }
            }
        }
        if (ok && check_progress && k == 0) {
            int64_t unchanged = 0, nonzero = 0;
            for (int64_t i = 0; i < grad.t.numel; i++) {
                if (buf_get(&grad, i) == 0.0) continue;
                nonzero++;
                if (buf_get(&before, i) == buf_get(&out->param, i)) unchanged++;
            }
            if (unchanged == nonzero && nonzero > 0) {
                fail(check, "the first step on %s %s data changed no parameter element although "
                     "every gradient element was nonzero (lr = the default, or 0.01 if required); "
                     "does step write to args->param->data?", dtype_name(dtype), sh);
                ok = false;
            } else if (unchanged * 2 > nonzero) {
                /* A few elements may legitimately stay put (an update below
                 * half an ulp of the parameter); most must not. */
                fail(check, "the first step on %s %s data left %lld of %lld elements with a nonzero "
                     "gradient unchanged", dtype_name(dtype), sh, (long long)unchanged,
                     (long long)nonzero);
                ok = false;
            }
        }
    }
    buf_free(&grad);
    buf_free(&grad_copy);
    buf_free(&before);
    return ok;
}

/* Steps (with the given hyperparameters) on every declared dtype and every
 * shape; then state restore, determinism and chunking invariance. */
#if OPTIMD_ABI_MINOR >= 2
/* The next step of `s` run as three calls on uneven ranges of its
 * elements, as a host runs a sliced step (docs/abi.md §6): 1-D views of
 * the parameter, gradient and like-parameter slots, the same `step` in each
 * call, and the scalar slots put back before each range. */
static optimd_status run_step_in_ranges(const optimd_optimizer *o, const double *hp, pstate *s,
                                        const buf *grad, char *why, size_t why_len)
{
    int64_t n = s->param.t.numel;
    int64_t cuts[4] = {0, n / 3 + 1, n - n / 4, n};
    void **before = calloc(s->n_slots ? s->n_slots : 1, sizeof *before);
    optimd_tensor *views = calloc(s->n_slots ? s->n_slots : 1, sizeof *views);
    for (uint32_t i = 0; i < s->n_slots; i++) {
        if (o->slots[i].shape != OPTIMD_SLOT_SCALAR || !s->slot_views[i].data) continue;
        before[i] = malloc(s->slots[i].bytes);
        memcpy(before[i], s->slot_views[i].data, s->slots[i].bytes);
    }
    s->step++;
    optimd_status st = OPTIMD_OK;
    for (int r = 0; r < 3 && st == OPTIMD_OK; r++) {
        int64_t len = cuts[r + 1] - cuts[r], shape[1] = {len}, strides[1] = {1};
        optimd_tensor pv = s->param.t, gv = grad->t;
        pv.ndim = gv.ndim = 1;
        pv.numel = gv.numel = len;
        pv.shape = gv.shape = shape;
        pv.strides = gv.strides = strides;
        pv.data = (char *)s->param.t.data + (size_t)cuts[r] * dtype_size(pv.dtype);
        gv.data = (char *)grad->t.data + (size_t)cuts[r] * dtype_size(gv.dtype);
        for (uint32_t i = 0; i < s->n_slots; i++) {
            views[i] = s->slot_views[i];
            if (before[i]) memcpy(s->slot_views[i].data, before[i], s->slots[i].bytes);
            if (o->slots[i].shape != OPTIMD_SLOT_LIKE_PARAM) continue;
            views[i].ndim = 1;
            views[i].numel = len;
            views[i].shape = shape;
            views[i].strides = strides;
            if (views[i].data) views[i].data = (char *)views[i].data + (size_t)cuts[r] * dtype_size(views[i].dtype);
        }
        host_ctx h;
        host_begin(&h, 0);
        optimd_step_args a;
        memset(&a, 0, sizeof a);
        a.struct_size = sizeof a;
        a.n_hparams = o->n_hparams;
        a.hparams = hp;
        a.step = s->step;
        a.param = &pv;
        a.grad = &gv;
        a.slots = views;
        a.n_slots = s->n_slots;
        st = o->step(&h.table, &a);
        if (st != OPTIMD_OK) snprintf(why, why_len, "%s", error_text(&h));
        host_end(&h);
    }
    for (uint32_t i = 0; i < s->n_slots; i++) free(before[i]);
    free(before);
    free(views);
    return st;
}

/* OPTIMD_OPTIMIZER_ELEMENTWISE: stepping in ranges gives the whole step's bits. */
static void check_elementwise(const optimd_optimizer *o, const double *hp, uint32_t dtype, const char *variant)
{
    char check[64];
    snprintf(check, sizeof check, "elementwise[%s%s]", dtype_name(dtype), variant);
    phase("steps in ranges on %s data%s", dtype_name(dtype), variant);
    for (uint32_t i = 0; i < o->n_slots; i++) {
        if (o->slots[i].shape == OPTIMD_SLOT_ROWS || o->slots[i].shape == OPTIMD_SLOT_COLS) {
            fail(check, "declares OPTIMD_OPTIMIZER_ELEMENTWISE but has the factored slot '%s': rows/cols "
                 "statistics are not element-wise; drop the flag", o->slots[i].key);
            return;
        }
    }
    for (size_t c = 0; c < N_SHAPES; c++) {
        if (shapes[c].ndim == 0) continue;
        pstate a, b;
        if (!run_sequence(check, o, hp, dtype, &shapes[c], 0, 57 + c, &a, false)) {
            pstate_free(&a);
            return;
        }
        pstate_copy(&b, &a, o, hp);
        buf grad;
        buf_init(&grad, dtype, shapes[c].ndim, shapes[c].shape, 0);
        rng_state = 123 + c;
        buf_fill(&grad);
        char why[300] = "";
        optimd_status sa = run_step(o, hp, &a, &grad, 0, why, sizeof why);
        optimd_status sb = sa == OPTIMD_OK ? run_step_in_ranges(o, hp, &b, &grad, why, sizeof why) : sa;
        bool same = sa == OPTIMD_OK && sb == OPTIMD_OK && pstate_equal(&a, &b);
        char sh[64];
        describe_shape(&shapes[c], sh, sizeof sh);
        if (sa != OPTIMD_OK || sb != OPTIMD_OK)
            fail(check, "on %s %s data, a step failed: %s", dtype_name(dtype), sh, why);
        else if (!same)
            fail(check, "declares OPTIMD_OPTIMIZER_ELEMENTWISE, but on %s %s data one step in three ranges "
                 "differs from the whole step (parameter or a slot): the update must be element-wise and "
                 "scalar slots must not depend on the tensors' values (docs/abi.md §6), or drop the flag",
                 dtype_name(dtype), sh);
        buf_free(&grad);
        pstate_free(&a);
        pstate_free(&b);
        if (!same) return;
    }
    pass(check, "a step in three ranges gives the whole step's bits on every shape");
}
#endif

static void check_optimizer_steps(const optimd_optimizer *o, const double *hp, const char *variant,
                                  bool elementwise)
{
    for (uint32_t dtype = OPTIMD_DTYPE_F32; dtype <= OPTIMD_DTYPE_F64; dtype++) {
        if (!(o->dtypes & (1u << dtype))) continue;
        char check[64];
        snprintf(check, sizeof check, "step[%s%s]", dtype_name(dtype), variant);
        bool ok = true;
        for (size_t c = 0; c < N_SHAPES && ok; c++) {
            phase("step on %s data%s", dtype_name(dtype), variant);
            pstate s;
            ok = run_sequence(check, o, hp, dtype, &shapes[c], 0, 0x9E3779B97F4A7C15ull + c, &s, true);
            pstate_free(&s);
        }
        if (!ok) continue;
        pass(check, "%d steps on each of %zu shapes: status OK, finite results, parameters move, "
             "gradient untouched", N_STEPS, N_SHAPES);

        /* Saved state restored into fresh memory gives the same next step as
         * the state that stayed in place. */
        snprintf(check, sizeof check, "restore[%s%s]", dtype_name(dtype), variant);
        phase("state restore on %s data%s", dtype_name(dtype), variant);
        for (size_t c = 0; c < N_SHAPES && ok; c++) {
            pstate a, b;
            if (!run_sequence(check, o, hp, dtype, &shapes[c], 0, 7 + c, &a, false)) {
                pstate_free(&a);
                ok = false;
                break;
            }
            pstate_copy(&b, &a, o, hp);
            buf grad;
            buf_init(&grad, dtype, shapes[c].ndim, shapes[c].shape, 0);
            rng_state = 99 + c;
            buf_fill(&grad);
            char why[300];
            optimd_status sa = run_step(o, hp, &a, &grad, 0, why, sizeof why);
            optimd_status sb = run_step(o, hp, &b, &grad, 0, why, sizeof why);
            if (sa != OPTIMD_OK || sb != OPTIMD_OK) {
                fail(check, "a step after restoring state failed: %s", why);
                ok = false;
            } else if (!pstate_equal(&a, &b)) {
                char sh[64];
                describe_shape(&shapes[c], sh, sizeof sh);
                fail(check, "on %s %s data, the step after copying the parameter and its slots to "
                     "new memory differs from the step on the originals: keep every piece of state "
                     "in declared slots (no static variables, no pointers kept between calls)",
                     dtype_name(dtype), sh);
                ok = false;
            }
            buf_free(&grad);
            pstate_free(&a);
            pstate_free(&b);
        }
        if (ok) pass(check, "state copied to new memory steps on bit-identically");

        /* Same inputs twice, and with parallel_for cut into chunks. */
        snprintf(check, sizeof check, "determinism[%s%s]", dtype_name(dtype), variant);
        phase("determinism on %s data%s", dtype_name(dtype), variant);
        bool det = true;
        for (size_t c = 0; c < N_SHAPES && det; c++) {
            pstate a, b, d;
            bool ra = run_sequence(check, o, hp, dtype, &shapes[c], 0, 31 + c, &a, false);
            bool rb = ra && run_sequence(check, o, hp, dtype, &shapes[c], 0, 31 + c, &b, false);
            bool rd = rb && run_sequence(check, o, hp, dtype, &shapes[c], 1, 31 + c, &d, false);
            char sh[64];
            describe_shape(&shapes[c], sh, sizeof sh);
            if (!rd) {
                det = false;
            } else if (!pstate_equal(&a, &b)) {
                fail(check, "the same steps on the same %s %s data gave different bytes: the plugin "
                     "must be a pure function of its arguments (no global mutable state, no "
                     "uninitialized reads)", dtype_name(dtype), sh);
                det = false;
            } else if (!pstate_equal(&a, &d)) {
                fail(check, "on %s %s data, the result depends on how parallel_for cuts [0, n) into "
                     "chunks: the range function must do elementwise work only",
                     dtype_name(dtype), sh);
                det = false;
            }
            pstate_free(&a);
            if (ra) pstate_free(&b);
            if (rb) pstate_free(&d);
        }
        if (det) pass(check, "same inputs give the same bytes, however parallel_for is chunked");
#if OPTIMD_ABI_MINOR >= 2
        if (elementwise) check_elementwise(o, hp, dtype, variant);
#else
        (void)elementwise;
#endif
    }
}

/* -------------------------------------------------- the child's checks -- */

static const optimd_plugin_desc *load(const char *path, void **handle, const char *check)
{
    dlerror();
    *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!*handle) {
        fail(check, "dlopen failed: %s (an undefined symbol? link with -Wl,-z,defs to find it at "
             "build time)", dlerror());
        return NULL;
    }
    const optimd_plugin_desc *d = dlsym(*handle, OPTIMD_PLUGIN_SYMBOL);
    if (!d) {
        fail(check, "dlsym(\"%s\") found nothing: export the descriptor with OPTIMD_EXPORT",
             OPTIMD_PLUGIN_SYMBOL);
        dlclose(*handle);
        *handle = NULL;
    }
    return d;
}

/* The plugin's step on fixed data, for comparing two loaded copies. */
static bool fingerprint_step(const optimd_plugin_desc *d, int round, pstate *s, bool fresh)
{
    const optimd_optimizer *o = d->optimizer;
    double *hp = calloc(o->n_hparams + 1, sizeof *hp);
    pick_values(o->hparams, o->n_hparams, hp);
    uint32_t dtype = (o->dtypes & (1u << OPTIMD_DTYPE_F32)) ? OPTIMD_DTYPE_F32 : OPTIMD_DTYPE_F64;
    const shape_case *c = &shapes[1];
    if (fresh) {
        rng_state = 1234;
        pstate_init(s, o, hp, dtype, c->ndim, c->shape);
        buf_fill(&s->param);
    }
    buf grad;
    buf_init(&grad, dtype, c->ndim, c->shape, 0);
    rng_state = 555 + (uint64_t)round;
    buf_fill(&grad);
    bool ok = run_step(o, hp, s, &grad, 0, NULL, 0) == OPTIMD_OK;
    buf_free(&grad);
    free(hp);
    return ok;
}

/* Evaluates lr at epochs 0..100, chaining last_lr as the host does. Fills
 * lrs[] and returns how many epochs succeeded (101 when all did). A
 * schedule may end early (OneCycle past total_steps): an error with a reason
 * after epoch 0 stops the run there, as the host keeps the previous lr. */
typedef struct sched_run {
    double lrs[101];
    int64_t n_ok;
    bool bad;            /* a result the host would not accept */
    optimd_status status;
    char why[300];
} sched_run;

static void sched_lrs(const optimd_plugin_desc *d, const double *hp, sched_run *r)
{
    const optimd_scheduler *s = d->scheduler;
    double state[64] = {0};
    double last = 0.1;
    memset(r, 0, sizeof *r);
    for (int64_t e = 0; e <= 100; e++) {
        host_ctx h;
        host_begin(&h, 0);
        optimd_sched_args a;
        memset(&a, 0, sizeof a);
        a.struct_size = sizeof a;
        a.n_hparams = s->n_hparams;
        a.hparams = hp;
        a.epoch = e;
        a.base_lr = 0.1;
        a.last_lr = last;
#if OPTIMD_ABI_MINOR >= 1
        a.state = NULL;
        if (s->struct_size >= offsetof(optimd_scheduler, n_state) + sizeof s->n_state && s->n_state)
            a.state = s->n_state <= 64 ? state : NULL;
#endif
        double lr = NAN;
        optimd_status st = s->lr(&h.table, &a, &lr);
        bool gave_reason = h.call.error[0] != '\0';
        snprintf(r->why, sizeof r->why, "%s", st == OPTIMD_OK ? "" : error_text(&h));
        host_end(&h);
        r->status = st;
        if (st != OPTIMD_OK) {
            r->bad = e == 0 || !gave_reason;
            return;
        }
        if (!isfinite(lr) || lr < 0) {
            snprintf(r->why, sizeof r->why, "lr = %g", lr);
            r->bad = true;
            return;
        }
        r->lrs[e] = lr;
        r->n_ok = e + 1;
        last = lr;
    }
    (void)state;
}

static void check_scheduler(const optimd_plugin_desc *d)
{
    const optimd_scheduler *s = d->scheduler;
    if (!check_hparam_defs(s->hparams, s->n_hparams, false)) return;
#if OPTIMD_ABI_MINOR >= 1
    if (s->struct_size >= offsetof(optimd_scheduler, n_state) + sizeof s->n_state && s->n_state > 64) {
        fail("table", "the scheduler declares %u state values: at most 64", s->n_state);
        return;
    }
#endif
    double *hp = calloc(s->n_hparams + 1, sizeof *hp);
    pick_values(s->hparams, s->n_hparams, hp);
    if (s->check_hparams) {
        phase("check_hparams");
        host_ctx h;
        host_begin(&h, 0);
        optimd_status st = s->check_hparams(&h.table, hp, s->n_hparams);
        if (st != OPTIMD_OK) {
            fail("check_hparams", "refuses the default hyperparameters (status %d): %s", st,
                 error_text(&h));
            host_end(&h);
            free(hp);
            return;
        }
        host_end(&h);
        pass("check_hparams", "accepts the default hyperparameters");
    }
    phase("lr at epochs 0..100");
    sched_run *a = calloc(2, sizeof *a), *b = a + 1;
    sched_lrs(d, hp, a);
    if (a->bad) {
        fail("lr", "at epoch %lld (base_lr 0.1, default hyperparameters) lr returned status %d "
             "with %s: return OPTIMD_OK and a finite, non-negative lr (an error needs a reason "
             "from host->set_error)", (long long)a->n_ok, a->status, a->why);
    } else {
        if (a->n_ok == 101)
            pass("lr", "epochs 0..100 give finite, non-negative lrs (%g at 0, %g at 100)",
                 a->lrs[0], a->lrs[100]);
        else
            pass("lr", "epochs 0..%lld give finite, non-negative lrs; the schedule ends at epoch "
                 "%lld: %s", (long long)a->n_ok - 1, (long long)a->n_ok, a->why);
        sched_lrs(d, hp, b);
        if (b->bad || b->n_ok != a->n_ok || memcmp(a->lrs, b->lrs, sizeof a->lrs) != 0)
            fail("determinism", "the same epochs gave different lrs on a second run: lr must be "
                 "a pure function of its arguments");
        else
            pass("determinism", "a second run gives the same lrs bit for bit");
    }
    free(a);
    free(hp);
}

/* ------------------------------------------------------- test vectors -- */

/* The size of optimd_test_vector in ABI 1.1, its first version (LP64;
 * tests/unit/test_abi_layout.c pins the members). */
#define TEST_VECTOR_SIZE_1_1 120u
#define MAX_TEST_VECTORS 256u
#define MAX_VECTOR_NUMEL ((int64_t)1 << 22)

/* Raw bits of element i, widened: equal bits are equal elements. */
static uint64_t elem_bits(const void *data, uint32_t dtype, int64_t i)
{
    if (dtype == OPTIMD_DTYPE_F64) {
        uint64_t u;
        memcpy(&u, (const char *)data + i * 8, 8);
        return u;
    }
    uint32_t u;
    memcpy(&u, (const char *)data + i * 4, 4);
    return u;
}

static double elem_value(const void *data, uint32_t dtype, int64_t i)
{
    if (dtype == OPTIMD_DTYPE_F64) {
        double v;
        memcpy(&v, (const char *)data + i * 8, 8);
        return v;
    }
    float v;
    memcpy(&v, (const char *)data + i * 4, 4);
    return v;
}

/* Distance in units in the last place of the dtype: how many representable
 * values lie between a and b (+0 and -0 count as one value). UINT64_MAX
 * when either is NaN. */
static uint64_t ulp_distance(const void *a, const void *b, uint32_t dtype, int64_t i)
{
    double va = elem_value(a, dtype, i), vb = elem_value(b, dtype, i);
    if (isnan(va) || isnan(vb)) return UINT64_MAX;
    uint64_t ua = elem_bits(a, dtype, i), ub = elem_bits(b, dtype, i);
    const uint64_t sign = dtype == OPTIMD_DTYPE_F64 ? 1ull << 63 : 1ull << 31;
    /* Map to a scale that is monotonic in the value. */
    ua = (ua & sign) ? sign - (ua & ~sign) : sign + ua;
    ub = (ub & sign) ? sign - (ub & ~sign) : sign + ub;
    return ua > ub ? ua - ub : ub - ua;
}

/* The worst element of one or more compared tensors. */
typedef struct worst_elem {
    bool set;
    char tensor[80];
    int64_t index;
    uint64_t ulps;
    double got, want;
    uint32_t dtype;
} worst_elem;

typedef struct vector_result {
    int64_t compared, bad;
    worst_elem worst_bad, worst_any;
    char bad_tensors[256];
} vector_result;

static void note_worst(worst_elem *w, const char *tensor, int64_t i, uint64_t ulps, double got,
                       double want, uint32_t dtype)
{
    if (w->set && ulps <= w->ulps) return;
    w->set = true;
    snprintf(w->tensor, sizeof w->tensor, "%s", tensor);
    w->index = i;
    w->ulps = ulps;
    w->got = got;
    w->want = want;
    w->dtype = dtype;
}

static void compare_tensor(const optimd_test_vector *v, const char *tensor, const void *got,
                           const void *want, uint32_t dtype, int64_t n, vector_result *r)
{
    int64_t bad_here = 0;
    for (int64_t i = 0; i < n; i++) {
        r->compared++;
        if (elem_bits(got, dtype, i) == elem_bits(want, dtype, i)) continue;
        uint64_t ulps = ulp_distance(got, want, dtype, i);
        double g = elem_value(got, dtype, i), w = elem_value(want, dtype, i);
        bool ok = (v->max_ulps > 0 && ulps <= v->max_ulps) ||
                  (v->max_abs_error > 0 && fabs(g - w) <= v->max_abs_error);
        note_worst(&r->worst_any, tensor, i, ulps, g, w, dtype);
        if (ok) continue;
        note_worst(&r->worst_bad, tensor, i, ulps, g, w, dtype);
        bad_here++;
    }
    if (bad_here) {
        size_t len = strlen(r->bad_tensors);
        snprintf(r->bad_tensors + len, sizeof r->bad_tensors - len, "%s%s (%lld of %lld)",
                 len ? ", " : "", tensor, (long long)bad_here, (long long)n);
        r->bad += bad_here;
    }
}

static void describe_worst(const worst_elem *w, char *out, size_t len)
{
    char ulps[64];
    if (w->ulps == UINT64_MAX)
        snprintf(ulps, sizeof ulps, "NaN");
    else
        snprintf(ulps, sizeof ulps, "%llu ulp%s%s", (unsigned long long)w->ulps,
                 w->ulps == 1 ? "" : "s", w->ulps == 0 ? ", the sign of zero differs" : "");
    int digits = w->dtype == OPTIMD_DTYPE_F64 ? 17 : 9;
    snprintf(out, len, "%s[%lld] = %.*g, expected %.*g (%s)", w->tensor, (long long)w->index,
             digits, w->got, digits, w->want, ulps);
}

static bool all_finite(const void *data, uint32_t dtype, int64_t n, int64_t *at)
{
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(elem_value(data, dtype, i))) {
            *at = i;
            return false;
        }
    }
    return true;
}

/* Runs one declared vector as the host would run that step, and compares.
 * Reports one PASS or FAIL under `check`. */
static void check_test_vector(const optimd_optimizer *o, const optimd_test_vector *v,
                              const char *check, const char *label)
{
    phase("test vector %s", label);
    uint32_t dtype = v->dtype;
    if (dtype != OPTIMD_DTYPE_F32 && dtype != OPTIMD_DTYPE_F64) {
        fail(check, "%s has dtype %u: use OPTIMD_DTYPE_F32 or OPTIMD_DTYPE_F64", label, dtype);
        return;
    }
    if (!(o->dtypes & (1u << dtype))) {
        fail(check, "%s is %s, which the optimizer does not declare in dtypes: test a declared "
             "dtype or declare this one", label, dtype_name(dtype));
        return;
    }
    if (v->step == 0) {
        fail(check, "%s has step 0: it is args->step of the tested call, 1 on a parameter's "
             "first step", label);
        return;
    }
    if (v->numel < 1 || v->numel > MAX_VECTOR_NUMEL) {
        fail(check, "%s has numel %lld: give 1 to %lld elements", label, (long long)v->numel,
             (long long)MAX_VECTOR_NUMEL);
        return;
    }
    int64_t shape[MAX_DIMS];
    uint32_t ndim = 1;
    shape[0] = v->numel;
    if (v->shape) {
        int64_t product = 1;
        bool ok = v->ndim >= 1 && v->ndim <= MAX_DIMS;
        for (uint32_t i = 0; ok && i < v->ndim; i++) {
            ok = v->shape[i] >= 1 && v->shape[i] <= MAX_VECTOR_NUMEL;
            if (ok) product *= v->shape[i];
            ok = ok && product <= MAX_VECTOR_NUMEL;
            shape[i] = v->shape[i];
        }
        if (!ok || product != v->numel) {
            fail(check, "%s has a shape of ndim %u that does not multiply out to numel %lld: give "
                 "1 to %d positive dimensions whose product is numel, or shape NULL for [numel]",
                 label, v->ndim, (long long)v->numel, MAX_DIMS);
            return;
        }
        ndim = v->ndim;
    } else if (v->ndim != 0) {
        fail(check, "%s has ndim %u but no shape: set both, or ndim 0 and shape NULL for [numel]",
             label, v->ndim);
        return;
    }
    if (!v->param || !v->grad || !v->expected_param) {
        fail(check, "%s lacks %s: param, grad and expected_param are required", label,
             !v->param ? "param" : !v->grad ? "grad" : "expected_param");
        return;
    }
    if (v->n_slots != o->n_slots) {
        fail(check, "%s gives %u slot(s) but the optimizer declares %u: give slots and "
             "expected_slots one entry per declared slot, in declaration order (NULL entries for "
             "zeros / not compared), and set n_slots to match", label, v->n_slots, o->n_slots);
        return;
    }
    if (!(v->max_abs_error >= 0) || !isfinite(v->max_abs_error)) {
        fail(check, "%s has max_abs_error %g: use a finite value >= 0 (0 with max_ulps 0 is "
             "bit-exact)", label, v->max_abs_error);
        return;
    }

    /* Hyperparameters: the defaults, then the vector's values by key, then
     * the host's own checks, as at `open`. */
    if (v->n_hparam_values > 256 || (v->n_hparam_values && (!v->hparam_keys || !v->hparam_values))) {
        fail(check, "%s has n_hparam_values %u with %s: point hparam_keys and hparam_values at "
             "arrays of that length", label, v->n_hparam_values,
             v->n_hparam_values > 256 ? "more than 256" : "a NULL array");
        return;
    }
    double *hp = calloc(o->n_hparams + 1, sizeof *hp);
    bool *given = calloc(o->n_hparams + 1, sizeof *given);
    pick_values(o->hparams, o->n_hparams, hp);
    bool ok = true;
    for (uint32_t k = 0; k < v->n_hparam_values && ok; k++) {
        const char *key = v->hparam_keys[k];
        int h = key ? hparam_index(o->hparams, o->n_hparams, key) : -1;
        if (h < 0) {
            char declared[512] = "";
            for (uint32_t i = 0; i < o->n_hparams; i++) {
                size_t len = strlen(declared);
                snprintf(declared + len, sizeof declared - len, "%s%s", i ? ", " : "",
                         o->hparams[i].key);
            }
            fail(check, "%s names hyperparameter '%s', which the plugin does not declare (it "
                 "declares: %s): fix the key in hparam_keys", label, key ? key : "(null)", declared);
            ok = false;
        } else if (given[h]) {
            fail(check, "%s gives hyperparameter '%s' twice: name each key once", label, key);
            ok = false;
        } else if (!in_range(&o->hparams[h], v->hparam_values[k])) {
            fail(check, "%s gives %s = %g, which the host would refuse (outside its declared "
                 "range, or not an integer or bool as declared)", label, key, v->hparam_values[k]);
            ok = false;
        } else {
            given[h] = true;
            hp[h] = v->hparam_values[k];
        }
    }
    for (uint32_t i = 0; i < o->n_hparams && ok; i++) {
        if ((o->hparams[i].flags & OPTIMD_HP_REQUIRED) && !given[i]) {
            fail(check, "%s does not give '%s', which is REQUIRED: add it to hparam_keys and "
                 "hparam_values", label, o->hparams[i].key);
            ok = false;
        }
    }
    free(given);
    if (ok && o->check_hparams) {
        host_ctx h;
        host_begin(&h, 0);
        optimd_status st = o->check_hparams(&h.table, hp, o->n_hparams);
        if (st != OPTIMD_OK) {
            fail(check, "%s: check_hparams refuses its hyperparameters (status %d): %s", label,
                 st, error_text(&h));
            ok = false;
        }
        host_end(&h);
    }
    if (!ok) {
        free(hp);
        return;
    }

    /* The state as the host holds it: 64-byte aligned parameter and slots,
     * a gradient that is not, disabled slots passed with data NULL. */
    pstate s;
    pstate_init(&s, o, hp, dtype, ndim, shape);
    buf grad, grad_copy;
    buf_init(&grad, dtype, ndim, shape, dtype_size(dtype));
    buf_init(&grad_copy, dtype, ndim, shape, 0);
    int64_t at;
    if (!all_finite(v->grad, dtype, v->numel, &at)) {
        fail(check, "%s has a non-finite grad[%lld]: the host never passes one (it refuses "
             "the request)", label, (long long)at);
        ok = false;
    } else if (!all_finite(v->expected_param, dtype, v->numel, &at)) {
        fail(check, "%s has a non-finite expected_param[%lld]: state finite results", label,
             (long long)at);
        ok = false;
    }
    memcpy(s.param.t.data, v->param, s.param.bytes);
    memcpy(grad.t.data, v->grad, grad.bytes);
    memcpy(grad_copy.t.data, v->grad, grad.bytes);
    for (uint32_t i = 0; i < s.n_slots && ok; i++) {
        if (!s.slot_views[i].data) continue;
        const buf *b = &s.slots[i];
        if (v->slots && v->slots[i]) memcpy(b->t.data, v->slots[i], b->bytes);
        if (v->expected_slots && v->expected_slots[i] &&
            !all_finite(v->expected_slots[i], b->t.dtype, b->t.numel, &at)) {
            fail(check, "%s has a non-finite expected value %lld of slot '%s': state finite "
                 "results", label, (long long)at, o->slots[i].key);
            ok = false;
        }
    }
    if (ok) {
        s.step = v->step - 1;
        char why[300];
        optimd_status st = run_step(o, hp, &s, &grad, 0, why, sizeof why);
        if (st != OPTIMD_OK) {
            fail(check, "%s: step returned %d: %s", label, st, why);
            ok = false;
        } else if (memcmp(grad.t.data, grad_copy.t.data, grad.bytes) != 0) {
            fail(check, "%s: step wrote to the gradient, which is read-only", label);
            ok = false;
        }
    }
    if (ok) {
        vector_result r;
        memset(&r, 0, sizeof r);
        compare_tensor(v, "param", s.param.t.data, v->expected_param, dtype, v->numel, &r);
        int n_unchecked = 0;
        char unchecked[256] = "";
        for (uint32_t i = 0; i < s.n_slots; i++) {
            if (!s.slot_views[i].data) continue;
            if (!v->expected_slots || !v->expected_slots[i]) {
                size_t len = strlen(unchecked);
                snprintf(unchecked + len, sizeof unchecked - len, "%s'%s'", n_unchecked++ ? ", " : "",
                         o->slots[i].key);
                continue;
            }
            char name[80];
            snprintf(name, sizeof name, "slot '%s'", o->slots[i].key);
            compare_tensor(v, name, s.slots[i].t.data, v->expected_slots[i], s.slots[i].t.dtype,
                           s.slots[i].t.numel, &r);
        }
        char tol[96];
        if (v->max_ulps == 0 && v->max_abs_error == 0)
            snprintf(tol, sizeof tol, "bit-exact");
        else
            snprintf(tol, sizeof tol, "max_ulps %u, max_abs_error %g", v->max_ulps,
                     v->max_abs_error);
        char worst[300], note[300] = "";
        if (n_unchecked)
            snprintf(note, sizeof note, "; slot%s %s not compared (expected_slots NULL)",
                     n_unchecked > 1 ? "s" : "", unchecked);
        if (r.bad) {
            describe_worst(&r.worst_bad, worst, sizeof worst);
            fail(check, "%s (%s, numel %lld, step %llu): %lld of %lld values outside the "
                 "tolerance (%s), in %s; worst: %s. Fix step, or the expected values if they "
                 "are wrong", label, dtype_name(dtype), (long long)v->numel,
                 (unsigned long long)v->step, (long long)r.bad, (long long)r.compared, tol,
                 r.bad_tensors, worst);
        } else if (r.worst_any.set) {
            describe_worst(&r.worst_any, worst, sizeof worst);
            pass(check, "%s (%s, numel %lld, step %llu): all %lld values within the tolerance "
                 "(%s); worst: %s%s", label, dtype_name(dtype), (long long)v->numel,
                 (unsigned long long)v->step, (long long)r.compared, tol, worst, note);
        } else {
            pass(check, "%s (%s, numel %lld, step %llu): all %lld values match bit for bit "
                 "(tolerance: %s)%s", label, dtype_name(dtype), (long long)v->numel,
                 (unsigned long long)v->step, (long long)r.compared, tol, note);
        }
    }
    buf_free(&grad);
    buf_free(&grad_copy);
    pstate_free(&s);
    free(hp);
}

/* Every vector the plugin declares (ABI 1.1), each its own check. The
 * array is read with the stride of its elements' struct_size, so that
 * vectors of a later 1.x header, which may have grown, read correctly. */
static void check_test_vectors(const optimd_optimizer *o)
{
    if (o->struct_size < offsetof(optimd_optimizer, test_vectors) + sizeof o->test_vectors ||
        o->n_test_vectors == 0)
        return;
    phase("test vectors");
    if (!o->test_vectors) {
        fail("vectors", "n_test_vectors is %u but test_vectors is NULL: point it at your static "
             "array", o->n_test_vectors);
        return;
    }
    if (o->n_test_vectors > MAX_TEST_VECTORS) {
        fail("vectors", "n_test_vectors is %u: at most %u; use the array's length",
             o->n_test_vectors, MAX_TEST_VECTORS);
        return;
    }
    uint32_t stride = o->test_vectors[0].struct_size;
    if (stride < TEST_VECTOR_SIZE_1_1 || stride > STRUCT_SIZE_SANE || stride % 8 != 0) {
        fail("vectors", "test vector 0 has struct_size %u, expected %zu: set .struct_size = "
             "sizeof(optimd_test_vector) in every entry", stride, sizeof(optimd_test_vector));
        return;
    }
    for (uint32_t i = 0; i < o->n_test_vectors; i++) {
        const optimd_test_vector *v =
            (const optimd_test_vector *)(const void *)((const char *)o->test_vectors +
                                                       (size_t)i * stride);
        /* A label safe for one report line. */
        char label[64], check[80];
        if (v->name && *v->name) {
            size_t n = 0;
            for (const char *c = v->name; *c && n < 40; c++)
                label[n++] = (*c > ' ' && *c < 127) ? *c : '_';
            label[n] = '\0';
        } else {
            snprintf(label, sizeof label, "#%u", i);
        }
        snprintf(check, sizeof check, "vector[%s]", label);
        if (v->struct_size != stride) {
            fail(check, "test vector %u has struct_size %u, unlike vector 0's %u: set "
                 ".struct_size = sizeof(optimd_test_vector) in every entry", i, v->struct_size,
                 stride);
            continue;
        }
        char desc[96];
        bool named = v->name && *v->name;
        snprintf(desc, sizeof desc, "test vector %u%s%s%s", i, named ? " '" : "",
                 named ? label : "", named ? "'" : "");
        check_test_vector(o, v, check, desc);
    }
}

static void check_optimizer(const optimd_plugin_desc *d)
{
    const optimd_optimizer *o = d->optimizer;
    bool hp_ok = check_hparam_defs(o->hparams, o->n_hparams, true);
    bool slots_ok = hp_ok && check_slot_defs(d, o);
    uint32_t known = (1u << OPTIMD_DTYPE_F32) | (1u << OPTIMD_DTYPE_F64);
    if (!(o->dtypes & known)) {
        fail("dtypes", "declares no supported dtype: set dtypes to (1u << OPTIMD_DTYPE_F32) "
             "and/or (1u << OPTIMD_DTYPE_F64)");
        return;
    }
    if (o->dtypes & ~known) {
        fail("dtypes", "declares unknown dtype bits 0x%x: only F32 and F64 exist in ABI %u.%u",
             o->dtypes & ~known, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MINOR);
        return;
    }
    pass("dtypes", "declares%s%s", (o->dtypes & (1u << OPTIMD_DTYPE_F32)) ? " f32" : "",
         (o->dtypes & (1u << OPTIMD_DTYPE_F64)) ? " f64" : "");
    if (!hp_ok || !slots_ok) return;

    double *hp = calloc(o->n_hparams + 1, sizeof *hp);
    pick_values(o->hparams, o->n_hparams, hp);
    if (o->check_hparams) {
        phase("check_hparams");
        host_ctx h;
        host_begin(&h, 0);
        optimd_status st = o->check_hparams(&h.table, hp, o->n_hparams);
        if (st != OPTIMD_OK) {
            fail("check_hparams", "refuses the default hyperparameters (status %d): %s", st,
                 error_text(&h));
            host_end(&h);
            free(hp);
            return;
        }
        host_end(&h);
        pass("check_hparams", "accepts the default hyperparameters");
    }
    bool elementwise = false;
#if OPTIMD_ABI_MINOR >= 2
    elementwise = d->abi_minor >= 2 && (o->flags & OPTIMD_OPTIMIZER_ELEMENTWISE);
#endif
    check_optimizer_steps(o, hp, "", elementwise);

    /* Bool switches often change the slot layout (amsgrad) or the kernel:
     * step with every bool on too, if check_hparams allows it. */
    bool any_bool = false;
    for (uint32_t i = 0; i < o->n_hparams; i++) {
        if (o->hparams[i].type == OPTIMD_HP_BOOL && hp[i] == 0.0) {
            hp[i] = 1.0;
            any_bool = true;
        }
    }
    if (any_bool) {
        bool allowed = true;
        if (o->check_hparams) {
            host_ctx h;
            host_begin(&h, 0);
            allowed = o->check_hparams(&h.table, hp, o->n_hparams) == OPTIMD_OK;
            host_end(&h);
        }
        if (allowed) check_optimizer_steps(o, hp, ", bools on", elementwise);
    }
    free(hp);
    check_test_vectors(o);
}

static void child_checks(const char *path)
{
    phase("loading");
    void *handle;
    const optimd_plugin_desc *d = load(path, &handle, "load");
    if (!d) return;
    pass("load", "dlopen(RTLD_NOW | RTLD_LOCAL) and dlsym(\"optimd_plugin\") succeed");

    phase("reading the descriptor");
    if (d->abi_major != OPTIMD_ABI_MAJOR) {
        fail("abi", "built for ABI %u.%u; this validator (and a daemon of its release) speaks "
             "%u.0 to %u.%u: rebuild against optimd-sdk %u.x headers and set abi_major = "
             "OPTIMD_ABI_MAJOR", d->abi_major, d->abi_minor, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MAJOR,
             OPTIMD_ABI_MINOR, OPTIMD_ABI_MAJOR);
        return;
    }
    if (d->abi_minor > OPTIMD_ABI_MINOR) {
        fail("abi", "built for ABI %u.%u, newer than this validator's %u.%u: a daemon of this "
             "release refuses it; use the validator of the SDK you built with", d->abi_major,
             d->abi_minor, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MINOR);
        return;
    }
    if (d->struct_size < DESC_SIZE_1_0 || d->struct_size > STRUCT_SIZE_SANE) {
        fail("abi", "descriptor struct_size is %u, expected %u to %u: set .struct_size = "
             "sizeof(optimd_plugin_desc)", d->struct_size, DESC_SIZE_1_0, STRUCT_SIZE_SANE);
        return;
    }
    pass("abi", "built for ABI %u.%u; this validator speaks %u.0 to %u.%u", d->abi_major,
         d->abi_minor, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MAJOR, OPTIMD_ABI_MINOR);

    bool desc_ok = true;
    if (!valid_name(d->id, true)) {
        fail("descriptor", "id '%s' is not 1 to 64 characters of [a-z0-9_.-]",
             d->id ? d->id : "(null)");
        desc_ok = false;
    }
    if (!d->version || !*d->version) {
        fail("descriptor", "version is empty: give the plugin's release as \"major.minor.patch\"");
        desc_ok = false;
    }
    if (!d->description) {
        fail("descriptor", "description is NULL: give one line for listings");
        desc_ok = false;
    }
    if (d->kind == OPTIMD_KIND_OPTIMIZER) {
        const optimd_optimizer *o = d->optimizer;
        if (!o || d->scheduler) {
            fail("table", "kind is OPTIMIZER: set .optimizer to your table and leave .scheduler NULL");
            return;
        }
        if (o->struct_size < OPTIMIZER_SIZE_1_0 || o->struct_size > STRUCT_SIZE_SANE || !o->step) {
            fail("table", "optimizer table has struct_size %u (expected %u to %u) or no step: set "
                 ".struct_size = sizeof(optimd_optimizer) and .step", o->struct_size,
                 OPTIMIZER_SIZE_1_0, STRUCT_SIZE_SANE);
            return;
        }
    } else if (d->kind == OPTIMD_KIND_SCHEDULER) {
        const optimd_scheduler *s = d->scheduler;
        if (!s || d->optimizer) {
            fail("table", "kind is SCHEDULER: set .scheduler to your table and leave .optimizer NULL");
            return;
        }
        if (s->struct_size < SCHEDULER_SIZE_1_0 || s->struct_size > STRUCT_SIZE_SANE || !s->lr) {
            fail("table", "scheduler table has struct_size %u (expected %u to %u) or no lr: set "
                 ".struct_size = sizeof(optimd_scheduler) and .lr", s->struct_size,
                 SCHEDULER_SIZE_1_0, STRUCT_SIZE_SANE);
            return;
        }
    } else {
        fail("descriptor", "kind is %u: use OPTIMD_KIND_OPTIMIZER or OPTIMD_KIND_SCHEDULER", d->kind);
        return;
    }
    if (desc_ok) pass("descriptor", "id '%s', version %s, %s", d->id, d->version,
                      d->kind == OPTIMD_KIND_OPTIMIZER ? "optimizer" : "scheduler");
    pass("table", "%s table: struct_size %u, required callback set",
         d->kind == OPTIMD_KIND_OPTIMIZER ? "optimizer" : "scheduler",
         d->kind == OPTIMD_KIND_OPTIMIZER ? d->optimizer->struct_size : d->scheduler->struct_size);

    int before = n_fail_in_child;
    if (d->kind == OPTIMD_KIND_OPTIMIZER)
        check_optimizer(d);
    else
        check_scheduler(d);
    bool is_optimizer = d->kind == OPTIMD_KIND_OPTIMIZER;
    /* Loading twice and side by side only mean something for a plugin that
     * works at all. */
    if (n_fail_in_child != before) {
        dlclose(handle);
        return;
    }

    /* Reference result from the first load. */
    pstate ref;
    bool have_ref = false;
    if (is_optimizer) {
        phase("step (reference for reload checks)");
        have_ref = fingerprint_step(d, 0, &ref, true);
        if (!have_ref) pstate_free(&ref);
    }
    char id[80];
    snprintf(id, sizeof id, "%s", d->id);
    dlclose(handle);

    /* Unload, then load again: the object must really go away (nothing pins
     * it) and come back working. */
    phase("unload and load again");
    if (dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD)) {
        fail("reload", "the plugin stays mapped after dlclose (STB_GNU_UNIQUE symbols from C++ "
             "inline statics, or thread-locals with destructors, pin it): build C++ with "
             "-fno-gnu-unique and avoid thread_local objects with destructors");
    } else {
        bool ok = true;
        for (int round = 0; round < 2 && ok; round++) {
            void *h2;
            const optimd_plugin_desc *d2 = load(path, &h2, "reload");
            if (!d2) {
                ok = false;
                break;
            }
            if (!d2->id || strcmp(d2->id, id) != 0) {
                fail("reload", "the descriptor read after reloading differs from the first one");
                ok = false;
            } else if (have_ref) {
                pstate s;
                if (!fingerprint_step(d2, 0, &s, true) || !pstate_equal(&s, &ref)) {
                    fail("reload", "after unloading and loading again, a step differs from the "
                         "first load's: state must not survive in the object");
                    ok = false;
                }
                pstate_free(&s);
            }
            dlclose(h2);
        }
        if (ok) pass("reload", "unloads completely and loads again twice with the same behaviour");
    }

    /* Two copies of the file, as two versions of one plugin are during a
     * hot swap: both loaded at once, stepped in turn. */
    phase("two copies loaded side by side");
    const char *tmp = getenv("TMPDIR");
    char p1[4096], p2[4096];
    snprintf(p1, sizeof p1, "%s/optimd-validate-XXXXXX.so", tmp && *tmp ? tmp : "/tmp");
    snprintf(p2, sizeof p2, "%s/optimd-validate-XXXXXX.so", tmp && *tmp ? tmp : "/tmp");
    int f1 = mkstemps(p1, 3), f2 = f1 >= 0 ? mkstemps(p2, 3) : -1;
    bool copied = f1 >= 0 && f2 >= 0;
    if (copied) {
        int in = open(path, O_RDONLY);
        char chunk[65536];
        ssize_t n;
        while (in >= 0 && (n = read(in, chunk, sizeof chunk)) > 0)
            copied = copied && write(f1, chunk, (size_t)n) == n && write(f2, chunk, (size_t)n) == n;
        if (in < 0) copied = false;
        else close(in);
    }
    if (f1 >= 0) close(f1);
    if (f2 >= 0) close(f2);
    if (!copied) {
        fail("side-by-side", "could not copy the plugin to a temporary file (%s); set TMPDIR to a "
             "writable directory", strerror(errno));
    } else {
        void *h1, *h2;
        const optimd_plugin_desc *d1 = load(p1, &h1, "side-by-side");
        const optimd_plugin_desc *d2 = d1 ? load(p2, &h2, "side-by-side") : NULL;
        if (d1 && d2) {
            bool ok = true;
            if (d1 == d2) {
                fail("side-by-side", "two copies at different paths resolved to one descriptor");
                ok = false;
            } else if (is_optimizer) {
                pstate a, b;
                bool ra = fingerprint_step(d1, 0, &a, true);
                bool rb = fingerprint_step(d2, 0, &b, true);
                /* After one step each copy matches the first load; after a
                 * second, interleaved one they still match each other. */
                ok = ra && rb && (!have_ref || (pstate_equal(&a, &ref) && pstate_equal(&b, &ref))) &&
                     fingerprint_step(d1, 1, &a, false) && fingerprint_step(d2, 1, &b, false) &&
                     pstate_equal(&a, &b);
                pstate_free(&a);
                pstate_free(&b);
                if (!ok)
                    fail("side-by-side", "two copies loaded at once and stepped in turn gave "
                         "different results: the copies interfere (shared or global state)");
            }
            if (ok) pass("side-by-side", "two copies load together and step independently");
        }
        if (d2) dlclose(h2);
        if (d1) dlclose(h1);
    }
    if (f1 >= 0) unlink(p1);
    if (f2 >= 0) unlink(p2);
    if (have_ref) pstate_free(&ref);
}

/* ----------------------------------------------------------- the parent -- */

static int validate(const char *path)
{
    tally t = {0, 0};
    printf("%s\n", path);
    fflush(stdout);
    check_symbols(path, &t);

    int fds[2];
    if (pipe(fds) != 0) {
        perror("optimd-validate: pipe");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("optimd-validate: fork");
        return 2;
    }
    if (pid == 0) {
        close(fds[0]);
        report_fd = fds[1];
        alarm(CHILD_TIME_LIMIT_S);
        child_checks(path);
        dprintf(report_fd, "D done\t-\n");
        /* _exit: skip the plugin's (and libc's) exit handlers; a plugin
         * has none to run. */
        _exit(0);
    }
    close(fds[1]);
    FILE *in = fdopen(fds[0], "r");
    char line[2048], last_phase[2048] = "loading";
    bool done = false;
    while (fgets(line, sizeof line, in)) {
        line[strcspn(line, "\n")] = '\0';
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = '\0';
        const char *text = tab + 1;
        if (line[0] == 'P') {
            snprintf(last_phase, sizeof last_phase, "%s", line + 2);
        } else if (line[0] == 'D') {
            done = true;
        } else if (line[0] == 'L') {
            if (!quiet) printf("        plugin log [%s]: %s\n", line + 2, text);
        } else if (strncmp(line, "R PASS ", 7) == 0) {
            print_result(&t, true, line + 7, text);
        } else if (strncmp(line, "R FAIL ", 7) == 0) {
            print_result(&t, false, line + 7, text);
        }
    }
    fclose(in);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    char msg[2600];
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        if (sig == SIGALRM)
            snprintf(msg, sizeof msg, "the plugin did not finish within %d s during %s: a step "
                     "must not block or loop forever", CHILD_TIME_LIMIT_S, last_phase);
        else
            snprintf(msg, sizeof msg, "the plugin crashed with SIG%s during %s: run that check "
                     "under a debugger or AddressSanitizer", sigabbrev_np(sig) ? sigabbrev_np(sig)
                     : "?", last_phase);
        print_result(&t, false, "crash", msg);
    } else if (!done) {
        snprintf(msg, sizeof msg, "the plugin ended the process (exit status %d) during %s: a "
                 "plugin must never call exit or abort", WEXITSTATUS(status), last_phase);
        print_result(&t, false, "crash", msg);
    }
    printf("%s: %d passed, %d failed\n", t.failed ? "FAILED" : "OK", t.passed, t.failed);
    fflush(stdout);
    return t.failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    int first = 1;
    for (; first < argc && argv[first][0] == '-'; first++) {
        if (strcmp(argv[first], "-q") == 0 || strcmp(argv[first], "--quiet") == 0) {
            quiet = true;
        } else if (strcmp(argv[first], "--version") == 0) {
            printf("optimd-validate (plugin ABI %u.%u)\n", OPTIMD_ABI_MAJOR, OPTIMD_ABI_MINOR);
            return 0;
        } else if (strcmp(argv[first], "-h") == 0 || strcmp(argv[first], "--help") == 0) {
            printf("usage: optimd-validate [-q] PLUGIN.so...\n"
                   "Checks optimd plugins before they ship: one exported symbol, ABI version,\n"
                   "schema, steps on every declared dtype, the plugin's declared test vectors,\n"
                   "state restore, determinism, reload, two copies side by side.\n"
                   "-q prints only failures and the summary.\n"
                   "Exit status: 0 all checks passed, 1 a check failed, 2 usage error.\n");
            return 0;
        } else {
            fprintf(stderr, "optimd-validate: unknown option '%s'\nusage: optimd-validate [-q] "
                    "PLUGIN.so...\n", argv[first]);
            return 2;
        }
    }
    if (first == argc) {
        fprintf(stderr, "usage: optimd-validate [-q] PLUGIN.so...\n");
        return 2;
    }
    int rv = 0;
    for (int i = first; i < argc; i++) {
        int r = validate(argv[i]);
        if (r > rv) rv = r;
    }
    return rv;
}
