#include "wal.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* CRC-32C (Castagnoli): what ext4, iSCSI and RocksDB use for the same job;
 * x86 computes it in hardware (SSE4.2), so checksumming a gradient costs a
 * fraction of writing it. */
static uint32_t crc_table[256];
static pthread_once_t crc_table_once = PTHREAD_ONCE_INIT;

static void crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
        crc_table[i] = c;
    }
}

static uint32_t crc32c_portable(uint32_t crc, const unsigned char *p, size_t len)
{
    pthread_once(&crc_table_once, crc_table_init);
    while (len--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
    crc = ~crc;
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_sse42(crc, data, len);
#endif
    return ~crc32c_portable(crc, data, len);
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

int wal_append(int fd, uint64_t version, const void *request, size_t len)
{
    if (len > UINT32_MAX - 8) {
        errno = EFBIG;
        return -1;
    }
    unsigned char head[16];
    put_u64(head + 8, version);
    uint32_t crc = crc32c(0, head + 8, 8);
    crc = crc32c(crc, request, len);
    put_u32(head, (uint32_t)(len + 8));
    put_u32(head + 4, crc);
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    struct iovec iov[2] = {{head, sizeof head}, {(void *)request, len}};
    size_t want = sizeof head + len, done = 0;
    while (done < want) {
        /* Rebuild the vector past what was written, for short writes. */
        struct iovec part[2];
        int n = 0;
        size_t skip = done;
        for (int i = 0; i < 2; i++) {
            if (skip >= iov[i].iov_len) {
                skip -= iov[i].iov_len;
                continue;
            }
            part[n].iov_base = (char *)iov[i].iov_base + skip;
            part[n].iov_len = iov[i].iov_len - skip;
            skip = 0;
            n++;
        }
        ssize_t w = writev(fd, part, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            int saved = errno;
            /* No half record may stay behind a good one. */
            if (ftruncate(fd, st.st_size) != 0) { /* replay will cut it */ }
            errno = saved;
            return -1;
        }
        done += (size_t)w;
    }
    return 0;
}

long wal_replay(int fd, wal_apply_fn apply, void *ctx, uint64_t *good_bytes)
{
    *good_bytes = 0;
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    size_t size = (size_t)st.st_size;
    if (size == 0) return 0;
    unsigned char *buf = malloc(size);
    if (!buf) return -1;
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    long records = 0;
    size_t pos = 0;
    while (got - pos >= 16) {
        uint32_t len = (uint32_t)get_le(buf + pos, 4);
        uint32_t crc = (uint32_t)get_le(buf + pos + 4, 4);
        if (len < 8 || len > got - pos - 8) break;   /* torn: the record runs past the end */
        if (crc32c(0, buf + pos + 8, len) != crc) break;
        uint64_t version = get_le(buf + pos + 8, 8);
        if (apply(ctx, version, buf + pos + 16, len - 8) != 0) break;
        pos += 8 + (size_t)len;
        records++;
    }
    *good_bytes = pos;
    free(buf);
    return records;
}
