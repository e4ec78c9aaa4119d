/* Hot swap: a session moving to another version of its plugins, or to
 * another optimizer (the switch op), hyperparameters and state carried by
 * key, or converted by the new plugin's migrate hook. */
#include "session.h"

#include "hparams.h"
#include "host.h"
#include "log.h"
#include "sliced_step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* `to`'s hyperparameters from `from`'s values by key (same type), the
 * rest at their defaults. */
static void carry_hparams(const plugin *from, const double *old, const plugin *to, double *out)
{
    hparams_defaults(to, out);
    for (uint32_t i = 0; i < to->n_hparams; i++) {
        int j = from ? plugin_hparam_index(from, to->hparams[i].key, strlen(to->hparams[i].key)) : -1;
        if (j >= 0 && from->hparams[j].type == to->hparams[i].type) out[i] = old[j];
    }
}

static bool same_slot_layout(const optimd_slot_def *a, const optimd_slot_def *b)
{
    return a->dtype == b->dtype && a->shape == b->shape;
}

/* The new plugin's migrate hook on one parameter: the old slots as they
 * are, the new ones (copies or zeros) to fill. */
static int run_migrate_hook(session *s, const plugin *to, param *p, void **new_slots, const double *hp,
                            request_error *err)
{
    const optimd_optimizer *fo = s->opt->desc->optimizer, *tn = to->desc->optimizer;
    optimd_tensor *from = calloc(fo->n_slots ? fo->n_slots : 1, sizeof *from);
    optimd_tensor *into = calloc(tn->n_slots ? tn->n_slots : 1, sizeof *into);
    slot_layout *lf = calloc(fo->n_slots ? fo->n_slots : 1, sizeof *lf);
    slot_layout *lt = calloc(tn->n_slots ? tn->n_slots : 1, sizeof *lt);
    const char **keys = calloc(fo->n_slots ? fo->n_slots : 1, sizeof *keys);
    int rc = from && into && lf && lt && keys ? 0 : fail(err, OPTIMD_E_NOMEM, "out of memory");
    for (uint32_t j = 0; rc == 0 && j < fo->n_slots; j++) {
        session_slot_layout(s, p, j, &lf[j]);
        session_slot_view(&from[j], &lf[j], p->slots[j]);
        keys[j] = fo->slots[j].key;
    }
    const plugin *saved = s->opt;
    s->opt = to;
    for (uint32_t k = 0; rc == 0 && k < tn->n_slots; k++) {
        session_slot_layout(s, p, k, &lt[k]);
        session_slot_view(&into[k], &lt[k], new_slots[k]);
    }
    s->opt = saved;
    if (rc == 0) {
        optimd_tensor pv;
        session_tensor_view(&pv, p->dtype, p, p->data);
        optimd_migrate_args a = {.struct_size = sizeof a, .n_hparams = to->n_hparams, .hparams = hp,
                                 .from_id = s->opt->desc->id, .from_version = s->opt->desc->version,
                                 .step = p->steps, .param = &pv, .n_from_slots = fo->n_slots,
                                 .n_slots = tn->n_slots, .from_keys = keys, .from_slots = from, .slots = into};
        host_call hc;
        host_call_begin(&hc, to->desc->id, NULL);
        optimd_status st = to->opt_migrate(&hc.table, &a);
        host_call_end(&hc);
        if (st != OPTIMD_OK)
            rc = fail(err, OPTIMD_E_PLUGIN, "%s %s refuses the state of %s %s: %s", to->desc->id,
                      to->desc->version, s->opt->desc->id, s->opt->desc->version,
                      hc.call.error[0] ? hc.call.error : "migrate failed");
    }
    free(from);
    free(into);
    free(lf);
    free(lt);
    free(keys);
    return rc;
}

int session_migrate_optimizer(session *s, const plugin *to, const msgpack_object *hp_map, migrate_report *rep,
                              request_error *err)
{
    const plugin *from = s->opt;
    const optimd_optimizer *fo = from->desc->optimizer, *tn = to->desc->optimizer;
    if (rep) memset(rep, 0, sizeof *rep);
    if (session_refuse_if_pending(s, "switch", err)) return -1;
    /* Phase 1: everything new is made aside; nothing changes on failure. */
    uint32_t n_hp = to->n_hparams ? to->n_hparams : 1;
    double *hp = calloc((size_t)s->n_groups * n_hp, sizeof *hp);
    void ***slots = calloc(s->n_params ? s->n_params : 1, sizeof *slots);
    int rc = hp && slots ? 0 : fail(err, OPTIMD_E_NOMEM, "out of memory");
    /* State is never silently dropped: a slot that keeps its key but not
     * its layout needs the new plugin's migrate hook. */
    const bool hook = to->opt_migrate != NULL;
    for (uint32_t k = 0; rc == 0 && !hook && k < tn->n_slots; k++)
        for (uint32_t j = 0; j < fo->n_slots; j++)
            if (strcmp(fo->slots[j].key, tn->slots[k].key) == 0 && !same_slot_layout(&fo->slots[j], &tn->slots[k]))
                rc = fail(err, OPTIMD_E_PLUGIN, "state slot '%s' changes its dtype or shape from %s %s to %s %s; "
                          "the session cannot carry it", tn->slots[k].key, from->desc->id, from->desc->version,
                          to->desc->id, to->desc->version);
    for (uint32_t gi = 0; rc == 0 && gi < s->n_groups; gi++) {
        double *g = hp + (size_t)gi * n_hp;
        carry_hparams(from, s->groups[gi].hp, to, g);
        if (hparams_apply(to, hp_map, false, g, NULL, err) || hparams_validate(to, g, err)) rc = -1;
    }
    for (size_t i = 0; rc == 0 && i < s->n_params; i++) {
        param *p = &s->params[i];
        if (!p->slots || tn->n_slots == 0) continue;
        slots[i] = calloc(tn->n_slots, sizeof **slots);
        if (!slots[i]) {
            rc = fail(err, OPTIMD_E_NOMEM, "out of memory");
            break;
        }
        const double *g = hp + (size_t)p->group * n_hp;
        for (uint32_t k = 0; k < tn->n_slots; k++) {
            const optimd_slot_def *d = &tn->slots[k];
            if (d->enabled_by) {
                int h = plugin_hparam_index(to, d->enabled_by, strlen(d->enabled_by));
                if (h < 0 || g[h] == 0.0) continue;
            }
            int carried = -1;
            for (uint32_t j = 0; j < fo->n_slots && carried < 0; j++)
                if (p->slots[j] && strcmp(fo->slots[j].key, d->key) == 0 && same_slot_layout(&fo->slots[j], d))
                    carried = (int)j;
            /* Without a hook a carried slot is taken over in phase 2; with
             * one, the hook works on copies, so that a refusal leaves the
             * old state as it was. */
            if (carried >= 0 && !hook) continue;
            param probe = *p;
            slot_layout l;
            const plugin *saved = s->opt;
            s->opt = to;
            session_slot_layout(s, &probe, k, &l);
            s->opt = saved;
            slots[i][k] = aligned_alloc(64, (l.nbytes + 63) / 64 * 64 + 64);
            if (!slots[i][k]) {
                rc = fail(err, OPTIMD_E_NOMEM, "out of memory");
                break;
            }
            if (carried >= 0) memcpy(slots[i][k], p->slots[carried], l.nbytes);
            else memset(slots[i][k], 0, l.nbytes);   /* as on a first step */
        }
    }
    for (size_t i = 0; rc == 0 && hook && i < s->n_params; i++)
        if (s->params[i].slots && slots[i]) rc = run_migrate_hook(s, to, &s->params[i], slots[i], hp + (size_t)s->params[i].group * n_hp, err);
    if (rc) {
        for (size_t i = 0; i < s->n_params; i++) {
            for (uint32_t k = 0; slots && slots[i] && k < tn->n_slots; k++) free(slots[i][k]);
            if (slots) free(slots[i]);
        }
        free(slots);
        free(hp);
        return -1;
    }
    /* Phase 2: carry slots by key, free the rest, install. */
    for (size_t i = 0; i < s->n_params; i++) {
        param *p = &s->params[i];
        if (!p->slots) continue;
        if (hook) {
            /* The hook filled fresh copies: the old state goes whole. */
            for (uint32_t j = 0; j < fo->n_slots; j++) free(p->slots[j]);
            free(p->slots);
            p->slots = slots[i];
            for (uint32_t k = 0; rep && i == 0 && slots[i] && k < tn->n_slots; k++)
                for (uint32_t j = 0; j < fo->n_slots; j++)
                    if (strcmp(fo->slots[j].key, tn->slots[k].key) == 0 && rep->n_carried < MIGRATE_MAX_KEYS)
                        rep->carried[rep->n_carried++] = tn->slots[k].key;
            continue;
        }
        for (uint32_t k = 0; slots[i] && k < tn->n_slots; k++) {
            for (uint32_t j = 0; j < fo->n_slots && !slots[i][k]; j++) {
                if (!p->slots[j] || strcmp(fo->slots[j].key, tn->slots[k].key) != 0 ||
                    !same_slot_layout(&fo->slots[j], &tn->slots[k]))
                    continue;
                const double *g = hp + (size_t)p->group * n_hp;
                const char *en = tn->slots[k].enabled_by;
                int h = en ? plugin_hparam_index(to, en, strlen(en)) : -1;
                if (en && (h < 0 || g[h] == 0.0)) break;
                slots[i][k] = p->slots[j];
                p->slots[j] = NULL;
                if (rep && i == 0 && rep->n_carried < MIGRATE_MAX_KEYS) rep->carried[rep->n_carried++] = tn->slots[k].key;
            }
        }
        for (uint32_t j = 0; j < fo->n_slots; j++) free(p->slots[j]);
        free(p->slots);
        p->slots = slots[i];
    }
    for (uint32_t gi = 0; gi < s->n_groups; gi++) {
        free(s->groups[gi].hp);
        s->groups[gi].hp = malloc(n_hp * sizeof *hp);
        if (s->groups[gi].hp) memcpy(s->groups[gi].hp, hp + (size_t)gi * n_hp, n_hp * sizeof *hp);
    }
    free(slots);
    free(hp);
    for (uint32_t gi = 0; gi < s->n_groups; gi++)
        if (!s->groups[gi].hp) {
            log_error("session %s: out of memory installing hyperparameters; defaults used", s->name);
            s->groups[gi].hp = calloc(n_hp, sizeof *hp);
            if (s->groups[gi].hp) hparams_defaults(to, s->groups[gi].hp);
        }
    plugin_ref(to);
    s->opt = to;
    plugin_unref(from);
    if (s->stopped[0]) {
        /* Only a session whose parameters are still finite can go on. */
        bool finite = true;
        for (size_t i = 0; finite && i < s->n_params; i++) {
            optimd_tensor v;
            session_tensor_view(&v, s->params[i].dtype, &s->params[i], s->params[i].data);
            finite = session_tensor_finite(&v);
        }
        if (finite) {
            log_info("session %s: %s %s takes over; the stop is lifted", s->name, to->desc->id, to->desc->version);
            s->stopped[0] = '\0';
        } else {
            log_warn("session %s stays stopped: its parameters hold NaN or infinity (import an earlier export "
                     "or close it)", s->name);
        }
    }
    s->momentum_index = plugin_hparam_index(to, "momentum", 8);
    if (s->momentum_index < 0) s->momentum_index = plugin_hparam_index(to, "beta1", 5);
    s->version++;
    return 0;
}

/* A new version of a scheduler plugin takes a group: its hyperparameters
 * by key; its state kept when the new version keeps as many values. */
static int migrate_scheduler(const plugin *from, double **hp, const plugin *to, double *state, request_error *err)
{
    double *fresh = calloc(to->n_hparams ? to->n_hparams : 1, sizeof *fresh);
    if (!fresh) return fail(err, OPTIMD_E_NOMEM, "out of memory");
    carry_hparams(from, *hp, to, fresh);
    if (hparams_validate(to, fresh, err)) {
        free(fresh);
        return -1;
    }
    free(*hp);
    *hp = fresh;
    if (state && from->n_sched_state != to->n_sched_state) memset(state, 0, SCHED_MAX_STATE * sizeof *state);
    return 0;
}

int session_follow_upgrades(session *s, plugin_registry *reg, request_error *err)
{
    int moved = 0;
    /* Every range of a step runs on one version: the move waits for its last part. */
    if (s->pending_step) return 0;
    plugin *cur = plugin_registry_get(reg, s->opt->desc->id, strlen(s->opt->desc->id));
    if (cur && cur != s->opt) {
        /* Copied: the old version may be unloaded by the move. */
        char old_version[64];
        snprintf(old_version, sizeof old_version, "%s", s->opt->desc->version);
        uint64_t old_gen = s->opt->generation;
        if (session_migrate_optimizer(s, cur, NULL, NULL, err) == 0) {
            log_info("session %s: optimizer %s %s (generation %llu) -> %s (generation %llu)", s->name,
                     cur->desc->id, old_version, (unsigned long long)old_gen, cur->desc->version,
                     (unsigned long long)cur->generation);
            moved = 1;
        } else {
            log_warn("session %s stays on %s %s: version %s cannot take it: %s", s->name, cur->desc->id,
                     old_version, cur->desc->version, err->message);
            err->code = 0;
        }
    }
    plugin_unref(cur);
    for (uint32_t gi = 0; gi < s->n_groups; gi++) {
        param_group *g = &s->groups[gi];
        const plugin **slot[SCHED_MAX_PARTS + 1];
        double **hps[SCHED_MAX_PARTS + 1];
        uint32_t n = 0;
        if (g->sched) {
            slot[n] = &g->sched;
            hps[n++] = &g->sched_hp;
        }
        for (uint32_t k = 0; k < g->n_parts; k++) {
            slot[n] = &g->parts[k];
            hps[n++] = &g->part_hp[k];
        }
        for (uint32_t k = 0; k < n; k++) {
            const plugin *old = *slot[k];
            plugin *now = plugin_registry_get(reg, old->desc->id, strlen(old->desc->id));
            if (now && now != old) {
                if (migrate_scheduler(old, hps[k], now, slot[k] == &g->sched ? g->sched_state : NULL, err) == 0) {
                    plugin_ref(now);
                    *slot[k] = now;
                    plugin_unref(old);
                    s->version++;
                    moved = 1;
                } else {
                    log_warn("session %s stays on scheduler %s %s: %s", s->name, old->desc->id,
                             old->desc->version, err->message);
                    err->code = 0;
                }
            }
            plugin_unref(now);
        }
    }
    return moved;
}
