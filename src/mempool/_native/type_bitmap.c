/*
 * type_bitmap.c -- mempool.Bitmap: the constructor over _core/bitmap.c and the
 * parameter properties.
 */
#include "native.h"

static const char *const bitmap_names[] = {"capacity", "block_size", "first_fit"};

static PyObject *bitmap_new(PyTypeObject *cls, PyObject *args, PyObject *kw)
{
    PyObject *v[3] = {NULL, NULL, NULL};
    if (mp_parse_new_args(cls, args, kw, bitmap_names, 3, 2, 1, 0, v) < 0) return NULL;
    uint64_t capacity, block_size = 16;
    int first_fit = 0;
    if (mp_arg_size64(v[0], "capacity", &capacity) < 0) return NULL;
    if (v[1] && mp_arg_size64(v[1], "block_size", &block_size) < 0) return NULL;
    if (v[2]) {
        if (!PyLong_Check(v[2])) { /* bool is an int */
            PyErr_Format(PyExc_TypeError, "first_fit must be a bool, not %.100s",
                         Py_TYPE(v[2])->tp_name);
            return NULL;
        }
        first_fit = PyObject_IsTrue(v[2]);
        if (first_fit < 0) return NULL;
    }
    if (capacity < block_size) {
        PyErr_Format(PyExc_ValueError,
                     "capacity %llu is smaller than one block (block_size = %llu)",
                     (unsigned long long)capacity, (unsigned long long)block_size);
        return NULL;
    }
    if (capacity / block_size > ((uint64_t)1 << 40)) {
        PyErr_Format(PyExc_ValueError,
                     "capacity // block_size must be <= 2**40 blocks, got %llu",
                     (unsigned long long)(capacity / block_size));
        return NULL;
    }
    uint64_t size = mp_bitmap_state_size(capacity, block_size, first_fit);
    if (!size) {
        PyErr_SetString(PyExc_ValueError, "invalid Bitmap parameters");
        return NULL;
    }
    StrategyObject *self = mp_strategy_alloc(cls, &mp_bitmap_ops, size);
    if (!self) return NULL;
    return mp_strategy_inited(self, mp_bitmap_init(self->st, capacity, block_size, first_fit),
                              "invalid Bitmap parameters");
}

static PyObject *get_blocks(StrategyObject *self, void *Py_UNUSED(c))
{
    if (mp_strategy_closed(self)) return NULL;
    const mp_head_t *h = self->st;
    return PyLong_FromUnsignedLongLong(h->capacity / h->param[1]);
}

static PyObject *get_first_fit(StrategyObject *self, void *Py_UNUSED(c))
{
    if (mp_strategy_closed(self)) return NULL;
    return PyBool_FromLong(((const mp_head_t *)self->st)->param[2] != 0);
}

static PyGetSetDef bitmap_getset[] = {
    {"block_size", (getter)mp_strategy_get_param, NULL, "Bytes of a block.", (void *)1},
    {"blocks", (getter)get_blocks, NULL, "Number of blocks: capacity // block_size.", NULL},
    {"first_fit", (getter)get_first_fit, NULL,
     "True: the lowest run that fits; False: next fit from the last run handed out.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BitmapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.Bitmap",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = bitmap_new,
    .tp_getset = bitmap_getset,
    .tp_doc = "Bitmap(capacity, block_size=16, *, first_fit=False)\n--\n\n"
              "Fixed blocks of block_size bytes (any size >= 1) over the offsets\n"
              "[0, capacity), one bit each, searched a 64-bit word at a time.  A request of\n"
              "size bytes takes ceil(size / block_size) contiguous blocks (size_of is\n"
              "blocks * block_size).  Next fit: the first run that fits at or after the end\n"
              "of the last run handed out, wrapping round; first_fit=True: the lowest run.\n"
              "Offsets are multiples of block_size; an align above the block size's own\n"
              "alignment admits every step-th block, measured from offset 0.\n\n"
              "realloc grows in place when the following blocks are free and shrinks in\n"
              "place (the tail goes back); else it searches again as alloc does, the old\n"
              "run counting as free (the new run may overlap it: copy with memmove).\n"
              "A tail below one block is unusable: `capacity` is blocks * block_size.",
};

int mp_bitmap_type_ready(PyObject *module)
{
    return mp_register_type(module, &BitmapType, &mp_bitmap_ops);
}
