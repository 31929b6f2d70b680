/*
 * pool.c -- mempool._mempool.PoolCore: a strategy over real bytes.
 *
 * mempool.Pool (pool.py) is a Python subclass that composes a source and a
 * strategy and then hands both to PoolCore.__init__; everything a user calls on
 * the hot path (alloc, free, realloc, empty, zeros) is here, in C, with no Python
 * frame in between (DESIGN.md principle 4).
 *
 * Persistent pools (state in a file) set `tx` (_set_journal): every call that changes
 * the state is a transaction of the file's journal (_core/journal.h), so a process
 * killed in the middle leaves a file that Pool.open() rolls back or forward.
 *
 * A pool of a kind of its own (SharedPoolCore, pool_shared.c) sets `hooks`: where a
 * generic path below would change the strategy state, it calls the hook instead (one
 * pointer test, the same on every call of a pool, on the private paths).
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL mempool_ARRAY_API
#include "native.h"

#include <errno.h>
#include <numpy/arrayobject.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------------ */
int mp_pool_check_open(PoolObject *pool)
{
    if (!pool->closed && !pool->closing && !mp_pool_shutting(pool) && pool->strategy &&
        pool->strategy->st) {
        if (mp_pool_here(pool)) return 0;
        PyErr_Format(mp_PoolClosed, "the pool's memory is shared with process %u, which opened "
                     "it: a forked child must open the file itself",
                     (unsigned)pool->bound_pid);
        return -1;
    }
    PyErr_SetString(mp_PoolClosed, !pool->strategy                      ? "the pool is not initialised"
                                   : mp_pool_shutting(pool) && !pool->closed ? "the pool is being closed"
                                                                     : "the pool is closed");
    return -1;
}

static inline const mp_ops_t *OPS(PoolObject *p) { return p->strategy->ops; }
static inline void *ST(PoolObject *p) { return p->strategy->st; }

/* One allocation: a persistent pool's is a transaction of its journal (one pointer
 * test on the private paths). */
static inline int st_alloc_once(PoolObject *p, uint64_t size, uint64_t align, uint64_t *off)
{
    if (!p->tx) return OPS(p)->alloc(ST(p), size, align, off);
    return mp_tx_alloc1(p->tx, size, align, off);
}

/* alloc after MP_ENONODES: the state grows (mp_pool_grow) and the call is retried; out
 * of line, so that the hot path stays as it was.  MP_EPYERR: growing raised. */
__attribute__((noinline, cold)) static int alloc_grown(PoolObject *p, uint64_t size,
                                                       uint64_t align, uint64_t *off)
{
    int rc = MP_ENONODES;
    while (rc == MP_ENONODES) {
        int g = mp_pool_grow(p);
        if (g) return g < 0 ? MP_EPYERR : MP_ENONODES;
        rc = st_alloc_once(p, size, align, off);
    }
    return rc;
}

/* The strategy calls of a private or persistent pool. */
static inline int st_alloc(PoolObject *p, uint64_t size, uint64_t align, uint64_t *off)
{
    int rc = st_alloc_once(p, size, align, off);
    return __builtin_expect(rc == MP_ENONODES, 0) ? alloc_grown(p, size, align, off) : rc;
}
/* realloc inside the caller's transaction (a persistent pool's), or plainly */
static inline int st_realloc(PoolObject *p, uint64_t off, uint64_t size, uint64_t align,
                             uint64_t *out)
{
    return p->tx ? mp_tx_realloc(p->tx, off, size, align, out)
                 : OPS(p)->realloc(ST(p), off, size, align, out);
}
static inline int st_free(PoolObject *p, uint64_t off)
{
    if (!p->tx) return OPS(p)->free(ST(p), off);
    return mp_tx_free1(p->tx, off);
}

/* The NEP 49 handler's way in (handler.c): a range without a Block, with the GIL
 * held; MP_* codes, no exception. */
int mp_pool_raw_alloc(PoolObject *p, uint64_t size, uint64_t align, uint64_t *off)
{
    if (p->hooks) return p->hooks->raw_take(p, size, align, off);
    int rc = st_alloc_once(p, size, align, off);
    if (__builtin_expect(rc == MP_ENONODES, 0)) { /* the state grows (out of the way) */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb); /* (one pending when NumPy called us is kept) */
        rc = alloc_grown(p, size, align, off);
        if (rc == MP_EPYERR) { /* growing the file failed: NumPy says MemoryError */
            PyErr_Clear();
            rc = MP_ENONODES;
        }
        PyErr_Restore(et, ev, tb);
    }
    return rc;
}
int mp_pool_raw_free(PoolObject *p, uint64_t off)
{
    if (p->hooks) return p->hooks->raw_put(p, off);
    return st_free(p, off);
}
uint64_t mp_pool_raw_size(PoolObject *p, uint64_t off)
{
    if (p->hooks) return p->hooks->raw_size(p, off);
    uint64_t n = 0;
    return OPS(p)->size_of(ST(p), off, &n) == MP_OK ? n : 0;
}

static uint32_t cached_pid;
static void refresh_pid(void) { cached_pid = (uint32_t)getpid(); }
uint32_t mp_getpid(void) { return cached_pid; }

int mp_is_ndarray_type(PyObject *type)
{
    return PyType_Check(type) && PyType_IsSubtype((PyTypeObject *)type, &PyArray_Type);
}

/* Allocate a range (and, through the hooks, what else the pool kind records for it).
 * 0; 1 when nothing fits and `quiet` (no exception made); else -1 with the exception
 * set.  Nothing changed unless 0. */
static inline int pool_take(PoolObject *self, uint64_t size, uint64_t align, int quiet,
                            uint64_t *off, uint64_t *tag, uint32_t *entry)
{
    if (self->base && align > self->base_align) { /* an offset alone would not do */
        PyErr_Format(PyExc_ValueError, "align %llu is above the alignment of the pool's memory "
                     "(%llu): the address would not be aligned", (unsigned long long)align,
                     (unsigned long long)self->base_align);
        return -1;
    }
    if (self->hooks) return self->hooks->take(self, size, align, quiet, off, tag, entry);
    mp_pool_settle(self); /* NumPy's freed ranges that the handler kept go back first: the
                             Block lands where it would without them (handler.c) */
    int rc = st_alloc(self, size, align, off);
    if (rc == MP_OK) return 0;
    if (rc == MP_EPYERR) return -1;
    if (quiet && mp_no_fit(rc)) return 1;
    mp_raise(self->strategy, rc, size, align, 0);
    return -1;
}

/* Give a range back after a failure past pool_take (a Block could not be made). */
static void pool_untake(PoolObject *self, uint64_t off, uint32_t entry)
{
    if (self->hooks) {
        self->hooks->untake(self, off, entry);
        return;
    }
    st_free(self, off);
}

/* A Block made by alloc/empty: the allocating process's handle.  (Inline: alloc's
 * hot path, which GCC left as a call once alloc() and try_alloc() shared it.) */
static inline BlockObject *new_owned_block(PoolObject *self, uint64_t off, uint64_t size,
                                           uint64_t align, int owned, uint64_t tag,
                                           uint32_t entry)
{
    BlockObject *b = mp_block_new(self, off, size, align, owned);
    if (!b) {
        pool_untake(self, off, entry);
        return NULL;
    }
    b->tag = tag;
    b->entry = entry;
    b->owner = 1;
    if (__builtin_expect(mp_track_on, 0)) mp_track_note(self, off, size); /* pool.track() */
    return b;
}

int mp_pool_release(PoolObject *pool, BlockObject *b)
{
    if (b->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot free the block at offset %llu: %zd view(s) of it are alive",
                     (unsigned long long)b->offset, b->exports);
        return -1;
    }
    if (pool->hooks) return pool->hooks->release(pool, b);
    if (b->twin || b->pin) { /* other Blocks of the range (or its name) keep it */
        mp_block_leave(b);
        b->live = 0;
        return 0;
    }
    int rc = st_free(pool, b->offset);
    if (rc) {
        mp_raise(pool->strategy, rc, 0, 1, b->offset);
        return -1;
    }
    b->live = 0;
    return 0;
}

static BlockObject *as_block(PoolObject *self, PyObject *o)
{
    if (!PyObject_TypeCheck(o, &BlockType)) {
        PyErr_Format(PyExc_TypeError, "expected a mempool.Block, not %.100s", Py_TYPE(o)->tp_name);
        return NULL;
    }
    BlockObject *b = (BlockObject *)o;
    if (b->pool != self) {
        PyErr_SetString(mp_NotAllocated, "the block belongs to another pool");
        return NULL;
    }
    if (!b->live) {
        PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed",
                     (unsigned long long)b->offset);
        return NULL;
    }
    return b;
}

/* ---- init / dealloc ---------------------------------------------------------------- */
static const char *const init_names[] = {"strategy", "buffer", "source", "auto_free", "align"};

static int ext_pool_init(PoolObject *self, PyObject *args, PyObject *kw)
{
    PyObject *strategy, *buffer = Py_None, *source = Py_None;
    int auto_free = 1;
    unsigned long long align = 16;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|OO$pK:PoolCore", (char **)init_names,
                                     &StrategyType, &strategy, &buffer, &source, &auto_free,
                                     &align))
        return -1;
    return mp_pool_setup(self, strategy, buffer, source, auto_free, align);
}

int mp_pool_setup(PoolObject *self, PyObject *strategy, PyObject *buffer, PyObject *source,
                  int auto_free, unsigned long long align)
{
    if (self->strategy) {
        PyErr_SetString(PyExc_RuntimeError, "the pool is initialised already");
        return -1;
    }
    if (!mp_is_pow2(align)) {
        PyErr_Format(PyExc_ValueError, "align must be a positive power of two, got %llu", align);
        return -1;
    }
    StrategyObject *s = (StrategyObject *)strategy;
    if (!s->st) {
        PyErr_SetString(mp_PoolClosed, "the strategy is closed");
        return -1;
    }
    /* a pool holds its ranges by offset (a file's or a segment's state: refused by its
     * attach, CorruptionError, and under its lock for a shared one) */
    if (s->owns && s->ops->by_handle && s->ops->by_handle(s->st)) {
        PyErr_SetString(PyExc_ValueError, "the strategy holds ranges allocated by handle, "
                        "which a pool cannot hold (its blocks name offsets)");
        return -1;
    }
    uint64_t capacity = ((mp_head_t *)s->st)->capacity;
    if (buffer != Py_None) {
        if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            if (PyErr_ExceptionMatches(PyExc_BufferError)) { /* e.g. a read-only mapping */
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "a pool needs writable memory: %R is read-only "
                             "or not contiguous", source != Py_None ? source : buffer);
            }
            return -1;
        }
        if ((uint64_t)self->view.len < capacity) {
            PyErr_Format(PyExc_ValueError, "the buffer holds %zd bytes, the strategy manages %llu",
                         self->view.len, (unsigned long long)capacity);
            PyBuffer_Release(&self->view);
            return -1;
        }
        self->has_view = 1;
        self->base = self->view.buf;
        uintptr_t a = (uintptr_t)self->base;
        self->base_align = a & (0 - a); /* the lowest set bit */
        if (!self->base_align || self->base_align > 4096) self->base_align = 4096;
        if (align > self->base_align) {
            PyErr_Format(PyExc_ValueError, "the memory at %p is aligned to %llu bytes only, less "
                         "than the pool's default alignment %llu", self->base,
                         (unsigned long long)self->base_align, align);
            PyBuffer_Release(&self->view);
            self->has_view = 0;
            self->base = NULL;
            return -1;
        }
    }
    if (source != Py_None) { /* memory other processes map too (a file): this process's */
        PyObject *shared = PyObject_GetAttrString(source, "_shared_mapping");
        int yes = shared ? PyObject_IsTrue(shared) : 0;
        Py_XDECREF(shared);
        PyErr_Clear();
        if (yes > 0) self->bound_pid = mp_getpid();
    }
    Py_INCREF(strategy);
    self->strategy = s;
    s->served = MP_SERVED_POOL; /* (no handle form: the pool's blocks, journal and registry hold offsets) */
    Py_INCREF(source);
    self->source = source;
    self->capacity = capacity;
    self->auto_free = auto_free;
    self->default_align = align;
    return 0;
}

static void pool_dealloc(PoolObject *self)
{
    if (self->weakreflist) PyObject_ClearWeakRefs((PyObject *)self);
    if (self->has_view) PyBuffer_Release(&self->view);
    if (self->has_j) PyBuffer_Release(&self->j_view);
    mp_place_release(self);
    mp_named_release(self);
    mp_hcache_drop(self);
    mp_pool_np_forget(self);
    PyMem_Free(self->tx);
    Py_XDECREF(self->array_type);
    Py_XDECREF(self->strategy);
    Py_XDECREF(self->source);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- hot methods -------------------------------------------------------------------- */
static const char *const alloc_names[] = {"size", "align"};

/* alloc() and try_alloc(): the same checks in the same order; `quiet` turns "nothing
 * fits" into None instead of OutOfSpace (inlined into both: a constant, and alloc()
 * keeps its code of before). */
static inline __attribute__((always_inline)) PyObject *
alloc_block(PoolObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
            const char *fname, int quiet)
{
    PyObject *vals[2] = {NULL, NULL};
    uint64_t size, align = self->default_align, off;
    if (nargs == 1 && !kwnames) vals[0] = args[0];
    else if (mp_parse_args(fname, args, nargs, kwnames, alloc_names, 2, 1, vals) < 0)
        return NULL;
    int big = mp_arg_size(vals[0], "size", &size);
    if (big < 0) return NULL;
    if (vals[1] && mp_arg_align(vals[1], &align) < 0) return NULL;
    if (mp_pool_check_open(self) < 0) return NULL;
    if (big) {
        if (quiet) Py_RETURN_NONE;
        return mp_raise(self->strategy, MP_ENOSPACE, size, align, 0);
    }
    uint64_t tag = 0;
    uint32_t entry = 0;
    int rc = pool_take(self, size, align, quiet, &off, &tag, &entry);
    if (rc) {
        if (rc > 0) Py_RETURN_NONE;
        return NULL;
    }
    return (PyObject *)new_owned_block(self, off, size, align, self->auto_free, tag, entry);
}

static PyObject *ext_pool_alloc(PoolObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    return alloc_block(self, args, nargs, kwnames, "alloc", 0);
}

static PyObject *ext_pool_try_alloc(PoolObject *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    return alloc_block(self, args, nargs, kwnames, "try_alloc", 1);
}

static PyObject *ext_pool_free(PoolObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "free() takes exactly one argument (%zd given)", nargs);
        return NULL;
    }
    if (mp_pool_check_open(self) < 0) return NULL;
    BlockObject *b = as_block(self, args[0]);
    if (!b || mp_pool_release(self, b) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *ext_pool_realloc(PoolObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t size, off;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "realloc() takes exactly two arguments (%zd given)", nargs);
        return NULL;
    }
    int big = mp_arg_size(args[1], "size", &size); /* may run __index__: first */
    if (big < 0) return NULL;
    if (mp_pool_check_open(self) < 0) return NULL;
    BlockObject *b = as_block(self, args[0]);
    if (!b) return NULL;
    if (b->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot resize the block at offset %llu: %zd view(s) of it are alive",
                     (unsigned long long)b->offset, b->exports);
        return NULL;
    }
    if (b->pin) {
        PyErr_Format(PyExc_BufferError, "cannot resize the block at offset %llu: its range is "
                     "a named array's (pool.named)", (unsigned long long)b->offset);
        return NULL;
    }
    if (b->twin) { /* (shared pools count their handles in the hook) */
        Py_ssize_t n = 0;
        for (BlockObject *t = b->twin; t != b; t = t->twin) n++;
        PyErr_Format(PyExc_BufferError, "cannot resize the block at offset %llu: %zd other "
                     "handle(s) of it are alive", (unsigned long long)b->offset, n);
        return NULL;
    }
    if (big) return mp_raise(self->strategy, MP_ENOSPACE, size, b->align, 0);
    if (self->hooks) {
        if (self->hooks->realloc(self, b, size, &off) < 0) return NULL;
    } else {
        int rc;
        mp_pool_settle(self); /* (growing in place may need a range NumPy freed) */
        if (self->tx) mp_tx_begin(self->tx);
        rc = st_realloc(self, b->offset, size, b->align, &off);
        while (rc == MP_ENONODES) { /* (unchanged: the state grows between transactions) */
            if (self->tx) mp_tx_commit(self->tx);
            int g = mp_pool_grow(self);
            if (g < 0) return NULL;
            if (self->tx) mp_tx_begin(self->tx);
            if (g) break;
            rc = st_realloc(self, b->offset, size, b->align, &off);
        }
        /* (the hook moves the bytes itself; a persistent pool's move comes before the
         * commit: a kill during it leaves the old range, as before the call) */
        if (rc == MP_OK && off != b->offset && self->base)
            memmove(self->base + off, self->base + b->offset,
                    (size_t)(size < b->size ? size : b->size));
        if (self->tx) mp_tx_commit(self->tx);
        if (rc) return mp_raise(self->strategy, rc, size, b->align, b->offset);
    }
    b->offset = off;
    b->size = size;
    if (__builtin_expect(mp_track_on, 0)) mp_track_note(self, off, size); /* pool.track() */
    Py_INCREF(b);
    return (PyObject *)b;
}

/* block_at(offset): another Block of a live range, holding a reference like any other:
 * the range is freed when its last Block is released.  Private and file pools: when a
 * live Block of the range exists (found in the pool's list of Blocks) the new one
 * joins its ring of twins and takes its size and alignment; else (a reopened file
 * pool's range) it is the range's only Block, of size size_of(offset).  Shared pools
 * count the reference in their registry (the hook). */
static PyObject *ext_pool_block_at(PoolObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t off;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "block_at() takes exactly one argument (%zd given)", nargs);
        return NULL;
    }
    int rc = mp_arg_u64(args[0], "offset", &off);
    if (rc < 0) return NULL;
    if (mp_pool_check_open(self) < 0) return NULL;
    if (rc > 0) off = UINT64_MAX;
    if (self->hooks) return self->hooks->block_at(self, args[0], off);
    mp_pool_settle(self); /* a range NumPy freed is not live */
    uint64_t size;
    if (off == UINT64_MAX || OPS(self)->size_of(ST(self), off, &size) != MP_OK) {
        PyErr_Format(mp_NotAllocated, "offset %S is not the start of a live range", args[0]);
        return NULL;
    }
    if (mp_named_not_meta(self, off, args[0]) < 0) return NULL;
    BlockObject *b = mp_block_new(self, off, size, 1, self->auto_free);
    if (!b) return NULL;
    /* no Python code runs from here: the list holds every Block of the pool, b first
     * (but pool.named's pins: a range a name owns is never this Block's to free) */
    for (BlockObject *t = b->next; t; t = t->next) {
        if (t->live && t->offset == off) {
            b->size = t->size;
            b->align = t->align;
            mp_block_join(b, t);
            break;
        }
    }
    if (!b->twin && self->named && mp_named_owns(self->named, off) > 0) {
        b->owned = 0; /* the name's range: this Block only leaves it */
        b->pin = 2;
    } else if (!b->twin && mp_pool_np_owns(self, off)) {
        /* a live range with no Block and no name that a NumPy array holds (handler.c;
         * in a private pool NumPy took ranges from, any such range, or one taken
         * through the private strategy object, which then stays the pin's):
         * the array's reference joins the ring as a pin, which the handler's free takes
         * out again; the range goes when the last of them goes, as for any handle */
        BlockObject *pin = mp_block_new(self, off, b->size, 1, 0);
        if (!pin) {
            Py_DECREF(b);
            return NULL;
        }
        pin->pin = 3; /* its reference is the pool's, until the array dies */
        mp_block_join(b, pin);
        self->np_pins++;
        mp_hcache_pins(self);
    }
    return (PyObject *)b;
}

int mp_pool_np_unpin_(PoolObject *p, uint64_t off)
{
    for (BlockObject *t = p->blocks; t; t = t->next) {
        if (t->pin != 3 || t->offset != off || !t->live) continue;
        int kept = t->twin != NULL; /* block_at's Blocks of it still live */
        mp_block_leave(t);
        t->live = 0;
        p->np_pins--;
        mp_hcache_pins(p);
        Py_DECREF(t); /* the pool's reference: unlinks it */
        return kept;
    }
    return 0;
}

/* ---- arrays -------------------------------------------------------------------------- */
static const char *const array_names[] = {"shape", "dtype"};

static PyObject *make_array(PoolObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames, const char *fname, int zero)
{
    PyObject *vals[2] = {NULL, NULL};
    if (mp_parse_args(fname, args, nargs, kwnames, array_names, 2, 1, vals) < 0) return NULL;
    PyArray_Dims dims = {NULL, 0};
    PyArray_Descr *descr = NULL;
    PyObject *arr = NULL;
    npy_intp one;
    int converted = 0; /* dims.ptr was allocated by the converter */
    if (PyLong_CheckExact(vals[0])) { /* the common case, without an allocation */
        one = PyLong_AsSsize_t(vals[0]);
        if (one == -1 && PyErr_Occurred()) return NULL;
        dims.ptr = &one;
        dims.len = 1;
    } else {
        if (!PyArray_IntpConverter(vals[0], &dims)) return NULL;
        converted = 1;
    }
    if (vals[1] && vals[1] != Py_None) {
        if (!PyArray_DescrConverter(vals[1], &descr)) goto done;
    } else {
        descr = PyArray_DescrFromType(NPY_DOUBLE);
    }
    if (PyDataType_REFCHK(descr)) {
        PyErr_Format(PyExc_ValueError,
                     "dtype %R holds Python object references, which cannot live in pool memory",
                     (PyObject *)descr);
        goto done;
    }
    uint64_t nbytes = (uint64_t)PyDataType_ELSIZE(descr);
    for (int k = 0; k < dims.len; k++) {
        if (dims.ptr[k] < 0) {
            PyErr_SetString(PyExc_ValueError, "negative dimensions are not allowed");
            goto done;
        }
        if (dims.ptr[k] && nbytes > UINT64_MAX / (uint64_t)dims.ptr[k]) {
            PyErr_SetString(PyExc_ValueError, "array is too big");
            goto done;
        }
        nbytes *= (uint64_t)dims.ptr[k];
    }
    /* the converters above may run Python code (__index__, dtype lookups): the pool is
     * checked after them */
    if (mp_pool_check_open(self) < 0) goto done;
    if (!self->base) {
        PyErr_SetString(PyExc_TypeError, "a pool over External memory cannot hold arrays");
        goto done;
    }
    uint64_t need = (uint64_t)PyDataType_ALIGNMENT(descr), off;
    if (!mp_is_pow2(need)) need = 64;
    /* at least 64 (cache lines) where the memory allows it, never less than the dtype
     * needs (pool_take refuses a dtype the memory cannot align) */
    uint64_t align = need > 64 ? need : 64;
    if (align > self->base_align) align = need > self->base_align ? need : self->base_align;
    uint64_t size = nbytes ? nbytes : 1, tag = 0;
    uint32_t entry = 0;
    if (pool_take(self, size, align, 0, &off, &tag, &entry) < 0) goto done;
    /* the array's export is counted before its Block is made: pool.track()'s hook runs
     * Python code in new_owned_block, where another thread may call close(), which must
     * then refuse (it would let the memory go under the array made below) */
    self->exports++;
    BlockObject *b = new_owned_block(self, off, size, align, 1, tag, entry);
    if (!b) {
        self->exports--;
        goto done;
    }
    b->array = 1;      /* the array's life is an export of the block */
    b->exports = 1;
    if (zero) memset(self->base + off, 0, (size_t)nbytes);
    Py_INCREF(descr); /* NewFromDescr steals it */
    arr = PyArray_NewFromDescr(self->array_type ? self->array_type : &PyArray_Type, descr,
                               dims.len, dims.ptr, NULL, self->base + off, NPY_ARRAY_CARRAY, NULL);
    if (!arr) {
        Py_DECREF(b); /* its dealloc gives the range back */
        goto done;
    }
    /* the array owns the block from here; the block's dealloc frees the range */
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)b) < 0) /* steals b */
        Py_CLEAR(arr);
done:
    Py_XDECREF(descr);
    if (converted) PyDimMem_FREE(dims.ptr);
    return arr;
}

static PyObject *ext_pool_empty(PoolObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    return make_array(self, args, nargs, kwnames, "empty", 0);
}

static PyObject *ext_pool_zeros(PoolObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    return make_array(self, args, nargs, kwnames, "zeros", 1);
}

/* ---- lifetime ------------------------------------------------------------------------- */
static PyObject *ext_pool_close_core(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->closed || !self->strategy) Py_RETURN_FALSE;
    if (self->closing && mp_pool_shutting(self)) { /* (a forked child's copy of a closing
                                                      pool may close) */
        PyErr_SetString(PyExc_RuntimeError, "the pool is being closed by another thread");
        return NULL;
    }
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot close the pool: %zd view(s) or array(s) of its memory are alive",
                     self->exports);
        return NULL;
    }
    /* shared pools give back what this process holds and let the calls that wait for
     * their lock leave (they find the pool closing) before the memory goes; from here on
     * nothing new is handed out, by a call made while close() waits for that lock
     * (another thread's, without the GIL) or one that waited for the lock before it */
    self->shutting = mp_getpid();
    if (self->hooks) self->hooks->close(self);
    mp_pool_settle(self); /* NumPy's freed ranges go back, and the cache with them */
    mp_hcache_drop(self);
    self->closing = 1;
    self->closed = 1;
    mp_named_release(self);
    PyMem_Free(self->tx);
    self->tx = NULL;
    if (self->has_j) {
        PyBuffer_Release(&self->j_view);
        self->has_j = 0;
    }
    if (!self->hooks) mp_place_release(self); /* (a shared pool's: its close hook) */
    PyObject *r = PyObject_CallMethod((PyObject *)self->strategy, "_detach", NULL);
    if (!r) return NULL;
    Py_DECREF(r);
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    self->base = NULL;
    Py_RETURN_TRUE;
}

/* _set_journal(buffer, journal_offset, shadow_offset[, fd, placement[, log_offset,
 * log_entries]]): a persistent pool's journal, the shadow copy of its state and (format
 * 5) the redo log, in the file's mapping (recovered and validated before:
 * journal_recover()).  From now on every state change is a transaction. */
static PyObject *ext_pool_set_journal(PoolObject *self, PyObject *args)
{
    PyObject *buffer, *jo, *so, *place = NULL;
    uint64_t joff, soff;
    unsigned long long log_off = 0, log_n = 0;
    int fd = -1;
    if (!PyArg_ParseTuple(args, "OOO|iOKK", &buffer, &jo, &so, &fd, &place, &log_off, &log_n))
        return NULL;
    int big = mp_arg_u64(jo, "journal_offset", &joff);
    if (big < 0 || (big |= mp_arg_u64(so, "shadow_offset", &soff)) < 0) return NULL;
    if (big) {
        PyErr_SetString(PyExc_ValueError, "the journal and the shadow must be inside the buffer");
        return NULL;
    }
    if (self->has_j || self->closed || !self->strategy || self->hooks) {
        PyErr_SetString(PyExc_RuntimeError, "the journal is set already (or not this pool's)");
        return NULL;
    }
    if (PyObject_GetBuffer(buffer, &self->j_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    uint64_t len = (uint64_t)self->j_view.len, st_len = self->strategy->st_len;
    uint64_t lb = (uint64_t)log_n * MP_TX_LOG_ENTRY;
    if (joff % 64 || soff % 64 || !mp_fits(len, joff, MP_JOURNAL_BYTES) ||
        !mp_fits(len, soff, st_len) || !mp_apart(joff, MP_JOURNAL_BYTES, soff, st_len) ||
        (log_n && (log_off % 64 || log_n <= 2 * MP_TX_OPS || log_n > len / MP_TX_LOG_ENTRY ||
                   !mp_fits(len, log_off, lb) || !mp_apart(log_off, lb, soff, st_len) ||
                   !mp_apart(log_off, lb, joff, MP_JOURNAL_BYTES)))) {
        PyBuffer_Release(&self->j_view);
        PyErr_SetString(PyExc_ValueError, "the journal and the shadow must be inside the buffer, "
                    "apart");
        return NULL;
    }
    self->tx = PyMem_Malloc(sizeof *self->tx);
    if (!self->tx) {
        PyBuffer_Release(&self->j_view);
        return PyErr_NoMemory();
    }
    char *base = self->j_view.buf;
    mp_tx_setup(self->tx, (mp_journal_t *)(base + joff), OPS(self), ST(self), base + soff,
                st_len, NULL, NULL);
    if (log_n) mp_tx_set_log(self->tx, base + log_off, log_n);
    self->has_j = 1;
    self->strategy->served = MP_SERVED_TX; /* its own methods may no longer change it */
    /* fd, placement: the state grows into pairs past the file's end (place.c) */
    if (mp_place_setup(self, fd, base, len, place, (uint64_t)((char *)ST(self) - base), soff,
                       1) < 0)
        return NULL; /* (the journal is set: the pool works, its state does not grow) */
    Py_RETURN_NONE;
}

/* _checkpoint(): a file pool's shadow brought up to date and its redo log emptied (the
 * next open replays nothing): Pool.close() calls it while this process still holds the
 * file's lock, never a dealloc (a process ending without close() has let the lock go
 * by then, and the next opener may be at work in the file).  Not in a forked child's
 * copy (the file is its parent's), nor in a call left open. */
static PyObject *ext_pool_checkpoint(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->closed && self->tx && self->has_j && !self->hooks && mp_pool_here(self) &&
        !mp_tx_pending(self->tx))
        mp_tx_checkpoint(self->tx);
    Py_RETURN_NONE;
}

/* _sync_state(): msync the state's pair where it is mapped on its own (flush()). */
static PyObject *ext_pool_sync_state(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_place_sync(self) < 0) return NULL;
    Py_RETURN_NONE;
}

int mp_pool_grow(PoolObject *p)
{
    if (p->hooks) return 1;
    if (!p->tx) return mp_strategy_grow(p->strategy) == 0 ? 0 : 1;
    char msg[200];
    int rc = mp_place_grow(p, p->tx, msg, sizeof msg); /* (C only: the GIL stays held) */
    if (rc == MP_OK) return 0;
    if (rc != MP_EINVAL) return 1;
    PyObject *e = Py_BuildValue("(is)", errno, msg); /* the file refused (EFBIG, ENOSPC) */
    if (e) {
        PyErr_SetObject(PyExc_OSError, e);
        Py_DECREF(e);
    }
    return -1;
}

static PyObject *get_strategy_name(PoolObject *self, void *Py_UNUSED(c))
{
    if (!self->strategy) Py_RETURN_NONE;
    return PyUnicode_FromString(self->strategy->ops->name);
}
static PyObject *get_strategy(PoolObject *self, void *Py_UNUSED(c))
{
    if (!self->strategy) Py_RETURN_NONE;
    /* stats(), used, segments(), check()... read the state through this: NumPy's freed
     * ranges that the handler keeps go back first (handler.c) */
    mp_pool_settle(self);
    Py_INCREF(self->strategy);
    return (PyObject *)self->strategy;
}
/* _check_usable(): None, or PoolClosed (closed; or a forked child of the process whose
 * file mapping the pool is: the calls composed in Python check this too) */
static PyObject *ext_pool_check_usable(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_pool_check_open(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *get_closed(PoolObject *self, void *Py_UNUSED(c))
{
    /* closed, being closed, or never initialised: not usable */
    return PyBool_FromLong(self->closed || self->closing || !self->strategy || !self->strategy->st);
}
static PyObject *get_exports(PoolObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->exports);
}
static PyObject *get_capacity(PoolObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->capacity);
}
static PyObject *get_source(PoolObject *self, void *Py_UNUSED(c))
{
    PyObject *s = self->source ? self->source : Py_None;
    Py_INCREF(s);
    return s;
}
static PyObject *get_address(PoolObject *self, void *Py_UNUSED(c))
{
    if (mp_pool_check_open(self) < 0) return NULL;
    if (!self->base) Py_RETURN_NONE;
    return PyLong_FromVoidPtr(self->base);
}

static PyGetSetDef pool_getset[] = {
    {"strategy", (getter)get_strategy_name, NULL, "The strategy's name (\"tlsf\", ...).", NULL},
    {"_strategy", (getter)get_strategy, NULL,
     "The strategy object (private: freeing or resetting through it bypasses the pool's "
     "blocks).", NULL},
    {"closed", (getter)get_closed, NULL, "True after close() (and before initialisation).", NULL},
    {"exports", (getter)get_exports, NULL,
     "Views and arrays of the pool's memory alive now (close() needs 0).", NULL},
    {"capacity", (getter)get_capacity, NULL, "Bytes the pool manages.", NULL},
    {"source", (getter)get_source, NULL, "The memory source.", NULL},
    {"address", (getter)get_address, NULL,
     "Address of byte 0 of the pool in this process, or None over External memory.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef pool_methods[] = {
    {"alloc", (PyCFunction)(void (*)(void))ext_pool_alloc, METH_FASTCALL | METH_KEYWORDS,
     "alloc($self, /, size, align=16)\n--\n\n"
     "A Block of `size` bytes at an offset that is a multiple of `align`.\n"
     "Raises OutOfSpace, ValueError (size < 1, bad align), TypeError, PoolClosed."},
    {"try_alloc", (PyCFunction)(void (*)(void))ext_pool_try_alloc, METH_FASTCALL | METH_KEYWORDS,
     "try_alloc($self, /, size, align=16)\n--\n\n"
     "As alloc(), but None where alloc() raises OutOfSpace (nothing free fits, size beyond\n"
     "the capacity, the state full), without making an exception: for callers that try\n"
     "several pools in turn (RegionPool).  Every other error raises as alloc()'s does."},
    {"free", (PyCFunction)(void (*)(void))ext_pool_free, METH_FASTCALL,
     "free($self, block, /)\n--\n\n"
     "Give a block's range back.  BufferError while a view of it is alive; NotAllocated for\n"
     "a freed block or a block of another pool."},
    {"realloc", (PyCFunction)(void (*)(void))ext_pool_realloc, METH_FASTCALL,
     "realloc($self, block, size, /)\n--\n\n"
     "Resize a block to `size` bytes, keeping its bytes (moved with memmove when the range\n"
     "moves).  Returns the same Block, updated.  BufferError while a view of it is alive;\n"
     "on any error nothing changed."},
    {"block_at", (PyCFunction)(void (*)(void))ext_pool_block_at, METH_FASTCALL,
     "block_at($self, offset, /)\n--\n\n"
     "Another Block of the live range at `offset`, holding a reference to it like any other:\n"
     "the range is freed only when its last Block is released (free(), `with`, collection\n"
     "in pools whose blocks free on collection), and a Block never outlives its range.  It\n"
     "takes the size and alignment of a live Block of the range, or, when there is none (a\n"
     "pool reopened from a file), size_of(offset).  NotAllocated for any other offset."},
    {"empty", (PyCFunction)(void (*)(void))ext_pool_empty, METH_FASTCALL | METH_KEYWORDS,
     "empty($self, /, shape, dtype=float64)\n--\n\n"
     "A C-contiguous NumPy array in pool memory, as numpy.empty makes it; aligned for the dtype\n"
     "and to 64 bytes where the memory allows (a BufferMemory may be aligned less).  Its range is freed when the array is collected."},
    {"zeros", (PyCFunction)(void (*)(void))ext_pool_zeros, METH_FASTCALL | METH_KEYWORDS,
     "zeros($self, /, shape, dtype=float64)\n--\n\nAs empty(), filled with zeros."},
    {"_close_core", (PyCFunction)ext_pool_close_core, METH_NOARGS, NULL},
    {"_set_journal", (PyCFunction)ext_pool_set_journal, METH_VARARGS, NULL},
    {"_sync_state", (PyCFunction)ext_pool_sync_state, METH_NOARGS, NULL},
    {"_checkpoint", (PyCFunction)ext_pool_checkpoint, METH_NOARGS, NULL},
    {"_check_usable", (PyCFunction)ext_pool_check_usable, METH_NOARGS, NULL},
    /* pool.named (pool_named.c) */
    {"_named_bind", (PyCFunction)mp_ext_named_bind, METH_VARARGS, NULL},
    {"_named_find", (PyCFunction)mp_ext_named_find, METH_O, NULL},
    {"_named_owns", (PyCFunction)mp_ext_named_owns, METH_O, NULL},
    {"_named_put", (PyCFunction)(void (*)(void))mp_ext_named_put, METH_FASTCALL, NULL},
    {"_named_del", (PyCFunction)mp_ext_named_del, METH_O, NULL},
    {"_named_view", (PyCFunction)(void (*)(void))mp_ext_named_view, METH_FASTCALL, NULL},
    {"_array_over", (PyCFunction)(void (*)(void))mp_ext_array_over, METH_FASTCALL, NULL},
    {"_named_views", (PyCFunction)mp_ext_named_views, METH_O, NULL},
    {"_named_names", (PyCFunction)mp_ext_named_names, METH_NOARGS, NULL},
    {"_named_state", (PyCFunction)mp_ext_named_state, METH_NOARGS, NULL},
    {"_named_check", (PyCFunction)mp_ext_named_check, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyTypeObject PoolCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool._mempool.PoolCore",
    .tp_basicsize = sizeof(PoolObject),
    .tp_dealloc = (destructor)pool_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C half of mempool.Pool: a strategy over a buffer (see pool.py).",
    .tp_weaklistoffset = offsetof(PoolObject, weakreflist),
    .tp_methods = pool_methods,
    .tp_getset = pool_getset,
    .tp_init = (initproc)ext_pool_init,
    .tp_new = PyType_GenericNew,
};

int mp_pool_ready(PyObject *module)
{
    refresh_pid();
    pthread_atfork(NULL, NULL, refresh_pid);
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    return PyModule_AddType(module, &PoolCoreType); /* PyType_Ready + the module's attribute */
}
