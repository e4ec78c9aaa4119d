/*
 * The connection and the request/reply plumbing: one REQ socket, one
 * request in flight, each reply checked against the envelope of
 * docs/protocol.md section 2 before an operation reads its keys.
 */
#include "client_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <nng/protocol/reqrep0/req.h>

#define CLIENT_DEFAULT_TIMEOUT_MS 30000
#define CLIENT_DEFAULT_RETRIES 5
#define CLIENT_DEFAULT_BACKOFF_MS 100
#define CLIENT_DEFAULT_BACKOFF_MAX_MS 2000

/* Room for the envelope and the session keys, on top of an operation's own
 * size hint. */
#define CLIENT_ENVELOPE_BYTES 512

/* A failed connect has no client to hold its reason. */
static _Thread_local char connect_err[CLIENT_ERR_CAP];

int client_fail(optimd_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return code;
}

void client_err_append(optimd_client *c, const char *fmt, ...)
{
    size_t at = strlen(c->err);
    if (at + 1 >= sizeof c->err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + at, sizeof c->err - at, fmt, ap);
    va_end(ap);
}

static int connect_fail(optimd_client *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int connect_fail(optimd_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(connect_err, sizeof connect_err, fmt, ap);
    va_end(ap);
    optimd_client_free(c);
    return code;
}

/* Opens c->sock with the client's options and starts dialing c->url.
 * Returns 0, or an NNG error with `*what` saying which step failed. */
static int socket_open(optimd_client *c, const char **what)
{
    *what = "cannot open a REQ socket";
    int rv = nng_req0_open(&c->sock);
    if (rv) return rv;
    c->sock_open = true;
    *what = "cannot set socket options";
    /* Replies can be as large as the parameters they carry, and the
     * daemon, not the client, decides how large that may be. */
    if ((rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, 0)) ||
        (rv = nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO, c->timeout_ms)) ||
        (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, c->timeout_ms)) ||
        /* REQ's own resend (every minute by default) would re-send behind
         * our back, with no say over which ops may be repeated; this
         * library retries itself (client_call_run). */
        (rv = nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME,
                                NNG_DURATION_INFINITE)))
        return rv;
    /* Non-blocking: a daemon that starts a little later, or restarts, is
     * picked up by NNG's redial; requests wait for it up to the timeout. */
    *what = "cannot dial";
    if (!c->tls) return nng_dial(c->sock, c->url, &c->dialer, NNG_FLAG_NONBLOCK);
    /* nng_dial cannot take a TLS config, and the socket-wide option would
     * reach only dialers made after it: this dialer gets it before it
     * starts, on every reconnect too. */
    if ((rv = nng_dialer_create(&c->dialer, c->sock, c->url)) ||
        (rv = nng_dialer_set_ptr(c->dialer, NNG_OPT_TLS_CONFIG, c->tls)))
        return rv;
    return nng_dialer_start(c->dialer, NNG_FLAG_NONBLOCK);
}

static bool url_is_tls(const char *url)
{
    return strncmp(url, "tls+", 4) == 0;
}

/* The host of `url` ("tls+tcp://HOST:PORT", HOST maybe in brackets) into
 * `out`; false when it does not fit or is empty. */
static bool url_host(const char *url, char *out, size_t cap)
{
    const char *p = strstr(url, "://");
    if (!p) return false;
    p += 3;
    const char *end;
    if (*p == '[') {
        end = strchr(++p, ']');
        if (!end) return false;
    } else {
        end = p + strcspn(p, ":/");
    }
    size_t len = (size_t)(end - p);
    if (len == 0 || len >= cap) return false;
    memcpy(out, p, len);
    out[len] = '\0';
    return true;
}

/* The whole of a PEM file, NUL-terminated, as nng_tls_config_own_cert
 * wants it; NULL with errno set on failure. */
static char *read_text_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4097) {
            size_t grown_cap = cap ? 2 * cap : 8192;
            char *grown = realloc(buf, grown_cap);
            if (!grown) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            buf = grown;
            cap = grown_cap;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) break;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

/* Builds c->tls from the options. Returns 0, or fills connect_err and
 * returns OPTIMD_CLIENT_E_ARG / _NOMEM (the client is not freed here). */
static int tls_setup(optimd_client *c, const optimd_client_options *o)
{
    int rv = nng_tls_config_alloc(&c->tls, NNG_TLS_MODE_CLIENT);
    if (rv) {
        c->tls = NULL;
        snprintf(connect_err, sizeof connect_err,
                 "cannot make a TLS configuration: %s", nng_strerror(rv));
        return rv == NNG_ENOMEM ? OPTIMD_CLIENT_E_NOMEM : OPTIMD_CLIENT_E_ARG;
    }
    char host[256];
    const char *name = o->tls_server_name;
    if (!name) name = url_host(c->url, host, sizeof host) ? host : NULL;
    if (!name) {
        snprintf(connect_err, sizeof connect_err,
                 "no host in %s to check the daemon's certificate against: "
                 "give tls_server_name", c->url);
        return OPTIMD_CLIENT_E_ARG;
    }
    /* REQUIRED is NNG's default for a client already; said here so that
     * no default change could make the client accept any daemon. */
    if ((rv = nng_tls_config_auth_mode(c->tls, NNG_TLS_AUTH_MODE_REQUIRED)) ||
        (rv = nng_tls_config_server_name(c->tls, name))) {
        snprintf(connect_err, sizeof connect_err,
                 "cannot configure TLS (server name '%s'): %s", name,
                 nng_strerror(rv));
        return OPTIMD_CLIENT_E_ARG;
    }
    if ((rv = nng_tls_config_ca_file(c->tls, o->tls_ca_file))) {
        snprintf(connect_err, sizeof connect_err,
                 "cannot load the CA file '%s': %s", o->tls_ca_file,
                 nng_strerror(rv));
        return OPTIMD_CLIENT_E_ARG;
    }
    if (!o->tls_cert_file) return 0;
    const char *bad = o->tls_cert_file;
    char *cert = read_text_file(o->tls_cert_file), *key = NULL;
    if (cert) {
        bad = o->tls_key_file;
        key = read_text_file(o->tls_key_file);
    }
    if (!key) {
        int err = errno;
        free(cert);
        snprintf(connect_err, sizeof connect_err, "cannot read '%s': %s",
                 bad, strerror(err));
        return err == ENOMEM ? OPTIMD_CLIENT_E_NOMEM : OPTIMD_CLIENT_E_ARG;
    }
    rv = nng_tls_config_own_cert(c->tls, cert, key, NULL);
    /* The key stays in memory no longer than it must. */
    memset(key, 0, strlen(key));
    free(key);
    free(cert);
    if (rv) {
        snprintf(connect_err, sizeof connect_err,
                 "cannot use the certificate '%s' with the key '%s': %s",
                 o->tls_cert_file, o->tls_key_file, nng_strerror(rv));
        return OPTIMD_CLIENT_E_ARG;
    }
    return 0;
}

/* Why a TLS connection could not be made: a REQ socket that finds no
 * connection only times out, while its dialer retries a refused handshake
 * in silence. One stream connection, bounded by the timeout, brings the
 * handshake's own error to light: it dials, then sends this side's SP
 * header and reads the daemon's, which is where a TLS 1.2 or 1.3
 * handshake the daemon rejects (a missing or untrusted client
 * certificate) ends. Returns 0 when that worked, else the NNG error. */
static int tls_probe(optimd_client *c)
{
    nng_stream_dialer *d = NULL;
    nng_aio *aio = NULL;
    nng_stream *st = NULL;
    int rv;
    if ((rv = nng_stream_dialer_alloc(&d, c->url)) ||
        (rv = nng_stream_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, c->tls)) ||
        (rv = nng_aio_alloc(&aio, NULL, NULL)))
        goto out;
    nng_aio_set_timeout(aio, c->timeout_ms);
    nng_stream_dialer_dial(d, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio))) goto out;
    st = nng_aio_get_output(aio, 0);
    /* SP header: 0, 'S', 'P', version 0, protocol (REQ v0 is 0x30), 0, 0. */
    unsigned char hdr[8] = {0, 'S', 'P', 0, 0x00, 0x30, 0, 0};
    nng_iov iov = {.iov_buf = hdr, .iov_len = sizeof hdr};
    if ((rv = nng_aio_set_iov(aio, 1, &iov))) goto out;
    nng_stream_send(st, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio))) goto out;
    nng_stream_recv(st, aio);
    nng_aio_wait(aio);
    rv = nng_aio_result(aio);
out:
    if (st) {
        nng_stream_close(st);
        nng_stream_free(st);
    }
    nng_aio_free(aio);
    nng_stream_dialer_free(d);
    return rv;
}

/* Fills `id` with 32 random hex digits. Random ids let any number of
 * processes step one session without agreeing on names first; the
 * fallback only has to differ between processes and clients. */
void client_random_id(char id[CLIENT_ID_MAX + 1])
{
    unsigned char bytes[16];
    size_t got = 0;
    while (got < sizeof bytes) {
        ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
        if (n > 0) got += (size_t)n;
        else if (n < 0 && errno != EINTR) break;
    }
    if (got < sizeof bytes) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        static _Atomic unsigned long counter;
        unsigned long long mix[2] = {
            (unsigned long long)ts.tv_sec * 1000000007ull ^
                (unsigned long long)ts.tv_nsec,
            ((unsigned long long)getpid() << 32) ^ (uintptr_t)id ^ ++counter};
        memcpy(bytes, mix, sizeof bytes);
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof bytes; i++) {
        id[2 * i] = hex[bytes[i] >> 4];
        id[2 * i + 1] = hex[bytes[i] & 15];
    }
    id[2 * sizeof bytes] = '\0';
}

static bool client_id_ok(const char *id)
{
    size_t len = id ? strlen(id) : 0;
    return len >= 1 && len <= CLIENT_ID_MAX;
}

void optimd_client_options_init(optimd_client_options *opts)
{
    if (!opts) return;
    memset(opts, 0, sizeof *opts);
    opts->struct_size = sizeof *opts;
    opts->timeout_ms = CLIENT_DEFAULT_TIMEOUT_MS;
    opts->max_retries = CLIENT_DEFAULT_RETRIES;
    opts->backoff_ms = CLIENT_DEFAULT_BACKOFF_MS;
    opts->backoff_max_ms = CLIENT_DEFAULT_BACKOFF_MAX_MS;
}

/* True when the caller's options struct reaches past `member`. */
#define OPTS_HAS(o, member)                                                \
    ((o)->struct_size >= offsetof(optimd_client_options, member) +         \
                             sizeof((o)->member))

int optimd_client_connect_ex(const char *url,
                             const optimd_client_options *opts,
                             optimd_client **out)
{
    connect_err[0] = '\0';
    if (!out) return connect_fail(NULL, OPTIMD_CLIENT_E_ARG, "out is NULL");
    *out = NULL;
    if (!url || !*url)
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG, "no URL given");
    optimd_client_options o;
    optimd_client_options_init(&o);
    if (opts) {
        if (!OPTS_HAS(opts, timeout_ms))
            return connect_fail(NULL, OPTIMD_CLIENT_E_ARG,
                                "options.struct_size is %zu: fill the "
                                "options with optimd_client_options_init",
                                opts->struct_size);
        if (OPTS_HAS(opts, timeout_ms)) o.timeout_ms = opts->timeout_ms;
        if (OPTS_HAS(opts, max_retries)) o.max_retries = opts->max_retries;
        if (OPTS_HAS(opts, backoff_ms)) o.backoff_ms = opts->backoff_ms;
        if (OPTS_HAS(opts, backoff_max_ms))
            o.backoff_max_ms = opts->backoff_max_ms;
        if (OPTS_HAS(opts, client_id)) o.client_id = opts->client_id;
        if (OPTS_HAS(opts, on_retry)) o.on_retry = opts->on_retry;
        if (OPTS_HAS(opts, on_retry_arg)) o.on_retry_arg = opts->on_retry_arg;
        if (OPTS_HAS(opts, tls_ca_file)) o.tls_ca_file = opts->tls_ca_file;
        if (OPTS_HAS(opts, tls_cert_file))
            o.tls_cert_file = opts->tls_cert_file;
        if (OPTS_HAS(opts, tls_key_file)) o.tls_key_file = opts->tls_key_file;
        if (OPTS_HAS(opts, tls_server_name))
            o.tls_server_name = opts->tls_server_name;
    }
    if (o.timeout_ms <= 0)
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG,
                            "timeout %d ms is not positive", o.timeout_ms);
    if (o.max_retries < 0 || o.backoff_ms < 0 || o.backoff_max_ms < 0)
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG,
                            "max_retries, backoff_ms and backoff_max_ms "
                            "must not be negative");
    if (o.client_id && !client_id_ok(o.client_id))
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG,
                            "client_id must be 1 to %d bytes", CLIENT_ID_MAX);

    bool tls = url_is_tls(url);
    bool any_tls = o.tls_ca_file || o.tls_cert_file || o.tls_key_file ||
                   o.tls_server_name;
    if (!tls && any_tls)
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG,
                            "TLS options given for %s: they need a "
                            "tls+tcp:// URL", url);
    if (tls && !o.tls_ca_file)
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG,
                            "%s needs tls_ca_file, the CA that issued the "
                            "daemon's certificate", url);
    if (!o.tls_cert_file != !o.tls_key_file)
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG,
                            "tls_cert_file and tls_key_file go together: "
                            "give both or neither");

    optimd_client *c = calloc(1, sizeof *c);
    if (!c || !(c->url = strdup(url))) {
        free(c);
        return connect_fail(NULL, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    }
    c->timeout_ms = o.timeout_ms;
    c->max_retries = o.max_retries;
    c->backoff_ms = o.backoff_ms;
    c->backoff_max_ms = o.backoff_max_ms;
    c->on_retry = o.on_retry;
    c->on_retry_arg = o.on_retry_arg;
    c->next_id = 1;
    if (o.client_id) strcpy(c->id, o.client_id);
    else client_random_id(c->id);

    int rv;
    if (tls && (rv = tls_setup(c, &o))) {
        optimd_client_free(c);
        return rv;
    }
    const char *what;
    rv = socket_open(c, &what);
    if (rv)
        return connect_fail(c, OPTIMD_CLIENT_E_TRANSPORT, "%s %s: %s", what,
                            url, nng_strerror(rv));
    *out = c;
    return 0;
}

int optimd_client_connect(const char *url, int timeout_ms,
                          optimd_client **out)
{
    if (timeout_ms < 0) {
        connect_err[0] = '\0';
        if (out) *out = NULL;
        return connect_fail(NULL, OPTIMD_CLIENT_E_ARG,
                            "timeout %d ms is negative", timeout_ms);
    }
    /* The first API: no retries, as it always promised. */
    optimd_client_options o;
    optimd_client_options_init(&o);
    o.timeout_ms = timeout_ms ? timeout_ms : CLIENT_DEFAULT_TIMEOUT_MS;
    o.max_retries = 0;
    return optimd_client_connect_ex(url, &o, out);
}

void optimd_client_free(optimd_client *c)
{
    if (!c) return;
    if (c->sock_open) nng_close(c->sock);
    if (c->tls) nng_tls_config_free(c->tls);
    free(c->seqs);
    free(c->url);
    free(c);
}

const char *optimd_client_id(const optimd_client *c)
{
    return c ? c->id : NULL;
}

int optimd_client_set_id(optimd_client *c, const char *client_id)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!client_id_ok(client_id))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "a client id is 1 to %d bytes", CLIENT_ID_MAX);
    strcpy(c->id, client_id);
    /* Sequence numbers belong to an id: the old ones mean nothing to the
     * daemon's record of the new one. */
    c->n_seqs = 0;
    return 0;
}

int client_seq_get(optimd_client *c, const char *session, client_seq **out)
{
    for (size_t i = 0; i < c->n_seqs; i++)
        if (strcmp(c->seqs[i].session, session) == 0) {
            *out = &c->seqs[i];
            return 0;
        }
    if (strlen(session) >= sizeof c->seqs[0].session)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "session name is too long");
    if (c->n_seqs == c->cap_seqs) {
        size_t cap = c->cap_seqs ? 2 * c->cap_seqs : 4;
        client_seq *grown = realloc(c->seqs, cap * sizeof *grown);
        if (!grown) return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
        c->seqs = grown;
        c->cap_seqs = cap;
    }
    client_seq *e = &c->seqs[c->n_seqs++];
    strcpy(e->session, session);
    e->next = 1;
    e->wait_known = false;
    e->wait_ms = 0;
    *out = e;
    return 0;
}

uint64_t optimd_client_next_seq(const optimd_client *c, const char *session)
{
    if (!c || !session) return 0;
    for (size_t i = 0; i < c->n_seqs; i++)
        if (strcmp(c->seqs[i].session, session) == 0) return c->seqs[i].next;
    return 1;
}

int optimd_client_set_next_seq(optimd_client *c, const char *session,
                               uint64_t seq)
{
    if (!c) return OPTIMD_CLIENT_E_ARG;
    client_begin_call(c);
    if (!session || !*session)
        return client_fail(c, OPTIMD_CLIENT_E_ARG, "no session name given");
    if (seq < 1 || seq > CLIENT_SEQ_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "seq %llu is outside 1 to 2^53",
                           (unsigned long long)seq);
    client_seq *e;
    int rv = client_seq_get(c, session, &e);
    if (rv) return rv;
    e->next = seq;
    return 0;
}

unsigned optimd_client_last_retries(const optimd_client *c)
{
    return c ? c->last_retries : 0;
}

const char *optimd_client_error(const optimd_client *c)
{
    return c ? c->err : connect_err;
}

int client_session_ok(optimd_client *c, const optimd_session *s)
{
    if (!s) return client_fail(c, OPTIMD_CLIENT_E_ARG, "session is NULL");
    if (!memchr(s->name, '\0', sizeof s->name) ||
        !memchr(s->token, '\0', sizeof s->token))
        return client_fail(c, OPTIMD_CLIENT_E_ARG,
                           "session name or token is not NUL-terminated");
    return 0;
}

/* Starts a request map holding `n_keys` keys besides v, op and id (and
 * session and token when `s` is not NULL). `size_hint` is the expected
 * size of what the caller adds, so that tensor bytes are appended without
 * the message growing (and being copied) on the way. */
static int client_request_begin(optimd_client *c, client_request *rq,
                                const char *op, const optimd_session *s,
                                uint32_t n_keys, size_t size_hint)
{
    rq->c = c;
    rq->op = op;
    rq->id = c->next_id++;
    nng_msg *msg;
    if (nng_msg_alloc(&msg, 0) != 0)
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM, "out of memory");
    size_t want = size_hint > SIZE_MAX - CLIENT_ENVELOPE_BYTES
                      ? size_hint
                      : size_hint + CLIENT_ENVELOPE_BYTES;
    if (nng_msg_reserve(msg, want) != 0) {
        nng_msg_free(msg);
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                           "out of memory for a %zu-byte request", want);
    }
    wire_writer_init(&rq->w, msg);
    msgpack_packer *pk = &rq->w.pk;
    msgpack_pack_map(pk, 3 + n_keys + (s ? 2 : 0));
    wire_pack_str(pk, "v");
    msgpack_pack_int(pk, OPTIMD_PROTOCOL_VERSION);
    wire_pack_str(pk, "op");
    wire_pack_str(pk, op);
    wire_pack_str(pk, "id");
    msgpack_pack_uint64(pk, rq->id);
    if (s) {
        wire_pack_str(pk, "session");
        wire_pack_str(pk, s->name);
        wire_pack_str(pk, "token");
        wire_pack_str(pk, s->token);
    }
    return 0;
}

int client_call_pack(optimd_client *c, const client_call *call,
                     nng_msg **out)
{
    client_request rq;
    int rv = client_request_begin(c, &rq, call->op, call->s, call->n_keys,
                                  call->size_hint);
    if (rv) return rv;
    if (call->pack) call->pack(&rq.w.pk, call->arg);
    if (rq.w.failed) {
        nng_msg_free(rq.w.msg);
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                           "out of memory building the '%s' request",
                           call->op);
    }
    *out = rq.w.msg;
    return 0;
}

/* Drops a request that will not be sent. */
static void client_request_abort(client_request *rq)
{
    nng_msg_free(rq->w.msg);
    rq->w.msg = NULL;
}

void client_reply_free(client_reply *rep)
{
    if (!rep->msg) return;
    msgpack_unpacked_destroy(&rep->up);
    nng_msg_free(rep->msg);
    rep->msg = NULL;
    rep->root = NULL;
}

/* Turns an error reply into the daemon's code and "NAME: message". */
static int error_reply(optimd_client *c, const char *op,
                       const msgpack_object *root)
{
    const msgpack_object *code = wire_map_get(root, "code");
    const msgpack_object *name = wire_map_get(root, "error");
    const msgpack_object *text = wire_map_get(root, "message");
    int64_t value;
    if (!code || !wire_as_int(code, &value) || value <= 0 || value > INT_MAX)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "error reply to '%s': 'code' is missing or not a "
                           "positive int", op);
    if (!name || name->type != MSGPACK_OBJECT_STR || !text ||
        text->type != MSGPACK_OBJECT_STR)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "error reply to '%s' (code %lld): 'error' or "
                           "'message' is missing or not a str",
                           op, (long long)value);
    client_fail(c, (int)value, "%.*s: %.*s", (int)name->via.str.size,
                name->via.str.ptr, (int)text->via.str.size, text->via.str.ptr);
    return (int)value;
}

static int check_envelope(optimd_client *c, const char *op, uint64_t want,
                          const msgpack_object *root)
{
    if (root->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(root))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s' is not a map with str keys",
                           op);
    const msgpack_object *v = wire_map_get(root, "v");
    const msgpack_object *id = wire_map_get(root, "id");
    const msgpack_object *ok = wire_map_get(root, "ok");
    uint64_t num;
    if (!v || !wire_as_uint(v, &num) || num != OPTIMD_PROTOCOL_VERSION)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': 'v' is missing or not %d",
                           op, OPTIMD_PROTOCOL_VERSION);
    if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': 'ok' is missing or not a bool",
                           op);
    if (!id || !wire_as_uint(id, &num))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': 'id' is missing or not a uint",
                           op);
    /* An undecodable request is answered with id 0 (protocol.md section
     * 2), so only an error reply may carry it. */
    if (num != want && !(num == 0 && !ok->via.boolean))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s' carries id %llu, the request had "
                           "id %llu", op, (unsigned long long)num,
                           (unsigned long long)want);
    if (!ok->via.boolean) return error_reply(c, op, root);
    return 0;
}

/* Replaces the socket with a fresh one. A retry does not trust the old
 * one: its connection may be half-open (a daemon host that vanished sends
 * no FIN, and NNG would keep writing into it), and a late reply to the
 * abandoned request must not linger. */
static int reconnect(optimd_client *c)
{
    if (c->sock_open) {
        nng_close(c->sock);
        c->sock_open = false;
    }
    const char *what;
    int rv = socket_open(c, &what);
    if (rv) {
        if (c->sock_open) nng_close(c->sock);
        c->sock_open = false;
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "reconnecting: %s %s: %s", what, c->url,
                           nng_strerror(rv));
    }
    return 0;
}

/* A TLS request that found no connection: says why, if the handshake
 * was what failed. */
static int tls_no_connection(optimd_client *c)
{
    int rv = tls_probe(c);
    /* The handshake is where a TLS peer says no; a connection that closed
     * there, after a whole timeout without any connection, is the daemon
     * turning this client away, not a restart (that refuses the dial). */
    if (rv == NNG_ECRYPTO || rv == NNG_EPEERAUTH) {
        c->tls_refused = true;
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "no connection to optimd at %s within %d ms: the "
                           "TLS handshake failed (%s): this client does not "
                           "trust the daemon's certificate (is it issued by "
                           "tls_ca_file, for tls_server_name?), or the daemon "
                           "does not trust this client's",
                           c->url, c->timeout_ms, nng_strerror(rv));
    }
    if (rv == NNG_ECONNSHUT || rv == NNG_ECLOSED || rv == NNG_ECONNRESET) {
        c->tls_refused = true;
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "no connection to optimd at %s within %d ms: the "
                           "daemon closed the connection in the TLS "
                           "handshake (%s): it wants a client certificate "
                           "(tls_cert_file, tls_key_file) from a CA it "
                           "trusts", c->url, c->timeout_ms, nng_strerror(rv));
    }
    return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                       "no connection to optimd at %s within %d ms (is the "
                       "daemon running and listening there?%s%s)",
                       c->url, c->timeout_ms, rv ? " A TLS dial now: " : "",
                       rv ? nng_strerror(rv) : "");
}

/* One attempt: sends the request (always consuming it), waits for the
 * reply and checks the envelope. Returns 0 with `rep` filled, or a failure
 * code (positive: the daemon's error) with nothing left to free. *sent
 * tells whether the request left this process, i.e. whether the daemon may
 * have applied it. */
static int roundtrip_once(client_request *rq, client_reply *rep, bool *sent,
                          uint32_t wait_ms)
{
    optimd_client *c = rq->c;
    memset(rep, 0, sizeof *rep);
    *sent = false;
    c->tls_refused = false;
    if (rq->w.failed) {
        client_request_abort(rq);
        return client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                           "out of memory building the '%s' request", rq->op);
    }
    int rv;
    /* A reconnect that failed earlier left no socket. */
    if (!c->sock_open && (rv = reconnect(c))) {
        client_request_abort(rq);
        return rv;
    }
    nng_msg *msg = rq->w.msg;
    rq->w.msg = NULL;
    rv = nng_sendmsg(c->sock, msg, 0);
    if (rv) {
        nng_msg_free(msg);
        /* REQ holds a message until some connection can take it, so a
         * send timeout means no connection was up all that time. */
        if (rv == NNG_ETIMEDOUT && c->tls) return tls_no_connection(c);
        if (rv == NNG_ETIMEDOUT)
            return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                               "no connection to optimd at %s within %d ms "
                               "(is the daemon running and listening there?)",
                               c->url, c->timeout_ms);
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "sending '%s' to %s: %s", rq->op, c->url,
                           nng_strerror(rv));
    }
    /* REQ completes a send once a connection has taken the message. */
    *sent = true;
    /* A request the daemon may hold (a worker's push waiting for the
     * others) gets that long on top: a shorter wait would give up on a
     * reply that is on its way and re-send a push that is only waiting. */
    long long recv_ms = (long long)c->timeout_ms + wait_ms;
    if (recv_ms > INT_MAX) recv_ms = INT_MAX;
    if (wait_ms &&
        (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, (int)recv_ms)))
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "cannot set the receive timeout: %s",
                           nng_strerror(rv));
    rv = nng_recvmsg(c->sock, &msg, 0);
    if (wait_ms) nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, c->timeout_ms);
    if (rv == NNG_ETIMEDOUT)
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "optimd at %s sent no reply to '%s' within %lld "
                           "ms (the request may or may not have taken "
                           "effect)", c->url, rq->op, recv_ms);
    if (rv == NNG_ECONNRESET)
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "the connection to optimd at %s was lost before "
                           "the reply to '%s' (the daemon stopped, or "
                           "dropped a request over twice its max_message; "
                           "the request may or may not have taken effect)",
                           c->url, rq->op);
    if (rv)
        return client_fail(c, OPTIMD_CLIENT_E_TRANSPORT,
                           "receiving the reply to '%s' from %s: %s (the "
                           "request may or may not have taken effect)",
                           rq->op, c->url, nng_strerror(rv));

    return client_parse_reply(c, rq->op, rq->id, msg, rep);
}

int client_parse_reply(optimd_client *c, const char *op, uint64_t id,
                       nng_msg *msg, client_reply *rep)
{
    memset(rep, 0, sizeof *rep);
    rep->op = op;
    rep->msg = msg;
    msgpack_unpacked_init(&rep->up);
    const char *body = nng_msg_body(msg);
    size_t len = nng_msg_len(msg), off = 0;
    char why[160];
    int code = 0;
    /* Before msgpack-c sees it: its unpacker reserves room for as many
     * elements as a container header claims. */
    if (!wire_prescan((const unsigned char *)body, len, why, sizeof why)) {
        code = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s' is not one msgpack value (%zu "
                           "bytes): %s", op, len, why);
    } else {
        msgpack_unpack_return ur =
            msgpack_unpack_next(&rep->up, body, len, &off);
        if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
            code = client_fail(c, OPTIMD_CLIENT_E_NOMEM,
                               "out of memory decoding the %zu-byte reply "
                               "to '%s'", len, op);
        else if (ur != MSGPACK_UNPACK_SUCCESS)
            code = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s' is not one msgpack value (%zu "
                               "bytes, %s)", op, len,
                               ur == MSGPACK_UNPACK_CONTINUE ? "truncated"
                                                             : "parse error");
        else if (off != len)
            code = client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s' has %zu stray bytes after its "
                               "msgpack value", op, len - off);
        else
            code = check_envelope(c, op, id, &rep->up.data);
    }
    if (code) {
        client_reply_free(rep);
        return code;
    }
    rep->root = &rep->up.data;
    return 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    /* A signal (optimctl's Ctrl-C handler) must not cut the pause short
     * into a burst of retries. */
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The pause before re-send number `retry` (1-based): backoff_ms, doubling,
 * at most backoff_max_ms (or backoff_ms, if that is larger). */
static int backoff_for(const optimd_client *c, unsigned retry)
{
    long long ms = c->backoff_ms;
    long long cap = c->backoff_max_ms > c->backoff_ms ? c->backoff_max_ms
                                                      : c->backoff_ms;
    for (unsigned i = 1; i < retry && ms < cap; i++) ms *= 2;
    return (int)(ms < cap ? ms : cap);
}

int client_call_run(optimd_client *c, client_call *call, client_reply *rep)
{
    call->ambiguous = false;
    double start = 0;
    for (unsigned retry = 0;; retry++) {
        client_request rq;
        int rv = client_request_begin(c, &rq, call->op, call->s,
                                      call->n_keys, call->size_hint);
        if (rv) return rv;
        if (call->pack) call->pack(&rq.w.pk, call->arg);
        bool sent;
        rv = roundtrip_once(&rq, rep, &sent, call->wait_ms);
        /* An answer, even an error, is final: the daemon changed nothing
         * when it said no (protocol.md section 2), and asking again would
         * get the same answer. */
        if (rv != OPTIMD_CLIENT_E_TRANSPORT) {
            /* A success leaves no text, even after failed attempts. */
            if (rv == 0) c->err[0] = '\0';
            return rv;
        }
        if (retry == 0) start = now_s();
        if (c->tls_refused) {
            if (c->max_retries > 0)
                client_err_append(c, "; not re-sent: a new connection "
                                  "would meet the same certificates.");
            return rv;
        }
        if (sent && call->retry != CLIENT_RETRY_ALWAYS) {
            if (c->max_retries > 0)
                client_err_append(c, "; not re-sent, since '%s' is not "
                                  "safe to repeat", call->op);
            return rv;
        }
        if (sent) call->ambiguous = true;
        if (retry >= (unsigned)c->max_retries) {
            if (retry > 0)
                client_err_append(c, "; gave up after %u retr%s in %.1f s",
                                  retry, retry == 1 ? "y" : "ies",
                                  now_s() - start);
            return rv;
        }
        int pause = backoff_for(c, retry + 1);
        if (c->on_retry) {
            char msg[CLIENT_ERR_CAP + 96];
            snprintf(msg, sizeof msg, "%s; retry %u of %d in %d ms", c->err,
                     retry + 1, c->max_retries, pause);
            c->on_retry(c->on_retry_arg, msg);
        }
        sleep_ms(pause);
        c->last_retries = retry + 1;
        if ((rv = reconnect(c))) return rv;
    }
}

static const char *type_name(msgpack_object_type type)
{
    switch (type) {
    case MSGPACK_OBJECT_STR: return "str";
    case MSGPACK_OBJECT_MAP: return "map";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_BOOLEAN: return "bool";
    case MSGPACK_OBJECT_BIN: return "bin";
    default: return "value of the right type";
    }
}

int reply_get(optimd_client *c, const client_reply *rep, const char *key,
              msgpack_object_type type, const msgpack_object **out)
{
    const msgpack_object *o = wire_map_get(rep->root, key);
    if (!o || o->type != type)
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': '%s' is %s, expected a %s",
                           rep->op, key, o ? "of the wrong type" : "missing",
                           type_name(type));
    if (type == MSGPACK_OBJECT_MAP && !wire_keys_are_str(o))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': '%s' has a key that is not a str",
                           rep->op, key);
    *out = o;
    return 0;
}

int reply_uint(optimd_client *c, const client_reply *rep, const char *key,
               uint64_t *out)
{
    const msgpack_object *o = wire_map_get(rep->root, key);
    if (!o || !wire_as_uint(o, out))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': '%s' is %s, expected a uint",
                           rep->op, key, o ? "of the wrong type" : "missing");
    return 0;
}

int reply_float(optimd_client *c, const client_reply *rep, const char *key,
                double *out)
{
    const msgpack_object *o = wire_map_get(rep->root, key);
    if (!o || !wire_as_float(o, out))
        return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                           "reply to '%s': '%s' is %s, expected a float",
                           rep->op, key, o ? "of the wrong type" : "missing");
    return 0;
}

/* The entry of `map` named `name`, trying position `hint` first: the daemon
 * usually answers in the order it was asked, which keeps matching n
 * parameters linear instead of quadratic. */
static const msgpack_object *find_param(const msgpack_object *map,
                                        const char *name, size_t hint)
{
    const msgpack_object_map *m = &map->via.map;
    if (hint < m->size && wire_is_str(&m->ptr[hint].key, name))
        return &m->ptr[hint].val;
    return wire_map_get(map, name);
}

int reply_tensors_into(optimd_client *c, const client_reply *rep,
                       optimd_named_tensor *dst, size_t n)
{
    const msgpack_object *params;
    int rv = reply_get(c, rep, "params", MSGPACK_OBJECT_MAP, &params);
    if (rv) return rv;
    char why[512];
    wire_tensor t;
    for (uint32_t i = 0; i < params->via.map.size; i++) {
        const msgpack_object_kv *kv = &params->via.map.ptr[i];
        if (!wire_read_tensor(&kv->val, &t, why, sizeof why))
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s': params['%.*s']: %s", rep->op,
                               (int)kv->key.via.str.size, kv->key.via.str.ptr,
                               why);
    }
    /* Check everything before copying anything, so that a bad reply
     * leaves every caller buffer as it was. */
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *o = find_param(params, dst[i].name, i);
        if (!o)
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s' lacks parameter '%s'", rep->op,
                               dst[i].name);
        wire_read_tensor(o, &t, why, sizeof why);
        if (!wire_tensor_matches(&t, &dst[i], why, sizeof why))
            return client_fail(c, OPTIMD_CLIENT_E_PROTOCOL,
                               "reply to '%s': params['%s']: %s", rep->op,
                               dst[i].name, why);
    }
    for (size_t i = 0; i < n; i++) {
        wire_read_tensor(find_param(params, dst[i].name, i), &t, why,
                         sizeof why);
        wire_tensor_into(&t, &dst[i], why, sizeof why);
    }
    return 0;
}
