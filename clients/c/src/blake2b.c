/*
 * BLAKE2b written from RFC 7693 (sections 2 and 3, Appendix C's
 * constants) rather than taken from a library: placement needs only the
 * unkeyed hash of a few short strings, and a hundred lines here keep the
 * client library's dependencies (NNG, msgpack-c) what they were for every
 * program that links it. tests/client/test_client_cluster.c checks it
 * against RFC 7693 Appendix A and against hashlib.
 */
#include "blake2b.h"

#include <string.h>

/* RFC 7693 section 2.6: the SHA-512 initial values. */
static const uint64_t blake2b_iv[8] = {
    0x6a09e667f3bcc908ull, 0xbb67ae8584caa73bull, 0x3c6ef372fe94f82bull,
    0xa54ff53a5f1d36f1ull, 0x510e527fade682d1ull, 0x9b05688c2b3e6c1full,
    0x1f83d9abfb41bd6bull, 0x5be0cd19137e2179ull};

/* RFC 7693 section 2.7; rounds 10 and 11 reuse rows 0 and 1. */
static const uint8_t blake2b_sigma[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0}};

static uint64_t rotr64(uint64_t x, unsigned n)
{
    return (x >> n) | (x << (64 - n));
}

/* The words are little-endian whatever the host's byte order. */
static uint64_t load64_le(const uint8_t *p)
{
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--) x = (x << 8) | p[i];
    return x;
}

/* RFC 7693 section 3.1, rotation constants R1..R4 = 32, 24, 16, 63. */
static void mix(uint64_t v[16], int a, int b, int c, int d, uint64_t x,
                uint64_t y)
{
    v[a] = v[a] + v[b] + x;
    v[d] = rotr64(v[d] ^ v[a], 32);
    v[c] = v[c] + v[d];
    v[b] = rotr64(v[b] ^ v[c], 24);
    v[a] = v[a] + v[b] + y;
    v[d] = rotr64(v[d] ^ v[a], 16);
    v[c] = v[c] + v[d];
    v[b] = rotr64(v[b] ^ v[c], 63);
}

/* RFC 7693 section 3.2, the compression function F. */
static void compress(optimd_blake2b *s, const uint8_t block[128], int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= s->t[0];
    v[13] ^= s->t[1];
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) m[i] = load64_le(block + 8 * i);
    for (int r = 0; r < 12; r++) {
        const uint8_t *z = blake2b_sigma[r % 10];
        mix(v, 0, 4, 8, 12, m[z[0]], m[z[1]]);
        mix(v, 1, 5, 9, 13, m[z[2]], m[z[3]]);
        mix(v, 2, 6, 10, 14, m[z[4]], m[z[5]]);
        mix(v, 3, 7, 11, 15, m[z[6]], m[z[7]]);
        mix(v, 0, 5, 10, 15, m[z[8]], m[z[9]]);
        mix(v, 1, 6, 11, 12, m[z[10]], m[z[11]]);
        mix(v, 2, 7, 8, 13, m[z[12]], m[z[13]]);
        mix(v, 3, 4, 9, 14, m[z[14]], m[z[15]]);
    }
    for (int i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
}

static void count_bytes(optimd_blake2b *s, size_t n)
{
    s->t[0] += n;
    if (s->t[0] < n) s->t[1]++;
}

void optimd_blake2b_init(optimd_blake2b *s, size_t digest_size)
{
    if (digest_size < 1) digest_size = 1;
    if (digest_size > OPTIMD_BLAKE2B_MAX_DIGEST)
        digest_size = OPTIMD_BLAKE2B_MAX_DIGEST;
    memset(s, 0, sizeof *s);
    memcpy(s->h, blake2b_iv, sizeof s->h);
    /* Parameter block word 0: digest length, key length 0, fanout 1,
     * depth 1 (RFC 7693 section 2.5). */
    s->h[0] ^= 0x01010000ull ^ (uint64_t)digest_size;
    s->digest_size = digest_size;
}

void optimd_blake2b_update(optimd_blake2b *s, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n > 0) {
        /* A full buffer is compressed only once more input arrives: the
         * last block, full or not, must carry the final flag. */
        if (s->fill == OPTIMD_BLAKE2B_BLOCK) {
            count_bytes(s, OPTIMD_BLAKE2B_BLOCK);
            compress(s, s->buf, 0);
            s->fill = 0;
        }
        size_t take = OPTIMD_BLAKE2B_BLOCK - s->fill;
        if (take > n) take = n;
        memcpy(s->buf + s->fill, p, take);
        s->fill += take;
        p += take;
        n -= take;
    }
}

void optimd_blake2b_final(optimd_blake2b *s, uint8_t *out)
{
    count_bytes(s, s->fill);
    memset(s->buf + s->fill, 0, OPTIMD_BLAKE2B_BLOCK - s->fill);
    compress(s, s->buf, 1);
    for (size_t i = 0; i < s->digest_size; i++)
        out[i] = (uint8_t)(s->h[i / 8] >> (8 * (i % 8)));
}
