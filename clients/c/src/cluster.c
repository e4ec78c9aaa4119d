/*
 * optimd_cluster: one session over several daemons, each parameter on the
 * server optimd_place picks (placement.c), built on one optimd_client per
 * server. The semantics follow the Python client's optimd.Cluster, so that
 * workers in either language can share a cluster.
 */
#include <optimd/client.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLUSTER_ERR_CAP 2048
#define CLUSTER_SEQ_MAX (1ull << 53)   /* protocol.md, `step`: `seq` */

/* The seq every server gets with the next step on one session. */
typedef struct cluster_seq {
    char session[sizeof(((optimd_session *)0)->name)];
    uint64_t next;
} cluster_seq;

struct optimd_cluster {
    size_t n;
    char **urls;
    optimd_client **clients;
    size_t *applied;                   /* n slots; n_applied used */
    size_t n_applied;
    long failed;                       /* server index, or -1 */
    /* Per-call scratch: where each server's share starts (n + 1 each). */
    size_t *grad_start, *out_start;
    cluster_seq *seqs;
    size_t n_seqs, cap_seqs;
    char err[CLUSTER_ERR_CAP];
};

/* optimd_cluster_create's failures, which have no cluster to live in. */
static _Thread_local char create_err[CLUSTER_ERR_CAP];

static void begin_call(optimd_cluster *cl)
{
    cl->err[0] = '\0';
    cl->n_applied = 0;
    cl->failed = -1;
}

/* A failure that is no server's: a bad argument, out of memory. */
static int cluster_fail(optimd_cluster *cl, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cl ? cl->err : create_err, CLUSTER_ERR_CAP, fmt, ap);
    va_end(ap);
    return code;
}

/* Appends to a buffer that keeps its NUL; what does not fit is cut. */
static void err_append(char *buf, size_t cap, const char *fmt, ...)
{
    size_t len = strlen(buf);
    if (len + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

/* Server i failed `op` with `code`: the message says where, which servers
 * had applied the call (cl->applied, filled as they answered), and the
 * server's own words; the code is the server's, so a caller can still
 * test for OPTIMD_E_NONFINITE and the like. */
static int server_fail(optimd_cluster *cl, const char *op, size_t i, int code)
{
    cl->failed = (long)i;
    cl->err[0] = '\0';
    err_append(cl->err, sizeof cl->err, "cluster %s on %s (already applied on: ",
               op, cl->urls[i]);
    if (cl->n_applied == 0) err_append(cl->err, sizeof cl->err, "none");
    for (size_t k = 0; k < cl->n_applied; k++)
        err_append(cl->err, sizeof cl->err, "%s%s", k ? ", " : "",
                   cl->urls[cl->applied[k]]);
    err_append(cl->err, sizeof cl->err, "): %s",
               optimd_client_error(cl->clients[i]));
    return code;
}

void optimd_cluster_free(optimd_cluster *cl)
{
    if (!cl) return;
    for (size_t i = 0; i < cl->n; i++) {
        if (cl->clients) optimd_client_free(cl->clients[i]);
        if (cl->urls) free(cl->urls[i]);
    }
    free(cl->clients);
    free(cl->urls);
    free(cl->applied);
    free(cl->grad_start);
    free(cl->out_start);
    free(cl->seqs);
    free(cl);
}

int optimd_cluster_create(const char *const *urls, size_t n,
                          const optimd_client_options *opts,
                          optimd_cluster **out)
{
    create_err[0] = '\0';
    if (!out) return cluster_fail(NULL, OPTIMD_CLIENT_E_ARG, "out is NULL");
    *out = NULL;
    if (!urls || n == 0)
        return cluster_fail(NULL, OPTIMD_CLIENT_E_ARG,
                            "a cluster needs at least one server URL");
    for (size_t i = 0; i < n; i++) {
        if (!urls[i])
            return cluster_fail(NULL, OPTIMD_CLIENT_E_ARG, "urls[%zu] is NULL", i);
        /* Two clients on one server would each hold a share of the
         * placement that the other's daemon never hears of. */
        for (size_t j = 0; j < i; j++)
            if (strcmp(urls[i], urls[j]) == 0)
                return cluster_fail(NULL, OPTIMD_CLIENT_E_ARG,
                                    "server URL listed twice: %s", urls[i]);
    }
    optimd_cluster *cl = calloc(1, sizeof *cl);
    if (!cl) return cluster_fail(NULL, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    cl->n = n;
    cl->failed = -1;
    cl->urls = calloc(n, sizeof *cl->urls);
    cl->clients = calloc(n, sizeof *cl->clients);
    cl->applied = calloc(n, sizeof *cl->applied);
    cl->grad_start = calloc(n + 1, sizeof *cl->grad_start);
    cl->out_start = calloc(n + 1, sizeof *cl->out_start);
    if (!cl->urls || !cl->clients || !cl->applied || !cl->grad_start ||
        !cl->out_start) {
        optimd_cluster_free(cl);
        return cluster_fail(NULL, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        cl->urls[i] = strdup(urls[i]);
        if (!cl->urls[i]) {
            optimd_cluster_free(cl);
            return cluster_fail(NULL, OPTIMD_CLIENT_E_NOMEM, "out of memory");
        }
        int rv = optimd_client_connect_ex(urls[i], opts, &cl->clients[i]);
        if (rv) {
            cluster_fail(NULL, rv, "cluster: connecting to %s: %s", urls[i],
                         optimd_client_error(NULL));
            optimd_cluster_free(cl);
            return rv;
        }
    }
    *out = cl;
    return 0;
}

size_t optimd_cluster_size(const optimd_cluster *cl)
{
    return cl ? cl->n : 0;
}

const char *optimd_cluster_url(const optimd_cluster *cl, size_t i)
{
    return cl && i < cl->n ? cl->urls[i] : NULL;
}

optimd_client *optimd_cluster_client(optimd_cluster *cl, size_t i)
{
    return cl && i < cl->n ? cl->clients[i] : NULL;
}

size_t optimd_cluster_place(const optimd_cluster *cl, const char *name)
{
    if (!cl) return (size_t)-1;
    return optimd_place(name, (const char *const *)cl->urls, cl->n);
}

const char *optimd_cluster_error(const optimd_cluster *cl)
{
    return cl ? cl->err : create_err;
}

long optimd_cluster_failed_server(const optimd_cluster *cl)
{
    return cl ? cl->failed : -1;
}

const size_t *optimd_cluster_applied(const optimd_cluster *cl, size_t *count)
{
    if (count) *count = cl ? cl->n_applied : 0;
    return cl ? cl->applied : NULL;
}

/* One handle per server, all of one session: a mixed-up array would step
 * another session's parameters with this one's gradients. */
static int sessions_ok(optimd_cluster *cl, const optimd_session *s)
{
    if (!s) return cluster_fail(cl, OPTIMD_CLIENT_E_ARG, "sessions is NULL");
    for (size_t i = 0; i < cl->n; i++) {
        if (!memchr(s[i].name, '\0', sizeof s[i].name) || !s[i].name[0])
            return cluster_fail(cl, OPTIMD_CLIENT_E_ARG,
                                "sessions[%zu] has no session name", i);
        if (strcmp(s[i].name, s[0].name) != 0)
            return cluster_fail(cl, OPTIMD_CLIENT_E_ARG,
                                "sessions[%zu] is session '%s', not '%s': a "
                                "cluster session is one handle per server, "
                                "in the cluster's order",
                                i, s[i].name, s[0].name);
    }
    return 0;
}

/* Copies `t` grouped by server, in the cluster's order, into a new array
 * (*out, NULL when n is 0): server i's share is [start[i], start[i+1]).
 * The copies keep the caller's `data`, so outputs land in caller memory. */
static int split(optimd_cluster *cl, const optimd_named_tensor *t, size_t n,
                 optimd_named_tensor **out, size_t *start)
{
    *out = NULL;
    memset(start, 0, (cl->n + 1) * sizeof *start);
    if (n == 0) return 0;
    if (!t) return cluster_fail(cl, OPTIMD_CLIENT_E_ARG, "tensor array is NULL");
    size_t *where = malloc((n + cl->n) * sizeof *where);
    optimd_named_tensor *sorted = malloc(n * sizeof *sorted);
    if (!where || !sorted) {
        free(where);
        free(sorted);
        return cluster_fail(cl, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    }
    for (size_t k = 0; k < n; k++) {
        if (!t[k].name) {
            free(where);
            free(sorted);
            return cluster_fail(cl, OPTIMD_CLIENT_E_ARG,
                                "tensor %zu has no name", k);
        }
        where[k] = optimd_cluster_place(cl, t[k].name);
        start[where[k] + 1]++;
    }
    for (size_t i = 0; i < cl->n; i++) start[i + 1] += start[i];
    size_t *fill = where + n;
    memcpy(fill, start, cl->n * sizeof *fill);
    for (size_t k = 0; k < n; k++) sorted[fill[where[k]]++] = t[k];
    free(where);
    *out = sorted;
    return 0;
}

static cluster_seq *seq_find(const optimd_cluster *cl, const char *name)
{
    for (size_t i = 0; i < cl->n_seqs; i++)
        if (strcmp(cl->seqs[i].session, name) == 0) return &cl->seqs[i];
    return NULL;
}

/* Where a session the cluster has not stepped starts: past every seq its
 * clients would send, so that an attach that raised one is honoured. */
static uint64_t seq_start(const optimd_cluster *cl, const char *name)
{
    uint64_t next = 1;
    for (size_t i = 0; i < cl->n; i++) {
        uint64_t s = optimd_client_next_seq(cl->clients[i], name);
        if (s > next) next = s;
    }
    return next;
}

static int seq_get(optimd_cluster *cl, const char *name, cluster_seq **out)
{
    if ((*out = seq_find(cl, name))) return 0;
    if (strlen(name) >= sizeof cl->seqs[0].session)
        return cluster_fail(cl, OPTIMD_CLIENT_E_ARG, "session name is too long");
    if (cl->n_seqs == cl->cap_seqs) {
        size_t cap = cl->cap_seqs ? 2 * cl->cap_seqs : 4;
        cluster_seq *grown = realloc(cl->seqs, cap * sizeof *grown);
        if (!grown) return cluster_fail(cl, OPTIMD_CLIENT_E_NOMEM, "out of memory");
        cl->seqs = grown;
        cl->cap_seqs = cap;
    }
    cluster_seq *e = &cl->seqs[cl->n_seqs++];
    strcpy(e->session, name);
    e->next = seq_start(cl, name);
    *out = e;
    return 0;
}

uint64_t optimd_cluster_next_seq(const optimd_cluster *cl, const char *name)
{
    if (!cl || !name) return 0;
    const cluster_seq *e = seq_find(cl, name);
    return e ? e->next : seq_start(cl, name);
}

int optimd_cluster_set_next_seq(optimd_cluster *cl, const char *name,
                                uint64_t seq)
{
    if (!cl) return OPTIMD_CLIENT_E_ARG;
    begin_call(cl);
    if (!name || !*name)
        return cluster_fail(cl, OPTIMD_CLIENT_E_ARG, "no session name given");
    if (seq < 1 || seq > CLUSTER_SEQ_MAX)
        return cluster_fail(cl, OPTIMD_CLIENT_E_ARG,
                            "seq %llu is outside 1 to 2^53",
                            (unsigned long long)seq);
    cluster_seq *e;
    int rv = seq_get(cl, name, &e);
    if (rv) return rv;
    e->next = seq;
    return 0;
}

int optimd_cluster_open(optimd_cluster *cl, const char *name,
                        const optimd_open_options *opts,
                        optimd_session *sessions, double *lr)
{
    if (!cl) return OPTIMD_CLIENT_E_ARG;
    begin_call(cl);
    if (!opts || !sessions)
        return cluster_fail(cl, OPTIMD_CLIENT_E_ARG, "options or sessions is NULL");
    /* Each server answers `existing` for itself; the caller asked whether
     * the session already existed, which holds only if it did everywhere. */
    optimd_open_options o;
    optimd_open_options_init(&o);
    size_t covered = opts->struct_size < sizeof o ? opts->struct_size : sizeof o;
    memcpy(&o, opts, covered);
    o.struct_size = covered;
    int32_t *want_existing = NULL, existing = 0, everywhere = 1;
    if (covered >= offsetof(optimd_open_options, existing) + sizeof o.existing) {
        want_existing = opts->existing;
        o.existing = &existing;
    }
    for (size_t i = 0; i < cl->n; i++) {
        existing = 0;
        int rv = optimd_client_open_ex(cl->clients[i], name, &o, &sessions[i],
                                       i == 0 ? lr : NULL);
        if (rv) {
            server_fail(cl, "open", i, rv);
            /* Best effort: a half-opened cluster session would leave
             * sessions that no handle array can reach. */
            for (size_t j = 0; j < i; j++)
                optimd_client_close(cl->clients[j], &sessions[j]);
            return rv;
        }
        if (!existing) everywhere = 0;
    }
    if (want_existing) *want_existing = everywhere;
    return 0;
}

int optimd_cluster_register(optimd_cluster *cl, const optimd_session *sessions,
                            const optimd_named_tensor *params, size_t n,
                            const char *group)
{
    if (!cl) return OPTIMD_CLIENT_E_ARG;
    begin_call(cl);
    int rv;
    optimd_named_tensor *p;
    if ((rv = sessions_ok(cl, sessions)) ||
        (rv = split(cl, params, n, &p, cl->grad_start)))
        return rv;
    const size_t *start = cl->grad_start;
    for (size_t i = 0; i < cl->n; i++) {
        size_t share = start[i + 1] - start[i];
        if (share == 0) continue;
        rv = optimd_client_register_ex(cl->clients[i], &sessions[i],
                                       p + start[i], share, group);
        if (rv) {
            server_fail(cl, "register", i, rv);
            break;
        }
        cl->applied[cl->n_applied++] = i;
    }
    free(p);
    return rv;
}

int optimd_cluster_step(optimd_cluster *cl, const optimd_session *sessions,
                        const optimd_named_tensor *grads, size_t n_grads,
                        optimd_named_tensor *params_out, size_t n_out,
                        const optimd_step_options *opts,
                        optimd_step_result *results)
{
    if (!cl) return OPTIMD_CLIENT_E_ARG;
    begin_call(cl);
    int rv;
    if ((rv = sessions_ok(cl, sessions))) return rv;
    /* The other servers get the same options without the per-group
     * values, which would overwrite the first server's in one array. */
    optimd_step_options rest;
    const optimd_step_options *rest_p = NULL;
    if (opts) {
        optimd_step_options_init(&rest);
        size_t covered = opts->struct_size < sizeof rest ? opts->struct_size
                                                         : sizeof rest;
        memcpy(&rest, opts, covered);
        rest.struct_size = covered;
        rest.groups = NULL;
        rest.groups_cap = 0;
        rest_p = &rest;
        if (cl->n > 1 && rest.clip_norm != 0 &&
            covered >= offsetof(optimd_step_options, clip_norm) +
                           sizeof rest.clip_norm)
            return cluster_fail(cl, OPTIMD_CLIENT_E_ARG,
                                "clip_norm needs the norm over every "
                                "gradient, and each server sees only its "
                                "own: clip before the step (or use "
                                "clip_value) with several servers");
    }
    cluster_seq *e;
    if ((rv = seq_get(cl, sessions[0].name, &e))) return rv;
    optimd_named_tensor *g = NULL, *o = NULL;
    if ((rv = split(cl, grads, n_grads, &g, cl->grad_start)) ||
        (rv = split(cl, params_out, n_out, &o, cl->out_start)))
        goto out;
    const size_t *gs = cl->grad_start, *os = cl->out_start;
    for (size_t i = 0; i < cl->n; i++) {
        optimd_client *c = cl->clients[i];
        /* One seq for every server: a retry of a step that failed
         * part-way is then a duplicate exactly where it was applied. */
        if (!(rv = optimd_client_set_next_seq(c, sessions[i].name, e->next)))
            rv = optimd_client_step_opts(
                c, &sessions[i], g ? g + gs[i] : NULL, gs[i + 1] - gs[i],
                o ? o + os[i] : NULL, os[i + 1] - os[i],
                i == 0 ? opts : rest_p, results ? &results[i] : NULL);
        if (rv) {
            server_fail(cl, "step", i, rv);
            goto out;
        }
        cl->applied[cl->n_applied++] = i;
    }
    e->next++;
out:
    free(g);
    free(o);
    return rv;
}

int optimd_cluster_pull(optimd_cluster *cl, const optimd_session *sessions,
                        optimd_named_tensor *params, size_t n)
{
    if (!cl) return OPTIMD_CLIENT_E_ARG;
    begin_call(cl);
    int rv;
    optimd_named_tensor *p;
    if ((rv = sessions_ok(cl, sessions)) ||
        (rv = split(cl, params, n, &p, cl->grad_start)))
        return rv;
    const size_t *start = cl->grad_start;
    for (size_t i = 0; i < cl->n; i++) {
        size_t share = start[i + 1] - start[i];
        if (share == 0) continue;
        rv = optimd_client_pull(cl->clients[i], &sessions[i], p + start[i],
                                share);
        if (rv) {
            server_fail(cl, "pull", i, rv);
            break;
        }
        cl->applied[cl->n_applied++] = i;
    }
    free(p);
    return rv;
}

int optimd_cluster_close(optimd_cluster *cl, const optimd_session *sessions)
{
    if (!cl) return OPTIMD_CLIENT_E_ARG;
    begin_call(cl);
    int rv = sessions_ok(cl, sessions);
    if (rv) return rv;
    /* Every server is tried, so one that is down does not keep the
     * session open on the others; the first failure is reported. */
    size_t closed_before = 0;
    for (size_t i = 0; i < cl->n; i++) {
        int r = optimd_client_close(cl->clients[i], &sessions[i]);
        if (r && !rv) {
            rv = r;
            closed_before = cl->n_applied;
            server_fail(cl, "close", i, r);
        } else if (!r) {
            cl->applied[cl->n_applied++] = i;
        }
    }
    if (rv) {
        cl->n_applied = closed_before;
        return rv;
    }
    /* A later session of that name starts a fresh record of seqs, as each
     * client's does. */
    cluster_seq *e = seq_find(cl, sessions[0].name);
    if (e) *e = cl->seqs[--cl->n_seqs];
    return 0;
}
