/* libFuzzer target: the message decoder alone, without a daemon around it:
 * the container pre-scan, msgpack-c's unpacker, and every typed getter and
 * the tensor decoder on whatever the map holds. Nothing may crash, leak or
 * read outside the input, and a message the pre-scan passes holds exactly
 * one value (msgpack-c may still refuse it for nesting deeper than its
 * stack, which the daemon answers as MALFORMED). */
#include "wire.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

static void walk(const msgpack_object *o, int depth)
{
    request_error err = {0};
    if (depth > 8) return;
    if (o->type == MSGPACK_OBJECT_MAP) {
        const char *s;
        size_t len;
        uint64_t u;
        double d;
        bool b;
        const msgpack_object *m;
        wire_tensor t;
        /* Every getter on every key name the protocol uses, whatever the
         * value's type: each must answer or refuse, never misread. */
        static const char *const keys[] = {"v", "op", "id", "session", "token", "grads", "params", "seq",
                                           "client", "metric", "clip_value", "clip_norm", "group", "rows",
                                           "values", "dtype", "shape", "data"};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            wire_get_str(o, keys[i], false, &s, &len, &err);
            wire_get_uint(o, keys[i], false, &u, &err);
            wire_get_number(o, keys[i], false, &d, &err);
            wire_get_bool(o, keys[i], false, &b, &err);
            wire_get_map(o, keys[i], false, &m, &err);
        }
        wire_decode_tensor(o, "fuzz", &t, &err);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            wire_key(&o->via.map.ptr[i], &s, &len, &err);
            wire_decode_tensor(&o->via.map.ptr[i].val, "fuzz", &t, &err);
            walk(&o->via.map.ptr[i].val, depth + 1);
        }
    } else if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++) walk(&o->via.array.ptr[i], depth + 1);
    }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    request_error err = {0};
    if (wire_prescan(data, size, &err) != 0) return 0;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, (const char *)data, size, &off) == MSGPACK_UNPACK_SUCCESS) {
        if (off != size) abort();
        walk(&u.data, 0);
    }
    msgpack_unpacked_destroy(&u);
    return 0;
}
