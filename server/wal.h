/* A session's write-ahead log: every change (register, step, set_hparams)
 * is appended as the request that made it, before it is applied, so a
 * restart can replay what the last snapshot lacks.
 *
 * Record: u32 payload length, u32 CRC-32C of the payload, then the payload:
 * u64 the session version the change produces, then the request's msgpack
 * bytes. All integers little-endian. A torn or corrupt record ends the log:
 * replay stops there and the file is cut back to the last good record. */
#ifndef OPTIMD_SERVER_WAL_H
#define OPTIMD_SERVER_WAL_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32c(uint32_t crc, const void *data, size_t len);

/* Appends one record to the open log `fd` (O_APPEND). Returns 0 or -1
 * with errno; on failure the file is cut back to its old length. */
int wal_append(int fd, uint64_t version, const void *request, size_t len);

/* Calls `apply` for each intact record in order; stops at the first torn or
 * corrupt one, or when `apply` returns nonzero. *good_bytes receives the
 * length of the intact prefix. Returns the number of records read, or -1
 * if the file cannot be read. */
typedef int (*wal_apply_fn)(void *ctx, uint64_t version, const void *request, size_t len);
long wal_replay(int fd, wal_apply_fn apply, void *ctx, uint64_t *good_bytes);

#endif
