/* A shared-memory segment a client on the same host made and handed to the
 * daemon (docs/protocol.md, shm_attach): the POSIX shm object opened by
 * name, checked and mapped, and every read and write of it.
 *
 * The client keeps write access to the file and may truncate it at any
 * time, and touching a page of a shared mapping that lies beyond the end of
 * its file raises SIGBUS. So the daemon never dereferences the mapping
 * directly: optimd_shm_read and optimd_shm_write copy under a SIGBUS guard
 * and report a shrunk file as an error instead of dying. */
#ifndef OPTIMD_SERVER_SHARED_SEGMENT_H
#define OPTIMD_SERVER_SHARED_SEGMENT_H

#include "request_error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Every tensor in a segment starts at a multiple of this. */
#define OPTIMD_SHM_ALIGN 64
/* "/" and up to 254 bytes: NAME_MAX for the file under /dev/shm. */
#define OPTIMD_SHM_NAME_MAX 255

typedef struct optimd_shared_segment {
    char name[OPTIMD_SHM_NAME_MAX + 1];
    int fd;                    /* kept open: its size is rechecked before use */
    unsigned char *base;       /* MAP_SHARED, read and write, `size` bytes */
    uint64_t size;
} optimd_shared_segment;

/* One tensor's place in a segment, for optimd_shm_check_ranges; `name` and
 * `kind` ("param", "grad") only label it in messages. */
typedef struct optimd_shm_range {
    uint64_t offset;
    uint64_t length;
    const char *name;
    const char *kind;
} optimd_shm_range;

/* Opens segment `name` ("/" then 1 to 254 bytes of A-Z a-z 0-9 . _ -) and
 * maps it. It must be a regular file owned by `owner` (the peer of the
 * ipc connection), readable and writable by its owner only, and exactly
 * `size` bytes long. BAD_REQUEST says which rule it breaks. */
int optimd_shm_map(optimd_shared_segment *seg, const char *name, size_t name_len, uint64_t size,
                   uid_t owner, request_error *err);
/* Unmaps and closes; a zeroed segment is left alone. */
void optimd_shm_unmap(optimd_shared_segment *seg);

/* BAD_TENSOR unless every range starts at a multiple of OPTIMD_SHM_ALIGN,
 * lies within the segment, and overlaps no other. Sorts `r` by offset. */
int optimd_shm_check_ranges(const optimd_shared_segment *seg, optimd_shm_range *r, size_t n,
                            request_error *err);

/* False (BAD_REQUEST in err) when the file is now shorter than when it was
 * mapped: its owner truncated it. */
bool optimd_shm_intact(const optimd_shared_segment *seg, request_error *err);

/* Copies `n` bytes at `offset` of the segment out (read) or in (write).
 * The range must have passed optimd_shm_check_ranges. -1 when the file
 * shrank under the copy (SIGBUS caught): part of it may have been copied. */
int optimd_shm_read(const optimd_shared_segment *seg, void *dst, uint64_t offset, size_t n);
int optimd_shm_write(const optimd_shared_segment *seg, uint64_t offset, const void *src, size_t n);
/* optimd_shm_read of `n` bytes of IEEE floats of `elem_size` (4 or 8)
 * bytes each, checking in the same pass whether all are finite: *finite
 * becomes false if one is not (it is never set true). */
int optimd_shm_read_checked(const optimd_shared_segment *seg, void *dst, uint64_t offset, size_t n,
                            size_t elem_size, bool *finite);
/* optimd_shm_write, with the same check of what it writes. */
int optimd_shm_write_checked(const optimd_shared_segment *seg, uint64_t offset, const void *src, size_t n,
                             size_t elem_size, bool *finite);

#endif
