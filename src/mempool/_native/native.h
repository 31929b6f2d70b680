/*
 * native.h -- shared declarations of the CPython binding (layer 2).
 *
 * One extension module, mempool._mempool, one file per Python type:
 *   module.c     module init, errors, trace parse/replay functions
 *   args.c       argument readers shared by every type (integers, sizes, align)
 *   strategy.c   the base type Strategy: every generic method over an mp_ops_t
 *   type_*.c     one strategy type each (TLSF, BestFit, ...): constructor + extras
 *
 * A strategy object holds its state block either inline-allocated (malloc'd,
 * owned) or inside someone else's buffer (a shared segment, a file mapping):
 * then `owner` keeps that buffer alive.
 */
#ifndef MEMPOOL_NATIVE_H
#define MEMPOOL_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../_core/mempool.h"

typedef struct {
    PyObject_HEAD
    const mp_ops_t *ops;
    void *st;           /* the state block                                   */
    uint64_t st_len;    /* its length in bytes                               */
    int owns;           /* st was malloc'd by us                             */
    PyObject *owner;    /* keeps external state memory alive, or NULL        */
    Py_buffer owner_view; /* the view of owner that st points into         */
    PyObject *weakreflist;
} StrategyObject;

/* module.c: the error types, imported from mempool.errors at init */
extern PyObject *mp_MempoolError, *mp_OutOfSpace, *mp_NotAllocated, *mp_CorruptionError,
    *mp_PoolClosed, *mp_StatsType;

/* args.c */
/* Read a non-negative integer argument.  Returns 0 on success, 1 when it is
 * larger than 2^64 - 1 (*out = UINT64_MAX), -1 with an exception set when it is
 * not an integer (TypeError) or negative (ValueError). */
int mp_arg_u64(PyObject *o, const char *name, uint64_t *out);
int mp_arg_size(PyObject *o, const char *name, uint64_t *out); /* >= 1, overflow -> 1 */
int mp_arg_align(PyObject *o, uint64_t *out);                  /* power of two */
/* Parse fastcall arguments by hand: names[] of the accepted parameters, nreq
 * required.  Fills vals[]; missing optional ones are left as given. */
int mp_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int nparams, int nreq, PyObject **vals);

/* strategy.c */
extern PyTypeObject StrategyType;
int mp_strategy_ready(PyObject *module);
/* Make a strategy object of `cls` with a fresh malloc'd state of st_len bytes. */
StrategyObject *mp_strategy_alloc(PyTypeObject *cls, const mp_ops_t *ops, uint64_t st_len);
/* Raise the Python exception that matches rc for an operation on self. */
PyObject *mp_raise(StrategyObject *self, int rc, uint64_t size, uint64_t align, uint64_t offset);
/* Register a concrete strategy type (module attribute, restore(), attach).  The
 * type's own tp_methods (extras, NULL-terminated) are merged with the generic
 * ones; its tp_getset defaults to the generic properties. */
int mp_register_type(PyObject *module, PyTypeObject *type, const mp_ops_t *ops);
const mp_ops_t *mp_ops_of_type(PyTypeObject *type);
PyTypeObject *mp_type_of_ops(const mp_ops_t *ops);
PyObject *mp_ext_restore_fn(PyObject *mod, PyObject *args); /* _restore(type, data) */

/* type_*.c */
/* TYPE(capacity, *, max_blocks=None) for the range strategies (type_tlsf.c) */
PyObject *mp_range_strategy_new(PyTypeObject *cls, PyObject *args, PyObject *kw,
                                const mp_ops_t *ops,
                                uint64_t (*state_size)(uint64_t, uint64_t),
                                int (*init)(void *, uint64_t, uint64_t));
int mp_tlsf_type_ready(PyObject *module);
int mp_bestfit_type_ready(PyObject *module);
/* tp_new arguments (tuple + dict) by name: the first npos may be positional, the
 * rest are keyword-only; nreq required.  Fills vals[] (missing ones untouched). */
int mp_parse_new_args(PyTypeObject *cls, PyObject *args, PyObject *kw, const char *const *names,
                      int nparams, int npos, int nreq, PyObject **vals);
int mp_buddy_type_ready(PyObject *module);
int mp_bitmap_type_ready(PyObject *module);

#endif /* MEMPOOL_NATIVE_H */
