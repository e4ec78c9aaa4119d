/* Small-request latency and throughput: a 1,000-element fp32 AdamW step
 * round trip through the daemon against an NNG echo of the same bytes, with
 * 1, 4 and 16 concurrent clients, each on its own REQ socket (its own TCP
 * connection) and thread, in closed loop for SECONDS each.
 *
 * The step and the echo are driven by the same code: the same request is
 * packed, sent, and its reply received and decoded by msgpack-c, so the
 * only difference between the rows is what answers. The echo's reply is
 * the request itself; a step's reply carries the 1,000 updated elements, so
 * both replies are about 4 KiB. Rows:
 *   echo         the rep0 echo server (bench_nng_echo)
 *   own          optimd, each client stepping its own session
 *   shared       optimd, every client stepping one session (its steps are
 *                applied one at a time, protocol.md `step`)
 *   lib own      optimd through the C client library (optimd_client_step,
 *                sequenced, parameters copied out), own sessions
 * Written for C so that 16 clients on a 2-core host measure the daemon and
 * not an interpreter lock.
 *
 * usage: bench_latency OPTIMD_URL ECHO_URL [SECONDS] */
#include <optimd/client.h>

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { N_ELEM = 1000, MAX_CLIENTS = 16, WARMUP = 200, SAMPLE_CAP = 400000 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_latency: %s: %s\n", what, why);
    exit(1);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_tensor(msgpack_packer *pk, const float *data)
{
    msgpack_pack_map(pk, 3);
    pack_str(pk, "dtype");
    pack_str(pk, "f32");
    pack_str(pk, "shape");
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint32(pk, N_ELEM);
    pack_str(pk, "data");
    msgpack_pack_bin(pk, sizeof(float) * N_ELEM);
    msgpack_pack_bin_body(pk, data, sizeof(float) * N_ELEM);
}

static nng_socket dial(const char *url)
{
    nng_socket s;
    int rv;
    if ((rv = nng_req0_open(&s)) != 0) die("nng_req0_open", nng_strerror(rv));
    nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 0);
    /* A resent step would be applied twice; nothing here is retried. */
    nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 30000);
    nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 30000);
    if ((rv = nng_dial(s, url, NULL, 0)) != 0) die(url, nng_strerror(rv));
    return s;
}

/* Sends `req`, waits for the reply and decodes it into `out` (whose zone
 * the caller owns). msgpack-c leaves strings and bins pointing into the
 * received bytes, so the reply message is kept in *held until the next
 * call (or until the caller frees it). Returns false when the daemon
 * answered `ok: false`. */
static bool round_trip(nng_socket s, const msgpack_sbuffer *req, nng_msg **held,
                       msgpack_unpacked *out, char *err, size_t errlen)
{
    int rv;
    nng_msg *m;
    if (*held) nng_msg_free(*held);
    *held = NULL;
    if ((rv = nng_msg_alloc(&m, req->size)) != 0) die("nng_msg_alloc", nng_strerror(rv));
    memcpy(nng_msg_body(m), req->data, req->size);
    if ((rv = nng_sendmsg(s, m, 0)) != 0) die("send", nng_strerror(rv));
    if ((rv = nng_recvmsg(s, &m, 0)) != 0) die("recv", nng_strerror(rv));
    msgpack_unpacked_destroy(out);
    msgpack_unpacked_init(out);
    size_t off = 0;
    if (msgpack_unpack_next(out, nng_msg_body(m), nng_msg_len(m), &off) != MSGPACK_UNPACK_SUCCESS ||
        out->data.type != MSGPACK_OBJECT_MAP)
        die("reply", "not a msgpack map");
    *held = m;
    const msgpack_object_map *map = &out->data.via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == 2 && memcmp(k->via.str.ptr, "ok", 2) == 0 &&
            v->type == MSGPACK_OBJECT_BOOLEAN && !v->via.boolean) {
            snprintf(err, errlen, "daemon answered an error");
            return false;
        }
    }
    return true;
}

static const msgpack_object *map_get(const msgpack_object *o, const char *key)
{
    if (o->type != MSGPACK_OBJECT_MAP) return NULL;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return &o->via.map.ptr[i].val;
    }
    return NULL;
}

typedef struct session {
    char name[64];
    char token[33];
} session;

static float grad[N_ELEM], init[N_ELEM];

/* Opens an AdamW session with durability none (no disk in the loop) and
 * registers one 1,000-element parameter "w". */
static void open_session(const char *url, const char *name, session *out)
{
    nng_socket s = dial(url);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_unpacked rep;
    msgpack_unpacked_init(&rep);
    nng_msg *held = NULL;
    char err[128];

    msgpack_pack_map(&pk, 6);
    pack_str(&pk, "v"); msgpack_pack_int(&pk, 1);
    pack_str(&pk, "op"); pack_str(&pk, "open");
    pack_str(&pk, "session"); pack_str(&pk, name);
    pack_str(&pk, "optimizer"); pack_str(&pk, "adamw");
    pack_str(&pk, "hparams");
    msgpack_pack_map(&pk, 2);
    pack_str(&pk, "lr"); msgpack_pack_double(&pk, 1e-3);
    pack_str(&pk, "weight_decay"); msgpack_pack_double(&pk, 1e-2);
    pack_str(&pk, "durability"); pack_str(&pk, "none");
    if (!round_trip(s, &sb, &held, &rep, err, sizeof err)) die("open", err);
    const msgpack_object *tok = map_get(&rep.data, "token");
    if (!tok || tok->type != MSGPACK_OBJECT_STR || tok->via.str.size != 32) die("open", "no token");
    snprintf(out->name, sizeof out->name, "%s", name);
    memcpy(out->token, tok->via.str.ptr, 32);
    out->token[32] = '\0';

    msgpack_sbuffer_clear(&sb);
    msgpack_pack_map(&pk, 5);
    pack_str(&pk, "v"); msgpack_pack_int(&pk, 1);
    pack_str(&pk, "op"); pack_str(&pk, "register");
    pack_str(&pk, "session"); pack_str(&pk, out->name);
    pack_str(&pk, "token"); pack_str(&pk, out->token);
    pack_str(&pk, "params");
    msgpack_pack_map(&pk, 1);
    pack_str(&pk, "w");
    pack_tensor(&pk, init);
    if (!round_trip(s, &sb, &held, &rep, err, sizeof err)) die("register", err);
    msgpack_unpacked_destroy(&rep);
    if (held) nng_msg_free(held);
    msgpack_sbuffer_destroy(&sb);
    nng_close(s);
}

typedef enum mode { MODE_ECHO, MODE_OWN, MODE_SHARED, MODE_LIB } mode;
static const char *const mode_names[] = {"echo", "optimd own", "optimd shared", "optimd lib own"};

typedef struct worker {
    pthread_t thread;
    mode mode;
    const char *url;
    const session *sess;
    pthread_barrier_t *go;
    atomic_bool *stop;
    float *lat_us;          /* samples, SAMPLE_CAP at most */
    size_t n_lat;
    uint64_t done;          /* requests completed in the timed window */
} worker;

static void *run_raw(void *arg)
{
    worker *w = arg;
    nng_socket s = dial(w->url);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_unpacked rep;
    msgpack_unpacked_init(&rep);
    nng_msg *held = NULL;
    char err[128];
    for (long i = 0;; i++) {
        if (i == WARMUP) pthread_barrier_wait(w->go);
        if (i > WARMUP && atomic_load_explicit(w->stop, memory_order_relaxed)) break;
        double t0 = now_s();
        /* Packed anew each time, as a client would with a fresh gradient. */
        msgpack_sbuffer_clear(&sb);
        msgpack_pack_map(&pk, 6);
        pack_str(&pk, "v"); msgpack_pack_int(&pk, 1);
        pack_str(&pk, "op"); pack_str(&pk, "step");
        pack_str(&pk, "session"); pack_str(&pk, w->sess->name);
        pack_str(&pk, "token"); pack_str(&pk, w->sess->token);
        pack_str(&pk, "return"); msgpack_pack_true(&pk);
        pack_str(&pk, "grads");
        msgpack_pack_map(&pk, 1);
        pack_str(&pk, "w");
        pack_tensor(&pk, grad);
        if (!round_trip(s, &sb, &held, &rep, err, sizeof err)) die("step", err);
        if (w->mode != MODE_ECHO) {
            const msgpack_object *p = map_get(&rep.data, "params");
            const msgpack_object *t = p ? map_get(p, "w") : NULL;
            const msgpack_object *d = t ? map_get(t, "data") : NULL;
            if (!d || d->type != MSGPACK_OBJECT_BIN || d->via.bin.size != sizeof(float) * N_ELEM)
                die("step", "reply carries no 1,000-element parameter");
        }
        double t1 = now_s();
        if (i >= WARMUP) {
            if (w->n_lat < SAMPLE_CAP) w->lat_us[w->n_lat++] = (float)((t1 - t0) * 1e6);
            w->done++;
        }
    }
    msgpack_unpacked_destroy(&rep);
    if (held) nng_msg_free(held);
    msgpack_sbuffer_destroy(&sb);
    nng_close(s);
    return NULL;
}

static void *run_lib(void *arg)
{
    worker *w = arg;
    optimd_client *c;
    if (optimd_client_connect(w->url, 30000, &c) != 0) die("connect", optimd_client_error(NULL));
    optimd_session s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "%s", w->sess->name);
    snprintf(s.token, sizeof s.token, "%s", w->sess->token);
    static const int64_t shape[1] = {N_ELEM};
    float out[N_ELEM];
    optimd_named_tensor g = {"w", OPTIMD_CLIENT_F32, 1, shape, grad};
    optimd_named_tensor p = {"w", OPTIMD_CLIENT_F32, 1, shape, out};
    for (long i = 0;; i++) {
        if (i == WARMUP) pthread_barrier_wait(w->go);
        if (i > WARMUP && atomic_load_explicit(w->stop, memory_order_relaxed)) break;
        double t0 = now_s();
        if (optimd_client_step(c, &s, &g, 1, &p, 1, NULL, NULL) != 0) die("step", optimd_client_error(c));
        double t1 = now_s();
        if (i >= WARMUP) {
            if (w->n_lat < SAMPLE_CAP) w->lat_us[w->n_lat++] = (float)((t1 - t0) * 1e6);
            w->done++;
        }
    }
    optimd_client_free(c);
    return NULL;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct result {
    double p50, p99, rate;
} result;

static result measure(mode m, const char *url, const session *sess, int n_clients, double seconds)
{
    worker w[MAX_CLIENTS];
    pthread_barrier_t go;
    atomic_bool stop = false;
    pthread_barrier_init(&go, NULL, (unsigned)n_clients + 1);
    for (int i = 0; i < n_clients; i++) {
        w[i] = (worker){.mode = m, .url = url, .sess = m == MODE_SHARED ? &sess[0] : &sess[i],
                        .go = &go, .stop = &stop, .lat_us = malloc(sizeof(float) * SAMPLE_CAP)};
        if (!w[i].lat_us) die("malloc", "out of memory");
        pthread_create(&w[i].thread, NULL, m == MODE_LIB ? run_lib : run_raw, &w[i]);
    }
    pthread_barrier_wait(&go);
    double t0 = now_s();
    struct timespec d = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&d, NULL);
    atomic_store(&stop, true);
    size_t total = 0;
    uint64_t done = 0;
    for (int i = 0; i < n_clients; i++) {
        pthread_join(w[i].thread, NULL);
        total += w[i].n_lat;
        done += w[i].done;
    }
    double t1 = now_s();
    float *all = malloc(sizeof(float) * (total ? total : 1));
    size_t k = 0;
    for (int i = 0; i < n_clients; i++) {
        memcpy(all + k, w[i].lat_us, sizeof(float) * w[i].n_lat);
        k += w[i].n_lat;
        free(w[i].lat_us);
    }
    qsort(all, total, sizeof(float), cmp_float);
    result r = {all[total / 2], all[(size_t)((double)total * 0.99)], (double)done / (t1 - t0)};
    free(all);
    pthread_barrier_destroy(&go);
    return r;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s OPTIMD_URL ECHO_URL [SECONDS]\n", argv[0]);
        return 2;
    }
    const char *optimd_url = argv[1], *echo_url = argv[2];
    double seconds = argc > 3 ? atof(argv[3]) : 3.0;
    srand(1);
    for (int i = 0; i < N_ELEM; i++) {
        init[i] = (float)rand() / (float)RAND_MAX - 0.5f;
        grad[i] = 1e-3f * ((float)rand() / (float)RAND_MAX - 0.5f);
    }
    session sess[MAX_CLIENTS];
    for (int i = 0; i < MAX_CLIENTS; i++) {
        char name[64];
        snprintf(name, sizeof name, "lat-%d-%ld", i, (long)time(NULL));
        open_session(optimd_url, name, &sess[i]);
    }
    /* The echo needs no session; its request carries names of the same
     * length so that it is the same size. */
    session echo_sess[MAX_CLIENTS];
    memcpy(echo_sess, sess, sizeof sess);

    /* The host may be shared: each row is measured ROUNDS times,
     * interleaved with the echo, and the median of each figure printed. */
    enum { ROUNDS = 3 };
    char load[64] = "?";
    FILE *lf = fopen("/proc/loadavg", "r");
    if (lf) {
        double l1, l5, l15;
        if (fscanf(lf, "%lf %lf %lf", &l1, &l5, &l15) == 3) snprintf(load, sizeof load, "%.2f %.2f %.2f", l1, l5, l15);
        fclose(lf);
    }
    printf("1,000-element fp32 AdamW step vs NNG echo of the same bytes, tcp loopback; "
           "%.1f s per row, median of %d rounds; load average at start: %s\n", seconds, ROUNDS, load);
    static const int counts[] = {1, 4, 16};
    printf("%-7s %-15s %9s %9s %10s %9s %9s %9s\n", "clients", "what", "p50_us", "p99_us", "req/s",
           "p50/echo", "p99/echo", "rate/echo");
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        int n = counts[c];
        double v[3][MODE_LIB + 1][ROUNDS];
        for (int r = 0; r < ROUNDS; r++)
            for (int m = MODE_ECHO; m <= MODE_LIB; m++) {
                result x = measure((mode)m, m == MODE_ECHO ? echo_url : optimd_url,
                                   m == MODE_ECHO ? echo_sess : sess, n, seconds);
                v[0][m][r] = x.p50;
                v[1][m][r] = x.p99;
                v[2][m][r] = x.rate;
            }
        result med[MODE_LIB + 1];
        for (int m = MODE_ECHO; m <= MODE_LIB; m++) {
            double f[3];
            for (int k = 0; k < 3; k++) {
                qsort(v[k][m], ROUNDS, sizeof(double), cmp_double);
                f[k] = v[k][m][ROUNDS / 2];
            }
            med[m] = (result){f[0], f[1], f[2]};
        }
        for (int m = MODE_ECHO; m <= MODE_LIB; m++)
            printf("%-7d %-15s %9.1f %9.1f %10.0f %8.2fx %8.2fx %8.2fx\n", n, mode_names[m], med[m].p50,
                   med[m].p99, med[m].rate, med[m].p50 / med[MODE_ECHO].p50, med[m].p99 / med[MODE_ECHO].p99,
                   med[m].rate / med[MODE_ECHO].rate);
        fflush(stdout);
    }
    return 0;
}
