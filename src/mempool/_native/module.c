/*
 * module.c -- mempool._mempool: module init, the error types, and the trace
 * functions (parse into arrays, replay through a strategy or through libc).
 */
#include "native.h"
#include "../_core/replay.h"

#include <string.h>

PyObject *mp_MempoolError, *mp_OutOfSpace, *mp_NotAllocated, *mp_CorruptionError,
    *mp_PoolClosed, *mp_UnnamedArrayWarning, *mp_StatsType;

/* A contiguous buffer of exactly n items of itemsize bytes (writable when asked). */
static int get_array(PyObject *o, const char *name, Py_ssize_t itemsize, int writable,
                     Py_buffer *view)
{
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, view, flags) < 0) return -1;
    if (view->len % itemsize) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s must hold %zd-byte items", name, itemsize);
        return -1;
    }
    return 0;
}

/* parse_trace(text, op, id, size, align) -> number of ops */
static PyObject *ext_parse_trace(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *objs[5];
    Py_buffer v[5];
    static const char *names[] = {"text", "op", "id", "size", "align"};
    static const Py_ssize_t isz[] = {1, 1, 4, 8, 4};
    if (!PyArg_ParseTuple(args, "OOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4]))
        return NULL;
    int got = 0;
    PyObject *ret = NULL;
    for (; got < 5; got++)
        if (get_array(objs[got], names[got], isz[got], got > 0, &v[got]) < 0) goto done;
    uint64_t cap = (uint64_t)v[1].len;
    if ((uint64_t)v[2].len / 4 < cap || (uint64_t)v[3].len / 8 < cap || (uint64_t)v[4].len / 4 < cap) {
        PyErr_SetString(PyExc_ValueError, "output arrays differ in length");
        goto done;
    }
    uint64_t err_line = 0;
    char err[200];
    int64_t n = mp_trace_parse(v[0].buf, (uint64_t)v[0].len, cap, v[1].buf, v[2].buf, v[3].buf,
                               v[4].buf, &err_line, err, sizeof err);
    if (n < 0) PyErr_Format(PyExc_ValueError, "line %llu: %s", (unsigned long long)err_line, err);
    else ret = PyLong_FromLongLong(n);
done:
    for (int k = 0; k < got; k++) PyBuffer_Release(&v[k]);
    return ret;
}

static PyObject *result_dict(const mp_replay_result_t *r)
{
    return Py_BuildValue("{sKsKsKsKsKsKsK}", "ops", (unsigned long long)r->ops, "failures",
                         (unsigned long long)r->failures, "peak_used",
                         (unsigned long long)r->peak_used, "high_water",
                         (unsigned long long)r->high_water, "maxlive",
                         (unsigned long long)r->maxlive, "elapsed_ns",
                         (unsigned long long)r->elapsed_ns, "samples",
                         (unsigned long long)r->samples);
}

/* The four parallel arrays of a parsed trace and a scratch area of `per_id` uint64
 * per id; the caller releases with trace_arrays_release. */
typedef struct {
    Py_buffer v[4];
    int got;
    uint64_t n;
    uint64_t *scratch;
} trace_arrays_t;

static void trace_arrays_release(trace_arrays_t *t)
{
    PyMem_RawFree(t->scratch);
    for (int k = 0; k < t->got; k++) PyBuffer_Release(&t->v[k]);
}

static int trace_arrays(PyObject *const objs[4], unsigned long max_id, int per_id,
                        trace_arrays_t *t)
{
    static const char *names[] = {"op", "id", "size", "align"};
    static const Py_ssize_t isz[] = {1, 4, 8, 4};
    t->got = 0;
    t->scratch = NULL;
    if (max_id >= UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "max_id too large");
        return -1;
    }
    for (; t->got < 4; t->got++)
        if (get_array(objs[t->got], names[t->got], isz[t->got], 0, &t->v[t->got]) < 0) return -1;
    t->n = (uint64_t)t->v[0].len;
    for (int k = 1; k < 4; k++)
        if ((uint64_t)t->v[k].len / (uint64_t)isz[k] != t->n) {
            PyErr_SetString(PyExc_ValueError, "trace arrays differ in length");
            return -1;
        }
    t->scratch = PyMem_RawMalloc((size_t)per_id * ((size_t)max_id + 1) * sizeof *t->scratch);
    if (!t->scratch) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* replay(strategy or None, op, id, size, align, max_id, every=0, samples=None) -> dict;
 * None = libc.  With every >= 1 and a writable uint64 buffer `samples` of at least
 * (n // every + 1) * MP_SAMPLE_COLS items (strategies only), a row of figures every
 * `every` ops and after the last (mp_replay_sampled); dict["samples"] = rows written. */
static PyObject *ext_replay(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *strat, *objs[4], *samples = Py_None;
    unsigned long max_id;
    unsigned long long every = 0;
    if (!PyArg_ParseTuple(args, "OOOOOk|KO", &strat, &objs[0], &objs[1], &objs[2], &objs[3],
                          &max_id, &every, &samples))
        return NULL;
    if (strat != Py_None && !PyObject_TypeCheck(strat, &StrategyType)) {
        PyErr_SetString(PyExc_TypeError, "replay() needs a strategy object or None (libc)");
        return NULL;
    }
    if ((samples != Py_None) != (every != 0)) {
        PyErr_SetString(PyExc_ValueError, "replay(): every >= 1 and samples go together");
        return NULL;
    }
    if (samples != Py_None && strat == Py_None) {
        PyErr_SetString(PyExc_ValueError, "replay(): the C library has no figures to sample");
        return NULL;
    }
    trace_arrays_t t;
    Py_buffer sv = {0};
    int have_sv = 0;
    PyObject *ret = NULL;
    if (trace_arrays(objs, max_id, 2, &t) < 0) goto done;
    if (samples != Py_None) {
        if (get_array(samples, "samples", 8, 1, &sv) < 0) goto done;
        have_sv = 1;
        if ((uint64_t)sv.len / 8 < (t.n / every + 1) * MP_SAMPLE_COLS) {
            PyErr_Format(PyExc_ValueError, "samples must hold at least %llu uint64 items",
                         (unsigned long long)((t.n / every + 1) * MP_SAMPLE_COLS));
            goto done;
        }
    }
    mp_replay_result_t r;
    uint64_t *ptr = t.scratch, *live = t.scratch + max_id + 1;
    if (strat == Py_None) {
        mp_replay_libc(t.n, t.v[0].buf, t.v[1].buf, t.v[2].buf, t.v[3].buf, (uint32_t)max_id, ptr,
                       live, &r);
    } else {
        StrategyObject *s = (StrategyObject *)strat;
        if (!s->st) {
            PyErr_SetString(mp_PoolClosed, "the strategy is closed");
            goto done;
        }
        if (((mp_head_t *)s->st)->live) {
            PyErr_SetString(PyExc_ValueError, "replay() needs an empty strategy");
            goto done;
        }
        if (s->served) { /* (a pool's: its journal, its lock, its ranges held by offset) */
            PyErr_SetString(PyExc_TypeError, "replay(): this strategy serves a Pool; replay "
                            "a strategy of its own (trace.strategy_for)");
            goto done;
        }
        mp_replay_sampled(s->ops, s->st, t.n, t.v[0].buf, t.v[1].buf, t.v[2].buf, t.v[3].buf,
                          (uint32_t)max_id, ptr, live, every, have_sv ? sv.buf : NULL, &r);
    }
    if (r.status != MP_OK)
        PyErr_Format(PyExc_ValueError, "the trace is not valid at operation %llu (an id out of "
                     "range, an 'a' on a live id, or an 'f'/'r' on a free id)",
                     (unsigned long long)r.bad_op);
    else ret = result_dict(&r);
done:
    if (have_sv) PyBuffer_Release(&sv);
    trace_arrays_release(&t);
    return ret;
}

/* validate_trace(op, id, size, align, max_id) -> (True, maxlive, 0) or (False, bad op,
 * why): why 0 = the ID's liveness, 1 = live bytes beyond MP_TRACE_MAX_BYTES */
static PyObject *ext_validate_trace(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *objs[4];
    unsigned long max_id;
    if (!PyArg_ParseTuple(args, "OOOOk", &objs[0], &objs[1], &objs[2], &objs[3], &max_id))
        return NULL;
    trace_arrays_t t;
    PyObject *ret = NULL;
    if (trace_arrays(objs, max_id, 1, &t) == 0) {
        mp_replay_result_t r = {0};
        if (mp_trace_validate(t.n, t.v[0].buf, t.v[1].buf, t.v[2].buf, (uint32_t)max_id,
                              t.scratch, &r))
            ret = Py_BuildValue("(OKi)", Py_False, (unsigned long long)r.bad_op,
                                r.status == MP_ENOSPACE);
        else ret = Py_BuildValue("(OKi)", Py_True, (unsigned long long)r.maxlive, 0);
    }
    trace_arrays_release(&t);
    return ret;
}

/* address_of(buffer) -> the address of its first byte (sources use it for mbind/mlock) */
static PyObject *ext_address_of(PyObject *Py_UNUSED(mod), PyObject *obj)
{
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *r = PyLong_FromVoidPtr(v.buf);
    PyBuffer_Release(&v);
    return r;
}

/* data_address(buffer_or_array) -> address of its first byte, without the ctypes
 * machinery (ndarray.ctypes.data costs microseconds) */
static PyObject *ext_data_address(PyObject *Py_UNUSED(mod), PyObject *obj)
{
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_STRIDES) < 0) return NULL;
    PyObject *r = PyLong_FromVoidPtr(v.buf);
    PyBuffer_Release(&v);
    return r;
}

/* shared_ctl_size(max_entries, max_leases) -> bytes of a shared pool's lock + registry +
 * lease table area */
static PyObject *ext_shared_ctl_size(PyObject *Py_UNUSED(mod), PyObject *args)
{
    unsigned long long n, leases;
    if (!PyArg_ParseTuple(args, "KK:shared_ctl_size", &n, &leases)) return NULL;
    uint64_t size = mp_shared_ctl_size(n, leases);
    if (!size) {
        PyErr_Format(PyExc_ValueError, "max_entries and max_leases must be in [1, 2**28], got "
                     "%llu and %llu", n, leases);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(size);
}

/* shared_ctl_reserved(max_entries, max_leases) -> ((offset, length), (offset, length)):
 * the spans of a new control area that stay untouched until its registry grows into them
 * (from the area's start), which a new segment need not allocate */
static PyObject *ext_shared_ctl_reserved(PyObject *Py_UNUSED(mod), PyObject *args)
{
    unsigned long long n, leases;
    if (!PyArg_ParseTuple(args, "KK:shared_ctl_reserved", &n, &leases)) return NULL;
    if (!mp_shared_ctl_size(n, leases)) {
        PyErr_Format(PyExc_ValueError, "max_entries and max_leases must be in [1, 2**28], got "
                     "%llu and %llu", n, leases);
        return NULL;
    }
    uint64_t r[4];
    mp_shared_ctl_reserved(n, r);
    return Py_BuildValue("((KK)(KK))", (unsigned long long)r[0], (unsigned long long)r[1],
                         (unsigned long long)r[2], (unsigned long long)r[3]);
}

/* journal_recover(buffer, journal_offset, state_offset, shadow_offset, state_size
 *                 [, undo_lo, undo_hi[, log_offset, log_entries]])
 * -> 0 (nothing to do), 1 (a call was rolled back), 2 (rolled forward): a persistent
 * pool's file before its state is attached (journal.h).  CorruptionError for a journal
 * that is not one, and for a state that is not its shadow with the redo log replayed
 * (format 5: log_offset, log_entries) or, without a log, equal to its shadow. */
static PyObject *ext_journal_recover(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *buffer, *o[8] = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    uint64_t x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (!PyArg_ParseTuple(args, "OOOOO|OOOO", &buffer, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                          &o[6], &o[7]))
        return NULL;
    int big = 0;
    for (int k = 0; k < 8; k++) {
        if (!o[k]) continue;
        int r = mp_arg_u64(o[k], "offset", &x[k]);
        if (r < 0) return NULL;
        big |= r;
    }
    if (big) {
        PyErr_SetString(mp_CorruptionError, "the journal, the state and its shadow do not fit");
        return NULL;
    }
    uint64_t joff = x[0], stoff = x[1], shoff = x[2], len = x[3], loff = x[6], lcap = x[7];
    Py_buffer v;
    if (PyObject_GetBuffer(buffer, &v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    uint64_t n = (uint64_t)v.len;
    PyObject *r = NULL;
    if (joff % 64 || !mp_fits(n, joff, MP_JOURNAL_BYTES) || !mp_fits(n, stoff, len) ||
        !mp_fits(n, shoff, len) || !mp_apart(stoff, len, shoff, len) ||
        !mp_apart(joff, MP_JOURNAL_BYTES, shoff, len)) {
        PyErr_SetString(mp_CorruptionError, "the journal, the state and its shadow do not fit");
        goto out;
    }
    if (o[7] && (loff % 64 || lcap <= 2 * MP_TX_OPS || lcap > n / MP_TX_LOG_ENTRY ||
                 !mp_fits(n, loff, lcap * MP_TX_LOG_ENTRY) ||
                 !mp_apart(loff, lcap * MP_TX_LOG_ENTRY, stoff, len) ||
                 !mp_apart(loff, lcap * MP_TX_LOG_ENTRY, shoff, len) ||
                 !mp_apart(loff, lcap * MP_TX_LOG_ENTRY, joff, MP_JOURNAL_BYTES))) {
        PyErr_SetString(mp_CorruptionError, "the journal's redo log does not fit");
        goto out;
    }
    mp_tx_t t;
    char msg[160], *b = v.buf;
    /* undo_lo, undo_hi (optional): the words the undo log may name (a file pool's
     * directory of named arrays: its root in the header page up to the data's end) */
    uint64_t ulo = x[4], uhi = x[5];
    if (o[4] && (ulo > uhi || uhi > n)) {
        PyErr_SetString(mp_CorruptionError, "the journal's undo range does not fit");
        goto out;
    }
    /* without a log, recovery needs no strategy (it copies one copy over the other);
     * with one, it replays through the strategy the shadow's head names (checked
     * before the replay; the caller compares it with the header's after) */
    const mp_ops_t *ops = o[7] && len >= sizeof(mp_head_t)
                              ? mp_ops_by_kind(((const mp_head_t *)(b + shoff))->kind)
                              : NULL;
    mp_tx_setup(&t, (mp_journal_t *)(b + joff), ops, b + stoff, b + shoff, len,
                o[4] ? b + ulo : NULL, o[4] ? b + uhi : NULL);
    if (o[7]) mp_tx_set_log(&t, b + loff, lcap);
    if (mp_tx_validate(&t, msg, sizeof msg)) {
        PyErr_Format(mp_CorruptionError, "invalid journal: %s", msg);
        goto out;
    }
    int phase = mp_tx_recover(&t, msg, sizeof msg);
    if (phase < 0) {
        PyErr_Format(mp_CorruptionError, "invalid journal: %s", msg);
        goto out;
    }
    int rc = mp_tx_verify(&t, b + stoff, b + shoff, len, msg, sizeof msg);
    if (rc == MP_EINVAL) {
        PyErr_NoMemory();
        goto out;
    }
    if (rc) { /* st is the shadow with the log replayed between calls: damaged bytes */
        PyErr_SetString(mp_CorruptionError, msg);
        goto out;
    }
    r = PyLong_FromLong(phase);
out:
    PyBuffer_Release(&v);
    return r;
}

static PyObject *ext_fixed_max_blocks(PyObject *Py_UNUSED(mod), PyObject *arg)
{
    unsigned long long cap = PyLong_AsUnsignedLongLong(arg);
    if (cap == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    return PyLong_FromUnsignedLongLong(mp_fixed_max_blocks(cap));
}

static PyMethodDef module_methods[] = {
    {"fixed_max_blocks", ext_fixed_max_blocks, METH_O,
     "fixed_max_blocks($module, capacity, /)\n--\n\n"
     "The default max_blocks of a state that cannot grow (file and shared pools)."},
    {"journal_recover", ext_journal_recover, METH_VARARGS,
     "journal_recover($module, buffer, journal_offset, state_offset, shadow_offset, state_size,\n"
     "                undo_lo=None, undo_hi=None, log_offset=None, log_entries=None, /)\n"
     "--\n\nRoll an interrupted call of a persistent pool back (1) or forward (2); 0: none."},
    {"data_address", ext_data_address, METH_O,
     "data_address($module, obj, /)\n--\n\nAddress of the first byte of a (strided) buffer or array."},
    {"shared_ctl_size", ext_shared_ctl_size, METH_VARARGS,
     "shared_ctl_size($module, max_entries, max_leases, /)\n--\n\n"
     "Bytes of a shared pool's lock, block registry and lease table."},
    {"shared_ctl_reserved", ext_shared_ctl_reserved, METH_VARARGS,
     "shared_ctl_reserved($module, max_entries, max_leases, /)\n--\n\n"
     "The spans (offset, length) of a new lock area that its registry grows into later."},
    {"address_of", ext_address_of, METH_O,
     "address_of($module, buffer, /)\n--\n\nThe address of the buffer's first byte (an int)."},
    {"_restore", mp_ext_restore_fn, METH_VARARGS, "_restore(type, data): unpickle a strategy"},
    {"attach", mp_ext_attach, METH_VARARGS,
     "attach($module, buffer, offset, length, deep=True, /)\n--\n\n"
     "A strategy over the state block at buffer[offset:offset+length] (a file mapping or a\n"
     "shared segment), validated: CorruptionError for anything that is not a valid state."},
    {"validate_trace", ext_validate_trace, METH_VARARGS,
     "validate_trace($module, op, id, size, align, max_id, /)\n--\n\n"
     "(True, maxlive, 0) for a valid trace, else (False, index of the first invalid op, why):\n"
     "why 0: the ID's liveness; 1: live bytes beyond 2**62."},
    {"parse_trace", ext_parse_trace, METH_VARARGS,
     "parse_trace($module, text, op, id, size, align, /)\n--\n\n"
     "Parse trace text into preallocated arrays (uint8, uint32, uint64, uint32); returns\n"
     "the number of ops.  Raises ValueError('line N: ...') on malformed input."},
    {"replay", ext_replay, METH_VARARGS,
     "replay($module, strategy, op, id, size, align, max_id, every=0, samples=None, /)\n--\n\n"
     "Replay a parsed trace in C through `strategy` (None: the C library's malloc).\n"
     "With every >= 1, a row of SAMPLE_COLUMNS figures into the uint64 buffer `samples`\n"
     "after every `every` ops and after the last; the dict's 'samples' counts the rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "mempool._mempool",
    "The C core of mempool: strategy types and trace replay.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

static int import_names(void)
{
    PyObject *errors = PyImport_ImportModule("mempool.errors");
    if (!errors) return -1;
    struct {
        PyObject **dst;
        const char *name;
    } want[] = {{&mp_MempoolError, "MempoolError"}, {&mp_OutOfSpace, "OutOfSpace"},
                {&mp_NotAllocated, "NotAllocated"}, {&mp_CorruptionError, "CorruptionError"},
                {&mp_PoolClosed, "PoolClosed"},
                {&mp_UnnamedArrayWarning, "UnnamedArrayWarning"}};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        *want[k].dst = PyObject_GetAttrString(errors, want[k].name);
        if (!*want[k].dst) {
            Py_DECREF(errors);
            return -1;
        }
    }
    Py_DECREF(errors);
    PyObject *stats = PyImport_ImportModule("mempool.stats");
    if (!stats) return -1;
    mp_StatsType = PyObject_GetAttrString(stats, "Stats");
    Py_DECREF(stats);
    return mp_StatsType ? 0 : -1;
}

/* STRATEGIES: {name: type} in the list's order, and __all__: the public types. */
static int add_registry(PyObject *m)
{
    PyObject *reg = PyDict_New(), *all = Py_BuildValue("[ss]", "Block", "Strategy");
    if (!reg || !all) goto fail;
#define MP_REGISTER_(KIND, sname, number)                                                   \
    {                                                                                     \
        PyTypeObject *t = mp_type_of_ops(&mp_##sname##_ops);                               \
        PyObject *tn = t ? PyUnicode_FromString(strrchr(t->tp_name, '.') + 1) : NULL;      \
        int bad = !tn || PyDict_SetItemString(reg, mp_##sname##_ops.name, (PyObject *)t) < 0 \
                  || PyList_Append(all, tn) < 0;                                          \
        Py_XDECREF(tn);                                                                   \
        if (bad) goto fail;                                                               \
    }
    MP_STRATEGIES(MP_REGISTER_)
#undef MP_REGISTER_
    if (PyModule_AddObject(m, "STRATEGIES", reg) < 0) goto fail;
    reg = NULL;
    if (PyModule_AddObject(m, "__all__", all) < 0) goto fail;
    return 0;
fail:
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_SystemError, "a strategy type is not registered");
    Py_XDECREF(reg);
    Py_XDECREF(all);
    return -1;
}

PyMODINIT_FUNC PyInit__mempool(void)
{
    if (import_names() < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (mp_strategy_ready(m) < 0 || mp_block_ready(m) < 0 || mp_pool_ready(m) < 0 ||
        mp_sys_ready(m) < 0 || mp_handler_ready(m) < 0 || mp_recorder_ready(m) < 0 ||
        mp_shared_pool_ready(m) < 0)
        goto fail;
#define MP_TYPE_READY_(KIND, sname, number) \
    if (mp_##sname##_type_ready(m) < 0) goto fail;
    MP_STRATEGIES(MP_TYPE_READY_)
#undef MP_TYPE_READY_
    if (add_registry(m) < 0) goto fail;
    /* the columns of replay()'s sample rows, in the order of enum mp_sample_col */
    PyObject *cols = Py_BuildValue("(sssssss)", "ops", "used", "requested", "high_water",
                                   "largest_free", "available", "live");
    if (!cols || PyModule_AddObject(m, "SAMPLE_COLUMNS", cols) < 0) {
        Py_XDECREF(cols);
        goto fail;
    }
    _Static_assert(MP_SAMPLE_COLS == 7, "SAMPLE_COLUMNS names every column");
#ifdef MP_DEBUG
    const int debug_build = 1;
#else
    const int debug_build = 0;
#endif
    /* a build with the core's checks after every call (MEMPOOL_DEBUG=1): tests whose
     * size makes those O(n) checks quadratic scale themselves down */
    if (PyModule_AddObject(m, "DEBUG_BUILD", PyBool_FromLong(debug_build)) < 0) goto fail;
    /* False in a MEMPOOL_NO_JOURNAL=1 build (journal.h): for measuring the journal's cost
     * only, no crash consistency; mempool warns at import, the bench says which it ran */
    if (PyModule_AddObject(m, "JOURNAL_BUILD", PyBool_FromLong(MP_JOURNAL_ON)) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
