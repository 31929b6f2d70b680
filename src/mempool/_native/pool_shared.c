/*
 * pool_shared.c -- mempool._mempool.SharedPoolCore, the C half of mempool.SharedPool:
 * a PoolCore whose strategy state lives in a shared segment beside a robust lock and
 * a block registry (see _core/shared.c), used by every process that attaches it.
 *
 * SharedPoolCore is a subtype of PoolCore.  PoolCore's generic paths (alloc, free,
 * realloc, block_at, empty/zeros, close, Block.__reduce__) call the hooks at the end
 * of this file instead of changing the strategy state themselves, so every
 * state-changing call of a shared pool goes through one of them (or through
 * _reclaim/_flush_cache below), and each runs its locked part between sh_lock() and
 * sh_unlock().  No Python object is made while the lock is held: a GC pass there
 * could release a Block, whose release waits for the lock (a self-deadlock);
 * errors are captured in C (mp_err_t) and raised after unlocking.
 *
 * Paths, in order of frequency:
 *  - alloc of a small size this process freed before: popped from the local cache
 *    with a fresh tag (mp_ref_reuse): no lock, no shared cache line written but the
 *    range's own entry;
 *  - release of the handle alloc made (the owner's): one CAS, no lock; when it was
 *    the last reference to a small range, the range goes to the local cache (the
 *    entry stays, refs 0, owner = this pid);
 *  - everything else takes the lock: the strategy, the index, handles by tag and
 *    the references they borrow (recorded per process, so that reclaim(pid) can give
 *    back what a dead process held), and the leases of pickled handles (sh_reduce,
 *    _lease: a reference that travels with the pickle; handle() adopts it).  Every
 *    locked call first releases the leases past their deadline (mp_lease_expire:
 *    one comparison when none is due).
 * The cache holds at most MAG_CLASSES x MAG_DEPTH ranges of <= MAG_MAX bytes; it is
 * given back when the pool closes or is collected, before stats/check/segments, when
 * an allocation would otherwise fail, and by reclaim(pid) after the process died.
 * Small shared allocations are rounded up to 16 bytes so a cached range serves any
 * request of its class (not over a strategy of fixed-size items, mp_ops_t.fixed_size:
 * a Slab keeps its own free list, and rounding up could exceed its item).
 */
#include "native.h"

#include <fcntl.h>
#include <errno.h>
#include <string.h>
#include <time.h>

#define MAG_CLASSES 32 /* 16-byte classes */
#define MAG_MAX (MAG_CLASSES * 16)
#define MAG_DEPTH 16
#define TAG_CHUNK 4096

typedef struct mp_shared_local {
    uint32_t pid;              /* whose cache this is (a forked child starts afresh) */
    uint64_t tag_next, tag_end;
    uint8_t n[MAG_CLASSES];
    struct {
        uint32_t entry;
        uint64_t offset;
    } slot[MAG_CLASSES][MAG_DEPTH];
} mp_shared_local_t;

typedef struct {
    PoolObject pool;          /* PoolCore's part: the strategy over the data        */
    mp_shared_ctl_t *ctl;     /* lock + block registry, in the segment (NULL until
                                 __init__ and after close)                          */
    uint64_t ctl_len;
    uint64_t ctl_at;          /* the control area's offset in the segment's file (0:
                                 not in one: the registry's growth allocates nothing) */
    Py_buffer ctl_view;       /* the segment buffer ctl points into (has_ctl)      */
    int has_ctl;
    int lock_refused;         /* a call found the lock unusable (CorruptionError)   */
    Py_ssize_t waiting;       /* calls of this process waiting for the lock without
                                 the GIL (close() waits for them to leave)          */
    uint64_t lock_calls;      /* acquisitions by this process                      */
    PyObject *reducer;        /* reducer(block) -> pickle handle                   */
    mp_shared_local_t *local; /* this process's cache and tags                     */
    mp_tx_t *tx;              /* the journal's transactions: every locked call is one
                                 (sh_lock begins it, sh_unlock commits it)          */
    mp_shared_bind_t bind;    /* tx's binding to the registry (mp_shared_bind_tx)   */
    char grow_why[200];       /* why the last growth failed (/dev/shm full), or ""  */
} SharedPoolObject;

#define SH(p) ((SharedPoolObject *)(p))

static inline const mp_ops_t *OPS(SharedPoolObject *s) { return s->pool.strategy->ops; }
mp_tx_t *mp_shared_tx(PoolObject *p) { return SH(p)->tx; }
static inline void *ST(SharedPoolObject *s) { return s->pool.strategy->st; }

/* The cache class of a request, or -1 (too big, or a strategy of fixed-size items:
 * rounding up could exceed the item, and the slab keeps its own free list) */
static int mag_class(SharedPoolObject *s, uint64_t size)
{
    return size <= MAG_MAX && !OPS(s)->fixed_size ? (int)((size + 15) >> 4) - 1 : -1;
}
/* the size a request is allocated with: its class's, so a cached range serves it */
static uint64_t rounded(SharedPoolObject *s, uint64_t size)
{
    return mag_class(s, size) >= 0 ? (size + 15) & ~(uint64_t)15 : size;
}

static mp_shared_local_t *local_of(SharedPoolObject *s)
{
    mp_shared_local_t *l = s->local;
    if (l->pid != mp_getpid()) { /* forked: the cache, the tags and the waiting calls are
                                    the parent's */
        s->waiting = 0;
        memset(l->n, 0, sizeof l->n);
        l->tag_next = l->tag_end = 0;
        l->pid = mp_getpid();
    }
    return l;
}

static uint64_t next_tag(SharedPoolObject *s)
{
    mp_shared_local_t *l = local_of(s);
    if (l->tag_next == l->tag_end) {
        l->tag_next = mp_shared_reserve_tags(s->ctl, TAG_CHUNK);
        l->tag_end = l->tag_next + TAG_CHUNK;
    }
    return l->tag_next++;
}

/* Lock held, in a transaction with nothing of the current call done: the state grows
 * (the transaction is committed first and begun again after).  MP_OK: grown, retry. */
static int sh_grow(SharedPoolObject *s)
{
    mp_tx_commit(s->tx);
    int rc = mp_place_grow(&s->pool, s->tx, s->grow_why, sizeof s->grow_why); /* place.c */
    mp_tx_begin(s->tx);
    if (rc == MP_EINVAL) return MP_ENONODES; /* (the segment refused: grow_why says) */
    s->grow_why[0] = 0;
    return rc;
}

/* Lock held, in a transaction with nothing of the current call done: room for n more
 * registry entries, the registry grown into its reserve as far as it takes (shared.c).
 * The pages it grows into are allocated first, so a full /dev/shm is an OutOfSpace
 * now rather than a SIGBUS later.  1: room; 0: none (max_entries reached, or no
 * pages: grow_why says). */
static int reg_room(SharedPoolObject *s, uint64_t n)
{
    mp_shared_ctl_t *c = s->ctl;
    uint64_t span[4];
    while (mp_reg_room(c) < n) {
        if (mp_reg_grow_span(c, span) != MP_OK) return 0;
        for (int k = 0; k < 4 && s->ctl_at && s->pool.place.fd >= 0; k += 2) {
            int e = span[k + 1] ? posix_fallocate(s->pool.place.fd, (off_t)(s->ctl_at + span[k]),
                                                  (off_t)span[k + 1])
                                : 0;
            if (e) {
                snprintf(s->grow_why, sizeof s->grow_why,
                         "the shared pool's block registry cannot grow: %s", strerror(e));
                return 0;
            }
        }
        mp_grow_fault("registry"); /* (its pages allocated, nothing written yet) */
        mp_tx_room(s->tx, 0, 4);
        (void)mp_reg_grow(c); /* (span said it can) */
    }
    s->grow_why[0] = 0; /* (a reason from an earlier call is stale now) */
    return 1;
}

int mp_sh_reg_room(PoolObject *p, uint64_t n) { return reg_room(SH(p), n); }

char *mp_sh_grow_why(PoolObject *p) { return SH(p)->grow_why; }

/* ---- the lock -------------------------------------------------------------------------- */
/* This process's count of waiting calls (a forked child's copy starts at 0: local_of). */
static Py_ssize_t *waiting_of(SharedPoolObject *s)
{
    (void)local_of(s);
    return &s->waiting;
}

/* 0 with the segment's lock held, or -1 with the exception set (made after the lock
 * was let go).  `giving`: the call gives back what this process holds (a Block's
 * range), which it may still do once close() has begun to wait for the calls that
 * wait for the lock (p->closing): it holds the GIL from the lock to sh_unlock, and
 * close() needs the GIL to go on and unmap. */
static int sh_lock_as(SharedPoolObject *s, int giving)
{
    s->lock_calls++;
    char msg[256];
    int rc = mp_shared_trylock(s->ctl);
    if (rc == EBUSY) { /* another process holds it: wait without the GIL */
        Py_ssize_t *waiting = waiting_of(s);
        (*waiting)++;  /* close() waits for us to leave before it unmaps the segment */
        Py_BEGIN_ALLOW_THREADS rc = mp_shared_lock_wait(s->ctl, msg, sizeof msg);
        Py_END_ALLOW_THREADS
        (*waiting)--;
    }
    /* the state may have moved (grown by another process): follow it first (place.c) */
    int r = (rc == 0 || rc == EOWNERDEAD) && mp_place_moved(&s->pool.place)
                ? mp_place_follow(&s->pool, s->tx, msg, sizeof msg)
                : MP_OK;
    if (r != MP_OK) { /* the slots name no usable pair: nothing of the state is read */
        mp_shared_unlock_raw(s->ctl, rc);
        PyErr_SetString(r == MP_ECORRUPT ? mp_CorruptionError : PyExc_MemoryError, msg);
        return -1;
    }
    r = mp_shared_locked(s->ctl, rc, s->tx, msg, sizeof msg);
    if (r == MP_OK && s->pool.closing && !giving) { /* closed by another thread meanwhile */
        mp_shared_unlock(s->ctl);
        PyErr_SetString(mp_PoolClosed, "the pool was closed while this call waited for its lock");
        return -1;
    }
    if (r == MP_OK) {
        mp_tx_begin(s->tx); /* everything until sh_unlock is one transaction */
        mp_lease_expire(s->ctl, s->tx, mp_getpid()); /* lost handles' leases */
        return 0;
    }
    s->lock_refused = 1;
    PyErr_SetString(r == MP_ECORRUPT ? mp_CorruptionError : PyExc_OSError, msg);
    return -1;
}

static int sh_lock(SharedPoolObject *s) { return sh_lock_as(s, 0); }

/* sh_lock for a call that hands out a new range or handle: refused once close() has
 * begun (it may have waited for the lock while close() did: PoolCore.shutting); calls
 * that give back, close() among them, take the lock until the pool is closing. */
static void sh_unlock(SharedPoolObject *s);
static int sh_lock_taking(SharedPoolObject *s)
{
    if (sh_lock(s) < 0) return -1;
    if (mp_pool_shutting(&s->pool)) {
        sh_unlock(s);
        PyErr_SetString(mp_PoolClosed, "the pool was closed while this call waited for its lock");
        return -1;
    }
    return 0;
}

static void sh_unlock(SharedPoolObject *s)
{
    mp_tx_commit(s->tx);
    mp_shared_unlock(s->ctl);
}

/* Wait until no call of this process waits for the lock. */
static void drain(SharedPoolObject *s)
{
    while (*waiting_of(s) > 0) { /* they hold no lock of ours: let them run and leave */
        Py_BEGIN_ALLOW_THREADS
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
        Py_END_ALLOW_THREADS
    }
}

/* Keep the range of entry i (refs 0, this process's) in the process's cache for the next
 * alloc: 1, or 0 when it has no room for its class, or close() has begun (it gave the
 * cache back already). */
static int cache_keep(SharedPoolObject *s, uint32_t i, uint64_t off, uint64_t size)
{
    mp_shared_local_t *l = local_of(s);
    int k = mag_class(s, size);
    if (k < 0 || l->n[k] >= MAG_DEPTH || mp_pool_shutting(&s->pool)) return 0;
    l->slot[k][l->n[k]].entry = i;
    l->slot[k][l->n[k]].offset = off;
    l->n[k]++;
    return 1;
}

/* Drop an entry this process holds with refs 0 and free its range (lock held). */
static void dispose(SharedPoolObject *s, uint32_t entry)
{
    uint64_t off = mp_reg_entry(s->ctl, entry)->offset;
    mp_tx_room(s->tx, 1, 8); /* (between two calls: the registry agrees with the state) */
    mp_reg_drop(s->ctl, entry);
    mp_tx_free(s->tx, off);
}

/* Give the local cache back (lock held); returns the ranges freed. */
static uint64_t flush(SharedPoolObject *s)
{
    mp_shared_local_t *l = local_of(s);
    uint64_t n = 0;
    for (int k = 0; k < MAG_CLASSES; k++) {
        for (int j = 0; j < l->n[k]; j++) {
            uint32_t i = l->slot[k][j].entry;
            mp_entry_t *e = mp_reg_entry(s->ctl, i);
            /* still ours (reclaim(pid, force=True) by another process could take it) */
            if (e->offset == l->slot[k][j].offset && mp_entry_refs(e) == 0 &&
                mp_entry_owner(e) == l->pid) {
                dispose(s, i);
                n++;
            }
        }
        l->n[k] = 0;
    }
    return n;
}

/* Is b's entry still the one b was made for?  (Atomic reads: b holds a reference,
 * so the entry cannot go away but through a misuse such as reclaim(force=True) of
 * a live process.) */
static int entry_matches(SharedPoolObject *s, BlockObject *b)
{
    mp_entry_t *e = mp_reg_entry(s->ctl, b->entry);
    return __atomic_load_n(&e->offset, __ATOMIC_ACQUIRE) == b->offset &&
           __atomic_load_n(&e->tag, __ATOMIC_ACQUIRE) == b->tag;
}

/* Give back the cache and every live handle of this process (the pool closes or is
 * collected: they cannot reach the segment once it is unmapped). */
static void give_back(SharedPoolObject *s)
{
    if (s->lock_refused) { /* the lock was refused (an attach that failed for it): do not
                              wait for it again when there is nothing to give back */
        int any = 0;
        mp_shared_local_t *l = local_of(s);
        for (int k = 0; k < MAG_CLASSES && !any; k++) any = l->n[k] != 0;
        for (BlockObject *b = s->pool.blocks; b && !any; b = b->next)
            any = b->live && b->pid == mp_getpid();
        if (!any) return;
    }
    if (sh_lock(s) < 0) {
        PyErr_Clear();
        return;
    }
    flush(s);
    for (BlockObject *b = s->pool.blocks; b; b = b->next) {
        if (!b->live || b->pid != mp_getpid()) continue;
        if (entry_matches(s, b) &&
            (b->owner ? mp_ref_release(s->ctl, b->entry, b->pid, 1)
                      : mp_ref_release_borrowed(s->ctl, b->entry, b->pid)) == 1)
            dispose(s, b->entry);
        b->live = 0;
    }
    mp_tx_commit(s->tx);
    mp_tx_checkpoint(s->tx); /* the shadow up to date: the log empty for the next attach */
    mp_shared_unlock(s->ctl);
}

/* A new handle (a Block holding a borrowed reference) for the live range at off
 * whose tag is `tag` (0: any): block_at() and unpickled handles.  With a lease
 * token (a pickled handle's), the lease's reference is adopted; when there is no
 * such lease (this pickle was unpickled already, or its lease expired), a fresh
 * reference is taken as long as (off, tag) is still live. */
static PyObject *handle(SharedPoolObject *s, PyObject *what, uint64_t off, uint64_t tag,
                        uint64_t lease)
{
    if (sh_lock_taking(s) < 0) return NULL;
    uint32_t i = off == UINT64_MAX ? MP_NIL : mp_reg_lookup(s->ctl, off);
    if (i != MP_NIL && !tag && mp_named_not_meta(&s->pool, off, what) < 0) { /* block_at */
        sh_unlock(s);
        return NULL;
    }
    int disp = 0, rc = MP_ENOTALLOC;
    if (i != MP_NIL && lease && tag) rc = mp_lease_adopt(s->ctl, lease, i, tag, mp_getpid());
    if (i != MP_NIL && rc != MP_OK) rc = mp_ref_take(s->ctl, i, tag, mp_getpid(), &disp);
    if (disp) dispose(s, i);
    if (rc != MP_OK) {
        sh_unlock(s);
        if (tag)
            PyErr_Format(mp_NotAllocated, "stale handle: the range at offset %llu (tag %llu) was "
                         "freed or reused%s", (unsigned long long)off, (unsigned long long)tag,
                         lease ? " (the handle's lease was adopted by an earlier unpickling, "
                                 "or expired, and no other reference kept the range)" : "");
        else PyErr_Format(mp_NotAllocated, "offset %S is not the start of a live range", what);
        return NULL;
    }
    mp_entry_t *e = mp_reg_entry(s->ctl, i);
    uint64_t size = e->size, t = e->tag;
    sh_unlock(s);
    /* the Block only now, after the lock like every Python object: the reference taken
     * keeps the entry and the range, and no other thread of ours runs before the
     * Block holds it (we keep the GIL) */
    BlockObject *b = mp_block_new(&s->pool, off, size, 1, 1);
    if (!b) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb); /* the MemoryError is the one to report */
        if (sh_lock(s) == 0) {
            if (mp_ref_release_borrowed(s->ctl, i, mp_getpid()) == 1) dispose(s, i);
            sh_unlock(s);
        } /* else it stays this process's until reclaim(pid) after the process ends */
        PyErr_Restore(et, ev, tb);
        return NULL;
    }
    b->tag = t;
    b->entry = i;
    return (PyObject *)b;
}

/* ---- the hooks PoolCore calls ---------------------------------------------------------- */
static int sh_take(PoolObject *p, uint64_t size, uint64_t align, int quiet, uint64_t *off,
                   uint64_t *tag, uint32_t *entry)
{
    SharedPoolObject *s = SH(p);
    mp_shared_local_t *l = local_of(s);
    int k = mag_class(s, size);
    if (k >= 0) { /* the cache, newest first, no lock */
        for (int j = l->n[k]; j-- > 0;) {
            uint64_t o = l->slot[k][j].offset;
            uint32_t i = l->slot[k][j].entry;
            if (o % align) continue;
            l->slot[k][j] = l->slot[k][--l->n[k]];
            uint64_t t = next_tag(s);
            if (mp_ref_reuse(s->ctl, i, l->pid, t, size) == MP_OK) {
                *off = o;
                *tag = t;
                *entry = i;
                return 0;
            }
        }
    }
    if (sh_lock_taking(s) < 0) return -1;
    uint64_t want = rounded(s, size);
    int rc = MP_OK, reg = MP_OK;
    /* the registry is full (grown as far as it may): the cache's ranges hold entries;
     * give them back first */
    if (!reg_room(s, 1)) flush(s);
    if (!mp_reg_has_room(s->ctl)) {
        reg = MP_ENONODES;
    } else {
        s->grow_why[0] = 0; /* (room after all: a failed growth of it is no one's reason) */
        rc = mp_tx_alloc(s->tx, want, align, off);
        if (rc != MP_OK && flush(s)) rc = mp_tx_alloc(s->tx, want, align, off); /* the cache */
        while (rc == MP_ENONODES && sh_grow(s) == MP_OK) /* the state's budget is spent */
            rc = mp_tx_alloc(s->tx, want, align, off);
        if (rc == MP_OK) {
            *tag = next_tag(s);
            mp_tx_room(s->tx, 0, 16);
            reg = mp_reg_add(s->ctl, *off, size, l->pid, *tag, entry); /* has room: MP_OK */
        }
    }
    if (quiet && (mp_no_fit(rc) || (rc == MP_OK && reg))) { /* try_alloc: nothing fits */
        sh_unlock(s);
        s->grow_why[0] = 0;
        return 1;
    }
    mp_err_t err;
    if (rc) mp_err_capture(p->strategy, rc, size, align, 0, &err); /* reads the state: locked */
    sh_unlock(s);
    /* Python objects only now: a GC pass under the lock could release a Block */
    if (rc == MP_ENONODES && s->grow_why[0]) { /* the segment refused to grow (sh_grow) */
        PyErr_Format(mp_OutOfSpace, "cannot allocate %llu bytes: the state's range table is "
                     "full (max_blocks) and %s", (unsigned long long)size, s->grow_why);
        s->grow_why[0] = 0;
    } else if (rc) {
        mp_err_raise(&err);
    }
    else if (reg && s->grow_why[0]) {
        PyErr_Format(mp_OutOfSpace, "cannot allocate %llu bytes: %s", (unsigned long long)size,
                     s->grow_why);
        s->grow_why[0] = 0;
    } else if (reg)
        PyErr_Format(mp_OutOfSpace, "cannot allocate %llu bytes: the shared pool's block "
                     "registry is full (max_entries)", (unsigned long long)size);
    return rc || reg ? -1 : 0;
}

static void sh_untake(PoolObject *p, uint64_t off, uint32_t entry)
{
    SharedPoolObject *s = SH(p);
    (void)off;
    if (sh_lock(s) < 0) {
        PyErr_Clear();
        return;
    }
    if (mp_ref_release(s->ctl, entry, mp_getpid(), 1) == 1) dispose(s, entry);
    sh_unlock(s);
}

static int sh_release(PoolObject *p, BlockObject *b)
{
    SharedPoolObject *s = SH(p);
    if (b->pid != mp_getpid() || !s->ctl) { /* inherited through fork(): the parent's
                                               handle (or the segment is gone) */
        b->live = 0;
        return 0;
    }
    if (!entry_matches(s, b)) {
        b->live = 0;
        PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed or reused (reclaimed "
                     "while its process was alive?)", (unsigned long long)b->offset);
        return -1;
    }
    if (!b->owner) { /* a borrowed reference: given back under the lock */
        if (sh_lock_as(s, 1) < 0) return -1;
        if (!b->live) { /* another thread gave it back while we waited for the lock */
            sh_unlock(s);
            if (mp_pool_shutting(p)) return 0; /* close() did: nothing to say */
            PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed",
                         (unsigned long long)b->offset);
            return -1;
        }
        if (mp_ref_release_borrowed(s->ctl, b->entry, b->pid) == 1) dispose(s, b->entry);
        sh_unlock(s);
        b->live = 0;
        return 0;
    }
    int last = mp_ref_release(s->ctl, b->entry, b->pid, 1);
    b->live = 0;
    if (last <= 0) return 0; /* others still hold it (-1: cannot happen with a matching entry) */
    if (cache_keep(s, b->entry, b->offset, b->size)) return 0;
    if (sh_lock_as(s, 1) < 0) return -1; /* the range stays ours: reclaim finds it */
    dispose(s, b->entry);
    sh_unlock(s);
    return 0;
}

static int sh_realloc(PoolObject *p, BlockObject *b, uint64_t size, uint64_t *off)
{
    SharedPoolObject *s = SH(p);
    if (b->pid != mp_getpid() || !entry_matches(s, b)) {
        PyErr_Format(mp_NotAllocated, "the block at offset %llu is not this process's live "
                     "handle", (unsigned long long)b->offset);
        return -1;
    }
    if (sh_lock(s) < 0) return -1;
    /* the wait for the lock may have let other threads free b or export a view of it */
    if (!b->live || !entry_matches(s, b)) {
        sh_unlock(s);
        PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed",
                     (unsigned long long)b->offset);
        return -1;
    }
    if (b->exports > 0) {
        sh_unlock(s);
        PyErr_Format(PyExc_BufferError,
                     "cannot resize the block at offset %llu: %zd view(s) of it are alive",
                     (unsigned long long)b->offset, b->exports);
        return -1;
    }
    mp_entry_t *e = mp_reg_entry(s->ctl, b->entry);
    uint32_t refs = mp_entry_refs(e);
    if (refs > 1) {
        sh_unlock(s);
        PyErr_Format(PyExc_BufferError, "cannot resize the block at offset %llu: %u other "
                     "handle(s) of it are alive", (unsigned long long)b->offset, refs - 1);
        return -1;
    }
    int rc = mp_tx_realloc(s->tx, b->offset, rounded(s, size), b->align, off);
    while (rc == MP_ENONODES && sh_grow(s) == MP_OK)
        rc = mp_tx_realloc(s->tx, b->offset, rounded(s, size), b->align, off);
    if (rc == MP_OK) {
        if (*off != b->offset) {
            mp_reg_move(s->ctl, b->entry, *off, size);
            /* the bytes move before the lock goes: the old range is free now, and
             * another process may take it as soon as we unlock */
            if (p->base)
                memmove(p->base + *off, p->base + b->offset,
                        (size_t)(size < b->size ? size : b->size));
        } else {
            e->size = size;
        }
    }
    mp_err_t err;
    if (rc) mp_err_capture(p->strategy, rc, size, b->align, b->offset, &err);
    sh_unlock(s);
    if (rc) mp_err_raise(&err); /* after the lock: see sh_take */
    return rc ? -1 : 0;
}

static PyObject *sh_block_at(PoolObject *p, PyObject *what, uint64_t off)
{
    return handle(SH(p), what, off, 0, 0);
}

static void sh_close(PoolObject *p)
{
    SharedPoolObject *s = SH(p);
    give_back(s);
    /* threads of this process that wait for the segment's lock (without the GIL) find
     * the pool closing when they get it, and leave; the segment is unmapped after */
    p->closing = 1;
    drain(s);
    s->ctl = NULL;
    mp_place_release(p);
    if (s->has_ctl) {
        PyBuffer_Release(&s->ctl_view);
        s->has_ctl = 0;
    }
}

/* A lease for a handle of b about to be pickled: *token names it.  0, or -1 with the
 * exception set. */
static int take_lease(SharedPoolObject *s, BlockObject *b, uint64_t *token)
{
    if (sh_lock_taking(s) < 0) return -1; /* (a reference in flight is a new one) */
    int rc = entry_matches(s, b)
                 ? mp_lease_add(s->ctl, s->tx, b->entry, b->tag, mp_getpid(), token)
                 : MP_ENOTALLOC;
    uint64_t leases[4];
    mp_lease_stats(s->ctl, leases);
    sh_unlock(s);
    if (rc == MP_ENONODES)
        PyErr_Format(mp_OutOfSpace, "cannot pickle a handle of the block at offset %llu: the "
                     "shared pool's lease table is full (max_leases = %llu handles pickled and "
                     "not yet unpickled, none past its deadline of %llu ms); raise max_leases "
                     "or lower lease_timeout at create", (unsigned long long)b->offset,
                     (unsigned long long)leases[1], (unsigned long long)(leases[3] / 1000000));
    else if (rc != MP_OK)
        PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed or reused (reclaimed "
                     "while its process was alive?)", (unsigned long long)b->offset);
    return rc == MP_OK ? 0 : -1;
}

/* pickling a Block: a lease travels with the handle (see shared.c) */
static PyObject *sh_reduce(PoolObject *p, BlockObject *b)
{
    uint64_t token;
    if (take_lease(SH(p), b, &token) < 0) return NULL;
    PyObject *t = PyLong_FromUnsignedLongLong(token);
    if (!t) return NULL; /* the lease expires by its deadline */
    PyObject *r = PyObject_CallFunctionObjArgs(SH(p)->reducer, (PyObject *)b, t, NULL);
    Py_DECREF(t);
    return r;
}

/* ---- the NEP 49 handler's way in (handler.c): GIL held, MP_* codes, no exception left
 * behind (one pending when NumPy called us, e.g. from a dealloc, is kept) ------------- */
static int sh_raw_take(PoolObject *p, uint64_t size, uint64_t align, uint64_t *off)
{
    uint64_t tag;
    uint32_t entry;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    /* a range with a registry entry and its owner reference, as for a Block: a
     * process that dies holding it is reclaimed, and block_at() finds it */
    int r = sh_take(p, size, align, 1, off, &tag, &entry);
    if (r < 0) PyErr_Clear(); /* the lock refused or the segment corrupt: NULL to NumPy */
    PyErr_Restore(et, ev, tb);
    return r == 0 ? MP_OK : r == 1 ? MP_ENOSPACE : MP_EINVAL;
}

static int sh_raw_put(PoolObject *p, uint64_t off)
{
    SharedPoolObject *s = SH(p);
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    int rc = MP_ENOTALLOC;
    if (sh_lock_as(s, 1) == 0) {
        uint32_t i = mp_reg_lookup(s->ctl, off);
        /* -1: not this process's owner reference (a forked child's copy of an array
         * of its parent: the parent still holds the range) */
        int last = i == MP_NIL ? -1 : mp_ref_release(s->ctl, i, mp_getpid(), 1);
        if (i != MP_NIL) rc = MP_OK;
        if (last == 1 && !cache_keep(s, i, off, mp_reg_entry(s->ctl, i)->size)) dispose(s, i);
        sh_unlock(s);
    } else {
        PyErr_Clear(); /* the range stays this process's: reclaim finds it after exit */
    }
    PyErr_Restore(et, ev, tb);
    return rc;
}

static uint64_t sh_raw_size(PoolObject *p, uint64_t off)
{
    SharedPoolObject *s = SH(p);
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    uint64_t n = 0;
    if (sh_lock(s) == 0) {
        uint32_t i = mp_reg_lookup(s->ctl, off);
        if (i != MP_NIL) n = mp_reg_entry(s->ctl, i)->size;
        sh_unlock(s);
    } else {
        PyErr_Clear();
    }
    PyErr_Restore(et, ev, tb);
    return n;
}

/* ---- what pool_shared_named.c (pool.named of a shared pool) uses -------------------- */
int mp_sh_lock(PoolObject *p) { return sh_lock(SH(p)); }
int mp_sh_grow(PoolObject *p) { return sh_grow(SH(p)); }
void mp_sh_unlock(PoolObject *p) { sh_unlock(SH(p)); }
uint64_t mp_sh_next_tag(PoolObject *p) { return next_tag(SH(p)); }
mp_shared_ctl_t *mp_sh_ctl(PoolObject *p) { return SH(p)->ctl; }
mp_tx_t *mp_sh_tx(PoolObject *p) { return SH(p)->tx; }

static const mp_pool_hooks_t shared_hooks = {
    .take = sh_take,
    .untake = sh_untake,
    .release = sh_release,
    .realloc = sh_realloc,
    .block_at = sh_block_at,
    .close = sh_close,
    .reduce = sh_reduce,
    .raw_take = sh_raw_take,
    .raw_put = sh_raw_put,
    .raw_size = sh_raw_size,
};

/* ---- init / dealloc ------------------------------------------------------------------ */
static const char *const init_names[] = {"strategy", "buffer", "source", "lock_buffer",
                                         "lock_offset", "lock_size", "max_entries", "reducer",
                                         "array_type", "align", "max_leases",
                                         "lease_timeout_ns", "shadow_offset", "fd",
                                         "placement", "log_offset", "log_entries", NULL};

/* SharedPoolCore(strategy, buffer, source, lock_buffer, lock_offset, lock_size,
 *                max_entries, reducer, array_type, *, align=16, max_leases=0,
 *                lease_timeout_ns=0, shadow_offset):
 * PoolCore's arguments, and the lock and registry at
 * lock_buffer[lock_offset:lock_offset+lock_size]: max_entries > 0 initialises them
 * (create; max_leases and lease_timeout_ns size the lease table and set a lease's
 * lifetime), 0 attaches (layout and journal validated here, the whole state by check()
 * under the lock, which also recovers a call its process died in).  The state's shadow
 * copy (journal.h) is at lock_buffer[shadow_offset:], as long as the state.  Blocks
 * free their ranges when collected. */
static int shared_init(SharedPoolObject *self, PyObject *args, PyObject *kw)
{
    PyObject *strategy, *buffer, *source, *lock_buffer, *reducer, *array_type;
    unsigned long long offset, length, max_entries, align = 16, max_leases = 0, timeout = 0;
    unsigned long long shadow = 0, log_off = 0, log_n = 0;
    int fd = -1;
    PyObject *place = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OOOKKKOO!|$KKKKiOKK:SharedPoolCore",
                                     (char **)init_names, &StrategyType, &strategy, &buffer,
                                     &source, &lock_buffer, &offset, &length, &max_entries,
                                     &reducer, &PyType_Type, &array_type, &align, &max_leases,
                                     &timeout, &shadow, &fd, &place, &log_off, &log_n))
        return -1;
    if (self->pool.strategy || self->has_ctl) {
        PyErr_SetString(PyExc_RuntimeError, "the pool is initialised already");
        return -1;
    }
    if (!mp_is_ndarray_type(array_type)) {
        PyErr_SetString(PyExc_TypeError, "array_type must be an ndarray subclass");
        return -1;
    }
    self->local = PyMem_Calloc(1, sizeof *self->local);
    if (!self->local) {
        PyErr_NoMemory();
        return -1;
    }
    self->local->pid = mp_getpid();
    self->tx = PyMem_Malloc(sizeof *self->tx);
    if (!self->tx) {
        PyErr_NoMemory();
        goto fail_local;
    }
    if (PyObject_GetBuffer(lock_buffer, &self->ctl_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        goto fail_local;
    char msg[256];
    mp_shared_ctl_t *c = (mp_shared_ctl_t *)((char *)self->ctl_view.buf + offset);
    if (offset % 64 || offset > (unsigned long long)self->ctl_view.len ||
        length > (unsigned long long)self->ctl_view.len - offset) {
        PyErr_SetString(mp_CorruptionError, "the lock area does not fit the segment");
        goto fail;
    }
    if (max_entries) {
        if (mp_shared_ctl_size(max_entries, max_leases) != length ||
            mp_shared_ctl_init(c, max_entries, max_leases, timeout)) {
            PyErr_SetString(PyExc_ValueError, "cannot initialise the lock area");
            goto fail;
        }
    } else if (mp_shared_check_layout(c, length, msg, sizeof msg)) {
        PyErr_Format(mp_CorruptionError, "invalid lock area: %s", msg);
        goto fail;
    }
    StrategyObject *so = (StrategyObject *)strategy;
    uint64_t vlen = (uint64_t)self->ctl_view.len, st_len = so->st_len;
    char *sh = (char *)self->ctl_view.buf + shadow;
    if (!so->st || shadow == 0 || shadow % 64 || !mp_fits(vlen, shadow, st_len) ||
        !mp_apart(shadow, st_len, offset, length) ||
        !mp_apart((uintptr_t)so->st, st_len, (uintptr_t)sh, st_len)) {
        PyErr_SetString(mp_CorruptionError, "the state's shadow copy does not fit the segment");
        goto fail;
    }
    /* the words the undo log may name: the registry's, and pool.named's (its root in
     * the segment's header page, the slots of its table in the data) when the lock
     * area lies in a whole segment, as SharedPool maps it: [root, end of segment) */
    char *ulo = (char *)c, *uhi = (char *)c + length;
    if (offset >= 4096) {
        ulo = (char *)self->ctl_view.buf + MP_NAMED_ROOT_OFFSET;
        uhi = (char *)self->ctl_view.buf + vlen;
    }
    mp_tx_setup(self->tx, mp_shared_journal(c), so->ops, so->st, sh, st_len, ulo, uhi);
    mp_shared_bind_tx(&self->bind, c, length, self->tx);
    if (log_n) { /* the redo log (format 5): after the header's shadow, apart from all */
        uint64_t lb = (uint64_t)log_n * MP_TX_LOG_ENTRY;
        char *lg = (char *)self->ctl_view.buf + log_off;
        if (log_off % 64 || log_n <= 2 * MP_TX_OPS || log_n > vlen / MP_TX_LOG_ENTRY ||
            !mp_fits(vlen, log_off, lb) || !mp_apart(log_off, lb, offset, length) ||
            !mp_apart(log_off, lb, shadow, st_len) ||
            !mp_apart((uintptr_t)so->st, st_len, (uintptr_t)lg, lb)) {
            PyErr_SetString(mp_CorruptionError, "the journal's redo log does not fit the segment");
            goto fail;
        }
        mp_tx_set_log(self->tx, lg, log_n);
    }
    if (mp_tx_validate(self->tx, msg, sizeof msg)) {
        PyErr_Format(mp_CorruptionError, "invalid journal: %s", msg);
        goto fail;
    }
    if (mp_pool_setup(&self->pool, strategy, buffer, source, 1, align) < 0) goto fail;
    so->served = MP_SERVED_TX; /* its own methods may no longer change it (the lock) */
    self->pool.bound_pid = 0; /* a shared pool serves forked children by its own rules */
    self->has_ctl = 1;
    self->ctl = c;
    self->ctl_len = length;
    self->ctl_at = offset >= 4096 ? offset : 0; /* (in a whole segment: see ulo above) */
    Py_INCREF(reducer);
    self->reducer = reducer;
    Py_INCREF(array_type);
    self->pool.array_type = (PyTypeObject *)array_type;
    self->pool.hooks = &shared_hooks;
    /* fd, placement=(gen, slot, end, base_end, base_size): the pair the strategy is in
     * (_segment.placement), which the state grows past (place.c) */
    char *seg = (char *)self->ctl_view.buf;
    if (mp_place_setup(&self->pool, fd, seg, vlen, place, (uint64_t)((char *)so->st - seg),
                       shadow, 0) < 0)
        return -1; /* (dealloc lets go of what setup took) */
    return 0;
fail:
    PyBuffer_Release(&self->ctl_view);
fail_local:
    PyMem_Free(self->local);
    self->local = NULL;
    PyMem_Free(self->tx);
    self->tx = NULL;
    return -1;
}

static void shared_dealloc(SharedPoolObject *self)
{
    if (self->pool.weakreflist) PyObject_ClearWeakRefs((PyObject *)self);
    if (self->has_ctl) {
        give_back(self); /* collected open: give back what this process holds */
        PyBuffer_Release(&self->ctl_view);
    }
    mp_place_release(&self->pool);
    PyMem_Free(self->local);
    PyMem_Free(self->tx);
    Py_XDECREF(self->reducer);
    PoolCoreType.tp_dealloc((PyObject *)self);
}

/* ---- methods -------------------------------------------------------------------------- */
/* The pool open and shared: 0, or -1 with the exception set. */
static int need_shared(SharedPoolObject *self)
{
    if (mp_pool_check_open(&self->pool) < 0) return -1;
    if (!self->ctl) { /* PoolCore.__init__ made it: no lock, no registry */
        PyErr_SetString(PyExc_TypeError, "not a shared pool");
        return -1;
    }
    return 0;
}

/* check(): the whole check under the lock (after giving the cache back) */
static PyObject *ext_shared_check(SharedPoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (need_shared(self) < 0 || sh_lock(self) < 0) return NULL;
    char msg[256];
    /* between calls the state and its shadow are equal (journal.h): a shadow apart from
     * the state (crafted) was taken, and the next roll-back copied it over a heap with
     * live ranges (a file pool's open compares them too, journal_recover).  Compared
     * when this call has changed nothing yet (taking the lock may have freed the range
     * of an expired lease: then the commit brings the shadow along) */
    const mp_tx_t *tx = self->tx;
    int rc = tx->nops == 0 && tx->j->nundo == 0 && !tx->full
                 ? mp_tx_verify(tx, ST(self), tx->shadow, self->pool.strategy->st_len, msg,
                                sizeof msg)
                 : 0;
    if (rc == MP_EINVAL) {
        sh_unlock(self);
        PyErr_NoMemory();
        return NULL;
    }
    flush(self);
    if (!rc)
        rc = mp_shared_check(self->ctl, self->ctl_len, OPS(self), ST(self),
                             self->pool.strategy->st_len, msg, sizeof msg);
    sh_unlock(self);
    if (rc) {
        PyErr_SetString(mp_CorruptionError, msg);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- figures ------------------------------------------------------------------------- */
/* A figure read under the lock, after giving this process's cache back so that it
 * shows what the process freed: exactly what is asked is read into C under the lock,
 * and the Python object is made after it (a GC pass under the lock could release a
 * Block, which needs the lock).  0, or -1 with the exception set. */
enum figure { FIG_USED, FIG_AVAILABLE, FIG_LARGEST_FREE, FIG_LIVE };

static int read_figure(SharedPoolObject *self, enum figure which, uint64_t *out)
{
    if (need_shared(self) < 0 || sh_lock(self) < 0) return -1;
    flush(self);
    const mp_head_t *h = ST(self);
    switch (which) {
    case FIG_USED: *out = h->used; break;
    case FIG_AVAILABLE: *out = OPS(self)->available(ST(self)); break;
    case FIG_LARGEST_FREE: *out = OPS(self)->largest_free(ST(self)); break;
    case FIG_LIVE:
    default: *out = h->live; break;
    }
    sh_unlock(self);
    return 0;
}

static PyObject *get_figure(SharedPoolObject *self, void *which)
{
    uint64_t v;
    if (read_figure(self, (enum figure)(intptr_t)which, &v) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(v);
}

static Py_ssize_t shared_len(SharedPoolObject *self)
{
    uint64_t v;
    if (read_figure(self, FIG_LIVE, &v) < 0) return -1;
    return (Py_ssize_t)v;
}

static PyObject *ext_shared_pool_stats(SharedPoolObject *self, PyObject *Py_UNUSED(ignored))
{
    mp_figures_t f;
    if (need_shared(self) < 0 || sh_lock(self) < 0) return NULL;
    flush(self);
    mp_figures_read(OPS(self), ST(self), &f);
    sh_unlock(self);
    return mp_stats_new(&f);
}

static PyObject *ext_shared_segments(SharedPoolObject *self, PyObject *Py_UNUSED(ignored))
{
    mp_segs_t b;
    if (need_shared(self) < 0 || sh_lock(self) < 0) return NULL;
    flush(self);
    mp_segments_walk(OPS(self), ST(self), &b); /* into raw malloc'd memory */
    sh_unlock(self);
    return mp_segments_list(&b);
}

/* _snapshot() -> (bytes, ns): the strategy's state as Strategy.snapshot() gives it (its
 * unused nodes left out), copied under the lock and nothing else done there: the
 * buffer is faulted in before the lock is taken, the bytes object made after it is
 * let go; ns: how long the copy held the lock (lock taken to copy done).  `show
 * --shared` reads a live pool from it offline (Type.restore), so the pool's users wait
 * for a memcpy at most.  This process's cache is not given back
 * (a reader has none). */
static PyObject *ext_shared_snapshot(SharedPoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (need_shared(self) < 0) return NULL;
    const mp_ops_t *ops = OPS(self);
    uint64_t len;
    char *buf;
again:
    len = self->pool.strategy->st_len;
    buf = PyMem_RawMalloc((size_t)len);
    if (!buf) return PyErr_NoMemory();
    memset(buf, 0, (size_t)len); /* fault the pages in now, not under the lock */
    { /* and the state's pages of this process's mapping (a read, its value unused) */
        const volatile char *src = (const volatile char *)ST(self);
        char sink = 0;
        for (uint64_t k = 0; k < len; k += 4096) sink ^= src[k];
        (void)sink;
    }
    if (sh_lock(self) < 0) {
        PyMem_RawFree(buf);
        return NULL;
    }
    if (self->pool.strategy->st_len != len) { /* the lock followed a grown state */
        sh_unlock(self);
        PyMem_RawFree(buf);
        goto again;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const char *st = (const char *)ST(self);
    uint64_t off = 0, hole = ops->hole ? ops->hole(st, len, &off) : 0;
    if (hole == 0 || off > len || hole > len - off) {
        hole = 0;
        off = len;
    }
    memcpy(buf, st, (size_t)off);
    memcpy(buf + off, st + off + hole, (size_t)(len - off - hole));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    sh_unlock(self);
    long long held = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    PyObject *r = Py_BuildValue("(y#L)", buf, (Py_ssize_t)(len - hole), held);
    PyMem_RawFree(buf);
    return r;
}

/* _flush_cache() -> ranges given back: the process's cache, now (exit hooks) */
static PyObject *ext_shared_flush_cache(SharedPoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (need_shared(self) < 0 || sh_lock(self) < 0) return NULL;
    uint64_t n = flush(self);
    sh_unlock(self);
    return PyLong_FromUnsignedLongLong(n);
}

/* _reclaim(pid) -> (freed, released) */
static PyObject *ext_shared_reclaim(SharedPoolObject *self, PyObject *arg)
{
    unsigned long pid = PyLong_AsUnsignedLong(arg);
    if (pid == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    if (need_shared(self) < 0 || sh_lock(self) < 0) return NULL;
    uint64_t released, freed = mp_shared_reclaim(self->ctl, self->tx, (uint32_t)pid, &released);
    sh_unlock(self);
    return Py_BuildValue("(KK)", (unsigned long long)freed, (unsigned long long)released);
}

/* The pids the registry names, once each: open addressing, 0 never a key (MP_NAME_PID is
 * left out by the walk). */
typedef struct {
    uint32_t n, cap; /* keys; slots, a power of two (load <= 1/2) */
    uint32_t *k;
} pidset_t;

/* The slot of pid in s (cap > 0): its own, or the empty one where it would go. */
static uint32_t pid_slot(const pidset_t *s, uint32_t pid)
{
    uint32_t h = (pid * 0x9E3779B1u) & (s->cap - 1);
    while (s->k[h] && s->k[h] != pid) h = (h + 1) & (s->cap - 1);
    return h;
}

static int pid_add(void *ctx, uint32_t pid)
{
    pidset_t *s = ctx;
    if (2 * (s->n + 1) > s->cap) { /* grow: rehash into twice the room */
        pidset_t t = {0, s->cap ? 2 * s->cap : 64, NULL};
        t.k = PyMem_RawCalloc(t.cap, sizeof *t.k);
        if (!t.k) return -1;
        for (uint32_t j = 0; j < s->cap; j++)
            if (s->k[j]) t.k[pid_slot(&t, s->k[j])] = s->k[j];
        t.n = s->n;
        PyMem_RawFree(s->k);
        *s = t;
    }
    uint32_t h = pid_slot(s, pid);
    if (!s->k[h]) {
        s->k[h] = pid;
        s->n++;
    }
    return 0;
}

/* Is pid in the set (mp_shared_reclaim_if's question: the dead ones)? */
static int in_set(void *ctx, uint32_t pid)
{
    const pidset_t *s = ctx;
    return pid && s->cap && s->k[pid_slot(s, pid)] == pid;
}

/* _reclaim_dead() -> (freed, released, processes): reclaim every process the registry
 * names that is gone (this one aside), all under one hold of the lock, so no process
 * can take a name's pid and then an entry between the question and the reclaim; one
 * pass over the registry for all of them.  Only in the pid namespace the segment's
 * creator recorded: elsewhere the registry's pids name other processes (ValueError). */
static PyObject *ext_shared_reclaim_dead(SharedPoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (need_shared(self) < 0) return NULL;
    uint64_t ns = mp_shared_pidns(self->ctl), here = mp_pidns();
    if (!ns || ns != here) {
        PyErr_SetString(PyExc_ValueError,
                        !ns ? "this segment does not record its creator's pid namespace (an "
                              "older segment): name the process, reclaim(pid)"
                            : "this process is not in the pid namespace of the segment's "
                              "creator: the registry's pids are not its own");
        return NULL;
    }
    if (sh_lock(self) < 0) return NULL;
    pidset_t s = {0, 0, NULL}, dead = {0, 0, NULL};
    int rc = mp_shared_pids(self->ctl, pid_add, &s);
    uint64_t freed = 0, released = 0;
    uint32_t me = mp_getpid();
    for (uint32_t k = 0; !rc && k < s.cap; k++) {
        uint32_t pid = s.k[k];
        if (pid && pid != me && mp_pid_gone(pid)) rc = pid_add(&dead, pid);
    }
    if (!rc && dead.n) freed = mp_shared_reclaim_if(self->ctl, self->tx, in_set, &dead, &released);
    sh_unlock(self);
    uint32_t procs = dead.n;
    PyMem_RawFree(s.k);
    PyMem_RawFree(dead.k);
    if (rc) return PyErr_NoMemory();
    return Py_BuildValue("(KKK)", (unsigned long long)freed, (unsigned long long)released,
                         (unsigned long long)procs);
}

/* _hold_lock(seconds): take the lock and sleep holding it (tests kill us meanwhile) */
static PyObject *ext_shared_hold_lock(SharedPoolObject *self, PyObject *arg)
{
    double secs = PyFloat_AsDouble(arg);
    if (secs == -1.0 && PyErr_Occurred()) return NULL;
    if (need_shared(self) < 0 || sh_lock(self) < 0) return NULL;
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    Py_BEGIN_ALLOW_THREADS
    nanosleep(&ts, NULL);
    Py_END_ALLOW_THREADS
    sh_unlock(self);
    Py_RETURN_NONE;
}

/* _shared_stats(): the lock and registry counters */
static PyObject *ext_shared_stats(SharedPoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (need_shared(self) < 0) return NULL;
    if (mp_lease_due(self->ctl)) { /* leases past their deadline: released first */
        if (sh_lock(self) < 0) return NULL;
        sh_unlock(self);
    }
    uint64_t v[8], ls[4];
    mp_shared_stats(self->ctl, v); /* plain counters: read without the lock */
    mp_lease_stats(self->ctl, ls);
    mp_shared_local_t *l = local_of(self);
    unsigned long long cached = 0;
    for (int k = 0; k < MAG_CLASSES; k++) cached += l->n[k];
    const mp_journal_t *j = mp_shared_journal(self->ctl);
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsK}", "committed",
                         (unsigned long long)v[3], "registry_bytes",
                         (unsigned long long)mp_shared_used_bytes(self->ctl), "rolled_back",
                         (unsigned long long)j->rolled_back, "rolled_forward",
                         (unsigned long long)j->rolled_forward, "leases", (unsigned long long)ls[0],
                         "max_leases", (unsigned long long)ls[1], "leases_expired",
                         (unsigned long long)ls[2], "lease_timeout_ns", (unsigned long long)ls[3],
                         "entries", (unsigned long long)v[0],
                         "max_entries", (unsigned long long)v[1], "serial",
                         (unsigned long long)v[2], "lock_calls",
                         (unsigned long long)self->lock_calls, "lock_waits",
                         (unsigned long long)v[4], "lock_wait_ns", (unsigned long long)v[5],
                         "recoveries", (unsigned long long)v[6], "repaired",
                         (unsigned long long)v[7], "cached", cached);
}

/* _handle(offset, tag, lease=0): unpickle a shared block handle (adopting its lease) */
static PyObject *ext_shared_handle(SharedPoolObject *self, PyObject *args)
{
    PyObject *o_off, *o_tag, *o_lease = NULL;
    uint64_t off, tag, lease = 0;
    if (!PyArg_ParseTuple(args, "OO|O", &o_off, &o_tag, &o_lease)) return NULL;
    /* (not "K", which wraps: 2**64 + o named offset o; a value of 2**64 or more reads as
     * 2**64 - 1, which no live range, tag or lease has: NotAllocated below) */
    if (mp_arg_u64(o_off, "offset", &off) < 0 || mp_arg_u64(o_tag, "tag", &tag) < 0 ||
        (o_lease && mp_arg_u64(o_lease, "lease", &lease) < 0))
        return NULL;
    if (mp_pool_check_open(&self->pool) < 0) return NULL;
    if (!self->ctl || !tag) {
        PyErr_SetString(PyExc_TypeError, "handles name blocks of shared pools");
        return NULL;
    }
    PyObject *o = PyLong_FromUnsignedLongLong(off);
    if (!o) return NULL;
    PyObject *b = handle(self, o, off, tag, lease);
    Py_DECREF(o);
    return b;
}

/* _lease(block) -> token: a lease for a handle of block about to be pickled (the
 * array reducer's; a Block's own goes through sh_reduce) */
static PyObject *ext_shared_lease(SharedPoolObject *self, PyObject *arg)
{
    if (need_shared(self) < 0) return NULL;
    if (!PyObject_TypeCheck(arg, &BlockType) || ((BlockObject *)arg)->pool != &self->pool) {
        PyErr_SetString(PyExc_TypeError, "_lease takes a Block of this pool");
        return NULL;
    }
    BlockObject *b = (BlockObject *)arg;
    if (!b->live) {
        PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed",
                     (unsigned long long)b->offset);
        return NULL;
    }
    uint64_t token;
    if (take_lease(self, b, &token) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(token);
}

static PyMethodDef shared_methods[] = {
    {"stats", (PyCFunction)ext_shared_pool_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nThe strategy's counters (see mempool.Stats), read under the lock."},
    {"segments", (PyCFunction)ext_shared_segments, METH_NOARGS,
     "segments($self, /)\n--\n\n"
     "The memory map: (offset, size, allocated) in address order, read under the lock."},
    {"check", (PyCFunction)ext_shared_check, METH_NOARGS,
     "check($self, /)\n--\n\n"
     "Verify the strategy state and the block registry, under the lock; raises\n"
     "CorruptionError."},
    {"_reclaim", (PyCFunction)ext_shared_reclaim, METH_O, NULL},
    {"_reclaim_dead", (PyCFunction)ext_shared_reclaim_dead, METH_NOARGS, NULL},
    {"_flush_cache", (PyCFunction)ext_shared_flush_cache, METH_NOARGS, NULL},
    {"_snapshot", (PyCFunction)ext_shared_snapshot, METH_NOARGS, NULL},
    {"_hold_lock", (PyCFunction)ext_shared_hold_lock, METH_O, NULL},
    {"_shared_stats", (PyCFunction)ext_shared_stats, METH_NOARGS, NULL},
    {"_handle", (PyCFunction)ext_shared_handle, METH_VARARGS, NULL},
    {"_lease", (PyCFunction)ext_shared_lease, METH_O, NULL},
    /* pool.named (pool_shared_named.c): PoolCore's, under the segment's lock */
    {"_named_bind", (PyCFunction)mp_ext_shnamed_bind, METH_VARARGS, NULL},
    {"_named_find", (PyCFunction)mp_ext_shnamed_find, METH_O, NULL},
    {"_named_owns", (PyCFunction)mp_ext_shnamed_owns, METH_O, NULL},
    {"_named_put", (PyCFunction)(void (*)(void))mp_ext_shnamed_put, METH_FASTCALL, NULL},
    {"_named_del", (PyCFunction)mp_ext_shnamed_del, METH_O, NULL},
    {"_named_names", (PyCFunction)mp_ext_shnamed_names, METH_NOARGS, NULL},
    {"_named_state", (PyCFunction)mp_ext_shnamed_state, METH_NOARGS, NULL},
    {"_named_check", (PyCFunction)mp_ext_shnamed_check, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef shared_getset[] = {
    {"used", (getter)get_figure, NULL, "Sum of the live ranges' sizes, in bytes (under the lock).",
     (void *)FIG_USED},
    {"available", (getter)get_figure, NULL, "Bytes not handed out (under the lock).",
     (void *)FIG_AVAILABLE},
    {"largest_free", (getter)get_figure, NULL,
     "The largest size that alloc(size, 1) serves now, in bytes (under the lock).",
     (void *)FIG_LARGEST_FREE},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods shared_as_sequence = {
    .sq_length = (lenfunc)shared_len,
};

PyTypeObject SharedPoolCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool._mempool.SharedPoolCore",
    .tp_basicsize = sizeof(SharedPoolObject),
    .tp_dealloc = (destructor)shared_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C half of mempool.SharedPool: a PoolCore in a shared segment, with its "
              "lock and block registry (see shared.py).",
    .tp_methods = shared_methods,
    .tp_getset = shared_getset,
    .tp_as_sequence = &shared_as_sequence,
    .tp_init = (initproc)shared_init,
    .tp_new = PyType_GenericNew,
};

int mp_shared_pool_ready(PyObject *module)
{
    SharedPoolCoreType.tp_base = &PoolCoreType;
    return PyModule_AddType(module, &SharedPoolCoreType); /* PyType_Ready + the module's attribute */
}
