/*
 * pool_named.c -- the C methods of PoolCore behind pool.named (mempool/named.py): the
 * directory of _core/named.h in the pool's memory, changed inside the pool's own
 * transaction (file pools: the file's journal; private pools: plain stores).
 *
 * The name's reference.  In this process a named range has a "pin": a Block with
 * pin = 1 (owned = 0: never frees on collection), in the ring of twins of the range's
 * Blocks, so that the Blocks and arrays of the range a user holds (an adopted array,
 * a view made by pool.named[k]) only leave the ring when they go: the range stays the
 * name's.  Views count as every other Block of the range: deleting or replacing a name
 * while any of them is alive raises BufferError, nothing changed.  Pins are in no
 * pool->blocks list (a pool may hold 100k names: the walks below, over the Blocks a
 * user holds, stay short); named.py's cache holds them, one per name looked up or
 * written in this process, and drops a name's pin when the name goes.
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL mempool_ARRAY_API
#define NO_IMPORT_ARRAY
#include "native.h"

#include <numpy/arrayobject.h>
#include <string.h>

/* The directory reads the strategy's state as it is now: every entry point calls this
 * (check() did not, and read a private state freed by its growth: a segfault). */
static void named_sync(PoolObject *self)
{
    self->named->st = self->strategy->st; /* (a private state moves when it grows) */
    self->named->ops = self->strategy->ops; /* (set_limit / a recording wrap the table) */
}

static int named_ready(PoolObject *self)
{
    if (mp_pool_check_open(self) < 0) return -1;
    if (!self->named) {
        PyErr_SetString(PyExc_TypeError, "this pool has no directory of named arrays");
        return -1;
    }
    named_sync(self);
    return 0;
}

static PyObject *corrupt(const char *msg)
{
    PyErr_Format(mp_CorruptionError, "%s", msg);
    return NULL;
}

/* The UTF-8 bytes of a name (checked by named.py; checked again: this is the door). */
const char *mp_named_name_of(PyObject *o, uint32_t *n)
{
    Py_ssize_t len;
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "a name must be a str, not %.100s", Py_TYPE(o)->tp_name);
        return NULL;
    }
    const char *s = PyUnicode_AsUTF8AndSize(o, &len);
    if (!s) return NULL;
    if (len < 1 || len > MP_NAMED_MAX_NAME) {
        PyErr_Format(PyExc_ValueError, "a name must be 1 to %d bytes of UTF-8, got %zd",
                     MP_NAMED_MAX_NAME, len);
        return NULL;
    }
    *n = (uint32_t)len;
    return s;
}

/* _named_bind(buffer, offset): the directory's root is buffer[offset:offset+64]
 * (validated: CorruptionError); a file pool's journal may undo-log the root's words and
 * the data's (the table's slots) from now on. */
PyObject *mp_ext_named_bind(PoolObject *self, PyObject *args)
{
    PyObject *buffer, *oo;
    uint64_t off;
    if (!PyArg_ParseTuple(args, "OO", &buffer, &oo)) return NULL;
    if (mp_arg_u64(oo, "offset", &off)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "offset out of range");
        return NULL;
    }
    if (mp_pool_check_open(self) < 0) return NULL;
    if (self->has_named || !self->base) {
        PyErr_SetString(PyExc_RuntimeError, "the directory is bound already (or no memory)");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(buffer, &v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    char *root = (char *)v.buf + off;
    if (!mp_fits((uint64_t)v.len, off, MP_NAMED_ROOT_BYTES) || ((uintptr_t)root & 7)) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "the root must lie inside the buffer, 8-aligned");
        return NULL;
    }
    mp_named_t *d = PyMem_Calloc(1, sizeof *d);
    if (!d) {
        PyBuffer_Release(&v);
        return PyErr_NoMemory();
    }
    d->root = (mp_named_root_t *)root;
    d->base = self->base;
    d->cap = self->capacity;
    d->ops = self->strategy->ops;
    d->st = self->strategy->st;
    d->tx = self->tx;
    char msg[200];
    if (mp_named_check_root(d, msg, sizeof msg)) {
        PyMem_Free(d);
        PyBuffer_Release(&v);
        return corrupt(msg);
    }
    if (self->tx) { /* the root (in the file's header page) up to the data's end */
        char *hi = self->base + self->capacity;
        if (root > (char *)self->tx->j && root < hi) {
            self->tx->undo_lo = root;
            self->tx->undo_hi = hi;
        }
    }
    self->named = d;
    self->named_view = v;
    self->has_named = 1;
    Py_RETURN_NONE;
}

void mp_named_release(PoolObject *self)
{
    if (self->named) mp_named_forget(self->named);
    PyMem_Free(self->named);
    self->named = NULL;
    if (self->has_named) {
        PyBuffer_Release(&self->named_view);
        self->has_named = 0;
    }
}

/* Views of the range at data alive in this process: every live Block of it in the
 * list (the pins are in none; they are never handed out). */
static Py_ssize_t views_of(PoolObject *self, uint64_t data)
{
    Py_ssize_t n = 0;
    for (BlockObject *b = self->blocks; b; b = b->next)
        if (b->live && b->offset == data) n++;
    return n;
}

/* A pin (not yet live, in no list) for the range at data. */
static BlockObject *pin_alloc(PoolObject *self, uint64_t data, uint64_t dsize)
{
    BlockObject *p = mp_block_new(self, data, dsize, 1, 0);
    if (!p) return NULL;
    self->blocks = p->next; /* mp_block_new put it first */
    if (p->next) p->next->prev = NULL;
    p->next = p->prev = NULL;
    p->pin = 1;
    p->live = 0;
    return p;
}

/* The pin goes live, in the ring of the range's Blocks. */
static void pin_live(PoolObject *self, BlockObject *p, uint64_t data, uint64_t dsize)
{
    p->offset = data;
    p->size = dsize;
    p->live = 1;
    for (BlockObject *t = self->blocks; t; t = t->next)
        if (t->live && t->offset == data) {
            mp_block_join(p, t);
            break;
        }
}

static void tx_begin(PoolObject *self)
{
    if (self->tx) mp_tx_begin(self->tx);
}
static void tx_commit(PoolObject *self)
{
    if (self->tx) mp_tx_commit(self->tx);
}

/* _named_find(name) -> None, or (record bytes, pin Block) */
/* Where `name` is filed: 0 with *slot and *rec; 1 when it is not; -1 with the exception
 * set (a bad name, a closed pool, a corrupt directory). */
static int lookup(PoolObject *self, PyObject *name, uint64_t *slot, uint64_t *rec)
{
    uint32_t n;
    const char *s = mp_named_name_of(name, &n);
    if (!s || named_ready(self) < 0) return -1;
    char msg[200];
    int rc = mp_named_find(self->named, s, n, mp_named_hash(s, n), slot, rec, msg, sizeof msg);
    if (rc == MP_ENOTALLOC) return 1;
    if (rc) {
        corrupt(msg);
        return -1;
    }
    return 0;
}

PyObject *mp_ext_named_find(PoolObject *self, PyObject *name)
{
    uint64_t slot, rec;
    int rc = lookup(self, name, &slot, &rec);
    if (rc < 0) return NULL;
    if (rc) Py_RETURN_NONE;
    mp_named_t *d = self->named;
    const mp_named_rec_t *h = (const mp_named_rec_t *)(d->base + rec);
    PyObject *bytes = PyBytes_FromStringAndSize(d->base + rec, (Py_ssize_t)h->size);
    if (!bytes) return NULL;
    BlockObject *pin = pin_alloc(self, h->data, h->dsize);
    if (!pin) {
        Py_DECREF(bytes);
        return NULL;
    }
    pin_live(self, pin, h->data, h->dsize);
    return Py_BuildValue("(NN)", bytes, (PyObject *)pin);
}

/* _named_owns(offset) -> bool: is the range at offset some name's? */
PyObject *mp_ext_named_owns(PoolObject *self, PyObject *o)
{
    uint64_t off;
    int big = mp_arg_u64(o, "offset", &off);
    if (big < 0 || named_ready(self) < 0) return NULL;
    if (big) Py_RETURN_FALSE;
    int rc = mp_named_owns(self->named, off);
    if (rc < 0) return corrupt("named directory: a record offset outside the pool");
    return PyBool_FromLong(rc);
}

int mp_named_put_args(PyObject *const *args, Py_ssize_t nargs, mp_named_put_args_t *a)
{
    *a = (mp_named_put_args_t){0};
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_named_put() takes 5 arguments");
        return -1;
    }
    a->name = mp_named_name_of(args[0], &a->n);
    if (!a->name) return -1;
    if (!PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[1]) < MP_NAMED_REC_HEAD) {
        PyErr_SetString(PyExc_TypeError, "record must be bytes of a record");
        return -1;
    }
    /* never write a record the directory's own check would call corrupt (mp_named_rec_ok:
     * it would stay there, unreadable and undeletable) */
    mp_named_rec_t h;
    memcpy(&h, PyBytes_AS_STRING(args[1]), sizeof h);
    if (h.kind > 2 || h.ndim > MP_NAMED_MAX_NDIM || h.name_len != a->n ||
        h.dtype_len > MP_NAMED_MAX_DTYPE ||
        (uint64_t)PyBytes_GET_SIZE(args[1]) !=
            MP_NAMED_REC_HEAD + 16ull * h.ndim + h.name_len + h.dtype_len) {
        PyErr_Format(PyExc_ValueError, "not a record this directory can hold (kind %u, %u "
                     "dimensions, a name of %u bytes, a dtype of %u: at most 2, %d, the "
                     "name's, %d)", h.kind, h.ndim, h.name_len, h.dtype_len,
                     MP_NAMED_MAX_NDIM, MP_NAMED_MAX_DTYPE);
        return -1;
    }
    if (mp_arg_u64(args[4], "view", &a->view)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "view out of range");
        return -1;
    }
    if (args[2] != Py_None) {
        if (PyObject_GetBuffer(args[2], &a->src, PyBUF_C_CONTIGUOUS) < 0) return -1;
        a->has_src = 1;
    } else if (PyObject_TypeCheck(args[3], &BlockType)) {
        a->blk = (BlockObject *)args[3];
    } else {
        PyErr_SetString(PyExc_TypeError, "_named_put needs a source buffer or a Block");
        return -1;
    }
    return 0;
}

/* _named_put(name, record, source, block, view) -> the pin Block of the named range.
 * record: the record's bytes (its data/dsize/view fields are filled in here);
 * source: a C-contiguous buffer to copy into a new range (block None), or None;
 * block: a live Block of this pool whose range is adopted (source None);
 * view: the byte offset of element 0 from the data range's start.
 * An existing name is replaced (BufferError while a view of its range is alive); the
 * whole call is one transaction: on any error nothing changed. */
PyObject *mp_ext_named_put(PoolObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    mp_named_put_args_t a;
    if (mp_named_put_args(args, nargs, &a) < 0) return NULL;
    const char *s = a.name;
    uint32_t n = a.n;
    uint64_t view = a.view;
    int has_src = a.has_src;
    BlockObject *blk = a.blk;
    PyObject *result = NULL;
    BlockObject *pin = NULL;
    char msg[200];
    if (named_ready(self) < 0) goto out;
    mp_pool_settle(self); /* the ranges NumPy freed go back: room for the name */
    mp_named_t *d = self->named;
    if (blk && (blk->pool != self || !blk->live)) {
        PyErr_SetString(mp_NotAllocated, "the block is not a live block of this pool");
        goto out;
    }
    uint64_t hash = mp_named_hash(s, n), slot = 0, old = 0, data, dsize;
    int rc = mp_named_find(d, s, n, hash, &slot, &old, msg, sizeof msg);
    if (rc && rc != MP_ENOTALLOC) {
        corrupt(msg);
        goto out;
    }
    int exists = rc == MP_OK;
    const mp_named_rec_t *oh = exists ? (const mp_named_rec_t *)(d->base + old) : NULL;
    uint64_t old_data = exists ? oh->data : 0;
    if (exists) {
        Py_ssize_t v = views_of(self, old_data);
        if (v) {
            PyErr_Format(PyExc_BufferError, "cannot replace the array named %R: %zd view(s) of "
                         "it are alive", args[0], v);
            goto out;
        }
    }
    if (blk) {
        data = blk->offset;
        if (d->ops->size_of(d->st, data, &dsize) != MP_OK) {
            PyErr_SetString(mp_NotAllocated, "the block's range is not live");
            goto out;
        }
        rc = mp_named_owns(d, data);
        if (rc) {
            if (rc > 0) PyErr_SetString(PyExc_ValueError, "the range is named already");
            else corrupt("named directory: a record offset outside the pool");
            goto out;
        }
    } else {
        dsize = a.src.len ? (uint64_t)a.src.len : 1;
        data = 0;
    }
    if (view >= dsize && !(view == 0)) {
        PyErr_SetString(PyExc_ValueError, "view lies outside the data range");
        goto out;
    }
    pin = pin_alloc(self, data, dsize); /* made first: nothing to undo for it */
    if (!pin) goto out;
    uint64_t rlen = (uint64_t)PyBytes_GET_SIZE(args[1]), rec;
    uint64_t got[2];
    int ngot = 0;
    /* a private pool undoes a failure by freeing what it took: the head's high marks
     * (and the next-fit cursor) are put back too, so stats() is as before */
    uint64_t dsize0 = dsize;
retry:;
    mp_head_t head0 = *(mp_head_t *)d->st;
    tx_begin(self);
    if (has_src) {
        rc = mp_named_alloc(d, dsize, 64, &data);
        if (rc) goto fail;
        got[ngot++] = data;
        d->ops->size_of(d->st, data, &dsize);
        if (a.src.len) memcpy(d->base + data, a.src.buf, (size_t)a.src.len);
    }
    rc = mp_named_alloc(d, rlen, 8, &rec);
    if (rc) goto fail;
    got[ngot++] = rec;
    mp_named_rec_write(d, rec, PyBytes_AS_STRING(args[1]), rlen, hash, data, dsize, view);
    if (exists) {
        mp_named_replace(d, slot, rec);
        mp_named_free(d, old);
        if (old_data != data) mp_named_free(d, old_data);
    } else {
        rc = mp_named_insert(d, hash, rec);
        if (rc) goto fail;
    }
    tx_commit(self);
    pin_live(self, pin, data, dsize); /* (the old name's pin goes with named.py's cache) */
    result = (PyObject *)pin;
    pin = NULL;
    goto out;
fail:;
    /* what did not fit: the data, the record, or (both taken) the grown table */
    int step = ngot + !has_src; /* 0: the data, 1: the record, 2: the table */
    uint64_t asked = step == 0 ? dsize : step == 1 ? rlen
                   : 32 * (d->root->slots ? d->root->slots : 8);
    uint64_t aalign = step == 1 ? 8 : 64;
    if (self->tx) {
        mp_tx_abort(self->tx);
    } else {
        while (ngot > 0) mp_named_free(d, got[--ngot]);
        mp_head_t *hd = d->st;
        hd->peak_used = head0.peak_used;
        hd->high_water = head0.high_water;
        hd->cursor = head0.cursor;
    }
    if (rc == MP_ENONODES) { /* the state is full: it grows, and the put starts over */
        int g = mp_pool_grow(self);
        if (g < 0) goto out;
        if (g == 0) {
            d->st = self->strategy->st;
            ngot = 0;
            dsize = dsize0;
            if (has_src) data = 0;
            goto retry;
        }
    }
    if (rc == MP_ECORRUPT) PyErr_SetString(mp_CorruptionError, MP_NAMED_FULL);
    else mp_raise(self->strategy, rc, asked, aalign, 0);
out:
    Py_XDECREF(pin);
    if (has_src) PyBuffer_Release(&a.src);
    return result;
}

/* A name's slot, record and data range: 0, or -1 with KeyError (absent) or another
 * error set. */
static int find_name(PoolObject *self, PyObject *name, uint64_t *slot, uint64_t *rec,
                     uint64_t *data)
{
    int rc = lookup(self, name, slot, rec);
    if (rc < 0) return -1;
    if (rc) {
        PyErr_SetObject(PyExc_KeyError, name);
        return -1;
    }
    *data = ((const mp_named_rec_t *)(self->named->base + *rec))->data;
    return 0;
}

/* _named_del(name): KeyError when absent, BufferError while a view is alive. */
PyObject *mp_ext_named_del(PoolObject *self, PyObject *name)
{
    uint64_t slot, rec, data;
    if (find_name(self, name, &slot, &rec, &data) < 0) return NULL;
    mp_named_t *d = self->named;
    Py_ssize_t v = views_of(self, data);
    if (v) {
        PyErr_Format(PyExc_BufferError, "cannot delete the array named %R: %zd view(s) of it "
                     "are alive", name, v);
        return NULL;
    }
    tx_begin(self);
    mp_named_remove(d, slot);
    mp_named_free(d, rec);
    mp_named_free(d, data);
    tx_commit(self);
    Py_RETURN_NONE;
}

/* An array of `type` over b's range from byte `off`, with descr (a reference stolen),
 * shape and strides (tuples of as many ints, at most MP_NAMED_MAX_NDIM): the array owns
 * b, its one export (b->array: b's reference to the range goes when the array does),
 * so close() and b.free() refuse while it lives.  A shape, strides or offset that
 * reaches outside the range (crafted bytes: a directory record, a pickle) is a
 * CorruptionError, checked here in 128-bit arithmetic (NumPy's own check of a buffer's
 * bounds overflows on strides near 2**63). */
static PyObject *array_over(PoolObject *self, BlockObject *b, PyTypeObject *type,
                            PyArray_Descr *descr, PyObject *shape, PyObject *strides,
                            PyObject *offset)
{
    int nd = (int)PyTuple_GET_SIZE(shape);
    npy_intp dims[MP_NAMED_MAX_NDIM], st[MP_NAMED_MAX_NDIM];
    Py_ssize_t off = PyLong_AsSsize_t(offset);
    /* the extent: [lo, hi) relative to element 0, inside the range; each term is under
     * 2**125 and the sums stop at the first that leaves the range, so nothing overflows
     * (a broadcast view has stride 0 along dimensions of any length) */
    __int128 lo = 0, hi = (__int128)PyDataType_ELSIZE(descr), size = (__int128)b->size;
    int empty = 0, out = (off == -1 && PyErr_Occurred()) || off < 0 || (uint64_t)off > b->size;
    for (int k = 0; k < nd && !out; k++) { /* every dimension first: one of length 0 */
        dims[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, k));
        st[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(strides, k));
        /* (a stride matters only along more than one element: there it is under 2**62) */
        out = PyErr_Occurred() || dims[k] < 0 ||
              (dims[k] > 1 && (st[k] >= ((npy_intp)1 << 62) || st[k] <= -((npy_intp)1 << 62)));
        empty |= dims[k] == 0;
    }
    for (int k = 0; k < nd && !out && !empty; k++) { /* (no element: no extent) */
        if (dims[k] <= 1) continue;
        if (st[k] > 0) hi += (__int128)st[k] * (dims[k] - 1);
        else lo += (__int128)st[k] * (dims[k] - 1);
        out = off + lo < 0 || off + hi > size;
    }
    if (!out && !empty) out = off + lo < 0 || off + hi > size;
    if (out) { /* (an overflow of a crafted int, too: a CorruptionError like the rest) */
        PyErr_Clear();
        PyErr_SetString(mp_CorruptionError, "an array's record: its shape, strides or "
                        "offset reach outside its range");
        goto fail;
    }
    if (!b->live || b->exports || b->array || b->pool != self || !self->base) {
        PyErr_SetString(PyExc_ValueError, "an array over a block takes a live block of this "
                        "pool with no views");
        goto fail;
    }
    /* the export is counted before the array is made: making an instance of a Python
     * subclass (SharedArray) may run a collection on 3.11, and a finalizer there closed
     * the pool, which then unmapped the memory the new array was over (SIGSEGV) */
    b->array = 1;
    b->exports = 1;
    self->exports++;
    PyObject *arr = PyArray_NewFromDescr(type, descr, nd, dims, st,
                                         self->base + b->offset + off, NPY_ARRAY_WRITEABLE,
                                         NULL); /* (steals descr) */
    if (!arr) {
        b->array = 0;
        b->exports = 0;
        self->exports--;
        if (PyErr_ExceptionMatches(PyExc_ValueError)) { /* NumPy's own limits: too big */
            PyErr_Clear();
            PyErr_SetString(mp_CorruptionError, "an array's record: NumPy refuses its shape");
        }
        return NULL;
    }
    Py_INCREF(b);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)b) < 0) { /* (steals b) */
        /* (not reached for a fresh array): the export goes with the array that failed */
        b->array = 0;
        b->exports = 0;
        self->exports--;
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
fail:
    Py_DECREF(descr);
    return NULL;
}

static int array_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t n, int typed,
                      const char *usage)
{
    if (nargs < n || nargs > n + typed || !PyObject_TypeCheck(args[0], &BlockType) ||
        !PyArray_DescrCheck(args[1]) || !PyTuple_Check(args[2]) || !PyTuple_Check(args[3]) ||
        PyTuple_GET_SIZE(args[2]) != PyTuple_GET_SIZE(args[3]) ||
        PyTuple_GET_SIZE(args[2]) > MP_NAMED_MAX_NDIM || !PyLong_Check(args[4]) ||
        (nargs == n + 1 && (!PyType_Check(args[n]) || !mp_is_ndarray_type(args[n])))) {
        PyErr_Format(PyExc_TypeError, "%s", usage);
        return -1;
    }
    return 0;
}

/* _array_over(block, dtype, shape, strides, offset[, type]) -> an array over the block's
 * range, which owns the block (array_over): a shared pool's views of a named range and
 * of an unpickled handle, made by shared.py over a Block of their own. */
PyObject *mp_ext_array_over(PoolObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (array_args(args, nargs, 5, 1, "_array_over(block, dtype, shape, strides, offset[, type])") <
            0 ||
        mp_pool_check_open(self) < 0)
        return NULL;
    PyArray_Descr *descr = (PyArray_Descr *)args[1];
    Py_INCREF(descr);
    return array_over(self, (BlockObject *)args[0],
                      nargs == 6 ? (PyTypeObject *)args[5] : &PyArray_Type, descr, args[2],
                      args[3], args[4]);
}

int mp_named_not_meta(PoolObject *self, uint64_t off, PyObject *what)
{
    if (self->named && !self->hooks) named_sync(self); /* (a shared pool's is the lock's) */
    int rc = self->named ? mp_named_meta(self->named, off) : 0;
    if (rc == 0) return 0;
    if (rc == 1)
        PyErr_Format(mp_NotAllocated, "offset %S is a range of the pool's directory of named "
                     "arrays (its table or a record), not a block", what);
    else
        PyErr_SetString(mp_CorruptionError, "named directory: a record offset outside the "
                        "pool");
    return -1;
}

/* _named_views(name) -> the views of the name's range alive in this process (what makes
 * its deletion a BufferError); KeyError when absent. */
PyObject *mp_ext_named_views(PoolObject *self, PyObject *name)
{
    if (self->hooks) { /* (a shared pool's directory is read under its lock, elsewhere) */
        PyErr_SetString(PyExc_TypeError, "_named_views() is for private and file pools");
        return NULL;
    }
    uint64_t slot, rec, data;
    if (find_name(self, name, &slot, &rec, &data) < 0) return NULL;
    return PyLong_FromSsize_t(views_of(self, data));
}

/* _named_view(pin, dtype, shape, strides, offset) -> ndarray over the pin's range, a
 * view of its own (a twin Block, counted as an export) */
PyObject *mp_ext_named_view(PoolObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs == 5 && args[1] == Py_None && PyObject_TypeCheck(args[0], &BlockType)) {
        /* a Block of the range (a named Block), in the pin's ring: never frees it */
        BlockObject *pin = (BlockObject *)args[0];
        if (mp_pool_check_open(self) < 0) return NULL;
        if (pin->pool != self || !pin->live || !pin->pin) {
            PyErr_SetString(PyExc_KeyError, "the name was deleted");
            return NULL;
        }
        BlockObject *b = mp_block_new(self, pin->offset, pin->size, 1, 0);
        if (b) mp_block_join(b, pin);
        return (PyObject *)b;
    }
    if (array_args(args, nargs, 5, 0, "_named_view(pin, dtype, shape, strides, offset)") < 0)
        return NULL;
    BlockObject *pin = (BlockObject *)args[0];
    if (mp_pool_check_open(self) < 0) return NULL;
    if (pin->pool != self || !pin->live || !pin->pin) {
        PyErr_SetString(PyExc_KeyError, "the name was deleted");
        return NULL;
    }
    BlockObject *b = mp_block_new(self, pin->offset, pin->size, pin->align, 0);
    if (!b) return NULL;
    mp_block_join(b, pin);
    PyArray_Descr *descr = (PyArray_Descr *)args[1];
    Py_INCREF(descr);
    PyObject *arr = array_over(self, b, &PyArray_Type, descr, args[2], args[3], args[4]);
    Py_DECREF(b); /* the array's now (or gone with it) */
    return arr;
}

static int name_one(void *ctx, uint64_t rec)
{
    void **c = ctx;
    mp_named_t *d = c[0];
    PyObject *list = c[1];
    char msg[200];
    if (mp_named_rec_ok(d, rec, msg, sizeof msg)) {
        PyErr_Format(mp_CorruptionError, "%s", msg);
        return -1;
    }
    const mp_named_rec_t *h = (const mp_named_rec_t *)(d->base + rec);
    PyObject *s = PyUnicode_DecodeUTF8(d->base + rec + MP_NAMED_REC_HEAD + 16ull * h->ndim,
                                       h->name_len, "strict");
    if (!s) {
        PyErr_Clear();
        PyErr_SetString(mp_CorruptionError, "named directory: a name that is not UTF-8");
        return -1;
    }
    int rc = PyList_Append(list, s);
    Py_DECREF(s);
    return rc;
}

/* _named_names() -> list of str */
PyObject *mp_ext_named_names(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (named_ready(self) < 0) return NULL;
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    void *c[2] = {self->named, list};
    if (mp_named_walk(self->named, name_one, c)) Py_CLEAR(list);
    return list;
}

/* _named_state() -> (count, gen) */
PyObject *mp_ext_named_state(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (named_ready(self) < 0) return NULL;
    return Py_BuildValue("(KK)", (unsigned long long)self->named->root->count,
                         (unsigned long long)self->named->root->gen);
}

/* _named_check(): the whole directory (CorruptionError) */
PyObject *mp_ext_named_check(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_pool_check_open(self) < 0) return NULL;
    if (!self->named) Py_RETURN_NONE; /* a pool without one (External memory) */
    named_sync(self);
    char msg[200];
    if (mp_named_check(self->named, msg, sizeof msg)) return corrupt(msg);
    Py_RETURN_NONE;
}
