/*
 * type_bump.c -- mempool.Bump: the constructor over _core/bump.c, mark() and
 * rewind(mark), and the stack properties.
 */
#include "native.h"

/* A mark is the int (serial << 32) | depth (depth < 2^32 - 1: max_blocks bounds it). */
static PyObject *bump_mark(StrategyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_strategy_not(self, MP_KIND_BUMP, "mark()")) return NULL;
    uint64_t serial, depth;
    if (mp_strategy_closed(self)) return NULL;
    mp_bump_mark(self->st, &serial, &depth);
    return mp_pair_new(serial, depth);
}

static PyObject *bump_rewind(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (mp_strategy_not(self, MP_KIND_BUMP, "rewind()")) return NULL;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "rewind() takes exactly one argument (%zd given)", nargs);
        return NULL;
    }
    uint64_t serial = 0, depth = 0;
    int rc = mp_pair_split(args[0], "mark", "mark()", &serial, &depth);
    if (rc < 0 || mp_strategy_unwritable(self, "rewind()")) return NULL;
    if (rc > 0 || mp_bump_rewind(self->st, serial, depth) != MP_OK) {
        PyErr_Format(PyExc_ValueError,
                     "rewind(%S): not a valid mark of this allocator (stale: a reset, an older "
                     "rewind or a free went below it since mark() returned it)", args[0]);
        return NULL;
    }
    Py_RETURN_NONE;
}

#define INFO_GETTER(name)                                                                        \
    static PyObject *get_##name(StrategyObject *self, void *Py_UNUSED(c))                       \
    {                                                                                            \
        if (mp_strategy_not(self, MP_KIND_BUMP, #name) || mp_strategy_closed(self)) return NULL; \
        mp_bump_info_t in;                                                                       \
        mp_bump_info(self->st, &in);                                                             \
        return PyLong_FromUnsignedLongLong(in.name);                                             \
    }
INFO_GETTER(top)
INFO_GETTER(depth)
INFO_GETTER(max_blocks)

static PyGetSetDef bump_getset[] = {
    {"top", (getter)get_top, NULL,
     "The bump pointer: the next allocation starts at top rounded up to its align.", NULL},
    {"depth", (getter)get_depth, NULL,
     "Entries on the range stack (live ranges and dead ones not popped yet).", NULL},
    {"max_blocks", (getter)get_max_blocks, NULL, "Capacity of the range stack.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef bump_methods[] = {
    {"mark", (PyCFunction)bump_mark, METH_NOARGS,
     "mark($self, /)\n--\n\n"
     "A token (an int) for the current top: rewind(token) frees everything allocated\n"
     "after it."},
    {"rewind", (PyCFunction)(void (*)(void))bump_rewind, METH_FASTCALL,
     "rewind($self, mark, /)\n--\n\n"
     "Free every range allocated after mark() returned `mark` (and, as free() does, the\n"
     "dead ranges just below it).  Raises ValueError for a stale or foreign mark: after\n"
     "reset(), or once a rewind to an older mark or a free went below it."},
    {NULL, NULL, 0, NULL},
};

static PyObject *bump_new(PyTypeObject *cls, PyObject *args, PyObject *kw)
{
    return mp_range_strategy_new(cls, args, kw, &mp_bump_ops, mp_bump_state_size, mp_bump_init);
}

static PyTypeObject BumpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.Bump",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = bump_new,
    .tp_methods = bump_methods,
    .tp_getset = bump_getset,
    .tp_doc =
        "Bump(capacity, *, max_blocks=None, grow=True)\n--\n\n"
        "A bump pointer over the offsets [0, capacity) (context-allocator's\n"
        "BumpAllocator): alloc places a range at the top rounded up to `align`, so\n"
        "offsets only grow; sizes are exact.\n\n"
        "free() of the most recent range pops it and every dead range below it, and the\n"
        "top goes back to the end of the highest range left (alignment gaps included).\n"
        "free() of another live range only marks it dead: `used` and len() drop, the\n"
        "bytes come back when everything above is gone.  realloc of the most recent\n"
        "range is in place when it fits; another range shrinks in place and moves when\n"
        "it grows.  mark() / rewind(mark) free everything allocated after a mark;\n"
        "reset() frees everything and makes every mark stale.  A failed call changes\n"
        "nothing: the last range and every mark survive it.\n\n"
        "max_blocks is the range stack's size (live and dead-but-not-popped ranges); the\n"
        "stack grows (twice as large) when it is full.  The default is capacity // 8192\n"
        "clamped to [32, 2**20] (and to capacity); grow=False makes it a hard bound.",
};

int mp_bump_type_ready(PyObject *module)
{
    return mp_register_type(module, &BumpType, &mp_bump_ops);
}
