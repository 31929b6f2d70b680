/*
 * named.c -- the directory of named ranges (named.h has the layout, the protocol and
 * the invariants).  Every offset read from the pool's memory is bounds-checked before
 * it is followed, and every walk is bounded by the table's size: a crafted directory
 * gives MP_ECORRUPT, never a crash or a hang.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "journal_log.h"
#include "named.h"

#define SLOT_EMPTY 0
#define SLOT_TOMB 1
#define MIN_SLOTS 16

typedef struct slot {
    uint64_t hash, ref;
} slot_t;

void mp_named_root_init(mp_named_root_t *r)
{
    memset(r, 0, sizeof *r);
    r->magic = MP_NAMED_MAGIC;
    r->table = MP_NAMED_NONE;
}

uint64_t mp_named_hash(const void *name, size_t n)
{
    const unsigned char *p = name;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t k = 0; k < n; k++) {
        h ^= p[k];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 31; /* spread the low bits the table uses */
    h *= 0x9e3779b97f4a7c15ull;
    return h ^ (h >> 29);
}

static inline slot_t *table_of(const mp_named_t *d)
{
    return (slot_t *)(d->base + d->root->table);
}

/* A live range of at least `need` bytes at off? */
static int live_range(const mp_named_t *d, uint64_t off, uint64_t need)
{
    uint64_t size;
    if (off >= d->cap || d->ops->size_of(d->st, off, &size) != MP_OK) return 0;
    return size >= need && d->cap - off >= need;
}

int mp_named_check_root(const mp_named_t *d, char *msg, size_t msglen)
{
    const mp_named_root_t *r = d->root;
    if (r->magic != MP_NAMED_MAGIC) MPI_FAIL("named directory: bad root magic");
    if (r->table == MP_NAMED_NONE) {
        if (r->slots || r->count || r->tombs)
            MPI_FAIL("named directory: no table, but %llu slots, %llu names",
                     (unsigned long long)r->slots, (unsigned long long)r->count);
        return MP_OK;
    }
    if (r->slots < MIN_SLOTS || (r->slots & (r->slots - 1)) || r->slots > ((uint64_t)1 << 40))
        MPI_FAIL("named directory: %llu slots is not a power of two >= %d",
                 (unsigned long long)r->slots, MIN_SLOTS);
    if (r->count + r->tombs >= r->slots || r->count > r->slots || r->tombs > r->slots)
        MPI_FAIL("named directory: %llu names and %llu tombstones in %llu slots",
                 (unsigned long long)r->count, (unsigned long long)r->tombs,
                 (unsigned long long)r->slots);
    if (!live_range(d, r->table, r->slots * sizeof(slot_t)))
        MPI_FAIL("named directory: the table at offset %llu is not a live range of %llu bytes",
                 (unsigned long long)r->table, (unsigned long long)(r->slots * sizeof(slot_t)));
    if (r->table % 8) MPI_FAIL("named directory: the table is not 8-byte aligned");
    return MP_OK;
}

int mp_named_rec_ok(const mp_named_t *d, uint64_t off, char *msg, size_t msglen)
{
    if (off % 8 || off >= d->cap || d->cap - off < MP_NAMED_REC_HEAD)
        MPI_FAIL("named directory: a record offset %llu outside the pool",
                 (unsigned long long)off);
    const mp_named_rec_t *h = (const mp_named_rec_t *)(d->base + off);
    if (h->magic != MP_NAMED_REC_MAGIC)
        MPI_FAIL("named directory: bad record magic at offset %llu", (unsigned long long)off);
    if (h->ndim > MP_NAMED_MAX_NDIM || h->name_len < 1 || h->name_len > MP_NAMED_MAX_NAME ||
        h->dtype_len > MP_NAMED_MAX_DTYPE || h->kind > 2)
        MPI_FAIL("named directory: bad record fields at offset %llu", (unsigned long long)off);
    uint64_t need = MP_NAMED_REC_HEAD + 16ull * h->ndim + h->name_len + h->dtype_len;
    if (h->size < need || !live_range(d, off, h->size))
        MPI_FAIL("named directory: the record at offset %llu does not fit its range",
                 (unsigned long long)off);
    if (h->data >= d->cap || h->view >= d->cap || !live_range(d, h->data, h->dsize))
        MPI_FAIL("named directory: the record at offset %llu names no live data range",
                 (unsigned long long)off);
    return MP_OK;
}

int mp_named_find(const mp_named_t *d, const void *name, uint32_t n, uint64_t hash,
                  uint64_t *slot, uint64_t *rec, char *msg, size_t msglen)
{
    const mp_named_root_t *r = d->root;
    if (r->table == MP_NAMED_NONE) return MP_ENOTALLOC;
    const slot_t *t = table_of(d);
    uint64_t mask = r->slots - 1;
    for (uint64_t k = 0, i = hash & mask; k < r->slots; k++, i = (i + 1) & mask) {
        uint64_t ref = t[i].ref;
        if (ref == SLOT_EMPTY) return MP_ENOTALLOC;
        if (ref == SLOT_TOMB || t[i].hash != hash) continue;
        uint64_t off = ref - 2;
        int rc = mp_named_rec_ok(d, off, msg, msglen);
        if (rc) return rc;
        const mp_named_rec_t *h = (const mp_named_rec_t *)(d->base + off);
        if (h->hash != hash)
            MPI_FAIL("named directory: slot %llu and its record disagree on the hash",
                     (unsigned long long)i);
        if (h->name_len == n &&
            !memcmp(d->base + off + MP_NAMED_REC_HEAD + 16ull * h->ndim, name, n)) {
            *slot = i;
            *rec = off;
            return MP_OK;
        }
    }
    return MP_ENOTALLOC; /* a full walk: no empty slot (count + tombs < slots is checked) */
}

int mp_named_walk(const mp_named_t *d, int (*fn)(void *ctx, uint64_t rec), void *ctx)
{
    const mp_named_root_t *r = d->root;
    if (r->table == MP_NAMED_NONE) return 0;
    const slot_t *t = table_of(d);
    for (uint64_t i = 0; i < r->slots; i++) {
        if (t[i].ref <= SLOT_TOMB) continue;
        int rc = fn(ctx, t[i].ref - 2);
        if (rc) return rc;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Every range the directory owns is its own: the table, each record, each data range
 * (after mp_named_check's walk: count names, each record readable).  A crafted
 * directory naming one range twice passed check(), and freed it under one name while
 * the other still named it. */
static int named_distinct(const mp_named_t *d, char *msg, size_t msglen)
{
    uint64_t n = 0, *o = malloc((2 * d->root->count + 1) * sizeof *o);
    if (!o) return MP_OK; /* (no memory: everything else was checked) */
    const slot_t *t = table_of(d);
    o[n++] = d->root->table;
    for (uint64_t i = 0; i < d->root->slots; i++) {
        if (t[i].ref <= SLOT_TOMB) continue;
        o[n++] = t[i].ref - 2;
        o[n++] = ((const mp_named_rec_t *)(d->base + t[i].ref - 2))->data;
    }
    qsort(o, (size_t)n, sizeof *o, cmp_u64);
    uint64_t twice = MP_NAMED_NONE;
    for (uint64_t k = 1; k < n && twice == MP_NAMED_NONE; k++)
        if (o[k] == o[k - 1]) twice = o[k];
    free(o);
    if (twice != MP_NAMED_NONE)
        MPI_FAIL("named directory: the range at offset %llu is the directory's twice (two "
                 "names' data, a record or the table)", (unsigned long long)twice);
    return MP_OK;
}

int mp_named_check(const mp_named_t *d, char *msg, size_t msglen)
{
    int rc = mp_named_check_root(d, msg, msglen);
    if (rc || d->root->table == MP_NAMED_NONE) return rc;
    const slot_t *t = table_of(d);
    uint64_t used = 0, tombs = 0;
    for (uint64_t i = 0; i < d->root->slots; i++) {
        if (t[i].ref == SLOT_EMPTY) continue;
        if (t[i].ref == SLOT_TOMB) {
            tombs++;
            continue;
        }
        used++;
        if ((rc = mp_named_rec_ok(d, t[i].ref - 2, msg, msglen))) return rc;
        if (((const mp_named_rec_t *)(d->base + t[i].ref - 2))->hash != t[i].hash)
            MPI_FAIL("named directory: slot %llu and its record disagree on the hash",
                     (unsigned long long)i);
    }
    if (used != d->root->count || tombs != d->root->tombs)
        MPI_FAIL("named directory: %llu names and %llu tombstones found, the root says %llu "
                 "and %llu", (unsigned long long)used, (unsigned long long)tombs,
                 (unsigned long long)d->root->count, (unsigned long long)d->root->tombs);
    return named_distinct(d, msg, msglen);
}

/* ---- which ranges are the directory's: an index, rebuilt when the directory changed -- */
typedef struct named_idx {
    uint64_t gen, table, mask; /* the root's gen and table it is current at; slots - 1 */
    uint64_t used;             /* keys (a key whose kinds went to 0 stays: a tombstone) */
    uint64_t key[];            /* offset + 1 (0: empty), then the kinds: uint8_t[slots] */
} named_idx_t;
enum { IDX_DATA = 1, IDX_REC = 2 };

static uint8_t *idx_kinds(named_idx_t *x) { return (uint8_t *)(x->key + x->mask + 1); }
static uint64_t idx_home(const named_idx_t *x, uint64_t off)
{
    return ((off >> 3) * 0x9E3779B97F4A7C15ull) & x->mask;
}
static void idx_put(named_idx_t *x, uint64_t off, uint8_t kind)
{
    uint64_t i = idx_home(x, off);
    while (x->key[i] && x->key[i] != off + 1) i = (i + 1) & x->mask;
    if (!x->key[i]) x->used++;
    x->key[i] = off + 1;
    idx_kinds(x)[i] |= kind;
}

static void idx_clear(named_idx_t *x, uint64_t off, uint8_t kind)
{
    for (uint64_t i = idx_home(x, off); x->key[i]; i = (i + 1) & x->mask)
        if (x->key[i] == off + 1) {
            idx_kinds(x)[i] &= (uint8_t)~kind;
            return;
        }
}

/* The index when it is current (before a change this process makes), else NULL. */
static named_idx_t *idx_current(const mp_named_t *d)
{
    named_idx_t *x = d->idx;
    return x && x->gen == d->root->gen && x->table == d->root->table ? x : NULL;
}

/* A change this process makes: the record rec and its data range added to the index
 * or taken out (the record still readable), then done: the index is current at the
 * root's new gen and table, or let go when too full or the table is gone. */
static void idx_apply(const mp_named_t *d, named_idx_t *x, uint64_t rec, int add)
{
    uint64_t data = ((const mp_named_rec_t *)(d->base + rec))->data;
    if (add) {
        idx_put(x, rec, IDX_REC);
        idx_put(x, data, IDX_DATA);
    } else {
        idx_clear(x, rec, IDX_REC);
        idx_clear(x, data, IDX_DATA);
    }
}

static void idx_done(mp_named_t *d, named_idx_t *x)
{
    x->gen = d->root->gen;
    x->table = d->root->table;
    if (x->used * 2 > x->mask + 1 || x->table == MP_NAMED_NONE) mp_named_forget(d);
}

void mp_named_forget(mp_named_t *d)
{
    free(d->idx);
    d->idx = NULL;
}

/* The index as of the directory now: NULL when it cannot be made (no memory) or a
 * record lies outside the pool (*bad). */
static named_idx_t *index_of(mp_named_t *d, int *bad)
{
    const mp_named_root_t *r = d->root;
    named_idx_t *x = d->idx;
    *bad = 0;
    if (x && x->gen == r->gen && x->table == r->table) return x; /* (idx_current) */
    mp_named_forget(d);
    if (r->table == MP_NAMED_NONE || r->count > r->slots) return NULL; /* (walk: bounded) */
    if (d->idx_asked != r->gen + 1) { /* the first query since a change: walk this time */
        d->idx_asked = r->gen + 1;
        return NULL;
    }
    uint64_t slots = 16;
    while (slots < 4 * r->count + 4) slots *= 2;
    x = calloc(1, sizeof *x + slots * (sizeof(uint64_t) + 1));
    if (!x) return NULL;
    x->gen = r->gen;
    x->table = r->table;
    x->mask = slots - 1;
    const slot_t *t = table_of(d);
    uint64_t n = 0;
    for (uint64_t i = 0; i < r->slots; i++) {
        if (t[i].ref <= SLOT_TOMB) continue;
        uint64_t rec = t[i].ref - 2;
        if (++n > r->count || rec >= d->cap || d->cap - rec < MP_NAMED_REC_HEAD) {
            free(x); /* (a damaged table: the callers' walk reports it) */
            *bad = 1;
            return NULL;
        }
        uint64_t data = ((const mp_named_rec_t *)(d->base + rec))->data, u = x->used;
        idx_put(x, rec, IDX_REC);
        idx_put(x, data, IDX_DATA);
        if (x->used != u + 2 || rec == r->table || data == r->table) {
            free(x); /* one range named twice (named_distinct): a crafted directory */
            *bad = 1;
            return NULL;
        }
    }
    d->idx = x;
    return x;
}

static int idx_kind(mp_named_t *d, uint64_t off, int *kind)
{
    int bad;
    named_idx_t *x = index_of(d, &bad);
    if (!x) return bad ? MP_ECORRUPT : MP_ENONODES; /* (the callers walk instead) */
    *kind = 0;
    for (uint64_t i = idx_home(x, off); x->key[i]; i = (i + 1) & x->mask)
        if (x->key[i] == off + 1) {
            *kind = idx_kinds(x)[i];
            break;
        }
    return MP_OK;
}

typedef struct owns_ctx {
    const mp_named_t *d;
    uint64_t data;
} owns_ctx_t;

static int owns_one(void *ctx, uint64_t rec)
{
    owns_ctx_t *o = ctx;
    if (rec >= o->d->cap || o->d->cap - rec < MP_NAMED_REC_HEAD) return MP_ECORRUPT;
    return ((const mp_named_rec_t *)(o->d->base + rec))->data == o->data;
}

int mp_named_owns(mp_named_t *d, uint64_t data)
{
    int kind, rc = idx_kind(d, data, &kind);
    if (rc == MP_OK) return (kind & IDX_DATA) != 0;
    owns_ctx_t o = {d, data}; /* (no index: the walk) */
    return mp_named_walk(d, owns_one, &o);
}

static int is_rec(void *ctx, uint64_t rec) { return rec == ((owns_ctx_t *)ctx)->data; }

int mp_named_meta(mp_named_t *d, uint64_t off)
{
    if (d->root->table != MP_NAMED_NONE && d->root->table == off) return 1;
    int kind, rc = idx_kind(d, off, &kind);
    if (rc == MP_OK) return (kind & IDX_REC) != 0;
    owns_ctx_t o = {d, off};
    return mp_named_walk(d, is_rec, &o);
}

/* ---- changes --------------------------------------------------------------------- */
static void set64(mp_named_t *d, uint64_t *w, uint64_t v)
{
    if (d->tx) mp_jset64(d->tx->j, w, v);
    else *w = v;
}

int mp_named_alloc(mp_named_t *d, uint64_t size, uint64_t align, uint64_t *off)
{
    int rc = d->tx ? mp_tx_alloc(d->tx, size, align, off) : d->ops->alloc(d->st, size, align, off);
    if (rc != MP_OK || !d->on_alloc) return rc;
    rc = d->on_alloc(d->arg, *off, size);
    if (rc != MP_OK) {
        if (d->tx) mp_tx_free(d->tx, *off);
        else d->ops->free(d->st, *off);
    }
    return rc;
}

int mp_named_free(mp_named_t *d, uint64_t off)
{
    if (d->on_free) d->on_free(d->arg, off);
    return d->tx ? mp_tx_free(d->tx, off) : d->ops->free(d->st, off);
}

/* The first empty or tombstone slot of hash in table t (one exists: load < 1). */
static uint64_t free_slot(const slot_t *t, uint64_t slots, uint64_t hash)
{
    uint64_t mask = slots - 1, i = hash & mask;
    for (uint64_t k = 0; k < slots; k++, i = (i + 1) & mask)
        if (t[i].ref <= SLOT_TOMB) return i;
    return MP_NAMED_NONE;
}

int mp_named_insert(mp_named_t *d, uint64_t hash, uint64_t rec)
{
    mp_named_root_t *r = d->root;
    named_idx_t *x = idx_current(d);
    if ((r->count + r->tombs + 1) * 4 > r->slots * 3) { /* grow (or clean tombstones) */
        uint64_t slots = r->slots ? r->slots : MIN_SLOTS;
        while ((r->count + 1) * 2 > slots) slots *= 2;
        uint64_t nt;
        int rc = mp_named_alloc(d, slots * sizeof(slot_t), 64, &nt);
        if (rc) return rc;
        slot_t *t = (slot_t *)(d->base + nt); /* fresh: written out of place */
        memset(t, 0, slots * sizeof(slot_t));
        if (r->table != MP_NAMED_NONE) {
            const slot_t *old = table_of(d);
            uint64_t n = 0;
            for (uint64_t i = 0; i < r->slots; i++) {
                if (old[i].ref <= SLOT_TOMB) continue;
                /* more names than the root counts (a crafted table): no room was kept */
                uint64_t k = ++n > r->count ? MP_NAMED_NONE : free_slot(t, slots, old[i].hash);
                if (k == MP_NAMED_NONE) {
                    mp_named_free(d, nt);
                    return MP_ECORRUPT;
                }
                t[k] = old[i];
            }
            mp_named_free(d, r->table);
        }
        set64(d, &r->table, nt);
        set64(d, &r->slots, slots);
        if (r->tombs) set64(d, &r->tombs, 0);
    }
    slot_t *t = table_of(d);
    uint64_t i = free_slot(t, r->slots, hash);
    if (i == MP_NAMED_NONE) return MP_ECORRUPT; /* a crafted table without an empty slot */
    if (t[i].ref == SLOT_TOMB) set64(d, &r->tombs, r->tombs - 1);
    set64(d, &t[i].hash, hash);
    set64(d, &t[i].ref, rec + 2);
    set64(d, &r->count, r->count + 1);
    set64(d, &r->gen, r->gen + 1);
    if (x) {
        idx_apply(d, x, rec, 1);
        idx_done(d, x);
    }
    return MP_OK;
}

void mp_named_replace(mp_named_t *d, uint64_t slot, uint64_t rec)
{
    named_idx_t *x = idx_current(d);
    uint64_t old = table_of(d)[slot].ref - 2; /* (its caller frees it after) */
    set64(d, &table_of(d)[slot].ref, rec + 2);
    set64(d, &d->root->gen, d->root->gen + 1);
    if (x) {
        idx_apply(d, x, old, 0);
        idx_apply(d, x, rec, 1);
        idx_done(d, x);
    }
}

void mp_named_remove(mp_named_t *d, uint64_t slot)
{
    mp_named_root_t *r = d->root;
    named_idx_t *x = idx_current(d);
    uint64_t old = table_of(d)[slot].ref - 2; /* (its caller frees it after) */
    set64(d, &r->gen, r->gen + 1);
    if (r->count == 1) { /* the last name: the table goes too */
        mp_named_free(d, r->table);
        set64(d, &r->table, MP_NAMED_NONE);
        set64(d, &r->slots, 0);
        set64(d, &r->tombs, 0);
        set64(d, &r->count, 0);
    } else {
        set64(d, &table_of(d)[slot].ref, SLOT_TOMB);
        set64(d, &r->count, r->count - 1);
        set64(d, &r->tombs, r->tombs + 1);
    }
    if (x) {
        idx_apply(d, x, old, 0);
        idx_done(d, x);
    }
}

void mp_named_rec_write(mp_named_t *d, uint64_t rec, const void *bytes, uint64_t rlen,
                        uint64_t hash, uint64_t data, uint64_t dsize, uint64_t view)
{
    memcpy(d->base + rec, bytes, (size_t)rlen);
    mp_named_rec_t *h = (mp_named_rec_t *)(d->base + rec);
    h->magic = MP_NAMED_REC_MAGIC;
    h->hash = hash;
    h->data = data;
    h->dsize = dsize;
    h->view = data + view;
    h->size = rlen;
}
