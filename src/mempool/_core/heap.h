/*
 * heap.h -- internal to heap.c and heap_check.c (not part of the API: see
 * mempool.h): the Heap's state layout, its constants and the small accessors
 * both files use.  heap.c holds the strategy (routing, pages, slab classes,
 * fragments, the hot paths) and the ops table; heap_check.c walks the memory
 * map (segments, free_ranges, largest_free) and validates a state.
 *
 * State layout (all integers; offsets in bytes from the start of the block):
 *
 *   +-----------+------------+-------------+-------------------------+-----------+--------+
 *   | mp_head_t | heap_ctl_t | slot[]      | page records            | waste[]   | TLSF   |
 *   |           | classes,   | uint32 per  | rec_words uint64 each   | uint8 per | sub-   |
 *   |           | fragment   | slot: owner | (whole cache lines), one| 16 B of   | state  |
 *   |           | buckets,   | | start<<16 | per slot: links, counts,| the span  | (its   |
 *   |           | spare      |             | summary, bitmap         |           |  head) |
 *   +-----------+------------+-------------+-------------------------+-----------+--------+
 *                               pt_off       rec_off (64-aligned)      waste_off  tlsf_off
 *
 *   slot[s] = owner | start << 16 of the page that starts in slot s (start = page
 *   offset - s * P, < P), 0 when none; both probes of a lookup stay in this table.
 *   page record: w0 = prev | next << 32 (list links, MP_NIL), w1 = nfree |
 *   maxrun << 16, w2 = summary (slab: bit w set <=> bitmap word w has a free item),
 *   then bm_words (= P / 1024) bitmap words, then zero padding:
 *     slab page: bit i = item i allocated; bits past the item count in the last
 *                used word are set (padding), words past it are 0;
 *     frag page: words [0, groups) = fragment allocated (padding bits past the
 *                page's fragments set), words [groups, 2 groups) = a run starts here;
 *     slot with no page: all zero, links MP_NIL.
 *   waste[off / 16] = size_of - requested of the live slab item or fragment run that
 *   starts at `off` (0..255), so requested stays exact through free and realloc.
 */
#ifndef MEMPOOL_HEAP_H
#define MEMPOOL_HEAP_H

#include "internal.h"

/* ---- constants ------------------------------------------------------------------- */
enum {
    NCLASS = 16,     /* slab classes 1..16: 16 .. 256 bytes            */
    SMALL_MAX = 256, /* largest slab size                              */
    FRAG = 256,      /* fragment size                                  */
    FRAG_OWNER = NCLASS + 1,
    GROUP_FRAGS = 64, /* fragments per group (one bitmap word)         */
    NMAX = 16,        /* longest run served by fragments (4 KiB)       */
    MIN_PAGE_SHIFT = 12,
    MAX_PAGE_SHIFT = 16,
};

typedef struct heap_class {
    uint32_t head;  /* first partial page, MP_NIL                    */
    uint32_t pad;
    uint32_t size;  /* item size in bytes                            */
    uint32_t count; /* items per page                                */
} heap_class_t;

typedef struct heap_ctl {
    uint32_t page_shift;
    uint32_t npages;     /* page slots = page table entries (ceil)    */
    uint32_t rec_words;  /* uint64 words per page record              */
    uint32_t bm_words;   /* bitmap words per record                   */
    uint32_t groups;     /* fragment groups per page                  */
    uint32_t nfrags;     /* fragments per page                        */
    uint32_t frag_max_n; /* longest fragment run served               */
    uint32_t fbits;      /* bit b set: fragment bucket b non-empty    */
    uint64_t pt_off, rec_off, waste_off, tlsf_off, tlsf_size;
    uint32_t spare;      /* the one empty page kept, MP_NIL           */
    uint32_t fhead[NMAX + 1];
    heap_class_t cls[NCLASS + 1]; /* [0] unused */
} heap_ctl_t;

#define CTL_OFF ((uint64_t)sizeof(mp_head_t))
#define REC_HDR 3u /* header words of a page record */

/* The embedded TLSF's table: the raw one, so that MP_DEBUG builds check the Heap's
 * state (its own check covers the TLSF's) once per Heap call, not after each TLSF call. */
#define TLSF_OPS MPI_RAW_OPS(tlsf)

/* ---- layout ---------------------------------------------------------------------- */
static inline mp_head_t *H(void *st) { return (mp_head_t *)st; }
static inline heap_ctl_t *CT(void *st) { return (heap_ctl_t *)((char *)st + CTL_OFF); }
static inline const heap_ctl_t *CCT(const void *st)
{
    return (const heap_ctl_t *)((const char *)st + CTL_OFF);
}
/* the slot table: per slot, owner | start << 16 of the page that starts there */
static inline uint32_t *PT(void *st, const heap_ctl_t *c)
{
    return (uint32_t *)((char *)st + c->pt_off);
}
static inline const uint32_t *CPT(const void *st, const heap_ctl_t *c)
{
    return (const uint32_t *)((const char *)st + c->pt_off);
}
static inline uint32_t e_owner(uint32_t e) { return e & 0xff; }
static inline uint32_t e_start(uint32_t e) { return e >> 16; }
static inline uint64_t *REC(void *st, const heap_ctl_t *c, uint32_t p)
{
    return (uint64_t *)((char *)st + c->rec_off) + (uint64_t)p * c->rec_words;
}
static inline const uint64_t *CREC(const void *st, const heap_ctl_t *c, uint32_t p)
{
    return (const uint64_t *)((const char *)st + c->rec_off) + (uint64_t)p * c->rec_words;
}
static inline uint8_t *WASTE(void *st, const heap_ctl_t *c) { return (uint8_t *)st + c->waste_off; }
static inline const uint8_t *CWASTE(const void *st, const heap_ctl_t *c)
{
    return (const uint8_t *)st + c->waste_off;
}
static inline void *SUB(void *st, const heap_ctl_t *c) { return (char *)st + c->tlsf_off; }
static inline const void *CSUB(const void *st, const heap_ctl_t *c)
{
    return (const char *)st + c->tlsf_off;
}

/* record header accessors */
static inline uint32_t r_prev(const uint64_t *r) { return (uint32_t)r[0]; }
static inline uint32_t r_next(const uint64_t *r) { return (uint32_t)(r[0] >> 32); }
static inline void r_links(uint64_t *r, uint32_t prev, uint32_t next)
{
    r[0] = prev | (uint64_t)next << 32;
}
static inline void r_set_prev(uint64_t *r, uint32_t prev) { r[0] = (r[0] & ~0xffffffffull) | prev; }
static inline void r_set_next(uint64_t *r, uint32_t next)
{
    r[0] = (r[0] & 0xffffffffull) | (uint64_t)next << 32;
}
static inline uint32_t r_nfree(const uint64_t *r) { return (uint32_t)(r[1] & 0xffff); }
static inline uint32_t r_maxrun(const uint64_t *r) { return (uint32_t)((r[1] >> 16) & 0xffff); }
static inline void r_counts(uint64_t *r, uint32_t nfree, uint32_t maxrun)
{
    r[1] = nfree | (uint64_t)maxrun << 16;
}
static inline void r_set_nfree(uint64_t *r, uint32_t nfree) { r[1] = (r[1] & ~0xffffull) | nfree; }
/* where the page that starts in slot p starts */
static inline uint64_t page_base(const void *st, const heap_ctl_t *c, uint32_t p)
{
    return ((uint64_t)p << c->page_shift) + e_start(CPT(st, c)[p]);
}

static inline uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

typedef struct layout {
    uint32_t page_shift, npages, rec_words, bm_words, groups, nfrags, frag_max_n;
    uint64_t pt_off, rec_off, waste_off, tlsf_off, tlsf_size, total;
} layout_t;

/* The layout the parameters give (0 when they are invalid). */
int mpi_heap_layout(uint64_t capacity, uint64_t page_size, uint64_t max_blocks, layout_t *L);

/* ---- page helpers (the strategy, the walk and the check) ------------------------- */
static inline int have_spares(const heap_ctl_t *c) { return c->spare != MP_NIL; }

/* A page of `owner` starts at a multiple of this: the largest power of two that
 * divides the class size (its items are aligned to it), 256 for fragments. */
static inline uint64_t page_align(uint32_t owner)
{
    return owner <= NCLASS ? (uint64_t)1 << (4 + __builtin_ctz(owner)) : FRAG;
}

/* min(longest run of set bits, cap) */
static inline uint32_t longest_run(uint64_t x, uint32_t cap)
{
    uint32_t r = 0;
    while (x && r < cap) {
        r++;
        x &= x >> 1;
    }
    return r;
}

static inline uint32_t page_maxrun(const heap_ctl_t *c, const uint64_t *r)
{
    uint32_t best = 0;
    for (uint32_t g = 0; g < c->groups && best < c->frag_max_n; g++) {
        uint32_t m = longest_run(~r[REC_HDR + g], c->frag_max_n);
        if (m > best) best = m;
    }
    return best;
}

/* Padding bits of a fragment group (pages of fewer than 64 fragments). */
static inline uint64_t frag_pad(const heap_ctl_t *c)
{
    return c->nfrags < GROUP_FRAGS ? ~0ull << c->nfrags : 0;
}

/* ---- heap_check.c: the memory map and the check --------------------------------- */
int mpi_heap_walk(const void *st, mp_walk_fn fn, void *ctx);
uint64_t mpi_heap_free_ranges(const void *st);
uint64_t mpi_heap_largest_free(const void *st);
int mpi_heap_check(const void *st, uint64_t len, char *msg, size_t msglen);

#endif /* MEMPOOL_HEAP_H */
