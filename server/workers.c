#include "workers.h"

#include "wire.h"

#include <stdlib.h>
#include <string.h>

static const char *const mode_names[] = {"off", "sync", "async", "bounded"};

const char *worker_mode_name(int mode)
{
    return mode >= 0 && mode <= WORKERS_BOUNDED ? mode_names[mode] : "off";
}

static int get_uint32(const msgpack_object *map, const char *key, uint32_t lo, uint32_t hi, uint32_t *out,
                      request_error *err)
{
    uint64_t v = *out;
    if (!wire_map_get(map, key)) return 0;
    if (wire_get_uint(map, key, false, &v, err)) return -1;
    if (v < lo || v > hi)
        return fail(err, OPTIMD_E_BAD_REQUEST, "workers.%s must be between %u and %u", key, lo, hi);
    *out = (uint32_t)v;
    return 0;
}

int worker_config_parse(const msgpack_object *req, uint32_t max_parked, worker_config *cfg, request_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    const msgpack_object *m;
    if (wire_get_map(req, "workers", false, &m, err)) return -1;
    if (!m) return 0;
    static const char *const known[] = {"mode", "count", "reduce", "timeout_ms", "on_timeout", "max_staleness"};
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const char *k;
        size_t len;
        if (wire_key(&m->via.map.ptr[i], &k, &len, err)) return -1;
        bool found = false;
        for (size_t j = 0; j < sizeof known / sizeof known[0]; j++)
            found |= strlen(known[j]) == len && memcmp(known[j], k, len) == 0;
        if (!found)
            return fail(err, OPTIMD_E_BAD_REQUEST, "unknown key workers.%.*s (mode, count, reduce, timeout_ms, "
                        "on_timeout, max_staleness)", (int)(len > 32 ? 32 : len), k);
    }
    const char *mode, *reduce = "mean", *on_timeout = "fail";
    size_t mode_len, reduce_len = 4, on_timeout_len = 4;
    if (wire_get_str(m, "mode", true, &mode, &mode_len, err) ||
        wire_get_str(m, "reduce", false, &reduce, &reduce_len, err) ||
        wire_get_str(m, "on_timeout", false, &on_timeout, &on_timeout_len, err))
        return -1;
    for (int i = WORKERS_SYNC; i <= WORKERS_BOUNDED; i++)
        if (strlen(mode_names[i]) == mode_len && memcmp(mode_names[i], mode, mode_len) == 0) cfg->mode = i;
    if (!cfg->mode) return fail(err, OPTIMD_E_BAD_REQUEST, "workers.mode must be sync, async or bounded");
    bool is_sync = cfg->mode == WORKERS_SYNC, is_bounded = cfg->mode == WORKERS_BOUNDED;
    if (!is_sync && (wire_map_get(m, "count") || wire_map_get(m, "reduce") || wire_map_get(m, "on_timeout")))
        return fail(err, OPTIMD_E_BAD_REQUEST, "workers.count, reduce and on_timeout are for mode sync");
    if (!is_bounded && wire_map_get(m, "max_staleness"))
        return fail(err, OPTIMD_E_BAD_REQUEST, "workers.max_staleness is for mode bounded");
    if (cfg->mode == WORKERS_ASYNC && wire_map_get(m, "timeout_ms"))
        return fail(err, OPTIMD_E_BAD_REQUEST, "workers.timeout_ms is for modes sync and bounded (async never waits)");
    if (is_sync && !wire_map_get(m, "count"))
        return fail(err, OPTIMD_E_BAD_REQUEST, "workers.count (the pushes a sync round combines) is required");
    cfg->timeout_ms = WORKERS_DEFAULT_TIMEOUT_MS;
    uint32_t most = max_parked < WORKERS_MAX ? max_parked : WORKERS_MAX;
    if (most < 1) most = 1;
    if (get_uint32(m, "count", 1, most, &cfg->count, err) ||
        get_uint32(m, "timeout_ms", 1, 24u * 3600 * 1000, &cfg->timeout_ms, err) ||
        get_uint32(m, "max_staleness", 0, UINT32_MAX, &cfg->max_staleness, err))
        return -1;
    if (reduce_len == 3 && memcmp(reduce, "sum", 3) == 0) cfg->sum = true;
    else if (!(reduce_len == 4 && memcmp(reduce, "mean", 4) == 0))
        return fail(err, OPTIMD_E_BAD_REQUEST, "workers.reduce must be mean or sum");
    if (on_timeout_len == 7 && memcmp(on_timeout, "proceed", 7) == 0) cfg->proceed = true;
    else if (!(on_timeout_len == 4 && memcmp(on_timeout, "fail", 4) == 0))
        return fail(err, OPTIMD_E_BAD_REQUEST, "workers.on_timeout must be fail or proceed");
    /* Async and bounded take any number of workers, but bounded ones wait
     * in request contexts. */
    if (!is_sync) cfg->count = is_bounded ? most : WORKERS_MAX;
    return 0;
}

worker_set *worker_set_create(const worker_config *cfg)
{
    worker_set *ws = calloc(1, sizeof *ws);
    if (!ws) return NULL;
    ws->cfg = *cfg;
    ws->cap = cfg->count ? cfg->count : 1;
    ws->w = calloc(ws->cap, sizeof *ws->w);
    if (!ws->w) {
        free(ws);
        return NULL;
    }
    return ws;
}

void worker_set_free(worker_set *ws)
{
    if (!ws) return;
    free(ws->round_params);
    free(ws->w);
    free(ws);
}

worker *worker_find(worker_set *ws, const char *name, size_t len)
{
    if (len == 0 || len > WORKER_NAME_MAX) return NULL;
    for (uint32_t i = 0; i < ws->cap; i++)
        if (ws->w[i].name[0] && strlen(ws->w[i].name) == len && memcmp(ws->w[i].name, name, len) == 0)
            return &ws->w[i];
    return NULL;
}

worker *worker_join(worker_set *ws, const char *name, size_t len, uint64_t steps, request_error *err)
{
    if (len == 0 || len > WORKER_NAME_MAX || memchr(name, '\0', len)) {
        fail(err, OPTIMD_E_BAD_REQUEST, "a worker name is 1 to %d bytes, without NUL", WORKER_NAME_MAX);
        return NULL;
    }
    worker *w = worker_find(ws, name, len);
    if (w) return w;
    for (uint32_t i = 0; i < ws->cap; i++) {
        if (ws->w[i].name[0]) continue;
        /* A new worker starts level with the slowest member, so that
         * joining late does not hold a bounded session back. */
        const worker *slowest;
        uint64_t level = worker_min_pushes(ws, &slowest);
        w = &ws->w[i];
        memset(w, 0, sizeof *w);
        memcpy(w->name, name, len);
        w->pushes = level;
        w->seen_steps = steps;
        ws->joined++;
        return w;
    }
    fail(err, OPTIMD_E_LIMIT, "the session has its %u workers already", ws->cap);
    return NULL;
}

void worker_leave(worker_set *ws, worker *w)
{
    memset(w, 0, sizeof *w);
    ws->joined--;
}

uint64_t worker_min_pushes(const worker_set *ws, const worker **slowest)
{
    uint64_t min = UINT64_MAX;
    *slowest = NULL;
    for (uint32_t i = 0; i < ws->cap; i++) {
        const worker *w = &ws->w[i];
        if (w->name[0] && w->pushes < min) {
            min = w->pushes;
            *slowest = w;
        }
    }
    return min == UINT64_MAX ? 0 : min;
}

int worker_round_admit(worker_set *ws, const uint32_t *idx, uint32_t n, size_t n_session_params,
                       request_error *err)
{
    if (ws->round_pushes == 0) {
        uint32_t *copy = malloc((n ? n : 1) * sizeof *copy);
        if (!copy) return fail(err, OPTIMD_E_NOMEM, "out of memory");
        memcpy(copy, idx, n * sizeof *copy);
        free(ws->round_params);
        ws->round_params = copy;
        ws->n_round_params = n;
        return 0;
    }
    bool same = n == ws->n_round_params;
    if (same) {
        unsigned char *in_round = calloc(n_session_params ? n_session_params : 1, 1);
        if (!in_round) return fail(err, OPTIMD_E_NOMEM, "out of memory");
        for (uint32_t i = 0; i < n; i++) in_round[ws->round_params[i]] = 1;
        for (uint32_t i = 0; i < n && same; i++) same = in_round[idx[i]];
        free(in_round);
    }
    if (!same)
        return fail(err, OPTIMD_E_BAD_REQUEST, "every push of a sync round names the same parameters: this "
                    "round's first push named %u, this push %u or others; not counted", ws->n_round_params, n);
    return 0;
}

void worker_round_clear(worker_set *ws)
{
    ws->round_pushes = 0;
    ws->round_deadline = 0;
    free(ws->round_params);
    ws->round_params = NULL;
    ws->n_round_params = 0;
    for (uint32_t i = 0; i < ws->cap; i++) {
        ws->w[i].parked = NULL;
        ws->w[i].pushed = false;
        ws->w[i].push_seq = 0;
        ws->w[i].raw = NULL;
        ws->w[i].raw_len = 0;
    }
}
