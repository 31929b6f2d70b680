/*
 * heap.c -- a general-purpose heap in one span: slab classes for small sizes, a
 * bitmap of 256-byte fragments for page fragments, TLSF for the rest (tsload's
 * segment: heap, SLAB and page-frag under one malloc; its defects fixed).
 *
 * Routing of alloc(size, align) (align a power of two, size >= 1):
 *   - SLAB class k (1..16, item size 16k): size <= 256 and align <= 256, with
 *     k = round_up(size, max(align, 16)) / 16.  A page of class k starts at a
 *     multiple of the largest power of two dividing 16k, and its items sit at
 *     page + i * 16k, so they are aligned to that power (>= 16, and >= align by
 *     the choice of k).
 *   - FRAG n (a run of n 256-byte fragments, 256-aligned): 256 < size and
 *     align <= 256 and n = ceil(size / 256) <= frag_max_n, when the rounding wastes
 *     at most 1/8 of the request (n * 256 - size <= size / 8; other sizes pack
 *     better in the TLSF).  frag_max_n = min(16, page_size / 1024) fragments: 4 KiB
 *     for pages of 16 KiB and more, 1 KiB for the default 4 KiB pages.  A run never
 *     crosses a 64-fragment (16 KiB) group of its page.
 *   - TLSF (exact size, any alignment): everything else.
 *   A SLAB or FRAG request that finds no room in its pages takes a page from the
 *   TLSF; when the TLSF cannot give one, the request goes to the TLSF directly
 *   (exactly sized); when that fails too, to a larger class or a fragment run
 *   that has room (the rounding stays < 256 B).  So every alloc(size) with
 *   size <= largest_free succeeds.
 *
 * Pages.  The embedded TLSF manages the whole span.  A page is a TLSF allocation
 * of page_size (P) bytes aligned to what its owner needs (the class's item
 * alignment, 256 for fragments): pages do not start at multiples of P, because
 * TLSF's aligned search would then skip the free ranges low in the span and
 * raise the high-water mark.  The span is cut into slots of P bytes; slot[s]
 * names the owner of the page that STARTS in slot s (0 = none, 1..16 = class,
 * 17 = fragments) and where it starts, so free / realloc / size_of
 * route by offset alone: the page holding `off` starts in slot off / P or the
 * one before; an offset in no page belongs to the TLSF, whose own offset lookup
 * finds (or refuses) it.  A page whose items are all free goes back to the TLSF,
 * except for ONE spare: the page emptied last is kept (the previous spare goes
 * back), and the next owner that needs a page takes it (set up again when
 * another owner left it, if it is aligned enough), so an alloc/free pair does
 * not take and give back a page each time.  The spare goes back when a TLSF
 * allocation fails (then it is retried), when the last live range is freed
 * and the spare is not at offset 0 (alone in an empty span it would cut the
 * TLSF's one free range in two, and good fit would then build up from whichever
 * part is smaller), and on reset().  Because of that retry,
 * largest_free counts the spare as free, and segments() reports it as free:
 * keeping or releasing the spare is invisible in stats() and segments().
 *
 * realloc: a slab item stays in place when the new size maps to the same class,
 * else it moves (the new range is allocated first, then the old one freed; the
 * caller copies); a fragment run shrinks in place (the tail fragments go back)
 * and grows in place into free fragments that follow it in its group, else it
 * moves; a TLSF range moves into a class or fragment run when the new size maps
 * there and they have room, else it uses the TLSF's realloc (in place when it
 * can).  requested follows the new size exactly (tsload's realloc never shrank
 * and leaked a block on every call).
 *
 * Costs: alloc, free, realloc and size_of are O(1) (bit scans over a page's
 * bitmap words, the TLSF's O(1) for pages and large ranges).  segments(),
 * free_ranges (stats) and check() walk the TLSF's ranges and the pages;
 * largest_free walks the TLSF's ranges while a spare page exists (to merge it
 * with its free neighbours), else it is the TLSF's O(1) answer.
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
 *
 * Invariants (checked by heap_check, after the TLSF sub-state's own check):
 *  H1. head, params and the derived layout agree (page size a power of two in
 *      [4 KiB, 64 KiB]); the TLSF sub-state's capacity and max_blocks are the Heap's.
 *  H2. slot[s] has an owner <=> the TLSF has an allocated range of exactly P
 *      bytes at s * P + start (start < P, aligned for the owner, the page inside
 *      the span); owner <= 17, no other bits; a slot without an owner is 0.  (The
 *      TLSF's ranges are disjoint, so pages do not overlap.)
 *  H3. a slab page of class k: bitmap as described, nfree = item count - live
 *      items, summary exactly the words with a free item; a fragment page: run
 *      starts on allocated fragments, every allocated fragment after a free one
 *      starts a run, runs <= frag_max_n, nfree = free fragments, maxrun =
 *      min(longest free run in a group, frag_max_n) (frag_max_n when empty).
 *  H4. class k's list holds exactly its pages with 0 < nfree < count (prev links
 *      mirror next); fragment bucket b (1..frag_max_n) holds exactly the partial
 *      fragment pages with maxrun b, and bit b of fbits <=> bucket b is non-empty.
 *      The spare is MP_NIL or an empty page in no list, and it is the only empty page.
 *  H5. live = live items + fragment runs + TLSF ranges that are not pages; used =
 *      their size_of sum; requested = used - the waste of live items and runs
 *      (TLSF ranges are exact); every waste < its range's size; peak_used >= used;
 *      every range the TLSF handed out but the spare ends at or below
 *      high_water <= capacity (alloc_many undoes a failed batch by restoring the
 *      head: a page the batch took may be left as the spare).
 */
#include <stdio.h>
#include <string.h>

#include "mempool.h"

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

/* ceil(2^24 / k): item index = (rel / 16) * INV[k] >> 24, exact for rel < 64 KiB */
#define INVK(k) ((((uint32_t)1 << 24) + (k) - 1) / (k))
static const uint32_t INV[NCLASS + 1] = {0,        INVK(1),  INVK(2),  INVK(3),  INVK(4),
                                         INVK(5),  INVK(6),  INVK(7),  INVK(8),  INVK(9),
                                         INVK(10), INVK(11), INVK(12), INVK(13), INVK(14),
                                         INVK(15), INVK(16)};

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

static int compute_layout(uint64_t capacity, uint64_t page_size, uint64_t max_blocks,
                          layout_t *L)
{
    if (capacity == 0 || !mp_is_pow2(page_size)) return 0;
    if (page_size < ((uint64_t)1 << MIN_PAGE_SHIFT) || page_size > ((uint64_t)1 << MAX_PAGE_SHIFT))
        return 0;
    uint64_t tsz = mp_tlsf_state_size(capacity, max_blocks);
    if (tsz == 0) return 0;
    uint32_t shift = (uint32_t)__builtin_ctzll(page_size);
    uint64_t npages = (capacity >> shift) + ((capacity & (page_size - 1)) != 0);
    if (npages >= MP_NIL) return 0;
    memset(L, 0, sizeof *L);
    L->page_shift = shift;
    L->npages = (uint32_t)npages;
    L->bm_words = (uint32_t)(page_size / 1024);
    L->rec_words = (REC_HDR + L->bm_words + 7) & ~7u; /* whole cache lines */
    L->nfrags = (uint32_t)(page_size / FRAG);
    L->groups = L->nfrags > GROUP_FRAGS ? L->nfrags / GROUP_FRAGS : 1;
    L->frag_max_n = L->nfrags / 4 < NMAX ? L->nfrags / 4 : NMAX;
    uint64_t off = CTL_OFF + ((sizeof(heap_ctl_t) + 7) & ~(uint64_t)7);
    L->pt_off = off;
    off += (npages * 4 + 7) & ~(uint64_t)7;
    off = align_up(off, 64);
    L->rec_off = off;
    off += npages * L->rec_words * 8;
    L->waste_off = off;
    off += ((capacity + 15) / 16 + 7) & ~(uint64_t)7;
    off = align_up(off, 64);
    L->tlsf_off = off;
    L->tlsf_size = tsz;
    L->total = off + tsz;
    if (L->total < off) return 0;
    return 1;
}

uint64_t mp_heap_default_max_blocks(uint64_t capacity)
{
    uint64_t n = capacity / 512;
    if (n < 1024) n = 1024;
    if (n > ((uint64_t)1 << 20)) n = (uint64_t)1 << 20;
    if (n > capacity) n = capacity;
    return n;
}

uint64_t mp_heap_state_size(uint64_t capacity, uint64_t page_size, uint64_t max_blocks)
{
    layout_t L;
    return compute_layout(capacity, page_size, max_blocks, &L) ? L.total : 0;
}

static void heap_reset(void *st);

int mp_heap_init(void *st, uint64_t capacity, uint64_t page_size, uint64_t max_blocks)
{
    layout_t L;
    if (!compute_layout(capacity, page_size, max_blocks, &L)) return MP_EINVAL;
    memset(st, 0, L.tlsf_off);
    mp_head_t *h = H(st);
    h->magic = MP_STATE_MAGIC;
    h->kind = MP_KIND_HEAP;
    h->version = MP_STATE_VERSION;
    h->state_size = L.total;
    h->capacity = capacity;
    h->param[0] = page_size;
    h->param[1] = max_blocks;
    heap_ctl_t *c = CT(st);
    c->page_shift = L.page_shift;
    c->npages = L.npages;
    c->rec_words = L.rec_words;
    c->bm_words = L.bm_words;
    c->groups = L.groups;
    c->nfrags = L.nfrags;
    c->frag_max_n = L.frag_max_n;
    c->pt_off = L.pt_off;
    c->rec_off = L.rec_off;
    c->waste_off = L.waste_off;
    c->tlsf_off = L.tlsf_off;
    c->tlsf_size = L.tlsf_size;
    for (uint32_t k = 1; k <= NCLASS; k++) {
        c->cls[k].size = 16 * k;
        c->cls[k].count = (uint32_t)(page_size / (16 * k));
    }
    for (uint32_t p = 0; p < L.npages; p++) r_links(REC(st, c, p), MP_NIL, MP_NIL);
    int rc = mp_tlsf_init(SUB(st, c), capacity, max_blocks);
    if (rc) return rc;
    heap_reset(st);
    return MP_OK;
}

/* The page that holds `off` (the slot its start is in), or MP_NIL; *rel = off's
 * distance from the page start, *owner = its owner.  A page starts in slot s at
 * s * P + start and ends in slot s + 1, so only slots s and s - 1 can hold it. */
static inline uint32_t page_of(const void *st, const heap_ctl_t *c, uint64_t off, uint64_t *rel,
                               uint32_t *owner)
{
    uint64_t s = off >> c->page_shift;
    if (s >= c->npages) return MP_NIL;
    uint64_t in = off & (((uint64_t)1 << c->page_shift) - 1);
    const uint32_t *pt = CPT(st, c);
    uint32_t e = pt[s];
    if (e && in >= e_start(e)) {
        *rel = in - e_start(e);
        *owner = e_owner(e);
        return (uint32_t)s;
    }
    if (s && (e = pt[s - 1]) != 0 && in < e_start(e)) {
        *rel = in + ((uint64_t)1 << c->page_shift) - e_start(e);
        *owner = e_owner(e);
        return (uint32_t)s - 1;
    }
    return MP_NIL;
}

/* ---- routing ------------------------------------------------------------------- */
enum { R_SLAB, R_FRAG, R_TLSF };

/* Where a request goes; *arg = class (SLAB) or fragments (FRAG). */
static inline int route(const heap_ctl_t *c, uint64_t size, uint64_t align, uint32_t *arg)
{
    if (align <= 16) {
        if (size <= SMALL_MAX) {
            *arg = (uint32_t)((size + 15) >> 4);
            return R_SLAB;
        }
    } else if (align <= SMALL_MAX) {
        if (size <= SMALL_MAX) { /* align_up(size, align) <= 256 */
            *arg = (uint32_t)(align_up(size, align) >> 4);
            return R_SLAB;
        }
    } else {
        return R_TLSF;
    }
    if (size <= (uint64_t)c->frag_max_n * FRAG) {
        uint32_t n = (uint32_t)((size + FRAG - 1) / FRAG);
        if (((uint64_t)n * FRAG - size) * 8 <= size) {
            *arg = n;
            return R_FRAG;
        }
    }
    return R_TLSF;
}

int mp_heap_size_class(const void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    uint32_t arg;
    int r = route(CCT(st), size, align, &arg);
    *out = r == R_SLAB ? (uint64_t)arg * 16 : r == R_FRAG ? (uint64_t)arg * FRAG : size;
    return MP_OK;
}

/* ---- counters ------------------------------------------------------------------- */
static inline void note_alloc(mp_head_t *h, uint64_t used, uint64_t requested)
{
    h->used += used;
    h->requested += requested;
    h->live++;
    if (h->used > h->peak_used) h->peak_used = h->used;
}

/* ---- pages ---------------------------------------------------------------------- */
static void release_spares(void *st);

static inline int have_spares(const heap_ctl_t *c) { return c->spare != MP_NIL; }

/* A TLSF allocation for the heap; on failure, the spares go back and it is retried. */
static int sub_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    heap_ctl_t *c = CT(st);
    int rc = mp_tlsf_ops.alloc(SUB(st, c), size, align, out);
    if (rc && have_spares(c)) {
        release_spares(st);
        rc = mp_tlsf_ops.alloc(SUB(st, c), size, align, out);
    }
    if (rc == MP_OK && *out + size > H(st)->high_water) H(st)->high_water = *out + size;
    return rc;
}

/* A page of `owner` starts at a multiple of this: the largest power of two that
 * divides the class size (its items are aligned to it), 256 for fragments. */
static inline uint64_t page_align(uint32_t owner)
{
    return owner <= NCLASS ? (uint64_t)1 << (4 + __builtin_ctz(owner)) : FRAG;
}

/* Set page p (starting at off, in no list) up, empty, for `owner`. */
static void page_setup(void *st, uint32_t p, uint64_t off, uint32_t owner)
{
    heap_ctl_t *c = CT(st);
    uint64_t psz = (uint64_t)1 << c->page_shift;
    PT(st, c)[p] = owner | (uint32_t)(off & (psz - 1)) << 16;
    uint64_t *r = REC(st, c, p);
    memset(r, 0, (size_t)c->rec_words * 8);
    r_links(r, MP_NIL, MP_NIL);
    if (owner <= NCLASS) {
        uint32_t count = c->cls[owner].count;
        uint32_t nw = (count + 63) / 64;
        r_counts(r, count, 0);
        r[2] = nw == 64 ? ~0ull : (((uint64_t)1 << nw) - 1);
        if (count & 63) r[REC_HDR + nw - 1] = ~0ull << (count & 63);
    } else {
        if (c->nfrags < GROUP_FRAGS) r[REC_HDR] = ~0ull << c->nfrags;
        r_counts(r, c->nfrags, c->frag_max_n);
        r[2] = 0;
    }
}

/* An empty page for `owner`: the spare (set up again when another owner left it
 * and it is aligned enough), else a new one from the TLSF; MP_NIL when there is
 * none. */
static uint32_t page_take(void *st, uint32_t owner)
{
    heap_ctl_t *c = CT(st);
    uint64_t psz = (uint64_t)1 << c->page_shift, off;
    uint32_t p = c->spare;
    if (p != MP_NIL) {
        off = page_base(st, c, p);
        if (e_owner(PT(st, c)[p]) == owner || off % page_align(owner) == 0) {
            if (e_owner(PT(st, c)[p]) != owner) page_setup(st, p, off, owner);
            c->spare = MP_NIL;
            /* handed out again (high_water may have been restored below it) */
            if (off + psz > H(st)->high_water) H(st)->high_water = off + psz;
            return p;
        }
    }
    if (H(st)->capacity < psz || sub_alloc(st, psz, page_align(owner), &off) != MP_OK)
        return MP_NIL;
    p = (uint32_t)(off >> c->page_shift);
    page_setup(st, p, off, owner);
    return p;
}

/* Give page p back to the TLSF (it is empty and in no list). */
static void page_release(void *st, uint32_t p)
{
    heap_ctl_t *c = CT(st);
    uint64_t *r = REC(st, c, p);
    uint64_t base = page_base(st, c, p);
    memset(r, 0, (size_t)c->rec_words * 8);
    r_links(r, MP_NIL, MP_NIL);
    PT(st, c)[p] = 0;
    mp_tlsf_ops.free(SUB(st, c), base);
}

static void release_spares(void *st)
{
    heap_ctl_t *c = CT(st);
    uint32_t p = c->spare;
    if (p != MP_NIL) {
        c->spare = MP_NIL;
        page_release(st, p);
    }
}

/* Page p (in no list) has just become empty: it is the spare now; the previous
 * spare, if any, goes back to the TLSF. */
static void page_emptied(void *st, uint32_t p)
{
    release_spares(st);
    CT(st)->spare = p;
}

/* doubly linked page lists; *head is the list's head */
static inline void list_push(void *st, heap_ctl_t *c, uint32_t *head, uint32_t p)
{
    uint64_t *r = REC(st, c, p);
    uint32_t h = *head;
    r_links(r, MP_NIL, h);
    if (h != MP_NIL) r_set_prev(REC(st, c, h), p);
    *head = p;
}

static inline void list_remove(void *st, heap_ctl_t *c, uint32_t *head, uint32_t p)
{
    uint64_t *r = REC(st, c, p);
    uint32_t a = r_prev(r), b = r_next(r);
    if (a != MP_NIL) r_set_next(REC(st, c, a), b);
    else *head = b;
    if (b != MP_NIL) r_set_prev(REC(st, c, b), a);
    r_links(r, MP_NIL, MP_NIL);
}

/* ---- slab classes ------------------------------------------------------------------ */
/* Allocate an item of class k from page p (which has a free item). */
static inline uint64_t slab_take_item(void *st, heap_ctl_t *c, uint32_t k, uint32_t p)
{
    uint64_t *r = REC(st, c, p);
    uint32_t w = (uint32_t)__builtin_ctzll(r[2]);
    uint64_t word = r[REC_HDR + w];
    uint32_t b = (uint32_t)__builtin_ctzll(~word);
    word |= (uint64_t)1 << b;
    r[REC_HDR + w] = word;
    if (word == ~0ull) r[2] &= ~((uint64_t)1 << w);
    uint32_t nfree = r_nfree(r) - 1;
    r_set_nfree(r, nfree);
    if (nfree == 0) list_remove(st, c, &c->cls[k].head, p);
    return page_base(st, c, p) + (uint64_t)(w * 64 + b) * c->cls[k].size;
}

/* Allocate from class k (MP_ENOSPACE when it has no room and gets no page). */
static int slab_alloc(void *st, uint32_t k, uint64_t size, uint64_t *out)
{
    heap_ctl_t *c = CT(st);
    heap_class_t *cl = &c->cls[k];
    uint32_t p = cl->head;
    if (p == MP_NIL) {
        if ((p = page_take(st, k)) == MP_NIL) return MP_ENOSPACE;
        list_push(st, c, &cl->head, p);
    }
    uint64_t off = slab_take_item(st, c, k, p);
    WASTE(st, c)[off >> 4] = (uint8_t)(cl->size - size);
    note_alloc(H(st), cl->size, size);
    *out = off;
    return MP_OK;
}

/* The item of class k at distance rel from its page start, if it is live. */
static inline int slab_find(const void *st, const heap_ctl_t *c, uint32_t k, uint32_t p,
                            uint64_t rel, uint32_t *idx)
{
    if (rel & 15) return MP_ENOTALLOC;
    uint32_t x = (uint32_t)(rel >> 4);
    uint32_t i = (uint32_t)(((uint64_t)x * INV[k]) >> 24);
    if (i * k != x || i >= c->cls[k].count) return MP_ENOTALLOC;
    const uint64_t *r = CREC(st, c, p);
    if (!((r[REC_HDR + (i >> 6)] >> (i & 63)) & 1)) return MP_ENOTALLOC;
    *idx = i;
    return MP_OK;
}

/* Free item i of class k in page p (known live). */
static inline void slab_free_item(void *st, heap_ctl_t *c, uint32_t k, uint32_t p, uint32_t i)
{
    heap_class_t *cl = &c->cls[k];
    uint64_t *r = REC(st, c, p);
    r[REC_HDR + (i >> 6)] &= ~((uint64_t)1 << (i & 63));
    r[2] |= (uint64_t)1 << (i >> 6);
    uint32_t nfree = r_nfree(r) + 1;
    r_set_nfree(r, nfree);
    if (nfree == 1) { /* it was full: it has room again (count >= 16 > 1) */
        list_push(st, c, &cl->head, p);
    } else if (nfree == cl->count) { /* empty */
        list_remove(st, c, &cl->head, p);
        page_emptied(st, p);
    }
}

/* ---- fragments --------------------------------------------------------------------- */
/* Positions where a run of >= n set bits starts (n >= 1). */
static inline uint64_t runs_of(uint64_t x, uint32_t n)
{
    uint32_t have = 1;
    while (have < n && x) {
        uint32_t s = have < n - have ? have : n - have;
        x &= x >> s;
        have += s;
    }
    return x;
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

/* The bucket a fragment page is filed in: 0 = none (full, or empty). */
static inline uint32_t bucket_of(const heap_ctl_t *c, const uint64_t *r)
{
    uint32_t nfree = r_nfree(r);
    return (nfree == 0 || nfree == c->nfrags) ? 0 : r_maxrun(r);
}

/* Re-file fragment page p after its bitmap and nfree changed (it was filed under
 * `was`); an empty page becomes the spare or goes back. */
static void frag_refile(void *st, heap_ctl_t *c, uint32_t p, uint32_t was)
{
    uint64_t *r = REC(st, c, p);
    uint32_t nfree = r_nfree(r);
    uint32_t now = (nfree == 0 || nfree == c->nfrags) ? 0 : page_maxrun(c, r);
    r_counts(r, nfree, nfree == c->nfrags ? c->frag_max_n : now);
    if (was != now) {
        if (was) {
            list_remove(st, c, &c->fhead[was], p);
            if (c->fhead[was] == MP_NIL) c->fbits &= ~(1u << was);
        }
        if (now) {
            list_push(st, c, &c->fhead[now], p);
            c->fbits |= 1u << now;
        }
    }
    if (nfree == c->nfrags) page_emptied(st, p);
}

static int frag_alloc(void *st, uint32_t n, uint64_t size, uint64_t *out)
{
    heap_ctl_t *c = CT(st);
    uint32_t mask = c->fbits & (~0u << n);
    uint32_t p, was;
    if (mask) { /* the fullest page that has a run of n: best fit over pages */
        was = (uint32_t)__builtin_ctz(mask);
        p = c->fhead[was];
    } else {
        was = 0;
        if ((p = page_take(st, FRAG_OWNER)) == MP_NIL) return MP_ENOSPACE;
    }
    uint64_t *r = REC(st, c, p);
    uint32_t g = 0;
    uint64_t y = 0;
    for (; g < c->groups; g++)
        if ((y = runs_of(~r[REC_HDR + g], n)) != 0) break;
    /* the bucket promised a run of n: g < groups */
    uint32_t b = (uint32_t)__builtin_ctzll(y);
    r[REC_HDR + g] |= (((uint64_t)1 << n) - 1) << b; /* n <= 16 */
    r[REC_HDR + c->groups + g] |= (uint64_t)1 << b;
    r_set_nfree(r, r_nfree(r) - n);
    frag_refile(st, c, p, was);
    uint64_t off = page_base(st, c, p) + ((uint64_t)g * GROUP_FRAGS + b) * FRAG;
    WASTE(st, c)[off >> 4] = (uint8_t)((uint64_t)n * FRAG - size);
    note_alloc(H(st), (uint64_t)n * FRAG, size);
    *out = off;
    return MP_OK;
}

/* The fragment run at distance rel from its page start: group, bit, length. */
static inline int frag_find(const void *st, const heap_ctl_t *c, uint32_t p, uint64_t rel,
                            uint32_t *g, uint32_t *b, uint32_t *n)
{
    if (rel & (FRAG - 1)) return MP_ENOTALLOC;
    uint32_t f = (uint32_t)(rel / FRAG);
    *g = f / GROUP_FRAGS;
    *b = f % GROUP_FRAGS;
    const uint64_t *r = CREC(st, c, p);
    uint64_t start = r[REC_HDR + c->groups + *g];
    if (!((start >> *b) & 1)) return MP_ENOTALLOC;
    uint64_t stop = (start | ~r[REC_HDR + *g] | frag_pad(c)) & ((~0ull << *b) << 1);
    *n = (stop ? (uint32_t)__builtin_ctzll(stop) : 64) - *b;
    return MP_OK;
}

/* ---- TLSF-backed ranges --------------------------------------------------------------- */
static int tlsf_direct(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    int rc = sub_alloc(st, size, align, out);
    if (rc == MP_OK) note_alloc(H(st), size, size);
    return rc;
}

/* ---- the strategy ---------------------------------------------------------------------- */
/* Last resort when a request's own route and the TLSF are out of room: a larger
 * class or a fragment run that has room in pages already taken (the rounding
 * stays below 256 bytes, so the waste byte holds it). */
static int spill(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    heap_ctl_t *c = CT(st);
    if (align > SMALL_MAX) return MP_ENOSPACE;
    if (size <= SMALL_MAX) {
        uint64_t a = align < 16 ? 16 : align;
        for (uint32_t k = (uint32_t)(align_up(size, a) >> 4); k <= NCLASS; k += (uint32_t)(a >> 4))
            if (c->cls[k].head != MP_NIL) return slab_alloc(st, k, size, out);
    }
    if (size > (uint64_t)c->frag_max_n * FRAG) return MP_ENOSPACE;
    uint32_t n = (uint32_t)((size + FRAG - 1) / FRAG);
    if (c->fbits & (~0u << n)) return frag_alloc(st, n, size, out);
    return MP_ENOSPACE;
}

/* pages_only: fail rather than fall back to a direct TLSF range */
static int alloc_routed(void *st, uint64_t size, uint64_t align, uint64_t *out, int pages_only)
{
    uint32_t arg;
    int r = route(CCT(st), size, align, &arg);
    int rc = MP_ENOSPACE;
    if (r == R_SLAB) rc = slab_alloc(st, arg, size, out);
    else if (r == R_FRAG) rc = frag_alloc(st, arg, size, out);
    if (rc == MP_OK || pages_only) return rc;
    rc = tlsf_direct(st, size, align, out);
    if (rc == MP_OK || spill(st, size, align, out) == MP_OK) return MP_OK;
    return rc;
}

__attribute__((noinline)) static int heap_alloc_slow(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size - 1 < SMALL_MAX && align - 1 < 16 && !(align & (align - 1))) {
        heap_ctl_t *c = CT(st);
        uint32_t k = (uint32_t)((size + 15) >> 4);
        uint32_t p = c->cls[k].head;
        if (p != MP_NIL) { /* a page of the class has a free item */
            uint64_t off = slab_take_item(st, c, k, p);
            WASTE(st, c)[off >> 4] = (uint8_t)(16 * k - size);
            note_alloc(H(st), 16 * k, size);
            *out = off;
            return MP_OK;
        }
    } else if (size - 1 < (uint64_t)CT(st)->frag_max_n * FRAG && align - 1 < 16 &&
               !(align & (align - 1))) {
        /* fragments, when a partial page has a run (route() would say the same) */
        uint32_t n = (uint32_t)((size + FRAG - 1) / FRAG);
        if (((uint64_t)n * FRAG - size) * 8 <= size && (CT(st)->fbits & (~0u << n)))
            return frag_alloc(st, n, size, out);
    }
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    return alloc_routed(st, size, align, out, 0);
}

/* The hot path, without calls: an item from the head page of its class, when
 * the page keeps a free item (no list to update). */
static int heap_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size - 1 < SMALL_MAX && align - 1 < 16 && !(align & (align - 1))) {
        heap_ctl_t *c = CT(st);
        uint32_t k = (uint32_t)((size + 15) >> 4);
        uint32_t p = c->cls[k].head;
        if (p != MP_NIL) {
            uint64_t *r = REC(st, c, p);
            if (r_nfree(r) > 1) {
                uint32_t w = (uint32_t)__builtin_ctzll(r[2]);
                uint64_t word = r[REC_HDR + w];
                uint32_t b = (uint32_t)__builtin_ctzll(~word);
                word |= (uint64_t)1 << b;
                r[REC_HDR + w] = word;
                if (word == ~0ull) r[2] &= ~((uint64_t)1 << w);
                r[1]--; /* nfree, in the low bits, stays >= 1 */
                uint64_t off = page_base(st, c, p) + (uint64_t)(w * 64 + b) * (16 * k);
                WASTE(st, c)[off >> 4] = (uint8_t)(16 * k - size);
                note_alloc(H(st), 16 * k, size);
                *out = off;
                return MP_OK;
            }
        }
    }
    return heap_alloc_slow(st, size, align, out);
}

/* What lives at `off`. */
typedef struct where {
    int kind;                   /* R_SLAB, R_FRAG, or R_TLSF (the TLSF decides)  */
    uint32_t p, k, i, g, b, n;  /* page; class and item; group, bit and length */
} where_t;

static inline int locate(const void *st, uint64_t off, where_t *w)
{
    const heap_ctl_t *c = CCT(st);
    if (off >= ((const mp_head_t *)st)->capacity) return MP_ENOTALLOC;
    uint64_t rel;
    uint32_t owner;
    w->p = page_of(st, c, off, &rel, &owner);
    if (w->p == MP_NIL) {
        w->kind = R_TLSF;
        return MP_OK;
    }
    if (owner <= NCLASS) {
        w->kind = R_SLAB;
        w->k = owner;
        return slab_find(st, c, owner, w->p, rel, &w->i);
    }
    w->kind = R_FRAG;
    return frag_find(st, c, w->p, rel, &w->g, &w->b, &w->n);
}

/* Free the slab item or fragment run at off (located by w). */
static void free_located(void *st, uint64_t off, const where_t *w)
{
    heap_ctl_t *c = CT(st);
    mp_head_t *h = H(st);
    uint64_t sz;
    if (w->kind == R_SLAB) {
        sz = c->cls[w->k].size;
        slab_free_item(st, c, w->k, w->p, w->i);
    } else {
        sz = (uint64_t)w->n * FRAG;
        uint64_t *r = REC(st, c, w->p);
        uint32_t was = bucket_of(c, r);
        r[REC_HDR + w->g] &= ~((((uint64_t)1 << w->n) - 1) << w->b);
        r[REC_HDR + c->groups + w->g] &= ~((uint64_t)1 << w->b);
        r_set_nfree(r, r_nfree(r) + w->n);
        frag_refile(st, c, w->p, was);
    }
    h->used -= sz;
    h->requested -= sz - WASTE(st, c)[off >> 4];
    h->live--;
}

static void tlsf_free_counted(void *st, uint64_t off, uint64_t size)
{
    mp_tlsf_ops.free(SUB(st, CT(st)), off);
    mp_head_t *h = H(st);
    h->used -= size;
    h->requested -= size;
    h->live--;
}

/* The last live range is gone.  The spare stays only at offset 0: anywhere else,
 * alone in the span, it would cut the TLSF's one free range in two, and good fit
 * would then build up from whichever part is smaller. */
static void empty_heap(void *st)
{
    heap_ctl_t *c = CT(st);
    if (c->spare != MP_NIL && page_base(st, c, c->spare) != 0)
        release_spares(st);
}

__attribute__((noinline)) static int heap_free_slow(void *st, uint64_t off)
{
    where_t w;
    if (locate(st, off, &w)) return MP_ENOTALLOC;
    if (w.kind == R_TLSF) {
        uint64_t sz;
        if (mp_tlsf_ops.size_of(SUB(st, CT(st)), off, &sz)) return MP_ENOTALLOC;
        tlsf_free_counted(st, off, sz);
    } else {
        free_located(st, off, &w);
    }
    if (H(st)->live == 0) empty_heap(st);
    return MP_OK;
}

/* The hot path, without calls: a slab item whose page stays partial, in a heap
 * that stays non-empty.  Everything else (and every refusal) takes the slow
 * path, which decides again from scratch. */
static int heap_free(void *st, uint64_t off)
{
    heap_ctl_t *c = CT(st);
    uint64_t s = off >> c->page_shift;
    if (s < c->npages) {
        const uint32_t *pt = PT(st, c);
        uint64_t in = off & (((uint64_t)1 << c->page_shift) - 1);
        uint32_t e = pt[s], p = (uint32_t)s;
        if (!e || in < e_start(e)) {
            e = s ? pt[s - 1] : 0;
            p = (uint32_t)s - 1;
            in += (uint64_t)1 << c->page_shift;
        }
        uint32_t k = e_owner(e);
        uint64_t rel = in - e_start(e);
        if (k - 1 < NCLASS && rel < ((uint64_t)1 << c->page_shift) && !(rel & 15)) {
            uint32_t x = (uint32_t)(rel >> 4);
            uint32_t i = (uint32_t)(((uint64_t)x * INV[k]) >> 24);
            uint64_t *r = REC(st, c, p);
            uint64_t *wp = &r[REC_HDR + (i >> 6)], bit = (uint64_t)1 << (i & 63);
            uint32_t nfree = r_nfree(r);
            mp_head_t *h = H(st);
            if (i * k == x && i < c->cls[k].count && (*wp & bit) && nfree &&
                nfree + 1 < c->cls[k].count && h->live > 1) {
                *wp &= ~bit;
                r[2] |= (uint64_t)1 << (i >> 6);
                r[1]++; /* nfree, in the low bits, stays below count */
                uint32_t sz = 16 * k;
                h->used -= sz;
                h->requested -= sz - WASTE(st, c)[off >> 4];
                h->live--;
                return MP_OK;
            }
        }
    }
    return heap_free_slow(st, off);
}

int mp_heap_served_by(const void *st, uint64_t off)
{
    where_t w;
    uint64_t sz;
    if (locate(st, off, &w)) return MP_ENOTALLOC;
    if (w.kind == R_TLSF) return mp_tlsf_ops.size_of(CSUB(st, CCT(st)), off, &sz) ? MP_ENOTALLOC : 0;
    return w.kind == R_SLAB ? 1 : 2;
}

static int heap_size_of(const void *st, uint64_t off, uint64_t *out)
{
    const heap_ctl_t *c = CCT(st);
    where_t w;
    if (locate(st, off, &w)) return MP_ENOTALLOC;
    if (w.kind == R_TLSF) return mp_tlsf_ops.size_of(CSUB(st, c), off, out);
    *out = w.kind == R_SLAB ? c->cls[w.k].size : (uint64_t)w.n * FRAG;
    return MP_OK;
}

/* Move: allocate the new range (the old one still held), then free the old one. */
static int move_to(void *st, uint64_t off, const where_t *w, uint64_t size, uint64_t align,
                   uint64_t *out, int pages_only)
{
    uint64_t at;
    int rc = alloc_routed(st, size, align, &at, pages_only);
    if (rc) return rc;
    if (w->kind == R_TLSF) {
        uint64_t sz;
        mp_tlsf_ops.size_of(SUB(st, CT(st)), off, &sz);
        tlsf_free_counted(st, off, sz);
    } else {
        free_located(st, off, w); /* the old range's page, group and bits are unchanged */
    }
    *out = at;
    return MP_OK;
}

static int heap_realloc(void *st, uint64_t off, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    heap_ctl_t *c = CT(st);
    mp_head_t *h = H(st);
    where_t w;
    if (locate(st, off, &w)) return MP_ENOTALLOC;
    uint32_t arg = 0;
    int r = route(c, size, align, &arg);
    uint8_t *waste = WASTE(st, c);
    if (w.kind == R_TLSF) {
        void *sub = SUB(st, c);
        uint64_t old;
        if (mp_tlsf_ops.size_of(sub, off, &old)) return MP_ENOTALLOC;
        /* a size that pages serve moves there when they have room; else the TLSF */
        if (r != R_TLSF && move_to(st, off, &w, size, align, out, 1) == MP_OK) return MP_OK;
        int rc = mp_tlsf_ops.realloc(sub, off, size, align, out);
        if (rc && have_spares(c)) {
            release_spares(st);
            rc = mp_tlsf_ops.realloc(sub, off, size, align, out);
        }
        if (rc) return rc;
        h->used = h->used - old + size;
        h->requested = h->requested - old + size;
        if (h->used > h->peak_used) h->peak_used = h->used;
        if (*out + size > h->high_water) h->high_water = *out + size;
        return MP_OK;
    }
    if (w.kind == R_SLAB) {
        if (r == R_SLAB && arg == w.k) { /* same class: in place */
            uint32_t sz = c->cls[w.k].size;
            h->requested = h->requested - (sz - waste[off >> 4]) + size;
            waste[off >> 4] = (uint8_t)(sz - size);
            *out = off;
            return MP_OK;
        }
        return move_to(st, off, &w, size, align, out, 0);
    }
    /* fragments: shrink in place, grow in place into free fragments of the group */
    if (r != R_FRAG) return move_to(st, off, &w, size, align, out, 0);
    uint32_t n = arg;
    uint64_t *rec = REC(st, c, w.p);
    uint64_t *used = &rec[REC_HDR + w.g];
    uint32_t was = bucket_of(c, rec);
    if (n > w.n) {
        if (w.b + n > GROUP_FRAGS) return move_to(st, off, &w, size, align, out, 0);
        uint64_t more = (((uint64_t)1 << (n - w.n)) - 1) << (w.b + w.n);
        if (*used & more) return move_to(st, off, &w, size, align, out, 0);
        *used |= more;
        r_set_nfree(rec, r_nfree(rec) - (n - w.n));
        frag_refile(st, c, w.p, was);
    } else if (n < w.n) {
        *used &= ~((((uint64_t)1 << (w.n - n)) - 1) << (w.b + n));
        r_set_nfree(rec, r_nfree(rec) + (w.n - n));
        frag_refile(st, c, w.p, was);
    }
    h->used = h->used - (uint64_t)w.n * FRAG + (uint64_t)n * FRAG;
    h->requested = h->requested - ((uint64_t)w.n * FRAG - waste[off >> 4]) + size;
    if (h->used > h->peak_used) h->peak_used = h->used;
    waste[off >> 4] = (uint8_t)((uint64_t)n * FRAG - size);
    *out = off;
    return MP_OK;
}

static void heap_reset(void *st)
{
    heap_ctl_t *c = CT(st);
    mp_head_t *h = H(st);
    uint32_t *pt = PT(st, c);
    for (uint32_t p = 0; p < c->npages; p++)
        if (pt[p]) {
            uint64_t *r = REC(st, c, p);
            memset(r, 0, (size_t)c->rec_words * 8);
            r_links(r, MP_NIL, MP_NIL);
        }
    memset(pt, 0, (size_t)c->npages * 4);
    for (uint32_t k = 1; k <= NCLASS; k++) c->cls[k].head = MP_NIL;
    for (uint32_t b = 0; b <= NMAX; b++) c->fhead[b] = MP_NIL;
    c->fbits = 0;
    c->spare = MP_NIL;
    mp_tlsf_ops.reset(SUB(st, c));
    h->used = h->requested = h->live = 0;
    h->cursor = 0;
}

/* ---- walking the memory map ------------------------------------------------------- */
/* Pieces go through w_piece() in address order, which merges adjacent free pieces. */
typedef struct walker {
    const void *st;
    mp_walk_fn fn; /* NULL: only count */
    void *ctx;
    uint64_t free_off, free_len; /* the pending free piece */
    uint64_t nfree_ranges;
    int stop;
    int runs_only; /* largest_free: only the runs below, no pieces */
    /* for largest_free: runs of free TLSF ranges and spare pages */
    uint64_t run_off, run_len, best_run;
} walker_t;

static void w_flush(walker_t *w)
{
    if (w->free_len) {
        w->nfree_ranges++;
        if (w->fn && !w->stop) w->stop = w->fn(w->ctx, w->free_off, w->free_len, 0);
        w->free_len = 0;
    }
}

static void w_piece(walker_t *w, uint64_t off, uint64_t len, int allocated)
{
    if (w->stop || len == 0) return;
    if (!allocated) {
        if (w->free_len && w->free_off + w->free_len == off) w->free_len += len;
        else {
            w_flush(w);
            w->free_off = off;
            w->free_len = len;
        }
        return;
    }
    w_flush(w);
    if (w->fn && !w->stop) w->stop = w->fn(w->ctx, off, len, 1);
}

/* a slab page: runs of free items (and the slack after the last item) as free
 * pieces, live items one by one */
static void walk_slab_page(walker_t *w, const heap_ctl_t *c, uint32_t p, uint32_t k)
{
    const uint64_t *r = CREC(w->st, c, p);
    uint64_t base = page_base(w->st, c, p), sz = c->cls[k].size;
    uint32_t count = c->cls[k].count;
    for (uint32_t i = 0; i < count && !w->stop;) {
        uint64_t word = r[REC_HDR + (i >> 6)] >> (i & 63);
        uint32_t left = 64 - (i & 63);
        if (left > count - i) left = count - i;
        if (word & 1) { /* live items */
            uint64_t inv = ~word;
            uint32_t run = inv ? (uint32_t)__builtin_ctzll(inv) : 64;
            if (run > left) run = left;
            if (w->fn) {
                for (uint32_t j = 0; j < run && !w->stop; j++)
                    w_piece(w, base + (i + j) * sz, sz, 1);
            } else {
                w_piece(w, base + i * sz, sz * run, 1);
            }
            i += run;
        } else {
            uint32_t run = word ? (uint32_t)__builtin_ctzll(word) : 64;
            if (run > left) run = left;
            w_piece(w, base + i * sz, sz * run, 0);
            i += run;
        }
    }
    w_piece(w, base + count * sz, ((uint64_t)1 << c->page_shift) - count * sz, 0);
}

static void walk_frag_page(walker_t *w, const heap_ctl_t *c, uint32_t p)
{
    const uint64_t *r = CREC(w->st, c, p);
    uint64_t base = page_base(w->st, c, p), pad = frag_pad(c);
    uint32_t lim = c->nfrags < GROUP_FRAGS ? c->nfrags : GROUP_FRAGS;
    for (uint32_t g = 0; g < c->groups && !w->stop; g++) {
        uint64_t used = r[REC_HDR + g], start = r[REC_HDR + c->groups + g];
        uint64_t gbase = base + (uint64_t)g * GROUP_FRAGS * FRAG;
        for (uint32_t b = 0; b < lim && !w->stop;) {
            uint64_t from = (~0ull << b) << 1;
            uint64_t stop = (start & 1ull << b) ? (start | ~used | pad) & from : start & from;
            uint32_t e = stop ? (uint32_t)__builtin_ctzll(stop) : 64;
            if (e > lim) e = lim;
            w_piece(w, gbase + (uint64_t)b * FRAG, (uint64_t)(e - b) * FRAG,
                    (int)((start >> b) & 1));
            b = e;
        }
    }
}


static void run_piece(walker_t *w, uint64_t off, uint64_t len, int free_or_spare)
{
    if (!free_or_spare) {
        w->run_len = 0;
        return;
    }
    if (w->run_len && w->run_off + w->run_len == off) w->run_len += len;
    else {
        w->run_off = off;
        w->run_len = len;
    }
    if (w->run_len > w->best_run) w->best_run = w->run_len;
}

/* The page (slot) a TLSF range is, or MP_NIL when it is not a page. */
static inline uint32_t range_page(const void *st, const heap_ctl_t *c, uint64_t off,
                                  uint64_t size, uint32_t *owner)
{
    uint64_t s = off >> c->page_shift, psz = (uint64_t)1 << c->page_shift;
    if (size != psz || s >= c->npages) return MP_NIL;
    uint32_t e = CPT(st, c)[s];
    if (!e || e_start(e) != (off & (psz - 1))) return MP_NIL;
    *owner = e_owner(e);
    return (uint32_t)s;
}

static int walk_cb(void *ctx, uint64_t off, uint64_t size, int allocated)
{
    walker_t *w = ctx;
    const heap_ctl_t *c = CCT(w->st);
    uint32_t owner = 0, p = allocated ? range_page(w->st, c, off, size, &owner) : MP_NIL;
    if (w->runs_only) {
        run_piece(w, off, size, !allocated || (p != MP_NIL && c->spare == p));
        return 0;
    }
    if (p != MP_NIL && owner <= FRAG_OWNER) {
        if (owner <= NCLASS) walk_slab_page(w, c, p, owner);
        else walk_frag_page(w, c, p);
        run_piece(w, off, size, c->spare == p);
    } else {
        w_piece(w, off, size, allocated);
        run_piece(w, off, size, !allocated);
    }
    return w->stop;
}

static void walk_all(walker_t *w)
{
    mp_tlsf_ops.walk(CSUB(w->st, CCT(w->st)), walk_cb, w);
    w_flush(w);
}

static int heap_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    walker_t w;
    memset(&w, 0, sizeof w);
    w.st = st;
    w.fn = fn;
    w.ctx = ctx;
    walk_all(&w);
    return w.stop;
}

static uint64_t heap_free_ranges(const void *st)
{
    walker_t w;
    memset(&w, 0, sizeof w);
    w.st = st;
    walk_all(&w);
    return w.nfree_ranges;
}

/* The largest alloc(size) that succeeds: the largest free TLSF range (a spare
 * page counts as free, merged with its free neighbours: an allocation that needs
 * the room releases the spares), the largest class with a free item in a partial
 * page, or the longest free fragment run. */
static uint64_t heap_largest(const void *st)
{
    const heap_ctl_t *c = CCT(st);
    uint64_t best;
    if (have_spares(c)) {
        walker_t w;
        memset(&w, 0, sizeof w);
        w.st = st;
        w.runs_only = 1;
        walk_all(&w);
        best = w.best_run;
    } else {
        best = mp_tlsf_ops.largest_free(CSUB(st, c));
    }
    for (uint32_t k = NCLASS; k >= 1; k--)
        if (c->cls[k].head != MP_NIL) {
            if (c->cls[k].size > best) best = c->cls[k].size;
            break;
        }
    if (c->fbits) {
        uint64_t f = (uint64_t)(31 - __builtin_clz(c->fbits)) * FRAG;
        if (f > best) best = f;
    }
    return best;
}

static uint64_t heap_available(const void *st)
{
    const mp_head_t *h = st;
    return h->capacity - h->used;
}

/* ---- check ----------------------------------------------------------------------------- */
#define FAIL(...)                                                                                \
    do {                                                                                         \
        snprintf(msg, msglen, __VA_ARGS__);                                                      \
        return MP_ECORRUPT;                                                                      \
    } while (0)

typedef unsigned long long ull;

typedef struct checker {
    const void *st;
    uint64_t pages_seen, direct_live, direct_used, max_end;
} checker_t;

static int check_cb(void *ctx, uint64_t off, uint64_t size, int allocated)
{
    checker_t *k = ctx;
    if (!allocated) return 0;
    uint32_t owner, p = range_page(k->st, CCT(k->st), off, size, &owner);
    /* the spare holds nothing handed out: a failed alloc_many that took it is
     * undone by restoring the head, high_water included */
    if (p != CCT(k->st)->spare && off + size > k->max_end) k->max_end = off + size;
    if (p != MP_NIL) {
        k->pages_seen++;
    } else {
        k->direct_live++;
        k->direct_used += size;
    }
    return 0;
}

static int check_layout(const void *st, uint64_t len, char *msg, size_t msglen, layout_t *L)
{
    const mp_head_t *h = st;
    if (len < CTL_OFF + sizeof(heap_ctl_t)) FAIL("state too short: %llu bytes", (ull)len);
    if (h->magic != MP_STATE_MAGIC) FAIL("bad state magic 0x%08x", h->magic);
    if (h->kind != MP_KIND_HEAP) FAIL("state is of kind %u, not %u", h->kind, MP_KIND_HEAP);
    if (h->version != MP_STATE_VERSION) FAIL("state version %u, expected %u", h->version,
                                             MP_STATE_VERSION);
    if (!compute_layout(h->capacity, h->param[0], h->param[1], L))
        FAIL("bad parameters: capacity %llu, page_size %llu, max_blocks %llu", (ull)h->capacity,
             (ull)h->param[0], (ull)h->param[1]);
    if (h->state_size != L->total || len < L->total)
        FAIL("state size %llu (buffer %llu), parameters need %llu", (ull)h->state_size, (ull)len,
             (ull)L->total);
    const heap_ctl_t *c = CCT(st);
    if (c->page_shift != L->page_shift || c->npages != L->npages ||
        c->rec_words != L->rec_words || c->bm_words != L->bm_words || c->groups != L->groups ||
        c->nfrags != L->nfrags || c->frag_max_n != L->frag_max_n || c->pt_off != L->pt_off ||
        c->rec_off != L->rec_off || c->waste_off != L->waste_off || c->tlsf_off != L->tlsf_off ||
        c->tlsf_size != L->tlsf_size)
        FAIL("heap layout does not match the parameters");
    for (uint32_t k = 1; k <= NCLASS; k++)
        if (c->cls[k].size != 16 * k || c->cls[k].count != (uint32_t)(h->param[0] / (16 * k)))
            FAIL("class %u: size %u, count %u do not match the page size", k, c->cls[k].size,
                 c->cls[k].count);
    const mp_head_t *sub = CSUB(st, c);
    if (sub->magic != MP_STATE_MAGIC || sub->kind != MP_KIND_TLSF ||
        sub->capacity != h->capacity || sub->param[0] != h->param[1] ||
        sub->state_size != L->tlsf_size)
        FAIL("TLSF sub-state head does not match the heap (capacity %llu, max_blocks %llu)",
             (ull)sub->capacity, (ull)sub->param[0]);
    return MP_OK;
}

/* Walk a page list (bounded); every page must belong to `owner`, be partial and,
 * for a fragment bucket, have that longest run.  Returns the length, or -1 with
 * msg set. */
static int64_t check_list(const void *st, const heap_ctl_t *c, uint32_t head, uint32_t owner,
                          uint32_t bucket, char *msg, size_t msglen)
{
    const uint32_t *pt = CPT(st, c);
    uint32_t prev = MP_NIL;
    int64_t n = 0;
    for (uint32_t p = head; p != MP_NIL;) {
        if (p >= c->npages) {
            snprintf(msg, msglen, "list of owner %u links page %u beyond %u", owner, p,
                     c->npages);
            return -1;
        }
        if (++n > (int64_t)c->npages) {
            snprintf(msg, msglen, "list of owner %u is longer than the pages (cycle?)", owner);
            return -1;
        }
        const uint64_t *r = CREC(st, c, p);
        if (e_owner(pt[p]) != owner) {
            snprintf(msg, msglen, "list of owner %u holds page %u of owner %u", owner, p,
                     e_owner(pt[p]));
            return -1;
        }
        if (r_prev(r) != prev) {
            snprintf(msg, msglen, "list of owner %u: bad prev link at page %u", owner, p);
            return -1;
        }
        uint32_t nfree = r_nfree(r);
        uint32_t full = owner <= NCLASS ? c->cls[owner].count : c->nfrags;
        if (nfree == 0 || nfree >= full) {
            snprintf(msg, msglen, "list of owner %u holds page %u with %u of %u free", owner, p,
                     nfree, full);
            return -1;
        }
        if (bucket && r_maxrun(r) != bucket) {
            snprintf(msg, msglen, "fragment bucket %u holds page %u whose longest run is %u",
                     bucket, p, r_maxrun(r));
            return -1;
        }
        prev = p;
        p = r_next(r);
    }
    return n;
}

static int check_slab_page(const void *st, const heap_ctl_t *c, uint32_t p, uint32_t k,
                           uint64_t *live, uint64_t *used, uint64_t *wasted, char *msg,
                           size_t msglen)
{
    const uint64_t *r = CREC(st, c, p);
    const uint8_t *waste = CWASTE(st, c);
    uint64_t base = page_base(st, c, p);
    uint32_t count = c->cls[k].count, nw = (count + 63) / 64;
    uint64_t sz = c->cls[k].size, summary = 0, alloc = 0;
    if (r_maxrun(r)) FAIL("slab page %u has a run length", p);
    for (uint32_t j = 0; j < c->bm_words; j++) {
        uint64_t word = r[REC_HDR + j];
        if (j >= nw) {
            if (word) FAIL("slab page %u: bitmap word %u beyond the items", p, j);
            continue;
        }
        uint32_t valid = j == nw - 1 && (count & 63) ? count & 63 : 64;
        uint64_t pad = valid == 64 ? 0 : ~0ull << valid;
        if ((word & pad) != pad) FAIL("slab page %u: padding bits of word %u clear", p, j);
        uint64_t items = word & ~pad;
        alloc += (uint64_t)__builtin_popcountll(items);
        if (word != ~0ull) summary |= (uint64_t)1 << j;
        for (uint64_t m = items; m; m &= m - 1) {
            uint32_t i = j * 64 + (uint32_t)__builtin_ctzll(m);
            uint8_t ws = waste[(base + i * sz) >> 4];
            if (ws >= sz) FAIL("slab item at %llu wastes %u of %llu bytes", (ull)(base + i * sz),
                               ws, (ull)sz);
            *wasted += ws;
        }
    }
    if (r[2] != summary)
        FAIL("slab page %u: summary 0x%llx, bitmap says 0x%llx", p, (ull)r[2], (ull)summary);
    if (r_nfree(r) != count - alloc)
        FAIL("slab page %u: %u free, bitmap says %llu", p, r_nfree(r), (ull)(count - alloc));
    *live += alloc;
    *used += alloc * sz;
    return MP_OK;
}

static int check_frag_page(const void *st, const heap_ctl_t *c, uint32_t p, uint64_t *live,
                           uint64_t *used, uint64_t *wasted, char *msg, size_t msglen)
{
    const uint64_t *r = CREC(st, c, p);
    const uint8_t *waste = CWASTE(st, c);
    uint64_t base = page_base(st, c, p), pad = frag_pad(c), freen = 0;
    if (r[2]) FAIL("fragment page %u has a summary", p);
    for (uint32_t j = 2 * c->groups; j < c->bm_words; j++)
        if (r[REC_HDR + j]) FAIL("fragment page %u: bitmap word %u is not zero", p, j);
    for (uint32_t g = 0; g < c->groups; g++) {
        uint64_t u = r[REC_HDR + g], s = r[REC_HDR + c->groups + g];
        if ((u & pad) != pad) FAIL("fragment page %u: padding bits clear", p);
        if (s & pad) FAIL("fragment page %u: a run starts in the padding", p);
        if (s & ~u) FAIL("fragment page %u: a run starts on a free fragment", p);
        /* an allocated fragment after a free one (or first) must start a run */
        if ((u & ~pad) & ~(u << 1) & ~s)
            FAIL("fragment page %u: allocated fragments without a start", p);
        freen += (uint64_t)__builtin_popcountll(~u);
        for (uint64_t m = s; m; m &= m - 1) {
            uint32_t b = (uint32_t)__builtin_ctzll(m);
            uint64_t stop = (s | ~u | pad) & ((~0ull << b) << 1);
            uint32_t e = stop ? (uint32_t)__builtin_ctzll(stop) : 64;
            uint64_t off = base + ((uint64_t)g * GROUP_FRAGS + b) * FRAG;
            uint64_t sz = (uint64_t)(e - b) * FRAG;
            if (e - b > c->frag_max_n)
                FAIL("fragment run at %llu is %u fragments long", (ull)off, e - b);
            uint8_t ws = waste[off >> 4];
            if (ws >= sz) FAIL("fragment run at %llu wastes %u of %llu bytes", (ull)off, ws,
                               (ull)sz);
            *wasted += ws;
            (*live)++;
            *used += sz;
        }
    }
    if (r_nfree(r) != freen)
        FAIL("fragment page %u: %u free, bitmap says %llu", p, r_nfree(r), (ull)freen);
    uint32_t want = freen == c->nfrags ? c->frag_max_n : page_maxrun(c, r);
    if (r_maxrun(r) != want)
        FAIL("fragment page %u: longest run %u, bitmap says %u", p, r_maxrun(r), want);
    return MP_OK;
}

static int heap_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    layout_t L;
    int rc = check_layout(st, len, msg, msglen, &L);
    if (rc) return rc;
    const mp_head_t *h = st;
    const heap_ctl_t *c = CCT(st);
    char sub_msg[200];
    if (mp_tlsf_ops.check(CSUB(st, c), L.tlsf_size, sub_msg, sizeof sub_msg))
        FAIL("TLSF sub-state: %s", sub_msg);
    /* H2: the page table against the TLSF's ranges */
    const uint32_t *pt = CPT(st, c);
    uint64_t owned = 0, psz = (uint64_t)1 << c->page_shift;
    for (uint32_t p = 0; p < c->npages; p++) {
        const uint64_t *r = CREC(st, c, p);
        if (!e_owner(pt[p])) {
            if (pt[p]) FAIL("page slot %u: start without an owner", p);
            if (r_prev(r) != MP_NIL || r_next(r) != MP_NIL || r[1] || r[2])
                FAIL("page slot %u belongs to the TLSF but has a live record", p);
            for (uint32_t j = 0; j < c->bm_words; j++)
                if (r[REC_HDR + j]) FAIL("page slot %u belongs to the TLSF but has bitmap bits", p);
            continue;
        }
        if (e_owner(pt[p]) > FRAG_OWNER || (pt[p] & 0xff00))
            FAIL("page %u has owner %u", p, pt[p] & 0xffff);
        if (r[1] >> 32) FAIL("page %u: record counts 0x%llx", p, (ull)r[1]);
        uint64_t s0 = e_start(pt[p]);
        if (s0 % page_align(e_owner(pt[p])) || s0 >= psz || ((uint64_t)p << c->page_shift) + s0 + psz > h->capacity)
            FAIL("page %u starts at %llu past its slot or ends past the span", p, (ull)s0);
        owned++;
    }
    checker_t ck;
    memset(&ck, 0, sizeof ck);
    ck.st = st;
    mp_tlsf_ops.walk(CSUB(st, c), check_cb, &ck);
    /* every owned page matched a TLSF range exactly once; the TLSF's ranges are
     * disjoint, so no other range overlaps a page */
    if (ck.pages_seen != owned)
        FAIL("%llu pages owned, but the TLSF holds %llu of them", (ull)owned, (ull)ck.pages_seen);
    if (ck.max_end > h->high_water)
        FAIL("a range ends at %llu, above high_water %llu", (ull)ck.max_end, (ull)h->high_water);
    if (h->high_water > h->capacity) FAIL("high_water beyond capacity");
    /* H3: page records */
    uint64_t live = ck.direct_live, used = ck.direct_used, wasted = 0;
    uint64_t partial[FRAG_OWNER + 1] = {0}, empty = 0;
    uint64_t buckets[NMAX + 1] = {0};
    for (uint32_t p = 0; p < c->npages; p++) {
        uint32_t owner = e_owner(pt[p]);
        if (!owner) continue;
        const uint64_t *r = CREC(st, c, p);
        uint32_t full = owner <= NCLASS ? c->cls[owner].count : c->nfrags;
        if (owner <= NCLASS) rc = check_slab_page(st, c, p, owner, &live, &used, &wasted, msg,
                                                  msglen);
        else rc = check_frag_page(st, c, p, &live, &used, &wasted, msg, msglen);
        if (rc) return rc;
        if (r_nfree(r) == full) empty++;
        else if (r_nfree(r)) {
            partial[owner]++;
            if (owner == FRAG_OWNER) buckets[r_maxrun(r)]++;
        }
    }
    /* H4: lists and spares */
    uint32_t spare = c->spare;
    if (spare != MP_NIL) {
        if (spare >= c->npages || !e_owner(pt[spare]))
            FAIL("the spare is page %u, which is not a page", spare);
        const uint64_t *r = CREC(st, c, spare);
        uint32_t so = e_owner(pt[spare]);
        uint32_t full = so <= NCLASS ? c->cls[so].count : c->nfrags;
        if (r_nfree(r) != full) FAIL("the spare page %u is not empty", spare);
        if (r_prev(r) != MP_NIL || r_next(r) != MP_NIL) FAIL("the spare page %u is linked", spare);
    }
    if (empty != (spare != MP_NIL))
        FAIL("%llu empty pages, spare %u", (ull)empty, spare);
    for (uint32_t k = 1; k <= NCLASS; k++) {
        int64_t n = check_list(st, c, c->cls[k].head, k, 0, msg, msglen);
        if (n < 0) return MP_ECORRUPT;
        if ((uint64_t)n != partial[k])
            FAIL("class %u lists %lld pages, %llu are partial", k, (long long)n, (ull)partial[k]);
    }
    if (c->fbits & ~((((uint32_t)1 << c->frag_max_n) - 1) << 1))
        FAIL("fragment bucket bits 0x%x beyond %u", c->fbits, c->frag_max_n);
    if (c->fhead[0] != MP_NIL) FAIL("fragment bucket 0 is not empty");
    for (uint32_t b = 1; b <= NMAX; b++) {
        if (((c->fbits >> b) & 1) != (c->fhead[b] != MP_NIL))
            FAIL("fragment bucket bit %u disagrees with its list", b);
        int64_t n = check_list(st, c, c->fhead[b], FRAG_OWNER, b, msg, msglen);
        if (n < 0) return MP_ECORRUPT;
        if ((uint64_t)n != buckets[b])
            FAIL("fragment bucket %u lists %lld pages, %llu belong there", b, (long long)n,
                 (ull)buckets[b]);
    }
    /* H5: counters */
    if (live != h->live) FAIL("%llu live ranges, count says %llu", (ull)live, (ull)h->live);
    if (used != h->used) FAIL("live ranges hold %llu bytes, used says %llu", (ull)used,
                              (ull)h->used);
    if (used - wasted != h->requested)
        FAIL("live ranges were asked %llu bytes, requested says %llu", (ull)(used - wasted),
             (ull)h->requested);
    if (h->peak_used < h->used) FAIL("peak_used below used");
    return MP_OK;
}

const mp_ops_t mp_heap_ops = {
    .name = "heap",
    .kind = MP_KIND_HEAP,
    .alloc = heap_alloc,
    .free = heap_free,
    .realloc = heap_realloc,
    .size_of = heap_size_of,
    .reset = heap_reset,
    .check = heap_check,
    .walk = heap_walk,
    .largest_free = heap_largest,
    .available = heap_available,
    .free_ranges = heap_free_ranges,
};
