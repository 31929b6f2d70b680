/*
 * range_methods.c -- the methods the range strategies' types (TLSF, BestFit) share and
 * no other strategy has: the handle form, alloc_handle / free_handle (mp_ops_t's;
 * ranges.h).  A handle is the int offset << 32 | node (the node alloc_handle carved):
 * free_handle frees only that node at exactly that offset.  Past offset 2**32 it is
 * more than 64 bits (a Python int holds it: mp_pair_new / mp_pair_split).
 */
#include "native.h"

/* Only a strategy of its own: a pool's holds its ranges by offset (its blocks, its
 * journal, its registry), and one mixing in another strategy type has that type's table. */
static int handle_ready(StrategyObject *self, const char *fn)
{
    if (!self->ops->alloc_handle) {
        PyErr_Format(PyExc_TypeError, "%s(): a %s has no handle form", fn, self->ops->name);
        return -1;
    }
    if (self->served) {
        PyErr_Format(PyExc_TypeError, "%s(): this strategy serves a Pool, which holds its "
                     "ranges by offset (use the pool's alloc)", fn);
        return -1;
    }
    return mp_strategy_closed(self) ? -1 : 0;
}

static PyObject *ext_alloc_handle(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    PyObject *vals[2] = {NULL, NULL};
    uint64_t size, align = 1, off = 0, node = 0;
    int big = mp_alloc_args(self, "alloc_handle", args, nargs, kwnames, vals, &size, &align);
    if (big < 0 || handle_ready(self, "alloc_handle") < 0) return NULL;
    if (big) return mp_raise_oos(self, vals[0], size, "", "larger than the capacity");
    int rc = self->ops->alloc_handle(self->st, size, align, &off, &node);
    while (rc == MP_ENONODES && mp_strategy_grow(self) == 0)
        rc = self->ops->alloc_handle(self->st, size, align, &off, &node);
    if (rc) return mp_raise(self, rc, size, align, 0);
    PyObject *a = PyLong_FromUnsignedLongLong(off);
    PyObject *b = a ? mp_pair_new(off, node) : NULL;
    PyObject *t = b ? PyTuple_New(2) : NULL;
    if (!t) { /* (the range stays allocated: as alloc's when its int cannot be made) */
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    return t;
}

static PyObject *ext_free_handle(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t node = 0, off = 0;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "free_handle() takes exactly one argument (%zd given)",
                     nargs);
        return NULL;
    }
    int big = mp_pair_split(args[0], "handle", "alloc_handle()", &off, &node);
    if (big < 0 || handle_ready(self, "free_handle") < 0) return NULL;
    int rc = big ? MP_ENOTALLOC : self->ops->free_handle(self->st, node, off);
    if (rc == MP_ENOTALLOC) {
        PyErr_Format(mp_NotAllocated, "handle %S names no live range allocated by handle",
                     args[0]);
        return NULL;
    }
    if (rc) return mp_raise(self, rc, 0, 1, 0);
    Py_RETURN_NONE;
}

PyMethodDef mp_range_methods[] = {
    {"alloc_handle", (PyCFunction)(void (*)(void))ext_alloc_handle, METH_FASTCALL | METH_KEYWORDS,
     "alloc_handle($self, /, size, align=1)\n--\n\n"
     "The range alloc(size, align) would give, as (offset, handle); free_handle(handle)\n"
     "gives it back without looking the offset up (OffsetAllocator's form).  The offset\n"
     "calls (free, size_of, realloc) do not see a range allocated by handle.  The handle\n"
     "is the int offset << 32 | node.\n\n"
     "Raises OutOfSpace when nothing free fits, ValueError for size < 1 or an align that\n"
     "is not a positive power of two, TypeError for non-integers and on the strategy of\n"
     "a Pool (which holds its ranges by offset)."},
    {"free_handle", (PyCFunction)(void (*)(void))ext_free_handle, METH_FASTCALL,
     "free_handle($self, handle, /)\n--\n\n"
     "Give back the range alloc_handle() returned `handle` with.  NotAllocated when the\n"
     "handle names no live range allocated by handle (freed, or never handed out)."},
    {NULL, NULL, 0, NULL},
};

