#include "metrics.h"

#include "log.h"
#include "server.h"

#include <optimd/protocol.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ counters -- */

/* Op names are learnt as requests arrive rather than listed here, so an
 * op added to the dispatch table is counted under its own name without a
 * second list to keep in step. The last row is op="unknown". */
#define MAX_OPS 48
#define UNKNOWN_OP MAX_OPS
#define MAX_CODES 64

static _Atomic(const char *) op_names[MAX_OPS];
static atomic_uint_fast64_t requests[MAX_OPS + 1][MAX_CODES];
static atomic_uint_fast64_t bytes_in, bytes_out;
static atomic_uint_fast64_t unaligned_count, unaligned_bytes;

/* Step latency buckets, upper bounds in ns; the last counter is +Inf. */
static const int64_t bucket_ns[] = {100000,    250000,    500000,     1000000,    2500000,    5000000,
                                    10000000,  25000000,  50000000,   100000000,  250000000,  500000000,
                                    1000000000, 2500000000, 5000000000, 10000000000};
static const char *const bucket_le[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
                                        "0.01",   "0.025",   "0.05",   "0.1",   "0.25",   "0.5",
                                        "1",      "2.5",     "5",      "10"};
#define N_BUCKETS (sizeof bucket_ns / sizeof bucket_ns[0])
static atomic_uint_fast64_t step_buckets[N_BUCKETS + 1];
static atomic_uint_fast64_t step_sum_ns;

int64_t metrics_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static size_t op_slot(const char *op)
{
    if (!op) return UNKNOWN_OP;
    for (size_t i = 0; i < MAX_OPS; i++) {
        const char *name = atomic_load(&op_names[i]);
        if (!name) {
            const char *expected = NULL;
            if (atomic_compare_exchange_strong(&op_names[i], &expected, op)) return i;
            name = expected;   /* another thread took the slot first */
        }
        if (name == op || strcmp(name, op) == 0) return i;
    }
    return UNKNOWN_OP;
}

void metrics_unaligned_gradient(size_t bytes)
{
    atomic_fetch_add_explicit(&unaligned_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&unaligned_bytes, bytes, memory_order_relaxed);
}

void metrics_record(const char *op, int code, int64_t elapsed_ns, size_t in, size_t out)
{
    /* Every code a reply can carry has a name; anything else is reported
     * as INTERNAL, so no two label sets share a name. */
    if (code < 0 || code >= MAX_CODES || (code != 0 && !optimd_error_code_name(code))) code = OPTIMD_E_INTERNAL;
    atomic_fetch_add_explicit(&requests[op_slot(op)][code], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&bytes_in, in, memory_order_relaxed);
    atomic_fetch_add_explicit(&bytes_out, out, memory_order_relaxed);
    if (code != 0 || !op || strcmp(op, "step") != 0) return;
    if (elapsed_ns < 0) elapsed_ns = 0;
    size_t b = 0;
    while (b < N_BUCKETS && elapsed_ns > bucket_ns[b]) b++;
    atomic_fetch_add_explicit(&step_buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&step_sum_ns, (uint_fast64_t)elapsed_ns, memory_order_relaxed);
}

/* ----------------------------------------------------------- rendering -- */

typedef struct text {
    char *p;
    size_t len, cap;
    bool failed;
} text;

__attribute__((format(printf, 2, 3))) static void put(text *t, const char *fmt, ...)
{
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if (t->p && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 8192;
        while (cap < t->len + (size_t)n + 1) cap *= 2;
        char *grown = realloc(t->p, cap);
        if (!grown) {
            t->failed = true;
            return;
        }
        t->p = grown;
        t->cap = cap;
    }
}

/* A label value: backslash, double quote and newline escaped. */
static void put_label(text *t, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\') put(t, "\\\\");
        else if (*s == '"') put(t, "\\\"");
        else if (*s == '\n') put(t, "\\n");
        else put(t, "%c", *s);
    }
}

static void family(text *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_requests(text *t)
{
    family(t, "optimd_requests_total", "counter",
           "Requests answered, by op (unknown: the request named no existing op) and result code.");
    for (size_t i = 0; i <= MAX_OPS; i++) {
        const char *op = i == UNKNOWN_OP ? "unknown" : atomic_load(&op_names[i]);
        if (!op) continue;
        for (int code = 0; code < MAX_CODES; code++) {
            uint_fast64_t n = atomic_load_explicit(&requests[i][code], memory_order_relaxed);
            if (!n) continue;
            put(t, "optimd_requests_total{op=\"");
            put_label(t, op);
            const char *name = code ? optimd_error_code_name(code) : "OK";
            put(t, "\",code=\"%s\"} %llu\n", name ? name : "INTERNAL", (unsigned long long)n);
        }
    }
    family(t, "optimd_request_bytes_total", "counter", "Bytes of requests received.");
    put(t, "optimd_request_bytes_total %llu\n",
        (unsigned long long)atomic_load_explicit(&bytes_in, memory_order_relaxed));
    family(t, "optimd_reply_bytes_total", "counter", "Bytes of replies sent.");
    put(t, "optimd_reply_bytes_total %llu\n",
        (unsigned long long)atomic_load_explicit(&bytes_out, memory_order_relaxed));
    family(t, "optimd_unaligned_gradients_total", "counter",
           "Gradients copied before the step because they were not aligned in the request.");
    put(t, "optimd_unaligned_gradients_total %llu\n",
        (unsigned long long)atomic_load_explicit(&unaligned_count, memory_order_relaxed));
    family(t, "optimd_unaligned_gradient_bytes_total", "counter", "Bytes of those gradients.");
    put(t, "optimd_unaligned_gradient_bytes_total %llu\n",
        (unsigned long long)atomic_load_explicit(&unaligned_bytes, memory_order_relaxed));
}

static void render_step_latency(text *t)
{
    family(t, "optimd_step_duration_seconds", "histogram",
           "Time to answer a successful step request, from decoding to the reply built.");
    /* Buckets are kept apart and summed here, so the cumulative counts and
     * _count agree even while steps are being counted. */
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= N_BUCKETS; b++) {
        cumulative += atomic_load_explicit(&step_buckets[b], memory_order_relaxed);
        put(t, "optimd_step_duration_seconds_bucket{le=\"%s\"} %llu\n", b < N_BUCKETS ? bucket_le[b] : "+Inf",
            (unsigned long long)cumulative);
    }
    uint64_t sum = atomic_load_explicit(&step_sum_ns, memory_order_relaxed);
    put(t, "optimd_step_duration_seconds_sum %llu.%09llu\n", (unsigned long long)(sum / 1000000000u),
        (unsigned long long)(sum % 1000000000u));
    put(t, "optimd_step_duration_seconds_count %llu\n", (unsigned long long)cumulative);
}

/* Plugin versions seen loaded, copied: a version may be unloaded as soon
 * as the session that uses it is unlocked. */
typedef struct seen_plugin {
    char id[65];
    char version[65];
} seen_plugin;

typedef struct seen_set {
    seen_plugin *v;
    size_t n, cap;
    bool failed;
} seen_set;

static void see_plugin(seen_set *set, const plugin *p)
{
    if (!p || set->failed) return;
    for (size_t i = 0; i < set->n; i++)
        if (strcmp(set->v[i].id, p->desc->id) == 0 && strcmp(set->v[i].version, p->desc->version) == 0) return;
    if (set->n == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 16;
        seen_plugin *grown = realloc(set->v, cap * sizeof *grown);
        if (!grown) {
            set->failed = true;
            return;
        }
        set->v = grown;
        set->cap = cap;
    }
    snprintf(set->v[set->n].id, sizeof set->v[set->n].id, "%s", p->desc->id);
    snprintf(set->v[set->n].version, sizeof set->v[set->n].version, "%s", p->desc->version);
    set->n++;
}

static void render_state(text *t, server *srv)
{
    size_t n_sessions = 0, n_plugins = 0;
    session **sessions = session_table_list(&srv->sessions, &n_sessions);
    plugin **current = plugin_registry_list(&srv->plugins, &n_plugins);
    if (!sessions || !current) t->failed = true;

    /* Versions in use: the current ones, and older ones that sessions keep
     * until they move on at their next step. */
    seen_set seen = {0};
    for (size_t i = 0; current && i < n_plugins; i++) see_plugin(&seen, current[i]);

    int64_t now = metrics_now_ns(), lag_ns = 0;
    for (size_t i = 0; sessions && i < n_sessions; i++) {
        session *s = sessions[i];
        session_lock(s);
        if (s->wal_unsynced && s->wal_fd >= 0 && now - s->wal_unsynced_since > lag_ns)
            lag_ns = now - s->wal_unsynced_since;
        see_plugin(&seen, s->opt);
        for (uint32_t g = 0; g < s->n_groups; g++) {
            see_plugin(&seen, s->groups[g].sched);
            for (uint32_t k = 0; k < s->groups[g].n_parts; k++) see_plugin(&seen, s->groups[g].parts[k]);
        }
        session_unlock(s);
    }

    family(t, "optimd_sessions", "gauge", "Sessions open.");
    put(t, "optimd_sessions %zu\n", n_sessions);
    family(t, "optimd_plugin_loaded", "gauge",
           "1 for every plugin version loaded: the current ones and older ones sessions still use.");
    if (seen.failed) t->failed = true;
    for (size_t i = 0; i < seen.n; i++) {
        put(t, "optimd_plugin_loaded{id=\"");
        put_label(t, seen.v[i].id);
        put(t, "\",version=\"");
        put_label(t, seen.v[i].version);
        put(t, "\"} 1\n");
    }
    family(t, "optimd_durability_lag_seconds", "gauge",
           "Age of the oldest logged change not yet flushed to disk (0: every log is flushed).");
    put(t, "optimd_durability_lag_seconds %lld.%09lld\n", (long long)(lag_ns / 1000000000),
        (long long)(lag_ns % 1000000000));

    free(seen.v);
    if (current) plugin_registry_release_list(current, n_plugins);
    if (sessions) session_table_release_list(sessions, n_sessions);
}

static int64_t started_ns;

static void render_process(text *t)
{
    long resident = -1, size = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
        fclose(f);
    }
    long page = sysconf(_SC_PAGESIZE);
    if (resident >= 0 && page > 0) {
        family(t, "optimd_resident_memory_bytes", "gauge", "Resident memory of the daemon process.");
        put(t, "optimd_resident_memory_bytes %llu\n", (unsigned long long)resident * (unsigned long long)page);
    }
    int64_t up = metrics_now_ns() - started_ns;
    family(t, "optimd_uptime_seconds", "gauge", "Seconds since the daemon started serving.");
    put(t, "optimd_uptime_seconds %lld.%03lld\n", (long long)(up / 1000000000), (long long)(up % 1000000000 / 1000000));
}

/* ---------------------------------------------------------------- HTTP -- */

/* A request is a line and a few headers; anything longer is refused. */
#define REQUEST_MAX 8192
/* A connection is closed this long after it was accepted, whatever state
 * it is in, so a slow or silent client holds nothing for long. */
#define CONNECTION_TIMEOUT_MS 10000
#define MAX_CONNECTIONS 32

typedef struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write;
    uv_shutdown_t shutdown;
    char in[REQUEST_MAX + 1];
    size_t in_len;
    char *out;
    bool answered;
    bool closing;
    int open_handles;
    struct conn *prev, *next;
} conn;

static struct {
    bool started;
    uv_tcp_t listener;
    server *srv;
    conn *conns;
    size_t n_conns;
} m;

static void on_conn_closed(uv_handle_t *h)
{
    conn *c = h->data;
    if (--c->open_handles > 0) return;
    if (c->prev) c->prev->next = c->next;
    else m.conns = c->next;
    if (c->next) c->next->prev = c->prev;
    m.n_conns--;
    free(c->out);
    free(c);
}

static void conn_close(conn *c)
{
    if (c->closing) return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_timeout(uv_timer_t *timer) { conn_close(timer->data); }

static void on_shutdown(uv_shutdown_t *req, int status)
{
    /* After our FIN the client closes its side; reading on until then keeps
     * the kernel from answering its last bytes with a reset that could cost
     * it the reply. The timer bounds the wait. */
    if (status < 0) conn_close(req->data);
}

static void on_written(uv_write_t *req, int status)
{
    conn *c = req->data;
    if (status < 0 || c->closing) {
        conn_close(c);
        return;
    }
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) conn_close(c);
}

static void respond(conn *c, int status, const char *reason, const char *body, size_t body_len, const char *type)
{
    c->answered = true;
    char head[512];
    int head_len = snprintf(head, sizeof head,
                            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                            "Connection: close\r\n%s\r\n",
                            status, reason, type, body_len, status == 405 ? "Allow: GET\r\n" : "");
    c->out = head_len > 0 && (size_t)head_len < sizeof head ? malloc((size_t)head_len + body_len) : NULL;
    if (!c->out) {
        conn_close(c);
        return;
    }
    memcpy(c->out, head, (size_t)head_len);
    memcpy(c->out + head_len, body, body_len);
    uv_buf_t buf = uv_buf_init(c->out, (unsigned)((size_t)head_len + body_len));
    c->write.data = c;
    if (uv_write(&c->write, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) conn_close(c);
}

static void respond_text(conn *c, int status, const char *reason, const char *body)
{
    respond(c, status, reason, body, strlen(body), "text/plain; charset=utf-8");
}

static void serve_metrics(conn *c)
{
    text t = {0};
    render_requests(&t);
    render_step_latency(&t);
    render_state(&t, m.srv);
    render_process(&t);
    if (t.failed) respond_text(c, 500, "Internal Server Error", "out of memory\n");
    else respond(c, 200, "OK", t.p, t.len, "text/plain; version=0.0.4; charset=utf-8");
    free(t.p);
}

/* Answers once the request line and headers are in (a body, which a GET
 * does not have, is ignored). */
static void handle_request(conn *c)
{
    c->in[c->in_len] = '\0';
    char *end = strstr(c->in, "\r\n\r\n");
    if (!end) end = strstr(c->in, "\n\n");
    if (!end) {
        if (c->in_len == REQUEST_MAX || memchr(c->in, '\0', c->in_len))
            respond_text(c, c->in_len == REQUEST_MAX ? 431 : 400,
                         c->in_len == REQUEST_MAX ? "Request Header Fields Too Large" : "Bad Request",
                         "bad request\n");
        return;
    }
    size_t line_len = strcspn(c->in, "\r\n");
    char line[REQUEST_MAX + 1];
    memcpy(line, c->in, line_len);
    line[line_len] = '\0';
    char *method = line, *target = strchr(line, ' ');
    char *version = target ? strchr(target + 1, ' ') : NULL;
    if (!target || !version || strchr(version + 1, ' ') || strncmp(version + 1, "HTTP/1.", 7) != 0 ||
        target + 1 == version) {
        respond_text(c, 400, "Bad Request", "bad request\n");
        return;
    }
    *target++ = '\0';
    *version = '\0';
    target[strcspn(target, "?")] = '\0';
    if (strcmp(target, "/metrics") != 0) respond_text(c, 404, "Not Found", "not found; try /metrics\n");
    else if (strcmp(method, "GET") != 0) respond_text(c, 405, "Method Not Allowed", "only GET\n");
    else serve_metrics(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn *c = h->data;
    /* Once answered, whatever still comes is read only to be dropped. */
    static char discard[4096];
    if (c->answered) *buf = uv_buf_init(discard, sizeof discard);
    else *buf = uv_buf_init(c->in + c->in_len, (unsigned)(REQUEST_MAX - c->in_len));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    conn *c = stream->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0 || c->answered || c->closing) return;
    c->in_len += (size_t)nread;
    handle_request(c);
}

static void on_connection(uv_stream_t *listener, int status)
{
    if (status < 0) {
        log_warn("metrics: accept failed: %s", uv_strerror(status));
        return;
    }
    conn *c = calloc(1, sizeof *c);
    if (!c) {
        log_error("metrics: out of memory accepting a connection");
        return;
    }
    uv_tcp_init(listener->loop, &c->tcp);
    uv_timer_init(listener->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = m.conns;
    if (m.conns) m.conns->prev = c;
    m.conns = c;
    m.n_conns++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    /* Full: the oldest connection goes, not the new one, so idle clients
     * cannot keep a scraper out. Closing ones are still counted until
     * their callbacks run, hence the walk to the oldest still open. */
    if (m.n_conns > MAX_CONNECTIONS) {
        conn *oldest = NULL;
        for (conn *o = c->next; o; o = o->next)
            if (!o->closing) oldest = o;
        if (oldest) conn_close(oldest);
    }
    uv_timer_start(&c->timer, on_timeout, CONNECTION_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) conn_close(c);
}

/* HOST:PORT, HOST possibly in brackets (an IPv6 address). */
static int split_hostport(const char *hostport, char *host, size_t host_cap, char *port, size_t port_cap)
{
    const char *colon, *h = hostport;
    size_t h_len;
    if (*h == '[') {
        const char *rb = strchr(h, ']');
        if (!rb || rb[1] != ':') return -1;
        h++;
        h_len = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(h, ':');
        if (!colon || memchr(h, ':', (size_t)(colon - h))) return -1;   /* bare IPv6 needs brackets */
        h_len = (size_t)(colon - h);
    }
    const char *p = colon + 1;
    size_t p_len = strlen(p);
    if (h_len == 0 || h_len >= host_cap || p_len == 0 || p_len >= port_cap || strspn(p, "0123456789") != p_len ||
        atol(p) > 65535)
        return -1;
    memcpy(host, h, h_len);
    host[h_len] = '\0';
    memcpy(port, p, p_len + 1);
    return 0;
}

int metrics_start(uv_loop_t *loop, server *srv, const char *hostport)
{
    started_ns = metrics_now_ns();
    if (!hostport) return 0;
    char host[256], port[8];
    if (split_hostport(hostport, host, sizeof host, port, sizeof port) != 0) {
        log_error("metrics: '%s' is not HOST:PORT (an IPv6 host in brackets)", hostport);
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rv = getaddrinfo(host, port, &hints, &ai);
    if (rv != 0) {
        log_error("metrics: cannot resolve %s: %s", host, gai_strerror(rv));
        return -1;
    }
    m.srv = srv;
    uv_tcp_init(loop, &m.listener);
    m.started = true;
    rv = uv_tcp_bind(&m.listener, ai->ai_addr, 0);
    freeaddrinfo(ai);
    if (rv == 0) rv = uv_listen((uv_stream_t *)&m.listener, 16, on_connection);
    if (rv != 0) {
        log_error("metrics: cannot listen on %s: %s", hostport, uv_strerror(rv));
        return -1;
    }
    struct sockaddr_storage bound;
    int len = sizeof bound;
    char addr[INET6_ADDRSTRLEN] = "?";
    int bound_port = 0;
    if (uv_tcp_getsockname(&m.listener, (struct sockaddr *)&bound, &len) == 0) {
        if (bound.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&bound, addr, sizeof addr);
            bound_port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&bound, addr, sizeof addr);
            bound_port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        }
    }
    log_info("metrics on http://%s%s%s:%d/metrics", bound.ss_family == AF_INET6 ? "[" : "", addr,
             bound.ss_family == AF_INET6 ? "]" : "", bound_port);
    return 0;
}

void metrics_stop(void)
{
    if (!m.started) return;
    m.started = false;
    if (!uv_is_closing((uv_handle_t *)&m.listener)) uv_close((uv_handle_t *)&m.listener, NULL);
    for (conn *c = m.conns; c; c = c->next) conn_close(c);
}
