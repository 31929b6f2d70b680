/*
 * block.c -- mempool.Block: one range of a pool, with the buffer protocol.
 *
 * Safety rules (DESIGN.md, "Memory and pools"):
 *  - a block holds a strong reference to its pool, and the pool to its source,
 *    so memory a block can reach stays mapped while the block lives;
 *  - every buffer export (memoryview, numpy.asarray, bytes) is counted on the
 *    block and on the pool: free() of a block with exports and close() of a pool
 *    with exports raise BufferError, as mmap.close() does;
 *  - a freed block, or a block of a closed pool, has no buffer and no address.
 */
#include "native.h"

#include <string.h>

BlockObject *mp_block_new(PoolObject *pool, uint64_t offset, uint64_t size, uint64_t align,
                          int owned)
{
#if PY_VERSION_HEX < 0x030C0000
    /* Before 3.12 an allocation the collector tracks may run a collection on the spot,
     * and with it any __del__ or weakref callback: Python code in the middle of the C
     * paths that make Blocks (a finalizer closing the pool inside a named put freed its
     * state under it).  3.12 and later only schedule it for the next safe point. */
    int gc_was = PyGC_Disable();
    BlockObject *b = PyObject_GC_New(BlockObject, &BlockType);
    if (gc_was) PyGC_Enable();
#else
    BlockObject *b = PyObject_GC_New(BlockObject, &BlockType);
#endif
    if (!b) return NULL;
    Py_INCREF(pool);
    b->pool = pool;
    b->offset = offset;
    b->size = size;
    b->align = align;
    b->exports = 0;
    b->live = 1;
    b->owned = owned;
    b->array = 0;
    b->pin = 0;
    b->tag = 0;
    b->pid = mp_getpid();
    b->owner = 0;
    b->entry = 0;
    b->twin = NULL;
    b->prev = NULL;
    b->next = pool->blocks;
    if (pool->blocks) pool->blocks->prev = b;
    pool->blocks = b;
    PyObject_GC_Track(b);
    return b;
}

/* A Block is seen by the cycle collector through its pool: a pool subclass that keeps
 * one of its Blocks (self.header = self.alloc(64)) is a cycle that is collected, its
 * lock and mapping let go.  No tp_clear: clearing the pool's __dict__ breaks the cycle,
 * and the Block then gives its range back to a pool that is still whole. */
static int block_traverse(BlockObject *b, visitproc visit, void *arg)
{
    Py_VISIT(b->pool);
    return 0;
}

/* The first unnamed array of a persistent pool whose range went with it (its data is
 * gone from the file): say so once per pool (errors.UnnamedArrayWarning).  Shared
 * pools are left alone: there a collected array is one reference of many. */
static void warn_unnamed(PoolObject *pool, BlockObject *b)
{
    if (!pool->tx || pool->hooks || pool->warned_unnamed) return;
    pool->warned_unnamed = 1;
    if (PyErr_WarnFormat(mp_UnnamedArrayWarning, 1,
                         "an unnamed array of a persistent pool was collected: its %llu bytes at "
                         "offset %llu were freed and are gone from the file (name it, "
                         "pool.named[name] = array, to keep it; given once per pool)",
                         (unsigned long long)b->size, (unsigned long long)b->offset) < 0)
        PyErr_WriteUnraisable((PyObject *)pool); /* warnings turned into errors */
}

static void block_dealloc(BlockObject *b)
{
    PyObject_GC_UnTrack(b);
    PoolObject *pool = b->pool;
    int was_array = b->array;
    if (b->array) { /* the array that owned the block is gone: so is its export */
        b->exports--;
        pool->exports--;
        b->array = 0;
    }
    /* (a shared pool's close() waits for the lock without the GIL, closing already: a
     * Block dropped meanwhile still gives its range back, sh_release) */
    if (b->live && b->owned && !pool->closed && (!pool->closing || pool->hooks) &&
        pool->strategy && pool->strategy->st && mp_pool_here(pool)) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb); /* may run while an exception is set */
        /* not b itself: its refcount is 0, and the hook would take and drop a reference */
        int kept = b->twin != NULL; /* another Block of the range keeps it */
        if (mp_pool_release(pool, b) < 0) PyErr_WriteUnraisable((PyObject *)pool);
        else if (was_array && !kept) warn_unnamed(pool, b);
        PyErr_Restore(et, ev, tb);
    }
    mp_block_leave(b); /* not released (not owned, pool closed, a failure): its twins stay */
    if (b->pin != 1) { /* (pins are in no list: pool_named.c) */
        if (b->prev) b->prev->next = b->next;
        else pool->blocks = b->next;
        if (b->next) b->next->prev = b->prev;
    }
    Py_DECREF(pool);
    PyObject_GC_Del(b);
}

/* 0 when the block can be used; else an exception is set. */
static int block_usable(BlockObject *b)
{
    if (b->pool->closed) {
        PyErr_SetString(mp_PoolClosed, "the block's pool is closed");
        return -1;
    }
    if (!mp_pool_here(b->pool)) { /* a forked child: the range may be the parent's anew */
        PyErr_Format(mp_PoolClosed, "the block's pool is shared with process %u, which "
                     "opened it: a forked child must open the file itself",
                     (unsigned)b->pool->bound_pid);
        return -1;
    }
    if (!b->live) {
        PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed",
                     (unsigned long long)b->offset);
        return -1;
    }
    return 0;
}

static int block_getbuffer(BlockObject *b, Py_buffer *view, int flags)
{
    if (block_usable(b) < 0) return -1;
    if (mp_pool_shutting(b->pool)) { /* close() has begun: no export may outlive the memory */
        PyErr_SetString(mp_PoolClosed, "the block's pool is being closed");
        return -1;
    }
    if (!b->pool->base) {
        PyErr_SetString(PyExc_TypeError,
                        "a block of a pool over External memory has no bytes (offsets only)");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)b, b->pool->base + b->offset, (Py_ssize_t)b->size, 0,
                          flags) < 0)
        return -1;
    b->exports++;
    b->pool->exports++;
    return 0;
}

static void block_releasebuffer(BlockObject *b, Py_buffer *Py_UNUSED(view))
{
    b->exports--;
    b->pool->exports--;
}

static PyBufferProcs block_as_buffer = {
    (getbufferproc)block_getbuffer,
    (releasebufferproc)block_releasebuffer,
};

static PyObject *ext_block_free(BlockObject *b, PyObject *Py_UNUSED(ignored))
{
    if (block_usable(b) < 0 || mp_pool_check_open(b->pool) < 0) return NULL;
    if (mp_pool_release(b->pool, b) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *ext_block_enter(BlockObject *b, PyObject *Py_UNUSED(ignored))
{
    if (block_usable(b) < 0) return NULL;
    Py_INCREF(b);
    return (PyObject *)b;
}

static PyObject *ext_block_exit(BlockObject *b, PyObject *Py_UNUSED(args))
{
    if (b->live && !b->pool->closed &&
        (mp_pool_check_open(b->pool) < 0 || mp_pool_release(b->pool, b) < 0))
        return NULL;
    Py_RETURN_FALSE;
}

/* pickling: shared pools turn a block into a handle; private pools cannot */
static PyObject *ext_block_reduce(BlockObject *b, PyObject *Py_UNUSED(ignored))
{
    if (block_usable(b) < 0) return NULL;
    if (!b->pool->hooks) {
        PyErr_SetString(PyExc_TypeError,
                        "a Block of a private Pool cannot be pickled (its memory is this "
                        "process's); use a SharedPool to pass blocks between processes");
        return NULL;
    }
    return b->pool->hooks->reduce(b->pool, b);
}

static PyObject *get_tag(BlockObject *b, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(b->tag);
}

static PyObject *ext_block_repr(BlockObject *b)
{
    const char *state = b->pool->closed ? " (pool closed)" : b->live ? "" : " (freed)";
    return PyUnicode_FromFormat("<mempool.Block offset=%llu size=%llu%s>",
                                (unsigned long long)b->offset, (unsigned long long)b->size,
                                state);
}

static PyObject *get_offset(BlockObject *b, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(b->offset);
}
static PyObject *get_size(BlockObject *b, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(b->size);
}
static PyObject *get_align(BlockObject *b, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(b->align);
}
static PyObject *get_pool(BlockObject *b, void *Py_UNUSED(c))
{
    Py_INCREF(b->pool);
    return (PyObject *)b->pool;
}
static PyObject *get_address(BlockObject *b, void *Py_UNUSED(c))
{
    if (block_usable(b) < 0) return NULL;
    if (!b->pool->base) {
        PyErr_SetString(PyExc_TypeError, "a block of a pool over External memory has no address");
        return NULL;
    }
    return PyLong_FromVoidPtr(b->pool->base + b->offset);
}
static PyObject *get_live(BlockObject *b, void *Py_UNUSED(c))
{
    return PyBool_FromLong(b->live && !b->pool->closed);
}
static PyObject *get_exports(BlockObject *b, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(b->exports);
}

static PyGetSetDef block_getset[] = {
    {"offset", (getter)get_offset, NULL, "Offset of the range in its pool, in bytes.", NULL},
    {"align", (getter)get_align, NULL,
     "The alignment the range was made with (kept when realloc moves it).", NULL},
    {"size", (getter)get_size, NULL, "Bytes of the range (what the buffer exposes).", NULL},
    {"pool", (getter)get_pool, NULL, "The pool the block belongs to.", NULL},
    {"address", (getter)get_address, NULL,
     "The range's address in this process (an int).  PoolClosed / NotAllocated once the pool\n"
     "is closed or the block freed; TypeError over External memory.",
     NULL},
    {"live", (getter)get_live, NULL, "False once freed or once the pool is closed.", NULL},
    {"exports", (getter)get_exports, NULL, "Buffer views of the block alive now.", NULL},
    {"tag", (getter)get_tag, NULL,
     "Shared pools: the allocation's unique tag (a handle names offset and tag); 0 otherwise.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef block_methods[] = {
    {"free", (PyCFunction)ext_block_free, METH_NOARGS,
     "free($self, /)\n--\n\nGive the range back to the pool.  BufferError while a view of the\n"
     "block is alive; NotAllocated when freed already; PoolClosed after close()."},
    {"__enter__", (PyCFunction)ext_block_enter, METH_NOARGS, NULL},
    {"__reduce__", (PyCFunction)ext_block_reduce, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)ext_block_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.Block",
    .tp_basicsize = sizeof(BlockObject),
    .tp_dealloc = (destructor)block_dealloc,
    .tp_repr = (reprfunc)ext_block_repr,
    .tp_as_buffer = &block_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)block_traverse,
    .tp_doc = "A range of a pool: offset, size, address, pool; the buffer protocol\n"
              "(memoryview(b), numpy.asarray(b), bytes(b)) without a copy; free(); a\n"
              "context manager that frees on exit.  Made by Pool.alloc, never directly.",
    .tp_methods = block_methods,
    .tp_getset = block_getset,
};

int mp_block_ready(PyObject *module)
{
    return PyModule_AddType(module, &BlockType); /* PyType_Ready + the module's attribute */
}
