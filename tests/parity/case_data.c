#include "case_data.h"

#include <optimd/plugin.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef OPTIMD_PARITY_SCRIPT
#error "OPTIMD_PARITY_SCRIPT must name torch_reference.py"
#endif

/* Debian's torch is importable only from Debian's own interpreter. */
static const char *torch_python(void)
{
    const char *p = getenv("OPTIMD_TORCH_PYTHON");
    return p && *p ? p : "/usr/bin/python3";
}

int parity_generate(const char *suite, char *dir, size_t dir_cap)
{
    if (snprintf(dir, dir_cap, "/tmp/optimd-parity-XXXXXX") >= (int)dir_cap ||
        !mkdtemp(dir)) {
        perror("parity: mkdtemp");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("parity: fork");
        return -1;
    }
    if (pid == 0) {
        const char *py = torch_python();
        execl(py, py, OPTIMD_PARITY_SCRIPT, "--suite", suite, "--out", dir,
              (char *)NULL);
        fprintf(stderr, "parity: cannot run %s: %s\n", py, strerror(errno));
        _exit(77);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) {
        perror("parity: waitpid");
        return -1;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
        fprintf(stderr, "parity: torch is not available; skipping\n");
        return 77;
    }
    fprintf(stderr, "parity: torch_reference.py failed (status %d)\n", status);
    return -1;
}

void parity_remove_dir(const char *dir)
{
    /* Only what parity_generate made: a flat directory of plain files. */
    if (strncmp(dir, "/tmp/optimd-parity-", 19) != 0) return;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "parity: could not remove %s\n", dir);
}

static int parse_type(const char *s)
{
    if (strcmp(s, "float") == 0) return CASE_HP_FLOAT;
    if (strcmp(s, "int") == 0) return CASE_HP_INT;
    if (strcmp(s, "bool") == 0) return CASE_HP_BOOL;
    if (strcmp(s, "required") == 0) return CASE_HP_REQUIRED;
    return -1;
}

/* "<key> <type> [value]" into *h; the value is required unless the type
 * is "required". strtod reads Python's repr() of a float exactly. */
static int parse_hparam(const char *rest, case_hparam *h)
{
    char type[16] = "";
    char value[64] = "";
    int n = sscanf(rest, "%63s %15s %63s", h->key, type, value);
    h->type = parse_type(type);
    if (n < 2 || h->type < 0) return -1;
    if (h->type == CASE_HP_REQUIRED) {
        h->value = 0.0;
        return 0;
    }
    if (n != 3) return -1;
    char *end;
    h->value = strtod(value, &end);
    return *end == '\0' ? 0 : -1;
}

static int grow(void **array, int count, int *cap, size_t elem)
{
    if (count < *cap) return 0;
    int new_cap = *cap ? *cap * 2 : 16;
    void *p = realloc(*array, (size_t)new_cap * elem);
    if (!p) return -1;
    *array = p;
    *cap = new_cap;
    return 0;
}

int parity_manifest_load(const char *dir, parity_manifest *m)
{
    memset(m, 0, sizeof *m);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    char path[600];
    snprintf(path, sizeof path, "%s/manifest.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "parity: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    int case_cap = 0, default_cap = 0, line_no = 0;
    parity_case *c = NULL;
    char line[512];
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        line_no++;
        line[strcspn(line, "\r\n")] = '\0';
        char word[32] = "";
        int consumed = 0;
        if (sscanf(line, "%31s %n", word, &consumed) < 1) continue;
        const char *rest = line + consumed;
        if (strcmp(word, "torch_default") == 0) {
            if (grow((void **)&m->defaults, m->n_defaults, &default_cap,
                     sizeof *m->defaults)) {
                rc = -1;
                break;
            }
            torch_default *d = &m->defaults[m->n_defaults];
            memset(d, 0, sizeof *d);
            int skip = 0;
            if (sscanf(rest, "%63s %n", d->plugin, &skip) < 1 ||
                parse_hparam(rest + skip, &d->hparam) != 0)
                rc = -1;
            else
                m->n_defaults++;
        } else if (strcmp(word, "case") == 0) {
            if (grow((void **)&m->cases, m->n_cases, &case_cap, sizeof *m->cases)) {
                rc = -1;
                break;
            }
            c = &m->cases[m->n_cases];
            memset(c, 0, sizeof *c);
            snprintf(c->name, sizeof c->name, "%s", rest);
            c->dtype = OPTIMD_DTYPE_F32;
            c->elem_size = 4;
        } else if (c == NULL) {
            rc = -1;
        } else if (strcmp(word, "optimizer") == 0) {
            snprintf(c->optimizer, sizeof c->optimizer, "%s", rest);
        } else if (strcmp(word, "scheduler") == 0) {
            snprintf(c->scheduler, sizeof c->scheduler, "%s", rest);
        } else if (strcmp(word, "dtype") == 0) {
            if (strcmp(rest, "f32") == 0) {
                c->dtype = OPTIMD_DTYPE_F32;
                c->elem_size = 4;
            } else if (strcmp(rest, "f64") == 0) {
                c->dtype = OPTIMD_DTYPE_F64;
                c->elem_size = 8;
            } else {
                rc = -1;
            }
        } else if (strcmp(word, "steps") == 0) {
            if (sscanf(rest, "%d", &c->steps) != 1 || c->steps < 1 ||
                c->steps > CASE_MAX_STEPS)
                rc = -1;
        } else if (strcmp(word, "base_lr") == 0) {
            if (sscanf(rest, "%lf", &c->base_lr) != 1) rc = -1;
        } else if (strcmp(word, "param") == 0) {
            if (c->n_params == CASE_MAX_PARAMS) {
                rc = -1;
            } else {
                case_param *p = &c->params[c->n_params];
                long long numel;
                if (sscanf(rest, "%63s %lld", p->name, &numel) != 2 || numel < 1) {
                    rc = -1;
                } else {
                    p->numel = numel;
                    c->total_numel += numel;
                    c->n_params++;
                }
            }
        } else if (strcmp(word, "hparam") == 0 || strcmp(word, "sched_hparam") == 0) {
            bool sched = word[0] == 's';
            int *n = sched ? &c->n_sched_hparams : &c->n_hparams;
            case_hparam *list = sched ? c->sched_hparams : c->hparams;
            if (*n == CASE_MAX_HPARAMS || parse_hparam(rest, &list[*n]) != 0 ||
                list[*n].type == CASE_HP_REQUIRED)
                rc = -1;
            else
                (*n)++;
        } else if (strcmp(word, "has_grad") == 0) {
            int step;
            char bits[CASE_MAX_PARAMS + 2] = "";
            if (sscanf(rest, "%d %5s", &step, bits) != 2 || step < 1 ||
                step > CASE_MAX_STEPS || (int)strlen(bits) != c->n_params) {
                rc = -1;
            } else {
                for (int i = 0; i < c->n_params; i++)
                    c->has_grad[step][i] = bits[i] == '1';
            }
        } else if (strcmp(word, "state") == 0) {
            case_state *st = &c->states[c->n_states];
            char dtype[8] = "";
            long long numel;
            if (c->n_states == CASE_MAX_STATES ||
                sscanf(rest, "%d %63s %7s %lld", &st->param, st->key, dtype, &numel) != 4 ||
                st->param < 0 || st->param >= c->n_params || numel < 1 ||
                (strcmp(dtype, "f32") != 0 && strcmp(dtype, "f64") != 0)) {
                rc = -1;
            } else {
                st->dtype = dtype[1] == '3' ? OPTIMD_DTYPE_F32 : OPTIMD_DTYPE_F64;
                st->numel = numel;
                c->n_states++;
            }
        } else if (strcmp(word, "end") == 0) {
            m->n_cases++;
            c = NULL;
        } else {
            rc = -1;
        }
        if (rc != 0)
            fprintf(stderr, "parity: %s:%d: cannot parse '%s'\n", path, line_no, line);
    }
    fclose(f);
    if (rc == 0 && c != NULL) {
        fprintf(stderr, "parity: %s: last case has no 'end'\n", path);
        rc = -1;
    }
    if (rc == 0 && m->n_cases == 0) {
        fprintf(stderr, "parity: %s: no cases\n", path);
        rc = -1;
    }
    if (rc != 0) parity_manifest_free(m);
    return rc;
}

void parity_manifest_free(parity_manifest *m)
{
    free(m->cases);
    free(m->defaults);
    memset(m, 0, sizeof *m);
}

/* Reads exactly `bytes` from dir/case.suffix into a new buffer. */
static void *read_exact(const parity_manifest *m, const parity_case *c,
                        const char *suffix, size_t bytes)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s.%s", m->dir, c->name, suffix);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "parity: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    void *buf = malloc(bytes ? bytes : 1);
    bool ok = buf && fread(buf, 1, bytes, f) == bytes && fgetc(f) == EOF;
    fclose(f);
    if (!ok) {
        fprintf(stderr, "parity: %s does not hold exactly %zu bytes\n", path, bytes);
        free(buf);
        return NULL;
    }
    return buf;
}

static size_t state_elem_size(const case_state *s)
{
    return s->dtype == OPTIMD_DTYPE_F64 ? 8 : 4;
}

int case_data_load(const parity_manifest *m, const parity_case *c, case_data *d)
{
    memset(d, 0, sizeof *d);
    d->lr = read_exact(m, c, "lr.bin", (size_t)(c->steps + 1) * sizeof(double));
    if (!d->lr) return -1;
    if (c->optimizer[0] == '\0') return 0; /* scheduler-only case */
    size_t one_step = (size_t)c->total_numel * c->elem_size;
    d->init = read_exact(m, c, "init.bin", one_step);
    d->grad = read_exact(m, c, "grad.bin", one_step * (size_t)c->steps);
    d->expect = read_exact(m, c, "expect.bin", one_step * (size_t)c->steps);
    size_t state_bytes = 0;
    for (int i = 0; i < c->n_states; i++)
        state_bytes += (size_t)c->states[i].numel * state_elem_size(&c->states[i]);
    d->state = read_exact(m, c, "state.bin", state_bytes);
    if (!d->init || !d->grad || !d->expect || !d->state) {
        case_data_free(d);
        return -1;
    }
    return 0;
}

void case_data_free(case_data *d)
{
    free(d->init);
    free(d->grad);
    free(d->expect);
    free(d->lr);
    free(d->state);
    memset(d, 0, sizeof *d);
}

static size_t param_offset(const parity_case *c, int param)
{
    int64_t offset = 0;
    for (int i = 0; i < param; i++) offset += c->params[i].numel;
    return (size_t)offset * c->elem_size;
}

void *case_init(const parity_case *c, const case_data *d, int param)
{
    return (char *)d->init + param_offset(c, param);
}

void *case_grad(const parity_case *c, const case_data *d, int step, int param)
{
    size_t one_step = (size_t)c->total_numel * c->elem_size;
    return (char *)d->grad + (size_t)(step - 1) * one_step + param_offset(c, param);
}

void *case_expect(const parity_case *c, const case_data *d, int step, int param)
{
    size_t one_step = (size_t)c->total_numel * c->elem_size;
    return (char *)d->expect + (size_t)(step - 1) * one_step + param_offset(c, param);
}

void *case_state_data(const parity_case *c, const case_data *d, int index)
{
    size_t offset = 0;
    for (int i = 0; i < index; i++)
        offset += (size_t)c->states[i].numel * state_elem_size(&c->states[i]);
    return (char *)d->state + offset;
}

/* Maps IEEE bits (sign-magnitude) onto a line where neighbouring
 * representable values are neighbouring integers. */
static int64_t ordered_f32(uint32_t bits)
{
    return (bits & 0x80000000u) ? -(int64_t)(bits & 0x7fffffffu) : (int64_t)bits;
}

static int64_t ordered_f64(uint64_t bits)
{
    int64_t magnitude = (int64_t)(bits & 0x7fffffffffffffffull);
    return (bits >> 63) ? -magnitude : magnitude;
}

static uint64_t distance(int64_t a, int64_t b)
{
    return a > b ? (uint64_t)a - (uint64_t)b : (uint64_t)b - (uint64_t)a;
}

uint64_t ulp_distance_f64(double a, double b)
{
    uint64_t ba, bb;
    memcpy(&ba, &a, sizeof ba);
    memcpy(&bb, &b, sizeof bb);
    return distance(ordered_f64(ba), ordered_f64(bb));
}

bool compare_bits(const void *got, const void *want, int64_t n, int dtype,
                  bit_compare *out)
{
    memset(out, 0, sizeof *out);
    out->first_index = -1;
    for (int64_t i = 0; i < n; i++) {
        uint64_t ulp;
        double g, w;
        bool same;
        if (dtype == OPTIMD_DTYPE_F32) {
            uint32_t bg, bw;
            memcpy(&bg, (const char *)got + 4 * i, 4);
            memcpy(&bw, (const char *)want + 4 * i, 4);
            same = bg == bw;
            if (same) continue;
            ulp = distance(ordered_f32(bg), ordered_f32(bw));
            float fg, fw;
            memcpy(&fg, &bg, 4);
            memcpy(&fw, &bw, 4);
            g = fg;
            w = fw;
        } else {
            uint64_t bg, bw;
            memcpy(&bg, (const char *)got + 8 * i, 8);
            memcpy(&bw, (const char *)want + 8 * i, 8);
            same = bg == bw;
            if (same) continue;
            ulp = distance(ordered_f64(bg), ordered_f64(bw));
            memcpy(&g, &bg, 8);
            memcpy(&w, &bw, 8);
        }
        if (out->mismatches++ == 0) {
            out->first_index = i;
            out->first_got = g;
            out->first_want = w;
            out->first_ulp = ulp;
        }
        if (ulp > out->max_ulp) out->max_ulp = ulp;
    }
    return out->mismatches == 0;
}
