/*
 * tlsf.c -- Two-Level Segregated Fit over offsets (exact sizes, O(1)).
 *
 * Algorithm (Masmano et al., "TLSF: a new dynamic memory allocator for real-time
 * systems", 2004; the bin layout of sebbbi/OffsetAllocator, with more bins):
 *   - Free ranges are filed in the segregated size bins of ranges_bins.h (a size below
 *     64 has a bin of its own; above, 32 bins per power of two, so a bin spans at
 *     most 1/32 of its sizes), under their size rounded DOWN, one doubly linked
 *     list per bin; the bin map's bitmaps find the first non-empty bin at or above
 *     any bin in O(1) (ctz).
 *   - alloc(size, align): (1) the head of the request's own bin if it fits
 *     (a better fit, still O(1)); (2) the first non-empty bin at or above
 *     size + align - 1 rounded UP to a bin boundary: any range there fits;
 *     (3) only when both miss, the bins between those two are scanned, so a
 *     request that some free range can hold never fails (offset-allocator fails
 *     alloc(513) in a 513-byte pool; this does not).
 *   - free merges with free physical neighbours at once (ranges.h).
 *
 * Layout of the free index (after mp_head_t and mp_rset_t, see ranges.h):
 *
 *   +-------------+---------------------------+----------------------------------+
 *   | map.fl      | map.sl[RS_FL_COUNT]       | bins[RS_BINS]                     |
 *   | uint64_t    | uint32_t                  | uint32_t head node of each bin    |
 *   +-------------+---------------------------+----------------------------------+
 *   Bin (fl, sl) is bins[fl * RS_SL_COUNT + sl]: the flat bin number b.
 *   Bin lists are doubly linked through node.link[0] (prev) / link[1] (next).
 *
 * Invariants (tlsf_fidx_check, plus those of ranges.h):
 *  T1. bit fl of map.fl is set  <=>  map.sl[fl] != 0 (no bits beyond RS_FL_COUNT).
 *  T2. bit sl of map.sl[fl] is set  <=>  bins[fl * RS_SL_COUNT + sl] != MP_NIL.
 *  T3. Every node in bin b is free, its size maps (rounded down) to b and its flags
 *      are RN_INUSE | RN_FREE | b << 8 (the bin, cached); prev links mirror next
 *      links; the bins together hold exactly nfree nodes.
 */
#include "ranges.h"
#include "ranges_bins.h"
#include "replay_loop.h"

typedef struct tlsf_index {
    rs_binmap_t map;         /* which bins are non-empty                        */
    uint32_t bins[RS_BINS];  /* head node of bin b = fl * RS_SL_COUNT + sl      */
} tlsf_index_t;

#define TLSF_AREA ((sizeof(tlsf_index_t) + 7) & ~(size_t)7)
#define TLSF_INLINE static inline __attribute__((always_inline))
#define TLSF_BIN_SHIFT 8 /* a free node's flags: RN_INUSE | RN_FREE | bin << 8 */

static inline tlsf_index_t *idx(void *st) { return (tlsf_index_t *)rs_area(st); }
static inline const tlsf_index_t *cidx(const void *st)
{
    return (const tlsf_index_t *)rs_carea(st);
}

static const mp_fidx_t tlsf_fidx;

TLSF_INLINE uint32_t *bin_head(tlsf_index_t *x, unsigned b) { return &x->bins[b]; }

/* A free node's bin, cached in its flags (T3). */
TLSF_INLINE unsigned bin_of(const mp_rnode_t *n) { return n->flags >> TLSF_BIN_SHIFT; }

/* Bin lists change without branches on their neighbours (whether a neighbour
 * exists is data, and a mispredicted branch costs more than a store): a link that
 * would go to a missing neighbour goes to node i itself, whose links are written
 * (bin_link) or dead (bin_unlink) afterwards. */
TLSF_INLINE void bin_link(tlsf_index_t *x, mp_rnode_t *nodes, uint32_t i, unsigned b)
{
    uint32_t *head = bin_head(x, b);
    uint32_t h = *head;
    nodes[rs_sel32(h != MP_NIL, h, i)].link[0] = i;
    nodes[i].link[0] = MP_NIL;
    nodes[i].link[1] = h;
    nodes[i].flags = RN_INUSE | RN_FREE | (b << TLSF_BIN_SHIFT);
    *head = i;
    rs_bin_mark(&x->map, b);
}

TLSF_INLINE void bin_unlink(tlsf_index_t *x, mp_rnode_t *nodes, uint32_t i, unsigned b)
{
    uint32_t p = nodes[i].link[0], q = nodes[i].link[1];
    uint32_t *head = bin_head(x, b);
    nodes[rs_sel32(q != MP_NIL, q, i)].link[0] = p;
    nodes[rs_sel32(p != MP_NIL, p, i)].link[1] = q;
    uint32_t h = rs_sel32(p != MP_NIL, *head, q); /* i was the head: q is */
    *head = h;
    rs_bin_unmark_if(&x->map, b, h == MP_NIL);
}

TLSF_INLINE void tlsf_insert(void *st, uint32_t i)
{
    mp_rnode_t *nodes = rs_nodes(st, &tlsf_fidx);
    bin_link(idx(st), nodes, i, rs_bin_down(nodes[i].size));
}

TLSF_INLINE void tlsf_remove(void *st, uint32_t i)
{
    mp_rnode_t *nodes = rs_nodes(st, &tlsf_fidx);
    bin_unlink(idx(st), nodes, i, bin_of(&nodes[i]));
}

/* A free range's size changed in place: it moves only when its bin changes (a large
 * range that grows or shrinks by a little stays where it is, untouched). */
TLSF_INLINE void tlsf_rekey(void *st, uint32_t i, uint64_t old_size)
{
    (void)old_size; /* the old bin is cached */
    mp_rnode_t *nodes = rs_nodes(st, &tlsf_fidx);
    unsigned b0 = bin_of(&nodes[i]), b = rs_bin_down(nodes[i].size);
    if (b == b0) return;
    tlsf_index_t *x = idx(st);
    bin_unlink(x, nodes, i, b0);
    bin_link(x, nodes, i, b);
}

TLSF_INLINE int fits(const mp_rnode_t *n, uint64_t size, uint64_t align)
{
    uint64_t pad = (0 - n->offset) & (align - 1); /* align_up(offset) - offset */
    return n->size >= pad && n->size - pad >= size;
}

/* (3): every bin from b up to (not including) stop, every range in it. */
static uint32_t tlsf_scan(const tlsf_index_t *x, const mp_rnode_t *nodes, unsigned b,
                          unsigned stop, uint64_t size, uint64_t align)
{
    while (b < stop && rs_next_bin(&x->map, &b) && b < stop) {
        for (uint32_t i = x->bins[b]; i != MP_NIL; i = nodes[i].link[1])
            if (fits(&nodes[i], size, align)) return i;
        b++;
    }
    return MP_NIL;
}

TLSF_INLINE uint32_t tlsf_find(void *st, uint64_t size, uint64_t align)
{
    const tlsf_index_t *x = cidx(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &tlsf_fidx);
    unsigned e = (unsigned)(63 - __builtin_clzll(size | RS_SL_COUNT)) - RS_SLI;
    unsigned b0 = (e << RS_SLI) + (unsigned)(size >> e), bu; /* rs_bin_down(size) */
    /* (1) the head of the request's own bin */
    uint32_t h = x->bins[b0];
    if (h != MP_NIL && fits(&nodes[h], size, align)) return h;
    /* (2) good fit: every range in a bin at or above need fits */
    uint64_t need = size + (align - 1);
    if (align == 1) { /* rs_bin_up(size): the own bin when size is its lowest */
        bu = b0 + ((size & (((uint64_t)1 << e) - 1)) != 0);
        unsigned b = bu;
        if (bu < RS_BINS && rs_next_bin(&x->map, &b)) return x->bins[b];
    } else if (need >= size && rs_bin_up(need, &bu)) {
        unsigned b = bu;
        if (rs_next_bin(&x->map, &b)) return x->bins[b];
    } else {
        bu = RS_BINS;
    }
    /* (3) complete search of the bins from the request's own up to the good-fit bin */
    return tlsf_scan(x, nodes, b0, bu, size, align);
}

static uint64_t tlsf_largest(const void *st)
{
    const tlsf_index_t *x = cidx(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &tlsf_fidx);
    unsigned b;
    if (!rs_last_bin(&x->map, &b)) return 0;
    uint64_t best = 0;
    for (uint32_t i = x->bins[b]; i != MP_NIL; i = nodes[i].link[1])
        if (nodes[i].size > best) best = nodes[i].size;
    return best;
}

static void tlsf_clear(void *st)
{
    tlsf_index_t *x = idx(st);
    memset(&x->map, 0, sizeof x->map);
    memset(x->bins, 0xff, sizeof x->bins);
}

static int tlsf_fidx_check(const void *st, char *msg, size_t msglen)
{
    const tlsf_index_t *x = cidx(st);
    const mp_rset_t *rs = rs_cset(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &tlsf_fidx);
    uint64_t filed = 0;
    int rc = rs_binmap_check(&x->map, x->bins, msg, msglen); /* T1, T2 */
    if (rc) return rc;
    for (unsigned b = 0; b < RS_BINS; b++) {
        uint32_t prev = MP_NIL;
        for (uint32_t i = x->bins[b]; i != MP_NIL; i = nodes[i].link[1]) {
            if (i >= rs->top) MPI_FAIL("bin %u links node %u beyond the watermark", b, i);
            if ((nodes[i].flags & (RN_INUSE | RN_FREE)) != (RN_INUSE | RN_FREE))
                MPI_FAIL("bin %u holds node %u, which is not free", b, i);
            if (nodes[i].flags != (RN_INUSE | RN_FREE | (b << TLSF_BIN_SHIFT)))
                MPI_FAIL("node %u in bin %u has flags 0x%x", i, b, nodes[i].flags);
            if (rs_bin_down(nodes[i].size) != b)
                MPI_FAIL("node %u of size %llu filed in bin %u", i,
                         (unsigned long long)nodes[i].size, b);
            if (nodes[i].link[0] != prev) MPI_FAIL("bin %u: bad prev link at node %u", b, i);
            if (++filed > rs->nfree) MPI_FAIL("bins hold more nodes than free ranges");
            prev = i;
        }
    }
    if (filed != rs->nfree) MPI_FAIL("bins hold %llu nodes for %u free ranges",
                                     (unsigned long long)filed, rs->nfree);
    return MP_OK;
}

static const mp_fidx_t tlsf_fidx = {
    .area_size = TLSF_AREA,
    .node_size = sizeof(mp_rnode_t),
    .insert = tlsf_insert,
    .remove = tlsf_remove,
    .rekey = tlsf_rekey,
    .find = tlsf_find,
    .largest = tlsf_largest,
    .clear = tlsf_clear,
    .check = tlsf_fidx_check,
};

/* ---- the strategy ------------------------------------------------------------------ */
uint64_t mp_tlsf_state_size(uint64_t capacity, uint64_t max_blocks)
{
    return mpi_ranges_state_size(&tlsf_fidx, capacity, max_blocks);
}

int mp_tlsf_init(void *st, uint64_t capacity, uint64_t max_blocks)
{
    return mpi_ranges_init(st, &tlsf_fidx, MP_KIND_TLSF, capacity, max_blocks);
}

TLSF_INLINE int tlsf_alloc_in(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    /* most requests are unaligned: a copy of the path with align folded to 1 */
    if (align == 1) return rs_alloc(st, &tlsf_fidx, size, 1, out);
    return rs_alloc(st, &tlsf_fidx, size, align, out);
}
TLSF_INLINE int tlsf_free_in(void *st, uint64_t offset) { return rs_free(st, &tlsf_fidx, offset); }
static int tlsf_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    return tlsf_alloc_in(st, size, align, out);
}
static int tlsf_free(void *st, uint64_t offset) { return tlsf_free_in(st, offset); }
static int tlsf_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out)
{
    return mpi_ranges_realloc(st, &tlsf_fidx, offset, size, align, out);
}
RS_HANDLE_FORM(tlsf, &tlsf_fidx)
/* mp_ops_t.replay: the trace replay loop with alloc and free inlined, in the handle form
 * (replay_loop.h; debug builds' public table leaves it out, internal.h) */
MPI_REPLAY_LOOP(tlsf_replay, tlsf_alloc_h, tlsf_free_h, tlsf_realloc_h)
static int tlsf_size_of(const void *st, uint64_t offset, uint64_t *out)
{
    return rs_size_of(st, &tlsf_fidx, offset, out);
}
static void tlsf_reset(void *st) { mpi_ranges_reset(st, &tlsf_fidx); }

int mpi_tlsf_freed_extent(const void *st, uint64_t off, uint64_t *lo, uint64_t *hi)
{
    const mp_rnode_t *nodes = rs_cnodes(st, &tlsf_fidx);
    uint32_t i = rs_lookup(st, &tlsf_fidx, off);
    if (i == MP_NIL) return MP_ENOTALLOC;
    const mp_rnode_t *I = rs_cnode(&tlsf_fidx, nodes, i), *N;
    *lo = I->offset;
    *hi = I->offset + I->size;
    if (I->prev != MP_NIL && ((N = rs_cnode(&tlsf_fidx, nodes, I->prev))->flags & RN_FREE))
        *lo = N->offset;
    if (I->next != MP_NIL && ((N = rs_cnode(&tlsf_fidx, nodes, I->next))->flags & RN_FREE))
        *hi = N->offset + N->size;
    return MP_OK;
}
static int tlsf_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    return mpi_ranges_check(st, len, &tlsf_fidx, MP_KIND_TLSF, msg, msglen);
}
static int tlsf_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    return mpi_ranges_walk(st, &tlsf_fidx, fn, ctx);
}

static uint64_t tlsf_hole(const void *st, uint64_t len, uint64_t *off)
{
    return mpi_ranges_hole(st, &tlsf_fidx, len, off);
}
static uint64_t tlsf_grow_size(const void *st) { return mpi_ranges_grow_size(st, &tlsf_fidx); }
static int tlsf_grow(const void *st, void *dst, uint64_t dst_len)
{
    return mpi_ranges_grow(st, &tlsf_fidx, dst, dst_len);
}

/* The operation table (MP_DEBUG builds check the state after every change: internal.h). */
MPI_OPS_TABLE(tlsf,
    .name = "tlsf",
    .kind = MP_KIND_TLSF,
    .alloc = tlsf_alloc,
    .free = tlsf_free,
    .realloc = tlsf_realloc,
    .size_of = tlsf_size_of,
    .reset = tlsf_reset,
    .check = tlsf_check,
    .walk = tlsf_walk,
    .largest_free = tlsf_largest,
    .available = mpi_head_available,
    .free_ranges = mpi_ranges_free_ranges,
    .grow_size = tlsf_grow_size,
    .grow = tlsf_grow,
    .hole = tlsf_hole,
    .alloc_handle = tlsf_alloc_handle,
    .free_handle = tlsf_free_handle,
    .by_handle = tlsf_by_handle,
    .replay = tlsf_replay);
