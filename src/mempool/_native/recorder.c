/*
 * recorder.c -- what trace.record() and pool.set_limit() need in C: a second operation
 * table per strategy that wraps the real one, and the recorder that writes a trace.
 *
 * Wrapped ops.  A strategy object that is recorded or limited gets its `ops` pointer
 * (and its journal's, for file and shared pools) switched to w_ops_<strategy>: a copy
 * of the real table whose alloc / free / realloc / reset / why_nospace look the state
 * up in the watch table (st -> token, limit) and then call the real function.  Nothing
 * else changes: a strategy that is neither recorded nor limited keeps the real table
 * and pays nothing; a switched one whose entry is gone (the recording ended) pays one
 * predictable branch (`active` is 0) and a direct call.  The switch is never undone
 * (no reference to the objects is kept: they may die any time).
 *
 *   watch:  (WATCH_NS, st) -> { id: token (0: not recorded), size: limit (NO_LIMIT) }
 *   live:   (ns, key)      -> { id: trace ID, size: requested bytes }
 *           ns 0: NumPy's pointers (key = address); ns = token: a strategy's offsets
 *
 * A state moves when it grows (strategy.c calls mp_wrap_moved) and its entry moves with
 * it; a new strategy whose state lands where a dead one's was replaces that entry (its
 * live IDs are freed in the trace: their memory went with the old state).
 *
 * The limit: an alloc is refused (MP_ENOSPACE, why_nospace names the limit) when
 * used + size would pass it; a strategy that rounds can pass it by its rounding, so the
 * alloc is undone (free, and the head's peak_used / high_water / cursor put back) when
 * `used` did.  A realloc is refused when its growth over size_of() would pass it.
 *
 * The recorder (trace.record): one per process at a time.  Each operation is a line of
 * the trace format (shared/traces/README.md) in a buffer flushed to the body file; IDs
 * come from a LIFO free-ID stack as the format requires; live bytes and their peak are
 * counted as the lines are written.  trace.py writes the header and the file.  NumPy's
 * allocations come through a NEP 49 handler that wraps the one that was current
 * (rec_wrap_handler); what it does in a pool's handler is recorded once, as NumPy's
 * (the thread's in_np flag keeps the pool's strategy ops out).
 *
 * Locking: one mutex, a leaf: nothing is called while it is held but the real
 * strategy functions (pure C) and fwrite.  The NumPy wrapper holds the GIL (as
 * handler.c does) so that its realloc and the line it writes are one step.
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL mempool_ARRAY_API
#define NO_IMPORT_ARRAY
#include "native.h"
#include "../_core/replay.h" /* mp_trace_line */

#include <numpy/arrayobject.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NO_LIMIT UINT64_MAX
#define WATCH_NS UINT64_MAX

/* ---- a hash map (ns, key) -> (id, size): linear probing, backward-shift delete ---- */
typedef struct {
    uint64_t ns, key, size;
    uint32_t id;
    uint32_t used;
} slot_t;
typedef struct {
    slot_t *v;
    size_t cap, n; /* cap a power of two */
} map_t;

static inline size_t map_hash(uint64_t ns, uint64_t key)
{
    uint64_t h = (key ^ (ns * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL;
    return (size_t)(h ^ (h >> 31));
}

static slot_t *map_find(map_t *m, uint64_t ns, uint64_t key)
{
    if (!m->cap) return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = map_hash(ns, key) & mask;; i = (i + 1) & mask) {
        slot_t *s = &m->v[i];
        if (!s->used) return NULL;
        if (s->ns == ns && s->key == key) return s;
    }
}

static int map_grow(map_t *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    slot_t *v = calloc(cap, sizeof *v);
    if (!v) return -1;
    for (size_t k = 0; k < m->cap; k++) {
        slot_t *s = &m->v[k];
        if (!s->used) continue;
        size_t i = map_hash(s->ns, s->key) & (cap - 1);
        while (v[i].used) i = (i + 1) & (cap - 1);
        v[i] = *s;
    }
    free(m->v);
    m->v = v;
    m->cap = cap;
    return 0;
}

/* The slot for (ns, key), new (used, zeroed id/size) when absent; NULL: no memory. */
static slot_t *map_put(map_t *m, uint64_t ns, uint64_t key)
{
    slot_t *s = map_find(m, ns, key);
    if (s) return s;
    if ((m->n + 1) * 4 > m->cap * 3 && map_grow(m) < 0) return NULL;
    size_t mask = m->cap - 1, i = map_hash(ns, key) & mask;
    while (m->v[i].used) i = (i + 1) & mask;
    s = &m->v[i];
    s->ns = ns;
    s->key = key;
    s->size = 0;
    s->id = 0;
    s->used = 1;
    m->n++;
    return s;
}

static void map_del(map_t *m, slot_t *s)
{
    size_t mask = m->cap - 1, i = (size_t)(s - m->v), j = i;
    m->v[i].used = 0;
    m->n--;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->v[j].used) return;
        size_t h = map_hash(m->v[j].ns, m->v[j].key) & mask;
        /* move j back to the hole i unless its home lies cyclically in (i, j] */
        if ((i <= j) ? (i < h && h <= j) : (i < h || h <= j)) continue;
        m->v[i] = m->v[j];
        m->v[j].used = 0;
        i = j;
    }
}

static void map_clear(map_t *m)
{
    free(m->v);
    m->v = NULL;
    m->cap = m->n = 0;
}

/* ---- state ------------------------------------------------------------------------- */
typedef struct {
    FILE *f;
    size_t blen;
    int err;            /* a write failed (errno kept) */
    int err_errno;
    map_t live;
    uint32_t *freeids;
    size_t nfree, capfree;
    uint32_t next_id;
    uint64_t ops, cur, peak;
    char buf[1 << 16];
} rec_t;

static pthread_mutex_t M = PTHREAD_MUTEX_INITIALIZER;
static rec_t *R;              /* the recording, or NULL                                */
static uint64_t session;      /* counts recordings: a NumPy wrapper records in its own */
static map_t W;               /* the watch table                                       */
static uint64_t next_token;   /* namespaces of recorded strategies                     */
static volatile int active;   /* R or any entry in W: the wrappers look               */
static _Thread_local int in_np; /* inside the NumPy wrapper's call of its inner handler */

static void set_active(void) { active = R != NULL || W.n > 0; }

/* ---- writing lines ----------------------------------------------------------------- */
static void rec_flush(rec_t *r)
{
    if (r->blen && !r->err && fwrite(r->buf, 1, r->blen, r->f) != r->blen) {
        r->err = 1;
        r->err_errno = errno;
    }
    r->blen = 0;
}

/* One line: op ('a' 'f' 'r'), id, and size / align when given (UINT64_MAX: none). */
static void rec_line(rec_t *r, char op, uint32_t id, uint64_t size, uint64_t align)
{
    if (r->blen > sizeof r->buf - MP_TRACE_LINE_MAX) rec_flush(r);
    r->blen = (size_t)(mp_trace_line(r->buf + r->blen, op, id, size, align) - r->buf);
    r->ops++;
}

static void rec_free_slot(rec_t *r, slot_t *s)
{
    rec_line(r, 'f', s->id, UINT64_MAX, UINT64_MAX);
    r->cur -= s->size;
    if (r->nfree == r->capfree) {
        size_t cap = r->capfree ? r->capfree * 2 : 1024;
        uint32_t *v = realloc(r->freeids, cap * sizeof *v);
        if (!v) { /* the ID is not reused: the trace stays valid */
            map_del(&r->live, s);
            return;
        }
        r->freeids = v;
        r->capfree = cap;
    }
    r->freeids[r->nfree++] = s->id;
    map_del(&r->live, s);
}

static void rec_alloc(rec_t *r, uint64_t ns, uint64_t key, uint64_t size, uint64_t align)
{
    slot_t *s = map_find(&r->live, ns, key);
    if (s) rec_free_slot(r, s); /* its free was not seen (a cache, a rewind): it is now */
    s = map_put(&r->live, ns, key);
    if (!s) {
        r->err = 1;
        r->err_errno = ENOMEM;
        return;
    }
    s->id = r->nfree ? r->freeids[--r->nfree] : r->next_id++;
    s->size = size;
    rec_line(r, 'a', s->id, size, align > 1 ? align : UINT64_MAX);
    r->cur += size;
    if (r->cur > r->peak) r->peak = r->cur;
}

static void rec_free(rec_t *r, uint64_t ns, uint64_t key)
{
    slot_t *s = map_find(&r->live, ns, key);
    if (s) rec_free_slot(r, s); /* else: made before the recording, not in the trace */
}

static void rec_realloc(rec_t *r, uint64_t ns, uint64_t key, uint64_t nkey, uint64_t size)
{
    slot_t *s = map_find(&r->live, ns, key);
    if (!s) { /* made before the recording: from here on it is a new allocation */
        rec_alloc(r, ns, nkey, size, 1);
        return;
    }
    if (nkey != key) {
        slot_t *o = map_find(&r->live, ns, nkey);
        if (o) {
            rec_free_slot(r, o);
            s = map_find(&r->live, ns, key); /* (the delete may have moved it) */
        }
    }
    rec_line(r, 'r', s->id, size, UINT64_MAX);
    r->cur = r->cur - s->size + size;
    if (r->cur > r->peak) r->peak = r->cur;
    uint32_t id = s->id;
    if (nkey != key) {
        map_del(&r->live, s);
        s = map_put(&r->live, ns, nkey);
        if (!s) {
            r->err = 1;
            r->err_errno = ENOMEM;
            return;
        }
        s->id = id;
    }
    s->size = size;
}

/* Free, in the trace, every live ID of namespace ns (a state reset or gone). */
static void rec_drop_ns(rec_t *r, uint64_t ns)
{
    for (size_t i = 0; i < r->live.cap;) {
        slot_t *s = &r->live.v[i];
        if (s->used && s->ns == ns) rec_free_slot(r, s); /* (shifts a later slot into i) */
        else i++;
    }
}

/* ---- the wrapped operation tables -------------------------------------------------- */
static inline mp_head_t *head_of(void *st) { return (mp_head_t *)st; }

/* The key of st's settings: st's own, or, when st is the shadow a journal is replaying
 * on (mp_tx_replaying), the live state's, with *shadow set (nothing is recorded). */
static uint64_t key_of(const void *st, int *shadow)
{
    const mp_tx_t *t = mp_tx_replaying;
    *shadow = t && st == t->shadow;
    return (uint64_t)(uintptr_t)(*shadow ? t->st : st);
}

/* alloc, or alloc_handle when node is not NULL (a trace records both by offset). */
static int w_take(const mp_ops_t *real, void *st, uint64_t size, uint64_t align, uint64_t *out,
                  uint64_t *node)
{
#define W_TAKE_CALL() \
    (node ? real->alloc_handle(st, size, align, out, node) : real->alloc(st, size, align, out))
    if (!active) return W_TAKE_CALL();
    int shadow = 0;
    pthread_mutex_lock(&M);
    slot_t *e = map_find(&W, WATCH_NS, key_of(st, &shadow));
    if (!e) {
        pthread_mutex_unlock(&M);
        return W_TAKE_CALL();
    }
    uint64_t limit = e->size, token = shadow ? 0 : e->id;
    int rc;
    if (limit != NO_LIMIT && (head_of(st)->used > limit || size > limit - head_of(st)->used)) {
        rc = MP_ENOSPACE;
        mp_tx_intervened = 1; /* (a journal's redo log cannot replay this: journal.h) */
    } else {
        mp_head_t before = *head_of(st);
        rc = W_TAKE_CALL();
        if (rc == MP_OK && limit != NO_LIMIT && head_of(st)->used > limit) {
            /* the rounding passed the limit: undone, and the head as it was */
            if (node) real->free_handle(st, *node, *out);
            else real->free(st, *out);
            head_of(st)->peak_used = before.peak_used;
            head_of(st)->high_water = before.high_water;
            head_of(st)->cursor = before.cursor;
            rc = MP_ENOSPACE;
            mp_tx_intervened = 1;
        }
    }
    if (rc == MP_OK && R && token && !in_np) rec_alloc(R, token, *out, size, align);
    pthread_mutex_unlock(&M);
    return rc;
#undef W_TAKE_CALL
}

static int w_alloc(const mp_ops_t *real, void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    return w_take(real, st, size, align, out, NULL);
}

/* free, or free_handle(node, off) when by_node */
static int w_give(const mp_ops_t *real, void *st, uint64_t off, int by_node, uint64_t node)
{
#define W_GIVE_CALL() (by_node ? real->free_handle(st, node, off) : real->free(st, off))
    if (!active) return W_GIVE_CALL();
    pthread_mutex_lock(&M);
    int rc = W_GIVE_CALL();
    if (rc == MP_OK && R && !in_np) {
        slot_t *e = map_find(&W, WATCH_NS, (uint64_t)(uintptr_t)st);
        if (e && e->id) rec_free(R, e->id, off);
    }
    pthread_mutex_unlock(&M);
    return rc;
#undef W_GIVE_CALL
}

static int w_free(const mp_ops_t *real, void *st, uint64_t off) { return w_give(real, st, off, 0, 0); }

static int w_realloc(const mp_ops_t *real, void *st, uint64_t off, uint64_t size, uint64_t align,
                     uint64_t *out)
{
    if (!active) return real->realloc(st, off, size, align, out);
    int shadow = 0;
    pthread_mutex_lock(&M);
    slot_t *e = map_find(&W, WATCH_NS, key_of(st, &shadow));
    uint64_t limit = e ? e->size : NO_LIMIT, token = e && !shadow ? e->id : 0, old = 0;
    int rc = MP_OK;
    if (limit != NO_LIMIT) {
        rc = real->size_of(st, off, &old);
        uint64_t used = head_of(st)->used;
        if (rc == MP_OK && size > old && (used > limit || size - old > limit - used))
            rc = MP_ENOSPACE;
    }
    if (rc == MP_OK) rc = real->realloc(st, off, size, align, out);
    else mp_tx_intervened = 1; /* (not the strategy's answer: journal.h) */
    if (rc == MP_OK && R && token && !in_np) rec_realloc(R, token, off, *out, size);
    pthread_mutex_unlock(&M);
    return rc;
}

/* The handle form records as alloc and free do (by offset: a trace knows no handles). */
static int w_alloc_handle(const mp_ops_t *real, void *st, uint64_t size, uint64_t align,
                          uint64_t *out, uint64_t *node)
{
    return w_take(real, st, size, align, out, node);
}

static int w_free_handle(const mp_ops_t *real, void *st, uint64_t node, uint64_t off)
{
    return w_give(real, st, off, 1, node);
}

static void w_reset(const mp_ops_t *real, void *st)
{
    if (!active) {
        real->reset(st);
        return;
    }
    pthread_mutex_lock(&M);
    real->reset(st);
    slot_t *e = map_find(&W, WATCH_NS, (uint64_t)(uintptr_t)st);
    if (R && e && e->id) rec_drop_ns(R, e->id);
    pthread_mutex_unlock(&M);
}

static int w_why(const mp_ops_t *real, const void *st, uint64_t size, uint64_t align, char *buf,
                 size_t len)
{
    if (active) {
        pthread_mutex_lock(&M);
        slot_t *e = map_find(&W, WATCH_NS, (uint64_t)(uintptr_t)st);
        uint64_t limit = e ? e->size : NO_LIMIT;
        pthread_mutex_unlock(&M);
        uint64_t used = ((const mp_head_t *)st)->used;
        if (limit != NO_LIMIT && (used > limit || size > limit - used)) {
            snprintf(buf, len, "the pool's limit is %llu bytes (set_limit) and %llu are in use",
                     (unsigned long long)limit, (unsigned long long)used);
            return 1;
        }
    }
    return real->why_nospace ? real->why_nospace(st, size, align, buf, len) : 0;
}

#define W_FUNCS_(KIND, sname, number)                                                        \
    static mp_ops_t w_ops_##sname;                                                           \
    static int w_alloc_##sname(void *st, uint64_t s, uint64_t a, uint64_t *o)                \
    {                                                                                        \
        return w_alloc(&mp_##sname##_ops, st, s, a, o);                                      \
    }                                                                                        \
    static int w_free_##sname(void *st, uint64_t o) { return w_free(&mp_##sname##_ops, st, o); } \
    static int w_realloc_##sname(void *st, uint64_t o, uint64_t s, uint64_t a, uint64_t *n)  \
    {                                                                                        \
        return w_realloc(&mp_##sname##_ops, st, o, s, a, n);                                 \
    }                                                                                        \
    static void w_reset_##sname(void *st) { w_reset(&mp_##sname##_ops, st); }                \
    static int w_alloc_handle_##sname(void *st, uint64_t s, uint64_t a, uint64_t *o,          \
                                      uint64_t *h)                                           \
    {                                                                                        \
        return w_alloc_handle(&mp_##sname##_ops, st, s, a, o, h);                            \
    }                                                                                        \
    static int w_free_handle_##sname(void *st, uint64_t n, uint64_t o)                       \
    {                                                                                        \
        return w_free_handle(&mp_##sname##_ops, st, n, o);                                   \
    }                                                                                        \
    static int w_why_##sname(const void *st, uint64_t s, uint64_t a, char *b, size_t n)      \
    {                                                                                        \
        return w_why(&mp_##sname##_ops, st, s, a, b, n);                                     \
    }
MP_STRATEGIES(W_FUNCS_)
#undef W_FUNCS_

static void w_tables_init(void)
{
#define W_INIT_(KIND, sname, number)                  \
    w_ops_##sname = mp_##sname##_ops;                 \
    w_ops_##sname.alloc = w_alloc_##sname;            \
    w_ops_##sname.free = w_free_##sname;              \
    w_ops_##sname.realloc = w_realloc_##sname;        \
    w_ops_##sname.reset = w_reset_##sname;            \
    if (mp_##sname##_ops.alloc_handle) {              \
        w_ops_##sname.alloc_handle = w_alloc_handle_##sname; \
        w_ops_##sname.free_handle = w_free_handle_##sname;   \
    }                                                 \
    w_ops_##sname.why_nospace = w_why_##sname;        \
    w_ops_##sname.replay = NULL; /* replays go op by op, through the wrappers */ \
    w_ops_##sname.reads_replaying = 1; /* key_of: a journal's shadow or a state */
    MP_STRATEGIES(W_INIT_)
#undef W_INIT_
}

/* The wrapped table of ops (itself when it is one), or NULL: not a strategy's. */
static const mp_ops_t *wrapped(const mp_ops_t *ops)
{
#define W_OF_(KIND, sname, number) \
    if (ops == &mp_##sname##_ops || ops == &w_ops_##sname) return &w_ops_##sname;
    MP_STRATEGIES(W_OF_)
#undef W_OF_
    return NULL;
}

/* Switch a strategy (and the journal of the pool it serves) to the wrapped table. */
static void switch_ops(StrategyObject *s, mp_tx_t *tx)
{
    const mp_ops_t *w = wrapped(s->ops);
    if (!w) return;
    s->ops = w;
    if (tx) tx->ops = w;
}

/* The watch entry of st, made when absent (NULL: no memory). */
static slot_t *watch_entry(void *st)
{
    slot_t *e = map_find(&W, WATCH_NS, (uint64_t)(uintptr_t)st);
    if (e) return e;
    e = map_put(&W, WATCH_NS, (uint64_t)(uintptr_t)st);
    if (e) e->size = NO_LIMIT;
    return e;
}

static void watch_drop_if_idle(slot_t *e)
{
    if (e->id == 0 && e->size == NO_LIMIT) map_del(&W, e);
}

/* strategy.c: a new strategy object while a recording runs is recorded. */
void mp_rec_adopt(StrategyObject *s)
{
    if (!R || !s->st) return;
    pthread_mutex_lock(&M);
    if (R) {
        slot_t *e = map_find(&W, WATCH_NS, (uint64_t)(uintptr_t)s->st);
        if (e && e->id) rec_drop_ns(R, e->id); /* a dead state's place */
        e = watch_entry(s->st);
        if (e) {
            e->id = (uint32_t)++next_token;
            e->size = NO_LIMIT;
            switch_ops(s, NULL);
        }
        set_active();
    }
    pthread_mutex_unlock(&M);
}

int mp_rec_recording(void) { return R != NULL; }

/* strategy.c: a state grew from old to new (same ranges): its entry follows. */
void mp_wrap_moved(void *old, void *new_st)
{
    if (!active) return;
    pthread_mutex_lock(&M);
    slot_t *e = map_find(&W, WATCH_NS, (uint64_t)(uintptr_t)old);
    if (e) {
        uint64_t limit = e->size;
        uint32_t token = e->id;
        map_del(&W, e);
        slot_t *n = map_find(&W, WATCH_NS, (uint64_t)(uintptr_t)new_st);
        if (n && n->id && R) rec_drop_ns(R, n->id);
        n = watch_entry(new_st);
        if (n) {
            n->size = limit;
            n->id = token;
        }
        set_active();
    }
    pthread_mutex_unlock(&M);
}

/* ---- the NumPy wrapper ------------------------------------------------------------- */
typedef struct {
    PyDataMem_Handler h;  /* first: NumPy reads the capsule's pointer as this        */
    PyObject *inner_cap;  /* strong reference to the wrapped handler's capsule       */
    PyDataMem_Handler *inner;
    uint64_t session;     /* the recording it writes to                             */
} np_wrap_t;

#define CAPSULE_NAME "mem_handler"

/* Lock and return the recording this wrapper writes to, or NULL (not locked). */
static rec_t *np_rec(np_wrap_t *w)
{
    if (!R) return NULL;
    pthread_mutex_lock(&M);
    if (R && session == w->session) return R;
    pthread_mutex_unlock(&M);
    return NULL;
}

static void *np_malloc(void *ctx, size_t size)
{
    np_wrap_t *w = ctx;
    mp_gil_t g = mp_gil_take();
    in_np++;
    void *p = w->inner->allocator.malloc(w->inner->allocator.ctx, size);
    in_np--;
    rec_t *r;
    if (p && (r = np_rec(w))) {
        rec_alloc(r, 0, (uint64_t)(uintptr_t)p, size, 1);
        pthread_mutex_unlock(&M);
    }
    mp_gil_give(g);
    return p;
}

static void *np_calloc(void *ctx, size_t n, size_t elsize)
{
    np_wrap_t *w = ctx;
    mp_gil_t g = mp_gil_take();
    in_np++;
    void *p = w->inner->allocator.calloc(w->inner->allocator.ctx, n, elsize);
    in_np--;
    rec_t *r;
    if (p && (r = np_rec(w))) {
        rec_alloc(r, 0, (uint64_t)(uintptr_t)p, (uint64_t)n * elsize, 1);
        pthread_mutex_unlock(&M);
    }
    mp_gil_give(g);
    return p;
}

static void *np_realloc(void *ctx, void *ptr, size_t size)
{
    np_wrap_t *w = ctx;
    mp_gil_t g = mp_gil_take();
    in_np++;
    void *p = w->inner->allocator.realloc(w->inner->allocator.ctx, ptr, size);
    in_np--;
    rec_t *r;
    if ((p || (ptr && !size)) && (r = np_rec(w))) {
        if (!ptr) rec_alloc(r, 0, (uint64_t)(uintptr_t)p, size, 1);
        else if (!size) { /* realloc(p, 0): a free, and whatever it returned is new */
            rec_free(r, 0, (uint64_t)(uintptr_t)ptr);
            if (p) rec_alloc(r, 0, (uint64_t)(uintptr_t)p, 0, 1);
        } else rec_realloc(r, 0, (uint64_t)(uintptr_t)ptr, (uint64_t)(uintptr_t)p, size);
        pthread_mutex_unlock(&M);
    }
    mp_gil_give(g);
    return p;
}

static void np_free(void *ctx, void *ptr, size_t size)
{
    np_wrap_t *w = ctx;
    if (!ptr) return;
    mp_gil_t g = mp_gil_take();
    rec_t *r;
    if ((r = np_rec(w))) { /* before the free: then no other thread has this address */
        rec_free(r, 0, (uint64_t)(uintptr_t)ptr);
        pthread_mutex_unlock(&M);
    }
    in_np++;
    w->inner->allocator.free(w->inner->allocator.ctx, ptr, size);
    in_np--;
    mp_gil_give(g);
}

static void np_capsule_free(PyObject *cap)
{
    np_wrap_t *w = PyCapsule_GetPointer(cap, CAPSULE_NAME);
    if (!w) {
        PyErr_Clear();
        return;
    }
    Py_XDECREF(w->inner_cap);
    PyMem_RawFree(w);
}

/* A wrapper capsule around handler capsule `inner` (NULL: an error set). */
static PyObject *wrap_handler(PyObject *inner)
{
    if (PyCapsule_CheckExact(inner) && PyCapsule_GetDestructor(inner) == np_capsule_free) {
        np_wrap_t *old = PyCapsule_GetPointer(inner, CAPSULE_NAME);
        if (!old) return NULL;
        if (old->session == session) { /* already this recording's */
            Py_INCREF(inner);
            return inner;
        }
        inner = old->inner_cap; /* an ended recording's (it records nothing): what it wraps */
    }
    PyDataMem_Handler *ih = PyCapsule_GetPointer(inner, CAPSULE_NAME);
    if (!ih) return NULL;
    np_wrap_t *w = PyMem_RawCalloc(1, sizeof *w);
    if (!w) return PyErr_NoMemory();
    snprintf(w->h.name, sizeof w->h.name, "mempool record(%.100s)", ih->name);
    w->h.version = 1;
    w->h.allocator.ctx = w;
    w->h.allocator.malloc = np_malloc;
    w->h.allocator.calloc = np_calloc;
    w->h.allocator.realloc = np_realloc;
    w->h.allocator.free = np_free;
    w->inner = ih;
    w->inner_cap = inner;
    w->session = session;
    Py_INCREF(inner);
    PyObject *cap = PyCapsule_New(w, CAPSULE_NAME, np_capsule_free);
    if (!cap) {
        Py_DECREF(inner);
        PyMem_RawFree(w);
    }
    return cap;
}

/* ---- module functions -------------------------------------------------------------- */
static PyObject *ext_rec_start(PyObject *Py_UNUSED(m), PyObject *arg)
{
    PyObject *bytes;
    if (!PyUnicode_FSConverter(arg, &bytes)) return NULL;
    if (R) {
        Py_DECREF(bytes);
        PyErr_SetString(PyExc_RuntimeError, "a recording is already under way in this process: "
                                            "trace.record() does not nest");
        return NULL;
    }
    rec_t *r = calloc(1, sizeof *r);
    if (!r) {
        Py_DECREF(bytes);
        return PyErr_NoMemory();
    }
    r->f = fopen(PyBytes_AS_STRING(bytes), "wb");
    if (!r->f) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, arg);
        Py_DECREF(bytes);
        free(r);
        return NULL;
    }
    Py_DECREF(bytes);
    pthread_mutex_lock(&M);
    session++;
    R = r;
    set_active();
    pthread_mutex_unlock(&M);
    Py_RETURN_NONE;
}

static PyObject *ext_rec_stop(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&M);
    rec_t *r = R;
    R = NULL;
    if (r) { /* every namespace ends with it; limits stay */
        for (size_t i = 0; i < W.cap;) {
            slot_t *e = &W.v[i];
            if (e->used && e->id) {
                e->id = 0;
                if (e->size == NO_LIMIT) {
                    map_del(&W, e);
                    continue;
                }
            }
            i++;
        }
        rec_flush(r);
    }
    set_active();
    pthread_mutex_unlock(&M);
    if (!r) {
        PyErr_SetString(PyExc_RuntimeError, "no recording is under way");
        return NULL;
    }
    int err = r->err ? r->err_errno : 0;
    if (fclose(r->f) != 0 && !err) err = errno ? errno : EIO;
    PyObject *res = Py_BuildValue("{sKsKsKsi}", "ops", (unsigned long long)r->ops, "maxlive",
                                  (unsigned long long)r->peak, "live_bytes",
                                  (unsigned long long)r->cur, "errno", err);
    map_clear(&r->live);
    free(r->freeids);
    free(r);
    return res;
}

static PyObject *ext_rec_active(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(R != NULL);
}

/* The strategy object behind obj (a Strategy, or a PoolCore's), and the pool's journal. */
static StrategyObject *strategy_of(PyObject *obj, mp_tx_t **tx)
{
    *tx = NULL;
    if (PyObject_TypeCheck(obj, &StrategyType)) return (StrategyObject *)obj;
    if (PyObject_TypeCheck(obj, &PoolCoreType)) {
        PoolObject *p = (PoolObject *)obj;
        if (mp_pool_check_open(p) < 0) return NULL;
        *tx = PyObject_TypeCheck(obj, &SharedPoolCoreType) ? mp_shared_tx(p) : p->tx;
        return p->strategy;
    }
    PyErr_Format(PyExc_TypeError, "expected a pool or a strategy, not %.100s", Py_TYPE(obj)->tp_name);
    return NULL;
}

/* _rec_watch(pool or strategy): record its operations (a pool activated inside
 * record()); a no-op when no recording runs.  True when it is recorded. */
static PyObject *ext_rec_watch(PyObject *Py_UNUSED(m), PyObject *obj)
{
    mp_tx_t *tx;
    StrategyObject *s = strategy_of(obj, &tx);
    if (!s) return NULL;
    if (mp_strategy_closed(s)) return NULL;
    int ok = 0;
    pthread_mutex_lock(&M);
    if (R) {
        slot_t *e = watch_entry(s->st);
        if (e) {
            if (!e->id) e->id = (uint32_t)++next_token;
            switch_ops(s, tx);
            ok = 1;
        }
        set_active();
    }
    pthread_mutex_unlock(&M);
    return PyBool_FromLong(ok);
}

/* _rec_wrap(handler) -> a handler that records into this recording what `handler`
 * does (NumPy's 'mem_handler' capsules) */
static PyObject *ext_rec_wrap(PyObject *Py_UNUSED(m), PyObject *h)
{
    if (!PyCapsule_IsValid(h, CAPSULE_NAME)) {
        PyErr_SetString(PyExc_TypeError, "expected a NumPy 'mem_handler' capsule");
        return NULL;
    }
    return wrap_handler(h);
}

/* _rec_numpy_begin() -> the previous handler: NumPy's allocations in this context are
 * recorded from now (the current handler wrapped). */
static PyObject *ext_rec_numpy_begin(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    PyObject *cur = PyDataMem_GetHandler();
    if (!cur) return NULL;
    PyObject *w = wrap_handler(cur);
    Py_DECREF(cur);
    if (!w) return NULL;
    PyObject *prev = PyDataMem_SetHandler(w);
    Py_DECREF(w);
    return prev;
}

/* _set_limit(pool or strategy, limit or None) */
static PyObject *ext_set_limit(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *obj, *lim;
    if (!PyArg_ParseTuple(args, "OO:_set_limit", &obj, &lim)) return NULL;
    mp_tx_t *tx;
    StrategyObject *s = strategy_of(obj, &tx);
    if (!s || mp_strategy_closed(s)) return NULL;
    uint64_t limit = NO_LIMIT;
    if (lim != Py_None) {
        int rc = mp_arg_u64(lim, "limit", &limit);
        if (rc < 0) return NULL;
        if (rc > 0 || limit > head_of(s->st)->capacity) {
            PyErr_Format(PyExc_ValueError, "limit %S is above the pool's capacity %llu", lim,
                         (unsigned long long)head_of(s->st)->capacity);
            return NULL;
        }
    }
    pthread_mutex_lock(&M);
    slot_t *e = limit == NO_LIMIT ? map_find(&W, WATCH_NS, (uint64_t)(uintptr_t)s->st)
                                  : watch_entry(s->st);
    if (e) {
        e->size = limit;
        watch_drop_if_idle(e);
        set_active();
    }
    pthread_mutex_unlock(&M);
    if (!e && limit != NO_LIMIT) return PyErr_NoMemory();
    if (limit != NO_LIMIT) switch_ops(s, tx);
    Py_RETURN_NONE;
}

static PyObject *ext_get_limit(PyObject *Py_UNUSED(m), PyObject *obj)
{
    mp_tx_t *tx;
    StrategyObject *s = strategy_of(obj, &tx);
    if (!s || mp_strategy_closed(s)) return NULL;
    uint64_t limit = NO_LIMIT;
    pthread_mutex_lock(&M);
    slot_t *e = map_find(&W, WATCH_NS, (uint64_t)(uintptr_t)s->st);
    if (e) limit = e->size;
    pthread_mutex_unlock(&M);
    /* (an entry left by a dead state at this address is not this strategy's: only a
     * switched table says the limit was set on it) */
    if (limit == NO_LIMIT || s->ops != wrapped(s->ops)) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(limit);
}

/* ---- tracking: pool.track() ---------------------------------------------------------- */
int mp_track_on;
static PyObject *track_hook;

void mp_track_note(PoolObject *pool, uint64_t off, uint64_t size)
{
    if (!track_hook) return;
    PyObject *r = PyObject_CallFunction(track_hook, "OKK", (PyObject *)pool,
                                        (unsigned long long)off, (unsigned long long)size);
    if (!r) PyErr_WriteUnraisable(track_hook); /* never the allocation's failure */
    Py_XDECREF(r);
}

/* _track_hook(fn or None, on): fn(pool, offset, size) after each Block a pool makes
 * (alloc, empty, zeros, realloc) while `on` */
static PyObject *ext_track_hook(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *fn;
    int on;
    if (!PyArg_ParseTuple(args, "Op:_track_hook", &fn, &on)) return NULL;
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "the hook must be callable or None");
        return NULL;
    }
    Py_XSETREF(track_hook, fn == Py_None ? NULL : Py_NewRef(fn));
    mp_track_on = on && track_hook != NULL;
    Py_RETURN_NONE;
}

/* _live_blocks(pool) -> [(offset, size)] of this process's live Block objects */
static PyObject *ext_live_blocks(PyObject *Py_UNUSED(m), PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &PoolCoreType)) {
        PyErr_SetString(PyExc_TypeError, "expected a pool");
        return NULL;
    }
    PoolObject *p = (PoolObject *)obj;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    /* (no Python code runs while the list is walked: only tuples and ints are made,
     * which cannot release a Block; a GC pass could, so it is off meanwhile) */
    int gc = PyGC_Disable();
    for (BlockObject *b = p->blocks; b; b = b->next) {
        if (!b->live) continue;
        PyObject *t = Py_BuildValue("(KK)", (unsigned long long)b->offset,
                                    (unsigned long long)b->size);
        if (!t || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            if (gc) PyGC_Enable();
            return NULL;
        }
        Py_DECREF(t);
    }
    if (gc) PyGC_Enable();
    return out;
}

static PyMethodDef recorder_methods[] = {
    {"_rec_start", ext_rec_start, METH_O, "_rec_start($module, body_path, /)\n--\n\n"
     "Start recording (the trace's lines go to body_path); RuntimeError when one runs."},
    {"_rec_stop", ext_rec_stop, METH_NOARGS, "_rec_stop($module, /)\n--\n\n"
     "Stop recording: a dict of ops, maxlive, live_bytes, errno."},
    {"_rec_active", ext_rec_active, METH_NOARGS, "_rec_active($module, /)\n--\n\n"
     "True while a recording runs."},
    {"_rec_watch", ext_rec_watch, METH_O, "_rec_watch($module, obj, /)\n--\n\n"
     "Record the operations of a pool or strategy (while a recording runs)."},
    {"_rec_wrap", ext_rec_wrap, METH_O, "_rec_wrap($module, handler, /)\n--\n\n"
     "A NEP 49 handler recording what handler does."},
    {"_rec_numpy_begin", ext_rec_numpy_begin, METH_NOARGS, "_rec_numpy_begin($module, /)\n--\n\n"
     "Wrap this context's NumPy handler; returns the previous one."},
    {"_set_limit", ext_set_limit, METH_VARARGS, "_set_limit($module, obj, limit, /)\n--\n\n"
     "Set (None: remove) the byte limit of a pool or strategy."},
    {"_get_limit", ext_get_limit, METH_O, "_get_limit($module, obj, /)\n--\n\n"
     "The byte limit of a pool or strategy, or None."},
    {"_track_hook", ext_track_hook, METH_VARARGS, "_track_hook($module, fn, on, /)\n--\n\n"
     "Call fn(pool, offset, size) for every Block a pool makes while on."},
    {"_live_blocks", ext_live_blocks, METH_O, "_live_blocks($module, pool, /)\n--\n\n"
     "(offset, size) of the pool's live Block objects in this process."},
    {NULL, NULL, 0, NULL},
};

int mp_recorder_ready(PyObject *module)
{
    w_tables_init();
    return PyModule_AddFunctions(module, recorder_methods);
}
