/*
 * type_tlsf.c -- mempool.TLSF: the constructor over _core/tlsf.c.
 */
#include "native.h"

static const char *const range_names[] = {"capacity", "max_blocks"};

/* Shared by TLSF and BestFit: TYPE(capacity, *, max_blocks=None). */
PyObject *mp_range_strategy_new(PyTypeObject *cls, PyObject *args, PyObject *kw,
                                const mp_ops_t *ops,
                                uint64_t (*state_size)(uint64_t, uint64_t),
                                int (*init)(void *, uint64_t, uint64_t))
{
    PyObject *vals[2] = {NULL, NULL};
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes 1 positional argument (%zd given)",
                     cls->tp_name, nargs);
        return NULL;
    }
    if (nargs) vals[0] = PyTuple_GET_ITEM(args, 0);
    if (kw) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(kw, &pos, &key, &value)) {
            int j = PyUnicode_CompareWithASCIIString(key, range_names[0]) == 0   ? 0
                    : PyUnicode_CompareWithASCIIString(key, range_names[1]) == 0 ? 1
                                                                                 : -1;
            if (j < 0 || vals[j]) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             cls->tp_name, key);
                return NULL;
            }
            vals[j] = value;
        }
    }
    if (!vals[0]) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'capacity'", cls->tp_name);
        return NULL;
    }
    uint64_t capacity, max_blocks;
    int rc = mp_arg_size(vals[0], "capacity", &capacity);
    if (rc < 0) return NULL;
    if (rc > 0) {
        PyErr_Format(PyExc_ValueError, "capacity must be < 2**64, got %S", vals[0]);
        return NULL;
    }
    if (vals[1] && vals[1] != Py_None) {
        rc = mp_arg_size(vals[1], "max_blocks", &max_blocks);
        if (rc < 0) return NULL;
        if (rc > 0 || max_blocks >= MP_NIL) {
            PyErr_Format(PyExc_ValueError, "max_blocks must be < 2**32 - 1, got %S", vals[1]);
            return NULL;
        }
    } else {
        max_blocks = mp_default_max_blocks(capacity);
    }
    uint64_t size = state_size(capacity, max_blocks);
    StrategyObject *self = mp_strategy_alloc(cls, ops, size);
    if (!self) return NULL;
    if (init(self->st, capacity, max_blocks) != MP_OK) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "invalid parameters");
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *tlsf_new(PyTypeObject *cls, PyObject *args, PyObject *kw)
{
    return mp_range_strategy_new(cls, args, kw, &mp_tlsf_ops, mp_tlsf_state_size, mp_tlsf_init);
}

static PyTypeObject TLSFType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.TLSF",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = tlsf_new,
    .tp_doc = "TLSF(capacity, *, max_blocks=None)\n--\n\n"
              "Two-level segregated fit over the offsets [0, capacity): O(1) alloc and free,\n"
              "exact sizes (size_of is the size asked for), free neighbours merged at once.\n"
              "A request that some free range can hold never fails.\n\n"
              "max_blocks bounds the ranges (free and allocated) the state can track; the\n"
              "default is capacity // 64 clamped to [1024, 2**20] (and to capacity).",
};

int mp_tlsf_type_ready(PyObject *module)
{
    return mp_register_type(module, &TLSFType, &mp_tlsf_ops);
}
