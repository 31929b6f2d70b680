/*
 * place.c -- where the strategy state of a file pool or a shared pool lies, and how it
 * grows (mp_place_t in native.h; the slots' format is _segment.py's).
 *
 * A state whose node budget is spent (MP_ENONODES) moves, between transactions (the
 * journal idle) and with the GIL held throughout (no Python code runs: no other thread,
 * signal handler or close() can come in between), to a pair (state, shadow) twice the
 * budget, page aligned, past the file's or segment's last pair; then one of the two
 * placement slots in the header page is written to name it (generation + 1, offsets,
 * sizes, a checksum; the fields in order, the checksum last).  A process killed before
 * the slot is whole leaves the old slot the winner (the half-built pair is garbage the
 * next growth writes over); after it, the new pair is the state.  The pair it replaced
 * is then retired (its magic cleared, so a damaged winning slot can never fall back to
 * it silently: attaching it is a CorruptionError) and its whole pages are given back
 * (hole punching; the length stays).  A file pool msyncs the new pair before the slot,
 * and the header page before retiring, so a machine crash cannot leave a slot naming a
 * pair that never reached the disk.
 *
 * A shared pool's other processes follow the winner when they take the lock, before
 * anything reads the state (the journal's recovery included): two loads when nothing
 * moved, else the slot is validated and the pair mapped (inside the process's first
 * mapping when it attached after the growth, else in a mapping of its own, let go when
 * it follows the next one or closes).
 */
#include "native.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOT_AT 512                      /* _segment.PLACEMENT_OFFSET: two slots of 8 words */
#define SLOT_MAGIC 0x314543414c50504dull /* "MPPLACE1" */
#define PAGE 4096u

typedef struct {
    uint64_t magic, gen, st, sh, size, end, pad, sum;
} place_slot_t;

_Static_assert(SLOT_AT == 512 && offsetof(place_slot_t, gen) == 8 && sizeof(place_slot_t) == 64,
               "mp_place_moved (native.h) reads the generations there");

static uint64_t slot_sum(const place_slot_t *p) /* _segment.slot_sum */
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int k = 0; k < 7; k++) {
        h = (h ^ w[k]) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
    }
    return h;
}

static inline uint64_t page_up(uint64_t n) { return (n + PAGE - 1) & ~(uint64_t)(PAGE - 1); }
static inline uint64_t page_down(uint64_t n) { return n & ~(uint64_t)(PAGE - 1); }
static inline volatile place_slot_t *slot_of(const mp_place_t *pl, int k)
{
    return (volatile place_slot_t *)(pl->first + SLOT_AT + 64 * k);
}
static inline int movable(const mp_place_t *pl) { return pl->fd >= 3; }

/* Fault injection for the tests (tests/test_file_growth.py, test_shared_growth.py):
 * MEMPOOL_GROW_FAULT=<step> kills the process at that step of a growth (of the state
 * here, "registry" of a shared pool's registry: pool_shared.c). */
void mp_grow_fault(const char *step)
{
    const char *f = getenv("MEMPOOL_GROW_FAULT");
    if (f && strcmp(f, step) == 0) raise(SIGKILL);
}

int mp_place_setup(PoolObject *p, int fd, char *first, uint64_t first_len, PyObject *place,
                   uint64_t st_off, uint64_t sh_off, int durable)
{
    mp_place_t *pl = &p->place;
    unsigned long long gen = 0, end = 0, base_end = 0, base_size = 0;
    int slot = -1;
    pl->fd = -1;
    if (fd < 0 || !place || place == Py_None) return 0; /* a state that stays where it is */
    if (!PyArg_ParseTuple(place, "KiKKK:placement", &gen, &slot, &end, &base_end, &base_size))
        return -1;
    pl->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (pl->fd < 0) {
        pl->fd = -1;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pl->gen = gen;
    pl->slot = slot < 0 ? -1 : slot & 1;
    pl->st_off = st_off;
    pl->sh_off = sh_off;
    pl->end = end;
    pl->base_end = base_end;
    pl->base_size = base_size;
    pl->first = first;
    pl->first_len = first_len;
    pl->durable = durable;
    return 0;
}

/* The winning slot (*best, its index in *k), or *k = -1 when the header's pair wins;
 * MP_ECORRUPT for a whole slot (its checksum holds) that names what cannot be a pair. */
static int read_placement(const mp_place_t *pl, place_slot_t *best, int *k, char *msg,
                          size_t msglen)
{
    *k = -1;
    best->gen = 0;
    struct stat sb;
    if (fstat(pl->fd, &sb) != 0) sb.st_size = 0;
    for (int j = 0; j < 2; j++) {
        place_slot_t s;
        memcpy(&s, (const void *)slot_of(pl, j), sizeof s);
        if (s.sum != slot_sum(&s) || (!s.magic && !s.gen)) continue; /* torn, or never used */
        if (s.magic != SLOT_MAGIC || s.gen < 1 || s.gen >= ((uint64_t)1 << 62) || s.st % PAGE ||
            s.sh % PAGE || s.size < pl->base_size || s.st < pl->base_end ||
            s.sh < s.st + s.size || s.end < s.sh + s.size || s.end > (uint64_t)sb.st_size) {
            snprintf(msg, msglen, "placement slot %d is inconsistent", j);
            return MP_ECORRUPT;
        }
        if (s.gen == best->gen) {
            snprintf(msg, msglen, "two placement slots of generation %llu",
                     (unsigned long long)s.gen);
            return MP_ECORRUPT;
        }
        if (s.gen > best->gen) {
            *best = s;
            *k = j;
        }
    }
    return MP_OK;
}

/* Make the pair s (named by slot k) the pool's state: map it where the first mapping
 * does not reach, repoint the strategy, the journal and pool.named, let the previous
 * own mapping go. */
static int follow_pair(PoolObject *p, mp_tx_t *tx, const place_slot_t *s, int k, int verify,
                       char *msg, size_t msglen)
{
    mp_place_t *pl = &p->place;
    StrategyObject *so = p->strategy;
    char *st, *sh, *tail = NULL;
    if (s->end <= pl->first_len) {
        st = pl->first + s->st;
        sh = pl->first + s->sh;
    } else {
        tail = mmap(NULL, (size_t)(s->end - s->st), PROT_READ | PROT_WRITE, MAP_SHARED, pl->fd,
                    (off_t)s->st);
        if (tail == MAP_FAILED) {
            snprintf(msg, msglen, "cannot map the grown state: %s", strerror(errno));
            return MP_ENONODES;
        }
        st = tail;
        sh = tail + (s->sh - s->st);
    }
    /* a pair another process grew: checked whole before it is used, as an attach
     * checks (its head alone let a crafted body crash the next alloc), and its shadow
     * with the log replayed equal to it unless a call is pending (the recovery then
     * checks what it keeps); no memory for that copy is MP_ENONODES (MemoryError),
     * not a corrupt pair */
    int bad = mp_head_validate(st, s->size, so->ops, msg, msglen);
    if (!bad && verify && !mp_tx_pending(tx)) {
        bad = so->ops->check(st, s->size, msg, msglen);
        /* (and the redo log's entries since the growth replay on its shadow to it) */
        if (!bad) bad = mp_tx_verify(tx, st, sh, s->size, msg, msglen);
    }
    if (bad) {
        if (tail) munmap(tail, (size_t)(s->end - s->st));
        return bad == MP_EINVAL ? MP_ENONODES : MP_ECORRUPT;
    }
    void *old = so->st;
    so->st = st;
    so->st_len = s->size;
    mp_wrap_moved(old, st); /* a recorded or limited state's entry follows it */
    mp_tx_move(tx, st, sh, s->size);
    if (p->named) p->named->st = st;
    if (pl->tail) munmap(pl->tail, (size_t)pl->tail_len);
    pl->tail = tail;
    pl->tail_len = tail ? s->end - s->st : 0;
    pl->gen = s->gen;
    pl->slot = k;
    pl->st_off = s->st;
    pl->sh_off = s->sh;
    pl->end = s->end;
    return MP_OK;
}

int mp_place_follow(PoolObject *p, mp_tx_t *tx, char *msg, size_t msglen)
{
    mp_place_t *pl = &p->place;
    if (!movable(pl)) return MP_OK;
    uint64_t g0 = slot_of(pl, 0)->gen, g1 = slot_of(pl, 1)->gen;
    if ((g0 > g1 ? g0 : g1) == pl->gen) return MP_OK; /* nothing moved (the common case) */
    place_slot_t s;
    int k, rc = read_placement(pl, &s, &k, msg, msglen);
    if (rc || s.gen == pl->gen) return rc; /* (a torn slot of a dead growth: ignored) */
    if (s.gen < pl->gen) {
        snprintf(msg, msglen, "the placement slots went back to an older state");
        return MP_ECORRUPT;
    }
    return follow_pair(p, tx, &s, k, 1, msg, msglen);
}

/* Give back the whole pages of [off, off + len) of the file (best effort). */
static void punch(const mp_place_t *pl, uint64_t off, uint64_t len)
{
    uint64_t lo = page_up(off), hi = page_down(off + len);
    if (hi > lo)
        (void)fallocate(pl->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)lo,
                        (off_t)(hi - lo));
}

/* A growth that failed gives back what it added to the file: posix_fallocate that
 * runs out of room leaves the file extended by what it got (a full disk stayed full). */
static void unextend(int fd, off_t before)
{
    struct stat sb;
    if (before >= 0 && fstat(fd, &sb) == 0 && sb.st_size > before) (void)ftruncate(fd, before);
}

int mp_place_grow(PoolObject *p, mp_tx_t *tx, char *msg, size_t msglen)
{
    mp_place_t *pl = &p->place;
    StrategyObject *so = p->strategy;
    const mp_ops_t *ops = so->ops;
    uint64_t len = movable(pl) && ops->grow_size ? ops->grow_size(so->st) : 0;
    if (len <= so->st_len) {
        snprintf(msg, msglen, "the state cannot grow");
        return MP_ENONODES;
    }
    /* the log's entries are operations on the state it replaces: the shadow is brought
     * up to date first (a process killed after the new slot is written finds an empty
     * log; before it, the old pair and its log as they were) */
    mp_tx_checkpoint(tx);
    uint64_t st = page_up(pl->end), sh = st + page_up(len), end = sh + page_up(len);
    struct stat sb;
    off_t before = fstat(pl->fd, &sb) == 0 ? sb.st_size : -1;
    int e = posix_fallocate(pl->fd, (off_t)st, (off_t)(end - st));
    if (e) {
        unextend(pl->fd, before);
        snprintf(msg, msglen, "cannot grow the state to %llu bytes: %s",
                 (unsigned long long)len, strerror(e));
        errno = e;
        return MP_EINVAL;
    }
    char *m = mmap(NULL, (size_t)(end - st), PROT_READ | PROT_WRITE, MAP_SHARED, pl->fd,
                   (off_t)st);
    if (m == MAP_FAILED) {
        e = errno;
        unextend(pl->fd, before);
        snprintf(msg, msglen, "cannot map the grown state: %s", strerror(e));
        errno = e;
        return MP_EINVAL;
    }
    mp_grow_fault("mapped");
    if (ops->grow(so->st, m, len) != MP_OK) {
        munmap(m, (size_t)(end - st));
        unextend(pl->fd, before);
        snprintf(msg, msglen, "the state could not be grown");
        return MP_ENONODES;
    }
    memcpy(m + (sh - st), m, (size_t)len);
    if (pl->durable) msync(m, (size_t)(end - st), MS_SYNC); /* on disk before it is named */
    mp_grow_fault("grown");
    int k = pl->slot < 0 ? 0 : 1 - pl->slot;
    place_slot_t s = {SLOT_MAGIC, pl->gen + 1, st, sh, len, end, 0, 0};
    s.sum = slot_sum(&s);
    volatile place_slot_t *d = slot_of(pl, k);
    d->magic = s.magic; /* in order (volatile): a kill leaves a prefix, caught by the sum */
    d->gen = s.gen;
    d->st = s.st;
    d->sh = s.sh;
    mp_grow_fault("slot-half");
    d->size = s.size;
    d->end = s.end;
    d->pad = 0;
    d->sum = s.sum;
    if (pl->durable) msync(pl->first, PAGE, MS_SYNC);
    mp_grow_fault("flipped");
    /* retire the pair it replaced: a damaged slot can never fall back to it silently */
    uint64_t old_st = pl->st_off, old_sh = pl->sh_off, old_len = so->st_len;
    memset(so->st, 0, 4);
    memset(tx->shadow, 0, 4);
    mp_grow_fault("retired");
    munmap(m, (size_t)(end - st));
    int rc = follow_pair(p, tx, &s, k, 0, msg, msglen);
    if (rc) return rc; /* (the slot names the new pair: the next call follows it) */
    punch(pl, old_st, old_len); /* its pages go back (whole ones: a lock area may share) */
    punch(pl, old_sh, old_len);
    return MP_OK;
}

int mp_place_sync(PoolObject *p)
{
    mp_place_t *pl = &p->place;
    if (pl->tail && msync(pl->tail, (size_t)pl->tail_len, MS_SYNC) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

void mp_place_release(PoolObject *p)
{
    mp_place_t *pl = &p->place;
    if (pl->tail) {
        StrategyObject *so = p->strategy;
        if (so && so->st == (void *)pl->tail) {
            so->st = NULL;
            so->st_len = 0;
        }
        munmap(pl->tail, (size_t)pl->tail_len);
        pl->tail = NULL;
        pl->tail_len = 0;
    }
    if (pl->fd >= 3) { /* (>= 3: a dup made so; 0 in an object never set up) */
        close(pl->fd);
        pl->fd = -1;
    }
}
