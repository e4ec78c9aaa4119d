/*
 * BLAKE2b (RFC 7693), unkeyed, streaming: what rendezvous placement needs
 * to agree with Python's hashlib.blake2b(data, digest_size=N). The digest
 * size is part of the parameter block, so an 8-byte digest is not the first
 * 8 bytes of the 64-byte one.
 */
#ifndef OPTIMD_CLIENT_BLAKE2B_H
#define OPTIMD_CLIENT_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>

#define OPTIMD_BLAKE2B_BLOCK 128
#define OPTIMD_BLAKE2B_MAX_DIGEST 64

typedef struct optimd_blake2b {
    uint64_t h[8];
    uint64_t t[2];                     /* bytes compressed so far, 128-bit */
    uint8_t buf[OPTIMD_BLAKE2B_BLOCK];
    size_t fill;                       /* bytes waiting in buf */
    size_t digest_size;
} optimd_blake2b;

/* digest_size: 1 to 64 bytes (clamped into that range). */
void optimd_blake2b_init(optimd_blake2b *s, size_t digest_size);
void optimd_blake2b_update(optimd_blake2b *s, const void *data, size_t n);
/* Writes digest_size bytes to out. */
void optimd_blake2b_final(optimd_blake2b *s, uint8_t *out);

#endif
