/*
 * type_slab.c -- mempool.Slab: the constructor over _core/slab.c, the array
 * methods, the geometry properties, and alloc/realloc with messages that name the
 * item size and alignment (the generic ones cannot know them).
 */
#include "native.h"

/* Why a single-item request of `size` bytes aligned to `align` failed: the core's
 * why_nospace (size or alignment beyond the item's), else how full the slab is. */
static PyObject *slab_raise(StrategyObject *self, int rc, PyObject *size_obj, uint64_t size,
                            uint64_t align, uint64_t offset)
{
    if (rc != MP_ENOSPACE) return mp_raise(self, rc, size, align, offset);
    char why[160];
    if (!self->ops->why_nospace(self->st, size_obj ? UINT64_MAX : size, align, why, sizeof why)) {
        mp_slab_info_t in;
        mp_slab_info(self->st, &in);
        snprintf(why, sizeof why, "no free item (all %llu items of %llu-byte items in use)",
                 (unsigned long long)(in.pages * in.per_page), (unsigned long long)in.item_size);
    }
    return mp_raise_oos(self, size_obj, size, "", why);
}

static PyObject *slab_alloc_meth(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    if (mp_strategy_not(self, MP_KIND_SLAB, "alloc()")) return NULL;
    PyObject *vals[2] = {NULL, NULL};
    uint64_t size, align = 1, off;
    int rc = mp_alloc_args(self, "alloc", args, nargs, kwnames, vals, &size, &align);
    if (rc < 0 || mp_strategy_unwritable(self, "alloc()")) return NULL;
    if (rc > 0) return slab_raise(self, MP_ENOSPACE, vals[0], size, align, 0);
    rc = self->ops->alloc(self->st, size, align, &off);
    if (rc) return slab_raise(self, rc, NULL, size, align, 0);
    return PyLong_FromUnsignedLongLong(off);
}

static PyObject *slab_realloc_meth(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    if (mp_strategy_not(self, MP_KIND_SLAB, "realloc()")) return NULL;
    PyObject *vals[3] = {NULL, NULL, NULL};
    uint64_t off, size, align = 1, out;
    int rc = mp_realloc_args(self, args, nargs, kwnames, vals, &off, &size, &align);
    if (rc < 0) return NULL;
    if (rc > 0) return slab_raise(self, MP_ENOSPACE, vals[1], size, 1, off);
    rc = self->ops->realloc(self->st, off, size, align, &out);
    if (rc == MP_EINVAL) {
        PyErr_Format(PyExc_ValueError,
                     "realloc(%llu): the range is an array; arrays keep their length "
                     "(free_array it and alloc_array a new one)", (unsigned long long)off);
        return NULL;
    }
    /* in place needs only size <= item_size: align matters for a move, and no move helps */
    if (rc) return slab_raise(self, rc, NULL, size, 1, off);
    return PyLong_FromUnsignedLongLong(out);
}

static PyObject *slab_alloc_array(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (mp_strategy_not(self, MP_KIND_SLAB, "alloc_array()")) return NULL;
    uint64_t n, off;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "alloc_array() takes exactly one argument (%zd given)",
                     nargs);
        return NULL;
    }
    int big = mp_arg_size(args[0], "n", &n);
    if (big < 0 || mp_strategy_unwritable(self, "alloc_array()")) return NULL;
    int rc = big ? MP_ENOSPACE : mp_slab_alloc_array(self->st, n, &off);
    if (rc == MP_OK) return PyLong_FromUnsignedLongLong(off);
    if (rc != MP_ENOSPACE) return mp_raise(self, rc, 0, 1, 0);
    mp_slab_info_t in;
    mp_slab_info(self->st, &in);
    char why[160];
    uint64_t most = in.pages * in.page_size / in.stride; /* a run uses the page slack too */
    if (big || n > most)
        snprintf(why, sizeof why, "more items than the %llu an array can hold",
                 (unsigned long long)most);
    else if (n <= in.per_page)
        snprintf(why, sizeof why, "no page has %llu free items in a row (%llu items free)",
                 (unsigned long long)n, (unsigned long long)in.free_items);
    else
        snprintf(why, sizeof why, "no run of enough free pages (%llu of %llu pages free)",
                 (unsigned long long)in.free_pages, (unsigned long long)in.pages);
    /* (the count as an int: the caller's own * or a NumPy scalar's overflow warning
     * made the message, OutOfSpace.size, or a RuntimeWarning under -W error) */
    PyObject *count = PyNumber_Index(args[0]);
    PyObject *stride = count ? PyLong_FromUnsignedLongLong(in.stride) : NULL;
    PyObject *bytes = stride ? PyNumber_Multiply(count, stride) : NULL;
    Py_XDECREF(stride);
    if (!bytes) {
        Py_XDECREF(count);
        return NULL;
    }
    PyObject *what = PyUnicode_FromFormat("an array of %S items, ", count);
    Py_DECREF(count);
    if (what) {
        const char *w = PyUnicode_AsUTF8(what);
        if (w) mp_raise_oos(self, bytes, 0, w, why);
        Py_DECREF(what);
    }
    Py_DECREF(bytes);
    return NULL;
}

static PyObject *slab_free_array(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (mp_strategy_not(self, MP_KIND_SLAB, "free_array()")) return NULL;
    uint64_t off, n, have;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "free_array() takes exactly 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (mp_arg_offset(args[0], &off) < 0) return NULL;
    int big = mp_arg_size(args[1], "n", &n);
    if (big < 0 || mp_strategy_unwritable(self, "free_array()")) return NULL;
    int rc = mp_slab_items_at(self->st, off, &have);
    if (rc) return mp_raise(self, rc, 0, 1, off);
    if (big || n != have) {
        PyErr_Format(PyExc_ValueError, "free_array(%llu, %S): the range there has %llu items",
                     (unsigned long long)off, args[1], (unsigned long long)have);
        return NULL;
    }
    rc = mp_slab_free_array(self->st, off, n);
    if (rc) return mp_raise(self, rc, 0, 1, off);
    Py_RETURN_NONE;
}

/* ---- properties ------------------------------------------------------------------------- */
#define INFO_GETTER(name, field)                                                                 \
    static PyObject *get_##name(StrategyObject *self, void *Py_UNUSED(c))                       \
    {                                                                                            \
        if (mp_strategy_not(self, MP_KIND_SLAB, #name) || mp_strategy_closed(self)) return NULL; \
        mp_slab_info_t in;                                                                       \
        mp_slab_info(self->st, &in);                                                             \
        return PyLong_FromUnsignedLongLong(in.field);                                            \
    }
INFO_GETTER(item_size, item_size)
INFO_GETTER(item_align, align)
INFO_GETTER(item_stride, stride)
INFO_GETTER(page_size, page_size)
INFO_GETTER(items_per_page, per_page)
INFO_GETTER(pages, pages)
INFO_GETTER(free_pages, free_pages)
INFO_GETTER(free_items, free_items)

static PyGetSetDef slab_getset[] = {
    {"item_size", (getter)get_item_size, NULL, "The item size asked for at construction.", NULL},
    {"item_align", (getter)get_item_align, NULL,
     "Every item's alignment: the largest power of two dividing item_size, at least 8 "
     "when item_size >= 8.", NULL},
    {"item_stride", (getter)get_item_stride, NULL,
     "item_size rounded up to item_align: the distance between items and each item's "
     "size_of.", NULL},
    {"page_size", (getter)get_page_size, NULL, "Bytes of a page.", NULL},
    {"items_per_page", (getter)get_items_per_page, NULL, "page_size // item_stride.", NULL},
    {"pages", (getter)get_pages, NULL, "capacity // page_size.", NULL},
    {"free_pages", (getter)get_free_pages, NULL, "Pages in the page pool.", NULL},
    {"free_items", (getter)get_free_items, NULL,
     "Items alloc() can still hand out (the same as stats().free_ranges).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef slab_methods[] = {
    {"alloc", (PyCFunction)(void (*)(void))slab_alloc_meth, METH_FASTCALL | METH_KEYWORDS,
     "alloc($self, /, size, align=1)\n--\n\n"
     "One item (size <= item_size) whose offset is a multiple of `align`; the most\n"
     "recently freed item first.  Returns the offset.  Raises OutOfSpace naming the\n"
     "item size when size > item_size, naming the item alignment when align >\n"
     "item_align, and when no item is free; ValueError / TypeError for bad arguments."},
    {"realloc", (PyCFunction)(void (*)(void))slab_realloc_meth, METH_FASTCALL | METH_KEYWORDS,
     "realloc($self, /, offset, size, align=1)\n--\n\n"
     "Resize a single item in place (size <= item_size; returns `offset`).  OutOfSpace\n"
     "for a larger size; ValueError for an array.  On any error nothing changed."},
    {"alloc_array", (PyCFunction)(void (*)(void))slab_alloc_array, METH_FASTCALL,
     "alloc_array($self, n, /)\n--\n\n"
     "Offset of n >= 1 contiguous items (n * item_stride bytes).  n <= items_per_page:\n"
     "inside one page; larger n: whole contiguous pages from the page pool, held by the\n"
     "array until it is freed.  Raises OutOfSpace when no run fits."},
    {"free_array", (PyCFunction)(void (*)(void))slab_free_array, METH_FASTCALL,
     "free_array($self, offset, n, /)\n--\n\n"
     "Free the array of n items at offset (free(offset) does the same without n).\n"
     "NotAllocated when offset is not the start of a live range; ValueError when the\n"
     "range there does not have n items."},
    {NULL, NULL, 0, NULL},
};

/* ---- constructor ------------------------------------------------------------------------- */
static const char *const slab_names[] = {"capacity", "item_size", "page_size"};

static PyObject *slab_new(PyTypeObject *cls, PyObject *args, PyObject *kw)
{
    PyObject *vals[3] = {NULL, NULL, NULL};
    if (mp_parse_new_args(cls, args, kw, slab_names, 3, 2, 1, 0, vals) < 0) return NULL;
    uint64_t v[3] = {0, 64, 65536};
    for (int j = 0; j < 3; j++)
        if (vals[j] && mp_arg_size64(vals[j], slab_names[j], &v[j]) < 0) return NULL;
    char why[200];
    if (mp_slab_explain(v[0], v[1], v[2], why, sizeof why) != MP_OK) {
        PyErr_Format(PyExc_ValueError, "%s(): %s", cls->tp_name, why);
        return NULL;
    }
    StrategyObject *self = mp_strategy_alloc(cls, &mp_slab_ops, mp_slab_state_size(v[0], v[1], v[2]));
    if (!self) return NULL;
    return mp_strategy_inited(self, mp_slab_init(self->st, v[0], v[1], v[2]), "invalid parameters");
}

static PyTypeObject SlabType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.Slab",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = slab_new,
    .tp_methods = slab_methods,
    .tp_getset = slab_getset,
    .tp_doc =
        "Slab(capacity, item_size=64, *, page_size=65536)\n--\n\n"
        "A cache of equal items carved page by page over the offsets [0, capacity)\n"
        "(tsload's mp_cache).  Freed items are reused first, the most recent first; a\n"
        "page whose items are all free goes back to the page pool.\n\n"
        "Rounding: items are aligned to item_align, the largest power of two dividing\n"
        "item_size (at least 8 when item_size >= 8); item_stride = item_size rounded up\n"
        "to item_align is each item's size_of and what `used` counts.  A page holds\n"
        "page_size // item_stride items; pages are page_size aligned; the bytes after\n"
        "the last item of a page and after the last whole page are never handed out.\n\n"
        "alloc(size, align) gives one item (size <= item_size, align <= item_align, else\n"
        "OutOfSpace); alloc_array(n) n contiguous items; free(offset) frees either.\n\n"
        "Parameters: item_size in [1, 2**30); page_size a multiple of item_align that\n"
        "holds one item; capacity >= page_size.",
};

int mp_slab_type_ready(PyObject *module)
{
    return mp_register_type(module, &SlabType, &mp_slab_ops);
}
