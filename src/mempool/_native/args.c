/*
 * args.c -- argument readers shared by every type.
 *
 * Integers only: an exact int takes the fast path (one or two digits are read
 * from the object itself; larger ones through PyLong_AsLongLongAndOverflow); int
 * subclasses and objects with __index__ (NumPy integers) are accepted; floats,
 * strings and anything else raise TypeError naming the argument.  Negative values
 * raise ValueError.
 */
#include "native.h"

static int read_long(PyObject *o, const char *name, int minimum, uint64_t *out)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0) {
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v < 0) {
            PyErr_Format(PyExc_ValueError, "%s must be >= %d, got %lld", name, minimum, v);
            return -1;
        }
        *out = (uint64_t)v;
        return 0;
    }
    if (overflow < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= %d, got %S", name, minimum, o);
        return -1;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(o);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        *out = UINT64_MAX;
        return 1;
    }
    *out = u;
    return 0;
}

/* The value of an exact int of at most two digits (every size and offset below
 * 2^60 with 30-bit digits), read from the object without a call into the
 * interpreter; 0 when it is larger (the general path reads it). */
static inline int compact_long(PyObject *o, long long *v)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (!PyUnstable_Long_IsCompact((PyLongObject *)o)) return 0;
    *v = (long long)PyUnstable_Long_CompactValue((PyLongObject *)o);
    return 1;
#else
    const digit *d = ((PyLongObject *)o)->ob_digit;
    switch (Py_SIZE(o)) {
    case 0:
        *v = 0;
        return 1;
    case 1:
        *v = (long long)d[0];
        return 1;
    case -1:
        *v = -(long long)d[0];
        return 1;
    case 2:
        *v = (long long)d[0] | (long long)d[1] << PyLong_SHIFT;
        return 1;
    default:
        return 0;
    }
#endif
}

static int read_int(PyObject *o, const char *name, int minimum, uint64_t *out)
{
    if (PyLong_CheckExact(o)) {
        long long v;
        if (compact_long(o, &v) && v >= 0) {
            *out = (uint64_t)v;
            return 0;
        }
        return read_long(o, name, minimum, out); /* big, or negative: the messages */
    }
    if (PyFloat_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an integer, not %.100s", name,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    PyObject *i = PyNumber_Index(o);
    if (!i) return -1;
    int rc = read_long(i, name, minimum, out);
    Py_DECREF(i);
    return rc;
}

int mp_arg_u64(PyObject *o, const char *name, uint64_t *out) { return read_int(o, name, 0, out); }

int mp_arg_size(PyObject *o, const char *name, uint64_t *out)
{
    long long v;
    if (PyLong_CheckExact(o) && compact_long(o, &v) && v >= 1) { /* the hot path */
        *out = (uint64_t)v;
        return 0;
    }
    int rc = read_int(o, name, 1, out);
    if (rc == 0 && *out == 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 1, got 0", name);
        return -1;
    }
    return rc;
}

int mp_arg_align(PyObject *o, uint64_t *out)
{
    int rc = mp_arg_u64(o, "align", out);
    if (rc < 0) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "align must be a positive power of two, got %S", o);
        }
        return -1;
    }
    if (rc > 0 || !mp_is_pow2(*out)) {
        PyErr_Format(PyExc_ValueError, "align must be a positive power of two, got %S", o);
        return -1;
    }
    return 0;
}

int mp_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int nparams, int nreq, PyObject **vals)
{
    if (nargs > nparams) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname,
                     nparams, nargs);
        return -1;
    }
    for (Py_ssize_t k = 0; k < nargs; k++) vals[k] = args[k];
    int seen = (int)nargs;
    if (kwnames) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t k = 0; k < nkw; k++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, k);
            int j;
            for (j = 0; j < nparams; j++)
                if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0) break;
            if (j == nparams) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             fname, key);
                return -1;
            }
            if (j < nargs) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                             fname, names[j]);
                return -1;
            }
            vals[j] = args[nargs + k];
            if (j >= seen) seen = j + 1;
        }
    }
    for (int j = 0; j < nreq; j++)
        if (!vals[j]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                         names[j]);
            return -1;
        }
    return 0;
}

/* ---- constructors (tp_new: an args tuple and a kw dict) ------------------------------ */

int mp_parse_new_args(PyTypeObject *cls, PyObject *args, PyObject *kw, const char *const *names,
                      int nparams, int npos, int nreq, int flags, PyObject **vals)
{
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > npos) {
        PyErr_Format(PyExc_TypeError, "%s() takes %s%d positional argument%s (%zd given)",
                     cls->tp_name, flags & MP_NEW_NPOS_EXACT ? "" : "at most ", npos,
                     npos == 1 ? "" : "s", nargs);
        return -1;
    }
    for (Py_ssize_t k = 0; k < nargs; k++) vals[k] = PyTuple_GET_ITEM(args, k);
    if (kw) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(kw, &pos, &key, &value)) {
            int j = -1;
            if (PyUnicode_Check(key))
                for (j = 0; j < nparams; j++)
                    if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0) break;
            if (j < 0 || j == nparams || (j < nargs && flags & MP_NEW_REPEAT_UNEXPECTED)) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                             cls->tp_name, key);
                return -1;
            }
            if (j < nargs) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                             cls->tp_name, names[j]);
                return -1;
            }
            vals[j] = value;
        }
    }
    for (int j = 0; j < nreq; j++)
        if (!vals[j]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", cls->tp_name,
                         names[j]);
            return -1;
        }
    return 0;
}

int mp_arg_size64(PyObject *o, const char *name, uint64_t *out)
{
    int rc = mp_arg_size(o, name, out);
    if (rc > 0) {
        PyErr_Format(PyExc_ValueError, "%s must be < 2**64, got %S", name, o);
        return -1;
    }
    return rc;
}

int mp_arg_max_blocks(PyObject *o, uint64_t dflt, uint64_t *out)
{
    if (!o || o == Py_None) {
        *out = dflt;
        return 0;
    }
    int rc = mp_arg_size(o, "max_blocks", out);
    if (rc < 0) return -1;
    if (rc > 0 || *out >= MP_NIL) {
        PyErr_Format(PyExc_ValueError, "max_blocks must be < 2**32 - 1, got %S", o);
        return -1;
    }
    return 0;
}

/* ---- ints of two words: hi << 32 | lo ------------------------------------------------ */
PyObject *mp_pair_new(uint64_t hi, uint64_t lo)
{
    if (hi >> 32 == 0) return PyLong_FromUnsignedLongLong(hi << 32 | lo);
    PyObject *h = PyLong_FromUnsignedLongLong(hi), *k = PyLong_FromLong(32);
    PyObject *up = h && k ? PyNumber_Lshift(h, k) : NULL, *l = NULL, *res = NULL;
    if (up && (l = PyLong_FromUnsignedLongLong(lo))) res = PyNumber_Or(up, l);
    Py_XDECREF(h);
    Py_XDECREF(k);
    Py_XDECREF(up);
    Py_XDECREF(l);
    return res;
}

int mp_pair_split(PyObject *o, const char *what, const char *from, uint64_t *hi, uint64_t *lo)
{
    if (PyFloat_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an integer (from %s), not %.100s", what, from,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    PyObject *i = PyNumber_Index(o);
    if (!i) return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    if (!overflow && !(v == -1 && PyErr_Occurred())) { /* the common case: below 2**63 */
        Py_DECREF(i);
        if (v < 0) return 1;
        *hi = (uint64_t)v >> 32;
        *lo = (uint64_t)v & 0xffffffffu;
        return 0;
    }
    int rc = 1;
    PyObject *k = PyLong_FromLong(32), *up = NULL;
    if (PyErr_Occurred()) {
        rc = -1;
    } else if (overflow > 0 && k && (up = PyNumber_Rshift(i, k))) {
        *lo = PyLong_AsUnsignedLongLongMask(i) & 0xffffffffu;
        *hi = PyLong_AsUnsignedLongLong(up);
        rc = 0;
        if (*hi == (uint64_t)-1 && PyErr_Occurred()) { /* hi of 2**64 or more: no pair */
            rc = PyErr_ExceptionMatches(PyExc_OverflowError) ? 1 : -1;
            if (rc > 0) PyErr_Clear();
        }
    } else if (overflow > 0) {
        rc = -1;
    }
    Py_XDECREF(k);
    Py_XDECREF(up);
    Py_DECREF(i);
    return rc;
}
