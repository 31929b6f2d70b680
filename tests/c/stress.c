/*
 * stress.c -- standalone randomized stress test of the exact range strategies
 * (TLSF, BestFit) through their mp_ops_t tables.  No Python.
 *
 *   CORE=src/mempool/_core
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -I $CORE $CORE/[every .c] \
 *       tests/c/stress.c -o /tmp/stress && /tmp/stress [seed [scale]]
 *   (CI also builds it with ASan + UBSan and -DMP_DEBUG=1: check() after every call.)
 *
 * For each strategy:
 *   - seeded random sequences of alloc / free / realloc (grow, shrink) / reset /
 *     bad frees / bad arguments, a third of the allocations and their frees by handle
 *     (alloc_handle / free_handle: placed as alloc places; the offset calls refuse such
 *     a range; bad (node, offset) pairs refused; realloc by node is the replay loops',
 *     checked by stress_replay.c), against a shadow list of live (offset, size) ranges;
 *     after every step: check() passes, live ranges are inside the span, aligned and
 *     disjoint, size_of is exact, used / live / largest_free / available /
 *     free_ranges agree with the shadow and with walk(), alloc(largest_free)
 *     succeeds (on a copy), and a failed alloc/realloc left the state byte for byte
 *     as it was.  Failures are justified: ENOSPACE only when no free range (nor, for
 *     realloc, the merged neighbourhood) holds the aligned request, ENONODES only when
 *     fewer than 2 nodes are spare.  BestFit's choice is checked to be the exact best
 *     fit (smallest fitting free range, lowest offset among equals).
 *   - the offset-allocator failures (pool 513: alloc 513; pool 324: 255 then 67;
 *     every split of small pools), double / interior frees, node exhaustion;
 *   - corruption: truncated lengths, random bytes, single-bit flips (those in
 *     fields check() must cover are required to be detected), random multi-byte and
 *     index-shaped mutations: check() must never crash, and when it accepts a
 *     mutated state, that state must work (random ops, verified, under ASan).
 *
 * Exit status 0 when everything passes; otherwise the failing case is printed and
 * the status is 1.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mempool.h"
#include "ranges.h" /* white box: node layout, spare counts */
#include "ranges_bins.h"
#include "stress_common.h"

/* ---- infrastructure ------------------------------------------------------------ */

typedef struct strat {
    const char *name;
    const mp_ops_t *ops;
    uint64_t (*state_size)(uint64_t, uint64_t);
    int (*init)(void *, uint64_t, uint64_t);
    int exact_best;     /* verify the exact best-fit choice */
    uint64_t node_size; /* white box: bytes per node (mp_rnode_t, then the strategy's) */
} strat_t;

/* BestFit's nodes: mp_rnode_t, then the subtree augment (lane j: use_j for alignment
 * 2^BF_LEVEL[j], capped at BF_CAP; bestfit.c), the node's own lanes, an unused word:
 * one cache line. */
#define BF_NODE_SIZE 64
#define BF_AUG_END (sizeof(mp_rnode_t) + 16)
#define BF_CAP 0x7fffu
static const unsigned BF_LEVEL[] = {4, 6, 8, 12};

static const strat_t STRATS[] = {
    {"tlsf", &mp_tlsf_ops, mp_tlsf_state_size, mp_tlsf_init, 0, sizeof(mp_rnode_t)},
    /* as the binding makes it: compact below MP_TLSF_COMPACT_CAP (tlsf.c) */
    {"tlsf-c", &mp_tlsf_ops, mp_tlsf_sized_state_size, mp_tlsf_sized_init, 0, sizeof(mp_rnode_t)},
    {"bestfit", &mp_bestfit_ops, mp_bestfit_state_size, mp_bestfit_init, 1, BF_NODE_SIZE},
};

typedef struct seg {
    uint64_t off, size;
    int alloc;
} seg_t;
typedef struct live {
    uint64_t off, size, align;
    int by_handle;   /* allocated by alloc_handle: freed by free_handle(node, off) */
    uint64_t node;
} live_t;

typedef struct pool {
    const strat_t *s;
    const mp_ops_t *ops;
    uint64_t cap, maxb, len;
    unsigned char *st, *before, *probe;
    live_t *live;
    size_t nlive, livecap;
    seg_t *segs; /* walk() of the current state (kept current by verify) */
    size_t nsegs, segcap;
    int seg_overflow;
    uint64_t steps;
} pool_t;

/* coverage counters, printed per strategy */
static struct {
    uint64_t alloc_ok, by_handle, bad_handle, alloc_nospace, alloc_nonodes, free_ok, bad_offset,
        realloc_same,
        realloc_shrink, realloc_grow_in_place, realloc_moved, realloc_moved_down,
        realloc_nospace, realloc_nonodes, resets, max_free_ranges, steps;
} C;

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }
static uint64_t pad_of(uint64_t off, uint64_t a) { return (0 - off) & (a - 1); }
static int seg_fits(const seg_t *g, uint64_t size, uint64_t align)
{
    uint64_t pad = pad_of(g->off, align);
    return g->size >= pad && g->size - pad >= size;
}

static uint32_t spare_in(const void *st)
{
    const mp_rset_t *rs = rs_cset(st);
    return rs->max_blocks - rs->top + rs->nspare;
}
static uint32_t spare_nodes(const pool_t *p) { return spare_in(p->st); }
static uint32_t carve_cost(const seg_t *g, uint64_t size, uint64_t align)
{
    uint64_t at = align_up(g->off, align);
    return (at > g->off) + (at + size < g->off + g->size);
}

/* ---- pool lifecycle ----------------------------------------------------------- */
static void pool_alloc_bufs(pool_t *p)
{
    p->st = xmalloc(p->len);
    p->before = xmalloc(p->len);
    p->probe = xmalloc(p->len);
    p->livecap = p->maxb + 1;
    p->live = xmalloc(p->livecap * sizeof(live_t));
    p->segcap = p->maxb + 2;
    p->segs = xmalloc(p->segcap * sizeof(seg_t));
    p->nlive = p->nsegs = 0;
}

static void verify(pool_t *p);

static void pool_open(pool_t *p, const strat_t *s, uint64_t cap, uint64_t maxb)
{
    memset(p, 0, sizeof *p);
    p->s = s;
    p->ops = s->ops;
    p->cap = cap;
    p->maxb = maxb;
    p->len = s->state_size(cap, maxb);
    REQUIRE(p->len > 0, "%s_state_size(%llu, %llu) = 0", s->name, (ull)cap, (ull)maxb);
    pool_alloc_bufs(p);
    /* junk in the buffer: init must not depend on zeroed memory */
    memset(p->st, 0xa5, p->len);
    REQUIRE(s->init(p->st, cap, maxb) == MP_OK, "init failed");
    const mp_head_t *h = (const mp_head_t *)p->st;
    REQUIRE(h->state_size == p->len, "state_size in head %llu != %llu", (ull)h->state_size,
            (ull)p->len);
    char msg[256];
    REQUIRE(mp_head_validate(p->st, p->len, p->ops, msg, sizeof msg) == MP_OK,
            "head_validate: %s", msg);
    verify(p);
}

static void pool_close(pool_t *p)
{
    free(p->st);
    free(p->before);
    free(p->probe);
    free(p->live);
    free(p->segs);
    memset(p, 0, sizeof *p);
}

/* ---- verification ------------------------------------------------------------- */
static int walk_cb(void *ctx, uint64_t off, uint64_t size, int allocated)
{
    pool_t *p = ctx;
    if (p->nsegs >= p->segcap) {
        p->seg_overflow = 1;
        return 1;
    }
    p->segs[p->nsegs++] = (seg_t){off, size, allocated};
    return 0;
}

static void collect_segs(pool_t *p)
{
    p->nsegs = 0;
    p->seg_overflow = 0;
    p->ops->walk(p->st, walk_cb, p);
    REQUIRE(!p->seg_overflow, "walk() visits more than max_blocks + 1 ranges");
}

static int live_cmp(const void *a, const void *b)
{
    const live_t *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static void verify(pool_t *p)
{
    char msg[256] = "";
    const mp_ops_t *ops = p->ops;
    int rc = ops->check(p->st, p->len, msg, sizeof msg);
    REQUIRE(rc == MP_OK, "check() = %d: %s", rc, msg);
    const mp_head_t *h = (const mp_head_t *)p->st;
    REQUIRE(h->capacity == p->cap, "capacity changed");
    collect_segs(p);
    /* the memory map covers the span */
    uint64_t expect = 0, nfree = 0, largest = 0, nalloc = 0;
    for (size_t k = 0; k < p->nsegs; k++) {
        const seg_t *g = &p->segs[k];
        REQUIRE(g->off == expect, "segment %zu at %llu, expected %llu", k, (ull)g->off,
                (ull)expect);
        REQUIRE(g->size >= 1 && g->size <= p->cap - g->off, "segment %zu bad size", k);
        if (!g->alloc) {
            REQUIRE(k == 0 || p->segs[k - 1].alloc, "free segments %zu and %zu not merged",
                    k - 1, k);
            nfree++;
            if (g->size > largest) largest = g->size;
        } else {
            nalloc++;
        }
        expect = g->off + g->size;
    }
    REQUIRE(expect == p->cap, "segments end at %llu, capacity %llu", (ull)expect, (ull)p->cap);
    /* the shadow: inside, aligned, disjoint, exact sizes */
    qsort(p->live, p->nlive, sizeof(live_t), live_cmp);
    uint64_t used = 0;
    for (size_t k = 0; k < p->nlive; k++) {
        const live_t *l = &p->live[k];
        REQUIRE(l->size >= 1 && l->off < p->cap && l->size <= p->cap - l->off,
                "live range [%llu, +%llu) outside capacity %llu", (ull)l->off, (ull)l->size,
                (ull)p->cap);
        REQUIRE(l->off % l->align == 0, "live range at %llu not aligned to %llu", (ull)l->off,
                (ull)l->align);
        if (k) {
            const live_t *m = &p->live[k - 1];
            REQUIRE(m->off + m->size <= l->off, "live ranges [%llu, +%llu) and [%llu, +%llu) "
                    "overlap", (ull)m->off, (ull)m->size, (ull)l->off, (ull)l->size);
        }
        uint64_t sz = 0;
        rc = ops->size_of(p->st, l->off, &sz);
        if (l->by_handle) /* not filed by offset */
            REQUIRE(rc == MP_ENOTALLOC, "size_of(%llu), allocated by handle, = %d",
                    (ull)l->off, rc);
        else
            REQUIRE(rc == MP_OK && sz == l->size, "size_of(%llu) = %d, %llu; expected %llu",
                    (ull)l->off, rc, (ull)sz, (ull)l->size);
        used += l->size;
    }
    REQUIRE(h->used == used, "head used %llu, live ranges hold %llu", (ull)h->used, (ull)used);
    REQUIRE(h->live == p->nlive, "head live %llu, shadow holds %zu", (ull)h->live, p->nlive);
    /* the map's allocated segments are exactly the shadow */
    REQUIRE(nalloc == p->nlive, "walk shows %llu allocated ranges, shadow %zu", (ull)nalloc,
            p->nlive);
    for (size_t k = 0, j = 0; k < p->nsegs; k++) {
        if (!p->segs[k].alloc) continue;
        REQUIRE(p->segs[k].off == p->live[j].off && p->segs[k].size == p->live[j].size,
                "walk allocated [%llu, +%llu), shadow [%llu, +%llu)", (ull)p->segs[k].off,
                (ull)p->segs[k].size, (ull)p->live[j].off, (ull)p->live[j].size);
        j++;
    }
    REQUIRE(ops->largest_free(p->st) == largest, "largest_free %llu, walk says %llu",
            (ull)ops->largest_free(p->st), (ull)largest);
    REQUIRE(ops->available(p->st) == p->cap - used, "available %llu, expected %llu",
            (ull)ops->available(p->st), (ull)(p->cap - used));
    REQUIRE(ops->free_ranges(p->st) == nfree, "free_ranges %llu, walk says %llu",
            (ull)ops->free_ranges(p->st), (ull)nfree);
    REQUIRE(h->peak_used >= h->used, "peak_used below used");
    if (nfree > C.max_free_ranges) C.max_free_ranges = nfree;
    C.steps++;
    /* alloc(largest_free) always succeeds (on a copy) */
    if (largest) {
        memcpy(p->probe, p->st, p->len);
        uint64_t off = MP_NO_SPACE;
        rc = ops->alloc(p->probe, largest, 1, &off);
        REQUIRE(rc == MP_OK, "alloc(largest_free = %llu) = %d", (ull)largest, rc);
        size_t k;
        for (k = 0; k < p->nsegs; k++)
            if (!p->segs[k].alloc && p->segs[k].size == largest) break;
        if (p->s->exact_best)
            REQUIRE(off == p->segs[k].off, "alloc(largest) at %llu, lowest largest at %llu",
                    (ull)off, (ull)p->segs[k].off);
        rc = ops->check(p->probe, p->len, msg, sizeof msg);
        REQUIRE(rc == MP_OK, "check() after alloc(largest_free): %s", msg);
    }
    p->steps++;
}

/* Index of the free segment an exact best fit takes, or -1 when none fits. */
static long best_fit_seg(const pool_t *p, uint64_t size, uint64_t align)
{
    long best = -1;
    for (size_t k = 0; k < p->nsegs; k++) {
        const seg_t *g = &p->segs[k];
        if (g->alloc || !seg_fits(g, size, align)) continue;
        if (best < 0 || g->size < p->segs[best].size) best = (long)k;
    }
    return best;
}

static long seg_at(const pool_t *p, uint64_t off) /* segment containing off */
{
    size_t lo = 0, hi = p->nsegs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->segs[mid].off + p->segs[mid].size <= off) lo = mid + 1;
        else hi = mid;
    }
    return lo < p->nsegs && p->segs[lo].off <= off ? (long)lo : -1;
}

static void require_unchanged(const pool_t *p, const char *what, int rc)
{
    if (memcmp(p->st, p->before, p->len) != 0) {
        size_t k = 0;
        while (p->st[k] == p->before[k]) k++;
        FAIL("%s failed (%d) but changed the state (first difference at byte %zu)", what, rc,
             k);
    }
}

/* ---- operations --------------------------------------------------------------- */
static int do_alloc(pool_t *p, uint64_t size, uint64_t align)
{
    int by_handle = below(3) == 0; /* the handle form places as alloc does */
    snprintf(g_op, sizeof g_op, "%s(%llu, %llu)", by_handle ? "alloc_handle" : "alloc",
             (ull)size, (ull)align);
    memcpy(p->before, p->st, p->len);
    long want = best_fit_seg(p, size, align);
    uint64_t off = MP_NO_SPACE, node = 0;
    int rc = by_handle ? p->ops->alloc_handle(p->st, size, align, &off, &node)
                       : p->ops->alloc(p->st, size, align, &off);
    if (rc == MP_OK) {
        REQUIRE(want >= 0, "alloc succeeded at %llu but no free range fits", (ull)off);
        REQUIRE(off % align == 0, "alloc returned %llu, not aligned to %llu", (ull)off,
                (ull)align);
        long k = seg_at(p, off);
        REQUIRE(k >= 0 && !p->segs[k].alloc && off == align_up(p->segs[k].off, align) &&
                    off - p->segs[k].off + size <= p->segs[k].size,
                "alloc placed [%llu, +%llu) outside the aligned start of a free range",
                (ull)off, (ull)size);
        if (p->s->exact_best)
            REQUIRE(k == want, "best fit took the range at %llu (size %llu), expected the one "
                    "at %llu (size %llu)", (ull)p->segs[k].off, (ull)p->segs[k].size,
                    (ull)p->segs[want].off, (ull)p->segs[want].size);
        REQUIRE(p->nlive < p->livecap, "more live ranges than nodes");
        p->live[p->nlive++] = (live_t){off, size, align, by_handle, node};
        C.alloc_ok++;
        C.by_handle += (uint64_t)by_handle;
    } else {
        if (rc == MP_ENOSPACE) C.alloc_nospace++;
        if (rc == MP_ENONODES) C.alloc_nonodes++;
        require_unchanged(p, "alloc", rc);
        if (rc == MP_ENOSPACE) {
            REQUIRE(want < 0, "alloc: ENOSPACE but the free range at %llu (size %llu) fits",
                    (ull)p->segs[want].off, (ull)p->segs[want].size);
        } else if (rc == MP_ENONODES) {
            uint32_t spare = spare_nodes(p);
            REQUIRE(want >= 0 && spare < 2, "alloc: ENONODES with %u spare nodes", spare);
            if (p->s->exact_best) {
                uint32_t cost = carve_cost(&p->segs[want], size, align);
                REQUIRE(cost > spare, "alloc: ENONODES though the best fit needs %u of %u",
                        cost, spare);
            }
        } else {
            FAIL("alloc returned %d", rc);
        }
    }
    verify(p);
    return rc == MP_OK;
}

static void do_free(pool_t *p, size_t k, int then_double)
{
    live_t l = p->live[k];
    int rc;
    if (l.by_handle) {
        snprintf(g_op, sizeof g_op, "free_handle(%llu, %llu) [size %llu]", (ull)l.node,
                 (ull)l.off, (ull)l.size);
        rc = p->ops->free_handle(p->st, l.node, l.off);
        REQUIRE(rc == MP_OK, "free_handle(%llu, %llu) = %d", (ull)l.node, (ull)l.off, rc);
    } else {
        snprintf(g_op, sizeof g_op, "free(%llu) [size %llu]", (ull)l.off, (ull)l.size);
        rc = p->ops->free(p->st, l.off);
        REQUIRE(rc == MP_OK, "free(%llu) = %d", (ull)l.off, rc);
    }
    p->live[k] = p->live[--p->nlive];
    C.free_ok++;
    verify(p);
    if (then_double && l.by_handle) {
        /* refused unless that node went to a range at that offset by handle since */
        for (size_t j = 0; j < p->nlive; j++)
            if (p->live[j].by_handle && p->live[j].node == l.node && p->live[j].off == l.off)
                return;
        snprintf(g_op, sizeof g_op, "double free_handle(%llu, %llu)", (ull)l.node, (ull)l.off);
        memcpy(p->before, p->st, p->len);
        rc = p->ops->free_handle(p->st, l.node, l.off);
        REQUIRE(rc == MP_ENOTALLOC, "double free_handle(%llu, %llu) = %d", (ull)l.node,
                (ull)l.off, rc);
        require_unchanged(p, "double free_handle", rc);
        verify(p);
    } else if (then_double) {
        snprintf(g_op, sizeof g_op, "double free(%llu)", (ull)l.off);
        memcpy(p->before, p->st, p->len);
        rc = p->ops->free(p->st, l.off);
        REQUIRE(rc == MP_ENOTALLOC, "double free(%llu) = %d", (ull)l.off, rc);
        require_unchanged(p, "double free", rc);
        uint64_t sz;
        rc = p->ops->size_of(p->st, l.off, &sz);
        REQUIRE(rc == MP_ENOTALLOC, "size_of(freed %llu) = %d", (ull)l.off, rc);
        verify(p);
    }
}

/* A live range starts at off (by_offset: one the offset calls see, not one allocated
 * by handle). */
static int live_at(const pool_t *p, uint64_t off, int by_offset)
{
    for (size_t k = 0; k < p->nlive; k++)
        if (p->live[k].off == off && !(by_offset && p->live[k].by_handle)) return 1;
    return 0;
}
static int is_live_start(const pool_t *p, uint64_t off) { return live_at(p, off, 1); }

/* free_handle of a (node, offset) that is no live range allocated by handle: a live
 * one's node at another offset, an offset range's node, a free or spare node, a node
 * beyond top. */
static void do_bad_handle(pool_t *p)
{
    uint64_t node, off, r = below(5);
    uint32_t top = rs_cset(p->st)->top;
    if (r == 0 && p->nlive) {
        const live_t *l = &p->live[below(p->nlive)];
        node = l->by_handle ? l->node : below(top ? top : 1);
        off = l->by_handle ? l->off + 1 + below(8) : l->off;
    } else if (r == 1) {
        node = (uint64_t)top + below(8);
        off = below(p->cap);
    } else if (r == 2) {
        node = UINT64_MAX - below(3);
        off = UINT64_MAX - below(3);
    } else {
        node = below(top ? top : 1);
        off = p->nsegs ? p->segs[below(p->nsegs)].off : 0;
    }
    for (size_t k = 0; k < p->nlive; k++)
        if (p->live[k].by_handle && p->live[k].node == node && p->live[k].off == off) return;
    snprintf(g_op, sizeof g_op, "bad handle (%llu, %llu)", (ull)node, (ull)off);
    memcpy(p->before, p->st, p->len);
    int rc = p->ops->free_handle(p->st, node, off);
    REQUIRE(rc == MP_ENOTALLOC, "free_handle(bad %llu, %llu) = %d", (ull)node, (ull)off, rc);
    require_unchanged(p, "bad handle", rc);
    C.bad_handle++;
    verify(p);
}

/* free / size_of / realloc of an offset that is not the start of a live range */
static void do_bad_offset(pool_t *p)
{
    uint64_t off;
    uint64_t r = below(4);
    if (r == 0 && p->nlive) {
        const live_t *l = &p->live[below(p->nlive)];
        if (l->size < 2) return;
        off = l->off + 1 + below(l->size - 1); /* interior */
    } else if (r == 1) {
        off = below(p->cap + 16);
    } else if (r == 2) {
        off = UINT64_MAX - below(3);
    } else {
        long k = p->nsegs ? (long)below(p->nsegs) : -1; /* start of a free range */
        if (k < 0 || p->segs[k].alloc) return;
        off = p->segs[k].off;
    }
    if (is_live_start(p, off)) return;
    snprintf(g_op, sizeof g_op, "bad offset %llu", (ull)off);
    memcpy(p->before, p->st, p->len);
    expect_not_allocated(p->ops, p->st, off);
    require_unchanged(p, "bad offset", MP_ENOTALLOC);
    C.bad_offset++;
    verify(p);
}

static void do_bad_args(pool_t *p)
{
    snprintf(g_op, sizeof g_op, "bad arguments");
    memcpy(p->before, p->st, p->len);
    expect_invalid_args(p->ops, p->st, p->nlive ? p->live[below(p->nlive)].off : MP_NO_SPACE);
    require_unchanged(p, "bad arguments", MP_EINVAL);
    verify(p);
}

static void do_realloc(pool_t *p, size_t k, uint64_t size, uint64_t align)
{
    live_t l = p->live[k];
    snprintf(g_op, sizeof g_op, "realloc(%llu, %llu, %llu) [size %llu]", (ull)l.off, (ull)size,
             (ull)align, (ull)l.size);
    memcpy(p->before, p->st, p->len);
    if (l.by_handle) { /* the offset calls do not see a range allocated by handle */
        uint64_t out;
        int rc = p->ops->realloc(p->st, l.off, size, align, &out);
        REQUIRE(rc == MP_ENOTALLOC, "realloc of a range allocated by handle = %d", rc);
        require_unchanged(p, "realloc of a range allocated by handle", rc);
        return;
    }
    long j = seg_at(p, l.off);
    REQUIRE(j >= 0 && p->segs[j].alloc && p->segs[j].off == l.off, "shadow range not in walk");
    const seg_t *pv = j > 0 && !p->segs[j - 1].alloc ? &p->segs[j - 1] : NULL;
    const seg_t *nx = (size_t)j + 1 < p->nsegs && !p->segs[j + 1].alloc ? &p->segs[j + 1] : NULL;
    uint64_t lo = pv ? pv->off : l.off;
    uint64_t hi = nx ? nx->off + nx->size : l.off + l.size;
    int grow_in_place = size > l.size && nx && size - l.size <= nx->size;
    uint64_t out = MP_NO_SPACE;
    int rc = p->ops->realloc(p->st, l.off, size, align, &out);
    if (rc == MP_OK) {
        if (size <= l.size || grow_in_place)
            REQUIRE(out == l.off, "realloc moved to %llu though it could stay in place",
                    (ull)out);
        if (out != l.off) {
            REQUIRE(out % align == 0, "realloc moved to %llu, not aligned to %llu", (ull)out,
                    (ull)align);
            long g = seg_at(p, out);
            int elsewhere = g >= 0 && !p->segs[g].alloc && out == align_up(p->segs[g].off, align)
                            && out - p->segs[g].off + size <= p->segs[g].size;
            int down = out == align_up(lo, align) && out >= lo && size <= hi - out;
            REQUIRE(elsewhere || down, "realloc moved to [%llu, +%llu), which was not free",
                    (ull)out, (ull)size);
            long b = best_fit_seg(p, size, align);
            if (p->s->exact_best && b >= 0 && g != b) /* only when the best fit lacked nodes */
                REQUIRE(down && carve_cost(&p->segs[b], size, align) > spare_in(p->before),
                        "realloc moved to %llu, not to the best fit at %llu", (ull)out,
                        (ull)p->segs[b].off);
            p->live[k].align = align;
            if (out == align_up(lo, align) && pv && out < l.off) C.realloc_moved_down++;
            else C.realloc_moved++;
        } else if (size == l.size) {
            C.realloc_same++;
        } else if (size < l.size) {
            C.realloc_shrink++;
        } else {
            C.realloc_grow_in_place++;
        }
        p->live[k].off = out;
        p->live[k].size = size;
    } else {
        require_unchanged(p, "realloc", rc);
        if (rc == MP_ENOSPACE) C.realloc_nospace++;
        if (rc == MP_ENONODES) C.realloc_nonodes++;
        if (rc == MP_ENOSPACE) {
            REQUIRE(size > l.size && !grow_in_place, "realloc: ENOSPACE for an in-place case");
            long w = best_fit_seg(p, size, align);
            REQUIRE(w < 0, "realloc: ENOSPACE but the free range at %llu fits",
                    (ull)p->segs[w].off);
            uint64_t a = align_up(lo, align);
            REQUIRE(!pv || a < lo || a > hi || hi - a < size,
                    "realloc: ENOSPACE but [%llu, %llu) around the range holds it", (ull)lo,
                    (ull)hi);
        } else if (rc == MP_ENONODES) {
            REQUIRE(spare_nodes(p) < 2, "realloc: ENONODES with %u spare nodes", spare_nodes(p));
        } else {
            FAIL("realloc returned %d", rc);
        }
    }
    verify(p);
}

static void do_reset(pool_t *p)
{
    snprintf(g_op, sizeof g_op, "reset");
    p->ops->reset(p->st);
    p->nlive = 0;
    C.resets++;
    verify(p);
    REQUIRE(p->nsegs == 1 && !p->segs[0].alloc, "reset left %zu segments", p->nsegs);
}

static uint64_t rand_align(void)
{
    uint64_t r = below(100);
    if (r < 50) return 1;
    if (r < 98) return (uint64_t)1 << below(13); /* 1 .. 4096 */
    return (uint64_t)1 << (13 + below(51));      /* huge: overflow paths */
}

static uint64_t rand_size(const pool_t *p)
{
    uint64_t q = p->cap / 4 ? p->cap / 4 : 1;
    uint64_t r = below(100);
    if (r < 30) return 1 + below(16);
    if (r < 36) return 1 + below(256);
    if (r < 38) return p->cap == UINT64_MAX ? p->cap : p->cap + below(2);
    if (r < 39) return UINT64_MAX - below(4096);
    if (r < 42) {
        uint64_t l = p->ops->largest_free(p->st);
        return l ? l : 1;
    }
    return 1 + below(q);
}

static void random_step(pool_t *p)
{
    uint64_t r = below(1000);
    if (p->nlive == 0 || r < 420) {
        do_alloc(p, rand_size(p), rand_align());
    } else if (r < 700) {
        do_free(p, below(p->nlive), below(8) == 0);
    } else if (r < 880) {
        size_t k = below(p->nlive);
        if (p->live[k].by_handle && below(2)) { /* (realloc by handle: stress_replay's hook) */
            do_bad_handle(p);
            return;
        }
        uint64_t old = p->live[k].size, size;
        uint64_t m = below(10);
        if (m < 4 && old > 1) size = 1 + below(old - 1);         /* shrink */
        else if (m < 5) size = old;                              /* same */
        else if (m < 6) size = old + 1 + below(16);              /* small grow */
        else if (m < 7) size = p->cap == UINT64_MAX ? p->cap : p->cap + 1; /* impossible */
        else size = old + 1 + below(p->cap / 4 ? p->cap / 4 : 1); /* grow */
        if (size < old && m >= 4) size = old;                    /* overflowed: keep */
        do_realloc(p, k, size, rand_align());
    } else if (r < 950) {
        do_bad_offset(p);
    } else if (r < 960) {
        do_bad_args(p);
    } else if (r < 964) {
        do_reset(p);
    } else {
        /* fill: allocate until something fails */
        for (int n = 0; n < 64; n++)
            if (!do_alloc(p, below(3) ? 1 + below(64) : rand_size(p), rand_align())) break;
    }
}

/* ---- scenarios ---------------------------------------------------------------------- */
static const uint64_t CAPS[] = {1,    2,      3,       7,        64,         100,
                                513,  4096,   65537,   1 << 20,  1ull << 24, 1ull << 32,
                                3000, 123457, 1ull << 40, UINT64_MAX / 2};
static const uint64_t MAXBS[] = {1, 2, 3, 4, 8, 16, 64, 256, 1024, 4096};

static void random_runs(const strat_t *s, int runs, int steps)
{
    for (int run = 0; run < runs; run++) {
        uint64_t seed = g_rng;
        uint64_t cap = CAPS[below(sizeof CAPS / sizeof CAPS[0])];
        if (below(4) == 0) cap = 1 + below(1u << 20);
        uint64_t maxb = MAXBS[below(sizeof MAXBS / sizeof MAXBS[0])];
        if (below(4) == 0) maxb = mp_default_max_blocks(cap) > 4096 ? 4096
                                                                       : mp_default_max_blocks(cap);
        snprintf(g_ctx, sizeof g_ctx, "%s random run %d: capacity %llu, max_blocks %llu, "
                 "rng state %llu", s->name, run, (ull)cap, (ull)maxb, (ull)seed);
        pool_t p;
        pool_open(&p, s, cap, maxb);
        for (int i = 0; i < steps; i++) random_step(&p);
        pool_close(&p);
    }
}

static void known_cases(const strat_t *s)
{
    pool_t p;
    uint64_t out;
    /* offset-allocator fails these */
    snprintf(g_ctx, sizeof g_ctx, "%s: pool of 513, alloc(513)", s->name);
    pool_open(&p, s, 513, mp_default_max_blocks(513));
    REQUIRE(do_alloc(&p, 513, 1) && p.live[0].off == 0, "alloc(513) in a 513-byte pool failed");
    pool_close(&p);
    snprintf(g_ctx, sizeof g_ctx, "%s: pool of 324, alloc 255 then 67", s->name);
    pool_open(&p, s, 324, mp_default_max_blocks(324));
    REQUIRE(do_alloc(&p, 255, 1), "alloc(255) failed");
    REQUIRE(do_alloc(&p, 67, 1), "alloc(67) after alloc(255) in a 324-byte pool failed");
    REQUIRE(!do_alloc(&p, 3, 1), "alloc(3) in a pool with 2 bytes left succeeded");
    REQUIRE(do_alloc(&p, 2, 1), "alloc(2) filling the 324-byte pool failed");
    pool_close(&p);
    /* every split of small pools: a then cap - a */
    for (uint64_t cap = 1; cap <= 160; cap++) {
        snprintf(g_ctx, sizeof g_ctx, "%s: pool of %llu, split", s->name, (ull)cap);
        uint64_t len = s->state_size(cap, 4);
        unsigned char *st = xmalloc(len);
        char msg[256];
        for (uint64_t a = 1; a <= cap; a++) {
            REQUIRE(s->init(st, cap, 4) == MP_OK, "init");
            uint64_t o1 = 0, o2 = 0;
            REQUIRE(s->ops->alloc(st, a, 1, &o1) == MP_OK && o1 == 0, "alloc(%llu) failed",
                    (ull)a);
            if (a < cap) {
                REQUIRE(s->ops->alloc(st, cap - a, 1, &o2) == MP_OK && o2 == a,
                        "alloc(%llu) after alloc(%llu) failed", (ull)(cap - a), (ull)a);
            }
            REQUIRE(s->ops->largest_free(st) == 0, "pool not full");
            REQUIRE(s->ops->alloc(st, 1, 1, &out) == MP_ENOSPACE, "alloc in a full pool");
            REQUIRE(s->ops->check(st, len, msg, sizeof msg) == MP_OK, "check: %s", msg);
            REQUIRE(s->ops->free(st, 0) == MP_OK, "free(0)");
            if (a < cap) REQUIRE(s->ops->free(st, a) == MP_OK, "free(a)");
            REQUIRE(s->ops->largest_free(st) == cap, "not merged back");
            REQUIRE(s->ops->check(st, len, msg, sizeof msg) == MP_OK, "check: %s", msg);
        }
        free(st);
    }
    /* double free and interior offsets */
    snprintf(g_ctx, sizeof g_ctx, "%s: double and interior free", s->name);
    pool_open(&p, s, 4096, 64);
    REQUIRE(do_alloc(&p, 100, 1) && do_alloc(&p, 200, 64) && do_alloc(&p, 300, 1), "allocs");
    uint64_t a = p.live[1].off;
    for (uint64_t d = 1; d < 200; d += 37) {
        memcpy(p.before, p.st, p.len);
        REQUIRE(p.ops->free(p.st, a + d) == MP_ENOTALLOC, "interior free(%llu)", (ull)(a + d));
        REQUIRE(p.ops->size_of(p.st, a + d, &out) == MP_ENOTALLOC, "interior size_of");
        require_unchanged(&p, "interior free", MP_ENOTALLOC);
    }
    do_free(&p, 1, 1);
    do_free(&p, 0, 1);
    do_free(&p, 0, 1);
    verify(&p);
    pool_close(&p);
    /* aligned exact fit: a free range [1, 1+64) holds alloc(63, 2) at 2 exactly */
    snprintf(g_ctx, sizeof g_ctx, "%s: exact aligned fit", s->name);
    pool_open(&p, s, 1024, 64);
    REQUIRE(do_alloc(&p, 1, 1) && do_alloc(&p, 64, 1) && do_alloc(&p, 1, 1), "allocs");
    do_free(&p, 1, 0);
    REQUIRE(do_alloc(&p, 63, 2), "alloc(63, 2) failed");
    /* bestfit takes the exact fit at 2; TLSF may take a good fit in the tail */
    if (s->exact_best) REQUIRE(live_at(&p, 2, 0), "alloc(63, 2) not at 2");
    pool_close(&p);
    /* node exhaustion */
    for (uint64_t maxb = 1; maxb <= 9; maxb++) {
        snprintf(g_ctx, sizeof g_ctx, "%s: node exhaustion, max_blocks %llu", s->name,
                 (ull)maxb);
        pool_open(&p, s, 1000, maxb);
        int n = 0, rc = MP_OK;
        while (n < 100) {
            memcpy(p.before, p.st, p.len);
            rc = p.ops->alloc(p.st, 3, 1, &out);
            if (rc != MP_OK) break;
            p.live[p.nlive++] = (live_t){out, 3, 1, 0, 0};
            verify(&p);
            n++;
        }
        REQUIRE(rc == MP_ENONODES, "exhaustion returned %d after %d allocs", rc, n);
        require_unchanged(&p, "alloc at node exhaustion", rc);
        REQUIRE((uint64_t)n == maxb - 1, "%d allocs with %llu nodes", n, (ull)maxb);
        verify(&p);
        /* the tail is still one free range: alloc of all of it needs no node */
        uint64_t tail = p.ops->largest_free(p.st);
        REQUIRE(do_alloc(&p, tail, 1), "alloc of the whole free tail failed");
        /* shrink with an allocated successor needs a node: none left */
        if (p.nlive >= 2) {
            qsort(p.live, p.nlive, sizeof(live_t), live_cmp);
            memcpy(p.before, p.st, p.len);
            int r2 = p.ops->realloc(p.st, p.live[0].off, 1, 1, &out);
            REQUIRE(r2 == MP_ENONODES, "shrink without nodes = %d", r2);
            require_unchanged(&p, "realloc at node exhaustion", r2);
            verify(&p);
        }
        /* free every other, then everything; the state must stay sound */
        for (size_t k = 0; k < p.nlive; k += 2) do_free(&p, k, 1);
        while (p.nlive) do_free(&p, below(p.nlive), 0);
        REQUIRE(p.nsegs == 1, "not merged back");
        for (int i = 0; i < 200; i++) random_step(&p);
        pool_close(&p);
    }
    /* many free ranges: a deep free index (every step still fully verified) */
    snprintf(g_ctx, sizeof g_ctx, "%s: many free ranges", s->name);
    pool_open(&p, s, 1 << 22, 4096);
    for (int i = 0; i < 1500; i++)
        if (!do_alloc(&p, 1 + below(below(4) ? 64 : 2048), (uint64_t)1 << below(5))) break;
    for (size_t k = 0; k < p.nlive; k++)
        if (below(2)) do_free(&p, k, 0);
    REQUIRE(p.ops->free_ranges(p.st) > 300, "only %llu free ranges",
            (ull)p.ops->free_ranges(p.st));
    for (int i = 0; i < 1500; i++) {
        uint64_t r = below(10);
        if (r < 5 || !p.nlive) do_alloc(&p, 1 + below(below(4) ? 64 : 2048), rand_align());
        else if (r < 8) do_free(&p, below(p.nlive), 0);
        else do_realloc(&p, below(p.nlive), 1 + below(2048), rand_align());
    }
    pool_close(&p);
    /* huge capacities and sizes: no overflow */
    snprintf(g_ctx, sizeof g_ctx, "%s: huge capacity", s->name);
    pool_open(&p, s, UINT64_MAX, 64);
    REQUIRE(do_alloc(&p, UINT64_MAX - 1, 1), "alloc(cap - 1)");
    REQUIRE(!do_alloc(&p, 2, 1), "alloc(2) with 1 byte left");
    REQUIRE(do_alloc(&p, 1, 1), "alloc(1) of the last byte");
    do_free(&p, 0, 1);
    REQUIRE(do_alloc(&p, 1, (uint64_t)1 << 63), "alloc(1, 2^63)");
    REQUIRE(do_alloc(&p, 1, (uint64_t)1 << 63), "second alloc(1, 2^63)");
    REQUIRE(!do_alloc(&p, 1, (uint64_t)1 << 63), "third alloc(1, 2^63) succeeded");
    for (int i = 0; i < 300; i++) random_step(&p);
    pool_close(&p);
}

/* ---- corruption ------------------------------------------------------------------- */
typedef struct layout {
    uint64_t area_off, area_size, nodes_off, table_off, table_len;
} layout_t;

static layout_t layout_of(const pool_t *p)
{
    const mp_rset_t *rs = rs_cset(p->st);
    layout_t L;
    /* the table and the nursery after it: slots alike */
    L.table_len = (((uint64_t)1 << rs->hash_bits) + ((uint64_t)1 << rs_nursery_bits(rs->hash_bits))) *
                  sizeof(mp_slot_t);
    L.area_off = RS_AREA_OFF;
    L.area_size = p->len - RS_AREA_OFF - p->maxb * p->s->node_size - L.table_len;
    L.nodes_off = L.area_off + L.area_size;
    L.table_off = L.nodes_off + p->maxb * p->s->node_size;
    return L;
}

/* Must check() catch a flip of bit `bit` of byte `pos` of the valid state v? */
static int must_detect(const pool_t *p, const unsigned char *v, const layout_t *L, uint64_t pos,
                       unsigned bit)
{
    if (pos < sizeof(mp_head_t)) {
#define IN(f) (pos + 1 > offsetof(mp_head_t, f) && pos < offsetof(mp_head_t, f) + sizeof(((mp_head_t *)0)->f))
        if (IN(magic) || IN(kind) || IN(version) || IN(state_size) || IN(capacity) || IN(used) ||
            IN(requested) || IN(live))
            return 1;
        return pos >= offsetof(mp_head_t, param) && pos < offsetof(mp_head_t, param) + 8;
#undef IN
    }
    if (pos < RS_AREA_OFF) return 1; /* every field of mp_rset_t */
    if (pos < L->nodes_off) return 1; /* the free index header */
    if (pos < L->table_off) {
        const mp_rset_t *rs = rs_cset(v);
        uint64_t i = (pos - L->nodes_off) / p->s->node_size;
        uint64_t f = (pos - L->nodes_off) % p->s->node_size;
        if (i >= rs->top) return 0;
        mp_rnode_t n;
        memcpy(&n, v + L->nodes_off + i * p->s->node_size, sizeof n);
        uint64_t flags_at = offsetof(mp_rnode_t, flags);
        uint64_t next_at = offsetof(mp_rnode_t, next), link_at = offsetof(mp_rnode_t, link);
        if (n.flags == 0) /* spare: its link and flags; a strategy's extension is free */
            return (f >= next_at && f < next_at + 4) || (f >= flags_at && f < flags_at + 4);
        if (f < link_at) return 1; /* offset, size, prev, next */
        int is_free = (n.flags & RN_FREE) != 0;
        if (f >= flags_at) { /* flags, then the extension (BestFit: augment, B7) */
            if (f == flags_at && bit < 2) return 1;
            return is_free && p->s->exact_best && f < BF_AUG_END;
        }
        if (!is_free) return 0;
        if (p->s->exact_best) return 1;           /* left, right, parent */
        return f < link_at + 2 * sizeof(uint32_t); /* TLSF: prev, next in bin */
    }
    if (pos >= L->table_off + L->table_len) return 0;
    /* offset table: a slot's node always; its tag when the slot is occupied */
    uint64_t k = (pos - L->table_off) / sizeof(mp_slot_t);
    uint64_t f = (pos - L->table_off) % sizeof(mp_slot_t);
    mp_slot_t slot;
    memcpy(&slot, v + L->table_off + k * sizeof(mp_slot_t), sizeof slot);
    if (f >= offsetof(mp_slot_t, node) && f < offsetof(mp_slot_t, node) + sizeof slot.node)
        return 1;
    return slot.node != MP_NIL;
}

/* Take over a state that check() accepted and exercise it. */
static void exercise_accepted(const pool_t *orig, const unsigned char *buf, int steps)
{
    pool_t p;
    memset(&p, 0, sizeof p);
    p.s = orig->s;
    p.ops = orig->ops;
    p.maxb = orig->maxb;
    p.len = orig->len;
    p.cap = ((const mp_head_t *)buf)->capacity;
    pool_alloc_bufs(&p);
    memcpy(p.st, buf, p.len);
    collect_segs(&p);
    for (size_t k = 0; k < p.nsegs; k++) {
        if (!p.segs[k].alloc) continue;
        /* a range allocated by handle: its node (white box) */
        uint64_t h = 0, sz;
        int by_handle = p.ops->size_of(p.st, p.segs[k].off, &sz) != MP_OK;
        const mp_rset_t *rs = rs_cset(p.st);
        uint64_t nodes_off = layout_of(&p).nodes_off;
        for (uint32_t i = 0; by_handle && i < rs->top; i++) {
            const mp_rnode_t *n =
                (const mp_rnode_t *)(p.st + nodes_off + (uint64_t)i * p.s->node_size);
            if (n->flags == (RN_INUSE | RN_HANDLE) && n->offset == p.segs[k].off) h = i;
        }
        p.live[p.nlive++] = (live_t){p.segs[k].off, p.segs[k].size, 1, by_handle, h};
    }
    verify(&p);
    for (int i = 0; i < steps; i++) random_step(&p);
    pool_close(&p);
}

typedef struct cstats {
    uint64_t truncated, random, flips_must, flips_other, flips_other_ok, mutations,
        mutations_ok;
} cstats_t;

static void expect_corrupt(const pool_t *p, const unsigned char *buf, uint64_t len,
                           const char *what)
{
    char msg[256] = "";
    int rc = p->ops->check(buf, len, msg, sizeof msg);
    REQUIRE(rc == MP_ECORRUPT, "check() of %s returned %d, not MP_ECORRUPT", what, rc);
    REQUIRE(msg[0] != 0, "check() of %s gave no message", what);
}

static void corruption(const strat_t *s, int states, int flips, int mutations, cstats_t *cs)
{
    for (int t = 0; t < states; t++) {
        static const uint64_t caps[] = {1000, 65536, 1 << 20, 97};
        static const uint64_t maxbs[] = {16, 64, 8, 128};
        uint64_t cap = caps[t % 4], maxb = maxbs[(t / 4) % 4];
        snprintf(g_ctx, sizeof g_ctx, "%s corruption state %d: capacity %llu, max_blocks %llu, "
                 "rng %llu", s->name, t, (ull)cap, (ull)maxb, (ull)g_rng);
        pool_t p;
        pool_open(&p, s, cap, maxb);
        int warm = 20 + (int)below(200);
        for (int i = 0; i < warm; i++) random_step(&p);
        /* some frees to populate the spare stack and several free ranges */
        for (size_t k = 0; k < p.nlive && k < 4; k++) do_free(&p, k, 0);
        snprintf(g_op, sizeof g_op, "corruption of a state with %zu live ranges", p.nlive);
        const unsigned char *v = p.st; /* the valid state; p is not modified below */
        layout_t L = layout_of(&p);
        unsigned char *buf = xmalloc(p.len);
        const mp_rset_t *rs = rs_cset(v);
        uint64_t live_end = L.nodes_off + (uint64_t)rs->top * s->node_size;

        /* truncated lengths: an exact-size buffer, so ASan sees any overread */
        uint64_t cuts[] = {0, 1, 7, sizeof(mp_head_t) - 1, sizeof(mp_head_t), RS_AREA_OFF - 1,
                           RS_AREA_OFF, L.nodes_off, L.table_off, p.len - 8, p.len - 1,
                           below(p.len)};
        for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
            unsigned char *tb = xmalloc(cuts[k]);
            memcpy(tb, v, cuts[k]);
            char what[64];
            snprintf(what, sizeof what, "a state truncated to %llu bytes", (ull)cuts[k]);
            expect_corrupt(&p, tb, cuts[k], what);
            free(tb);
            cs->truncated++;
        }
        /* random bytes: all, with a valid head, with a valid head and index */
        for (int k = 0; k < 12; k++) {
            for (uint64_t b = 0; b < p.len; b++) buf[b] = (unsigned char)rnd();
            uint64_t keep = k % 3 == 0 ? 0 : k % 3 == 1 ? RS_AREA_OFF : L.nodes_off;
            memcpy(buf, v, keep);
            expect_corrupt(&p, buf, p.len, "random bytes");
            cs->random++;
        }
        /* single-bit flips */
        for (int k = 0; k < flips; k++) {
            uint64_t pos = below(2) ? below(live_end) : below(p.len);
            if (below(4) == 0) pos = L.table_off + below(L.table_len);
            unsigned bit = (unsigned)below(8);
            memcpy(buf, v, p.len);
            buf[pos] ^= (unsigned char)(1u << bit);
            char msg[256] = "";
            int rc = p.ops->check(buf, p.len, msg, sizeof msg);
            if (must_detect(&p, v, &L, pos, bit)) {
                snprintf(g_op, sizeof g_op, "flip bit %u of byte %llu", bit, (ull)pos);
                REQUIRE(rc == MP_ECORRUPT, "check() missed a flipped bit %u of byte %llu "
                        "(layout: index at %llu, nodes at %llu, table at %llu; top %u)", bit,
                        (ull)pos, (ull)L.area_off, (ull)L.nodes_off, (ull)L.table_off, rs->top);
                cs->flips_must++;
            } else {
                REQUIRE(rc == MP_OK || rc == MP_ECORRUPT, "check() returned %d", rc);
                cs->flips_other++;
                if (rc == MP_OK) {
                    cs->flips_other_ok++;
                    snprintf(g_op, sizeof g_op, "exercising a state with bit %u of byte %llu "
                             "flipped", bit, (ull)pos);
                    if (below(8) == 0) exercise_accepted(&p, buf, 10);
                }
            }
        }
        /* random mutations: bytes, and index/size-shaped values */
        for (int k = 0; k < mutations; k++) {
            memcpy(buf, v, p.len);
            int nm = 1 + (int)below(4);
            for (int m = 0; m < nm; m++) {
                uint64_t r = below(3);
                uint64_t pos = below(2) ? below(live_end) : below(p.len);
                if (r == 0) {
                    buf[pos] ^= (unsigned char)(1 + below(255));
                } else if (r == 1) {
                    pos &= ~(uint64_t)3;
                    if (pos + 4 > p.len) continue;
                    uint32_t cur, val;
                    memcpy(&cur, buf + pos, 4);
                    uint32_t top = rs->top ? rs->top : 1;
                    switch (below(7)) {
                    case 0: val = 0; break;
                    case 1: val = MP_NIL; break;
                    case 2: val = (uint32_t)below(top); break;
                    case 3: val = cur + 1; break;
                    case 4: val = cur - 1; break;
                    case 5: val = top; break;
                    default: val = (uint32_t)rnd(); break;
                    }
                    memcpy(buf + pos, &val, 4);
                } else {
                    pos &= ~(uint64_t)7;
                    if (pos + 8 > p.len) continue;
                    uint64_t cur, val;
                    memcpy(&cur, buf + pos, 8);
                    switch (below(5)) {
                    case 0: val = 0; break;
                    case 1: val = cur + 1; break;
                    case 2: val = cur - 1; break;
                    case 3: val = cap; break;
                    default: val = rnd(); break;
                    }
                    memcpy(buf + pos, &val, 8);
                }
            }
            /* sometimes swap two nodes' tree/bin links: structurally plausible lies */
            if (below(4) == 0 && rs->top >= 2) {
                uint64_t a = L.nodes_off + below(rs->top) * s->node_size +
                             offsetof(mp_rnode_t, link) + 4 * below(3);
                uint64_t b = L.nodes_off + below(rs->top) * s->node_size +
                             offsetof(mp_rnode_t, link) + 4 * below(3);
                uint32_t x, y;
                memcpy(&x, buf + a, 4);
                memcpy(&y, buf + b, 4);
                memcpy(buf + a, &y, 4);
                memcpy(buf + b, &x, 4);
            }
            char msg[256] = "";
            int rc = p.ops->check(buf, p.len, msg, sizeof msg);
            REQUIRE(rc == MP_OK || rc == MP_ECORRUPT, "check() of a mutated state returned %d",
                    rc);
            cs->mutations++;
            if (rc == MP_OK) {
                cs->mutations_ok++;
                snprintf(g_op, sizeof g_op, "exercising an accepted mutated state");
                exercise_accepted(&p, buf, 10);
            }
        }
        /* two adjacent free ranges, each properly filed, counters consistent: only the
         * merge invariant is broken.  Made by hiding A from B (B.prev = NIL) while B is
         * freed, then restoring the link. */
        for (size_t k = 0; k + 1 < p.nsegs; k++) {
            if (p.segs[k].alloc || !p.segs[k + 1].alloc) continue;
            if (!is_live_start(&p, p.segs[k + 1].off)) continue; /* by handle: no lookup */
            memcpy(buf, v, p.len);
            /* rs_lookup needs only the layout */
            mp_fidx_t fake = {.area_size = L.area_size, .node_size = s->node_size};
            uint32_t b = rs_lookup(buf, &fake, p.segs[k + 1].off);
            REQUIRE(b != MP_NIL, "allocated range not found");
            mp_rnode_t *nb = (mp_rnode_t *)(buf + L.nodes_off + b * s->node_size);
            uint32_t a = nb->prev;
            nb->prev = MP_NIL;
            /* the raw table: this free works on a state broken on purpose */
            REQUIRE(mpi_ops_raw(p.ops)->free(buf, p.segs[k + 1].off) == MP_OK, "free");
            nb->prev = a;
            snprintf(g_op, sizeof g_op, "unmerged free ranges at %llu and %llu",
                     (ull)p.segs[k].off, (ull)p.segs[k + 1].off);
            expect_corrupt(&p, buf, p.len, "a state with unmerged free neighbours");
            break;
        }
        /* the valid state itself still passes, untouched */
        verify(&p);
        free(buf);
        pool_close(&p);
    }
}

/* BestFit: a huge free tree relinked into one long, otherwise plausible chain (parent
 * links, stored heights and augments consistent, in key order).  check() must reject it without
 * recursing down the chain (a stack overflow), and so must a cycle through the chain. */
static void degenerate_tree(const strat_t *s)
{
    if (!s->exact_best) return;
    enum { N = 200000 };
    snprintf(g_ctx, sizeof g_ctx, "%s: degenerate free tree of %d nodes", s->name, N / 2);
    snprintf(g_op, sizeof g_op, "build");
    uint64_t len = s->state_size(N + 2, N + 2);
    unsigned char *st = xmalloc(len);
    REQUIRE(s->init(st, N + 2, N + 2) == MP_OK, "init");
    uint64_t out;
    /* built with the raw table: an MP_DEBUG build checks it once below, not after each
     * of 300000 calls (quadratic) */
    const mp_ops_t *raw = mpi_ops_raw(s->ops);
    for (int i = 0; i < N; i++) REQUIRE(raw->alloc(st, 1, 1, &out) == MP_OK, "alloc %d", i);
    for (uint64_t o = 0; o < N; o += 2) REQUIRE(raw->free(st, o) == MP_OK, "free %llu", (ull)o);
    char msg[256];
    REQUIRE(s->ops->check(st, len, msg, sizeof msg) == MP_OK, "check: %s", msg);
    const mp_rset_t *rs = rs_cset(st);
    uint64_t tbl = (((uint64_t)1 << rs->hash_bits) + ((uint64_t)1 << rs_nursery_bits(rs->hash_bits))) *
                   sizeof(mp_slot_t);
    uint64_t nodes_off = len - tbl - (uint64_t)rs->max_blocks * s->node_size;
#define NODE(i) (*(mp_rnode_t *)(st + nodes_off + (uint64_t)(i) * s->node_size))
#define AUG(i) (*(uint64_t *)(st + nodes_off + (uint64_t)(i) * s->node_size + sizeof(mp_rnode_t)))
    uint32_t *order = xmalloc(sizeof(uint32_t) * (N + 2));
    uint32_t n = 0;
    /* the free nodes of size 1 (all in bin 1; the tail has a bin of its own), in key
     * order: by offset */
    uint32_t tail = MP_NIL;
    for (uint32_t i = 0; i < rs->top; i++) {
        if ((NODE(i).flags & 3) != 3) continue;
        if (NODE(i).size != 1) tail = i;
        else order[n++] = i;
    }
    /* sort by offset (counting: offsets are even and < N) */
    uint32_t *by_off = xmalloc(sizeof(uint32_t) * (N / 2 + 1));
    for (uint32_t a = 0; a < n; a++) by_off[NODE(order[a]).offset / 2] = order[a];
    memcpy(order, by_off, sizeof(uint32_t) * n);
    free(by_off);
    REQUIRE(n + (tail != MP_NIL) == rs->nfree, "%u free nodes found, nfree %u", n, rs->nfree);
    /* bestfit's index: the bin map, then root[RS_BINS], then first[RS_BINS] */
    unsigned char *root_at = st + RS_AREA_OFF + sizeof(rs_binmap_t) + 1 * sizeof(uint32_t);
    unsigned char *first_at = root_at + RS_BINS * sizeof(uint32_t);
    for (int variant = 0; variant < 2; variant++) {
        for (uint32_t a = n; a-- > 0;) {
            mp_rnode_t *x = &NODE(order[a]);
            x->link[0] = MP_NIL;
            x->link[1] = a + 1 < n ? order[a + 1] : MP_NIL;
            x->link[2] = a ? order[a - 1] : MP_NIL;
            uint32_t h = n - a > 255 ? 255 : n - a;
            x->flags = 3u | h << 8;
            uint64_t own = 0, aug = 0, below_ = a + 1 < n ? AUG(order[a + 1]) : 0;
            for (unsigned j = 0; j < sizeof BF_LEVEL / sizeof BF_LEVEL[0]; j++) {
                uint64_t pad = (0 - x->offset) & ((1ull << BF_LEVEL[j]) - 1);
                uint64_t use = x->size >= pad ? x->size - pad : 0;
                if (use > BF_CAP) use = BF_CAP;
                uint64_t b = (below_ >> (16 * j)) & 0xffff;
                own |= use << (16 * j);
                aug |= (use > b ? use : b) << (16 * j);
            }
            AUG(order[a]) = aug;
            (&AUG(order[a]))[1] = own;
        }
        if (variant == 1) { /* close the chain into a cycle */
            NODE(order[n - 1]).link[1] = order[0];
            NODE(order[0]).link[2] = order[n - 1];
        }
        memcpy(root_at, &order[0], sizeof(uint32_t));
        memcpy(first_at, &order[0], sizeof(uint32_t));
        snprintf(g_op, sizeof g_op, "check of a %s of %u nodes", variant ? "cycle" : "chain", n);
        REQUIRE(s->ops->check(st, len, msg, sizeof msg) == MP_ECORRUPT, "check accepted it");
    }
#undef NODE
#undef AUG
    free(order);
    free(st);
}

/* The offset table stays short-probed for sequential tiny ranges: mean displacement
 * (slot - home) of its entries is small.  Deterministic, no timing: a home function
 * that keeps sequential offsets in one run of slots makes it grow with n.  The
 * nursery after the table holds the rest, each entry in its own slot. */
static void table_spread(const strat_t *s)
{
    enum { N = 100000 }; /* well beyond the nursery (<= 2^15): most go to the table */
    static const uint64_t sizes[] = {1, 3, 8, 16, 4096};
    for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
        snprintf(g_ctx, sizeof g_ctx, "%s: table spread, %d sequential allocs of %llu", s->name,
                 N, (ull)sizes[z]);
        snprintf(g_op, sizeof g_op, "sequential allocs");
        uint64_t cap = N * sizes[z] + 1, len = s->state_size(cap, N + 2), out;
        unsigned char *st = xmalloc(len);
        REQUIRE(s->init(st, cap, N + 2) == MP_OK, "init");
        const mp_ops_t *raw = mpi_ops_raw(s->ops); /* one check() at the end (MP_DEBUG) */
        for (int i = 0; i < N; i++) REQUIRE(raw->alloc(st, sizes[z], 1, &out) == MP_OK, "alloc");
        const mp_rset_t *rs = rs_cset(st);
        uint32_t nbits = rs_nursery_bits(rs->hash_bits);
        uint64_t slots = (uint64_t)1 << rs->hash_bits, mask = slots - 1, total = 0, n = 0;
        uint64_t nslots = (uint64_t)1 << nbits, in_nursery = 0;
        const mp_slot_t *t = (const mp_slot_t *)(st + len - (slots + nslots) * sizeof(mp_slot_t));
        for (uint64_t k = 0; k < slots; k++) {
            if (t[k].node == MP_NIL) continue;
            total += (k - rs_home(t[k].tag, rs->hash_bits)) & mask;
            n++;
        }
        for (uint64_t k = 0; k < nslots; k++) {
            if (t[slots + k].node == MP_NIL) continue;
            REQUIRE(rs_nhome(t[slots + k].tag, nbits) == k, "nursery entry away from its slot");
            in_nursery++;
        }
        REQUIRE(n + in_nursery == N, "table holds %llu entries, nursery %llu", (ull)n,
                (ull)in_nursery);
        REQUIRE(in_nursery > 0 && n > N / 2, "the nursery holds %llu, the table %llu",
                (ull)in_nursery, (ull)n);
        REQUIRE(total < 16 * n, "mean probe displacement %.1f slots", (double)total / (double)n);
        char msg[256];
        REQUIRE(s->ops->check(st, len, msg, sizeof msg) == MP_OK, "check: %s", msg);
        free(st);
    }
}

/* The size bins of ranges.h: sizes below 64 have bins of their own; bins never fall
 * as sizes grow; rs_bin_up(s) is the first bin whose every size is >= s: bin(s) when
 * s is the lowest size of its bin, else the next; the last size is in the last bin. */
static void size_bins(void)
{
    snprintf(g_ctx, sizeof g_ctx, "size bins");
    snprintf(g_op, sizeof g_op, "rs_bin_down / rs_bin_up");
    for (uint64_t s = 1; s < RS_EXACT; s++)
        REQUIRE(rs_bin_down(s) == s, "size %llu in bin %u", (ull)s, rs_bin_down(s));
    for (int k = 0; k < 200000; k++) {
        uint64_t s;
        if (k < 64 * 5) s = ((uint64_t)1 << (k / 5)) + (uint64_t)(k % 5) - 2;
        else if (k < 70000) s = (uint64_t)k - 64 * 5 + 1;
        else s = rnd() >> below(64);
        if (s < 2) continue;
        unsigned b = rs_bin_down(s), below_ = rs_bin_down(s - 1), u;
        REQUIRE(b < RS_BINS && below_ <= b, "bins fall from %llu (bin %u) to %llu (bin %u)",
                (ull)(s - 1), below_, (ull)s, b);
        if (!rs_bin_up(s, &u)) {
            REQUIRE(below_ == b && b == RS_BINS - 1, "no bin above %llu (bin %u)", (ull)s, b);
            continue;
        }
        REQUIRE(u == (below_ < b ? b : b + 1), "bin_up(%llu) = %u; bin(s - 1) = %u, bin(s) = %u",
                (ull)s, u, below_, b);
    }
    REQUIRE(rs_bin_down(UINT64_MAX) == RS_BINS - 1, "the last size in bin %u",
            rs_bin_down(UINT64_MAX));
}

/* ---- main --------------------------------------------------------------------------- */
int main(int argc, char **argv)
{
    uint64_t seed;
    double scale = stress_args(argc, argv, "stress", 20240611, &seed);
    int runs = (int)(40 * scale), steps = 1500;
    int states = (int)(16 * scale), flips = 3000, mutations = 1500;
    if (runs < 1) runs = 1;
    if (states < 1) states = 1;
    clock_t t0 = clock();
    size_bins();
    for (size_t si = 0; si < sizeof STRATS / sizeof STRATS[0]; si++) {
        const strat_t *s = &STRATS[si];
        g_rng = seed * 0x100000001B3ull + si;
        clock_t t1 = clock();
        known_cases(s);
        degenerate_tree(s);
        table_spread(s);
        random_runs(s, runs, steps);
        printf("%-8s coverage: %llu verified steps; alloc %llu ok (%llu by handle), %llu ENOSPACE, "
               "%llu ENONODES; %llu frees, %llu bad offsets, %llu bad handles, %llu resets; "
               "realloc %llu same, %llu shrink, %llu "
               "grown in place, %llu moved, %llu moved down, %llu ENOSPACE, %llu ENONODES; "
               "up to %llu free ranges\n",
               s->name, (ull)C.steps, (ull)C.alloc_ok, (ull)C.by_handle, (ull)C.alloc_nospace,
               (ull)C.alloc_nonodes, (ull)C.free_ok, (ull)C.bad_offset, (ull)C.bad_handle,
               (ull)C.resets,
               (ull)C.realloc_same, (ull)C.realloc_shrink, (ull)C.realloc_grow_in_place,
               (ull)C.realloc_moved, (ull)C.realloc_moved_down, (ull)C.realloc_nospace,
               (ull)C.realloc_nonodes, (ull)C.max_free_ranges);
        memset(&C, 0, sizeof C);
        cstats_t cs;
        memset(&cs, 0, sizeof cs);
        corruption(s, states, flips, mutations, &cs);
        printf("%-8s ok: %d random runs x %d steps; corruption: %llu truncated, %llu random, "
               "%llu must-detect flips caught, %llu other flips (%llu accepted), %llu mutations "
               "(%llu accepted and exercised); %.2f s\n",
               s->name, runs, steps, (ull)cs.truncated, (ull)cs.random, (ull)cs.flips_must,
               (ull)cs.flips_other, (ull)cs.flips_other_ok, (ull)cs.mutations,
               (ull)cs.mutations_ok, (double)(clock() - t1) / CLOCKS_PER_SEC);
    }
    printf("all passed in %.2f s (seed %llu)\n", (double)(clock() - t0) / CLOCKS_PER_SEC,
           (ull)seed);
    return 0;
}
