#include "shared_segment.h"

#include "finite.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* SIGBUS guard.
 *
 * Why not just check the file's size before each copy: the owner can
 * truncate between the check and the copy, and one such race kills the
 * daemon and every session in it. MAP_POPULATE does not help either: a
 * truncate drops the pages from the mapping again. A file seal
 * (F_SEAL_SHRINK) would, but only memfds take seals, and a memfd cannot be
 * handed over an NNG ipc connection (no SCM_RIGHTS).
 *
 * So each copy runs with a sigjmp_buf published in a thread-local, and the
 * handler jumps back out of the copy when the faulting address lies in the
 * segment being copied. That is sound here because the guarded region is a
 * copy loop: it takes no lock, allocates nothing and leaves nothing
 * half-updated but the bytes it was copying, which the callers throw away. Any other SIGBUS goes to
 * whatever handled it before (the default: the process dies, as it would
 * have without us). */

static struct sigaction previous_bus;
static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static int handler_installed;   /* 0 until installed; -1 when sigaction failed */

/* Thread-locals of an executable use the local-exec model: reading them in
 * a signal handler allocates nothing. */
static _Thread_local sigjmp_buf *volatile guard_env;
static _Thread_local volatile uintptr_t guard_lo, guard_hi;
static _Thread_local bool bus_unblocked;

static void on_sigbus(int sig, siginfo_t *info, void *uctx)
{
    sigjmp_buf *env = guard_env;
    uintptr_t addr = info ? (uintptr_t)info->si_addr : 0;
    if (env && addr >= guard_lo && addr < guard_hi) siglongjmp(*env, 1);
    if (previous_bus.sa_flags & SA_SIGINFO) {
        if (previous_bus.sa_sigaction) {
            previous_bus.sa_sigaction(sig, info, uctx);
            return;
        }
    } else if (previous_bus.sa_handler != SIG_DFL && previous_bus.sa_handler != SIG_IGN) {
        previous_bus.sa_handler(sig);
        return;
    }
    /* Returning re-runs the faulting access, which now meets the default
     * action (ignoring a fault would only loop). */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGBUS, &dfl, NULL);
}

static void install_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    /* SA_NODEFER: the jump leaves the handler without sigreturn, so SIGBUS
     * must not stay blocked afterwards; this way no sigsetjmp has to save
     * and restore the signal mask (two syscalls per copy). */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    handler_installed = sigaction(SIGBUS, &sa, &previous_bus) == 0 ? 1 : -1;
}

/* A SIGBUS raised while blocked kills the process whatever the handler, so
 * the copying thread must have it unblocked (request threads have; this
 * makes sure once per thread). */
static void unblock_bus(void)
{
    if (bus_unblocked) return;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    bus_unblocked = true;
}

/* One copy between the segment and private memory; `elem_size` 4 or 8
 * asks for the finiteness check of what passes, 0 for none. */
typedef struct copy_job {
    unsigned char *dst;
    const unsigned char *src;
    size_t n;
    size_t elem_size;
    bool bad;                  /* an element was not finite */
} copy_job;

static void copy_body(copy_job *j)
{
    if (!optimd_copy_finite(j->dst, j->src, j->n, j->elem_size)) j->bad = true;
}

static int guarded_copy(const optimd_shared_segment *seg, copy_job *j)
{
    if (j->n == 0) return 0;
    if (handler_installed != 1) return -1;
    unblock_bus();
    sigjmp_buf env;
    if (sigsetjmp(env, 0) != 0) {
        guard_env = NULL;
        return -1;
    }
    guard_lo = (uintptr_t)seg->base;
    guard_hi = (uintptr_t)seg->base + seg->size;
    atomic_signal_fence(memory_order_seq_cst);
    guard_env = &env;
    atomic_signal_fence(memory_order_seq_cst);
    copy_body(j);
    atomic_signal_fence(memory_order_seq_cst);
    guard_env = NULL;
    return 0;
}

int optimd_shm_read(const optimd_shared_segment *seg, void *dst, uint64_t offset, size_t n)
{
    copy_job j = {.dst = dst, .src = seg->base + offset, .n = n};
    return guarded_copy(seg, &j);
}

int optimd_shm_write(const optimd_shared_segment *seg, uint64_t offset, const void *src, size_t n)
{
    copy_job j = {.dst = seg->base + offset, .src = src, .n = n};
    return guarded_copy(seg, &j);
}

int optimd_shm_read_checked(const optimd_shared_segment *seg, void *dst, uint64_t offset, size_t n,
                            size_t elem_size, bool *finite)
{
    copy_job j = {.dst = dst, .src = seg->base + offset, .n = n, .elem_size = elem_size};
    int rc = guarded_copy(seg, &j);
    if (rc == 0 && j.bad) *finite = false;
    return rc;
}

int optimd_shm_write_checked(const optimd_shared_segment *seg, uint64_t offset, const void *src, size_t n,
                             size_t elem_size, bool *finite)
{
    copy_job j = {.dst = seg->base + offset, .src = src, .n = n, .elem_size = elem_size};
    int rc = guarded_copy(seg, &j);
    if (rc == 0 && j.bad) *finite = false;
    return rc;
}

static bool valid_name(const char *name, size_t len)
{
    /* One path component under /dev/shm, never "." or ".." or hidden. */
    if (len < 2 || len > OPTIMD_SHM_NAME_MAX || name[0] != '/' || name[1] == '.') return false;
    for (size_t i = 1; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == '-'))
            return false;
    }
    return true;
}

int optimd_shm_map(optimd_shared_segment *seg, const char *name, size_t name_len, uint64_t size,
                   uid_t owner, request_error *err)
{
    memset(seg, 0, sizeof *seg);
    seg->fd = -1;
    if (!valid_name(name, name_len))
        return fail(err, OPTIMD_E_BAD_REQUEST, "'segment' must be a POSIX shared memory name: \"/\" then 1 to "
                    "%d bytes of A-Z a-z 0-9 . _ -, not starting with a dot", OPTIMD_SHM_NAME_MAX - 1);
    if (size == 0 || size > (uint64_t)PTRDIFF_MAX)
        return fail(err, OPTIMD_E_BAD_REQUEST, "'size' must be 1 to %lld bytes", (long long)PTRDIFF_MAX);
    pthread_once(&handler_once, install_handler);
    if (handler_installed != 1)
        return fail(err, OPTIMD_E_INTERNAL, "cannot install the SIGBUS guard for shared memory");
    memcpy(seg->name, name, name_len);
    seg->name[name_len] = '\0';
    /* glibc's shm_open adds O_NOFOLLOW and O_CLOEXEC; O_NONBLOCK and
     * O_NOCTTY keep a FIFO or a device someone put in /dev/shm from
     * blocking or doing anything on open before fstat refuses it. */
    int fd = shm_open(seg->name, O_RDWR | O_NONBLOCK | O_NOCTTY, 0);
    if (fd < 0)
        return fail(err, OPTIMD_E_BAD_REQUEST, "cannot open shared memory segment %s: %s", seg->name,
                    strerror(errno));
    struct stat st;
    const char *why = NULL;
    char buf[160];
    if (fstat(fd, &st) != 0) {
        snprintf(buf, sizeof buf, "fstat: %s", strerror(errno));
        why = buf;
    } else if (!S_ISREG(st.st_mode)) {
        why = "it is not a regular file";
    } else if (st.st_uid != owner) {
        /* Else one user could have the daemon scribble parameters into
         * another user's segment. */
        snprintf(buf, sizeof buf, "it belongs to uid %u, the connection's peer is uid %u", (unsigned)st.st_uid,
                 (unsigned)owner);
        why = buf;
    } else if (st.st_mode & 077) {
        snprintf(buf, sizeof buf, "its mode is %04o; it must be accessible to its owner only (0600)",
                 (unsigned)(st.st_mode & 07777));
        why = buf;
    } else if ((uint64_t)st.st_size != size) {
        snprintf(buf, sizeof buf, "it is %lld bytes, the request says %llu", (long long)st.st_size,
                 (unsigned long long)size);
        why = buf;
    }
    if (why) {
        close(fd);
        return fail(err, OPTIMD_E_BAD_REQUEST, "shared memory segment %s refused: %s", seg->name, why);
    }
    void *base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        return fail(err, e == ENOMEM ? OPTIMD_E_NOMEM : OPTIMD_E_BAD_REQUEST,
                    "cannot map shared memory segment %s: %s", seg->name, strerror(e));
    }
    seg->fd = fd;
    seg->base = base;
    seg->size = size;
    return 0;
}

void optimd_shm_unmap(optimd_shared_segment *seg)
{
    if (seg->base) munmap(seg->base, (size_t)seg->size);
    if (seg->fd >= 0) close(seg->fd);
    seg->base = NULL;
    seg->fd = -1;
    seg->size = 0;
}

bool optimd_shm_intact(const optimd_shared_segment *seg, request_error *err)
{
    struct stat st;
    if (fstat(seg->fd, &st) != 0) {
        fail(err, OPTIMD_E_BAD_REQUEST, "shared memory segment %s: fstat: %s", seg->name, strerror(errno));
        return false;
    }
    if ((uint64_t)st.st_size < seg->size) {
        fail(err, OPTIMD_E_BAD_REQUEST, "shared memory segment %s shrank from %llu to %lld bytes", seg->name,
             (unsigned long long)seg->size, (long long)st.st_size);
        return false;
    }
    return true;
}

static int by_offset(const void *a, const void *b)
{
    const optimd_shm_range *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->length < y->length ? -1 : x->length > y->length;
}

int optimd_shm_check_ranges(const optimd_shared_segment *seg, optimd_shm_range *r, size_t n,
                            request_error *err)
{
    for (size_t i = 0; i < n; i++) {
        if (r[i].offset % OPTIMD_SHM_ALIGN != 0)
            return fail(err, OPTIMD_E_BAD_TENSOR, "%s of '%.64s': offset %llu is not a multiple of %d", r[i].kind,
                        r[i].name, (unsigned long long)r[i].offset, OPTIMD_SHM_ALIGN);
        /* Written so that no sum can wrap. */
        if (r[i].offset > seg->size || r[i].length > seg->size - r[i].offset)
            return fail(err, OPTIMD_E_BAD_TENSOR, "%s of '%.64s': %llu bytes at offset %llu end beyond the "
                        "segment's %llu bytes", r[i].kind, r[i].name, (unsigned long long)r[i].length,
                        (unsigned long long)r[i].offset, (unsigned long long)seg->size);
    }
    qsort(r, n, sizeof *r, by_offset);
    /* Sorted by offset, if any two ranges overlap then two neighbours do;
     * empty tensors overlap nothing. */
    size_t prev = n;
    for (size_t i = 0; i < n; i++) {
        if (r[i].length == 0) continue;
        if (prev < n && r[prev].offset + r[prev].length > r[i].offset)
            return fail(err, OPTIMD_E_BAD_TENSOR, "%s of '%.64s' and %s of '%.64s' overlap in the segment",
                        r[prev].kind, r[prev].name, r[i].kind, r[i].name);
        prev = i;
    }
    return 0;
}
