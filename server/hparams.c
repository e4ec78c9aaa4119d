#include "hparams.h"

#include "host.h"
#include "wire.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void hparams_defaults(const plugin *p, double *values)
{
    for (uint32_t i = 0; i < p->n_hparams; i++)
        values[i] = (p->hparams[i].flags & OPTIMD_HP_REQUIRED) ? NAN : p->hparams[i].default_value;
}

static int convert(const optimd_hparam_def *d, const msgpack_object *v, double *out,
                   request_error *err)
{
    switch (d->type) {
    case OPTIMD_HP_BOOL:
        if (v->type != MSGPACK_OBJECT_BOOLEAN)
            return fail(err, OPTIMD_E_BAD_HPARAM, "'%s' must be a bool", d->key);
        *out = v->via.boolean ? 1.0 : 0.0;
        return 0;
    case OPTIMD_HP_INT:
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            *out = (double)v->via.u64;
        else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            *out = (double)v->via.i64;
        else if ((v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32) &&
                 isfinite(v->via.f64) && v->via.f64 == floor(v->via.f64))
            *out = v->via.f64;
        else
            return fail(err, OPTIMD_E_BAD_HPARAM, "'%s' must be an integer", d->key);
        return 0;
    default:
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            *out = (double)v->via.u64;
        else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            *out = (double)v->via.i64;
        else if (v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32)
            *out = v->via.f64;
        else
            return fail(err, OPTIMD_E_BAD_HPARAM, "'%s' must be a number", d->key);
        if (!isfinite(*out)) return fail(err, OPTIMD_E_BAD_HPARAM, "'%s' must be finite", d->key);
        return 0;
    }
}

static int check_range(const optimd_hparam_def *d, double v, request_error *err)
{
    if (d->type == OPTIMD_HP_BOOL) return 0;
    bool low = (d->flags & OPTIMD_HP_MIN_EXCLUSIVE) ? v <= d->min : v < d->min;
    bool high = (d->flags & OPTIMD_HP_MAX_EXCLUSIVE) ? v >= d->max : v > d->max;
    if (low || high)
        return fail(err, OPTIMD_E_BAD_HPARAM, "'%s' = %.17g is outside %s%.17g, %.17g%s", d->key, v,
                    (d->flags & OPTIMD_HP_MIN_EXCLUSIVE) ? "(" : "[", d->min, d->max,
                    (d->flags & OPTIMD_HP_MAX_EXCLUSIVE) ? ")" : "]");
    return 0;
}

int hparams_apply(const plugin *p, const msgpack_object *map, bool only_mutable,
                  double *values, bool *given, request_error *err)
{
    if (!map) return 0;
    uint32_t n = map->via.map.size;
    double *staged = malloc((size_t)(n ? n : 1) * sizeof *staged);
    int *index = malloc((size_t)(n ? n : 1) * sizeof *index);
    if (!staged || !index) {
        free(staged);
        free(index);
        return fail(err, OPTIMD_E_NOMEM, "out of memory");
    }
    int rc = 0;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        const char *key;
        size_t len;
        if ((rc = wire_key(&map->via.map.ptr[i], &key, &len, err))) break;
        int h = plugin_hparam_index(p, key, len);
        if (h < 0) {
            rc = fail(err, OPTIMD_E_UNKNOWN_HPARAM, "plugin '%s' has no hyperparameter '%.*s'",
                      p->desc->id, (int)(len > 64 ? 64 : len), key);
            break;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (index[j] == h) {
                rc = fail(err, OPTIMD_E_BAD_REQUEST, "hyperparameter '%s' given twice",
                          p->hparams[h].key);
                break;
            }
        }
        if (rc) break;
        const optimd_hparam_def *d = &p->hparams[h];
        if (only_mutable && !(d->flags & OPTIMD_HP_MUTABLE)) {
            rc = fail(err, OPTIMD_E_NOT_MUTABLE, "'%s' cannot change while a session runs", d->key);
            break;
        }
        index[i] = h;
        if ((rc = convert(d, &map->via.map.ptr[i].val, &staged[i], err))) break;
        rc = check_range(d, staged[i], err);
    }
    if (rc == 0) {
        for (uint32_t i = 0; i < n; i++) {
            values[index[i]] = staged[i];
            if (given) given[index[i]] = true;
        }
    }
    free(staged);
    free(index);
    return rc;
}

int hparams_validate(const plugin *p, const double *values, request_error *err)
{
    for (uint32_t i = 0; i < p->n_hparams; i++)
        if (isnan(values[i]))
            return fail(err, OPTIMD_E_BAD_HPARAM, "plugin '%s' requires hyperparameter '%s'",
                        p->desc->id, p->hparams[i].key);
    optimd_status (*check)(const optimd_host *, const double *, uint32_t) =
        p->desc->kind == OPTIMD_KIND_OPTIMIZER ? p->desc->optimizer->check_hparams
                                              : p->desc->scheduler->check_hparams;
    if (!check) return 0;
    host_call hc;
    host_call_begin(&hc, p->desc->id, NULL);
    optimd_status st = check(&hc.table, values, p->n_hparams);
    host_call_end(&hc);
    if (st != OPTIMD_OK)
        return fail(err, OPTIMD_E_BAD_HPARAM, "%s: %s", p->desc->id,
                    hc.call.error[0] ? hc.call.error : "hyperparameters rejected");
    return 0;
}

void hparams_pack(msgpack_packer *pk, const plugin *p, const double *values)
{
    msgpack_pack_map(pk, p->n_hparams);
    for (uint32_t i = 0; i < p->n_hparams; i++) {
        wire_pack_str(pk, p->hparams[i].key);
        double v = values[i];
        if (p->hparams[i].type == OPTIMD_HP_BOOL) {
            if (v != 0.0) msgpack_pack_true(pk);
            else msgpack_pack_false(pk);
        } else if (p->hparams[i].type == OPTIMD_HP_INT) {
            msgpack_pack_int64(pk, (int64_t)v);
        } else {
            msgpack_pack_double(pk, v);
        }
    }
}
