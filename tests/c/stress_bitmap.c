/*
 * stress_bitmap.c -- standalone randomized stress test of the Bitmap strategy through
 * its mp_ops_t table.  No Python.
 *
 *   CORE=src/mempool/_core
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -I $CORE $CORE/[every .c] \
 *       tests/c/stress_bitmap.c -o /tmp/stress_bitmap && /tmp/stress_bitmap [seed [scale]]
 *
 * For block sizes 1..4096 (powers of two and not), 1..~3000 blocks, next fit and
 * first fit:
 *   - seeded random alloc / free / realloc / reset / bad offsets / bad arguments
 *     against a shadow list of live runs; after every step check() passes and the
 *     memory map (walk) is verified independently: it covers [0, blocks *
 *     block_size), free ranges are maximal, the allocated runs are exactly the
 *     shadow's (size_of = ceil(size / block_size) * block_size), used / requested /
 *     live / available / largest_free / free_ranges agree, and alloc(largest_free)
 *     succeeds on a copy;
 *   - alloc is predicted from the map and the cursor alone (next fit: the lowest
 *     aligned start at or after the cursor, else the lowest before it; first fit:
 *     the lowest), and so is the cursor after it; ENOSPACE exactly when nothing
 *     fits; any failure leaves the state byte for byte;
 *   - realloc: fewer or equal blocks in place; more blocks in place exactly when
 *     the following blocks are free; else what a free followed by an alloc gives
 *     (on a copy: same state byte for byte), else ENOSPACE and unchanged;
 *   - the seed's defects: pools of 1..130 blocks are fully allocatable; alignment
 *     from offset 0 for runs crossing words;
 *   - corruption: truncated lengths, random bytes, single-bit flips in everything
 *     check() covers (all must be caught), random mutations: check() never crashes,
 *     and a state it accepts keeps working.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mempool.h"
#include "stress_common.h"

static const mp_ops_t *OPS = &mp_bitmap_ops;

typedef struct seg {
    uint64_t off, size;
    int alloc;
} seg_t;
typedef struct live {
    uint64_t off, req;
} live_t;

typedef struct pool {
    uint64_t cap, B, N, len, usable;
    int ff;
    unsigned char *st, *before, *probe;
    live_t *live;
    size_t nlive;
    seg_t *segs;
    size_t nsegs;
} pool_t;

static struct {
    uint64_t alloc_ok, alloc_nospace, wrapped, frees, bad, re_keep, re_shrink, re_grow, re_moved,
        re_overlap, re_nospace, resets, steps;
} C;

static uint64_t cursor_of(const void *st) { return ((const mp_head_t *)st)->cursor; }
static uint64_t blocks_for(const pool_t *p, uint64_t size)
{
    return size / p->B + (size % p->B != 0);
}
static uint64_t step_of(const pool_t *p, uint64_t align) /* blocks between aligned starts */
{
    uint64_t s = 1;
    while ((s * p->B) % align) s *= 2;
    return s;
}

static void pool_open(pool_t *p, uint64_t cap, uint64_t B, int ff)
{
    memset(p, 0, sizeof *p);
    p->cap = cap;
    p->B = B;
    p->ff = ff;
    p->N = cap / B;
    p->usable = p->N * B;
    p->len = mp_bitmap_state_size(cap, B, ff);
    REQUIRE(p->len, "state_size(%llu, %llu, %d) = 0", (ull)cap, (ull)B, ff);
    p->st = xmalloc(p->len);
    p->before = xmalloc(p->len);
    p->probe = xmalloc(p->len);
    memset(p->st, 0x5a, p->len);
    REQUIRE(mp_bitmap_init(p->st, cap, B, ff) == MP_OK, "init");
    REQUIRE(((const mp_head_t *)p->st)->capacity == p->usable, "capacity");
    p->live = xmalloc((p->N + 1) * sizeof(live_t));
    p->segs = xmalloc((p->N + 1) * sizeof(seg_t));
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
    if (p->nsegs > p->N) return 1;
    p->segs[p->nsegs++] = (seg_t){off, size, allocated};
    return 0;
}

static int live_cmp(const void *a, const void *b)
{
    const live_t *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
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
        REQUIRE(g->off == pos && g->size && g->size % p->B == 0, "segment %zu [%llu, +%llu)", k,
                (ull)g->off, (ull)g->size);
        if (!g->alloc) {
            REQUIRE(k == 0 || p->segs[k - 1].alloc, "free segments %zu, %zu not maximal", k - 1,
                    k);
            nfree++;
            if (g->size > largest) largest = g->size;
        } else {
            nalloc++;
        }
        pos += g->size;
    }
    REQUIRE(pos == p->usable, "segments end at %llu, usable %llu", (ull)pos, (ull)p->usable);
    qsort(p->live, p->nlive, sizeof(live_t), live_cmp);
    REQUIRE(nalloc == p->nlive, "walk: %llu allocated, shadow %zu", (ull)nalloc, p->nlive);
    uint64_t used = 0, req = 0;
    for (size_t k = 0, j = 0; k < p->nsegs; k++) {
        if (!p->segs[k].alloc) continue;
        const live_t *l = &p->live[j++];
        uint64_t want = blocks_for(p, l->req) * p->B, sz = 0;
        REQUIRE(p->segs[k].off == l->off && p->segs[k].size == want,
                "walk [%llu, +%llu), shadow %llu (asked %llu)", (ull)p->segs[k].off,
                (ull)p->segs[k].size, (ull)l->off, (ull)l->req);
        REQUIRE(OPS->size_of(p->st, l->off, &sz) == MP_OK && sz == want, "size_of(%llu)",
                (ull)l->off);
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
    REQUIRE(cursor_of(p->st) < p->N && (!p->ff || cursor_of(p->st) == 0), "cursor %llu",
            (ull)cursor_of(p->st));
    if (largest) {
        memcpy(p->probe, p->st, p->len);
        uint64_t off;
        REQUIRE(OPS->alloc(p->probe, largest, 1, &off) == MP_OK, "alloc(largest_free)");
        REQUIRE(OPS->check(p->probe, p->len, msg, sizeof msg) == MP_OK, "check: %s", msg);
    }
    C.steps++;
}

/* The lowest aligned start in [from, lim) of n free blocks, from the map; or UINT64_MAX. */
static uint64_t first_fit_from(const pool_t *p, uint64_t from, uint64_t lim, uint64_t n,
                               uint64_t step)
{
    for (size_t k = 0; k < p->nsegs; k++) {
        const seg_t *g = &p->segs[k];
        if (g->alloc) continue;
        uint64_t a = g->off / p->B, b = a + g->size / p->B;
        uint64_t s = a > from ? a : from;
        s = (s + step - 1) / step * step;
        if (s < lim && s + n <= b) return s;
    }
    return UINT64_MAX;
}

/* Block index alloc must return (from the map and cursor), or UINT64_MAX. */
static uint64_t predict(const pool_t *p, uint64_t size, uint64_t align, int *wrapped)
{
    uint64_t n = blocks_for(p, size), step = step_of(p, align);
    *wrapped = 0;
    if (n > p->N) return UINT64_MAX;
    if (p->ff) return first_fit_from(p, 0, p->N, n, step);
    uint64_t cur = cursor_of(p->st);
    uint64_t i = first_fit_from(p, cur, p->N, n, step);
    if (i == UINT64_MAX && cur) {
        i = first_fit_from(p, 0, cur, n, step);
        *wrapped = i != UINT64_MAX;
    }
    return i;
}

static void unchanged(const pool_t *p, const char *what)
{
    REQUIRE(memcmp(p->st, p->before, p->len) == 0, "%s failed but changed the state", what);
}

static void do_alloc(pool_t *p, uint64_t size, uint64_t align)
{
    snprintf(g_op, sizeof g_op, "alloc(%llu, %llu) [cursor %llu]", (ull)size, (ull)align,
             (ull)cursor_of(p->st));
    memcpy(p->before, p->st, p->len);
    int wrapped;
    uint64_t want = predict(p, size, align, &wrapped), off = 0;
    int rc = OPS->alloc(p->st, size, align, &off);
    if (want == UINT64_MAX) {
        REQUIRE(rc == MP_ENOSPACE, "alloc = %d (at %llu), expected ENOSPACE", rc, (ull)off);
        unchanged(p, "alloc");
        C.alloc_nospace++;
    } else {
        REQUIRE(rc == MP_OK && off == want * p->B, "alloc = %d at %llu, expected %llu", rc,
                (ull)off, (ull)(want * p->B));
        REQUIRE(off % align == 0, "misaligned");
        uint64_t end = want + blocks_for(p, size);
        REQUIRE(cursor_of(p->st) == (p->ff ? 0 : end == p->N ? 0 : end), "cursor %llu after %llu",
                (ull)cursor_of(p->st), (ull)end);
        p->live[p->nlive++] = (live_t){off, size};
        C.alloc_ok++;
        C.wrapped += (uint64_t)wrapped;
    }
    verify(p);
}

static void do_free(pool_t *p, size_t k)
{
    live_t l = p->live[k];
    snprintf(g_op, sizeof g_op, "free(%llu)", (ull)l.off);
    uint64_t cur = cursor_of(p->st);
    REQUIRE(OPS->free(p->st, l.off) == MP_OK, "free");
    REQUIRE(cursor_of(p->st) == cur, "free moved the cursor");
    p->live[k] = p->live[--p->nlive];
    C.frees++;
    verify(p);
    memcpy(p->before, p->st, p->len);
    uint64_t sz;
    REQUIRE(OPS->free(p->st, l.off) == MP_ENOTALLOC, "double free accepted");
    REQUIRE(OPS->size_of(p->st, l.off, &sz) == MP_ENOTALLOC, "size_of after free");
    unchanged(p, "double free");
}

static void do_bad_offset(pool_t *p)
{
    uint64_t off;
    switch (below(4)) {
    case 0: {
        if (!p->nlive) return;
        const live_t *l = &p->live[below(p->nlive)];
        uint64_t sz = blocks_for(p, l->req) * p->B;
        if (sz < 2) return;
        off = l->off + 1 + below(sz - 1); /* interior, aligned or not */
        break;
    }
    case 1: off = below(p->usable + 2 * p->B); break;
    case 2: off = UINT64_MAX - below(3); break;
    default: {
        const seg_t *g = &p->segs[below(p->nsegs)];
        if (g->alloc) return;
        off = g->off + p->B * below(g->size / p->B);
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
    REQUIRE(OPS->alloc(p->st, p->usable + 1, 1, &out) == MP_ENOSPACE, "alloc beyond capacity");
    REQUIRE(OPS->alloc(p->st, UINT64_MAX, 1, &out) == MP_ENOSPACE, "alloc(UINT64_MAX)");
    char why[160];
    REQUIRE(OPS->why_nospace(p->st, p->usable + 1, 1, why, sizeof why) == 1, "why beyond");
    REQUIRE(OPS->why_nospace(p->st, p->usable, 1, why, sizeof why) == 0, "why at capacity");
    if (p->nlive) {
        uint64_t off = p->live[below(p->nlive)].off;
        REQUIRE(OPS->realloc(p->st, off, UINT64_MAX, 1, &out) == MP_ENOSPACE, "realloc huge");
    }
    unchanged(p, "bad arguments");
}

static void do_realloc(pool_t *p, size_t k, uint64_t size, uint64_t align)
{
    live_t l = p->live[k];
    snprintf(g_op, sizeof g_op, "realloc(%llu, %llu, %llu) [asked %llu, cursor %llu]",
             (ull)l.off, (ull)size, (ull)align, (ull)l.req, (ull)cursor_of(p->st));
    memcpy(p->before, p->st, p->len);
    uint64_t n0 = blocks_for(p, l.req), n1 = blocks_for(p, size), i = l.off / p->B;
    uint64_t want = UINT64_MAX;
    int kind = 0; /* 1 keep/shrink, 2 grow in place, 3 moved */
    if (n1 <= n0) {
        want = l.off, kind = 1;
    } else {
        uint64_t after = 0; /* free blocks right after the run */
        for (size_t j = 0; j < p->nsegs; j++)
            if (p->segs[j].off == l.off + n0 * p->B && !p->segs[j].alloc)
                after = p->segs[j].size / p->B;
        if (after >= n1 - n0) {
            want = l.off, kind = 2;
        } else {
            memcpy(p->probe, p->st, p->len);
            uint64_t o2;
            REQUIRE(OPS->free(p->probe, l.off) == MP_OK, "free on the probe");
            if (OPS->alloc(p->probe, size, align, &o2) == MP_OK) want = o2, kind = 3;
        }
    }
    uint64_t out = 0;
    int rc = OPS->realloc(p->st, l.off, size, align, &out);
    if (want == UINT64_MAX) {
        REQUIRE(rc == MP_ENOSPACE, "realloc = %d (to %llu), expected ENOSPACE", rc, (ull)out);
        unchanged(p, "realloc");
        C.re_nospace++;
    } else {
        REQUIRE(rc == MP_OK && out == want, "realloc = %d to %llu, expected %llu (case %d)", rc,
                (ull)out, (ull)want, kind);
        if (kind == 3) {
            const mp_head_t *a = (const mp_head_t *)p->st, *b = (const mp_head_t *)p->probe;
            /* same state as free + alloc, except the peaks (free + alloc may lower used first) */
            REQUIRE(memcmp((const char *)p->st + sizeof(mp_head_t),
                           (const char *)p->probe + sizeof(mp_head_t),
                           p->len - sizeof(mp_head_t)) == 0 &&
                        a->used == b->used && a->requested == b->requested &&
                        a->live == b->live && a->cursor == b->cursor,
                    "moved realloc differs from free + alloc");
            uint64_t j = out / p->B;
            if (j < i + n0 && i < j + n1) C.re_overlap++;
            else C.re_moved++;
        } else if (kind == 1) {
            if (n1 < n0) C.re_shrink++;
            else C.re_keep++;
        } else {
            C.re_grow++;
        }
        p->live[k] = (live_t){out, size};
    }
    verify(p);
}

static uint64_t rand_align(const pool_t *p)
{
    uint64_t r = below(100);
    if (r < 55) return 1;
    if (r < 97) return (uint64_t)1 << below(1 + 64 - (uint64_t)__builtin_clzll(p->usable));
    return (uint64_t)1 << (40 + below(23));
}

static uint64_t rand_size(const pool_t *p)
{
    uint64_t r = below(100);
    if (r < 45) return 1 + below(p->B * 3);
    if (r < 80) return 1 + below(p->B * 70);
    if (r < 95) return 1 + below(p->usable / (1 + below(8)) + 1);
    return p->usable + below(3);
}

static void random_run(uint64_t cap, uint64_t B, int ff, int steps)
{
    pool_t p;
    pool_open(&p, cap, B, ff);
    snprintf(g_ctx, sizeof g_ctx, "bitmap(cap %llu, block %llu, %s)", (ull)cap, (ull)B,
             ff ? "first fit" : "next fit");
    snprintf(g_op, sizeof g_op, "init");
    verify(&p);
    uint64_t bias = 35 + below(40);
    for (int s = 0; s < steps; s++) {
        uint64_t r = below(100);
        if (s % 200 == 199) bias = 25 + below(60);
        if (r < bias) {
            if (p.nlive < p.N) do_alloc(&p, rand_size(&p), rand_align(&p));
        } else if (r < bias + 30) {
            if (p.nlive) do_free(&p, below(p.nlive));
        } else if (r < bias + 42) {
            if (p.nlive) do_realloc(&p, below(p.nlive), rand_size(&p), rand_align(&p));
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
            REQUIRE(p.nsegs == 1 && cursor_of(p.st) == 0, "reset");
        }
    }
    pool_close(&p);
}

static void known_cases(void)
{
    pool_t p;
    uint64_t off;
    /* every pool size is fully allocatable (the seed allocated nothing below 64 blocks) */
    for (uint64_t n = 1; n <= 130; n++) {
        for (int ff = 0; ff < 2; ff++) {
            snprintf(g_ctx, sizeof g_ctx, "%llu blocks of 8, %s", (ull)n, ff ? "ff" : "nf");
            pool_open(&p, n * 8 + 7, 8, ff);
            for (uint64_t i = 0; i < n; i++) {
                snprintf(g_op, sizeof g_op, "alloc #%llu", (ull)i);
                REQUIRE(OPS->alloc(p.st, 8, 1, &off) == MP_OK && off == 8 * i, "at %llu",
                        (ull)off);
                p.live[p.nlive++] = (live_t){off, 8};
            }
            REQUIRE(OPS->alloc(p.st, 1, 1, &off) == MP_ENOSPACE, "full");
            verify(&p);
            pool_close(&p);
        }
    }
    /* alignment from offset 0 for runs that cross words */
    snprintf(g_ctx, sizeof g_ctx, "alignment across words");
    pool_open(&p, 1000, 1, 1);
    REQUIRE(OPS->alloc(p.st, 1, 1, &off) == MP_OK && off == 0, "first");
    REQUIRE(OPS->alloc(p.st, 100, 128, &off) == MP_OK && off == 128, "crossing, aligned");
    REQUIRE(OPS->alloc(p.st, 70, 64, &off) == MP_OK && off == 256, "at %llu", (ull)off);
    pool_close(&p);
    snprintf(g_ctx, sizeof g_ctx, "bad parameters");
    REQUIRE(mp_bitmap_state_size(0, 1, 0) == 0 && mp_bitmap_state_size(10, 0, 0) == 0 &&
                mp_bitmap_state_size(10, 11, 0) == 0 &&
                mp_bitmap_state_size((uint64_t)1 << 41, 1, 0) == 0,
            "bad parameters accepted");
    unsigned char junk[8];
    REQUIRE(mp_bitmap_init(junk, 10, 0, 0) == MP_EINVAL, "init with block 0");
}

/* one random op on an accepted state: alloc, or free / realloc of a block start that
 * size_of() says is live */
static void accepted_op(const attack_t *a)
{
    const pool_t *model = a->ctx;
    uint64_t off = 0, sz, r = below(3);
    if (r == 0) OPS->alloc(a->buf, rand_size(model), rand_align(model), &off);
    else {
        off = below(model->N) * model->B;
        if (OPS->size_of(a->buf, off, &sz) == MP_OK) {
            if (r == 1) OPS->free(a->buf, off);
            else OPS->realloc(a->buf, off, rand_size(model), rand_align(model), &off);
        }
    }
}

/* every byte but peak_used, high_water, cursor (any value < N is valid) and param[0]
 * (the capacity argument: low bits may round alike) */
static uint64_t must_byte(const attack_t *a)
{
    for (;;) {
        uint64_t byte = below(a->len);
        if (!(byte >= offsetof(mp_head_t, peak_used) && byte < offsetof(mp_head_t, cursor) + 8) &&
            !(byte >= offsetof(mp_head_t, param) && byte < offsetof(mp_head_t, param) + 8))
            return byte;
    }
}

static void corruption(uint64_t cap, uint64_t B, int ff, int flips, int mutations,
                       uint64_t *caught, uint64_t *accepted)
{
    pool_t p;
    pool_open(&p, cap, B, ff);
    snprintf(g_ctx, sizeof g_ctx, "corruption of bitmap(%llu, %llu, %d)", (ull)cap, (ull)B, ff);
    for (int i = 0; i < 40; i++) {
        uint64_t off;
        if (OPS->alloc(p.st, 1 + below(B * 5), rand_align(&p), &off) == MP_OK && below(3) == 0)
            OPS->free(p.st, off);
    }
    char msg[256];
    REQUIRE(OPS->check(p.st, p.len, msg, sizeof msg) == MP_OK, "%s", msg);
    attack_t a = {OPS, p.st, p.len, xmalloc(p.len), must_byte, accepted_op, &p};
    attack_truncated(&a, 16);
    attack_flips(&a, flips);
    *caught += (uint64_t)flips;
    *accepted += attack_mutations(&a, mutations, 20);
    /* random bytes: a tiny bitmap (N < 8) may look valid */
    REQUIRE(attack_garbage(&a, 50, sizeof(mp_head_t) + 48, 20) == 0 || p.N < 8,
            "random bytes accepted");
    free(a.buf);
    pool_close(&p);
}

int main(int argc, char **argv)
{
    uint64_t seed;
    double scale = stress_args(argc, argv, "stress_bitmap", 20240613, &seed);
    clock_t t0 = clock();
    known_cases();
    static const uint64_t configs[][2] = {
        /* capacity, block_size */
        {1, 1},       {64, 1},      {65, 1},      {200, 1},      {1000, 1},  {3000, 1},
        {1000, 3},    {4096, 16},   {5000, 24},   {8191, 64},    {1 << 20, 4096},
        {777, 7},     {128 * 9, 9}, {100000, 100}, {1 << 14, 8}, {1 << 16, 2},
    };
    size_t n = sizeof configs / sizeof configs[0];
    int steps = (int)(6000 * scale);
    for (size_t i = 0; i < n; i++)
        for (int ff = 0; ff < 2; ff++)
            for (int rep = 0; rep < 2; rep++) random_run(configs[i][0], configs[i][1], ff, steps);
    printf("bitmap   coverage: %llu verified steps; alloc %llu ok (%llu wrapped round), %llu "
           "ENOSPACE; %llu frees, %llu bad offsets, %llu resets; realloc %llu same blocks, %llu "
           "shrink, %llu grown in place, %llu moved, %llu moved overlapping, %llu ENOSPACE\n",
           (ull)C.steps, (ull)C.alloc_ok, (ull)C.wrapped, (ull)C.alloc_nospace, (ull)C.frees,
           (ull)C.bad, (ull)C.resets, (ull)C.re_keep, (ull)C.re_shrink, (ull)C.re_grow,
           (ull)C.re_moved, (ull)C.re_overlap, (ull)C.re_nospace);
    REQUIRE(C.wrapped && C.re_keep && C.re_shrink && C.re_grow && C.re_moved && C.re_overlap &&
                C.re_nospace && C.alloc_nospace,
            "some path was never taken");
    uint64_t caught = 0, accepted = 0;
    for (size_t i = 0; i < n; i++)
        corruption(configs[i][0], configs[i][1], (int)(i & 1), (int)(3000 * scale),
                   (int)(1500 * scale), &caught, &accepted);
    printf("bitmap   corruption: %llu must-catch bit flips caught, %llu mutated states accepted "
           "and exercised\n",
           (ull)caught, (ull)accepted);
    printf("all passed in %.2f s (seed %llu)\n", (double)(clock() - t0) / CLOCKS_PER_SEC,
           (ull)seed);
    return 0;
}
