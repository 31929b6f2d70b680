/*
 * buddy.h -- internal to buddy.c and buddy_check.c (not part of the core's API,
 * which is mempool.h): the buddy allocator's state layout, its accessors and the
 * bitmap helpers that both the strategy and its check() use.  buddy.c describes
 * the algorithm.
 *
 * State layout (all integers; after mp_head_t):
 *
 *   +-------------+--------------------+------------------+-------------+-------------+
 *   | bd_hdr_t    | bd_class_t cls[K]  | words[nwords]    | req[nslots] | tag[nslots] |
 *   | (counters,  | (bits, levels,     | free bitmaps:    | uint64_t    | uint8_t,    |
 *   |  the chain) |  level offsets)    | per class/level  |             | padded to 8 |
 *   +-------------+--------------------+------------------+-------------+-------------+
 *
 *   A slot is a min_block-sized unit of the span (slot j = offset j*min_block).
 *   Class k's free set is a hierarchical bitmap: level 0 has bit i set when
 *   block (k, i) is free; bit w of level l+1 is set when word w of level l is
 *   non-zero; the top level is one word.  Lowest free block: descend from the
 *   top with count-trailing-zeros (O(levels) = O(log64 n)).  hdr.nonempty has
 *   bit k set when class k has a free block.  tag[j] = k+1 when an allocated
 *   block of class k starts at slot j (0 otherwise) and req[j] is the size asked
 *   for it (0 otherwise).
 *
 * Invariants (checked by mpi_buddy_check, buddy_check.c):
 *  B1. The header and class table equal what the parameters (head.param[0..3]:
 *      capacity, min_block, max_block, fanout) give; head.capacity is the usable
 *      span; state_size matches; head.cursor and param[4..5] are 0 (unused).
 *  B2. Level 0 of class k has no bits at or beyond nbits(k); bit w of level l+1
 *      is set iff word w of level l is non-zero (no other bits); hdr.nfree == the
 *      level-0 bits of all classes (+ the chain's blocks); hdr.nonempty bit k iff
 *      class k has one (or a chain block), no bits at or above K.
 *  B3. The allocated blocks (tags) and the free blocks (bits) tile the usable
 *      span exactly: every block lies inside it and is aligned to its size; no
 *      slot inside a block carries a tag, a request or another block's bit.
 *  B4. No fanout siblings of a class below K-1 are all free (merged on free).
 *  B5. 1 <= req[j] <= size(class) for every allocated block; head.live, used
 *      (sum of class sizes) and requested (sum of req) equal what the walk finds;
 *      peak_used >= used, high_water <= capacity.
 *  B6. The pending chain (see materialize(), buddy.c): none, and its record is zero; or
 *      chain_k0 < chain_top < K, chain_slot is a class chain_top block position whose
 *      slot holds the allocated class-chain_k0 bottom block, its blocks are in no
 *      bitmap but counted in nfree and nonempty (B2 and B3 count them), and
 *      chain_prev equals the bitmaps' non-empty bits of classes chain_k0..top-1.
 */
#ifndef MEMPOOL_BUDDY_H
#define MEMPOOL_BUDDY_H

#include <stdint.h>

#include "internal.h"

enum { BD_MAX_LEVELS = 6, BD_MAX_CLASSES = 64 };
#define BD_MAX_SLOTS ((uint64_t)1 << 36) /* 6 levels of 64-bit words */

typedef struct bd_class {
    uint64_t nbits;               /* blocks of this class inside the usable span */
    uint64_t lvl[BD_MAX_LEVELS];  /* word offset of each level in words[]        */
    uint32_t nlevels;             /* levels; the last has exactly one word       */
    uint32_t pad;
} bd_class_t;
_Static_assert(sizeof(bd_class_t) == 64, "class entries are indexed by shifting");

typedef struct bd_hdr {
    uint32_t min_shift; /* log2(min_block)                                  */
    uint32_t fan_shift; /* log2(fanout)                                     */
    uint32_t nclasses;  /* K                                                */
    uint32_t pad;
    uint64_t nslots;    /* usable / min_block                               */
    uint64_t nonempty;  /* bit k: class k has a free block                  */
    uint64_t nfree;     /* free blocks in all classes                       */
    uint64_t nwords;    /* words of the bitmap area                         */
    uint64_t words_off; /* byte offsets from the start of the state         */
    uint64_t req_off;
    uint64_t tag_off;
    /* the pending split chain (all 0 when there is none) */
    uint32_t chain_k0;   /* class of its allocated bottom block              */
    uint32_t chain_top;  /* class of the block it was split from (> chain_k0) */
    uint64_t chain_slot; /* slot of the bottom block (= of the split block)  */
    uint64_t chain_prev; /* hdr.nonempty bits of classes chain_k0..top-1 before it */
} bd_hdr_t;

#define BD_HDR_OFF ((uint64_t)sizeof(mp_head_t))
#define BD_CLS_OFF (BD_HDR_OFF + (uint64_t)sizeof(bd_hdr_t))

/* What the parameters give: everything check() compares the state against. */
typedef struct bd_plan {
    uint64_t usable, nslots, nwords, words_off, req_off, tag_off, size, max_block;
    uint32_t min_shift, fan_shift, nclasses;
    bd_class_t cls[BD_MAX_CLASSES];
} bd_plan_t;

static inline int ctz64(uint64_t x) { return __builtin_ctzll(x); }
static inline uint64_t words_for(uint64_t bits) { return (bits + 63) >> 6; }

/* 0 when the parameters are invalid; max_block 0 = the largest class that fits. */
int mpi_buddy_make_plan(uint64_t capacity, uint64_t min_block, uint64_t max_block, uint64_t fanout,
                    bd_plan_t *P);

/* ---- accessors --------------------------------------------------------------------- */
static inline bd_hdr_t *hdr(void *st) { return (bd_hdr_t *)((char *)st + BD_HDR_OFF); }
static inline const bd_hdr_t *chdr(const void *st)
{
    return (const bd_hdr_t *)((const char *)st + BD_HDR_OFF);
}
static inline bd_class_t *cls(void *st) { return (bd_class_t *)((char *)st + BD_CLS_OFF); }
static inline const bd_class_t *ccls(const void *st)
{
    return (const bd_class_t *)((const char *)st + BD_CLS_OFF);
}
static inline uint64_t *words(void *st) { return (uint64_t *)((char *)st + hdr(st)->words_off); }
static inline const uint64_t *cwords(const void *st)
{
    return (const uint64_t *)((const char *)st + chdr(st)->words_off);
}
static inline uint64_t *reqs(void *st) { return (uint64_t *)((char *)st + hdr(st)->req_off); }
static inline const uint64_t *creqs(const void *st)
{
    return (const uint64_t *)((const char *)st + chdr(st)->req_off);
}
static inline uint8_t *tags(void *st) { return (uint8_t *)st + hdr(st)->tag_off; }
static inline const uint8_t *ctags(const void *st)
{
    return (const uint8_t *)st + chdr(st)->tag_off;
}
static inline uint32_t cshift(const bd_hdr_t *x, uint32_t k) { return k * x->fan_shift; }
static inline uint64_t csize(const bd_hdr_t *x, uint32_t k)
{
    return (uint64_t)1 << (x->min_shift + k * x->fan_shift);
}

/* ---- hierarchical bitmaps -------------------------------------------------------- */
static inline int hb_test(const uint64_t *w, const bd_class_t *c, uint64_t i)
{
    return (int)((w[c->lvl[0] + (i >> 6)] >> (i & 63)) & 1);
}

static inline uint64_t range_mask(uint64_t from, uint64_t n) /* bits [from&63, +n) of one word */
{
    uint64_t m = n >= 64 ? ~0ull : (((uint64_t)1 << n) - 1);
    return m << (from & 63);
}

/* Set bits in [from, from+n).  `static`, not `static inline`, as it was in buddy.c:
 * marked inline, GCC folds it into release() and the free path's code changes.  (Both
 * files that include this header use it, so it draws no unused-function warning.) */
static uint64_t hb_count_range(const uint64_t *w, const bd_class_t *c, uint64_t from, uint64_t n)
{
    uint64_t total = 0;
    while (n) {
        uint64_t k = 64 - (from & 63);
        if (k > n) k = n;
        total += (uint64_t)__builtin_popcountll(w[c->lvl[0] + (from >> 6)] & range_mask(from, k));
        from += k;
        n -= k;
    }
    return total;
}

/* The hdr.nonempty bits of classes k0..top-1 (of a pending split chain: buddy.c). */
static inline uint64_t chain_mask(uint32_t k0, uint32_t top)
{
    return (((uint64_t)1 << (top - k0)) - 1) << k0;
}

/* ---- defined in buddy.c and buddy_check.c ---------------------------------------- */
/* The class of the free block that starts at slot j, or -1. */
int mpi_buddy_free_class_at(const void *st, uint64_t j);

/* check(): every invariant above (buddy_check.c). */
int mpi_buddy_check(const void *st, uint64_t len, char *msg, size_t msglen);

#endif /* MEMPOOL_BUDDY_H */
