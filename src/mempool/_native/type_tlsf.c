/*
 * type_tlsf.c -- mempool.TLSF: the constructor over _core/tlsf.c; with it what the
 * range strategies (TLSF, BestFit) share: their constructor and the handle form's
 * methods (alloc_handle, free_handle: mp_ops_t's, ranges.h).
 */
#include "native.h"

static const char *const range_names[] = {"capacity", "max_blocks", "grow"};

/* After init: grow=False makes the node budget a hard bound (the state's
 * head.param[MP_PARAM_FIXED], so snapshots, pickles and files keep it). */
PyObject *mp_strategy_fix_budget(StrategyObject *self, PyObject *grow)
{
    if (!self || !grow) return (PyObject *)self;
    int yes = PyObject_IsTrue(grow);
    if (yes < 0) {
        Py_DECREF(self);
        return NULL;
    }
    ((mp_head_t *)self->st)->param[MP_PARAM_FIXED] = !yes;
    return (PyObject *)self;
}

/* Shared by TLSF, BestFit and Bump: TYPE(capacity, *, max_blocks=None, grow=True). */
PyObject *mp_range_strategy_new(PyTypeObject *cls, PyObject *args, PyObject *kw,
                                const mp_ops_t *ops,
                                uint64_t (*state_size)(uint64_t, uint64_t),
                                int (*init)(void *, uint64_t, uint64_t))
{
    PyObject *vals[3] = {NULL, NULL, NULL};
    if (mp_parse_new_args(cls, args, kw, range_names, 3, 1, 1,
                          MP_NEW_NPOS_EXACT | MP_NEW_REPEAT_UNEXPECTED, vals) < 0)
        return NULL;
    uint64_t capacity, max_blocks;
    if (mp_arg_size64(vals[0], "capacity", &capacity) < 0 ||
        mp_arg_max_blocks(vals[1], mp_default_max_blocks(capacity), &max_blocks) < 0)
        return NULL;
    StrategyObject *self = mp_strategy_alloc(cls, ops, state_size(capacity, max_blocks));
    if (!self) return NULL;
    return mp_strategy_fix_budget(
        (StrategyObject *)mp_strategy_inited(self, init(self->st, capacity, max_blocks),
                                             "invalid parameters"),
        vals[2]);
}

/* ---- the handle form ------------------------------------------------------------
 * A handle is the int offset << 32 | node (the node alloc_handle carved, ranges.h):
 * free_handle frees only that node at exactly that offset.  Past offset 2**32 it is
 * more than 64 bits (a Python int holds it). */
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
    static const char *const names[] = {"size", "align"};
    PyObject *vals[2] = {NULL, NULL};
    uint64_t size, align = 1, off = 0, node = 0;
    if (nargs == 1 && !kwnames) vals[0] = args[0];
    else if (mp_parse_args("alloc_handle", args, nargs, kwnames, names, 2, 1, vals) < 0)
        return NULL;
    int big = mp_arg_size(vals[0], "size", &size);
    if (big < 0 || (vals[1] && mp_arg_align(vals[1], &align) < 0) ||
        handle_ready(self, "alloc_handle") < 0)
        return NULL;
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
     "calls (free, size_of, realloc) do not see a range allocated by handle."},
    {"free_handle", (PyCFunction)(void (*)(void))ext_free_handle, METH_FASTCALL,
     "free_handle($self, handle, /)\n--\n\n"
     "Give back the range alloc_handle() returned `handle` with.  NotAllocated when the\n"
     "handle names no live range allocated by handle (freed, or never handed out)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *tlsf_new(PyTypeObject *cls, PyObject *args, PyObject *kw)
{
    return mp_range_strategy_new(cls, args, kw, &mp_tlsf_ops, mp_tlsf_state_size, mp_tlsf_init);
}

static PyTypeObject TLSFType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.TLSF",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = tlsf_new,
    .tp_methods = mp_range_methods,
    .tp_doc = "TLSF(capacity, *, max_blocks=None, grow=True)\n--\n\n"
              "Two-level segregated fit over the offsets [0, capacity): O(1) alloc and free,\n"
              "exact sizes (size_of is the size asked for), free neighbours merged at once.\n"
              "A request that some free range can hold never fails.\n\n"
              "max_blocks is the number of ranges (free and allocated) the state tracks\n"
              "before it grows (to twice as many, keeping every offset); the default is\n"
              "capacity // 8192 clamped to [32, 2**20] (and to capacity): a state of ~0.8%\n"
              "of the capacity.  grow=False makes max_blocks a hard bound (OutOfSpace).",
};

int mp_tlsf_type_ready(PyObject *module)
{
    return mp_register_type(module, &TLSFType, &mp_tlsf_ops);
}
