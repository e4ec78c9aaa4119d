/*
 * msgpack helpers for the wire format of docs/protocol.md: packing requests
 * straight into an nng_msg, and reading decoded reply objects.
 *
 * Readers take objects produced by msgpack_unpack_next over the received
 * message body; str and bin objects point into that body, so the message
 * must outlive them.
 */
#ifndef OPTIMD_CLIENT_WIRE_H
#define OPTIMD_CLIENT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>
#include <nng/nng.h>

#include <optimd/client.h>

#define WIRE_MAX_DIMS 8

/* A packer that appends to an nng_msg. The packer keeps a pointer to the
 * writer, so a writer must not move once initialised. */
typedef struct wire_writer {
    msgpack_packer pk;
    nng_msg *msg;
    bool failed;               /* an append ran out of memory */
} wire_writer;

void wire_writer_init(wire_writer *w, nng_msg *msg);

void wire_pack_str(msgpack_packer *pk, const char *s);

/* Bytes per element of OPTIMD_CLIENT_F32 / F64; 0 for another dtype. */
size_t wire_dtype_size(int32_t dtype);

/* Checks a caller tensor; on success *nbytes is its data size. On failure
 * writes why into err and returns false. */
bool wire_tensor_arg_ok(const optimd_named_tensor *t, size_t *nbytes,
                        char *err, size_t cap);

/* Packs {dtype, shape, data} of a tensor already checked by
 * wire_tensor_arg_ok. */
void wire_pack_tensor(msgpack_packer *pk, const optimd_named_tensor *t,
                      size_t nbytes);

/* Checks hyperparameter values (key set, type known). */
bool wire_hvalues_arg_ok(const optimd_hvalue *hp, size_t n, char *err,
                         size_t cap);
void wire_pack_hvalues(msgpack_packer *pk, const optimd_hvalue *hp, size_t n);

/* The value under `key` in a map whose keys are all str, or NULL. */
const msgpack_object *wire_map_get(const msgpack_object *map,
                                   const char *key);

/* True when every key of `map` (a map) is a str. */
bool wire_keys_are_str(const msgpack_object *map);

bool wire_is_str(const msgpack_object *o, const char *s);
bool wire_as_uint(const msgpack_object *o, uint64_t *out);
bool wire_as_int(const msgpack_object *o, int64_t *out);
/* A float, or an integer, as protocol.md section 3 allows. */
bool wire_as_float(const msgpack_object *o, double *out);

/* A NUL-terminated copy of a str object, or NULL (not a str, contains a
 * NUL, or out of memory: *nomem says which). */
char *wire_strdup(const msgpack_object *o, bool *nomem);

/* Copies a str object into buf; false if it is not a str, holds a NUL, or
 * does not fit. */
bool wire_copy_str(const msgpack_object *o, char *buf, size_t cap);

/* A tensor as found on the wire. `data` points into the message. */
typedef struct wire_tensor {
    int32_t dtype;
    uint32_t ndim;
    int64_t shape[WIRE_MAX_DIMS];
    const void *data;
    size_t nbytes;
} wire_tensor;

/* Reads and checks a tensor map: dtype, shape, and a data length that
 * matches them. On failure writes why into err. */
bool wire_read_tensor(const msgpack_object *o, wire_tensor *out, char *err,
                      size_t cap);

/* True when `src` has the dtype and shape of `dst`; otherwise writes the
 * difference into err. */
bool wire_tensor_matches(const wire_tensor *src,
                         const optimd_named_tensor *dst, char *err,
                         size_t cap);

/* Checks like wire_tensor_matches, then copies the elements into
 * dst->data (converting from little-endian). */
bool wire_tensor_into(const wire_tensor *src, const optimd_named_tensor *dst,
                      char *err, size_t cap);

/* True when `src` has the dtype, shape and element values of `t` (whose
 * data is `nbytes` long), bit for bit. */
bool wire_tensor_equals(const wire_tensor *src, const optimd_named_tensor *t,
                        size_t nbytes);

/* Walks the msgpack value in data[0, len) without allocating: true when
 * it is exactly one well-formed value, every container claiming no more
 * elements than bytes are left (each takes at least one), so that
 * msgpack-c, which reserves room for a container's claimed count, cannot
 * be made to allocate gigabytes by a few hostile bytes. On failure writes
 * why into err. */
bool wire_prescan(const unsigned char *data, size_t len, char *err,
                  size_t cap);

/* Formats a shape as "[2, 3]". */
void wire_format_shape(const int64_t *shape, uint32_t ndim, char *buf,
                       size_t cap);

#endif
