/* Sessions with workers (docs/protocol.md, "Workers"): join, leave, and a
 * worker's push in sync, async and bounded mode. */
#include "request.h"

#include "connections.h"
#include "hparams.h"
#include "log.h"
#include "metrics.h"
#include "session_transfer.h"
#include "shm_attachment.h"
#include "snapshot.h"
#include "transport.h"
#include "workers.h"
#include "wire.h"

#include <optimd/protocol.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

/* ---- Workers (docs/protocol.md, "Workers") -------------------------------
 * A push that has to wait is parked: the transport keeps its context and
 * message, and the thread that completes the wait answers it (a sync
 * round's last push answers the others), or its handler runs again (a
 * bounded worker woken by a slower one, or any wait past its deadline). */

/* A parked push's request decoded again: it points into the message the
 * transport keeps while the push is parked. */
typedef struct parked_push {
    msgpack_unpacked u;
    const msgpack_object *root;
    const msgpack_object *grads;
    uint64_t id;
    bool want_params;
} parked_push;

static int decode_parked(const worker *w, parked_push *pp)
{
    msgpack_unpacked_init(&pp->u);
    size_t off = 0;
    request_error err = {0};
    pp->id = 0;
    pp->want_params = true;
    pp->grads = NULL;
    if (msgpack_unpack_next(&pp->u, (const char *)w->raw, w->raw_len, &off) != MSGPACK_UNPACK_SUCCESS) return -1;
    pp->root = &pp->u.data;
    wire_get_uint(pp->root, "id", false, &pp->id, &err);
    wire_get_bool(pp->root, "return", false, &pp->want_params, &err);
    wire_get_map(pp->root, "grads", false, &pp->grads, &err);
    return pp->grads ? 0 : -1;
}

/* Answers a parked push with an error; it is no longer parked. */
static void answer_parked_error(worker *w, const request_error *e)
{
    void *handle = w->parked;
    w->parked = NULL;
    w->deadline = 0;
    if (!handle) return;
    parked_push pp;
    uint64_t id = decode_parked(w, &pp) == 0 ? pp.id : 0;
    msgpack_unpacked_destroy(&pp.u);
    nng_msg *m;
    if (nng_msg_alloc(&m, 0) != 0) {
        log_error("out of memory: worker %s's waiting push is dropped without a reply", w->name);
        return;
    }
    wire_writer wr;
    wire_writer_init(&wr, m);
    write_error(&wr, id, e);
    transport_answer(handle, m);
}

/* Every waiting push of the session answered with an error (close, drop). */
void workers_abandon(session *s, const char *why)
{
    if (!s->workers) return;
    request_error e = {0};
    fail(&e, OPTIMD_E_UNKNOWN_SESSION, "session '%s' %s while this push waited; not applied", s->name, why);
    for (uint32_t i = 0; i < s->workers->cap; i++) answer_parked_error(&s->workers->w[i], &e);
    worker_round_clear(s->workers);
}

/* The worker fields every worker's step reply ends with: 3, plus the
 * mode's (sync: combined; bounded: lead, waited). */
static uint32_t worker_extra_pairs(const worker_set *ws)
{
    return 3 + (ws->cfg.mode == WORKERS_SYNC) + 2 * (ws->cfg.mode == WORKERS_BOUNDED);
}

static void pack_worker_extra(msgpack_packer *pk, const worker_set *ws, const worker *w, uint64_t staleness,
                              uint32_t combined, uint64_t lead, bool waited)
{
    wire_pack_str(pk, "worker");
    wire_pack_str(pk, w->name);
    wire_pack_str(pk, "pushes");
    msgpack_pack_uint64(pk, w->pushes);
    wire_pack_str(pk, "staleness");
    msgpack_pack_uint64(pk, staleness);
    if (ws->cfg.mode == WORKERS_SYNC) {
        wire_pack_str(pk, "combined");
        msgpack_pack_uint32(pk, combined);
    }
    if (ws->cfg.mode == WORKERS_BOUNDED) {
        wire_pack_str(pk, "lead");
        msgpack_pack_uint64(pk, lead);
        wire_pack_str(pk, "waited");
        if (waited) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
    }
}

static uint64_t staleness_of(const session *s, const worker *w)
{
    return s->steps > w->seen_steps ? s->steps - w->seen_steps : 0;
}

/* Asks the transport to keep the request until `deadline`. */
static int park_request(request *r, int64_t deadline)
{
    if (!r->ticket || !r->ticket->handle)
        return fail(&r->err, OPTIMD_E_INTERNAL, "this request cannot wait for other workers here");
    r->ticket->park = true;
    r->ticket->deadline = deadline;
    return 0;
}

/* Async, and bounded once admitted: the push applies now. */
static int apply_push(request *r, session *s, worker *w, const msgpack_object *grads, bool want_params,
                      const step_identity *id, const step_clip *clip, uint64_t lead, bool waited)
{
    uint64_t staleness = staleness_of(s, w);
    step_result res;
    if (apply_step(r, s, grads, id, clip, &res)) return -1;
    if (!res.duplicate) w->pushes++;
    if (want_params) w->seen_steps = s->steps;
    pack_step_reply(r, s, grads, want_params, clip, &res, worker_extra_pairs(s->workers));
    pack_worker_extra(&r->w->pk, s->workers, w, staleness, 0, lead, waited);
    return 0;
}

/* Bounded staleness: a worker more than max_staleness pushes ahead of the
 * slowest member waits for it (up to timeout_ms). */
static int bounded_push(request *r, session *s, worker *w, const msgpack_object *grads, bool want_params,
                        const step_identity *id, const step_clip *clip)
{
    worker_set *ws = s->workers;
    const worker *slowest;
    uint64_t lead = w->pushes - worker_min_pushes(ws, &slowest);
    bool waited = w->parked != NULL;
    if (lead <= ws->cfg.max_staleness) {
        w->parked = NULL;
        w->deadline = 0;
        if (apply_push(r, s, w, grads, want_params, id, clip, lead, waited)) return -1;
        /* Waiting workers look again: this push may have been the slowest's. */
        for (uint32_t i = 0; i < ws->cap; i++)
            if (ws->w[i].parked) transport_wake(ws->w[i].parked);
        return 0;
    }
    if (r->ticket && r->ticket->timed_out) {
        w->parked = NULL;
        w->deadline = 0;
        return fail(&r->err, OPTIMD_E_TIMEOUT, "worker '%s' is %llu pushes ahead of worker '%s' (max_staleness %u) "
                    "and waited %u ms for it; this push was not applied", w->name, (unsigned long long)lead,
                    slowest ? slowest->name : "?", ws->cfg.max_staleness, ws->cfg.timeout_ms);
    }
    if (!w->parked) {
        if (!r->ticket || !r->ticket->handle) return park_request(r, 0);
        w->parked = r->ticket->handle;
        w->deadline = metrics_now_ns() + (int64_t)ws->cfg.timeout_ms * 1000000;
    }
    return park_request(r, w->deadline);
}

/* Checks one sync push's gradients as a step would, before it joins the
 * round: dense, known, of the parameter's dtype and shape, finite.
 * idx (n entries) gets their session indexes. */
static int check_sync_grads(request *r, session *s, const msgpack_object *grads, uint32_t *idx)
{
    unsigned char *seen = calloc(s->n_params ? s->n_params : 1, 1);
    if (!seen) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    int rc = 0;
    for (uint32_t i = 0; i < grads->via.map.size && rc == 0; i++) {
        const msgpack_object_kv *kv = &grads->via.map.ptr[i];
        const char *name;
        size_t len;
        if ((rc = wire_key(kv, &name, &len, &r->err))) break;
        int64_t k = session_find_param(s, name, len);
        if (k < 0) {
            rc = fail(&r->err, OPTIMD_E_UNKNOWN_PARAM, "no parameter '%.*s' in session '%s'",
                      (int)(len > PARAM_NAME_MAX ? PARAM_NAME_MAX : len), name, s->name);
            break;
        }
        if (seen[k]) {
            rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "gradient for '%s' given twice", s->names[k]);
            break;
        }
        seen[k] = 1;
        idx[i] = (uint32_t)k;
        if (kv->val.type == MSGPACK_OBJECT_MAP && wire_map_get(&kv->val, "rows")) {
            rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "a sync round combines dense gradients; '%s' is row-sparse",
                      s->names[k]);
            break;
        }
        wire_tensor g;
        if ((rc = wire_decode_tensor(&kv->val, s->names[k], &g, &r->err)) ||
            (rc = session_check_dense_grad(s, (size_t)k, &g, &r->err)))
            break;
        if (!session_grad_finite(&g))
            rc = fail(&r->err, OPTIMD_E_NONFINITE, "gradient for '%s' holds NaN or infinity; not counted",
                      s->names[k]);
    }
    free(seen);
    return rc;
}

/* dst[e] += src[e], src possibly unaligned in its message. */
static void add_into(void *dst, const void *src, uint32_t dtype, int64_t numel, void *scratch, size_t scratch_elems)
{
    size_t esize = wire_dtype_size(dtype);
    for (int64_t done = 0; done < numel;) {
        int64_t n = numel - done < (int64_t)scratch_elems ? numel - done : (int64_t)scratch_elems;
        const unsigned char *from = (const unsigned char *)src + (size_t)done * esize;
        const void *aligned = from;
        if ((uintptr_t)from % esize) {
            memcpy(scratch, from, (size_t)n * esize);
            aligned = scratch;
        }
        if (dtype == OPTIMD_DTYPE_F32) {
            float *d = (float *)dst + done;
            const float *a = aligned;
            for (int64_t e = 0; e < n; e++) d[e] += a[e];
        } else {
            double *d = (double *)dst + done;
            const double *a = aligned;
            for (int64_t e = 0; e < n; e++) d[e] += a[e];
        }
        done += n;
    }
}

/* The step request a round amounts to, as the write-ahead log keeps it:
 * for every parameter of the round, the pushes summed in rank order (then
 * divided by their number, for mean), and the clipping the lowest-ranked
 * push asked for. */
static int build_round_request(session *s, parked_push *pp, uint32_t k, nng_msg **out, request_error *err)
{
    worker_set *ws = s->workers;
    uint32_t n = ws->n_round_params;
    const void **data = calloc((size_t)k * (n ? n : 1), sizeof *data);
    int64_t *pos = malloc((s->n_params ? s->n_params : 1) * sizeof *pos);
    size_t biggest = 64;
    for (uint32_t j = 0; j < n; j++) biggest = s->params[ws->round_params[j]].nbytes > biggest ?
                                              s->params[ws->round_params[j]].nbytes : biggest;
    enum { SCRATCH_BYTES = 1 << 16 };
    void *acc = aligned_alloc(64, (biggest + 63) / 64 * 64);
    void *scratch = aligned_alloc(64, SCRATCH_BYTES);
    nng_msg *m = NULL;
    int rc = 0;
    if (!data || !pos || !acc || !scratch || nng_msg_alloc(&m, 0) != 0) {
        rc = fail(err, OPTIMD_E_NOMEM, "out of memory combining the round's gradients");
        goto out;
    }
    for (size_t i = 0; i < s->n_params; i++) pos[i] = -1;
    for (uint32_t j = 0; j < n; j++) pos[ws->round_params[j]] = j;
    for (uint32_t q = 0; q < k; q++)
        for (uint32_t i = 0; i < pp[q].grads->via.map.size; i++) {
            const msgpack_object_kv *kv = &pp[q].grads->via.map.ptr[i];
            int64_t at = session_find_param(s, kv->key.via.str.ptr, kv->key.via.str.size);
            wire_tensor g;
            request_error ignored;
            if (at < 0 || pos[at] < 0 || wire_decode_tensor(&kv->val, "", &g, &ignored)) continue;
            data[(size_t)q * n + (size_t)pos[at]] = g.data;
        }
    for (size_t q = 0; q < (size_t)k * n; q++)
        if (!data[q]) {
            rc = fail(err, OPTIMD_E_INTERNAL, "a push of the round lost a gradient");
            goto out;
        }
    size_t bytes = 256;
    for (uint32_t j = 0; j < n; j++) bytes += 384 + s->params[ws->round_params[j]].nbytes;
    nng_msg_reserve(m, bytes);
    wire_writer w;
    wire_writer_init(&w, m);
    msgpack_packer *pk = &w.pk;
    const msgpack_object *clip_value = wire_map_get(pp[0].root, "clip_value");
    const msgpack_object *clip_norm = wire_map_get(pp[0].root, "clip_norm");
    uint32_t n_seqs = 0;
    for (uint32_t q = 0; q < k; q++) n_seqs += wire_map_get(pp[q].root, "seq") != NULL;
    msgpack_pack_map(pk, 4 + (clip_value != NULL) + (clip_norm != NULL) + (n_seqs > 0));
    wire_pack_str(pk, "v");
    msgpack_pack_int(pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(pk, "op");
    wire_pack_str(pk, "step");
    wire_pack_str(pk, "session");
    wire_pack_str(pk, s->name);
    if (clip_value) {
        wire_pack_str(pk, "clip_value");
        msgpack_pack_object(pk, *clip_value);
    }
    if (clip_norm) {
        wire_pack_str(pk, "clip_norm");
        msgpack_pack_object(pk, *clip_norm);
    }
    /* The pushes' sequence numbers, recorded with the round (and on replay). */
    if (n_seqs) {
        wire_pack_str(pk, "seqs");
        msgpack_pack_array(pk, n_seqs);
        for (uint32_t q = 0; q < k; q++) {
            const msgpack_object *seq = wire_map_get(pp[q].root, "seq");
            if (!seq) continue;
            const msgpack_object *client = wire_map_get(pp[q].root, "client");
            msgpack_pack_map(pk, 2);
            wire_pack_str(pk, "client");
            if (client) msgpack_pack_object(pk, *client);
            else wire_pack_str(pk, "");
            wire_pack_str(pk, "seq");
            msgpack_pack_object(pk, *seq);
        }
    }
    wire_pack_str(pk, "grads");
    msgpack_pack_map(pk, n);
    for (uint32_t j = 0; j < n; j++) {
        const param *p = &s->params[ws->round_params[j]];
        memcpy(acc, data[j], p->nbytes);
        for (uint32_t q = 1; q < k; q++)
            add_into(acc, data[(size_t)q * n + j], p->dtype, p->numel, scratch,
                     SCRATCH_BYTES / wire_dtype_size(p->dtype));
        if (!ws->cfg.sum && k > 1) {
            if (p->dtype == OPTIMD_DTYPE_F32) {
                float *a = acc, by = (float)k;
                for (int64_t e = 0; e < p->numel; e++) a[e] /= by;
            } else {
                double *a = acc, by = (double)k;
                for (int64_t e = 0; e < p->numel; e++) a[e] /= by;
            }
        }
        wire_pack_str(pk, s->names[ws->round_params[j]]);
        wire_pack_tensor(pk, p->dtype, p->ndim, p->shape, acc, p->nbytes);
    }
    if (w.failed) rc = fail(err, OPTIMD_E_NOMEM, "out of memory combining the round's gradients");
out:
    free(data);
    free(pos);
    free(acc);
    free(scratch);
    if (rc && m) nng_msg_free(m);
    *out = rc ? NULL : m;
    return rc;
}

/* Applies the round: the pushes in it (all of them, or those present at
 * the timeout with on_timeout=proceed) combined into one step; every
 * other pushing worker is answered, `self` by the request's own reply. */
static int complete_round(request *r, session *s, worker *self, const msgpack_object *grads, bool want_params)
{
    worker_set *ws = s->workers;
    worker **members = calloc(ws->cap, sizeof *members);
    parked_push *pp = calloc(ws->cap, sizeof *pp);
    uint32_t k = 0;
    int rc = 0;
    if (!members || !pp) {
        rc = fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    } else {
        for (uint32_t i = 0; i < ws->cap; i++) {
            if (!ws->w[i].pushed) continue;
            members[k] = &ws->w[i];
            msgpack_unpacked_init(&pp[k].u);
            if (&ws->w[i] == self) {
                pp[k].root = r->root;
                pp[k].grads = grads;
                pp[k].want_params = want_params;
                pp[k].id = r->id;
            } else if (decode_parked(&ws->w[i], &pp[k])) {
                rc = fail(&r->err, OPTIMD_E_INTERNAL, "worker %s's waiting push cannot be read", ws->w[i].name);
            }
            k++;
        }
    }
    /* Staleness: steps taken since each worker's parameters, this one not counted. */
    uint64_t *stale = calloc(ws->cap, sizeof *stale);
    if (!stale && rc == 0) rc = fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    for (uint32_t q = 0; q < k && stale; q++) stale[q] = staleness_of(s, members[q]);
    nng_msg *combined = NULL;
    msgpack_unpacked cu;
    msgpack_unpacked_init(&cu);
    step_result res;
    step_clip clip;
    if (rc == 0) rc = build_round_request(s, pp, k, &combined, &r->err);
    if (rc == 0) {
        size_t off = 0;
        const msgpack_object *cgrads = NULL;
        if (msgpack_unpack_next(&cu, nng_msg_body(combined), nng_msg_len(combined), &off) != MSGPACK_UNPACK_SUCCESS ||
            wire_get_map(&cu.data, "grads", true, &cgrads, &r->err) || step_clip_parse(&cu.data, &clip, &r->err)) {
            rc = r->err.code ? -1 : fail(&r->err, OPTIMD_E_INTERNAL, "the combined step cannot be read");
        } else {
            store_change change = {.st = &r->srv->store, .request = nng_msg_body(combined),
                                   .len = nng_msg_len(combined)};
            rc = session_step(s, cgrads, NULL, &clip, NULL, r->srv->pool, store_log_change, &change, &res, &r->err);
            const msgpack_object *seqs = rc == 0 ? wire_map_get(&cu.data, "seqs") : NULL;
            for (uint32_t i = 0; seqs && i < seqs->via.array.size; i++) {
                const msgpack_object *e = &seqs->via.array.ptr[i];
                const char *client;
                size_t client_len;
                uint64_t seq;
                request_error ignored;
                if (wire_get_str(e, "client", true, &client, &client_len, &ignored) == 0 &&
                    wire_get_uint(e, "seq", true, &seq, &ignored) == 0)
                    session_record_seq(s, client, client_len, seq, &res);
            }
            if (rc == 0) store_compact_if_large(&r->srv->store, s);
        }
    }
    for (uint32_t q = 0; q < k; q++) {
        worker *w = members[q];
        if (rc == 0) {
            w->pushes++;
            if (pp[q].want_params) w->seen_steps = s->steps;
        }
        if (w == self) continue;
        if (rc != 0) {
            answer_parked_error(w, &r->err);
            continue;
        }
        nng_msg *m;
        if (nng_msg_alloc(&m, 0) != 0) {
            log_error("out of memory: worker %s's reply to a sync round is lost", w->name);
            continue;
        }
        wire_writer wr;
        wire_writer_init(&wr, m);
        request other = {.srv = r->srv, .w = &wr, .id = pp[q].id};
        pack_step_reply(&other, s, pp[q].grads, pp[q].want_params, &clip, &res, worker_extra_pairs(ws));
        pack_worker_extra(&wr.pk, ws, w, stale[q], k, 0, false);
        transport_answer(w->parked, m);
        w->parked = NULL;
    }
    if (rc == 0) {
        uint64_t own = 0;
        for (uint32_t q = 0; q < k; q++)
            if (members[q] == self) own = stale[q];
        pack_step_reply(r, s, grads, want_params, &clip, &res, worker_extra_pairs(ws));
        pack_worker_extra(&r->w->pk, ws, self, own, k, 0, false);
    }
    for (uint32_t q = 0; q < k && pp; q++) msgpack_unpacked_destroy(&pp[q].u);
    msgpack_unpacked_destroy(&cu);
    if (combined) nng_msg_free(combined);
    free(members);
    free(pp);
    free(stale);
    worker_round_clear(ws);
    return rc;
}

/* A sync round ran past its deadline: fail it for every pushing worker,
 * or step with the pushes present. */
static int round_timed_out(request *r, session *s, worker *self, const msgpack_object *grads, bool want_params)
{
    worker_set *ws = s->workers;
    if (ws->cfg.proceed) return complete_round(r, s, self, grads, want_params);
    char missing[160] = "";
    size_t used = 0;
    for (uint32_t i = 0; i < ws->cap && used < sizeof missing - 1; i++)
        if (ws->w[i].name[0] && !ws->w[i].pushed)
            used += (size_t)snprintf(missing + used, sizeof missing - used, "%s%s", used ? ", " : "", ws->w[i].name);
    fail(&r->err, OPTIMD_E_TIMEOUT, "the sync round timed out after %u ms with %u of %u pushes (missing: %s); "
         "nothing applied", ws->cfg.timeout_ms, ws->round_pushes, ws->cfg.count,
         used ? missing : "workers that have not joined");
    for (uint32_t i = 0; i < ws->cap; i++)
        if (&ws->w[i] != self && ws->w[i].pushed) answer_parked_error(&ws->w[i], &r->err);
    worker_round_clear(ws);
    return -1;
}

/* Sync: the push joins the round; the round's last push applies it. */
static int sync_push(request *r, session *s, worker *w, const msgpack_object *grads, bool want_params,
                     const step_identity *id)
{
    worker_set *ws = s->workers;
    if (r->ticket && r->ticket->rerun) {
        if (r->ticket->timed_out && w->pushed) return round_timed_out(r, s, w, grads, want_params);
        return park_request(r, ws->round_deadline);
    }
    if (id->seq && id->client_len > CLIENT_ID_MAX)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'client' is at most %d bytes", CLIENT_ID_MAX);
    uint32_t n = grads->via.map.size;
    uint32_t *idx = malloc((n ? n : 1) * sizeof *idx);
    if (!idx) return fail(&r->err, OPTIMD_E_NOMEM, "out of memory");
    int rc = check_sync_grads(r, s, grads, idx);
    if (rc == 0) rc = worker_round_admit(ws, idx, n, s->n_params, &r->err);
    free(idx);
    if (rc) return -1;
    bool last = ws->round_pushes + 1 >= ws->cfg.count;
    if (!last && (!r->ticket || !r->ticket->handle)) return park_request(r, 0);
    if (ws->round_pushes == 0) ws->round_deadline = metrics_now_ns() + (int64_t)ws->cfg.timeout_ms * 1000000;
    ws->round_pushes++;
    w->pushed = true;
    w->push_seq = id->seq;
    w->parked = r->ticket ? r->ticket->handle : NULL;
    w->raw = r->raw;
    w->raw_len = r->raw_len;
    if (!last) return park_request(r, ws->round_deadline);
    w->parked = NULL;
    return complete_round(r, s, w, grads, want_params);
}

/* A sequenced sync push sent again: a retry of one whose round was applied
 * is answered from the session's record; a retry of the one still waiting
 * takes its place (the first attempt's connection gave up on it). 1:
 * answered or parked, 0: not a retry, -1: error. */
static int sync_retry(request *r, session *s, worker *w, const msgpack_object *grads, bool want_params,
                      const step_identity *id, const step_clip *clip)
{
    worker_set *ws = s->workers;
    if (!id->seq) return 0;
    if (id->client_len > CLIENT_ID_MAX)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "'client' is at most %d bytes", CLIENT_ID_MAX);
    const client_seq *cs = session_client(s, id->client, id->client_len, false);
    if (cs && id->seq <= cs->seq) {
        step_result res;
        uint64_t staleness = staleness_of(s, w);
        if (session_step(s, grads, id, clip, NULL, r->srv->pool, NULL, NULL, &res, &r->err)) return -1;
        if (want_params) w->seen_steps = s->steps;
        pack_step_reply(r, s, grads, want_params, clip, &res, worker_extra_pairs(ws));
        pack_worker_extra(&r->w->pk, ws, w, staleness, 0, 0, false);
        return 1;
    }
    if (!w->pushed || w->push_seq != id->seq || !w->parked || !r->ticket || !r->ticket->handle) return 0;
    request_error superseded = {0};
    fail(&superseded, OPTIMD_E_BAD_REQUEST, "push seq %llu of worker '%s' was sent again; the new attempt "
         "waits in its place", (unsigned long long)id->seq, w->name);
    answer_parked_error(w, &superseded);
    w->parked = r->ticket->handle;
    w->raw = r->raw;
    w->raw_len = r->raw_len;
    return park_request(r, ws->round_deadline) ? -1 : 1;
}

/* A step in a session with workers: who pushes, and how it combines. */
int worker_push(request *r, session *s, const msgpack_object *grads, bool want_params,
                const step_identity *id, const step_clip *clip)
{
    worker_set *ws = s->workers;
    const char *name = NULL;
    size_t len = 0;
    if (wire_get_str(r->root, "worker", false, &name, &len, &r->err)) return -1;
    if (!name)
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "session '%s' has %s workers: a step names its 'worker' "
                    "(join first)", s->name, worker_mode_name(ws->cfg.mode));
    worker *w = worker_find(ws, name, len);
    bool rerun = r->ticket && r->ticket->rerun;
    if (rerun && (!w || w->parked != r->ticket->handle)) {
        /* Answered meanwhile by another thread (the round's last push, a
         * leave, a close): the transport sends that answer. */
        r->ticket->park = true;
        r->ticket->deadline = 0;
        return 0;
    }
    if (!w)
        return fail(&r->err, OPTIMD_E_UNKNOWN_WORKER, "no worker '%.*s' in session '%s': join first",
                    (int)(len > WORKER_NAME_MAX ? WORKER_NAME_MAX : len), name, s->name);
    if (!rerun && ws->cfg.mode == WORKERS_SYNC) {
        int retried = sync_retry(r, s, w, grads, want_params, id, clip);
        if (retried) return retried < 0 ? -1 : 0;
    }
    if (!rerun && (w->parked || w->pushed))
        return fail(&r->err, OPTIMD_E_BAD_REQUEST, "worker '%s' has a push waiting already; one at a time",
                    w->name);
    switch (ws->cfg.mode) {
    case WORKERS_SYNC:
        return sync_push(r, s, w, grads, want_params, id);
    case WORKERS_BOUNDED:
        return bounded_push(r, s, w, grads, want_params, id, clip);
    default:
        return apply_push(r, s, w, grads, want_params, id, clip, 0, false);
    }
}

void pack_workers(msgpack_packer *pk, const session *s)
{
    const worker_set *ws = s->workers;
    uint32_t n = 2 + (ws->cfg.mode == WORKERS_SYNC) * 4 + (ws->cfg.mode != WORKERS_ASYNC) +
                 (ws->cfg.mode == WORKERS_BOUNDED);
    msgpack_pack_map(pk, n);
    wire_pack_str(pk, "mode");
    wire_pack_str(pk, worker_mode_name(ws->cfg.mode));
    if (ws->cfg.mode == WORKERS_SYNC) {
        wire_pack_str(pk, "count");
        msgpack_pack_uint32(pk, ws->cfg.count);
        wire_pack_str(pk, "reduce");
        wire_pack_str(pk, ws->cfg.sum ? "sum" : "mean");
        wire_pack_str(pk, "on_timeout");
        wire_pack_str(pk, ws->cfg.proceed ? "proceed" : "fail");
        wire_pack_str(pk, "round_pushes");
        msgpack_pack_uint32(pk, ws->round_pushes);
    }
    if (ws->cfg.mode != WORKERS_ASYNC) {
        wire_pack_str(pk, "timeout_ms");
        msgpack_pack_uint32(pk, ws->cfg.timeout_ms);
    }
    if (ws->cfg.mode == WORKERS_BOUNDED) {
        wire_pack_str(pk, "max_staleness");
        msgpack_pack_uint32(pk, ws->cfg.max_staleness);
    }
    wire_pack_str(pk, "members");
    msgpack_pack_array(pk, ws->joined);
    for (uint32_t i = 0; i < ws->cap; i++) {
        const worker *w = &ws->w[i];
        if (!w->name[0]) continue;
        msgpack_pack_map(pk, 5);
        wire_pack_str(pk, "name");
        wire_pack_str(pk, w->name);
        wire_pack_str(pk, "rank");
        msgpack_pack_uint32(pk, i);
        wire_pack_str(pk, "pushes");
        msgpack_pack_uint64(pk, w->pushes);
        wire_pack_str(pk, "staleness");
        msgpack_pack_uint64(pk, staleness_of(s, w));
        wire_pack_str(pk, "waiting");
        if (w->parked || w->pushed) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
    }
}

/* join and leave: logged, so membership survives a restart. */
static int change_membership(request *r, bool join)
{
    const char *name;
    size_t len;
    if (wire_get_str(r->root, "worker", true, &name, &len, &r->err)) return -1;
    session *s = request_session(r);
    if (!s) return -1;
    session_lock(s);
    int rc = 0;
    worker_set *ws = s->workers;
    worker *w = ws ? worker_find(ws, name, len) : NULL;
    if (!ws) {
        rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "session '%s' has no workers (open it with 'workers')", s->name);
    } else if (!join && !w) {
        rc = fail(&r->err, OPTIMD_E_UNKNOWN_WORKER, "no worker '%.*s' in session '%s'",
                  (int)(len > WORKER_NAME_MAX ? WORKER_NAME_MAX : len), name, s->name);
    } else if (join && !w && ws->joined >= ws->cap) {
        rc = fail(&r->err, OPTIMD_E_LIMIT, "session '%s' has its %u workers already", s->name, ws->cap);
    } else if (join && !w && (len == 0 || len > WORKER_NAME_MAX || memchr(name, '\0', len))) {
        rc = fail(&r->err, OPTIMD_E_BAD_REQUEST, "a worker name is 1 to %d bytes, without NUL", WORKER_NAME_MAX);
    } else if (join == !w) {
        /* A real change (joining again, or leaving, is not one). */
        store_change change = change_of(r);
        rc = store_log_change(&change, s, &r->err);
        if (rc == 0 && join) {
            w = worker_join(ws, name, len, s->steps, &r->err);
            rc = w ? 0 : -1;
        } else if (rc == 0) {
            request_error e = {0};
            fail(&e, OPTIMD_E_UNKNOWN_WORKER, "worker '%s' left session '%s' while this push waited; not applied",
                 w->name, s->name);
            if (w->pushed) ws->round_pushes--;
            answer_parked_error(w, &e);
            worker_leave(ws, w);
            if (ws->round_pushes == 0) worker_round_clear(ws);
            /* Bounded: the slowest may have left. */
            for (uint32_t i = 0; i < ws->cap; i++)
                if (ws->w[i].parked && ws->cfg.mode == WORKERS_BOUNDED) transport_wake(ws->w[i].parked);
            w = NULL;
        }
        if (rc == 0) s->version++;
    }
    if (rc == 0) {
        msgpack_packer *pk = reply_begin(r, 2 + (w != NULL));
        if (w) {
            wire_pack_str(pk, "rank");
            msgpack_pack_uint32(pk, worker_rank(ws, w));
        }
        wire_pack_str(pk, "steps");
        msgpack_pack_uint64(pk, s->steps);
        wire_pack_str(pk, "workers");
        pack_workers(pk, s);
    }
    session_unlock(s);
    session_unref(s);
    return rc;
}

int op_join(request *r)
{
    return change_membership(r, true);
}

int op_leave(request *r)
{
    return change_membership(r, false);
}
