/*
 * type_tlsf.c -- mempool.TLSF: the constructor over _core/tlsf.c (and the one the range
 * strategies share); its handle form's methods are range_methods.c's.
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
    if (mp_arg_size64(vals[0], "capacity", &capacity) < 0) return NULL;
    /* a compact TLSF that may grow starts smaller (mempool.h) */
    int grows = vals[2] ? PyObject_IsTrue(vals[2]) : 1;
    if (grows < 0) return NULL;
    uint64_t dflt = ops == &mp_tlsf_ops && capacity < MP_TLSF_COMPACT_CAP && grows
                        ? mp_tlsf_compact_max_blocks(capacity)
                        : mp_default_max_blocks(capacity);
    if (mp_arg_max_blocks(vals[1], dflt, &max_blocks) < 0) return NULL;
    StrategyObject *self = mp_strategy_alloc(cls, ops, state_size(capacity, max_blocks));
    if (!self) return NULL;
    return mp_strategy_fix_budget(
        (StrategyObject *)mp_strategy_inited(self, init(self->st, capacity, max_blocks),
                                             "invalid parameters"),
        vals[2]);
}

/* A pool below MP_TLSF_COMPACT_CAP gets TLSF's compact layout (its index 608 bytes, not
 * 7,928: tlsf.c), so that its state is a small part of its capacity. */
static PyObject *tlsf_new(PyTypeObject *cls, PyObject *args, PyObject *kw)
{
    return mp_range_strategy_new(cls, args, kw, &mp_tlsf_ops, mp_tlsf_sized_state_size,
                                 mp_tlsf_sized_init);
}

static PyTypeObject TLSFType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.TLSF",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = tlsf_new,
    .tp_methods = mp_range_methods, /* alloc_handle, free_handle (range_methods.c) */
    .tp_doc = "TLSF(capacity, *, max_blocks=None, grow=True)\n--\n\n"
              "Two-level segregated fit over the offsets [0, capacity): O(1) alloc and free,\n"
              "exact sizes (size_of is the size asked for), free neighbours merged at once.\n"
              "A request that some free range can hold never fails.\n\n"
              "max_blocks is the number of ranges (free and allocated) the state tracks\n"
              "before it grows (to twice as many, keeping every offset); the default is\n"
              "capacity // 8192 clamped to [32, 2**20] (and to capacity): a state of ~0.8%\n"
              "of the capacity.  grow=False makes max_blocks a hard bound (OutOfSpace).\n"
              "Below 1 MiB the index is compact (8 bins per power of two, 608 bytes) and a\n"
              "state that may grow starts at 8 nodes: at most 2% of the capacity from 64 KiB.",
};

int mp_tlsf_type_ready(PyObject *module)
{
    return mp_register_type(module, &TLSFType, &mp_tlsf_ops);
}
