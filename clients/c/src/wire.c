#include "wire.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The wire is little-endian. On a little-endian host tensor bytes go to and
 * from the caller's buffer untouched; a big-endian host swaps each element
 * on the way, so the same code serves both. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define WIRE_HOST_BIG_ENDIAN 1
#else
#define WIRE_HOST_BIG_ENDIAN 0
#endif

size_t wire_dtype_size(int32_t dtype)
{
    switch (dtype) {
    case OPTIMD_CLIENT_F32: return 4;
    case OPTIMD_CLIENT_F64: return 8;
    default: return 0;
    }
}

static const char *dtype_name(int32_t dtype)
{
    return dtype == OPTIMD_CLIENT_F32 ? "f32" : "f64";
}

#if WIRE_HOST_BIG_ENDIAN
static void swap_elements(unsigned char *p, size_t nbytes, size_t width)
{
    for (size_t at = 0; at + width <= nbytes; at += width)
        for (size_t i = 0; i < width / 2; i++) {
            unsigned char t = p[at + i];
            p[at + i] = p[at + width - 1 - i];
            p[at + width - 1 - i] = t;
        }
}
#endif

static int writer_append(void *data, const char *buf, size_t len)
{
    wire_writer *w = data;
    if (w->failed) return -1;
    if (nng_msg_append(w->msg, buf, len) != 0) {
        w->failed = true;
        return -1;
    }
    return 0;
}

void wire_writer_init(wire_writer *w, nng_msg *msg)
{
    w->msg = msg;
    w->failed = false;
    msgpack_packer_init(&w->pk, w, writer_append);
}

void wire_pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

bool wire_tensor_arg_ok(const optimd_named_tensor *t, size_t *nbytes,
                        char *err, size_t cap)
{
    if (!t->name) {
        snprintf(err, cap, "tensor name is NULL");
        return false;
    }
    size_t width = wire_dtype_size(t->dtype);
    if (!width) {
        snprintf(err, cap, "tensor '%s': dtype %d is neither "
                 "OPTIMD_CLIENT_F32 nor OPTIMD_CLIENT_F64", t->name,
                 (int)t->dtype);
        return false;
    }
    if (t->ndim > WIRE_MAX_DIMS) {
        snprintf(err, cap, "tensor '%s': %u dimensions, at most %d allowed",
                 t->name, (unsigned)t->ndim, WIRE_MAX_DIMS);
        return false;
    }
    if (t->ndim && !t->shape) {
        snprintf(err, cap, "tensor '%s': shape is NULL", t->name);
        return false;
    }
    size_t n = width;
    for (uint32_t i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) {
            snprintf(err, cap, "tensor '%s': dimension %u is negative",
                     t->name, (unsigned)i);
            return false;
        }
        uint64_t d = (uint64_t)t->shape[i];
        if (d && n > SIZE_MAX / d) {
            snprintf(err, cap, "tensor '%s': size overflows", t->name);
            return false;
        }
        n *= (size_t)d;
    }
    if (n && !t->data) {
        snprintf(err, cap, "tensor '%s': data is NULL", t->name);
        return false;
    }
    *nbytes = n;
    return true;
}

/* The daemon reads a tensor where it lies in the request when it is
 * aligned in its receive buffer, which is 16-byte aligned and holds REQ's
 * 4-byte request ID before the body (docs/protocol.md §3): large tensors
 * get a `pad` key that puts `data` where 4 + its offset is a multiple of
 * 16. Small ones are not worth the bytes. */
#define WIRE_PAD_FROM ((size_t)64 << 10)
#define WIRE_ALIGN 16
#define WIRE_REQ_HEADER 4

void wire_pack_tensor(msgpack_packer *pk, const optimd_named_tensor *t,
                      size_t nbytes)
{
    const wire_writer *w = pk->data;
    bool pad = nbytes >= WIRE_PAD_FROM && nbytes <= UINT32_MAX;
    msgpack_pack_map(pk, pad ? 4 : 3);
    wire_pack_str(pk, "dtype");
    wire_pack_str(pk, dtype_name(t->dtype));
    wire_pack_str(pk, "shape");
    msgpack_pack_array(pk, t->ndim);
    for (uint32_t i = 0; i < t->ndim; i++)
        msgpack_pack_uint64(pk, (uint64_t)t->shape[i]);
    if (pad) {
        /* "pad" (4 bytes), its bin8 header (2), k bytes, "data" (5) and
         * the bin32 header (5), then the tensor. */
        static const unsigned char zeros[WIRE_ALIGN];
        size_t at = nng_msg_len(w->msg) + 4 + 2 + 5 + 5;
        size_t k = (WIRE_ALIGN - (WIRE_REQ_HEADER + at) % WIRE_ALIGN) % WIRE_ALIGN;
        wire_pack_str(pk, "pad");
        msgpack_pack_bin(pk, k);
        msgpack_pack_bin_body(pk, zeros, k);
    }
    wire_pack_str(pk, "data");
    msgpack_pack_bin(pk, nbytes);
    assert(!pad || w->failed || (WIRE_REQ_HEADER + nng_msg_len(w->msg)) % WIRE_ALIGN == 0);
#if WIRE_HOST_BIG_ENDIAN
    /* The bin header already carries the total length, so the body may go
     * out in swapped chunks without touching the caller's buffer. */
    unsigned char chunk[4096];
    size_t width = wire_dtype_size(t->dtype);
    for (size_t at = 0; at < nbytes; at += sizeof chunk) {
        size_t len = nbytes - at < sizeof chunk ? nbytes - at : sizeof chunk;
        memcpy(chunk, (const unsigned char *)t->data + at, len);
        swap_elements(chunk, len, width);
        msgpack_pack_bin_body(pk, chunk, len);
    }
#else
    msgpack_pack_bin_body(pk, t->data, nbytes);
#endif
}

bool wire_hvalues_arg_ok(const optimd_hvalue *hp, size_t n, char *err,
                         size_t cap)
{
    if (n && !hp) {
        snprintf(err, cap, "hyperparameter array is NULL");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!hp[i].key) {
            snprintf(err, cap, "hyperparameter %zu has no key", i);
            return false;
        }
        if (hp[i].type != OPTIMD_HVALUE_FLOAT &&
            hp[i].type != OPTIMD_HVALUE_INT &&
            hp[i].type != OPTIMD_HVALUE_BOOL) {
            snprintf(err, cap, "hyperparameter '%s': type %d is not an "
                     "optimd_hvalue_type", hp[i].key, (int)hp[i].type);
            return false;
        }
    }
    return true;
}

void wire_pack_hvalues(msgpack_packer *pk, const optimd_hvalue *hp, size_t n)
{
    msgpack_pack_map(pk, n);
    for (size_t i = 0; i < n; i++) {
        wire_pack_str(pk, hp[i].key);
        switch (hp[i].type) {
        case OPTIMD_HVALUE_FLOAT: msgpack_pack_double(pk, hp[i].f); break;
        case OPTIMD_HVALUE_INT: msgpack_pack_int64(pk, hp[i].i); break;
        default:
            if (hp[i].i) msgpack_pack_true(pk);
            else msgpack_pack_false(pk);
            break;
        }
    }
}

bool wire_is_str(const msgpack_object *o, const char *s)
{
    size_t len = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == len &&
           memcmp(o->via.str.ptr, s, len) == 0;
}

bool wire_keys_are_str(const msgpack_object *map)
{
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (map->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR) return false;
    return true;
}

const msgpack_object *wire_map_get(const msgpack_object *map,
                                   const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP) return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (wire_is_str(&map->via.map.ptr[i].key, key))
            return &map->via.map.ptr[i].val;
    return NULL;
}

bool wire_as_uint(const msgpack_object *o, uint64_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return false;
    *out = o->via.u64;
    return true;
}

bool wire_as_int(const msgpack_object *o, int64_t *out)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
        o->via.u64 <= (uint64_t)INT64_MAX) {
        *out = (int64_t)o->via.u64;
        return true;
    }
    return false;
}

bool wire_as_float(const msgpack_object *o, double *out)
{
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return true;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return true;
    default: return false;
    }
}

char *wire_strdup(const msgpack_object *o, bool *nomem)
{
    *nomem = false;
    if (o->type != MSGPACK_OBJECT_STR ||
        memchr(o->via.str.ptr, '\0', o->via.str.size))
        return NULL;
    char *s = malloc((size_t)o->via.str.size + 1);
    if (!s) {
        *nomem = true;
        return NULL;
    }
    memcpy(s, o->via.str.ptr, o->via.str.size);
    s[o->via.str.size] = '\0';
    return s;
}

bool wire_copy_str(const msgpack_object *o, char *buf, size_t cap)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= cap ||
        memchr(o->via.str.ptr, '\0', o->via.str.size))
        return false;
    memcpy(buf, o->via.str.ptr, o->via.str.size);
    buf[o->via.str.size] = '\0';
    return true;
}

void wire_format_shape(const int64_t *shape, uint32_t ndim, char *buf,
                       size_t cap)
{
    size_t at = 0;
    if (cap == 0) return;
    buf[0] = '\0';
    at += (size_t)snprintf(buf, cap, "[");
    for (uint32_t i = 0; i < ndim && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", i ? ", " : "",
                               (long long)shape[i]);
    if (at < cap) snprintf(buf + at, cap - at, "]");
}

bool wire_read_tensor(const msgpack_object *o, wire_tensor *out, char *err,
                      size_t cap)
{
    if (o->type != MSGPACK_OBJECT_MAP || !wire_keys_are_str(o)) {
        snprintf(err, cap, "not a tensor map");
        return false;
    }
    const msgpack_object *dtype = wire_map_get(o, "dtype");
    const msgpack_object *shape = wire_map_get(o, "shape");
    const msgpack_object *data = wire_map_get(o, "data");
    if (!dtype || !shape || !data) {
        snprintf(err, cap, "tensor map lacks '%s'",
                 !dtype ? "dtype" : !shape ? "shape" : "data");
        return false;
    }
    if (wire_is_str(dtype, "f32")) out->dtype = OPTIMD_CLIENT_F32;
    else if (wire_is_str(dtype, "f64")) out->dtype = OPTIMD_CLIENT_F64;
    else {
        snprintf(err, cap, "dtype is not \"f32\" or \"f64\"");
        return false;
    }
    if (shape->type != MSGPACK_OBJECT_ARRAY ||
        shape->via.array.size > WIRE_MAX_DIMS) {
        snprintf(err, cap, "shape is not an array of at most %d uints",
                 WIRE_MAX_DIMS);
        return false;
    }
    out->ndim = shape->via.array.size;
    size_t n = wire_dtype_size(out->dtype);
    bool overflow = false;
    for (uint32_t i = 0; i < out->ndim; i++) {
        uint64_t d;
        if (!wire_as_uint(&shape->via.array.ptr[i], &d) ||
            d > (uint64_t)INT64_MAX) {
            snprintf(err, cap, "shape[%u] is not a uint", (unsigned)i);
            return false;
        }
        out->shape[i] = (int64_t)d;
        if (d && n > SIZE_MAX / d) overflow = true;
        else n *= (size_t)d;
    }
    if (data->type != MSGPACK_OBJECT_BIN) {
        snprintf(err, cap, "data is not bin");
        return false;
    }
    if (overflow || data->via.bin.size != n) {
        char dims[160];
        wire_format_shape(out->shape, out->ndim, dims, sizeof dims);
        snprintf(err, cap, "data holds %u bytes, %s %s needs %zu",
                 (unsigned)data->via.bin.size, dtype_name(out->dtype), dims,
                 overflow ? SIZE_MAX : n);
        return false;
    }
    out->data = data->via.bin.ptr;
    out->nbytes = n;
    return true;
}

bool wire_tensor_matches(const wire_tensor *src,
                         const optimd_named_tensor *dst, char *err,
                         size_t cap)
{
    bool same = src->dtype == dst->dtype && src->ndim == dst->ndim;
    for (uint32_t i = 0; same && i < src->ndim; i++)
        same = src->shape[i] == dst->shape[i];
    if (!same) {
        char got[160], want[160];
        wire_format_shape(src->shape, src->ndim, got, sizeof got);
        wire_format_shape(dst->shape, dst->ndim, want, sizeof want);
        snprintf(err, cap, "got %s %s, the caller's buffer is %s %s",
                 dtype_name(src->dtype), got,
                 wire_dtype_size(dst->dtype) ? dtype_name(dst->dtype) : "?", want);
    }
    return same;
}

bool wire_tensor_into(const wire_tensor *src, const optimd_named_tensor *dst,
                      char *err, size_t cap)
{
    if (!wire_tensor_matches(src, dst, err, cap)) return false;
    if (src->nbytes) memcpy(dst->data, src->data, src->nbytes);
#if WIRE_HOST_BIG_ENDIAN
    swap_elements(dst->data, src->nbytes, wire_dtype_size(src->dtype));
#endif
    return true;
}

bool wire_tensor_equals(const wire_tensor *src, const optimd_named_tensor *t,
                        size_t nbytes)
{
    char why[8];
    if (!wire_tensor_matches(src, t, why, sizeof why) ||
        src->nbytes != nbytes)
        return false;
#if WIRE_HOST_BIG_ENDIAN
    size_t width = wire_dtype_size(src->dtype);
    const unsigned char *a = src->data, *b = t->data;
    for (size_t at = 0; at < nbytes; at += width)
        for (size_t i = 0; i < width; i++)
            if (a[at + i] != b[at + width - 1 - i]) return false;
    return true;
#else
    return nbytes == 0 || memcmp(src->data, t->data, nbytes) == 0;
#endif
}

static uint64_t read_be(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

bool wire_prescan(const unsigned char *data, size_t len, char *err,
                  size_t cap)
{
    size_t pos = 0;
    uint64_t todo = 1;         /* values not yet read */
    while (todo) {
        if (pos >= len) {
            snprintf(err, cap, "truncated: it ends inside a msgpack value");
            return false;
        }
        todo--;
        unsigned char b = data[pos++];
        uint64_t body = 0;     /* bytes after the header */
        uint64_t items = 0;    /* values the container holds */
        unsigned len_bytes = 0;
        unsigned count_bytes = 0;
        uint64_t per_count = 1;   /* values per counted item */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
            ;                  /* the byte is the value */
        else if (b <= 0x8f) items = 2u * (b & 0x0fu);
        else if (b <= 0x9f) items = b & 0x0fu;
        else if (b <= 0xbf) body = b & 0x1fu;
        else
            switch (b) {
            case 0xc4: case 0xd9: len_bytes = 1; break;
            case 0xc5: case 0xda: len_bytes = 2; break;
            case 0xc6: case 0xdb: len_bytes = 4; break;
            case 0xc7: len_bytes = 1; body = 1; break;   /* ext: + type */
            case 0xc8: len_bytes = 2; body = 1; break;
            case 0xc9: len_bytes = 4; body = 1; break;
            case 0xca: case 0xce: case 0xd2: body = 4; break;
            case 0xcb: case 0xcf: case 0xd3: body = 8; break;
            case 0xcc: case 0xd0: body = 1; break;
            case 0xcd: case 0xd1: body = 2; break;
            case 0xd4: body = 2; break;                  /* fixext */
            case 0xd5: body = 3; break;
            case 0xd6: body = 5; break;
            case 0xd7: body = 9; break;
            case 0xd8: body = 17; break;
            case 0xdc: count_bytes = 2; break;
            case 0xdd: count_bytes = 4; break;
            case 0xde: count_bytes = 2; per_count = 2; break;
            case 0xdf: count_bytes = 4; per_count = 2; break;
            default:
                snprintf(err, cap, "byte 0x%02x at offset %zu starts no "
                         "msgpack value", b, pos - 1);
                return false;
            }
        unsigned hdr = len_bytes + count_bytes;
        if (len - pos < hdr) {
            snprintf(err, cap, "truncated: it ends inside a msgpack header");
            return false;
        }
        if (len_bytes) body += read_be(data + pos, len_bytes);
        if (count_bytes) items = per_count * read_be(data + pos, count_bytes);
        pos += hdr;
        if (body > len - pos) {
            snprintf(err, cap, "truncated: a msgpack value at offset %zu runs "
                     "past the end (%llu bytes claimed, %zu left)", pos - hdr - 1,
                     (unsigned long long)body, len - pos);
            return false;
        }
        pos += (size_t)body;
        todo += items;
        if (todo > len - pos) {
            snprintf(err, cap, "a msgpack container before offset %zu claims "
                     "%llu more values than the %zu bytes left can hold",
                     pos, (unsigned long long)todo, len - pos);
            return false;
        }
    }
    if (pos != len) {
        snprintf(err, cap, "%zu stray bytes follow its msgpack value",
                 len - pos);
        return false;
    }
    return true;
}
