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
 * allocation or realloc fails and it would help (its page and free neighbours would
 * hold the request, or touch the range a realloc grows, or the state is out of
 * nodes; then the call is retried: a request that fails anyway leaves the spare, so
 * a failed call changes nothing), when the
 * last live range is freed
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
 * State layout: see heap.h (the structs, constants and accessors heap.c and
 * heap_check.c share).
 *
 * Invariants (checked by mpi_heap_check in heap_check.c, after the TLSF sub-state's
 * own check):
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
#include <string.h>

#include "heap.h"

/* ceil(2^24 / k): item index = (rel / 16) * INV[k] >> 24, exact for rel < 64 KiB */
#define INVK(k) ((((uint32_t)1 << 24) + (k) - 1) / (k))
static const uint32_t INV[NCLASS + 1] = {0,        INVK(1),  INVK(2),  INVK(3),  INVK(4),
                                         INVK(5),  INVK(6),  INVK(7),  INVK(8),  INVK(9),
                                         INVK(10), INVK(11), INVK(12), INVK(13), INVK(14),
                                         INVK(15), INVK(16)};

/* ---- layout ---------------------------------------------------------------------- */
int mpi_heap_layout(uint64_t capacity, uint64_t page_size, uint64_t max_blocks, layout_t *L)
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

uint64_t mp_heap_default_max_blocks(uint64_t capacity) { return mp_default_max_blocks(capacity); }

uint64_t mp_heap_state_size(uint64_t capacity, uint64_t page_size, uint64_t max_blocks)
{
    layout_t L;
    return mpi_heap_layout(capacity, page_size, max_blocks, &L) ? L.total : 0;
}

static void heap_reset(void *st);

int mp_heap_init(void *st, uint64_t capacity, uint64_t page_size, uint64_t max_blocks)
{
    layout_t L;
    if (!mpi_heap_layout(capacity, page_size, max_blocks, &L)) return MP_EINVAL;
    memset(st, 0, L.tlsf_off);
    mp_head_t *h = H(st);
    mpi_head_init(h, MP_KIND_HEAP, L.total, capacity);
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

/* ---- pages ---------------------------------------------------------------------- */
static void release_spares(void *st);

/* A TLSF allocation for the heap; on failure, the spare goes back and it is retried
 * when that helps: the state is out of nodes (a released page gives one back), or the
 * request fits the free range the spare's page would make.  A request that fails
 * anyway leaves the spare where it was, so a failed call changes nothing (its page
 * would have gone back to the TLSF, and later allocations would land elsewhere). */
/* Does [lo, hi) hold size bytes at a multiple of align? */
static inline int holds(uint64_t lo, uint64_t hi, uint64_t size, uint64_t align)
{
    uint64_t at = (lo + align - 1) & ~(align - 1);
    return at >= lo && at < hi && hi - at >= size;
}

/* Would giving the spare back help a TLSF request of size/align that failed with rc:
 * out of nodes (a released page gives one back), or the free range its page would
 * make holds the request, or (a realloc of the range at `moving`, else UINT64_MAX)
 * that range with its free neighbours and the spare's would hold it, grown in place
 * or moved down. */
static int spare_helps(void *st, heap_ctl_t *c, int rc, uint64_t size, uint64_t align,
                       uint64_t moving)
{
    uint64_t lo, hi, mlo, mhi;
    if (rc == MP_ENONODES) return 1;
    if (rc != MP_ENOSPACE) return 0;
    void *sub = SUB(st, c);
    if (mpi_tlsf_freed_extent(sub, page_base(st, c, c->spare), &lo, &hi)) return 1;
    if (holds(lo, hi, size, align)) return 1;
    if (moving == UINT64_MAX || mpi_tlsf_freed_extent(sub, moving, &mlo, &mhi)) return 0;
    return lo <= mhi && mlo <= hi && holds(lo < mlo ? lo : mlo, hi > mhi ? hi : mhi, size, align);
}

static int sub_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    heap_ctl_t *c = CT(st);
    int rc = TLSF_OPS.alloc(SUB(st, c), size, align, out);
    if (rc && have_spares(c) && spare_helps(st, c, rc, size, align, UINT64_MAX)) {
        release_spares(st);
        rc = TLSF_OPS.alloc(SUB(st, c), size, align, out);
    }
    if (rc == MP_OK) mpi_head_reach(H(st), *out + size);
    return rc;
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
            mpi_head_reach(H(st), off + psz);
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
    int rc = TLSF_OPS.free(SUB(st, c), base);
    mpi_assert(rc == MP_OK); /* (its page: check() refuses a sub-state where it is not) */
    (void)rc;
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
    mpi_assert(r_nfree(r) >= 1 && r[2] != 0); /* the page has a free item, the summary says where */
    uint32_t w = (uint32_t)__builtin_ctzll(r[2]);
    uint64_t word = r[REC_HDR + w];
    mpi_assert(word != ~0ull);
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
    mpi_head_on_alloc(H(st), 0, cl->size, size);
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
    mpi_assert(g < c->groups); /* the bucket promised a run of n */
    uint32_t b = (uint32_t)__builtin_ctzll(y);
    r[REC_HDR + g] |= (((uint64_t)1 << n) - 1) << b; /* n <= 16 */
    r[REC_HDR + c->groups + g] |= (uint64_t)1 << b;
    r_set_nfree(r, r_nfree(r) - n);
    frag_refile(st, c, p, was);
    uint64_t off = page_base(st, c, p) + ((uint64_t)g * GROUP_FRAGS + b) * FRAG;
    WASTE(st, c)[off >> 4] = (uint8_t)((uint64_t)n * FRAG - size);
    mpi_head_on_alloc(H(st), 0, (uint64_t)n * FRAG, size);
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
    if (rc == MP_OK) mpi_head_on_alloc(H(st), 0, size, size);
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
            mpi_head_on_alloc(H(st), 0, 16 * k, size);
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
                mpi_assert(r[2] != 0); /* the summary finds the free item */
                uint32_t w = (uint32_t)__builtin_ctzll(r[2]);
                uint64_t word = r[REC_HDR + w];
                mpi_assert(word != ~0ull);
                uint32_t b = (uint32_t)__builtin_ctzll(~word);
                word |= (uint64_t)1 << b;
                r[REC_HDR + w] = word;
                if (word == ~0ull) r[2] &= ~((uint64_t)1 << w);
                r[1]--; /* nfree, in the low bits, stays >= 1 */
                uint64_t off = page_base(st, c, p) + (uint64_t)(w * 64 + b) * (16 * k);
                WASTE(st, c)[off >> 4] = (uint8_t)(16 * k - size);
                mpi_head_on_alloc(H(st), 0, 16 * k, size);
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
    mpi_head_on_free(h, sz, sz - WASTE(st, c)[off >> 4]);
}

static void tlsf_free_counted(void *st, uint64_t off, uint64_t size)
{
    int rc = TLSF_OPS.free(SUB(st, CT(st)), off);
    mpi_assert(rc == MP_OK); /* (a live large range: found by offset) */
    (void)rc;
    mpi_head_on_free(H(st), size, size);
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
        if (TLSF_OPS.size_of(SUB(st, CT(st)), off, &sz)) return MP_ENOTALLOC;
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
                mpi_head_on_free(h, sz, sz - WASTE(st, c)[off >> 4]);
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
    if (w.kind == R_TLSF) return TLSF_OPS.size_of(CSUB(st, CCT(st)), off, &sz) ? MP_ENOTALLOC : 0;
    return w.kind == R_SLAB ? 1 : 2;
}

static int heap_size_of(const void *st, uint64_t off, uint64_t *out)
{
    const heap_ctl_t *c = CCT(st);
    where_t w;
    if (locate(st, off, &w)) return MP_ENOTALLOC;
    if (w.kind == R_TLSF) return TLSF_OPS.size_of(CSUB(st, c), off, out);
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
        TLSF_OPS.size_of(SUB(st, CT(st)), off, &sz);
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
        if (TLSF_OPS.size_of(sub, off, &old)) return MP_ENOTALLOC;
        /* a size that pages serve moves there when they have room; else the TLSF */
        if (r != R_TLSF && move_to(st, off, &w, size, align, out, 1) == MP_OK) return MP_OK;
        int rc = TLSF_OPS.realloc(sub, off, size, align, out);
        if (rc && have_spares(c) && spare_helps(st, c, rc, size, align, off)) {
            release_spares(st);
            rc = TLSF_OPS.realloc(sub, off, size, align, out);
        }
        if (rc) return rc;
        mpi_head_on_resize(h, *out + size, old, size, old, size);
        return MP_OK;
    }
    if (w.kind == R_SLAB) {
        if (r == R_SLAB && arg == w.k) { /* same class: in place */
            uint32_t sz = c->cls[w.k].size;
            mpi_head_on_resize(h, 0, sz, sz, sz - waste[off >> 4], size);
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
    mpi_head_on_resize(h, 0, (uint64_t)w.n * FRAG, (uint64_t)n * FRAG,
                       (uint64_t)w.n * FRAG - waste[off >> 4], size);
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
    TLSF_OPS.reset(SUB(st, c));
    mpi_head_on_reset(h);
    h->cursor = 0;
}

/* The operation table (MP_DEBUG builds check the state after every change: internal.h). */
/* ---- growth: the embedded TLSF grows (it is last in the state, so nothing else moves) */
static uint64_t heap_grown(const void *st)
{
    uint64_t m = ((const mp_head_t *)st)->param[1], n = m * 2;
    if (n >= MP_NIL) n = MP_NIL - 1;
    return n > m ? n : 0;
}

static uint64_t heap_grow_size(const void *st)
{
    const mp_head_t *h = st;
    uint64_t n = h->param[MP_PARAM_FIXED] ? 0 : heap_grown(st);
    return n ? mp_heap_state_size(h->capacity, h->param[0], n) : 0;
}

static int heap_grow(const void *st, void *dst, uint64_t dst_len)
{
    const mp_head_t *h = st;
    const heap_ctl_t *c = CCT(st);
    layout_t L;
    uint64_t n = heap_grown(st);
    if (!n || !mpi_heap_layout(h->capacity, h->param[0], n, &L) || dst_len < L.total ||
        L.tlsf_off != c->tlsf_off)
        return MP_EINVAL;
    const mp_ops_t *t = &TLSF_OPS;
    if (t->grow_size(CSUB(st, c)) != L.tlsf_size) return MP_EINVAL;
    int rc = t->grow(CSUB(st, c), (char *)dst + L.tlsf_off, L.tlsf_size);
    if (rc) return rc;
    memcpy(dst, st, (size_t)L.tlsf_off);
    H(dst)->state_size = L.total;
    H(dst)->param[1] = n;
    CT(dst)->tlsf_size = L.tlsf_size;
    return MP_OK;
}

/* The embedded TLSF's nodes never handed out (it is last in the state). */
static uint64_t heap_hole(const void *st, uint64_t len, uint64_t *off)
{
    if (len < CTL_OFF + sizeof(heap_ctl_t)) return 0;
    uint64_t t = CCT(st)->tlsf_off, o;
    if (t % 8 || t > len) return 0;
    uint64_t n = TLSF_OPS.hole(CSUB(st, CCT(st)), len - t, &o);
    if (!n || o > UINT64_MAX - t) return 0;
    *off = t + o;
    return n;
}

MPI_OPS_TABLE(heap,
    .name = "heap",
    .kind = MP_KIND_HEAP,
    .alloc = heap_alloc,
    .free = heap_free,
    .realloc = heap_realloc,
    .size_of = heap_size_of,
    .reset = heap_reset,
    .check = mpi_heap_check,
    .walk = mpi_heap_walk,
    .largest_free = mpi_heap_largest_free,
    .available = mpi_head_available,
    .free_ranges = mpi_heap_free_ranges,
    .grow_size = heap_grow_size,
    .grow = heap_grow,
    .hole = heap_hole);
