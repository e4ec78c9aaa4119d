/* Reading requests and writing replies in the msgpack shapes of
 * docs/protocol.md. Decoded objects point into the received message: tensor
 * bytes are never copied here. */
#ifndef OPTIMD_SERVER_WIRE_H
#define OPTIMD_SERVER_WIRE_H

#include "request_error.h"

#include <msgpack.h>
#include <nng/nng.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WIRE_MAX_DIMS 8

/* A tensor map as received: `data` points into the request message and may
 * be unaligned. */
typedef struct wire_tensor {
    uint32_t dtype;            /* optimd_dtype */
    uint32_t ndim;
    int64_t shape[WIRE_MAX_DIMS];
    int64_t numel;
    const void *data;
    size_t nbytes;
} wire_tensor;

/* Checks that `data` is exactly one well-framed msgpack value whose
 * containers claim no more elements than there are bytes left, before
 * msgpack-c allocates room for them: a six-byte message must not be able to
 * make the daemon reserve gigabytes. MALFORMED on failure. */
int wire_prescan(const unsigned char *data, size_t len, request_error *err);

/* Value of `key` in a string-keyed map, or NULL. */
const msgpack_object *wire_map_get(const msgpack_object *map, const char *key);

/* Key of entry i of a map as a str, or -1 with BAD_REQUEST if not a str. */
int wire_key(const msgpack_object_kv *kv, const char **s, size_t *len,
             request_error *err);

/* Typed getters for request keys. A missing optional key leaves *out
 * untouched and returns 0; a missing required key or a wrong type returns
 * -1 with BAD_REQUEST. */
int wire_get_str(const msgpack_object *map, const char *key, bool required,
                 const char **s, size_t *len, request_error *err);
int wire_get_uint(const msgpack_object *map, const char *key, bool required,
                  uint64_t *out, request_error *err);
int wire_get_bool(const msgpack_object *map, const char *key, bool required,
                  bool *out, request_error *err);
/* A number: float32, float64 or an integer. */
int wire_get_number(const msgpack_object *map, const char *key, bool required,
                    double *out, request_error *err);
/* A map value; *out is NULL when the key is absent or nil and optional. */
int wire_get_map(const msgpack_object *map, const char *key, bool required,
                 const msgpack_object **out, request_error *err);

/* Decodes a tensor map; BAD_TENSOR names `what` on failure. */
int wire_decode_tensor(const msgpack_object *o, const char *what,
                       wire_tensor *out, request_error *err);

const char *wire_dtype_name(uint32_t dtype);
size_t wire_dtype_size(uint32_t dtype);

/* A msgpack packer that appends to an nng_msg. */
typedef struct wire_writer {
    msgpack_packer pk;
    nng_msg *msg;
    int failed;                /* an append ran out of memory */
} wire_writer;

void wire_writer_init(wire_writer *w, nng_msg *msg);
void wire_pack_str(msgpack_packer *pk, const char *s);
void wire_pack_strn(msgpack_packer *pk, const char *s, size_t len);
void wire_pack_tensor(msgpack_packer *pk, uint32_t dtype, uint32_t ndim,
                      const int64_t *shape, const void *data, size_t nbytes);
/* A tensor whose data is rows `rows` (n_rows of them, row_bytes each) of
 * `data`; shape[0] must be n_rows. */
void wire_pack_tensor_rows(msgpack_packer *pk, uint32_t dtype, uint32_t ndim, const int64_t *shape,
                           const void *data, const int64_t *rows, int64_t n_rows, size_t row_bytes);

#endif
