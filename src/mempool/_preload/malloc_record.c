/* The --malloc recorder: a preload library (LD_PRELOAD) that logs every C heap call
 * of one process as the body of a mempool-trace v1 file (../shared/traces/README.md:
 * "a ID SIZE [ALIGN]", "f ID", "r ID SIZE"), forwarding each call to glibc's own
 * allocator (__libc_malloc & co.), so the program runs as it would.
 *
 * `python -m mempool record --malloc -o OUT -- CMD ARGS` sets MEMPOOL_MALLOC_OUT to
 * a scratch prefix; each process that loads the library writes PREFIX.<its pid> (a
 * fork()ed child stops recording until it exec()s).  The CLI keeps CMD's own file
 * (what CMD became after any exec: a launcher script's program), adds the header
 * (ops, maxlive) once CMD has exited and drops the files of the processes CMD
 * started.
 *
 * Nothing here allocates from the heap: the pointer table and the free-ID stack live
 * in mmap()ed memory, lines are formatted by hand into a static buffer written with
 * write(2).  One mutex orders the records; a free is recorded before the memory goes
 * back and an allocation after it came, so the log's order is one the calls could
 * have taken effect in (an address is never live twice in it).  Records of calls the
 * recorder cannot place (a free or realloc of a block allocated before it started)
 * are left out or become allocations, as the format allows.  The last buffer is
 * written at exit (the library's destructor); a process killed or ended by _exit()
 * loses at most the last buffer (IDs live at the end are allowed by the format).
 *
 * Not a Python module: built by setup.py as mempool/_malloc_record*.so, never
 * imported. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../_core/replay.h" /* mp_trace_line: the format's one writer */

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define EXPORT __attribute__((visibility("default")))

/* ---- state (all under `lock`) ---------------------------------------------------- */
typedef struct {
    uintptr_t ptr; /* 0: empty slot */
    uint32_t id;
} slot_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int fd = -1;     /* >= 0: recording */
static slot_t *table;   /* open addressing, linear probing, power-of-two size */
static size_t tcap, tused;
static uint32_t *ids;   /* the free-ID stack (last freed, first reused) */
static size_t icap, itop;
static uint32_t next_id;
static char buf[1 << 20];
static size_t blen;
static __thread int busy __attribute__((tls_model("initial-exec"))); /* this thread is inside the recorder: record nothing */

static void *map(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static char path[4096]; /* the body's file (start) */

static void flush(void)
{
    size_t off = 0;
    while (off < blen) {
        ssize_t w = write(fd, buf + off, blen - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { /* the disk is full or the file is gone: stop recording, and say so
                         in the file's name (a rename needs no room): body.<pid>.failed-<errno>,
                         which record_malloc reports instead of a cut trace */
            int e = w < 0 ? errno : ENOSPC;
            char failed[4096 + 32];
            if ((size_t)snprintf(failed, sizeof failed, "%s.failed-%d", path, e) < sizeof failed)
                (void)rename(path, failed);
            close(fd);
            fd = -1;
            break;
        }
        off += (size_t)w;
    }
    blen = 0;
}

/* One line (UINT64_MAX: no size / no align); the file when the buffer is full. */
static void line(char kind, uint32_t id, uint64_t size, uint64_t align)
{
    if (blen > sizeof buf - MP_TRACE_LINE_MAX) flush();
    if (fd < 0) return;
    blen = (size_t)(mp_trace_line(buf + blen, kind, id, size, align) - buf);
}

static size_t hash(uintptr_t p, size_t mask)
{
    uint64_t h = (uint64_t)p * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & mask;
}

static int grow_table(void)
{
    size_t ncap = tcap ? tcap * 2 : (1u << 16);
    slot_t *nt = map(ncap * sizeof *nt);
    if (!nt) return -1;
    for (size_t i = 0; i < tcap; i++) {
        if (!table[i].ptr) continue;
        size_t j = hash(table[i].ptr, ncap - 1);
        while (nt[j].ptr) j = (j + 1) & (ncap - 1);
        nt[j] = table[i];
    }
    if (table) munmap(table, tcap * sizeof *table);
    table = nt;
    tcap = ncap;
    return 0;
}

static int insert(uintptr_t p, uint32_t id)
{
    if ((tused + 1) * 2 > tcap && grow_table()) return -1;
    size_t j = hash(p, tcap - 1);
    while (table[j].ptr && table[j].ptr != p) j = (j + 1) & (tcap - 1);
    if (!table[j].ptr) tused++;
    table[j].ptr = p;
    table[j].id = id;
    return 0;
}

/* Remove p; its id, or -1 when p is not live here.  Backward-shift deletion keeps
 * every probe run unbroken without tombstones. */
static int64_t take(uintptr_t p)
{
    if (!tcap) return -1;
    size_t mask = tcap - 1, j = hash(p, mask);
    while (table[j].ptr && table[j].ptr != p) j = (j + 1) & mask;
    if (!table[j].ptr) return -1;
    uint32_t id = table[j].id;
    size_t hole = j;
    for (size_t k = (j + 1) & mask; table[k].ptr; k = (k + 1) & mask) {
        size_t home = hash(table[k].ptr, mask);
        /* k may move into the hole when its home is not in (hole, k] cyclically */
        if (((k - home) & mask) >= ((k - hole) & mask)) {
            table[hole] = table[k];
            hole = k;
        }
    }
    table[hole].ptr = 0;
    tused--;
    return id;
}

static int64_t new_id(void)
{
    if (itop) return ids[--itop];
    if (next_id == UINT32_MAX) return -1;
    return next_id++;
}

static void free_id(uint32_t id)
{
    if (itop == icap) {
        size_t ncap = icap ? icap * 2 : (1u << 16);
        uint32_t *n = map(ncap * sizeof *n);
        if (!n) return; /* the ID is not reused: still a valid trace */
        if (ids) {
            memcpy(n, ids, icap * sizeof *n);
            munmap(ids, icap * sizeof *ids);
        }
        ids = n;
        icap = ncap;
    }
    ids[itop++] = id;
}

/* ---- recording -------------------------------------------------------------------- */
static int enter(void)
{
    if (busy || fd < 0) return 0;
    busy = 1;
    pthread_mutex_lock(&lock);
    if (fd < 0) { /* stopped meanwhile */
        pthread_mutex_unlock(&lock);
        busy = 0;
        return 0;
    }
    return 1;
}

static void leave(void)
{
    pthread_mutex_unlock(&lock);
    busy = 0;
}

static void rec_alloc(void *p, size_t size, size_t align)
{
    if (!p || !enter()) return;
    int64_t id = new_id();
    if (id >= 0 && insert((uintptr_t)p, (uint32_t)id) == 0) {
        if (align > 16) line('a', (uint32_t)id, size, align);
        else line('a', (uint32_t)id, size, UINT64_MAX);
    }
    leave();
}

static void rec_free(void *p)
{
    if (!p || !enter()) return;
    int64_t id = take((uintptr_t)p);
    if (id >= 0) {
        line('f', (uint32_t)id, UINT64_MAX, UINT64_MAX);
        free_id((uint32_t)id);
    }
    leave();
}

/* ---- the interposed calls --------------------------------------------------------- */
EXPORT void *malloc(size_t n)
{
    void *p = __libc_malloc(n);
    rec_alloc(p, n, 0);
    return p;
}

EXPORT void free(void *p)
{
    rec_free(p);
    __libc_free(p);
}

EXPORT void *calloc(size_t n, size_t m)
{
    void *p = __libc_calloc(n, m);
    rec_alloc(p, n * m, 0); /* (calloc refused an overflowing n * m: p is NULL) */
    return p;
}

EXPORT void *realloc(void *old, size_t n)
{
    if (!old) return malloc(n);
    if (n == 0) { /* glibc frees and returns NULL */
        free(old);
        return NULL;
    }
    int64_t id = -1;
    if (enter()) { /* out of the table before glibc may hand the address to another */
        id = take((uintptr_t)old);
        leave();
    }
    void *p = __libc_realloc(old, n);
    if (id < 0) { /* not ours to resize: from before the recording, or unrecorded */
        if (p && p != old) rec_alloc(p, n, 0);
        return p;
    }
    if (enter()) {
        if (p) {
            if (insert((uintptr_t)p, (uint32_t)id) == 0) line('r', (uint32_t)id, n, UINT64_MAX);
            else line('f', (uint32_t)id, UINT64_MAX, UINT64_MAX);
        } else {
            insert((uintptr_t)old, (uint32_t)id); /* failed: the old block stays live */
        }
        leave();
    }
    return p;
}

EXPORT void *reallocarray(void *old, size_t n, size_t m)
{
    if (m && n > SIZE_MAX / m) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(old, n * m);
}

static int pow2(size_t a) { return a && !(a & (a - 1)); }

EXPORT void *memalign(size_t align, size_t n)
{
    void *p = __libc_memalign(align, n);
    rec_alloc(p, n, pow2(align) ? align : 0);
    return p;
}

EXPORT void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }

EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
    if (!pow2(align) || align % sizeof(void *)) return EINVAL;
    void *p = __libc_memalign(align, n);
    if (!p) return ENOMEM;
    rec_alloc(p, n, align);
    *out = p;
    return 0;
}

EXPORT void *valloc(size_t n) { return memalign((size_t)sysconf(_SC_PAGESIZE), n); }

EXPORT void *pvalloc(size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return memalign(page, n ? (n + page - 1) & ~(page - 1) : page);
}

/* ---- start, fork, exit -------------------------------------------------------------- */
static void before_fork(void) { pthread_mutex_lock(&lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&lock); }

static void after_fork_child(void)
{
    /* the child's calls are not the recorded process's: stop, and leave the parent's
     * buffered lines to the parent (the child's copy of them is dropped, unwritten) */
    if (fd >= 0) close(fd);
    fd = -1;
    blen = 0;
    pthread_mutex_unlock(&lock);
}

__attribute__((constructor)) static void start(void)
{
    const char *out = getenv("MEMPOOL_MALLOC_OUT");
    if (!out || !*out || (size_t)snprintf(path, sizeof path, "%s.%ld", out, (long)getpid()) >= sizeof path)
        return;
    /* O_TRUNC: a program that exec()s another (a launcher script) leaves the file to
     * the image it became, which has the same pid */
    int f = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (f < 0) return;
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    pthread_mutex_lock(&lock);
    fd = f;
    pthread_mutex_unlock(&lock);
}

__attribute__((destructor)) static void finish(void)
{
    pthread_mutex_lock(&lock);
    if (fd >= 0) {
        flush();
        if (fd >= 0) close(fd);
        fd = -1;
    }
    pthread_mutex_unlock(&lock);
}
