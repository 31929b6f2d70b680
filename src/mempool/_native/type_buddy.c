/*
 * type_buddy.c -- mempool.Buddy: the constructor over _core/buddy.c, the class
 * helpers class_of(size) / class_size(k), and the parameter properties.
 */
#include "native.h"

/* A power of two >= minimum, else ValueError naming the argument and the rule. */
static int read_pow2(PyObject *o, const char *name, uint64_t minimum, uint64_t *out)
{
    int rc = mp_arg_u64(o, name, out);
    if (rc < 0 && !PyErr_ExceptionMatches(PyExc_ValueError)) return -1;
    if (rc != 0 || !mp_is_pow2(*out) || *out < minimum) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a power of two >= %llu, got %S", name,
                     (unsigned long long)minimum, o);
        return -1;
    }
    return 0;
}

static const char *const buddy_names[] = {"capacity", "min_block", "max_block", "fanout"};

static PyObject *buddy_new(PyTypeObject *cls, PyObject *args, PyObject *kw)
{
    PyObject *v[4] = {NULL, NULL, NULL, NULL};
    if (mp_parse_new_args(cls, args, kw, buddy_names, 4, 1, 1, 0, v) < 0) return NULL;
    uint64_t capacity, min_block = 4096, max_block = 0, fanout = 2;
    if (mp_arg_size64(v[0], "capacity", &capacity) < 0) return NULL;
    if (v[1] && read_pow2(v[1], "min_block", 1, &min_block) < 0) return NULL;
    if (v[3] && read_pow2(v[3], "fanout", 2, &fanout) < 0) return NULL;
    if (capacity < min_block) {
        PyErr_Format(PyExc_ValueError,
                     "capacity %llu is smaller than one block (min_block = %llu)",
                     (unsigned long long)capacity, (unsigned long long)min_block);
        return NULL;
    }
    if (v[2] && v[2] != Py_None) {
        uint64_t m;
        int rc = mp_arg_u64(v[2], "max_block", &m);
        if (rc < 0 && !PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
        int ok = rc == 0 && mp_is_pow2(m) && m >= min_block;
        if (ok) {
            unsigned d = (unsigned)__builtin_ctzll(m) - (unsigned)__builtin_ctzll(min_block);
            ok = d % (unsigned)__builtin_ctzll(fanout) == 0;
        }
        if (!ok) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "max_block must be a class size, min_block * fanout**k "
                         "(%llu * %llu**k), got %S",
                         (unsigned long long)min_block, (unsigned long long)fanout, v[2]);
            return NULL;
        }
        if (m > capacity) {
            PyErr_Format(PyExc_ValueError, "max_block %llu is larger than the capacity %llu",
                         (unsigned long long)m, (unsigned long long)capacity);
            return NULL;
        }
        max_block = m;
    }
    if (capacity / min_block > ((uint64_t)1 << 36)) {
        PyErr_Format(PyExc_ValueError,
                     "capacity // min_block must be <= 2**36 blocks, got %llu",
                     (unsigned long long)(capacity / min_block));
        return NULL;
    }
    uint64_t size = mp_buddy_state_size(capacity, min_block, max_block, fanout);
    if (!size) {
        PyErr_SetString(PyExc_ValueError, "invalid Buddy parameters");
        return NULL;
    }
    StrategyObject *self = mp_strategy_alloc(cls, &mp_buddy_ops, size);
    if (!self) return NULL;
    return mp_strategy_inited(self, mp_buddy_init(self->st, capacity, min_block, max_block, fanout),
                              "invalid Buddy parameters");
}

static PyObject *buddy_class_of(StrategyObject *self, PyObject *arg)
{
    if (mp_strategy_not(self, MP_KIND_BUDDY, "class_of()")) return NULL;
    uint64_t size;
    int rc = mp_arg_size(arg, "size", &size);
    if (rc < 0 || mp_strategy_closed(self)) return NULL;
    unsigned k;
    if (rc > 0 || mp_buddy_class_of(self->st, size, &k) != MP_OK) {
        unsigned top = mp_buddy_classes(self->st) - 1;
        PyErr_Format(PyExc_ValueError,
                     "size %S is larger than the largest class (class %u, max_block = %llu)",
                     arg, top, (unsigned long long)mp_buddy_class_size(self->st, top));
        return NULL;
    }
    return PyLong_FromUnsignedLong(k);
}

static PyObject *buddy_class_size(StrategyObject *self, PyObject *arg)
{
    if (mp_strategy_not(self, MP_KIND_BUDDY, "class_size()")) return NULL;
    uint64_t k;
    int rc = mp_arg_u64(arg, "k", &k);
    if (rc < 0 && !PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
    if (mp_strategy_closed(self)) return NULL;
    unsigned n = mp_buddy_classes(self->st);
    if (rc != 0 || k >= n) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "class %S out of range: this Buddy has classes 0..%u", arg,
                     n - 1);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(mp_buddy_class_size(self->st, (unsigned)k));
}

static PyObject *get_num_classes(StrategyObject *self, void *Py_UNUSED(c))
{
    if (mp_strategy_not(self, MP_KIND_BUDDY, "num_classes")) return NULL;
    if (mp_strategy_closed(self)) return NULL;
    return PyLong_FromUnsignedLong(mp_buddy_classes(self->st));
}

static PyMethodDef buddy_methods[] = {
    {"class_of", (PyCFunction)buddy_class_of, METH_O,
     "class_of($self, size, /)\n--\n\n"
     "The smallest class k whose blocks (class_size(k) bytes) hold `size` bytes.\n"
     "Raises ValueError for size < 1 or a size beyond max_block."},
    {"class_size", (PyCFunction)buddy_class_size, METH_O,
     "class_size($self, k, /)\n--\n\n"
     "Bytes of a block of class k: min_block * fanout**k.  Raises ValueError for a class\n"
     "outside 0..num_classes-1."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef buddy_getset[] = {
    {"min_block", (getter)mp_strategy_get_param, NULL, "Bytes of a class-0 block.", (void *)1},
    {"max_block", (getter)mp_strategy_get_param, NULL, "Bytes of a block of the largest class.", (void *)2},
    {"fanout", (getter)mp_strategy_get_param, NULL, "Children of a split block (a power of two >= 2).",
     (void *)3},
    {"num_classes", (getter)get_num_classes, NULL, "Number of size classes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BuddyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.Buddy",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = buddy_new,
    .tp_methods = buddy_methods,
    .tp_getset = buddy_getset,
    .tp_doc = "Buddy(capacity, *, min_block=4096, max_block=None, fanout=2)\n--\n\n"
              "Buddy allocator over the offsets [0, capacity): size classes\n"
              "min_block * fanout**k up to max_block (default: the largest class that fits\n"
              "the capacity).  A request takes the smallest class that holds it (size_of is\n"
              "the class size); the lowest free block of that class, else the lowest of the\n"
              "nearest larger non-empty class, split into fanout children down to the class.\n"
              "On free, fanout siblings that are all free merge, recursively.  O(log n).\n\n"
              "min_block and fanout are powers of two (fanout >= 2), so a block is aligned to\n"
              "its size; a larger align takes the lowest block of the smallest non-empty class\n"
              "whose size is >= align and splits it down (a larger split, no memory lost); an\n"
              "align beyond max_block, the lowest free block at a multiple of it.\n\n"
              "The capacity may hold several top-level blocks; a tail below min_block is\n"
              "unusable: `capacity` is the argument rounded down to a multiple of min_block.\n"
              "fanout=4, min_block=1 MiB, max_block=4 GiB gives the seven classes of\n"
              "hcsshim's VPMem pool.",
};

int mp_buddy_type_ready(PyObject *module)
{
    return mp_register_type(module, &BuddyType, &mp_buddy_ops);
}
