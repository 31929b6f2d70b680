/*
 * handler.c -- NumPy's own data allocations in a pool: a NEP 49 PyDataMem_Handler
 * (numpy/doc/neps/nep-0049.rst) whose malloc / calloc / realloc / free are the
 * pool's strategy, in C (no Python on the path).
 *
 * A handler is a capsule ("mem_handler") around an mp_handler_t that holds a strong
 * reference to its pool; NumPy keeps the capsule alive in every array it made with it,
 * so an array keeps its pool alive and is freed into it wherever and whenever it dies
 * (another thread, after the context that made it ended).  Every range the handler
 * holds counts as an export of the pool: close() refuses with BufferError while one
 * is alive, as for any view.  NumPy installs a handler per context (its own
 * contextvar): pool.activate(numpy=True) (pool.py) sets it for the current thread or
 * asyncio task only.
 *
 * A shared pool's ranges go through its hooks (raw_take / raw_put / raw_size in
 * pool_shared.c): each gets a registry entry and its owner reference, as a Block's
 * range does, so block_at() finds it, a dead process's arrays are reclaimed, and a
 * forked child's copy of an array leaves its parent's reference alone.
 *
 * When the pool cannot serve (full, closed, no bytes, or a forked child of a file
 * pool's owner): with `fallback` the request goes to the C library's malloc, counted
 * (fallbacks); without, NULL, which NumPy raises as MemoryError.  free() tells the
 * two apart by address: the pool's span, or not.
 *
 * The cache.  NumPy's default handler keeps the data buffers it frees under 1 KiB for
 * reuse (seven of each byte size) and the C library's malloc has bins of its own: a
 * handler that went to the strategy twice per array paid ~750 instructions a pair more
 * (callgrind) and np.empty took 1.2-1.5x the default's time.  A private pool's handlers
 * keep what NumPy frees in the pool's cache (mp_hcache_t): ranges of up to 1 KiB in 64
 * classes of 16 bytes, HC_DEPTH each, larger ones up to HC_BIG_MAX in a short list
 * matched by size rounded to 64; at most capacity/8 bytes in all.  Every range the
 * handler takes from such a pool has its class's size, so that any range of a class
 * serves any request of it; free() is told the size NumPy asked for (NumPy's own cache
 * relies on it too); a range taken at its exact size instead (the rounded size did not
 * fit) makes every later push verify the range's size first.  A cached range is
 * allocated in the strategy's eyes: the pool settles the cache (gives every range back)
 * before anything else reads or changes the state (pool.c: the strategy getter, which
 * stats / used / segments / check go through, block_at, realloc, close) and before any
 * range is taken from the strategy (a Block, a request the cache cannot serve): so every
 * range the strategy hands out lands where it would without the cache, and peak_used /
 * high_water never count kept ranges.  Not for shared pools (a range is a registry entry of a
 * process) nor file pools (a call is a journal transaction: the file says what is live).
 *
 * The GIL: NumPy may call a handler without it (a free from a thread that released
 * it); every entry takes it when this thread does not hold it (PyGILState_Ensure:
 * not Python code, the lock the pool's other calls hold), so the strategy sees one
 * caller at a time.
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL mempool_ARRAY_API
#define NO_IMPORT_ARRAY
#include "native.h"

#include <numpy/arrayobject.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct mp_handler {
    PyDataMem_Handler h; /* first: NumPy reads the capsule's pointer as this        */
    PoolObject *pool;    /* strong reference                                     */
    int fallback;        /* serve from malloc when the pool cannot (counted)     */
    uint64_t allocs, frees, fallbacks, fallback_bytes, failures; /* allocs - frees: live */
} mp_handler_t;

#define CAPSULE_NAME "mem_handler"

/* This thread holds the GIL, on the hot paths (mp_gil_held in native.h is the general
 * way, exact, with calls).  From 3.12: the thread state this thread has attached (a
 * thread-local word, NULL while it has let the GIL go) was made by this thread, its
 * thread_id against pthread_self() read inline (a state moved between threads takes the
 * general way).  In 3.11 the running state is the holder's, whoever that is, and a
 * caller without the GIL must not read it: the holder may be a thread that is exiting
 * and frees it between two loads (a helper's ASan run: a use after free of the
 * thread_id read there).  So in 3.11 the holder's state is only compared, as a pointer,
 * with this thread's own, which CPython keeps in a thread-specific slot (PyGILState's
 * key: set while the state lives, NULL once it is deleted).  Both words are read inline
 * where they were found and checked at import (tstate.c: the interpreter's word, and
 * the slot in glibc's layout): no call, so the hot paths are leaf functions; elsewhere
 * (and for a sub-interpreter's state, which is not in that slot) every call takes the
 * general way. */
static int fs_self; /* %fs:16 is pthread_self() here (checked once at import) */
static inline unsigned long thread_self(void)
{
#if defined(__x86_64__) && defined(__GLIBC__)
    if (__builtin_expect(fs_self, 1)) return (unsigned long)mp_fs16();
#endif
    return (unsigned long)pthread_self();
}
#ifdef MP_TSTATE_WORD
/* &_PyRuntime.gilstate.tstate_current once checked at import, with the place of this
 * thread's own state (own_spec, own_off); else a word that stays 0 (every call then
 * takes the general way) */
static const volatile uintptr_t *tstate_slot;
static const uintptr_t tstate_none;
static size_t own_spec, own_off;
#endif
static inline int gil_held(void)
{
#ifdef MP_TSTATE_WORD
    uintptr_t ts = *tstate_slot;
    return ts && ts == *(const uintptr_t *)(*(const char *const *)(mp_fs16() + own_spec) + own_off);
#elif PY_VERSION_HEX >= 0x030C0000
    PyThreadState *ts = MP_OWN_TSTATE();
    /* (CPython stores PyThread_get_thread_ident(), which is pthread_self(): glibc's on
     * x86-64 reads the thread control block's self pointer at %fs:16, inline here) */
    return ts && ts->thread_id == thread_self();
#else
    return 0; /* (3.11 without the inline words: the general way asks) */
#endif
}

static inline int in_pool(const PoolObject *p, const void *ptr)
{
    return p->base && (const char *)ptr >= p->base && (const char *)ptr < p->base + p->capacity;
}

/* The pool can take a request now. */
static inline int usable(const PoolObject *p)
{
    return !p->closed && !p->closing && !mp_pool_shutting(p) && p->base && p->strategy &&
           p->strategy->st &&
           mp_pool_here(p);
}

/* ---- the cache of freed ranges (see the top) ---------------------------------------- */
#define HC_CLASSES 64
#define HC_DEPTH 8
#define HC_SMALL_MAX (HC_CLASSES * 16)
#define HC_BIG 8
#define HC_BIG_MAX ((uint64_t)4 << 20)

typedef struct mp_hcache {
    int full;      /* something may be held: settle has work                          */
    unsigned depth; /* ranges kept per small class: HC_DEPTH, fewer in a small pool   */
    int fast;      /* pushes need no check: the hot path may push (not in a debug build,
                      which checks every push)                                     */
    size_t hot;    /* the depth h_free's small pushes may fill: depth while fast and no
                      Block pins an array's range (np_pins), else 0 (mp_hcache_pins) */
    uint32_t nbig;
    uint64_t big_bytes, big_cap;
    uint8_t n[HC_CLASSES];
    uint64_t small[HC_CLASSES][HC_DEPTH]; /* offsets, per class of 16 bytes          */
    uint64_t big_size[HC_BIG], big_off[HC_BIG];
} mp_hcache_t;

/* Full small classes hold depth * 16 * (1 + 2 + ... + 64) bytes: at most 1/16 of the
 * capacity, as the large ranges; a pool under ~520 KiB keeps no small ones. */
#define HC_SMALL_FULL ((uint64_t)16 * HC_CLASSES * (HC_CLASSES + 1) / 2)

/* A pool whose handler ranges are rounded and cached: a private one, in memory of
 * this process alone (not a file other processes map: a forked child's copy of the
 * cache would hand out the file's ranges). */
static inline int cacheable(const PoolObject *p) { return !p->hooks && !p->tx && !p->bound_pid; }

/* The size the handler takes for a request of n bytes (n >= 1) in a cacheable pool. */
static inline uint64_t hc_round(uint64_t n)
{
    if (n <= HC_SMALL_MAX) return (n + 15) & ~(uint64_t)15;
    return n <= HC_BIG_MAX ? (n + 63) & ~(uint64_t)63 : n;
}

/* The pool's cache, made on first use (an open cacheable pool: the cache lives from
 * then until close(), which settles and drops it, so a pool that has one is open). */
static mp_hcache_t *hc_get(PoolObject *p)
{
    if (!p->hcache) {
        mp_hcache_t *c = PyMem_RawCalloc(1, sizeof *c);
        if (!c) return NULL;
        uint64_t d = p->capacity / 16 / HC_SMALL_FULL;
        c->depth = d < HC_DEPTH ? (unsigned)d : HC_DEPTH;
#ifndef MP_DEBUG /* (a debug build verifies every push: the general way) */
        c->fast = 1;
#endif
        c->big_cap = p->capacity / 16;
        p->hcache = c;
        mp_hcache_pins(p);
    }
    return p->hcache;
}

/* A cached range of rounded size r, or 0. */
static inline int hc_pop(mp_hcache_t *c, uint64_t r, uint64_t *off)
{
    if (r <= HC_SMALL_MAX) {
        unsigned k = (unsigned)(r >> 4) - 1;
        if (!c->n[k]) return 0;
        *off = c->small[k][--c->n[k]];
        return 1;
    }
    uint32_t i = c->nbig;
    while (i && c->big_size[i - 1] != r) i--;
    if (!i--) return 0;
    *off = c->big_off[i];
    c->big_bytes -= r;
    c->nbig--; /* the last one takes its place */
    c->big_size[i] = c->big_size[c->nbig];
    c->big_off[i] = c->big_off[c->nbig];
    return 1;
}

/* Keep the range at off (rounded size r): 1, or 0 when the cache has no room for it. */
static inline int hc_push(PoolObject *p, mp_hcache_t *c, uint64_t r, uint64_t off)
{
    if (!c->fast && mp_pool_raw_size(p, off) < r) return 0;
    if (r <= HC_SMALL_MAX) {
        unsigned k = (unsigned)(r >> 4) - 1;
        if (c->n[k] >= c->depth) return 0;
        c->small[k][c->n[k]++] = off;
    } else {
        if (c->nbig == HC_BIG || r > c->big_cap - c->big_bytes) return 0;
        c->big_size[c->nbig] = r;
        c->big_off[c->nbig++] = off;
        c->big_bytes += r;
    }
    c->full = 1;
    return 1;
}

int mp_hcache_settle(PoolObject *p)
{
    mp_hcache_t *c = p->hcache;
    if (!c->full) return 0;
    /* (a cache exists only in an open pool: close() settles and drops it) */
    for (unsigned k = 0; k < HC_CLASSES; k++) {
        for (unsigned i = 0; i < c->n[k]; i++) (void)mp_pool_raw_free(p, c->small[k][i]);
        c->n[k] = 0;
    }
    for (uint32_t i = 0; i < c->nbig; i++) (void)mp_pool_raw_free(p, c->big_off[i]);
    c->nbig = 0;
    c->big_bytes = 0;
    c->full = 0;
    return 1;
}

void mp_hcache_pins(PoolObject *p)
{
    mp_hcache_t *c = p->hcache;
    if (c) c->hot = c->fast && !p->np_pins ? c->depth : 0;
}

void mp_hcache_drop(PoolObject *p)
{
    PyMem_RawFree(p->hcache);
    p->hcache = NULL;
}

/* ---- the ranges NumPy's arrays hold in a file pool ------------------------------------
 * block_at must tell a live array's range (its Block shares it with the array) from a
 * range an earlier run left (its Block owns it): a set of offsets, open addressing with
 * linear probing, for file pools only (their calls are journal transactions already;
 * a private pool needs none: every range without a Block there is an array's). */
typedef struct mp_offset_set {
    uint64_t n, cap; /* keys held; slots, a power of two (load <= 1/2) */
    uint64_t key[];  /* UINT64_MAX: empty                            */
} mp_offset_set_t;

static inline uint64_t set_slot(uint64_t off, uint64_t cap)
{
    return ((off >> 4) * 0x9E3779B97F4A7C15ull) & (cap - 1);
}

static int set_add(PoolObject *p, uint64_t off)
{
    mp_offset_set_t *s = p->np_live;
    if (!s || 2 * (s->n + 1) > s->cap) { /* grow: rehash into twice the room */
        uint64_t cap = s ? 2 * s->cap : 64;
        mp_offset_set_t *t = PyMem_RawMalloc(sizeof *t + cap * sizeof(uint64_t));
        if (!t) return -1;
        t->n = 0;
        t->cap = cap;
        memset(t->key, 0xff, cap * sizeof(uint64_t));
        for (uint64_t i = 0; s && i < s->cap; i++) {
            if (s->key[i] == UINT64_MAX) continue;
            uint64_t j = set_slot(s->key[i], cap);
            while (t->key[j] != UINT64_MAX) j = (j + 1) & (cap - 1);
            t->key[j] = s->key[i];
            t->n++;
        }
        PyMem_RawFree(s);
        p->np_live = s = t;
    }
    uint64_t j = set_slot(off, s->cap);
    while (s->key[j] != UINT64_MAX && s->key[j] != off) j = (j + 1) & (s->cap - 1);
    if (s->key[j] == UINT64_MAX) {
        s->key[j] = off;
        s->n++;
    }
    return 0;
}

static uint64_t set_find(const mp_offset_set_t *s, uint64_t off)
{
    if (!s) return UINT64_MAX;
    uint64_t j = set_slot(off, s->cap);
    while (s->key[j] != UINT64_MAX) {
        if (s->key[j] == off) return j;
        j = (j + 1) & (s->cap - 1);
    }
    return UINT64_MAX;
}

static void set_del(PoolObject *p, uint64_t off)
{
    mp_offset_set_t *s = p->np_live;
    uint64_t j = set_find(s, off), m;
    if (j == UINT64_MAX) return;
    /* backward shift: the keys after j that probed past it move up */
    for (uint64_t k = (j + 1) & (s->cap - 1); s->key[k] != UINT64_MAX; k = (k + 1) & (s->cap - 1)) {
        m = set_slot(s->key[k], s->cap);
        if (((k - m) & (s->cap - 1)) >= ((k - j) & (s->cap - 1))) {
            s->key[j] = s->key[k];
            j = k;
        }
    }
    s->key[j] = UINT64_MAX;
    s->n--;
}

int mp_pool_np_owns(PoolObject *p, uint64_t off)
{
    if (p->hooks) return 0;
    if (p->tx) return set_find(p->np_live, off) != UINT64_MAX;
    return p->np_served;
}

void mp_pool_np_forget(PoolObject *p)
{
    PyMem_RawFree(p->np_live);
    p->np_live = NULL;
}

/* A range for size bytes (GIL held), or NULL. */
static __attribute__((noinline)) void *pool_get(mp_handler_t *H, size_t size)
{
    PoolObject *p = H->pool;
    uint64_t n = size ? (uint64_t)size : 1, r = n, off;
    mp_hcache_t *c = p->hcache; /* (a pool that has one is open and cacheable) */
    if (c && hc_pop(c, r = hc_round(n), &off)) goto got;
    if (!usable(p)) return NULL;
    if (cacheable(p)) {
        r = hc_round(n);
        /* a miss: the kept ranges go back first, so that the strategy places this range
         * where it would without them (else it lands behind them, and a large request
         * finds the space they leave cut in two; peak_used would count them too) */
        mp_pool_settle(p);
    }
    /* malloc's 16 for small requests (NumPy's own), a cache line for the rest */
    uint64_t align = r >= 64 ? 64 : 16;
    if (align > p->base_align) align = p->base_align;
    int rc = mp_pool_raw_alloc(p, r, align, &off);
    if (rc != MP_OK && r != n) { /* only the exact size fits (a Slab's items, a full pool) */
        c = hc_get(p);
        if (!c || mp_pool_raw_alloc(p, n, align, &off) != MP_OK) return NULL;
        c->fast = 0; /* this range must never serve its class: every push checks now */
        mp_hcache_pins(p);
        rc = MP_OK;
    }
    if (rc != MP_OK) return NULL;
    if (p->tx && set_add(p, off) < 0) { /* (no memory to list it: no range either) */
        (void)mp_pool_raw_free(p, off);
        return NULL;
    }
got:
    p->exports++;
    p->np_served = 1; /* (block_at: its ranges without a Block are arrays') */
    H->allocs++;
    return p->base + off;
}

static void pool_put(mp_handler_t *H, void *ptr)
{
    PoolObject *p = H->pool;
    uint64_t off = (uint64_t)((char *)ptr - p->base);
    p->exports--;
    H->frees++;
    if (p->tx) set_del(p, off);
    if (mp_pool_np_unpin(p, off)) return; /* block_at's Blocks of it keep the range */
    /* (a forked child of a file pool's owner leaves the file's state alone) */
    if (!p->closed && p->strategy && p->strategy->st && mp_pool_here(p) &&
        mp_pool_raw_free(p, off) != MP_OK)
        H->failures++; /* (never: the range is ours) */
}

/* free(): into the cache when it has room, else back to the strategy. */
static __attribute__((noinline)) void pool_put_sized(mp_handler_t *H, void *ptr, size_t size)
{
    PoolObject *p = H->pool;
    if (p->np_pins) { /* Blocks block_at made of it: never cached (pool_put sees to them) */
        pool_put(H, ptr);
        return;
    }
    uint64_t r = hc_round(size ? (uint64_t)size : 1);
    mp_hcache_t *c = p->hcache; /* (a pool that has one is open and cacheable) */
    if (!c && cacheable(p) && usable(p)) c = hc_get(p);
    if (c && r <= HC_BIG_MAX) {
        if (hc_push(p, c, r, (uint64_t)((char *)ptr - p->base))) {
            p->exports--;
            H->frees++;
                    return;
        }
    }
    pool_put(H, ptr);
}

/* What the pool could not serve: the C library's (zeroed when `zero`), counted, when
 * the handler falls back; else NULL.  Either way a failure is counted. */
static void *fallback_get(mp_handler_t *H, size_t size, int zero)
{
    void *r = NULL;
    if (H->fallback) r = zero ? calloc(size ? size : 1, 1) : malloc(size ? size : 1);
    if (r) {
        H->fallbacks++;
        H->fallback_bytes += size;
    } else {
        H->failures++;
    }
    return r;
}

/* The hot paths: a small request with the GIL held, served from the cache or kept in
 * it, in a few loads and stores (t = size - 1: class t >> 4, small while t < 1 KiB; 0
 * wraps to large); all else goes the general way (pool_get, pool_put_sized, which also
 * handle every case these do).  A large one first tries the cache's list out of line,
 * so that the small paths stay leaf functions that save no register. */
static __attribute__((noinline)) void *h_malloc_slow(mp_handler_t *H, size_t size)
{
    mp_gil_t g = mp_gil_take();
    void *r = pool_get(H, size);
    if (!r) r = fallback_get(H, size, 0);
    mp_gil_give(g);
    return r;
}

static void *h_calloc(void *ctx, size_t nelem, size_t elsize)
{
    mp_handler_t *H = ctx;
    if (elsize && nelem > SIZE_MAX / elsize) return NULL;
    size_t size = nelem * elsize;
    mp_gil_t g = mp_gil_take();
    void *r = pool_get(H, size);
    if (r) memset(r, 0, size);
    else r = fallback_get(H, size, 1);
    mp_gil_give(g);
    return r;
}

static __attribute__((noinline)) void h_free_slow(mp_handler_t *H, void *ptr, size_t size)
{
    mp_gil_t g = mp_gil_take();
    if (in_pool(H->pool, ptr)) pool_put_sized(H, ptr, size);
    else free(ptr);
    mp_gil_give(g);
}

static __attribute__((noinline)) void *h_malloc_large(mp_handler_t *H, size_t size)
{
    PoolObject *p = H->pool;
    mp_hcache_t *c = p->hcache;
    uint64_t off;
    /* (the GIL before the cache is read: a close() beside a caller without it frees it) */
    if (c && size > HC_SMALL_MAX && size <= HC_BIG_MAX && gil_held() && c->nbig &&
        hc_pop(c, hc_round(size), &off)) {
        p->exports++;
        H->allocs++;
        return p->base + off;
    }
    return h_malloc_slow(H, size);
}

static void *h_malloc(void *ctx, size_t size)
{
    mp_handler_t *H = ctx;
    PoolObject *p = H->pool;
    mp_hcache_t *c = p->hcache;
    size_t t = size - 1;
    if (t < HC_SMALL_MAX && c && gil_held()) {
        size_t k = t >> 4, n = c->n[k];
        if (n) {
            c->n[k] = (uint8_t)--n;
            p->exports++;
            H->allocs++;
            return p->base + c->small[k][n];
        }
        return h_malloc_slow(H, size);
    }
    return h_malloc_large(H, size);
}

/* (a cache exists in an open pool only: base is its span's start; NULL lands far
 * outside the span, so the general way sees it) */
static __attribute__((noinline)) void h_free_large(mp_handler_t *H, void *ptr, size_t size)
{
    PoolObject *p = H->pool;
    mp_hcache_t *c = p->hcache;
    if (c && size > HC_SMALL_MAX && size <= HC_BIG_MAX && gil_held() && c->fast &&
        !p->np_pins) {
        uint64_t off = (uint64_t)((uintptr_t)ptr - (uintptr_t)p->base);
        if (off < p->capacity && hc_push(p, c, hc_round(size), off)) {
            p->exports--;
            H->frees++;
            return;
        }
    }
    if (ptr) h_free_slow(H, ptr, size);
}

static void h_free(void *ctx, void *ptr, size_t size)
{
    mp_handler_t *H = ctx;
    PoolObject *p = H->pool;
    mp_hcache_t *c = p->hcache;
    size_t t = size - 1;
    if (t < HC_SMALL_MAX && c && gil_held()) {
        uint64_t off = (uint64_t)((uintptr_t)ptr - (uintptr_t)p->base);
        size_t k = t >> 4, n = c->n[k];
        if (off < p->capacity && n < c->hot) {
            c->small[k][n] = off;
            c->n[k] = (uint8_t)(n + 1);
            c->full = 1;
            p->exports--;
            H->frees++;
            return;
        }
        if (ptr) h_free_slow(H, ptr, size);
        return;
    }
    h_free_large(H, ptr, size);
}

static void *h_realloc(void *ctx, void *ptr, size_t new_size)
{
    mp_handler_t *H = ctx;
    if (!ptr) return h_malloc(ctx, new_size);
    mp_gil_t g = mp_gil_take();
    void *r = NULL;
    if (in_pool(H->pool, ptr)) {
        PoolObject *p = H->pool;
        uint64_t off = (uint64_t)((char *)ptr - p->base), old;
        /* a forked child of a file pool's owner may not read the state: it copies up to
         * the span's end (its mapping), which holds the old range; what follows the
         * old range's bytes is a realloc's undefined tail anyway */
        old = usable(p) ? mp_pool_raw_size(p, off) : p->capacity - off;
        r = pool_get(H, new_size);
        if (!r) r = fallback_get(H, new_size, 0);
        if (r) {
            memcpy(r, ptr, old < new_size ? (size_t)old : new_size);
            pool_put(H, ptr);
        }
    } else {
        r = realloc(ptr, new_size ? new_size : 1); /* a fallback range stays one */
        if (!r) H->failures++;
    }
    mp_gil_give(g);
    return r;
}

static void capsule_free(PyObject *cap)
{
    mp_handler_t *H = PyCapsule_GetPointer(cap, CAPSULE_NAME);
    if (!H) {
        PyErr_Clear();
        return;
    }
    Py_XDECREF(H->pool);
    PyMem_RawFree(H);
}

static mp_handler_t *as_handler(PyObject *o)
{
    if (!PyCapsule_CheckExact(o) || PyCapsule_GetDestructor(o) != capsule_free) {
        PyErr_SetString(PyExc_TypeError, "expected a handler made by numpy_handler()");
        return NULL;
    }
    return PyCapsule_GetPointer(o, CAPSULE_NAME);
}

static PyObject *ext_numpy_handler(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *pool;
    int fallback = 1;
    if (!PyArg_ParseTuple(args, "O!p:numpy_handler", &PoolCoreType, &pool, &fallback)) return NULL;
    PoolObject *p = (PoolObject *)pool;
    if (mp_pool_check_open(p) < 0) return NULL;
    if (!p->base) {
        PyErr_SetString(PyExc_TypeError, "a pool over External memory cannot hold arrays");
        return NULL;
    }
    mp_handler_t *H = PyMem_RawCalloc(1, sizeof *H);
    if (!H) return PyErr_NoMemory();
    snprintf(H->h.name, sizeof H->h.name, "mempool %s", p->strategy->ops->name);
    H->h.version = 1;
    H->h.allocator.ctx = H;
    H->h.allocator.malloc = h_malloc;
    H->h.allocator.calloc = h_calloc;
    H->h.allocator.realloc = h_realloc;
    H->h.allocator.free = h_free;
    H->pool = p;
    H->fallback = fallback;
    Py_INCREF(pool);
    PyObject *cap = PyCapsule_New(H, CAPSULE_NAME, capsule_free);
    if (!cap) {
        Py_DECREF(pool);
        PyMem_RawFree(H);
    }
    return cap;
}

static PyObject *ext_set_numpy_handler(PyObject *Py_UNUSED(m), PyObject *h)
{
    /* ours, or NumPy's default (or another library's) as get/set hand them back */
    if (h != Py_None && !PyCapsule_IsValid(h, CAPSULE_NAME)) {
        PyErr_SetString(PyExc_TypeError, "expected a NumPy 'mem_handler' capsule or None");
        return NULL;
    }
    return PyDataMem_SetHandler(h == Py_None ? NULL : h); /* the previous one */
}

static PyObject *ext_handler_stats(PyObject *Py_UNUSED(m), PyObject *h)
{
    mp_handler_t *H = as_handler(h);
    if (!H) return NULL;
    return Py_BuildValue("{sKsKsKsKsKsK}", "allocs", (unsigned long long)H->allocs, "frees",
                         (unsigned long long)H->frees, "live",
                         (unsigned long long)(H->allocs - H->frees),
                         "fallbacks",
                         (unsigned long long)H->fallbacks, "fallback_bytes",
                         (unsigned long long)H->fallback_bytes, "failures",
                         (unsigned long long)H->failures);
}

/* How the hot paths tell that this thread holds the GIL: "inline" (3.11's words, checked
 * at import), "none" (that check failed: every call takes the general way), "call"
 * (3.12 on: this thread's own state, through the getter) or "general" (3.11 without
 * CPython's internal headers: every call takes the general way). */
static PyObject *ext_handler_gil_check(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a))
{
#ifdef MP_TSTATE_WORD
    return PyUnicode_FromString(tstate_slot == &tstate_none ? "none" : "inline");
#elif PY_VERSION_HEX >= 0x030C0000
    return PyUnicode_FromString("call");
#else
    return PyUnicode_FromString("general");
#endif
}

/* In a forked child, CPython 3.11 makes PyGILState's key anew (_PyGILState_Reinit): the
 * hot paths look for this thread's own state again (os.register_at_fork, _active.py),
 * or take the general way from now on. */
static PyObject *ext_handler_after_fork(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a))
{
#ifdef MP_TSTATE_WORD
    size_t spec, off;
    if (tstate_slot != &tstate_none) {
        if (mp_own_tstate_word(&spec, &off) == 0) {
            own_spec = spec;
            own_off = off;
        } else {
            tstate_slot = &tstate_none;
        }
    }
#endif
    Py_RETURN_NONE;
}

static PyMethodDef handler_methods[] = {
    {"numpy_handler", ext_numpy_handler, METH_VARARGS,
     "numpy_handler($module, pool, fallback, /)\n--\n\n"
     "A NEP 49 handler (a 'mem_handler' capsule) whose allocations come from pool."},
    {"set_numpy_handler", ext_set_numpy_handler, METH_O,
     "set_numpy_handler($module, handler, /)\n--\n\n"
     "Install handler (None: NumPy's default) for the current context; the previous one."},
    {"handler_gil_check", ext_handler_gil_check, METH_NOARGS,
     "handler_gil_check($module, /)\n--\n\n"
     "How the handler's hot paths test the GIL: 'inline', 'call', 'general' or 'none'."},
    {"handler_after_fork", ext_handler_after_fork, METH_NOARGS,
     "handler_after_fork($module, /)\n--\n\n"
     "In a forked child: the hot paths find this thread's own state again."},
    {"handler_stats", ext_handler_stats, METH_O,
     "handler_stats($module, handler, /)\n--\n\nThe handler's counters, a dict."},
    {NULL, NULL, 0, NULL},
};

int mp_handler_ready(PyObject *module)
{
    fs_self = 1;
    fs_self = thread_self() == (unsigned long)pthread_self();
#ifdef MP_TSTATE_WORD
    /* the word holds this thread's state while it holds the GIL, and not while it has
     * let the GIL go (3.11 stores NULL there, or the next holder's state): a word at a
     * wrong offset that happened to hold the state too fails the second test */
    const volatile uintptr_t *slot = mp_tstate_slot();
    uintptr_t me = (uintptr_t)PyThreadState_Get(), held = slot ? *slot : 0, released = me;
    if (slot) {
        Py_BEGIN_ALLOW_THREADS
        released = *slot;
        Py_END_ALLOW_THREADS
    }
    tstate_slot = fs_self && slot && held == me && released != me &&
                          mp_own_tstate_word(&own_spec, &own_off) == 0
                      ? slot
                      : &tstate_none;
#endif
    return PyModule_AddFunctions(module, handler_methods);
}
