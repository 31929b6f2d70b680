/*
 * native.h -- shared declarations of the CPython binding (layer 2).
 *
 * One extension module, mempool._mempool, one file per Python type:
 *   module.c     module init, errors, trace parse/replay functions
 *   args.c       argument readers shared by every type (integers, sizes, align,
 *                constructor arguments)
 *   strategy.c   the base type Strategy: every generic method over an mp_ops_t
 *   type_*.c     one strategy type each (TLSF, BestFit, ...): constructor + extras
 *   block.c      Block: a range of a pool, with the buffer protocol
 *   pool.c       PoolCore: a strategy over real bytes (private and persistent pools)
 *   pool_shared.c SharedPoolCore(PoolCore): a pool in a shared segment, through the
 *                hooks (mp_pool_hooks_t) that PoolCore's generic paths call
 *   sys.c        system calls for the sources: mbind, get_mempolicy, mlock; pid_gone
 *
 * A strategy object holds its state block either inline-allocated (malloc'd,
 * owned) or inside someone else's buffer (a shared segment, a file mapping):
 * then `owner` keeps that buffer alive.
 */
#ifndef MEMPOOL_NATIVE_H
#define MEMPOOL_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>

#include "../_core/mempool.h"
#include "../_core/journal.h"
#include "../_core/named.h"
#include "../_core/shared.h"

typedef struct {
    PyObject_HEAD
    const mp_ops_t *ops;
    void *st;           /* the state block                                   */
    uint64_t st_len;    /* its length in bytes                               */
    int owns;           /* st was malloc'd by us                             */
    int served;         /* a Pool serves it (MP_SERVED_*): 0, POOL or TX       */
    PyObject *owner;    /* keeps external state memory alive, or NULL        */
    Py_buffer owner_view; /* the view of owner that st points into         */
    PyObject *weakreflist;
} StrategyObject;

typedef struct mp_pool_hooks mp_pool_hooks_t;

/* Where a file pool's or a shared pool's state lies (place.c): the pair (state,
 * shadow) a placement slot of the header page names, or the header's own (gen 0). */
typedef struct mp_place {
    int fd;                       /* >= 3: the file or segment (a dup); else no growth */
    int slot;                     /* the slot naming the pair, -1: the header's        */
    int durable;                  /* msync a grown pair before naming it (file pools)  */
    uint64_t gen;                 /* its generation                                    */
    uint64_t st_off, sh_off, end; /* its state, its shadow, the end of the last pair   */
    uint64_t base_end, base_size; /* the header's pair: its end, its state's size       */
    char *first;                  /* the first mapping of the file (header at 0)       */
    uint64_t first_len;
    char *tail;                   /* a pair mapped on its own (past the first mapping) */
    uint64_t tail_len;
} mp_place_t;

/* A pool: a strategy over real bytes (or none, for External sources).  A private or
 * persistent pool is a PoolCore (pool.c); a shared pool is a SharedPoolCore
 * (pool_shared.c), whose object starts with this one and sets `hooks`. */
typedef struct {
    PyObject_HEAD
    StrategyObject *strategy; /* offsets                                        */
    char *base;               /* byte 0 of the span, NULL when there are no bytes */
    uint64_t capacity;        /* == strategy capacity                           */
    Py_buffer view;           /* the data buffer, held while open (has_view)    */
    int has_view;
    int closed;
    int closing;              /* close() under way: new calls raise PoolClosed      */
    uint32_t shutting;        /* close() has begun in this process (its pid; 0: not):
                                 it passed its check of exports and may wait for a
                                 shared pool's lock without the GIL: no new range or
                                 export, so none outlives the memory; what is live may
                                 still be given back meanwhile (mp_pool_shutting: a
                                 forked child's copy is not closing)                */
    int auto_free;            /* blocks give their range back when collected   */
    int warned_unnamed;       /* UnnamedArrayWarning given (persistent pools: once) */
    PyObject *source;         /* the memory source, kept alive                  */
    Py_ssize_t exports;       /* buffer exports of blocks + array-owned blocks  */
    uint64_t default_align;   /* alloc()'s default alignment (16)               */
    uint64_t base_align;      /* the alignment base's address guarantees (largest
                                 power of two dividing it, at most a page): no
                                 range may ask for more (its address would not be) */
    uint32_t bound_pid;       /* memory shared with other processes (a file): only
                                 this process may use the pool (0: any; shared pools
                                 have their own rules)                             */
    mp_tx_t *tx;              /* persistent pools: the journal's transactions over
                                 the state and its shadow copy, or NULL          */
    Py_buffer j_view;         /* the mapping tx points into (has_j)             */
    int has_j;
    mp_place_t place;         /* file and shared pools: where the state is, and how it
                                 grows (place.c); place.fd < 3: it stays put     */
    const mp_pool_hooks_t *hooks; /* NULL: the private paths of pool.c; else what a
                                 pool kind of its own does instead (shared pools) */
    PyTypeObject *array_type; /* the ndarray (sub)type empty()/zeros() make     */
    struct BlockObject *blocks; /* live Block objects of this pool (intrusive list) */
    mp_named_t *named;        /* pool.named's directory (pool_named.c), or NULL   */
    struct mp_hcache *hcache; /* NumPy's freed ranges kept for reuse (handler.c), or
                                 NULL: they count as used until mp_pool_settle()   */
    Py_ssize_t np_pins;       /* Blocks block_at made of NumPy arrays' ranges: their
                                 arrays' pins (pool.c, mp_pool_np_unpin)           */
    int np_served;            /* a NumPy handler has taken a range of this pool     */
    struct mp_offset_set *np_live; /* file pools: the ranges NumPy's arrays hold now
                                 (block_at tells them from an earlier run's), or NULL */
    Py_buffer named_view;     /* the memory its root lives in (has_named)       */
    int has_named;
    PyObject *weakreflist;
} PoolObject;

/* A range of a pool, with the buffer protocol. */
typedef struct BlockObject {
    PyObject_HEAD
    struct BlockObject *prev, *next; /* the pool's list of Block objects         */
    struct BlockObject *twin; /* private and file pools: the next live Block of the same
                                 range (a ring), NULL when it is the range's only one */
    PoolObject *pool;  /* strong reference: a block keeps its pool alive        */
    uint64_t offset;
    uint64_t size;     /* bytes asked for: what the buffer exposes              */
    uint64_t align;    /* kept when realloc moves the range                     */
    Py_ssize_t exports;
    uint64_t tag;      /* shared pools: the registry tag the handle names        */
    uint32_t entry;    /* shared pools: the registry entry (stable while held)   */
    uint32_t pid;      /* shared pools: the process that made this handle       */
    int owner;         /* shared pools: the allocating process's handle         */
    int live;          /* 0 once freed (or the pool closed under it)            */
    int owned;         /* give the range back when collected                    */
    int array;         /* owned by an ndarray made by the pool: counts as an export */
    int pin;           /* 1: pool.named's own reference to a named range (pool_named.c),
                          in no list; 2: a Block block_at made of a named range with no
                          other Block of it in the list: never frees it, never resizes;
                          3: a NumPy array's reference to its range while block_at's
                          Blocks of it live (pool.c): in the ring, never frees it      */
} BlockObject;

/* What a pool of a kind of its own (a shared pool) does where pool.c's generic paths
 * would change the strategy state directly.  pool.c calls these, and only these,
 * when pool->hooks is set: every state-changing call of such a pool goes through one
 * of them.  Each returns with nothing changed when it fails, and makes no Python
 * object while it holds a lock of its own. */
struct mp_pool_hooks {
    /* A new range of size bytes aligned to align (arguments checked, pool open):
     * 0 with *off (and *tag, *entry: what the Block records) set; 1 when nothing fits
     * and `quiet` (try_alloc: no exception made); else -1 with the exception set. */
    int (*take)(PoolObject *p, uint64_t size, uint64_t align, int quiet, uint64_t *off,
                uint64_t *tag, uint32_t *entry);
    /* Give back what take() returned when no Block could be made for it. */
    void (*untake)(PoolObject *p, uint64_t off, uint32_t entry);
    /* Give a live block's range back (no view of it alive): 0, or -1 with the
     * exception set.  The block is marked dead. */
    int (*release)(PoolObject *p, BlockObject *b);
    /* Resize a live block with no view (size < 2**64): 0 with *off its new offset and
     * the bytes moved, or -1 with the exception set. */
    int (*realloc)(PoolObject *p, BlockObject *b, uint64_t size, uint64_t *off);
    /* block_at(what): a new Block for the live range at off (UINT64_MAX: none). */
    PyObject *(*block_at)(PoolObject *p, PyObject *what, uint64_t off);
    /* close(): give back what this process holds, set p->closing and wait until no
     * call of this process is under way, then let go of the pool's own memory. */
    void (*close)(PoolObject *p);
    /* Block.__reduce__ */
    PyObject *(*reduce)(PoolObject *p, BlockObject *b);
    /* The NEP 49 handler's way in (handler.c; GIL held): MP_* codes, and no exception
     * left behind (one already pending is kept).  raw_take: a range holding its own
     * reference, as take() makes one for a Block; raw_put: give that reference back
     * by offset (a forked child's copy of its parent's array leaves the parent's
     * reference alone; MP_ENOTALLOC: no live range there); raw_size: the requested
     * size of the live range at off (0: none). */
    int (*raw_take)(PoolObject *p, uint64_t size, uint64_t align, uint64_t *off);
    int (*raw_put)(PoolObject *p, uint64_t off);
    uint64_t (*raw_size)(PoolObject *p, uint64_t off);
};

/* block.c */
extern PyTypeObject BlockType;
/* Twins: every live Block of one range of a private or file pool (block_at makes them)
 * holds a reference to it, and the Blocks of a range form a ring through `twin`.  A
 * Block's release with twins alive only leaves the ring; the last one frees the range.
 * A dead Block is in no ring (twin NULL).  Shared pools count references in their
 * registry instead: their Blocks never have twins. */
static inline void mp_block_join(BlockObject *b, BlockObject *of)
{
    b->twin = of->twin ? of->twin : of;
    of->twin = b;
}
static inline void mp_block_leave(BlockObject *b)
{
    BlockObject *p = b->twin;
    if (!p) return;
    while (p->twin != b) p = p->twin;
    p->twin = b->twin == p ? NULL : b->twin;
    b->twin = NULL;
}
int mp_block_ready(PyObject *module);
BlockObject *mp_block_new(PoolObject *pool, uint64_t offset, uint64_t size, uint64_t align,
                          int owned);

/* pool.c */
extern PyTypeObject PoolCoreType;
int mp_pool_ready(PyObject *module);
int mp_pool_check_open(PoolObject *pool);
/* PoolCore.__init__ after its arguments are read: 0, or -1 with the exception set and
 * nothing held. */
int mp_pool_setup(PoolObject *self, PyObject *strategy, PyObject *buffer, PyObject *source,
                  int auto_free, unsigned long long align);
/* [off, off + n) lies in a buffer of len bytes (no overflow). */
static inline int mp_fits(uint64_t len, uint64_t off, uint64_t n) { return off <= len && len - off >= n; }
/* [a, a + na) and [b, b + nb) do not overlap (both already fit a buffer). */
static inline int mp_apart(uint64_t a, uint64_t na, uint64_t b, uint64_t nb)
{
    return a < b ? a + na <= b : b + nb <= a;
}
/* An allocator status that means "nothing fits" (alloc raises OutOfSpace for it,
 * try_alloc returns None). */
static inline int mp_no_fit(int rc) { return rc == MP_ENOSPACE || rc == MP_ENONODES; }
/* This process's pid, kept right across fork(). */
uint32_t mp_getpid(void);
/* Not a forked child's copy of a pool over memory other processes map (a file). */
static inline int mp_pool_here(const PoolObject *p)
{
    return !p->bound_pid || p->bound_pid == mp_getpid();
}
/* close() has begun in this process (PoolObject.shutting). */
static inline int mp_pool_shutting(const PoolObject *p)
{
    return p->shutting && p->shutting == mp_getpid();
}
int mp_is_ndarray_type(PyObject *type); /* an ndarray subclass? */
/* A range of a pool without a Block (the NEP 49 handler, GIL held): MP_* codes, no
 * exception left behind; through the hooks for a pool of a kind of its own.
 * raw_size: the size of the live range at off (0: none). */
int mp_pool_raw_alloc(PoolObject *p, uint64_t size, uint64_t align, uint64_t *off);
int mp_pool_raw_free(PoolObject *p, uint64_t off);
uint64_t mp_pool_raw_size(PoolObject *p, uint64_t off);
/* The strategy state is full (MP_ENONODES, the call that said so left it unchanged and
 * no transaction is open): make it larger.  A private state grows in memory; a
 * persistent pool's moves to a larger pair at its file's end (place.c).  0: it grew,
 * retry; 1: it cannot grow; -1: an exception is set (the file refused: OSError). */
int mp_pool_grow(PoolObject *p);
/* place.c: placement=(gen, slot, end, base_end, base_size) from _segment.placement;
 * fd < 0 or placement None: the state never moves.  0, or -1 with the exception set. */
int mp_place_setup(PoolObject *p, int fd, char *first, uint64_t first_len, PyObject *placement,
                   uint64_t st_off, uint64_t sh_off, int durable);
/* Lock held (shared pools), before anything reads the state: follow the pair the slots
 * name now.  MP_OK; MP_ECORRUPT (a crafted slot) or MP_ENONODES (cannot map) with msg. */
int mp_place_follow(PoolObject *p, mp_tx_t *tx, char *msg, size_t msglen);
/* May the slots name another pair than this process's (mp_place_follow's first test,
 * inline: two loads, the generations of the two slots at 512 + 64 k + 8, place.c)? */
static inline int mp_place_moved(const mp_place_t *pl)
{
    if (pl->fd < 3) return 0;
    const volatile uint64_t *g = (const volatile uint64_t *)(pl->first + 512 + 8);
    uint64_t g0 = g[0], g1 = g[8];
    return (g0 > g1 ? g0 : g1) != pl->gen;
}
/* The journal idle, the GIL held: move the state into a grown pair and follow it.
 * MP_OK; MP_ENONODES (it cannot grow); MP_EINVAL (the file refused: errno, msg). */
int mp_place_grow(PoolObject *p, mp_tx_t *tx, char *msg, size_t msglen);
/* The tests' kill switch: MEMPOOL_GROW_FAULT=<step> kills the process at that step of a
 * growth (place.c). */
void mp_grow_fault(const char *step);
int mp_place_sync(PoolObject *p);     /* msync a pair mapped on its own: 0, or -1 (OSError) */
void mp_place_release(PoolObject *p); /* close(): its own mapping and the fd go       */
/* a status besides the MP_E* codes: the call failed with a Python exception set */
#define MP_EPYERR (-100)
/* This thread holds the GIL, exactly, for C code that NumPy (a NEP 49 handler) or a
 * tracer may call without it (handler.c's general way, recorder.c).  From 3.12 the
 * state this thread has attached is its own (a thread-local).  In 3.11 the running state
 * is the GIL holder's, which a caller without the GIL must not read (a holder exiting
 * frees it): it is compared, as a pointer, with this thread's own from PyGILState's
 * slot.  PyGILState_Check is no answer there: it says "held" to everyone once a
 * sub-interpreter has been made.  A sub-interpreter's state is in no such slot: only
 * while one exists is the holder's state read (its thread_id; else PyGILState_Ensure
 * would wait for the GIL this thread holds). */
#if PY_VERSION_HEX >= 0x030D0000
#define MP_OWN_TSTATE() PyThreadState_GetUnchecked()
#else
#define MP_OWN_TSTATE() _PyThreadState_UncheckedGet()
#endif
static inline int mp_gil_held(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyThreadState *ts = MP_OWN_TSTATE(); /* (this thread's: from 3.12, a thread-local) */
    return ts && ts->thread_id == PyThread_get_thread_ident();
#else
    PyThreadState *ts = _PyThreadState_UncheckedGet(); /* (the holder's) */
    if (!ts) return 0;
    if (ts == PyGILState_GetThisThreadState()) return 1;
    return PyInterpreterState_Next(PyInterpreterState_Head()) != NULL &&
           ts->thread_id == PyThread_get_thread_ident();
#endif
}
typedef struct {
    int taken;
    PyGILState_STATE st;
} mp_gil_t;
/* The GIL, taken when this thread does not hold it; mp_gil_give lets it go again. */
static inline mp_gil_t mp_gil_take(void)
{
    mp_gil_t g = {0, PyGILState_UNLOCKED};
    if (!mp_gil_held()) {
        g.st = PyGILState_Ensure();
        g.taken = 1;
    }
    return g;
}
static inline void mp_gil_give(mp_gil_t g)
{
    if (g.taken) PyGILState_Release(g.st);
}

/* handler.c */
int mp_handler_ready(PyObject *module);
/* tstate.c: CPython 3.11's word that holds the running thread state, or NULL; read
 * inline by handler.c on x86-64 glibc where CPython's internal headers were installed */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && defined(__x86_64__) && \
    defined(__GLIBC__) && defined(__has_include)
#if __has_include("internal/pycore_runtime.h")
#define MP_TSTATE_WORD 1
#endif
#endif
const volatile uintptr_t *mp_tstate_slot(void);
#if defined(__x86_64__) && defined(__GLIBC__)
/* glibc's struct pthread of this thread (its thread control block's self pointer, which
 * pthread_self() returns: handler.c checks that at import) */
static inline uintptr_t mp_fs16(void)
{
    uintptr_t self;
    __asm__("mov %%fs:16, %0" : "=r"(self));
    return self;
}
#endif
/* tstate.c: where each thread's own state is in 3.11 (PyGILState's thread-specific
 * key, in glibc's layout): the word at *(%fs:16 + *spec) + *off; 0, or -1 where that
 * cannot be found and checked (then the handler asks PyGILState_GetThisThreadState) */
int mp_own_tstate_word(size_t *spec, size_t *off);
/* The ranges NumPy freed that the handler keeps for reuse (private pools only) go back
 * to the strategy: before anything reads or changes the state other than the handler
 * (the strategy getter, block_at, realloc, close) and before an allocation is refused.
 * 1 when some went back (a failed allocation is worth a retry), else 0. */
int mp_hcache_settle(PoolObject *p);
static inline int mp_pool_settle(PoolObject *p) { return p->hcache && mp_hcache_settle(p); }
void mp_hcache_drop(PoolObject *p); /* forget the cache (the pool's state goes away) */
void mp_hcache_pins(PoolObject *p); /* np_pins or the cache's checks changed */
/* NumPy frees the range at off (GIL held): 1 when Blocks block_at made of it keep it
 * (the array's pin leaves their ring and the range is theirs now), else 0 (free it). */
int mp_pool_np_unpin_(PoolObject *p, uint64_t off);
/* handler.c: the range at off is a live NumPy array's (a private pool: NumPy took
 * ranges from it, and off has no Block; a file pool: listed in np_live) */
int mp_pool_np_owns(PoolObject *p, uint64_t off);
void mp_pool_np_forget(PoolObject *p); /* np_live's memory goes (dealloc) */
static inline int mp_pool_np_unpin(PoolObject *p, uint64_t off)
{
    return p->np_pins && mp_pool_np_unpin_(p, off);
}
/* Give a live block's range back to its pool (the block is marked dead). */
int mp_pool_release(PoolObject *pool, BlockObject *b);

/* pool_named.c: the methods of PoolCore behind pool.named (pool_methods includes them) */
PyObject *mp_ext_named_bind(PoolObject *self, PyObject *args);
PyObject *mp_ext_named_find(PoolObject *self, PyObject *name);
PyObject *mp_ext_named_owns(PoolObject *self, PyObject *offset);
PyObject *mp_ext_named_put(PoolObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mp_ext_named_del(PoolObject *self, PyObject *name);
PyObject *mp_ext_named_view(PoolObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mp_ext_array_over(PoolObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mp_ext_named_views(PoolObject *self, PyObject *name);
/* block_at's guard (lock held in a shared pool): 0, or -1 with NotAllocated when off is
 * one of the named directory's own ranges (its table, a record: no Block may hold or
 * free them), CorruptionError when the directory is broken. */
int mp_named_not_meta(PoolObject *self, uint64_t off, PyObject *what);
PyObject *mp_ext_named_names(PoolObject *self, PyObject *ignored);
PyObject *mp_ext_named_state(PoolObject *self, PyObject *ignored);
PyObject *mp_ext_named_check(PoolObject *self, PyObject *ignored);
void mp_named_release(PoolObject *pool); /* close/dealloc: let go of the root's memory */
/* a name's UTF-8 bytes (1..MP_NAMED_MAX_NAME), or NULL with TypeError / ValueError */
const char *mp_named_name_of(PyObject *o, uint32_t *n);
/* The arguments of _named_put(name, record, source, block, view), private and shared
 * pools alike: 0, or -1 with the error set.  When has_src, src is a buffer to release. */
typedef struct mp_named_put_args {
    const char *name;
    uint32_t n;
    uint64_t view;
    Py_buffer src;
    int has_src;
    BlockObject *blk;
} mp_named_put_args_t;
int mp_named_put_args(PyObject *const *args, Py_ssize_t nargs, mp_named_put_args_t *a);
/* pool_shared.c: what pool_shared_named.c needs of a shared pool (p is one) */
int mp_sh_lock(PoolObject *p); /* 0 with the lock held (a transaction begun), or -1 */
/* lock held, nothing of the call done: the state grows (pool_shared.c); MP_OK: retry */
int mp_sh_grow(PoolObject *p);
/* Lock held, nothing of the call done yet: room for n more registry entries (grown
 * into its reserve as needed); 0: none (pool_shared.c). */
int mp_sh_reg_room(PoolObject *p, uint64_t n);
/* Why the last growth of the state or the registry failed ("" when none did; the
 * caller that reports it clears it). */
char *mp_sh_grow_why(PoolObject *p);
void mp_sh_unlock(PoolObject *p); /* commits the transaction */
uint64_t mp_sh_next_tag(PoolObject *p);
mp_shared_ctl_t *mp_sh_ctl(PoolObject *p);
mp_tx_t *mp_sh_tx(PoolObject *p);
/* pool_shared_named.c: the methods of SharedPoolCore behind pool.named */
PyObject *mp_ext_shnamed_bind(PoolObject *self, PyObject *args);
PyObject *mp_ext_shnamed_find(PoolObject *self, PyObject *name);
PyObject *mp_ext_shnamed_owns(PoolObject *self, PyObject *offset);
PyObject *mp_ext_shnamed_put(PoolObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mp_ext_shnamed_del(PoolObject *self, PyObject *name);
PyObject *mp_ext_shnamed_names(PoolObject *self, PyObject *ignored);
PyObject *mp_ext_shnamed_state(PoolObject *self, PyObject *ignored);
PyObject *mp_ext_shnamed_check(PoolObject *self, PyObject *ignored);
/* pool_shared.c: SharedPoolCore, the C half of mempool.SharedPool */
extern PyTypeObject SharedPoolCoreType;
int mp_shared_pool_ready(PyObject *module);
/* sys.c: adds mbind, get_mempolicy (where the headers number them), mlock, pid_gone */
int mp_sys_ready(PyObject *module);
/* Is process pid gone: no such process, or a zombie none of whose threads runs? */
int mp_pid_gone(uint32_t pid);

/* recorder.c: trace.record()'s recorder and pool limits, through a wrapped operation
 * table per strategy (see there); pool.track()'s hook */
int mp_recorder_ready(PyObject *module);
int mp_rec_recording(void);                 /* a recording runs                   */
void mp_rec_adopt(StrategyObject *s);       /* a strategy made while it runs      */
void mp_wrap_moved(void *old, void *new_st); /* a state grew into a new block      */
extern int mp_track_on;                     /* some pool tracks its allocations   */
void mp_track_note(PoolObject *pool, uint64_t off, uint64_t size);
/* pool_shared.c: a shared pool's journal (its strategy calls go through it) */
mp_tx_t *mp_shared_tx(PoolObject *p);

/* module.c: the error types, imported from mempool.errors at init */
extern PyObject *mp_MempoolError, *mp_OutOfSpace, *mp_NotAllocated, *mp_CorruptionError,
    *mp_PoolClosed, *mp_UnnamedArrayWarning, *mp_StatsType;

/* args.c */
/* Read a non-negative integer argument.  Returns 0 on success, 1 when it is
 * larger than 2^64 - 1 (*out = UINT64_MAX), -1 with an exception set when it is
 * not an integer (TypeError) or negative (ValueError). */
int mp_arg_u64(PyObject *o, const char *name, uint64_t *out);
int mp_arg_size(PyObject *o, const char *name, uint64_t *out); /* >= 1, overflow -> 1 */
int mp_arg_align(PyObject *o, uint64_t *out);                  /* power of two */
/* An offset argument: one of 2**64 or more names no live range (NotAllocated).
 * 0, or -1 with an exception set.  Inline: free() and size_of() are hot. */
static inline int mp_arg_offset(PyObject *o, uint64_t *off)
{
    int rc = mp_arg_u64(o, "offset", off);
    if (rc > 0) {
        PyErr_Format(mp_NotAllocated, "offset %S is not the start of a live range", o);
        return -1;
    }
    return rc;
}
/* An int of two words, hi << 32 | lo (lo < 2**32; a Bump's mark, a range's handle):
 * made (NULL with an exception), and split: 0 (*hi, *lo set); 1 when it is no such int
 * (negative, or hi of 2**64 or more); -1 with an exception (TypeError naming `what`
 * and where it comes `from` when it is not an int). */
PyObject *mp_pair_new(uint64_t hi, uint64_t lo);
int mp_pair_split(PyObject *o, const char *what, const char *from, uint64_t *hi, uint64_t *lo);
/* Parse fastcall arguments by hand: names[] of the accepted parameters, nreq
 * required.  Fills vals[]; missing optional ones are left as given. */
int mp_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int nparams, int nreq, PyObject **vals);
/* tp_new arguments (tuple + dict) by name: the first npos may be positional, the
 * rest are keyword-only; nreq required.  Fills vals[] (missing ones untouched).
 * flags keep the wording some types have always had:
 *   MP_NEW_NPOS_EXACT         too many positionals: "takes N positional argument(s)"
 *                             rather than "takes at most N ..."
 *   MP_NEW_REPEAT_UNEXPECTED  a keyword naming an argument given by position is an
 *                             "unexpected keyword argument", not "multiple values" */
#define MP_NEW_NPOS_EXACT 1
#define MP_NEW_REPEAT_UNEXPECTED 2
int mp_parse_new_args(PyTypeObject *cls, PyObject *args, PyObject *kw, const char *const *names,
                      int nparams, int npos, int nreq, int flags, PyObject **vals);
/* A constructor's size parameter (capacity, block_size, ...): mp_arg_size, and a
 * value of 2**64 or more is a ValueError too.  0 or -1 with an exception set. */
int mp_arg_size64(PyObject *o, const char *name, uint64_t *out);
/* The optional max_blocks: dflt when o is NULL or None, else 1 <= max_blocks
 * < 2**32 - 1 (ValueError).  0 or -1 with an exception set. */
int mp_arg_max_blocks(PyObject *o, uint64_t dflt, uint64_t *out);

/* strategy.c */
extern PyTypeObject StrategyType;
/* 1 with PoolClosed set when the state is gone (the pool behind it closed), else 0. */
static inline int mp_strategy_closed(StrategyObject *self)
{
    if (self->st) return 0;
    PyErr_SetString(mp_PoolClosed, "the pool behind this strategy is closed");
    return 1;
}
/* StrategyObject.served: a Pool holds its ranges by offset (no handle form, no trace
 * replay); TX: a file or shared pool's, whose every change is a journal transaction
 * under the pool's lock (place.c, journal.h), so the strategy's own methods may read
 * it but not change it. */
enum { MP_SERVED_POOL = 1, MP_SERVED_TX = 2 };
/* A method that changes the state may run: 0, or 1 with PoolClosed (the state is gone)
 * or TypeError (it serves a file or shared pool: a change made past the journal and the
 * lock would be undone by the next recovery, or race another process). */
static inline int mp_strategy_unwritable(StrategyObject *self, const char *fn)
{
    if (mp_strategy_closed(self)) return 1;
    if (self->served != MP_SERVED_TX) return 0;
    PyErr_Format(PyExc_TypeError, "%s: this strategy serves a file or shared pool, whose "
                 "changes are journal transactions (use the pool's own calls)", fn);
    return 1;
}
/* A type's own methods read the state of its own kind: 0, or 1 with TypeError when the
 * object holds another strategy's (a class that mixes two strategy types past
 * __init_subclass__, or whose __bases__ were changed: its methods and its constructor
 * can come from different types). */
static inline int mp_strategy_not(StrategyObject *self, unsigned kind, const char *what)
{
    if (self->ops->kind == kind) return 0;
    PyErr_Format(PyExc_TypeError, "%s reads a %s state; this object holds a %s one",
                 what, mp_ops_by_kind(kind) ? mp_ops_by_kind(kind)->name : "?",
                 self->ops->name);
    return 1;
}
int mp_strategy_ready(PyObject *module);
/* An operation returned MP_ENONODES (the state's node budget is spent): grow the
 * state into a larger malloc'd block (mp_ops_t.grow) and return 0, so the caller
 * retries; -1 (no exception set) when it cannot: the state is not ours (a file, a
 * segment), the strategy never grows, or no memory.  The state keeps its ranges. */
int mp_strategy_grow(StrategyObject *self);
/* A new strategy's grow= argument (NULL: not given): grow=False fixes its budget.
 * Passes self (NULL) through; NULL with an exception when grow's truth fails. */
PyObject *mp_strategy_fix_budget(StrategyObject *self, PyObject *grow);

/* Make a strategy object of `cls` with a fresh malloc'd state of st_len bytes. */
StrategyObject *mp_strategy_alloc(PyTypeObject *cls, const mp_ops_t *ops, uint64_t st_len);
/* The end of a constructor: self when init_rc is MP_OK, else self released and
 * NULL with ValueError(msg). */
PyObject *mp_strategy_inited(StrategyObject *self, int init_rc, const char *msg);
/* Raise OutOfSpace("cannot allocate <what><size> bytes: <why> (...)", size, available,
 * largest_free) for a request of size_obj bytes (or of `size` when size_obj is NULL). */
PyObject *mp_raise_oos(StrategyObject *self, PyObject *size_obj, uint64_t size, const char *what,
                       const char *why);
/* Raise the Python exception that matches rc for an operation on self. */
PyObject *mp_raise(StrategyObject *self, int rc, uint64_t size, uint64_t align, uint64_t offset);
/* mp_raise in two halves, for shared pools: capture() reads what the message needs
 * from the state (under the lock, no Python object made: a GC pass there could run
 * a Block's release, which needs the lock), raise() builds the exception after. */
typedef struct mp_err {
    int rc;
    uint64_t size, offset, avail, largest;
    int has_why;
    char why[160];
} mp_err_t;
void mp_err_capture(StrategyObject *self, int rc, uint64_t size, uint64_t align, uint64_t offset,
                    mp_err_t *e);
PyObject *mp_err_raise(const mp_err_t *e);
/* The figures of a state that stats() reports, read into C: a shared pool reads them
 * under its lock, where no Python object may be made, and builds the Stats after. */
typedef struct mp_figures {
    uint64_t capacity, used, requested, live, peak_used, high_water;
    uint64_t available, largest_free, free_ranges;
    uint64_t metadata; /* bytes of the state block */
} mp_figures_t;
void mp_figures_read(const mp_ops_t *ops, const void *st, mp_figures_t *f);
PyObject *mp_stats_new(const mp_figures_t *f); /* a mempool.Stats */
/* segments() in two halves: walk() collects the map into a C array grown with
 * PyMem_RawRealloc (no Python object: a GC pass during the walk could free Blocks
 * under its feet, and a shared pool walks under its lock), list() then makes the
 * list of (offset, size, allocated), or raises what the walk met, and frees the
 * array. */
typedef struct mp_segs {
    struct mp_seg {
        uint64_t off, size;
        int allocated;
    } *v;
    size_t n, cap;
    int nomem, rc;
    const char *name; /* the strategy's, for the error */
} mp_segs_t;
void mp_segments_walk(const mp_ops_t *ops, const void *st, mp_segs_t *b);
PyObject *mp_segments_list(mp_segs_t *b);
/* Register a concrete strategy type (module attribute, restore(), attach).  The
 * type's own tp_methods (extras, NULL-terminated) are merged with the generic
 * ones; its tp_getset defaults to the generic properties. */
int mp_register_type(PyObject *module, PyTypeObject *type, const mp_ops_t *ops);
/* A getter of the state head's param[(intptr_t)closure]: a constructor parameter. */
PyObject *mp_strategy_get_param(StrategyObject *self, void *which);
const mp_ops_t *mp_ops_of_type(PyTypeObject *type);
PyTypeObject *mp_type_of_ops(const mp_ops_t *ops);
PyObject *mp_ext_restore_fn(PyObject *mod, PyObject *args); /* _restore(type, data) */
PyObject *mp_ext_attach(PyObject *mod, PyObject *args);      /* attach(buffer, off, len) */
/* The arguments of alloc(size, align=1) (or another method's of that form, fname) and
 * realloc(offset, size, align=1), read and
 * checked in the order every strategy's methods follow: the arguments, then the state
 * open, then (realloc) the range at offset live.  vals[] gets the argument objects.
 * Return 0, 1 when size is 2**64 or more (the caller raises OutOfSpace naming
 * vals[0] / vals[1]), or -1 with an exception set.  Inline: the generic ones are hot. */
static inline int mp_alloc_args(StrategyObject *self, const char *fname, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames, PyObject **vals,
                                uint64_t *size, uint64_t *align)
{
    static const char *const names[] = {"size", "align"};
    if (nargs == 1 && !kwnames) vals[0] = args[0];
    else if (mp_parse_args(fname, args, nargs, kwnames, names, 2, 1, vals) < 0)
        return -1;
    int big = mp_arg_size(vals[0], "size", size);
    if (big < 0) return -1;
    if (vals[1] && mp_arg_align(vals[1], align) < 0) return -1;
    if (mp_strategy_closed(self)) return -1;
    return big;
}

static inline int mp_realloc_args(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames, PyObject **vals, uint64_t *off,
                                  uint64_t *size, uint64_t *align)
{
    static const char *const names[] = {"offset", "size", "align"};
    if (mp_parse_args("realloc", args, nargs, kwnames, names, 3, 2, vals) < 0) return -1;
    if (mp_arg_offset(vals[0], off) < 0) return -1;
    int big = mp_arg_size(vals[1], "size", size);
    if (big < 0) return -1;
    if (vals[2] && mp_arg_align(vals[2], align) < 0) return -1;
    if (mp_strategy_unwritable(self, "realloc()")) return -1;
    uint64_t cur;
    int rc = self->ops->size_of(self->st, *off, &cur);
    if (rc) {
        mp_raise(self, rc, 0, 1, *off);
        return -1;
    }
    return big;
}

/* type_*.c */
/* range_methods.c: what the range strategies (TLSF, BestFit) share, their methods of
 * the handle form (alloc_handle, free_handle). */
extern PyMethodDef mp_range_methods[];
/* TYPE(capacity, *, max_blocks=None) for the range strategies (type_tlsf.c) */
PyObject *mp_range_strategy_new(PyTypeObject *cls, PyObject *args, PyObject *kw,
                                const mp_ops_t *ops,
                                uint64_t (*state_size)(uint64_t, uint64_t),
                                int (*init)(void *, uint64_t, uint64_t));
/* Each strategy's binding file registers its type: mp_tlsf_type_ready(module), ... */
#define MP_TYPE_READY_DECL_(KIND, sname, number) int mp_##sname##_type_ready(PyObject *module);
MP_STRATEGIES(MP_TYPE_READY_DECL_)
#undef MP_TYPE_READY_DECL_

#endif /* MEMPOOL_NATIVE_H */
