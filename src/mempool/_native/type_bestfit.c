/*
 * type_bestfit.c -- mempool.BestFit: the constructor over _core/bestfit.c.
 */
#include "native.h"

static PyObject *bestfit_new(PyTypeObject *cls, PyObject *args, PyObject *kw)
{
    return mp_range_strategy_new(cls, args, kw, &mp_bestfit_ops, mp_bestfit_state_size,
                                 mp_bestfit_init);
}

static PyTypeObject BestFitType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.BestFit",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = bestfit_new,
    .tp_methods = mp_range_methods, /* alloc_handle, free_handle (range_methods.c) */
    .tp_doc = "BestFit(capacity, *, max_blocks=None, grow=True)\n--\n\n"
              "Exact best fit over the offsets [0, capacity): the smallest free range in which\n"
              "an aligned placement fits, the lowest offset among equals (O(log n)).  The\n"
              "alignment gap in front stays free; free neighbours are merged at once.\n\n"
              "max_blocks is the number of ranges (free and allocated) the state tracks\n"
              "before it grows (to twice as many, keeping every offset); the default is\n"
              "capacity // 8192 clamped to [32, 2**20] (and to capacity).  grow=False\n"
              "makes max_blocks a hard bound (OutOfSpace).",
};

int mp_bestfit_type_ready(PyObject *module)
{
    return mp_register_type(module, &BestFitType, &mp_bestfit_ops);
}
