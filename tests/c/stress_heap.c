/*
 * stress_heap.c -- standalone randomized stress test of the Heap strategy through
 * its mp_ops_t table.  No Python.
 *
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -I src/mempool/_core "src/mempool/_core/"*.c \
 *       tests/c/stress_heap.c -o /tmp/stress_heap && /tmp/stress_heap [seed [scale]]
 *
 * For a spread of capacities, page sizes and TLSF node budgets:
 *   - seeded random alloc / free / realloc (grow, shrink, across classes) / bad
 *     frees (double, interior, beyond the span) / bad arguments / reset, against a
 *     shadow list of live ranges; after every step: check() passes, the ranges are
 *     inside the span, aligned, disjoint, size_of is what the shadow holds and
 *     agrees with the routing rounding (or the documented fallbacks), used / live /
 *     requested agree with the shadow, walk() lists exactly the live ranges with
 *     the free space merged between them, free_ranges counts those free pieces,
 *     alloc(s) succeeds on a copy for s = largest_free and smaller sizes, and a
 *     failed call left the head byte for byte and the memory map as they were;
 *   - realloc in place exactly when the rules say so (same class; a fragment run
 *     or a TLSF range that shrinks);
 *   - corruption: truncated lengths, single-bit flips in the fields check() must
 *     cover (required to be detected), random bytes and bit flips anywhere:
 *     check() never crashes, and a mutated state it accepts works (random ops,
 *     each followed by check(), under ASan).
 *
 * Exit status 0 when everything passes; otherwise the failing case is printed and
 * the status is 1.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mempool.h"
#include "stress_common.h"

static const mp_ops_t *OPS = &mp_heap_ops;

/* ---- the routing rules (heap.c), restated ------------------------------------------ */
enum { K_TLSF = 0, K_CLASS = 1, K_FRAG = 2 };
static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }
static uint64_t frag_max(uint64_t ps) { return ps / 1024 < 16 ? ps / 1024 : 16; }

static int route(uint64_t size, uint64_t align, uint64_t ps, uint64_t *rounded)
{
    if (align <= 256 && size <= 256) {
        *rounded = align_up(size, align < 16 ? 16 : align);
        return K_CLASS;
    }
    if (align <= 256) {
        uint64_t n = (size + 255) / 256;
        if (n <= frag_max(ps) && (n * 256 - size) * 8 <= size) {
            *rounded = n * 256;
            return K_FRAG;
        }
    }
    *rounded = size;
    return K_TLSF;
}

/* ---- the pool under test and its shadow ----------------------------------------------- */
typedef struct live {
    uint64_t off, size, req;
    int kind;
} live_t;
typedef struct seg {
    uint64_t off, size;
    int alloc;
} seg_t;

typedef struct pool {
    uint64_t cap, ps, maxb, len;
    unsigned char *st, *probe;
    live_t *live;
    size_t nlive, livecap;
    seg_t *segs;
    size_t nsegs, segcap;
} pool_t;

static struct {
    uint64_t alloc_ok, alloc_fail, frees, bad, realloc_same, realloc_moved, resets, spills,
        tlsf_fallbacks, steps, corrupt_accepted, corrupt_rejected;
} C;

static int collect(void *ctx, uint64_t off, uint64_t size, int allocated)
{
    pool_t *p = ctx;
    if (p->nsegs == p->segcap) {
        p->segcap = p->segcap ? 2 * p->segcap : 64;
        p->segs = realloc(p->segs, p->segcap * sizeof *p->segs);
        if (!p->segs) exit(2);
    }
    p->segs[p->nsegs++] = (seg_t){off, size, allocated};
    return 0;
}

static void walk(pool_t *p)
{
    p->nsegs = 0;
    OPS->walk(p->st, collect, p);
}

static int cmp_live(const void *a, const void *b)
{
    uint64_t x = ((const live_t *)a)->off, y = ((const live_t *)b)->off;
    return (x > y) - (x < y);
}

static void must_check(const void *st, uint64_t len)
{
    char msg[256];
    if (OPS->check(st, len, msg, sizeof msg)) FAIL("check(): %s", msg);
}

static int kind_of(pool_t *p, uint64_t off) { return mp_heap_served_by(p->st, off); }

/* every invariant the shadow can see */
static void verify(pool_t *p)
{
    must_check(p->st, p->len);
    const mp_head_t *h = (const mp_head_t *)p->st;
    if (p->nlive) qsort(p->live, p->nlive, sizeof *p->live, cmp_live);
    uint64_t used = 0, req = 0;
    for (size_t i = 0; i < p->nlive; i++) {
        live_t *l = &p->live[i];
        REQUIRE(l->off + l->size <= p->cap, "range [%llu, +%llu) leaves the span", (ull)l->off,
                (ull)l->size);
        if (i) REQUIRE(p->live[i - 1].off + p->live[i - 1].size <= l->off, "ranges overlap at %llu",
                       (ull)l->off);
        uint64_t sz;
        REQUIRE(OPS->size_of(p->st, l->off, &sz) == MP_OK && sz == l->size,
                "size_of(%llu) = %llu, shadow %llu", (ull)l->off, (ull)sz, (ull)l->size);
        REQUIRE(kind_of(p, l->off) == l->kind, "served_by(%llu) changed", (ull)l->off);
        used += l->size;
        req += l->req;
    }
    REQUIRE(h->live == p->nlive, "live %llu, shadow %zu", (ull)h->live, p->nlive);
    REQUIRE(h->used == used, "used %llu, shadow %llu", (ull)h->used, (ull)used);
    REQUIRE(h->requested == req, "requested %llu, shadow %llu", (ull)h->requested, (ull)req);
    REQUIRE(OPS->available(p->st) == p->cap - used, "available");
    walk(p);
    uint64_t pos = 0, nfree = 0;
    size_t k = 0;
    for (size_t i = 0; i < p->nsegs; i++) {
        seg_t *s = &p->segs[i];
        REQUIRE(s->off == pos && s->size > 0, "walk: piece at %llu, expected %llu", (ull)s->off,
                (ull)pos);
        if (s->alloc) {
            REQUIRE(k < p->nlive && p->live[k].off == s->off && p->live[k].size == s->size,
                    "walk: allocated [%llu, +%llu) is not the shadow's", (ull)s->off, (ull)s->size);
            k++;
        } else {
            REQUIRE(i == 0 || p->segs[i - 1].alloc, "walk: free pieces at %llu not merged",
                    (ull)s->off);
            nfree++;
        }
        pos += s->size;
    }
    REQUIRE(pos == p->cap && k == p->nlive, "walk covers %llu of %llu, %zu of %zu ranges", (ull)pos,
            (ull)p->cap, k, p->nlive);
    REQUIRE(OPS->free_ranges(p->st) == nfree, "free_ranges %llu, walk %llu",
            (ull)OPS->free_ranges(p->st), (ull)nfree);
    /* every size up to largest_free is served (on a copy) */
    uint64_t lf = OPS->largest_free(p->st);
    REQUIRE(lf <= p->cap - used, "largest_free %llu beyond available", (ull)lf);
    uint64_t tries[4] = {lf, lf / 2 + 1, lf < 200 ? lf : 200, lf < 700 ? lf : 700};
    for (int t = 0; t < 4 && lf; t++) {
        memcpy(p->probe, p->st, p->len);
        uint64_t off;
        int rc = OPS->alloc(p->probe, tries[t], 1, &off);
        REQUIRE(rc == MP_OK || rc == MP_ENONODES, "alloc(%llu) failed (%d), largest_free %llu",
                (ull)tries[t], rc, (ull)lf);
        if (rc == MP_OK && t == 0) must_check(p->probe, p->len);
    }
}

static void live_add(pool_t *p, uint64_t off, uint64_t size, uint64_t req, int kind)
{
    if (p->nlive == p->livecap) {
        p->livecap = p->livecap ? 2 * p->livecap : 64;
        p->live = realloc(p->live, p->livecap * sizeof *p->live);
        if (!p->live) exit(2);
    }
    p->live[p->nlive++] = (live_t){off, size, req, kind};
}

/* a new range: aligned, sized by the route or a documented fallback */
static void new_range(pool_t *p, uint64_t off, uint64_t size, uint64_t align)
{
    uint64_t sz, want;
    REQUIRE(off % align == 0, "offset %llu not aligned to %llu", (ull)off, (ull)align);
    REQUIRE(OPS->size_of(p->st, off, &sz) == MP_OK, "size_of of a new range");
    int kind = kind_of(p, off), rk = route(size, align, p->ps, &want);
    uint64_t mine;
    REQUIRE(mp_heap_size_class(p->st, size, align, &mine) == MP_OK && mine == want,
            "size_class(%llu, %llu) = %llu, rules say %llu", (ull)size, (ull)align, (ull)mine,
            (ull)want);
    if (kind == K_TLSF) {
        REQUIRE(sz == size, "TLSF range of %llu for %llu", (ull)sz, (ull)size);
        if (rk != K_TLSF) C.tlsf_fallbacks++;
    } else {
        REQUIRE(sz >= size && sz - size < 256, "rounded %llu to %llu", (ull)size, (ull)sz);
        if (kind == K_CLASS)
            REQUIRE(sz % 16 == 0 && sz <= 256 && off % (sz & (0 - sz)) == 0,
                    "class item %llu at %llu", (ull)sz, (ull)off);
        else REQUIRE(sz % 256 == 0 && off % 256 == 0 && sz <= frag_max(p->ps) * 256,
                     "fragment run %llu at %llu", (ull)sz, (ull)off);
        if (kind == rk) REQUIRE(sz >= want, "rounded below its route");
        if (kind != rk || sz != want) C.spills++;
    }
    live_add(p, off, sz, size, kind);
}

static uint64_t rand_size(uint64_t cap)
{
    switch (below(6)) {
    case 0: return 1 + below(64);
    case 1: return 1 + below(256);
    case 2: return 257 + below(800);
    case 3: return 1 + below(5000);
    case 4: return 1 + below(cap < 40000 ? cap : 40000);
    default: return 256 * (1 + below(16)) - below(20);
    }
}

static uint64_t rand_align(void)
{
    static const uint64_t a[] = {1, 1, 1, 1, 2, 8, 16, 32, 64, 128, 256, 512, 4096};
    return a[below(sizeof a / sizeof a[0])];
}

/* a failed call must leave the head byte for byte and the memory map as they were */
static void expect_unchanged(pool_t *p, const mp_head_t *before, const seg_t *segs, size_t n)
{
    REQUIRE(memcmp(before, p->st, sizeof *before) == 0, "a failed call changed the head");
    walk(p);
    REQUIRE(p->nsegs == n && (n == 0 || memcmp(segs, p->segs, n * sizeof *segs) == 0),
            "a failed call changed the memory map");
}

static void step(pool_t *p)
{
    uint64_t r = below(100), off, out;
    mp_head_t before;
    memcpy(&before, p->st, sizeof before);
    walk(p);
    size_t nsegs = p->nsegs;
    seg_t *segs = xmalloc(nsegs * sizeof *segs);
    memcpy(segs, p->segs, nsegs * sizeof *segs);
    if (r < 45 || p->nlive == 0) {
        uint64_t size = rand_size(p->cap), align = rand_align();
        snprintf(g_op, sizeof g_op, "alloc(%llu, %llu)", (ull)size, (ull)align);
        uint64_t lf = OPS->largest_free(p->st);
        int rc = OPS->alloc(p->st, size, align, &off);
        if (rc == MP_OK) {
            new_range(p, off, size, align);
            C.alloc_ok++;
        } else {
            REQUIRE(rc == MP_ENOSPACE || rc == MP_ENONODES, "alloc returned %d", rc);
            if (align == 1 && rc == MP_ENOSPACE)
                REQUIRE(size > lf, "alloc(%llu) refused, largest_free %llu", (ull)size, (ull)lf);
            expect_unchanged(p, &before, segs, nsegs);
            C.alloc_fail++;
        }
    } else if (r < 75) {
        size_t i = below(p->nlive);
        snprintf(g_op, sizeof g_op, "free(%llu)", (ull)p->live[i].off);
        REQUIRE(OPS->free(p->st, p->live[i].off) == MP_OK, "free of a live range failed");
        p->live[i] = p->live[--p->nlive];
        C.frees++;
    } else if (r < 92) {
        size_t i = below(p->nlive);
        live_t old = p->live[i];
        uint64_t size = below(3) ? rand_size(p->cap) : old.req + below(40) - (old.req > 20 ? 20 : 0);
        if (size == 0) size = 1;
        uint64_t align = below(4) ? 1 : rand_align(), want;
        int rk = route(size, align, p->ps, &want);
        snprintf(g_op, sizeof g_op, "realloc(%llu [%llu, kind %d], %llu, %llu)", (ull)old.off,
                 (ull)old.size, old.kind, (ull)size, (ull)align);
        int rc = OPS->realloc(p->st, old.off, size, align, &out);
        if (rc) {
            REQUIRE(rc == MP_ENOSPACE || rc == MP_ENONODES, "realloc returned %d", rc);
            expect_unchanged(p, &before, segs, nsegs);
        } else {
            p->live[i] = p->live[--p->nlive];
            new_range(p, out, size, out == old.off ? 1 : align);
            live_t *nw = &p->live[p->nlive - 1];
            if (old.kind == K_CLASS && rk == K_CLASS && want == old.size)
                REQUIRE(out == old.off, "same class: not in place");
            else if (old.kind == K_CLASS) REQUIRE(out != old.off, "another class: not moved");
            if (old.kind == K_FRAG && rk == K_FRAG && want <= old.size)
                REQUIRE(out == old.off && nw->size == want, "fragment shrink: not in place");
            if (old.kind == K_TLSF && rk == K_TLSF && size <= old.size)
                REQUIRE(out == old.off, "TLSF shrink: not in place");
            if (out == old.off) C.realloc_same++;
            else C.realloc_moved++;
        }
    } else if (r < 98) {
        /* bad offsets: not live, interior, beyond the span; bad arguments */
        uint64_t bad;
        if (p->nlive && below(2)) {
            live_t *l = &p->live[below(p->nlive)];
            bad = l->off + 1 + below(l->size + 300);
        } else {
            bad = below(2) ? below(p->cap + 1000) : p->cap + below(1u << 20);
        }
        int is_live = 0;
        for (size_t i = 0; i < p->nlive; i++) is_live |= p->live[i].off == bad;
        if (!is_live) {
            snprintf(g_op, sizeof g_op, "bad offset %llu", (ull)bad);
            uint64_t sz;
            REQUIRE(OPS->free(p->st, bad) == MP_ENOTALLOC, "free(%llu) accepted", (ull)bad);
            REQUIRE(OPS->size_of(p->st, bad, &sz) == MP_ENOTALLOC, "size_of accepted");
            REQUIRE(OPS->realloc(p->st, bad, 10, 1, &out) == MP_ENOTALLOC, "realloc accepted");
            REQUIRE(mp_heap_served_by(p->st, bad) == MP_ENOTALLOC, "served_by accepted");
        }
        snprintf(g_op, sizeof g_op, "bad arguments");
        REQUIRE(OPS->alloc(p->st, 0, 1, &off) == MP_EINVAL, "alloc(0) accepted");
        REQUIRE(OPS->alloc(p->st, 8, 3, &off) == MP_EINVAL, "align 3 accepted");
        REQUIRE(OPS->alloc(p->st, 8, 0, &off) == MP_EINVAL, "align 0 accepted");
        REQUIRE(OPS->alloc(p->st, UINT64_MAX, 1, &off) == MP_ENOSPACE, "huge size accepted");
        if (p->nlive) {
            REQUIRE(OPS->realloc(p->st, p->live[0].off, 0, 1, &out) == MP_EINVAL, "realloc 0");
            REQUIRE(OPS->realloc(p->st, p->live[0].off, 8, 6, &out) == MP_EINVAL, "align 6");
        }
        expect_unchanged(p, &before, segs, nsegs);
        C.bad++;
    } else if (r < 99) {
        snprintf(g_op, sizeof g_op, "reset");
        OPS->reset(p->st);
        p->nlive = 0;
        C.resets++;
    } else {
        snprintf(g_op, sizeof g_op, "free everything");
        while (p->nlive) REQUIRE(OPS->free(p->st, p->live[--p->nlive].off) == MP_OK, "free");
        walk(p);
        REQUIRE(p->nsegs == 1 && !p->segs[0].alloc, "an empty heap is not one free range");
    }
    free(segs);
    verify(p);
    C.steps++;
}

static void pool_open(pool_t *p, uint64_t cap, uint64_t ps, uint64_t maxb)
{
    memset(p, 0, sizeof *p);
    p->cap = cap;
    p->ps = ps;
    p->maxb = maxb;
    p->len = mp_heap_state_size(cap, ps, maxb);
    REQUIRE(p->len, "state_size(%llu, %llu, %llu) = 0", (ull)cap, (ull)ps, (ull)maxb);
    p->st = xmalloc(p->len);
    p->probe = xmalloc(p->len);
    REQUIRE(mp_heap_init(p->st, cap, ps, maxb) == MP_OK, "init");
}

static void pool_close(pool_t *p)
{
    free(p->st);
    free(p->probe);
    free(p->live);
    free(p->segs);
}

/* ---- parameters ---------------------------------------------------------------------- */
static void params(void)
{
    snprintf(g_ctx, sizeof g_ctx, "parameters");
    REQUIRE(mp_heap_state_size(0, 4096, 16) == 0, "capacity 0");
    REQUIRE(mp_heap_state_size(100, 0, 16) == 0, "page 0");
    REQUIRE(mp_heap_state_size(100, 2048, 16) == 0, "page 2048");
    REQUIRE(mp_heap_state_size(100, 6000, 16) == 0, "page 6000");
    REQUIRE(mp_heap_state_size(100, 1 << 17, 16) == 0, "page 128 KiB");
    REQUIRE(mp_heap_state_size(100, 4096, 0) == 0, "max_blocks 0");
    REQUIRE(mp_heap_state_size(100, 4096, MP_NIL) == 0, "max_blocks NIL");
    REQUIRE(mp_heap_state_size((uint64_t)1 << 50, 4096, 16) == 0, "too many pages");
    REQUIRE(mp_heap_state_size(1, 4096, 1) != 0, "capacity 1");
    unsigned char buf[64];
    REQUIRE(mp_heap_init(buf, 0, 4096, 16) == MP_EINVAL, "init with bad params");
    REQUIRE(mp_ops_by_kind(MP_KIND_HEAP) == &mp_heap_ops, "registry");
}

/* ---- corruption ---------------------------------------------------------------------- */
static void run_mutant(pool_t *p, unsigned char *m)
{
    /* an accepted mutant must work: random ops, check() after each */
    char msg[256];
    uint64_t offs[64];
    int n = 0;
    for (int k = 0; k < 60; k++) {
        uint64_t off;
        if (n && below(2)) {
            int i = (int)below((uint64_t)n);
            OPS->free(m, offs[i]);
            offs[i] = offs[--n];
        } else if (n && below(3) == 0) {
            OPS->realloc(m, offs[below((uint64_t)n)], rand_size(p->cap), 1, &off);
            n = 0; /* the offset may have moved: forget them all */
        } else if (OPS->alloc(m, rand_size(p->cap), rand_align(), &off) == MP_OK && n < 64) {
            offs[n++] = off;
        }
        OPS->free(m, below(p->cap)); /* arbitrary offsets are refused or freed */
        if (OPS->check(m, p->len, msg, sizeof msg))
            FAIL("an accepted mutant broke after an operation: %s", msg);
        OPS->largest_free(m);
        OPS->free_ranges(m);
    }
}

static void corruption(pool_t *p, uint64_t rounds)
{
    char msg[256];
    unsigned char *m = xmalloc(p->len);
    /* truncated */
    for (uint64_t cut = 0; cut < p->len; cut += 1 + p->len / 37)
        REQUIRE(OPS->check(p->st, cut, msg, sizeof msg) == MP_ECORRUPT, "length %llu accepted",
                (ull)cut);
    /* fields check() must cover: every bit flip is detected */
    static const size_t must[] = {
        offsetof(mp_head_t, magic), offsetof(mp_head_t, kind), offsetof(mp_head_t, version),
        offsetof(mp_head_t, state_size), offsetof(mp_head_t, capacity), offsetof(mp_head_t, used),
        offsetof(mp_head_t, requested), offsetof(mp_head_t, live), offsetof(mp_head_t, param),
        offsetof(mp_head_t, param) + 8,
    };
    static const size_t width[] = {4, 2, 2, 8, 8, 8, 8, 8, 8, 8};
    for (size_t f = 0; f < sizeof must / sizeof must[0]; f++)
        for (size_t bit = 0; bit < width[f] * 8; bit++) {
            memcpy(m, p->st, p->len);
            m[must[f] + bit / 8] ^= (unsigned char)(1u << (bit % 8));
            snprintf(g_op, sizeof g_op, "flip bit %zu of head field at %zu", bit, must[f]);
            REQUIRE(OPS->check(m, p->len, msg, sizeof msg) == MP_ECORRUPT,
                    "head field at %zu, bit %zu: flip not detected", must[f], bit);
        }
    /* the layout words right after the head: every bit flip is detected */
    for (size_t byte = sizeof(mp_head_t); byte < sizeof(mp_head_t) + 72; byte++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(m, p->st, p->len);
            m[byte] ^= (unsigned char)(1u << bit);
            snprintf(g_op, sizeof g_op, "flip bit %d of layout byte %zu", bit, byte);
            REQUIRE(OPS->check(m, p->len, msg, sizeof msg) == MP_ECORRUPT,
                    "layout byte %zu bit %d: flip not detected", byte, bit);
        }
    /* anything else: never a crash; an accepted state works */
    for (uint64_t k = 0; k < rounds; k++) {
        memcpy(m, p->st, p->len);
        int nmut = 1 + (int)below(3);
        for (int j = 0; j < nmut; j++) {
            uint64_t at = below(p->len);
            switch (below(4)) {
            case 0: m[at] ^= (unsigned char)(1u << below(8)); break;
            case 1: m[at] = (unsigned char)rnd(); break;
            case 2: /* an index-shaped value: small, NIL, or near a page count */
                if (at + 4 <= p->len) {
                    uint32_t v = below(2) ? (uint32_t)below(64) : MP_NIL - (uint32_t)below(2);
                    memcpy(m + at, &v, 4);
                }
                break;
            default: /* in the heap's own tables, where most structure lives */
                m[sizeof(mp_head_t) + below(p->len / 4 + 1) % p->len] ^= (unsigned char)rnd();
            }
        }
        snprintf(g_op, sizeof g_op, "mutation round %llu", (ull)k);
        if (OPS->check(m, p->len, msg, sizeof msg) == MP_OK) {
            C.corrupt_accepted++;
            run_mutant(p, m);
        } else {
            C.corrupt_rejected++;
        }
    }
    free(m);
}

int main(int argc, char **argv)
{
    uint64_t seed;
    uint64_t scale = (uint64_t)(3 * stress_args(argc, argv, "stress_heap", 20240611, &seed) + 0.5);
    if (scale < 1) scale = 1;
    params();
    static const struct {
        uint64_t cap, ps, maxb, steps;
    } cfg[] = {
        {1, 4096, 1, 300},         {100, 4096, 8, 400},        {4096, 4096, 16, 800},
        {3 * 4096 + 7, 4096, 64, 1500}, {20000, 8192, 6, 1500},  {65536, 4096, 1024, 2500},
        {65536, 16384, 12, 1500},  {200000, 65536, 1024, 1500}, {1 << 20, 4096, 2048, 2500},
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        pool_t p;
        snprintf(g_ctx, sizeof g_ctx, "capacity %llu page %llu max_blocks %llu seed %llu",
                 (ull)cfg[c].cap, (ull)cfg[c].ps, (ull)cfg[c].maxb, (ull)seed);
        pool_open(&p, cfg[c].cap, cfg[c].ps, cfg[c].maxb);
        verify(&p);
        for (uint64_t s = 0; s < cfg[c].steps * scale; s++) {
            step(&p);
            if (s == cfg[c].steps * scale / 2) corruption(&p, 150 * scale);
        }
        corruption(&p, 150 * scale);
        pool_close(&p);
    }
    printf("steps %llu: alloc ok %llu / failed %llu, frees %llu, realloc in place %llu / moved "
           "%llu, bad-input rounds %llu, resets %llu, TLSF fallbacks %llu, spills %llu, "
           "mutants accepted %llu / rejected %llu\n",
           (ull)C.steps, (ull)C.alloc_ok, (ull)C.alloc_fail, (ull)C.frees, (ull)C.realloc_same,
           (ull)C.realloc_moved, (ull)C.bad, (ull)C.resets, (ull)C.tlsf_fallbacks, (ull)C.spills,
           (ull)C.corrupt_accepted, (ull)C.corrupt_rejected);
    printf("OK\n");
    return 0;
}
