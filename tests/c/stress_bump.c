/*
 * stress_bump.c -- standalone randomized stress test of the Bump strategy.  No Python.
 *
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -I src/mempool/_core src/mempool/_core/[a-z]*.c \
 *       tests/c/stress_bump.c -o /tmp/stress_bump && /tmp/stress_bump [seed [scale]]
 *
 * A shadow model predicts every result exactly: the stack of (id, offset, size, dead)
 * entries and the top.  alloc lands at align_up(top, align) or fails (ENOSPACE past
 * the capacity, ENONODES with a full stack); free of the top entry pops it and the
 * dead entries below (top = end of the entry left), other frees mark dead; realloc of
 * the top is in place or ENOSPACE, others shrink in place or move; a mark remembers
 * the ids of the entries below it and the reset count, and is valid exactly while
 * those entries are still the bottom of the stack and no reset happened -- a model
 * independent of the (serial, depth) encoding the strategy uses.  After every step
 * check() passes and walk(), size_of and every counter agree with the shadow; every
 * failure left the state byte for byte as it was (the seed's defect: a failed
 * allocation clobbered "last").  A batch undone by freeing in reverse and restoring
 * the head (alloc_many's undo) restores the state byte for byte.  Corruption:
 * truncations and flips of the header fields are detected, random mutations never
 * crash check(), and accepted states keep working.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mempool.h"
#include "stress_common.h"

typedef struct ent {
    uint64_t id, off, size;
    int dead;
} ent_t;

#define MAX_MARKS 16
typedef struct mark {
    uint64_t token_serial, token_depth; /* what mp_bump_mark returned */
    uint64_t *ids;                      /* ids of the entries below the mark */
    uint64_t depth, resets;
} mark_t;

typedef struct seg {
    uint64_t off, size;
    int alloc;
} seg_t;

typedef struct pool {
    uint64_t cap, maxb, len;
    unsigned char *st, *before, *probe;
    ent_t *stk;
    uint64_t depth, top, next_id, resets;
    mark_t marks[MAX_MARKS];
    int nmarks;
    seg_t *segs;
    size_t nsegs, segcap;
    int overflow;
} pool_t;

static struct {
    ull alloc_ok, nospace, nonodes, free_top, free_dead, cascades, bad_free, realloc_top,
        realloc_shrink, realloc_move, realloc_fail, marks, rewinds, stale, batches, resets,
        steps;
} C;

static const mp_ops_t *OPS = &mp_bump_ops;

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

static void verify(pool_t *p)
{
    char msg[256] = "";
    int rc = OPS->check(p->st, p->len, msg, sizeof msg);
    REQUIRE(rc == MP_OK, "check() = %d: %s", rc, msg);
    const mp_head_t *h = (const mp_head_t *)p->st;
    mp_bump_info_t in;
    mp_bump_info(p->st, &in);
    REQUIRE(in.depth == p->depth && in.top == p->top, "depth %llu top %llu, shadow %llu %llu",
            (ull)in.depth, (ull)in.top, (ull)p->depth, (ull)p->top);
    p->nsegs = 0;
    p->overflow = 0;
    OPS->walk(p->st, walk_cb, p);
    REQUIRE(!p->overflow, "walk() overflow");
    uint64_t pos = 0, live = 0, used = 0, nfree = 0;
    size_t s = 0;
    for (uint64_t i = 0; i < p->depth; i++) {
        const ent_t *e = &p->stk[i];
        uint64_t sz;
        if (e->dead) {
            REQUIRE(OPS->size_of(p->st, e->off, &sz) == MP_ENOTALLOC, "size_of(dead %llu)",
                    (ull)e->off);
            continue;
        }
        if (e->off > pos) {
            REQUIRE(s < p->nsegs && p->segs[s].off == pos && p->segs[s].size == e->off - pos &&
                        !p->segs[s].alloc, "walk: expected the gap [%llu, %llu)", (ull)pos,
                    (ull)e->off);
            s++;
            nfree++;
        }
        REQUIRE(s < p->nsegs && p->segs[s].off == e->off && p->segs[s].size == e->size &&
                    p->segs[s].alloc, "walk: expected the range [%llu, +%llu)", (ull)e->off,
                (ull)e->size);
        s++;
        REQUIRE(OPS->size_of(p->st, e->off, &sz) == MP_OK && sz == e->size, "size_of(%llu)",
                (ull)e->off);
        pos = e->off + e->size;
        live++;
        used += e->size;
    }
    if (pos < p->cap) {
        REQUIRE(s < p->nsegs && p->segs[s].off == pos && p->segs[s].size == p->cap - pos &&
                    !p->segs[s].alloc, "walk: expected the tail at %llu", (ull)pos);
        s++;
        nfree++;
    }
    REQUIRE(s == p->nsegs, "walk shows %zu segments, expected %zu", p->nsegs, s);
    REQUIRE(h->live == live && h->used == used && h->requested == used,
            "head live %llu used %llu requested %llu; shadow %llu %llu", (ull)h->live,
            (ull)h->used, (ull)h->requested, (ull)live, (ull)used);
    REQUIRE(OPS->largest_free(p->st) == p->cap - p->top, "largest_free %llu, expected %llu",
            (ull)OPS->largest_free(p->st), (ull)(p->cap - p->top));
    REQUIRE(OPS->available(p->st) == p->cap - used, "available");
    REQUIRE(OPS->free_ranges(p->st) == nfree, "free_ranges %llu, expected %llu",
            (ull)OPS->free_ranges(p->st), (ull)nfree);
    REQUIRE(h->peak_used >= used && h->high_water >= p->top && h->high_water <= p->cap,
            "peak_used / high_water");
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

/* ---- the shadow ------------------------------------------------------------------------ */
static void sh_pop_to(pool_t *p, uint64_t d)
{
    while (p->depth > d || (p->depth && p->stk[p->depth - 1].dead)) {
        if (p->depth <= d) C.cascades++;
        p->depth--;
    }
    p->top = p->depth ? p->stk[p->depth - 1].off + p->stk[p->depth - 1].size : 0;
}

static long sh_find(const pool_t *p, uint64_t off)
{
    for (uint64_t i = 0; i < p->depth; i++)
        if (p->stk[i].off == off && !p->stk[i].dead) return (long)i;
    return -1;
}

/* 0 ok (*at set), else the error the strategy must return */
static int sh_alloc_result(const pool_t *p, uint64_t size, uint64_t align, uint64_t *at)
{
    if (p->top > UINT64_MAX - (align - 1)) return MP_ENOSPACE;
    uint64_t a = (p->top + align - 1) & ~(align - 1);
    if (a > p->cap || size > p->cap - a) return MP_ENOSPACE;
    if (p->depth >= p->maxb) return MP_ENONODES;
    *at = a;
    return MP_OK;
}

static void sh_push(pool_t *p, uint64_t at, uint64_t size)
{
    p->stk[p->depth++] = (ent_t){p->next_id++, at, size, 0};
    p->top = at + size;
}

static int sh_mark_valid(const pool_t *p, const mark_t *m)
{
    if (m->resets != p->resets || m->depth > p->depth) return 0;
    for (uint64_t i = 0; i < m->depth; i++)
        if (p->stk[i].id != m->ids[i]) return 0;
    return 1;
}

/* ---- operations ------------------------------------------------------------------------- */
static void do_alloc(pool_t *p, uint64_t size, uint64_t align)
{
    snprintf(g_op, sizeof g_op, "alloc(%llu, %llu) at top %llu depth %llu", (ull)size,
             (ull)align, (ull)p->top, (ull)p->depth);
    memcpy(p->before, p->st, p->len);
    uint64_t want = 0, off = 0;
    int exp = sh_alloc_result(p, size, align, &want);
    int rc = OPS->alloc(p->st, size, align, &off);
    REQUIRE(rc == exp, "alloc = %d, expected %d", rc, exp);
    if (rc == MP_OK) {
        REQUIRE(off == want, "alloc at %llu, expected %llu", (ull)off, (ull)want);
        sh_push(p, off, size);
        C.alloc_ok++;
    } else {
        require_unchanged(p, "alloc");
        if (rc == MP_ENOSPACE) C.nospace++;
        else C.nonodes++;
    }
    verify(p);
}

static void do_free(pool_t *p, uint64_t i)
{
    ent_t e = p->stk[i];
    snprintf(g_op, sizeof g_op, "free(%llu) [entry %llu of %llu]", (ull)e.off, (ull)i,
             (ull)p->depth);
    REQUIRE(OPS->free(p->st, e.off) == MP_OK, "free");
    if (i + 1 == p->depth) {
        sh_pop_to(p, i);
        C.free_top++;
    } else {
        p->stk[i].dead = 1;
        C.free_dead++;
    }
    verify(p);
}

static void do_bad_free(pool_t *p)
{
    uint64_t off;
    if (p->depth && below(3)) {
        const ent_t *e = &p->stk[below(p->depth)];
        off = e->dead ? e->off : e->off + 1 + below(e->size + 1);
    } else {
        off = below(p->cap + 100);
    }
    if (below(10) == 0) off = UINT64_MAX - below(3);
    if (sh_find(p, off) >= 0) return;
    snprintf(g_op, sizeof g_op, "bad free(%llu)", (ull)off);
    memcpy(p->before, p->st, p->len);
    uint64_t x;
    REQUIRE(OPS->free(p->st, off) == MP_ENOTALLOC, "free of no live range");
    REQUIRE(OPS->size_of(p->st, off, &x) == MP_ENOTALLOC, "size_of of no live range");
    REQUIRE(OPS->realloc(p->st, off, 8, 1, &x) == MP_ENOTALLOC, "realloc of no live range");
    require_unchanged(p, "bad free");
    C.bad_free++;
}

static void do_realloc(pool_t *p, uint64_t i)
{
    ent_t e = p->stk[i];
    uint64_t size = below(4) ? 1 + below(2 * e.size + 64) : 1 + below(p->cap + 10);
    uint64_t align = 1ull << below(8), out = 0;
    snprintf(g_op, sizeof g_op, "realloc(%llu, %llu, %llu) [entry %llu of %llu]", (ull)e.off,
             (ull)size, (ull)align, (ull)i, (ull)p->depth);
    memcpy(p->before, p->st, p->len);
    int rc = OPS->realloc(p->st, e.off, size, align, &out);
    if (i + 1 == p->depth) {
        if (size <= p->cap - e.off) {
            REQUIRE(rc == MP_OK && out == e.off, "realloc of the top in place = %d", rc);
            p->stk[i].size = size;
            p->top = e.off + size;
            C.realloc_top++;
        } else {
            REQUIRE(rc == MP_ENOSPACE, "realloc of the top past the end = %d", rc);
            require_unchanged(p, "realloc");
            C.realloc_fail++;
        }
    } else if (size <= e.size) {
        REQUIRE(rc == MP_OK && out == e.off, "shrink in place = %d", rc);
        p->stk[i].size = size;
        C.realloc_shrink++;
    } else {
        uint64_t at = 0;
        int exp = sh_alloc_result(p, size, align, &at);
        REQUIRE(rc == exp, "realloc moving = %d, expected %d", rc, exp);
        if (rc == MP_OK) {
            REQUIRE(out == at, "moved to %llu, expected %llu", (ull)out, (ull)at);
            sh_push(p, at, size);
            p->stk[i].dead = 1;
            C.realloc_move++;
        } else {
            require_unchanged(p, "realloc (move)");
            C.realloc_fail++;
        }
    }
    verify(p);
}

static void do_mark(pool_t *p)
{
    if (p->nmarks == MAX_MARKS) {
        free(p->marks[0].ids);
        memmove(p->marks, p->marks + 1, (MAX_MARKS - 1) * sizeof(mark_t));
        p->nmarks--;
    }
    mark_t *m = &p->marks[p->nmarks++];
    mp_bump_mark(p->st, &m->token_serial, &m->token_depth);
    m->depth = p->depth;
    m->resets = p->resets;
    m->ids = xmalloc((p->depth + 1) * sizeof(uint64_t));
    for (uint64_t i = 0; i < p->depth; i++) m->ids[i] = p->stk[i].id;
    C.marks++;
}

static void do_rewind(pool_t *p, int k)
{
    mark_t *m = &p->marks[k];
    snprintf(g_op, sizeof g_op, "rewind(mark %d: depth %llu) at depth %llu", k, (ull)m->depth,
             (ull)p->depth);
    int valid = sh_mark_valid(p, m);
    REQUIRE(mp_bump_mark_valid(p->st, m->token_serial, m->token_depth) == valid,
            "mark_valid says %d, the model %d", !valid, valid);
    memcpy(p->before, p->st, p->len);
    int rc = mp_bump_rewind(p->st, m->token_serial, m->token_depth);
    if (valid) {
        REQUIRE(rc == MP_OK, "rewind to a valid mark = %d", rc);
        sh_pop_to(p, m->depth);
        C.rewinds++;
    } else {
        REQUIRE(rc == MP_EINVAL, "rewind to a stale mark = %d", rc);
        require_unchanged(p, "rewind(stale)");
        C.stale++;
    }
    verify(p);
}

static void do_forged_rewind(pool_t *p)
{
    /* tokens that were never handed out: refused unless they name a real position */
    uint64_t serial = rnd() >> below(64), depth = below(p->depth + 3);
    int valid = mp_bump_mark_valid(p->st, serial, depth);
    memcpy(p->before, p->st, p->len);
    int rc = mp_bump_rewind(p->st, serial, depth);
    if (!valid) {
        REQUIRE(rc == MP_EINVAL, "forged rewind = %d", rc);
        require_unchanged(p, "forged rewind");
    } else {
        sh_pop_to(p, depth);
    }
    verify(p);
}

static void do_batch(pool_t *p)
{
    size_t k = 1 + below(10);
    snprintf(g_op, sizeof g_op, "batch of %zu undone", k);
    memcpy(p->before, p->st, p->len);
    mp_head_t saved = *(mp_head_t *)p->st;
    uint64_t offs[16];
    size_t got = 0;
    for (; got < k; got++)
        if (OPS->alloc(p->st, 1 + below(200), 1ull << below(7), &offs[got])) break;
    while (got) REQUIRE(OPS->free(p->st, offs[--got]) == MP_OK, "undo free");
    *(mp_head_t *)p->st = saved;
    require_unchanged(p, "an undone batch");
    verify(p);
    C.batches++;
}

static void do_reset(pool_t *p)
{
    snprintf(g_op, sizeof g_op, "reset");
    OPS->reset(p->st);
    p->depth = 0;
    p->top = 0;
    p->resets++;
    C.resets++;
    verify(p);
}

static void random_ops(pool_t *p, uint64_t steps)
{
    for (uint64_t s = 0; s < steps; s++) {
        uint64_t r = below(100);
        if (r < 32) {
            uint64_t size = below(8) ? 1 + below(p->cap / 16 + 1) : 1 + below(p->cap + 2);
            do_alloc(p, size, below(4) ? 1ull << below(7) : 1ull << below(64));
        } else if (r < 52) {
            if (p->depth) {
                /* mostly the top (the bump pattern), else any live entry */
                uint64_t i = below(2) ? p->depth - 1 : below(p->depth);
                if (!p->stk[i].dead) do_free(p, i);
            }
        } else if (r < 58) {
            do_bad_free(p);
        } else if (r < 66) {
            if (p->depth) {
                uint64_t i = below(2) ? p->depth - 1 : below(p->depth);
                if (!p->stk[i].dead) do_realloc(p, i);
            }
        } else if (r < 74) {
            do_mark(p);
        } else if (r < 86) {
            if (p->nmarks) do_rewind(p, (int)below((uint64_t)p->nmarks));
        } else if (r < 88) {
            do_forged_rewind(p);
        } else if (r < 97) {
            do_batch(p);
        } else {
            do_reset(p);
        }
    }
}

/* one random op on an accepted state: alloc, realloc, mark + rewind, free */
static void accepted_op(const attack_t *a)
{
    const pool_t *p = a->ctx;
    uint64_t off, x, y;
    switch (below(5)) {
    case 0: OPS->alloc(a->buf, 1 + below(100), 1ull << below(6), &off); break;
    case 1: OPS->realloc(a->buf, below(p->cap), 1 + below(100), 1, &off); break;
    case 2:
        mp_bump_mark(a->buf, &x, &y);
        mp_bump_rewind(a->buf, x, y);
        break;
    default: OPS->free(a->buf, below(p->cap)); break;
    }
}

/* fields with no slack: magic .. live of the head; capacity, max_blocks, depth, top of
 * the header */
static uint64_t must_byte(const attack_t *a)
{
    (void)a;
    return below(2) ? below(offsetof(mp_head_t, peak_used)) : sizeof(mp_head_t) + below(32);
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
    double scale = stress_args(argc, argv, "stress_bump", 20240614, &seed);
    clock_t t0 = clock();
    unsigned configs = 0;
    for (uint64_t round = 0; round < 4000 * scale; round++) {
        pool_t p;
        memset(&p, 0, sizeof p);
        p.cap = below(4) ? 1 + below(1 << 12) : 1 + below((uint64_t)1 << 40);
        if (round % 50 == 0) p.cap = UINT64_MAX - below(1000); /* offsets near 2^64 */
        p.maxb = 1 + below(below(4) ? 64 : 512);
        snprintf(g_ctx, sizeof g_ctx, "seed %llu: Bump(%llu, max_blocks=%llu)", (ull)seed,
                 (ull)p.cap, (ull)p.maxb);
        p.len = mp_bump_state_size(p.cap, p.maxb);
        REQUIRE(p.len, "state_size = 0");
        p.st = xmalloc(p.len);
        p.before = xmalloc(p.len);
        p.probe = xmalloc(p.len);
        memset(p.st, 0x5a, p.len);
        REQUIRE(mp_bump_init(p.st, p.cap, p.maxb) == MP_OK, "init");
        p.stk = xmalloc((p.maxb + 1) * sizeof(ent_t));
        p.segcap = 2 * p.maxb + 4;
        p.segs = xmalloc(p.segcap * sizeof(seg_t));
        verify(&p);
        random_ops(&p, 600);
        corruption(&p, 200);
        for (int k = 0; k < p.nmarks; k++) free(p.marks[k].ids);
        free(p.st);
        free(p.before);
        free(p.probe);
        free(p.stk);
        free(p.segs);
        configs++;
    }
    snprintf(g_ctx, sizeof g_ctx, "parameters");
    REQUIRE(mp_bump_state_size(0, 10) == 0 && mp_bump_state_size(10, 0) == 0 &&
                mp_bump_state_size(10, MP_NIL) == 0, "bad parameters accepted");
    printf("  %u pools, %llu verified steps in %.1f s\n", configs, C.steps,
           (double)(clock() - t0) / CLOCKS_PER_SEC);
    printf("  alloc ok %llu nospace %llu nonodes %llu | free top %llu dead %llu cascades %llu "
           "bad %llu\n  realloc top %llu shrink %llu move %llu failed %llu | marks %llu rewinds "
           "%llu stale %llu | batches %llu resets %llu\n",
           C.alloc_ok, C.nospace, C.nonodes, C.free_top, C.free_dead, C.cascades, C.bad_free,
           C.realloc_top, C.realloc_shrink, C.realloc_move, C.realloc_fail, C.marks, C.rewinds,
           C.stale, C.batches, C.resets);
    REQUIRE(C.nospace && C.nonodes && C.cascades && C.realloc_move && C.rewinds && C.stale,
            "a path was never exercised");
    printf("OK\n");
    return 0;
}
