/*
 * pool_shared.c -- the shared-pool half of PoolCore: the segment's lock, the block
 * registry's references, and the per-process cache (see _core/shared.c).
 *
 * Paths, in order of frequency:
 *  - alloc of a small size this process freed before: popped from the local cache
 *    with a fresh tag (mp_ref_reuse): no lock, no shared cache line written but the
 *    range's own entry;
 *  - release of the handle alloc made (the owner's): one CAS, no lock; when it was
 *    the last reference to a small range, the range goes to the local cache (the
 *    entry stays, refs 0, owner = this pid);
 *  - everything else takes the lock: the strategy, the index, handles by tag and
 *    the references they borrow (recorded per process, so that reclaim(pid) can give
 *    back what a dead process held).
 * The cache holds at most MAG_CLASSES x MAG_DEPTH ranges of <= MAG_MAX bytes; it is
 * given back when the pool closes or is collected, before stats/check/segments, when
 * an allocation would otherwise fail, and by reclaim(pid) after the process died.
 * Small shared allocations are rounded up to 16 bytes so a cached range serves any
 * request of its class (not over a strategy of fixed-size items, mp_ops_t.fixed_size:
 * a Slab keeps its own free list, and rounding up could exceed its item).
 */
#include "native.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#define MAG_CLASSES 32 /* 16-byte classes */
#define MAG_MAX (MAG_CLASSES * 16)
#define MAG_DEPTH 16
#define TAG_CHUNK 4096

struct mp_shared_local {
    uint32_t pid;              /* whose cache this is (a forked child starts afresh) */
    uint64_t tag_next, tag_end;
    uint8_t n[MAG_CLASSES];
    struct {
        uint32_t entry;
        uint64_t offset;
    } slot[MAG_CLASSES][MAG_DEPTH];
};

static inline const mp_ops_t *OPS(PoolObject *p) { return p->strategy->ops; }
static inline void *ST(PoolObject *p) { return p->strategy->st; }

/* The cache class of a request, or -1 (too big, or a strategy of fixed-size items:
 * rounding up could exceed the item, and the slab keeps its own free list) */
static int mag_class(PoolObject *p, uint64_t size)
{
    return size <= MAG_MAX && !OPS(p)->fixed_size ? (int)((size + 15) >> 4) - 1 : -1;
}
/* the size a request is allocated with: its class's, so a cached range serves it */
static uint64_t rounded(PoolObject *p, uint64_t size)
{
    return mag_class(p, size) >= 0 ? (size + 15) & ~(uint64_t)15 : size;
}

static mp_shared_local_t *local_of(PoolObject *p)
{
    mp_shared_local_t *l = p->local;
    if (l->pid != mp_getpid()) { /* forked: the cache and the tags are the parent's */
        memset(l->n, 0, sizeof l->n);
        l->tag_next = l->tag_end = 0;
        l->pid = mp_getpid();
    }
    return l;
}

static uint64_t next_tag(PoolObject *p)
{
    mp_shared_local_t *l = local_of(p);
    if (l->tag_next == l->tag_end) {
        l->tag_next = mp_shared_reserve_tags(p->ctl, TAG_CHUNK);
        l->tag_end = l->tag_next + TAG_CHUNK;
    }
    return l->tag_next++;
}

/* ---- the lock -------------------------------------------------------------------------- */
int mp_pool_lock(PoolObject *p)
{
    if (!p->ctl) return 0;
    p->lock_calls++;
    int rc = mp_shared_trylock(p->ctl);
    if (rc == EBUSY) { /* another process holds it: wait without the GIL */
        p->waiting++;  /* close() waits for us to leave before it unmaps the segment */
        Py_BEGIN_ALLOW_THREADS rc = mp_shared_lock_wait(p->ctl);
        Py_END_ALLOW_THREADS
        p->waiting--;
    }
    char msg[256];
    int r = mp_shared_locked(p->ctl, rc, OPS(p), ST(p), p->strategy->st_len, msg, sizeof msg);
    if (r == MP_OK && p->closing) { /* closed by another thread while we waited */
        mp_shared_unlock(p->ctl);
        PyErr_SetString(mp_PoolClosed, "the pool was closed while this call waited for its lock");
        return -1;
    }
    if (r == MP_OK) return 0;
    PyErr_SetString(r == MP_ECORRUPT ? mp_CorruptionError : PyExc_OSError, msg);
    return -1;
}

void mp_pool_unlock(PoolObject *p)
{
    if (p->ctl) mp_shared_unlock(p->ctl);
}

void mp_sh_drain(PoolObject *p)
{
    while (p->waiting > 0) { /* they hold no lock of ours: let them run and leave */
        Py_BEGIN_ALLOW_THREADS
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
        Py_END_ALLOW_THREADS
    }
}

/* Drop an entry this process holds with refs 0 and free its range (lock held). */
static void dispose(PoolObject *p, uint32_t entry)
{
    uint64_t off = mp_reg_entry(p->ctl, entry)->offset;
    mp_reg_drop(p->ctl, entry);
    OPS(p)->free(ST(p), off);
}

/* Give the local cache back (lock held); returns the ranges freed. */
static uint64_t flush(PoolObject *p)
{
    mp_shared_local_t *l = local_of(p);
    uint64_t n = 0;
    for (int k = 0; k < MAG_CLASSES; k++) {
        for (int j = 0; j < l->n[k]; j++) {
            uint32_t i = l->slot[k][j].entry;
            mp_entry_t *e = mp_reg_entry(p->ctl, i);
            /* still ours (reclaim(pid, force=True) by another process could take it) */
            if (e->offset == l->slot[k][j].offset && mp_entry_refs(e) == 0 &&
                mp_entry_owner(e) == l->pid) {
                dispose(p, i);
                n++;
            }
        }
        l->n[k] = 0;
    }
    return n;
}

/* ---- allocation ---------------------------------------------------------------------- */
int mp_sh_alloc(PoolObject *p, uint64_t size, uint64_t align, uint64_t *off, uint64_t *tag,
                uint32_t *entry)
{
    mp_shared_local_t *l = local_of(p);
    int k = mag_class(p, size);
    if (k >= 0) { /* the cache, newest first, no lock */
        for (int j = l->n[k]; j-- > 0;) {
            uint64_t o = l->slot[k][j].offset;
            uint32_t i = l->slot[k][j].entry;
            if (o % align) continue;
            l->slot[k][j] = l->slot[k][--l->n[k]];
            uint64_t t = next_tag(p);
            if (mp_ref_reuse(p->ctl, i, l->pid, t, size) == MP_OK) {
                *off = o;
                *tag = t;
                *entry = i;
                return 0;
            }
        }
    }
    if (mp_pool_lock(p) < 0) return -1;
    mp_head_t saved = *(mp_head_t *)ST(p); /* the registry may refuse: undo */
    uint64_t want = rounded(p, size);
    int rc = OPS(p)->alloc(ST(p), want, align, off);
    if (rc != MP_OK && flush(p)) rc = OPS(p)->alloc(ST(p), want, align, off); /* the cache */
    int reg = MP_OK;
    for (int attempt = 0; rc == MP_OK; attempt++) {
        *tag = next_tag(p);
        reg = mp_reg_add(p->ctl, *off, size, l->pid, *tag, entry);
        if (reg == MP_OK) break;
        OPS(p)->free(ST(p), *off);
        *(mp_head_t *)ST(p) = saved;
        /* the registry is full: the cache's ranges hold entries; give them back, retry */
        if (attempt || !flush(p)) break;
        saved = *(mp_head_t *)ST(p);
        rc = OPS(p)->alloc(ST(p), want, align, off);
    }
    mp_err_t err;
    if (rc) mp_err_capture(p->strategy, rc, size, align, 0, &err); /* reads the state: locked */
    mp_pool_unlock(p);
    /* Python objects only now: a GC pass under the lock could release a Block */
    if (rc) mp_err_raise(&err);
    else if (reg)
        PyErr_Format(mp_OutOfSpace, "cannot allocate %llu bytes: the shared pool's block "
                     "registry is full (max_entries)", (unsigned long long)size);
    return rc || reg ? -1 : 0;
}

/* Is b's entry still the one b was made for?  (Atomic reads: b holds a reference,
 * so the entry cannot go away but through a misuse such as reclaim(force=True) of
 * a live process.) */
static int entry_matches(PoolObject *p, BlockObject *b)
{
    mp_entry_t *e = mp_reg_entry(p->ctl, b->entry);
    return __atomic_load_n(&e->offset, __ATOMIC_ACQUIRE) == b->offset &&
           __atomic_load_n(&e->tag, __ATOMIC_ACQUIRE) == b->tag;
}

int mp_sh_release(PoolObject *p, BlockObject *b)
{
    if (b->pid != mp_getpid()) { /* inherited through fork(): the parent's handle */
        b->live = 0;
        return 0;
    }
    if (!entry_matches(p, b)) {
        b->live = 0;
        PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed or reused (reclaimed "
                     "while its process was alive?)", (unsigned long long)b->offset);
        return -1;
    }
    if (!b->owner) { /* a borrowed reference: given back under the lock */
        if (mp_pool_lock(p) < 0) return -1;
        if (!b->live) { /* another thread gave it back while we waited for the lock */
            mp_pool_unlock(p);
            PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed",
                         (unsigned long long)b->offset);
            return -1;
        }
        if (mp_ref_release_borrowed(p->ctl, b->entry, b->pid) == 1) dispose(p, b->entry);
        mp_pool_unlock(p);
        b->live = 0;
        return 0;
    }
    int last = mp_ref_release(p->ctl, b->entry, b->pid, 1);
    b->live = 0;
    if (last <= 0) return 0; /* others still hold it (-1: cannot happen with a matching entry) */
    mp_shared_local_t *l = local_of(p);
    int k = mag_class(p, b->size);
    if (k >= 0 && l->n[k] < MAG_DEPTH) { /* keep it for the next alloc */
        l->slot[k][l->n[k]].entry = b->entry;
        l->slot[k][l->n[k]].offset = b->offset;
        l->n[k]++;
        return 0;
    }
    if (mp_pool_lock(p) < 0) return -1; /* the range stays ours: reclaim finds it */
    dispose(p, b->entry);
    mp_pool_unlock(p);
    return 0;
}

PyObject *mp_sh_handle(PoolObject *p, PyObject *what, uint64_t off, uint64_t tag)
{
    if (mp_pool_lock(p) < 0) return NULL;
    uint32_t i = off == UINT64_MAX ? MP_NIL : mp_reg_lookup(p->ctl, off);
    int disp = 0, rc = i == MP_NIL ? MP_ENOTALLOC : mp_ref_take(p->ctl, i, tag, mp_getpid(), &disp);
    if (disp) dispose(p, i);
    if (rc != MP_OK) {
        mp_pool_unlock(p);
        if (tag)
            PyErr_Format(mp_NotAllocated, "stale handle: the range at offset %llu (tag %llu) was "
                         "freed or reused", (unsigned long long)off, (unsigned long long)tag);
        else PyErr_Format(mp_NotAllocated, "offset %S is not the start of a live range", what);
        return NULL;
    }
    mp_entry_t *e = mp_reg_entry(p->ctl, i);
    BlockObject *b = mp_block_new(p, off, e->size, 1, 1);
    if (b) {
        b->tag = e->tag;
        b->entry = i;
    } else if (mp_ref_release_borrowed(p->ctl, i, mp_getpid()) == 1) {
        dispose(p, i);
    }
    mp_pool_unlock(p);
    return (PyObject *)b;
}

int mp_sh_realloc(PoolObject *p, BlockObject *b, uint64_t size, uint64_t *off)
{
    if (b->pid != mp_getpid() || !entry_matches(p, b)) {
        PyErr_Format(mp_NotAllocated, "the block at offset %llu is not this process's live "
                     "handle", (unsigned long long)b->offset);
        return -1;
    }
    if (mp_pool_lock(p) < 0) return -1;
    /* the wait for the lock may have let other threads free b or export a view of it */
    if (!b->live || !entry_matches(p, b)) {
        mp_pool_unlock(p);
        PyErr_Format(mp_NotAllocated, "the block at offset %llu was freed",
                     (unsigned long long)b->offset);
        return -1;
    }
    if (b->exports > 0) {
        mp_pool_unlock(p);
        PyErr_Format(PyExc_BufferError,
                     "cannot resize the block at offset %llu: %zd view(s) of it are alive",
                     (unsigned long long)b->offset, b->exports);
        return -1;
    }
    mp_entry_t *e = mp_reg_entry(p->ctl, b->entry);
    uint32_t refs = mp_entry_refs(e);
    if (refs > 1) {
        mp_pool_unlock(p);
        PyErr_Format(PyExc_BufferError, "cannot resize the block at offset %llu: %u other "
                     "handle(s) of it are alive", (unsigned long long)b->offset, refs - 1);
        return -1;
    }
    int rc = OPS(p)->realloc(ST(p), b->offset, rounded(p, size), b->align, off);
    if (rc == MP_OK) {
        if (*off != b->offset) {
            mp_reg_move(p->ctl, b->entry, *off, size);
            /* the bytes move before the lock goes: the old range is free now, and
             * another process may take it as soon as we unlock */
            if (p->base)
                memmove(p->base + *off, p->base + b->offset,
                        (size_t)(size < b->size ? size : b->size));
        } else {
            e->size = size;
        }
    }
    mp_err_t err;
    if (rc) mp_err_capture(p->strategy, rc, size, b->align, b->offset, &err);
    mp_pool_unlock(p);
    if (rc) mp_err_raise(&err); /* after the lock: see mp_sh_alloc */
    return rc ? -1 : 0;
}

/* Before close: the cache and every live handle of this process go back. */
void mp_sh_close(PoolObject *p)
{
    if (mp_pool_lock(p) < 0) {
        PyErr_Clear();
        return;
    }
    flush(p);
    for (BlockObject *b = p->blocks; b; b = b->next) {
        if (!b->live || b->pid != mp_getpid()) continue;
        if (entry_matches(p, b) &&
            (b->owner ? mp_ref_release(p->ctl, b->entry, b->pid, 1)
                      : mp_ref_release_borrowed(p->ctl, b->entry, b->pid)) == 1)
            dispose(p, b->entry);
        b->live = 0;
    }
    mp_pool_unlock(p);
}

void mp_sh_untake(PoolObject *p, uint32_t entry)
{
    if (mp_pool_lock(p) < 0) {
        PyErr_Clear();
        return;
    }
    if (mp_ref_release(p->ctl, entry, mp_getpid(), 1) == 1) dispose(p, entry);
    mp_pool_unlock(p);
}

void mp_sh_free_local(PoolObject *p)
{
    PyMem_Free(p->local);
    p->local = NULL;
}

/* ---- methods -------------------------------------------------------------------------- */
/* _set_shared(buffer, offset, length, max_entries, reducer, array_type): make this a
 * shared pool whose lock and registry live at buffer[offset:offset+length];
 * max_entries > 0 initialises them (create), 0 attaches (layout validated here,
 * the whole state by _check_shared under the lock). */
PyObject *mp_ext_pool_set_shared(PoolObject *self, PyObject *args)
{
    PyObject *buffer, *reducer, *array_type;
    unsigned long long offset, length, max_entries;
    if (!PyArg_ParseTuple(args, "OKKKOO!", &buffer, &offset, &length, &max_entries, &reducer,
                          &PyType_Type, &array_type))
        return NULL;
    if (self->has_ctl || self->closed || !self->strategy) {
        PyErr_SetString(PyExc_RuntimeError, "the pool cannot become shared now");
        return NULL;
    }
    if (!mp_is_ndarray_type(array_type)) {
        PyErr_SetString(PyExc_TypeError, "array_type must be an ndarray subclass");
        return NULL;
    }
    self->local = PyMem_Calloc(1, sizeof *self->local);
    if (!self->local) return PyErr_NoMemory();
    self->local->pid = mp_getpid();
    if (PyObject_GetBuffer(buffer, &self->ctl_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        goto fail_local;
    char msg[256];
    mp_shared_ctl_t *c = (mp_shared_ctl_t *)((char *)self->ctl_view.buf + offset);
    if (offset % 64 || offset > (unsigned long long)self->ctl_view.len ||
        length > (unsigned long long)self->ctl_view.len - offset) {
        PyErr_SetString(mp_CorruptionError, "the lock area does not fit the segment");
        goto fail;
    }
    if (max_entries) {
        if (mp_shared_ctl_size(max_entries) != length || mp_shared_ctl_init(c, max_entries)) {
            PyErr_SetString(PyExc_ValueError, "cannot initialise the lock area");
            goto fail;
        }
    } else if (mp_shared_check_layout(c, length, msg, sizeof msg)) {
        PyErr_Format(mp_CorruptionError, "invalid lock area: %s", msg);
        goto fail;
    }
    self->has_ctl = 1;
    self->ctl = c;
    self->ctl_len = length;
    Py_INCREF(reducer);
    self->reducer = reducer;
    Py_INCREF(array_type);
    self->array_type = (PyTypeObject *)array_type;
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&self->ctl_view);
fail_local:
    mp_sh_free_local(self);
    return NULL;
}

static PyObject *need_shared(PoolObject *self)
{
    if (mp_pool_check_open(self) < 0) return NULL;
    if (!self->ctl) {
        PyErr_SetString(PyExc_TypeError, "not a shared pool");
        return NULL;
    }
    return Py_None;
}

/* _check_shared(): the whole check under the lock (after giving the cache back) */
PyObject *mp_ext_pool_check_shared(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!need_shared(self) || mp_pool_lock(self) < 0) return NULL;
    char msg[256];
    flush(self);
    int rc = mp_shared_check(self->ctl, self->ctl_len, OPS(self), ST(self),
                             self->strategy->st_len, msg, sizeof msg);
    mp_pool_unlock(self);
    if (rc) {
        PyErr_SetString(mp_CorruptionError, msg);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _locked(name, *args): a strategy method (stats, segments...) on a copy of the state
 * taken under the lock, after giving this process's cache back so that the figures
 * show what it freed.  The method runs after the lock: it makes Python objects, and a
 * GC pass under the lock could release a Block, which needs the lock. */
PyObject *mp_ext_pool_locked(PoolObject *self, PyObject *args)
{
    if (mp_pool_check_open(self) < 0) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(args, 0))) {
        PyErr_SetString(PyExc_TypeError, "_locked(name, *args)");
        return NULL;
    }
    uint64_t len = self->strategy->st_len;
    PyObject *copy = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)len), *r = NULL;
    if (!copy) return NULL;
    if (mp_pool_lock(self) < 0) {
        Py_DECREF(copy);
        return NULL;
    }
    if (self->ctl) flush(self);
    memcpy(PyByteArray_AS_STRING(copy), ST(self), (size_t)len);
    mp_pool_unlock(self);
    PyObject *at = Py_BuildValue("(OKKi)", copy, 0ULL, (unsigned long long)len, 0);
    PyObject *strat = at ? mp_ext_attach(NULL, at) : NULL; /* consistent: copied locked */
    PyObject *fn = strat ? PyObject_GetAttr(strat, PyTuple_GET_ITEM(args, 0)) : NULL;
    PyObject *rest = fn ? PyTuple_GetSlice(args, 1, n) : NULL;
    if (rest) r = PyObject_Call(fn, rest, NULL);
    Py_XDECREF(rest);
    Py_XDECREF(fn);
    Py_XDECREF(strat);
    Py_XDECREF(at);
    Py_DECREF(copy);
    return r;
}

/* _flush_cache() -> ranges given back: the process's cache, now (exit hooks) */
PyObject *mp_ext_pool_flush_cache(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!need_shared(self) || mp_pool_lock(self) < 0) return NULL;
    uint64_t n = flush(self);
    mp_pool_unlock(self);
    return PyLong_FromUnsignedLongLong(n);
}

/* _reclaim(pid) -> (freed, released) */
PyObject *mp_ext_pool_reclaim(PoolObject *self, PyObject *arg)
{
    unsigned long pid = PyLong_AsUnsignedLong(arg);
    if (pid == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    if (!need_shared(self) || mp_pool_lock(self) < 0) return NULL;
    uint64_t released, freed = mp_shared_reclaim(self->ctl, OPS(self), ST(self), (uint32_t)pid,
                                                 &released);
    mp_pool_unlock(self);
    return Py_BuildValue("(KK)", (unsigned long long)freed, (unsigned long long)released);
}

/* _hold_lock(seconds): take the lock and sleep holding it (tests kill us meanwhile) */
PyObject *mp_ext_pool_hold_lock(PoolObject *self, PyObject *arg)
{
    double secs = PyFloat_AsDouble(arg);
    if (secs == -1.0 && PyErr_Occurred()) return NULL;
    if (!need_shared(self) || mp_pool_lock(self) < 0) return NULL;
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    Py_BEGIN_ALLOW_THREADS nanosleep(&ts, NULL);
    Py_END_ALLOW_THREADS mp_pool_unlock(self);
    Py_RETURN_NONE;
}

/* _shared_stats(): the lock and registry counters */
PyObject *mp_ext_pool_shared_stats(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!need_shared(self)) return NULL;
    uint64_t v[8];
    mp_shared_stats(self->ctl, v); /* plain counters: read without the lock */
    mp_shared_local_t *l = local_of(self);
    unsigned long long cached = 0;
    for (int k = 0; k < MAG_CLASSES; k++) cached += l->n[k];
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsK}", "entries", (unsigned long long)v[0],
                         "max_entries", (unsigned long long)v[1], "serial",
                         (unsigned long long)v[2], "lock_calls",
                         (unsigned long long)self->lock_calls, "lock_waits",
                         (unsigned long long)v[4], "lock_wait_ns", (unsigned long long)v[5],
                         "recoveries", (unsigned long long)v[6], "repaired",
                         (unsigned long long)v[7], "cached", cached);
}

/* _handle(offset, tag): unpickle a shared block handle */
PyObject *mp_ext_pool_handle(PoolObject *self, PyObject *args)
{
    unsigned long long off, tag;
    if (!PyArg_ParseTuple(args, "KK", &off, &tag)) return NULL;
    if (mp_pool_check_open(self) < 0) return NULL;
    if (!self->ctl || !tag) {
        PyErr_SetString(PyExc_TypeError, "handles name blocks of shared pools");
        return NULL;
    }
    PyObject *o = PyLong_FromUnsignedLongLong(off);
    if (!o) return NULL;
    PyObject *b = mp_sh_handle(self, o, off, tag);
    Py_DECREF(o);
    return b;
}
