/*
 * stress_buddy.c -- standalone randomized stress test of the Buddy strategy through
 * its mp_ops_t table.  No Python.
 *
 *   CORE=src/mempool/_core
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -I $CORE $CORE/[every .c] \
 *       tests/c/stress_buddy.c -o /tmp/stress_buddy && /tmp/stress_buddy [seed [scale]]
 *
 * For a spread of parameter sets (fanout 2..256, min_block 1..1 MiB, several
 * top-level blocks, tails below min_block, hcsshim's 4 GiB / 1 MiB / x4):
 *   - seeded random alloc / free / realloc / reset / bad offsets / bad arguments,
 *     against a shadow list of live blocks; after every step check() passes and the
 *     memory map (walk) is verified independently: it tiles [0, capacity) with
 *     blocks aligned to their class size, no fanout buddies of a class below the
 *     top are all free, the allocated blocks are exactly the shadow's (size_of =
 *     the class of the size asked for), used / requested / live / available /
 *     largest_free / free_ranges agree, and alloc(largest_free) succeeds on a copy;
 *   - alloc is predicted from the map alone: the smallest free block >= the class
 *     and >= align (or, for an align beyond max_block, at a multiple of it), lowest
 *     offset among equals; ENOSPACE exactly when there is none; any failure leaves
 *     the state byte for byte;
 *   - realloc: same or smaller class in place; in place growth exactly when the
 *     buddies above the block are free; else the alloc prediction, else what a
 *     free followed by an alloc gives (on a copy), else ENOSPACE, unchanged;
 *   - the hcsshim scenarios; the unused tail;
 *   - corruption: truncated lengths, random bytes, single-bit flips anywhere
 *     check() must cover (all must be caught), random mutations: check() never
 *     crashes, and a state it accepts keeps working (random ops, checked).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mempool.h"
#include "stress_common.h"

static const mp_ops_t *OPS = &mp_buddy_ops;

typedef struct seg {
    uint64_t off, size;
    int alloc;
} seg_t;
typedef struct live {
    uint64_t off, req;
} live_t;

typedef struct pool {
    uint64_t cap, minb, maxb, fan, len, usable, top, nslots;
    unsigned K;
    unsigned char *st, *before, *probe;
    live_t *live;
    size_t nlive, livecap;
    seg_t *segs;
    size_t nsegs, segcap;
} pool_t;

static struct {
    uint64_t alloc_ok, alloc_nospace, frees, bad, re_same, re_shrink, re_grow, re_moved,
        re_merged, re_nospace, resets, steps;
} C;

static uint64_t class_size(const pool_t *p, unsigned k)
{
    uint64_t s = p->minb;
    while (k--) s *= p->fan;
    return s;
}
static int class_of(const pool_t *p, uint64_t size, unsigned *k) /* 0: no class */
{
    uint64_t s = p->minb;
    for (unsigned j = 0; j < p->K; j++, s *= p->fan)
        if (s >= size) {
            *k = j;
            return 1;
        }
    return 0;
}

static void pool_open(pool_t *p, uint64_t cap, uint64_t minb, uint64_t maxb, uint64_t fan)
{
    memset(p, 0, sizeof *p);
    p->cap = cap;
    p->minb = minb;
    p->fan = fan;
    p->len = mp_buddy_state_size(cap, minb, maxb, fan);
    REQUIRE(p->len, "state_size(%llu, %llu, %llu, %llu) = 0", (ull)cap, (ull)minb, (ull)maxb,
            (ull)fan);
    p->st = xmalloc(p->len);
    p->before = xmalloc(p->len);
    p->probe = xmalloc(p->len);
    memset(p->st, 0xa5, p->len); /* init must not rely on zeroed memory */
    REQUIRE(mp_buddy_init(p->st, cap, minb, maxb, fan) == MP_OK, "init");
    const mp_head_t *h = (const mp_head_t *)p->st;
    p->usable = h->capacity;
    p->nslots = p->usable / minb;
    REQUIRE(p->usable == cap / minb * minb, "usable %llu", (ull)p->usable);
    p->K = mp_buddy_classes(p->st);
    p->maxb = h->param[2];
    p->top = class_size(p, p->K - 1);
    REQUIRE(p->top == p->maxb, "top class %llu, max_block %llu", (ull)p->top, (ull)p->maxb);
    if (maxb) REQUIRE(p->maxb == maxb, "max_block %llu requested, %llu given", (ull)maxb,
                      (ull)p->maxb);
    else REQUIRE(p->top <= cap && (p->top > cap / fan), "default max_block %llu", (ull)p->top);
    for (unsigned k = 0; k < p->K; k++)
        REQUIRE(mp_buddy_class_size(p->st, k) == class_size(p, k), "class_size(%u)", k);
    REQUIRE(mp_buddy_class_size(p->st, p->K) == 0, "class_size beyond the classes");
    p->livecap = p->nslots + 1;
    p->live = xmalloc(p->livecap * sizeof(live_t));
    p->segcap = p->nslots + 1;
    p->segs = xmalloc(p->segcap * sizeof(seg_t));
}

static void pool_close(pool_t *p)
{
    free(p->st);
    free(p->before);
    free(p->probe);
    free(p->live);
    free(p->segs);
}

static int walk_cb(void *ctx, uint64_t off, uint64_t size, int allocated)
{
    pool_t *p = ctx;
    if (p->nsegs >= p->segcap) return 1;
    p->segs[p->nsegs++] = (seg_t){off, size, allocated};
    return 0;
}

static int live_cmp(const void *a, const void *b)
{
    const live_t *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static long seg_index(const pool_t *p, uint64_t off) /* segment starting at off, or -1 */
{
    size_t lo = 0, hi = p->nsegs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->segs[mid].off < off) lo = mid + 1;
        else hi = mid;
    }
    return lo < p->nsegs && p->segs[lo].off == off ? (long)lo : -1;
}

static void verify(pool_t *p)
{
    char msg[256] = "";
    int rc = OPS->check(p->st, p->len, msg, sizeof msg);
    REQUIRE(rc == MP_OK, "check() = %d: %s", rc, msg);
    const mp_head_t *h = (const mp_head_t *)p->st;
    p->nsegs = 0;
    REQUIRE(OPS->walk(p->st, walk_cb, p) == MP_OK, "walk failed or overflowed");
    uint64_t pos = 0, largest = 0, nfree = 0, nalloc = 0;
    for (size_t k = 0; k < p->nsegs; k++) {
        const seg_t *g = &p->segs[k];
        unsigned c;
        REQUIRE(g->off == pos, "segment %zu at %llu, expected %llu", k, (ull)g->off, (ull)pos);
        REQUIRE(class_of(p, g->size, &c) && class_size(p, c) == g->size,
                "segment %zu: size %llu is not a class size", k, (ull)g->size);
        REQUIRE(g->off % g->size == 0, "block at %llu not aligned to its size %llu", (ull)g->off,
                (ull)g->size);
        if (!g->alloc) {
            nfree++;
            if (g->size > largest) largest = g->size;
        } else {
            nalloc++;
        }
        pos += g->size;
    }
    REQUIRE(pos == p->usable, "segments end at %llu, usable %llu", (ull)pos, (ull)p->usable);
    /* merged: no complete group of free buddies below the top class */
    for (size_t k = 0; k < p->nsegs; k++) {
        const seg_t *g = &p->segs[k];
        if (g->alloc || g->size == p->top) continue;
        uint64_t parent = g->size * p->fan, start = g->off / parent * parent;
        if (start + parent > p->usable) continue;
        uint64_t o;
        for (o = start; o < start + parent; o += g->size) {
            long j = seg_index(p, o);
            if (j < 0 || p->segs[j].alloc || p->segs[j].size != g->size) break;
        }
        REQUIRE(o < start + parent, "the %llu buddies at %llu are all free", (ull)p->fan,
                (ull)start);
    }
    qsort(p->live, p->nlive, sizeof(live_t), live_cmp);
    REQUIRE(nalloc == p->nlive, "walk: %llu allocated, shadow %zu", (ull)nalloc, p->nlive);
    uint64_t used = 0, req = 0;
    for (size_t k = 0, j = 0; k < p->nsegs; k++) {
        if (!p->segs[k].alloc) continue;
        const live_t *l = &p->live[j++];
        unsigned c;
        REQUIRE(class_of(p, l->req, &c), "shadow request beyond the classes");
        REQUIRE(p->segs[k].off == l->off && p->segs[k].size == class_size(p, c),
                "walk [%llu, +%llu), shadow %llu (asked %llu)", (ull)p->segs[k].off,
                (ull)p->segs[k].size, (ull)l->off, (ull)l->req);
        uint64_t sz = 0;
        REQUIRE(OPS->size_of(p->st, l->off, &sz) == MP_OK && sz == p->segs[k].size,
                "size_of(%llu)", (ull)l->off);
        used += sz;
        req += l->req;
    }
    REQUIRE(h->used == used && h->requested == req && h->live == p->nlive,
            "head used %llu requested %llu live %llu; shadow %llu %llu %zu", (ull)h->used,
            (ull)h->requested, (ull)h->live, (ull)used, (ull)req, p->nlive);
    REQUIRE(OPS->available(p->st) == p->usable - used, "available");
    REQUIRE(OPS->largest_free(p->st) == largest, "largest_free %llu, walk %llu",
            (ull)OPS->largest_free(p->st), (ull)largest);
    REQUIRE(OPS->free_ranges(p->st) == nfree, "free_ranges %llu, walk %llu",
            (ull)OPS->free_ranges(p->st), (ull)nfree);
    if (largest) {
        memcpy(p->probe, p->st, p->len);
        uint64_t off;
        REQUIRE(OPS->alloc(p->probe, largest, 1, &off) == MP_OK, "alloc(largest_free)");
        REQUIRE(OPS->check(p->probe, p->len, msg, sizeof msg) == MP_OK, "check: %s", msg);
    }
    C.steps++;
}

/* The offset alloc(size, align) must return, from the map alone; MP_NO_SPACE if none. */
static uint64_t predict_alloc(const pool_t *p, uint64_t size, uint64_t align)
{
    unsigned k0;
    if (!class_of(p, size, &k0)) return MP_NO_SPACE;
    uint64_t need = class_size(p, k0), best = MP_NO_SPACE, bsize = 0;
    /* align <= max_block: a block of a class whose size is >= align (all aligned);
     * beyond: any block at a multiple of align */
    if (align <= p->top && align > need) need = align;
    for (size_t k = 0; k < p->nsegs; k++) {
        const seg_t *g = &p->segs[k];
        if (g->alloc || g->size < need || g->off % align) continue;
        if (best == MP_NO_SPACE || g->size < bsize) {
            best = g->off;
            bsize = g->size;
        }
    }
    return best;
}

static void unchanged(const pool_t *p, const char *what)
{
    REQUIRE(memcmp(p->st, p->before, p->len) == 0, "%s failed but changed the state", what);
}

static void do_alloc(pool_t *p, uint64_t size, uint64_t align)
{
    snprintf(g_op, sizeof g_op, "alloc(%llu, %llu)", (ull)size, (ull)align);
    memcpy(p->before, p->st, p->len);
    uint64_t want = predict_alloc(p, size, align), off = 0;
    int rc = OPS->alloc(p->st, size, align, &off);
    if (want == MP_NO_SPACE) {
        REQUIRE(rc == MP_ENOSPACE, "alloc = %d (at %llu), expected ENOSPACE", rc, (ull)off);
        unchanged(p, "alloc");
        C.alloc_nospace++;
    } else {
        REQUIRE(rc == MP_OK && off == want, "alloc = %d at %llu, expected %llu", rc, (ull)off,
                (ull)want);
        p->live[p->nlive++] = (live_t){off, size};
        C.alloc_ok++;
    }
    verify(p);
}

static void do_free(pool_t *p, size_t k)
{
    live_t l = p->live[k];
    snprintf(g_op, sizeof g_op, "free(%llu)", (ull)l.off);
    REQUIRE(OPS->free(p->st, l.off) == MP_OK, "free");
    p->live[k] = p->live[--p->nlive];
    C.frees++;
    verify(p);
    snprintf(g_op, sizeof g_op, "double free(%llu)", (ull)l.off);
    memcpy(p->before, p->st, p->len);
    int live_again = 0;
    for (size_t j = 0; j < p->nlive; j++) live_again |= p->live[j].off == l.off;
    if (!live_again) {
        uint64_t sz;
        REQUIRE(OPS->free(p->st, l.off) == MP_ENOTALLOC, "double free accepted");
        REQUIRE(OPS->size_of(p->st, l.off, &sz) == MP_ENOTALLOC, "size_of after free");
        unchanged(p, "double free");
    }
}

static void do_bad_offset(pool_t *p)
{
    uint64_t off;
    switch (below(4)) {
    case 0:
        if (!p->nlive) return;
        off = p->live[below(p->nlive)].off + 1 + below(p->minb * 2);
        break;
    case 1: off = below(p->usable + p->minb * 2); break;
    case 2: off = UINT64_MAX - below(3) * p->minb; break;
    default: {
        const seg_t *g = &p->segs[below(p->nsegs)];
        if (g->alloc) return;
        off = g->off;
    }
    }
    for (size_t j = 0; j < p->nlive; j++)
        if (p->live[j].off == off) return;
    snprintf(g_op, sizeof g_op, "bad offset %llu", (ull)off);
    memcpy(p->before, p->st, p->len);
    expect_not_allocated(OPS, p->st, off);
    unchanged(p, "bad offset");
    C.bad++;
}

static void do_bad_args(pool_t *p)
{
    snprintf(g_op, sizeof g_op, "bad arguments");
    memcpy(p->before, p->st, p->len);
    uint64_t out;
    expect_invalid_args(OPS, p->st, p->nlive ? p->live[below(p->nlive)].off : MP_NO_SPACE);
    REQUIRE(OPS->alloc(p->st, p->top + 1, 1, &out) == MP_ENOSPACE, "alloc beyond the top");
    REQUIRE(OPS->alloc(p->st, UINT64_MAX, 1, &out) == MP_ENOSPACE, "alloc(UINT64_MAX)");
    char why[160];
    REQUIRE(OPS->why_nospace(p->st, p->top + 1, 1, why, sizeof why) == 1 && strstr(why, "max_block"),
            "why_nospace beyond the top");
    REQUIRE(OPS->why_nospace(p->st, p->top, 1, why, sizeof why) == 0, "why_nospace at the top");
    unsigned k;
    REQUIRE(mp_buddy_class_of(p->st, 0, &k) == MP_EINVAL, "class_of(0)");
    REQUIRE(mp_buddy_class_of(p->st, p->top + 1, &k) == MP_EINVAL, "class_of(top + 1)");
    if (p->nlive) {
        uint64_t off = p->live[below(p->nlive)].off;
        REQUIRE(OPS->realloc(p->st, off, p->top + 1, 1, &out) == MP_ENOSPACE, "realloc > top");
    }
    unchanged(p, "bad arguments");
}

static void do_realloc(pool_t *p, size_t k, uint64_t size, uint64_t align)
{
    live_t l = p->live[k];
    snprintf(g_op, sizeof g_op, "realloc(%llu, %llu, %llu) [asked %llu]", (ull)l.off, (ull)size,
             (ull)align, (ull)l.req);
    memcpy(p->before, p->st, p->len);
    unsigned ko, kn;
    REQUIRE(class_of(p, l.req, &ko), "shadow");
    int has = class_of(p, size, &kn);
    /* expectations */
    uint64_t want = MP_NO_SPACE;
    int kind = 0; /* 1 same, 2 shrink, 3 grow in place, 4 moved, 5 merged */
    if (!has) {
        kind = 0;
    } else if (kn == ko) {
        want = l.off, kind = 1;
    } else if (kn < ko) {
        want = l.off, kind = 2;
    } else {
        uint64_t old = class_size(p, ko), nsz = class_size(p, kn);
        int inplace = l.off % nsz == 0 && l.off + nsz <= p->usable;
        for (uint64_t o = l.off + old; inplace && o < l.off + nsz;) {
            long j = seg_index(p, o);
            if (j < 0 || p->segs[j].alloc) inplace = 0;
            else o += p->segs[j].size;
        }
        if (inplace) {
            want = l.off, kind = 3;
        } else if ((want = predict_alloc(p, size, align)) != MP_NO_SPACE) {
            kind = 4;
        } else {
            memcpy(p->probe, p->st, p->len);
            uint64_t o2;
            REQUIRE(OPS->free(p->probe, l.off) == MP_OK, "free on the probe");
            if (OPS->alloc(p->probe, size, align, &o2) == MP_OK) want = o2, kind = 5;
        }
    }
    uint64_t out = 0;
    int rc = OPS->realloc(p->st, l.off, size, align, &out);
    if (want == MP_NO_SPACE) {
        REQUIRE(rc == MP_ENOSPACE, "realloc = %d (to %llu), expected ENOSPACE", rc, (ull)out);
        unchanged(p, "realloc");
        C.re_nospace++;
    } else {
        REQUIRE(rc == MP_OK && out == want, "realloc = %d to %llu, expected %llu (case %d)", rc,
                (ull)out, (ull)want, kind);
        if (kind == 5) { /* the state equals free + alloc on the probe */
            REQUIRE(memcmp(p->st, p->probe, p->len) == 0, "merged move differs from free+alloc");
        }
        p->live[k] = (live_t){out, size};
        uint64_t *ctr[] = {NULL, &C.re_same, &C.re_shrink, &C.re_grow, &C.re_moved, &C.re_merged};
        (*ctr[kind])++;
        if (kind <= 3) REQUIRE(out == l.off, "moved");
    }
    verify(p);
}

static uint64_t rand_align(void)
{
    uint64_t r = below(100);
    if (r < 55) return 1;
    if (r < 97) return (uint64_t)1 << below(24);
    return (uint64_t)1 << (24 + below(40));
}

static uint64_t rand_size(const pool_t *p)
{
    uint64_t r = below(100);
    if (r < 40) return 1 + below(p->minb * 2);
    if (r < 80) return 1 + below(p->top / (1 + below(64)) + 1);
    if (r < 90) return class_size(p, (unsigned)below(p->K));
    if (r < 93) return p->top + 1 + below(4);
    return 1 + below(p->top);
}

static void random_run(uint64_t cap, uint64_t minb, uint64_t maxb, uint64_t fan, int steps)
{
    pool_t p;
    pool_open(&p, cap, minb, maxb, fan);
    snprintf(g_ctx, sizeof g_ctx, "buddy(cap %llu, min %llu, max %llu, fanout %llu)", (ull)cap,
             (ull)minb, (ull)p.maxb, (ull)fan);
    snprintf(g_op, sizeof g_op, "init");
    verify(&p);
    uint64_t bias = 35 + below(40); /* alloc percentage: fill and drain phases */
    for (int s = 0; s < steps; s++) {
        uint64_t r = below(100);
        if (s % 200 == 199) bias = 25 + below(60);
        if (r < bias) {
            if (p.nlive + 1 < p.livecap) do_alloc(&p, rand_size(&p), rand_align());
        } else if (r < bias + 30) {
            if (p.nlive) do_free(&p, below(p.nlive));
        } else if (r < bias + 42) {
            if (p.nlive) do_realloc(&p, below(p.nlive), rand_size(&p), rand_align());
        } else if (r < bias + 46) {
            do_bad_offset(&p);
        } else if (r < bias + 48) {
            do_bad_args(&p);
        } else if (r == 99 && below(4) == 0) {
            snprintf(g_op, sizeof g_op, "reset");
            OPS->reset(p.st);
            p.nlive = 0;
            C.resets++;
            verify(&p);
            REQUIRE(mp_buddy_class_size(p.st, 0) == minb, "class 0 after reset");
        }
    }
    pool_close(&p);
}

/* ---- known cases ------------------------------------------------------------------- */
static void known_cases(void)
{
    const uint64_t MiB = 1 << 20, GiB = 1ull << 30;
    pool_t p;
    uint64_t off;
    snprintf(g_ctx, sizeof g_ctx, "hcsshim: 4 GiB, 1 MiB, x4");
    pool_open(&p, 4 * GiB, MiB, 4 * GiB, 4);
    REQUIRE(p.K == 7, "seven classes, got %u", p.K);
    for (uint64_t i = 0; i < 4096; i++) {
        snprintf(g_op, sizeof g_op, "alloc #%llu of 1 MiB", (ull)i);
        REQUIRE(OPS->alloc(p.st, MiB, 1, &off) == MP_OK && off == i * MiB, "at %llu", (ull)off);
    }
    REQUIRE(OPS->alloc(p.st, 1, 1, &off) == MP_ENOSPACE, "full");
    OPS->reset(p.st);
    uint64_t a[3];
    for (int i = 0; i < 3; i++) REQUIRE(OPS->alloc(p.st, MiB, 1, &a[i]) == MP_OK, "alloc");
    for (int i = 0; i < 3; i++) REQUIRE(OPS->free(p.st, a[i]) == MP_OK, "free");
    REQUIRE(OPS->free_ranges(p.st) == 1 && OPS->largest_free(p.st) == 4 * GiB, "merged back");
    REQUIRE(OPS->free(p.st, a[0]) == MP_ENOTALLOC, "second free");
    REQUIRE(OPS->alloc(p.st, 4 * GiB + 1, 1, &off) == MP_ENOSPACE, "over the largest class");
    p.nlive = 0;
    verify(&p);
    pool_close(&p);

    snprintf(g_ctx, sizeof g_ctx, "unusable tail");
    pool_open(&p, 10000, 4096, 0, 2);
    REQUIRE(p.usable == 8192 && p.top == 8192, "usable %llu", (ull)p.usable);
    verify(&p);
    REQUIRE(p.nsegs == 1, "one block");
    pool_close(&p);

    snprintf(g_ctx, sizeof g_ctx, "greedy carving: 7 = 4 + 2 + 1");
    pool_open(&p, 7, 1, 0, 2);
    verify(&p);
    REQUIRE(p.nsegs == 3 && p.segs[0].size == 4 && p.segs[1].size == 2 && p.segs[2].size == 1,
            "carving");
    pool_close(&p);

    snprintf(g_ctx, sizeof g_ctx, "bad parameters");
    static const uint64_t bad[][4] = {
        {0, 1, 0, 2}, {4096, 0, 0, 2}, {4096, 3, 0, 2}, {4096, 1, 0, 1}, {4096, 1, 0, 3},
        {4096, 1, 0, 0}, {4095, 4096, 0, 2}, {4096, 1, 3, 2}, {4096, 1, 8192, 2},
        {4096, 64, 32, 2}, {4096, 1, 8, 4}, {(uint64_t)1 << 40, 1, 0, 2},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        REQUIRE(mp_buddy_state_size(bad[i][0], bad[i][1], bad[i][2], bad[i][3]) == 0,
                "bad parameter set %zu accepted", i);
        unsigned char junk[64];
        REQUIRE(mp_buddy_init(junk, bad[i][0], bad[i][1], bad[i][2], bad[i][3]) == MP_EINVAL,
                "init of bad set %zu", i);
    }
}

/* ---- corruption ---------------------------------------------------------------------- */
/* one random op on an accepted state: alloc, or free / realloc of an offset that
 * size_of() says is live */
static void accepted_op(const attack_t *a)
{
    const pool_t *model = a->ctx;
    uint64_t off = 0, sz = 0, r = below(3);
    if (r == 0) OPS->alloc(a->buf, rand_size(model), rand_align(), &off);
    else {
        off = below(model->usable);
        if (OPS->size_of(a->buf, off, &sz) == MP_OK) {
            if (r == 1) OPS->free(a->buf, off);
            else OPS->realloc(a->buf, off, rand_size(model), rand_align(), &off);
        }
    }
}

/* every byte but peak_used, high_water and param[0] (the capacity argument: flips of
 * its low bits may round alike) */
static uint64_t must_byte(const attack_t *a)
{
    for (;;) {
        uint64_t byte = below(a->len);
        if (!(byte >= offsetof(mp_head_t, peak_used) &&
              byte < offsetof(mp_head_t, high_water) + 8) &&
            !(byte >= offsetof(mp_head_t, param) && byte < offsetof(mp_head_t, param) + 8))
            return byte;
    }
}

static void corruption(uint64_t cap, uint64_t minb, uint64_t maxb, uint64_t fan, int flips,
                       int mutations, uint64_t *caught, uint64_t *accepted)
{
    pool_t p;
    pool_open(&p, cap, minb, maxb, fan);
    snprintf(g_ctx, sizeof g_ctx, "corruption of buddy(%llu, %llu, %llu, %llu)", (ull)cap,
             (ull)minb, (ull)maxb, (ull)fan);
    for (int i = 0; i < 60; i++) {
        uint64_t off;
        if (OPS->alloc(p.st, rand_size(&p), rand_align(), &off) == MP_OK && below(3) == 0)
            OPS->free(p.st, off);
    }
    char msg[256];
    REQUIRE(OPS->check(p.st, p.len, msg, sizeof msg) == MP_OK, "%s", msg);
    attack_t a = {OPS, p.st, p.len, xmalloc(p.len), must_byte, accepted_op, &p};
    attack_truncated(&a, 64);
    attack_flips(&a, flips);
    *caught += (uint64_t)flips;
    *accepted += attack_mutations(&a, mutations, 20);
    REQUIRE(attack_garbage(&a, 50, sizeof(mp_head_t), 20) == 0, "random bytes accepted");
    free(a.buf);
    pool_close(&p);
}

int main(int argc, char **argv)
{
    uint64_t seed;
    double scale = stress_args(argc, argv, "stress_buddy", 20240612, &seed);
    clock_t t0 = clock();
    known_cases();
    static const uint64_t configs[][4] = {
        /* capacity, min_block, max_block (0 = default), fanout */
        {1 << 12, 1, 0, 2},      {1000, 1, 0, 2},        {5 * 64 + 3, 16, 64, 2},
        {1 << 14, 8, 0, 4},      {3 << 12, 64, 4096, 4}, {1 << 13, 1, 0, 8},
        {12345, 2, 0, 16},       {1 << 14, 1, 0, 128},   {1 << 13, 1, 1 << 8, 256},
        {1ull << 32, 1 << 20, 1ull << 32, 4}, {(1ull << 32) + (7 << 20), 1 << 20, 0, 4},
        {1 << 20, 4096, 4096, 2}, {1, 1, 0, 2},          {48, 16, 0, 2},
        {900, 1, 0, 128},        {5000, 1, 0, 256},
    };
    size_t n = sizeof configs / sizeof configs[0];
    int steps = (int)(2500 * scale);
    for (size_t i = 0; i < n; i++)
        for (int rep = 0; rep < 3; rep++)
            random_run(configs[i][0], configs[i][1], configs[i][2], configs[i][3], steps);
    printf("buddy    coverage: %llu verified steps; alloc %llu ok, %llu ENOSPACE; %llu frees, %llu "
           "bad offsets, %llu resets; realloc %llu same class, %llu shrink, %llu grown in place, "
           "%llu moved, %llu moved into its merged block, %llu ENOSPACE\n",
           (ull)C.steps, (ull)C.alloc_ok, (ull)C.alloc_nospace, (ull)C.frees, (ull)C.bad,
           (ull)C.resets, (ull)C.re_same, (ull)C.re_shrink, (ull)C.re_grow, (ull)C.re_moved,
           (ull)C.re_merged, (ull)C.re_nospace);
    REQUIRE(C.re_merged > 0 && C.re_grow > 0 && C.re_shrink > 0 && C.re_moved > 0 &&
                C.re_nospace > 0 && C.alloc_nospace > 0,
            "some realloc path was never taken");
    uint64_t caught = 0, accepted = 0;
    for (size_t i = 0; i < n; i++)
        if (configs[i][0] < (1ull << 30))
            corruption(configs[i][0], configs[i][1], configs[i][2], configs[i][3],
                       (int)(1500 * scale), (int)(600 * scale), &caught, &accepted);
    printf("buddy    corruption: %llu must-catch bit flips caught, %llu mutated states accepted "
           "and exercised\n",
           (ull)caught, (ull)accepted);
    printf("all passed in %.2f s (seed %llu)\n", (double)(clock() - t0) / CLOCKS_PER_SEC,
           (ull)seed);
    return 0;
}
