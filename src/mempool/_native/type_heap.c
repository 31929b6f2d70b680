/*
 * type_heap.c -- mempool.Heap: the constructor over _core/heap.c, plus
 * size_class() and the page_size property.
 */
#include "native.h"

#include <string.h>

static const char *const heap_names[] = {"capacity", "page_size", "max_blocks", "grow"};

static PyObject *heap_new(PyTypeObject *cls, PyObject *args, PyObject *kw)
{
    PyObject *vals[4] = {NULL, NULL, NULL, NULL};
    if (mp_parse_new_args(cls, args, kw, heap_names, 4, 1, 1, MP_NEW_NPOS_EXACT, vals) < 0)
        return NULL;
    uint64_t capacity, page_size = 4096, max_blocks;
    if (mp_arg_size64(vals[0], "capacity", &capacity) < 0) return NULL;
    if (vals[1] && vals[1] != Py_None) {
        int rc = mp_arg_size(vals[1], "page_size", &page_size);
        if (rc < 0) return NULL;
        if (rc > 0 || !mp_is_pow2(page_size) || page_size < 4096 || page_size > 65536) {
            PyErr_Format(PyExc_ValueError,
                         "page_size must be a power of two from 4096 to 65536, got %S", vals[1]);
            return NULL;
        }
    }
    if (mp_arg_max_blocks(vals[2], mp_heap_default_max_blocks(capacity), &max_blocks) < 0)
        return NULL;
    uint64_t size = mp_heap_state_size(capacity, page_size, max_blocks);
    if (size == 0) {
        PyErr_Format(PyExc_ValueError,
                     "capacity %llu is too large for page_size %llu (at most 2**32 - 2 pages)",
                     (unsigned long long)capacity, (unsigned long long)page_size);
        return NULL;
    }
    StrategyObject *self = mp_strategy_alloc(cls, &mp_heap_ops, size);
    if (!self) return NULL;
    return mp_strategy_fix_budget(
        (StrategyObject *)mp_strategy_inited(
            self, mp_heap_init(self->st, capacity, page_size, max_blocks), "invalid parameters"),
        vals[3]);
}

static const char *const class_names[] = {"size", "align"};

static PyObject *heap_size_class(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    if (mp_strategy_not(self, MP_KIND_HEAP, "size_class()")) return NULL;
    PyObject *vals[2] = {NULL, NULL};
    uint64_t size, align = 1, out;
    if (mp_parse_args("size_class", args, nargs, kwnames, class_names, 2, 1, vals) < 0)
        return NULL;
    int rc = mp_arg_size(vals[0], "size", &size);
    if (rc < 0) return NULL;
    if (vals[1] && mp_arg_align(vals[1], &align) < 0) return NULL;
    if (mp_strategy_closed(self)) return NULL;
    if (rc > 0) return PyNumber_Index(vals[0]); /* >= 2**64: the TLSF's, exact */
    if (mp_heap_size_class(self->st, size, align, &out)) {
        PyErr_SetString(PyExc_ValueError, "invalid argument");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(out);
}

static PyObject *heap_served_by(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (mp_strategy_not(self, MP_KIND_HEAP, "served_by()")) return NULL;
    static const char *const names[] = {"tlsf", "class", "fragments"};
    uint64_t off;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "served_by() takes exactly one argument (%zd given)", nargs);
        return NULL;
    }
    int rc = mp_arg_u64(args[0], "offset", &off);
    if (rc < 0) return NULL;
    if (mp_strategy_closed(self)) return NULL;
    int k = rc > 0 ? MP_ENOTALLOC : mp_heap_served_by(self->st, off);
    if (k < 0) {
        PyErr_Format(mp_NotAllocated, "offset %S is not the start of a live range", args[0]);
        return NULL;
    }
    return PyUnicode_FromString(names[k]);
}

static PyMethodDef heap_methods[] = {
    {"size_class", (PyCFunction)(void (*)(void))heap_size_class, METH_FASTCALL | METH_KEYWORDS,
     "size_class($self, /, size, align=1)\n--\n\n"
     "What size_of() of a new range of `size` bytes aligned to `align` is: the slab class\n"
     "(a multiple of 16 up to 256), the fragment run (a multiple of 256), or `size`\n"
     "itself when the TLSF serves it.  (A class request that finds no page is served by\n"
     "the TLSF exactly; this reports the class.)"},
    {"served_by", (PyCFunction)(void (*)(void))heap_served_by, METH_FASTCALL,
     "served_by($self, offset, /)\n--\n\n"
     "Which allocator holds the live range at `offset`: 'class' (a slab item),\n"
     "'fragments' (a run of 256-byte fragments) or 'tlsf' (an exact TLSF range).\n"
     "Raises NotAllocated when no live range starts there."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HeapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.Heap",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = heap_new,
    .tp_methods = heap_methods,
    .tp_doc =
        "Heap(capacity, *, page_size=4096, max_blocks=None, grow=True)\n--\n\n"
        "A general-purpose heap over the offsets [0, capacity): slab classes, page\n"
        "fragments and TLSF in one span and one state, trading pages through the TLSF.\n\n"
        "- size <= 256 and align <= 256: a slab class of 16-byte steps (16 .. 256 B; the\n"
        "  class is size rounded up to max(align, 16)); items are aligned to the largest\n"
        "  power of two dividing the class size.\n"
        "- 256 < size <= min(4 KiB, page_size // 4), align <= 256, when rounding up to\n"
        "  256-byte fragments wastes at most 1/8 of the request: a run of fragments in a\n"
        "  fragment page (256-aligned).\n"
        "- everything else: the TLSF, exact size, any alignment.\n\n"
        "Classes and fragments take pages of page_size bytes (a power of two, 4096 to\n"
        "65536) from the TLSF when they need one and give an empty page back; the page\n"
        "emptied last is kept as one spare (any owner takes it next; released whenever an\n"
        "allocation needs the room).  A request whose pages have no room goes to the TLSF\n"
        "exactly, and if that fails, to a larger class or fragment run with room: every\n"
        "alloc(size) with size <= largest_free succeeds.  size_class(size, align) gives\n"
        "the usual rounding.  free / realloc / size_of route by offset through a page\n"
        "table.  realloc stays in place within a class, shrinks and grows fragment runs in\n"
        "place, uses the TLSF's realloc for TLSF ranges, and otherwise moves.\n\n"
        "max_blocks is the TLSF's budget of ranges (pages and direct ranges, free and\n"
        "allocated); the state grows (twice the budget, every offset kept) when it runs\n"
        "out.  The default is capacity // 8192 clamped to [32, 2**20] (and to capacity);\n"
        "grow=False makes max_blocks a hard bound (OutOfSpace).",
};

static PyGetSetDef heap_getset_own[] = {
    {"page_size", (getter)mp_strategy_get_param, NULL, "Bytes per slab / fragment page.",
     (void *)0},
};

int mp_heap_type_ready(PyObject *module)
{
    /* own properties first, then the generic ones (all on the exact type) */
    size_t nbase = 0;
    while (StrategyType.tp_getset[nbase].name) nbase++;
    PyGetSetDef *all = PyMem_Calloc(nbase + 2, sizeof *all); /* lives forever */
    if (!all) {
        PyErr_NoMemory();
        return -1;
    }
    all[0] = heap_getset_own[0];
    memcpy(all + 1, StrategyType.tp_getset, nbase * sizeof *all);
    HeapType.tp_getset = all;
    return mp_register_type(module, &HeapType, &mp_heap_ops);
}
