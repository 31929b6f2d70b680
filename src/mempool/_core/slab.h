/*
 * slab.h -- internal to slab.c and slab_check.c (not part of the core's API, which
 * is mempool.h): the slab cache's state layout, its accessors and the helpers that
 * both the strategy and its check() use.  slab.c describes the geometry and the
 * placement.
 *
 * State layout (integers only; offsets of the areas are in the header):
 *
 *   +-----------+-----------+--------------------+----------------+----------------+----------------+
 *   | mp_head_t | slab_hdr  | slab_page[npages]  | pool bitmap    | state[nitems]  | stack[nitems]  |
 *   |           | geometry, | kind, used, nfree, | uint64 words,  | uint32 per     | uint32: page   |
 *   |           | counters  | cursor, prev/next, | bit set = page | item           | p's stack is   |
 *   |           |           | items (32 B each)  | in the pool    |                | [p*per, +nfree)|
 *   +-----------+-----------+--------------------+----------------+----------------+----------------+
 *
 *   Item g = p * per + i is at offset p * page_size + i * stride.  state[g]:
 *     0              not carved (i >= cursor) or on a page that is not a slab page
 *     1..item_size   a live single item; the value is the size asked for
 *     FREE | k       a free item, at position k of its page's stack
 *     ARRAY | n      the first of a live in-page array of n >= 2 items
 *     INNER          an item inside such an array (not a valid free() offset)
 *   Page kinds: FREE (in the pool), SLAB (carved into items), RUN (the first page
 *   of a multi-page array: items = n, used = its page count), TAIL (the other
 *   pages of that array: prev = the RUN page).
 *
 * Invariants (mpi_slab_check):
 *  S1. The header matches the geometry of (capacity, param[0] = item_size,
 *      param[1] = page_size), its capacity copy included; state_size matches.
 *  S2. Pool bit p is set <=> page p is FREE; no bit beyond npages; free_pages ==
 *      the number of FREE pages; page_lo == the lowest FREE page (npages: none).
 *  S3. A FREE page is all zero with prev == next == NIL.  A RUN page of n > per items
 *      spans used == ceil(n * stride / page_size) pages inside the span, followed
 *      by used - 1 TAIL pages pointing back at it; every TAIL page belongs to one.
 *  S4. A SLAB page: 1 <= used <= per, cursor <= per, used + nfree == cursor; its
 *      stack entries k < nfree are distinct carved items whose state is FREE | k,
 *      the bottom one not the last carved item (canonical form: it would be uncarved);
 *      stack slots from nfree on are 0; every carved item is free, a live single,
 *      an array start followed by exactly n - 1 INNER items (inside the carved
 *      part), or INNER inside such an array; uncarved items have state 0; the live
 *      items number `used`.
 *  S5. Items and stack slots of pages that are not SLAB pages are 0.
 *  S6. The partial list holds exactly the SLAB pages with used < per, once each,
 *      prev links mirroring next links; pages not in it have prev == next == NIL.
 *  S7. head.live / used / requested equal the ranges found (a single counts
 *      stride / the size asked; an array n * stride / n * item_size); used_items
 *      and run_pages equal the items and pages held; peak_used >= used;
 *      high_water covers every live range and is inside the span.
 */
#ifndef MEMPOOL_SLAB_H
#define MEMPOOL_SLAB_H

#include <stdint.h>

#include "internal.h"

enum { PG_FREE = 0, PG_SLAB = 1, PG_RUN = 2, PG_TAIL = 3 };

#define ST_TAG 0xC0000000u
#define ST_FREE 0x40000000u
#define ST_ARRAY 0x80000000u
#define ST_INNER 0xC0000000u
#define ST_LOW 0x3FFFFFFFu

typedef struct slab_page {
    uint32_t kind;   /* PG_*                                                   */
    uint32_t used;   /* SLAB: live items; RUN: pages of the array              */
    uint32_t nfree;  /* SLAB: items on the stack                               */
    uint32_t cursor; /* SLAB: items [0, cursor) have been carved               */
    uint32_t prev;   /* partial list (SLAB); TAIL: the RUN page; else NIL      */
    uint32_t next;   /* partial list (SLAB); else NIL                          */
    uint64_t items;  /* RUN: items of the array; else 0                        */
} slab_page_t;

typedef struct slab_hdr {
    uint64_t capacity; /* == head.capacity: a flipped capacity is noticed */
    uint64_t item_size, page_size, stride, align, per, npages, nitems, nwords;
    uint64_t off_bitmap, off_state, off_stack; /* byte offsets from the state start */
    uint32_t page_shift, stride_shift;         /* log2 when a power of two, else 64 */
    uint64_t used_items; /* items held by singles and in-page arrays            */
    uint64_t run_pages;  /* pages held by multi-page arrays                     */
    uint64_t free_pages; /* pages in the pool                                   */
    uint32_t partial;    /* first page of the partial list, or NIL              */
    uint32_t page_lo;    /* lowest page in the pool, npages when none           */
} slab_hdr_t;

#define OFF_HDR ((uint64_t)sizeof(mp_head_t))
#define OFF_PAGES (OFF_HDR + (uint64_t)sizeof(slab_hdr_t))
_Static_assert(sizeof(mp_head_t) % 8 == 0, "head is 8-byte aligned");
_Static_assert(sizeof(slab_hdr_t) % 8 == 0, "header is 8-byte aligned");
_Static_assert(sizeof(slab_page_t) == 32, "page record is 32 bytes");

static inline slab_hdr_t *HD(void *st) { return (slab_hdr_t *)((char *)st + OFF_HDR); }
static inline const slab_hdr_t *CHD(const void *st)
{
    return (const slab_hdr_t *)((const char *)st + OFF_HDR);
}
static inline slab_page_t *PAGES(void *st) { return (slab_page_t *)((char *)st + OFF_PAGES); }
static inline const slab_page_t *CPAGES(const void *st)
{
    return (const slab_page_t *)((const char *)st + OFF_PAGES);
}
#define AREA(st, T, off) ((T *)((char *)(st) + (off)))
#define CAREA(st, T, off) ((const T *)((const char *)(st) + (off)))

/* ---- the partial list and the geometry ------------------------------------------ */
/* Is page p in the partial list? */
static inline int in_list(const slab_hdr_t *h, const slab_page_t *pg, uint32_t p)
{
    return pg[p].prev != MP_NIL || h->partial == p;
}

static inline uint64_t item_offset(const slab_hdr_t *h, uint64_t p, uint64_t i)
{
    return p * h->page_size + i * h->stride;
}

/* Pages that hold `bytes` (no overflow near 2^64). */
static inline uint64_t pages_for(const slab_hdr_t *h, uint64_t bytes)
{
    return bytes / h->page_size + (bytes % h->page_size != 0);
}

/* The most items a multi-page array can have: it spans whole pages, the bytes after
 * the last item of each page included, so it may hold more than npages * per. */
static inline uint64_t max_run_items(const slab_hdr_t *h)
{
    return h->npages * h->page_size / h->stride;
}

/* ---- defined in slab.c and slab_check.c ----------------------------------------- */
/* The geometry of (capacity, item_size, page_size) into *g and the state size, or
 * MP_EINVAL with the first rule the parameters break written into msg (when msg). */
int mpi_slab_geometry(uint64_t capacity, uint64_t item_size, uint64_t page_size, slab_hdr_t *g,
                  uint64_t *state_size, char *msg, size_t msglen);

/* check(): every invariant above (slab_check.c). */
int mpi_slab_check(const void *st, uint64_t len, char *msg, size_t msglen);

#endif /* MEMPOOL_SLAB_H */
