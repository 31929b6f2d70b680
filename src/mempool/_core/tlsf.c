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

#define TLSF_INLINE static inline __attribute__((always_inline))
#define TLSF_BIN_SHIFT 8 /* a free node's flags: RN_INUSE | RN_FREE | bin << 8 */

/* A free node's bin, cached in its flags (T3). */
TLSF_INLINE unsigned bin_of(const mp_rnode_t *n) { return n->flags >> TLSF_BIN_SHIFT; }

TLSF_INLINE int fits(const mp_rnode_t *n, uint64_t size, uint64_t align)
{
    uint64_t pad = (0 - n->offset) & (align - 1); /* align_up(offset) - offset */
    return n->size >= pad && n->size - pad >= size;
}

/* The full layout: every size has a bin (RS_BINS, the layout above). */
#define TI(name) tlsf_##name
#define TI_SLI RS_SLI
#define TI_FL RS_FL_COUNT
#define TI_BINS RS_BINS
#define TI_SLW uint32_t
#include "tlsf_index.h"

/* The compact layout of a small pool (capacity < MP_TLSF_COMPACT_CAP, head.param[1] = 1):
 * 8 second-level bins per power of two (a bin spans at most 1/8 of its sizes; sizes
 * below 16 have one each), and bins only up to the largest size below the cap: 144
 * bins and 18 one-byte bitmaps, 604 bytes where the full index takes 7,928.  With the
 * default node budget a 64 KiB pool's state is 1.97 % of its capacity (in the full
 * layout: 15.5 %). */
#define TLSF_C_SLI 3
#define TLSF_C_FL 18 /* levels 0..17: rs_bin_down_n(MP_TLSF_COMPACT_CAP - 1, 3) = 143 */
#define TI(name) tlsfc_##name
#define TI_SLI TLSF_C_SLI
#define TI_FL TLSF_C_FL
#define TI_BINS (TLSF_C_FL << TLSF_C_SLI)
#define TI_SLW uint8_t
#include "tlsf_index.h"
_Static_assert(MP_TLSF_COMPACT_CAP == (uint64_t)1 << 20, "the compact bins end at 2**20 - 1");
_Static_assert((TLSF_C_FL << TLSF_C_SLI) == 144, "rs_bin_down_n(2**20 - 1, 3) + 1 bins");

#define TLSF_PARAM_LAYOUT 1 /* head.param[1]: 0 the full layout, 1 the compact one */
TLSF_INLINE int compact(const void *st)
{
    return __builtin_expect(((const mp_head_t *)st)->param[TLSF_PARAM_LAYOUT] != 0, 0);
}

/* ---- the strategy ------------------------------------------------------------------ */
uint64_t mp_tlsf_state_size(uint64_t capacity, uint64_t max_blocks)
{
    return mpi_ranges_state_size(&tlsf_fidx, capacity, max_blocks);
}

int mp_tlsf_init(void *st, uint64_t capacity, uint64_t max_blocks)
{
    return mpi_ranges_init(st, &tlsf_fidx, MP_KIND_TLSF, capacity, max_blocks);
}

uint64_t mp_tlsf_compact_state_size(uint64_t capacity, uint64_t max_blocks)
{
    if (capacity >= MP_TLSF_COMPACT_CAP) return 0;
    return mpi_ranges_state_size(&tlsfc_fidx, capacity, max_blocks);
}

int mp_tlsf_compact_init(void *st, uint64_t capacity, uint64_t max_blocks)
{
    if (capacity >= MP_TLSF_COMPACT_CAP) return MP_EINVAL;
    int rc = mpi_ranges_init(st, &tlsfc_fidx, MP_KIND_TLSF, capacity, max_blocks);
    if (rc == MP_OK) ((mp_head_t *)st)->param[TLSF_PARAM_LAYOUT] = 1;
    return rc;
}

uint64_t mp_tlsf_sized_state_size(uint64_t capacity, uint64_t max_blocks)
{
    return capacity < MP_TLSF_COMPACT_CAP ? mp_tlsf_compact_state_size(capacity, max_blocks)
                                          : mp_tlsf_state_size(capacity, max_blocks);
}

int mp_tlsf_sized_init(void *st, uint64_t capacity, uint64_t max_blocks)
{
    return capacity < MP_TLSF_COMPACT_CAP ? mp_tlsf_compact_init(st, capacity, max_blocks)
                                          : mp_tlsf_init(st, capacity, max_blocks);
}

/* Each operation goes to its layout's copy (one predictable branch on the head). */
#define TLSF_BOTH(call) (compact(st) ? tlsfc_##call : tlsf_##call)
static inline const mp_fidx_t *fidx_of(const void *st)
{
    return compact(st) ? &tlsfc_fidx : &tlsf_fidx;
}

TLSF_INLINE int tlsf_alloc_in(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    /* most requests are unaligned: a copy of the path with align folded to 1 */
    if (align == 1) return rs_alloc(st, &tlsf_fidx, size, 1, out);
    return rs_alloc(st, &tlsf_fidx, size, align, out);
}
/* (the compact copies out of line: the full layout's paths stay as they were, but for
 * the test of the layout) */
static __attribute__((noinline)) int tlsfc_alloc(void *st, uint64_t size, uint64_t align,
                                                 uint64_t *out)
{
    return rs_alloc(st, &tlsfc_fidx, size, align, out);
}
static __attribute__((noinline)) int tlsfc_free(void *st, uint64_t offset)
{
    return rs_free(st, &tlsfc_fidx, offset);
}
static __attribute__((noinline)) int tlsfc_size_of(const void *st, uint64_t offset,
                                                   uint64_t *out)
{
    return rs_size_of(st, &tlsfc_fidx, offset, out);
}
static int tlsf_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    if (compact(st)) return tlsfc_alloc(st, size, align, out);
    return tlsf_alloc_in(st, size, align, out);
}
static int tlsf_free(void *st, uint64_t offset)
{
    if (compact(st)) return tlsfc_free(st, offset);
    return rs_free(st, &tlsf_fidx, offset);
}
static int tlsf_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out)
{
    return mpi_ranges_realloc(st, fidx_of(st), offset, size, align, out);
}
#ifdef MP_DEBUG /* (the compact copy's checked forms check with TLSF's own table) */
#define mpi_tlsfc_ops_raw mpi_tlsf_ops_raw
#endif
RS_HANDLE_FORM(tlsf, &tlsf_fidx)
RS_HANDLE_FORM(tlsfc, &tlsfc_fidx)
static int tlsf_alloc_handle_any(void *st, uint64_t size, uint64_t align, uint64_t *offset,
                                 uint64_t *node)
{
    return TLSF_BOTH(alloc_handle)(st, size, align, offset, node);
}
static int tlsf_free_handle_any(void *st, uint64_t node, uint64_t offset)
{
    return TLSF_BOTH(free_handle)(st, node, offset);
}
static uint64_t tlsf_by_handle_any(const void *st) { return TLSF_BOTH(by_handle)(st); }
/* mp_ops_t.replay: the trace replay loop with alloc and free inlined, in the handle form
 * (replay_loop.h; debug builds' public table leaves it out, internal.h), one per layout */
MPI_REPLAY_LOOP(tlsf_replay_full, tlsf_alloc_h, tlsf_free_h, tlsf_realloc_h)
MPI_REPLAY_LOOP(tlsfc_replay, tlsfc_alloc_h, tlsfc_free_h, tlsfc_realloc_h)
static uint64_t tlsf_replay(void *st, uint64_t n, const uint8_t *op, const uint32_t *id,
                            const uint64_t *size, const uint32_t *align, uint32_t max_id,
                            uint64_t *ptr)
{
    if (compact(st)) return tlsfc_replay(st, n, op, id, size, align, max_id, ptr);
    return tlsf_replay_full(st, n, op, id, size, align, max_id, ptr);
}
static int tlsf_size_of(const void *st, uint64_t offset, uint64_t *out)
{
    if (compact(st)) return tlsfc_size_of(st, offset, out);
    return rs_size_of(st, &tlsf_fidx, offset, out);
}
static void tlsf_reset(void *st) { mpi_ranges_reset(st, fidx_of(st)); }

/* (the Heap's TLSF, always the full layout: heap.c) */
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
    const mp_head_t *h = st;
    if (len < sizeof *h) return mpi_ranges_check(st, len, &tlsf_fidx, MP_KIND_TLSF, msg, msglen);
    /* the layout first: a compact index past its cap would be indexed beyond its bins */
    if (h->param[TLSF_PARAM_LAYOUT] > 1)
        MPI_FAIL("layout %llu is neither the full (0) nor the compact one (1)",
                 (unsigned long long)h->param[TLSF_PARAM_LAYOUT]);
    if (compact(st) && h->capacity >= MP_TLSF_COMPACT_CAP)
        MPI_FAIL("a compact state of capacity %llu (its bins end below %llu)",
                 (unsigned long long)h->capacity, (unsigned long long)MP_TLSF_COMPACT_CAP);
    return mpi_ranges_check(st, len, fidx_of(st), MP_KIND_TLSF, msg, msglen);
}
static int tlsf_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    return mpi_ranges_walk(st, fidx_of(st), fn, ctx);
}
static uint64_t tlsf_largest_any(const void *st) { return TLSF_BOTH(largest)(st); }

static uint64_t tlsf_hole(const void *st, uint64_t len, uint64_t *off)
{
    /* (the head's layout word before anything reads it: the Heap asks with the bytes
     * left after its own part of an untrusted snapshot, which may be fewer) */
    if (len < sizeof(mp_head_t)) return 0;
    return mpi_ranges_hole(st, fidx_of(st), len, off);
}
static uint64_t tlsf_grow_size(const void *st)
{
    return mpi_ranges_grow_size(st, fidx_of(st));
}
static int tlsf_grow(const void *st, void *dst, uint64_t dst_len)
{
    return mpi_ranges_grow(st, fidx_of(st), dst, dst_len);
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
    .largest_free = tlsf_largest_any,
    .available = mpi_head_available,
    .free_ranges = mpi_ranges_free_ranges,
    .grow_size = tlsf_grow_size,
    .grow = tlsf_grow,
    .hole = tlsf_hole,
    .alloc_handle = tlsf_alloc_handle_any,
    .free_handle = tlsf_free_handle_any,
    .by_handle = tlsf_by_handle_any,
    .replay = tlsf_replay);
