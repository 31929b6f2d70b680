/*
 * ranges_bins.h -- the segregated size bins of the exact strategies: TLSF files its
 * free ranges in a list per bin, BestFit in a tree per bin (tlsf.c, bestfit.c).  The
 * range engine (ranges.h) does not use them; this header builds on its RS_HOT and
 * rs_sel32.
 */
#ifndef MEMPOOL_RANGES_BINS_H
#define MEMPOOL_RANGES_BINS_H

#include <stdio.h>

#include "ranges.h"

/* TLSF's two-level size map (Masmano et al. 2004; the layout of sebbbi/OffsetAllocator
 * with more bins), shared by TLSF (a list per bin) and BestFit (a tree per bin).
 * A size s < 2 * RS_SL_COUNT has a bin of its own; above, the RS_SLI bits under the
 * msb pick one of RS_SL_COUNT bins per power of two, so a bin spans at most 1/32 of
 * its sizes.  Bins are numbered flat, b = fl * RS_SL_COUNT + sl: for s < 64, b = s;
 * above, e = msb(s) - RS_SLI bits are dropped and b = e * RS_SL_COUNT + (s >> e).
 * One formula, no branch: e = msb(s | 32) - RS_SLI (0 for every s < 64).  A range is filed under its
 * size rounded DOWN; every range in a bin >= rs_bin_up(s) is >= s.
 *
 * A 64-bit first-level bitmap and a 32-bit second-level bitmap per first level find
 * the first non-empty bin at or after any bin in O(1) (ctz). */
enum rs_bins {
    RS_SLI = 5,                           /* log2 of second-level bins per first level */
    RS_SL_COUNT = 1 << RS_SLI,            /* (>= 8 promised)                           */
    RS_FL_COUNT = 64 - RS_SLI + 1,        /* fl 0 plus one per msb in [RS_SLI, 63]     */
    RS_BINS = RS_FL_COUNT * RS_SL_COUNT,
    RS_EXACT = 2 * RS_SL_COUNT            /* sizes below this have a bin of their own  */
};
_Static_assert(RS_SL_COUNT <= 32, "the second-level bitmaps are 32 bits");
_Static_assert(RS_FL_COUNT <= 64, "the first-level bitmap is 64 bits");

typedef struct rs_binmap {
    uint64_t fl;              /* bit fl set <=> sl[fl] != 0                     */
    uint32_t sl[RS_FL_COUNT]; /* bit sl of sl[fl] set <=> bin fl * 32 + sl non-empty */
} rs_binmap_t;

/* The map's operations for any second-level count 1 << sli (sli in [3, 5]) over a map of
 * nfl first levels: the `_n` forms, which the strategies call with constants (TLSF's
 * compact layout uses sli 3: tlsf.c); the plain names are the layout above.  A
 * second-level word is as wide as its bins: a byte for sli 3, 16 bits for 4, 32 for 5. */
RS_HOT uint32_t rs_slw_get(const void *slw, unsigned fl, unsigned sli)
{
    if (sli <= 3) return ((const uint8_t *)slw)[fl];
    if (sli == 4) return ((const uint16_t *)slw)[fl];
    return ((const uint32_t *)slw)[fl];
}

RS_HOT void rs_slw_set(void *slw, unsigned fl, uint32_t v, unsigned sli)
{
    if (sli <= 3) ((uint8_t *)slw)[fl] = (uint8_t)v;
    else if (sli == 4) ((uint16_t *)slw)[fl] = (uint16_t)v;
    else ((uint32_t *)slw)[fl] = v;
}

RS_HOT unsigned rs_bin_down_n(uint64_t s, unsigned sli)
{
    unsigned e = (unsigned)(63 - __builtin_clzll(s | ((uint64_t)1 << sli))) - sli;
    return (e << sli) + (unsigned)(s >> e);
}

/* The first bin whose every range is >= s; 0 when s is beyond all bins. */
RS_HOT int rs_bin_up_n(uint64_t s, unsigned *b, unsigned sli)
{
    unsigned e = (unsigned)(63 - __builtin_clzll(s | ((uint64_t)1 << sli))) - sli;
    uint64_t round = ((uint64_t)1 << e) - 1;
    if (s > UINT64_MAX - round) return 0;
    *b = rs_bin_down_n(s + round, sli);
    return 1;
}

/* The first non-empty bin at or after bin *b (whose level is below the map's count); 0
 * when none.  No branch on whether it is in b's own first level: the candidates are
 * this level's bins at or after b (when there are any) and every later level. */
RS_HOT int rs_next_bin_n(uint64_t flw, const void *slw, unsigned *b, unsigned sli)
{
    unsigned fl = *b >> sli, sl = *b & ((1u << sli) - 1);
    uint32_t slmap = rs_slw_get(slw, fl, sli) & (~0u << sl);
    /* fl + 1 <= 64 - sli < 64: the shift is defined */
    uint64_t flmap = (flw & (~0ull << (fl + 1))) | ((uint64_t)(slmap != 0) << fl);
    if (__builtin_expect(!flmap, 0)) return 0;
    unsigned f = (unsigned)__builtin_ctzll(flmap);
    uint32_t w = rs_sel32(f == fl, slmap, rs_slw_get(slw, f, sli));
    *b = (f << sli) + (unsigned)__builtin_ctz(w);
    return 1;
}

/* The last non-empty bin; 0 when all are empty. */
static inline int rs_last_bin_n(uint64_t flw, const void *slw, unsigned *b, unsigned sli)
{
    if (!flw) return 0;
    unsigned fl = (unsigned)(63 - __builtin_clzll(flw));
    *b = (fl << sli) + (unsigned)(31 - __builtin_clz(rs_slw_get(slw, fl, sli)));
    return 1;
}

RS_HOT void rs_bin_mark_n(uint64_t *flw, void *slw, unsigned b, unsigned sli)
{
    unsigned fl = b >> sli;
    rs_slw_set(slw, fl, rs_slw_get(slw, fl, sli) | 1u << (b & ((1u << sli) - 1)), sli);
    *flw |= 1ull << fl;
}

/* Clear bin b's bit when `empty` (0 or 1), without a branch. */
RS_HOT void rs_bin_unmark_if_n(uint64_t *flw, void *slw, unsigned b, unsigned empty,
                               unsigned sli)
{
    unsigned fl = b >> sli;
    uint32_t sl = rs_slw_get(slw, fl, sli) & ~((uint32_t)empty << (b & ((1u << sli) - 1)));
    rs_slw_set(slw, fl, sl, sli);
    *flw &= ~((uint64_t)(sl == 0) << fl);
}

/* The bitmaps (nfl levels) agree with the bins' heads (MP_NIL = empty) and have no
 * stray bits. */
static inline int rs_binmap_check_n(uint64_t flw, const void *slw, const uint32_t *heads,
                                    unsigned nfl, unsigned sli, char *msg, size_t msglen)
{
    /* bits at or above nfl have no sl word: next_bin would index past it */
    uint64_t fl_valid = nfl >= 64 ? ~0ull : ((uint64_t)1 << (nfl & 63)) - 1;
    if (flw & ~fl_valid) {
        snprintf(msg, msglen, "first-level bitmap 0x%llx has bits beyond level %u",
                 (unsigned long long)flw, nfl - 1);
        return MP_ECORRUPT;
    }
    for (unsigned fl = 0; fl < nfl; fl++) {
        uint32_t w = rs_slw_get(slw, fl, sli);
        if (((flw >> fl) & 1) != (w != 0)) {
            snprintf(msg, msglen, "first-level bit %u disagrees with its second-level bitmap",
                     fl);
            return MP_ECORRUPT;
        }
        if ((1u << sli) < 32 && (w >> (1u << sli))) {
            snprintf(msg, msglen, "second-level bitmap %u has bits beyond bin %u", fl,
                     (1u << sli) - 1);
            return MP_ECORRUPT;
        }
        for (unsigned sl = 0; sl < (1u << sli); sl++)
            if (((w >> sl) & 1) != (heads[(fl << sli) + sl] != MP_NIL)) {
                snprintf(msg, msglen, "bitmap bit (%u, %u) disagrees with its bin", fl, sl);
                return MP_ECORRUPT;
            }
    }
    return MP_OK;
}

RS_HOT unsigned rs_bin_down(uint64_t s) { return rs_bin_down_n(s, RS_SLI); }
RS_HOT int rs_bin_up(uint64_t s, unsigned *b) { return rs_bin_up_n(s, b, RS_SLI); }
RS_HOT int rs_next_bin(const rs_binmap_t *m, unsigned *b)
{
    return rs_next_bin_n(m->fl, m->sl, b, RS_SLI);
}
static inline int rs_last_bin(const rs_binmap_t *m, unsigned *b)
{
    return rs_last_bin_n(m->fl, m->sl, b, RS_SLI);
}
RS_HOT void rs_bin_mark(rs_binmap_t *m, unsigned b) { rs_bin_mark_n(&m->fl, m->sl, b, RS_SLI); }
RS_HOT void rs_bin_unmark_if(rs_binmap_t *m, unsigned b, unsigned empty)
{
    rs_bin_unmark_if_n(&m->fl, m->sl, b, empty, RS_SLI);
}
RS_HOT void rs_bin_unmark(rs_binmap_t *m, unsigned b) { rs_bin_unmark_if(m, b, 1); }
static inline int rs_binmap_check(const rs_binmap_t *m, const uint32_t *heads, char *msg,
                                  size_t msglen)
{
    return rs_binmap_check_n(m->fl, m->sl, heads, RS_FL_COUNT, RS_SLI, msg, msglen);
}

#endif /* MEMPOOL_RANGES_BINS_H */
