/*
 * optimd_cluster: placement agrees with the Python client's rule (the
 * literals below come from Python's hashlib.blake2b, not from this
 * library); the same AdamW run on three daemons and on one ends
 * bit-identical; going from three servers to four moves only what the new
 * one takes over; a refusing server's error names it and the servers that
 * had applied the step, and the step again completes it exactly once.
 */
#include "blake2b.h"
#include "check.h"
#include "test_daemon.h"

#include <optimd/client.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_blake2b(void)
{
    /* RFC 7693 Appendix A: BLAKE2b-512("abc"). */
    static const char abc512[] =
        "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1"
        "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923";
    uint8_t d[64];
    char got[129];
    optimd_blake2b h;
    optimd_blake2b_init(&h, 64);
    optimd_blake2b_update(&h, "abc", 3);
    optimd_blake2b_final(&h, d);
    hex(d, 64, got);
    CHECK(strcmp(got, abc512) == 0, "BLAKE2b-512(abc) = %s", got);
    /* hashlib.blake2b(b"", digest_size=8): the empty message, and the
     * digest size taking part in the parameter block. */
    optimd_blake2b_init(&h, 8);
    optimd_blake2b_final(&h, d);
    hex(d, 8, got);
    CHECK(strcmp(got, "e4a6a0577479b2b4") == 0, "BLAKE2b-64('') = %s", got);
    /* Fed in pieces across block boundaries, the digest is the same. */
    char msg[300];
    for (size_t i = 0; i < sizeof msg; i++) msg[i] = (char)('a' + i % 26);
    uint8_t whole[64], parts[64];
    optimd_blake2b_init(&h, 64);
    optimd_blake2b_update(&h, msg, sizeof msg);
    optimd_blake2b_final(&h, whole);
    optimd_blake2b_init(&h, 64);
    optimd_blake2b_update(&h, msg, 127);
    optimd_blake2b_update(&h, msg + 127, 1);
    optimd_blake2b_update(&h, msg + 128, 0);
    optimd_blake2b_update(&h, msg + 128, 172);
    optimd_blake2b_final(&h, parts);
    CHECK(memcmp(whole, parts, 64) == 0, "streamed digest differs");
}

/* From Python 3 (hashlib), for these URLs:
 *   w = lambda u, n: int.from_bytes(hashlib.blake2b(f"{u}\0{n}".encode(),
 *                                   digest_size=8).digest(), "big")
 *   place = lambda n, us: max(us, key=lambda u: (w(u, n), u))
 * weight: w(URL3[0], name); on3 / on4: the index of place(name, URL3) and
 * place(name, URL4). The long names make URL3[0] + NUL + name exactly 128
 * and 256 bytes (whole BLAKE2b blocks) and 300 bytes more. */
static const char *const URL3[] = {"tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002",
                                   "tcp://127.0.0.1:7003"};
static const char *const URL4[] = {"tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002",
                                   "tcp://127.0.0.1:7003", "tcp://127.0.0.1:7004"};

typedef struct placement_vector {
    const char *name;          /* NULL: the repeated letter below */
    char fill;
    size_t len;
    uint64_t weight;
    size_t on3, on4;
} placement_vector;

static const placement_vector VECTORS[] = {
    {"", 0, 0, 0x9c566c2c52ab9788ull, 0, 0},
    {"w", 0, 0, 0x92610f8dbfce0166ull, 1, 1},
    {"bias", 0, 0, 0x7728e458367a427cull, 2, 3},
    {"layer0.weight", 0, 0, 0x5e57c6049ff5a562ull, 1, 3},
    {"layer0.bias", 0, 0, 0x6e6dc0a0e0e4c97full, 2, 3},
    {"layer1.weight", 0, 0, 0xd037669bf7c14fe4ull, 0, 0},
    {"layer1.bias", 0, 0, 0xd166f0bb11341f61ull, 1, 1},
    {"embed.weight", 0, 0, 0x12f5b360b68f5330ull, 2, 2},
    {"\xc3\xa9mbed.poids", 0, 0, 0xfc59ca1d8196881cull, 0, 0}, /* "émbed.poids" */
    {"head.weight", 0, 0, 0x9ffba43eb3bdff01ull, 2, 2},
    {"head.bias", 0, 0, 0xb50e9d3379af8898ull, 0, 0},
    {"norm.gamma", 0, 0, 0x801f745569858fc4ull, 0, 0},
    {NULL, 'n', 107, 0x3f2aac81fcd18003ull, 1, 3},
    {NULL, 'm', 235, 0x03cdf597bc58d100ull, 1, 1},
    {NULL, 'x', 300, 0x1eab6b1c115da970ull, 1, 1},
};

static void test_placement_vectors(void)
{
    char buf[301];
    for (size_t k = 0; k < sizeof VECTORS / sizeof VECTORS[0]; k++) {
        const placement_vector *v = &VECTORS[k];
        const char *name = v->name;
        if (!name) {
            memset(buf, v->fill, v->len);
            buf[v->len] = '\0';
            name = buf;
        }
        uint64_t w = optimd_rendezvous_weight(URL3[0], name);
        CHECK(w == v->weight, "weight of '%.20s' is %016llx, hashlib says %016llx",
              name, (unsigned long long)w, (unsigned long long)v->weight);
        size_t on3 = optimd_place(name, URL3, 3), on4 = optimd_place(name, URL4, 4);
        CHECK(on3 == v->on3, "'%.20s' placed on %zu of 3, hashlib says %zu", name,
              on3, v->on3);
        CHECK(on4 == v->on4, "'%.20s' placed on %zu of 4, hashlib says %zu", name,
              on4, v->on4);
        /* The order of the list does not matter. */
        const char *rev[4] = {URL4[3], URL4[2], URL4[1], URL4[0]};
        size_t r = optimd_place(name, rev, 4);
        CHECK(r < 4 && strcmp(rev[r], URL4[on4]) == 0,
              "'%.20s' placed elsewhere when the URLs are reversed", name);
    }
    CHECK(optimd_place("w", URL3, 0) == (size_t)-1, "no servers: placed anyway");
}

/* Growing three servers to four moves about a quarter of the names, every
 * one of them to the new server. */
static void test_growth(void)
{
    enum { N = 2000 };
    size_t moved = 0;
    char name[32];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "layer%d.weight", i);
        size_t before = optimd_place(name, URL3, 3), after = optimd_place(name, URL4, 4);
        if (before == after) continue;
        CHECK(after == 3, "%s moved from server %zu to %zu, not to the new one", name,
              before, after);
        moved++;
    }
    CHECK(moved > N * 18 / 100 && moved < N * 32 / 100,
          "%zu of %d names moved; about a quarter should", moved, N);
}

/* ---- against real daemons --------------------------------------------- */

#define N_DAEMONS 4
#define MAX_PARAMS 64
#define STEPS 10

static test_daemon daemons[N_DAEMONS];

typedef struct param {
    char name[32];
    int32_t dtype;
    uint32_t ndim;
    int64_t shape[2];
    size_t count;
    void *data;
} param;

typedef struct model {
    param p[MAX_PARAMS];
    size_t n;
} model;

static double elem(const param *p, size_t i)
{
    return p->dtype == OPTIMD_CLIENT_F32 ? ((float *)p->data)[i]
                                         : ((double *)p->data)[i];
}

static void set_elem(param *p, size_t i, double v)
{
    if (p->dtype == OPTIMD_CLIENT_F32) ((float *)p->data)[i] = (float)v;
    else ((double *)p->data)[i] = v;
}

static optimd_named_tensor tensor(param *p)
{
    optimd_named_tensor t = {p->name, p->dtype, p->ndim, p->shape, p->data};
    return t;
}

/* Parameters of mixed dtypes and shapes (a scalar among them), named until
 * every one of `urls` holds at least two: the daemons' ports are random,
 * so a fixed list could leave a server empty. */
static void model_init(model *m, const char *const *urls, size_t n_urls)
{
    size_t held[N_DAEMONS] = {0};
    m->n = 0;
    for (size_t k = 0; k < MAX_PARAMS; k++) {
        bool enough = k >= 12;
        for (size_t u = 0; u < n_urls; u++) enough = enough && held[u] >= 2;
        if (enough) break;
        param *p = &m->p[m->n++];
        snprintf(p->name, sizeof p->name, k % 2 ? "layer%zu.bias" : "layer%zu.weight",
                 k / 2);
        held[optimd_place(p->name, urls, n_urls)]++;
        p->dtype = k % 3 == 2 ? OPTIMD_CLIENT_F64 : OPTIMD_CLIENT_F32;
        switch (k % 4) {
        case 0: p->ndim = 0; p->count = 1; break;
        case 1: p->ndim = 1; p->shape[0] = (int64_t)(5 + k); p->count = 5 + k; break;
        case 2:
            p->ndim = 2; p->shape[0] = 3; p->shape[1] = (int64_t)(k + 1);
            p->count = 3 * (k + 1);
            break;
        default: p->ndim = 1; p->shape[0] = 33; p->count = 33; break;
        }
        p->data = calloc(p->count, p->dtype == OPTIMD_CLIENT_F32 ? 4 : 8);
        for (size_t i = 0; i < p->count; i++)
            set_elem(p, i, sin(0.37 * (double)i + 1.3 * (double)k));
    }
}

static void model_free(model *m)
{
    for (size_t k = 0; k < m->n; k++) free(m->p[k].data);
    m->n = 0;
}

/* Gradients that depend on the values the last step returned, so that any
 * difference between two runs grows instead of washing out. Step 4 leaves
 * some parameters without one (and maybe a server with none at all). */
static size_t gradients(const model *m, model *g, int step)
{
    g->n = 0;
    for (size_t k = 0; k < m->n; k++) {
        if (step == 4 && k % 3 == 0) continue;
        param *q = &g->p[g->n++];
        *q = m->p[k];
        q->data = calloc(q->count, q->dtype == OPTIMD_CLIENT_F32 ? 4 : 8);
        for (size_t i = 0; i < q->count; i++)
            set_elem(q, i, elem(&m->p[k], i) - 0.5 * cos(0.11 * (double)i - 0.7 * (double)k) +
                               0.1 * sin(0.7 * step + (double)k + 0.3 * (double)i));
    }
    return g->n;
}

static const optimd_hvalue HPARAMS[] = {
    {"lr", OPTIMD_HVALUE_FLOAT, 0.05, 0},     {"weight_decay", OPTIMD_HVALUE_FLOAT, 0.1, 0},
    {"beta1", OPTIMD_HVALUE_FLOAT, 0.8, 0},   {"beta2", OPTIMD_HVALUE_FLOAT, 0.95, 0},
    {"eps", OPTIMD_HVALUE_FLOAT, 1e-6, 0},
};
static const optimd_hvalue SCHED[] = {
    {"step_size", OPTIMD_HVALUE_INT, 0, 3},
    {"gamma", OPTIMD_HVALUE_FLOAT, 0.5, 0},
};

static optimd_open_options adamw_options(void)
{
    optimd_open_options o;
    optimd_open_options_init(&o);
    o.optimizer = "adamw";
    o.hparams = HPARAMS;
    o.n_hparams = sizeof HPARAMS / sizeof HPARAMS[0];
    o.scheduler = "step";
    o.sched_hparams = SCHED;
    o.n_sched_hparams = sizeof SCHED / sizeof SCHED[0];
    return o;
}

static optimd_cluster *cluster_of(size_t first, size_t n)
{
    const char *urls[N_DAEMONS];
    for (size_t i = 0; i < n; i++) urls[i] = daemons[first + i].url;
    optimd_client_options o;
    optimd_client_options_init(&o);
    o.timeout_ms = 60000;
    optimd_cluster *cl = NULL;
    int rv = optimd_cluster_create(urls, n, &o, &cl);
    CHECK(rv == 0, "cluster_create: %s", optimd_cluster_error(NULL));
    return cl;
}

static void names_of(const model *m, optimd_named_tensor *t)
{
    for (size_t k = 0; k < m->n; k++) t[k] = tensor((param *)&m->p[k]);
}

/* The same AdamW run (with a step schedule) through a cluster of three
 * daemons and through one plain client on a fourth: every step's lr and
 * every returned parameter, and the final state, are bit-identical. */
static void test_three_train_as_one(void)
{
    optimd_cluster *cl = cluster_of(0, 3);
    REQUIRE(cl, "no cluster");
    const char *urls[3] = {daemons[0].url, daemons[1].url, daemons[2].url};
    model a, b, g;
    model_init(&a, urls, 3);
    model_init(&b, urls, 3);
    optimd_client *one = NULL;
    REQUIRE(optimd_client_connect(daemons[3].url, 60000, &one) == 0, "connect: %s",
            optimd_client_error(NULL));

    optimd_open_options o = adamw_options();
    optimd_session s3[3], s1;
    int rv = optimd_cluster_open(cl, "train", &o, s3, NULL);
    CHECK(rv == 0, "cluster open: %s", optimd_cluster_error(cl));
    rv = optimd_client_open_ex(one, "train", &o, &s1, NULL);
    CHECK(rv == 0, "open: %s", optimd_client_error(one));
    optimd_named_tensor ta[MAX_PARAMS], tb[MAX_PARAMS];
    names_of(&a, ta);
    names_of(&b, tb);
    rv = optimd_cluster_register(cl, s3, ta, a.n, NULL);
    CHECK(rv == 0, "cluster register: %s", optimd_cluster_error(cl));
    rv = optimd_client_register(one, &s1, tb, b.n);
    CHECK(rv == 0, "register: %s", optimd_client_error(one));

    /* Each server holds exactly what the placement gives it. */
    for (size_t i = 0; i < 3; i++) {
        optimd_session_details *det = NULL;
        rv = optimd_client_info_ex(optimd_cluster_client(cl, i), &s3[i], &det);
        CHECK(rv == 0, "info on %zu", i);
        if (rv) continue;
        size_t want = 0;
        for (size_t k = 0; k < a.n; k++) want += optimd_cluster_place(cl, a.p[k].name) == i;
        CHECK(det->n_params == want && want >= 2, "server %zu holds %zu, placement says %zu",
              i, det->n_params, want);
        for (size_t k = 0; k < det->n_params; k++)
            CHECK(optimd_cluster_place(cl, det->params[k].name) == i,
                  "%s is on server %zu, placement says %zu", det->params[k].name, i,
                  optimd_cluster_place(cl, det->params[k].name));
        optimd_session_details_free(det);
    }

    double last_lr = 0;
    for (int step = 1; step <= STEPS && !rv; step++) {
        optimd_named_tensor grads[MAX_PARAMS], out_a[MAX_PARAMS], out_b[MAX_PARAMS];
        size_t n = gradients(&a, &g, step);
        for (size_t k = 0; k < n; k++) grads[k] = tensor(&g.p[k]);
        /* Outputs: the parameters that have a gradient this step. */
        size_t n_out = 0;
        for (size_t k = 0; k < a.n; k++) {
            if (step == 4 && k % 3 == 0) continue;
            out_a[n_out] = ta[k];
            out_b[n_out++] = tb[k];
        }
        optimd_step_result r3[3], r1;
        rv = optimd_cluster_step(cl, s3, grads, n, out_a, n_out, NULL, r3);
        CHECK(rv == 0, "cluster step %d: %s", step, optimd_cluster_error(cl));
        int rv1 = optimd_client_step_ex(one, &s1, grads, n, out_b, n_out, &r1);
        CHECK(rv1 == 0, "step %d: %s", step, optimd_client_error(one));
        model_free(&g);
        if (rv || rv1) break;
        last_lr = r1.lr;
        for (size_t i = 0; i < 3; i++)
            CHECK(r3[i].steps == r1.steps && r3[i].lr == r1.lr && r3[i].next_lr == r1.next_lr &&
                      !r3[i].duplicate,
                  "step %d on server %zu: steps %llu lr %g next %g, one server: %llu %g %g",
                  step, i, (unsigned long long)r3[i].steps, r3[i].lr, r3[i].next_lr,
                  (unsigned long long)r1.steps, r1.lr, r1.next_lr);
    }
    /* The schedule took part: step_size 3, gamma 0.5 over 10 steps. */
    CHECK(last_lr == 0.05 * 0.125, "the last step's lr is %g", last_lr);

    /* Pull everything back (into zeroed buffers) and compare bytes. */
    for (size_t k = 0; k < a.n; k++) {
        size_t bytes = a.p[k].count * (a.p[k].dtype == OPTIMD_CLIENT_F32 ? 4 : 8);
        memset(a.p[k].data, 0, bytes);
    }
    rv = optimd_cluster_pull(cl, s3, ta, a.n);
    CHECK(rv == 0, "cluster pull: %s", optimd_cluster_error(cl));
    size_t differ = 0;
    for (size_t k = 0; k < a.n; k++) {
        size_t bytes = a.p[k].count * (a.p[k].dtype == OPTIMD_CLIENT_F32 ? 4 : 8);
        if (memcmp(a.p[k].data, b.p[k].data, bytes) != 0) {
            differ++;
            fprintf(stderr, "%s differs: %.17g vs %.17g\n", a.p[k].name, elem(&a.p[k], 0),
                    elem(&b.p[k], 0));
        }
    }
    CHECK(differ == 0, "%zu of %zu parameters differ between 3 servers and 1", differ, a.n);
    /* And the run did train: the values moved from where they started. */
    CHECK(elem(&a.p[1], 0) != (double)(float)sin(1.3), "layer0.bias never moved");

    CHECK(optimd_cluster_close(cl, s3) == 0, "close: %s", optimd_cluster_error(cl));
    CHECK(optimd_client_close(one, &s1) == 0, "close: %s", optimd_client_error(one));
    optimd_client_free(one);
    model_free(&a);
    model_free(&b);
    optimd_cluster_free(cl);
}

/* Which of `m`'s parameters server i of `cl` holds in session `s`. */
static void held(optimd_cluster *cl, const optimd_session *s, size_t i, const model *m,
                 bool *out)
{
    for (size_t k = 0; k < m->n; k++) out[k] = false;
    optimd_session_details *det = NULL;
    int rv = optimd_client_info_ex(optimd_cluster_client(cl, i), &s[i], &det);
    CHECK(rv == 0, "info on server %zu", i);
    if (rv) return;
    for (size_t j = 0; j < det->n_params; j++)
        for (size_t k = 0; k < m->n; k++)
            if (strcmp(det->params[j].name, m->p[k].name) == 0) out[k] = true;
    optimd_session_details_free(det);
}

/* On live sessions: the same model registered through three servers and
 * through those three plus a fourth; each of the three holds a subset of
 * what it held before, and the new one holds the rest. */
static void test_growth_live(void)
{
    optimd_cluster *three = cluster_of(0, 3), *four = cluster_of(0, 4);
    REQUIRE(three && four, "no cluster");
    const char *urls[4] = {daemons[0].url, daemons[1].url, daemons[2].url, daemons[3].url};
    model m;
    model_init(&m, urls, 4);
    optimd_named_tensor t[MAX_PARAMS];
    names_of(&m, t);
    optimd_open_options o = adamw_options();
    optimd_session s3[3], s4[4];
    int rv = optimd_cluster_open(three, "move3", &o, s3, NULL);
    CHECK(rv == 0, "open: %s", optimd_cluster_error(three));
    rv = optimd_cluster_open(four, "move4", &o, s4, NULL);
    CHECK(rv == 0, "open: %s", optimd_cluster_error(four));
    CHECK(optimd_cluster_register(three, s3, t, m.n, NULL) == 0, "register: %s",
          optimd_cluster_error(three));
    CHECK(optimd_cluster_register(four, s4, t, m.n, NULL) == 0, "register: %s",
          optimd_cluster_error(four));
    bool before[MAX_PARAMS], after[MAX_PARAMS];
    size_t moved = 0, total = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i < 3) held(three, s3, i, &m, before);
        held(four, s4, i, &m, after);
        for (size_t k = 0; k < m.n; k++) {
            total += after[k];
            if (i < 3)
                CHECK(!after[k] || before[k], "%s moved to server %zu, not to the new one",
                      m.p[k].name, i);
            else
                moved += after[k];
        }
    }
    CHECK(total == m.n, "the four servers hold %zu of %zu parameters", total, m.n);
    CHECK(moved >= 2, "the new server holds %zu parameters", moved);
    CHECK(optimd_cluster_close(three, s3) == 0, "close: %s", optimd_cluster_error(three));
    CHECK(optimd_cluster_close(four, s4) == 0, "close: %s", optimd_cluster_error(four));
    model_free(&m);
    optimd_cluster_free(three);
    optimd_cluster_free(four);
}

static uint64_t steps_on(optimd_cluster *cl, const optimd_session *s, size_t i)
{
    optimd_session_info info;
    int rv = optimd_client_info(optimd_cluster_client(cl, i), &s[i], &info);
    CHECK(rv == 0, "info on server %zu", i);
    return rv ? (uint64_t)-1 : info.steps;
}

/* NaN for a parameter of the middle server: the first server applies the
 * step, the middle one refuses it, the last is not asked; the error says
 * so. The same step again, finite, completes it exactly once. */
static void test_refusing_server(void)
{
    optimd_cluster *cl = cluster_of(0, 3);
    REQUIRE(cl, "no cluster");
    const char *urls[3] = {daemons[0].url, daemons[1].url, daemons[2].url};
    model m, g;
    model_init(&m, urls, 3);
    optimd_named_tensor t[MAX_PARAMS], grads[MAX_PARAMS];
    names_of(&m, t);
    optimd_open_options o = adamw_options();
    optimd_session s[3];
    int rv = optimd_cluster_open(cl, "refuse", &o, s, NULL);
    CHECK(rv == 0, "open: %s", optimd_cluster_error(cl));
    CHECK(optimd_cluster_register(cl, s, t, m.n, NULL) == 0, "register: %s",
          optimd_cluster_error(cl));

    size_t n = gradients(&m, &g, 1), bad = n;
    for (size_t k = 0; k < n && bad == n; k++)
        if (optimd_cluster_place(cl, g.p[k].name) == 1) bad = k;
    REQUIRE(bad < n, "no parameter on the middle server");
    for (size_t k = 0; k < n; k++) grads[k] = tensor(&g.p[k]);
    double saved = elem(&g.p[bad], 0);
    set_elem(&g.p[bad], 0, NAN);

    optimd_step_result r[3];
    rv = optimd_cluster_step(cl, s, grads, n, NULL, 0, NULL, r);
    CHECK(rv == OPTIMD_E_NONFINITE, "step answered %d (%s), not NONFINITE", rv,
          optimd_error_name(rv));
    CHECK(optimd_cluster_failed_server(cl) == 1, "failed server %ld, not 1",
          optimd_cluster_failed_server(cl));
    size_t n_applied = 0;
    const size_t *applied = optimd_cluster_applied(cl, &n_applied);
    CHECK(n_applied == 1 && applied[0] == 0, "%zu servers applied it, not just server 0",
          n_applied);
    char want[600];
    snprintf(want, sizeof want, "cluster step on %s (already applied on: %s): NONFINITE",
             urls[1], urls[0]);
    CHECK(strstr(optimd_cluster_error(cl), want), "error '%s' lacks '%s'",
          optimd_cluster_error(cl), want);
    CHECK(steps_on(cl, s, 0) == 1 && steps_on(cl, s, 1) == 0 && steps_on(cl, s, 2) == 0,
          "steps after the refusal: %llu %llu %llu", (unsigned long long)steps_on(cl, s, 0),
          (unsigned long long)steps_on(cl, s, 1), (unsigned long long)steps_on(cl, s, 2));

    /* Again, finite: a duplicate where it was applied, applied elsewhere. */
    set_elem(&g.p[bad], 0, saved);
    rv = optimd_cluster_step(cl, s, grads, n, NULL, 0, NULL, r);
    CHECK(rv == 0, "step again: %s", optimd_cluster_error(cl));
    CHECK(r[0].duplicate && !r[1].duplicate && !r[2].duplicate,
          "duplicate flags %d %d %d, not 1 0 0", r[0].duplicate, r[1].duplicate,
          r[2].duplicate);
    for (size_t i = 0; i < 3; i++)
        CHECK(steps_on(cl, s, i) == 1, "server %zu has %llu steps, not 1", i,
              (unsigned long long)steps_on(cl, s, i));
    /* And the next step is a new one everywhere. */
    rv = optimd_cluster_step(cl, s, grads, n, NULL, 0, NULL, r);
    CHECK(rv == 0 && !r[0].duplicate && !r[1].duplicate && !r[2].duplicate && r[0].steps == 2,
          "the step after: %d, duplicate %d %d %d", rv, r[0].duplicate, r[1].duplicate,
          r[2].duplicate);
    model_free(&g);

    /* clip_norm cannot be computed from a share of the gradients. */
    optimd_step_options so;
    optimd_step_options_init(&so);
    so.clip_norm = 1.0;
    rv = optimd_cluster_step(cl, s, grads, 0, NULL, 0, &so, r);
    CHECK(rv == OPTIMD_CLIENT_E_ARG && optimd_cluster_failed_server(cl) == -1,
          "clip_norm over 3 servers answered %d", rv);
    CHECK(steps_on(cl, s, 0) == 2, "the refused clip_norm step was sent");

    /* A handle array of mixed sessions is refused before anything is sent. */
    optimd_session mixed[3] = {s[0], s[1], s[2]};
    strcpy(mixed[2].name, "other");
    CHECK(optimd_cluster_pull(cl, mixed, t, m.n) == OPTIMD_CLIENT_E_ARG, "mixed sessions");

    CHECK(optimd_cluster_close(cl, s) == 0, "close: %s", optimd_cluster_error(cl));
    model_free(&m);
    optimd_cluster_free(cl);
}

/* A server that does not answer: open fails naming it, and the session
 * opened on the servers before it is closed again. */
static void test_unreachable_server(void)
{
    /* Port 1 on loopback: nothing listens there, so no connection forms. */
    const char *urls[3] = {daemons[0].url, daemons[1].url, "tcp://127.0.0.1:1"};
    optimd_client_options co;
    optimd_client_options_init(&co);
    co.timeout_ms = 500;
    co.max_retries = 0;
    optimd_cluster *cl = NULL;
    REQUIRE(optimd_cluster_create(urls, 3, &co, &cl) == 0, "create: %s",
            optimd_cluster_error(NULL));
    optimd_open_options o = adamw_options();
    optimd_session s[3];
    int rv = optimd_cluster_open(cl, "half", &o, s, NULL);
    CHECK(rv == OPTIMD_CLIENT_E_TRANSPORT, "open answered %d", rv);
    CHECK(optimd_cluster_failed_server(cl) == 2, "failed server %ld",
          optimd_cluster_failed_server(cl));
    CHECK(strstr(optimd_cluster_error(cl), "cluster open on tcp://127.0.0.1:1 "),
          "error '%s' does not name the server", optimd_cluster_error(cl));
    for (size_t i = 0; i < 2; i++) {
        optimd_session_info info;
        rv = optimd_client_info(optimd_cluster_client(cl, i), &s[i], &info);
        CHECK(rv == OPTIMD_E_UNKNOWN_SESSION, "server %zu still has the session (%d)", i,
              rv);
    }
    optimd_cluster_free(cl);

    /* A URL listed twice is refused. */
    const char *twice[2] = {daemons[0].url, daemons[0].url};
    cl = NULL;
    CHECK(optimd_cluster_create(twice, 2, NULL, &cl) == OPTIMD_CLIENT_E_ARG && !cl &&
              strstr(optimd_cluster_error(NULL), "listed twice"),
          "a URL listed twice was accepted");
}

int main(void)
{
    test_blake2b();
    test_placement_vectors();
    test_growth();
    size_t started = 0;
    for (; started < N_DAEMONS; started++)
        if (test_daemon_start(&daemons[started], NULL) != 0) break;
    if (started == N_DAEMONS) {
        test_three_train_as_one();
        test_growth_live();
        test_refusing_server();
        test_unreachable_server();
    } else {
        CHECK(0, "could not start %d daemons", N_DAEMONS);
    }
    for (size_t i = 0; i < started; i++) {
        CHECK(test_daemon_alive(&daemons[i]), "daemon %zu died", i);
        int status = test_daemon_stop(&daemons[i]);
        CHECK(status == 0, "daemon %zu exit status %d", i, status);
    }
    return check_report("client_cluster");
}
