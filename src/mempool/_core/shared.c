/*
 * shared.c -- what a pool shared by several processes keeps beside the strategy
 * state: a robust process-shared lock and the block registry.  (POSIX threads;
 * no Python.h.)
 *
 * Layout (inside the shared segment, after the strategy state):
 *
 *   +----------------------+-------------------------------------------+
 *   | mp_shared_ctl_t      | mp_entry_t slots[1 << bits]                |
 *   | magic, counters,     | open addressing by offset (linear probing, |
 *   | pthread_mutex_t      | backward-shift deletion); offset == EMPTY  |
 *   +----------------------+-------------------------------------------+
 *
 * The registry holds one entry per live range of the strategy:
 *   offset  the range                 tag    unique per allocation (serial)
 *   size    bytes asked for           owner  pid of the allocating process
 *   refs    handles alive in all processes (a Block made by alloc, or by
 *           unpickling a handle); the range is freed when refs reaches 0.
 * A handle names (offset, tag): a handle to a freed or reused range finds no
 * entry or another tag, and is refused instead of aliased.
 *
 * The mutex is PTHREAD_PROCESS_SHARED + PTHREAD_MUTEX_ROBUST: when its owner dies,
 * the next taker gets EOWNERDEAD, verifies the strategy state and the registry
 * (mp_shared_recover), repairs what a half-done registry update left, and marks
 * the mutex consistent; when the strategy state itself is broken the pool is
 * marked corrupt and every later call fails with MP_ECORRUPT.  No one waits on a
 * dead owner.
 *
 * Invariants (mp_shared_check):
 *  S1. magic, bits and max_entries agree with the size the segment gives.
 *  S2. entries == number of used slots <= max_entries; every used slot is reachable
 *      from its home slot; tags are <= serial and non-zero; refs >= 1.
 *  S3. every entry's offset is a live range of the strategy, and the strategy has
 *      exactly `entries` live ranges.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "mempool.h"

#define CTL_MAGIC 0x4353504dU /* "MPSC" */
#define EMPTY UINT64_MAX

struct mp_shared_ctl {
    uint32_t magic;        /* CTL_MAGIC                                      */
    uint32_t bits;         /* the registry has 1 << bits slots               */
    uint32_t max_entries;  /* at most this many live entries                 */
    uint32_t entries;      /* live entries                                   */
    uint32_t corrupt;      /* a dead owner left a broken strategy state      */
    uint32_t recoveries;   /* EOWNERDEAD takeovers so far                    */
    uint64_t serial;       /* the last tag handed out                        */
    uint64_t reserved;     /* (0) acquisitions are counted per process: a shared
                              counter written on every call would bounce between cores */
    uint64_t lock_waits;   /* acquisitions that found the lock taken         */
    uint64_t lock_wait_ns; /* time spent waiting for it                      */
    uint64_t repaired;     /* registry entries repaired after a dead owner   */
    uint8_t pad[8];
    union {
        pthread_mutex_t mutex;
        uint8_t room[64];
    } lock;
};
_Static_assert(sizeof(pthread_mutex_t) <= 64, "the mutex fits its room");
_Static_assert(sizeof(struct mp_shared_ctl) % 8 == 0, "slots are 8-aligned");

static mp_entry_t *slots(mp_shared_ctl_t *c) { return (mp_entry_t *)(c + 1); }

static uint32_t bits_for(uint32_t max_entries)
{
    uint32_t bits = 4;
    while (((uint64_t)1 << bits) < 2 * (uint64_t)max_entries) bits++;
    return bits;
}

uint64_t mp_shared_ctl_size(uint64_t max_entries)
{
    if (max_entries == 0 || max_entries > ((uint64_t)1 << 30)) return 0;
    return sizeof(mp_shared_ctl_t) + ((uint64_t)1 << bits_for((uint32_t)max_entries)) * sizeof(mp_entry_t);
}

int mp_shared_ctl_init(mp_shared_ctl_t *c, uint64_t max_entries)
{
    if (!mp_shared_ctl_size(max_entries)) return MP_EINVAL;
    memset(c, 0, sizeof *c);
    c->magic = CTL_MAGIC;
    c->max_entries = (uint32_t)max_entries;
    c->bits = bits_for(c->max_entries);
    for (uint64_t s = 0, n = (uint64_t)1 << c->bits; s < n; s++) {
        slots(c)[s].offset = EMPTY;
        slots(c)[s].tag = slots(c)[s].size = 0;
        slots(c)[s].owner = slots(c)[s].refs = 0;
    }
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a)) return MP_EINVAL;
    int rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) ||
             pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) ||
             pthread_mutex_init(&c->lock.mutex, &a);
    pthread_mutexattr_destroy(&a);
    return rc ? MP_EINVAL : MP_OK;
}

/* ---- the registry ---------------------------------------------------------------- */
static uint64_t home(uint64_t offset, uint32_t bits)
{
    return (offset * 0x9E3779B97F4A7C15ull) >> (64 - bits);
}

mp_entry_t *mp_reg_find(mp_shared_ctl_t *c, uint64_t offset)
{
    uint64_t mask = ((uint64_t)1 << c->bits) - 1, s = home(offset, c->bits);
    for (uint64_t n = 0; n <= mask; n++, s = (s + 1) & mask) {
        mp_entry_t *e = &slots(c)[s];
        if (e->offset == EMPTY) return NULL;
        if (e->offset == offset) return e;
    }
    return NULL;
}

int mp_reg_insert(mp_shared_ctl_t *c, uint64_t offset, uint64_t size, uint32_t owner,
                  uint64_t *tag)
{
    if (c->entries >= c->max_entries) return MP_ENONODES;
    uint64_t mask = ((uint64_t)1 << c->bits) - 1, s = home(offset, c->bits);
    while (slots(c)[s].offset != EMPTY) s = (s + 1) & mask;
    mp_entry_t *e = &slots(c)[s];
    e->tag = ++c->serial;
    e->size = size;
    e->owner = owner;
    e->refs = 1;
    e->offset = offset; /* last: the slot becomes visible whole */
    c->entries++;
    *tag = e->tag;
    return MP_OK;
}

void mp_reg_remove(mp_shared_ctl_t *c, mp_entry_t *e)
{
    uint64_t mask = ((uint64_t)1 << c->bits) - 1;
    uint64_t hole = (uint64_t)(e - slots(c)), s = hole;
    for (;;) {
        s = (s + 1) & mask;
        mp_entry_t *x = &slots(c)[s];
        if (x->offset == EMPTY) break;
        uint64_t h = home(x->offset, c->bits);
        if (((s - h) & mask) >= ((s - hole) & mask)) {
            slots(c)[hole] = *x;
            hole = s;
        }
    }
    slots(c)[hole].offset = EMPTY;
    slots(c)[hole].refs = 0;
    c->entries--;
}

/* Move an entry to a new offset (realloc moved the range); keeps its tag. */
int mp_reg_move(mp_shared_ctl_t *c, mp_entry_t *e, uint64_t offset, uint64_t size)
{
    mp_entry_t keep = *e;
    mp_reg_remove(c, e);
    uint64_t mask = ((uint64_t)1 << c->bits) - 1, s = home(offset, c->bits);
    while (slots(c)[s].offset != EMPTY) s = (s + 1) & mask;
    keep.offset = offset;
    keep.size = size;
    slots(c)[s] = keep;
    c->entries++;
    return MP_OK;
}

uint64_t mp_reg_entries(const mp_shared_ctl_t *c) { return c->entries; }

int mp_reg_walk(mp_shared_ctl_t *c, int (*fn)(void *ctx, mp_entry_t *e), void *ctx)
{
    for (uint64_t s = 0, n = (uint64_t)1 << c->bits; s < n; s++)
        if (slots(c)[s].offset != EMPTY) {
            int r = fn(ctx, &slots(c)[s]);
            if (r) return r;
        }
    return MP_OK;
}

/* ---- check and recovery ------------------------------------------------------------ */
#define FAIL(...)                                                                              \
    do {                                                                                       \
        snprintf(msg, msglen, __VA_ARGS__);                                                    \
        return MP_ECORRUPT;                                                                    \
    } while (0)

int mp_shared_check_layout(const mp_shared_ctl_t *c, uint64_t len, char *msg, size_t msglen)
{
    if (len < sizeof *c) FAIL("lock area of %llu bytes is too short", (unsigned long long)len);
    if (c->magic != CTL_MAGIC) FAIL("bad lock area magic 0x%08x", c->magic);
    if (c->max_entries == 0 || c->bits != bits_for(c->max_entries) || c->bits > 31)
        FAIL("registry size fields are inconsistent");
    if (mp_shared_ctl_size(c->max_entries) != len)
        FAIL("registry needs %llu bytes, the segment gives %llu",
             (unsigned long long)mp_shared_ctl_size(c->max_entries), (unsigned long long)len);
    if (c->entries > c->max_entries) FAIL("registry holds %u entries, at most %u", c->entries,
                                          c->max_entries);
    return MP_OK;
}

/* Allocated ranges without a registry entry, collected by a walk (64 at a time). */
struct orphans {
    mp_shared_ctl_t *c;
    uint64_t offset[64];
    int n;
};

static int orphan_cb(void *ctx, uint64_t offset, uint64_t size, int allocated)
{
    struct orphans *w = ctx;
    (void)size;
    if (allocated && !mp_reg_find(w->c, offset)) {
        w->offset[w->n++] = offset;
        if (w->n == 64) return 1;
    }
    return 0;
}

/* S2 and S3.  With repair != 0, entries whose range is not live are dropped and
 * live ranges without an entry are freed (what a dead owner's half-done call
 * left); each repair is counted in c->repaired. */
static int check_registry(mp_shared_ctl_t *c, const mp_ops_t *ops, void *st, int repair,
                          char *msg, size_t msglen)
{
    uint64_t n = (uint64_t)1 << c->bits, mask = n - 1, used;
restart:
    used = 0;
    for (uint64_t s = 0; s < n; s++) {
        mp_entry_t *e = &slots(c)[s];
        if (e->offset == EMPTY) continue;
        used++;
        uint64_t size;
        if (e->tag == 0 || e->tag > c->serial || e->refs == 0)
            FAIL("registry entry at %llu: bad tag or refs", (unsigned long long)e->offset);
        /* reachable from home without crossing an empty slot */
        for (uint64_t k = home(e->offset, c->bits); k != s; k = (k + 1) & mask)
            if (slots(c)[k].offset == EMPTY)
                FAIL("registry entry at %llu is cut off from its home slot",
                     (unsigned long long)e->offset);
        if (ops->size_of(st, e->offset, &size) != MP_OK) {
            if (!repair) FAIL("registry names offset %llu, which is not a live range",
                              (unsigned long long)e->offset);
            if (c->entries == 0) c->entries = 1; /* remove decrements it */
            mp_reg_remove(c, e);
            c->repaired++;
            goto restart; /* removal shifted slots */
        }
    }
    if (used != c->entries) {
        if (!repair) FAIL("registry counts %u entries, holds %llu", c->entries,
                          (unsigned long long)used);
        c->entries = (uint32_t)used;
        c->repaired++;
    }
    const mp_head_t *h = st;
    if (h->live != c->entries) {
        if (!repair) FAIL("the strategy has %llu live ranges, the registry %u",
                          (unsigned long long)h->live, c->entries);
        struct orphans w = {c, {0}, 0};
        do {
            w.n = 0;
            ops->walk(st, orphan_cb, &w);
            for (int k = 0; k < w.n; k++) {
                ops->free(st, w.offset[k]);
                c->repaired++;
            }
        } while (w.n);
        if (h->live != c->entries) FAIL("could not reconcile the registry with the strategy");
    }
    return MP_OK;
}

int mp_shared_check(mp_shared_ctl_t *c, uint64_t len, const mp_ops_t *ops, void *st,
                    uint64_t st_len, char *msg, size_t msglen)
{
    int rc = mp_shared_check_layout(c, len, msg, msglen);
    if (rc) return rc;
    if (c->corrupt) FAIL("the pool was marked corrupt after a process died holding its lock");
    rc = ops->check(st, st_len, msg, msglen);
    if (rc) return rc;
    return check_registry(c, ops, st, 0, msg, msglen);
}

/* ---- the lock ------------------------------------------------------------------------ */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int mp_shared_trylock(mp_shared_ctl_t *c) { return pthread_mutex_trylock(&c->lock.mutex); }

int mp_shared_lock_wait(mp_shared_ctl_t *c)
{
    uint64_t t0 = now_ns();
    int rc = pthread_mutex_lock(&c->lock.mutex);
    c->lock_waits++;
    c->lock_wait_ns += now_ns() - t0;
    return rc;
}

/* Called with the mutex held after trylock/lock returned rc (0 or EOWNERDEAD). */
int mp_shared_locked(mp_shared_ctl_t *c, int rc, const mp_ops_t *ops, void *st, uint64_t st_len,
                     char *msg, size_t msglen)
{
    if (rc == EOWNERDEAD) {
        c->recoveries++;
        int bad = c->corrupt || ops->check(st, st_len, msg, msglen) != MP_OK ||
                  check_registry(c, ops, st, 1, msg, msglen) != MP_OK;
        if (bad) c->corrupt = 1;
        pthread_mutex_consistent(&c->lock.mutex);
    } else if (rc != 0) {
        snprintf(msg, msglen, "cannot take the pool's lock: %s", strerror(rc));
        return MP_EINVAL;
    }
    if (c->corrupt) {
        snprintf(msg, msglen,
                 "the pool is corrupt: a process died holding its lock in the middle of a call");
        pthread_mutex_unlock(&c->lock.mutex);
        return MP_ECORRUPT;
    }
    return MP_OK;
}

void mp_shared_unlock(mp_shared_ctl_t *c) { pthread_mutex_unlock(&c->lock.mutex); }

void mp_shared_stats(const mp_shared_ctl_t *c, uint64_t out[8])
{
    out[0] = c->entries;
    out[1] = c->max_entries;
    out[2] = c->serial;
    out[3] = 0; /* see reserved */
    out[4] = c->lock_waits;
    out[5] = c->lock_wait_ns;
    out[6] = c->recoveries;
    out[7] = c->repaired;
}
