/*
 * pool_shared_named.c -- the methods of SharedPoolCore behind pool.named (named.py):
 * the directory of _core/named.h in a shared segment (its root in the header page, at
 * MP_NAMED_ROOT_OFFSET), read and changed by every attached process under the
 * segment's lock, each change one transaction of the segment's journal.
 *
 * References.  Every range the directory owns (a name's data, its record, the table)
 * has a registry entry like any Block's range, so check() and reclaim see it; the
 * name's own reference is borrowed by MP_NAME_PID, no process (mp_reg_add_named), so a
 * dying process never takes a name with it.  A view of a named range (named.py makes
 * it through _handle) borrows one more reference like any handle: so every view in
 * every process, and every pickled handle in flight, counts; deleting or replacing a
 * name is refused (BufferError, nothing changed) while the data's entry holds any
 * reference but the name's.  An adopted Block keeps its own reference; the name takes
 * one more.  There is no per-process cache of records: another process may change
 * the directory at any time, so each lookup reads it under the lock.
 *
 * As everywhere in pool_shared.c, no Python object is made while the lock is held
 * (a GC pass there could release a Block, whose release may wait for the lock): what
 * a call returns or raises is captured in C and built after unlocking.
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL mempool_ARRAY_API
#define NO_IMPORT_ARRAY
#include "native.h"

#include <string.h>

/* ---- the directory's ranges in the registry ------------------------------------------ */
static int on_alloc(void *arg, uint64_t off, uint64_t size)
{
    PoolObject *p = arg;
    mp_shared_ctl_t *c = mp_sh_ctl(p);
    uint32_t i;
    if (!mp_reg_has_room(c)) return MP_ENONODES;
    return mp_reg_add_named(c, off, size, mp_sh_next_tag(p), &i);
}

static void on_free(void *arg, uint64_t off)
{
    mp_shared_ctl_t *c = mp_sh_ctl((PoolObject *)arg);
    uint32_t i = mp_reg_lookup(c, off);
    if (i != MP_NIL) mp_reg_drop(c, i);
}

static int ready(PoolObject *self)
{
    if (mp_pool_check_open(self) < 0) return -1;
    if (!self->named) {
        PyErr_SetString(PyExc_TypeError, "this pool has no directory of named arrays");
        return -1;
    }
    return 0;
}

/* What went wrong under the lock, raised after it. */
enum { E_NONE, E_CORRUPT, E_VIEWS, E_NOTLIVE, E_NAMED, E_VIEW, E_ALLOC, E_REGISTRY, E_ABSENT, E_NOMEM };
typedef struct {
    int kind;
    char msg[200];
    uint64_t n;
    mp_err_t err;
} fail_t;

static PyObject *raise_fail(const fail_t *f, PyObject *name, const char *verb)
{
    switch (f->kind) {
    case E_CORRUPT: PyErr_Format(mp_CorruptionError, "%s", f->msg); break;
    case E_VIEWS:
        PyErr_Format(PyExc_BufferError, "cannot %s the array named %R: %llu view(s) or "
                     "handle(s) of it are alive (in this or another process)", verb, name,
                     (unsigned long long)f->n);
        break;
    case E_NOTLIVE:
        PyErr_SetString(mp_NotAllocated, "the block is not a live block of this pool");
        break;
    case E_NAMED: PyErr_SetString(PyExc_ValueError, "the range is named already"); break;
    case E_VIEW: PyErr_SetString(PyExc_ValueError, "view lies outside the data range"); break;
    case E_ALLOC: mp_err_raise(&f->err); break;
    case E_REGISTRY:
        if (f->msg[0]) /* (the registry could not grow: /dev/shm is full) */
            PyErr_Format(mp_OutOfSpace, "cannot name %R: %s", name, f->msg);
        else
            PyErr_Format(mp_OutOfSpace, "cannot name %R: the shared pool's block registry "
                         "is full (max_entries)", name);
        break;
    case E_ABSENT: PyErr_SetObject(PyExc_KeyError, name); break;
    default: break;
    }
    return NULL;
}

/* _named_bind(buffer, offset): the directory's root is buffer[offset:offset+64], in
 * the segment whose lock this pool takes (validated under it: CorruptionError). */
PyObject *mp_ext_shnamed_bind(PoolObject *self, PyObject *args)
{
    PyObject *buffer, *oo;
    uint64_t off;
    if (!PyArg_ParseTuple(args, "OO", &buffer, &oo)) return NULL;
    if (mp_arg_u64(oo, "offset", &off)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "offset out of range");
        return NULL;
    }
    if (mp_pool_check_open(self) < 0) return NULL;
    if (self->has_named || !self->base) {
        PyErr_SetString(PyExc_RuntimeError, "the directory is bound already (or no memory)");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(buffer, &v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    char *root = (char *)v.buf + off;
    mp_tx_t *tx = mp_sh_tx(self);
    /* the root must be where the journal may undo-log it (pool_shared.c's undo range) */
    if (!mp_fits((uint64_t)v.len, off, MP_NAMED_ROOT_BYTES) || ((uintptr_t)root & 7) ||
        root < tx->undo_lo || root + MP_NAMED_ROOT_BYTES > tx->undo_hi) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "the root must lie inside the segment's header, "
                                          "8-aligned");
        return NULL;
    }
    mp_named_t *d = PyMem_Calloc(1, sizeof *d);
    if (!d) {
        PyBuffer_Release(&v);
        return PyErr_NoMemory();
    }
    d->root = (mp_named_root_t *)root;
    d->base = self->base;
    d->cap = self->capacity;
    d->ops = self->strategy->ops;
    d->st = self->strategy->st;
    d->tx = tx;
    d->on_alloc = on_alloc;
    d->on_free = on_free;
    d->arg = self;
    if (mp_sh_lock(self) < 0) {
        PyMem_Free(d);
        PyBuffer_Release(&v);
        return NULL;
    }
    d->st = self->strategy->st; /* (taking the lock may have followed a grown state) */
    char msg[200];
    int bad = mp_named_check_root(d, msg, sizeof msg);
    mp_sh_unlock(self);
    if (bad) {
        PyMem_Free(d);
        PyBuffer_Release(&v);
        PyErr_Format(mp_CorruptionError, "%s", msg);
        return NULL;
    }
    self->named = d;
    self->named_view = v;
    self->has_named = 1;
    Py_RETURN_NONE;
}

/* _named_find(name) -> None, or (record bytes, data offset, data tag): named.py makes
 * the view with _handle(offset, tag), which fails (NotAllocated) when the name went
 * meanwhile. */
PyObject *mp_ext_shnamed_find(PoolObject *self, PyObject *name)
{
    uint32_t n;
    const char *s = mp_named_name_of(name, &n);
    if (!s || ready(self) < 0) return NULL;
    mp_named_t *d = self->named;
    fail_t f = {0};
    char *rec = NULL;
    uint64_t rlen = 0, data = 0, tag = 0, slot, roff;
    if (mp_sh_lock(self) < 0) return NULL;
    mp_shared_ctl_t *c = mp_sh_ctl(self);
    int rc = mp_named_find(d, s, n, mp_named_hash(s, n), &slot, &roff, f.msg, sizeof f.msg);
    if (rc == MP_ENOTALLOC) {
        f.kind = E_ABSENT;
    } else if (rc) {
        f.kind = E_CORRUPT;
    } else {
        const mp_named_rec_t *h = (const mp_named_rec_t *)(d->base + roff);
        uint32_t i = mp_reg_lookup(c, h->data);
        if (i == MP_NIL) {
            f.kind = E_CORRUPT;
            snprintf(f.msg, sizeof f.msg, "named directory: a name's range at %llu has no "
                     "registry entry", (unsigned long long)h->data);
        } else if (!(rec = PyMem_RawMalloc(h->size))) { /* (no GC: a raw allocation) */
            f.kind = E_NOMEM;
        } else {
            rlen = h->size;
            memcpy(rec, h, rlen);
            data = h->data;
            tag = mp_reg_entry(c, i)->tag;
        }
    }
    mp_sh_unlock(self);
    if (f.kind == E_ABSENT) Py_RETURN_NONE;
    if (f.kind == E_NOMEM) return PyErr_NoMemory();
    if (f.kind) return raise_fail(&f, name, "find");
    PyObject *r = Py_BuildValue("(y#KK)", rec, (Py_ssize_t)rlen, (unsigned long long)data,
                                (unsigned long long)tag);
    PyMem_RawFree(rec);
    return r;
}

/* _named_owns(offset) -> bool */
PyObject *mp_ext_shnamed_owns(PoolObject *self, PyObject *o)
{
    uint64_t off;
    int big = mp_arg_u64(o, "offset", &off);
    if (big < 0 || ready(self) < 0) return NULL;
    if (big) Py_RETURN_FALSE;
    if (mp_sh_lock(self) < 0) return NULL;
    int rc = mp_named_owns(self->named, off);
    mp_sh_unlock(self);
    if (rc < 0) {
        PyErr_SetString(mp_CorruptionError, "named directory: a record offset outside the pool");
        return NULL;
    }
    return PyBool_FromLong(rc);
}

/* The references on the data range at `data` beyond the name's (lock held): 0 when the
 * name may go; UINT64_MAX (and f set) when the range has no entry. */
static uint64_t others(mp_shared_ctl_t *c, uint64_t data, fail_t *f)
{
    uint32_t i = mp_reg_lookup(c, data);
    if (i == MP_NIL) {
        f->kind = E_CORRUPT;
        snprintf(f->msg, sizeof f->msg, "named directory: a name's range at %llu has no "
                 "registry entry", (unsigned long long)data);
        return UINT64_MAX;
    }
    uint32_t refs = mp_entry_refs(mp_reg_entry(c, i));
    return refs ? refs - 1 : 0;
}

/* _named_put(name, record, source, block, view) -> None: as PoolCore's (pool_named.c),
 * one transaction under the segment's lock; nothing changed on any error. */
PyObject *mp_ext_shnamed_put(PoolObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    mp_named_put_args_t a;
    if (mp_named_put_args(args, nargs, &a) < 0) return NULL;
    const char *s = a.name;
    uint32_t n = a.n;
    uint64_t view = a.view;
    int has_src = a.has_src;
    BlockObject *blk = a.blk;
    PyObject *result = NULL;
    if (ready(self) < 0) goto out;
    if (blk && (blk->pool != self || !blk->live || blk->pid != mp_getpid())) {
        PyErr_SetString(mp_NotAllocated, "the block is not a live block of this pool (in this "
                                         "process)");
        goto out;
    }
    if (mp_sh_lock(self) < 0) goto out;
    mp_named_t *d = self->named;
    mp_shared_ctl_t *c = mp_sh_ctl(self);
    mp_tx_t *tx = mp_sh_tx(self);
    int grown = 0;
retry:; /* (again after a rollback too: it undid a growth of the registry) */
    (void)mp_sh_reg_room(self, 4); /* (a name takes up to 4 entries: else E_REGISTRY) */
    mp_tx_room(tx, 16, MP_JOURNAL_UNDO - 8); /* the whole change in one transaction */
    fail_t f = {0};
    uint64_t hash = mp_named_hash(s, n), slot = 0, old = 0, old_data = 0, data = 0, dsize = 0;
    uint64_t rlen = (uint64_t)PyBytes_GET_SIZE(args[1]), rec = 0, asked = 0, aalign = 64;
    int rc = mp_named_find(d, s, n, hash, &slot, &old, f.msg, sizeof f.msg);
    int exists = rc == MP_OK;
    if (rc && rc != MP_ENOTALLOC) {
        f.kind = E_CORRUPT;
        goto unlock;
    }
    if (exists) {
        old_data = ((const mp_named_rec_t *)(d->base + old))->data;
        uint64_t v = others(c, old_data, &f);
        if (f.kind) goto unlock;
        if (v) {
            f.kind = E_VIEWS;
            f.n = v;
            goto unlock;
        }
    }
    if (blk) {
        mp_entry_t *e = mp_reg_entry(c, blk->entry);
        data = blk->offset;
        /* (again under the lock: another thread may have freed the block while this
         * call waited for it; a freed range keeps its offset and tag until reused) */
        if (!blk->live || mp_entry_refs(e) == 0 || e->offset != data || e->tag != blk->tag ||
            d->ops->size_of(d->st, data, &dsize) != MP_OK) {
            f.kind = E_NOTLIVE;
            goto unlock;
        }
        rc = mp_named_owns(d, data);
        if (rc) {
            f.kind = rc > 0 ? E_NAMED : E_CORRUPT;
            snprintf(f.msg, sizeof f.msg, "named directory: a record offset outside the pool");
            goto unlock;
        }
    } else {
        dsize = a.src.len ? (uint64_t)a.src.len : 1;
    }
    if (view >= dsize && view != 0) {
        f.kind = E_VIEW;
        goto unlock;
    }
    if (has_src) {
        asked = dsize;
        rc = mp_named_alloc(d, dsize, 64, &data);
        if (rc) goto fail;
        d->ops->size_of(d->st, data, &dsize);
        if (a.src.len) memcpy(d->base + data, a.src.buf, (size_t)a.src.len);
    }
    asked = rlen;
    aalign = 8;
    rc = mp_named_alloc(d, rlen, 8, &rec);
    if (rc) goto fail;
    mp_named_rec_write(d, rec, PyBytes_AS_STRING(args[1]), rlen, hash, data, dsize, view);
    if (exists) {
        mp_named_replace(d, slot, rec);
        mp_named_free(d, old);
        if (old_data != data) mp_named_free(d, old_data);
    } else {
        asked = 32 * (d->root->slots ? d->root->slots : 8);
        aalign = 64;
        rc = mp_named_insert(d, hash, rec);
        if (rc) goto fail;
    }
    if (blk) { /* last: nothing fails after it (the Block holds a reference: refs > 0) */
        int disp = 0;
        mp_ref_take(c, blk->entry, blk->tag, MP_NAME_PID, &disp);
    }
    goto unlock;
fail:
    if (rc == MP_ENONODES && !mp_reg_has_room(c)) {
        f.kind = E_REGISTRY;
        char *why = mp_sh_grow_why(self);
        snprintf(f.msg, sizeof f.msg, "%s", why);
        why[0] = 0;
    } else if (rc == MP_ECORRUPT) {
        f.kind = E_CORRUPT;
        snprintf(f.msg, sizeof f.msg, "%s", MP_NAMED_FULL);
    } else {
        f.kind = E_ALLOC;
        mp_err_capture(self->strategy, rc, asked, aalign, 0, &f.err); /* reads the state */
    }
    mp_shared_abort(tx); /* the state, registry and directory as before the call */
    if (f.kind == E_ALLOC && rc == MP_ENONODES && grown < 32 && mp_sh_grow(self) == MP_OK) {
        grown++; /* the state's budget was spent: it grew, and the change starts over */
        d->st = self->strategy->st;
        goto retry;
    }
unlock:
    mp_sh_unlock(self);
    if (f.kind) raise_fail(&f, args[0], "replace");
    else result = Py_NewRef(Py_None);
out:
    if (has_src) PyBuffer_Release(&a.src);
    return result;
}

/* _named_del(name): KeyError when absent, BufferError while a view or handle of it is
 * alive in any process. */
PyObject *mp_ext_shnamed_del(PoolObject *self, PyObject *name)
{
    uint32_t n;
    const char *s = mp_named_name_of(name, &n);
    if (!s || ready(self) < 0) return NULL;
    if (mp_sh_lock(self) < 0) return NULL;
    mp_named_t *d = self->named;
    mp_shared_ctl_t *c = mp_sh_ctl(self);
    fail_t f = {0};
    uint64_t slot, rec;
    int rc = mp_named_find(d, s, n, mp_named_hash(s, n), &slot, &rec, f.msg, sizeof f.msg);
    if (rc == MP_ENOTALLOC) {
        f.kind = E_ABSENT;
    } else if (rc) {
        f.kind = E_CORRUPT;
    } else {
        uint64_t data = ((const mp_named_rec_t *)(d->base + rec))->data;
        uint64_t v = others(c, data, &f);
        if (!f.kind && v) {
            f.kind = E_VIEWS;
            f.n = v;
        }
        if (!f.kind) {
            mp_tx_room(mp_sh_tx(self), 8, MP_JOURNAL_UNDO - 8);
            mp_named_remove(d, slot);
            mp_named_free(d, rec);
            mp_named_free(d, data);
        }
    }
    mp_sh_unlock(self);
    if (f.kind) return raise_fail(&f, name, "delete");
    Py_RETURN_NONE;
}

/* _named_names() -> list of str: the names copied out under the lock, decoded after. */
typedef struct {
    const mp_named_t *d;
    char *buf;
    size_t len, cap;
    fail_t *f;
} names_ctx_t;

static int name_one(void *ctx, uint64_t rec)
{
    names_ctx_t *x = ctx;
    if (mp_named_rec_ok(x->d, rec, x->f->msg, sizeof x->f->msg)) {
        x->f->kind = E_CORRUPT;
        return -1;
    }
    const mp_named_rec_t *h = (const mp_named_rec_t *)(x->d->base + rec);
    size_t need = 4 + h->name_len;
    if (x->len + need > x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 4096;
        while (cap < x->len + need) cap *= 2;
        char *b = PyMem_RawRealloc(x->buf, cap);
        if (!b) {
            x->f->kind = E_NOMEM;
            return -1;
        }
        x->buf = b;
        x->cap = cap;
    }
    uint32_t nl = h->name_len;
    memcpy(x->buf + x->len, &nl, 4);
    memcpy(x->buf + x->len + 4, x->d->base + rec + MP_NAMED_REC_HEAD + 16ull * h->ndim, nl);
    x->len += need;
    return 0;
}

PyObject *mp_ext_shnamed_names(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ready(self) < 0) return NULL;
    fail_t f = {0};
    names_ctx_t x = {self->named, NULL, 0, 0, &f};
    if (mp_sh_lock(self) < 0) return NULL;
    mp_named_walk(self->named, name_one, &x);
    mp_sh_unlock(self);
    PyObject *list = NULL;
    if (f.kind == E_NOMEM) {
        PyErr_NoMemory();
    } else if (f.kind) {
        raise_fail(&f, Py_None, "list");
    } else if ((list = PyList_New(0))) {
        for (size_t k = 0; k < x.len;) {
            uint32_t nl;
            memcpy(&nl, x.buf + k, 4);
            PyObject *s = PyUnicode_DecodeUTF8(x.buf + k + 4, nl, "strict");
            if (!s) {
                PyErr_Clear();
                PyErr_SetString(mp_CorruptionError, "named directory: a name that is not UTF-8");
            }
            if (!s || PyList_Append(list, s) < 0) {
                Py_XDECREF(s);
                Py_CLEAR(list);
                break;
            }
            Py_DECREF(s);
            k += 4 + nl;
        }
    }
    PyMem_RawFree(x.buf);
    return list;
}

/* _named_state() -> (count, gen) */
PyObject *mp_ext_shnamed_state(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ready(self) < 0) return NULL;
    if (mp_sh_lock(self) < 0) return NULL;
    uint64_t count = self->named->root->count, gen = self->named->root->gen;
    mp_sh_unlock(self);
    return Py_BuildValue("(KK)", (unsigned long long)count, (unsigned long long)gen);
}

/* _named_check(): the whole directory, under the lock (CorruptionError) */
PyObject *mp_ext_shnamed_check(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mp_pool_check_open(self) < 0) return NULL;
    if (!self->named) Py_RETURN_NONE;
    char msg[200];
    if (mp_sh_lock(self) < 0) return NULL;
    int bad = mp_named_check(self->named, msg, sizeof msg);
    mp_sh_unlock(self);
    if (bad) {
        PyErr_Format(mp_CorruptionError, "%s", msg);
        return NULL;
    }
    Py_RETURN_NONE;
}
