/*
 * tlsf.c -- Two-Level Segregated Fit over offsets (exact sizes, O(1)).
 *
 * Algorithm (Masmano et al., "TLSF: a new dynamic memory allocator for real-time
 * systems", 2004; the bin layout of sebbbi/OffsetAllocator, with more bins):
 *   - Free ranges are filed in bins.  A size s < 2^SLI goes to first level 0,
 *     second level s (exact).  Otherwise fl = msb(s) - SLI + 1 and the SLI bits
 *     under the msb pick one of SL_COUNT = 2^SLI second-level bins, so a bin spans
 *     at most 1/32 of its size.  A free range is filed under its size rounded DOWN.
 *   - A 64-bit first-level bitmap and one 32-bit second-level bitmap per first
 *     level find the first non-empty bin at or above any bin in O(1) (ctz).
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
 *   | fl_bitmap   | sl_bitmap[FL_COUNT]       | bins[FL_COUNT * SL_COUNT]         |
 *   | uint64_t    | uint32_t                  | uint32_t head node of each bin    |
 *   +-------------+---------------------------+----------------------------------+
 *   Bin (fl, sl) is bins[fl * SL_COUNT + sl]: the flat bin number b.
 *   Bin lists are doubly linked through node.link[0] (prev) / link[1] (next).
 *
 * Invariants (tlsf_fidx_check, plus those of ranges.h):
 *  T1. bit fl of fl_bitmap is set  <=>  sl_bitmap[fl] != 0.
 *  T2. bit sl of sl_bitmap[fl] is set  <=>  bins[fl][sl] != MP_NIL.
 *  T3. Every node in bin (fl, sl) is free and maps (rounded down) to (fl, sl);
 *      prev links mirror next links; the bins together hold exactly nfree nodes.
 */
#include "ranges.h"

/* ---- tunables ---------------------------------------------------------------- */
enum tlsf_public {
    SLI = 5, /* log2 of second-level bins per first level (>= 3 promised: 8 bins) */
};
/* ---- derived: do not edit ------------------------------------------------------ */
enum tlsf_private {
    SL_COUNT = 1 << SLI,
    SMALL = 1 << SLI,       /* sizes below this are binned exactly in fl 0 */
    FL_COUNT = 64 - SLI + 1 /* fl 0 plus one per msb in [SLI, 63]          */
};
_Static_assert(SL_COUNT <= 32, "sl_bitmap is 32 bits");
_Static_assert(FL_COUNT <= 64, "fl_bitmap is 64 bits");

typedef struct tlsf_index {
    uint64_t fl_bitmap;
    uint32_t sl_bitmap[FL_COUNT];
    uint32_t bins[FL_COUNT * SL_COUNT]; /* head node of bin b = fl * SL_COUNT + sl */
} tlsf_index_t;

#define TLSF_AREA ((sizeof(tlsf_index_t) + 7) & ~(size_t)7)

static inline tlsf_index_t *idx(void *st) { return (tlsf_index_t *)rs_area(st); }
static inline const tlsf_index_t *cidx(const void *st)
{
    return (const tlsf_index_t *)rs_carea(st);
}

#define TLSF_INLINE static inline __attribute__((always_inline))

static inline int msb64(uint64_t x) { return 63 - __builtin_clzll(x); }

/* Bins are numbered flat, b = fl * SL_COUNT + sl.  For s < 2 * SMALL the bin is s
 * itself (fl 0 exact, and fl 1 is exact too: its bins are one byte wide); above,
 * e = msb(s) - SLI bits are dropped: b = e * SL_COUNT + (s >> e).  One formula,
 * no branch: e = msb(s | 2 * SMALL) - SLI. */
TLSF_INLINE unsigned bin_down(uint64_t s)
{
    unsigned e = (unsigned)msb64(s | (2 * SMALL)) - SLI;
    return (e << SLI) + (unsigned)(s >> e);
}

/* (fl, sl) of the bin that holds ranges of size s (rounded down). */
static inline void map_down(uint64_t s, unsigned *fl, unsigned *sl)
{
    unsigned b = bin_down(s);
    *fl = b >> SLI;
    *sl = b & (SL_COUNT - 1);
}

/* The first bin whose every range is >= s; returns 0 when s is beyond all bins. */
TLSF_INLINE int bin_up(uint64_t s, unsigned *b)
{
    unsigned e = (unsigned)msb64(s | (2 * SMALL)) - SLI;
    uint64_t round = ((uint64_t)1 << e) - 1;
    if (s > UINT64_MAX - round) return 0;
    *b = bin_down(s + round);
    return 1;
}

/* First non-empty bin at or after bin b, in bin order; 0 when none. */
TLSF_INLINE int next_bin(const tlsf_index_t *x, unsigned *b)
{
    unsigned fl = *b >> SLI, sl = *b & (SL_COUNT - 1);
    uint32_t slmap = x->sl_bitmap[fl] & (~0u << sl);
    if (!slmap) {
        /* fl + 1 <= FL_COUNT < 64: the shift is defined */
        uint64_t flmap = x->fl_bitmap & (~0ull << (fl + 1));
        if (!flmap) return 0;
        fl = (unsigned)__builtin_ctzll(flmap);
        slmap = x->sl_bitmap[fl];
    }
    *b = (fl << SLI) + (unsigned)__builtin_ctz(slmap);
    return 1;
}

static const mp_fidx_t tlsf_fidx;

TLSF_INLINE uint32_t *bin_head(tlsf_index_t *x, unsigned b) { return &x->bins[b]; }

TLSF_INLINE void bin_link(tlsf_index_t *x, mp_rnode_t *nodes, uint32_t i, unsigned b)
{
    uint32_t *head = bin_head(x, b);
    uint32_t h = *head;
    nodes[i].link[0] = MP_NIL;
    nodes[i].link[1] = h;
    if (h != MP_NIL) nodes[h].link[0] = i;
    *head = i;
    x->sl_bitmap[b >> SLI] |= 1u << (b & (SL_COUNT - 1));
    x->fl_bitmap |= 1ull << (b >> SLI);
}

TLSF_INLINE void bin_unlink(tlsf_index_t *x, mp_rnode_t *nodes, uint32_t i, unsigned b)
{
    uint32_t p = nodes[i].link[0], q = nodes[i].link[1];
    if (q != MP_NIL) nodes[q].link[0] = p;
    if (p != MP_NIL) {
        nodes[p].link[1] = q;
        return;
    }
    *bin_head(x, b) = q;
    if (q == MP_NIL) {
        unsigned fl = b >> SLI;
        x->sl_bitmap[fl] &= ~(1u << (b & (SL_COUNT - 1)));
        if (!x->sl_bitmap[fl]) x->fl_bitmap &= ~(1ull << fl);
    }
}

TLSF_INLINE void tlsf_insert(void *st, uint32_t i)
{
    mp_rnode_t *nodes = rs_nodes(st, &tlsf_fidx);
    bin_link(idx(st), nodes, i, bin_down(nodes[i].size));
}

TLSF_INLINE void tlsf_remove(void *st, uint32_t i)
{
    mp_rnode_t *nodes = rs_nodes(st, &tlsf_fidx);
    bin_unlink(idx(st), nodes, i, bin_down(nodes[i].size));
}

/* A free range's size changed in place: it moves only when its bin changes (a large
 * range that grows or shrinks by a little stays where it is, untouched). */
TLSF_INLINE void tlsf_rekey(void *st, uint32_t i, uint64_t old_size)
{
    mp_rnode_t *nodes = rs_nodes(st, &tlsf_fidx);
    unsigned b0 = bin_down(old_size), b = bin_down(nodes[i].size);
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
    while (b < stop && next_bin(x, &b) && b < stop) {
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
    unsigned b0 = bin_down(size), bu;
    /* (1) the head of the request's own bin */
    uint32_t h = x->bins[b0];
    if (h != MP_NIL && fits(&nodes[h], size, align)) return h;
    /* (2) good fit: every range in a bin at or above need fits */
    uint64_t need = size + (align - 1);
    if (need >= size && bin_up(need, &bu)) {
        unsigned b = bu;
        if (next_bin(x, &b)) return x->bins[b];
    } else {
        bu = FL_COUNT * SL_COUNT;
    }
    /* (3) complete search of the bins from the request's own up to the good-fit bin */
    return tlsf_scan(x, nodes, b0, bu, size, align);
}

static uint64_t tlsf_largest(const void *st)
{
    const tlsf_index_t *x = cidx(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &tlsf_fidx);
    if (!x->fl_bitmap) return 0;
    unsigned fl = (unsigned)msb64(x->fl_bitmap);
    unsigned sl = (unsigned)(31 - __builtin_clz(x->sl_bitmap[fl]));
    uint64_t best = 0;
    for (uint32_t i = x->bins[fl * SL_COUNT + sl]; i != MP_NIL; i = nodes[i].link[1])
        if (nodes[i].size > best) best = nodes[i].size;
    return best;
}

static void tlsf_clear(void *st)
{
    tlsf_index_t *x = idx(st);
    x->fl_bitmap = 0;
    memset(x->sl_bitmap, 0, sizeof x->sl_bitmap);
    memset(x->bins, 0xff, sizeof x->bins);
}

static int tlsf_fidx_check(const void *st, char *msg, size_t msglen)
{
    const tlsf_index_t *x = cidx(st);
    const mp_rset_t *rs = rs_cset(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &tlsf_fidx);
    uint64_t filed = 0;
    /* bits at or above FL_COUNT have no sl_bitmap: largest/next_bin would index past it */
    uint64_t fl_valid = FL_COUNT >= 64 ? ~0ull : ((uint64_t)1 << (FL_COUNT & 63)) - 1;
    if (x->fl_bitmap & ~fl_valid) RS_FAIL("first-level bitmap 0x%llx has bits beyond level %u",
                                          (unsigned long long)x->fl_bitmap, FL_COUNT - 1);
    for (unsigned fl = 0; fl < FL_COUNT; fl++) {
        if (((x->fl_bitmap >> fl) & 1) != (x->sl_bitmap[fl] != 0))
            RS_FAIL("first-level bit %u disagrees with its second-level bitmap", fl);
        for (unsigned sl = 0; sl < SL_COUNT; sl++) {
            uint32_t h = x->bins[fl * SL_COUNT + sl];
            if (((x->sl_bitmap[fl] >> sl) & 1) != (h != MP_NIL))
                RS_FAIL("bitmap bit (%u, %u) disagrees with its bin", fl, sl);
            uint32_t prev = MP_NIL;
            for (uint32_t i = h; i != MP_NIL; i = nodes[i].link[1]) {
                if (i >= rs->top) RS_FAIL("bin (%u, %u) links node %u beyond the watermark", fl,
                                          sl, i);
                if ((nodes[i].flags & (RN_INUSE | RN_FREE)) != (RN_INUSE | RN_FREE))
                    RS_FAIL("bin (%u, %u) holds node %u, which is not free", fl, sl, i);
                unsigned f, s;
                map_down(nodes[i].size, &f, &s);
                if (f != fl || s != sl) RS_FAIL("node %u of size %llu filed in bin (%u, %u)", i,
                                                (unsigned long long)nodes[i].size, fl, sl);
                if (nodes[i].link[0] != prev) RS_FAIL("bin (%u, %u): bad prev link at node %u",
                                                      fl, sl, i);
                if (++filed > rs->nfree) RS_FAIL("bins hold more nodes than free ranges");
                prev = i;
            }
        }
    }
    if (filed != rs->nfree) RS_FAIL("bins hold %llu nodes for %u free ranges",
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
    return rs_state_size(&tlsf_fidx, capacity, max_blocks);
}

int mp_tlsf_init(void *st, uint64_t capacity, uint64_t max_blocks)
{
    return rs_init(st, &tlsf_fidx, MP_KIND_TLSF, capacity, max_blocks);
}

static int tlsf_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    return rs_alloc(st, &tlsf_fidx, size, align, out);
}
static int tlsf_free(void *st, uint64_t offset) { return rs_free(st, &tlsf_fidx, offset); }
static int tlsf_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out)
{
    return rs_realloc(st, &tlsf_fidx, offset, size, align, out);
}
static int tlsf_size_of(const void *st, uint64_t offset, uint64_t *out)
{
    return rs_size_of(st, &tlsf_fidx, offset, out);
}
static void tlsf_reset(void *st) { rs_reset(st, &tlsf_fidx); }
static int tlsf_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    return rs_check(st, len, &tlsf_fidx, MP_KIND_TLSF, msg, msglen);
}
static int tlsf_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    return rs_walk(st, &tlsf_fidx, fn, ctx);
}
static uint64_t tlsf_available(const void *st)
{
    const mp_head_t *h = st;
    return h->capacity - h->used;
}
static uint64_t tlsf_free_ranges(const void *st) { return rs_cset(st)->nfree; }

const mp_ops_t mp_tlsf_ops = {
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
    .available = tlsf_available,
    .free_ranges = tlsf_free_ranges,
};
