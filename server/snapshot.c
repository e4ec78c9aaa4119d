#include "snapshot.h"

#include "hparams.h"
#include "json.h"
#include "log.h"
#include "sliced_step.h"
#include "workers.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SNAPSHOT_FORMAT 1

static const char *st_dtype(uint32_t dtype) { return dtype == OPTIMD_DTYPE_F64 ? "F64" : "F32"; }


static void write_number(FILE *f, double v)
{
    /* %.17g round-trips every double; JSON has no inf/NaN (never stored:
     * hyperparameters and lrs are finite). */
    fprintf(f, "%.17g", isfinite(v) ? v : 0.0);
}

static void write_hparams(FILE *f, const plugin *p, const double *values)
{
    fputc('{', f);
    for (uint32_t i = 0; i < p->n_hparams; i++) {
        if (i) fputc(',', f);
        json_write_string(f, p->hparams[i].key, strlen(p->hparams[i].key));
        fputc(':', f);
        write_number(f, values[i]);
    }
    fputc('}', f);
}

/* A group's keys, each preceded by a comma. */
static void write_group(FILE *f, const session *s, const param_group *g)
{
    fputs(",\"scheduler\":", f);
    if (g->combine != SCHED_ONE) fprintf(f, "\"%s\"", sched_combine_name(g->combine));
    else if (g->sched) json_write_string(f, g->sched->desc->id, strlen(g->sched->desc->id));
    else fputs("null", f);
    if (g->combine != SCHED_ONE) {
        fputs(",\"schedulers\":[", f);
        for (uint32_t k = 0; k < g->n_parts; k++) {
            fputs(k ? ",{\"scheduler\":" : "{\"scheduler\":", f);
            json_write_string(f, g->parts[k]->desc->id, strlen(g->parts[k]->desc->id));
            fputs(",\"sched_hparams\":", f);
            write_hparams(f, g->parts[k], g->part_hp[k]);
            fputc('}', f);
        }
        fputs("],\"milestones\":[", f);
        for (uint32_t k = 0; g->combine == SCHED_SEQUENTIAL && k + 1 < g->n_parts; k++)
            fprintf(f, "%s%lld", k ? "," : "", (long long)g->milestones[k]);
        fputc(']', f);
    }
    fputs(",\"hparams\":", f);
    write_hparams(f, s->opt, g->hp);
    fputs(",\"sched_hparams\":", f);
    if (g->sched) write_hparams(f, g->sched, g->sched_hp);
    else fputs("{}", f);
    fputs(",\"base_lr\":", f);
    write_number(f, g->base_lr);
    fputs(",\"lr\":", f);
    write_number(f, g->lr);
    fprintf(f, ",\"observed\":%llu,\"sched_state\":[", (unsigned long long)g->observed);
    for (uint32_t i = 0; g->sched && i < g->sched->n_sched_state; i++) {
        if (i) fputc(',', f);
        /* %.17g round-trips; the JSON reader takes the inf/nan spellings a
         * plateau's "best" may hold. */
        if (isfinite(g->sched_state[i])) fprintf(f, "%.17g", g->sched_state[i]);
        else fputs(isnan(g->sched_state[i]) ? "\"nan\"" : g->sched_state[i] > 0 ? "\"inf\"" : "\"-inf\"", f);
    }
    fputc(']', f);
}

static void write_manifest(FILE *f, const session *s, const bool *keep)
{
    fprintf(f, "{\"format\":%d,\"session\":", SNAPSHOT_FORMAT);
    json_write_string(f, s->name, strlen(s->name));
    fputs(",\"token\":", f);
    json_write_string(f, s->token, strlen(s->token));
    if (s->open_key[0]) {
        fputs(",\"open_key\":", f);
        json_write_string(f, s->open_key, strlen(s->open_key));
    }
    fputs(",\"optimizer\":", f);
    json_write_string(f, s->opt->desc->id, strlen(s->opt->desc->id));
    fputs(",\"optimizer_version\":", f);
    json_write_string(f, s->opt->desc->version, strlen(s->opt->desc->version));
    /* The default group at the top level (as format 1 always had it), the
     * others in "groups". */
    write_group(f, s, &s->groups[0]);
    fputs(",\"groups\":[", f);
    for (uint32_t gi = 1; gi < s->n_groups; gi++) {
        fputs(gi > 1 ? ",{\"name\":" : "{\"name\":", f);
        json_write_string(f, s->groups[gi].name, strlen(s->groups[gi].name));
        write_group(f, s, &s->groups[gi]);
        fputc('}', f);
    }
    fputc(']', f);
    if (s->lookahead_k) {
        fprintf(f, ",\"lookahead\":{\"k\":%u,\"alpha\":", s->lookahead_k);
        write_number(f, s->lookahead_alpha);
        fputc('}', f);
    }
    if (s->workers) {
        /* Members by rank ("" a free rank): the rank orders a sync round's sum. */
        const worker_set *ws = s->workers;
        fprintf(f, ",\"workers\":{\"mode\":\"%s\",\"count\":%u,\"reduce\":\"%s\",\"on_timeout\":\"%s\","
                "\"timeout_ms\":%u,\"max_staleness\":%u,\"members\":[", worker_mode_name(ws->cfg.mode),
                ws->cfg.count, ws->cfg.sum ? "sum" : "mean", ws->cfg.proceed ? "proceed" : "fail",
                ws->cfg.timeout_ms, ws->cfg.max_staleness);
        for (uint32_t i = 0; i < ws->cap; i++) {
            if (i) fputc(',', f);
            json_write_string(f, ws->w[i].name, strlen(ws->w[i].name));
        }
        fputs("]}", f);
    }
    fprintf(f, ",\"steps\":%llu,\"version\":%llu,\"durability\":%d,\"clients\":[", (unsigned long long)s->steps,
            (unsigned long long)s->version, s->durability);
    for (size_t i = 0; i < s->n_clients; i++) {
        const client_seq *c = &s->clients[i];
        fputs(i ? ",{\"client\":" : "{\"client\":", f);
        json_write_string(f, c->client, strlen(c->client));
        fprintf(f, ",\"seq\":%llu,\"steps\":%llu,\"lr\":", (unsigned long long)c->seq,
                (unsigned long long)c->steps);
        write_number(f, c->lr);
        fputs(",\"next_lr\":", f);
        write_number(f, c->next_lr);
        fputc('}', f);
    }
    fputs("],\"params\":[", f);
    bool first = true;
    for (size_t i = 0; i < s->n_params; i++) {
        const param *p = &s->params[i];
        if (keep && !keep[i]) continue;
        if (!first) fputc(',', f);
        first = false;
        fputs("{\"name\":", f);
        json_write_string(f, s->names[i], strlen(s->names[i]));
        fprintf(f, ",\"steps\":%llu,\"group\":%u}", (unsigned long long)p->steps, p->group);
    }
    fputc(']', f);
    /* A selection (export) is never taken while a step is pending. */
    if (!keep) sliced_step_write_manifest(f, s);
    fputc('}', f);
}

static void write_entry(FILE *f, bool *first, const char *prefix, const char *name, const char *slot,
                        uint32_t dtype, uint32_t ndim, const int64_t *shape, size_t *offset, size_t bytes)
{
    if (!*first) fputc(',', f);
    *first = false;
    /* The tensor name is prefix + name [+ "/" + slot], escaped as one string. */
    size_t len = strlen(prefix) + strlen(name) + (slot ? strlen(slot) + 1 : 0);
    char *full = malloc(len + 1);
    if (!full) return;
    snprintf(full, len + 1, "%s%s%s%s", prefix, name, slot ? "/" : "", slot ? slot : "");
    json_write_string(f, full, len);
    free(full);
    fprintf(f, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype(dtype));
    for (uint32_t d = 0; d < ndim; d++) fprintf(f, "%s%lld", d ? "," : "", (long long)shape[d]);
    fprintf(f, "],\"data_offsets\":[%zu,%zu]}", *offset, *offset + bytes);
    *offset += bytes;
}

int snapshot_write(const session *s, FILE *f) { return snapshot_write_some(s, NULL, f); }

int snapshot_write_some(const session *s, const bool *keep, FILE *f)
{
    char *header = NULL;
    size_t header_len = 0;
    FILE *h = open_memstream(&header, &header_len);
    if (!h) return -1;
    const optimd_optimizer *o = s->opt->desc->optimizer;
    fputs("{\"__metadata__\":{\"optimd\":", h);
    char *manifest = NULL;
    size_t manifest_len = 0;
    FILE *m = open_memstream(&manifest, &manifest_len);
    if (!m) {
        fclose(h);
        free(header);
        return -1;
    }
    write_manifest(m, s, keep);
    fclose(m);
    json_write_string(h, manifest, manifest_len);
    free(manifest);
    fputc('}', h);
    bool first = false;
    size_t offset = 0;
    for (size_t i = 0; i < s->n_params; i++) {
        const param *p = &s->params[i];
        if (keep && !keep[i]) continue;
        write_entry(h, &first, "param/", s->names[i], NULL, p->dtype, p->ndim, p->shape, &offset, p->nbytes);
        for (uint32_t k = 0; p->slots && k < o->n_slots; k++) {
            if (!p->slots[k]) continue;
            slot_layout l;
            session_slot_layout(s, p, k, &l);
            write_entry(h, &first, "state/", s->names[i], o->slots[k].key, l.dtype, l.ndim, l.shape,
                        &offset, l.nbytes);
        }
        if (p->slow)
            write_entry(h, &first, "lookahead/", s->names[i], NULL, p->dtype, p->ndim, p->shape, &offset,
                        p->nbytes);
    }
    fputc('}', h);
    fclose(h);
    /* Padded with spaces so the data section starts 8-aligned, as
     * safetensors writers keep it. */
    size_t padded = (header_len + 7) / 8 * 8;
    unsigned char len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int rc = 0;
    if (fwrite(len_le, 1, 8, f) != 8 || fwrite(header, 1, header_len, f) != header_len) rc = -1;
    for (size_t i = header_len; rc == 0 && i < padded; i++)
        if (fputc(' ', f) == EOF) rc = -1;
    free(header);
    for (size_t i = 0; rc == 0 && i < s->n_params; i++) {
        const param *p = &s->params[i];
        if (keep && !keep[i]) continue;
        if (p->nbytes && fwrite(p->data, 1, p->nbytes, f) != p->nbytes) rc = -1;
        for (uint32_t k = 0; rc == 0 && p->slots && k < o->n_slots; k++) {
            if (!p->slots[k]) continue;
            slot_layout l;
            session_slot_layout(s, p, k, &l);
            size_t bytes = l.nbytes;
            if (bytes && fwrite(p->slots[k], 1, bytes, f) != bytes) rc = -1;
        }
        if (rc == 0 && p->slow && p->nbytes && fwrite(p->slow, 1, p->nbytes, f) != p->nbytes) rc = -1;
    }
    return rc;
}

/* ------------------------------------------------------------- reading -- */

typedef struct reader {
    const unsigned char *data;   /* the tensor data section */
    size_t data_len;
    const json_value *header;
    char *why;
    size_t why_cap;
    const plugin **held;         /* plugins looked up, each with a reference */
    size_t n_held;
} reader;

/* The current version of a plugin, kept alive while the reader works (the
 * session it builds takes references of its own). */
static const plugin *reader_get(reader *r, plugin_registry *reg, const char *id, size_t len)
{
    plugin *p = plugin_registry_get(reg, id, len);
    if (!p) return NULL;
    const plugin **grown = realloc(r->held, (r->n_held + 1) * sizeof *grown);
    if (!grown) {
        plugin_unref(p);
        return NULL;
    }
    r->held = grown;
    r->held[r->n_held++] = p;
    return p;
}

static int why(reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int why(reader *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, r->why_cap, fmt, ap);
    va_end(ap);
    return -1;
}

/* Finds tensor `key` with the expected dtype and element count. */
static const void *find_tensor(reader *r, const char *key, uint32_t dtype, int64_t numel, int64_t *shape_out,
                               uint32_t *ndim_out)
{
    const json_value *t = json_get(r->header, key);
    if (!t) return NULL;
    const char *dt;
    const json_value *shape = json_get(t, "shape");
    const json_value *offs = json_get(t, "data_offsets");
    if (!json_get_string(t, "dtype", &dt) || !shape || shape->type != JSON_ARRAY || shape->count > WIRE_MAX_DIMS ||
        !offs || offs->type != JSON_ARRAY || offs->count != 2) {
        why(r, "tensor '%s' has a malformed entry", key);
        return NULL;
    }
    uint32_t got_dtype = strcmp(dt, "F32") == 0 ? OPTIMD_DTYPE_F32 : strcmp(dt, "F64") == 0 ? OPTIMD_DTYPE_F64 : 0;
    int64_t n = 1;
    for (size_t d = 0; d < shape->count; d++) {
        double v = shape->items[d].number;
        if (shape->items[d].type != JSON_NUMBER || v < 0 || v > 1e15 || v != floor(v)) {
            why(r, "tensor '%s' has a bad shape", key);
            return NULL;
        }
        if (shape_out) shape_out[d] = (int64_t)v;
        n *= (int64_t)v;
    }
    if (ndim_out) *ndim_out = (uint32_t)shape->count;
    double b = offs->items[0].number, e = offs->items[1].number;
    if (!got_dtype || (dtype && got_dtype != dtype) || (numel >= 0 && n != numel) || b < 0 || e < b ||
        e > (double)r->data_len || (size_t)(e - b) != (size_t)n * wire_dtype_size(got_dtype)) {
        why(r, "tensor '%s' has the wrong dtype, size or offsets", key);
        return NULL;
    }
    if (dtype == 0 && ndim_out) *ndim_out |= got_dtype << 16;
    return r->data + (size_t)b;
}

static int restore_hparams(reader *r, const plugin *p, const json_value *stored, double *values)
{
    for (uint32_t i = 0; i < p->n_hparams; i++) {
        double v;
        if (json_get_number(stored, p->hparams[i].key, &v)) values[i] = v;
        else if (p->hparams[i].flags & OPTIMD_HP_REQUIRED)
            return why(r, "hyperparameter '%s' of %s is missing", p->hparams[i].key, p->desc->id);
    }
    request_error err = {0};
    if (hparams_validate(p, values, &err)) return why(r, "%s", err.message);
    return 0;
}

/* A scheduler id stored as a string or null ("sequential" and "chained"
 * leave *out NULL: restore_composite reads them). */
static int stored_scheduler(reader *r, plugin_registry *reg, const json_value *v, const plugin **out)
{
    *out = NULL;
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_STRING) return why(r, "a stored scheduler is not a string");
    if (strcmp(v->string, "sequential") == 0 || strcmp(v->string, "chained") == 0) return 0;
    *out = reader_get(r, reg, v->string, v->string_len);
    if (!*out || (*out)->desc->kind != OPTIMD_KIND_SCHEDULER)
        return why(r, "scheduler plugin '%s' is not loaded", v->string);
    return 0;
}

/* A combined schedule's parts, as write_group stored them. */
static int restore_composite(reader *r, plugin_registry *reg, param_group *g, const json_value *stored)
{
    const char *id;
    if (!json_get_string(stored, "scheduler", &id)) return 0;
    int combine = strcmp(id, "sequential") == 0 ? SCHED_SEQUENTIAL : strcmp(id, "chained") == 0 ? SCHED_CHAINED
                                                                                                 : SCHED_ONE;
    if (combine == SCHED_ONE) return 0;
    const json_value *parts = json_get(stored, "schedulers"), *ms = json_get(stored, "milestones");
    if (!parts || parts->type != JSON_ARRAY || parts->count < 2 || parts->count > SCHED_MAX_PARTS || !ms ||
        ms->type != JSON_ARRAY || ms->count != (combine == SCHED_SEQUENTIAL ? parts->count - 1 : 0))
        return why(r, "group '%s': a malformed combined schedule", g->name);
    const plugin *plugins[SCHED_MAX_PARTS];
    int64_t milestones[SCHED_MAX_PARTS - 1] = {0};
    for (size_t k = 0; k < parts->count; k++)
        if (stored_scheduler(r, reg, json_get(&parts->items[k], "scheduler"), &plugins[k]) || !plugins[k])
            return r->why[0] ? -1 : why(r, "group '%s': part %zu of its schedule is missing", g->name, k);
    for (size_t k = 0; k < ms->count; k++) {
        if (ms->items[k].type != JSON_NUMBER) return why(r, "group '%s': a milestone is not a number", g->name);
        milestones[k] = (int64_t)ms->items[k].number;
    }
    request_error err = {0};
    if (session_set_composite(g, combine, plugins, (uint32_t)parts->count, milestones, &err))
        return why(r, "%s", err.message);
    for (size_t k = 0; k < parts->count; k++)
        if (restore_hparams(r, plugins[k], json_get(&parts->items[k], "sched_hparams"), g->part_hp[k])) return -1;
    return 0;
}

/* A group's stored settings (the keys write_group wrote) into `g`. */
static int restore_group(reader *r, plugin_registry *reg, const session *s, param_group *g,
                         const json_value *stored)
{
    if (restore_composite(r, reg, g, stored)) return -1;
    double base_lr, lr, observed = 0;
    if (!json_get_number(stored, "base_lr", &base_lr) || !json_get_number(stored, "lr", &lr))
        return why(r, "group '%s' lacks base_lr or lr", g->name);
    if (restore_hparams(r, s->opt, json_get(stored, "hparams"), g->hp) ||
        (g->sched && restore_hparams(r, g->sched, json_get(stored, "sched_hparams"), g->sched_hp)))
        return -1;
    g->base_lr = base_lr;
    g->lr = lr;
    json_get_number(stored, "observed", &observed);
    g->observed = (uint64_t)observed;
    const json_value *state = json_get(stored, "sched_state");
    uint32_t want = g->sched ? g->sched->n_sched_state : 0;
    if (state && state->type == JSON_ARRAY) {
        if (state->count != want)
            return why(r, "group '%s': %zu scheduler state values, %s declares %u", g->name, state->count,
                       g->sched ? g->sched->desc->id : "no scheduler", want);
        for (size_t i = 0; i < state->count; i++) {
            const json_value *v = &state->items[i];
            if (v->type == JSON_NUMBER) g->sched_state[i] = v->number;
            else if (v->type == JSON_STRING && strcmp(v->string, "nan") == 0) g->sched_state[i] = NAN;
            else if (v->type == JSON_STRING && strcmp(v->string, "inf") == 0) g->sched_state[i] = INFINITY;
            else if (v->type == JSON_STRING && strcmp(v->string, "-inf") == 0) g->sched_state[i] = -INFINITY;
            else return why(r, "group '%s': scheduler state value %zu is not a number", g->name, i);
        }
    } else if (want) {
        return why(r, "group '%s' lacks its scheduler state", g->name);
    }
    return 0;
}

/* The workers' settings and members, each at its rank. */
static int restore_workers(session *s, const json_value *wk, reader *r)
{
    worker_config cfg = {0};
    const char *mode, *reduce, *on_timeout;
    double count, timeout, staleness;
    const json_value *members = json_get(wk, "members");
    if (!json_get_string(wk, "mode", &mode) || !json_get_string(wk, "reduce", &reduce) ||
        !json_get_string(wk, "on_timeout", &on_timeout) || !json_get_number(wk, "count", &count) ||
        !json_get_number(wk, "timeout_ms", &timeout) || !json_get_number(wk, "max_staleness", &staleness) ||
        !members || members->type != JSON_ARRAY || count < 1 || count > WORKERS_MAX || timeout < 1 ||
        timeout > UINT32_MAX || staleness < 0 || staleness > UINT32_MAX || members->count != (size_t)count)
        return why(r, "the manifest's workers are malformed");
    for (int m = WORKERS_SYNC; m <= WORKERS_BOUNDED; m++)
        if (strcmp(mode, worker_mode_name(m)) == 0) cfg.mode = m;
    if (!cfg.mode) return why(r, "the manifest's workers have an unknown mode '%.16s'", mode);
    cfg.count = (uint32_t)count;
    cfg.sum = strcmp(reduce, "sum") == 0;
    cfg.proceed = strcmp(on_timeout, "proceed") == 0;
    cfg.timeout_ms = (uint32_t)timeout;
    cfg.max_staleness = (uint32_t)staleness;
    if (!(s->workers = worker_set_create(&cfg))) return why(r, "out of memory");
    for (size_t i = 0; i < members->count; i++) {
        const json_value *m = &members->items[i];
        if (m->type != JSON_STRING || m->string_len > WORKER_NAME_MAX || strlen(m->string) != m->string_len)
            return why(r, "the manifest's workers are malformed");
        if (!m->string_len) continue;
        memcpy(s->workers->w[i].name, m->string, m->string_len);
        s->workers->w[i].seen_steps = s->steps;
        s->workers->joined++;
    }
    return 0;
}

static session *restore(reader *r, const json_value *man, plugin_registry *reg, const char *rename_to)
{
    const char *name, *token, *opt_id, *opt_version;
    double format, steps;
    const json_value *sched_v = json_get(man, "scheduler");
    const json_value *params = json_get(man, "params");
    if (!json_get_number(man, "format", &format) || format != SNAPSHOT_FORMAT ||
        !json_get_string(man, "session", &name) || !json_get_string(man, "token", &token) ||
        !json_get_string(man, "optimizer", &opt_id) || !json_get_string(man, "optimizer_version", &opt_version) ||
        !json_get_number(man, "steps", &steps) || !sched_v || !params || params->type != JSON_ARRAY ||
        strlen(name) > SESSION_NAME_MAX || strlen(token) != SESSION_TOKEN_LEN) {
        why(r, "the manifest lacks a key or has one of the wrong type");
        return NULL;
    }
    if (rename_to) name = rename_to;
    const plugin *opt = reader_get(r, reg, opt_id, strlen(opt_id));
    const plugin *sched = NULL;
    if (!opt || opt->desc->kind != OPTIMD_KIND_OPTIMIZER) {
        why(r, "optimizer plugin '%s' is not loaded", opt_id);
        return NULL;
    }
    if (strcmp(opt->desc->version, opt_version) != 0)
        log_warn("session %s was saved with %s %s; continuing with %s (state carried by slot key)", name,
                 opt_id, opt_version, opt->desc->version);
    if (stored_scheduler(r, reg, sched_v, &sched)) return NULL;
    request_error err = {0};
    session *s = session_restore(name, token, opt, sched, &err);
    if (!s) {
        why(r, "%s", err.message);
        return NULL;
    }
    if (restore_group(r, reg, s, &s->groups[0], man)) goto fail_out;
    const json_value *groups = json_get(man, "groups");
    for (size_t gi = 0; groups && groups->type == JSON_ARRAY && gi < groups->count; gi++) {
        const json_value *gv = &groups->items[gi];
        const char *gname;
        const plugin *gsched;
        if (!json_get_string(gv, "name", &gname) || stored_scheduler(r, reg, json_get(gv, "scheduler"), &gsched)) {
            if (!r->why[0]) why(r, "group entry %zu is malformed", gi);
            goto fail_out;
        }
        param_group *g = session_restore_group(s, gname, gsched, &err);
        if (!g) {
            why(r, "%s", err.message);
            goto fail_out;
        }
        if (restore_group(r, reg, s, g, gv)) goto fail_out;
    }
    const char *open_key;
    if (json_get_string(man, "open_key", &open_key) && strlen(open_key) <= SESSION_OPEN_KEY_MAX)
        snprintf(s->open_key, sizeof s->open_key, "%s", open_key);
    s->steps = (uint64_t)steps;
    double version, durability;
    const json_value *clients = json_get(man, "clients");
    if (!json_get_number(man, "version", &version) || !json_get_number(man, "durability", &durability) ||
        durability < DURABILITY_NONE || durability > DURABILITY_ALWAYS || !clients || clients->type != JSON_ARRAY) {
        why(r, "the manifest lacks version, durability or clients");
        goto fail_out;
    }
    s->durability = (int)durability;
    for (size_t i = 0; i < clients->count; i++) {
        const json_value *e = &clients->items[i];
        const json_value *id = json_get(e, "client");
        double seq, csteps, clr, cnext;
        if (!id || id->type != JSON_STRING || id->string_len > CLIENT_ID_MAX || !json_get_number(e, "seq", &seq) ||
            !json_get_number(e, "steps", &csteps) || !json_get_number(e, "lr", &clr) ||
            !json_get_number(e, "next_lr", &cnext)) {
            why(r, "client entry %zu is malformed", i);
            goto fail_out;
        }
        client_seq *c = session_client(s, id->string, id->string_len, true);
        if (!c) {
            why(r, "out of memory");
            goto fail_out;
        }
        c->seq = (uint64_t)seq;
        c->steps = (uint64_t)csteps;
        c->lr = clr;
        c->next_lr = cnext;
    }
    const json_value *la = json_get(man, "lookahead");
    if (la && la->type == JSON_OBJECT) {
        double k, alpha;
        if (!json_get_number(la, "k", &k) || !json_get_number(la, "alpha", &alpha) || k < 1 || k > UINT32_MAX ||
            !(alpha > 0 && alpha <= 1)) {
            why(r, "the manifest's lookahead is malformed");
            goto fail_out;
        }
        s->lookahead_k = (uint32_t)k;
        s->lookahead_alpha = alpha;
    }
    const json_value *wk = json_get(man, "workers");
    if (wk && wk->type == JSON_OBJECT && restore_workers(s, wk, r)) goto fail_out;
    const optimd_optimizer *o = opt->desc->optimizer;
    char key[PARAM_NAME_MAX + 80];
    for (size_t i = 0; i < params->count; i++) {
        const char *pname;
        double psteps;
        if (!json_get_string(&params->items[i], "name", &pname) ||
            !json_get_number(&params->items[i], "steps", &psteps)) {
            why(r, "parameter entry %zu is malformed", i);
            goto fail_out;
        }
        snprintf(key, sizeof key, "param/%s", pname);
        int64_t shape[WIRE_MAX_DIMS];
        uint32_t ndim_dtype = 0;
        const void *data = find_tensor(r, key, 0, -1, shape, &ndim_dtype);
        if (!data) {
            if (!r->why[0]) why(r, "tensor '%s' is missing", key);
            goto fail_out;
        }
        uint32_t dtype = ndim_dtype >> 16, ndim = ndim_dtype & 0xffff;
        if (session_append_param(s, pname, strlen(pname), dtype, ndim, shape, data)) {
            why(r, "out of memory");
            goto fail_out;
        }
        param *p = &s->params[s->n_params - 1];
        p->steps = (uint64_t)psteps;
        double pgroup = 0;
        json_get_number(&params->items[i], "group", &pgroup);
        if (pgroup < 0 || pgroup >= s->n_groups) {
            why(r, "parameter '%s' is in group %g of %u", pname, pgroup, s->n_groups);
            goto fail_out;
        }
        p->group = (uint32_t)pgroup;
        if (p->steps == 0 && !sliced_step_manifest_touches(json_get(man, "pending_step"), pname)) continue;
        if (s->lookahead_k) {
            snprintf(key, sizeof key, "lookahead/%s", pname);
            const void *slow = find_tensor(r, key, p->dtype, p->numel, NULL, NULL);
            if (!slow) {
                if (!r->why[0]) why(r, "tensor '%s' (lookahead's slow weights) is missing", key);
                goto fail_out;
            }
            if (session_ensure_slow(s, p)) {
                why(r, "out of memory");
                goto fail_out;
            }
            memcpy(p->slow, slow, p->nbytes);
        }
        if (session_ensure_slots(s, p)) {
            why(r, "out of memory");
            goto fail_out;
        }
        for (uint32_t k = 0; k < o->n_slots; k++) {
            if (!p->slots[k]) continue;
            snprintf(key, sizeof key, "state/%s/%s", pname, o->slots[k].key);
            slot_layout l;
            session_slot_layout(s, p, k, &l);
            const void *slot = find_tensor(r, key, l.dtype, l.numel, NULL, NULL);
            if (slot) {
                memcpy(p->slots[k], slot, l.nbytes);
            } else if (r->why[0]) {
                goto fail_out;
            } else {
                /* A slot the saving plugin did not have starts from zero,
                 * as it would on a first step. */
                log_warn("session %s: no '%s' in the snapshot; it starts zero-filled", name, key);
            }
        }
    }
    if (sliced_step_restore(s, json_get(man, "pending_step"), r->why, r->why_cap)) goto fail_out;
    s->version = s->saved_version = (uint64_t)version;
    return s;
fail_out:
    session_unref(s);
    return NULL;
}

session *snapshot_parse(const unsigned char *buf, size_t size, plugin_registry *reg,
                        const char *rename_to, char *why_buf, size_t why_cap)
{
    why_buf[0] = '\0';
    reader r = {.why = why_buf, .why_cap = why_cap};
    if (size < 8) {
        why(&r, "too short to be a snapshot");
        return NULL;
    }
    session *s = NULL;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | buf[i];
    json_value *header = NULL, *manifest = NULL;
    char jerr[128];
    if (header_len > size - 8) {
        why(&r, "header length %llu exceeds the file", (unsigned long long)header_len);
        goto out;
    }
    header = json_parse((const char *)buf + 8, header_len, jerr, sizeof jerr);
    if (!header) {
        why(&r, "header is not JSON: %s", jerr);
        goto out;
    }
    const json_value *meta = json_get(header, "__metadata__");
    const char *manifest_text;
    if (!json_get_string(meta, "optimd", &manifest_text)) {
        why(&r, "no optimd manifest in __metadata__");
        goto out;
    }
    manifest = json_parse(manifest_text, json_get(meta, "optimd")->string_len, jerr, sizeof jerr);
    if (!manifest) {
        why(&r, "manifest is not JSON: %s", jerr);
        goto out;
    }
    r.header = header;
    r.data = buf + 8 + header_len;
    r.data_len = size - 8 - header_len;
    s = restore(&r, manifest, reg, rename_to);
out:
    for (size_t i = 0; i < r.n_held; i++) plugin_unref(r.held[i]);
    free(r.held);
    json_free(manifest);
    json_free(header);
    return s;
}

session *snapshot_read(const char *path, plugin_registry *reg, char *why_buf, size_t why_cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why_buf, why_cap, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 8) {
        close(fd);
        snprintf(why_buf, why_cap, "too short to be a snapshot");
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    unsigned char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(why_buf, why_cap, "cannot map: %s", strerror(errno));
        return NULL;
    }
    session *s = snapshot_parse(map, size, reg, NULL, why_buf, why_cap);
    munmap(map, size);
    return s;
}
