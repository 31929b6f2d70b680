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
#include <stdlib.h>
#include <string.h>

typedef struct mp_handler {
    PyDataMem_Handler h; /* first: NumPy reads the capsule's pointer as this        */
    PoolObject *pool;    /* strong reference                                     */
    int fallback;        /* serve from malloc when the pool cannot (counted)     */
    uint64_t allocs, frees, fallbacks, fallback_bytes, failures;
    uint64_t live; /* ranges of the pool held by NumPy arrays now                   */
} mp_handler_t;

#define CAPSULE_NAME "mem_handler"

typedef struct {
    int taken;
    PyGILState_STATE st;
} gil_t;
static inline gil_t gil_take(void)
{
    gil_t g = {0, PyGILState_UNLOCKED};
    if (!PyGILState_Check()) {
        g.st = PyGILState_Ensure();
        g.taken = 1;
    }
    return g;
}
static inline void gil_give(gil_t g)
{
    if (g.taken) PyGILState_Release(g.st);
}

static inline int in_pool(const PoolObject *p, const void *ptr)
{
    return p->base && (const char *)ptr >= p->base && (const char *)ptr < p->base + p->capacity;
}

/* The pool can take a request now. */
static inline int usable(const PoolObject *p)
{
    return !p->closed && !p->closing && p->base && p->strategy && p->strategy->st &&
           mp_pool_here(p);
}

/* A range for size bytes (GIL held), or NULL. */
static void *pool_get(mp_handler_t *H, size_t size)
{
    PoolObject *p = H->pool;
    if (!usable(p)) return NULL;
    uint64_t n = size ? (uint64_t)size : 1, off;
    /* malloc's 16 for small requests (NumPy's own), a cache line for the rest */
    uint64_t align = n >= 64 ? 64 : 16;
    if (align > p->base_align) align = p->base_align;
    if (mp_pool_raw_alloc(p, n, align, &off) != MP_OK) return NULL;
    p->exports++;
    H->allocs++;
    H->live++;
    return p->base + off;
}

static void pool_put(mp_handler_t *H, void *ptr)
{
    PoolObject *p = H->pool;
    uint64_t off = (uint64_t)((char *)ptr - p->base);
    p->exports--;
    H->frees++;
    H->live--;
    /* (a forked child of a file pool's owner leaves the file's state alone) */
    if (!p->closed && p->strategy && p->strategy->st && mp_pool_here(p) &&
        mp_pool_raw_free(p, off) != MP_OK)
        H->failures++; /* (never: the range is ours) */
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

static void *h_malloc(void *ctx, size_t size)
{
    mp_handler_t *H = ctx;
    gil_t g = gil_take();
    void *r = pool_get(H, size);
    if (!r) r = fallback_get(H, size, 0);
    gil_give(g);
    return r;
}

static void *h_calloc(void *ctx, size_t nelem, size_t elsize)
{
    mp_handler_t *H = ctx;
    if (elsize && nelem > SIZE_MAX / elsize) return NULL;
    size_t size = nelem * elsize;
    gil_t g = gil_take();
    void *r = pool_get(H, size);
    if (r) memset(r, 0, size);
    else r = fallback_get(H, size, 1);
    gil_give(g);
    return r;
}

static void h_free(void *ctx, void *ptr, size_t size)
{
    (void)size; /* the strategy knows its ranges' sizes */
    mp_handler_t *H = ctx;
    if (!ptr) return;
    gil_t g = gil_take();
    if (in_pool(H->pool, ptr)) pool_put(H, ptr);
    else free(ptr);
    gil_give(g);
}

static void *h_realloc(void *ctx, void *ptr, size_t new_size)
{
    mp_handler_t *H = ctx;
    if (!ptr) return h_malloc(ctx, new_size);
    gil_t g = gil_take();
    void *r = NULL;
    if (in_pool(H->pool, ptr)) {
        PoolObject *p = H->pool;
        uint64_t old = 0;
        if (usable(p)) old = mp_pool_raw_size(p, (uint64_t)((char *)ptr - p->base));
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
    gil_give(g);
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
                         (unsigned long long)H->frees, "live", (unsigned long long)H->live,
                         "fallbacks",
                         (unsigned long long)H->fallbacks, "fallback_bytes",
                         (unsigned long long)H->fallback_bytes, "failures",
                         (unsigned long long)H->failures);
}

static PyMethodDef handler_methods[] = {
    {"numpy_handler", ext_numpy_handler, METH_VARARGS,
     "numpy_handler($module, pool, fallback, /)\n--\n\n"
     "A NEP 49 handler (a 'mem_handler' capsule) whose allocations come from pool."},
    {"set_numpy_handler", ext_set_numpy_handler, METH_O,
     "set_numpy_handler($module, handler, /)\n--\n\n"
     "Install handler (None: NumPy's default) for the current context; the previous one."},
    {"handler_stats", ext_handler_stats, METH_O,
     "handler_stats($module, handler, /)\n--\n\nThe handler's counters, a dict."},
    {NULL, NULL, 0, NULL},
};

int mp_handler_ready(PyObject *module) { return PyModule_AddFunctions(module, handler_methods); }
