/*
 * stress_grow.c -- growth of the node budget (mp_ops_t.grow_size / grow) and the
 * snapshot hole (mp_ops_t.hole) of TLSF, BestFit, Bump and Heap.  No Python.
 *
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -I src/mempool/_core src/mempool/_core/[a-z]*.c \
 *       tests/c/stress_grow.c -o /tmp/stress_grow && /tmp/stress_grow [seed [scale]]
 *
 * Each strategy starts with a budget of 4 and runs random allocs, frees and reallocs;
 * an MP_ENONODES grows the state into a fresh block (the old one is freed, so ASan sees
 * any read of it) and retries.  Twin (not the Heap: it serves a request from a larger
 * class when its TLSF is out of nodes): the same calls on a state with a budget that
 * never runs out give the same results step by step (offsets, errors), and after every
 * growth the memory maps (walk) of the old and the grown state are equal and check()
 * passes.  The hole of every state is zero-filled in a copy that must check() and walk
 * alike.  grow=False (head.param[MP_PARAM_FIXED]) makes grow_size() 0.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mempool.h"
#include "stress_common.h"

typedef struct seg {
    uint64_t off, size;
    int alloc;
} seg_t;
typedef struct map {
    seg_t *v;
    size_t n, cap;
} map_t;

static int collect(void *ctx, uint64_t off, uint64_t size, int allocated)
{
    map_t *m = ctx;
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 64;
        m->v = realloc(m->v, m->cap * sizeof *m->v);
        if (!m->v) exit(2);
    }
    m->v[m->n++] = (seg_t){off, size, allocated};
    return 0;
}

static map_t walk(const mp_ops_t *ops, const void *st)
{
    map_t m = {0};
    ops->walk(st, collect, &m);
    return m;
}

static void same_map(const mp_ops_t *ops, const void *a, const void *b, const char *what)
{
    map_t x = walk(ops, a), y = walk(ops, b);
    REQUIRE(x.n == y.n, "%s: memory maps differ (%zu vs %zu segments)", what, x.n, y.n);
    for (size_t i = 0; i < x.n; i++)
        REQUIRE(x.v[i].off == y.v[i].off && x.v[i].size == y.v[i].size &&
                    x.v[i].alloc == y.v[i].alloc,
                "%s: segment %zu differs", what, i);
    free(x.v);
    free(y.v);
}

static void checked(const mp_ops_t *ops, const void *st, const char *what)
{
    char msg[256];
    const mp_head_t *h = st;
    if (ops->check(st, h->state_size, msg, sizeof msg)) FAIL("%s: check: %s", what, msg);
}

static uint64_t init(unsigned kind, void **st, uint64_t cap, uint64_t budget)
{
    uint64_t n;
    switch (kind) {
    case MP_KIND_TLSF:
        n = mp_tlsf_state_size(cap, budget);
        *st = xmalloc(n);
        mp_tlsf_init(*st, cap, budget);
        break;
    case MP_KIND_BESTFIT:
        n = mp_bestfit_state_size(cap, budget);
        *st = xmalloc(n);
        mp_bestfit_init(*st, cap, budget);
        break;
    case MP_KIND_BUMP:
        n = mp_bump_state_size(cap, budget);
        *st = xmalloc(n);
        mp_bump_init(*st, cap, budget);
        break;
    default:
        n = mp_heap_state_size(cap, 4096, budget);
        *st = xmalloc(n);
        mp_heap_init(*st, cap, 4096, budget);
        break;
    }
    return n;
}

/* The hole, zero-filled in a copy: the same map, check() clean. */
static void hole_ok(const mp_ops_t *ops, const void *st)
{
    const mp_head_t *h = st;
    uint64_t off = 0, n = ops->hole(st, h->state_size, &off);
    if (!n) return;
    REQUIRE(off <= h->state_size && n <= h->state_size - off, "hole beyond the state");
    char *c = xmalloc(h->state_size);
    memcpy(c, st, h->state_size);
    memset(c + off, 0, n);
    /* a short copy (the snapshot) answers the same hole from its own bytes */
    uint64_t off2 = 0, n2 = ops->hole(c, h->state_size - n, &off2);
    REQUIRE(n2 == n && off2 == off, "a short copy's hole differs");
    checked(ops, c, "zero-filled hole");
    same_map(ops, st, c, "zero-filled hole");
    free(c);
}

static void run(const mp_ops_t *ops, uint64_t cap, int steps)
{
    void *st, *big;
    init(ops->kind, &st, cap, 4);
    init(ops->kind, &big, cap, 1 << 16);
    uint64_t live[512];
    int nlive = 0, grown = 0;
    /* the twin: the same results with a budget that never runs out -- not for the Heap,
     * which serves a request elsewhere (a larger class) when its TLSF is out of nodes */
    int twin = ops->kind != MP_KIND_HEAP;
    for (int step = 0; step < steps; step++) {
        snprintf(g_ctx, sizeof g_ctx, "%s step %d", ops->name, step);
        int r = (int)below(10);
        if (r < 6 || nlive == 0) {
            uint64_t size = 1 + below(below(4) ? 300 : 20000), align = 1ull << below(7);
            uint64_t o1 = 0, o2 = 0;
            snprintf(g_op, sizeof g_op, "alloc(%llu, %llu)", (ull)size, (ull)align);
            int rc = ops->alloc(st, size, align, &o1);
            while (rc == MP_ENONODES) {
                uint64_t n = ops->grow_size(st);
                REQUIRE(n > ((mp_head_t *)st)->state_size, "grow_size %llu", (ull)n);
                void *d = xmalloc(n);
                REQUIRE(ops->grow(st, d, n) == MP_OK, "grow failed");
                checked(ops, d, "grown");
                same_map(ops, st, d, "grown");
                free(st);
                st = d;
                grown++;
                rc = ops->alloc(st, size, align, &o1);
            }
            int rc2 = twin ? ops->alloc(big, size, align, &o2) : rc;
            REQUIRE(rc == rc2 && (rc || !twin || o1 == o2), "alloc: %d/%llu vs %d/%llu", rc,
                    (ull)o1, rc2, (ull)o2);
            if (rc == MP_OK && nlive < 512) live[nlive++] = o1;
            else if (rc == MP_OK) {
                ops->free(st, o1);
                if (twin) ops->free(big, o1);
            }
        } else if (r < 9) {
            int k = (int)below((uint64_t)nlive);
            snprintf(g_op, sizeof g_op, "free(%llu)", (ull)live[k]);
            REQUIRE(ops->free(st, live[k]) == MP_OK && (!twin || ops->free(big, live[k]) == MP_OK),
                    "free");
            live[k] = live[--nlive];
        } else {
            int k = (int)below((uint64_t)nlive);
            uint64_t size = 1 + below(3000), o1 = 0, o2 = 0;
            snprintf(g_op, sizeof g_op, "realloc(%llu, %llu)", (ull)live[k], (ull)size);
            int rc = ops->realloc(st, live[k], size, 1, &o1);
            while (rc == MP_ENONODES) {
                uint64_t n = ops->grow_size(st);
                void *d = xmalloc(n);
                REQUIRE(ops->grow(st, d, n) == MP_OK, "grow failed");
                checked(ops, d, "grown");
                free(st);
                st = d;
                grown++;
                rc = ops->realloc(st, live[k], size, 1, &o1);
            }
            int rc2 = twin ? ops->realloc(big, live[k], size, 1, &o2) : rc;
            REQUIRE(rc == rc2 && (rc || !twin || o1 == o2), "realloc: %d vs %d", rc, rc2);
            if (rc == MP_OK) live[k] = o1;
        }
        if (step % 64 == 0) {
            checked(ops, st, "after a step");
            if (twin) same_map(ops, st, big, "twin");
            hole_ok(ops, st);
        }
    }
    REQUIRE(grown >= 3, "%s grew only %d times", ops->name, grown);
    ((mp_head_t *)st)->param[MP_PARAM_FIXED] = 1;
    REQUIRE(ops->grow_size(st) == 0, "a fixed budget grows");
    printf("  %-8s %d steps, grown %d times to %llu bytes\n", ops->name, steps, grown,
           (ull)((mp_head_t *)st)->state_size);
    free(st);
    free(big);
}

int main(int argc, char **argv)
{
    uint64_t seed;
    double scale = stress_args(argc, argv, "stress_grow", 11, &seed);
    int steps = (int)(6000 * scale);
    const mp_ops_t *all[] = {&mp_tlsf_ops, &mp_bestfit_ops, &mp_bump_ops, &mp_heap_ops};
    for (int k = 0; k < 4; k++) run(all[k], 1 << 22, steps);
    printf("stress_grow ok\n");
    return 0;
}
