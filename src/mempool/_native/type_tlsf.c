/*
 * type_tlsf.c -- mempool.TLSF: the constructor over _core/tlsf.c.
 */
#include "native.h"

static const char *const range_names[] = {"capacity", "max_blocks"};

/* Shared by TLSF, BestFit and Bump: TYPE(capacity, *, max_blocks=None). */
PyObject *mp_range_strategy_new(PyTypeObject *cls, PyObject *args, PyObject *kw,
                                const mp_ops_t *ops,
                                uint64_t (*state_size)(uint64_t, uint64_t),
                                int (*init)(void *, uint64_t, uint64_t))
{
    PyObject *vals[2] = {NULL, NULL};
    if (mp_parse_new_args(cls, args, kw, range_names, 2, 1, 1,
                          MP_NEW_NPOS_EXACT | MP_NEW_REPEAT_UNEXPECTED, vals) < 0)
        return NULL;
    uint64_t capacity, max_blocks;
    if (mp_arg_size64(vals[0], "capacity", &capacity) < 0 ||
        mp_arg_max_blocks(vals[1], mp_default_max_blocks(capacity), &max_blocks) < 0)
        return NULL;
    StrategyObject *self = mp_strategy_alloc(cls, ops, state_size(capacity, max_blocks));
    if (!self) return NULL;
    return mp_strategy_inited(self, init(self->st, capacity, max_blocks), "invalid parameters");
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
