/* libFuzzer target: any bytes as one request to the daemon's request
 * handler, with the real plugins loaded and a session ("fuzz", token of 32
 * zeros, parameters "w" [4] f32 and "m" [2,3] f64) to reach the session ops.
 * The handler must answer every input with a well-formed reply and never
 * crash, leak or touch memory it does not own; the sanitizers check the
 * latter, the asserts below the former. */
#include "server.h"
#include "session.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static server srv;
static options opts;

static void fuzz_abort(const char *why)
{
    fprintf(stderr, "fuzz_request: %s\n", why);
    abort();
}

/* Runs one request and checks that the reply is one msgpack map with
 * v == 1 and a bool ok. */
static void handle(const void *data, size_t size)
{
    nng_msg *req;
    if (nng_msg_alloc(&req, size) != 0) return;
    if (size) memcpy(nng_msg_body(req), data, size);
    request_ticket ticket = {0};
    nng_msg *reply = server_handle(&srv, req, &ticket);
    if (!reply) return;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, nng_msg_body(reply), nng_msg_len(reply), &off) != MSGPACK_UNPACK_SUCCESS ||
        off != nng_msg_len(reply) || u.data.type != MSGPACK_OBJECT_MAP)
        fuzz_abort("reply is not one msgpack map");
    int saw_ok = 0;
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 2 &&
            memcmp(kv->key.via.str.ptr, "ok", 2) == 0)
            saw_ok = kv->val.type == MSGPACK_OBJECT_BOOLEAN;
    }
    if (!saw_ok) fuzz_abort("reply without a bool 'ok'");
    msgpack_unpacked_destroy(&u);
    nng_msg_free(reply);
}

static void send_packed(msgpack_sbuffer *sb)
{
    handle(sb->data, sb->size);
    msgpack_sbuffer_clear(sb);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void set_up(void)
{
    const char *dir = getenv("OPTIMD_PLUGIN_DIR");
    if (!dir) fuzz_abort("set OPTIMD_PLUGIN_DIR");
    char *argv[] = {"optimd", NULL};
    options_parse(&opts, 1, argv);
    opts.max_message = 1 << 20;
    opts.plugin_dirs[0] = dir;
    opts.n_plugin_dirs = 1;
    srv.opts = &opts;
    /* 'close' removes a session's files: give the store a scratch directory. */
    char state_dir[] = "/tmp/optimd-fuzz-XXXXXX";
    if (!mkdtemp(state_dir) || store_open(&srv.store, state_dir) != 0) fuzz_abort("no state directory");
    char copy_dir[sizeof state_dir + 32];
    snprintf(copy_dir, sizeof copy_dir, "%s/plugins-loaded", state_dir);
    if (plugin_registry_load(&srv.plugins, opts.plugin_dirs, 1, copy_dir, NULL) != 0 || srv.plugins.count == 0)
        fuzz_abort("no plugins loaded");
    compute_pool_start(&srv.pool, 0);
}

/* A fresh session table holding only the "fuzz" session. Inputs open
 * sessions and register parameters; starting over now and then keeps the
 * memory of a long run bounded. */
static void reset_sessions(int first)
{
    if (!first) session_table_clear(&srv.sessions);
    session_table_init(&srv.sessions, 64);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    pack_str(&pk, "v"); msgpack_pack_int(&pk, 1);
    pack_str(&pk, "op"); pack_str(&pk, "open");
    pack_str(&pk, "session"); pack_str(&pk, "fuzz");
    pack_str(&pk, "optimizer"); pack_str(&pk, "adam");
    send_packed(&sb);
    session *s = session_table_get(&srv.sessions, "fuzz", 4);
    if (!s) fuzz_abort("could not open the fuzz session");
    /* A known token lets the fuzzer reach every session op. */
    memset(s->token, '0', SESSION_TOKEN_LEN);
    session_unref(s);

    float w[4] = {1, 2, 3, 4};
    double m[6] = {1, 2, 3, 4, 5, 6};
    msgpack_pack_map(&pk, 5);
    pack_str(&pk, "v"); msgpack_pack_int(&pk, 1);
    pack_str(&pk, "op"); pack_str(&pk, "register");
    pack_str(&pk, "session"); pack_str(&pk, "fuzz");
    pack_str(&pk, "token"); pack_str(&pk, "00000000000000000000000000000000");
    pack_str(&pk, "params");
    msgpack_pack_map(&pk, 2);
    pack_str(&pk, "w");
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "dtype"); pack_str(&pk, "f32");
    pack_str(&pk, "shape"); msgpack_pack_array(&pk, 1); msgpack_pack_int(&pk, 4);
    pack_str(&pk, "data"); msgpack_pack_bin(&pk, sizeof w); msgpack_pack_bin_body(&pk, w, sizeof w);
    pack_str(&pk, "m");
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "dtype"); pack_str(&pk, "f64");
    pack_str(&pk, "shape"); msgpack_pack_array(&pk, 2); msgpack_pack_int(&pk, 2); msgpack_pack_int(&pk, 3);
    pack_str(&pk, "data"); msgpack_pack_bin(&pk, sizeof m); msgpack_pack_bin_body(&pk, m, sizeof m);
    send_packed(&sb);
    msgpack_sbuffer_destroy(&sb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned long runs;
    if (runs == 0) set_up();
    if (runs % 2000 == 0) reset_sessions(runs == 0);
    runs++;
    handle(data, size);
    return 0;
}
