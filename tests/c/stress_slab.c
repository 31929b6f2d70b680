/*
 * stress_slab.c -- standalone randomized stress test of the Slab strategy.  No Python.
 *
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -I src/mempool/_core src/mempool/_core/[a-z]*.c \
 *       tests/c/stress_slab.c -o /tmp/stress_slab && /tmp/stress_slab [seed [scale]]
 *
 * Over many geometries (item sizes that are and are not multiples of their alignment,
 * pages of 1 to many items, capacities with a tail):
 *   - seeded random alloc / alloc_array / free / free_array / realloc / reset / bad
 *     frees (interior, unknown, double, wrong n) against a shadow list of live ranges;
 *     after every step check() passes, walk() shows exactly the shadow's ranges (each
 *     n * stride bytes, item-aligned, an in-page array inside its page, a multi-page
 *     array at a page start) with the gaps merged and covering the span, and the
 *     counters (used, requested, live, largest_free, available, free_ranges = free
 *     items) agree with the shadow.  Every failure is justified from the shadow (no
 *     free item; no page with n free items in a row; no run of enough free pages) and
 *     left the state byte for byte as it was.  A single freed item is the next one
 *     handed out (LIFO).  A batch undone by freeing in reverse and restoring the head
 *     (what alloc_many does) leaves the state byte for byte as it was.
 *   - corruption: truncated lengths, single-bit flips (every bit of the slab header and
 *     its tables, and of the head's counters, must be detected), random multi-byte
 *     mutations: check() never crashes, and a state it accepts works (random ops with
 *     check() after each, under ASan).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mempool.h"
#include "stress_common.h"

typedef struct live {
    uint64_t off, n, asked;
    int single; /* made by alloc (n == 1) rather than alloc_array */
} live_t;

typedef struct seg {
    uint64_t off, size;
    int alloc;
} seg_t;

typedef struct pool {
    uint64_t cap, isz, psz, len;
    mp_slab_info_t g;
    unsigned char *st, *before, *probe;
    live_t *live;
    size_t nlive, livecap;
    seg_t *segs;
    size_t nsegs, segcap;
    unsigned char *occ; /* scratch: items / pages covered by live ranges */
    int overflow;
} pool_t;

static struct {
    ull alloc_ok, alloc_full, alloc_big, arr_ok, arr_page, arr_run, arr_full, arr_full_page, fills, free_ok,
        free_array_ok, bad_free, wrong_n, realloc_ok, realloc_fail, lifo, batches, resets, steps;
} C;

static const mp_ops_t *OPS = &mp_slab_ops;

static int walk_cb(void *ctx, uint64_t off, uint64_t size, int allocated)
{
    pool_t *p = ctx;
    if (p->nsegs >= p->segcap) {
        p->overflow = 1;
        return 1;
    }
    p->segs[p->nsegs++] = (seg_t){off, size, allocated};
    return 0;
}

static int live_cmp(const void *a, const void *b)
{
    const live_t *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static uint64_t pages_of(const pool_t *p, uint64_t n)
{
    uint64_t bytes = n * p->g.stride;
    return bytes / p->g.page_size + (bytes % p->g.page_size != 0);
}

/* occ: per item (pages * per entries) 1 when a live in-page range covers it; and
 * page_busy (after the items) 1 when any live range touches the page. */
static unsigned char *page_busy(pool_t *p) { return p->occ + p->g.pages * p->g.per_page; }

static void build_occ(pool_t *p)
{
    uint64_t per = p->g.per_page;
    memset(p->occ, 0, (size_t)(p->g.pages * per + p->g.pages));
    unsigned char *busy = page_busy(p);
    for (size_t k = 0; k < p->nlive; k++) {
        const live_t *l = &p->live[k];
        uint64_t pg = l->off / p->g.page_size;
        if (l->n > per) {
            for (uint64_t q = pg; q < pg + pages_of(p, l->n); q++) busy[q] = 1;
        } else {
            uint64_t i = (l->off - pg * p->g.page_size) / p->g.stride;
            for (uint64_t j = 0; j < l->n; j++) p->occ[pg * per + i + j] = 1;
            busy[pg] = 1;
        }
    }
}

static uint64_t shadow_free_items(pool_t *p)
{
    uint64_t per = p->g.per_page, held = 0, runpages = 0;
    for (size_t k = 0; k < p->nlive; k++) {
        if (p->live[k].n > per) runpages += pages_of(p, p->live[k].n);
        else held += p->live[k].n;
    }
    return (p->g.pages - runpages) * per - held;
}

static void verify(pool_t *p)
{
    char msg[256] = "";
    int rc = OPS->check(p->st, p->len, msg, sizeof msg);
    REQUIRE(rc == MP_OK, "check() = %d: %s", rc, msg);
    mp_slab_info(p->st, &p->g);
    const mp_head_t *h = (const mp_head_t *)p->st;
    p->nsegs = 0;
    p->overflow = 0;
    OPS->walk(p->st, walk_cb, p);
    REQUIRE(!p->overflow, "walk() visits too many ranges");
    qsort(p->live, p->nlive, sizeof(live_t), live_cmp);
    uint64_t expect = 0, used = 0, asked = 0;
    size_t j = 0;
    for (size_t k = 0; k < p->nsegs; k++) {
        const seg_t *s = &p->segs[k];
        REQUIRE(s->off == expect && s->size >= 1, "segment %zu at %llu size %llu, expected at %llu",
                k, (ull)s->off, (ull)s->size, (ull)expect);
        if (!s->alloc) {
            REQUIRE(k == 0 || p->segs[k - 1].alloc, "free segments %zu and %zu not merged", k - 1,
                    k);
        } else {
            REQUIRE(j < p->nlive, "walk shows more allocated ranges than the shadow");
            const live_t *l = &p->live[j++];
            REQUIRE(l->off == s->off && l->n * p->g.stride == s->size,
                    "walk allocated [%llu, +%llu), shadow [%llu, %llu items)", (ull)s->off,
                    (ull)s->size, (ull)l->off, (ull)l->n);
        }
        expect = s->off + s->size;
    }
    REQUIRE(expect == p->cap, "segments end at %llu, capacity %llu", (ull)expect, (ull)p->cap);
    REQUIRE(j == p->nlive, "walk shows %zu allocated ranges, shadow %zu", j, p->nlive);
    for (size_t k = 0; k < p->nlive; k++) {
        const live_t *l = &p->live[k];
        uint64_t bytes = l->n * p->g.stride, sz = 0, n = 0;
        REQUIRE(l->off % p->g.align == 0, "range at %llu not aligned to %llu", (ull)l->off,
                (ull)p->g.align);
        uint64_t in_page = l->off % p->g.page_size;
        if (l->n > p->g.per_page)
            REQUIRE(in_page == 0 && l->off + bytes <= p->g.pages * p->g.page_size,
                    "multi-page array at %llu", (ull)l->off);
        else
            REQUIRE(in_page + bytes <= p->g.per_page * p->g.stride,
                    "array at %llu of %llu items crosses its page", (ull)l->off, (ull)l->n);
        rc = OPS->size_of(p->st, l->off, &sz);
        REQUIRE(rc == MP_OK && sz == bytes, "size_of(%llu) = %d, %llu; expected %llu",
                (ull)l->off, rc, (ull)sz, (ull)bytes);
        rc = mp_slab_items_at(p->st, l->off, &n);
        REQUIRE(rc == MP_OK && n == l->n, "items_at(%llu) = %llu", (ull)l->off, (ull)n);
        used += bytes;
        asked += l->asked;
    }
    REQUIRE(h->used == used && h->requested == asked && h->live == p->nlive,
            "head used %llu requested %llu live %llu; shadow %llu %llu %zu", (ull)h->used,
            (ull)h->requested, (ull)h->live, (ull)used, (ull)asked, p->nlive);
    uint64_t fi = shadow_free_items(p);
    REQUIRE(OPS->free_ranges(p->st) == fi && p->g.free_items == fi,
            "free items %llu, shadow %llu", (ull)OPS->free_ranges(p->st), (ull)fi);
    REQUIRE(OPS->largest_free(p->st) == (fi ? p->isz : 0), "largest_free %llu",
            (ull)OPS->largest_free(p->st));
    REQUIRE(OPS->available(p->st) == p->cap - used, "available");
    REQUIRE(h->peak_used >= h->used && h->high_water <= p->cap, "peak/high water");
    C.steps++;
}

static void require_unchanged(const pool_t *p, const char *what)
{
    if (memcmp(p->st, p->before, p->len) != 0) {
        size_t k = 0;
        while (p->st[k] == p->before[k]) k++;
        FAIL("%s failed but changed the state (first difference at byte %zu)", what, k);
    }
}

static void add_live(pool_t *p, uint64_t off, uint64_t n, uint64_t asked, int single)
{
    REQUIRE(p->nlive < p->livecap, "more live ranges than items");
    p->live[p->nlive++] = (live_t){off, n, asked, single};
}

/* ---- operations ----------------------------------------------------------------------- */
static void do_alloc(pool_t *p, uint64_t size, uint64_t align)
{
    snprintf(g_op, sizeof g_op, "alloc(%llu, %llu)", (ull)size, (ull)align);
    memcpy(p->before, p->st, p->len);
    uint64_t off = 0;
    int rc = OPS->alloc(p->st, size, align, &off);
    int servable = size <= p->isz && align <= p->g.align;
    if (rc == MP_OK) {
        REQUIRE(servable, "alloc served a request over the item size or alignment");
        REQUIRE(off % align == 0, "alloc returned %llu, not aligned to %llu", (ull)off,
                (ull)align);
        add_live(p, off, 1, size, 1);
        C.alloc_ok++;
    } else {
        require_unchanged(p, "alloc");
        REQUIRE(rc == MP_ENOSPACE, "alloc returned %d", rc);
        REQUIRE(!servable || shadow_free_items(p) == 0, "alloc: ENOSPACE with %llu free items",
                (ull)shadow_free_items(p));
        if (servable) C.alloc_full++;
        else C.alloc_big++;
    }
    verify(p);
}

static int has_item_run(pool_t *p, uint64_t n)
{
    build_occ(p);
    uint64_t per = p->g.per_page;
    unsigned char *busy = page_busy(p);
    for (uint64_t pg = 0; pg < p->g.pages; pg++) {
        int in_run = 0;
        for (size_t k = 0; k < p->nlive && !in_run; k++)
            if (p->live[k].n > per && p->live[k].off / p->g.page_size <= pg &&
                pg < p->live[k].off / p->g.page_size + pages_of(p, p->live[k].n))
                in_run = 1;
        if (in_run) continue;
        (void)busy;
        uint64_t run = 0;
        for (uint64_t i = 0; i < per; i++) {
            run = p->occ[pg * per + i] ? 0 : run + 1;
            if (run >= n) return 1;
        }
    }
    return 0;
}

static int has_page_run(pool_t *p, uint64_t k)
{
    build_occ(p);
    unsigned char *busy = page_busy(p);
    uint64_t run = 0;
    for (uint64_t pg = 0; pg < p->g.pages; pg++) {
        run = busy[pg] ? 0 : run + 1;
        if (run >= k) return 1;
    }
    return 0;
}

static void do_alloc_array(pool_t *p, uint64_t n)
{
    snprintf(g_op, sizeof g_op, "alloc_array(%llu)", (ull)n);
    memcpy(p->before, p->st, p->len);
    uint64_t off = 0, per = p->g.per_page;
    int rc = mp_slab_alloc_array(p->st, n, &off);
    if (rc == MP_OK) {
        add_live(p, off, n, n * p->isz, 0);
        C.arr_ok++;
        if (n > per) C.arr_run++;
        else C.arr_page++;
    } else {
        require_unchanged(p, "alloc_array");
        REQUIRE(rc == MP_ENOSPACE, "alloc_array returned %d", rc);
        if (n <= per) REQUIRE(!has_item_run(p, n), "alloc_array(%llu): ENOSPACE but a page has "
                              "%llu free items in a row", (ull)n, (ull)n);
        else if (n <= p->g.pages * p->g.page_size / p->g.stride)
            REQUIRE(!has_page_run(p, pages_of(p, n)), "alloc_array(%llu): ENOSPACE but %llu "
                    "free pages in a row exist", (ull)n, (ull)pages_of(p, n));
        C.arr_full++;
        if (n <= per) C.arr_full_page++;
    }
    verify(p);
}

static void do_free(pool_t *p, size_t k, int how)
{
    live_t l = p->live[k];
    snprintf(g_op, sizeof g_op, "free%s(%llu) [%llu items]", how ? "_array" : "", (ull)l.off,
             (ull)l.n);
    if (how) {
        /* a wrong n first: refused, nothing changed */
        memcpy(p->before, p->st, p->len);
        uint64_t wrong = l.n + 1 + below(3);
        if (below(2) && l.n > 1) wrong = l.n - 1;
        int rc = mp_slab_free_array(p->st, l.off, wrong);
        REQUIRE(rc == MP_EINVAL, "free_array with n %llu for %llu items = %d", (ull)wrong,
                (ull)l.n, rc);
        require_unchanged(p, "free_array(wrong n)");
        C.wrong_n++;
    }
    int rc = how ? mp_slab_free_array(p->st, l.off, l.n) : OPS->free(p->st, l.off);
    REQUIRE(rc == MP_OK, "free = %d", rc);
    p->live[k] = p->live[--p->nlive];
    if (how) C.free_array_ok++;
    else C.free_ok++;
    verify(p);
    /* LIFO: a freed single item (whose page stays) is the next one handed out */
    if (l.n == 1 && below(3) == 0) {
        uint64_t off;
        int was_last_on_page = 1;
        for (size_t j = 0; j < p->nlive; j++)
            if (p->live[j].off / p->g.page_size == l.off / p->g.page_size) was_last_on_page = 0;
        snprintf(g_op, sizeof g_op, "alloc after free(%llu)", (ull)l.off);
        rc = OPS->alloc(p->st, 1, 1, &off);
        REQUIRE(rc == MP_OK, "alloc after a free failed");
        if (!was_last_on_page)
            REQUIRE(off == l.off, "freed %llu, next alloc gave %llu (not LIFO)", (ull)l.off,
                    (ull)off);
        add_live(p, off, 1, 1, 1);
        C.lifo++;
        verify(p);
    }
}

static int is_live_start(const pool_t *p, uint64_t off)
{
    for (size_t k = 0; k < p->nlive; k++)
        if (p->live[k].off == off) return 1;
    return 0;
}

static void do_bad_free(pool_t *p)
{
    uint64_t off;
    if (p->nlive && below(2)) {
        const live_t *l = &p->live[below(p->nlive)];
        switch (below(3)) {
        case 0: off = l->off + 1 + below(p->g.stride - 1 + 1); break;
        case 1: off = l->off + p->g.stride * (1 + below(l->n)); break; /* inner item / next */
        default: off = l->off + l->n * p->g.stride * below(2); break;
        }
    } else {
        off = below(p->cap + 2 * p->g.page_size);
    }
    if (below(8) == 0) off = UINT64_MAX - below(4);
    if (is_live_start(p, off)) return;
    snprintf(g_op, sizeof g_op, "bad free(%llu)", (ull)off);
    memcpy(p->before, p->st, p->len);
    uint64_t sz;
    REQUIRE(OPS->free(p->st, off) == MP_ENOTALLOC, "free(%llu) of no live range", (ull)off);
    REQUIRE(OPS->size_of(p->st, off, &sz) == MP_ENOTALLOC, "size_of(%llu)", (ull)off);
    REQUIRE(mp_slab_free_array(p->st, off, 1) == MP_ENOTALLOC, "free_array(%llu)", (ull)off);
    REQUIRE(OPS->realloc(p->st, off, 1, 1, &sz) == MP_ENOTALLOC, "realloc(%llu)", (ull)off);
    require_unchanged(p, "bad free");
    C.bad_free++;
}

static void do_realloc(pool_t *p, size_t k)
{
    live_t *l = &p->live[k];
    uint64_t size = 1 + below(p->isz + 8), out = 0;
    snprintf(g_op, sizeof g_op, "realloc(%llu, %llu) [%llu items]", (ull)l->off, (ull)size,
             (ull)l->n);
    memcpy(p->before, p->st, p->len);
    int rc = OPS->realloc(p->st, l->off, size, 1ull << below(12), &out);
    if (l->n > 1 || !l->single) {
        if (l->n == 1) { /* alloc_array(1) is a single item */
            REQUIRE(rc == MP_OK || rc == MP_ENOSPACE, "realloc of a 1-item array = %d", rc);
        } else {
            REQUIRE(rc == MP_EINVAL, "realloc of an array = %d", rc);
            require_unchanged(p, "realloc(array)");
            C.realloc_fail++;
            verify(p);
            return;
        }
    }
    if (size <= p->isz) {
        REQUIRE(rc == MP_OK && out == l->off, "realloc in place = %d, %llu", rc, (ull)out);
        l->asked = size;
        C.realloc_ok++;
    } else {
        REQUIRE(rc == MP_ENOSPACE, "realloc beyond the item size = %d", rc);
        require_unchanged(p, "realloc");
        C.realloc_fail++;
    }
    verify(p);
}

/* alloc_many's undo: k allocs, then frees in reverse and the head restored. */
static void do_batch(pool_t *p)
{
    size_t k = 1 + below(12);
    snprintf(g_op, sizeof g_op, "batch of %zu undone", k);
    verify(p);
    seg_t *segs = xmalloc(p->nsegs * sizeof *segs);
    size_t nsegs = p->nsegs;
    memcpy(segs, p->segs, nsegs * sizeof *segs);
    memcpy(p->before, p->st, p->len);
    uint64_t fr = OPS->free_ranges(p->st);
    mp_head_t saved = *(mp_head_t *)p->st;
    uint64_t offs[16];
    size_t got = 0;
    for (; got < k; got++)
        if (OPS->alloc(p->st, 1 + below(p->isz), 1, &offs[got])) break;
    while (got) REQUIRE(OPS->free(p->st, offs[--got]) == MP_OK, "undo free");
    *(mp_head_t *)p->st = saved;
    require_unchanged(p, "an undone batch");
    verify(p);
    REQUIRE(p->nsegs == nsegs && !memcmp(segs, p->segs, nsegs * sizeof *segs),
            "the undone batch changed the memory map");
    REQUIRE(OPS->free_ranges(p->st) == fr, "the undone batch changed free_ranges");
    free(segs);
    C.batches++;
}

/* ---- lifecycle ------------------------------------------------------------------------ */
static void pool_open(pool_t *p, uint64_t cap, uint64_t isz, uint64_t psz)
{
    memset(p, 0, sizeof *p);
    p->cap = cap;
    p->isz = isz;
    p->psz = psz;
    p->len = mp_slab_state_size(cap, isz, psz);
    REQUIRE(p->len > 0, "state_size(%llu, %llu, %llu) = 0", (ull)cap, (ull)isz, (ull)psz);
    p->st = xmalloc(p->len);
    p->before = xmalloc(p->len);
    p->probe = xmalloc(p->len);
    memset(p->st, 0xa5, p->len); /* init must not depend on zeroed memory */
    REQUIRE(mp_slab_init(p->st, cap, isz, psz) == MP_OK, "init");
    mp_slab_info(p->st, &p->g);
    uint64_t items = p->g.pages * p->g.per_page;
    p->livecap = items + 1;
    p->live = xmalloc(p->livecap * sizeof(live_t));
    p->segcap = 2 * items + 4;
    p->segs = xmalloc(p->segcap * sizeof(seg_t));
    p->occ = xmalloc(items + p->g.pages + 1);
    char msg[256];
    REQUIRE(mp_head_validate(p->st, p->len, OPS, msg, sizeof msg) == MP_OK, "head: %s", msg);
    verify(p);
}

static void pool_close(pool_t *p)
{
    free(p->st);
    free(p->before);
    free(p->probe);
    free(p->live);
    free(p->segs);
    free(p->occ);
}

static void random_ops(pool_t *p, uint64_t steps)
{
    uint64_t per = p->g.per_page, items = p->g.pages * per;
    for (uint64_t s = 0; s < steps; s++) {
        uint64_t r = below(100);
        if (r < 30) {
            uint64_t size = below(10) ? 1 + below(p->isz) : p->isz + 1 + below(16);
            uint64_t align = below(6) ? 1ull << below(64 - __builtin_clzll(p->g.align))
                                      : p->g.align << (1 + below(3));
            do_alloc(p, size, align);
        } else if (r < 42) {
            uint64_t n;
            switch (below(4)) {
            case 0: n = 1 + below(3); break;
            case 1: n = 1 + below(per); break;
            case 2: n = per + 1 + below(per * 3 + 1); break;
            default: n = below(8) ? 2 + below(per + 1) : items + below(p->g.pages + 2); break;
            }
            do_alloc_array(p, n);
        } else if (r < 75) {
            if (p->nlive) do_free(p, below(p->nlive), (int)below(3) == 0);
        } else if (r < 83) {
            do_bad_free(p);
        } else if (r < 90) {
            if (p->nlive) do_realloc(p, below(p->nlive));
        } else if (r < 95) {
            do_batch(p);
        } else if (r < 96) {
            /* fill every item, free a random subset, then ask for arrays: the lowest run
             * of free items in a page serves them, or nothing does */
            snprintf(g_op, sizeof g_op, "fill");
            uint64_t off;
            while (OPS->alloc(p->st, 1, 1, &off) == MP_OK) add_live(p, off, 1, 1, 1);
            verify(p);
            for (size_t k = 0; k < p->nlive; k++)
                if (below(3) == 0) do_free(p, k--, 0);
            for (int k = 0; k < 4; k++) do_alloc_array(p, 2 + below(per));
            C.fills++;
        } else if (r < 97) {
            snprintf(g_op, sizeof g_op, "reset");
            OPS->reset(p->st);
            p->nlive = 0;
            C.resets++;
            verify(p);
        } else {
            /* drain: free everything in random order, the span must be one free range */
            while (p->nlive) do_free(p, below(p->nlive), (int)below(2));
            REQUIRE(p->nsegs == 1 && !p->segs[0].alloc, "drained slab is not one free range");
            REQUIRE(p->g.free_pages == p->g.pages, "drained slab kept %llu pages",
                    (ull)(p->g.pages - p->g.free_pages));
        }
    }
}

/* ---- corruption ------------------------------------------------------------------------ */
/* one random op on an accepted state: alloc, alloc_array, free */
static void accepted_op(const attack_t *a)
{
    const pool_t *p = a->ctx;
    uint64_t off;
    switch (below(4)) {
    case 0: OPS->alloc(a->buf, 1 + below(p->isz), 1, &off); break;
    case 1: mp_slab_alloc_array(a->buf, 1 + below(2 * p->g.per_page + 2), &off); break;
    default: OPS->free(a->buf, below(p->cap)); break;
    }
}

/* check() covers the head up to peak_used and every byte after it */
static uint64_t must_byte(const attack_t *a)
{
    const uint64_t hdr = sizeof(mp_head_t);
    return below(3) ? hdr + below(a->len - hdr) : below(offsetof(mp_head_t, peak_used));
}

static void corruption(pool_t *p, int rounds)
{
    attack_t a = {OPS, p->st, p->len, p->probe, must_byte, accepted_op, p};
    attack_truncated(&a, 1 + p->len / 8);
    attack_flips(&a, rounds);
    attack_mutations(&a, rounds, 50);
}

int main(int argc, char **argv)
{
    uint64_t seed;
    double scale = stress_args(argc, argv, "stress_slab", 20240615, &seed);
    static const uint64_t items[] = {1, 3, 6, 8, 12, 20, 24, 64, 96, 100, 256, 4096};
    clock_t t0 = clock();
    unsigned configs = 0;
    for (int round = 0; round < (int)(16 * scale); round++) {
        for (size_t k = 0; k < sizeof items / sizeof items[0]; k++) {
            uint64_t isz = items[k];
            mp_slab_info_t g;
            /* a page of 1 to ~40 items, a multiple of the item alignment */
            uint64_t a = isz & (0 - isz);
            if (a < 8 && isz >= 8) a = 8;
            uint64_t stride = (isz + a - 1) & ~(a - 1);
            uint64_t psz = stride * (1 + below(40));
            psz = (psz + a - 1) / a * a + a * below(3);
            uint64_t cap = psz * (1 + below(12)) + below(psz);
            (void)g;
            pool_t p;
            snprintf(g_ctx, sizeof g_ctx, "seed %llu: Slab(%llu, %llu, page_size=%llu)",
                     (ull)seed, (ull)cap, (ull)isz, (ull)psz);
            pool_open(&p, cap, isz, psz);
            random_ops(&p, 600);
            corruption(&p, 300);
            pool_close(&p);
            configs++;
        }
    }
    /* the bad parameters are refused */
    char why[200];
    snprintf(g_ctx, sizeof g_ctx, "parameters");
    struct { uint64_t cap, isz, psz; } bad[] = {
        {0, 8, 64}, {64, 0, 64}, {64, 8, 0}, {64, 8, 4}, {64, 8, 12}, {32, 8, 64},
        {1 << 20, 1u << 30, 1u << 30}, {64, 100, 64}, {100, 20, 20},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        REQUIRE(mp_slab_state_size(bad[k].cap, bad[k].isz, bad[k].psz) == 0,
                "state_size accepted bad parameters %zu", k);
        REQUIRE(mp_slab_explain(bad[k].cap, bad[k].isz, bad[k].psz, why, sizeof why) == MP_EINVAL,
                "explain accepted bad parameters %zu", k);
    }
    printf("  %u geometries, %llu verified steps in %.1f s\n", configs, C.steps,
           (double)(clock() - t0) / CLOCKS_PER_SEC);
    printf("  alloc ok %llu full %llu refused %llu | arrays ok %llu (page %llu, multi-page %llu) "
           "full %llu (in a page %llu)\n  free %llu free_array %llu wrong n %llu bad %llu | realloc ok %llu "
           "refused %llu | lifo %llu batches %llu resets %llu\n",
           C.alloc_ok, C.alloc_full, C.alloc_big, C.arr_ok, C.arr_page, C.arr_run, C.arr_full, C.arr_full_page,
           C.free_ok, C.free_array_ok, C.wrong_n, C.bad_free, C.realloc_ok, C.realloc_fail,
           C.lifo, C.batches, C.resets);
    REQUIRE(C.alloc_full && C.arr_run && C.arr_full_page && C.lifo && C.wrong_n && C.fills,
            "a path was never exercised");
    printf("OK\n");
    return 0;
}
