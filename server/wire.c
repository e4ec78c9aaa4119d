#include "wire.h"

#include <optimd/plugin.h>
#include <string.h>

static uint64_t read_be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | p[i];
    return v;
}

int wire_prescan(const unsigned char *data, size_t len, request_error *err)
{
    size_t pos = 0;
    uint64_t pending = 1;      /* values still to read */
    while (pending > 0) {
        if (pos >= len) return fail(err, OPTIMD_E_MALFORMED, "the message ends inside a msgpack value");
        pending--;
        unsigned char b = data[pos++];
        uint64_t skip = 0, children = 0;
        int len_bytes = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool: the byte is the whole value */
        } else if (b >= 0x80 && b <= 0x8f) {
            children = 2u * (b & 0x0f);
        } else if (b >= 0x90 && b <= 0x9f) {
            children = b & 0x0f;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: len_bytes = 1; break;   /* bin8, str8 */
            case 0xc5: case 0xda: len_bytes = 2; break;   /* bin16, str16 */
            case 0xc6: case 0xdb: len_bytes = 4; break;   /* bin32, str32 */
            case 0xc7: len_bytes = 1; skip = 1; break;    /* ext8: + type byte */
            case 0xc8: len_bytes = 2; skip = 1; break;
            case 0xc9: len_bytes = 4; skip = 1; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;                   /* fixext: type + data */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: case 0xdd: case 0xde: case 0xdf: {
                int n = (b == 0xdc || b == 0xde) ? 2 : 4;
                if (len - pos < (size_t)n)
                    return fail(err, OPTIMD_E_MALFORMED, "the message ends inside a msgpack header");
                uint64_t count = read_be(data + pos, n);
                pos += (size_t)n;
                children = (b >= 0xde) ? 2 * count : count;
                break;
            }
            default:
                return fail(err, OPTIMD_E_MALFORMED, "byte 0x%02x at offset %zu starts no msgpack value", b,
                            pos - 1);
            }
        }
        if (len_bytes) {
            if (len - pos < (size_t)len_bytes)
                return fail(err, OPTIMD_E_MALFORMED, "the message ends inside a msgpack header");
            skip += read_be(data + pos, len_bytes);
            pos += (size_t)len_bytes;
        }
        if (skip > len - pos)
            return fail(err, OPTIMD_E_MALFORMED, "a msgpack value runs past the end of the message");
        pos += (size_t)skip;
        pending += children;
        /* Every value takes at least one byte. */
        if (pending > len - pos)
            return fail(err, OPTIMD_E_MALFORMED,
                        "a msgpack container claims more elements than the message has bytes");
    }
    if (pos != len) return fail(err, OPTIMD_E_MALFORMED, "%zu bytes follow the request map", len - pos);
    return 0;
}

const msgpack_object *wire_map_get(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

int wire_key(const msgpack_object_kv *kv, const char **s, size_t *len,
             request_error *err)
{
    if (kv->key.type != MSGPACK_OBJECT_STR)
        return fail(err, OPTIMD_E_BAD_REQUEST, "map keys must be strings");
    *s = kv->key.via.str.ptr;
    *len = kv->key.via.str.size;
    return 0;
}

static const msgpack_object *lookup(const msgpack_object *map, const char *key,
                                    bool required, request_error *err, int *rc)
{
    const msgpack_object *v = wire_map_get(map, key);
    *rc = 0;
    if (!v && required) *rc = fail(err, OPTIMD_E_BAD_REQUEST, "missing key '%s'", key);
    return v;
}

int wire_get_str(const msgpack_object *map, const char *key, bool required,
                 const char **s, size_t *len, request_error *err)
{
    int rc;
    const msgpack_object *v = lookup(map, key, required, err, &rc);
    if (!v) return rc;
    if (v->type != MSGPACK_OBJECT_STR)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'%s' must be a string", key);
    *s = v->via.str.ptr;
    *len = v->via.str.size;
    return 0;
}

int wire_get_uint(const msgpack_object *map, const char *key, bool required,
                  uint64_t *out, request_error *err)
{
    int rc;
    const msgpack_object *v = lookup(map, key, required, err, &rc);
    if (!v) return rc;
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'%s' must be a non-negative integer", key);
    *out = v->via.u64;
    return 0;
}

int wire_get_bool(const msgpack_object *map, const char *key, bool required,
                  bool *out, request_error *err)
{
    int rc;
    const msgpack_object *v = lookup(map, key, required, err, &rc);
    if (!v) return rc;
    if (v->type != MSGPACK_OBJECT_BOOLEAN)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'%s' must be a bool", key);
    *out = v->via.boolean;
    return 0;
}

int wire_get_number(const msgpack_object *map, const char *key, bool required,
                    double *out, request_error *err)
{
    int rc;
    const msgpack_object *v = lookup(map, key, required, err, &rc);
    if (!v) return rc;
    switch (v->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = v->via.f64; return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)v->via.u64; return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)v->via.i64; return 0;
    default: return fail(err, OPTIMD_E_BAD_REQUEST, "'%s' must be a number", key);
    }
}

int wire_get_map(const msgpack_object *map, const char *key, bool required,
                 const msgpack_object **out, request_error *err)
{
    int rc;
    const msgpack_object *v = lookup(map, key, required, err, &rc);
    *out = NULL;
    if (!v) return rc;
    if (v->type == MSGPACK_OBJECT_NIL && !required) return 0;
    if (v->type != MSGPACK_OBJECT_MAP)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'%s' must be a map", key);
    *out = v;
    return 0;
}

const char *wire_dtype_name(uint32_t dtype)
{
    return dtype == OPTIMD_DTYPE_F64 ? "f64" : dtype == OPTIMD_DTYPE_F32 ? "f32" : "?";
}

size_t wire_dtype_size(uint32_t dtype)
{
    return dtype == OPTIMD_DTYPE_F64 ? 8 : dtype == OPTIMD_DTYPE_F32 ? 4 : 0;
}

int wire_decode_tensor(const msgpack_object *o, const char *what, wire_tensor *out,
                       request_error *err)
{
    memset(out, 0, sizeof *out);
    if (o->type != MSGPACK_OBJECT_MAP)
        return fail(err, OPTIMD_E_BAD_TENSOR, "tensor '%s' must be a map {dtype, shape, data}", what);
    const msgpack_object *dtype = wire_map_get(o, "dtype");
    const msgpack_object *shape = wire_map_get(o, "shape");
    const msgpack_object *data = wire_map_get(o, "data");
    if (!dtype || !shape || !data)
        return fail(err, OPTIMD_E_BAD_TENSOR, "tensor '%s' needs keys dtype, shape and data", what);
    if (dtype->type != MSGPACK_OBJECT_STR || dtype->via.str.size != 3)
        return fail(err, OPTIMD_E_BAD_TENSOR, "tensor '%s': dtype must be \"f32\" or \"f64\"", what);
    if (memcmp(dtype->via.str.ptr, "f32", 3) == 0)
        out->dtype = OPTIMD_DTYPE_F32;
    else if (memcmp(dtype->via.str.ptr, "f64", 3) == 0)
        out->dtype = OPTIMD_DTYPE_F64;
    else
        return fail(err, OPTIMD_E_BAD_TENSOR, "tensor '%s': dtype must be \"f32\" or \"f64\"", what);
    if (shape->type != MSGPACK_OBJECT_ARRAY || shape->via.array.size > WIRE_MAX_DIMS)
        return fail(err, OPTIMD_E_BAD_TENSOR,
                    "tensor '%s': shape must be an array of at most %d integers", what, WIRE_MAX_DIMS);
    out->ndim = shape->via.array.size;
    /* Bound the element count so numel * 8 cannot overflow. */
    const uint64_t max_numel = (uint64_t)1 << 56;
    uint64_t numel = 1;
    for (uint32_t i = 0; i < out->ndim; i++) {
        const msgpack_object *d = &shape->via.array.ptr[i];
        if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return fail(err, OPTIMD_E_BAD_TENSOR, "tensor '%s': shape[%u] must be a non-negative integer",
                        what, i);
        uint64_t dim = d->via.u64;
        if (dim > max_numel || (dim && numel > max_numel / dim))
            return fail(err, OPTIMD_E_BAD_TENSOR, "tensor '%s': too many elements", what);
        out->shape[i] = (int64_t)dim;
        numel *= dim;
    }
    if (data->type != MSGPACK_OBJECT_BIN)
        return fail(err, OPTIMD_E_BAD_TENSOR, "tensor '%s': data must be bin", what);
    size_t want = (size_t)numel * wire_dtype_size(out->dtype);
    if (data->via.bin.size != want)
        return fail(err, OPTIMD_E_BAD_TENSOR, "tensor '%s': data has %u bytes, shape and dtype need %zu",
                    what, data->via.bin.size, want);
    out->numel = (int64_t)numel;
    out->data = data->via.bin.ptr;
    out->nbytes = want;
    return 0;
}

static int append_to_msg(void *data, const char *buf, size_t len)
{
    wire_writer *w = data;
    if (w->failed) return -1;
    if (nng_msg_append(w->msg, buf, len) != 0) {
        w->failed = 1;
        return -1;
    }
    return 0;
}

void wire_writer_init(wire_writer *w, nng_msg *msg)
{
    w->msg = msg;
    w->failed = 0;
    msgpack_packer_init(&w->pk, w, append_to_msg);
}

void wire_pack_strn(msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

void wire_pack_str(msgpack_packer *pk, const char *s) { wire_pack_strn(pk, s, strlen(s)); }

void wire_pack_tensor(msgpack_packer *pk, uint32_t dtype, uint32_t ndim,
                      const int64_t *shape, const void *data, size_t nbytes)
{
    msgpack_pack_map(pk, 3);
    wire_pack_str(pk, "dtype");
    wire_pack_str(pk, wire_dtype_name(dtype));
    wire_pack_str(pk, "shape");
    msgpack_pack_array(pk, ndim);
    for (uint32_t i = 0; i < ndim; i++) msgpack_pack_uint64(pk, (uint64_t)shape[i]);
    wire_pack_str(pk, "data");
    msgpack_pack_bin(pk, nbytes);
    msgpack_pack_bin_body(pk, data, nbytes);
}

void wire_pack_tensor_rows(msgpack_packer *pk, uint32_t dtype, uint32_t ndim, const int64_t *shape,
                           const void *data, const int64_t *rows, int64_t n_rows, size_t row_bytes)
{
    msgpack_pack_map(pk, 3);
    wire_pack_str(pk, "dtype");
    wire_pack_str(pk, wire_dtype_name(dtype));
    wire_pack_str(pk, "shape");
    msgpack_pack_array(pk, ndim);
    for (uint32_t i = 0; i < ndim; i++) msgpack_pack_uint64(pk, (uint64_t)shape[i]);
    wire_pack_str(pk, "data");
    msgpack_pack_bin(pk, (size_t)n_rows * row_bytes);
    for (int64_t k = 0; k < n_rows; k++)
        msgpack_pack_bin_body(pk, (const unsigned char *)data + (size_t)rows[k] * row_bytes, row_bytes);
}
