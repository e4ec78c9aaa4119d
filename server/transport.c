#include "transport.h"

#include "connections.h"
#include "log.h"
#include "metrics.h"

#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/tls/tls.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* PARKED: the handler kept the request for a later answer (a sync round's
 * other workers, a bounded worker too far ahead); transport_answer or a
 * wake ends it. */
typedef enum { CTX_RECEIVING, CTX_QUEUED, CTX_PARKED, CTX_SENDING } ctx_state;

/* One request slot: an NNG context and the aio that drives it. */
typedef struct ctx_slot {
    struct transport *t;
    nng_ctx ctx;
    nng_aio *aio;
    ctx_state state;
    nng_msg *request;
    uint32_t pipe;             /* the connection the request came on (0: none) */
    bool over_limit;           /* the connection had --max-in-flight already */
    struct ctx_slot *next_queued;
    /* Parking (all guarded by the transport's mutex). An answer or a wake
     * can come from another thread before the handler that parked the
     * request has returned: they wait here until it has. */
    bool rerun;                /* queued again after being parked */
    bool timed_out;            /* ... because its deadline passed */
    bool wake_pending;
    nng_msg *answer;
    int64_t deadline;          /* parked: metrics_now_ns() deadline, 0: none */
} ctx_slot;

/* Requests in flight per connection (pipe id), for --max-in-flight: at
 * most one entry per context, so a small array does. */
typedef struct pipe_count {
    uint32_t pipe;
    uint32_t count;
} pipe_count;

struct transport {
    server *srv;
    nng_socket sock;
    ctx_slot *slots;
    uint32_t n_slots;
    pthread_mutex_t mutex;
    pthread_cond_t queued;
    ctx_slot *queue_head, *queue_tail;   /* requests waiting for a thread */
    bool stopping;
    pthread_t *threads;
    uint32_t n_threads;
    pipe_count *in_flight;     /* n_slots entries; guarded by mutex */
    pthread_t timer;           /* wakes parked requests at their deadline */
    bool timer_started;
    pthread_cond_t parked;     /* a deadline was set, or stopping */
};

/* Counts a request on `pipe` in (+1) or out (-1); returns the new count.
 * The caller holds t->mutex. */
static uint32_t pipe_add(transport *t, uint32_t pipe, int delta)
{
    pipe_count *free_entry = NULL;
    for (uint32_t i = 0; i < t->n_slots; i++) {
        pipe_count *e = &t->in_flight[i];
        if (e->count && e->pipe == pipe) {
            e->count = (uint32_t)((int64_t)e->count + delta);
            return e->count;
        }
        if (!e->count && !free_entry) free_entry = e;
    }
    if (delta <= 0 || !free_entry) return 0;
    free_entry->pipe = pipe;
    free_entry->count = 1;
    return 1;
}

/* Puts a context on the request queue. The caller holds t->mutex. */
static void enqueue(transport *t, ctx_slot *c)
{
    c->state = CTX_QUEUED;
    c->next_queued = NULL;
    if (t->queue_tail) t->queue_tail->next_queued = c;
    else t->queue_head = c;
    t->queue_tail = c;
    pthread_cond_signal(&t->queued);
}

static void arm_receive(ctx_slot *c)
{
    c->state = CTX_RECEIVING;
    nng_ctx_recv(c->ctx, c->aio);
}

/* NNG thread: a receive or a send on this context completed. */
static void ctx_callback(void *arg)
{
    ctx_slot *c = arg;
    transport *t = c->t;
    int rv = nng_aio_result(c->aio);
    if (c->state == CTX_SENDING) {
        if (rv != 0) {
            /* The client went away; its reply has nowhere to go. */
            nng_msg_free(nng_aio_get_msg(c->aio));
            nng_aio_set_msg(c->aio, NULL);
            if (rv == NNG_ECLOSED) return;
            log_debug("reply not delivered: %s", nng_strerror(rv));
        }
        /* Stopping: no new request, so transport_stop can wait for this
         * send (a shutdown's reply among them) to finish. */
        pthread_mutex_lock(&t->mutex);
        bool stopping = t->stopping;
        pthread_mutex_unlock(&t->mutex);
        if (stopping) {
            c->state = CTX_RECEIVING;
            return;
        }
        arm_receive(c);
        return;
    }
    if (rv != 0) {
        if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) return;
        log_warn("receive failed: %s", nng_strerror(rv));
        arm_receive(c);
        return;
    }
    c->request = nng_aio_get_msg(c->aio);
    nng_aio_set_msg(c->aio, NULL);
    c->pipe = nng_pipe_id(nng_msg_get_pipe(c->request));
    if (c->pipe == (uint32_t)-1) c->pipe = 0;
    pthread_mutex_lock(&t->mutex);
    c->over_limit = c->pipe && pipe_add(t, c->pipe, +1) > t->srv->opts->max_in_flight;
    enqueue(t, c);
    pthread_mutex_unlock(&t->mutex);
}

/* The request no longer counts against its connection's --max-in-flight:
 * its reply is handed to NNG (a client that has it may send the next at
 * once, before the send completes here). The caller holds t->mutex. */
static void release_pipe(transport *t, ctx_slot *c)
{
    if (c->pipe) pipe_add(t, c->pipe, -1);
    c->pipe = 0;
}

static void send_reply(ctx_slot *c, nng_msg *reply)
{
    nng_aio_set_msg(c->aio, reply);
    nng_ctx_send(c->ctx, c->aio);
}

/* After the handler asked to park the request: park it, or, when an answer
 * or a wake came meanwhile, act on that now. */
static void park(transport *t, ctx_slot *c, int64_t deadline)
{
    pthread_mutex_lock(&t->mutex);
    nng_msg *answer = c->answer;
    c->answer = NULL;
    if (answer) {
        c->state = CTX_SENDING;
        nng_msg_free(c->request);
        c->request = NULL;
        release_pipe(t, c);
    } else if (c->wake_pending && !t->stopping) {
        c->wake_pending = false;
        c->rerun = true;
        enqueue(t, c);
    } else {
        c->state = CTX_PARKED;
        c->deadline = deadline;
        if (deadline) pthread_cond_signal(&t->parked);
    }
    pthread_mutex_unlock(&t->mutex);
    if (answer) send_reply(c, answer);
}

/* NNG thread: a connection opened or closed. What only a closed one kept
 * alive goes now (the segments its client attached), not when the session
 * ends: a killed client must not leave its memory mapped for the session's
 * lifetime. It leaves the open set first: an attach that installs after
 * this scan sees the connection gone and detaches by itself (ops.c). NNG
 * calls this outside its own locks, so waiting for a session's lock here
 * (a step in progress) holds up only this connection's teardown. Every
 * connection is gone by the end of transport_stop, before the sessions. */
static void on_pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    transport *t = arg;
    int id = nng_pipe_id(p);
    if (id <= 0) return;
    if (ev == NNG_PIPE_EV_ADD_POST) {
        if (optimd_connection_opened((uint32_t)id) != 0)
            log_warn("out of memory tracking connections: connection %d cannot attach shared memory", id);
        return;
    }
    optimd_connection_closed((uint32_t)id);
    server_connection_closed(t->srv, (uint32_t)id);
}

static void *request_thread(void *arg)
{
    transport *t = arg;
    for (;;) {
        pthread_mutex_lock(&t->mutex);
        while (!t->queue_head && !t->stopping) pthread_cond_wait(&t->queued, &t->mutex);
        ctx_slot *c = t->queue_head;
        if (c) {
            t->queue_head = c->next_queued;
            if (!t->queue_head) t->queue_tail = NULL;
        }
        bool stop = t->stopping;
        request_ticket ticket = {0};
        if (c) {
            ticket = (request_ticket){.handle = c, .rerun = c->rerun, .timed_out = c->timed_out};
            c->rerun = c->timed_out = false;
        }
        pthread_mutex_unlock(&t->mutex);
        if (!c) break;
        nng_msg *reply;
        if (stop) {
            /* Dropped, but its message may be a sync round's push that a
             * handler still running reads: transport_stop frees it once
             * every handler is done. */
            pthread_mutex_lock(&t->mutex);
            c->state = CTX_PARKED;
            c->deadline = 0;
            pthread_mutex_unlock(&t->mutex);
            continue;
        } else if (c->over_limit) {
            reply = server_refuse(t->srv, c->request, "this connection has --max-in-flight requests in "
                                  "flight already; wait for replies or open another connection");
        } else {
            reply = server_handle(t->srv, c->request, &ticket);
            if (ticket.park) {
                park(t, c, ticket.deadline);
                continue;
            }
        }
        c->request = NULL;
        pthread_mutex_lock(&t->mutex);
        release_pipe(t, c);
        pthread_mutex_unlock(&t->mutex);
        if (!reply) {
            log_error("out of memory: request dropped without a reply");
            arm_receive(c);
            continue;
        }
        c->state = CTX_SENDING;
        send_reply(c, reply);
    }
    return NULL;
}

void transport_wake(void *handle)
{
    ctx_slot *c = handle;
    transport *t = c->t;
    pthread_mutex_lock(&t->mutex);
    if (c->state == CTX_PARKED) {
        c->deadline = 0;
        c->rerun = true;
        enqueue(t, c);
    } else {
        c->wake_pending = true;
    }
    pthread_mutex_unlock(&t->mutex);
}

void transport_answer(void *handle, nng_msg *reply)
{
    ctx_slot *c = handle;
    transport *t = c->t;
    pthread_mutex_lock(&t->mutex);
    bool parked = c->state == CTX_PARKED;
    if (parked) {
        c->state = CTX_SENDING;
        c->deadline = 0;
        nng_msg_free(c->request);
        c->request = NULL;
        release_pipe(t, c);
    } else {
        if (c->answer) nng_msg_free(c->answer);
        c->answer = reply;
    }
    pthread_mutex_unlock(&t->mutex);
    if (parked) send_reply(c, reply);
}

/* Requeues parked requests whose deadline passed, for their handler to
 * answer (a sync round's timeout, a bounded worker's wait). */
static void *timer_thread(void *arg)
{
    transport *t = arg;
    pthread_mutex_lock(&t->mutex);
    while (!t->stopping) {
        int64_t now = metrics_now_ns(), next = 0;
        for (uint32_t i = 0; i < t->n_slots; i++) {
            ctx_slot *c = &t->slots[i];
            if (c->state != CTX_PARKED || !c->deadline) continue;
            if (c->deadline <= now) {
                c->deadline = 0;
                c->rerun = c->timed_out = true;
                enqueue(t, c);
            } else if (!next || c->deadline < next) {
                next = c->deadline;
            }
        }
        if (!next) {
            pthread_cond_wait(&t->parked, &t->mutex);
            continue;
        }
        /* The condition variable runs on CLOCK_MONOTONIC, as metrics_now_ns. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t at = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + (next - now);
        ts.tv_sec = at / 1000000000;
        ts.tv_nsec = at % 1000000000;
        pthread_cond_timedwait(&t->parked, &t->mutex, &ts);
    }
    pthread_mutex_unlock(&t->mutex);
    return NULL;
}

/* A whole (small) file as a string: the PEM certificates and key. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int c;
    while ((c = fgetc(f)) != EOF && len < (1u << 20)) {
        if (len + 2 > cap) {
            cap = cap ? cap * 2 : 4096;
            char *grown = realloc(buf, cap);
            if (!grown) break;
            buf = grown;
        }
        buf[len++] = (char)c;
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    return buf;
}

/* The TLS setup of tls+tcp:// listeners: our certificate and key, and the
 * CA that client certificates must chain to. */
static int tls_config(const options *o, nng_tls_config **out)
{
    nng_tls_config *cfg;
    int rv = nng_tls_config_alloc(&cfg, NNG_TLS_MODE_SERVER);
    if (rv != 0) {
        log_error("TLS: %s", nng_strerror(rv));
        return -1;
    }
    char *cert = read_text(o->tls_cert), *key = read_text(o->tls_key);
    if (!cert || !key) {
        log_error("TLS: cannot read %s: %s", !cert ? o->tls_cert : o->tls_key, strerror(errno));
        rv = NNG_EINVAL;
    }
    if (rv == 0 && (rv = nng_tls_config_own_cert(cfg, cert, key, NULL)) != 0)
        log_error("TLS: certificate %s with key %s: %s", o->tls_cert, o->tls_key, nng_strerror(rv));
    if (rv == 0 && o->tls_ca && (rv = nng_tls_config_ca_file(cfg, o->tls_ca)) != 0)
        log_error("TLS: CA file %s: %s", o->tls_ca, nng_strerror(rv));
    nng_tls_auth_mode mode = strcmp(o->tls_client_auth, "required") == 0   ? NNG_TLS_AUTH_MODE_REQUIRED
                             : strcmp(o->tls_client_auth, "optional") == 0 ? NNG_TLS_AUTH_MODE_OPTIONAL
                                                                           : NNG_TLS_AUTH_MODE_NONE;
    if (rv == 0 && mode != NNG_TLS_AUTH_MODE_NONE && !o->tls_ca) {
        log_error("TLS: --tls-client-auth %s needs --tls-ca", o->tls_client_auth);
        rv = NNG_EINVAL;
    }
    if (rv == 0 && (rv = nng_tls_config_auth_mode(cfg, mode)) != 0)
        log_error("TLS: %s", nng_strerror(rv));
    if (cert) memset(cert, 0, strlen(cert));
    if (key) memset(key, 0, strlen(key));
    free(cert);
    free(key);
    if (rv != 0) {
        nng_tls_config_free(cfg);
        return -1;
    }
    *out = cfg;
    return 0;
}

int transport_check_tls(const options *o)
{
    nng_tls_config *cfg;
    if (tls_config(o, &cfg) != 0) return -1;
    nng_tls_config_free(cfg);
    return 0;
}

static int listen_all(transport *t, char *bound_url, size_t cap)
{
    const options *o = t->srv->opts;
    nng_tls_config *tls = NULL;
    for (int i = 0; i < o->n_listen; i++) {
        nng_listener l;
        int rv = nng_listener_create(&l, t->sock, o->listen[i]);
        if (rv == 0 && strncmp(o->listen[i], "tls+tcp://", 10) == 0) {
            if (!tls && tls_config(o, &tls) != 0) return -1;
            rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, tls);
        }
        if (rv == 0) rv = nng_listener_start(l, 0);
        if (rv != 0) {
            log_error("cannot listen on %s: %s", o->listen[i], nng_strerror(rv));
            return -1;
        }
        char url[512];
        snprintf(url, sizeof url, "%s", o->listen[i]);
        int port;
        bool tcp = strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tls+tcp://", 10) == 0;
        if (tcp && nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port) == 0) {
            char *colon = strrchr(url, ':');
            if (colon && colon > strstr(url, "://") + 2)
                snprintf(colon, sizeof url - (size_t)(colon - url), ":%d", port);
        }
        log_info("listening on %s", url);
        if (i == 0 && bound_url) snprintf(bound_url, cap, "%s", url);
    }
    /* Listeners hold their own references to the configuration. */
    if (tls) nng_tls_config_free(tls);
    return 0;
}

int transport_start(transport **out, server *srv, char *bound_url, size_t cap)
{
    const options *o = srv->opts;
    transport *t = calloc(1, sizeof *t);
    if (!t) return -1;
    t->srv = srv;
    pthread_mutex_init(&t->mutex, NULL);
    pthread_cond_init(&t->queued, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
    pthread_cond_init(&t->parked, &monotonic);
    pthread_condattr_destroy(&monotonic);
    int rv = nng_rep0_open(&t->sock);
    if (rv != 0) {
        log_error("cannot open a rep0 socket: %s", nng_strerror(rv));
        free(t);
        return -1;
    }
    /* Accept up to twice the limit so that a moderately oversized request
     * still gets a TOO_LARGE reply; larger ones are cut by the transport. */
    uint64_t transport_max = o->max_message * 2;
    nng_socket_set_size(t->sock, NNG_OPT_RECVMAXSZ, (size_t)transport_max);
    if ((rv = nng_pipe_notify(t->sock, NNG_PIPE_EV_ADD_POST, on_pipe_event, t)) != 0 ||
        (rv = nng_pipe_notify(t->sock, NNG_PIPE_EV_REM_POST, on_pipe_event, t)) != 0) {
        log_error("cannot watch connections: %s", nng_strerror(rv));
        nng_close(t->sock);
        free(t);
        return -1;
    }

    t->slots = calloc(o->contexts, sizeof *t->slots);
    t->threads = calloc(o->request_threads, sizeof *t->threads);
    t->in_flight = calloc(o->contexts, sizeof *t->in_flight);
    if (!t->slots || !t->threads || !t->in_flight) goto fail_out;
    for (uint32_t i = 0; i < o->contexts; i++) {
        ctx_slot *c = &t->slots[i];
        c->t = t;
        if ((rv = nng_ctx_open(&c->ctx, t->sock)) != 0 ||
            (rv = nng_aio_alloc(&c->aio, ctx_callback, c)) != 0) {
            log_error("cannot create request context: %s", nng_strerror(rv));
            goto fail_out;
        }
        t->n_slots++;
    }
    for (uint32_t i = 0; i < o->request_threads; i++) {
        if (pthread_create(&t->threads[i], NULL, request_thread, t) != 0) goto fail_out;
        t->n_threads++;
    }
    if (pthread_create(&t->timer, NULL, timer_thread, t) != 0) goto fail_out;
    t->timer_started = true;
    if (listen_all(t, bound_url, cap)) goto fail_out;
    for (uint32_t i = 0; i < t->n_slots; i++) arm_receive(&t->slots[i]);
    *out = t;
    return 0;
fail_out:
    transport_stop(t);
    return -1;
}

void transport_stop(transport *t)
{
    if (!t) return;
    /* Let the requests being applied finish and send their replies, drop
     * the queued ones, then close the socket, which aborts the rest. */
    pthread_mutex_lock(&t->mutex);
    t->stopping = true;
    pthread_cond_broadcast(&t->queued);
    pthread_cond_broadcast(&t->parked);
    pthread_mutex_unlock(&t->mutex);
    for (uint32_t i = 0; i < t->n_threads; i++) pthread_join(t->threads[i], NULL);
    if (t->timer_started) pthread_join(t->timer, NULL);
    /* Replies the request threads handed over are still being sent. */
    for (uint32_t i = 0; i < t->n_slots; i++)
        if (t->slots[i].state == CTX_SENDING) nng_aio_wait(t->slots[i].aio);
    nng_close(t->sock);
    for (uint32_t i = 0; i < t->n_slots; i++) {
        nng_aio_stop(t->slots[i].aio);
        nng_msg *left = nng_aio_get_msg(t->slots[i].aio);
        if (left) nng_msg_free(left);
        nng_aio_free(t->slots[i].aio);
        /* Parked requests go unanswered: the socket is closed. */
        if (t->slots[i].request) nng_msg_free(t->slots[i].request);
        if (t->slots[i].answer) nng_msg_free(t->slots[i].answer);
    }
    pthread_cond_destroy(&t->queued);
    pthread_cond_destroy(&t->parked);
    pthread_mutex_destroy(&t->mutex);
    free(t->slots);
    free(t->threads);
    free(t->in_flight);
    free(t);
}
