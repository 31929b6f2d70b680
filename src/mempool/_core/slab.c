/*
 * slab.c -- a cache of equal items carved page by page (tsload's mp_cache, fixed).
 *
 * Geometry (all derived from capacity, item_size, page_size; see mpi_slab_geometry):
 *   align  = the largest power of two dividing item_size, raised to 8 when it is
 *            below 8 and item_size >= 8 (item_size 20 -> 8, 6 -> 2, 96 -> 32)
 *   stride = item_size rounded up to align: the distance between items and the
 *            size of an item everywhere (size_of, used, segments)
 *   per    = page_size // stride items in a page; npages = capacity // page_size
 *            pages at offsets p * page_size.  page_size must be a multiple of align
 *            (so every item is aligned) and hold one item; the bytes after the last
 *            item of a page and after the last page are never handed out.
 *
 * Placement (deterministic, so the tests predict every offset):
 *   - Pages come from the page pool, the lowest free page first.  A page whose
 *     items are all free goes back to the pool at once.
 *   - A page in use ("slab page") hands out its items from a LIFO stack of freed
 *     items, else from its uncarved tail (the items at and above `cursor`).
 *   - The slab pages with a free item form the partial list, most recently freed
 *     into first.  alloc() takes from the list's first page (the page of the last
 *     free, whose stack top is the item freed last: hot items are reused first),
 *     or from a fresh page when the list is empty.
 *   - alloc_array(n), 2 <= n <= per: n contiguous items inside one page: the
 *     uncarved tail of the list's first page if it holds n, else a fresh page
 *     (from item 0), else the lowest run of n free items in any slab page.
 *     n > per: ceil(n * stride / page_size) contiguous free pages (the lowest run),
 *     held whole by the array.  alloc_array(1) is alloc(item_size).
 *   - free pushes the items of the range on its page's stack (the last item
 *     first, so the range's first item is on top) and moves the page to the front
 *     of the partial list; a multi-page array gives its pages back to the pool.
 *     When the stack is empty and the range ends at the cursor, the cursor moves
 *     back over it instead (the same items come next either way): so every free
 *     undoes its alloc byte for byte, and a batch undone in reverse (alloc_many)
 *     leaves the state exactly as it was.
 *
 * The state layout and its invariants are in slab.h; check() is in slab_check.c.
 */
#include <stdio.h>
#include <string.h>

#include "slab.h"

static inline uint32_t log2_or_64(uint64_t x)
{
    return mp_is_pow2(x) ? (uint32_t)__builtin_ctzll(x) : 64;
}

/* ---- geometry ------------------------------------------------------------------ */
int mpi_slab_geometry(uint64_t capacity, uint64_t item_size, uint64_t page_size, slab_hdr_t *g,
                  uint64_t *state_size, char *msg, size_t msglen)
{
#define GFAIL(...)                                                                              \
    do {                                                                                         \
        if (msg) snprintf(msg, msglen, __VA_ARGS__);                                             \
        return MP_EINVAL;                                                                        \
    } while (0)
    typedef unsigned long long ull;
    if (capacity == 0) GFAIL("capacity must be >= 1, got 0");
    if (item_size == 0) GFAIL("item_size must be >= 1, got 0");
    if (item_size > ST_LOW) GFAIL("item_size must be < 2**30, got %llu", (ull)item_size);
    if (page_size == 0) GFAIL("page_size must be >= 1, got 0");
    uint64_t align = item_size & (0 - item_size);
    if (align < 8 && item_size >= 8) align = 8;
    uint64_t stride = (item_size + align - 1) & ~(align - 1);
    if (page_size % align)
        GFAIL("page_size must be a multiple of the item alignment %llu, got %llu", (ull)align,
              (ull)page_size);
    if (page_size < stride)
        GFAIL("page_size %llu is too small for one item of %llu bytes (stride %llu)",
              (ull)page_size, (ull)item_size, (ull)stride);
    uint64_t per = page_size / stride;
    if (per > ST_LOW) GFAIL("page_size %llu holds %llu items; at most 2**30 - 1 allowed",
                            (ull)page_size, (ull)per);
    if (capacity < page_size)
        GFAIL("capacity %llu is smaller than one page (page_size %llu)", (ull)capacity,
              (ull)page_size);
    uint64_t npages = capacity / page_size;
    if (npages >= MP_NIL) GFAIL("capacity holds %llu pages; at most 2**32 - 2 allowed", (ull)npages);
    uint64_t nitems = npages * per; /* < 2^32 * 2^30 */
    if (nitems > ((uint64_t)1 << 58)) GFAIL("too many items (%llu)", (ull)nitems);
    uint64_t nwords = (npages + 63) / 64;
    memset(g, 0, sizeof *g);
    g->capacity = capacity;
    g->item_size = item_size;
    g->page_size = page_size;
    g->stride = stride;
    g->align = align;
    g->per = per;
    g->npages = npages;
    g->nitems = nitems;
    g->nwords = nwords;
    g->off_bitmap = OFF_PAGES + npages * sizeof(slab_page_t);
    g->off_state = g->off_bitmap + nwords * 8;
    g->off_stack = g->off_state + nitems * 4;
    g->page_shift = log2_or_64(page_size);
    g->stride_shift = log2_or_64(stride);
    uint64_t end = g->off_stack + nitems * 4;
    *state_size = (end + 7) & ~(uint64_t)7;
    return MP_OK;
#undef GFAIL
}

uint64_t mp_slab_state_size(uint64_t capacity, uint64_t item_size, uint64_t page_size)
{
    slab_hdr_t g;
    uint64_t size;
    if (mpi_slab_geometry(capacity, item_size, page_size, &g, &size, NULL, 0)) return 0;
    return size;
}

int mp_slab_explain(uint64_t capacity, uint64_t item_size, uint64_t page_size, char *msg,
                    size_t msglen)
{
    slab_hdr_t g;
    uint64_t size;
    return mpi_slab_geometry(capacity, item_size, page_size, &g, &size, msg, msglen);
}

void mp_slab_info(const void *st, mp_slab_info_t *out)
{
    const slab_hdr_t *h = CHD(st);
    out->item_size = h->item_size;
    out->page_size = h->page_size;
    out->stride = h->stride;
    out->align = h->align;
    out->per_page = h->per;
    out->pages = h->npages;
    out->free_pages = h->free_pages;
    out->free_items = (h->npages - h->run_pages) * h->per - h->used_items;
}

/* ---- page pool ------------------------------------------------------------------ */
static inline uint64_t *BITS(void *st) { return AREA(st, uint64_t, HD(st)->off_bitmap); }

/* The lowest pool page >= from, or npages. */
static uint64_t pool_next(const void *st, uint64_t from)
{
    const slab_hdr_t *h = CHD(st);
    const uint64_t *b = CAREA(st, uint64_t, h->off_bitmap);
    if (from >= h->npages) return h->npages;
    uint64_t w = from / 64;
    uint64_t word = b[w] & (~0ull << (from % 64));
    while (!word) {
        if (++w >= h->nwords) return h->npages;
        word = b[w];
    }
    uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(word);
    return p < h->npages ? p : h->npages;
}

/* The first page >= from that is NOT in the pool, or npages. */
static uint64_t pool_next_taken(const void *st, uint64_t from)
{
    const slab_hdr_t *h = CHD(st);
    const uint64_t *b = CAREA(st, uint64_t, h->off_bitmap);
    if (from >= h->npages) return h->npages;
    uint64_t w = from / 64;
    uint64_t word = ~b[w] & (~0ull << (from % 64));
    while (!word) {
        if (++w >= h->nwords) return h->npages;
        word = ~b[w];
    }
    uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(word);
    return p < h->npages ? p : h->npages;
}

static void pool_take(void *st, uint64_t p, uint64_t k)
{
    slab_hdr_t *h = HD(st);
    uint64_t *b = BITS(st);
    for (uint64_t q = p; q < p + k; q++) b[q / 64] &= ~(1ull << (q % 64));
    h->free_pages -= k;
    if (h->page_lo == p) h->page_lo = (uint32_t)pool_next(st, p + k);
}

/* Give pages [p, p+k) back to the pool (their records become canonical FREE). */
static void pool_give(void *st, uint64_t p, uint64_t k)
{
    slab_hdr_t *h = HD(st);
    slab_page_t *pg = PAGES(st);
    uint64_t *b = BITS(st);
    for (uint64_t q = p; q < p + k; q++) {
        memset(&pg[q], 0, sizeof pg[q]);
        pg[q].prev = pg[q].next = MP_NIL;
        b[q / 64] |= 1ull << (q % 64);
    }
    h->free_pages += k;
    if (p < h->page_lo) h->page_lo = (uint32_t)p;
}

/* ---- partial list (in_list: slab.h) ----------------------------------------------- */
static inline void list_remove(slab_hdr_t *h, slab_page_t *pg, uint32_t p)
{
    uint32_t a = pg[p].prev, b = pg[p].next;
    if (a != MP_NIL) pg[a].next = b;
    else h->partial = b;
    if (b != MP_NIL) pg[b].prev = a;
    pg[p].prev = pg[p].next = MP_NIL;
}

static inline void list_push_front(slab_hdr_t *h, slab_page_t *pg, uint32_t p)
{
    pg[p].prev = MP_NIL;
    pg[p].next = h->partial;
    if (h->partial != MP_NIL) pg[h->partial].prev = p;
    h->partial = p;
}

/* ---- offsets (item_offset, pages_for, max_run_items: slab.h) ------------------------ */

static inline uint64_t page_of(const slab_hdr_t *h, uint64_t off)
{
    return h->page_shift < 64 ? off >> h->page_shift : off / h->page_size;
}

/* A fresh SLAB page from the pool (lowest first), or MP_NIL. */
static uint32_t new_slab_page(void *st)
{
    slab_hdr_t *h = HD(st);
    uint64_t p = h->page_lo;
    if (p >= h->npages) return MP_NIL;
    pool_take(st, p, 1);
    slab_page_t *pg = PAGES(st);
    pg[p].kind = PG_SLAB;
    return (uint32_t)p;
}

/* ---- alloc --------------------------------------------------------------------------- */
static int slab_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    slab_hdr_t *h = HD(st);
    if (size > h->item_size || align > h->align) return MP_ENOSPACE;
    slab_page_t *pg = PAGES(st);
    uint32_t p = h->partial;
    int fresh = 0;
    if (p == MP_NIL) {
        p = new_slab_page(st);
        if (p == MP_NIL) return MP_ENOSPACE;
        fresh = 1;
    }
    slab_page_t *P = &pg[p];
    uint64_t base = (uint64_t)p * h->per;
    uint32_t *state = AREA(st, uint32_t, h->off_state) + base;
    uint32_t i;
    if (P->nfree) {
        uint32_t *stack = AREA(st, uint32_t, h->off_stack) + base;
        i = stack[--P->nfree];
        stack[P->nfree] = 0;
    } else {
        i = P->cursor++;
    }
    mpi_assert(P->used < h->per && i < h->per && (state[i] == 0 || (state[i] & ST_TAG) == ST_FREE));
    state[i] = (uint32_t)size;
    P->used++;
    h->used_items++;
    if (fresh) {
        if (P->used < h->per) list_push_front(h, pg, p);
    } else if (P->used == h->per) {
        list_remove(h, pg, p);
    }
    uint64_t off = item_offset(h, p, i);
    mpi_head_on_alloc((mp_head_t *)st, off + h->stride, h->stride, size);
    *out = off;
    return MP_OK;
}

/* Mark items [i, i+n) of page p (already carved, off the stack) as an array. */
static void mark_array(void *st, uint32_t p, uint64_t i, uint64_t n)
{
    slab_hdr_t *h = HD(st);
    uint32_t *state = AREA(st, uint32_t, h->off_state) + (uint64_t)p * h->per;
    state[i] = ST_ARRAY | (uint32_t)n;
    for (uint64_t j = 1; j < n; j++) state[i + j] = ST_INNER;
}

/* The lowest run of n free-or-uncarved items in one slab page: returns the page and
 * sets *at, or MP_NIL. */
static uint32_t find_run_in_pages(const void *st, uint64_t n, uint64_t *at)
{
    const slab_hdr_t *h = CHD(st);
    const slab_page_t *pg = CPAGES(st);
    const uint32_t *state = CAREA(st, uint32_t, h->off_state);
    for (uint64_t p = 0; p < h->npages; p++) {
        if (pg[p].kind != PG_SLAB || h->per - pg[p].used < n) continue;
        const uint32_t *s = state + p * h->per;
        uint64_t run = 0;
        for (uint64_t i = 0; i < h->per; i++) {
            int avail = i >= pg[p].cursor || (s[i] & ST_TAG) == ST_FREE;
            run = avail ? run + 1 : 0;
            if (run == n) {
                *at = i + 1 - n;
                return (uint32_t)p;
            }
        }
    }
    return MP_NIL;
}

/* Take the free/uncarved run [i, i+n) of slab page p: drop its items from the stack. */
static void take_run(void *st, uint32_t p, uint64_t i, uint64_t n)
{
    slab_hdr_t *h = HD(st);
    slab_page_t *P = &PAGES(st)[p];
    uint64_t base = (uint64_t)p * h->per;
    uint32_t *state = AREA(st, uint32_t, h->off_state) + base;
    uint32_t *stack = AREA(st, uint32_t, h->off_stack) + base;
    uint32_t k = 0;
    for (uint32_t j = 0; j < P->nfree; j++) {
        uint32_t it = stack[j];
        if (it >= i && it < i + n) continue;
        stack[k] = it;
        state[it] = ST_FREE | k;
        k++;
    }
    for (uint32_t j = k; j < P->nfree; j++) stack[j] = 0;
    P->nfree = k;
    if (i + n > P->cursor) P->cursor = (uint32_t)(i + n);
    /* keep S4's canonical form: free items at the bottom of the stack that sit just
     * below the cursor become uncarved again (the same order of reuse: the stack's
     * bottom goes last, then the cursor) */
    uint32_t drop = 0;
    while (drop < P->nfree && stack[drop] == P->cursor - 1 - drop) drop++;
    if (!drop) return;
    for (uint32_t j = 0; j < drop; j++) state[stack[j]] = 0;
    for (uint32_t j = drop; j < P->nfree; j++) {
        stack[j - drop] = stack[j];
        state[stack[j]] = ST_FREE | (j - drop);
    }
    for (uint32_t j = P->nfree - drop; j < P->nfree; j++) stack[j] = 0;
    P->nfree -= drop;
    P->cursor -= drop;
}

static int alloc_array(void *st, uint64_t n, uint64_t *out)
{
    if (n == 0) return MP_EINVAL;
    slab_hdr_t *h = HD(st);
    if (n == 1) return slab_alloc(st, h->item_size, 1, out);
    mp_head_t *m = (mp_head_t *)st;
    slab_page_t *pg = PAGES(st);
    if (n <= h->per) {
        uint32_t p = h->partial;
        uint64_t i;
        int fresh = 0;
        if (p != MP_NIL && pg[p].cursor + n <= h->per) {
            i = pg[p].cursor;
            pg[p].cursor += (uint32_t)n;
        } else if ((p = new_slab_page(st)) != MP_NIL) {
            i = 0;
            pg[p].cursor = (uint32_t)n;
            fresh = 1;
        } else if ((p = find_run_in_pages(st, n, &i)) != MP_NIL) {
            take_run(st, p, i, n);
        } else {
            return MP_ENOSPACE;
        }
        mark_array(st, p, i, n);
        pg[p].used += (uint32_t)n;
        h->used_items += n;
        if (fresh) {
            if (pg[p].used < h->per) list_push_front(h, pg, p);
        } else if (pg[p].used == h->per) {
            list_remove(h, pg, p);
        }
        uint64_t off = item_offset(h, p, i);
        mpi_head_on_alloc(m, off + n * h->stride, n * h->stride, n * h->item_size);
        *out = off;
        return MP_OK;
    }
    if (n > max_run_items(h)) return MP_ENOSPACE;
    uint64_t bytes = n * h->stride; /* <= npages * page_size <= capacity */
    uint64_t k = pages_for(h, bytes);
    if (k > h->free_pages) return MP_ENOSPACE;
    uint64_t p = pool_next(st, h->page_lo);
    while (p < h->npages) {
        uint64_t end = pool_next_taken(st, p);
        if (end - p >= k) break;
        p = pool_next(st, end);
    }
    if (p >= h->npages) return MP_ENOSPACE;
    pool_take(st, p, k);
    pg[p].kind = PG_RUN;
    pg[p].used = (uint32_t)k;
    pg[p].items = n;
    for (uint64_t q = p + 1; q < p + k; q++) {
        pg[q].kind = PG_TAIL;
        pg[q].prev = (uint32_t)p;
    }
    h->run_pages += k;
    uint64_t off = p * h->page_size;
    mpi_head_on_alloc(m, off + bytes, bytes, n * h->item_size);
    *out = off;
    return MP_OK;
}

/* ---- lookup ---------------------------------------------------------------------------- */
typedef struct range {
    uint32_t page;
    uint64_t item;  /* index in the page (SLAB)           */
    uint64_t n;     /* items                              */
    uint64_t asked; /* bytes asked for                    */
    int run;        /* a multi-page array                 */
} range_t;

/* The live range that starts at off, or MP_ENOTALLOC. */
static int locate(const void *st, uint64_t off, range_t *r)
{
    const slab_hdr_t *h = CHD(st);
    uint64_t p = page_of(h, off);
    if (p >= h->npages) return MP_ENOTALLOC;
    const slab_page_t *P = &CPAGES(st)[p];
    uint64_t rel = off - p * h->page_size;
    r->page = (uint32_t)p;
    if (P->kind == PG_SLAB) {
        uint64_t i;
        if (h->stride_shift < 64) {
            if (rel & (h->stride - 1)) return MP_ENOTALLOC;
            i = rel >> h->stride_shift;
        } else {
            if (rel % h->stride) return MP_ENOTALLOC;
            i = rel / h->stride;
        }
        if (i >= P->cursor) return MP_ENOTALLOC;
        uint32_t s = CAREA(st, uint32_t, h->off_state)[p * h->per + i];
        r->item = i;
        r->run = 0;
        if ((s & ST_TAG) == 0 && s != 0) {
            r->n = 1;
            r->asked = s;
            return MP_OK;
        }
        if ((s & ST_TAG) == ST_ARRAY) {
            r->n = s & ST_LOW;
            r->asked = r->n * h->item_size;
            return MP_OK;
        }
        return MP_ENOTALLOC;
    }
    if (P->kind == PG_RUN && rel == 0) {
        r->item = 0;
        r->n = P->items;
        r->asked = P->items * h->item_size;
        r->run = 1;
        return MP_OK;
    }
    return MP_ENOTALLOC;
}

static void release(void *st, const range_t *r)
{
    slab_hdr_t *h = HD(st);
    slab_page_t *pg = PAGES(st);
    mp_head_t *m = (mp_head_t *)st;
    mpi_head_on_free(m, r->n * h->stride, r->asked);
    uint32_t p = r->page;
    if (r->run) {
        uint64_t k = pg[p].used;
        h->run_pages -= k;
        pool_give(st, p, k);
        return;
    }
    slab_page_t *P = &pg[p];
    uint64_t base = (uint64_t)p * h->per;
    uint32_t *state = AREA(st, uint32_t, h->off_state) + base;
    uint32_t *stack = AREA(st, uint32_t, h->off_stack) + base;
    mpi_assert(P->used >= r->n && h->used_items >= r->n);
    P->used -= (uint32_t)r->n;
    h->used_items -= r->n;
    if (P->used == 0) { /* every item is free: the page goes back to the pool */
        if (in_list(h, pg, p)) list_remove(h, pg, p);
        memset(state, 0, (size_t)P->cursor * sizeof *state);
        memset(stack, 0, (size_t)P->nfree * sizeof *stack);
        pool_give(st, p, 1);
        return;
    }
    if (P->nfree == 0 && r->item + r->n == P->cursor) {
        /* the last carved items, nothing on the stack: uncarve them (they are still
         * the next ones handed out), so that a free undoes its alloc byte for byte */
        memset(state + r->item, 0, (size_t)r->n * sizeof *state);
        P->cursor = (uint32_t)r->item;
    } else {
        for (uint64_t j = r->n; j-- > 0;) {
            uint32_t it = (uint32_t)(r->item + j);
            stack[P->nfree] = it;
            state[it] = ST_FREE | P->nfree;
            P->nfree++;
        }
    }
    if (h->partial != p) {
        if (in_list(h, pg, p)) list_remove(h, pg, p);
        list_push_front(h, pg, p);
    }
}

static int slab_free(void *st, uint64_t offset)
{
    range_t r;
    int rc = locate(st, offset, &r);
    if (rc) return rc;
    release(st, &r);
    return MP_OK;
}

int mp_slab_alloc_array(void *st, uint64_t n, uint64_t *out)
{
    return MPI_CHECKED(slab, st, "alloc_array", alloc_array(st, n, out));
}

static int free_array(void *st, uint64_t offset, uint64_t n)
{
    range_t r;
    int rc = locate(st, offset, &r);
    if (rc) return rc;
    if (n != r.n) return MP_EINVAL;
    release(st, &r);
    return MP_OK;
}

int mp_slab_free_array(void *st, uint64_t offset, uint64_t n)
{
    return MPI_CHECKED(slab, st, "free_array", free_array(st, offset, n));
}

int mp_slab_items_at(const void *st, uint64_t offset, uint64_t *n)
{
    range_t r;
    int rc = locate(st, offset, &r);
    if (rc) return rc;
    *n = r.n;
    return MP_OK;
}

static int slab_size_of(const void *st, uint64_t offset, uint64_t *out)
{
    range_t r;
    int rc = locate(st, offset, &r);
    if (rc) return rc;
    *out = r.n * CHD(st)->stride;
    return MP_OK;
}

/* In place for a single item (size <= item_size; align only matters for a move,
 * and every item is alike); arrays are not resized (MP_EINVAL). */
static int slab_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    range_t r;
    int rc = locate(st, offset, &r);
    if (rc) return rc;
    slab_hdr_t *h = HD(st);
    if (r.run || (AREA(st, uint32_t, h->off_state)[(uint64_t)r.page * h->per + r.item] &
                  ST_TAG) == ST_ARRAY)
        return MP_EINVAL;
    if (size > h->item_size) return MP_ENOSPACE;
    mp_head_t *m = (mp_head_t *)st;
    mpi_head_on_resize(m, offset + h->stride, h->stride, h->stride, r.asked, size);
    AREA(st, uint32_t, h->off_state)[(uint64_t)r.page * h->per + r.item] = (uint32_t)size;
    *out = offset;
    return MP_OK;
}

/* ---- init / reset ------------------------------------------------------------------------ */
static void slab_reset(void *st)
{
    mp_head_t *m = (mp_head_t *)st;
    slab_hdr_t *h = HD(st);
    slab_page_t *pg = PAGES(st);
    for (uint64_t p = 0; p < h->npages; p++) {
        memset(&pg[p], 0, sizeof pg[p]);
        pg[p].prev = pg[p].next = MP_NIL;
    }
    uint64_t *b = BITS(st);
    for (uint64_t w = 0; w < h->nwords; w++) {
        uint64_t lo = w * 64, n = h->npages - lo;
        b[w] = n >= 64 ? ~0ull : ((1ull << n) - 1);
    }
    memset((char *)st + h->off_state, 0, (size_t)(h->nitems * 8)); /* state and stack */
    h->used_items = h->run_pages = 0;
    h->free_pages = h->npages;
    h->partial = MP_NIL;
    h->page_lo = 0;
    mpi_head_on_reset(m);
    m->cursor = 0;
}

int mp_slab_init(void *st, uint64_t capacity, uint64_t item_size, uint64_t page_size)
{
    slab_hdr_t g;
    uint64_t size;
    if (mpi_slab_geometry(capacity, item_size, page_size, &g, &size, NULL, 0)) return MP_EINVAL;
    memset(st, 0, (size_t)OFF_PAGES);
    mp_head_t *m = (mp_head_t *)st;
    mpi_head_init(m, MP_KIND_SLAB, size, capacity);
    m->param[0] = item_size;
    m->param[1] = page_size;
    *HD(st) = g;
    /* the padding after the stack (state_size is rounded to 8) */
    uint64_t end = g.off_stack + g.nitems * 4;
    memset((char *)st + end, 0, (size_t)(size - end));
    slab_reset(st);
    return MP_OK;
}

/* ---- queries --------------------------------------------------------------------------------- */
static uint64_t free_items(const slab_hdr_t *h)
{
    return (h->npages - h->run_pages) * h->per - h->used_items;
}

static uint64_t slab_largest(const void *st)
{
    const slab_hdr_t *h = CHD(st);
    return free_items(h) ? h->item_size : 0;
}

static uint64_t slab_free_ranges(const void *st) { return free_items(CHD(st)); }

typedef struct walker {
    mp_walk_fn fn;
    void *ctx;
    uint64_t pos;
} walker_t;

static int emit(walker_t *w, uint64_t off, uint64_t size)
{
    int r;
    if (off > w->pos && (r = w->fn(w->ctx, w->pos, off - w->pos, 0))) return r;
    if ((r = w->fn(w->ctx, off, size, 1))) return r;
    w->pos = off + size;
    return 0;
}

static int slab_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    const mp_head_t *m = st;
    const slab_hdr_t *h = CHD(st);
    const slab_page_t *pg = CPAGES(st);
    const uint32_t *state = CAREA(st, uint32_t, h->off_state);
    walker_t w = {fn, ctx, 0};
    int r;
    for (uint64_t p = 0; p < h->npages; p++) {
        if (pg[p].kind == PG_RUN) {
            if ((r = emit(&w, p * h->page_size, pg[p].items * h->stride))) return r;
        } else if (pg[p].kind == PG_SLAB) {
            const uint32_t *s = state + p * h->per;
            uint64_t cur = pg[p].cursor < h->per ? pg[p].cursor : h->per;
            for (uint64_t i = 0; i < cur; i++) {
                uint64_t n = 0;
                if ((s[i] & ST_TAG) == 0 && s[i] != 0) n = 1;
                else if ((s[i] & ST_TAG) == ST_ARRAY) n = s[i] & ST_LOW;
                if (!n) continue;
                if ((r = emit(&w, item_offset(h, p, i), n * h->stride))) return r;
            }
        }
    }
    if (w.pos < m->capacity && (r = fn(ctx, w.pos, m->capacity - w.pos, 0))) return r;
    return MP_OK;
}

static int slab_why_nospace(const void *st, uint64_t size, uint64_t align, char *buf, size_t len)
{
    mp_slab_info_t in;
    mp_slab_info(st, &in);
    if (size > in.item_size)
        snprintf(buf, len, "larger than the item size %llu", (unsigned long long)in.item_size);
    else if (align > in.align)
        snprintf(buf, len, "align %llu is above the item alignment %llu",
                 (unsigned long long)align, (unsigned long long)in.align);
    else
        return 0;
    return 1;
}

/* The operation table (MP_DEBUG builds check the state after every change: internal.h). */
MPI_OPS_TABLE(slab,
    .name = "slab",
    .kind = MP_KIND_SLAB,
    .alloc = slab_alloc,
    .free = slab_free,
    .realloc = slab_realloc,
    .size_of = slab_size_of,
    .reset = slab_reset,
    .check = mpi_slab_check,
    .walk = slab_walk,
    .largest_free = slab_largest,
    .available = mpi_head_available,
    .free_ranges = slab_free_ranges,
    .why_nospace = slab_why_nospace,
    .fixed_size = 1);
