/*
 * strategy.c -- the base type mempool._mempool.Strategy.
 *
 * Every strategy type (TLSF, BestFit, ...) is a subclass that only supplies a
 * constructor and, where it has them, extra methods.  Everything in the strategy
 * interface of DESIGN.md is implemented here once, over the mp_ops_t table the
 * object carries.  The hot methods (alloc, free, realloc, size_of) are
 * METH_FASTCALL with the arguments read by hand and create no object on success
 * but the returned int.
 */
#include "native.h"

#include <string.h>

/* one type per entry of the strategy list */
#define MP_COUNT_(KIND, sname, number) +1
#define MAX_TYPES (0 MP_STRATEGIES(MP_COUNT_))
static struct {
    PyTypeObject *type;
    const mp_ops_t *ops;
} types[MAX_TYPES];
static int ntypes;

const mp_ops_t *mp_ops_of_type(PyTypeObject *type)
{
    for (PyTypeObject *t = type; t; t = t->tp_base)
        for (int k = 0; k < ntypes; k++)
            if (types[k].type == t) return types[k].ops;
    return NULL;
}

PyTypeObject *mp_type_of_ops(const mp_ops_t *ops)
{
    for (int k = 0; k < ntypes; k++)
        if (types[k].ops == ops) return types[k].type;
    return NULL;
}

StrategyObject *mp_strategy_alloc(PyTypeObject *cls, const mp_ops_t *ops, uint64_t st_len)
{
    /* (a MemoryError that says what did not fit: a bare one told a user of a 1 TiB
     * Bitmap nothing) */
    void *st = st_len > (uint64_t)PY_SSIZE_T_MAX ? NULL : PyMem_RawMalloc((size_t)st_len);
    if (!st) {
        PyErr_Format(PyExc_MemoryError, "cannot allocate the %s state of %llu bytes (its "
                     "metadata for this capacity)", ops->name, (unsigned long long)st_len);
        return NULL;
    }
    StrategyObject *self = (StrategyObject *)cls->tp_alloc(cls, 0);
    if (!self) {
        PyMem_RawFree(st);
        return NULL;
    }
    self->ops = ops;
    self->st = st;
    self->st_len = st_len;
    self->owns = 1;
    if (mp_rec_recording()) mp_rec_adopt(self); /* made inside trace.record() */
    return self;
}

/* Grow into a new block; the old one goes to *old (the caller frees it). */
static int grow_keep(StrategyObject *self, void **old, uint64_t *old_len)
{
    const mp_ops_t *ops = self->ops;
    if (!self->owns || !self->st || !ops->grow_size) return -1;
    uint64_t len = ops->grow_size(self->st);
    if (len <= self->st_len || len > (uint64_t)PY_SSIZE_T_MAX) return -1;
    void *st = PyMem_RawMalloc((size_t)len);
    if (!st) return -1;
    if (ops->grow(self->st, st, len) != MP_OK) {
        PyMem_RawFree(st);
        return -1;
    }
    *old = self->st;
    *old_len = self->st_len;
    self->st = st;
    self->st_len = len;
    mp_wrap_moved(*old, st); /* a recorded or limited state's entry follows it */
    return 0;
}

int mp_strategy_grow(StrategyObject *self)
{
    void *old;
    uint64_t old_len;
    if (grow_keep(self, &old, &old_len)) return -1;
    PyMem_RawFree(old);
    return 0;
}

PyObject *mp_strategy_inited(StrategyObject *self, int init_rc, const char *msg)
{
    if (init_rc == MP_OK) return (PyObject *)self;
    Py_DECREF(self);
    PyErr_SetString(PyExc_ValueError, msg);
    return NULL;
}

static void strategy_dealloc(StrategyObject *self)
{
    if (self->weakreflist) PyObject_ClearWeakRefs((PyObject *)self);
    if (self->owns) PyMem_RawFree(self->st);
    if (self->owner) {
        PyBuffer_Release(&self->owner_view);
        Py_CLEAR(self->owner);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- errors ---------------------------------------------------------------------- */
static const mp_head_t *head(StrategyObject *self) { return (const mp_head_t *)self->st; }

static PyObject *raise_oos(PyObject *size_obj, uint64_t size, const char *what, const char *why,
                           uint64_t avail, uint64_t largest)
{
    /* (OutOfSpace.size is an int: a caller's __index__ object, as an int) */
    PyObject *sz = size_obj ? PyNumber_Index(size_obj) : PyLong_FromUnsignedLongLong(size);
    if (!sz) return NULL;
    PyObject *msg = PyUnicode_FromFormat("cannot allocate %s%S bytes: %s (%llu bytes available, "
                                         "largest free range %llu)",
                                         what, sz, why, (unsigned long long)avail,
                                         (unsigned long long)largest);
    if (!msg) {
        Py_DECREF(sz);
        return NULL;
    }
    PyObject *exc = PyObject_CallFunction(mp_OutOfSpace, "OOKK", msg, sz,
                                          (unsigned long long)avail,
                                          (unsigned long long)largest);
    Py_DECREF(msg);
    Py_DECREF(sz);
    if (exc) {
        PyErr_SetObject(mp_OutOfSpace, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

PyObject *mp_raise_oos(StrategyObject *self, PyObject *size_obj, uint64_t size, const char *what,
                       const char *why)
{
    return raise_oos(size_obj, size, what, why, self->ops->available(self->st),
                     self->ops->largest_free(self->st));
}

void mp_err_capture(StrategyObject *self, int rc, uint64_t size, uint64_t align, uint64_t offset,
                    mp_err_t *e)
{
    e->rc = rc;
    e->size = size;
    e->offset = offset;
    e->avail = e->largest = 0;
    e->has_why = 0;
    if (rc != MP_ENOSPACE && rc != MP_ENONODES) return;
    e->avail = self->ops->available(self->st);
    e->largest = self->ops->largest_free(self->st);
    /* a request beyond the strategy's classes or items says so */
    if (rc == MP_ENOSPACE && self->ops->why_nospace)
        e->has_why = self->ops->why_nospace(self->st, size, align, e->why, sizeof e->why);
}

PyObject *mp_err_raise(const mp_err_t *e)
{
    switch (e->rc) {
    case MP_ENOSPACE:
        return raise_oos(NULL, e->size, "", e->has_why ? e->why : "no free range fits", e->avail,
                         e->largest);
    case MP_ENONODES:
        return raise_oos(NULL, e->size, "", "the state's range table is full (max_blocks)",
                         e->avail, e->largest);
    case MP_ENOTALLOC:
        PyErr_Format(mp_NotAllocated, "offset %llu is not the start of a live range",
                     (unsigned long long)e->offset);
        return NULL;
    case MP_EINVAL:
        PyErr_SetString(PyExc_ValueError, "invalid argument");
        return NULL;
    default:
        PyErr_Format(mp_CorruptionError, "strategy returned error %d", e->rc);
        return NULL;
    }
}

PyObject *mp_raise(StrategyObject *self, int rc, uint64_t size, uint64_t align, uint64_t offset)
{
    mp_err_t e;
    mp_err_capture(self, rc, size, align, offset, &e);
    return mp_err_raise(&e);
}

/* ---- hot methods ------------------------------------------------------------------- */
/* alloc returned rc: on MP_ENONODES grow the state and retry (out of line: the hot
 * path stays as it was); the offset, or the exception. */
__attribute__((noinline, cold)) static PyObject *alloc_failed(StrategyObject *self, int rc,
                                                              uint64_t size, uint64_t align)
{
    uint64_t off = 0;
    while (rc == MP_ENONODES && mp_strategy_grow(self) == 0)
        rc = self->ops->alloc(self->st, size, align, &off);
    if (rc) return mp_raise(self, rc, size, align, 0);
    return PyLong_FromUnsignedLongLong(off);
}

static PyObject *ext_strategy_alloc(StrategyObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *vals[2] = {NULL, NULL};
    uint64_t size, align = 1, off;
    int rc = mp_alloc_args(self, "alloc", args, nargs, kwnames, vals, &size, &align);
    if (rc < 0 || mp_strategy_unwritable(self, "alloc()")) return NULL;
    if (rc > 0) return mp_raise_oos(self, vals[0], size, "", "larger than the capacity");
    rc = self->ops->alloc(self->st, size, align, &off);
    if (rc) return alloc_failed(self, rc, size, align);
    return PyLong_FromUnsignedLongLong(off);
}

static PyObject *ext_strategy_free(StrategyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t off;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "free() takes exactly one argument (%zd given)", nargs);
        return NULL;
    }
    if (mp_arg_offset(args[0], &off) < 0 || mp_strategy_unwritable(self, "free()")) return NULL;
    int rc = self->ops->free(self->st, off);
    if (rc) return mp_raise(self, rc, 0, 1, off);
    Py_RETURN_NONE;
}

static PyObject *ext_strategy_realloc(StrategyObject *self, PyObject *const *args,
                                      Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *vals[3] = {NULL, NULL, NULL};
    uint64_t off, size, align = 1, out;
    int rc = mp_realloc_args(self, args, nargs, kwnames, vals, &off, &size, &align);
    if (rc < 0) return NULL;
    if (rc > 0) return mp_raise_oos(self, vals[1], size, "", "larger than the capacity");
    rc = self->ops->realloc(self->st, off, size, align, &out);
    while (rc == MP_ENONODES && mp_strategy_grow(self) == 0)
        rc = self->ops->realloc(self->st, off, size, align, &out);
    if (rc) return mp_raise(self, rc, size, align, off);
    return PyLong_FromUnsignedLongLong(out);
}

static PyObject *ext_strategy_size_of(StrategyObject *self, PyObject *const *args,
                                      Py_ssize_t nargs)
{
    uint64_t off, size;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "size_of() takes exactly one argument (%zd given)", nargs);
        return NULL;
    }
    if (mp_arg_offset(args[0], &off) < 0 || mp_strategy_closed(self)) return NULL;
    int rc = self->ops->size_of(self->st, off, &size);
    if (rc) return mp_raise(self, rc, 0, 1, off);
    return PyLong_FromUnsignedLongLong(size);
}

/* ---- batch methods -------------------------------------------------------------- */
static PyObject *np_call(const char *fn, PyObject *arg)
{
    static PyObject *np;
    if (!np && !(np = PyImport_ImportModule("numpy"))) return NULL;
    return PyObject_CallMethod(np, fn, "Os", arg, "int64");
}

/* The integers of `obj` -- a buffer of integers (a NumPy integer array, bytes) or any
 * iterable of integers -- as a PyMem_Malloc'd array of *count values, each read by
 * the rules of the scalar argument (`minimum` 1 for sizes, 0 for offsets): TypeError
 * for anything but integers (floats, bools arrays, strings), ValueError below the
 * minimum; values beyond 2**64 - 1 become UINT64_MAX, which no range has as its size
 * or offset.  NULL with an exception set on failure. */
static uint64_t *u64_items(PyObject *obj, const char *name, int minimum, Py_ssize_t *count)
{
    Py_buffer v;
    char nm[64];
    uint64_t *out;
    if (PyObject_CheckBuffer(obj) && PyObject_GetBuffer(obj, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0) {
        const char *f = v.format ? v.format : "B";
        /* the byte order: native (x86-64, aarch64: little) or swapped ('>', '!') */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        int swap = *f == '>' || *f == '!';
#else
        int swap = *f == '<';
#endif
        if (*f == '<' || *f == '>' || *f == '!' || *f == '=' || *f == '@') f++;
        int sgn = f[0] && !f[1] && strchr("bhilqn", f[0]);
        int uns = f[0] && !f[1] && strchr("BHILQN", f[0]);
        Py_ssize_t isz = v.itemsize;
        if ((!sgn && !uns) || (isz != 1 && isz != 2 && isz != 4 && isz != 8)) {
            PyErr_Format(PyExc_TypeError, "%s must hold integers, not items of format '%s'", name,
                         v.format ? v.format : "B");
            PyBuffer_Release(&v);
            return NULL;
        }
        Py_ssize_t n = v.len / isz;
        out = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *out);
        if (!out) {
            PyBuffer_Release(&v);
            PyErr_NoMemory();
            return NULL;
        }
        const char *p = v.buf;
        for (Py_ssize_t k = 0; k < n; k++, p += isz) {
            uint64_t uv = 0;
            memcpy((char *)&uv + (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__ ? 8 - isz : 0), p,
                   (size_t)isz);
            if (swap) uv = __builtin_bswap64(uv) >> (64 - 8 * isz);
            /* (signed: the item's top bit extended) */
            int64_t sv = (int64_t)(uv << (64 - 8 * isz)) >> (64 - 8 * isz);
            if (sgn) {
                if (sv < minimum) {
                    PyErr_Format(PyExc_ValueError, "%s[%zd] must be >= %d, got %lld", name, k,
                                 minimum, (long long)sv);
                    PyBuffer_Release(&v);
                    PyMem_Free(out);
                    return NULL;
                }
                uv = (uint64_t)sv;
            } else if (uv < (uint64_t)minimum) {
                PyErr_Format(PyExc_ValueError, "%s[%zd] must be >= %d, got %llu", name, k, minimum,
                             (unsigned long long)uv);
                PyBuffer_Release(&v);
                PyMem_Free(out);
                return NULL;
            }
            out[k] = uv;
        }
        PyBuffer_Release(&v);
        *count = n;
        return out;
    }
    PyErr_Clear();
    snprintf(nm, sizeof nm, "%s must be a sequence of integers", name);
    PyObject *seq = PySequence_Fast(obj, nm);
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    out = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *out);
    if (!out) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        /* the item may run __index__: hold it, the list may change under us */
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        Py_INCREF(item);
        snprintf(nm, sizeof nm, "%s[%zd]", name, k);
        int rc = minimum ? mp_arg_size(item, nm, &out[k]) : mp_arg_u64(item, nm, &out[k]);
        Py_DECREF(item);
        if (rc < 0) {
            Py_DECREF(seq);
            PyMem_Free(out);
            return NULL;
        }
    }
    Py_DECREF(seq);
    *count = n;
    return out;
}

static const char *const many_names[] = {"sizes", "align"};

static PyObject *ext_strategy_alloc_many(StrategyObject *self, PyObject *const *args,
                                         Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *vals[2] = {NULL, NULL}, *out = NULL;
    uint64_t align = 1;
    Py_buffer res;
    Py_ssize_t n;
    if (mp_parse_args("alloc_many", args, nargs, kwnames, many_names, 2, 1, vals) < 0)
        return NULL;
    if (vals[1] && mp_arg_align(vals[1], &align) < 0) return NULL;
    /* converting may run Python code (__index__, __iter__): check closed after it */
    uint64_t *sz = u64_items(vals[0], "sizes", 1, &n);
    if (!sz) return NULL;
    if (mp_strategy_unwritable(self, "alloc_many()")) goto done;
    PyObject *count = PyLong_FromSsize_t(n);
    if (!count) goto done;
    out = np_call("empty", count);
    Py_DECREF(count);
    if (!out) goto done;
    if (PyObject_GetBuffer(out, &res, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        Py_CLEAR(out);
        goto done;
    }
    if (mp_strategy_unwritable(self, "alloc_many()")) { /* np.empty ran Python code too */
        PyBuffer_Release(&res);
        Py_CLEAR(out);
        goto done;
    }
    uint64_t *o = res.buf;
    mp_head_t saved = *head(self);
    /* the state before this call's first growth (and how many ranges it held then): a
     * failed batch goes back to it, so the state is not left grown either */
    void *orig = NULL;
    uint64_t orig_len = 0;
    Py_ssize_t orig_k = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        int rc = self->ops->alloc(self->st, sz[k], align, &o[k]);
        while (rc == MP_ENONODES) {
            void *old;
            uint64_t old_len;
            if (grow_keep(self, &old, &old_len)) break;
            if (!orig) {
                orig = old;
                orig_len = old_len;
                orig_k = k;
            } else {
                PyMem_RawFree(old);
            }
            rc = self->ops->alloc(self->st, sz[k], align, &o[k]);
        }
        if (rc) { /* all or nothing: give back what this call took */
            Py_ssize_t taken = k;
            if (orig) {
                PyMem_RawFree(self->st);
                self->st = orig;
                self->st_len = orig_len;
                taken = orig_k;
                orig = NULL;
            }
            for (Py_ssize_t j = taken - 1; j >= 0; j--) self->ops->free(self->st, o[j]);
            *(mp_head_t *)self->st = saved;
            PyBuffer_Release(&res);
            Py_CLEAR(out);
            mp_raise(self, rc, sz[k], align, 0);
            goto done;
        }
    }
    PyMem_RawFree(orig);
    PyBuffer_Release(&res);
done:
    PyMem_Free(sz);
    return out;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static PyObject *ext_strategy_free_many(StrategyObject *self, PyObject *const *args,
                                        Py_ssize_t nargs)
{
    PyObject *ret = NULL;
    Py_ssize_t n;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "free_many() takes exactly one argument (%zd given)",
                     nargs);
        return NULL;
    }
    uint64_t *off = u64_items(args[0], "offsets", 0, &n);
    if (!off) return NULL;
    uint64_t *sorted = NULL;
    if (mp_strategy_unwritable(self, "free_many()")) goto done; /* after converting: it may run Python code */
    sorted = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *sorted);
    if (!sorted) {
        PyErr_NoMemory();
        goto done;
    }
    /* all or nothing: every offset must be live and named once before any is freed */
    for (Py_ssize_t k = 0; k < n; k++) {
        uint64_t s;
        if (self->ops->size_of(self->st, off[k], &s)) {
            if (off[k] == UINT64_MAX)
                PyErr_Format(mp_NotAllocated, "offsets[%zd] is not the start of a live range", k);
            else
                PyErr_Format(mp_NotAllocated, "offsets[%zd] = %llu is not the start of a live range",
                             k, (unsigned long long)off[k]);
            goto done;
        }
        sorted[k] = off[k];
    }
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_u64);
    for (Py_ssize_t k = 1; k < n; k++)
        if (sorted[k] == sorted[k - 1]) {
            PyErr_Format(mp_NotAllocated, "offset %llu is named twice",
                         (unsigned long long)sorted[k]);
            goto done;
        }
    for (Py_ssize_t k = 0; k < n; k++) self->ops->free(self->st, off[k]);
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyMem_Free(sorted);
    PyMem_Free(off);
    return ret;
}

void mp_figures_read(const mp_ops_t *ops, const void *st, mp_figures_t *f)
{
    const mp_head_t *h = st;
    f->capacity = h->capacity;
    f->used = h->used;
    f->requested = h->requested;
    f->live = h->live;
    f->peak_used = h->peak_used;
    f->high_water = h->high_water;
    f->available = ops->available(st);
    f->largest_free = ops->largest_free(st);
    f->free_ranges = ops->free_ranges(st);
    f->metadata = h->state_size;
}

PyObject *mp_stats_new(const mp_figures_t *f)
{
    double frag = f->available ? 1.0 - (double)f->largest_free / (double)f->available : 0.0;
    PyObject *kw = Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsdsKsK}", "capacity", (unsigned long long)f->capacity, "used",
        (unsigned long long)f->used, "available", (unsigned long long)f->available,
        "largest_free", (unsigned long long)f->largest_free, "live", (unsigned long long)f->live,
        "free_ranges", (unsigned long long)f->free_ranges, "peak_used",
        (unsigned long long)f->peak_used, "high_water", (unsigned long long)f->high_water,
        "fragmentation", frag, "internal_fragmentation",
        (unsigned long long)(f->used - f->requested), "metadata",
        (unsigned long long)f->metadata);
    if (!kw) return NULL;
    PyObject *args = PyTuple_New(0);
    PyObject *res = args ? PyObject_Call(mp_StatsType, args, kw) : NULL;
    Py_XDECREF(args);
    Py_DECREF(kw);
    return res;
}

static PyObject *ext_strategy_stats(StrategyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_strategy_closed(self)) return NULL;
    mp_figures_t f;
    mp_figures_read(self->ops, self->st, &f);
    return mp_stats_new(&f);
}

static int walk_collect(void *ctx, uint64_t offset, uint64_t size, int allocated)
{
    mp_segs_t *b = ctx;
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        struct mp_seg *v = PyMem_RawRealloc(b->v, cap * sizeof *v);
        if (!v) return b->nomem = 1, -1;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = (struct mp_seg){offset, size, allocated};
    return 0;
}

void mp_segments_walk(const mp_ops_t *ops, const void *st, mp_segs_t *b)
{
    b->v = NULL;
    b->n = b->cap = 0;
    b->nomem = 0;
    b->name = ops->name;
    b->rc = ops->walk(st, walk_collect, b);
}

PyObject *mp_segments_list(mp_segs_t *b)
{
    PyObject *list = NULL;
    if (b->rc) {
        if (b->nomem) PyErr_NoMemory();
        else PyErr_Format(mp_CorruptionError, "the %s state cannot be walked (%d)", b->name,
                          b->rc);
        goto done;
    }
    list = PyList_New((Py_ssize_t)b->n);
    for (size_t k = 0; list && k < b->n; k++) {
        PyObject *t = Py_BuildValue("(KKO)", (unsigned long long)b->v[k].off,
                                    (unsigned long long)b->v[k].size,
                                    b->v[k].allocated ? Py_True : Py_False);
        if (!t) Py_CLEAR(list);
        else PyList_SET_ITEM(list, (Py_ssize_t)k, t);
    }
done:
    PyMem_RawFree(b->v);
    b->v = NULL;
    return list;
}

static PyObject *ext_strategy_segments(StrategyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_strategy_closed(self)) return NULL;
    mp_segs_t b;
    mp_segments_walk(self->ops, self->st, &b);
    return mp_segments_list(&b);
}

static PyObject *ext_strategy_check(StrategyObject *self, PyObject *Py_UNUSED(ignored))
{
    char msg[256];
    if (mp_strategy_closed(self)) return NULL;
    if (self->ops->check(self->st, self->st_len, msg, sizeof msg)) {
        PyErr_SetString(mp_CorruptionError, msg);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *ext_strategy_reset(StrategyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_strategy_unwritable(self, "reset()")) return NULL;
    self->ops->reset(self->st);
    Py_RETURN_NONE;
}

/* The used part of the state: without the span that carries nothing (ops->hole). */
static PyObject *ext_strategy_snapshot(StrategyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_strategy_closed(self)) return NULL;
    uint64_t off = 0, len = self->st_len;
    uint64_t hole = self->ops->hole ? self->ops->hole(self->st, len, &off) : 0;
    if (hole == 0 || off > len || hole > len - off)
        return PyBytes_FromStringAndSize(self->st, (Py_ssize_t)len);
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(len - hole));
    if (!b) return NULL;
    char *d = PyBytes_AS_STRING(b);
    memcpy(d, self->st, (size_t)off);
    memcpy(d + off, (const char *)self->st + off + hole, (size_t)(len - off - hole));
    return b;
}

/* The whole state block, as bytes (what a file or a segment is made from). */
static PyObject *ext_strategy_full_snapshot(StrategyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_strategy_closed(self)) return NULL;
    return PyBytes_FromStringAndSize(self->st, (Py_ssize_t)self->st_len);
}

static PyObject *restore_into(PyTypeObject *cls, PyObject *data)
{
    const mp_ops_t *ops = mp_ops_of_type(cls);
    if (!ops) {
        PyErr_Format(PyExc_TypeError, "%s is not a strategy type", cls->tp_name);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    char msg[256];
    StrategyObject *self = NULL;
    uint64_t len = (uint64_t)view.len, off = 0, hole = 0;
    mp_head_t h;
    if (len >= sizeof h) memcpy(&h, view.buf, sizeof h);
    /* a snapshot without its hole (ops->hole): the head's identity first; anything
     * else is taken as the whole block, and validated as such below */
    if (len >= sizeof h && h.state_size > len && ops->hole &&
        mp_head_validate(view.buf, h.state_size, ops, msg, sizeof msg) == MP_OK) {
        /* the size its parameters need, before anything that size is allocated: a
         * crafted head and parameters made a 9 KB snapshot allocate and zero 2 GB */
        if (h.state_size != mp_head_state_size(&h)) {
            PyErr_Format(mp_CorruptionError, "cannot restore: the state says %llu bytes, "
                         "its parameters need %llu",
                         (unsigned long long)h.state_size,
                         (unsigned long long)mp_head_state_size(&h));
            goto done;
        }
        uint64_t o = 0, n = ops->hole(view.buf, len, &o);
        if (n == h.state_size - len && o <= len) {
            hole = n;
            off = o;
        }
    }
    self = mp_strategy_alloc(cls, ops, len + hole);
    if (!self) goto done;
    memcpy(self->st, view.buf, (size_t)(hole ? off : len));
    if (hole) {
        memset((char *)self->st + off, 0, (size_t)hole);
        memcpy((char *)self->st + off + hole, (const char *)view.buf + off, (size_t)(len - off));
    }
    len += hole;
    if (mp_head_validate(self->st, len, ops, msg, sizeof msg)) {
        PyErr_Format(mp_CorruptionError, "cannot restore: %s", msg);
        Py_CLEAR(self);
        goto done;
    }
    if (ops->check(self->st, len, msg, sizeof msg)) {
        PyErr_Format(mp_CorruptionError, "cannot restore: %s", msg);
        Py_CLEAR(self);
    }
done:
    PyBuffer_Release(&view);
    return (PyObject *)self;
}

/* attach(buffer, offset, length): a strategy whose state lives in someone else's
 * writable buffer (a file mapping, a shared segment); the type comes from the
 * state's kind.  The head and the whole state are validated first. */
PyObject *mp_ext_attach(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *buffer;
    unsigned long long offset, length;
    int deep = 1; /* 0: the head only (shared pools check the rest under their lock) */
    if (!PyArg_ParseTuple(args, "OKK|p", &buffer, &offset, &length, &deep)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    char msg[256];
    if (offset % 8 || offset > (unsigned long long)view.len ||
        length > (unsigned long long)view.len - offset || length < sizeof(mp_head_t)) {
        PyErr_Format(mp_CorruptionError, "state block [%llu, +%llu) does not fit the buffer",
                     offset, length);
        goto fail;
    }
    void *st = (char *)view.buf + offset;
    mp_head_t head;
    memcpy(&head, st, sizeof head);
    const mp_ops_t *ops = mp_ops_by_kind(head.kind);
    PyTypeObject *type = ops ? mp_type_of_ops(ops) : NULL;
    if (!type) {
        PyErr_Format(mp_CorruptionError, "state of unknown strategy kind %u", head.kind);
        goto fail;
    }
    if (mp_head_validate(st, length, ops, msg, sizeof msg) ||
        (deep && ops->check(st, length, msg, sizeof msg))) {
        PyErr_Format(mp_CorruptionError, "invalid %s state: %s", ops->name, msg);
        goto fail;
    }
    /* (a pool's state: its ranges are held by offset; shared pools ask under their lock) */
    if (deep && ops->by_handle && ops->by_handle(st)) {
        PyErr_Format(mp_CorruptionError, "invalid %s state: it holds ranges allocated by "
                     "handle, which a pool never makes", ops->name);
        goto fail;
    }
    StrategyObject *self = (StrategyObject *)type->tp_alloc(type, 0);
    if (!self) goto fail;
    self->ops = ops;
    self->st = st;
    self->st_len = length;
    self->owns = 0;
    Py_INCREF(buffer);
    self->owner = buffer;
    self->owner_view = view;
    if (mp_rec_recording()) mp_rec_adopt(self); /* attached inside trace.record() */
    return (PyObject *)self;
fail:
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *ext_strategy_restore(PyObject *cls, PyObject *data)
{
    return restore_into((PyTypeObject *)cls, data);
}

/* pickling: (_restore, (type, snapshot)); _restore is a module function */
PyObject *mp_ext_restore_fn(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *cls, *data;
    if (!PyArg_ParseTuple(args, "O!O", &PyType_Type, &cls, &data)) return NULL;
    return restore_into((PyTypeObject *)cls, data);
}

static PyObject *ext_strategy_reduce(StrategyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_strategy_closed(self)) return NULL;
    PyObject *mod = PyImport_ImportModule("mempool._mempool");
    if (!mod) return NULL;
    PyObject *fn = PyObject_GetAttrString(mod, "_restore");
    Py_DECREF(mod);
    if (!fn) return NULL;
    PyObject *snap = ext_strategy_snapshot(self, NULL);
    if (!snap) {
        Py_DECREF(fn);
        return NULL;
    }
    return Py_BuildValue("(N(ON))", fn, (PyObject *)Py_TYPE(self), snap);
}

static PyObject *ext_strategy_detach(StrategyObject *self, PyObject *Py_UNUSED(ignored))
{
    /* the pool owning the state's memory is closing: no call may touch it again */
    if (self->owns) PyMem_RawFree(self->st);
    self->owns = 0;
    self->st = NULL;
    if (self->owner) {
        PyBuffer_Release(&self->owner_view);
        Py_CLEAR(self->owner);
    }
    Py_RETURN_NONE;
}

static PyObject *ext_strategy_repr(StrategyObject *self)
{
    if (!self->st) return PyUnicode_FromFormat("<%s closed>", Py_TYPE(self)->tp_name);
    const mp_head_t *h = head(self);
    return PyUnicode_FromFormat("<%s capacity=%llu used=%llu live=%llu>", Py_TYPE(self)->tp_name,
                                (unsigned long long)h->capacity, (unsigned long long)h->used,
                                (unsigned long long)h->live);
}

static Py_ssize_t strategy_len(StrategyObject *self)
{
    if (mp_strategy_closed(self)) return -1;
    return (Py_ssize_t)head(self)->live;
}

/* ---- properties --------------------------------------------------------------------- */
#define HEAD_GETTER(field)                                                                       \
    static PyObject *get_##field(StrategyObject *self, void *Py_UNUSED(c))                      \
    {                                                                                            \
        if (mp_strategy_closed(self)) return NULL;                                               \
        return PyLong_FromUnsignedLongLong(head(self)->field);                                   \
    }
HEAD_GETTER(capacity)
HEAD_GETTER(used)
HEAD_GETTER(peak_used)
HEAD_GETTER(high_water)

static PyObject *get_available(StrategyObject *self, void *Py_UNUSED(c))
{
    if (mp_strategy_closed(self)) return NULL;
    return PyLong_FromUnsignedLongLong(self->ops->available(self->st));
}

static PyObject *get_largest_free(StrategyObject *self, void *Py_UNUSED(c))
{
    if (mp_strategy_closed(self)) return NULL;
    return PyLong_FromUnsignedLongLong(self->ops->largest_free(self->st));
}

PyObject *mp_strategy_get_param(StrategyObject *self, void *which)
{
    if (mp_strategy_closed(self)) return NULL;
    return PyLong_FromUnsignedLongLong(head(self)->param[(intptr_t)which]);
}

static PyObject *get_state_size(StrategyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->st_len);
}

static PyObject *get_name(StrategyObject *self, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(self->ops->name);
}

static PyGetSetDef strategy_getset[] = {
    {"capacity", (getter)get_capacity, NULL, "Bytes managed: offsets are in [0, capacity).", NULL},
    {"used", (getter)get_used, NULL, "Sum of size_of() over the live ranges, in bytes.", NULL},
    {"available", (getter)get_available, NULL, "Bytes not handed out.", NULL},
    {"largest_free", (getter)get_largest_free, NULL,
     "The largest size that alloc(size) serves now, in bytes.", NULL},
    {"peak_used", (getter)get_peak_used, NULL, "The highest `used` ever seen, in bytes.", NULL},
    {"high_water", (getter)get_high_water, NULL,
     "The highest end offset ever handed out, in bytes.", NULL},
    {"state_size", (getter)get_state_size, NULL, "Bytes of the state block (a snapshot leaves its unused nodes out).",
     NULL},
    {"strategy", (getter)get_name, NULL, "The strategy's name, as Pool(strategy=...) takes it.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* A subclass of two strategy types would carry one's table under the other's methods
 * (Buddy's state read by TLSF's alloc_handle, TLSF's by Buddy's class_of): refused. */
static PyObject *strategy_init_subclass(PyObject *cls, PyObject *args, PyObject *kw)
{
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "__init_subclass__() takes no arguments");
        return NULL;
    }
    PyObject *mro = ((PyTypeObject *)cls)->tp_mro;
    const char *first = NULL;
    const mp_ops_t *ops = NULL;
    for (Py_ssize_t i = 0; mro && i < PyTuple_GET_SIZE(mro); i++)
        for (int k = 0; k < ntypes; k++) {
            if ((PyObject *)types[k].type != PyTuple_GET_ITEM(mro, i)) continue;
            if (ops && ops != types[k].ops) {
                PyErr_Format(PyExc_TypeError, "%s cannot derive from two strategies (%s and %s)",
                             ((PyTypeObject *)cls)->tp_name, first, types[k].ops->name);
                return NULL;
            }
            ops = types[k].ops;
            first = ops->name;
        }
    Py_RETURN_NONE;
}

static PyMethodDef strategy_methods[] = {
    {"__init_subclass__", (PyCFunction)(void (*)(void))strategy_init_subclass,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS, NULL},
    {"alloc", (PyCFunction)(void (*)(void))ext_strategy_alloc, METH_FASTCALL | METH_KEYWORDS,
     "alloc($self, /, size, align=1)\n--\n\n"
     "Allocate a range of at least `size` bytes whose offset is a multiple of `align`.\n\n"
     "Returns the offset (int).  Raises OutOfSpace when nothing free fits, ValueError for\n"
     "size < 1 or an align that is not a positive power of two, TypeError for non-integers."},
    {"free", (PyCFunction)(void (*)(void))ext_strategy_free, METH_FASTCALL,
     "free($self, offset, /)\n--\n\n"
     "Give the range that starts at `offset` back.  Raises NotAllocated for an offset that\n"
     "is not the start of a live range (unknown, interior or already freed)."},
    {"realloc", (PyCFunction)(void (*)(void))ext_strategy_realloc, METH_FASTCALL | METH_KEYWORDS,
     "realloc($self, /, offset, size, align=1)\n--\n\n"
     "Grow or shrink a live range to `size` bytes.  Returns its offset: the same one when\n"
     "it changed in place, else a new one (`align` applies there; the caller copies the\n"
     "bytes).  On any error nothing changed."},
    {"size_of", (PyCFunction)(void (*)(void))ext_strategy_size_of, METH_FASTCALL,
     "size_of($self, offset, /)\n--\n\nUsable size in bytes of the live range at `offset`."},
    {"alloc_many", (PyCFunction)(void (*)(void))ext_strategy_alloc_many,
     METH_FASTCALL | METH_KEYWORDS,
     "alloc_many($self, /, sizes, align=1)\n--\n\n"
     "Allocate one range per size (a sequence or int64 array); returns an int64 array of\n"
     "offsets.  All or nothing: on failure the ranges taken so far are given back."},
    {"free_many", (PyCFunction)(void (*)(void))ext_strategy_free_many, METH_FASTCALL,
     "free_many($self, offsets, /)\n--\n\n"
     "Free every offset (a sequence or int64 array).  All or nothing: raises NotAllocated\n"
     "before freeing anything if one offset is not live or appears twice."},
    {"stats", (PyCFunction)ext_strategy_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nA frozen Stats snapshot of the counters."},
    {"segments", (PyCFunction)ext_strategy_segments, METH_NOARGS,
     "segments($self, /)\n--\n\n"
     "The memory map: a list of (offset, size, allocated) in address order."},
    {"check", (PyCFunction)ext_strategy_check, METH_NOARGS,
     "check($self, /)\n--\n\nVerify every invariant of the state; raises CorruptionError."},
    {"reset", (PyCFunction)ext_strategy_reset, METH_NOARGS,
     "reset($self, /)\n--\n\nMake everything free (peak_used and high_water are kept)."},
    {"snapshot", (PyCFunction)ext_strategy_snapshot, METH_NOARGS,
     "snapshot($self, /)\n--\n\nThe relocatable state block, copied, as bytes: its used part\n"
     "(nodes never handed out are left out; restore() puts them back)."},
    {"_full_snapshot", (PyCFunction)ext_strategy_full_snapshot, METH_NOARGS,
     "_full_snapshot($self, /)\n--\n\nThe whole state block, as bytes (files, segments)."},
    {"restore", (PyCFunction)ext_strategy_restore, METH_O | METH_CLASS,
     "restore($type, data, /)\n--\n\n"
     "A new strategy from snapshot() bytes.  Raises CorruptionError when the data is not a\n"
     "valid state of this type."},
    {"__reduce__", (PyCFunction)ext_strategy_reduce, METH_NOARGS, NULL},
    {"_detach", (PyCFunction)ext_strategy_detach, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods strategy_as_sequence = {
    .sq_length = (lenfunc)strategy_len,
};

PyTypeObject StrategyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mempool.Strategy",
    .tp_basicsize = sizeof(StrategyObject),
    .tp_dealloc = (destructor)strategy_dealloc,
    .tp_repr = (reprfunc)ext_strategy_repr,
    .tp_as_sequence = &strategy_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Base of the strategy types: the strategy interface over one state block.",
    .tp_weaklistoffset = offsetof(StrategyObject, weakreflist),
    .tp_methods = strategy_methods,
    .tp_getset = strategy_getset,
};

int mp_strategy_ready(PyObject *module)
{
    return PyModule_AddType(module, &StrategyType); /* PyType_Ready + the module's attribute */
}

/* Each concrete type carries the whole method table itself (its own extras
 * first): a method descriptor found on the exact type skips the subtype check
 * that an inherited one pays on every call. */
static int merge_methods(PyTypeObject *type)
{
    size_t nbase = 0, nextra = 0;
    while (strategy_methods[nbase].ml_name) nbase++;
    if (type->tp_methods)
        while (type->tp_methods[nextra].ml_name) nextra++;
    PyMethodDef *all = PyMem_Calloc(nbase + nextra + 1, sizeof *all); /* lives forever */
    if (!all) {
        PyErr_NoMemory();
        return -1;
    }
    if (nextra) memcpy(all, type->tp_methods, nextra * sizeof *all);
    memcpy(all + nextra, strategy_methods, nbase * sizeof *all);
    type->tp_methods = all;
    return 0;
}

int mp_register_type(PyObject *module, PyTypeObject *type, const mp_ops_t *ops)
{
    if (ntypes == MAX_TYPES) {
        PyErr_SetString(PyExc_RuntimeError, "too many strategy types");
        return -1;
    }
    type->tp_base = &StrategyType;
    if (!type->tp_getset) type->tp_getset = StrategyType.tp_getset;
    if (merge_methods(type) < 0) return -1;
    if (PyModule_AddType(module, type) < 0) return -1;
    types[ntypes].type = type;
    types[ntypes].ops = ops;
    ntypes++;
    return 0;
}
